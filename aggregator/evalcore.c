/*
 * evalcore.c: the round core of a federated evaluation round (evalcore.h).
 */
#include "evalcore.h"

#include <math.h>

void plait__eval_core_config(const plait_round_config_t *train, plait_round_config_t *out)
{
    plait_round_config_t rc = *train;
    rc.dim = 1;
    rc.quant.range = 1.0; /* the metric word is in [0, 1] */
    rc.clip_norm = 1.0;
    rc.check_norm = 0;
    rc.weight_cap = 1;
    plait_server_opt_config_default(&rc.opt, PLAIT_OPT_FEDAVG);
    rc.opt.lr = 1.0; /* from 0, one FedAvg step lands exactly on the weighted mean */
    rc.strategy = NULL; /* the training core's strategy or robust estimator would not give the mean */
    rc.robust = 0;
    rc.dp = 0;
    rc.ddg = 0;
    rc.ddg_var = 0;
    rc.poisson = 0;
    rc.population = 0;
    rc.sample_rate = 1;
    rc.clip_bit = 0;
    *out = rc;
}

int plait__eval_core_mean(const plait_round_t *r, size_t min_cohort, double loss_max, double *mean, size_t *devices)
{
    plait_round_stats_t st;
    plait_round_stats(r, &st);
    double v = (double)plait_round_global(r)[0];
    if (!isfinite(v) || v < 0.0 || v > 1.0 + 1e-6 || st.accepted < min_cohort || !st.committed)
        return plait_fail(PLAIT_EPROTO, "the evaluation sum decodes to no mean in [0, 1] over %zu devices (min %zu)",
                          st.accepted, min_cohort);
    *mean = (v > 1.0 ? 1.0 : v) * loss_max;
    *devices = st.accepted;
    return 0;
}
