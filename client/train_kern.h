/*
 * train_kern.h: the trainer's element-wise and per-head kernels (softmax,
 * cross-entropy, RMSNorm, RoPE, SwiGLU, row-wise attention), one table per
 * kernel path, with the helpers every implementation shares. Internal to
 * client/ (train.c, train_layers.c, the train_*.c kernel files) and its tests.
 */
#ifndef PLAIT_TRAIN_KERN_H
#define PLAIT_TRAIN_KERN_H

#include <float.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "tensor_kern.h" /* PLAIT_HAVE_X86_SIMD, PLAIT_AVX2 */

/* Rows of one causal attention block (see att_block_offset). */
#define ATT_BLOCK 32

/* Probabilities below FLT_MIN are flushed to zero: they contribute nothing
 * measurable, and denormal operands slow every later multiply by ~100x
 * (a confident model on foreign text produces many). */
static inline float flush(float p)
{
    return p < FLT_MIN ? 0.0f : p;
}

/* ------------------------------------------------------------ vector helpers
 * Element-wise spans used by softmax, cross-entropy and SwiGLU. Each has a
 * portable version (train_kern.c) and SIMD ones (train_avx2.c), gathered in
 * one table per kernel path and picked at run time by the path tensor.c
 * uses (plait__tensor_path(), which tests can force), so a default (-O2,
 * baseline x86-64) build still runs them 8 floats at a time. exp is the Cephes
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

/* The causal probabilities of one (b, h) are stored by row blocks of
 * ATT_BLOCK rows: block k covers rows [r0, r1) = [k*ATT_BLOCK, min(r0 +
 * ATT_BLOCK, T)) and only the r1 columns a row of it can see, row-major with
 * row stride r1. Products then skip the masked upper triangle (about half of
 * the T*T work and memory) while each block stays one matmul call. */
static inline size_t att_block_offset(size_t k, size_t T)
{
    size_t off = 0;
    for (size_t i = 0; i < k; i++) {
        size_t r0 = i * ATT_BLOCK, r1 = r0 + ATT_BLOCK < T ? r0 + ATT_BLOCK : T;
        off += (r1 - r0) * r1;
    }
    return off;
}

/* T rounded up to a multiple of 8 (one AVX2 vector). */
static inline size_t round8(size_t T)
{
    return (T + 7) & ~(size_t)7;
}

/* T rounded up to a multiple of 16 (one AVX-512 vector). */
static inline size_t round16(size_t T)
{
    return (T + 15) & ~(size_t)15;
}

/* Floats of the scratch attn_head_bwd takes: for HS = 8 (the AVX-512
 * kernel) a row of dP, a block of dS (1 + ATT_BLOCK rows of round16(T))
 * and dK, dV transposed, (8, round16(T)) each; else two rows of dS. */
static inline size_t plait__attn_bwd_scratch_floats(size_t T, size_t HS)
{
    return HS == 8 ? (1 + ATT_BLOCK + 2 * 8) * round16(T) : 2 * round8(T);
}

/* AdamW's per-step constants (train.c, as torch.optim.AdamW computes them). */
typedef struct {
    double b1, b2;      /* betas */
    double step_size;   /* lr / (1 - b1^t) */
    double bc2_sqrt;    /* sqrt(1 - b2^t) */
    double decay;       /* 1 - lr * weight_decay */
    double eps;
} plait__adamw_t;

/* One path's kernels. n counts floats; spans need no alignment. */
typedef struct {
    /* x = exp((x - sub) * mul) (0 below the denormal range); returns the sum. */
    double (*exp_sum)(float *x, size_t n, float sub, float mul);
    float (*max)(const float *x, size_t n);
    /* x = flush(x * f) */
    void (*scale_flush)(float *x, size_t n, float f);
    /* sum a[i] * b[i], returned in double */
    double (*dot)(const float *a, const float *b, size_t n);
    /* dr = p * (dr - dot) * scale */
    void (*softmax_bwd)(float *dr, const float *p, size_t n, float dot, float scale);
    /* out = silu(h1) * h3 */
    void (*swiglu_fwd)(float *out, const float *h1, const float *h3, size_t n);
    /* dh1 = d * h3 * silu'(h1), dh3 = d * silu(h1) */
    void (*swiglu_bwd)(float *dh1, float *dh3, const float *d, const float *h1, const float *h3,
                       size_t n);
    /* o = x * rstd * w for one row of C; returns rstd = 1 / sqrt(mean(x^2) + eps) */
    float (*rms_fwd_row)(float *o, const float *x, const float *w, size_t C, float eps);
    /* dx += dy * w * rstd - x * (mean(dy * w * x) * rstd^3) for one row */
    void (*rms_bwd_row)(float *dx, const float *dy, const float *x, const float *w, float rstd,
                        size_t C);
    /* Every interleaved-pairs head of a row of width floats (a multiple of HS, even), each
     * with the same tables: x = x * cs + swap_pairs(x) * sn * sgn. */
    void (*rope_heads)(float *x, const float *cs, const float *sn, size_t width, size_t HS, float sgn);
    /* Row-wise causal attention of one head for HS a multiple of 8, or NULL
     * where the blocked matmul path is used: forward writes att (row blocks)
     * and oh (T, HS) from qh, kT (HS, round8(T)) and vh; backward overwrites
     * dqh and accumulates dkh, dvh from vT (HS, round8(T)) and doh. row is
     * scratch: round16(T) floats forward, plait__attn_bwd_scratch_floats(T,
     * HS) backward. */
    void (*attn_head_fwd)(float *att, float *oh, const float *qh, const float *kT, const float *vh,
                          float *row, size_t T, size_t HS, float scale);
    void (*attn_head_bwd)(const float *att, const float *qh, const float *kh, const float *vT,
                          const float *doh, float *dqh, float *dkh, float *dvh, float *row,
                          size_t T, size_t HS, float scale);
    /* AdamW over n parameters in double, element by element exactly as the
     * portable loop (no fused multiply-add, so every path is bit-identical):
     * m = b1 m + (1 - b1) g, v = b2 v + (1 - b2) g g,
     * p = p decay - step_size m / (sqrt(v) / bc2_sqrt + eps). */
    void (*adamw)(float *p, float *m, float *v, const float *g, size_t n, const plait__adamw_t *h);
    const char *name; /* "portable", "avx2", "avx512" */
} plait__tkern_t;

extern const plait__tkern_t plait__tkern_portable;
extern const plait__tkern_t plait__tkern_avx2;   /* x86 only */
extern const plait__tkern_t plait__tkern_avx512; /* x86 only */

/* The table of the path the kernels take now (plait__tensor_path()). */
const plait__tkern_t *plait__tkern(void);

/* The table of a path (PLAIT__KPATH_*), or NULL where this CPU or build
 * lacks it: for tests, which compare every table with the portable one. */
const plait__tkern_t *plait__tkern_for(int path);

#if PLAIT_HAVE_X86_SIMD
/* Attention backward of one query row t over 8 head columns at j (the AVX2
 * kernel's step, and the AVX-512 kernel's tail where HS % 16 == 8):
 * dV[t2] += p[t2] dO[t], dK[t2] += dS[t2] Q[t], dQ[t] = sum dS[t2] K[t2]
 * (two chains, even and odd t2). Inlined into either target. */
PLAIT_AVX2 static inline void plait__attn_bwd_cols8(const float *p, const float *ds_row, const float *dot_,
                                                   const float *qt, const float *kh, float *dqt, float *dkh,
                                                   float *dvh, size_t n, size_t HS, size_t j)
{
    __m256 vdo = _mm256_loadu_ps(dot_ + j), vq = _mm256_loadu_ps(qt + j);
    __m256 dq0 = _mm256_setzero_ps(), dq1 = _mm256_setzero_ps();
    for (size_t t2 = 0; t2 < n; t2++) {
        __m256 ps = _mm256_set1_ps(p[t2]), ds = _mm256_set1_ps(ds_row[t2]);
        float *dv = dvh + t2 * HS + j, *dk = dkh + t2 * HS + j;
        _mm256_storeu_ps(dv, _mm256_fmadd_ps(ps, vdo, _mm256_loadu_ps(dv)));
        _mm256_storeu_ps(dk, _mm256_fmadd_ps(ds, vq, _mm256_loadu_ps(dk)));
        if (t2 & 1)
            dq1 = _mm256_fmadd_ps(ds, _mm256_loadu_ps(kh + t2 * HS + j), dq1);
        else
            dq0 = _mm256_fmadd_ps(ds, _mm256_loadu_ps(kh + t2 * HS + j), dq0);
    }
    _mm256_storeu_ps(dqt + j, _mm256_add_ps(dq0, dq1));
}

/* plait__attn_bwd_cols8 for two query rows t and t+1 of one block (row t+1
 * sees one more key, t2 = n), with the same operations in the same order as
 * two calls, so the results are identical; each dK[t2], dV[t2] row is read
 * and written once for both. */
PLAIT_AVX2 static inline void plait__attn_bwd_cols8x2(const float *p0, const float *ds0, const float *p1,
                                                     const float *ds1, const float *do0, const float *do1,
                                                     const float *q0, const float *q1, const float *kh,
                                                     float *dqt0, float *dqt1, float *dkh, float *dvh, size_t n,
                                                     size_t HS, size_t j)
{
    __m256 vdo0 = _mm256_loadu_ps(do0 + j), vq0 = _mm256_loadu_ps(q0 + j);
    __m256 vdo1 = _mm256_loadu_ps(do1 + j), vq1 = _mm256_loadu_ps(q1 + j);
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps(), b0 = _mm256_setzero_ps(), b1 = _mm256_setzero_ps();
    size_t t2 = 0;
    for (; t2 < n; t2++) {
        __m256 s0 = _mm256_set1_ps(ds0[t2]), s1 = _mm256_set1_ps(ds1[t2]);
        __m256 kk = _mm256_loadu_ps(kh + t2 * HS + j);
        float *dv = dvh + t2 * HS + j, *dk = dkh + t2 * HS + j;
        __m256 v = _mm256_fmadd_ps(_mm256_set1_ps(p0[t2]), vdo0, _mm256_loadu_ps(dv));
        _mm256_storeu_ps(dv, _mm256_fmadd_ps(_mm256_set1_ps(p1[t2]), vdo1, v));
        __m256 k = _mm256_fmadd_ps(s0, vq0, _mm256_loadu_ps(dk));
        _mm256_storeu_ps(dk, _mm256_fmadd_ps(s1, vq1, k));
        if (t2 & 1) {
            a1 = _mm256_fmadd_ps(s0, kk, a1);
            b1 = _mm256_fmadd_ps(s1, kk, b1);
        } else {
            a0 = _mm256_fmadd_ps(s0, kk, a0);
            b0 = _mm256_fmadd_ps(s1, kk, b0);
        }
    }
    /* t2 = n: row t+1 only */
    __m256 s1 = _mm256_set1_ps(ds1[n]);
    float *dv = dvh + n * HS + j, *dk = dkh + n * HS + j;
    _mm256_storeu_ps(dv, _mm256_fmadd_ps(_mm256_set1_ps(p1[n]), vdo1, _mm256_loadu_ps(dv)));
    _mm256_storeu_ps(dk, _mm256_fmadd_ps(s1, vq1, _mm256_loadu_ps(dk)));
    if (n & 1)
        b1 = _mm256_fmadd_ps(s1, _mm256_loadu_ps(kh + n * HS + j), b1);
    else
        b0 = _mm256_fmadd_ps(s1, _mm256_loadu_ps(kh + n * HS + j), b0);
    _mm256_storeu_ps(dqt0 + j, _mm256_add_ps(a0, a1));
    _mm256_storeu_ps(dqt1 + j, _mm256_add_ps(b0, b1));
}
#endif

#endif /* PLAIT_TRAIN_KERN_H */
