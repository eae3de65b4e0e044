/*
 * store.c: the device store, a thin, defensive layer over one sqlite
 * connection. The only user of sqlite3.h.
 *
 * Schema (version 1):
 *   meta(key TEXT PRIMARY KEY, value)    'magic' = 'plait-store',
 *                                        'schema_version' = 1, 'salt' = int64
 *   records(id INTEGER PRIMARY KEY AUTOINCREMENT, time INTEGER, kind TEXT, text TEXT)
 *   index records_by_time(time)
 * plus PRAGMA application_id = 'PLAT' so tools like `file` can identify it.
 * AUTOINCREMENT makes ids strictly increasing and never reused, so an id
 * names one record forever (the split of a record depends on its id).
 *
 * Invariants:
 *   - every row handed to a callback was validated here (types, sizes,
 *     printable kind, UTF-8 text without NUL): the file is untrusted;
 *   - no statement is left mid-step after a public function returns (all are
 *     reset), so read locks never outlive a call and checkpoints can finish;
 *   - st->in_cb is set while a callback runs, and every entry point refuses
 *     to run then, so a callback cannot step a statement that is in use;
 *   - error details carry sizes, ids and sqlite's message, never text.
 *
 * Hostile files are bounded: SQLITE_LIMIT_LENGTH is set to max_text plus
 * ROW_SLACK, so sqlite refuses to materialize a larger value from a crafted
 * file (SQLITE_TOOBIG, reported as PLAIT_EPROTO) instead of allocating it.
 *
 * The split is computed by plait_split(id), an SQL function registered on
 * this connection only (SQLITE_DIRECTONLY: a crafted schema cannot call it),
 * so filtering happens in the WHERE clause and the text of skipped rows is
 * never read.
 *
 * Expected workload: one user's history, 10^2..10^5 records of up to 1 MiB,
 * bulk ingest in one transaction, read sequentially once per training round.
 */
#include "plait/store.h"

#include <errno.h>
#include <math.h>
#include <sqlite3.h>

#include "store_int.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define STORE_MAGIC "plait-store"
#define STORE_APP_ID 0x504C4154 /* "PLAT" */
/* Room for the id, time, kind and record header on top of max_text. */
#define ROW_SLACK 4096

struct plait_store_s {
    sqlite3 *db;
    sqlite3_stmt *ins, *get, *all, *cnt, *cnt_split, *del, *delb;
    uint64_t salt;
    double fraction;
    size_t max_text;
    bool in_tx;          /* inside plait_store_begin .. commit/rollback */
    bool deleted_in_tx;  /* the open transaction deleted records */
    bool in_cb;          /* a record callback is running */
};

/* ------------------------------------------------------------------------ */
/* Errors                                                                    */
/* ------------------------------------------------------------------------ */

/* Translate an sqlite failure; the detail is sqlite's message, never data. */
static int sqfail(sqlite3 *db, int rc, const char *what) { return plait__sqlite_fail(db, rc, "store", what); }

static int check_usable(const plait_store_t *st)
{
    if (!st) return plait_fail(PLAIT_EINVAL, "store: NULL store");
    if (st->in_cb) return plait_fail(PLAIT_EINVAL, "store: called from inside a record callback");
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Config                                                                    */
/* ------------------------------------------------------------------------ */

void plait_store_config_default(plait_store_config_t *cfg)
{
    cfg->path = NULL;
    cfg->create = true;
    cfg->busy_timeout_ms = 5000;
    cfg->wal = true;
    cfg->sync_full = false;
    cfg->max_text = (size_t)1 << 20;
    cfg->heldout_fraction = 0.1;
}

int plait_store_config_validate(const plait_store_config_t *cfg)
{
    if (!cfg) return plait_fail(PLAIT_EINVAL, "store: config is NULL");
    if (!cfg->path || !cfg->path[0]) return plait_fail(PLAIT_EINVAL, "store: path is not set");
    if (cfg->busy_timeout_ms < 0 || cfg->busy_timeout_ms > 600000)
        return plait_fail(PLAIT_EINVAL, "store: busy_timeout_ms %d not in 0..600000",
                          cfg->busy_timeout_ms);
    if (cfg->max_text < 1 || cfg->max_text > PLAIT_STORE_MAX_TEXT_CEILING)
        return plait_fail(PLAIT_EINVAL, "store: max_text %zu not in 1..%zu", cfg->max_text,
                          PLAIT_STORE_MAX_TEXT_CEILING);
    if (!(cfg->heldout_fraction >= 0.0 && cfg->heldout_fraction <= 1.0))
        return plait_fail(PLAIT_EINVAL, "store: heldout_fraction not in [0, 1]");
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Validation helpers                                                        */
/* ------------------------------------------------------------------------ */

/* Offset of the first byte that is not well-formed UTF-8 or is NUL, or n. */
static size_t utf8_check(const unsigned char *p, size_t n)
{
    size_t i = 0;
    while (i < n) {
        unsigned char c = p[i];
        if (c == 0) return i;
        if (c < 0x80) {
            i++;
            continue;
        }
        size_t k;
        unsigned char lo = 0x80, hi = 0xBF;
        if (c >= 0xC2 && c <= 0xDF) k = 2;
        else if (c >= 0xE0 && c <= 0xEF) {
            k = 3;
            if (c == 0xE0) lo = 0xA0;
            else if (c == 0xED) hi = 0x9F;
        } else if (c >= 0xF0 && c <= 0xF4) {
            k = 4;
            if (c == 0xF0) lo = 0x90;
            else if (c == 0xF4) hi = 0x8F;
        } else {
            return i;
        }
        if (n - i < k || p[i + 1] < lo || p[i + 1] > hi) return i;
        for (size_t j = 2; j < k; j++)
            if (p[i + j] < 0x80 || p[i + j] > 0xBF) return i;
        i += k;
    }
    return n;
}

static bool kind_ok(const unsigned char *k, size_t n)
{
    if (n < 1 || n > PLAIT_STORE_MAX_KIND) return false;
    for (size_t i = 0; i < n; i++)
        if (k[i] < 0x20 || k[i] > 0x7e) return false;
    return true;
}

static uint64_t mix64(uint64_t x)
{
    /* splitmix64 finalizer: a fixed bijection with good avalanche. */
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

bool plait_store_is_heldout(const plait_store_t *st, int64_t id)
{
    double u = (double)(mix64((uint64_t)id ^ st->salt) >> 11) * 0x1p-53; /* [0, 1) */
    return u < st->fraction;
}

/* SQL plait_split(id): PLAIT_STORE_HELDOUT or PLAIT_STORE_TRAIN; NULL for a non-integer. */
static void split_fn(sqlite3_context *ctx, int argc, sqlite3_value **argv)
{
    (void)argc;
    const plait_store_t *st = sqlite3_user_data(ctx);
    if (sqlite3_value_type(argv[0]) != SQLITE_INTEGER) {
        sqlite3_result_null(ctx);
        return;
    }
    bool h = plait_store_is_heldout(st, sqlite3_value_int64(argv[0]));
    sqlite3_result_int(ctx, h ? PLAIT_STORE_HELDOUT : PLAIT_STORE_TRAIN);
}

static bool split_ok(plait_store_split_t split)
{
    return split == PLAIT_STORE_ALL || split == PLAIT_STORE_TRAIN || split == PLAIT_STORE_HELDOUT;
}

/*
 * Validate the current row of a statement selecting (id, time, kind, text)
 * and fill rec. Pointers in rec are valid until the statement moves.
 */
static int read_row(plait_store_t *st, sqlite3_stmt *s, plait_store_record_t *rec)
{
    long long id = sqlite3_column_int64(s, 0);
    if (sqlite3_column_type(s, 1) != SQLITE_INTEGER)
        return plait_fail(PLAIT_EPROTO, "store: record %lld: time is not an integer", id);
    long long t = sqlite3_column_int64(s, 1);
    if (t < 0) return plait_fail(PLAIT_EPROTO, "store: record %lld: negative time", id);
    if (sqlite3_column_type(s, 2) != SQLITE_TEXT)
        return plait_fail(PLAIT_EPROTO, "store: record %lld: kind is not text", id);
    const unsigned char *kind = sqlite3_column_text(s, 2);
    int kb = sqlite3_column_bytes(s, 2);
    if (!kind) return sqfail(st->db, sqlite3_errcode(st->db), "reading kind");
    if (!kind_ok(kind, (size_t)kb))
        return plait_fail(PLAIT_EPROTO, "store: record %lld: kind is not 1..%d printable bytes", id,
                          PLAIT_STORE_MAX_KIND);
    if (sqlite3_column_type(s, 3) != SQLITE_TEXT)
        return plait_fail(PLAIT_EPROTO, "store: record %lld: text is not text (sqlite type %d)", id,
                          sqlite3_column_type(s, 3));
    const unsigned char *text = sqlite3_column_text(s, 3);
    int tb = sqlite3_column_bytes(s, 3);
    if (!text) return sqfail(st->db, sqlite3_errcode(st->db), "reading text");
    if (tb <= 0) return plait_fail(PLAIT_EPROTO, "store: record %lld: empty text", id);
    if ((size_t)tb > st->max_text)
        return plait_fail(PLAIT_EPROTO, "store: record %lld: text is %d bytes, max %zu", id, tb,
                          st->max_text);
    size_t bad = utf8_check(text, (size_t)tb);
    if (bad != (size_t)tb)
        return plait_fail(PLAIT_EPROTO, "store: record %lld: text has invalid UTF-8 or NUL at byte %zu",
                          id, bad);
    rec->id = id;
    rec->time = t;
    rec->kind = (const char *)kind;
    rec->text = (const char *)text;
    rec->len = (size_t)tb;
    rec->heldout = plait_store_is_heldout(st, id);
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Open / close                                                              */
/* ------------------------------------------------------------------------ */

static int exec(sqlite3 *db, const char *sql, const char *what)
{
    int rc = sqlite3_exec(db, sql, NULL, NULL, NULL);
    return rc == SQLITE_OK ? 0 : sqfail(db, rc, what);
}

/* Run a query returning one integer. */
static int query_int(sqlite3 *db, const char *sql, int64_t *out, const char *what)
{
    sqlite3_stmt *s = NULL;
    int rc = sqlite3_prepare_v2(db, sql, -1, &s, NULL);
    if (rc != SQLITE_OK) return sqfail(db, rc, what);
    rc = sqlite3_step(s);
    int ret = 0;
    if (rc == SQLITE_ROW && sqlite3_column_type(s, 0) == SQLITE_INTEGER) *out = sqlite3_column_int64(s, 0);
    else if (rc == SQLITE_ROW || rc == SQLITE_DONE) ret = plait_fail(PLAIT_EPROTO, "store: %s: no integer result", what);
    else ret = sqfail(db, rc, what);
    sqlite3_finalize(s);
    return ret;
}

/*
 * Read meta[key]. *type gets its sqlite type (SQLITE_NULL if absent); text
 * values are copied into txt (truncated to cap - 1), integers into *num.
 */
static int meta_get(sqlite3 *db, const char *key, int *type, int64_t *num, char *txt, size_t cap)
{
    sqlite3_stmt *s = NULL;
    int rc = sqlite3_prepare_v2(db, "SELECT value FROM meta WHERE key = ?1", -1, &s, NULL);
    if (rc != SQLITE_OK) {
        /* A meta table without (key, value) columns belongs to some other application. */
        if ((rc & 0xff) == SQLITE_ERROR)
            return plait_fail(PLAIT_EMISMATCH, "store: not a plait store (meta table: %s)", sqlite3_errmsg(db));
        return sqfail(db, rc, "reading meta");
    }
    sqlite3_bind_text(s, 1, key, -1, SQLITE_STATIC);
    rc = sqlite3_step(s);
    int ret = 0;
    *type = SQLITE_NULL;
    if (rc == SQLITE_ROW) {
        *type = sqlite3_column_type(s, 0);
        if (*type == SQLITE_INTEGER) {
            *num = sqlite3_column_int64(s, 0);
        } else if (*type == SQLITE_TEXT) {
            const unsigned char *t = sqlite3_column_text(s, 0);
            size_t n = (size_t)sqlite3_column_bytes(s, 0);
            if (!t) ret = sqfail(db, sqlite3_errcode(db), "reading meta");
            else {
                if (n >= cap) n = cap - 1;
                memcpy(txt, t, n);
                txt[n] = '\0';
            }
        }
    } else if (rc != SQLITE_DONE) {
        ret = sqfail(db, rc, "reading meta");
    }
    sqlite3_finalize(s);
    return ret;
}

static int create_schema(sqlite3 *db)
{
    int ret;
    if ((ret = exec(db, "BEGIN IMMEDIATE", "begin schema creation")) != 0) return ret;
    int64_t n = 0;
    /* Re-check under the write lock: another process may have created it. */
    if ((ret = query_int(db, "SELECT count(*) FROM sqlite_master", &n, "inspecting schema")) != 0)
        goto fail;
    if (n == 0) {
        int64_t salt;
        sqlite3_randomness((int)sizeof(salt), &salt);
        char sql[1024];
        snprintf(sql, sizeof(sql),
                 "CREATE TABLE meta(key TEXT PRIMARY KEY NOT NULL, value NOT NULL) WITHOUT ROWID;"
                 "CREATE TABLE records("
                 "  id INTEGER PRIMARY KEY AUTOINCREMENT,"
                 "  time INTEGER NOT NULL,"
                 "  kind TEXT NOT NULL,"
                 "  text TEXT NOT NULL);"
                 "CREATE INDEX records_by_time ON records(time);"
                 "INSERT INTO meta(key, value) VALUES ('magic', '" STORE_MAGIC "'),"
                 "  ('schema_version', %d), ('salt', %lld);"
                 "PRAGMA application_id = %d;"
                 "PRAGMA user_version = %d;",
                 PLAIT_STORE_SCHEMA_VERSION, (long long)salt, STORE_APP_ID, PLAIT_STORE_SCHEMA_VERSION);
        if ((ret = exec(db, sql, "creating schema")) != 0) goto fail;
    }
    if ((ret = exec(db, "COMMIT", "committing schema")) != 0) goto fail;
    return 0;
fail:
    sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
    return ret;
}

/* Decide whether db is a plait store we can use; read its salt. */
static int identify(sqlite3 *db, uint64_t *salt)
{
    int ret;
    int64_t n = 0;
    if ((ret = query_int(db, "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'meta'",
                         &n, "inspecting schema")) != 0)
        return ret;
    if (n == 0) return plait_fail(PLAIT_EMISMATCH, "store: not a plait store (no meta table)");
    int type;
    int64_t num = 0;
    char txt[64];
    if ((ret = meta_get(db, "magic", &type, &num, txt, sizeof(txt))) != 0) return ret;
    if (type != SQLITE_TEXT || strcmp(txt, STORE_MAGIC) != 0)
        return plait_fail(PLAIT_EMISMATCH, "store: not a plait store (bad magic)");
    if ((ret = meta_get(db, "schema_version", &type, &num, txt, sizeof(txt))) != 0) return ret;
    if (type != SQLITE_INTEGER || num < 1)
        return plait_fail(PLAIT_EPROTO, "store: schema_version missing or malformed");
    if (num > PLAIT_STORE_SCHEMA_VERSION)
        return plait_fail(PLAIT_EMISMATCH,
                          "store: schema version %lld is newer than this build supports (%d)",
                          (long long)num, PLAIT_STORE_SCHEMA_VERSION);
    if ((ret = meta_get(db, "salt", &type, &num, txt, sizeof(txt))) != 0) return ret;
    if (type != SQLITE_INTEGER) return plait_fail(PLAIT_EPROTO, "store: salt missing or malformed");
    *salt = (uint64_t)num;
    return 0;
}

static int prepare(plait_store_t *st, sqlite3_stmt **s, const char *sql)
{
    int rc = sqlite3_prepare_v3(st->db, sql, -1, SQLITE_PREPARE_PERSISTENT, s, NULL);
    if (rc != SQLITE_OK) {
        /* A plait store whose tables lack the expected columns. */
        if ((rc & 0xff) == SQLITE_ERROR)
            return plait_fail(PLAIT_EPROTO, "store: records table malformed: %s", sqlite3_errmsg(st->db));
        return sqfail(st->db, rc, "preparing statements");
    }
    return 0;
}

void plait_store_close(plait_store_t *st)
{
    if (!st) return;
    if (st->in_tx && st->db) sqlite3_exec(st->db, "ROLLBACK", NULL, NULL, NULL);
    sqlite3_finalize(st->ins);
    sqlite3_finalize(st->get);
    sqlite3_finalize(st->all);
    sqlite3_finalize(st->cnt);
    sqlite3_finalize(st->cnt_split);
    sqlite3_finalize(st->del);
    sqlite3_finalize(st->delb);
    sqlite3_close_v2(st->db);
    free(st);
}

/* The store holds the user's raw text: owner-only whatever the umask. The
 * database file is created 0600 before sqlite opens it (sqlite gives its -wal,
 * -shm and -journal files the database's mode), and a store, or a side file,
 * left group- or world-readable by an older version is tightened on open. */
static int make_private(const char *path, const char *suffix, int create)
{
    char p[4096];
    int n = snprintf(p, sizeof(p), "%s%s", path, suffix);
    if (n < 0 || (size_t)n >= sizeof(p)) return plait_fail(PLAIT_EINVAL, "store: path too long");
    if (create) {
        int fd = open(p, O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
        if (fd < 0) return plait_fail(PLAIT_EIO, "store: cannot create %s: %s", p, strerror(errno));
        close(fd);
    }
    struct stat sb;
    if (stat(p, &sb) != 0) return errno == ENOENT ? 0 : plait_fail(PLAIT_EIO, "store: %s: %s", p, strerror(errno));
    if (!S_ISREG(sb.st_mode) || (sb.st_mode & 077) == 0) return 0;
    if (chmod(p, sb.st_mode & 0700) != 0)
        return plait_fail(PLAIT_EIO, "store: %s is readable by others and cannot be made private: %s", p,
                          strerror(errno));
    return 0;
}

int plait_store_open(plait_store_t **out, const plait_store_config_t *cfg)
{
    if (!out) return plait_fail(PLAIT_EINVAL, "store: out is NULL");
    *out = NULL;
    int ret = plait_store_config_validate(cfg);
    if (ret != 0) return ret;
    if (!cfg->create) {
        struct stat sb;
        if (stat(cfg->path, &sb) != 0 && errno == ENOENT)
            return plait_fail(PLAIT_ENOENT, "store: database file does not exist");
    }
    if ((ret = make_private(cfg->path, "", cfg->create)) != 0) return ret;
    plait_store_t *st = calloc(1, sizeof(*st));
    if (!st) return plait_fail(PLAIT_ENOMEM, "store: out of memory");
    st->fraction = cfg->heldout_fraction;
    st->max_text = cfg->max_text;

    int flags = SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX | (cfg->create ? SQLITE_OPEN_CREATE : 0);
    int rc = sqlite3_open_v2(cfg->path, &st->db, flags, NULL);
    if (rc != SQLITE_OK) {
        ret = st->db ? sqfail(st->db, rc, "opening database") : plait_fail(PLAIT_ENOMEM, "store: out of memory");
        goto fail;
    }
    sqlite3_extended_result_codes(st->db, 1);
    sqlite3_limit(st->db, SQLITE_LIMIT_LENGTH, (int)(cfg->max_text + ROW_SLACK));
    sqlite3_busy_timeout(st->db, cfg->busy_timeout_ms);
    /* Hardening for files that may have been tampered with: no writes to the
     * schema through SQL, no functions run from the schema, and extra b-tree
     * cell checks so corruption is reported rather than misread. */
    sqlite3_db_config(st->db, SQLITE_DBCONFIG_DEFENSIVE, 1, (int *)NULL);
    sqlite3_db_config(st->db, SQLITE_DBCONFIG_TRUSTED_SCHEMA, 0, (int *)NULL);
    if ((ret = exec(st->db, "PRAGMA cell_size_check = ON; PRAGMA secure_delete = ON",
                    "setting pragmas")) != 0)
        goto fail;

    /* The first read of the file: random bytes fail here with SQLITE_NOTADB. */
    int64_t ntables = 0, app_id = 0;
    rc = query_int(st->db, "SELECT count(*) FROM sqlite_master", &ntables, "reading schema");
    if (rc != 0) {
        if (rc == PLAIT_EPROTO)
            plait_fail(PLAIT_EPROTO, "store: not an sqlite database, or corrupt: %s",
                       sqlite3_errmsg(st->db));
        ret = rc;
        goto fail;
    }
    if ((ret = query_int(st->db, "PRAGMA application_id", &app_id, "reading application_id")) != 0)
        goto fail;
    if (app_id != 0 && app_id != STORE_APP_ID) {
        ret = plait_fail(PLAIT_EMISMATCH, "store: not a plait store (application_id 0x%llx)",
                         (unsigned long long)app_id);
        goto fail;
    }
    if (ntables == 0 && app_id == 0) {
        /* A new (empty) database: journal mode first, it cannot change inside a transaction. */
        if (cfg->wal && (ret = exec(st->db, "PRAGMA journal_mode = WAL", "setting WAL")) != 0) goto fail;
        if ((ret = create_schema(st->db)) != 0) goto fail;
    }
    if ((ret = identify(st->db, &st->salt)) != 0) goto fail;
    /* Only now that the file is known to be ours do we change its settings. */
    if ((ret = exec(st->db, cfg->wal ? "PRAGMA journal_mode = WAL" : "PRAGMA journal_mode = DELETE",
                    "setting journal mode")) != 0)
        goto fail;
    if ((ret = exec(st->db, cfg->sync_full ? "PRAGMA synchronous = FULL" : "PRAGMA synchronous = NORMAL",
                    "setting synchronous")) != 0)
        goto fail;

    rc = sqlite3_create_function_v2(st->db, "plait_split", 1,
                                    SQLITE_UTF8 | SQLITE_DETERMINISTIC | SQLITE_DIRECTONLY, st,
                                    split_fn, NULL, NULL, NULL);
    if (rc != SQLITE_OK) {
        ret = sqfail(st->db, rc, "registering plait_split");
        goto fail;
    }
    if ((ret = prepare(st, &st->ins, "INSERT INTO records(time, kind, text) VALUES (?1, ?2, ?3)")) != 0 ||
        (ret = prepare(st, &st->get, "SELECT id, time, kind, text FROM records WHERE id = ?1")) != 0 ||
        (ret = prepare(st, &st->all,
                       "SELECT id, time, kind, text FROM records"
                       " WHERE ?1 = 0 OR plait_split(id) = ?1 ORDER BY id")) != 0 ||
        (ret = prepare(st, &st->cnt, "SELECT count(*) FROM records")) != 0 ||
        (ret = prepare(st, &st->cnt_split, "SELECT count(*) FROM records WHERE plait_split(id) = ?1")) != 0 ||
        (ret = prepare(st, &st->del, "DELETE FROM records WHERE id = ?1")) != 0 ||
        (ret = prepare(st, &st->delb, "DELETE FROM records WHERE time < ?1")) != 0)
        goto fail;
    if ((ret = make_private(cfg->path, "-wal", 0)) != 0 || (ret = make_private(cfg->path, "-shm", 0)) != 0 ||
        (ret = make_private(cfg->path, "-journal", 0)) != 0)
        goto fail;
    *out = st;
    return 0;
fail:
    plait_store_close(st);
    return ret;
}

/* ------------------------------------------------------------------------ */
/* Transactions                                                              */
/* ------------------------------------------------------------------------ */

int plait_store_checkpoint(plait_store_t *st)
{
    int ret = check_usable(st);
    if (ret != 0) return ret;
    if (st->in_tx) return plait_fail(PLAIT_EINVAL, "store: checkpoint inside a transaction");
    int rc = sqlite3_wal_checkpoint_v2(st->db, NULL, SQLITE_CHECKPOINT_TRUNCATE, NULL, NULL);
    if (rc != SQLITE_OK) return sqfail(st->db, rc, "checkpointing the log");
    return 0;
}

/* After a committed deletion: scrub the log so no old page copies remain. */
static int scrub_after_delete(plait_store_t *st)
{
    int rc = sqlite3_wal_checkpoint_v2(st->db, NULL, SQLITE_CHECKPOINT_TRUNCATE, NULL, NULL);
    if (rc == SQLITE_OK) return 0;
    return plait_fail(plait__sqlite_code(rc),
                      "store: records deleted, but the log could not be scrubbed yet (%s, sqlite %d); "
                      "retry plait_store_checkpoint",
                      sqlite3_errmsg(st->db), rc);
}

int plait_store_begin(plait_store_t *st)
{
    int ret = check_usable(st);
    if (ret != 0) return ret;
    if (st->in_tx) return plait_fail(PLAIT_EINVAL, "store: transaction already open");
    if ((ret = exec(st->db, "BEGIN IMMEDIATE", "beginning transaction")) != 0) return ret;
    st->in_tx = true;
    st->deleted_in_tx = false;
    return 0;
}

int plait_store_commit(plait_store_t *st)
{
    int ret = check_usable(st);
    if (ret != 0) return ret;
    if (!st->in_tx) return plait_fail(PLAIT_EINVAL, "store: no transaction open");
    if ((ret = exec(st->db, "COMMIT", "committing")) != 0) {
        /* On BUSY the transaction stays open (sqlite's contract); otherwise it may be gone. */
        if (sqlite3_get_autocommit(st->db)) st->in_tx = false;
        return ret;
    }
    st->in_tx = false;
    if (st->deleted_in_tx) {
        st->deleted_in_tx = false;
        return scrub_after_delete(st);
    }
    return 0;
}

int plait_store_rollback(plait_store_t *st)
{
    int ret = check_usable(st);
    if (ret != 0) return ret;
    if (!st->in_tx) return 0;
    st->in_tx = false;
    st->deleted_in_tx = false;
    if (sqlite3_get_autocommit(st->db)) return 0; /* sqlite already rolled back */
    return exec(st->db, "ROLLBACK", "rolling back");
}

/* ------------------------------------------------------------------------ */
/* Records                                                                   */
/* ------------------------------------------------------------------------ */

int plait_store_add(plait_store_t *st, int64_t t, const char *kind, const char *text, size_t len,
                    int64_t *id_out)
{
    int ret = check_usable(st);
    if (ret != 0) return ret;
    if (t == PLAIT_STORE_TIME_NOW) {
        time_t now = time(NULL);
        t = now > 0 ? (int64_t)now : 0;
    } else if (t < 0) {
        return plait_fail(PLAIT_EINVAL, "store: negative time");
    }
    if (!kind) kind = PLAIT_STORE_DEFAULT_KIND;
    if (!kind_ok((const unsigned char *)kind, strnlen(kind, PLAIT_STORE_MAX_KIND + 1)))
        return plait_fail(PLAIT_EINVAL, "store: kind must be 1..%d printable ASCII bytes",
                          PLAIT_STORE_MAX_KIND);
    if (!text) return plait_fail(PLAIT_EINVAL, "store: text is NULL");
    if (len == 0) return plait_fail(PLAIT_EINVAL, "store: empty text");
    if (len > st->max_text)
        return plait_fail(PLAIT_ETOOBIG, "store: text is %zu bytes, max %zu", len, st->max_text);
    size_t bad = utf8_check((const unsigned char *)text, len);
    if (bad != len)
        return plait_fail(PLAIT_EINVAL, "store: text has invalid UTF-8 or NUL at byte %zu", bad);

    sqlite3_stmt *s = st->ins;
    sqlite3_bind_int64(s, 1, t);
    sqlite3_bind_text(s, 2, kind, -1, SQLITE_STATIC);
    sqlite3_bind_text(s, 3, text, (int)len, SQLITE_STATIC); /* len <= 256 MiB fits */
    int rc = sqlite3_step(s);
    if (rc == SQLITE_DONE) {
        if (id_out) *id_out = sqlite3_last_insert_rowid(st->db);
        ret = 0;
    } else {
        ret = sqfail(st->db, rc, "adding record");
    }
    sqlite3_reset(s);
    sqlite3_clear_bindings(s);
    return ret;
}

int plait_store_count(plait_store_t *st, int64_t *out)
{
    int ret = check_usable(st);
    if (ret != 0) return ret;
    if (!out) return plait_fail(PLAIT_EINVAL, "store: out is NULL");
    int rc = sqlite3_step(st->cnt);
    if (rc == SQLITE_ROW) *out = sqlite3_column_int64(st->cnt, 0);
    else ret = sqfail(st->db, rc, "counting records");
    sqlite3_reset(st->cnt);
    return ret;
}

int plait_store_count_split(plait_store_t *st, plait_store_split_t split, int64_t *out)
{
    if (split == PLAIT_STORE_ALL) return plait_store_count(st, out);
    int ret = check_usable(st);
    if (ret != 0) return ret;
    if (!out) return plait_fail(PLAIT_EINVAL, "store: out is NULL");
    if (!split_ok(split)) return plait_fail(PLAIT_EINVAL, "store: bad split %d", (int)split);
    sqlite3_stmt *s = st->cnt_split;
    sqlite3_bind_int(s, 1, (int)split);
    int rc = sqlite3_step(s);
    if (rc == SQLITE_ROW) *out = sqlite3_column_int64(s, 0);
    else ret = sqfail(st->db, rc, "counting records");
    sqlite3_reset(s);
    sqlite3_clear_bindings(s);
    return ret;
}

/*
 * The id of the row a failed step was on: the first one after last_id in the
 * split. Reads ids only, so it works on a row whose text sqlite refused to
 * load. Returns -1 if it cannot tell.
 */
static long long find_next_id(plait_store_t *st, long long last_id, plait_store_split_t split)
{
    sqlite3_stmt *q = NULL;
    long long id = -1;
    if (sqlite3_prepare_v2(st->db,
                           "SELECT id FROM records WHERE id > ?1 AND (?2 = 0 OR plait_split(id) = ?2)"
                           " ORDER BY id LIMIT 1",
                           -1, &q, NULL) != SQLITE_OK)
        return -1;
    sqlite3_bind_int64(q, 1, last_id);
    sqlite3_bind_int(q, 2, (int)split);
    if (sqlite3_step(q) == SQLITE_ROW) id = sqlite3_column_int64(q, 0);
    sqlite3_finalize(q);
    return id;
}

int plait_store_foreach(plait_store_t *st, plait_store_split_t split, plait_store_record_cb cb, void *ud)
{
    int ret = check_usable(st);
    if (ret != 0) return ret;
    if (!cb) return plait_fail(PLAIT_EINVAL, "store: callback is NULL");
    if (!split_ok(split)) return plait_fail(PLAIT_EINVAL, "store: bad split %d", (int)split);
    sqlite3_stmt *s = st->all;
    sqlite3_bind_int(s, 1, (int)split);
    int rc;
    long long last_id = 0;
    while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
        plait_store_record_t rec;
        last_id = sqlite3_column_int64(s, 0);
        if ((ret = read_row(st, s, &rec)) != 0) break;
        st->in_cb = true;
        ret = cb(ud, &rec);
        st->in_cb = false;
        if (ret != 0) break;
    }
    if (ret == 0 && rc != SQLITE_DONE) {
        if ((rc & 0xff) == SQLITE_TOOBIG)
            ret = plait_fail(PLAIT_EPROTO, "store: record %lld: exceeds the row size limit (max_text %zu)",
                             find_next_id(st, last_id, split), st->max_text);
        else
            ret = sqfail(st->db, rc, "reading records");
    }
    sqlite3_reset(s);
    sqlite3_clear_bindings(s);
    return ret;
}

int plait_store_get(plait_store_t *st, int64_t id, plait_store_record_cb cb, void *ud)
{
    int ret = check_usable(st);
    if (ret != 0) return ret;
    if (!cb) return plait_fail(PLAIT_EINVAL, "store: callback is NULL");
    sqlite3_stmt *s = st->get;
    sqlite3_bind_int64(s, 1, id);
    int rc = sqlite3_step(s);
    if (rc == SQLITE_ROW) {
        plait_store_record_t rec;
        if ((ret = read_row(st, s, &rec)) == 0) {
            st->in_cb = true;
            ret = cb(ud, &rec);
            st->in_cb = false;
        }
    } else if (rc == SQLITE_DONE) {
        ret = plait_fail(PLAIT_ENOENT, "store: no record %lld", (long long)id);
    } else if ((rc & 0xff) == SQLITE_TOOBIG) {
        ret = plait_fail(PLAIT_EPROTO, "store: record %lld: exceeds the row size limit (max_text %zu)",
                         (long long)id, st->max_text);
    } else {
        ret = sqfail(st->db, rc, "reading record");
    }
    sqlite3_reset(s);
    sqlite3_clear_bindings(s);
    return ret;
}

/* Run a bound DELETE; on success *n gets the number of rows erased. */
static int run_delete(plait_store_t *st, sqlite3_stmt *s, int64_t *n)
{
    int rc = sqlite3_step(s);
    int ret = 0;
    if (rc == SQLITE_DONE) *n = (int64_t)sqlite3_changes64(st->db);
    else ret = sqfail(st->db, rc, "deleting records");
    sqlite3_reset(s);
    sqlite3_clear_bindings(s);
    if (ret != 0 || *n == 0) return ret;
    if (st->in_tx) {
        st->deleted_in_tx = true; /* scrubbed after commit */
        return 0;
    }
    return scrub_after_delete(st);
}

int plait_store_delete(plait_store_t *st, int64_t id)
{
    int ret = check_usable(st);
    if (ret != 0) return ret;
    sqlite3_bind_int64(st->del, 1, id);
    int64_t n = 0;
    if ((ret = run_delete(st, st->del, &n)) != 0) return ret;
    if (n == 0) return plait_fail(PLAIT_ENOENT, "store: no record %lld", (long long)id);
    return 0;
}

int plait_store_delete_before(plait_store_t *st, int64_t t, int64_t *n_deleted)
{
    int ret = check_usable(st);
    if (ret != 0) return ret;
    sqlite3_bind_int64(st->delb, 1, t);
    int64_t n = 0;
    ret = run_delete(st, st->delb, &n);
    if (n_deleted) *n_deleted = n;
    return ret;
}
