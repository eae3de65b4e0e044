/*
 * agent_int.h: internals shared by the agent's files (client/agent*.c: the
 * round conversation in agent.c, setup, transport, training, state files,
 * secure aggregation, privacy) and with their unit tests
 * (tests/unit/check_agent*.c): the agent object and its connection, the
 * update pipeline, the crash-safe state files, and the decision taken on an
 * offered round. Nothing here is public API (client.h is).
 */
#ifndef PLAIT_AGENT_INT_H
#define PLAIT_AGENT_INT_H

#include "plait/client.h"
#include "plait/data.h"
#include "plait/tensor.h"
#include "plait/crypto.h"
#include "plait/wire.h"
#include "plait/lora.h"
#include "plait/rng.h"
#include "plait/update.h"
#include "plait/model.h"
#include "plait/pki.h"
#include "plait/tensor.h"
#include "plait/tls.h"
#include "plait/tok.h"

#include <stdatomic.h>

/* The files of the agent's state directory (docs/client-api.md). */
#define STATE_FILE "state"
#define PENDING_FILE "pending.upd"
#define GLOBAL_FILE "global.safetensors"
#define PERSONAL_FILE "personal.safetensors"
#define PARTIAL_FILE "global.part"
#define SERVE_FILE "serve.safetensors"   /* the adapter inference uses (agent_serve.c): slot 0 */
#define SERVE_FILE_B "serve-b.safetensors" /* slot 1; serve.txt names the slot in use */
#define SERVE_INFO_FILE "serve.txt"      /* which one and why */
#define SERVE_BIAS_FILE "serve_bias.bin" /* slot 0's output bias, when serve.txt says it serves one */
#define SERVE_BIAS_FILE_B "serve_bias-b.bin" /* slot 1's */
#define SERVE_KNN_FILE "serve_knn.bin"   /* slot 0's kNN memory (knn.h), when serve.txt says it serves one */
#define SERVE_KNN_FILE_B "serve_knn-b.bin" /* slot 1's */
#define SERVE_KNN_MAX_BYTES ((size_t)64 << 20) /* a memory file larger than this is refused unread */

/** Overwrite path with zeros, sync, unlink (agent_privacy.c): 0 when removed, 1 when absent; a path that is
 *  neither a regular file nor a link is refused (PLAIT_EIO). */
int plait__agent_wipe_file(const char *path) PLAIT_WUR;

/* ---- the update pipeline ------------------------------------------------ */

/**
 * The device side of docs/privacy.md §2, on one adapter pair:
 *     Δ = local − global over mode's span → clip to clip_norm → [+ N(0, noise_stddev²)]
 *       → × weight → quantize (qc) into words[0, len) → weight word words[len]
 *       [→ clip-bit word words[len + 1]: 1 if the pre-clip norm was <= clip_norm, else 0,
 *          encoded as a weight word (adaptive clipping; the norm itself never leaves)]
 * The float copy of Δ is wiped before returning, on every path.
 * \param global, local  set-up adapters of the same shape.
 * \param noise_stddev   0 for none; else the local DP stddev (z·S).
 * \param weight         in [0, 1].
 * \param rng            stochastic rounding and noise stream.
 * \param n_words        span length + 1, or span length + 2 to append the clip bit.
 * \param ci             OUT, may be NULL: the clip report (pre-clip norm).
 * \return 0; PLAIT_EINVAL (shapes, mode, bounds, a non-finite value: words zeroed);
 *         PLAIT_EMISMATCH (n_words is not span + 1 or + 2); PLAIT_ENOMEM.
 */
int plait__agent_make_update(const plait_lora_t *global, const plait_lora_t *local,
                             plait_lora_mode_t mode, double clip_norm, double noise_stddev,
                             const plait_quant_config_t *qc, double weight, plait_rng_t *rng,
                             uint32_t *words /* OUT */, size_t n_words,
                             plait_clip_info_t *ci /* OUT, may be NULL */) PLAIT_WUR;

/* ---- the serving adapter (agent_serve.c) --------------------------------- */

struct plait_personal_result_s;
/**
 * \brief Choose the adapter this device serves (personal.h: validation tail
 *        of train, early-stopped fine-tuning from ref, the choice among ref,
 *        personal and their mix) and write SERVE_FILE and SERVE_INFO_FILE
 *        into state_dir atomically. Trains on its own trainer (B, T, lr,
 *        train_a, on pool or `threads` threads) for at most `steps` steps;
 *        stop (may be NULL) is polled before each step (personal.h).
 *        The adapter goes to the slot serve.txt does not name, then
 *        serve.txt is replaced: a crash between the two leaves the previous
 *        pair whole.
 * \return 0 or an error (the files are then left as they were).
 */
int plait__agent_serve_choose(const plait_model_t *m, const plait_lora_t *ref, const plait_corpus_t *train,
                              const char *state_dir, int B, int T, double lr, int train_a, int steps,
                              uint64_t seed, plait_pool_t *pool, int threads, int base_bf16, uint64_t round,
                              int (*stop)(void *ud), void *stop_ud, struct plait_personal_result_s *res) PLAIT_WUR;

/* ---- crash-safe state (files in the state directory) -------------------- */

/** Contents of DIR/state. */
typedef struct {
    uint64_t last_uploaded; /**< last round whose every update chunk was sent (0: none) */
    uint64_t last_acked;    /**< last round the aggregator acknowledged (0: none) */
} plait__agent_state_t;

/**
 * \brief Write buf to dir/name atomically: dir/.name.tmp (0600), fsync,
 *        rename over name, fsync dir. A crash leaves the old or the new file.
 * \return 0 or PLAIT_EIO.
 */
int plait__agent_atomic_write(const char *dir, const char *name, const uint8_t *buf,
                              size_t len) PLAIT_WUR;

/** \brief Read DIR/state; a missing file gives zeros. \return 0, PLAIT_EPROTO (malformed),
 * PLAIT_EIO. */
int plait__agent_state_load(const char *dir, plait__agent_state_t *st /* OUT */) PLAIT_WUR;
/** \brief Write DIR/state atomically. \return 0 or PLAIT_EIO. */
int plait__agent_state_save(const char *dir, const plait__agent_state_t *st) PLAIT_WUR;

/** A quantized update waiting to be (re)sent: DIR/pending.upd. */
typedef struct {
    uint64_t round_id;
    uint64_t adapter_version;
    uint64_t num_examples;
    uint32_t *words; /**< owned (malloc) */
    size_t n_words;
} plait__agent_pending_t;

/** \brief Write DIR/pending.upd atomically (magic, version, fields, words, SHA-256). \return 0,
 * PLAIT_EIO, PLAIT_ENOMEM. */
int plait__agent_pending_save(const char *dir, const plait__agent_pending_t *p) PLAIT_WUR;
/**
 * \brief Read DIR/pending.upd, checking magic, version, sizes and the hash.
 * \param p OUT: words owned, free with plait__agent_pending_free().
 * \return 0, PLAIT_ENOENT (none), PLAIT_EPROTO (torn or foreign file), PLAIT_EIO, PLAIT_ENOMEM.
 */
int plait__agent_pending_load(const char *dir, plait__agent_pending_t *p /* OUT */) PLAIT_WUR;
/** \brief Delete DIR/pending.upd (missing is fine). \return 0 or PLAIT_EIO. */
int plait__agent_pending_remove(const char *dir) PLAIT_WUR;
/** \brief Free the words; NULL-safe, twice-safe. */
void plait__agent_pending_free(plait__agent_pending_t *p);

/** What to do with an offered round. */
typedef enum {
    PLAIT__TASK_TRAIN = 0,  /**< new round: download, train, upload */
    PLAIT__TASK_RESEND = 1, /**< the stored update is for this round: send the same words again */
    PLAIT__TASK_STALE = 2   /**< already acknowledged or older than an uploaded round: decline */
} plait__task_decision_t;

/**
 * \brief The no-double-upload rule. round <= last_acked, or round <
 *        max(last_uploaded, pending round): STALE. round == pending round:
 *        RESEND. Otherwise TRAIN (round == last_uploaded without a stored
 *        update is STALE: its words are gone, and new ones must not be sent).
 * \param pending_round 0 when no update is stored.
 */
plait__task_decision_t plait__agent_task_decision(const plait__agent_state_t *st,
                                                  uint64_t pending_round, uint64_t round_id);

/* ---- the agent object (agent_setup.c creates it) ----------------------- */

/** The agent (client.h's opaque plait_agent_t). */
struct plait_agent_s {
    plait_agent_config_t cfg; /* strings point at the owned copies below */
    char *host, *name, *ca_path, *cert_path, *key_path, *model_path, *tok_path, *store_path,
        *state_dir;
    plait_model_t model;
    plait_tok_t tok;
    plait_pool_t *pool;
    plait_tls_config_t *tls;
    char device_id[PLAIT_PKI_ID_MAX + 1];
    plait_wire_limits_t lim;
    size_t chunk_words;
    plait__agent_state_t state;
    plait_drbg_t drbg;  /* system randomness (always seeded: secure-aggregation keys) */
    plait_rng_t jitter; /* jitter of delays (not secret, but seeded from the DRBG anyway) */
    int wake[2];        /* self-pipe: stop and worker completion */
    atomic_int stop;
    int fatal;          /* the last failure cannot be fixed by retrying (the store is unusable) */
    plait_agent_result_t last;
    uint32_t rounds_acked;
    uint64_t ping_nonce;
};

/** One connection to the aggregator (agent_net.c); lives for one conversation. */
typedef struct {
    plait_agent_t *a;
    int fd;
    plait_tls_t *tls;
    uint8_t *in; /* decrypted bytes not yet parsed into frames */
    size_t in_len, in_cap;
    int peer_error; /* the aggregator sent an Error (and closes) */
    int got_cbl;    /* the aggregator ended our round with a ComeBackLater (and closes) */
    uint32_t cbl_ms;
    plait_retry_reason_t cbl_reason;
} plait__agent_conn_t;

/* ---- agent_setup.c ------------------------------------------------------ */

/** \brief Read a PEM file; errors name what (e.g. "device key") and the path. */
int plait__agent_load_pem(const char *path, const char *what, char **out /* OUT */) PLAIT_WUR;
/** \brief "store PATH: <why>" for rc, without repeating the store's own prefix. \return rc. */
int plait__agent_store_fail(const plait_agent_t *a, int rc);
/** \brief Open the device store read-only and count its training records. \return 0 or the
 * store's error. */
int plait__agent_check_eligible(plait_agent_t *a, int64_t *n_train /* OUT */) PLAIT_WUR;

/* ---- agent_net.c: clock, waits, transport ------------------------------- */

/** \brief CLOCK_MONOTONIC in milliseconds. */
uint64_t plait__agent_now_ms(void);
/** \brief 1 once plait_agent_stop() was called (until plait_agent_reset_stop()). */
int plait__agent_stopped(plait_agent_t *a);
/** \brief Empty the wake pipe (stop and worker-completion bytes). */
void plait__agent_drain_wake(plait_agent_t *a);
/** \brief Sleep up to ms, interruptible by stop. \return 0 or PLAIT_ECANCELED. */
int plait__agent_sleep_ms(plait_agent_t *a, uint64_t ms);
/** \brief A closed connection of agent a (conn_close is then safe). */
void plait__agent_conn_init(plait__agent_conn_t *c, plait_agent_t *a);
/** \brief TCP connect to the server (every address, in order) and the TLS handshake, within
 * connect_timeout_ms. \return 0, PLAIT_EIO (naming the step), PLAIT_ECANCELED, TLS errors. */
int plait__agent_conn_open(plait__agent_conn_t *c) PLAIT_WUR;
/** \brief Encode and send one message within io_timeout_ms. \return 0 or an error. */
int plait__agent_conn_send(plait__agent_conn_t *c, const plait_msg_t *m) PLAIT_WUR;
/** \brief Next message, answering Pings and skipping Pongs. \return 0 (msg to free),
 * PLAIT_EAGAIN (deadline passed or a wake-up: no message), or an error. */
int plait__agent_conn_recv(plait__agent_conn_t *c, uint64_t deadline, plait_msg_t *msg /* OUT */) PLAIT_WUR;
/** \brief Wait for the next message until the deadline. \return 0, or an error (timeout:
 * PLAIT_EIO "timed out waiting for <what>"). */
int plait__agent_conn_expect(plait__agent_conn_t *c, uint64_t deadline, plait_msg_t *msg /* OUT */,
                             const char *what) PLAIT_WUR;
/** \brief close_notify when established (best effort, 1 s), then free. */
void plait__agent_conn_close(plait__agent_conn_t *c);
/** \brief Send an Error (failures ignored: the caller is leaving). */
void plait__agent_send_error(plait__agent_conn_t *c, int code, const char *text);

/* ---- agent.c: events and the aggregator's answers ------------------------ */

/** \brief Report an event to cfg.on_event, if set. */
void plait__agent_emit(plait_agent_t *a, plait_agent_event_type_t type, uint64_t round, int rc);
void plait__agent_emit_ev(plait_agent_t *a, const plait_agent_event_t *ev);
/** \brief An Error from the aggregator: logged, and returned as our code (unknown: PLAIT_EPROTO). */
int plait__agent_peer_error(plait__agent_conn_t *c, const plait_msg_t *m, uint64_t round);
/** \brief PLAIT_EPROTO: the aggregator sent m while the agent waited for `waiting`. */
int plait__agent_unexpected(const plait_msg_t *m, const char *waiting);
/* A worker thread's start: the agent's log sink for this thread (cfg.on_log), and the store's
 * split as a corpus (initialized even on failure: plait_corpus_free it). agent_train.c. */
int plait__agent_worker_corpus(plait_agent_t *a, plait_store_split_t split, plait_corpus_t *corpus);
/*
 * While a worker thread runs (until *done): send a Ping every keepalive_ms,
 * call tick(ud) about once a second (tick may be NULL), and end at the
 * deadline (PLAIT_ECANCELED "deadline passed during WHAT") or at any message
 * from the aggregator (an Error, a ComeBackLater: the round ended, anything
 * else: unexpected). Returns 0 once *done is set. agent_train.c.
 */
int plait__agent_keepalive_while(plait__agent_conn_t *c, atomic_int *done, uint64_t round, uint64_t deadline,
                                 const char *what, void (*tick)(void *ud), void *ud);
/** \brief A ComeBackLater inside a round: remembered on c. \return PLAIT_ECANCELED. */
int plait__agent_round_ended(plait__agent_conn_t *c, const plait_msg_t *m, uint64_t round);
/** \brief The task's global adapter: the cached DIR/global.safetensors when its hash matches,
 * else downloaded (resuming DIR/global.part) and cached. *out is freed by the caller;
 * *downloaded is the bytes that came over the wire. */
int plait__agent_get_adapter(plait__agent_conn_t *c, const plait_msg_task_t *t, uint8_t **out,
                             size_t *out_len, uint64_t *downloaded) PLAIT_WUR;

/* ---- agent_dl.c ---------------------------------------------------------- */

/** \brief The task's adapter from a compact encoding: DELTA applied to base (the held adapter
 * file, base_len bytes), or SEEDED (the B span; A from the task's a_seed). *out (t->adapter_len
 * bytes) hashes to the task's adapter_sha256. \return 0; PLAIT_EPROTO (a malformed encoding or
 * base, naming what); PLAIT_EMISMATCH (rebuilt, but another adapter); PLAIT_ENOMEM. */
int plait__agent_rebuild_adapter(plait_agent_t *a, const plait_msg_task_t *t, plait_adapter_encoding_t enc,
                                 const uint8_t *base, size_t base_len, const uint8_t *data, size_t len,
                                 uint8_t **out /* OUT */, size_t *out_len /* OUT */) PLAIT_WUR;

/* ---- agent_train.c ------------------------------------------------------- */

/** \brief The round's update: adapter, training (keeping c alive), pipeline. Fills p (words
 * owned; freed on error). Errors: the adapter's, the trainer's, PLAIT_ECANCELED (deadline or
 * stop), PLAIT_EMISMATCH (the adapter or span does not fit the task). */
int plait__agent_compute_update(plait__agent_conn_t *c, const plait_msg_task_t *t,
                                uint64_t deadline, plait__agent_pending_t *p /* OUT */,
                                plait_agent_result_t *res) PLAIT_WUR;

/* ---- agent_eval.c: federated evaluation ----------------------------------- */

/** \brief The round's evaluation words for a Task of kind EVALUATE: the held-out loss of the
 * task's version (as `plait-agent eval`; FedSA: its A with this device's B), as
 * plait__agent_eval_words. Fills p (words owned; freed on error). Errors: the adapter's, the
 * evaluator's, PLAIT_EINVAL (too little held-out data), PLAIT_ECANCELED (deadline or stop),
 * PLAIT_EMISMATCH (the adapter does not fit the task). The loss itself stays on the device. */
int plait__agent_evaluate(plait__agent_conn_t *c, const plait_msg_task_t *t, uint64_t deadline,
                          plait__agent_pending_t *p /* OUT */, plait_agent_result_t *res) PLAIT_WUR;

/** \brief words[0] = quantized min(loss, loss_max) / loss_max, words[1] = the weight word of 1
 * (every device counts once). \return 0; PLAIT_EINVAL (a non-finite or negative loss, a bad
 * clip, a range below 1: words zeroed). */
int plait__agent_eval_words(const plait_quant_config_t *qc, double loss, double loss_max, plait_rng_t *rng,
                            uint32_t words[PLAIT_WIRE_EVAL_WORDS]) PLAIT_WUR;

/* ---- agent_state.c: the directory, a partial download, the personal adapter ---- */

/** \brief "dir/name" into out. \return 0 or PLAIT_EINVAL (too long). */
int plait__agent_path_join(char *out, size_t cap, const char *dir, const char *name) PLAIT_WUR;
/** \brief Create the state directory (0700) if missing, load DIR/state into a->state, and drop
 * a stored update that is damaged or for an acknowledged round. \return 0, PLAIT_EIO,
 * PLAIT_EPROTO (a malformed state file). */
int plait__agent_state_open(plait_agent_t *a) PLAIT_WUR;
/** \brief Keep the first got bytes of t's adapter as DIR/global.part (best effort). */
void plait__agent_partial_save(plait_agent_t *a, const plait_msg_task_t *t, const uint8_t *buf,
                               size_t got);
/** \brief Delete DIR/global.part (missing is fine). */
void plait__agent_partial_remove(plait_agent_t *a);
/** \brief Bytes of t's adapter already held (copied into buf, of t->adapter_len bytes); 0 when
 * none fit. */
size_t plait__agent_partial_load(plait_agent_t *a, const plait_msg_task_t *t, uint8_t *buf);
/** \brief FedSA: B of local starts from DIR/personal.safetensors when it fits; else unchanged. */
void plait__agent_load_personal_b(plait_agent_t *a, plait_lora_t *local);
/** \brief Write l as DIR/personal.safetensors. \return 0 or an error. */
int plait__agent_save_personal(plait_agent_t *a, const plait_lora_t *l) PLAIT_WUR;

/* ---- secure aggregation (client/agent_secagg.c) ------------------------- */

/** What agent_secagg.c needs from the agent's connection and identity (all borrowed). */
typedef struct {
    void *conn;
    int (*send)(void *conn, const plait_msg_t *m);
    /** next message until deadline (Pings answered); PLAIT_EAGAIN at the deadline */
    int (*recv)(void *conn, uint64_t deadline_ms, plait_msg_t *m);
    /** an Error from the aggregator: logs it and returns its code */
    int (*peer_error)(void *conn, const plait_msg_t *m, uint64_t round);
    plait_drbg_t *drbg;
    const char *device_id;
    const char *ca_pem;   /**< the deployment CA (NUL-terminated); its SHA-256 is the deployment id */
    const char *cert_pem; /**< this device's certificate, relayed to its neighbours */
    const char *key_pem;  /**< this device's key (signs the round keys) */
    const plait_wire_limits_t *lim;
    size_t chunk_bytes;   /**< masked bytes per chunk */
    uint32_t keepalive_ms;
} plait__agent_sa_env_t;

typedef struct plait__agent_sa_s plait__agent_sa_t;

/**
 * \brief The device's policy on a task (a server cannot downgrade a device):
 *        secure aggregation when required, a noise multiplier of at least the
 *        minimum, a clip norm of at most the maximum.
 * \return 0; PLAIT_EREFUSED naming the rule in plait_errmsg().
 */
int plait__agent_sa_policy(const plait_agent_config_t *cfg, const plait_msg_task_t *t) PLAIT_WUR;

/** \brief Whether the store holds enough text for t's windows (training split, or held-out for an
 *         evaluation): asked before the download and before a secure round's keys, so a device
 *         short of data declines where a device no longer eligible does. agent_train.c.
 * \return 0; PLAIT_EINVAL (too little: decline NOT_ELIGIBLE); store errors. */
int plait__agent_data_check(plait_agent_t *a, const plait_msg_task_t *t) PLAIT_WUR;

/** \brief Decline code for a task the device started and cannot finish (rc: why; secure: in a
 *         secure round's steps). Never DECLINE_NOT_ENOUGH_DATA: a reason computed from the
 *         device's data does not go to the aggregator (too little data is NOT_ELIGIBLE). */
plait_decline_code_t plait__agent_work_decline_code(int rc, int secure);

/**
 * \brief Steps 0 and 1 of SecAgg+ for a task with secure_agg: make and
 *        advertise the round keys, check the neighbours' keys in the roster,
 *        send the shares, take the relayed shares. Waits (with keepalive pings)
 *        until deadline_ms.
 * \return 0 (*out to pass to finish and free; a relayed share that does not
 *         open is dropped and logged, and the device goes on); PLAIT_EAUTH (a
 *         neighbour's keys do not verify), PLAIT_ETHRESHOLD (too few neighbours),
 *         PLAIT_EPROTO, connection errors.
 */
int plait__agent_sa_begin(const plait__agent_sa_env_t *env, const plait_msg_task_t *t, uint64_t deadline_ms,
                          plait__agent_sa_t **out /* OUT */) PLAIT_WUR;

/**
 * \brief Steps 2 and 3: mask words (Task.update_elements words), upload them
 *        packed at m bits, wait for the Ack (*acked = 1 then), then answer the
 *        unmask request, refusing (and logging) one that names a device both
 *        as survivor and as dropout.
 * \return 0; PLAIT_EREFUSED (the request was refused), PLAIT_ETHRESHOLD,
 *         connection and aggregator errors.
 */
int plait__agent_sa_finish(plait__agent_sa_t *sa, const plait__agent_sa_env_t *env, const uint32_t *words,
                           size_t n_words, uint64_t deadline_ms, int *acked /* OUT */) PLAIT_WUR;

/**
 * \brief Distributed DP (Task.dp.mode DP_DISTRIBUTED): add this device's share
 *        N_Z(0, ddg_var_num / ddg_var_den) to each of the n_span quantized
 *        update words, mod 2^secagg.bits, with the exact sampler (ddg.h) keyed
 *        from the DRBG. A no-op for other modes. The weight and clip-bit words
 *        after the span are not noised.
 * \return 0; PLAIT_EREFUSED (no secure aggregation); as plait_ddg_add_noise().
 *         On error the words must not be sent.
 */
int plait__agent_sa_ddg(const plait_msg_task_t *t, plait_drbg_t *drbg, uint32_t *words, size_t n_span) PLAIT_WUR;

/** \brief Wipe the round's keys and shares and free. NULL is safe. */
void plait__agent_sa_free(plait__agent_sa_t *sa);

/* The public calls without the per-agent log sink (client.h on_log); agent_embed.c wraps them. */
int plait__agent_create(plait_agent_t **out, const plait_agent_config_t *cfg) PLAIT_WUR;
int plait__agent_run_once(plait_agent_t *a, plait_agent_result_t *res_out) PLAIT_WUR;
int plait__agent_run_loop(plait_agent_t *a) PLAIT_WUR;

/** \brief Test hook: words per UpdateChunk (default min(max_chunk_bytes / 4, 65536)). */
void plait__agent_set_chunk_words(plait_agent_t *a, size_t words);

#endif /* PLAIT_AGENT_INT_H */
