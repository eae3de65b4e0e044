/*
 * tensor.c: the thread pool and the matmul kernels.
 *
 * Shape letters: N rows (B*T tokens), IC input channels, OC output channels,
 * R LoRA rank. Everything is row-major float; W is (OC, IC) as in llama2.c.
 *
 * Workload. A training step of a small llama2.c model issues hundreds of
 * matmuls of N = 1024 rows with IC, OC between 8 (LoRA rank) and a few
 * hundred (32000 for a classifier); inference issues N = 1 matrix-vector
 * products. So both the per-call dispatch cost and the inner loop matter.
 *
 * Pool. A fixed set of workers runs one job at a time. The caller splits
 * [0, n) into min(n, threads) contiguous chunks, publishes the job by bumping
 * a generation counter, then claims and runs chunks itself alongside the
 * workers (chunks are claimed by compare-and-swap on one atomic word that
 * also carries the generation). So a worker that is slow to wake, or whose
 * core is busy with other work, delays nothing: the caller runs its chunk,
 * and waits only for chunks already claimed. Both sides spin briefly
 * (POOL_SPIN_NS, 50 microseconds) before sleeping on a condition
 * variable, because the next job of a training step usually arrives within
 * that time, and a futex wake costs as much as the smaller jobs themselves.
 * The hand-off cannot lose a wake-up: the generation is bumped and the
 * sleeper count read under the mutex, and the thread that finishes the last
 * chunk signals completion under it. The job fields are read only by a
 * thread holding an unfinished chunk, so the caller never rewrites them
 * while they are in use.
 *
 * Matmul. All three products are one GEMM, C (M, NN) (+)= A (M, K) · B (K, NN),
 * with strides that describe the operands in place:
 *   forward  out  (N, OC)  = inp (N, IC)  · Wᵀ      B(k, j) = W[j, k] (transposed pack)
 *   dinp     dinp (N, IC) += dout (N, OC) · W       B(k, j) = W[k, j]
 *   dw       dw  (OC, IC) += doutᵀ (OC, N) · inp    A(m, k) = dout[k, m]
 * B is packed, per work item, into blocks of KC rows x NC columns stored as
 * panels of NR = 16 contiguous columns (zero-padded), so the micro-kernel
 * reads B with aligned vector loads and never handles a column remainder.
 * The AVX2+FMA micro-kernel keeps a 6 x 16 tile of C in 12 ymm registers and
 * per k does 2 loads, 6 broadcasts of A and 12 FMAs; rows past the end of A
 * re-read its last row (never out of bounds) and are not stored. Where the
 * CPU has AVX512F, an 8 x 32 tile in 16 zmm registers (panels of NR512 = 32
 * columns) takes its place: per k 2 loads, 8 broadcasts and 16 FMAs, with
 * masked stores for edge tiles. A portable micro-kernel with the 6 x 16 tile
 * is the fallback. The path is the widest the CPU has, narrowed by the
 * PLAIT_KERNEL environment variable or by plait__tensor_force_path (tests).
 *
 * Threads. Work items are (row block, column block) pairs taken from an
 * atomic counter, so a thread that wakes late, or shares a core with other
 * work, simply takes fewer items. Problems under PAR_MIN_MACS multiply-adds
 * run on the caller. Forward with N < SMALL_N rows (token-by-token
 * inference) instead computes dot products of input rows with W rows,
 * threaded over OC, since packing W would cost as much as the product.
 *
 * Invariants. Each element of C is summed in a fixed order (k blocks in
 * order, k within a block in order) that depends only on the shape, never on
 * which thread or item computes it: results are bit-identical for any pool.
 * Outputs must not alias inputs (tensor.h). The plain *_ref kernels define
 * the contract; tests/unit/check_tensor.c holds the optimized ones to them.
 */
#include "plait/tensor.h"
#include "tensor_int.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* How long a waiting thread polls before it sleeps. Long enough to cover the
 * gap between the kernels of a training step, short enough not to burn a
 * phone's battery (or a shared core) when the pool is idle. It is measured
 * on the clock rather than in iterations because a CPU "pause" takes from
 * ~10 to ~150 cycles depending on the core. */
#define POOL_SPIN_NS 50000u

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__) || defined(__arm__)
    __asm__ __volatile__("yield");
#endif
}

static uint64_t mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* A spin budget: call spin_more() once per poll; it turns false once
 * POOL_SPIN_NS have passed (reading the clock only every 64 polls). */
#define CLAIM_GEN_SHIFT 24
#define CLAIM_GEN_MASK ((UINT64_C(1) << 40) - 1)

typedef struct {
    unsigned polls;
    uint64_t start;
} spin_t;

static int spin_more(spin_t *s)
{
    cpu_relax();
    if ((++s->polls & 63u) != 0) return 1;
    uint64_t t = mono_ns();
    if (s->start == 0) s->start = t;
    return t - s->start < POOL_SPIN_NS;
}

struct plait_pool_s {
    int n;                  /* threads including the caller */
    pthread_t *threads;     /* n - 1 workers */
    pthread_mutex_t mu;
    pthread_cond_t cv_work; /* a new job (generation bumped) or stop */
    pthread_cond_t cv_done; /* the last chunk of the current job finished */
    atomic_ulong gen;       /* job generation; bumped under mu */
    /* The claim word of the current job: bits 24..63 the low 40 bits of its
     * generation, 12..23 its chunk count, 0..11 the next unclaimed chunk
     * (both at most 256). 40 bits: a worker would have to stall between its
     * load and its compare-and-swap for 2^40 jobs to be fooled.
     * Chunks are claimed by compare-and-swap, so a stale worker (one that
     * wakes after its job ended) sees a different generation and claims
     * nothing. */
    atomic_uint_least64_t claim;
    atomic_uint done;       /* chunks of the current job finished */
    atomic_int stop;
    int sleepers;           /* workers blocked on cv_work (under mu) */
    int caller_waiting;     /* caller blocked on cv_done (under mu) */
    /* The job: written by the caller before it publishes, read only by a
     * thread that holds a claimed, unfinished chunk of it, so never while
     * the caller rewrites it. */
    plait_pool_fn fn;
    void *ctx;
    size_t total;
};

static void chunk(size_t total, unsigned n, unsigned idx, size_t *b, size_t *e)
{
    size_t base = total / n, rem = total % n, i = idx;
    *b = i * base + (i < rem ? i : rem);
    *e = *b + base + (i < rem ? 1 : 0);
}

/* Wait until gen differs from seen: spin, then sleep. Returns the new gen. */
static unsigned long wait_job(plait_pool_t *p, unsigned long seen)
{
    unsigned long g;
    spin_t sp = {0, 0};
    do {
        g = atomic_load_explicit(&p->gen, memory_order_acquire);
        if (g != seen) return g;
    } while (spin_more(&sp));
    pthread_mutex_lock(&p->mu);
    while ((g = atomic_load_explicit(&p->gen, memory_order_acquire)) == seen) {
        p->sleepers++;
        pthread_cond_wait(&p->cv_work, &p->mu);
        p->sleepers--;
    }
    pthread_mutex_unlock(&p->mu);
    return g;
}

/* Claim and run chunks of job generation g until none is left (or the job
 * is no longer g). The thread that finishes the last chunk wakes the caller. */
static void run_chunks(plait_pool_t *p, unsigned long g)
{
    uint_least64_t c = atomic_load_explicit(&p->claim, memory_order_acquire);
    for (;;) {
        if ((c >> CLAIM_GEN_SHIFT) != ((uint_least64_t)g & CLAIM_GEN_MASK))
            return; /* stale: that job is over */
        unsigned nchunks = (unsigned)(c >> 12) & 0xfffu, i = (unsigned)c & 0xfffu;
        if (i >= nchunks) return;
        if (!atomic_compare_exchange_weak_explicit(&p->claim, &c, c + 1, memory_order_acq_rel,
                                                   memory_order_acquire))
            continue; /* c now holds the current word */
        size_t b, e;
        chunk(p->total, nchunks, i, &b, &e);
        p->fn(p->ctx, b, e);
        if (atomic_fetch_add_explicit(&p->done, 1, memory_order_acq_rel) + 1 == nchunks) {
            pthread_mutex_lock(&p->mu);
            if (p->caller_waiting) pthread_cond_signal(&p->cv_done);
            pthread_mutex_unlock(&p->mu);
            return;
        }
        c = atomic_load_explicit(&p->claim, memory_order_acquire);
    }
}

static void *worker(void *arg)
{
    plait_pool_t *p = arg;
    unsigned long seen = 0;
    for (;;) {
        seen = wait_job(p, seen);
        if (atomic_load_explicit(&p->stop, memory_order_relaxed)) break;
        run_chunks(p, seen);
    }
    return NULL;
}

/* Publish a new generation (a job, or stop) and wake sleepers. The claim
 * word is set before gen is bumped, so a worker that sees the new gen also
 * sees the new claim word. */
static unsigned long publish(plait_pool_t *p, unsigned nchunks)
{
    pthread_mutex_lock(&p->mu);
    unsigned long g = atomic_load_explicit(&p->gen, memory_order_relaxed) + 1;
    atomic_store_explicit(&p->done, 0, memory_order_relaxed);
    atomic_store_explicit(&p->claim,
                          (((uint_least64_t)g & CLAIM_GEN_MASK) << CLAIM_GEN_SHIFT) |
                              ((uint_least64_t)nchunks << 12),
                          memory_order_release);
    atomic_store_explicit(&p->gen, g, memory_order_release);
    if (p->sleepers) pthread_cond_broadcast(&p->cv_work);
    pthread_mutex_unlock(&p->mu);
    return g;
}

int plait_pool_create(plait_pool_t **out, int n)
{
    *out = NULL;
    if (n < 1 || n > 256) return plait_fail(PLAIT_EINVAL, "thread count %d is outside 1..256", n);
    plait_pool_t *p = calloc(1, sizeof(*p));
    if (!p) return PLAIT_ENOMEM;
    p->n = 1; /* threads actually started, so destroy joins only those */
    atomic_init(&p->gen, 0);
    atomic_init(&p->claim, 0);
    atomic_init(&p->done, 0);
    atomic_init(&p->stop, 0);
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->cv_work, NULL);
    pthread_cond_init(&p->cv_done, NULL);
    if (n > 1) {
        p->threads = calloc((size_t)n - 1, sizeof(pthread_t));
        if (!p->threads) { plait_pool_destroy(p); return PLAIT_ENOMEM; }
    }
    for (int i = 1; i < n; i++) {
        if (pthread_create(&p->threads[i - 1], NULL, worker, p) != 0) {
            plait_pool_destroy(p);
            return plait_fail(PLAIT_ENOMEM, "cannot start worker thread %d", i);
        }
        p->n = i + 1;
    }
    *out = p;
    return 0;
}

void plait_pool_destroy(plait_pool_t *p)
{
    if (!p) return;
    atomic_store_explicit(&p->stop, 1, memory_order_relaxed);
    if (p->n > 1) publish(p, 0); /* the release in publish orders stop before gen */
    for (int i = 1; i < p->n; i++) pthread_join(p->threads[i - 1], NULL);
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->cv_work);
    pthread_cond_destroy(&p->cv_done);
    free(p->threads);
    free(p);
}

int plait_pool_size(const plait_pool_t *p) { return p ? p->n : 1; }

void plait_pool_run(plait_pool_t *p, plait_pool_fn fn, void *ctx, size_t n)
{
    if (n == 0) return;
    if (!p || p->n == 1 || n == 1) {
        fn(ctx, 0, n);
        return;
    }
    unsigned nchunks = n < (size_t)p->n ? (unsigned)n : (unsigned)p->n;
    p->fn = fn;
    p->ctx = ctx;
    p->total = n;
    unsigned long g = publish(p, nchunks);
    /* The caller claims chunks too: if the workers are slow to wake, it
     * runs the whole job itself and never waits for them. */
    run_chunks(p, g);
    spin_t sp = {0, 0};
    do {
        if (atomic_load_explicit(&p->done, memory_order_acquire) == nchunks) return;
    } while (spin_more(&sp));
    pthread_mutex_lock(&p->mu);
    p->caller_waiting = 1;
    while (atomic_load_explicit(&p->done, memory_order_acquire) != nchunks)
        pthread_cond_wait(&p->cv_done, &p->mu);
    p->caller_waiting = 0;
    pthread_mutex_unlock(&p->mu);
}

/* ---------------------------------------------------------------- matmul */

void plait_matmul_forward_ref(float *out, const float *inp, const float *w, size_t N, size_t IC,
                              size_t OC, int accumulate)
{
    for (size_t n = 0; n < N; n++) {
        for (size_t o = 0; o < OC; o++) {
            double s = 0.0;
            for (size_t i = 0; i < IC; i++) s += (double)inp[n * IC + i] * (double)w[o * IC + i];
            out[n * OC + o] = accumulate ? out[n * OC + o] + (float)s : (float)s;
        }
    }
}

void plait_matmul_backward_ref(float *dinp, float *dw, const float *dout, const float *inp,
                               const float *w, size_t N, size_t IC, size_t OC)
{
    if (dinp) {
        for (size_t n = 0; n < N; n++)
            for (size_t i = 0; i < IC; i++) {
                double s = 0.0;
                for (size_t o = 0; o < OC; o++) s += (double)dout[n * OC + o] * (double)w[o * IC + i];
                dinp[n * IC + i] += (float)s;
            }
    }
    if (dw) {
        for (size_t o = 0; o < OC; o++)
            for (size_t i = 0; i < IC; i++) {
                double s = 0.0;
                for (size_t n = 0; n < N; n++) s += (double)dout[n * OC + o] * (double)inp[n * IC + i];
                dw[o * IC + i] += (float)s;
            }
    }
}

/* ------------------------------------------------------- CPU dispatch */

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#define PLAIT_HAVE_X86_SIMD 1
#include <immintrin.h>
#define PLAIT_AVX2 __attribute__((target("avx2,fma")))
#else
#define PLAIT_HAVE_X86_SIMD 0
#endif

#if PLAIT_HAVE_X86_SIMD
#define PLAIT_AVX512 __attribute__((target("avx512f,avx2,fma")))
#endif

static atomic_int force_max = -1; /* cap on the path, set by tests and tools only; -1 none */

int plait_cpu_has_avx2_fma(void)
{
#if PLAIT_HAVE_X86_SIMD
    static atomic_int cached = -1; /* -1 not probed yet; probing twice is harmless */
    int v = atomic_load_explicit(&cached, memory_order_relaxed);
    if (v < 0) {
        __builtin_cpu_init();
        v = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
        atomic_store_explicit(&cached, v, memory_order_relaxed);
    }
    return v;
#else
    return 0;
#endif
}

int plait_cpu_has_avx512(void)
{
#if PLAIT_HAVE_X86_SIMD
    static atomic_int cached = -1;
    int v = atomic_load_explicit(&cached, memory_order_relaxed);
    if (v < 0) {
        __builtin_cpu_init();
        v = plait_cpu_has_avx2_fma() && __builtin_cpu_supports("avx512f");
        atomic_store_explicit(&cached, v, memory_order_relaxed);
    }
    return v;
#else
    return 0;
#endif
}

/* The widest path the CPU has, capped by PLAIT_KERNEL (portable, avx2,
 * avx512) when the environment sets it: read once, at the first kernel. */
static int cpu_path(void)
{
    static atomic_int cached = -1;
    int v = atomic_load_explicit(&cached, memory_order_relaxed);
    if (v >= 0) return v;
    v = plait_cpu_has_avx512() ? PLAIT__KPATH_AVX512 : plait_cpu_has_avx2_fma() ? PLAIT__KPATH_AVX2 : 0;
    const char *e = getenv("PLAIT_KERNEL");
    if (e && *e) {
        int cap = strcmp(e, "portable") == 0 ? PLAIT__KPATH_PORTABLE
                  : strcmp(e, "avx2") == 0   ? PLAIT__KPATH_AVX2
                  : strcmp(e, "avx512") == 0 ? PLAIT__KPATH_AVX512
                                             : -1;
        if (cap >= 0 && cap < v) v = cap; /* an unknown name or an absent path changes nothing */
    }
    atomic_store_explicit(&cached, v, memory_order_relaxed);
    return v;
}

void plait__tensor_force_path(int max) { atomic_store(&force_max, max < 0 ? -1 : max); }

void plait__tensor_force_scalar(int on) { plait__tensor_force_path(on ? PLAIT__KPATH_PORTABLE : -1); }

int plait__tensor_path(void)
{
    int v = cpu_path();
    int cap = atomic_load_explicit(&force_max, memory_order_relaxed);
    return cap >= 0 && cap < v ? cap : v;
}

int plait__tensor_simd_active(void) { return plait__tensor_path() >= PLAIT__KPATH_AVX2; }

const char *plait_kernel_path_name(void)
{
    static const char *const names[] = {"portable", "avx2", "avx512"};
    return names[plait__tensor_path()];
}

/* ------------------------------------------------------------ blocking */

#define MR 6            /* rows of C per micro-tile */
#define NR 16           /* columns of C per micro-tile: two 8-float vectors */
#define MR512 8         /* AVX-512 tile: 8 rows x 32 columns (two 16-float vectors) */
#define NR512 32
#define KC 256          /* depth of one packed block of B */
#define NC_MAX 64       /* columns of one packed block of B (4 panels) */
#define MB_MIN 24       /* fewest rows per work item, to amortize packing */
#define SMALL_N 12      /* forward with fewer rows (and IC >= DOT_MIN_IC) uses dot products */
#define DOT_MIN_IC 16
#define ITEMS_PER_THREAD 4

/* Below this many multiply-adds (about 10-20 us on one core) a call runs on
 * the calling thread. Handing a job to the pool costs a microsecond when the
 * workers are spinning but tens when they sleep or share their core, and the
 * second thread repacks B; measured with tools/plait-bench-matmul, rank-8
 * LoRA products of the 260K model (N = 1024, 0.5M MACs) ran no faster on two
 * threads than on one. */
#define PAR_MIN_MACS ((size_t)1 << 20)
static atomic_size_t par_min_macs = PAR_MIN_MACS; /* tests lower it */

size_t plait__tensor_set_par_min_macs(size_t macs)
{
    return atomic_exchange(&par_min_macs, macs);
}

static int run_inline(size_t macs)
{
    return macs < atomic_load_explicit(&par_min_macs, memory_order_relaxed);
}

/*
 * One GEMM call: C (M, NN) = or += A (M, K) · B (K, NN), with
 *   A(m, k) = a[m * ars + k * acs]
 *   B(k, j) = btrans ? b[j * ldb + k] : b[k * ldb + j]
 *   C(m, j) = c[m * ldc + j]
 * Work items are (row block, column block) pairs handed out by an atomic
 * counter, so a thread that is slow to wake (or shares its core with a
 * compiler) takes fewer items instead of holding everyone up.
 */
typedef struct {
    float *c;
    size_t ldc;
    const float *a;
    size_t ars, acs;
    const float *b;
    size_t ldb;
    int btrans;
    size_t M, K, NN;
    int accumulate;
    int path;               /* PLAIT__KPATH_* */
    size_t mr, nr;          /* micro-tile of the path */
    size_t mb, nc;          /* rows / columns per work item */
    size_t m_items, n_items;
    atomic_size_t next;     /* next unclaimed item */
} gemm_t;

typedef void (*ukernel_fn)(size_t kc, const float *a, size_t ars, size_t acs, const float *bp,
                           float *c, size_t ldc, size_t mr, size_t nr, int load_c);

/* Pack B(k0 .. k0+kc, j0 .. j0+nc) into panels of NR columns, each panel kc
 * rows of NR contiguous floats; columns past nc are zero, so the micro-kernel
 * never needs a column remainder loop. */
#if PLAIT_HAVE_X86_SIMD
/* One full panel of a transposed pack: d[k * NR + jj] = s[jj * ldb + k] for
 * jj < 16, k < kc, by 8 x 8 register transposes (the scalar loop costs a few
 * cycles per element, which shows when N is small). */
PLAIT_AVX2 static void pack_bt_panel_avx2(float *restrict d, const float *s, size_t ldb, size_t kc,
                                          size_t NRW)
{
    size_t k = 0;
    for (; k + 8 <= kc; k += 8) {
        for (size_t h = 0; h < NRW; h += 8) {
            const float *r = s + h * ldb + k;
            __m256 r0 = _mm256_loadu_ps(r), r1 = _mm256_loadu_ps(r + ldb);
            __m256 r2 = _mm256_loadu_ps(r + 2 * ldb), r3 = _mm256_loadu_ps(r + 3 * ldb);
            __m256 r4 = _mm256_loadu_ps(r + 4 * ldb), r5 = _mm256_loadu_ps(r + 5 * ldb);
            __m256 r6 = _mm256_loadu_ps(r + 6 * ldb), r7 = _mm256_loadu_ps(r + 7 * ldb);
            __m256 t0 = _mm256_unpacklo_ps(r0, r1), t1 = _mm256_unpackhi_ps(r0, r1);
            __m256 t2 = _mm256_unpacklo_ps(r2, r3), t3 = _mm256_unpackhi_ps(r2, r3);
            __m256 t4 = _mm256_unpacklo_ps(r4, r5), t5 = _mm256_unpackhi_ps(r4, r5);
            __m256 t6 = _mm256_unpacklo_ps(r6, r7), t7 = _mm256_unpackhi_ps(r6, r7);
            __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE);
            __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xEE);
            __m256 u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xEE);
            __m256 u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xEE);
            float *o = d + k * NRW + h;
            _mm256_storeu_ps(o + 0 * NRW, _mm256_permute2f128_ps(u0, u4, 0x20));
            _mm256_storeu_ps(o + 1 * NRW, _mm256_permute2f128_ps(u1, u5, 0x20));
            _mm256_storeu_ps(o + 2 * NRW, _mm256_permute2f128_ps(u2, u6, 0x20));
            _mm256_storeu_ps(o + 3 * NRW, _mm256_permute2f128_ps(u3, u7, 0x20));
            _mm256_storeu_ps(o + 4 * NRW, _mm256_permute2f128_ps(u0, u4, 0x31));
            _mm256_storeu_ps(o + 5 * NRW, _mm256_permute2f128_ps(u1, u5, 0x31));
            _mm256_storeu_ps(o + 6 * NRW, _mm256_permute2f128_ps(u2, u6, 0x31));
            _mm256_storeu_ps(o + 7 * NRW, _mm256_permute2f128_ps(u3, u7, 0x31));
        }
    }
    for (; k < kc; k++)
        for (size_t jj = 0; jj < NRW; jj++) d[k * NRW + jj] = s[jj * ldb + k];
}
#endif

#if PLAIT_HAVE_X86_SIMD
PLAIT_AVX512 static inline void copy32_avx512(float *restrict d, const float *s)
{
    _mm512_store_ps(d, _mm512_loadu_ps(s)); /* d: a row of a 64-byte aligned panel */
    _mm512_store_ps(d + 16, _mm512_loadu_ps(s + 16));
}
#endif

static void pack_b(float *restrict dst, const gemm_t *g, size_t k0, size_t kc, size_t j0,
                   size_t nc)
{
    const size_t NRW = g->nr; /* panel width of the path: NR or NR512 */
    for (size_t p = 0; p < nc; p += NRW) {
        size_t w = nc - p < NRW ? nc - p : NRW;
        float *restrict d = dst + p * kc;
        if (g->btrans) {
            /* B(k, j) = b[j * ldb + k]: read w rows of b side by side, so the
             * writes stay sequential. */
            const float *s = g->b + (j0 + p) * g->ldb + k0;
            size_t ldb = g->ldb;
#if PLAIT_HAVE_X86_SIMD
            if (w == NRW && g->path >= PLAIT__KPATH_AVX2) {
                pack_bt_panel_avx2(d, s, ldb, kc, NRW);
                continue;
            }
#endif
            for (size_t k = 0; k < kc; k++) {
                for (size_t jj = 0; jj < w; jj++) d[k * NRW + jj] = s[jj * ldb + k];
                for (size_t jj = w; jj < NRW; jj++) d[k * NRW + jj] = 0.0f;
            }
        } else {
            /* B(k, j) = b[k * ldb + j]: each packed row is a slice of a b row. */
            for (size_t k = 0; k < kc; k++) {
                const float *src = g->b + (k0 + k) * g->ldb + j0 + p;
#if PLAIT_HAVE_X86_SIMD
                if (w == NR512 && g->path == PLAIT__KPATH_AVX512) {
                    copy32_avx512(d + k * NRW, src); /* a call to memcpy per 128 bytes costs more */
                    continue;
                }
#endif
                memcpy(d + k * NRW, src, w * sizeof(float));
                if (w < NRW) memset(d + k * NRW + w, 0, (NRW - w) * sizeof(float));
            }
        }
    }
}

/* Write a finished MR x NR tile: only mr rows and nr columns are real. */
static void store_tile(float *c, size_t ldc, const float *tile, size_t mr, size_t nr, int load_c)
{
    for (size_t r = 0; r < mr; r++)
        for (size_t j = 0; j < nr; j++)
            c[r * ldc + j] = load_c ? c[r * ldc + j] + tile[r * NR + j] : tile[r * NR + j];
}

/* Portable micro-kernel. GCC and clang get 4-float generic vectors (SSE2 on
 * baseline x86-64, NEON on arm64) and work on two rows at a time, so the 8
 * accumulators plus the 4 B vectors fit the 16 registers of the smallest of
 * those; other compilers get plain loops. Rows past mr re-read row mr - 1
 * (never past the end of A) and are discarded by store_tile. */
#if defined(__GNUC__) || defined(__clang__)
typedef float v4f __attribute__((vector_size(16)));

static void ukernel_portable(size_t kc, const float *a, size_t ars, size_t acs, const float *bp,
                             float *c, size_t ldc, size_t mr, size_t nr, int load_c)
{
    _Alignas(16) float tile[MR * NR];
    for (size_t r = 0; r < MR; r += 2) {
        const float *x0 = a + (r < mr ? r : mr - 1) * ars;
        const float *x1 = a + (r + 1 < mr ? r + 1 : mr - 1) * ars;
        v4f c00 = {0}, c01 = {0}, c02 = {0}, c03 = {0}, c10 = {0}, c11 = {0}, c12 = {0}, c13 = {0};
        const float *b = bp;
        size_t off = 0;
        for (size_t k = 0; k < kc; k++, off += acs, b += NR) {
            v4f b0, b1, b2, b3;
            memcpy(&b0, b, sizeof(b0));
            memcpy(&b1, b + 4, sizeof(b1));
            memcpy(&b2, b + 8, sizeof(b2));
            memcpy(&b3, b + 12, sizeof(b3));
            float s0 = x0[off], s1 = x1[off];
            c00 += s0 * b0; c01 += s0 * b1; c02 += s0 * b2; c03 += s0 * b3;
            c10 += s1 * b0; c11 += s1 * b1; c12 += s1 * b2; c13 += s1 * b3;
        }
        float *t = tile + r * NR;
        memcpy(t, &c00, 16); memcpy(t + 4, &c01, 16); memcpy(t + 8, &c02, 16); memcpy(t + 12, &c03, 16);
        t += NR;
        memcpy(t, &c10, 16); memcpy(t + 4, &c11, 16); memcpy(t + 8, &c12, 16); memcpy(t + 12, &c13, 16);
    }
    store_tile(c, ldc, tile, mr, nr, load_c);
}
#else
static void ukernel_portable(size_t kc, const float *a, size_t ars, size_t acs, const float *bp,
                             float *c, size_t ldc, size_t mr, size_t nr, int load_c)
{
    float acc[MR * NR] = {0};
    const float *ar[MR];
    for (size_t r = 0; r < MR; r++) ar[r] = a + (r < mr ? r : mr - 1) * ars;
    size_t off = 0;
    for (size_t k = 0; k < kc; k++, off += acs) {
        const float *b = bp + k * NR;
        for (size_t r = 0; r < MR; r++) {
            float x = ar[r][off];
            for (size_t j = 0; j < NR; j++) acc[r * NR + j] += x * b[j];
        }
    }
    store_tile(c, ldc, acc, mr, nr, load_c);
}
#endif

#if PLAIT_HAVE_X86_SIMD
/* One row of an edge tile: lanes where m0 / m1 are set are real columns. */
PLAIT_AVX2 static inline void edge_row_avx2(float *cr, __m256i m0, __m256i m1, int n1, int load_c,
                                            __m256 v0, __m256 v1)
{
    if (load_c) v0 = _mm256_add_ps(_mm256_maskload_ps(cr, m0), v0);
    _mm256_maskstore_ps(cr, m0, v0);
    if (n1 > 0) {
        if (load_c) v1 = _mm256_add_ps(_mm256_maskload_ps(cr + 8, m1), v1);
        _mm256_maskstore_ps(cr + 8, m1, v1);
    }
}

/* AVX2 micro-kernel: 6 rows x 16 columns = 12 accumulators, 2 B vectors and
 * one broadcast register: 15 of the 16 ymm registers. Per k: 2 loads,
 * 6 broadcasts, 12 FMAs, no horizontal sums. */
PLAIT_AVX2 static void ukernel_avx2(size_t kc, const float *a, size_t ars, size_t acs,
                                    const float *bp, float *c, size_t ldc, size_t mr, size_t nr,
                                    int load_c)
{
    const float *a0 = a;
    const float *a1 = a + (mr > 1 ? 1 : 0) * ars;
    const float *a2 = a + (mr > 2 ? 2 : mr - 1) * ars;
    const float *a3 = a + (mr > 3 ? 3 : mr - 1) * ars;
    const float *a4 = a + (mr > 4 ? 4 : mr - 1) * ars;
    const float *a5 = a + (mr > 5 ? 5 : mr - 1) * ars;
    __m256 c00 = _mm256_setzero_ps(), c01 = _mm256_setzero_ps();
    __m256 c10 = _mm256_setzero_ps(), c11 = _mm256_setzero_ps();
    __m256 c20 = _mm256_setzero_ps(), c21 = _mm256_setzero_ps();
    __m256 c30 = _mm256_setzero_ps(), c31 = _mm256_setzero_ps();
    __m256 c40 = _mm256_setzero_ps(), c41 = _mm256_setzero_ps();
    __m256 c50 = _mm256_setzero_ps(), c51 = _mm256_setzero_ps();
    size_t off = 0;
    for (size_t k = 0; k < kc; k++, off += acs, bp += NR) {
        __m256 b0 = _mm256_load_ps(bp), b1 = _mm256_load_ps(bp + 8), x;
        x = _mm256_broadcast_ss(a0 + off);
        c00 = _mm256_fmadd_ps(x, b0, c00);
        c01 = _mm256_fmadd_ps(x, b1, c01);
        x = _mm256_broadcast_ss(a1 + off);
        c10 = _mm256_fmadd_ps(x, b0, c10);
        c11 = _mm256_fmadd_ps(x, b1, c11);
        x = _mm256_broadcast_ss(a2 + off);
        c20 = _mm256_fmadd_ps(x, b0, c20);
        c21 = _mm256_fmadd_ps(x, b1, c21);
        x = _mm256_broadcast_ss(a3 + off);
        c30 = _mm256_fmadd_ps(x, b0, c30);
        c31 = _mm256_fmadd_ps(x, b1, c31);
        x = _mm256_broadcast_ss(a4 + off);
        c40 = _mm256_fmadd_ps(x, b0, c40);
        c41 = _mm256_fmadd_ps(x, b1, c41);
        x = _mm256_broadcast_ss(a5 + off);
        c50 = _mm256_fmadd_ps(x, b0, c50);
        c51 = _mm256_fmadd_ps(x, b1, c51);
    }
    if (mr == MR && nr == NR) {
#define ROW(r, v0, v1)                                                                  \
    do {                                                                                \
        float *cr = c + (r) * ldc;                                                      \
        if (load_c) {                                                                   \
            v0 = _mm256_add_ps(_mm256_loadu_ps(cr), v0);                                \
            v1 = _mm256_add_ps(_mm256_loadu_ps(cr + 8), v1);                            \
        }                                                                               \
        _mm256_storeu_ps(cr, v0);                                                       \
        _mm256_storeu_ps(cr + 8, v1);                                                   \
    } while (0)
        ROW(0, c00, c01);
        ROW(1, c10, c11);
        ROW(2, c20, c21);
        ROW(3, c30, c31);
        ROW(4, c40, c41);
        ROW(5, c50, c51);
#undef ROW
        return;
    }
    /* Edge tile: masked loads and stores cover the nr columns (masked-off
     * lanes are never touched), and only mr rows are written. */
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    int n0 = nr < 8 ? (int)nr : 8, n1 = nr > 8 ? (int)nr - 8 : 0;
    __m256i m0 = _mm256_cmpgt_epi32(_mm256_set1_epi32(n0), lane);
    __m256i m1 = _mm256_cmpgt_epi32(_mm256_set1_epi32(n1), lane);
    edge_row_avx2(c, m0, m1, n1, load_c, c00, c01);
    if (mr > 1) edge_row_avx2(c + ldc, m0, m1, n1, load_c, c10, c11);
    if (mr > 2) edge_row_avx2(c + 2 * ldc, m0, m1, n1, load_c, c20, c21);
    if (mr > 3) edge_row_avx2(c + 3 * ldc, m0, m1, n1, load_c, c30, c31);
    if (mr > 4) edge_row_avx2(c + 4 * ldc, m0, m1, n1, load_c, c40, c41);
    if (mr > 5) edge_row_avx2(c + 5 * ldc, m0, m1, n1, load_c, c50, c51);
}

/* AVX-512 micro-kernel: 8 rows x 32 columns = 16 zmm accumulators, 2 B
 * vectors and a broadcast (19 of the 32 zmm registers). Per k: 2 loads of
 * B, 8 broadcasts of A (folded into the FMAs as memory operands) and 16
 * FMAs, so the two FMA ports, not the load ports, set the pace. Edge tiles
 * store through 16-lane masks; rows past mr re-read row mr - 1. */
PLAIT_AVX512 static void ukernel_avx512(size_t kc, const float *a, size_t ars, size_t acs,
                                        const float *bp, float *c, size_t ldc, size_t mr, size_t nr,
                                        int load_c)
{
    const float *a0 = a;
    const float *a1 = a + (mr > 1 ? 1 : 0) * ars;
    const float *a2 = a + (mr > 2 ? 2 : mr - 1) * ars;
    const float *a3 = a + (mr > 3 ? 3 : mr - 1) * ars;
    const float *a4 = a + (mr > 4 ? 4 : mr - 1) * ars;
    const float *a5 = a + (mr > 5 ? 5 : mr - 1) * ars;
    const float *a6 = a + (mr > 6 ? 6 : mr - 1) * ars;
    const float *a7 = a + (mr > 7 ? 7 : mr - 1) * ars;
    __m512 c00 = _mm512_setzero_ps(), c01 = _mm512_setzero_ps();
    __m512 c10 = _mm512_setzero_ps(), c11 = _mm512_setzero_ps();
    __m512 c20 = _mm512_setzero_ps(), c21 = _mm512_setzero_ps();
    __m512 c30 = _mm512_setzero_ps(), c31 = _mm512_setzero_ps();
    __m512 c40 = _mm512_setzero_ps(), c41 = _mm512_setzero_ps();
    __m512 c50 = _mm512_setzero_ps(), c51 = _mm512_setzero_ps();
    __m512 c60 = _mm512_setzero_ps(), c61 = _mm512_setzero_ps();
    __m512 c70 = _mm512_setzero_ps(), c71 = _mm512_setzero_ps();
    size_t off = 0;
    for (size_t k = 0; k < kc; k++, off += acs, bp += NR512) {
        __m512 b0 = _mm512_load_ps(bp), b1 = _mm512_load_ps(bp + 16), x;
#define FMA2(ar, v0, v1)                       \
    x = _mm512_set1_ps((ar)[off]);             \
    v0 = _mm512_fmadd_ps(x, b0, v0);           \
    v1 = _mm512_fmadd_ps(x, b1, v1)
        FMA2(a0, c00, c01);
        FMA2(a1, c10, c11);
        FMA2(a2, c20, c21);
        FMA2(a3, c30, c31);
        FMA2(a4, c40, c41);
        FMA2(a5, c50, c51);
        FMA2(a6, c60, c61);
        FMA2(a7, c70, c71);
#undef FMA2
    }
    /* Columns past nr are masked off (never read or written); rows past mr
     * are not stored. A full tile has all-ones masks. */
    __mmask16 m0 = nr >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << nr) - 1);
    __mmask16 m1 = nr >= 32 ? (__mmask16)0xFFFF : nr > 16 ? (__mmask16)((1u << (nr - 16)) - 1) : 0;
#define ROW(r, v0, v1)                                                              \
    do {                                                                            \
        float *cr = c + (r) * ldc;                                                  \
        if (load_c) {                                                               \
            v0 = _mm512_add_ps(_mm512_maskz_loadu_ps(m0, cr), v0);                  \
            v1 = _mm512_add_ps(_mm512_maskz_loadu_ps(m1, cr + 16), v1);             \
        }                                                                           \
        _mm512_mask_storeu_ps(cr, m0, v0);                                          \
        _mm512_mask_storeu_ps(cr + 16, m1, v1);                                     \
    } while (0)
    ROW(0, c00, c01);
    if (mr > 1) ROW(1, c10, c11);
    if (mr > 2) ROW(2, c20, c21);
    if (mr > 3) ROW(3, c30, c31);
    if (mr > 4) ROW(4, c40, c41);
    if (mr > 5) ROW(5, c50, c51);
    if (mr > 6) ROW(6, c60, c61);
    if (mr > 7) ROW(7, c70, c71);
#undef ROW
}
#endif

/* Run work items until none is left. Called once per pool thread. */
static void gemm_task(void *ctx, size_t begin, size_t end)
{
    (void)begin;
    (void)end;
    gemm_t *g = ctx;
    _Alignas(64) float bpack[KC * NC_MAX]; /* 64 KiB: one packed block of B */
    ukernel_fn uk = ukernel_portable;
#if PLAIT_HAVE_X86_SIMD
    if (g->path == PLAIT__KPATH_AVX512) uk = ukernel_avx512;
    else if (g->path == PLAIT__KPATH_AVX2) uk = ukernel_avx2;
#endif
    size_t total = g->m_items * g->n_items;
    for (;;) {
        size_t item = atomic_fetch_add_explicit(&g->next, 1, memory_order_relaxed);
        if (item >= total) break;
        /* Column-block-major: consecutive items read the same B columns,
         * which are then still in cache when they are packed again. */
        size_t m0 = (item % g->m_items) * g->mb, j0 = (item / g->m_items) * g->nc;
        size_t m1 = m0 + g->mb < g->M ? m0 + g->mb : g->M;
        size_t nc = g->NN - j0 < g->nc ? g->NN - j0 : g->nc;
        for (size_t k0 = 0; k0 < g->K; k0 += KC) {
            size_t kc = g->K - k0 < KC ? g->K - k0 : KC;
            int load_c = g->accumulate || k0 > 0;
            pack_b(bpack, g, k0, kc, j0, nc);
            for (size_t m = m0; m < m1; m += g->mr) {
                size_t mr = m1 - m < g->mr ? m1 - m : g->mr;
                const float *a = g->a + m * g->ars + k0 * g->acs;
                for (size_t p = 0; p < nc; p += g->nr) {
                    size_t nr = nc - p < g->nr ? nc - p : g->nr;
                    uk(kc, a, g->ars, g->acs, bpack + p * kc, g->c + m * g->ldc + j0 + p, g->ldc,
                       mr, nr, load_c);
                }
            }
        }
    }
}

static size_t ceil_div(size_t a, size_t b) { return (a + b - 1) / b; }

static void gemm_run(plait_pool_t *pool, gemm_t *g)
{
    if (g->M == 0 || g->NN == 0) return;
    if (g->K == 0) { /* empty sums */
        if (!g->accumulate)
            for (size_t m = 0; m < g->M; m++) memset(g->c + m * g->ldc, 0, g->NN * sizeof(float));
        return;
    }
    g->path = plait__tensor_path();
    g->mr = g->path == PLAIT__KPATH_AVX512 ? MR512 : MR;
    g->nr = g->path == PLAIT__KPATH_AVX512 ? NR512 : NR;
    int threads = plait_pool_size(pool);
    if (run_inline(g->M * g->K * g->NN)) threads = 1;
    /* Fewer, wider column blocks pack less; narrow them only when the
     * problem would otherwise give the threads too few items. */
    size_t target = threads > 1 ? (size_t)threads * ITEMS_PER_THREAD : 1;
    size_t m_tiles = ceil_div(g->M, g->mr);
    g->nc = NC_MAX;
    while (g->nc > g->nr && m_tiles * ceil_div(g->NN, g->nc) < target) g->nc /= 2;
    g->n_items = ceil_div(g->NN, g->nc);
    size_t m_parts = ceil_div(target, g->n_items);
    g->mb = ceil_div(ceil_div(g->M, m_parts), g->mr) * g->mr;
    if (g->mb < MB_MIN) g->mb = MB_MIN;
    g->m_items = ceil_div(g->M, g->mb);
    atomic_init(&g->next, 0);
    size_t total = g->m_items * g->n_items;
    if (threads == 1 || total == 1) gemm_task(g, 0, 1);
    else plait_pool_run(pool, gemm_task, g, total < (size_t)threads ? total : (size_t)threads);
}

/* ------------------------------------------------- dot-product (N small) */

/*
 * Forward for a handful of rows (token-by-token inference is N = 1): packing
 * W would cost as much as the product, so each output is a dot product of an
 * input row with a W row, both contiguous. Threads split OC.
 */
typedef struct {
    float *out;
    const float *inp, *w;
    size_t N, IC, OC;
    int accumulate;
    int simd;
} dot_t;

#define DOT_OC_CHUNK 16 /* W rows per pool item */

static void dot_portable(const dot_t *d, size_t o0, size_t o1)
{
    size_t IC = d->IC;
    for (size_t n = 0; n < d->N; n++) {
        const float *x = d->inp + n * IC;
        float *y = d->out + n * d->OC;
        for (size_t o = o0; o < o1; o++) {
            const float *wr = d->w + o * IC;
            float s[4] = {0, 0, 0, 0};
            size_t i = 0;
            for (; i + 4 <= IC; i += 4)
                for (size_t l = 0; l < 4; l++) s[l] += x[i + l] * wr[i + l];
            float t = (s[0] + s[1]) + (s[2] + s[3]);
            for (; i < IC; i++) t += x[i] * wr[i];
            y[o] = d->accumulate ? y[o] + t : t;
        }
    }
}

#if PLAIT_HAVE_X86_SIMD
PLAIT_AVX2 static inline float hsum_avx2(__m256 v)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* Eight W rows against one input row at a time: the x vector is loaded once
 * per eight FMAs, the eight independent sums hide the FMA latency, and they
 * are reduced together into one vector of eight outputs. The rows of the
 * batch are the inner loop, so the eight W rows are read from memory once
 * and from L1 for the other rows. Then blocks of four W rows, then one. */
PLAIT_AVX2 static void dot_avx2(const dot_t *d, size_t o0, size_t o1)
{
    size_t IC = d->IC, IC8 = IC & ~(size_t)7;
    size_t o = o0;
    for (; o + 8 <= o1; o += 8) {
        const float *w0 = d->w + o * IC;
        for (size_t n = 0; n < d->N; n++) {
            const float *x = d->inp + n * IC;
            float *y = d->out + n * d->OC + o;
            __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
            __m256 s2 = _mm256_setzero_ps(), s3 = _mm256_setzero_ps();
            __m256 s4 = _mm256_setzero_ps(), s5 = _mm256_setzero_ps();
            __m256 s6 = _mm256_setzero_ps(), s7 = _mm256_setzero_ps();
            for (size_t i = 0; i < IC8; i += 8) {
                __m256 xv = _mm256_loadu_ps(x + i);
                const float *wi = w0 + i;
                s0 = _mm256_fmadd_ps(xv, _mm256_loadu_ps(wi), s0);
                s1 = _mm256_fmadd_ps(xv, _mm256_loadu_ps(wi + IC), s1);
                s2 = _mm256_fmadd_ps(xv, _mm256_loadu_ps(wi + 2 * IC), s2);
                s3 = _mm256_fmadd_ps(xv, _mm256_loadu_ps(wi + 3 * IC), s3);
                s4 = _mm256_fmadd_ps(xv, _mm256_loadu_ps(wi + 4 * IC), s4);
                s5 = _mm256_fmadd_ps(xv, _mm256_loadu_ps(wi + 5 * IC), s5);
                s6 = _mm256_fmadd_ps(xv, _mm256_loadu_ps(wi + 6 * IC), s6);
                s7 = _mm256_fmadd_ps(xv, _mm256_loadu_ps(wi + 7 * IC), s7);
            }
            /* Lane l of h03 (low half) / h47 (high half) holds half of sum l. */
            __m256 h03 = _mm256_hadd_ps(_mm256_hadd_ps(s0, s1), _mm256_hadd_ps(s2, s3));
            __m256 h47 = _mm256_hadd_ps(_mm256_hadd_ps(s4, s5), _mm256_hadd_ps(s6, s7));
            __m256 r = _mm256_add_ps(_mm256_permute2f128_ps(h03, h47, 0x20),
                                     _mm256_permute2f128_ps(h03, h47, 0x31));
            _Alignas(32) float t[8];
            _mm256_store_ps(t, r);
            for (size_t i = IC8; i < IC; i++)
                for (size_t l = 0; l < 8; l++) t[l] += x[i] * w0[l * IC + i];
            for (size_t l = 0; l < 8; l++) y[l] = d->accumulate ? y[l] + t[l] : t[l];
        }
    }
    for (; o + 4 <= o1; o += 4) {
        const float *w0 = d->w + o * IC, *w1 = w0 + IC, *w2 = w1 + IC, *w3 = w2 + IC;
        for (size_t n = 0; n < d->N; n++) {
            const float *x = d->inp + n * IC;
            float *y = d->out + n * d->OC + o;
            __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
            __m256 s2 = _mm256_setzero_ps(), s3 = _mm256_setzero_ps();
            for (size_t i = 0; i < IC8; i += 8) {
                __m256 xv = _mm256_loadu_ps(x + i);
                s0 = _mm256_fmadd_ps(xv, _mm256_loadu_ps(w0 + i), s0);
                s1 = _mm256_fmadd_ps(xv, _mm256_loadu_ps(w1 + i), s1);
                s2 = _mm256_fmadd_ps(xv, _mm256_loadu_ps(w2 + i), s2);
                s3 = _mm256_fmadd_ps(xv, _mm256_loadu_ps(w3 + i), s3);
            }
            /* Reduce the four sums at once: lane l of r is the sum of s_l. */
            __m256 h = _mm256_hadd_ps(_mm256_hadd_ps(s0, s1), _mm256_hadd_ps(s2, s3));
            __m128 r = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
            _Alignas(16) float t[4];
            _mm_store_ps(t, r);
            for (size_t i = IC8; i < IC; i++) {
                t[0] += x[i] * w0[i];
                t[1] += x[i] * w1[i];
                t[2] += x[i] * w2[i];
                t[3] += x[i] * w3[i];
            }
            for (size_t l = 0; l < 4; l++) y[l] = d->accumulate ? y[l] + t[l] : t[l];
        }
    }
    for (; o < o1; o++) {
        const float *wr = d->w + o * IC;
        for (size_t n = 0; n < d->N; n++) {
            const float *x = d->inp + n * IC;
            float *y = d->out + n * d->OC + o;
            __m256 s = _mm256_setzero_ps();
            for (size_t i = 0; i < IC8; i += 8)
                s = _mm256_fmadd_ps(_mm256_loadu_ps(x + i), _mm256_loadu_ps(wr + i), s);
            float t = hsum_avx2(s);
            for (size_t i = IC8; i < IC; i++) t += x[i] * wr[i];
            *y = d->accumulate ? *y + t : t;
        }
    }
}
#endif

static void dot_task(void *ctx, size_t b, size_t e)
{
    const dot_t *d = ctx;
    size_t o0 = b * DOT_OC_CHUNK, o1 = e * DOT_OC_CHUNK < d->OC ? e * DOT_OC_CHUNK : d->OC;
#if PLAIT_HAVE_X86_SIMD
    if (d->simd) {
        dot_avx2(d, o0, o1);
        return;
    }
#endif
    dot_portable(d, o0, o1);
}

/* -------------------------------------------------------- public kernels */

void plait_matmul_forward(plait_pool_t *pool, float *out, const float *inp, const float *w,
                          size_t N, size_t IC, size_t OC, int accumulate)
{
    if (N == 0 || OC == 0) return;
    if (N < SMALL_N && IC >= DOT_MIN_IC) {
        dot_t d = {.out = out, .inp = inp, .w = w, .N = N, .IC = IC, .OC = OC,
                   .accumulate = accumulate, .simd = plait__tensor_simd_active()};
        size_t items = ceil_div(OC, DOT_OC_CHUNK);
        if (run_inline(N * IC * OC)) dot_task(&d, 0, items);
        else plait_pool_run(pool, dot_task, &d, items);
        return;
    }
    gemm_t g = {.c = out, .ldc = OC, .a = inp, .ars = IC, .acs = 1, .b = w, .ldb = IC,
                .btrans = 1, .M = N, .K = IC, .NN = OC, .accumulate = accumulate};
    gemm_run(pool, &g);
}

void plait_matmul_backward(plait_pool_t *pool, float *dinp, float *dw, const float *dout,
                           const float *inp, const float *w, size_t N, size_t IC, size_t OC)
{
    if (dinp) { /* dinp (N, IC) += dout (N, OC) · W (OC, IC) */
        gemm_t g = {.c = dinp, .ldc = IC, .a = dout, .ars = OC, .acs = 1, .b = w, .ldb = IC,
                    .btrans = 0, .M = N, .K = OC, .NN = IC, .accumulate = 1};
        gemm_run(pool, &g);
    }
    if (dw) { /* dw (OC, IC) += doutᵀ (OC, N) · inp (N, IC) */
        gemm_t g = {.c = dw, .ldc = IC, .a = dout, .ars = 1, .acs = OC, .b = inp, .ldb = IC,
                    .btrans = 0, .M = OC, .K = N, .NN = IC, .accumulate = 1};
        gemm_run(pool, &g);
    }
}
