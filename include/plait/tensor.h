/*
 * tensor.h: the numeric kernels of the client (matmul, RMSNorm, RoPE,
 * softmax, SwiGLU) and a small thread pool they run on.
 *
 * Kernels come in pairs <op>_forward / <op>_backward, outputs first,
 * gradients prefixed with d. Every optimized kernel has a plain reference
 * twin (<op>_ref) that the tests compare it with.
 *
 * Thread-safety: kernels are reentrant; a pool is used by one caller at a time.
 */
#ifndef PLAIT_TENSOR_H
#define PLAIT_TENSOR_H

#include "plait/plait.h"
#include "plait/quant.h"

typedef struct plait_pool_s plait_pool_t;

/**
 * \brief Start a pool of n threads (the caller counts as one: n - 1 workers).
 * \return 0, PLAIT_EINVAL (n < 1 or > 256), PLAIT_ENOMEM.
 */
int plait_pool_create(plait_pool_t **out /* OUT */, int n);
/** \brief Stop and free. NULL is safe. */
void plait_pool_destroy(plait_pool_t *p);
/** \brief Number of threads (1 for a NULL pool). */
int plait_pool_size(const plait_pool_t *p);
/** A task body: run items [begin, end) of a job. */
typedef void (*plait_pool_fn)(void *ctx, size_t begin, size_t end);
/**
 * \brief Split [0, n) in contiguous chunks over the pool and wait. NULL pool runs inline.
 *
 * Details (additive to the line above): [0, n) is cut into min(n, threads)
 * contiguous, non-empty chunks; fn runs once per chunk, on the caller or on
 * a worker (the caller may run several chunks when workers are slow to
 * wake), so every index is run exactly once and fn is called at most
 * plait_pool_size(p) times. n == 0 calls nothing; n == 1 or a pool of one
 * thread calls fn(ctx, 0, n) on the caller. fn must not call plait_pool_run
 * on the same pool. Idle workers spin for about 50 microseconds after a
 * job before they sleep, so back-to-back jobs start quickly.
 */
void plait_pool_run(plait_pool_t *p, plait_pool_fn fn, void *ctx, size_t n);

/**
 * out (N, OC) = inp (N, IC) · W (OC, IC)ᵀ, or out += ... when accumulate.
 */
void plait_matmul_forward(plait_pool_t *pool, float *out, const float *inp, const float *w,
                          size_t N, size_t IC, size_t OC, int accumulate);
/**
 * dinp (N, IC) += dout (N, OC) · W (OC, IC), if dinp != NULL;
 * dw (OC, IC) += doutᵀ · inp, if dw != NULL.
 */
void plait_matmul_backward(plait_pool_t *pool, float *dinp, float *dw, const float *dout,
                           const float *inp, const float *w, size_t N, size_t IC, size_t OC);
/*
 * Notes on the two kernels above (they add to, and do not change, the
 * contracts):
 * - out must not overlap inp or w; dinp and dw must not overlap each other,
 *   dout, inp or w. Inputs may overlap each other (e.g. inp == w).
 * - The result for a given shape does not depend on the pool or its size:
 *   every output element is summed in the same order whichever thread
 *   computes it, so runs replay bit for bit (on the same CPU path: the
 *   AVX2+FMA and portable kernels round differently).
 * - An empty reduction (IC == 0 in forward) writes zeros, or leaves out
 *   unchanged when accumulating. N, IC or OC == 0 is allowed everywhere.
 * - Small problems run on the calling thread without waking the pool;
 *   forward with fewer than 12 rows (token-by-token inference) uses a
 *   dot-product path threaded over OC.
 * - They allocate nothing; each calling or pool thread uses about 70 KiB of
 *   stack for a packed block of W.
 */

/**
 * \brief Whether this CPU runs the AVX2+FMA kernels (x86-64 with both
 *        extensions); the kernels pick their path with it at run time, so a
 *        default build runs anywhere.
 * \return 1 if the SIMD kernels are used, 0 if the portable ones are.
 *         Safe to call from any thread.
 */
int plait_cpu_has_avx2_fma(void);

/** \brief Whether this CPU runs the AVX-512 (AVX512F) matmul kernels. Any thread. */
int plait_cpu_has_avx512(void);

/** \brief Whether this CPU has AVX512-BF16 (vdpbf16ps), which the trainer's
 *         BF16 base (plait_train_config_t.base_bf16) needs. Any thread. */
int plait_cpu_has_avx512_bf16(void);
/** \brief Nonzero when the trainer's BF16 base products run on AMX tiles now: the
 *         CPU has AMX-BF16, Linux granted the tile state, the kernel path is
 *         AVX-512 and PLAIT_AMX is not 0 or off. */
int plait_amx_bf16_active(void);

/**
 * \brief The kernel path in use: "avx512", "avx2" or "portable". The widest
 *        the CPU has, unless the environment variable PLAIT_KERNEL names a
 *        narrower one (read once, at the first kernel call).
 */
const char *plait_kernel_path_name(void);

/* Plain reference kernels with the same contracts. */
void plait_matmul_forward_ref(float *out, const float *inp, const float *w, size_t N, size_t IC,
                              size_t OC, int accumulate);
void plait_matmul_backward_ref(float *dinp, float *dw, const float *dout, const float *inp,
                               const float *w, size_t N, size_t IC, size_t OC);

/**
 * \brief out (N, OC) (+)= inp (N, IC) · Wᵀ for a typed W (OC rows of IC).
 *        F32 W takes plait_matmul_forward itself.
 */
void plait_matmul_forward_w(plait_pool_t *pool, float *out, const float *inp, const plait_wmat_t *w, size_t N,
                            size_t IC, size_t OC, int accumulate);
/** \brief dinp (N, IC) += dout (N, OC) · W for a typed, frozen W (OC rows of IC). */
void plait_matmul_backward_w(plait_pool_t *pool, float *dinp, const float *dout, const plait_wmat_t *w, size_t N,
                             size_t IC, size_t OC);

#endif /* PLAIT_TENSOR_H */
