/*
 * pki_check.c: reading certificates back (part of pki.c): inspection (CN,
 * serial, SHA-256 fingerprint, validity), offline verification against the
 * deployment CA with plait's X.509 profile, and the revocation list by
 * serial or fingerprint that the TLS layer consults at every handshake.
 */
#include "plait/crypto.h"
#include "plait/pki.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <mbedtls/oid.h>
#include <mbedtls/x509_crt.h>

#include "pki_int.h"


static void crt_info(const mbedtls_x509_crt *crt, plait_pki_cert_info_t *info)
{
    memset(info, 0, sizeof(*info));
    plait__pki_name_cn(&crt->subject, info->device_id, sizeof(info->device_id));
    const unsigned char *s = crt->serial.p;
    size_t n = crt->serial.len;
    while (n > 1 && *s == 0)
        s++, n--;
    if (n > PLAIT_PKI_SERIAL_HEX_MAX / 2)
        n = PLAIT_PKI_SERIAL_HEX_MAX / 2; /* parser caps at 32; RFC at 20 */
    plait_hex(s, n, info->serial_hex);
    plait_sha256(crt->raw.p, crt->raw.len, info->fingerprint);
    plait_hex(info->fingerprint, 32, info->fingerprint_hex);
    info->not_before = plait__pki_x509_time_unix(&crt->valid_from);
    info->not_after = plait__pki_x509_time_unix(&crt->valid_to);
    info->is_ca = crt->ca_istrue;
}

int plait_pki_cert_info(const uint8_t *buf, size_t len, plait_pki_cert_info_t *info)
{
    if (info == NULL) return plait_fail(PLAIT_EINVAL, "pki: NULL output");
    uint8_t *tmp = NULL;
    const uint8_t *use = NULL;
    size_t use_len = 0;
    int rc = plait__pki_input_view(buf, len, PKI_FILE_MAX, &tmp, &use, &use_len);
    if (rc != 0) return rc;
    mbedtls_x509_crt crt;
    mbedtls_x509_crt_init(&crt);
    int mrc = mbedtls_x509_crt_parse(&crt, use, use_len);
    if (mrc != 0)
        rc = plait__pki_mbed_fail(PLAIT_EPROTO, mrc, "pki: not a parseable certificate");
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
    int rc = plait__pki_load_crt(&ca, ca_crt_pem, "CA certificate");
    if (rc == 0) rc = plait__pki_load_crt(&crt, crt_pem, "certificate");
    if (rc != 0) goto exit;
    int mrc = mbedtls_x509_crt_verify_with_profile(&crt, &ca, NULL, plait__pki_profile(), NULL,
                                                   &flags, NULL, NULL);
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
int plait__pki_serial_norm(const char *in, char out[PLAIT_PKI_SERIAL_HEX_MAX + 1])
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
    if (rl == NULL || plait__pki_serial_norm(serial_hex, norm) != 0)
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
    if (plait__pki_serial_norm(info->serial_hex, norm) == 0)
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
