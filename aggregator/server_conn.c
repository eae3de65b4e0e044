/*
 * server_conn.c: the service's device connections (server_int.h); what they
 * send goes through server_send.c.
 *
 * A connection: TCP handle → TLS session over memory buffers (tls.h) →
 * plaintext frame buffer → plait_frame_decode/plait_wire_decode (wire.h) →
 * handle_msg, which hands round business to server_round.c. Invariants:
 *   - a connection's memory is freed only in its close callback (after libuv
 *     has called back every pending write with its status);
 *   - before the Hello is accepted, frames are capped at max_preauth_frame
 *     and only a Hello is accepted; the handshake and Hello must complete
 *     within auth_timeout_s; any connection silent for idle_timeout_s is closed;
 *   - the plaintext buffer never holds more than one frame plus one TLS read;
 *   - a protocol error closes that connection (after queueing an Error frame
 *     and close_notify), never the process; every refusal is logged once,
 *     with its reason, and counted in rejections_total{reason}.
 * Loop thread only. Logs carry connection and device ids, sizes and error
 * names; never update words, adapter bytes or keys.
 */
#define _GNU_SOURCE /* POLLRDHUP */
#include "server_int.h"

#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>

#include "plait/crypto.h"
#include "plait/log.h"

#define IN_KEEP_BYTES 0 /* plaintext buffer a connection keeps between frames: none (N connections wait) */

static uint64_t client_of(const char *device)
{
    /* FNV-1a 64 of the certificate CN: the round core's pseudonymous client id. */
    uint64_t h = 1469598103934665603ull;
    for (const unsigned char *p = (const unsigned char *)device; *p; p++) {
        h ^= *p;
        h *= 1099511628211ull;
    }
    return h ? h : 1;
}

/* Reject: count and log once. */
void plait__srv_reject(conn_t *c, plait__rej_t why, const char *fmt, ...)
{
    char detail[400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(detail, sizeof(detail), fmt, ap);
    va_end(ap);
    c->srv->m.rejections[why]++;
    if (c->srv->round_live) c->srv->rs.rej[why]++;
    if (!plait__admit_log_ok(&c->srv->admit, now_s(c->srv))) {
        c->srv->m.rejection_logs_suppressed++;
        return;
    }
    PLAIT_LOG(PLAIT_LOG_WARN, "rejected conn=%llu device=%s reason=%s: %s", (unsigned long long)c->id,
              c->device[0] ? c->device : "-", plait__rej_name(why), detail);
}

/* ---- closing ------------------------------------------------------------------ */

/* Called where a pool slot may have freed and no connection is mid-callback:
 * a closed connection's callback, the end of a read, the tick. */
void plait__srv_accept_resume(plait_server_t *s)
{
    if (!s->accept_waiting) return;
    if (s->stopping) { /* the listener's close drops what libuv held */
        s->accept_waiting = 0;
        return;
    }
    if (s->admit.preauth < s->preauth_cap) plait__srv_on_conn((uv_stream_t *)&s->listener, 0);
}

void plait__srv_on_conn_closed(uv_handle_t *h)
{
    conn_t *c = h->data;
    plait_server_t *s = c->srv;
    if (c->prev) c->prev->next = c->next;
    else s->conns = c->next;
    if (c->next) c->next->prev = c->prev;
    s->m.connections_open--;
    if (c->closing) s->n_closing--;
    plait__srv_dlw_remove(c);
    if (c->preauth) plait__admit_leave(&s->admit, c->addr);
    plait_tls_free(c->tls);
    plait__srv_blob_unref(c->dl);
    if (c->parked) s->n_parked--;
    plait__srv_upd_free(s, c->upd, c->upd_total, c->upd_w);
    if (c->in) plait_zeroize(c->in, c->in_cap);
    free(c->in);
    free(c);
    plait__srv_accept_resume(s);
}

/* Our FIN is out. Lingering close: keep reading (and discarding) until the
 * peer closes too, or CLOSE_GRACE_S passes (tick), so that unread input does
 * not turn our close into a RST that destroys the Error frame in flight. */
static void on_shutdown(uv_shutdown_t *req, int status)
{
    conn_t *c = req->data;
    if (status < 0 && !c->uv_closing) {
        c->uv_closing = 1;
        uv_close((uv_handle_t *)&c->tcp, plait__srv_on_conn_closed);
    }
}

void plait__srv_conn_close(conn_t *c, int graceful)
{
    if (c->closing) return;
    c->closing = 1;
    c->srv->n_closing++;
    if (c->parked) { /* no longer waits: the rate floor and "may park" stop counting it */
        c->parked = 0;
        c->srv->n_parked--;
    }
    c->srv->slot_freed = 1; /* it may have held an update buffer */
    /* Closing connections do not count against max_connections, so unauthenticated ones may
     * linger (to flush a TLS alert) only while few do: past the pre-auth pool they are closed
     * at once, and failed handshakes cannot pile up descriptors. */
    if (graceful && c->preauth && c->srv->n_closing > c->srv->preauth_cap) graceful = 0;
    c->dl_active = 0;
    plait__srv_dlw_remove(c);
    c->t_close = now_s(c->srv);
    if (c->preauth) {
        plait__admit_leave(&c->srv->admit, c->addr);
        c->preauth = 0;
    }
    plait__srv_conn_leave_round(c);
    if (graceful && c->tls) {
        (void)plait_tls_close_notify(c->tls);
        if (plait__srv_flush(c) == 0) {
            c->shut.data = c;
            if (uv_shutdown(&c->shut, (uv_stream_t *)&c->tcp, on_shutdown) == 0) return;
        }
    }
    uv_read_stop((uv_stream_t *)&c->tcp);
    c->uv_closing = 1;
    uv_close((uv_handle_t *)&c->tcp, plait__srv_on_conn_closed);
}

/* Refuse with an Error frame (when the session can still carry one), then close. */
void plait__srv_fail_conn(conn_t *c, plait__rej_t why, int code, const char *wire_msg)
{
    if (c->established && wire_msg) plait__srv_send_error(c, code, wire_msg);
    plait__srv_conn_close(c, 1);
    (void)why;
}

/* ---- frames and messages ------------------------------------------------------ */

static void handle_msg(conn_t *c, const plait_msg_t *m)
{
    plait_server_t *s = c->srv;
    switch (m->type) {
    case PLAIT_MSG_HELLO: {
        if (c->authed) {
            plait__srv_reject(c, PLAIT__REJ_ORDER, "second hello");
            plait__srv_fail_conn(c, PLAIT__REJ_ORDER, PLAIT_EPROTO, "unexpected hello");
            return;
        }
        if (plait_ct_memcmp(m->u.hello.base_model_sha256, s->base_sha, 32) != 0) {
            char hex[65];
            plait_hex(m->u.hello.base_model_sha256, 8, hex);
            plait__srv_reject(c, PLAIT__REJ_MODEL_MISMATCH, "device runs base model %s..., the task needs another", hex);
            plait__srv_fail_conn(c, PLAIT__REJ_MODEL_MISMATCH, PLAIT_EMISMATCH, "base model differs from the task's");
            return;
        }
        c->authed = 1;
        if (c->preauth) {
            plait__admit_leave(&s->admit, c->addr);
            c->preauth = 0;
        }
        PLAIT_LOG(PLAIT_LOG_INFO, "hello conn=%llu device=%s client_version=%s caps=%u", (unsigned long long)c->id,
                  c->device, m->u.hello.client_version, m->u.hello.capabilities);
        uint32_t need = s->mode == PLAIT_LORA_MODE_FFA     ? PLAIT_CAP_FFA
                        : s->mode == PLAIT_LORA_MODE_FEDIT ? PLAIT_CAP_FEDIT
                                                           : PLAIT_CAP_FEDSA;
        if (s->cfg.secure_agg) need |= PLAIT_CAP_SECAGG;
        if ((m->u.hello.capabilities & need) != need) {
            PLAIT_LOG(PLAIT_LOG_INFO, "device=%s cannot train in mode %s%s: come back later (incompatible)", c->device,
                      plait_lora_mode_name(s->mode), s->cfg.secure_agg ? " with secure aggregation" : "");
            plait__srv_send_cbl(c, PLAIT_RETRY_INCOMPATIBLE, s->lim.max_retry_ms);
            plait__srv_conn_close(c, 1);
            return;
        }
        if (plait__srv_eval_refuse(c, m->u.hello.capabilities)) return;
        plait__srv_offer(c);
        return;
    }
    case PLAIT_MSG_ADAPTER_REQUEST: {
        const plait_msg_adapter_request_t *r = &m->u.adapter_request;
        if (c->round_id == 0 || r->round_id != c->round_id || r->round_id != s->cur_rid || !s->round_live) {
            plait__srv_reject(c, PLAIT__REJ_STALE, "adapter request for round %llu, current round is %llu",
                   (unsigned long long)r->round_id, (unsigned long long)s->cur_rid);
            plait__srv_fail_conn(c, PLAIT__REJ_STALE, PLAIT_ESTALE, "stale round");
            return;
        }
        if (r->version != s->blob->version || r->offset >= s->blob->len) {
            plait__srv_reject(c, PLAIT__REJ_BAD_MESSAGE, "adapter request for version %llu at %llu (have version %llu, %zu bytes)",
                   (unsigned long long)r->version, (unsigned long long)r->offset,
                   (unsigned long long)s->blob->version, s->blob->len);
            plait__srv_fail_conn(c, PLAIT__REJ_BAD_MESSAGE, PLAIT_ENOENT, "no such adapter version or offset");
            return;
        }
        plait__srv_blob_unref(c->dl);
        c->dl = s->blob;
        c->dl->refs++;
        c->dl_off = r->offset;
        (void)plait__srv_dl_choose(c, r);
        c->dl_active = 1;
        plait__srv_pump_download(c);
        return;
    }
    case PLAIT_MSG_UPDATE_CHUNK:
        plait__srv_handle_update(c, &m->u.update_chunk);
        return;
    case PLAIT_MSG_SECAGG_ADVERTISE:
    case PLAIT_MSG_SECAGG_SHARES:
    case PLAIT_MSG_SECAGG_MASKED_INPUT:
    case PLAIT_MSG_SECAGG_UNMASK_RESPONSE: {
        if (!s->sa || s->busy || c->round_id == 0 || c->round_id != s->cur_rid || !plait__sa_has(s->sa, c->client)) {
            plait__srv_reject(c, PLAIT__REJ_STALE, "%s outside a secure round this device takes part in",
                   plait_msg_type_name(m->type));
            plait__srv_fail_conn(c, PLAIT__REJ_STALE, PLAIT_ESTALE, "not in a secure round");
            return;
        }
        const plait_pki_cert_info_t *peer = plait_tls_peer(c->tls);
        int rc = plait__sa_on_msg(s->sa, c->client, peer->fingerprint, m, now_s(s));
        if (rc != 0) {
            plait__rej_t why = rc == PLAIT_ESTALE ? PLAIT__REJ_LATE : PLAIT__REJ_BAD_MESSAGE;
            plait__srv_reject(c, why, "%s: %s (%s)", plait_msg_type_name(m->type), plait_errmsg(), plait_err_name(rc));
            plait__srv_fail_conn(c, why, rc, rc == PLAIT_EAUTH ? "secure aggregation: keys do not verify"
                                                    : "secure aggregation: message refused");
        }
        return;
    }
    case PLAIT_MSG_DECLINE:
        plait__srv_handle_decline(c, &m->u.decline);
        return;
    case PLAIT_MSG_PING: {
        plait_msg_t p;
        plait_msg_init(&p, PLAIT_MSG_PONG);
        p.u.ping.nonce = m->u.ping.nonce;
        (void)plait__srv_send_msg(c, &p);
        return;
    }
    case PLAIT_MSG_PONG:
        return;
    case PLAIT_MSG_ERROR:
        PLAIT_LOG(PLAIT_LOG_INFO, "device error conn=%llu device=%s code=%s", (unsigned long long)c->id, c->device,
                  plait_err_name(m->u.error.code));
        plait__srv_conn_close(c, 1);
        return;
    default:
        plait__srv_reject(c, PLAIT__REJ_ORDER, "unexpected %s from a device", plait_msg_type_name(m->type));
        plait__srv_fail_conn(c, PLAIT__REJ_ORDER, PLAIT_EPROTO, "unexpected message");
        return;
    }
}

/* The upload on c owns an update buffer slot from now on; its progress is
 * counted from here (plait__srv_upload_too_slow). */
static void grant_upload(conn_t *c)
{
    c->upd_reserved = 1;
    c->t_win = now_s(c->srv);
    c->upd_rx = c->rx_win = 0;
}

/* The floor on an upload that holds a buffer slot: while other uploads wait
 * for one (judge), every window of upload_grace_s must bring min_upload_rate
 * bytes/s of update frames (the frame being received counts as far as it
 * got; Pings and other frames do not), else the upload is cut: a device that
 * trickles, or sends most of its update and then stops, cannot keep honest
 * ones waiting until the round's deadline. While nobody waits (or the loop
 * was stalled and has not read what arrived) the window only restarts, so a
 * slow upload is judged on what it does once someone waits. */
int plait__srv_upload_too_slow(conn_t *c, double now, int judge, double *rate)
{
    const plait_server_t *s = c->srv;
    if (c->closing || (c->upd == NULL && !c->upd_reserved)) return 0;
    uint64_t progress = c->upd_rx + c->in_len;
    if (!judge || s->cfg.min_upload_rate == 0 || s->n_parked == 0) {
        c->t_win = now;
        c->rx_win = progress;
        return 0;
    }
    double span = now - c->t_win;
    if (span < s->cfg.upload_grace_s) return 0;
    double got = progress > c->rx_win ? (double)(progress - c->rx_win) : 0.0;
    *rate = got / span;
    c->t_win = now;
    c->rx_win = progress;
    return got < (double)s->cfg.min_upload_rate * span;
}

/* A frame of `type` is next on c: when it would start an upload and every
 * update buffer is taken (max_uploads_in_flight), leave it unread (TCP holds
 * the device back) until one is free: 1 (parked), else 0. A parked connection
 * is not idle: it waits on us (plait__srv_uploads_resume). */
static int park_upload(conn_t *c, int type)
{
    plait_server_t *s = c->srv;
    if (type != PLAIT_MSG_UPDATE_CHUNK || !c->authed || c->upd != NULL || c->upd_reserved || s->sa || c->parked)
        return 0;
    /* First come, first served: while uploads are parked a free buffer goes to the oldest of
     * them (plait__srv_uploads_resume), not to this newcomer. */
    if (s->n_parked == 0 && plait__srv_uploads_busy(s) < s->cfg.max_uploads_in_flight) {
        grant_upload(c); /* counted from the header on, so that the bound is exact */
        return 0;
    }
    c->parked = 1;
    c->park_seq = ++s->park_seq;
    s->n_parked++;
    uv_read_stop((uv_stream_t *)&c->tcp);
    PLAIT_LOG(PLAIT_LOG_DEBUG, "upload waits for an update buffer conn=%llu device=%s (max_uploads_in_flight %llu)",
              (unsigned long long)c->id, c->device, (unsigned long long)s->cfg.max_uploads_in_flight);
    return 1;
}

/* Decode and handle every complete frame in c->in. */
static void process_frames(conn_t *c)
{
    plait_server_t *s = c->srv;
    size_t pos = 0;
    while (!c->closing && pos < c->in_len) {
        plait_frame_t fr;
        size_t used = 0;
        int rc = plait_frame_decode(c->in + pos, c->in_len - pos, &s->lim, c->authed ? 0 : PLAIT_FRAME_PREAUTH, &fr,
                                    &used);
        if (rc == PLAIT_EAGAIN) {
            /* The header says an upload starts: park before its chunk is buffered. */
            if (c->in_len - pos >= PLAIT_FRAME_HEADER) (void)park_upload(c, c->in[pos + PLAIT_FRAME_HEADER - 1]);
            break;
        }
        if (rc == PLAIT_ETOOBIG) {
            plait__srv_reject(c, PLAIT__REJ_FRAME_TOO_BIG, "%s (limit %zu bytes %s the hello)", plait_errmsg(),
                   c->authed ? s->lim.max_frame : s->lim.max_preauth_frame, c->authed ? "after" : "before");
            plait__srv_fail_conn(c, PLAIT__REJ_FRAME_TOO_BIG, PLAIT_ETOOBIG, "frame too big");
            break;
        }
        if (rc != 0) {
            plait__srv_reject(c, PLAIT__REJ_BAD_FRAME, "%s (%s)", plait_errmsg(), plait_err_name(rc));
            plait__srv_fail_conn(c, PLAIT__REJ_BAD_FRAME, PLAIT_EPROTO, "bad frame");
            break;
        }
        if (park_upload(c, fr.type)) break;
        plait_msg_t m;
        rc = plait_wire_decode(&fr, &s->lim, &m);
        if (rc != 0) {
            plait__srv_reject(c, PLAIT__REJ_BAD_MESSAGE, "%s message: %s (%s)", plait_msg_type_name(fr.type), plait_errmsg(),
                   plait_err_name(rc));
            plait__srv_fail_conn(c, PLAIT__REJ_BAD_MESSAGE, rc == PLAIT_ETOOBIG ? PLAIT_ETOOBIG : PLAIT_EPROTO, "bad message");
            break;
        }
        pos += used;
        if (fr.type == PLAIT_MSG_UPDATE_CHUNK) c->upd_rx += used;
        handle_msg(c, &m);
        plait_msg_free(&m);
    }
    if (pos > 0 && !c->closing) {
        memmove(c->in, c->in + pos, c->in_len - pos);
        c->in_len -= pos;
        if (c->in_len == 0 && c->in_cap > IN_KEEP_BYTES) {
            /* Emptied after a big frame: give the buffer back, so idle connections
             * hold no frame-sized buffers (wiped: it held update words). */
            plait_zeroize(c->in, c->in_cap);
            free(c->in);
            c->in = NULL;
            c->in_cap = 0;
        }
    }
}

/* ---- authentication and revocation ------------------------------------------- */

static plait__rej_t tls_rej(const char *reason)
{
    if (strstr(reason, "revoked")) return PLAIT__REJ_TLS_REVOKED;
    if (strstr(reason, "expired") || strstr(reason, "not yet valid")) return PLAIT__REJ_TLS_EXPIRED;
    if (strstr(reason, "no certificate")) return PLAIT__REJ_TLS_NO_CERT;
    if (strstr(reason, "CA") || strstr(reason, "not trusted") || strstr(reason, "issuer"))
        return PLAIT__REJ_TLS_UNTRUSTED;
    return PLAIT__REJ_TLS_OTHER;
}

static void revlist_refresh(plait_server_t *s, int force)
{
    double now = now_s(s);
    if (!force && now - s->rev_checked < 1.0) return;
    s->rev_checked = now;
    plait_pki_revlist_t fresh;
    plait_pki_revlist_init(&fresh);
    int rc = plait_pki_revlist_load(&fresh, s->rev_path);
    if (rc != 0) {
        PLAIT_LOG(PLAIT_LOG_ERROR, "revocation list %s: %s (keeping the previous list)", s->rev_path, plait_errmsg());
        plait_pki_revlist_free(&fresh);
        return;
    }
    if (fresh.n_serials != s->rev.n_serials || fresh.n_fprs != s->rev.n_fprs)
        PLAIT_LOG(PLAIT_LOG_INFO, "revocation list loaded: %zu serials, %zu fingerprints", fresh.n_serials,
                  fresh.n_fprs);
    /* The TLS config holds a pointer to s->rev: swap the contents, not the struct. */
    plait_pki_revlist_t old = s->rev;
    s->rev = fresh;
    plait_pki_revlist_free(&old);
}

/* Reload the revocation list, then close the sessions of devices revoked
 * since their handshake (by certificate in the list, or by id in the store)
 * and take revoked devices out of the open round. Tick, every REVOKE_SWEEP_S. */
void plait__srv_revoke_sweep(plait_server_t *s)
{
    revlist_refresh(s, 1);
    for (conn_t *c = s->conns, *nx; c; c = nx) {
        nx = c->next;
        if (c->closing || !c->established || c->client == 0) continue;
        const plait_pki_cert_info_t *peer = plait_tls_peer(c->tls);
        int revoked = (peer && plait_pki_revlist_check(&s->rev, peer) == PLAIT_EAUTH) ||
                      plait__svc_device_revoked(s->store_r, c->device);
        if (!revoked) continue;
        member_t *mb = c->round_id != 0 && c->round_id == s->cur_rid && s->round_live ? plait__srv_member_find(s, c->client) : NULL;
        c->round_id = 0; /* not a "left the round" */
        plait__srv_reject(c, PLAIT__REJ_REVOKED, "device %s revoked while connected: session closed", c->device);
        plait__srv_fail_conn(c, PLAIT__REJ_REVOKED, PLAIT_EAUTH, "device revoked");
        if (mb) plait__srv_member_revoke(s, mb);
    }
    if (!s->round_live || s->busy) return;
    for (size_t i = 0; i < s->n_cohort; i++) {
        member_t *mb = &s->cohort[i];
        if (!mb->revoked && plait__svc_device_revoked(s->store_r, mb->device)) plait__srv_member_revoke(s, mb);
    }
}

static void on_established(conn_t *c)
{
    plait_server_t *s = c->srv;
    const plait_pki_cert_info_t *peer = plait_tls_peer(c->tls);
    c->established = 1;
    snprintf(c->device, sizeof(c->device), "%s", peer ? peer->device_id : "");
    if (!plait_pki_device_id_valid(c->device)) {
        plait__srv_reject(c, PLAIT__REJ_UNKNOWN_DEVICE, "certificate CN is not a device id");
        plait__srv_fail_conn(c, PLAIT__REJ_UNKNOWN_DEVICE, PLAIT_EAUTH, "not a device certificate");
        return;
    }
    int rc = plait__svc_device_check(s->store_r, c->device, peer->fingerprint);
    if (rc == PLAIT_EAUTH) {
        plait__srv_reject(c, PLAIT__REJ_TLS_REVOKED, "device %s (serial %s) is revoked or presented a certificate other than "
               "the enrolled one", c->device, peer->serial_hex);
        plait__srv_fail_conn(c, PLAIT__REJ_TLS_REVOKED, PLAIT_EAUTH, "device revoked");
        return;
    }
    if (rc != 0) {
        plait__srv_reject(c, PLAIT__REJ_UNKNOWN_DEVICE, "device %s (serial %s) is not enrolled in this deployment%s%s", c->device,
               peer->serial_hex, rc == PLAIT_ENOENT ? "" : ": store error: ", rc == PLAIT_ENOENT ? "" : plait_errmsg());
        plait__srv_fail_conn(c, PLAIT__REJ_UNKNOWN_DEVICE, PLAIT_EAUTH, "device not enrolled");
        return;
    }
    c->client = client_of(c->device);
    int resumed = plait_tls_resumed(c->tls);
    s->m.tls_handshakes++;
    if (resumed) s->m.tls_resumed++;
    PLAIT_LOG(PLAIT_LOG_INFO, "handshake conn=%llu device=%s serial=%s suite=%s%s", (unsigned long long)c->id,
              c->device, peer->serial_hex, plait_tls_ciphersuite(c->tls), resumed ? " resumed" : "");
}

/* ---- reading and accepting ---------------------------------------------------- */

/* Would c's upload, if it started now, likely be parked (uploads already wait for update
 * buffers)? A parked connection keeps what it had read and not handled; reading it in small
 * pieces until then keeps that to little (64 KiB reads and 16 KiB records: 1,000 devices
 * waiting for 16 buffers held 60-100 MiB). */
static int may_park(const conn_t *c)
{
    const plait_server_t *s = c->srv;
    if (!c->authed || s->sa || c->upd != NULL || c->upd_reserved || c->round_id == 0 || c->round_id != s->cur_rid)
        return 0;
    return s->n_parked > 0; /* uploads wait already: every buffer is taken (asked per read, so no O(N) scan) */
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    conn_t *c = h->data;
    plait_server_t *s = c->srv;
    /* One read at a time on the loop thread: the server's buffer is free here. */
    *buf = uv_buf_init((char *)s->readbuf, may_park(c) ? PARK_READ : sizeof(s->readbuf));
    (void)suggested;
}

static int in_append(conn_t *c, const uint8_t *p, size_t n)
{
    plait_server_t *s = c->srv;
    size_t lim = (c->authed ? s->lim.max_frame : s->lim.max_preauth_frame) + PLAIN_CHUNK;
    if (c->in_len + n > lim) return PLAIT_ETOOBIG;
    if (c->in_len + n > c->in_cap) {
        size_t need = c->in_len + n, nc = c->in_cap ? c->in_cap : PARK_PLAIN; /* a parked upload holds a few hundred bytes */
        while (nc < need) nc *= 2;
        if (need >= 4) {
            /* The buffer starts with a frame: doubling stops at its declared size, so a 256 KiB
             * chunk is held in 256 KiB, not 512 (never more than twice what was received). */
            uint32_t fl = 0;
            for (size_t k = 0; k < 4; k++) fl = fl << 8 | (k < c->in_len ? c->in[k] : p[k - c->in_len]);
            uint64_t total = 4u + (uint64_t)fl;
            if (total >= need && total < nc) nc = (size_t)total;
        }
        if (nc > lim) nc = lim;
        uint8_t *q = malloc(nc); /* not realloc: the old buffer may hold update words, wiped first */
        if (!q) return PLAIT_ENOMEM;
        if (c->in) {
            memcpy(q, c->in, c->in_len);
            plait_zeroize(c->in, c->in_cap);
            free(c->in);
        }
        c->in = q;
        c->in_cap = nc;
    }
    memcpy(c->in + c->in_len, p, n);
    c->in_len += n;
    return 0;
}

static void drain(conn_t *c);

/* The peer closed (EOF or reset) and everything it sent has been read. */
static void peer_left(conn_t *c)
{
    if (c->upd_have > 0) {
        plait__srv_reject(c, PLAIT__REJ_MID_UPLOAD, "connection closed after %llu of %llu update words; update discarded",
               (unsigned long long)c->upd_have, (unsigned long long)c->upd_total);
    } else if (c->in_len > 0) {
        plait__srv_reject(c, PLAIT__REJ_TRUNCATED, "connection closed inside a frame (%zu bytes of it received)", c->in_len);
    } else if (!c->established) {
        plait__srv_reject(c, PLAIT__REJ_TLS_OTHER, "connection closed during the TLS handshake");
    } else {
        PLAIT_LOG(PLAIT_LOG_INFO, "closed by peer conn=%llu device=%s", (unsigned long long)c->id, c->device);
    }
    plait__srv_conn_close(c, 0);
}

/* Close the connections whose peers have already gone (FIN or RST received,
 * nothing unread in the socket) but whose end-of-stream this loop iteration
 * has not read yet. libuv accepts the whole listen backlog in one callback,
 * before the same iteration's reads: a device that dropped a connection and
 * opened a new one while the loop was busy was counted twice against
 * max_connections, and a returning cohort was refused while under the limit.
 * A socket that still holds unread bytes, or whose session does (a parked
 * upload), is left to on_read, so no frame is lost. Returns how many were closed. */
static size_t reap_departed(plait_server_t *s, const conn_t *except)
{
    size_t n = 0, k = 0, closed = 0;
    for (conn_t *c = s->conns; c; c = c->next) n += !c->closing && c != except;
    if (n == 0) return 0;
    struct pollfd *pf = malloc(n * sizeof(*pf));
    conn_t **who = malloc(n * sizeof(*who));
    if (pf && who) {
        for (conn_t *c = s->conns; c && k < n; c = c->next) {
            uv_os_fd_t fd;
            /* parked: its session may hold input not yet handled; on_read sees its end */
            if (c->closing || c->parked || c == except || uv_fileno((const uv_handle_t *)&c->tcp, &fd) != 0) continue;
            pf[k].fd = fd;
            pf[k].events = POLLRDHUP;
            pf[k].revents = 0;
            who[k++] = c;
        }
        if (k > 0 && poll(pf, (nfds_t)k, 0) > 0) {
            for (size_t i = 0; i < k; i++) {
                int unread = 0;
                if (!(pf[i].revents & (POLLRDHUP | POLLHUP | POLLERR))) continue;
                if (!(pf[i].revents & POLLERR) && (ioctl(pf[i].fd, FIONREAD, &unread) != 0 || unread != 0)) continue;
                peer_left(who[i]);
                closed++;
            }
        }
    }
    free(pf);
    free(who);
    return closed;
}

static void on_read(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf)
{
    conn_t *c = st->data;
    plait_server_t *s = c->srv;
    if (c->closing) { /* lingering close: discard until the peer's EOF */
        if (nread < 0 && !c->uv_closing) {
            c->uv_closing = 1;
            uv_close((uv_handle_t *)&c->tcp, plait__srv_on_conn_closed);
        }
        return;
    }
    if (nread < 0) {
        peer_left(c);
        return;
    }
    if (nread == 0) return;
    s->m.bytes_in += (uint64_t)nread;
    c->t_last = now_s(s);
    int rc = plait_tls_feed(c->tls, (const uint8_t *)buf->base, (size_t)nread);
    if (rc != 0) {
        plait__srv_reject(c, PLAIT__REJ_TLS_BAD_RECORD, "TLS input backlog over the limit (%s)", plait_err_name(rc));
        plait__srv_conn_close(c, 0);
        return;
    }
    if (!c->established) {
        rc = plait_tls_handshake(c->tls);
        (void)plait__srv_flush(c);
        if (rc == PLAIT_EAGAIN) return;
        if (rc != 0) {
            const char *why = plait_tls_reason(c->tls);
            plait__srv_reject(c, tls_rej(why), "TLS handshake failed: %s (%s)", why[0] ? why : "no reason", plait_err_name(rc));
            plait__srv_conn_close(c, 1);
            return;
        }
        on_established(c);
        if (c->closing) return;
    }
    drain(c);
    /* Parked uploads go on when a buffer was freed (the tick resumes them too, whatever freed it):
     * the scan for free buffers is O(connections), too much to run after every read. */
    if (s->n_parked > 0 && s->slot_freed) plait__srv_uploads_resume(s);
    plait__srv_accept_resume(s); /* its Hello may have left a pool slot */
}

/* Read the plaintext the TLS session holds and handle its frames, until it
 * runs dry, the connection closes or parks (on_read, and a resumed upload). */
static void drain(conn_t *c)
{
    plait_server_t *s = c->srv;
    int rc;
    process_frames(c);
    while (!c->closing && !c->parked) {
        /* A connection that may park takes its plaintext in small pieces too: what it has not
         * taken stays in the session's record buffer, which it holds anyway. */
        int r = plait_tls_read(c->tls, s->plain, may_park(c) ? PARK_PLAIN : sizeof(s->plain));
        if (r > 0) {
            rc = in_append(c, s->plain, (size_t)r);
            if (rc != 0) {
                plait__srv_reject(c, PLAIT__REJ_FRAME_TOO_BIG, "more than one frame's worth of unparsed input (%s)",
                       plait_err_name(rc));
                plait__srv_fail_conn(c, PLAIT__REJ_FRAME_TOO_BIG, PLAIT_ETOOBIG, "frame too big");
                break;
            }
            process_frames(c);
            if (c->closing || c->parked) break;
            continue;
        }
        if (r == 0) {
            if (c->upd_have > 0)
                plait__srv_reject(c, PLAIT__REJ_MID_UPLOAD, "close_notify after %llu of %llu update words; update discarded",
                       (unsigned long long)c->upd_have, (unsigned long long)c->upd_total);
            else if (c->in_len > 0)
                plait__srv_reject(c, PLAIT__REJ_TRUNCATED, "close_notify inside a frame (%zu bytes of it received)", c->in_len);
            else
                PLAIT_LOG(PLAIT_LOG_INFO, "close_notify conn=%llu device=%s", (unsigned long long)c->id, c->device);
            plait__srv_conn_close(c, 1);
            break;
        }
        if (r != PLAIT_EAGAIN) {
            const char *why = plait_tls_reason(c->tls);
            plait__srv_reject(c, PLAIT__REJ_TLS_BAD_RECORD, "TLS record refused: %s (%s)", why[0] ? why : "no reason",
                   plait_err_name(r));
            plait__srv_conn_close(c, 1);
        }
        break;
    }
    /* Parked: the rest of the record that held the upload's first bytes comes out (at most a
     * record), so that the session can give its two record buffers back while it waits. */
    while (c->parked && !c->closing && plait_tls_avail(c->tls) > 0) {
        size_t want = plait_tls_avail(c->tls);
        int r = plait_tls_read(c->tls, s->plain, want < sizeof(s->plain) ? want : sizeof(s->plain));
        if (r <= 0) break;
        if ((rc = in_append(c, s->plain, (size_t)r)) != 0) {
            plait__srv_reject(c, PLAIT__REJ_FRAME_TOO_BIG, "more than one frame's worth of unparsed input (%s)",
                   plait_err_name(rc));
            plait__srv_fail_conn(c, PLAIT__REJ_FRAME_TOO_BIG, PLAIT_ETOOBIG, "frame too big");
        }
    }
    if (!c->closing) (void)plait__srv_flush(c);
}

size_t plait__srv_uploads_busy(const plait_server_t *s)
{
    size_t n = 0;
    for (const conn_t *c = s->conns; c; c = c->next) n += c->upd != NULL || (c->upd_reserved && !c->closing);
    for (size_t i = 0; i < s->n_cohort; i++) n += s->cohort[i].pending != NULL;
    return n;
}

void plait__srv_uploads_resume(plait_server_t *s)
{
    s->slot_freed = 0;
    while (s->n_parked > 0 && !s->stopping && plait__srv_uploads_busy(s) < s->cfg.max_uploads_in_flight) {
        conn_t *o = NULL;
        for (conn_t *c = s->conns; c; c = c->next)
            if (c->parked && !c->closing && (!o || c->park_seq < o->park_seq)) o = c;
        if (!o) break;
        o->parked = 0;
        grant_upload(o); /* its upload has the buffer that is free now */
        s->n_parked--;
        o->t_last = now_s(s);
        if (uv_read_start((uv_stream_t *)&o->tcp, on_alloc, on_read) != 0) {
            plait__srv_conn_close(o, 0);
            continue;
        }
        drain(o);
        if (o->parked) break; /* took no buffer after all: wait for the next release */
    }
}

void plait__srv_on_conn(uv_stream_t *l, int status)
{
    plait_server_t *s = l->data;
    if (status < 0) {
        PLAIT_LOG(PLAIT_LOG_WARN, "accept: %s", uv_strerror(status));
        return;
    }
    /* A full pre-auth pool: leave the connection to libuv, which stops
     * accepting, so a burst of connections waits in the kernel's listen
     * backlog (no TLS session, no handshake state here) until an earlier one
     * authenticates or closes; handshakes in progress are bounded by the pool,
     * not by the fleet (plait__srv_accept_resume). Its auth_timeout_s starts
     * when it is accepted. At max_connections it is accepted and refused, as
     * before (too_many_connections). */
    if (!s->stopping && s->admit.preauth >= s->preauth_cap &&
        s->m.connections_open - s->n_closing < s->cfg.max_connections) {
        if (!s->accept_waiting) s->m.accept_waits++;
        s->accept_waiting = 1;
        return;
    }
    conn_t *c = calloc(1, sizeof(*c));
    if (!c) { /* libuv holds the connection: the tick tries again */
        s->accept_waiting = 1;
        return;
    }
    s->accept_waiting = 0;
    c->srv = s;
    c->id = ++s->next_conn_id;
    c->t_open = c->t_last = now_s(s);
    uv_tcp_init(&s->loop, &c->tcp);
    c->tcp.data = c;
    c->next = s->conns;
    if (s->conns) s->conns->prev = c;
    s->conns = c;
    s->m.connections_open++;
    if (uv_accept(l, (uv_stream_t *)&c->tcp) != 0) {
        /* libuv restarts polling the listener only after a successful accept:
         * outside its own callback (a deferred accept) nobody else would */
        if (!s->stopping && uv_listen(l, LISTEN_BACKLOG, plait__srv_on_conn) != 0)
            PLAIT_LOG(PLAIT_LOG_ERROR, "listener: polling could not be restarted after a failed accept");
        plait__srv_conn_close(c, 0);
        return;
    }
    s->m.connections_total++;
    struct sockaddr_storage sa;
    int salen = sizeof(sa);
    snprintf(c->addr, sizeof(c->addr), "?");
    if (uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&sa, &salen) == 0) {
        if (sa.ss_family == AF_INET) uv_ip4_name((struct sockaddr_in *)&sa, c->addr, sizeof(c->addr));
        else if (sa.ss_family == AF_INET6) uv_ip6_name((struct sockaddr_in6 *)&sa, c->addr, sizeof(c->addr));
    }
    if (s->m.connections_open - s->n_closing > s->cfg.max_connections && !s->stopping) {
        size_t gone = reap_departed(s, c);
        if (gone > 0)
            PLAIT_LOG(PLAIT_LOG_INFO, "%zu connections whose peers had left closed before admitting conn=%llu", gone,
                      (unsigned long long)c->id);
    }
    if (s->m.connections_open - s->n_closing > s->cfg.max_connections || s->stopping) {
        plait__srv_reject(c, PLAIT__REJ_TOO_MANY, "%llu connections open (max_connections %llu) from %s",
               (unsigned long long)(s->m.connections_open - s->n_closing - 1),
               (unsigned long long)s->cfg.max_connections, c->addr);
        plait__srv_conn_close(c, 0);
        return;
    }
    /* Admission before authentication (server_admit.h): a bounded pool, a
     * per-address share of it, and the slots above it left to devices. The
     * pool is full here only when the accept did not wait: at max_connections,
     * with departed peers reaped since. */
    plait__admit_result_t ar =
        plait__admit_enter(&s->admit, c->addr, s->preauth_cap, (size_t)s->cfg.max_preauth_per_addr);
    if (ar != PLAIT__ADMIT_OK) {
        if (ar == PLAIT__ADMIT_ADDR_FULL)
            plait__srv_reject(c, PLAIT__REJ_ADDR_FULL, "%zu connections from %s before their hello (max_preauth_per_addr %llu)",
                   plait__admit_count(&s->admit, c->addr), c->addr, (unsigned long long)s->cfg.max_preauth_per_addr);
        else if (ar == PLAIT__ADMIT_POOL_FULL)
            plait__srv_reject(c, PLAIT__REJ_TOO_MANY, "%zu connections before their hello (pre-auth cap %zu) at max_connections %llu, from %s",
                              s->admit.preauth, s->preauth_cap, (unsigned long long)s->cfg.max_connections, c->addr);
        else
            PLAIT_LOG(PLAIT_LOG_ERROR, "pre-auth pool: out of memory");
        plait__srv_conn_close(c, 0);
        return;
    }
    c->preauth = 1;
    if (plait_tls_new(&c->tls, s->tls) != 0) {
        PLAIT_LOG(PLAIT_LOG_ERROR, "TLS session: %s", plait_errmsg());
        plait__srv_conn_close(c, 0);
        return;
    }
    (void)plait_tls_release_buffers(c->tls); /* until its ClientHello comes */
    uv_tcp_nodelay(&c->tcp, 1);
    PLAIT_LOG(PLAIT_LOG_DEBUG, "accept conn=%llu from %s", (unsigned long long)c->id, c->addr);
    if (uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read) != 0) plait__srv_conn_close(c, 0);
}
