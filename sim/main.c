/*
 * main.c: plait-sim, the fleet simulator's command line.
 *
 *   plait-sim [flags]            run an experiment (no flags: the default demo,
 *                                Shakespeare by speaker, 20 rounds, in-process)
 *   plait-sim compare [flags] NAME=DIR...
 *                                draw the loss curves of several runs in one SVG
 *
 * Settings: defaults < --config FILE < flags. A bad flag, value or config file
 * prints one line naming it and exits with status 2; a failure while running
 * exits with 1.
 */
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "plait/cli.h"
#include "plait/file.h"
#include "plait/json.h"
#include "plait/log.h"
#include "plait/lora.h"
#include "plait/sim.h"
#include "sim_int.h"

#define EXIT_USAGE 2

#ifndef PLAIT_DEFAULT_ASSETS
#define PLAIT_DEFAULT_ASSETS "../shared/assets"
#endif

static void usage(FILE *f)
{
    fprintf(f,
            "usage: plait-sim [flags]             run an experiment (no flags: the default demo)\n"
            "       plait-sim compare --out FILE.svg [--metric global|personal] [--x round|mb] NAME=DIR...\n"
            "       plait-sim export-config [flags]   print the aggregator.conf of the experiment\n"
            "       plait-sim --version\n"
            "\n"
            "flags (defaults < --config FILE < flags; see docs/researcher-guide.md):\n"
            "  --config FILE            JSON experiment config\n"
            "  --set SECTION.KEY=VALUE  any config key (repeatable), e.g. --set local.batch=8 --set lora.mode=fedit\n"
            "  --seeds N                N runs with seeds seed..seed+N-1 into OUT/seed-S (compare draws the mean\n"
            "                           and a 95%% CI); OUT/seeds.md has the final losses' mean and CI\n"
            "  --out DIR                outputs and the clients' stores (default sim-out)\n"
            "  --rounds N               rounds (20)\n"
            "  --clients-per-round K    target cohort (10)\n"
            "  --local-steps E          local optimizer steps per round (10)\n"
            "  --local-epochs X         local epochs instead of steps\n"
            "  --lr X                   client learning rate (0.003)\n"
            "  --strategy S             fedavg | fedadam | fedyogi | fedadagrad (fedavg)\n"
            "  --server-lr X            server learning rate (strategy default)\n"
            "  --lora-mode M            ffa | fedit | fedsa (ffa)\n"
            "  --rank R, --targets L    LoRA rank (8) and projections (wq,wv)\n"
            "  --clip S                 client L2 clip bound (1.0)\n"
            "  --noise-multiplier Z     central DP-FedAvg noise multiplier (0: off)\n"
            "  --seed N, --threads N    master seed (1), worker threads (2)\n"
            "  --min-lines N            clients need this many lines (20)\n"
            "  --data PATH              corpus (default: tinyshakespeare.txt)\n"
            "  --source S               shakespeare | dir | jsonl (shakespeare)\n"
            "  --max-clients N          keep the first N clients (all)\n"
            "  --eval-clients N         global loss over N clients' held-out data (all)\n"
            "  --personal-clients N     clients personalized and compared with global (all)\n"
            "  --eval-every N           evaluate every N rounds (1)\n"
            "  --dropout P, --deadline S  fleet dropout probability (0.05), round deadline in simulated s (15)\n"
            "  --model F, --tokenizer F  base model and tokenizer (shared assets)\n"
            "  --centralized            also train one adapter on the pooled training data (the baseline)\n"
            "  --centralized-only       only that baseline, no federated rounds\n"
            "  --centralized-steps N    its steps (10000, at batch 16: eval.centralized_batch)\n"
            "  --mode M                 inprocess | network (inprocess): network runs a real plait-aggregator\n"
            "                           and plait-agent processes over loopback TLS\n"
            "  --aggregator-bin F, --agent-bin F  network mode's binaries (default: this build tree)\n"
            "  --quiet                  no per-round lines\n");
}

enum {
    O_CONFIG = 256, O_OUT, O_ROUNDS, O_CPR, O_STEPS, O_EPOCHS, O_LR, O_STRATEGY, O_SERVER_LR, O_MODE, O_RANK,
    O_TARGETS, O_CLIP, O_NOISE, O_SEED, O_THREADS, O_MIN_LINES, O_DATA, O_SOURCE, O_MAX_CLIENTS, O_EVAL_CLIENTS,
    O_PERS, O_EVAL_EVERY, O_DROPOUT, O_DEADLINE, O_MODEL, O_TOK, O_QUIET, O_HELP,
    O_CENTRAL, O_CENTRAL_ONLY, O_CENTRAL_STEPS, O_RUN_MODE, O_AGG_BIN, O_AGENT_BIN, O_SET, O_SEEDS
};

static const struct option OPTS[] = {
    {"config", required_argument, 0, O_CONFIG}, {"out", required_argument, 0, O_OUT},
    {"rounds", required_argument, 0, O_ROUNDS}, {"clients-per-round", required_argument, 0, O_CPR},
    {"local-steps", required_argument, 0, O_STEPS}, {"local-epochs", required_argument, 0, O_EPOCHS},
    {"lr", required_argument, 0, O_LR}, {"strategy", required_argument, 0, O_STRATEGY},
    {"server-lr", required_argument, 0, O_SERVER_LR}, {"lora-mode", required_argument, 0, O_MODE},
    {"rank", required_argument, 0, O_RANK}, {"targets", required_argument, 0, O_TARGETS},
    {"clip", required_argument, 0, O_CLIP}, {"noise-multiplier", required_argument, 0, O_NOISE},
    {"seed", required_argument, 0, O_SEED}, {"threads", required_argument, 0, O_THREADS},
    {"min-lines", required_argument, 0, O_MIN_LINES}, {"data", required_argument, 0, O_DATA},
    {"source", required_argument, 0, O_SOURCE}, {"max-clients", required_argument, 0, O_MAX_CLIENTS},
    {"eval-clients", required_argument, 0, O_EVAL_CLIENTS}, {"personal-clients", required_argument, 0, O_PERS},
    {"eval-every", required_argument, 0, O_EVAL_EVERY}, {"dropout", required_argument, 0, O_DROPOUT},
    {"deadline", required_argument, 0, O_DEADLINE}, {"model", required_argument, 0, O_MODEL},
    {"tokenizer", required_argument, 0, O_TOK}, {"quiet", no_argument, 0, O_QUIET},
    {"help", no_argument, 0, O_HELP}, {"centralized", no_argument, 0, O_CENTRAL},
    {"centralized-only", no_argument, 0, O_CENTRAL_ONLY}, {"centralized-steps", required_argument, 0, O_CENTRAL_STEPS},
    {"mode", required_argument, 0, O_RUN_MODE},
    {"aggregator-bin", required_argument, 0, O_AGG_BIN}, {"agent-bin", required_argument, 0, O_AGENT_BIN},
    {"set", required_argument, 0, O_SET}, {"seeds", required_argument, 0, O_SEEDS},
    {0, 0, 0, 0}};

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

static int apply_flag(plait_sim_config_t *c, int opt, const char *v)
{
    long long i;
    double d;
    uint64_t u;
    int rc = 0;
#define INT(flag, lo, hi, field)                                                                                   \
    if ((rc = plait_cli_int(flag, v, lo, hi, &i)) == 0) c->field = i;                        \
    break
#define DBL(flag, lo, hi, field)                                                                                   \
    if ((rc = plait_cli_double(flag, v, lo, hi, &d)) == 0) c->field = d;                                           \
    break
    switch (opt) {
    case O_OUT: return set_str(c->out_dir, "--out", v);
    case O_ROUNDS: INT("--rounds", 1, 1000000, rounds);
    case O_CPR: INT("--clients-per-round", 1, 1000000, clients_per_round);
    case O_STEPS: INT("--local-steps", 1, 100000, local_steps);
    case O_EPOCHS: DBL("--local-epochs", 0, 1000, local_epochs);
    case O_LR: DBL("--lr", 0, 10, lr);
    case O_SERVER_LR: DBL("--server-lr", 0, 100, server_lr);
    case O_RANK: INT("--rank", 1, PLAIT_LORA_MAX_RANK, rank);
    case O_CLIP: DBL("--clip", 1e-9, 1e9, clip);
    case O_NOISE: DBL("--noise-multiplier", 0, 1e6, noise_multiplier);
    case O_THREADS: INT("--threads", 1, 256, threads);
    case O_MIN_LINES: INT("--min-lines", 1, 1000000000, min_lines);
    case O_MAX_CLIENTS: INT("--max-clients", 0, 1000000000, max_clients);
    case O_EVAL_CLIENTS: INT("--eval-clients", 0, 1000000000, eval_clients);
    case O_PERS: INT("--personal-clients", 0, 1000000000, personal_clients);
    case O_EVAL_EVERY: INT("--eval-every", 1, 1000000, eval_every);
    case O_DROPOUT: DBL("--dropout", 0, 1, dropout);
    case O_DEADLINE: DBL("--deadline", 1e-6, 1e9, deadline_s);
    case O_SEED:
        if ((rc = plait_cli_u64("--seed", v, &u)) == 0) c->seed = u;
        break;
    case O_STRATEGY:
        if (plait_server_opt_kind_parse(v, &c->strategy) != 0)
            rc = plait_fail(PLAIT_EINVAL, "--strategy: '%.32s' is not fedavg, fedadam, fedyogi or fedadagrad", v);
        break;
    case O_MODE:
        if (plait_lora_mode_parse(v, &c->lora_mode) != 0)
            rc = plait_fail(PLAIT_EINVAL, "--lora-mode: '%.32s' is not ffa, fedit or fedsa", v);
        break;
    case O_TARGETS:
        if (plait_lora_parse_targets(v, &c->targets) != 0) rc = plait__sim_wrap(PLAIT_EINVAL, "--targets");
        break;
    case O_SOURCE:
        if (strcmp(v, "shakespeare") == 0) c->source = PLAIT_SIM_SRC_SHAKESPEARE;
        else if (strcmp(v, "dir") == 0) c->source = PLAIT_SIM_SRC_DIR;
        else if (strcmp(v, "jsonl") == 0) c->source = PLAIT_SIM_SRC_JSONL;
        else rc = plait_fail(PLAIT_EINVAL, "--source: '%.32s' is not shakespeare, dir or jsonl", v);
        break;
    case O_DATA: return set_str(c->data, "--data", v);
    case O_MODEL: return set_str(c->model, "--model", v);
    case O_TOK: return set_str(c->tokenizer, "--tokenizer", v);
    case O_QUIET: c->quiet = true; break;
    case O_CENTRAL: c->centralized = true; break;
    case O_CENTRAL_ONLY: c->centralized = c->centralized_only = true; break;
    case O_CENTRAL_STEPS: INT("--centralized-steps", 0, 1000000000, centralized_steps);
    case O_RUN_MODE:
        if (strcmp(v, "inprocess") != 0 && strcmp(v, "network") != 0)
            return plait_fail(PLAIT_EINVAL, "--mode: '%.32s' is not inprocess or network", v);
        snprintf(c->mode, sizeof(c->mode), "%s", v);
        break;
    case O_AGG_BIN: return set_str(c->aggregator_bin, "--aggregator-bin", v);
    case O_AGENT_BIN: return set_str(c->agent_bin, "--agent-bin", v);
    case O_SET: return plait_sim_config_set(c, v);
    case O_SEEDS: break; /* main() */
    default: rc = plait_fail(PLAIT_EINVAL, "unknown flag");
    }
#undef INT
#undef DBL
    return rc;
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
    /* First pass: --config and --help, so that flags override the file wherever they appear. */
    opterr = 0;
    int opt;
    while ((opt = getopt_long(argc, argv, "", OPTS, NULL)) != -1) {
        if (opt == O_HELP) {
            usage(stdout);
            return 0;
        }
        if (opt == '?' || opt == ':') {
            const char *flag = argv[optind - 1];
            fprintf(stderr, "plait-sim: %s: unknown flag or missing value (see --help)\n", flag);
            return EXIT_USAGE;
        }
        if (opt == O_CONFIG && plait_sim_config_load(&cfg, optarg) != 0) return bad();
    }
    if (optind < argc) {
        fprintf(stderr, "plait-sim: unexpected argument '%.64s' (see --help)\n", argv[optind]);
        return EXIT_USAGE;
    }
    optind = 1;
    long long seeds = 1;
    while ((opt = getopt_long(argc, argv, "", OPTS, NULL)) != -1) {
        if (opt == O_SEEDS && plait_cli_int("--seeds", optarg, 1, 64, &seeds) != 0) return bad();
        if (opt != O_CONFIG && apply_flag(&cfg, opt, optarg) != 0) return bad();
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
