/*
 * train_int.h: the trainer's state (struct plait_trainer_s) and the layer
 * operations train.c composes, shared by train.c (configuration, forward,
 * backward, optimizer, allocation) and train_layers.c (RMSNorm, RoPE,
 * attention, SwiGLU, the fused classifier). Internal to client/.
 */
#ifndef PLAIT_TRAIN_INT_H
#define PLAIT_TRAIN_INT_H

#include "plait/train.h"
#include "train_kern.h"

#include <stddef.h>
#include <stdint.h>

struct plait_trainer_s {
    const plait_model_t *m;
    plait_lora_t *lora;
    plait_train_config_t cfg;
    plait_pool_t *pool;
    int own_pool;
    size_t B, T, C, H, L, NH, NKV, HS, KV, V, R, P;
    size_t att_size; /* floats of one (b, h) block-triangular probability matrix */
    size_t vc;       /* classifier rows per matmul call and thread (logit_rows()) */

    /* ---- activation arena: forward values kept for backward ---- */
    float *acts;  /* the arena */
    float *resid; /* (L+1, N, C) residual stream entering each layer; [L] enters the final norm */
    float *ln1;   /* (L, N, C) attention RMSNorm output */
    float *rstd1; /* (L, N) its 1/rms */
    float *q;     /* (L, N, C) queries after RoPE */
    float *k;     /* (L, N, KV) keys after RoPE */
    float *v;     /* (L, N, KV) values */
    float *att;   /* (L, B, NH, att_size) causal softmax probabilities in row blocks */
    float *atty;  /* (L, N, C) attention output, input of wo */
    float *res2;  /* (L, N, C) residual after attention */
    float *ln2;   /* (L, N, C) FFN RMSNorm output */
    float *rstd2; /* (L, N) */
    float *h1;    /* (L, N, H) w1 output (pre-activation) */
    float *h3;    /* (L, N, H) w3 output */
    float *hg;    /* (L, N, H) silu(h1) * h3, input of w2 */
    float *lnf;   /* (N, C) final RMSNorm output */
    float *rstdf; /* (N) */
    float **u;    /* [L * PLAIT_NPROJ] -> (N, R) s * x·Aᵀ, or NULL if not adapted */
    /* ---- backward scratch (one layer at a time) ---- */
    float *dres;         /* (N, C) gradient of the residual stream */
    float *dln;          /* (N, C) gradient of a norm output */
    float *datty;        /* (N, C) */
    float *dq;           /* (N, C) */
    float *dk;           /* (N, KV) */
    float *dv;           /* (N, KV) */
    float *dh1;          /* (N, H) */
    float *dh3;          /* (N, H) */
    float *dhg;          /* (N, H) */
    float *du;           /* (N, R) */
    float *attn_scratch; /* (P, attn_scratch_floats(T, HS)) per-thread attention scratch
                            (attn_scratch_t) */
    float *logits;       /* (P, vc, V) per-thread logit rows */
    double *row_loss;    /* (N) per-position loss, summed in order for determinism */
    const float *prox_ref; /* Ditto proximal reference, indexed like lora->params (borrowed), or NULL */
    double prox_lambda;    /* its weight lambda: the loss gains lambda/2 ||w - ref||^2 */
    const float *logit_bias; /* (V) added to every logit row (a personal output bias, personal.h), borrowed,
                              * or NULL */
    float *rope_cos;     /* (T, HS) cos(pos * freq_i) at 2i and 2i+1 */
    float *rope_sin;     /* (T, HS) -sin at 2i, +sin at 2i+1 */

    /* ---- parameters' state ---- */
    float *grads; /* (n_grads) mirrors lora->params[goff ..] */
    float *opt_m; /* (n_grads) AdamW first moment */
    float *opt_v; /* (n_grads) AdamW second moment */
    float *anchor; /* (n_grads) FedProx w0, or NULL when prox_mu is 0 */
    size_t n_grads, goff;
    const uint16_t **bpk; /* [2 * (L * PLAIT_NPROJ + 1)] the base's projections and (last) classifier
                           * as BF16 packed for the forward (even) and input-gradient (odd) products,
                           * when cfg.base_bf16 took effect, else NULL */
    uint16_t *bf16;       /* their storage */
    size_t bytes;      /* everything allocated at create */
    size_t bytes_acts; /* bytes of the activation arena (wiped on destroy) */
    int n_micro;       /* micro-batches accumulated since the last step */
    long steps;        /* optimizer steps taken */
    double last_norm;  /* gradient norm before clipping at the last step */
};

/* ------------------------------------------------------------------ config */

/* Each layer operation is a pool job over independent rows (or attention
 * pairs); job_t carries the arguments of whichever kernel runs. */
typedef struct {
    plait_trainer_t *tr;
    float *out, *out2, *out3;
    const float *in, *in2, *in3, *in4, *w;
    size_t nb, n, C, H;
    const int32_t *tokens;
    float scale;
} job_t;

/* Layer operations (train_layers.c); shapes as in train.c's header. */
void plait__rmsnorm_forward(plait_trainer_t *tr, float *out, float *rstd, const float *inp,
                            const float *w, size_t N, size_t C);
void plait__rmsnorm_backward(plait_trainer_t *tr, float *dinp, const float *dout, const float *inp,
                             const float *rstd, const float *w, size_t N, size_t C);
void plait__rope_apply(plait_trainer_t *tr, float *q, float *k, size_t N, float sgn);
size_t plait__attn_scratch_floats(size_t T, size_t HS);
void plait__attention_forward(plait_trainer_t *tr, float *out, float *att, const float *q,
                              const float *k, const float *v, size_t nb);
void plait__attention_backward(plait_trainer_t *tr, float *dq, float *dk, float *dv,
                               const float *dout, const float *att, const float *q, const float *k,
                               const float *v, size_t nb);
void plait__swiglu_forward(plait_trainer_t *tr, float *hg, const float *h1, const float *h3,
                           size_t N);
void plait__swiglu_backward(plait_trainer_t *tr, float *dh1, float *dh3, const float *dhg,
                            const float *h1, const float *h3, size_t N);
size_t plait__logit_rows(size_t V);
void plait__classifier_items(void *ctx, size_t b0, size_t e0);

#endif /* PLAIT_TRAIN_INT_H */
