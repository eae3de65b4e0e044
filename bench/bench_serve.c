/*
 * bench_serve.c: `plait-bench serve`, the aggregator's cost per round.
 *
 * A real deployment is made with the aggregator's own commands (init, one
 * `enroll` per device, called in-process), the real `plait-aggregator serve`
 * runs as a child process on 127.0.0.1, and N clients, each with its own
 * enrolled device certificate, speak the real protocol to it over mutual TLS:
 * hello, task, the whole adapter download (hash checked), a P-word update in
 * chunks, the ack, close_notify. The clients run on a small pool of threads
 * (--threads), each driving its share of the N connections with non-blocking
 * sockets and poll(), so N = 1000 needs neither 1000 threads nor 1000 blocking
 * waits. Each client keeps its TLS config across rounds, so from round 2 on a
 * handshake resumes with a session ticket, as a returning agent's does.
 *
 * Per round it prints the server's CPU time (user + system of the whole
 * server process, from /proc/PID/stat, between "round opened" and "round
 * committed" in its log), the wall time, and the ciphertext bytes per device
 * each way (TCP payload: TLS records, handshakes included); at the end the
 * medians and the server's peak RSS (VmHWM). The plain protocol is used
 * (secure_agg = false); P = update words = 5780·rank + 1 with FedIT LoRA on
 * all seven projections of stories260K, rank = round(P / 5780). The clients
 * send the update packed at quant_bits when the task says packed_update (the
 * aggregator's default), as the agent does, else as 32-bit words. With
 * --delta-bits 8|16 the deployment commits quantized download deltas
 * (download_delta_bits) and each client, from round 2 on, asks for a delta
 * from the adapter it holds and rebuilds the new one as the agent does (load
 * the held file, apply the delta, serialize, check the task's SHA-256), so
 * the server's cost per round includes what a fleet with deltas costs it.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "bench.h"
#include "cli.h"
#include "plait/adapter.h"
#include "plait/crypto.h"
#include "plait/delta.h"
#include "plait/lora.h"
#include "plait/model.h"
#include "plait/rng.h"
#include "plait/tls.h"
#include "plait/update.h"
#include "plait/wire.h"

#ifndef PLAIT_AGG_BIN
#define PLAIT_AGG_BIN "plait-aggregator"
#endif

#define SRV_WORDS_PER_RANK 5780u /* FedIT, all seven projections of stories260K, per unit of rank */

enum { CL_IDLE, CL_CONNECTING, CL_HANDSHAKE, CL_WAIT_TASK, CL_DOWNLOAD, CL_UPLOAD, CL_WAIT_ACK, CL_DONE, CL_FAILED };

typedef struct {
    char id[32];
    plait_tls_config_t *cfg;
    plait_tls_t *tls;
    int fd, st;
    double wake;
    uint8_t *in;
    size_t in_len, in_cap;
    uint8_t *out; /* the encoded frame being handed to TLS */
    size_t out_len, out_off;
    plait_msg_task_t task;
    plait_sha256_t h;
    uint64_t have;
    size_t up_off;
    uint32_t up_idx;
    uint64_t up_bytes, down_bytes;
    int resumed;
    uint8_t *held, *dl;    /* the adapter file it holds; the download being received */
    size_t held_len, held_cap, dl_cap;
    uint8_t held_sha[32];
    plait_adapter_encoding_t enc;
    int delta_used;        /* this round's download was a delta */
    int retries;           /* transport failures before the task, this round (cl_fail) */
    char first_retry[64];
    char why[320];
} srv_client_t;

typedef struct {
    srv_client_t *cl;
    size_t n, first, step;
    const uint32_t *words;
    size_t n_words;
    int port;
    uint8_t model_sha[32];
    const plait_model_t *model; /* for rebuilding deltas (read-only, shared by the threads) */
    int delta;                  /* clients ask for DELTA downloads */
    plait_wire_limits_t lim;
} srv_pool_t;

typedef struct {
    srv_pool_t *pool;
    size_t t;
} srv_thread_t;

static void cl_close(srv_client_t *c);

/* A transport failure before the task (connect, handshake, a closed connection: a burst of
 * 1,000 connects can overflow the listen queue) is retried after 0.5 s, up to CL_RETRIES
 * times a round, as an agent reconnects; anything later fails the device. */
#define CL_RETRIES 10

static void cl_fail(srv_client_t *c, const char *what, int rc)
{
    if (c->st == CL_FAILED) return;
    if (c->st <= CL_WAIT_TASK && c->retries < CL_RETRIES && rc == PLAIT_EIO) {
        if (c->retries++ == 0) snprintf(c->first_retry, sizeof(c->first_retry), "%s", what);
        cl_close(c);
        c->wake = bench_now() + 0.5;
        c->st = CL_IDLE;
        return;
    }
    snprintf(c->why, sizeof(c->why), "%s: %s (%d)", what, plait_err_name(rc), rc);
    c->st = CL_FAILED;
}

static void cl_close(srv_client_t *c)
{
    if (c->fd >= 0) close(c->fd);
    c->fd = -1;
    plait_tls_free(c->tls);
    c->tls = NULL;
    free(c->in);
    c->in = NULL;
    c->in_len = c->in_cap = 0;
    free(c->out);
    c->out = NULL;
    c->out_len = c->out_off = 0;
}

static int cl_queue(srv_client_t *c, const plait_msg_t *m, const plait_wire_limits_t *lim)
{
    free(c->out);
    c->out = NULL;
    c->out_off = 0;
    return plait_wire_encode_alloc(m, lim, &c->out, &c->out_len);
}

/* Move pending ciphertext to the socket; 0, or -1 on a socket error. */
static int cl_flush(srv_client_t *c)
{
    const uint8_t *p;
    size_t n;
    while ((n = plait_tls_pending_out(c->tls, &p)) > 0) {
        ssize_t w = send(c->fd, p, n, MSG_NOSIGNAL);
        if (w < 0) return (errno == EAGAIN || errno == EWOULDBLOCK) ? 0 : -1;
        plait_tls_consume_out(c->tls, (size_t)w);
        c->up_bytes += (uint64_t)w;
    }
    return 0;
}

/* The next upload chunk into c->out; 1 queued, 0 none left. */
static int cl_next_chunk(srv_client_t *c, const srv_pool_t *p)
{
    if (c->up_off >= p->n_words) return 0;
    plait_msg_t m;
    if (c->task.packed_update) { /* packed at quant_bits, as the agent sends it */
        plait_wire_limits_t lim = p->lim;
        if (c->task.max_chunk_bytes && c->task.max_chunk_bytes < lim.max_chunk_bytes)
            lim.max_chunk_bytes = c->task.max_chunk_bytes;
        plait_wire_xfer_t x;
        plait_wire_xfer_init(&x, c->task.round_id, p->n_words, c->up_off);
        x.index = c->up_idx;
        uint8_t *buf = malloc(lim.max_chunk_bytes);
        int rc = buf ? plait_wire_update_tx_next_packed(&x, &lim, p->words, c->task.quant_bits, buf,
                                                         lim.max_chunk_bytes, &m)
                     : PLAIT_ENOMEM;
        if (rc == 1) rc = cl_queue(c, &m, &p->lim);
        free(buf);
        if (rc != 0) {
            cl_fail(c, "packing an update chunk", rc);
            return 0;
        }
        c->up_off = (size_t)x.next;
        c->up_idx = x.index;
        return 1;
    }
    size_t per = c->task.max_chunk_bytes ? c->task.max_chunk_bytes / 4 : 65536;
    if (c->up_idx == 0 && per > PLAIT_WIRE_UPDATE_LEAD_WORDS) per = PLAIT_WIRE_UPDATE_LEAD_WORDS; /* as the agent */
    size_t n = p->n_words - c->up_off < per ? p->n_words - c->up_off : per;
    plait_msg_init(&m, PLAIT_MSG_UPDATE_CHUNK);
    m.u.update_chunk.round_id = c->task.round_id;
    m.u.update_chunk.chunk_index = c->up_idx++;
    m.u.update_chunk.offset = c->up_off;
    m.u.update_chunk.total_elements = p->n_words;
    m.u.update_chunk.words = p->words + c->up_off;
    m.u.update_chunk.n_words = n;
    c->up_off += n;
    int rc = cl_queue(c, &m, &p->lim);
    if (rc != 0) cl_fail(c, "encoding an update chunk", rc);
    return rc == 0;
}

/* A DELTA download (c->dl, c->have bytes) applied to the held adapter, as the agent rebuilds it
 * (agent_dl.c): the new file replaces the held one and its SHA-256 goes to got. 0, or -1 (failed). */
static int cl_rebuild(srv_client_t *c, const srv_pool_t *p, uint8_t got[32])
{
    plait_lora_t l;
    plait_lora_init(&l);
    if (!c->held) {
        cl_fail(c, "a delta without a held adapter", PLAIT_EPROTO);
        return -1;
    }
    int rc = plait_adapter_load_mem(&l, c->held, c->held_len, p->model, 0);
    if (rc == 0) rc = plait_delta_apply(l.params, l.n_params, c->dl, (size_t)c->have, l.params);
    uint8_t *img = NULL;
    size_t n = 0;
    if (rc == 0) rc = plait_adapter_save_mem(&l, p->model_sha, &img, &n);
    plait_lora_free(&l);
    if (rc != 0) {
        cl_fail(c, "rebuilding the adapter from its delta", rc);
        return -1;
    }
    plait_sha256(img, n, got);
    free(c->held);
    c->held = img;
    c->held_len = c->held_cap = n;
    c->delta_used = 1;
    return 0;
}

static void cl_handle(srv_client_t *c, const srv_pool_t *p, plait_msg_t *m, double now)
{
    if (m->type == PLAIT_MSG_ERROR) {
        snprintf(c->why, sizeof(c->why), "server error %d: %s", m->u.error.code, m->u.error.message);
        c->st = CL_FAILED;
        return;
    }
    if (c->st == CL_WAIT_TASK && m->type == PLAIT_MSG_COME_BACK_LATER) {
        /* No round yet or cohort not open: come back, as an agent would. */
        uint32_t ms = m->u.come_back_later.retry_ms;
        c->wake = now + (ms > 200 ? 200 : ms) / 1000.0;
        (void)plait_tls_close_notify(c->tls);
        (void)cl_flush(c);
        cl_close(c);
        c->st = CL_IDLE;
        return;
    }
    if (c->st == CL_WAIT_TASK && m->type == PLAIT_MSG_TASK) {
        c->task = m->u.task;
        if (c->task.update_elements != p->n_words) {
            snprintf(c->why, sizeof(c->why), "task wants %llu update words, the bench has %zu",
                     (unsigned long long)c->task.update_elements, p->n_words);
            c->st = CL_FAILED;
            return;
        }
        plait_msg_t r;
        plait_msg_init(&r, PLAIT_MSG_ADAPTER_REQUEST);
        r.u.adapter_request.round_id = c->task.round_id;
        r.u.adapter_request.version = c->task.adapter_version;
        if (p->delta && c->held) { /* as an agent holding the last version asks */
            r.u.adapter_request.accept = 1u << PLAIT_ADAPTER_DELTA;
            r.u.adapter_request.has_base = 1;
            memcpy(r.u.adapter_request.base_sha256, c->held_sha, 32);
        }
        c->delta_used = 0;
        int rc = cl_queue(c, &r, &p->lim);
        if (rc != 0) { cl_fail(c, "encoding the adapter request", rc); return; }
        plait_sha256_init(&c->h);
        c->have = 0;
        c->st = CL_DOWNLOAD;
        return;
    }
    if (c->st == CL_DOWNLOAD && m->type == PLAIT_MSG_ADAPTER_CHUNK) {
        const plait_msg_adapter_chunk_t *a = &m->u.adapter_chunk;
        if (a->offset != c->have) { cl_fail(c, "adapter chunk out of order", PLAIT_EPROTO); return; }
        if (a->offset == 0) c->enc = a->encoding;
        if (a->total_len > p->lim.max_adapter_bytes || a->offset + a->len > a->total_len)
            { cl_fail(c, "adapter chunk length", PLAIT_EPROTO); return; }
        if (c->dl_cap < a->total_len) {
            uint8_t *g = realloc(c->dl, a->total_len);
            if (!g) { cl_fail(c, "download buffer", PLAIT_ENOMEM); return; }
            c->dl = g;
            c->dl_cap = a->total_len;
        }
        memcpy(c->dl + a->offset, a->data, a->len);
        plait_sha256_update(&c->h, a->data, a->len);
        c->have += a->len;
        if (a->has_sha256) {
            uint8_t got[32];
            plait_sha256_finish(&c->h, got);
            if (c->enc == PLAIT_ADAPTER_DELTA) {
                if (cl_rebuild(c, p, got) != 0) return;
            } else {
                uint8_t *t = c->held; /* the file becomes the held adapter; the old buffer is reused */
                size_t tcap = c->held_cap;
                c->held = c->dl;
                c->held_cap = c->dl_cap;
                c->held_len = (size_t)c->have;
                c->dl = t;
                c->dl_cap = tcap;
            }
            if (memcmp(got, a->sha256, 32) != 0 || memcmp(got, c->task.adapter_sha256, 32) != 0)
                { cl_fail(c, "adapter hash", PLAIT_EAUTH); return; }
            memcpy(c->held_sha, got, 32);
            c->st = CL_UPLOAD;
            c->up_off = 0;
            c->up_idx = 0;
            if (c->out_off >= c->out_len) (void)cl_next_chunk(c, p);
        }
        return;
    }
    if ((c->st == CL_UPLOAD || c->st == CL_WAIT_ACK) && m->type == PLAIT_MSG_ACK) {
        if (m->u.ack.round_id != c->task.round_id) { cl_fail(c, "ack of another round", PLAIT_EPROTO); return; }
        (void)plait_tls_close_notify(c->tls);
        (void)cl_flush(c);
        cl_close(c);
        c->st = CL_DONE;
        return;
    }
    if (m->type == PLAIT_MSG_PING) return;
    snprintf(c->why, sizeof(c->why), "unexpected message type %d in state %d", (int)m->type, c->st);
    c->st = CL_FAILED;
}

static void cl_connect(srv_client_t *c, const srv_pool_t *p)
{
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    if (c->fd < 0) { cl_fail(c, "socket", PLAIT_EIO); return; }
    int one = 1;
    (void)setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    struct sockaddr_in sa;
    memset(&sa, 0, sizeof(sa));
    sa.sin_family = AF_INET;
    sa.sin_port = htons((uint16_t)p->port);
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(c->fd, (struct sockaddr *)&sa, sizeof(sa)) != 0 && errno != EINPROGRESS)
        { cl_fail(c, "connect", PLAIT_EIO); return; }
    int rc = plait_tls_new(&c->tls, c->cfg);
    if (rc != 0) { cl_fail(c, "TLS session", rc); return; }
    c->st = CL_CONNECTING;
}

/* One step of a connected client after poll() said its socket is ready. */
static void cl_pump(srv_client_t *c, const srv_pool_t *p, short rev, double now)
{
    if (c->st == CL_CONNECTING) {
        if (!(rev & (POLLOUT | POLLERR | POLLHUP))) return;
        int err = 0;
        socklen_t el = sizeof(err);
        if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &el) != 0 || err != 0) { cl_fail(c, "connect", PLAIT_EIO); return; }
        c->st = CL_HANDSHAKE;
    }
    if (rev & (POLLIN | POLLHUP | POLLERR)) {
        uint8_t buf[65536];
        int peer_closed = 0;
        for (;;) {
            ssize_t r = recv(c->fd, buf, sizeof(buf), 0);
            if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
            if (r <= 0) { cl_fail(c, "server closed the connection", PLAIT_EIO); return; }
            c->down_bytes += (uint64_t)r;
            int rc = plait_tls_feed(c->tls, buf, (size_t)r);
            if (rc != 0) { cl_fail(c, "TLS feed", rc); return; }
            /* Drain now so the session's input buffer stays bounded. */
            if (c->st == CL_HANDSHAKE) break;
            for (;;) {
                if (c->in_cap - c->in_len < 65536) {
                    size_t cap = c->in_cap ? c->in_cap * 2 : 131072;
                    uint8_t *g = realloc(c->in, cap);
                    if (!g) { cl_fail(c, "input buffer", PLAIT_ENOMEM); return; }
                    c->in = g;
                    c->in_cap = cap;
                }
                int n = plait_tls_read(c->tls, c->in + c->in_len, c->in_cap - c->in_len);
                if (n == PLAIT_EAGAIN) break;
                if (n == 0) { /* close_notify: the frames before it still count (a come-back-later) */
                    peer_closed = 1;
                    break;
                }
                if (n < 0) { cl_fail(c, plait_tls_reason(c->tls), n); return; }
                c->in_len += (size_t)n;
            }
            for (;;) {
                plait_msg_t m;
                size_t used = 0;
                int rc2 = plait_wire_parse(c->in, c->in_len, &p->lim, 0, &m, &used);
                if (rc2 == PLAIT_EAGAIN) break;
                if (rc2 != 0) { cl_fail(c, "parsing a frame", rc2); return; }
                memmove(c->in, c->in + used, c->in_len - used);
                c->in_len -= used;
                cl_handle(c, p, &m, now);
                plait_msg_free(&m);
                if (c->st == CL_DONE || c->st == CL_FAILED || c->st == CL_IDLE) return;
            }
            if (peer_closed) { cl_fail(c, "server sent close_notify", PLAIT_EIO); return; }
        }
    }
    if (c->st == CL_HANDSHAKE) {
        int rc = plait_tls_handshake(c->tls);
        if (rc == 0) {
            c->resumed = plait_tls_resumed(c->tls);
            plait_msg_t h;
            plait_msg_init(&h, PLAIT_MSG_HELLO);
            snprintf(h.u.hello.client_version, sizeof(h.u.hello.client_version), "plait-bench/1");
            memcpy(h.u.hello.base_model_sha256, p->model_sha, 32);
            h.u.hello.capabilities = PLAIT_CAP_FEDIT | PLAIT_CAP_FFA | PLAIT_CAP_RESUME;
            if ((rc = cl_queue(c, &h, &p->lim)) != 0) { cl_fail(c, "encoding hello", rc); return; }
            c->st = CL_WAIT_TASK;
        } else if (rc != PLAIT_EAGAIN) {
            { cl_fail(c, plait_tls_reason(c->tls), rc); return; }
        }
    }
    /* Hand queued plaintext to TLS, flushing as we go. */
    while (c->st >= CL_WAIT_TASK && c->st <= CL_WAIT_ACK) {
        if (c->out_off >= c->out_len) {
            if (c->st != CL_UPLOAD || !cl_next_chunk(c, p)) {
                if (c->st == CL_UPLOAD && c->up_off >= p->n_words) c->st = CL_WAIT_ACK;
                break;
            }
        }
        int w = plait_tls_write(c->tls, c->out + c->out_off, c->out_len - c->out_off);
        if (w == PLAIT_EAGAIN) {
            if (cl_flush(c) != 0) { cl_fail(c, "send", PLAIT_EIO); return; }
            if (plait_tls_pending_out(c->tls, &(const uint8_t *){NULL}) >= PLAIT_TLS_OUT_HIGH) break;
            continue;
        }
        if (w < 0) { cl_fail(c, plait_tls_reason(c->tls), w); return; }
        c->out_off += (size_t)w;
        if (cl_flush(c) != 0) { cl_fail(c, "send", PLAIT_EIO); return; }
    }
    if (c->tls && cl_flush(c) != 0) { cl_fail(c, "send", PLAIT_EIO); return; }
}

static void *pool_thread(void *arg)
{
    srv_thread_t *th = arg;
    srv_pool_t *p = th->pool;
    size_t cap = p->n / p->step + 2;
    struct pollfd *pf = calloc(cap, sizeof(*pf));
    size_t *who = calloc(cap, sizeof(*who));
    if (!pf || !who) {
        for (size_t i = th->t; i < p->n; i += p->step) cl_fail(&p->cl[i], "pool memory", PLAIT_ENOMEM);
        free(pf);
        free(who);
        return NULL;
    }
    double give_up = bench_now() + 900;
    for (;;) {
        double now = bench_now();
        size_t k = 0, live = 0;
        double next_wake = now + 0.05;
        for (size_t i = th->t; i < p->n; i += p->step) {
            srv_client_t *c = &p->cl[i];
            if (c->st == CL_IDLE) {
                if (now >= c->wake) cl_connect(c, p);
                else if (c->wake < next_wake) next_wake = c->wake;
            }
            if (c->st == CL_DONE || c->st == CL_FAILED) continue;
            live++;
            if (c->st == CL_IDLE || c->fd < 0) continue;
            const uint8_t *q;
            short ev = POLLIN;
            if (c->st == CL_CONNECTING || plait_tls_pending_out(c->tls, &q) > 0) ev |= POLLOUT;
            pf[k].fd = c->fd;
            pf[k].events = ev;
            pf[k].revents = 0;
            who[k++] = i;
        }
        if (live == 0) break;
        if (now > give_up) {
            for (size_t i = th->t; i < p->n; i += p->step)
                if (p->cl[i].st != CL_DONE) cl_fail(&p->cl[i], "no progress in 900 s", PLAIT_EAGAIN);
            break;
        }
        int ms = (int)((next_wake - now) * 1000) + 1;
        int r = poll(pf, k, ms < 1 ? 1 : ms);
        if (r < 0 && errno != EINTR) break;
        now = bench_now();
        for (size_t j = 0; j < k && r > 0; j++)
            if (pf[j].revents) cl_pump(&p->cl[who[j]], p, pf[j].revents, now);
    }
    for (size_t i = th->t; i < p->n; i += p->step)
        if (p->cl[i].st == CL_FAILED) cl_close(&p->cl[i]);
    free(pf);
    free(who);
    return NULL;
}

/* ---- the server process -------------------------------------------------------- */

typedef struct {
    char dir[512], log[600];
    pid_t pid;
    int port;
    FILE *logf; /* read incrementally */
    char tail[256];
} srv_server_t;

static int cli(const char *a0, ...)
{
    char *argv[40];
    int argc = 0;
    argv[argc++] = (char *)"plait-aggregator";
    va_list ap;
    va_start(ap, a0);
    for (const char *a = a0; a && argc < 39; a = va_arg(ap, const char *)) argv[argc++] = (char *)a;
    va_end(ap);
    argv[argc] = NULL;
    FILE *null = fopen("/dev/null", "w");
    int rc = plait__agg_cli_main(argc, argv, null ? null : stdout, stderr);
    if (null) fclose(null);
    return rc;
}

static char *slurp(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *s = n >= 0 ? malloc((size_t)n + 1) : NULL;
    if (s && fread(s, 1, (size_t)n, f) != (size_t)n) {
        free(s);
        s = NULL;
    }
    if (s) s[n] = '\0';
    fclose(f);
    return s;
}

/* Seconds of CPU (user + system, all threads) the process has used so far. */
static double proc_cpu(pid_t pid)
{
    char path[64], buf[1024];
    snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = '\0';
    char *q = strrchr(buf, ')');
    if (!q) return -1;
    unsigned long ut = 0, stt = 0;
    /* after ") ": state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime */
    if (sscanf(q + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &ut, &stt) != 2) return -1;
    return (double)(ut + stt) / (double)sysconf(_SC_CLK_TCK);
}

/* A /proc/PID/status field in KiB (VmHWM, VmRSS), or -1. */
static long proc_kib(pid_t pid, const char *field)
{
    char path[64], line[256];
    snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    long v = -1;
    size_t fl = strlen(field);
    while (fgets(line, sizeof(line), f))
        if (strncmp(line, field, fl) == 0 && line[fl] == ':') v = strtol(line + fl + 1, NULL, 10);
    fclose(f);
    return v;
}

/* Restart the process's VmHWM from its current resident set (Linux 4.0+), so
 * that a round's own peak can be read; 0 on success. */
static int proc_reset_hwm(pid_t pid)
{
    char path[64];
    snprintf(path, sizeof(path), "/proc/%d/clear_refs", (int)pid);
    FILE *f = fopen(path, "w");
    if (!f) return -1;
    int ok = fputs("5", f) >= 0;
    return (fclose(f) == 0 && ok) ? 0 : -1;
}

/* Wait until the server's log has a line containing needle (read from where the last wait stopped). */
static int log_wait(srv_server_t *s, const char *needle, double timeout_s)
{
    double end = bench_now() + timeout_s;
    char line[4096];
    while (bench_now() < end) {
        if (!s->logf) s->logf = fopen(s->log, "r");
        if (s->logf) {
            clearerr(s->logf);
            while (fgets(line, sizeof(line), s->logf)) {
                if (strstr(line, needle)) return 0;
                if (strstr(line, "round failed") || strstr(line, "round commit failed") || strstr(line, "round abandoned")) {
                    fprintf(stderr, "plait-bench serve: the server says: %s", line);
                    return -1;
                }
            }
        }
        int st;
        if (waitpid(s->pid, &st, WNOHANG) == s->pid) {
            s->pid = 0;
            fprintf(stderr, "plait-bench serve: the aggregator exited (log: %s)\n", s->log);
            return -1;
        }
        struct timespec ts = {0, 10 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    fprintf(stderr, "plait-bench serve: no '%s' in the log within %.0f s (log: %s)\n", needle, timeout_s, s->log);
    return -1;
}

static int server_start(srv_server_t *s, const char *bin)
{
    char pf[700];
    snprintf(pf, sizeof(pf), "%s/ports.json", s->dir);
    unlink(pf);
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0) return -1;
    if (pid == 0) {
        int fd = open(s->log, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (fd >= 0) {
            dup2(fd, 2);
            dup2(fd, 1);
            close(fd);
        }
        execl(bin, bin, "serve", s->dir, "--port", "0", "--metrics-port", "0", "--port-file", pf, (char *)NULL);
        _exit(127);
    }
    s->pid = pid;
    for (int i = 0; i < 600; i++) {
        char *t = slurp(pf);
        int port = 0, m = 0;
        if (t && sscanf(t, "{\"port\": %d, \"metrics_port\": %d}", &port, &m) == 2 && port > 0) {
            free(t);
            s->port = port;
            return 0;
        }
        free(t);
        int st;
        if (waitpid(pid, &st, WNOHANG) == pid) {
            s->pid = 0;
            return -1;
        }
        struct timespec ts = {0, 50 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    return -1;
}

static void server_stop(srv_server_t *s)
{
    if (s->pid <= 0) return;
    kill(s->pid, SIGTERM);
    for (int i = 0; i < 300; i++) {
        int st;
        if (waitpid(s->pid, &st, WNOHANG) == s->pid) {
            s->pid = 0;
            return;
        }
        struct timespec ts = {0, 50 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    kill(s->pid, SIGKILL);
    int st;
    waitpid(s->pid, &st, 0);
    s->pid = 0;
}

/* ---- one row (N devices, P words, R rounds) ------------------------------------ */

typedef struct {
    const char *bin, *model, *workdir;
    size_t threads, rounds, preauth;
    unsigned bits, delta_bits;
    int keep;
} srv_opts_t;

static int run_row(const srv_opts_t *o, size_t N, size_t P)
{
    size_t rank = (P + SRV_WORDS_PER_RANK / 2) / SRV_WORDS_PER_RANK;
    if (rank < 1) rank = 1;
    size_t n_words = SRV_WORDS_PER_RANK * rank + 1;
    srv_server_t s;
    memset(&s, 0, sizeof(s));
    snprintf(s.dir, sizeof(s.dir), "%s/serve-%zu-%zu-%d", o->workdir, N, P, (int)getpid());
    snprintf(s.log, sizeof(s.log), "%s.log", s.dir);
    char kv[16][96];
    int k = 0;
    snprintf(kv[k++], 96, "secure_agg=false");
    snprintf(kv[k++], 96, "lora_mode=fedit");
    snprintf(kv[k++], 96, "lora_targets=wq,wk,wv,wo,w1,w2,w3");
    snprintf(kv[k++], 96, "lora_rank=%zu", rank);
    snprintf(kv[k++], 96, "target_cohort=%zu", N);
    snprintf(kv[k++], 96, "min_cohort=%zu", N);
    snprintf(kv[k++], 96, "overselect=1");
    snprintf(kv[k++], 96, "max_connections=%zu", 2 * N + 4 * o->preauth); /* the pre-auth pool is at most 3/4 of it */
    snprintf(kv[k++], 96, "max_preauth_connections=%zu", o->preauth);
    snprintf(kv[k++], 96, "max_preauth_per_addr=%zu", o->preauth); /* every client is 127.0.0.1 */
    snprintf(kv[k++], 96, "quant_bits=%u", o->bits);
    snprintf(kv[k++], 96, "selection_timeout_s=900");
    snprintf(kv[k++], 96, "round_timeout_s=900");
    snprintf(kv[k++], 96, "retry_ms=200");
    snprintf(kv[k++], 96, "auth_timeout_s=120");
    snprintf(kv[k++], 96, "download_delta_bits=%u", o->delta_bits);
    int rc = cli("init", s.dir, "--base-model", o->model, "--set", kv[0], "--set", kv[1], "--set", kv[2], "--set", kv[3],
                 "--set", kv[4], "--set", kv[5], "--set", kv[6], "--set", kv[7], "--set", kv[8], "--set", kv[9], "--set",
                 kv[10], "--set", kv[11], "--set", kv[12], "--set", kv[13], "--set", kv[14], "--set", kv[15], NULL);
    if (rc != 0) {
        fprintf(stderr, "plait-bench serve: init %s failed\n", s.dir);
        return 1;
    }
    srv_pool_t p;
    memset(&p, 0, sizeof(p));
    p.n = N;
    p.step = o->threads;
    p.n_words = n_words;
    plait_wire_limits_default(&p.lim);
    p.cl = calloc(N, sizeof(*p.cl));
    uint32_t *words = malloc(n_words * sizeof(uint32_t));
    float *x = malloc((n_words - 1) * sizeof(float));
    char *ca = NULL;
    int ok = p.cl && words && x;
    if (ok) {
        /* One update for every device: small coordinates (norm 1e-4 * sqrt(P) < clip 1). */
        plait_rng_t rng;
        plait_rng_seed_u64(&rng, 42, 7);
        for (size_t i = 0; i + 1 < n_words; i++) x[i] = (float)(1e-4 * plait_rng_uniform(&rng) - 5e-5);
        plait_quant_config_t qc = {o->bits, 1.0};
        ok = plait_quant_encode(&qc, x, n_words - 1, &rng, words) == 0 &&
             plait_quant_encode_weight(&qc, 1.0, &rng, &words[n_words - 1]) == 0;
        p.words = words;
    }
    free(x);
    plait_model_t mdl;
    memset(&mdl, 0, sizeof(mdl));
    if (ok && plait_model_load(&mdl, o->model) == 0) {
        memcpy(p.model_sha, mdl.sha256, 32);
        p.model = &mdl;
        p.delta = o->delta_bits != 0;
    } else {
        ok = 0;
    }
    char path[700];
    snprintf(path, sizeof(path), "%s/ca.crt", s.dir);
    if (ok && !(ca = slurp(path))) ok = 0;
    double t_enroll = bench_now();
    for (size_t i = 0; ok && i < N; i++) {
        srv_client_t *c = &p.cl[i];
        c->fd = -1;
        snprintf(c->id, sizeof(c->id), "dev-%05zu", i);
        char crt[700], key[700];
        snprintf(crt, sizeof(crt), "%s/%s.crt", s.dir, c->id);
        snprintf(key, sizeof(key), "%s/%s.key", s.dir, c->id);
        if (cli("enroll", s.dir, "--device", c->id, "--out-key", key, "--out-cert", crt, NULL) != 0) {
            ok = 0;
            break;
        }
        char *cp = slurp(crt), *kp = slurp(key);
        ok = cp && kp && plait_tls_config_client(&c->cfg, ca, cp, kp, "127.0.0.1") == 0 &&
             plait_tls_config_tickets(c->cfg, 86400) == 0;
        if (kp) plait_zeroize(kp, strlen(kp));
        free(cp);
        free(kp);
    }
    free(ca);
    if (!ok) fprintf(stderr, "plait-bench serve: setting up %zu devices failed\n", N);
    t_enroll = bench_now() - t_enroll;
    if (ok && server_start(&s, o->bin) != 0) {
        fprintf(stderr, "plait-bench serve: %s serve %s did not start (log: %s)\n", o->bin, s.dir, s.log);
        ok = 0;
    }
    p.port = s.port;
    double *cpu = calloc(o->rounds, sizeof(double)), *wall = calloc(o->rounds, sizeof(double));
    double *up = calloc(o->rounds, sizeof(double)), *down = calloc(o->rounds, sizeof(double));
    if (!cpu || !wall || !up || !down) ok = 0;
    size_t done = 0;
    long hwm_max = -1; /* KiB: the peak over start-up and every round (VmHWM is restarted per round) */
    if (ok) fprintf(stderr, "  [N=%zu P=%zu: %zu devices enrolled in %.1f s]\n", N, n_words, N, t_enroll);
    for (size_t r = 1; ok && r <= o->rounds; r++) {
        char needle[96];
        snprintf(needle, sizeof(needle), "round opened round=%zu ", r);
        if (log_wait(&s, needle, 120) != 0) {
            ok = 0;
            break;
        }
        /* The peak before this round (start-up, earlier rounds) is kept in
         * hwm_max; the round's own peak is read when it commits. */
        long h = proc_kib(s.pid, "VmHWM");
        if (h > hwm_max) hwm_max = h;
        int hwm_reset = proc_reset_hwm(s.pid) == 0;
        double c0 = proc_cpu(s.pid), t0 = bench_now();
        for (size_t i = 0; i < N; i++) {
            srv_client_t *c = &p.cl[i];
            c->st = CL_IDLE;
            c->wake = 0;
            c->up_bytes = c->down_bytes = 0;
            c->retries = 0;
            c->why[0] = '\0';
        }
        pthread_t th[64];
        srv_thread_t ta[64];
        size_t nt = 0;
        for (; nt < o->threads; nt++) {
            ta[nt].pool = &p;
            ta[nt].t = nt;
            if (pthread_create(&th[nt], NULL, pool_thread, &ta[nt]) != 0) break;
        }
        for (size_t i = 0; i < nt; i++) pthread_join(th[i], NULL);
        size_t failed = 0, resumed = 0, deltas = 0, retried = 0;
        uint64_t ub = 0, db = 0;
        for (size_t i = 0; i < N; i++) {
            if (p.cl[i].retries > 0 && retried++ == 0)
                fprintf(stderr, "plait-bench serve: round %zu: device %s reconnected %d time(s) before its task (first: %s)\n",
                        r, p.cl[i].id, p.cl[i].retries, p.cl[i].first_retry);
            if (p.cl[i].st != CL_DONE) {
                if (failed++ == 0) fprintf(stderr, "plait-bench serve: device %s: %s\n", p.cl[i].id, p.cl[i].why);
            }
            resumed += (size_t)p.cl[i].resumed;
            deltas += (size_t)p.cl[i].delta_used;
            ub += p.cl[i].up_bytes;
            db += p.cl[i].down_bytes;
        }
        if (retried > 1) fprintf(stderr, "plait-bench serve: round %zu: %zu devices reconnected\n", r, retried);
        if (failed || nt != o->threads) {
            fprintf(stderr, "plait-bench serve: round %zu: %zu of %zu devices failed\n", r, failed, N);
            ok = 0;
            break;
        }
        snprintf(needle, sizeof(needle), "round committed round=%zu ", r);
        if (log_wait(&s, needle, 600) != 0) {
            ok = 0;
            break;
        }
        cpu[r - 1] = proc_cpu(s.pid) - c0;
        wall[r - 1] = bench_now() - t0;
        up[r - 1] = (double)ub / (double)N;
        down[r - 1] = (double)db / (double)N;
        done = r;
        long rh = proc_kib(s.pid, "VmHWM");
        char rpeak[48] = "";
        if (hwm_reset && rh > 0) snprintf(rpeak, sizeof(rpeak), ", round peak %.1f MiB", (double)rh / 1024.0);
        printf("  round %zu: server CPU %.3f s, wall %.3f s, up %.3f MB/device, down %.3f MB/device, resumed %zu/%zu, "
               "delta downloads %zu/%zu, server RSS %.1f MiB%s\n",
               r, cpu[r - 1], wall[r - 1], up[r - 1] / 1e6, down[r - 1] / 1e6, resumed, N, deltas, N,
               (double)proc_kib(s.pid, "VmRSS") / 1024.0, rpeak);
        fflush(stdout);
    }
    if (s.pid > 0) {
        long h = proc_kib(s.pid, "VmHWM");
        if (h > hwm_max) hwm_max = h;
    }
    double hwm = hwm_max > 0 ? (double)hwm_max / 1024.0 : -1;
    server_stop(&s);
    if (done > 0) {
        /* Round 1 pays the full handshakes; the medians are over all rounds. */
        printf("| %zu | %zu | %u | %s | %zu | %.3f | %.3f | %.3f | %.3f | %.1f |\n", N, n_words, o->bits,
               o->delta_bits == 8 ? "8" : o->delta_bits == 16 ? "16" : "off", done,
               bench_median(cpu, done), bench_median(wall, done), bench_median(up, done) / 1e6,
               bench_median(down, done) / 1e6, hwm);
        fflush(stdout);
    }
    for (size_t i = 0; p.cl && i < N; i++) {
        cl_close(&p.cl[i]);
        plait_tls_config_free(p.cl[i].cfg);
        free(p.cl[i].held);
        free(p.cl[i].dl);
    }
    plait_model_free(&mdl);
    free(p.cl);
    free(words);
    free(cpu);
    free(wall);
    free(up);
    free(down);
    if (s.logf) fclose(s.logf);
    if (ok && !o->keep) {
        char cmd[1400];
        snprintf(cmd, sizeof(cmd), "rm -rf '%s' '%s'", s.dir, s.log);
        if (system(cmd) != 0) fprintf(stderr, "plait-bench serve: could not remove %s\n", s.dir);
    }
    return ok && done == o->rounds ? 0 : 1;
}

typedef struct {
    size_t *v, n, max;
    const char *flag;
} size_list_t;

/* --n / --p: up to 8 comma-separated counts of 1..max. */
static int set_list(void *dest, const char *value)
{
    size_list_t *l = dest;
    char buf[256];
    snprintf(buf, sizeof(buf), "%s", value);
    size_t n = 0;
    for (char *save = NULL, *t = strtok_r(buf, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
        char *end;
        errno = 0;
        unsigned long long x = strtoull(t, &end, 10);
        if (n == 8 || *end || end == t || errno || x == 0 || x > l->max || t[0] == '-')
            return plait_fail(PLAIT_EINVAL, "%s '%.60s' is not a list of at most 8 counts of 1..%zu", l->flag, value,
                              l->max);
        l->v[n++] = (size_t)x;
    }
    if (n == 0) return plait_fail(PLAIT_EINVAL, "%s: an empty list", l->flag);
    l->n = n;
    return 0;
}

int bench_serve(int argc, char **argv)
{
    size_t ns[8] = {10, 100, 1000}, ps[8] = {100000, 1000000};
    size_list_t nl = {ns, 3, 100000, "--n"}, pl = {ps, 2, 16000000, "--p"};
    srv_opts_t o = {PLAIT_AGG_BIN, NULL, "/tmp", 2, 3, 64, 16, 0, 0};
    char model[1024];
    const char *assets = getenv("PLAIT_ASSETS");
    snprintf(model, sizeof(model), "%s/stories260K.bin", assets && *assets ? assets : "../shared/assets");
    o.model = model;
    const char *model_flag = NULL;
    plait_flag_t flags[] = {
        PLAIT_F_CUSTOM("n", &nl, set_list, "LIST", "device counts, comma-separated (default 10,100,1000)"),
        PLAIT_F_CUSTOM("p", &pl, set_list, "LIST", "update words, comma-separated (default 100000,1000000); rows N x P"),
        PLAIT_F_SIZE("rounds", &o.rounds, 1, 1000, "R", "rounds per row", 1),
        PLAIT_F_U32("bits", &o.bits, 8, 32, "B", "quant_bits of the deployment", 1),
        PLAIT_F_U32("delta-bits", &o.delta_bits, 0, 16, "D",
                    "download_delta_bits of the deployment, 0, 8 or 16 (default 0); with 8 or 16\n"
                    "the clients ask for deltas from round 2 and rebuild them as agents do", 0),
        PLAIT_F_SIZE("threads", &o.threads, 1, 64, "T", "client threads", 1),
        PLAIT_F_SIZE("preauth", &o.preauth, 1, 100000, "K",
                     "max_preauth_connections of the deployment (handshakes in progress at once;\n"
                     "the rest wait in the listen backlog)", 1),
        PLAIT_F_STR("aggregator", &o.bin, "PATH", "the plait-aggregator binary (default the one built with this bench)"),
        PLAIT_F_STR("model", &model_flag, "PATH", "stories260K.bin (default $PLAIT_ASSETS or ../shared/assets)"),
        PLAIT_F_STR("workdir", &o.workdir, "DIR", "where deployments are made (default /tmp)"),
        PLAIT_F_SET("keep", &o.keep, 1, "keep each row's deployment and server log"),
    };
    plait_flags_cmd_t cmd = {
        .prog = "plait-bench serve",
        .about = "The real plait-aggregator serve on 127.0.0.1 and N TLS clients (enrolled devices, a pool of T\n"
                 "threads with non-blocking sockets) uploading P-word updates (plain protocol, FedIT on all\n"
                 "seven projections of stories260K) for R rounds. Prints per round the server's CPU time\n"
                 "(user + system of the server process), wall time, TLS bytes per device each way, and a\n"
                 "Markdown row of medians with the server's peak RSS (VmHWM).\n",
        .flags = flags,
        .n_flags = sizeof(flags) / sizeof(flags[0]),
    };
    int st = bench_flags(&cmd, argc, argv);
    if (st >= 0) return st;
    if (o.delta_bits != 0 && o.delta_bits != 8 && o.delta_bits != 16) {
        fprintf(stderr, "plait-bench serve: --delta-bits %u is not 0, 8 or 16\n", o.delta_bits);
        return 2;
    }
    if (model_flag) o.model = model_flag;
    size_t nn = nl.n, np = pl.n;
    signal(SIGPIPE, SIG_IGN);
    char mach[400];
    bench_machine(mach, sizeof(mach));
    double la[3] = {0, 0, 0};
    if (getloadavg(la, 3) < 0) la[0] = -1;
    printf("plait-bench serve: %s; load average %.2f at start; %zu rounds per row, %zu client threads\n", mach, la[0],
           o.rounds, o.threads);
    printf("| devices N | update words P | quant bits | download delta bits | rounds | server CPU/round s | "
           "wall/round s | up MB/device | down MB/device | server peak RSS MiB |\n|---|---|---|---|---|---|---|---|---|---|\n");
    fflush(stdout);
    int rc = 0;
    for (size_t j = 0; j < np; j++)
        for (size_t i = 0; i < nn; i++)
            if (run_row(&o, ns[i], ps[j]) != 0) rc = 1;
    if (getloadavg(la, 3) >= 0) printf("load average %.2f at the end\n", la[0]);
    return rc;
}
