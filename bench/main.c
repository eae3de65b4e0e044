/*
 * main.c: plait-bench, a multi-subcommand benchmark driver. Add a subsystem
 * by writing bench_<name>.c with `int bench_<name>(int argc, char **argv)`,
 * declaring it in bench.h, adding it to bench/CMakeLists.txt and adding a row
 * to `commands` below (e.g. `plait-bench train` later).
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "bench.h"
#include "plait/flags.h"

#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

typedef struct {
    const char *name;
    const char *summary;
    int (*run)(int argc, char **argv);
} command_t;

static const command_t commands[] = {
    {"train", "LoRA training tokens/s and peak RSS (stories260K, 15M shape), optionally vs PyTorch", bench_train},
    {"agg", "FedAvg throughput (updates x params / s) and peak RSS vs. number of updates", bench_agg},
    {"secagg", "secure aggregation: client masking, server unmasking vs dropouts, bytes per device", bench_secagg},
    {"serve", "the real aggregator and N TLS clients: server CPU, wall, bytes per device, peak RSS per round", bench_serve},
    {"knn", "a device's kNN memory per generated token: search and mixture vs the plain search", bench_knn},
};

double bench_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int cmp_d(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

double bench_median(double *v, size_t n)
{
    qsort(v, n, sizeof(double), cmp_d);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

int bench_parse_size(const char *cmd, const char *flag, const char *s, size_t max, size_t *out)
{
    char *end;
    unsigned long long v = s && *s >= '0' && *s <= '9' ? strtoull(s, &end, 10) : 0;
    if (s == NULL || *s < '0' || *s > '9' || *end != '\0' || v > max) {
        fprintf(stderr, "plait-bench %s: bad value '%s' for %s (want an integer from 0 to %zu)\n", cmd, s ? s : "",
                flag, max);
        return -1;
    }
    *out = (size_t)v;
    return 0;
}

int bench_flags(plait_flags_cmd_t *cmd, int argc, char **argv)
{
    int rc = plait_flags_parse(cmd, argc, argv, stdout, NULL);
    if (rc == PLAIT_FLAGS_HELP) return 0;
    if (rc == 0) return -1;
    fprintf(stderr, "%s: %s\n", cmd->prog, plait_errmsg());
    return 2;
}

void bench_machine(char *buf, size_t len)
{
    char model[256] = "unknown CPU";
    FILE *f = fopen("/proc/cpuinfo", "r");
    if (f) {
        char line[512];
        while (fgets(line, sizeof(line), f)) {
            if (strncmp(line, "model name", 10) == 0) {
                char *c = strchr(line, ':');
                if (c) {
                    snprintf(model, sizeof(model), "%s", c + 2);
                    model[strcspn(model, "\n")] = '\0';
                }
                break;
            }
        }
        fclose(f);
    }
    snprintf(buf, len, "%s, %ld online CPUs", model, sysconf(_SC_NPROCESSORS_ONLN));
}

static void usage(FILE *f)
{
    fputs("usage: plait-bench <command> [flags]\n\ncommands:\n", f);
    for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
        fprintf(f, "  %-8s %s\n", commands[i].name, commands[i].summary);
    fputs("\nplait-bench <command> --help shows a command's flags.\n", f);
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fputs("plait-bench: missing command (try --help)\n", stderr);
        return 2;
    }
    if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "help") == 0) {
        usage(stdout);
        return 0;
    }
    for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
        if (strcmp(argv[1], commands[i].name) == 0) return commands[i].run(argc - 1, argv + 1);
    fprintf(stderr, "plait-bench: unknown command '%s' (try --help)\n", argv[1]);
    return 2;
}

typedef struct {
    int ok;
    double value;
} child_result_t;

int bench_fork_measure(bench_child_fn fn, void *ctx, double *value, double *rss_mib)
{
    int fds[2];
    if (pipe(fds) != 0) return -1;
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0) {
        close(fds[0]);
        close(fds[1]);
        return -1;
    }
    if (pid == 0) {
        close(fds[0]);
        child_result_t r = {0, 0};
        r.ok = fn(ctx, &r.value) == 0;
        ssize_t w = write(fds[1], &r, sizeof(r));
        _exit(w == (ssize_t)sizeof(r) && r.ok ? 0 : 1);
    }
    close(fds[1]);
    child_result_t r = {0, 0};
    ssize_t got = read(fds[0], &r, sizeof(r));
    close(fds[0]);
    int status;
    struct rusage ru;
    if (wait4(pid, &status, 0, &ru) != pid || !WIFEXITED(status) || WEXITSTATUS(status) != 0 ||
        got != (ssize_t)sizeof(r) || !r.ok)
        return -1;
    *value = r.value;
    *rss_mib = (double)ru.ru_maxrss / 1024.0; /* Linux reports KiB */
    return 0;
}
