/*
 * bench_knn.c: `plait-bench knn`, the cost of a device's kNN memory (knn.h)
 * per generated token: plait_knn_search over N entries of C floats, and the
 * whole mixture (search, vote, V log-probabilities) that inference adds per
 * token. The reference, measured in the same run, is the plain search: every
 * distance in double, a full sort, the first k.
 *
 * Keys and queries are pseudo-random (uniform in [-1, 1)); the cost does not
 * depend on their values. Per row: the median over repeats of the mean time
 * per query.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"
#include "plait/knn.h"

typedef struct {
    double d;
    size_t i;
} ref_t;

static int cmp_ref(const void *a, const void *b)
{
    const ref_t *x = a, *y = b;
    if (x->d != y->d) return x->d < y->d ? -1 : 1;
    return (x->i > y->i) - (x->i < y->i);
}

/* The plain search: all distances in double, sorted; returns the first token (so the work is not dropped). */
static int32_t ref_search(const plait_knn_t *s, const float *q, ref_t *scratch)
{
    for (size_t i = 0; i < s->n; i++) {
        double d = 0;
        for (size_t c = 0; c < s->C; c++) {
            double e = (double)q[c] - (double)s->keys[i * s->C + c];
            d += e * e;
        }
        scratch[i].d = d;
        scratch[i].i = i;
    }
    qsort(scratch, s->n, sizeof(ref_t), cmp_ref);
    return s->vals[scratch[0].i];
}

static float urand(uint64_t *st)
{
    *st ^= *st << 13;
    *st ^= *st >> 7;
    *st ^= *st << 17;
    return (float)((*st >> 40) & 0xffffff) / 8388608.0f - 1.0f;
}

int bench_knn(int argc, char **argv)
{
    const char *n_list = "2900,31000";
    size_t C = 64, K = 32, V = 512, Q = 200, R = 5;
    plait_flag_t flags[] = {
        PLAIT_F_STR("n", &n_list, "LIST",
                    "memory entries, comma-separated (default 2900,31000: the sim's mean device, and 8 MiB at C = 64)"),
        PLAIT_F_SIZE("c", &C, 1, PLAIT_KNN_MAX_DIM, "C", "key width (stories260K: 64)", 1),
        PLAIT_F_SIZE("k", &K, 1, PLAIT_KNN_MAX_K, "K", "neighbours", 1),
        PLAIT_F_SIZE("vocab", &V, 2, 1 << 20, "V", "vocabulary of the mixture", 1),
        PLAIT_F_SIZE("queries", &Q, 1, 1000000, "Q", "queries per repeat", 1),
        PLAIT_F_SIZE("repeats", &R, 1, 1000, "R", "repeats; the median is reported", 1),
    };
    plait_flags_cmd_t cmd = {.prog = "plait-bench knn", .flags = flags, .n_flags = sizeof(flags) / sizeof(flags[0])};
    int fr = bench_flags(&cmd, argc, argv);
    if (fr >= 0) return fr;
    char mach[256];
    bench_machine(mach, sizeof(mach));
    printf("plait-bench knn: %s; C = %zu, k = %zu, V = %zu, %zu queries x %zu repeats\n", mach, C, K, V, Q, R);
    printf("| entries | search us/query | mixture us/query | plain search us/query | plain / search |\n");
    printf("|---|---|---|---|---|\n");
    const char *p = n_list;
    int rc = 0;
    while (*p && rc == 0) {
        char *end;
        unsigned long long n = strtoull(p, &end, 10);
        if (end == p || n == 0 || n > PLAIT_KNN_MAX_ENTRIES || (*end != ',' && *end != '\0')) {
            fprintf(stderr, "plait-bench knn: bad --n list '%s'\n", n_list);
            return 2;
        }
        p = *end == ',' ? end + 1 : end;
        plait_knn_t s;
        plait_knn_init(&s);
        uint64_t st = 0x9e3779b97f4a7c15ull ^ n;
        float *key = malloc(C * sizeof(float)), *qs = malloc(Q * C * sizeof(float)), *lg = malloc(V * sizeof(float));
        ref_t *scratch = malloc((size_t)n * sizeof(ref_t));
        double *ts = malloc(R * sizeof(double)), *tm = malloc(R * sizeof(double)), *tr = malloc(R * sizeof(double));
        if (!key || !qs || !lg || !scratch || !ts || !tm || !tr || plait_knn_setup(&s, C, (size_t)n) != 0) {
            fprintf(stderr, "plait-bench knn: out of memory at %llu entries\n", n);
            rc = 1;
        }
        for (size_t i = 0; rc == 0 && i < n; i++) {
            for (size_t c = 0; c < C; c++) key[c] = urand(&st);
            rc = plait_knn_add(&s, key, (int32_t)(i % V));
        }
        for (size_t i = 0; i < Q * C; i++) qs[i] = urand(&st);
        s.k = (int)K;
        s.tau = 1.0;
        s.lambda = 0.3;
        volatile int32_t sink = 0;
        for (size_t r = 0; rc == 0 && r < R; r++) {
            float d[PLAIT_KNN_MAX_K];
            int32_t y[PLAIT_KNN_MAX_K];
            double t0 = bench_now();
            for (size_t q = 0; q < Q; q++) sink += (int32_t)plait_knn_search(&s, qs + q * C, K, d, y) + y[0];
            double t1 = bench_now();
            for (size_t q = 0; q < Q && rc == 0; q++) {
                for (size_t v = 0; v < V; v++) lg[v] = 0.01f * (float)(v % 17);
                rc = plait_knn_mix_logits(&s, qs + q * C, lg, V);
            }
            double t2 = bench_now();
            for (size_t q = 0; q < Q; q++) sink += ref_search(&s, qs + q * C, scratch);
            double t3 = bench_now();
            ts[r] = (t1 - t0) / (double)Q * 1e6;
            tm[r] = (t2 - t1) / (double)Q * 1e6;
            tr[r] = (t3 - t2) / (double)Q * 1e6;
        }
        (void)sink;
        if (rc == 0) {
            double ms = bench_median(ts, R), mm = bench_median(tm, R), mr = bench_median(tr, R);
            printf("| %llu | %.1f | %.1f | %.1f | %.1fx |\n", n, ms, mm, mr, mr / ms);
        }
        plait_knn_free(&s);
        free(key);
        free(qs);
        free(lg);
        free(scratch);
        free(ts);
        free(tm);
        free(tr);
    }
    return rc;
}
