/*
 * server_int.h (private to aggregator/): what the service's files share.
 *
 * The service is one object, plait_server_t, split by concern:
 *
 *     server.c          setup, listeners, the tick, signals, shutdown, destroy
 *     server_conn.c     device connections: accept, TLS, reading frames,
 *                       closing, message dispatch, revocation of live sessions
 *     server_send.c     sending: frames into TLS and libuv, the send queue,
 *                       download pacing, stalled readers
 *     server_round.c    the round glue: cohort and pace steering, Hello → Task
 *                       or come back later, uploads, declines, the SecAgg+
 *                       glue, the round's deadlines (plait__srv_round_step)
 *     server_commit.c   store jobs on a worker: a round opens, fails or
 *                       commits (aggregate, optimizer step, adapter, one
 *                       transaction); their results applied on the loop
 *     server_metrics.c  the plain-HTTP GET /metrics endpoint
 *
 * beside server_admit.c (the pre-auth pool), server_secagg.c (the SecAgg+
 * stages), metrics.c (the text rendering) and svcstore.c (the store).
 *
 * Everything here runs on the loop thread, except a commit job on its worker
 * (server_commit.c says what it may touch). The plait__srv_ functions are
 * internal to these files, not API; uv.h stays inside them (STYLE.md §2).
 *
 * Logs carry connection ids, device ids (pseudonymous certificate CNs), round
 * ids, sizes and error names; never update words, adapter bytes or keys.
 */
#ifndef PLAIT_AGG_SERVER_INT_H
#define PLAIT_AGG_SERVER_INT_H

#include "plait/server.h"

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "metrics.h"
#include "server_admit.h"
#include "server_secagg.h"
#include "svcstore.h"
#include "plait/lora.h"
#include "plait/model.h"
#include "plait/pki.h"
#include "plait/rng.h"
#include "selection.h"
#include "plait/round.h"
#include "plait/tls.h"
#include "plait/wire.h"

#define PLAIN_CHUNK 16384          /* plaintext read per plait_tls_read */
#define READ_BUF 65536             /* ciphertext read per uv read */
#define LISTEN_BACKLOG 511         /* a fleet connects in bursts when a round opens (the kernel caps it at somaxconn) */
#define PARK_READ 1024             /* ... by a connection whose upload would wait for a buffer */
#define PARK_PLAIN 512             /* plaintext per plait_tls_read for such a connection */
#define CLOSE_GRACE_S 2.0          /* a closing connection gets this long to drain */
#define METRICS_REQ_MAX 2048       /* bytes of an HTTP request we read */
#define METRICS_MAX_CONNS 64
#define METRICS_DEADLINE_S 2.0     /* a metrics connection gets this long to ask and be answered */
#define REVOKE_SWEEP_S 1.0         /* revocation list reload and live-session sweep period */
#define TICK_MS 50
/* Ciphertext queued for sending (what the kernel's socket buffers did not take) is capped by
 * max_send_queue, all connections together, stalled ones included. A connection whose peer has
 * read nothing for DL_STALL_S counts as stalled (a gauge); one stalled for DL_EVICT_S while
 * downloads wait for room in the queue is closed (write_stall), so peers that stop reading hold
 * it up for seconds and the server's send buffers do not grow with the cohort. */
#define DL_EVICT_S 10.0
#define DL_STALL_S 2.0
/* Adapter bytes per AdapterChunk the server sends (at most max_chunk_bytes): a connection has
 * one in flight beyond its socket, so a peer that reads slowly or not at all holds ~33 KiB of
 * the send queue, and 2 MiB lets about 60 such peers download at once before others wait. */
#define DL_PIECE_MAX (32u << 10)

#define DL_KEEP_MAX 16          /* download_delta_keep's upper bound */

/* A download delta to this version from an older one, encoded once (server_dl.c). */
typedef struct {
    uint8_t base[32];            /* SHA-256 of the base version */
    uint8_t *data;               /* NULL: encoding it failed (out of memory), not tried again */
    size_t len;
} dl_delta_t;

/* A serialized global adapter, shared by the connections downloading it,
 * with its encodings (server_dl.c), each built once and immutable after. */
typedef struct blob_s {
    int refs;
    uint64_t version;
    uint8_t *data;
    size_t len;
    uint8_t sha[32];
    float *params;               /* the arena it serializes (n_params floats: every A, then every B) */
    size_t n_params, n_a;
    uint8_t *seeded;             /* FFA-LoRA: the B span, float32 LE (built on first use) */
    size_t seeded_len;
    int seeded_failed;           /* building it failed (out of memory): not tried again for this version */
    dl_delta_t delta[DL_KEEP_MAX + 1]; /* from kept older versions (built on first use) */
    size_t n_delta;
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
    double t_wprog; /* last write progress: a write completed, or the kernel took part of one (tick) */
    size_t wq_seen; /* bytes not yet acknowledged by the peer at the last tick: libuv's write queue and the
                     * kernel's send queue (it shrinks as the peer reads) */
    int wstalled;   /* no write progress for DL_STALL_S (as of the last tick; metrics count its out_queued) */
    /* round participation */
    uint64_t round_id; /* server round id this connection was selected for, 0 if none */
    blob_t *dl;
    uint64_t dl_off;
    int dl_active;
    plait_adapter_encoding_t dl_enc; /* encoding of the transfer: dl_data, dl_len belong to dl */
    const uint8_t *dl_data;
    size_t dl_len;
    uint8_t *upd;                     /* the update as received: upd_total words of upd_w bytes (server_round.c) */
    unsigned upd_w;
    uint64_t upd_total, upd_have;
    uint32_t upd_next;
    char addr[PLAIT__ADMIT_ADDR_MAX]; /* peer IP address */
    int preauth;                      /* counted in the pre-auth pool (server_admit.h) */
    int parked;                       /* an upload waits for a buffer: the socket is not read */
    int upd_reserved;                 /* an upload has started (header seen) and owns a buffer slot */
    uint64_t park_seq;                /* order of parking (the oldest resumes first) */
    conn_t *dlw_prev, *dlw_next;      /* in the server's list of downloads waiting for send-queue room */
    int dl_waiting;                   /* ... is in it */
    uint64_t upd_rx;                  /* update frame bytes handled since the upload got its slot */
    double t_win;                     /* the rate floor's window: since when, */
    uint64_t rx_win;                  /* ... and upd_rx then */
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
    uint8_t *mem; /* the TLS session's output buffer, sent in place (freed with the request), or NULL: data[] */
    uint8_t data[];
} wreq_t;

typedef struct {
    uint64_t client;
    int submitted; /* 0 training, 1 accepted, 2 held (uploaded during selection), -1 refused or
                      dropped, -2 left during selection, -3 declined during selection */
    char device[PLAIT_PKI_ID_MAX + 1];
    uint8_t *pending;  /* submitted == 2: the update (n_pending words of w_pending bytes), owned */
    size_t n_pending;
    unsigned w_pending;
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
    blob_t *blob;                /* the committed global adapter; its arena's span is the round core's
                                    global span (the core is rebuilt from it after a failed commit) */
    blob_t *hist[DL_KEEP_MAX];   /* the versions before it, newest first, for download deltas */
    size_t n_hist;
    uint64_t dl_round_n, dl_round_bytes; /* downloads started and adapter bytes sent in the current round */
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
    conn_t *dlw_head, *dlw_tail; /* downloads waiting for room in the send queue, oldest first */
    double t_tick;               /* when the last tick ran (a late one means the loop was stalled) */
    mconn_t *mconns;
    size_t n_mconns;
    uint64_t next_conn_id;
    int stopping, stopped_handles;
    plait__metrics_t m;
    plait__admit_t admit;
    size_t preauth_cap;
    int accept_waiting;          /* the pool was full: libuv holds a new connection, the rest wait in the backlog */
    size_t n_closing;            /* connections closing (not counted against max_connections) */
    uint64_t park_seq;           /* last parked connection's sequence number */
    size_t out_total;            /* ciphertext bytes queued in uv_write requests, all connections */
    size_t n_parked;             /* connections parked (an upload waiting for a buffer) */
    int slot_freed;              /* an update buffer may have been freed since the last resume on a read */
    double rev_swept;
    /* secure aggregation (server_secagg.c): the round's SecAgg+ state, or NULL */
    plait__sa_t *sa;
    int sa_failed;               /* the last round could not start secure aggregation: back off */
    uint64_t fill_logged;        /* 1 + the live device count of the last "can never fill" warning, 0: none */
    uint8_t dep[32];             /* deployment id: SHA-256 of the CA certificate */
    char *ca_pem;
    /* federated evaluation (server_eval.c) */
    int eval_live;                 /* the open round is an evaluation: s->round and s->rcfg are its core's */
    plait_round_t *train_core;     /* the training core while an evaluation round runs */
    plait_round_config_t train_rcfg;
    uint64_t trained_since_eval;   /* training rounds committed since the last evaluation (or start) */
    uint8_t readbuf[READ_BUF];
    uint8_t plain[PLAIN_CHUNK];
    int read_busy;
    uint32_t *words;             /* (span_len + 2) one update widened to 32-bit words for the round core, and
                                    a packed chunk being unpacked (loop thread; wiped after each use) */
    size_t words_cap;
    uint8_t **upool;             /* wiped update buffers kept for the next uploads (server_round.c) */
    size_t n_upool, cap_upool;
};

/* The loop's clock, in seconds. */
static inline double now_s(plait_server_t *s) { return (double)uv_now(&s->loop) / 1000.0; }

/* ---- server.c ------------------------------------------------------------------ */

/** \brief Drop a reference to a serialized adapter; the last one frees it. NULL does nothing. */
void plait__srv_blob_unref(blob_t *b);

/* ---- server_dl.c --------------------------------------------------------------- */

/** \brief Give b its arena (copied) for the download encodings. \return 0 or PLAIT_ENOMEM. */
int plait__srv_blob_set_params(blob_t *b, const float *params, size_t n_params, size_t n_a);
/** \brief A new version is committed: old (the reference is taken over) joins the kept versions as
 *         its arena and hash alone; its file and encodings go with the last connection sending them. */
void plait__srv_hist_push(plait_server_t *s, blob_t *old);
/** \brief At start: keep the download_delta_keep stored versions before s->blob (best effort). */
void plait__srv_hist_load(plait_server_t *s);
/** \brief Drop every kept version. */
void plait__srv_hist_clear(plait_server_t *s);
/**
 * \brief Worker, commit job: with download_delta_bits, turn s->lora.params into
 *        the previous version plus a quantized delta (written back to the
 *        round core's span) and cache that delta on nb. On any failure the
 *        version stays as aggregated (exact deltas then). \return 0 when
 *        quantized, else the reason (logged by the caller).
 */
int plait__srv_commit_quant(plait_server_t *s, blob_t *nb);
/** \brief Pick the encoding of c's download (offset 0: the smallest of what the device accepts). */
int plait__srv_dl_choose(conn_t *c, const plait_msg_adapter_request_t *r);

/* ---- server_send.c ------------------------------------------------------------- */

/** \brief Encode m, encrypt it and queue it on c. */
int plait__srv_send_msg(conn_t *c, const plait_msg_t *m);
/** \brief Queue an Error frame (best effort). */
void plait__srv_send_error(conn_t *c, int code, const char *msg);
/** \brief Queue a ComeBackLater (retry_ms clamped to 1..max_retry_ms), counted in come_back_later. */
void plait__srv_send_cbl(conn_t *c, plait_retry_reason_t why, uint64_t retry_ms);
/** \brief Queue the session's pending ciphertext; the session gives its record buffers back if it can. */
int plait__srv_flush(conn_t *c);
/** \brief Send c's download on while it has no piece in flight and the send queue has room. */
void plait__srv_pump_download(conn_t *c);
/** \brief Take c off the list of downloads waiting for room in the send queue (if on it). */
void plait__srv_dlw_remove(conn_t *c);
/** \brief On the tick: mark connections whose peer stopped reading; close those stalled DL_EVICT_S
 *         while downloads wait. */
void plait__srv_mark_write_stalls(plait_server_t *s, double now);

/* ---- server_conn.c ------------------------------------------------------------- */

/** \brief Count a refusal (rejections_total{why}, and the open round's counters) and log it, rate limited. */
void plait__srv_reject(conn_t *c, plait__rej_t why, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;

/* Accept the connection that waited for room in the pre-auth pool, if there is room now. */
void plait__srv_accept_resume(plait_server_t *s);
/* The upload rate floor (on_tick): 1 when c's upload must be cut; judge = 0 only restarts its window. */
int plait__srv_upload_too_slow(conn_t *c, double now, int judge, double *rate);
/** \brief The close callback of a connection's handle: unlinks it and frees it. */
void plait__srv_on_conn_closed(uv_handle_t *h);
/** \brief Close c once (graceful: close_notify, FIN, lingering read); it leaves the pool and the round. */
void plait__srv_conn_close(conn_t *c, int graceful);
/** \brief Refuse with an Error frame (when the session can still carry one), then close. */
void plait__srv_fail_conn(conn_t *c, plait__rej_t why, int code, const char *wire_msg);
/** \brief Reload the revocation list; close revoked devices' sessions, take them out of the round. */
void plait__srv_revoke_sweep(plait_server_t *s);
/** \brief The federation listener's connection callback. */
void plait__srv_on_conn(uv_stream_t *l, int status);
/** \brief Wipe an update buffer of n words of w bytes and give it back to the pool (NULL does nothing). */
void plait__srv_upd_free(plait_server_t *s, uint8_t *b, size_t n, unsigned w);
/** \brief Free the pool of update buffers (destroy). */
void plait__srv_upd_pool_clear(plait_server_t *s);
/** \brief Update buffers in use: uploads being received plus updates held until training starts. */
size_t plait__srv_uploads_busy(const plait_server_t *s);
/** \brief Resume parked uploads, oldest first, while buffers are free (loop thread; tick and reads). */
void plait__srv_uploads_resume(plait_server_t *s);

/* ---- server_round.c ------------------------------------------------------------ */

/** \brief The open round's member with this client id, or NULL. */
member_t *plait__srv_member_find(plait_server_t *s, uint64_t client);
/** \brief c is closing: a selected device that left before its update was in (rejoin grace). */
void plait__srv_conn_leave_round(conn_t *c);
/** \brief The answer to an accepted Hello: a task, or come back later. */
void plait__srv_offer(conn_t *c);
/** \brief Start the SecAgg+ stages of the round just opened (s->sa). */
int plait__srv_secagg_open(plait_server_t *s, double now);
/** \brief Drive the round: deadlines, failure, commit, next round (tick). */
void plait__srv_round_step(plait_server_t *s);
/** \brief An UpdateChunk from c. */
void plait__srv_handle_update(conn_t *c, const plait_msg_update_chunk_t *u);
/** \brief A Decline from c; closes c. */
void plait__srv_handle_decline(conn_t *c, const plait_msg_decline_t *d);
/** \brief A member revoked while in the round: held update dropped, counted as a dropout. */
void plait__srv_member_revoke(plait_server_t *s, member_t *mb);
/** \brief The round ended without a commit: tell its connected devices to come back later. */
void plait__srv_signal_round_end(plait_server_t *s, plait_retry_reason_t why);

/* ---- server_commit.c ----------------------------------------------------------- */

/** \brief Empty the cohort (held updates wiped and freed). */
void plait__srv_cohort_clear(plait_server_t *s);
/** \brief Shutdown with a round open and no job running: record it abandoned. */
void plait__srv_abandon_round(plait_server_t *s, const char *why);
/** \brief Queue the job that opens the next round in the store. */
void plait__srv_round_open(plait_server_t *s);
/** \brief The round failed: log it, tell its devices, queue the job that records it. */
void plait__srv_round_failed(plait_server_t *s);
/** \brief The round reached AGGREGATION: queue its commit job (once). */
void plait__srv_start_commit(plait_server_t *s);
/* A secure round's unmasking (plait__sa_finish_work) in a job, so the loop keeps serving every
 * other connection meanwhile; the job's end steps the round again. Returns 1 when the job was
 * queued (the caller must not touch sa until then), 0 when it ran here instead. */
int plait__srv_start_unmask(plait_server_t *s);

/* ---- server_eval.c ------------------------------------------------------------- */

/** \brief Words a device uploads in the open round: the update's, or PLAIT_WIRE_EVAL_WORDS. */
size_t plait__srv_words(const plait_server_t *s);
/** \brief Worker: 2 (the operator's request) or 1 (eval_every) if the round about to open is an
 * evaluation, 0 if not, -1 if an operator request was taken while evaluation is not allowed. */
int plait__srv_eval_pick(plait_server_t *s);
/** \brief Worker: open the evaluation round of the current version in the store; when that
 * fails, an operator's request (by_request) is put back for the retry. */
int plait__srv_eval_begin(plait_server_t *s, int by_request, int64_t *rid);
/** \brief The evaluation round opened: swap in a fresh evaluation core (training core parked). */
int plait__srv_eval_start(plait_server_t *s);
/** \brief The round ended: the training core back (nothing if no evaluation runs). */
void plait__srv_eval_end(plait_server_t *s);
/** \brief An evaluation round's task fields (kind, L, 2 words, example_cap 1); no-op otherwise. */
void plait__srv_eval_fill_task(const plait_server_t *s, plait_msg_task_t *t);
/** \brief In an evaluation round, a device without PLAIT_CAP_EVALUATE is told to come back
 * (incompatible) and closed: \return 1 then, else 0. */
int plait__srv_eval_refuse(conn_t *c, uint32_t caps);
/** \brief Worker: aggregate, decode the mean, commit the evals row. */
int plait__srv_eval_commit_work(plait_server_t *s, const plait__svc_stats_t *stats, double *mean /* OUT */,
                                size_t *devices /* OUT */, char *why, size_t why_len);
/** \brief Loop thread: apply an evaluation commit's result (log, metrics, or record the failure). */
void plait__srv_eval_committed(plait_server_t *s, int rc, double mean, size_t devices, const char *why);

/* ---- server_metrics.c ---------------------------------------------------------- */

/** \brief Close a metrics connection once. */
void plait__srv_mconn_close(mconn_t *mc);
/** \brief The metrics listener's connection callback. */
void plait__srv_on_mconn(uv_stream_t *l, int status);

#endif
