/*
 * dp.c: central differential privacy for DP-FedAvg (McMahan et al., "Learning
 * Differentially Private Recurrent Language Models", ICLR 2018) with adaptive
 * clipping (Andrew et al., "Differentially Private Learning with Adaptive
 * Clipping", NeurIPS 2021).
 *
 * Per round: devices clip to C (and report whether they needed to); the
 * server adds N(0, (z_Δ C)²) to the weighted sum of clipped updates and
 * divides by the EXPECTED total weight (fixed denominator: the sensitivity of
 * the estimate does not depend on who showed up). With adaptive clipping the
 * unclipped count is released too, with N(0, σ_b²) noise; since a device
 * changes the count by at most 1 (the centred indicator b - 1/2 by 1/2), the
 * pair (sum, count) is one Gaussian mechanism of multiplier
 *     z = (z_Δ^-2 + (2 σ_b)^-2)^-1/2,   i.e.   z_Δ = (z^-2 - (2 σ_b)^-2)^-1/2,
 * so the accountant composes multiplier z per round, as without adaptation.
 *
 * Invariants: min_clip <= clip <= max_clip; z_update >= noise_multiplier.
 * The noise values and the rng state are secrets of the round and are never
 * logged.
 */
#include <math.h>
#include <string.h>

#include "plait/agg.h"

void plait_dp_config_default(plait_dp_config_t *cfg)
{
    cfg->clip = 1.0;             /* device default S */
    cfg->noise_multiplier = 1.0; /* z = 1: McMahan et al.'s regime for large cohorts */
    cfg->expected_weight = 0;    /* q·N: must be set by the caller */
    cfg->adaptive = 0;           /* fixed clip unless asked */
    cfg->target_quantile = 0.5;  /* Andrew et al.: the median norm works across tasks */
    cfg->clip_lr = 0.2;          /* Andrew et al.'s geometric learning rate */
    cfg->count_stddev = 0;       /* 0 = expected_weight / 20 (Andrew et al.) */
    cfg->min_clip = 1e-6;        /* keep C positive and finite */
    cfg->max_clip = 1e6;
}

static double sigma_b_of(const plait_dp_config_t *cfg)
{
    return cfg->count_stddev > 0 ? cfg->count_stddev : cfg->expected_weight / 20.0;
}

int plait_dp_config_validate(const plait_dp_config_t *cfg)
{
    if (cfg == NULL) return plait_fail(PLAIT_EINVAL, "dp config: NULL");
    if (!isfinite(cfg->clip) || cfg->clip <= 0) return plait_fail(PLAIT_EINVAL, "dp config: clip must be finite and > 0");
    if (!isfinite(cfg->noise_multiplier) || cfg->noise_multiplier <= 0)
        return plait_fail(PLAIT_EINVAL, "dp config: noise_multiplier must be finite and > 0");
    if (!isfinite(cfg->expected_weight) || cfg->expected_weight <= 0)
        return plait_fail(PLAIT_EINVAL, "dp config: expected_weight (expected cohort weight) must be finite and > 0");
    if (!(cfg->min_clip > 0 && cfg->min_clip <= cfg->max_clip && isfinite(cfg->max_clip)))
        return plait_fail(PLAIT_EINVAL, "dp config: need 0 < min_clip <= max_clip < inf");
    if (cfg->clip < cfg->min_clip || cfg->clip > cfg->max_clip)
        return plait_fail(PLAIT_EINVAL, "dp config: clip outside [min_clip, max_clip]");
    if (!cfg->adaptive) return 0;
    if (!(cfg->target_quantile > 0 && cfg->target_quantile < 1))
        return plait_fail(PLAIT_EINVAL, "dp config: target_quantile must be in (0, 1)");
    if (!isfinite(cfg->clip_lr) || cfg->clip_lr <= 0 || cfg->clip_lr > 10)
        return plait_fail(PLAIT_EINVAL, "dp config: clip_lr must be in (0, 10]");
    if (!isfinite(cfg->count_stddev) || cfg->count_stddev < 0)
        return plait_fail(PLAIT_EINVAL, "dp config: count_stddev must be finite and >= 0");
    double sb = sigma_b_of(cfg);
    if (!(2.0 * sb > cfg->noise_multiplier))
        return plait_fail(PLAIT_EINVAL,
                          "dp config: adaptive clipping needs 2*count_stddev (%.6g) > noise_multiplier (%.6g), "
                          "else the count alone spends the whole budget",
                          2.0 * sb, cfg->noise_multiplier);
    return 0;
}

int plait_dp_setup(plait_dp_t *dp, const plait_dp_config_t *cfg)
{
    if (dp == NULL) return plait_fail(PLAIT_EINVAL, "dp_setup: NULL");
    int rc = plait_dp_config_validate(cfg);
    if (rc != 0) return rc;
    memset(dp, 0, sizeof(*dp));
    dp->cfg = *cfg;
    dp->clip = cfg->clip;
    double z = cfg->noise_multiplier;
    if (cfg->adaptive) {
        dp->sigma_b = sigma_b_of(cfg);
        double tb = 2.0 * dp->sigma_b;
        dp->z_update = 1.0 / sqrt(1.0 / (z * z) - 1.0 / (tb * tb));
    } else {
        dp->z_update = z;
    }
    return 0;
}

int plait_dp_finish_round(plait_dp_t *dp, const double *sum, size_t n, double unclipped, plait_rng_t *rng, float *out,
                          plait_dp_round_info_t *info)
{
    if (dp == NULL || sum == NULL || rng == NULL || out == NULL) return plait_fail(PLAIT_EINVAL, "dp_finish_round: NULL argument");
    if (dp->cfg.adaptive && (!isfinite(unclipped) || unclipped < 0))
        return plait_fail(PLAIT_EINVAL, "dp_finish_round: unclipped count must be finite and >= 0");
    for (size_t i = 0; i < n; i++)
        if (!isfinite(sum[i])) return plait_fail(PLAIT_EINVAL, "dp_finish_round: non-finite sum at %zu", i);
    const double m = dp->cfg.expected_weight, C = dp->clip, sd = dp->z_update * C;
    for (size_t i = 0; i < n; i++) out[i] = (float)((sum[i] + sd * plait_rng_normal(rng)) / m);
    double frac = NAN, next = C;
    if (dp->cfg.adaptive) {
        frac = (unclipped + dp->sigma_b * plait_rng_normal(rng)) / m;
        next = C * exp(-dp->cfg.clip_lr * (frac - dp->cfg.target_quantile));
        next = fmin(fmax(next, dp->cfg.min_clip), dp->cfg.max_clip);
    }
    dp->clip = next;
    dp->rounds++;
    if (info) {
        info->noise_stddev = sd / m;
        info->clip_used = C;
        info->clip_next = next;
        info->unclipped_frac = frac;
    }
    return 0;
}
