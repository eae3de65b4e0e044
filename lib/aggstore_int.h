/*
 * aggstore_int.h (private to lib/aggstore*.c): the store object and the
 * helpers its files share. sqlite3.h stays inside the store module; callers
 * of aggstore.h see PLAIT_E* codes only.
 */
#ifndef PLAIT_AGGSTORE_INT_H
#define PLAIT_AGGSTORE_INT_H

#include <sqlite3.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "plait/aggstore.h"
#include "store_int.h"

#define AGG_MAGIC "plait-aggstore"
#define AGG_APP_ID 0x504C4147 /* "PLAG" */

struct plait_aggstore_s {
    sqlite3 *db;
    size_t max_adapter, max_opt, max_config, max_metrics, max_reasons;
    bool read_only;
    bool in_cb;
    int fault_step;
    plait_aggstore_info_t info;
};

/* ---- aggstore.c: errors, checks and statement helpers ------------------- */

/* Translate an sqlite failure; the detail is sqlite's message, never data. */
int plait__aggstore_sqfail(sqlite3 *db, int rc, const char *what);
/* Refuse a NULL store, or a call from inside one of its callbacks. */
int plait__aggstore_check_usable(const plait_aggstore_t *st);
/* Wall-clock seconds, 0 if the clock is before the epoch. */
int64_t plait__aggstore_now_s(void);
/* 1..max printable ASCII bytes, NUL-terminated. */
bool plait__aggstore_printable_ok(const char *s, size_t max);
/* Same test on a column value of n bytes (may hold NULs: rejected). */
bool plait__aggstore_printable_bytes_ok(const unsigned char *s, size_t n, size_t max);
/* Prepare sql; a missing table or column is PLAIT_EPROTO ("tables malformed"). */
int plait__aggstore_prep(plait_aggstore_t *st, const char *sql, sqlite3_stmt **s);
/* Run one or more statements with no result rows. */
int plait__aggstore_exec(plait_aggstore_t *st, const char *sql, const char *what);
/* Step a write statement to completion and finalize it. */
int plait__aggstore_step_done(plait_aggstore_t *st, sqlite3_stmt *s, const char *what);
/* Run sql (binding ?1 = a if bind) returning one integer; *found = row existed and was an integer. */
int plait__aggstore_query_i64(plait_aggstore_t *st, const char *sql, bool bind, int64_t a, int64_t *out,
                              bool *found, const char *what);
/* BEGIN IMMEDIATE; COMMIT (rolled back if it fails); ROLLBACK if a transaction is open. */
int plait__aggstore_tx_begin(plait_aggstore_t *st);
int plait__aggstore_tx_commit(plait_aggstore_t *st);
void plait__aggstore_tx_rollback(plait_aggstore_t *st);
/* A TEXT column's bytes and length, or NULL for any other type. */
const unsigned char *plait__aggstore_text_col(sqlite3_stmt *s, int col, size_t *len);
/* Optional non-negative integer column: NULL gives 0. */
bool plait__aggstore_opt_nonneg(sqlite3_stmt *s, int col, int64_t *out);
/* Non-negative integer column. */
bool plait__aggstore_nonneg(sqlite3_stmt *s, int col, int64_t *out);

/* ---- aggstore_schema.c -------------------------------------------------- */

/* Create the schema and meta rows in an empty file (re-checked under the write lock). */
int plait__aggstore_create_schema(plait_aggstore_t *st, const char *deployment_id);
/* Check magic and schema version, read meta into st->info; want_id, if set, must match. */
int plait__aggstore_identify(plait_aggstore_t *st, const char *want_id);
/* Bring an older schema up to PLAIT_AGGSTORE_SCHEMA_VERSION, one transaction a step. */
int plait__aggstore_migrate(plait_aggstore_t *st);
/* Prepare one SELECT per table naming every column: a missing one fails here. */
int plait__aggstore_probe_tables(plait_aggstore_t *st);
/* Create device_labels where it is missing (stores made before it existed). */
int plait__aggstore_create_labels(plait_aggstore_t *st);
/* Abandon rounds a crash left open; counts them in st->info.abandoned_at_open. */
int plait__aggstore_recover(plait_aggstore_t *st);

/* ---- aggstore_devices.c ------------------------------------------------- */

/* A device id: 1..PLAIT_AGGSTORE_MAX_DEVICE_ID printable ASCII bytes. */
int plait__aggstore_check_id(const char *id);

/* ---- aggstore_rounds.c -------------------------------------------------- */

/* State of a round; PLAIT_ENOENT if none. Also validates the state text. */
int plait__aggstore_round_state(plait_aggstore_t *st, int64_t round, plait_aggstore_round_state_t *state,
                                int64_t *base);

/* ---- aggstore_ledger.c -------------------------------------------------- */

/* At most st->max_metrics metrics, printable keys, no NaN. */
int plait__aggstore_check_metrics(const plait_aggstore_t *st, const plait_aggstore_metric_t *m, size_t n);
/* Insert (or replace) a round's metrics inside the caller's transaction. */
int plait__aggstore_insert_metrics(plait_aggstore_t *st, int64_t round, const plait_aggstore_metric_t *m, size_t n,
                                   bool replace);

#endif /* PLAIT_AGGSTORE_INT_H */
