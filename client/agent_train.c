/*
 * agent_train.c: the device's local work in a round: the global adapter
 * becomes a local copy, the local copy is trained on this device's records on
 * a worker thread, and the difference becomes the quantized update words
 * (plait__agent_compute_update, plait__agent_make_update).
 *
 * Contract:
 *   - Training runs on a worker thread (STYLE.md §9) while the agent thread
 *     keeps the connection alive (Ping at least every keepalive_ms, Pong to
 *     Pings) and watches the deadline. Only the worker touches the trainer and
 *     the corpus; the agent thread reads two atomics (steps done, done flag).
 *     The worker is canceled and joined on every path.
 *   - Private data is wiped, not only freed: the corpus tokens
 *     (plait_corpus_free), the batch, the trained weights, the float
 *     difference (plait__agent_make_update) and the noise stream
 *     (plait_rng_wipe). Logs carry round ids, sizes, counts and settings
 *     only; the training loss and the pre-clip norm stay on the device.
 */
#include "agent_int.h"

#include "plait/adapter.h"
#include "plait/client.h"
#include "plait/crypto.h"
#include "plait/data.h"
#include "plait/log.h"
#include "plait/lora.h"
#include "plait/model.h"
#include "plait/personal.h"
#include "plait/rng.h"
#include "plait/store.h"
#include "plait/train.h"
#include "plait/update.h"
#include "plait/wire.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define PROGRESS_MS 1000u

/* ---------------------------------------------------------- update pipeline */

int plait__agent_make_update(const plait_lora_t *global, const plait_lora_t *local,
                             plait_lora_mode_t mode, double clip_norm, double noise_stddev,
                             const plait_quant_config_t *qc, double weight, plait_rng_t *rng,
                             uint32_t *words, size_t n_words, plait_clip_info_t *ci)
{
    if (!global || !local || !qc || !rng || !words)
        return plait_fail(PLAIT_EINVAL, "update: NULL argument");
    if (global->n_params != local->n_params || global->n_a != local->n_a)
        return plait_fail(PLAIT_EINVAL, "update: local and global adapters differ in shape");
    if (!(weight >= 0.0 && weight <= 1.0))
        return plait_fail(PLAIT_EINVAL, "update: weight outside [0, 1]");
    size_t off, len;
    int rc = plait_update_span(global, mode, &off, &len);
    if (rc != 0) return rc;
    if (n_words != len + 1 && n_words != len + 2)
        return plait_fail(PLAIT_EMISMATCH,
                          "update: %zu words asked for a span of %zu (+1 weight word, +1 clip bit)",
                          n_words, len);
    float *upd = malloc(len * sizeof(float));
    if (!upd) return plait_fail(PLAIT_ENOMEM, "update: %zu floats", len);
    plait_clip_info_t info;
    memset(&info, 0, sizeof(info));
    if ((rc = plait_update_diff(upd, local->params + off, global->params + off, len)) != 0)
        goto exit;
    if ((rc = plait_update_clip_l2(upd, len, clip_norm, &info)) != 0) goto exit;
    if (noise_stddev > 0.0 && (rc = plait_update_add_noise(upd, len, noise_stddev, rng)) != 0)
        goto exit;
    for (size_t i = 0; i < len; i++)
        upd[i] = (float)((double)upd[i] * weight);
    if ((rc = plait_quant_encode(qc, upd, len, rng, words)) != 0) goto exit;
    rc = plait_quant_encode_weight(qc, weight, rng, &words[len]);
    /* Adaptive clipping: the bit "norm <= clip", summed (masked, under secure aggregation) like
     * the weight word; 0 and 1 encode exactly. */
    if (rc == 0 && n_words == len + 2)
        rc = plait_quant_encode_weight(qc, info.clipped ? 0.0 : 1.0, rng, &words[len + 1]);
exit:
    plait_zeroize(upd, len * sizeof(float)); /* unclipped (then noised) data is secret */
    free(upd);
    if (rc != 0) memset(words, 0, n_words * sizeof(uint32_t));
    if (ci) *ci = info;
    return rc;
}

/* ----------------------------------------------------------------- training */

typedef struct {
    plait_agent_t *a;
    plait_lora_t *lora; /* trained in place */
    int train_a;
    int B, T;
    double lr;
    double prox_mu;
    uint32_t steps;
    uint64_t sample_seed; /* not secret; selects windows */
    atomic_int cancel;
    atomic_uint steps_done;
    atomic_int done;
    int rc;
    char err[256];
    size_t n_records;
    double loss; /* mean training loss of the last step (stays on the device) */
    const plait_lora_t *serve_ref; /* choose the serving adapter from this after training (NULL: from lora) */
    uint64_t round;
    uint64_t serve_by_ms; /* choosing the serving adapter stops here (0: no limit); the update waits for it */
} job_t;

/* personal.h's stop: the round was stopped or ran past its deadline, or the serving choice has used its share
 * of the round's time (it runs before the upload: it must never cost the device its round). */
static int job_canceled(void *p)
{
    const job_t *j = p;
    return atomic_load(&j->cancel) != 0 || (j->serve_by_ms && plait__agent_now_ms() > j->serve_by_ms);
}

static void *job_main(void *p)
{
    job_t *j = p;
    plait_agent_t *a = j->a;
    plait_corpus_t corpus;
    plait_trainer_t *tr = NULL;
    int32_t *batch = NULL;
    int rc = plait__agent_worker_corpus(a, PLAIT_STORE_TRAIN, &corpus);
    if (rc != 0) goto out;
    j->n_records = corpus.n_records;
    if (corpus.n < (size_t)j->T + 1) {
        rc = plait_fail(PLAIT_EINVAL,
                        "the training split holds %zu tokens, fewer than seq_len %d + 1", corpus.n,
                        j->T);
        goto out;
    }
    plait_train_config_t tc = plait_train_config_default();
    tc.B = j->B;
    tc.T = j->T;
    tc.lr = j->lr;
    tc.prox_mu = j->prox_mu; /* FedProx: the task's proximal weight (0: none) */
    tc.train_a = j->train_a;
    tc.threads = a->cfg.threads;
    tc.base_bf16 = a->cfg.base_bf16;
    tc.pool = a->pool;
    if ((rc = plait_train_create(&tr, &a->model, j->lora, &tc)) != 0) goto out;
    batch = malloc((size_t)j->B * ((size_t)j->T + 1) * sizeof(int32_t));
    if (!batch) {
        rc = plait_fail(PLAIT_ENOMEM, "training batch");
        goto out;
    }
    uint64_t rng = j->sample_seed;
    for (uint32_t s = 0; s < j->steps; s++) {
        if (atomic_load(&j->cancel)) {
            rc = plait_fail(PLAIT_ECANCELED, "training canceled at step %u", s);
            goto out;
        }
        float loss = 0;
        if ((rc = plait_corpus_sample(&corpus, j->B, j->T, &rng, batch)) != 0) goto out;
        if ((rc = plait_train_forward_backward(tr, batch, &loss)) != 0) goto out;
        if ((rc = plait_train_step(tr)) != 0) goto out;
        j->loss = loss;
        atomic_store(&j->steps_done, s + 1);
    }
    /* The adapter this device serves: validated personalization from the global adapter (FedSA: from the
     * trained global A + own B); a failure keeps the previous one and does not fail the round. */
    plait_train_destroy(tr);
    tr = NULL;
    plait_personal_result_t pr;
    if (atomic_load(&j->cancel)) /* stopped or past the deadline: no extra fine-tuning before the join */
        PLAIT_LOG(PLAIT_LOG_INFO, "agent %s: round %llu: serving adapter not updated (canceled)", a->device_id,
                  (unsigned long long)j->round);
    else if (plait__agent_serve_choose(&a->model, j->serve_ref ? j->serve_ref : j->lora, &corpus, a->state_dir, j->B,
                                  j->T, j->lr, j->train_a, (int)j->steps, j->sample_seed ^ 0x5e12e5eedULL, a->pool,
                                  a->cfg.threads, a->cfg.base_bf16, j->round, job_canceled, j, &pr) == 0)
        PLAIT_LOG(PLAIT_LOG_INFO, "agent %s: round %llu: serving the %s adapter", a->device_id,
                  (unsigned long long)j->round, plait_personal_kind_name(pr.kind));
    else
        PLAIT_LOG(PLAIT_LOG_WARN, "agent %s: round %llu: serving adapter not updated: %s", a->device_id,
                  (unsigned long long)j->round, plait_errmsg());
out:
    if (rc != 0) snprintf(j->err, sizeof(j->err), "%s", plait_errmsg());
    if (batch) plait_zeroize(batch, (size_t)j->B * ((size_t)j->T + 1) * sizeof(int32_t));
    free(batch);
    plait_train_destroy(tr);
    plait_corpus_free(&corpus); /* wipes the private tokens */
    j->rc = rc;
    atomic_store(&j->done, 1);
    char c = 'd';
    ssize_t w = write(a->wake[1], &c, 1);
    (void)w;
    return NULL;
}

/* One split of the device store as a corpus (initialized even on failure). */
static int load_corpus(plait_agent_t *a, plait_store_split_t split, plait_corpus_t *corpus)
{
    plait_corpus_init(corpus);
    plait_store_t *st = NULL;
    plait_store_config_t sc;
    plait_store_config_default(&sc);
    sc.path = a->store_path;
    sc.create = false;
    int rc = plait_store_open(&st, &sc);
    if (rc == 0) rc = plait_corpus_add_store(corpus, &a->tok, st, split);
    plait_store_close(st);
    return rc;
}

int plait__agent_worker_corpus(plait_agent_t *a, plait_store_split_t split, plait_corpus_t *corpus)
{
    if (a->cfg.on_log) plait_log_set_thread_sink(a->cfg.on_log, a->cfg.log_ud, NULL, NULL); /* this thread only */
    return load_corpus(a, split, corpus);
}

int plait__agent_data_check(plait_agent_t *a, const plait_msg_task_t *t)
{
    plait_store_split_t split = t->kind == PLAIT_TASK_EVALUATE ? PLAIT_STORE_HELDOUT : PLAIT_STORE_TRAIN;
    plait_corpus_t corpus;
    int rc = load_corpus(a, split, &corpus);
    int enough = corpus.n >= (size_t)t->train.seq_len + 1;
    plait_corpus_free(&corpus);
    if (rc != 0) return rc;
    /* No token count in the detail: the device's log keeps its held-out size to itself too. */
    if (!enough)
        return plait_fail(PLAIT_EINVAL, "the %s split is shorter than seq_len %u + 1 tokens",
                          split == PLAIT_STORE_HELDOUT ? "held-out" : "training", t->train.seq_len);
    return 0;
}

int plait__agent_keepalive_while(plait__agent_conn_t *c, atomic_int *done, uint64_t round, uint64_t deadline,
                                 const char *what, void (*tick)(void *ud), void *ud)
{
    plait_agent_t *a = c->a;
    uint64_t next_ping = plait__agent_now_ms() + a->cfg.keepalive_ms,
             next_tick = plait__agent_now_ms() + PROGRESS_MS;
    int rc = 0;
    while (!atomic_load(done)) {
        uint64_t now = plait__agent_now_ms();
        if (now >= deadline)
            return plait_fail(PLAIT_ECANCELED, "round %llu: deadline passed during %s", (unsigned long long)round,
                              what);
        if (now >= next_ping) {
            plait_msg_t ping;
            plait_msg_init(&ping, PLAIT_MSG_PING);
            ping.u.ping.nonce = ++a->ping_nonce;
            if ((rc = plait__agent_conn_send(c, &ping)) != 0) return rc;
            next_ping = now + a->cfg.keepalive_ms;
        }
        if (tick && now >= next_tick) {
            tick(ud);
            next_tick = now + PROGRESS_MS;
        }
        uint64_t until = next_ping < deadline ? next_ping : deadline;
        if (tick && until > now + PROGRESS_MS) until = now + PROGRESS_MS;
        plait_msg_t m;
        int r = plait__agent_conn_recv(c, until, &m);
        if (r == PLAIT_EAGAIN) continue;
        if (r != 0) return r;
        char waiting[64];
        snprintf(waiting, sizeof(waiting), "nothing during %s", what);
        rc = m.type == PLAIT_MSG_ERROR              ? plait__agent_peer_error(c, &m, round)
             : m.type == PLAIT_MSG_COME_BACK_LATER ? plait__agent_round_ended(c, &m, round)
                                                   : plait__agent_unexpected(&m, waiting);
        plait_msg_free(&m);
        return rc;
    }
    return 0;
}

typedef struct {
    plait_agent_t *a;
    job_t *j;
    uint64_t round;
    unsigned last_step;
} progress_t;

/* A training progress event when steps were done since the last one. */
static void progress_tick(void *ud)
{
    progress_t *pg = ud;
    unsigned s = atomic_load(&pg->j->steps_done);
    if (s == pg->last_step) return;
    plait_agent_event_t ev = {.type = PLAIT_AGENT_EV_TRAINING, .round_id = pg->round, .step = s, .steps = pg->j->steps};
    plait__agent_emit_ev(pg->a, &ev);
    pg->last_step = s;
}

/*
 * Train on the worker thread while this thread keeps the connection alive.
 * \return 0, the worker's error, PLAIT_ECANCELED (stop or deadline), or a
 * connection error (the worker is canceled and joined in every case).
 */
static int train_with_keepalive(plait__agent_conn_t *c, job_t *j, uint64_t round,
                                uint64_t task_deadline)
{
    plait_agent_t *a = c->a;
    pthread_t th;
    if (pthread_create(&th, NULL, job_main, j) != 0)
        return plait_fail(PLAIT_ENOMEM, "cannot start the training thread");
    progress_t pg = {a, j, round, 0};
    int rc = plait__agent_keepalive_while(c, &j->done, round, task_deadline, "training", progress_tick, &pg);
    if (rc != 0) atomic_store(&j->cancel, 1);
    pthread_join(th, NULL);
    plait__agent_drain_wake(a);
    if (plait__agent_stopped(a) && rc == 0 && j->rc != 0)
        rc = plait_fail(PLAIT_ECANCELED, "agent stopped");
    if (rc == 0 && j->rc != 0) rc = plait_fail(j->rc, "training: %s", j->err);
    if (rc == 0) {
        plait_agent_event_t ev = {.type = PLAIT_AGENT_EV_TRAINING,
                                  .round_id = round,
                                  .step = j->steps,
                                  .steps = j->steps};
        plait__agent_emit_ev(a, &ev);
    }
    return rc;
}

static int lora_clone(plait_lora_t *dst, const plait_lora_t *src)
{
    int rc = plait_lora_setup(dst, &src->model, &src->cfg);
    if (rc == 0) memcpy(dst->params, src->params, src->n_params * sizeof(float));
    return rc;
}

/* Compute the round's update: adapter, training, pipeline. Fills p (words owned). */
int plait__agent_compute_update(plait__agent_conn_t *c, const plait_msg_task_t *t,
                                uint64_t deadline, plait__agent_pending_t *p,
                                plait_agent_result_t *res)
{
    plait_agent_t *a = c->a;
    uint64_t round = t->round_id;
    uint8_t *blob = NULL;
    size_t blob_len = 0;
    uint64_t downloaded = 0;
    plait_lora_t global, local, seeded;
    plait_lora_init(&global);
    plait_lora_init(&local);
    plait_lora_init(&seeded);
    plait_rng_t rng;
    memset(&rng, 0, sizeof(rng));
    int rc = plait__agent_get_adapter(c, t, &blob, &blob_len, &downloaded);
    if (rc != 0) goto exit;
    PLAIT_LOG(PLAIT_LOG_INFO, "agent %s: round %llu: global adapter v%llu %s (%zu bytes)",
              a->device_id, (unsigned long long)round, (unsigned long long)t->adapter_version,
              downloaded ? "downloaded" : "cached", blob_len);
    plait_agent_event_t ev = {
        .type = PLAIT_AGENT_EV_DOWNLOADED, .round_id = round, .bytes = downloaded};
    plait__agent_emit_ev(a, &ev);
    if ((rc = plait_adapter_load_mem(&global, blob, blob_len, &a->model, 0)) != 0) goto exit;
    if (global.cfg.rank != (int)t->lora.rank || global.cfg.alpha != t->lora.alpha ||
        global.cfg.targets != t->lora.targets) {
        rc =
            plait_fail(PLAIT_EMISMATCH, "the global adapter's LoRA config differs from the task's");
        goto exit;
    }
    if (t->lora.mode == PLAIT_LORA_MODE_FFA) {
        /* FFA-LoRA: A is frozen at the init every device derives from the task seed. */
        if ((rc = plait_lora_setup(&seeded, &global.model, &global.cfg)) != 0) goto exit;
        plait_lora_init_weights(&seeded, t->lora.a_seed);
        memcpy(global.params, seeded.params, global.n_a * sizeof(float));
    }
    size_t off, len;
    if ((rc = plait_update_span(&global, t->lora.mode, &off, &len)) != 0) goto exit;
    if (t->update_elements != (uint64_t)len + 1 + (t->clip_bit ? 1 : 0)) {
        rc = plait_fail(PLAIT_EMISMATCH, "task wants %llu words, the %s span is %zu + 1%s",
                        (unsigned long long)t->update_elements, plait_lora_mode_name(t->lora.mode),
                        len, t->clip_bit ? " + 1 clip bit" : "");
        goto exit;
    }
    if ((rc = lora_clone(&local, &global)) != 0) goto exit;
    if (t->lora.mode == PLAIT_LORA_MODE_FEDSA) plait__agent_load_personal_b(a, &local);

    job_t *j = calloc(1, sizeof(*j));
    if (!j) {
        rc = plait_fail(PLAIT_ENOMEM, "training job");
        goto exit;
    }
    j->a = a;
    j->lora = &local;
    j->train_a = t->lora.mode != PLAIT_LORA_MODE_FFA;
    j->B = (int)t->train.batch;
    j->T = (int)t->train.seq_len;
    j->lr = t->train.lr;
    j->prox_mu = t->train.prox_mu;
    j->steps = t->train.local_steps;
    j->round = round;
    j->serve_ref = t->lora.mode == PLAIT_LORA_MODE_FEDSA ? NULL : &global;
    if (a->cfg.seed != 0)
        j->sample_seed = a->cfg.seed ^ (round * 0x9E3779B97F4A7C15ull);
    else if ((rc = plait_drbg_random(&a->drbg, (uint8_t *)&j->sample_seed,
                                     sizeof(j->sample_seed))) != 0) {
        free(j);
        goto exit;
    }
    atomic_init(&j->cancel, 0);
    atomic_init(&j->steps_done, 0);
    atomic_init(&j->done, 0);
    uint64_t t0 = plait__agent_now_ms();
    /* Training and the serving choice may use half the time the task left; the rest is for the upload. */
    j->serve_by_ms = deadline > t0 ? t0 + (deadline - t0) / 2 : t0;
    rc = train_with_keepalive(c, j, round, deadline);
    size_t n_records = j->n_records;
    uint32_t steps = j->steps;
    free(j);
    if (rc != 0) goto exit;
    PLAIT_LOG(PLAIT_LOG_INFO,
              "agent %s: round %llu: trained %u steps (B=%u T=%u, %s) on %zu records in %.1f s",
              a->device_id, (unsigned long long)round, steps, t->train.batch, t->train.seq_len,
              plait_lora_mode_name(t->lora.mode), n_records,
              (double)(plait__agent_now_ms() - t0) / 1000.0);

    /* The update: diff → clip → [local noise] → × weight → quantize. */
    if (a->cfg.seed != 0)
        plait_rng_seed_u64(&rng, a->cfg.seed, round);
    else if ((rc = plait_rng_seed_drbg(&rng, &a->drbg)) != 0)
        goto exit;
    uint64_t examples = n_records ? n_records : 1;
    double w =
        (double)(examples < t->example_cap ? examples : t->example_cap) / (double)t->example_cap;
    double stddev = t->dp.mode == PLAIT_DP_LOCAL ? t->dp.noise_multiplier * t->clip_norm : 0.0;
    plait_quant_config_t qc = {.bits = t->quant_bits, .range = t->quant_range};
    p->n_words = len + 1 + (t->clip_bit ? 1 : 0);
    p->words = malloc(p->n_words * sizeof(uint32_t));
    if (!p->words) {
        rc = plait_fail(PLAIT_ENOMEM, "update words");
        goto exit;
    }
    plait_clip_info_t ci;
    rc = plait__agent_make_update(&global, &local, t->lora.mode, t->clip_norm, stddev, &qc, w, &rng,
                                  p->words, p->n_words, &ci);
    if (rc != 0) goto exit;
    p->round_id = round;
    p->adapter_version = t->adapter_version;
    p->num_examples = examples;
    res->clip_norm_in = ci.norm;
    PLAIT_LOG(PLAIT_LOG_INFO,
              "agent %s: round %llu: update of %zu words (%s %g%s, %u bits, weight %.3f)",
              a->device_id, (unsigned long long)round, p->n_words,
              ci.clipped ? "clipped to" : "within clip norm", t->clip_norm,
              stddev > 0 ? ", local DP noise" : "", t->quant_bits, w);
    /* The personal copy: FedSA keeps its trained B here (the next round starts from it). */
    if (plait__agent_save_personal(a, &local) != 0)
        PLAIT_LOG(PLAIT_LOG_WARN, "agent %s: cannot save the personal adapter: %s", a->device_id,
                  plait_errmsg());
    else plait__agent_emit(a, PLAIT_AGENT_EV_ADAPTER_UPDATED, round, 0);
exit:
    plait_rng_wipe(&rng);
    free(blob);
    plait_lora_free(&seeded);
    plait_lora_free(&global);
    /* local − global is the unclipped update: wipe the trained weights, not only free them. */
    if (local.params) plait_zeroize(local.params, local.n_params * sizeof(float));
    plait_lora_free(&local);
    if (rc != 0) plait__agent_pending_free(p);
    return rc;
}
