/*
 * check_ux.c: what a new user hits in the first hour (issue #14), run as the
 * user runs it: the three binaries (plait-sim, plait-agent, plait-aggregator)
 * with the documented commands and the usual mistakes. Each mistake must give
 * one clear line (or just work).
 *
 * - plait-sim: --version, compare --help, --out with missing parents, --set,
 *   a rerun into the same --out with a smaller population (no stale stores),
 *   config.json with relative paths that reload, --seeds with a CI in compare,
 *   the per-client distribution and the loss-versus-bytes chart, JSONL
 *   partitions (by natural id; Dirichlet over kinds, near-IID and skewed).
 * - plait-agent: --version, assets found outside the repository, ingest of a
 *   missing file, eval's hint on too little data, train --out into a missing
 *   folder (before training), join with a missing store (once, not retried)
 *   and with another device's key (a message that does not repeat itself).
 * - plait-aggregator: status/rounds --json, cert-info, revoke by fingerprint,
 *   certificate and serial (twice: one line), renew keeping the device id;
 *   plait-agent info --json; README's one-device deployment as written; a
 *   serve that cannot listen stores no version; plait-sim export-config.
 * - cmake --install, then examples/embed.c built with docs/client-api.md's
 *   pkg-config line against the installed libplait.a (skipped without
 *   pkg-config or a compiler).
 */
#include <check.h>
#include <dirent.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include "testutil.h"

static char *scratch;

static void setup(void)
{
    scratch = tu_tmpdir("ux");
    ck_assert_ptr_nonnull(scratch);
}

static void teardown(void)
{
    tu_rmdir(scratch);
    free(scratch);
}

/* Run a shell command line (printf-style) with PLAIT_ASSETS set, from the scratch folder; stdout+stderr into out. */
static int sh(char *out, size_t cap, const char *fmt, ...)
{
    char args[6000], cmd[8192], log[1200];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(args, sizeof(args), fmt, ap);
    va_end(ap);
    snprintf(log, sizeof(log), "%s/out.txt", scratch);
    snprintf(cmd, sizeof(cmd), "cd '%s' && PLAIT_ASSETS='%s' %s >'%s' 2>&1", scratch, tu_assets_dir(), args, log);
    int st = system(cmd);
    size_t n = 0;
    uint8_t *b = tu_read_file(log, &n);
    if (out && cap) snprintf(out, cap, "%s", b ? (char *)b : "");
    free(b);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128;
}

#define SIM PLAIT_BINARY_DIR "/sim/plait-sim"
#define AGENT PLAIT_BINARY_DIR "/client/plait-agent"
#define AGG PLAIT_BINARY_DIR "/aggregator/plait-aggregator"

/* A run of a few seconds: 12 clients, cohort 3, one local step, tiny evaluation. */
#define SIM_SMALL_LOUD "--max-clients 12 --rounds 2 --clients-per-round 3 --local-steps 1 --eval-clients 4 " \
                       "--personal-clients 2 --set eval.windows=1 --set local.batch=2"
#define SIM_SMALL "--quiet " SIM_SMALL_LOUD

static int count_lines(const char *s)
{
    int n = 0;
    for (; *s; s++) n += *s == '\n';
    return n;
}

static size_t count_stores(const char *dir)
{
    DIR *d = opendir(dir);
    ck_assert_ptr_nonnull(d);
    size_t n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) n += e->d_name[0] == 'c' && strstr(e->d_name, ".db") != NULL;
    closedir(d);
    return n;
}

static char *read_text(const char *dir, const char *name)
{
    char *p = tu_path(dir, name);
    size_t n = 0;
    char *b = (char *)tu_read_file(p, &n);
    free(p);
    return b;
}

START_TEST(test_sim_first_steps)
{
    char out[8192];
    ck_assert_int_eq(sh(out, sizeof(out), SIM " --version"), 0);
    ck_assert_msg(strncmp(out, "plait-sim ", 10) == 0, "%s", out);
    ck_assert_int_eq(sh(out, sizeof(out), SIM " compare --help"), 0);
    ck_assert_msg(strstr(out, "usage: plait-sim compare") != NULL, "%s", out);
    /* --set: the file's names and checks, one line each. */
    ck_assert_int_eq(sh(out, sizeof(out), SIM " --set nope.x=1"), 2);
    ck_assert_msg(strstr(out, "unknown key nope.x") && count_lines(out) == 1, "%s", out);
    ck_assert_int_eq(sh(out, sizeof(out), SIM " --set local.batch=0"), 2);
    ck_assert_msg(strstr(out, "local.batch") && count_lines(out) == 1, "%s", out);
    ck_assert_int_eq(sh(out, sizeof(out), SIM " --set lora.mode=nope"), 2);
    ck_assert_msg(strstr(out, "lora.mode") && count_lines(out) == 1, "%s", out);
    /* Strategies: unknown names list the known ones; FedProx's mu without FedProx, or FedProx over the network, say why. */
    ck_assert_int_eq(sh(out, sizeof(out), SIM " --strategy fedprx"), 2);
    ck_assert_msg(strstr(out, "fedprox") && strstr(out, "fedavgm") && count_lines(out) == 1, "%s", out);
    ck_assert_int_eq(sh(out, sizeof(out), SIM " --set local.prox_mu=0.1"), 2);
    ck_assert_msg(strstr(out, "set server.strategy = \"fedprox\"") && count_lines(out) == 1, "%s", out);
    ck_assert_int_eq(sh(out, sizeof(out), SIM " export-config --strategy fedprox --set local.prox_mu=0.05"), 0);
    ck_assert_msg(strstr(out, "server_opt = fedavg\n") && strstr(out, "prox_mu = 0.05\n"), "%s", out);
    ck_assert_int_eq(sh(out, sizeof(out), SIM " " SIM_SMALL " --strategy fedprox --set local.prox_mu=0.05 --out prox"), 0);
    char *rep = read_text(scratch, "prox/report.md");
    ck_assert_msg(rep && strstr(rep, "fedprox"), "%s", rep ? rep : "(no report)");
    free(rep);
    ck_assert_int_eq(sh(out, sizeof(out), SIM " export-config --strategy fedavgm --set server.momentum=0.5"), 0);
    ck_assert_msg(strstr(out, "server_opt = fedavgm\n") && strstr(out, "server_momentum = 0.5\n"), "%s", out);
    /* Robust aggregation: runs in-process, refused with secure aggregation (saying why), exported with it off. */
    ck_assert_int_eq(sh(out, sizeof(out), SIM " " SIM_SMALL " --set server.aggregation=median --out med"), 0);
    rep = read_text(scratch, "med/report.md");
    ck_assert_msg(rep && strstr(rep, "aggregation median"), "%s", rep ? rep : "(no report)");
    free(rep);
    ck_assert_int_eq(sh(out, sizeof(out), SIM " --set server.aggregation=median --set privacy.secure_agg=true"), 2);
    ck_assert_msg(strstr(out, "secure aggregation hides") && count_lines(out) == 1, "%s", out);
    ck_assert_int_eq(sh(out, sizeof(out), SIM " export-config --set server.aggregation=trimmed_mean"), 0);
    ck_assert_msg(strstr(out, "aggregation = trimmed_mean\n") && strstr(out, "secure_agg = false\n"), "%s", out);
    /* Progress lines: one per round, a loss only where the round measured it (never "nan"). */
    ck_assert_int_eq(sh(out, sizeof(out), SIM " " SIM_SMALL_LOUD " --out loud"), 0);
    ck_assert_msg(strstr(out, "round 0/2: start") && strstr(out, "round 2/2: committed") && strstr(out, "personal loss") &&
                      !strstr(out, "nan"),
                  "%s", out);
    /* A parent that cannot exist is named. */
    char *pf = tu_path(scratch, "plainfile");
    ck_assert_int_eq(tu_write_file(pf, "x", 1), 0);
    free(pf);
    ck_assert_int_eq(sh(out, sizeof(out), SIM " " SIM_SMALL " --out plainfile/x"), 1);
    ck_assert_msg(strstr(out, "plainfile is not a folder") && count_lines(out) == 1, "%s", out);
}
END_TEST

START_TEST(test_sim_out_rerun_config)
{
    char out[8192];
    /* The guide's `--out runs/x`: runs/ does not exist yet. */
    ck_assert_int_eq(sh(out, sizeof(out), SIM " " SIM_SMALL " --set lora.mode=fedit --out runs/exp1"), 0);
    char *run = tu_path(scratch, "runs/exp1");
    char *clients = tu_path(run, "clients");
    ck_assert_uint_eq(count_stores(clients), 12);
    /* Rerun into the same --out with a smaller population: no store of the old one is left beside the new. */
    ck_assert_int_eq(sh(out, sizeof(out), SIM " " SIM_SMALL " --max-clients 6 --out runs/exp1"), 0);
    ck_assert_uint_eq(count_stores(clients), 6);
    /* config.json: the built-in assets path relative to where plait-sim ran, and it reloads as written. */
    char *cj = read_text(run, "config.json");
    ck_assert_ptr_nonnull(cj);
    ck_assert_msg(strstr(cj, "\"model\": \"/") == NULL, "absolute model path in %s", cj);
    ck_assert_msg(strstr(cj, "\"mode\": \"ffa\"") != NULL, "%s", cj); /* the second run's, not the first's */
    free(cj);
    ck_assert_int_eq(sh(out, sizeof(out), SIM " --config runs/exp1/config.json --out runs/again --quiet"), 0);
    /* Per-client distribution and the loss-versus-bytes chart. */
    char *md = read_text(run, "report.md"), *cc = read_text(run, "clients.csv"), *lb = read_text(run, "loss-bytes.svg");
    ck_assert_ptr_nonnull(md);
    ck_assert_ptr_nonnull(cc);
    ck_assert_ptr_nonnull(lb);
    ck_assert_msg(strstr(md, "| global adapter vs base model | 4 |") != NULL, "%s", md);
    ck_assert_msg(strstr(md, "| personalized vs local-only (round 0) | 2 |") != NULL, "%s", md);
    ck_assert_int_eq(count_lines(cc), 1 + 4 + 2 + 2); /* + personal_vs_global rows of the 2 personalized clients */
    ck_assert_msg(strstr(cc, "personal_vs_global,") != NULL, "%s", cc);
    ck_assert_msg(strstr(md, "## Personalized vs global, same clients") != NULL, "%s", md);
    ck_assert_msg(strstr(lb, "MB moved") != NULL, "no MB axis");
    free(md);
    free(cc);
    free(lb);
    free(clients);
    free(run);
}
END_TEST

START_TEST(test_sim_seeds_compare)
{
    char out[8192];
    ck_assert_int_eq(sh(out, sizeof(out), SIM " " SIM_SMALL " --seeds 3 --out runs/multi"), 0);
    ck_assert_msg(strstr(out, "3 seeds: global ") && strstr(out, "(mean ± 95% CI)"), "%s", out);
    char *list = read_text(scratch, "runs/multi/seeds.txt");
    ck_assert_ptr_nonnull(list);
    ck_assert_str_eq(list, "seed-1\nseed-2\nseed-3\n");
    free(list);
    ck_assert_int_eq(sh(out, sizeof(out), SIM " " SIM_SMALL " --out runs/one"), 0);
    ck_assert_int_eq(sh(out, sizeof(out), SIM " compare --out cmp.svg --x mb One=runs/one Multi=runs/multi"), 0);
    /* The table: one seed has no interval, three have a finite one; the chart shades it. */
    ck_assert_msg(strstr(out, "Multi (3 seeds)") != NULL, "%s", out);
    const char *m = strstr(out, "Multi (3 seeds)");
    double mean = 0, half = 0;
    unsigned nseeds = 0, round = 0;
    ck_assert_msg(sscanf(m + strlen("Multi (3 seeds)"), "%u %u %lf %lf", &nseeds, &round, &mean, &half) == 4, "%s", out);
    ck_assert_uint_eq(nseeds, 3);
    ck_assert_uint_eq(round, 2);
    ck_assert(mean > 2 && mean < 6 && half > 0 && half < 2);
    char *svg = read_text(scratch, "cmp.svg");
    ck_assert_ptr_nonnull(svg);
    ck_assert_msg(strstr(svg, "<polygon") && strstr(svg, "MB moved"), "no CI band or MB axis");
    free(svg);
    /* A folder that is not a run is named. */
    ck_assert_int_eq(sh(out, sizeof(out), SIM " compare --out x.svg A=nowhere"), 1);
    ck_assert_msg(strstr(out, "nowhere/metrics.csv") && count_lines(out) == 1, "%s", out);
}
END_TEST

/* Clients in a run's manifest and their train record counts. */
static size_t manifest_clients(const char *run, unsigned *recs, size_t cap)
{
    char *p = tu_path(run, "clients/manifest.txt");
    FILE *f = fopen(p, "r");
    free(p);
    ck_assert_ptr_nonnull(f);
    char line[256];
    size_t n = 0;
    ck_assert_ptr_nonnull(fgets(line, sizeof(line), f));
    ck_assert_ptr_nonnull(fgets(line, sizeof(line), f));
    ck_assert_int_eq(fscanf(f, "n %zu %*[^\n]\n", &n), 1);
    for (size_t i = 0; i < n && i < cap; i++) {
        unsigned a, b, c, d, e, g;
        ck_assert_int_eq(fscanf(f, "%u %u %u %u %u %u\n", &a, &b, &c, &d, &e, &g), 6);
        recs[i] = c;
    }
    fclose(f);
    return n;
}

START_TEST(test_sim_dirichlet)
{
    /* 12 users, 2 kinds, 480 records of two lines each. */
    char *data = tu_path(scratch, "users.jsonl");
    FILE *f = fopen(data, "w");
    ck_assert_ptr_nonnull(f);
    for (int i = 0; i < 480; i++)
        fprintf(f, "{\"user\":\"u%d\",\"kind\":\"%s\",\"text\":\"ROMEO: what light through yonder window %d\\nit "
                   "is the east and Juliet is the sun\"}\n",
                i % 12, i % 2 ? "a" : "b", i);
    fclose(f);
    free(data);
    char out[8192];
    unsigned recs[64];
#define JSONL SIM " --quiet --rounds 1 --clients-per-round 2 --local-steps 1 --eval-clients 2 --personal-clients 0 " \
              "--set eval.windows=1 --source jsonl --data users.jsonl --min-lines 1 "
    /* By natural id: one client per user. */
    ck_assert_int_eq(sh(out, sizeof(out), JSONL "--out runs/natural"), 0);
    char *run = tu_path(scratch, "runs/natural");
    ck_assert_uint_eq(manifest_clients(run, recs, 64), 12);
    free(run);
    /* Dirichlet over kinds, alpha large: close to IID, every client gets a near-equal share. */
    ck_assert_int_eq(sh(out, sizeof(out), JSONL "--set population.partition=dirichlet --set population.label=kind "
                                                "--set population.clients=8 --set population.alpha=1000 --out runs/iid"),
                     0);
    run = tu_path(scratch, "runs/iid");
    ck_assert_uint_eq(manifest_clients(run, recs, 64), 8);
    for (int i = 0; i < 8; i++) ck_assert_msg(recs[i] > 30 && recs[i] < 70, "client %d has %u records", i, recs[i]);
    free(run);
    /* Alpha small: each kind lands on few clients, so most of the 8 get nothing and are left out. */
    ck_assert_int_eq(sh(out, sizeof(out), JSONL "--set population.partition=dirichlet --set population.label=kind "
                                                "--set population.clients=8 --set population.alpha=0.01 --out runs/skew"),
                     0);
    run = tu_path(scratch, "runs/skew");
    size_t n = manifest_clients(run, recs, 64);
    ck_assert_msg(n >= 1 && n <= 4, "%zu clients", n);
    char *md = read_text(run, "report.md");
    ck_assert_msg(md && strstr(md, "Dirichlet(α = 0.01)"), "%s", md ? md : "");
    free(md);
    free(run);
    ck_assert_int_eq(sh(out, sizeof(out), SIM " --set population.label=kind"), 2);
    ck_assert_msg(strstr(out, "needs population.source") && count_lines(out) == 1, "%s", out);
#undef JSONL
}
END_TEST

START_TEST(test_agent_first_hour)
{
    char out[8192];
    ck_assert_int_eq(sh(out, sizeof(out), AGENT " --version"), 0);
    ck_assert_msg(strncmp(out, "plait-agent ", 12) == 0, "%s", out);
    /* A missing input leaves no empty store behind. */
    ck_assert_int_eq(sh(out, sizeof(out), AGENT " ingest --db s.db --text nope.txt"), 1);
    ck_assert_msg(strstr(out, "--text nope.txt: cannot open") && count_lines(out) == 1, "%s", out);
    struct stat sb;
    char *db = tu_path(scratch, "s.db");
    ck_assert_int_ne(stat(db, &sb), 0);
    free(db);
    char *txt = tu_path(scratch, "t.txt");
    ck_assert_int_eq(tu_write_file(txt, "Hello there.\n\nA second record of text.\n", 39), 0);
    free(txt);
    ck_assert_int_eq(sh(out, sizeof(out), AGENT " ingest --db s.db --text t.txt"), 0);
    /* The model is found outside the repository: $PLAIT_ASSETS empty or wrong falls back to the build's. */
    ck_assert_int_eq(sh(out, sizeof(out), "env -u PLAIT_ASSETS " AGENT " eval --db s.db --split all --seq 8"), 0);
    ck_assert_int_eq(sh(out, sizeof(out), "PLAIT_ASSETS=/nonexistent " AGENT " eval --db s.db --split all --seq 8"), 0);
    ck_assert_msg(strstr(out, "base model") != NULL, "%s", out);
    /* --base-precision: f32 or bf16 (BF16 where the CPU has AVX512-BF16): the base model's loss
     * agrees to BF16's precision; anything else is a usage error naming the value. */
    {
        double l32 = 0, l16 = 0;
        ck_assert_int_eq(sh(out, sizeof(out), AGENT " eval --db s.db --split all --seq 8 --json"), 0);
        ck_assert_msg(strstr(out, "\"base_loss\":") && sscanf(strstr(out, "\"base_loss\":") + 12, "%lf", &l32) == 1,
                      "%s", out);
        ck_assert_int_eq(
            sh(out, sizeof(out), AGENT " eval --db s.db --split all --seq 8 --json --base-precision bf16"), 0);
        ck_assert_msg(strstr(out, "\"base_loss\":") && sscanf(strstr(out, "\"base_loss\":") + 12, "%lf", &l16) == 1,
                      "%s", out);
        ck_assert_msg(l32 > 0 && fabs(l16 - l32) < 0.05 * l32, "f32 %g bf16 %g", l32, l16);
        ck_assert_int_eq(sh(out, sizeof(out), AGENT " eval --db s.db --base-precision fp8"), 2);
        ck_assert_msg(strstr(out, "--base-precision 'fp8' is not f32 or bf16") != NULL, "%s", out);
    }
    ck_assert_int_eq(sh(out, sizeof(out), AGENT " eval --db s.db --model nope.bin"), 1);
    ck_assert_msg(strstr(out, "nope.bin") && count_lines(out) == 1, "%s", out);
    /* Eval on too little data says what to do. */
    ck_assert_int_eq(sh(out, sizeof(out), AGENT " eval --db s.db"), 1);
    /* (Which records are held out is random: the split may hold one record or none.) */
    ck_assert_msg(strstr(out, "held-out split has ") && strstr(out, "fewer than one window of --seq 128 + 1: ") &&
                      strstr(out, "smaller --seq") && count_lines(out) == 1,
                  "%s", out);
    /* train --out into a missing folder fails before training. */
    ck_assert_int_eq(sh(out, sizeof(out), AGENT " train --db s.db --steps 1 --out /nonexistent/x.safetensors"), 2);
    ck_assert_msg(strstr(out, "folder /nonexistent does not exist") && count_lines(out) == 1, "%s", out);
}
END_TEST

/* A deployment with two enrolled devices (d1, d2) in the scratch folder. */
static void make_deployment(void)
{
    char out[8192];
    char *model = tu_path(tu_assets_dir(), "stories260K.bin");
    ck_assert_int_eq(sh(out, sizeof(out), AGG " init dep --base-model '%s'", model), 0);
    free(model);
    ck_assert_int_eq(sh(out, sizeof(out), AGG " enroll dep --device d1 --out-key d1.key --out-cert d1.crt"), 0);
    ck_assert_int_eq(sh(out, sizeof(out), AGG " enroll dep --device d2 --out-key d2.key --out-cert d2.crt"), 0);
}

START_TEST(test_agent_join_errors)
{
    char out[8192];
    make_deployment();
    /* A missing store: one line, said once, and not retried (port 1 is never dialled: the store is checked first). */
    ck_assert_int_eq(sh(out, sizeof(out), AGENT " join --server 127.0.0.1:1 --ca dep/ca.crt --cert d1.crt --key "
                                          "d1.key --db nope.db --state st"),
                     1);
    ck_assert_msg(count_lines(out) == 1 && strstr(out, "store nope.db: database file does not exist"), "%s", out);
    ck_assert_msg(strstr(strstr(out, "nope.db") + 1, "nope.db") == NULL, "repeats itself: %s", out);
    /* A key of another device: the message names both files once and is not garbled. */
    char *txt = tu_path(scratch, "t.txt");
    ck_assert_int_eq(tu_write_file(txt, "Hello there.\n", 13), 0);
    free(txt);
    ck_assert_int_eq(sh(out, sizeof(out), AGENT " ingest --db s.db --text t.txt"), 0);
    ck_assert_int_eq(sh(out, sizeof(out), AGENT " join --server 127.0.0.1:1 --ca dep/ca.crt --cert d1.crt --key "
                                          "d2.key --db s.db --state st"),
                     1);
    ck_assert_msg(count_lines(out) == 1 && strstr(out, "TLS client config (d1.crt, d2.key): ") &&
                      strstr(out, "private key does not match the certificate"),
                  "%s", out);
    ck_assert_msg(strstr(strstr(out, "TLS client config") + 1, "TLS client config") == NULL, "repeats: %s", out);
}
END_TEST

/* Count the lines of DIR/revoked.txt that are not comments. */
static int revoked_lines(void)
{
    char *t = read_text(scratch, "dep/revoked.txt");
    ck_assert_ptr_nonnull(t);
    int n = 0;
    for (char *l = t; l && *l; l = strchr(l, '\n') ? strchr(l, '\n') + 1 : NULL)
        if (*l != '#' && *l != '\n') n++;
    free(t);
    return n;
}

START_TEST(test_operator_cli)
{
    char out[8192];
    make_deployment();
    ck_assert_int_eq(sh(out, sizeof(out), AGG " --version"), 0);
    /* --json: one parseable object / one object per line. */
    ck_assert_int_eq(sh(out, sizeof(out), AGG " status dep --json"), 0);
    ck_assert_msg(strstr(out, "\"global_version\": 0") && strstr(out, "\"enrolled\": 2") && count_lines(out) == 1,
                  "%s", out);
    ck_assert_int_eq(sh(out, sizeof(out), AGG " rounds dep --json"), 0);
    ck_assert_str_eq(out, ""); /* no rounds yet, and no header */
    ck_assert_int_eq(sh(out, sizeof(out), AGENT " info --db s.db --json"), 1); /* no store: one line */
    ck_assert_int_eq(count_lines(out), 1);
    /* cert-info, and verification against the CA. */
    ck_assert_int_eq(sh(out, sizeof(out), AGG " cert-info d1.crt --ca dep/ca.crt --json"), 0);
    ck_assert_msg(strstr(out, "\"device\": \"") && strstr(out, "\"verify\": \"ok\""), "%s", out);
    char fp[65] = "";
    const char *h = strstr(out, "\"sha256\": \"");
    ck_assert_ptr_nonnull(h);
    memcpy(fp, h + 11, 64);
    /* Revoking twice adds one line, and says so the second time. */
    int before = revoked_lines();
    ck_assert_int_eq(sh(out, sizeof(out), AGG " revoke dep --fingerprint %s", fp), 0);
    ck_assert_msg(strstr(out, "revoked d1") != NULL, "%s", out);
    ck_assert_int_eq(sh(out, sizeof(out), AGG " revoke dep --device d1"), 0);
    ck_assert_msg(strstr(out, "already revoked") != NULL, "%s", out);
    ck_assert_int_eq(sh(out, sizeof(out), AGG " revoke dep --cert d1.crt"), 0);
    ck_assert_int_eq(revoked_lines(), before + 1);
    ck_assert_int_eq(sh(out, sizeof(out), AGG " revoke dep --serial 0aBc"), 0);
    ck_assert_int_eq(sh(out, sizeof(out), AGG " revoke dep --serial abc"), 0);
    ck_assert_msg(strstr(out, "already revoked") != NULL, "%s", out);
    ck_assert_int_eq(revoked_lines(), before + 2);
    ck_assert_int_eq(sh(out, sizeof(out), AGG " revoke dep --fingerprint 12"), 2);
    ck_assert_int_eq(count_lines(out), 1);
    /* Renewal keeps the id: the new certificate verifies, the old one is on the list, a revoked device cannot. */
    ck_assert_int_eq(sh(out, sizeof(out), AGG " renew dep --device d2 --out-key d2b.key --out-cert d2b.crt"), 0);
    ck_assert_msg(strstr(out, "renewed d2") != NULL, "%s", out);
    ck_assert_int_eq(sh(out, sizeof(out), AGG " cert-info d2b.crt --ca dep/ca.crt"), 0);
    ck_assert_msg(strstr(out, "device: ") && strstr(out, "verify: ok"), "%s", out);
    ck_assert_int_eq(revoked_lines(), before + 3);
    ck_assert_int_eq(sh(out, sizeof(out), AGG " revoke dep --cert d2.crt"), 1); /* the old one: no device has it */
    ck_assert_msg(strstr(out, "no enrolled device has this certificate") && count_lines(out) == 1, "%s", out);
    ck_assert_int_eq(sh(out, sizeof(out), AGG " renew dep --device d1 --out-key x.key --out-cert x.crt"), 1);
    ck_assert_msg(strstr(out, "revoked") && count_lines(out) == 1, "%s", out);
    ck_assert_int_eq(sh(out, sizeof(out), AGG " status dep --json"), 0);
    ck_assert_msg(strstr(out, "\"enrolled\": 2, \"revoked\": 1") != NULL, "%s", out);
}
END_TEST

/* README's one-device deployment, as written (in a scratch folder, port from the OS); and a first serve that
 * cannot listen stores nothing. */
START_TEST(test_readme_deployment)
{
    char out[8192];
    char *notes = tu_path(tu_assets_dir(), "tinyshakespeare.txt");
    size_t nn = 0;
    uint8_t *text = tu_read_file(notes, &nn);
    ck_assert(text && nn > 20000);
    char *mine = tu_path(scratch, "my-notes.txt");
    ck_assert_int_eq(tu_write_file(mine, text, 20000), 0);
    free(mine);
    free(text);
    free(notes);
    char *model = tu_path(tu_assets_dir(), "stories260K.bin");
    ck_assert_int_eq(sh(out, sizeof(out), AGENT " ingest --db me.db --text my-notes.txt"), 0);
    ck_assert_int_eq(sh(out, sizeof(out), AGG " init dep --base-model '%s'", model), 0);
    free(model);
    ck_assert_int_eq(sh(out, sizeof(out), AGG " enroll dep --device phone-1 --out-key phone-1.key --out-cert phone-1.crt"),
                     0);
    /* A port that is taken: serve fails, and the deployment still has no version (the LoRA shape is not fixed). */
    char *m2 = tu_path(tu_assets_dir(), "stories260K.bin");
    ck_assert_int_eq(sh(out, sizeof(out), AGG " init other --base-model '%s'", m2), 0);
    free(m2);
    /* Another deployment holds the port (found from the OS); serving dep on it fails. */
    ck_assert_int_eq(sh(out, sizeof(out),
                        "true; { (" AGG " serve other --port 0 --port-file other.json --set metrics_enabled=false "
                        "2>other.log & echo $! > other.pid); "
                        "for i in $(seq 600); do [ -s other.json ] && break; sleep 0.1; done; "
                        "P=$(sed 's/.*\"port\": *\\([0-9]*\\).*/\\1/' other.json); " AGG
                        " serve dep --port $P --set metrics_enabled=false; rc=$?; kill $(cat other.pid); (exit $rc); }"),
                     1);
    ck_assert_msg(strstr(out, "listen on 127.0.0.1") != NULL, "%s", out);
    ck_assert_int_eq(sh(out, sizeof(out), AGG " status dep --json"), 0);
    ck_assert_msg(strstr(out, "\"global_version\": 0") != NULL, "%s", out);
    /* The documented serve line (port from the OS here) and one join: a committed round. */
    ck_assert_int_eq(sh(out, sizeof(out),
                        "true; { (" AGG " serve dep --port 0 --port-file port.json --set metrics_enabled=false "
                        "--set target_cohort=1 --set min_cohort=1 --set overselect=1 --set secure_agg=false 2>serve.log & echo $! > serve.pid); "
                        /* --once takes one answer: wait for the first round, not only the port */ "for i in $(seq 600); do [ -s port.json ] && grep -q 'round opened' serve.log && break; sleep 0.1; done; "
                        "P=$(sed 's/.*\"port\": *\\([0-9]*\\).*/\\1/' port.json); " AGENT
                        " join --server 127.0.0.1:$P --ca dep/ca.crt --cert phone-1.crt --key phone-1.key --db me.db "
                        "--state phone-1.state --once --allow-plain-aggregation; rc=$?; kill $(cat serve.pid); (exit $rc); }"),
                     0);
    ck_assert_msg(strstr(out, "round 1 acknowledged") != NULL, "%s", out);
    ck_assert_int_eq(sh(out, sizeof(out), AGG " status dep --json"), 0);
    ck_assert_msg(strstr(out, "\"global_version\": 2") != NULL, "%s", out);
    /* A round that can never fill (one device enrolled, two needed) says so when it opens, not a minute later. */
    ck_assert_int_eq(sh(out, sizeof(out),
                        "true; { (" AGG " serve dep --port 0 --port-file p2.json --set metrics_enabled=false "
                        "--set target_cohort=3 --set min_cohort=2 --set secure_agg=false --set selection_timeout_s=3600 "
                        "2>fill.log & echo $! > fill.pid); "
                        "for i in $(seq 1200); do grep -q 'never fill' fill.log && break; sleep 0.1; done; "
                        "kill $(cat fill.pid); cat fill.log; }"),
                     0);
    ck_assert_msg(strstr(out, "this round can never fill: it needs min_cohort = 2 devices and 1 is enrolled") != NULL,
                  "%s", out);
    /* Robust aggregation from the config: refused with secure aggregation in one line, then a median round commits. */
    ck_assert_int_eq(sh(out, sizeof(out), AGG " serve dep --port 0 --set aggregation=median --set metrics_enabled=false"), 1);
    ck_assert_msg(strstr(out, "secure_agg = false") && count_lines(out) == 1, "%s", out);
    ck_assert_int_eq(sh(out, sizeof(out),
                        "true; { (" AGG " serve dep --port 0 --port-file p3.json --set metrics_enabled=false "
                        "--set target_cohort=1 --set min_cohort=1 --set overselect=1 --set secure_agg=false "
                        "--set aggregation=median --set prox_mu=0.1 2>med.log & echo $! > med.pid); "
                        /* --once takes one answer: wait for the first round, not only the port */ "for i in $(seq 600); do [ -s p3.json ] && grep -q 'round opened' med.log && break; sleep 0.1; done; "
                        "P=$(sed 's/.*\"port\": *\\([0-9]*\\).*/\\1/' p3.json); " AGENT
                        " join --server 127.0.0.1:$P --ca dep/ca.crt --cert phone-1.crt --key phone-1.key --db me.db "
                        "--state phone-1.state --once --allow-plain-aggregation; rc=$?; kill $(cat med.pid); (exit $rc); }"),
                     0);
    ck_assert_msg(strstr(out, "acknowledged") != NULL, "%s", out);
    ck_assert_msg(strstr(out, "fedprox mu 0.1,") != NULL, "the task did not carry FedProx's mu: %s", out);
    ck_assert_int_eq(sh(out, sizeof(out), AGG " status dep --json"), 0);
    ck_assert_msg(strstr(out, "\"global_version\": 3") != NULL, "%s", out);
}
END_TEST

/* plait-sim export-config: the experiment's aggregator.conf, which a deployment serves with. */
START_TEST(test_export_config)
{
    char out[8192];
    ck_assert_int_eq(sh(out, sizeof(out), SIM " export-config --set lora.mode=fedit --clients-per-round 5 --strategy fedadam"),
                     0);
    ck_assert_msg(strstr(out, "lora_mode = fedit\n") && strstr(out, "target_cohort = 5\n") &&
                      strstr(out, "server_opt = fedadam\n") && strstr(out, "lora_rank = 8\n") && strstr(out, "lr = 0.003\n"),
                  "%s", out);
    char *conf = tu_path(scratch, "exp.conf");
    ck_assert_int_eq(tu_write_file(conf, out, strlen(out)), 0);
    free(conf);
    char *model = tu_path(tu_assets_dir(), "stories260K.bin");
    ck_assert_int_eq(sh(out, sizeof(out), AGG " init dep --base-model '%s'", model), 0);
    free(model);
    ck_assert_int_eq(sh(out, sizeof(out), "cp exp.conf dep/aggregator.conf"), 0);
    /* It serves: the log's first round has the exported cohort. */
    ck_assert_int_eq(sh(out, sizeof(out),
                        "true; { (" AGG " serve dep --port 0 --port-file p.json --set metrics_enabled=false 2>serve.log & "
                        "echo $! > serve.pid); for i in $(seq 600); do [ -s p.json ] && break; sleep 0.1; done; "
                        "kill $(cat serve.pid); for i in $(seq 600); do kill -0 $(cat serve.pid) 2>/dev/null || break; sleep 0.1; "
                        "done; cat serve.log; }"),
                     0);
    ck_assert_msg(strstr(out, "target_cohort=5 min_cohort=3") != NULL, "%s", out);
}
END_TEST

/* docs/client-api.md's build line, run against an installed tree. */
START_TEST(test_install_embed)
{
    char out[8192];
    if (sh(out, sizeof(out), "pkg-config --version") != 0 || sh(out, sizeof(out), "'%s' --version", PLAIT_TEST_CC) != 0) {
        fprintf(stderr, "check_ux: pkg-config or the C compiler is missing: install test skipped\n");
        return;
    }
    ck_assert_int_eq(sh(out, sizeof(out), "'%s' --install '%s' --prefix inst", PLAIT_CMAKE_COMMAND, PLAIT_BINARY_DIR), 0);
    char *lib = tu_path(scratch, "inst/lib/libplait.a"), *pc = tu_path(scratch, "inst/lib/pkgconfig/plait.pc");
    struct stat sb;
    ck_assert_int_eq(stat(lib, &sb), 0);
    ck_assert_int_eq(stat(pc, &sb), 0);
    free(lib);
    free(pc);
    /* Exactly the guide's line (plus the sanitizer flags of a sanitizer build). */
    int rc = sh(out, sizeof(out),
                "'%s' '%s/examples/embed.c' %s $(PKG_CONFIG_PATH=\"$PWD/inst/lib/pkgconfig\" pkg-config --cflags --libs "
                "plait) -o embed",
                PLAIT_TEST_CC, PLAIT_SOURCE_DIR, PLAIT_TEST_SAN_FLAGS);
    ck_assert_msg(rc == 0, "build against the installed tree failed: %s", out);
    /* It runs: without arguments it prints its usage and exits 2. */
    ck_assert_int_eq(sh(out, sizeof(out), "./embed"), 2);
    ck_assert_msg(strstr(out, "usage:") != NULL, "%s", out);
    /* The installed binaries run, plait-sim's network mode finds its siblings. */
    ck_assert_int_eq(sh(out, sizeof(out), "inst/bin/plait-aggregator --version"), 0);
}
END_TEST

Suite *ux_suite(void)
{
    Suite *s = suite_create("ux");
    TCase *tc = tcase_create("sim");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, test_sim_first_steps);
    tcase_add_test(tc, test_sim_out_rerun_config);
    tcase_add_test(tc, test_sim_seeds_compare);
    tcase_add_test(tc, test_sim_dirichlet);
    suite_add_tcase(s, tc);
    tc = tcase_create("agent");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, test_agent_first_hour);
    tcase_add_test(tc, test_agent_join_errors);
    tcase_add_test(tc, test_install_embed);
    suite_add_tcase(s, tc);
    tc = tcase_create("operator");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, test_operator_cli);
    tcase_add_test(tc, test_readme_deployment);
    tcase_add_test(tc, test_export_config);
    suite_add_tcase(s, tc);
    return s;
}
