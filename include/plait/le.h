/*
 * le.h: little-endian loads and stores of fixed-width unsigned integers.
 *
 * plait's files and byte images (adapter deltas, the kNN memory, the agent's
 * pending update, tokenizers, checkpoints) are little-endian whatever the
 * host; these read and write them a byte at a time, so neither the host's
 * byte order nor the pointer's alignment matters. Header-only.
 */
#ifndef PLAIT_LE_H
#define PLAIT_LE_H

#include <stdint.h>

static inline uint16_t plait_le16(const uint8_t *p) { return (uint16_t)(p[0] | p[1] << 8); }

static inline uint32_t plait_le32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static inline uint64_t plait_le64(const uint8_t *p) { return (uint64_t)plait_le32(p) | (uint64_t)plait_le32(p + 4) << 32; }

static inline void plait_put_le32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
    p[2] = (uint8_t)(v >> 16);
    p[3] = (uint8_t)(v >> 24);
}

static inline void plait_put_le64(uint8_t *p, uint64_t v)
{
    plait_put_le32(p, (uint32_t)v);
    plait_put_le32(p + 4, (uint32_t)(v >> 32));
}

#endif
