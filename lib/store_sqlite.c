/*
 * store_sqlite.c: translation of sqlite result codes for the store module
 * (see store_int.h). One table, so the device store and the aggregator store
 * report the same failure the same way.
 */
#include "store_int.h"

int plait__sqlite_code(int rc)
{
    switch (rc & 0xff) {
    case SQLITE_BUSY:
    case SQLITE_LOCKED: return PLAIT_EBUSY;
    case SQLITE_NOMEM: return PLAIT_ENOMEM;
    case SQLITE_NOTADB:
    case SQLITE_CORRUPT: return PLAIT_EPROTO;
    case SQLITE_TOOBIG: return PLAIT_ETOOBIG;
    case SQLITE_CONSTRAINT: return PLAIT_EINVAL;
    default: return PLAIT_EIO;
    }
}

/* Codes a full disk (or a file size limit) produces: the message says so,
 * since sqlite's own words for some ("disk I/O error") do not. */
static int out_of_space(int rc)
{
    return (rc & 0xff) == SQLITE_FULL || rc == SQLITE_IOERR_WRITE || rc == SQLITE_IOERR_SHMSIZE ||
           rc == SQLITE_IOERR_TRUNCATE || rc == SQLITE_IOERR_FSYNC;
}

int plait__sqlite_fail(sqlite3 *db, int rc, const char *module, const char *what)
{
    return plait_fail(plait__sqlite_code(rc), "%s: %s: %s (sqlite %d)%s", module, what,
                      db ? sqlite3_errmsg(db) : sqlite3_errstr(rc), rc,
                      out_of_space(rc) ? "; is the disk full?" : "");
}
