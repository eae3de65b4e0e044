/*
 * metrics.h (private to aggregator/): the service's counters and their
 * Prometheus text rendering. The loop thread owns the struct; the worker
 * never touches it (commit results are applied in after_work).
 */
#ifndef PLAIT_AGG_METRICS_H
#define PLAIT_AGG_METRICS_H

#include <stdint.h>

#include "plait/json.h"

/* Why a connection or an update was refused; index into rejections[]. */
#define PLAIT__REJ_MAP(XX)                                                              \
    XX(TLS_UNTRUSTED, "tls_untrusted_ca") XX(TLS_EXPIRED, "tls_expired")                \
    XX(TLS_REVOKED, "tls_revoked") XX(TLS_NO_CERT, "tls_no_cert")                       \
    XX(TLS_OTHER, "tls_handshake") XX(UNKNOWN_DEVICE, "unknown_device")                 \
    XX(FRAME_TOO_BIG, "frame_too_big") XX(BAD_FRAME, "bad_frame")                       \
    XX(BAD_MESSAGE, "bad_message") XX(TRUNCATED, "truncated")                           \
    XX(MID_UPLOAD, "disconnect_mid_upload") XX(STALE, "stale_round")                    \
    XX(DUPLICATE, "duplicate") XX(LATE, "late") XX(NOT_SELECTED, "not_selected")        \
    XX(WRONG_SHAPE, "wrong_shape") XX(MALFORMED_UPDATE, "malformed_update")            \
    XX(NORM, "norm") XX(AUTH_TIMEOUT, "auth_timeout") XX(IDLE_TIMEOUT, "idle_timeout")  \
    XX(TOO_MANY, "too_many_connections") XX(MODEL_MISMATCH, "model_mismatch")           \
    XX(ORDER, "protocol_order") XX(TLS_BAD_RECORD, "tls_bad_record")           \
    XX(WRITE_STALL, "write_stall")                                                      \
    XX(ADDR_FULL, "address_full") XX(REVOKED, "revoked_connected")                     \
    XX(SLOW_UPLOAD, "slow_upload")

typedef enum {
#define PLAIT__XX(e, s) PLAIT__REJ_##e,
    PLAIT__REJ_MAP(PLAIT__XX)
#undef PLAIT__XX
        PLAIT__REJ_COUNT
} plait__rej_t;

typedef struct {
    uint64_t rounds_committed, rounds_failed, rounds_abandoned;
    uint64_t connections_total, connections_open;
    uint64_t bytes_in, bytes_out;
    uint64_t updates_accepted, tasks_offered, come_back_later;
    uint64_t tls_handshakes, tls_resumed; /* authenticated handshakes, and those that resumed a session */
    uint64_t tasks_declined; /* Decline messages (the code is logged, never counted per device) */
    double round_seconds_sum; /* committed rounds, open to commit */
    uint64_t round_seconds_count;
    double last_round_seconds;
    uint64_t global_version, round_id;
    uint64_t rejections[PLAIT__REJ_COUNT];
    uint64_t preauth_open;       /* connections before their Hello (gauge) */
    uint64_t accept_waiting;     /* 1 while new connections wait in the listen backlog for the pre-auth pool (gauge) */
    uint64_t accept_waits;       /* times accepting paused because the pre-auth pool was full */
    uint64_t send_flowing, send_stalled; /* ciphertext queued for peers that read, and for peers that
                                          * have read nothing for 2 s (gauges, bytes) */
    uint64_t stalled_open;       /* connections whose peer has read nothing for 2 s (gauge) */
    uint64_t uploads_parked;     /* uploads waiting for an update buffer (gauge) */
    uint64_t rejection_logs_suppressed; /* refusal log lines rate-limited away */
    uint64_t metrics_evicted;    /* idle metrics connections closed to make room */
    uint64_t evals_committed;    /* federated evaluations committed */
    double eval_mean_loss;       /* the last one's mean clipped held-out loss (an aggregate) */
    uint64_t eval_version;       /* the version it evaluated (0: none yet) */
    /* adapter downloads by encoding (plait_adapter_encoding_t: full, delta, seeded); payload bytes */
    uint64_t downloads[3], download_bytes[3];
    /* plain update chunks received by form (0 words, 1 packed); payload bytes (words·4 or packed) */
    uint64_t upload_chunks[2], upload_bytes[2];
} plait__metrics_t;

/** \brief Label value of a rejection reason ("tls_revoked"). */
const char *plait__rej_name(plait__rej_t r);

/** \brief Append the Prometheus text exposition (format 0.0.4) of m to b. \return plait_buf_status(b). */
int plait__metrics_render(const plait__metrics_t *m, plait_buf_t *b);

#endif
