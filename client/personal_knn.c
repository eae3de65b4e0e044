/*
 * personal_knn.c: step 5 of personal.h, the device's kNN memory of its own
 * text (knn.h) fitted and validated, and the held-out loss with it.
 *
 * T = window, V = vocabulary, C = hidden width, K = PLAIT_KNN_MAX_K.
 *
 * Every buffer that holds the device's text, hidden states of it or
 * probabilities computed from it is wiped before it is freed.
 */
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "personal_int.h"
#include "plait/crypto.h"
#include "plait/personal.h"
#include "plait/plait.h"

/* The grid fitted on validation. TAU_GRID multiplies the queries' mean spread of squared distances. */
static const int K_GRID[] = {4, 8, 16, 32, 64};
static const double TAU_GRID[] = {0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 16.0};
static const double LAMBDA_GRID[] = {0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.7};
#define N_OF(a) (sizeof(a) / sizeof((a)[0]))
/* Validation predictions the fit searches the memory for, at most (a device's cost per round). */
#define KNN_MAX_QUERIES 4096

/* log p_model(y) from one row of V logits, in double. */
static double log_prob(const float *lg, size_t V, int32_t y)
{
    float mx = lg[0];
    for (size_t v = 1; v < V; v++)
        if (lg[v] > mx) mx = lg[v];
    double z = 0.0;
    for (size_t v = 0; v < V; v++) z += exp((double)lg[v] - mx);
    return (double)lg[y] - mx - log(z);
}

/* -log((1 - lambda) p_model + lambda p_knn), with the model's part in log space so underflow cannot give inf. */
static double mix_loss(double lpm, double pk, double lambda)
{
    double p = (1.0 - lambda) * exp(lpm) + lambda * pk;
    return p > 0.0 ? -log(p) : -(lpm + log1p(-lambda));
}

int plait__personal_pred_losses(const plait_corpus_t *c, plait_trainer_t *tr, size_t max_windows, double **out,
                                size_t *n)
{
    *out = NULL;
    *n = 0;
    size_t T = (size_t)plait_train_seq_len(tr), V = plait_train_vocab_size(tr);
    plait__rows_t r;
    int rc = plait__rows_plan(&r, c, T, max_windows, 0);
    size_t cap = rc == 0 ? plait__rows_total(&r) : 0;
    float *logits = malloc(T * V * sizeof(float));
    double *l = malloc((cap ? cap : 1) * sizeof(double));
    if (rc == 0 && (!logits || !l)) rc = plait_fail(PLAIT_ENOMEM, "personal: validation losses");
    for (size_t k = 0; rc == 0 && k < r.use; k++) {
        size_t np;
        const int32_t *row = plait__rows_get(&r, k, &np);
        if ((rc = plait_train_eval_logits(tr, row, logits)) != 0) break;
        for (size_t t = 0; t < np; t++) l[(*n)++] = -log_prob(logits + t * V, V, row[t + 1]);
    }
    plait__rows_free(&r);
    if (logits) plait_zeroize(logits, T * V * sizeof(float));
    free(logits);
    if (rc != 0) {
        if (l) plait_zeroize(l, cap * sizeof(double));
        free(l);
        *n = 0;
        return rc;
    }
    *out = l;
    return 0;
}

double plait__personal_paired_se(const double *a, const double *b, size_t n, size_t W)
{
    if (W == 0) W = 1;
    size_t g = (n + W - 1) / W;
    if (g < 2) return INFINITY;
    double m = 0.0, ss = 0.0;
    for (size_t k = 0; k < g; k++) { /* Welford over the groups' mean differences */
        size_t e = (k + 1) * W < n ? (k + 1) * W : n;
        double d = 0.0;
        for (size_t i = k * W; i < e; i++) d += b[i] - a[i];
        d /= (double)(e - k * W);
        double dm = d - m;
        m += dm / (double)(k + 1);
        ss += dm * (d - m);
    }
    return sqrt(ss / (double)(g - 1) / (double)g);
}

double plait__personal_margin(const plait_personal_config_t *cfg, const double *a, const double *b, size_t n,
                              size_t W)
{
    if (!(cfg->guard_z > 0.0)) return cfg->min_gain;
    /* The larger of the windows' and the single predictions' standard errors: windows are the honest unit
     * (their predictions are correlated) but two or three of them can agree by chance. */
    double se = plait__personal_paired_se(a, b, n, W), s1 = plait__personal_paired_se(a, b, n, 1);
    return cfg->min_gain + cfg->guard_z * (se > s1 ? se : s1);
}

int plait_personal_eval_knn(const plait_corpus_t *c, plait_trainer_t *tr, const plait_knn_t *knn, size_t max_windows,
                            double *loss, size_t *n_tokens, double *losses, size_t cap, size_t *n_windows)
{
    if (!c || !tr || !knn || !loss) return plait_fail(PLAIT_EINVAL, "personal knn eval: bad arguments");
    size_t T = (size_t)plait_train_seq_len(tr), V = plait_train_vocab_size(tr), C = plait_train_dim(tr);
    if (knn->n > 0 && knn->C != C)
        return plait_fail(PLAIT_EMISMATCH, "personal knn eval: keys of %zu floats, the model's are %zu", knn->C, C);
    if (n_windows) *n_windows = 0;
    plait__rows_t r;
    int rc = plait__rows_plan(&r, c, T, max_windows, 0);
    float *logits = malloc(T * V * sizeof(float)), *hid = malloc(T * C * sizeof(float));
    if (rc == 0 && (!logits || !hid)) rc = plait_fail(PLAIT_ENOMEM, "personal knn eval: buffers");
    float d[PLAIT_KNN_MAX_K];
    int32_t y[PLAIT_KNN_MAX_K];
    double sum = 0.0, lam = knn->n > 0 ? knn->lambda : 0.0; /* an empty memory is off */
    size_t nt = 0, nl = 0;
    for (size_t k = 0; rc == 0 && k < r.use; k++) {
        size_t np;
        const int32_t *row = plait__rows_get(&r, k, &np);
        if ((rc = plait_train_eval_hidden(tr, row, logits, hid)) != 0) break;
        double ws = 0.0;
        for (size_t t = 0; t < np; t++) {
            double lpm = log_prob(logits + t * V, V, row[t + 1]), pk = 0.0;
            if (lam > 0.0) {
                size_t nn = plait_knn_search(knn, hid + t * C, (size_t)knn->k, d, y);
                pk = plait_knn_prob(d, y, nn, knn->tau, row[t + 1]);
            }
            ws += lam > 0.0 ? mix_loss(lpm, pk, lam) : -lpm;
        }
        if (!isfinite(ws)) rc = plait_fail(PLAIT_EPROTO, "personal knn eval: non-finite loss");
        sum += ws;
        nt += np;
        if (losses && nl < cap) losses[nl++] = ws / (double)np;
    }
    plait__rows_free(&r);
    plait_zeroize(d, sizeof(d));
    plait_zeroize(y, sizeof(y));
    if (logits) plait_zeroize(logits, T * V * sizeof(float));
    if (hid) plait_zeroize(hid, T * C * sizeof(float));
    free(logits);
    free(hid);
    if (rc != 0) return rc;
    *loss = sum / (double)nt;
    if (n_tokens) *n_tokens = nt;
    if (n_windows) *n_windows = nl;
    return 0;
}

/* The validation queries: per prediction its log p_model(target), target, and K nearest (d, y). */
typedef struct {
    size_t n, cap;
    double *lpm;
    int32_t *tgt;
    float *d;    /* (cap, K) */
    int32_t *y;  /* (cap, K) */
    size_t *r;   /* neighbours found */
    float *h;    /* (hcap, C) hidden states of the first hcap queries (those the memory has room for) */
    size_t hcap, C;
} queries_t;

static void queries_free(queries_t *q)
{
    if (q->lpm) plait_zeroize(q->lpm, q->cap * sizeof(double));
    if (q->tgt) plait_zeroize(q->tgt, q->cap * sizeof(int32_t));
    if (q->d) plait_zeroize(q->d, q->cap * PLAIT_KNN_MAX_K * sizeof(float));
    if (q->y) plait_zeroize(q->y, q->cap * PLAIT_KNN_MAX_K * sizeof(int32_t));
    free(q->lpm);
    free(q->tgt);
    free(q->d);
    free(q->y);
    free(q->r);
    if (q->h) plait_zeroize(q->h, (q->hcap ? q->hcap : 1) * q->C * sizeof(float));
    free(q->h);
    memset(q, 0, sizeof(*q));
}

int plait_personal_fit_knn(plait_trainer_t *tr, const plait_corpus_t *train, const plait_corpus_t *val,
                           const plait_personal_config_t *cfg, const float *bias, plait_knn_t *knn,
                           plait_personal_result_t *res)
{
    if (!tr || !train || !val || !knn || !res) return plait_fail(PLAIT_EINVAL, "personal knn: bad arguments");
    plait_knn_free(knn); /* every return below leaves no memory, or the kept one, and no logit bias */
    double before = res->bias ? res->val_bias : res->val_chosen;
    res->knn = 0;
    res->val_knn = before;
    res->knn_entries = 0;
    int rc = plait_train_set_logit_bias(tr, NULL);
    if (rc == 0) rc = plait_personal_config_validate(cfg);
    if (rc != 0 || cfg->knn_bytes == 0) return rc;
    size_t T = (size_t)plait_train_seq_len(tr), V = plait_train_vocab_size(tr), C = plait_train_dim(tr);
    size_t entry = (C + 2) * sizeof(float); /* key, norm, token */
    size_t room = cfg->knn_bytes / entry;
    if (room > PLAIT_KNN_MAX_ENTRIES) room = PLAIT_KNN_MAX_ENTRIES; /* a huge budget: the memory's own limit */
    size_t rows_room = room / T;
    if (room == 0) return 0;
    if ((rc = plait_train_set_logit_bias(tr, bias)) != 0) return rc;
    plait__rows_t rt, rv;
    memset(&rt, 0, sizeof(rt));
    memset(&rv, 0, sizeof(rv));
    queries_t q;
    memset(&q, 0, sizeof(q));
    q.C = C;
    float *logits = malloc(T * V * sizeof(float)), *hid = malloc(T * C * sizeof(float));
    double *pk = NULL;
    if (!logits || !hid) rc = plait_fail(PLAIT_ENOMEM, "personal knn: buffers");
    /* The memory: the training part's positions, whole windows thinned evenly to the room. */
    if (rc == 0) rc = plait__rows_plan(&rt, train, T, 0, rows_room ? rows_room : 1);
    if (rc == 0) { /* the validation positions join the memory once it is chosen */
        size_t want = plait__rows_total(&rt) + val->n;
        rc = plait_knn_setup(knn, C, want < room ? want : room);
    }
    for (size_t k = 0; rc == 0 && k < rt.use; k++) {
        size_t np;
        const int32_t *row = plait__rows_get(&rt, k, &np);
        if (cfg->stop && cfg->stop(cfg->stop_ud)) rc = plait_fail(PLAIT_ECANCELED, "personal knn: stopped");
        if (rc == 0) rc = plait_train_eval_hidden(tr, row, logits, hid);
        for (size_t t = 0; rc == 0 && t < np && knn->n < knn->cap; t++)
            rc = plait_knn_add(knn, hid + t * C, row[t + 1]);
    }
    plait__rows_free(&rt);
    /* The validation queries, each with its K nearest. */
    /* At most KNN_MAX_QUERIES of them (whole windows, thinned evenly): each searches the whole memory. */
    if (rc == 0) rc = plait__rows_plan(&rv, val, T, cfg->val_windows, KNN_MAX_QUERIES / T ? KNN_MAX_QUERIES / T : 1);
    int rv_all = rc == 0 && rv.use == (rv.pad ? 1 : rv.nw); /* the same predictions as res->val_chosen's */
    if (rc == 0) {
        q.cap = plait__rows_total(&rv);
        q.lpm = malloc(q.cap * sizeof(double));
        q.tgt = malloc(q.cap * sizeof(int32_t));
        q.d = malloc(q.cap * PLAIT_KNN_MAX_K * sizeof(float));
        q.y = malloc(q.cap * PLAIT_KNN_MAX_K * sizeof(int32_t));
        q.r = malloc(q.cap * sizeof(size_t));
        /* Hidden states only for the validation positions the memory has room left for. */
        q.hcap = knn->cap - knn->n < q.cap ? knn->cap - knn->n : q.cap;
        q.h = malloc((q.hcap ? q.hcap : 1) * C * sizeof(float));
        pk = malloc(q.cap * sizeof(double));
        if (!q.lpm || !q.tgt || !q.d || !q.y || !q.r || !q.h || !pk)
            rc = plait_fail(PLAIT_ENOMEM, "personal knn: validation queries");
    }
    for (size_t k = 0; rc == 0 && k < rv.use; k++) {
        size_t np;
        const int32_t *row = plait__rows_get(&rv, k, &np);
        if (cfg->stop && cfg->stop(cfg->stop_ud)) rc = plait_fail(PLAIT_ECANCELED, "personal knn: stopped");
        if (rc == 0) rc = plait_train_eval_hidden(tr, row, logits, hid);
        for (size_t t = 0; rc == 0 && t < np; t++, q.n++) {
            q.lpm[q.n] = log_prob(logits + t * V, V, row[t + 1]);
            q.tgt[q.n] = row[t + 1];
            if (q.n < q.hcap) memcpy(q.h + q.n * C, hid + t * C, C * sizeof(float));
            q.r[q.n] = plait_knn_search(knn, hid + t * C, PLAIT_KNN_MAX_K, q.d + q.n * PLAIT_KNN_MAX_K,
                                        q.y + q.n * PLAIT_KNN_MAX_K);
        }
    }
    plait__rows_free(&rv);
    /* The grid. The scale of tau: the mean spread d_15 - d_0 of the queries (d_(r-1) - d_0 with fewer). */
    double base = 0.0, spread = 0.0;
    for (size_t i = 0; rc == 0 && i < q.n; i++) {
        base -= q.lpm[i];
        size_t last = q.r[i] < 16 ? q.r[i] : 16;
        if (last > 0) spread += (double)q.d[i * PLAIT_KNN_MAX_K + last - 1] - (double)q.d[i * PLAIT_KNN_MAX_K];
    }
    if (rc == 0 && q.n == 0) rc = plait_fail(PLAIT_EINVAL, "personal knn: no validation prediction");
    spread = rc == 0 && spread > 0.0 ? spread / (double)q.n : 1.0;
    double best = rc == 0 ? base / (double)q.n : NAN; /* lambda 0, measured like the candidates */
    int bk = 0;
    double btau = 0.0, blam = 0.0;
    for (size_t a = 0; rc == 0 && a < N_OF(K_GRID); a++) {
        if (a > 0 && (size_t)K_GRID[a - 1] >= knn->n) break; /* a larger k finds no more entries */
        for (size_t b = 0; b < N_OF(TAU_GRID); b++) {
            double tau = TAU_GRID[b] * spread;
            for (size_t i = 0; i < q.n; i++) {
                size_t r = q.r[i] < (size_t)K_GRID[a] ? q.r[i] : (size_t)K_GRID[a];
                pk[i] = plait_knn_prob(q.d + i * PLAIT_KNN_MAX_K, q.y + i * PLAIT_KNN_MAX_K, r, tau, q.tgt[i]);
            }
            for (size_t c = 0; c < N_OF(LAMBDA_GRID); c++) {
                double s = 0.0;
                for (size_t i = 0; i < q.n; i++) s += mix_loss(q.lpm[i], pk[i], LAMBDA_GRID[c]);
                s /= (double)q.n;
                if (s < best) {
                    best = s;
                    bk = K_GRID[a];
                    btau = tau;
                    blam = LAMBDA_GRID[c];
                }
            }
        }
    }
    /* The chosen point's margin (min_gain and the guard) from its paired per-prediction validation losses. */
    double margin = INFINITY;
    if (rc == 0 && bk > 0) {
        double *lm = malloc(q.n * sizeof(double)), *lk = malloc(q.n * sizeof(double));
        if (!lm || !lk) rc = plait_fail(PLAIT_ENOMEM, "personal knn: validation losses");
        for (size_t i = 0; rc == 0 && i < q.n; i++) {
            size_t r = q.r[i] < (size_t)bk ? q.r[i] : (size_t)bk;
            lm[i] = -q.lpm[i];
            lk[i] = mix_loss(q.lpm[i],
                             plait_knn_prob(q.d + i * PLAIT_KNN_MAX_K, q.y + i * PLAIT_KNN_MAX_K, r, btau, q.tgt[i]),
                             blam);
        }
        if (rc == 0) margin = plait__personal_margin(cfg, lm, lk, q.n, T);
        if (lm) plait_zeroize(lm, q.n * sizeof(double));
        if (lk) plait_zeroize(lk, q.n * sizeof(double));
        free(lm);
        free(lk);
    }
    /* Kept only where it beats what the device serves without it, on the same validation predictions. */
    if (rc == 0 && bk > 0 && best < fmin(rv_all ? before : INFINITY, base / (double)q.n) - margin) {
        knn->k = bk;
        knn->tau = btau;
        knn->lambda = blam;
        res->knn = 1;
        res->val_knn = best;
        /* Chosen: the validation positions join the memory the device serves. */
        for (size_t i = 0; rc == 0 && i < q.n && i < q.hcap && knn->n < knn->cap; i++)
            rc = plait_knn_add(knn, q.h + i * C, q.tgt[i]);
        res->knn_entries = knn->n;
    } else {
        plait_knn_free(knn);
    }
    if (plait_train_set_logit_bias(tr, NULL) != 0 && rc == 0) rc = PLAIT_EINVAL; /* cannot fail: NULL */
    if (pk) plait_zeroize(pk, q.cap * sizeof(double));
    free(pk);
    queries_free(&q);
    if (logits) plait_zeroize(logits, T * V * sizeof(float));
    if (hid) plait_zeroize(hid, T * C * sizeof(float));
    free(logits);
    free(hid);
    if (rc != 0) {
        plait_knn_free(knn);
        res->knn = 0;
        res->val_knn = before;
        res->knn_entries = 0;
    }
    return rc;
}
