/*
 * server_eval.c: federated evaluation in the service (server_int.h,
 * protocol.md §10). An evaluation round asks devices with
 * PLAIT_CAP_EVALUATE for the held-out loss of the current version, each as
 * two words [min(loss, L) / L, 1], masked and summed by SecAgg+ exactly like
 * an update; the unmasked sum of at least min_cohort devices gives the mean
 * clipped loss, committed to the store's evals table. No version, no ledger
 * row, no participation counter is written, and no per-device value exists
 * on the aggregator: it only ever holds the sum.
 *
 * Evaluation needs secure_agg = true and dp = none (plait_aggcfg_eval_allowed):
 * under DP the metric would be released without noise and without a ledger
 * row; without secure aggregation each device's loss would be seen.
 *
 * An evaluation round runs on a second round core sized for the two metric
 * words (dim 1, range 1, FedAvg from 0, uniform weights), created when the
 * round opens: while it runs, s->round and s->rcfg are the evaluation core's
 * and the training core waits in s->train_core / s->train_rcfg, so the round
 * glue (server_round.c, server_secagg.c) drives it unchanged.
 * plait__srv_eval_end puts the training core back when the round ends.
 *
 * When: after every eval_every committed training rounds, or once at the next
 * round opening after `plait-aggregator evaluate DIR` (a request row in the
 * store, taken by the job that opens the round). Loop thread, except the two
 * functions marked "worker" (they run inside a store job, `busy`).
 */
#include "server_int.h"

#include "evalcore.h"

#include <stdio.h>
#include <string.h>

#include "plait/log.h"

size_t plait__srv_words(const plait_server_t *s)
{
    return s->eval_live ? PLAIT_WIRE_EVAL_WORDS : s->span_len + 1 + (size_t)s->rcfg.clip_bit;
}

/* Worker (the BEGIN job): is the round about to open an evaluation? 2 yes (the operator's request),
 * 1 yes (eval_every), 0 no, -1 an operator request was taken but evaluation is not allowed by the
 * configuration (after_job says why). */
int plait__srv_eval_pick(plait_server_t *s)
{
    int requested = 0;
    if (plait__svc_eval_take_request(s->store, &requested) != 0) {
        PLAIT_LOG(PLAIT_LOG_WARN, "store: reading the evaluation request: %s", plait_errmsg());
        requested = 0;
    }
    int allowed = plait_aggcfg_eval_allowed(&s->cfg) == 0;
    plait_clear_error();
    if (!allowed) return requested ? -1 : 0;
    if (s->blob->version < 1) return 0;
    if (requested) return 2;
    return s->cfg.eval_every > 0 && s->trained_since_eval >= s->cfg.eval_every;
}

/* Worker: open the evaluation round in the store. */
int plait__srv_eval_begin(plait_server_t *s, int by_request, int64_t *rid)
{
    char json[256];
    snprintf(json, sizeof(json),
             "{\"kind\": \"evaluate\", \"eval_loss_max\": %.9g, \"quant_bits\": %llu, \"seq_len\": %llu, "
             "\"batch\": %llu, \"lora_mode\": \"%s\"}",
             s->cfg.eval_loss_max, (unsigned long long)s->cfg.quant_bits, (unsigned long long)s->cfg.seq_len,
             (unsigned long long)s->cfg.batch, s->cfg.lora_mode);
    int rc = plait__svc_eval_begin(s->store, (int64_t)s->cfg.target_cohort, (int64_t)s->cfg.min_cohort, json,
                                   (int64_t)s->blob->version, rid);
    if (rc != 0 && by_request) {
        /* Not opened (the BEGIN job is retried): the operator's request waits for the retry. */
        char keep[300];
        snprintf(keep, sizeof(keep), "%s", plait_errmsg());
        if (plait__svc_eval_request(s->store) != 0)
            PLAIT_LOG(PLAIT_LOG_WARN, "store: keeping the evaluation request: %s", plait_errmsg());
        plait_fail(rc, "%s", keep);
    }
    return rc;
}

int plait__srv_eval_start(plait_server_t *s)
{
    if (s->eval_live) return 0;
    plait_round_config_t rc;
    plait__eval_core_config(&s->rcfg, &rc);
    const float zero = 0.0f;
    plait_round_t *r = NULL;
    int e = plait_round_create(&r, &rc, &zero, 1);
    if (e != 0) return e;
    s->train_core = s->round;
    s->train_rcfg = s->rcfg;
    s->round = r;
    s->rcfg = rc;
    s->eval_live = 1;
    s->trained_since_eval = 0; /* counted from here, so an evaluation that fails does not repeat at once */
    return 0;
}

void plait__srv_eval_end(plait_server_t *s)
{
    if (!s->eval_live) return;
    plait_round_destroy(s->round);
    s->round = s->train_core;
    s->rcfg = s->train_rcfg;
    s->train_core = NULL;
    s->eval_live = 0;
}

void plait__srv_eval_fill_task(const plait_server_t *s, plait_msg_task_t *t)
{
    if (!s->eval_live) return;
    t->kind = PLAIT_TASK_EVALUATE;
    t->eval_loss_max = s->cfg.eval_loss_max;
    t->clip_norm = plait_round_clip(s->train_core); /* unused by evaluation; the device's policy sees the usual bound */
    t->update_elements = PLAIT_WIRE_EVAL_WORDS;
    t->example_cap = 1; /* every device counts once */
    t->clip_bit = 0;
}

int plait__srv_eval_refuse(conn_t *c, uint32_t caps)
{
    plait_server_t *s = c->srv;
    if (!s->eval_live || (caps & PLAIT_CAP_EVALUATE)) return 0;
    PLAIT_LOG(PLAIT_LOG_INFO, "device=%s cannot evaluate (no evaluation capability): come back later (incompatible)",
              c->device);
    plait__srv_send_cbl(c, PLAIT_RETRY_INCOMPATIBLE, s->cfg.retry_ms);
    plait__srv_conn_close(c, 1);
    return 1;
}

/* Worker (the COMMIT job): the mean from the unmasked sum, and the store's evals row. */
int plait__srv_eval_commit_work(plait_server_t *s, const plait__svc_stats_t *stats, double *mean, size_t *devices,
                                char *why, size_t why_len)
{
    int rc = plait_round_aggregate(s->round, &s->rng);
    if (rc == 0) rc = plait_round_commit(s->round);
    if (rc != 0) {
        snprintf(why, why_len, "aggregating the evaluation: %s", plait_errmsg());
        return rc;
    }
    if ((rc = plait__eval_core_mean(s->round, s->rcfg.min_cohort, s->cfg.eval_loss_max, mean, devices)) != 0) {
        snprintf(why, why_len, "%s", plait_errmsg());
        return rc;
    }
    plait_round_stats_t st;
    plait_round_stats(s->round, &st);
    plait__svc_stats_t ast = *stats;
    ast.dropouts = (int64_t)(st.dropouts + st.stragglers);
    rc = plait__svc_eval_commit(s->store, (int64_t)s->cur_rid, (int64_t)*devices, *mean, s->cfg.eval_loss_max,
                                &ast);
    if (rc != 0) snprintf(why, why_len, "store: %s", plait_errmsg());
    return rc;
}

void plait__srv_eval_committed(plait_server_t *s, int rc, double mean, size_t devices, const char *why)
{
    if (rc != 0) {
        s->m.rounds_failed++;
        PLAIT_LOG(PLAIT_LOG_ERROR, "evaluation failed round=%llu: %s (%s)", (unsigned long long)s->cur_rid, why,
                  plait_err_name(rc));
        if (plait__svc_round_fail(s->store, (int64_t)s->cur_rid, why, &s->rs) != 0)
            PLAIT_LOG(PLAIT_LOG_ERROR, "store: closing round %llu: %s", (unsigned long long)s->cur_rid,
                      plait_errmsg());
        plait__srv_signal_round_end(s, PLAIT_RETRY_COMMIT_FAILED);
        return;
    }
    s->m.evals_committed++;
    s->m.eval_mean_loss = mean;
    s->m.eval_version = s->blob->version;
    /* An aggregate over >= min_cohort devices: the only loss the aggregator ever knows. */
    PLAIT_LOG(PLAIT_LOG_INFO, "evaluation committed round=%llu version=%llu devices=%zu mean_loss=%.6f (clipped at %g)",
              (unsigned long long)s->cur_rid, (unsigned long long)s->blob->version, devices, mean,
              s->cfg.eval_loss_max);
}
