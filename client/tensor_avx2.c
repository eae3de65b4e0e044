/*
 * tensor_avx2.c: the AVX2+FMA kernels of tensor.c (see its header comment):
 * the transposing panel pack, the 6 x 16 micro-kernel and the dot products
 * of small-N forward. Each function carries the avx2,fma target attribute,
 * so this file compiles in a baseline build and tensor.c calls it only when
 * the CPU has AVX2 and FMA.
 */
#include "tensor_kern.h"

#if PLAIT_HAVE_X86_SIMD

/* One full panel of a transposed pack: d[k * NR + jj] = s[jj * ldb + k] for
 * jj < 16, k < kc, by 8 x 8 register transposes (the scalar loop costs a few
 * cycles per element, which shows when N is small). */
PLAIT_AVX2 void plait__pack_bt_panel_avx2(float *restrict d, const float *s, size_t ldb, size_t kc,
                                              size_t NRW)
{
    size_t k = 0;
    for (; k + 8 <= kc; k += 8) {
        for (size_t h = 0; h < NRW; h += 8) {
            const float *r = s + h * ldb + k;
            __m256 r0 = _mm256_loadu_ps(r), r1 = _mm256_loadu_ps(r + ldb);
            __m256 r2 = _mm256_loadu_ps(r + 2 * ldb), r3 = _mm256_loadu_ps(r + 3 * ldb);
            __m256 r4 = _mm256_loadu_ps(r + 4 * ldb), r5 = _mm256_loadu_ps(r + 5 * ldb);
            __m256 r6 = _mm256_loadu_ps(r + 6 * ldb), r7 = _mm256_loadu_ps(r + 7 * ldb);
            __m256 t0 = _mm256_unpacklo_ps(r0, r1), t1 = _mm256_unpackhi_ps(r0, r1);
            __m256 t2 = _mm256_unpacklo_ps(r2, r3), t3 = _mm256_unpackhi_ps(r2, r3);
            __m256 t4 = _mm256_unpacklo_ps(r4, r5), t5 = _mm256_unpackhi_ps(r4, r5);
            __m256 t6 = _mm256_unpacklo_ps(r6, r7), t7 = _mm256_unpackhi_ps(r6, r7);
            __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE);
            __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xEE);
            __m256 u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xEE);
            __m256 u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xEE);
            float *o = d + k * NRW + h;
            _mm256_storeu_ps(o + 0 * NRW, _mm256_permute2f128_ps(u0, u4, 0x20));
            _mm256_storeu_ps(o + 1 * NRW, _mm256_permute2f128_ps(u1, u5, 0x20));
            _mm256_storeu_ps(o + 2 * NRW, _mm256_permute2f128_ps(u2, u6, 0x20));
            _mm256_storeu_ps(o + 3 * NRW, _mm256_permute2f128_ps(u3, u7, 0x20));
            _mm256_storeu_ps(o + 4 * NRW, _mm256_permute2f128_ps(u0, u4, 0x31));
            _mm256_storeu_ps(o + 5 * NRW, _mm256_permute2f128_ps(u1, u5, 0x31));
            _mm256_storeu_ps(o + 6 * NRW, _mm256_permute2f128_ps(u2, u6, 0x31));
            _mm256_storeu_ps(o + 7 * NRW, _mm256_permute2f128_ps(u3, u7, 0x31));
        }
    }
    for (; k < kc; k++)
        for (size_t jj = 0; jj < NRW; jj++) d[k * NRW + jj] = s[jj * ldb + k];
}

/* One row of an edge tile: lanes where m0 / m1 are set are real columns. */
PLAIT_AVX2 static inline void edge_row_avx2(float *cr, __m256i m0, __m256i m1, int n1, int load_c,
                                            __m256 v0, __m256 v1)
{
    if (load_c) v0 = _mm256_add_ps(_mm256_maskload_ps(cr, m0), v0);
    _mm256_maskstore_ps(cr, m0, v0);
    if (n1 > 0) {
        if (load_c) v1 = _mm256_add_ps(_mm256_maskload_ps(cr + 8, m1), v1);
        _mm256_maskstore_ps(cr + 8, m1, v1);
    }
}

/* AVX2 micro-kernel: 6 rows x 16 columns = 12 accumulators, 2 B vectors and
 * one broadcast register: 15 of the 16 ymm registers. Per k: 2 loads,
 * 6 broadcasts, 12 FMAs, no horizontal sums. */
PLAIT_AVX2 void plait__ukernel_avx2(size_t kc, const float *a, size_t ars, size_t acs,
                                    const float *bp, float *c, size_t ldc, size_t mr, size_t nr,
                                    int load_c)
{
    const float *a0 = a;
    const float *a1 = a + (mr > 1 ? 1 : 0) * ars;
    const float *a2 = a + (mr > 2 ? 2 : mr - 1) * ars;
    const float *a3 = a + (mr > 3 ? 3 : mr - 1) * ars;
    const float *a4 = a + (mr > 4 ? 4 : mr - 1) * ars;
    const float *a5 = a + (mr > 5 ? 5 : mr - 1) * ars;
    __m256 c00 = _mm256_setzero_ps(), c01 = _mm256_setzero_ps();
    __m256 c10 = _mm256_setzero_ps(), c11 = _mm256_setzero_ps();
    __m256 c20 = _mm256_setzero_ps(), c21 = _mm256_setzero_ps();
    __m256 c30 = _mm256_setzero_ps(), c31 = _mm256_setzero_ps();
    __m256 c40 = _mm256_setzero_ps(), c41 = _mm256_setzero_ps();
    __m256 c50 = _mm256_setzero_ps(), c51 = _mm256_setzero_ps();
    size_t off = 0;
    for (size_t k = 0; k < kc; k++, off += acs, bp += NR) {
        __m256 b0 = _mm256_load_ps(bp), b1 = _mm256_load_ps(bp + 8), x;
        x = _mm256_broadcast_ss(a0 + off);
        c00 = _mm256_fmadd_ps(x, b0, c00);
        c01 = _mm256_fmadd_ps(x, b1, c01);
        x = _mm256_broadcast_ss(a1 + off);
        c10 = _mm256_fmadd_ps(x, b0, c10);
        c11 = _mm256_fmadd_ps(x, b1, c11);
        x = _mm256_broadcast_ss(a2 + off);
        c20 = _mm256_fmadd_ps(x, b0, c20);
        c21 = _mm256_fmadd_ps(x, b1, c21);
        x = _mm256_broadcast_ss(a3 + off);
        c30 = _mm256_fmadd_ps(x, b0, c30);
        c31 = _mm256_fmadd_ps(x, b1, c31);
        x = _mm256_broadcast_ss(a4 + off);
        c40 = _mm256_fmadd_ps(x, b0, c40);
        c41 = _mm256_fmadd_ps(x, b1, c41);
        x = _mm256_broadcast_ss(a5 + off);
        c50 = _mm256_fmadd_ps(x, b0, c50);
        c51 = _mm256_fmadd_ps(x, b1, c51);
    }
    if (mr == MR && nr == NR) {
#define ROW(r, v0, v1)                                                                  \
    do {                                                                                \
        float *cr = c + (r) * ldc;                                                      \
        if (load_c) {                                                                   \
            v0 = _mm256_add_ps(_mm256_loadu_ps(cr), v0);                                \
            v1 = _mm256_add_ps(_mm256_loadu_ps(cr + 8), v1);                            \
        }                                                                               \
        _mm256_storeu_ps(cr, v0);                                                       \
        _mm256_storeu_ps(cr + 8, v1);                                                   \
    } while (0)
        ROW(0, c00, c01);
        ROW(1, c10, c11);
        ROW(2, c20, c21);
        ROW(3, c30, c31);
        ROW(4, c40, c41);
        ROW(5, c50, c51);
#undef ROW
        return;
    }
    /* Edge tile: masked loads and stores cover the nr columns (masked-off
     * lanes are never touched), and only mr rows are written. */
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    int n0 = nr < 8 ? (int)nr : 8, n1 = nr > 8 ? (int)nr - 8 : 0;
    __m256i m0 = _mm256_cmpgt_epi32(_mm256_set1_epi32(n0), lane);
    __m256i m1 = _mm256_cmpgt_epi32(_mm256_set1_epi32(n1), lane);
    edge_row_avx2(c, m0, m1, n1, load_c, c00, c01);
    if (mr > 1) edge_row_avx2(c + ldc, m0, m1, n1, load_c, c10, c11);
    if (mr > 2) edge_row_avx2(c + 2 * ldc, m0, m1, n1, load_c, c20, c21);
    if (mr > 3) edge_row_avx2(c + 3 * ldc, m0, m1, n1, load_c, c30, c31);
    if (mr > 4) edge_row_avx2(c + 4 * ldc, m0, m1, n1, load_c, c40, c41);
    if (mr > 5) edge_row_avx2(c + 5 * ldc, m0, m1, n1, load_c, c50, c51);
}

PLAIT_AVX2 static inline float hsum_avx2(__m256 v)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* Eight W rows against one input row at a time: the x vector is loaded once
 * per eight FMAs, the eight independent sums hide the FMA latency, and they
 * are reduced together into one vector of eight outputs. The rows of the
 * batch are the inner loop, so the eight W rows are read from memory once
 * and from L1 for the other rows. Then blocks of four W rows, then one. */
PLAIT_AVX2 void plait__dot_avx2(const dot_t *d, size_t o0, size_t o1)
{
    size_t IC = d->IC, IC8 = IC & ~(size_t)7;
    size_t o = o0;
    for (; o + 8 <= o1; o += 8) {
        const float *w0 = d->w + o * IC;
        for (size_t n = 0; n < d->N; n++) {
            const float *x = d->inp + n * IC;
            float *y = d->out + n * d->OC + o;
            __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
            __m256 s2 = _mm256_setzero_ps(), s3 = _mm256_setzero_ps();
            __m256 s4 = _mm256_setzero_ps(), s5 = _mm256_setzero_ps();
            __m256 s6 = _mm256_setzero_ps(), s7 = _mm256_setzero_ps();
            for (size_t i = 0; i < IC8; i += 8) {
                __m256 xv = _mm256_loadu_ps(x + i);
                const float *wi = w0 + i;
                s0 = _mm256_fmadd_ps(xv, _mm256_loadu_ps(wi), s0);
                s1 = _mm256_fmadd_ps(xv, _mm256_loadu_ps(wi + IC), s1);
                s2 = _mm256_fmadd_ps(xv, _mm256_loadu_ps(wi + 2 * IC), s2);
                s3 = _mm256_fmadd_ps(xv, _mm256_loadu_ps(wi + 3 * IC), s3);
                s4 = _mm256_fmadd_ps(xv, _mm256_loadu_ps(wi + 4 * IC), s4);
                s5 = _mm256_fmadd_ps(xv, _mm256_loadu_ps(wi + 5 * IC), s5);
                s6 = _mm256_fmadd_ps(xv, _mm256_loadu_ps(wi + 6 * IC), s6);
                s7 = _mm256_fmadd_ps(xv, _mm256_loadu_ps(wi + 7 * IC), s7);
            }
            /* Lane l of h03 (low half) / h47 (high half) holds half of sum l. */
            __m256 h03 = _mm256_hadd_ps(_mm256_hadd_ps(s0, s1), _mm256_hadd_ps(s2, s3));
            __m256 h47 = _mm256_hadd_ps(_mm256_hadd_ps(s4, s5), _mm256_hadd_ps(s6, s7));
            __m256 r = _mm256_add_ps(_mm256_permute2f128_ps(h03, h47, 0x20),
                                     _mm256_permute2f128_ps(h03, h47, 0x31));
            _Alignas(32) float t[8];
            _mm256_store_ps(t, r);
            for (size_t i = IC8; i < IC; i++)
                for (size_t l = 0; l < 8; l++) t[l] += x[i] * w0[l * IC + i];
            for (size_t l = 0; l < 8; l++) y[l] = d->accumulate ? y[l] + t[l] : t[l];
        }
    }
    for (; o + 4 <= o1; o += 4) {
        const float *w0 = d->w + o * IC, *w1 = w0 + IC, *w2 = w1 + IC, *w3 = w2 + IC;
        for (size_t n = 0; n < d->N; n++) {
            const float *x = d->inp + n * IC;
            float *y = d->out + n * d->OC + o;
            __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
            __m256 s2 = _mm256_setzero_ps(), s3 = _mm256_setzero_ps();
            for (size_t i = 0; i < IC8; i += 8) {
                __m256 xv = _mm256_loadu_ps(x + i);
                s0 = _mm256_fmadd_ps(xv, _mm256_loadu_ps(w0 + i), s0);
                s1 = _mm256_fmadd_ps(xv, _mm256_loadu_ps(w1 + i), s1);
                s2 = _mm256_fmadd_ps(xv, _mm256_loadu_ps(w2 + i), s2);
                s3 = _mm256_fmadd_ps(xv, _mm256_loadu_ps(w3 + i), s3);
            }
            /* Reduce the four sums at once: lane l of r is the sum of s_l. */
            __m256 h = _mm256_hadd_ps(_mm256_hadd_ps(s0, s1), _mm256_hadd_ps(s2, s3));
            __m128 r = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
            _Alignas(16) float t[4];
            _mm_store_ps(t, r);
            for (size_t i = IC8; i < IC; i++) {
                t[0] += x[i] * w0[i];
                t[1] += x[i] * w1[i];
                t[2] += x[i] * w2[i];
                t[3] += x[i] * w3[i];
            }
            for (size_t l = 0; l < 4; l++) y[l] = d->accumulate ? y[l] + t[l] : t[l];
        }
    }
    for (; o < o1; o++) {
        const float *wr = d->w + o * IC;
        for (size_t n = 0; n < d->N; n++) {
            const float *x = d->inp + n * IC;
            float *y = d->out + n * d->OC + o;
            __m256 s = _mm256_setzero_ps();
            for (size_t i = 0; i < IC8; i += 8)
                s = _mm256_fmadd_ps(_mm256_loadu_ps(x + i), _mm256_loadu_ps(wr + i), s);
            float t = hsum_avx2(s);
            for (size_t i = IC8; i < IC; i++) t += x[i] * wr[i];
            *y = d->accumulate ? *y + t : t;
        }
    }
}

#endif /* PLAIT_HAVE_X86_SIMD */
