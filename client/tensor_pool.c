/*
 * tensor_pool.c: the thread pool the kernels run on (plait_pool_*, tensor.h).
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
 */
#include "plait/tensor.h"

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
