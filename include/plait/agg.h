/*
 * agg.h: the aggregator's arithmetic core. No I/O, no sockets, no sqlite:
 * the service (aggregator/server.c) feeds it updates and asks for results.
 *
 * Pieces, each usable alone:
 *   - plait_fedavg_t:  streaming weighted federated averaging in O(P) memory
 *                      (one double accumulator per parameter), with checks
 *                      that reject and count bad updates;
 *   - plait_agg_decode_secure_sum(): the secure-aggregation path, where only
 *                      the mod-2^32 sum of quantized, masked words is seen;
 *   - plait_server_opt_t: FedAvg / FedAdagrad / FedAdam / FedYogi applied to
 *                      the averaged update (Reddi et al. 2021), state exportable;
 *   - plait_robust_t:  coordinate-wise median and trimmed mean (these keep
 *                      every update: O(m·P) memory; plaintext deployments only);
 *   - plait_dp_t:      central DP for DP-FedAvg (McMahan et al. 2018) with
 *                      adaptive clipping (Andrew et al. 2021).
 *
 * A round with central DP, in order:
 *
 *     plait_fedavg_create(&fa, &fcfg);          // fcfg.clip_norm = plait_dp_clip(&dp)
 *     for each update:  plait_fedavg_add(fa, u, P, examples);   // counts rejects
 *     plait_dp_finish_round(&dp, plait_fedavg_sum(fa), P, unclipped_count, &rng, avg, &info);
 *     plait_server_opt_step(opt, global, avg, P);
 *     plait_accountant_compose(&acc, q, dp_cfg.noise_multiplier, 1);   // privacy.h
 *
 * Thread-safety: one object per thread (the service runs the core on its
 * loop thread or hands a whole object to one worker).
 */
#ifndef PLAIT_AGG_H
#define PLAIT_AGG_H

#include "plait/plait.h"
#include "plait/rng.h"
#include "plait/update.h"

/** Largest update length the core allocates for (2^28 parameters: 2 GiB of doubles). */
#define PLAIT_AGG_MAX_DIM ((size_t)1 << 28)

/* ---- streaming weighted FedAvg -------------------------------------------- */

typedef struct plait_fedavg_s plait_fedavg_t;

typedef struct {
    size_t dim;           /**< P, the update length (no default: 0 is invalid; at most PLAIT_AGG_MAX_DIM) */
    double clip_norm;     /**< S: updates whose L2 norm exceeds S + norm_slack are rejected (default 1.0) */
    double norm_slack;    /**< allowance for rounding/quantization, e.g. plait_quant_norm_slack()
                               (default 1e-6, float rounding only) */
    double weight_cap;    /**< examples counted at most: weight = min(examples, cap) / cap, in (0, 1]
                               (default 1000; bounds one device's influence) */
    int uniform_weights;  /**< 1: every accepted update has weight 1 regardless of examples (default 0;
                               DP-FedAvg commonly sets 1) */
    double fixed_denominator; /**< > 0: plait_fedavg_result() divides by this instead of the
                                   accepted weight (DP-FedAvg's fixed-denominator estimator); default 0 */
} plait_fedavg_config_t;

/** Counters since create/reset. Each rejected update is counted once, by its first failing check
 *  (order: length, non-finite, weight, norm). */
typedef struct {
    uint64_t accepted;
    uint64_t rejected_length;    /**< wrong number of values (PLAIT_EMISMATCH) */
    uint64_t rejected_nonfinite; /**< NaN or infinity inside (PLAIT_EINVAL) */
    uint64_t rejected_weight;    /**< examples not finite and > 0 (PLAIT_EINVAL) */
    uint64_t rejected_norm;      /**< L2 norm above the bound (PLAIT_ETOOBIG) */
    double weight_sum;           /**< sum of accepted weights (no per-update statistic is kept:
                                      norms of private updates must not reach logs) */
} plait_fedavg_stats_t;

/** \brief Defaults (see the field comments); dim is set to 0 and must be filled in. */
void plait_fedavg_config_default(plait_fedavg_config_t *cfg);
/** \brief \return 0 or PLAIT_EINVAL naming the bad field; PLAIT_ETOOBIG for dim > PLAIT_AGG_MAX_DIM. */
int plait_fedavg_config_validate(const plait_fedavg_config_t *cfg);
/**
 * \brief Allocate an accumulator of cfg->dim doubles, zeroed.
 * \param out receives the object; free with plait_fedavg_destroy().
 * \return 0, PLAIT_EINVAL / PLAIT_ETOOBIG (config), PLAIT_ENOMEM.
 */
int plait_fedavg_create(plait_fedavg_t **out /* OUT */, const plait_fedavg_config_t *cfg) PLAIT_WUR;
/** \brief Free. NULL is safe. */
void plait_fedavg_destroy(plait_fedavg_t *fa);
/** \brief Forget all updates and counters (keeps the allocation). */
void plait_fedavg_reset(plait_fedavg_t *fa);

/**
 * \brief Fold one update in: sum += w·u, weight_sum += w. The update is
 *        checked first and, if bad, left out and counted.
 * \param u        n floats, borrowed.
 * \param examples the client's number of local examples (> 0, finite).
 * \return 0; PLAIT_EMISMATCH (n != dim), PLAIT_EINVAL (non-finite value,
 *         examples <= 0 or not finite, NULL u), PLAIT_ETOOBIG (norm above the bound).
 */
int plait_fedavg_add(plait_fedavg_t *fa, const float *u, size_t n, double examples);

/**
 * \brief Fold in an already-aggregated sum (the secure-aggregation path,
 *        see plait_agg_decode_secure_sum()): sum += s, weight_sum += weight,
 *        accepted += n_clients. No per-update checks are possible there.
 * \return 0; PLAIT_EMISMATCH (n != dim), PLAIT_EINVAL (non-finite values or weight < 0).
 */
int plait_fedavg_add_sum(plait_fedavg_t *fa, const double *s, size_t n, double weight, uint64_t n_clients);

/**
 * \brief plait_agg_decode_secure_sum() of words[0, n_words) followed by
 *        plait_fedavg_add_sum() of the result, bit for bit, without the
 *        caller's P doubles: the span is decoded in small blocks straight into
 *        the sum (the round core's memory stays at a few bytes per word).
 * \param words the mod-2^32 sum of n_clients encoded updates: P span words, then the weight word.
 * \return 0; the codes of those two functions (the sum is untouched on any error).
 */
int plait_fedavg_add_quant_sum(plait_fedavg_t *fa, const plait_quant_config_t *qc, const uint32_t *words,
                               size_t n_words, uint64_t n_clients);

/**
 * \brief The weighted mean of a quantized sum, bit for bit what a fresh accumulator (default
 *        config) gives through plait_fedavg_add_quant_sum() then plait_fedavg_result(), without
 *        its P doubles: out[i] = (float)(decoded[i] / decoded weight).
 * \param n the length of out: P = n_words - 1.
 * \return 0; the codes of those two functions (out is untouched on any error).
 */
int plait_agg_mean_quant_sum(const plait_quant_config_t *qc, const uint32_t *words, size_t n_words,
                             uint64_t n_clients, float *out, size_t n);

/** \brief The running weighted sum (dim doubles); valid until the next call on fa. */
const double *plait_fedavg_sum(const plait_fedavg_t *fa);
/** \brief Copy the counters. */
void plait_fedavg_stats(const plait_fedavg_t *fa, plait_fedavg_stats_t *st /* OUT */);

/**
 * \brief The average: sum / weight_sum, or sum / fixed_denominator when set.
 * \param out n floats.
 * \return 0; PLAIT_EMISMATCH (n != dim), PLAIT_EAGAIN (nothing accepted and
 *         no fixed denominator), PLAIT_EINVAL (NULL).
 */
int plait_fedavg_result(const plait_fedavg_t *fa, float *out /* OUT */, size_t n) PLAIT_WUR;

/**
 * \brief Decode the mod-2^32 sum of n_clients secure-aggregation vectors of
 *        P + 1 words each (P quantized values of w·x, then the weight word;
 *        see update.h) into sum(w·x) and sum(w).
 * \return 0; PLAIT_EINVAL (n_words < 2, NULL), PLAIT_ETOOBIG (cohort could
 *         have wrapped), PLAIT_EPROTO (impossible word).
 */
int plait_agg_decode_secure_sum(const plait_quant_config_t *qc, const uint32_t *words, size_t n_words,
                                uint64_t n_clients, double *sum /* OUT, n_words - 1 */,
                                double *weight_sum /* OUT */) PLAIT_WUR;

/* ---- server optimizers ---------------------------------------------------- */

typedef enum {
    PLAIT_OPT_FEDAVG = 0,   /**< x += lr·Δ (lr 1: plain FedAvg) */
    PLAIT_OPT_FEDADAGRAD = 1,
    PLAIT_OPT_FEDADAM = 2,
    PLAIT_OPT_FEDYOGI = 3,
    PLAIT_OPT_FEDAVGM = 4   /**< server momentum (Hsu et al. 2019): m = β1·m + Δ; x += lr·m */
} plait_server_opt_kind_t;

typedef struct {
    plait_server_opt_kind_t kind; /**< default FEDAVG */
    double lr;    /**< server learning rate η (default 1.0 for FedAvg, 0.01 for the adaptive ones) */
    double beta1; /**< momentum β1 in [0, 1) (default 0.9; FedAvgM's server momentum) */
    double beta2; /**< second-moment decay β2 in [0, 1) (default 0.99; unused by FedAdagrad) */
    double tau;   /**< adaptivity τ > 0 (default 1e-3); v starts at τ² */
} plait_server_opt_config_t;

typedef struct plait_server_opt_s plait_server_opt_t;

/** \brief Defaults for a kind (see the field comments). */
void plait_server_opt_config_default(plait_server_opt_config_t *cfg, plait_server_opt_kind_t kind);
/** \brief \return 0 or PLAIT_EINVAL naming the bad field. */
int plait_server_opt_config_validate(const plait_server_opt_config_t *cfg);
/** \brief Parse "fedavg", "fedadagrad", "fedadam", "fedyogi". \return 0 or PLAIT_EINVAL. */
int plait_server_opt_kind_parse(const char *s, plait_server_opt_kind_t *kind /* OUT */);
/**
 * \brief Create an optimizer for dim parameters: m = 0, v = τ² (Reddi et al. 2021, Algorithm 2).
 * \return 0, PLAIT_EINVAL, PLAIT_ETOOBIG (dim), PLAIT_ENOMEM.
 */
int plait_server_opt_create(plait_server_opt_t **out /* OUT */, const plait_server_opt_config_t *cfg,
                            size_t dim) PLAIT_WUR;
/** \brief Free. NULL is safe. */
void plait_server_opt_destroy(plait_server_opt_t *opt);
/**
 * \brief One server step with the averaged client update Δ (local - global):
 *        FedAvg:  x += η Δ
 *        others:  m = β1 m + (1-β1) Δ;
 *                 v = v + Δ²                                (FedAdagrad)
 *                 v = β2 v + (1-β2) Δ²                      (FedAdam)
 *                 v = v - (1-β2) Δ² sign(v - Δ²)            (FedYogi)
 *                 x += η m / (sqrt(v) + τ)
 * \return 0; PLAIT_EMISMATCH (n != dim), PLAIT_EINVAL (non-finite Δ; nothing changed).
 */
int plait_server_opt_step(plait_server_opt_t *opt, float *global, const float *delta, size_t n) PLAIT_WUR;
/** \brief Number of floats in the exported state: 2·dim (m then v), 0 for FedAvg. */
size_t plait_server_opt_state_len(const plait_server_opt_t *opt);
/** \brief Export m then v as flat floats. \return 0 or PLAIT_EMISMATCH (n != state_len). */
int plait_server_opt_export(const plait_server_opt_t *opt, float *out /* OUT */, size_t n) PLAIT_WUR;
/** \brief Import a state exported by the same kind and dim.
 *  \return 0; PLAIT_EMISMATCH (n); PLAIT_EPROTO (non-finite value or negative v; state unchanged). */
int plait_server_opt_import(plait_server_opt_t *opt, const float *in, size_t n) PLAIT_WUR;

/* ---- robust aggregation (no secure aggregation) -------------------------- */

typedef enum { PLAIT_ROBUST_MEDIAN = 0, PLAIT_ROBUST_TRIMMED_MEAN = 1 } plait_robust_kind_t;

typedef struct {
    size_t dim;            /**< P (required) */
    size_t max_updates;    /**< m, updates kept (default 1000) */
    double trim_fraction;  /**< β in [0, 0.5): trimmed mean drops floor(β·m) values at each end (default 0.1) */
    double clip_norm;      /**< > 0: reject updates with a larger norm (default 0: no check) */
    size_t mem_limit;      /**< refuse configs needing more than this many bytes (default 1 GiB) */
} plait_robust_config_t;

typedef struct plait_robust_s plait_robust_t;

/** \brief Defaults; dim is 0 and must be filled in. */
void plait_robust_config_default(plait_robust_config_t *cfg);
/** \brief \return 0, PLAIT_EINVAL, or PLAIT_ETOOBIG when m·P·4 bytes exceed mem_limit. */
int plait_robust_config_validate(const plait_robust_config_t *cfg);
/** \brief Allocate room for max_updates × dim floats. \return 0, PLAIT_EINVAL, PLAIT_ETOOBIG, PLAIT_ENOMEM. */
int plait_robust_create(plait_robust_t **out /* OUT */, const plait_robust_config_t *cfg) PLAIT_WUR;
/** \brief Free (the held updates are wiped first). NULL is safe. */
void plait_robust_destroy(plait_robust_t *r);
/** \brief Forget the held updates (wiped) for the next round. NULL is safe. */
void plait_robust_reset(plait_robust_t *r);
/** \brief Keep a copy of u. \return 0; PLAIT_EMISMATCH, PLAIT_EINVAL (non-finite), PLAIT_ETOOBIG (full, or norm). */
int plait_robust_add(plait_robust_t *r, const float *u, size_t n);
/** \brief Number of updates held. */
size_t plait_robust_count(const plait_robust_t *r);
/**
 * \brief Coordinate-wise median (mean of the two middle values for even m)
 *        or trimmed mean of the updates held.
 * \return 0; PLAIT_EMISMATCH (n), PLAIT_EAGAIN (no updates, or trimming would drop all), PLAIT_EINVAL.
 */
int plait_robust_result(plait_robust_t *r, plait_robust_kind_t kind, float *out /* OUT */, size_t n) PLAIT_WUR;

/* ---- central differential privacy (DP-FedAvg) ---------------------------- */

typedef struct {
    double clip;             /**< initial clip norm C (default 1.0) */
    double noise_multiplier; /**< z of the whole round (update + clipped count): what the accountant
                                  composes (default 1.0) */
    double expected_weight;  /**< the fixed denominator: expected sum of weights per round, q·N with
                                  uniform weights (no default: must be > 0) */
    int adaptive;            /**< adaptive clipping (default 0) */
    double target_quantile;  /**< γ in (0, 1): aim C at this quantile of update norms (default 0.5) */
    double clip_lr;          /**< η_C > 0: geometric step (default 0.2, as Andrew et al.) */
    double count_stddev;     /**< σ_b: std of the noise on the unclipped count; 0 means the default
                                  expected_weight / 20 (Andrew et al.) */
    double min_clip;         /**< C never goes below (default 1e-6) */
    double max_clip;         /**< nor above (default 1e6) */
} plait_dp_config_t;

typedef struct {
    plait_dp_config_t cfg;
    double clip;     /**< current C (send it to the next round's devices) */
    double z_update; /**< noise multiplier on the update sum: z, or (z^-2 - (2σ_b)^-2)^-1/2 when adaptive */
    double sigma_b;  /**< effective σ_b */
    uint64_t rounds;
} plait_dp_t;

typedef struct {
    double noise_stddev;  /**< std of the noise added to each averaged coordinate: z_update·C / expected_weight */
    double clip_used;     /**< C of the round just finished */
    double clip_next;     /**< C for the next round */
    double unclipped_frac;/**< the noised fraction of unclipped updates (NAN when not adaptive) */
} plait_dp_round_info_t;

/** \brief Defaults (see the field comments); expected_weight is 0 and must be filled in. */
void plait_dp_config_default(plait_dp_config_t *cfg);
/** \brief \return 0 or PLAIT_EINVAL naming the field, including adaptive with 2σ_b <= z
 *         (the count noise alone would exceed the privacy budget). */
int plait_dp_config_validate(const plait_dp_config_t *cfg);
/** \brief Start: C = cfg->clip, z_update from the corrected formula. \return 0 or PLAIT_EINVAL. */
int plait_dp_setup(plait_dp_t *dp, const plait_dp_config_t *cfg) PLAIT_WUR;

/**
 * \brief Finish a round: out = (sum + N(0, (z_update·C)²)) / expected_weight
 *        (fixed denominator), then, if adaptive, the noised unclipped
 *        fraction b = (unclipped + N(0, σ_b²)) / expected_weight and
 *        C ← clamp(C·exp(-η_C (b - γ))).
 * \param sum       the weighted sum of clipped updates (plait_fedavg_sum()).
 * \param unclipped number of devices whose update norm was <= C before clipping (ignored when not adaptive).
 * \param rng       keyed from the DRBG in production.
 * \return 0; PLAIT_EINVAL (NULL, non-finite sum, negative count).
 */
int plait_dp_finish_round(plait_dp_t *dp, const double *sum, size_t n, double unclipped, plait_rng_t *rng,
                          float *out /* OUT */, plait_dp_round_info_t *info /* OUT, may be NULL */) PLAIT_WUR;

#endif /* PLAIT_AGG_H */
