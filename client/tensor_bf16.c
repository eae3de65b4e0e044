/*
 * tensor_bf16.c: the AVX512-BF16 kernels of the BF16 base path
 * (plait__matmul_*_bf16, tensor.c): W is a BF16 copy of a frozen base
 * matrix, the activations are rounded to BF16 (nearest even) while their
 * tile is packed, and vdpbf16ps accumulates pairs of products in float32:
 *   acc[j] += a[2p] * b[2p][j] + a[2p + 1] * b[2p + 1][j].
 * Layouts (k pairs along the sum, KC2 = KC / 2):
 *   B panel: 32 columns, per k pair 64 BF16 values (column jj's pair at
 *            2 jj, 2 jj + 1), so one pair of rows is two zmm loads;
 *            columns past nc and the second half of an odd last pair are 0.
 *   A tile:  MR512 rows of KC2 32-bit words, each a BF16 pair of one row;
 *            rows past mr repeat row mr - 1 (their results are not stored).
 * Each function carries the avx512bf16 target attribute; tensor.c calls
 * them only when the CPU has AVX512-BF16.
 */
#include "tensor_kern.h"

#if PLAIT_HAVE_X86_SIMD

#define BF16 __attribute__((target("avx512f,avx512bf16,avx2,fma")))

static inline __mmask16 lanes16(size_t r) { return (__mmask16)((1u << r) - 1u); }

void plait__pack_b_bf16(uint16_t *restrict dst, const uint16_t *w, size_t ldw, int btrans, size_t k0, size_t kc,
                        size_t j0, size_t nc)
{
    size_t kc2 = (kc + 1) / 2;
    for (size_t p = 0; p < nc; p += NR512) {
        size_t wd = nc - p < NR512 ? nc - p : NR512;
        uint16_t *d = dst + p * 2 * kc2; /* panel p / NR512: kc2 pairs of 64 values */
        for (size_t q = 0; q < kc2; q++) {
            uint16_t *o = d + q * 2 * NR512;
            size_t k = k0 + 2 * q, has2 = 2 * q + 1 < kc;
            if (btrans) { /* B(k, j) = w[j * ldw + k]: a pair is two neighbours of a W row */
                for (size_t jj = 0; jj < wd; jj++) {
                    const uint16_t *s = w + (j0 + p + jj) * ldw + k;
                    o[2 * jj] = s[0];
                    o[2 * jj + 1] = has2 ? s[1] : 0;
                }
            } else { /* B(k, j) = w[k * ldw + j]: a pair interleaves two W rows */
                const uint16_t *s0 = w + k * ldw + j0 + p, *s1 = s0 + ldw;
                for (size_t jj = 0; jj < wd; jj++) {
                    o[2 * jj] = s0[jj];
                    o[2 * jj + 1] = has2 ? s1[jj] : 0;
                }
            }
            for (size_t jj = wd; jj < NR512; jj++) o[2 * jj] = o[2 * jj + 1] = 0;
        }
    }
}

BF16 void plait__pack_a_bf16(uint32_t *restrict dst, const float *a, size_t ars, size_t mr, size_t kc)
{
    for (size_t r = 0; r < MR512; r++) {
        const float *x = a + (r < mr ? r : mr - 1) * ars;
        uint32_t *o = dst + r * (KC / 2);
        size_t k = 0;
        for (; k + 32 <= kc; k += 32) {
            __m512bh h = _mm512_cvtne2ps_pbh(_mm512_loadu_ps(x + k + 16), _mm512_loadu_ps(x + k));
            _mm512_storeu_si512((void *)(o + k / 2), (__m512i)h);
        }
        if (k < kc) { /* a masked remainder; the half of an odd last pair is 0 */
            size_t r0 = kc - k < 16 ? kc - k : 16, r1 = kc - k > 16 ? kc - k - 16 : 0;
            __m512 lo = _mm512_maskz_loadu_ps(r0 == 16 ? (__mmask16)0xFFFF : lanes16(r0), x + k);
            __m512 hi = _mm512_maskz_loadu_ps(lanes16(r1), x + k + 16);
            __m512bh h = _mm512_cvtne2ps_pbh(hi, lo);
            size_t words = (kc - k + 1) / 2;
            _mm512_mask_storeu_epi32(o + k / 2, lanes16(words), (__m512i)h);
        }
    }
}

/* C (mr, nr) (+)= A tile · B panel over kc2 pairs: 8 rows x 32 columns in
 * 16 zmm accumulators; per pair 2 loads of B, 8 broadcasts of A pairs, 16
 * vdpbf16ps (each two multiply-adds per lane). */
BF16 void plait__ukernel_bf16(size_t kc2, const uint32_t *ap, const uint16_t *bp, float *c, size_t ldc, size_t mr,
                              size_t nr, int load_c)
{
    __m512 c00 = _mm512_setzero_ps(), c01 = _mm512_setzero_ps(), c10 = _mm512_setzero_ps(), c11 = _mm512_setzero_ps();
    __m512 c20 = _mm512_setzero_ps(), c21 = _mm512_setzero_ps(), c30 = _mm512_setzero_ps(), c31 = _mm512_setzero_ps();
    __m512 c40 = _mm512_setzero_ps(), c41 = _mm512_setzero_ps(), c50 = _mm512_setzero_ps(), c51 = _mm512_setzero_ps();
    __m512 c60 = _mm512_setzero_ps(), c61 = _mm512_setzero_ps(), c70 = _mm512_setzero_ps(), c71 = _mm512_setzero_ps();
    const size_t ST = KC / 2;
    for (size_t q = 0; q < kc2; q++, bp += 2 * NR512) {
        __m512bh b0 = (__m512bh)_mm512_loadu_si512((const void *)bp);
        __m512bh b1 = (__m512bh)_mm512_loadu_si512((const void *)(bp + NR512));
#define DP2(r, v0, v1)                                                              \
    do {                                                                            \
        __m512bh x = (__m512bh)_mm512_set1_epi32((int)ap[(r) * ST + q]);            \
        v0 = _mm512_dpbf16_ps(v0, x, b0);                                           \
        v1 = _mm512_dpbf16_ps(v1, x, b1);                                           \
    } while (0)
        DP2(0, c00, c01);
        DP2(1, c10, c11);
        DP2(2, c20, c21);
        DP2(3, c30, c31);
        DP2(4, c40, c41);
        DP2(5, c50, c51);
        DP2(6, c60, c61);
        DP2(7, c70, c71);
#undef DP2
    }
    plait__store_8x32(c, ldc, mr, nr, load_c, c00, c01, c10, c11, c20, c21, c30, c31, c40, c41, c50, c51, c60, c61, c70,
                      c71);
}

#endif /* PLAIT_HAVE_X86_SIMD */
