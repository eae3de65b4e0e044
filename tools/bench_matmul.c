/*
 * bench_matmul.c: plait-bench-matmul, GFLOP/s of the matmul kernels on the
 * shapes training and inference use, optimized vs reference, 1 and 2
 * threads. A developer tool, not a test: it asserts nothing and is not run
 * by CTest. Each figure is the median of several timed batches, because the
 * machines it runs on are shared and noisy.
 *
 * Usage: plait-bench-matmul [repeats [filter]]
 *   repeats  timed batches per figure, default 7
 *   filter   only shapes whose tag contains this string, e.g. "lora"
 *
 * Shape letters: N rows (B*T tokens), IC input channels, OC output channels.
 * Columns: ref = plain *_ref kernel; port = optimized kernel forced onto the
 * portable path; simd = AVX2+FMA path (same as port where the CPU lacks it);
 * 1t / 2t = pool of 1 / 2 threads.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "plait/tensor.h"
#include "tensor_int.h"

enum { OP_FWD, OP_DINP, OP_DW };
static const char *op_name[] = {"fwd", "dinp", "dw"};

typedef struct {
    const char *tag;
    size_t N, IC, OC;
    int ops; /* bit mask of 1 << OP_* */
} shape_t;

#define F (1 << OP_FWD)
#define D (1 << OP_DINP)
#define W (1 << OP_DW)
static const shape_t shapes[] = {
    /* stories260K, B=8 T=128 */
    {"260K qkvo", 1024, 64, 64, F | D},     {"260K kv", 1024, 64, 32, F | D},
    {"260K w1/w3", 1024, 64, 172, F | D},   {"260K w2", 1024, 172, 64, F | D},
    {"260K cls", 1024, 64, 512, F | D},     {"260K lora A", 1024, 64, 8, F | D | W},
    {"260K lora B", 1024, 8, 64, F | D | W}, {"260K lora Bkv", 1024, 8, 32, F | D | W},
    /* 15M-shaped model */
    {"15M qkvo", 1024, 288, 288, F | D},   {"15M w1/w3", 1024, 288, 768, F | D},
    {"15M w2", 1024, 768, 288, F | D},     {"15M cls", 1024, 288, 32000, F | D},
    {"15M lora A", 1024, 288, 8, F | D | W}, {"15M lora B", 1024, 8, 288, F | D | W},
    /* token-by-token inference */
    {"mv 260K cls", 1, 64, 512, F},        {"mv 15M qkvo", 1, 288, 288, F},
    {"mv 15M w1", 1, 288, 768, F},         {"mv 15M w2", 1, 768, 288, F},
    {"mv 15M cls", 1, 288, 32000, F},
};
#undef F
#undef D
#undef W

/* The reference kernel accumulates in double; skip it where one call alone
 * would take seconds. */
#define REF_MAX_MACS 1e9

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

typedef struct {
    float *out, *inp, *w, *dout, *dinp, *dw;
    size_t N, IC, OC;
} bufs_t;

static void run_once(plait_pool_t *pool, int ref, int op, bufs_t *b)
{
    if (op == OP_FWD) {
        if (ref) plait_matmul_forward_ref(b->out, b->inp, b->w, b->N, b->IC, b->OC, 0);
        else plait_matmul_forward(pool, b->out, b->inp, b->w, b->N, b->IC, b->OC, 0);
    } else {
        float *dinp = op == OP_DINP ? b->dinp : NULL, *dw = op == OP_DW ? b->dw : NULL;
        if (ref) plait_matmul_backward_ref(dinp, dw, b->dout, b->inp, b->w, b->N, b->IC, b->OC);
        else plait_matmul_backward(pool, dinp, dw, b->dout, b->inp, b->w, b->N, b->IC, b->OC);
    }
}

/* Median GFLOP/s over `repeats` batches, each batch long enough (~20 ms) to
 * swamp the clock's resolution. */
static double measure(plait_pool_t *pool, int ref, int op, bufs_t *b, int repeats)
{
    double flops = 2.0 * (double)b->N * (double)b->IC * (double)b->OC;
    run_once(pool, ref, op, b); /* warm caches and the pool */
    double t0 = now_s();
    run_once(pool, ref, op, b);
    double one = now_s() - t0;
    int iters = one > 0 ? (int)(0.02 / one) : 1000;
    if (iters < 1) iters = 1;
    if (iters > 100000) iters = 100000;
    double *g = malloc((size_t)repeats * sizeof(double));
    if (!g) return 0.0;
    for (int r = 0; r < repeats; r++) {
        t0 = now_s();
        for (int i = 0; i < iters; i++) run_once(pool, ref, op, b);
        double dt = now_s() - t0;
        g[r] = flops * iters / dt / 1e9;
    }
    qsort(g, (size_t)repeats, sizeof(double), cmp_double);
    double med = g[repeats / 2];
    free(g);
    return med;
}

/* A chunk that busy-waits for *(double *)ctx microseconds. */
static void spin_fn(void *ctx, size_t b, size_t e)
{
    double us = *(const double *)ctx;
    for (size_t i = b; i < e; i++) {
        double t0 = now_s();
        while ((now_s() - t0) * 1e6 < us) {
        }
    }
}

/* Median microseconds per plait_pool_run of a two-chunk job whose chunks
 * take `us` each, back to back on a 2-thread pool: `us` if the hand-off
 * were free, 2 * us if the work ran serially. This is the dispatch cost
 * every small kernel pays. */
static double pool_job_us(plait_pool_t *p, double us, int repeats)
{
    double *t = malloc((size_t)repeats * sizeof(double));
    if (!t) return 0.0;
    const int jobs = 2000;
    for (int r = 0; r < repeats; r++) {
        double t0 = now_s();
        for (int j = 0; j < jobs; j++) plait_pool_run(p, spin_fn, &us, 2);
        t[r] = (now_s() - t0) / jobs * 1e6;
    }
    qsort(t, (size_t)repeats, sizeof(double), cmp_double);
    double med = t[repeats / 2];
    free(t);
    return med;
}

static float *fill(size_t n)
{
    float *p = malloc((n ? n : 1) * sizeof(float));
    if (!p) {
        fprintf(stderr, "out of memory\n");
        exit(1);
    }
    for (size_t i = 0; i < n; i++) p[i] = (float)((i * 2654435761u) % 1000) / 1000.0f - 0.5f;
    return p;
}

/* The machine's load, printed with the figures: on a shared machine the
 * 2-thread column means little when the load is above the core count. */
static const char *loadavg(void)
{
    static char buf[64];
    FILE *f = fopen("/proc/loadavg", "r");
    if (!f || !fgets(buf, sizeof(buf), f)) snprintf(buf, sizeof(buf), "unknown\n");
    if (f) fclose(f);
    buf[strcspn(buf, "\n")] = 0;
    return buf;
}

int main(int argc, char **argv)
{
    int repeats = argc > 1 ? atoi(argv[1]) : 7;
    if (repeats < 1) repeats = 1;
    const char *filter = argc > 2 ? argv[2] : NULL;
    plait_pool_t *p1 = NULL, *p2 = NULL;
    if (plait_pool_create(&p1, 1) != 0 || plait_pool_create(&p2, 2) != 0) {
        fprintf(stderr, "cannot create pools\n");
        return 1;
    }
    printf("plait-bench-matmul: AVX2+FMA %s, AVX-512 %s, path %s, median of %d, GFLOP/s, load average %s\n",
           plait_cpu_has_avx2_fma() ? "yes" : "no", plait_cpu_has_avx512() ? "yes" : "no",
           plait_kernel_path_name(), repeats, loadavg());
    static const double chunk_us[] = {0.0, 2.0, 5.0, 20.0};
    for (size_t i = 0; i < sizeof(chunk_us) / sizeof(chunk_us[0]); i++)
        printf("pool, 2 threads, job of 2 chunks x %4.1f us: %6.2f us per job (free hand-off %.0f, "
               "serial %.0f)\n",
               chunk_us[i], pool_job_us(p2, chunk_us[i], repeats), chunk_us[i], 2 * chunk_us[i]);
    printf("%-14s %4s %5s %5s %5s  %7s %7s %7s %7s %7s\n", "shape", "op", "N", "IC", "OC", "ref",
           "port1t", "avx2_1t", "simd1t", "simd2t");
    for (size_t s = 0; s < sizeof(shapes) / sizeof(shapes[0]); s++) {
        const shape_t *sh = &shapes[s];
        if (filter && !strstr(sh->tag, filter)) continue;
        bufs_t b = {.N = sh->N, .IC = sh->IC, .OC = sh->OC};
        b.inp = fill(sh->N * sh->IC);
        b.w = fill(sh->OC * sh->IC);
        b.out = fill(sh->N * sh->OC);
        b.dout = fill(sh->N * sh->OC);
        b.dinp = fill(sh->N * sh->IC);
        b.dw = fill(sh->OC * sh->IC);
        for (int op = 0; op < 3; op++) {
            if (!(sh->ops & (1 << op))) continue;
            double macs = (double)sh->N * (double)sh->IC * (double)sh->OC;
            double ref = macs <= REF_MAX_MACS ? measure(NULL, 1, op, &b, repeats) : 0.0;
            plait__tensor_force_scalar(1);
            double port = measure(p1, 0, op, &b, repeats);
            plait__tensor_force_path(PLAIT__KPATH_AVX2);
            double a2 = measure(p1, 0, op, &b, repeats);
            plait__tensor_force_path(-1);
            double s1 = measure(p1, 0, op, &b, repeats);
            double s2 = measure(p2, 0, op, &b, repeats);
            char refs[16];
            if (ref > 0) snprintf(refs, sizeof(refs), "%7.2f", ref);
            else snprintf(refs, sizeof(refs), "%7s", "-");
            printf("%-14s %4s %5zu %5zu %5zu  %s %7.2f %7.2f %7.2f %7.2f\n", sh->tag, op_name[op], sh->N,
                   sh->IC, sh->OC, refs, port, a2, s1, s2);
            fflush(stdout);
        }
        free(b.inp); free(b.w); free(b.out); free(b.dout); free(b.dinp); free(b.dw);
    }
    printf("load average at the end: %s\n", loadavg());
    plait_pool_destroy(p1);
    plait_pool_destroy(p2);
    return 0;
}
