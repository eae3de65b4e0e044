/*
 * agent_eval.c: the device's side of federated evaluation (protocol.md §10):
 * on a Task of kind EVALUATE, the held-out loss of the task's version on
 * this device's held-out records, as the two words an evaluation uploads,
 * [min(loss, L) / L, weight], through the same upload path as an update
 * (masked under secure aggregation).
 *
 * Contract:
 *   - The loss is computed exactly as `plait-agent eval` computes it
 *     (plait_corpus_eval over every non-overlapping window of seq_len + 1
 *     tokens of the held-out split, forward only), with the task's version:
 *     for FFA its A is the one the task seed derives, for FedSA the version's
 *     A with this device's own B (DIR/personal.safetensors, when it fits).
 *   - Evaluation runs on a worker thread while the agent thread keeps the
 *     connection alive and watches the deadline; the worker is joined on
 *     every path.
 *   - The loss is private: it never appears in a log line, an event or a
 *     message other than as the clipped, quantized word (and, under secure
 *     aggregation, masked). The held-out tokens are wiped.
 *   - Too little held-out data (fewer than seq_len + 1 tokens) is
 *     PLAIT_EINVAL: the caller declines with DECLINE_NOT_ELIGIBLE (never NOT_ENOUGH_DATA: data-derived).
 */
#include "agent_int.h"

#include "plait/adapter.h"
#include "plait/crypto.h"
#include "plait/data.h"
#include "plait/log.h"
#include "plait/lora.h"
#include "plait/store.h"
#include "plait/train.h"
#include "plait/update.h"

#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef struct {
    plait_agent_t *a;
    plait_lora_t *lora; /* read only: the trainer runs forward */
    int B, T;
    atomic_int done;
    int rc;
    char err[256];
    double loss; /* private: becomes the clipped word only */
} eval_job_t;

static void *eval_main(void *p)
{
    eval_job_t *j = p;
    plait_agent_t *a = j->a;
    plait_corpus_t corpus;
    plait_trainer_t *tr = NULL;
    int rc = plait__agent_worker_corpus(a, PLAIT_STORE_HELDOUT, &corpus);
    if (rc != 0) goto out;
    if (corpus.n < (size_t)j->T + 1) {
        /* Not the token count: the device logs the reason of a decline, and its held-out size stays unlogged. */
        rc = plait_fail(PLAIT_EINVAL, "the held-out split is shorter than seq_len %d + 1 tokens", j->T);
        goto out;
    }
    plait_train_config_t tc = plait_train_config_default();
    tc.B = j->B;
    tc.T = j->T;
    tc.threads = a->cfg.threads;
    tc.base_bf16 = a->cfg.base_bf16;
    tc.pool = a->pool;
    /* The trainer only runs forward here: the adapter is read, never stepped. */
    if ((rc = plait_train_create(&tr, &a->model, j->lora, &tc)) != 0) goto out;
    rc = plait_corpus_eval(&corpus, tr, j->T, 0, &j->loss, NULL);
    /* A non-finite loss is a fact about this device's data and adapter: declined as too little
     * data is (EINVAL: NOT_ELIGIBLE), never with a code of its own. */
    if (rc == PLAIT_EPROTO) rc = plait_fail(PLAIT_EINVAL, "%s", plait_errmsg());
out:
    if (rc != 0) snprintf(j->err, sizeof(j->err), "%s", plait_errmsg());
    plait_train_destroy(tr);
    plait_corpus_free(&corpus); /* wipes the private tokens */
    j->rc = rc;
    atomic_store(&j->done, 1);
    char c = 'd';
    ssize_t w = write(a->wake[1], &c, 1);
    (void)w;
    return NULL;
}

/* Run the job on a worker while this thread answers and sends keepalives. */
static int eval_with_keepalive(plait__agent_conn_t *c, eval_job_t *j, uint64_t round, uint64_t deadline)
{
    plait_agent_t *a = c->a;
    pthread_t th;
    if (pthread_create(&th, NULL, eval_main, j) != 0)
        return plait_fail(PLAIT_ENOMEM, "cannot start the evaluation thread");
    int rc = plait__agent_keepalive_while(c, &j->done, round, deadline, "evaluation", NULL, NULL);
    /* Evaluation has no cancellation point: a failed conversation waits for it (bounded by the
     * held-out split) and drops the result. */
    pthread_join(th, NULL);
    plait__agent_drain_wake(a);
    if (plait__agent_stopped(a) && rc == 0) rc = plait_fail(PLAIT_ECANCELED, "agent stopped");
    if (rc == 0 && j->rc != 0) rc = plait_fail(j->rc, "evaluation: %s", j->err);
    return rc;
}

int plait__agent_eval_words(const plait_quant_config_t *qc, double loss, double loss_max, plait_rng_t *rng,
                            uint32_t words[PLAIT_WIRE_EVAL_WORDS])
{
    if (!qc || !rng || !words) return plait_fail(PLAIT_EINVAL, "evaluation words: NULL argument");
    memset(words, 0, PLAIT_WIRE_EVAL_WORDS * sizeof(uint32_t));
    if (!isfinite(loss) || loss < 0.0) return plait_fail(PLAIT_EINVAL, "evaluation loss: not finite and >= 0");
    if (!isfinite(loss_max) || loss_max <= 0.0 || qc->range < 1.0)
        return plait_fail(PLAIT_EINVAL, "evaluation: loss clip not finite and > 0, or range below 1");
    float v = (float)((loss < loss_max ? loss : loss_max) / loss_max);
    int rc = plait_quant_encode(qc, &v, 1, rng, &words[0]);
    if (rc == 0) rc = plait_quant_encode_weight(qc, 1.0, rng, &words[1]);
    if (rc != 0) memset(words, 0, PLAIT_WIRE_EVAL_WORDS * sizeof(uint32_t));
    return rc;
}

int plait__agent_evaluate(plait__agent_conn_t *c, const plait_msg_task_t *t, uint64_t deadline,
                          plait__agent_pending_t *p, plait_agent_result_t *res)
{
    plait_agent_t *a = c->a;
    uint64_t round = t->round_id;
    uint8_t *blob = NULL;
    size_t blob_len = 0;
    uint64_t downloaded = 0;
    plait_lora_t lora, seeded;
    plait_lora_init(&lora);
    plait_lora_init(&seeded);
    plait_rng_t rng;
    memset(&rng, 0, sizeof(rng));
    eval_job_t *j = NULL;
    (void)res;
    if (t->kind != PLAIT_TASK_EVALUATE || t->update_elements != PLAIT_WIRE_EVAL_WORDS)
        return plait_fail(PLAIT_EMISMATCH, "not an evaluation task of %u words", PLAIT_WIRE_EVAL_WORDS);
    plait_quant_config_t qc = {.bits = t->quant_bits, .range = t->quant_range};
    if (t->quant_range < 1.0)
        return plait_fail(PLAIT_EMISMATCH, "evaluation task quant_range %g below 1", t->quant_range);
    int rc = plait__agent_get_adapter(c, t, &blob, &blob_len, &downloaded);
    if (rc != 0) goto exit;
    plait_agent_event_t ev = {.type = PLAIT_AGENT_EV_DOWNLOADED, .round_id = round, .bytes = downloaded};
    plait__agent_emit_ev(a, &ev);
    if ((rc = plait_adapter_load_mem(&lora, blob, blob_len, &a->model, 0)) != 0) goto exit;
    if (lora.cfg.rank != (int)t->lora.rank || lora.cfg.alpha != t->lora.alpha ||
        lora.cfg.targets != t->lora.targets) {
        rc = plait_fail(PLAIT_EMISMATCH, "the evaluated adapter's LoRA config differs from the task's");
        goto exit;
    }
    if (t->lora.mode == PLAIT_LORA_MODE_FFA) { /* A as every device derives it from the task seed */
        if ((rc = plait_lora_setup(&seeded, &lora.model, &lora.cfg)) != 0) goto exit;
        plait_lora_init_weights(&seeded, t->lora.a_seed);
        memcpy(lora.params, seeded.params, lora.n_a * sizeof(float));
    } else if (t->lora.mode == PLAIT_LORA_MODE_FEDSA) {
        plait__agent_load_personal_b(a, &lora); /* the version's A with this device's own B */
    }
    j = calloc(1, sizeof(*j));
    if (!j) {
        rc = plait_fail(PLAIT_ENOMEM, "evaluation job");
        goto exit;
    }
    j->a = a;
    j->lora = &lora;
    j->B = (int)t->train.batch;
    j->T = (int)t->train.seq_len;
    atomic_init(&j->done, 0);
    if ((rc = eval_with_keepalive(c, j, round, deadline)) != 0) goto exit;
    if (a->cfg.seed != 0)
        plait_rng_seed_u64(&rng, a->cfg.seed, round);
    else if ((rc = plait_rng_seed_drbg(&rng, &a->drbg)) != 0)
        goto exit;
    p->n_words = PLAIT_WIRE_EVAL_WORDS;
    p->words = malloc(p->n_words * sizeof(uint32_t));
    if (!p->words) {
        rc = plait_fail(PLAIT_ENOMEM, "evaluation words");
        goto exit;
    }
    if ((rc = plait__agent_eval_words(&qc, j->loss, t->eval_loss_max, &rng, p->words)) != 0) goto exit;
    p->round_id = round;
    p->adapter_version = t->adapter_version;
    p->num_examples = 1;
    PLAIT_LOG(PLAIT_LOG_INFO, "agent %s: round %llu: evaluated adapter v%llu on the held-out split (%u bits)",
              a->device_id, (unsigned long long)round, (unsigned long long)t->adapter_version, t->quant_bits);
exit:
    if (j) {
        j->loss = 0.0;
        free(j);
    }
    plait_rng_wipe(&rng);
    free(blob);
    plait_lora_free(&seeded);
    if (lora.params) plait_zeroize(lora.params, lora.n_params * sizeof(float)); /* holds the personal B */
    plait_lora_free(&lora);
    if (rc != 0) plait__agent_pending_free(p);
    return rc;
}
