/*
 * bench_agg.c: `plait-bench agg`: throughput and peak memory of streaming
 * FedAvg (plait_fedavg_add over N updates of P floats, then the result).
 *
 * Each measurement runs in a forked child so that its peak RSS (wait4's
 * ru_maxrss) belongs to that run alone; runs are repeated and the median is
 * reported. The child first builds a pool of K distinct clipped random
 * updates (untimed) and then folds N updates cycling through the pool, so
 * the input memory is K·P floats whatever N is: if FedAvg's memory were to
 * grow with the number of updates, the peak RSS of the large-N run would
 * exceed that of the small-N run, which the report shows side by side.
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bench.h"
#include "plait/agg.h"
#include "plait/rng.h"

#define MAX_REPS 101

/* The measured work, in the child. Returns 0 and the seconds spent. */
static int run_child(size_t n_updates, size_t P, size_t K, double *secs)
{
    float *pool = malloc(K * P * sizeof(float)), *out = malloc(P * sizeof(float));
    if (pool == NULL || out == NULL) return -1;
    plait_rng_t rng;
    plait_rng_seed_u64(&rng, 20240601, 0); /* benchmark data only */
    for (size_t k = 0; k < K; k++) {
        float *u = pool + k * P;
        for (size_t i = 0; i < P; i++) u[i] = (float)plait_rng_normal(&rng);
        if (plait_update_clip_l2(u, P, 1.0, NULL) != 0) return -1;
    }
    plait_fedavg_config_t cfg;
    plait_fedavg_config_default(&cfg);
    cfg.dim = P;
    plait_fedavg_t *fa;
    if (plait_fedavg_create(&fa, &cfg) != 0) return -1;
    double t0 = bench_now();
    for (size_t j = 0; j < n_updates; j++)
        if (plait_fedavg_add(fa, pool + (j % K) * P, P, (double)(1 + j % 1500)) != 0) return -1;
    if (plait_fedavg_result(fa, out, P) != 0) return -1;
    *secs = bench_now() - t0;
    volatile float sink = out[P / 2]; /* keep the result alive */
    (void)sink;
    plait_fedavg_destroy(fa);
    free(pool);
    free(out);
    return 0;
}

typedef struct {
    size_t n_updates, P, K;
} agg_job_t;

static int agg_child(void *ctx, double *secs)
{
    const agg_job_t *j = ctx;
    return run_child(j->n_updates, j->P, j->K, secs);
}

/* One run in a forked child: time and peak RSS (MiB). */
static int measure(size_t n_updates, size_t P, size_t K, double *secs, double *rss_mib)
{
    agg_job_t j = {n_updates, P, K};
    return bench_fork_measure(agg_child, &j, secs, rss_mib);
}

int bench_agg(int argc, char **argv)
{
    size_t N = 1000, P = 1000000, R = 5, M = 100, K = 8;
    plait_flag_t flags[] = {
        PLAIT_F_SIZE("updates", &N, 0, 100000000, "N", "updates folded per run", 1),
        PLAIT_F_SIZE("params", &P, 0, PLAIT_AGG_MAX_DIM, "P", "parameters per update", 1),
        PLAIT_F_SIZE("reps", &R, 0, MAX_REPS, "R", "runs per configuration; the median is reported (default 5, odd is best)",
                     0),
        PLAIT_F_SIZE("compare", &M, 0, 100000000, "M",
                     "also run with M updates to show memory does not grow with N\n(default 100; 0 to skip)", 0),
        PLAIT_F_SIZE("pool", &K, 0, 1024, "K", "distinct updates cycled through", 1),
    };
    plait_flags_cmd_t cmd = {.prog = "plait-bench agg", .flags = flags, .n_flags = sizeof(flags) / sizeof(flags[0])};
    int st = bench_flags(&cmd, argc, argv);
    if (st >= 0) return st;
    if (N == 0 || P == 0 || R == 0 || K == 0) {
        fputs("plait-bench agg: --updates, --params, --reps and --pool must be > 0\n", stderr);
        return 2;
    }
    if (K > SIZE_MAX / sizeof(float) / P) {
        fputs("plait-bench agg: --pool x --params too large\n", stderr);
        return 2;
    }
    char machine[400];
    bench_machine(machine, sizeof(machine));
    printf("plait-bench agg: streaming FedAvg, P = %zu params, pool of %zu distinct updates, %zu runs each (median)\n",
           P, K, R);
    printf("machine: %s\n", machine);
    printf("%10s %12s %22s %16s %18s\n", "updates", "median_s", "updates*params/s", "GB/s (floats)", "peak_rss_MiB");
    size_t configs[2] = {M, N};
    for (int c = 0; c < 2; c++) {
        size_t n = configs[c];
        if (n == 0 || (c == 0 && M == N)) continue;
        double t[MAX_REPS], rss[MAX_REPS];
        for (size_t r = 0; r < R; r++) {
            if (measure(n, P, K, &t[r], &rss[r]) != 0) {
                fprintf(stderr, "plait-bench agg: run with %zu updates failed\n", n);
                return 1;
            }
        }
        double tm = bench_median(t, R), rm = bench_median(rss, R);
        double tput = (double)n * (double)P / tm;
        printf("%10zu %12.4f %22.4g %16.2f %18.1f\n", n, tm, tput, tput * 4.0 / 1e9, rm);
    }
    printf("input pool %.1f MiB + accumulator %.1f MiB are in every run's RSS\n",
           (double)K * (double)P * 4.0 / 1048576.0, (double)P * 8.0 / 1048576.0);
    return 0;
}
