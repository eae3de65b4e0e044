/*
 * pki.c: the deployment CA over mbedTLS 2.28's X.509 writer and parser.
 *
 * What it does: ECDSA P-256 key generation, a self-signed CA, the server
 * certificate (serverAuth + subjectAltName), device certificates (clientAuth,
 * CN = device id) from a generated key or from a CSR whose self-signature is
 * verified first, certificate inspection (CN, serial, SHA-256 fingerprint,
 * validity), offline verification, a revocation list by serial/fingerprint,
 * and the deployment-directory helpers behind `plait-aggregator init`,
 * `enroll` and `revoke`.
 *
 * mbedTLS 2.28 has no writer for extendedKeyUsage or subjectAltName, so both
 * extensions are DER-encoded here (asn1write) and added with
 * mbedtls_x509write_crt_set_extension(). The issuer name of an issued
 * certificate is the CA certificate's subject rendered by
 * mbedtls_x509_dn_gets() and parsed back; that round trip is exact because
 * config validation keeps ',', '=' and quotes out of every name.
 *
 * Invariants: private keys exist only in pk contexts (freed with
 * mbedtls_pk_free, which wipes) and in PEM buffers that are wiped before they
 * are freed. Nothing here logs; failures return a PLAIT_E* code with the
 * detail (and the mbedTLS code, once) in plait_errmsg(), never key bytes.
 *
 * Workload: a handful of calls per enrollment; P-256 keygen and signing take
 * well under a millisecond each, so nothing here is performance-sensitive.
 */
#include "plait/pki.h"
#include "plait/crypto.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <mbedtls/asn1write.h>
#include <mbedtls/bignum.h>
#include <mbedtls/ctr_drbg.h>
#include <mbedtls/ecp.h>
#include <mbedtls/md.h>
#include <mbedtls/oid.h>
#include <mbedtls/pk.h>
#include <mbedtls/platform_util.h>
#include <mbedtls/x509_crt.h>
#include <mbedtls/x509_csr.h>

#include "pki_int.h"

#define PEM_BUF 4096        /* a P-256 certificate with a few SANs is ~800 bytes of PEM */
#define CSR_MAX (16 * 1024) /* untrusted CSR input cap */
#define FILE_MAX (1024 * 1024)
#define SKEW_S 300 /* notBefore is backdated this much for device clock skew */
#define SAN_MAX 16 /* entries in a server subjectAltName */

/* ---- small helpers ------------------------------------------------------ */

static int mbed_fail(int code, int mrc, const char *what)
{
    return plait_fail(code, "%s (mbedTLS -0x%04x)", what, (unsigned)-mrc);
}

int plait__pki_rng(void *p_rng, unsigned char *out, size_t len)
{
    /* Any failure is reported to mbedTLS as an entropy failure. */
    return plait_drbg_random(p_rng, out, len) == 0 ? 0 : MBEDTLS_ERR_CTR_DRBG_ENTROPY_SOURCE_FAILED;
}

/* A DRBG for one call: the caller's, or a fresh system-seeded one. */
typedef struct {
    plait_drbg_t own;
    plait_drbg_t *use;
} rng_t;

static int rng_begin(rng_t *r, plait_drbg_t *given)
{
    plait_drbg_init(&r->own);
    r->use = given;
    if (given != NULL) return 0;
    static const uint8_t pers[] = "plait-pki";
    int rc = plait_drbg_seed(&r->own, pers, sizeof(pers) - 1);
    if (rc == 0) r->use = &r->own;
    return rc;
}

static void rng_end(rng_t *r)
{
    plait_drbg_free(&r->own);
}

static const mbedtls_x509_crt_profile profile = {
    MBEDTLS_X509_ID_FLAG(MBEDTLS_MD_SHA256) | MBEDTLS_X509_ID_FLAG(MBEDTLS_MD_SHA384) |
        MBEDTLS_X509_ID_FLAG(MBEDTLS_MD_SHA512),
    MBEDTLS_X509_ID_FLAG(MBEDTLS_PK_ECDSA) | MBEDTLS_X509_ID_FLAG(MBEDTLS_PK_ECKEY),
    MBEDTLS_X509_ID_FLAG(MBEDTLS_ECP_DP_SECP256R1),
    2048,
};

const void *plait__pki_profile(void)
{
    return &profile;
}

const char *plait__pki_flags_reason(uint32_t flags)
{
    if (flags & MBEDTLS_X509_BADCERT_REVOKED) return "certificate revoked";
    if (flags & MBEDTLS_X509_BADCERT_MISSING) return "no certificate";
    if (flags & MBEDTLS_X509_BADCERT_NOT_TRUSTED)
        return "certificate not issued by this deployment's CA";
    if (flags & MBEDTLS_X509_BADCERT_EXPIRED) return "certificate expired";
    if (flags & MBEDTLS_X509_BADCERT_FUTURE) return "certificate not yet valid";
    if (flags & MBEDTLS_X509_BADCERT_CN_MISMATCH)
        return "certificate does not name the expected server";
    if (flags & MBEDTLS_X509_BADCERT_EXT_KEY_USAGE)
        return "certificate not issued for this role (extended key usage)";
    if (flags & (MBEDTLS_X509_BADCERT_KEY_USAGE | MBEDTLS_X509_BADCERT_NS_CERT_TYPE))
        return "certificate key usage forbids this use";
    if (flags &
        (MBEDTLS_X509_BADCERT_BAD_MD | MBEDTLS_X509_BADCERT_BAD_PK | MBEDTLS_X509_BADCERT_BAD_KEY))
        return "certificate uses a disallowed algorithm or key";
    if (flags & MBEDTLS_X509_BADCERT_OTHER) return "certificate rejected (invalid device id)";
    return "certificate verification failed";
}

/* Names we put in a DN: printable, no DN metacharacters. */
static int name_ok(const char *s, int allow_space)
{
    if (s == NULL) return 0;
    size_t n = strlen(s);
    if (n == 0 || n > PLAIT_PKI_ID_MAX) return 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        int ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                 c == '.' || c == '_' || c == '-' ||
                 (allow_space && c == ' ' && i > 0 && i + 1 < n);
        if (!ok) return 0;
    }
    return 1;
}

int plait_pki_device_id_valid(const char *id)
{
    return name_ok(id, 0) && id[0] != '.' && id[0] != '-';
}

static int dns_ok(const char *s, size_t n)
{
    if (n == 0 || n > 253 || s[0] == '.' || s[0] == '-') return 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '-'))
            return 0;
    }
    return 1;
}

/* One subjectAltName entry parsed from the comma-separated config string. */
typedef struct {
    unsigned char tag; /* 0x82 dNSName, 0x87 iPAddress */
    unsigned char data[256];
    size_t len;
} san_t;

/* Parse "a.example,10.0.0.1,::1" into entries (after the optional first). */
static int san_parse(const char *first, const char *list, san_t *out, size_t *n_out)
{
    size_t n = 0;
    if (first != NULL) {
        size_t l = strlen(first);
        if (!dns_ok(first, l))
            return plait_fail(PLAIT_EINVAL, "pki: server_name '%s' is not a DNS name", first);
        out[n].tag = 0x82;
        memcpy(out[n].data, first, l);
        out[n++].len = l;
    }
    const char *p = list != NULL ? list : "";
    while (*p) {
        const char *e = strchr(p, ',');
        size_t l = e ? (size_t)(e - p) : strlen(p);
        while (l > 0 && *p == ' ')
            p++, l--;
        while (l > 0 && p[l - 1] == ' ')
            l--;
        if (l > 0) {
            char tmp[256];
            if (l >= sizeof(tmp) || n >= SAN_MAX)
                return plait_fail(PLAIT_EINVAL,
                                  "pki: server_alt_names: too many or too long entries");
            memcpy(tmp, p, l);
            tmp[l] = '\0';
            san_t *s = &out[n];
            if (inet_pton(AF_INET, tmp, s->data) == 1) {
                s->tag = 0x87;
                s->len = 4;
            } else if (inet_pton(AF_INET6, tmp, s->data) == 1) {
                s->tag = 0x87;
                s->len = 16;
            } else if (dns_ok(tmp, l)) {
                s->tag = 0x82;
                memcpy(s->data, tmp, l);
                s->len = l;
            } else {
                return plait_fail(PLAIT_EINVAL,
                                  "pki: server_alt_names: '%s' is neither a DNS name nor an IP",
                                  tmp);
            }
            n++;
        }
        if (!e) break;
        p = e + 1;
    }
    *n_out = n;
    return 0;
}

void plait_pki_config_default(plait_pki_config_t *cfg)
{
    cfg->org = "plait";
    cfg->ca_name = "plait deployment CA";
    cfg->server_name = "plait-aggregator";
    cfg->server_alt_names = "localhost,127.0.0.1";
    cfg->ca_days = 3650;
    cfg->server_days = 825;
    cfg->device_days = 365;
    cfg->now = 0;
}

int plait_pki_config_validate(const plait_pki_config_t *cfg)
{
    if (cfg == NULL) return plait_fail(PLAIT_EINVAL, "pki: NULL config");
    if (!name_ok(cfg->org, 1))
        return plait_fail(PLAIT_EINVAL, "pki: org must be 1..64 of [A-Za-z0-9 ._-]");
    if (!name_ok(cfg->ca_name, 1))
        return plait_fail(PLAIT_EINVAL, "pki: ca_name must be 1..64 of [A-Za-z0-9 ._-]");
    if (!name_ok(cfg->server_name, 0) || !dns_ok(cfg->server_name, strlen(cfg->server_name)))
        return plait_fail(PLAIT_EINVAL, "pki: server_name must be a DNS name of 1..64 characters");
    if (cfg->ca_days < 1 || cfg->ca_days > 36500 || cfg->server_days < 1 ||
        cfg->server_days > 36500 || cfg->device_days < 1 || cfg->device_days > 36500)
        return plait_fail(PLAIT_EINVAL, "pki: validity days must be 1..36500");
    if (cfg->now < 0) return plait_fail(PLAIT_EINVAL, "pki: now must be >= 0");
    san_t san[SAN_MAX];
    size_t n;
    return san_parse(cfg->server_name, cfg->server_alt_names, san, &n);
}

void plait_pki_free_pem(char *pem)
{
    if (pem == NULL) return;
    mbedtls_platform_zeroize(pem, strlen(pem));
    free(pem);
}

/* Copy a NUL-terminated buffer out, wiping the source. */
static int pem_out(unsigned char *buf, size_t cap, char **out)
{
    size_t n = strnlen((const char *)buf, cap);
    char *s = malloc(n + 1);
    if (s != NULL) {
        memcpy(s, buf, n);
        s[n] = '\0';
    }
    mbedtls_platform_zeroize(buf, cap);
    if (s == NULL) return plait_fail(PLAIT_ENOMEM, "pki: %zu bytes", n + 1);
    *out = s;
    return 0;
}

/* PEM input must include its NUL in the length mbedTLS sees; DER must not. */
static int input_view(const uint8_t *buf, size_t len, size_t max, uint8_t **tmp,
                      const uint8_t **use, size_t *use_len)
{
    *tmp = NULL;
    if (buf == NULL || len == 0) return plait_fail(PLAIT_EINVAL, "pki: empty input");
    if (len > max)
        return plait_fail(PLAIT_ETOOBIG, "pki: input of %zu bytes exceeds %zu", len, max);
    static const char begin[] = "-----BEGIN";
    int is_pem = len >= sizeof(begin) - 1 && memcmp(buf, begin, sizeof(begin) - 1) == 0;
    if (!is_pem || buf[len - 1] == '\0') {
        *use = buf;
        *use_len = len;
        return 0;
    }
    *tmp = malloc(len + 1);
    if (*tmp == NULL) return plait_fail(PLAIT_ENOMEM, "pki: %zu bytes", len + 1);
    memcpy(*tmp, buf, len);
    (*tmp)[len] = '\0';
    *use = *tmp;
    *use_len = len + 1;
    return 0;
}

static int load_crt(mbedtls_x509_crt *crt, const char *pem, const char *what)
{
    if (pem == NULL) return plait_fail(PLAIT_EINVAL, "pki: %s: NULL", what);
    int mrc = mbedtls_x509_crt_parse(crt, (const unsigned char *)pem, strlen(pem) + 1);
    if (mrc != 0)
        return plait_fail(PLAIT_EPROTO, "pki: %s: not a parseable certificate (mbedTLS -0x%04x)",
                          what, (unsigned)-mrc);
    return 0;
}

static int p256_key(const mbedtls_pk_context *pk)
{
    return mbedtls_pk_get_type(pk) == MBEDTLS_PK_ECKEY &&
           mbedtls_pk_ec(*pk)->grp.id == MBEDTLS_ECP_DP_SECP256R1;
}

static int load_key(mbedtls_pk_context *pk, const char *pem, const char *what)
{
    if (pem == NULL) return plait_fail(PLAIT_EINVAL, "pki: %s: NULL", what);
    int mrc = mbedtls_pk_parse_key(pk, (const unsigned char *)pem, strlen(pem) + 1, NULL, 0);
    if (mrc != 0)
        return plait_fail(PLAIT_EPROTO, "pki: %s: not a parseable private key (mbedTLS -0x%04x)",
                          what, (unsigned)-mrc);
    if (!p256_key(pk)) return plait_fail(PLAIT_EINVAL, "pki: %s: not an ECDSA P-256 key", what);
    return 0;
}

static int gen_key(mbedtls_pk_context *pk, plait_drbg_t *rng)
{
    int mrc = mbedtls_pk_setup(pk, mbedtls_pk_info_from_type(MBEDTLS_PK_ECKEY));
    if (mrc != 0) return mbed_fail(PLAIT_ENOMEM, mrc, "pki: key setup");
    mrc = mbedtls_ecp_gen_key(MBEDTLS_ECP_DP_SECP256R1, mbedtls_pk_ec(*pk), plait__pki_rng, rng);
    if (mrc != 0) return mbed_fail(PLAIT_EIO, mrc, "pki: key generation");
    return 0;
}

static int key_pem(mbedtls_pk_context *pk, char **out)
{
    unsigned char buf[PEM_BUF];
    int mrc = mbedtls_pk_write_key_pem(pk, buf, sizeof(buf));
    if (mrc != 0) {
        mbedtls_platform_zeroize(buf, sizeof(buf));
        return mbed_fail(PLAIT_EINTERNAL, mrc, "pki: writing key PEM");
    }
    return pem_out(buf, sizeof(buf), out);
}

int plait_pki_key_generate(plait_drbg_t *rng, char **key_pem_out)
{
    if (key_pem_out == NULL) return plait_fail(PLAIT_EINVAL, "pki: NULL output");
    *key_pem_out = NULL;
    rng_t r;
    mbedtls_pk_context pk;
    mbedtls_pk_init(&pk);
    int rc = rng_begin(&r, rng);
    if (rc == 0) rc = gen_key(&pk, r.use);
    if (rc == 0) rc = key_pem(&pk, key_pem_out);
    mbedtls_pk_free(&pk);
    rng_end(&r);
    return rc;
}

/* "YYYYMMDDhhmmss" (UTC), the form mbedtls_x509write_crt_set_validity() takes. */
static void fmt_time(int64_t t, char out[15])
{
    time_t tt = (time_t)t;
    struct tm tm;
    gmtime_r(&tt, &tm);
    strftime(out, 15, "%Y%m%d%H%M%S", &tm);
}

static int64_t x509_time_unix(const mbedtls_x509_time *t)
{
    struct tm tm;
    memset(&tm, 0, sizeof(tm));
    tm.tm_year = t->year - 1900;
    tm.tm_mon = t->mon - 1;
    tm.tm_mday = t->day;
    tm.tm_hour = t->hour;
    tm.tm_min = t->min;
    tm.tm_sec = t->sec;
    return (int64_t)timegm(&tm);
}

enum { KIND_CA, KIND_SERVER, KIND_DEVICE };

typedef struct {
    int kind;
    const char *cn, *org;
    mbedtls_pk_context *subject_key;
    mbedtls_pk_context *issuer_key;
    const mbedtls_x509_crt *issuer; /* NULL: self-signed */
    const plait_pki_config_t *cfg;
    uint32_t days;
} issue_t;

/* DER of ExtKeyUsageSyntax with one KeyPurposeId. */
static size_t eku_der(const char *oid, size_t oid_len, unsigned char *out)
{
    out[0] = MBEDTLS_ASN1_CONSTRUCTED | MBEDTLS_ASN1_SEQUENCE;
    out[1] = (unsigned char)(oid_len + 2);
    out[2] = MBEDTLS_ASN1_OID;
    out[3] = (unsigned char)oid_len;
    memcpy(out + 4, oid, oid_len);
    return oid_len + 4;
}

/* DER of GeneralNames for the server's subjectAltName; written backwards. */
static int san_der(const plait_pki_config_t *cfg, unsigned char *buf, size_t cap,
                   unsigned char **start, size_t *len)
{
    san_t san[SAN_MAX];
    size_t n = 0;
    int rc = san_parse(cfg->server_name, cfg->server_alt_names, san, &n);
    if (rc != 0) return rc;
    unsigned char *p = buf + cap;
    size_t total = 0;
    int w;
    for (size_t i = n; i-- > 0;) {
        if ((w = mbedtls_asn1_write_raw_buffer(&p, buf, san[i].data, san[i].len)) < 0) goto fail;
        total += (size_t)w;
        if ((w = mbedtls_asn1_write_len(&p, buf, san[i].len)) < 0) goto fail;
        total += (size_t)w;
        if ((w = mbedtls_asn1_write_tag(&p, buf, san[i].tag)) < 0) goto fail;
        total += (size_t)w;
    }
    if ((w = mbedtls_asn1_write_len(&p, buf, total)) < 0) goto fail;
    total += (size_t)w;
    if ((w = mbedtls_asn1_write_tag(&p, buf, MBEDTLS_ASN1_CONSTRUCTED | MBEDTLS_ASN1_SEQUENCE)) < 0)
        goto fail;
    total += (size_t)w;
    *start = p;
    *len = total;
    return 0;
fail:
    return mbed_fail(PLAIT_EINVAL, w, "pki: subjectAltName too large");
}

/* The issuer's subject as a string mbedtls_x509_string_to_names() parses back
 * to the same DER: dn_gets separates attributes with ", "; our names contain
 * no ',' (config validation), so dropping the space after each ',' is exact. */
static int issuer_name(const mbedtls_x509_crt *ca, char *out, size_t cap)
{
    char tmp[512];
    int w = mbedtls_x509_dn_gets(tmp, sizeof(tmp), &ca->subject);
    if (w < 0) return mbed_fail(PLAIT_EINVAL, w, "pki: CA subject too long");
    size_t j = 0;
    for (size_t i = 0; tmp[i] != '\0' && j + 1 < cap; i++) {
        if (tmp[i] == ' ' && i > 0 && tmp[i - 1] == ',') continue;
        out[j++] = tmp[i];
    }
    out[j] = '\0';
    return 0;
}

static int issue(const issue_t *q, plait_drbg_t *rng, char **crt_pem, plait_pki_cert_info_t *info)
{
    int rc = PLAIT_EINTERNAL, mrc = 0;
    mbedtls_x509write_cert w;
    mbedtls_mpi serial;
    unsigned char buf[PEM_BUF];
    mbedtls_x509write_crt_init(&w);
    mbedtls_mpi_init(&serial);

    char subject[256], issuer[512], nb[15], na[15];
    snprintf(subject, sizeof(subject), "CN=%s,O=%s", q->cn, q->org);
    if (q->issuer == NULL)
        snprintf(issuer, sizeof(issuer), "%s", subject);
    else if ((rc = issuer_name(q->issuer, issuer, sizeof(issuer))) != 0)
        goto exit;

    int64_t now = q->cfg->now != 0 ? q->cfg->now : (int64_t)time(NULL);
    fmt_time(now - SKEW_S, nb);
    fmt_time(now + (int64_t)q->days * 86400, na);

    /* 16 random bytes, top bit clear (positive INTEGER) and next bit set (no
     * leading zero byte), so every serial is exactly 16 bytes long. */
    uint8_t sb[16];
    if ((rc = plait_drbg_random(rng, sb, sizeof(sb))) != 0) goto exit;
    sb[0] = (uint8_t)((sb[0] & 0x7f) | 0x40);
    rc = PLAIT_EINTERNAL;
    if ((mrc = mbedtls_mpi_read_binary(&serial, sb, sizeof(sb))) != 0) goto fail;

    mbedtls_x509write_crt_set_version(&w, MBEDTLS_X509_CRT_VERSION_3);
    mbedtls_x509write_crt_set_md_alg(&w, MBEDTLS_MD_SHA256);
    mbedtls_x509write_crt_set_subject_key(&w, q->subject_key);
    mbedtls_x509write_crt_set_issuer_key(&w, q->issuer_key);
    if ((mrc = mbedtls_x509write_crt_set_serial(&w, &serial)) != 0) goto fail;
    if ((mrc = mbedtls_x509write_crt_set_validity(&w, nb, na)) != 0) goto fail;
    if ((mrc = mbedtls_x509write_crt_set_subject_name(&w, subject)) != 0) goto fail;
    if ((mrc = mbedtls_x509write_crt_set_issuer_name(&w, issuer)) != 0) goto fail;
    if ((mrc = mbedtls_x509write_crt_set_subject_key_identifier(&w)) != 0) goto fail;
    if ((mrc = mbedtls_x509write_crt_set_authority_key_identifier(&w)) != 0) goto fail;
    if (q->kind == KIND_CA) {
        if ((mrc = mbedtls_x509write_crt_set_basic_constraints(&w, 1, 0)) != 0) goto fail;
        if ((mrc = mbedtls_x509write_crt_set_key_usage(&w, MBEDTLS_X509_KU_KEY_CERT_SIGN |
                                                               MBEDTLS_X509_KU_CRL_SIGN)) != 0)
            goto fail;
    } else {
        unsigned char eku[32];
        size_t eku_len =
            q->kind == KIND_SERVER
                ? eku_der(MBEDTLS_OID_SERVER_AUTH, MBEDTLS_OID_SIZE(MBEDTLS_OID_SERVER_AUTH), eku)
                : eku_der(MBEDTLS_OID_CLIENT_AUTH, MBEDTLS_OID_SIZE(MBEDTLS_OID_CLIENT_AUTH), eku);
        if ((mrc = mbedtls_x509write_crt_set_basic_constraints(&w, 0, -1)) != 0) goto fail;
        if ((mrc = mbedtls_x509write_crt_set_key_usage(&w, MBEDTLS_X509_KU_DIGITAL_SIGNATURE)) != 0)
            goto fail;
        if ((mrc = mbedtls_x509write_crt_set_extension(
                 &w, MBEDTLS_OID_EXTENDED_KEY_USAGE,
                 MBEDTLS_OID_SIZE(MBEDTLS_OID_EXTENDED_KEY_USAGE), 0, eku, eku_len)) != 0)
            goto fail;
        if (q->kind == KIND_SERVER) {
            unsigned char san[2048], *p = NULL;
            size_t san_len = 0;
            if ((rc = san_der(q->cfg, san, sizeof(san), &p, &san_len)) != 0) goto exit;
            rc = PLAIT_EINTERNAL;
            if ((mrc = mbedtls_x509write_crt_set_extension(
                     &w, MBEDTLS_OID_SUBJECT_ALT_NAME,
                     MBEDTLS_OID_SIZE(MBEDTLS_OID_SUBJECT_ALT_NAME), 0, p, san_len)) != 0)
                goto fail;
        }
    }
    if ((mrc = mbedtls_x509write_crt_pem(&w, buf, sizeof(buf), plait__pki_rng, rng)) != 0)
        goto fail;
    if ((rc = pem_out(buf, sizeof(buf), crt_pem)) != 0) goto exit;
    if (info != NULL) {
        rc = plait_pki_cert_info((const uint8_t *)*crt_pem, strlen(*crt_pem), info);
        if (rc != 0) {
            plait_pki_free_pem(*crt_pem);
            *crt_pem = NULL;
        }
    }
    goto exit;
fail:
    rc = mbed_fail(PLAIT_EINTERNAL, mrc, "pki: writing certificate");
exit:
    mbedtls_platform_zeroize(buf, sizeof(buf));
    mbedtls_mpi_free(&serial);
    mbedtls_x509write_crt_free(&w);
    return rc;
}

int plait_pki_ca_create(const plait_pki_config_t *cfg, plait_drbg_t *rng, char **ca_crt_pem,
                        char **ca_key_pem)
{
    if (ca_crt_pem == NULL || ca_key_pem == NULL)
        return plait_fail(PLAIT_EINVAL, "pki: NULL output");
    *ca_crt_pem = *ca_key_pem = NULL;
    int rc = plait_pki_config_validate(cfg);
    if (rc != 0) return rc;
    rng_t r;
    mbedtls_pk_context pk;
    mbedtls_pk_init(&pk);
    if ((rc = rng_begin(&r, rng)) != 0) goto exit;
    if ((rc = gen_key(&pk, r.use)) != 0) goto exit;
    issue_t q = {KIND_CA, cfg->ca_name, cfg->org, &pk, &pk, NULL, cfg, cfg->ca_days};
    if ((rc = issue(&q, r.use, ca_crt_pem, NULL)) != 0) goto exit;
    if ((rc = key_pem(&pk, ca_key_pem)) != 0) {
        plait_pki_free_pem(*ca_crt_pem);
        *ca_crt_pem = NULL;
    }
exit:
    mbedtls_pk_free(&pk);
    rng_end(&r);
    return rc;
}

/* Load the CA pair and check that the key is the certificate's. */
static int load_ca(mbedtls_x509_crt *ca, mbedtls_pk_context *ca_key, const char *crt_pem,
                   const char *key_pem)
{
    int rc = load_crt(ca, crt_pem, "CA certificate");
    if (rc == 0) rc = load_key(ca_key, key_pem, "CA key");
    if (rc != 0) return rc;
    if (!ca->ca_istrue)
        return plait_fail(PLAIT_EINVAL, "pki: the CA certificate is not a CA (basicConstraints)");
    int mrc = mbedtls_pk_check_pair(&ca->pk, ca_key);
    if (mrc != 0)
        return mbed_fail(PLAIT_EMISMATCH, mrc, "pki: CA key does not match the CA certificate");
    return 0;
}

/* Issue a server or device certificate for subject_key (generated when NULL). */
static int issue_leaf(int kind, const plait_pki_config_t *cfg, const char *ca_crt_pem,
                      const char *ca_key_pem, const char *cn, mbedtls_pk_context *subject_key,
                      plait_drbg_t *rng, char **crt_pem, char **key_pem_out,
                      plait_pki_cert_info_t *info)
{
    int rc = plait_pki_config_validate(cfg);
    if (rc != 0) return rc;
    rng_t r;
    mbedtls_x509_crt ca;
    mbedtls_pk_context ca_key, key;
    mbedtls_x509_crt_init(&ca);
    mbedtls_pk_init(&ca_key);
    mbedtls_pk_init(&key);
    if ((rc = rng_begin(&r, rng)) != 0) goto exit;
    if ((rc = load_ca(&ca, &ca_key, ca_crt_pem, ca_key_pem)) != 0) goto exit;
    if (subject_key == NULL) {
        if ((rc = gen_key(&key, r.use)) != 0) goto exit;
        subject_key = &key;
    }
    issue_t q = {kind,    cn,  cfg->org, subject_key,
                 &ca_key, &ca, cfg,      kind == KIND_SERVER ? cfg->server_days : cfg->device_days};
    if ((rc = issue(&q, r.use, crt_pem, info)) != 0) goto exit;
    if (key_pem_out != NULL && (rc = key_pem(&key, key_pem_out)) != 0) {
        plait_pki_free_pem(*crt_pem);
        *crt_pem = NULL;
    }
exit:
    mbedtls_pk_free(&key);
    mbedtls_pk_free(&ca_key);
    mbedtls_x509_crt_free(&ca);
    rng_end(&r);
    return rc;
}

int plait_pki_server_issue(const plait_pki_config_t *cfg, const char *ca_crt_pem,
                           const char *ca_key_pem, plait_drbg_t *rng, char **crt_pem,
                           char **key_pem_out)
{
    if (crt_pem == NULL || key_pem_out == NULL) return plait_fail(PLAIT_EINVAL, "pki: NULL output");
    *crt_pem = *key_pem_out = NULL;
    if (cfg == NULL) return plait_fail(PLAIT_EINVAL, "pki: NULL config");
    return issue_leaf(KIND_SERVER, cfg, ca_crt_pem, ca_key_pem, cfg->server_name, NULL, rng,
                      crt_pem, key_pem_out, NULL);
}

int plait_pki_device_issue(const plait_pki_config_t *cfg, const char *ca_crt_pem,
                           const char *ca_key_pem, const char *device_id, plait_drbg_t *rng,
                           char **crt_pem, char **key_pem_out, plait_pki_cert_info_t *info)
{
    if (crt_pem == NULL || key_pem_out == NULL) return plait_fail(PLAIT_EINVAL, "pki: NULL output");
    *crt_pem = *key_pem_out = NULL;
    if (!plait_pki_device_id_valid(device_id))
        return plait_fail(PLAIT_EINVAL, "pki: device id must be 1..%d of [A-Za-z0-9._-]",
                          PLAIT_PKI_ID_MAX);
    return issue_leaf(KIND_DEVICE, cfg, ca_crt_pem, ca_key_pem, device_id, NULL, rng, crt_pem,
                      key_pem_out, info);
}

int plait_pki_csr_create(const char *device_id, const char *org, const char *key_pem_in,
                         plait_drbg_t *rng, char **csr_pem)
{
    if (csr_pem == NULL) return plait_fail(PLAIT_EINVAL, "pki: NULL output");
    *csr_pem = NULL;
    if (org == NULL) org = "plait";
    if (!plait_pki_device_id_valid(device_id) || !name_ok(org, 1))
        return plait_fail(PLAIT_EINVAL, "pki: CSR: invalid device id or org");
    int rc, mrc;
    rng_t r;
    mbedtls_pk_context pk;
    mbedtls_x509write_csr w;
    unsigned char buf[PEM_BUF];
    mbedtls_pk_init(&pk);
    mbedtls_x509write_csr_init(&w);
    if ((rc = rng_begin(&r, rng)) != 0) goto exit;
    if ((rc = load_key(&pk, key_pem_in, "device key")) != 0) goto exit;
    char subject[160];
    snprintf(subject, sizeof(subject), "CN=%s,O=%s", device_id, org);
    mbedtls_x509write_csr_set_md_alg(&w, MBEDTLS_MD_SHA256);
    mbedtls_x509write_csr_set_key(&w, &pk);
    if ((mrc = mbedtls_x509write_csr_set_subject_name(&w, subject)) != 0 ||
        (mrc = mbedtls_x509write_csr_pem(&w, buf, sizeof(buf), plait__pki_rng, r.use)) != 0) {
        rc = mbed_fail(PLAIT_EINTERNAL, mrc, "pki: writing CSR");
        goto exit;
    }
    rc = pem_out(buf, sizeof(buf), csr_pem);
exit:
    mbedtls_platform_zeroize(buf, sizeof(buf));
    mbedtls_x509write_csr_free(&w);
    mbedtls_pk_free(&pk);
    rng_end(&r);
    return rc;
}

/* Copy the subject CN out of a parsed name; "" if absent or not a plain string. */
static void name_cn(const mbedtls_x509_name *name, char *out, size_t cap)
{
    out[0] = '\0';
    for (; name != NULL; name = name->next) {
        if (name->oid.p == NULL || MBEDTLS_OID_CMP(MBEDTLS_OID_AT_CN, &name->oid) != 0) continue;
        if (name->val.len == 0 || name->val.len >= cap ||
            memchr(name->val.p, 0, name->val.len) != NULL)
            return;
        memcpy(out, name->val.p, name->val.len);
        out[name->val.len] = '\0';
        return;
    }
}

int plait_pki_issue_from_csr(const plait_pki_config_t *cfg, const char *ca_crt_pem,
                             const char *ca_key_pem, const uint8_t *csr_buf, size_t csr_len,
                             const char *device_id, plait_drbg_t *rng, char **crt_pem,
                             plait_pki_cert_info_t *info)
{
    if (crt_pem == NULL) return plait_fail(PLAIT_EINVAL, "pki: NULL output");
    *crt_pem = NULL;
    uint8_t *tmp = NULL;
    const uint8_t *use = NULL;
    size_t use_len = 0;
    int rc = input_view(csr_buf, csr_len, CSR_MAX, &tmp, &use, &use_len);
    if (rc != 0) return rc;
    mbedtls_x509_csr csr;
    mbedtls_x509_csr_init(&csr);
    int mrc = mbedtls_x509_csr_parse(&csr, use, use_len);
    if (mrc != 0) {
        rc = mbed_fail(PLAIT_EPROTO, mrc, "pki: CSR is not a parseable PKCS#10 request");
        goto exit;
    }
    /* Proof of possession: the request must be signed by the key it carries. */
    const mbedtls_md_info_t *md = mbedtls_md_info_from_type(csr.sig_md);
    if (md == NULL || (csr.sig_md != MBEDTLS_MD_SHA256 && csr.sig_md != MBEDTLS_MD_SHA384 &&
                       csr.sig_md != MBEDTLS_MD_SHA512)) {
        rc = plait_fail(PLAIT_EAUTH, "pki: CSR signature uses a disallowed hash");
        goto exit;
    }
    unsigned char hash[MBEDTLS_MD_MAX_SIZE];
    if ((mrc = mbedtls_md(md, csr.cri.p, csr.cri.len, hash)) != 0) {
        rc = mbed_fail(PLAIT_EINTERNAL, mrc, "pki: hashing CSR");
        goto exit;
    }
    mrc = mbedtls_pk_verify_ext(csr.sig_pk, csr.sig_opts, &csr.pk, csr.sig_md, hash,
                                mbedtls_md_get_size(md), csr.sig.p, csr.sig.len);
    if (mrc != 0) {
        rc = mbed_fail(PLAIT_EAUTH, mrc,
                       "pki: CSR self-signature does not verify (request altered or key not held)");
        goto exit;
    }
    if (!p256_key(&csr.pk)) {
        rc = plait_fail(PLAIT_EINVAL, "pki: CSR key is not ECDSA P-256");
        goto exit;
    }
    char cn[PLAIT_PKI_ID_MAX + 1];
    name_cn(&csr.subject, cn, sizeof(cn));
    const char *id = device_id != NULL ? device_id : cn;
    if (!plait_pki_device_id_valid(id)) {
        rc = plait_fail(PLAIT_EINVAL, "pki: %s device id is missing or not 1..%d of [A-Za-z0-9._-]",
                        device_id != NULL ? "given" : "CSR's", PLAIT_PKI_ID_MAX);
        goto exit;
    }
    rc =
        issue_leaf(KIND_DEVICE, cfg, ca_crt_pem, ca_key_pem, id, &csr.pk, rng, crt_pem, NULL, info);
exit:
    mbedtls_x509_csr_free(&csr);
    free(tmp);
    return rc;
}

static void crt_info(const mbedtls_x509_crt *crt, plait_pki_cert_info_t *info)
{
    memset(info, 0, sizeof(*info));
    name_cn(&crt->subject, info->device_id, sizeof(info->device_id));
    const unsigned char *s = crt->serial.p;
    size_t n = crt->serial.len;
    while (n > 1 && *s == 0)
        s++, n--;
    if (n > PLAIT_PKI_SERIAL_HEX_MAX / 2)
        n = PLAIT_PKI_SERIAL_HEX_MAX / 2; /* parser caps at 32; RFC at 20 */
    plait_hex(s, n, info->serial_hex);
    plait_sha256(crt->raw.p, crt->raw.len, info->fingerprint);
    plait_hex(info->fingerprint, 32, info->fingerprint_hex);
    info->not_before = x509_time_unix(&crt->valid_from);
    info->not_after = x509_time_unix(&crt->valid_to);
    info->is_ca = crt->ca_istrue;
}

int plait_pki_cert_info(const uint8_t *buf, size_t len, plait_pki_cert_info_t *info)
{
    if (info == NULL) return plait_fail(PLAIT_EINVAL, "pki: NULL output");
    uint8_t *tmp = NULL;
    const uint8_t *use = NULL;
    size_t use_len = 0;
    int rc = input_view(buf, len, FILE_MAX, &tmp, &use, &use_len);
    if (rc != 0) return rc;
    mbedtls_x509_crt crt;
    mbedtls_x509_crt_init(&crt);
    int mrc = mbedtls_x509_crt_parse(&crt, use, use_len);
    if (mrc != 0)
        rc = mbed_fail(PLAIT_EPROTO, mrc, "pki: not a parseable certificate");
    else
        crt_info(&crt, info);
    mbedtls_x509_crt_free(&crt);
    free(tmp);
    return rc;
}

int plait_pki_verify(const char *ca_crt_pem, const char *crt_pem, int want_client,
                     const char **reason)
{
    static const char *dummy;
    if (reason == NULL) reason = &dummy;
    *reason = NULL;
    mbedtls_x509_crt ca, crt;
    mbedtls_x509_crt_init(&ca);
    mbedtls_x509_crt_init(&crt);
    uint32_t flags = 0;
    int rc = load_crt(&ca, ca_crt_pem, "CA certificate");
    if (rc == 0) rc = load_crt(&crt, crt_pem, "certificate");
    if (rc != 0) goto exit;
    int mrc =
        mbedtls_x509_crt_verify_with_profile(&crt, &ca, NULL, &profile, NULL, &flags, NULL, NULL);
    if (mbedtls_x509_crt_check_key_usage(&crt, MBEDTLS_X509_KU_DIGITAL_SIGNATURE) != 0)
        flags |= MBEDTLS_X509_BADCERT_KEY_USAGE;
    const char *oid = want_client ? MBEDTLS_OID_CLIENT_AUTH : MBEDTLS_OID_SERVER_AUTH;
    size_t oid_len = want_client ? MBEDTLS_OID_SIZE(MBEDTLS_OID_CLIENT_AUTH)
                                 : MBEDTLS_OID_SIZE(MBEDTLS_OID_SERVER_AUTH);
    if (mbedtls_x509_crt_check_extended_key_usage(&crt, oid, oid_len) != 0)
        flags |= MBEDTLS_X509_BADCERT_EXT_KEY_USAGE;
    if (mrc != 0 || flags != 0) {
        *reason = plait__pki_flags_reason(flags);
        rc = plait_fail(PLAIT_EAUTH, "pki: %s (flags 0x%05x, mbedTLS -0x%04x)", *reason,
                        (unsigned)flags, (unsigned)-mrc);
    }
exit:
    mbedtls_x509_crt_free(&crt);
    mbedtls_x509_crt_free(&ca);
    return rc;
}

/* ---- enrollment records (offline CA) ------------------------------------ */

#define RECORD_MAGIC "plait-enrollment 1\n"

/* "plait-enrollment 1\nlabel L\nid I\n" into out; 0 or PLAIT_EINVAL. */
static int record_head(const char *label, const char *id, char *out, size_t cap)
{
    if (!plait_pki_device_id_valid(label) || !plait_pki_device_id_valid(id))
        return plait_fail(PLAIT_EINVAL, "pki: record: invalid label or id");
    int n = snprintf(out, cap, RECORD_MAGIC "label %s\nid %s\n", label, id);
    return n > 0 && (size_t)n < cap ? 0 : plait_fail(PLAIT_EINVAL, "pki: record: head too long");
}

/* SHA-256 of head || crt_pem: what the CA signs. */
static void record_hash(const char *head, const char *crt_pem, size_t crt_len, uint8_t h[32])
{
    plait_sha256_t c;
    plait_sha256_init(&c);
    plait_sha256_update(&c, (const uint8_t *)head, strlen(head));
    plait_sha256_update(&c, (const uint8_t *)crt_pem, crt_len);
    plait_sha256_finish(&c, h);
}

int plait_pki_record_create(const char *ca_key_pem, const char *label, const char *id,
                            const char *crt_pem, char **record)
{
    if (record == NULL || crt_pem == NULL) return plait_fail(PLAIT_EINVAL, "pki: NULL argument");
    *record = NULL;
    char head[256];
    int rc = record_head(label, id, head, sizeof(head));
    if (rc != 0) return rc;
    plait_pki_cert_info_t info;
    if ((rc = plait_pki_cert_info((const uint8_t *)crt_pem, strlen(crt_pem) + 1, &info)) != 0) return rc;
    if (strcmp(info.device_id, id) != 0)
        return plait_fail(PLAIT_EINVAL, "pki: record: id is not the certificate's CN");
    mbedtls_pk_context pk;
    mbedtls_pk_init(&pk);
    rng_t r;
    unsigned char sig[MBEDTLS_PK_SIGNATURE_MAX_SIZE];
    size_t sig_len = 0;
    uint8_t h[32];
    if ((rc = rng_begin(&r, NULL)) != 0) goto exit;
    if ((rc = load_key(&pk, ca_key_pem, "CA key")) != 0) goto exit;
    record_hash(head, crt_pem, strlen(crt_pem), h);
    int mrc = mbedtls_pk_sign(&pk, MBEDTLS_MD_SHA256, h, sizeof(h), sig, &sig_len, plait__pki_rng, r.use);
    if (mrc != 0) {
        rc = mbed_fail(PLAIT_EINTERNAL, mrc, "pki: record: signing");
        goto exit;
    }
    size_t cap = strlen(head) + 6 + 2 * sig_len + 1 + strlen(crt_pem) + 1;
    char *out = malloc(cap);
    if (!out) {
        rc = plait_fail(PLAIT_ENOMEM, "pki: record");
        goto exit;
    }
    char hex[2 * MBEDTLS_PK_SIGNATURE_MAX_SIZE + 1];
    plait_hex(sig, sig_len, hex);
    snprintf(out, cap, "%ssig %s\n%s", head, hex, crt_pem);
    *record = out;
exit:
    mbedtls_pk_free(&pk);
    rng_end(&r);
    return rc;
}

/* The value of line "KEY VALUE\n" at *p (advanced past it) into out[cap]. */
static int record_line(const char **p, const char *end, const char *key, char *out, size_t cap)
{
    size_t k = strlen(key);
    const char *nl = memchr(*p, '\n', (size_t)(end - *p));
    if (!nl || (size_t)(nl - *p) <= k + 1 || memcmp(*p, key, k) != 0 || (*p)[k] != ' ')
        return plait_fail(PLAIT_EPROTO, "pki: record: missing line '%s'", key);
    size_t n = (size_t)(nl - *p) - k - 1;
    if (n >= cap) return plait_fail(PLAIT_EPROTO, "pki: record: '%s' too long", key);
    memcpy(out, *p + k + 1, n);
    out[n] = '\0';
    *p = nl + 1;
    return 0;
}

int plait_pki_record_verify(const char *ca_crt_pem, const char *record, size_t len, char *label, char *id,
                            plait_pki_cert_info_t *info_out)
{
    if (record == NULL || label == NULL || id == NULL || ca_crt_pem == NULL)
        return plait_fail(PLAIT_EINVAL, "pki: NULL argument");
    label[0] = id[0] = '\0';
    if (len > 0 && record[len - 1] == '\0') len--;
    if (len > PLAIT_PKI_RECORD_MAX) return plait_fail(PLAIT_ETOOBIG, "pki: record: above %d bytes", PLAIT_PKI_RECORD_MAX);
    if (memchr(record, '\0', len) != NULL) return plait_fail(PLAIT_EPROTO, "pki: record: NUL byte");
    const char *p = record, *end = record + len;
    size_t m = strlen(RECORD_MAGIC);
    if (len < m || memcmp(p, RECORD_MAGIC, m) != 0) return plait_fail(PLAIT_EPROTO, "pki: record: not a plait enrollment record");
    p += m;
    char lab[PLAIT_PKI_ID_MAX + 1], dev[PLAIT_PKI_ID_MAX + 1], hex[2 * MBEDTLS_PK_SIGNATURE_MAX_SIZE + 1];
    int rc;
    if ((rc = record_line(&p, end, "label", lab, sizeof(lab))) != 0 ||
        (rc = record_line(&p, end, "id", dev, sizeof(dev))) != 0 ||
        (rc = record_line(&p, end, "sig", hex, sizeof(hex))) != 0)
        return rc;
    char head[256];
    if (record_head(lab, dev, head, sizeof(head)) != 0) return plait_fail(PLAIT_EPROTO, "pki: record: invalid label or id");
    size_t hl = strlen(hex);
    unsigned char sig[MBEDTLS_PK_SIGNATURE_MAX_SIZE];
    if (hl == 0 || hl % 2 != 0 || plait_unhex(hex, sig, hl / 2) != 0)
        return plait_fail(PLAIT_EPROTO, "pki: record: 'sig' is not hex");
    size_t crt_len = (size_t)(end - p);
    char *crt = malloc(crt_len + 1);
    if (!crt) return plait_fail(PLAIT_ENOMEM, "pki: record");
    memcpy(crt, p, crt_len);
    crt[crt_len] = '\0';
    mbedtls_x509_crt ca;
    mbedtls_x509_crt_init(&ca);
    plait_pki_cert_info_t info;
    if ((rc = load_crt(&ca, ca_crt_pem, "CA certificate")) != 0) goto exit;
    uint8_t h[32];
    record_hash(head, crt, crt_len, h);
    int mrc = mbedtls_pk_verify(&ca.pk, MBEDTLS_MD_SHA256, h, sizeof(h), sig, hl / 2);
    if (mrc != 0) {
        rc = plait_fail(PLAIT_EAUTH, "pki: record: the signature is not the CA's (mbedTLS -0x%04x)", (unsigned)-mrc);
        goto exit;
    }
    if ((rc = plait_pki_verify(ca_crt_pem, crt, 1, NULL)) != 0) goto exit;
    if ((rc = plait_pki_cert_info((const uint8_t *)crt, crt_len + 1, &info)) != 0) goto exit;
    if (strcmp(info.device_id, dev) != 0) {
        rc = plait_fail(PLAIT_EAUTH, "pki: record: id is not the certificate's CN");
        goto exit;
    }
    memcpy(label, lab, strlen(lab) + 1);
    memcpy(id, dev, strlen(dev) + 1);
    if (info_out) *info_out = info;
exit:
    mbedtls_x509_crt_free(&ca);
    free(crt);
    return rc;
}

/* ---- revocation list ---------------------------------------------------- */

void plait_pki_revlist_init(plait_pki_revlist_t *rl)
{
    memset(rl, 0, sizeof(*rl));
}

void plait_pki_revlist_free(plait_pki_revlist_t *rl)
{
    if (rl == NULL) return;
    free(rl->serials);
    free(rl->fprs);
    memset(rl, 0, sizeof(*rl));
}

/* Lower-case, leading zeros dropped; "" for invalid. */
static int serial_norm(const char *in, char out[PLAIT_PKI_SERIAL_HEX_MAX + 1])
{
    if (in == NULL) return PLAIT_EINVAL;
    while (*in == '0')
        in++;
    size_t n = strlen(in);
    if (n == 0 || n > PLAIT_PKI_SERIAL_HEX_MAX) return PLAIT_EINVAL;
    for (size_t i = 0; i < n; i++) {
        char c = in[i];
        if (c >= 'A' && c <= 'F') c = (char)(c - 'A' + 'a');
        if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return PLAIT_EINVAL;
        out[i] = c;
    }
    out[n] = '\0';
    return 0;
}

int plait_pki_revlist_add_serial(plait_pki_revlist_t *rl, const char *serial_hex)
{
    char norm[PLAIT_PKI_SERIAL_HEX_MAX + 1];
    if (rl == NULL || serial_norm(serial_hex, norm) != 0)
        return plait_fail(PLAIT_EINVAL, "pki: serial must be 1..%d hex digits",
                          PLAIT_PKI_SERIAL_HEX_MAX);
    if (rl->n_serials == rl->cap_serials) {
        size_t cap = rl->cap_serials ? 2 * rl->cap_serials : 16;
        void *p = realloc(rl->serials, cap * sizeof(*rl->serials));
        if (p == NULL) return plait_fail(PLAIT_ENOMEM, "pki: revocation list of %zu serials", cap);
        rl->serials = p;
        rl->cap_serials = cap;
    }
    memcpy(rl->serials[rl->n_serials++], norm, sizeof(norm));
    return 0;
}

int plait_pki_revlist_add_fingerprint(plait_pki_revlist_t *rl, const uint8_t fpr[32])
{
    if (rl == NULL || fpr == NULL) return plait_fail(PLAIT_EINVAL, "pki: NULL argument");
    if (rl->n_fprs == rl->cap_fprs) {
        size_t cap = rl->cap_fprs ? 2 * rl->cap_fprs : 16;
        void *p = realloc(rl->fprs, cap * sizeof(*rl->fprs));
        if (p == NULL)
            return plait_fail(PLAIT_ENOMEM, "pki: revocation list of %zu fingerprints", cap);
        rl->fprs = p;
        rl->cap_fprs = cap;
    }
    memcpy(rl->fprs[rl->n_fprs++], fpr, 32);
    return 0;
}

int plait_pki_revlist_contains(const plait_pki_revlist_t *rl, const plait_pki_cert_info_t *info)
{
    if (rl == NULL || info == NULL) return 0;
    char norm[PLAIT_PKI_SERIAL_HEX_MAX + 1];
    if (serial_norm(info->serial_hex, norm) == 0)
        for (size_t i = 0; i < rl->n_serials; i++)
            if (strcmp(rl->serials[i], norm) == 0) return 1;
    for (size_t i = 0; i < rl->n_fprs; i++)
        if (memcmp(rl->fprs[i], info->fingerprint, 32) == 0) return 1;
    return 0;
}

int plait_pki_revlist_check(void *ud, const plait_pki_cert_info_t *peer)
{
    return plait_pki_revlist_contains(ud, peer) ? PLAIT_EAUTH : 0;
}

int plait_pki_revlist_load(plait_pki_revlist_t *rl, const char *path)
{
    if (rl == NULL || path == NULL) return plait_fail(PLAIT_EINVAL, "pki: NULL argument");
    char *text = NULL;
    int rc = plait_pki_read_file(path, &text);
    if (rc == PLAIT_ENOENT) return 0;
    if (rc != 0) return rc;
    size_t lineno = 0;
    for (char *line = text, *next; line != NULL; line = next) {
        next = strchr(line, '\n');
        if (next != NULL) *next++ = '\0';
        lineno++;
        char *hash = strchr(line, '#');
        if (hash) *hash = '\0';
        char kind[16], val[80], extra[2];
        int k = sscanf(line, "%15s %79s %1s", kind, val, extra);
        if (k <= 0) continue;
        if (k == 2 && strcmp(kind, "serial") == 0) {
            if ((rc = plait_pki_revlist_add_serial(rl, val)) != 0) break;
        } else if (k == 2 && strcmp(kind, "sha256") == 0) {
            uint8_t f[32];
            if (strlen(val) != 64 || plait_unhex(val, f, 32) != 0) {
                rc = PLAIT_EPROTO;
                break;
            }
            if ((rc = plait_pki_revlist_add_fingerprint(rl, f)) != 0) break;
        } else {
            rc = PLAIT_EPROTO;
            break;
        }
    }
    free(text);
    if (rc == PLAIT_EINVAL || rc == PLAIT_EPROTO)
        return plait_fail(PLAIT_EPROTO,
                          "%s: line %zu: expected 'serial <hex>' or 'sha256 <64 hex>'", path,
                          lineno);
    return rc;
}

/* ---- files and the deployment directory --------------------------------- */

int plait_pki_write_file(const char *path, const char *text, int secret)
{
    if (path == NULL || text == NULL) return plait_fail(PLAIT_EINVAL, "pki: NULL argument");
    char tmp[4096];
    if (snprintf(tmp, sizeof(tmp), "%s.tmp.%ld", path, (long)getpid()) >= (int)sizeof(tmp))
        return plait_fail(PLAIT_EINVAL, "pki: path too long");
    (void)unlink(tmp);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, secret ? 0600 : 0644);
    if (fd < 0) return plait_fail(PLAIT_EIO, "%s: %s", tmp, strerror(errno));
    size_t n = strlen(text), off = 0;
    while (off < n) {
        ssize_t w = write(fd, text + off, n - off);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) {
            int e = errno;
            close(fd);
            unlink(tmp);
            return plait_fail(PLAIT_EIO, "%s: write: %s", tmp, strerror(e));
        }
        off += (size_t)w;
    }
    if (fsync(fd) != 0 || close(fd) != 0) {
        unlink(tmp);
        return plait_fail(PLAIT_EIO, "%s: fsync/close failed", tmp);
    }
    if (rename(tmp, path) != 0) {
        int e = errno;
        unlink(tmp);
        return plait_fail(PLAIT_EIO, "%s: rename: %s", path, strerror(e));
    }
    return 0;
}

int plait_pki_read_file(const char *path, char **text)
{
    if (path == NULL || text == NULL) return plait_fail(PLAIT_EINVAL, "pki: NULL argument");
    *text = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return plait_fail(errno == ENOENT ? PLAIT_ENOENT : PLAIT_EIO, "%s: %s", path,
                          strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return plait_fail(PLAIT_EIO, "%s: not a regular file", path);
    }
    if (st.st_size > FILE_MAX) {
        close(fd);
        return plait_fail(PLAIT_ETOOBIG, "%s: %lld bytes exceeds %d", path, (long long)st.st_size,
                          FILE_MAX);
    }
    size_t cap = (size_t)st.st_size, n = 0;
    char *buf = malloc(cap + 1);
    if (buf == NULL) {
        close(fd);
        return plait_fail(PLAIT_ENOMEM, "%s: %zu bytes", path, cap + 1);
    }
    while (n < cap) {
        ssize_t r = read(fd, buf + n, cap - n);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) break;
        n += (size_t)r;
    }
    close(fd);
    buf[n] = '\0';
    if (memchr(buf, 0, n) != NULL) {
        plait_zeroize(buf, n);
        free(buf);
        return plait_fail(PLAIT_EPROTO, "%s: contains NUL bytes", path);
    }
    *text = buf;
    return 0;
}

static int dir_path(char *out, size_t cap, const char *dir, const char *name)
{
    if (snprintf(out, cap, "%s/%s", dir, name) >= (int)cap)
        return plait_fail(PLAIT_EINVAL, "pki: path too long");
    return 0;
}

int plait_pki_init_deployment(const char *dir, const plait_pki_config_t *cfg)
{
    if (dir == NULL) return plait_fail(PLAIT_EINVAL, "pki: NULL directory");
    int rc = plait_pki_config_validate(cfg);
    if (rc != 0) return rc;
    char p[4096];
    if (mkdir(dir, 0700) != 0 && errno != EEXIST)
        return plait_fail(PLAIT_EIO, "%s: %s", dir, strerror(errno));
    if ((rc = dir_path(p, sizeof(p), dir, "ca.key")) != 0) return rc;
    if (access(p, F_OK) == 0)
        return plait_fail(PLAIT_EBUSY, "%s: a deployment CA already exists", dir);

    char *ca_crt = NULL, *ca_key = NULL, *srv_crt = NULL, *srv_key = NULL;
    plait_drbg_t d;
    plait_drbg_init(&d);
    static const uint8_t pers[] = "plait-pki-init";
    if ((rc = plait_drbg_seed(&d, pers, sizeof(pers) - 1)) != 0) goto exit;
    if ((rc = plait_pki_ca_create(cfg, &d, &ca_crt, &ca_key)) != 0) goto exit;
    if ((rc = plait_pki_server_issue(cfg, ca_crt, ca_key, &d, &srv_crt, &srv_key)) != 0) goto exit;
    /* Keys first: a crash half-way leaves ca.key, so a retry refuses to mint a
     * second CA over an existing one; the operator removes the directory. */
    if ((rc = dir_path(p, sizeof(p), dir, "ca.key")) != 0 ||
        (rc = plait_pki_write_file(p, ca_key, 1)) != 0)
        goto exit;
    if ((rc = dir_path(p, sizeof(p), dir, "ca.crt")) != 0 ||
        (rc = plait_pki_write_file(p, ca_crt, 0)) != 0)
        goto exit;
    if ((rc = dir_path(p, sizeof(p), dir, "server.key")) != 0 ||
        (rc = plait_pki_write_file(p, srv_key, 1)) != 0)
        goto exit;
    if ((rc = dir_path(p, sizeof(p), dir, "server.crt")) != 0 ||
        (rc = plait_pki_write_file(p, srv_crt, 0)) != 0)
        goto exit;
    if ((rc = dir_path(p, sizeof(p), dir, "revoked.txt")) != 0) goto exit;
    if (access(p, F_OK) != 0)
        rc = plait_pki_write_file(
            p, "# Revoked device certificates: 'serial <hex>' or 'sha256 <hex>' per line.\n", 0);
exit:
    plait_pki_free_pem(ca_crt);
    plait_pki_free_pem(ca_key);
    plait_pki_free_pem(srv_crt);
    plait_pki_free_pem(srv_key);
    plait_drbg_free(&d);
    return rc;
}

static int read_ca(const char *dir, char **crt, char **key)
{
    char p[4096];
    int rc = dir_path(p, sizeof(p), dir, "ca.crt");
    if (rc == 0) rc = plait_pki_read_file(p, crt);
    if (rc == 0) rc = dir_path(p, sizeof(p), dir, "ca.key");
    if (rc == 0) rc = plait_pki_read_file(p, key);
    return rc;
}

int plait_pki_enroll(const char *dir, const plait_pki_config_t *cfg, const char *device_id,
                     char **crt_pem, char **key_pem_out, plait_pki_cert_info_t *info)
{
    if (dir == NULL || crt_pem == NULL || key_pem_out == NULL)
        return plait_fail(PLAIT_EINVAL, "pki: NULL argument");
    *crt_pem = *key_pem_out = NULL;
    char *ca_crt = NULL, *ca_key = NULL;
    int rc = read_ca(dir, &ca_crt, &ca_key);
    if (rc == 0)
        rc = plait_pki_device_issue(cfg, ca_crt, ca_key, device_id, NULL, crt_pem, key_pem_out,
                                    info);
    plait_pki_free_pem(ca_crt);
    plait_pki_free_pem(ca_key);
    return rc;
}

int plait_pki_enroll_csr(const char *dir, const plait_pki_config_t *cfg, const uint8_t *csr,
                         size_t csr_len, const char *device_id, char **crt_pem,
                         plait_pki_cert_info_t *info)
{
    if (dir == NULL || crt_pem == NULL) return plait_fail(PLAIT_EINVAL, "pki: NULL argument");
    *crt_pem = NULL;
    char *ca_crt = NULL, *ca_key = NULL;
    int rc = read_ca(dir, &ca_crt, &ca_key);
    if (rc == 0)
        rc = plait_pki_issue_from_csr(cfg, ca_crt, ca_key, csr, csr_len, device_id, NULL, crt_pem,
                                      info);
    plait_pki_free_pem(ca_crt);
    plait_pki_free_pem(ca_key);
    return rc;
}

int plait_pki_revoke(const char *dir, const char *serial_hex, const uint8_t *fingerprint)
{
    char norm[PLAIT_PKI_SERIAL_HEX_MAX + 1];
    if (dir == NULL || (serial_hex == NULL && fingerprint == NULL))
        return plait_fail(PLAIT_EINVAL, "pki: revoke needs a serial or a fingerprint");
    if (serial_hex != NULL && serial_norm(serial_hex, norm) != 0)
        return plait_fail(PLAIT_EINVAL, "pki: serial must be 1..%d hex digits",
                          PLAIT_PKI_SERIAL_HEX_MAX);
    char p[4096], line[256];
    int rc = dir_path(p, sizeof(p), dir, "revoked.txt");
    if (rc != 0) return rc;
    size_t n = 0;
    if (serial_hex != NULL) n += (size_t)snprintf(line + n, sizeof(line) - n, "serial %s\n", norm);
    if (fingerprint != NULL) {
        char hex[65];
        plait_hex(fingerprint, 32, hex);
        n += (size_t)snprintf(line + n, sizeof(line) - n, "sha256 %s\n", hex);
    }
    int fd = open(p, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (fd < 0) return plait_fail(PLAIT_EIO, "%s: %s", p, strerror(errno));
    ssize_t w = write(fd, line, n);
    int ok = w == (ssize_t)n && fsync(fd) == 0;
    if (close(fd) != 0) ok = 0;
    return ok ? 0 : plait_fail(PLAIT_EIO, "%s: append failed", p);
}
