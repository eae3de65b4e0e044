/*
 * check_personal.c: validated personalization (client/personal.c) and the
 * trainer hooks it uses: the validation split is deterministic and disjoint;
 * a text shorter than a window is evaluated exactly (causal prefix); the
 * Ditto proximal gradient is lambda (w - ref) and matches finite
 * differences; early stopping keeps the best validated step; the choice is
 * never worse than the reference on validation; the output-bias objective's
 * gradient matches finite differences, a logit bias shifts the trainer's
 * logits and losses exactly, and the fitted bias is kept only where it beats
 * the chosen adapter on validation. Model: stories260K.
 */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "plait/data.h"
#include "plait/lora.h"
#include "plait/model.h"
#include "plait/personal.h"
#include "plait/tok.h"
#include "plait/train.h"
#include "personal_int.h"
#include "testutil.h"

#define TB 2
#define TT 16

typedef struct {
    plait_model_t m;
    plait_tok_t tok;
    plait_lora_t lora;
    plait_trainer_t *tr;
    plait_corpus_t text; /* a few thousand characters of Shakespeare */
} fx_t;

static void fx_open(fx_t *f, double lr, size_t chars)
{
    plait_model_init(&f->m);
    plait_tok_init(&f->tok);
    plait_lora_init(&f->lora);
    plait_corpus_init(&f->text);
    char *mp = tu_path(tu_assets_dir(), "stories260K.bin"), *tp = tu_path(tu_assets_dir(), "tok512.bin");
    char *sp = tu_path(tu_assets_dir(), "tinyshakespeare.txt");
    ck_assert_int_eq(plait_model_load(&f->m, mp), 0);
    ck_assert_int_eq(plait_tok_load(&f->tok, tp, f->m.cfg.vocab_size), 0);
    size_t len = 0;
    uint8_t *txt = tu_read_file(sp, &len);
    ck_assert_ptr_nonnull(txt);
    ck_assert_uint_gt(len, chars);
    ck_assert_int_eq(plait_corpus_add_text(&f->text, &f->tok, (const char *)txt, chars), 0);
    free(txt);
    free(mp);
    free(tp);
    free(sp);
    plait_lora_config_t lc;
    plait_lora_config_default(&lc);
    ck_assert_int_eq(plait_lora_setup(&f->lora, &f->m.cfg, &lc), 0);
    plait_lora_init_weights(&f->lora, 7);
    plait_train_config_t tc = plait_train_config_default();
    tc.B = TB;
    tc.T = TT;
    tc.lr = lr;
    tc.threads = 1;
    ck_assert_int_eq(plait_train_create(&f->tr, &f->m, &f->lora, &tc), 0);
}

static void fx_close(fx_t *f)
{
    plait_train_destroy(f->tr);
    plait_lora_free(&f->lora);
    plait_corpus_free(&f->text);
    plait_tok_free(&f->tok);
    plait_model_free(&f->m);
}

static void corpus_of(plait_corpus_t *c, size_t n)
{
    plait_corpus_init(c);
    c->tokens = malloc(n * sizeof(int32_t));
    ck_assert_ptr_nonnull(c->tokens);
    for (size_t i = 0; i < n; i++) c->tokens[i] = (int32_t)((i * 7 + 3) % 500);
    c->n = c->cap = n;
}

START_TEST(test_split_deterministic_disjoint)
{
    size_t sizes[] = {4, 10, 40, 100, 1000};
    for (size_t k = 0; k < sizeof(sizes) / sizeof(sizes[0]); k++) {
        plait_corpus_t all, tr1, va1, tr2, va2;
        corpus_of(&all, sizes[k]);
        plait_corpus_init(&tr1);
        plait_corpus_init(&va1);
        plait_corpus_init(&tr2);
        plait_corpus_init(&va2);
        ck_assert_int_eq(plait_personal_split(&all, 0.15, TT, &tr1, &va1), 0);
        ck_assert_int_eq(plait_personal_split(&all, 0.15, TT, &tr2, &va2), 0);
        /* Disjoint and complete: train is the head, validation the tail. */
        ck_assert_uint_eq(tr1.n + va1.n, all.n);
        ck_assert_uint_ge(va1.n, 2);
        ck_assert_uint_ge(tr1.n, 2);
        ck_assert_uint_le(va1.n, all.n / 2);
        ck_assert(memcmp(tr1.tokens, all.tokens, tr1.n * sizeof(int32_t)) == 0);
        ck_assert(memcmp(va1.tokens, all.tokens + tr1.n, va1.n * sizeof(int32_t)) == 0);
        /* At least 15%, and one whole window when the text holds two. */
        ck_assert_uint_ge(va1.n, (size_t)ceil(0.15 * (double)all.n) < all.n / 2 ? (size_t)ceil(0.15 * (double)all.n)
                                                                                  : all.n / 2);
        if (all.n >= 2 * (TT + 1)) ck_assert_uint_ge(va1.n, TT + 1);
        /* Deterministic. */
        ck_assert_uint_eq(tr2.n, tr1.n);
        ck_assert(memcmp(va2.tokens, va1.tokens, va1.n * sizeof(int32_t)) == 0);
        plait_corpus_free(&all);
        plait_corpus_free(&tr1);
        plait_corpus_free(&va1);
        plait_corpus_free(&tr2);
        plait_corpus_free(&va2);
    }
    plait_corpus_t all, tr, va;
    corpus_of(&all, 100);
    plait_corpus_init(&tr);
    plait_corpus_init(&va);
    ck_assert_uint_eq(all.n, 100);
    ck_assert_int_eq(plait_personal_split(&all, 0.15, TT, &tr, &va), 0);
    ck_assert_uint_eq(va.n, 17); /* max(15, one window of 17) */
    ck_assert_int_eq(plait_personal_split(&all, 0.3, TT, &tr, &va), 0);
    ck_assert_uint_eq(va.n, 30);
    ck_assert_int_eq(plait_personal_split(&all, 0.9, TT, &tr, &va), PLAIT_EINVAL);
    all.n = 3;
    ck_assert_int_eq(plait_personal_split(&all, 0.15, TT, &tr, &va), PLAIT_EINVAL);
    /* Fill: a short text repeats to one window. */
    all.n = 5;
    ck_assert_int_eq(plait_personal_fill(&all, TT), 0);
    ck_assert_uint_eq(all.n, TT + 1);
    for (size_t i = 0; i < all.n; i++) ck_assert_int_eq(all.tokens[i], (int32_t)(((i % 5) * 7 + 3) % 500));
    plait_corpus_free(&all);
    plait_corpus_free(&tr);
    plait_corpus_free(&va);
}
END_TEST

START_TEST(test_prefix_eval)
{
    fx_t f;
    fx_open(&f, 1e-3, 2000);
    /* B nonzero so the adapter matters. */
    for (size_t i = f.lora.n_a; i < f.lora.n_params; i++) f.lora.params[i] = 0.01f * (float)((i % 13) - 6);
    int32_t row[TT + 1], row2[TT + 1];
    memcpy(row, f.text.tokens, sizeof(row));
    float full;
    ck_assert_int_eq(plait_train_eval_loss(f.tr, row, 1, &full), 0);
    double sum;
    ck_assert_int_eq(plait_train_eval_prefix(f.tr, row, TT, &sum), 0);
    ck_assert_double_eq_tol(sum / TT, (double)full, 1e-5);
    /* The first k predictions do not depend on the tokens after them. */
    double a, b;
    ck_assert_int_eq(plait_train_eval_prefix(f.tr, row, 5, &a), 0);
    memcpy(row2, row, sizeof(row));
    for (int i = 6; i <= TT; i++) row2[i] = (row2[i] + 11) % 500;
    ck_assert_int_eq(plait_train_eval_prefix(f.tr, row2, 5, &b), 0);
    ck_assert_double_eq_tol(a, b, 1e-9);
    ck_assert_int_eq(plait_train_eval_prefix(f.tr, row, 0, &b), PLAIT_EINVAL);
    ck_assert_int_eq(plait_train_eval_prefix(f.tr, row, TT + 1, &b), PLAIT_EINVAL);
    /* A text of 6 tokens: one partial window of 5 predictions. */
    plait_corpus_t c;
    plait_corpus_init(&c);
    c.tokens = malloc(6 * sizeof(int32_t));
    memcpy(c.tokens, row, 6 * sizeof(int32_t));
    c.n = c.cap = 6;
    double l;
    size_t n;
    ck_assert_int_eq(plait_personal_eval(&c, f.tr, 0, &l, &n), 0);
    ck_assert_uint_eq(n, 5);
    ck_assert_double_eq_tol(l, a / 5, 1e-9);
    double wl[64];
    size_t nw;
    ck_assert_int_eq(plait_personal_eval_windows(&c, f.tr, 0, wl, 64, &nw), 0);
    ck_assert_uint_eq(nw, 1);
    ck_assert_double_eq_tol(wl[0], l, 1e-12);
    /* Whole windows: their mean is the corpus loss. */
    ck_assert_int_eq(plait_personal_eval(&f.text, f.tr, 10, &l, &n), 0);
    ck_assert_int_eq(plait_personal_eval_windows(&f.text, f.tr, 10, wl, 64, &nw), 0);
    ck_assert_uint_eq(nw, 10);
    double m = 0;
    for (size_t i = 0; i < nw; i++) m += wl[i] / (double)nw;
    ck_assert_double_eq_tol(m, l, 1e-5);
    ck_assert_int_eq(plait_personal_eval_windows(&f.text, f.tr, 10, wl, 3, &nw), 0);
    ck_assert_uint_eq(nw, 3);
    c.n = 1;
    ck_assert_int_eq(plait_personal_eval(&c, f.tr, 0, &l, &n), PLAIT_EINVAL);
    plait_corpus_free(&c);
    fx_close(&f);
}
END_TEST

START_TEST(test_prox_gradient)
{
    fx_t f;
    fx_open(&f, 1e-3, 2000);
    size_t np = f.lora.n_params;
    float *ref = malloc(np * sizeof(float));
    for (size_t i = 0; i < np; i++) ref[i] = f.lora.params[i];
    for (size_t i = f.lora.n_a; i < np; i++) f.lora.params[i] = 0.02f * (float)((int)(i % 11) - 5);
    int32_t batch[TB * (TT + 1)];
    memcpy(batch, f.text.tokens, sizeof(batch));
    size_t ng = plait_train_grads_count(f.tr), off = plait_train_grads_offset(f.tr);
    float *g0 = malloc(ng * sizeof(float));
    plait_train_reset(f.tr);
    ck_assert_int_eq(plait_train_forward_backward(f.tr, batch, NULL), 0);
    memcpy(g0, plait_train_grads(f.tr), ng * sizeof(float));
    plait_train_reset(f.tr);
    const double lambda = 3.0;
    ck_assert_int_eq(plait_train_set_prox(f.tr, ref, lambda), 0);
    ck_assert_int_eq(plait_train_forward_backward(f.tr, batch, NULL), 0);
    const float *g1 = plait_train_grads(f.tr);
    /* Closed form: the term adds lambda (w - ref), exactly where w != ref and nowhere else. */
    size_t moved = 0;
    for (size_t i = 0; i < ng; i++) {
        double want = lambda * ((double)f.lora.params[off + i] - (double)ref[off + i]);
        ck_assert_double_eq_tol((double)g1[i] - (double)g0[i], want, 1e-5);
        moved += want != 0.0;
    }
    ck_assert_uint_gt(moved, 100);
    /* Finite differences of loss + lambda/2 ||w - ref||^2 on a few B coordinates. */
    size_t idx[] = {f.lora.n_a + 1, f.lora.n_a + 17, np - 3};
    for (size_t k = 0; k < 3; k++) {
        size_t i = idx[k];
        float w0 = f.lora.params[i];
        double h = 1e-2, obj[2];
        for (int s = 0; s < 2; s++) {
            f.lora.params[i] = (float)((double)w0 + (s ? h : -h));
            float l;
            ck_assert_int_eq(plait_train_eval_loss(f.tr, batch, TB, &l), 0);
            double pr = 0;
            for (size_t j = off; j < np; j++) pr += ((double)f.lora.params[j] - ref[j]) * ((double)f.lora.params[j] - ref[j]);
            obj[s] = (double)l + 0.5 * lambda * pr;
        }
        f.lora.params[i] = w0;
        double fd = (obj[1] - obj[0]) / (2 * h);
        ck_assert_msg(fabs(fd - (double)g1[i - off]) < 2e-2 + 0.02 * fabs(fd), "coordinate %zu: fd %g analytic %g", i,
                      fd, (double)g1[i - off]);
    }
    /* Off by lambda 0; a positive lambda needs a reference. */
    ck_assert_int_eq(plait_train_set_prox(f.tr, NULL, 1.0), PLAIT_EINVAL);
    ck_assert_int_eq(plait_train_set_prox(f.tr, NULL, -1.0), PLAIT_EINVAL);
    ck_assert_int_eq(plait_train_set_prox(f.tr, NULL, 0.0), 0);
    free(ref);
    free(g0);
    fx_close(&f);
}
END_TEST

/* Replay: train from ref with the fit's sampler and return the validation loss after each step 1..n. */
static void replay(fx_t *f, const float *ref, const plait_corpus_t *tr, const plait_corpus_t *va, uint64_t seed, int n,
                   double *vals)
{
    memcpy(f->lora.params, ref, f->lora.n_params * sizeof(float));
    plait_train_reset(f->tr);
    uint64_t st = seed;
    int32_t batch[TB * (TT + 1)];
    for (int k = 1; k <= n; k++) {
        ck_assert_int_eq(plait_corpus_sample(tr, TB, TT, &st, batch), 0);
        ck_assert_int_eq(plait_train_forward_backward(f->tr, batch, NULL), 0);
        ck_assert_int_eq(plait_train_step(f->tr), 0);
        ck_assert_int_eq(plait_personal_eval(va, f->tr, 0, &vals[k], NULL), 0);
    }
}

/* The fixture's text split 80/20 into tr and va, and a copy of its adapter as the reference. */
static float *split_with_ref(const fx_t *f, plait_corpus_t *tr, plait_corpus_t *va)
{
    plait_corpus_init(tr);
    plait_corpus_init(va);
    ck_assert_int_eq(plait_personal_split(&f->text, 0.2, TT, tr, va), 0);
    float *ref = malloc(f->lora.n_params * sizeof(float));
    ck_assert_ptr_nonnull(ref);
    memcpy(ref, f->lora.params, f->lora.n_params * sizeof(float));
    return ref;
}

START_TEST(test_early_stopping_best_step)
{
    fx_t f;
    fx_open(&f, 3e-2, 1500); /* a high lr on little text: validation turns up */
    plait_corpus_t tr, va;
    float *ref = split_with_ref(&f, &tr, &va);
    plait_personal_config_t pc = plait_personal_config_default();
    pc.max_steps = 30;
    pc.eval_every = 1;
    pc.patience = 0; /* run every step: the best is the argmin of the whole trajectory */
    pc.seed = 42;
    plait_personal_result_t r;
    ck_assert_int_eq(plait_personal_fit(f.tr, &f.lora, ref, &tr, &va, &pc, &r), 0);
    ck_assert_int_eq(r.steps, 30);
    double vals[31];
    ck_assert_int_eq(plait_personal_eval(&va, f.tr, 0, &vals[0], NULL), 0); /* the chosen adapter */
    ck_assert_double_eq_tol(vals[0], r.val_chosen, 1e-12);
    replay(&f, ref, &tr, &va, pc.seed, 30, vals);
    int arg = 0;
    double best = r.val_global;
    for (int k = 1; k <= 30; k++)
        if (vals[k] < best) best = vals[k], arg = k;
    ck_assert_int_gt(arg, 0);
    ck_assert_int_eq(r.best_step, arg);
    ck_assert_double_eq_tol(r.val_personal, best, 1e-12);
    ck_assert_double_le(r.val_chosen, r.val_personal);
    /* With patience, the stop comes after `patience` validations past the best. */
    pc.patience = 2;
    pc.eval_every = 1;
    ck_assert_int_eq(plait_personal_fit(f.tr, &f.lora, ref, &tr, &va, &pc, &r), 0);
    ck_assert_int_le(r.best_step, arg);
    if (r.steps < 30) ck_assert_int_eq(r.steps, r.best_step + 2);
    free(ref);
    plait_corpus_free(&tr);
    plait_corpus_free(&va);
    fx_close(&f);
}
END_TEST

START_TEST(test_choice_never_worse)
{
    fx_t f;
    fx_open(&f, 1e-2, 1500);
    plait_corpus_t tr, va;
    plait_corpus_init(&tr);
    plait_corpus_init(&va);
    ck_assert_int_eq(plait_personal_split(&f.text, 0.15, TT, &tr, &va), 0);
    size_t np = f.lora.n_params;
    float *ref = malloc(np * sizeof(float));
    /* A reference that already fits (a few steps), so fine-tuning can lose. */
    plait_personal_config_t pc = plait_personal_config_default();
    memcpy(ref, f.lora.params, np * sizeof(float));
    pc.max_steps = 10;
    plait_personal_result_t r;
    ck_assert_int_eq(plait_personal_fit(f.tr, &f.lora, ref, &tr, &va, &pc, &r), 0);
    memcpy(ref, f.lora.params, np * sizeof(float));
    double lambdas[] = {0.0, 1.0, 0.0, 10.0};
    for (int trial = 0; trial < 4; trial++) {
        pc = plait_personal_config_default();
        pc.max_steps = 15;
        pc.seed = (uint64_t)trial;
        pc.prox_lambda = lambdas[trial];
        pc.min_gain = trial == 2 ? 10.0 : 0.0; /* an unreachable margin: the reference must stay */
        ck_assert_int_eq(plait_personal_fit(f.tr, &f.lora, ref, &tr, &va, &pc, &r), 0);
        ck_assert_double_le(r.val_chosen, r.val_global);
        double v;
        ck_assert_int_eq(plait_personal_eval(&va, f.tr, 0, &v, NULL), 0);
        ck_assert_double_eq_tol(v, r.val_chosen, 1e-12);
        if (r.kind == PLAIT_PERSONAL_GLOBAL) {
            ck_assert(memcmp(f.lora.params, ref, np * sizeof(float)) == 0);
            ck_assert_double_eq(r.mix, 0.0);
        } else {
            ck_assert_double_lt(r.val_chosen, r.val_global);
            ck_assert(r.mix > 0.0 && r.mix <= 1.0);
        }
        if (trial == 2) ck_assert_int_eq(r.kind, PLAIT_PERSONAL_GLOBAL);
    }
    /* A huge learning rate ruins fine-tuning: the reference is kept. */
    fx_close(&f);
    fx_open(&f, 5.0, 1500);
    memcpy(f.lora.params, ref, np * sizeof(float));
    pc = plait_personal_config_default();
    pc.max_steps = 10;
    ck_assert_int_eq(plait_personal_fit(f.tr, &f.lora, ref, &tr, &va, &pc, &r), 0);
    ck_assert_double_le(r.val_chosen, r.val_global);
    if (r.best_step == 0) {
        ck_assert_int_eq(r.kind, PLAIT_PERSONAL_GLOBAL);
        ck_assert(memcmp(f.lora.params, ref, np * sizeof(float)) == 0);
    }
    ck_assert_str_eq(plait_personal_kind_name(PLAIT_PERSONAL_MIX), "mix");
    free(ref);
    plait_corpus_free(&tr);
    plait_corpus_free(&va);
    fx_close(&f);
}
END_TEST

/* The bias objective against finite differences (double-precision central differences on its float inputs). */
START_TEST(test_bias_gradient)
{
    enum { N = 37, V = 23 };
    float *p = malloc(N * V * sizeof(float)), b[V], g[V];
    int32_t y[N];
    uint64_t st = 99;
    for (size_t i = 0; i < N; i++) {
        double z = 0;
        for (size_t v = 0; v < V; v++) z += p[i * V + v] = (float)exp(3.0 * ((double)(plait_rand_u64(&st) % 1000) / 1000.0));
        for (size_t v = 0; v < V; v++) p[i * V + v] = (float)(p[i * V + v] / z);
        y[i] = (int32_t)(plait_rand_u64(&st) % V);
    }
    for (size_t v = 0; v < V; v++) b[v] = 0.3f * (float)((int)(v % 7) - 3);
    /* At b = 0 without L2 the objective is the model's own cross-entropy. */
    float zero[V] = {0};
    double ce = 0;
    for (size_t i = 0; i < N; i++) ce -= log((double)p[i * V + y[i]]);
    ck_assert_double_eq_tol(plait_personal_bias_objective(p, y, N, V, zero, 0.0, NULL), ce / N, 1e-6);
    double l2 = 0.05;
    double J = plait_personal_bias_objective(p, y, N, V, b, l2, g);
    ck_assert(isfinite(J));
    for (size_t v = 0; v < V; v++) {
        float keep = b[v], h = 1e-2f;
        b[v] = keep + h;
        double jp = plait_personal_bias_objective(p, y, N, V, b, l2, NULL);
        b[v] = keep - h;
        double jm = plait_personal_bias_objective(p, y, N, V, b, l2, NULL);
        b[v] = keep;
        double fd = (jp - jm) / (2.0 * (double)h);
        ck_assert_msg(fabs(fd - (double)g[v]) < 1e-4 + 1e-3 * fabs(fd), "logit %zu: analytic %g, numeric %g", v,
                      (double)g[v], fd);
    }
    /* The gradient of the cross-entropy part sums to zero over the vocabulary (softmax minus one-hot). */
    double gs = 0;
    ck_assert(isfinite(plait_personal_bias_objective(p, y, N, V, b, 0.0, g)));
    for (size_t v = 0; v < V; v++) gs += g[v];
    ck_assert_double_eq_tol(gs, 0.0, 1e-5);
    y[3] = V; /* a target out of range */
    ck_assert(isnan(plait_personal_bias_objective(p, y, N, V, b, 0.0, g)));
    ck_assert(isnan(plait_personal_bias_objective(p, y, 0, V, b, 0.0, g)));
    free(p);
}
END_TEST

/* A logit bias enters the trainer's logits and losses exactly as an addition. */
START_TEST(test_trainer_logit_bias)
{
    fx_t f;
    fx_open(&f, 1e-3, 2000);
    for (size_t i = f.lora.n_a; i < f.lora.n_params; i++) f.lora.params[i] = 0.01f * (float)((i % 13) - 6);
    size_t V = plait_train_vocab_size(f.tr);
    ck_assert_uint_eq(V, (size_t)f.m.cfg.vocab_size);
    float *l0 = malloc(TT * V * sizeof(float)), *l1 = malloc(TT * V * sizeof(float)), *bias = malloc(V * sizeof(float));
    for (size_t v = 0; v < V; v++) bias[v] = 0.5f * sinf((float)v);
    const int32_t *row = f.text.tokens;
    float loss0, loss1;
    ck_assert_int_eq(plait_train_eval_logits(f.tr, row, l0), 0);
    ck_assert_int_eq(plait_train_eval_loss(f.tr, row, 1, &loss0), 0);
    ck_assert_int_eq(plait_train_set_logit_bias(f.tr, bias), 0);
    ck_assert_int_eq(plait_train_eval_logits(f.tr, row, l1), 0);
    ck_assert_int_eq(plait_train_eval_loss(f.tr, row, 1, &loss1), 0);
    double want = 0;
    for (size_t t = 0; t < TT; t++) {
        double mx = -INFINITY, z = 0;
        for (size_t v = 0; v < V; v++) {
            ck_assert_float_eq_tol(l1[t * V + v], l0[t * V + v] + bias[v], 1e-5f);
            if (l1[t * V + v] > mx) mx = l1[t * V + v];
        }
        for (size_t v = 0; v < V; v++) z += exp((double)l1[t * V + v] - mx);
        want += log(z) + mx - (double)l1[t * V + (size_t)row[t + 1]];
    }
    ck_assert_double_eq_tol((double)loss1, want / TT, 1e-4);
    ck_assert((double)fabsf(loss1 - loss0) > 1e-4);
    /* Off again: the loss is back, bit for bit. */
    ck_assert_int_eq(plait_train_set_logit_bias(f.tr, NULL), 0);
    ck_assert_int_eq(plait_train_eval_loss(f.tr, row, 1, &loss1), 0);
    ck_assert_float_eq(loss1, loss0);
    bias[5] = NAN;
    ck_assert_int_eq(plait_train_set_logit_bias(f.tr, bias), PLAIT_EINVAL);
    free(l0);
    free(l1);
    free(bias);
    fx_close(&f);
}
END_TEST

/* A copy of the fixture's text to edit, and two empty corpora for its split. */
static void text_copy(const fx_t *f, plait_corpus_t *all, plait_corpus_t *tr, plait_corpus_t *va)
{
    plait_corpus_init(all);
    plait_corpus_init(tr);
    plait_corpus_init(va);
    all->tokens = malloc(f->text.n * sizeof(int32_t));
    ck_assert_ptr_nonnull(all->tokens);
    all->n = all->cap = f->text.n;
    memcpy(all->tokens, f->text.tokens, f->text.n * sizeof(int32_t));
}

/* The fitted bias: kept only when it beats the chosen adapter on validation, and then the loss it reports is the
 * validation loss with it. A device whose text overuses a few tokens gains from one. */
START_TEST(test_bias_fit_kept_on_validation)
{
    fx_t f;
    fx_open(&f, 1e-3, 6000);
    size_t V = plait_train_vocab_size(f.tr), np = f.lora.n_params;
    float *bias = malloc(V * sizeof(float)), *ref = malloc(np * sizeof(float));
    memcpy(ref, f.lora.params, np * sizeof(float));
    for (int trial = 0; trial < 3; trial++) {
        plait_corpus_t all, tr, va;
        text_copy(&f, &all, &tr, &va);
        if (trial == 1) /* a device that writes token 300 far more often than Shakespeare does */
            for (size_t i = 0; i < all.n; i += 3) all.tokens[i] = 300;
        ck_assert_int_eq(plait_personal_split(&all, 0.15, TT, &tr, &va), 0);
        plait_personal_config_t pc = plait_personal_config_default();
        pc.max_steps = 5;
        pc.min_gain = trial == 2 ? 10.0 : 0.0; /* unreachable: no bias may be kept */
        plait_personal_result_t r;
        memcpy(f.lora.params, ref, np * sizeof(float));
        ck_assert_int_eq(plait_personal_fit(f.tr, &f.lora, ref, &tr, &va, &pc, &r), 0);
        ck_assert_int_eq(plait_personal_fit_bias(f.tr, &tr, &va, &pc, bias, &r), 0);
        ck_assert_double_le(r.val_bias, r.val_chosen);
        double v;
        if (r.bias) {
            ck_assert_int_gt(r.bias_step, 0);
            ck_assert_double_lt(r.val_bias, r.val_chosen);
            ck_assert_int_eq(plait_train_set_logit_bias(f.tr, bias), 0);
            ck_assert_int_eq(plait_personal_eval(&va, f.tr, 0, &v, NULL), 0);
            ck_assert_double_eq_tol(v, r.val_bias, 1e-12);
            ck_assert_int_eq(plait_train_set_logit_bias(f.tr, NULL), 0);
        } else {
            ck_assert_int_eq(r.bias_step, 0);
            ck_assert_double_eq(r.val_bias, r.val_chosen);
            for (size_t k = 0; k < V; k++) ck_assert_float_eq(bias[k], 0.0f);
        }
        /* The trainer ends without a bias: the chosen adapter's validation loss is unchanged. */
        ck_assert_int_eq(plait_personal_eval(&va, f.tr, 0, &v, NULL), 0);
        ck_assert_double_eq_tol(v, r.val_chosen, 1e-12);
        if (trial == 1) {
            ck_assert_int_eq(r.bias, 1);
            ck_assert_double_lt(r.val_bias, r.val_chosen - 0.05);
            ck_assert_float_gt(bias[300], 0.5f);
        }
        if (trial == 2) ck_assert_int_eq(r.bias, 0);
        if (trial == 1) { /* an unreachable guard: the same bias is not kept */
            plait_personal_config_t g = pc;
            g.guard_z = 100.0;
            ck_assert_int_eq(plait_personal_fit_bias(f.tr, &tr, &va, &g, bias, &r), 0);
            ck_assert_int_eq(r.bias, 0);
            ck_assert_double_eq(r.val_bias, r.val_chosen);
        }
        /* No budget: no bias. */
        pc.bias_steps = 0;
        ck_assert_int_eq(plait_personal_fit_bias(f.tr, &tr, &va, &pc, bias, &r), 0);
        ck_assert_int_eq(r.bias, 0);
        pc.bias_bytes = 1000; /* under the 1 MiB floor */
        pc.bias_steps = 10;
        ck_assert_int_eq(plait_personal_fit_bias(f.tr, &tr, &va, &pc, bias, &r), PLAIT_EINVAL);
        plait_corpus_free(&all);
        plait_corpus_free(&tr);
        plait_corpus_free(&va);
    }
    free(bias);
    free(ref);
    fx_close(&f);
}
END_TEST

static int stop_after(void *ud) /* stops once it has been polled *ud times */
{
    int *left = ud;
    return (*left)-- <= 0;
}

START_TEST(test_stop_polled_each_step)
{
    fx_t f;
    fx_open(&f, 1e-2, 1500);
    plait_corpus_t tr, va;
    size_t np = f.lora.n_params;
    float *ref = split_with_ref(&f, &tr, &va);
    plait_personal_config_t pc = plait_personal_config_default();
    pc.max_steps = 30;
    pc.eval_every = 1;
    pc.patience = 0;
    int left = 3; /* three steps run, the fourth poll stops */
    pc.stop = stop_after;
    pc.stop_ud = &left;
    plait_personal_result_t r;
    ck_assert_int_eq(plait_personal_fit(f.tr, &f.lora, ref, &tr, &va, &pc, &r), PLAIT_ECANCELED);
    ck_assert_int_eq(r.steps, 3);
    ck_assert(memcmp(f.lora.params, ref, np * sizeof(float)) == 0); /* stopped: the reference, untouched */
    ck_assert_ptr_nonnull(strstr(plait_errmsg(), "stopped at step 4"));
    left = 1000000; /* never stops: the same fit as without a stop */
    ck_assert_int_eq(plait_personal_fit(f.tr, &f.lora, ref, &tr, &va, &pc, &r), 0);
    ck_assert_int_eq(r.steps, 30);
    free(ref);
    plait_corpus_free(&tr);
    plait_corpus_free(&va);
    fx_close(&f);
}
END_TEST


/* The kNN memory (step 5): a device whose text repeats phrases the model cannot predict keeps a memory that beats
 * the bias on validation; the memory holds the training part's and then the validation part's positions; the
 * held-out loss with it agrees with the mixture computed from the logits (knn.h, a second implementation); it is
 * refused when it cannot clear min_gain or the guard, and the stop callback cancels it. */
START_TEST(test_knn_memory)
{
    fx_t f;
    fx_open(&f, 1e-3, 6000);
    size_t V = plait_train_vocab_size(f.tr), C = plait_train_dim(f.tr), np = f.lora.n_params;
    ck_assert_uint_eq(C, (size_t)f.m.cfg.dim);
    float *bias = malloc(V * sizeof(float)), *ref = malloc(np * sizeof(float));
    memcpy(ref, f.lora.params, np * sizeof(float));
    for (int trial = 0; trial < 2; trial++) {
        plait_corpus_t all, tr, va;
        text_copy(&f, &all, &tr, &va);
        if (trial == 1) /* a device that keeps writing the same odd phrase of 6 tokens */
            for (size_t i = 0; i + 6 <= all.n; i += 23)
                for (size_t j = 0; j < 6; j++) all.tokens[i + j] = (int32_t)(400 + 13 * j);
        ck_assert_int_eq(plait_personal_split(&all, 0.15, TT, &tr, &va), 0);
        plait_personal_config_t pc = plait_personal_config_default();
        pc.max_steps = 5;
        plait_personal_result_t r;
        memcpy(f.lora.params, ref, np * sizeof(float));
        ck_assert_int_eq(plait_personal_fit(f.tr, &f.lora, ref, &tr, &va, &pc, &r), 0);
        ck_assert_int_eq(plait_personal_fit_bias(f.tr, &tr, &va, &pc, bias, &r), 0);
        double before = r.bias ? r.val_bias : r.val_chosen;
        plait_knn_t knn;
        plait_knn_init(&knn);
        ck_assert_int_eq(plait_personal_fit_knn(f.tr, &tr, &va, &pc, r.bias ? bias : NULL, &knn, &r), 0);
        ck_assert_double_le(r.val_knn, before);
        if (trial == 1) {
            ck_assert_int_eq(r.knn, 1);
            ck_assert_double_lt(r.val_knn, before - 0.1);
            size_t ntr = plait_corpus_n_windows(&tr, TT) * TT, nva = plait_corpus_n_windows(&va, TT) * TT;
            ck_assert_uint_eq(knn.n, ntr + nva); /* room for all: training part, then validation */
            ck_assert_uint_eq(r.knn_entries, knn.n);
            ck_assert_double_gt(knn.lambda, 0.0);
            ck_assert_double_le(knn.lambda, 1.0);
            ck_assert_int_eq(knn.vals[0], tr.tokens[1]);
            ck_assert_int_eq(knn.vals[ntr], va.tokens[1]);
            /* The held-out loss with the memory, against the mixture of knn.h computed from the logits. */
            plait_corpus_t held;
            plait_corpus_init(&held);
            held.tokens = malloc((TT + 1) * sizeof(int32_t));
            held.n = held.cap = TT + 1;
            memcpy(held.tokens, all.tokens + 23 * 3 + 2, (TT + 1) * sizeof(int32_t));
            if (r.bias) ck_assert_int_eq(plait_train_set_logit_bias(f.tr, bias), 0);
            double lk = 0, lw[4];
            size_t nt = 0, nw = 0;
            ck_assert_int_eq(plait_personal_eval_knn(&held, f.tr, &knn, 0, &lk, &nt, lw, 4, &nw), 0);
            ck_assert_uint_eq(nt, TT);
            ck_assert_uint_eq(nw, 1);
            ck_assert_double_eq_tol(lw[0], lk, 1e-12);
            float *lg = malloc(TT * V * sizeof(float)), *hid = malloc(TT * C * sizeof(float));
            ck_assert_int_eq(plait_train_eval_hidden(f.tr, held.tokens, lg, hid), 0);
            double want = 0;
            for (size_t t = 0; t < TT; t++) {
                ck_assert_int_eq(plait_knn_mix_logits(&knn, hid + t * C, lg + t * V, V), 0);
                double z = 0;
                for (size_t v = 0; v < V; v++) z += exp((double)lg[t * V + v]);
                want -= (double)lg[t * V + (size_t)held.tokens[t + 1]] - log(z);
            }
            ck_assert_double_eq_tol(lk, want / TT, 1e-5);
            /* lambda 0: the plain held-out loss. */
            double lam = knn.lambda, l0 = 0, lp = 0;
            knn.lambda = 0;
            ck_assert_int_eq(plait_personal_eval_knn(&held, f.tr, &knn, 0, &l0, NULL, NULL, 0, NULL), 0);
            ck_assert_int_eq(plait_personal_eval(&held, f.tr, 0, &lp, NULL), 0);
            ck_assert_double_eq_tol(l0, lp, 1e-5);
            ck_assert_double_lt(lk, lp);
            knn.lambda = lam;
            ck_assert_int_eq(plait_train_set_logit_bias(f.tr, NULL), 0);
            free(lg);
            free(hid);
            plait_corpus_free(&held);
        }
        /* Cannot clear min_gain, or the guard: no memory, and the loss is the one without it. */
        plait_personal_config_t strict = pc;
        strict.min_gain = 10.0;
        ck_assert_int_eq(plait_personal_fit_knn(f.tr, &tr, &va, &strict, r.bias ? bias : NULL, &knn, &r), 0);
        ck_assert_int_eq(r.knn, 0);
        ck_assert_uint_eq(knn.n, 0);
        ck_assert_double_eq(r.val_knn, before);
        strict.min_gain = 0.0;
        strict.guard_z = 100.0;
        ck_assert_int_eq(plait_personal_fit_knn(f.tr, &tr, &va, &strict, r.bias ? bias : NULL, &knn, &r), 0);
        ck_assert_int_eq(r.knn, 0);
        strict.guard_z = 2.0;
        strict.knn_bytes = 0; /* no room: no memory */
        ck_assert_int_eq(plait_personal_fit_knn(f.tr, &tr, &va, &strict, r.bias ? bias : NULL, &knn, &r), 0);
        ck_assert_int_eq(r.knn, 0);
        strict.knn_bytes = 200 * (C + 2) * sizeof(float); /* room for 200 entries: 12 windows, then 8 of val */
        ck_assert_int_eq(plait_personal_fit_knn(f.tr, &tr, &va, &strict, r.bias ? bias : NULL, &knn, &r), 0);
        ck_assert_uint_le(knn.n, 200);
        if (trial == 1) {
            ck_assert_int_eq(r.knn, 1);
            ck_assert_uint_eq(knn.n, 200);
            size_t nw = plait_corpus_n_windows(&tr, TT);
            ck_assert_uint_gt(nw, 12);
            for (size_t w = 0; w < 12; w++) /* window w*nw/12, evenly spread, its first prediction */
                ck_assert_int_eq(knn.vals[w * TT], tr.tokens[(w * nw / 12) * TT + 1]);
            ck_assert_int_eq(knn.vals[192], va.tokens[1]);
        }
        /* The trainer ends with no logit bias: the plain validation loss is the chosen adapter's. */
        double vnow = 0;
        ck_assert_int_eq(plait_personal_eval(&va, f.tr, 0, &vnow, NULL), 0);
        ck_assert_double_eq_tol(vnow, r.val_chosen, 1e-12);
        int left = 2;
        strict.stop = stop_after;
        strict.stop_ud = &left;
        ck_assert_int_eq(plait_personal_fit_knn(f.tr, &tr, &va, &strict, r.bias ? bias : NULL, &knn, &r),
                         PLAIT_ECANCELED);
        ck_assert_int_eq(r.knn, 0);
        ck_assert_uint_eq(knn.n, 0);
        plait_knn_free(&knn);
        plait_corpus_free(&all);
        plait_corpus_free(&tr);
        plait_corpus_free(&va);
    }
    free(bias);
    free(ref);
    fx_close(&f);
}
END_TEST


/* The guard: a candidate is chosen over the reference only when its validation gain also exceeds guard_z paired
 * standard errors. From a fresh adapter (B = 0) a few steps clearly help: chosen with guard 0 and 2, and the
 * reference is kept with an unreachable guard. The helper's paired standard error is the textbook one. */
START_TEST(test_choice_guard)
{
    fx_t f;
    fx_open(&f, 1e-2, 3000);
    plait_corpus_t tr, va;
    float *ref = split_with_ref(&f, &tr, &va);
    size_t np = f.lora.n_params;
    double zs[] = {0.0, 2.0, 100.0};
    for (int i = 0; i < 3; i++) {
        plait_personal_config_t pc = plait_personal_config_default();
        pc.max_steps = 20;
        pc.guard_z = zs[i];
        plait_personal_result_t r;
        ck_assert_int_eq(plait_personal_fit(f.tr, &f.lora, ref, &tr, &va, &pc, &r), 0);
        ck_assert_int_gt(r.best_step, 0);
        ck_assert_double_lt(r.val_personal, r.val_global);
        if (i < 2) {
            ck_assert_int_ne(r.kind, PLAIT_PERSONAL_GLOBAL);
        } else {
            ck_assert_int_eq(r.kind, PLAIT_PERSONAL_GLOBAL);
            ck_assert_double_eq(r.val_chosen, r.val_global);
            ck_assert(memcmp(f.lora.params, ref, np * sizeof(float)) == 0);
        }
    }
    double a[4] = {1, 2, 3, 4}, b[4] = {1.5, 2.0, 3.5, 5.0}; /* d = 0.5 0 0.5 1: mean 0.5, sd sqrt(1/6) */
    ck_assert_double_eq_tol(plait__personal_paired_se(a, b, 4, 1), sqrt(1.0 / 6.0) / 2.0, 1e-12);
    ck_assert(isinf(plait__personal_paired_se(a, b, 1, 1)));
    /* In windows of 2: the group means 0.25 and 0.75, sd sqrt(1/8), over sqrt(2). */
    ck_assert_double_eq_tol(plait__personal_paired_se(a, b, 4, 2), 0.25, 1e-12);
    ck_assert_double_eq_tol(plait__personal_paired_se(a, b, 3, 2), 0.125, 1e-12); /* means 0.25 and 0.5 */
    ck_assert(isinf(plait__personal_paired_se(a, b, 4, 4))); /* one window: no spread to measure */
    /* The margin: min_gain alone without a guard, else guard_z times the larger standard error. */
    plait_personal_config_t mc = plait_personal_config_default();
    mc.min_gain = 0.01;
    mc.guard_z = 0.0;
    ck_assert_double_eq(plait__personal_margin(&mc, a, b, 4, 2), 0.01);
    ck_assert_double_eq(plait__personal_margin(&mc, a, b, 1, 2), 0.01); /* no NaN from 0 x infinity */
    mc.guard_z = 2.0;
    ck_assert_double_eq_tol(plait__personal_margin(&mc, a, b, 4, 2), 0.01 + 2.0 * 0.25, 1e-12);
    ck_assert_double_eq_tol(plait__personal_margin(&mc, a, b, 4, 1), 0.01 + 2.0 * sqrt(1.0 / 6.0) / 2.0, 1e-12);
    ck_assert(isinf(plait__personal_margin(&mc, a, b, 4, 4)));
    plait_personal_config_t bad = plait_personal_config_default();
    bad.guard_z = -1;
    ck_assert_int_eq(plait_personal_config_validate(&bad), PLAIT_EINVAL);
    free(ref);
    plait_corpus_free(&tr);
    plait_corpus_free(&va);
    fx_close(&f);
}
END_TEST

/* A long validation tail: the fit searches the memory for at most 4,096 validation predictions (whole windows
 * thinned evenly), and those are the positions that join the memory. */
START_TEST(test_knn_validation_capped)
{
    fx_t f;
    fx_open(&f, 1e-3, 60000);
    plait_corpus_t all, tr, va;
    text_copy(&f, &all, &tr, &va);
    for (size_t i = 0; i + 6 <= all.n; i += 23) /* the repeated phrase of test_knn_memory: the memory is kept */
        for (size_t j = 0; j < 6; j++) all.tokens[i + j] = (int32_t)(400 + 13 * j);
    ck_assert_int_eq(plait_personal_split(&all, 0.5, TT, &tr, &va), 0);
    ck_assert_uint_gt(plait_corpus_n_windows(&va, TT), 4096 / TT);
    size_t np = f.lora.n_params;
    float *ref = malloc(np * sizeof(float));
    memcpy(ref, f.lora.params, np * sizeof(float));
    plait_personal_config_t pc = plait_personal_config_default();
    pc.max_steps = 2;
    pc.bias_steps = 0;
    plait_personal_result_t r;
    ck_assert_int_eq(plait_personal_fit(f.tr, &f.lora, ref, &tr, &va, &pc, &r), 0);
    plait_knn_t knn;
    plait_knn_init(&knn);
    ck_assert_int_eq(plait_personal_fit_knn(f.tr, &tr, &va, &pc, NULL, &knn, &r), 0);
    ck_assert_int_eq(r.knn, 1);
    size_t ntr = plait_corpus_n_windows(&tr, TT) * TT;
    ck_assert_uint_eq(knn.n, ntr + 4096);
    plait_knn_free(&knn);
    free(ref);
    plait_corpus_free(&all);
    plait_corpus_free(&tr);
    plait_corpus_free(&va);
    fx_close(&f);
}
END_TEST

Suite *personal_suite(void)
{
    Suite *s = suite_create("personal");
    TCase *tc = tcase_create("personal");
    tcase_set_timeout(tc, 600);
    tcase_add_test(tc, test_split_deterministic_disjoint);
    tcase_add_test(tc, test_prefix_eval);
    tcase_add_test(tc, test_prox_gradient);
    tcase_add_test(tc, test_early_stopping_best_step);
    tcase_add_test(tc, test_choice_never_worse);
    tcase_add_test(tc, test_bias_gradient);
    tcase_add_test(tc, test_trainer_logit_bias);
    tcase_add_test(tc, test_bias_fit_kept_on_validation);
    tcase_add_test(tc, test_stop_polled_each_step);
    tcase_add_test(tc, test_knn_memory);
    tcase_add_test(tc, test_choice_guard);
    tcase_add_test(tc, test_knn_validation_capped);
    suite_add_tcase(s, tc);
    return s;
}
