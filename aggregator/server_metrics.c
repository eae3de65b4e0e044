/*
 * server_metrics.c: the service's metrics endpoint (server_int.h): plain
 * HTTP on its own listener, one `GET /metrics` per connection, answered with
 * metrics.c's rendering of the loop's counters, then closed.
 *
 * Bounds: a request is read into METRICS_REQ_MAX bytes (431 past that); at
 * most METRICS_MAX_CONNS connections (the oldest one still waiting goes when
 * a new one comes); each gets METRICS_DEADLINE_S to ask and be answered (the
 * tick closes it). Loop thread only. It is not authenticated: keep it on a
 * private network (operator-guide.md).
 */
#include "server_int.h"

#include <stdlib.h>
#include <string.h>

static void on_mconn_closed(uv_handle_t *h)
{
    mconn_t *mc = h->data;
    plait_server_t *s = mc->srv;
    if (mc->prev) mc->prev->next = mc->next;
    else s->mconns = mc->next;
    if (mc->next) mc->next->prev = mc->prev;
    s->n_mconns--;
    free(mc);
}

void plait__srv_mconn_close(mconn_t *mc)
{
    if (mc->closing) return;
    mc->closing = 1;
    uv_close((uv_handle_t *)&mc->tcp, on_mconn_closed);
}

static void on_mwrite(uv_write_t *req, int status)
{
    wreq_t *w = (wreq_t *)req;
    mconn_t *mc = w->owner;
    free(w);
    (void)status;
    plait__srv_mconn_close(mc);
}

static void mconn_reply(mconn_t *mc, const char *status, const char *ctype, const char *body, size_t blen)
{
    char head[256];
    int hl = snprintf(head, sizeof(head),
                      "HTTP/1.1 %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\nConnection: close\r\n\r\n", status,
                      ctype, blen);
    wreq_t *w = malloc(sizeof(*w) + (size_t)hl + blen);
    if (!w) {
        plait__srv_mconn_close(mc);
        return;
    }
    memcpy(w->data, head, (size_t)hl);
    if (blen) memcpy(w->data + hl, body, blen);
    w->owner = mc;
    w->metrics = 1;
    w->mem = NULL;
    w->len = (size_t)hl + blen;
    uv_buf_t b = uv_buf_init((char *)w->data, (unsigned)w->len);
    uv_read_stop((uv_stream_t *)&mc->tcp);
    if (uv_write(&w->req, (uv_stream_t *)&mc->tcp, &b, 1, on_mwrite) != 0) {
        free(w);
        plait__srv_mconn_close(mc);
    }
}

static void on_malloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    mconn_t *mc = h->data;
    (void)suggested;
    *buf = uv_buf_init(mc->req + mc->len, (unsigned)(sizeof(mc->req) - mc->len));
}

static void on_mread(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf)
{
    mconn_t *mc = st->data;
    (void)buf;
    if (mc->closing) return;
    if (nread < 0) {
        plait__srv_mconn_close(mc);
        return;
    }
    mc->len += (size_t)nread;
    size_t n = mc->len;
    int done = 0;
    for (size_t i = 3; i < n; i++)
        if (memcmp(mc->req + i - 3, "\r\n\r\n", 4) == 0) done = 1;
    if (!done && n < sizeof(mc->req)) return;
    if (!done) {
        mconn_reply(mc, "431 Request Header Fields Too Large", "text/plain", "", 0);
        return;
    }
    if (n >= 13 && (memcmp(mc->req, "GET /metrics ", 13) == 0 || memcmp(mc->req, "GET /metrics?", 13) == 0)) {
        plait_buf_t b;
        plait_buf_init(&b, 1 << 20);
        plait_server_t *s = mc->srv;
        s->m.connections_open = s->m.stalled_open = s->m.send_stalled = 0;
        for (conn_t *c = s->conns; c; c = c->next) {
            s->m.connections_open++;
            if (c->wstalled && c->out_queued > 0) {
                s->m.stalled_open++;
                s->m.send_stalled += c->out_queued;
            }
        }
        s->m.preauth_open = s->admit.preauth;
        s->m.accept_waiting = s->accept_waiting != 0;
        s->m.send_flowing = s->out_total - s->m.send_stalled;
        s->m.uploads_parked = s->n_parked;
        if (plait__metrics_render(&mc->srv->m, &b) == 0)
            mconn_reply(mc, "200 OK", "text/plain; version=0.0.4; charset=utf-8", b.data, b.len);
        else
            mconn_reply(mc, "500 Internal Server Error", "text/plain", "", 0);
        plait_buf_free(&b);
    } else {
        mconn_reply(mc, "404 Not Found", "text/plain", "try GET /metrics\n", 17);
    }
}

void plait__srv_on_mconn(uv_stream_t *l, int status)
{
    plait_server_t *s = l->data;
    if (status < 0) return;
    mconn_t *mc = calloc(1, sizeof(*mc));
    if (!mc) return;
    mc->srv = s;
    mc->t_open = now_s(s);
    uv_tcp_init(&s->loop, &mc->tcp);
    mc->tcp.data = mc;
    mc->next = s->mconns;
    if (s->mconns) s->mconns->prev = mc;
    s->mconns = mc;
    s->n_mconns++;
    if (s->n_mconns > METRICS_MAX_CONNS) {
        /* Full: the oldest connection still waiting for its request goes, so that
         * idle sockets cannot keep the scraper out (the list is newest first). */
        mconn_t *old = NULL;
        for (mconn_t *o = mc->next; o; o = o->next)
            if (!o->closing) old = o;
        if (old) {
            s->m.metrics_evicted++;
            plait__srv_mconn_close(old);
        }
    }
    size_t live = 0;
    for (mconn_t *o = s->mconns; o; o = o->next) live += !o->closing;
    if (uv_accept(l, (uv_stream_t *)&mc->tcp) != 0 || live > METRICS_MAX_CONNS || s->stopping ||
        uv_read_start((uv_stream_t *)&mc->tcp, on_malloc, on_mread) != 0)
        plait__srv_mconn_close(mc);
}
