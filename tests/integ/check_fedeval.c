/*
 * check_fedeval.c: federated evaluation end to end (issue #14): a real
 * aggregator and 3 real `plait-agent join` processes. Round 1 trains; the
 * operator then runs `plait-aggregator evaluate DIR`, so round 2 is an
 * evaluation round of version 2 under secure aggregation. The stored mean
 * (`evals --json`) equals the mean of the devices' held-out losses recomputed
 * with `plait-agent eval` on the exported version 2, within the quantization
 * step; no device's own loss appears in the aggregator's log. The same with
 * eval_every = 1 instead of the command. The refusals:
 * `evaluate` and eval_every without secure_agg, or with DP.
 */
#include <check.h>
#include <fcntl.h>
#include <math.h>
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

#define NA 3
#define LOSS_MAX 10.0

/* plait-aggregator argv in-process; stdout into out (NUL-terminated). Exit code. */
static int cli(char *out, size_t cap, char *err, size_t ecap, int argc, char **argv)
{
    FILE *o = tmpfile(), *e = tmpfile();
    int rc = plait__agg_cli_main(argc, argv, o, e);
    rewind(o);
    rewind(e);
    out[fread(out, 1, cap - 1, o)] = '\0';
    err[fread(err, 1, ecap - 1, e)] = '\0';
    fclose(o);
    fclose(e);
    return rc;
}

/* The device's held-out loss of adapter, as `plait-agent eval` computes it. */
static double device_loss(const it_dep_t *d, const char *db, const char *adapter)
{
    char out[700], err[700];
    snprintf(out, sizeof(out), "%s/eval.json", d->dir);
    snprintf(err, sizeof(err), "%s/eval.log", d->dir);
    char *argv[] = {(char *)PLAIT_AGENT_BIN, "eval", "--db", (char *)db, "--split", "heldout", "--adapter",
                    (char *)adapter, "--seq", "32", "--batch", "2", "--json", NULL};
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

/* by_command: the operator's `evaluate` asks for round 2; else eval_every = 1 schedules it. */
static void fedeval_run(int by_command)
{
    if (PLAIT_AGENT_BIN[0] == '\0') return; /* built without the agent */
    it_dep_t d;
    ck_assert_int_eq(it_init(&d, "integ_fedeval", by_command ? "eval_every=0" : "eval_every=1", "target_cohort=3", "min_cohort=3", "overselect=1",
                             "selection_timeout_s=30", "round_timeout_s=60", "secagg_stage_timeout_s=30",
                             "local_steps=2", "batch=2", "seq_len=32", "retry_ms=300", "idle_timeout_s=60",
                             "secure_agg=true", "eval_loss_max=10", "max_preauth_per_addr=64", NULL),
                     0);
    size_t tlen;
    char *tp = tu_path(tu_assets_dir(), "tinyshakespeare.txt");
    char *text = (char *)tu_read_file(tp, &tlen);
    free(tp);
    ck_assert_ptr_nonnull(text);
    ck_assert(tlen > NA * 24000);
    char dbs[NA][700];
    for (int i = 0; i < NA; i++) {
        char id[16], txt[700];
        snprintf(id, sizeof(id), "dev%d", i);
        ck_assert_int_eq(it_enroll(&d, id), 0);
        snprintf(txt, sizeof(txt), "%s/%s.txt", d.dir, id);
        snprintf(dbs[i], sizeof(dbs[i]), "%s/%s.db", d.dir, id);
        ck_assert_int_eq(tu_write_file(txt, text + (size_t)i * 24000, 24000), 0); /* ~10% of records held out */
        char *argv[] = {(char *)PLAIT_AGENT_BIN, "ingest", "--db", dbs[i], "--text", txt, NULL};
        ck_assert_int_eq(it_run(argv, NULL, NULL, 30), 0);
    }
    free(text);
    ck_assert_int_eq(it_start(&d, NULL), 0);
    /* Round 1 (training) is open; the operator asks for an evaluation: the next round is one. */
    ck_assert(it_log_wait(&d, "round opened round=1", 10000));
    static char out[16384], err[4096];
    if (by_command) {
        char *ev[] = {"plait-aggregator", "evaluate", d.dir, NULL};
        ck_assert_msg(cli(out, sizeof(out), err, sizeof(err), 3, ev) == 0, "%s", err);
        ck_assert_ptr_nonnull(strstr(out, "evaluation queued"));
    }

    char server[64];
    snprintf(server, sizeof(server), "127.0.0.1:%d", d.port);
    pid_t pids[NA];
    for (int i = 0; i < NA; i++) {
        char id[16], crt[700], key[700], st[700], ca[700], seed[16], log[700];
        snprintf(id, sizeof(id), "dev%d", i);
        snprintf(ca, sizeof(ca), "%s/ca.crt", d.dir);
        snprintf(crt, sizeof(crt), "%s/%s.crt", d.dir, id);
        snprintf(key, sizeof(key), "%s/%s.key", d.dir, id);
        snprintf(st, sizeof(st), "%s/%s.state", d.dir, id);
        snprintf(log, sizeof(log), "%s/%s.log", d.dir, id);
        snprintf(seed, sizeof(seed), "%d", i + 1);
        char *argv[] = {(char *)PLAIT_AGENT_BIN, "join", "--server", server, "--ca", ca, "--cert", crt, "--key", key,
                        "--db", dbs[i], "--state", st, "--daemon", "--rounds", "2", "--rejoin-ms", "100", "--seed",
                        seed, "--max-runtime", "200", NULL};
        pids[i] = it_spawn(argv, NULL, log);
        ck_assert(pids[i] > 0);
    }
    double deadline = it_mono() + 220;
    for (int i = 0; i < NA; i++) ck_assert_int_eq(it_reap(pids[i], deadline), 0);
    ck_assert_msg(it_log_wait(&d, "round committed round=1 version=2 accepted=3", 10000), "round 1 did not commit");
    ck_assert_msg(it_log_wait(&d, "evaluation committed round=2 version=2 devices=3", 10000),
                  "the evaluation did not commit");
    char *met = it_metrics(&d);
    ck_assert_ptr_nonnull(met);
    ck_assert_msg(strstr(met, "plait_evals_total 1\n") && strstr(met, "plait_eval_version 2\n") &&
                      strstr(met, "plait_eval_mean_loss "),
                  "%s", met);
    free(met);
    ck_assert_int_eq(it_stop(&d), 0);

    /* the stored mean against the devices' own losses, recomputed */
    char *evs[] = {"plait-aggregator", "evals", d.dir, "--json", NULL};
    ck_assert_msg(cli(out, sizeof(out), err, sizeof(err), 4, evs) == 0, "%s", err);
    ck_assert_msg(strstr(out, "\"round\": 2, \"version\": 2") != NULL, "%s", out);
    ck_assert_ptr_nonnull(strstr(out, "\"devices\": 3"));
    char *p = strstr(out, "\"mean_loss\": ");
    ck_assert_ptr_nonnull(p);
    double stored = strtod(p + strlen("\"mean_loss\": "), NULL);
    char v2[700];
    snprintf(v2, sizeof(v2), "%s/v2.safetensors", d.dir);
    ck_assert_int_eq(it_cli("export", d.dir, "--version", "2", "--out", v2, NULL), 0);
    double want = 0, loss[NA];
    for (int i = 0; i < NA; i++) {
        loss[i] = device_loss(&d, dbs[i], v2);
        want += (loss[i] < LOSS_MAX ? loss[i] : LOSS_MAX) / NA;
    }
    /* each device's word is one stochastic rounding away: NA steps of L at 16 bits, at most */
    double tol = NA * 2.0 / 65535.0 * LOSS_MAX + 1e-4;
    fprintf(stderr, "fedeval: stored mean %.6f, recomputed %.6f (tolerance %.6f)\n", stored, want, tol);
    ck_assert_msg(fabs(stored - want) <= tol, "stored %.6f recomputed %.6f", stored, want);

    /* privacy: no device's loss in the aggregator's log; "loss" only in the aggregate line */
    char *log = it_read(&d, "server.log");
    ck_assert_ptr_nonnull(log);
    for (int i = 0; i < NA; i++) {
        char needle[32];
        snprintf(needle, sizeof(needle), "%.4f", loss[i]);
        ck_assert_msg(strstr(log, needle) == NULL, "device loss %s in the server log", needle);
    }
    free(log);
    ck_assert_int_eq(it_log_count(&d, "loss"), it_log_count(&d, "evaluation committed"));
    /* nor in the devices' own logs (privacy.md 2.9: the device logs neither its loss nor its
     * held-out size) */
    for (int i = 0; i < NA; i++) {
        char name[32], needle[32];
        snprintf(name, sizeof(name), "dev%d.log", i);
        char *dlog = it_read(&d, name);
        ck_assert_ptr_nonnull(dlog);
        for (int j = 0; j < NA; j++) {
            snprintf(needle, sizeof(needle), "%.4f", loss[j]);
            ck_assert_msg(strstr(dlog, needle) == NULL, "a device loss %s in %s", needle, name);
        }
        ck_assert_msg(strstr(dlog, "loss=") == NULL && strstr(dlog, "held-out tokens") == NULL, "%s", dlog);
        free(dlog);
    }

    /* status and rounds show it */
    char *stv[] = {"plait-aggregator", "status", d.dir, NULL};
    ck_assert_int_eq(cli(out, sizeof(out), err, sizeof(err), 3, stv), 0);
    ck_assert_msg(strstr(out, "evaluation: version 2 mean held-out loss") != NULL, "%s", out);
    char *rv[] = {"plait-aggregator", "rounds", d.dir, "--json", NULL};
    ck_assert_int_eq(cli(out, sizeof(out), err, sizeof(err), 4, rv), 0);
    ck_assert_msg(strstr(out, "\"round\": 2, \"state\": \"committed\", \"kind\": \"evaluate\"") != NULL, "%s", out);
    ck_assert_msg(strstr(out, "\"round\": 1, \"state\": \"committed\", \"kind\": \"train\"") != NULL, "%s", out);
}

START_TEST(test_fedeval_end_to_end)
{
    fedeval_run(1);
}
END_TEST

START_TEST(test_fedeval_every)
{
    fedeval_run(0);
}
END_TEST

/* Evaluation is refused, with the reason, without secure aggregation or with DP. */
START_TEST(test_fedeval_refused)
{
    static char out[4096], err[4096];
    it_dep_t d;
    ck_assert_int_eq(it_init(&d, "integ_fedeval_plain", "secure_agg=false", NULL), 0);
    char *ev[] = {"plait-aggregator", "evaluate", d.dir, NULL};
    ck_assert_int_eq(cli(out, sizeof(out), err, sizeof(err), 3, ev), 1);
    ck_assert_msg(strstr(err, "needs secure_agg = true") != NULL, "%s", err);
    it_dep_t d2;
    ck_assert_int_eq(it_init(&d2, "integ_fedeval_dp", "secure_agg=true", "dp=distributed", "noise_multiplier=1",
                             "example_cap=1", "dp_delta=1e-5", NULL),
                     0);
    char *ev2[] = {"plait-aggregator", "evaluate", d2.dir, NULL};
    ck_assert_int_eq(cli(out, sizeof(out), err, sizeof(err), 3, ev2), 1);
    ck_assert_msg(strstr(err, "needs dp = none") != NULL, "%s", err);
}
END_TEST

/* An evaluation round offers its task only to devices with PLAIT_CAP_EVALUATE: a request queued
 * before `serve` makes round 1 an evaluation of version 1; its Task carries the evaluation fields. */
START_TEST(test_fedeval_capability)
{
    static char out[4096], err[4096];
    it_dep_t d;
    ck_assert_int_eq(it_init(&d, "integ_fedeval_caps", "target_cohort=3", "min_cohort=2", "overselect=1",
                             "selection_timeout_s=60", "secure_agg=true", "eval_loss_max=6.5",
                             "max_preauth_per_addr=64", NULL),
                     0);
    ck_assert_int_eq(it_enroll(&d, "old"), 0);
    ck_assert_int_eq(it_enroll(&d, "new"), 0);
    char *ev[] = {"plait-aggregator", "evaluate", d.dir, NULL};
    ck_assert_msg(cli(out, sizeof(out), err, sizeof(err), 3, ev) == 0, "%s", err);
    ck_assert_int_eq(it_start(&d, NULL), 0);
    ck_assert(it_log_wait(&d, "round opened round=1 version=1 kind=evaluate", 10000));
    it_client_t c;
    plait_msg_t m;
    ck_assert_int_eq(it_client_connect(&c, &d, "old"), 0);
    ck_assert_int_eq(it_hello_caps(&c, &d, PLAIT_CAP_FFA | PLAIT_CAP_SECURE_AGG | PLAIT_CAP_SECAGG), 0);
    ck_assert_int_eq(it_recv(&c, &m, 20000), 0);
    ck_assert_int_eq(m.type, PLAIT_MSG_COME_BACK_LATER);
    ck_assert_int_eq(m.u.come_back_later.reason, PLAIT_RETRY_INCOMPATIBLE);
    plait_msg_free(&m);
    it_client_close(&c);
    ck_assert_int_eq(it_client_connect(&c, &d, "new"), 0);
    ck_assert_int_eq(it_hello_caps(&c, &d, PLAIT_CAP_FFA | PLAIT_CAP_SECURE_AGG | PLAIT_CAP_SECAGG | PLAIT_CAP_EVALUATE),
                     0);
    ck_assert_int_eq(it_recv(&c, &m, 20000), 0);
    ck_assert_int_eq(m.type, PLAIT_MSG_TASK);
    const plait_msg_task_t *t = &m.u.task;
    ck_assert_int_eq(t->kind, PLAIT_TASK_EVALUATE);
    ck_assert(t->eval_loss_max == 6.5);
    ck_assert_uint_eq(t->update_elements, 2);
    ck_assert_uint_eq(t->adapter_version, 1);
    ck_assert_uint_eq(t->example_cap, 1);
    ck_assert(t->quant_range == 1.0);
    ck_assert_int_eq(t->secure_agg, 1);
    ck_assert_int_eq(t->has_secagg, 1);
    ck_assert_int_eq(t->dp.mode, PLAIT_DP_NONE);
    ck_assert_int_eq(t->clip_bit, 0);
    plait_msg_free(&m);
    it_client_close(&c);
    ck_assert_int_eq(it_stop(&d), 0);
    ck_assert_int_eq(it_log_count(&d, "cannot evaluate (no evaluation capability)"), 1);
}
END_TEST

Suite *fedeval_suite(void)
{
    Suite *s = suite_create("integ_fedeval");
    TCase *tc = tcase_create("fedeval");
    tcase_set_timeout(tc, 400);
    tcase_add_test(tc, test_fedeval_end_to_end);
    tcase_add_test(tc, test_fedeval_every);
    tcase_add_test(tc, test_fedeval_refused);
    tcase_add_test(tc, test_fedeval_capability);
    suite_add_tcase(s, tc);
    return s;
}
