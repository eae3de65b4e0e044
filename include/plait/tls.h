/*
 * tls.h: mutual-TLS sessions over memory buffers (no sockets inside).
 *
 * Policy, fixed here rather than configurable: TLS 1.2 only; ECDHE-ECDSA with
 * AEAD suites only (CHACHA20-POLY1305-SHA256 preferred, then AES-128-GCM-SHA256,
 * AES-256-GCM-SHA384); key exchange on X25519 or P-256; certificates
 * ECDSA P-256 signed with SHA-256/384/512 by the deployment CA (pki.h); no
 * renegotiation; session tickets (RFC 5077) only where plait_tls_config_tickets()
 * turns them on. Both sides always present a certificate
 * and verify the other's: the server checks clientAuth usage, the validity
 * dates and the revocation callback; the client checks serverAuth usage, the
 * dates and that the certificate names the expected server.
 *
 * A session is a byte pump. The owner (the aggregator's libuv loop, or the
 * agent) moves ciphertext between the session and the network:
 *
 *     on bytes received from the socket:
 *         plait_tls_feed(s, buf, n);
 *         while ((r = plait_tls_read(s, plain, sizeof plain)) > 0)
 *             consume(plain, r);
 *         if (r == 0) the peer sent close_notify;
 *         else if (r != PLAIT_EAGAIN) fail(r, plait_tls_reason(s));
 *         flush();
 *     to send plaintext:
 *         r = plait_tls_write(s, msg, len);  // bytes taken (maybe < len), or PLAIT_EAGAIN
 *         flush();
 *     flush():
 *         while ((n = plait_tls_pending_out(s, &p)) > 0) {
 *             send or uv_write a copy of p[0..n);
 *             plait_tls_consume_out(s, n);
 *         }
 *
 * plait_tls_read() and plait_tls_write() drive the handshake until it is done;
 * plait_tls_handshake() does only that, for owners that want to know when the
 * peer is authenticated (plait_tls_peer()) before they send anything. The
 * handshake has no timer of its own: the owner closes sessions that do not
 * finish in time (the aggregator's pre-authentication limit).
 *
 * Errors are sticky: once a call fails with PLAIT_EAUTH, PLAIT_EPROTO or
 * PLAIT_EIO every later call returns the same code. Flush pending output once
 * more after a failure (it may hold the TLS alert that tells the peer why),
 * then close the connection. plait_tls_reason() says why in words fit for a
 * log line: "certificate revoked", "certificate expired", "certificate not
 * issued by this deployment's CA", "peer sent no certificate", "record failed
 * authentication", ... It never contains key material or payload bytes.
 *
 * For the agent, which may prefer blocking sockets, plait_tls_fd_*() run the
 * same session over a connected blocking file descriptor (TCP or AF_UNIX).
 *
 * Thread-safety: a session is used by one thread at a time. A config may be
 * shared by sessions on several threads (its DRBG is locked by mbedTLS); it
 * must outlive its sessions and not be changed while they exist.
 */
#ifndef PLAIT_TLS_H
#define PLAIT_TLS_H

#include <stddef.h>
#include <stdint.h>

#include "plait/pki.h"
#include "plait/plait.h"

/** Unconsumed ciphertext a session buffers before plait_tls_feed() says PLAIT_ETOOBIG. */
#define PLAIT_TLS_IN_MAX (256 * 1024)
/** Pending output above which plait_tls_write() says PLAIT_EAGAIN (backpressure). */
#define PLAIT_TLS_OUT_HIGH (256 * 1024)

typedef struct plait_tls_config_s plait_tls_config_t; /* opaque, heap */
typedef struct plait_tls_s plait_tls_t;               /* opaque, heap */

/**
 * Revocation hook, called by a server session during the handshake with the
 * client certificate's details (after the chain was checked). Return 0 to
 * accept, nonzero (PLAIT_EAUTH) to reject the certificate as revoked. It runs
 * on the session's thread and must not call back into the session.
 * plait_pki_revlist_check() (pki.h) is one, over a plait_pki_revlist_t.
 */
typedef int (*plait_tls_revoked_cb)(void *ud, const plait_pki_cert_info_t *peer);

/**
 * \brief Server configuration (the aggregator).
 * \param ca_pem   the deployment CA certificate (PEM, NUL-terminated); the only trust anchor.
 * \param crt_pem  the server certificate; \param key_pem its private key (P-256).
 *                 All three are copied/parsed; the caller may wipe its copies.
 * \param require_client_cert 1 (production): a client without a valid certificate
 *                 fails with PLAIT_EAUTH. 0: a client may present none (then
 *                 plait_tls_peer() reports an empty device id), but a certificate
 *                 that is presented must still verify.
 * \param revoked  may be NULL; \param revoked_ud passed to it (borrowed; must outlive the config).
 * \param out OUT: owned; free with plait_tls_config_free().
 * \return 0, PLAIT_EINVAL (NULL argument), PLAIT_EPROTO (unparseable PEM),
 *         PLAIT_EMISMATCH (key does not match certificate), PLAIT_ENOMEM, PLAIT_EIO (entropy).
 */
int plait_tls_config_server(plait_tls_config_t **out /* OUT */, const char *ca_pem,
                            const char *crt_pem, const char *key_pem, int require_client_cert,
                            plait_tls_revoked_cb revoked, void *revoked_ud) PLAIT_WUR;

/**
 * \brief Client configuration (a device).
 * \param ca_pem   the deployment CA certificate; the only trust anchor.
 * \param crt_pem, key_pem  the device certificate and key; both NULL for a
 *                 client without certificate (tests of the server's refusal).
 * \param server_name  the name the server certificate must carry in its
 *                 subjectAltName: a DNS name (also sent as SNI) or an IPv4/IPv6
 *                 literal (matched against iPAddress entries by plait, since
 *                 mbedTLS 2.28 matches DNS names only). Required.
 * \return as plait_tls_config_server().
 */
int plait_tls_config_client(plait_tls_config_t **out /* OUT */, const char *ca_pem,
                            const char *crt_pem, const char *key_pem,
                            const char *server_name) PLAIT_WUR;

/**
 * \brief Server configuration from a deployment directory made by
 *        plait_pki_init_deployment(): reads DIR/ca.crt, DIR/server.crt and
 *        DIR/server.key (never ca.key); client certificates are required.
 * \return as plait_tls_config_server(); PLAIT_ENOENT / PLAIT_EIO for a missing
 *         or unreadable file (named in plait_errmsg()).
 */
int plait_tls_config_server_dir(plait_tls_config_t **out /* OUT */, const char *dir,
                                plait_tls_revoked_cb revoked, void *revoked_ud) PLAIT_WUR;

/**
 * \brief Client configuration from files (the agent's provisioning): the CA
 *        certificate, the device certificate and its key (PEM paths).
 * \return as plait_tls_config_client(); PLAIT_ENOENT / PLAIT_EIO for files.
 */
int plait_tls_config_client_files(plait_tls_config_t **out /* OUT */, const char *ca_path,
                                  const char *crt_path, const char *key_path,
                                  const char *server_name) PLAIT_WUR;

/**
 * \brief Turn on session resumption with tickets (RFC 5077), so that a
 *        returning device skips the ECDHE key exchange and both certificate
 *        signatures. Call before the first session of cfg.
 *
 * Server: tickets are sealed with AES-256-GCM under random keys that live in
 * this config only (a restart invalidates every ticket) and rotate each
 * lifetime_s (1..604800); a ticket older than that is refused and the
 * handshake falls back to a full one. A resumed session carries the client
 * certificate inside the ticket: its dates and the revocation hook are
 * checked again at every resumption, so revocation is as immediate as for a
 * full handshake.
 * Client: the config keeps the last session (lifetime_s is ignored) and
 * offers it on the next plait_tls_new(); each handshake replaces it.
 * \return 0, PLAIT_EINVAL (lifetime), PLAIT_EINTERNAL.
 */
int plait_tls_config_tickets(plait_tls_config_t *cfg, uint32_t lifetime_s) PLAIT_WUR;

/** \brief Client: drop the saved session (the next handshake is a full one). NULL is safe. */
void plait_tls_config_forget_session(plait_tls_config_t *cfg);

/** \brief Free a config (wipes its private key, DRBG, ticket keys and saved session). NULL is safe.
 * Sessions must be freed first. */
void plait_tls_config_free(plait_tls_config_t *cfg);

/** \brief 1 if the handshake of s resumed an earlier session (no certificates sent). */
int plait_tls_resumed(const plait_tls_t *s);

/**
 * \brief New session on cfg (borrowed; must outlive the session).
 * \return 0, PLAIT_EINVAL, PLAIT_ENOMEM.
 */
int plait_tls_new(plait_tls_t **out /* OUT */, plait_tls_config_t *cfg) PLAIT_WUR;

/** \brief Free a session, wiping its buffers and keys. NULL is safe. */
void plait_tls_free(plait_tls_t *s);

/**
 * \brief Give mbedTLS's two record buffers back while the session is idle.
 *
 * mbedTLS 2.28 (Debian's build) gives every session two 16.7 KB record
 * buffers for its whole life; a server holding a thousand sessions that wait
 * holds 33 MB of them. When nothing lives in them past the record counters (no
 * partial record in or out, no unread plaintext), this keeps those few bytes,
 * wipes and frees the buffers; the next call that needs a record
 * (handshake, read, write, close_notify, reserve_out) allocates them again.
 * Allowed during the handshake too, between flights. Costs two allocations
 * and a copy of 64 bytes at the next use.
 * A failed session gives them back whatever they hold (it makes no more
 * records); a closed one as an open one.
 * \return 1 when the buffers are given back (also if they were already); 0
 *         when the session holds data in them, or the mbedTLS build is not
 *         the one this knows (then it never releases).
 */
int plait_tls_release_buffers(plait_tls_t *s);

/**
 * \brief Plaintext of the record being read that plait_tls_read() would
 *        return without decrypting another record (0 when none).
 */
size_t plait_tls_avail(const plait_tls_t *s);

/** \brief 1 while the record buffers are given back, else 0. */
int plait_tls_buffers_released(const plait_tls_t *s);

/**
 * \brief Hand ciphertext received from the network to the session (copied).
 * \return 0; PLAIT_ETOOBIG when more than PLAIT_TLS_IN_MAX bytes would be
 *         waiting unconsumed (stop reading the socket until read() drains it;
 *         nothing was taken); PLAIT_EINVAL.
 */
int plait_tls_feed(plait_tls_t *s, const uint8_t *buf, size_t len) PLAIT_WUR;

/**
 * \brief Ciphertext waiting to be sent.
 * \param buf OUT: points at the bytes; valid until the next call on s.
 * \return the number of bytes (0 when none).
 */
size_t plait_tls_pending_out(const plait_tls_t *s, const uint8_t **buf /* OUT */);

/** \brief Mark n bytes of pending output as sent (n <= plait_tls_pending_out()). */
void plait_tls_consume_out(plait_tls_t *s, size_t n);

/**
 * \brief Take all pending output without copying it: the session hands over
 *        its output buffer (and starts a new one with its next bytes).
 * \param mem OUT: the allocation to free() once the bytes are sent (NULL when none).
 * \param buf OUT: the pending bytes, inside *mem.
 * \return the number of pending bytes (0: nothing pending, *mem is NULL).
 */
size_t plait_tls_take_out(plait_tls_t *s, uint8_t **mem /* OUT */, const uint8_t **buf /* OUT */);

/**
 * \brief Make room in the output buffer for the records that sealing len more
 *        bytes of plaintext makes (an optimization: without it the buffer
 *        grows by doubling as records are appended).
 * \return 0; PLAIT_ENOMEM; PLAIT_EINVAL for a NULL session.
 */
int plait_tls_reserve_out(plait_tls_t *s, size_t len) PLAIT_WUR;

/**
 * \brief Advance the handshake with the input fed so far.
 * \return 0 when established (also on later calls); PLAIT_EAGAIN (send the
 *         pending output, feed more input); PLAIT_EAUTH (a certificate was
 *         refused, by us or, as reported by its alert, by the peer; see
 *         plait_tls_reason()); PLAIT_EPROTO (no common version/suite/curve,
 *         malformed messages); PLAIT_ENOMEM.
 */
int plait_tls_handshake(plait_tls_t *s) PLAIT_WUR;

/** \brief 1 once the handshake has completed (and no error since), else 0. */
int plait_tls_established(const plait_tls_t *s);

/**
 * \brief Read decrypted application data (drives the handshake first).
 * \return bytes read (> 0); 0 when the peer sent close_notify; PLAIT_EAGAIN;
 *         PLAIT_EAUTH (a record failed authentication, e.g. tampered
 *         ciphertext, or a certificate was refused); PLAIT_EPROTO; PLAIT_EINVAL.
 */
int plait_tls_read(plait_tls_t *s, uint8_t *buf, size_t cap) PLAIT_WUR;

/**
 * \brief Encrypt application data into the pending output (drives the handshake first).
 * \return bytes taken (> 0, possibly fewer than len; at most INT_MAX);
 *         PLAIT_EAGAIN (handshake needs input, or more than PLAIT_TLS_OUT_HIGH
 *         bytes are pending: flush first); error codes as plait_tls_read().
 */
int plait_tls_write(plait_tls_t *s, const uint8_t *buf, size_t len) PLAIT_WUR;

/** \brief Queue a close_notify alert (then flush and close the transport). \return 0 or an error
 * code. */
int plait_tls_close_notify(plait_tls_t *s);

/**
 * \brief The verified peer certificate: device id (CN), serial, SHA-256
 *        fingerprint, validity. On a server session this is the device; on a
 *        client session, the aggregator's certificate.
 * \return NULL until the handshake has completed; valid while s lives.
 */
const plait_pki_cert_info_t *plait_tls_peer(const plait_tls_t *s);

/** \brief Why the session failed, as a short static string; "" when it has not. */
const char *plait_tls_reason(const plait_tls_t *s);

/** \brief The negotiated suite ("TLS-ECDHE-ECDSA-WITH-AES-128-GCM-SHA256"), or "" before the
 * handshake. */
const char *plait_tls_ciphersuite(const plait_tls_t *s);

/* ---- Blocking helpers over a connected file descriptor -------------------
 * The same session pumped with blocking read(2)/write(2) on fd, for the agent
 * (or a test) that runs one connection on its own thread. The fd is borrowed
 * and never closed here. A peer that closes the transport early gives
 * PLAIT_EIO ("connection closed by peer").
 */

/** \brief Run the handshake to completion. \return 0 or as plait_tls_handshake() / PLAIT_EIO. */
int plait_tls_fd_handshake(plait_tls_t *s, int fd) PLAIT_WUR;
/** \brief Read up to cap bytes, blocking until some arrive. \return > 0, 0 on close_notify, or an
 * error code. */
int plait_tls_fd_read(plait_tls_t *s, int fd, uint8_t *buf, size_t cap) PLAIT_WUR;
/** \brief Write all len bytes. \return 0 or an error code. */
int plait_tls_fd_write(plait_tls_t *s, int fd, const uint8_t *buf, size_t len) PLAIT_WUR;
/** \brief Send close_notify and flush it. \return 0 or an error code. */
int plait_tls_fd_close(plait_tls_t *s, int fd);

#endif /* PLAIT_TLS_H */
