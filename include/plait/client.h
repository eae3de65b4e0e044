/*
 * client.h: the device agent that takes part in federated rounds, as a C API
 * for apps that embed it (and for `plait-agent join`, a thin layer over it).
 *
 * One conversation (plait_agent_run_once) is: check eligibility (enough
 * records in the device store, and the app's "idle and charging?" callback),
 * connect over TCP + mutual TLS 1.2, say Hello (base model hash,
 * capabilities, last acknowledged round), then either take the aggregator's
 * ComeBackLater delay, or take a Task: download the global adapter (skipped
 * when the cached copy has the task's hash), train it on the device store on
 * a worker thread (the connection is kept alive with Pings meanwhile; an
 * interrupted download resumes where it stopped on the next task),
 * compute the update span's difference, clip it, add local DP noise if the
 * task asks for it, quantize it with the example weight, store it in the
 * state directory, upload it in chunks, wait for the Ack, and keep a personal
 * copy of the trained adapter. docs/protocol.md is the conversation,
 * docs/client-api.md the guide.
 *
 * Worked example (the whole of examples/embed.c, minus error printing):
 *
 *     static int idle_and_charging(void *ud) { return phone_is_idle() && phone_is_charging(); }
 *
 *     plait_agent_config_t cfg;
 *     plait_agent_config_default(&cfg);
 *     cfg.server_host = "agg.example.org";   cfg.server_port = 7443;
 *     cfg.ca_path = "ca.crt";  cfg.cert_path = "device.crt";  cfg.key_path = "device.key";
 *     cfg.model_path = "stories260K.bin";    cfg.tokenizer_path = "tok512.bin";
 *     cfg.store_path = "user.db";            cfg.state_dir = "agent-state";
 *     cfg.eligible = idle_and_charging;      // optional
 *     cfg.daemon = 1;
 *     plait_agent_t *agent;
 *     if (plait_agent_create(&agent, &cfg) != 0) fail(plait_errmsg());
 *     // on a background thread of the app:
 *     int rc = plait_agent_run(agent);        // returns after plait_agent_stop()
 *     // from the UI thread, at any time:
 *     plait_agent_stop(agent);
 *     ...
 *     plait_agent_destroy(agent);             // after plait_agent_run() has returned
 *
 * What leaves the device: the Hello (software version, base model SHA-256,
 * capability bits, the last acknowledged round id) and, for each round, the
 * clipped, optionally noised, quantized update span plus one weight word and
 * the example count. Never training text, tokens, gradients, the unclipped
 * update, keys or noise seeds; none of them is logged either.
 *
 * Crash safety: the state directory holds `state` (last round uploaded and
 * last round acknowledged) and `pending.upd` (the quantized update of the
 * round being uploaded), each written atomically (temporary file, fsync,
 * rename, fsync of the directory). A round that was acknowledged is never
 * uploaded again (the Hello says which it was, and a Task for it or an older
 * round is declined). If the process dies mid-upload, a Task for the same
 * round re-sends the very same stored words: the update is computed (and
 * noised) once, and the aggregator counts a device at most once per round.
 *
 * Thread-safety: an agent is driven by one thread at a time (the one that
 * calls plait_agent_run or plait_agent_run_once; it also runs the
 * callbacks). Training runs on a worker thread of the agent's own.
 * plait_agent_stop() may be called from any thread and from a signal handler.
 */
#ifndef PLAIT_CLIENT_H
#define PLAIT_CLIENT_H

#include <stddef.h>
#include <stdint.h>

#include "plait/knn.h"
#include "plait/log.h"
#include "plait/plait.h"

typedef struct plait_agent_s plait_agent_t; /* opaque */

/** Which PEM object a keystore callback is asked for. */
typedef enum {
    PLAIT_AGENT_PEM_CA = 0,   /**< the deployment CA certificate */
    PLAIT_AGENT_PEM_CERT = 1, /**< this device's certificate */
    PLAIT_AGENT_PEM_KEY = 2   /**< this device's private key (wiped by the agent after use) */
} plait_agent_pem_t;

/**
 * Keystore callback: copy the PEM text of `which` into buf (cap bytes, 64 KiB),
 * set *len to its length (no NUL needed) and return 0, or return a PLAIT_E*
 * code (PLAIT_ENOENT: not provisioned yet). Lets an app keep the device key in
 * a platform keystore (Android Keystore, iOS Keychain export, a TPM wrapper)
 * instead of a file. Called only from plait_agent_create().
 */
typedef int (*plait_agent_pem_cb)(void *ud, plait_agent_pem_t which, char *buf, size_t cap, size_t *len);

/**
 * Eligibility callback supplied by the embedding app: return 1 when the
 * device may take part now (typically idle, charging, on an unmetered
 * network), 0 otherwise. Called before each connection attempt and again
 * before training starts, on the thread running the agent.
 */
typedef int (*plait_agent_eligible_cb)(void *ud);

/** What an event reports. */
typedef enum {
    /** plait_agent_run starts a conversation (attempt = failures so far) */
    PLAIT_AGENT_EV_CONNECTING = 1,
    PLAIT_AGENT_EV_CONNECTED = 2, /**< TLS established, Hello sent */
    PLAIT_AGENT_EV_COME_BACK = 3, /**< the aggregator said come back later (delay_ms = its delay) */
    PLAIT_AGENT_EV_TASK = 4,      /**< a round was offered and accepted (round_id) */
    PLAIT_AGENT_EV_DOWNLOADED = 5,    /**< adapter ready (bytes downloaded; 0 when cached) */
    PLAIT_AGENT_EV_TRAINING = 6,      /**< progress: step of steps done */
    PLAIT_AGENT_EV_UPLOADED = 7,      /**< all update chunks sent (bytes: words·4, or the packed bytes) */
    PLAIT_AGENT_EV_ACKED = 8,         /**< the aggregator acknowledged the update */
    PLAIT_AGENT_EV_DECLINED = 9,      /**< the agent declined or abandoned the task (rc says why) */
    PLAIT_AGENT_EV_NOT_ELIGIBLE = 10, /**< skipped: too few records, or the app said no */
    PLAIT_AGENT_EV_ERROR = 11,        /**< a conversation failed (rc); the daemon backs off */
    PLAIT_AGENT_EV_SLEEP = 12,        /**< the daemon waits delay_ms before the next attempt */
    PLAIT_AGENT_EV_ADAPTER_UPDATED = 13 /**< a newly trained personalized adapter is in place (round_id):
                                             reload it with plait_agent_personal_load() */
} plait_agent_event_type_t;

/** An event; valid only during the callback. Carries no private data. */
typedef struct {
    plait_agent_event_type_t type;
    uint64_t round_id; /**< the round concerned, or 0 */
    int rc;            /**< a PLAIT_E* code for ERROR / DECLINED, else 0 */
    uint32_t attempt;  /**< consecutive failed attempts so far (CONNECTING, SLEEP) */
    uint64_t delay_ms; /**< COME_BACK, SLEEP */
    uint32_t step;     /**< TRAINING: optimizer steps done */
    uint32_t steps;    /**< TRAINING: steps the task asks for */
    uint64_t bytes;    /**< DOWNLOADED, UPLOADED */
} plait_agent_event_t;

/** Event callback; called on the thread running the agent. Must not call plait_agent_run*. */
typedef void (*plait_agent_event_cb)(void *ud, const plait_agent_event_t *ev);

/** How one conversation ended (plait_agent_run_once). */
typedef enum {
    PLAIT_AGENT_OUT_NONE = 0,         /**< nothing happened yet */
    PLAIT_AGENT_OUT_ACKED = 1,        /**< took part in a round; the update was acknowledged */
    PLAIT_AGENT_OUT_COME_BACK = 2,    /**< no task now; retry_ms says when to come back */
    PLAIT_AGENT_OUT_NOT_ELIGIBLE = 3, /**< did not connect: too few records or not idle/charging */
    PLAIT_AGENT_OUT_DECLINED = 4 /**< a task was offered but the agent declined or abandoned it */
} plait_agent_outcome_t;

typedef struct {
    plait_agent_outcome_t outcome;
    uint64_t round_id;     /**< the round of ACKED / DECLINED */
    uint32_t retry_ms;     /**< COME_BACK: the aggregator's delay (before jitter) */
    int declined_rc;       /**< DECLINED: why (PLAIT_ESTALE, PLAIT_EMISMATCH, ...) */
    uint64_t num_examples; /**< ACKED: records trained on */
    double clip_norm_in;   /**< ACKED: L2 norm of the update before clipping (a scalar, not data) */
} plait_agent_result_t;

/**
 * Agent configuration. Every string is borrowed for the call to
 * plait_agent_create() only (it copies them).
 */
typedef struct {
    /** sizeof(plait_agent_config_t) as the app was compiled: set by plait_agent_config_default();
     *  lets a later library accept this layout (0 or a larger size is refused). */
    size_t struct_size;
    /* Aggregator. */
    const char *server_host; /**< DNS name or IP literal (no default: required) */
    int server_port;         /**< 1..65535 (default 7443) */
    const char *server_name; /**< name the server certificate must carry; NULL = server_host
                                (default NULL) */
    /* Identity and trust: PEM files, or a keystore callback (then the three paths may be NULL). */
    const char *ca_path;   /**< the deployment CA certificate (required) */
    const char *cert_path; /**< this device's certificate (required) */
    const char *key_path; /**< this device's private key (required; wiped from memory on destroy) */
    /* Engine and data. */
    const char *model_path;     /**< llama2.c checkpoint or GGUF model (required) */
    const char *tokenizer_path; /**< llama2.c tokenizer or a GGUF file with tokenizer metadata (required) */
    /** the device store (plait-agent ingest); opened, never created, for each round (required) */
    const char *store_path;
    const char *state_dir; /**< crash-safe state, adapter cache, personal adapter; created 0700
                              (required) */
    int threads;           /**< training threads, 1..256 (default 1) */
    int base_bf16; /**< 1: the frozen base's products in BF16 where the CPU has AVX512-BF16 (train.h
                      base_bf16; training, evaluation and personalization), else float32; 0: float32
                      (default 0) */
    /* Eligibility. */
    int64_t min_records; /**< fewest training records to take part, >= 1 (default 16) */
    plait_agent_eligible_cb eligible; /**< NULL: always eligible (default NULL) */
    void *eligible_ud;
    /* Local limits on what a task may ask (a declined task is not an error). */
    uint32_t max_local_steps;  /**< default 10000 */
    uint32_t max_batch_tokens; /**< batch x seq_len, default 65536 */
    /* Privacy policy (a task outside it is declined with PLAIT_EREFUSED: a server cannot
     * downgrade a device). */
    int require_secure_agg;      /**< decline tasks without secure aggregation (default 1) */
    double min_noise_multiplier; /**< decline tasks whose DP noise multiplier is below this
                                      (0: no minimum, the default) */
    double max_clip_norm;        /**< decline tasks whose clip norm is above this (0: no maximum,
                                      the default) */
    /* Timeouts (protocol §6). */
    uint32_t connect_timeout_ms; /**< TCP connect + TLS handshake (default 10000) */
    uint32_t io_timeout_ms;      /**< waiting for any frame outside training (default 60000) */
    uint32_t keepalive_ms;       /**< Ping interval while training, 1000..60000 (default 30000) */
    /* Daemon pacing. Reconnect backoff after a failure n (0-based):
     * base = min(backoff_max_ms, backoff_initial_ms * 2^n), wait uniform in
     * [base * (1 - backoff_jitter), base]. A ComeBackLater of d ms waits
     * uniform in [d, d * (1 + come_back_jitter)]. */
    uint32_t backoff_initial_ms; /**< 1..backoff_max_ms (default 1000) */
    uint32_t backoff_max_ms;     /**< default 300000 (5 min) */
    double backoff_jitter;       /**< 0..1 (default 0.5) */
    double come_back_jitter;     /**< 0..1 (default 0.5, as docs/protocol.md says) */
    uint32_t rejoin_ms; /**< wait after an acknowledged round, jittered like ComeBackLater (default
                           60000) */
    uint32_t not_eligible_ms; /**< wait before re-checking eligibility (default 60000) */
    /* Run mode. */
    int daemon;            /**< 0 (default): plait_agent_run() ends after one conversation that
                                reached the aggregator (retrying failed connections with backoff,
                                at most max_attempts times); 1: loop until plait_agent_stop() */
    uint32_t max_attempts; /**< one-shot: connection attempts, >= 1 (default 5) */
    uint32_t max_rounds;   /**< daemon: return after this many acknowledged rounds; 0 = no limit
                              (default 0) */
    /** plait_agent_run(): return after this long; 0 = no limit (default 0) */
    uint64_t max_runtime_ms;
    /* Randomness. 0 (default): batch sampling, stochastic rounding and local
     * DP noise come from the mbedTLS DRBG (production). Nonzero: all of them
     * are derived from this seed and the round id, so runs replay exactly:
     * tests and simulations ONLY (local DP noise is then predictable). */
    uint64_t seed;
    /* Progress. */
    plait_agent_event_cb on_event; /**< NULL: none (default NULL) */
    void *event_ud;
    /* Keystore (see plait_agent_pem_cb): used instead of ca_path, cert_path and key_path. */
    plait_agent_pem_cb load_pem; /**< NULL: read the PEM files (default NULL) */
    void *pem_ud;
    /* Logging: this agent's lines (the "agent DEVICE: ..." lines of create and run, and of its
     * training thread) go to on_log instead of the process sink (log.h), at the process level and
     * above. on_log may be called from the agent's thread and its training thread at once. */
    plait_log_cb on_log; /**< NULL: the process sink, stderr by default (default NULL) */
    void *log_ud;
} plait_agent_config_t;

/** \brief 1 when the last failure of plait_agent_run/run_once cannot be fixed by retrying (the store
 *         or state folder is unusable): stop and tell the user; 0 when retrying later may work
 *         (network, aggregator busy, a declined task). */
int plait_agent_last_error_fatal(const plait_agent_t *a);

/* ---- inference with the personalized model --------------------------------------------- */
struct plait_model_s;
struct plait_tok_s;
struct plait_lora_s;
/** \brief The base model the agent loaded (read-only, valid until destroy; safe to read from
 *         another thread while the agent trains). */
const struct plait_model_s *plait_agent_model(const plait_agent_t *a);
/** \brief The agent's tokenizer (read-only, valid until destroy). */
const struct plait_tok_s *plait_agent_tokenizer(const plait_agent_t *a);
/**
 * \brief Load the adapter this device serves into out (plait_lora_free it): the validated choice
 *        of global, personal or mix made after each round (plait_agent_serving(); personal.h),
 *        or, before any choice exists, the personal adapter it trained last. For inference: plait_infer_setup(&s, plait_agent_model(a), out, &icfg) (infer.h).
 *        Reload on PLAIT_AGENT_EV_ADAPTER_UPDATED.
 * \return 0; PLAIT_ENOENT (no round trained yet); plait_adapter_load()'s codes.
 */
int plait_agent_personal_load(const plait_agent_t *a, struct plait_lora_s *out /* OUT */) PLAIT_WUR;

/**
 * \brief Add one interaction record (a message, a note) to the device store
 *        the agent trains on; creates the store on the first record. Safe while
 *        an agent runs on the same store (separate sqlite connections).
 * \param store_path the config's store_path.
 * \param time unix seconds >= 0, or PLAIT_STORE_TIME_NOW (-1).
 * \param kind 1..64 printable ASCII bytes, or NULL for "text".
 * \param text UTF-8 without NUL, 1..1 MiB bytes (need not be NUL-terminated).
 * \param id_out OUT (may be NULL): the record's id, for plait-agent forget --id.
 * \return 0; PLAIT_EINVAL (bad kind or text, named without the text); PLAIT_ETOOBIG;
 *         PLAIT_EBUSY (the store stayed locked for 5 s: retry later); PLAIT_EIO / PLAIT_EPROTO
 *         (the store cannot be written or is not a store).
 */
int plait_agent_add_record(const char *store_path, int64_t time, const char *kind, const char *text, size_t len,
                           int64_t *id_out /* OUT */) PLAIT_WUR;

/**
 * \brief Fill cfg with the defaults documented on each field (required strings NULL).
 * \param cfg not NULL.
 */
void plait_agent_config_default(plait_agent_config_t *cfg);

/**
 * \brief Check a configuration without touching files.
 * \param cfg may be NULL (PLAIT_EINVAL).
 * \return 0 or PLAIT_EINVAL naming the bad field in plait_errmsg().
 */
int plait_agent_config_validate(const plait_agent_config_t *cfg) PLAIT_WUR;

/**
 * \brief Create an agent: validate cfg, load the model, tokenizer and PEM
 *        files, build the TLS configuration, check that the device store
 *        opens (it must exist: plait-agent ingest or plait_store_open with
 *        create), create the state directory and read its state (a torn or
 *        foreign state file is refused, not guessed). Does not connect.
 * \param out OUT, not NULL: owned agent, free with plait_agent_destroy(); NULL on failure.
 * \param cfg not NULL; copied.
 * \return 0; PLAIT_EINVAL (bad config); PLAIT_EIO / PLAIT_ENOENT (unreadable
 *         file, store or state dir); PLAIT_EPROTO (bad model, tokenizer, PEM or state
 *         file); PLAIT_EMISMATCH (key does not match certificate); PLAIT_ENOMEM.
 */
int plait_agent_create(plait_agent_t **out /* OUT */, const plait_agent_config_t *cfg) PLAIT_WUR;

/**
 * \brief Free an agent, wiping its key material. NULL is safe. Must not be
 *        called while plait_agent_run* is running on another thread: stop it
 *        and join that thread first.
 */
void plait_agent_destroy(plait_agent_t *a);

/**
 * \brief One conversation with the aggregator (see the file comment).
 * \param res OUT, may be NULL: how it ended.
 * \return 0 when the conversation ended as the protocol allows (ACKED,
 *         COME_BACK, NOT_ELIGIBLE, DECLINED: see res); otherwise the failure:
 *         PLAIT_EIO (connect, timeout, connection closed), PLAIT_EAUTH (TLS
 *         authentication), PLAIT_EPROTO (malformed traffic), PLAIT_ESTALE /
 *         PLAIT_EMISMATCH / PLAIT_EBUSY / ... (an Error from the aggregator:
 *         its code), PLAIT_ECANCELED (plait_agent_stop() was called, or the
 *         round's deadline passed), PLAIT_ENOMEM, or a store / engine error.
 *         Details in plait_errmsg().
 */
int plait_agent_run_once(plait_agent_t *a,
                         plait_agent_result_t *res /* OUT, may be NULL */) PLAIT_WUR;

/**
 * \brief Run conversations until stopped (daemon) or until one conversation
 *        reached the aggregator (one-shot), honouring ComeBackLater delays
 *        with jitter and backing off exponentially after failures.
 * \return 0 after plait_agent_stop(), max_rounds or max_runtime_ms (daemon), or
 *         after a completed conversation (one-shot: its outcome is in
 *         plait_agent_last_result()); the last error after max_attempts
 *         failures (one-shot). Errors are retryable (a network or aggregator
 *         failure: backed off and retried) or fatal (the device store cannot
 *         be opened: returned at once, daemon or not, since retrying cannot
 *         fix it).
 */
int plait_agent_run(plait_agent_t *a) PLAIT_WUR;

/**
 * \brief Ask a running plait_agent_run / run_once to return as soon as
 *        possible (it wakes blocked waits; training stops at the next step,
 *        nothing is uploaded for an unfinished round). Async-signal-safe;
 *        any thread. Sticky until plait_agent_reset_stop().
 */
void plait_agent_stop(plait_agent_t *a);

/** \brief Clear a previous plait_agent_stop() so the agent can run again. */
void plait_agent_reset_stop(plait_agent_t *a);

/** \brief The result of the last conversation (zeroed before the first). */
const plait_agent_result_t *plait_agent_last_result(const plait_agent_t *a);

/** \brief Rounds acknowledged to this agent since it was created. */
uint32_t plait_agent_rounds_acked(const plait_agent_t *a);

/**
 * \brief Reconnect delay after failure number attempt (0-based) for a
 *        uniform u in [0, 1): the backoff schedule documented on
 *        plait_agent_config_t. Exposed for tests and for apps that schedule
 *        their own wake-ups.
 */
uint64_t plait_agent_backoff_ms(const plait_agent_config_t *cfg, uint32_t attempt, double u);

/** \brief Jittered ComeBackLater delay for the aggregator's retry_ms and a uniform u in [0, 1). */
uint64_t plait_agent_come_back_ms(const plait_agent_config_t *cfg, uint32_t retry_ms, double u);

/**
 * \brief Remove from an agent's state directory everything derived from the
 *        device's records: the personal adapter, the serving adapter and its
 *        serve.txt, a pending (not yet
 *        acknowledged) update, a partial download and temporaries left by a
 *        crash. Each file is overwritten with zeros and synced before it is
 *        unlinked. Call it whenever records are erased (`plait-agent forget
 *        --state DIR` does), with no agent running on that directory. The
 *        round counters (`state`) and the cached global adapter stay: they
 *        hold nothing computed from this device's records alone.
 * \param state_dir the agent's state_dir; a missing directory is not an error.
 * \param removed OUT, may be NULL: number of files removed.
 * \return 0; PLAIT_EINVAL (NULL, path too long); PLAIT_EIO (a file could not
 *         be overwritten or removed; the message names it).
 */
int plait_agent_forget_derived(const char *state_dir, int *removed /* OUT */) PLAIT_WUR;

/**
 * \brief The adapter this device serves inference with, chosen after each
 *        round on a validation tail of its own training text (personal.h):
 *        the global adapter, its personal fine-tune, or a mix of the two,
 *        whichever did best there (the global one unless another beat it).
 * \param path OUT: the slot serve.txt names, state_dir/serve.safetensors or serve-b.safetensors.
 * \param why  OUT, may be NULL: which one and why, in words (validation losses).
 * \return 0; PLAIT_ENOENT (none chosen yet: path is ""); PLAIT_EPROTO (serve.txt malformed).
 */
int plait_agent_serving(const char *state_dir, char *path /* OUT */, size_t path_cap, char *why /* OUT */,
                        size_t why_cap) PLAIT_WUR;

/**
 * \brief The personal output bias served on top of that adapter, when the
 *        device kept one (personal.h, plait_personal_fit_bias): V logits to
 *        add to the model's (plait_infer_set_logit_bias). Like the adapter,
 *        it is derived from the device's own text and never leaves it.
 * \param bias OUT: V floats (the model's vocab_size).
 * \return 0; PLAIT_ENOENT (no choice yet, or the choice has no bias);
 *         PLAIT_EPROTO (serve.txt or serve_bias.bin malformed, or made for
 *         another vocabulary size).
 */
int plait_agent_serving_bias(const char *state_dir, float *bias /* OUT */, size_t V) PLAIT_WUR;

/**
 * \brief The kNN memory of the device's own text served on top of that
 *        adapter and bias, when the device kept one (personal.h,
 *        plait_personal_fit_knn; knn.h): pass it to plait_infer_set_knn.
 *        Its entries are hidden states of the device's text and the tokens
 *        that followed: it never leaves the device, and `plait-agent forget
 *        --state` erases it.
 * \param knn OUT: replaced (plait_knn_free it); C and V the model's dim and
 *            vocab_size.
 * \return 0; PLAIT_ENOENT (no choice yet, or the choice has no memory);
 *         PLAIT_EPROTO (serve.txt or serve_knn.bin malformed, made for
 *         another model, or over 64 MiB).
 */
int plait_agent_serving_knn(const char *state_dir, plait_knn_t *knn /* OUT */, size_t C, size_t V) PLAIT_WUR;

/**
 * \brief Make this device's TLS key and a certificate request, on the device:
 *        the private key never leaves it. The key (ECDSA P-256) is written to
 *        key_path 0600 whatever the umask; the CSR (PEM, public) to csr_path.
 *        The operator turns the CSR into a certificate with `plait-aggregator
 *        enroll DIR --device LABEL --csr FILE` (docs/operator-pki.md); the CA
 *        puts its own random id in the certificate, so the request names no
 *        one (its CN is the constant "plait-device").
 * \return 0; PLAIT_EBUSY (key_path exists: a key is never overwritten);
 *         PLAIT_EINVAL (NULL); PLAIT_EIO; PLAIT_ENOMEM.
 */
int plait_agent_keygen(const char *key_path, const char *csr_path) PLAIT_WUR;

#endif /* PLAIT_CLIENT_H */
