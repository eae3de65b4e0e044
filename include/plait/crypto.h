/*
 * crypto.h: the only door to mbedTLS. Hashing now; the DRBG, AEAD, key
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

#endif /* PLAIT_CRYPTO_H */
