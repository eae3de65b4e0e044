/*
 * round.h: the federated round state machine, with no I/O and no clock.
 *
 * One plait_round_t drives the rounds of one federated task. It holds the
 * global span (the part of the LoRA arena the task's mode trains and
 * averages, see plait_update_span()), the server optimizer, the optional
 * central-DP state and the privacy accountant. The caller turns events into
 * calls ("client checked in", "update received", "client dropped", "time is
 * now t") and reads back decisions (the state, the stats). Time is a double
 * in seconds passed in by the caller: the simulator passes simulated time,
 * the service wall-clock time. Randomness (DP noise) comes from a
 * caller-supplied plait_rng_t.
 *
 * States and transitions:
 *
 *     IDLE/FAILED --open--> SELECTION --(cohort full | start | selection timeout)--> TRAINING
 *     SELECTION --(fewer than min_cohort selected at start/timeout)--> FAILED
 *     TRAINING --(target accepted | everyone accounted for | deadline, with >= min_cohort)--> AGGREGATION
 *     TRAINING --(deadline or everyone accounted for, with < min_cohort accepted)--> FAILED
 *     AGGREGATION --aggregate--> COMMIT --commit--> IDLE (global version + 1)
 *     any --abort--> FAILED (the global adapter is untouched)
 *
 * Selection takes ceil(target_cohort * overselect) clients, so that the
 * round still reaches its target when some drop out or straggle (Bonawitz
 * et al. 2019, "Towards federated learning at scale"). A round that closes
 * with fewer than min_cohort accepted updates fails cleanly: nothing is
 * averaged, no privacy is spent, and the next round starts from the same
 * global adapter.
 *
 * Updates arrive in one of two forms, fixed per task by the config:
 *   - quantized (default): P + 1 uint32 words per client, the quantized
 *     weighted update w·x then the weight word (update.h). The core keeps only
 *     their sum mod 2^32, so the result does not depend on arrival order and
 *     is exactly what secure aggregation would reveal; unless the words are
 *     masked (secure = 1), each update is first decoded alone and checked
 *     (word range, weight, L2 norm within clip + quantization slack);
 *   - float: P floats and an example count, folded with plait_fedavg_add()
 *     (length, finiteness, weight and norm checks). The double sums depend
 *     on the order of arrival, so a caller that wants bit-exact replays
 *     submits in a fixed order.
 * Duplicate updates, updates for another round and updates after the round
 * closed are refused with PLAIT_ESTALE; updates from clients that were not
 * selected with PLAIT_ENOENT. Every refusal is counted by reason.
 *
 * Aggregation: average (sum / weight, or DP-FedAvg's noised fixed-denominator
 * estimate when dp is on) → server optimizer step (FedAvg, FedAdagrad,
 * FedAdam, FedYogi) on the global span at commit. With DP, the accountant
 * composes one Poisson-subsampled Gaussian step per committed round at
 * q = target_cohort / population.
 *
 * Worked example (one round, quantized updates):
 *
 *     plait_round_config_t rc;
 *     plait_round_config_default(&rc);
 *     rc.dim = len; rc.target_cohort = 100; rc.min_cohort = 50; rc.population = 10000;
 *     plait_round_t *r;
 *     plait_round_create(&r, &rc, global_span, len);
 *     uint64_t rid;
 *     plait_round_open(r, now, &rid);
 *     while (plait_round_state(r) == PLAIT_ROUND_SELECTION && client checks in)
 *         plait_round_select(r, client_id, now);        // PLAIT_EBUSY once full
 *     ...  plait_round_submit_words(r, client_id, rid, words, len + 1, unclipped, now);
 *     ...  plait_round_dropout(r, client_id, rid, now);
 *     plait_round_tick(r, now);                          // deadlines
 *     if (plait_round_state(r) == PLAIT_ROUND_AGGREGATION) {
 *         plait_round_aggregate(r, &rng);
 *         plait_round_commit(r);                         // plait_round_global(r) is the new span
 *     }
 *
 * Thread-safety: one object per thread (the service keeps it on its loop
 * thread; the simulator on its main thread).
 */
#ifndef PLAIT_ROUND_H
#define PLAIT_ROUND_H

#include "plait/agg.h"
#include "plait/plait.h"
#include "plait/privacy.h"
#include "plait/rng.h"
#include "plait/update.h"

struct plait_strategy_inst_s; /* strategy.h */

/** Hard ceiling on clients selected in one round. */
#define PLAIT_ROUND_MAX_COHORT ((size_t)1 << 22)

typedef enum {
    PLAIT_ROUND_IDLE = 0,        /**< no round open; open() starts one */
    PLAIT_ROUND_SELECTION = 1,   /**< clients are being selected */
    PLAIT_ROUND_TRAINING = 2,    /**< selected clients train; updates are accepted */
    PLAIT_ROUND_AGGREGATION = 3, /**< closed with enough updates; call aggregate() */
    PLAIT_ROUND_COMMIT = 4,      /**< the next global span is computed; call commit() */
    PLAIT_ROUND_FAILED = 5       /**< the last round failed (too few clients or updates, or aborted) */
} plait_round_state_t;

/** \brief Name of a state ("training"), or "unknown". */
const char *plait_round_state_name(plait_round_state_t s);

typedef struct {
    size_t dim;                 /**< P, length of the global span (no default: 0 is invalid) */
    size_t target_cohort;       /**< updates wanted per round; the round closes when it has them (default 10) */
    size_t min_cohort;          /**< fewer accepted updates at the deadline fail the round (default 2) */
    double overselect;          /**< select ceil(target·overselect) clients, >= 1 (default 1.3) */
    double selection_timeout_s; /**< selection ends this long after open (default 60 s) */
    double round_timeout_s;     /**< updates are due this long after training starts (default 600 s) */
    int quantized;              /**< 1: updates are P + 1 quantized words; 0: P floats (default 1) */
    int secure;                 /**< 1: words are masked, only their sum can be checked (default 0) */
    int check_norm;             /**< 1: refuse updates whose norm exceeds the clip bound (default 1; turn
                                     off when clients add local noise, which lengthens updates) */
    plait_quant_config_t quant; /**< quantization of the task (default 16 bits, range 1) */
    double clip_norm;           /**< S, the client clip bound when dp is off (default 1.0) */
    double weight_cap;          /**< float updates: weight = min(examples, cap) / cap (default 1000) */
    plait_server_opt_config_t opt; /**< server optimizer (default FedAvg, lr 1) */
    int robust;                 /**< 1: aggregate() takes the coordinate-wise robust_kind of the accepted
                                     updates (each unweighted) instead of their weighted mean. The core then
                                     holds every update of the round (robust.c, 1 GiB at most), so it needs
                                     updates it can read one by one: not secure, not dp, not ddg, not
                                     poisson (default 0) */
    plait_robust_kind_t robust_kind; /**< PLAIT_ROBUST_MEDIAN or PLAIT_ROBUST_TRIMMED_MEAN (default median) */
    double trim_fraction;       /**< trimmed mean: drop this fraction at each end per coordinate, [0, 0.5)
                                     (default 0.1) */
    const struct plait_strategy_inst_s *strategy; /**< borrowed, outlives the core: when set, commit applies
                                     strategy->s->aggregate (strategy.h) instead of opt, and the
                                     optimizer state export is empty (default NULL) */
    int dp;                     /**< central DP-FedAvg with uniform weights (default 0) */
    plait_dp_config_t dp_cfg;   /**< DP settings; expected_weight 0 means target_cohort (default plait_dp_config_default) */
    int ddg;                    /**< distributed DP (ddg.h): every secure update already carries the device's
                                     N_Z(0, ddg_var) noise in each span word; the sum (mod 2^32: the ring
                                     has m = 32) is decoded centred, with no server noise, and ε composes
                                     KLS21 with the accepted count. Needs secure, quantized, not dp (default 0) */
    double ddg_var;             /**< per-device variance in quantization steps^2, > 0 with ddg */
    size_t population;          /**< N, clients eligible for sampling; q = target / N (default 0: required with dp) */
    double dp_delta;            /**< δ for the reported ε (default 0: 1 / N^1.1, below 1/N as usual) */
    int poisson;                /**< 1: the caller Poisson-samples the cohort (selection.h): the cohort is
                                     every client it selects, up to min(population, the sum's wrap limit);
                                     training starts at the selection timeout (or when that cap is reached);
                                     the round does not close at target_cohort accepted updates, only when
                                     every selected client is accounted for or at the deadline; the
                                     accountant composes the round's sample rate (default 0: first come,
                                     ceil(target · overselect) clients, q = target / population) */
    double sample_rate;         /**< q of the next round with poisson, in (0, 1]; change it between rounds
                                     with plait_round_set_sample_rate() (default 1) */
    int clip_bit;               /**< 1: quantized updates carry one more word, the client's bit "norm <=
                                     clip" encoded as a weight word; aggregate() decodes the sum of those
                                     words as the unclipped count for adaptive DP (the `unclipped`
                                     arguments are then ignored); without secure each word must be 0 or 1
                                     (default 0) */
} plait_round_config_t;

/** Per-round counters; a fresh set per open(). */
typedef struct {
    uint64_t round_id;
    plait_round_state_t state; /**< state now (FAILED or IDLE after the round ended) */
    int committed;             /**< 1 once commit() produced a new global version */
    size_t want;               /**< clients to select: ceil(target · overselect) */
    size_t selected;
    size_t accepted;           /**< updates folded into the average */
    size_t dropouts;           /**< selected clients reported gone */
    size_t stragglers;         /**< selected, neither accepted nor dropped nor refused when the round closed */
    size_t unclipped;          /**< accepted updates whose client reported norm <= clip (adaptive DP) */
    size_t rej_stale;          /**< PLAIT_ESTALE: another round's id */
    size_t rej_duplicate;      /**< PLAIT_ESTALE: second update of a client */
    size_t rej_late;           /**< PLAIT_ESTALE: after the round closed */
    size_t rej_unknown;        /**< PLAIT_ENOENT: client not selected */
    size_t rej_length;         /**< PLAIT_EMISMATCH: wrong number of values */
    size_t rej_malformed;      /**< PLAIT_EPROTO / PLAIT_EINVAL: bad word, weight or non-finite value */
    size_t rej_norm;           /**< PLAIT_ETOOBIG: norm above the bound */
    uint64_t bytes_down;       /**< global span sent to selected clients: selected · P · 4 */
    uint64_t bytes_up;         /**< update bytes received, refused ones included */
    double t_open, t_train, t_close; /**< caller's times of open, start of training, close */
    double clip_used;          /**< clip bound of the round */
    double clip_next;          /**< DP: the clip bound the next round uses (adaptive clipping moves it; set by
                                    aggregate, 0 before) */
    double noise_stddev;       /**< DP noise std per averaged coordinate (0 without DP) */
    double epsilon;            /**< ε spent after this round (0 without DP) */
    double sample_rate;        /**< q the accountant composes for this round (0 without DP) */
    double noise_multiplier;   /**< central DP: the multiplier the accountant composes for this round:
                                    the configured one × clip / (clip + √P·step), since stochastic
                                    rounding lets a quantized update's norm reach clip + √P·step
                                    (plait_quant_norm_slack; privacy.md §2.4; float updates: the
                                    configured one); 0 without DP */
} plait_round_stats_t;

typedef struct plait_round_s plait_round_t;

/** \brief Fill cfg with the commented defaults (dim 0: must be set). */
void plait_round_config_default(plait_round_config_t *cfg);
/** \brief \return 0 or PLAIT_EINVAL naming the bad field; PLAIT_ETOOBIG when the selected cohort
 *         could wrap the mod-2^32 sum or exceeds PLAIT_ROUND_MAX_COHORT. */
int plait_round_config_validate(const plait_round_config_t *cfg);

/**
 * \brief Create the round machine for a task.
 * \param out    receives the object (NULL on failure); free with plait_round_destroy().
 * \param cfg    validated here; copied.
 * \param global the initial global span, n == cfg->dim floats; copied.
 * \return 0; PLAIT_EINVAL / PLAIT_ETOOBIG (config; non-finite global); PLAIT_EMISMATCH (n); PLAIT_ENOMEM.
 */
int plait_round_create(plait_round_t **out /* OUT */, const plait_round_config_t *cfg, const float *global,
                       size_t n) PLAIT_WUR;
/** \brief Free. NULL is safe. */
void plait_round_destroy(plait_round_t *r);

/** \brief Current state. */
plait_round_state_t plait_round_state(const plait_round_t *r);
/** \brief The committed global span (dim floats); valid until the next commit or destroy. */
const float *plait_round_global(const plait_round_t *r);
/**
 * \brief Replace the global span just committed by a nearby one (the aggregator
 *        commits prev + a quantized download delta, plait/delta.h); the
 *        optimizer and DP state are untouched.
 * \return 0; PLAIT_EINVAL (NULL, a non-finite value); PLAIT_EMISMATCH (n);
 *         PLAIT_ESTALE (not right after a commit).
 */
int plait_round_replace_global(plait_round_t *r, const float *g, size_t n) PLAIT_WUR;
/** \brief Number of committed global versions (0 before the first commit). */
uint64_t plait_round_version(const plait_round_t *r);
/** \brief The clip bound clients must use in the current (or next) round. */
double plait_round_clip(const plait_round_t *r);
/**
 * \brief Set q of the next round (poisson configs; the service recounts its population per round).
 * \return 0; PLAIT_EINVAL (q not in (0, 1], or not poisson); PLAIT_EBUSY (a round is open).
 */
int plait_round_set_sample_rate(plait_round_t *r, double q) PLAIT_WUR;
/** \brief The quantization config clients must use. */
const plait_quant_config_t *plait_round_quant(const plait_round_t *r);
/** \brief Copy the counters of the current (or last) round. */
void plait_round_stats(const plait_round_t *r, plait_round_stats_t *st /* OUT */);
/** \brief ε spent so far at the configured δ (0 without DP). */
double plait_round_epsilon(const plait_round_t *r);
/** \brief δ the ε refers to. */
double plait_round_delta(const plait_round_t *r);

/** \brief Floats of server-optimizer state (0 for FedAvg; 2·dim for the adaptive ones). */
size_t plait_round_opt_state_len(const plait_round_t *r);
/**
 * \brief Copy the server optimizer's state (moments) out, so the service can
 *        persist it with the version it produced. Call between rounds.
 * \return 0; PLAIT_EMISMATCH if n != plait_round_opt_state_len(); PLAIT_EINVAL.
 */
int plait_round_opt_export(const plait_round_t *r, float *out, size_t n) PLAIT_WUR;
/**
 * \brief Restore the server optimizer's state after a restart.
 * \return 0; PLAIT_EMISMATCH (wrong length); PLAIT_EPROTO (a non-finite value); PLAIT_EINVAL.
 */
int plait_round_opt_import(plait_round_t *r, const float *in, size_t n) PLAIT_WUR;

/**
 * \brief Open the next round (from IDLE or FAILED).
 * \param round_id OUT (may be NULL): the new round's id (1, 2, ...).
 * \return 0; PLAIT_EBUSY (a round is in progress).
 */
int plait_round_open(plait_round_t *r, double now, uint64_t *round_id /* OUT */) PLAIT_WUR;

/**
 * \brief Add a client to the cohort. When the cohort reaches want, training
 *        starts at once (deadline now + round_timeout_s).
 * \return 0; PLAIT_EBUSY (cohort full or not selecting: come back later);
 *         PLAIT_EINVAL (already selected).
 */
int plait_round_select(plait_round_t *r, uint64_t client, double now) PLAIT_WUR;

/**
 * \brief End selection now: TRAINING if at least min_cohort were selected, FAILED otherwise.
 * \return 0 (read the state); PLAIT_ESTALE (not selecting).
 */
int plait_round_start(plait_round_t *r, double now) PLAIT_WUR;

/**
 * \brief A quantized update: n_words = dim + 1 words (w·x quantized, then the weight word), + 1
 *        clip-bit word when cfg.clip_bit.
 * \param unclipped 1 if the client's norm was <= the clip before clipping (adaptive DP), else 0.
 * \return 0 (accepted; the state may have moved to AGGREGATION); PLAIT_ESTALE (stale round,
 *         duplicate, or late); PLAIT_ENOENT (not selected); PLAIT_EMISMATCH (length);
 *         PLAIT_EPROTO (word out of range); PLAIT_EINVAL (zero weight, NULL, or float mode);
 *         PLAIT_ETOOBIG (norm).
 */
int plait_round_submit_words(plait_round_t *r, uint64_t client, uint64_t round_id, const uint32_t *words,
                             size_t n_words, int unclipped, double now) PLAIT_WUR;

/**
 * \brief plait_round_submit_words() for an update kept as it arrived: n_words words of wb
 *        bytes each, little-endian (1 <= wb <= 4; the aggregator buffers wb = ceil(bits / 8)),
 *        read in place, with the same checks and results (the norm check's sum of squares is
 *        exact for wb <= 2, see plait_quant_add_checked_narrow()).
 * \return as plait_round_submit_words(); PLAIT_EINVAL for wb outside 1..4.
 */
int plait_round_submit_narrow(plait_round_t *r, uint64_t client, uint64_t round_id, const uint8_t *b, unsigned wb,
                              size_t n_words, int unclipped, double now) PLAIT_WUR;

/**
 * \brief Secure aggregation: count a client's masked update (dim + 1 masked
 *        words that the caller sums outside the core, see server_secagg.c).
 *        Nothing is checked but its length: the device's clip is the bound.
 *        Until plait_round_set_unmasked_sum() gives the unmasked sum,
 *        plait_round_aggregate() refuses (PLAIT_ESTALE).
 * \return as plait_round_submit_words(); PLAIT_EINVAL when the task is not secure.
 */
int plait_round_submit_masked(plait_round_t *r, uint64_t client, uint64_t round_id, size_t n_words,
                              double now) PLAIT_WUR;

/**
 * \brief Secure aggregation: the unmasked sum (dim + 1 words, the sum mod 2^m
 *        of the accepted clients' words with m wide enough not to wrap) of the
 *        masked updates counted in this round. Call in AGGREGATION, before
 *        plait_round_aggregate().
 * \return 0; PLAIT_ESTALE (not aggregating), PLAIT_EMISMATCH (length), PLAIT_EINVAL.
 */
int plait_round_set_unmasked_sum(plait_round_t *r, const uint32_t *sum, size_t n_words) PLAIT_WUR;

/**
 * \brief A float update of dim values (clipped Δ) and the client's example count.
 * \return as plait_round_submit_words(), with plait_fedavg_add()'s codes for bad updates
 *         (PLAIT_EMISMATCH, PLAIT_EINVAL, PLAIT_ETOOBIG).
 */
int plait_round_submit_float(plait_round_t *r, uint64_t client, uint64_t round_id, const float *u, size_t n,
                             double examples, int unclipped, double now) PLAIT_WUR;

/**
 * \brief A selected client is gone (disconnected, battery...).
 * \return 0; PLAIT_ESTALE (another round, or closed); PLAIT_ENOENT (not selected).
 */
int plait_round_dropout(plait_round_t *r, uint64_t client, uint64_t round_id, double now) PLAIT_WUR;

/**
 * \brief Let time pass: ends selection at its timeout and training at its deadline.
 * \return 0 (read the state).
 */
int plait_round_tick(plait_round_t *r, double now);

/**
 * \brief Average the accepted updates (DP noise if on) into the pending step.
 * \param rng DP noise source (unused without DP; may then be NULL).
 * \return 0 (state COMMIT); PLAIT_ESTALE (not in AGGREGATION); PLAIT_EINVAL (dp without rng);
 *         a decode error of the sum (PLAIT_EPROTO, PLAIT_ETOOBIG): the round then FAILED.
 */
int plait_round_aggregate(plait_round_t *r, plait_rng_t *rng) PLAIT_WUR;

/**
 * \brief Apply the pending step with the server optimizer; the new global
 *        version is then plait_round_global(); the accountant composes the round.
 * \return 0 (state IDLE); PLAIT_ESTALE (not in COMMIT); PLAIT_EINVAL (the step was not finite:
 *         round FAILED, global unchanged).
 */
int plait_round_commit(plait_round_t *r) PLAIT_WUR;

/** \brief Abandon the round in progress (global, optimizer and DP state untouched). State FAILED. */
void plait_round_abort(plait_round_t *r, double now);

#endif /* PLAIT_ROUND_H */
