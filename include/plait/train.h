/*
 * train.h: LoRA fine-tuning of a frozen llama2.c-architecture model on CPU.
 *
 * The trainer runs forward and backward over B sequences of T tokens and
 * keeps gradients and AdamW state for the adapter only: the base model is
 * read-only and has no gradient or optimizer state (gradients still flow
 * through the frozen weights to reach the adapters of lower layers).
 *
 * Example (one optimizer step per batch, no accumulation):
 *     plait_train_config_t cfg = plait_train_config_default();
 *     cfg.B = 8; cfg.T = 128; cfg.threads = 2;
 *     plait_trainer_t *tr;
 *     if (plait_train_create(&tr, &model, &lora, &cfg) != 0) die(plait_errmsg());
 *     for (int s = 0; s < steps; s++) {
 *         float loss;
 *         next_batch(tokens);                    // B rows of T + 1 token ids
 *         if (plait_train_forward_backward(tr, tokens, &loss) != 0) die(...);
 *         if (plait_train_step(tr) != 0) die(...);
 *     }
 *     plait_train_destroy(tr);
 *
 * Loss and gradient semantics. A micro-batch is B rows of T + 1 tokens; row b
 * feeds tokens[b][0..T-1] and predicts tokens[b][1..T]. The loss a call
 * reports is the mean cross-entropy over its B*T positions. The gradient it
 * ADDS to the gradient arena is that of (its mean loss) / accum_steps, so
 * after accum_steps calls the arena holds the gradient of the mean loss over
 * all accum_steps*B*T positions: accumulating k micro-batches of B rows is
 * exactly one batch of k*B rows. plait_train_step() requires exactly
 * accum_steps calls since the previous step.
 *
 * Memory (floats; N = B*T, S = number of adapted (layer, projection) slots,
 * P = threads, VC = rows of logits per thread (PLAIT_TRAIN_LOGIT_BYTES), A(T) = sum over row blocks of 32
 * of rows * (last row + 1), about T*T/2 + 16*T: the causal attention
 * probabilities of one head are stored without the masked triangle):
 *   saved for backward  L*(6*N*C + 2*N*KV + 3*N*H + 2*N + B*NH*A(T))
 *                       + 2*N*C + N + S*N*R
 *   scratch             N*(4*C + 2*KV + 3*H + R) + 2*N (per-row loss, double)
 *                       + P*(VC*V + 32*T + 7*T*HS) + 2*T*HS (RoPE tables)
 *   grads, m, v         each n_params (full) or n_params - n_a (train_a = 0)
 * For stories260K (C 64, H 172, L 5, NH 8, KV 32, V 512), B 8, T 128, R 8 on
 * wq,wv and 2 threads that is 35.7 MiB (plait_train_memory_bytes), a third of
 * it attention probabilities.
 * All of it is allocated once in plait_train_create(); forward, backward and
 * step allocate nothing.
 *
 * Thread-safety: a trainer is used by one thread at a time; it borrows the
 * model (shared, read-only) and the adapter (written by plait_train_step, so
 * no one else may write it meanwhile).
 */
#ifndef PLAIT_TRAIN_H
#define PLAIT_TRAIN_H

#include "plait/lora.h"
#include "plait/model.h"
#include "plait/tensor.h"

/** Bytes of logits one thread materializes at a time (memory/speed trade-off):
 *  VC = clamp(PLAIT_TRAIN_LOGIT_BYTES / (4 V), 16, 256) rows. */
#define PLAIT_TRAIN_LOGIT_BYTES (8u << 20)

typedef struct {
    int B;              /* sequences per micro-batch (default 8) */
    int T;              /* tokens per sequence, 1..model seq_len (default 128) */
    double lr;          /* peak learning rate (default 1e-3, the usual LoRA choice) */
    double beta1;       /* AdamW first-moment decay (default 0.9, torch default) */
    double beta2;       /* AdamW second-moment decay (default 0.999, torch default) */
    double eps;         /* AdamW denominator epsilon (default 1e-8, torch default) */
    double weight_decay; /* decoupled weight decay (default 0.01, torch AdamW default) */
    double grad_clip;   /* clip the global L2 norm of the gradient to this; 0 = off (default 1.0) */
    int accum_steps;    /* micro-batches per optimizer step (default 1 = no accumulation) */
    int warmup_steps;   /* linear warm-up from lr/warmup to lr over this many steps (default 0) */
    int total_steps;    /* cosine decay from lr to min_lr_frac*lr ends here; 0 = constant lr (default 0) */
    double min_lr_frac; /* floor of the cosine decay as a fraction of lr (default 0.1) */
    int train_a;        /* 1 = train A and B; 0 = FFA-LoRA: A frozen, no state for A (default 1) */
    int threads;        /* threads of the trainer's own pool when pool is NULL (default 1) */
    plait_pool_t *pool; /* borrowed pool to run on, or NULL to create one (default NULL) */
    size_t max_bytes;   /* refuse (PLAIT_ETOOBIG) a trainer whose buffers exceed this (default 4 GiB) */
    int base_bf16;      /* 1 = the frozen base's matmuls in BF16 where the CPU has AVX512-BF16 (weights
                         * rounded once at create, activations per product; adapter, gradients and
                         * optimizer stay float32); ignored elsewhere; 0 = float32 (default 0) */
    double prox_mu;     /* FedProx (Li et al. 2020): > 0 adds (mu/2)·||w - w0||² to the objective, w0 the
                           trainable parameters at create or at the last plait_train_reset(); each
                           micro-batch adds mu·(w - w0)/accum_steps to the gradient (the reported loss
                           stays the cross-entropy) (default 0: off) */
} plait_train_config_t;

typedef struct plait_trainer_s plait_trainer_t;

/** \brief The defaults commented in plait_train_config_t. */
plait_train_config_t plait_train_config_default(void);

/**
 * \brief Check a configuration against a model.
 * \param cfg never NULL.
 * \param m   the model to train on, or NULL to skip the checks that need it (T <= seq_len).
 * \return 0 or PLAIT_EINVAL naming the bad field in plait_errmsg().
 */
int plait_train_config_validate(const plait_train_config_t *cfg, const plait_model_t *m);

/**
 * \brief Learning rate of the schedule for optimizer step `step` (0-based).
 *        Warm-up: lr*(step+1)/warmup_steps for step < warmup_steps. Then, if
 *        total_steps > warmup_steps, cosine from lr down to min_lr_frac*lr
 *        at step total_steps (and that floor afterwards); otherwise lr.
 */
double plait_train_lr_at(const plait_train_config_t *cfg, long step);

/**
 * \brief Create a trainer; allocates every buffer it will ever use.
 * \param out  receives the trainer (NULL on failure).
 * \param m    loaded model; borrowed, must outlive the trainer.
 * \param lora adapter set up for m's shape; borrowed, must outlive the trainer;
 *             plait_train_step() updates its params in place.
 * \param cfg  configuration; copied.
 * \return 0, PLAIT_EINVAL (bad config, or lora shaped for another model), PLAIT_ENOMEM.
 */
int plait_train_create(plait_trainer_t **out /* OUT */, const plait_model_t *m, plait_lora_t *lora,
                       const plait_train_config_t *cfg) PLAIT_WUR;

/** \brief Free everything the trainer owns (not the model, adapter or a borrowed pool). NULL is safe. */
void plait_train_destroy(plait_trainer_t *tr);

/**
 * \brief Forward and backward on one micro-batch; adds its gradient (see the
 *        semantics above) to the gradient arena.
 * \param tokens B*(T+1) token ids, row-major; every id must be in 0..V-1.
 * \param loss   receives the mean cross-entropy of the micro-batch; may be NULL.
 * \return 0; PLAIT_EINVAL for a bad token id (naming its row and column) or
 *         more than accum_steps micro-batches without a step. Gradients are
 *         untouched on error.
 */
int plait_train_forward_backward(plait_trainer_t *tr, const int32_t *tokens, float *loss /* OUT */) PLAIT_WUR;

/**
 * \brief One optimizer step: clip the accumulated gradient to grad_clip
 *        (global L2 norm), apply torch.optim.AdamW with the scheduled lr and
 *        bias correction, then zero the gradients.
 * \return 0; PLAIT_EINVAL if fewer than accum_steps micro-batches were
 *         accumulated since the previous step (nothing changes then).
 */
int plait_train_step(plait_trainer_t *tr) PLAIT_WUR;

/**
 * \brief Mean cross-entropy of n_rows rows of T + 1 tokens, forward only
 *        (held-out evaluation); does not touch gradients or optimizer state.
 * \return 0 or PLAIT_EINVAL (bad token id, n_rows < 1).
 */
int plait_train_eval_loss(plait_trainer_t *tr, const int32_t *tokens, size_t n_rows, float *loss /* OUT */) PLAIT_WUR;

/**
 * \brief Ditto's proximal term (Li et al. 2021): from now on every
 *        plait_train_forward_backward() also adds the gradient of
 *        lambda/2 * ||w - ref||^2 over the trained parameters (its
 *        1/accum_steps share per micro-batch), so a step minimizes the loss
 *        plus that term; it counts in the clipped norm. The reported loss
 *        does not include it. Survives plait_train_reset().
 * \param ref    n_params floats indexed like lora->params (borrowed; must
 *               outlive its use); NULL with lambda 0.
 * \param lambda >= 0; 0 turns the term off (the default).
 * \return 0 or PLAIT_EINVAL.
 */
int plait_train_set_prox(plait_trainer_t *tr, const float *ref, double lambda) PLAIT_WUR;

/**
 * \brief Sum of the cross-entropy of the first n_pred predictions of one
 *        row of T + 1 tokens (forward only): attention is causal, so
 *        tokens after position n_pred do not change them (they must still
 *        be valid ids). Evaluates a text shorter than one window.
 * \param n_pred 1..T. \return 0, PLAIT_EINVAL, or PLAIT_EPROTO (non-finite).
 */
int plait_train_eval_prefix(plait_trainer_t *tr, const int32_t *tokens, size_t n_pred, double *loss_sum /* OUT */) PLAIT_WUR;

/**
 * \brief The logits of one row of T + 1 tokens (forward only, the trainer's
 *        adapter and logit bias included): logits[t * V + v] scores token v
 *        after tokens[0..t]. Does not touch gradients or optimizer state.
 * \param logits (T, V) floats (OUT).
 * \return 0, PLAIT_EINVAL (bad arguments or token id), PLAIT_EPROTO (a
 *         non-finite logit).
 */
int plait_train_eval_logits(plait_trainer_t *tr, const int32_t *tokens, float *logits /* OUT */) PLAIT_WUR;

/**
 * \brief plait_train_eval_logits, and the final normed hidden states the
 *        classifier reads: hidden[t * C + c] (C = plait_train_dim) for the
 *        prediction after tokens[0..t] (the keys of a kNN memory, knn.h).
 * \param hidden (T, C) floats (OUT), or NULL.
 */
int plait_train_eval_hidden(plait_trainer_t *tr, const int32_t *tokens, float *logits /* OUT */,
                            float *hidden /* OUT, may be NULL */) PLAIT_WUR;

/**
 * \brief A logit bias: from now on every forward pass (training, evaluation,
 *        plait_train_eval_logits) adds bias[v] to the logit of token v, as a
 *        device's personal output bias does at inference (personal.h). It is
 *        not trained here. Survives plait_train_reset().
 * \param bias V floats, borrowed (must outlive its use), or NULL for none
 *             (the default).
 * \return 0 or PLAIT_EINVAL (NULL trainer, a non-finite value).
 */
int plait_train_set_logit_bias(plait_trainer_t *tr, const float *bias) PLAIT_WUR;
/** \brief V, the model's vocabulary size (0 for NULL). */
size_t plait_train_vocab_size(const plait_trainer_t *tr);

/**
 * \brief The gradient arena: grads[i] is the gradient of
 *        lora->params[plait_train_grads_offset(tr) + i]. Offset is 0 when A is
 *        trained and lora->n_a under FFA-LoRA (then only B has gradients).
 *        Valid until the trainer is destroyed; zeroed by plait_train_step().
 */
const float *plait_train_grads(const plait_trainer_t *tr);
/** \brief Number of floats in the gradient arena. */
size_t plait_train_grads_count(const plait_trainer_t *tr);
/** \brief Index into lora->params of grads[0]. */
size_t plait_train_grads_offset(const plait_trainer_t *tr);
/** \brief L2 norm of the gradient arena now (double accumulation). */
double plait_train_grad_norm(const plait_trainer_t *tr);
/** \brief Optimizer steps taken so far. */
long plait_train_steps_done(const plait_trainer_t *tr);
/** \brief Norm of the gradient before clipping at the last step (0 before any). */
double plait_train_last_grad_norm(const plait_trainer_t *tr);
/** \brief Bytes the trainer allocated at create (its whole footprint; the model
 *         and adapter are not counted). Constant for the trainer's life. */
size_t plait_train_memory_bytes(const plait_trainer_t *tr);
/** \brief The proximal term (mu/2)·||w - w0||² now (0 when prox_mu is 0). */
double plait_train_prox_value(const plait_trainer_t *tr);
/** \brief T, the tokens per sequence the trainer was created for. */
int plait_train_seq_len(const plait_trainer_t *tr);
/** \brief C, the model's hidden width (0 for NULL). */
size_t plait_train_dim(const plait_trainer_t *tr);
/** \brief B, the sequences per micro-batch the trainer was created for. */
int plait_train_batch_size(const plait_trainer_t *tr);

/**
 * \brief Forget all training state (gradients, AdamW moments, step count,
 *        micro-batch count) so the trainer starts afresh on whatever the
 *        borrowed adapter now holds, as a newly created one would. Lets one
 *        trainer serve many clients in turn (the simulator) without
 *        reallocating its activation arena. With prox_mu > 0 the adapter's
 *        trainable parameters now become the proximal anchor w0.
 * \param tr a trainer; NULL does nothing.
 */
void plait_train_reset(plait_trainer_t *tr);

#endif /* PLAIT_TRAIN_H */
