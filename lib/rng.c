/*
 * rng.c: ChaCha20 keystream generator with uniform and Gaussian samplers.
 *
 * Invariants: input[0..3] are the ChaCha constants, input[4..11] the key,
 * input[12..13] a 64-bit block counter that increments per block (2^64 blocks
 * before it would repeat: never reached), input[14..15] the stream id. The
 * block buffer is consumed word by word; pos == 16 means a new block is due.
 *
 * Workload: a client draws two 32-bit words per coordinate for stochastic
 * rounding and two per Gaussian pair, i.e. a few million words per round;
 * ChaCha20 in portable C gives several hundred MB/s, far above need.
 *
 * The Box-Muller transform works on doubles; the known floating-point
 * attacks on textbook noise samplers (Mironov 2012) are discussed in
 * docs/privacy.md. Secrets here: the key, the buffered block, the spare
 * normal. plait_rng_wipe() clears them.
 */
#include "plait/rng.h"
#include "plait/le.h"

#include <math.h>
#include <string.h>

#define ROTL(a, b) (((a) << (b)) | ((a) >> (32 - (b))))
#define QR(a, b, c, d)                                                        \
    (a += b, d ^= a, d = ROTL(d, 16), c += d, b ^= c, b = ROTL(b, 12),        \
     a += b, d ^= a, d = ROTL(d, 8), c += d, b ^= c, b = ROTL(b, 7))

static void chacha_block(const uint32_t in[16], uint32_t out[16])
{
    uint32_t x[16];
    memcpy(x, in, sizeof(x));
    for (int i = 0; i < 10; i++) {
        QR(x[0], x[4], x[8], x[12]);
        QR(x[1], x[5], x[9], x[13]);
        QR(x[2], x[6], x[10], x[14]);
        QR(x[3], x[7], x[11], x[15]);
        QR(x[0], x[5], x[10], x[15]);
        QR(x[1], x[6], x[11], x[12]);
        QR(x[2], x[7], x[8], x[13]);
        QR(x[3], x[4], x[9], x[14]);
    }
    for (int i = 0; i < 16; i++) out[i] = x[i] + in[i];
    plait_zeroize(x, sizeof(x));
}

void plait_rng_seed(plait_rng_t *r, const uint8_t key[32], uint64_t stream)
{
    r->input[0] = 0x61707865u; /* "expand 32-byte k" */
    r->input[1] = 0x3320646eu;
    r->input[2] = 0x79622d32u;
    r->input[3] = 0x6b206574u;
    for (int i = 0; i < 8; i++) r->input[4 + i] = plait_le32(key + 4 * i);
    r->input[12] = 0;
    r->input[13] = 0;
    r->input[14] = (uint32_t)stream;
    r->input[15] = (uint32_t)(stream >> 32);
    r->pos = 16;
    r->has_spare = 0;
    r->spare = 0.0;
}

void plait_rng_seed_u64(plait_rng_t *r, uint64_t seed, uint64_t stream)
{
    uint8_t buf[12 + 8], key[32];
    memcpy(buf, "plait-rng-v1", 12);
    plait_put_le64(buf + 12, seed);
    plait_sha256(buf, sizeof(buf), key);
    plait_rng_seed(r, key, stream);
    plait_zeroize(key, sizeof(key));
    plait_zeroize(buf, sizeof(buf));
}

int plait_rng_seed_drbg(plait_rng_t *r, plait_drbg_t *d)
{
    uint8_t key[32];
    int rc = plait_drbg_random(d, key, sizeof(key));
    if (rc == 0) plait_rng_seed(r, key, 0);
    plait_zeroize(key, sizeof(key));
    return rc;
}

uint32_t plait_rng_u32(plait_rng_t *r)
{
    if (r->pos >= 16) {
        chacha_block(r->input, r->block);
        if (++r->input[12] == 0) r->input[13]++;
        r->pos = 0;
    }
    return r->block[r->pos++];
}

uint64_t plait_rng_u64(plait_rng_t *r)
{
    uint64_t hi = plait_rng_u32(r);
    return hi << 32 | plait_rng_u32(r);
}

double plait_rng_uniform(plait_rng_t *r)
{
    return (double)(plait_rng_u64(r) >> 11) * 0x1.0p-53;
}

double plait_rng_normal(plait_rng_t *r)
{
    if (r->has_spare) {
        r->has_spare = 0;
        double z = r->spare;
        r->spare = 0.0;
        return z;
    }
    /* u1 in (0, 1] so log(u1) is finite; u2 in [0, 1). */
    double u1 = (double)((plait_rng_u64(r) >> 11) + 1) * 0x1.0p-53;
    double u2 = plait_rng_uniform(r);
    double rad = sqrt(-2.0 * log(u1));
    double th = 6.283185307179586476925286766559 * u2;
    r->spare = rad * sin(th);
    r->has_spare = 1;
    return rad * cos(th);
}

void plait_rng_wipe(plait_rng_t *r)
{
    if (r) plait_zeroize(r, sizeof(*r));
}
