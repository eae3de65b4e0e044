/*
 * crypto.c: plait's wrapper over mbedTLS 2.28. Nothing else in the tree
 * includes mbedtls headers, so a move to mbedTLS 3.x touches this file only.
 * Foreign error codes are translated here (MBEDTLS_ERR_* to PLAIT_E*).
 *
 * DRBG invariants: a plait_drbg_t owns one heap block holding the entropy
 * context, the CTR_DRBG context and (deterministic mode) the seed stream the
 * DRBG pulls "entropy" from. The block is wiped before it is freed. Seeds and
 * DRBG output never reach the log or the error detail.
 */
#include "plait/crypto.h"

#include <mbedtls/ctr_drbg.h>
#include <mbedtls/entropy.h>
#include <mbedtls/platform_util.h>
#include <mbedtls/sha256.h>
#include <stdlib.h>
#include <string.h>

_Static_assert(sizeof(mbedtls_sha256_context) <= sizeof(((plait_sha256_t *)0)->opaque),
               "plait_sha256_t too small for mbedtls_sha256_context");

void plait_sha256(const uint8_t *buf, size_t len, uint8_t out[32])
{
    plait_sha256_t c;
    plait_sha256_init(&c);
    plait_sha256_update(&c, buf, len);
    plait_sha256_finish(&c, out);
}

void plait_sha256_init(plait_sha256_t *ctx)
{
    mbedtls_sha256_context *c = (mbedtls_sha256_context *)ctx->opaque;
    mbedtls_sha256_init(c);
    mbedtls_sha256_starts_ret(c, 0);
}

void plait_sha256_update(plait_sha256_t *ctx, const uint8_t *buf, size_t len)
{
    mbedtls_sha256_update_ret((mbedtls_sha256_context *)ctx->opaque, buf, len);
}

void plait_sha256_finish(plait_sha256_t *ctx, uint8_t out[32])
{
    mbedtls_sha256_context *c = (mbedtls_sha256_context *)ctx->opaque;
    mbedtls_sha256_finish_ret(c, out);
    mbedtls_sha256_free(c);
}

void plait_hex(const uint8_t *in, size_t n, char *out)
{
    static const char d[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = d[in[i] >> 4];
        out[2 * i + 1] = d[in[i] & 15];
    }
    out[2 * n] = '\0';
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

int plait_unhex(const char *hex, uint8_t *out, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        int hi = hexval(hex[2 * i]);
        if (hi < 0) return PLAIT_EINVAL;
        int lo = hexval(hex[2 * i + 1]);
        if (lo < 0) return PLAIT_EINVAL;
        out[i] = (uint8_t)(hi << 4 | lo);
    }
    return hex[2 * n] == '\0' ? 0 : PLAIT_EINVAL;
}

int plait_ct_memcmp(const void *a, const void *b, size_t n)
{
    const volatile uint8_t *x = a, *y = b;
    uint8_t d = 0;
    for (size_t i = 0; i < n; i++) d |= (uint8_t)(x[i] ^ y[i]);
    return d != 0;
}

void plait_zeroize(void *p, size_t n)
{
    if (p) mbedtls_platform_zeroize(p, n);
}

/* ---- CTR_DRBG ---------------------------------------------------------- */

#define DET_SEED_MAX 64

/* Deterministic "entropy": SHA-256(domain || counter || seed), block after
 * block. Only the simulator and tests use it. */
typedef struct {
    uint8_t seed[DET_SEED_MAX];
    size_t seed_len;
    uint32_t counter;
} det_source_t;

typedef struct {
    mbedtls_entropy_context entropy;
    mbedtls_ctr_drbg_context drbg;
    det_source_t det;
    int have_entropy; /* entropy context initialized (must be freed) */
} drbg_impl_t;

static int det_entropy(void *p, unsigned char *out, size_t len)
{
    det_source_t *src = p;
    static const char domain[] = "plait-drbg-deterministic-v1";
    while (len > 0) {
        uint8_t block[32], ctr[4];
        ctr[0] = (uint8_t)(src->counter >> 24);
        ctr[1] = (uint8_t)(src->counter >> 16);
        ctr[2] = (uint8_t)(src->counter >> 8);
        ctr[3] = (uint8_t)src->counter;
        src->counter++;
        plait_sha256_t h;
        plait_sha256_init(&h);
        plait_sha256_update(&h, (const uint8_t *)domain, sizeof(domain) - 1);
        plait_sha256_update(&h, ctr, sizeof(ctr));
        plait_sha256_update(&h, src->seed, src->seed_len);
        plait_sha256_finish(&h, block);
        size_t n = len < sizeof(block) ? len : sizeof(block);
        memcpy(out, block, n);
        mbedtls_platform_zeroize(block, sizeof(block));
        out += n;
        len -= n;
    }
    return 0;
}

void plait_drbg_init(plait_drbg_t *d)
{
    d->impl = NULL;
}

void plait_drbg_free(plait_drbg_t *d)
{
    if (d == NULL || d->impl == NULL) return;
    drbg_impl_t *im = d->impl;
    mbedtls_ctr_drbg_free(&im->drbg);
    if (im->have_entropy) mbedtls_entropy_free(&im->entropy);
    mbedtls_platform_zeroize(im, sizeof(*im));
    free(im);
    d->impl = NULL;
}

static drbg_impl_t *drbg_fresh(plait_drbg_t *d)
{
    plait_drbg_free(d);
    drbg_impl_t *im = calloc(1, sizeof(*im));
    if (im == NULL) return NULL;
    mbedtls_ctr_drbg_init(&im->drbg);
    d->impl = im;
    return im;
}

int plait_drbg_seed(plait_drbg_t *d, const uint8_t *pers, size_t pers_len)
{
    if (d == NULL || (pers == NULL && pers_len > 0) || pers_len > 128)
        return plait_fail(PLAIT_EINVAL, "drbg_seed: bad argument (personalization of %zu bytes)", pers_len);
    drbg_impl_t *im = drbg_fresh(d);
    if (im == NULL) return plait_fail(PLAIT_ENOMEM, "drbg_seed: %zu bytes", sizeof(drbg_impl_t));
    mbedtls_entropy_init(&im->entropy);
    im->have_entropy = 1;
    int rc = mbedtls_ctr_drbg_seed(&im->drbg, mbedtls_entropy_func, &im->entropy, pers, pers_len);
    if (rc != 0) {
        plait_drbg_free(d);
        return plait_fail(PLAIT_EIO, "drbg_seed: mbedtls_ctr_drbg_seed failed (-0x%04x)", (unsigned)-rc);
    }
    return 0;
}

int plait_drbg_seed_deterministic(plait_drbg_t *d, const uint8_t *seed, size_t seed_len)
{
    if (d == NULL || seed == NULL || seed_len == 0 || seed_len > DET_SEED_MAX)
        return plait_fail(PLAIT_EINVAL, "drbg_seed_deterministic: seed must be 1..%d bytes", DET_SEED_MAX);
    drbg_impl_t *im = drbg_fresh(d);
    if (im == NULL) return plait_fail(PLAIT_ENOMEM, "drbg_seed_deterministic: %zu bytes", sizeof(drbg_impl_t));
    memcpy(im->det.seed, seed, seed_len);
    im->det.seed_len = seed_len;
    im->det.counter = 0;
    static const unsigned char pers[] = "plait-deterministic";
    int rc = mbedtls_ctr_drbg_seed(&im->drbg, det_entropy, &im->det, pers, sizeof(pers) - 1);
    if (rc != 0) {
        plait_drbg_free(d);
        return plait_fail(PLAIT_EINTERNAL, "drbg_seed_deterministic: mbedtls_ctr_drbg_seed failed (-0x%04x)",
                          (unsigned)-rc);
    }
    return 0;
}

int plait_drbg_random(plait_drbg_t *d, uint8_t *out, size_t len)
{
    if (d == NULL || d->impl == NULL) return plait_fail(PLAIT_EINVAL, "drbg_random: generator not seeded");
    if (out == NULL && len > 0) return plait_fail(PLAIT_EINVAL, "drbg_random: NULL output");
    drbg_impl_t *im = d->impl;
    while (len > 0) {
        size_t n = len < MBEDTLS_CTR_DRBG_MAX_REQUEST ? len : MBEDTLS_CTR_DRBG_MAX_REQUEST;
        int rc = mbedtls_ctr_drbg_random(&im->drbg, out, n);
        if (rc != 0) return plait_fail(PLAIT_EIO, "drbg_random: mbedtls_ctr_drbg_random failed (-0x%04x)", (unsigned)-rc);
        out += n;
        len -= n;
    }
    return 0;
}
