/*
 * check_simnet.c: plait-sim's network mode end to end. The plait-sim binary
 * runs a tiny experiment (6 Shakespeare speakers, 2 rounds, cohort 3,
 * 2 local steps, B=2, T=32) against a real plait-aggregator and real
 * plait-agent processes over loopback TLS; both rounds must commit with 3
 * participants and the global held-out loss must be finite and not above
 * the frozen base model's. The binaries are found next to plait-sim (the
 * build tree), as a user's run would find them.
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

#include "testutil.h"

#ifndef PLAIT_SIM_BIN
#define PLAIT_SIM_BIN ""
#endif

/* Run argv (stdout+stderr to log) for at most timeout_s; exit status or -1. */
static int run(char *const argv[], const char *log, int timeout_s)
{
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        int fd = open(log, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
        }
        setenv("PLAIT_ASSETS", tu_assets_dir(), 1);
        execv(argv[0], argv);
        _exit(127);
    }
    if (pid < 0) return -1;
    for (int i = 0; i < timeout_s * 50; i++) {
        int st;
        if (waitpid(pid, &st, WNOHANG) == pid) return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
        struct timespec ts = {0, 20000000L};
        nanosleep(&ts, NULL);
    }
    kill(pid, SIGKILL);
    int st;
    waitpid(pid, &st, 0);
    return -1;
}

/* Field col (0-based) of CSV line. */
static double col(const char *line, int c)
{
    const char *p = line;
    for (int k = 0; k < c && p; k++) {
        p = strchr(p, ',');
        if (p) p++;
    }
    return (p && *p && *p != ',' && *p != '\n') ? strtod(p, NULL) : NAN;
}

START_TEST(test_simnet_rounds_commit)
{
    if (PLAIT_SIM_BIN[0] == '\0') return; /* built without the simulator */
    char *dir = tu_tmpdir("simnet");
    ck_assert_ptr_nonnull(dir);
    char *cfg = tu_path(dir, "exp.json"), *out = tu_path(dir, "out"), *log = tu_path(dir, "sim.log");
    const char *json = "{\"run\": {\"mode\": \"network\", \"seed\": 3},\n"
                       " \"population\": {\"max_clients\": 6},\n"
                       " \"local\": {\"steps\": 2, \"batch\": 2, \"seq_len\": 32, \"lr\": 0.01},\n"
                       " \"rounds\": {\"count\": 2, \"clients_per_round\": 3},\n"
                       " \"eval\": {\"windows\": 4, \"personal_clients\": 2}}\n";
    ck_assert_int_eq(tu_write_file(cfg, json, strlen(json)), 0);
    char *argv[] = {(char *)PLAIT_SIM_BIN, "--config", cfg, "--out", out, NULL};
    int st = run(argv, log, 90);
    size_t n;
    char *l = (char *)tu_read_file(log, &n);
    ck_assert_msg(st == 0, "plait-sim --mode network exited %d:\n%s", st, l ? l : "");
    ck_assert_ptr_nonnull(strstr(l, "network mode: plait-aggregator on 127.0.0.1:"));
    free(l);

    char *csv_path = tu_path(out, "metrics.csv");
    char *csv = (char *)tu_read_file(csv_path, &n);
    ck_assert_ptr_nonnull(csv);
    /* header, then rounds 0..2: round,committed,available,selected,participants,...,global_loss (13) */
    char *lines[4] = {0};
    int k = 0;
    for (char *p = csv; p && *p && k < 4; k++) {
        lines[k] = p;
        p = strchr(p, '\n');
        if (p) *p++ = '\0';
    }
    ck_assert_int_eq(k, 4);
    ck_assert_ptr_nonnull(strstr(lines[0], "global_loss"));
    double base = col(lines[1], 13);
    ck_assert(isfinite(base));
    for (int r = 1; r <= 2; r++) {
        ck_assert_msg(col(lines[r + 1], 1) == 1.0, "round %d did not commit: %s", r, lines[r + 1]);
        ck_assert(col(lines[r + 1], 4) == 3.0); /* participants */
        ck_assert(col(lines[r + 1], 8) > 0);    /* bytes_up */
        double g = col(lines[r + 1], 13);
        fprintf(stderr, "simnet: round %d global held-out loss %.4f (base %.4f)\n", r, g, base);
        ck_assert(isfinite(g));
        ck_assert(g <= base);
    }
    free(csv);
    free(csv_path);
    char *rep = tu_path(out, "report.md");
    ck_assert_int_eq(access(rep, R_OK), 0);
    free(rep);
    free(cfg);
    free(out);
    free(log);
    free(dir);
}
END_TEST

Suite *simnet_suite(void)
{
    Suite *s = suite_create("integ_simnet");
    TCase *tc = tcase_create("simnet");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_simnet_rounds_commit);
    suite_add_tcase(s, tc);
    return s;
}
