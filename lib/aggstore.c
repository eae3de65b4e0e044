/*
 * aggstore.c: the aggregator's durable state over one sqlite connection.
 * Part of the store module (with store.c): the only other includer of
 * sqlite3.h. Callers never see sqlite types.
 *
 * Schema (version 2), PRAGMA application_id = 'PLAG' (the device store is 'PLAT'):
 *   meta(key TEXT PRIMARY KEY, value)  'magic' = 'plait-aggstore', 'schema_version',
 *                                      'deployment_id', 'created'
 *   devices(id TEXT PRIMARY KEY, fingerprint BLOB(32), enrolled, revoked 0/1,
 *           revoked_at, last_seen, rounds_participated, last_round,
 *           dp_rounds: committed ledger rounds it uploaded to)
 *   rounds(id INTEGER PRIMARY KEY AUTOINCREMENT, state, started, ended,
 *          target_cohort, min_cohort, base_version, new_version, participants,
 *          dropouts, bytes_up, bytes_down, task_config TEXT (JSON), reason)
 *     + unique partial index on state WHERE state = 'open'
 *   rejections(round_id, reason, count)     PRIMARY KEY(round_id, reason)
 *   versions(number INTEGER PRIMARY KEY, round_id UNIQUE, created, sha256,
 *            lora_rank, lora_alpha, lora_targets, opt_kind, adapter BLOB,
 *            opt_state BLOB)          small columns first: listing versions
 *                                     never walks a blob's overflow pages
 *   ledger(round_id PRIMARY KEY, q, noise_multiplier, steps, delta, epsilon,
 *          mechanism, clip, selection, ddg_dim, ddg_var, ddg_n, ddg_l2)
 *   device_labels(label PRIMARY KEY, id UNIQUE REFERENCES devices)  the operator's
 *                                     name of a device; devices.id is the opaque
 *                                     certificate CN (TLS 1.2 sends it in clear).
 *                                     Created on open when missing (stores made
 *                                     before it existed).
 *   metrics(round_id, key, value)           PRIMARY KEY(round_id, key)
 *
 * Migration 1 -> 2 (at a read-write open; a read-only open of a version-1
 * file is refused): ledger gains mechanism ('gaussian'), clip (0: not
 * recorded) and selection ('first-come': what the service did before Poisson
 * sampling existed); devices gains dp_rounds, backfilled with
 * rounds_participated when the ledger has rows (an upper bound: it counts
 * non-DP rounds too) and 0 otherwise.
 * Migration 2 -> 3: ledger gains ddg_dim, ddg_var, ddg_n, ddg_l2 (0: not a
 * "ddg" row; every row before it is Gaussian).
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
#include "plait/aggstore.h"
#include "plait/ddg.h"

#include <errno.h>
#include <math.h>
#include <sqlite3.h>

#include "store_int.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "plait/crashpoint.h"
#include "plait/crypto.h"
#include "plait/ddg.h"
#include "plait/json.h"

#define AGG_MAGIC "plait-aggstore"
#define AGG_APP_ID 0x504C4147 /* "PLAG" */
/* Room for a row's other columns and header on top of its largest blob. */
#define ROW_SLACK 65536
/* Largest -wal file kept after a checkpoint. */
#define WAL_SIZE_LIMIT (64 << 20)
#define MAX_COHORT 1000000000LL
#define ABANDON_REASON "aggregator restarted while the round was open"

struct plait_aggstore_s {
    sqlite3 *db;
    size_t max_adapter, max_opt, max_config, max_metrics, max_reasons;
    bool read_only;
    bool in_cb;
    int fault_step;
    plait_aggstore_info_t info;
};

static const char *const STATE_NAMES[] = {"open", "committed", "failed", "abandoned"};

const char *plait_aggstore_round_state_name(plait_aggstore_round_state_t s)
{
    return (unsigned)s < 4 ? STATE_NAMES[s] : "?";
}

/* ------------------------------------------------------------------------ */
/* Errors                                                                    */
/* ------------------------------------------------------------------------ */

/* Translate an sqlite failure; the detail is sqlite's message, never data. */
static int sqfail(sqlite3 *db, int rc, const char *what) { return plait__sqlite_fail(db, rc, "aggstore", what); }

static int check_usable(const plait_aggstore_t *st)
{
    if (!st) return plait_fail(PLAIT_EINVAL, "aggstore: NULL store");
    if (st->in_cb) return plait_fail(PLAIT_EINVAL, "aggstore: called from inside a callback");
    return 0;
}

static int64_t now_s(void)
{
    time_t t = time(NULL);
    return t > 0 ? (int64_t)t : 0;
}

/* 1..max printable ASCII bytes, NUL-terminated. */
static bool printable_ok(const char *s, size_t max)
{
    if (!s) return false;
    size_t n = strnlen(s, max + 1);
    if (n < 1 || n > max) return false;
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)s[i] < 0x20 || (unsigned char)s[i] > 0x7e) return false;
    return true;
}

/* Same test on a column value of n bytes (may hold NULs: rejected). */
static bool printable_bytes_ok(const unsigned char *s, size_t n, size_t max)
{
    if (!s || n < 1 || n > max) return false;
    for (size_t i = 0; i < n; i++)
        if (s[i] < 0x20 || s[i] > 0x7e) return false;
    return true;
}

/* ------------------------------------------------------------------------ */
/* Statement helpers                                                         */
/* ------------------------------------------------------------------------ */

static int prep(plait_aggstore_t *st, const char *sql, sqlite3_stmt **s)
{
    *s = NULL;
    int rc = sqlite3_prepare_v2(st->db, sql, -1, s, NULL);
    if (rc == SQLITE_OK) return 0;
    /* SQLITE_ERROR at prepare time: a table or column is missing. */
    if ((rc & 0xff) == SQLITE_ERROR)
        return plait_fail(PLAIT_EPROTO, "aggstore: tables malformed: %s", sqlite3_errmsg(st->db));
    return sqfail(st->db, rc, "preparing a statement");
}

static int exec(plait_aggstore_t *st, const char *sql, const char *what)
{
    int rc = sqlite3_exec(st->db, sql, NULL, NULL, NULL);
    return rc == SQLITE_OK ? 0 : sqfail(st->db, rc, what);
}

/* Step a write statement to completion and finalize it. */
static int step_done(plait_aggstore_t *st, sqlite3_stmt *s, const char *what)
{
    int rc = sqlite3_step(s);
    int ret = rc == SQLITE_DONE ? 0 : sqfail(st->db, rc, what);
    sqlite3_finalize(s);
    return ret;
}

/* Run sql (binding ?1 = a if bind) returning one integer; *found = row existed and was an integer. */
static int query_i64(plait_aggstore_t *st, const char *sql, bool bind, int64_t a, int64_t *out,
                     bool *found, const char *what)
{
    sqlite3_stmt *s;
    int ret = prep(st, sql, &s);
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
        ret = sqfail(st->db, rc, what);
    }
    sqlite3_finalize(s);
    return ret;
}

static int tx_begin(plait_aggstore_t *st)
{
    return exec(st, "BEGIN IMMEDIATE", "beginning a transaction");
}

static int tx_commit(plait_aggstore_t *st)
{
    int ret = exec(st, "COMMIT", "committing");
    if (ret != 0 && !sqlite3_get_autocommit(st->db)) sqlite3_exec(st->db, "ROLLBACK", NULL, NULL, NULL);
    return ret;
}

static void tx_rollback(plait_aggstore_t *st)
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
    if (cfg->deployment_id && !printable_ok(cfg->deployment_id, PLAIT_AGGSTORE_MAX_DEPLOYMENT_ID))
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

/* ------------------------------------------------------------------------ */
/* Open / close                                                              */
/* ------------------------------------------------------------------------ */

static const char SCHEMA_SQL[] =
    "CREATE TABLE meta(key TEXT PRIMARY KEY NOT NULL, value NOT NULL) WITHOUT ROWID;"
    "CREATE TABLE devices("
    "  id TEXT PRIMARY KEY NOT NULL,"
    "  fingerprint BLOB NOT NULL,"
    "  enrolled INTEGER NOT NULL,"
    "  revoked INTEGER NOT NULL DEFAULT 0 CHECK (revoked IN (0, 1)),"
    "  revoked_at INTEGER,"
    "  last_seen INTEGER,"
    "  rounds_participated INTEGER NOT NULL DEFAULT 0,"
    "  last_round INTEGER NOT NULL DEFAULT 0,"
    "  dp_rounds INTEGER NOT NULL DEFAULT 0) WITHOUT ROWID;"
    "CREATE TABLE rounds("
    "  id INTEGER PRIMARY KEY AUTOINCREMENT,"
    "  state TEXT NOT NULL CHECK (state IN ('open', 'committed', 'failed', 'abandoned')),"
    "  started INTEGER NOT NULL,"
    "  ended INTEGER,"
    "  target_cohort INTEGER NOT NULL,"
    "  min_cohort INTEGER NOT NULL,"
    "  base_version INTEGER NOT NULL,"
    "  new_version INTEGER UNIQUE,"
    "  participants INTEGER NOT NULL DEFAULT 0,"
    "  dropouts INTEGER NOT NULL DEFAULT 0,"
    "  bytes_up INTEGER NOT NULL DEFAULT 0,"
    "  bytes_down INTEGER NOT NULL DEFAULT 0,"
    "  task_config TEXT NOT NULL,"
    "  reason TEXT NOT NULL DEFAULT '');"
    "CREATE UNIQUE INDEX rounds_one_open ON rounds(state) WHERE state = 'open';"
    "CREATE TABLE rejections("
    "  round_id INTEGER NOT NULL REFERENCES rounds(id),"
    "  reason TEXT NOT NULL,"
    "  count INTEGER NOT NULL,"
    "  PRIMARY KEY (round_id, reason)) WITHOUT ROWID;"
    "CREATE TABLE versions("
    "  number INTEGER PRIMARY KEY,"
    "  round_id INTEGER UNIQUE REFERENCES rounds(id),"
    "  created INTEGER NOT NULL,"
    "  sha256 BLOB NOT NULL,"
    "  lora_rank INTEGER NOT NULL,"
    "  lora_alpha REAL NOT NULL,"
    "  lora_targets INTEGER NOT NULL,"
    "  opt_kind INTEGER NOT NULL,"
    "  adapter BLOB NOT NULL,"
    "  opt_state BLOB NOT NULL);"
    "CREATE TABLE ledger("
    "  round_id INTEGER PRIMARY KEY REFERENCES rounds(id),"
    "  q REAL NOT NULL,"
    "  noise_multiplier REAL NOT NULL,"
    "  steps INTEGER NOT NULL,"
    "  delta REAL NOT NULL,"
    "  epsilon REAL NOT NULL,"
    "  mechanism TEXT NOT NULL DEFAULT 'gaussian',"
    "  clip REAL NOT NULL DEFAULT 0,"
    "  selection TEXT NOT NULL DEFAULT 'first-come',"
    "  ddg_dim INTEGER NOT NULL DEFAULT 0,"
    "  ddg_var REAL NOT NULL DEFAULT 0,"
    "  ddg_n INTEGER NOT NULL DEFAULT 0,"
    "  ddg_l2 REAL NOT NULL DEFAULT 0);"
    "CREATE TABLE metrics("
    "  round_id INTEGER NOT NULL REFERENCES rounds(id),"
    "  key TEXT NOT NULL,"
    "  value REAL NOT NULL,"
    "  PRIMARY KEY (round_id, key)) WITHOUT ROWID;";

#define LABELS_SQL                                                                                                \
    "device_labels(label TEXT PRIMARY KEY NOT NULL, id TEXT NOT NULL UNIQUE REFERENCES devices(id)) WITHOUT ROWID"

/* One SELECT per table naming every column: a file whose tables lack one fails at open. */
static const char *const PROBES[] = {
    "SELECT id, fingerprint, enrolled, revoked, revoked_at, last_seen, rounds_participated, last_round, dp_rounds"
    " FROM devices LIMIT 0",
    "SELECT id, state, started, ended, target_cohort, min_cohort, base_version, new_version, participants,"
    " dropouts, bytes_up, bytes_down, task_config, reason FROM rounds LIMIT 0",
    "SELECT round_id, reason, count FROM rejections LIMIT 0",
    "SELECT number, round_id, created, sha256, lora_rank, lora_alpha, lora_targets, opt_kind, adapter,"
    " opt_state FROM versions LIMIT 0",
    "SELECT round_id, q, noise_multiplier, steps, delta, epsilon, mechanism, clip, selection, ddg_dim, ddg_var,"
    " ddg_n, ddg_l2 FROM ledger LIMIT 0",
    "SELECT round_id, key, value FROM metrics LIMIT 0",
};

static int create_schema(plait_aggstore_t *st, const char *deployment_id)
{
    int ret;
    if ((ret = tx_begin(st)) != 0) return ret;
    int64_t n = 0;
    bool found;
    /* Re-check under the write lock: another process may have created it. */
    if ((ret = query_i64(st, "SELECT count(*) FROM sqlite_master", false, 0, &n, &found, "inspecting schema")) != 0)
        goto fail;
    if (n == 0) {
        char id[PLAIT_AGGSTORE_MAX_DEPLOYMENT_ID + 1];
        if (deployment_id) {
            snprintf(id, sizeof(id), "%s", deployment_id);
        } else {
            uint8_t rnd[16];
            sqlite3_randomness((int)sizeof(rnd), rnd);
            plait_hex(rnd, sizeof(rnd), id);
        }
        if ((ret = exec(st, SCHEMA_SQL, "creating schema")) != 0) goto fail;
        char sql[256];
        snprintf(sql, sizeof(sql), "PRAGMA application_id = %d; PRAGMA user_version = %d;", AGG_APP_ID,
                 PLAIT_AGGSTORE_SCHEMA_VERSION);
        if ((ret = exec(st, sql, "setting application_id")) != 0) goto fail;
        sqlite3_stmt *s;
        if ((ret = prep(st,
                        "INSERT INTO meta(key, value) VALUES ('magic', '" AGG_MAGIC "'),"
                        " ('schema_version', ?1), ('deployment_id', ?2), ('created', ?3)",
                        &s)) != 0)
            goto fail;
        sqlite3_bind_int(s, 1, PLAIT_AGGSTORE_SCHEMA_VERSION);
        sqlite3_bind_text(s, 2, id, -1, SQLITE_TRANSIENT);
        sqlite3_bind_int64(s, 3, now_s());
        if ((ret = step_done(st, s, "writing meta")) != 0) goto fail;
    }
    return tx_commit(st);
fail:
    tx_rollback(st);
    return ret;
}

/* Read meta[key] into *type / *num / txt (text copied, truncated to cap - 1). */
static int meta_get(plait_aggstore_t *st, const char *key, int *type, int64_t *num, char *txt, size_t cap)
{
    sqlite3_stmt *s = NULL;
    int rc = sqlite3_prepare_v2(st->db, "SELECT value FROM meta WHERE key = ?1", -1, &s, NULL);
    if (rc != SQLITE_OK) {
        if ((rc & 0xff) == SQLITE_ERROR)
            return plait_fail(PLAIT_EMISMATCH, "aggstore: not an aggregator store (meta table: %s)",
                              sqlite3_errmsg(st->db));
        return sqfail(st->db, rc, "reading meta");
    }
    sqlite3_bind_text(s, 1, key, -1, SQLITE_STATIC);
    rc = sqlite3_step(s);
    int ret = 0;
    *type = SQLITE_NULL;
    txt[0] = '\0';
    if (rc == SQLITE_ROW) {
        *type = sqlite3_column_type(s, 0);
        if (*type == SQLITE_INTEGER) {
            *num = sqlite3_column_int64(s, 0);
        } else if (*type == SQLITE_TEXT) {
            const unsigned char *t = sqlite3_column_text(s, 0);
            size_t n = (size_t)sqlite3_column_bytes(s, 0);
            if (!t) {
                ret = sqfail(st->db, sqlite3_errcode(st->db), "reading meta");
            } else if (n >= cap || strlen((const char *)t) != n) {
                *type = SQLITE_BLOB; /* too long or embedded NUL: report as malformed */
            } else {
                memcpy(txt, t, n + 1);
            }
        }
    } else if (rc != SQLITE_DONE) {
        ret = sqfail(st->db, rc, "reading meta");
    }
    sqlite3_finalize(s);
    return ret;
}

static int identify(plait_aggstore_t *st, const char *want_id)
{
    int ret;
    int64_t n = 0;
    bool found;
    if ((ret = query_i64(st, "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'meta'", false, 0,
                         &n, &found, "inspecting schema")) != 0)
        return ret;
    if (n == 0) return plait_fail(PLAIT_EMISMATCH, "aggstore: not an aggregator store (no meta table)");
    int type;
    int64_t num = 0;
    char txt[PLAIT_AGGSTORE_MAX_DEPLOYMENT_ID + 2];
    if ((ret = meta_get(st, "magic", &type, &num, txt, sizeof(txt))) != 0) return ret;
    if (type != SQLITE_TEXT || strcmp(txt, AGG_MAGIC) != 0)
        return plait_fail(PLAIT_EMISMATCH, "aggstore: not an aggregator store (bad magic)");
    if ((ret = meta_get(st, "schema_version", &type, &num, txt, sizeof(txt))) != 0) return ret;
    if (type != SQLITE_INTEGER || num < 1)
        return plait_fail(PLAIT_EPROTO, "aggstore: meta: schema_version missing or malformed");
    if (num > PLAIT_AGGSTORE_SCHEMA_VERSION)
        return plait_fail(PLAIT_EMISMATCH, "aggstore: schema version %lld is newer than this build supports (%d)",
                          (long long)num, PLAIT_AGGSTORE_SCHEMA_VERSION);
    st->info.schema_version = (int)num;
    if ((ret = meta_get(st, "deployment_id", &type, &num, txt, sizeof(txt))) != 0) return ret;
    if (type != SQLITE_TEXT || !printable_ok(txt, PLAIT_AGGSTORE_MAX_DEPLOYMENT_ID))
        return plait_fail(PLAIT_EPROTO, "aggstore: meta: deployment_id missing or malformed");
    if (want_id && strcmp(want_id, txt) != 0)
        return plait_fail(PLAIT_EMISMATCH, "aggstore: database belongs to deployment '%s', not '%s'", txt, want_id);
    memcpy(st->info.deployment_id, txt, strlen(txt) + 1);
    if ((ret = meta_get(st, "created", &type, &num, txt, sizeof(txt))) != 0) return ret;
    if (type != SQLITE_INTEGER || num < 0)
        return plait_fail(PLAIT_EPROTO, "aggstore: meta: created missing or malformed");
    st->info.created = num;
    return 0;
}

static int probe_tables(plait_aggstore_t *st)
{
    int ret;
    for (size_t i = 0; i < sizeof(PROBES) / sizeof(PROBES[0]); i++) {
        sqlite3_stmt *s;
        if ((ret = prep(st, PROBES[i], &s)) != 0) return ret;
        sqlite3_finalize(s);
    }
    return 0;
}

/* Schema 1 -> 2 in one transaction (see the file comment). */
static int migrate_to_2(plait_aggstore_t *st)
{
    int ret;
    if ((ret = tx_begin(st)) != 0) return ret;
    int64_t v = 0;
    bool found;
    /* Re-check under the write lock: another process may have migrated it. */
    if ((ret = query_i64(st, "SELECT value FROM meta WHERE key = 'schema_version'", false, 0, &v, &found,
                         "reading schema version")) != 0)
        goto fail;
    if (v == 1) {
        char sql[200];
        if ((ret = exec(st,
                        "ALTER TABLE ledger ADD COLUMN mechanism TEXT NOT NULL DEFAULT 'gaussian';"
                        "ALTER TABLE ledger ADD COLUMN clip REAL NOT NULL DEFAULT 0;"
                        "ALTER TABLE ledger ADD COLUMN selection TEXT NOT NULL DEFAULT 'first-come';"
                        "ALTER TABLE devices ADD COLUMN dp_rounds INTEGER NOT NULL DEFAULT 0;"
                        "UPDATE devices SET dp_rounds = rounds_participated WHERE EXISTS (SELECT 1 FROM ledger);"
                        "UPDATE meta SET value = 2 WHERE key = 'schema_version';",
                        "migrating the schema to version 2")) != 0)
            goto fail;
        snprintf(sql, sizeof(sql), "PRAGMA user_version = %d;", 2);
        if ((ret = exec(st, sql, "migrating the schema to version 2")) != 0) goto fail;
    }
    return tx_commit(st);
fail:
    tx_rollback(st);
    return ret;
}

/* Schema 2 -> 3 in one transaction: the distributed discrete Gaussian's ledger columns. */
static int migrate_to_3(plait_aggstore_t *st)
{
    int ret;
    if ((ret = tx_begin(st)) != 0) return ret;
    int64_t v = 0;
    bool found;
    if ((ret = query_i64(st, "SELECT value FROM meta WHERE key = 'schema_version'", false, 0, &v, &found,
                         "reading schema version")) != 0)
        goto fail;
    if (v == 2) {
        if ((ret = exec(st,
                        "ALTER TABLE ledger ADD COLUMN ddg_dim INTEGER NOT NULL DEFAULT 0;"
                        "ALTER TABLE ledger ADD COLUMN ddg_var REAL NOT NULL DEFAULT 0;"
                        "ALTER TABLE ledger ADD COLUMN ddg_n INTEGER NOT NULL DEFAULT 0;"
                        "ALTER TABLE ledger ADD COLUMN ddg_l2 REAL NOT NULL DEFAULT 0;"
                        "UPDATE meta SET value = 3 WHERE key = 'schema_version';"
                        "PRAGMA user_version = 3;",
                        "migrating the schema to version 3")) != 0)
            goto fail;
    }
    return tx_commit(st);
fail:
    tx_rollback(st);
    return ret;
}

/* Abandon rounds a crash left open. */
static int recover(plait_aggstore_t *st)
{
    int ret;
    if ((ret = tx_begin(st)) != 0) return ret;
    sqlite3_stmt *s;
    if ((ret = prep(st,
                    "UPDATE rounds SET state = 'abandoned', ended = max(?1, started), reason = ?2"
                    " WHERE state = 'open'",
                    &s)) != 0)
        goto fail;
    sqlite3_bind_int64(s, 1, now_s());
    sqlite3_bind_text(s, 2, ABANDON_REASON, -1, SQLITE_STATIC);
    if ((ret = step_done(st, s, "abandoning open rounds")) != 0) goto fail;
    st->info.abandoned_at_open = (int64_t)sqlite3_changes64(st->db);
    return tx_commit(st);
fail:
    tx_rollback(st);
    return ret;
}

void plait_aggstore_close(plait_aggstore_t *st)
{
    if (!st) return;
    if (st->db) {
        tx_rollback(st);
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
        ret = st->db ? sqfail(st->db, rc, "opening database") : plait_fail(PLAIT_ENOMEM, "aggstore: out of memory");
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
    if ((ret = exec(st, "PRAGMA cell_size_check = ON", "setting pragmas")) != 0) goto fail;

    /* The first read of the file: random bytes fail here with SQLITE_NOTADB. */
    int64_t ntables = 0, app_id = 0;
    bool found;
    ret = query_i64(st, "SELECT count(*) FROM sqlite_master", false, 0, &ntables, &found, "reading schema");
    if (ret != 0) {
        if (ret == PLAIT_EPROTO)
            plait_fail(PLAIT_EPROTO, "aggstore: not an sqlite database, or corrupt: %s", sqlite3_errmsg(st->db));
        goto fail;
    }
    if ((ret = query_i64(st, "PRAGMA application_id", false, 0, &app_id, &found, "reading application_id")) != 0)
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
        if ((ret = exec(st, "PRAGMA journal_mode = WAL", "setting WAL")) != 0) goto fail;
        if ((ret = create_schema(st, cfg->deployment_id)) != 0) goto fail;
    }
    if ((ret = identify(st, cfg->deployment_id)) != 0) goto fail;
    if (st->info.schema_version < PLAIT_AGGSTORE_SCHEMA_VERSION) {
        if (cfg->read_only) {
            ret = plait_fail(PLAIT_EMISMATCH,
                             "aggstore: schema version %d needs a migration to %d: open it read-write once",
                             st->info.schema_version, PLAIT_AGGSTORE_SCHEMA_VERSION);
            goto fail;
        }
        if ((ret = migrate_to_2(st)) != 0 || (ret = migrate_to_3(st)) != 0) goto fail;
        st->info.schema_version = PLAIT_AGGSTORE_SCHEMA_VERSION;
    }
    if ((ret = probe_tables(st)) != 0) goto fail;
    /* Only now that the file is known to be ours do we change its settings. */
    if (!cfg->read_only) {
        char sql[160];
        snprintf(sql, sizeof(sql), "PRAGMA journal_mode = WAL; PRAGMA journal_size_limit = %d", WAL_SIZE_LIMIT);
        if ((ret = exec(st, sql, "setting WAL")) != 0) goto fail;
    }
    if ((ret = exec(st, "PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON", "setting pragmas")) != 0) goto fail;
    if (!cfg->read_only && (ret = exec(st, "CREATE TABLE IF NOT EXISTS " LABELS_SQL, "creating device_labels")) != 0)
        goto fail;
    if (cfg->recover_open_rounds && !cfg->read_only && (ret = recover(st)) != 0) goto fail;
    *out = st;
    return 0;
fail:
    plait_aggstore_close(st);
    return ret;
}

int plait_aggstore_info(const plait_aggstore_t *st, plait_aggstore_info_t *out)
{
    int ret = check_usable(st);
    if (ret != 0) return ret;
    if (!out) return plait_fail(PLAIT_EINVAL, "aggstore: out is NULL");
    *out = st->info;
    return 0;
}

int plait_aggstore_check_integrity(plait_aggstore_t *st)
{
    int ret = check_usable(st);
    if (ret != 0) return ret;
    sqlite3_stmt *s;
    if ((ret = prep(st, "PRAGMA integrity_check(1)", &s)) != 0) return ret;
    int rc = sqlite3_step(s);
    if (rc == SQLITE_ROW) {
        const unsigned char *t = sqlite3_column_text(s, 0);
        if (!t || strcmp((const char *)t, "ok") != 0)
            ret = plait_fail(PLAIT_EPROTO, "aggstore: integrity check: %.200s", t ? (const char *)t : "?");
    } else {
        ret = sqfail(st->db, rc, "integrity check");
    }
    sqlite3_finalize(s);
    return ret;
}

void plait__aggstore_inject_commit_fault(plait_aggstore_t *st, int step)
{
    if (st) st->fault_step = step;
}

/* ------------------------------------------------------------------------ */
/* Devices                                                                   */
/* ------------------------------------------------------------------------ */

#define DEVICE_COLS "id, fingerprint, enrolled, revoked, revoked_at, last_seen, rounds_participated, last_round"

static int check_id(const char *id)
{
    if (!printable_ok(id, PLAIT_AGGSTORE_MAX_DEVICE_ID))
        return plait_fail(PLAIT_EINVAL, "aggstore: device id must be 1..%d printable ASCII bytes",
                          PLAIT_AGGSTORE_MAX_DEVICE_ID);
    return 0;
}

/*
 * A TEXT column's bytes and length, or NULL for any other type. The type is
 * read first: after sqlite converts a value, its type is undefined.
 */
static const unsigned char *text_col(sqlite3_stmt *s, int col, size_t *len)
{
    *len = 0;
    if (sqlite3_column_type(s, col) != SQLITE_TEXT) return NULL;
    const unsigned char *t = sqlite3_column_text(s, col);
    if (t) *len = (size_t)sqlite3_column_bytes(s, col);
    return t;
}

/* Optional non-negative integer column: NULL gives 0. */
static bool opt_nonneg(sqlite3_stmt *s, int col, int64_t *out)
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

static bool nonneg(sqlite3_stmt *s, int col, int64_t *out)
{
    if (sqlite3_column_type(s, col) != SQLITE_INTEGER) return false;
    *out = sqlite3_column_int64(s, col);
    return *out >= 0;
}

/* Validate the current DEVICE_COLS row into d. */
static int read_device(sqlite3_stmt *s, plait_aggstore_device_t *d)
{
    memset(d, 0, sizeof(*d));
    size_t n;
    const unsigned char *id = text_col(s, 0, &n);
    if (!printable_bytes_ok(id, n, PLAIT_AGGSTORE_MAX_DEVICE_ID))
        return plait_fail(PLAIT_EPROTO, "aggstore: devices: a row has a malformed id");
    memcpy(d->id, id, n);
    d->id[n] = '\0';
    const char *bad = NULL;
    int64_t revoked = 0;
    if (sqlite3_column_type(s, 1) != SQLITE_BLOB || sqlite3_column_bytes(s, 1) != 32) bad = "fingerprint";
    else if (!nonneg(s, 2, &d->enrolled)) bad = "enrolled";
    else if (!nonneg(s, 3, &revoked) || revoked > 1) bad = "revoked";
    else if (!opt_nonneg(s, 4, &d->revoked_at)) bad = "revoked_at";
    else if (!opt_nonneg(s, 5, &d->last_seen)) bad = "last_seen";
    else if (!nonneg(s, 6, &d->rounds_participated)) bad = "rounds_participated";
    else if (!nonneg(s, 7, &d->last_round)) bad = "last_round";
    if (bad) return plait_fail(PLAIT_EPROTO, "aggstore: devices: device '%s': malformed %s", d->id, bad);
    memcpy(d->fingerprint, sqlite3_column_blob(s, 1), 32);
    d->revoked = revoked == 1;
    return 0;
}

/* Read one device; PLAIT_ENOENT if absent. */
static int load_device(plait_aggstore_t *st, const char *id, plait_aggstore_device_t *d)
{
    sqlite3_stmt *s;
    int ret = prep(st, "SELECT " DEVICE_COLS " FROM devices WHERE id = ?1", &s);
    if (ret != 0) return ret;
    sqlite3_bind_text(s, 1, id, -1, SQLITE_STATIC);
    int rc = sqlite3_step(s);
    if (rc == SQLITE_ROW) ret = read_device(s, d);
    else if (rc == SQLITE_DONE) ret = plait_fail(PLAIT_ENOENT, "aggstore: no device '%s'", id);
    else ret = sqfail(st->db, rc, "reading device");
    sqlite3_finalize(s);
    return ret;
}

int plait_aggstore_device_enroll(plait_aggstore_t *st, const char *id, const uint8_t fingerprint[32])
{
    int ret = check_usable(st);
    if (ret != 0 || (ret = check_id(id)) != 0) return ret;
    if (!fingerprint) return plait_fail(PLAIT_EINVAL, "aggstore: fingerprint is NULL");
    sqlite3_stmt *s;
    if ((ret = prep(st, "INSERT INTO devices(id, fingerprint, enrolled) VALUES (?1, ?2, ?3)", &s)) != 0) return ret;
    sqlite3_bind_text(s, 1, id, -1, SQLITE_STATIC);
    sqlite3_bind_blob(s, 2, fingerprint, 32, SQLITE_STATIC);
    sqlite3_bind_int64(s, 3, now_s());
    int rc = sqlite3_step(s);
    if (rc == SQLITE_DONE) ret = 0;
    else if ((rc & 0xff) == SQLITE_CONSTRAINT)
        ret = plait_fail(PLAIT_EINVAL, "aggstore: device '%s' is already enrolled", id);
    else ret = sqfail(st->db, rc, "enrolling device");
    sqlite3_finalize(s);
    return ret;
}

/* Run a one-device UPDATE with ?1 = id, ?2 = now; PLAIT_ENOENT if no row changed. */
static int device_update(plait_aggstore_t *st, const char *id, const char *sql, const char *what)
{
    int ret = check_usable(st);
    if (ret != 0 || (ret = check_id(id)) != 0) return ret;
    sqlite3_stmt *s;
    if ((ret = prep(st, sql, &s)) != 0) return ret;
    sqlite3_bind_text(s, 1, id, -1, SQLITE_STATIC);
    sqlite3_bind_int64(s, 2, now_s());
    if ((ret = step_done(st, s, what)) != 0) return ret;
    if (sqlite3_changes64(st->db) == 0) return plait_fail(PLAIT_ENOENT, "aggstore: no device '%s'", id);
    return 0;
}

int plait_aggstore_device_revoke(plait_aggstore_t *st, const char *id)
{
    return device_update(st, id,
                         "UPDATE devices SET revoked = 1, revoked_at = coalesce(revoked_at, ?2) WHERE id = ?1",
                         "revoking device");
}

int plait_aggstore_device_touch(plait_aggstore_t *st, const char *id)
{
    return device_update(st, id, "UPDATE devices SET last_seen = ?2 WHERE id = ?1", "touching device");
}

int plait_aggstore_device_rekey(plait_aggstore_t *st, const char *id, const uint8_t fingerprint[32])
{
    int ret = check_usable(st);
    if (ret != 0 || (ret = check_id(id)) != 0) return ret;
    if (!fingerprint) return plait_fail(PLAIT_EINVAL, "aggstore: fingerprint is NULL");
    sqlite3_stmt *s;
    if ((ret = prep(st, "UPDATE devices SET fingerprint = ?2 WHERE id = ?1 AND revoked = 0", &s)) != 0) return ret;
    sqlite3_bind_text(s, 1, id, -1, SQLITE_STATIC);
    sqlite3_bind_blob(s, 2, fingerprint, 32, SQLITE_STATIC);
    if ((ret = step_done(st, s, "renewing device")) != 0) return ret;
    if (sqlite3_changes64(st->db) == 0)
        return plait_fail(PLAIT_ENOENT, "aggstore: no enrolled, unrevoked device '%s'", id);
    return 0;
}

int plait_aggstore_device_get(plait_aggstore_t *st, const char *id, plait_aggstore_device_t *out)
{
    int ret = check_usable(st);
    if (ret != 0 || (ret = check_id(id)) != 0) return ret;
    if (!out) return plait_fail(PLAIT_EINVAL, "aggstore: out is NULL");
    return load_device(st, id, out);
}

int plait_aggstore_device_is_revoked(plait_aggstore_t *st, const char *id, bool *revoked)
{
    if (!revoked) return plait_fail(PLAIT_EINVAL, "aggstore: out is NULL");
    plait_aggstore_device_t d;
    int ret = plait_aggstore_device_get(st, id, &d);
    if (ret == 0) *revoked = d.revoked;
    return ret;
}

int plait_aggstore_device_check(plait_aggstore_t *st, const char *id, const uint8_t fingerprint[32])
{
    if (!fingerprint) return plait_fail(PLAIT_EINVAL, "aggstore: fingerprint is NULL");
    plait_aggstore_device_t d;
    int ret = plait_aggstore_device_get(st, id, &d);
    if (ret != 0) return ret;
    if (d.revoked) return plait_fail(PLAIT_EAUTH, "aggstore: device '%s' is revoked", id);
    if (plait_ct_memcmp(d.fingerprint, fingerprint, 32) != 0)
        return plait_fail(PLAIT_EAUTH, "aggstore: device '%s' presented a certificate other than the enrolled one",
                          id);
    return 0;
}

/* State of a round; PLAIT_ENOENT if none. Also validates the state text. */
static int round_state(plait_aggstore_t *st, int64_t round, plait_aggstore_round_state_t *state, int64_t *base)
{
    sqlite3_stmt *s;
    int ret = prep(st, "SELECT state, base_version FROM rounds WHERE id = ?1", &s);
    if (ret != 0) return ret;
    sqlite3_bind_int64(s, 1, round);
    int rc = sqlite3_step(s);
    if (rc == SQLITE_ROW) {
        size_t tl;
        const unsigned char *t = text_col(s, 0, &tl);
        ret = plait_fail(PLAIT_EPROTO, "aggstore: rounds: round %lld: malformed state", (long long)round);
        for (int i = 0; i < 4 && t; i++)
            if (strcmp((const char *)t, STATE_NAMES[i]) == 0) {
                *state = (plait_aggstore_round_state_t)i;
                ret = 0;
            }
        if (ret == 0 && !nonneg(s, 1, base))
            ret = plait_fail(PLAIT_EPROTO, "aggstore: rounds: round %lld: malformed base_version", (long long)round);
    } else if (rc == SQLITE_DONE) {
        ret = plait_fail(PLAIT_ENOENT, "aggstore: no round %lld", (long long)round);
    } else {
        ret = sqfail(st->db, rc, "reading round");
    }
    sqlite3_finalize(s);
    return ret;
}

int plait_aggstore_device_mark_uploaded(plait_aggstore_t *st, const char *id, int64_t round)
{
    int ret = check_usable(st);
    if (ret != 0 || (ret = check_id(id)) != 0) return ret;
    if (round < 1) return plait_fail(PLAIT_EINVAL, "aggstore: bad round id %lld", (long long)round);
    if ((ret = tx_begin(st)) != 0) return ret;
    plait_aggstore_device_t d;
    plait_aggstore_round_state_t state;
    int64_t base;
    if ((ret = load_device(st, id, &d)) != 0) goto fail;
    if (d.revoked) {
        ret = plait_fail(PLAIT_EAUTH, "aggstore: device '%s' is revoked", id);
        goto fail;
    }
    if ((ret = round_state(st, round, &state, &base)) != 0) goto fail;
    if (state != PLAIT_AGGSTORE_ROUND_OPEN) {
        ret = plait_fail(PLAIT_ESTALE, "aggstore: round %lld is %s, not open", (long long)round,
                         STATE_NAMES[state]);
        goto fail;
    }
    if (d.last_round >= round) {
        ret = plait_fail(PLAIT_ESTALE, "aggstore: device '%s' already uploaded to round %lld", id,
                         (long long)d.last_round);
        goto fail;
    }
    sqlite3_stmt *s;
    if ((ret = prep(st,
                    "UPDATE devices SET last_round = ?2, rounds_participated = rounds_participated + 1,"
                    " last_seen = ?3 WHERE id = ?1",
                    &s)) != 0)
        goto fail;
    sqlite3_bind_text(s, 1, id, -1, SQLITE_STATIC);
    sqlite3_bind_int64(s, 2, round);
    sqlite3_bind_int64(s, 3, now_s());
    if ((ret = step_done(st, s, "marking upload")) != 0) goto fail;
    return tx_commit(st);
fail:
    tx_rollback(st);
    return ret;
}

int plait_aggstore_devices_foreach(plait_aggstore_t *st, plait_aggstore_device_cb cb, void *ud)
{
    int ret = check_usable(st);
    if (ret != 0) return ret;
    if (!cb) return plait_fail(PLAIT_EINVAL, "aggstore: callback is NULL");
    sqlite3_stmt *s;
    if ((ret = prep(st, "SELECT " DEVICE_COLS " FROM devices ORDER BY id", &s)) != 0) return ret;
    int rc;
    while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
        plait_aggstore_device_t d;
        if ((ret = read_device(s, &d)) != 0) break;
        st->in_cb = true;
        ret = cb(ud, &d);
        st->in_cb = false;
        if (ret != 0) break;
    }
    if (ret == 0 && rc != SQLITE_DONE) ret = sqfail(st->db, rc, "reading devices");
    sqlite3_finalize(s);
    return ret;
}

/* ---- labels ---------------------------------------------------------------- */

/* 1 if the store has the device_labels table (a read-only open of an old store may not). */
static int have_labels(plait_aggstore_t *st, int *yes)
{
    int64_t n = 0;
    bool found;
    int ret = query_i64(st, "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'device_labels'",
                        false, 0, &n, &found, "inspecting schema");
    *yes = ret == 0 && n == 1;
    return ret;
}

int plait_aggstore_device_enroll_labeled(plait_aggstore_t *st, const char *id, const char *label,
                                         const uint8_t fingerprint[32])
{
    int ret = check_usable(st);
    if (ret != 0 || (ret = check_id(id)) != 0 || (ret = check_id(label)) != 0) return ret;
    /* Lookups by name try labels first: a label shaped like a device id (32 hex digits) could
     * shadow another device's id, so only a device's own id may serve as its label. */
    if (strcmp(label, id) != 0 && strlen(label) == 32 && strspn(label, "0123456789abcdefABCDEF") == 32)
        return plait_fail(PLAIT_EINVAL, "aggstore: label '%s' looks like a device id; choose another", label);
    if ((ret = tx_begin(st)) != 0) return ret;
    if ((ret = plait_aggstore_device_enroll(st, id, fingerprint)) != 0) goto fail;
    sqlite3_stmt *s;
    if ((ret = prep(st, "INSERT INTO device_labels(label, id) VALUES (?1, ?2)", &s)) != 0) goto fail;
    sqlite3_bind_text(s, 1, label, -1, SQLITE_STATIC);
    sqlite3_bind_text(s, 2, id, -1, SQLITE_STATIC);
    int rc = sqlite3_step(s);
    if (rc == SQLITE_DONE) ret = 0;
    else if ((rc & 0xff) == SQLITE_CONSTRAINT)
        ret = plait_fail(PLAIT_EINVAL, "aggstore: label '%s' is already taken (labels are never reused)", label);
    else ret = sqfail(st->db, rc, "labelling device");
    sqlite3_finalize(s);
    if (ret != 0) goto fail;
    return tx_commit(st);
fail:
    tx_rollback(st);
    return ret;
}

/* SELECT one text column by one text key into out (cap bytes); PLAIT_ENOENT if no row. */
static int label_query(plait_aggstore_t *st, const char *sql, const char *key, char *out, size_t cap)
{
    int yes = 0, ret = check_usable(st);
    if (ret != 0 || (ret = check_id(key)) != 0) return ret;
    if (!out) return plait_fail(PLAIT_EINVAL, "aggstore: out is NULL");
    out[0] = '\0';
    if ((ret = have_labels(st, &yes)) != 0) return ret;
    if (!yes) return plait_fail(PLAIT_ENOENT, "aggstore: no label '%s'", key);
    sqlite3_stmt *s;
    if ((ret = prep(st, sql, &s)) != 0) return ret;
    sqlite3_bind_text(s, 1, key, -1, SQLITE_STATIC);
    int rc = sqlite3_step(s);
    if (rc == SQLITE_ROW) {
        size_t n;
        const unsigned char *v = text_col(s, 0, &n);
        if (!printable_bytes_ok(v, n, PLAIT_AGGSTORE_MAX_DEVICE_ID) || n >= cap) {
            ret = plait_fail(PLAIT_EPROTO, "aggstore: device_labels: a malformed row");
        } else {
            memcpy(out, v, n);
            out[n] = '\0';
        }
    } else if (rc == SQLITE_DONE) {
        ret = plait_fail(PLAIT_ENOENT, "aggstore: no device labelled or with id '%s'", key);
    } else {
        ret = sqfail(st->db, rc, "reading device_labels");
    }
    sqlite3_finalize(s);
    return ret;
}

int plait_aggstore_device_find(plait_aggstore_t *st, const char *label_or_id, char id[PLAIT_AGGSTORE_MAX_DEVICE_ID + 1])
{
    int ret = label_query(st, "SELECT id FROM device_labels WHERE label = ?1", label_or_id, id,
                          PLAIT_AGGSTORE_MAX_DEVICE_ID + 1);
    if (ret != PLAIT_ENOENT) return ret;
    plait_aggstore_device_t d;
    if ((ret = load_device(st, label_or_id, &d)) != 0) return ret;
    memcpy(id, d.id, sizeof(d.id));
    return 0;
}

int plait_aggstore_device_label(plait_aggstore_t *st, const char *id, char label[PLAIT_AGGSTORE_MAX_DEVICE_ID + 1])
{
    return label_query(st, "SELECT label FROM device_labels WHERE id = ?1", id, label,
                       PLAIT_AGGSTORE_MAX_DEVICE_ID + 1);
}

/* ------------------------------------------------------------------------ */
/* Rounds                                                                    */
/* ------------------------------------------------------------------------ */

/* Check a JSON object of n bytes (n excludes any NUL). */
static int json_object_ok(const char *text, size_t n)
{
    plait_json_limits_t lim;
    plait_json_limits_default(&lim);
    lim.max_nodes = 100000;
    plait_json_t *root = NULL;
    int ret = plait_json_parse_ex(text, n, &lim, &root);
    if (ret == 0 && plait_json_type(root) != PLAIT_JSON_OBJECT) ret = PLAIT_EPROTO;
    plait_json_free(root);
    return ret;
}

static int check_stats(const plait_aggstore_t *st, const plait_aggstore_stats_t *x)
{
    if (x->participants < 0 || x->dropouts < 0 || x->bytes_up < 0 || x->bytes_down < 0)
        return plait_fail(PLAIT_EINVAL, "aggstore: negative round counter");
    if (x->n_rejections > st->max_reasons)
        return plait_fail(PLAIT_ETOOBIG, "aggstore: %zu rejection reasons, max %zu", x->n_rejections,
                          st->max_reasons);
    if (x->n_rejections > 0 && !x->rejections) return plait_fail(PLAIT_EINVAL, "aggstore: rejections is NULL");
    for (size_t i = 0; i < x->n_rejections; i++) {
        if (!printable_ok(x->rejections[i].reason, PLAIT_AGGSTORE_MAX_KEY))
            return plait_fail(PLAIT_EINVAL, "aggstore: rejection reason %zu is not 1..%d printable bytes", i,
                              PLAIT_AGGSTORE_MAX_KEY);
        if (x->rejections[i].count < 0)
            return plait_fail(PLAIT_EINVAL, "aggstore: rejection '%s' has a negative count",
                              x->rejections[i].reason);
        for (size_t j = 0; j < i; j++)
            if (strcmp(x->rejections[i].reason, x->rejections[j].reason) == 0)
                return plait_fail(PLAIT_EINVAL, "aggstore: rejection reason '%s' given twice",
                                  x->rejections[i].reason);
    }
    return 0;
}

/* Counters of a round (step 1 of a commit writes them with the state). */
static int write_counters(plait_aggstore_t *st, int64_t round, const plait_aggstore_stats_t *x)
{
    sqlite3_stmt *s;
    int ret = prep(st,
                   "UPDATE rounds SET participants = ?2, dropouts = ?3, bytes_up = ?4, bytes_down = ?5"
                   " WHERE id = ?1",
                   &s);
    if (ret != 0) return ret;
    sqlite3_bind_int64(s, 1, round);
    sqlite3_bind_int64(s, 2, x->participants);
    sqlite3_bind_int64(s, 3, x->dropouts);
    sqlite3_bind_int64(s, 4, x->bytes_up);
    sqlite3_bind_int64(s, 5, x->bytes_down);
    return step_done(st, s, "writing round counters");
}

static int write_rejections(plait_aggstore_t *st, int64_t round, const plait_aggstore_stats_t *x)
{
    sqlite3_stmt *s;
    int ret = prep(st, "DELETE FROM rejections WHERE round_id = ?1", &s);
    if (ret != 0) return ret;
    sqlite3_bind_int64(s, 1, round);
    if ((ret = step_done(st, s, "replacing rejections")) != 0) return ret;
    for (size_t i = 0; i < x->n_rejections; i++) {
        if ((ret = prep(st, "INSERT INTO rejections(round_id, reason, count) VALUES (?1, ?2, ?3)", &s)) != 0)
            return ret;
        sqlite3_bind_int64(s, 1, round);
        sqlite3_bind_text(s, 2, x->rejections[i].reason, -1, SQLITE_STATIC);
        sqlite3_bind_int64(s, 3, x->rejections[i].count);
        if ((ret = step_done(st, s, "writing rejections")) != 0) return ret;
    }
    return 0;
}

int plait_aggstore_round_begin(plait_aggstore_t *st, int64_t target_cohort, int64_t min_cohort,
                               const char *task_config, int64_t base_version, int64_t *round_out)
{
    int ret = check_usable(st);
    if (ret != 0) return ret;
    if (!round_out) return plait_fail(PLAIT_EINVAL, "aggstore: round_out is NULL");
    if (target_cohort < 1 || target_cohort > MAX_COHORT)
        return plait_fail(PLAIT_EINVAL, "aggstore: target_cohort %lld not in 1..%lld", (long long)target_cohort,
                          MAX_COHORT);
    if (min_cohort < 1 || min_cohort > target_cohort)
        return plait_fail(PLAIT_EINVAL, "aggstore: min_cohort %lld not in 1..%lld", (long long)min_cohort,
                          (long long)target_cohort);
    if (!task_config) return plait_fail(PLAIT_EINVAL, "aggstore: task_config is NULL");
    size_t clen = strnlen(task_config, st->max_config + 1);
    if (clen > st->max_config)
        return plait_fail(PLAIT_ETOOBIG, "aggstore: task config over %zu bytes", st->max_config);
    if (json_object_ok(task_config, clen) != 0)
        return plait_fail(PLAIT_EINVAL, "aggstore: task config is not a JSON object");
    if (base_version < 0) return plait_fail(PLAIT_EINVAL, "aggstore: negative base_version");
    if ((ret = tx_begin(st)) != 0) return ret;
    int64_t open_id = 0, latest = 0;
    bool found;
    if ((ret = query_i64(st, "SELECT id FROM rounds WHERE state = 'open'", false, 0, &open_id, &found,
                         "looking for an open round")) != 0)
        goto fail;
    if (found) {
        ret = plait_fail(PLAIT_EINVAL, "aggstore: round %lld is still open", (long long)open_id);
        goto fail;
    }
    if ((ret = query_i64(st, "SELECT coalesce(max(number), 0) FROM versions", false, 0, &latest, &found,
                         "reading latest version")) != 0)
        goto fail;
    if (base_version != latest) {
        ret = plait_fail(PLAIT_ESTALE, "aggstore: base version %lld is not the latest (%lld)",
                         (long long)base_version, (long long)latest);
        goto fail;
    }
    sqlite3_stmt *s;
    if ((ret = prep(st,
                    "INSERT INTO rounds(state, started, target_cohort, min_cohort, base_version, task_config)"
                    " VALUES ('open', ?1, ?2, ?3, ?4, ?5)",
                    &s)) != 0)
        goto fail;
    sqlite3_bind_int64(s, 1, now_s());
    sqlite3_bind_int64(s, 2, target_cohort);
    sqlite3_bind_int64(s, 3, min_cohort);
    sqlite3_bind_int64(s, 4, base_version);
    sqlite3_bind_text(s, 5, task_config, (int)clen, SQLITE_STATIC);
    if ((ret = step_done(st, s, "beginning round")) != 0) goto fail;
    int64_t id = sqlite3_last_insert_rowid(st->db);
    if ((ret = tx_commit(st)) != 0) return ret;
    *round_out = id;
    return 0;
fail:
    tx_rollback(st);
    return ret;
}

/* Begin a transaction and check that round is open. */
static int begin_on_open_round(plait_aggstore_t *st, int64_t round, int64_t *base)
{
    int ret = tx_begin(st);
    if (ret != 0) return ret;
    plait_aggstore_round_state_t state;
    if ((ret = round_state(st, round, &state, base)) != 0) goto fail;
    if (state != PLAIT_AGGSTORE_ROUND_OPEN) {
        ret = plait_fail(PLAIT_ESTALE, "aggstore: round %lld is %s, not open", (long long)round, STATE_NAMES[state]);
        goto fail;
    }
    return 0;
fail:
    tx_rollback(st);
    return ret;
}

int plait_aggstore_round_record_stats(plait_aggstore_t *st, int64_t round, const plait_aggstore_stats_t *stats)
{
    int ret = check_usable(st);
    if (ret != 0) return ret;
    if (!stats) return plait_fail(PLAIT_EINVAL, "aggstore: stats is NULL");
    if ((ret = check_stats(st, stats)) != 0) return ret;
    int64_t base;
    if ((ret = begin_on_open_round(st, round, &base)) != 0) return ret;
    if ((ret = write_counters(st, round, stats)) != 0 || (ret = write_rejections(st, round, stats)) != 0) {
        tx_rollback(st);
        return ret;
    }
    return tx_commit(st);
}

/* Length of the longest prefix of s (at most max bytes) that is whole UTF-8 characters. */
static size_t utf8_prefix(const char *s, size_t max)
{
    size_t n = strnlen(s, max);
    while (n > 0 && ((unsigned char)s[n] & 0xC0) == 0x80 && s[n] != '\0') n--; /* do not split a character */
    return n;
}

int plait_aggstore_round_fail(plait_aggstore_t *st, int64_t round, const char *reason,
                              const plait_aggstore_stats_t *stats)
{
    int ret = check_usable(st);
    if (ret != 0) return ret;
    if (stats && (ret = check_stats(st, stats)) != 0) return ret;
    int64_t base;
    if ((ret = begin_on_open_round(st, round, &base)) != 0) return ret;
    if (stats && ((ret = write_counters(st, round, stats)) != 0 || (ret = write_rejections(st, round, stats)) != 0))
        goto fail;
    sqlite3_stmt *s;
    if ((ret = prep(st, "UPDATE rounds SET state = 'failed', ended = max(?2, started), reason = ?3 WHERE id = ?1",
                    &s)) != 0)
        goto fail;
    sqlite3_bind_int64(s, 1, round);
    sqlite3_bind_int64(s, 2, now_s());
    sqlite3_bind_text(s, 3, reason ? reason : "", reason ? (int)utf8_prefix(reason, PLAIT_AGGSTORE_MAX_REASON) : 0,
                      SQLITE_STATIC);
    if ((ret = step_done(st, s, "failing round")) != 0) goto fail;
    return tx_commit(st);
fail:
    tx_rollback(st);
    return ret;
}

/* ------------------------------------------------------------------------ */
/* Commit                                                                    */
/* ------------------------------------------------------------------------ */

static int check_metrics(const plait_aggstore_t *st, const plait_aggstore_metric_t *m, size_t n)
{
    if (n > st->max_metrics) return plait_fail(PLAIT_ETOOBIG, "aggstore: %zu metrics, max %zu", n, st->max_metrics);
    if (n > 0 && !m) return plait_fail(PLAIT_EINVAL, "aggstore: metrics is NULL");
    for (size_t i = 0; i < n; i++) {
        if (!printable_ok(m[i].key, PLAIT_AGGSTORE_MAX_KEY))
            return plait_fail(PLAIT_EINVAL, "aggstore: metric %zu: key is not 1..%d printable bytes", i,
                              PLAIT_AGGSTORE_MAX_KEY);
        if (isnan(m[i].value)) return plait_fail(PLAIT_EINVAL, "aggstore: metric '%s' is NaN", m[i].key);
    }
    return 0;
}

static int check_ledger(const plait_aggstore_ledger_t *l)
{
    if (!(l->q >= 0.0 && l->q <= 1.0)) return plait_fail(PLAIT_EINVAL, "aggstore: ledger q not in [0, 1]");
    if (!(l->noise_multiplier >= 0.0 && isfinite(l->noise_multiplier)))
        return plait_fail(PLAIT_EINVAL, "aggstore: ledger noise_multiplier not finite and >= 0");
    if (l->steps < 1) return plait_fail(PLAIT_EINVAL, "aggstore: ledger steps < 1");
    if (!(l->delta > 0.0 && l->delta < 1.0)) return plait_fail(PLAIT_EINVAL, "aggstore: ledger delta not in (0, 1)");
    if (!(l->epsilon >= 0.0)) return plait_fail(PLAIT_EINVAL, "aggstore: ledger epsilon not >= 0");
    if (!(l->clip >= 0.0 && isfinite(l->clip))) return plait_fail(PLAIT_EINVAL, "aggstore: ledger clip not finite and >= 0");
    if (strcmp(l->mechanism, "ddg") == 0 &&
        !(l->ddg_dim >= 1 && l->ddg_n >= 1 && l->ddg_n <= PLAIT_DDG_MAX_DEVICES && l->ddg_var > 0.0 && isfinite(l->ddg_var) &&
          l->ddg_l2 > 0.0 && isfinite(l->ddg_l2)))
        return plait_fail(PLAIT_EINVAL, "aggstore: ledger ddg row needs ddg_dim, ddg_n in 1..%u and finite ddg_var, ddg_l2 > 0", PLAIT_DDG_MAX_DEVICES);
    if (l->mechanism[0] && !printable_ok(l->mechanism, PLAIT_AGGSTORE_LEDGER_NAME))
        return plait_fail(PLAIT_EINVAL, "aggstore: ledger mechanism is not 1..%d printable bytes",
                          PLAIT_AGGSTORE_LEDGER_NAME);
    if (l->selection[0] && !printable_ok(l->selection, PLAIT_AGGSTORE_LEDGER_NAME))
        return plait_fail(PLAIT_EINVAL, "aggstore: ledger selection is not 1..%d printable bytes",
                          PLAIT_AGGSTORE_LEDGER_NAME);
    return 0;
}

/* Checks of the version part of c; computes the hash into sha. */
static int check_version_input(const plait_aggstore_t *st, const plait_aggstore_commit_t *c, uint8_t sha[32])
{
    if (!c->adapter || c->adapter_len == 0) return plait_fail(PLAIT_EINVAL, "aggstore: empty adapter");
    if (c->adapter_len > st->max_adapter)
        return plait_fail(PLAIT_ETOOBIG, "aggstore: adapter is %zu bytes, max %zu", c->adapter_len, st->max_adapter);
    if (c->opt_state_len > st->max_opt / 4)
        return plait_fail(PLAIT_ETOOBIG, "aggstore: optimizer state is %zu floats, max %zu bytes", c->opt_state_len,
                          st->max_opt);
    if (c->opt_state_len > 0 && !c->opt_state) return plait_fail(PLAIT_EINVAL, "aggstore: opt_state is NULL");
    for (size_t i = 0; i < c->opt_state_len; i++)
        if (!isfinite(c->opt_state[i]))
            return plait_fail(PLAIT_EINVAL, "aggstore: optimizer state element %zu is not finite", i);
    if (c->lora_rank < 1 || c->lora_rank > PLAIT_AGGSTORE_MAX_RANK)
        return plait_fail(PLAIT_EINVAL, "aggstore: lora_rank %d not in 1..%d", c->lora_rank, PLAIT_AGGSTORE_MAX_RANK);
    if (!(c->lora_alpha > 0.0 && isfinite(c->lora_alpha)))
        return plait_fail(PLAIT_EINVAL, "aggstore: lora_alpha not finite and > 0");
    if (c->lora_targets < 1 || c->lora_targets > 0x7f)
        return plait_fail(PLAIT_EINVAL, "aggstore: lora_targets 0x%x not in 1..0x7f", (unsigned)c->lora_targets);
    if (c->opt_kind < 0 || c->opt_kind > 255)
        return plait_fail(PLAIT_EINVAL, "aggstore: opt_kind %d not in 0..255", c->opt_kind);
    plait_sha256(c->adapter, c->adapter_len, sha);
    if (c->sha256 && memcmp(c->sha256, sha, 32) != 0)
        return plait_fail(PLAIT_EMISMATCH, "aggstore: the given sha256 does not match the adapter");
    return 0;
}

/* Injected failure after write `step` (tests only). */
static int fault(plait_aggstore_t *st, int step)
{
    if (st->fault_step != step) return 0;
    st->fault_step = 0;
    return plait_fail(PLAIT_EIO, "aggstore: injected fault after commit step %d", step);
}

static int insert_version(plait_aggstore_t *st, int64_t number, int64_t round, const plait_aggstore_commit_t *c,
                          const uint8_t sha[32])
{
    uint8_t *opt = NULL;
    if (c->opt_state_len > 0) {
        opt = malloc(c->opt_state_len * 4);
        if (!opt) return plait_fail(PLAIT_ENOMEM, "aggstore: out of memory");
        for (size_t i = 0; i < c->opt_state_len; i++) { /* little-endian, whatever the host */
            uint32_t u;
            memcpy(&u, &c->opt_state[i], 4);
            for (int b = 0; b < 4; b++) opt[4 * i + (size_t)b] = (uint8_t)(u >> (8 * b));
        }
    }
    sqlite3_stmt *s;
    int ret = prep(st,
                   "INSERT INTO versions(number, round_id, created, sha256, lora_rank, lora_alpha, lora_targets,"
                   " opt_kind, adapter, opt_state) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                   &s);
    if (ret == 0) {
        sqlite3_bind_int64(s, 1, number);
        if (round > 0) sqlite3_bind_int64(s, 2, round);
        else sqlite3_bind_null(s, 2);
        sqlite3_bind_int64(s, 3, now_s());
        sqlite3_bind_blob(s, 4, sha, 32, SQLITE_STATIC);
        sqlite3_bind_int(s, 5, c->lora_rank);
        sqlite3_bind_double(s, 6, c->lora_alpha);
        sqlite3_bind_int64(s, 7, (int64_t)c->lora_targets);
        sqlite3_bind_int(s, 8, c->opt_kind);
        sqlite3_bind_blob64(s, 9, c->adapter, (sqlite3_uint64)c->adapter_len, SQLITE_STATIC);
        if (opt) sqlite3_bind_blob64(s, 10, opt, (sqlite3_uint64)(c->opt_state_len * 4), SQLITE_STATIC);
        else sqlite3_bind_zeroblob(s, 10, 0); /* an empty BLOB, not NULL */
        ret = step_done(st, s, "writing version");
    }
    free(opt);
    return ret;
}

static int insert_metrics(plait_aggstore_t *st, int64_t round, const plait_aggstore_metric_t *m, size_t n,
                          bool replace)
{
    for (size_t i = 0; i < n; i++) {
        sqlite3_stmt *s;
        int ret = prep(st,
                       replace ? "INSERT OR REPLACE INTO metrics(round_id, key, value) VALUES (?1, ?2, ?3)"
                               : "INSERT INTO metrics(round_id, key, value) VALUES (?1, ?2, ?3)",
                       &s);
        if (ret != 0) return ret;
        sqlite3_bind_int64(s, 1, round);
        sqlite3_bind_text(s, 2, m[i].key, -1, SQLITE_STATIC);
        sqlite3_bind_double(s, 3, m[i].value);
        int rc = sqlite3_step(s);
        sqlite3_finalize(s);
        if ((rc & 0xff) == SQLITE_CONSTRAINT)
            return plait_fail(PLAIT_EINVAL, "aggstore: metric '%s' given twice for round %lld", m[i].key,
                              (long long)round);
        if (rc != SQLITE_DONE) return sqfail(st->db, rc, "writing metrics");
    }
    return 0;
}

int plait_aggstore_round_commit(plait_aggstore_t *st, int64_t round, const plait_aggstore_commit_t *c,
                                int64_t *version_out)
{
    int ret = check_usable(st);
    if (ret != 0) return ret;
    if (!c) return plait_fail(PLAIT_EINVAL, "aggstore: commit is NULL");
    uint8_t sha[32];
    if ((ret = check_version_input(st, c, sha)) != 0) return ret;
    if (c->stats && (ret = check_stats(st, c->stats)) != 0) return ret;
    if (c->ledger && (ret = check_ledger(c->ledger)) != 0) return ret;
    if ((ret = check_metrics(st, c->metrics, c->n_metrics)) != 0) return ret;

    int64_t base = 0, latest = 0;
    bool found;
    plait_crash_point("aggstore.commit.begin");
    if ((ret = begin_on_open_round(st, round, &base)) != 0) return ret;
    if ((ret = query_i64(st, "SELECT coalesce(max(number), 0) FROM versions", false, 0, &latest, &found,
                         "reading latest version")) != 0)
        goto fail;
    if (base != latest) {
        ret = plait_fail(PLAIT_ESTALE, "aggstore: round %lld trained on version %lld, but %lld is the latest",
                         (long long)round, (long long)base, (long long)latest);
        goto fail;
    }
    int64_t number = latest + 1;
    /* Step 1: the round row. */
    sqlite3_stmt *s;
    if ((ret = prep(st,
                    "UPDATE rounds SET state = 'committed', ended = max(?2, started), new_version = ?3"
                    " WHERE id = ?1 AND state = 'open'",
                    &s)) != 0)
        goto fail;
    sqlite3_bind_int64(s, 1, round);
    sqlite3_bind_int64(s, 2, now_s());
    sqlite3_bind_int64(s, 3, number);
    if ((ret = step_done(st, s, "committing round")) != 0) goto fail;
    if (c->stats && (ret = write_counters(st, round, c->stats)) != 0) goto fail;
    /* The uploaders' participation counters, in the same transaction. A device
     * revoked since its upload, or unknown, or already counted, is skipped. */
    for (size_t i = 0; i < c->n_uploaders; i++) {
        if (!c->uploaders || !c->uploaders[i] || check_id(c->uploaders[i]) != 0) continue;
        if ((ret = prep(st,
                        "UPDATE devices SET last_round = ?2, rounds_participated = rounds_participated + 1,"
                        " last_seen = ?3 WHERE id = ?1 AND revoked = 0 AND coalesce(last_round, 0) < ?2",
                        &s)) != 0)
            goto fail;
        sqlite3_bind_text(s, 1, c->uploaders[i], -1, SQLITE_STATIC);
        sqlite3_bind_int64(s, 2, round);
        sqlite3_bind_int64(s, 3, now_s());
        if ((ret = step_done(st, s, "counting participation")) != 0) goto fail;
    }
    if ((ret = fault(st, 1)) != 0) goto fail;
    /* Step 2: rejections. */
    if (c->stats && (ret = write_rejections(st, round, c->stats)) != 0) goto fail;
    if ((ret = fault(st, 2)) != 0) goto fail;
    /* Step 3: the version. */
    if ((ret = insert_version(st, number, round, c, sha)) != 0) goto fail;
    plait_crash_point("aggstore.commit.version");
    if ((ret = fault(st, 3)) != 0) goto fail;
    /* Step 4: the ledger row. */
    if (c->ledger) {
        if ((ret = prep(st,
                        "INSERT INTO ledger(round_id, q, noise_multiplier, steps, delta, epsilon, mechanism,"
                        " clip, selection, ddg_dim, ddg_var, ddg_n, ddg_l2)"
                        " VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
                        &s)) != 0)
            goto fail;
        sqlite3_bind_int64(s, 1, round);
        sqlite3_bind_double(s, 2, c->ledger->q);
        sqlite3_bind_double(s, 3, c->ledger->noise_multiplier);
        sqlite3_bind_int64(s, 4, c->ledger->steps);
        sqlite3_bind_double(s, 5, c->ledger->delta);
        sqlite3_bind_double(s, 6, c->ledger->epsilon);
        sqlite3_bind_text(s, 7, c->ledger->mechanism[0] ? c->ledger->mechanism : "unrecorded", -1, SQLITE_STATIC);
        sqlite3_bind_double(s, 8, c->ledger->clip);
        sqlite3_bind_text(s, 9, c->ledger->selection[0] ? c->ledger->selection : "unrecorded", -1, SQLITE_STATIC);
        sqlite3_bind_int64(s, 10, c->ledger->ddg_dim);
        sqlite3_bind_double(s, 11, c->ledger->ddg_var);
        sqlite3_bind_int64(s, 12, c->ledger->ddg_n);
        sqlite3_bind_double(s, 13, c->ledger->ddg_l2);
        if ((ret = step_done(st, s, "writing ledger")) != 0) goto fail;
        /* Devices that uploaded to this round (mark_uploaded set their last_round) joined one more DP round. */
        if ((ret = prep(st, "UPDATE devices SET dp_rounds = dp_rounds + 1 WHERE last_round = ?1", &s)) != 0)
            goto fail;
        sqlite3_bind_int64(s, 1, round);
        if ((ret = step_done(st, s, "counting DP participation")) != 0) goto fail;
    }
    if ((ret = fault(st, 4)) != 0) goto fail;
    /* Step 5: metrics. */
    if ((ret = insert_metrics(st, round, c->metrics, c->n_metrics, false)) != 0) goto fail;
    if ((ret = fault(st, 5)) != 0) goto fail;
    plait_crash_point("aggstore.commit.precommit");
    if ((ret = tx_commit(st)) != 0) return ret;
    plait_crash_point("aggstore.commit.done");
    if (version_out) *version_out = number;
    return 0;
fail:
    tx_rollback(st);
    return ret;
}

int plait_aggstore_version_put_initial(plait_aggstore_t *st, const plait_aggstore_commit_t *c)
{
    int ret = check_usable(st);
    if (ret != 0) return ret;
    if (!c) return plait_fail(PLAIT_EINVAL, "aggstore: commit is NULL");
    if (c->stats || c->ledger || c->n_metrics)
        return plait_fail(PLAIT_EINVAL, "aggstore: the initial version has no stats, ledger or metrics");
    uint8_t sha[32];
    if ((ret = check_version_input(st, c, sha)) != 0) return ret;
    if ((ret = tx_begin(st)) != 0) return ret;
    int64_t n = 0;
    bool found;
    if ((ret = query_i64(st, "SELECT count(*) FROM versions", false, 0, &n, &found, "counting versions")) != 0)
        goto fail;
    if (n != 0) {
        ret = plait_fail(PLAIT_EINVAL, "aggstore: the store already has versions");
        goto fail;
    }
    if ((ret = insert_version(st, 1, 0, c, sha)) != 0 || (ret = fault(st, 3)) != 0) goto fail;
    return tx_commit(st);
fail:
    tx_rollback(st);
    return ret;
}

/* ------------------------------------------------------------------------ */
/* Reading rounds                                                            */
/* ------------------------------------------------------------------------ */

#define ROUND_COLS                                                                                   \
    "id, state, started, ended, target_cohort, min_cohort, base_version, new_version, participants," \
    " dropouts, bytes_up, bytes_down, reason, length(task_config), typeof(task_config),"             \
    " CASE WHEN length(task_config) <= ?9 THEN task_config END"

/* Rejections of a round, validated, into caller arrays of st->max_reasons entries. */
typedef struct {
    plait_aggstore_rejection_t *rej;
    char (*names)[PLAIT_AGGSTORE_MAX_KEY + 1];
} rej_buf_t;

static int load_rejections(plait_aggstore_t *st, int64_t round, rej_buf_t *b, size_t *n_out)
{
    sqlite3_stmt *s;
    int ret = prep(st, "SELECT reason, count FROM rejections WHERE round_id = ?1 ORDER BY reason", &s);
    if (ret != 0) return ret;
    sqlite3_bind_int64(s, 1, round);
    size_t n = 0;
    int rc;
    while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
        if (n >= st->max_reasons) {
            ret = plait_fail(PLAIT_EPROTO, "aggstore: rejections: round %lld has more than %zu reasons",
                             (long long)round, st->max_reasons);
            break;
        }
        size_t rl;
        const unsigned char *r = text_col(s, 0, &rl);
        int64_t cnt;
        if (!printable_bytes_ok(r, rl, PLAIT_AGGSTORE_MAX_KEY) ||
            !nonneg(s, 1, &cnt)) {
            ret = plait_fail(PLAIT_EPROTO, "aggstore: rejections: round %lld: malformed row", (long long)round);
            break;
        }
        memcpy(b->names[n], r, rl);
        b->names[n][rl] = '\0';
        b->rej[n].reason = b->names[n];
        b->rej[n].count = cnt;
        n++;
    }
    if (ret == 0 && rc != SQLITE_DONE) ret = sqfail(st->db, rc, "reading rejections");
    sqlite3_finalize(s);
    *n_out = n;
    return ret;
}

/* Validate the current ROUND_COLS row, load its rejections and call cb. */
static int deliver_round(plait_aggstore_t *st, sqlite3_stmt *s, rej_buf_t *b, plait_aggstore_round_cb cb, void *ud)
{
    plait_aggstore_round_t r;
    memset(&r, 0, sizeof(r));
    r.id = sqlite3_column_int64(s, 0);
    long long id = (long long)r.id;
    size_t sl;
    const unsigned char *state = text_col(s, 1, &sl);
    int si = -1;
    for (int i = 0; i < 4 && state; i++)
        if (strcmp((const char *)state, STATE_NAMES[i]) == 0) si = i;
    const char *bad = NULL;
    if (si < 0) bad = "state";
    else if (!nonneg(s, 2, &r.started)) bad = "started";
    else if (!opt_nonneg(s, 3, &r.ended) || (si == PLAIT_AGGSTORE_ROUND_OPEN) != (sqlite3_column_type(s, 3) == SQLITE_NULL))
        bad = "ended";
    else if (!nonneg(s, 4, &r.target_cohort) || r.target_cohort < 1 || r.target_cohort > MAX_COHORT)
        bad = "target_cohort";
    else if (!nonneg(s, 5, &r.min_cohort) || r.min_cohort < 1 || r.min_cohort > r.target_cohort) bad = "min_cohort";
    else if (!nonneg(s, 6, &r.base_version)) bad = "base_version";
    else if (!opt_nonneg(s, 7, &r.new_version) ||
             (si == PLAIT_AGGSTORE_ROUND_COMMITTED) != (r.new_version >= 1 && sqlite3_column_type(s, 7) == SQLITE_INTEGER))
        bad = "new_version";
    else if (!nonneg(s, 8, &r.stats.participants)) bad = "participants";
    else if (!nonneg(s, 9, &r.stats.dropouts)) bad = "dropouts";
    else if (!nonneg(s, 10, &r.stats.bytes_up)) bad = "bytes_up";
    else if (!nonneg(s, 11, &r.stats.bytes_down)) bad = "bytes_down";
    if (bad) return plait_fail(PLAIT_EPROTO, "aggstore: rounds: round %lld: malformed %s", id, bad);
    r.state = (plait_aggstore_round_state_t)si;
    size_t rlen;
    const unsigned char *reason = text_col(s, 12, &rlen);
    if (!reason || rlen > PLAIT_AGGSTORE_MAX_REASON ||
        strlen((const char *)reason) != rlen)
        return plait_fail(PLAIT_EPROTO, "aggstore: rounds: round %lld: malformed reason", id);
    r.reason = (const char *)reason;
    /* The task config: withheld by the query when too long, so never
     * materialized (length() counts characters for text, so at most 4x
     * max_config bytes get through; the byte length is checked below). */
    const unsigned char *ty = sqlite3_column_text(s, 14);
    if (!ty || strcmp((const char *)ty, "text") != 0)
        return plait_fail(PLAIT_EPROTO, "aggstore: rounds: round %lld: task_config is not text", id);
    if (sqlite3_column_type(s, 15) == SQLITE_NULL)
        return plait_fail(PLAIT_EPROTO, "aggstore: rounds: round %lld: task_config over %zu bytes", id, st->max_config);
    const unsigned char *cfg = sqlite3_column_text(s, 15);
    size_t clen = (size_t)sqlite3_column_bytes(s, 15);
    if (!cfg) return sqfail(st->db, sqlite3_errcode(st->db), "reading task_config");
    if (clen > st->max_config)
        return plait_fail(PLAIT_EPROTO, "aggstore: rounds: round %lld: task_config over %zu bytes", id, st->max_config);
    if (json_object_ok((const char *)cfg, clen) != 0)
        return plait_fail(PLAIT_EPROTO, "aggstore: rounds: round %lld: task_config is not a JSON object", id);
    r.task_config = (const char *)cfg;
    r.task_config_len = clen;
    int ret = load_rejections(st, r.id, b, &r.stats.n_rejections);
    if (ret != 0) return ret;
    r.stats.rejections = b->rej;
    st->in_cb = true;
    ret = cb(ud, &r);
    st->in_cb = false;
    return ret;
}

static int rej_buf_alloc(const plait_aggstore_t *st, rej_buf_t *b)
{
    size_t n = st->max_reasons ? st->max_reasons : 1;
    b->rej = calloc(n, sizeof(*b->rej));
    b->names = calloc(n, sizeof(*b->names));
    if (!b->rej || !b->names) {
        free(b->rej);
        free(b->names);
        return plait_fail(PLAIT_ENOMEM, "aggstore: out of memory");
    }
    return 0;
}

static void rej_buf_free(rej_buf_t *b)
{
    free(b->rej);
    free(b->names);
}

/* Run a round query (?9 = max config, ?1 = arg) and deliver rows; want_one: ENOENT if none. */
static int rounds_query(plait_aggstore_t *st, const char *sql, int64_t arg, bool want_one,
                        plait_aggstore_round_cb cb, void *ud)
{
    int ret = check_usable(st);
    if (ret != 0) return ret;
    if (!cb) return plait_fail(PLAIT_EINVAL, "aggstore: callback is NULL");
    rej_buf_t b;
    if ((ret = rej_buf_alloc(st, &b)) != 0) return ret;
    sqlite3_stmt *s;
    if ((ret = prep(st, sql, &s)) != 0) {
        rej_buf_free(&b);
        return ret;
    }
    sqlite3_bind_int64(s, 1, arg);
    sqlite3_bind_int64(s, 9, (int64_t)st->max_config);
    int rc;
    bool any = false;
    while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
        any = true;
        if ((ret = deliver_round(st, s, &b, cb, ud)) != 0) break;
    }
    if (ret == 0 && rc != SQLITE_DONE) ret = sqfail(st->db, rc, "reading rounds");
    if (ret == 0 && want_one && !any) ret = plait_fail(PLAIT_ENOENT, "aggstore: no round %lld", (long long)arg);
    sqlite3_finalize(s);
    rej_buf_free(&b);
    return ret;
}

int plait_aggstore_round_get(plait_aggstore_t *st, int64_t round, plait_aggstore_round_cb cb, void *ud)
{
    return rounds_query(st, "SELECT " ROUND_COLS " FROM rounds WHERE id = ?1", round, true, cb, ud);
}

int plait_aggstore_rounds_foreach(plait_aggstore_t *st, bool newest_first, size_t max_rounds,
                                  plait_aggstore_round_cb cb, void *ud)
{
    int64_t lim = max_rounds == 0 || max_rounds > (size_t)INT64_MAX ? -1 : (int64_t)max_rounds;
    return rounds_query(st,
                        newest_first ? "SELECT " ROUND_COLS " FROM rounds ORDER BY id DESC LIMIT ?1"
                                     : "SELECT " ROUND_COLS " FROM rounds ORDER BY id LIMIT ?1",
                        lim, false, cb, ud);
}

/* ------------------------------------------------------------------------ */
/* Reading versions                                                          */
/* ------------------------------------------------------------------------ */

void plait_aggstore_version_init(plait_aggstore_version_t *v)
{
    memset(v, 0, sizeof(*v));
}

void plait_aggstore_version_free(plait_aggstore_version_t *v)
{
    if (!v) return;
    free(v->adapter);
    free(v->opt_state);
    plait_aggstore_version_init(v);
}

#define VERSION_META_COLS                                                                                   \
    "number, round_id, created, sha256, lora_rank, lora_alpha, lora_targets, opt_kind, length(adapter),"   \
    " length(opt_state), typeof(adapter), typeof(opt_state)"

static bool is_blob_type(sqlite3_stmt *s, int col)
{
    const unsigned char *t = sqlite3_column_text(s, col);
    return t && strcmp((const char *)t, "blob") == 0;
}

/* Validate the metadata columns of a version row into v (no blobs). */
static int read_version_meta(const plait_aggstore_t *st, sqlite3_stmt *s, plait_aggstore_version_t *v)
{
    v->number = sqlite3_column_int64(s, 0);
    long long n = (long long)v->number;
    int64_t rank = 0, targets = 0, kind = 0, alen = 0, olen = 0;
    const char *bad = NULL;
    if (v->number < 1) bad = "number";
    else if (!opt_nonneg(s, 1, &v->round_id)) bad = "round_id";
    else if (!nonneg(s, 2, &v->created)) bad = "created";
    else if (sqlite3_column_type(s, 3) != SQLITE_BLOB || sqlite3_column_bytes(s, 3) != 32) bad = "sha256";
    else if (!nonneg(s, 4, &rank) || rank < 1 || rank > PLAIT_AGGSTORE_MAX_RANK) bad = "lora_rank";
    else if (sqlite3_column_type(s, 5) != SQLITE_FLOAT || !(sqlite3_column_double(s, 5) > 0.0) ||
             !isfinite(sqlite3_column_double(s, 5)))
        bad = "lora_alpha";
    else if (!nonneg(s, 6, &targets) || targets < 1 || targets > 0x7f) bad = "lora_targets";
    else if (!nonneg(s, 7, &kind) || kind > 255) bad = "opt_kind";
    else if (!is_blob_type(s, 10) || !nonneg(s, 8, &alen) || alen < 1) bad = "adapter";
    else if (!is_blob_type(s, 11) || !nonneg(s, 9, &olen) || olen % 4 != 0) bad = "opt_state";
    if (bad) return plait_fail(PLAIT_EPROTO, "aggstore: versions: version %lld: malformed %s", n, bad);
    if ((uint64_t)alen > st->max_adapter)
        return plait_fail(PLAIT_EPROTO, "aggstore: versions: version %lld: adapter is %lld bytes, max %zu", n,
                          (long long)alen, st->max_adapter);
    if ((uint64_t)olen > st->max_opt)
        return plait_fail(PLAIT_EPROTO, "aggstore: versions: version %lld: optimizer state is %lld bytes, max %zu", n,
                          (long long)olen, st->max_opt);
    memcpy(v->sha256, sqlite3_column_blob(s, 3), 32);
    v->lora_rank = (int)rank;
    v->lora_alpha = sqlite3_column_double(s, 5);
    v->lora_targets = (uint32_t)targets;
    v->opt_kind = (int)kind;
    v->adapter_len = (size_t)alen;
    v->opt_state_len = (size_t)olen / 4;
    return 0;
}

/*
 * Copy column col of version number into a fresh buffer of exactly n bytes
 * with incremental blob I/O: sqlite reads the pages straight into it, so the
 * blob is in memory once, and only after its size was checked.
 */
static int read_blob(plait_aggstore_t *st, int64_t number, const char *col, size_t n, uint8_t **out)
{
    sqlite3_blob *b = NULL;
    int rc = sqlite3_blob_open(st->db, "main", "versions", col, number, 0, &b);
    if (rc != SQLITE_OK) {
        int ret = sqfail(st->db, rc, "opening a version blob");
        sqlite3_blob_close(b);
        return ret;
    }
    int ret = 0;
    if ((size_t)sqlite3_blob_bytes(b) != n) {
        ret = plait_fail(PLAIT_EPROTO, "aggstore: versions: version %lld: %s changed size while read",
                         (long long)number, col);
    } else if (!(*out = malloc(n))) {
        ret = plait_fail(PLAIT_ENOMEM, "aggstore: out of memory");
    } else if ((rc = sqlite3_blob_read(b, *out, (int)n, 0)) != SQLITE_OK) {
        ret = sqfail(st->db, rc, "reading a version blob");
        free(*out);
        *out = NULL;
    }
    sqlite3_blob_close(b);
    return ret;
}

/* The body of plait_aggstore_version_get, inside a read transaction. */
static int version_get_tx(plait_aggstore_t *st, int64_t number, plait_aggstore_version_t *v)
{
    sqlite3_stmt *s;
    int ret = prep(st, "SELECT " VERSION_META_COLS " FROM versions WHERE number = ?1", &s);
    if (ret != 0) return ret;
    sqlite3_bind_int64(s, 1, number);
    int rc = sqlite3_step(s);
    if (rc == SQLITE_DONE) ret = plait_fail(PLAIT_ENOENT, "aggstore: no version %lld", (long long)number);
    else if (rc != SQLITE_ROW) ret = sqfail(st->db, rc, "reading version");
    else ret = read_version_meta(st, s, v); /* checks both blob sizes against the limits */
    sqlite3_finalize(s);
    if (ret != 0) return ret;

    long long n = (long long)number;
    if ((ret = read_blob(st, number, "adapter", v->adapter_len, &v->adapter)) != 0) return ret;
    uint8_t sha[32];
    plait_sha256(v->adapter, v->adapter_len, sha);
    if (memcmp(sha, v->sha256, 32) != 0)
        return plait_fail(PLAIT_EPROTO, "aggstore: versions: version %lld: adapter does not match its sha256", n);
    if (v->opt_state_len == 0) return 0;
    uint8_t *o = NULL;
    if ((ret = read_blob(st, number, "opt_state", v->opt_state_len * 4, &o)) != 0) return ret;
    /* Decode in place: the buffer has exactly opt_state_len floats' room. */
    v->opt_state = (float *)(void *)o;
    for (size_t i = 0; i < v->opt_state_len; i++) {
        const uint8_t *p = o + 4 * i;
        uint32_t u = (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
        float f;
        memcpy(&f, &u, 4);
        if (!isfinite(f))
            return plait_fail(PLAIT_EPROTO, "aggstore: versions: version %lld: optimizer state element %zu not finite",
                              n, i);
        memcpy(o + 4 * i, &f, 4);
    }
    return 0;
}

int plait_aggstore_version_get(plait_aggstore_t *st, int64_t number, plait_aggstore_version_t *v)
{
    if (!v) return plait_fail(PLAIT_EINVAL, "aggstore: version is NULL");
    plait_aggstore_version_free(v);
    int ret = check_usable(st);
    if (ret != 0) return ret;
    /* One read transaction: the row and its blobs come from one snapshot. */
    if ((ret = exec(st, "BEGIN", "beginning a read")) != 0) return ret;
    ret = version_get_tx(st, number, v);
    tx_rollback(st); /* a read transaction: nothing to commit */
    if (ret != 0) plait_aggstore_version_free(v);
    return ret;
}

int plait_aggstore_version_latest_number(plait_aggstore_t *st, int64_t *out)
{
    int ret = check_usable(st);
    if (ret != 0) return ret;
    if (!out) return plait_fail(PLAIT_EINVAL, "aggstore: out is NULL");
    bool found;
    int64_t n = 0;
    if ((ret = query_i64(st, "SELECT coalesce(max(number), 0) FROM versions", false, 0, &n, &found,
                         "reading latest version")) != 0)
        return ret;
    if (!found || n < 0) return plait_fail(PLAIT_EPROTO, "aggstore: versions: malformed version number");
    *out = n;
    return 0;
}

int plait_aggstore_version_latest(plait_aggstore_t *st, plait_aggstore_version_t *v)
{
    int64_t n = 0;
    int ret = plait_aggstore_version_latest_number(st, &n);
    if (ret != 0) return ret;
    if (n == 0) {
        if (v) plait_aggstore_version_free(v);
        return plait_fail(PLAIT_ENOENT, "aggstore: no version yet");
    }
    return plait_aggstore_version_get(st, n, v);
}

int plait_aggstore_versions_foreach(plait_aggstore_t *st, plait_aggstore_version_cb cb, void *ud)
{
    int ret = check_usable(st);
    if (ret != 0) return ret;
    if (!cb) return plait_fail(PLAIT_EINVAL, "aggstore: callback is NULL");
    sqlite3_stmt *s;
    if ((ret = prep(st, "SELECT " VERSION_META_COLS " FROM versions ORDER BY number", &s)) != 0) return ret;
    int rc;
    while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
        plait_aggstore_version_t v;
        plait_aggstore_version_init(&v);
        if ((ret = read_version_meta(st, s, &v)) != 0) break;
        st->in_cb = true;
        ret = cb(ud, &v);
        st->in_cb = false;
        if (ret != 0) break;
    }
    if (ret == 0 && rc != SQLITE_DONE) ret = sqfail(st->db, rc, "reading versions");
    sqlite3_finalize(s);
    return ret;
}

/* ------------------------------------------------------------------------ */
/* Ledger and metrics                                                        */
/* ------------------------------------------------------------------------ */

static bool real_col(sqlite3_stmt *s, int col, double *out)
{
    int t = sqlite3_column_type(s, col);
    if (t != SQLITE_FLOAT && t != SQLITE_INTEGER) return false;
    *out = sqlite3_column_double(s, col);
    return !isnan(*out);
}

/* A ledger name column into out (PLAIT_AGGSTORE_LEDGER_NAME + 1 bytes). */
static bool name_col(sqlite3_stmt *s, int col, char *out)
{
    size_t n;
    const unsigned char *t = text_col(s, col, &n);
    if (!printable_bytes_ok(t, n, PLAIT_AGGSTORE_LEDGER_NAME)) return false;
    memcpy(out, t, n);
    out[n] = '\0';
    return true;
}

static int read_ledger(sqlite3_stmt *s, plait_aggstore_ledger_t *l)
{
    memset(l, 0, sizeof(*l));
    l->round_id = sqlite3_column_int64(s, 0);
    const char *bad = NULL;
    if (l->round_id < 1) bad = "round_id";
    else if (!real_col(s, 1, &l->q) || l->q < 0.0 || l->q > 1.0) bad = "q";
    else if (!real_col(s, 2, &l->noise_multiplier) || l->noise_multiplier < 0.0 || !isfinite(l->noise_multiplier))
        bad = "noise_multiplier";
    else if (!nonneg(s, 3, &l->steps) || l->steps < 1) bad = "steps";
    else if (!real_col(s, 4, &l->delta) || !(l->delta > 0.0 && l->delta < 1.0)) bad = "delta";
    else if (!real_col(s, 5, &l->epsilon) || l->epsilon < 0.0) bad = "epsilon";
    else if (!name_col(s, 6, l->mechanism)) bad = "mechanism";
    else if (!real_col(s, 7, &l->clip) || l->clip < 0.0 || !isfinite(l->clip)) bad = "clip";
    else if (!name_col(s, 8, l->selection)) bad = "selection";
    else if (!nonneg(s, 9, &l->ddg_dim)) bad = "ddg_dim";
    else if (!real_col(s, 10, &l->ddg_var) || l->ddg_var < 0.0 || !isfinite(l->ddg_var)) bad = "ddg_var";
    else if (!nonneg(s, 11, &l->ddg_n)) bad = "ddg_n";
    else if (!real_col(s, 12, &l->ddg_l2) || l->ddg_l2 < 0.0 || !isfinite(l->ddg_l2)) bad = "ddg_l2";
    else if (strcmp(l->mechanism, "ddg") == 0 &&
             !(l->ddg_dim >= 1 && l->ddg_var > 0.0 && l->ddg_n >= 1 && l->ddg_n <= PLAIT_DDG_MAX_DEVICES && l->ddg_l2 > 0.0))
        bad = "ddg parameters";
    if (bad)
        return plait_fail(PLAIT_EPROTO, "aggstore: ledger: round %lld: malformed %s", (long long)l->round_id, bad);
    return 0;
}

int plait_aggstore_ledger_foreach(plait_aggstore_t *st, plait_aggstore_ledger_cb cb, void *ud)
{
    int ret = check_usable(st);
    if (ret != 0) return ret;
    if (!cb) return plait_fail(PLAIT_EINVAL, "aggstore: callback is NULL");
    sqlite3_stmt *s;
    if ((ret = prep(st, "SELECT round_id, q, noise_multiplier, steps, delta, epsilon, mechanism, clip, selection,"
                    " ddg_dim, ddg_var, ddg_n, ddg_l2 FROM ledger ORDER BY round_id",
                    &s)) != 0)
        return ret;
    int rc;
    while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
        plait_aggstore_ledger_t l;
        if ((ret = read_ledger(s, &l)) != 0) break;
        st->in_cb = true;
        ret = cb(ud, &l);
        st->in_cb = false;
        if (ret != 0) break;
    }
    if (ret == 0 && rc != SQLITE_DONE) ret = sqfail(st->db, rc, "reading ledger");
    sqlite3_finalize(s);
    return ret;
}

static int total_cb(void *ud, const plait_aggstore_ledger_t *l)
{
    plait_aggstore_privacy_t *t = ud;
    if (l->steps > INT64_MAX - t->steps)
        return plait_fail(PLAIT_EPROTO, "aggstore: ledger: round %lld: steps overflow", (long long)l->round_id);
    t->rounds++;
    t->steps += l->steps;
    t->delta = l->delta;
    t->epsilon = l->epsilon;
    if (strcmp(l->selection, "poisson") == 0) t->poisson_rounds++;
    if (strcmp(l->mechanism, "ddg") == 0) t->ddg_rounds++;
    if (t->rounds == 1 || l->noise_multiplier < t->min_noise_multiplier) t->min_noise_multiplier = l->noise_multiplier;
    return 0;
}

int plait_aggstore_ledger_total(plait_aggstore_t *st, plait_aggstore_privacy_t *out)
{
    if (!out) return plait_fail(PLAIT_EINVAL, "aggstore: out is NULL");
    plait_aggstore_privacy_t t;
    memset(&t, 0, sizeof(t));
    int ret = plait_aggstore_ledger_foreach(st, total_cb, &t);
    bool found;
    if (ret == 0 && (ret = query_i64(st, "SELECT coalesce(max(dp_rounds), 0) FROM devices", false, 0,
                                     &t.max_device_rounds, &found, "reading DP participation")) == 0 &&
        t.max_device_rounds < 0)
        ret = plait_fail(PLAIT_EPROTO, "aggstore: devices: malformed dp_rounds");
    if (ret == 0) *out = t;
    return ret;
}

static int compose_cb(void *ud, const plait_aggstore_ledger_t *l)
{
    int rc = strcmp(l->mechanism, "ddg") == 0
                 ? plait_accountant_compose_ddg(ud, l->ddg_l2, (size_t)l->ddg_dim, l->ddg_var, (uint32_t)l->ddg_n,
                                                (uint64_t)l->steps)
                 : plait_accountant_compose(ud, l->q, l->noise_multiplier, (uint64_t)l->steps);
    if (rc != 0)
        return plait_fail(PLAIT_EPROTO, "aggstore: ledger: round %lld: parameters refused by the accountant",
                          (long long)l->round_id);
    return 0;
}

int plait_aggstore_ledger_compose(plait_aggstore_t *st, plait_accountant_t *acc)
{
    if (!acc) return plait_fail(PLAIT_EINVAL, "aggstore: accountant is NULL");
    plait_accountant_t *tmp = malloc(sizeof(*tmp)); /* ~4 KiB: keep it off worker stacks */
    if (!tmp) return plait_fail(PLAIT_ENOMEM, "aggstore: out of memory");
    *tmp = *acc;
    int ret = plait_aggstore_ledger_foreach(st, compose_cb, tmp);
    if (ret == 0) *acc = *tmp;
    free(tmp);
    return ret;
}

int plait_aggstore_metrics_put(plait_aggstore_t *st, int64_t round, const plait_aggstore_metric_t *m, size_t n)
{
    int ret = check_usable(st);
    if (ret != 0) return ret;
    if ((ret = check_metrics(st, m, n)) != 0) return ret;
    if ((ret = tx_begin(st)) != 0) return ret;
    plait_aggstore_round_state_t state;
    int64_t base, count = 0;
    bool found;
    if ((ret = round_state(st, round, &state, &base)) != 0) goto fail;
    if ((ret = insert_metrics(st, round, m, n, true)) != 0) goto fail;
    if ((ret = query_i64(st, "SELECT count(*) FROM metrics WHERE round_id = ?1", true, round, &count, &found,
                         "counting metrics")) != 0)
        goto fail;
    if ((uint64_t)count > st->max_metrics) {
        ret = plait_fail(PLAIT_ETOOBIG, "aggstore: round %lld would have %lld metrics, max %zu", (long long)round,
                         (long long)count, st->max_metrics);
        goto fail;
    }
    return tx_commit(st);
fail:
    tx_rollback(st);
    return ret;
}

int plait_aggstore_metrics_foreach(plait_aggstore_t *st, int64_t round, plait_aggstore_metric_cb cb, void *ud)
{
    int ret = check_usable(st);
    if (ret != 0) return ret;
    if (!cb) return plait_fail(PLAIT_EINVAL, "aggstore: callback is NULL");
    sqlite3_stmt *s;
    if ((ret = prep(st, "SELECT key, value FROM metrics WHERE round_id = ?1 ORDER BY key", &s)) != 0) return ret;
    sqlite3_bind_int64(s, 1, round);
    int rc;
    size_t n = 0;
    while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
        size_t kl;
        const unsigned char *k = text_col(s, 0, &kl);
        char key[PLAIT_AGGSTORE_MAX_KEY + 1];
        plait_aggstore_metric_t m;
        if (++n > st->max_metrics) {
            ret = plait_fail(PLAIT_EPROTO, "aggstore: metrics: round %lld has more than %zu metrics",
                             (long long)round, st->max_metrics);
            break;
        }
        if (!printable_bytes_ok(k, kl, PLAIT_AGGSTORE_MAX_KEY) ||
            !real_col(s, 1, &m.value)) {
            ret = plait_fail(PLAIT_EPROTO, "aggstore: metrics: round %lld: malformed row", (long long)round);
            break;
        }
        memcpy(key, k, kl);
        key[kl] = '\0';
        m.key = key;
        st->in_cb = true;
        ret = cb(ud, round, &m);
        st->in_cb = false;
        if (ret != 0) break;
    }
    if (ret == 0 && rc != SQLITE_DONE) ret = sqfail(st->db, rc, "reading metrics");
    sqlite3_finalize(s);
    return ret;
}
