/*
 * tensor_int.h: internals of tensor.c shared with its tests and tools only.
 * Nothing outside client/, tests/ and tools/ may include this header.
 */
#ifndef PLAIT_TENSOR_INT_H
#define PLAIT_TENSOR_INT_H

#include "plait/tensor.h"

#include <stddef.h>
#include <stdint.h>

/**
 * \brief Force the portable (non-SIMD) kernels even where the CPU has
 *        AVX2+FMA, so tests and benchmarks can exercise the fallback.
 * \param on nonzero forces the fallback; 0 restores runtime dispatch.
 *
 * Process-wide; call it only while no kernel is running.
 */
void plait__tensor_force_scalar(int on);

/** \brief Nonzero when the SIMD kernels are in use (CPU support and not forced off). */
int plait__tensor_simd_active(void);

/** Kernel paths, narrowest first: each needs the CPU features of the one before. */
enum { PLAIT__KPATH_PORTABLE = 0, PLAIT__KPATH_AVX2 = 1, PLAIT__KPATH_AVX512 = 2 };

/**
 * \brief Cap the kernel path (PLAIT__KPATH_*) below what the CPU has, so tests
 *        and benchmarks can run each path the CPU supports; -1 removes the cap.
 *        Process-wide; call it only while no kernel is running.
 */
void plait__tensor_force_path(int max);

/** \brief The path the kernels take now: the CPU's widest, PLAIT_KERNEL, and the cap. */
int plait__tensor_path(void);

/**
 * \brief Set the size (multiply-adds) below which kernels run on the calling
 *        thread instead of the pool; 0 threads everything, so tests can
 *        cover the threaded paths with small shapes.
 * \return the previous value. Process-wide; call it only while no kernel runs.
 */
size_t plait__tensor_set_par_min_macs(size_t macs);

/** \brief Nonzero when the BF16 base kernels run now: the CPU has AVX512-BF16
 *         and the kernel path (PLAIT_KERNEL, plait__tensor_force_path) is
 *         AVX-512. Otherwise plait__matmul_*_bf16 take the float32 base. */
int plait__bf16_active(void);

/** \brief Nonzero when the BF16 base products run on AMX tiles (tensor_amx.c):
 *         plait__bf16_active(), the CPU has AMX-BF16 and Linux granted the tile
 *         state, and neither PLAIT_AMX=0|off nor plait__tensor_force_amx_off(1)
 *         turned it off (then the vdpbf16ps kernel runs). */
int plait__amx_active(void);
/** \brief Turn the AMX kernel off (1) or back on (0), for tests and benchmarks.
 *         Process-wide; call it only while no kernel runs. */
void plait__tensor_force_amx_off(int off);

/**
 * \brief A frozen W (OC rows of IC, BF16 row-major) packed once for the BF16
 *        products: bwd = 0 for the forward product (panels of 32 output
 *        columns over ceil(IC / 2) pairs of inputs), 1 for the input
 *        gradient (panels of 32 input columns over ceil(OC / 2) pairs of
 *        outputs); zero-padded. plait__bf16_packed_elems gives dst's length
 *        (uint16_t elements). Packs nothing on non-x86 builds.
 */
size_t plait__bf16_packed_elems(size_t IC, size_t OC, int bwd);
void plait__bf16_pack(uint16_t *dst, const uint16_t *w, size_t IC, size_t OC, int bwd);

/**
 * \brief The BF16 base products: out (N, OC) (+)= inp · Wᵀ and dinp (N, IC)
 *        += dout · W from W packed by plait__bf16_pack, with the activations
 *        rounded to BF16 (nearest even) and float32 accumulation
 *        (vdpbf16ps). For the trainer's frozen base only: the adapter and
 *        every gradient stay float32. Where the BF16 kernels do not run
 *        (plait__bf16_active() is 0, the packed W is NULL, or forward with N
 *        below the dot-product threshold) the float32 base w is used instead
 *        (plait_matmul_*_w).
 */
void plait__matmul_forward_bf16(plait_pool_t *pool, float *out, const float *inp, const plait_wmat_t *w,
                                const uint16_t *fwd, size_t N, size_t IC, size_t OC, int accumulate);
void plait__matmul_backward_bf16(plait_pool_t *pool, float *dinp, const float *dout, const plait_wmat_t *w,
                                 const uint16_t *bwd, size_t N, size_t IC, size_t OC);

#endif /* PLAIT_TENSOR_INT_H */
