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
 * The module by concern (shared internals in pki_int.h): pki.c (keys, the
 * CA, issuing from a key or a CSR), pki_csr.c (device keys, CSRs, enrollment
 * records), pki_check.c (inspection, offline verification, the revocation
 * list), pki_dir.c (the deployment directory and its files).
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
#include <mbedtls/pem.h>
#include <mbedtls/pk.h>
#include <mbedtls/sha256.h>
#include <mbedtls/platform_util.h>
#include <mbedtls/x509_crt.h>
#include <mbedtls/x509_csr.h>

#include "pki_int.h"

#define CSR_MAX (16 * 1024) /* untrusted CSR input cap */
#define SKEW_S 300 /* notBefore is backdated this much for device clock skew */
#define SAN_MAX 16 /* entries in a server subjectAltName */

/* ---- small helpers ------------------------------------------------------ */

int plait__pki_mbed_fail(int code, int mrc, const char *what)
{
    return plait_fail(code, "%s (mbedTLS -0x%04x)", what, (unsigned)-mrc);
}

int plait__pki_rng(void *p_rng, unsigned char *out, size_t len)
{
    /* Any failure is reported to mbedTLS as an entropy failure. */
    return plait_drbg_random(p_rng, out, len) == 0 ? 0 : MBEDTLS_ERR_CTR_DRBG_ENTROPY_SOURCE_FAILED;
}

int plait__pki_rng_begin(plait__pki_rng_t *r, plait_drbg_t *given)
{
    plait_drbg_init(&r->own);
    r->use = given;
    if (given != NULL) return 0;
    static const uint8_t pers[] = "plait-pki";
    int rc = plait_drbg_seed(&r->own, pers, sizeof(pers) - 1);
    if (rc == 0) r->use = &r->own;
    return rc;
}

void plait__pki_rng_end(plait__pki_rng_t *r)
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
int plait__pki_name_ok(const char *s, int allow_space)
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
    return plait__pki_name_ok(id, 0) && id[0] != '.' && id[0] != '-';
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
    if (!plait__pki_name_ok(cfg->org, 1))
        return plait_fail(PLAIT_EINVAL, "pki: org must be 1..64 of [A-Za-z0-9 ._-]");
    if (!plait__pki_name_ok(cfg->ca_name, 1))
        return plait_fail(PLAIT_EINVAL, "pki: ca_name must be 1..64 of [A-Za-z0-9 ._-]");
    if (!plait__pki_name_ok(cfg->server_name, 0) ||
        !dns_ok(cfg->server_name, strlen(cfg->server_name)))
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
int plait__pki_pem_out(unsigned char *buf, size_t cap, char **out)
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
int plait__pki_input_view(const uint8_t *buf, size_t len, size_t max, uint8_t **tmp,
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

int plait__pki_load_crt(mbedtls_x509_crt *crt, const char *pem, const char *what)
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

int plait__pki_load_key(mbedtls_pk_context *pk, const char *pem, const char *what)
{
    if (pem == NULL) return plait_fail(PLAIT_EINVAL, "pki: %s: NULL", what);
    int mrc = mbedtls_pk_parse_key(pk, (const unsigned char *)pem, strlen(pem) + 1, NULL, 0);
    if (mrc != 0)
        return plait_fail(PLAIT_EPROTO, "pki: %s: not a parseable private key (mbedTLS -0x%04x)",
                          what, (unsigned)-mrc);
    if (!p256_key(pk)) return plait_fail(PLAIT_EINVAL, "pki: %s: not an ECDSA P-256 key", what);
    return 0;
}

int plait__pki_gen_key(mbedtls_pk_context *pk, plait_drbg_t *rng)
{
    int mrc = mbedtls_pk_setup(pk, mbedtls_pk_info_from_type(MBEDTLS_PK_ECKEY));
    if (mrc != 0) return plait__pki_mbed_fail(PLAIT_ENOMEM, mrc, "pki: key setup");
    mrc = mbedtls_ecp_gen_key(MBEDTLS_ECP_DP_SECP256R1, mbedtls_pk_ec(*pk), plait__pki_rng, rng);
    if (mrc != 0) return plait__pki_mbed_fail(PLAIT_EIO, mrc, "pki: key generation");
    return 0;
}

int plait__pki_key_pem(mbedtls_pk_context *pk, char **out)
{
    unsigned char buf[PKI_PEM_BUF];
    int mrc = mbedtls_pk_write_key_pem(pk, buf, sizeof(buf));
    if (mrc != 0) {
        mbedtls_platform_zeroize(buf, sizeof(buf));
        return plait__pki_mbed_fail(PLAIT_EINTERNAL, mrc, "pki: writing key PEM");
    }
    return plait__pki_pem_out(buf, sizeof(buf), out);
}
/* "YYYYMMDDhhmmss" (UTC), the form mbedtls_x509write_crt_set_validity() takes. */
static void fmt_time(int64_t t, char out[15])
{
    time_t tt = (time_t)t;
    struct tm tm;
    gmtime_r(&tt, &tm);
    strftime(out, 15, "%Y%m%d%H%M%S", &tm);
}

int64_t plait__pki_x509_time_unix(const mbedtls_x509_time *t)
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
    return plait__pki_mbed_fail(PLAIT_EINVAL, w, "pki: subjectAltName too large");
}

/* The issuer's subject as a string mbedtls_x509_string_to_names() parses back
 * to the same DER: dn_gets separates attributes with ", "; our names contain
 * no ',' (config validation), so dropping the space after each ',' is exact. */
static int issuer_name(const mbedtls_x509_crt *ca, char *out, size_t cap)
{
    char tmp[512];
    int w = mbedtls_x509_dn_gets(tmp, sizeof(tmp), &ca->subject);
    if (w < 0) return plait__pki_mbed_fail(PLAIT_EINVAL, w, "pki: CA subject too long");
    size_t j = 0;
    for (size_t i = 0; tmp[i] != '\0' && j + 1 < cap; i++) {
        if (tmp[i] == ' ' && i > 0 && tmp[i - 1] == ',') continue;
        out[j++] = tmp[i];
    }
    out[j] = '\0';
    return 0;
}

/* ecdsa-with-SHA256 AlgorithmIdentifier as mbedTLS 2.28 writes it (with NULL
 * parameters) and as RFC 5758 section 3.2 wants it (parameters absent). */
static const uint8_t ALG_ECDSA_SHA256_NULL[] = {0x30, 0x0c, 0x06, 0x08, 0x2a, 0x86, 0x48,
                                                0xce, 0x3d, 0x04, 0x03, 0x02, 0x05, 0x00};
static const uint8_t ALG_ECDSA_SHA256[] = {0x30, 0x0a, 0x06, 0x08, 0x2a, 0x86,
                                           0x48, 0xce, 0x3d, 0x04, 0x03, 0x02};

static size_t der_hdr_len(size_t n) { return 1 + (n < 0x80 ? 1 : n < 0x100 ? 2 : 3); }

static uint8_t *der_hdr(uint8_t *p, uint8_t tag, size_t n)
{
    *p++ = tag;
    if (n < 0x80) {
        *p++ = (uint8_t)n;
    } else if (n < 0x100) {
        *p++ = 0x81;
        *p++ = (uint8_t)n;
    } else {
        *p++ = 0x82;
        *p++ = (uint8_t)(n >> 8);
        *p++ = (uint8_t)n;
    }
    return p;
}

/*
 * Rewrite a certificate written by mbedtls_x509write_crt_der so that both of
 * its ecdsa-with-SHA256 AlgorithmIdentifiers (inside the TBSCertificate and
 * before the signature) omit the parameters (RFC 5758 section 3.2), and sign
 * the new TBSCertificate with the issuer key. Lengths stay below 64 KiB (the
 * input fits PKI_PEM_BUF).
 */
static int crt_rfc5758(const uint8_t *der, size_t der_len, mbedtls_pk_context *issuer_key, plait_drbg_t *rng,
                       uint8_t *out, size_t cap, size_t *out_len)
{
    unsigned char *p = (unsigned char *)der, *end = p + der_len;
    size_t n, tbs_len;
    int mrc;
    const int seq = MBEDTLS_ASN1_CONSTRUCTED | MBEDTLS_ASN1_SEQUENCE;
    if ((mrc = mbedtls_asn1_get_tag(&p, end, &n, seq)) != 0) goto bad;
    end = p + n;
    if ((mrc = mbedtls_asn1_get_tag(&p, end, &tbs_len, seq)) != 0) goto bad;
    unsigned char *body = p, *body_end = p + tbs_len;
    if ((mrc = mbedtls_asn1_get_tag(&p, body_end, &n, MBEDTLS_ASN1_CONTEXT_SPECIFIC | MBEDTLS_ASN1_CONSTRUCTED)) !=
        0)
        goto bad;
    p += n;
    if ((mrc = mbedtls_asn1_get_tag(&p, body_end, &n, MBEDTLS_ASN1_INTEGER)) != 0) goto bad;
    p += n;
    if ((size_t)(body_end - p) < sizeof(ALG_ECDSA_SHA256_NULL) ||
        memcmp(p, ALG_ECDSA_SHA256_NULL, sizeof(ALG_ECDSA_SHA256_NULL)) != 0)
        return plait_fail(PLAIT_EINTERNAL, "pki: unexpected signature algorithm in a written certificate");
    size_t pre = (size_t)(p - body), post = (size_t)(body_end - p) - sizeof(ALG_ECDSA_SHA256_NULL);
    size_t nbody = pre + sizeof(ALG_ECDSA_SHA256) + post;
    size_t ntbs = der_hdr_len(nbody) + nbody;
    /* The TBSCertificate goes where the whole certificate will start, after
     * room for the outer header (computed below from the signature's size). */
    uint8_t tbs[PKI_PEM_BUF];
    if (ntbs > sizeof(tbs)) return plait_fail(PLAIT_EINTERNAL, "pki: certificate too large");
    uint8_t *w = der_hdr(tbs, (uint8_t)seq, nbody);
    memcpy(w, body, pre);
    memcpy(w + pre, ALG_ECDSA_SHA256, sizeof(ALG_ECDSA_SHA256));
    memcpy(w + pre + sizeof(ALG_ECDSA_SHA256), p + sizeof(ALG_ECDSA_SHA256_NULL), post);
    uint8_t hash[32], sig[MBEDTLS_PK_SIGNATURE_MAX_SIZE];
    size_t sig_len = 0;
    if ((mrc = mbedtls_sha256_ret(tbs, ntbs, hash, 0)) != 0 ||
        (mrc = mbedtls_pk_sign(issuer_key, MBEDTLS_MD_SHA256, hash, sizeof(hash), sig, &sig_len,
                               plait__pki_rng, rng)) != 0)
        return plait__pki_mbed_fail(PLAIT_EINTERNAL, mrc, "pki: signing certificate");
    size_t bits = 1 + sig_len, nsig = der_hdr_len(bits) + bits;
    size_t outer = ntbs + sizeof(ALG_ECDSA_SHA256) + nsig, total = der_hdr_len(outer) + outer;
    if (total > cap) return plait_fail(PLAIT_EINTERNAL, "pki: certificate too large");
    w = der_hdr(out, (uint8_t)seq, outer);
    memcpy(w, tbs, ntbs);
    w += ntbs;
    memcpy(w, ALG_ECDSA_SHA256, sizeof(ALG_ECDSA_SHA256));
    w += sizeof(ALG_ECDSA_SHA256);
    w = der_hdr(w, MBEDTLS_ASN1_BIT_STRING, bits);
    *w++ = 0; /* no unused bits */
    memcpy(w, sig, sig_len);
    *out_len = total;
    return 0;
bad:
    return plait__pki_mbed_fail(PLAIT_EINTERNAL, mrc, "pki: parsing a written certificate");
}

static int issue(const issue_t *q, plait_drbg_t *rng, char **crt_pem, plait_pki_cert_info_t *info)
{
    int rc = PLAIT_EINTERNAL, mrc = 0;
    mbedtls_x509write_cert w;
    mbedtls_mpi serial;
    unsigned char buf[PKI_PEM_BUF];
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
    {
        /* DER (written at the end of der), the AlgorithmIdentifiers made RFC 5758
         * conformant and re-signed, then PEM. */
        unsigned char der[PKI_PEM_BUF], fixed[PKI_PEM_BUF];
        size_t flen = 0, olen = 0;
        int n = mbedtls_x509write_crt_der(&w, der, sizeof(der), plait__pki_rng, rng);
        if (n < 0) {
            mrc = n;
            goto fail;
        }
        if ((rc = crt_rfc5758(der + sizeof(der) - n, (size_t)n, q->issuer_key, rng, fixed, sizeof(fixed), &flen)) !=
            0)
            goto exit;
        rc = PLAIT_EINTERNAL;
        mrc = mbedtls_pem_write_buffer("-----BEGIN CERTIFICATE-----\n", "-----END CERTIFICATE-----\n", fixed, flen,
                                       buf, sizeof(buf), &olen);
        mbedtls_platform_zeroize(der, sizeof(der));
        if (mrc != 0) goto fail;
    }
    if ((rc = plait__pki_pem_out(buf, sizeof(buf), crt_pem)) != 0) goto exit;
    if (info != NULL) {
        rc = plait_pki_cert_info((const uint8_t *)*crt_pem, strlen(*crt_pem), info);
        if (rc != 0) {
            plait_pki_free_pem(*crt_pem);
            *crt_pem = NULL;
        }
    }
    goto exit;
fail:
    rc = plait__pki_mbed_fail(PLAIT_EINTERNAL, mrc, "pki: writing certificate");
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
    plait__pki_rng_t r;
    mbedtls_pk_context pk;
    mbedtls_pk_init(&pk);
    if ((rc = plait__pki_rng_begin(&r, rng)) != 0) goto exit;
    if ((rc = plait__pki_gen_key(&pk, r.use)) != 0) goto exit;
    issue_t q = {KIND_CA, cfg->ca_name, cfg->org, &pk, &pk, NULL, cfg, cfg->ca_days};
    if ((rc = issue(&q, r.use, ca_crt_pem, NULL)) != 0) goto exit;
    if ((rc = plait__pki_key_pem(&pk, ca_key_pem)) != 0) {
        plait_pki_free_pem(*ca_crt_pem);
        *ca_crt_pem = NULL;
    }
exit:
    mbedtls_pk_free(&pk);
    plait__pki_rng_end(&r);
    return rc;
}

/* Load the CA pair and check that the key is the certificate's. */
static int load_ca(mbedtls_x509_crt *ca, mbedtls_pk_context *ca_key, const char *crt_pem,
                   const char *key_pem)
{
    int rc = plait__pki_load_crt(ca, crt_pem, "CA certificate");
    if (rc == 0) rc = plait__pki_load_key(ca_key, key_pem, "CA key");
    if (rc != 0) return rc;
    if (!ca->ca_istrue)
        return plait_fail(PLAIT_EINVAL, "pki: the CA certificate is not a CA (basicConstraints)");
    int mrc = mbedtls_pk_check_pair(&ca->pk, ca_key);
    if (mrc != 0)
        return plait__pki_mbed_fail(PLAIT_EMISMATCH, mrc,
                                    "pki: CA key does not match the CA certificate");
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
    plait__pki_rng_t r;
    mbedtls_x509_crt ca;
    mbedtls_pk_context ca_key, key;
    mbedtls_x509_crt_init(&ca);
    mbedtls_pk_init(&ca_key);
    mbedtls_pk_init(&key);
    if ((rc = plait__pki_rng_begin(&r, rng)) != 0) goto exit;
    if ((rc = load_ca(&ca, &ca_key, ca_crt_pem, ca_key_pem)) != 0) goto exit;
    if (subject_key == NULL) {
        if ((rc = plait__pki_gen_key(&key, r.use)) != 0) goto exit;
        subject_key = &key;
    }
    issue_t q = {kind,    cn,  cfg->org, subject_key,
                 &ca_key, &ca, cfg,      kind == KIND_SERVER ? cfg->server_days : cfg->device_days};
    if ((rc = issue(&q, r.use, crt_pem, info)) != 0) goto exit;
    if (key_pem_out != NULL && (rc = plait__pki_key_pem(&key, key_pem_out)) != 0) {
        plait_pki_free_pem(*crt_pem);
        *crt_pem = NULL;
    }
exit:
    mbedtls_pk_free(&key);
    mbedtls_pk_free(&ca_key);
    mbedtls_x509_crt_free(&ca);
    plait__pki_rng_end(&r);
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

/* Copy the subject CN out of a parsed name; "" if absent or not a plain string. */
void plait__pki_name_cn(const mbedtls_x509_name *name, char *out, size_t cap)
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
    int rc = plait__pki_input_view(csr_buf, csr_len, CSR_MAX, &tmp, &use, &use_len);
    if (rc != 0) return rc;
    mbedtls_x509_csr csr;
    mbedtls_x509_csr_init(&csr);
    int mrc = mbedtls_x509_csr_parse(&csr, use, use_len);
    if (mrc != 0) {
        rc = plait__pki_mbed_fail(PLAIT_EPROTO, mrc, "pki: CSR is not a parseable PKCS#10 request");
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
        rc = plait__pki_mbed_fail(PLAIT_EINTERNAL, mrc, "pki: hashing CSR");
        goto exit;
    }
    mrc = mbedtls_pk_verify_ext(csr.sig_pk, csr.sig_opts, &csr.pk, csr.sig_md, hash,
                                mbedtls_md_get_size(md), csr.sig.p, csr.sig.len);
    if (mrc != 0) {
        rc = plait__pki_mbed_fail(PLAIT_EAUTH, mrc,
                       "pki: CSR self-signature does not verify (request altered or key not held)");
        goto exit;
    }
    if (!p256_key(&csr.pk)) {
        rc = plait_fail(PLAIT_EINVAL, "pki: CSR key is not ECDSA P-256");
        goto exit;
    }
    char cn[PLAIT_PKI_ID_MAX + 1];
    plait__pki_name_cn(&csr.subject, cn, sizeof(cn));
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
