/*
 * net.c: network mode. The same experiment runs against the real service:
 * a temporary deployment (plait-aggregator init, one enrolled device
 * certificate per client), `plait-aggregator serve` on 127.0.0.1 port 0 (the
 * port read back from --port-file, as tests/integ does), and for each round
 * K real `plait-agent join --daemon --rounds 1` processes, one per sampled
 * client, each with its own device store holding only that client's
 * training records (the population's "train" kind). After a committed round
 * the global adapter is exported (plait-aggregator export) for sim.c to
 * evaluate with its own held-out evaluation.
 *
 * Every child is started with fork/execv and waited for with a deadline
 * (SIGKILL past it); the aggregator gets SIGTERM at the end. All traffic is
 * to 127.0.0.1.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "plait/log.h"
#include "plait/lora.h"
#include "plait/rng.h"
#include "plait/secagg.h"
#include "plait/store.h"
#include "sim_int.h"

#define NET_ROOT (PLAIT_SIM_PATH_MAX + 16)  /* <out>/net-XXXXXX */
#define NET_PATH (NET_ROOT + 64)            /* files under it */

struct plait__sim_net_s {
    const plait_sim_config_t *cfg;
    const plait_sim_pop_t *pop;
    char agg[NET_PATH], agent[NET_PATH];
    int plain; /* the deployment runs without secure aggregation: agents must accept that */
    char root[NET_ROOT]; /* the scratch folder: certificates, stores, logs */
    char dir[NET_PATH];  /* the deployment */
    char log[NET_PATH];  /* the aggregator's log */
    pid_t pid;
    int port;
    int committed;       /* "round committed" lines seen so far */
    int failed;          /* "round failed" / "round commit failed" lines seen so far */
};

static double mono(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* Start argv with stderr appended to log (NULL: /dev/null) and stdout to out (truncated; NULL: the log too). */
static pid_t spawn_out(char *const argv[], const char *log, const char *out)
{
    fflush(NULL);
    pid_t pid = fork();
    if (pid != 0) return pid;
    int fd = open(log ? log : "/dev/null", O_WRONLY | O_CREAT | O_APPEND, 0644);
    int fo = out ? open(out, O_WRONLY | O_CREAT | O_TRUNC, 0644) : -1;
    if (fd >= 0) {
        dup2(fd, 2);
        if (fo < 0) dup2(fd, 1);
        close(fd);
    }
    if (fo >= 0) {
        dup2(fo, 1);
        close(fo);
    }
    execv(argv[0], argv);
    _exit(127);
}

static pid_t spawn(char *const argv[], const char *log)
{
    return spawn_out(argv, log, NULL);
}

/* Wait for pid until deadline (monotonic s); SIGKILL past it. Exit status, or -1. */
static int reap(pid_t pid, double deadline)
{
    for (;;) {
        int st;
        pid_t r = waitpid(pid, &st, WNOHANG);
        if (r == pid) return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
        if (r < 0 && errno != EINTR) return -1;
        if (mono() > deadline) {
            kill(pid, SIGKILL);
            waitpid(pid, &st, 0);
            return -1;
        }
        sleep_ms(20);
    }
}

static int run_cmd(char *const argv[], const char *log, double timeout_s)
{
    pid_t pid = spawn(argv, log);
    if (pid < 0) return -1;
    return reap(pid, mono() + timeout_s);
}

/* A binary: the flag's path, or rel next to this executable's folder's parent (the build tree), or its base
 * name beside this executable (an installed bin/). */
static int locate(char *dst, const char *given, const char *rel, const char *flag)
{
    if (given[0]) {
        snprintf(dst, NET_PATH, "%s", given);
    } else {
        char exe[PLAIT_SIM_PATH_MAX];
        ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
        if (n <= 0) return plait_fail(PLAIT_ENOENT, "network mode: cannot find this executable; give %s", flag);
        exe[n] = '\0';
        const char *dir = dirname(exe);
        snprintf(dst, NET_PATH, "%s/../%s", dir, rel);
        /* Installed (cmake --install): the binaries are siblings in bin/. */
        const char *base = strrchr(rel, '/');
        if (access(dst, X_OK) != 0 && base) snprintf(dst, NET_PATH, "%s/%s", dir, base + 1);
    }
    if (access(dst, X_OK) != 0) return plait_fail(PLAIT_ENOENT, "network mode: %s is not executable (%s)", dst, flag);
    return 0;
}

static char *read_all(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    size_t cap = 4096, n = 0;
    char *s = malloc(cap);
    while (s) {
        size_t k = fread(s + n, 1, cap - n - 1, f);
        n += k;
        if (k == 0) break;
        if (n + 1 == cap) {
            char *t = realloc(s, cap *= 2);
            if (!t) {
                free(s);
                s = NULL;
            } else {
                s = t;
            }
        }
    }
    fclose(f);
    if (s) s[n] = '\0';
    return s;
}

/* ---- per-client agent stores: only the client's training records ------------- */

static int copy_train(void *ud, const plait_store_record_t *rec)
{
    if (strcmp(rec->kind, PLAIT__SIM_KIND_TRAIN) != 0) return 0;
    int64_t id;
    return plait_store_add((plait_store_t *)ud, rec->time, rec->kind, rec->text, rec->len, &id);
}

static int write_agent_store(const plait_sim_pop_t *pop, size_t i, const char *dst)
{
    char src[PLAIT_SIM_PATH_MAX + 32];
    plait_sim_pop_store_path(pop, i, src, sizeof(src));
    plait_store_config_t sc;
    plait_store_config_default(&sc);
    sc.path = src;
    sc.create = false;
    sc.wal = false;
    sc.heldout_fraction = 0.0;
    sc.max_text = PLAIT_STORE_MAX_TEXT_CEILING;
    plait_store_t *in = NULL, *out = NULL;
    int rc = plait_store_open(&in, &sc);
    if (rc != 0) return rc;
    unlink(dst);
    sc.path = dst;
    sc.create = true;
    if ((rc = plait_store_open(&out, &sc)) == 0 && (rc = plait_store_begin(out)) == 0) {
        rc = plait_store_foreach(in, PLAIT_STORE_ALL, copy_train, out);
        if (rc == 0) rc = plait_store_commit(out);
        else plait_store_rollback(out);
    }
    plait_store_close(out);
    plait_store_close(in);
    return rc;
}

/* ---- the deployment ------------------------------------------------------------ */

static int agg_cmd(plait__sim_net_t *n, char **argv, double timeout_s, const char *what)
{
    int st = run_cmd(argv, n->log, timeout_s);
    if (st != 0) return plait_fail(PLAIT_EIO, "network mode: plait-aggregator %s failed (status %d; see %s)", what, st,
                                   n->log);
    return 0;
}

int plait__sim_net_start(plait__sim_net_t **out, const plait_sim_config_t *cfg, const plait_sim_pop_t *pop)
{
    *out = NULL;
    plait__sim_net_t *n = calloc(1, sizeof(*n));
    if (!n) return plait_fail(PLAIT_ENOMEM, "network mode");
    n->cfg = cfg;
    n->pop = pop;
    int rc;
    if (cfg->clients_per_round > 1024) {
        free(n);
        return plait_fail(PLAIT_EINVAL, "network mode: rounds.clients_per_round %zu: the whole cohort runs as "
                                        "processes at once; at most 1024", cfg->clients_per_round);
    }
    if ((rc = locate(n->agg, cfg->aggregator_bin, "aggregator/plait-aggregator", "--aggregator-bin")) != 0 ||
        (rc = locate(n->agent, cfg->agent_bin, "client/plait-agent", "--agent-bin")) != 0) {
        free(n);
        return rc;
    }
    char *tmpl = n->root;
    snprintf(tmpl, NET_ROOT, "%s/net-XXXXXX", cfg->out_dir);
    if (!mkdtemp(tmpl)) {
        free(n);
        return plait_fail(PLAIT_EIO, "%s: cannot create the deployment folder", tmpl);
    }
    /* The deployment is DIR/dep (init wants a fresh folder); logs and stores beside it. */
    snprintf(n->dir, sizeof(n->dir), "%s/dep", tmpl);
    snprintf(n->log, sizeof(n->log), "%s/aggregator.log", tmpl);

    /* The aggregator's config from the experiment (export.c), then network mode's own. */
    char sets[40][160];
    int ns = plait__sim_agg_sets(cfg, sets, 32);
    if (ns < 0) return ns; /* not reached: config validation refuses such strategies in network mode */
#define SET(...) snprintf(sets[ns++], sizeof(sets[0]), __VA_ARGS__)
    SET("overselect=1"); /* exactly the K sampled agents are started */
    SET("selection_timeout_s=60");
    SET("round_timeout_s=120");
    SET("retry_ms=200");
    SET("idle_timeout_s=120");
    SET("max_connections=%zu", cfg->clients_per_round + 64);
    SET("population=%zu", pop->n);
    if (strcmp(cfg->aggregation, "mean") != 0) {
        n->plain = 1; /* export.c already set secure_agg = false: robust estimators need each update */
    } else {
        /* Secure aggregation (the aggregator's default) needs a cohort that SecAgg+ parameters
         * exist for; smaller ones run plain, and say so. */
        plait_secagg_params_t sp;
        unsigned m = 0;
        int secure = cfg->clients_per_round >= 2 && cfg->clients_per_round <= PLAIT_SECAGG_MAX_COHORT &&
                     plait_secagg_mask_bits(cfg->quant_bits, (uint32_t)cfg->clients_per_round, &m) == 0 &&
                     plait_secagg_params_choose((uint32_t)cfg->clients_per_round, 0.3, 0.0, 20.0, &sp) == 0;
        if (!secure)
            fprintf(stderr, "plait-sim: network mode: %zu clients per round are too few for secure aggregation; "
                    "rounds run without it\n", cfg->clients_per_round);
        SET("secure_agg=%s", secure ? "true" : "false");
        n->plain = !secure;
    }
    if (cfg->noise_multiplier > 0) /* the simulator already sampled the K agents it starts: the service admits */
        SET("sampling_rate=1");     /* all of them, so its ledger records q = 1 (no amplification claimed) */
#undef SET
    char *argv[96];
    int a = 0;
    argv[a++] = n->agg;
    argv[a++] = "init";
    argv[a++] = n->dir;
    argv[a++] = "--base-model";
    argv[a++] = (char *)cfg->model;
    for (int k = 0; k < ns; k++) {
        argv[a++] = "--set";
        argv[a++] = sets[k];
    }
    argv[a] = NULL;
    if ((rc = agg_cmd(n, argv, 60, "init")) != 0) goto fail;

    /* One certificate and one training-only store per client. */
    for (size_t i = 0; i < pop->n; i++) {
        char id[32], crt[NET_PATH], key[NET_PATH], db[NET_PATH];
        snprintf(id, sizeof(id), "c%07zu", i);
        snprintf(crt, sizeof(crt), "%s/%s.crt", tmpl, id);
        snprintf(key, sizeof(key), "%s/%s.key", tmpl, id);
        snprintf(db, sizeof(db), "%s/%s.db", tmpl, id);
        char *ev[] = {n->agg, "enroll", n->dir, "--device", id, "--out-key", key, "--out-cert", crt, NULL};
        if ((rc = agg_cmd(n, ev, 60, "enroll")) != 0) goto fail;
        if ((rc = write_agent_store(pop, i, db)) != 0) {
            rc = plait__sim_wrap(rc, "network mode: agent store");
            goto fail;
        }
    }

    /* serve on 127.0.0.1, port 0, read back from the port file. */
    char pf[NET_PATH];
    snprintf(pf, sizeof(pf), "%s/ports.json", tmpl);
    char *sv[] = {n->agg, "serve", n->dir, "--port", "0", "--metrics-port", "0", "--port-file", pf, NULL};
    n->pid = spawn(sv, n->log);
    if (n->pid < 0) {
        rc = plait_fail(PLAIT_EIO, "network mode: cannot start plait-aggregator serve");
        goto fail;
    }
    for (int k = 0; k < 400 && n->port <= 0; k++) {
        FILE *f = fopen(pf, "r");
        if (f) {
            int p = 0, m = 0;
            if (fscanf(f, "{\"port\": %d, \"metrics_port\": %d}", &p, &m) == 2 && p > 0) n->port = p;
            fclose(f);
        }
        int st;
        if (n->port <= 0 && waitpid(n->pid, &st, WNOHANG) == n->pid) {
            n->pid = 0;
            break;
        }
        if (n->port <= 0) sleep_ms(50);
    }
    if (n->port <= 0) {
        rc = plait_fail(PLAIT_EIO, "network mode: plait-aggregator serve did not start (see %s)", n->log);
        goto fail;
    }
    if (!cfg->quiet)
        fprintf(stderr, "plait-sim: network mode: plait-aggregator on 127.0.0.1:%d, deployment %s\n", n->port, tmpl);
    *out = n;
    return 0;
fail:
    plait__sim_net_stop(n);
    return rc;
}

void plait__sim_net_stop(plait__sim_net_t *n)
{
    if (!n) return;
    if (n->pid > 0) {
        kill(n->pid, SIGTERM);
        if (reap(n->pid, mono() + 15) != 0)
            PLAIT_LOG(PLAIT_LOG_WARN, "sim: plait-aggregator did not exit cleanly (see %s)", n->log);
        n->pid = 0;
    }
    free(n);
}

/* Value after key in line, or dflt. */
static unsigned long long field(const char *line, const char *key, unsigned long long dflt)
{
    const char *p = strstr(line, key);
    return p ? strtoull(p + strlen(key), NULL, 10) : dflt;
}

/* Start the K agents of round r (a seeded sample of the clients), wait for them, read the round back. */
int plait__sim_net_round(plait__sim_net_t *n, int r, size_t span_len, plait_sim_round_t *m, char *adapter,
                         size_t cap)
{
    const plait_sim_config_t *cfg = n->cfg;
    size_t k = cfg->clients_per_round, N = n->pop->n;
    if (k > N) return plait_fail(PLAIT_EINVAL, "rounds.clients_per_round %zu exceeds the %zu clients", k, N);
    adapter[0] = '\0';
    /* --min-records 1: the population already left out clients too small to train (min_lines, one window). */
    /* Partial Fisher-Yates over a seeded stream: the round's cohort. */
    size_t *perm = malloc(N * sizeof(size_t));
    pid_t *pids = calloc(k, sizeof(pid_t));
    if (!perm || !pids) {
        free(perm);
        free(pids);
        return plait_fail(PLAIT_ENOMEM, "network mode: cohort");
    }
    for (size_t i = 0; i < N; i++) perm[i] = i;
    plait_rng_t rng;
    plait_rng_seed_u64(&rng, cfg->seed, plait__sim_stream(PLAIT__SIM_RNG_SELECT, (uint64_t)r, 0));
    for (size_t i = 0; i < k; i++) {
        size_t j = i + (size_t)(plait_rng_uniform(&rng) * (double)(N - i));
        if (j >= N) j = N - 1;
        size_t t = perm[i];
        perm[i] = perm[j];
        perm[j] = t;
    }
    plait_rng_wipe(&rng);
    const char *base = n->root;
    char server[64], ca[NET_PATH + 16], rt[32];
    snprintf(server, sizeof(server), "127.0.0.1:%d", n->port);
    snprintf(ca, sizeof(ca), "%s/ca.crt", n->dir);
    double budget = 150;
    snprintf(rt, sizeof(rt), "%d", (int)budget);
    int rc = 0;
    for (size_t i = 0; i < k; i++) {
        char id[32], crt[NET_PATH], key[NET_PATH], db[NET_PATH], st[NET_PATH], log[NET_PATH], seed[32];
        snprintf(id, sizeof(id), "c%07zu", perm[i]);
        snprintf(crt, sizeof(crt), "%s/%s.crt", base, id);
        snprintf(key, sizeof(key), "%s/%s.key", base, id);
        snprintf(db, sizeof(db), "%s/%s.db", base, id);
        snprintf(st, sizeof(st), "%s/%s.state", base, id);
        snprintf(log, sizeof(log), "%s/%s.log", base, id);
        uint64_t s = plait__sim_stream(PLAIT__SIM_RNG_TRAIN, (uint64_t)r, perm[i]) ^ cfg->seed;
        snprintf(seed, sizeof(seed), "%llu", (unsigned long long)(s ? s : 1));
        char *argv[] = {n->agent, "join", "--server", server, "--ca", ca, "--cert", crt, "--key", key, "--db", db,
                        "--state", st, "--model", (char *)cfg->model, "--tokenizer", (char *)cfg->tokenizer,
                        "--daemon", "--rounds", "1", "--min-records", "1", "--rejoin-ms", "100", "--seed", seed, "--max-runtime", rt,
                        n->plain ? "--allow-plain-aggregation" : NULL, NULL};
        pids[i] = spawn(argv, log);
        if (pids[i] < 0) {
            rc = plait_fail(PLAIT_EIO, "network mode: cannot start plait-agent");
            break;
        }
    }
    double deadline = mono() + budget + 20;
    size_t ok = 0;
    for (size_t i = 0; i < k; i++)
        if (pids[i] > 0 && reap(pids[i], deadline) == 0) ok++;
    free(perm);
    free(pids);
    if (rc != 0) return rc;
    /* The round's line in the aggregator's log (committed or failed): 30 s at most, or past the service's round
     * timeout (120 s) when an agent failed, since the round then closes at its deadline with min_cohort. */
    char *line = NULL, *text = NULL;
    int failed = 0;
    for (double end = mono() + (ok < k ? 130 : 30); mono() < end; sleep_ms(100)) {
        free(text);
        text = read_all(n->log);
        if (!text) continue;
        int seen = 0;
        char *last = NULL;
        for (char *p = text; (p = strstr(p, "round committed round=")) != NULL; p++, seen++) last = p;
        if (seen > n->committed) {
            n->committed = seen;
            line = last;
            break;
        }
        int nf = 0;
        for (char *p = text; (p = strstr(p, "round ")) != NULL; p++)
            if (strncmp(p, "round failed", 12) == 0 || strncmp(p, "round commit failed", 19) == 0) nf++;
        if (nf > n->failed) {
            n->failed = nf;
            failed = 1;
            break;
        }
    }
    m->selected = k;
    m->available = N;
    m->clip = cfg->clip;
    m->train_loss = NAN;
    if (!line) {
        free(text);
        if (!cfg->quiet)
            fprintf(stderr, "plait-sim: network round %d did not commit (%zu of %zu agents finished%s; see %s)\n", r,
                    ok, k, failed ? ", the aggregator reported a failure" : "", n->log);
        m->committed = 0;
        return 0;
    }
    char *eol = strchr(line, '\n');
    if (eol) *eol = '\0';
    unsigned long long version = field(line, "version=", 0);
    m->committed = 1;
    m->participants = (size_t)field(line, "accepted=", 0);
    m->selected = (size_t)field(line, "selected=", k);
    m->dropouts = (size_t)field(line, "dropouts=", 0);
    m->stragglers = (size_t)field(line, "stragglers=", 0);
    /* Payload bytes: the adapter blob to every selected agent, one quantized update (span + weight word) back from
     * each participant; TLS and framing overhead are not counted. */
    unsigned long long ab = field(line, "adapter_bytes=", 0);
    const char *dur = strstr(line, "duration_s=");
    m->sim_time_s = dur ? strtod(dur + strlen("duration_s="), NULL) : NAN;
    free(text);
    m->bytes_down = (uint64_t)ab * m->selected;
    m->bytes_up = (uint64_t)m->participants * (uint64_t)(span_len + 1) * sizeof(uint32_t);
    char vs[32];
    snprintf(vs, sizeof(vs), "%llu", version);
    snprintf(adapter, cap, "%s/v%llu.safetensors", base, version);
    char *ex[] = {n->agg, "export", n->dir, "--version", vs, "--out", adapter, NULL};
    int exported = 0;
    for (int t = 0; t < 20 && !exported; t++) {
        pid_t p = spawn(ex, n->log);
        exported = p > 0 && reap(p, mono() + 60) == 0;
        if (!exported) sleep_ms(250); /* the database may be busy with the service */
    }
    if (!exported) {
        adapter[0] = '\0';
        return plait_fail(PLAIT_EIO, "network mode: plait-aggregator export --version %s failed (see %s)", vs, n->log);
    }
    /* epsilon so far, from `plait-aggregator status` ("privacy: epsilon E at delta D after N DP rounds") */
    if (cfg->noise_multiplier > 0) {
        char sp[NET_PATH];
        snprintf(sp, sizeof(sp), "%s/status.txt", base);
        char *sv[] = {n->agg, "status", n->dir, NULL};
        pid_t p = spawn_out(sv, n->log, sp);
        if (p > 0 && reap(p, mono() + 60) == 0) {
            char *txt = read_all(sp);
            const char *e = txt ? strstr(txt, "privacy: epsilon ") : NULL;
            m->epsilon = e ? strtod(e + strlen("privacy: epsilon "), NULL) : NAN;
            free(txt);
        } else {
            m->epsilon = NAN;
        }
    }
    return 0;
}
