/*
 * quant.h: the element types of frozen base weights and their rows
 * (lib/quant.c). Shared by the model-format layer in lib/ (GGUF, the model
 * loader) and the client's kernels (tensor.h includes this header).
 *
 * Thread-safety: pure functions, reentrant.
 */
#ifndef PLAIT_QUANT_H
#define PLAIT_QUANT_H

#include <stddef.h>
#include <stdint.h>

#include "plait/plait.h"

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

#endif /* PLAIT_QUANT_H */
