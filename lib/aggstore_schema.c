/*
 * aggstore_schema.c: the aggregator store's schema, how a file is recognized
 * as one, and how older schemas are brought up to date (part of aggstore.c).
 *
 * Schema (version 3), PRAGMA application_id = 'PLAG' (the device store is 'PLAT'):
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
 * Every migration runs in its own write transaction and re-reads the version
 * under the write lock, so two processes opening one old file migrate it once.
 */
#include "aggstore_int.h"

#include <stdio.h>
#include <string.h>

#include "plait/crypto.h"

#define ABANDON_REASON "aggregator restarted while the round was open"

/* ------------------------------------------------------------------------ */
/* Schema                                                                    */
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

int plait__aggstore_create_schema(plait_aggstore_t *st, const char *deployment_id)
{
    int ret;
    if ((ret = plait__aggstore_tx_begin(st)) != 0) return ret;
    int64_t n = 0;
    bool found;
    /* Re-check under the write lock: another process may have created it. */
    if ((ret = plait__aggstore_query_i64(st, "SELECT count(*) FROM sqlite_master", false, 0, &n,
                                         &found, "inspecting schema")) != 0)
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
        if ((ret = plait__aggstore_exec(st, SCHEMA_SQL, "creating schema")) != 0) goto fail;
        char sql[256];
        snprintf(sql, sizeof(sql), "PRAGMA application_id = %d; PRAGMA user_version = %d;", AGG_APP_ID,
                 PLAIT_AGGSTORE_SCHEMA_VERSION);
        if ((ret = plait__aggstore_exec(st, sql, "setting application_id")) != 0) goto fail;
        sqlite3_stmt *s;
        if ((ret = plait__aggstore_prep(st,
                        "INSERT INTO meta(key, value) VALUES ('magic', '" AGG_MAGIC "'),"
                        " ('schema_version', ?1), ('deployment_id', ?2), ('created', ?3)",
                        &s)) != 0)
            goto fail;
        sqlite3_bind_int(s, 1, PLAIT_AGGSTORE_SCHEMA_VERSION);
        sqlite3_bind_text(s, 2, id, -1, SQLITE_TRANSIENT);
        sqlite3_bind_int64(s, 3, plait__aggstore_now_s());
        if ((ret = plait__aggstore_step_done(st, s, "writing meta")) != 0) goto fail;
    }
    return plait__aggstore_tx_commit(st);
fail:
    plait__aggstore_tx_rollback(st);
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
        return plait__aggstore_sqfail(st->db, rc, "reading meta");
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
                ret = plait__aggstore_sqfail(st->db, sqlite3_errcode(st->db), "reading meta");
            } else if (n >= cap || strlen((const char *)t) != n) {
                *type = SQLITE_BLOB; /* too long or embedded NUL: report as malformed */
            } else {
                memcpy(txt, t, n + 1);
            }
        }
    } else if (rc != SQLITE_DONE) {
        ret = plait__aggstore_sqfail(st->db, rc, "reading meta");
    }
    sqlite3_finalize(s);
    return ret;
}

int plait__aggstore_identify(plait_aggstore_t *st, const char *want_id)
{
    int ret;
    int64_t n = 0;
    bool found;
    if ((ret = plait__aggstore_query_i64(
             st, "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'meta'", false,
             0, &n, &found, "inspecting schema")) != 0)
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
    if (type != SQLITE_TEXT || !plait__aggstore_printable_ok(txt, PLAIT_AGGSTORE_MAX_DEPLOYMENT_ID))
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

int plait__aggstore_probe_tables(plait_aggstore_t *st)
{
    int ret;
    for (size_t i = 0; i < sizeof(PROBES) / sizeof(PROBES[0]); i++) {
        sqlite3_stmt *s;
        if ((ret = plait__aggstore_prep(st, PROBES[i], &s)) != 0) return ret;
        sqlite3_finalize(s);
    }
    return 0;
}

/*
 * The migrations, oldest first: each takes schema `from` to from + 1 and ends
 * by recording the new version (the file comment says what each adds).
 */
static const struct {
    int from;
    const char *sql;
    const char *what;
} MIGRATIONS[] = {
    {1,
     "ALTER TABLE ledger ADD COLUMN mechanism TEXT NOT NULL DEFAULT 'gaussian';"
     "ALTER TABLE ledger ADD COLUMN clip REAL NOT NULL DEFAULT 0;"
     "ALTER TABLE ledger ADD COLUMN selection TEXT NOT NULL DEFAULT 'first-come';"
     "ALTER TABLE devices ADD COLUMN dp_rounds INTEGER NOT NULL DEFAULT 0;"
     "UPDATE devices SET dp_rounds = rounds_participated WHERE EXISTS (SELECT 1 FROM ledger);"
     "UPDATE meta SET value = 2 WHERE key = 'schema_version';"
     "PRAGMA user_version = 2;",
     "migrating the schema to version 2"},
    /* The distributed discrete Gaussian's ledger columns. */
    {2,
     "ALTER TABLE ledger ADD COLUMN ddg_dim INTEGER NOT NULL DEFAULT 0;"
     "ALTER TABLE ledger ADD COLUMN ddg_var REAL NOT NULL DEFAULT 0;"
     "ALTER TABLE ledger ADD COLUMN ddg_n INTEGER NOT NULL DEFAULT 0;"
     "ALTER TABLE ledger ADD COLUMN ddg_l2 REAL NOT NULL DEFAULT 0;"
     "UPDATE meta SET value = 3 WHERE key = 'schema_version';"
     "PRAGMA user_version = 3;",
     "migrating the schema to version 3"},
};
#define N_MIGRATIONS (sizeof(MIGRATIONS) / sizeof(MIGRATIONS[0]))
_Static_assert(N_MIGRATIONS + 1 == PLAIT_AGGSTORE_SCHEMA_VERSION, "one migration per schema version after 1");

/* Migration i in one transaction; a file already past it is left alone. */
static int migrate_step(plait_aggstore_t *st, size_t i)
{
    int ret;
    if ((ret = plait__aggstore_tx_begin(st)) != 0) return ret;
    int64_t v = 0;
    bool found;
    /* Re-check under the write lock: another process may have migrated it. */
    if ((ret = plait__aggstore_query_i64(st, "SELECT value FROM meta WHERE key = 'schema_version'", false, 0, &v,
                                         &found, "reading schema version")) != 0)
        goto fail;
    if (v == MIGRATIONS[i].from && (ret = plait__aggstore_exec(st, MIGRATIONS[i].sql, MIGRATIONS[i].what)) != 0)
        goto fail;
    return plait__aggstore_tx_commit(st);
fail:
    plait__aggstore_tx_rollback(st);
    return ret;
}

int plait__aggstore_migrate(plait_aggstore_t *st)
{
    for (size_t i = 0; i < N_MIGRATIONS; i++) {
        int ret = migrate_step(st, i);
        if (ret != 0) return ret;
    }
    return 0;
}

int plait__aggstore_create_labels(plait_aggstore_t *st)
{
    return plait__aggstore_exec(st, "CREATE TABLE IF NOT EXISTS " LABELS_SQL, "creating device_labels");
}

/* Abandon rounds a crash left open. */
int plait__aggstore_recover(plait_aggstore_t *st)
{
    int ret;
    if ((ret = plait__aggstore_tx_begin(st)) != 0) return ret;
    sqlite3_stmt *s;
    if ((ret = plait__aggstore_prep(st,
                    "UPDATE rounds SET state = 'abandoned', ended = max(?1, started), reason = ?2"
                    " WHERE state = 'open'",
                    &s)) != 0)
        goto fail;
    sqlite3_bind_int64(s, 1, plait__aggstore_now_s());
    sqlite3_bind_text(s, 2, ABANDON_REASON, -1, SQLITE_STATIC);
    if ((ret = plait__aggstore_step_done(st, s, "abandoning open rounds")) != 0) goto fail;
    st->info.abandoned_at_open = (int64_t)sqlite3_changes64(st->db);
    return plait__aggstore_tx_commit(st);
fail:
    plait__aggstore_tx_rollback(st);
    return ret;
}
