/*
 * quant.c: the element types of frozen base weights (F32, F16, BF16, Q8_0,
 * Q4_0 with ggml's block layouts), row sizes, dequantization of any element
 * range of a row, and reference quantization (used by the GGUF writer, the
 * converter and tests).
 *
 * Blocks (little-endian): Q8_0 = fp16 d, int8 q[32]; Q4_0 = fp16 d,
 * uint8 qs[16] with element j in the low nibble of qs[j] and element j + 16
 * in the high nibble, value d * (nibble - 8).
 */
#include "plait/quant.h"
#include "plait/le.h"

#include <math.h>
#include <string.h>

#define Q8_BYTES 34
#define Q4_BYTES 18

const char *plait_dtype_name(int type)
{
    switch (type) {
    case PLAIT_DT_F32: return "F32";
    case PLAIT_DT_F16: return "F16";
    case PLAIT_DT_BF16: return "BF16";
    case PLAIT_DT_Q8_0: return "Q8_0";
    case PLAIT_DT_Q4_0: return "Q4_0";
    default: return NULL;
    }
}

size_t plait_dtype_row_bytes(int type, size_t n)
{
    switch (type) {
    case PLAIT_DT_F32: return n <= SIZE_MAX / 4 ? n * 4 : 0;
    case PLAIT_DT_F16:
    case PLAIT_DT_BF16: return n <= SIZE_MAX / 2 ? n * 2 : 0;
    case PLAIT_DT_Q8_0: return n % PLAIT_QBLOCK == 0 ? n / PLAIT_QBLOCK * Q8_BYTES : 0;
    case PLAIT_DT_Q4_0: return n % PLAIT_QBLOCK == 0 ? n / PLAIT_QBLOCK * Q4_BYTES : 0;
    default: return 0;
    }
}

float plait_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, exp = (h >> 10) & 0x1Fu, man = h & 0x3FFu, bits;
    if (exp == 0) {
        /* zero or subnormal: man * 2^-24 */
        float f = ldexpf((float)man, -24);
        return sign ? -f : f;
    }
    if (exp == 31) bits = sign | 0x7F800000u | (man << 13);
    else bits = sign | ((exp + 112u) << 23) | (man << 13);
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

uint16_t plait_f32_to_f16(float f)
{
    uint32_t x;
    memcpy(&x, &f, 4);
    uint32_t sign = (x >> 16) & 0x8000u, ax = x & 0x7FFFFFFFu;
    if (ax >= 0x7F800000u) return (uint16_t)(sign | 0x7C00u | (ax > 0x7F800000u ? 0x200u : 0));
    if (ax >= 0x477FF000u) return (uint16_t)(sign | 0x7C00u); /* rounds to >= 65520: inf */
    if (ax < 0x38800000u) {
        /* below the smallest normal: round to a multiple of 2^-24 */
        float a;
        memcpy(&a, &ax, 4);
        float q = nearbyintf(a * 16777216.0f); /* current rounding mode: to nearest even */
        return (uint16_t)(sign | (uint32_t)q);
    }
    uint32_t man = ax & 0x7FFFFFu, e = (ax >> 23) - 112u;
    uint32_t h = (e << 10) | (man >> 13), rest = man & 0x1FFFu;
    if (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) h++; /* carry into the exponent is correct */
    return (uint16_t)(sign | h);
}

static float bf16_to_f32(uint16_t b)
{
    uint32_t bits = (uint32_t)b << 16;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

static uint16_t f32_to_bf16(float f)
{
    uint32_t x;
    memcpy(&x, &f, 4);
    if ((x & 0x7FFFFFFFu) > 0x7F800000u) return (uint16_t)((x >> 16) | 0x40u); /* quiet NaN */
    x += 0x7FFFu + ((x >> 16) & 1u);
    return (uint16_t)(x >> 16);
}

void plait_dequant_row(float *dst, const plait_wmat_t *w, size_t row, size_t i0, size_t n)
{
    const uint8_t *r = (const uint8_t *)w->data + row * w->row_bytes;
    switch (w->type) {
    case PLAIT_DT_F32: memcpy(dst, r + i0 * 4, n * 4); return;
    case PLAIT_DT_F16:
        for (size_t i = 0; i < n; i++) dst[i] = plait_f16_to_f32(plait_le16(r + (i0 + i) * 2));
        return;
    case PLAIT_DT_BF16:
        for (size_t i = 0; i < n; i++) dst[i] = bf16_to_f32(plait_le16(r + (i0 + i) * 2));
        return;
    case PLAIT_DT_Q8_0:
    case PLAIT_DT_Q4_0: {
        size_t bytes = w->type == PLAIT_DT_Q8_0 ? Q8_BYTES : Q4_BYTES, i = 0;
        while (i < n) {
            size_t e = i0 + i, b = e / PLAIT_QBLOCK, j = e % PLAIT_QBLOCK;
            const uint8_t *blk = r + b * bytes;
            float d = plait_f16_to_f32(plait_le16(blk)), q[PLAIT_QBLOCK];
            /* Whole block into q (straight-line loops the compiler vectorizes), then the wanted part. */
            if (w->type == PLAIT_DT_Q8_0) {
                const int8_t *qs = (const int8_t *)(blk + 2);
                for (int k = 0; k < PLAIT_QBLOCK; k++) q[k] = d * (float)qs[k];
            } else {
                const uint8_t *qs = blk + 2;
                for (int k = 0; k < 16; k++) {
                    q[k] = d * (float)((int)(qs[k] & 0x0F) - 8);
                    q[k + 16] = d * (float)((int)(qs[k] >> 4) - 8);
                }
            }
            size_t m = PLAIT_QBLOCK - j < n - i ? PLAIT_QBLOCK - j : n - i;
            memcpy(dst + i, q + j, m * sizeof(float));
            i += m;
        }
        return;
    }
    default: memset(dst, 0, n * sizeof(float)); return; /* unreachable: types are checked at load */
    }
}

static void wr16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
}

int plait_quantize_row(void *dst, int type, const float *src, size_t n)
{
    if (plait_dtype_row_bytes(type, n) == 0 && n != 0)
        return plait_fail(PLAIT_EINVAL, "quantize: type %d cannot hold a row of %zu elements", type, n);
    uint8_t *o = dst;
    switch (type) {
    case PLAIT_DT_F32: memcpy(o, src, n * 4); return 0;
    case PLAIT_DT_F16:
        for (size_t i = 0; i < n; i++) wr16(o + 2 * i, plait_f32_to_f16(src[i]));
        return 0;
    case PLAIT_DT_BF16:
        for (size_t i = 0; i < n; i++) wr16(o + 2 * i, f32_to_bf16(src[i]));
        return 0;
    case PLAIT_DT_Q8_0:
        for (size_t b = 0; b < n / PLAIT_QBLOCK; b++) {
            const float *x = src + b * PLAIT_QBLOCK;
            uint8_t *blk = o + b * Q8_BYTES;
            float amax = 0.0f;
            for (int j = 0; j < PLAIT_QBLOCK; j++) amax = fmaxf(amax, fabsf(x[j]));
            float d = amax / 127.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
            wr16(blk, plait_f32_to_f16(d));
            for (int j = 0; j < PLAIT_QBLOCK; j++) blk[2 + j] = (uint8_t)(int8_t)roundf(x[j] * id);
        }
        return 0;
    case PLAIT_DT_Q4_0:
        for (size_t b = 0; b < n / PLAIT_QBLOCK; b++) {
            const float *x = src + b * PLAIT_QBLOCK;
            uint8_t *blk = o + b * Q4_BYTES;
            float amax = 0.0f, mx = 0.0f;
            for (int j = 0; j < PLAIT_QBLOCK; j++)
                if (fabsf(x[j]) > amax) {
                    amax = fabsf(x[j]);
                    mx = x[j];
                }
            float d = mx / -8.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
            wr16(blk, plait_f32_to_f16(d));
            for (int j = 0; j < 16; j++) {
                int a = (int)(int8_t)(x[j] * id + 8.5f), c = (int)(int8_t)(x[j + 16] * id + 8.5f);
                a = a > 15 ? 15 : a;
                c = c > 15 ? 15 : c;
                blk[2 + j] = (uint8_t)(a | c << 4);
            }
        }
        return 0;
    default: return plait_fail(PLAIT_EINVAL, "quantize: unknown type %d", type);
    }
}
