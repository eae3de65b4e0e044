/*
 * crypto.c: plait's wrapper over mbedTLS 2.28. Nothing else in the tree
 * includes mbedtls headers, so a move to mbedTLS 3.x touches this file only.
 * Foreign error codes are translated here (MBEDTLS_ERR_* to PLAIT_E*).
 */
#include "plait/crypto.h"

#include <mbedtls/platform_util.h>
#include <mbedtls/sha256.h>
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
