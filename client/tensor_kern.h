/*
 * tensor_kern.h: what tensor.c shares with its SIMD kernel files
 * (tensor_avx2.c, tensor_avx512.c): the micro-tile and block sizes, the
 * dot-product job, and the x86 kernels, each compiled for its instruction
 * set through a target attribute so that a baseline build carries all of
 * them and tensor.c picks one at run time. Internal to client/.
 */
#ifndef PLAIT_TENSOR_KERN_H
#define PLAIT_TENSOR_KERN_H

#include "plait/tensor.h"

#include <stddef.h>
#include <stdint.h>

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#define PLAIT_HAVE_X86_SIMD 1
#include <immintrin.h>
#define PLAIT_AVX2 __attribute__((target("avx2,fma")))
#define PLAIT_AVX512 __attribute__((target("avx512f,avx2,fma")))
#else
#define PLAIT_HAVE_X86_SIMD 0
#endif

#define MR 6            /* rows of C per micro-tile */
#define NR 16           /* columns of C per micro-tile: two 8-float vectors */
#define MR512 8         /* AVX-512 tile: 8 rows x 32 columns (two 16-float vectors) */
#define NR512 32
#define KC 256          /* depth of one packed block of B */

/*
 * Forward for a handful of rows (token-by-token inference is N = 1): packing
 * W would cost as much as the product, so each output is a dot product of an
 * input row with a W row, both contiguous. Threads split OC.
 */
typedef struct {
    float *out;
    const float *inp, *w;
    const plait_wmat_t *wt; /* typed W instead of w, or NULL */
    size_t N, IC, OC;
    int accumulate;
    int path; /* PLAIT__KPATH_* */
} dot_t;

#if PLAIT_HAVE_X86_SIMD
/* One full panel of a transposed pack (tensor_avx2.c): d[k * NRW + jj] =
 * s[jj * ldb + k] for jj < NRW (a multiple of 8), k < kc. */
void plait__pack_bt_panel_avx2(float *restrict d, const float *s, size_t ldb, size_t kc, size_t NRW);
/* Micro-kernels: C (mr, nr) (+)= A (mr, kc) · packed panel (kc, NR or NR512). */
void plait__ukernel_avx2(size_t kc, const float *a, size_t ars, size_t acs, const float *bp, float *c,
                         size_t ldc, size_t mr, size_t nr, int load_c);
void plait__ukernel_avx512(size_t kc, const float *a, size_t ars, size_t acs, const float *bp, float *c,
                           size_t ldc, size_t mr, size_t nr, int load_c);
/* d[k * NR512 + j] = s[k * ldb + j] for k < kc, j < 32 (tensor_avx512.c):
 * the non-transposed pack of one full AVX-512 panel; d is 64-byte aligned. */
void plait__pack_rows32_avx512(float *restrict d, const float *s, size_t ldb, size_t kc);
/* BF16 base path (tensor_bf16.c; AVX512-BF16 CPUs only). B panels of
 * NR512 columns, per k pair 2 * NR512 BF16 values, from a BF16 W with row
 * stride ldw (elements); A tiles of MR512 rows x KC / 2 pair words. */
void plait__pack_b_bf16(uint16_t *restrict dst, const uint16_t *w, size_t ldw, int btrans, size_t k0, size_t kc,
                        size_t j0, size_t nc);
void plait__pack_a_bf16(uint32_t *restrict dst, const float *a, size_t ars, size_t mr, size_t kc);
/* AMX-BF16 (tensor_amx.c): plait__amx_usable asks Linux for the tile state
 * once (0 without AMX-BF16 or kernel support); begin/end load and release
 * the tile configuration on the calling thread; the kernel computes a
 * 32 x 32 block from a 32-row A tile (rows of KC / 2 words) and a B panel. */
int plait__amx_usable(void);
void plait__amx_begin(void);
void plait__amx_end(void);
void plait__ukernel_amx(size_t kc2, const uint32_t *ap, const uint16_t *bp, float *c, size_t ldc, size_t mr,
                        size_t nr, int load_c);
void plait__ukernel_bf16(size_t kc2, const uint32_t *ap, const uint16_t *bp, float *c, size_t ldc, size_t mr,
                         size_t nr, int load_c);
/* Output rows o0 .. o1-1 of a dot-product job (F32 W). */
void plait__dot_avx2(const dot_t *d, size_t o0, size_t o1);
void plait__dot_avx512(const dot_t *d, size_t o0, size_t o1);
#endif

#if PLAIT_HAVE_X86_SIMD
/* One row of an AVX-512 micro-tile: v0 to columns 0-15 and v1 to 16-31 of cr
 * under masks m0, m1 (columns past them never read or written); with load_c
 * C's values are added first. */
PLAIT_AVX512 __attribute__((always_inline)) static inline void plait__store_row32(float *cr, __m512 v0, __m512 v1,
                                                                                  __mmask16 m0, __mmask16 m1,
                                                                                  int load_c)
{
    if (load_c) {
        v0 = _mm512_add_ps(_mm512_maskz_loadu_ps(m0, cr), v0);
        v1 = _mm512_add_ps(_mm512_maskz_loadu_ps(m1, cr + 16), v1);
    }
    _mm512_mask_storeu_ps(cr, m0, v0);
    _mm512_mask_storeu_ps(cr + 16, m1, v1);
}

/* Store an 8 x 32 micro-tile (row r in cR0, cR1) into C at ldc: rows past mr
 * are not stored, columns past nr are masked off. Shared by the float32 and
 * BF16 micro-kernels; inlined into either, straight-line. */
PLAIT_AVX512 __attribute__((always_inline)) static inline void
plait__store_8x32(float *c, size_t ldc, size_t mr, size_t nr, int load_c, __m512 c00, __m512 c01, __m512 c10,
                  __m512 c11, __m512 c20, __m512 c21, __m512 c30, __m512 c31, __m512 c40, __m512 c41, __m512 c50,
                  __m512 c51, __m512 c60, __m512 c61, __m512 c70, __m512 c71)
{
    __mmask16 m0 = nr >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << nr) - 1u);
    __mmask16 m1 = nr >= 32 ? (__mmask16)0xFFFF : nr > 16 ? (__mmask16)((1u << (nr - 16)) - 1u) : 0;
    plait__store_row32(c, c00, c01, m0, m1, load_c);
    if (mr > 1) plait__store_row32(c + ldc, c10, c11, m0, m1, load_c);
    if (mr > 2) plait__store_row32(c + 2 * ldc, c20, c21, m0, m1, load_c);
    if (mr > 3) plait__store_row32(c + 3 * ldc, c30, c31, m0, m1, load_c);
    if (mr > 4) plait__store_row32(c + 4 * ldc, c40, c41, m0, m1, load_c);
    if (mr > 5) plait__store_row32(c + 5 * ldc, c50, c51, m0, m1, load_c);
    if (mr > 6) plait__store_row32(c + 6 * ldc, c60, c61, m0, m1, load_c);
    if (mr > 7) plait__store_row32(c + 7 * ldc, c70, c71, m0, m1, load_c);
}
#endif

#endif /* PLAIT_TENSOR_KERN_H */
