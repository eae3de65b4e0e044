/*
 * export.c: the aggregator settings of a simulated experiment, shared by
 * network mode (sim/net.c passes them to `plait-aggregator init --set`) and
 * `plait-sim export-config` (writes them as an aggregator.conf).
 *
 * The mapping: lora.* -> lora_*, run.seed -> a_seed, local.{steps,batch,seq_len,lr}
 * -> local_steps, batch, seq_len, lr; privacy.clip -> clip_norm, quant_bits,
 * the quantization range as in-process; rounds.clients_per_round ->
 * target_cohort, rounds.min_clients (0: ceil(K/2)) -> min_cohort;
 * server.strategy/lr -> server_opt/server_lr; central DP -> dp, noise_multiplier,
 * dp_delta. Not mapped (no aggregator equivalent): the fleet model,
 * deadline_s (simulated seconds), local.epochs, privacy.local_noise and
 * weight_cap, the evaluation.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "plait/agg.h"
#include "plait/cli.h"
#include "plait/json.h"
#include "plait/lora.h"
#include "plait/sim.h"
#include "sim_int.h"

/* The shortest %g form of v that reads back exactly. */
static const char *num(double v, char *buf)
{
    for (int prec = 15; prec <= 17; prec++) {
        snprintf(buf, 32, "%.*g", prec, v);
        if (strtod(buf, NULL) == v) break;
    }
    return buf;
}

int plait__sim_agg_sets(const plait_sim_config_t *cfg, char (*sets)[160], int cap)
{
    char t[32];
    int ns = 0;
    char targets[128];
    plait_lora_format_targets(cfg->targets, targets, sizeof(targets));
    plait_server_opt_config_t oc;
    plait_server_opt_kind_t kind = PLAIT_OPT_FEDAVG;
    const int prox = strcmp(cfg->strategy, "fedprox") == 0; /* FedAvg on the server, mu in the devices' task */
    if (!prox && plait_server_opt_kind_parse(cfg->strategy, &kind) != 0)
        return plait_fail(PLAIT_EINVAL, "server.strategy %s runs only in the simulator (the aggregator offers fedavg, "
                                        "fedadagrad, fedadam, fedyogi, fedavgm and fedprox)", cfg->strategy);
    plait_server_opt_config_default(&oc, kind);
    size_t minc = cfg->min_clients ? cfg->min_clients : (cfg->clients_per_round + 1) / 2;
    double qrange = cfg->clip * (cfg->local_noise > 0 ? 1.0 + 4.0 * cfg->local_noise : 1.0);
#define SET(...)                                                                                                   \
    do {                                                                                                           \
        if (ns < cap) snprintf(sets[ns++], 160, __VA_ARGS__);                                                      \
    } while (0)
    SET("lora_rank=%d", cfg->rank);
    SET("lora_alpha=%s", num(cfg->alpha, t));
    SET("lora_targets=%s", targets);
    SET("lora_mode=%s", plait_lora_mode_name(cfg->lora_mode));
    SET("a_seed=%llu", (unsigned long long)cfg->seed);
    SET("local_steps=%d", cfg->local_steps);
    SET("batch=%d", cfg->batch);
    SET("seq_len=%d", cfg->seq_len);
    SET("lr=%s", num(cfg->lr, t));
    SET("clip_norm=%s", num(cfg->clip, t));
    SET("quant_bits=%u", cfg->quant_bits);
    SET("quant_range=%s", num(qrange, t));
    SET("target_cohort=%zu", cfg->clients_per_round);
    SET("min_cohort=%zu", minc);
    SET("server_opt=%s", prox ? "fedavg" : cfg->strategy);
    if (prox) SET("prox_mu=%s", num(cfg->prox_mu > 0 ? cfg->prox_mu : 0.01, t)); /* strategy.c's default */
    if (kind != PLAIT_OPT_FEDAVG) SET("server_momentum=%s", num(cfg->server_momentum, t));
    if (strcmp(cfg->aggregation, "mean") != 0) {
        SET("aggregation=%s", cfg->aggregation);
        SET("trim_fraction=%s", num(cfg->trim_fraction, t));
        SET("secure_agg=false"); /* robust estimators need each update */
    }
    SET("server_lr=%s", num(cfg->server_lr > 0 ? cfg->server_lr : oc.lr, t));
    if (cfg->noise_multiplier > 0) {
        SET("dp=central");
        SET("noise_multiplier=%s", num(cfg->noise_multiplier, t));
        SET("dp_delta=%s", num(cfg->delta, t));
    }
#undef SET
    return ns;
}

int plait__sim_export_config(const plait_sim_config_t *cfg, const char *path)
{
    char sets[32][160];
    int ns = plait__sim_agg_sets(cfg, sets, 32);
    if (ns < 0) return ns;
    plait_buf_t b;
    plait_buf_init(&b, 0);
    plait_buf_printf(&b, "# aggregator.conf from a plait-sim experiment (plait-sim export-config).\n"
                         "# Settings not listed keep plait-aggregator's defaults. Not carried over: the fleet model,\n"
                         "# rounds.deadline_s (simulated seconds), local.epochs, privacy.local_noise and weight_cap.\n\n");
    plait_buf_printf(&b, "base_model = ");
    plait_buf_json_string(&b, cfg->model, strlen(cfg->model));
    plait_buf_printf(&b, "\n");
    for (int i = 0; i < ns; i++) {
        const char *eq = strchr(sets[i], '=');
        plait_buf_printf(&b, "%.*s = %s\n", (int)(eq - sets[i]), sets[i], eq + 1);
    }
    plait_buf_printf(&b, "overselect = %.17g\n", cfg->overselect);
    if (cfg->noise_multiplier > 0)
        plait_buf_printf(&b, "# central DP needs the number of eligible devices:\n# population = N\n");
    int rc = plait_buf_status(&b);
    if (rc == 0) {
        FILE *f = strcmp(path, "-") == 0 ? stdout : fopen(path, "w");
        if (!f) rc = plait_fail(PLAIT_EIO, "%s: cannot write", path);
        else {
            int ok = fwrite(b.data, 1, b.len, f) == b.len;
            if (f != stdout) ok &= fclose(f) == 0;
            else ok &= fflush(f) == 0;
            if (!ok) rc = plait_fail(PLAIT_EIO, "%s: write failed", path);
        }
    }
    plait_buf_free(&b);
    return rc;
}
