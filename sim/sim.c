/*
 * sim.c: the in-process simulation loop. N virtual clients, rounds driven by
 * the round core (aggregator/round.c) in simulated time, local training on a
 * thread pool with one trainer and one adapter per worker, reused.
 *
 * A round:
 *   1. open; every client is available with its own probability; the cohort
 *      (ceil(K · overselect)) is a seeded sample of the available ones;
 *   2. each selected client's fate (fleet.c): it drops at some time, or
 *      arrives download + training + upload seconds after the task;
 *   3. events are replayed in time order (ties by client id) into the round
 *      core: dropouts, and the updates of arriving clients. A client is
 *      trained only when its update is needed (the first K - accepted
 *      arrivals not yet trained, in parallel), so over-selected clients
 *      that would arrive after the round closed cost nothing;
 *   4. the deadline passes (tick); aggregate and commit if the round has
 *      min_clients updates; the global span is copied into the global adapter;
 *   5. evaluation: the global adapter on the evaluation clients' held-out
 *      data, and the personalized loss of a fixed sample of clients
 *      (fine-tuned from the global adapter on their own training data).
 *
 * Client update pipeline, exactly as on a device (update.h): train from the
 * global adapter → diff over the mode's span → clip to the round's bound →
 * [local noise] → scale by the client weight → quantize (stochastic
 * rounding) + the weight word. For FedSA-LoRA the client's B is personal:
 * loaded from <out>/personal/c<i>.bin when selected and saved back after.
 *
 * Memory: the model (one copy), one adapter, trainer and corpus per worker, one
 * (P + 1)-word update per trained client of the current round, and 24 bytes
 * of counts per client. Nothing else grows with the number of clients.
 *
 * Determinism: each client's work depends only on the global adapter and
 * its own streams (seed, purpose, round, client); trainers run with one
 * thread each (kernels are order-fixed); updates are summed as exact
 * integers; evaluations are summed in client order after all finish.
 */
#include <errno.h>
#include <math.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "plait/cli.h"
#include "plait/adapter.h"
#include "plait/crypto.h"
#include "plait/data.h"
#include "plait/json.h"
#include "plait/log.h"
#include "plait/lora.h"
#include "plait/model.h"
#include "plait/personal.h"
#include "plait/rng.h"
#include "plait/round.h"
#include "plait/sim.h"
#include "plait/tensor.h"
#include "plait/tok.h"
#include "plait/train.h"
#include "sim_int.h"

enum { JOB_TRAIN = 0, JOB_EVAL = 1, JOB_PERSONAL = 2, JOB_BASE = 3 };

typedef struct {
    size_t client;
    int kind;
    /* outputs */
    int rc;
    uint32_t *words;   /* (P + 1), JOB_TRAIN */
    int unclipped;
    double loss;       /* last training loss (TRAIN) or held-out loss (others) */
    size_t tokens;     /* held-out tokens evaluated */
    double loss_global; /* PERSONAL: the starting (global) adapter on the same held-out data */
    double mix;        /* PERSONAL: the chosen adapter, 0 global .. 1 personal */
    double se;         /* PERSONAL: standard error of loss - loss_global from paired windows (NAN: one window) */
    int bias;          /* PERSONAL: 1 when the device also kept its output bias */
    int knn;           /* PERSONAL: 1 when the device also kept its kNN memory */
} job_t;

typedef struct {
    plait_lora_t lora;
    plait_trainer_t *tr;
    float *diff;       /* (P) */
    int32_t *batch;    /* (B, T + 1) */
    float *ref;        /* (n_params) the adapter personalization starts from */
    plait_trainer_t *ptr; /* personalization's trainer (eval.personal_lr) over lora; NULL: tr */
    double *wl_g, *wl_p;  /* (SE_WINDOWS) per-window held-out losses, global and chosen */
    float *bias;          /* (V) the personal output bias of the client being evaluated */
    plait_knn_t knn;      /* its kNN memory (knn.h) */
} worker_t;

/* At most this many held-out windows pair up for a client's standard error. */
#define SE_WINDOWS 256

/* Standard error of the mean of b - a over n paired windows (NAN for n < 2). */
static double paired_se(const double *a, const double *b, size_t n)
{
    if (n < 2) return NAN;
    double m = 0, ss = 0;
    for (size_t i = 0; i < n; i++) m += b[i] - a[i];
    m /= (double)n;
    for (size_t i = 0; i < n; i++) ss += (b[i] - a[i] - m) * (b[i] - a[i] - m);
    return sqrt(ss / (double)(n - 1) / (double)n);
}

typedef struct {
    const plait_sim_config_t *cfg;
    plait_model_t model;
    plait_tok_t tok;
    plait_sim_pop_t pop;
    plait_lora_t global;
    size_t off, len;    /* the span that travels */
    plait_round_t *round;
    plait_pool_t *pool;
    worker_t *w;
    int nw;
    int cur_round;
    job_t *jobs;
    size_t n_jobs;
    atomic_size_t next;
    char personal_dir[PLAIT_SIM_PATH_MAX + 16];
    size_t *eval_ids, n_eval, *pers_ids, n_pers;
    uint32_t *slab;     /* (want, P + 1) words of the round's trained clients */
    size_t slab_n;
    double train_wall;  /* seconds spent training cohort clients */
    double train_cpu;   /* CPU seconds of the process (all threads) meanwhile */
    size_t trained;     /* cohort clients trained */
    plait__sim_sa_t *sa; /* secure aggregation per virtual client; NULL when off */
    size_t min_cohort;  /* the round core's minimum cohort */
    plait_strategy_inst_t strat; /* the configured strategy (strategy.h); the round core borrows it */
} sim_t;

static double cpu_now(void)
{
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru) != 0) return 0;
    return (double)ru.ru_utime.tv_sec + 1e-6 * (double)ru.ru_utime.tv_usec + (double)ru.ru_stime.tv_sec +
           1e-6 * (double)ru.ru_stime.tv_usec;
}

static double wall_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* ---- one client's work (worker threads) ------------------------------------ */

static void personal_path(const sim_t *s, size_t client, char *buf, size_t cap)
{
    snprintf(buf, cap, "%s/c%07zu.bin", s->personal_dir, client);
}

/* FedSA-LoRA personal B: n floats, little-endian host order, "PLB1" + count header. A missing file leaves B alone. */
static int load_personal(const sim_t *s, size_t client, float *b, size_t n)
{
    char path[PLAIT_SIM_PATH_MAX + 64];
    personal_path(s, client, path, sizeof(path));
    FILE *f = fopen(path, "rb");
    if (!f) return errno == ENOENT ? 0 : plait_fail(PLAIT_EIO, "personal state of client %zu: cannot open", client);
    char magic[4];
    uint64_t count = 0;
    int rc = 0;
    if (fread(magic, 1, 4, f) != 4 || memcmp(magic, "PLB1", 4) != 0 || fread(&count, sizeof(count), 1, f) != 1 ||
        count != n || fread(b, sizeof(float), n, f) != n)
        rc = plait_fail(PLAIT_EPROTO, "personal state of client %zu: malformed", client);
    for (size_t i = 0; rc == 0 && i < n; i++)
        if (!isfinite(b[i])) rc = plait_fail(PLAIT_EPROTO, "personal state of client %zu: non-finite", client);
    fclose(f);
    return rc;
}

static int save_personal(const sim_t *s, size_t client, const float *b, size_t n)
{
    char path[PLAIT_SIM_PATH_MAX + 64], tmp[PLAIT_SIM_PATH_MAX + 80];
    personal_path(s, client, path, sizeof(path));
    snprintf(tmp, sizeof(tmp), "%s.tmp", path);
    FILE *f = fopen(tmp, "wb");
    if (!f) return plait_fail(PLAIT_EIO, "personal state of client %zu: cannot write", client);
    uint64_t count = n;
    int ok = fwrite("PLB1", 1, 4, f) == 4 && fwrite(&count, sizeof(count), 1, f) == 1 &&
             fwrite(b, sizeof(float), n, f) == n;
    ok &= fclose(f) == 0;
    if (!ok || rename(tmp, path) != 0) return plait_fail(PLAIT_EIO, "personal state of client %zu: write failed", client);
    return 0;
}

static int local_steps_for(const plait_sim_config_t *cfg, const plait_sim_client_t *c)
{
    if (cfg->local_epochs <= 0) return cfg->local_steps;
    double per_step = (double)cfg->batch * (double)cfg->seq_len;
    double steps = ceil(cfg->local_epochs * (double)c->train_tokens / per_step);
    if (steps < 1) steps = 1;
    if (steps > cfg->max_local_steps) steps = cfg->max_local_steps;
    return (int)steps;
}

/* Start from the global adapter; FedSA-LoRA clients bring their own B. */
static int start_adapter(sim_t *s, worker_t *w, size_t client, int zero_b)
{
    memcpy(w->lora.params, s->global.params, s->global.n_params * sizeof(float));
    if (zero_b) {
        memset(w->lora.params + w->lora.n_a, 0, (w->lora.n_params - w->lora.n_a) * sizeof(float));
        return 0;
    }
    if (s->cfg->lora_mode == PLAIT_LORA_MODE_FEDSA)
        return load_personal(s, client, w->lora.params + w->lora.n_a, w->lora.n_params - w->lora.n_a);
    return 0;
}

/* Validated personalization (personal.h) of the worker's adapter from w->ref on a client's training text:
 * split off the validation tail, fine-tune with early stopping, choose. A text too short to validate keeps
 * the reference. */
static int personalize(sim_t *s, worker_t *w, plait_trainer_t *tr_, int round_training, const plait_corpus_t *train,
                       int steps, double lambda, uint64_t stream, plait_personal_result_t *pr, float *bias)
{
    const plait_sim_config_t *cfg = s->cfg;
    memset(pr, 0, sizeof(*pr));
    memcpy(w->lora.params, w->ref, w->lora.n_params * sizeof(float));
    if (train->n < 4) return 0;
    plait_corpus_t tr, val;
    plait_corpus_init(&tr);
    plait_corpus_init(&val);
    plait_personal_config_t pc = plait_personal_config_default();
    pc.val_fraction = cfg->personal_val;
    pc.max_steps = steps;
    pc.eval_every = cfg->personal_val_every;
    if (round_training && pc.eval_every > (steps > 1 ? steps / 2 : 1))
        pc.eval_every = steps > 1 ? steps / 2 : 1; /* FedSA's local training: validate at least twice */
    pc.prox_lambda = lambda;
    pc.val_windows = 0;
    pc.guard_z = cfg->personal_guard_z;
    plait_rng_t r;
    plait_rng_seed_u64(&r, cfg->seed, stream);
    pc.seed = plait_rng_u64(&r);
    plait_rng_wipe(&r);
    int rc = plait_personal_split(train, cfg->personal_val, cfg->seq_len, &tr, &val);
    if (rc == 0) rc = plait_personal_fill(&tr, cfg->seq_len);
    if (rc == 0) rc = plait_personal_fit(tr_, &w->lora, w->ref, &tr, &val, &pc, pr);
    if (rc == 0 && bias) { /* the output bias on top of the chosen adapter (w->tr: forward only) */
        pc.bias_steps = cfg->personal_bias_steps;
        pc.bias_lr = cfg->personal_bias_lr;
        pc.bias_l2 = cfg->personal_bias_l2;
        rc = plait_personal_fit_bias(w->tr, &tr, &val, &pc, bias, pr);
        pc.knn_bytes = cfg->personal_knn_bytes;
        if (rc == 0) rc = plait_personal_fit_knn(w->tr, &tr, &val, &pc, pr->bias ? bias : NULL, &w->knn, pr);
    }
    plait_corpus_free(&tr);
    plait_corpus_free(&val);
    return rc;
}

static int train_steps(sim_t *s, worker_t *w, const plait_corpus_t *c, int steps, uint64_t stream, double *last)
{
    const plait_sim_config_t *cfg = s->cfg;
    plait_rng_t r;
    plait_rng_seed_u64(&r, cfg->seed, stream);
    uint64_t st = plait_rng_u64(&r);
    plait_rng_wipe(&r);
    plait_train_reset(w->tr);
    int rc = 0;
    float loss = NAN;
    for (int k = 0; k < steps && rc == 0; k++) {
        if ((rc = plait_corpus_sample(c, cfg->batch, cfg->seq_len, &st, w->batch)) != 0) break;
        if ((rc = plait_train_forward_backward(w->tr, w->batch, &loss)) != 0) break;
        rc = plait_train_step(w->tr);
    }
    *last = loss;
    return rc;
}

static int do_train(sim_t *s, worker_t *w, job_t *j)
{
    const plait_sim_config_t *cfg = s->cfg;
    size_t i = j->client;
    plait_corpus_t train;
    plait_corpus_init(&train);
    int rc = start_adapter(s, w, i, 0);
    if (rc == 0) rc = plait__sim_load_client(&s->pop, i, &s->tok, &train, NULL);
    uint64_t stream = plait__sim_stream(PLAIT__SIM_RNG_TRAIN, (uint64_t)s->cur_round, i);
    int steps = local_steps_for(cfg, &s->pop.clients[i]);
    if (rc == 0 && cfg->lora_mode == PLAIT_LORA_MODE_FEDSA) {
        /* FedSA-LoRA: the personal B is kept only where it helps on the client's validation tail (early
         * stopping, the choice of personal.h), with a proximal pull toward the B it started from. */
        plait_personal_result_t pr;
        memcpy(w->ref, w->lora.params, w->lora.n_params * sizeof(float));
        rc = personalize(s, w, w->tr, 1, &train, steps, cfg->fedsa_lambda, stream, &pr, NULL);
        j->loss = pr.train_loss;
    } else {
        if (rc == 0) rc = plait_personal_fill(&train, cfg->seq_len);
        if (rc == 0) rc = train_steps(s, w, &train, steps, stream, &j->loss);
    }
    plait_corpus_free(&train);
    if (rc != 0) return rc;
    if (cfg->lora_mode == PLAIT_LORA_MODE_FEDSA &&
        (rc = save_personal(s, i, w->lora.params + w->lora.n_a, w->lora.n_params - w->lora.n_a)) != 0)
        return rc;
    /* The device's update pipeline. */
    size_t P = s->len;
    if ((rc = plait_update_diff(w->diff, w->lora.params + s->off, s->global.params + s->off, P)) != 0) return rc;
    double S = plait_round_clip(s->round);
    plait_clip_info_t ci;
    if ((rc = plait_update_clip_l2(w->diff, P, S, &ci)) != 0) return rc;
    j->unclipped = ci.norm <= S;
    plait_rng_t q;
    plait_rng_seed_u64(&q, cfg->seed, plait__sim_stream(PLAIT__SIM_RNG_QUANT, (uint64_t)s->cur_round, i));
    if (cfg->local_noise > 0) rc = plait_update_add_noise(w->diff, P, cfg->local_noise * S, &q);
    double wgt = 1.0; /* central DP and local noise: uniform (local noise leaves the weight word un-noised) */
    if (cfg->noise_multiplier <= 0 && cfg->local_noise <= 0) {
        double ex = (double)s->pop.clients[i].train_tokens;
        wgt = (ex < cfg->weight_cap ? ex : cfg->weight_cap) / cfg->weight_cap;
    }
    for (size_t k = 0; k < P; k++) w->diff[k] = (float)(wgt * (double)w->diff[k]);
    if (rc == 0) rc = plait_quant_encode(plait_round_quant(s->round), w->diff, P, &q, j->words);
    if (rc == 0) rc = plait_quant_encode_weight(plait_round_quant(s->round), wgt, &q, &j->words[P]);
    plait_rng_wipe(&q);
    plait_zeroize(w->diff, P * sizeof(float));
    return rc;
}

static int do_eval(sim_t *s, worker_t *w, job_t *j)
{
    const plait_sim_config_t *cfg = s->cfg;
    size_t i = j->client;
    plait_corpus_t train, held;
    plait_corpus_init(&train);
    plait_corpus_init(&held);
    int personal = j->kind == JOB_PERSONAL;
    int rc = start_adapter(s, w, i, j->kind == JOB_BASE);
    if (rc == 0) rc = plait__sim_load_client(&s->pop, i, &s->tok, personal ? &train : NULL, &held);
    if (rc == 0 && personal) {
        /* Like for like: the starting (global) adapter on the same held-out data, then the chosen one. */
        plait_personal_result_t pr;
        memcpy(w->ref, w->lora.params, w->lora.n_params * sizeof(float));
        rc = plait_personal_eval(&held, w->tr, cfg->eval_windows, &j->loss_global, NULL);
        size_t ng = 0, np = 0;
        if (rc == 0) rc = plait_personal_eval_windows(&held, w->tr, cfg->eval_windows, w->wl_g, SE_WINDOWS, &ng);
        int steps = cfg->personal_steps > 0 ? cfg->personal_steps : 16 * local_steps_for(cfg, &s->pop.clients[i]);
        if (rc == 0)
            rc = personalize(s, w, w->ptr ? w->ptr : w->tr, 0, &train, steps, cfg->personal_lambda,
                             plait__sim_stream(PLAIT__SIM_RNG_PERSONAL, (uint64_t)s->cur_round, i), &pr, w->bias);
        j->mix = pr.mix;
        j->bias = pr.bias;
        j->knn = pr.knn;
        if (rc == 0 && pr.bias) rc = plait_train_set_logit_bias(w->tr, w->bias); /* served with the adapter */
        if (rc == 0 && pr.knn) /* and the memory */
            rc = plait_personal_eval_knn(&held, w->tr, &w->knn, cfg->eval_windows, &j->loss, &j->tokens, w->wl_p,
                                         SE_WINDOWS, &np);
        else if (rc == 0)
            rc = plait_personal_eval_windows(&held, w->tr, cfg->eval_windows, w->wl_p, SE_WINDOWS, &np);
        j->se = rc == 0 && np == ng ? paired_se(w->wl_g, w->wl_p, np) : NAN;
    }
    if (rc == 0 && !j->knn) rc = plait_personal_eval(&held, w->tr, cfg->eval_windows, &j->loss, &j->tokens);
    plait_knn_free(&w->knn);
    if (plait_train_set_logit_bias(w->tr, NULL) != 0 && rc == 0) rc = PLAIT_EINVAL; /* cannot fail: NULL */
    plait_zeroize(w->bias, s->model.cfg.vocab_size * sizeof(float));
    plait_corpus_free(&train);
    plait_corpus_free(&held);
    return rc;
}

/* Pool body: item k is worker k; it pulls jobs until none are left. */
static void worker_fn(void *ctx, size_t begin, size_t end)
{
    sim_t *s = ctx;
    for (size_t k = begin; k < end; k++) {
        worker_t *w = &s->w[k];
        for (;;) {
            size_t idx = atomic_fetch_add(&s->next, 1);
            if (idx >= s->n_jobs) break;
            job_t *j = &s->jobs[idx];
            j->rc = j->kind == JOB_TRAIN ? do_train(s, w, j) : do_eval(s, w, j);
            if (j->rc != 0)
                PLAIT_LOG(PLAIT_LOG_ERROR, "sim: client %zu round %d: %s (%s)", j->client, s->cur_round,
                          plait_errmsg(), plait_err_name(j->rc));
        }
    }
}

static int run_jobs(sim_t *s, job_t *jobs, size_t n)
{
    if (n == 0) return 0;
    s->jobs = jobs;
    s->n_jobs = n;
    atomic_store(&s->next, 0);
    plait_pool_run(s->pool, worker_fn, s, (size_t)s->nw);
    for (size_t k = 0; k < n; k++)
        if (jobs[k].rc != 0) return plait_fail(jobs[k].rc, "client %zu failed in round %d", jobs[k].client, s->cur_round);
    return 0;
}

/* Token-weighted held-out loss over clients ids (kind EVAL, PERSONAL or BASE), summed in id order; each (n, may
 * be NULL) gets every client's own loss. */
static int evaluate_each(sim_t *s, const size_t *ids, size_t n, int kind, double *loss, size_t *tokens,
                         double *each);

/* The personalized evaluation: the chosen adapters' token-weighted loss into *loss, the global adapter's on the
 * same clients into *gloss; per client (arrays of n, may be NULL) both losses, the mix and the tokens. */
static int evaluate_personal(sim_t *s, double *loss, double *gloss, double *each, double *each_g, double *mix,
                             size_t *toks, double *se, double *bias, double *knn)
{
    size_t n = s->n_pers;
    *loss = *gloss = NAN;
    if (n == 0) return 0;
    job_t *jobs = calloc(n, sizeof(job_t));
    if (!jobs) return plait_fail(PLAIT_ENOMEM, "sim: evaluation jobs");
    for (size_t k = 0; k < n; k++) jobs[k] = (job_t){.client = s->pers_ids[k], .kind = JOB_PERSONAL};
    int rc = run_jobs(s, jobs, n);
    double sum = 0, gsum = 0;
    size_t tok = 0;
    for (size_t k = 0; rc == 0 && k < n; k++) {
        sum += jobs[k].loss * (double)jobs[k].tokens;
        gsum += jobs[k].loss_global * (double)jobs[k].tokens;
        tok += jobs[k].tokens;
        if (each) each[k] = jobs[k].loss;
        if (each_g) each_g[k] = jobs[k].loss_global;
        if (mix) mix[k] = jobs[k].mix;
        if (toks) toks[k] = jobs[k].tokens;
        if (se) se[k] = jobs[k].se;
        if (bias) bias[k] = jobs[k].bias;
        if (knn) knn[k] = jobs[k].knn;
    }
    free(jobs);
    if (rc == 0 && tok > 0) {
        *loss = sum / (double)tok;
        *gloss = gsum / (double)tok;
    }
    return rc;
}

static int evaluate_each(sim_t *s, const size_t *ids, size_t n, int kind, double *loss, size_t *tokens,
                         double *each)
{
    *loss = NAN;
    if (tokens) *tokens = 0;
    if (n == 0) return 0;
    job_t *jobs = calloc(n, sizeof(job_t));
    if (!jobs) return plait_fail(PLAIT_ENOMEM, "sim: evaluation jobs");
    for (size_t k = 0; k < n; k++) jobs[k] = (job_t){.client = ids[k], .kind = kind};
    int rc = run_jobs(s, jobs, n);
    double sum = 0;
    size_t tok = 0;
    for (size_t k = 0; rc == 0 && k < n; k++) {
        sum += jobs[k].loss * (double)jobs[k].tokens;
        if (each) each[k] = jobs[k].loss;
        tok += jobs[k].tokens;
    }
    free(jobs);
    if (rc == 0 && tok > 0) *loss = sum / (double)tok;
    if (tokens) *tokens = tok;
    return rc;
}

/* ---- the run ------------------------------------------------------------------ */

typedef struct {
    double t;
    size_t client;
    size_t slot;   /* index into the selected list: its update's place in the slab */
    int dropped;   /* 1: a dropout at t; 0: an arrival at t */
    int unclipped; /* set once trained */
} event_t;

static int cmp_event(const void *a, const void *b)
{
    const event_t *x = a, *y = b;
    if (x->t != y->t) return x->t < y->t ? -1 : 1;
    return x->client < y->client ? -1 : x->client > y->client;
}

/* The first k of a seeded permutation of 0..n-1, sorted (fixed evaluation samples). */
static size_t *sample_ids(uint64_t seed, unsigned purpose, size_t n, size_t k)
{
    if (k == 0 || k > n) k = n;
    size_t *p = malloc(n * sizeof(size_t));
    if (!p) return NULL;
    for (size_t i = 0; i < n; i++) p[i] = i;
    plait_rng_t r;
    plait_rng_seed_u64(&r, seed, plait__sim_stream(purpose, 0, 0));
    for (size_t i = 0; i < k; i++) {
        size_t j = i + (size_t)(plait_rng_uniform(&r) * (double)(n - i));
        size_t t = p[i];
        p[i] = p[j];
        p[j] = t;
    }
    plait_rng_wipe(&r);
    for (size_t i = 1; i < k; i++) /* insertion sort: k is small or n is */
        for (size_t j = i; j > 0 && p[j - 1] > p[j]; j--) {
            size_t t = p[j];
            p[j] = p[j - 1];
            p[j - 1] = t;
        }
    return p;
}

static void sim_free(sim_t *s)
{
    if (s->w)
        for (int k = 0; k < s->nw; k++) {
            plait_train_destroy(s->w[k].tr);
            plait_train_destroy(s->w[k].ptr);
            plait_lora_free(&s->w[k].lora);
            free(s->w[k].diff);
            free(s->w[k].batch);
            free(s->w[k].ref);
            free(s->w[k].wl_g);
            free(s->w[k].wl_p);
            free(s->w[k].bias);
            plait_knn_free(&s->w[k].knn);
        }
    free(s->w);
    plait_pool_destroy(s->pool);
    plait_round_destroy(s->round);
    plait_strategy_free(&s->strat);
    plait__sim_sa_free(s->sa);
    plait_lora_free(&s->global);
    plait_sim_pop_free(&s->pop);
    plait_tok_free(&s->tok);
    plait_model_free(&s->model);
    free(s->eval_ids);
    free(s->pers_ids);
    free(s->slab);
}

static int setup(sim_t *s, const plait_sim_config_t *cfg)
{
    s->cfg = cfg;
    plait_model_init(&s->model);
    plait_tok_init(&s->tok);
    plait_lora_init(&s->global);
    int rc;
    if ((rc = plait_model_load(&s->model, cfg->model)) != 0) return rc;
    if (cfg->seq_len > s->model.cfg.seq_len)
        return plait_fail(PLAIT_EINVAL, "local.seq_len %d exceeds the model's %d", cfg->seq_len, s->model.cfg.seq_len);
    if ((rc = plait_tok_load(&s->tok, cfg->tokenizer, s->model.cfg.vocab_size)) != 0) return rc;
    if ((rc = plait_cli_mkdirs(cfg->out_dir, cfg->out_dir, 0755)) != 0) return rc; /* --out runs/x: runs/ too */
    char dir[PLAIT_SIM_PATH_MAX + 16];
    snprintf(dir, sizeof(dir), "%s/clients", cfg->out_dir);
    if ((rc = plait_sim_pop_build(&s->pop, cfg, &s->tok, dir)) != 0) return rc;
    snprintf(s->personal_dir, sizeof(s->personal_dir), "%s/personal", cfg->out_dir);
    if (mkdir(s->personal_dir, 0700) != 0 && errno != EEXIST)
        return plait_fail(PLAIT_EIO, "%s: cannot create folder", s->personal_dir);
    if (cfg->lora_mode == PLAIT_LORA_MODE_FEDSA) /* a fresh run starts without personal state */
        for (size_t i = 0; i < s->pop.n; i++) {
            char p[PLAIT_SIM_PATH_MAX + 64];
            personal_path(s, i, p, sizeof(p));
            unlink(p);
        }

    plait_lora_config_t lc;
    plait_lora_config_default(&lc);
    lc.rank = cfg->rank;
    lc.alpha = (float)cfg->alpha;
    lc.targets = cfg->targets;
    if ((rc = plait_lora_setup(&s->global, &s->model.cfg, &lc)) != 0) return rc;
    plait_lora_init_weights(&s->global, cfg->seed); /* A from the task seed, B = 0 */
    if ((rc = plait_update_span(&s->global, cfg->lora_mode, &s->off, &s->len)) != 0) return rc;

    plait_round_config_t rc_;
    plait_round_config_default(&rc_);
    rc_.dim = s->len;
    rc_.target_cohort = cfg->clients_per_round;
    rc_.min_cohort = cfg->min_clients ? cfg->min_clients : (cfg->clients_per_round + 1) / 2;
    rc_.overselect = cfg->overselect;
    rc_.selection_timeout_s = 0;  /* the whole cohort checks in at once */
    rc_.round_timeout_s = cfg->deadline_s;
    rc_.quantized = 1;
    rc_.quant.bits = cfg->quant_bits;
    rc_.quant.range = cfg->clip * (cfg->local_noise > 0 ? 1.0 + 4.0 * cfg->local_noise : 1.0);
    rc_.check_norm = cfg->local_noise > 0 ? 0 : 1;
    rc_.clip_norm = cfg->clip;
    plait_strategy_params_t sp;
    plait_strategy_params_default(&sp);
    sp.server_lr = cfg->server_lr;
    sp.momentum = cfg->server_momentum;
    if (cfg->prox_mu > 0) sp.prox_mu = cfg->prox_mu;
    const plait_strategy_t *strat = plait_strategy_find(cfg->strategy);
    if (strat == NULL) return plait__sim_wrap(PLAIT_EINVAL, "server.strategy");
    if ((rc = plait_strategy_setup(&s->strat, strat, &sp, s->len)) != 0) return plait__sim_wrap(rc, "server.strategy");
    rc_.strategy = &s->strat;
    if (strcmp(cfg->aggregation, "mean") != 0) {
        rc_.robust = 1;
        rc_.robust_kind = strcmp(cfg->aggregation, "median") == 0 ? PLAIT_ROBUST_MEDIAN : PLAIT_ROBUST_TRIMMED_MEAN;
        rc_.trim_fraction = cfg->trim_fraction;
    }
    rc_.population = s->pop.n;
    if (cfg->noise_multiplier > 0) {
        rc_.dp = 1;
        rc_.dp_cfg.clip = cfg->clip;
        rc_.dp_cfg.noise_multiplier = cfg->noise_multiplier;
        rc_.dp_delta = cfg->delta;
    }
    if (rc_.target_cohort > s->pop.n)
        return plait_fail(PLAIT_EINVAL, "rounds.clients_per_round %zu exceeds the %zu clients", rc_.target_cohort,
                          s->pop.n);
    if ((rc = plait_round_create(&s->round, &rc_, s->global.params + s->off, s->len)) != 0) return rc;
    s->min_cohort = rc_.min_cohort;
    if (cfg->secure_agg && (rc = plait__sim_sa_create(&s->sa, cfg, s->pop.n)) != 0) return rc;

    s->nw = cfg->threads;
    if ((rc = plait_pool_create(&s->pool, s->nw)) != 0) return rc;
    s->w = calloc((size_t)s->nw, sizeof(worker_t));
    if (!s->w) return plait_fail(PLAIT_ENOMEM, "sim: workers");
    plait_train_config_t tc = plait_train_config_default();
    tc.B = cfg->batch;
    tc.T = cfg->seq_len;
    tc.lr = cfg->lr;
    tc.threads = 1;
    tc.train_a = cfg->lora_mode != PLAIT_LORA_MODE_FFA;
    tc.prox_mu = s->strat.client.prox_mu; /* FedProx: local training (and personalization) stays near the global adapter */
    for (int k = 0; k < s->nw; k++) {
        worker_t *w = &s->w[k];
        plait_lora_init(&w->lora);
        if ((rc = plait_lora_setup(&w->lora, &s->model.cfg, &lc)) != 0) return rc;
        if ((rc = plait_train_create(&w->tr, &s->model, &w->lora, &tc)) != 0) return rc;
        if (cfg->personal_lr > 0 && cfg->personal_lr != cfg->lr) {
            plait_train_config_t pc = tc;
            pc.lr = cfg->personal_lr;
            if ((rc = plait_train_create(&w->ptr, &s->model, &w->lora, &pc)) != 0) return rc;
        }
        w->diff = malloc(s->len * sizeof(float));
        w->batch = malloc((size_t)cfg->batch * ((size_t)cfg->seq_len + 1) * sizeof(int32_t));
        w->ref = malloc(w->lora.n_params * sizeof(float));
        w->wl_g = malloc(SE_WINDOWS * sizeof(double));
        w->wl_p = malloc(SE_WINDOWS * sizeof(double));
        w->bias = calloc((size_t)s->model.cfg.vocab_size, sizeof(float));
        plait_knn_init(&w->knn);
        if (!w->diff || !w->batch || !w->ref || !w->wl_g || !w->wl_p || !w->bias)
            return plait_fail(PLAIT_ENOMEM, "sim: worker buffers");
    }
    size_t want = (size_t)ceil((double)cfg->clients_per_round * cfg->overselect);
    s->slab = malloc(want * (s->len + 1) * sizeof(uint32_t));
    s->eval_ids = sample_ids(cfg->seed, PLAIT__SIM_RNG_EVAL, s->pop.n, cfg->eval_clients);
    s->n_eval = cfg->eval_clients && cfg->eval_clients < s->pop.n ? cfg->eval_clients : s->pop.n;
    s->n_pers = cfg->personal_clients < s->pop.n ? cfg->personal_clients : s->pop.n;
    if (cfg->centralized_only) s->n_pers = 0; /* only the baseline: no personalization to measure */
    s->pers_ids = s->n_pers ? sample_ids(cfg->seed, PLAIT__SIM_RNG_PERSONAL, s->pop.n, s->n_pers) : NULL;
    if (!s->slab || !s->eval_ids || (s->n_pers && !s->pers_ids)) return plait_fail(PLAIT_ENOMEM, "sim: samples");
    return 0;
}

/* One round; fills m. */
static int one_round(sim_t *s, int r, double *sim_now, plait_sim_round_t *m)
{
    const plait_sim_config_t *cfg = s->cfg;
    plait_round_t *rd = s->round;
    s->cur_round = r;
    double t0 = *sim_now;
    uint64_t rid;
    int rc = plait_round_open(rd, t0, &rid);
    if (rc != 0) return rc;
    plait_round_stats_t st;
    plait_round_stats(rd, &st);
    /* Who is available, and the seeded cohort among them. */
    size_t n = s->pop.n, n_av = 0;
    size_t *av = malloc(n * sizeof(size_t));
    if (!av) return plait_fail(PLAIT_ENOMEM, "sim: availability");
    for (size_t i = 0; i < n; i++)
        if (plait_sim_fleet_available(cfg, r, i)) av[n_av++] = i;
    size_t k = st.want < n_av ? st.want : n_av;
    plait_rng_t sel;
    plait_rng_seed_u64(&sel, cfg->seed, plait__sim_stream(PLAIT__SIM_RNG_SELECT, (uint64_t)r, 0));
    for (size_t i = 0; i < k; i++) {
        size_t j = i + (size_t)(plait_rng_uniform(&sel) * (double)(n_av - i));
        size_t t = av[i];
        av[i] = av[j];
        av[j] = t;
    }
    plait_rng_wipe(&sel);
    for (size_t i = 0; i < k && rc == 0; i++) rc = plait_round_select(rd, av[i], t0);
    if (rc == 0 && plait_round_state(rd) == PLAIT_ROUND_SELECTION) rc = plait_round_start(rd, t0);
    m->available = n_av;

    event_t *ev = calloc(k ? k : 1, sizeof(event_t));
    job_t *jobs = calloc(k ? k : 1, sizeof(job_t));
    uint8_t *trained = calloc(k ? k : 1, 1), *accepted = calloc(k ? k : 1, 1);
    size_t *job_ev = calloc(k ? k : 1, sizeof(size_t));
    if (!ev || !jobs || !trained || !accepted || !job_ev) rc = plait_fail(PLAIT_ENOMEM, "sim: round buffers");
    double bytes_down = (double)s->len * sizeof(float), bytes_up = (double)(s->len + 1) * sizeof(uint32_t);
    for (size_t i = 0; rc == 0 && i < k; i++) {
        plait_sim_fate_t f;
        int steps = local_steps_for(cfg, &s->pop.clients[av[i]]);
        plait_sim_fleet_fate(cfg, r, av[i], bytes_down, bytes_up, (double)steps * cfg->batch * cfg->seq_len, &f);
        ev[i] = (event_t){t0 + (f.dropped ? f.drop_at : f.duration), av[i], i, f.dropped, 0};
    }
    if (rc == 0) qsort(ev, k, sizeof(event_t), cmp_event);
    double deadline = t0 + cfg->deadline_s;
    double loss_sum = 0;
    size_t loss_n = 0;
    for (size_t e = 0; rc == 0 && e < k && plait_round_state(rd) == PLAIT_ROUND_TRAINING; e++) {
        if (ev[e].t >= deadline) break;
        if (ev[e].dropped) {
            rc = plait_round_dropout(rd, ev[e].client, rid, ev[e].t);
            continue;
        }
        if (!trained[e]) {
            /* Train the next arrivals still needed, in parallel. */
            plait_round_stats(rd, &st);
            size_t need = cfg->clients_per_round - st.accepted, nj = 0;
            for (size_t f = e; f < k && nj < need && ev[f].t < deadline; f++) {
                if (ev[f].dropped || trained[f]) continue;
                trained[f] = 1;
                job_ev[nj] = f;
                jobs[nj] = (job_t){.client = ev[f].client, .kind = JOB_TRAIN,
                                   .words = s->slab + ev[f].slot * (s->len + 1)};
                nj++;
            }
            double w0 = wall_now(), c0 = cpu_now();
            rc = run_jobs(s, jobs, nj);
            s->train_wall += wall_now() - w0;
            s->train_cpu += cpu_now() - c0;
            s->trained += nj;
            for (size_t q = 0; q < nj; q++) {
                ev[job_ev[q]].unclipped = jobs[q].unclipped;
                if (isfinite(jobs[q].loss)) loss_sum += jobs[q].loss, loss_n++;
            }
            if (rc != 0) break;
        }
        const uint32_t *words = s->slab + ev[e].slot * (s->len + 1);
        int sub = plait_round_submit_words(rd, ev[e].client, rid, words, s->len + 1, ev[e].unclipped, ev[e].t);
        if (sub == 0) accepted[ev[e].slot] = 1;
        if (sub != 0 && sub != PLAIT_ESTALE && sub != PLAIT_ETOOBIG && sub != PLAIT_EPROTO && sub != PLAIT_EINVAL &&
            sub != PLAIT_EMISMATCH)
            rc = sub;
    }
    if (rc == 0) plait_round_tick(rd, deadline);
    if (rc == 0 && plait_round_state(rd) == PLAIT_ROUND_TRAINING) plait_round_tick(rd, deadline);
    if (rc == 0 && s->sa && plait_round_state(rd) == PLAIT_ROUND_AGGREGATION) {
        /* The same round under SecAgg+: too few survivors for its threshold fail it. */
        int failed = 0;
        double w0 = wall_now();
        rc = plait__sim_sa_round(s->sa, cfg, r, s->min_cohort, av, k, accepted, s->slab, s->len + 1, &failed);
        m->secagg_s = wall_now() - w0;
        if (rc == 0 && failed) plait_round_abort(rd, deadline);
    }
    if (rc == 0 && plait_round_state(rd) == PLAIT_ROUND_AGGREGATION) {
        plait_rng_t dp;
        plait_rng_seed_u64(&dp, cfg->seed, plait__sim_stream(PLAIT__SIM_RNG_DP, (uint64_t)r, 0));
        rc = plait_round_aggregate(rd, &dp);
        plait_rng_wipe(&dp);
        if (rc == 0) rc = plait_round_commit(rd);
        if (rc == 0) memcpy(s->global.params + s->off, plait_round_global(rd), s->len * sizeof(float));
    }
    plait_round_stats(rd, &st);
    m->round = r;
    m->committed = st.committed;
    m->selected = st.selected;
    m->participants = st.accepted;
    m->dropouts = st.dropouts;
    m->stragglers = st.stragglers;
    m->rejected = st.rej_stale + st.rej_duplicate + st.rej_late + st.rej_unknown + st.rej_length + st.rej_malformed +
                  st.rej_norm;
    m->bytes_up = st.bytes_up;
    m->bytes_down = st.bytes_down;
    m->sim_time_s = (st.t_close > t0 ? st.t_close : t0) - t0;
    m->train_loss = loss_n ? loss_sum / (double)loss_n : NAN;
    m->epsilon = plait_round_epsilon(rd);
    m->clip = st.clip_used;
    *sim_now = t0 + m->sim_time_s;
    free(av);
    free(ev);
    free(jobs);
    free(trained);
    free(accepted);
    free(job_ev);
    return rc;
}

/* Network mode: one round on the real service (net.c); the exported global adapter becomes s->global. */
static int net_round(sim_t *s, plait__sim_net_t *net, int r, plait_sim_round_t *m)
{
    s->cur_round = r;
    char path[PLAIT_SIM_PATH_MAX + 128];
    double w0 = wall_now();
    int rc = plait__sim_net_round(net, r, s->len, m, path, sizeof(path));
    if (rc != 0 || !path[0]) return rc;
    s->train_wall += wall_now() - w0;
    s->trained += m->participants;
    plait_lora_t l;
    plait_lora_init(&l);
    if ((rc = plait_adapter_load(&l, path, &s->model, 0)) != 0) return plait__sim_wrap(rc, path);
    if (l.n_params != s->global.n_params) rc = plait_fail(PLAIT_EMISMATCH, "%s: not this experiment's adapter", path);
    else memcpy(s->global.params, l.params, l.n_params * sizeof(float));
    plait_lora_free(&l);
    return rc;
}

static int eval_round(sim_t *s, plait_sim_round_t *m, plait_sim_result_t *res)
{
    size_t tok;
    int rc = evaluate_each(s, s->eval_ids, s->n_eval, JOB_EVAL, &m->global_loss, &tok, res->client_global);
    int last = m->round == s->cfg->rounds, every = s->cfg->personal_rounds;
    if (rc == 0 && (last || (every > 0 && m->round % every == 0)))
        rc = evaluate_personal(s, &m->personal_loss, &m->personal_global_loss, res->client_personal,
                               res->client_pglobal, res->client_mix, res->client_tokens, res->client_se,
                               res->client_bias, res->client_knn);
    m->global_ppl = exp(m->global_loss);
    m->personal_ppl = exp(m->personal_loss);
    return rc;
}

static uint64_t fnv_bytes(uint64_t h, const void *p, size_t n)
{
    const uint8_t *b = p;
    for (size_t i = 0; i < n; i++) h = (h ^ b[i]) * 1099511628211ULL;
    return h;
}

static uint64_t checksum(const sim_t *s, const plait_sim_result_t *res)
{
    uint64_t h = fnv_bytes(1469598103934665603ULL, s->global.params, s->global.n_params * sizeof(float));
    for (size_t r = 0; r <= res->n_rounds; r++) {
        const plait_sim_round_t *m = &res->rounds[r];
        uint64_t u[] = {(uint64_t)m->committed, m->available, m->selected, m->participants, m->dropouts,
                        m->stragglers, m->rejected, m->bytes_up, m->bytes_down};
        double d[] = {m->sim_time_s, m->train_loss, m->global_loss, m->personal_loss, m->epsilon, m->clip};
        h = fnv_bytes(h, u, sizeof(u));
        h = fnv_bytes(h, d, sizeof(d));
    }
    if (s->cfg->centralized || s->cfg->centralized_only) h = fnv_bytes(h, &res->centralized_loss, sizeof(double));
    return h;
}

static void progress(const plait_sim_config_t *cfg, const plait_sim_round_t *m, int tty)
{
    if (cfg->quiet) return;
    /* Losses are measured only in some rounds (eval.every, personal clients): absent ones are not printed. */
    char gl[40] = "", pl[40] = "";
    if (isfinite(m->global_loss)) snprintf(gl, sizeof(gl), tty ? "  global %.3f" : ", global loss %.4f", m->global_loss);
    if (isfinite(m->personal_loss))
        snprintf(pl, sizeof(pl), tty ? "  personal %.3f" : ", personal loss %.4f", m->personal_loss);
    if (tty) {
        int width = 30, done = (int)((double)width * m->round / cfg->rounds);
        fprintf(stderr, "\r[%.*s%*s] round %d/%d%s%s  clients %zu/%zu ", done, "##############################",
                width - done, "", m->round, cfg->rounds, gl, pl, m->participants, m->selected);
        if (m->round == cfg->rounds || cfg->centralized_only) fputc('\n', stderr);
    } else {
        fprintf(stderr, "round %d/%d: %s, participants %zu/%zu, dropouts %zu, stragglers %zu%s%s, eps %.3g, %.2fs\n",
                m->round, cfg->rounds, m->committed ? "committed" : (m->round ? "failed" : "start"), m->participants,
                m->selected, m->dropouts, m->stragglers, gl, pl, m->epsilon, m->wall_s);
    }
    fflush(stderr);
}

void plait_sim_result_free(plait_sim_result_t *res)
{
    if (!res) return;
    free(res->rounds);
    res->rounds = NULL;
    free(res->client_base);
    free(res->client_global);
    free(res->client_local);
    free(res->client_personal);
    free(res->client_pglobal);
    free(res->client_mix);
    free(res->client_tokens);
    free(res->client_se);
    free(res->client_bias);
    free(res->client_knn);
    res->client_se = res->client_bias = res->client_knn = NULL;
    res->client_base = res->client_global = res->client_local = res->client_personal = NULL;
    res->client_pglobal = res->client_mix = NULL;
    res->client_tokens = NULL;
}

int plait_sim_run(const plait_sim_config_t *cfg, plait_sim_result_t *out)
{
    int rc = plait_sim_config_validate(cfg);
    if (rc != 0) return rc;
    double w_start = wall_now();
    int network = strcmp(cfg->mode, "network") == 0;
    plait__sim_net_t *net = NULL;
    sim_t s;
    memset(&s, 0, sizeof(s));
    plait_sim_result_t res;
    memset(&res, 0, sizeof(res));
    if ((rc = setup(&s, cfg)) != 0) goto exit;
    res.rounds = calloc((size_t)cfg->rounds + 1, sizeof(plait_sim_round_t));
    if (!res.rounds) {
        rc = plait_fail(PLAIT_ENOMEM, "sim: metrics");
        goto exit;
    }
    res.n_rounds = cfg->centralized_only ? 0 : (size_t)cfg->rounds;
    res.centralized_loss = NAN;
    res.n_clients = s.pop.n;
    res.n_params = s.global.n_params;
    res.span_len = s.len;
    int tty = cfg->progress == 1 || (cfg->progress == -1 && isatty(2));
    if (!cfg->quiet)
        fprintf(stderr, "plait-sim: %zu clients (%zu authors; %zu under %zu lines, %zu too small), %s, %zu of %zu "
                        "parameters travel\n",
                s.pop.n, s.pop.n_sources, s.pop.n_too_few, cfg->min_lines, s.pop.n_too_small,
                plait_lora_mode_name(cfg->lora_mode), s.len, s.global.n_params);
    /* Round 0: the starting point, and the frozen base model. */
    s.cur_round = 0;
    double w0 = wall_now();
    /* Per-client losses for the report's distributions (not part of the checksum). */
    res.n_eval_clients = s.n_eval;
    res.n_pers_clients = s.n_pers;
    res.client_base = calloc(s.n_eval ? s.n_eval : 1, sizeof(double));
    res.client_global = calloc(s.n_eval ? s.n_eval : 1, sizeof(double));
    res.client_local = calloc(s.n_pers ? s.n_pers : 1, sizeof(double));
    res.client_personal = calloc(s.n_pers ? s.n_pers : 1, sizeof(double));
    res.client_pglobal = calloc(s.n_pers ? s.n_pers : 1, sizeof(double));
    res.client_mix = calloc(s.n_pers ? s.n_pers : 1, sizeof(double));
    res.client_tokens = calloc(s.n_pers ? s.n_pers : 1, sizeof(size_t));
    res.client_se = calloc(s.n_pers ? s.n_pers : 1, sizeof(double));
    res.client_bias = calloc(s.n_pers ? s.n_pers : 1, sizeof(double));
    res.client_knn = calloc(s.n_pers ? s.n_pers : 1, sizeof(double));
    if (!res.client_knn || !res.client_base || !res.client_global || !res.client_local || !res.client_personal || !res.client_pglobal ||
        !res.client_mix || !res.client_tokens || !res.client_se || !res.client_bias) {
        rc = plait_fail(PLAIT_ENOMEM, "sim: per-client losses");
        goto exit;
    }
    if ((rc = evaluate_each(&s, s.eval_ids, s.n_eval, JOB_BASE, &res.base_loss, &res.eval_tokens, res.client_base)) !=
        0)
        goto exit;
    memcpy(res.client_global, res.client_base, s.n_eval * sizeof(double));
    plait_sim_round_t *m0 = &res.rounds[0];
    m0->train_loss = NAN;
    m0->clip = plait_round_clip(s.round);
    /* Every mode starts with B = 0, so the global adapter of round 0 is the base model. */
    m0->global_loss = res.base_loss;
    m0->global_ppl = exp(res.base_loss);
    if ((rc = evaluate_personal(&s, &m0->personal_loss, &m0->personal_global_loss, res.client_local,
                                res.client_pglobal, res.client_mix, res.client_tokens, res.client_se,
                                res.client_bias, res.client_knn)) != 0)
        goto exit;
    memcpy(res.client_personal, res.client_local, s.n_pers * sizeof(double));
    m0->personal_ppl = exp(m0->personal_loss);
    m0->wall_s = wall_now() - w0;
    progress(cfg, m0, tty);
    double sim_now = 0;
    if (network && res.n_rounds > 0 && (rc = plait__sim_net_start(&net, cfg, &s.pop)) != 0) goto exit;
    for (int r = 1; r <= (int)res.n_rounds; r++) {
        plait_sim_round_t *m = &res.rounds[r];
        m->round = r;
        double wr = wall_now();
        if (network) {
            if ((rc = net_round(&s, net, r, m)) != 0) goto exit;
        } else if ((rc = one_round(&s, r, &sim_now, m)) != 0) {
            goto exit;
        }
        m->global_loss = m->personal_loss = m->global_ppl = m->personal_ppl = m->personal_global_loss = NAN;
        if (r % cfg->eval_every == 0 || r == cfg->rounds)
            if ((rc = eval_round(&s, m, &res)) != 0) goto exit;
        m->wall_s = wall_now() - wr;
        progress(cfg, m, tty);
    }
    if (cfg->centralized || cfg->centralized_only) {
        if (!cfg->quiet) fprintf(stderr, "plait-sim: centralized baseline on the pooled training data...\n");
        if ((rc = plait__sim_centralized(cfg, &s.model, &s.tok, &s.pop, &s.global, s.eval_ids, s.n_eval, &res)) != 0)
            goto exit;
        if (!cfg->quiet)
            fprintf(stderr, "plait-sim: centralized: %d steps on %zu tokens, held-out loss %.4f, %.1f s\n",
                    res.centralized_steps, res.centralized_tokens, res.centralized_loss, res.centralized_wall_s);
    }
    res.wall_s = wall_now() - w_start;
    res.client_rounds_per_s = s.train_wall > 0 ? (double)s.trained / s.train_wall : 0;
    res.cpu_s_per_client_round = s.trained ? s.train_cpu / (double)s.trained : 0;
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru) == 0) res.peak_rss_kb = ru.ru_maxrss;
    res.checksum = checksum(&s, &res);
    {
        char path[PLAIT_SIM_PATH_MAX + 32];
        snprintf(path, sizeof(path), "%s/global.safetensors", cfg->out_dir);
        if ((rc = plait_adapter_save(path, &s.global, s.model.sha256)) != 0) goto exit;
        if ((rc = plait__sim_write_outputs(cfg, &res, &s.pop, cfg->out_dir)) != 0) goto exit;
    }
exit:
    plait__sim_net_stop(net);
    sim_free(&s);
    if (rc == 0 && out) *out = res;
    else plait_sim_result_free(&res);
    return rc;
}
