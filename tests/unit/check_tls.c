/*
 * check_tls.c: mutual TLS sessions pumped in memory (client and server in one
 * process, bytes moved by hand), then over a socketpair and over 127.0.0.1
 * with blocking I/O in two threads. Negative cases: a device certificate from
 * another CA, an expired one, a revoked one, none at all, a certificate with
 * the wrong extended key usage on either side, a server certificate for a
 * different name or IP, a tampered record, garbage input, and input beyond
 * the feed limit. Each must end in the documented code and reason.
 *
 * Certificates are made once per process (unchecked fixture) and shared by
 * the forked tests. TLS_DEBUG=1 prints each tampered-handshake outcome and
 * the session's DEBUG log lines (reason and mbedTLS code).
 */
#include <arpa/inet.h>
#include <check.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <mbedtls/config.h>
#include <mbedtls/version.h>

#include "plait/log.h"
#include "plait/pki.h"
#include "plait/tls.h"
#include "testutil.h"

typedef struct {
    char *crt, *key;
    plait_pki_cert_info_t info;
} pair_t;

static pair_t ca, ca2, srv, dev, dev_other_ca, dev_expired, dev_revoked;
static plait_pki_config_t pcfg;

static void mk_device(pair_t *out, const plait_pki_config_t *cfg, const pair_t *issuer,
                      const char *id)
{
    ck_assert_int_eq(plait_pki_device_issue(cfg, issuer->crt, issuer->key, id, NULL, &out->crt,
                                            &out->key, &out->info),
                     0);
}

static void certs_setup(void)
{
    plait_pki_config_default(&pcfg);
    pcfg.server_alt_names = "localhost,127.0.0.1,::1";
    ck_assert_int_eq(plait_pki_ca_create(&pcfg, NULL, &ca.crt, &ca.key), 0);
    ck_assert_int_eq(plait_pki_ca_create(&pcfg, NULL, &ca2.crt, &ca2.key), 0);
    ck_assert_int_eq(plait_pki_server_issue(&pcfg, ca.crt, ca.key, NULL, &srv.crt, &srv.key), 0);
    mk_device(&dev, &pcfg, &ca, "phone-1");
    mk_device(&dev_other_ca, &pcfg, &ca2, "phone-1");
    mk_device(&dev_revoked, &pcfg, &ca, "phone-revoked");
    plait_pki_config_t past = pcfg;
    past.now = (int64_t)time(NULL) - 10 * 86400;
    past.device_days = 1;
    mk_device(&dev_expired, &past, &ca, "phone-old");
}

static void pair_free(pair_t *p)
{
    plait_pki_free_pem(p->crt);
    plait_pki_free_pem(p->key);
    p->crt = p->key = NULL;
}

static void certs_teardown(void)
{
    pair_free(&ca);
    pair_free(&ca2);
    pair_free(&srv);
    pair_free(&dev);
    pair_free(&dev_other_ca);
    pair_free(&dev_expired);
    pair_free(&dev_revoked);
}

/* Loop tests run a second time with both sessions giving their record
 * buffers back whenever they can (as the aggregator does between events). */
static int g_release;

static void maybe_release(plait_tls_t *a, plait_tls_t *b)
{
    if (!g_release) return;
    (void)plait_tls_release_buffers(a);
    (void)plait_tls_release_buffers(b);
}

/* Move everything pending from one session into the other. */
static void move(plait_tls_t *from, plait_tls_t *to)
{
    const uint8_t *p;
    size_t n;
    maybe_release(from, to);
    while ((n = plait_tls_pending_out(from, &p)) > 0) {
        size_t k = n > 1000 ? 1000 : n; /* odd chunking exercises partial records */
        ck_assert_int_eq(plait_tls_feed(to, p, k), 0);
        plait_tls_consume_out(from, k);
    }
    maybe_release(from, to);
}

/* Drive both handshakes until each side is done or has failed. */
static void pump_handshake(plait_tls_t *c, plait_tls_t *s, int *crc, int *src)
{
    *crc = *src = PLAIT_EAGAIN;
    for (int i = 0; i < 50 && (*crc == PLAIT_EAGAIN || *src == PLAIT_EAGAIN); i++) {
        if (*crc == PLAIT_EAGAIN) *crc = plait_tls_handshake(c);
        move(c, s);
        if (*src == PLAIT_EAGAIN) *src = plait_tls_handshake(s);
        move(s, c);
        if ((*crc != PLAIT_EAGAIN && *crc != 0) || (*src != PLAIT_EAGAIN && *src != 0)) {
            /* One side failed: let the other read the alert, then stop. */
            if (*crc == PLAIT_EAGAIN) *crc = plait_tls_handshake(c);
            if (*src == PLAIT_EAGAIN) *src = plait_tls_handshake(s);
            break;
        }
    }
}

typedef struct {
    plait_tls_config_t *scfg, *ccfg;
    plait_tls_t *s, *c;
    int crc, src;
} duo_t;

static void duo_run(duo_t *d, const pair_t *client, const char *server_name, const pair_t *server,
                    plait_tls_revoked_cb cb, void *ud)
{
    memset(d, 0, sizeof(*d));
    ck_assert_int_eq(plait_tls_config_server(&d->scfg, ca.crt, server->crt, server->key, 1, cb, ud),
                     0);
    ck_assert_int_eq(plait_tls_config_client(&d->ccfg, ca.crt, client ? client->crt : NULL,
                                             client ? client->key : NULL, server_name),
                     0);
    ck_assert_int_eq(plait_tls_new(&d->s, d->scfg), 0);
    ck_assert_int_eq(plait_tls_new(&d->c, d->ccfg), 0);
    pump_handshake(d->c, d->s, &d->crc, &d->src);
}

/* Both sessions made (dev as the client, srv as the server), no handshake yet. */
static void duo_open(duo_t *d, const char *server_name)
{
    memset(d, 0, sizeof(*d));
    ck_assert_int_eq(plait_tls_config_server(&d->scfg, ca.crt, srv.crt, srv.key, 1, NULL, NULL), 0);
    ck_assert_int_eq(plait_tls_config_client(&d->ccfg, ca.crt, dev.crt, dev.key, server_name), 0);
    ck_assert_int_eq(plait_tls_new(&d->s, d->scfg), 0);
    ck_assert_int_eq(plait_tls_new(&d->c, d->ccfg), 0);
}

static void duo_free(duo_t *d)
{
    plait_tls_free(d->c);
    plait_tls_free(d->s);
    plait_tls_config_free(d->ccfg);
    plait_tls_config_free(d->scfg);
}

/* Send len bytes from a to b through the record layer; check they arrive intact. */
static void transfer(plait_tls_t *a, plait_tls_t *b, size_t len)
{
    uint8_t *msg = malloc(len), *got = malloc(len);
    for (size_t i = 0; i < len; i++)
        msg[i] = (uint8_t)(i * 131 + 7);
    size_t sent = 0, recvd = 0;
    while (recvd < len) {
        if (sent < len) {
            int w = plait_tls_write(a, msg + sent, len - sent);
            ck_assert_int_gt(w, 0);
            sent += (size_t)w;
        }
        move(a, b);
        int r = 0;
        while (recvd < len && (r = plait_tls_read(b, got + recvd, len - recvd)) > 0) {
            recvd += (size_t)r;
            maybe_release(a, b);
        }
        if (recvd < len) ck_assert_int_eq(r, PLAIT_EAGAIN);
    }
    ck_assert_int_eq(memcmp(msg, got, len), 0);
    free(msg);
    free(got);
}

START_TEST(test_handshake_and_data)
{
    g_release = _i;
    duo_t d;
    duo_run(&d, &dev, "plait-aggregator", &srv, NULL, NULL);
    ck_assert_int_eq(d.crc, 0);
    ck_assert_int_eq(d.src, 0);
    ck_assert_int_eq(plait_tls_established(d.s), 1);
    const plait_pki_cert_info_t *peer = plait_tls_peer(d.s);
    ck_assert_ptr_nonnull(peer);
    ck_assert_str_eq(peer->device_id, "phone-1");
    ck_assert_str_eq(peer->serial_hex, dev.info.serial_hex);
    ck_assert_int_eq(memcmp(peer->fingerprint, dev.info.fingerprint, 32), 0);
    const plait_pki_cert_info_t *speer = plait_tls_peer(d.c);
    ck_assert_ptr_nonnull(speer);
    ck_assert_str_eq(speer->device_id, "plait-aggregator");
    const char *suite = plait_tls_ciphersuite(d.s);
    ck_assert_ptr_nonnull(strstr(suite, "ECDHE-ECDSA"));
    ck_assert_str_eq(suite, "TLS-ECDHE-ECDSA-WITH-CHACHA20-POLY1305-SHA256"); /* the first preference of both */
    ck_assert_str_eq(plait_tls_reason(d.s), "");

    transfer(d.c, d.s, 5);
    transfer(d.s, d.c, 5);

    /* Partly drained output, then more records behind it. */
    const uint8_t *p;
    ck_assert_int_eq(plait_tls_write(d.c, (const uint8_t *)"abc", 3), 3);
    ck_assert_uint_gt(plait_tls_pending_out(d.c, &p), 7);
    ck_assert_int_eq(plait_tls_feed(d.s, p, 7), 0);
    plait_tls_consume_out(d.c, 7);
    ck_assert_int_eq(plait_tls_write(d.c, (const uint8_t *)"def", 3), 3);
    move(d.c, d.s);
    uint8_t six[8];
    size_t got = 0;
    int r;
    while (got < 6 && (r = plait_tls_read(d.s, six + got, sizeof(six) - got)) > 0)
        got += (size_t)r;
    ck_assert_uint_eq(got, 6);
    ck_assert_int_eq(memcmp(six, "abcdef", 6), 0);
    transfer(d.c, d.s, 100000); /* several records */
    transfer(d.s, d.c, 70000);

    /* Orderly close: the peer reads 0, and keeps reading 0. */
    ck_assert_int_eq(plait_tls_close_notify(d.c), 0);
    move(d.c, d.s);
    uint8_t buf[16];
    ck_assert_int_eq(plait_tls_read(d.s, buf, sizeof(buf)), 0);
    ck_assert_int_eq(plait_tls_read(d.s, buf, sizeof(buf)), 0);
    duo_free(&d);
}
END_TEST

/* Record buffers given back: only when they hold nothing past the record
 * counters (a partial record in, plaintext not yet read: refused), and the
 * session goes on exactly as before once they come back, both ways, also
 * for the close. */
START_TEST(test_release_buffers)
{
    g_release = 0;
#if !(MBEDTLS_VERSION_NUMBER >= 0x02100000 && MBEDTLS_VERSION_NUMBER < 0x03000000 && \
      !defined(MBEDTLS_SSL_VARIABLE_BUFFER_LENGTH) && !defined(MBEDTLS_SSL_DTLS_CONNECTION_ID) && \
      !defined(MBEDTLS_ZLIB_SUPPORT))
    return; /* an mbedTLS layout lib/tls.c does not know: it never releases (the loop tests still run) */
#endif
    duo_t d;
    duo_open(&d, "plait-aggregator");
    ck_assert_int_eq(plait_tls_release_buffers(NULL), 0);
    ck_assert_int_eq(plait_tls_buffers_released(d.s), 0);
    ck_assert_int_eq(plait_tls_release_buffers(d.s), 1); /* fresh: nothing in them */
    ck_assert_int_eq(plait_tls_release_buffers(d.s), 1); /* idempotent */
    ck_assert_int_eq(plait_tls_buffers_released(d.s), 1);
    ck_assert_int_eq(plait_tls_handshake(d.c), PLAIT_EAGAIN);
    const uint8_t *p;
    size_t n = plait_tls_pending_out(d.c, &p); /* the ClientHello */
    ck_assert_uint_gt(n, 20);
    ck_assert_int_eq(plait_tls_feed(d.s, p, 10), 0); /* half a record */
    plait_tls_consume_out(d.c, 10);
    ck_assert_int_eq(plait_tls_handshake(d.s), PLAIT_EAGAIN);
    ck_assert_int_eq(plait_tls_buffers_released(d.s), 0); /* woken by the handshake */
    ck_assert_int_eq(plait_tls_release_buffers(d.s), 0);  /* holds a partial record */
    ck_assert_int_eq(plait_tls_feed(d.s, p + 10, n - 10), 0);
    plait_tls_consume_out(d.c, n - 10);
    ck_assert_int_eq(plait_tls_handshake(d.s), PLAIT_EAGAIN); /* its flight sent, waits for the client's */
    ck_assert_uint_gt(plait_tls_pending_out(d.s, &p), 500);
    ck_assert_int_eq(plait_tls_release_buffers(d.s), 1); /* between flights */
    pump_handshake(d.c, d.s, &d.crc, &d.src);
    ck_assert_int_eq(d.crc + d.src, 0);
    ck_assert_int_eq(plait_tls_release_buffers(d.s), 1);
    ck_assert_int_eq(plait_tls_release_buffers(d.c), 1);

    /* Unread plaintext stays in the record buffer: refused until read. */
    ck_assert_int_eq(plait_tls_write(d.c, (const uint8_t *)"0123456789", 10), 10);
    move(d.c, d.s);
    uint8_t b[16];
    ck_assert_int_eq(plait_tls_read(d.s, b, 4), 4);
    ck_assert_int_eq(plait_tls_release_buffers(d.s), 0);
    ck_assert_int_eq(plait_tls_read(d.s, b + 4, sizeof(b) - 4), 6);
    ck_assert_int_eq(memcmp(b, "0123456789", 10), 0);
    ck_assert_int_eq(plait_tls_release_buffers(d.s), 1);

    /* Many records each way with the buffers given back in between: the
     * sequence numbers and keys carry over (a wrong counter fails the MAC). */
    for (int i = 0; i < 20; i++) {
        transfer(d.c, d.s, (size_t)(1 + i * 997));
        ck_assert_int_eq(plait_tls_release_buffers(d.s), 1);
        ck_assert_int_eq(plait_tls_release_buffers(d.c), 1);
        transfer(d.s, d.c, (size_t)(20000 + i * 13));
        ck_assert_int_eq(plait_tls_release_buffers(d.s), 1);
        ck_assert_int_eq(plait_tls_release_buffers(d.c), 1);
    }
    /* Output reserved, then given back before the write: still one record run. */
    ck_assert_int_eq(plait_tls_reserve_out(d.s, 5000), 0);
    ck_assert_int_eq(plait_tls_release_buffers(d.s), 1);
    transfer(d.s, d.c, 5000);
    ck_assert_int_eq(plait_tls_release_buffers(d.c), 1);
    ck_assert_int_eq(plait_tls_close_notify(d.c), 0);
    move(d.c, d.s);
    ck_assert_int_eq(plait_tls_read(d.s, b, sizeof(b)), 0);
    ck_assert_int_eq(plait_tls_release_buffers(d.s), 1); /* closed by the peer */
    ck_assert_int_eq(plait_tls_read(d.s, b, sizeof(b)), 0);
    ck_assert_int_eq(plait_tls_close_notify(d.s), 0); /* our close_notify still goes */
    ck_assert_int_eq(plait_tls_release_buffers(d.c), 1);
    duo_free(&d); /* freed while given back: nothing leaks (ASan) */

    /* A failed session gives them back whatever they hold, and stays failed. */
    duo_run(&d, &dev, "plait-aggregator", &srv, NULL, NULL);
    ck_assert_int_eq(d.crc + d.src, 0);
    ck_assert_int_eq(plait_tls_write(d.c, (const uint8_t *)"tampered", 8), 8);
    uint8_t *mem;
    n = plait_tls_take_out(d.c, &mem, &p);
    ck_assert_uint_gt(n, 20);
    mem[(size_t)(p - mem) + n - 1] ^= 1; /* the tag */
    ck_assert_int_eq(plait_tls_feed(d.s, p, n - 3), 0);
    ck_assert_int_eq(plait_tls_read(d.s, b, sizeof(b)), PLAIT_EAGAIN);
    ck_assert_int_eq(plait_tls_release_buffers(d.s), 0); /* a partial record */
    ck_assert_int_eq(plait_tls_feed(d.s, p + n - 3, 3), 0);
    ck_assert_int_eq(plait_tls_read(d.s, b, sizeof(b)), PLAIT_EAUTH);
    free(mem);
    ck_assert_int_eq(plait_tls_release_buffers(d.s), 1);
    ck_assert_int_eq(plait_tls_read(d.s, b, sizeof(b)), PLAIT_EAUTH);
    ck_assert_int_eq(plait_tls_write(d.s, b, 1), PLAIT_EAUTH);
    ck_assert_int_eq(plait_tls_close_notify(d.s), PLAIT_EAUTH);
    ck_assert_int_eq(plait_tls_reserve_out(d.s, 10), PLAIT_EAUTH);
    duo_free(&d);
}
END_TEST

/* Output taken without a copy (how the aggregator sends): the taken buffer holds exactly the
 * pending bytes, also after part of them was consumed; the session starts a new buffer; with
 * room reserved for a frame, its records land in one buffer that decrypts to the frame. */
START_TEST(test_take_and_reserve_out)
{
    g_release = _i;
    duo_t d;
    duo_run(&d, &dev, "plait-aggregator", &srv, NULL, NULL);
    ck_assert_int_eq(d.src, 0);
    uint8_t *mem = (uint8_t *)1;
    const uint8_t *p = (const uint8_t *)1;
    ck_assert_uint_eq(plait_tls_take_out(d.s, &mem, &p), 0); /* nothing pending */
    ck_assert_ptr_null(mem);
    ck_assert_ptr_null(p);
    size_t len = 300000; /* more than PLAIT_TLS_OUT_HIGH: two writes */
    uint8_t *msg = malloc(len), *got = malloc(len);
    ck_assert(msg && got);
    for (size_t i = 0; i < len; i++) msg[i] = (uint8_t)(i * 7 + 3);
    ck_assert_int_eq(plait_tls_reserve_out(d.s, len), 0);
    size_t sent = 0, recvd = 0, takes = 0;
    while (recvd < len) {
        if (sent < len) {
            int w = plait_tls_write(d.s, msg + sent, len - sent);
            ck_assert_int_gt(w, 0);
            sent += (size_t)w;
        }
        const uint8_t *q;
        size_t pend = plait_tls_pending_out(d.s, &q);
        ck_assert_uint_gt(pend, 100);
        ck_assert_int_eq(plait_tls_feed(d.c, q, 100), 0); /* part consumed the usual way */
        plait_tls_consume_out(d.s, 100);
        size_t n = plait_tls_take_out(d.s, &mem, &p);
        ck_assert_uint_eq(n, pend - 100);
        ck_assert_ptr_nonnull(mem);
        ck_assert(p >= mem);
        ck_assert_uint_eq(plait_tls_pending_out(d.s, &q), 0);
        for (size_t off = 0; off < n; off += 4000) { /* the peer gets it in pieces */
            size_t k = n - off < 4000 ? n - off : 4000;
            ck_assert_int_eq(plait_tls_feed(d.c, p + off, k), 0);
            int r = PLAIT_EAGAIN;
            while (recvd < len && (r = plait_tls_read(d.c, got + recvd, len - recvd)) > 0) recvd += (size_t)r;
            if (recvd < len) ck_assert_int_eq(r, PLAIT_EAGAIN);
            maybe_release(d.s, d.c);
        }
        free(mem);
        takes++;
    }
    ck_assert_uint_eq(takes, 2);
    ck_assert_int_eq(memcmp(msg, got, len), 0);
    ck_assert_int_eq(plait_tls_reserve_out(NULL, 1), PLAIT_EINVAL);
    transfer(d.s, d.c, 1000); /* the session goes on with a new buffer */
    free(msg);
    free(got);
    duo_free(&d);
}
END_TEST

START_TEST(test_x25519_preferred)
{
    /* TLS 1.2 handshake messages travel in clear: the server's first flight
     * holds its ServerKeyExchange with ECParameters named_curve(3) x25519
     * (0x001d) and a 32-byte public value. */
    duo_t d;
    duo_open(&d, "localhost");
    ck_assert_int_eq(plait_tls_handshake(d.c), PLAIT_EAGAIN);
    move(d.c, d.s);
    ck_assert_int_eq(plait_tls_handshake(d.s), PLAIT_EAGAIN);
    const uint8_t *p;
    size_t n = plait_tls_pending_out(d.s, &p);
    static const uint8_t x25519[] = {0x03, 0x00, 0x1d, 0x20};
    int found = 0;
    for (size_t i = 0; i + sizeof(x25519) <= n && !found; i++)
        found = memcmp(p + i, x25519, sizeof(x25519)) == 0;
    ck_assert_msg(found, "no x25519 ECParameters in the server's first flight");
    move(d.s, d.c);
    pump_handshake(d.c, d.s, &d.crc, &d.src);
    ck_assert_int_eq(d.crc, 0);
    ck_assert_int_eq(d.src, 0);
    duo_free(&d);
}
END_TEST

START_TEST(test_write_before_handshake)
{
    /* write() drives the handshake and says EAGAIN until it can send. */
    duo_t d;
    duo_open(&d, "localhost");
    ck_assert_ptr_null(plait_tls_peer(d.c));
    const uint8_t hello[] = "hello";
    int w = PLAIT_EAGAIN, r = PLAIT_EAGAIN, eagain_writes = 0;
    uint8_t buf[16];
    for (int i = 0; i < 20 && r == PLAIT_EAGAIN; i++) {
        if (w == PLAIT_EAGAIN) {
            w = plait_tls_write(d.c, hello, 5);
            if (w == PLAIT_EAGAIN) eagain_writes++;
        }
        move(d.c, d.s);
        r = plait_tls_read(d.s, buf, sizeof(buf));
        move(d.s, d.c);
    }
    ck_assert_int_gt(eagain_writes, 0);
    ck_assert_int_eq(w, 5);
    ck_assert_int_eq(r, 5);
    ck_assert_int_eq(memcmp(buf, "hello", 5), 0);
    duo_free(&d);
}
END_TEST

START_TEST(test_ip_server_name)
{
    duo_t d;
    duo_run(&d, &dev, "127.0.0.1", &srv, NULL, NULL);
    ck_assert_int_eq(d.crc, 0);
    ck_assert_int_eq(d.src, 0);
    duo_free(&d);
    duo_run(&d, &dev, "::1", &srv, NULL, NULL);
    ck_assert_int_eq(d.crc, 0);
    duo_free(&d);
    duo_run(&d, &dev, "10.9.9.9", &srv, NULL, NULL);
    ck_assert_int_eq(d.crc, PLAIT_EAUTH);
    ck_assert_str_eq(plait_tls_reason(d.c), "certificate does not name the expected server");
    duo_free(&d);
}
END_TEST

START_TEST(test_wrong_server_name)
{
    duo_t d;
    duo_run(&d, &dev, "other.example.org", &srv, NULL, NULL);
    ck_assert_int_eq(d.crc, PLAIT_EAUTH);
    ck_assert_str_eq(plait_tls_reason(d.c), "certificate does not name the expected server");
    ck_assert_ptr_null(plait_tls_peer(d.c));
    ck_assert_int_ne(d.src, 0); /* the server got the client's alert */
    duo_free(&d);
}
END_TEST

START_TEST(test_other_ca)
{
    duo_t d;
    duo_run(&d, &dev_other_ca, "plait-aggregator", &srv, NULL, NULL);
    ck_assert_int_eq(d.src, PLAIT_EAUTH);
    ck_assert_str_eq(plait_tls_reason(d.s), "certificate not issued by this deployment's CA");
    ck_assert_ptr_null(plait_tls_peer(d.s));
    ck_assert_int_eq(d.crc, PLAIT_EAUTH); /* told by the unknown_ca alert */
    ck_assert_str_eq(plait_tls_reason(d.c), "peer refused our certificate: unknown CA");
    /* Errors are sticky. */
    uint8_t buf[8];
    ck_assert_int_eq(plait_tls_read(d.s, buf, sizeof(buf)), PLAIT_EAUTH);
    ck_assert_int_eq(plait_tls_write(d.s, buf, sizeof(buf)), PLAIT_EAUTH);
    duo_free(&d);
}
END_TEST

START_TEST(test_expired)
{
    duo_t d;
    duo_run(&d, &dev_expired, "plait-aggregator", &srv, NULL, NULL);
    ck_assert_int_eq(d.src, PLAIT_EAUTH);
    ck_assert_str_eq(plait_tls_reason(d.s), "certificate expired");
    ck_assert_int_eq(d.crc, PLAIT_EAUTH);
    ck_assert_str_eq(plait_tls_reason(d.c), "peer refused our certificate: expired");
    duo_free(&d);
}
END_TEST

START_TEST(test_revoked)
{
    g_release = _i;
    plait_pki_revlist_t rl;
    plait_pki_revlist_init(&rl);
    ck_assert_int_eq(plait_pki_revlist_add_serial(&rl, dev_revoked.info.serial_hex), 0);
    duo_t d;
    duo_run(&d, &dev_revoked, "plait-aggregator", &srv, plait_pki_revlist_check, &rl);
    ck_assert_int_eq(d.src, PLAIT_EAUTH);
    ck_assert_str_eq(plait_tls_reason(d.s), "certificate revoked");
    ck_assert_int_eq(d.crc, PLAIT_EAUTH);
    ck_assert_str_eq(plait_tls_reason(d.c), "peer refused our certificate: revoked");
    duo_free(&d);
    /* Others still get in; revocation by fingerprint works the same. */
    duo_run(&d, &dev, "plait-aggregator", &srv, plait_pki_revlist_check, &rl);
    ck_assert_int_eq(d.src, 0);
    duo_free(&d);
    ck_assert_int_eq(plait_pki_revlist_add_fingerprint(&rl, dev.info.fingerprint), 0);
    duo_run(&d, &dev, "plait-aggregator", &srv, plait_pki_revlist_check, &rl);
    ck_assert_int_eq(d.src, PLAIT_EAUTH);
    ck_assert_str_eq(plait_tls_reason(d.s), "certificate revoked");
    duo_free(&d);
    plait_pki_revlist_free(&rl);
}
END_TEST

/* Session resumption: the second connection of a device resumes its session
 * (no certificates, no ECDHE) and the server still knows which device it is;
 * a device revoked since its ticket was issued is refused at resumption; a
 * restarted server (new ticket keys) and a server without tickets fall back
 * to a full handshake. */
static void sessions(plait_tls_config_t *ccfg, plait_tls_config_t *scfg, plait_tls_t **c, plait_tls_t **s,
                     int *crc, int *src)
{
    ck_assert_int_eq(plait_tls_new(s, scfg), 0);
    ck_assert_int_eq(plait_tls_new(c, ccfg), 0);
    pump_handshake(*c, *s, crc, src);
}

START_TEST(test_resumption)
{
    g_release = _i;
    plait_pki_revlist_t rl;
    plait_pki_revlist_init(&rl);
    plait_tls_config_t *scfg, *scfg2, *ccfg;
    plait_tls_t *c, *s;
    int crc, src;
    ck_assert_int_eq(plait_tls_config_server(&scfg, ca.crt, srv.crt, srv.key, 1, plait_pki_revlist_check, &rl), 0);
    ck_assert_int_eq(plait_tls_config_tickets(scfg, 0), PLAIT_EINVAL);
    ck_assert_int_eq(plait_tls_config_tickets(scfg, 3600), 0);
    ck_assert_int_eq(plait_tls_config_client(&ccfg, ca.crt, dev.crt, dev.key, "plait-aggregator"), 0);
    ck_assert_int_eq(plait_tls_config_tickets(ccfg, 0), 0);

    sessions(ccfg, scfg, &c, &s, &crc, &src); /* full */
    ck_assert_int_eq(crc, 0);
    ck_assert_int_eq(src, 0);
    ck_assert_int_eq(plait_tls_resumed(c), 0);
    ck_assert_int_eq(plait_tls_resumed(s), 0);
    transfer(c, s, 100);
    plait_tls_free(c);
    plait_tls_free(s);

    sessions(ccfg, scfg, &c, &s, &crc, &src); /* resumed */
    ck_assert_int_eq(crc, 0);
    ck_assert_int_eq(src, 0);
    ck_assert_int_eq(plait_tls_resumed(c), 1);
    ck_assert_int_eq(plait_tls_resumed(s), 1);
    const plait_pki_cert_info_t *peer = plait_tls_peer(s);
    ck_assert_ptr_nonnull(peer);
    ck_assert_str_eq(peer->device_id, dev.info.device_id);
    ck_assert_str_eq(peer->serial_hex, dev.info.serial_hex);
    transfer(c, s, 70000);
    transfer(s, c, 5);
    plait_tls_free(c);
    plait_tls_free(s);

    /* Revoked since: the server refuses the resumption; the client, whose
     * side of an abbreviated handshake ends first, reads the alert. */
    ck_assert_int_eq(plait_pki_revlist_add_serial(&rl, dev.info.serial_hex), 0);
    sessions(ccfg, scfg, &c, &s, &crc, &src);
    ck_assert_int_eq(src, PLAIT_EAUTH);
    ck_assert_int_eq(plait_tls_resumed(s), 1);
    ck_assert_str_eq(plait_tls_reason(s), "certificate revoked");
    move(s, c);
    uint8_t buf[16];
    ck_assert_int_eq(crc == 0 ? plait_tls_read(c, buf, sizeof(buf)) : crc, PLAIT_EAUTH);
    plait_tls_free(c);
    plait_tls_free(s);
    plait_pki_revlist_free(&rl);
    plait_pki_revlist_init(&rl);

    /* A restarted server cannot open the old ticket: full handshake. */
    ck_assert_int_eq(plait_tls_config_server(&scfg2, ca.crt, srv.crt, srv.key, 1, plait_pki_revlist_check, &rl), 0);
    ck_assert_int_eq(plait_tls_config_tickets(scfg2, 3600), 0);
    sessions(ccfg, scfg2, &c, &s, &crc, &src);
    ck_assert_int_eq(crc, 0);
    ck_assert_int_eq(src, 0);
    ck_assert_int_eq(plait_tls_resumed(c), 0);
    ck_assert_int_eq(plait_tls_resumed(s), 0);
    ck_assert_str_eq(plait_tls_peer(s)->device_id, dev.info.device_id);
    plait_tls_free(c);
    plait_tls_free(s);
    /* ... and the next one resumes with the new ticket, unless forgotten. */
    sessions(ccfg, scfg2, &c, &s, &crc, &src);
    ck_assert_int_eq(crc + src, 0);
    ck_assert_int_eq(plait_tls_resumed(s), 1);
    plait_tls_free(c);
    plait_tls_free(s);
    plait_tls_config_forget_session(ccfg);
    sessions(ccfg, scfg2, &c, &s, &crc, &src);
    ck_assert_int_eq(crc + src, 0);
    ck_assert_int_eq(plait_tls_resumed(s), 0);
    plait_tls_free(c);
    plait_tls_free(s);
    plait_tls_config_free(scfg2);

    /* A server without tickets ignores the offered session. */
    plait_tls_config_free(scfg);
    ck_assert_int_eq(plait_tls_config_server(&scfg, ca.crt, srv.crt, srv.key, 1, NULL, NULL), 0);
    sessions(ccfg, scfg, &c, &s, &crc, &src);
    ck_assert_int_eq(crc + src, 0);
    ck_assert_int_eq(plait_tls_resumed(c), 0);
    ck_assert_int_eq(plait_tls_resumed(s), 0);
    plait_tls_free(c);
    plait_tls_free(s);
    plait_tls_config_free(scfg);
    plait_tls_config_free(ccfg);
    plait_pki_revlist_free(&rl);
}
END_TEST

START_TEST(test_no_client_cert)
{
    duo_t d;
    duo_run(&d, NULL, "plait-aggregator", &srv, NULL, NULL);
    ck_assert_int_eq(d.src, PLAIT_EAUTH);
    ck_assert_str_eq(plait_tls_reason(d.s), "peer sent no certificate");
    ck_assert_int_ne(d.crc, 0);
    duo_free(&d);

    /* require_client_cert = 0 admits an anonymous client, reported as such. */
    memset(&d, 0, sizeof(d));
    ck_assert_int_eq(plait_tls_config_server(&d.scfg, ca.crt, srv.crt, srv.key, 0, NULL, NULL), 0);
    ck_assert_int_eq(plait_tls_config_client(&d.ccfg, ca.crt, NULL, NULL, "plait-aggregator"), 0);
    ck_assert_int_eq(plait_tls_new(&d.s, d.scfg), 0);
    ck_assert_int_eq(plait_tls_new(&d.c, d.ccfg), 0);
    pump_handshake(d.c, d.s, &d.crc, &d.src);
    ck_assert_int_eq(d.src, 0);
    ck_assert_int_eq(d.crc, 0);
    ck_assert_ptr_null(plait_tls_peer(d.s));
    duo_free(&d);

    /* ... but still refuses a presented certificate that does not verify. */
    memset(&d, 0, sizeof(d));
    ck_assert_int_eq(plait_tls_config_server(&d.scfg, ca.crt, srv.crt, srv.key, 0, NULL, NULL), 0);
    ck_assert_int_eq(plait_tls_config_client(&d.ccfg, ca.crt, dev_expired.crt, dev_expired.key,
                                             "plait-aggregator"),
                     0);
    ck_assert_int_eq(plait_tls_new(&d.s, d.scfg), 0);
    ck_assert_int_eq(plait_tls_new(&d.c, d.ccfg), 0);
    pump_handshake(d.c, d.s, &d.crc, &d.src);
    ck_assert_int_eq(d.src, PLAIT_EAUTH);
    ck_assert_str_eq(plait_tls_reason(d.s), "certificate expired");
    move(d.s, d.c); /* the server's bad_certificate alert */
    uint8_t b[8];
    ck_assert_int_eq(plait_tls_read(d.c, b, sizeof(b)), PLAIT_EAUTH);
    ck_assert_str_eq(plait_tls_reason(d.c), "peer refused our certificate");
    duo_free(&d);
}
END_TEST

START_TEST(test_wrong_eku)
{
    /* The server's certificate (serverAuth) used as a device certificate. */
    duo_t d;
    pair_t as_client;
    memset(&as_client, 0, sizeof(as_client));
    as_client.crt = srv.crt;
    as_client.key = srv.key;
    duo_run(&d, &as_client, "plait-aggregator", &srv, NULL, NULL);
    ck_assert_int_eq(d.src, PLAIT_EAUTH);
    ck_assert_str_eq(plait_tls_reason(d.s),
                     "certificate not issued for this role (extended key usage)");
    duo_free(&d);
    /* A device certificate (clientAuth) cannot configure a server: mbedTLS
     * would find no usable certificate and fail every handshake. */
    plait_tls_config_t *bad = NULL;
    ck_assert_int_eq(plait_tls_config_server(&bad, ca.crt, dev.crt, dev.key, 1, NULL, NULL),
                     PLAIT_EINVAL);
    ck_assert_ptr_null(bad);
}
END_TEST

START_TEST(test_bad_server_cert)
{
    /* An expired server certificate, and one from another CA: the client refuses. */
    plait_pki_config_t past = pcfg;
    past.now = (int64_t)time(NULL) - 1000 * 86400;
    past.server_days = 30;
    pair_t old_srv = {0}, alien_srv = {0};
    ck_assert_int_eq(
        plait_pki_server_issue(&past, ca.crt, ca.key, NULL, &old_srv.crt, &old_srv.key), 0);
    ck_assert_int_eq(
        plait_pki_server_issue(&pcfg, ca2.crt, ca2.key, NULL, &alien_srv.crt, &alien_srv.key), 0);
    duo_t d;
    duo_run(&d, &dev, "plait-aggregator", &old_srv, NULL, NULL);
    ck_assert_int_eq(d.crc, PLAIT_EAUTH);
    ck_assert_str_eq(plait_tls_reason(d.c), "certificate expired");
    ck_assert_int_eq(d.src, PLAIT_EAUTH);
    ck_assert_str_eq(plait_tls_reason(d.s), "peer refused our certificate: expired");
    duo_free(&d);
    duo_run(&d, &dev, "plait-aggregator", &alien_srv, NULL, NULL);
    ck_assert_int_eq(d.crc, PLAIT_EAUTH);
    ck_assert_str_eq(plait_tls_reason(d.c), "certificate not issued by this deployment's CA");
    duo_free(&d);
    pair_free(&old_srv);
    pair_free(&alien_srv);
}
END_TEST

START_TEST(test_tampered_record)
{
    g_release = _i;
    duo_t d;
    duo_run(&d, &dev, "plait-aggregator", &srv, NULL, NULL);
    ck_assert_int_eq(d.src, 0);
    const uint8_t msg[] = "upload chunk 7";
    ck_assert_int_eq(plait_tls_write(d.c, msg, sizeof(msg)), (int)sizeof(msg));
    const uint8_t *p;
    size_t n = plait_tls_pending_out(d.c, &p);
    ck_assert_uint_gt(n, 5 + 8 + sizeof(msg));
    uint8_t *copy = malloc(n);
    memcpy(copy, p, n);
    copy[n - 3] ^= 0x40; /* inside the AEAD tag */
    plait_tls_consume_out(d.c, n);
    ck_assert_int_eq(plait_tls_feed(d.s, copy, n), 0);
    uint8_t buf[64];
    ck_assert_int_eq(plait_tls_read(d.s, buf, sizeof(buf)), PLAIT_EAUTH);
    ck_assert_str_eq(plait_tls_reason(d.s), "record failed authentication (tampered or corrupted)");
    ck_assert_int_eq(plait_tls_read(d.s, buf, sizeof(buf)), PLAIT_EAUTH);

    /* Same with a flipped ciphertext byte (not the tag), on a fresh pair. */
    duo_free(&d);
    duo_run(&d, &dev, "plait-aggregator", &srv, NULL, NULL);
    ck_assert_int_eq(plait_tls_write(d.s, msg, sizeof(msg)), (int)sizeof(msg));
    n = plait_tls_pending_out(d.s, &p);
    memcpy(copy, p, n);
    copy[5 + 8 + 2] ^= 0x01;
    plait_tls_consume_out(d.s, n);
    ck_assert_int_eq(plait_tls_feed(d.c, copy, n), 0);
    ck_assert_int_eq(plait_tls_read(d.c, buf, sizeof(buf)), PLAIT_EAUTH);
    free(copy);
    duo_free(&d);
}
END_TEST

START_TEST(test_garbage_and_limits)
{
    plait_tls_config_t *scfg = NULL;
    plait_tls_t *s = NULL;
    ck_assert_int_eq(plait_tls_config_server(&scfg, ca.crt, srv.crt, srv.key, 1, NULL, NULL), 0);
    ck_assert_int_eq(plait_tls_new(&s, scfg), 0);
    uint8_t junk[300];
    for (size_t i = 0; i < sizeof(junk); i++)
        junk[i] = (uint8_t)(i * 97 + 3);
    ck_assert_int_eq(plait_tls_feed(s, junk, sizeof(junk)), 0);
    int rc = plait_tls_handshake(s);
    ck_assert(rc == PLAIT_EPROTO || rc == PLAIT_EAUTH);
    ck_assert_str_ne(plait_tls_reason(s), "");
    plait_tls_free(s);

    /* An HTTP request instead of a ClientHello. */
    ck_assert_int_eq(plait_tls_new(&s, scfg), 0);
    const char *http = "GET / HTTP/1.1\r\nHost: x\r\n\r\n";
    ck_assert_int_eq(plait_tls_feed(s, (const uint8_t *)http, strlen(http)), 0);
    ck_assert_int_eq(plait_tls_handshake(s), PLAIT_EPROTO);
    plait_tls_free(s);

    /* Feed limit: input that is not consumed piles up to a cap. */
    ck_assert_int_eq(plait_tls_new(&s, scfg), 0);
    uint8_t *big = calloc(1, PLAIT_TLS_IN_MAX + 1);
    ck_assert_int_eq(plait_tls_feed(s, big, PLAIT_TLS_IN_MAX + 1), PLAIT_ETOOBIG);
    ck_assert_int_eq(plait_tls_feed(s, big, PLAIT_TLS_IN_MAX), 0);
    ck_assert_int_eq(plait_tls_feed(s, big, 1), PLAIT_ETOOBIG);
    free(big);
    plait_tls_free(s);

    /* Configuration errors. */
    plait_tls_config_t *bad = NULL;
    ck_assert_int_eq(plait_tls_config_server(&bad, ca.crt, srv.crt, dev.key, 1, NULL, NULL),
                     PLAIT_EMISMATCH);
    ck_assert_int_eq(plait_tls_config_server(&bad, "nope", srv.crt, srv.key, 1, NULL, NULL),
                     PLAIT_EPROTO);
    ck_assert_int_eq(plait_tls_config_client(&bad, ca.crt, dev.crt, dev.key, NULL), PLAIT_EINVAL);
    ck_assert_int_eq(plait_tls_config_client(&bad, ca.crt, dev.crt, NULL, "x"), PLAIT_EINVAL);
    ck_assert_ptr_null(bad);
    plait_tls_config_free(NULL);
    plait_tls_free(NULL);
    plait_tls_config_free(scfg);
}
END_TEST

START_TEST(test_byte_at_a_time)
{
    g_release = _i;
    /* Every split point of every flight: the handshake only ever waits. */
    duo_t d;
    duo_open(&d, "plait-aggregator");
    int crc = PLAIT_EAGAIN, src = PLAIT_EAGAIN;
    for (int i = 0; i < 100000 && (crc != 0 || src != 0); i++) {
        const uint8_t *p;
        if (crc != 0) crc = plait_tls_handshake(d.c);
        if (src != 0) src = plait_tls_handshake(d.s);
        ck_assert(crc == 0 || crc == PLAIT_EAGAIN);
        ck_assert(src == 0 || src == PLAIT_EAGAIN);
        if (plait_tls_pending_out(d.c, &p) > 0) {
            ck_assert_int_eq(plait_tls_feed(d.s, p, 1), 0);
            plait_tls_consume_out(d.c, 1);
        }
        if (plait_tls_pending_out(d.s, &p) > 0) {
            ck_assert_int_eq(plait_tls_feed(d.c, p, 1), 0);
            plait_tls_consume_out(d.s, 1);
        }
    }
    ck_assert_int_eq(crc, 0);
    ck_assert_int_eq(src, 0);
    transfer(d.c, d.s, 3000);
    duo_free(&d);
}
END_TEST

START_TEST(test_tampered_handshake)
{
    g_release = _i;
    /* Flip one byte at many positions of each flight: both sides may never
     * end up established, and nothing may crash. */
    plait_tls_config_t *scfg = NULL, *ccfg = NULL;
    if (getenv("TLS_DEBUG")) plait_log_set_level(PLAIT_LOG_DEBUG);
    ck_assert_int_eq(plait_tls_config_server(&scfg, ca.crt, srv.crt, srv.key, 1, NULL, NULL), 0);
    ck_assert_int_eq(plait_tls_config_client(&ccfg, ca.crt, dev.crt, dev.key, "plait-aggregator"),
                     0);
    for (int flight = 0; flight < 3; flight++) {
        for (size_t pos = 3; pos < 1400; pos += 97) {
            plait_tls_t *c = NULL, *s = NULL;
            ck_assert_int_eq(plait_tls_new(&c, ccfg), 0);
            ck_assert_int_eq(plait_tls_new(&s, scfg), 0);
            int crc = PLAIT_EAGAIN, src = PLAIT_EAGAIN, flipped = 0;
            for (int step = 0; step < 20 && (crc == PLAIT_EAGAIN || src == PLAIT_EAGAIN); step++) {
                plait_tls_t *from = step % 2 == 0 ? c : s, *to = step % 2 == 0 ? s : c;
                int *frc = step % 2 == 0 ? &crc : &src;
                if (*frc == PLAIT_EAGAIN) *frc = plait_tls_handshake(from);
                const uint8_t *p;
                size_t n = plait_tls_pending_out(from, &p);
                if (n == 0) continue;
                uint8_t *copy = malloc(n);
                memcpy(copy, p, n);
                if (step == flight && pos < n) {
                    copy[pos] ^= 0x20;
                    flipped = 1;
                }
                plait_tls_consume_out(from, n);
                int frc2 = plait_tls_feed(to, copy, n);
                ck_assert_int_eq(frc2, 0);
                free(copy);
            }
            if (crc == PLAIT_EAGAIN) crc = plait_tls_handshake(c);
            if (src == PLAIT_EAGAIN) src = plait_tls_handshake(s);
            if (flipped)
                ck_assert_msg(!(crc == 0 && src == 0), "flight %d pos %zu: both established",
                              flight, pos);
            else
                ck_assert(crc == 0 && src == 0);
            if (getenv("TLS_DEBUG"))
                fprintf(stderr, "flight %d pos %zu: c=%d '%s' s=%d '%s'\n", flight, pos, crc,
                        plait_tls_reason(c), src, plait_tls_reason(s));
            ck_assert(crc == 0 || crc == PLAIT_EAGAIN || crc == PLAIT_EPROTO || crc == PLAIT_EAUTH);
            ck_assert(src == 0 || src == PLAIT_EAGAIN || src == PLAIT_EPROTO || src == PLAIT_EAUTH);
            plait_tls_free(c);
            plait_tls_free(s);
        }
    }
    plait_tls_config_free(ccfg);
    plait_tls_config_free(scfg);
}
END_TEST

START_TEST(test_from_files)
{
    /* init -> enroll -> files -> configs -> handshake: what the CLI and agent do. */
    char *tmp = tu_tmpdir("tls");
    ck_assert_ptr_nonnull(tmp);
    char dir[600], crtp[700], keyp[700], cap[700];
    snprintf(dir, sizeof(dir), "%s/deploy", tmp);
    ck_assert_int_eq(plait_pki_init_deployment(dir, &pcfg), 0);
    char *crt = NULL, *key = NULL;
    plait_pki_cert_info_t info;
    ck_assert_int_eq(plait_pki_enroll(dir, &pcfg, "phone-77", &crt, &key, &info), 0);
    snprintf(crtp, sizeof(crtp), "%s/phone-77.crt", tmp);
    snprintf(keyp, sizeof(keyp), "%s/phone-77.key", tmp);
    snprintf(cap, sizeof(cap), "%s/ca.crt", dir);
    ck_assert_int_eq(plait_pki_write_file(crtp, crt, 0), 0);
    ck_assert_int_eq(plait_pki_write_file(keyp, key, 1), 0);

    plait_pki_revlist_t rl;
    plait_pki_revlist_init(&rl);
    char revp[700];
    snprintf(revp, sizeof(revp), "%s/revoked.txt", dir);
    ck_assert_int_eq(plait_pki_revlist_load(&rl, revp), 0);

    duo_t d;
    memset(&d, 0, sizeof(d));
    ck_assert_int_eq(plait_tls_config_server_dir(&d.scfg, dir, plait_pki_revlist_check, &rl), 0);
    ck_assert_int_eq(plait_tls_config_client_files(&d.ccfg, cap, crtp, keyp, "127.0.0.1"), 0);
    ck_assert_int_eq(plait_tls_new(&d.s, d.scfg), 0);
    ck_assert_int_eq(plait_tls_new(&d.c, d.ccfg), 0);
    pump_handshake(d.c, d.s, &d.crc, &d.src);
    ck_assert_int_eq(d.crc, 0);
    ck_assert_int_eq(d.src, 0);
    ck_assert_str_eq(plait_tls_peer(d.s)->device_id, "phone-77");
    duo_free(&d);

    /* Revoke through the deployment helpers, reload, and the device is out. */
    ck_assert_int_eq(plait_pki_revoke(dir, info.serial_hex, NULL), 0);
    plait_pki_revlist_free(&rl);
    plait_pki_revlist_init(&rl);
    ck_assert_int_eq(plait_pki_revlist_load(&rl, revp), 0);
    memset(&d, 0, sizeof(d));
    ck_assert_int_eq(plait_tls_config_server_dir(&d.scfg, dir, plait_pki_revlist_check, &rl), 0);
    ck_assert_int_eq(plait_tls_config_client_files(&d.ccfg, cap, crtp, keyp, "plait-aggregator"),
                     0);
    ck_assert_int_eq(plait_tls_new(&d.s, d.scfg), 0);
    ck_assert_int_eq(plait_tls_new(&d.c, d.ccfg), 0);
    pump_handshake(d.c, d.s, &d.crc, &d.src);
    ck_assert_int_eq(d.src, PLAIT_EAUTH);
    ck_assert_str_eq(plait_tls_reason(d.s), "certificate revoked");
    duo_free(&d);

    plait_tls_config_t *none = NULL;
    ck_assert_int_eq(plait_tls_config_server_dir(&none, tmp, NULL, NULL), PLAIT_ENOENT);
    ck_assert_int_eq(plait_tls_config_client_files(&none, cap, crtp, "/nonexistent/key", "x"),
                     PLAIT_ENOENT);
    plait_pki_revlist_free(&rl);
    plait_pki_free_pem(crt);
    plait_pki_free_pem(key);
    free(tmp);
}
END_TEST

/* ---- blocking sockets in two threads --------------------------------------- */

typedef struct {
    plait_tls_config_t *cfg;
    int fd;
    int rc;
    char peer[PLAIT_PKI_ID_MAX + 1];
    size_t echoed;
} srv_thread_t;

/* Echo server: handshake, then send back everything until close_notify. */
static void *server_main(void *p)
{
    srv_thread_t *t = p;
    plait_tls_t *s = NULL;
    t->rc = plait_tls_new(&s, t->cfg);
    if (t->rc == 0) t->rc = plait_tls_fd_handshake(s, t->fd);
    if (t->rc == 0) {
        snprintf(t->peer, sizeof(t->peer), "%s", plait_tls_peer(s)->device_id);
        uint8_t buf[5000];
        int r;
        while ((r = plait_tls_fd_read(s, t->fd, buf, sizeof(buf))) > 0) {
            if ((t->rc = plait_tls_fd_write(s, t->fd, buf, (size_t)r)) != 0) break;
            t->echoed += (size_t)r;
        }
        if (r < 0) t->rc = r;
        if (t->rc == 0) t->rc = plait_tls_fd_close(s, t->fd);
    }
    plait_tls_free(s);
    return NULL;
}

static void run_fd_pair(int cfd, int sfd, const pair_t *client, int expect_ok)
{
    srv_thread_t t = {0};
    t.fd = sfd;
    ck_assert_int_eq(plait_tls_config_server(&t.cfg, ca.crt, srv.crt, srv.key, 1, NULL, NULL), 0);
    pthread_t th;
    ck_assert_int_eq(pthread_create(&th, NULL, server_main, &t), 0);

    plait_tls_config_t *ccfg = NULL;
    plait_tls_t *c = NULL;
    ck_assert_int_eq(plait_tls_config_client(&ccfg, ca.crt, client->crt, client->key, "localhost"),
                     0);
    ck_assert_int_eq(plait_tls_new(&c, ccfg), 0);
    int rc = plait_tls_fd_handshake(c, cfd);
    if (expect_ok) {
        ck_assert_int_eq(rc, 0);
        const size_t len = 200000;
        uint8_t *msg = malloc(len), *got = malloc(len);
        for (size_t i = 0; i < len; i++)
            msg[i] = (uint8_t)(i ^ (i >> 8));
        /* Write in slices and read the echo as we go, so neither side's
         * socket buffer can fill while the other is blocked writing. */
        size_t sent = 0, recvd = 0;
        while (recvd < len) {
            if (sent < len) {
                size_t k = len - sent < 8000 ? len - sent : 8000;
                ck_assert_int_eq(plait_tls_fd_write(c, cfd, msg + sent, k), 0);
                sent += k;
            }
            while (recvd < sent) {
                int r = plait_tls_fd_read(c, cfd, got + recvd, len - recvd);
                ck_assert_int_gt(r, 0);
                recvd += (size_t)r;
            }
        }
        ck_assert_int_eq(memcmp(msg, got, len), 0);
        ck_assert_int_eq(plait_tls_fd_close(c, cfd), 0);
        uint8_t b[8];
        ck_assert_int_eq(plait_tls_fd_read(c, cfd, b, sizeof(b)), 0); /* server's close_notify */
        free(msg);
        free(got);
    } else {
        ck_assert_int_eq(rc, PLAIT_EAUTH);
        shutdown(cfd, SHUT_RDWR);
    }
    ck_assert_int_eq(pthread_join(th, NULL), 0);
    if (expect_ok) {
        ck_assert_int_eq(t.rc, 0);
        ck_assert_str_eq(t.peer, client->info.device_id);
        ck_assert_uint_eq(t.echoed, 200000);
    } else {
        ck_assert_int_eq(t.rc, PLAIT_EAUTH);
    }
    plait_tls_free(c);
    plait_tls_config_free(ccfg);
    plait_tls_config_free(t.cfg);
}

START_TEST(test_socketpair)
{
    int sv[2];
    ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    run_fd_pair(sv[0], sv[1], &dev, 1);
    close(sv[0]);
    close(sv[1]);
    ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    run_fd_pair(sv[0], sv[1], &dev_other_ca, 0);
    close(sv[0]);
    close(sv[1]);
}
END_TEST

START_TEST(test_loopback_tcp)
{
    int lfd = socket(AF_INET, SOCK_STREAM, 0);
    ck_assert_int_ge(lfd, 0);
    struct sockaddr_in a;
    memset(&a, 0, sizeof(a));
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = 0;
    ck_assert_int_eq(bind(lfd, (struct sockaddr *)&a, sizeof(a)), 0);
    ck_assert_int_eq(listen(lfd, 1), 0);
    socklen_t al = sizeof(a);
    ck_assert_int_eq(getsockname(lfd, (struct sockaddr *)&a, &al), 0);
    int cfd = socket(AF_INET, SOCK_STREAM, 0);
    ck_assert_int_eq(connect(cfd, (struct sockaddr *)&a, sizeof(a)), 0);
    int sfd = accept(lfd, NULL, NULL);
    ck_assert_int_ge(sfd, 0);
    run_fd_pair(cfd, sfd, &dev, 1);
    close(cfd);
    close(sfd);
    close(lfd);
}
END_TEST

Suite *tls_suite(void)
{
    Suite *s = suite_create("tls");
    TCase *tm = tcase_create("memory");
    tcase_add_unchecked_fixture(tm, certs_setup, certs_teardown);
    tcase_set_timeout(tm, 60);
    tcase_add_loop_test(tm, test_handshake_and_data, 0, 2);
    tcase_add_loop_test(tm, test_take_and_reserve_out, 0, 2);
    tcase_add_test(tm, test_release_buffers);
    tcase_add_test(tm, test_x25519_preferred);
    tcase_add_test(tm, test_write_before_handshake);
    tcase_add_test(tm, test_ip_server_name);
    tcase_add_test(tm, test_wrong_server_name);
    tcase_add_test(tm, test_other_ca);
    tcase_add_test(tm, test_expired);
    tcase_add_loop_test(tm, test_revoked, 0, 2);
    tcase_add_loop_test(tm, test_resumption, 0, 2);
    tcase_add_test(tm, test_no_client_cert);
    tcase_add_test(tm, test_wrong_eku);
    tcase_add_test(tm, test_bad_server_cert);
    tcase_add_loop_test(tm, test_tampered_record, 0, 2);
    tcase_add_test(tm, test_garbage_and_limits);
    tcase_add_loop_test(tm, test_byte_at_a_time, 0, 2);
    tcase_add_loop_test(tm, test_tampered_handshake, 0, 2);
    tcase_add_test(tm, test_from_files);
    suite_add_tcase(s, tm);
    TCase *tf = tcase_create("fd");
    tcase_add_unchecked_fixture(tf, certs_setup, certs_teardown);
    tcase_set_timeout(tf, 60);
    tcase_add_test(tf, test_socketpair);
    tcase_add_test(tf, test_loopback_tcp);
    suite_add_tcase(s, tf);
    return s;
}
