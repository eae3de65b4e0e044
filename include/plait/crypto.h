/*
 * crypto.h: the only door to mbedTLS. Hashing and the CTR_DRBG now; AEAD, key
 * agreement and TLS glue join as the modules that need them land.
 *
 * Thread-safety: stateless functions are reentrant; a context is used by one
 * thread at a time.
 */
#ifndef PLAIT_CRYPTO_H
#define PLAIT_CRYPTO_H

#include "plait/plait.h"

typedef struct plait_sha256_s {
    uint64_t opaque[32]; /* holds an mbedtls_sha256_context (checked in crypto.c) */
} plait_sha256_t;

/** \brief One-shot SHA-256 of buf. */
void plait_sha256(const uint8_t *buf, size_t len, uint8_t out[32]);
/** \brief Streaming SHA-256: init, update any number of times, finish (which also frees). */
void plait_sha256_init(plait_sha256_t *ctx);
void plait_sha256_update(plait_sha256_t *ctx, const uint8_t *buf, size_t len);
void plait_sha256_finish(plait_sha256_t *ctx, uint8_t out[32]);
/** \brief Lower-case hex of n bytes into out (2n + 1 bytes). */
void plait_hex(const uint8_t *in, size_t n, char *out);
/** \brief Parse 2n hex digits. \return 0 or PLAIT_EINVAL. */
int plait_unhex(const char *hex, uint8_t *out, size_t n);
/** \brief Constant-time comparison. \return 0 if equal. */
int plait_ct_memcmp(const void *a, const void *b, size_t n);
/** \brief Wipe a secret (not optimized away). NULL is safe. */
void plait_zeroize(void *p, size_t n);

/*
 * Deterministic random bit generator (mbedTLS CTR_DRBG, AES-256).
 *
 * All cryptographic randomness in plait comes from here: the local-DP noise
 * stream key, the aggregator's central-DP noise key, mask seeds. Lifecycle is
 * value + init/seed/free:
 *
 *     plait_drbg_t d;
 *     plait_drbg_init(&d);                              // cannot fail
 *     if ((ret = plait_drbg_seed(&d, pers, pers_len)) != 0) goto exit;
 *     ret = plait_drbg_random(&d, key, 32);
 * exit:
 *     plait_drbg_free(&d);                              // wipes the state
 *
 * plait_drbg_seed_deterministic() replaces the system entropy source by a
 * stream expanded from a caller-supplied seed, so that tests and the
 * simulator replay exactly. It must never be used for a real deployment.
 *
 * Thread-safety: one plait_drbg_t per thread.
 */
typedef struct plait_drbg_s {
    void *impl; /* owned heap state (mbedTLS contexts); NULL until seeded */
} plait_drbg_t;

/** \brief Make d safe to free. Cannot fail. \param d must not be NULL. */
void plait_drbg_init(plait_drbg_t *d);

/**
 * \brief Seed from the platform entropy source (mbedTLS entropy: getrandom or
 *        /dev/urandom) with an optional personalization string.
 * \param d    initialized with plait_drbg_init(); must not be NULL. A second
 *             seed call on the same object re-creates the state.
 * \param pers personalization bytes (not secret; may be NULL when pers_len is 0).
 * \return 0, PLAIT_EINVAL (NULL d, pers_len > 128), PLAIT_ENOMEM, PLAIT_EIO
 *         (entropy source failed; the mbedTLS code is in the detail).
 */
int plait_drbg_seed(plait_drbg_t *d, const uint8_t *pers, size_t pers_len) PLAIT_WUR;

/**
 * \brief Seed deterministically from seed (tests and simulation only): the
 *        same seed gives the same output stream on every platform.
 * \param seed secret seed bytes, 1..64 of them; borrowed, not retained.
 * \return 0, PLAIT_EINVAL (NULL argument, seed_len 0 or > 64), PLAIT_ENOMEM,
 *         PLAIT_EINTERNAL (mbedTLS refused the seed).
 */
int plait_drbg_seed_deterministic(plait_drbg_t *d, const uint8_t *seed, size_t seed_len) PLAIT_WUR;

/**
 * \brief Fill out with len random bytes (any length; requests are split into
 *        the DRBG's maximum request size internally).
 * \return 0, PLAIT_EINVAL (d not seeded, NULL out with len > 0), PLAIT_EIO
 *         (reseed from the entropy source failed).
 */
int plait_drbg_random(plait_drbg_t *d, uint8_t *out, size_t len) PLAIT_WUR;

/** \brief Wipe and release the state. NULL and double free are safe. */
void plait_drbg_free(plait_drbg_t *d);

#endif /* PLAIT_CRYPTO_H */
