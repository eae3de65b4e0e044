/*
 * check_tensor.c: the thread pool and the matmul kernels.
 *
 * The optimized kernels are compared with the plain *_ref kernels over many
 * shapes, including sizes that leave a remainder against every blocking
 * factor (1, 3, 7, 17, 33, 173), accumulate on and off, NULL dinp / dw,
 * no pool and pools of 1, 2 and 3 threads, on the SIMD path and on the forced
 * portable fallback. The pool must run every index exactly once.
 *
 * Shape letters: N rows (B*T tokens), IC input channels, OC output channels.
 */
#include <check.h>
#include <math.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "plait/tensor.h"
#include "tensor_int.h"

/*
 * Tolerance of an optimized result against the double-accumulating
 * reference: MM_RTOL * sqrt(K) * magnitude, where K is the length of the
 * reduction and magnitude is sum_k |a_k * b_k| plus the |value| that was
 * accumulated into. Float summation in any order stays well inside this;
 * a dropped or doubled term does not (see test_tolerance_can_fail).
 */
#define MM_RTOL 1e-5
#define MM_ATOL 1e-30

static uint32_t rng_state = 12345u;
static uint32_t next_u32(uint32_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 17;
    *s ^= *s << 5;
    return *s;
}
static float frand(void) { return (float)((double)next_u32(&rng_state) / 4294967296.0 * 2.0 - 1.0); }

static float *rand_buf(size_t n)
{
    float *p = malloc((n ? n : 1) * sizeof(float));
    ck_assert_ptr_nonnull(p);
    for (size_t i = 0; i < n; i++) p[i] = frand();
    return p;
}

static float *copy_buf(const float *src, size_t n)
{
    float *p = malloc((n ? n : 1) * sizeof(float));
    ck_assert_ptr_nonnull(p);
    if (n) memcpy(p, src, n * sizeof(float));
    return p;
}

static float *abs_buf(const float *src, size_t n)
{
    float *p = copy_buf(src, n);
    for (size_t i = 0; i < n; i++) p[i] = fabsf(p[i]);
    return p;
}

/* Worst |got - want| / bound over n values; <= 1 passes. */
static double worst_ratio(const float *got, const float *want, const float *mag, size_t n, size_t K)
{
    double worst = 0.0;
    double scale = MM_RTOL * sqrt((double)(K ? K : 1));
    for (size_t i = 0; i < n; i++) {
        double bound = scale * (double)mag[i] + MM_ATOL;
        double err = fabs((double)got[i] - (double)want[i]);
        if (!(err <= bound)) {
            double r = isfinite(err) ? err / bound : INFINITY;
            if (!(r <= worst)) worst = r;
        }
    }
    return worst;
}

/* --------------------------------------------------------------- shapes */

static const size_t Ns[] = {1, 2, 3, 4, 5, 7, 8, 13, 64, 100};
static const size_t ICs[] = {1, 3, 7, 8, 16, 17, 33, 173};
static const size_t OCs[] = {1, 3, 7, 8, 17, 33, 64};
#define COUNT(a) (sizeof(a) / sizeof((a)[0]))

/* Larger shapes from the workloads, plus ones that cross every cache block. */
static const size_t big_shapes[][3] = {
    /* N, IC, OC */
    {1024, 64, 172}, {1024, 172, 64}, {1024, 64, 8}, {1024, 8, 64}, {1024, 8, 32},
    {300, 288, 96},  {37, 300, 513},  {1, 768, 1000}, {2, 288, 771}, {1030, 33, 17},
    {517, 600, 7},   {3, 700, 1001},  {1, 1100, 1000},
};

/* Pools: index 0 is "no pool", then 1, 2 and 3 threads. */
#define NPOOLS 4
static plait_pool_t *pools[NPOOLS];

static void pools_up(void)
{
    pools[0] = NULL;
    for (int i = 1; i < NPOOLS; i++) ck_assert_int_eq(plait_pool_create(&pools[i], i), 0);
}

static void pools_down(void)
{
    for (int i = 0; i < NPOOLS; i++) {
        plait_pool_destroy(pools[i]);
        pools[i] = NULL;
    }
}

/* Forward on one shape with every pool; results must match the reference and
 * be bit-identical across pool sizes. */
static void check_forward(size_t N, size_t IC, size_t OC, int accumulate)
{
    float *inp = rand_buf(N * IC), *w = rand_buf(OC * IC), *init = rand_buf(N * OC);
    float *want = copy_buf(init, N * OC), *mag = copy_buf(init, N * OC);
    float *ainp = abs_buf(inp, N * IC), *aw = abs_buf(w, OC * IC);
    plait_matmul_forward_ref(want, inp, w, N, IC, OC, accumulate);
    for (size_t i = 0; i < N * OC; i++) mag[i] = fabsf(mag[i]);
    plait_matmul_forward_ref(mag, ainp, aw, N, IC, OC, accumulate);
    float *first = NULL;
    for (int p = 0; p < NPOOLS; p++) {
        float *got = copy_buf(init, N * OC);
        plait_matmul_forward(pools[p], got, inp, w, N, IC, OC, accumulate);
        double r = worst_ratio(got, want, mag, N * OC, IC);
        ck_assert_msg(r <= 1.0, "forward N=%zu IC=%zu OC=%zu acc=%d pool=%d simd=%d: error %.3g x tol",
                      N, IC, OC, accumulate, p, plait__tensor_simd_active(), r);
        if (!first) first = got;
        else {
            ck_assert_msg(memcmp(first, got, N * OC * sizeof(float)) == 0,
                          "forward N=%zu IC=%zu OC=%zu: pool %d differs from no pool", N, IC, OC, p);
            free(got);
        }
    }
    free(first);
    free(inp); free(w); free(init); free(want); free(mag); free(ainp); free(aw);
}

/* Backward on one shape: which = 1 dinp only, 2 dw only, 3 both. */
static void check_backward(size_t N, size_t IC, size_t OC, int which)
{
    float *inp = rand_buf(N * IC), *w = rand_buf(OC * IC), *dout = rand_buf(N * OC);
    float *dinp0 = rand_buf(N * IC), *dw0 = rand_buf(OC * IC);
    float *want_dinp = copy_buf(dinp0, N * IC), *want_dw = copy_buf(dw0, OC * IC);
    float *mag_dinp = abs_buf(dinp0, N * IC), *mag_dw = abs_buf(dw0, OC * IC);
    float *ainp = abs_buf(inp, N * IC), *aw = abs_buf(w, OC * IC), *adout = abs_buf(dout, N * OC);
    plait_matmul_backward_ref(want_dinp, want_dw, dout, inp, w, N, IC, OC);
    plait_matmul_backward_ref(mag_dinp, mag_dw, adout, ainp, aw, N, IC, OC);
    float *first_dinp = NULL, *first_dw = NULL;
    for (int p = 0; p < NPOOLS; p++) {
        float *gd = (which & 1) ? copy_buf(dinp0, N * IC) : NULL;
        float *gw = (which & 2) ? copy_buf(dw0, OC * IC) : NULL;
        plait_matmul_backward(pools[p], gd, gw, dout, inp, w, N, IC, OC);
        if (gd) {
            double r = worst_ratio(gd, want_dinp, mag_dinp, N * IC, OC);
            ck_assert_msg(r <= 1.0, "dinp N=%zu IC=%zu OC=%zu pool=%d simd=%d: error %.3g x tol", N,
                          IC, OC, p, plait__tensor_simd_active(), r);
            if (!first_dinp) first_dinp = gd;
            else {
                ck_assert_msg(memcmp(first_dinp, gd, N * IC * sizeof(float)) == 0,
                              "dinp N=%zu IC=%zu OC=%zu: pool %d differs", N, IC, OC, p);
                free(gd);
            }
        }
        if (gw) {
            double r = worst_ratio(gw, want_dw, mag_dw, OC * IC, N);
            ck_assert_msg(r <= 1.0, "dw N=%zu IC=%zu OC=%zu pool=%d simd=%d: error %.3g x tol", N,
                          IC, OC, p, plait__tensor_simd_active(), r);
            if (!first_dw) first_dw = gw;
            else {
                ck_assert_msg(memcmp(first_dw, gw, OC * IC * sizeof(float)) == 0,
                              "dw N=%zu IC=%zu OC=%zu: pool %d differs", N, IC, OC, p);
                free(gw);
            }
        }
    }
    free(first_dinp); free(first_dw);
    free(inp); free(w); free(dout); free(dinp0); free(dw0); free(want_dinp); free(want_dw);
    free(mag_dinp); free(mag_dw); free(ainp); free(aw); free(adout);
}

/* The widest path this CPU runs; tests cap the path at each one up to it. */
static int cpu_widest(void)
{
    return plait_cpu_has_avx512() ? PLAIT__KPATH_AVX512 : plait_cpu_has_avx2_fma() ? PLAIT__KPATH_AVX2 : 0;
}

static void run_small_grid(int path, int fwd, int threaded)
{
    if (path > cpu_widest()) return; /* this CPU lacks the path: nothing to compare */
    plait__tensor_force_path(path);
    ck_assert_int_eq(plait__tensor_path(), path);
    /* Threaded: every call goes to the pool, however small. */
    size_t saved = plait__tensor_set_par_min_macs(threaded ? 0 : (size_t)-1);
    pools_up();
    for (size_t a = 0; a < COUNT(Ns); a++)
        for (size_t b = 0; b < COUNT(ICs); b++)
            for (size_t c = 0; c < COUNT(OCs); c++) {
                if (fwd) {
                    check_forward(Ns[a], ICs[b], OCs[c], 0);
                    check_forward(Ns[a], ICs[b], OCs[c], 1);
                } else {
                    check_backward(Ns[a], ICs[b], OCs[c], (int)((a + b + c) % 3) + 1);
                }
            }
    pools_down();
    plait__tensor_set_par_min_macs(saved);
    plait__tensor_force_path(-1);
}

static void run_big(int path)
{
    if (path > cpu_widest()) return;
    plait__tensor_force_path(path);
    pools_up();
    for (size_t s = 0; s < COUNT(big_shapes); s++) {
        size_t N = big_shapes[s][0], IC = big_shapes[s][1], OC = big_shapes[s][2];
        check_forward(N, IC, OC, (int)(s & 1));
        check_backward(N, IC, OC, 3);
    }
    pools_down();
    plait__tensor_force_path(-1);
}

/* Loop index: bit 0 forces threading, the rest is the path (portable, avx2,
 * avx512), each checked against the plain reference. */
START_TEST(test_forward_grid) { run_small_grid(_i >> 1, 1, _i & 1); }
END_TEST
START_TEST(test_backward_grid) { run_small_grid(_i >> 1, 0, _i & 1); }
END_TEST
START_TEST(test_big_shapes) { run_big(_i); }
END_TEST

/* Both NULL is a no-op, and N = 0 / IC = 0 / OC = 0 touch nothing they must not. */
START_TEST(test_degenerate)
{
    pools_up();
    for (int p = 0; p < NPOOLS; p++) {
        float out[6] = {1, 2, 3, 4, 5, 6}, inp[6] = {1, 1, 1, 1, 1, 1}, w[6] = {1, 1, 1, 1, 1, 1};
        float dinp[6] = {7, 7, 7, 7, 7, 7}, dw[6] = {9, 9, 9, 9, 9, 9};
        plait_matmul_backward(pools[p], NULL, NULL, out, inp, w, 2, 3, 2);
        plait_matmul_forward(pools[p], out, inp, w, 0, 3, 2, 0);
        ck_assert(out[0] == 1.0f && out[5] == 6.0f);
        /* IC = 0: an empty dot product is 0, or leaves out unchanged when accumulating. */
        plait_matmul_forward(pools[p], out, inp, w, 2, 0, 3, 1);
        ck_assert(out[0] == 1.0f && out[5] == 6.0f);
        plait_matmul_forward(pools[p], out, inp, w, 2, 0, 3, 0);
        for (int i = 0; i < 6; i++) ck_assert(out[i] == 0.0f);
        /* OC = 0: dinp gets nothing added. N = 0: dw gets nothing added. */
        plait_matmul_backward(pools[p], dinp, NULL, out, inp, w, 2, 3, 0);
        plait_matmul_backward(pools[p], NULL, dw, out, inp, w, 0, 3, 2);
        for (int i = 0; i < 6; i++) ck_assert(dinp[i] == 7.0f && dw[i] == 9.0f);
    }
    pools_down();
}
END_TEST

/* The comparator must be able to fail: one dropped term is caught. */
START_TEST(test_tolerance_can_fail)
{
    size_t N = 16, IC = 173, OC = 33;
    float *inp = rand_buf(N * IC), *w = rand_buf(OC * IC);
    float *want = rand_buf(N * OC), *got = rand_buf(N * OC), *mag = rand_buf(N * OC);
    float *ainp = abs_buf(inp, N * IC), *aw = abs_buf(w, OC * IC);
    plait_matmul_forward_ref(want, inp, w, N, IC, OC, 0);
    plait_matmul_forward_ref(mag, ainp, aw, N, IC, OC, 0);
    plait_matmul_forward(NULL, got, inp, w, N, IC, OC, 0);
    ck_assert(worst_ratio(got, want, mag, N * OC, IC) <= 1.0);
    size_t n = 5, o = 7, i = 100;
    got[n * OC + o] -= inp[n * IC + i] * w[o * IC + i];
    ck_assert(worst_ratio(got, want, mag, N * OC, IC) > 1.0);
    free(inp); free(w); free(want); free(got); free(mag); free(ainp); free(aw);
}
END_TEST

/* ------------------------------------------------------------------ pool */

typedef struct {
    atomic_int *hits;
    atomic_int calls;
    atomic_int empty_calls;
} count_ctx_t;

static void count_fn(void *ctx, size_t b, size_t e)
{
    count_ctx_t *c = ctx;
    atomic_fetch_add(&c->calls, 1);
    if (b >= e) atomic_fetch_add(&c->empty_calls, 1);
    for (size_t i = b; i < e; i++) atomic_fetch_add(&c->hits[i], 1);
}

static void check_exactly_once(plait_pool_t *p, size_t n)
{
    count_ctx_t c;
    c.hits = calloc(n ? n : 1, sizeof(atomic_int));
    ck_assert_ptr_nonnull(c.hits);
    atomic_init(&c.calls, 0);
    atomic_init(&c.empty_calls, 0);
    plait_pool_run(p, count_fn, &c, n);
    for (size_t i = 0; i < n; i++)
        ck_assert_msg(atomic_load(&c.hits[i]) == 1, "pool %d n=%zu: index %zu ran %d times",
                      plait_pool_size(p), n, i, atomic_load(&c.hits[i]));
    ck_assert_int_eq(atomic_load(&c.empty_calls), 0);
    ck_assert_int_le(atomic_load(&c.calls), plait_pool_size(p));
    if (n == 0) ck_assert_int_eq(atomic_load(&c.calls), 0);
    free(c.hits);
}

START_TEST(test_pool_exactly_once)
{
    static const size_t ns[] = {0, 1, 2, 3, 4, 5, 7, 64, 1000, 100003};
    for (int t = 0; t <= 4; t++) {
        plait_pool_t *p = NULL;
        if (t > 0) ck_assert_int_eq(plait_pool_create(&p, t), 0);
        ck_assert_int_eq(plait_pool_size(p), t > 0 ? t : 1);
        for (size_t k = 0; k < COUNT(ns); k++) check_exactly_once(p, ns[k]);
        plait_pool_destroy(p);
    }
}
END_TEST

static void add_fn(void *ctx, size_t b, size_t e)
{
    atomic_long *sum = ctx;
    long s = 0;
    for (size_t i = b; i < e; i++) s += (long)i;
    atomic_fetch_add(sum, s);
}

/* Many tiny jobs back to back: the hand-off between jobs must never lose or
 * repeat one (this is the test to run under TSan). */
START_TEST(test_pool_many_jobs)
{
    for (int t = 2; t <= 3; t++) {
        plait_pool_t *p;
        ck_assert_int_eq(plait_pool_create(&p, t), 0);
        for (int job = 0; job < 20000; job++) {
            atomic_long sum;
            atomic_init(&sum, 0);
            size_t n = (size_t)(job % 7);
            plait_pool_run(p, add_fn, &sum, n);
            ck_assert_int_eq(atomic_load(&sum), (long)(n * (n ? n - 1 : 0) / 2));
        }
        plait_pool_destroy(p);
    }
}
END_TEST

typedef struct {
    atomic_int *hits;
    size_t slow; /* index whose chunk sleeps */
} slow_ctx_t;

static void slow_fn(void *ctx, size_t b, size_t e)
{
    slow_ctx_t *c = ctx;
    for (size_t i = b; i < e; i++) {
        if (i == c->slow) {
            struct timespec ts = {0, 2000000}; /* 2 ms */
            nanosleep(&ts, NULL);
        }
        atomic_fetch_add(&c->hits[i], 1);
    }
}

/* One slow chunk (so other threads finish and may claim what is left), and
 * jobs that arrive after the workers have given up spinning and sleep. */
START_TEST(test_pool_slow_and_sleeping)
{
    plait_pool_t *p;
    ck_assert_int_eq(plait_pool_create(&p, 3), 0);
    for (size_t slow = 0; slow < 3; slow++) {
        atomic_int hits[3];
        for (int i = 0; i < 3; i++) atomic_init(&hits[i], 0);
        slow_ctx_t c = {hits, slow};
        plait_pool_run(p, slow_fn, &c, 3);
        for (int i = 0; i < 3; i++) ck_assert_int_eq(atomic_load(&hits[i]), 1);
    }
    for (int job = 0; job < 5; job++) {
        struct timespec ts = {0, 20000000}; /* 20 ms: every worker is asleep */
        nanosleep(&ts, NULL);
        check_exactly_once(p, 1000);
    }
    plait_pool_destroy(p);
}
END_TEST

START_TEST(test_pool_create_limits)
{
    plait_pool_t *p = (plait_pool_t *)&p;
    ck_assert_int_eq(plait_pool_create(&p, 0), PLAIT_EINVAL);
    ck_assert_ptr_null(p);
    ck_assert_int_eq(plait_pool_create(&p, 257), PLAIT_EINVAL);
    ck_assert_int_eq(plait_pool_create(&p, 1), 0);
    plait_pool_destroy(p);
    plait_pool_destroy(NULL);
    /* Create and destroy with no job ever run. */
    ck_assert_int_eq(plait_pool_create(&p, 3), 0);
    plait_pool_destroy(p);
}
END_TEST

/* Round a float to BF16 and back (the nearest-even rounding of
 * plait_quantize_row, which the kernels' vcvtne2ps2bf16 also uses). */
static float bf16_round(float x)
{
    uint8_t b[2];
    ck_assert_int_eq(plait_quantize_row(b, PLAIT_DT_BF16, &x, 1), 0);
    plait_wmat_t w = {.data = b, .type = PLAIT_DT_BF16, .row_bytes = 2};
    float y;
    plait_dequant_row(&y, &w, 0, 0, 1);
    return y;
}

/* The BF16 base products from a packed W against the double reference on
 * BF16-rounded operands: products of two BF16 values are exact in float32,
 * so only the float32 summation differs and MM_RTOL holds. Where the BF16
 * kernels do not run (no AVX512-BF16, a narrower forced path, forward with
 * few rows) the float32 W is used, which the reference on unrounded operands
 * checks. Loop index: bit 0 threaded, bit 1 forces the AVX2 path, bit 2
 * turns the AMX kernel off (on CPUs with AMX-BF16, bit 2 clear runs it: 32-row
 * blocks, groups of 16 pairs and the vdpbf16ps remainder). */
START_TEST(test_bf16_base)
{
    static const size_t bN[] = {1, 12, 13, 64, 100};
    static const size_t bIC[] = {1, 7, 16, 17, 33, 173, 300, 513};
    static const size_t bOC[] = {1, 17, 33, 64, 130};
    if ((_i & 2) && !plait_cpu_has_avx2_fma()) return;
    if ((_i & 4) && ((_i & 2) || !plait__amx_active())) return; /* the same run as without bit 2 */
    plait__tensor_force_path(_i & 2 ? PLAIT__KPATH_AVX2 : -1);
    plait__tensor_force_amx_off(_i & 4);
    if (_i == 0 && plait__amx_active()) fprintf(stderr, "test_bf16_base: the AMX-BF16 kernel runs\n");
    size_t saved = plait__tensor_set_par_min_macs(_i & 1 ? 0 : (size_t)-1);
    plait_pool_t *pool = NULL;
    if (_i & 1) ck_assert_int_eq(plait_pool_create(&pool, 3), 0);
    for (size_t a = 0; a < COUNT(bN); a++)
        for (size_t b = 0; b < COUNT(bIC); b++)
            for (size_t c = 0; c < COUNT(bOC); c++) {
                size_t N = bN[a], IC = bIC[b], OC = bOC[c];
                int active = plait__bf16_active(), rounded = active && N >= 12; /* forward with few rows: float32 */
                float *w = rand_buf(OC * IC), *x = rand_buf(N * IC), *dy = rand_buf(N * OC);
                uint16_t *wb = malloc(OC * IC * 2);
                uint16_t *pf = malloc(plait__bf16_packed_elems(IC, OC, 0) * 2);
                uint16_t *pb = malloc(plait__bf16_packed_elems(IC, OC, 1) * 2);
                ck_assert(wb && pf && pb);
                for (size_t o = 0; o < OC; o++) ck_assert_int_eq(plait_quantize_row(wb + o * IC, PLAIT_DT_BF16, w + o * IC, IC), 0);
                plait__bf16_pack(pf, wb, IC, OC, 0);
                plait__bf16_pack(pb, wb, IC, OC, 1);
                float *w32 = copy_buf(w, OC * IC), *wr = copy_buf(w, OC * IC);
                plait_wmat_t wm = {.data = w32, .type = PLAIT_DT_F32, .row_bytes = IC * 4};
                if (active)
                    for (size_t i = 0; i < OC * IC; i++) wr[i] = bf16_round(w[i]);
                float *xr = copy_buf(x, N * IC), *dyr = copy_buf(dy, N * OC);
                if (rounded)
                    for (size_t i = 0; i < N * IC; i++) xr[i] = bf16_round(xr[i]);
                if (active) /* dinp takes the BF16 GEMM at every N */
                    for (size_t i = 0; i < N * OC; i++) dyr[i] = bf16_round(dyr[i]);
                float *out = rand_buf(N * OC), *want = copy_buf(out, N * OC);
                int acc = (int)((a + b + c) & 1);
                plait__matmul_forward_bf16(pool, out, x, &wm, pf, N, IC, OC, acc);
                plait_matmul_forward_ref(want, xr, rounded ? wr : w, N, IC, OC, acc);
                float *mag = malloc(N * OC * sizeof(float));
                float *aw = abs_buf(w, OC * IC), *ax = abs_buf(xr, N * IC), *ady = abs_buf(dyr, N * OC);
                plait_matmul_forward_ref(mag, ax, aw, N, IC, OC, 0);
                for (size_t i = 0; i < N * OC; i++) mag[i] += acc ? fabsf(want[i]) : 0.0f;
                double r = worst_ratio(out, want, mag, N * OC, IC);
                ck_assert_msg(r <= 1.0, "bf16 forward N=%zu IC=%zu OC=%zu bf16=%d: %.2fx the tolerance", N, IC, OC,
                              rounded, r);
                float *dx = rand_buf(N * IC), *wantdx = copy_buf(dx, N * IC), *magdx = abs_buf(dx, N * IC);
                plait__matmul_backward_bf16(pool, dx, dy, &wm, pb, N, IC, OC);
                plait_matmul_backward_ref(wantdx, NULL, dyr, NULL, wr, N, IC, OC);
                plait_matmul_backward_ref(magdx, NULL, ady, NULL, aw, N, IC, OC);
                r = worst_ratio(dx, wantdx, magdx, N * IC, OC);
                ck_assert_msg(r <= 1.0, "bf16 dinp N=%zu IC=%zu OC=%zu: %.2fx the tolerance", N, IC, OC, r);
                free(w); free(x); free(dy); free(wb); free(pf); free(pb); free(w32); free(wr); free(xr); free(dyr); free(out); free(want); free(mag);
                free(aw); free(ax); free(ady); free(dx); free(wantdx); free(magdx);
            }
    if (pool) plait_pool_destroy(pool);
    plait__tensor_set_par_min_macs(saved);
    plait__tensor_force_path(-1);
    plait__tensor_force_amx_off(0);
}
END_TEST

START_TEST(test_cpu_query)
{
    /* Forcing the fallback turns SIMD off; releasing it restores CPU dispatch. */
    plait__tensor_force_scalar(1);
    ck_assert_int_eq(plait__tensor_simd_active(), 0);
    plait__tensor_force_scalar(0);
    ck_assert_int_eq(plait__tensor_simd_active(), plait_cpu_has_avx2_fma());
    ck_assert_int_eq(plait__tensor_path(), cpu_widest());
    ck_assert_str_eq(plait_kernel_path_name(), cpu_widest() == 2 ? "avx512" : cpu_widest() ? "avx2" : "portable");
    plait__tensor_force_path(PLAIT__KPATH_AVX2);
    ck_assert_int_eq(plait__tensor_path(), cpu_widest() < 1 ? cpu_widest() : 1);
    plait__tensor_force_path(-1);
    if (plait_cpu_has_avx512()) ck_assert_int_eq(plait_cpu_has_avx2_fma(), 1);
    /* AMX only under the BF16 base path, and off when asked */
    if (plait__amx_active()) ck_assert_int_eq(plait__bf16_active(), 1);
    plait__tensor_force_amx_off(1);
    ck_assert_int_eq(plait__amx_active(), 0);
    plait__tensor_force_amx_off(0);
#if defined(__x86_64__) && defined(__AVX2__) && defined(__FMA__)
    ck_assert_int_eq(plait_cpu_has_avx2_fma(), 1); /* built for it, so the CPU has it */
#endif
}
END_TEST

Suite *tensor_suite(void)
{
    Suite *s = suite_create("tensor");
    TCase *tc = tcase_create("matmul");
    tcase_set_timeout(tc, 300);
    tcase_add_loop_test(tc, test_forward_grid, 0, 6);
    tcase_add_loop_test(tc, test_backward_grid, 0, 6);
    tcase_add_loop_test(tc, test_big_shapes, 0, 3);
    tcase_add_test(tc, test_degenerate);
    tcase_add_test(tc, test_tolerance_can_fail);
    tcase_add_test(tc, test_cpu_query);
    tcase_add_loop_test(tc, test_bf16_base, 0, 8);
    suite_add_tcase(s, tc);
    TCase *tp = tcase_create("pool");
    tcase_set_timeout(tp, 300);
    tcase_add_test(tp, test_pool_exactly_once);
    tcase_add_test(tp, test_pool_many_jobs);
    tcase_add_test(tp, test_pool_slow_and_sleeping);
    tcase_add_test(tp, test_pool_create_limits);
    suite_add_tcase(s, tp);
    return s;
}
