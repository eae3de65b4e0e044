/*
 * train_avx512.c: the AVX-512 kernels of the trainer (train_kern.h), 16
 * floats per zmm register, remainders through lane masks instead of scalar
 * loops. Each function carries the avx512f target attribute, so the file
 * compiles in a baseline build; plait__tkern() hands this table out only
 * when the CPU has AVX512F (and AVX2+FMA, which the 8-float halves of the
 * attention kernels use for head sizes that are an odd multiple of 8).
 *
 * The exp polynomial, its range and the flush of results below FLT_MIN are
 * the ones of the portable and AVX2 kernels; sums accumulate in other orders
 * (16 lanes), so results agree with the portable path to float rounding, not
 * bit for bit, except AdamW, which does the portable loop's double
 * operations in its order and is identical.
 *
 * Attention heads of 8 floats (stories260K) have their own forward and
 * backward (attn_head_fwd8_avx512, attn_head_bwd8_avx512): a row of 8 is
 * half a register, so they put two key rows in one register, fuse each
 * query row's passes over registers, and accumulate dK and dV transposed
 * (16 key positions per register) instead of row by row.
 */
#include "train_kern.h"
#include "tensor_kern.h"

#include <math.h>

#if PLAIT_HAVE_X86_SIMD

#define V16 PLAIT_AVX512

/* Lanes 0 .. r-1 of a 16-lane mask, r < 16. */
static inline __mmask16 lanes(size_t r) { return (__mmask16)((1u << r) - 1u); }

/* Sum of the 16 floats of v, in double. */
V16 static inline double hsum16_pd(__m512 v)
{
    __m512d lo = _mm512_cvtps_pd(_mm512_castps512_ps256(v));
    __m512d hi = _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
    return _mm512_reduce_add_pd(_mm512_add_pd(lo, hi));
}

/* exp of 16 floats; NaN propagates (the operand order of min/max keeps it),
 * inputs below EXP_LO give 0. */
V16 static inline __m512 exp16(__m512 x)
{
    __mmask16 under = _mm512_cmp_ps_mask(x, _mm512_set1_ps(EXP_LO), _CMP_LT_OQ);
    x = _mm512_max_ps(_mm512_set1_ps(EXP_LO), _mm512_min_ps(_mm512_set1_ps(EXP_HI), x));
    __m512 fx = _mm512_roundscale_ps(_mm512_fmadd_ps(x, _mm512_set1_ps(EXP_LOG2E), _mm512_set1_ps(0.5f)),
                                     _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(fx, _mm512_set1_ps(EXP_C1), x);
    r = _mm512_fnmadd_ps(fx, _mm512_set1_ps(EXP_C2), r);
    __m512 y = _mm512_set1_ps(EXP_P0);
    y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(EXP_P1));
    y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(EXP_P2));
    y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(EXP_P3));
    y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(EXP_P4));
    y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(EXP_P5));
    y = _mm512_fmadd_ps(y, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
    __m512i e = _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvttps_epi32(fx), _mm512_set1_epi32(127)), 23);
    return _mm512_maskz_mul_ps((__mmask16)~under, y, _mm512_castsi512_ps(e));
}

V16 static double exp_sum_avx512(float *x, size_t n, float sub, float mul)
{
    __m512 vs = _mm512_set1_ps(sub), vm = _mm512_set1_ps(mul);
    __m512d acc = _mm512_setzero_pd();
    for (size_t i = 0; i < n; i += 16) {
        __mmask16 k = n - i >= 16 ? (__mmask16)0xFFFF : lanes(n - i);
        __m512 e = exp16(_mm512_mul_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, x + i), vs), vm));
        e = _mm512_maskz_mov_ps(k, e);
        _mm512_mask_storeu_ps(x + i, k, e);
        acc = _mm512_add_pd(acc, _mm512_cvtps_pd(_mm512_castps512_ps256(e)));
        acc = _mm512_add_pd(acc, _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(e), 1))));
    }
    return _mm512_reduce_add_pd(acc);
}

V16 static float max_avx512(const float *x, size_t n)
{
    __m512 m = _mm512_set1_ps(-INFINITY);
    for (size_t i = 0; i < n; i += 16) {
        __mmask16 k = n - i >= 16 ? (__mmask16)0xFFFF : lanes(n - i);
        m = _mm512_max_ps(m, _mm512_mask_loadu_ps(_mm512_set1_ps(-INFINITY), k, x + i));
    }
    return _mm512_reduce_max_ps(m);
}

V16 static void scale_flush_avx512(float *x, size_t n, float f)
{
    __m512 vf = _mm512_set1_ps(f), lo = _mm512_set1_ps(FLT_MIN);
    for (size_t i = 0; i < n; i += 16) {
        __mmask16 k = n - i >= 16 ? (__mmask16)0xFFFF : lanes(n - i);
        __m512 v = _mm512_mul_ps(_mm512_maskz_loadu_ps(k, x + i), vf);
        /* Zero where v < FLT_MIN, as the portable flush(): NaN stays NaN. */
        _mm512_mask_storeu_ps(x + i, k, _mm512_maskz_mov_ps((__mmask16)~_mm512_cmp_ps_mask(v, lo, _CMP_LT_OQ), v));
    }
}

V16 static double dot_avx512(const float *a, const float *b, size_t n)
{
    __m512 acc = _mm512_setzero_ps();
    for (size_t i = 0; i < n; i += 16) {
        __mmask16 k = n - i >= 16 ? (__mmask16)0xFFFF : lanes(n - i);
        acc = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(k, a + i), _mm512_maskz_loadu_ps(k, b + i), acc);
    }
    return hsum16_pd(acc);
}

/* dr = p * (dr - dot) * scale */
V16 static void softmax_bwd_avx512(float *dr, const float *p, size_t n, float dot, float scale)
{
    __m512 vd = _mm512_set1_ps(dot), vs = _mm512_set1_ps(scale);
    for (size_t i = 0; i < n; i += 16) {
        __mmask16 k = n - i >= 16 ? (__mmask16)0xFFFF : lanes(n - i);
        __m512 v = _mm512_mul_ps(_mm512_maskz_loadu_ps(k, p + i), _mm512_sub_ps(_mm512_maskz_loadu_ps(k, dr + i), vd));
        _mm512_mask_storeu_ps(dr + i, k, _mm512_mul_ps(v, vs));
    }
}

V16 static inline __m512 sigmoid16(__m512 x)
{
    __m512 one = _mm512_set1_ps(1.0f);
    return _mm512_div_ps(one, _mm512_add_ps(one, exp16(_mm512_sub_ps(_mm512_setzero_ps(), x))));
}

V16 static void swiglu_fwd_avx512(float *out, const float *h1, const float *h3, size_t n)
{
    for (size_t i = 0; i < n; i += 16) {
        __mmask16 k = n - i >= 16 ? (__mmask16)0xFFFF : lanes(n - i);
        __m512 x = _mm512_maskz_loadu_ps(k, h1 + i);
        __m512 y = _mm512_mul_ps(_mm512_mul_ps(x, sigmoid16(x)), _mm512_maskz_loadu_ps(k, h3 + i));
        _mm512_mask_storeu_ps(out + i, k, y);
    }
}

V16 static void swiglu_bwd_avx512(float *dh1, float *dh3, const float *d, const float *h1, const float *h3, size_t n)
{
    __m512 one = _mm512_set1_ps(1.0f);
    for (size_t i = 0; i < n; i += 16) {
        __mmask16 k = n - i >= 16 ? (__mmask16)0xFFFF : lanes(n - i);
        __m512 x = _mm512_maskz_loadu_ps(k, h1 + i), g = _mm512_maskz_loadu_ps(k, d + i);
        __m512 sig = sigmoid16(x);
        _mm512_mask_storeu_ps(dh3 + i, k, _mm512_mul_ps(_mm512_mul_ps(g, x), sig));
        __m512 dsilu = _mm512_mul_ps(sig, _mm512_fmadd_ps(x, _mm512_sub_ps(one, sig), one));
        _mm512_mask_storeu_ps(dh1 + i, k, _mm512_mul_ps(_mm512_mul_ps(g, _mm512_maskz_loadu_ps(k, h3 + i)), dsilu));
    }
}

V16 static float rms_fwd_row_avx512(float *o, const float *x, const float *w, size_t C, float eps)
{
    __m512 acc = _mm512_setzero_ps();
    for (size_t i = 0; i < C; i += 16) {
        __mmask16 k = C - i >= 16 ? (__mmask16)0xFFFF : lanes(C - i);
        __m512 v = _mm512_maskz_loadu_ps(k, x + i);
        acc = _mm512_fmadd_ps(v, v, acc);
    }
    double ss = hsum16_pd(acc);
    float rstd = (float)(1.0 / sqrt(ss / (double)C + (double)eps));
    __m512 vr = _mm512_set1_ps(rstd);
    for (size_t i = 0; i < C; i += 16) {
        __mmask16 k = C - i >= 16 ? (__mmask16)0xFFFF : lanes(C - i);
        __m512 y = _mm512_mul_ps(_mm512_mul_ps(_mm512_maskz_loadu_ps(k, x + i), vr), _mm512_maskz_loadu_ps(k, w + i));
        _mm512_mask_storeu_ps(o + i, k, y);
    }
    return rstd;
}

V16 static void rms_bwd_row_avx512(float *dx, const float *dy, const float *x, const float *w, float rstd, size_t C)
{
    __m512 acc = _mm512_setzero_ps();
    for (size_t i = 0; i < C; i += 16) {
        __mmask16 k = C - i >= 16 ? (__mmask16)0xFFFF : lanes(C - i);
        acc = _mm512_fmadd_ps(_mm512_mul_ps(_mm512_maskz_loadu_ps(k, dy + i), _mm512_maskz_loadu_ps(k, w + i)),
                              _mm512_maskz_loadu_ps(k, x + i), acc);
    }
    double dot = hsum16_pd(acc);
    float c2 = (float)(dot / (double)C) * rstd * rstd * rstd;
    __m512 vr = _mm512_set1_ps(rstd), vc = _mm512_set1_ps(c2);
    for (size_t i = 0; i < C; i += 16) {
        __mmask16 k = C - i >= 16 ? (__mmask16)0xFFFF : lanes(C - i);
        __m512 g = _mm512_mul_ps(_mm512_mul_ps(_mm512_maskz_loadu_ps(k, dy + i), _mm512_maskz_loadu_ps(k, w + i)), vr);
        g = _mm512_fnmadd_ps(_mm512_maskz_loadu_ps(k, x + i), vc, g);
        _mm512_mask_storeu_ps(dx + i, k, _mm512_add_ps(_mm512_maskz_loadu_ps(k, dx + i), g));
    }
}

/* Every head of HS (even) floats in a row of width: x = x * cs + swap_pairs(x) * sn * sgn.
 * Heads of 8 floats go two to a register, with the tables repeated in both halves. */
V16 static void rope_heads_avx512(float *x, const float *cs, const float *sn, size_t width, size_t HS, float sgn)
{
    __m512 vs = _mm512_set1_ps(sgn);
    size_t h0 = 0;
    if (HS == 8) {
        __m256 c8 = _mm256_loadu_ps(cs), s8 = _mm256_loadu_ps(sn);
        __m512 vc = _mm512_castpd_ps(_mm512_broadcast_f64x4(_mm256_castps_pd(c8))); /* both halves */
        __m512 vn = _mm512_mul_ps(_mm512_castpd_ps(_mm512_broadcast_f64x4(_mm256_castps_pd(s8))), vs);
        for (; h0 + 16 <= width; h0 += 16) {
            __m512 v = _mm512_loadu_ps(x + h0);
            __m512 r = _mm512_mul_ps(_mm512_permute_ps(v, 0xB1), vn);
            _mm512_storeu_ps(x + h0, _mm512_fmadd_ps(v, vc, r));
        }
    }
    for (; h0 < width; h0 += HS)
        for (size_t i = 0; i < HS; i += 16) {
            __mmask16 k = HS - i >= 16 ? (__mmask16)0xFFFF : lanes(HS - i);
            float *xh = x + h0;
            __m512 v = _mm512_maskz_loadu_ps(k, xh + i);
            __m512 sw = _mm512_permute_ps(v, 0xB1); /* (x1, x0, x3, x2, ...) within each 128-bit lane */
            __m512 r = _mm512_mul_ps(sw, _mm512_mul_ps(_mm512_maskz_loadu_ps(k, sn + i), vs));
            _mm512_mask_storeu_ps(xh + i, k, _mm512_fmadd_ps(v, _mm512_maskz_loadu_ps(k, cs + i), r));
        }
}

/* sum_i q[i] * kT[i * T8 + c + l] for the lanes l of k: 16 columns of a
 * row of scores (or of dP, dO against transposed values). */
V16 static inline __m512 cols_dot(const float *q, const float *kT, size_t T8, size_t HS, size_t c, __mmask16 k)
{
    __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
    size_t i = 0;
    for (; i + 2 <= HS; i += 2) {
        a0 = _mm512_fmadd_ps(_mm512_set1_ps(q[i]), _mm512_maskz_loadu_ps(k, kT + i * T8 + c), a0);
        a1 = _mm512_fmadd_ps(_mm512_set1_ps(q[i + 1]), _mm512_maskz_loadu_ps(k, kT + (i + 1) * T8 + c), a1);
    }
    if (i < HS) a0 = _mm512_fmadd_ps(_mm512_set1_ps(q[i]), _mm512_maskz_loadu_ps(k, kT + i * T8 + c), a0);
    return _mm512_add_ps(a0, a1);
}

/* row[c] = sum_i q[i] * kT[i * T8 + c] for c < n (scores of one query row,
 * or dP of one row of dO against transposed values). */
V16 static inline void row_scores(float *row, const float *q, const float *kT, size_t T8, size_t HS, size_t n)
{
    for (size_t c = 0; c < n; c += 16) {
        __mmask16 k = n - c >= 16 ? (__mmask16)0xFFFF : lanes(n - c);
        _mm512_mask_storeu_ps(row + c, k, cols_dot(q, kT, T8, HS, c, k));
    }
}

/* Four accumulators of rows8_chunk: two rows of 8 floats each. */
typedef struct {
    __m512 a0, a1, a2, a3;
} rows8_acc_t;

/* a += sum_{i < r} w[i] m[i] for r (1 .. 16) rows of 8 floats, m (r, 8):
 * two rows per register, [w[i] x 8, w[i+1] x 8] * m[i .. i+1], the
 * weights spread by permutes of wv (w[0 .. 15], 0 past r); no row past r is
 * read. */
V16 __attribute__((always_inline)) static inline void rows8_chunk(rows8_acc_t *a, __m512 wv, const float *m, size_t r)
{
    const __m512i two = _mm512_set1_epi32(2);
    __m512i ix = _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0);
    if (r == 16) {
        a->a0 = _mm512_fmadd_ps(_mm512_permutexvar_ps(ix, wv), _mm512_loadu_ps(m), a->a0);
        ix = _mm512_add_epi32(ix, two);
        a->a1 = _mm512_fmadd_ps(_mm512_permutexvar_ps(ix, wv), _mm512_loadu_ps(m + 16), a->a1);
        ix = _mm512_add_epi32(ix, two);
        a->a2 = _mm512_fmadd_ps(_mm512_permutexvar_ps(ix, wv), _mm512_loadu_ps(m + 32), a->a2);
        ix = _mm512_add_epi32(ix, two);
        a->a3 = _mm512_fmadd_ps(_mm512_permutexvar_ps(ix, wv), _mm512_loadu_ps(m + 48), a->a3);
        ix = _mm512_add_epi32(ix, two);
        a->a0 = _mm512_fmadd_ps(_mm512_permutexvar_ps(ix, wv), _mm512_loadu_ps(m + 64), a->a0);
        ix = _mm512_add_epi32(ix, two);
        a->a1 = _mm512_fmadd_ps(_mm512_permutexvar_ps(ix, wv), _mm512_loadu_ps(m + 80), a->a1);
        ix = _mm512_add_epi32(ix, two);
        a->a2 = _mm512_fmadd_ps(_mm512_permutexvar_ps(ix, wv), _mm512_loadu_ps(m + 96), a->a2);
        ix = _mm512_add_epi32(ix, two);
        a->a3 = _mm512_fmadd_ps(_mm512_permutexvar_ps(ix, wv), _mm512_loadu_ps(m + 112), a->a3);
        return;
    }
    for (size_t k = 0; 2 * k < r; k++, ix = _mm512_add_epi32(ix, two)) {
        __mmask16 mk = 2 * k + 1 < r ? (__mmask16)0xFFFF : (__mmask16)0x00FF;
        a->a0 = _mm512_fmadd_ps(_mm512_permutexvar_ps(ix, wv), _mm512_maskz_loadu_ps(mk, m + 16 * k), a->a0);
    }
}

/* The 8 floats sum_i w[i] m[i] that a holds. */
V16 static inline __m256 rows8_sum(const rows8_acc_t *a)
{
    __m512 s = _mm512_add_ps(_mm512_add_ps(a->a0, a->a1), _mm512_add_ps(a->a2, a->a3));
    return _mm256_add_ps(_mm512_castps512_ps256(s), _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(s), 1)));
}

/* Forward of one head of HS = 8, the general kernel's operations fused per
 * row over registers: scores (row_scores' chains) and their max, then exp
 * and its sum (exp_sum's), then the scale and flush (scale_flush's), each
 * 16 lanes stored straight into P's row and weighting V's rows
 * (rows8_chunk). row (round16(T) floats) is only written whole, so each
 * pass reads it back from the store buffer. */
V16 static void attn_head_fwd8_avx512(float *att, float *oh, const float *qh, const float *kT, const float *vh,
                                      float *row, size_t T, float scale)
{
    size_t T8 = round8(T);
    const __m512 ninf = _mm512_set1_ps(-INFINITY), vm = _mm512_set1_ps(scale), lo = _mm512_set1_ps(FLT_MIN);
    for (size_t r0 = 0; r0 < T; r0 += ATT_BLOCK) {
        size_t r1 = r0 + ATT_BLOCK < T ? r0 + ATT_BLOCK : T;
        float *blk = att + att_block_offset(r0 / ATT_BLOCK, T);
        for (size_t t = r0; t < r1; t++) {
            size_t n = t + 1;
            const float *q = qh + t * 8;
            __m512 mx = ninf;
            for (size_t c = 0; c < n; c += 16) {
                __mmask16 k = n - c >= 16 ? (__mmask16)0xFFFF : lanes(n - c);
                __m512 v = cols_dot(q, kT, T8, 8, c, k);
                _mm512_storeu_ps(row + c, v);
                mx = _mm512_max_ps(mx, _mm512_mask_mov_ps(ninf, k, v));
            }
            __m512 vs = _mm512_set1_ps(_mm512_reduce_max_ps(mx));
            __m512d acc = _mm512_setzero_pd();
            for (size_t c = 0; c < n; c += 16) {
                __mmask16 k = n - c >= 16 ? (__mmask16)0xFFFF : lanes(n - c);
                __m512 e = _mm512_maskz_mov_ps(k, exp16(_mm512_mul_ps(_mm512_sub_ps(_mm512_loadu_ps(row + c), vs), vm)));
                _mm512_storeu_ps(row + c, e);
                acc = _mm512_add_pd(acc, _mm512_cvtps_pd(_mm512_castps512_ps256(e)));
                acc = _mm512_add_pd(acc, _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(e), 1))));
            }
            __m512 vf = _mm512_set1_ps((float)(1.0 / _mm512_reduce_add_pd(acc)));
            float *a = blk + (t - r0) * r1;
            rows8_acc_t o = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
            size_t c = 0;
            for (; c < n; c += 16) { /* lanes past n are 0; P's row ends at r1 */
                size_t r = n - c < 16 ? n - c : 16;
                __m512 v = _mm512_mul_ps(_mm512_loadu_ps(row + c), vf);
                v = _mm512_maskz_mov_ps((__mmask16)~_mm512_cmp_ps_mask(v, lo, _CMP_LT_OQ), v);
                _mm512_mask_storeu_ps(a + c, r1 - c >= 16 ? (__mmask16)0xFFFF : lanes(r1 - c), v);
                rows8_chunk(&o, v, vh + c * 8, r);
            }
            if (c < r1) memset(a + c, 0, (r1 - c) * sizeof(float));
            _mm256_storeu_ps(oh + t * 8, rows8_sum(&o));
        }
    }
}

/* Row-wise attention for one head when HS is a multiple of 8 (see the AVX2
 * twin in train_avx2.c): columns j of the head go 16 at a time, and the last
 * 8 through a ymm register when HS is an odd multiple of 8. */
V16 static void attn_head_fwd_avx512(float *att, float *oh, const float *qh, const float *kT, const float *vh,
                                     float *row, size_t T, size_t HS, float scale)
{
    if (HS == 8) {
        attn_head_fwd8_avx512(att, oh, qh, kT, vh, row, T, scale);
        return;
    }
    size_t T8 = round8(T);
    for (size_t r0 = 0; r0 < T; r0 += ATT_BLOCK) {
        size_t r1 = r0 + ATT_BLOCK < T ? r0 + ATT_BLOCK : T;
        float *blk = att + att_block_offset(r0 / ATT_BLOCK, T);
        for (size_t t = r0; t < r1; t++) {
            size_t n = t + 1;
            row_scores(row, qh + t * HS, kT, T8, HS, n);
            float mx = max_avx512(row, n);
            double sum = exp_sum_avx512(row, n, mx, scale);
            scale_flush_avx512(row, n, (float)(1.0 / sum));
            float *a = blk + (t - r0) * r1;
            memcpy(a, row, n * sizeof(float));
            memset(a + n, 0, (r1 - n) * sizeof(float));
            size_t j = 0;
            for (; j + 16 <= HS; j += 16) {
                __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
                size_t t2 = 0;
                for (; t2 + 2 <= n; t2 += 2) {
                    a0 = _mm512_fmadd_ps(_mm512_set1_ps(row[t2]), _mm512_loadu_ps(vh + t2 * HS + j), a0);
                    a1 = _mm512_fmadd_ps(_mm512_set1_ps(row[t2 + 1]), _mm512_loadu_ps(vh + (t2 + 1) * HS + j), a1);
                }
                if (t2 < n) a0 = _mm512_fmadd_ps(_mm512_set1_ps(row[t2]), _mm512_loadu_ps(vh + t2 * HS + j), a0);
                _mm512_storeu_ps(oh + t * HS + j, _mm512_add_ps(a0, a1));
            }
            if (j < HS) { /* HS % 16 == 8 */
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

/* d[r * 8 + c] += s[c * ld + r] for r, c < 8: one 8 x 8 tile of a
 * transposed (8, ld) head added back into (rows, 8). */
V16 static inline void add_transposed8x8(float *d, const float *s, size_t ld)
{
    __m256 r0 = _mm256_loadu_ps(s), r1 = _mm256_loadu_ps(s + ld), r2 = _mm256_loadu_ps(s + 2 * ld),
           r3 = _mm256_loadu_ps(s + 3 * ld), r4 = _mm256_loadu_ps(s + 4 * ld), r5 = _mm256_loadu_ps(s + 5 * ld),
           r6 = _mm256_loadu_ps(s + 6 * ld), r7 = _mm256_loadu_ps(s + 7 * ld);
    __m256 t0 = _mm256_unpacklo_ps(r0, r1), t1 = _mm256_unpackhi_ps(r0, r1), t2 = _mm256_unpacklo_ps(r2, r3),
           t3 = _mm256_unpackhi_ps(r2, r3), t4 = _mm256_unpacklo_ps(r4, r5), t5 = _mm256_unpackhi_ps(r4, r5),
           t6 = _mm256_unpacklo_ps(r6, r7), t7 = _mm256_unpackhi_ps(r6, r7);
    __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE),
           u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xEE),
           u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xEE),
           u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xEE);
    __m256 o[8] = {_mm256_permute2f128_ps(u0, u4, 0x20), _mm256_permute2f128_ps(u1, u5, 0x20),
                   _mm256_permute2f128_ps(u2, u6, 0x20), _mm256_permute2f128_ps(u3, u7, 0x20),
                   _mm256_permute2f128_ps(u0, u4, 0x31), _mm256_permute2f128_ps(u1, u5, 0x31),
                   _mm256_permute2f128_ps(u2, u6, 0x31), _mm256_permute2f128_ps(u3, u7, 0x31)};
    for (int r = 0; r < 8; r++)
        _mm256_storeu_ps(d + r * 8, _mm256_add_ps(_mm256_loadu_ps(d + r * 8), o[r]));
}

/* Backward of one head of HS = 8. A row of dK or dV is half a register, so
 * the general kernel below (one query row at a time, adding into every
 * dK[t2], dV[t2] row) reads and writes each 32-byte row once per query row
 * at half the vector width, and its dQ chains wait on each other. Here,
 * per query row t: dP = dO[t] V^T and its dot with P[t] in registers (dP
 * stored whole, so the next pass reads it back from the store buffer),
 * then dS = P (dP - dot) scale, stored in a block of dS rows (stride
 * round16(r1), 0 past the diagonal) and fed straight into dQ[t] = sum
 * dS[t2] K[t2] (two key rows per register, rows8_chunk). Then per block,
 * dK and dV accumulate transposed, (8, round16(T)) each in scr, 16 key
 * positions per register, all 16 accumulators in registers over the
 * block's rows: dKT[i][c..c+16] += Q[t][i] dS[t][c..c+16], dVT[i][..] +=
 * dO[t][i] P[t][..]. They are added into dkh and dvh once, at the end. */
V16 static void attn_head_bwd8_avx512(const float *att, const float *qh, const float *kh, const float *vT,
                                      const float *doh, float *dqh, float *dkh, float *dvh, float *scr, size_t T,
                                      float scale)
{
    size_t T8 = round8(T), T16 = round16(T);
    float *dp = scr, *ds = dp + T16, *dkT = ds + ATT_BLOCK * T16, *dvT = dkT + 8 * T16;
    const __m512 vs = _mm512_set1_ps(scale);
    memset(dkT, 0, 16 * T16 * sizeof(float));
    for (size_t r0 = 0; r0 < T; r0 += ATT_BLOCK) {
        size_t r1 = r0 + ATT_BLOCK < T ? r0 + ATT_BLOCK : T, R16 = round16(r1);
        const float *blk = att + att_block_offset(r0 / ATT_BLOCK, T);
        for (size_t t = r0; t < r1; t++) {
            size_t n = t + 1;
            const float *p = blk + (t - r0) * r1, *o = doh + t * 8;
            float *d = ds + (t - r0) * R16;
            /* dP[t2] = dO[t] . V[t2] (0 past n) and its dot with P, kept in
             * registers: full-width stores only, which later loads can take
             * straight from the store buffer. */
            __m512 dot = _mm512_setzero_ps();
            for (size_t c = 0; c < n; c += 16) {
                __mmask16 k = n - c >= 16 ? (__mmask16)0xFFFF : lanes(n - c);
                __m512 v = cols_dot(o, vT, T8, 8, c, k);
                _mm512_storeu_ps(dp + c, v);
                /* P was written long before (forward): fetch the next block's rows to L2 */
                _mm_prefetch((const char *)(p + c + (r1 - r0) * r1), _MM_HINT_T1);
                dot = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(k, p + c), v, dot);
            }
            /* dS = P (dP - dot) scale, stored for dK (0 past n up to R16), and
             * dQ[t] = sum dS[t2] K[t2] from the registers. */
            __m512 vd = _mm512_set1_ps((float)hsum16_pd(dot));
            rows8_acc_t q = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
            for (size_t c = 0; c < n; c += 16) {
                size_t r = n - c < 16 ? n - c : 16;
                __mmask16 k = r == 16 ? (__mmask16)0xFFFF : lanes(r);
                __m512 v = _mm512_mul_ps(_mm512_maskz_loadu_ps(k, p + c), _mm512_sub_ps(_mm512_loadu_ps(dp + c), vd));
                v = _mm512_mul_ps(v, vs);
                _mm512_storeu_ps(d + c, v);
                rows8_chunk(&q, v, kh + c * 8, r);
            }
            _mm256_storeu_ps(dqh + t * 8, rows8_sum(&q));
        }
        /* Key positions c .. c+15; rows above c see none of them. */
        for (size_t c = 0; c < r1; c += 16) {
            __mmask16 k = r1 - c >= 16 ? (__mmask16)0xFFFF : lanes(r1 - c);
            /* sixteen accumulators, named so that they stay in registers */
            float *kc = dkT + c, *vc = dvT + c;
            __m512 k0 = _mm512_loadu_ps(kc + 0 * T16), k1 = _mm512_loadu_ps(kc + 1 * T16),
                   k2 = _mm512_loadu_ps(kc + 2 * T16), k3 = _mm512_loadu_ps(kc + 3 * T16),
                   k4 = _mm512_loadu_ps(kc + 4 * T16), k5 = _mm512_loadu_ps(kc + 5 * T16),
                   k6 = _mm512_loadu_ps(kc + 6 * T16), k7 = _mm512_loadu_ps(kc + 7 * T16);
            __m512 v0 = _mm512_loadu_ps(vc + 0 * T16), v1 = _mm512_loadu_ps(vc + 1 * T16),
                   v2 = _mm512_loadu_ps(vc + 2 * T16), v3 = _mm512_loadu_ps(vc + 3 * T16),
                   v4 = _mm512_loadu_ps(vc + 4 * T16), v5 = _mm512_loadu_ps(vc + 5 * T16),
                   v6 = _mm512_loadu_ps(vc + 6 * T16), v7 = _mm512_loadu_ps(vc + 7 * T16);
            for (size_t t = c > r0 ? c : r0; t < r1; t++) {
                __m512 s = _mm512_loadu_ps(ds + (t - r0) * R16 + c);
                __m512 pp = _mm512_maskz_loadu_ps(k, blk + (t - r0) * r1 + c);
                const float *q = qh + t * 8, *o = doh + t * 8;
                k0 = _mm512_fmadd_ps(_mm512_set1_ps(q[0]), s, k0);
                v0 = _mm512_fmadd_ps(_mm512_set1_ps(o[0]), pp, v0);
                k1 = _mm512_fmadd_ps(_mm512_set1_ps(q[1]), s, k1);
                v1 = _mm512_fmadd_ps(_mm512_set1_ps(o[1]), pp, v1);
                k2 = _mm512_fmadd_ps(_mm512_set1_ps(q[2]), s, k2);
                v2 = _mm512_fmadd_ps(_mm512_set1_ps(o[2]), pp, v2);
                k3 = _mm512_fmadd_ps(_mm512_set1_ps(q[3]), s, k3);
                v3 = _mm512_fmadd_ps(_mm512_set1_ps(o[3]), pp, v3);
                k4 = _mm512_fmadd_ps(_mm512_set1_ps(q[4]), s, k4);
                v4 = _mm512_fmadd_ps(_mm512_set1_ps(o[4]), pp, v4);
                k5 = _mm512_fmadd_ps(_mm512_set1_ps(q[5]), s, k5);
                v5 = _mm512_fmadd_ps(_mm512_set1_ps(o[5]), pp, v5);
                k6 = _mm512_fmadd_ps(_mm512_set1_ps(q[6]), s, k6);
                v6 = _mm512_fmadd_ps(_mm512_set1_ps(o[6]), pp, v6);
                k7 = _mm512_fmadd_ps(_mm512_set1_ps(q[7]), s, k7);
                v7 = _mm512_fmadd_ps(_mm512_set1_ps(o[7]), pp, v7);
            }
            _mm512_storeu_ps(kc + 0 * T16, k0);
            _mm512_storeu_ps(kc + 1 * T16, k1);
            _mm512_storeu_ps(kc + 2 * T16, k2);
            _mm512_storeu_ps(kc + 3 * T16, k3);
            _mm512_storeu_ps(kc + 4 * T16, k4);
            _mm512_storeu_ps(kc + 5 * T16, k5);
            _mm512_storeu_ps(kc + 6 * T16, k6);
            _mm512_storeu_ps(kc + 7 * T16, k7);
            _mm512_storeu_ps(vc + 0 * T16, v0);
            _mm512_storeu_ps(vc + 1 * T16, v1);
            _mm512_storeu_ps(vc + 2 * T16, v2);
            _mm512_storeu_ps(vc + 3 * T16, v3);
            _mm512_storeu_ps(vc + 4 * T16, v4);
            _mm512_storeu_ps(vc + 5 * T16, v5);
            _mm512_storeu_ps(vc + 6 * T16, v6);
            _mm512_storeu_ps(vc + 7 * T16, v7);
        }
    }
    size_t t2 = 0;
    for (; t2 + 8 <= T; t2 += 8) {
        add_transposed8x8(dkh + t2 * 8, dkT + t2, T16);
        add_transposed8x8(dvh + t2 * 8, dvT + t2, T16);
    }
    for (; t2 < T; t2++)
        for (size_t i = 0; i < 8; i++) {
            dkh[t2 * 8 + i] += dkT[i * T16 + t2];
            dvh[t2 * 8 + i] += dvT[i * T16 + t2];
        }
}

/* Backward of one head: dqh (T, HS) overwritten, dkh and dvh accumulated. */
V16 static void attn_head_bwd_avx512(const float *att, const float *qh, const float *kh, const float *vT,
                                     const float *doh, float *dqh, float *dkh, float *dvh, float *row, size_t T,
                                     size_t HS, float scale)
{
    if (HS == 8) {
        attn_head_bwd8_avx512(att, qh, kh, vT, doh, dqh, dkh, dvh, row, T, scale);
        return;
    }
    size_t T8 = round8(T);
    for (size_t r0 = 0; r0 < T; r0 += ATT_BLOCK) {
        size_t r1 = r0 + ATT_BLOCK < T ? r0 + ATT_BLOCK : T;
        const float *blk = att + att_block_offset(r0 / ATT_BLOCK, T);
        for (size_t t = r0; t < r1; t++) {
            size_t n = t + 1;
            const float *p = blk + (t - r0) * r1, *dot_ = doh + t * HS, *qt = qh + t * HS;
            row_scores(row, dot_, vT, T8, HS, n); /* dP[t2] = dO[t] . V[t2] */
            softmax_bwd_avx512(row, p, n, (float)dot_avx512(p, row, n), scale); /* row = dS */
            size_t j = 0;
            for (; j + 16 <= HS; j += 16) {
                __m512 vdo = _mm512_loadu_ps(dot_ + j), vq = _mm512_loadu_ps(qt + j);
                __m512 dq0 = _mm512_setzero_ps(), dq1 = _mm512_setzero_ps();
                for (size_t t2 = 0; t2 < n; t2++) {
                    __m512 ps = _mm512_set1_ps(p[t2]), ds = _mm512_set1_ps(row[t2]);
                    float *dv = dvh + t2 * HS + j, *dk = dkh + t2 * HS + j;
                    _mm512_storeu_ps(dv, _mm512_fmadd_ps(ps, vdo, _mm512_loadu_ps(dv)));
                    _mm512_storeu_ps(dk, _mm512_fmadd_ps(ds, vq, _mm512_loadu_ps(dk)));
                    if (t2 & 1)
                        dq1 = _mm512_fmadd_ps(ds, _mm512_loadu_ps(kh + t2 * HS + j), dq1);
                    else
                        dq0 = _mm512_fmadd_ps(ds, _mm512_loadu_ps(kh + t2 * HS + j), dq0);
                }
                _mm512_storeu_ps(dqh + t * HS + j, _mm512_add_ps(dq0, dq1));
            }
            if (j < HS) /* HS % 16 == 8 */
                plait__attn_bwd_cols8(p, row, dot_, qt, kh, dqh + t * HS, dkh, dvh, n, HS, j);
        }
    }
}

/* AdamW eight parameters at a time in double: the portable loop's
 * operations in its order, without fused multiply-adds (identical results). */
V16 static void adamw_avx512(float *p, float *m, float *v, const float *g, size_t n, const plait__adamw_t *h)
{
    __m512d b1 = _mm512_set1_pd(h->b1), b2 = _mm512_set1_pd(h->b2);
    __m512d c1 = _mm512_set1_pd(1.0 - h->b1), c2 = _mm512_set1_pd(1.0 - h->b2);
    __m512d ss = _mm512_set1_pd(h->step_size), bc = _mm512_set1_pd(h->bc2_sqrt);
    __m512d dec = _mm512_set1_pd(h->decay), eps = _mm512_set1_pd(h->eps);
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m512d gi = _mm512_cvtps_pd(_mm256_loadu_ps(g + i));
        __m512d mi = _mm512_add_pd(_mm512_mul_pd(b1, _mm512_cvtps_pd(_mm256_loadu_ps(m + i))), _mm512_mul_pd(c1, gi));
        __m512d vi = _mm512_add_pd(_mm512_mul_pd(b2, _mm512_cvtps_pd(_mm256_loadu_ps(v + i))),
                                   _mm512_mul_pd(_mm512_mul_pd(c2, gi), gi));
        _mm256_storeu_ps(m + i, _mm512_cvtpd_ps(mi));
        _mm256_storeu_ps(v + i, _mm512_cvtpd_ps(vi));
        __m512d pi = _mm512_mul_pd(_mm512_cvtps_pd(_mm256_loadu_ps(p + i)), dec);
        __m512d den = _mm512_add_pd(_mm512_div_pd(_mm512_sqrt_pd(vi), bc), eps);
        pi = _mm512_sub_pd(pi, _mm512_div_pd(_mm512_mul_pd(ss, mi), den));
        _mm256_storeu_ps(p + i, _mm512_cvtpd_ps(pi));
    }
    if (i < n) plait__tkern_portable.adamw(p + i, m + i, v + i, g + i, n - i, h); /* the tail */
}

const plait__tkern_t plait__tkern_avx512 = {
    .exp_sum = exp_sum_avx512,
    .max = max_avx512,
    .scale_flush = scale_flush_avx512,
    .dot = dot_avx512,
    .softmax_bwd = softmax_bwd_avx512,
    .swiglu_fwd = swiglu_fwd_avx512,
    .swiglu_bwd = swiglu_bwd_avx512,
    .rms_fwd_row = rms_fwd_row_avx512,
    .rms_bwd_row = rms_bwd_row_avx512,
    .rope_heads = rope_heads_avx512,
    .attn_head_fwd = attn_head_fwd_avx512,
    .attn_head_bwd = attn_head_bwd_avx512,
    .adamw = adamw_avx512,
    .name = "avx512",
};

#endif /* PLAIT_HAVE_X86_SIMD */
