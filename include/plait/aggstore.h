/*
 * aggstore.h: the aggregator's durable state. One sqlite database file per
 * deployment holds the enrolled devices, every training round, every global
 * adapter version (the safetensors bytes and their SHA-256, the LoRA config
 * and the server optimizer state), the privacy ledger and per-round metrics.
 * Client updates are never stored: only the aggregated versions.
 *
 * Worked example (the service's round loop, on a libuv worker thread):
 *
 *     plait_aggstore_config_t cfg;
 *     plait_aggstore_config_default(&cfg);
 *     cfg.path = "/var/lib/plait/aggregator.db";
 *     plait_aggstore_t *st = NULL;
 *     int rc = plait_aggstore_open(&st, &cfg);     // abandons a round a crash left open
 *     int64_t base = 0, round = 0, ver = 0;
 *     rc = plait_aggstore_version_latest_number(st, &base);    // 0: none yet
 *     rc = plait_aggstore_round_begin(st, 64, 16, task_json, base, &round);
 *     ...   // per accepted upload:
 *     rc = plait_aggstore_device_mark_uploaded(st, "device-17", round);  // PLAIT_ESTALE: duplicate
 *     ...   // after aggregation:
 *     plait_aggstore_commit_t c = { .adapter = st_bytes, .adapter_len = n, ... };
 *     rc = plait_aggstore_round_commit(st, round, &c, &ver);   // all of it, or nothing
 *     plait_aggstore_close(st);
 *
 * Durability. The database runs in WAL mode with synchronous=FULL: every
 * commit appends to the write-ahead log and fsyncs it before returning. In
 * WAL mode synchronous=NORMAL would still never corrupt the file, but a power
 * cut could lose the last commits; here that would lose a global adapter
 * version that devices may already have downloaded and trained on, and a
 * ledger row, so ε spent could be under-reported. One fsync per round (rounds
 * are minutes apart) is cheap, so FULL is not configurable. A process crash
 * (kill -9) loses nothing that was committed with either setting; with FULL
 * neither does a power cut, provided the disk honours fsync.
 *
 * Atomicity. plait_aggstore_round_commit writes the round's end state and
 * statistics, the uploaders' participation counters, the new version, the
 * ledger row and the metrics in ONE
 * transaction: after a crash or an error either all of them are there or
 * none is (the round then stays open, or is abandoned at the next open).
 *
 * Recovery. plait_aggstore_open (with recover_open_rounds, the default) marks
 * every round a crash left 'open' as 'abandoned', with the end time and a
 * reason, so that a new round can begin. At most one round is open at a time
 * (a unique index enforces it). Versions are numbered 1, 2, ... without gaps:
 * each commit takes the next number, in the same transaction.
 *
 * Untrusted file. The file may have been damaged or replaced. A file that is
 * not an sqlite database gives PLAIT_EPROTO; an sqlite database that is not
 * an aggregator store (another application's, or a plait DEVICE store), or
 * one with a newer schema, gives PLAIT_EMISMATCH. Every row read back is
 * validated (types, ranges, sizes, JSON of the task config) and every blob's
 * size is checked against the configured maximum before it is read; a bad
 * row gives PLAIT_EPROTO with a detail naming its table and id. A version's
 * adapter is hashed on every read and compared with its stored SHA-256.
 *
 * Errors: SQLITE_BUSY/LOCKED become PLAIT_EBUSY; corruption PLAIT_EPROTO;
 * constraint violations PLAIT_EINVAL; other sqlite failures PLAIT_EIO, with
 * sqlite's message and code in plait_errmsg(). Details never contain blob
 * bytes.
 *
 * Conventions: every function taking a plait_aggstore_t needs an open store
 * (NULL gives PLAIT_EINVAL), and one whose callback is running gives
 * PLAIT_EINVAL too (callbacks must not call back into the store). Strings
 * and structs passed in are borrowed for the call. Times are unix seconds
 * taken from the system clock by the store.
 *
 * Thread-safety: one store object per thread (one sqlite connection each; the
 * connection is opened with SQLITE_OPEN_NOMUTEX). An object may move between
 * threads (e.g. into a uv_queue_work callback) but must not be used by two
 * at once. Several connections may share the file: readers never block the
 * writer in WAL mode; writers wait up to busy_timeout_ms, then PLAIT_EBUSY.
 * Secondary connections opened while the service runs (a `status` CLI, extra
 * worker threads) must set recover_open_rounds = false (or read_only), or
 * they would abandon the service's live round.
 */
#ifndef PLAIT_AGGSTORE_H
#define PLAIT_AGGSTORE_H

#include <stdbool.h>

#include "plait/plait.h"
#include "plait/privacy.h"

/** An open aggregator store (opaque). */
typedef struct plait_aggstore_s plait_aggstore_t;

/** Schema version written by this build; files with a newer one are refused, version-1 files are
 *  migrated at a read-write open (refused read-only). */
#define PLAIT_AGGSTORE_SCHEMA_VERSION 4
/** Device ids (certificate CN): 1..64 printable ASCII bytes (X.509 ub-common-name is 64). */
#define PLAIT_AGGSTORE_MAX_DEVICE_ID 64
/** Metric keys and rejection reasons: 1..64 printable ASCII bytes. */
#define PLAIT_AGGSTORE_MAX_KEY 64
/** Round failure reasons: 0..256 bytes of UTF-8 without NUL (longer ones are cut). */
#define PLAIT_AGGSTORE_MAX_REASON 256
/** Deployment ids: 1..64 printable ASCII bytes. */
#define PLAIT_AGGSTORE_MAX_DEPLOYMENT_ID 64
/** Ceiling for every blob limit in the config (sqlite's own cap is 10^9 bytes). */
#define PLAIT_AGGSTORE_MAX_BLOB_CEILING ((size_t)900 << 20)
/** LoRA rank bounds accepted in a version row (as lora.h). */
#define PLAIT_AGGSTORE_MAX_RANK 1024

/** Store configuration. Fill with plait_aggstore_config_default(), then set path. */
typedef struct plait_aggstore_config_s {
    /* Database file (borrowed for the call to open). No default: must be set. */
    const char *path;
    /* Create the file and the schema if missing (default true). */
    bool create;
    /* Open read-only (default false): for reporting commands while the service
     * runs. Implies no creation and no recovery; every write gives PLAIT_EIO. */
    bool read_only;
    /* Abandon rounds left open by a crash when opening (default true). Set
     * false for any connection other than the service's main one. */
    bool recover_open_rounds;
    /* How long a write waits for another connection's lock before
     * PLAIT_EBUSY, milliseconds, 0..600000 (default 5000: a CLI may read
     * while the service writes; checkpoints are short). */
    int busy_timeout_ms;
    /* Deployment id (borrowed). Written into a new file; when opening an
     * existing file it must match (PLAIT_EMISMATCH otherwise), which stops a
     * service from running on another deployment's database. NULL (default):
     * a new file gets 32 random hex digits, an existing file is not checked. */
    const char *deployment_id;
    /* Largest adapter blob (safetensors bytes), 1..MAX_BLOB_CEILING (default
     * 256 MiB: a rank-64 adapter on every projection of a 1B model is ~180 MiB). */
    size_t max_adapter_bytes;
    /* Largest server optimizer state, bytes, 0..MAX_BLOB_CEILING (default
     * 512 MiB: FedAdam/FedYogi keep m and v, twice the adapter's floats). */
    size_t max_opt_state_bytes;
    /* Largest task config JSON, bytes, 2..MAX_BLOB_CEILING (default 64 KiB:
     * hyper-parameters, not data). */
    size_t max_task_config_bytes;
    /* Most metrics per round, 0..100000 (default 256). */
    size_t max_metrics;
    /* Most rejection reasons per round, 0..1000 (default 32: reasons are a
     * small fixed vocabulary of the service). */
    size_t max_reasons;
} plait_aggstore_config_t;

/** \brief Fill cfg with the defaults documented in plait_aggstore_config_t (path NULL). */
void plait_aggstore_config_default(plait_aggstore_config_t *cfg);

/**
 * \brief Check a config.
 * \param cfg The config; NULL gives PLAIT_EINVAL.
 * \return 0, or PLAIT_EINVAL with a detail naming the bad field.
 */
int plait_aggstore_config_validate(const plait_aggstore_config_t *cfg);

/**
 * \brief Open (and, if cfg->create, create) the store; then, if
 *        cfg->recover_open_rounds, abandon rounds left open (see the file comment).
 * \param out OUT: the store, owned by the caller, close with
 *            plait_aggstore_close; NULL on failure. Must not be NULL.
 * \param cfg A config that passes plait_aggstore_config_validate; borrowed.
 * \return 0; PLAIT_EINVAL (bad config); PLAIT_ENOENT (missing file and no
 *         create); PLAIT_EPROTO (not an sqlite database, corrupt, or malformed
 *         metadata or tables); PLAIT_EMISMATCH (not an aggregator store, newer
 *         schema, other deployment id); PLAIT_EBUSY; PLAIT_EIO; PLAIT_ENOMEM.
 */
int plait_aggstore_open(plait_aggstore_t **out /* OUT */, const plait_aggstore_config_t *cfg) PLAIT_WUR;

/** \brief Close. \param st The store; NULL does nothing. */
void plait_aggstore_close(plait_aggstore_t *st);

/** What plait_aggstore_info reports. */
typedef struct plait_aggstore_info_s {
    char deployment_id[PLAIT_AGGSTORE_MAX_DEPLOYMENT_ID + 1];
    int64_t created;          /* unix seconds the file was created */
    int schema_version;       /* of the file */
    int64_t abandoned_at_open; /* rounds this open marked 'abandoned' */
} plait_aggstore_info_t;

/**
 * \brief Deployment id, creation time, schema version, recovery count.
 * \param st An open store. \param out OUT; must not be NULL.
 * \return 0; PLAIT_EINVAL.
 */
int plait_aggstore_info(const plait_aggstore_t *st, plait_aggstore_info_t *out /* OUT */) PLAIT_WUR;

/**
 * \brief Run sqlite's PRAGMA integrity_check over the whole file (reads every
 *        page: seconds per GiB; for the `status` command and after restores).
 * \return 0; PLAIT_EPROTO (the first problem sqlite reports is in the
 *         detail); PLAIT_EBUSY; PLAIT_EIO.
 */
int plait_aggstore_check_integrity(plait_aggstore_t *st) PLAIT_WUR;

/* ---- devices ---------------------------------------------------------------- */

/** A device row. */
typedef struct plait_aggstore_device_s {
    char id[PLAIT_AGGSTORE_MAX_DEVICE_ID + 1]; /* certificate CN, NUL-terminated */
    uint8_t fingerprint[32];  /* SHA-256 of the device certificate (DER) */
    int64_t enrolled;         /* unix seconds */
    bool revoked;
    int64_t revoked_at;       /* unix seconds; 0 unless revoked */
    int64_t last_seen;        /* unix seconds; 0 if never seen */
    int64_t rounds_participated; /* rounds it uploaded to (accepted uploads) */
    int64_t last_round;       /* highest round id it uploaded to; 0 if none */
} plait_aggstore_device_t;

/**
 * \brief Enroll a device (called when its certificate is issued).
 * \param id 1..PLAIT_AGGSTORE_MAX_DEVICE_ID printable ASCII bytes, NUL-terminated.
 * \param fingerprint 32 bytes: SHA-256 of its certificate.
 * \return 0; PLAIT_EINVAL (bad id, NULL, or the id is already enrolled,
 *         revoked or not: ids are never reused); PLAIT_EBUSY; PLAIT_EIO.
 */
int plait_aggstore_device_enroll(plait_aggstore_t *st, const char *id, const uint8_t fingerprint[32]) PLAIT_WUR;

/**
 * \brief Revoke a device. Revoking a revoked device keeps the first time and returns 0.
 * \return 0; PLAIT_ENOENT (unknown id); PLAIT_EINVAL; PLAIT_EBUSY; PLAIT_EIO.
 */
int plait_aggstore_device_revoke(plait_aggstore_t *st, const char *id) PLAIT_WUR;
/**
 * \brief Renewal: the device keeps its id, history and counters; its certificate
 *        fingerprint becomes fingerprint (the old certificate no longer passes
 *        plait_aggstore_device_check).
 * \return 0; PLAIT_ENOENT (no such device, or it is revoked); PLAIT_EINVAL.
 */
int plait_aggstore_device_rekey(plait_aggstore_t *st, const char *id, const uint8_t fingerprint[32]) PLAIT_WUR;

/**
 * \brief Whether a device is revoked.
 * \param revoked OUT; must not be NULL.
 * \return 0; PLAIT_ENOENT (unknown); PLAIT_EPROTO (bad row); PLAIT_EINVAL; PLAIT_EBUSY; PLAIT_EIO.
 */
int plait_aggstore_device_is_revoked(plait_aggstore_t *st, const char *id, bool *revoked /* OUT */) PLAIT_WUR;

/**
 * \brief The check the service makes after the TLS handshake: the device is
 *        enrolled, not revoked, and presented the enrolled certificate
 *        (compared in constant time).
 * \return 0; PLAIT_ENOENT (unknown id); PLAIT_EAUTH (revoked, or another
 *         certificate); PLAIT_EPROTO; PLAIT_EINVAL; PLAIT_EBUSY; PLAIT_EIO.
 */
int plait_aggstore_device_check(plait_aggstore_t *st, const char *id, const uint8_t fingerprint[32]) PLAIT_WUR;

/**
 * \brief Read a device row.
 * \param out OUT; must not be NULL.
 * \return 0; PLAIT_ENOENT; PLAIT_EPROTO (malformed row, detail names it); PLAIT_EINVAL; PLAIT_EBUSY; PLAIT_EIO.
 */
int plait_aggstore_device_get(plait_aggstore_t *st, const char *id, plait_aggstore_device_t *out /* OUT */) PLAIT_WUR;

/**
 * \brief Set a device's last-seen time to now.
 * \return 0; PLAIT_ENOENT; PLAIT_EINVAL; PLAIT_EBUSY; PLAIT_EIO.
 */
int plait_aggstore_device_touch(plait_aggstore_t *st, const char *id) PLAIT_WUR;

/**
 * \brief Record that a device's upload for a round was accepted: sets its
 *        last round, counts the participation and touches it, atomically,
 *        and only if the device never uploaded to this round or a later one.
 *        Call it BEFORE adding the update to the aggregate: a client that
 *        restarts (or replays) can never be counted twice for a round.
 * \param round An open round.
 * \return 0; PLAIT_ESTALE (already uploaded to this round or a later one, or
 *         the round is not open; nothing changed); PLAIT_ENOENT (unknown
 *         device or round); PLAIT_EAUTH (revoked); PLAIT_EPROTO; PLAIT_EINVAL;
 *         PLAIT_EBUSY; PLAIT_EIO.
 */
int plait_aggstore_device_mark_uploaded(plait_aggstore_t *st, const char *id, int64_t round) PLAIT_WUR;

/**
 * \brief Enroll a device under an opaque id (its certificate CN) with the
 *        operator's label, in one transaction. Labels, like ids, are never reused.
 * \param label 1..PLAIT_AGGSTORE_MAX_DEVICE_ID printable ASCII bytes.
 * \return as plait_aggstore_device_enroll(); PLAIT_EINVAL also when the label is taken.
 */
int plait_aggstore_device_enroll_labeled(plait_aggstore_t *st, const char *id, const char *label,
                                         const uint8_t fingerprint[32]) PLAIT_WUR;

/**
 * \brief The id of the device with this label, or, when no device has that
 *        label, of the device with this id (devices enrolled without a label).
 * \param id OUT: NUL-terminated.
 * \return 0; PLAIT_ENOENT; PLAIT_EPROTO; PLAIT_EINVAL; PLAIT_EBUSY; PLAIT_EIO.
 */
int plait_aggstore_device_find(plait_aggstore_t *st, const char *label_or_id,
                               char id[PLAIT_AGGSTORE_MAX_DEVICE_ID + 1] /* OUT */) PLAIT_WUR;

/**
 * \brief The operator's label of device id.
 * \param label OUT: NUL-terminated ("" on failure).
 * \return 0; PLAIT_ENOENT (no label); PLAIT_EPROTO; PLAIT_EINVAL; PLAIT_EBUSY; PLAIT_EIO.
 */
int plait_aggstore_device_label(plait_aggstore_t *st, const char *id,
                                char label[PLAIT_AGGSTORE_MAX_DEVICE_ID + 1] /* OUT */) PLAIT_WUR;

/** Device callback: \return 0 to go on; another value stops and is returned. Must not use the store. */
typedef int (*plait_aggstore_device_cb)(void *ud, const plait_aggstore_device_t *dev);

/**
 * \brief Call cb for every device, in id order.
 * \return 0; cb's non-zero value; PLAIT_EPROTO (malformed row; earlier rows
 *         were delivered); PLAIT_EINVAL; PLAIT_EBUSY; PLAIT_EIO.
 */
int plait_aggstore_devices_foreach(plait_aggstore_t *st, plait_aggstore_device_cb cb, void *ud);

/* ---- rounds ----------------------------------------------------------------- */

typedef enum {
    PLAIT_AGGSTORE_ROUND_OPEN = 0,
    PLAIT_AGGSTORE_ROUND_COMMITTED = 1,
    PLAIT_AGGSTORE_ROUND_FAILED = 2,
    PLAIT_AGGSTORE_ROUND_ABANDONED = 3
} plait_aggstore_round_state_t;

/** \brief "open", "committed", "failed", "abandoned" (or "?"). */
const char *plait_aggstore_round_state_name(plait_aggstore_round_state_t s);

/** What a round does: train a new version, or evaluate one (federated evaluation). */
typedef enum {
    PLAIT_AGGSTORE_KIND_TRAIN = 0,   /**< commits a new version */
    PLAIT_AGGSTORE_KIND_EVALUATE = 1 /**< commits an evals row; new_version stays 0 */
} plait_aggstore_kind_t;

/** \brief "train", "evaluate" (or "?"). */
const char *plait_aggstore_kind_name(plait_aggstore_kind_t k);

/** Updates rejected for one reason ("nan", "shape", "stale", ...). */
typedef struct plait_aggstore_rejection_s {
    const char *reason; /* 1..PLAIT_AGGSTORE_MAX_KEY printable ASCII bytes, NUL-terminated */
    int64_t count;      /* >= 0 */
} plait_aggstore_rejection_t;

/** A round's counters. Writing replaces all of them, rejections included. */
typedef struct plait_aggstore_stats_s {
    int64_t participants;  /* devices that were sent the task */
    int64_t dropouts;      /* of those, devices that did not upload in time */
    int64_t bytes_up;      /* bytes received from devices */
    int64_t bytes_down;    /* bytes sent to devices */
    const plait_aggstore_rejection_t *rejections; /* n_rejections entries, distinct reasons */
    size_t n_rejections;   /* 0..max_reasons */
} plait_aggstore_stats_t;

/** A round row as delivered to a callback; pointers valid during the callback only. */
typedef struct plait_aggstore_round_s {
    int64_t id;               /* > 0, increasing, never reused */
    plait_aggstore_round_state_t state;
    int64_t started, ended;   /* unix seconds; ended is 0 while open */
    int64_t target_cohort, min_cohort;
    int64_t base_version;     /* version the round trains from; 0 = none */
    int64_t new_version;      /* version it committed; 0 unless committed */
    plait_aggstore_stats_t stats;
    const char *task_config;  /* NUL-terminated JSON object, validated */
    size_t task_config_len;
    const char *reason;       /* why it failed or was abandoned; "" otherwise */
    plait_aggstore_kind_t kind; /* train or evaluate */
} plait_aggstore_round_t;

/**
 * \brief Open a new round.
 * \param target_cohort 1..10^9 devices wanted; min_cohort 1..target_cohort.
 * \param task_config NUL-terminated JSON object (hyper-parameters, LoRA and
 *        DP settings), at most max_task_config_bytes; stored as given.
 * \param base_version The latest version number (0 when there is none).
 * \param round_out OUT: the new round id; must not be NULL.
 * \return 0; PLAIT_EINVAL (bad argument or JSON, or a round is already
 *         open: fail or commit it first); PLAIT_ESTALE (base_version is not
 *         the latest version); PLAIT_ETOOBIG (config too large); PLAIT_EBUSY; PLAIT_EIO.
 */
int plait_aggstore_round_begin(plait_aggstore_t *st, int64_t target_cohort, int64_t min_cohort,
                               const char *task_config, int64_t base_version,
                               int64_t *round_out /* OUT */) PLAIT_WUR;

/**
 * \brief Replace an open round's counters (call as the round progresses).
 * \return 0; PLAIT_ESTALE (round not open); PLAIT_ENOENT; PLAIT_EINVAL
 *         (negative count, bad or duplicate reason); PLAIT_ETOOBIG (more
 *         than max_reasons); PLAIT_EBUSY; PLAIT_EIO.
 */
int plait_aggstore_round_record_stats(plait_aggstore_t *st, int64_t round, const plait_aggstore_stats_t *stats) PLAIT_WUR;

/**
 * \brief Close an open round as failed (too few updates, deadline, ...).
 * \param reason UTF-8 text, may be NULL; cut at PLAIT_AGGSTORE_MAX_REASON bytes.
 * \param stats Final counters, or NULL to keep the recorded ones.
 * \return As plait_aggstore_round_record_stats.
 */
int plait_aggstore_round_fail(plait_aggstore_t *st, int64_t round, const char *reason,
                              const plait_aggstore_stats_t *stats) PLAIT_WUR;

/** Longest mechanism / selection name in a ledger row. */
#define PLAIT_AGGSTORE_LEDGER_NAME 31

/** One privacy ledger row: the DP parameters of one round and ε so far. */
typedef struct plait_aggstore_ledger_s {
    int64_t round_id;          /* filled in by the store on commit */
    double q;                  /* sampling rate in [0, 1] */
    double noise_multiplier;   /* z >= 0, finite */
    int64_t steps;             /* mechanism steps this round composed, >= 1 */
    double delta;              /* in (0, 1) */
    double epsilon;            /* ε spent by the deployment after this round, >= 0 (may be +inf) */
    char mechanism[PLAIT_AGGSTORE_LEDGER_NAME + 1]; /* "gaussian" (noised sum) or "gaussian+clip-count"
                                  (adaptive clipping also releases the noised unclipped count); "" on
                                  input is stored as "unrecorded" */
    double clip;               /* clip bound C of the round, >= 0 (0: not recorded) */
    char selection[PLAIT_AGGSTORE_LEDGER_NAME + 1]; /* "poisson" (each device admitted with probability q)
                                  or "first-come" (rows from before Poisson sampling); "" is stored as
                                  "unrecorded" */
    /* mechanism "ddg" (distributed discrete Gaussian, ddg.h) only; all 0 for other mechanisms: */
    int64_t ddg_dim;           /* d, words of the noised vector, >= 1 */
    double ddg_var;            /* per-device variance v in quantization steps^2, > 0, finite */
    int64_t ddg_n;             /* devices whose noise is in the sum, >= 1 */
    double ddg_l2;             /* L2 sensitivity in steps after rounding, > 0, finite */
} plait_aggstore_ledger_t;

/** A metric: key 1..PLAIT_AGGSTORE_MAX_KEY printable ASCII bytes; value not NaN. */
typedef struct plait_aggstore_metric_s {
    const char *key;
    double value;
} plait_aggstore_metric_t;

/** Everything a round's commit writes (all pointers borrowed for the call). */
typedef struct plait_aggstore_commit_s {
    const uint8_t *adapter;   /* the new global adapter, safetensors bytes */
    size_t adapter_len;       /* 1..max_adapter_bytes */
    const uint8_t *sha256;    /* 32 bytes, or NULL; if given it must match the adapter */
    int lora_rank;            /* 1..PLAIT_AGGSTORE_MAX_RANK */
    double lora_alpha;        /* > 0, finite */
    uint32_t lora_targets;    /* projection mask, 1..0x7f (lora.h plait_proj_t bits) */
    int opt_kind;             /* plait_server_opt_kind_t, 0..255 */
    const float *opt_state;   /* plait_server_opt_export output, finite; NULL if opt_state_len 0 */
    size_t opt_state_len;     /* floats; 4 * opt_state_len <= max_opt_state_bytes */
    const plait_aggstore_stats_t *stats;    /* final counters, or NULL to keep the recorded ones */
    const plait_aggstore_ledger_t *ledger;  /* NULL: the round had no DP */
    const plait_aggstore_metric_t *metrics; /* n_metrics distinct keys */
    size_t n_metrics;         /* 0..max_metrics */
    const char *const *uploaders; /* device ids whose updates the round used (participation counters) */
    size_t n_uploaders;       /* revoked, unknown or already counted ones are skipped, not an error */
} plait_aggstore_commit_t;

/**
 * \brief Commit an open round: in one transaction mark it committed, store
 *        its counters, the next version (number latest + 1), the ledger row
 *        and the metrics. On any error nothing is written and the round
 *        stays open.
 * \param c What to write; see plait_aggstore_commit_t.
 * \param version_out OUT (may be NULL): the new version number.
 * \return 0; PLAIT_ESTALE (round not open, or a version newer than its base
 *         was committed meanwhile); PLAIT_ENOENT (no such round);
 *         PLAIT_EINVAL (bad field, duplicate metric key); PLAIT_EMISMATCH
 *         (sha256 does not match the adapter); PLAIT_ETOOBIG (a blob or count
 *         over its limit); PLAIT_EBUSY; PLAIT_EIO.
 */
int plait_aggstore_round_commit(plait_aggstore_t *st, int64_t round, const plait_aggstore_commit_t *c,
                                int64_t *version_out /* OUT */) PLAIT_WUR;

/**
 * \brief Store the deployment's initial adapter as version 1 (no round),
 *        when the store has no version yet. Uses c's adapter, sha256, LoRA
 *        and optimizer fields; stats, ledger and metrics must be NULL/0.
 * \return 0; PLAIT_EINVAL (a version exists, or bad field); as round_commit.
 */
int plait_aggstore_version_put_initial(plait_aggstore_t *st, const plait_aggstore_commit_t *c) PLAIT_WUR;

/** Round callback: \return 0 to go on; another value stops and is returned. Must not use the store. */
typedef int (*plait_aggstore_round_cb)(void *ud, const plait_aggstore_round_t *r);

/**
 * \brief Call cb with one round.
 * \return cb's value; PLAIT_ENOENT (cb not called); PLAIT_EPROTO (malformed
 *         row, cb not called); PLAIT_EINVAL; PLAIT_EBUSY; PLAIT_EIO.
 */
int plait_aggstore_round_get(plait_aggstore_t *st, int64_t round, plait_aggstore_round_cb cb, void *ud);

/**
 * \brief Call cb for rounds, oldest first, or newest first, at most max_rounds of them (0: all).
 * \return 0; cb's non-zero value; PLAIT_EPROTO (malformed row; earlier rows
 *         were delivered); PLAIT_EINVAL; PLAIT_EBUSY; PLAIT_EIO.
 */
int plait_aggstore_rounds_foreach(plait_aggstore_t *st, bool newest_first, size_t max_rounds,
                                  plait_aggstore_round_cb cb, void *ud);

/* ---- versions --------------------------------------------------------------- */

/** A global adapter version. Value + init/free: the blobs are owned by it. */
typedef struct plait_aggstore_version_s {
    int64_t number;           /* 1, 2, ... */
    int64_t round_id;         /* round that produced it; 0 for the initial version */
    int64_t created;          /* unix seconds */
    uint8_t sha256[32];       /* of adapter; verified on read */
    uint8_t *adapter;         /* adapter_len bytes (owned); NULL in versions_foreach */
    size_t adapter_len;
    int lora_rank;
    double lora_alpha;
    uint32_t lora_targets;
    int opt_kind;
    float *opt_state;         /* opt_state_len floats (owned; NULL when 0); NULL in versions_foreach */
    size_t opt_state_len;
} plait_aggstore_version_t;

/** \brief Make v empty and safe to free. Cannot fail. */
void plait_aggstore_version_init(plait_aggstore_version_t *v);
/** \brief Free the blobs and re-init. NULL and double free are safe. */
void plait_aggstore_version_free(plait_aggstore_version_t *v);

/**
 * \brief Number of the latest version.
 * \param out OUT: 0 when the store has no version.
 * \return 0; PLAIT_EINVAL; PLAIT_EBUSY; PLAIT_EIO.
 */
int plait_aggstore_version_latest_number(plait_aggstore_t *st, int64_t *out /* OUT */) PLAIT_WUR;

/**
 * \brief Read version number (blobs included) into v, which must be
 *        initialized (its old blobs are freed). The adapter is checked
 *        against its SHA-256 and every field validated before return.
 * \return 0; PLAIT_ENOENT; PLAIT_EPROTO (malformed row, blob over the
 *         configured maximum, or adapter not matching its hash: the detail
 *         names the version); PLAIT_ENOMEM; PLAIT_EINVAL; PLAIT_EBUSY;
 *         PLAIT_EIO. On error v is empty.
 */
int plait_aggstore_version_get(plait_aggstore_t *st, int64_t number, plait_aggstore_version_t *v) PLAIT_WUR;

/** \brief As plait_aggstore_version_get for the latest version (PLAIT_ENOENT if none). */
int plait_aggstore_version_latest(plait_aggstore_t *st, plait_aggstore_version_t *v) PLAIT_WUR;

/** Version callback (metadata only: adapter and opt_state are NULL, their lengths set). */
typedef int (*plait_aggstore_version_cb)(void *ud, const plait_aggstore_version_t *v);

/**
 * \brief Call cb for every version, lowest number first, without reading
 *        the blobs (so without verifying their hashes).
 * \return 0; cb's non-zero value; PLAIT_EPROTO; PLAIT_EINVAL; PLAIT_EBUSY; PLAIT_EIO.
 */
int plait_aggstore_versions_foreach(plait_aggstore_t *st, plait_aggstore_version_cb cb, void *ud);

/* ---- privacy ledger and metrics --------------------------------------------- */

/** Ledger callback. \return 0 to go on. Must not use the store. */
typedef int (*plait_aggstore_ledger_cb)(void *ud, const plait_aggstore_ledger_t *row);

/**
 * \brief Call cb for every ledger row, in round order.
 * \return 0; cb's non-zero value; PLAIT_EPROTO; PLAIT_EINVAL; PLAIT_EBUSY; PLAIT_EIO.
 */
int plait_aggstore_ledger_foreach(plait_aggstore_t *st, plait_aggstore_ledger_cb cb, void *ud);

/** Totals of the ledger. */
typedef struct plait_aggstore_privacy_s {
    int64_t rounds;   /* ledger rows (DP rounds committed) */
    int64_t steps;    /* sum of their steps */
    double delta;     /* of the latest row; 0 when there is none */
    double epsilon;   /* ε after the latest row (the deployment's ε so far); 0 when none */
    int64_t poisson_rounds;      /* rows whose selection is "poisson" */
    int64_t ddg_rounds;          /* rows whose mechanism is "ddg" (composed in full, q = 1) */
    int64_t max_device_rounds;   /* most ledger rounds any one device uploaded to (devices.dp_rounds) */
    double min_noise_multiplier; /* smallest z of the ledger; 0 when none */
} plait_aggstore_privacy_t;

/**
 * \brief Totals for the `privacy` report, with what the per-device worst case needs
 *        (max_device_rounds, min_noise_multiplier).
 * \return 0; PLAIT_EPROTO (a malformed row); PLAIT_EINVAL; PLAIT_EBUSY; PLAIT_EIO.
 */
int plait_aggstore_ledger_total(plait_aggstore_t *st, plait_aggstore_privacy_t *out /* OUT */) PLAIT_WUR;

/**
 * \brief Compose every ledger row (q, noise_multiplier, steps) into acc, in
 *        round order, so ε can be recomputed for any δ or method.
 * \param acc Initialized with plait_accountant_init; unchanged on error.
 * \return 0; PLAIT_EPROTO; PLAIT_EINVAL; PLAIT_EBUSY; PLAIT_EIO.
 */
int plait_aggstore_ledger_compose(plait_aggstore_t *st, plait_accountant_t *acc) PLAIT_WUR;

/**
 * \brief Add or replace metrics of an existing round (any state), atomically.
 * \return 0; PLAIT_ENOENT (no such round); PLAIT_EINVAL; PLAIT_ETOOBIG
 *         (the round would have more than max_metrics); PLAIT_EBUSY; PLAIT_EIO.
 */
int plait_aggstore_metrics_put(plait_aggstore_t *st, int64_t round, const plait_aggstore_metric_t *m,
                               size_t n) PLAIT_WUR;

/** Metric callback (key valid during the call). \return 0 to go on. Must not use the store. */
typedef int (*plait_aggstore_metric_cb)(void *ud, int64_t round, const plait_aggstore_metric_t *m);

/**
 * \brief Call cb for a round's metrics in key order.
 * \return 0; cb's non-zero value; PLAIT_EPROTO; PLAIT_EINVAL; PLAIT_EBUSY; PLAIT_EIO.
 */
int plait_aggstore_metrics_foreach(plait_aggstore_t *st, int64_t round, plait_aggstore_metric_cb cb, void *ud);

/* ---- tests only ------------------------------------------------------------- */

/**
 * \brief Make the next round_commit (or version_put_initial) fail with
 *        PLAIT_EIO after its step-th write inside the transaction (1: round
 *        row, 2: rejections, 3: version, 4: ledger, 5: metrics), to prove
 *        atomicity. 0 disables. Not for production use.
 */
void plait__aggstore_inject_commit_fault(plait_aggstore_t *st, int step);

/* ---- federated evaluation ---------------------------------------------------- */

/** One committed evaluation: the mean of the devices' clipped held-out losses. */
typedef struct plait_aggstore_eval_s {
    int64_t round_id; /* the evaluation round */
    int64_t version;  /* the version evaluated, >= 1 */
    int64_t created;  /* unix seconds */
    int64_t devices;  /* devices in the mean, >= the round's min_cohort */
    double mean_loss; /* mean of min(loss, loss_max) over them, in [0, loss_max] */
    double loss_max;  /* L, the clip of each device's loss */
} plait_aggstore_eval_t;

/**
 * \brief Open an evaluation round of version (the latest, >= 1): a rounds
 *        row of kind evaluate. As plait_aggstore_round_begin otherwise.
 */
int plait_aggstore_eval_begin(plait_aggstore_t *st, int64_t target_cohort, int64_t min_cohort,
                              const char *task_config, int64_t version, int64_t *round_out /* OUT */) PLAIT_WUR;

/**
 * \brief Commit an open evaluation round: its state, counters and one evals
 *        row, in one transaction. No version, ledger row or device counter.
 * \param devices    devices in the mean, at least the round's min_cohort.
 * \param mean_loss  finite, in [0, loss_max].
 * \param stats      final counters, or NULL to keep the recorded ones.
 * \return 0; PLAIT_ESTALE (round not open); PLAIT_ENOENT; PLAIT_EINVAL (a
 *         training round, too few devices, a bad value); PLAIT_EBUSY; PLAIT_EIO.
 */
int plait_aggstore_eval_commit(plait_aggstore_t *st, int64_t round, int64_t devices, double mean_loss,
                               double loss_max, const plait_aggstore_stats_t *stats) PLAIT_WUR;

/**
 * \brief Ask the running service for one evaluation round (`plait-aggregator
 *        evaluate`): a meta row the service takes when it opens its next round.
 *        Asking twice before it is taken asks once.
 * \return 0; PLAIT_EINVAL; PLAIT_EBUSY; PLAIT_EIO.
 */
int plait_aggstore_eval_request(plait_aggstore_t *st) PLAIT_WUR;

/** \brief Take (and clear) the request: *requested says whether there was one. \return as above. */
int plait_aggstore_eval_take_request(plait_aggstore_t *st, bool *requested /* OUT */) PLAIT_WUR;

typedef int (*plait_aggstore_eval_cb)(void *ud, const plait_aggstore_eval_t *e);

/**
 * \brief Call cb for committed evaluations by round id (newest first if asked),
 *        at most max_rows (0: all); a nonzero return from cb stops and is returned.
 * \return 0; PLAIT_EPROTO (a malformed row); PLAIT_EINVAL; PLAIT_EBUSY; PLAIT_EIO.
 */
int plait_aggstore_evals_foreach(plait_aggstore_t *st, bool newest_first, size_t max_rows,
                                 plait_aggstore_eval_cb cb, void *ud);

#endif /* PLAIT_AGGSTORE_H */
