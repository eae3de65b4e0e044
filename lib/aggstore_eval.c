/*
 * aggstore_eval.c: federated evaluation in the aggregator store (part of
 * aggstore.c): an evaluation round is a rounds row of kind 'evaluate'; it
 * ends failed, abandoned (as any round) or committed with one evals row,
 * the mean clipped held-out loss of at least min_cohort devices on the
 * version the round evaluated. It never writes a version, a ledger row or a
 * device's participation counters. No per-device value is ever stored.
 */
#include "aggstore_int.h"

#include <math.h>
#include <string.h>

static const char *const KIND_NAMES[] = {"train", "evaluate"};

const char *plait_aggstore_kind_name(plait_aggstore_kind_t k)
{
    return (unsigned)k < 2 ? KIND_NAMES[k] : "?";
}

int plait_aggstore_eval_begin(plait_aggstore_t *st, int64_t target_cohort, int64_t min_cohort,
                              const char *task_config, int64_t version, int64_t *round_out)
{
    if (version < 1) return plait_fail(PLAIT_EINVAL, "aggstore: an evaluation round needs a version (got %lld)",
                                       (long long)version);
    return plait__aggstore_round_begin_kind(st, target_cohort, min_cohort, task_config, version,
                                            PLAIT_AGGSTORE_KIND_EVALUATE, round_out);
}

int plait_aggstore_eval_commit(plait_aggstore_t *st, int64_t round, int64_t devices, double mean_loss,
                               double loss_max, const plait_aggstore_stats_t *stats)
{
    int ret = plait__aggstore_check_usable(st);
    if (ret != 0) return ret;
    if (!isfinite(loss_max) || loss_max <= 0.0)
        return plait_fail(PLAIT_EINVAL, "aggstore: evaluation loss_max not finite and > 0");
    if (!isfinite(mean_loss) || mean_loss < 0.0 || mean_loss > loss_max)
        return plait_fail(PLAIT_EINVAL, "aggstore: evaluation mean loss not finite and in [0, loss_max]");
    if (stats && (ret = plait__aggstore_check_stats(st, stats)) != 0) return ret;
    int64_t base = 0, v = 0;
    bool found;
    if ((ret = plait__aggstore_begin_open_round(st, round, &base)) != 0) return ret;
    if ((ret = plait__aggstore_query_i64(st, "SELECT kind = 'evaluate' FROM rounds WHERE id = ?1", true, round, &v,
                                         &found, "reading round kind")) != 0)
        goto fail;
    if (!v) {
        ret = plait_fail(PLAIT_EINVAL, "aggstore: round %lld is a training round, not an evaluation",
                         (long long)round);
        goto fail;
    }
    if ((ret = plait__aggstore_query_i64(st, "SELECT min_cohort FROM rounds WHERE id = ?1", true, round, &v, &found,
                                         "reading min_cohort")) != 0)
        goto fail;
    if (devices < v || devices > 1000000000LL) {
        ret = plait_fail(PLAIT_EINVAL, "aggstore: evaluation of %lld devices, the round needs at least %lld",
                         (long long)devices, (long long)v);
        goto fail;
    }
    int64_t now = plait__aggstore_now_s();
    sqlite3_stmt *s;
    if ((ret = plait__aggstore_prep(st,
                                    "UPDATE rounds SET state = 'committed', ended = max(?2, started)"
                                    " WHERE id = ?1 AND state = 'open'",
                                    &s)) != 0)
        goto fail;
    sqlite3_bind_int64(s, 1, round);
    sqlite3_bind_int64(s, 2, now);
    if ((ret = plait__aggstore_step_done(st, s, "committing evaluation round")) != 0) goto fail;
    if (stats && (ret = plait__aggstore_write_stats(st, round, stats)) != 0) goto fail;
    if ((ret = plait__aggstore_prep(st,
                                    "INSERT INTO evals(round_id, version, created, devices, mean_loss, loss_max)"
                                    " VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                                    &s)) != 0)
        goto fail;
    sqlite3_bind_int64(s, 1, round);
    sqlite3_bind_int64(s, 2, base);
    sqlite3_bind_int64(s, 3, now);
    sqlite3_bind_int64(s, 4, devices);
    sqlite3_bind_double(s, 5, mean_loss);
    sqlite3_bind_double(s, 6, loss_max);
    if ((ret = plait__aggstore_step_done(st, s, "writing evaluation")) != 0) goto fail;
    return plait__aggstore_tx_commit(st);
fail:
    plait__aggstore_tx_rollback(st);
    return ret;
}

int plait_aggstore_evals_foreach(plait_aggstore_t *st, bool newest_first, size_t max_rows,
                                 plait_aggstore_eval_cb cb, void *ud)
{
    int ret = plait__aggstore_check_usable(st);
    if (ret != 0) return ret;
    if (!cb) return plait_fail(PLAIT_EINVAL, "aggstore: callback is NULL");
    int64_t lim = max_rows == 0 || max_rows > (size_t)INT64_MAX ? -1 : (int64_t)max_rows;
    sqlite3_stmt *s;
    if ((ret = plait__aggstore_prep(st,
                                    newest_first ? "SELECT round_id, version, created, devices, mean_loss, loss_max"
                                                   " FROM evals ORDER BY round_id DESC LIMIT ?1"
                                                 : "SELECT round_id, version, created, devices, mean_loss, loss_max"
                                                   " FROM evals ORDER BY round_id LIMIT ?1",
                                    &s)) != 0)
        return ret;
    sqlite3_bind_int64(s, 1, lim);
    int rc;
    while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
        plait_aggstore_eval_t e;
        memset(&e, 0, sizeof(e));
        e.round_id = sqlite3_column_int64(s, 0);
        bool ok = e.round_id > 0 && plait__aggstore_nonneg(s, 1, &e.version) && e.version >= 1 &&
                  plait__aggstore_nonneg(s, 2, &e.created) && plait__aggstore_nonneg(s, 3, &e.devices) &&
                  e.devices >= 1 && sqlite3_column_type(s, 4) == SQLITE_FLOAT &&
                  sqlite3_column_type(s, 5) == SQLITE_FLOAT;
        if (ok) {
            e.mean_loss = sqlite3_column_double(s, 4);
            e.loss_max = sqlite3_column_double(s, 5);
            ok = isfinite(e.loss_max) && e.loss_max > 0 && isfinite(e.mean_loss) && e.mean_loss >= 0 &&
                 e.mean_loss <= e.loss_max;
        }
        if (!ok) {
            ret = plait_fail(PLAIT_EPROTO, "aggstore: evals: round %lld: malformed row", (long long)e.round_id);
            break;
        }
        st->in_cb = true;
        ret = cb(ud, &e);
        st->in_cb = false;
        if (ret != 0) break;
    }
    if (ret == 0 && rc != SQLITE_ROW && rc != SQLITE_DONE) ret = plait__aggstore_sqfail(st->db, rc, "reading evals");
    sqlite3_finalize(s);
    return ret;
}

int plait_aggstore_eval_request(plait_aggstore_t *st)
{
    int ret = plait__aggstore_check_usable(st);
    if (ret != 0) return ret;
    return plait__aggstore_exec(st, "INSERT OR REPLACE INTO meta(key, value) VALUES ('eval_requested', 1)",
                                "requesting an evaluation");
}

int plait_aggstore_eval_take_request(plait_aggstore_t *st, bool *requested)
{
    int ret = plait__aggstore_check_usable(st);
    if (ret != 0) return ret;
    if (!requested) return plait_fail(PLAIT_EINVAL, "aggstore: requested is NULL");
    *requested = false;
    if ((ret = plait__aggstore_tx_begin(st)) != 0) return ret;
    int64_t n = 0;
    bool found;
    if ((ret = plait__aggstore_query_i64(st, "SELECT count(*) FROM meta WHERE key = 'eval_requested'", false, 0, &n,
                                         &found, "reading the evaluation request")) != 0 ||
        (n > 0 && (ret = plait__aggstore_exec(st, "DELETE FROM meta WHERE key = 'eval_requested'",
                                              "taking the evaluation request")) != 0)) {
        plait__aggstore_tx_rollback(st);
        return ret;
    }
    if ((ret = plait__aggstore_tx_commit(st)) != 0) return ret;
    *requested = n > 0;
    return 0;
}
