/*
 * rng.h: a fast, explicitly-stated random stream for noise and stochastic
 * rounding: the ChaCha20 keystream (RFC 8439 block function, 20 rounds)
 * under a 256-bit key, plus a uniform and a Gaussian (Box-Muller) sampler.
 *
 * Where the key comes from decides what the stream is good for:
 *   - plait_rng_seed_drbg(): the key is drawn from the mbedTLS CTR_DRBG, so
 *     the stream is cryptographically unpredictable. Use this on devices
 *     (local-DP noise) and in the aggregator (central-DP noise).
 *   - plait_rng_seed() / plait_rng_seed_u64(): the key is given, so runs
 *     replay exactly. Tests and the simulator only.
 *
 * The state holds a secret (the key and buffered keystream): wipe it with
 * plait_rng_wipe() when done. Never log it.
 *
 * Thread-safety: one plait_rng_t per thread; there is no global state.
 */
#ifndef PLAIT_RNG_H
#define PLAIT_RNG_H

#include "plait/crypto.h"
#include "plait/plait.h"

typedef struct plait_rng_s {
    uint32_t input[16]; /* ChaCha20 input: constants, key (8 words), 64-bit counter, 64-bit stream id */
    uint32_t block[16]; /* current keystream block */
    unsigned pos;       /* next unused word of block; 16 means "empty" */
    int has_spare;      /* Box-Muller yields pairs; the second waits here */
    double spare;
} plait_rng_t;

/**
 * \brief Key the stream directly (deterministic; tests and simulation).
 * \param r      state to (re)initialize; must not be NULL.
 * \param key    32 secret bytes; borrowed, copied.
 * \param stream independent sub-stream number (e.g. a client index).
 */
void plait_rng_seed(plait_rng_t *r, const uint8_t key[32], uint64_t stream);

/**
 * \brief Deterministic seeding from a 64-bit seed (the simulator's master
 *        seed): key = SHA-256("plait-rng-v1" || seed, little endian).
 */
void plait_rng_seed_u64(plait_rng_t *r, uint64_t seed, uint64_t stream);

/**
 * \brief Key the stream with 32 bytes drawn from a seeded DRBG (production).
 * \param d a seeded plait_drbg_t (see crypto.h).
 * \return 0, or the error of plait_drbg_random() (PLAIT_EINVAL, PLAIT_EIO).
 */
int plait_rng_seed_drbg(plait_rng_t *r, plait_drbg_t *d) PLAIT_WUR;

/** \brief Next 32 uniformly random bits. */
uint32_t plait_rng_u32(plait_rng_t *r);
/** \brief Next 64 uniformly random bits. */
uint64_t plait_rng_u64(plait_rng_t *r);
/** \brief Uniform double in [0, 1) with 53 random bits. */
double plait_rng_uniform(plait_rng_t *r);
/** \brief Standard normal N(0, 1) (Box-Muller on 53-bit uniforms). */
double plait_rng_normal(plait_rng_t *r);
/** \brief Wipe key and buffered output. NULL is safe. */
void plait_rng_wipe(plait_rng_t *r);

#endif /* PLAIT_RNG_H */
