/*
 * server_commit.c: the service's store jobs (server_int.h): a round opens
 * (JOB_BEGIN), fails (JOB_FAIL) or commits (JOB_COMMIT: aggregate, server
 * optimizer step, adapter serialization, one store transaction), a secure
 * round unmasks its sum (JOB_UNMASK: server_secagg.c), and the end
 * of a round on the loop thread (round_ended, plait__srv_abandon_round).
 *
 * Contract: one job at a time (`busy`). work_job runs on a libuv worker and
 * touches only the writer store, the round core, the DP rng and s->lora;
 * after_job runs on the loop thread and applies the result (swaps the global
 * adapter, counts, logs). A failed commit leaves the last committed version
 * in place and the core rebuilt on it. Logs carry round ids, versions and
 * counts; never update words or adapter bytes.
 */
#include "server_int.h"

#if defined(__GLIBC__)
#include <malloc.h>
#endif
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "plait/adapter.h"
#include "plait/crashpoint.h"
#include "plait/crypto.h"
#include "plait/ddg.h"
#include "plait/log.h"
#include "plait/update.h"

/* ---- store jobs on a worker ------------------------------------------------- *
 * Every write to the store runs on a libuv worker, one job at a time (`busy`).
 * While a job runs the loop thread touches neither the writer connection nor
 * the round core nor s->lora; after_job applies the result on the loop thread. */

typedef enum { JOB_BEGIN, JOB_FAIL, JOB_COMMIT, JOB_UNMASK } job_kind_t;

typedef struct {
    uv_work_t req;
    plait_server_t *s;
    job_kind_t kind;
    int rc;
    int core_committed;
    char why[300];
    /* BEGIN */
    char *task_json;
    int64_t rid;
    /* FAIL */
    char reason[200];
    /* COMMIT */
    plait__svc_stats_t stats;
    plait_round_stats_t st;
    blob_t *blob;
    char **uploaders;
    size_t n_uploaders;
    double duration;
    /* evaluation rounds (server_eval.c) */
    int eval;         /* BEGIN: > 0 opened an evaluation (plait__srv_eval_pick), -1 a request refused */
    double eval_mean; /* COMMIT of an evaluation: the mean clipped loss */
    size_t eval_devices;
} job_t;

static void job_free(job_t *j)
{
    free(j->task_json);
    for (size_t i = 0; i < j->n_uploaders; i++) free(j->uploaders[i]);
    free(j->uploaders);
    plait__srv_blob_unref(j->blob);
    free(j);
}

static plait__svc_lora_t svc_lora(const plait_server_t *s)
{
    plait__svc_lora_t lo;
    lo.rank = s->lora.cfg.rank;
    lo.alpha = s->lora.cfg.alpha;
    lo.targets = s->lora.cfg.targets;
    lo.opt_kind = (int)s->rcfg.opt.kind;
    return lo;
}

static void work_commit(job_t *j)
{
    plait_server_t *s = j->s;
    j->rc = plait_round_aggregate(s->round, &s->rng);
    if (j->rc == 0) j->rc = plait_round_commit(s->round);
    if (j->rc != 0) {
        snprintf(j->why, sizeof(j->why), "aggregation: %s", plait_errmsg());
        return;
    }
    j->core_committed = 1;
    plait_round_stats(s->round, &j->st);
    memcpy(s->lora.params + s->span_off, plait_round_global(s->round), s->span_len * sizeof(float));
    blob_t *b = calloc(1, sizeof(*b));
    if (!b) {
        j->rc = PLAIT_ENOMEM;
        snprintf(j->why, sizeof(j->why), "out of memory");
        return;
    }
    b->refs = 1;
    j->blob = b;
    if (s->cfg.download_delta_bits != 0 && plait__srv_commit_quant(s, b) != 0)
        PLAIT_LOG(PLAIT_LOG_WARN, "round=%llu: version kept as aggregated, no quantized download delta: %s",
                  (unsigned long long)s->cur_rid, plait_errmsg());
    j->rc = plait_adapter_save_mem(&s->lora, s->base_sha, &b->data, &b->len);
    if (j->rc != 0) {
        snprintf(j->why, sizeof(j->why), "serializing the adapter: %s", plait_errmsg());
        return;
    }
    plait_sha256(b->data, b->len, b->sha);
    if ((j->rc = plait__srv_blob_set_params(b, s->lora.params, s->lora.n_params, s->lora.n_a)) != 0) {
        snprintf(j->why, sizeof(j->why), "%s", plait_errmsg());
        return;
    }
    plait__svc_commit_t cm;
    memset(&cm, 0, sizeof(cm));
    cm.adapter = b->data;
    cm.adapter_len = b->len;
    cm.sha256 = b->sha;
    cm.lora = svc_lora(s);
    j->stats.dropouts = (int64_t)(j->st.dropouts + j->st.stragglers);
    cm.stats = &j->stats;
    cm.dp = s->rcfg.dp;
    if (cm.dp) {
        cm.q = j->st.sample_rate;
        cm.z = j->st.noise_multiplier; /* with the quantization slack (round.h) */
        cm.clip = j->st.clip_used;
        cm.adaptive = s->rcfg.dp_cfg.adaptive;
        cm.next_clip = j->st.clip_next;
        cm.poisson = s->rcfg.poisson;
        cm.delta = plait_round_delta(s->round);
    }
    if (s->rcfg.ddg) {
        double cs = s->cfg.clip_norm / plait_quant_step(&s->rcfg.quant);
        cm.dp = 1;
        cm.ddg = 1;
        cm.q = 1.0; /* no amplification by sampling is claimed */
        cm.z = s->cfg.noise_multiplier;
        cm.clip = s->cfg.clip_norm;
        cm.delta = plait_round_delta(s->round);
        cm.ddg_dim = (int64_t)s->span_len;
        cm.ddg_var = s->rcfg.ddg_var;
        cm.ddg_n = (int64_t)j->st.accepted;
        cm.ddg_l2 = plait_ddg_rounded_l2(cs, s->span_len);
    }
    cm.accepted = (double)j->st.accepted;
    cm.duration_s = j->duration;
    cm.uploaders = (const char *const *)j->uploaders;
    cm.n_uploaders = j->n_uploaders;
    /* The adaptive server optimizers' moments go with the version, so a
     * restart resumes FedAdam/FedYogi/FedAdagrad where they were. */
    size_t n_opt = plait_round_opt_state_len(s->round);
    float *opt = NULL;
    if (n_opt) {
        opt = malloc(n_opt * sizeof(float));
        if (!opt || plait_round_opt_export(s->round, opt, n_opt) != 0) {
            free(opt);
            j->rc = PLAIT_ENOMEM;
            snprintf(j->why, sizeof(j->why), "exporting the optimizer state");
            return;
        }
    }
    cm.opt_state = opt;
    cm.opt_state_len = n_opt;
    int64_t ver = 0;
    j->rc = plait__svc_round_commit(s->store, (int64_t)s->cur_rid, &cm, &ver);
    free(opt);
    if (j->rc != 0) {
        snprintf(j->why, sizeof(j->why), "store commit: %s", plait_errmsg());
        return;
    }
    b->version = (uint64_t)ver;
}

static void work_job(uv_work_t *req)
{
    job_t *j = req->data;
    plait_server_t *s = j->s;
    switch (j->kind) {
    case JOB_BEGIN:
        j->eval = plait__srv_eval_pick(s);
        if (j->eval > 0)
            j->rc = plait__srv_eval_begin(s, j->eval == 2, &j->rid);
        else
            j->rc = plait__svc_round_begin(s->store, (int64_t)s->cfg.target_cohort, (int64_t)s->cfg.min_cohort,
                                           j->task_json, (int64_t)s->blob_version_for_job, &j->rid);
        if (j->rc != 0) snprintf(j->why, sizeof(j->why), "%s", plait_errmsg());
        break;
    case JOB_FAIL:
        j->rc = plait__svc_round_fail(s->store, (int64_t)s->cur_rid, j->reason, &j->stats);
        if (j->rc != 0) snprintf(j->why, sizeof(j->why), "%s", plait_errmsg());
        break;
    case JOB_COMMIT:
#if defined(__GLIBC__)
        (void)malloc_trim(0); /* thread-safe; walks the heap, so not on the loop */
#endif
        if (s->eval_live)
            j->rc = plait__srv_eval_commit_work(s, &j->stats, &j->eval_mean, &j->eval_devices, j->why,
                                                sizeof(j->why));
        else
            work_commit(j);
        break;
    case JOB_UNMASK:
        plait__sa_finish_work(s->sa); /* its outcome is applied by the next step, on the loop */
        break;
    }
}

static int rebuild_round(plait_server_t *s);
static int round_rate(plait_server_t *s, uint64_t rid);

void plait__srv_cohort_clear(plait_server_t *s)
{
    for (size_t i = 0; i < s->n_cohort; i++) {
        plait__srv_upd_free(s, s->cohort[i].pending, s->cohort[i].n_pending, s->cohort[i].w_pending);
        s->cohort[i].pending = NULL;
    }
    s->n_cohort = 0;
}

static void round_ended(plait_server_t *s)
{
    plait__srv_eval_end(s); /* an evaluation round's core goes; the training core is back */
    plait__sa_free(s->sa);
    s->sa = NULL;
    s->round_live = 0;
    plait__srv_cohort_clear(s);
    plait__srv_upd_pool_clear(s); /* also after a failed or abandoned round: no update buffer between rounds */
    s->next_open = now_s(s) + s->cfg.round_pause_s;
    if (s->sa_failed) { /* do not reopen failing rounds in a tight loop */
        double back = (double)s->cfg.retry_ms / 1000.0;
        s->next_open += back > 1.0 ? back : 1.0;
        s->sa_failed = 0;
    }
}

/* Shutdown with a round open: abandon it (the writer is free: no job runs). */
void plait__srv_abandon_round(plait_server_t *s, const char *why)
{
    if (!s->round_live || s->busy) return;
    plait_round_abort(s->round, now_s(s));
    s->m.rounds_abandoned++;
    int rc = plait__svc_round_fail(s->store, (int64_t)s->cur_rid, why, &s->rs);
    if (rc != 0)
        PLAIT_LOG(PLAIT_LOG_ERROR, "store: closing round %llu: %s", (unsigned long long)s->cur_rid, plait_errmsg());
    PLAIT_LOG(PLAIT_LOG_INFO, "round abandoned round=%llu (%s); global adapter stays at version %llu",
              (unsigned long long)s->cur_rid, why, (unsigned long long)s->blob->version);
    round_ended(s);
}

static void after_job(uv_work_t *req, int status)
{
    job_t *j = req->data;
    plait_server_t *s = j->s;
    s->busy = 0;
    double now = now_s(s);
    if (status != 0 && j->rc == 0) {
        j->rc = PLAIT_ECANCELED;
        snprintf(j->why, sizeof(j->why), "job canceled");
    }
    if (j->kind == JOB_UNMASK) { /* the secure stages go on from the unmasked sum (or its failure) */
        job_free(j);
        if (s->stopping) plait__srv_abandon_round(s, "shutdown"); /* it waited for this job */
        else plait__srv_round_step(s);
        return;
    }
    switch (j->kind) {
    case JOB_BEGIN:
        if (j->rc != 0) {
            /* Retried every second (a full disk may last hours): logged
             * when the failure starts or changes, not on every retry. */
            if (j->rc != s->open_err)
                PLAIT_LOG(PLAIT_LOG_ERROR, "store: opening a round failed: %s (%s); retrying every second, "
                          "logged again only when this changes", j->why, plait_err_name(j->rc));
            s->open_err = j->rc;
            s->next_open = now + 1;
            break;
        }
        if (s->open_err != 0) PLAIT_LOG(PLAIT_LOG_INFO, "store: rounds open again (the earlier failure cleared)");
        s->open_err = 0;
        if (j->eval < 0 && plait_aggcfg_eval_allowed(&s->cfg) != 0)
            PLAIT_LOG(PLAIT_LOG_WARN, "evaluation request dropped: %s", plait_errmsg());
        uint64_t core = 0;
        int rc = j->eval > 0 ? plait__srv_eval_start(s) : 0;
        if (rc == 0 && s->rcfg.poisson) rc = round_rate(s, (uint64_t)j->rid);
        if (rc == 0) rc = plait_round_open(s->round, now, &core);
        s->cur_rid = (uint64_t)j->rid;
        s->m.round_id = s->cur_rid;
        s->round_live = 1;
        plait__srv_cohort_clear(s);
        memset(&s->rs, 0, sizeof(s->rs));
        if (rc != 0) {
            PLAIT_LOG(PLAIT_LOG_ERROR, "round core refused to open: %s", plait_err_name(rc));
            round_ended(s);
            break;
        }
        s->cur_core = core;
        if (s->cfg.secure_agg && plait__srv_secagg_open(s, now) != 0) {
            PLAIT_LOG(PLAIT_LOG_ERROR, "round=%llu: secure aggregation could not start: %s; the round fails",
                      (unsigned long long)s->cur_rid, plait_errmsg());
            plait_round_abort(s->round, now);
            s->sa_failed = 1;
            break;
        }
        s->dl_round_n = s->dl_round_bytes = 0;
        PLAIT_LOG(PLAIT_LOG_INFO, "round opened round=%llu version=%llu%s%s", (unsigned long long)s->cur_rid,
                  (unsigned long long)s->blob->version, s->eval_live ? " kind=evaluate" : "",
                  s->sa ? " (secure aggregation)" : "");
        if (!s->rcfg.poisson) { /* say at once why a round cannot fill (once per enrolled count) */
            uint64_t live = 0;
            char why[400];
            size_t want = (size_t)ceil((double)s->rcfg.target_cohort * s->rcfg.overselect);
            int fc = plait__svc_fill_check(s->store, want, s->rcfg.min_cohort, s->rcfg.selection_timeout_s, &live,
                                           why, sizeof(why));
            if (fc > 0 && s->fill_logged != live + 1)
                PLAIT_LOG(PLAIT_LOG_WARN, "round=%llu: %s", (unsigned long long)s->cur_rid, why);
            if (fc >= 0) s->fill_logged = fc > 0 ? live + 1 : 0;
        }
        if (s->stopping) plait__srv_abandon_round(s, "shutdown");
        break;
    case JOB_FAIL:
        if (j->rc != 0)
            PLAIT_LOG(PLAIT_LOG_ERROR, "store: recording failed round %llu: %s", (unsigned long long)s->cur_rid,
                      j->why);
        round_ended(s);
        break;
    case JOB_COMMIT:
        if (s->eval_live) {
            plait__srv_eval_committed(s, j->rc, j->eval_mean, j->eval_devices, j->why);
        } else if (j->rc == 0) {
            s->trained_since_eval++;
            plait_crash_point("server.commit.swap");
            plait__srv_hist_push(s, s->blob);
            s->blob = j->blob;
            j->blob = NULL;
            s->m.rounds_committed++;
            s->m.round_seconds_sum += j->duration;
            s->m.round_seconds_count++;
            s->m.last_round_seconds = j->duration;
            s->m.global_version = s->blob->version;
            PLAIT_LOG(PLAIT_LOG_INFO,
                      "round committed round=%llu version=%llu accepted=%zu selected=%zu dropouts=%zu "
                      "stragglers=%zu duration_s=%.3f adapter_bytes=%zu downloads=%llu download_bytes_mean=%.0f",
                      (unsigned long long)s->cur_rid, (unsigned long long)s->blob->version, j->st.accepted,
                      j->st.selected, j->st.dropouts, j->st.stragglers, j->duration, s->blob->len,
                      (unsigned long long)s->dl_round_n,
                      s->dl_round_n ? (double)s->dl_round_bytes / (double)s->dl_round_n : 0.0);
        } else {
            s->m.rounds_failed++;
            PLAIT_LOG(PLAIT_LOG_ERROR,
                      "round commit failed round=%llu: %s (%s); global adapter stays at version %llu",
                      (unsigned long long)s->cur_rid, j->why, plait_err_name(j->rc),
                      (unsigned long long)s->blob->version);
            /* The store left the round open; close it as failed, and put the
             * core back on the last committed version if it had moved on. */
            if (plait__svc_round_fail(s->store, (int64_t)s->cur_rid, j->why, &s->rs) != 0)
                PLAIT_LOG(PLAIT_LOG_ERROR, "store: closing round %llu: %s", (unsigned long long)s->cur_rid,
                          plait_errmsg());
            if (j->core_committed && rebuild_round(s) != 0)
                PLAIT_LOG(PLAIT_LOG_ERROR, "rebuilding the round core failed: %s", plait_errmsg());
            plait__srv_signal_round_end(s, PLAIT_RETRY_COMMIT_FAILED);
        }
        round_ended(s);
        break;
    case JOB_UNMASK: /* handled above */
        break;
    }
    job_free(j);
}

/* q of the round about to open: the population is recounted from the store
 * (enrolled, non-revoked), the selector and the core's accountant get the same q. */
static int round_rate(plait_server_t *s, uint64_t rid)
{
    uint64_t enrolled = 0, pop = 0;
    double q = 1;
    int rc = plait__svc_population(s->store_r, &enrolled);
    if (rc != 0) return rc;
    /* A configured population is checked at start; revocations since may leave it above the count. */
    pop = s->cfg.population && s->cfg.population < enrolled ? s->cfg.population : enrolled;
    if ((rc = plait_sel_rate_of(s->cfg.target_cohort, pop, s->cfg.sampling_rate, &q)) != 0) return rc;
    if ((rc = plait_round_set_sample_rate(s->round, q)) != 0) return rc;
    if ((rc = plait_sel_open(s->sel, rid, q)) != 0) return rc;
    PLAIT_LOG(PLAIT_LOG_INFO, "sampling population=%llu q=%.6g", (unsigned long long)pop, q);
    return 0;
}

static int start_job(plait_server_t *s, job_t *j)
{
    /* One job at a time: the writer connection and the round core belong to it. */
    PLAIT_ASSERT(!s->busy);
    j->s = s;
    j->req.data = j;
    s->busy = 1;
    int rc = uv_queue_work(&s->loop, &j->req, work_job, after_job);
    if (rc != 0) {
        s->busy = 0;
        PLAIT_LOG(PLAIT_LOG_ERROR, "uv_queue_work: %s", uv_strerror(rc));
        job_free(j);
        return PLAIT_EIO;
    }
    return 0;
}

/* The task's settings as JSON, stored with the round (no secrets in it). */
static char *task_json(plait_server_t *s)
{
    plait_buf_t b;
    plait_buf_init(&b, 1 << 16);
    plait_buf_printf(&b,
                     "{\"lora_rank\": %llu, \"lora_alpha\": %.9g, \"lora_targets\": \"%s\", \"lora_mode\": \"%s\", "
                     "\"a_seed\": %llu, \"local_steps\": %llu, \"batch\": %llu, \"seq_len\": %llu, \"lr\": %.9g, "
                     "\"clip_norm\": %.9g, \"quant_bits\": %llu, \"quant_range\": %.9g, \"example_cap\": %llu, "
                     "\"server_opt\": \"%s\", \"server_lr\": %.9g, \"dp\": \"%s\", \"noise_multiplier\": %.9g}",
                     (unsigned long long)s->cfg.lora_rank, s->cfg.lora_alpha, s->cfg.lora_targets, s->cfg.lora_mode,
                     (unsigned long long)s->cfg.a_seed, (unsigned long long)s->cfg.local_steps,
                     (unsigned long long)s->cfg.batch, (unsigned long long)s->cfg.seq_len, s->cfg.lr,
                     s->cfg.clip_norm, (unsigned long long)s->cfg.quant_bits, s->cfg.quant_range,
                     (unsigned long long)s->cfg.example_cap, s->cfg.server_opt, s->cfg.server_lr, s->cfg.dp,
                     s->cfg.noise_multiplier);
    if (plait_buf_status(&b) != 0) {
        plait_buf_free(&b);
        return NULL;
    }
    return b.data; /* plain malloc'd text; the caller frees it */
}

void plait__srv_round_open(plait_server_t *s)
{
    job_t *j = calloc(1, sizeof(*j));
    if (!j || !(j->task_json = task_json(s))) {
        free(j);
        s->next_open = now_s(s) + 1;
        return;
    }
    j->kind = JOB_BEGIN;
    s->blob_version_for_job = s->blob->version;
    if (start_job(s, j) != 0) s->next_open = now_s(s) + 1;
}

void plait__srv_round_failed(plait_server_t *s)
{
    plait_round_stats_t st;
    plait_round_stats(s->round, &st);
    s->m.rounds_failed++;
    job_t *j = calloc(1, sizeof(*j));
    char reason[200];
    snprintf(reason, sizeof(reason), "%zu updates accepted of %zu selected (%zu dropped, %zu stragglers), min_cohort %zu",
             st.accepted, st.selected, st.dropouts, st.stragglers, s->rcfg.min_cohort);
    PLAIT_LOG(PLAIT_LOG_WARN, "round failed round=%llu: %s; global adapter stays at version %llu",
              (unsigned long long)s->cur_rid, reason, (unsigned long long)s->blob->version);
    plait__srv_signal_round_end(s, PLAIT_RETRY_ROUND_FAILED);
    if (!j) {
        round_ended(s);
        return;
    }
    j->kind = JOB_FAIL;
    snprintf(j->reason, sizeof(j->reason), "%s", reason);
    j->stats = s->rs;
    j->stats.participants = (int64_t)st.selected;
    j->stats.dropouts = (int64_t)(st.dropouts + st.stragglers);
    if (start_job(s, j) != 0) round_ended(s);
}

int plait__srv_start_unmask(plait_server_t *s)
{
    job_t *j = calloc(1, sizeof(*j)); /* only called from the round step, which never runs while busy */
    if (j) {
        j->kind = JOB_UNMASK;
        if (start_job(s, j) == 0) return 1; /* from here the job owns sa until after_job */
    }
    plait__sa_finish_work(s->sa); /* no job (no memory): unmask on the loop thread */
    return 0;
}

void plait__srv_start_commit(plait_server_t *s)
{
    if (s->busy) return; /* already committing (several paths notice AGGREGATION) */
    job_t *j = calloc(1, sizeof(*j));
    if (j && s->n_cohort) j->uploaders = calloc(s->n_cohort, sizeof(char *));
    if (!j || (s->n_cohort && !j->uploaders)) {
        free(j);
        plait_round_abort(s->round, now_s(s));
        return;
    }
    for (size_t i = 0; i < s->n_cohort; i++)
        if (s->cohort[i].submitted == 1) {
            j->uploaders[j->n_uploaders] = strdup(s->cohort[i].device);
            if (j->uploaders[j->n_uploaders]) j->n_uploaders++;
        }
    j->kind = JOB_COMMIT;
    /* The uploads and downloads are over: the pooled update buffers, and the frame and send
     * buffers kept in the heap during the round (plait-aggregator serve's malloc settings), are
     * given back before the commit allocates the new version, so that they add neither to its
     * peak nor to the next round's downloads. */
    plait__srv_upd_pool_clear(s); /* malloc_trim runs in the job (work_job), off the loop thread */
    j->stats = s->rs;
    j->stats.participants = (int64_t)s->n_cohort;
    plait_round_stats_t st;
    plait_round_stats(s->round, &st);
    j->duration = now_s(s) - st.t_open;
    PLAIT_LOG(PLAIT_LOG_INFO, "round aggregating round=%llu accepted=%zu", (unsigned long long)s->cur_rid,
              st.accepted);
    if (start_job(s, j) != 0) plait_round_abort(s->round, now_s(s));
}

static int rebuild_round(plait_server_t *s)
{
    plait_round_t *r = NULL;
    int rc = plait_round_create(&r, &s->rcfg, s->blob->params + s->span_off, s->span_len);
    if (rc != 0) return rc;
    plait_round_destroy(s->round);
    s->round = r;
    return 0;
}
