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

/*
 * Frozen base matrices in the element types GGUF files carry (ggml's type
 * numbers). A matrix (rows, cols) is stored row by row, each row
 * row_bytes long; quantized rows are whole blocks of 32 elements:
 *   Q8_0: fp16 scale d, 32 int8 q            (34 bytes), x = d * q
 *   Q4_0: fp16 scale d, 16 bytes of nibbles  (18 bytes); byte j holds
 *         element j in its low nibble and element j + 16 in its high one,
 *         x = d * (nibble - 8).
 * The matmuls below dequantize inside the kernels (while packing a panel of
 * W, or a 256-element chunk of a row on the dot path): no matrix is ever
 * expanded to float32 as a whole.
 */
typedef enum {
    PLAIT_DT_F32 = 0,
    PLAIT_DT_F16 = 1,
    PLAIT_DT_Q4_0 = 2,
    PLAIT_DT_Q8_0 = 8,
    PLAIT_DT_BF16 = 30,
} plait_dtype_t;

#define PLAIT_QBLOCK 32 /* elements per Q8_0 / Q4_0 block */

typedef struct {
    const void *data; /* row 0 (F32 data must be 4-byte aligned) */
    int type;         /* plait_dtype_t */
    size_t row_bytes; /* bytes per row: plait_dtype_row_bytes(type, cols) */
} plait_wmat_t;

/** \brief Name of a type ("F32", "Q8_0", ...), or NULL if it is not one of plait_dtype_t. */
const char *plait_dtype_name(int type);

/**
 * \brief Bytes of a row of n elements of type, or 0 when the type is unknown
 *        or n is not a whole number of its blocks.
 */
size_t plait_dtype_row_bytes(int type, size_t n);

/** \brief dst[0..n) = elements i0 .. i0+n of row `row` of w, as float32. */
void plait_dequant_row(float *dst, const plait_wmat_t *w, size_t row, size_t i0, size_t n);

/**
 * \brief Quantize / convert one row of n floats to type into dst
 *        (plait_dtype_row_bytes(type, n) bytes), with ggml's reference
 *        rounding (Q8_0: d = amax/127, q = round(x/d); Q4_0: d = max/-8
 *        where max is the element of largest magnitude, q = min(15, (int)(x/d + 8.5))).
 * \return 0, or PLAIT_EINVAL for an unknown type or a partial block.
 */
int plait_quantize_row(void *dst, int type, const float *src, size_t n);

/** \brief IEEE half <-> float (round to nearest even; NaN stays NaN). */
float plait_f16_to_f32(uint16_t h);
uint16_t plait_f32_to_f16(float f);

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
