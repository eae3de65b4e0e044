/*
 * aggcfg.h: the aggregator service's configuration (`DIR/aggregator.conf`).
 *
 * One struct holds every setting of `plait-aggregator serve`; a table in
 * aggregator/config.c names each one, its type, range, default and a comment,
 * so the defaults, the file parser, the `--set key=value` flags and the
 * commented file written by `init` cannot drift apart. Precedence is
 * defaults < file < flags (STYLE.md §8).
 *
 * File format: one `key = value` per line; `#` starts a comment (outside a
 * value in double quotes); blank lines are ignored; strings may be bare or
 * "double-quoted". Parsing is strict: an unknown key, a key given twice, a
 * value of the wrong type or out of range is an error that names the file's
 * line number ("aggregator.conf:12: clip_norm: want a number > 0").
 *
 * Example:
 *     plait_aggcfg_t c;
 *     plait_aggcfg_default(&c);
 *     if ((rc = plait_aggcfg_load(&c, "dep/aggregator.conf")) != 0) die(plait_errmsg());
 *     if ((rc = plait_aggcfg_set(&c, "port=0")) != 0) die(plait_errmsg());   // a flag
 *     if ((rc = plait_aggcfg_validate(&c)) != 0) die(plait_errmsg());
 *
 * Thread-safety: reentrant; a config is used by one thread at a time.
 */
#ifndef PLAIT_AGGCFG_H
#define PLAIT_AGGCFG_H

#include <stdint.h>
#include <stdio.h>

#include "plait/plait.h"

/** Longest string setting (paths, addresses, names), bytes. */
#define PLAIT_AGGCFG_STR_MAX 255
/** Longest configuration file accepted, bytes. */
#define PLAIT_AGGCFG_FILE_MAX (256 * 1024)
/** File name of the configuration inside a deployment directory. */
#define PLAIT_AGGCFG_FILE "aggregator.conf"

/** Every setting of the service. Defaults are in plait_aggcfg_default() and in the table of config.c. */
typedef struct {
    /* network */
    char listen_addr[PLAIT_AGGCFG_STR_MAX + 1];  /**< address the federation port binds (default 127.0.0.1) */
    uint64_t port;                               /**< federation TCP port; 0 = any free port (default 7443) */
    char metrics_addr[PLAIT_AGGCFG_STR_MAX + 1]; /**< address of the metrics endpoint (default 127.0.0.1) */
    uint64_t metrics_port;                       /**< Prometheus port; 0 = any free port (default 9464) */
    int metrics_enabled;                         /**< serve /metrics at all (default 1) */
    char port_file[PLAIT_AGGCFG_STR_MAX + 1];    /**< write the bound ports here as JSON once listening ("" = no) */
    /* limits */
    uint64_t max_connections;     /**< open connections at once; more are closed at accept (default 256) */
    uint64_t max_preauth_connections; /**< before their Hello, at once; <= 3/4 max_connections (default 64) */
    uint64_t max_preauth_per_addr;    /**< before their Hello from one IP address (default 8) */
    uint64_t max_frame;           /**< largest frame after Hello, bytes (default 1 MiB + 4 KiB) */
    uint64_t max_preauth_frame;   /**< largest frame before Hello is accepted (default 4 KiB) */
    uint64_t max_chunk_bytes;     /**< adapter/update bytes per chunk (default 256 KiB) */
    uint64_t max_update_elements; /**< largest update accepted, words (default 2^24) */
    uint64_t max_uploads_in_flight; /**< update buffers held at once (uploads being received, and updates
                                         held until training starts); more uploads wait unread (default 16) */
    uint64_t max_send_queue;      /**< ciphertext queued beyond what sockets take, all connections, bytes (default 2 MiB) */
    int packed_updates;        /**< plain tasks say packed_update: devices may send UpdateChunks packed at
                                    quant_bits (default 1; words are accepted either way) */
    uint64_t min_upload_rate;     /**< bytes/s an upload holding a buffer must bring per window while others wait (default 8192; 0 = off) */
    double upload_grace_s;        /**< ... that window (default 10 s) */
    double auth_timeout_s;        /**< TLS handshake + Hello must finish within this (default 5 s) */
    double idle_timeout_s;        /**< close a connection silent this long (default 90 s, as protocol.md) */
    uint64_t tls_ticket_lifetime_s; /**< session resumption window (default 86400 s; 0 = no tickets) */
    /* model and task */
    char base_model[PLAIT_AGGCFG_STR_MAX + 1]; /**< checkpoint the adapters are for (required) */
    uint64_t lora_rank;           /**< R (default 4) */
    double lora_alpha;            /**< alpha (default 8) */
    char lora_targets[PLAIT_AGGCFG_STR_MAX + 1]; /**< projections, "wq,wv" (default) */
    char lora_mode[16];           /**< ffa, fedit or fedsa (default ffa) */
    uint64_t a_seed;              /**< seed of the LoRA A matrices (default 1) */
    uint64_t local_steps;         /**< device training steps per round (default 8) */
    uint64_t batch;               /**< B (default 2) */
    uint64_t seq_len;             /**< T (default 32) */
    double lr;                    /**< device learning rate (default 0.01) */
    double prox_mu;               /**< FedProx: devices add (mu/2)|w - w_global|^2 to their local objective
                                       (default 0: off) */
    double clip_norm;             /**< S: L2 bound of an update (default 1) */
    uint64_t quant_bits;          /**< b (default 16) */
    double quant_range;           /**< R of quantization, >= clip_norm (default 1) */
    uint64_t example_cap;         /**< weight = min(examples, cap) / cap (default 64) */
    uint64_t download_delta_keep; /**< previous versions kept for download deltas (default 2; 0: full downloads only) */
    uint64_t download_delta_bits; /**< 0: exact deltas (default); 8 or 16: each version is committed as the previous
                                       one plus a delta quantized to this many bits per element */
    /* rounds */
    uint64_t target_cohort;       /**< updates wanted per round (default 8) */
    uint64_t min_cohort;          /**< fewer at the deadline fail the round (default 2) */
    double overselect;            /**< select ceil(target * overselect) devices (default 1.25) */
    double selection_timeout_s;   /**< selection closes after this (default 60 s) */
    double round_timeout_s;       /**< updates are due this long after training starts (default 600 s) */
    double rejoin_grace_s;        /**< a selected device that disconnects may resume this long before it is a dropout (default 10 s) */
    double round_pause_s;         /**< wait between the end of a round and the next (default 0 s) */
    uint64_t retry_ms;            /**< come-back-later delay when no round is selecting (default 5000) */
    uint64_t pace_rounds;         /**< a device that took part in the last N rounds is told to come back later (default 0: off) */
    char server_opt[16];          /**< fedavg, fedadagrad, fedadam, fedyogi or fedavgm (default fedavg) */
    double server_lr;             /**< server learning rate (default 1) */
    double server_momentum;       /**< fedavgm's server momentum, the adaptive optimizers' beta1 (default 0.9) */
    char aggregation[16];         /**< mean, median or trimmed_mean (default mean; the robust ones need
                                       secure_agg = false and dp = none) */
    double trim_fraction;         /**< trimmed_mean: fraction dropped at each end per coordinate (default 0.1) */
    /* differential privacy */
    char dp[16];                  /**< none or central (default none) */
    double noise_multiplier;      /**< z of central DP (default 1) */
    uint64_t population;          /**< devices sampled from, for q = target / population (default 0: the
                                       enrolled, non-revoked devices; serve refuses more than that) */
    double sampling_rate;         /**< q with dp = central (default 0: target_cohort / population) */
    int adaptive_clip;            /**< adaptive clipping, Andrew et al. 2021 (default 0; needs dp = central) */
    double clip_target_quantile;  /**< fraction of updates left unclipped (default 0.5) */
    double clip_lr;               /**< geometric learning rate of the clip (default 0.2) */
    double clip_count_stddev;     /**< noise std of the unclipped count (default 0: target_cohort / 20) */
    double dp_delta;              /**< δ of the reported ε; 0 = 1 / population^1.1 (default 0) */
    /* secure aggregation (SecAgg+, docs/protocol.md §9) */
    int secure_agg;                /**< the aggregator sees only the sum of a round's updates (default 1) */
    double secagg_stage_timeout_s; /**< advertise, share and unmask stages each close after this (default 30 s) */
    double secagg_dropout;         /**< fraction of the cohort the graph and threshold tolerate dropping (default 0.3) */
    double secagg_corrupt;         /**< fraction of devices assumed to collude with the server (default 0) */
    double secagg_sigma;           /**< failure probability 2^-sigma of the parameter choice (default 20) */
    /* federated evaluation (docs/operator-guide.md; needs secure_agg and dp = none) */
    uint64_t eval_every;           /**< an evaluation round after every N committed training rounds (default 0: off) */
    double eval_loss_max;          /**< L: each device's held-out loss is clipped to L before it is summed (default 10) */
    /* operations */
    char log_level[16];           /**< debug, info, warn or error (default info) */
} plait_aggcfg_t;

/**
 * \brief Whether c allows federated evaluation rounds: secure_agg = true (the
 *        aggregator sees only the sum of >= min_cohort clipped losses) and
 *        dp = none (under DP the metric would be released without noise and
 *        without a ledger row).
 * \return 0, or PLAIT_EINVAL with the reason in plait_errmsg().
 */
int plait_aggcfg_eval_allowed(const plait_aggcfg_t *c);

/** \brief Fill c with the defaults documented on each field. Cannot fail. */
void plait_aggcfg_default(plait_aggcfg_t *c);

/**
 * \brief Read and apply a configuration file on top of c (strict; see above).
 * \param path not NULL.
 * \return 0; PLAIT_ENOENT (no such file); PLAIT_EIO; PLAIT_ETOOBIG (file over
 *         PLAIT_AGGCFG_FILE_MAX); PLAIT_EPROTO ("path:line: why" in
 *         plait_errmsg()); PLAIT_ENOMEM. On error c may be partly updated.
 */
int plait_aggcfg_load(plait_aggcfg_t *c, const char *path) PLAIT_WUR;

/**
 * \brief Parse configuration text (as plait_aggcfg_load(); name is used in errors).
 * \return 0 or PLAIT_EPROTO naming name:line.
 */
int plait_aggcfg_parse(plait_aggcfg_t *c, const char *text, size_t len, const char *name) PLAIT_WUR;

/**
 * \brief Apply one "key=value" (a command-line `--set`), same checks as a file line.
 * \return 0 or PLAIT_EINVAL naming the key.
 */
int plait_aggcfg_set(plait_aggcfg_t *c, const char *kv) PLAIT_WUR;

/**
 * \brief Cross-field checks (min_cohort <= target_cohort, quant_range >=
 *        clip_norm, known enum names, base_model set, population with dp, ...).
 * \return 0 or PLAIT_EINVAL naming the setting.
 */
int plait_aggcfg_validate(const plait_aggcfg_t *c) PLAIT_WUR;

/**
 * \brief dp = distributed: each device's discrete Gaussian variance in
 *        quantization steps^2, v = (z · clip_norm / step)^2 / min_cohort
 *        (so a committed round, which has at least min_cohort survivors,
 *        carries a sum noise of at least z times the clip), rounded up to
 *        num/den (plait_ddg_variance()).
 * \return 0; PLAIT_EINVAL (v outside the sampler's range).
 */
int plait_aggcfg_ddg_variance(const plait_aggcfg_t *c, uint64_t *num /* OUT */, uint64_t *den /* OUT */) PLAIT_WUR;

/**
 * \brief Write every setting with its comment and current value, in the
 *        file format above (what `init` writes; it parses back to c).
 * \return 0 or PLAIT_EIO.
 */
int plait_aggcfg_write(const plait_aggcfg_t *c, FILE *f) PLAIT_WUR;

#endif /* PLAIT_AGGCFG_H */
