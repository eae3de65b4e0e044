/*
 * train_avx2.c: the AVX2+FMA kernels of the trainer (train_kern.h). Each
 * function carries the avx2,fma target attribute, so the file compiles in a
 * baseline build; plait__tkern() hands this table out only when the CPU has
 * AVX2 and FMA.
 */
#include "train_kern.h"
#include "tensor_kern.h"

#include <math.h>

#if PLAIT_HAVE_X86_SIMD


PLAIT_AVX2 static inline __m256 exp8(__m256 x)
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

PLAIT_AVX2 static inline double hsum_pd(__m256d a)
{
    __m128d s = _mm_add_pd(_mm256_castpd256_pd128(a), _mm256_extractf128_pd(a, 1));
    return _mm_cvtsd_f64(_mm_add_sd(s, _mm_unpackhi_pd(s, s)));
}

PLAIT_AVX2 static double vexp_sum_avx2(float *x, size_t n, float sub, float mul)
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

PLAIT_AVX2 static float vmax_avx2(const float *x, size_t n)
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

PLAIT_AVX2 static void vscale_flush_avx2(float *x, size_t n, float f)
{
    __m256 vf = _mm256_set1_ps(f), lo = _mm256_set1_ps(FLT_MIN);
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 v = _mm256_mul_ps(_mm256_loadu_ps(x + i), vf);
        _mm256_storeu_ps(x + i, _mm256_and_ps(v, _mm256_cmp_ps(v, lo, _CMP_GE_OQ)));
    }
    for (; i < n; i++) x[i] = flush(x[i] * f);
}

PLAIT_AVX2 static double vdot_avx2(const float *a, const float *b, size_t n)
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
PLAIT_AVX2 static void vsoftmax_bwd_avx2(float *dr, const float *p, size_t n, float dot, float scale)
{
    __m256 vd = _mm256_set1_ps(dot), vs = _mm256_set1_ps(scale);
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 v = _mm256_mul_ps(_mm256_loadu_ps(p + i), _mm256_sub_ps(_mm256_loadu_ps(dr + i), vd));
        _mm256_storeu_ps(dr + i, _mm256_mul_ps(v, vs));
    }
    for (; i < n; i++) dr[i] = p[i] * (dr[i] - dot) * scale;
}

PLAIT_AVX2 static void swiglu_fwd_avx2(float *out, const float *h1, const float *h3, size_t n)
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

PLAIT_AVX2 static void swiglu_bwd_avx2(float *dh1, float *dh3, const float *d, const float *h1, const float *h3, size_t n)
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
PLAIT_AVX2 static float rms_fwd_row_avx2(float *o, const float *x, const float *w, size_t C, float eps)
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
PLAIT_AVX2 static void rms_bwd_row_avx2(float *dx, const float *dy, const float *x, const float *w, float rstd, size_t C)
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

/* Every head of HS floats in a row of width: x = x * cs + swap_pairs(x) * sn * sgn. */
PLAIT_AVX2 static void rope_heads_avx2(float *x, const float *cs, const float *sn, size_t width, size_t HS, float sgn)
{
    __m256 vs = _mm256_set1_ps(sgn);
    for (size_t h0 = 0; h0 < width; h0 += HS) {
        float *xh = x + h0;
        size_t i = 0;
        for (; i + 8 <= HS; i += 8) {
            __m256 v = _mm256_loadu_ps(xh + i);
            __m256 sw = _mm256_permute_ps(v, 0xB1); /* (x1, x0, x3, x2, ...) */
            __m256 r = _mm256_mul_ps(sw, _mm256_mul_ps(_mm256_loadu_ps(sn + i), vs));
            _mm256_storeu_ps(xh + i, _mm256_fmadd_ps(v, _mm256_loadu_ps(cs + i), r));
        }
        for (; i < HS; i += 2) {
            float xr = xh[i], xi = xh[i + 1];
            xh[i] = xr * cs[i] + xi * sn[i] * sgn;
            xh[i + 1] = xi * cs[i + 1] + xr * sn[i + 1] * sgn;
        }
    }
}

/* Row-wise attention for one head when HS is a multiple of 8: scores of a
 * query row are built 8 keys at a time from transposed keys, softmaxed in
 * L1 and applied to V at once, so nothing is packed or re-read; this beats
 * the generic matmul for the small head sizes of small models (HS = 8). */
PLAIT_AVX2 static void attn_head_fwd_avx2(float *att, float *oh, const float *qh, const float *kT, const float *vh, float *row,
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

/* row = dS of one query row: dP[t2] = dO[t] . V[t2], then the softmax
 * backward with P's row p. */
PLAIT_AVX2 static inline void ds_row(float *row, const float *p, const float *dot_, const float *vT, size_t T8,
                                     size_t HS, size_t n, float scale)
{
    for (size_t c = 0; c < n; c += 8) {
        __m256 acc = _mm256_setzero_ps();
        for (size_t i = 0; i < HS; i++)
            acc = _mm256_fmadd_ps(_mm256_set1_ps(dot_[i]), _mm256_loadu_ps(vT + i * T8 + c), acc);
        _mm256_storeu_ps(row + c, acc);
    }
    vsoftmax_bwd_avx2(row, p, n, (float)vdot_avx2(p, row, n), scale);
}

/* Backward of one head: dqh (T, HS) overwritten, dkh and dvh accumulated;
 * pairs of query rows share one pass over dK and dV (row holds two rows of
 * dS). */
PLAIT_AVX2 static void attn_head_bwd_avx2(const float *att, const float *qh, const float *kh, const float *vT,
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
            ds_row(row, p, dot_, vT, T8, HS, n, scale);
            if (t + 1 < r1) { /* rows t and t+1 in one pass over dK, dV */
                float *row1 = row + T8;
                ds_row(row1, p + r1, dot_ + HS, vT, T8, HS, n + 1, scale);
                for (size_t j = 0; j < HS; j += 8)
                    plait__attn_bwd_cols8x2(p, row, p + r1, row1, dot_, dot_ + HS, qt, qt + HS, kh, dqh + t * HS,
                                            dqh + (t + 1) * HS, dkh, dvh, n, HS, j);
                t++;
                continue;
            }
            for (size_t j = 0; j < HS; j += 8)
                plait__attn_bwd_cols8(p, row, dot_, qt, kh, dqh + t * HS, dkh, dvh, n, HS, j);
        }
    }
}

/* AdamW four parameters at a time in double: the portable loop's operations
 * in its order, without fused multiply-adds, so the results are identical. */
PLAIT_AVX2 static void adamw_avx2(float *p, float *m, float *v, const float *g, size_t n, const plait__adamw_t *h)
{
    __m256d b1 = _mm256_set1_pd(h->b1), b2 = _mm256_set1_pd(h->b2);
    __m256d c1 = _mm256_set1_pd(1.0 - h->b1), c2 = _mm256_set1_pd(1.0 - h->b2);
    __m256d ss = _mm256_set1_pd(h->step_size), bc = _mm256_set1_pd(h->bc2_sqrt);
    __m256d dec = _mm256_set1_pd(h->decay), eps = _mm256_set1_pd(h->eps);
    size_t i = 0;
    for (; i + 4 <= n; i += 4) {
        __m256d gi = _mm256_cvtps_pd(_mm_loadu_ps(g + i));
        __m256d mi = _mm256_add_pd(_mm256_mul_pd(b1, _mm256_cvtps_pd(_mm_loadu_ps(m + i))), _mm256_mul_pd(c1, gi));
        __m256d vi = _mm256_add_pd(_mm256_mul_pd(b2, _mm256_cvtps_pd(_mm_loadu_ps(v + i))),
                                   _mm256_mul_pd(_mm256_mul_pd(c2, gi), gi));
        _mm_storeu_ps(m + i, _mm256_cvtpd_ps(mi));
        _mm_storeu_ps(v + i, _mm256_cvtpd_ps(vi));
        __m256d pi = _mm256_mul_pd(_mm256_cvtps_pd(_mm_loadu_ps(p + i)), dec);
        __m256d den = _mm256_add_pd(_mm256_div_pd(_mm256_sqrt_pd(vi), bc), eps);
        pi = _mm256_sub_pd(pi, _mm256_div_pd(_mm256_mul_pd(ss, mi), den));
        _mm_storeu_ps(p + i, _mm256_cvtpd_ps(pi));
    }
    if (i < n) plait__tkern_portable.adamw(p + i, m + i, v + i, g + i, n - i, h); /* the tail */
}

const plait__tkern_t plait__tkern_avx2 = {
    .exp_sum = vexp_sum_avx2,
    .max = vmax_avx2,
    .scale_flush = vscale_flush_avx2,
    .dot = vdot_avx2,
    .softmax_bwd = vsoftmax_bwd_avx2,
    .swiglu_fwd = swiglu_fwd_avx2,
    .swiglu_bwd = swiglu_bwd_avx2,
    .rms_fwd_row = rms_fwd_row_avx2,
    .rms_bwd_row = rms_bwd_row_avx2,
    .rope_heads = rope_heads_avx2,
    .attn_head_fwd = attn_head_fwd_avx2,
    .attn_head_bwd = attn_head_bwd_avx2,
    .adamw = adamw_avx2,
    .name = "avx2",
};

#endif /* PLAIT_HAVE_X86_SIMD */
