/*
 * check_federation.c: the "done when": a real aggregator process and
 * 8 real `plait-agent join` processes on loopback over mutual TLS run 3
 * rounds, and the held-out loss of the exported global adapter falls after
 * every round.
 *
 * Data: 8 disjoint 8 KB slices of tinyshakespeare (one device store each,
 * via `plait-agent ingest`); held-out text: a 16 KB slice far from them. The
 * base model (stories260K, trained on TinyStories) has not seen Shakespeare,
 * so the adapter has something to learn. Tiny rounds: 8 local steps, B=2,
 * T=32; the whole test takes a few seconds, bounded by max-runtime and
 * the tcase timeout.
 */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"
#include "integ.h"
#include "testutil.h"

#ifndef PLAIT_AGENT_BIN
#define PLAIT_AGENT_BIN ""
#endif

#define N_AGENTS 8
#define N_ROUNDS 3

static void write_slice(const char *path, const char *text, size_t off, size_t len)
{
    ck_assert_int_eq(tu_write_file(path, text + off, len), 0);
}

/* Enroll dev0..dev<n-1> in d and give each a device store of its 8 KB slice of text. */
static void enroll_with_stores(it_dep_t *d, int n)
{
    size_t tlen;
    char *tp = tu_path(tu_assets_dir(), "tinyshakespeare.txt");
    char *text = (char *)tu_read_file(tp, &tlen);
    free(tp);
    ck_assert_ptr_nonnull(text);
    ck_assert(tlen >= (size_t)n * 8000);
    for (int i = 0; i < n; i++) {
        char id[16], txt[700], db[700];
        snprintf(id, sizeof(id), "dev%d", i);
        ck_assert_int_eq(it_enroll(d, id), 0);
        snprintf(txt, sizeof(txt), "%s/%s.txt", d->dir, id);
        snprintf(db, sizeof(db), "%s/%s.db", d->dir, id);
        write_slice(txt, text, (size_t)i * 8000, 8000);
        char *argv[] = {(char *)PLAIT_AGENT_BIN, "ingest", "--db", db, "--text", txt, NULL};
        ck_assert_int_eq(it_run(argv, NULL, NULL, 30), 0);
    }
    free(text);
}

/* `plait-agent join` for dev<i> of d, a daemon until `rounds` acknowledged rounds (seed i + 1, at
 * most 150 s), stderr to d's dev<i>.log (its path into log when not NULL); extra: more flags,
 * NULL-terminated, or NULL. */
static pid_t spawn_agent(const it_dep_t *d, int i, int rounds, char log[700], const char *const *extra)
{
    char id[16], server[64], ca[700], crt[700], key[700], db[700], st[700], seed[16], rs[16], lg[700];
    snprintf(id, sizeof(id), "dev%d", i);
    snprintf(server, sizeof(server), "127.0.0.1:%d", d->port);
    snprintf(ca, sizeof(ca), "%s/ca.crt", d->dir);
    snprintf(crt, sizeof(crt), "%s/%s.crt", d->dir, id);
    snprintf(key, sizeof(key), "%s/%s.key", d->dir, id);
    snprintf(db, sizeof(db), "%s/%s.db", d->dir, id);
    snprintf(st, sizeof(st), "%s/%s.state", d->dir, id);
    snprintf(lg, sizeof(lg), "%s/%s.log", d->dir, id);
    snprintf(seed, sizeof(seed), "%d", i + 1);
    snprintf(rs, sizeof(rs), "%d", rounds);
    if (log) snprintf(log, 700, "%s", lg);
    char *argv[40] = {(char *)PLAIT_AGENT_BIN, "join", "--server", server, "--ca", ca, "--cert", crt, "--key", key,
                      "--db", db, "--state", st, "--daemon", "--rounds", rs, "--rejoin-ms", "100", "--seed", seed,
                      "--max-runtime", "150"};
    int n = 23;
    for (; extra && *extra && n < 39; extra++) argv[n++] = (char *)*extra;
    argv[n] = NULL;
    return it_spawn(argv, NULL, lg);
}

/* Held-out loss of base + adapter file. */
static double heldout_loss(const it_dep_t *d, const char *adapter, const char *heldout)
{
    char out[700], err[700];
    snprintf(out, sizeof(out), "%s/eval.json", d->dir);
    snprintf(err, sizeof(err), "%s/eval.log", d->dir);
    char *argv[] = {(char *)PLAIT_AGENT_BIN, "eval", "--text", (char *)heldout, "--adapter", (char *)adapter,
                    "--seq", "32", "--max-windows", "64", "--json", NULL};
    ck_assert_int_eq(it_run(argv, out, err, 60), 0);
    size_t n;
    char *j = (char *)tu_read_file(out, &n);
    ck_assert_ptr_nonnull(j);
    char *p = strstr(j, "\"adapter_loss\":");
    ck_assert_ptr_nonnull(p);
    double loss = strtod(p + strlen("\"adapter_loss\":"), NULL);
    free(j);
    return loss;
}


/* A counter of the aggregator's /metrics text (-1 when absent). */
static long long metric(const char *text, const char *name)
{
    const char *p = text ? strstr(text, name) : NULL;
    return p ? strtoll(p + strlen(name), NULL, 10) : -1;
}

/* Adapter downloads (issue 10, item 2): every agent rebuilt at least min_deltas rounds from a
 * delta of the version it held and, under FFA-LoRA, every round from a compact encoding (the
 * seeded B span or a delta, whichever is smaller: early rounds move B by more than an exact
 * delta saves); none fell back to a full download; and its cached adapter is byte for byte the
 * version it trained on last (exported from the store), so the rebuilt SHA-256 matched. */
static void check_downloads(const it_dep_t *d, int n_agents, int rounds, int ffa, int min_deltas, const char *metrics)
{
    char out[700], vs[8];
    snprintf(out, sizeof(out), "%s/last.safetensors", d->dir);
    snprintf(vs, sizeof(vs), "%d", rounds);
    ck_assert_int_eq(it_cli("export", d->dir, "--version", vs, "--out", out, NULL), 0);
    size_t want_len = 0;
    uint8_t *want = tu_read_file(out, &want_len);
    ck_assert_ptr_nonnull(want);
    for (int i = 0; i < n_agents; i++) {
        char path[700];
        snprintf(path, sizeof(path), "%s/dev%d.log", d->dir, i);
        char *log = (char *)tu_read_file(path, NULL);
        ck_assert_ptr_nonnull(log);
        int deltas = 0;
        for (const char *p = log; (p = strstr(p, "rebuilt from a delta download")) != NULL; p++) deltas++;
        int compact = 0;
        for (const char *p = log; (p = strstr(p, " rebuilt from a ")) != NULL; p++) compact++;
        ck_assert_msg(deltas >= min_deltas, "dev%d: %d delta downloads in %d rounds", i, deltas, rounds);
        if (ffa) ck_assert_msg(compact >= rounds, "dev%d: %d compact downloads in %d rounds", i, compact, rounds);
        ck_assert_msg(strstr(log, "downloading the full adapter") == NULL, "dev%d fell back to a full download", i);
        free(log);
        snprintf(path, sizeof(path), "%s/dev%d.state/global.safetensors", d->dir, i);
        size_t got_len = 0;
        uint8_t *got = tu_read_file(path, &got_len);
        ck_assert_ptr_nonnull(got);
        ck_assert_uint_eq(got_len, want_len);
        ck_assert_msg(memcmp(got, want, want_len) == 0, "dev%d: cached adapter differs from version %d", i, rounds);
        free(got);
    }
    free(want);
    long long nd = metric(metrics, "plait_adapter_downloads_total{encoding=\"delta\"} ");
    long long bd = metric(metrics, "plait_adapter_download_bytes_total{encoding=\"delta\"} ");
    long long bf = metric(metrics, "plait_adapter_download_bytes_total{encoding=\"full\"} ");
    long long nf = metric(metrics, "plait_adapter_downloads_total{encoding=\"full\"} ");
    long long ns = metric(metrics, "plait_adapter_downloads_total{encoding=\"seeded\"} ");
    ck_assert_int_ge(nd, (long long)n_agents * min_deltas);
    if (ffa) ck_assert_int_ge(nd + ns, (long long)n_agents * rounds);
    /* full files only where nothing else can rebuild: round 1 outside FFA-LoRA */
    ck_assert_int_eq(nf, ffa ? 0 : n_agents);
    if (ffa)
        ck_assert_int_eq(bf, 0);
    else
        ck_assert_int_gt(bf, 0);
    fprintf(stderr, "downloads: %lld deltas, %.0f bytes each; %lld seeded; %lld full (adapter %zu bytes)\n", nd,
            nd ? (double)bd / (double)nd : 0.0, ns, nf, want_len);
}

START_TEST(test_federation_loss_falls)
{
    if (PLAIT_AGENT_BIN[0] == '\0') return; /* built without the agent */
    it_dep_t d;
    ck_assert_int_eq(it_init(&d, "integ_fed", "target_cohort=8", "min_cohort=6", "overselect=1",
                             "selection_timeout_s=60", "round_timeout_s=60", "local_steps=8", "batch=2",
                             "seq_len=32", "lr=0.05", "retry_ms=300", "idle_timeout_s=60",
                             "max_preauth_per_addr=64" /* all 8 agents connect from 127.0.0.1 */, NULL),
                     0);
    size_t tlen;
    char *tp = tu_path(tu_assets_dir(), "tinyshakespeare.txt");
    char *text = (char *)tu_read_file(tp, &tlen);
    free(tp);
    ck_assert_ptr_nonnull(text);
    ck_assert(tlen > 220000);
    char heldout[700];
    snprintf(heldout, sizeof(heldout), "%s/heldout.txt", d.dir);
    write_slice(heldout, text, 200000, 16000);
    enroll_with_stores(&d, N_AGENTS);
    free(text);
    ck_assert_int_eq(it_start(&d, NULL), 0);

    /* 8 agent processes, each until it has 3 acknowledged rounds */
    pid_t pids[N_AGENTS];
    for (int i = 0; i < N_AGENTS; i++) {
        pids[i] = spawn_agent(&d, i, 3, NULL, NULL);
        ck_assert(pids[i] > 0);
    }
    double deadline = it_mono() + 170;
    for (int i = 0; i < N_AGENTS; i++) ck_assert_int_eq(it_reap(pids[i], deadline), 0);
    for (int r = 1; r <= N_ROUNDS; r++) {
        char needle[96];
        snprintf(needle, sizeof(needle), "round committed round=%d version=%d accepted=8", r, r + 1);
        ck_assert_msg(it_log_wait(&d, needle, 10000), "missing: %s", needle);
    }
    char *metrics = it_metrics(&d);
    ck_assert_int_eq(it_stop(&d), 0);
    ck_assert_int_eq(it_log_count(&d, "reason="), 0); /* nobody was refused */
    check_downloads(&d, N_AGENTS, N_ROUNDS, 1, 0, metrics);
    free(metrics);

    /* held-out loss of versions 1 (initial: B = 0, the base model) .. 4 */
    double loss[N_ROUNDS + 2];
    for (int v = 1; v <= N_ROUNDS + 1; v++) {
        char out[700], vs[8];
        snprintf(out, sizeof(out), "%s/v%d.safetensors", d.dir, v);
        snprintf(vs, sizeof(vs), "%d", v);
        ck_assert_int_eq(it_cli("export", d.dir, "--version", vs, "--out", out, NULL), 0);
        loss[v] = heldout_loss(&d, out, heldout);
        fprintf(stderr, "federation: held-out loss of global adapter v%d = %.6f\n", v, loss[v]);
        if (v > 1) ck_assert_msg(loss[v] < loss[v - 1], "loss did not fall: v%d %.6f >= v%d %.6f", v, loss[v], v - 1,
                                 loss[v - 1]);
    }
    ck_assert(loss[N_ROUNDS + 1] < loss[1] - 0.1);
}
END_TEST

/* FedIT (A and B averaged) with download_delta_bits = 8: each version is committed as the
 * previous one plus an 8-bit block-quantized delta, and 4 agents rebuild rounds 2 and 3 from
 * that delta bit for bit (their cached adapter equals the stored version). Plain rounds. */
START_TEST(test_federation_quantized_deltas)
{
    if (PLAIT_AGENT_BIN[0] == '\0') return;
    enum { NA = 4 };
    it_dep_t d;
    ck_assert_int_eq(it_init(&d, "integ_fedq", "target_cohort=4", "min_cohort=4", "overselect=1",
                             "selection_timeout_s=60", "round_timeout_s=60", "local_steps=4", "batch=2",
                             "seq_len=32", "lr=0.05", "retry_ms=300", "idle_timeout_s=60", "secure_agg=false",
                             "lora_mode=fedit", "download_delta_bits=8", "max_preauth_per_addr=64", NULL),
                     0);
    enroll_with_stores(&d, NA);
    ck_assert_int_eq(it_start(&d, NULL), 0);
    pid_t pids[NA];
    for (int i = 0; i < NA; i++) {
        static const char *const extra[] = {"--allow-plain-aggregation", NULL};
        pids[i] = spawn_agent(&d, i, 3, NULL, extra);
        ck_assert(pids[i] > 0);
    }
    double deadline = it_mono() + 170;
    for (int i = 0; i < NA; i++) ck_assert_int_eq(it_reap(pids[i], deadline), 0);
    ck_assert(it_log_wait(&d, "round committed round=3 version=4 accepted=4", 10000));
    char *metrics = it_metrics(&d);
    ck_assert_int_eq(it_stop(&d), 0);
    ck_assert_int_eq(it_log_count(&d, "no quantized download delta"), 0);
    check_downloads(&d, NA, 3, 0, 2, metrics);
    /* the agents packed every update at quant_bits (16: half the words' bytes), as the tasks offered */
    for (int i = 0; i < NA; i++) {
        char path[700];
        snprintf(path, sizeof(path), "%s/dev%d.log", d.dir, i);
        char *log = (char *)tu_read_file(path, NULL);
        ck_assert_ptr_nonnull(log);
        int packed = 0;
        for (const char *p = log; (p = strstr(p, " bytes, packed)")) != NULL; p++) packed++;
        ck_assert_msg(packed >= 3, "dev%d: %d packed uploads", i, packed);
        ck_assert_ptr_null(strstr(log, " bytes, words)"));
        free(log);
    }
    ck_assert_int_eq(metric(metrics, "plait_update_bytes_total{form=\"words\"} "), 0);
    long long pb = metric(metrics, "plait_update_bytes_total{form=\"packed\"} ");
    ck_assert_int_gt(pb, 0);
    ck_assert_int_eq(pb % 2, 0);
    free(metrics);
}
END_TEST

/* Wait (until deadline) for needle in a file; 1 if it appeared. */
static int file_wait(const char *path, const char *needle, double deadline)
{
    while (it_mono() < deadline) {
        size_t n = 0;
        char *t = (char *)tu_read_file(path, &n);
        int hit = t && strstr(t, needle);
        free(t);
        if (hit) return 1;
        usleep(20000);
    }
    return 0;
}

/* Secure aggregation is on by default: 8 agents, one killed once its shares were relayed,
 * one once its masked update left; the rounds still commit. */
START_TEST(test_federation_secure_with_kills)
{
    if (PLAIT_AGENT_BIN[0] == '\0') return;
    it_dep_t d;
    ck_assert_int_eq(it_init(&d, "integ_fed_kill", "target_cohort=8", "min_cohort=4", "overselect=1",
                             "selection_timeout_s=15", "round_timeout_s=60", "secagg_stage_timeout_s=20",
                             "local_steps=4", "batch=2", "seq_len=32", "retry_ms=300", "idle_timeout_s=60",
                             "max_preauth_per_addr=64", NULL),
                     0);
    char *conf = it_read(&d, "aggregator.conf");
    ck_assert_ptr_nonnull(strstr(conf, "secure_agg = true"));
    free(conf);
    enroll_with_stores(&d, N_AGENTS);
    ck_assert_int_eq(it_start(&d, NULL), 0);
    char logs[N_AGENTS][700];
    pid_t pids[N_AGENTS];
    for (int i = 0; i < N_AGENTS; i++) {
        pids[i] = spawn_agent(&d, i, 2, logs[i], NULL);
        ck_assert(pids[i] > 0);
    }
    double deadline = it_mono() + 170;
    /* dev6 dies after the share stage, dev7 after sending its masked update */
    ck_assert(file_wait(logs[6], "secure aggregation index", deadline));
    kill(pids[6], SIGKILL);
    ck_assert(file_wait(logs[7], "masked update sent", deadline));
    kill(pids[7], SIGKILL);
    it_reap(pids[6], deadline);
    it_reap(pids[7], deadline);
    for (int i = 0; i < 6; i++) ck_assert_int_eq(it_reap(pids[i], deadline), 0);
    ck_assert_msg(it_log_wait(&d, "round committed round=1 version=2", 10000), "round 1 did not commit");
    ck_assert_msg(it_log_wait(&d, "round committed round=2 version=3", 10000), "round 2 did not commit");
    ck_assert_int_eq(it_stop(&d), 0);
}
END_TEST

/* One hostile agent (the documented test hook PLAIT_TEST_SECAGG_HOSTILE): dev0 seals
 * garbage for one neighbour and reveals a wrong share of every other device. The honest
 * agents finish their round, and the round commits with all 8 masked inputs (the wrong
 * shares are outvoted: docs/secagg.md, "Hostile devices"). */
START_TEST(test_federation_secure_hostile_device)
{
    if (PLAIT_AGENT_BIN[0] == '\0') return;
    it_dep_t d;
    ck_assert_int_eq(it_init(&d, "integ_fed_hostile", "target_cohort=8", "min_cohort=4", "overselect=1",
                             "selection_timeout_s=15", "round_timeout_s=60", "secagg_stage_timeout_s=20",
                             "local_steps=2", "batch=2", "seq_len=32", "retry_ms=300", "idle_timeout_s=60",
                             "max_preauth_per_addr=64", NULL),
                     0);
    enroll_with_stores(&d, N_AGENTS);
    ck_assert_int_eq(it_start(&d, NULL), 0);
    char logs[N_AGENTS][700];
    pid_t pids[N_AGENTS];
    for (int i = 0; i < N_AGENTS; i++) {
        if (i == 0) setenv("PLAIT_TEST_SECAGG_HOSTILE", "share,reveal", 1);
        pids[i] = spawn_agent(&d, i, 1, logs[i], NULL);
        if (i == 0) unsetenv("PLAIT_TEST_SECAGG_HOSTILE");
        ck_assert(pids[i] > 0);
    }
    double deadline = it_mono() + 170;
    for (int i = 0; i < N_AGENTS; i++) ck_assert_int_eq(it_reap(pids[i], deadline), 0);
    ck_assert_msg(it_log_wait(&d, "round committed round=1 version=2 accepted=8", 10000), "round 1 did not commit");
    ck_assert_int_ge(it_log_count(&d, "revealed inconsistent shares"), 1);
    /* exactly one honest agent got the garbage, dropped it and stayed */
    int dropped = 0;
    for (int i = 1; i < N_AGENTS; i++) {
        size_t n = 0;
        char *t = (char *)tu_read_file(logs[i], &n);
        dropped += t && strstr(t, "does not open: dropped") != NULL;
        free(t);
    }
    ck_assert_int_eq(dropped, 1);
    ck_assert_int_eq(it_stop(&d), 0);
}
END_TEST

/* dp = distributed with real agents: each adds its discrete Gaussian share before masking and
 * the round commits with a "ddg" ledger row. */
START_TEST(test_federation_distributed_dp)
{
    if (PLAIT_AGENT_BIN[0] == '\0') return;
    enum { NA = 3 };
    it_dep_t d;
    ck_assert_int_eq(it_init(&d, "integ_fed_ddg", "target_cohort=3", "min_cohort=3", "overselect=1",
                             "selection_timeout_s=30", "round_timeout_s=60", "secagg_stage_timeout_s=30",
                             "local_steps=2", "batch=2", "seq_len=32", "retry_ms=300", "idle_timeout_s=60",
                             "secure_agg=true", "dp=distributed", "noise_multiplier=1", "example_cap=1",
                             "dp_delta=1e-5", "max_preauth_per_addr=64", NULL),
                     0);
    enroll_with_stores(&d, NA);
    ck_assert_int_eq(it_start(&d, NULL), 0);
    char logs[NA][700];
    pid_t pids[NA];
    for (int i = 0; i < NA; i++) {
        static const char *const extra[] = {"--min-noise", "1", NULL};
        pids[i] = spawn_agent(&d, i, 1, logs[i], extra);
        ck_assert(pids[i] > 0);
    }
    double deadline = it_mono() + 170;
    for (int i = 0; i < NA; i++) ck_assert_int_eq(it_reap(pids[i], deadline), 0);
    for (int i = 0; i < NA; i++) ck_assert(file_wait(logs[i], "distributed DP noise share added", deadline));
    ck_assert_msg(it_log_wait(&d, "round committed round=1 version=2 accepted=3", 10000), "round 1 did not commit");
    ck_assert_int_eq(it_stop(&d), 0);
    static char out[8192];
    char *argv[] = {"plait-aggregator", "privacy", d.dir, "--json", NULL};
    FILE *o = tmpfile(), *e = tmpfile();
    ck_assert_int_eq(plait__agg_cli_main(4, argv, o, e), 0);
    rewind(o);
    out[fread(out, 1, sizeof(out) - 1, o)] = '\0';
    fclose(o);
    fclose(e);
    ck_assert_msg(strstr(out, "\"mechanism\": \"ddg\"") != NULL, "%s", out);
    ck_assert_msg(strstr(out, "\"dp_rounds\": 1") != NULL, "%s", out);
}
END_TEST

Suite *federation_suite(void)
{
    Suite *s = suite_create("integ_federation");
    TCase *tc = tcase_create("federation");
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, test_federation_loss_falls);
    tcase_add_test(tc, test_federation_quantized_deltas);
    tcase_add_test(tc, test_federation_secure_with_kills);
    tcase_add_test(tc, test_federation_secure_hostile_device);
    tcase_add_test(tc, test_federation_distributed_dp);
    suite_add_tcase(s, tc);
    return s;
}
