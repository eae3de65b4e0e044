/*
 * server.c: the aggregator service, libuv glue around the round core.
 *
 * Threads: one loop thread (the caller of plait_server_run) owns the
 * listeners, every connection, the metrics, and the round core. The commit of
 * a round (aggregate, server-optimizer step, adapter serialization, store
 * transaction) runs on a libuv worker; while it runs (`busy`) the loop thread
 * does not touch the round core, the DP rng, the work adapter or the store,
 * and it answers devices with come-back-later or "late". The result is
 * applied in after_work on the loop thread.
 *
 * A connection: TCP handle → TLS session over memory buffers (tls.h) →
 * plaintext frame buffer → plait_frame_decode/plait_wire_decode (wire.h) →
 * handle_msg. Invariants:
 *   - a connection's memory is freed only in its close callback (after libuv
 *     has called back every pending write with its status);
 *   - before the Hello is accepted, frames are capped at max_preauth_frame
 *     and only a Hello is accepted; the handshake and Hello must complete
 *     within auth_timeout_s; any connection silent for idle_timeout_s is closed;
 *   - the plaintext buffer never holds more than one frame plus one TLS read;
 *   - a protocol error closes that connection (after queueing an Error frame
 *     and close_notify), never the process; every refusal is logged once,
 *     with its reason, and counted in rejections_total{reason}.
 * One periodic uv_timer (the tick) drives handshake/idle deadlines, forced
 * closes of connections that do not drain, and the round deadlines.
 *
 * Logs carry connection ids, device ids (pseudonymous certificate CNs), round
 * ids, sizes and error names; never update words, adapter bytes or keys.
 */
#include "plait/server.h"

#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "metrics.h"
#include "server_admit.h"
#include "server_secagg.h"
#include "svcstore.h"
#include "plait/adapter.h"
#include "plait/crashpoint.h"
#include "plait/crypto.h"
#include "plait/log.h"
#include "plait/lora.h"
#include "plait/model.h"
#include "plait/pki.h"
#include "plait/rng.h"
#include "selection.h"
#include "plait/round.h"
#include "plait/tls.h"
#include "plait/ddg.h"
#include "plait/update.h"
#include "plait/wire.h"

#define PLAIN_CHUNK 16384          /* plaintext read per plait_tls_read */
#define READ_BUF 65536             /* ciphertext read per uv read */
#define CLOSE_GRACE_S 2.0          /* a closing connection gets this long to drain */
#define METRICS_REQ_MAX 2048       /* bytes of an HTTP request we read */
#define METRICS_MAX_CONNS 64
#define METRICS_DEADLINE_S 2.0     /* a metrics connection gets this long to ask and be answered */
#define REVOKE_SWEEP_S 1.0         /* revocation list reload and live-session sweep period */
#define TICK_MS 50

/* A serialized global adapter, shared by the connections downloading it. */
typedef struct blob_s {
    int refs;
    uint64_t version;
    uint8_t *data;
    size_t len;
    uint8_t sha[32];
} blob_t;

typedef struct conn_s conn_t;
struct conn_s {
    uv_tcp_t tcp;
    uv_shutdown_t shut;
    plait_server_t *srv;
    conn_t *prev, *next;
    plait_tls_t *tls;
    uint64_t id;
    int established, authed, closing, uv_closing;
    char device[PLAIT_PKI_ID_MAX + 1];
    uint64_t client;
    double t_open, t_last, t_close;
    uint8_t *in;
    size_t in_len, in_cap;
    size_t out_queued;
    double t_wprog; /* last write progress (for the write-stall limit) */
    /* round participation */
    uint64_t round_id; /* server round id this connection was selected for, 0 if none */
    blob_t *dl;
    uint64_t dl_off;
    int dl_active;
    uint32_t *upd;
    uint64_t upd_total, upd_have;
    uint32_t upd_next;
    char addr[PLAIT__ADMIT_ADDR_MAX]; /* peer IP address */
    int preauth;                      /* counted in the pre-auth pool (server_admit.h) */
};

typedef struct mconn_s mconn_t;
struct mconn_s {
    uv_tcp_t tcp;
    plait_server_t *srv;
    mconn_t *prev, *next;
    double t_open;
    int closing;
    char req[METRICS_REQ_MAX];
    size_t len;
};

typedef struct {
    uv_write_t req;
    void *owner; /* conn_t or mconn_t */
    int metrics;
    size_t len;
    uint8_t data[];
} wreq_t;

typedef struct {
    uint64_t client;
    int submitted; /* 0 training, 1 accepted, 2 held (uploaded during selection), -1 refused or
                      dropped, -2 left during selection, -3 declined during selection */
    char device[PLAIT_PKI_ID_MAX + 1];
    uint32_t *pending; /* submitted == 2: the update, owned */
    size_t n_pending;
    double left_at;    /* submitted == -2: when its last connection closed */
    int revoked;       /* revoked while in the round: its update is not taken */
} member_t;

typedef struct {
    uint64_t client;
    uint64_t last_round;
} pace_t;

struct plait_server_s {
    uv_loop_t loop;
    uv_tcp_t listener, mlistener;
    uv_timer_t tick;
    uv_signal_t sigterm, sigint;
    uv_async_t stop_async;
    int have_metrics;
    int port, metrics_port;
    char dir[1024];
    plait_aggcfg_t cfg;
    plait_wire_limits_t lim;
    plait_tls_config_t *tls;
    plait_pki_revlist_t rev;
    char rev_path[1100];
    double rev_checked;
    plait_aggstore_t *store;     /* writer: loop thread at setup and shutdown, else only inside jobs */
    plait_aggstore_t *store_r;   /* reader: loop thread (device checks) */
    plait__svc_stats_t rs;       /* counters of the current round */
    /* model and adapter */
    plait_model_config_t mcfg;
    uint8_t base_sha[32];
    plait_lora_t lora;           /* worker-owned while busy: template for blobs */
    plait_lora_mode_t mode;
    size_t span_off, span_len;
    float *committed;            /* last committed global span (span_len floats) */
    blob_t *blob;                /* the committed global adapter */
    /* round core */
    plait_round_config_t rcfg;
    plait_round_t *round;
    plait_rng_t rng;
    plait_sel_t *sel;            /* Poisson sampling of the cohort (dp = central) */
    plait_rng_t sel_rng;         /* its draws: a stream of its own, loop thread only */
    uint64_t cur_rid;            /* store id of the open (or last) round, 0 before the first */
    uint64_t cur_core;           /* the round core's id of the same round */
    int loop_init;
    uint64_t blob_version_for_job; /* base version of the round being opened */
    int round_live;              /* a round was opened and has not been ended by the service */
    double next_open;            /* open the next round at or after this time */
    int open_err;                /* code of the last failure to open a round (logged once per change), or 0 */
    member_t *cohort;
    size_t n_cohort, cap_cohort;
    pace_t *pace;
    size_t n_pace, cap_pace;
    /* commit work */
    uv_work_t work;
    int busy;
    /* connections */
    conn_t *conns;
    mconn_t *mconns;
    size_t n_mconns;
    uint64_t next_conn_id;
    int stopping, stopped_handles;
    plait__metrics_t m;
    plait__admit_t admit;
    size_t preauth_cap;
    size_t n_closing;            /* connections closing (not counted against max_connections) */
    double rev_swept;
    /* secure aggregation (server_secagg.c): the round's SecAgg+ state, or NULL */
    plait__sa_t *sa;
    int sa_failed;               /* the last round could not start secure aggregation: back off */
    uint64_t fill_logged;        /* 1 + the live device count of the last "can never fill" warning, 0: none */
    uint8_t dep[32];             /* deployment id: SHA-256 of the CA certificate */
    char *ca_pem;
    uint8_t readbuf[READ_BUF];
    uint8_t plain[PLAIN_CHUNK];
    int read_busy;
};

/* ---- small helpers --------------------------------------------------------- */

static double now_s(plait_server_t *s) { return (double)uv_now(&s->loop) / 1000.0; }

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

static void blob_unref(blob_t *b)
{
    if (b && --b->refs == 0) {
        free(b->data);
        free(b);
    }
}

static member_t *member_find(plait_server_t *s, uint64_t client)
{
    for (size_t i = 0; i < s->n_cohort; i++)
        if (s->cohort[i].client == client) return &s->cohort[i];
    return NULL;
}

static int member_add(plait_server_t *s, uint64_t client, const char *device)
{
    if (s->n_cohort == s->cap_cohort) {
        size_t nc = s->cap_cohort ? 2 * s->cap_cohort : 16;
        member_t *n = realloc(s->cohort, nc * sizeof(*n));
        if (!n) return PLAIT_ENOMEM;
        s->cohort = n;
        s->cap_cohort = nc;
    }
    s->cohort[s->n_cohort].client = client;
    s->cohort[s->n_cohort].submitted = 0;
    s->cohort[s->n_cohort].pending = NULL;
    s->cohort[s->n_cohort].revoked = 0;
    snprintf(s->cohort[s->n_cohort].device, sizeof(s->cohort[s->n_cohort].device), "%s", device);
    s->n_cohort++;
    return 0;
}

static uint64_t pace_last(plait_server_t *s, uint64_t client)
{
    for (size_t i = 0; i < s->n_pace; i++)
        if (s->pace[i].client == client) return s->pace[i].last_round;
    return 0;
}

static void pace_mark(plait_server_t *s, uint64_t client, uint64_t rid)
{
    for (size_t i = 0; i < s->n_pace; i++)
        if (s->pace[i].client == client) {
            s->pace[i].last_round = rid;
            return;
        }
    if (s->n_pace == s->cap_pace) {
        size_t nc = s->cap_pace ? 2 * s->cap_pace : 64;
        pace_t *n = realloc(s->pace, nc * sizeof(*n));
        if (!n) return; /* pace steering is best effort */
        s->pace = n;
        s->cap_pace = nc;
    }
    s->pace[s->n_pace].client = client;
    s->pace[s->n_pace].last_round = rid;
    s->n_pace++;
}

/* Reject: count and log once. */
static void reject(conn_t *c, plait__rej_t why, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;

static void reject(conn_t *c, plait__rej_t why, const char *fmt, ...)
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

/* ---- writing ------------------------------------------------------------------ */

static void conn_close(conn_t *c, int graceful);
static void pump_download(conn_t *c);

static void on_conn_write(uv_write_t *req, int status)
{
    wreq_t *w = (wreq_t *)req;
    conn_t *c = w->owner;
    c->out_queued -= w->len;
    c->t_wprog = now_s(c->srv);
    free(w);
    if (status < 0) {
        if (!c->closing) {
            PLAIT_LOG(PLAIT_LOG_INFO, "conn=%llu write failed: %s", (unsigned long long)c->id, uv_strerror(status));
            conn_close(c, 0);
        }
        return;
    }
    if (c->dl_active && !c->closing) pump_download(c);
}

/* Move the TLS session's pending ciphertext into uv_write requests. */
static int flush(conn_t *c)
{
    const uint8_t *p;
    size_t n;
    while (!c->uv_closing && (n = plait_tls_pending_out(c->tls, &p)) > 0) {
        wreq_t *w = malloc(sizeof(*w) + n);
        if (!w) return PLAIT_ENOMEM;
        memcpy(w->data, p, n);
        w->owner = c;
        w->metrics = 0;
        w->len = n;
        uv_buf_t b = uv_buf_init((char *)w->data, (unsigned)n);
        int rc = uv_write(&w->req, (uv_stream_t *)&c->tcp, &b, 1, on_conn_write);
        if (rc < 0) {
            free(w);
            return PLAIT_EIO;
        }
        plait_tls_consume_out(c->tls, n);
        if (c->out_queued == 0) c->t_wprog = now_s(c->srv);
        c->out_queued += n;
        c->srv->m.bytes_out += n;
    }
    return 0;
}

/* Encrypt a whole buffer (a frame) and queue it. */
static int tls_send(conn_t *c, const uint8_t *buf, size_t len)
{
    size_t off = 0;
    int guard = 0;
    while (off < len) {
        int r = plait_tls_write(c->tls, buf + off, len - off);
        if (r > 0) {
            off += (size_t)r;
        } else if (r == PLAIT_EAGAIN && guard++ < 64) {
            int f = flush(c);
            if (f != 0) return f;
        } else {
            return r == 0 ? PLAIT_EIO : r;
        }
    }
    return flush(c);
}

static int send_msg(conn_t *c, const plait_msg_t *m)
{
    uint8_t *buf = NULL;
    size_t len = 0;
    int rc = plait_wire_encode_alloc(m, &c->srv->lim, &buf, &len);
    if (rc != 0) {
        PLAIT_LOG(PLAIT_LOG_ERROR, "conn=%llu encode %s failed: %s (%s)", (unsigned long long)c->id,
                  plait_msg_type_name(m->type), plait_errmsg(), plait_err_name(rc));
        return rc;
    }
    rc = tls_send(c, buf, len);
    free(buf);
    return rc;
}

static void send_error(conn_t *c, int code, const char *msg)
{
    plait_msg_t m;
    plait_msg_init(&m, PLAIT_MSG_ERROR);
    m.u.error.code = code;
    snprintf(m.u.error.message, sizeof(m.u.error.message), "%s", msg);
    (void)send_msg(c, &m);
}

static void send_cbl(conn_t *c, plait_retry_reason_t why, uint64_t retry_ms)
{
    plait_msg_t m;
    plait_msg_init(&m, PLAIT_MSG_COME_BACK_LATER);
    if (retry_ms < 1) retry_ms = 1;
    if (retry_ms > c->srv->lim.max_retry_ms) retry_ms = c->srv->lim.max_retry_ms;
    m.u.come_back_later.retry_ms = (uint32_t)retry_ms;
    m.u.come_back_later.reason = why;
    c->srv->m.come_back_later++;
    (void)send_msg(c, &m);
}

/* ---- closing ------------------------------------------------------------------ */

static void on_conn_closed(uv_handle_t *h)
{
    conn_t *c = h->data;
    plait_server_t *s = c->srv;
    if (c->prev) c->prev->next = c->next;
    else s->conns = c->next;
    if (c->next) c->next->prev = c->prev;
    s->m.connections_open--;
    if (c->closing) s->n_closing--;
    if (c->preauth) plait__admit_leave(&s->admit, c->addr);
    plait_tls_free(c->tls);
    blob_unref(c->dl);
    free(c->upd);
    if (c->in) plait_zeroize(c->in, c->in_cap);
    free(c->in);
    free(c);
}

/* Our FIN is out. Lingering close: keep reading (and discarding) until the
 * peer closes too, or CLOSE_GRACE_S passes (tick), so that unread input does
 * not turn our close into a RST that destroys the Error frame in flight. */
static void on_shutdown(uv_shutdown_t *req, int status)
{
    conn_t *c = req->data;
    if (status < 0 && !c->uv_closing) {
        c->uv_closing = 1;
        uv_close((uv_handle_t *)&c->tcp, on_conn_closed);
    }
}

/* A selected device left before its update was in: tell the round core. */
static void conn_leave_round(conn_t *c)
{
    plait_server_t *s = c->srv;
    if (c->round_id == 0 || c->round_id != s->cur_rid || s->busy || s->round == NULL) return;
    member_t *mb = member_find(s, c->client);
    if (s->sa && mb) { /* a secure round has no rejoin: the device's round keys died with it */
        for (conn_t *o = s->conns; o; o = o->next)
            if (o != c && !o->closing && o->client == c->client && o->round_id == c->round_id) return;
        plait__sa_left(s->sa, c->client);
        return;
    }
    if (mb == NULL || mb->submitted) return;
    /* Another live connection of the same device keeps its place. */
    for (conn_t *o = s->conns; o; o = o->next)
        if (o != c && !o->closing && o->client == c->client && o->round_id == c->round_id) return;
    /* The device may reconnect and resume (protocol.md §6, crash-safe resume):
     * it becomes a dropout only after rejoin_grace_s, and only in training (the
     * core takes no dropouts while selecting). */
    mb->submitted = -2;
    mb->left_at = now_s(s);
    PLAIT_LOG(PLAIT_LOG_INFO, "device left round=%llu device=%s (a dropout unless it reconnects within %.3g s)",
              (unsigned long long)c->round_id, c->device, s->cfg.rejoin_grace_s);
}

static void submit_member(plait_server_t *s, member_t *mb, uint32_t *words, size_t n, conn_t *c);
static void signal_round_end(plait_server_t *s, plait_retry_reason_t why);

/* Once training has started: submit updates held since selection, and report
 * devices that left during selection as dropouts. */
static void report_early_dropouts(plait_server_t *s)
{
    /* s->busy: a submission completed the round and its commit job owns the core now. */
    for (size_t i = 0; i < s->n_cohort && !s->busy && plait_round_state(s->round) == PLAIT_ROUND_TRAINING; i++) {
        member_t *mb = &s->cohort[i];
        if (mb->submitted == 2) {
            uint32_t *w = mb->pending;
            mb->pending = NULL;
            submit_member(s, mb, w, mb->n_pending, NULL);
            continue;
        }
        if (mb->submitted != -3 && (mb->submitted != -2 || now_s(s) - mb->left_at < s->cfg.rejoin_grace_s))
            continue;
        mb->submitted = -1;
        if (plait_round_dropout(s->round, mb->client, s->cur_core, now_s(s)) == 0)
            PLAIT_LOG(PLAIT_LOG_INFO, "dropout round=%llu device=%s", (unsigned long long)s->cur_rid, mb->device);
    }
}

static void conn_close(conn_t *c, int graceful)
{
    if (c->closing) return;
    c->closing = 1;
    c->srv->n_closing++;
    /* Closing connections do not count against max_connections, so unauthenticated ones may
     * linger (to flush a TLS alert) only while few do: past the pre-auth pool they are closed
     * at once, and failed handshakes cannot pile up descriptors. */
    if (graceful && c->preauth && c->srv->n_closing > c->srv->preauth_cap) graceful = 0;
    c->dl_active = 0;
    c->t_close = now_s(c->srv);
    if (c->preauth) {
        plait__admit_leave(&c->srv->admit, c->addr);
        c->preauth = 0;
    }
    conn_leave_round(c);
    if (graceful && c->tls) {
        (void)plait_tls_close_notify(c->tls);
        if (flush(c) == 0) {
            c->shut.data = c;
            if (uv_shutdown(&c->shut, (uv_stream_t *)&c->tcp, on_shutdown) == 0) return;
        }
    }
    uv_read_stop((uv_stream_t *)&c->tcp);
    c->uv_closing = 1;
    uv_close((uv_handle_t *)&c->tcp, on_conn_closed);
}

/* Refuse with an Error frame (when the session can still carry one), then close. */
static void fail_conn(conn_t *c, plait__rej_t why, int code, const char *wire_msg)
{
    if (c->established && wire_msg) send_error(c, code, wire_msg);
    conn_close(c, 1);
    (void)why;
}

/* ---- the round ---------------------------------------------------------------- */

static void fill_task(plait_server_t *s, plait_msg_task_t *t)
{
    const plait_aggcfg_t *cf = &s->cfg;
    t->round_id = s->cur_rid;
    t->adapter_version = s->blob->version;
    t->adapter_len = s->blob->len;
    memcpy(t->adapter_sha256, s->blob->sha, 32);
    t->lora.rank = (uint32_t)cf->lora_rank;
    t->lora.alpha = (float)cf->lora_alpha;
    t->lora.targets = s->lora.cfg.targets;
    t->lora.mode = s->mode;
    t->lora.a_seed = cf->a_seed;
    t->train.local_steps = (uint32_t)cf->local_steps;
    t->train.batch = (uint32_t)cf->batch;
    t->train.seq_len = (uint32_t)cf->seq_len;
    t->train.lr = cf->lr;
    t->train.prox_mu = cf->prox_mu;
    t->clip_norm = plait_round_clip(s->round);
    t->quant_bits = plait_round_quant(s->round)->bits;
    t->quant_range = plait_round_quant(s->round)->range;
    t->secure_agg = 0;
    t->dp.mode = s->rcfg.dp ? PLAIT_DP_CENTRAL : PLAIT_DP_NONE;
    t->dp.noise_multiplier = s->rcfg.dp ? s->cfg.noise_multiplier : 0;
    if (s->rcfg.ddg && plait_aggcfg_ddg_variance(&s->cfg, &t->dp.ddg_var_num, &t->dp.ddg_var_den) == 0) {
        t->dp.mode = PLAIT_DP_DISTRIBUTED; /* validated at startup: cannot fail here */
        t->dp.noise_multiplier = s->cfg.noise_multiplier;
    }
    plait_round_stats_t st;
    plait_round_stats(s->round, &st);
    double left = s->rcfg.round_timeout_s;
    if (st.state == PLAIT_ROUND_TRAINING) left = st.t_train + s->rcfg.round_timeout_s - now_s(s);
    else left += st.t_open + s->rcfg.selection_timeout_s - now_s(s);
    if (left < 1) left = 1;
    if (left > s->lim.max_deadline_s) left = s->lim.max_deadline_s;
    t->deadline_s = (uint32_t)ceil(left);
    t->update_elements = s->span_len + 1 + (size_t)s->rcfg.clip_bit;
    t->clip_bit = s->rcfg.clip_bit; /* adaptive clipping: one more word, the device's "norm <= clip" bit */
    t->example_cap = (uint32_t)cf->example_cap;
    t->max_chunk_bytes = (uint32_t)s->lim.max_chunk_bytes;
}

static void send_task(conn_t *c)
{
    plait_server_t *s = c->srv;
    plait_msg_t m;
    plait_msg_init(&m, PLAIT_MSG_TASK);
    fill_task(s, &m.u.task);
    if (s->sa && plait__sa_task(s->sa, c->client, &m.u.task) != 0) {
        send_cbl(c, PLAIT_RETRY_SECAGG_CLOSED, s->cfg.retry_ms);
        conn_close(c, 1);
        return;
    }
    c->round_id = s->cur_rid;
    s->m.tasks_offered++;
    PLAIT_LOG(PLAIT_LOG_INFO, "task round=%llu device=%s conn=%llu version=%llu",
              (unsigned long long)s->cur_rid, c->device, (unsigned long long)c->id,
              (unsigned long long)s->blob->version);
    (void)send_msg(c, &m);
}

/* The answer to a Hello: a task, or come back later (pace steering). */
static void offer(conn_t *c)
{
    plait_server_t *s = c->srv;
    if (s->stopping) {
        send_cbl(c, PLAIT_RETRY_SHUTTING_DOWN, s->cfg.retry_ms);
        conn_close(c, 1);
        return;
    }
    if (s->busy || s->round == NULL || !s->round_live) {
        send_cbl(c, PLAIT_RETRY_NO_ROUND, s->cfg.retry_ms);
        conn_close(c, 1);
        return;
    }
    plait_round_state_t st = plait_round_state(s->round);
    member_t *mb = member_find(s, c->client);
    if (mb && s->sa) { /* secure round: a device that left cannot come back into it */
        send_cbl(c, PLAIT_RETRY_SECAGG_CLOSED, s->cfg.retry_ms);
        conn_close(c, 1);
        return;
    }
    if (mb && (mb->submitted == 0 || mb->submitted == 2 || mb->submitted == -2) &&
        (st == PLAIT_ROUND_SELECTION || st == PLAIT_ROUND_TRAINING)) {
        /* Reconnected (crash-safe resume): same task again; a held update stays held. */
        if (mb->submitted == -2) mb->submitted = 0;
        /* Reconnected: the device keeps its place; the older connection goes. */
        for (conn_t *o = s->conns; o; o = o->next)
            if (o != c && !o->closing && o->client == c->client && o->round_id == s->cur_rid) {
                o->round_id = 0;
                PLAIT_LOG(PLAIT_LOG_INFO, "conn=%llu replaced by conn=%llu device=%s", (unsigned long long)o->id,
                          (unsigned long long)c->id, c->device);
                conn_close(o, 1);
            }
        send_task(c);
        return;
    }
    if (st != PLAIT_ROUND_SELECTION || mb) { /* mb: done with this round (declined, refused) */
        /* Pace steering only when pace_rounds asks for it. */
        send_cbl(c, mb && s->cfg.pace_rounds > 0 ? PLAIT_RETRY_PACE : PLAIT_RETRY_NO_ROUND, s->cfg.retry_ms);
        conn_close(c, 1);
        return;
    }
    uint64_t last = pace_last(s, c->client);
    if (s->cfg.pace_rounds > 0 && last > 0 && s->cur_rid - last <= s->cfg.pace_rounds) {
        send_cbl(c, PLAIT_RETRY_PACE, s->cfg.retry_ms * (s->cfg.pace_rounds - (s->cur_rid - last) + 1));
        conn_close(c, 1);
        return;
    }
    if (s->rcfg.poisson) {
        /* Poisson sampling: admitted with probability q, decided once per round. */
        int admitted = 0;
        int e = plait_sel_decide(s->sel, &s->sel_rng, c->client, &admitted, NULL);
        if (e != 0 || !admitted) {
            send_cbl(c, e != 0 ? PLAIT_RETRY_BUSY : PLAIT_RETRY_NOT_SAMPLED, s->cfg.retry_ms);
            conn_close(c, 1);
            return;
        }
    }
    int rc = plait_round_select(s->round, c->client, now_s(s));
    if (rc == 0 && s->sa && (rc = plait__sa_assign(s->sa, c->client, c->device)) != 0)
        PLAIT_LOG(PLAIT_LOG_ERROR, "secagg: no index for device=%s: %s", c->device, plait_errmsg());
    if (rc == PLAIT_EBUSY) {
        send_cbl(c, PLAIT_RETRY_COHORT_FULL, s->cfg.retry_ms);
        conn_close(c, 1);
        return;
    }
    if (rc != 0 || member_add(s, c->client, c->device) != 0) {
        PLAIT_LOG(PLAIT_LOG_ERROR, "select device=%s failed: %s", c->device, plait_err_name(rc));
        send_cbl(c, PLAIT_RETRY_BUSY, s->cfg.retry_ms);
        conn_close(c, 1);
        return;
    }
    pace_mark(s, c->client, s->cur_rid);
    send_task(c);
}

/* ---- store jobs on a worker ------------------------------------------------- *
 * Every write to the store runs on a libuv worker, one job at a time (`busy`).
 * While a job runs the loop thread touches neither the writer connection nor
 * the round core nor s->lora; after_job applies the result on the loop thread. */

typedef enum { JOB_BEGIN, JOB_FAIL, JOB_COMMIT } job_kind_t;

typedef struct {
    uv_work_t req;
    plait_server_t *s;
    job_kind_t kind;
    int rc;
    int core_committed;
    char why[300];
    /* BEGIN */
    char *task_json;
    int64_t rid;
    /* FAIL */
    char reason[200];
    /* COMMIT */
    plait__svc_stats_t stats;
    plait_round_stats_t st;
    blob_t *blob;
    char **uploaders;
    size_t n_uploaders;
    double duration;
} job_t;

static void job_free(job_t *j)
{
    free(j->task_json);
    for (size_t i = 0; i < j->n_uploaders; i++) free(j->uploaders[i]);
    free(j->uploaders);
    blob_unref(j->blob);
    free(j);
}

static plait__svc_lora_t svc_lora(const plait_server_t *s)
{
    plait__svc_lora_t lo;
    lo.rank = s->lora.cfg.rank;
    lo.alpha = s->lora.cfg.alpha;
    lo.targets = s->lora.cfg.targets;
    lo.opt_kind = (int)s->rcfg.opt.kind;
    return lo;
}

static void work_commit(job_t *j)
{
    plait_server_t *s = j->s;
    j->rc = plait_round_aggregate(s->round, &s->rng);
    if (j->rc == 0) j->rc = plait_round_commit(s->round);
    if (j->rc != 0) {
        snprintf(j->why, sizeof(j->why), "aggregation: %s", plait_errmsg());
        return;
    }
    j->core_committed = 1;
    plait_round_stats(s->round, &j->st);
    memcpy(s->lora.params + s->span_off, plait_round_global(s->round), s->span_len * sizeof(float));
    blob_t *b = calloc(1, sizeof(*b));
    if (!b) {
        j->rc = PLAIT_ENOMEM;
        snprintf(j->why, sizeof(j->why), "out of memory");
        return;
    }
    b->refs = 1;
    j->blob = b;
    j->rc = plait_adapter_save_mem(&s->lora, s->base_sha, &b->data, &b->len);
    if (j->rc != 0) {
        snprintf(j->why, sizeof(j->why), "serializing the adapter: %s", plait_errmsg());
        return;
    }
    plait_sha256(b->data, b->len, b->sha);
    plait__svc_commit_t cm;
    memset(&cm, 0, sizeof(cm));
    cm.adapter = b->data;
    cm.adapter_len = b->len;
    cm.sha256 = b->sha;
    cm.lora = svc_lora(s);
    j->stats.dropouts = (int64_t)(j->st.dropouts + j->st.stragglers);
    cm.stats = &j->stats;
    cm.dp = s->rcfg.dp;
    if (cm.dp) {
        cm.q = j->st.sample_rate;
        cm.z = s->cfg.noise_multiplier;
        cm.clip = j->st.clip_used;
        cm.adaptive = s->rcfg.dp_cfg.adaptive;
        cm.poisson = s->rcfg.poisson;
        cm.delta = plait_round_delta(s->round);
    }
    if (s->rcfg.ddg) {
        double cs = s->cfg.clip_norm / plait_quant_step(&s->rcfg.quant);
        cm.dp = 1;
        cm.ddg = 1;
        cm.q = 1.0; /* no amplification by sampling is claimed */
        cm.z = s->cfg.noise_multiplier;
        cm.clip = s->cfg.clip_norm;
        cm.delta = plait_round_delta(s->round);
        cm.ddg_dim = (int64_t)s->span_len;
        cm.ddg_var = s->rcfg.ddg_var;
        cm.ddg_n = (int64_t)j->st.accepted;
        cm.ddg_l2 = plait_ddg_rounded_l2(cs, s->span_len);
    }
    cm.accepted = (double)j->st.accepted;
    cm.duration_s = j->duration;
    cm.uploaders = (const char *const *)j->uploaders;
    cm.n_uploaders = j->n_uploaders;
    /* The adaptive server optimizers' moments go with the version, so a
     * restart resumes FedAdam/FedYogi/FedAdagrad where they were. */
    size_t n_opt = plait_round_opt_state_len(s->round);
    float *opt = NULL;
    if (n_opt) {
        opt = malloc(n_opt * sizeof(float));
        if (!opt || plait_round_opt_export(s->round, opt, n_opt) != 0) {
            free(opt);
            j->rc = PLAIT_ENOMEM;
            snprintf(j->why, sizeof(j->why), "exporting the optimizer state");
            return;
        }
    }
    cm.opt_state = opt;
    cm.opt_state_len = n_opt;
    int64_t ver = 0;
    j->rc = plait__svc_round_commit(s->store, (int64_t)s->cur_rid, &cm, &ver);
    free(opt);
    if (j->rc != 0) {
        snprintf(j->why, sizeof(j->why), "store commit: %s", plait_errmsg());
        return;
    }
    b->version = (uint64_t)ver;
}

static void work_job(uv_work_t *req)
{
    job_t *j = req->data;
    plait_server_t *s = j->s;
    switch (j->kind) {
    case JOB_BEGIN:
        j->rc = plait__svc_round_begin(s->store, (int64_t)s->cfg.target_cohort, (int64_t)s->cfg.min_cohort,
                                       j->task_json, (int64_t)s->blob_version_for_job, &j->rid);
        if (j->rc != 0) snprintf(j->why, sizeof(j->why), "%s", plait_errmsg());
        break;
    case JOB_FAIL:
        j->rc = plait__svc_round_fail(s->store, (int64_t)s->cur_rid, j->reason, &j->stats);
        if (j->rc != 0) snprintf(j->why, sizeof(j->why), "%s", plait_errmsg());
        break;
    case JOB_COMMIT:
        work_commit(j);
        break;
    }
}

static int rebuild_round(plait_server_t *s);
static int round_rate(plait_server_t *s, uint64_t rid);

static void cohort_clear(plait_server_t *s)
{
    for (size_t i = 0; i < s->n_cohort; i++) {
        if (s->cohort[i].pending) plait_zeroize(s->cohort[i].pending, s->cohort[i].n_pending * sizeof(uint32_t));
        free(s->cohort[i].pending);
        s->cohort[i].pending = NULL;
    }
    s->n_cohort = 0;
}

static void round_ended(plait_server_t *s)
{
    plait__sa_free(s->sa);
    s->sa = NULL;
    s->round_live = 0;
    cohort_clear(s);
    s->next_open = now_s(s) + s->cfg.round_pause_s;
    if (s->sa_failed) { /* do not reopen failing rounds in a tight loop */
        double back = (double)s->cfg.retry_ms / 1000.0;
        s->next_open += back > 1.0 ? back : 1.0;
        s->sa_failed = 0;
    }
}

/* Shutdown with a round open: abandon it (the writer is free: no job runs). */
static void abandon_round(plait_server_t *s, const char *why)
{
    if (!s->round_live || s->busy) return;
    plait_round_abort(s->round, now_s(s));
    s->m.rounds_abandoned++;
    int rc = plait__svc_round_fail(s->store, (int64_t)s->cur_rid, why, &s->rs);
    if (rc != 0)
        PLAIT_LOG(PLAIT_LOG_ERROR, "store: closing round %llu: %s", (unsigned long long)s->cur_rid, plait_errmsg());
    PLAIT_LOG(PLAIT_LOG_INFO, "round abandoned round=%llu (%s); global adapter stays at version %llu",
              (unsigned long long)s->cur_rid, why, (unsigned long long)s->blob->version);
    round_ended(s);
}

/* ---- secure aggregation glue (the stages are in server_secagg.c) ---------------- */

static conn_t *member_conn(plait_server_t *s, uint64_t client)
{
    for (conn_t *o = s->conns; o; o = o->next)
        if (!o->closing && o->client == client && o->round_id == s->cur_rid) return o;
    return NULL;
}

static int sa_send(void *ud, uint64_t client, const plait_msg_t *m)
{
    plait_server_t *s = ud;
    conn_t *c = member_conn(s, client);
    if (!c) return plait_fail(PLAIT_ENOENT, "no live connection");
    return send_msg(c, m);
}

static int sa_accept(void *ud, uint64_t client)
{
    plait_server_t *s = ud;
    member_t *mb = member_find(s, client);
    int rc = plait_round_submit_masked(s->round, client, s->cur_core, s->span_len + 1 + (size_t)s->rcfg.clip_bit, now_s(s));
    if (rc == 0 && mb) {
        mb->submitted = 1;
        s->m.updates_accepted++;
    } else if (mb) {
        mb->submitted = -1;
    }
    return rc;
}

static void sa_dropout(void *ud, uint64_t client)
{
    plait_server_t *s = ud;
    member_t *mb = member_find(s, client);
    if (mb && mb->submitted == 0) mb->submitted = -1;
    if (plait_round_dropout(s->round, client, s->cur_core, now_s(s)) == 0)
        PLAIT_LOG(PLAIT_LOG_INFO, "dropout round=%llu device=%s", (unsigned long long)s->cur_rid,
                  mb ? mb->device : "?");
}

static int secagg_open(plait_server_t *s, double now)
{
    plait_round_stats_t st;
    plait_round_stats(s->round, &st);
    plait__sa_config_t sc;
    memset(&sc, 0, sizeof(sc));
    sc.dep = s->dep;
    sc.dep_len = sizeof(s->dep);
    sc.round_id = s->cur_rid;
    sc.n = (uint32_t)st.want;
    sc.quant_bits = (unsigned)s->cfg.quant_bits;
    if (s->rcfg.ddg) { /* distributed DP: the ring is Z_{2^32}, the headroom the noise needs */
        unsigned lg = 0;
        while (lg < 32 && ((uint64_t)1 << lg) < sc.n) lg++;
        if (lg < 32 && 32 - lg > sc.quant_bits) sc.quant_bits = 32 - lg;
    }
    sc.len = s->span_len + 1 + (size_t)s->rcfg.clip_bit; /* every word of the update is masked */
    sc.dropout = s->cfg.secagg_dropout;
    sc.corrupt = s->cfg.secagg_corrupt;
    sc.sigma = s->cfg.secagg_sigma;
    sc.stage_timeout_s = s->cfg.secagg_stage_timeout_s;
    sc.ca_pem = s->ca_pem;
    sc.max_chunk_bytes = s->lim.max_chunk_bytes;
    plait__sa_io_t io = {s, sa_send, sa_accept, sa_dropout};
    return plait__sa_open(&s->sa, &sc, &io, now);
}

static void after_job(uv_work_t *req, int status)
{
    job_t *j = req->data;
    plait_server_t *s = j->s;
    s->busy = 0;
    double now = now_s(s);
    if (status != 0 && j->rc == 0) {
        j->rc = PLAIT_ECANCELED;
        snprintf(j->why, sizeof(j->why), "job canceled");
    }
    switch (j->kind) {
    case JOB_BEGIN:
        if (j->rc != 0) {
            /* Retried every second (a full disk may last hours): logged
             * when the failure starts or changes, not on every retry. */
            if (j->rc != s->open_err)
                PLAIT_LOG(PLAIT_LOG_ERROR, "store: opening a round failed: %s (%s); retrying every second, "
                          "logged again only when this changes", j->why, plait_err_name(j->rc));
            s->open_err = j->rc;
            s->next_open = now + 1;
            break;
        }
        if (s->open_err != 0) PLAIT_LOG(PLAIT_LOG_INFO, "store: rounds open again (the earlier failure cleared)");
        s->open_err = 0;
        uint64_t core = 0;
        int rc = s->rcfg.poisson ? round_rate(s, (uint64_t)j->rid) : 0;
        if (rc == 0) rc = plait_round_open(s->round, now, &core);
        s->cur_rid = (uint64_t)j->rid;
        s->m.round_id = s->cur_rid;
        s->round_live = 1;
        cohort_clear(s);
        memset(&s->rs, 0, sizeof(s->rs));
        if (rc != 0) {
            PLAIT_LOG(PLAIT_LOG_ERROR, "round core refused to open: %s", plait_err_name(rc));
            round_ended(s);
            break;
        }
        s->cur_core = core;
        if (s->cfg.secure_agg && secagg_open(s, now) != 0) {
            PLAIT_LOG(PLAIT_LOG_ERROR, "round=%llu: secure aggregation could not start: %s; the round fails",
                      (unsigned long long)s->cur_rid, plait_errmsg());
            plait_round_abort(s->round, now);
            s->sa_failed = 1;
            break;
        }
        PLAIT_LOG(PLAIT_LOG_INFO, "round opened round=%llu version=%llu%s", (unsigned long long)s->cur_rid,
                  (unsigned long long)s->blob->version, s->sa ? " (secure aggregation)" : "");
        if (!s->rcfg.poisson) { /* say at once why a round cannot fill (once per enrolled count) */
            uint64_t live = 0;
            char why[400];
            size_t want = (size_t)ceil((double)s->rcfg.target_cohort * s->rcfg.overselect);
            int fc = plait__svc_fill_check(s->store, want, s->rcfg.min_cohort, s->rcfg.selection_timeout_s, &live,
                                           why, sizeof(why));
            if (fc > 0 && s->fill_logged != live + 1)
                PLAIT_LOG(PLAIT_LOG_WARN, "round=%llu: %s", (unsigned long long)s->cur_rid, why);
            if (fc >= 0) s->fill_logged = fc > 0 ? live + 1 : 0;
        }
        if (s->stopping) abandon_round(s, "shutdown");
        break;
    case JOB_FAIL:
        if (j->rc != 0)
            PLAIT_LOG(PLAIT_LOG_ERROR, "store: recording failed round %llu: %s", (unsigned long long)s->cur_rid,
                      j->why);
        round_ended(s);
        break;
    case JOB_COMMIT:
        if (j->rc == 0) {
            plait_crash_point("server.commit.swap");
            blob_unref(s->blob);
            s->blob = j->blob;
            j->blob = NULL;
            memcpy(s->committed, plait_round_global(s->round), s->span_len * sizeof(float));
            s->m.rounds_committed++;
            s->m.round_seconds_sum += j->duration;
            s->m.round_seconds_count++;
            s->m.last_round_seconds = j->duration;
            s->m.global_version = s->blob->version;
            PLAIT_LOG(PLAIT_LOG_INFO,
                      "round committed round=%llu version=%llu accepted=%zu selected=%zu dropouts=%zu "
                      "stragglers=%zu duration_s=%.3f adapter_bytes=%zu",
                      (unsigned long long)s->cur_rid, (unsigned long long)s->blob->version, j->st.accepted,
                      j->st.selected, j->st.dropouts, j->st.stragglers, j->duration, s->blob->len);
        } else {
            s->m.rounds_failed++;
            PLAIT_LOG(PLAIT_LOG_ERROR,
                      "round commit failed round=%llu: %s (%s); global adapter stays at version %llu",
                      (unsigned long long)s->cur_rid, j->why, plait_err_name(j->rc),
                      (unsigned long long)s->blob->version);
            /* The store left the round open; close it as failed, and put the
             * core back on the last committed version if it had moved on. */
            if (plait__svc_round_fail(s->store, (int64_t)s->cur_rid, j->why, &s->rs) != 0)
                PLAIT_LOG(PLAIT_LOG_ERROR, "store: closing round %llu: %s", (unsigned long long)s->cur_rid,
                          plait_errmsg());
            if (j->core_committed && rebuild_round(s) != 0)
                PLAIT_LOG(PLAIT_LOG_ERROR, "rebuilding the round core failed: %s", plait_errmsg());
            signal_round_end(s, PLAIT_RETRY_COMMIT_FAILED);
        }
        round_ended(s);
        break;
    }
    job_free(j);
}

/* q of the round about to open: the population is recounted from the store
 * (enrolled, non-revoked), the selector and the core's accountant get the same q. */
static int round_rate(plait_server_t *s, uint64_t rid)
{
    uint64_t enrolled = 0, pop = 0;
    double q = 1;
    int rc = plait__svc_population(s->store_r, &enrolled);
    if (rc != 0) return rc;
    /* A configured population is checked at start; revocations since may leave it above the count. */
    pop = s->cfg.population && s->cfg.population < enrolled ? s->cfg.population : enrolled;
    if ((rc = plait_sel_rate_of(s->cfg.target_cohort, pop, s->cfg.sampling_rate, &q)) != 0) return rc;
    if ((rc = plait_round_set_sample_rate(s->round, q)) != 0) return rc;
    if ((rc = plait_sel_open(s->sel, rid, q)) != 0) return rc;
    PLAIT_LOG(PLAIT_LOG_INFO, "sampling population=%llu q=%.6g", (unsigned long long)pop, q);
    return 0;
}

static int start_job(plait_server_t *s, job_t *j)
{
    /* One job at a time: the writer connection and the round core belong to it. */
    PLAIT_ASSERT(!s->busy);
    j->s = s;
    j->req.data = j;
    s->busy = 1;
    int rc = uv_queue_work(&s->loop, &j->req, work_job, after_job);
    if (rc != 0) {
        s->busy = 0;
        PLAIT_LOG(PLAIT_LOG_ERROR, "uv_queue_work: %s", uv_strerror(rc));
        job_free(j);
        return PLAIT_EIO;
    }
    return 0;
}

/* The task's settings as JSON, stored with the round (no secrets in it). */
static char *task_json(plait_server_t *s)
{
    plait_buf_t b;
    plait_buf_init(&b, 1 << 16);
    plait_buf_printf(&b,
                     "{\"lora_rank\": %llu, \"lora_alpha\": %.9g, \"lora_targets\": \"%s\", \"lora_mode\": \"%s\", "
                     "\"a_seed\": %llu, \"local_steps\": %llu, \"batch\": %llu, \"seq_len\": %llu, \"lr\": %.9g, "
                     "\"clip_norm\": %.9g, \"quant_bits\": %llu, \"quant_range\": %.9g, \"example_cap\": %llu, "
                     "\"server_opt\": \"%s\", \"server_lr\": %.9g, \"dp\": \"%s\", \"noise_multiplier\": %.9g}",
                     (unsigned long long)s->cfg.lora_rank, s->cfg.lora_alpha, s->cfg.lora_targets, s->cfg.lora_mode,
                     (unsigned long long)s->cfg.a_seed, (unsigned long long)s->cfg.local_steps,
                     (unsigned long long)s->cfg.batch, (unsigned long long)s->cfg.seq_len, s->cfg.lr,
                     s->cfg.clip_norm, (unsigned long long)s->cfg.quant_bits, s->cfg.quant_range,
                     (unsigned long long)s->cfg.example_cap, s->cfg.server_opt, s->cfg.server_lr, s->cfg.dp,
                     s->cfg.noise_multiplier);
    if (plait_buf_status(&b) != 0) {
        plait_buf_free(&b);
        return NULL;
    }
    return b.data; /* plain malloc'd text; the caller frees it */
}

static void round_open(plait_server_t *s)
{
    job_t *j = calloc(1, sizeof(*j));
    if (!j || !(j->task_json = task_json(s))) {
        free(j);
        s->next_open = now_s(s) + 1;
        return;
    }
    j->kind = JOB_BEGIN;
    s->blob_version_for_job = s->blob->version;
    if (start_job(s, j) != 0) s->next_open = now_s(s) + 1;
}

static void round_failed(plait_server_t *s)
{
    plait_round_stats_t st;
    plait_round_stats(s->round, &st);
    s->m.rounds_failed++;
    job_t *j = calloc(1, sizeof(*j));
    char reason[200];
    snprintf(reason, sizeof(reason), "%zu updates accepted of %zu selected (%zu dropped, %zu stragglers), min_cohort %zu",
             st.accepted, st.selected, st.dropouts, st.stragglers, s->rcfg.min_cohort);
    PLAIT_LOG(PLAIT_LOG_WARN, "round failed round=%llu: %s; global adapter stays at version %llu",
              (unsigned long long)s->cur_rid, reason, (unsigned long long)s->blob->version);
    signal_round_end(s, PLAIT_RETRY_ROUND_FAILED);
    if (!j) {
        round_ended(s);
        return;
    }
    j->kind = JOB_FAIL;
    snprintf(j->reason, sizeof(j->reason), "%s", reason);
    j->stats = s->rs;
    j->stats.participants = (int64_t)st.selected;
    j->stats.dropouts = (int64_t)(st.dropouts + st.stragglers);
    if (start_job(s, j) != 0) round_ended(s);
}

static void start_commit(plait_server_t *s)
{
    if (s->busy) return; /* already committing (several paths notice AGGREGATION) */
    job_t *j = calloc(1, sizeof(*j));
    if (j && s->n_cohort) j->uploaders = calloc(s->n_cohort, sizeof(char *));
    if (!j || (s->n_cohort && !j->uploaders)) {
        free(j);
        plait_round_abort(s->round, now_s(s));
        return;
    }
    for (size_t i = 0; i < s->n_cohort; i++)
        if (s->cohort[i].submitted == 1) {
            j->uploaders[j->n_uploaders] = strdup(s->cohort[i].device);
            if (j->uploaders[j->n_uploaders]) j->n_uploaders++;
        }
    j->kind = JOB_COMMIT;
    j->stats = s->rs;
    j->stats.participants = (int64_t)s->n_cohort;
    plait_round_stats_t st;
    plait_round_stats(s->round, &st);
    j->duration = now_s(s) - st.t_open;
    PLAIT_LOG(PLAIT_LOG_INFO, "round aggregating round=%llu accepted=%zu", (unsigned long long)s->cur_rid,
              st.accepted);
    if (start_job(s, j) != 0) plait_round_abort(s->round, now_s(s));
}

/* Drive the round: deadlines, failure, commit, next round. Loop thread. */
static void round_step(plait_server_t *s)
{
    if (s->busy || s->stopping || s->round == NULL) return;
    double now = now_s(s);
    if (!s->round_live) {
        if (now >= s->next_open) round_open(s);
        return;
    }
    plait_round_state_t st = plait_round_state(s->round);
    if (st == PLAIT_ROUND_SELECTION || st == PLAIT_ROUND_TRAINING) {
        (void)plait_round_tick(s->round, now);
        if (!s->sa) report_early_dropouts(s);
        if (s->busy) return; /* the commit job owns the round core now */
        st = plait_round_state(s->round);
    }
    if (s->sa) {
        /* Secure round: the stages run alongside the core; the sum goes in once unmasked. */
        plait__sa_step(s->sa, st, now);
        st = plait_round_state(s->round);
        if (st == PLAIT_ROUND_AGGREGATION) {
            plait__sa_result_t res = plait__sa_result(s->sa);
            if (res == PLAIT__SA_RUNNING) return;
            if (res == PLAIT__SA_DONE &&
                plait_round_set_unmasked_sum(s->round, plait__sa_sum(s->sa), s->span_len + 1 + (size_t)s->rcfg.clip_bit) == 0) {
                start_commit(s);
                return;
            }
            plait_round_abort(s->round, now); /* below threshold: nothing is committed */
            st = plait_round_state(s->round);
        }
    }
    if (st == PLAIT_ROUND_AGGREGATION) start_commit(s);
    else if (st == PLAIT_ROUND_FAILED || st == PLAIT_ROUND_IDLE) round_failed(s);
}

/* ---- messages ------------------------------------------------------------------ */

/* Hand a complete update to the round core; ack or refuse on c (NULL: the
 * device's connection, if it still has one). Takes ownership of words. */
static void submit_member(plait_server_t *s, member_t *mb, uint32_t *words, size_t n, conn_t *c)
{
    if (c == NULL)
        for (conn_t *o = s->conns; o; o = o->next)
            if (!o->closing && o->client == mb->client && o->round_id == s->cur_rid) c = o;
    int rc = plait_round_submit_words(s->round, mb->client, s->cur_core, words, n, 0, now_s(s));
    plait_zeroize(words, n * sizeof(uint32_t));
    free(words);
    if (rc == 0) {
        mb->submitted = 1;
        s->m.updates_accepted++;
        PLAIT_LOG(PLAIT_LOG_INFO, "update accepted round=%llu device=%s words=%zu", (unsigned long long)s->cur_rid,
                  mb->device, n);
        if (c) {
            plait_msg_t a;
            plait_msg_init(&a, PLAIT_MSG_ACK);
            a.u.ack.round_id = s->cur_rid;
            a.u.ack.kind = PLAIT_ACK_UPDATE;
            a.u.ack.elements = n;
            (void)send_msg(c, &a);
        }
        if (plait_round_state(s->round) == PLAIT_ROUND_AGGREGATION && !s->sa) start_commit(s);
        return;
    }
    mb->submitted = -1; /* the core counted it as refused */
    plait__rej_t why = PLAIT__REJ_MALFORMED_UPDATE;
    const char *txt = "malformed update";
    if (rc == PLAIT_ESTALE) why = PLAIT__REJ_LATE, txt = "round closed";
    else if (rc == PLAIT_ENOENT) why = PLAIT__REJ_NOT_SELECTED, txt = "not selected";
    else if (rc == PLAIT_EMISMATCH) why = PLAIT__REJ_WRONG_SHAPE, txt = "wrong update size";
    else if (rc == PLAIT_ETOOBIG) why = PLAIT__REJ_NORM, txt = "update norm above the clip bound";
    if (c) {
        reject(c, why, "update for round %llu refused by the round: %s (%s)", (unsigned long long)s->cur_rid,
               plait_errmsg(), plait_err_name(rc));
        fail_conn(c, why, rc, txt);
    } else {
        s->m.rejections[why]++;
        s->rs.rej[why]++;
        PLAIT_LOG(PLAIT_LOG_WARN, "rejected device=%s reason=%s: held update for round %llu: %s (%s)", mb->device,
                  plait__rej_name(why), (unsigned long long)s->cur_rid, plait_errmsg(), plait_err_name(rc));
    }
}

static void handle_update(conn_t *c, const plait_msg_update_chunk_t *u)
{
    plait_server_t *s = c->srv;
    uint64_t expect = s->span_len + 1 + (uint64_t)s->rcfg.clip_bit;
    if (s->sa) {
        reject(c, PLAIT__REJ_ORDER, "plain update in a secure round %llu", (unsigned long long)u->round_id);
        fail_conn(c, PLAIT__REJ_ORDER, PLAIT_EPROTO, "this round takes masked input only");
        return;
    }
    if (u->round_id != s->cur_rid || !s->round_live) {
        reject(c, PLAIT__REJ_STALE, "update for round %llu, current round is %llu%s", (unsigned long long)u->round_id,
               (unsigned long long)s->cur_rid, s->round_live ? "" : " (closed)");
        fail_conn(c, PLAIT__REJ_STALE, PLAIT_ESTALE, "stale round");
        return;
    }
    member_t *mb = member_find(s, c->client);
    if (mb == NULL || c->round_id != s->cur_rid) {
        reject(c, PLAIT__REJ_NOT_SELECTED, "update for round %llu from a device not selected in it",
               (unsigned long long)u->round_id);
        fail_conn(c, PLAIT__REJ_NOT_SELECTED, PLAIT_ENOENT, "not selected for this round");
        return;
    }
    if (mb->submitted == 1 || mb->submitted == -1) {
        reject(c, PLAIT__REJ_DUPLICATE, "second update for round %llu", (unsigned long long)u->round_id);
        fail_conn(c, PLAIT__REJ_DUPLICATE, PLAIT_ESTALE, "duplicate update");
        return;
    }
    if (s->busy) {
        reject(c, PLAIT__REJ_LATE, "update for round %llu after it closed", (unsigned long long)u->round_id);
        fail_conn(c, PLAIT__REJ_LATE, PLAIT_ESTALE, "round closed");
        return;
    }
    if (u->total_elements != expect) {
        reject(c, PLAIT__REJ_WRONG_SHAPE, "update of %llu words, the task wants %llu",
               (unsigned long long)u->total_elements, (unsigned long long)expect);
        fail_conn(c, PLAIT__REJ_WRONG_SHAPE, PLAIT_EMISMATCH, "wrong update size");
        return;
    }
    if (u->chunk_index != c->upd_next || u->offset != c->upd_have) {
        reject(c, PLAIT__REJ_BAD_MESSAGE, "update chunk %u at word %llu, expected chunk %u at word %llu",
               u->chunk_index, (unsigned long long)u->offset, c->upd_next, (unsigned long long)c->upd_have);
        fail_conn(c, PLAIT__REJ_BAD_MESSAGE, PLAIT_EPROTO, "update chunks out of order");
        return;
    }
    if (c->upd == NULL) {
        c->upd = malloc(expect * sizeof(uint32_t));
        if (!c->upd) {
            PLAIT_LOG(PLAIT_LOG_ERROR, "conn=%llu: out of memory for an update", (unsigned long long)c->id);
            fail_conn(c, PLAIT__REJ_MALFORMED_UPDATE, PLAIT_EBUSY, "out of memory");
            return;
        }
        c->upd_total = expect;
    }
    memcpy(c->upd + c->upd_have, u->words, u->n_words * sizeof(uint32_t));
    c->upd_have += u->n_words;
    c->upd_next++;
    if (c->upd_have < c->upd_total) return;

    uint32_t *words = c->upd;
    c->upd = NULL;
    c->upd_have = 0;
    c->upd_next = 0;
    if (plait_round_state(s->round) == PLAIT_ROUND_SELECTION) {
        /* Trained before selection ended: hold the update (the member owns it
         * now, so a disconnect does not lose it) and submit it when training starts. */
        if (mb->pending) { /* a resumed device uploads its stored update again: keep one */
            plait_zeroize(mb->pending, mb->n_pending * sizeof(uint32_t));
            free(mb->pending);
        }
        mb->pending = words;
        mb->n_pending = (size_t)expect;
        mb->submitted = 2;
        PLAIT_LOG(PLAIT_LOG_INFO, "update held until training starts round=%llu device=%s",
                  (unsigned long long)u->round_id, c->device);
        return;
    }
    submit_member(s, mb, words, (size_t)expect, c);
}

/* A device declined its task (a DeclineCode, never text: only the code is logged). It takes
 * no further part in the round: in training it is a dropout at once, so the round need not
 * wait for it; in selection it keeps its slot (the core cannot unselect) and becomes a dropout
 * when training starts, without the rejoin grace. offer() does not give it the task again. */
static void handle_decline(conn_t *c, const plait_msg_decline_t *d)
{
    plait_server_t *s = c->srv;
    s->m.tasks_declined++;
    PLAIT_LOG(PLAIT_LOG_INFO, "task declined round=%llu device=%s code=%s", (unsigned long long)d->round_id,
              c->device, plait_decline_code_name((int)d->code));
    member_t *mb = member_find(s, c->client);
    if (mb && d->round_id == s->cur_rid && c->round_id == s->cur_rid && s->round_live && !s->busy && s->round &&
        (mb->submitted == 0 || mb->submitted == -2)) {
        plait_round_state_t st = plait_round_state(s->round);
        if (st == PLAIT_ROUND_SELECTION) {
            mb->submitted = -3;
        } else if (st == PLAIT_ROUND_TRAINING) {
            mb->submitted = -1;
            if (plait_round_dropout(s->round, mb->client, s->cur_core, now_s(s)) == 0)
                PLAIT_LOG(PLAIT_LOG_INFO, "dropout round=%llu device=%s (declined)", (unsigned long long)s->cur_rid,
                          mb->device);
            if (plait_round_state(s->round) == PLAIT_ROUND_AGGREGATION && !s->sa) start_commit(s);
        }
    }
    if (s->sa && mb && d->round_id == s->cur_rid && !s->busy) /* busy: a commit job owns the round core */
        plait__sa_left(s->sa, c->client);                            /* no rejoin */
    c->round_id = 0;
    conn_close(c, 1);
}

static void pump_download(conn_t *c)
{
    plait_server_t *s = c->srv;
    size_t chunk = s->lim.max_chunk_bytes;
    while (c->dl_active && !c->closing && c->out_queued < 2 * chunk + 4096) {
        blob_t *b = c->dl;
        size_t n = b->len - c->dl_off < chunk ? (size_t)(b->len - c->dl_off) : chunk;
        plait_msg_t m;
        plait_msg_init(&m, PLAIT_MSG_ADAPTER_CHUNK);
        m.u.adapter_chunk.version = b->version;
        m.u.adapter_chunk.offset = c->dl_off;
        m.u.adapter_chunk.total_len = b->len;
        m.u.adapter_chunk.data = b->data + c->dl_off;
        m.u.adapter_chunk.len = n;
        if (c->dl_off + n == b->len) {
            m.u.adapter_chunk.has_sha256 = 1;
            memcpy(m.u.adapter_chunk.sha256, b->sha, 32);
        }
        if (send_msg(c, &m) != 0) {
            conn_close(c, 0);
            return;
        }
        c->dl_off += n;
        if (c->dl_off == b->len) {
            c->dl_active = 0;
            blob_unref(c->dl);
            c->dl = NULL;
            PLAIT_LOG(PLAIT_LOG_DEBUG, "conn=%llu adapter sent", (unsigned long long)c->id);
        }
    }
}

static void handle_msg(conn_t *c, const plait_msg_t *m)
{
    plait_server_t *s = c->srv;
    switch (m->type) {
    case PLAIT_MSG_HELLO: {
        if (c->authed) {
            reject(c, PLAIT__REJ_ORDER, "second hello");
            fail_conn(c, PLAIT__REJ_ORDER, PLAIT_EPROTO, "unexpected hello");
            return;
        }
        if (plait_ct_memcmp(m->u.hello.base_model_sha256, s->base_sha, 32) != 0) {
            char hex[65];
            plait_hex(m->u.hello.base_model_sha256, 8, hex);
            reject(c, PLAIT__REJ_MODEL_MISMATCH, "device runs base model %s..., the task needs another", hex);
            fail_conn(c, PLAIT__REJ_MODEL_MISMATCH, PLAIT_EMISMATCH, "base model differs from the task's");
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
            send_cbl(c, PLAIT_RETRY_INCOMPATIBLE, s->lim.max_retry_ms);
            conn_close(c, 1);
            return;
        }
        offer(c);
        return;
    }
    case PLAIT_MSG_ADAPTER_REQUEST: {
        const plait_msg_adapter_request_t *r = &m->u.adapter_request;
        if (c->round_id == 0 || r->round_id != c->round_id || r->round_id != s->cur_rid || !s->round_live) {
            reject(c, PLAIT__REJ_STALE, "adapter request for round %llu, current round is %llu",
                   (unsigned long long)r->round_id, (unsigned long long)s->cur_rid);
            fail_conn(c, PLAIT__REJ_STALE, PLAIT_ESTALE, "stale round");
            return;
        }
        if (r->version != s->blob->version || r->offset >= s->blob->len) {
            reject(c, PLAIT__REJ_BAD_MESSAGE, "adapter request for version %llu at %llu (have version %llu, %zu bytes)",
                   (unsigned long long)r->version, (unsigned long long)r->offset,
                   (unsigned long long)s->blob->version, s->blob->len);
            fail_conn(c, PLAIT__REJ_BAD_MESSAGE, PLAIT_ENOENT, "no such adapter version or offset");
            return;
        }
        blob_unref(c->dl);
        c->dl = s->blob;
        c->dl->refs++;
        c->dl_off = r->offset;
        c->dl_active = 1;
        pump_download(c);
        return;
    }
    case PLAIT_MSG_UPDATE_CHUNK:
        handle_update(c, &m->u.update_chunk);
        return;
    case PLAIT_MSG_SECAGG_ADVERTISE:
    case PLAIT_MSG_SECAGG_SHARES:
    case PLAIT_MSG_SECAGG_MASKED_INPUT:
    case PLAIT_MSG_SECAGG_UNMASK_RESPONSE: {
        if (!s->sa || s->busy || c->round_id == 0 || c->round_id != s->cur_rid || !plait__sa_has(s->sa, c->client)) {
            reject(c, PLAIT__REJ_STALE, "%s outside a secure round this device takes part in",
                   plait_msg_type_name(m->type));
            fail_conn(c, PLAIT__REJ_STALE, PLAIT_ESTALE, "not in a secure round");
            return;
        }
        const plait_pki_cert_info_t *peer = plait_tls_peer(c->tls);
        int rc = plait__sa_on_msg(s->sa, c->client, peer->fingerprint, m, now_s(s));
        if (rc != 0) {
            plait__rej_t why = rc == PLAIT_ESTALE ? PLAIT__REJ_LATE : PLAIT__REJ_BAD_MESSAGE;
            reject(c, why, "%s: %s (%s)", plait_msg_type_name(m->type), plait_errmsg(), plait_err_name(rc));
            fail_conn(c, why, rc, rc == PLAIT_EAUTH ? "secure aggregation: keys do not verify"
                                                    : "secure aggregation: message refused");
        }
        return;
    }
    case PLAIT_MSG_DECLINE:
        handle_decline(c, &m->u.decline);
        return;
    case PLAIT_MSG_PING: {
        plait_msg_t p;
        plait_msg_init(&p, PLAIT_MSG_PONG);
        p.u.ping.nonce = m->u.ping.nonce;
        (void)send_msg(c, &p);
        return;
    }
    case PLAIT_MSG_PONG:
        return;
    case PLAIT_MSG_ERROR:
        PLAIT_LOG(PLAIT_LOG_INFO, "device error conn=%llu device=%s code=%s", (unsigned long long)c->id, c->device,
                  plait_err_name(m->u.error.code));
        conn_close(c, 1);
        return;
    default:
        reject(c, PLAIT__REJ_ORDER, "unexpected %s from a device", plait_msg_type_name(m->type));
        fail_conn(c, PLAIT__REJ_ORDER, PLAIT_EPROTO, "unexpected message");
        return;
    }
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
        if (rc == PLAIT_EAGAIN) break;
        if (rc == PLAIT_ETOOBIG) {
            reject(c, PLAIT__REJ_FRAME_TOO_BIG, "%s (limit %zu bytes %s the hello)", plait_errmsg(),
                   c->authed ? s->lim.max_frame : s->lim.max_preauth_frame, c->authed ? "after" : "before");
            fail_conn(c, PLAIT__REJ_FRAME_TOO_BIG, PLAIT_ETOOBIG, "frame too big");
            break;
        }
        if (rc != 0) {
            reject(c, PLAIT__REJ_BAD_FRAME, "%s (%s)", plait_errmsg(), plait_err_name(rc));
            fail_conn(c, PLAIT__REJ_BAD_FRAME, PLAIT_EPROTO, "bad frame");
            break;
        }
        plait_msg_t m;
        rc = plait_wire_decode(&fr, &s->lim, &m);
        if (rc != 0) {
            reject(c, PLAIT__REJ_BAD_MESSAGE, "%s message: %s (%s)", plait_msg_type_name(fr.type), plait_errmsg(),
                   plait_err_name(rc));
            fail_conn(c, PLAIT__REJ_BAD_MESSAGE, rc == PLAIT_ETOOBIG ? PLAIT_ETOOBIG : PLAIT_EPROTO, "bad message");
            break;
        }
        pos += used;
        handle_msg(c, &m);
        plait_msg_free(&m);
    }
    if (pos > 0 && !c->closing) {
        memmove(c->in, c->in + pos, c->in_len - pos);
        c->in_len -= pos;
    }
}

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

/* A device revoked while in the round: its held update is dropped and it
 * counts as a dropout (it cannot reconnect). An update the round core
 * accepted before the revocation stays in the aggregate. Not while a job
 * owns the round core (the next sweep does it). */
static void member_revoke(plait_server_t *s, member_t *mb)
{
    if (mb->revoked || s->busy || s->round == NULL) return;
    mb->revoked = 1;
    if (s->sa) plait__sa_left(s->sa, mb->client); /* the secure stages stop waiting for it */
    if (mb->submitted == 1) {
        PLAIT_LOG(PLAIT_LOG_WARN, "device=%s revoked in round=%llu after its update was accepted; the update stays",
                  mb->device, (unsigned long long)s->cur_rid);
        return;
    }
    if (mb->pending) {
        plait_zeroize(mb->pending, mb->n_pending * sizeof(uint32_t));
        free(mb->pending);
        mb->pending = NULL;
        mb->n_pending = 0;
    }
    if (mb->submitted == -1 || mb->submitted == -3) return; /* refused, dropped or declined already */
    if (plait_round_state(s->round) == PLAIT_ROUND_TRAINING) {
        mb->submitted = -1;
        int rc = plait_round_dropout(s->round, mb->client, s->cur_core, now_s(s));
        (void)rc; /* the core may have counted it already */
    } else {
        mb->submitted = -3; /* out of the round: a dropout when training starts (report_early_dropouts) */
    }
    PLAIT_LOG(PLAIT_LOG_WARN, "device=%s revoked in round=%llu: held update dropped, counted as a dropout", mb->device,
              (unsigned long long)s->cur_rid);
}

/* Reload the revocation list, then close the sessions of devices revoked
 * since their handshake (by certificate in the list, or by id in the store)
 * and take revoked devices out of the open round. Tick, every REVOKE_SWEEP_S. */
static void revoke_sweep(plait_server_t *s)
{
    revlist_refresh(s, 1);
    for (conn_t *c = s->conns, *nx; c; c = nx) {
        nx = c->next;
        if (c->closing || !c->established || c->client == 0) continue;
        const plait_pki_cert_info_t *peer = plait_tls_peer(c->tls);
        int revoked = (peer && plait_pki_revlist_check(&s->rev, peer) == PLAIT_EAUTH) ||
                      plait__svc_device_revoked(s->store_r, c->device);
        if (!revoked) continue;
        member_t *mb = c->round_id != 0 && c->round_id == s->cur_rid && s->round_live ? member_find(s, c->client) : NULL;
        c->round_id = 0; /* not a "left the round" */
        reject(c, PLAIT__REJ_REVOKED, "device %s revoked while connected: session closed", c->device);
        fail_conn(c, PLAIT__REJ_REVOKED, PLAIT_EAUTH, "device revoked");
        if (mb) member_revoke(s, mb);
    }
    if (!s->round_live || s->busy) return;
    for (size_t i = 0; i < s->n_cohort; i++) {
        member_t *mb = &s->cohort[i];
        if (!mb->revoked && plait__svc_device_revoked(s->store_r, mb->device)) member_revoke(s, mb);
    }
}

/* The round ended without a commit: tell its devices still connected (in
 * training, or waiting for their Ack) instead of leaving them to time out. */
static void signal_round_end(plait_server_t *s, plait_retry_reason_t why)
{
    for (conn_t *c = s->conns; c; c = c->next) {
        if (c->closing || !c->authed || c->round_id == 0 || c->round_id != s->cur_rid) continue;
        c->round_id = 0;
        PLAIT_LOG(PLAIT_LOG_INFO, "round=%llu ended without a commit: device=%s conn=%llu told to come back later",
                  (unsigned long long)s->cur_rid, c->device, (unsigned long long)c->id);
        send_cbl(c, why, s->cfg.retry_ms);
        conn_close(c, 1);
    }
}

static void on_established(conn_t *c)
{
    plait_server_t *s = c->srv;
    const plait_pki_cert_info_t *peer = plait_tls_peer(c->tls);
    c->established = 1;
    snprintf(c->device, sizeof(c->device), "%s", peer ? peer->device_id : "");
    if (!plait_pki_device_id_valid(c->device)) {
        reject(c, PLAIT__REJ_UNKNOWN_DEVICE, "certificate CN is not a device id");
        fail_conn(c, PLAIT__REJ_UNKNOWN_DEVICE, PLAIT_EAUTH, "not a device certificate");
        return;
    }
    int rc = plait__svc_device_check(s->store_r, c->device, peer->fingerprint);
    if (rc == PLAIT_EAUTH) {
        reject(c, PLAIT__REJ_TLS_REVOKED, "device %s (serial %s) is revoked or presented a certificate other than "
               "the enrolled one", c->device, peer->serial_hex);
        fail_conn(c, PLAIT__REJ_TLS_REVOKED, PLAIT_EAUTH, "device revoked");
        return;
    }
    if (rc != 0) {
        reject(c, PLAIT__REJ_UNKNOWN_DEVICE, "device %s (serial %s) is not enrolled in this deployment%s%s", c->device,
               peer->serial_hex, rc == PLAIT_ENOENT ? "" : ": store error: ", rc == PLAIT_ENOENT ? "" : plait_errmsg());
        fail_conn(c, PLAIT__REJ_UNKNOWN_DEVICE, PLAIT_EAUTH, "device not enrolled");
        return;
    }
    c->client = client_of(c->device);
    int resumed = plait_tls_resumed(c->tls);
    s->m.tls_handshakes++;
    if (resumed) s->m.tls_resumed++;
    PLAIT_LOG(PLAIT_LOG_INFO, "handshake conn=%llu device=%s serial=%s suite=%s%s", (unsigned long long)c->id,
              c->device, peer->serial_hex, plait_tls_ciphersuite(c->tls), resumed ? " resumed" : "");
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    conn_t *c = h->data;
    plait_server_t *s = c->srv;
    /* One read at a time on the loop thread: the server's buffer is free here. */
    *buf = uv_buf_init((char *)s->readbuf, sizeof(s->readbuf));
    (void)suggested;
}

static int in_append(conn_t *c, const uint8_t *p, size_t n)
{
    plait_server_t *s = c->srv;
    size_t lim = (c->authed ? s->lim.max_frame : s->lim.max_preauth_frame) + PLAIN_CHUNK;
    if (c->in_len + n > lim) return PLAIT_ETOOBIG;
    if (c->in_len + n > c->in_cap) {
        size_t nc = c->in_cap ? c->in_cap : 4096;
        while (nc < c->in_len + n) nc *= 2;
        if (nc > lim) nc = lim;
        uint8_t *q = realloc(c->in, nc);
        if (!q) return PLAIT_ENOMEM;
        c->in = q;
        c->in_cap = nc;
    }
    memcpy(c->in + c->in_len, p, n);
    c->in_len += n;
    return 0;
}

static void on_read(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf)
{
    conn_t *c = st->data;
    plait_server_t *s = c->srv;
    if (c->closing) { /* lingering close: discard until the peer's EOF */
        if (nread < 0 && !c->uv_closing) {
            c->uv_closing = 1;
            uv_close((uv_handle_t *)&c->tcp, on_conn_closed);
        }
        return;
    }
    if (nread < 0) {
        if (c->upd_have > 0) {
            reject(c, PLAIT__REJ_MID_UPLOAD, "connection closed after %llu of %llu update words; update discarded",
                   (unsigned long long)c->upd_have, (unsigned long long)c->upd_total);
        } else if (c->in_len > 0) {
            reject(c, PLAIT__REJ_TRUNCATED, "connection closed inside a frame (%zu bytes of it received)", c->in_len);
        } else if (!c->established) {
            reject(c, PLAIT__REJ_TLS_OTHER, "connection closed during the TLS handshake");
        } else {
            PLAIT_LOG(PLAIT_LOG_INFO, "closed by peer conn=%llu device=%s", (unsigned long long)c->id, c->device);
        }
        conn_close(c, 0);
        return;
    }
    if (nread == 0) return;
    s->m.bytes_in += (uint64_t)nread;
    c->t_last = now_s(s);
    int rc = plait_tls_feed(c->tls, (const uint8_t *)buf->base, (size_t)nread);
    if (rc != 0) {
        reject(c, PLAIT__REJ_TLS_BAD_RECORD, "TLS input backlog over the limit (%s)", plait_err_name(rc));
        conn_close(c, 0);
        return;
    }
    if (!c->established) {
        rc = plait_tls_handshake(c->tls);
        (void)flush(c);
        if (rc == PLAIT_EAGAIN) return;
        if (rc != 0) {
            const char *why = plait_tls_reason(c->tls);
            reject(c, tls_rej(why), "TLS handshake failed: %s (%s)", why[0] ? why : "no reason", plait_err_name(rc));
            conn_close(c, 1);
            return;
        }
        on_established(c);
        if (c->closing) return;
    }
    for (;;) {
        int r = plait_tls_read(c->tls, s->plain, sizeof(s->plain));
        if (r > 0) {
            rc = in_append(c, s->plain, (size_t)r);
            if (rc != 0) {
                reject(c, PLAIT__REJ_FRAME_TOO_BIG, "more than one frame's worth of unparsed input (%s)",
                       plait_err_name(rc));
                fail_conn(c, PLAIT__REJ_FRAME_TOO_BIG, PLAIT_ETOOBIG, "frame too big");
                break;
            }
            process_frames(c);
            if (c->closing) break;
            continue;
        }
        if (r == 0) {
            if (c->upd_have > 0)
                reject(c, PLAIT__REJ_MID_UPLOAD, "close_notify after %llu of %llu update words; update discarded",
                       (unsigned long long)c->upd_have, (unsigned long long)c->upd_total);
            else if (c->in_len > 0)
                reject(c, PLAIT__REJ_TRUNCATED, "close_notify inside a frame (%zu bytes of it received)", c->in_len);
            else
                PLAIT_LOG(PLAIT_LOG_INFO, "close_notify conn=%llu device=%s", (unsigned long long)c->id, c->device);
            conn_close(c, 1);
            break;
        }
        if (r != PLAIT_EAGAIN) {
            const char *why = plait_tls_reason(c->tls);
            reject(c, PLAIT__REJ_TLS_BAD_RECORD, "TLS record refused: %s (%s)", why[0] ? why : "no reason",
                   plait_err_name(r));
            conn_close(c, 1);
        }
        break;
    }
    if (!c->closing) (void)flush(c);
}

static void on_conn(uv_stream_t *l, int status)
{
    plait_server_t *s = l->data;
    if (status < 0) {
        PLAIT_LOG(PLAIT_LOG_WARN, "accept: %s", uv_strerror(status));
        return;
    }
    conn_t *c = calloc(1, sizeof(*c));
    if (!c) return;
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
        conn_close(c, 0);
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
    if (s->m.connections_open - s->n_closing > s->cfg.max_connections || s->stopping) {
        reject(c, PLAIT__REJ_TOO_MANY, "%llu connections open (max_connections %llu) from %s",
               (unsigned long long)(s->m.connections_open - s->n_closing - 1),
               (unsigned long long)s->cfg.max_connections, c->addr);
        conn_close(c, 0);
        return;
    }
    /* Admission before authentication (server_admit.h): a bounded pool, a
     * per-address share of it, and the slots above it left to devices. */
    plait__admit_result_t ar =
        plait__admit_enter(&s->admit, c->addr, s->preauth_cap, (size_t)s->cfg.max_preauth_per_addr);
    if (ar != PLAIT__ADMIT_OK) {
        if (ar == PLAIT__ADMIT_ADDR_FULL)
            reject(c, PLAIT__REJ_ADDR_FULL, "%zu connections from %s before their hello (max_preauth_per_addr %llu)",
                   plait__admit_count(&s->admit, c->addr), c->addr, (unsigned long long)s->cfg.max_preauth_per_addr);
        else
            reject(c, PLAIT__REJ_PREAUTH_FULL, "%zu connections before their hello (pre-auth cap %zu) from %s",
                   s->admit.preauth, s->preauth_cap, c->addr);
        conn_close(c, 0);
        return;
    }
    c->preauth = 1;
    if (plait_tls_new(&c->tls, s->tls) != 0) {
        PLAIT_LOG(PLAIT_LOG_ERROR, "TLS session: %s", plait_errmsg());
        conn_close(c, 0);
        return;
    }
    uv_tcp_nodelay(&c->tcp, 1);
    PLAIT_LOG(PLAIT_LOG_DEBUG, "accept conn=%llu from %s", (unsigned long long)c->id, c->addr);
    if (uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read) != 0) conn_close(c, 0);
}

/* ---- metrics endpoint --------------------------------------------------------- */

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

static void mconn_close(mconn_t *mc)
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
    mconn_close(mc);
}

static void mconn_reply(mconn_t *mc, const char *status, const char *ctype, const char *body, size_t blen)
{
    char head[256];
    int hl = snprintf(head, sizeof(head),
                      "HTTP/1.1 %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\nConnection: close\r\n\r\n", status,
                      ctype, blen);
    wreq_t *w = malloc(sizeof(*w) + (size_t)hl + blen);
    if (!w) {
        mconn_close(mc);
        return;
    }
    memcpy(w->data, head, (size_t)hl);
    if (blen) memcpy(w->data + hl, body, blen);
    w->owner = mc;
    w->metrics = 1;
    w->len = (size_t)hl + blen;
    uv_buf_t b = uv_buf_init((char *)w->data, (unsigned)w->len);
    uv_read_stop((uv_stream_t *)&mc->tcp);
    if (uv_write(&w->req, (uv_stream_t *)&mc->tcp, &b, 1, on_mwrite) != 0) {
        free(w);
        mconn_close(mc);
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
        mconn_close(mc);
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
        mc->srv->m.connections_open = 0;
        for (conn_t *c = mc->srv->conns; c; c = c->next) mc->srv->m.connections_open++;
        mc->srv->m.preauth_open = mc->srv->admit.preauth;
        if (plait__metrics_render(&mc->srv->m, &b) == 0)
            mconn_reply(mc, "200 OK", "text/plain; version=0.0.4; charset=utf-8", b.data, b.len);
        else
            mconn_reply(mc, "500 Internal Server Error", "text/plain", "", 0);
        plait_buf_free(&b);
    } else {
        mconn_reply(mc, "404 Not Found", "text/plain", "try GET /metrics\n", 17);
    }
}

static void on_mconn(uv_stream_t *l, int status)
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
            mconn_close(old);
        }
    }
    size_t live = 0;
    for (mconn_t *o = s->mconns; o; o = o->next) live += !o->closing;
    if (uv_accept(l, (uv_stream_t *)&mc->tcp) != 0 || live > METRICS_MAX_CONNS || s->stopping ||
        uv_read_start((uv_stream_t *)&mc->tcp, on_malloc, on_mread) != 0)
        mconn_close(mc);
}

/* ---- tick, signals, shutdown ------------------------------------------------ */

static void on_handle_closed(uv_handle_t *h) { (void)h; }

static void maybe_finish_shutdown(plait_server_t *s)
{
    if (!s->stopping || s->stopped_handles || s->busy || s->conns || s->mconns) return;
    s->stopped_handles = 1;
    uv_close((uv_handle_t *)&s->tick, on_handle_closed);
    PLAIT_LOG(PLAIT_LOG_INFO, "shutdown complete: %llu rounds committed, global version %llu",
              (unsigned long long)s->m.rounds_committed, (unsigned long long)s->blob->version);
}

static void on_tick(uv_timer_t *t)
{
    plait_server_t *s = t->data;
    double now = now_s(s);
    for (conn_t *c = s->conns, *nx; c; c = nx) {
        nx = c->next;
        if (c->closing) {
            if (!c->uv_closing && now - c->t_close > CLOSE_GRACE_S) {
                c->uv_closing = 1;
                uv_close((uv_handle_t *)&c->tcp, on_conn_closed);
            }
            continue;
        }
        if (!c->authed && now - c->t_open > s->cfg.auth_timeout_s) {
            reject(c, PLAIT__REJ_AUTH_TIMEOUT, "no %s within %.3g s", c->established ? "hello" : "TLS handshake",
                   s->cfg.auth_timeout_s);
            conn_close(c, 0);
        } else if (now - c->t_last > s->cfg.idle_timeout_s) {
            reject(c, PLAIT__REJ_IDLE_TIMEOUT, "nothing received for %.3g s", s->cfg.idle_timeout_s);
            if (c->authed) send_error(c, PLAIT_ECANCELED, "idle");
            conn_close(c, 1);
        } else if (c->out_queued > 0 && now - c->t_wprog > s->cfg.idle_timeout_s) {
            reject(c, PLAIT__REJ_WRITE_STALL, "%zu bytes unsent for %.3g s: the peer does not read", c->out_queued,
                   s->cfg.idle_timeout_s);
            conn_close(c, 0);
        }
    }
    for (mconn_t *mc = s->mconns, *nx; mc; mc = nx) {
        nx = mc->next;
        if (now - mc->t_open > METRICS_DEADLINE_S) mconn_close(mc);
    }
    if (!s->stopping && now - s->rev_swept >= REVOKE_SWEEP_S) {
        s->rev_swept = now;
        revoke_sweep(s);
        if (s->admit.suppressed > s->admit.suppressed_reported) {
            PLAIT_LOG(PLAIT_LOG_WARN, "%llu refusal log lines suppressed (rate limit); see plait_rejections_total",
                      (unsigned long long)(s->admit.suppressed - s->admit.suppressed_reported));
            s->admit.suppressed_reported = s->admit.suppressed;
        }
    }
    round_step(s);
    maybe_finish_shutdown(s);
}

static void begin_shutdown(plait_server_t *s, const char *why)
{
    if (s->stopping) return;
    s->stopping = 1;
    PLAIT_LOG(PLAIT_LOG_INFO, "shutting down (%s)", why);
    uv_close((uv_handle_t *)&s->listener, on_handle_closed);
    if (s->have_metrics) uv_close((uv_handle_t *)&s->mlistener, on_handle_closed);
    uv_close((uv_handle_t *)&s->sigterm, on_handle_closed);
    uv_close((uv_handle_t *)&s->sigint, on_handle_closed);
    uv_close((uv_handle_t *)&s->stop_async, on_handle_closed);
    abandon_round(s, "shutdown"); /* when a job runs, after_job finishes it first */
    for (conn_t *c = s->conns; c; c = c->next) {
        if (c->closing) continue;
        if (c->authed) send_cbl(c, PLAIT_RETRY_SHUTTING_DOWN, s->cfg.retry_ms);
        conn_close(c, 1);
    }
    for (mconn_t *mc = s->mconns; mc; mc = mc->next) mconn_close(mc);
}

static void on_signal(uv_signal_t *h, int signum)
{
    begin_shutdown(h->data, signum == SIGTERM ? "SIGTERM" : "SIGINT");
}

static void on_stop_async(uv_async_t *a) { begin_shutdown(a->data, "stop requested"); }

/* ---- setup -------------------------------------------------------------------- */

static int rebuild_round(plait_server_t *s)
{
    plait_round_t *r = NULL;
    int rc = plait_round_create(&r, &s->rcfg, s->committed, s->span_len);
    if (rc != 0) return rc;
    plait_round_destroy(s->round);
    s->round = r;
    return 0;
}

static int bind_listener(plait_server_t *s, uv_tcp_t *h, const char *addr, uint64_t port, uv_connection_cb cb,
                         int *bound)
{
    struct sockaddr_storage sa;
    int rc = uv_ip4_addr(addr, (int)port, (struct sockaddr_in *)&sa);
    if (rc != 0) rc = uv_ip6_addr(addr, (int)port, (struct sockaddr_in6 *)&sa);
    if (rc != 0) return plait_fail(PLAIT_EINVAL, "'%s' is not an IPv4 or IPv6 address", addr);
    uv_tcp_init(&s->loop, h);
    h->data = s;
    if ((rc = uv_tcp_bind(h, (struct sockaddr *)&sa, 0)) != 0 || (rc = uv_listen((uv_stream_t *)h, 128, cb)) != 0) {
        uv_close((uv_handle_t *)h, NULL);
        return plait_fail(PLAIT_EIO, "listen on %s:%llu: %s", addr, (unsigned long long)port, uv_strerror(rc));
    }
    struct sockaddr_storage got;
    int len = sizeof(got);
    uv_tcp_getsockname(h, (struct sockaddr *)&got, &len);
    *bound = ntohs(got.ss_family == AF_INET ? ((struct sockaddr_in *)&got)->sin_port
                                            : ((struct sockaddr_in6 *)&got)->sin6_port);
    return 0;
}

static int read_pem(const char *dir, const char *name, char **out)
{
    char path[1200];
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    int rc = plait_pki_read_file(path, out);
    if (rc != 0) return plait_fail(rc, "%s: %s", path, plait_strerror(rc));
    return 0;
}

static int setup_model(plait_server_t *s)
{
    plait_model_t m;
    memset(&m, 0, sizeof(m));
    int rc = plait_model_load(&m, s->cfg.base_model);
    if (rc != 0) return plait_fail(rc, "base_model %s: %s", s->cfg.base_model, plait_errmsg());
    s->mcfg = m.cfg;
    memcpy(s->base_sha, m.sha256, 32);
    plait_model_free(&m);
    plait_lora_config_t lc;
    plait_lora_config_default(&lc);
    lc.rank = (int)s->cfg.lora_rank;
    lc.alpha = (float)s->cfg.lora_alpha;
    if ((rc = plait_lora_parse_targets(s->cfg.lora_targets, &lc.targets)) != 0) return rc;
    if ((rc = plait_lora_mode_parse(s->cfg.lora_mode, &s->mode)) != 0) return rc;
    plait_lora_init(&s->lora);
    if ((rc = plait_lora_setup(&s->lora, &s->mcfg, &lc)) != 0) return rc;
    plait_lora_init_weights(&s->lora, s->cfg.a_seed);
    if ((rc = plait_update_span(&s->lora, s->mode, &s->span_off, &s->span_len)) != 0) return rc;
    s->committed = malloc(s->span_len * sizeof(float));
    if (!s->committed) return PLAIT_ENOMEM;
    memcpy(s->committed, s->lora.params + s->span_off, s->span_len * sizeof(float));
    return 0;
}

/* The newest committed adapter from the store (restart), or version 1 from
 * the configuration (fresh deployment: A from a_seed, B = 0). */
static int setup_versions(plait_server_t *s)
{
    blob_t *b = calloc(1, sizeof(*b));
    if (!b) return PLAIT_ENOMEM;
    b->refs = 1;
    int64_t number = 0;
    int rc = plait__svc_latest(s->store, &number, &b->data, &b->len);
    if (rc == 0) {
        plait_lora_t l;
        plait_lora_init(&l);
        plait_model_t mm;
        memset(&mm, 0, sizeof(mm));
        mm.cfg = s->mcfg;
        memcpy(mm.sha256, s->base_sha, 32);
        rc = plait_adapter_load_mem(&l, b->data, b->len, &mm, 0);
        if (rc == 0 && (l.n_params != s->lora.n_params || l.n_a != s->lora.n_a || l.cfg.rank != s->lora.cfg.rank ||
                        l.cfg.targets != s->lora.cfg.targets))
            rc = plait_fail(PLAIT_EMISMATCH, "LoRA shape differs from the configuration");
        if (rc != 0) {
            char keep[300];
            snprintf(keep, sizeof(keep), "%s", plait_errmsg());
            plait_lora_free(&l);
            blob_unref(b);
            return plait_fail(rc, "stored adapter version %lld does not fit the configured model and LoRA: %s",
                              (long long)number, keep);
        }
        memcpy(s->lora.params, l.params, l.n_params * sizeof(float));
        plait_lora_free(&l);
        memcpy(s->committed, s->lora.params + s->span_off, s->span_len * sizeof(float));
        b->version = (uint64_t)number;
    } else if (rc == PLAIT_ENOENT) {
        if ((rc = plait_adapter_save_mem(&s->lora, s->base_sha, &b->data, &b->len)) != 0) {
            blob_unref(b);
            return rc;
        }
        plait_sha256(b->data, b->len, b->sha);
        plait__svc_lora_t lo;
        lo.rank = s->lora.cfg.rank;
        lo.alpha = s->lora.cfg.alpha;
        lo.targets = s->lora.cfg.targets;
        lo.opt_kind = 0;
        if ((rc = plait__svc_put_initial(s->store, b->data, b->len, b->sha, &lo)) != 0) {
            blob_unref(b);
            return rc;
        }
        b->version = 1;
        PLAIT_LOG(PLAIT_LOG_INFO, "initial adapter stored as version 1 (%zu bytes)", b->len);
    } else {
        blob_unref(b);
        return rc;
    }
    plait_sha256(b->data, b->len, b->sha);
    s->blob = b;
    s->m.global_version = b->version;
    return 0;
}

static int setup_round(plait_server_t *s)
{
    plait_round_config_t *rc = &s->rcfg;
    plait_round_config_default(rc);
    rc->dim = s->span_len;
    rc->target_cohort = (size_t)s->cfg.target_cohort;
    rc->min_cohort = (size_t)s->cfg.min_cohort;
    rc->overselect = s->cfg.overselect;
    rc->selection_timeout_s = s->cfg.selection_timeout_s;
    rc->round_timeout_s = s->cfg.round_timeout_s;
    rc->quant.bits = (unsigned)s->cfg.quant_bits;
    rc->quant.range = s->cfg.quant_range;
    rc->clip_norm = s->cfg.clip_norm;
    rc->secure = s->cfg.secure_agg ? 1 : 0; /* masked words: no per-update check, the device's clip is the bound */
    plait_server_opt_kind_t k;
    int e = plait_server_opt_kind_parse(s->cfg.server_opt, &k);
    if (e != 0) return e;
    plait_server_opt_config_default(&rc->opt, k);
    rc->opt.lr = s->cfg.server_lr;
    rc->opt.beta1 = s->cfg.server_momentum;
    if (strcmp(s->cfg.aggregation, "mean") != 0) { /* config.c refused it with secure_agg or dp */
        rc->robust = 1;
        rc->robust_kind = strcmp(s->cfg.aggregation, "median") == 0 ? PLAIT_ROBUST_MEDIAN : PLAIT_ROBUST_TRIMMED_MEAN;
        rc->trim_fraction = s->cfg.trim_fraction;
    }
    if (strcmp(s->cfg.dp, "central") == 0) {
        rc->dp = 1;
        rc->dp_cfg.clip = s->cfg.clip_norm;
        rc->dp_cfg.noise_multiplier = s->cfg.noise_multiplier;
        rc->dp_delta = s->cfg.dp_delta;
        /* Poisson sampling over the enrolled, non-revoked devices (selection.h). */
        uint64_t enrolled = 0, pop = 0;
        if ((e = plait__svc_population(s->store, &enrolled)) != 0 ||
            (e = plait_sel_population(s->cfg.population, enrolled, &pop)) != 0)
            return e;
        if (s->cfg.dp_delta == 0 && pop < 2)
            return plait_fail(PLAIT_EINVAL,
                              "dp_delta: the default 1 / population^1.1 needs at least 2 enrolled devices (%llu now); "
                              "enroll them first or set dp_delta",
                              (unsigned long long)pop);
        rc->poisson = 1;
        rc->population = pop ? (size_t)pop : 1;
        if ((e = plait_sel_rate_of(s->cfg.target_cohort, pop, s->cfg.sampling_rate, &rc->sample_rate)) != 0) return e;
        if ((e = plait_sel_create(&s->sel)) != 0) return e;
        if (s->cfg.adaptive_clip) {
            rc->dp_cfg.adaptive = 1;
            rc->dp_cfg.target_quantile = s->cfg.clip_target_quantile;
            rc->dp_cfg.clip_lr = s->cfg.clip_lr;
            rc->dp_cfg.count_stddev = s->cfg.clip_count_stddev;
            rc->dp_cfg.max_clip = s->cfg.quant_range; /* a larger clip would only be clamped by quantization */
            rc->clip_bit = 1;
        }
    } else if (strcmp(s->cfg.dp, "distributed") == 0) {
        /* The devices add the noise (ddg.h); the round core only decodes and accounts. */
        uint64_t num = 0, den = 1, enrolled = 0;
        if ((e = plait_aggcfg_ddg_variance(&s->cfg, &num, &den)) != 0) return e;
        if ((e = plait__svc_population(s->store, &enrolled)) != 0) return e;
        if (s->cfg.dp_delta == 0 && enrolled < 2)
            return plait_fail(PLAIT_EINVAL,
                              "dp_delta: the default 1 / population^1.1 needs at least 2 enrolled devices (%llu now); "
                              "enroll them first or set dp_delta",
                              (unsigned long long)enrolled);
        rc->ddg = 1;
        rc->ddg_var = (double)num / (double)den;
        rc->dp_delta = s->cfg.dp_delta;
        rc->population = enrolled ? (size_t)enrolled : 1;
    }
    plait_drbg_t d;
    plait_drbg_init(&d);
    if ((e = plait_drbg_seed(&d, (const uint8_t *)"plait-aggregator dp", 19)) != 0 ||
        (e = plait_rng_seed_drbg(&s->rng, &d)) != 0 || (e = plait_rng_seed_drbg(&s->sel_rng, &d)) != 0) {
        plait_drbg_free(&d);
        return e;
    }
    plait_drbg_free(&d);
    if ((e = plait_round_create(&s->round, rc, s->committed, s->span_len)) != 0) return e;
    /* Resume the server optimizer's state saved with the latest version. */
    int kind = 0;
    float *state = NULL;
    size_t n = 0;
    e = plait__svc_latest_opt(s->store, &kind, &state, &n);
    if (e == 0 && n > 0) {
        if (kind == (int)k && n == plait_round_opt_state_len(s->round)) {
            e = plait_round_opt_import(s->round, state, n);
            if (e == 0) PLAIT_LOG(PLAIT_LOG_INFO, "server optimizer state restored (%zu floats)", n);
        } else {
            PLAIT_LOG(PLAIT_LOG_WARN, "stored server optimizer state (kind %d, %zu floats) does not fit the configured "
                      "optimizer; starting it fresh", kind, n);
        }
    } else if (e == PLAIT_ENOENT) {
        e = 0;
    }
    free(state);
    return e;
}

int plait_server_create(plait_server_t **out, const char *dir, const plait_aggcfg_t *cfg)
{
    if (!out || !dir || !cfg) return plait_fail(PLAIT_EINVAL, "server_create: NULL argument");
    *out = NULL;
    int rc = plait_aggcfg_validate(cfg);
    if (rc != 0) return rc;
    plait_server_t *s = calloc(1, sizeof(*s));
    if (!s) return PLAIT_ENOMEM;
    s->cfg = *cfg;
    snprintf(s->dir, sizeof(s->dir), "%s", dir);
    plait_pki_revlist_init(&s->rev);
    plait__admit_init(&s->admit);
    s->preauth_cap = plait__admit_cap(cfg->max_connections, cfg->max_preauth_connections);
    plait_lora_init(&s->lora);
    char *ca = NULL, *crt = NULL, *key = NULL;
    int loop_ok = 0;

    plait_wire_limits_default(&s->lim);
    s->lim.max_frame = (size_t)cfg->max_frame;
    s->lim.max_preauth_frame = (size_t)cfg->max_preauth_frame;
    s->lim.max_chunk_bytes = (size_t)cfg->max_chunk_bytes;
    s->lim.max_update_elements = cfg->max_update_elements;
    if ((rc = plait_wire_limits_validate(&s->lim)) != 0) goto fail;

    snprintf(s->rev_path, sizeof(s->rev_path), "%s/revoked.txt", dir);
    if ((rc = plait_pki_revlist_load(&s->rev, s->rev_path)) != 0) goto fail;
    if ((rc = read_pem(dir, "ca.crt", &ca)) != 0 || (rc = read_pem(dir, "server.crt", &crt)) != 0 ||
        (rc = read_pem(dir, "server.key", &key)) != 0)
        goto fail;
    if ((rc = plait_tls_config_server(&s->tls, ca, crt, key, 1, plait_pki_revlist_check, &s->rev)) != 0) goto fail;
    plait_sha256((const uint8_t *)ca, strlen(ca), s->dep); /* the deployment id of SecAgg+ */
    if (!(s->ca_pem = strdup(ca))) {
        rc = PLAIT_ENOMEM;
        goto fail;
    }
    if (s->cfg.tls_ticket_lifetime_s > 0 &&
        (rc = plait_tls_config_tickets(s->tls, (uint32_t)s->cfg.tls_ticket_lifetime_s)) != 0)
        goto fail;

    if ((rc = setup_model(s)) != 0) goto fail;
    char dbpath[1200];
    snprintf(dbpath, sizeof(dbpath), "%s/plait.db", dir);
    int64_t abandoned = 0;
    if ((rc = plait__svc_open(&s->store, dbpath, 0, 1, &abandoned)) != 0) {
        rc = plait_fail(rc, "%s: %s", dbpath, plait_errmsg());
        goto fail;
    }
    if (abandoned)
        PLAIT_LOG(PLAIT_LOG_WARN, "recovery: %lld round(s) left open by a crash marked abandoned; "
                  "the global adapter is the last committed version", (long long)abandoned);
    if ((rc = plait__svc_open(&s->store_r, dbpath, 0, 0, NULL)) != 0) goto fail;

    if ((rc = uv_loop_init(&s->loop)) != 0) {
        rc = plait_fail(PLAIT_EIO, "uv_loop_init: %s", uv_strerror(rc));
        goto fail;
    }
    loop_ok = 1;
    s->loop_init = 1;
    if ((rc = bind_listener(s, &s->listener, cfg->listen_addr, cfg->port, on_conn, &s->port)) != 0) goto fail_loop;
    if (cfg->metrics_enabled) {
        if ((rc = bind_listener(s, &s->mlistener, cfg->metrics_addr, cfg->metrics_port, on_mconn, &s->metrics_port)) !=
            0) {
            uv_close((uv_handle_t *)&s->listener, NULL);
            goto fail_loop;
        }
        s->have_metrics = 1;
    }
    /* Only once listening: a first serve that cannot bind must not store version 1 (it fixes the LoRA shape). */
    if ((rc = setup_versions(s)) != 0) goto fail;
    if ((rc = setup_round(s)) != 0) goto fail;
    uv_timer_init(&s->loop, &s->tick);
    s->tick.data = s;
    uv_signal_init(&s->loop, &s->sigterm);
    uv_signal_init(&s->loop, &s->sigint);
    s->sigterm.data = s->sigint.data = s;
    uv_async_init(&s->loop, &s->stop_async, on_stop_async);
    s->stop_async.data = s;
    plait_pki_free_pem(ca);
    plait_pki_free_pem(crt);
    plait_pki_free_pem(key);
    *out = s;
    return 0;

fail_loop:
fail:
    (void)loop_ok;
    plait_pki_free_pem(ca);
    plait_pki_free_pem(crt);
    plait_pki_free_pem(key);
    {
        char keep[512];
        snprintf(keep, sizeof(keep), "%s", plait_errmsg());
        plait_server_destroy(s);
        plait_fail(rc, "%s", keep);
    }
    return rc;
}

int plait_server_port(const plait_server_t *s) { return s ? s->port : 0; }
int plait_server_metrics_port(const plait_server_t *s) { return s ? s->metrics_port : 0; }

static int write_port_file(plait_server_t *s)
{
    if (s->cfg.port_file[0] == '\0') return 0;
    char tmp[PLAIT_AGGCFG_STR_MAX + 8];
    snprintf(tmp, sizeof(tmp), "%s.tmp", s->cfg.port_file);
    FILE *f = fopen(tmp, "w");
    if (!f) return plait_fail(PLAIT_EIO, "port_file %s: cannot write", tmp);
    fprintf(f, "{\"port\": %d, \"metrics_port\": %d}\n", s->port, s->metrics_port);
    if (fclose(f) != 0 || rename(tmp, s->cfg.port_file) != 0)
        return plait_fail(PLAIT_EIO, "port_file %s: cannot write", s->cfg.port_file);
    return 0;
}

int plait_server_run(plait_server_t *s)
{
    uv_signal_start(&s->sigterm, on_signal, SIGTERM);
    uv_signal_start(&s->sigint, on_signal, SIGINT);
    uv_timer_start(&s->tick, on_tick, TICK_MS, TICK_MS);
    s->next_open = now_s(s);
    int rc = write_port_file(s);
    if (rc != 0) {
        PLAIT_LOG(PLAIT_LOG_ERROR, "%s", plait_errmsg());
        begin_shutdown(s, "port file");
    }
    PLAIT_LOG(PLAIT_LOG_INFO,
              "serving port=%d metrics_port=%d version=%llu span=%zu words target_cohort=%llu min_cohort=%llu",
              s->port, s->metrics_port, (unsigned long long)s->blob->version, s->span_len + 1,
              (unsigned long long)s->cfg.target_cohort, (unsigned long long)s->cfg.min_cohort);
    uv_run(&s->loop, UV_RUN_DEFAULT);
    rc = uv_loop_close(&s->loop);
    if (rc != 0) {
        PLAIT_LOG(PLAIT_LOG_ERROR, "loop did not close cleanly: %s", uv_strerror(rc));
        return PLAIT_EINTERNAL;
    }
    s->stopped_handles = 2;
    return 0;
}

void plait_server_stop(plait_server_t *s)
{
    if (s) uv_async_send(&s->stop_async);
}

static void close_any(uv_handle_t *h, void *arg)
{
    (void)arg;
    if (!uv_is_closing(h)) uv_close(h, NULL);
}

void plait_server_destroy(plait_server_t *s)
{
    if (!s) return;
    if (s->loop_init && s->stopped_handles != 2) {
        /* Created but not run (or run failed early): close what setup opened. */
        uv_walk(&s->loop, close_any, NULL);
        uv_run(&s->loop, UV_RUN_DEFAULT);
        (void)uv_loop_close(&s->loop);
    }
    plait_round_destroy(s->round);
    plait__svc_close(s->store_r);
    plait__svc_close(s->store);
    plait_tls_config_free(s->tls);
    plait_pki_revlist_free(&s->rev);
    plait__admit_free(&s->admit);
    plait_lora_free(&s->lora);
    blob_unref(s->blob);
    free(s->committed);
    cohort_clear(s);
    free(s->cohort);
    free(s->pace);
    plait__sa_free(s->sa);
    free(s->ca_pem);
    plait_rng_wipe(&s->rng);
    plait_rng_wipe(&s->sel_rng);
    plait_sel_destroy(s->sel);
    free(s);
}
