/*
 * main.c: plait-sim, the fleet simulator's command line.
 *
 *   plait-sim [flags]            run an experiment (no flags: the default demo,
 *                                Shakespeare by speaker, 20 rounds, in-process)
 *   plait-sim compare [flags] NAME=DIR...
 *                                draw the loss curves of several runs in one SVG
 *
 * Settings: defaults < --config FILE < flags (the flag table, plait/flags.h,
 * also writes --help). A bad flag, value or config file
 * prints one line naming it and exits with status 2; a failure while running
 * exits with 1.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "plait/cli.h"
#include "plait/file.h"
#include "plait/flags.h"
#include "plait/json.h"
#include "plait/log.h"
#include "plait/lora.h"
#include "plait/sim.h"
#include "sim_int.h"

#define EXIT_USAGE 2

#ifndef PLAIT_DEFAULT_ASSETS
#define PLAIT_DEFAULT_ASSETS "../shared/assets"
#endif

static int bad(void)
{
    fprintf(stderr, "plait-sim: %s\n", plait_errmsg());
    return EXIT_USAGE;
}

static int set_str(char *dst, const char *flag, const char *v)
{
    if (!v[0] || strlen(v) >= PLAIT_SIM_PATH_MAX) return plait_fail(PLAIT_EINVAL, "%s: empty or too long", flag);
    snprintf(dst, PLAIT_SIM_PATH_MAX, "%s", v);
    return 0;
}

/* Path-like settings: a char[PLAIT_SIM_PATH_MAX] field each. */
#define SIM_STR(fn, flag)                                                                                          \
    static int fn(void *dest, const char *v)                                                                       \
    {                                                                                                              \
        return set_str(dest, flag, v);                                                                             \
    }
SIM_STR(set_out, "--out")
SIM_STR(set_data, "--data")
SIM_STR(set_model, "--model")
SIM_STR(set_tokenizer, "--tokenizer")
SIM_STR(set_agg_bin, "--aggregator-bin")
SIM_STR(set_agent_bin, "--agent-bin")

static int set_strategy(void *dest, const char *v)
{
    const size_t cap = sizeof(((plait_sim_config_t *)0)->strategy);
    if (strlen(v) >= cap || plait_strategy_find(v) == NULL) return plait__sim_wrap(PLAIT_EINVAL, "--strategy");
    snprintf(dest, cap, "%s", v);
    return 0;
}

static int set_lora_mode(void *dest, const char *v)
{
    if (plait_lora_mode_parse(v, dest) != 0)
        return plait_fail(PLAIT_EINVAL, "--lora-mode: '%.32s' is not ffa, fedit or fedsa", v);
    return 0;
}

static int set_targets(void *dest, const char *v)
{
    if (plait_lora_parse_targets(v, dest) != 0) return plait__sim_wrap(PLAIT_EINVAL, "--targets");
    return 0;
}

static int set_source(void *dest, const char *v)
{
    plait_sim_source_t *src = dest;
    if (strcmp(v, "shakespeare") == 0) *src = PLAIT_SIM_SRC_SHAKESPEARE;
    else if (strcmp(v, "dir") == 0) *src = PLAIT_SIM_SRC_DIR;
    else if (strcmp(v, "jsonl") == 0) *src = PLAIT_SIM_SRC_JSONL;
    else return plait_fail(PLAIT_EINVAL, "--source: '%.32s' is not shakespeare, dir or jsonl", v);
    return 0;
}

static int set_run_mode(void *dest, const char *v)
{
    plait_sim_config_t *c = dest;
    if (strcmp(v, "inprocess") != 0 && strcmp(v, "network") != 0)
        return plait_fail(PLAIT_EINVAL, "--mode: '%.32s' is not inprocess or network", v);
    snprintf(c->mode, sizeof(c->mode), "%s", v);
    return 0;
}

static int set_key(void *dest, const char *v)
{
    return plait_sim_config_set(dest, v);
}

static int set_central_only(void *dest, const char *v)
{
    plait_sim_config_t *c = dest;
    (void)v;
    c->centralized = c->centralized_only = true;
    return 0;
}

/* --config: read on the first pass over the flags only, so that flags override the file wherever they appear. */
typedef struct {
    plait_sim_config_t *cfg;
    int load;
} config_arg_t;

static int set_config(void *dest, const char *v)
{
    config_arg_t *a = dest;
    return a->load ? plait_sim_config_load(a->cfg, v) : 0;
}

/* One experiment: run it and print its summary. Returns the exit status; g and p get the final losses. */
static int run_one(const plait_sim_config_t *cfg, double *g, double *p)
{
    plait_sim_result_t res;
    int rc = plait_sim_run(cfg, &res);
    if (rc != 0) {
        fprintf(stderr, "plait-sim: %s (%s)\n", plait_errmsg(), plait_err_name(rc));
        return rc == PLAIT_EINVAL ? EXIT_USAGE : EXIT_FAILURE;
    }
    const plait_sim_round_t *last = &res.rounds[res.n_rounds];
    for (size_t r = res.n_rounds; r > 0 && !isfinite(last->global_loss); r--) last = &res.rounds[r - 1];
    *g = last->global_loss;
    *p = last->personal_loss;
    if (res.n_rounds > 0) {
        printf("base %.4f  global %.4f", res.base_loss, last->global_loss);
        if (isfinite(last->personal_loss)) printf("  personalized %.4f", last->personal_loss);
        printf("  (held-out loss, round %d)\n", last->round);
    } else printf("base %.4f  (held-out loss)\n", res.base_loss);
    if (res.centralized_steps > 0)
        printf("centralized %.4f  (held-out loss after %d steps on the pooled training data, %zu tokens)\n",
               res.centralized_loss, res.centralized_steps, res.centralized_tokens);
    printf("%.1f s, %.1f client-rounds/s (%.1f ms CPU each), peak RSS %ld MiB, checksum %016llx\n", res.wall_s,
           res.client_rounds_per_s, 1e3 * res.cpu_s_per_client_round, res.peak_rss_kb / 1024,
           (unsigned long long)res.checksum);
    printf("report: %s/report.md\n", cfg->out_dir);
    plait_sim_result_free(&res);
    return 0;
}

static void num(plait_buf_t *b, double x, const char *after)
{
    if (isfinite(x)) plait_buf_printf(b, "%.4f%s", x, after);
    else plait_buf_printf(b, "-%s", after);
}

/* Mean and 95% CI half-width of n values (NAN entries skipped); "-" when none. */
static void mean_ci(const double *v, int n, double *mean, double *half)
{
    double s = 0, s2 = 0;
    int m = 0;
    for (int i = 0; i < n; i++)
        if (isfinite(v[i])) s += v[i], s2 += v[i] * v[i], m++;
    *mean = m ? s / m : NAN;
    double var = m > 1 ? (s2 - s * s / m) / (m - 1) : NAN;
    *half = m > 1 ? plait__sim_t95((size_t)m - 1) * sqrt(var > 0 ? var : 0) / sqrt((double)m) : NAN;
}

/* --seeds N: the experiment with seeds seed..seed+N-1, each into OUT/seed-S; OUT/seeds.txt lists them (for
 * compare) and OUT/seeds.md has the final losses' mean and 95% CI. */
static int run_seeds(const plait_sim_config_t *base, int n)
{
    char root[PLAIT_SIM_PATH_MAX];
    snprintf(root, sizeof(root), "%s", base->out_dir);
    if (plait_cli_mkdirs(root, root, 0755) != 0) return bad();
    double g[64], p[64];
    plait_buf_t list, md;
    plait_buf_init(&list, 0);
    plait_buf_init(&md, 0);
    plait_buf_printf(&md, "# plait-sim: %d seeds\n\n| seed | global loss | personalized loss |\n|---|---|---|\n", n);
    int rc = 0;
    for (int k = 0; k < n && rc == 0; k++) {
        plait_sim_config_t c = *base;
        c.seed = base->seed + (uint64_t)k;
        char sub[64];
        snprintf(sub, sizeof(sub), "seed-%llu", (unsigned long long)c.seed);
        if (strlen(root) + 70 >= sizeof(root)) {
            plait_fail(PLAIT_EINVAL, "--out: too long for --seeds");
            return bad();
        }
        int w = snprintf(c.out_dir, sizeof(c.out_dir), "%.*s/%s", (int)(sizeof(root) - 70), root, sub);
        (void)w;
        if (!c.quiet) fprintf(stderr, "plait-sim: seed %llu (%d of %d) into %s\n", (unsigned long long)c.seed, k + 1, n, c.out_dir);
        rc = run_one(&c, &g[k], &p[k]);
        plait_buf_printf(&list, "%s\n", sub);
        plait_buf_printf(&md, "| %llu | ", (unsigned long long)c.seed);
        num(&md, g[k], " | ");
        num(&md, p[k], " |\n");
    }
    if (rc == 0) {
        double gm, gh, pm, ph;
        mean_ci(g, n, &gm, &gh);
        mean_ci(p, n, &pm, &ph);
        plait_buf_printf(&md, "\nMean over %d seeds ± the 95%% confidence interval's half-width (Student t, %d "
                              "degrees of freedom): global ", n, n - 1);
        num(&md, gm, " ± ");
        num(&md, gh, ", personalized ");
        num(&md, pm, " ± ");
        num(&md, ph, ".\n");
        printf("%d seeds: global %.4f ± %.4f", n, gm, gh);
        if (isfinite(pm)) printf(", personalized %.4f ± %.4f", pm, ph);
        printf(" (mean ± 95%% CI)\n");
        char path[PLAIT_SIM_PATH_MAX + 16];
        const plait_buf_t *bufs[2] = {&list, &md};
        const char *names[2] = {"seeds.txt", "seeds.md"};
        for (int i = 0; i < 2 && rc == 0; i++) {
            snprintf(path, sizeof(path), "%s/%s", root, names[i]);
            FILE *f = fopen(path, "w");
            int ok = f && plait_buf_status(bufs[i]) == 0 && fwrite(bufs[i]->data, 1, bufs[i]->len, f) == bufs[i]->len;
            if (f) ok &= fclose(f) == 0;
            if (!ok) {
                fprintf(stderr, "plait-sim: %s: cannot write\n", path);
                rc = EXIT_FAILURE;
            }
        }
        if (rc == 0) printf("seeds: %s/seeds.md\n", root);
    }
    plait_buf_free(&list);
    plait_buf_free(&md);
    return rc;
}

int main(int argc, char **argv)
{
    if (argc > 1 && strcmp(argv[1], "compare") == 0) return plait__sim_compare_main(argc - 1, argv + 1);
    if (argc > 1 && strcmp(argv[1], "--version") == 0) {
        printf("plait-sim %s\n", PLAIT_VERSION_STRING);
        return 0;
    }
    int export_config = argc > 1 && strcmp(argv[1], "export-config") == 0;
    if (export_config) argc--, argv++; /* the experiment's flags follow */
    const char *assets = getenv("PLAIT_ASSETS");
    if (!assets || !assets[0]) assets = PLAIT_DEFAULT_ASSETS;
    plait_sim_config_t cfg;
    plait_sim_config_default(&cfg, assets);
    long long seeds = 1;
    config_arg_t config = {&cfg, 1};
    plait_flag_t flags[] = {
        PLAIT_F_CUSTOM("config", &config, set_config, "FILE", "JSON experiment config"),
        PLAIT_F_CUSTOM("set", &cfg, set_key, "SECTION.KEY=VALUE",
                       "any config key (repeatable), e.g. --set local.batch=8 --set lora.mode=fedit"),
        PLAIT_F_LLONG("seeds", &seeds, 1, 64, "N",
                      "N runs with seeds seed..seed+N-1 into OUT/seed-S (compare draws the mean\n"
                      "and a 95% CI); OUT/seeds.md has the final losses' mean and CI",
                      0),
        PLAIT_F_CUSTOM("out", cfg.out_dir, set_out, "DIR", "outputs and the clients' stores (default sim-out)"),
        PLAIT_F_INT("rounds", &cfg.rounds, 1, 1000000, "N", "rounds", 1),
        PLAIT_F_SIZE("clients-per-round", &cfg.clients_per_round, 1, 1000000, "K", "target cohort", 1),
        PLAIT_F_INT("local-steps", &cfg.local_steps, 1, 100000, "E", "local optimizer steps per round", 1),
        PLAIT_F_DOUBLE("local-epochs", &cfg.local_epochs, 0, 1000, "X", "local epochs instead of steps", 0),
        PLAIT_F_DOUBLE("lr", &cfg.lr, 0, 10, "X", "client learning rate", 1),
        PLAIT_F_CUSTOM("strategy", &cfg.strategy, set_strategy, "S",
                       "fedavg | fedadam | fedyogi | fedadagrad | fedavgm | fedprox (default fedavg)"),
        PLAIT_F_DOUBLE("server-lr", &cfg.server_lr, 0, 100, "X", "server learning rate (default: the strategy's)", 0),
        PLAIT_F_CUSTOM("lora-mode", &cfg.lora_mode, set_lora_mode, "M", "ffa | fedit | fedsa (default ffa)"),
        PLAIT_F_INT("rank", &cfg.rank, 1, PLAIT_LORA_MAX_RANK, "R", "LoRA rank", 1),
        PLAIT_F_CUSTOM("targets", &cfg.targets, set_targets, "L", "LoRA projections (default wq,wv)"),
        PLAIT_F_DOUBLE("clip", &cfg.clip, 1e-9, 1e9, "S", "client L2 clip bound", 1),
        PLAIT_F_DOUBLE("noise-multiplier", &cfg.noise_multiplier, 0, 1e6, "Z",
                       "central DP-FedAvg noise multiplier (0: off)", 0),
        PLAIT_F_U64("seed", &cfg.seed, "N", "master seed", 1),
        PLAIT_F_INT("threads", &cfg.threads, 1, 256, "N", "worker threads", 1),
        PLAIT_F_SIZE("min-lines", &cfg.min_lines, 1, 1000000000, "N", "clients need this many lines", 1),
        PLAIT_F_CUSTOM("data", cfg.data, set_data, "PATH", "corpus (default: tinyshakespeare.txt)"),
        PLAIT_F_CUSTOM("source", &cfg.source, set_source, "S", "shakespeare | dir | jsonl (default shakespeare)"),
        PLAIT_F_SIZE("max-clients", &cfg.max_clients, 0, 1000000000, "N", "keep the first N clients (0: all)", 0),
        PLAIT_F_SIZE("eval-clients", &cfg.eval_clients, 0, 1000000000, "N",
                     "global loss over N clients' held-out data (0: all)", 0),
        PLAIT_F_SIZE("personal-clients", &cfg.personal_clients, 0, 1000000000, "N",
                     "clients personalized and compared with global (default: all)", 0),
        PLAIT_F_INT("eval-every", &cfg.eval_every, 1, 1000000, "N", "evaluate every N rounds", 1),
        PLAIT_F_DOUBLE("dropout", &cfg.dropout, 0, 1, "P", "fleet dropout probability", 1),
        PLAIT_F_DOUBLE("deadline", &cfg.deadline_s, 1e-6, 1e9, "S", "round deadline in simulated s", 1),
        PLAIT_F_CUSTOM("model", cfg.model, set_model, "F", "base model (default: the shared assets')"),
        PLAIT_F_CUSTOM("tokenizer", cfg.tokenizer, set_tokenizer, "F", "tokenizer (default: the shared assets')"),
        PLAIT_F_BOOL("centralized", &cfg.centralized,
                     "also train one adapter on the pooled training data (the baseline)"),
        PLAIT_F_ACTION("centralized-only", &cfg, set_central_only, "only that baseline, no federated rounds"),
        PLAIT_F_INT("centralized-steps", &cfg.centralized_steps, 0, 1000000000, "N",
                    "its steps (0: 10000, at batch eval.centralized_batch 16)", 0),
        PLAIT_F_CUSTOM("mode", &cfg, set_run_mode, "M",
                       "inprocess | network (default inprocess): network runs a real plait-aggregator\n"
                       "and plait-agent processes over loopback TLS"),
        PLAIT_F_CUSTOM("aggregator-bin", cfg.aggregator_bin, set_agg_bin, "F",
                       "network mode's aggregator (default: this build tree's)"),
        PLAIT_F_CUSTOM("agent-bin", cfg.agent_bin, set_agent_bin, "F", "network mode's agent (default: this build tree's)"),
        PLAIT_F_BOOL("quiet", &cfg.quiet, "no per-round lines"),
    };
    plait_flags_cmd_t cmd = {
        .prog = "plait-sim",
        .synopsis = "plait-sim [flags]             run an experiment (no flags: the default demo)\n"
                    "       plait-sim compare --out FILE.svg [--metric global|personal] [--x round|mb] NAME=DIR...\n"
                    "       plait-sim export-config [flags]   print the aggregator.conf of the experiment\n"
                    "       plait-sim --version\n",
        .about = "flags (defaults < --config FILE < flags; see docs/researcher-guide.md):\n",
        .flags = flags,
        .n_flags = sizeof(flags) / sizeof(flags[0]),
        .extra_args = 1,
    };
    /* Two passes: the first reads --config (and --help), the second applies every flag over it. */
    for (int pass = 0; pass < 2; pass++) {
        config.load = pass == 0;
        int first = 0, rc = plait_flags_parse(&cmd, argc, argv, stdout, &first);
        if (rc == PLAIT_FLAGS_HELP) return 0;
        if (rc != 0 && cmd.unknown) {
            fprintf(stderr, "plait-sim: %s: unknown flag or missing value (see --help)\n", cmd.unknown);
            return EXIT_USAGE;
        }
        if (rc != 0) return bad();
        if (first < argc) {
            fprintf(stderr, "plait-sim: unexpected argument '%.64s' (see --help)\n", argv[first]);
            return EXIT_USAGE;
        }
    }
    if (plait_sim_config_validate(&cfg) != 0) return bad();
    if (export_config) return plait__sim_export_config(&cfg, "-") == 0 ? 0 : (bad(), EXIT_FAILURE);
    if (argc == 1)
        fprintf(stderr, "plait-sim: the default demo: Shakespeare by speaker, %d rounds in-process (--help for "
                        "options)\n",
                cfg.rounds);
    if (seeds == 1) {
        double g, p;
        return run_one(&cfg, &g, &p);
    }
    return run_seeds(&cfg, (int)seeds);
}
