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
 *    they share its optimized kernels. The kernels here are threaded over
 *    rows, or over (sequence, key/value head) pairs for attention, and their
 *    inner loops run on contiguous memory, with an AVX2+FMA path picked at
 *    run time and a portable twin that tests force and compare.
 *  - Causal attention probabilities are stored in row blocks of ATT_BLOCK
 *    without the masked triangle; the classifier's (N, V) logits never exist
 *    at once (tr->vc rows per thread at a time, see logit_rows()).
 *  - Results do not depend on the thread count: every element is computed
 *    by one task in a fixed order (the sim's 1- vs 2-thread checksum).
 *  - Sums that decide the match with the float64 reference (the loss, the
 *    softmax normalizers, the gradient norm, AdamW) accumulate in double.
 *
 * Workload: one micro-batch is a few GFLOP at most (stories260K, B 8, T 128:
 * about 0.8 GMAC per step, ~30 ms on one core); the pool is dispatched a few
 * dozen times per layer.
 */
#include "plait/train.h"
#include "plait/crypto.h"
#include "tensor_int.h"

#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Rows of one causal attention block (see att_block_offset). */
#define ATT_BLOCK 32
/* torch clip_grad_norm_: coef = max_norm / (norm + 1e-6). */
#define CLIP_EPS 1e-6

struct plait_trainer_s {
    const plait_model_t *m;
    plait_lora_t *lora;
    plait_train_config_t cfg;
    plait_pool_t *pool;
    int own_pool;
    size_t B, T, C, H, L, NH, NKV, HS, KV, V, R, P;
    size_t att_size;  /* floats of one (b, h) block-triangular probability matrix */
    size_t vc;        /* classifier rows per matmul call and thread (logit_rows()) */

    /* ---- activation arena: forward values kept for backward ---- */
    float *acts;      /* the arena */
    float *resid;     /* (L+1, N, C) residual stream entering each layer; [L] enters the final norm */
    float *ln1;       /* (L, N, C) attention RMSNorm output */
    float *rstd1;     /* (L, N) its 1/rms */
    float *q;         /* (L, N, C) queries after RoPE */
    float *k;         /* (L, N, KV) keys after RoPE */
    float *v;         /* (L, N, KV) values */
    float *att;       /* (L, B, NH, att_size) causal softmax probabilities in row blocks */
    float *atty;      /* (L, N, C) attention output, input of wo */
    float *res2;      /* (L, N, C) residual after attention */
    float *ln2;       /* (L, N, C) FFN RMSNorm output */
    float *rstd2;     /* (L, N) */
    float *h1;        /* (L, N, H) w1 output (pre-activation) */
    float *h3;        /* (L, N, H) w3 output */
    float *hg;        /* (L, N, H) silu(h1) * h3, input of w2 */
    float *lnf;       /* (N, C) final RMSNorm output */
    float *rstdf;     /* (N) */
    float **u;        /* [L * PLAIT_NPROJ] -> (N, R) s * x·Aᵀ, or NULL if not adapted */
    /* ---- backward scratch (one layer at a time) ---- */
    float *dres;      /* (N, C) gradient of the residual stream */
    float *dln;       /* (N, C) gradient of a norm output */
    float *datty;     /* (N, C) */
    float *dq;        /* (N, C) */
    float *dk;        /* (N, KV) */
    float *dv;        /* (N, KV) */
    float *dh1;       /* (N, H) */
    float *dh3;       /* (N, H) */
    float *dhg;       /* (N, H) */
    float *du;        /* (N, R) */
    float *attn_scratch; /* (P, attn_scratch_floats(T, HS)) per-thread attention scratch (attn_scratch_t) */
    float *logits;    /* (P, vc, V) per-thread logit rows */
    double *row_loss; /* (N) per-position loss, summed in order for determinism */
    const float *prox_ref; /* Ditto proximal reference, indexed like lora->params (borrowed), or NULL */
    double prox_lambda;    /* its weight lambda: the loss gains lambda/2 ||w - ref||^2 */
    float *rope_cos;  /* (T, HS) cos(pos * freq_i) at 2i and 2i+1 */
    float *rope_sin;  /* (T, HS) -sin at 2i, +sin at 2i+1 */

    /* ---- parameters' state ---- */
    float *grads;     /* (n_grads) mirrors lora->params[goff ..] */
    float *opt_m;     /* (n_grads) AdamW first moment */
    float *opt_v;     /* (n_grads) AdamW second moment */
    size_t n_grads, goff;
    size_t bytes;     /* everything allocated at create */
    size_t bytes_acts; /* bytes of the activation arena (wiped on destroy) */
    int n_micro;      /* micro-batches accumulated since the last step */
    long steps;       /* optimizer steps taken */
    double last_norm; /* gradient norm before clipping at the last step */
};

/* ------------------------------------------------------------------ config */

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

/* Probabilities below FLT_MIN are flushed to zero: they contribute nothing
 * measurable, and denormal operands slow every later multiply by ~100x
 * (a confident model on foreign text produces many). */
static inline float flush(float p) { return p < FLT_MIN ? 0.0f : p; }

/* ------------------------------------------------------------ vector helpers
 * Element-wise spans used by softmax, cross-entropy and SwiGLU. Each has a
 * portable version and an AVX2+FMA one, picked at run time as tensor.c
 * picks its kernels (plait__tensor_simd_active(), which tests can force off), so a default (-O2, baseline
 * x86-64) build still runs them 8 floats at a time. exp is the Cephes
 * single-precision polynomial (relative error ~2e-7), flushed to 0 below
 * -87.33 where the result would be denormal; both paths use the same
 * polynomial. Sums of exponentials accumulate in double. */

#define EXP_LO -87.33f
#define EXP_HI 88.72f
#define EXP_LOG2E 1.44269504088896341f
#define EXP_C1 0.693359375f
#define EXP_C2 -2.12194440e-4f
#define EXP_P0 1.9875691500e-4f
#define EXP_P1 1.3981999507e-3f
#define EXP_P2 8.3334519073e-3f
#define EXP_P3 4.1665795894e-2f
#define EXP_P4 1.6666665459e-1f
#define EXP_P5 5.0000001201e-1f

static inline float exp_poly(float x)
{
    /* NaN (from NaN weights, or an adapter so large that products overflow
     * to inf - inf) must not reach the (int) cast below, which is undefined
     * for it: propagate it, and the trainer's non-finite loss check stops. */
    if (x != x) return x;
    if (x < EXP_LO) return 0.0f;
    if (x > EXP_HI) x = EXP_HI;
    float fx = x * EXP_LOG2E + 0.5f;
    int n = (int)fx;
    if ((float)n > fx) n--; /* floor */
    float fn = (float)n;
    float r = x - fn * EXP_C1;
    r = r - fn * EXP_C2;
    float y = EXP_P0;
    y = y * r + EXP_P1;
    y = y * r + EXP_P2;
    y = y * r + EXP_P3;
    y = y * r + EXP_P4;
    y = y * r + EXP_P5;
    y = y * (r * r) + r + 1.0f;
    uint32_t bits = (uint32_t)(n + 127) << 23;
    float p2;
    memcpy(&p2, &bits, 4);
    return y * p2;
}

#if defined(__x86_64__) && defined(__GNUC__)
#define TRAIN_X86 1
#include <immintrin.h>
#define AVX2 __attribute__((target("avx2,fma")))

AVX2 static inline __m256 exp8(__m256 x)
{
    __m256 under = _mm256_cmp_ps(x, _mm256_set1_ps(EXP_LO), _CMP_LT_OQ);
    x = _mm256_max_ps(_mm256_min_ps(x, _mm256_set1_ps(EXP_HI)), _mm256_set1_ps(EXP_LO));
    __m256 fx = _mm256_floor_ps(_mm256_fmadd_ps(x, _mm256_set1_ps(EXP_LOG2E), _mm256_set1_ps(0.5f)));
    __m256 r = _mm256_fnmadd_ps(fx, _mm256_set1_ps(EXP_C1), x);
    r = _mm256_fnmadd_ps(fx, _mm256_set1_ps(EXP_C2), r);
    __m256 y = _mm256_set1_ps(EXP_P0);
    y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(EXP_P1));
    y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(EXP_P2));
    y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(EXP_P3));
    y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(EXP_P4));
    y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(EXP_P5));
    y = _mm256_fmadd_ps(y, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvttps_epi32(fx), _mm256_set1_epi32(127)), 23);
    return _mm256_andnot_ps(under, _mm256_mul_ps(y, _mm256_castsi256_ps(e)));
}

AVX2 static inline double hsum_pd(__m256d a)
{
    __m128d s = _mm_add_pd(_mm256_castpd256_pd128(a), _mm256_extractf128_pd(a, 1));
    return _mm_cvtsd_f64(_mm_add_sd(s, _mm_unpackhi_pd(s, s)));
}

AVX2 static double vexp_sum_avx2(float *x, size_t n, float sub, float mul)
{
    __m256 vs = _mm256_set1_ps(sub), vm = _mm256_set1_ps(mul);
    __m256d acc = _mm256_setzero_pd();
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 e = exp8(_mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(x + i), vs), vm));
        _mm256_storeu_ps(x + i, e);
        acc = _mm256_add_pd(acc, _mm256_cvtps_pd(_mm256_castps256_ps128(e)));
        acc = _mm256_add_pd(acc, _mm256_cvtps_pd(_mm256_extractf128_ps(e, 1)));
    }
    double sum = hsum_pd(acc);
    for (; i < n; i++) {
        x[i] = exp_poly((x[i] - sub) * mul);
        sum += x[i];
    }
    return sum;
}

AVX2 static float vmax_avx2(const float *x, size_t n)
{
    __m256 m = _mm256_set1_ps(-INFINITY);
    size_t i = 0;
    for (; i + 8 <= n; i += 8) m = _mm256_max_ps(m, _mm256_loadu_ps(x + i));
    float buf[8], mx = -INFINITY;
    _mm256_storeu_ps(buf, m);
    for (int k = 0; k < 8; k++) mx = buf[k] > mx ? buf[k] : mx;
    for (; i < n; i++) mx = x[i] > mx ? x[i] : mx;
    return mx;
}

AVX2 static void vscale_flush_avx2(float *x, size_t n, float f)
{
    __m256 vf = _mm256_set1_ps(f), lo = _mm256_set1_ps(FLT_MIN);
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 v = _mm256_mul_ps(_mm256_loadu_ps(x + i), vf);
        _mm256_storeu_ps(x + i, _mm256_and_ps(v, _mm256_cmp_ps(v, lo, _CMP_GE_OQ)));
    }
    for (; i < n; i++) x[i] = flush(x[i] * f);
}

AVX2 static double vdot_avx2(const float *a, const float *b, size_t n)
{
    __m256 acc = _mm256_setzero_ps();
    size_t i = 0;
    for (; i + 8 <= n; i += 8) acc = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc);
    __m256d d = _mm256_add_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(acc)),
                              _mm256_cvtps_pd(_mm256_extractf128_ps(acc, 1)));
    double s = hsum_pd(d);
    for (; i < n; i++) s += (double)a[i] * (double)b[i];
    return s;
}

/* dr = p * (dr - dot) * scale */
AVX2 static void vsoftmax_bwd_avx2(float *dr, const float *p, size_t n, float dot, float scale)
{
    __m256 vd = _mm256_set1_ps(dot), vs = _mm256_set1_ps(scale);
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 v = _mm256_mul_ps(_mm256_loadu_ps(p + i), _mm256_sub_ps(_mm256_loadu_ps(dr + i), vd));
        _mm256_storeu_ps(dr + i, _mm256_mul_ps(v, vs));
    }
    for (; i < n; i++) dr[i] = p[i] * (dr[i] - dot) * scale;
}

AVX2 static void swiglu_fwd_avx2(float *out, const float *h1, const float *h3, size_t n)
{
    __m256 one = _mm256_set1_ps(1.0f), zero = _mm256_setzero_ps();
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 x = _mm256_loadu_ps(h1 + i);
        __m256 sig = _mm256_div_ps(one, _mm256_add_ps(one, exp8(_mm256_sub_ps(zero, x))));
        _mm256_storeu_ps(out + i, _mm256_mul_ps(_mm256_mul_ps(x, sig), _mm256_loadu_ps(h3 + i)));
    }
    for (; i < n; i++) out[i] = h1[i] / (1.0f + exp_poly(-h1[i])) * h3[i];
}

AVX2 static void swiglu_bwd_avx2(float *dh1, float *dh3, const float *d, const float *h1, const float *h3, size_t n)
{
    __m256 one = _mm256_set1_ps(1.0f), zero = _mm256_setzero_ps();
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 x = _mm256_loadu_ps(h1 + i), g = _mm256_loadu_ps(d + i);
        __m256 sig = _mm256_div_ps(one, _mm256_add_ps(one, exp8(_mm256_sub_ps(zero, x))));
        _mm256_storeu_ps(dh3 + i, _mm256_mul_ps(_mm256_mul_ps(g, x), sig));
        __m256 dsilu = _mm256_mul_ps(sig, _mm256_fmadd_ps(x, _mm256_sub_ps(one, sig), one));
        _mm256_storeu_ps(dh1 + i, _mm256_mul_ps(_mm256_mul_ps(g, _mm256_loadu_ps(h3 + i)), dsilu));
    }
    for (; i < n; i++) {
        float x = h1[i], sig = 1.0f / (1.0f + exp_poly(-x));
        dh3[i] = d[i] * x * sig;
        dh1[i] = d[i] * h3[i] * sig * (1.0f + x * (1.0f - sig));
    }
}

/* o = x * rstd * w for one row; returns rstd. */
AVX2 static float rms_fwd_row_avx2(float *o, const float *x, const float *w, size_t C, float eps)
{
    __m256 acc = _mm256_setzero_ps();
    size_t i = 0;
    for (; i + 8 <= C; i += 8) {
        __m256 v = _mm256_loadu_ps(x + i);
        acc = _mm256_fmadd_ps(v, v, acc);
    }
    double ss = hsum_pd(_mm256_add_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(acc)),
                                      _mm256_cvtps_pd(_mm256_extractf128_ps(acc, 1))));
    for (size_t k = i; k < C; k++) ss += (double)x[k] * (double)x[k];
    float rstd = (float)(1.0 / sqrt(ss / (double)C + (double)eps));
    __m256 vr = _mm256_set1_ps(rstd);
    for (i = 0; i + 8 <= C; i += 8)
        _mm256_storeu_ps(o + i, _mm256_mul_ps(_mm256_mul_ps(_mm256_loadu_ps(x + i), vr), _mm256_loadu_ps(w + i)));
    for (; i < C; i++) o[i] = x[i] * rstd * w[i];
    return rstd;
}

/* dx += dy * w * rstd - x * (mean(dy * w * x) * rstd^3) for one row. */
AVX2 static void rms_bwd_row_avx2(float *dx, const float *dy, const float *x, const float *w, float rstd, size_t C)
{
    __m256 acc = _mm256_setzero_ps();
    size_t i = 0;
    for (; i + 8 <= C; i += 8)
        acc = _mm256_fmadd_ps(_mm256_mul_ps(_mm256_loadu_ps(dy + i), _mm256_loadu_ps(w + i)), _mm256_loadu_ps(x + i),
                              acc);
    double dot = hsum_pd(_mm256_add_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(acc)),
                                       _mm256_cvtps_pd(_mm256_extractf128_ps(acc, 1))));
    for (size_t k = i; k < C; k++) dot += (double)(dy[k] * w[k]) * (double)x[k];
    float c2 = (float)(dot / (double)C) * rstd * rstd * rstd;
    __m256 vr = _mm256_set1_ps(rstd), vc = _mm256_set1_ps(c2);
    for (i = 0; i + 8 <= C; i += 8) {
        __m256 g = _mm256_mul_ps(_mm256_mul_ps(_mm256_loadu_ps(dy + i), _mm256_loadu_ps(w + i)), vr);
        g = _mm256_fnmadd_ps(_mm256_loadu_ps(x + i), vc, g);
        _mm256_storeu_ps(dx + i, _mm256_add_ps(_mm256_loadu_ps(dx + i), g));
    }
    for (; i < C; i++) dx[i] += dy[i] * w[i] * rstd - x[i] * c2;
}

/* One head of HS floats: x = x * cs + swap_pairs(x) * sn * sgn. */
AVX2 static void rope_head_avx2(float *x, const float *cs, const float *sn, size_t HS, float sgn)
{
    __m256 vs = _mm256_set1_ps(sgn);
    size_t i = 0;
    for (; i + 8 <= HS; i += 8) {
        __m256 v = _mm256_loadu_ps(x + i);
        __m256 sw = _mm256_permute_ps(v, 0xB1); /* (x1, x0, x3, x2, ...) */
        __m256 r = _mm256_mul_ps(sw, _mm256_mul_ps(_mm256_loadu_ps(sn + i), vs));
        _mm256_storeu_ps(x + i, _mm256_fmadd_ps(v, _mm256_loadu_ps(cs + i), r));
    }
    for (; i < HS; i += 2) {
        float xr = x[i], xi = x[i + 1];
        x[i] = xr * cs[i] + xi * sn[i] * sgn;
        x[i + 1] = xi * cs[i + 1] + xr * sn[i + 1] * sgn;
    }
}
#else
#define TRAIN_X86 0
#endif

static int use_avx2(void)
{
#if TRAIN_X86
    return plait__tensor_simd_active(); /* the CPU has AVX2+FMA and tests did not force scalar */
#else
    return 0;
#endif
}

/* x = exp((x - sub) * mul) (0 below the denormal range); returns the sum. */
static double vexp_sum(float *x, size_t n, float sub, float mul)
{
#if TRAIN_X86
    if (use_avx2()) return vexp_sum_avx2(x, n, sub, mul);
#endif
    double sum = 0.0;
    for (size_t i = 0; i < n; i++) {
        x[i] = exp_poly((x[i] - sub) * mul);
        sum += x[i];
    }
    return sum;
}

static float vmax(const float *x, size_t n)
{
#if TRAIN_X86
    if (use_avx2()) return vmax_avx2(x, n);
#endif
    float mx = -INFINITY;
    for (size_t i = 0; i < n; i++) mx = x[i] > mx ? x[i] : mx;
    return mx;
}

static void vscale_flush(float *x, size_t n, float f)
{
#if TRAIN_X86
    if (use_avx2()) { vscale_flush_avx2(x, n, f); return; }
#endif
    for (size_t i = 0; i < n; i++) x[i] = flush(x[i] * f);
}

static double vdot(const float *a, const float *b, size_t n)
{
#if TRAIN_X86
    if (use_avx2()) return vdot_avx2(a, b, n);
#endif
    double s = 0.0;
    for (size_t i = 0; i < n; i++) s += (double)a[i] * (double)b[i];
    return s;
}

static void vsoftmax_bwd(float *dr, const float *p, size_t n, float dot, float scale)
{
#if TRAIN_X86
    if (use_avx2()) { vsoftmax_bwd_avx2(dr, p, n, dot, scale); return; }
#endif
    for (size_t i = 0; i < n; i++) dr[i] = p[i] * (dr[i] - dot) * scale;
}

/* ------------------------------------------------------------ kernels
 * Each kernel is a pool job over independent rows; `job_t` carries the
 * arguments of whichever kernel runs (as tensor.c's mm_job_t does). */

typedef struct {
    plait_trainer_t *tr;
    float *out, *out2, *out3;
    const float *in, *in2, *in3, *in4, *w;
    size_t nb, n, C, H;
    const int32_t *tokens;
    float scale;
} job_t;

/* out (N, C) = inp * rstd * w; rstd (N) kept for backward. */
static void rmsnorm_forward_rows(void *ctx, size_t b, size_t e)
{
    job_t *j = ctx;
    size_t C = j->C;
    int simd = use_avx2();
    for (size_t n = b; n < e; n++) {
        const float *x = j->in + n * C;
        float *o = j->out + n * C;
#if TRAIN_X86
        if (simd) {
            j->out2[n] = rms_fwd_row_avx2(o, x, j->w, C, j->tr->m->cfg.rms_eps);
            continue;
        }
#endif
        (void)simd;
        double ss = 0.0;
        for (size_t i = 0; i < C; i++) ss += (double)x[i] * (double)x[i];
        float rstd = (float)(1.0 / sqrt(ss / (double)C + (double)j->tr->m->cfg.rms_eps));
        for (size_t i = 0; i < C; i++) o[i] = x[i] * rstd * j->w[i];
        j->out2[n] = rstd;
    }
}

static void rmsnorm_forward(plait_trainer_t *tr, float *out, float *rstd, const float *inp, const float *w, size_t N,
                            size_t C)
{
    job_t j = {.tr = tr, .out = out, .out2 = rstd, .in = inp, .w = w, .C = C};
    plait_pool_run(tr->pool, rmsnorm_forward_rows, &j, N);
}

/* dinp (N, C) += d/dx of (x * rstd(x) * w) applied to dout. */
static void rmsnorm_backward_rows(void *ctx, size_t b, size_t e)
{
    job_t *j = ctx;
    size_t C = j->C;
    int simd = use_avx2();
    for (size_t n = b; n < e; n++) {
        const float *x = j->in2 + n * C, *dy = j->in + n * C;
        float *dx = j->out + n * C;
        float rstd = j->in3[n];
#if TRAIN_X86
        if (simd) {
            rms_bwd_row_avx2(dx, dy, x, j->w, rstd, C);
            continue;
        }
#endif
        (void)simd;
        double dot = 0.0; /* sum_i dy_i w_i x_i */
        for (size_t i = 0; i < C; i++) dot += (double)(dy[i] * j->w[i]) * (double)x[i];
        float c2 = (float)(dot / (double)C) * rstd * rstd * rstd;
        for (size_t i = 0; i < C; i++) dx[i] += dy[i] * j->w[i] * rstd - x[i] * c2;
    }
}

static void rmsnorm_backward(plait_trainer_t *tr, float *dinp, const float *dout, const float *inp, const float *rstd,
                             const float *w, size_t N, size_t C)
{
    job_t j = {.out = dinp, .in = dout, .in2 = inp, .in3 = rstd, .w = w, .C = C};
    plait_pool_run(tr->pool, rmsnorm_backward_rows, &j, N);
}

/* Rotate interleaved pairs of every head of q (N, C) and k (N, KV) in place;
 * sgn = +1 forward, -1 backward (the transpose of a rotation is its inverse).
 * The tables hold, per position, cos repeated over each pair and sin with the
 * pair's sign (-sin, +sin), so a rotation is x * cs + swap_pairs(x) * sn. */
static void rope_rows(void *ctx, size_t b, size_t e)
{
    job_t *j = ctx;
    plait_trainer_t *tr = j->tr;
    size_t T = tr->T, HS = tr->HS, C = tr->C, KV = tr->KV;
    float sgn = j->scale;
    int simd = use_avx2(), neox = tr->m->cfg.rope_neox;
    size_t half = HS / 2;
    for (size_t n = b; n < e; n++) {
        const float *cs = tr->rope_cos + (n % T) * HS, *sn = tr->rope_sin + (n % T) * HS;
        for (int which = 0; which < 2; which++) {
            float *x = which == 0 ? j->out + n * C : j->out2 + n * KV;
            size_t width = which == 0 ? C : KV;
            for (size_t h0 = 0; h0 < width; h0 += HS) {
                float *xh = x + h0;
                if (neox) { /* rotate-half: pairs (i, i + HS/2) at angle i */
                    for (size_t i = 0; i < half; i++) {
                        float x0 = xh[i], x1 = xh[i + half], c = cs[2 * i], sv = sn[2 * i + 1] * sgn;
                        xh[i] = x0 * c - x1 * sv;
                        xh[i + half] = x1 * c + x0 * sv;
                    }
                    continue;
                }
#if TRAIN_X86
                if (simd) {
                    rope_head_avx2(xh, cs, sn, HS, sgn);
                    continue;
                }
#endif
                (void)simd;
                for (size_t i = 0; i < HS; i += 2) {
                    float xr = xh[i], xi = xh[i + 1];
                    xh[i] = xr * cs[i] + xi * (sn[i] * sgn);
                    xh[i + 1] = xi * cs[i + 1] + xr * (sn[i + 1] * sgn);
                }
            }
        }
    }
}

static void rope_apply(plait_trainer_t *tr, float *q, float *k, size_t N, float sgn)
{
    job_t j = {.tr = tr, .out = q, .out2 = k, .scale = sgn};
    plait_pool_run(tr->pool, rope_rows, &j, N);
}

/* The causal probabilities of one (b, h) are stored by row blocks of
 * ATT_BLOCK rows: block k covers rows [r0, r1) = [k*ATT_BLOCK, min(r0 +
 * ATT_BLOCK, T)) and only the r1 columns a row of it can see, row-major with
 * row stride r1. Products then skip the masked upper triangle (about half of
 * the T*T work and memory) while each block stays one matmul call. */
static size_t att_block_offset(size_t k, size_t T)
{
    size_t off = 0;
    for (size_t i = 0; i < k; i++) {
        size_t r0 = i * ATT_BLOCK, r1 = r0 + ATT_BLOCK < T ? r0 + ATT_BLOCK : T;
        off += (r1 - r0) * r1;
    }
    return off;
}

/* Attention runs per (sequence b, key/value head g): a task gathers that
 * head's keys and values once, then serves the rep = NH / NKV query heads
 * that read them, so under GQA dk and dv are accumulated inside one task
 * and need no synchronization. The products are plait_matmul_* calls on the
 * calling thread (NULL pool) over contiguous per-head copies, which is where
 * the SIMD kernels pay off; the pool splits the (b, g) pairs, one contiguous
 * share per thread with that thread's scratch (tr->attn_scratch). */
typedef struct {
    float *qh;  /* (T, HS) */
    float *kh;  /* (T, HS) */
    float *vh;  /* (T, HS) */
    float *oh;  /* (T, HS) output, or dO in backward */
    float *dqh; /* (T, HS) */
    float *dkh; /* (T, HS) */
    float *dvh; /* (T, HS) */
    float *dp;  /* (ATT_BLOCK, T) gradient of one block's probabilities, then scores */
    float *kvT; /* (HS, T8) keys (forward) or values (backward) transposed, zero-padded */
    float *row; /* (T8) one row of scores */
} attn_scratch_t;

/* T rounded up to a multiple of 8 (one AVX2 vector). */
static size_t round8(size_t T) { return (T + 7) & ~(size_t)7; }

/* Floats of one thread's attention scratch. */
static size_t attn_scratch_floats(size_t T, size_t HS) { return ATT_BLOCK * T + 7 * T * HS + HS * round8(T) + round8(T); }

static attn_scratch_t attn_scratch(const plait_trainer_t *tr, size_t item)
{
    size_t T = tr->T, HS = tr->HS;
    float *base = tr->attn_scratch + item * attn_scratch_floats(T, HS);
    attn_scratch_t s;
    s.qh = base;
    s.kh = base + T * HS;
    s.vh = base + 2 * T * HS;
    s.oh = base + 3 * T * HS;
    s.dqh = base + 4 * T * HS;
    s.dkh = base + 5 * T * HS;
    s.dvh = base + 6 * T * HS;
    s.dp = base + 7 * T * HS;
    s.kvT = s.dp + ATT_BLOCK * T;
    s.row = s.kvT + HS * round8(T);
    return s;
}

/* dst (T, HS) = head `h0 / HS` of rows b*T .. b*T+T-1 of src (N, width). */
static void gather_head(float *dst, const float *src, size_t width, size_t b, size_t h0, size_t T, size_t HS)
{
    for (size_t t = 0; t < T; t++) memcpy(dst + t * HS, src + (b * T + t) * width + h0, HS * sizeof(float));
}

static void scatter_head(float *dst, const float *src, size_t width, size_t b, size_t h0, size_t T, size_t HS)
{
    for (size_t t = 0; t < T; t++) memcpy(dst + (b * T + t) * width + h0, src + t * HS, HS * sizeof(float));
}

/* dst (HS, T8) = the same head transposed, columns T..T8-1 zero. */
static void gather_head_t(float *dst, const float *src, size_t width, size_t b, size_t h0, size_t T, size_t HS)
{
    size_t T8 = round8(T);
    for (size_t t = 0; t < T; t++)
        for (size_t i = 0; i < HS; i++) dst[i * T8 + t] = src[(b * T + t) * width + h0 + i];
    for (size_t i = 0; i < HS; i++) memset(dst + i * T8 + T, 0, (T8 - T) * sizeof(float));
}

#if TRAIN_X86
/* Row-wise attention for one head when HS is a multiple of 8: scores of a
 * query row are built 8 keys at a time from transposed keys, softmaxed in
 * L1 and applied to V at once, so nothing is packed or re-read; this beats
 * the generic matmul for the small head sizes of small models (HS = 8). */
AVX2 static void attn_head_fwd_avx2(float *att, float *oh, const float *qh, const float *kT, const float *vh, float *row,
                                    size_t T, size_t HS, float scale)
{
    size_t T8 = round8(T);
    for (size_t r0 = 0; r0 < T; r0 += ATT_BLOCK) {
        size_t r1 = r0 + ATT_BLOCK < T ? r0 + ATT_BLOCK : T;
        float *blk = att + att_block_offset(r0 / ATT_BLOCK, T);
        for (size_t t = r0; t < r1; t++) {
            size_t n = t + 1;
            const float *qt = qh + t * HS;
            for (size_t c = 0; c < n; c += 8) {
                __m256 acc = _mm256_setzero_ps();
                for (size_t i = 0; i < HS; i++)
                    acc = _mm256_fmadd_ps(_mm256_set1_ps(qt[i]), _mm256_loadu_ps(kT + i * T8 + c), acc);
                _mm256_storeu_ps(row + c, acc);
            }
            float mx = vmax_avx2(row, n);
            double sum = vexp_sum_avx2(row, n, mx, scale);
            vscale_flush_avx2(row, n, (float)(1.0 / sum));
            float *a = blk + (t - r0) * r1;
            memcpy(a, row, n * sizeof(float));
            memset(a + n, 0, (r1 - n) * sizeof(float));
            for (size_t j = 0; j < HS; j += 8) {
                __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
                size_t t2 = 0;
                for (; t2 + 2 <= n; t2 += 2) {
                    a0 = _mm256_fmadd_ps(_mm256_set1_ps(row[t2]), _mm256_loadu_ps(vh + t2 * HS + j), a0);
                    a1 = _mm256_fmadd_ps(_mm256_set1_ps(row[t2 + 1]), _mm256_loadu_ps(vh + (t2 + 1) * HS + j), a1);
                }
                if (t2 < n) a0 = _mm256_fmadd_ps(_mm256_set1_ps(row[t2]), _mm256_loadu_ps(vh + t2 * HS + j), a0);
                _mm256_storeu_ps(oh + t * HS + j, _mm256_add_ps(a0, a1));
            }
        }
    }
}

/* Backward of one head: dqh (T, HS) overwritten, dkh and dvh accumulated. */
AVX2 static void attn_head_bwd_avx2(const float *att, const float *qh, const float *kh, const float *vT,
                                    const float *doh, float *dqh, float *dkh, float *dvh, float *row, size_t T,
                                    size_t HS, float scale)
{
    size_t T8 = round8(T);
    for (size_t r0 = 0; r0 < T; r0 += ATT_BLOCK) {
        size_t r1 = r0 + ATT_BLOCK < T ? r0 + ATT_BLOCK : T;
        const float *blk = att + att_block_offset(r0 / ATT_BLOCK, T);
        for (size_t t = r0; t < r1; t++) {
            size_t n = t + 1;
            const float *p = blk + (t - r0) * r1, *dot_ = doh + t * HS, *qt = qh + t * HS;
            /* dP[t2] = dO[t] · V[t2] */
            for (size_t c = 0; c < n; c += 8) {
                __m256 acc = _mm256_setzero_ps();
                for (size_t i = 0; i < HS; i++)
                    acc = _mm256_fmadd_ps(_mm256_set1_ps(dot_[i]), _mm256_loadu_ps(vT + i * T8 + c), acc);
                _mm256_storeu_ps(row + c, acc);
            }
            vsoftmax_bwd_avx2(row, p, n, (float)vdot_avx2(p, row, n), scale); /* row = dS */
            for (size_t j = 0; j < HS; j += 8) {
                __m256 vdo = _mm256_loadu_ps(dot_ + j), vq = _mm256_loadu_ps(qt + j);
                __m256 dq0 = _mm256_setzero_ps(), dq1 = _mm256_setzero_ps();
                size_t t2 = 0;
                for (; t2 < n; t2++) {
                    __m256 ps = _mm256_set1_ps(p[t2]), ds = _mm256_set1_ps(row[t2]);
                    float *dv = dvh + t2 * HS + j, *dk = dkh + t2 * HS + j;
                    _mm256_storeu_ps(dv, _mm256_fmadd_ps(ps, vdo, _mm256_loadu_ps(dv)));
                    _mm256_storeu_ps(dk, _mm256_fmadd_ps(ds, vq, _mm256_loadu_ps(dk)));
                    if (t2 & 1)
                        dq1 = _mm256_fmadd_ps(ds, _mm256_loadu_ps(kh + t2 * HS + j), dq1);
                    else
                        dq0 = _mm256_fmadd_ps(ds, _mm256_loadu_ps(kh + t2 * HS + j), dq0);
                }
                _mm256_storeu_ps(dqh + t * HS + j, _mm256_add_ps(dq0, dq1));
            }
        }
    }
}
#endif

/* att (B, NH, att_size) = causal softmax(q kᵀ / sqrt(HS)) (row t of a block
 * is zero beyond column t), out (N, C) = att · v. */
static void attention_forward_items(void *ctx, size_t i0, size_t i1)
{
    job_t *j = ctx;
    plait_trainer_t *tr = j->tr;
    size_t T = tr->T, HS = tr->HS, C = tr->C, KV = tr->KV, NH = tr->NH, NKV = tr->NKV, rep = NH / NKV, P = tr->P;
    size_t npairs = j->nb * NKV, AS = tr->att_size;
    const float *q = j->in, *k = j->in2, *v = j->in3;
    float scale = 1.0f / sqrtf((float)HS);
    int rowwise = TRAIN_X86 && HS % 8 == 0 && use_avx2();
    for (size_t item = i0; item < i1; item++) {
        attn_scratch_t s = attn_scratch(tr, item);
        for (size_t pair = npairs * item / P; pair < npairs * (item + 1) / P; pair++) {
            size_t b = pair / NKV, g = pair % NKV;
            gather_head(s.kh, k, KV, b, g * HS, T, HS);
            gather_head(s.vh, v, KV, b, g * HS, T, HS);
            if (rowwise) gather_head_t(s.kvT, k, KV, b, g * HS, T, HS);
            for (size_t h = g * rep; h < (g + 1) * rep; h++) {
                float *att = j->out2 + (b * NH + h) * AS;
                gather_head(s.qh, q, C, b, h * HS, T, HS);
#if TRAIN_X86
                if (rowwise) {
                    attn_head_fwd_avx2(att, s.oh, s.qh, s.kvT, s.vh, s.row, T, HS, scale);
                    scatter_head(j->out, s.oh, C, b, h * HS, T, HS);
                    continue;
                }
#endif
                memset(s.oh, 0, T * HS * sizeof(float));
                for (size_t r0 = 0; r0 < T; r0 += ATT_BLOCK) {
                    size_t r1 = r0 + ATT_BLOCK < T ? r0 + ATT_BLOCK : T, rows = r1 - r0;
                    float *blk = att + att_block_offset(r0 / ATT_BLOCK, T); /* (rows, r1) */
                    plait_matmul_forward(NULL, blk, s.qh + r0 * HS, s.kh, rows, HS, r1, 0);
                    for (size_t t = r0; t < r1; t++) {
                        float *a = blk + (t - r0) * r1;
                        /* scale > 0, so the max of the raw scores is the max of the scaled ones. */
                        float mx = vmax(a, t + 1);
                        double sum = vexp_sum(a, t + 1, mx, scale);
                        vscale_flush(a, t + 1, (float)(1.0 / sum));
                        memset(a + t + 1, 0, (r1 - t - 1) * sizeof(float));
                    }
                    /* O[r0:r1] = P_blk (rows, r1) · V[0:r1] (r1, HS). */
                    plait_matmul_backward(NULL, s.oh + r0 * HS, NULL, blk, NULL, s.vh, rows, HS, r1);
                }
                scatter_head(j->out, s.oh, C, b, h * HS, T, HS);
            }
        }
    }
}

static void attention_forward(plait_trainer_t *tr, float *out, float *att, const float *q, const float *k,
                              const float *v, size_t nb)
{
    job_t j = {.tr = tr, .out = out, .out2 = att, .in = q, .in2 = k, .in3 = v, .nb = nb};
    plait_pool_run(tr->pool, attention_forward_items, &j, tr->P);
}

/* Given dout (N, C): dq (N, C), dk and dv (N, KV), all overwritten. */
static void attention_backward_items(void *ctx, size_t i0, size_t i1)
{
    job_t *j = ctx;
    plait_trainer_t *tr = j->tr;
    size_t T = tr->T, HS = tr->HS, C = tr->C, KV = tr->KV, NH = tr->NH, NKV = tr->NKV, rep = NH / NKV, P = tr->P;
    size_t npairs = j->nb * NKV, AS = tr->att_size;
    const float *dout = j->in, *att = j->in2, *q = j->in3, *k = j->in4, *v = j->w;
    float scale = 1.0f / sqrtf((float)HS);
    int rowwise = TRAIN_X86 && HS % 8 == 0 && use_avx2();
    for (size_t item = i0; item < i1; item++) {
        attn_scratch_t s = attn_scratch(tr, item);
        for (size_t pair = npairs * item / P; pair < npairs * (item + 1) / P; pair++) {
            size_t b = pair / NKV, g = pair % NKV;
            gather_head(s.kh, k, KV, b, g * HS, T, HS);
            gather_head(s.vh, v, KV, b, g * HS, T, HS);
            if (rowwise) gather_head_t(s.kvT, v, KV, b, g * HS, T, HS);
            memset(s.dkh, 0, T * HS * sizeof(float));
            memset(s.dvh, 0, T * HS * sizeof(float));
            for (size_t h = g * rep; h < (g + 1) * rep; h++) {
                const float *a_h = att + (b * NH + h) * AS;
                gather_head(s.qh, q, C, b, h * HS, T, HS);
                gather_head(s.oh, dout, C, b, h * HS, T, HS);
#if TRAIN_X86
                if (rowwise) {
                    attn_head_bwd_avx2(a_h, s.qh, s.kh, s.kvT, s.oh, s.dqh, s.dkh, s.dvh, s.row, T, HS, scale);
                    scatter_head(j->out, s.dqh, C, b, h * HS, T, HS);
                    continue;
                }
#endif
                memset(s.dqh, 0, T * HS * sizeof(float));
                for (size_t r0 = 0; r0 < T; r0 += ATT_BLOCK) {
                    size_t r1 = r0 + ATT_BLOCK < T ? r0 + ATT_BLOCK : T, rows = r1 - r0;
                    const float *blk = a_h + att_block_offset(r0 / ATT_BLOCK, T); /* (rows, r1) */
                    const float *dob = s.oh + r0 * HS, *qb = s.qh + r0 * HS;
                    /* dP = dO · Vᵀ; dV[0:r1] += Pᵀ · dO. */
                    plait_matmul_forward(NULL, s.dp, dob, s.vh, rows, HS, r1, 0);
                    plait_matmul_backward(NULL, NULL, s.dvh, blk, dob, NULL, rows, HS, r1);
                    /* dS = P ⊙ (dP - rowsum(P ⊙ dP)) * scale, zero beyond the diagonal. */
                    for (size_t t = r0; t < r1; t++) {
                        const float *pr = blk + (t - r0) * r1;
                        float *dr = s.dp + (t - r0) * r1;
                        vsoftmax_bwd(dr, pr, t + 1, (float)vdot(pr, dr, t + 1), scale);
                        memset(dr + t + 1, 0, (r1 - t - 1) * sizeof(float));
                    }
                    /* dQ[r0:r1] += dS · K[0:r1]; dK[0:r1] += dSᵀ · Q[r0:r1]. */
                    plait_matmul_backward(NULL, s.dqh + r0 * HS, s.dkh, s.dp, qb, s.kh, rows, HS, r1);
                }
                scatter_head(j->out, s.dqh, C, b, h * HS, T, HS);
            }
            scatter_head(j->out2, s.dkh, KV, b, g * HS, T, HS);
            scatter_head(j->out3, s.dvh, KV, b, g * HS, T, HS);
        }
    }
}

static void attention_backward(plait_trainer_t *tr, float *dq, float *dk, float *dv, const float *dout,
                               const float *att, const float *q, const float *k, const float *v, size_t nb)
{
    job_t j = {.tr = tr, .out = dq, .out2 = dk, .out3 = dv, .in = dout, .in2 = att, .in3 = q, .in4 = k, .w = v,
               .nb = nb};
    plait_pool_run(tr->pool, attention_backward_items, &j, tr->P);
}

/* hg (N, H) = silu(h1) * h3. */
static void swiglu_forward_rows(void *ctx, size_t b, size_t e)
{
    job_t *j = ctx;
    size_t H = j->H;
#if TRAIN_X86
    if (use_avx2()) {
        swiglu_fwd_avx2(j->out + b * H, j->in + b * H, j->in2 + b * H, (e - b) * H);
        return;
    }
#endif
    for (size_t i = b * H; i < e * H; i++) {
        float x = j->in[i];
        j->out[i] = x / (1.0f + exp_poly(-x)) * j->in2[i];
    }
}

static void swiglu_forward(plait_trainer_t *tr, float *hg, const float *h1, const float *h3, size_t N)
{
    job_t j = {.out = hg, .in = h1, .in2 = h3, .H = tr->H};
    plait_pool_run(tr->pool, swiglu_forward_rows, &j, N);
}

/* dh1 = dhg * h3 * silu'(h1), dh3 = dhg * silu(h1) (both overwritten). */
static void swiglu_backward_rows(void *ctx, size_t b, size_t e)
{
    job_t *j = ctx;
    size_t H = j->H;
#if TRAIN_X86
    if (use_avx2()) {
        swiglu_bwd_avx2(j->out + b * H, j->out2 + b * H, j->in + b * H, j->in2 + b * H, j->in3 + b * H, (e - b) * H);
        return;
    }
#endif
    for (size_t i = b * H; i < e * H; i++) {
        float x = j->in2[i], sig = 1.0f / (1.0f + exp_poly(-x)), d = j->in[i];
        j->out2[i] = d * x * sig;
        j->out[i] = d * j->in3[i] * sig * (1.0f + x * (1.0f - sig));
    }
}

static void swiglu_backward(plait_trainer_t *tr, float *dh1, float *dh3, const float *dhg, const float *h1,
                            const float *h3, size_t N)
{
    job_t j = {.out = dh1, .out2 = dh3, .in = dhg, .in2 = h1, .in3 = h3, .H = tr->H};
    plait_pool_run(tr->pool, swiglu_backward_rows, &j, N);
}

/* Rows of logits per classifier call: each call streams the whole (V, C)
 * classifier through the matmul kernel (packing it as it goes), so more rows
 * per call amortize that; the per-thread scratch of rows x V floats is held
 * near PLAIT_TRAIN_LOGIT_BYTES (16 rows at least, 256 at most). */
static size_t logit_rows(size_t V)
{
    size_t r = PLAIT_TRAIN_LOGIT_BYTES / (V * sizeof(float));
    return r < 16 ? 16 : r > 256 ? 256 : r;
}

/* Classifier, softmax and cross-entropy, fused per thread: item i of P owns
 * a contiguous share of the N rows and a vc x V scratch,
 * so the (N, V) logits never exist at once. With dlnf != NULL it also writes
 * dlnf (N, C) = dlogits · Wcls with dlogits = (softmax - onehot) * scale. */
static void classifier_items(void *ctx, size_t b0, size_t e0)
{
    job_t *j = ctx;
    plait_trainer_t *tr = j->tr;
    size_t N = j->n, V = tr->V, C = tr->C, P = tr->P, VC = tr->vc;
    const plait_wmat_t *wcls = plait_model_classifier(tr->m);
    for (size_t item = b0; item < e0; item++) {
        size_t r0 = N * item / P, r1 = N * (item + 1) / P;
        float *lg = tr->logits + item * VC * V;
        for (size_t c0 = r0; c0 < r1; c0 += VC) {
            size_t nr = r1 - c0 < VC ? r1 - c0 : VC;
            plait_matmul_forward_w(NULL, lg, tr->lnf + c0 * C, wcls, nr, C, V, 0);
            for (size_t r = 0; r < nr; r++) {
                size_t n = c0 + r, b = n / tr->T, t = n % tr->T;
                int32_t target = j->tokens[b * (tr->T + 1) + t + 1];
                float *row = lg + r * V;
                float mx = vmax(row, V);
                float zt = row[target] - mx;
                double sum = vexp_sum(row, V, mx, 1.0f);
                tr->row_loss[n] = log(sum) - (double)zt;
                if (j->out) {
                    vscale_flush(row, V, (float)(1.0 / sum) * j->scale);
                    row[target] -= j->scale;
                }
            }
            if (j->out) {
                memset(j->out + c0 * C, 0, nr * C * sizeof(float));
                plait_matmul_backward_w(NULL, j->out + c0 * C, lg, wcls, nr, C, V);
            }
        }
    }
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
    plait_matmul_forward_w(tr->pool, y, x, plait_model_proj(tr->m, (int)l, p), N, (size_t)in, (size_t)out,
                           accumulate);
    if (tr->m->bias && p <= PLAIT_WV) { /* q, k, v biases (Qwen2) */
        const float *bias = tr->m->bias[l * 3 + (size_t)p];
        for (size_t n = 0; n < N; n++)
            for (size_t o = 0; o < (size_t)out; o++) y[n * (size_t)out + o] += bias[o];
    }
    size_t slot = plait_lora_slot((int)l, p);
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
        plait_matmul_backward_w(tr->pool, dx, dy, plait_model_proj(tr->m, (int)l, p), N, (size_t)in, (size_t)out);
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
 * classifier also leaves dlnf in tr->dln for backward. */
static double forward(plait_trainer_t *tr, const int32_t *tokens, size_t nb, float dscale)
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
        rmsnorm_forward(tr, ln1, tr->rstd1 + l * N_full, x, w->rms_att + l * C, N, C);
        proj_forward(tr, q, ln1, l, PLAIT_WQ, N, 0);
        proj_forward(tr, k, ln1, l, PLAIT_WK, N, 0);
        proj_forward(tr, v, ln1, l, PLAIT_WV, N, 0);
        rope_apply(tr, q, k, N, 1.0f);
        attention_forward(tr, atty, att, q, k, v, nb);
        memcpy(res2, x, N * C * sizeof(float));
        proj_forward(tr, res2, atty, l, PLAIT_WO, N, 1);
        rmsnorm_forward(tr, ln2, tr->rstd2 + l * N_full, res2, w->rms_ffn + l * C, N, C);
        proj_forward(tr, h1, ln2, l, PLAIT_W1, N, 0);
        proj_forward(tr, h3, ln2, l, PLAIT_W3, N, 0);
        swiglu_forward(tr, hg, h1, h3, N);
        float *xn = LNC(tr->resid, l + 1);
        memcpy(xn, res2, N * C * sizeof(float));
        proj_forward(tr, xn, hg, l, PLAIT_W2, N, 1);
    }
    rmsnorm_forward(tr, tr->lnf, tr->rstdf, LNC(tr->resid, tr->L), w->rms_final, N, C);
    job_t j = {.tr = tr, .out = dscale > 0.0f ? tr->dln : NULL, .n = N, .tokens = tokens, .scale = dscale};
    plait_pool_run(tr->pool, classifier_items, &j, tr->P);
    double sum = 0.0;
    for (size_t n = 0; n < N; n++) sum += tr->row_loss[n];
    return sum / (double)N;
}

/* Backward over the full B rows; expects dlnf in tr->dln (from forward). */
static void backward(plait_trainer_t *tr)
{
    size_t T = tr->T, C = tr->C, KV = tr->KV, H = tr->H, N = tr->B * T, N_full = N;
    const plait_model_weights_t *w = &tr->m->w;
    const plait_lora_t *lo = tr->lora;
    memset(tr->dres, 0, N * C * sizeof(float));
    rmsnorm_backward(tr, tr->dres, tr->dln, LNC(tr->resid, tr->L), tr->rstdf, w->rms_final, N, C);
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
        swiglu_backward(tr, tr->dh1, tr->dh3, tr->dhg, h1, h3, N);
        memset(tr->dln, 0, N * C * sizeof(float));
        proj_backward(tr, tr->dln, tr->dh1, ln2, l, PLAIT_W1, N);
        proj_backward(tr, tr->dln, tr->dh3, ln2, l, PLAIT_W3, N);
        rmsnorm_backward(tr, tr->dres, tr->dln, res2, tr->rstd2 + l * N_full, w->rms_ffn + l * C, N, C);
        /* Attention: res2 = x + Wo(attention(rope(Wq ln1), rope(Wk ln1), Wv ln1)). */
        memset(tr->datty, 0, N * C * sizeof(float));
        proj_backward(tr, tr->datty, tr->dres, atty, l, PLAIT_WO, N);
        int need_dx = l > 0;
        int qkv_adapted = lo->A[plait_lora_slot((int)l, PLAIT_WQ)] || lo->A[plait_lora_slot((int)l, PLAIT_WK)] ||
                          lo->A[plait_lora_slot((int)l, PLAIT_WV)];
        if (!need_dx && !qkv_adapted) break; /* nothing below needs a gradient */
        attention_backward(tr, tr->dq, tr->dk, tr->dv, tr->datty, att, q, k, v, tr->B);
        rope_apply(tr, tr->dq, tr->dk, N, -1.0f);
        float *dx = need_dx ? tr->dln : NULL;
        if (dx) memset(dx, 0, N * C * sizeof(float));
        proj_backward(tr, dx, tr->dq, ln1, l, PLAIT_WQ, N);
        proj_backward(tr, dx, tr->dk, ln1, l, PLAIT_WK, N);
        proj_backward(tr, dx, tr->dv, ln1, l, PLAIT_WV, N);
        if (dx) rmsnorm_backward(tr, tr->dres, dx, x, tr->rstd1 + l * N_full, w->rms_att + l * C, N, C);
    }
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
    if (tr->prox_ref && tr->prox_lambda > 0.0) {
        /* The proximal term's gradient lambda (w - ref), a 1/accum_steps share per micro-batch. */
        double k = tr->prox_lambda / (double)tr->cfg.accum_steps;
        const float *p = tr->lora->params + tr->goff, *ref = tr->prox_ref + tr->goff;
        for (size_t i = 0; i < tr->n_grads; i++) tr->grads[i] += (float)(k * ((double)p[i] - (double)ref[i]));
    }
    tr->n_micro++;
    if (loss) *loss = (float)l;
    return 0;
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
    double b1 = c->beta1, b2 = c->beta2;
    for (size_t i = 0; i < n; i++) {
        double gi = g[i];
        double m = b1 * (double)tr->opt_m[i] + (1.0 - b1) * gi;
        double v = b2 * (double)tr->opt_v[i] + (1.0 - b2) * gi * gi;
        tr->opt_m[i] = (float)m;
        tr->opt_v[i] = (float)v;
        double pi = (double)p[i] * decay;
        pi -= step_size * m / (sqrt(v) / bc2_sqrt + c->eps);
        p[i] = (float)pi;
    }
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
    tr->vc = logit_rows(tr->V);

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
        tr->P * attn_scratch_floats(T, tr->HS), /* attn_scratch */
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
    if (!tr->acts || !tr->u || !tr->grads || !tr->opt_m || !tr->opt_v) {
        plait_train_destroy(tr);
        return plait_fail(PLAIT_ENOMEM, "train: %zu MiB of activations for B=%zu T=%zu",
                          total * sizeof(float) >> 20, B, T);
    }
    memset(tr->acts, 0, total * sizeof(float));
    tr->bytes_acts = total * sizeof(float);
    tr->bytes = total * sizeof(float) + 3 * tr->n_grads * sizeof(float) + L * PLAIT_NPROJ * sizeof(float *) +
                sizeof(*tr);
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
    free(tr);
}
