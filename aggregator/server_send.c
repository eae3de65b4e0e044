/*
 * server_send.c: what the service sends its devices (server_int.h): frames
 * encrypted into the connection's TLS session and queued on libuv, and
 * adapter downloads paced through one send queue.
 *
 * The send queue is the ciphertext libuv holds for all connections together
 * (what the kernel's socket buffers did not take), capped by max_send_queue;
 * a download has one piece in flight beyond its socket and goes on from its
 * own write completion, or waits in a FIFO list while the queue is full. A
 * connection none of whose queued bytes the kernel took or the peer
 * acknowledged for DL_STALL_S is stalled; one stalled for DL_EVICT_S while
 * downloads wait is closed (write_stall). Loop thread only; logs carry
 * connection ids and sizes, never adapter bytes.
 */
#include "server_int.h"

#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#ifdef __linux__
#include <linux/sockios.h> /* SIOCOUTQ */
#endif

#include "plait/log.h"

static void resume_downloads(plait_server_t *s);

static void on_conn_write(uv_write_t *req, int status)
{
    wreq_t *w = (wreq_t *)req;
    conn_t *c = w->owner;
    plait_server_t *s = c->srv;
    c->wstalled = 0; /* progress (or the end) */
    c->out_queued -= w->len;
    if (c->out_queued == 0) c->wq_seen = 0; /* the next queued bytes start a new measure */
    s->out_total -= w->len;
    c->t_wprog = now_s(c->srv);
    free(w->mem);
    free(w);
    if (status < 0) {
        if (!c->closing) {
            PLAIT_LOG(PLAIT_LOG_INFO, "conn=%llu write failed: %s", (unsigned long long)c->id, uv_strerror(status));
            plait__srv_conn_close(c, 0);
        }
        resume_downloads(s); /* its bytes left the shared queue */
        return;
    }
    if (c->dl_active && !c->closing) plait__srv_pump_download(c);
    resume_downloads(s);
}

/* The shared send queue in use: every connection's bytes, stalled ones' too
 * (a stalled peer that holds its share while downloads wait is closed:
 * plait__srv_mark_write_stalls). */
static size_t queue_used(const plait_server_t *s) { return s->out_total; }

/* Downloads with nothing of their own in flight that found the shared queue
 * full wait in a list, oldest first (a download with bytes in flight goes on
 * from its own write completion): resuming them costs what they send, not a
 * scan of every connection after every write. */
static void dlw_add(conn_t *c)
{
    plait_server_t *s = c->srv;
    if (c->dl_waiting) return;
    c->dl_waiting = 1;
    c->dlw_next = NULL;
    c->dlw_prev = s->dlw_tail;
    if (s->dlw_tail) s->dlw_tail->dlw_next = c;
    else s->dlw_head = c;
    s->dlw_tail = c;
}

void plait__srv_dlw_remove(conn_t *c)
{
    plait_server_t *s = c->srv;
    if (!c->dl_waiting) return;
    if (c->dlw_prev) c->dlw_prev->dlw_next = c->dlw_next;
    else s->dlw_head = c->dlw_next;
    if (c->dlw_next) c->dlw_next->dlw_prev = c->dlw_prev;
    else s->dlw_tail = c->dlw_prev;
    c->dlw_prev = c->dlw_next = NULL;
    c->dl_waiting = 0;
}

/* Downloads that waited for room in the shared send queue (pump_download) go on. */
static void resume_downloads(plait_server_t *s)
{
    while (s->dlw_head && queue_used(s) < s->cfg.max_send_queue) {
        conn_t *o = s->dlw_head;
        plait__srv_dlw_remove(o);
        if (o->dl_active && !o->closing && o->out_queued == 0) plait__srv_pump_download(o);
    }
}

void plait__srv_mark_write_stalls(plait_server_t *s, double now)
{
    for (conn_t *c = s->conns; c; c = c->next) {
        if (c->closing || c->out_queued == 0) continue;
        /* A slow reader completes a 32 KiB write rarely, but between ticks the
         * peer acknowledges some of what the kernel holds (SIOCOUTQ: sent, not
         * yet acknowledged) or the kernel takes some of libuv's queue: that is
         * progress too. Writes are added only when a piece completes, which
         * counts as progress anyway. */
        size_t wq = uv_stream_get_write_queue_size((const uv_stream_t *)&c->tcp);
#ifdef SIOCOUTQ
        uv_os_fd_t fd;
        int outq = 0;
        if (uv_fileno((const uv_handle_t *)&c->tcp, &fd) == 0 && ioctl(fd, SIOCOUTQ, &outq) == 0 && outq > 0)
            wq += (size_t)outq;
#endif
        if (wq < c->wq_seen) c->t_wprog = now;
        c->wq_seen = wq;
        c->wstalled = now - c->t_wprog > DL_STALL_S;
        /* Its bytes count in the queue other downloads wait for: a peer that
         * has read nothing for DL_EVICT_S gives its place up (it may come
         * back for a later round), so peers that stop reading delay honest
         * downloads by seconds, not until write_stall (DL_EVICT_S > DL_STALL_S:
         * it is stalled). */
        if (s->dlw_head && now - c->t_wprog > DL_EVICT_S) {
            plait__srv_reject(c, PLAIT__REJ_WRITE_STALL, "%zu bytes unsent for %.3g s while downloads waited: the peer does not read",
                              c->out_queued, now - c->t_wprog);
            plait__srv_conn_close(c, 0); /* its queued writes are cancelled: resume_downloads runs */
        }
    }
}

/* Move the TLS session's pending ciphertext into a uv_write request: the
 * session's buffer itself, not a copy (a download moves megabytes a round). */
static int flush_out(conn_t *c)
{
    const uint8_t *p;
    uint8_t *mem;
    if (c->uv_closing || plait_tls_pending_out(c->tls, &p) == 0) return 0;
    wreq_t *w = malloc(sizeof(*w));
    if (!w) return PLAIT_ENOMEM;
    size_t n = plait_tls_take_out(c->tls, &mem, &p);
    w->owner = c;
    w->metrics = 0;
    w->len = n;
    w->mem = mem;
    uv_buf_t b = uv_buf_init((char *)p, (unsigned)n);
    if (uv_write(&w->req, (uv_stream_t *)&c->tcp, &b, 1, on_conn_write) < 0) {
        free(mem);
        free(w);
        return PLAIT_EIO;
    }
    if (c->out_queued == 0) c->t_wprog = now_s(c->srv);
    c->out_queued += n;
    c->srv->out_total += n;
    c->srv->m.bytes_out += n;
    return 0;
}

/* Flush, then let the session give its record buffers back if nothing lives
 * in them: every event on a connection ends here (a read, a send, the
 * handshake's flights), so the sessions of a cohort that waits (for the round
 * to fill, its download's turn, the next round) hold no 33 KB of mbedTLS
 * buffers each. The next read or write takes them back. */
int plait__srv_flush(conn_t *c)
{
    int rc = flush_out(c);
    (void)plait_tls_release_buffers(c->tls);
    return rc;
}

/* Encrypt a whole buffer (a frame) and queue it; keep: the session keeps its
 * record buffers (more frames follow at once). */
static int tls_send(conn_t *c, const uint8_t *buf, size_t len, int keep)
{
    size_t off = 0;
    int guard = 0;
    if (plait_tls_established(c->tls) && plait_tls_reserve_out(c->tls, len) != 0) return PLAIT_ENOMEM;
    while (off < len) {
        int r = plait_tls_write(c->tls, buf + off, len - off);
        if (r > 0) {
            off += (size_t)r;
        } else if (r == PLAIT_EAGAIN && guard++ < 64) {
            int f = flush_out(c); /* mid-frame: the session keeps its buffers */
            if (f != 0) return f;
        } else {
            return r == 0 ? PLAIT_EIO : r;
        }
    }
    return keep ? flush_out(c) : plait__srv_flush(c);
}

static int send_msg(conn_t *c, const plait_msg_t *m, int keep)
{
    uint8_t *buf = NULL;
    size_t len = 0;
    int rc = plait_wire_encode_alloc(m, &c->srv->lim, &buf, &len);
    if (rc != 0) {
        PLAIT_LOG(PLAIT_LOG_ERROR, "conn=%llu encode %s failed: %s (%s)", (unsigned long long)c->id,
                  plait_msg_type_name(m->type), plait_errmsg(), plait_err_name(rc));
        return rc;
    }
    rc = tls_send(c, buf, len, keep);
    free(buf);
    return rc;
}

int plait__srv_send_msg(conn_t *c, const plait_msg_t *m) { return send_msg(c, m, 0); }

void plait__srv_send_error(conn_t *c, int code, const char *msg)
{
    plait_msg_t m;
    plait_msg_init(&m, PLAIT_MSG_ERROR);
    m.u.error.code = code;
    snprintf(m.u.error.message, sizeof(m.u.error.message), "%s", msg);
    (void)plait__srv_send_msg(c, &m);
}

void plait__srv_send_cbl(conn_t *c, plait_retry_reason_t why, uint64_t retry_ms)
{
    plait_msg_t m;
    plait_msg_init(&m, PLAIT_MSG_COME_BACK_LATER);
    if (retry_ms < 1) retry_ms = 1;
    if (retry_ms > c->srv->lim.max_retry_ms) retry_ms = c->srv->lim.max_retry_ms;
    m.u.come_back_later.retry_ms = (uint32_t)retry_ms;
    m.u.come_back_later.reason = why;
    c->srv->m.come_back_later++;
    (void)plait__srv_send_msg(c, &m);
}

void plait__srv_pump_download(conn_t *c)
{
    plait_server_t *s = c->srv;
    size_t piece = s->lim.max_chunk_bytes < DL_PIECE_MAX ? s->lim.max_chunk_bytes : DL_PIECE_MAX;
    /* One piece in flight per connection beyond what its socket took (the next goes out when
     * the kernel has taken it; a few bytes of small messages may be queued too), and at most
     * max_send_queue bytes queued in all: the copies of a cohort's downloads do not grow with
     * the cohort (on_conn_write resumes). */
    while (c->dl_active && !c->closing && c->out_queued <= 4096 && queue_used(s) < s->cfg.max_send_queue) {
        blob_t *b = c->dl;
        size_t n = c->dl_len - c->dl_off < piece ? (size_t)(c->dl_len - c->dl_off) : piece;
        plait_msg_t m;
        plait_msg_init(&m, PLAIT_MSG_ADAPTER_CHUNK);
        m.u.adapter_chunk.version = b->version;
        m.u.adapter_chunk.offset = c->dl_off;
        m.u.adapter_chunk.total_len = c->dl_len;
        m.u.adapter_chunk.data = c->dl_data + c->dl_off;
        m.u.adapter_chunk.len = n;
        m.u.adapter_chunk.encoding = c->dl_enc;
        if (c->dl_off + n == c->dl_len) {
            m.u.adapter_chunk.has_sha256 = 1;
            memcpy(m.u.adapter_chunk.sha256, b->sha, 32);
        }
        if (send_msg(c, &m, 1) != 0) {
            plait__srv_conn_close(c, 0);
            return;
        }
        c->dl_off += n;
        s->m.download_bytes[c->dl_enc] += n;
        s->dl_round_bytes += n;
        if (c->dl_off == c->dl_len) {
            c->dl_active = 0;
            plait__srv_blob_unref(c->dl);
            c->dl = NULL;
            c->dl_data = NULL;
            PLAIT_LOG(PLAIT_LOG_DEBUG, "conn=%llu adapter sent", (unsigned long long)c->id);
        }
    }
    if (c->dl_active && !c->closing && c->out_queued == 0) dlw_add(c); /* the shared queue is full */
    if (!c->closing) (void)plait_tls_release_buffers(c->tls); /* once per pump, not per piece */
}
