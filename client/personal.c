/*
 * personal.c: validated personalization (personal.h): the device-local
 * validation split, early-stopped fine-tuning from a reference adapter with
 * an optional Ditto proximal term, and the choice among the reference, the
 * fine-tuned adapter and their interpolations, never worse than the
 * reference on validation; then the personal output bias on top of the
 * chosen adapter (a convex fit on its frozen next-token probabilities).
 * The kNN memory (step 5) is in personal_knn.c.
 *
 * Contract: plait_personal_fit leaves lora->params equal to the chosen
 * adapter, bit for bit one of the candidates it evaluated, and
 * res->val_chosen <= res->val_global; plait_personal_fit_bias returns a
 * bias only when res->val_bias < res->val_chosen - min_gain - the guard
 * (guard_z standard errors), else zeros.
 * Every buffer is wiped before it is freed (adapters trained on private
 * text, the text itself, and the probabilities and bias derived from it).
 */
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "personal_int.h"
#include "plait/crypto.h"
#include "plait/personal.h"
#include "plait/plait.h"

/* The interpolation grid (APFL-style): a of (1 - a) ref + a personal. */
static const double MIX_GRID[] = {0.25, 0.5, 0.75};
#define N_MIX (sizeof(MIX_GRID) / sizeof(MIX_GRID[0]))

plait_personal_config_t plait_personal_config_default(void)
{
    plait_personal_config_t c;
    memset(&c, 0, sizeof(c));
    c.val_fraction = 0.15;
    c.max_steps = 40;
    c.eval_every = 5;
    c.patience = 2;
    c.prox_lambda = 0.0;
    c.val_windows = 0;
    c.min_gain = 0.0;
    c.seed = 0;
    c.bias_steps = 100;
    c.bias_lr = 0.05;
    c.bias_l2 = 3e-3;
    c.bias_bytes = (size_t)32 << 20;
    c.knn_bytes = (size_t)8 << 20;
    c.guard_z = 2.0;
    return c;
}

int plait_personal_config_validate(const plait_personal_config_t *c)
{
    if (!c) return plait_fail(PLAIT_EINVAL, "personal: NULL config");
    if (!(c->val_fraction >= 0.05 && c->val_fraction <= 0.5))
        return plait_fail(PLAIT_EINVAL, "personal: val_fraction %g is outside 0.05..0.5", c->val_fraction);
    if (c->max_steps < 1 || c->max_steps > 1000000)
        return plait_fail(PLAIT_EINVAL, "personal: max_steps %d is outside 1..1000000", c->max_steps);
    if (c->eval_every < 1) return plait_fail(PLAIT_EINVAL, "personal: eval_every %d < 1", c->eval_every);
    if (c->patience < 0) return plait_fail(PLAIT_EINVAL, "personal: patience %d < 0", c->patience);
    if (!(c->prox_lambda >= 0.0) || !isfinite(c->prox_lambda))
        return plait_fail(PLAIT_EINVAL, "personal: prox_lambda must be finite and >= 0");
    if (!(c->min_gain >= 0.0) || !isfinite(c->min_gain))
        return plait_fail(PLAIT_EINVAL, "personal: min_gain must be finite and >= 0");
    if (c->bias_steps < 0 || c->bias_steps > 1000000)
        return plait_fail(PLAIT_EINVAL, "personal: bias_steps %d is outside 0..1000000", c->bias_steps);
    if (!(c->bias_lr > 0.0) || !isfinite(c->bias_lr) || c->bias_lr > 10.0)
        return plait_fail(PLAIT_EINVAL, "personal: bias_lr %g is outside (0, 10]", c->bias_lr);
    if (!(c->bias_l2 >= 0.0) || !isfinite(c->bias_l2))
        return plait_fail(PLAIT_EINVAL, "personal: bias_l2 must be finite and >= 0");
    if (!(c->guard_z >= 0.0 && c->guard_z <= 100.0))
        return plait_fail(PLAIT_EINVAL, "personal: guard_z %g is outside 0..100", c->guard_z);
    if (c->bias_bytes < ((size_t)1 << 20))
        return plait_fail(PLAIT_EINVAL, "personal: bias_bytes %zu is under 1 MiB", c->bias_bytes);
    return 0;
}

const char *plait_personal_kind_name(plait_personal_kind_t k)
{
    switch (k) {
    case PLAIT_PERSONAL_GLOBAL: return "global";
    case PLAIT_PERSONAL_OWN: return "personal";
    case PLAIT_PERSONAL_MIX: return "mix";
    }
    return "?";
}

/* Replace c with a copy of n tokens. */
static int corpus_set(plait_corpus_t *c, const int32_t *tok, size_t n)
{
    int32_t *t = malloc((n ? n : 1) * sizeof(int32_t));
    if (!t) return plait_fail(PLAIT_ENOMEM, "personal: %zu tokens", n);
    memcpy(t, tok, n * sizeof(int32_t));
    plait_corpus_free(c);
    c->tokens = t;
    c->n = c->cap = n;
    return 0;
}

int plait_personal_split(const plait_corpus_t *all, double frac, int T, plait_corpus_t *train, plait_corpus_t *val)
{
    if (!all || !train || !val || T < 1) return plait_fail(PLAIT_EINVAL, "personal split: bad arguments");
    if (!(frac >= 0.05 && frac <= 0.5)) return plait_fail(PLAIT_EINVAL, "personal split: fraction %g", frac);
    size_t n = all->n;
    if (n < 4) return plait_fail(PLAIT_EINVAL, "personal split: %zu tokens are too few to validate", n);
    size_t v = (size_t)ceil(frac * (double)n);
    size_t want = (size_t)T + 1 < n / 2 ? (size_t)T + 1 : n / 2; /* one window when the text has two */
    if (v < want) v = want;
    if (v < 2) v = 2;
    if (v > n / 2) v = n / 2;
    int rc = corpus_set(train, all->tokens, n - v);
    if (rc == 0) rc = corpus_set(val, all->tokens + (n - v), v);
    return rc;
}

int plait_personal_fill(plait_corpus_t *c, int T)
{
    if (!c || T < 1) return plait_fail(PLAIT_EINVAL, "personal fill: bad arguments");
    size_t W = (size_t)T + 1, n = c->n;
    if (n >= W) return 0;
    if (n == 0) return plait_fail(PLAIT_EINVAL, "personal fill: empty corpus");
    int32_t *t = malloc(W * sizeof(int32_t));
    if (!t) return plait_fail(PLAIT_ENOMEM, "personal fill: %zu tokens", W);
    for (size_t i = 0; i < W; i++) t[i] = c->tokens[i % n];
    size_t rec = c->n_records;
    plait_corpus_free(c);
    c->tokens = t;
    c->n = c->cap = W;
    c->n_records = rec;
    return 0;
}

int plait_personal_eval(const plait_corpus_t *c, plait_trainer_t *tr, size_t max_windows, double *loss,
                        size_t *n_tokens)
{
    if (!c || !tr || !loss) return plait_fail(PLAIT_EINVAL, "personal eval: bad arguments");
    int T = plait_train_seq_len(tr);
    if (c->n >= (size_t)T + 1) return plait_corpus_eval(c, tr, T, max_windows, loss, n_tokens);
    if (c->n < 2) return plait_fail(PLAIT_EINVAL, "personal eval: %zu tokens hold no prediction", c->n);
    size_t W = (size_t)T + 1;
    int32_t *row = malloc(W * sizeof(int32_t));
    if (!row) return plait_fail(PLAIT_ENOMEM, "personal eval: one window");
    /* Pad with the text's own last token: any valid id will do, causality hides it. */
    for (size_t i = 0; i < W; i++) row[i] = c->tokens[i < c->n ? i : c->n - 1];
    double sum = 0;
    int rc = plait_train_eval_prefix(tr, row, c->n - 1, &sum);
    plait_zeroize(row, W * sizeof(int32_t));
    free(row);
    if (rc != 0) return rc;
    *loss = sum / (double)(c->n - 1);
    if (n_tokens) *n_tokens = c->n - 1;
    return 0;
}

int plait_personal_eval_windows(const plait_corpus_t *c, plait_trainer_t *tr, size_t max_windows, double *losses,
                                size_t cap, size_t *n_windows)
{
    if (!c || !tr || !losses || cap == 0 || !n_windows) return plait_fail(PLAIT_EINVAL, "personal eval: bad arguments");
    *n_windows = 0;
    size_t T = (size_t)plait_train_seq_len(tr);
    if (c->n < T + 1) {
        size_t nt = 0;
        int rc = plait_personal_eval(c, tr, 0, &losses[0], &nt);
        if (rc == 0) *n_windows = 1;
        return rc;
    }
    size_t nw = plait_corpus_n_windows(c, (int)T);
    if (max_windows && nw > max_windows) nw = max_windows;
    if (nw > cap) nw = cap;
    for (size_t w = 0; w < nw; w++) {
        float l;
        int rc = plait_train_eval_loss(tr, c->tokens + w * T, 1, &l);
        if (rc != 0) return rc;
        if (!isfinite(l)) return plait_fail(PLAIT_EPROTO, "personal eval: non-finite loss on window %zu", w);
        losses[w] = (double)l;
    }
    *n_windows = nw;
    return 0;
}

int plait_personal_fit(plait_trainer_t *tr, plait_lora_t *lora, const float *ref, const plait_corpus_t *train,
                       const plait_corpus_t *val, const plait_personal_config_t *cfg, plait_personal_result_t *res)
{
    if (!tr || !lora || !ref || !train || !val || !res || ref == lora->params)
        return plait_fail(PLAIT_EINVAL, "personal fit: bad arguments");
    int rc = plait_personal_config_validate(cfg);
    if (rc != 0) return rc;
    int B = plait_train_batch_size(tr), T = plait_train_seq_len(tr);
    if (train->n < (size_t)T + 1)
        return plait_fail(PLAIT_EINVAL, "personal fit: %zu training tokens, fewer than one window of %d", train->n,
                          T + 1);
    memset(res, 0, sizeof(*res));
    res->train_loss = NAN;
    size_t np = lora->n_params, bytes = np * sizeof(float);
    float *best = malloc(bytes ? bytes : 1);
    int32_t *batch = malloc((size_t)B * ((size_t)T + 1) * sizeof(int32_t));
    if (!best || !batch) {
        free(best);
        free(batch);
        return plait_fail(PLAIT_ENOMEM, "personal fit: buffers");
    }
    memcpy(lora->params, ref, bytes);
    memcpy(best, ref, bytes);
    double vbest = NAN, v;
    size_t vt = 0;
    rc = plait_personal_eval(val, tr, cfg->val_windows, &vbest, &vt);
    res->val_global = vbest;
    res->val_tokens = vt;
    /* Fine-tune, keeping the best validated step. */
    plait_train_reset(tr);
    if (rc == 0) rc = plait_train_set_prox(tr, ref, cfg->prox_lambda);
    uint64_t st = cfg->seed;
    int since = 0;
    for (int k = 1; rc == 0 && k <= cfg->max_steps; k++) {
        if (cfg->stop && cfg->stop(cfg->stop_ud)) {
            rc = plait_fail(PLAIT_ECANCELED, "personal fit: stopped at step %d", k);
            break;
        }
        if ((rc = plait_corpus_sample(train, B, T, &st, batch)) != 0) break;
        float tl;
        if ((rc = plait_train_forward_backward(tr, batch, &tl)) != 0) break;
        if ((rc = plait_train_step(tr)) != 0) break;
        res->steps = k;
        res->train_loss = tl;
        if (k % cfg->eval_every != 0 && k != cfg->max_steps) continue;
        if ((rc = plait_personal_eval(val, tr, cfg->val_windows, &v, NULL)) != 0) break;
        if (v < vbest) {
            vbest = v;
            res->best_step = k;
            memcpy(best, lora->params, bytes);
            since = 0;
        } else if (cfg->patience > 0 && ++since >= cfg->patience) {
            break;
        }
    }
    if (plait_train_set_prox(tr, NULL, 0.0) != 0 && rc == 0) rc = PLAIT_EINVAL; /* cannot fail: lambda 0 */
    plait_train_reset(tr);
    res->val_personal = vbest;
    /* Choose: the reference unless a candidate beats it by more than min_gain. */
    res->kind = PLAIT_PERSONAL_GLOBAL;
    res->mix = 0.0;
    res->val_chosen = res->val_global;
    double cut = res->val_global - cfg->min_gain, cand_best = INFINITY;
    double pick = 0.0;
    if (rc == 0 && res->best_step > 0) {
        cand_best = res->val_personal;
        pick = 1.0;
        for (size_t m = 0; m < N_MIX && rc == 0; m++) {
            if (cfg->stop && cfg->stop(cfg->stop_ud)) {
                rc = plait_fail(PLAIT_ECANCELED, "personal fit: stopped while choosing the mix");
                break;
            }
            double a = MIX_GRID[m];
            for (size_t i = 0; i < np; i++) lora->params[i] = (float)((1.0 - a) * (double)ref[i] + a * (double)best[i]);
            if ((rc = plait_personal_eval(val, tr, cfg->val_windows, &v, NULL)) != 0) break;
            if (v < cand_best) {
                cand_best = v;
                pick = a;
            }
        }
    }
    if (rc == 0 && cand_best < cut && cfg->guard_z > 0) {
        /* The guard: the gain must also exceed guard_z paired standard errors of the per-prediction losses. */
        double *lr = NULL, *lc = NULL;
        size_t nr = 0, nc = 0;
        memcpy(lora->params, ref, bytes);
        rc = plait__personal_pred_losses(val, tr, cfg->val_windows, &lr, &nr);
        if (pick == 1.0) memcpy(lora->params, best, bytes);
        else
            for (size_t i = 0; i < np; i++)
                lora->params[i] = (float)((1.0 - pick) * (double)ref[i] + pick * (double)best[i]);
        if (rc == 0) rc = plait__personal_pred_losses(val, tr, cfg->val_windows, &lc, &nc);
        if (rc == 0 && (nr != nc || res->val_global - cand_best <= plait__personal_margin(cfg, lr, lc, nr, (size_t)T)))
            cand_best = INFINITY; /* within the noise of a small validation tail: the reference */
        if (lr) plait_zeroize(lr, nr * sizeof(double));
        if (lc) plait_zeroize(lc, nc * sizeof(double));
        free(lr);
        free(lc);
    }
    if (rc == 0 && cand_best < cut) {
        res->kind = pick == 1.0 ? PLAIT_PERSONAL_OWN : PLAIT_PERSONAL_MIX;
        res->mix = pick;
        res->val_chosen = cand_best;
        if (pick == 1.0) memcpy(lora->params, best, bytes);
        else
            for (size_t i = 0; i < np; i++)
                lora->params[i] = (float)((1.0 - pick) * (double)ref[i] + pick * (double)best[i]);
    } else {
        memcpy(lora->params, ref, bytes);
    }
    plait_zeroize(best, bytes);
    plait_zeroize(batch, (size_t)B * ((size_t)T + 1) * sizeof(int32_t));
    free(best);
    free(batch);
    return rc;
}

/* ------------------------------------------------------------ output bias */

double plait_personal_bias_objective(const float *prob, const int32_t *y, size_t n, size_t V, const float *b,
                                     double l2, float *grad)
{
    if (!prob || !y || !b || n == 0 || V == 0) return NAN;
    double *eb = malloc(V * sizeof(double)), *acc = calloc(V, sizeof(double)), *hit = calloc(V, sizeof(double));
    if (!eb || !acc || !hit) {
        free(eb);
        free(acc);
        free(hit);
        return NAN;
    }
    /* softmax(log p + b) = p e^(b - bmax) / sum: shifting b by its maximum keeps e^b <= 1. */
    double bmax = -INFINITY, reg = 0.0, sum = 0.0;
    for (size_t v = 0; v < V; v++) {
        if (b[v] > bmax) bmax = b[v];
        reg += (double)b[v] * (double)b[v];
    }
    for (size_t v = 0; v < V; v++) eb[v] = exp((double)b[v] - bmax);
    for (size_t i = 0; i < n && isfinite(sum); i++) {
        const float *p = prob + i * V;
        if (y[i] < 0 || (size_t)y[i] >= V) {
            sum = NAN;
            break;
        }
        double z = 0.0;
        for (size_t v = 0; v < V; v++) z += (double)p[v] * eb[v];
        double py = (double)p[y[i]] * eb[y[i]];
        /* A target the model gives probability 0 (underflow) costs as much as the smallest float would. */
        sum += -log((py > 0 ? py : (double)FLT_MIN * eb[y[i]]) / z);
        if (grad) {
            double iz = 1.0 / z;
            for (size_t v = 0; v < V; v++) acc[v] += (double)p[v] * iz;
            hit[y[i]] += 1.0;
        }
    }
    double J = sum / (double)n + 0.5 * l2 * reg;
    if (grad)
        for (size_t v = 0; v < V; v++)
            grad[v] = (float)((acc[v] * eb[v] - hit[v]) / (double)n + l2 * (double)b[v]);
    plait_zeroize(acc, V * sizeof(double)); /* sums over the device's own predictions */
    plait_zeroize(hit, V * sizeof(double));
    free(eb);
    free(acc);
    free(hit);
    return J;
}

/* Frozen predictions of the trainer's adapter: prob (n, V) softmax rows and y (n) targets. */
typedef struct {
    float *prob;
    int32_t *y;
    size_t n, cap;
} frozen_t;

static void frozen_free(frozen_t *f, size_t V)
{
    if (f->prob) plait_zeroize(f->prob, f->cap * V * sizeof(float));
    if (f->y) plait_zeroize(f->y, f->cap * sizeof(int32_t));
    free(f->prob);
    free(f->y);
    memset(f, 0, sizeof(*f));
}

/* Append the first n_pred predictions of one row of T + 1 tokens (logits scratch (T, V)). */
static int frozen_row(frozen_t *f, plait_trainer_t *tr, const int32_t *row, size_t n_pred, float *logits)
{
    size_t V = plait_train_vocab_size(tr);
    int rc = plait_train_eval_logits(tr, row, logits);
    for (size_t t = 0; rc == 0 && t < n_pred && f->n < f->cap; t++) {
        const float *lg = logits + t * V;
        float *p = f->prob + f->n * V;
        float mx = lg[0];
        for (size_t v = 1; v < V; v++)
            if (lg[v] > mx) mx = lg[v];
        double z = 0.0;
        for (size_t v = 0; v < V; v++) z += (double)(p[v] = expf(lg[v] - mx));
        float iz = (float)(1.0 / z);
        for (size_t v = 0; v < V; v++) p[v] *= iz;
        f->y[f->n++] = row[t + 1];
    }
    return rc;
}

/* ---- the rows plait_personal_eval scores (personal_int.h; also the kNN fit's) ---- */

int plait__rows_plan(plait__rows_t *r, const plait_corpus_t *c, size_t T, size_t max_windows, size_t max_rows)
{
    memset(r, 0, sizeof(*r));
    r->c = c;
    r->T = T;
    if (c->n < 2) return plait_fail(PLAIT_EINVAL, "personal: a text too short to hold a prediction");
    if (c->n >= T + 1) {
        r->nw = plait_corpus_n_windows(c, (int)T);
        if (max_windows && r->nw > max_windows) r->nw = max_windows;
        r->use = max_rows && r->nw > max_rows ? max_rows : r->nw;
        return 0;
    }
    r->pad = malloc((T + 1) * sizeof(int32_t));
    if (!r->pad) return plait_fail(PLAIT_ENOMEM, "personal: one window");
    for (size_t i = 0; i <= T; i++) r->pad[i] = c->tokens[i < c->n ? i : c->n - 1];
    r->use = 1;
    r->n_pred = c->n - 1;
    return 0;
}

const int32_t *plait__rows_get(const plait__rows_t *r, size_t k, size_t *n_pred)
{
    if (r->pad) {
        *n_pred = r->n_pred;
        return r->pad;
    }
    *n_pred = r->T;
    size_t w = r->use == r->nw ? k : k * r->nw / r->use; /* evenly spread when thinned */
    return r->c->tokens + w * r->T;
}

size_t plait__rows_total(const plait__rows_t *r)
{
    return r->pad ? r->n_pred : r->use * r->T;
}

void plait__rows_free(plait__rows_t *r)
{
    if (r->pad) plait_zeroize(r->pad, (r->T + 1) * sizeof(int32_t));
    free(r->pad);
    r->pad = NULL;
}

/* The predictions plait_personal_eval scores on c (at most max_windows windows, or one partial window),
 * thinned evenly to at most cap of them (whole windows; under one window, the first cap predictions of one). */
static int frozen_collect(frozen_t *f, plait_trainer_t *tr, const plait_corpus_t *c, size_t max_windows, size_t cap,
                          float *logits)
{
    size_t T = (size_t)plait_train_seq_len(tr), V = plait_train_vocab_size(tr);
    if (cap == 0) return plait_fail(PLAIT_EINVAL, "personal bias: no budget for a prediction (bias_bytes)");
    plait__rows_t r;
    int rc = plait__rows_plan(&r, c, T, max_windows, cap / T ? cap / T : 1);
    if (rc != 0) return rc;
    size_t total = plait__rows_total(&r);
    f->cap = total < cap ? total : cap;
    f->n = 0;
    f->prob = malloc(f->cap * V * sizeof(float));
    f->y = malloc(f->cap * sizeof(int32_t));
    if (!f->prob || !f->y) rc = plait_fail(PLAIT_ENOMEM, "personal bias: its predictions");
    for (size_t k = 0; rc == 0 && k < r.use; k++) {
        size_t np;
        const int32_t *row = plait__rows_get(&r, k, &np);
        rc = frozen_row(f, tr, row, np, logits);
    }
    plait__rows_free(&r);
    return rc;
}

int plait_personal_fit_bias(plait_trainer_t *tr, const plait_corpus_t *train, const plait_corpus_t *val,
                            const plait_personal_config_t *cfg, float *bias, plait_personal_result_t *res)
{
    if (!tr || !train || !val || !bias || !res) return plait_fail(PLAIT_EINVAL, "personal bias: bad arguments");
    int rc = plait_personal_config_validate(cfg);
    if (rc != 0) return rc;
    size_t V = plait_train_vocab_size(tr), T = (size_t)plait_train_seq_len(tr);
    memset(bias, 0, V * sizeof(float));
    res->bias = 0;
    res->bias_step = 0;
    res->val_bias = res->val_chosen;
    if (cfg->bias_steps == 0) return 0;
    if ((rc = plait_train_set_logit_bias(tr, NULL)) != 0) return rc;
    size_t rows = cfg->bias_bytes / (V * sizeof(float)); /* the budget, validation first */
    frozen_t ft = {0}, fv = {0};
    float *logits = malloc(T * V * sizeof(float));
    double *m = calloc(V, sizeof(double)), *s2 = calloc(V, sizeof(double));
    float *b = calloc(V, sizeof(float)), *g = malloc(V * sizeof(float)), *best = calloc(V, sizeof(float));
    if (!logits || !m || !s2 || !b || !g || !best) rc = plait_fail(PLAIT_ENOMEM, "personal bias: buffers");
    if (rc == 0) rc = frozen_collect(&fv, tr, val, cfg->val_windows, rows / 2, logits);
    if (rc == 0) rc = frozen_collect(&ft, tr, train, 0, rows - fv.n, logits);
    /* Full-batch Adam on the convex objective; the best validated step is kept. */
    double vbest = rc == 0 ? plait_personal_bias_objective(fv.prob, fv.y, fv.n, V, b, 0.0, NULL) : NAN;
    const double b1 = 0.9, b2 = 0.999, eps = 1e-8;
    for (int k = 1; rc == 0 && k <= cfg->bias_steps; k++) {
        if (cfg->stop && cfg->stop(cfg->stop_ud)) {
            rc = plait_fail(PLAIT_ECANCELED, "personal bias: stopped at step %d", k);
            break;
        }
        if (!isfinite(plait_personal_bias_objective(ft.prob, ft.y, ft.n, V, b, cfg->bias_l2, g))) {
            rc = plait_fail(PLAIT_EPROTO, "personal bias: non-finite objective at step %d", k);
            break;
        }
        double c1 = 1.0 - pow(b1, k), c2 = 1.0 - pow(b2, k);
        for (size_t v = 0; v < V; v++) {
            m[v] = b1 * m[v] + (1.0 - b1) * g[v];
            s2[v] = b2 * s2[v] + (1.0 - b2) * (double)g[v] * g[v];
            b[v] = (float)(b[v] - cfg->bias_lr * (m[v] / c1) / (sqrt(s2[v] / c2) + eps));
        }
        if (k % cfg->eval_every != 0 && k != cfg->bias_steps) continue;
        double vl = plait_personal_bias_objective(fv.prob, fv.y, fv.n, V, b, 0.0, NULL);
        if (vl < vbest) {
            vbest = vl;
            res->bias_step = k;
            memcpy(best, b, V * sizeof(float));
        }
    }
    /* Keep it only where it beats the chosen adapter on validation, measured as plait_personal_eval does. */
    if (rc == 0 && res->bias_step > 0) {
        double vb = NAN;
        rc = plait_train_set_logit_bias(tr, best);
        if (rc == 0) rc = plait_personal_eval(val, tr, cfg->val_windows, &vb, NULL);
        if (plait_train_set_logit_bias(tr, NULL) != 0 && rc == 0) rc = PLAIT_EINVAL; /* cannot fail: NULL */
        /* The margin: min_gain and the guard, from the paired per-prediction losses on the frozen validation rows
         * (windows of T, or one partial window), without and with the bias. */
        double margin = INFINITY, *la = malloc(fv.n * sizeof(double)), *lb = malloc(fv.n * sizeof(double));
        if (rc == 0 && (!la || !lb)) rc = plait_fail(PLAIT_ENOMEM, "personal bias: validation losses");
        for (size_t i = 0; rc == 0 && i < fv.n; i++) {
            const float *p = fv.prob + i * V;
            double z = 0.0;
            for (size_t v = 0; v < V; v++) z += (double)p[v] * exp((double)best[v]);
            double py = p[fv.y[i]] > 0 ? (double)p[fv.y[i]] : (double)FLT_MIN;
            la[i] = -log(py);
            lb[i] = -(log(py) + best[fv.y[i]] - log(z));
        }
        if (rc == 0) margin = plait__personal_margin(cfg, la, lb, fv.n, T);
        if (la) plait_zeroize(la, fv.n * sizeof(double));
        if (lb) plait_zeroize(lb, fv.n * sizeof(double));
        free(la);
        free(lb);
        if (rc == 0 && vb < res->val_chosen - margin) {
            res->bias = 1;
            res->val_bias = vb;
            memcpy(bias, best, V * sizeof(float));
        }
    }
    if (!res->bias) res->bias_step = 0;
    frozen_free(&ft, V);
    frozen_free(&fv, V);
    if (logits) plait_zeroize(logits, T * V * sizeof(float));
    if (best) plait_zeroize(best, V * sizeof(float));
    if (b) plait_zeroize(b, V * sizeof(float));
    if (g) plait_zeroize(g, V * sizeof(float));
    if (m) plait_zeroize(m, V * sizeof(double)); /* the moments carry the gradient of the device's text */
    if (s2) plait_zeroize(s2, V * sizeof(double));
    free(logits);
    free(m);
    free(s2);
    free(b);
    free(g);
    free(best);
    return rc;
}
