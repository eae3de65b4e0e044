/*
 * tensor_avx512.c: the AVX-512 kernels of tensor.c (see its header comment):
 * the 8 x 32 micro-kernel and the non-transposed pack of its 32-column
 * panels. Each function carries the avx512f target attribute, so this file
 * compiles in a baseline build and tensor.c calls it only when the CPU has
 * AVX512F (and AVX2+FMA).
 */
#include "tensor_kern.h"

#if PLAIT_HAVE_X86_SIMD

PLAIT_AVX512 void plait__pack_rows32_avx512(float *restrict d, const float *s, size_t ldb, size_t kc)
{
    /* A call to memcpy per 128-byte row costs more than the copy. */
    for (size_t k = 0; k < kc; k++, d += NR512, s += ldb) {
        _mm512_store_ps(d, _mm512_loadu_ps(s));
        _mm512_store_ps(d + 16, _mm512_loadu_ps(s + 16));
    }
}

/* AVX-512 micro-kernel: 8 rows x 32 columns = 16 zmm accumulators, 2 B
 * vectors and a broadcast (19 of the 32 zmm registers). Per k: 2 loads of
 * B, 8 broadcasts of A (folded into the FMAs as memory operands) and 16
 * FMAs, so the two FMA ports, not the load ports, set the pace. Edge tiles
 * store through 16-lane masks; rows past mr re-read row mr - 1. */
PLAIT_AVX512 void plait__ukernel_avx512(size_t kc, const float *a, size_t ars, size_t acs,
                                        const float *bp, float *c, size_t ldc, size_t mr, size_t nr,
                                        int load_c)
{
    const float *a0 = a;
    const float *a1 = a + (mr > 1 ? 1 : 0) * ars;
    const float *a2 = a + (mr > 2 ? 2 : mr - 1) * ars;
    const float *a3 = a + (mr > 3 ? 3 : mr - 1) * ars;
    const float *a4 = a + (mr > 4 ? 4 : mr - 1) * ars;
    const float *a5 = a + (mr > 5 ? 5 : mr - 1) * ars;
    const float *a6 = a + (mr > 6 ? 6 : mr - 1) * ars;
    const float *a7 = a + (mr > 7 ? 7 : mr - 1) * ars;
    __m512 c00 = _mm512_setzero_ps(), c01 = _mm512_setzero_ps();
    __m512 c10 = _mm512_setzero_ps(), c11 = _mm512_setzero_ps();
    __m512 c20 = _mm512_setzero_ps(), c21 = _mm512_setzero_ps();
    __m512 c30 = _mm512_setzero_ps(), c31 = _mm512_setzero_ps();
    __m512 c40 = _mm512_setzero_ps(), c41 = _mm512_setzero_ps();
    __m512 c50 = _mm512_setzero_ps(), c51 = _mm512_setzero_ps();
    __m512 c60 = _mm512_setzero_ps(), c61 = _mm512_setzero_ps();
    __m512 c70 = _mm512_setzero_ps(), c71 = _mm512_setzero_ps();
    size_t off = 0;
    for (size_t k = 0; k < kc; k++, off += acs, bp += NR512) {
        __m512 b0 = _mm512_load_ps(bp), b1 = _mm512_load_ps(bp + 16), x;
#define FMA2(ar, v0, v1)                       \
    x = _mm512_set1_ps((ar)[off]);             \
    v0 = _mm512_fmadd_ps(x, b0, v0);           \
    v1 = _mm512_fmadd_ps(x, b1, v1)
        FMA2(a0, c00, c01);
        FMA2(a1, c10, c11);
        FMA2(a2, c20, c21);
        FMA2(a3, c30, c31);
        FMA2(a4, c40, c41);
        FMA2(a5, c50, c51);
        FMA2(a6, c60, c61);
        FMA2(a7, c70, c71);
#undef FMA2
    }
    /* Columns past nr are masked off (never read or written); rows past mr
     * are not stored. A full tile has all-ones masks. */
    plait__store_8x32(c, ldc, mr, nr, load_c, c00, c01, c10, c11, c20, c21, c30, c31, c40, c41, c50, c51, c60, c61, c70,
                      c71);
}

/* Lanes 0 .. r-1 of a 16-lane mask, r < 16. */
static inline __mmask16 lanes16(size_t r) { return (__mmask16)((1u << r) - 1u); }

/* The 8 sums of s0..s7 into one ymm (lane l = sum of s_l): fold each zmm to
 * 8 floats, then the AVX2 horizontal adds. */
PLAIT_AVX512 static inline __m256 fold8(__m512 s0, __m512 s1, __m512 s2, __m512 s3, __m512 s4, __m512 s5, __m512 s6,
                                        __m512 s7)
{
#define F(v) _mm256_add_ps(_mm512_castps512_ps256(v), _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)))
    __m256 h03 = _mm256_hadd_ps(_mm256_hadd_ps(F(s0), F(s1)), _mm256_hadd_ps(F(s2), F(s3)));
    __m256 h47 = _mm256_hadd_ps(_mm256_hadd_ps(F(s4), F(s5)), _mm256_hadd_ps(F(s6), F(s7)));
#undef F
    return _mm256_add_ps(_mm256_permute2f128_ps(h03, h47, 0x20), _mm256_permute2f128_ps(h03, h47, 0x31));
}

/* Small-N forward (see plait__dot_avx2): eight W rows against one input row
 * at a time, 16 floats per step, the IC remainder through a lane mask; then
 * single rows. */
PLAIT_AVX512 void plait__dot_avx512(const dot_t *d, size_t o0, size_t o1)
{
    size_t IC = d->IC;
    size_t o = o0;
    for (; o + 8 <= o1; o += 8) {
        const float *w0 = d->w + o * IC;
        for (size_t n = 0; n < d->N; n++) {
            const float *x = d->inp + n * IC;
            float *y = d->out + n * d->OC + o;
            __m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps(), s2 = _mm512_setzero_ps();
            __m512 s3 = _mm512_setzero_ps(), s4 = _mm512_setzero_ps(), s5 = _mm512_setzero_ps();
            __m512 s6 = _mm512_setzero_ps(), s7 = _mm512_setzero_ps();
            for (size_t i = 0; i < IC; i += 16) {
                __mmask16 k = IC - i >= 16 ? (__mmask16)0xFFFF : lanes16(IC - i);
                __m512 xv = _mm512_maskz_loadu_ps(k, x + i);
                const float *wi = w0 + i;
                s0 = _mm512_fmadd_ps(xv, _mm512_maskz_loadu_ps(k, wi), s0);
                s1 = _mm512_fmadd_ps(xv, _mm512_maskz_loadu_ps(k, wi + IC), s1);
                s2 = _mm512_fmadd_ps(xv, _mm512_maskz_loadu_ps(k, wi + 2 * IC), s2);
                s3 = _mm512_fmadd_ps(xv, _mm512_maskz_loadu_ps(k, wi + 3 * IC), s3);
                s4 = _mm512_fmadd_ps(xv, _mm512_maskz_loadu_ps(k, wi + 4 * IC), s4);
                s5 = _mm512_fmadd_ps(xv, _mm512_maskz_loadu_ps(k, wi + 5 * IC), s5);
                s6 = _mm512_fmadd_ps(xv, _mm512_maskz_loadu_ps(k, wi + 6 * IC), s6);
                s7 = _mm512_fmadd_ps(xv, _mm512_maskz_loadu_ps(k, wi + 7 * IC), s7);
            }
            __m256 r = fold8(s0, s1, s2, s3, s4, s5, s6, s7);
            if (d->accumulate) r = _mm256_add_ps(r, _mm256_loadu_ps(y));
            _mm256_storeu_ps(y, r);
        }
    }
    for (; o < o1; o++) {
        const float *wr = d->w + o * IC;
        for (size_t n = 0; n < d->N; n++) {
            const float *x = d->inp + n * IC;
            float *y = d->out + n * d->OC + o;
            __m512 s = _mm512_setzero_ps();
            for (size_t i = 0; i < IC; i += 16) {
                __mmask16 k = IC - i >= 16 ? (__mmask16)0xFFFF : lanes16(IC - i);
                s = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(k, x + i), _mm512_maskz_loadu_ps(k, wr + i), s);
            }
            float t = _mm512_reduce_add_ps(s);
            *y = d->accumulate ? *y + t : t;
        }
    }
}

#endif /* PLAIT_HAVE_X86_SIMD */
