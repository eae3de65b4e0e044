/*
 * tls.c: mutual TLS 1.2 over memory buffers with mbedTLS 2.28.
 *
 * A session owns an mbedtls_ssl_context whose BIO callbacks read from an input
 * buffer (filled by plait_tls_feed) and append to an output buffer (drained by
 * plait_tls_pending_out/consume_out). The receive callback answers
 * MBEDTLS_ERR_SSL_WANT_READ when the input is empty, which mbedTLS passes up
 * and we turn into PLAIT_EAGAIN; the send callback always accepts (output is
 * bounded by the PLAIT_TLS_OUT_HIGH check in plait_tls_write), so mbedTLS
 * never sees WANT_WRITE and never holds a half-sent record.
 *
 * Authentication: the config pins one CA, the plait X.509 profile (P-256,
 * SHA-2) and mbedTLS's own key-usage/extended-key-usage checks (clientAuth on
 * the server side, serverAuth on the client side, MBEDTLS_X509_CHECK_*_USAGE
 * are on in Debian's build). A per-session verify callback (depth 0 only)
 * records the peer's identity, rejects a CN that is not a valid device id,
 * matches an IP-literal server name against iPAddress SANs (mbedTLS 2.28 only
 * matches DNS names) and consults the revocation hook. Failures become
 * PLAIT_EAUTH with a static reason; the mbedTLS code goes into the error
 * detail and one DEBUG log line, never key material.
 *
 * Invariants: state moves HANDSHAKE -> OPEN -> (CLOSED | FAILED) only; FAILED
 * is sticky. The session's own buffers only ever hold the bytes that cross
 * the wire (records and handshake messages), so they are not wiped: the
 * aggregator moves megabytes a round through them. Plaintext and keys live in
 * mbedTLS's record buffers and transform, which mbedtls_ssl_free() wipes.
 */
#include "plait/tls.h"

#include <arpa/inet.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <mbedtls/asn1.h>
#include <mbedtls/ecp.h>
#include <mbedtls/error.h>
#include <mbedtls/oid.h>
#include <mbedtls/platform.h>
#include <mbedtls/platform_util.h>
#include <mbedtls/ssl.h>
#include <mbedtls/ssl_internal.h> /* MBEDTLS_SSL_{IN,OUT}_BUFFER_LEN: the record buffers' sizes */
#include <mbedtls/ssl_ticket.h>
#include <mbedtls/version.h>
#include <mbedtls/x509_crt.h>
#include <pthread.h>

#include "pki_int.h"
#include "plait/crypto.h"
#include "plait/log.h"

struct plait_tls_config_s {
    mbedtls_ssl_config conf;
    mbedtls_x509_crt ca;
    mbedtls_x509_crt own;
    mbedtls_pk_context key;
    plait_drbg_t drbg;
    int endpoint;                 /* MBEDTLS_SSL_IS_SERVER / _CLIENT */
    int require_cert;             /* server: client certificate mandatory */
    char server_name[256];        /* client: expected name ("" on servers) */
    uint8_t server_ip[16];        /* client: server_name as an IP literal */
    size_t server_ip_len;         /* 0: server_name is a DNS name */
    plait_tls_revoked_cb revoked; /* server: revocation hook, may be NULL */
    void *revoked_ud;
    /* Session resumption (RFC 5077), off unless plait_tls_config_tickets(). */
    int tickets;                          /* enabled */
    mbedtls_ssl_ticket_context ticket;    /* server: ticket keys, in memory only */
    pthread_mutex_t saved_mu;             /* client: guards saved / have_saved */
    mbedtls_ssl_session saved;            /* client: the last session, offered next time */
    int have_saved;
};

enum { ST_HANDSHAKE, ST_OPEN, ST_CLOSED, ST_FAILED };

/* Giving the record buffers back (plait_tls_release_buffers) reaches into the
 * mbedtls_ssl_context of 2.28 as Debian builds it: fixed-size buffers, TLS
 * only, no connection IDs, no compression. Elsewhere it does nothing. */
#if MBEDTLS_VERSION_NUMBER >= 0x02100000 && MBEDTLS_VERSION_NUMBER < 0x03000000 && \
    !defined(MBEDTLS_SSL_VARIABLE_BUFFER_LENGTH) && !defined(MBEDTLS_SSL_DTLS_CONNECTION_ID) && \
    !defined(MBEDTLS_ZLIB_SUPPORT)
#define CAN_RELEASE 1
#else
#define CAN_RELEASE 0
#endif

/* The bytes of a record buffer that outlive a record: in TLS the 8-byte
 * sequence number sits in front of the 5-byte header, then the explicit IV,
 * so every pointer into the buffer lies within its first 29 bytes. */
#define REC_HEAD 64
enum { RP_CTR, RP_HDR, RP_LEN, RP_IV, RP_MSG, RP_N };

struct plait_tls_s {
    mbedtls_ssl_context ssl;
    plait_tls_config_t *cfg;
    uint8_t *in; /* received ciphertext: [in_off, in_len) unconsumed */
    size_t in_off, in_len, in_cap;
    uint8_t *out; /* ciphertext to send: [out_off, out_len) pending */
    size_t out_off, out_len, out_cap;
    int state;
    int err;            /* sticky PLAIT_E* once FAILED */
    const char *reason; /* static; "" until a failure */
    int have_peer;
    int peer_revoked;
    int offered;  /* client: a saved session was offered */
    int resumed;  /* the handshake resumed a session (no certificates exchanged) */
    plait_pki_cert_info_t peer;
    /* Record buffers given back: what they held between records, and where
     * mbedTLS's pointers pointed, to rebuild them. */
    int released;
    uint8_t in_head[REC_HEAD], out_head[REC_HEAD];
    uint8_t in_pos[RP_N], out_pos[RP_N];
};

/* In order of preference, both sides: mbedTLS 2.28's ChaCha20-Poly1305 seals
 * 16 KiB records 1.3-1.8x faster than its AES-128-GCM on the x86 machines
 * measured (docs/performance.md), and the aggregator seals every device's
 * downloads and opens every update. */
static const int suites[] = {
    MBEDTLS_TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
    MBEDTLS_TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
    MBEDTLS_TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
    0,
};

static const mbedtls_ecp_group_id curves[] = {
    MBEDTLS_ECP_DP_CURVE25519,
    MBEDTLS_ECP_DP_SECP256R1,
    MBEDTLS_ECP_DP_NONE,
};

static const int sig_hashes[] = {MBEDTLS_MD_SHA256, MBEDTLS_MD_SHA384, MBEDTLS_MD_NONE};

/* ---- configuration ------------------------------------------------------- */

void plait_tls_config_free(plait_tls_config_t *cfg)
{
    if (cfg == NULL) return;
    mbedtls_ssl_config_free(&cfg->conf);
    mbedtls_ssl_ticket_free(&cfg->ticket); /* wipes the ticket keys */
    mbedtls_ssl_session_free(&cfg->saved); /* wipes the master secret */
    pthread_mutex_destroy(&cfg->saved_mu);
    mbedtls_x509_crt_free(&cfg->ca);
    mbedtls_x509_crt_free(&cfg->own);
    mbedtls_pk_free(&cfg->key);
    plait_drbg_free(&cfg->drbg);
    mbedtls_platform_zeroize(cfg, sizeof(*cfg));
    free(cfg);
}

static int parse_pem_crt(mbedtls_x509_crt *crt, const char *pem, const char *what)
{
    int mrc = mbedtls_x509_crt_parse(crt, (const unsigned char *)pem, strlen(pem) + 1);
    if (mrc != 0)
        return plait_fail(PLAIT_EPROTO, "tls: %s is not a parseable certificate (mbedTLS -0x%04x)",
                          what, (unsigned)-mrc);
    return 0;
}

static int config_new(plait_tls_config_t **out, int endpoint, const char *ca_pem,
                      const char *crt_pem, const char *key_pem)
{
    *out = NULL;
    plait_tls_config_t *c = calloc(1, sizeof(*c));
    if (c == NULL) return plait_fail(PLAIT_ENOMEM, "tls: config of %zu bytes", sizeof(*c));
    mbedtls_ssl_config_init(&c->conf);
    mbedtls_x509_crt_init(&c->ca);
    mbedtls_x509_crt_init(&c->own);
    mbedtls_pk_init(&c->key);
    plait_drbg_init(&c->drbg);
    mbedtls_ssl_ticket_init(&c->ticket);
    mbedtls_ssl_session_init(&c->saved);
    pthread_mutex_init(&c->saved_mu, NULL);
    c->endpoint = endpoint;

    int rc, mrc;
    static const uint8_t pers[] = "plait-tls";
    if ((rc = plait_drbg_seed(&c->drbg, pers, sizeof(pers) - 1)) != 0) goto fail;
    if ((rc = parse_pem_crt(&c->ca, ca_pem, "CA certificate")) != 0) goto fail;
    if (crt_pem != NULL) {
        if ((rc = parse_pem_crt(&c->own, crt_pem, "own certificate")) != 0) goto fail;
        mrc = mbedtls_pk_parse_key(&c->key, (const unsigned char *)key_pem, strlen(key_pem) + 1,
                                   NULL, 0);
        if (mrc != 0) {
            rc = plait_fail(PLAIT_EPROTO, "tls: private key is not parseable (mbedTLS -0x%04x)",
                            (unsigned)-mrc);
            goto fail;
        }
        if ((mrc = mbedtls_pk_check_pair(&c->own.pk, &c->key)) != 0) {
            rc = plait_fail(PLAIT_EMISMATCH,
                            "tls: private key does not match the certificate (mbedTLS -0x%04x)",
                            (unsigned)-mrc);
            goto fail;
        }
    }
    mrc = mbedtls_ssl_config_defaults(&c->conf, endpoint, MBEDTLS_SSL_TRANSPORT_STREAM,
                                      MBEDTLS_SSL_PRESET_DEFAULT);
    if (mrc != 0) {
        rc = plait_fail(PLAIT_EINTERNAL, "tls: ssl_config_defaults (mbedTLS -0x%04x)",
                        (unsigned)-mrc);
        goto fail;
    }
    mbedtls_ssl_conf_rng(&c->conf, plait__pki_rng, &c->drbg);
    mbedtls_ssl_conf_min_version(&c->conf, MBEDTLS_SSL_MAJOR_VERSION_3,
                                 MBEDTLS_SSL_MINOR_VERSION_3);
    mbedtls_ssl_conf_max_version(&c->conf, MBEDTLS_SSL_MAJOR_VERSION_3,
                                 MBEDTLS_SSL_MINOR_VERSION_3);
    mbedtls_ssl_conf_ciphersuites(&c->conf, suites);
    mbedtls_ssl_conf_curves(&c->conf, curves);
    mbedtls_ssl_conf_sig_hashes(&c->conf, sig_hashes);
    mbedtls_ssl_conf_cert_profile(&c->conf, plait__pki_profile());
    mbedtls_ssl_conf_ca_chain(&c->conf, &c->ca, NULL);
    mbedtls_ssl_conf_authmode(&c->conf, MBEDTLS_SSL_VERIFY_REQUIRED);
    mbedtls_ssl_conf_renegotiation(&c->conf, MBEDTLS_SSL_RENEGOTIATION_DISABLED);
    mbedtls_ssl_conf_session_tickets(&c->conf, MBEDTLS_SSL_SESSION_TICKETS_DISABLED);
    if (crt_pem != NULL && (mrc = mbedtls_ssl_conf_own_cert(&c->conf, &c->own, &c->key)) != 0) {
        rc = plait_fail(PLAIT_ENOMEM, "tls: ssl_conf_own_cert (mbedTLS -0x%04x)", (unsigned)-mrc);
        goto fail;
    }
    *out = c;
    return 0;
fail:
    plait_tls_config_free(c);
    return rc;
}

int plait_tls_config_server(plait_tls_config_t **out, const char *ca_pem, const char *crt_pem,
                            const char *key_pem, int require_client_cert,
                            plait_tls_revoked_cb revoked, void *revoked_ud)
{
    if (out == NULL) return plait_fail(PLAIT_EINVAL, "tls: NULL output");
    *out = NULL;
    if (ca_pem == NULL || crt_pem == NULL || key_pem == NULL)
        return plait_fail(PLAIT_EINVAL, "tls: server needs a CA, a certificate and a key");
    int rc = config_new(out, MBEDTLS_SSL_IS_SERVER, ca_pem, crt_pem, key_pem);
    if (rc != 0) return rc;
    plait_tls_config_t *c = *out;
    /* mbedTLS would silently find no usable certificate and fail every
     * handshake with handshake_failure; say so once, here. */
    if (mbedtls_x509_crt_check_extended_key_usage(&c->own, MBEDTLS_OID_SERVER_AUTH,
                                                  MBEDTLS_OID_SIZE(MBEDTLS_OID_SERVER_AUTH)) != 0 ||
        mbedtls_x509_crt_check_key_usage(&c->own, MBEDTLS_X509_KU_DIGITAL_SIGNATURE) != 0) {
        plait_tls_config_free(c);
        *out = NULL;
        return plait_fail(
            PLAIT_EINVAL,
            "tls: the server certificate is not issued for serverAuth/digitalSignature");
    }
    c->require_cert = require_client_cert != 0;
    c->revoked = revoked;
    c->revoked_ud = revoked_ud;
    /* OPTIONAL lets a certificate-less client through mbedTLS; plait then
     * still refuses any certificate that was presented and failed. */
    mbedtls_ssl_conf_authmode(&c->conf, c->require_cert ? MBEDTLS_SSL_VERIFY_REQUIRED
                                                        : MBEDTLS_SSL_VERIFY_OPTIONAL);
    return 0;
}

int plait_tls_config_client(plait_tls_config_t **out, const char *ca_pem, const char *crt_pem,
                            const char *key_pem, const char *server_name)
{
    if (out == NULL) return plait_fail(PLAIT_EINVAL, "tls: NULL output");
    *out = NULL;
    if (ca_pem == NULL || server_name == NULL || server_name[0] == '\0' ||
        (crt_pem == NULL) != (key_pem == NULL))
        return plait_fail(PLAIT_EINVAL,
                          "tls: client needs a CA, a server name, and a certificate with its key");
    size_t n = strlen(server_name);
    if (n >= sizeof(((plait_tls_config_t *)0)->server_name))
        return plait_fail(PLAIT_EINVAL, "tls: server name too long");
    int rc = config_new(out, MBEDTLS_SSL_IS_CLIENT, ca_pem, crt_pem, key_pem);
    if (rc != 0) return rc;
    plait_tls_config_t *c = *out;
    memcpy(c->server_name, server_name, n + 1);
    if (inet_pton(AF_INET, server_name, c->server_ip) == 1)
        c->server_ip_len = 4;
    else if (inet_pton(AF_INET6, server_name, c->server_ip) == 1)
        c->server_ip_len = 16;
    return 0;
}

int plait_tls_config_tickets(plait_tls_config_t *cfg, uint32_t lifetime_s)
{
    if (cfg == NULL) return plait_fail(PLAIT_EINVAL, "tls: NULL config");
    if (cfg->tickets) return 0;
    if (cfg->endpoint == MBEDTLS_SSL_IS_SERVER) {
        if (lifetime_s < 1 || lifetime_s > 7 * 86400)
            return plait_fail(PLAIT_EINVAL, "tls: ticket lifetime %u s is not in 1..604800", (unsigned)lifetime_s);
        /* Fresh random keys, held only in this process: a restart ends every
         * ticket, and mbedTLS rotates the key each lifetime. */
        int mrc = mbedtls_ssl_ticket_setup(&cfg->ticket, plait__pki_rng, &cfg->drbg, MBEDTLS_CIPHER_AES_256_GCM,
                                           lifetime_s);
        if (mrc != 0)
            return plait_fail(PLAIT_EINTERNAL, "tls: ticket keys (mbedTLS -0x%04x)", (unsigned)-mrc);
        mbedtls_ssl_conf_session_tickets_cb(&cfg->conf, mbedtls_ssl_ticket_write, mbedtls_ssl_ticket_parse,
                                            &cfg->ticket);
    }
    mbedtls_ssl_conf_session_tickets(&cfg->conf, MBEDTLS_SSL_SESSION_TICKETS_ENABLED);
    cfg->tickets = 1;
    return 0;
}

void plait_tls_config_forget_session(plait_tls_config_t *cfg)
{
    if (cfg == NULL) return;
    pthread_mutex_lock(&cfg->saved_mu);
    mbedtls_ssl_session_free(&cfg->saved);
    mbedtls_ssl_session_init(&cfg->saved);
    cfg->have_saved = 0;
    pthread_mutex_unlock(&cfg->saved_mu);
}

typedef struct {
    char *ca, *crt, *key;
} pems_t;

static void pems_free(pems_t *p)
{
    plait_pki_free_pem(p->ca);
    plait_pki_free_pem(p->crt);
    plait_pki_free_pem(p->key); /* wiped: it is a private key */
}

static int pems_read(pems_t *p, const char *ca, const char *crt, const char *key)
{
    memset(p, 0, sizeof(*p));
    int rc = plait_pki_read_file(ca, &p->ca);
    if (rc == 0) rc = plait_pki_read_file(crt, &p->crt);
    if (rc == 0) rc = plait_pki_read_file(key, &p->key);
    return rc;
}

int plait_tls_config_server_dir(plait_tls_config_t **out, const char *dir,
                                plait_tls_revoked_cb revoked, void *revoked_ud)
{
    if (out == NULL || dir == NULL) return plait_fail(PLAIT_EINVAL, "tls: NULL argument");
    *out = NULL;
    char ca[4096], crt[4096], key[4096];
    if (snprintf(ca, sizeof(ca), "%s/ca.crt", dir) >= (int)sizeof(ca))
        return plait_fail(PLAIT_EINVAL, "tls: path too long");
    snprintf(crt, sizeof(crt), "%s/server.crt", dir);
    snprintf(key, sizeof(key), "%s/server.key", dir);
    pems_t p;
    int rc = pems_read(&p, ca, crt, key);
    if (rc == 0) rc = plait_tls_config_server(out, p.ca, p.crt, p.key, 1, revoked, revoked_ud);
    pems_free(&p);
    return rc;
}

int plait_tls_config_client_files(plait_tls_config_t **out, const char *ca_path,
                                  const char *crt_path, const char *key_path,
                                  const char *server_name)
{
    if (out == NULL || ca_path == NULL || crt_path == NULL || key_path == NULL)
        return plait_fail(PLAIT_EINVAL, "tls: NULL argument");
    *out = NULL;
    pems_t p;
    int rc = pems_read(&p, ca_path, crt_path, key_path);
    if (rc == 0) rc = plait_tls_config_client(out, p.ca, p.crt, p.key, server_name);
    pems_free(&p);
    return rc;
}

/* ---- BIO over the session's buffers -------------------------------------- */

/* An emptied buffer is given back, so that an idle session holds no
 * ciphertext buffer at all: a server with a big cohort keeps N sessions, and
 * 64 KiB kept by each was 64 MiB at N = 1,000. The next bytes get a buffer of
 * their size in one allocation (grow() from NULL copies nothing), or of the
 * size plait_tls_reserve_out() announced. */
static void shrink(uint8_t **buf, size_t *cap)
{
    free(*buf);
    *buf = NULL;
    *cap = 0;
}

static int bio_recv(void *p, unsigned char *buf, size_t len)
{
    plait_tls_t *s = p;
    size_t avail = s->in_len - s->in_off;
    if (avail == 0) return MBEDTLS_ERR_SSL_WANT_READ;
    size_t n = len < avail ? len : avail;
    if (n > INT_MAX) n = INT_MAX;
    memcpy(buf, s->in + s->in_off, n);
    s->in_off += n;
    if (s->in_off == s->in_len) {
        s->in_off = s->in_len = 0;
        shrink(&s->in, &s->in_cap);
    }
    return (int)n;
}

/* Room for need bytes, of which the first used are kept. An empty buffer is
 * made at need (rounded to 4 KiB, or to 256 bytes below that: a waiting
 * connection holds a few hundred bytes) in one allocation; a growing one doubles. */
static int grow(uint8_t **buf, size_t *cap, size_t used, size_t need)
{
    if (need <= *cap) return 0;
    size_t c = need < 4096 ? (need + 255) & ~(size_t)255 : (need + 4095) & ~(size_t)4095;
    if (*cap > 0 && c < 2 * *cap) c = 2 * *cap;
    uint8_t *p = malloc(c);
    if (p == NULL) return -1;
    if (*buf != NULL) {
        if (used > 0) memcpy(p, *buf, used);
        free(*buf);
    }
    *buf = p;
    *cap = c;
    return 0;
}

static int bio_send(void *p, const unsigned char *buf, size_t len)
{
    plait_tls_t *s = p;
    if (len > INT_MAX) len = INT_MAX;
    if (s->out_off > 0) { /* compact: pending bytes move to the front */
        memmove(s->out, s->out + s->out_off, s->out_len - s->out_off);
        s->out_len -= s->out_off;
        s->out_off = 0;
    }
    if (grow(&s->out, &s->out_cap, s->out_len, s->out_len + len) != 0) return MBEDTLS_ERR_SSL_ALLOC_FAILED;
    memcpy(s->out + s->out_len, buf, len);
    s->out_len += len;
    return (int)len;
}

/* ---- certificate checks --------------------------------------------------- */

/* Does crt carry iPAddress SAN ip? mbedTLS 2.28 keeps every SAN entry with its
 * tag in subject_alt_names but compares only DNS names. */
static int san_has_ip(const mbedtls_x509_crt *crt, const uint8_t *ip, size_t ip_len)
{
    for (const mbedtls_x509_sequence *cur = &crt->subject_alt_names; cur != NULL; cur = cur->next) {
        if (cur->buf.p == NULL) continue;
        if (cur->buf.tag == (MBEDTLS_ASN1_CONTEXT_SPECIFIC | 7) && cur->buf.len == ip_len &&
            memcmp(cur->buf.p, ip, ip_len) == 0)
            return 1;
    }
    return 0;
}

static int on_verify(void *p, mbedtls_x509_crt *crt, int depth, uint32_t *flags)
{
    plait_tls_t *s = p;
    if (depth != 0) return 0;
    plait_pki_cert_info_t info;
    if (plait_pki_cert_info(crt->raw.p, crt->raw.len, &info) != 0) {
        *flags |= MBEDTLS_X509_BADCERT_OTHER;
        return 0;
    }
    s->peer = info;
    s->have_peer = 1;
    if (!plait_pki_device_id_valid(info.device_id)) *flags |= MBEDTLS_X509_BADCERT_OTHER;
    const plait_tls_config_t *c = s->cfg;
    if (c->server_ip_len > 0 && !san_has_ip(crt, c->server_ip, c->server_ip_len))
        *flags |= MBEDTLS_X509_BADCERT_CN_MISMATCH;
    if (c->revoked != NULL && c->revoked(c->revoked_ud, &info) != 0) {
        *flags |= MBEDTLS_X509_BADCERT_REVOKED;
        s->peer_revoked = 1;
    }
    return 0;
}

/* ---- sessions ------------------------------------------------------------- */

int plait_tls_new(plait_tls_t **out, plait_tls_config_t *cfg)
{
    if (out == NULL || cfg == NULL) return plait_fail(PLAIT_EINVAL, "tls: NULL argument");
    *out = NULL;
    plait_tls_t *s = calloc(1, sizeof(*s));
    if (s == NULL) return plait_fail(PLAIT_ENOMEM, "tls: session of %zu bytes", sizeof(*s));
    mbedtls_ssl_init(&s->ssl);
    s->cfg = cfg;
    s->reason = "";
    int mrc = mbedtls_ssl_setup(&s->ssl, &cfg->conf);
    if (mrc == 0 && cfg->endpoint == MBEDTLS_SSL_IS_CLIENT && cfg->server_ip_len == 0)
        mrc = mbedtls_ssl_set_hostname(&s->ssl, cfg->server_name);
    if (mrc != 0) {
        plait_tls_free(s);
        return plait_fail(mrc == MBEDTLS_ERR_SSL_ALLOC_FAILED ? PLAIT_ENOMEM : PLAIT_EINVAL,
                          "tls: session setup (mbedTLS -0x%04x)", (unsigned)-mrc);
    }
    mbedtls_ssl_set_bio(&s->ssl, s, bio_send, bio_recv, NULL);
    mbedtls_ssl_set_verify(&s->ssl, on_verify, s);
    if (cfg->endpoint == MBEDTLS_SSL_IS_CLIENT && cfg->tickets) {
        pthread_mutex_lock(&cfg->saved_mu);
        /* A session that cannot be set (expired, corrupt) only costs the
         * resumption: the handshake is then a full one. */
        if (cfg->have_saved && mbedtls_ssl_set_session(&s->ssl, &cfg->saved) == 0) s->offered = 1;
        pthread_mutex_unlock(&cfg->saved_mu);
    }
    *out = s;
    return 0;
}

void plait_tls_free(plait_tls_t *s)
{
    if (s == NULL) return;
    mbedtls_ssl_free(&s->ssl);
    free(s->in);
    free(s->out);
    mbedtls_platform_zeroize(s, sizeof(*s));
    free(s);
}

/* ---- record buffers given back while idle --------------------------------- */

/* A server keeps what it took from the peer's certificate (s->peer), not the
 * certificate mbedTLS keeps in the session for its whole life (1.8 KB of a
 * 4 KB idle session): once the handshake is over nothing reads it (its
 * ticket, if any, was sealed during the handshake; no renegotiation). */
static void drop_peer_cert(plait_tls_t *s)
{
#if defined(MBEDTLS_SSL_KEEP_PEER_CERTIFICATE) && MBEDTLS_VERSION_NUMBER < 0x03000000
    mbedtls_ssl_session *ss = s->ssl.session;
    if (ss == NULL || ss->peer_cert == NULL) return;
    mbedtls_x509_crt_free(ss->peer_cert);
    mbedtls_free(ss->peer_cert);
    ss->peer_cert = NULL;
#else
    (void)s;
#endif
}

static int sticky(const plait_tls_t *s)
{
    return plait_fail(s->err, "tls: session already failed: %s", s->reason);
}

#if CAN_RELEASE
static void rec_ptrs(mbedtls_ssl_context *ssl, unsigned char **in[RP_N], unsigned char **out[RP_N])
{
    in[RP_CTR] = &ssl->in_ctr, in[RP_HDR] = &ssl->in_hdr, in[RP_LEN] = &ssl->in_len;
    in[RP_IV] = &ssl->in_iv, in[RP_MSG] = &ssl->in_msg;
    out[RP_CTR] = &ssl->out_ctr, out[RP_HDR] = &ssl->out_hdr, out[RP_LEN] = &ssl->out_len;
    out[RP_IV] = &ssl->out_iv, out[RP_MSG] = &ssl->out_msg;
}

/* Offsets of the pointers into buf, or -1 when one is not within its head. */
static int rec_offsets(unsigned char *buf, unsigned char **p[RP_N], uint8_t pos[RP_N])
{
    for (int i = 0; i < RP_N; i++) {
        if (*p[i] == NULL || *p[i] < buf || *p[i] >= buf + REC_HEAD) return -1;
        pos[i] = (uint8_t)(*p[i] - buf);
        if (i > 0 && pos[i] < pos[i - 1]) return -1; /* counter, header, length, IV, message: in that order */
    }
    return 0;
}
#endif

int plait_tls_release_buffers(plait_tls_t *s)
{
#if CAN_RELEASE
    if (s == NULL) return 0;
    if (s->released) return 1;
    mbedtls_ssl_context *ssl = &s->ssl;
    if (ssl->in_buf == NULL || ssl->out_buf == NULL) return 0;
    /* A failed session makes no more records (every call answers its error
     * first), so whatever its buffers hold goes. Otherwise nothing may live
     * past the head: no partial record read or unsent, no plaintext unread, no
     * second handshake message behind the current one. */
    unsigned char **in[RP_N], **out[RP_N];
    rec_ptrs(ssl, in, out);
    if (s->state != ST_FAILED) {
        if (ssl->in_left != 0 || ssl->out_left != 0 || ssl->in_offt != NULL || ssl->keep_current_message ||
            mbedtls_ssl_check_pending(ssl) || (ssl->in_hslen != 0 && ssl->in_hslen != ssl->in_msglen))
            return 0;
        if (rec_offsets(ssl->in_buf, in, s->in_pos) != 0 || rec_offsets(ssl->out_buf, out, s->out_pos) != 0)
            return 0;
    }
    /* Only what lies before the message is kept (sequence number, header,
     * explicit IV), not the start of the last record's plaintext. A failed
     * session is never woken: nothing is kept. */
    if (s->state != ST_FAILED) {
        memcpy(s->in_head, ssl->in_buf, s->in_pos[RP_MSG]);
        memcpy(s->out_head, ssl->out_buf, s->out_pos[RP_MSG]);
    }
    /* They held the last records' plaintext: wiped, as mbedtls_ssl_free() would. */
    mbedtls_platform_zeroize(ssl->in_buf, MBEDTLS_SSL_IN_BUFFER_LEN);
    mbedtls_platform_zeroize(ssl->out_buf, MBEDTLS_SSL_OUT_BUFFER_LEN);
    mbedtls_free(ssl->in_buf);
    mbedtls_free(ssl->out_buf);
    ssl->in_buf = ssl->out_buf = NULL;
    for (int i = 0; i < RP_N; i++) *in[i] = *out[i] = NULL;
    s->released = 1;
    return 1;
#else
    (void)s;
    return 0;
#endif
}

int plait_tls_buffers_released(const plait_tls_t *s) { return s != NULL && s->released; }

size_t plait_tls_avail(const plait_tls_t *s)
{
    if (s == NULL || s->released || s->state != ST_OPEN) return 0;
    return mbedtls_ssl_get_bytes_avail(&s->ssl);
}

/* Before any call into mbedTLS that may touch a record: the buffers back,
 * as they were. A session that cannot get them fails (sticky). */
static int wake(plait_tls_t *s)
{
#if CAN_RELEASE
    if (!s->released) return 0;
    mbedtls_ssl_context *ssl = &s->ssl;
    unsigned char *ib = mbedtls_calloc(1, MBEDTLS_SSL_IN_BUFFER_LEN), *ob = mbedtls_calloc(1, MBEDTLS_SSL_OUT_BUFFER_LEN);
    if (ib == NULL || ob == NULL) {
        mbedtls_free(ib);
        mbedtls_free(ob);
        s->state = ST_FAILED;
        s->err = PLAIT_ENOMEM;
        s->reason = "out of memory";
        return plait_fail(PLAIT_ENOMEM, "tls: record buffers of %d bytes", (int)MBEDTLS_SSL_IN_BUFFER_LEN);
    }
    memcpy(ib, s->in_head, s->in_pos[RP_MSG]);
    memcpy(ob, s->out_head, s->out_pos[RP_MSG]);
    mbedtls_platform_zeroize(s->in_head, REC_HEAD);
    mbedtls_platform_zeroize(s->out_head, REC_HEAD);
    unsigned char **in[RP_N], **out[RP_N];
    rec_ptrs(ssl, in, out);
    ssl->in_buf = ib;
    ssl->out_buf = ob;
    for (int i = 0; i < RP_N; i++) {
        *in[i] = ib + s->in_pos[i];
        *out[i] = ob + s->out_pos[i];
    }
    s->released = 0;
#else
    (void)s;
#endif
    return 0;
}

int plait_tls_feed(plait_tls_t *s, const uint8_t *buf, size_t len)
{
    if (s == NULL || (buf == NULL && len > 0))
        return plait_fail(PLAIT_EINVAL, "tls: NULL argument");
    if (len == 0) return 0;
    size_t unconsumed = s->in_len - s->in_off;
    if (len > PLAIT_TLS_IN_MAX || unconsumed + len > PLAIT_TLS_IN_MAX)
        return plait_fail(PLAIT_ETOOBIG, "tls: %zu bytes of input would wait unconsumed (limit %d)",
                          unconsumed + len, PLAIT_TLS_IN_MAX);
    if (s->in_off > 0) { /* compact: keep the unconsumed tail at the front */
        memmove(s->in, s->in + s->in_off, unconsumed);
        s->in_off = 0;
        s->in_len = unconsumed;
    }
    if (grow(&s->in, &s->in_cap, s->in_len, s->in_len + len) != 0)
        return plait_fail(PLAIT_ENOMEM, "tls: input buffer of %zu bytes", s->in_len + len);
    memcpy(s->in + s->in_len, buf, len);
    s->in_len += len;
    return 0;
}

size_t plait_tls_pending_out(const plait_tls_t *s, const uint8_t **buf)
{
    if (s == NULL) return 0;
    if (buf != NULL) *buf = s->out != NULL ? s->out + s->out_off : NULL;
    return s->out_len - s->out_off;
}

size_t plait_tls_take_out(plait_tls_t *s, uint8_t **mem, const uint8_t **buf)
{
    *mem = NULL;
    *buf = NULL;
    if (s == NULL || s->out_len == s->out_off) return 0;
    size_t n = s->out_len - s->out_off;
    *mem = s->out;
    *buf = s->out + s->out_off;
    s->out = NULL;
    s->out_off = s->out_len = s->out_cap = 0;
    return n;
}

int plait_tls_reserve_out(plait_tls_t *s, size_t len)
{
    if (s == NULL) return plait_fail(PLAIT_EINVAL, "tls: NULL session");
    if (s->state == ST_FAILED) return sticky(s);
    /* mbedTLS computes the expansion from its record pointers, which a session
     * whose buffers are given back does not have: the same generous bound as
     * before the handshake (a TLS 1.2 AEAD record adds at most 29 bytes). */
    int exp = s->released ? 64 : mbedtls_ssl_get_record_expansion(&s->ssl);
    if (exp < 0) exp = 64;
    if (len > PLAIT_TLS_OUT_HIGH + 16384) len = PLAIT_TLS_OUT_HIGH + 16384; /* what one write can add */
    size_t need = len + (len / 16384 + 1) * (size_t)exp;
    size_t pending = s->out_len - s->out_off;
    if (s->out_off > 0 && pending > 0) { /* compact first, as bio_send would */
        memmove(s->out, s->out + s->out_off, pending);
        s->out_len = pending;
        s->out_off = 0;
    } else if (pending == 0) {
        s->out_off = s->out_len = 0;
    }
    if (grow(&s->out, &s->out_cap, s->out_len, s->out_len + need) != 0)
        return plait_fail(PLAIT_ENOMEM, "tls: output buffer of %zu bytes", s->out_len + need);
    return 0;
}

void plait_tls_consume_out(plait_tls_t *s, size_t n)
{
    if (s == NULL) return;
    size_t pending = s->out_len - s->out_off;
    PLAIT_ASSERT(n <= pending);
    s->out_off += n;
    if (s->out_off == s->out_len) {
        s->out_off = s->out_len = 0;
        shrink(&s->out, &s->out_cap);
    }
}

/* Alert descriptions (RFC 5246 7.2) that mean "your certificate was refused". */
static int alert_is_auth(unsigned char a)
{
    return a == MBEDTLS_SSL_ALERT_MSG_BAD_CERT || a == MBEDTLS_SSL_ALERT_MSG_UNSUPPORTED_CERT ||
           a == MBEDTLS_SSL_ALERT_MSG_CERT_REVOKED || a == MBEDTLS_SSL_ALERT_MSG_CERT_EXPIRED ||
           a == MBEDTLS_SSL_ALERT_MSG_CERT_UNKNOWN || a == MBEDTLS_SSL_ALERT_MSG_UNKNOWN_CA ||
           a == MBEDTLS_SSL_ALERT_MSG_ACCESS_DENIED || a == MBEDTLS_SSL_ALERT_MSG_NO_CERT ||
           a == MBEDTLS_SSL_ALERT_MSG_DECRYPT_ERROR;
}

static const char *alert_reason(unsigned char a)
{
    switch (a) {
    case MBEDTLS_SSL_ALERT_MSG_CERT_REVOKED:
        return "peer refused our certificate: revoked";
    case MBEDTLS_SSL_ALERT_MSG_CERT_EXPIRED:
        return "peer refused our certificate: expired";
    case MBEDTLS_SSL_ALERT_MSG_UNKNOWN_CA:
        return "peer refused our certificate: unknown CA";
    case MBEDTLS_SSL_ALERT_MSG_UNSUPPORTED_CERT:
        return "peer refused our certificate: wrong usage";
    case MBEDTLS_SSL_ALERT_MSG_HANDSHAKE_FAILURE:
        return "peer aborted the handshake (no common parameters)";
    case MBEDTLS_SSL_ALERT_MSG_BAD_RECORD_MAC:
        return "peer reported a record that failed authentication";
    case MBEDTLS_SSL_ALERT_MSG_DECRYPT_ERROR:
        return "peer could not verify our handshake signature or transcript";
    default:
        return alert_is_auth(a) ? "peer refused our certificate" : "peer sent a fatal alert";
    }
}

/* Translate an mbedTLS failure into the sticky session error. */
static int fail(plait_tls_t *s, int mrc, const char *during)
{
    int code = PLAIT_EPROTO;
    const char *why = "TLS protocol error";
    switch (mrc) {
    case MBEDTLS_ERR_X509_CERT_VERIFY_FAILED: {
        uint32_t flags = mbedtls_ssl_get_verify_result(&s->ssl);
        if (s->peer_revoked) flags |= MBEDTLS_X509_BADCERT_REVOKED;
        code = PLAIT_EAUTH;
        why = plait__pki_flags_reason(flags);
        break;
    }
    case MBEDTLS_ERR_SSL_BAD_HS_CERTIFICATE: {
        /* mbedTLS reports a chain that verified but whose key usage or
         * extended key usage is wrong for the role this way. */
        uint32_t flags = mbedtls_ssl_get_verify_result(&s->ssl);
        if (flags != 0 && flags != (uint32_t)-1) {
            code = PLAIT_EAUTH;
            why = plait__pki_flags_reason(flags);
        } else {
            why = "malformed certificate message";
        }
        break;
    }
    case MBEDTLS_ERR_SSL_NO_CLIENT_CERTIFICATE:
        code = PLAIT_EAUTH;
        why = "peer sent no certificate";
        break;
    case MBEDTLS_ERR_SSL_INVALID_MAC:
        code = PLAIT_EAUTH;
        why = "record failed authentication (tampered or corrupted)";
        break;
    case MBEDTLS_ERR_SSL_FATAL_ALERT_MESSAGE: {
        /* mbedTLS 2.28 has no getter; the alert is still in the record buffer. */
        unsigned char a = s->ssl.in_msg != NULL ? s->ssl.in_msg[1] : 0;
        code = alert_is_auth(a) ? PLAIT_EAUTH : PLAIT_EPROTO;
        why = alert_reason(a);
        break;
    }
    case MBEDTLS_ERR_SSL_NO_USABLE_CIPHERSUITE:
    case MBEDTLS_ERR_SSL_BAD_HS_PROTOCOL_VERSION:
        why = "no common TLS version, cipher suite or curve";
        break;
    case MBEDTLS_ERR_SSL_ALLOC_FAILED:
        code = PLAIT_ENOMEM;
        why = "out of memory";
        break;
    case MBEDTLS_ERR_SSL_INVALID_RECORD:
        why = "malformed TLS record";
        break;
    case MBEDTLS_ERR_SSL_UNEXPECTED_MESSAGE:
        why = "unexpected TLS message";
        break;
    case MBEDTLS_ERR_SSL_BAD_HS_CLIENT_HELLO:
        why = "malformed ClientHello";
        break;
    case MBEDTLS_ERR_SSL_FEATURE_UNAVAILABLE:
        why = "peer asked for an unsupported TLS feature";
        break;
    case MBEDTLS_ERR_ECP_VERIFY_FAILED:
    case MBEDTLS_ERR_PK_SIG_LEN_MISMATCH:
    case MBEDTLS_ERR_SSL_BAD_HS_FINISHED:
        /* A handshake signature or the Finished transcript MAC did not
         * verify: the messages were altered or the peer lacks its key. */
        code = PLAIT_EAUTH;
        why = "handshake signature or transcript does not verify";
        break;
    default:
        /* Parse errors of a certificate in the peer's Certificate message
         * come up as X.509 (-0x2xxx) or PK (-0x3xxx) codes. */
        if (mrc <= -0x2000 && mrc > -0x4000) why = "malformed certificate";
        break;
    }
    s->state = ST_FAILED;
    s->err = code;
    s->reason = why;
    PLAIT_LOG(PLAIT_LOG_DEBUG, "tls: %s failed: %s (mbedTLS -0x%04x)", during, why, (unsigned)-mrc);
    return plait_fail(code, "tls: %s: %s (mbedTLS -0x%04x)", during, why, (unsigned)-mrc);
}

/* Fail an established handshake for an authentication reason: tell the
 * peer with a fatal alert, make the error sticky. */
static int fail_auth(plait_tls_t *s, unsigned char alert, const char *why)
{
    (void)mbedtls_ssl_send_alert_message(&s->ssl, MBEDTLS_SSL_ALERT_LEVEL_FATAL, alert);
    s->state = ST_FAILED;
    s->err = PLAIT_EAUTH;
    s->reason = why;
    PLAIT_LOG(PLAIT_LOG_DEBUG, "tls: resumed handshake failed: %s", why);
    return plait_fail(PLAIT_EAUTH, "tls: handshake: %s", why);
}

/* The peer of a resumed session: its certificate from the session state,
 * checked again for expiry and revocation (a device revoked since its ticket
 * was issued must not get back in through the ticket). */
static int resumed_peer(plait_tls_t *s)
{
    const mbedtls_x509_crt *crt = mbedtls_ssl_get_peer_cert(&s->ssl);
    if (crt == NULL) {
        if (s->cfg->endpoint == MBEDTLS_SSL_IS_SERVER && !s->cfg->require_cert) return 0;
        return fail_auth(s, MBEDTLS_SSL_ALERT_MSG_HANDSHAKE_FAILURE, "resumed session holds no certificate");
    }
    s->resumed = 1;
    plait_pki_cert_info_t info;
    if (plait_pki_cert_info(crt->raw.p, crt->raw.len, &info) != 0 || !plait_pki_device_id_valid(info.device_id))
        return fail_auth(s, MBEDTLS_SSL_ALERT_MSG_BAD_CERT, "malformed certificate");
    s->peer = info;
    s->have_peer = 1;
    if (mbedtls_x509_time_is_past(&crt->valid_to))
        return fail_auth(s, MBEDTLS_SSL_ALERT_MSG_CERT_EXPIRED, "certificate expired");
    const plait_tls_config_t *c = s->cfg;
    if (c->endpoint == MBEDTLS_SSL_IS_SERVER && c->revoked != NULL && c->revoked(c->revoked_ud, &info) != 0) {
        s->peer_revoked = 1;
        return fail_auth(s, MBEDTLS_SSL_ALERT_MSG_CERT_REVOKED, "certificate revoked");
    }
    return 0;
}

/* Keep the client's session (with a fresh ticket when the server sent one)
 * for the next connection of this config. Each handshake replaces the saved
 * session; mbedTLS 2.28 servers keep the same ticket on resumption, so the
 * ticket links connections as the certificate of a full handshake does. */
static void save_session(plait_tls_t *s)
{
    plait_tls_config_t *c = s->cfg;
    pthread_mutex_lock(&c->saved_mu);
    mbedtls_ssl_session_free(&c->saved);
    mbedtls_ssl_session_init(&c->saved);
    c->have_saved = mbedtls_ssl_get_session(&s->ssl, &c->saved) == 0;
    pthread_mutex_unlock(&c->saved_mu);
}

int plait_tls_handshake(plait_tls_t *s)
{
    if (s == NULL) return plait_fail(PLAIT_EINVAL, "tls: NULL session");
    if (s->state == ST_FAILED) return sticky(s);
    if (s->state != ST_HANDSHAKE) return 0;
    if (wake(s) != 0) return PLAIT_ENOMEM;
    int mrc = mbedtls_ssl_handshake(&s->ssl);
    if (mrc == MBEDTLS_ERR_SSL_WANT_READ || mrc == MBEDTLS_ERR_SSL_WANT_WRITE) return PLAIT_EAGAIN;
    if (mrc != 0) return fail(s, mrc, "handshake");
    if (!s->have_peer && (s->cfg->endpoint == MBEDTLS_SSL_IS_CLIENT ? s->offered : s->cfg->tickets)) {
        /* No certificate went through on_verify: an abbreviated handshake
         * resumed a session whose certificates were verified when it was
         * made. The peer certificate travels inside the (encrypted) ticket;
         * its dates and the revocation list are checked again now. */
        int rc = resumed_peer(s);
        if (rc != 0) return rc;
    }
    if (!s->have_peer && s->cfg->require_cert) {
        /* Unreachable with VERIFY_REQUIRED; kept so a future change cannot
         * open an unauthenticated session silently. */
        s->state = ST_FAILED;
        s->err = PLAIT_EAUTH;
        s->reason = "peer sent no certificate";
        return plait_fail(PLAIT_EAUTH, "tls: handshake: %s", s->reason);
    }
    if (s->have_peer && mbedtls_ssl_get_verify_result(&s->ssl) != 0) {
        /* VERIFY_OPTIONAL server: a presented certificate must still verify.
         * mbedTLS finished the handshake, so tell the peer ourselves. */
        (void)mbedtls_ssl_send_alert_message(&s->ssl, MBEDTLS_SSL_ALERT_LEVEL_FATAL,
                                             MBEDTLS_SSL_ALERT_MSG_BAD_CERT);
        return fail(s, MBEDTLS_ERR_X509_CERT_VERIFY_FAILED, "handshake");
    }
    if (s->cfg->endpoint == MBEDTLS_SSL_IS_CLIENT && s->cfg->tickets) save_session(s);
    if (s->cfg->endpoint == MBEDTLS_SSL_IS_SERVER) drop_peer_cert(s);
    s->state = ST_OPEN;
    return 0;
}

int plait_tls_resumed(const plait_tls_t *s) { return s != NULL && s->resumed; }

int plait_tls_established(const plait_tls_t *s)
{
    return s != NULL && (s->state == ST_OPEN || s->state == ST_CLOSED);
}

int plait_tls_read(plait_tls_t *s, uint8_t *buf, size_t cap)
{
    if (s == NULL || buf == NULL || cap == 0)
        return plait_fail(PLAIT_EINVAL, "tls: bad read arguments");
    int rc = plait_tls_handshake(s);
    if (rc != 0) return rc;
    if (s->state == ST_CLOSED) return 0;
    if (wake(s) != 0) return PLAIT_ENOMEM;
    if (cap > INT_MAX) cap = INT_MAX;
    int mrc = mbedtls_ssl_read(&s->ssl, buf, cap);
    if (mrc > 0) return mrc;
    if (mrc == MBEDTLS_ERR_SSL_WANT_READ || mrc == MBEDTLS_ERR_SSL_WANT_WRITE || mrc == 0)
        return PLAIT_EAGAIN;
    if (mrc == MBEDTLS_ERR_SSL_PEER_CLOSE_NOTIFY) {
        s->state = ST_CLOSED;
        return 0;
    }
    return fail(s, mrc, "read");
}

int plait_tls_write(plait_tls_t *s, const uint8_t *buf, size_t len)
{
    if (s == NULL || buf == NULL || len == 0)
        return plait_fail(PLAIT_EINVAL, "tls: bad write arguments");
    int rc = plait_tls_handshake(s);
    if (rc != 0) return rc;
    if (s->state == ST_CLOSED)
        return plait_fail(PLAIT_EIO, "tls: write after the peer closed the session");
    if (wake(s) != 0) return PLAIT_ENOMEM;
    if (len > INT_MAX) len = INT_MAX;
    size_t done = 0;
    while (done < len && plait_tls_pending_out(s, NULL) < PLAIT_TLS_OUT_HIGH) {
        int mrc = mbedtls_ssl_write(&s->ssl, buf + done, len - done);
        if (mrc == MBEDTLS_ERR_SSL_WANT_READ || mrc == MBEDTLS_ERR_SSL_WANT_WRITE || mrc == 0)
            break;
        if (mrc < 0) return fail(s, mrc, "write");
        done += (size_t)mrc;
    }
    return done > 0 ? (int)done : PLAIT_EAGAIN;
}

int plait_tls_close_notify(plait_tls_t *s)
{
    if (s == NULL) return plait_fail(PLAIT_EINVAL, "tls: NULL session");
    if (s->state == ST_FAILED) return sticky(s);
    if (s->state == ST_HANDSHAKE) return 0;
    if (wake(s) != 0) return PLAIT_ENOMEM;
    int mrc = mbedtls_ssl_close_notify(&s->ssl);
    if (mrc != 0 && mrc != MBEDTLS_ERR_SSL_WANT_WRITE && mrc != MBEDTLS_ERR_SSL_WANT_READ)
        return fail(s, mrc, "close_notify");
    return 0;
}

const plait_pki_cert_info_t *plait_tls_peer(const plait_tls_t *s)
{
    if (s == NULL || !plait_tls_established(s) || !s->have_peer) return NULL;
    return &s->peer;
}

const char *plait_tls_reason(const plait_tls_t *s)
{
    return s != NULL ? s->reason : "";
}

const char *plait_tls_ciphersuite(const plait_tls_t *s)
{
    if (s == NULL || !plait_tls_established(s)) return "";
    const char *name = mbedtls_ssl_get_ciphersuite(&s->ssl);
    return name != NULL ? name : "";
}
