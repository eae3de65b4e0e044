/*
 * aggstore_ledger.c: the privacy ledger (one row per committed DP round) and
 * per-round metrics (part of aggstore.c). Rows are validated as they are
 * read; the ledger composes into an accountant without touching it on error.
 */
#include "aggstore_int.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "plait/ddg.h"

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
    const unsigned char *t = plait__aggstore_text_col(s, col, &n);
    if (!plait__aggstore_printable_bytes_ok(t, n, PLAIT_AGGSTORE_LEDGER_NAME)) return false;
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
    else if (!plait__aggstore_nonneg(s, 3, &l->steps) || l->steps < 1) bad = "steps";
    else if (!real_col(s, 4, &l->delta) || !(l->delta > 0.0 && l->delta < 1.0)) bad = "delta";
    else if (!real_col(s, 5, &l->epsilon) || l->epsilon < 0.0) bad = "epsilon";
    else if (!name_col(s, 6, l->mechanism)) bad = "mechanism";
    else if (!real_col(s, 7, &l->clip) || l->clip < 0.0 || !isfinite(l->clip)) bad = "clip";
    else if (!name_col(s, 8, l->selection)) bad = "selection";
    else if (!plait__aggstore_nonneg(s, 9, &l->ddg_dim)) bad = "ddg_dim";
    else if (!real_col(s, 10, &l->ddg_var) || l->ddg_var < 0.0 || !isfinite(l->ddg_var)) bad = "ddg_var";
    else if (!plait__aggstore_nonneg(s, 11, &l->ddg_n)) bad = "ddg_n";
    else if (!real_col(s, 12, &l->ddg_l2) || l->ddg_l2 < 0.0 || !isfinite(l->ddg_l2)) bad = "ddg_l2";
    else if (strcmp(l->mechanism, "ddg") == 0 &&
             !(l->ddg_dim >= 1 && l->ddg_var > 0.0 && l->ddg_n >= 1 &&
               l->ddg_n <= PLAIT_DDG_MAX_DEVICES && l->ddg_l2 > 0.0))
        bad = "ddg parameters";
    if (bad)
        return plait_fail(PLAIT_EPROTO, "aggstore: ledger: round %lld: malformed %s", (long long)l->round_id, bad);
    return 0;
}

int plait_aggstore_ledger_foreach(plait_aggstore_t *st, plait_aggstore_ledger_cb cb, void *ud)
{
    int ret = plait__aggstore_check_usable(st);
    if (ret != 0) return ret;
    if (!cb) return plait_fail(PLAIT_EINVAL, "aggstore: callback is NULL");
    sqlite3_stmt *s;
    if ((ret =
             plait__aggstore_prep(st,
                                  "SELECT round_id, q, noise_multiplier, steps, delta, epsilon, "
                                  "mechanism, clip, selection,"
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
    if (ret == 0 && rc != SQLITE_DONE) ret = plait__aggstore_sqfail(st->db, rc, "reading ledger");
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
    if (ret == 0 && (ret = plait__aggstore_query_i64(st, "SELECT coalesce(max(dp_rounds), 0) FROM devices", false, 0,
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

int plait__aggstore_check_metrics(const plait_aggstore_t *st, const plait_aggstore_metric_t *m, size_t n)
{
    if (n > st->max_metrics) return plait_fail(PLAIT_ETOOBIG, "aggstore: %zu metrics, max %zu", n, st->max_metrics);
    if (n > 0 && !m) return plait_fail(PLAIT_EINVAL, "aggstore: metrics is NULL");
    for (size_t i = 0; i < n; i++) {
        if (!plait__aggstore_printable_ok(m[i].key, PLAIT_AGGSTORE_MAX_KEY))
            return plait_fail(PLAIT_EINVAL, "aggstore: metric %zu: key is not 1..%d printable bytes", i,
                              PLAIT_AGGSTORE_MAX_KEY);
        if (isnan(m[i].value)) return plait_fail(PLAIT_EINVAL, "aggstore: metric '%s' is NaN", m[i].key);
    }
    return 0;
}

int plait__aggstore_insert_metrics(plait_aggstore_t *st, int64_t round, const plait_aggstore_metric_t *m, size_t n,
                          bool replace)
{
    for (size_t i = 0; i < n; i++) {
        sqlite3_stmt *s;
        int ret = plait__aggstore_prep(st,
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
        if (rc != SQLITE_DONE) return plait__aggstore_sqfail(st->db, rc, "writing metrics");
    }
    return 0;
}

int plait_aggstore_metrics_put(plait_aggstore_t *st, int64_t round, const plait_aggstore_metric_t *m, size_t n)
{
    int ret = plait__aggstore_check_usable(st);
    if (ret != 0) return ret;
    if ((ret = plait__aggstore_check_metrics(st, m, n)) != 0) return ret;
    if ((ret = plait__aggstore_tx_begin(st)) != 0) return ret;
    plait_aggstore_round_state_t state;
    int64_t base, count = 0;
    bool found;
    if ((ret = plait__aggstore_round_state(st, round, &state, &base)) != 0) goto fail;
    if ((ret = plait__aggstore_insert_metrics(st, round, m, n, true)) != 0) goto fail;
    if ((ret = plait__aggstore_query_i64(st, "SELECT count(*) FROM metrics WHERE round_id = ?1",
                                         true, round, &count, &found, "counting metrics")) != 0)
        goto fail;
    if ((uint64_t)count > st->max_metrics) {
        ret = plait_fail(PLAIT_ETOOBIG, "aggstore: round %lld would have %lld metrics, max %zu", (long long)round,
                         (long long)count, st->max_metrics);
        goto fail;
    }
    return plait__aggstore_tx_commit(st);
fail:
    plait__aggstore_tx_rollback(st);
    return ret;
}

int plait_aggstore_metrics_foreach(plait_aggstore_t *st, int64_t round, plait_aggstore_metric_cb cb, void *ud)
{
    int ret = plait__aggstore_check_usable(st);
    if (ret != 0) return ret;
    if (!cb) return plait_fail(PLAIT_EINVAL, "aggstore: callback is NULL");
    sqlite3_stmt *s;
    if ((ret = plait__aggstore_prep(
             st, "SELECT key, value FROM metrics WHERE round_id = ?1 ORDER BY key", &s)) != 0)
        return ret;
    sqlite3_bind_int64(s, 1, round);
    int rc;
    size_t n = 0;
    while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
        size_t kl;
        const unsigned char *k = plait__aggstore_text_col(s, 0, &kl);
        char key[PLAIT_AGGSTORE_MAX_KEY + 1];
        plait_aggstore_metric_t m;
        if (++n > st->max_metrics) {
            ret = plait_fail(PLAIT_EPROTO, "aggstore: metrics: round %lld has more than %zu metrics",
                             (long long)round, st->max_metrics);
            break;
        }
        if (!plait__aggstore_printable_bytes_ok(k, kl, PLAIT_AGGSTORE_MAX_KEY) ||
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
    if (ret == 0 && rc != SQLITE_DONE) ret = plait__aggstore_sqfail(st->db, rc, "reading metrics");
    sqlite3_finalize(s);
    return ret;
}
