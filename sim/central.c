/*
 * central.c: the centralized LoRA baseline. The global adapter of a
 * federation is meant to approach what ordinary (centralized) LoRA
 * fine-tuning on the pooled training text reaches; this measures that
 * reference on the same population, with the same everything else:
 *
 *   - data: the "train" records of every client, read from the clients'
 *     own stores with the code the clients use (plait__sim_load_client),
 *     appended in client order into one corpus; the held-out records are
 *     never seen;
 *   - adapter: the same LoRA config and the same initial weights (A from the
 *     task seed, B = 0); A trains unless the mode is FFA-LoRA, as on clients;
 *   - optimizer: the clients' AdamW, lr and window, one uninterrupted run
 *     (no resets between rounds, no clipping of updates, no noise, no
 *     quantization), tuned for itself by default: batch
 *     cfg->centralized_batch (16) for cfg->centralized_steps (10,000) steps
 *     (on Shakespeare by speaker this reaches 3.113 where batch 4 x 20,000
 *     steps reached 3.163), so the gap to centralized is a gap to a strong
 *     reference; set the steps for a same-budget comparison instead;
 *   - evaluation: plait_personal_eval on the held-out data of the same
 *     evaluation clients, token-weighted, exactly as the global adapter.
 *
 * Memory: the pooled training corpus (4 bytes a token; tinyshakespeare's
 * training text is about 0.3 M tokens), one adapter and one trainer.
 *
 * Determinism: batches come from one stream (seed, TRAIN purpose, round
 * 0xffffff, client 0), which no federated round uses; the trainer runs on
 * one thread, so the result does not depend on cfg->threads.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "plait/data.h"
#include "plait/lora.h"
#include "plait/personal.h"
#include "plait/rng.h"
#include "plait/sim.h"
#include "plait/train.h"
#include "sim_int.h"

/* The round number of the baseline's stream: past any run's rounds (validate caps them at 1e6 < 2^24 - 1). */
#define CENTRAL_STREAM_ROUND 0xffffffULL

static double central_wall(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

int plait__sim_centralized(const plait_sim_config_t *cfg, const plait_model_t *model, const plait_tok_t *tok,
                           const plait_sim_pop_t *pop, const plait_lora_t *global, const size_t *eval_ids,
                           size_t n_eval, plait_sim_result_t *res)
{
    double w0 = central_wall();
    int steps = cfg->centralized_steps > 0 ? cfg->centralized_steps : PLAIT__SIM_CENTRAL_STEPS;
    int B = cfg->centralized_batch > 0 ? cfg->centralized_batch : cfg->batch;
    res->centralized_loss = NAN;
    res->centralized_steps = 0;
    res->centralized_tokens = 0;
    plait_lora_t lora;
    plait_lora_init(&lora);
    plait_trainer_t *tr = NULL;
    plait_corpus_t pooled;
    plait_corpus_init(&pooled);
    int32_t *batch = NULL;
    int rc = plait_lora_setup(&lora, &model->cfg, &global->cfg);
    if (rc != 0) goto exit;
    if (lora.n_params != global->n_params) {
        rc = plait_fail(PLAIT_EINVAL, "centralized: adapter shape differs from the global adapter's");
        goto exit;
    }
    /* The federation's starting point: A from the task seed, B = 0 (the global adapter has moved since). */
    plait_lora_init_weights(&lora, cfg->seed);
    for (size_t i = 0; i < pop->n && rc == 0; i++) rc = plait__sim_load_client(pop, i, tok, &pooled, NULL);
    if (rc != 0) {
        rc = plait__sim_wrap(rc, "centralized: pooling the training data");
        goto exit;
    }
    res->centralized_tokens = pooled.n;

    plait_train_config_t tc = plait_train_config_default();
    tc.B = B;
    tc.T = cfg->seq_len;
    tc.lr = cfg->lr;
    tc.threads = 1; /* order-fixed kernels on one thread: independent of cfg->threads */
    tc.train_a = cfg->lora_mode != PLAIT_LORA_MODE_FFA;
    if ((rc = plait_train_create(&tr, model, &lora, &tc)) != 0) goto exit;
    batch = malloc((size_t)B * ((size_t)cfg->seq_len + 1) * sizeof(int32_t));
    if (!batch) {
        rc = plait_fail(PLAIT_ENOMEM, "centralized: batch");
        goto exit;
    }
    plait_rng_t r;
    plait_rng_seed_u64(&r, cfg->seed, plait__sim_stream(PLAIT__SIM_RNG_TRAIN, CENTRAL_STREAM_ROUND, 0));
    uint64_t st = plait_rng_u64(&r);
    plait_rng_wipe(&r);
    float loss = NAN;
    for (int k = 0; k < steps && rc == 0; k++) {
        if ((rc = plait_corpus_sample(&pooled, B, cfg->seq_len, &st, batch)) != 0) break;
        if ((rc = plait_train_forward_backward(tr, batch, &loss)) != 0) break;
        rc = plait_train_step(tr);
    }
    if (rc != 0) {
        rc = plait__sim_wrap(rc, "centralized: training");
        goto exit;
    }
    plait_corpus_free(&pooled);

    /* The global adapter's evaluation: held-out data of eval_ids, token-weighted, in id order. */
    double sum = 0;
    size_t tokens = 0;
    for (size_t k = 0; k < n_eval && rc == 0; k++) {
        plait_corpus_t held;
        plait_corpus_init(&held);
        double l = NAN;
        size_t n = 0;
        rc = plait__sim_load_client(pop, eval_ids[k], tok, NULL, &held);
        if (rc == 0) rc = plait_personal_eval(&held, tr, cfg->eval_windows, &l, &n);
        plait_corpus_free(&held);
        if (rc == 0) sum += l * (double)n, tokens += n;
    }
    if (rc != 0) {
        rc = plait__sim_wrap(rc, "centralized: evaluation");
        goto exit;
    }
    if (tokens > 0) res->centralized_loss = sum / (double)tokens;
    res->centralized_steps = steps;
exit:
    res->centralized_wall_s = central_wall() - w0;
    free(batch);
    plait_train_destroy(tr);
    plait_lora_free(&lora);
    plait_corpus_free(&pooled);
    return rc;
}
