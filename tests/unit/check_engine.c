/*
 * check_engine.c: the on-device engine (model, LoRA, trainer, inference,
 * tokenizer, adapter files) against an independent reference, and under
 * hostile input.
 *
 * Part 1 (generality): many model shapes built with plait_model_init_random
 * (tied/untied, GQA ratios 1..NH, head sizes 2..64, odd hidden and vocab
 * sizes, dims not a multiple of 8, ranks 1..16, single and all targets,
 * B 1/3, T 1..33, 1 and 2 threads) are checked against an independent naive
 * float64 forward written here:
 *   (a) the trainer's loss, and its adapter gradient against central finite
 *       differences of the float64 loss (every coordinate for small adapters,
 *       otherwise a random direction per tensor plus sampled coordinates);
 *   (b) the inference logits (KV cache; unmerged, merged; token by token and
 *       chunked prefill) at every position;
 *   (c) two AdamW steps (with and without clipping) against a hand update.
 * A deliberately perturbed gradient must be rejected by the same comparison.
 *
 * Part 2 (hostile input): token files, non-finite results and the agent's
 * training flags that must end in a clear error. (Hostile model headers are in
 * check_model.c, tokenizer images in check_tok.c, adapter files in check_adapter.c, store rows and ingest input in
 * check_ingest.c, strict CLI numbers in check_cli.c.)
 */
#include <check.h>
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "plait/adapter.h"
#include "plait/infer.h"
#include "plait/lora.h"
#include "plait/model.h"
#include "plait/train.h"
#include "testutil.h"

/* ------------------------------------------------------------ tolerances */

/* Loss: float32 forward vs float64; the trainer accumulates dot products of
 * at most a few hundred terms and a log-sum-exp over V, so its relative error
 * is ~1e-6; 1e-4 leaves a wide margin while a wrong attention mask, RoPE or
 * norm changes the loss by percents. */
#define LOSS_RTOL 1e-4
/* Gradient: |g - g_ref| <= GRAD_RTOL * max|g_ref| over the whole adapter.
 * g_ref is a central difference of the float64 loss with step FD_H on
 * weights of magnitude ~0.1..1: truncation error ~FD_H^2 * |L'''| ~ 1e-10 and
 * roundoff ~1e-16 / FD_H ~ 1e-11, both negligible. The float32 backward
 * deviates by at most ~2e-6 of the largest gradient on every shape here
 * (sums over B*T positions of products each rounded to 2^-24; measured with
 * REVIEW_VERBOSE=1). 2e-4 leaves a 100x margin, and a gradient wrong by a
 * fraction of a percent of the maximum (a dropped term, a mis-scaled LoRA
 * path, a wrong head mapping) exceeds it. */
#define GRAD_RTOL 2e-4
#define FD_H 1e-5
/* Directional derivative per tensor (random +-1 direction d over n elements):
 * |g.d - fd| <= GRAD_RTOL * max|g_ref| * sqrt(n): the float32 errors are
 * independent per element, so their signed sum grows like sqrt(n). */
/* Logits of inference vs float64: |diff| <= LOGIT_RTOL * (1 + max|logit|);
 * same reasoning as LOSS_RTOL. */
#define LOGIT_RTOL 2e-4
/* AdamW: parameters after a step vs the float64 hand update:
 * |p - p_ref| <= ADAM_RTOL * lr + 4 FLT_EPSILON |p|. Each update is at most
 * ~lr per step, the trainer stores m and v in float (relative 6e-8), so the
 * only other error is the final rounding of p to float. Elements whose
 * gradient is comparable to eps are ill-conditioned; the gradients here are
 * >> eps (checked). */
#define ADAM_RTOL 1e-4

/* --------------------------------------------------------------- helpers */

#define ALL7 TU_ALL7
#define TGT(p) TU_TGT(p)
typedef tu_shape_t shape_t;

static const shape_t SHAPES[] = {
    /* C   H   L  NH NKV V     seq sh R   alpha  targets                         B  T  thr */
    {12, 37, 2, 6, 3, 7, 8, 1, 1, 3.0f, ALL7, 1, 5, 1},               /* HS 2, NKV NH/2, all 7 */
    {20, 173, 2, 5, 1, 300, 20, 0, 3, 7.0f, TGT(PLAIT_WQ), 3, 17, 1}, /* HS 4, NKV 1, untied */
    {36, 37, 1, 6, 3, 7, 4, 1, 8, 16.0f, TGT(PLAIT_W2), 1, 2, 1},     /* HS 6 */
    {40, 38, 2, 4, 1, 4099, 3, 1, 16, 8.0f, TGT(PLAIT_W1) | TGT(PLAIT_W3), 1, 1,
     1},                                                    /* HS 10, T 1 */
    {64, 173, 2, 4, 1, 300, 8, 0, 8, 16.0f, ALL7, 3, 5, 2}, /* HS 16, NKV NH/4 */
    {64, 37, 1, 1, 1, 7, 40, 1, 3, 5.0f, TGT(PLAIT_WO) | TGT(PLAIT_WK) | TGT(PLAIT_WV), 1, 33,
     1},                                                              /* HS 64 */
    {16, 37, 2, 8, 2, 300, 17, 0, 16, 4.0f, TGT(PLAIT_WK), 3, 17, 2}, /* HS 2, NKV NH/4 */
    {12, 173, 1, 2, 2, 4099, 17, 0, 1, 2.0f, TGT(PLAIT_W2) | TGT(PLAIT_WO), 1, 17,
     1},                                                /* T == seq */
    {20, 37, 3, 2, 1, 7, 6, 1, 3, 1.0f, ALL7, 3, 2, 1}, /* HS 10, 3 layers */
    {36, 173, 1, 3, 3, 300, 5, 0, 8, 32.0f, TGT(PLAIT_WV) | TGT(PLAIT_W3), 1, 5, 2}, /* HS 12 */
};
#define N_SHAPES (sizeof(SHAPES) / sizeof(SHAPES[0]))

/* Adapter with A and B both random and non-zero (so A's gradient is not trivial). */
static void make_lora(plait_lora_t *l, const plait_model_t *m, const shape_t *s, uint64_t seed)
{
    plait_lora_config_t lc = {.rank = s->R, .alpha = s->alpha, .targets = s->targets};
    plait_lora_init(l);
    ck_assert_int_eq(plait_lora_setup(l, &m->cfg, &lc), 0);
    uint64_t r = seed;
    for (size_t i = 0; i < l->n_params; i++)
        l->params[i] = (float)(0.8 * (tu_unif(&r) - 0.5));
}

/* ------------------------------------------------- naive float64 reference */

typedef struct {
    const plait_model_t *m;
    const plait_lora_t *l; /* may be NULL */
    const double *p;       /* adapter params in double, lora layout */
} ref_t;

static void ref_proj(const ref_t *r, int layer, plait_proj_t pj, const double *x, double *y)
{
    int in, out;
    plait_proj_shape(&r->m->cfg, pj, &in, &out);
    const float *W = plait_proj_weight(r->m, layer, pj);
    for (int o = 0; o < out; o++) {
        double acc = 0.0;
        for (int i = 0; i < in; i++)
            acc += (double)W[(size_t)o * (size_t)in + (size_t)i] * x[i];
        y[o] = acc;
    }
    size_t slot = plait_lora_slot(layer, pj);
    if (!r->l || !r->l->A[slot]) return;
    int R = r->l->cfg.rank;
    const double *A = r->p + (r->l->A[slot] - r->l->params);
    const double *Bm = r->p + (r->l->B[slot] - r->l->params);
    double sc = (double)r->l->cfg.alpha / (double)R;
    double u[64];
    ck_assert_int_le(R, 64);
    for (int k = 0; k < R; k++) {
        double acc = 0.0;
        for (int i = 0; i < in; i++)
            acc += A[(size_t)k * (size_t)in + (size_t)i] * x[i];
        u[k] = acc;
    }
    for (int o = 0; o < out; o++) {
        double acc = 0.0;
        for (int k = 0; k < R; k++)
            acc += Bm[(size_t)o * (size_t)R + (size_t)k] * u[k];
        y[o] += sc * acc;
    }
}

static void ref_rmsnorm(double *o, const double *x, const float *w, int C)
{
    double ss = 0.0;
    for (int i = 0; i < C; i++)
        ss += x[i] * x[i];
    double rs = 1.0 / sqrt(ss / C + 1e-5);
    for (int i = 0; i < C; i++)
        o[i] = x[i] * rs * (double)w[i];
}

static void ref_rope(double *v, int nh, int HS, int pos)
{
    for (int h = 0; h < nh; h++)
        for (int j = 0; j < HS; j += 2) {
            double ang = pos * pow(10000.0, -(double)j / HS);
            double c = cos(ang), s = sin(ang);
            double a = v[h * HS + j], b = v[h * HS + j + 1];
            v[h * HS + j] = a * c - b * s;
            v[h * HS + j + 1] = a * s + b * c;
        }
}

/* Logits (T, V) of one sequence of T tokens. */
static void ref_forward_seq(const ref_t *r, const int32_t *tok, int T, double *logits)
{
    const plait_model_config_t *c = &r->m->cfg;
    int C = c->dim, H = c->hidden_dim, KV = c->kv_dim, HS = c->head_size, NH = c->n_heads,
        V = c->vocab_size;
    int grp = c->n_heads / c->n_kv_heads;
    size_t Lz = (size_t)c->n_layers;
    double *kc = calloc(Lz * (size_t)T * (size_t)KV, sizeof(double));
    double *vc = calloc(Lz * (size_t)T * (size_t)KV, sizeof(double));
    double *x = malloc((size_t)C * sizeof(double)), *xb = malloc((size_t)C * sizeof(double));
    double *q = malloc((size_t)C * sizeof(double)), *ao = malloc((size_t)C * sizeof(double));
    double *o = malloc((size_t)C * sizeof(double));
    double *h1 = malloc((size_t)H * sizeof(double)), *h3 = malloc((size_t)H * sizeof(double));
    double *att = malloc((size_t)T * sizeof(double));
    ck_assert(kc && vc && x && xb && q && ao && o && h1 && h3 && att);
    for (int t = 0; t < T; t++) {
        for (int i = 0; i < C; i++)
            x[i] = r->m->w.token_embedding[(size_t)tok[t] * (size_t)C + (size_t)i];
        for (int l = 0; l < c->n_layers; l++) {
            double *kl = kc + ((size_t)l * (size_t)T + (size_t)t) * (size_t)KV;
            double *vl = vc + ((size_t)l * (size_t)T + (size_t)t) * (size_t)KV;
            ref_rmsnorm(xb, x, r->m->w.rms_att + (size_t)l * (size_t)C, C);
            ref_proj(r, l, PLAIT_WQ, xb, q);
            ref_proj(r, l, PLAIT_WK, xb, kl);
            ref_proj(r, l, PLAIT_WV, xb, vl);
            ref_rope(q, NH, HS, t);
            ref_rope(kl, c->n_kv_heads, HS, t);
            for (int h = 0; h < NH; h++) {
                int kh = h / grp;
                double mx = -1e300;
                for (int s = 0; s <= t; s++) {
                    const double *k =
                        kc + ((size_t)l * (size_t)T + (size_t)s) * (size_t)KV + (size_t)(kh * HS);
                    double d = 0.0;
                    for (int i = 0; i < HS; i++)
                        d += q[h * HS + i] * k[i];
                    att[s] = d / sqrt((double)HS);
                    if (att[s] > mx) mx = att[s];
                }
                double sum = 0.0;
                for (int s = 0; s <= t; s++)
                    sum += (att[s] = exp(att[s] - mx));
                for (int i = 0; i < HS; i++)
                    ao[h * HS + i] = 0.0;
                for (int s = 0; s <= t; s++) {
                    const double *v =
                        vc + ((size_t)l * (size_t)T + (size_t)s) * (size_t)KV + (size_t)(kh * HS);
                    for (int i = 0; i < HS; i++)
                        ao[h * HS + i] += att[s] / sum * v[i];
                }
            }
            ref_proj(r, l, PLAIT_WO, ao, o);
            for (int i = 0; i < C; i++)
                x[i] += o[i];
            ref_rmsnorm(xb, x, r->m->w.rms_ffn + (size_t)l * (size_t)C, C);
            ref_proj(r, l, PLAIT_W1, xb, h1);
            ref_proj(r, l, PLAIT_W3, xb, h3);
            for (int i = 0; i < H; i++)
                h1[i] = h1[i] / (1.0 + exp(-h1[i])) * h3[i];
            ref_proj(r, l, PLAIT_W2, h1, o);
            for (int i = 0; i < C; i++)
                x[i] += o[i];
        }
        ref_rmsnorm(xb, x, r->m->w.rms_final, C);
        for (int v = 0; v < V; v++) {
            double acc = 0.0;
            for (int i = 0; i < C; i++)
                acc += (double)r->m->w.wcls[(size_t)v * (size_t)C + (size_t)i] * xb[i];
            logits[(size_t)t * (size_t)V + (size_t)v] = acc;
        }
    }
    free(kc), free(vc), free(x), free(xb), free(q), free(ao), free(o), free(h1), free(h3),
        free(att);
}

/* Mean cross-entropy of nrows rows of T + 1 tokens. */
static double ref_loss(const ref_t *r, const int32_t *tokens, int nrows, int T)
{
    int V = r->m->cfg.vocab_size;
    double *lg = malloc((size_t)T * (size_t)V * sizeof(double));
    ck_assert(lg);
    double tot = 0.0;
    for (int b = 0; b < nrows; b++) {
        const int32_t *row = tokens + (size_t)b * (size_t)(T + 1);
        ref_forward_seq(r, row, T, lg);
        for (int t = 0; t < T; t++) {
            const double *z = lg + (size_t)t * (size_t)V;
            double mx = z[0];
            for (int v = 1; v < V; v++)
                if (z[v] > mx) mx = z[v];
            double s = 0.0;
            for (int v = 0; v < V; v++)
                s += exp(z[v] - mx);
            tot += log(s) + mx - z[row[t + 1]];
        }
    }
    free(lg);
    return tot / ((double)nrows * T);
}

/* ------------------------------------------------ the gradient comparator */

/* Worst ratio |g - fd| / tolerance over the checks (> 1 means a failure).
 * g holds the trainer's gradient for params[goff ..]; p is the double copy of
 * the adapter, perturbed in place and restored. */
static double grad_worst(const ref_t *r, double *p, const float *g, size_t goff,
                         const int32_t *tokens, int B, int T, uint64_t seed, double *gmax_out)
{
    const plait_lora_t *l = r->l;
    size_t n = l->n_params;
    uint64_t rs = seed;
    /* Reference gradient at the sampled coordinates (all of them when small). */
    int full = n <= 1000; /* every coordinate of shapes 0, 1, 2 and 7 */
    size_t nsamp = 0, cap = full ? n : 8 * (size_t)l->model.n_layers * PLAIT_NPROJ + 16;
    size_t *idx = malloc(cap * sizeof(size_t));
    double *fd = malloc(cap * sizeof(double));
    ck_assert(idx && fd);
    if (full) {
        for (size_t i = goff; i < n; i++)
            idx[nsamp++] = i;
    } else {
        for (int layer = 0; layer < l->model.n_layers; layer++)
            for (int pj = 0; pj < PLAIT_NPROJ; pj++) {
                size_t slot = plait_lora_slot(layer, (plait_proj_t)pj);
                if (!l->A[slot]) continue;
                int in, out;
                plait_proj_shape(&l->model, (plait_proj_t)pj, &in, &out);
                size_t na = (size_t)l->cfg.rank * (size_t)in,
                       nb = (size_t)out * (size_t)l->cfg.rank;
                size_t oa = (size_t)(l->A[slot] - l->params), ob = (size_t)(l->B[slot] - l->params);
                if (oa >= goff) {
                    idx[nsamp++] = oa;
                    idx[nsamp++] = oa + na - 1;
                    idx[nsamp++] = oa + (size_t)(tu_splitmix64(&rs) % na);
                }
                idx[nsamp++] = ob;
                idx[nsamp++] = ob + nb - 1;
                idx[nsamp++] = ob + (size_t)(tu_splitmix64(&rs) % nb);
            }
    }
    double gmax = 0.0;
    for (size_t k = 0; k < nsamp; k++) {
        size_t i = idx[k];
        double p0 = p[i];
        p[i] = p0 + FD_H;
        double lp = ref_loss(r, tokens, B, T);
        p[i] = p0 - FD_H;
        double lm = ref_loss(r, tokens, B, T);
        p[i] = p0;
        fd[k] = (lp - lm) / (2.0 * FD_H);
        if (fabs(fd[k]) > gmax) gmax = fabs(fd[k]);
    }
    /* In the sampled case the max over samples underestimates the true max;
     * also use the trainer's own max so a tiny sample cannot make the check
     * absurdly tight. */
    if (!full) {
        double gm = 0.0;
        for (size_t i = goff; i < n; i++)
            if (fabs((double)g[i - goff]) > gm) gm = fabs((double)g[i - goff]);
        if (gm > gmax) gmax = gm;
    }
    ck_assert_msg(gmax > 1e-8, "degenerate gradient (max %g): the check would be vacuous", gmax);
    double worst = 0.0;
    for (size_t k = 0; k < nsamp; k++) {
        double e = fabs((double)g[idx[k] - goff] - fd[k]) / (GRAD_RTOL * gmax);
        if (e > worst) worst = e;
    }
    /* Directional derivative over each tensor (every element is involved). */
    if (!full) {
        double *d = malloc(n * sizeof(double));
        ck_assert(d);
        for (int layer = 0; layer < l->model.n_layers; layer++)
            for (int pj = 0; pj < PLAIT_NPROJ; pj++)
                for (int isb = 0; isb < 2; isb++) {
                    size_t slot = plait_lora_slot(layer, (plait_proj_t)pj);
                    if (!l->A[slot]) continue;
                    int in, out;
                    plait_proj_shape(&l->model, (plait_proj_t)pj, &in, &out);
                    size_t off = (size_t)((isb ? l->B[slot] : l->A[slot]) - l->params);
                    size_t cnt = (size_t)l->cfg.rank * (size_t)(isb ? out : in);
                    if (off < goff) continue;
                    double gd = 0.0;
                    for (size_t i = 0; i < cnt; i++) {
                        d[i] = (tu_splitmix64(&rs) & 1) ? 1.0 : -1.0;
                        gd += d[i] * (double)g[off + i - goff];
                    }
                    for (size_t i = 0; i < cnt; i++)
                        p[off + i] += FD_H * d[i];
                    double lp = ref_loss(r, tokens, B, T);
                    for (size_t i = 0; i < cnt; i++)
                        p[off + i] -= 2.0 * FD_H * d[i];
                    double lm = ref_loss(r, tokens, B, T);
                    for (size_t i = 0; i < cnt; i++)
                        p[off + i] += FD_H * d[i];
                    double fdd = (lp - lm) / (2.0 * FD_H);
                    double e = fabs(gd - fdd) / (GRAD_RTOL * gmax * sqrt((double)cnt));
                    if (e > worst) worst = e;
                }
        free(d);
    }
    free(idx);
    free(fd);
    if (gmax_out) *gmax_out = gmax;
    return worst;
}

static void make_tokens(int32_t *tok, size_t n, int V, uint64_t seed)
{
    uint64_t s = seed;
    for (size_t i = 0; i < n; i++)
        tok[i] = (int32_t)(tu_splitmix64(&s) % (uint64_t)V);
}

/* ---------------------------------------------------- (a) loss + gradient */

static void check_shape_grad(const shape_t *s, int train_a, int perturb, double *worst_out)
{
    plait_model_t m;
    plait_lora_t l;
    tu_make_model(&m, s, 1000 + (uint64_t)s->C * 7 + (uint64_t)s->V);
    make_lora(&l, &m, s, 77 + (uint64_t)s->R);
    plait_train_config_t tc = plait_train_config_default();
    tc.B = s->B;
    tc.T = s->T;
    tc.threads = s->threads;
    tc.train_a = train_a;
    plait_trainer_t *tr = NULL;
    ck_assert_msg(plait_train_create(&tr, &m, &l, &tc) == 0, "%s", plait_errmsg());
    size_t ntok = (size_t)s->B * (size_t)(s->T + 1);
    int32_t *tok = malloc(ntok * sizeof(int32_t));
    ck_assert(tok);
    make_tokens(tok, ntok, s->V, 5 + (uint64_t)s->T);
    float loss = -1.0f;
    ck_assert_msg(plait_train_forward_backward(tr, tok, &loss) == 0, "%s", plait_errmsg());

    double *p = malloc(l.n_params * sizeof(double));
    ck_assert(p);
    for (size_t i = 0; i < l.n_params; i++)
        p[i] = l.params[i];
    ref_t r = {.m = &m, .l = &l, .p = p};
    double lref = ref_loss(&r, tok, s->B, s->T);
    ck_assert_msg(fabs((double)loss - lref) <= LOSS_RTOL * fabs(lref),
                  "shape C%d V%d: loss %.8g vs ref %.8g", s->C, s->V, (double)loss, lref);
    float ev = -1.0f;
    ck_assert_int_eq(plait_train_eval_loss(tr, tok, (size_t)s->B, &ev), 0);
    ck_assert_msg(fabs((double)ev - lref) <= LOSS_RTOL * fabs(lref), "eval %.8g vs ref %.8g",
                  (double)ev, lref);

    size_t goff = plait_train_grads_offset(tr), ng = plait_train_grads_count(tr);
    ck_assert_uint_eq(goff, train_a ? 0 : l.n_a);
    ck_assert_uint_eq(goff + ng, l.n_params);
    float *g = malloc(ng * sizeof(float));
    ck_assert(g);
    memcpy(g, plait_train_grads(tr), ng * sizeof(float));
    if (perturb) {
        /* The comparison must see a single coordinate off by 5% of the max. */
        float gm = 0.0f;
        for (size_t i = 0; i < ng; i++)
            if (fabsf(g[i]) > gm) gm = fabsf(g[i]);
        g[ng - 1] += 0.05f * gm;
    }
    double gmax = 0.0;
    double worst = grad_worst(&r, p, g, goff, tok, s->B, s->T, 99, &gmax);
    if (worst_out) *worst_out = worst;
    if (getenv("REVIEW_VERBOSE"))
        fprintf(stderr, "grad C%d V%d R%d T%d train_a %d perturb %d: gmax %.3g worst %.3g x tol\n",
                s->C, s->V, s->R, s->T, train_a, perturb, gmax, worst);
    if (!perturb)
        ck_assert_msg(
            worst <= 1.0,
            "shape C%d H%d L%d NH%d NKV%d V%d R%d tg%#x B%d T%d: gradient off, %.3g x tol", s->C,
            s->H, s->L, s->NH, s->NKV, s->V, s->R, s->targets, s->B, s->T, worst);
    free(g);
    free(p);
    free(tok);
    plait_train_destroy(tr);
    plait_lora_free(&l);
    plait_model_free(&m);
}

START_TEST(test_shape_grad)
{
    check_shape_grad(&SHAPES[_i], 1, 0, NULL);
}
END_TEST

START_TEST(test_shape_grad_ffa)
{
    /* FFA-LoRA: only B has gradients, offset n_a. */
    check_shape_grad(&SHAPES[_i], 0, 0, NULL);
}
END_TEST

START_TEST(test_grad_perturbed_detected)
{
    /* The comparison is not vacuous: a single coordinate wrong by 5% of the
     * max gradient is reported, on a fully checked and a sampled adapter. */
    double w = 0.0;
    check_shape_grad(&SHAPES[0], 1, 1, &w);
    ck_assert_msg(w > 1.0, "perturbed gradient passed (%.3g x tol)", w);
    check_shape_grad(&SHAPES[4], 1, 1, &w);
    ck_assert_msg(w > 1.0, "perturbed gradient passed (%.3g x tol)", w);
}
END_TEST

/* ------------------------------------------------------- (b) inference */

static void check_shape_infer(const shape_t *s, int merge, int chunk, int threads, int max_ctx)
{
    plait_model_t m;
    plait_lora_t l;
    tu_make_model(&m, s, 2000 + (uint64_t)s->C);
    make_lora(&l, &m, s, 31);
    int T = max_ctx ? max_ctx : s->seq; /* the whole context */
    int32_t *tok = malloc((size_t)T * sizeof(int32_t));
    int *itok = malloc((size_t)T * sizeof(int));
    double *lg = malloc((size_t)T * (size_t)s->V * sizeof(double));
    double *p = malloc(l.n_params * sizeof(double));
    ck_assert(tok && itok && lg && p);
    make_tokens(tok, (size_t)T, s->V, 17);
    for (int i = 0; i < T; i++)
        itok[i] = tok[i];
    for (size_t i = 0; i < l.n_params; i++)
        p[i] = l.params[i];
    ref_t r = {.m = &m, .l = &l, .p = p};
    ref_forward_seq(&r, tok, T, lg);

    plait_infer_config_t ic;
    plait_infer_config_default(&ic);
    ic.merge = merge;
    ic.prefill_chunk = chunk;
    ic.max_ctx = max_ctx;
    plait_pool_t *pool = NULL;
    if (threads > 1) {
        ck_assert_int_eq(plait_pool_create(&pool, threads), 0);
        ic.pool = pool;
    }
    plait_infer_t st;
    plait_infer_init(&st);
    ck_assert_msg(plait_infer_setup(&st, &m, &l, &ic) == 0, "%s", plait_errmsg());
    for (int t = 0; t < T; t++) {
        const float *z = NULL;
        ck_assert_int_eq(plait_infer_forward(&st, itok[t], t, &z), 0);
        const double *zr = lg + (size_t)t * (size_t)s->V;
        double mx = 0.0, worst = 0.0;
        for (int v = 0; v < s->V; v++)
            if (fabs(zr[v]) > mx) mx = fabs(zr[v]);
        for (int v = 0; v < s->V; v++) {
            double e = fabs((double)z[v] - zr[v]);
            if (e > worst) worst = e;
        }
        ck_assert_msg(worst <= LOGIT_RTOL * (1.0 + mx),
                      "C%d V%d merge %d pos %d: logit off by %g (max %g)", s->C, s->V, merge, t,
                      worst, mx);
    }
    /* Chunked prefill from position 0 and from a middle position. */
    for (int pos0 = 0; pos0 < T; pos0 += (T > 2 ? T / 2 : 1)) {
        const float *z = NULL;
        if (pos0 > 0) ck_assert_int_eq(plait_infer_prefill(&st, itok, (size_t)pos0, 0, &z), 0);
        ck_assert_int_eq(plait_infer_prefill(&st, itok + pos0, (size_t)(T - pos0), pos0, &z), 0);
        const double *zr = lg + (size_t)(T - 1) * (size_t)s->V;
        double mx = 0.0, worst = 0.0;
        for (int v = 0; v < s->V; v++) {
            if (fabs(zr[v]) > mx) mx = fabs(zr[v]);
            if (fabs((double)z[v] - zr[v]) > worst) worst = fabs((double)z[v] - zr[v]);
        }
        ck_assert_msg(worst <= LOGIT_RTOL * (1.0 + mx), "prefill C%d pos0 %d: off by %g", s->C,
                      pos0, worst);
    }
    /* A wrong position fails cleanly. */
    ck_assert_int_eq(plait_infer_forward(&st, 0, T, NULL), PLAIT_ETOOBIG);
    ck_assert_int_eq(plait_infer_forward(&st, s->V, 0, NULL), PLAIT_EINVAL);
    ck_assert_int_eq(plait_infer_forward(&st, -1, 0, NULL), PLAIT_EINVAL);
    plait_infer_free(&st);
    plait_pool_destroy(pool);
    free(tok), free(itok), free(lg), free(p);
    plait_lora_free(&l);
    plait_model_free(&m);
}

START_TEST(test_shape_infer_unmerged)
{
    check_shape_infer(&SHAPES[_i], 0, 3, 1, 0);
    /* A context shorter than the model's, on two threads. */
    if (SHAPES[_i].seq > 2) check_shape_infer(&SHAPES[_i], 0, 2, 2, SHAPES[_i].seq - 1);
}
END_TEST

START_TEST(test_shape_infer_merged)
{
    check_shape_infer(&SHAPES[_i], 1, 1 + _i % 5, 1 + _i % 3, 0);
}
END_TEST

/* ----------------------------------------------------------- (c) AdamW */

static void hand_adamw(double *p, double *mm, double *vv, const float *g, size_t n, double lr,
                       double wd, double b1, double b2, double eps, double clip, int t)
{
    double ss = 0.0;
    for (size_t i = 0; i < n; i++)
        ss += (double)g[i] * g[i];
    double norm = sqrt(ss), coef = 1.0;
    if (clip > 0.0 && norm > clip) coef = clip / (norm + 1e-6); /* torch clip_grad_norm_ */
    for (size_t i = 0; i < n; i++) {
        double gi = (double)g[i] * coef;
        mm[i] = b1 * mm[i] + (1 - b1) * gi;
        vv[i] = b2 * vv[i] + (1 - b2) * gi * gi;
        double mh = mm[i] / (1 - pow(b1, t)), vh = vv[i] / (1 - pow(b2, t));
        p[i] = p[i] * (1 - lr * wd) - lr * mh / (sqrt(vh) + eps);
    }
}

START_TEST(test_shape_adamw)
{
    const shape_t *s = &SHAPES[_i];
    plait_model_t m;
    plait_lora_t l;
    tu_make_model(&m, s, 3000);
    make_lora(&l, &m, s, 41);
    plait_train_config_t tc = plait_train_config_default();
    tc.B = s->B;
    tc.T = s->T;
    tc.threads = s->threads;
    tc.lr = 1e-2;
    tc.weight_decay = 0.1;
    tc.grad_clip = 0.0;
    tc.train_a = _i % 2 == 0;
    plait_trainer_t *tr = NULL;
    ck_assert_int_eq(plait_train_create(&tr, &m, &l, &tc), 0);
    size_t ntok = (size_t)s->B * (size_t)(s->T + 1), goff = plait_train_grads_offset(tr),
           ng = plait_train_grads_count(tr);
    int32_t *tok = malloc(ntok * sizeof(int32_t));
    double *p = malloc(l.n_params * sizeof(double)), *mm = calloc(ng, sizeof(double)),
           *vv = calloc(ng, sizeof(double));
    float *g = malloc(ng * sizeof(float));
    ck_assert(tok && p && mm && vv && g);
    for (size_t i = 0; i < l.n_params; i++)
        p[i] = l.params[i];
    for (int step = 1; step <= 2; step++) {
        make_tokens(tok, ntok, s->V, (uint64_t)step * 13);
        ck_assert_int_eq(plait_train_forward_backward(tr, tok, NULL), 0);
        memcpy(g, plait_train_grads(tr), ng * sizeof(float));
        double clip = 0.0; /* clipping: test_adamw_clipped */
        hand_adamw(p + goff, mm, vv, g, ng, tc.lr, tc.weight_decay, tc.beta1, tc.beta2, tc.eps,
                   clip, step);
        ck_assert_int_eq(plait_train_step(tr), 0);
        for (size_t i = 0; i < l.n_params; i++) {
            double e = fabs((double)l.params[i] - p[i]);
            ck_assert_msg(e <= ADAM_RTOL * tc.lr + 4 * FLT_EPSILON * fabs(p[i]),
                          "step %d param %zu: %.9g vs %.9g", step, i, (double)l.params[i], p[i]);
        }
        /* Gradients are zeroed by the step. */
        ck_assert_double_eq(plait_train_grad_norm(tr), 0.0);
    }
    plait_train_destroy(tr);
    free(tok), free(p), free(mm), free(vv), free(g);
    plait_lora_free(&l);
    plait_model_free(&m);
}
END_TEST

START_TEST(test_adamw_clipped)
{
    /* Clipping on: the clip threshold is a third of the gradient norm the
     * first batch produces (measured with a throwaway trainer). */
    const shape_t *s = &SHAPES[4];
    plait_model_t m;
    plait_lora_t l;
    tu_make_model(&m, s, 3100);
    make_lora(&l, &m, s, 43);
    size_t ntok = (size_t)s->B * (size_t)(s->T + 1);
    int32_t *tok = malloc(ntok * sizeof(int32_t));
    ck_assert(tok);
    make_tokens(tok, ntok, s->V, 3);
    plait_train_config_t tc = plait_train_config_default();
    tc.B = s->B;
    tc.T = s->T;
    tc.lr = 1e-2;
    plait_trainer_t *tr = NULL;
    ck_assert_int_eq(plait_train_create(&tr, &m, &l, &tc), 0);
    ck_assert_int_eq(plait_train_forward_backward(tr, tok, NULL), 0);
    double norm = plait_train_grad_norm(tr);
    plait_train_destroy(tr);
    tc.grad_clip = norm / 3.0;
    ck_assert_int_eq(plait_train_create(&tr, &m, &l, &tc), 0);
    size_t ng = plait_train_grads_count(tr);
    double *p = malloc(ng * sizeof(double)), *mm = calloc(ng, sizeof(double)),
           *vv = calloc(ng, sizeof(double));
    float *g = malloc(ng * sizeof(float));
    ck_assert(p && mm && vv && g);
    for (size_t i = 0; i < ng; i++)
        p[i] = l.params[i];
    ck_assert_int_eq(plait_train_forward_backward(tr, tok, NULL), 0);
    memcpy(g, plait_train_grads(tr), ng * sizeof(float));
    hand_adamw(p, mm, vv, g, ng, tc.lr, tc.weight_decay, tc.beta1, tc.beta2, tc.eps, tc.grad_clip,
               1);
    ck_assert_int_eq(plait_train_step(tr), 0);
    ck_assert_msg(fabs(plait_train_last_grad_norm(tr) - norm) <= 1e-5 * norm, "pre-clip norm");
    /* After clipping, m = 0.1 * g * coef, v = 0.001 (g coef)^2: the update
     * of the first step is sign-like, so compare the second step too. */
    make_tokens(tok, ntok, s->V, 4);
    ck_assert_int_eq(plait_train_forward_backward(tr, tok, NULL), 0);
    memcpy(g, plait_train_grads(tr), ng * sizeof(float));
    hand_adamw(p, mm, vv, g, ng, tc.lr, tc.weight_decay, tc.beta1, tc.beta2, tc.eps, tc.grad_clip,
               2);
    ck_assert_int_eq(plait_train_step(tr), 0);
    for (size_t i = 0; i < ng; i++)
        ck_assert_msg(fabs((double)l.params[i] - p[i]) <=
                          ADAM_RTOL * tc.lr + 4 * FLT_EPSILON * fabs(p[i]),
                      "param %zu: %.9g vs %.9g", i, (double)l.params[i], p[i]);
    plait_train_destroy(tr);
    free(tok), free(p), free(mm), free(vv), free(g);
    plait_lora_free(&l);
    plait_model_free(&m);
}
END_TEST

/* ============================================================ hostile input */

static char *scratch;

static void hostile_setup(void)
{
    scratch = tu_tmpdir("review");
    ck_assert_ptr_nonnull(scratch);
}

static void hostile_teardown(void)
{
    tu_rmdir(scratch);
    free(scratch);
    scratch = NULL;
}

/* -------------------------------------------------------- tokens, trainer */

START_TEST(test_tokens_out_of_range)
{
    const shape_t *s = &SHAPES[1]; /* V 300, B 3, T 17 */
    plait_model_t m;
    plait_lora_t l;
    tu_make_model(&m, s, 5);
    make_lora(&l, &m, s, 5);
    plait_train_config_t tc = plait_train_config_default();
    tc.B = s->B;
    tc.T = s->T;
    plait_trainer_t *tr = NULL;
    ck_assert_int_eq(plait_train_create(&tr, &m, &l, &tc), 0);
    size_t n = (size_t)s->B * (size_t)(s->T + 1);
    int32_t *tok = calloc(n, sizeof(int32_t));
    ck_assert_ptr_nonnull(tok);
    static const int32_t badv[] = {-1, 300, INT32_MAX, INT32_MIN, 301};
    for (size_t k = 0; k < sizeof(badv) / sizeof(badv[0]); k++) {
        for (size_t pos = 0; pos < n; pos += n - 1) { /* first id and the last target */
            memset(tok, 0, n * sizeof(int32_t));
            tok[pos] = badv[k];
            float loss = 123.0f;
            ck_assert_int_eq(plait_train_forward_backward(tr, tok, &loss), PLAIT_EINVAL);
            ck_assert_int_eq(plait_train_eval_loss(tr, tok, (size_t)s->B, &loss), PLAIT_EINVAL);
            ck_assert_double_eq(plait_train_grad_norm(tr), 0.0);
        }
    }
    /* No micro-batch was counted: a step now is refused, a valid one works. */
    ck_assert_int_eq(plait_train_step(tr), PLAIT_EINVAL);
    memset(tok, 0, n * sizeof(int32_t));
    float loss;
    ck_assert_int_eq(plait_train_eval_loss(tr, tok, 0, &loss), PLAIT_EINVAL);
    ck_assert_int_eq(plait_train_forward_backward(tr, tok, &loss), 0);
    ck_assert_int_eq(plait_train_forward_backward(tr, tok, &loss), PLAIT_EINVAL); /* accum 1 */
    ck_assert_int_eq(plait_train_step(tr), 0);
    /* More eval rows than B are evaluated in chunks. */
    int32_t *rows = calloc(7 * (size_t)(s->T + 1), sizeof(int32_t));
    ck_assert_ptr_nonnull(rows);
    make_tokens(rows, 7 * (size_t)(s->T + 1), s->V, 8);
    float l7, l1 = 0.0f, lsum = 0.0f;
    ck_assert_int_eq(plait_train_eval_loss(tr, rows, 7, &l7), 0);
    for (int r = 0; r < 7; r++) {
        ck_assert_int_eq(plait_train_eval_loss(tr, rows + (size_t)r * (size_t)(s->T + 1), 1, &l1),
                         0);
        lsum += l1;
    }
    ck_assert_msg(fabs((double)l7 - (double)lsum / 7.0) <= LOSS_RTOL * fabs((double)l7),
                  "eval chunks %g vs %g", (double)l7, (double)lsum / 7.0);
    free(rows);
    free(tok);
    plait_train_destroy(tr);
    /* Trainer configs at and beyond the limits. */
    tc.T = s->seq + 1;
    ck_assert_int_eq(plait_train_create(&tr, &m, &l, &tc), PLAIT_EINVAL);
    tc.T = 0;
    ck_assert_int_eq(plait_train_create(&tr, &m, &l, &tc), PLAIT_EINVAL);
    tc.T = s->T;
    tc.threads = 257;
    ck_assert_int_eq(plait_train_create(&tr, &m, &l, &tc), PLAIT_EINVAL);
    tc.threads = 1;
    tc.B = 0;
    ck_assert_int_eq(plait_train_create(&tr, &m, &l, &tc), PLAIT_EINVAL);
    tc.B = INT32_MAX;
    ck_assert_int_eq(plait_train_create(&tr, &m, &l, &tc), PLAIT_EINVAL);
    tc.B = 1;
    tc.lr = NAN;
    ck_assert_int_eq(plait_train_create(&tr, &m, &l, &tc), PLAIT_EINVAL);
    ck_assert_ptr_null(tr);
    plait_lora_free(&l);
    plait_model_free(&m);
}
END_TEST

/* ------------------------------------------- non-finite results are errors */

#include <sys/stat.h>
#include <sys/wait.h>

#include "plait/data.h"
#include "plait/tok.h"

/* An adapter for m whose every value is v: with v = 1e20 the LoRA term
 * (x·Aᵀ)·Bᵀ overflows float32 (1e40), so every logit is inf or NaN. */
static void huge_lora(plait_lora_t *l, const plait_model_t *m, float v)
{
    plait_lora_config_t lc;
    plait_lora_config_default(&lc);
    plait_lora_init(l);
    ck_assert_int_eq(plait_lora_setup(l, &m->cfg, &lc), 0);
    for (size_t i = 0; i < l->n_params; i++)
        l->params[i] = v;
}

START_TEST(test_save_refuses_nonfinite)
{
    /* An adapter the loader would refuse must not be written (the trainer
     * can produce one when it diverges). */
    shape_t s = {12, 37, 1, 2, 1, 300, 8, 1, 2, 4.0f, TGT(PLAIT_WQ), 1, 2, 1};
    plait_model_t m;
    plait_lora_t l;
    tu_make_model(&m, &s, 9);
    make_lora(&l, &m, &s, 1);
    uint8_t sha[32] = {0}, *img = NULL;
    size_t len = 0;
    ck_assert_int_eq(plait_adapter_save_mem(&l, sha, &img, &len), 0);
    free(img);
    img = NULL;
    static const float bad[] = {NAN, INFINITY, -INFINITY};
    for (size_t k = 0; k < 3; k++) {
        float keep = l.params[l.n_params / 2];
        l.params[l.n_params / 2] = bad[k];
        int rc = plait_adapter_save_mem(&l, sha, &img, &len);
        ck_assert_msg(rc == PLAIT_EINVAL, "non-finite adapter saved (rc %d)", rc);
        ck_assert_ptr_null(img);
        l.params[l.n_params / 2] = keep;
    }
    plait_lora_free(&l);
    plait_model_free(&m);
}
END_TEST

START_TEST(test_eval_nonfinite_is_error)
{
    shape_t s = {16, 37, 1, 2, 1, 300, 16, 1, 8, 16.0f, TGT(PLAIT_WQ) | TGT(PLAIT_WV), 2, 8, 1};
    plait_model_t m;
    plait_lora_t l;
    tu_make_model(&m, &s, 9);
    huge_lora(&l, &m, 1e20f);
    plait_train_config_t tc = plait_train_config_default();
    tc.B = 2;
    tc.T = 8;
    plait_trainer_t *tr = NULL;
    ck_assert_int_eq(plait_train_create(&tr, &m, &l, &tc), 0);
    plait_corpus_t c;
    plait_corpus_init(&c);
    c.n = c.cap = 100;
    c.tokens = calloc(c.cap, sizeof(int32_t));
    ck_assert_ptr_nonnull(c.tokens);
    make_tokens(c.tokens, c.n, s.V, 2);
    double loss = 0.0;
    int rc = plait_corpus_eval(&c, tr, tc.T, 0, &loss, NULL);
    ck_assert_msg(rc == PLAIT_EPROTO, "eval of an overflowing adapter: rc %d, loss %g", rc, loss);
    plait_corpus_free(&c);
    plait_train_destroy(tr);
    plait_lora_free(&l);
    plait_model_free(&m);
}
END_TEST

static int count_piece(void *ctx, const char *piece, size_t len)
{
    (void)piece;
    *(size_t *)ctx += len;
    return 0;
}

START_TEST(test_generate_nonfinite_is_error)
{
    plait_model_t m;
    plait_tok_t tok;
    plait_model_init(&m);
    plait_tok_init(&tok);
    char *mp = tu_path(tu_assets_dir(), "stories260K.bin"),
         *tp = tu_path(tu_assets_dir(), "tok512.bin");
    ck_assert_int_eq(plait_model_load(&m, mp), 0);
    ck_assert_int_eq(plait_tok_load(&tok, tp, m.cfg.vocab_size), 0);
    plait_lora_t l;
    huge_lora(&l, &m, 1e20f);
    for (int merge = 0; merge < 2; merge++) {
        plait_infer_config_t ic;
        plait_infer_config_default(&ic);
        ic.merge = merge;
        plait_infer_t st;
        plait_infer_init(&st);
        ck_assert_int_eq(plait_infer_setup(&st, &m, &l, &ic), 0);
        plait_gen_config_t g;
        plait_gen_config_default(&g);
        g.steps = 8;
        for (int greedy = 0; greedy < 2; greedy++) {
            g.temperature = greedy ? 0.0f : 1.0f;
            size_t emitted = 0;
            int rc = plait_generate(&st, &tok, "Once", &g, count_piece, &emitted, NULL);
            ck_assert_msg(rc == PLAIT_EPROTO,
                          "merge %d greedy %d: generate on NaN logits returned %d", merge, greedy,
                          rc);
        }
        plait_infer_free(&st);
    }
    plait_lora_free(&l);
    plait_tok_free(&tok);
    plait_model_free(&m);
    free(mp);
    free(tp);
}
END_TEST

/* Run plait-agent with args; returns the exit status (128 on a signal). */
static int agent(char *out, size_t cap, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
#include <stdarg.h>
static int agent(char *out, size_t cap, const char *fmt, ...)
{
    char args[4096], cmd[8192], log[1200];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(args, sizeof(args), fmt, ap);
    va_end(ap);
    snprintf(log, sizeof(log), "%s/out.txt", scratch);
    snprintf(cmd, sizeof(cmd), "PLAIT_ASSETS='%s' timeout 60 '%s/client/plait-agent' %s >'%s' 2>&1",
             tu_assets_dir(), PLAIT_BINARY_DIR, args, log);
    int st = system(cmd);
    size_t n = 0;
    uint8_t *b = tu_read_file(log, &n);
    if (out && cap) snprintf(out, cap, "%s", b ? (char *)b : "");
    free(b);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128;
}

START_TEST(test_cli_nonfinite_train)
{
    /* train from an adapter that overflows: must fail and write nothing
     * (before: NaN loss printed, exit 0, and an adapter written that the
     * agent itself refuses to load). eval must fail too (before: "loss nan",
     * and --json printed nan, which is not JSON). */
    plait_model_t m;
    plait_model_init(&m);
    char *mp = tu_path(tu_assets_dir(), "stories260K.bin");
    ck_assert_int_eq(plait_model_load(&m, mp), 0);
    plait_lora_t l;
    huge_lora(&l, &m, 1e20f);
    char *ad = tu_path(scratch, "huge.safetensors"), *outp = tu_path(scratch, "out.safetensors"),
         *txt = tu_path(scratch, "t.txt");
    ck_assert_int_eq(plait_adapter_save(ad, &l, m.sha256), 0);
    static const char text[] =
        "Once upon a time there was a little girl. She liked to play in the park with her dog.\n";
    ck_assert_int_eq(tu_write_file(txt, text, sizeof(text) - 1), 0);
    char out[4096];
    int rc = agent(out, sizeof(out),
                   "train --text '%s' --init-adapter '%s' --out '%s' --steps 2 --seq 8 --batch 2",
                   txt, ad, outp);
    ck_assert_msg(rc == 1, "train exit %d: %s", rc, out);
    ck_assert_msg(strstr(out, "non-finite") != NULL, "no clear message: %s", out);
    struct stat sb;
    ck_assert_msg(stat(outp, &sb) != 0, "an adapter was written");
    rc = agent(out, sizeof(out), "eval --text '%s' --adapter '%s' --seq 8 --json", txt, ad);
    ck_assert_msg(rc == 1, "eval exit %d: %s", rc, out);
    ck_assert_msg(strstr(out, "nan") == NULL, "eval printed nan: %s", out);
    rc = agent(out, sizeof(out), "generate --adapter '%s' --steps 8 --temperature 0", ad);
    ck_assert_msg(rc == 1, "generate exit %d: %s", rc, out);
    free(ad), free(outp), free(txt), free(mp);
    plait_lora_free(&l);
    plait_model_free(&m);
}
END_TEST

START_TEST(test_cli_hostile_flags)
{
    char out[4096];
    char *txt = tu_path(scratch, "t.txt"), *outp = tu_path(scratch, "o.safetensors"),
         *db = tu_path(scratch, "s.db"), *jl = tu_path(scratch, "one.jsonl");
    static const char text[] =
        "Once upon a time there was a little girl. She liked to play in the park with her dog.\n";
    ck_assert_int_eq(tu_write_file(txt, text, sizeof(text) - 1), 0);
    static const char *bad[] = {
        "--seq 513",                  /* beyond the model's seq_len 512 */
        "--seq 99999999999999999999", /* overflow */
        "--batch 99999999999999999999",
        "--batch -1",
        "--batch 0",
        "--threads 257",
        "--threads 0",
        "--steps -1",
        "--rank 0",
        "--rank 1025",
        "--alpha nan",
        "--lr inf",
        "--targets wq,,wv",
        "--targets xx",
        "--seq 200", /* more than the text holds */
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        int rc =
            agent(out, sizeof(out), "train --text '%s' --out '%s' --steps 1 %s", txt, outp, bad[i]);
        ck_assert_msg(rc == 1 || rc == 2, "'%s': exit %d: %s", bad[i], rc, out);
        ck_assert_msg(strchr(out, '\n') != NULL && strlen(out) > 10, "'%s': no message", bad[i]);
    }
    /* --steps 0 would write an untrained adapter: refused (#11); --threads 256 is legal. */
    ck_assert_int_eq(agent(out, sizeof(out),
                           "train --text '%s' --out '%s' --steps 0 --seq 8 --quiet", txt, outp),
                     2);
    ck_assert_int_eq(agent(out, sizeof(out),
                           "train --text '%s' --out '%s' --steps 1 --seq 8 --threads 256 --quiet",
                           txt, outp),
                     0);
    /* A store whose one record is in the train split: eval of the held-out
     * split has nothing to evaluate and says so. */
    static const char one[] = "{\"text\":\"hello there\"}\n";
    ck_assert_int_eq(tu_write_file(jl, one, sizeof(one) - 1), 0);
    ck_assert_int_eq(agent(out, sizeof(out), "ingest --db '%s' --jsonl '%s'", db, jl), 0);
    int rc = agent(out, sizeof(out), "eval --db '%s'", db);
    ck_assert_msg(rc == 1 && strstr(out, "fewer than one window"), "eval exit %d: %s", rc, out);
    rc = agent(out, sizeof(out), "train --db '%s' --out '%s' --steps 1", db, outp);
    ck_assert_msg(rc == 1 && strstr(out, "fewer than one sequence"), "train exit %d: %s", rc, out);
    /* Empty store. */
    char *db2 = tu_path(scratch, "empty.db"), *empty = tu_path(scratch, "empty.jsonl");
    ck_assert_int_eq(tu_write_file(empty, "", 0), 0);
    /* An ingest that adds nothing is refused (#11), but leaves the empty store it created. */
    ck_assert_int_eq(agent(out, sizeof(out), "ingest --db '%s' --jsonl '%s'", db2, empty), 1);
    ck_assert_ptr_nonnull(strstr(out, "holds no records"));
    rc = agent(out, sizeof(out), "train --db '%s' --out '%s' --steps 1 --seq 4", db2, outp);
    ck_assert_msg(rc == 1, "train on an empty store: exit %d: %s", rc, out);
    /* Token files for --dump-grads: ids out of range, wrong size. */
    char *tk = tu_path(scratch, "tok.i32"), *init = tu_path(scratch, "init.safetensors"),
         *dump = tu_path(scratch, "g.safetensors");
    ck_assert_int_eq(agent(out, sizeof(out),
                           "train --text '%s' --out '%s' --steps 1 --seq 8 --quiet", txt, init),
                     0);
    static const int32_t ids[][3] = {{1, 2, 512}, {1, -1, 3}, {INT32_MIN, 2, 3}, {1, 2, INT32_MAX}};
    for (size_t i = 0; i < 4; i++) {
        ck_assert_int_eq(tu_write_file(tk, ids[i], sizeof(ids[i])), 0);
        rc = agent(out, sizeof(out),
                   "train --init-adapter '%s' --tokens '%s' --batch 1 --seq 2 --dump-grads '%s'",
                   init, tk, dump);
        ck_assert_msg(rc == 1 && strstr(out, "outside"), "ids %zu: exit %d: %s", i, rc, out);
    }
    rc = agent(out, sizeof(out),
               "train --init-adapter '%s' --tokens '%s' --batch 2 --seq 2 --dump-grads '%s'", init,
               tk, dump);
    ck_assert_msg(rc == 1, "short token file: exit %d: %s", rc, out);
    free(txt), free(outp), free(db), free(jl), free(db2), free(empty), free(tk), free(init),
        free(dump);
}
END_TEST

/* --------------------------------------------------------------------- cli */

#include "plait/cli.h"


START_TEST(test_lora_targets_trailing_comma)
{
    /* "wq,,wv" and ",wq" were refused (empty name) but "wq," was accepted,
     * by the CLI and as adapter metadata alike. */
    uint32_t mask = 0;
    ck_assert_int_eq(plait_lora_parse_targets("wq,,wv", &mask), PLAIT_EINVAL);
    ck_assert_int_eq(plait_lora_parse_targets(",wq", &mask), PLAIT_EINVAL);
    ck_assert_int_eq(plait_lora_parse_targets("wq,", &mask), PLAIT_EINVAL);
    ck_assert_int_eq(plait_lora_parse_targets(",", &mask), PLAIT_EINVAL);
    ck_assert_int_eq(mask, 0);
    ck_assert_int_eq(plait_lora_parse_targets("wq,wv", &mask), 0);
    ck_assert_uint_eq(mask, TGT(PLAIT_WQ) | TGT(PLAIT_WV));
}
END_TEST

START_TEST(test_sampler_tiny_temperature)
{
    /* A tiny positive temperature (the CLI accepts 0..100) must act like a
     * near-greedy one. logits / 1e-38 overflowed to inf, softmax made NaN,
     * and the sampler returned token 0 (top-p) or V-1 (full distribution):
     * `generate --temperature 1e-38` printed <unk><unk>... */
    float logits[300];
    for (int i = 0; i < 300; i++)
        logits[i] = (float)((i * 37) % 101) * 0.1f - 3.0f;
    logits[123] = 9.0f;
    static const float temps[] = {1e-38f, 1e-30f, 1e-45f};
    static const float topps[] = {0.9f, 1.0f, 0.0f};
    for (size_t a = 0; a < 3; a++)
        for (size_t b = 0; b < 3; b++) {
            plait_sampler_t smp;
            plait_sampler_init(&smp);
            ck_assert_int_eq(plait_sampler_setup(&smp, 300, temps[a], topps[b], 5), 0);
            for (int k = 0; k < 5; k++) {
                int id = plait_sampler_sample(&smp, logits);
                ck_assert_msg(id == 123, "temperature %g top-p %g: sampled %d", (double)temps[a],
                              (double)topps[b], id);
            }
            plait_sampler_free(&smp);
        }
}
END_TEST

/* ---------------------------------------- found by review in train.c, now fixed
 */

START_TEST(test_routed_train_nonfinite_loss)
{
    /* plait_train_forward_backward on a micro-batch whose loss is not finite
     * returns 0, reports loss NaN and ADDS NaN to the gradient arena; the
     * next plait_train_step then makes every trained parameter NaN (clipping
     * cannot help: coef = clip / NaN). Expected: an error (e.g. PLAIT_EPROTO)
     * with the gradients untouched, as for a bad token id. */
    shape_t s = {16, 37, 1, 2, 1, 300, 16, 1, 8, 16.0f, TGT(PLAIT_WQ) | TGT(PLAIT_WV), 2, 8, 1};
    plait_model_t m;
    plait_lora_t l;
    tu_make_model(&m, &s, 9);
    huge_lora(&l, &m, 1e20f);
    plait_train_config_t tc = plait_train_config_default();
    tc.B = 2;
    tc.T = 8;
    plait_trainer_t *tr = NULL;
    ck_assert_int_eq(plait_train_create(&tr, &m, &l, &tc), 0);
    int32_t tok[18];
    make_tokens(tok, 18, s.V, 1);
    float loss = 0.0f;
    int rc = plait_train_forward_backward(tr, tok, &loss);
    double gn = plait_train_grad_norm(tr);
    plait_train_destroy(tr);
    plait_lora_free(&l);
    plait_model_free(&m);
    ck_assert_msg(rc != 0 || isfinite(loss), "forward_backward returned 0 with loss %g",
                  (double)loss);
    ck_assert_msg(gn == 0.0, "gradients touched on a failed micro-batch (norm %g)", gn);
}
END_TEST

START_TEST(test_accum_equals_big_batch)
{
    /* accum_steps 2 of B rows gives the gradient of one batch of 2B rows,
     * on an odd shape (HS 6, NKV NH/2, rank 3, all targets, two threads). */
    shape_t s = {36, 37, 2, 6, 3, 300, 9, 0, 3, 5.0f, ALL7, 2, 9, 2};
    plait_model_t m;
    plait_lora_t l;
    tu_make_model(&m, &s, 21);
    make_lora(&l, &m, &s, 22);
    int32_t tok[4 * 10];
    make_tokens(tok, 40, s.V, 23);
    plait_train_config_t tc = plait_train_config_default();
    tc.T = 9;
    tc.threads = 2;
    tc.B = 4;
    plait_trainer_t *big = NULL, *acc = NULL;
    ck_assert_int_eq(plait_train_create(&big, &m, &l, &tc), 0);
    tc.B = 2;
    tc.accum_steps = 2;
    ck_assert_int_eq(plait_train_create(&acc, &m, &l, &tc), 0);
    float lb, l1, l2;
    ck_assert_int_eq(plait_train_forward_backward(big, tok, &lb), 0);
    ck_assert_int_eq(plait_train_forward_backward(acc, tok, &l1), 0);
    ck_assert_int_eq(plait_train_step(acc), PLAIT_EINVAL); /* one of two micro-batches */
    ck_assert_int_eq(plait_train_forward_backward(acc, tok + 20, &l2), 0);
    ck_assert(fabs((double)lb - 0.5 * ((double)l1 + (double)l2)) <= LOSS_RTOL * fabs((double)lb));
    const float *gb = plait_train_grads(big), *ga = plait_train_grads(acc);
    size_t n = plait_train_grads_count(big);
    double gmax = 0.0, worst = 0.0;
    for (size_t i = 0; i < n; i++)
        gmax = fmax(gmax, fabs((double)gb[i]));
    for (size_t i = 0; i < n; i++)
        worst = fmax(worst, fabs((double)gb[i] - (double)ga[i]));
    ck_assert_msg(worst <= GRAD_RTOL * gmax, "accumulated gradient off by %g (max %g)", worst,
                  gmax);
    plait_train_destroy(big);
    plait_train_destroy(acc);
    plait_lora_free(&l);
    plait_model_free(&m);
}
END_TEST

START_TEST(test_adapter_other_shape)
{
    /* An adapter made for another shape is refused by trainer and inference. */
    shape_t a = {16, 37, 1, 2, 1, 300, 8, 1, 2, 4.0f, TGT(PLAIT_WQ), 1, 2, 1};
    shape_t b = a;
    b.NKV = 2; /* same dim, different kv_dim */
    plait_model_t ma, mb;
    plait_lora_t l;
    tu_make_model(&ma, &a, 1);
    tu_make_model(&mb, &b, 1);
    make_lora(&l, &ma, &a, 1);
    plait_train_config_t tc = plait_train_config_default();
    tc.B = 1;
    tc.T = 2;
    plait_trainer_t *tr = NULL;
    ck_assert_int_eq(plait_train_create(&tr, &mb, &l, &tc), PLAIT_EINVAL);
    plait_infer_t st;
    plait_infer_init(&st);
    ck_assert_int_eq(plait_infer_setup(&st, &mb, &l, NULL), PLAIT_EMISMATCH);
    plait_infer_free(&st);
    uint8_t sha[32] = {0}, *img = NULL;
    size_t len = 0;
    ck_assert_int_eq(plait_adapter_save_mem(&l, sha, &img, &len), 0);
    plait_lora_t l2;
    plait_lora_init(&l2);
    ck_assert_int_eq(plait_adapter_load_mem(&l2, img, len, &mb, 0), 0); /* wq is (C, C) in both */
    plait_lora_free(&l2);
    free(img);
    plait_lora_free(&l);
    make_lora(&l, &ma, &(shape_t){16, 37, 1, 2, 1, 300, 8, 1, 2, 4.0f, TGT(PLAIT_WK), 1, 2, 1}, 1);
    ck_assert_int_eq(plait_adapter_save_mem(&l, sha, &img, &len), 0);
    ck_assert_int_eq(plait_adapter_load_mem(&l2, img, len, &mb, 0),
                     PLAIT_EPROTO); /* wk is (KV, C) */
    free(img);
    plait_lora_free(&l);
    plait_model_free(&ma);
    plait_model_free(&mb);
}
END_TEST

/* -------------------------------------------------------------- suite */


START_TEST(test_corpus_eval_checks_T)
{
    /* plait_corpus_eval stages rows of T + 1 tokens for a trainer that reads
     * its own T + 1: a different T is refused instead of read out of bounds. */
    shape_t s = {16, 37, 1, 2, 1, 300, 16, 1, 2, 4.0f, TGT(PLAIT_WQ), 2, 8, 1};
    plait_model_t m;
    plait_lora_t l;
    tu_make_model(&m, &s, 9);
    make_lora(&l, &m, &s, 3);
    plait_train_config_t tc = plait_train_config_default();
    tc.B = 2;
    tc.T = 8;
    plait_trainer_t *tr = NULL;
    ck_assert_int_eq(plait_train_create(&tr, &m, &l, &tc), 0);
    ck_assert_int_eq(plait_train_seq_len(tr), 8);
    plait_corpus_t c;
    plait_corpus_init(&c);
    int32_t toks[100];
    for (int i = 0; i < 100; i++) toks[i] = (int32_t)(i * 7 % 300);
    c.tokens = toks;
    c.n = 100;
    double loss = 0;
    ck_assert_int_eq(plait_corpus_eval(&c, tr, 4, 0, &loss, NULL), PLAIT_EINVAL);
    ck_assert_int_eq(plait_corpus_eval(&c, tr, 8, 0, &loss, NULL), 0);
    ck_assert(isfinite(loss));
    plait_train_destroy(tr);
    plait_lora_free(&l);
    plait_model_free(&m);
}
END_TEST

Suite *engine_suite(void)
{
    Suite *s = suite_create("engine");
    TCase *tc = tcase_create("shapes");
    tcase_set_timeout(tc, 120);
    tcase_add_loop_test(tc, test_shape_grad, 0, (int)N_SHAPES);
    tcase_add_loop_test(tc, test_shape_grad_ffa, 0, 3);
    tcase_add_test(tc, test_grad_perturbed_detected);
    tcase_add_loop_test(tc, test_shape_infer_unmerged, 0, (int)N_SHAPES);
    tcase_add_loop_test(tc, test_shape_infer_merged, 0, (int)N_SHAPES);
    tcase_add_loop_test(tc, test_shape_adamw, 0, (int)N_SHAPES);
    tcase_add_test(tc, test_adamw_clipped);
    tcase_add_test(tc, test_accum_equals_big_batch);
    tcase_add_test(tc, test_adapter_other_shape);
    suite_add_tcase(s, tc);
    TCase *th = tcase_create("hostile");
    tcase_add_checked_fixture(th, hostile_setup, hostile_teardown);
    tcase_set_timeout(th, 60);
    tcase_add_test(th, test_tokens_out_of_range);
    tcase_add_test(th, test_save_refuses_nonfinite);
    tcase_add_test(th, test_eval_nonfinite_is_error);
    tcase_add_test(th, test_generate_nonfinite_is_error);
    tcase_add_test(th, test_cli_nonfinite_train);
    tcase_add_test(th, test_cli_hostile_flags);
    tcase_add_test(th, test_lora_targets_trailing_comma);
    tcase_add_test(th, test_sampler_tiny_temperature);
    suite_add_tcase(s, th);
    TCase *tr = tcase_create("routed");
    tcase_add_test(tr, test_routed_train_nonfinite_loss);
    tcase_add_test(tr, test_corpus_eval_checks_T);
    suite_add_tcase(s, tr);
    return s;
}
