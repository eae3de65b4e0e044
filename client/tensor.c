/*
 * tensor.c: the thread pool and the matmul kernels.
 *
 * The pool is a fixed set of workers that run one job at a time: the caller
 * splits [0, n) into one contiguous chunk per thread, runs the first chunk
 * itself and waits for the rest. Jobs are short (one matmul), so the design
 * favours low dispatch latency over generality.
 *
 * Plain reference kernels (*_ref) define the contract; the optimized ones
 * must agree with them (tests/unit/check_tensor.c).
 */
#include "plait/tensor.h"
#include "tensor_int.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

struct plait_pool_s {
    int n;                  /* threads including the caller */
    pthread_t *threads;     /* n - 1 workers */
    pthread_mutex_t mu;
    pthread_cond_t cv_work; /* a new job (generation bumped) or stop */
    pthread_cond_t cv_done; /* a worker finished its chunk */
    unsigned long gen;
    int pending;            /* workers still running the current job */
    int stop;
    plait_pool_fn fn;
    void *ctx;
    size_t total;
};

typedef struct {
    plait_pool_t *p;
    int idx;
} worker_arg_t;

static void chunk(size_t total, int n, int idx, size_t *b, size_t *e)
{
    size_t base = total / (size_t)n, rem = total % (size_t)n, i = (size_t)idx;
    *b = i * base + (i < rem ? i : rem);
    *e = *b + base + (i < rem ? 1 : 0);
}

static void *worker(void *arg)
{
    worker_arg_t *wa = arg;
    plait_pool_t *p = wa->p;
    int idx = wa->idx;
    free(wa);
    unsigned long seen = 0;
    pthread_mutex_lock(&p->mu);
    for (;;) {
        while (!p->stop && p->gen == seen) pthread_cond_wait(&p->cv_work, &p->mu);
        if (p->stop) break;
        seen = p->gen;
        plait_pool_fn fn = p->fn;
        void *ctx = p->ctx;
        size_t b, e;
        chunk(p->total, p->n, idx, &b, &e);
        pthread_mutex_unlock(&p->mu);
        if (b < e) fn(ctx, b, e);
        pthread_mutex_lock(&p->mu);
        if (--p->pending == 0) pthread_cond_signal(&p->cv_done);
    }
    pthread_mutex_unlock(&p->mu);
    return NULL;
}

int plait_pool_create(plait_pool_t **out, int n)
{
    *out = NULL;
    if (n < 1 || n > 256) return plait_fail(PLAIT_EINVAL, "thread count %d is outside 1..256", n);
    plait_pool_t *p = calloc(1, sizeof(*p));
    if (!p) return PLAIT_ENOMEM;
    p->n = n;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->cv_work, NULL);
    pthread_cond_init(&p->cv_done, NULL);
    if (n > 1) {
        p->threads = calloc((size_t)n - 1, sizeof(pthread_t));
        if (!p->threads) { plait_pool_destroy(p); return PLAIT_ENOMEM; }
    }
    for (int i = 1; i < n; i++) {
        worker_arg_t *wa = malloc(sizeof(*wa));
        if (!wa) { p->n = i; plait_pool_destroy(p); return PLAIT_ENOMEM; }
        wa->p = p;
        wa->idx = i;
        if (pthread_create(&p->threads[i - 1], NULL, worker, wa) != 0) {
            free(wa);
            p->n = i;
            plait_pool_destroy(p);
            return plait_fail(PLAIT_ENOMEM, "cannot start worker thread %d", i);
        }
    }
    *out = p;
    return 0;
}

void plait_pool_destroy(plait_pool_t *p)
{
    if (!p) return;
    pthread_mutex_lock(&p->mu);
    p->stop = 1;
    pthread_cond_broadcast(&p->cv_work);
    pthread_mutex_unlock(&p->mu);
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
    pthread_mutex_lock(&p->mu);
    p->fn = fn;
    p->ctx = ctx;
    p->total = n;
    p->pending = p->n - 1;
    p->gen++;
    pthread_cond_broadcast(&p->cv_work);
    pthread_mutex_unlock(&p->mu);
    size_t b, e;
    chunk(n, p->n, 0, &b, &e);
    if (b < e) fn(ctx, b, e);
    pthread_mutex_lock(&p->mu);
    while (p->pending > 0) pthread_cond_wait(&p->cv_done, &p->mu);
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

typedef struct {
    float *out, *dinp, *dw;
    const float *inp, *w, *dout;
    size_t N, IC, OC;
    int accumulate;
} mm_job_t;

/* Rows [b, e) of out. The inner loop is a dot product the compiler vectorizes. */
static void mm_fwd_rows(void *ctx, size_t b, size_t e)
{
    mm_job_t *j = ctx;
    size_t IC = j->IC, OC = j->OC;
    for (size_t n = b; n < e; n++) {
        const float *x = j->inp + n * IC;
        float *y = j->out + n * OC;
        for (size_t o = 0; o < OC; o++) {
            const float *wr = j->w + o * IC;
            float s = 0.0f;
            for (size_t i = 0; i < IC; i++) s += x[i] * wr[i];
            y[o] = j->accumulate ? y[o] + s : s;
        }
    }
}

void plait_matmul_forward(plait_pool_t *pool, float *out, const float *inp, const float *w,
                          size_t N, size_t IC, size_t OC, int accumulate)
{
    mm_job_t j = {.out = out, .inp = inp, .w = w, .N = N, .IC = IC, .OC = OC, .accumulate = accumulate};
    plait_pool_run(pool, mm_fwd_rows, &j, N);
}

static void mm_bwd_dinp_rows(void *ctx, size_t b, size_t e)
{
    mm_job_t *j = ctx;
    size_t IC = j->IC, OC = j->OC;
    for (size_t n = b; n < e; n++) {
        float *dx = j->dinp + n * IC;
        const float *dy = j->dout + n * OC;
        for (size_t o = 0; o < OC; o++) {
            float g = dy[o];
            const float *wr = j->w + o * IC;
            for (size_t i = 0; i < IC; i++) dx[i] += g * wr[i];
        }
    }
}

static void mm_bwd_dw_rows(void *ctx, size_t b, size_t e)
{
    mm_job_t *j = ctx;
    size_t IC = j->IC, OC = j->OC;
    for (size_t o = b; o < e; o++) {
        float *dwr = j->dw + o * IC;
        for (size_t n = 0; n < j->N; n++) {
            float g = j->dout[n * OC + o];
            const float *x = j->inp + n * IC;
            for (size_t i = 0; i < IC; i++) dwr[i] += g * x[i];
        }
    }
}

void plait_matmul_backward(plait_pool_t *pool, float *dinp, float *dw, const float *dout,
                           const float *inp, const float *w, size_t N, size_t IC, size_t OC)
{
    mm_job_t j = {.dinp = dinp, .dw = dw, .dout = dout, .inp = inp, .w = w, .N = N, .IC = IC, .OC = OC};
    if (dinp) plait_pool_run(pool, mm_bwd_dinp_rows, &j, N);
    if (dw) plait_pool_run(pool, mm_bwd_dw_rows, &j, OC);
}

/* Only one (portable) path exists so far; the switch is a no-op. */
void plait__tensor_force_scalar(int on) { (void)on; }
int plait__tensor_simd_active(void) { return 0; }
