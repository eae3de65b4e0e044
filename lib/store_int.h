/*
 * store_int.h (private to lib/): what the two sqlite owners, the device store
 * (store.c) and the aggregator store (aggstore.c), share. sqlite3.h stays
 * inside the store module; callers see PLAIT_E* codes only.
 */
#ifndef PLAIT_STORE_INT_H
#define PLAIT_STORE_INT_H

#include <sqlite3.h>

#include "plait/plait.h"

/* SQLITE_BUSY/LOCKED -> EBUSY, NOMEM -> ENOMEM, NOTADB/CORRUPT -> EPROTO,
 * TOOBIG -> ETOOBIG, CONSTRAINT -> EINVAL, anything else -> EIO. */
int plait__sqlite_code(int rc);

/* Record a failure as "<module>: <what>: <sqlite's message> (sqlite <rc>)" and
 * return its PLAIT_E* code. The message is sqlite's, never row data. */
int plait__sqlite_fail(sqlite3 *db, int rc, const char *module, const char *what);

#endif
