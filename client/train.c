/*
 * train.c: LoRA training engine: forward, backward and AdamW for adapters on
 * a frozen llama2.c-architecture model (after llm.c train_gpt2.c).
 *
 * Shape letters (as in model.h): B = batch (sequences), T = sequence length,
 * N = B*T rows, C = dim, H = hidden_dim, L = n_layers, NH = n_heads,
 * NKV = n_kv_heads, HS = head_size, KV = kv_dim, V = vocab_size, R = rank,
 * P = threads.
 *
 * Invariants:
 *  - Every buffer is allocated in plait_train_create(): one activation arena
 *    (forward values saved for backward plus backward scratch), one gradient
 *    arena, one arena each for AdamW m and v. Forward, backward and step
 *    allocate nothing.
 *  - grads[i] is the gradient of lora->params[goff + i], where goff is 0 when
 *    A is trained and lora->n_a under FFA-LoRA (train_a = 0; A then has no
 *    gradient and no optimizer state). m and v mirror grads exactly, so the
 *    optimizer and clipping are flat loops over one span.
 *  - The base model is never written and has no gradient; gradients flow
 *    through its frozen weights (dinp) only as far down as an adapter needs.
 *  - A LoRA projection stores u = s * x·Aᵀ (N, R) in forward and reuses it
 *    for y += u·Bᵀ, for dB = dyᵀ·u and nowhere recomputes x·Aᵀ.
 *  - Projections and the classifier go through plait_matmul_* (tensor.c) so
 *    they share its optimized kernels. The layer kernels (train_layers.c)
 *    are threaded over rows, or over (sequence, key/value head) pairs for
 *    attention, and their inner loops run on contiguous memory through a
 *    table of SIMD kernels picked at run time (train_kern.h; train_avx2.c)
 *    with portable twins (train_kern.c) that tests force and compare.
 *  - Causal attention probabilities are stored in row blocks of ATT_BLOCK
 *    without the masked triangle; the classifier's (N, V) logits never exist
 *    at once (tr->vc rows per thread at a time, see logit_rows()).
 *  - Results do not depend on the thread count: every element is computed
 *    by one task in a fixed order (the sim's 1- vs 2-thread checksum).
 *  - Sums that decide the match with the float64 reference (the loss, the
 *    softmax normalizers, the gradient norm, AdamW) accumulate in double.
 *  - cfg.base_bf16 (AVX512-BF16 CPUs): the frozen base's products read a
 *    BF16 copy packed at create (make_bf16_base); everything else, the
 *    adapter's products and all gradients included, stays float32.
 *
 * Workload: one micro-batch is a few GFLOP at most (stories260K, B 8, T 128:
 * about 0.8 GMAC per step, ~30 ms on one core); the pool is dispatched a few
 * dozen times per layer.
 */
#include "plait/train.h"
#include "plait/crypto.h"
#include "tensor_int.h"
#include "train_int.h"

#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* torch clip_grad_norm_: coef = max_norm / (norm + 1e-6). */
#define CLIP_EPS 1e-6

plait_train_config_t plait_train_config_default(void)
{
    plait_train_config_t c;
    memset(&c, 0, sizeof(c));
    c.B = 8;              /* 8 sequences: fits a phone's memory for small models */
    c.T = 128;            /* 128 tokens per sequence */
    c.lr = 1e-3;          /* the usual LoRA learning rate */
    c.beta1 = 0.9;        /* torch.optim.AdamW default */
    c.beta2 = 0.999;      /* torch.optim.AdamW default */
    c.eps = 1e-8;         /* torch.optim.AdamW default */
    c.weight_decay = 0.01; /* torch.optim.AdamW default */
    c.grad_clip = 1.0;    /* global-norm clipping, as most fine-tuning recipes do */
    c.accum_steps = 1;    /* one micro-batch per step */
    c.warmup_steps = 0;   /* no warm-up */
    c.total_steps = 0;    /* no decay: constant lr */
    c.min_lr_frac = 0.1;  /* cosine floor at 10% of lr when decay is on */
    c.train_a = 1;        /* train both A and B */
    c.threads = 1;        /* single-threaded unless asked */
    c.pool = NULL;        /* the trainer creates its own pool of `threads` */
    c.max_bytes = (size_t)4 << 30; /* 4 GiB: far above any small model's need; phones set less */
    c.base_bf16 = 0;      /* float32 base */
    c.prox_mu = 0.0;      /* no proximal term: plain local training (FedAvg) */
    return c;
}

int plait_train_config_validate(const plait_train_config_t *c, const plait_model_t *m)
{
    if (c->B < 1 || c->B > 65536) return plait_fail(PLAIT_EINVAL, "train: B = %d is outside 1..65536", c->B);
    if (c->T < 1) return plait_fail(PLAIT_EINVAL, "train: T = %d must be at least 1", c->T);
    if (m && c->T > m->cfg.seq_len)
        return plait_fail(PLAIT_EINVAL, "train: T = %d exceeds the model's seq_len %d", c->T, m->cfg.seq_len);
    if ((size_t)c->B * (size_t)c->T > ((size_t)1 << 24))
        return plait_fail(PLAIT_EINVAL, "train: B*T = %zu exceeds 2^24 positions", (size_t)c->B * (size_t)c->T);
    if (c->max_bytes == 0) return plait_fail(PLAIT_EINVAL, "train: max_bytes must be positive");
    if (!(c->lr > 0.0) || !isfinite(c->lr)) return plait_fail(PLAIT_EINVAL, "train: lr %g must be positive", c->lr);
    if (!(c->beta1 >= 0.0 && c->beta1 < 1.0))
        return plait_fail(PLAIT_EINVAL, "train: beta1 %g is outside [0, 1)", c->beta1);
    if (!(c->beta2 >= 0.0 && c->beta2 < 1.0))
        return plait_fail(PLAIT_EINVAL, "train: beta2 %g is outside [0, 1)", c->beta2);
    if (!(c->eps > 0.0) || !isfinite(c->eps)) return plait_fail(PLAIT_EINVAL, "train: eps %g must be positive", c->eps);
    if (!(c->weight_decay >= 0.0) || !isfinite(c->weight_decay))
        return plait_fail(PLAIT_EINVAL, "train: weight_decay %g must be >= 0", c->weight_decay);
    if (!(c->grad_clip >= 0.0) || !isfinite(c->grad_clip))
        return plait_fail(PLAIT_EINVAL, "train: grad_clip %g must be >= 0 (0 = off)", c->grad_clip);
    if (c->accum_steps < 1 || c->accum_steps > 1 << 20)
        return plait_fail(PLAIT_EINVAL, "train: accum_steps %d is outside 1..2^20", c->accum_steps);
    if (c->warmup_steps < 0) return plait_fail(PLAIT_EINVAL, "train: warmup_steps %d < 0", c->warmup_steps);
    if (c->total_steps < 0) return plait_fail(PLAIT_EINVAL, "train: total_steps %d < 0", c->total_steps);
    if (!(c->min_lr_frac >= 0.0 && c->min_lr_frac <= 1.0))
        return plait_fail(PLAIT_EINVAL, "train: min_lr_frac %g is outside [0, 1]", c->min_lr_frac);
    if (c->train_a != 0 && c->train_a != 1) return plait_fail(PLAIT_EINVAL, "train: train_a %d is not 0 or 1", c->train_a);
    if (c->base_bf16 != 0 && c->base_bf16 != 1)
        return plait_fail(PLAIT_EINVAL, "train: base_bf16 %d is not 0 or 1", c->base_bf16);
    if (!(c->prox_mu >= 0.0 && c->prox_mu <= 1e4))
        return plait_fail(PLAIT_EINVAL, "train: prox_mu %g is outside [0, 10000]", c->prox_mu);
    if (!c->pool && (c->threads < 1 || c->threads > 256))
        return plait_fail(PLAIT_EINVAL, "train: threads %d is outside 1..256", c->threads);
    return 0;
}

double plait_train_lr_at(const plait_train_config_t *c, long step)
{
    if (step < 0) step = 0;
    if (c->warmup_steps > 0 && step < c->warmup_steps) return c->lr * (double)(step + 1) / (double)c->warmup_steps;
    if (c->total_steps <= c->warmup_steps) return c->lr;
    double min_lr = c->lr * c->min_lr_frac;
    if (step >= c->total_steps) return min_lr;
    double progress = (double)(step - c->warmup_steps) / (double)(c->total_steps - c->warmup_steps);
    return min_lr + 0.5 * (1.0 + cos(M_PI * progress)) * (c->lr - min_lr);
}

/* ------------------------------------------------------ LoRA projections */

static float *grad_of(plait_trainer_t *tr, const float *param)
{
    size_t idx = (size_t)(param - tr->lora->params);
    if (idx < tr->goff) return NULL; /* A under FFA-LoRA: no gradient */
    return tr->grads + (idx - tr->goff);
}

/* x *= f over n floats (N*R spans: too small to dispatch to the pool). */
static void scale_span(float *x, size_t n, float f)
{
    for (size_t i = 0; i < n; i++) x[i] *= f;
}

/* y (N, out) (=|+=) x (N, in) · Wᵀ + s * (x · Aᵀ) · Bᵀ; keeps u = s * x·Aᵀ. */
static void proj_forward(plait_trainer_t *tr, float *y, const float *x, size_t l, plait_proj_t p, size_t N,
                         int accumulate)
{
    int in, out;
    plait_proj_shape(&tr->m->cfg, p, &in, &out);
    size_t slot = plait_lora_slot((int)l, p);
    plait__matmul_forward_bf16(tr->pool, y, x, plait_model_proj(tr->m, (int)l, p), tr->bpk ? tr->bpk[2 * slot] : NULL,
                               N, (size_t)in, (size_t)out, accumulate);
    if (tr->m->bias && p <= PLAIT_WV) { /* q, k, v biases (Qwen2) */
        const float *bias = tr->m->bias[l * 3 + (size_t)p];
        for (size_t n = 0; n < N; n++)
            for (size_t o = 0; o < (size_t)out; o++) y[n * (size_t)out + o] += bias[o];
    }
    const float *A = tr->lora->A[slot];
    if (!A) return;
    float *u = tr->u[slot];
    plait_matmul_forward(tr->pool, u, x, A, N, (size_t)in, tr->R, 0);
    scale_span(u, N * tr->R, tr->lora->scaling);
    plait_matmul_forward(tr->pool, y, u, tr->lora->B[slot], N, tr->R, (size_t)out, 1);
}

/* Given dy (N, out): dB += dyᵀ·u, dA += (s·dy·B)ᵀ·x (when A is trained) and,
 * if dx != NULL, dx (N, in) += dy·W + s·(dy·B)·A. */
static void proj_backward(plait_trainer_t *tr, float *dx, const float *dy, const float *x, size_t l, plait_proj_t p,
                          size_t N)
{
    int in, out;
    plait_proj_shape(&tr->m->cfg, p, &in, &out);
    size_t slot = plait_lora_slot((int)l, p);
    const float *A = tr->lora->A[slot];
    if (A) {
        const float *Bw = tr->lora->B[slot];
        float *dA = grad_of(tr, A), *dB = grad_of(tr, Bw);
        memset(tr->du, 0, N * tr->R * sizeof(float));
        plait_matmul_backward(tr->pool, tr->du, dB, dy, tr->u[slot], Bw, N, tr->R, (size_t)out);
        scale_span(tr->du, N * tr->R, tr->lora->scaling);
        if (dx || dA) plait_matmul_backward(tr->pool, dx, dA, tr->du, x, A, N, (size_t)in, tr->R);
    }
    if (dx)
        plait__matmul_backward_bf16(tr->pool, dx, dy, plait_model_proj(tr->m, (int)l, p),
                                    tr->bpk ? tr->bpk[2 * slot + 1] : NULL, N, (size_t)in, (size_t)out);
}

/* The frozen base in BF16 (cfg.base_bf16): every projection and the
 * classifier rounded once (nearest even) from whatever type the model holds
 * and packed for both products it takes part in (plait__bf16_pack), so no
 * product packs W again; the model itself is not touched. */
static int make_bf16_base(plait_trainer_t *tr)
{
    const plait_model_config_t *mc = &tr->m->cfg;
    size_t n = tr->L * PLAIT_NPROJ + 1, elems = 0, biggest = tr->V * tr->C;
    for (size_t i = 0; i < n; i++) {
        int in = (int)tr->C, out = (int)tr->V;
        if (i + 1 < n) plait_proj_shape(mc, (plait_proj_t)(i % PLAIT_NPROJ), &in, &out);
        size_t io = (size_t)in * (size_t)out;
        if (io > biggest) biggest = io;
        for (int bwd = 0; bwd < 2; bwd++) /* 64-byte aligned panels */
            elems += (plait__bf16_packed_elems((size_t)in, (size_t)out, bwd) + 31) & ~(size_t)31;
    }
    if (tr->bytes > tr->cfg.max_bytes || elems > (tr->cfg.max_bytes - tr->bytes) / 2)
        return plait_fail(PLAIT_ETOOBIG, "train: the BF16 base copy (%zu MiB) is above the max_bytes limit",
                          elems * 2 >> 20);
    tr->bpk = calloc(2 * n, sizeof(*tr->bpk));
    tr->bf16 = aligned_alloc(64, elems * 2);
    uint16_t *rowmajor = malloc(biggest * 2); /* one matrix at a time, freed below */
    float *row = malloc((tr->C > tr->H ? tr->C : tr->H) * sizeof(float));
    if (!tr->bpk || !tr->bf16 || !rowmajor || !row) {
        free(rowmajor);
        free(row);
        return plait_fail(PLAIT_ENOMEM, "train: %zu MiB for the BF16 base copy", elems * 2 >> 20);
    }
    uint16_t *dst = tr->bf16;
    for (size_t i = 0; i < n; i++) {
        int in = (int)tr->C, out = (int)tr->V;
        const plait_wmat_t *w = plait_model_classifier(tr->m);
        if (i + 1 < n) {
            plait_proj_shape(mc, (plait_proj_t)(i % PLAIT_NPROJ), &in, &out);
            w = plait_model_proj(tr->m, (int)(i / PLAIT_NPROJ), (plait_proj_t)(i % PLAIT_NPROJ));
        }
        for (size_t o = 0; o < (size_t)out; o++) {
            plait_dequant_row(row, w, o, 0, (size_t)in);
            plait_quantize_row(rowmajor + o * (size_t)in, PLAIT_DT_BF16, row, (size_t)in); /* BF16 cannot fail */
        }
        for (int bwd = 0; bwd < 2; bwd++) {
            plait__bf16_pack(dst, rowmajor, (size_t)in, (size_t)out, bwd);
            tr->bpk[2 * i + (size_t)bwd] = dst;
            dst += (plait__bf16_packed_elems((size_t)in, (size_t)out, bwd) + 31) & ~(size_t)31;
        }
    }
    free(rowmajor);
    free(row);
    tr->bytes += elems * 2 + 2 * n * sizeof(*tr->bpk);
    return 0;
}

/* ------------------------------------------------------ forward/backward */

static int check_tokens(const plait_trainer_t *tr, const int32_t *tokens, size_t rows)
{
    size_t W = tr->T + 1;
    for (size_t i = 0; i < rows * W; i++) {
        if (tokens[i] < 0 || (size_t)tokens[i] >= tr->V)
            return plait_fail(PLAIT_EINVAL, "train: token %d at row %zu, column %zu is outside 0..%zu", tokens[i],
                              i / W, i % W, tr->V - 1);
    }
    return 0;
}

/* Slices of the saved activations for layer l. */
#define LNC(ptr, l) ((ptr) + (l) * N_full * C)

/* Forward over nb <= B rows; returns the mean loss. With dscale > 0 the
 * classifier also leaves dlnf in tr->dln for backward; with logits != NULL it
 * writes the (nb * T, V) logit rows there. */
static double forward_logits(plait_trainer_t *tr, const int32_t *tokens, size_t nb, float dscale, float *logits)
{
    size_t T = tr->T, C = tr->C, KV = tr->KV, H = tr->H, N = nb * T, N_full = tr->B * T;
    const plait_model_weights_t *w = &tr->m->w;
    /* Embedding: resid[0] rows are token embeddings. */
    for (size_t n = 0; n < N; n++) {
        int32_t tok = tokens[(n / T) * (T + 1) + n % T];
        plait_dequant_row(tr->resid + n * C, plait_model_embedding(tr->m), (size_t)tok, 0, C);
    }
    for (size_t l = 0; l < tr->L; l++) {
        float *x = LNC(tr->resid, l), *ln1 = LNC(tr->ln1, l), *q = LNC(tr->q, l), *atty = LNC(tr->atty, l);
        float *k = tr->k + l * N_full * KV, *v = tr->v + l * N_full * KV;
        float *res2 = LNC(tr->res2, l), *ln2 = LNC(tr->ln2, l);
        float *h1 = tr->h1 + l * N_full * H, *h3 = tr->h3 + l * N_full * H, *hg = tr->hg + l * N_full * H;
        float *att = tr->att + l * tr->B * tr->NH * tr->att_size;
        plait__rmsnorm_forward(tr, ln1, tr->rstd1 + l * N_full, x, w->rms_att + l * C, N, C);
        proj_forward(tr, q, ln1, l, PLAIT_WQ, N, 0);
        proj_forward(tr, k, ln1, l, PLAIT_WK, N, 0);
        proj_forward(tr, v, ln1, l, PLAIT_WV, N, 0);
        plait__rope_apply(tr, q, k, N, 1.0f);
        plait__attention_forward(tr, atty, att, q, k, v, nb);
        memcpy(res2, x, N * C * sizeof(float));
        proj_forward(tr, res2, atty, l, PLAIT_WO, N, 1);
        plait__rmsnorm_forward(tr, ln2, tr->rstd2 + l * N_full, res2, w->rms_ffn + l * C, N, C);
        proj_forward(tr, h1, ln2, l, PLAIT_W1, N, 0);
        proj_forward(tr, h3, ln2, l, PLAIT_W3, N, 0);
        plait__swiglu_forward(tr, hg, h1, h3, N);
        float *xn = LNC(tr->resid, l + 1);
        memcpy(xn, res2, N * C * sizeof(float));
        proj_forward(tr, xn, hg, l, PLAIT_W2, N, 1);
    }
    plait__rmsnorm_forward(tr, tr->lnf, tr->rstdf, LNC(tr->resid, tr->L), w->rms_final, N, C);
    job_t j = {.tr = tr, .out = dscale > 0.0f ? tr->dln : NULL, .out3 = logits, .n = N, .tokens = tokens,
               .scale = dscale};
    plait_pool_run(tr->pool, plait__classifier_items, &j, tr->P);
    double sum = 0.0;
    for (size_t n = 0; n < N; n++) sum += tr->row_loss[n];
    return sum / (double)N;
}

static double forward(plait_trainer_t *tr, const int32_t *tokens, size_t nb, float dscale)
{
    return forward_logits(tr, tokens, nb, dscale, NULL);
}

/* Backward over the full B rows; expects dlnf in tr->dln (from forward). */
static void backward(plait_trainer_t *tr)
{
    size_t T = tr->T, C = tr->C, KV = tr->KV, H = tr->H, N = tr->B * T, N_full = N;
    const plait_model_weights_t *w = &tr->m->w;
    const plait_lora_t *lo = tr->lora;
    memset(tr->dres, 0, N * C * sizeof(float));
    plait__rmsnorm_backward(tr, tr->dres, tr->dln, LNC(tr->resid, tr->L), tr->rstdf, w->rms_final, N, C);
    for (size_t li = tr->L; li-- > 0;) {
        size_t l = li;
        float *x = LNC(tr->resid, l), *ln1 = LNC(tr->ln1, l), *q = LNC(tr->q, l), *atty = LNC(tr->atty, l);
        float *k = tr->k + l * N_full * KV, *v = tr->v + l * N_full * KV;
        float *res2 = LNC(tr->res2, l), *ln2 = LNC(tr->ln2, l);
        float *h1 = tr->h1 + l * N_full * H, *h3 = tr->h3 + l * N_full * H, *hg = tr->hg + l * N_full * H;
        float *att = tr->att + l * tr->B * tr->NH * tr->att_size;
        /* FFN: resid[l+1] = res2 + W2(silu(W1 ln2) * W3 ln2). */
        memset(tr->dhg, 0, N * H * sizeof(float));
        proj_backward(tr, tr->dhg, tr->dres, hg, l, PLAIT_W2, N);
        plait__swiglu_backward(tr, tr->dh1, tr->dh3, tr->dhg, h1, h3, N);
        memset(tr->dln, 0, N * C * sizeof(float));
        proj_backward(tr, tr->dln, tr->dh1, ln2, l, PLAIT_W1, N);
        proj_backward(tr, tr->dln, tr->dh3, ln2, l, PLAIT_W3, N);
        plait__rmsnorm_backward(tr, tr->dres, tr->dln, res2, tr->rstd2 + l * N_full, w->rms_ffn + l * C, N, C);
        /* Attention: res2 = x + Wo(attention(rope(Wq ln1), rope(Wk ln1), Wv ln1)). */
        memset(tr->datty, 0, N * C * sizeof(float));
        proj_backward(tr, tr->datty, tr->dres, atty, l, PLAIT_WO, N);
        int need_dx = l > 0;
        int qkv_adapted = lo->A[plait_lora_slot((int)l, PLAIT_WQ)] || lo->A[plait_lora_slot((int)l, PLAIT_WK)] ||
                          lo->A[plait_lora_slot((int)l, PLAIT_WV)];
        if (!need_dx && !qkv_adapted) break; /* nothing below needs a gradient */
        plait__attention_backward(tr, tr->dq, tr->dk, tr->dv, tr->datty, att, q, k, v, tr->B);
        plait__rope_apply(tr, tr->dq, tr->dk, N, -1.0f);
        float *dx = need_dx ? tr->dln : NULL;
        if (dx) memset(dx, 0, N * C * sizeof(float));
        proj_backward(tr, dx, tr->dq, ln1, l, PLAIT_WQ, N);
        proj_backward(tr, dx, tr->dk, ln1, l, PLAIT_WK, N);
        proj_backward(tr, dx, tr->dv, ln1, l, PLAIT_WV, N);
        if (dx) plait__rmsnorm_backward(tr, tr->dres, dx, x, tr->rstd1 + l * N_full, w->rms_att + l * C, N, C);
    }
}

/* A proximal term's gradient coef·(w - w0) over the trainable parameters, a
 * 1/accum_steps share per micro-batch. */
static void prox_grad(plait_trainer_t *tr, const float *w0, double coef)
{
    const float *p = tr->lora->params + tr->goff;
    double k = coef / (double)tr->cfg.accum_steps;
    for (size_t i = 0; i < tr->n_grads; i++)
        tr->grads[i] = (float)((double)tr->grads[i] + k * ((double)p[i] - (double)w0[i]));
}

int plait_train_forward_backward(plait_trainer_t *tr, const int32_t *tokens, float *loss)
{
    if (!tr || !tokens) return plait_fail(PLAIT_EINVAL, "train: NULL trainer or tokens");
    if (tr->n_micro >= tr->cfg.accum_steps)
        return plait_fail(PLAIT_EINVAL, "train: %d micro-batches accumulated already (accum_steps %d): step first",
                          tr->n_micro, tr->cfg.accum_steps);
    int rc = check_tokens(tr, tokens, tr->B);
    if (rc != 0) return rc;
    float dscale = 1.0f / (float)((double)tr->B * (double)tr->T * (double)tr->cfg.accum_steps);
    double l = forward(tr, tokens, tr->B, dscale);
    /* A non-finite loss (an adapter or model that overflows float32) would
     * poison every gradient and then every parameter; refuse the batch and
     * leave the accumulated gradients as they were. */
    if (!isfinite(l))
        return plait_fail(PLAIT_EPROTO, "train: the loss is non-finite (the model or adapter overflows float32)");
    backward(tr);
    /* FedProx's (mu/2)·||w - w0||² (w0 = the parameters at create/reset) and Ditto's
     * (lambda/2)·||w - ref||² (personal.h): each adds coef·(w - w0) to the gradient. */
    if (tr->anchor) prox_grad(tr, tr->anchor, tr->cfg.prox_mu);
    if (tr->prox_ref && tr->prox_lambda > 0.0) prox_grad(tr, tr->prox_ref + tr->goff, tr->prox_lambda);
    tr->n_micro++;
    if (loss) *loss = (float)l;
    return 0;
}

double plait_train_prox_value(const plait_trainer_t *tr)
{
    if (!tr || !tr->anchor) return 0.0;
    const float *p = tr->lora->params + tr->goff;
    double s = 0.0;
    for (size_t i = 0; i < tr->n_grads; i++) {
        double d = (double)p[i] - (double)tr->anchor[i];
        s += d * d;
    }
    return 0.5 * tr->cfg.prox_mu * s;
}

int plait_train_set_prox(plait_trainer_t *tr, const float *ref, double lambda)
{
    if (!tr) return plait_fail(PLAIT_EINVAL, "train: NULL trainer");
    if (!(lambda >= 0.0) || !isfinite(lambda) || (lambda > 0.0 && !ref))
        return plait_fail(PLAIT_EINVAL, "train: proximal lambda must be finite and >= 0, with a reference");
    tr->prox_ref = lambda > 0.0 ? ref : NULL;
    tr->prox_lambda = lambda > 0.0 ? lambda : 0.0;
    return 0;
}

int plait_train_eval_prefix(plait_trainer_t *tr, const int32_t *tokens, size_t n_pred, double *loss_sum)
{
    if (!tr || !tokens || n_pred == 0 || n_pred > tr->T)
        return plait_fail(PLAIT_EINVAL, "train: prefix eval needs 1..%zu predictions", tr ? tr->T : 0);
    int rc = check_tokens(tr, tokens, 1);
    if (rc != 0) return rc;
    (void)forward(tr, tokens, 1, 0.0f);
    double sum = 0.0;
    for (size_t n = 0; n < n_pred; n++) sum += tr->row_loss[n];
    if (!isfinite(sum)) return plait_fail(PLAIT_EPROTO, "train: prefix eval: non-finite loss");
    if (loss_sum) *loss_sum = sum;
    return 0;
}

int plait_train_eval_logits(plait_trainer_t *tr, const int32_t *tokens, float *logits)
{
    return plait_train_eval_hidden(tr, tokens, logits, NULL);
}

int plait_train_eval_hidden(plait_trainer_t *tr, const int32_t *tokens, float *logits, float *hidden)
{
    if (!tr || !tokens || !logits) return plait_fail(PLAIT_EINVAL, "train: logits need a trainer, a row and a buffer");
    int rc = check_tokens(tr, tokens, 1);
    if (rc != 0) return rc;
    (void)forward_logits(tr, tokens, 1, 0.0f, logits);
    for (size_t i = 0; i < tr->T * tr->V; i++)
        if (!isfinite(logits[i])) return plait_fail(PLAIT_EPROTO, "train: non-finite logit at row %zu", i / tr->V);
    if (hidden) memcpy(hidden, tr->lnf, tr->T * tr->C * sizeof(float)); /* row 0's final normed states */
    return 0;
}

int plait_train_set_logit_bias(plait_trainer_t *tr, const float *bias)
{
    if (!tr) return plait_fail(PLAIT_EINVAL, "train: NULL trainer");
    if (bias)
        for (size_t v = 0; v < tr->V; v++)
            if (!isfinite(bias[v])) return plait_fail(PLAIT_EINVAL, "train: logit bias %zu is not finite", v);
    tr->logit_bias = bias;
    return 0;
}

size_t plait_train_vocab_size(const plait_trainer_t *tr)
{
    return tr ? tr->V : 0;
}

int plait_train_eval_loss(plait_trainer_t *tr, const int32_t *tokens, size_t n_rows, float *loss)
{
    if (!tr || !tokens || n_rows == 0) return plait_fail(PLAIT_EINVAL, "train: eval needs a trainer and >= 1 row");
    int rc = check_tokens(tr, tokens, n_rows);
    if (rc != 0) return rc;
    double sum = 0.0;
    for (size_t r = 0; r < n_rows; r += tr->B) {
        size_t nb = n_rows - r < tr->B ? n_rows - r : tr->B;
        sum += forward(tr, tokens + r * (tr->T + 1), nb, 0.0f) * (double)(nb * tr->T);
    }
    if (loss) *loss = (float)(sum / (double)(n_rows * tr->T));
    return 0;
}

/* ---------------------------------------------------------------- optimizer */

double plait_train_grad_norm(const plait_trainer_t *tr)
{
    double ss = 0.0;
    for (size_t i = 0; i < tr->n_grads; i++) ss += (double)tr->grads[i] * (double)tr->grads[i];
    return sqrt(ss);
}

int plait_train_step(plait_trainer_t *tr)
{
    if (!tr) return plait_fail(PLAIT_EINVAL, "train: NULL trainer");
    if (tr->n_micro != tr->cfg.accum_steps)
        return plait_fail(PLAIT_EINVAL, "train: step after %d of %d micro-batches", tr->n_micro, tr->cfg.accum_steps);
    const plait_train_config_t *c = &tr->cfg;
    size_t n = tr->n_grads;
    float *g = tr->grads, *p = tr->lora->params + tr->goff;
    double norm = plait_train_grad_norm(tr);
    tr->last_norm = norm;
    if (c->grad_clip > 0.0) {
        double coef = c->grad_clip / (norm + CLIP_EPS);
        if (coef < 1.0)
            for (size_t i = 0; i < n; i++) g[i] = (float)((double)g[i] * coef);
    }
    double lr = plait_train_lr_at(c, tr->steps);
    double t = (double)(tr->steps + 1);
    double bc1 = 1.0 - pow(c->beta1, t), bc2 = 1.0 - pow(c->beta2, t);
    double step_size = lr / bc1, bc2_sqrt = sqrt(bc2), decay = 1.0 - lr * c->weight_decay;
    plait__adamw_t h = {.b1 = c->beta1, .b2 = c->beta2, .step_size = step_size, .bc2_sqrt = bc2_sqrt,
                        .decay = decay, .eps = c->eps};
    plait__tkern()->adamw(p, tr->opt_m, tr->opt_v, g, n, &h);
    memset(g, 0, n * sizeof(float));
    tr->n_micro = 0;
    tr->steps++;
    return 0;
}

const float *plait_train_grads(const plait_trainer_t *tr) { return tr->grads; }
size_t plait_train_grads_count(const plait_trainer_t *tr) { return tr->n_grads; }
size_t plait_train_grads_offset(const plait_trainer_t *tr) { return tr->goff; }
long plait_train_steps_done(const plait_trainer_t *tr) { return tr->steps; }
double plait_train_last_grad_norm(const plait_trainer_t *tr) { return tr->last_norm; }
size_t plait_train_memory_bytes(const plait_trainer_t *tr) { return tr->bytes; }
int plait_train_seq_len(const plait_trainer_t *tr) { return (int)tr->T; }
size_t plait_train_dim(const plait_trainer_t *tr) { return tr ? tr->C : 0; }
int plait_train_batch_size(const plait_trainer_t *tr) { return (int)tr->B; }

void plait_train_reset(plait_trainer_t *tr)
{
    if (!tr) return;
    memset(tr->grads, 0, tr->n_grads * sizeof(float));
    memset(tr->opt_m, 0, tr->n_grads * sizeof(float));
    memset(tr->opt_v, 0, tr->n_grads * sizeof(float));
    tr->n_micro = 0;
    tr->steps = 0;
    tr->last_norm = 0.0;
    if (tr->anchor) memcpy(tr->anchor, tr->lora->params + tr->goff, tr->n_grads * sizeof(float));
}

/* ---------------------------------------------------------------- lifecycle */

int plait_train_create(plait_trainer_t **out, const plait_model_t *m, plait_lora_t *lora,
                       const plait_train_config_t *cfg)
{
    if (!out) return plait_fail(PLAIT_EINVAL, "train: NULL out");
    *out = NULL;
    if (!m || !lora || !cfg || !lora->params) return plait_fail(PLAIT_EINVAL, "train: NULL model, adapter or config");
    int rc = plait_train_config_validate(cfg, m);
    if (rc != 0) return rc;
    const plait_model_config_t *mc = &m->cfg;
    if (memcmp(&lora->model, mc, sizeof(*mc)) != 0)
        return plait_fail(PLAIT_EINVAL, "train: the adapter was set up for another model shape");
    plait_trainer_t *tr = calloc(1, sizeof(*tr));
    if (!tr) return plait_fail(PLAIT_ENOMEM, "train: trainer struct");
    tr->m = m;
    tr->lora = lora;
    tr->cfg = *cfg;
    tr->B = (size_t)cfg->B;
    tr->T = (size_t)cfg->T;
    tr->C = (size_t)mc->dim;
    tr->H = (size_t)mc->hidden_dim;
    tr->L = (size_t)mc->n_layers;
    tr->NH = (size_t)mc->n_heads;
    tr->NKV = (size_t)mc->n_kv_heads;
    tr->HS = (size_t)mc->head_size;
    tr->KV = (size_t)mc->kv_dim;
    tr->V = (size_t)mc->vocab_size;
    tr->R = (size_t)lora->cfg.rank;
    if (cfg->pool) {
        tr->pool = cfg->pool;
    } else {
        rc = plait_pool_create(&tr->pool, cfg->threads);
        if (rc != 0) { free(tr); return rc; }
        tr->own_pool = 1;
    }
    tr->P = (size_t)plait_pool_size(tr->pool);
    tr->att_size = att_block_offset((tr->T + ATT_BLOCK - 1) / ATT_BLOCK, tr->T);
    tr->vc = plait__logit_rows(tr->V);

    size_t B = tr->B, T = tr->T, C = tr->C, H = tr->H, L = tr->L, KV = tr->KV, R = tr->R, N = B * T;
    size_t n_slots = 0;
    for (size_t s = 0; s < L * PLAIT_NPROJ; s++) n_slots += lora->A[s] != NULL;
    /* Count the arena in doubles' worth of floats: sizes below are in floats. */
    size_t sizes[] = {
        (L + 1) * N * C, /* resid */
        L * N * C,       /* ln1 */
        L * N,           /* rstd1 */
        L * N * C,       /* q */
        L * N * KV,      /* k */
        L * N * KV,      /* v */
        L * B * tr->NH * tr->att_size, /* att */
        L * N * C,       /* atty */
        L * N * C,       /* res2 */
        L * N * C,       /* ln2 */
        L * N,           /* rstd2 */
        L * N * H,       /* h1 */
        L * N * H,       /* h3 */
        L * N * H,       /* hg */
        N * C,           /* lnf */
        N,               /* rstdf */
        n_slots * N * R, /* u */
        N * C, N * C, N * C, N * C, /* dres dln datty dq */
        N * KV, N * KV,  /* dk dv */
        N * H, N * H, N * H, /* dh1 dh3 dhg */
        N * R,           /* du */
        tr->P * plait__attn_scratch_floats(T, tr->HS), /* attn_scratch */
        tr->P * tr->vc * tr->V, /* logits */
        2 * N,           /* row_loss (doubles = 2 floats each) */
        T * tr->HS, T * tr->HS, /* rope cos, sin */
    };
    size_t n_sizes = sizeof(sizes) / sizeof(sizes[0]), total = 0;
    for (size_t i = 0; i < n_sizes; i++) {
        sizes[i] = (sizes[i] + 15) & ~(size_t)15; /* 64-byte aligned slices */
        total += sizes[i];
    }
    tr->goff = cfg->train_a ? 0 : lora->n_a;
    tr->n_grads = lora->n_params - tr->goff;
    /* Refuse before allocating: on a device with overcommit a too-large
     * arena is not an ENOMEM but a killed process. */
    if (total > cfg->max_bytes / sizeof(float) ||
        3 * tr->n_grads > cfg->max_bytes / sizeof(float) - total) {
        size_t need_mib = (total + 3 * tr->n_grads) / (1u << 18);
        plait_train_destroy(tr);
        return plait_fail(PLAIT_ETOOBIG, "train: B=%zu T=%zu needs %zu MiB, above the %zu MiB limit (max_bytes)",
                          B, T, need_mib, cfg->max_bytes >> 20);
    }
    tr->acts = aligned_alloc(64, total * sizeof(float));
    tr->u = calloc(L * PLAIT_NPROJ, sizeof(float *));
    tr->grads = calloc(tr->n_grads, sizeof(float));
    tr->opt_m = calloc(tr->n_grads, sizeof(float));
    tr->opt_v = calloc(tr->n_grads, sizeof(float));
    if (cfg->prox_mu > 0) tr->anchor = malloc(tr->n_grads * sizeof(float));
    if (!tr->acts || !tr->u || !tr->grads || !tr->opt_m || !tr->opt_v || (cfg->prox_mu > 0 && !tr->anchor)) {
        plait_train_destroy(tr);
        return plait_fail(PLAIT_ENOMEM, "train: %zu MiB of activations for B=%zu T=%zu",
                          total * sizeof(float) >> 20, B, T);
    }
    memset(tr->acts, 0, total * sizeof(float));
    tr->bytes_acts = total * sizeof(float);
    tr->bytes = total * sizeof(float) + (tr->anchor ? 4 : 3) * tr->n_grads * sizeof(float) +
                L * PLAIT_NPROJ * sizeof(float *) + sizeof(*tr);
    if (tr->anchor) memcpy(tr->anchor, lora->params + tr->goff, tr->n_grads * sizeof(float));
    float *ptr = tr->acts;
    size_t si = 0;
#define TAKE(field) (tr->field = ptr, ptr += sizes[si++])
    TAKE(resid); TAKE(ln1); TAKE(rstd1); TAKE(q); TAKE(k); TAKE(v); TAKE(att); TAKE(atty); TAKE(res2);
    TAKE(ln2); TAKE(rstd2); TAKE(h1); TAKE(h3); TAKE(hg); TAKE(lnf); TAKE(rstdf);
    float *u = ptr;
    ptr += sizes[si++];
    TAKE(dres); TAKE(dln); TAKE(datty); TAKE(dq); TAKE(dk); TAKE(dv); TAKE(dh1); TAKE(dh3); TAKE(dhg);
    TAKE(du); TAKE(attn_scratch); TAKE(logits);
    tr->row_loss = (double *)(void *)ptr;
    ptr += sizes[si++];
    TAKE(rope_cos); TAKE(rope_sin);
#undef TAKE
    PLAIT_ASSERT(si == n_sizes && ptr == tr->acts + total);
    for (size_t s = 0; s < L * PLAIT_NPROJ; s++) {
        if (!lora->A[s]) continue;
        tr->u[s] = u;
        u += N * R;
    }
    if (cfg->base_bf16 && plait_cpu_has_avx512_bf16()) {
        rc = make_bf16_base(tr);
        if (rc != 0) {
            plait_train_destroy(tr);
            return rc;
        }
    }
    /* RoPE tables computed as torch's precompute_freqs does, in float32:
     * freq_i = 1 / theta^(2i / HS), angle = pos * freq_i. */
    size_t half = tr->HS / 2;
    for (size_t i = 0; i < half; i++) {
        float freq = 1.0f / powf(mc->rope_theta, (float)(2 * i) / (float)tr->HS);
        for (size_t t = 0; t < T; t++) {
            float ang = ((float)t / mc->rope_scale) * freq, c = cosf(ang), sn = sinf(ang);
            tr->rope_cos[t * tr->HS + 2 * i] = c;
            tr->rope_cos[t * tr->HS + 2 * i + 1] = c;
            tr->rope_sin[t * tr->HS + 2 * i] = -sn;
            tr->rope_sin[t * tr->HS + 2 * i + 1] = sn;
        }
    }
    *out = tr;
    return 0;
}

void plait_train_destroy(plait_trainer_t *tr)
{
    if (!tr) return;
    if (tr->own_pool) plait_pool_destroy(tr->pool);
    /* Activations derive from private text and the gradients are unclipped:
     * both are secrets (STYLE §6). */
    if (tr->acts) plait_zeroize(tr->acts, tr->bytes_acts);
    if (tr->grads) plait_zeroize(tr->grads, tr->n_grads * sizeof(float));
    free(tr->acts);
    free(tr->u);
    free(tr->grads);
    free(tr->opt_m);
    free(tr->opt_v);
    free((void *)tr->bpk);
    free(tr->bf16);
    free(tr->anchor);
    free(tr);
}
