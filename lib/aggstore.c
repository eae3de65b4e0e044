/*
 * aggstore.c: the aggregator's durable state over one sqlite connection.
 * Part of the store module (with store.c): the only other includer of
 * sqlite3.h. Callers never see sqlite types.
 *
 * The store by concern (shared internals in aggstore_int.h):
 *   aggstore.c           config, open/close, statement and column helpers
 *   aggstore_schema.c    the schema, identifying a file, migrations, recovery
 *   aggstore_devices.c   enrolment, revocation, labels, participation
 *   aggstore_rounds.c    a round's life: begin, stats, fail, commit; listing
 *   aggstore_versions.c  reading versions (adapter and optimizer state)
 *   aggstore_ledger.c    the privacy ledger and per-round metrics
 *
 * Invariants:
 *   - at most one round is 'open' (the partial unique index); a round leaves
 *     'open' exactly once, to committed, failed or abandoned;
 *   - versions are 1..N without gaps: a commit takes max(number) + 1 inside
 *     its write transaction, and only if the round's base_version is still
 *     the latest, so two rounds can never both build on the same version;
 *   - a commit is one BEGIN IMMEDIATE .. COMMIT: round state, counters,
 *     rejections, version, ledger row and metrics land together or not at all;
 *   - devices.last_round only grows, and mark_uploaded refuses round <=
 *     last_round, so a device is counted at most once per round;
 *   - every row handed out was validated here; every blob's size is checked
 *     (length() reads the record header, not the blob) against the limits
 *     before it is read: version blobs are then copied by incremental blob
 *     I/O into a buffer of exactly that size, the task config is withheld in
 *     SQL (CASE WHEN length(x) <= max); SQLITE_LIMIT_LENGTH also bounds what
 *     a hostile file can make sqlite allocate;
 *   - the adapter is hashed on every read and compared with its sha256;
 *   - no statement outlives a public call (all are finalized), so read locks
 *     never linger and checkpoints can complete;
 *   - st->in_cb is set while a callback runs; every entry point refuses then.
 *
 * Durability: WAL + synchronous=FULL (see aggstore.h for why), plus
 * journal_size_limit so the -wal file is truncated after checkpoints instead
 * of keeping the size of the largest commit forever.
 *
 * Expected workload: one write transaction per round (minutes apart) with a
 * blob of 1..200 MiB, one small write per accepted upload, rare reads of a
 * version (service start, export), and small listings for status commands.
 * Statements are prepared per call: microseconds against an fsync.
 */
#include "aggstore_int.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

/* Room for a row's other columns and header on top of its largest blob. */
#define ROW_SLACK 65536
/* Largest -wal file kept after a checkpoint. */
#define WAL_SIZE_LIMIT (64 << 20)

/* ------------------------------------------------------------------------ */
/* Errors                                                                    */
/* ------------------------------------------------------------------------ */

/* Translate an sqlite failure; the detail is sqlite's message, never data. */
int plait__aggstore_sqfail(sqlite3 *db, int rc, const char *what)
{
    return plait__sqlite_fail(db, rc, "aggstore", what);
}

int plait__aggstore_check_usable(const plait_aggstore_t *st)
{
    if (!st) return plait_fail(PLAIT_EINVAL, "aggstore: NULL store");
    if (st->in_cb) return plait_fail(PLAIT_EINVAL, "aggstore: called from inside a callback");
    return 0;
}

int64_t plait__aggstore_now_s(void)
{
    time_t t = time(NULL);
    return t > 0 ? (int64_t)t : 0;
}

/* 1..max printable ASCII bytes, NUL-terminated. */
bool plait__aggstore_printable_ok(const char *s, size_t max)
{
    if (!s) return false;
    size_t n = strnlen(s, max + 1);
    if (n < 1 || n > max) return false;
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)s[i] < 0x20 || (unsigned char)s[i] > 0x7e) return false;
    return true;
}

/* Same test on a column value of n bytes (may hold NULs: rejected). */
bool plait__aggstore_printable_bytes_ok(const unsigned char *s, size_t n, size_t max)
{
    if (!s || n < 1 || n > max) return false;
    for (size_t i = 0; i < n; i++)
        if (s[i] < 0x20 || s[i] > 0x7e) return false;
    return true;
}

/* ------------------------------------------------------------------------ */
/* Statement helpers                                                         */
/* ------------------------------------------------------------------------ */

int plait__aggstore_prep(plait_aggstore_t *st, const char *sql, sqlite3_stmt **s)
{
    *s = NULL;
    int rc = sqlite3_prepare_v2(st->db, sql, -1, s, NULL);
    if (rc == SQLITE_OK) return 0;
    /* SQLITE_ERROR at prepare time: a table or column is missing. */
    if ((rc & 0xff) == SQLITE_ERROR)
        return plait_fail(PLAIT_EPROTO, "aggstore: tables malformed: %s", sqlite3_errmsg(st->db));
    return plait__aggstore_sqfail(st->db, rc, "preparing a statement");
}

int plait__aggstore_exec(plait_aggstore_t *st, const char *sql, const char *what)
{
    int rc = sqlite3_exec(st->db, sql, NULL, NULL, NULL);
    return rc == SQLITE_OK ? 0 : plait__aggstore_sqfail(st->db, rc, what);
}

/* Step a write statement to completion and finalize it. */
int plait__aggstore_step_done(plait_aggstore_t *st, sqlite3_stmt *s, const char *what)
{
    int rc = sqlite3_step(s);
    int ret = rc == SQLITE_DONE ? 0 : plait__aggstore_sqfail(st->db, rc, what);
    sqlite3_finalize(s);
    return ret;
}

/* Run sql (binding ?1 = a if bind) returning one integer; *found = row existed and was an integer. */
int plait__aggstore_query_i64(plait_aggstore_t *st, const char *sql, bool bind, int64_t a, int64_t *out,
                     bool *found, const char *what)
{
    sqlite3_stmt *s;
    int ret = plait__aggstore_prep(st, sql, &s);
    if (ret != 0) return ret;
    if (bind) sqlite3_bind_int64(s, 1, a);
    int rc = sqlite3_step(s);
    *found = false;
    if (rc == SQLITE_ROW) {
        if (sqlite3_column_type(s, 0) == SQLITE_INTEGER) {
            *out = sqlite3_column_int64(s, 0);
            *found = true;
        }
    } else if (rc != SQLITE_DONE) {
        ret = plait__aggstore_sqfail(st->db, rc, what);
    }
    sqlite3_finalize(s);
    return ret;
}

int plait__aggstore_tx_begin(plait_aggstore_t *st)
{
    return plait__aggstore_exec(st, "BEGIN IMMEDIATE", "beginning a transaction");
}

int plait__aggstore_tx_commit(plait_aggstore_t *st)
{
    int ret = plait__aggstore_exec(st, "COMMIT", "committing");
    if (ret != 0 && !sqlite3_get_autocommit(st->db)) sqlite3_exec(st->db, "ROLLBACK", NULL, NULL, NULL);
    return ret;
}

void plait__aggstore_tx_rollback(plait_aggstore_t *st)
{
    if (!sqlite3_get_autocommit(st->db)) sqlite3_exec(st->db, "ROLLBACK", NULL, NULL, NULL);
}

/* ------------------------------------------------------------------------ */
/* Config                                                                    */
/* ------------------------------------------------------------------------ */

void plait_aggstore_config_default(plait_aggstore_config_t *cfg)
{
    cfg->path = NULL;
    cfg->create = true;
    cfg->read_only = false;
    cfg->recover_open_rounds = true;
    cfg->busy_timeout_ms = 5000;
    cfg->deployment_id = NULL;
    cfg->max_adapter_bytes = (size_t)256 << 20;
    cfg->max_opt_state_bytes = (size_t)512 << 20;
    cfg->max_task_config_bytes = (size_t)64 << 10;
    cfg->max_metrics = 256;
    cfg->max_reasons = 32;
}

int plait_aggstore_config_validate(const plait_aggstore_config_t *cfg)
{
    if (!cfg) return plait_fail(PLAIT_EINVAL, "aggstore: config is NULL");
    if (!cfg->path || !cfg->path[0]) return plait_fail(PLAIT_EINVAL, "aggstore: path is not set");
    if (cfg->busy_timeout_ms < 0 || cfg->busy_timeout_ms > 600000)
        return plait_fail(PLAIT_EINVAL, "aggstore: busy_timeout_ms %d not in 0..600000", cfg->busy_timeout_ms);
    if (cfg->deployment_id && !plait__aggstore_printable_ok(cfg->deployment_id, PLAIT_AGGSTORE_MAX_DEPLOYMENT_ID))
        return plait_fail(PLAIT_EINVAL, "aggstore: deployment_id must be 1..%d printable ASCII bytes",
                          PLAIT_AGGSTORE_MAX_DEPLOYMENT_ID);
    if (cfg->max_adapter_bytes < 1 || cfg->max_adapter_bytes > PLAIT_AGGSTORE_MAX_BLOB_CEILING)
        return plait_fail(PLAIT_EINVAL, "aggstore: max_adapter_bytes %zu not in 1..%zu", cfg->max_adapter_bytes,
                          PLAIT_AGGSTORE_MAX_BLOB_CEILING);
    if (cfg->max_opt_state_bytes > PLAIT_AGGSTORE_MAX_BLOB_CEILING)
        return plait_fail(PLAIT_EINVAL, "aggstore: max_opt_state_bytes %zu over %zu", cfg->max_opt_state_bytes,
                          PLAIT_AGGSTORE_MAX_BLOB_CEILING);
    if (cfg->max_task_config_bytes < 2 || cfg->max_task_config_bytes > PLAIT_AGGSTORE_MAX_BLOB_CEILING)
        return plait_fail(PLAIT_EINVAL, "aggstore: max_task_config_bytes %zu not in 2..%zu",
                          cfg->max_task_config_bytes, PLAIT_AGGSTORE_MAX_BLOB_CEILING);
    if (cfg->max_metrics > 100000)
        return plait_fail(PLAIT_EINVAL, "aggstore: max_metrics %zu over 100000", cfg->max_metrics);
    if (cfg->max_reasons > 1000)
        return plait_fail(PLAIT_EINVAL, "aggstore: max_reasons %zu over 1000", cfg->max_reasons);
    return 0;
}

void plait_aggstore_close(plait_aggstore_t *st)
{
    if (!st) return;
    if (st->db) {
        plait__aggstore_tx_rollback(st);
        sqlite3_close_v2(st->db);
    }
    free(st);
}

int plait_aggstore_open(plait_aggstore_t **out, const plait_aggstore_config_t *cfg)
{
    if (!out) return plait_fail(PLAIT_EINVAL, "aggstore: out is NULL");
    *out = NULL;
    int ret = plait_aggstore_config_validate(cfg);
    if (ret != 0) return ret;
    bool create = cfg->create && !cfg->read_only;
    if (!create) {
        struct stat sb;
        if (stat(cfg->path, &sb) != 0 && errno == ENOENT)
            return plait_fail(PLAIT_ENOENT, "aggstore: database file does not exist");
    }
    plait_aggstore_t *st = calloc(1, sizeof(*st));
    if (!st) return plait_fail(PLAIT_ENOMEM, "aggstore: out of memory");
    st->max_adapter = cfg->max_adapter_bytes;
    st->max_opt = cfg->max_opt_state_bytes;
    st->max_config = cfg->max_task_config_bytes;
    st->max_metrics = cfg->max_metrics;
    st->max_reasons = cfg->max_reasons;
    st->read_only = cfg->read_only;

    int flags = SQLITE_OPEN_NOMUTEX |
                (cfg->read_only ? SQLITE_OPEN_READONLY : SQLITE_OPEN_READWRITE | (create ? SQLITE_OPEN_CREATE : 0));
    int rc = sqlite3_open_v2(cfg->path, &st->db, flags, NULL);
    if (rc != SQLITE_OK) {
        ret = st->db ? plait__aggstore_sqfail(st->db, rc, "opening database")
                     : plait_fail(PLAIT_ENOMEM, "aggstore: out of memory");
        goto fail;
    }
    sqlite3_extended_result_codes(st->db, 1);
    size_t biggest = st->max_adapter;
    if (st->max_opt > biggest) biggest = st->max_opt;
    if (st->max_config > biggest) biggest = st->max_config;
    sqlite3_limit(st->db, SQLITE_LIMIT_LENGTH, (int)(biggest + ROW_SLACK));
    sqlite3_busy_timeout(st->db, cfg->busy_timeout_ms);
    /* Hardening for tampered files, as in store.c. */
    sqlite3_db_config(st->db, SQLITE_DBCONFIG_DEFENSIVE, 1, (int *)NULL);
    sqlite3_db_config(st->db, SQLITE_DBCONFIG_TRUSTED_SCHEMA, 0, (int *)NULL);
    if ((ret = plait__aggstore_exec(st, "PRAGMA cell_size_check = ON", "setting pragmas")) != 0) goto fail;

    /* The first read of the file: random bytes fail here with SQLITE_NOTADB. */
    int64_t ntables = 0, app_id = 0;
    bool found;
    ret = plait__aggstore_query_i64(st, "SELECT count(*) FROM sqlite_master", false, 0, &ntables,
                                    &found, "reading schema");
    if (ret != 0) {
        if (ret == PLAIT_EPROTO)
            plait_fail(PLAIT_EPROTO, "aggstore: not an sqlite database, or corrupt: %s", sqlite3_errmsg(st->db));
        goto fail;
    }
    if ((ret = plait__aggstore_query_i64(st, "PRAGMA application_id", false, 0, &app_id, &found,
                                         "reading application_id")) != 0)
        goto fail;
    if (app_id != 0 && app_id != AGG_APP_ID) {
        ret = plait_fail(PLAIT_EMISMATCH, "aggstore: not an aggregator store (application_id 0x%llx)",
                         (unsigned long long)app_id);
        goto fail;
    }
    if (ntables == 0 && app_id == 0) {
        if (!create) {
            ret = plait_fail(PLAIT_EMISMATCH, "aggstore: not an aggregator store (empty database)");
            goto fail;
        }
        /* Journal mode first: it cannot change inside a transaction. */
        if ((ret = plait__aggstore_exec(st, "PRAGMA journal_mode = WAL", "setting WAL")) != 0) goto fail;
        if ((ret = plait__aggstore_create_schema(st, cfg->deployment_id)) != 0) goto fail;
    }
    if ((ret = plait__aggstore_identify(st, cfg->deployment_id)) != 0) goto fail;
    if (st->info.schema_version < PLAIT_AGGSTORE_SCHEMA_VERSION) {
        if (cfg->read_only) {
            ret = plait_fail(PLAIT_EMISMATCH,
                             "aggstore: schema version %d needs a migration to %d: open it read-write once",
                             st->info.schema_version, PLAIT_AGGSTORE_SCHEMA_VERSION);
            goto fail;
        }
        if ((ret = plait__aggstore_migrate(st)) != 0) goto fail;
        st->info.schema_version = PLAIT_AGGSTORE_SCHEMA_VERSION;
    }
    if ((ret = plait__aggstore_probe_tables(st)) != 0) goto fail;
    /* Only now that the file is known to be ours do we change its settings. */
    if (!cfg->read_only) {
        char sql[160];
        snprintf(sql, sizeof(sql), "PRAGMA journal_mode = WAL; PRAGMA journal_size_limit = %d", WAL_SIZE_LIMIT);
        if ((ret = plait__aggstore_exec(st, sql, "setting WAL")) != 0) goto fail;
    }
    if ((ret = plait__aggstore_exec(st, "PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON",
                                    "setting pragmas")) != 0)
        goto fail;
    if (!cfg->read_only && (ret = plait__aggstore_create_labels(st)) != 0)
        goto fail;
    if (cfg->recover_open_rounds && !cfg->read_only && (ret = plait__aggstore_recover(st)) != 0) goto fail;
    *out = st;
    return 0;
fail:
    plait_aggstore_close(st);
    return ret;
}

int plait_aggstore_info(const plait_aggstore_t *st, plait_aggstore_info_t *out)
{
    int ret = plait__aggstore_check_usable(st);
    if (ret != 0) return ret;
    if (!out) return plait_fail(PLAIT_EINVAL, "aggstore: out is NULL");
    *out = st->info;
    return 0;
}

int plait_aggstore_check_integrity(plait_aggstore_t *st)
{
    int ret = plait__aggstore_check_usable(st);
    if (ret != 0) return ret;
    sqlite3_stmt *s;
    if ((ret = plait__aggstore_prep(st, "PRAGMA integrity_check(1)", &s)) != 0) return ret;
    int rc = sqlite3_step(s);
    if (rc == SQLITE_ROW) {
        const unsigned char *t = sqlite3_column_text(s, 0);
        if (!t || strcmp((const char *)t, "ok") != 0)
            ret = plait_fail(PLAIT_EPROTO, "aggstore: integrity check: %.200s", t ? (const char *)t : "?");
    } else {
        ret = plait__aggstore_sqfail(st->db, rc, "integrity check");
    }
    sqlite3_finalize(s);
    return ret;
}

void plait__aggstore_inject_commit_fault(plait_aggstore_t *st, int step)
{
    if (st) st->fault_step = step;
}

/* ------------------------------------------------------------------------ */
/* Column readers                                                            */
/* ------------------------------------------------------------------------ */

/*
 * A TEXT column's bytes and length, or NULL for any other type. The type is
 * read first: after sqlite converts a value, its type is undefined.
 */
const unsigned char *plait__aggstore_text_col(sqlite3_stmt *s, int col, size_t *len)
{
    *len = 0;
    if (sqlite3_column_type(s, col) != SQLITE_TEXT) return NULL;
    const unsigned char *t = sqlite3_column_text(s, col);
    if (t) *len = (size_t)sqlite3_column_bytes(s, col);
    return t;
}

/* Optional non-negative integer column: NULL gives 0. */
bool plait__aggstore_opt_nonneg(sqlite3_stmt *s, int col, int64_t *out)
{
    int t = sqlite3_column_type(s, col);
    if (t == SQLITE_NULL) {
        *out = 0;
        return true;
    }
    if (t != SQLITE_INTEGER) return false;
    *out = sqlite3_column_int64(s, col);
    return *out >= 0;
}

bool plait__aggstore_nonneg(sqlite3_stmt *s, int col, int64_t *out)
{
    if (sqlite3_column_type(s, col) != SQLITE_INTEGER) return false;
    *out = sqlite3_column_int64(s, col);
    return *out >= 0;
}
