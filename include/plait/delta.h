/*
 * delta.h: compact deltas between two versions of a float32 span (the global
 * adapter's parameter arena), so a device that holds version v-1 downloads
 * v as prev + delta instead of the whole file (docs/protocol.md, "Adapter
 * encodings").
 *
 * Two kinds, one format (little-endian):
 *
 *     0  4  magic "PLDT"
 *     4  1  format version, 1
 *     5  1  kind: 1 exact, 2 quantized
 *     6  1  bits: 0 (exact); 8 or 16 (quantized)
 *     7  1  reserved, 0
 *     8  4  block: elements per block (quantized: 1..65536; exact: 0)
 *    12  8  n: elements (must equal the receiver's span)
 *    20     body
 *
 * Exact: x_i = bits(prev_i) XOR bits(next_i). ceil(n/4) tag bytes (2 bits per
 * element, element i in bits 2*(i%4)), tag t saying how many low-order bytes
 * of x_i follow (0, 2, 3, 4 bytes), then those bytes, element after element.
 * Nearby float32 values share sign, exponent and top mantissa bits, so most
 * words cost 2 or 3 bytes, and an unchanged span (FFA-LoRA's frozen A) costs
 * 2 bits an element. The rebuild is bit for bit.
 *
 * Quantized: per block, a float32 scale (finite, >= 0); a scale of 0 means
 * the block is unchanged and no values follow; otherwise one signed integer
 * q of bits/8 bytes per element, |q| <= 2^(bits-1) - 1, and
 *     next_i = prev_i + (float)q_i * scale
 * evaluated in float32, the product rounded before the sum (this file is
 * compiled with -ffp-contract=off). The aggregator commits exactly that
 * value, so the device rebuilds the committed version bit for bit; the
 * rounding is the aggregator's (plait_delta_encode_quant).
 *
 * Every decode is of untrusted bytes: header, lengths, tags, scales, values
 * and the rebuilt floats (finite) are checked, and a refusal names what was
 * wrong. Thread-safe (no state).
 */
#ifndef PLAIT_DELTA_H
#define PLAIT_DELTA_H

#include <stddef.h>
#include <stdint.h>

#include "plait/plait.h"

#define PLAIT_DELTA_HEADER 20
#define PLAIT_DELTA_KIND_EXACT 1
#define PLAIT_DELTA_KIND_QUANT 2
#define PLAIT_DELTA_BLOCK_DEFAULT 256
#define PLAIT_DELTA_BLOCK_MAX 65536

/**
 * \brief Encode next as an exact delta from prev.
 * \param prev, next  n floats each (bit patterns are used; NaN payloads survive).
 * \param out         receives a malloc'd buffer (free()); NULL on failure.
 * \return 0; PLAIT_EINVAL (NULL, n == 0); PLAIT_ENOMEM.
 */
int plait_delta_encode_exact(const float *prev, const float *next, size_t n,
                             uint8_t **out /* OUT */, size_t *out_len /* OUT */) PLAIT_WUR;

/**
 * \brief Quantize target - prev to bits per element in blocks, and give the
 *        version that the delta rebuilds exactly (committed).
 * \param prev, target  n finite floats.
 * \param bits          8 or 16.
 * \param block         elements per block, 1..PLAIT_DELTA_BLOCK_MAX.
 * \param committed     n floats, OUT: prev + dequant(delta), bit for bit what
 *                      plait_delta_apply() rebuilds. May alias target.
 * \param out           receives a malloc'd buffer (free()).
 * \return 0; PLAIT_EINVAL (bad argument, a non-finite input, a difference or
 *         rebuilt value that is not finite: the caller keeps target and uses
 *         an exact delta); PLAIT_ENOMEM.
 */
int plait_delta_encode_quant(const float *prev, const float *target, size_t n, unsigned bits,
                             size_t block, float *committed /* OUT */, uint8_t **out /* OUT */,
                             size_t *out_len /* OUT */) PLAIT_WUR;

/**
 * \brief Check an untrusted delta and rebuild next = prev + delta.
 * \param prev  n floats.
 * \param out   n floats, OUT (may alias prev; on failure its content is unspecified).
 * \return 0; PLAIT_EPROTO naming the field or element (bad magic, version,
 *         kind, bits, block, length, scale, value out of range, a rebuilt
 *         value that is not finite); PLAIT_EMISMATCH (n differs from the
 *         receiver's span); PLAIT_EINVAL (NULL).
 */
int plait_delta_apply(const float *prev, size_t n, const uint8_t *d, size_t len,
                      float *out) PLAIT_WUR;

#endif /* PLAIT_DELTA_H */
