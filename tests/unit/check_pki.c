/*
 * check_pki.c: the deployment CA: keys, CA/server/device certificates (their
 * identity fields, usages, validity), CSR issuance including altered and
 * malformed requests, offline verification against the right and a wrong CA,
 * expiry, the revocation list and its file, and the deployment directory
 * (file modes, no overwrite, enroll, revoke).
 */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "plait/pki.h"
#include "testutil.h"

static char *tmpdir;

static void setup(void)
{
    tmpdir = tu_tmpdir("pki");
    ck_assert_ptr_nonnull(tmpdir);
}

static void teardown(void)
{
    free(tmpdir);
    tmpdir = NULL;
}

/* Decode the base64 body of a PEM block into DER (test helper; malloc'd). */
static uint8_t *pem_to_der(const char *pem, size_t *len)
{
    static const char tbl[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    const char *p = strstr(pem, "-----\n");
    ck_assert_ptr_nonnull(p);
    p += 6;
    const char *end = strstr(p, "-----END");
    ck_assert_ptr_nonnull(end);
    uint8_t *out = malloc((size_t)(end - p));
    uint32_t acc = 0;
    int bits = 0;
    size_t n = 0;
    for (; p < end; p++) {
        const char *k = strchr(tbl, *p);
        if (*p == '\n' || *p == '=' || k == NULL) continue;
        acc = (acc << 6) | (uint32_t)(k - tbl);
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out[n++] = (uint8_t)(acc >> bits);
        }
    }
    *len = n;
    return out;
}

static uint8_t *find(uint8_t *hay, size_t n, const char *needle)
{
    size_t k = strlen(needle);
    for (size_t i = 0; i + k <= n; i++)
        if (memcmp(hay + i, needle, k) == 0) return hay + i;
    return NULL;
}

typedef struct {
    char *crt, *key;
} pair_t;

static void pair_free(pair_t *p)
{
    plait_pki_free_pem(p->crt);
    plait_pki_free_pem(p->key);
    p->crt = p->key = NULL;
}

static pair_t make_ca(const plait_pki_config_t *cfg)
{
    pair_t ca = {0};
    ck_assert_int_eq(plait_pki_ca_create(cfg, NULL, &ca.crt, &ca.key), 0);
    ck_assert_ptr_nonnull(strstr(ca.crt, "-----BEGIN CERTIFICATE-----"));
    ck_assert_ptr_nonnull(strstr(ca.key, "-----BEGIN EC PRIVATE KEY-----"));
    return ca;
}

START_TEST(test_keygen)
{
    char *a = NULL, *b = NULL;
    ck_assert_int_eq(plait_pki_key_generate(NULL, &a), 0);
    ck_assert_int_eq(plait_pki_key_generate(NULL, &b), 0);
    ck_assert_ptr_nonnull(strstr(a, "-----BEGIN EC PRIVATE KEY-----"));
    ck_assert_str_ne(a, b);
    plait_pki_free_pem(a);
    plait_pki_free_pem(b);
    plait_pki_free_pem(NULL);
    ck_assert_int_eq(plait_pki_key_generate(NULL, NULL), PLAIT_EINVAL);
}
END_TEST

START_TEST(test_config_validate)
{
    plait_pki_config_t cfg;
    plait_pki_config_default(&cfg);
    ck_assert_int_eq(plait_pki_config_validate(&cfg), 0);
    cfg.org = "evil,CN=admin";
    ck_assert_int_eq(plait_pki_config_validate(&cfg), PLAIT_EINVAL);
    plait_pki_config_default(&cfg);
    cfg.server_alt_names = "ok.example, not a name";
    ck_assert_int_eq(plait_pki_config_validate(&cfg), PLAIT_EINVAL);
    plait_pki_config_default(&cfg);
    cfg.server_alt_names = "agg.example.org, 10.1.2.3, ::1";
    ck_assert_int_eq(plait_pki_config_validate(&cfg), 0);
    cfg.device_days = 0;
    ck_assert_int_eq(plait_pki_config_validate(&cfg), PLAIT_EINVAL);
    ck_assert_int_eq(plait_pki_config_validate(NULL), PLAIT_EINVAL);

    ck_assert_int_eq(plait_pki_device_id_valid("phone-0042"), 1);
    ck_assert_int_eq(plait_pki_device_id_valid("a.b_c-D9"), 1);
    ck_assert_int_eq(plait_pki_device_id_valid(""), 0);
    ck_assert_int_eq(plait_pki_device_id_valid("-x"), 0);
    ck_assert_int_eq(plait_pki_device_id_valid("a b"), 0);
    ck_assert_int_eq(plait_pki_device_id_valid("a,O=x"), 0);
    ck_assert_int_eq(plait_pki_device_id_valid(NULL), 0);
    char longid[80];
    memset(longid, 'a', sizeof(longid) - 1);
    longid[79] = '\0';
    ck_assert_int_eq(plait_pki_device_id_valid(longid), 0);
}
END_TEST

START_TEST(test_ca_server_device)
{
    plait_pki_config_t cfg;
    plait_pki_config_default(&cfg);
    pair_t ca = make_ca(&cfg);
    plait_pki_cert_info_t ci;
    ck_assert_int_eq(plait_pki_cert_info((const uint8_t *)ca.crt, strlen(ca.crt), &ci), 0);
    ck_assert_int_eq(ci.is_ca, 1);
    ck_assert_str_eq(ci.device_id, "plait deployment CA");
    ck_assert(ci.not_after - ci.not_before == (int64_t)cfg.ca_days * 86400 + 300);
    int64_t now = (int64_t)time(NULL);
    ck_assert(ci.not_before <= now && ci.not_before > now - 400);

    pair_t srv = {0};
    ck_assert_int_eq(plait_pki_server_issue(&cfg, ca.crt, ca.key, NULL, &srv.crt, &srv.key), 0);
    const char *why = NULL;
    ck_assert_int_eq(plait_pki_verify(ca.crt, srv.crt, 0, &why), 0);
    ck_assert_int_eq(plait_pki_verify(ca.crt, srv.crt, 1, &why), PLAIT_EAUTH);
    ck_assert_ptr_nonnull(strstr(why, "extended key usage"));
    ck_assert_int_eq(plait_pki_cert_info((const uint8_t *)srv.crt, strlen(srv.crt) + 1, &ci), 0);
    ck_assert_str_eq(ci.device_id, "plait-aggregator");
    ck_assert_int_eq(ci.is_ca, 0);

    pair_t d1 = {0}, d2 = {0};
    plait_pki_cert_info_t i1, i2;
    ck_assert_int_eq(
        plait_pki_device_issue(&cfg, ca.crt, ca.key, "phone-1", NULL, &d1.crt, &d1.key, &i1), 0);
    ck_assert_int_eq(
        plait_pki_device_issue(&cfg, ca.crt, ca.key, "phone-2", NULL, &d2.crt, &d2.key, &i2), 0);
    ck_assert_str_eq(i1.device_id, "phone-1");
    ck_assert_str_eq(i2.device_id, "phone-2");
    ck_assert_uint_eq(strlen(i1.serial_hex), 32); /* 16-byte serials, never a leading zero byte */
    ck_assert_str_ne(i1.serial_hex, i2.serial_hex);
    ck_assert_str_ne(i1.fingerprint_hex, i2.fingerprint_hex);
    ck_assert(i1.not_after - i1.not_before == (int64_t)cfg.device_days * 86400 + 300);
    ck_assert_int_eq(plait_pki_verify(ca.crt, d1.crt, 1, &why), 0);
    ck_assert_int_eq(plait_pki_verify(ca.crt, d1.crt, 0, &why), PLAIT_EAUTH);
    ck_assert_ptr_nonnull(strstr(why, "extended key usage"));

    /* The fingerprint is SHA-256 over the DER. */
    size_t der_len;
    uint8_t *der = pem_to_der(d1.crt, &der_len);
    uint8_t fp[32];
    plait_sha256(der, der_len, fp);
    ck_assert_int_eq(memcmp(fp, i1.fingerprint, 32), 0);
    plait_pki_cert_info_t i1der;
    ck_assert_int_eq(plait_pki_cert_info(der, der_len, &i1der), 0);
    ck_assert_str_eq(i1der.serial_hex, i1.serial_hex);
    free(der);

    /* RFC 5758 section 3.2 (issue #11 item 13): ecdsa-with-SHA256 without
     * parameters, both in the TBSCertificate and before the signature; no
     * NULL-parameter form anywhere. (The chain verified above is the proof
     * that the rewritten TBSCertificate carries a valid signature.) */
    static const uint8_t alg_null[] = {0x30, 0x0c, 0x06, 0x08, 0x2a, 0x86, 0x48,
                                       0xce, 0x3d, 0x04, 0x03, 0x02, 0x05, 0x00};
    static const uint8_t alg[] = {0x30, 0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02};
    const char *pems[] = {ca.crt, srv.crt, d1.crt};
    for (int k = 0; k < 3; k++) {
        der = pem_to_der(pems[k], &der_len);
        int with_null = 0, without = 0;
        for (size_t i = 0; i + sizeof(alg_null) <= der_len; i++)
            with_null += memcmp(der + i, alg_null, sizeof(alg_null)) == 0;
        for (size_t i = 0; i + sizeof(alg) <= der_len; i++) without += memcmp(der + i, alg, sizeof(alg)) == 0;
        ck_assert_int_eq(with_null, 0);
        ck_assert_int_eq(without, 2);
        free(der);
    }

    pair_free(&d2);
    ck_assert_int_eq(
        plait_pki_device_issue(&cfg, ca.crt, ca.key, "bad id", NULL, &d2.crt, &d2.key, NULL),
        PLAIT_EINVAL);
    ck_assert_ptr_null(d2.crt);
    pair_free(&d1);
    pair_free(&srv);
    pair_free(&ca);
}
END_TEST

START_TEST(test_wrong_ca_and_mismatch)
{
    plait_pki_config_t cfg;
    plait_pki_config_default(&cfg);
    pair_t ca1 = make_ca(&cfg), ca2 = make_ca(&cfg);
    pair_t d = {0};
    ck_assert_int_eq(
        plait_pki_device_issue(&cfg, ca2.crt, ca2.key, "stranger", NULL, &d.crt, &d.key, NULL), 0);
    const char *why = NULL;
    ck_assert_int_eq(plait_pki_verify(ca1.crt, d.crt, 1, &why), PLAIT_EAUTH);
    ck_assert_str_eq(why, "certificate not issued by this deployment's CA");
    /* CA 1's certificate with CA 2's key cannot sign anything. */
    pair_t x = {0};
    ck_assert_int_eq(
        plait_pki_device_issue(&cfg, ca1.crt, ca2.key, "dev", NULL, &x.crt, &x.key, NULL),
        PLAIT_EMISMATCH);
    ck_assert_int_eq(
        plait_pki_device_issue(&cfg, "garbage", ca2.key, "dev", NULL, &x.crt, &x.key, NULL),
        PLAIT_EPROTO);
    ck_assert_int_eq(plait_pki_device_issue(&cfg, d.crt, d.key, "dev", NULL, &x.crt, &x.key, NULL),
                     PLAIT_EINVAL);
    ck_assert_int_eq(plait_pki_cert_info((const uint8_t *)"junk", 4, &(plait_pki_cert_info_t){0}),
                     PLAIT_EPROTO);
    pair_free(&d);
    pair_free(&ca1);
    pair_free(&ca2);
}
END_TEST

/* Offline enrollment records: round trip; another CA's signature, a relabelled or truncated
 * record, an id that is not the certificate's CN, garbage: each refused. */
START_TEST(test_enrollment_record)
{
    plait_pki_config_t cfg;
    plait_pki_config_default(&cfg);
    pair_t ca1 = make_ca(&cfg), ca2 = make_ca(&cfg);
    pair_t d = {0};
    const char *id = "0123456789abcdef0123456789abcdef";
    ck_assert_int_eq(plait_pki_device_issue(&cfg, ca1.crt, ca1.key, id, NULL, &d.crt, &d.key, NULL), 0);
    char *rec = NULL;
    ck_assert_int_eq(plait_pki_record_create(ca1.key, "alice-phone", "not-the-cn", d.crt, &rec), PLAIT_EINVAL);
    ck_assert_int_eq(plait_pki_record_create(ca1.key, "bad label!", id, d.crt, &rec), PLAIT_EINVAL);
    ck_assert_int_eq(plait_pki_record_create(ca1.key, "alice-phone", id, d.crt, &rec), 0);
    char label[PLAIT_PKI_ID_MAX + 1], got[PLAIT_PKI_ID_MAX + 1];
    plait_pki_cert_info_t info;
    ck_assert_int_eq(plait_pki_record_verify(ca1.crt, rec, strlen(rec), label, got, &info), 0);
    ck_assert_str_eq(label, "alice-phone");
    ck_assert_str_eq(got, id);
    ck_assert_str_eq(info.device_id, id);
    /* signed by another CA */
    char *rec2 = NULL;
    ck_assert_int_eq(plait_pki_record_create(ca2.key, "alice-phone", id, d.crt, &rec2), 0);
    ck_assert_int_eq(plait_pki_record_verify(ca1.crt, rec2, strlen(rec2), label, got, NULL), PLAIT_EAUTH);
    /* verified against the other CA: the signature passes, the certificate does not */
    ck_assert_int_eq(plait_pki_record_verify(ca2.crt, rec2, strlen(rec2), label, got, NULL), PLAIT_EAUTH);
    plait_pki_free_pem(rec2);
    /* relabelled */
    char *copy = strdup(rec);
    char *l = strstr(copy, "label alice-phone");
    ck_assert_ptr_nonnull(l);
    l[6] = 'm';
    ck_assert_int_eq(plait_pki_record_verify(ca1.crt, copy, strlen(copy), label, got, NULL), PLAIT_EAUTH);
    ck_assert_str_eq(label, "");
    /* truncated anywhere: never accepted */
    for (size_t n = 0; n < strlen(rec); n += 7) {
        int rc = plait_pki_record_verify(ca1.crt, rec, n, label, got, NULL);
        ck_assert_msg(rc == PLAIT_EPROTO || rc == PLAIT_EAUTH, "prefix %zu: %d", n, rc);
    }
    ck_assert_int_eq(plait_pki_record_verify(ca1.crt, "plait-enrollment 1\nlabel x\n", 26, label, got, NULL),
                     PLAIT_EPROTO);
    ck_assert_int_eq(plait_pki_record_verify(ca1.crt, "junk", 4, label, got, NULL), PLAIT_EPROTO);
    free(copy);
    plait_pki_free_pem(rec);
    pair_free(&d);
    pair_free(&ca1);
    pair_free(&ca2);
}
END_TEST

START_TEST(test_expired)
{
    plait_pki_config_t cfg;
    plait_pki_config_default(&cfg);
    pair_t ca = make_ca(&cfg);
    plait_pki_config_t past = cfg;
    past.now = (int64_t)time(NULL) - 10 * 86400;
    past.device_days = 1;
    pair_t d = {0};
    plait_pki_cert_info_t info;
    ck_assert_int_eq(
        plait_pki_device_issue(&past, ca.crt, ca.key, "old-phone", NULL, &d.crt, &d.key, &info), 0);
    ck_assert(info.not_after < (int64_t)time(NULL));
    const char *why = NULL;
    ck_assert_int_eq(plait_pki_verify(ca.crt, d.crt, 1, &why), PLAIT_EAUTH);
    ck_assert_str_eq(why, "certificate expired");
    pair_free(&d);
    pair_free(&ca);
}
END_TEST

START_TEST(test_csr)
{
    plait_pki_config_t cfg;
    plait_pki_config_default(&cfg);
    pair_t ca = make_ca(&cfg);
    char *key = NULL, *csr = NULL, *crt = NULL;
    ck_assert_int_eq(plait_pki_key_generate(NULL, &key), 0);
    ck_assert_int_eq(plait_pki_csr_create("dev-csr-01", NULL, key, NULL, &csr), 0);
    ck_assert_ptr_nonnull(strstr(csr, "-----BEGIN CERTIFICATE REQUEST-----"));

    plait_pki_cert_info_t info;
    /* Without the trailing NUL, as read from a file into a length-counted buffer. */
    ck_assert_int_eq(plait_pki_issue_from_csr(&cfg, ca.crt, ca.key, (const uint8_t *)csr,
                                              strlen(csr), NULL, NULL, &crt, &info),
                     0);
    ck_assert_str_eq(info.device_id, "dev-csr-01");
    ck_assert_int_eq(plait_pki_verify(ca.crt, crt, 1, NULL), 0);
    plait_pki_free_pem(crt);
    /* The operator's id overrides the requested one. */
    ck_assert_int_eq(plait_pki_issue_from_csr(&cfg, ca.crt, ca.key, (const uint8_t *)csr,
                                              strlen(csr) + 1, "assigned-7", NULL, &crt, &info),
                     0);
    ck_assert_str_eq(info.device_id, "assigned-7");
    plait_pki_free_pem(crt);
    crt = NULL;

    size_t der_len;
    uint8_t *der = pem_to_der(csr, &der_len);
    ck_assert_int_eq(
        plait_pki_issue_from_csr(&cfg, ca.crt, ca.key, der, der_len, NULL, NULL, &crt, NULL), 0);
    plait_pki_free_pem(crt);
    crt = NULL;

    /* Altered subject: the CRI no longer matches the signature. */
    uint8_t *alt = malloc(der_len);
    memcpy(alt, der, der_len);
    uint8_t *hit = find(alt, der_len, "dev-csr-01");
    ck_assert_ptr_nonnull(hit);
    hit[9] = '2';
    ck_assert_int_eq(
        plait_pki_issue_from_csr(&cfg, ca.crt, ca.key, alt, der_len, NULL, NULL, &crt, NULL),
        PLAIT_EAUTH);
    ck_assert_ptr_nonnull(strstr(plait_errmsg(), "self-signature does not verify"));
    ck_assert_ptr_null(crt);

    /* Flipped bit in the signature value (last byte of the DER). */
    memcpy(alt, der, der_len);
    alt[der_len - 1] ^= 0x01;
    ck_assert_int_eq(
        plait_pki_issue_from_csr(&cfg, ca.crt, ca.key, alt, der_len, NULL, NULL, &crt, NULL),
        PLAIT_EAUTH);

    /* Truncations and garbage are malformed, not crashes. */
    for (size_t cut = 1; cut < der_len; cut += 37)
        ck_assert_int_eq(
            plait_pki_issue_from_csr(&cfg, ca.crt, ca.key, der, cut, NULL, NULL, &crt, NULL),
            PLAIT_EPROTO);
    ck_assert_int_eq(plait_pki_issue_from_csr(&cfg, ca.crt, ca.key,
                                              (const uint8_t *)"-----BEGIN junk", 15, NULL, NULL,
                                              &crt, NULL),
                     PLAIT_EPROTO);
    ck_assert_int_eq(plait_pki_issue_from_csr(&cfg, ca.crt, ca.key, der, 0, NULL, NULL, &crt, NULL),
                     PLAIT_EINVAL);
    /* A bad id in the request is refused unless the operator assigns one. */
    ck_assert_int_eq(
        plait_pki_issue_from_csr(&cfg, ca.crt, ca.key, der, der_len, "no good", NULL, &crt, NULL),
        PLAIT_EINVAL);
    free(alt);
    free(der);
    plait_pki_free_pem(csr);
    plait_pki_free_pem(key);
    pair_free(&ca);
}
END_TEST

START_TEST(test_revlist)
{
    plait_pki_revlist_t rl;
    plait_pki_revlist_init(&rl);
    plait_pki_cert_info_t a = {0}, b = {0};
    strcpy(a.serial_hex, "0a1b2c");
    strcpy(b.serial_hex, "7f00");
    memset(b.fingerprint, 0x5a, 32);
    ck_assert_int_eq(plait_pki_revlist_contains(&rl, &a), 0);
    ck_assert_int_eq(plait_pki_revlist_add_serial(&rl, "A1B2C"), 0);
    ck_assert_int_eq(plait_pki_revlist_contains(&rl, &a), 1);
    ck_assert_int_eq(plait_pki_revlist_check(&rl, &a), PLAIT_EAUTH);
    ck_assert_int_eq(plait_pki_revlist_check(&rl, &b), 0);
    ck_assert_int_eq(plait_pki_revlist_add_fingerprint(&rl, b.fingerprint), 0);
    ck_assert_int_eq(plait_pki_revlist_contains(&rl, &b), 1);
    ck_assert_int_eq(plait_pki_revlist_add_serial(&rl, "xyz"), PLAIT_EINVAL);
    ck_assert_int_eq(plait_pki_revlist_add_serial(&rl, "000"), PLAIT_EINVAL);
    for (int i = 1; i <= 100; i++) { /* growth */
        char s[16];
        snprintf(s, sizeof(s), "%x", 0x1000 + i);
        ck_assert_int_eq(plait_pki_revlist_add_serial(&rl, s), 0);
    }
    strcpy(a.serial_hex, "1064");
    ck_assert_int_eq(plait_pki_revlist_contains(&rl, &a), 1);
    plait_pki_revlist_free(&rl);
    plait_pki_revlist_free(&rl);

    char path[600];
    snprintf(path, sizeof(path), "%s/revoked.txt", tmpdir);
    plait_pki_revlist_init(&rl);
    ck_assert_int_eq(plait_pki_revlist_load(&rl, path), 0); /* missing file: empty */
    const char *text = "# comment\n\nserial 0A1B2C  # trailing comment\nsha256 "
                       "5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a\n";
    ck_assert_int_eq(plait_pki_write_file(path, text, 0), 0);
    ck_assert_int_eq(plait_pki_revlist_load(&rl, path), 0);
    strcpy(a.serial_hex, "0a1b2c");
    ck_assert_int_eq(plait_pki_revlist_contains(&rl, &a), 1);
    ck_assert_int_eq(plait_pki_revlist_contains(&rl, &b), 1);
    plait_pki_revlist_free(&rl);
    ck_assert_int_eq(plait_pki_write_file(path, "serial 12\n\n# note\nbogus line here\n", 0), 0);
    plait_pki_revlist_init(&rl);
    ck_assert_int_eq(plait_pki_revlist_load(&rl, path), PLAIT_EPROTO);
    ck_assert_ptr_nonnull(strstr(plait_errmsg(), "line 4"));
    plait_pki_revlist_free(&rl);
    ck_assert_int_eq(plait_pki_write_file(path, "sha256 abcd\n", 0), 0);
    plait_pki_revlist_init(&rl);
    ck_assert_int_eq(plait_pki_revlist_load(&rl, path), PLAIT_EPROTO);
    plait_pki_revlist_free(&rl);
}
END_TEST

static mode_t file_mode(const char *dir, const char *name)
{
    char p[700];
    snprintf(p, sizeof(p), "%s/%s", dir, name);
    struct stat st;
    ck_assert_int_eq(stat(p, &st), 0);
    return st.st_mode & 0777;
}

START_TEST(test_deployment)
{
    char dir[600];
    snprintf(dir, sizeof(dir), "%s/deploy", tmpdir);
    plait_pki_config_t cfg;
    plait_pki_config_default(&cfg);
    cfg.server_alt_names = "agg.example.org,127.0.0.1";
    ck_assert_int_eq(plait_pki_init_deployment(dir, &cfg), 0);
    ck_assert_uint_eq(file_mode(dir, "ca.key"), 0600);
    ck_assert_uint_eq(file_mode(dir, "server.key"), 0600);
    ck_assert_uint_eq(file_mode(dir, "ca.crt"), 0644);
    ck_assert_uint_eq(file_mode(dir, "server.crt"), 0644);
    ck_assert_uint_eq(file_mode(dir, "revoked.txt"), 0644);
    ck_assert_uint_eq(file_mode(dir, "."), 0700);
    ck_assert_int_eq(plait_pki_init_deployment(dir, &cfg), PLAIT_EBUSY);

    char p[700], *ca_crt = NULL, *srv_crt = NULL;
    snprintf(p, sizeof(p), "%s/ca.crt", dir);
    ck_assert_int_eq(plait_pki_read_file(p, &ca_crt), 0);
    snprintf(p, sizeof(p), "%s/server.crt", dir);
    ck_assert_int_eq(plait_pki_read_file(p, &srv_crt), 0);
    ck_assert_int_eq(plait_pki_verify(ca_crt, srv_crt, 0, NULL), 0);

    char *crt = NULL, *key = NULL;
    plait_pki_cert_info_t info;
    ck_assert_int_eq(plait_pki_enroll(dir, &cfg, "phone-9", &crt, &key, &info), 0);
    ck_assert_int_eq(plait_pki_verify(ca_crt, crt, 1, NULL), 0);
    snprintf(p, sizeof(p), "%s/phone-9.key", tmpdir);
    ck_assert_int_eq(plait_pki_write_file(p, key, 1), 0);
    ck_assert_uint_eq(file_mode(tmpdir, "phone-9.key"), 0600);

    char *csr = NULL, *crt2 = NULL;
    plait_pki_cert_info_t info2;
    ck_assert_int_eq(plait_pki_csr_create("phone-10", NULL, key, NULL, &csr), 0);
    ck_assert_int_eq(
        plait_pki_enroll_csr(dir, &cfg, (const uint8_t *)csr, strlen(csr), NULL, &crt2, &info2), 0);
    ck_assert_str_eq(info2.device_id, "phone-10");

    ck_assert_int_eq(plait_pki_revoke(dir, info.serial_hex, NULL), 0);
    ck_assert_int_eq(plait_pki_revoke(dir, NULL, info2.fingerprint), 0);
    ck_assert_int_eq(plait_pki_revoke(dir, NULL, NULL), PLAIT_EINVAL);
    ck_assert_int_eq(plait_pki_revoke(dir, "not-hex", NULL), PLAIT_EINVAL);
    plait_pki_revlist_t rl;
    plait_pki_revlist_init(&rl);
    snprintf(p, sizeof(p), "%s/revoked.txt", dir);
    ck_assert_int_eq(plait_pki_revlist_load(&rl, p), 0);
    ck_assert_int_eq(plait_pki_revlist_contains(&rl, &info), 1);
    ck_assert_int_eq(plait_pki_revlist_contains(&rl, &info2), 1);
    plait_pki_revlist_free(&rl);

    char empty[700];
    snprintf(empty, sizeof(empty), "%s/nothing-here", tmpdir);
    char *c3 = NULL, *k3 = NULL;
    ck_assert_int_eq(plait_pki_enroll(empty, &cfg, "x", &c3, &k3, NULL), PLAIT_ENOENT);
    ck_assert_ptr_null(c3);

    plait_pki_free_pem(csr);
    plait_pki_free_pem(crt);
    plait_pki_free_pem(crt2);
    plait_pki_free_pem(key);
    plait_pki_free_pem(ca_crt);
    plait_pki_free_pem(srv_crt);
}
END_TEST

Suite *pki_suite(void)
{
    Suite *s = suite_create("pki");
    TCase *tc = tcase_create("certificates");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_keygen);
    tcase_add_test(tc, test_config_validate);
    tcase_add_test(tc, test_ca_server_device);
    tcase_add_test(tc, test_wrong_ca_and_mismatch);
    tcase_add_test(tc, test_enrollment_record);
    tcase_add_test(tc, test_expired);
    tcase_add_test(tc, test_csr);
    suite_add_tcase(s, tc);
    TCase *tr = tcase_create("revocation_and_files");
    tcase_add_checked_fixture(tr, setup, teardown);
    tcase_set_timeout(tr, 60);
    tcase_add_test(tr, test_revlist);
    tcase_add_test(tr, test_deployment);
    suite_add_tcase(s, tr);
    return s;
}
