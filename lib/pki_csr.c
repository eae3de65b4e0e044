/*
 * pki_csr.c: the device's side of enrollment (part of pki.c): an ECDSA P-256
 * key, a certificate signing request signed by it, and the offline CA's
 * enrollment records (a signed "label, id, certificate" triple an operator
 * carries to the aggregator). Private keys live only in pk contexts and in
 * PEM buffers that are wiped before they are freed.
 */
#include "plait/crypto.h"
#include "plait/pki.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <mbedtls/md.h>
#include <mbedtls/pk.h>
#include <mbedtls/platform_util.h>
#include <mbedtls/x509_crt.h>
#include <mbedtls/x509_csr.h>

#include "pki_int.h"


int plait_pki_key_generate(plait_drbg_t *rng, char **key_pem_out)
{
    if (key_pem_out == NULL) return plait_fail(PLAIT_EINVAL, "pki: NULL output");
    *key_pem_out = NULL;
    plait__pki_rng_t r;
    mbedtls_pk_context pk;
    mbedtls_pk_init(&pk);
    int rc = plait__pki_rng_begin(&r, rng);
    if (rc == 0) rc = plait__pki_gen_key(&pk, r.use);
    if (rc == 0) rc = plait__pki_key_pem(&pk, key_pem_out);
    mbedtls_pk_free(&pk);
    plait__pki_rng_end(&r);
    return rc;
}


int plait_pki_csr_create(const char *device_id, const char *org, const char *key_pem_in,
                         plait_drbg_t *rng, char **csr_pem)
{
    if (csr_pem == NULL) return plait_fail(PLAIT_EINVAL, "pki: NULL output");
    *csr_pem = NULL;
    if (org == NULL) org = "plait";
    if (!plait_pki_device_id_valid(device_id) || !plait__pki_name_ok(org, 1))
        return plait_fail(PLAIT_EINVAL, "pki: CSR: invalid device id or org");
    int rc, mrc;
    plait__pki_rng_t r;
    mbedtls_pk_context pk;
    mbedtls_x509write_csr w;
    unsigned char buf[PKI_PEM_BUF];
    mbedtls_pk_init(&pk);
    mbedtls_x509write_csr_init(&w);
    if ((rc = plait__pki_rng_begin(&r, rng)) != 0) goto exit;
    if ((rc = plait__pki_load_key(&pk, key_pem_in, "device key")) != 0) goto exit;
    char subject[160];
    snprintf(subject, sizeof(subject), "CN=%s,O=%s", device_id, org);
    mbedtls_x509write_csr_set_md_alg(&w, MBEDTLS_MD_SHA256);
    mbedtls_x509write_csr_set_key(&w, &pk);
    if ((mrc = mbedtls_x509write_csr_set_subject_name(&w, subject)) != 0 ||
        (mrc = mbedtls_x509write_csr_pem(&w, buf, sizeof(buf), plait__pki_rng, r.use)) != 0) {
        rc = plait__pki_mbed_fail(PLAIT_EINTERNAL, mrc, "pki: writing CSR");
        goto exit;
    }
    rc = plait__pki_pem_out(buf, sizeof(buf), csr_pem);
exit:
    mbedtls_platform_zeroize(buf, sizeof(buf));
    mbedtls_x509write_csr_free(&w);
    mbedtls_pk_free(&pk);
    plait__pki_rng_end(&r);
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
    plait__pki_rng_t r;
    unsigned char sig[MBEDTLS_PK_SIGNATURE_MAX_SIZE];
    size_t sig_len = 0;
    uint8_t h[32];
    if ((rc = plait__pki_rng_begin(&r, NULL)) != 0) goto exit;
    if ((rc = plait__pki_load_key(&pk, ca_key_pem, "CA key")) != 0) goto exit;
    record_hash(head, crt_pem, strlen(crt_pem), h);
    int mrc =
        mbedtls_pk_sign(&pk, MBEDTLS_MD_SHA256, h, sizeof(h), sig, &sig_len, plait__pki_rng, r.use);
    if (mrc != 0) {
        rc = plait__pki_mbed_fail(PLAIT_EINTERNAL, mrc, "pki: record: signing");
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
    plait__pki_rng_end(&r);
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
    if (len > PLAIT_PKI_RECORD_MAX)
        return plait_fail(PLAIT_ETOOBIG, "pki: record: above %d bytes", PLAIT_PKI_RECORD_MAX);
    if (memchr(record, '\0', len) != NULL) return plait_fail(PLAIT_EPROTO, "pki: record: NUL byte");
    const char *p = record, *end = record + len;
    size_t m = strlen(RECORD_MAGIC);
    if (len < m || memcmp(p, RECORD_MAGIC, m) != 0) return plait_fail(PLAIT_EPROTO, "pki: record: not a plait enrollment record");
    p += m;
    char lab[PLAIT_PKI_ID_MAX + 1], dev[PLAIT_PKI_ID_MAX + 1],
        hex[2 * MBEDTLS_PK_SIGNATURE_MAX_SIZE + 1];
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
    if ((rc = plait__pki_load_crt(&ca, ca_crt_pem, "CA certificate")) != 0) goto exit;
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
