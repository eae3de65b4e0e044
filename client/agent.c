/*
 * agent.c: the device agent's round conversation, one federated conversation
 * at a time, and the daemon loop around it (plait_agent_run_once,
 * plait_agent_run in client.h).
 *
 * The agent is one of the places that combine everything (STYLE.md §2): the
 * engine (model, tokenizer, LoRA, trainer, corpus), the device store, the
 * update pipeline (update.h), the wire format (wire.h) and TLS (tls.h). It
 * owns no third-party header: sockets are POSIX, TLS is lib/tls.c driven over
 * memory buffers, frames are wire.h. Its files, by concern (shared private
 * declarations in agent_int.h):
 *
 *     agent.c         Hello, the offered task and its decision, the adapter
 *                     download, upload and Ack, declines, the secure round's
 *                     frame, run_once and the daemon loop
 *     agent_setup.c   config defaults and checks, backoff, create/destroy
 *     agent_net.c     TCP + mutual TLS, frames, bounded waits, stop
 *     agent_train.c   training on a worker thread, the update pipeline
 *     agent_state.c   the state directory's crash-safe files
 *     agent_secagg.c  the device's SecAgg+ side; agent_privacy.c: forget, keygen
 *
 * Invariants:
 *   - Every wait is bounded (agent_net.c): poll(2) on the socket and on the
 *     agent's wake pipe with a deadline (connect/handshake, each frame, the
 *     round's deadline, keepalive). plait_agent_stop() writes the wake pipe,
 *     so a blocked agent returns PLAIT_ECANCELED at once.
 *   - Training runs on a worker thread (agent_train.c, STYLE.md §9) while this
 *     thread keeps the connection alive and watches the deadline.
 *   - What leaves the device is the Hello and the quantized words built by
 *     plait__agent_make_update(); the float difference is wiped there, the
 *     corpus (private tokens) is wiped by plait_corpus_free, the noise stream
 *     by plait_rng_wipe, the key PEM by plait_pki_free_pem. Logs carry round
 *     ids, sizes, counts and error names only (STYLE.md §8). The aggregator
 *     learns why a round was declined only as a code of the fixed DeclineCode
 *     list.
 *   - Crash safety: the words are written to DIR/pending.upd before the first
 *     chunk is sent, DIR/state records the last uploaded and acknowledged
 *     rounds (atomic renames, agent_state.c), and
 *     plait__agent_task_decision() refuses to upload an acknowledged round
 *     again or to compute a second update for a round whose words were stored.
 *
 * Workload: a conversation every few minutes to hours; one adapter of some
 * KiB to MiB down, one update span up. Nothing here is performance-critical
 * except training, which is the engine's.
 */
#include "agent_int.h"

#include "plait/client.h"
#include "plait/crypto.h"
#include "plait/file.h"
#include "plait/log.h"
#include "plait/lora.h"
#include "plait/pki.h"
#include "plait/rng.h"
#include "plait/tls.h"
#include "plait/update.h"
#include "plait/wire.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CLIENT_VERSION "plait-agent/" PLAIT_VERSION_STRING
#define AGENT_CAPS                                                                                 \
    (PLAIT_CAP_SECURE_AGG | PLAIT_CAP_LOCAL_DP | PLAIT_CAP_FFA | PLAIT_CAP_FEDIT | PLAIT_CAP_FEDSA |   \
     PLAIT_CAP_RESUME | PLAIT_CAP_SECAGG | PLAIT_CAP_EVALUATE)

/* ------------------------------------------------------------------ events */

void plait__agent_emit(plait_agent_t *a, plait_agent_event_type_t type, uint64_t round, int rc)
{
    if (!a->cfg.on_event) return;
    plait_agent_event_t ev;
    memset(&ev, 0, sizeof(ev));
    ev.type = type;
    ev.round_id = round;
    ev.rc = rc;
    a->cfg.on_event(a->cfg.event_ud, &ev);
}

void plait__agent_emit_ev(plait_agent_t *a, const plait_agent_event_t *ev)
{
    if (a->cfg.on_event) a->cfg.on_event(a->cfg.event_ud, ev);
}

/* ----------------------------------------------------- the aggregator's answers */

/* An Error from the aggregator becomes our return code. */
int plait__agent_peer_error(plait__agent_conn_t *c, const plait_msg_t *m, uint64_t round)
{
    plait_agent_t *a = c->a;
    c->peer_error = 1; /* it closes after an Error: no answer is due */
    int code = m->u.error.code;
    int known = code < 0 && code >= PLAIT_ETHRESHOLD && code != PLAIT_EAGAIN;
    char where[48] = "";
    if (round) snprintf(where, sizeof(where), "round %llu: ", (unsigned long long)round);
    /* The message is peer text, validated by wire.c (printable, bounded); logged as data. */
    PLAIT_LOG(PLAIT_LOG_WARN, "agent %s: %saggregator error %s: %s", a->device_id, where,
              known ? plait_err_name(code) : "unknown", m->u.error.message);
    if (!known)
        return plait_fail(PLAIT_EPROTO, "aggregator: %s (unknown code %d)", m->u.error.message,
                          code);
    return plait_fail(code, "aggregator: %s",
                      m->u.error.message[0] ? m->u.error.message : plait_strerror(code));
}

int plait__agent_unexpected(const plait_msg_t *m, const char *waiting)
{
    return plait_fail(PLAIT_EPROTO, "aggregator sent %s while the agent waited for %s",
                      plait_msg_type_name(m->type), waiting);
}

static const char *retry_reason_name(plait_retry_reason_t r);

/* A ComeBackLater inside a round: the aggregator ended it (failed round,
 * failed commit, shutdown) and closes. Remembered on c; the caller turns it
 * into a come-back outcome. \return PLAIT_ECANCELED (the round is over). */
int plait__agent_round_ended(plait__agent_conn_t *c, const plait_msg_t *m, uint64_t round)
{
    c->peer_error = 1; /* it closes after this: no answer is due */
    c->got_cbl = 1;
    c->cbl_ms = m->u.come_back_later.retry_ms;
    c->cbl_reason = m->u.come_back_later.reason;
    PLAIT_LOG(PLAIT_LOG_WARN, "agent %s: round %llu: ended by the aggregator (%s); come back in %u ms",
              c->a->device_id, (unsigned long long)round, retry_reason_name(c->cbl_reason), c->cbl_ms);
    return plait_fail(PLAIT_ECANCELED, "round %llu: ended by the aggregator (%s)", (unsigned long long)round,
                      retry_reason_name(c->cbl_reason));
}

/* After round_ended: a come-back outcome (the words of a failed round are useless). */
static int round_ended_outcome(plait__agent_conn_t *c, uint64_t round, plait_agent_result_t *res)
{
    plait_agent_t *a = c->a;
    if (c->cbl_reason == PLAIT_RETRY_ROUND_FAILED || c->cbl_reason == PLAIT_RETRY_COMMIT_FAILED) {
        int r2 = plait__agent_pending_remove(a->state_dir);
        (void)r2;
    }
    plait_clear_error();
    res->outcome = PLAIT_AGENT_OUT_COME_BACK;
    res->round_id = round;
    res->retry_ms = c->cbl_ms;
    plait_agent_event_t ev = {.type = PLAIT_AGENT_EV_COME_BACK, .round_id = round, .delay_ms = c->cbl_ms};
    plait__agent_emit_ev(a, &ev);
    return 0;
}

/* --------------------------------------------------------------- the round */

static const char *encoding_name(plait_adapter_encoding_t e)
{
    return e == PLAIT_ADAPTER_DELTA ? "delta" : e == PLAIT_ADAPTER_SEEDED ? "seeded" : "full";
}

/* One adapter transfer of t's version from byte start, offering the encodings in accept (and the
 * held adapter's hash for a delta). A FULL transfer lands in full (t->adapter_len bytes); another
 * in *enc_buf (x->total bytes, owned by the caller, also on failure). */
static int transfer(plait__agent_conn_t *c, const plait_msg_task_t *t, uint64_t start, uint32_t accept,
                    const uint8_t *base_sha, uint8_t *full, plait_wire_xfer_t *x,
                    plait_adapter_encoding_t *enc, uint8_t **enc_buf)
{
    plait_agent_t *a = c->a;
    plait_msg_t m;
    int rc, first = 1;
    *enc = PLAIT_ADAPTER_FULL;
    *enc_buf = NULL;
    plait_msg_init(&m, PLAIT_MSG_ADAPTER_REQUEST);
    m.u.adapter_request.round_id = t->round_id;
    m.u.adapter_request.version = t->adapter_version;
    m.u.adapter_request.offset = start;
    m.u.adapter_request.accept = accept;
    if (base_sha) {
        m.u.adapter_request.has_base = 1;
        memcpy(m.u.adapter_request.base_sha256, base_sha, 32);
    }
    /* wire.h's transfer state checks version, total, offsets and the last chunk's hash. */
    plait_wire_xfer_init(x, t->adapter_version, t->adapter_len, start);
    if ((rc = plait__agent_conn_send(c, &m)) != 0) return rc;
    for (;;) {
        if ((rc = plait__agent_conn_expect(c, plait__agent_now_ms() + a->cfg.io_timeout_ms, &m,
                                           "an adapter chunk")) != 0)
            return rc;
        if (m.type != PLAIT_MSG_ADAPTER_CHUNK) {
            rc = m.type == PLAIT_MSG_ERROR ? plait__agent_peer_error(c, &m, t->round_id)
                 : m.type == PLAIT_MSG_COME_BACK_LATER
                     ? plait__agent_round_ended(c, &m, t->round_id)
                     : plait__agent_unexpected(&m, "an adapter chunk");
            plait_msg_free(&m);
            return rc;
        }
        const plait_msg_adapter_chunk_t *ch = &m.u.adapter_chunk;
        rc = 0;
        if (first && ch->encoding != PLAIT_ADAPTER_FULL) {
            /* A compact encoding: only one this device offered, smaller than the adapter, from 0. */
            if (!(accept & (1u << ch->encoding)))
                rc = plait_fail(PLAIT_EPROTO, "adapter_chunk.encoding: %s, which this device did not offer",
                                encoding_name(ch->encoding));
            else if (ch->total_len >= t->adapter_len)
                rc = plait_fail(PLAIT_EPROTO, "adapter_chunk.total_len: %llu, not below the adapter's %llu bytes",
                                (unsigned long long)ch->total_len, (unsigned long long)t->adapter_len);
            else if (!(*enc_buf = malloc((size_t)ch->total_len)))
                rc = plait_fail(PLAIT_ENOMEM, "adapter %s: %llu bytes", encoding_name(ch->encoding),
                                (unsigned long long)ch->total_len);
            if (rc == 0) {
                *enc = ch->encoding;
                plait_wire_xfer_init(x, t->adapter_version, ch->total_len, 0);
            }
        } else if (ch->encoding != *enc) {
            rc = plait_fail(PLAIT_EPROTO, "adapter_chunk.encoding: %s within a %s transfer",
                            encoding_name(ch->encoding), encoding_name(*enc));
        }
        first = 0;
        int r = rc;
        if (rc == 0) r = plait_wire_adapter_rx_add(x, ch, t->adapter_sha256, *enc == PLAIT_ADAPTER_FULL ? full : *enc_buf);
        plait_msg_free(&m);
        if (rc != 0) return rc;
        if (r < 0)
            return plait_fail(r == PLAIT_EMISMATCH ? PLAIT_EPROTO : r, "adapter download: %s", plait_errmsg());
        if (r == 1) return 0;
    }
}

/* Global adapter blob: the cached copy when its hash matches, else downloaded (and cached): as a
 * delta from the cached copy or, under FFA-LoRA, as its B span, when the aggregator offers one
 * and it rebuilds the task's hash; else the full file (resuming DIR/global.part). */
int plait__agent_get_adapter(plait__agent_conn_t *c, const plait_msg_task_t *t, uint8_t **out,
                             size_t *out_len, uint64_t *downloaded)
{
    plait_agent_t *a = c->a;
    char path[4096];
    int rc;
    *out = NULL;
    *out_len = 0;
    *downloaded = 0;
    if ((rc = plait__agent_path_join(path, sizeof(path), a->state_dir, GLOBAL_FILE)) != 0)
        return rc;
    uint8_t *buf = NULL, *held = NULL, held_sha[32];
    size_t len = 0, held_len = 0;
    if (plait_file_read(path, NULL, (size_t)t->adapter_len, &buf, &len) == 0) {
        plait_sha256(buf, len, held_sha);
        if (len == t->adapter_len && plait_ct_memcmp(held_sha, t->adapter_sha256, 32) == 0) {
            *out = buf;
            *out_len = len;
            return 0;
        }
        held = buf; /* an older version: the base of a delta */
        held_len = len;
    }
    plait_clear_error();
    if (t->adapter_len > (uint64_t)SIZE_MAX) {
        free(held);
        return plait_fail(PLAIT_ETOOBIG, "adapter too large");
    }
    len = (size_t)t->adapter_len;
    buf = malloc(len);
    if (!buf) {
        free(held);
        return plait_fail(PLAIT_ENOMEM, "adapter: %zu bytes", len);
    }
    size_t start = plait__agent_partial_load(a, t, buf);
    if (start > 0)
        PLAIT_LOG(PLAIT_LOG_INFO, "agent %s: round %llu: resuming the adapter download at byte %zu",
                  a->device_id, (unsigned long long)t->round_id, start);
    uint32_t accept = 0;
    if (start == 0 && held) accept |= 1u << PLAIT_ADAPTER_DELTA;
    if (start == 0 && t->lora.mode == PLAIT_LORA_MODE_FFA) accept |= 1u << PLAIT_ADAPTER_SEEDED;
    plait_wire_xfer_t x;
    plait_adapter_encoding_t enc;
    uint8_t *ebuf = NULL;
    uint64_t extra = 0;
    rc = transfer(c, t, start, accept, held && accept ? held_sha : NULL, buf, &x, &enc, &ebuf);
    if (rc == 0 && enc != PLAIT_ADAPTER_FULL) {
        uint8_t *img = NULL;
        size_t n = 0;
        extra = x.total;
        rc = plait__agent_rebuild_adapter(a, t, enc, held, held_len, ebuf, (size_t)x.total, &img, &n);
        free(ebuf);
        ebuf = NULL;
        if (rc == 0) {
            free(buf);
            free(held);
            PLAIT_LOG(PLAIT_LOG_INFO, "agent %s: round %llu: adapter v%llu rebuilt from a %s download of %llu bytes",
                      a->device_id, (unsigned long long)t->round_id, (unsigned long long)t->adapter_version,
                      encoding_name(enc), (unsigned long long)extra);
            if (plait__agent_atomic_write(a->state_dir, GLOBAL_FILE, img, n) != 0)
                PLAIT_LOG(PLAIT_LOG_WARN, "agent %s: cannot cache the global adapter: %s", a->device_id,
                          plait_errmsg());
            *out = img;
            *out_len = n;
            *downloaded = extra;
            return 0;
        }
        if (rc == PLAIT_ENOMEM) goto fail;
        PLAIT_LOG(PLAIT_LOG_WARN, "agent %s: round %llu: the %s download was refused (%s); downloading the full adapter",
                  a->device_id, (unsigned long long)t->round_id, encoding_name(enc), plait_errmsg());
        start = 0;
        rc = transfer(c, t, 0, 0, NULL, buf, &x, &enc, &ebuf);
    }
    if (rc != 0) goto fail;
    free(held);
    held = NULL;
    uint8_t h[32];
    plait_sha256(buf, len, h);
    if (plait_ct_memcmp(h, t->adapter_sha256, 32) != 0) {
        plait__agent_partial_remove(a); /* whatever was kept is wrong: start afresh next time */
        free(buf);
        return plait_fail(PLAIT_EMISMATCH,
                          "downloaded adapter does not hash to the task's adapter_sha256");
    }
    plait__agent_partial_remove(a);
    if (plait__agent_atomic_write(a->state_dir, GLOBAL_FILE, buf, len) != 0)
        PLAIT_LOG(PLAIT_LOG_WARN, "agent %s: cannot cache the global adapter: %s", a->device_id,
                  plait_errmsg());
    *out = buf;
    *out_len = len;
    *downloaded = len - start + extra;
    return 0;
fail:
    free(ebuf);
    free(held);
    /* Keep what arrived for a resumed download, unless the bytes themselves were refused. */
    if (rc != PLAIT_EPROTO && enc == PLAIT_ADAPTER_FULL && x.next > start) {
        int keep = rc;
        char msg[256];
        snprintf(msg, sizeof(msg), "%s", plait_errmsg());
        plait__agent_partial_save(a, t, buf, (size_t)x.next);
        plait_fail(keep, "%s", msg);
    }
    free(buf);
    return rc;
}

/* The Decline code for a task this device started and cannot finish. PLAIT_EINVAL is too little
 * local data (or a non-finite result): computed from the device's data, so it goes out as
 * NOT_ELIGIBLE, like a device that is busy or on battery, never as NOT_ENOUGH_DATA (the reason
 * stays in the device's own log). secure: the failure came from a secure round's steps, where a
 * key, share or request that did not verify is a policy refusal. */
plait_decline_code_t plait__agent_work_decline_code(int rc, int secure)
{
    if (rc == PLAIT_EINVAL) return PLAIT_DECLINE_NOT_ELIGIBLE;
    if (rc == PLAIT_ECANCELED) return PLAIT_DECLINE_DEADLINE;
    if (secure && (rc == PLAIT_EAUTH || rc == PLAIT_ETHRESHOLD || rc == PLAIT_EREFUSED)) return PLAIT_DECLINE_POLICY;
    return PLAIT_DECLINE_INCOMPATIBLE_TASK;
}

/* Why a task cannot be taken, checked before anything is downloaded. 0 if it can. */
static int check_task(plait_agent_t *a, const plait_msg_task_t *t)
{
    if (t->lora.mode != PLAIT_LORA_MODE_FFA && t->lora.mode != PLAIT_LORA_MODE_FEDIT &&
        t->lora.mode != PLAIT_LORA_MODE_FEDSA)
        return plait_fail(PLAIT_EINVAL, "unknown LoRA mode %d", (int)t->lora.mode);
    if (t->train.local_steps > a->cfg.max_local_steps)
        return plait_fail(PLAIT_ETOOBIG, "task asks %u local steps, above this device's %u",
                          t->train.local_steps, a->cfg.max_local_steps);
    if ((uint64_t)t->train.batch * t->train.seq_len > a->cfg.max_batch_tokens)
        return plait_fail(PLAIT_ETOOBIG,
                          "task batch %u x seq_len %u is above this device's %u tokens",
                          t->train.batch, t->train.seq_len, a->cfg.max_batch_tokens);
    if (t->train.seq_len > (uint32_t)a->model.cfg.seq_len)
        return plait_fail(PLAIT_EINVAL, "task seq_len %u is above the model's %d", t->train.seq_len,
                          a->model.cfg.seq_len);
    plait_quant_config_t qc = {.bits = t->quant_bits, .range = t->quant_range};
    if (plait_quant_config_validate(&qc) != 0)
        return plait_fail(PLAIT_EINVAL, "task quantization is invalid");
    if (t->dp.mode == PLAIT_DP_LOCAL && !(t->dp.noise_multiplier > 0.0))
        return plait_fail(PLAIT_EINVAL, "local DP without a noise multiplier");
    return 0;
}

/* Upload words in chunks, record the upload, wait for the Ack. */
static int upload(plait__agent_conn_t *c, const plait__agent_pending_t *p, uint64_t deadline,
                  const plait_msg_task_t *t, plait_agent_result_t *res)
{
    uint32_t task_chunk_bytes = t->max_chunk_bytes;
    plait_agent_t *a = c->a;
    int rc = 0;
    /* Chunks of chunk_words words (wire.h's sequencing: index, offset, examples in chunk 0),
     * never more than the task's max_chunk_bytes (the aggregator refuses bigger ones). */
    plait_wire_limits_t lim = a->lim;
    lim.max_chunk_bytes = a->chunk_words * 4;
    if (task_chunk_bytes >= 4 && task_chunk_bytes / 4 * 4 < lim.max_chunk_bytes)
        lim.max_chunk_bytes = task_chunk_bytes / 4 * 4;
    plait_wire_xfer_t x;
    plait_wire_xfer_init(&x, p->round_id, p->n_words, 0);
    plait_msg_t m;
    int r;
    /* Packed at quant_bits when the aggregator reads it (Task.packed_update) and every word
     * fits (a stored update of another quantization goes as words). */
    unsigned bits = t->packed_update && !t->secure_agg ? t->quant_bits : 0;
    for (size_t i = 0; bits != 0 && bits < 32 && i < p->n_words; i++)
        if (p->words[i] >> bits) bits = 0;
    uint8_t *pbuf = bits ? malloc(lim.max_chunk_bytes) : NULL;
    uint64_t sent = 0; /* update bytes (words or packed), framing aside */
    if (bits && !pbuf) return plait_fail(PLAIT_ENOMEM, "update upload: %zu bytes", lim.max_chunk_bytes);
    while ((r = bits ? plait_wire_update_tx_next_packed(&x, &lim, p->words, bits, pbuf, lim.max_chunk_bytes, &m)
                     : plait_wire_update_tx_next(&x, &lim, p->words, &m)) == 1) {
        if (plait__agent_now_ms() >= deadline) {
            free(pbuf);
            return plait_fail(PLAIT_ECANCELED, "round %llu: deadline passed during the upload",
                              (unsigned long long)p->round_id);
        }
        if ((rc = plait__agent_conn_send(c, &m)) != 0) {
            free(pbuf);
            return rc;
        }
        sent += bits ? m.u.update_chunk.packed_len : m.u.update_chunk.n_words * 4;
    }
    free(pbuf);
    if (r < 0) return plait_fail(r, "update upload: %s", plait_errmsg());
    uint32_t index = x.index;
    if (p->round_id > a->state.last_uploaded) {
        plait__agent_state_t st = a->state;
        st.last_uploaded = p->round_id;
        if ((rc = plait__agent_state_save(a->state_dir, &st)) != 0) return rc;
        a->state = st;
    }
    PLAIT_LOG(PLAIT_LOG_INFO, "agent %s: round %llu: uploaded %zu words in %u chunks (%llu bytes, %s)",
              a->device_id, (unsigned long long)p->round_id, p->n_words, index, (unsigned long long)sent,
              bits ? "packed" : "words");
    plait_agent_event_t ev = {.type = PLAIT_AGENT_EV_UPLOADED, .round_id = p->round_id, .bytes = sent};
    plait__agent_emit_ev(a, &ev);
    /* The Ack may wait for the round (an update uploaded during selection is acknowledged
     * when training starts): wait until the task's deadline, at least io_timeout_ms,
     * with keepalives. */
    uint64_t ack_deadline = plait__agent_now_ms() + a->cfg.io_timeout_ms;
    if (deadline > ack_deadline) ack_deadline = deadline;
    for (;;) {
        uint64_t now = plait__agent_now_ms(), until = now + a->cfg.keepalive_ms;
        if (until > ack_deadline) until = ack_deadline;
        rc = plait__agent_conn_recv(c, until, &m);
        if (rc == 0) break;
        if (rc != PLAIT_EAGAIN) return rc;
        if (plait__agent_stopped(a)) return plait_fail(PLAIT_ECANCELED, "agent stopped");
        if (plait__agent_now_ms() >= ack_deadline)
            return plait_fail(PLAIT_EIO, "timed out waiting for the Ack");
        if (plait__agent_now_ms() >= until) {
            plait_msg_t ping;
            plait_msg_init(&ping, PLAIT_MSG_PING);
            ping.u.ping.nonce = ++a->ping_nonce;
            if ((rc = plait__agent_conn_send(c, &ping)) != 0) return rc;
        }
    }
    if (m.type == PLAIT_MSG_COME_BACK_LATER) {
        (void)plait__agent_round_ended(c, &m, p->round_id);
        plait_msg_free(&m);
        return round_ended_outcome(c, p->round_id, res);
    }
    if (m.type == PLAIT_MSG_ERROR) {
        rc = plait__agent_peer_error(c, &m, p->round_id);
        plait_msg_free(&m);
        if (rc == PLAIT_ESTALE) { /* the round is closed or was already counted: the words are
                                     useless now */
            int r2 = plait__agent_pending_remove(a->state_dir);
            (void)r2;
        }
        return rc;
    }
    if (m.type != PLAIT_MSG_ACK || m.u.ack.round_id != p->round_id ||
        m.u.ack.elements != p->n_words) {
        rc = m.type == PLAIT_MSG_ACK
                 ? plait_fail(PLAIT_EPROTO, "Ack for round %llu / %llu words, expected %llu / %zu",
                              (unsigned long long)m.u.ack.round_id,
                              (unsigned long long)m.u.ack.elements, (unsigned long long)p->round_id,
                              p->n_words)
                 : plait__agent_unexpected(&m, "the Ack");
        plait_msg_free(&m);
        return rc;
    }
    plait_msg_free(&m);
    plait__agent_state_t st = a->state;
    st.last_acked = p->round_id;
    if (st.last_uploaded < p->round_id) st.last_uploaded = p->round_id;
    if ((rc = plait__agent_state_save(a->state_dir, &st)) != 0) return rc;
    a->state = st;
    if ((rc = plait__agent_pending_remove(a->state_dir)) != 0) return rc;
    a->rounds_acked++;
    res->outcome = PLAIT_AGENT_OUT_ACKED;
    res->round_id = p->round_id;
    res->num_examples = p->num_examples;
    PLAIT_LOG(PLAIT_LOG_INFO, "agent %s: round %llu: acknowledged", a->device_id,
              (unsigned long long)p->round_id);
    plait__agent_emit(a, PLAIT_AGENT_EV_ACKED, p->round_id, 0);
    return 0;
}

/* Decline the round: the aggregator gets only a code of the fixed DeclineCode list
 * (protocol.md); why stays in this device's own log. */
static int decline(plait__agent_conn_t *c, plait_agent_result_t *res, uint64_t round, int code,
                   plait_decline_code_t wire_code, const char *why)
{
    plait_agent_t *a = c->a;
    PLAIT_LOG(PLAIT_LOG_WARN, "agent %s: round %llu: declined (%s, sent as %s): %s", a->device_id,
              (unsigned long long)round, plait_err_name(code), plait_decline_code_name((int)wire_code),
              why);
    if (!c->peer_error) {
        plait_msg_t m;
        plait_msg_init(&m, PLAIT_MSG_DECLINE);
        m.u.decline.round_id = round;
        m.u.decline.code = wire_code;
        int rc = plait__agent_conn_send(c, &m); /* we are leaving anyway */
        (void)rc;
    }
    res->outcome = PLAIT_AGENT_OUT_DECLINED;
    res->round_id = round;
    res->declined_rc = code;
    plait__agent_emit(a, PLAIT_AGENT_EV_DECLINED, round, code);
    return 0;
}

/* ---- secure aggregation (the conversation is in agent_secagg.c) ---- */

static int sa_send(void *conn, const plait_msg_t *m) { return plait__agent_conn_send(conn, m); }
static int sa_recv(void *conn, uint64_t deadline, plait_msg_t *m)
{
    return plait__agent_conn_recv(conn, deadline, m);
}
static int sa_peer_error(void *conn, const plait_msg_t *m, uint64_t round)
{
    return plait__agent_peer_error(conn, m, round);
}

/* A round with secure_agg: keys and shares, training, masked upload, unmask (agent_secagg.c). */
static int secure_task(plait__agent_conn_t *c, const plait_msg_task_t *t, uint64_t deadline,
                       plait_agent_result_t *res)
{
    plait_agent_t *a = c->a;
    uint64_t round = t->round_id;
    char *ca = NULL, *crt = NULL, *key = NULL;
    plait__agent_sa_t *sa = NULL;
    plait__agent_pending_t p;
    memset(&p, 0, sizeof(p));
    char why[200];
    int rc;
    if ((rc = plait__agent_load_pem(a->ca_path, "CA certificate", &ca)) != 0 ||
        (rc = plait__agent_load_pem(a->cert_path, "device certificate", &crt)) != 0 ||
        (rc = plait__agent_load_pem(a->key_path, "device key", &key)) != 0)
        goto out;
    plait__agent_sa_env_t env = {
        c,  sa_send, sa_recv, sa_peer_error, &a->drbg,           a->device_id,
        ca, crt,     key,     &a->lim,       a->chunk_words * 4, a->cfg.keepalive_ms};
    rc = plait__agent_sa_begin(&env, t, deadline, &sa);
    plait_pki_free_pem(key); /* the round keys are signed: the device key is not needed any more */
    key = NULL;
    if (rc == 0)
        rc = t->kind == PLAIT_TASK_EVALUATE ? plait__agent_evaluate(c, t, deadline, &p, res)
                                            : plait__agent_compute_update(c, t, deadline, &p, res);
    /* distributed DP: the noise share goes in after quantization, before masking */
    if (rc == 0)
        rc = plait__agent_sa_ddg(t, &a->drbg, p.words, p.n_words - 1 - (t->clip_bit ? 1 : 0));
    if (rc == 0 && t->dp.mode == PLAIT_DP_DISTRIBUTED)
        PLAIT_LOG(PLAIT_LOG_INFO, "agent %s: round %llu: distributed DP noise share added (discrete Gaussian)",
                  a->device_id, (unsigned long long)round);
    if (rc == 0) {
        int acked = 0;
        rc = plait__agent_sa_finish(sa, &env, p.words, p.n_words, deadline, &acked);
        if (acked) {
            int rc2;
            plait__agent_state_t st = a->state;
            st.last_uploaded = st.last_acked = round;
            if ((rc2 = plait__agent_state_save(a->state_dir, &st)) == 0) a->state = st;
            a->rounds_acked++;
            res->outcome = PLAIT_AGENT_OUT_ACKED;
            res->round_id = round;
            res->num_examples = p.num_examples;
            PLAIT_LOG(PLAIT_LOG_INFO, "agent %s: round %llu: masked update acknowledged", a->device_id,
                      (unsigned long long)round);
            plait__agent_emit(a, PLAIT_AGENT_EV_ACKED, round, 0);
            if (rc == 0) rc = rc2;
        }
        goto out;
    }
    if (rc != 0 && c->got_cbl) { /* the aggregator ended the round for this device: come back, as in plain rounds */
        rc = round_ended_outcome(c, round, res);
        goto out;
    }
    if (c->peer_error || rc == PLAIT_EIO || rc == PLAIT_ENOMEM ||
        (rc == PLAIT_ECANCELED && plait__agent_stopped(a)))
        goto out;
    /* This device leaves the round (a key or share did not verify, too few neighbours, the task
     * cannot be done here): say so and decline. */
    snprintf(why, sizeof(why), "%s", plait_errmsg());
    {
        plait_decline_code_t wc = plait__agent_work_decline_code(rc, 1);
        rc = decline(c, res, round, rc == PLAIT_EINVAL ? PLAIT_ECANCELED : rc, wc, why);
    }
out:
    plait__agent_sa_free(sa);
    plait__agent_pending_free(&p);
    plait_pki_free_pem(ca);
    plait_pki_free_pem(crt);
    plait_pki_free_pem(key);
    return rc;
}

static int do_task(plait__agent_conn_t *c, const plait_msg_task_t *t, plait_agent_result_t *res)
{
    plait_agent_t *a = c->a;
    uint64_t round = t->round_id;
    uint64_t deadline = plait__agent_now_ms() + (uint64_t)t->deadline_s * 1000u;
    plait__agent_pending_t p;
    memset(&p, 0, sizeof(p));
    int rc = plait__agent_pending_load(a->state_dir, &p);
    if (rc == PLAIT_EPROTO) { /* a torn file cannot be resent; it was never fully written, so it was
                                 never sent */
        PLAIT_LOG(PLAIT_LOG_WARN, "agent %s: discarding a damaged pending update", a->device_id);
        rc = plait__agent_pending_remove(a->state_dir);
    } else if (rc == PLAIT_ENOENT) {
        rc = 0;
        plait_clear_error();
    }
    if (rc != 0) return rc;
    plait__task_decision_t d = plait__agent_task_decision(&a->state, p.round_id, round);
    char why[160];
    if (d == PLAIT__TASK_STALE) {
        plait__agent_pending_free(&p);
        snprintf(why, sizeof(why),
                 "round %llu was already uploaded by this device (last acknowledged %llu)",
                 (unsigned long long)round, (unsigned long long)a->state.last_acked);
        return decline(c, res, round, PLAIT_ESTALE, PLAIT_DECLINE_ALREADY_DONE, why);
    }
    if (d == PLAIT__TASK_RESEND && t->secure_agg) {
        /* A stored plain update is never sent into a secure round. */
        plait__agent_pending_free(&p);
        rc = plait__agent_pending_remove(a->state_dir);
        (void)rc;
        return decline(c, res, round, PLAIT_EREFUSED, PLAIT_DECLINE_POLICY,
                       "a plain update of this round is stored; it is not sent under secure aggregation");
    }
    if (d == PLAIT__TASK_RESEND) {
        if (p.n_words != t->update_elements) {
            plait__agent_pending_free(&p);
            rc = plait__agent_pending_remove(a->state_dir);
            (void)rc;
            return decline(c, res, round, PLAIT_EMISMATCH, PLAIT_DECLINE_INCOMPATIBLE_TASK,
                           "the stored update does not fit the task; not recomputing it");
        }
        PLAIT_LOG(PLAIT_LOG_INFO,
                  "agent %s: round %llu: re-sending the stored update (not retraining)",
                  a->device_id, (unsigned long long)round);
        plait__agent_emit(a, PLAIT_AGENT_EV_TASK, round, 0);
        rc = upload(c, &p, deadline, t, res);
        plait__agent_pending_free(&p);
        return rc;
    }
    if (p.round_id != 0) { /* an older round's words: that round is over */
        plait__agent_pending_free(&p);
        if ((rc = plait__agent_pending_remove(a->state_dir)) != 0) return rc;
    }
    if ((rc = plait__agent_sa_policy(&a->cfg, t)) != 0)
        return decline(c, res, round, rc, PLAIT_DECLINE_POLICY, plait_errmsg());
    if ((rc = check_task(a, t)) != 0)
        return decline(c, res, round, rc, PLAIT_DECLINE_INCOMPATIBLE_TASK, plait_errmsg());
    if (a->cfg.eligible && !a->cfg.eligible(a->cfg.eligible_ud))
        return decline(c, res, round, PLAIT_ECANCELED, PLAIT_DECLINE_NOT_ELIGIBLE,
                       "the device is no longer eligible (not idle or not charging)");
    /* Too little text: declined here, where an ineligible device declines, not after the
     * download (when a device declined would tell the aggregator it was the data). */
    if ((rc = plait__agent_data_check(a, t)) == PLAIT_EINVAL)
        return decline(c, res, round, PLAIT_ECANCELED, PLAIT_DECLINE_NOT_ELIGIBLE, plait_errmsg());
    if (rc != 0) return rc;
    char prox_txt[40] = "";
    if (t->train.prox_mu > 0) snprintf(prox_txt, sizeof(prox_txt), ", fedprox mu %g", t->train.prox_mu);
    PLAIT_LOG(PLAIT_LOG_INFO,
              "agent %s: round %llu: task (adapter v%llu, %s rank %u, %u steps, B=%u T=%u, lr %g%s, "
              "clip %g, %u bits, "
              "dp %s, deadline %u s)",
              a->device_id, (unsigned long long)round, (unsigned long long)t->adapter_version,
              plait_lora_mode_name(t->lora.mode), t->lora.rank, t->train.local_steps,
              t->train.batch, t->train.seq_len, t->train.lr, prox_txt, t->clip_norm, t->quant_bits,
              t->dp.mode == PLAIT_DP_LOCAL     ? "local"
              : t->dp.mode == PLAIT_DP_CENTRAL ? "central"
              : t->dp.mode == PLAIT_DP_DISTRIBUTED ? "distributed"
                                               : "none",
              t->deadline_s);
    plait__agent_emit(a, PLAIT_AGENT_EV_TASK, round, 0);
    if (t->secure_agg) return secure_task(c, t, deadline, res);
    rc = t->kind == PLAIT_TASK_EVALUATE ? plait__agent_evaluate(c, t, deadline, &p, res)
                                        : plait__agent_compute_update(c, t, deadline, &p, res);
    if (rc != 0 && c->got_cbl) return round_ended_outcome(c, round, res);
    if (rc == PLAIT_EMISMATCH || rc == PLAIT_EPROTO || rc == PLAIT_ETOOBIG ||
        (rc == PLAIT_EINVAL && !plait__agent_stopped(a)) ||
        (rc == PLAIT_ECANCELED && !plait__agent_stopped(a))) {
        /* The task cannot be done here (adapter for another model or shape, too little data,
         * deadline): say so. */
        snprintf(why, sizeof(why), "%s", plait_errmsg());
        int code = rc == PLAIT_EINVAL ? PLAIT_ECANCELED : rc;
        plait_decline_code_t wc = plait__agent_work_decline_code(rc, 0);
        return decline(c, res, round, code, wc, why);
    }
    if (rc != 0) return rc;
    /* Crash safety: the words exist on disk before the first chunk leaves. */
    if ((rc = plait__agent_pending_save(a->state_dir, &p)) != 0) {
        plait__agent_pending_free(&p);
        return rc;
    }
    rc = upload(c, &p, deadline, t, res);
    plait__agent_pending_free(&p);
    return rc;
}

/* ------------------------------------------------------------ run / run_once */

static const char *retry_reason_name(plait_retry_reason_t r)
{
    switch (r) {
    case PLAIT_RETRY_NO_ROUND:
        return "no round";
    case PLAIT_RETRY_COHORT_FULL:
        return "cohort full";
    case PLAIT_RETRY_PACE:
        return "pace steering";
    case PLAIT_RETRY_BUSY:
        return "aggregator busy";
    case PLAIT_RETRY_SHUTTING_DOWN:
        return "aggregator shutting down";
    case PLAIT_RETRY_INCOMPATIBLE:
        return "incompatible model or capabilities";
    case PLAIT_RETRY_ROUND_FAILED:
        return "round failed";
    case PLAIT_RETRY_COMMIT_FAILED:
        return "round commit failed";
    case PLAIT_RETRY_NOT_SAMPLED:
        return "not sampled this round";
    case PLAIT_RETRY_SECAGG_CLOSED:
        return "secure-aggregation key exchange closed";
    }
    return "unknown reason";
}

int plait__agent_run_once(plait_agent_t *a, plait_agent_result_t *res_out)
{
    if (!a) return plait_fail(PLAIT_EINVAL, "agent: NULL");
    plait_agent_result_t res;
    memset(&res, 0, sizeof(res));
    if (plait__agent_stopped(a)) return plait_fail(PLAIT_ECANCELED, "agent stopped");
    int64_t n_train = 0;
    int rc = plait__agent_check_eligible(a, &n_train);
    if (rc != 0) {
        a->fatal = 1; /* retrying will not bring the store back */
        return plait__agent_store_fail(a, rc);
    }
    a->fatal = 0;
    if (n_train < a->cfg.min_records || (a->cfg.eligible && !a->cfg.eligible(a->cfg.eligible_ud))) {
        if (n_train < a->cfg.min_records)
            PLAIT_LOG(PLAIT_LOG_INFO,
                      "agent %s: not eligible: %lld training records, fewer than %lld",
                      a->device_id, (long long)n_train, (long long)a->cfg.min_records);
        else
            PLAIT_LOG(PLAIT_LOG_INFO, "agent %s: not eligible now (the app says not idle/charging)",
                      a->device_id);
        res.outcome = PLAIT_AGENT_OUT_NOT_ELIGIBLE;
        plait__agent_emit(a, PLAIT_AGENT_EV_NOT_ELIGIBLE, 0, 0);
        a->last = res;
        if (res_out) *res_out = res;
        return 0;
    }
    plait__agent_conn_t c;
    plait__agent_conn_init(&c, a);
    plait_msg_t m;
    plait_msg_init(&m, PLAIT_MSG_HELLO);
    if ((rc = plait__agent_conn_open(&c)) != 0) goto out;
    PLAIT_LOG(PLAIT_LOG_INFO, "agent %s: connected to %s:%d (%s)", a->device_id, a->host,
              a->cfg.server_port, plait_tls_ciphersuite(c.tls));
    plait_msg_hello_t *h = &m.u.hello;
    snprintf(h->client_version, sizeof(h->client_version), "%s", CLIENT_VERSION);
    memcpy(h->base_model_sha256, a->model.sha256, 32);
    h->capabilities = AGENT_CAPS;
    h->has_last_round = a->state.last_acked != 0;
    h->last_round_completed = a->state.last_acked;
    if ((rc = plait__agent_conn_send(&c, &m)) != 0) goto out;
    plait__agent_emit(a, PLAIT_AGENT_EV_CONNECTED, 0, 0);
    if ((rc = plait__agent_conn_expect(&c, plait__agent_now_ms() + a->cfg.io_timeout_ms, &m,
                                       "a task or come-back-later")) != 0)
        goto out;
    switch (m.type) {
    case PLAIT_MSG_COME_BACK_LATER:
        res.outcome = PLAIT_AGENT_OUT_COME_BACK;
        res.retry_ms = m.u.come_back_later.retry_ms;
        PLAIT_LOG(PLAIT_LOG_INFO, "agent %s: come back in %u ms (%s)", a->device_id, res.retry_ms,
                  retry_reason_name(m.u.come_back_later.reason));
        {
            plait_agent_event_t ev = {.type = PLAIT_AGENT_EV_COME_BACK, .delay_ms = res.retry_ms};
            plait__agent_emit_ev(a, &ev);
        }
        break;
    case PLAIT_MSG_TASK:
        rc = do_task(&c, &m.u.task, &res);
        break;
    case PLAIT_MSG_ERROR:
        rc = plait__agent_peer_error(&c, &m, 0);
        break;
    default:
        rc = plait__agent_unexpected(&m, "a task or come-back-later");
        break;
    }
    plait_msg_free(&m);
out:
    if (rc == PLAIT_EPROTO && !c.peer_error && c.tls && plait_tls_established(c.tls))
        plait__agent_send_error(&c, PLAIT_EPROTO,
                                "protocol error"); /* the detail stays in this device's log */
    plait__agent_conn_close(&c);
    a->last = res;
    if (res_out) *res_out = res;
    return rc;
}

static double uniform(plait_agent_t *a)
{
    return plait_rng_uniform(&a->jitter);
}

int plait__agent_run_loop(plait_agent_t *a)
{
    if (!a) return plait_fail(PLAIT_EINVAL, "agent: NULL");
    uint64_t start = plait__agent_now_ms();
    uint32_t attempt = 0, acked = 0;
    for (;;) {
        if (plait__agent_stopped(a)) return 0;
        if (a->cfg.max_runtime_ms && plait__agent_now_ms() - start >= a->cfg.max_runtime_ms) {
            PLAIT_LOG(PLAIT_LOG_INFO, "agent %s: run time limit reached", a->device_id);
            return 0;
        }
        plait_agent_event_t ev = {.type = PLAIT_AGENT_EV_CONNECTING, .attempt = attempt};
        plait__agent_emit_ev(a, &ev);
        plait_agent_result_t r;
        memset(&r, 0, sizeof(r));
        int rc = plait_agent_run_once(a, &r);
        if (plait__agent_stopped(a)) return 0;
        uint64_t delay;
        if (rc != 0) {
            PLAIT_LOG(PLAIT_LOG_WARN, "agent %s: attempt %u failed: %s (%s)", a->device_id,
                      attempt + 1, plait_errmsg(), plait_err_name(rc));
            plait__agent_emit(a, PLAIT_AGENT_EV_ERROR, r.round_id, rc);
            if (a->fatal) return rc; /* a local failure that retrying cannot fix */
            attempt++;
            if (!a->cfg.daemon && attempt >= a->cfg.max_attempts) return rc;
            delay = plait_agent_backoff_ms(&a->cfg, attempt - 1, uniform(a));
        } else {
            attempt = 0;
            if (!a->cfg.daemon) return 0;
            switch (r.outcome) {
            case PLAIT_AGENT_OUT_ACKED:
                acked++;
                if (a->cfg.max_rounds && acked >= a->cfg.max_rounds) {
                    PLAIT_LOG(PLAIT_LOG_INFO, "agent %s: %u rounds done", a->device_id, acked);
                    return 0;
                }
                delay = plait_agent_come_back_ms(&a->cfg, a->cfg.rejoin_ms, uniform(a));
                break;
            case PLAIT_AGENT_OUT_COME_BACK:
                delay = plait_agent_come_back_ms(&a->cfg, r.retry_ms, uniform(a));
                break;
            case PLAIT_AGENT_OUT_NOT_ELIGIBLE:
                delay = a->cfg.not_eligible_ms;
                break;
            default:
                delay = plait_agent_come_back_ms(&a->cfg, a->cfg.rejoin_ms, uniform(a));
                break;
            }
        }
        if (a->cfg.max_runtime_ms) {
            uint64_t used = plait__agent_now_ms() - start;
            uint64_t left = used < a->cfg.max_runtime_ms ? a->cfg.max_runtime_ms - used : 0;
            if (delay > left) delay = left;
        }
        plait_agent_event_t sl = {
            .type = PLAIT_AGENT_EV_SLEEP, .attempt = attempt, .delay_ms = delay};
        plait__agent_emit_ev(a, &sl);
        PLAIT_LOG(PLAIT_LOG_DEBUG, "agent %s: next attempt in %llu ms", a->device_id,
                  (unsigned long long)delay);
        if (plait__agent_sleep_ms(a, delay) != 0) return 0;
    }
}
