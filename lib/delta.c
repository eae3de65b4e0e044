/*
 * delta.c: the adapter download delta (include/plait/delta.h has the format).
 *
 * Invariants: plait_delta_apply() reads only inside [d, d + len), checks the
 * header before it computes a size, requires the body to end exactly at len,
 * and refuses a rebuilt value that is not finite (the adapter loader would
 * refuse it anyway; refusing here names the element). The quantized rebuild
 * is two float32 operations in a fixed order, product then sum, with no
 * contraction into a fused multiply-add (lib/CMakeLists.txt compiles this
 * file with -ffp-contract=off), so the aggregator and every device, on any
 * architecture with IEEE binary32 arithmetic, get the same bits.
 *
 * Workload: once per committed version per base on the aggregator (the
 * encoded delta is cached), once per download on a device; O(n), one pass.
 */
#include "plait/delta.h"
#include "plait/le.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static const uint8_t MAGIC[4] = {'P', 'L', 'D', 'T'};
static const unsigned TAG_BYTES[4] = {0, 2, 3, 4};

static uint32_t f2u(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

static float u2f(uint32_t u)
{
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static void put_header(uint8_t *p, int kind, unsigned bits, uint32_t block, uint64_t n)
{
    memcpy(p, MAGIC, 4);
    p[4] = 1;
    p[5] = (uint8_t)kind;
    p[6] = (uint8_t)bits;
    p[7] = 0;
    plait_put_le32(p + 8, block);
    plait_put_le32(p + 12, (uint32_t)n);
    plait_put_le32(p + 16, (uint32_t)(n >> 32));
}

static unsigned tag_of(uint32_t x)
{
    if (x == 0) return 0;
    if (x < (1u << 16)) return 1;
    if (x < (1u << 24)) return 2;
    return 3;
}

int plait_delta_encode_exact(const float *prev, const float *next, size_t n, uint8_t **out,
                             size_t *out_len)
{
    if (out) *out = NULL;
    if (out_len) *out_len = 0;
    if (!prev || !next || !out || !out_len || n == 0)
        return plait_fail(PLAIT_EINVAL, "delta: bad argument");
    size_t ntag = (n + 3) / 4, payload = 0;
    for (size_t i = 0; i < n; i++)
        payload += TAG_BYTES[tag_of(f2u(prev[i]) ^ f2u(next[i]))];
    size_t len = PLAIT_DELTA_HEADER + ntag + payload;
    uint8_t *b = calloc(1, len);
    if (!b) return plait_fail(PLAIT_ENOMEM, "delta: %zu bytes", len);
    put_header(b, PLAIT_DELTA_KIND_EXACT, 0, 0, n);
    uint8_t *tags = b + PLAIT_DELTA_HEADER, *p = tags + ntag;
    for (size_t i = 0; i < n; i++) {
        uint32_t x = f2u(prev[i]) ^ f2u(next[i]);
        unsigned t = tag_of(x);
        tags[i / 4] |= (uint8_t)(t << (2 * (i % 4)));
        for (unsigned k = 0; k < TAG_BYTES[t]; k++)
            *p++ = (uint8_t)(x >> (8 * k));
    }
    *out = b;
    *out_len = len;
    return 0;
}

/* The rebuild of one quantized element: the product rounded to float32, then the sum. */
static float dequant_add(float prev, int32_t q, float scale)
{
    float step = (float)q * scale;
    return prev + step;
}

int plait_delta_encode_quant(const float *prev, const float *target, size_t n, unsigned bits,
                             size_t block, float *committed, uint8_t **out, size_t *out_len)
{
    if (out) *out = NULL;
    if (out_len) *out_len = 0;
    if (!prev || !target || !committed || !out || !out_len || n == 0)
        return plait_fail(PLAIT_EINVAL, "delta: bad argument");
    if (bits != 8 && bits != 16)
        return plait_fail(PLAIT_EINVAL, "delta: bits %u, not 8 or 16", bits);
    if (block < 1 || block > PLAIT_DELTA_BLOCK_MAX)
        return plait_fail(PLAIT_EINVAL, "delta: block %zu outside 1..%d", block,
                          PLAIT_DELTA_BLOCK_MAX);
    const int32_t qmax = (int32_t)((1u << (bits - 1)) - 1);
    const size_t bw = bits / 8, nblk = (n + block - 1) / block;
    size_t len = PLAIT_DELTA_HEADER + nblk * 4 + n * bw; /* upper bound; zero blocks shrink it */
    uint8_t *b = malloc(len);
    if (!b) return plait_fail(PLAIT_ENOMEM, "delta: %zu bytes", len);
    put_header(b, PLAIT_DELTA_KIND_QUANT, bits, (uint32_t)block, n);
    uint8_t *p = b + PLAIT_DELTA_HEADER;
    for (size_t s = 0; s < n; s += block) {
        size_t m = n - s < block ? n - s : block;
        float maxabs = 0.0f;
        for (size_t i = s; i < s + m; i++) {
            float d = target[i] - prev[i];
            if (!isfinite(prev[i]) || !isfinite(target[i]) || !isfinite(d)) {
                free(b);
                return plait_fail(PLAIT_EINVAL, "delta: element %zu: difference not finite", i);
            }
            if (fabsf(d) > maxabs) maxabs = fabsf(d);
        }
        float scale = maxabs / (float)qmax;
        if (!(scale >
              0.0f)) { /* unchanged (or a change below the smallest float step): no values */
            plait_put_le32(p, 0);
            p += 4;
            memmove(committed + s, prev + s, m * sizeof(float));
            continue;
        }
        plait_put_le32(p, f2u(scale));
        p += 4;
        for (size_t i = s; i < s + m; i++) {
            float d = target[i] - prev[i];
            long q = lrintf(d / scale);
            if (q > qmax) q = qmax;
            if (q < -qmax) q = -qmax;
            float v = dequant_add(prev[i], (int32_t)q, scale);
            if (!isfinite(v)) {
                free(b);
                return plait_fail(PLAIT_EINVAL, "delta: element %zu: rebuilt value not finite", i);
            }
            uint32_t u = (uint32_t)(int32_t)q;
            for (size_t k = 0; k < bw; k++)
                *p++ = (uint8_t)(u >> (8 * k));
            committed[i] = v;
        }
    }
    *out = b;
    *out_len = (size_t)(p - b);
    return 0;
}

int plait_delta_apply(const float *prev, size_t n, const uint8_t *d, size_t len, float *out)
{
    if (!prev || !d || !out) return plait_fail(PLAIT_EINVAL, "delta: NULL argument");
    if (len < PLAIT_DELTA_HEADER)
        return plait_fail(PLAIT_EPROTO, "delta: %zu bytes, shorter than its %d-byte header", len,
                          PLAIT_DELTA_HEADER);
    if (memcmp(d, MAGIC, 4) != 0) return plait_fail(PLAIT_EPROTO, "delta: bad magic");
    if (d[4] != 1) return plait_fail(PLAIT_EPROTO, "delta: format version %u, expected 1", d[4]);
    if (d[7] != 0) return plait_fail(PLAIT_EPROTO, "delta: reserved byte %u, expected 0", d[7]);
    unsigned kind = d[5], bits = d[6];
    uint32_t block = plait_le32(d + 8);
    uint64_t dn = plait_le64(d + 12);
    if (dn != (uint64_t)n)
        return plait_fail(PLAIT_EMISMATCH, "delta: n %llu, the adapter has %zu elements",
                          (unsigned long long)dn, n);
    if (n == 0) return plait_fail(PLAIT_EPROTO, "delta: n is 0");
    const uint8_t *p = d + PLAIT_DELTA_HEADER, *end = d + len;
    if (kind == PLAIT_DELTA_KIND_EXACT) {
        if (bits != 0)
            return plait_fail(PLAIT_EPROTO, "delta: exact kind with bits %u, expected 0", bits);
        if (block != 0)
            return plait_fail(PLAIT_EPROTO, "delta: exact kind with block %u, expected 0", block);
        size_t ntag = (n + 3) / 4;
        if ((size_t)(end - p) < ntag)
            return plait_fail(PLAIT_EPROTO, "delta: %zu bytes, too short for %zu tag bytes", len,
                              ntag);
        const uint8_t *tags = p;
        p += ntag;
        for (size_t i = 0; i < n; i++) {
            unsigned t = (tags[i / 4] >> (2 * (i % 4))) & 3u, nb = TAG_BYTES[t];
            if ((size_t)(end - p) < nb)
                return plait_fail(PLAIT_EPROTO,
                                  "delta: element %zu: truncated (%u bytes needed, %zu left)", i,
                                  nb, (size_t)(end - p));
            uint32_t x = 0;
            for (unsigned k = 0; k < nb; k++)
                x |= (uint32_t)p[k] << (8 * k);
            p += nb;
            float v = u2f(f2u(prev[i]) ^ x);
            if (!isfinite(v))
                return plait_fail(PLAIT_EPROTO, "delta: element %zu: rebuilt value not finite", i);
            out[i] = v;
        }
        if (p != end)
            return plait_fail(PLAIT_EPROTO, "delta: %zu trailing bytes", (size_t)(end - p));
        /* A final tag byte with bits set past n would be ignored: refuse it, the encoding is
         * canonical there. */
        if (n % 4 != 0 && (tags[ntag - 1] >> (2 * (n % 4))) != 0)
            return plait_fail(PLAIT_EPROTO, "delta: tag bits set past element %zu", n);
        return 0;
    }
    if (kind != PLAIT_DELTA_KIND_QUANT)
        return plait_fail(PLAIT_EPROTO, "delta: kind %u, expected 1 or 2", kind);
    if (bits != 8 && bits != 16)
        return plait_fail(PLAIT_EPROTO, "delta: bits %u, expected 8 or 16", bits);
    if (block < 1 || block > PLAIT_DELTA_BLOCK_MAX)
        return plait_fail(PLAIT_EPROTO, "delta: block %u outside 1..%d", block,
                          PLAIT_DELTA_BLOCK_MAX);
    const int32_t qmax = (int32_t)((1u << (bits - 1)) - 1);
    const size_t bw = bits / 8;
    for (size_t s = 0; s < n; s += block) {
        size_t m = n - s < block ? n - s : block;
        if ((size_t)(end - p) < 4)
            return plait_fail(PLAIT_EPROTO,
                              "delta: block at element %zu: truncated before its scale", s);
        uint32_t su = plait_le32(p);
        float scale = u2f(su);
        p += 4;
        if (!isfinite(scale) || scale < 0.0f || (su & 0x80000000u))
            return plait_fail(PLAIT_EPROTO,
                              "delta: block at element %zu: scale not finite and >= 0", s);
        if (scale == 0.0f) {
            if (out != prev) memmove(out + s, prev + s, m * sizeof(float));
            continue;
        }
        if ((size_t)(end - p) / bw < m)
            return plait_fail(PLAIT_EPROTO,
                              "delta: block at element %zu: truncated (%zu values needed)", s, m);
        for (size_t i = s; i < s + m; i++) {
            int32_t q =
                bw == 1 ? (int32_t)(int8_t)p[0] : (int32_t)(int16_t)(uint16_t)(p[0] | p[1] << 8);
            p += bw;
            if (q > qmax || q < -qmax)
                return plait_fail(PLAIT_EPROTO, "delta: element %zu: value %d outside +-%d", i,
                                  (int)q, (int)qmax);
            float v = dequant_add(prev[i], q, scale);
            if (!isfinite(v))
                return plait_fail(PLAIT_EPROTO, "delta: element %zu: rebuilt value not finite", i);
            out[i] = v;
        }
    }
    if (p != end) return plait_fail(PLAIT_EPROTO, "delta: %zu trailing bytes", (size_t)(end - p));
    return 0;
}
