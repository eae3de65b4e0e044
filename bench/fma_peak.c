/*
 * fma_peak.c: the machine's measured limit for the matmul kernels, so that
 * `plait-bench train` can print each row's share of it.
 *
 * Each thread runs 16 independent chains of fused multiply-adds on the
 * widest vectors of the kernel path in use (16 floats for avx512, 8 for
 * avx2, a scalar loop otherwise), long enough (~0.2 s) for the clock to
 * settle; 16 chains cover the FMA latency (4 cycles) of two FMA ports. The
 * figure is FLOPs (2 per lane per FMA) over the wall time of the slowest
 * thread, the best of three tries. It is what the hardware does on this
 * loop now (with its current clock and neighbours), not a datasheet number.
 */
#include "bench.h"

#include "plait/tensor.h"

#include <pthread.h>
#include <string.h>

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define FMA_X86 1
#else
#define FMA_X86 0
#endif

#define CHAINS 16

typedef struct {
    int lanes; /* 16, 8 or 1 */
    long iters;
    float sink;
} fma_job_t;

#if FMA_X86
__attribute__((target("avx512f"))) static float run512(long iters)
{
    __m512 c[CHAINS], a = _mm512_set1_ps(0.999999f), b = _mm512_set1_ps(1e-7f);
    for (int i = 0; i < CHAINS; i++) c[i] = _mm512_set1_ps((float)i);
    for (long n = 0; n < iters; n++)
#pragma GCC unroll 16
        for (int i = 0; i < CHAINS; i++) c[i] = _mm512_fmadd_ps(c[i], a, b);
    __m512 s = c[0];
    for (int i = 1; i < CHAINS; i++) s = _mm512_add_ps(s, c[i]);
    return _mm512_reduce_add_ps(s);
}

__attribute__((target("avx2,fma"))) static float run256(long iters)
{
    __m256 c[CHAINS], a = _mm256_set1_ps(0.999999f), b = _mm256_set1_ps(1e-7f);
    for (int i = 0; i < CHAINS; i++) c[i] = _mm256_set1_ps((float)i);
    for (long n = 0; n < iters; n++)
#pragma GCC unroll 16
        for (int i = 0; i < CHAINS; i++) c[i] = _mm256_fmadd_ps(c[i], a, b);
    __m256 s = c[0];
    for (int i = 1; i < CHAINS; i++) s = _mm256_add_ps(s, c[i]);
    float t[8];
    _mm256_storeu_ps(t, s);
    return t[0] + t[7];
}
#endif

static float run1(long iters)
{
    float c[CHAINS];
    for (int i = 0; i < CHAINS; i++) c[i] = (float)i;
    for (long n = 0; n < iters; n++)
#pragma GCC unroll 16
        for (int i = 0; i < CHAINS; i++) c[i] = c[i] * 0.999999f + 1e-7f;
    float s = 0;
    for (int i = 0; i < CHAINS; i++) s += c[i];
    return s;
}

static void *fma_thread(void *arg)
{
    fma_job_t *j = arg;
#if FMA_X86
    if (j->lanes == 16) j->sink = run512(j->iters);
    else if (j->lanes == 8) j->sink = run256(j->iters);
    else
#endif
        j->sink = run1(j->iters);
    return NULL;
}

double bench_fma_peak_gflops(int threads)
{
    const char *path = plait_kernel_path_name();
    int lanes = strcmp(path, "avx512") == 0 ? 16 : strcmp(path, "avx2") == 0 ? 8 : 1;
    if (threads < 1) threads = 1;
    if (threads > 64) threads = 64;
    long iters = lanes == 1 ? 2000000 : 20000000; /* ~0.2 s a thread at a few GHz */
    double best = 0;
    for (int attempt = 0; attempt < 3; attempt++) {
        fma_job_t jobs[64];
        pthread_t tid[64];
        int started = 0;
        double t0 = bench_now();
        for (int t = 0; t < threads; t++) {
            jobs[t] = (fma_job_t){.lanes = lanes, .iters = iters};
            if (pthread_create(&tid[t], NULL, fma_thread, &jobs[t]) != 0) break;
            started++;
        }
        for (int t = 0; t < started; t++) pthread_join(tid[t], NULL);
        double dt = bench_now() - t0;
        if (started == 0 || dt <= 0) continue;
        double g = 2.0 * lanes * CHAINS * (double)iters * started / dt / 1e9;
        if (g > best) best = g;
    }
    return best;
}
