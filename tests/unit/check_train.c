/*
 * check_train.c: the training engine against PyTorch float64 references
 * (loss, adapter gradients, AdamW steps 1 and 2), against finite differences,
 * and its own contracts: FFA-LoRA, gradient accumulation, clipping, the
 * learning-rate schedule, token validation and threading.
 */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "plait/adapter.h"
#include "plait/train.h"
#include "tensor_int.h"
#include "testutil.h"

/* Gradients: |ours - ref| <= GRAD_RTOL * max|ref| per tensor (float32 vs
 * float64 deviates by at most ~5e-6 relative in the reference runs). */
#define GRAD_RTOL 1e-4
/* Loss: relative; the float32 reference run deviates by ~5e-8. */
#define LOSS_RTOL 1e-5
/* After AdamW steps: absolute, a hundredth of lr = 1e-3. After one step
 * every element moves by about lr whatever its gradient, so an element with a
 * near-zero gradient (tiny_untied layers.1.w3.lora_A deviates 1.2e-4
 * relative in float32, i.e. ~1e-7 absolute) cannot be compared tighter than
 * a fraction of lr, while a wrong update (sign, bias correction, decay) is
 * off by ~lr. */
#define STEP_ATOL 1e-5
/* Ill-conditioned elements: the first step moves an element by
 * lr * g / (|g| + eps), whose sensitivity to an error dg in g is
 * lr * eps * dg / (|g| + eps)^2. Where the reference gradient is near eps
 * (tiny_untied layers.1.w3.lora_A[66] has g = 2.7e-9), an error far inside
 * GRAD_RTOL moves the element by a sizable fraction of lr. Such an element
 * gets that sensitivity (for dg = GRAD_RTOL * max|g| of its tensor, capped at
 * ILL_TOL: each step moves an element by at most ~lr) added to its
 * tolerance, and there must be at most MAX_ILL of them per case so that the
 * tight check covers the rest. */
#define ADAM_LR 1e-3
#define ADAM_EPS 1e-8
#define ILL_TOL 4e-3
#define MAX_ILL 4
/* Finite differences: central, step FD_EPS, in float32 arithmetic. */
#define FD_EPS 1e-3
#define FD_ATOL 2e-4 /* absolute part, from float32 loss rounding / (2 eps) */
#define FD_RTOL 2e-2 /* relative part, from the O(eps^2) truncation error */
/* Different thread counts sum in a different order. */
#define THREAD_RTOL 1e-5
/* Accumulated vs one big batch: float32 sums in a different order. */
#define ACCUM_RTOL 1e-5

typedef struct {
    plait_model_t m;
    plait_lora_t lora;
    int32_t *tokens;
    int B, T;
    float lr;
    plait_safetensors_t grads, step1, step2;
} refcase_t;

static char *case_file(const char *cs, const char *name)
{
    char *dir = tu_path(tu_reference_dir(), cs);
    char *p = tu_path(dir, name);
    free(dir);
    return p;
}

static void refcase_load(refcase_t *rc, const char *cs, const char *model_path, int B, int T)
{
    memset(rc, 0, sizeof(*rc));
    plait_model_init(&rc->m);
    plait_lora_init(&rc->lora);
    ck_assert_msg(plait_model_load(&rc->m, model_path) == 0, "%s", plait_errmsg());
    char *p = case_file(cs, "adapter_init.safetensors");
    /* No IGNORE_BASE: the reference's base_sha256 must equal the model's hash. */
    ck_assert_msg(plait_adapter_load(&rc->lora, p, &rc->m, 0) == 0, "%s", plait_errmsg());
    free(p);
    p = case_file(cs, "tokens.i32");
    size_t len = 0;
    uint8_t *tok = tu_read_file(p, &len);
    ck_assert_ptr_nonnull(tok);
    ck_assert_uint_eq(len, (size_t)B * (size_t)(T + 1) * 4);
    rc->tokens = malloc(len);
    memcpy(rc->tokens, tok, len);
    free(tok);
    free(p);
    rc->B = B;
    rc->T = T;
    rc->lr = 1e-3f;
    const char *names[3] = {"grads.safetensors", "after_step1.safetensors", "after_step2.safetensors"};
    plait_safetensors_t *sts[3] = {&rc->grads, &rc->step1, &rc->step2};
    for (int i = 0; i < 3; i++) {
        p = case_file(cs, names[i]);
        ck_assert_msg(plait_safetensors_read(sts[i], p) == 0, "%s: %s", p, plait_errmsg());
        free(p);
    }
}

static void refcase_free(refcase_t *rc)
{
    plait_lora_free(&rc->lora);
    plait_model_free(&rc->m);
    plait_safetensors_free(&rc->grads);
    plait_safetensors_free(&rc->step1);
    plait_safetensors_free(&rc->step2);
    free(rc->tokens);
}

static plait_train_config_t ref_config(const refcase_t *rc, int threads)
{
    plait_train_config_t c = plait_train_config_default();
    c.B = rc->B;
    c.T = rc->T;
    c.lr = 1e-3;
    c.beta1 = 0.9;
    c.beta2 = 0.999;
    c.eps = 1e-8;
    c.weight_decay = 0.01;
    c.grad_clip = 0.0;
    c.threads = threads;
    return c;
}

/* Compare every adapter tensor of `vals` (floats at lora layout, offset goff)
 * with st: relative to the tensor's max (rtol > 0) or absolute (atol). */
static void compare_adapter(const plait_lora_t *l, const float *vals, size_t goff, const plait_safetensors_t *st,
                            double rtol, double atol, const plait_safetensors_t *cond, const char *what)
{
    size_t checked = 0, ill = 0;
    for (int layer = 0; layer < l->model.n_layers; layer++) {
        for (int p = 0; p < PLAIT_NPROJ; p++) {
            size_t slot = plait_lora_slot(layer, (plait_proj_t)p);
            if (!l->A[slot]) continue;
            for (int is_b = 0; is_b < 2; is_b++) {
                const float *param = is_b ? l->B[slot] : l->A[slot];
                size_t idx = (size_t)(param - l->params);
                if (idx < goff) continue;
                int in, out;
                plait_proj_shape(&l->model, (plait_proj_t)p, &in, &out);
                size_t n = (size_t)in * (size_t)l->cfg.rank;
                if (is_b) n = (size_t)out * (size_t)l->cfg.rank;
                char name[64];
                plait_adapter_tensor_name(name, sizeof(name), layer, (plait_proj_t)p, is_b);
                double *ref = malloc(n * sizeof(double));
                ck_assert_msg(plait_safetensors_get_f64(st, name, ref, n) == 0, "%s", plait_errmsg());
                double mx = 0.0;
                for (size_t i = 0; i < n; i++) mx = fmax(mx, fabs(ref[i]));
                double tol = rtol > 0 ? rtol * mx : atol;
                double *g = malloc(n * sizeof(double)), gmax = 0.0;
                if (cond) ck_assert_int_eq(plait_safetensors_get_f64(cond, name, g, n), 0);
                for (size_t i = 0; cond && i < n; i++) gmax = fmax(gmax, fabs(g[i]));
                const float *ours = vals + (idx - goff);
                for (size_t i = 0; i < n; i++) {
                    double d = fabs((double)ours[i] - ref[i]);
                    if (cond) {
                        double ge = fabs(g[i]) + ADAM_EPS;
                        double sens = ADAM_LR * ADAM_EPS * GRAD_RTOL * gmax / (ge * ge);
                        if (sens > STEP_ATOL) {
                            ill++;
                            ck_assert_msg(d <= STEP_ATOL + fmin(sens, ILL_TOL), "%s %s[%zu] (ill-conditioned): diff %.3g",
                                          what, name, i, d);
                            continue;
                        }
                    }
                    ck_assert_msg(d <= tol, "%s %s[%zu]: ours %.9g ref %.9g diff %.3g > tol %.3g", what, name, i,
                                  (double)ours[i], ref[i], d, tol);
                }
                checked += n;
                free(ref);
                free(g);
            }
        }
    }
    ck_assert_uint_gt(checked, 0);
    ck_assert_msg(ill <= MAX_ILL, "%s: %zu ill-conditioned elements", what, ill);
}

static void run_reference(const char *cs, const char *model_path, int B, int T, double loss_ref_check, int threads)
{
    refcase_t rc;
    refcase_load(&rc, cs, model_path, B, T);
    plait_train_config_t cfg = ref_config(&rc, threads);
    plait_trainer_t *tr;
    ck_assert_msg(plait_train_create(&tr, &rc.m, &rc.lora, &cfg) == 0, "%s", plait_errmsg());
    float loss;
    ck_assert_msg(plait_train_forward_backward(tr, rc.tokens, &loss) == 0, "%s", plait_errmsg());
    double ref_loss;
    ck_assert_int_eq(plait_safetensors_get_f64(&rc.grads, "loss", &ref_loss, 1), 0);
    ck_assert(fabs(ref_loss - loss_ref_check) < 1e-9); /* the file is the case.json value */
    ck_assert_msg(fabs((double)loss - ref_loss) <= LOSS_RTOL * fabs(ref_loss), "loss %.9g vs ref %.9g", (double)loss,
                  ref_loss);
    ck_assert_uint_eq(plait_train_grads_offset(tr), 0);
    ck_assert_uint_eq(plait_train_grads_count(tr), rc.lora.n_params);
    compare_adapter(&rc.lora, plait_train_grads(tr), 0, &rc.grads, GRAD_RTOL, 0, NULL, "grad");
    ck_assert_msg(plait_train_step(tr) == 0, "%s", plait_errmsg());
    compare_adapter(&rc.lora, rc.lora.params, 0, &rc.step1, 0, STEP_ATOL, &rc.grads, "step1");
    ck_assert_msg(plait_train_forward_backward(tr, rc.tokens, &loss) == 0, "%s", plait_errmsg());
    ck_assert(loss < ref_loss); /* one step on this batch lowers its loss */
    ck_assert_msg(plait_train_step(tr) == 0, "%s", plait_errmsg());
    compare_adapter(&rc.lora, rc.lora.params, 0, &rc.step2, 0, STEP_ATOL, &rc.grads, "step2");
    ck_assert_int_eq(plait_train_steps_done(tr), 2);
    plait_train_destroy(tr);
    refcase_free(&rc);
}

START_TEST(test_ref_stories260k)
{
    char *model = tu_path(tu_assets_dir(), "stories260K.bin");
    run_reference("stories260K_wq_wv_r8", model, 2, 32, 18.725818180317074, 1);
    free(model);
}
END_TEST

START_TEST(test_ref_tiny_untied)
{
    char *model = case_file("tiny_untied_all7_r4", "model.bin");
    run_reference("tiny_untied_all7_r4", model, 2, 16, 4.558780446288427, 1);
    free(model);
}
END_TEST

START_TEST(test_ref_threads)
{
    char *model = tu_path(tu_assets_dir(), "stories260K.bin");
    run_reference("stories260K_wq_wv_r8", model, 2, 32, 18.725818180317074, 3);
    free(model);
    model = case_file("tiny_untied_all7_r4", "model.bin");
    run_reference("tiny_untied_all7_r4", model, 2, 16, 4.558780446288427, 2);
    free(model);
}
END_TEST

/* Every kernel path this CPU has (loop index: portable, AVX2, AVX-512)
 * matches the references, the portable one included. */
START_TEST(test_ref_paths)
{
    int widest = plait_cpu_has_avx512() ? PLAIT__KPATH_AVX512 : plait_cpu_has_avx2_fma() ? PLAIT__KPATH_AVX2 : 0;
    if (_i > widest) return; /* not on this CPU */
    plait__tensor_force_path(_i);
    ck_assert_int_eq(plait__tensor_path(), _i);
    char *model = tu_path(tu_assets_dir(), "stories260K.bin");
    run_reference("stories260K_wq_wv_r8", model, 2, 32, 18.725818180317074, 2);
    free(model);
    model = case_file("tiny_untied_all7_r4", "model.bin");
    run_reference("tiny_untied_all7_r4", model, 2, 16, 4.558780446288427, 1);
    free(model);
    plait__tensor_force_path(-1);
}
END_TEST

/* The comparison itself can fail: a 1% error in one gradient is caught. */
START_TEST(test_ref_detects_error)
{
    refcase_t rc;
    char *model = tu_path(tu_assets_dir(), "stories260K.bin");
    refcase_load(&rc, "stories260K_wq_wv_r8", model, 2, 32);
    free(model);
    plait_train_config_t cfg = ref_config(&rc, 1);
    plait_trainer_t *tr;
    ck_assert_int_eq(plait_train_create(&tr, &rc.m, &rc.lora, &cfg), 0);
    float loss;
    ck_assert_int_eq(plait_train_forward_backward(tr, rc.tokens, &loss), 0);
    /* Perturb the largest gradient of layers.2.wv.lora_B by 1%. */
    float *g = (float *)plait_train_grads(tr) + (rc.lora.B[plait_lora_slot(2, PLAIT_WV)] - rc.lora.params);
    size_t n = 32 * 8, imax = 0;
    for (size_t i = 1; i < n; i++)
        if (fabsf(g[i]) > fabsf(g[imax])) imax = i;
    g[imax] *= 1.01f;
    double ref[256];
    ck_assert_int_eq(plait_safetensors_get_f64(&rc.grads, "layers.2.wv.lora_B", ref, n), 0);
    double mx = 0.0;
    for (size_t i = 0; i < n; i++) mx = fmax(mx, fabs(ref[i]));
    ck_assert(fabs((double)g[imax] - ref[imax]) > GRAD_RTOL * mx);
    plait_train_destroy(tr);
    refcase_free(&rc);
}
END_TEST

/* ------------------------------------------------------------ small models */

static plait_model_config_t small_cfg(int shared)
{
    plait_model_config_t c = {.dim = 16, .hidden_dim = 24, .n_layers = 2, .n_heads = 4, .n_kv_heads = 2,
                              .vocab_size = 40, .seq_len = 16, .shared = shared};
    return c;
}

/* Random adapter with B ~ U(-0.5, 0.5) so that every gradient is non-zero. */
static void random_adapter(plait_lora_t *l, const plait_model_t *m, uint32_t targets, int rank, uint64_t seed)
{
    plait_lora_config_t lc;
    plait_lora_config_default(&lc);
    lc.rank = rank;
    lc.targets = targets;
    plait_lora_init(l);
    ck_assert_int_eq(plait_lora_setup(l, &m->cfg, &lc), 0);
    plait_lora_init_weights(l, seed);
    uint64_t s = seed * 2654435761u + 1;
    for (size_t i = l->n_a; i < l->n_params; i++) {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        l->params[i] = (float)((double)(s >> 11) / 9007199254740992.0 - 0.5);
    }
}

static void random_tokens(int32_t *t, size_t n, int V, uint64_t seed)
{
    uint64_t s = seed;
    for (size_t i = 0; i < n; i++) {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        t[i] = (int32_t)((s >> 33) % (uint64_t)V);
    }
}

static double eval_loss(plait_trainer_t *tr, const int32_t *tok, size_t rows)
{
    float l;
    ck_assert_int_eq(plait_train_eval_loss(tr, tok, rows, &l), 0);
    return l;
}

/* Central differences on every `stride`-th adapter element of a small
 * random model (GQA, all seven targets), tied or untied, over B rows of T
 * tokens. */
static void fd_check(int shared, int B, int T, int seq_len, size_t stride)
{
    plait_model_t m;
    plait_model_init(&m);
    plait_model_config_t mc = small_cfg(shared);
    mc.seq_len = seq_len;
    ck_assert_int_eq(plait_model_init_random(&m, &mc, 7 + (uint64_t)shared), 0);
    /* Larger base weights than the default 0.02 make the loss curve more
     * (so gradients stand well above float32 rounding). */
    for (float *w = m.owned; w < (float *)m.w.rms_att; w++) *w *= 5.0f; /* embeddings */
    for (int p = 0; p < PLAIT_NPROJ; p++)
        for (int l = 0; l < mc.n_layers; l++) {
            int in, out;
            plait_proj_shape(&m.cfg, (plait_proj_t)p, &in, &out);
            float *w = (float *)plait_proj_weight(&m, l, (plait_proj_t)p);
            for (int i = 0; i < in * out; i++) w[i] *= 3.0f;
        }
    plait_lora_t lora;
    random_adapter(&lora, &m, 0x7f, 3, 11);
    plait_train_config_t cfg = plait_train_config_default();
    cfg.B = B;
    cfg.T = T;
    plait_trainer_t *tr;
    ck_assert_int_eq(plait_train_create(&tr, &m, &lora, &cfg), 0);
    size_t ntok = (size_t)B * (size_t)(T + 1);
    int32_t *tok = malloc(ntok * sizeof(int32_t));
    random_tokens(tok, ntok, mc.vocab_size, 3);
    float loss;
    ck_assert_int_eq(plait_train_forward_backward(tr, tok, &loss), 0);
    const float *g = plait_train_grads(tr);
    int bad = 0, checked = 0;
    double worst = 0.0;
    for (size_t i = 0; i < lora.n_params; i += stride) {
        float saved = lora.params[i];
        lora.params[i] = saved + (float)FD_EPS;
        double lp = eval_loss(tr, tok, (size_t)B);
        lora.params[i] = saved - (float)FD_EPS;
        double lm = eval_loss(tr, tok, (size_t)B);
        lora.params[i] = saved;
        double fd = (lp - lm) / (2.0 * FD_EPS);
        double err = fabs(fd - (double)g[i]);
        worst = fmax(worst, err / (FD_ATOL + FD_RTOL * fabs(fd)));
        if (err > FD_ATOL + FD_RTOL * fabs(fd)) {
            bad++;
            fprintf(stderr, "fd[%zu] (%s): analytic %.6g fd %.6g\n", i, i < lora.n_a ? "A" : "B", (double)g[i], fd);
        }
        checked++;
    }
    ck_assert_msg(bad == 0, "%d of %d finite-difference checks failed (shared=%d T=%d, worst %.2f of tolerance)", bad,
                  checked, shared, T, worst);
    ck_assert_int_gt(checked, 50);
    /* The check can fail: a gradient off by 10% of the largest one is flagged. */
    double typical = 0.0;
    for (size_t i = 0; i < lora.n_params; i++) typical = fmax(typical, fabs((double)g[i]));
    ck_assert(0.1 * typical > FD_ATOL + FD_RTOL * typical);
    free(tok);
    plait_train_destroy(tr);
    plait_lora_free(&lora);
    plait_model_free(&m);
}

/* ------------------------------------------------ naive float64 forward
 * An independent, deliberately plain model of the architecture (double
 * precision, full T x T attention, no blocking, no SIMD) to check the
 * engine's forward at lengths the reference cases do not cover. */

static void nv_proj(double *y, const double *x, const plait_model_t *m, const plait_lora_t *lo, int l, plait_proj_t p)
{
    int in, out, R = lo->cfg.rank;
    plait_proj_shape(&m->cfg, p, &in, &out);
    const float *W = plait_proj_weight(m, l, p), *A = lo->A[plait_lora_slot(l, p)], *Bm = lo->B[plait_lora_slot(l, p)];
    double u[64] = {0};
    if (A)
        for (int r = 0; r < R; r++)
            for (int i = 0; i < in; i++) u[r] += (double)A[r * in + i] * x[i];
    for (int o = 0; o < out; o++) {
        double acc = 0.0;
        for (int i = 0; i < in; i++) acc += (double)W[o * in + i] * x[i];
        if (A)
            for (int r = 0; r < R; r++) acc += (double)lo->scaling * (double)Bm[o * R + r] * u[r];
        y[o] = acc;
    }
}

static void nv_rmsnorm(double *o, const double *x, const float *w, int C)
{
    double ss = 0.0;
    for (int i = 0; i < C; i++) ss += x[i] * x[i];
    double r = 1.0 / sqrt(ss / C + 1e-5);
    for (int i = 0; i < C; i++) o[i] = x[i] * r * (double)w[i];
}

/* Mean cross-entropy of one row of T + 1 tokens. */
static double naive_loss(const plait_model_t *m, const plait_lora_t *lo, const int32_t *tok, int T)
{
    const plait_model_config_t *c = &m->cfg;
    int C = c->dim, H = c->hidden_dim, HS = c->head_size, KV = c->kv_dim, NH = c->n_heads, V = c->vocab_size;
    int rep = c->n_heads / c->n_kv_heads;
    double *x = calloc((size_t)T * C, sizeof(double)), *q = calloc((size_t)T * C, sizeof(double));
    double *k = calloc((size_t)T * KV, sizeof(double)), *v = calloc((size_t)T * KV, sizeof(double));
    double *att = calloc((size_t)T * C, sizeof(double)), *h = calloc((size_t)C, sizeof(double));
    double *t1 = calloc((size_t)H, sizeof(double)), *t3 = calloc((size_t)H, sizeof(double));
    double *o = calloc((size_t)C, sizeof(double)), *lg = calloc((size_t)V, sizeof(double));
    double *sc = calloc((size_t)T, sizeof(double));
    for (int t = 0; t < T; t++)
        for (int i = 0; i < C; i++) x[t * C + i] = m->w.token_embedding[(size_t)tok[t] * C + i];
    for (int l = 0; l < c->n_layers; l++) {
        for (int t = 0; t < T; t++) {
            nv_rmsnorm(h, x + t * C, m->w.rms_att + l * C, C);
            nv_proj(q + t * C, h, m, lo, l, PLAIT_WQ);
            nv_proj(k + t * KV, h, m, lo, l, PLAIT_WK);
            nv_proj(v + t * KV, h, m, lo, l, PLAIT_WV);
            for (int hd = 0; hd < NH + c->n_kv_heads; hd++) {
                double *vec = hd < NH ? q + t * C + hd * HS : k + t * KV + (hd - NH) * HS;
                for (int i = 0; i < HS / 2; i++) {
                    double f = 1.0 / pow(10000.0, 2.0 * i / HS), cs = cos(t * f), sn = sin(t * f);
                    double a0 = vec[2 * i], a1 = vec[2 * i + 1];
                    vec[2 * i] = a0 * cs - a1 * sn;
                    vec[2 * i + 1] = a0 * sn + a1 * cs;
                }
            }
        }
        for (int hd = 0; hd < NH; hd++) {
            int g = hd / rep;
            for (int t = 0; t < T; t++) {
                double mx = -INFINITY, sum = 0.0;
                for (int s2 = 0; s2 <= t; s2++) {
                    double d = 0.0;
                    for (int i = 0; i < HS; i++) d += q[t * C + hd * HS + i] * k[s2 * KV + g * HS + i];
                    sc[s2] = d / sqrt((double)HS);
                    mx = fmax(mx, sc[s2]);
                }
                for (int s2 = 0; s2 <= t; s2++) sum += exp(sc[s2] - mx);
                for (int i = 0; i < HS; i++) {
                    double acc = 0.0;
                    for (int s2 = 0; s2 <= t; s2++) acc += exp(sc[s2] - mx) / sum * v[s2 * KV + g * HS + i];
                    att[t * C + hd * HS + i] = acc;
                }
            }
        }
        for (int t = 0; t < T; t++) {
            nv_proj(o, att + t * C, m, lo, l, PLAIT_WO);
            for (int i = 0; i < C; i++) x[t * C + i] += o[i];
            nv_rmsnorm(h, x + t * C, m->w.rms_ffn + l * C, C);
            nv_proj(t1, h, m, lo, l, PLAIT_W1);
            nv_proj(t3, h, m, lo, l, PLAIT_W3);
            for (int i = 0; i < H; i++) t1[i] = t1[i] / (1.0 + exp(-t1[i])) * t3[i];
            nv_proj(o, t1, m, lo, l, PLAIT_W2);
            for (int i = 0; i < C; i++) x[t * C + i] += o[i];
        }
    }
    double loss = 0.0;
    for (int t = 0; t < T; t++) {
        nv_rmsnorm(h, x + t * C, m->w.rms_final, C);
        double mx = -INFINITY, sum = 0.0;
        for (int vv = 0; vv < V; vv++) {
            double d = 0.0;
            for (int i = 0; i < C; i++) d += (double)m->w.wcls[(size_t)vv * C + i] * h[i];
            lg[vv] = d;
            mx = fmax(mx, d);
        }
        for (int vv = 0; vv < V; vv++) sum += exp(lg[vv] - mx);
        loss += log(sum) + mx - lg[tok[t + 1]];
    }
    free(x); free(q); free(k); free(v); free(att); free(h); free(t1); free(t3); free(o); free(lg); free(sc);
    return loss / T;
}

/* The engine's forward equals the naive one at lengths of one, several and
 * partial attention blocks, on every kernel path this CPU has. */
START_TEST(test_forward_vs_naive)
{
    static const int Ts[] = {1, 5, 32, 33, 70, 96};
    int widest = plait_cpu_has_avx512() ? PLAIT__KPATH_AVX512 : plait_cpu_has_avx2_fma() ? PLAIT__KPATH_AVX2 : 0;
    for (int path = 0; path <= widest; path++) {
        plait__tensor_force_path(path);
        /* shared = 0, 1: head size 4 (the matmul attention path); shared = 2:
         * head size 8, tied (the row-wise SIMD path when available). */
        for (int shared = 0; shared < 3; shared++) {
            plait_model_t m;
            plait_model_init(&m);
            plait_model_config_t mc = small_cfg(shared != 0);
            if (shared == 2) mc.dim = 32;
            mc.seq_len = 96;
            ck_assert_int_eq(plait_model_init_random(&m, &mc, 31 + (uint64_t)shared), 0);
            for (float *w = m.owned; w < (float *)m.w.rms_att; w++) *w *= 20.0f; /* sharper attention */
            plait_lora_t lora;
            random_adapter(&lora, &m, 0x7f, 3, 5);
            int32_t tok[97];
            random_tokens(tok, 97, mc.vocab_size, 77);
            for (size_t ti = 0; ti < sizeof(Ts) / sizeof(Ts[0]); ti++) {
                plait_train_config_t cfg = plait_train_config_default();
                cfg.B = 1;
                cfg.T = Ts[ti];
                plait_trainer_t *tr;
                ck_assert_int_eq(plait_train_create(&tr, &m, &lora, &cfg), 0);
                float ours;
                ck_assert_int_eq(plait_train_eval_loss(tr, tok, 1, &ours), 0);
                double ref = naive_loss(&m, &lora, tok, Ts[ti]);
                ck_assert_msg(fabs((double)ours - ref) <= LOSS_RTOL * fabs(ref), "T=%d shared=%d path=%d: %.9g vs %.9g",
                              Ts[ti], shared, path, (double)ours, ref);
                plait_train_destroy(tr);
            }
            plait_lora_free(&lora);
            plait_model_free(&m);
        }
    }
    plait__tensor_force_path(-1);
}
END_TEST

START_TEST(test_finite_differences)
{
    fd_check(0, 2, 8, 16, 7);
    fd_check(1, 2, 8, 16, 7);
}
END_TEST

/* T = 70 spans three causal attention blocks, the last one partial. */
START_TEST(test_finite_differences_long)
{
    fd_check(0, 1, 70, 80, 13);
}
END_TEST

START_TEST(test_ffa_lora)
{
    plait_model_t m;
    plait_model_init(&m);
    plait_model_config_t mc = small_cfg(1);
    ck_assert_int_eq(plait_model_init_random(&m, &mc, 5), 0);
    plait_lora_t full, ffa;
    random_adapter(&full, &m, (1u << PLAIT_WQ) | (1u << PLAIT_WV) | (1u << PLAIT_W2), 4, 3);
    random_adapter(&ffa, &m, (1u << PLAIT_WQ) | (1u << PLAIT_WV) | (1u << PLAIT_W2), 4, 3);
    plait_train_config_t cfg = plait_train_config_default();
    cfg.B = 3;
    cfg.T = 10;
    plait_trainer_t *tf, *ta;
    ck_assert_int_eq(plait_train_create(&tf, &m, &full, &cfg), 0);
    cfg.train_a = 0;
    ck_assert_int_eq(plait_train_create(&ta, &m, &ffa, &cfg), 0);
    ck_assert_uint_eq(plait_train_grads_offset(ta), ffa.n_a);
    ck_assert_uint_eq(plait_train_grads_count(ta), ffa.n_params - ffa.n_a);
    int32_t tok[3 * 11];
    random_tokens(tok, 33, mc.vocab_size, 9);
    float lf, la;
    ck_assert_int_eq(plait_train_forward_backward(tf, tok, &lf), 0);
    ck_assert_int_eq(plait_train_forward_backward(ta, tok, &la), 0);
    ck_assert(lf == la);
    const float *gf = plait_train_grads(tf) + full.n_a, *ga = plait_train_grads(ta);
    for (size_t i = 0; i < full.n_params - full.n_a; i++) ck_assert(gf[i] == ga[i]);
    float *a_before = malloc(ffa.n_a * sizeof(float));
    memcpy(a_before, ffa.params, ffa.n_a * sizeof(float));
    ck_assert_int_eq(plait_train_step(ta), 0);
    ck_assert_int_eq(memcmp(a_before, ffa.params, ffa.n_a * sizeof(float)), 0);
    int moved = 0;
    for (size_t i = ffa.n_a; i < ffa.n_params; i++) moved += ffa.params[i] != full.params[i];
    ck_assert_int_eq(moved, (int)(ffa.n_params - ffa.n_a)); /* every B element moved */
    free(a_before);
    plait_train_destroy(tf);
    plait_train_destroy(ta);
    plait_lora_free(&full);
    plait_lora_free(&ffa);
    plait_model_free(&m);
}
END_TEST

/* Two micro-batches of B rows with accum_steps = 2 give the gradient of one
 * batch of 2B rows (the mean over all positions), and the same update. */
START_TEST(test_accumulation)
{
    plait_model_t m;
    plait_model_init(&m);
    plait_model_config_t mc = small_cfg(0);
    ck_assert_int_eq(plait_model_init_random(&m, &mc, 21), 0);
    plait_lora_t l1, l2;
    random_adapter(&l1, &m, 0x7f, 2, 4);
    random_adapter(&l2, &m, 0x7f, 2, 4);
    int32_t tok[4 * 13];
    random_tokens(tok, 52, mc.vocab_size, 17);
    plait_train_config_t cfg = plait_train_config_default();
    cfg.T = 12;
    cfg.B = 2;
    cfg.accum_steps = 2;
    plait_trainer_t *ta, *tb;
    ck_assert_int_eq(plait_train_create(&ta, &m, &l1, &cfg), 0);
    cfg.B = 4;
    cfg.accum_steps = 1;
    ck_assert_int_eq(plait_train_create(&tb, &m, &l2, &cfg), 0);
    float la0, la1, lb;
    ck_assert_int_eq(plait_train_forward_backward(ta, tok, &la0), 0);
    ck_assert_int_eq(plait_train_step(ta), PLAIT_EINVAL); /* 1 of 2 micro-batches */
    ck_assert_int_eq(plait_train_forward_backward(ta, tok + 2 * 13, &la1), 0);
    ck_assert_int_eq(plait_train_forward_backward(ta, tok, &la0), PLAIT_EINVAL); /* a third one */
    ck_assert_int_eq(plait_train_forward_backward(tb, tok, &lb), 0);
    ck_assert(fabs(0.5 * (la0 + la1) - lb) <= ACCUM_RTOL * lb);
    const float *ga = plait_train_grads(ta), *gb = plait_train_grads(tb);
    double mx = 0.0;
    for (size_t i = 0; i < l1.n_params; i++) mx = fmax(mx, fabs((double)gb[i]));
    for (size_t i = 0; i < l1.n_params; i++)
        ck_assert_msg(fabs((double)ga[i] - (double)gb[i]) <= ACCUM_RTOL * mx, "grad %zu: %g vs %g", i, (double)ga[i],
                      (double)gb[i]);
    ck_assert_int_eq(plait_train_step(ta), 0);
    ck_assert_int_eq(plait_train_step(tb), 0);
    for (size_t i = 0; i < l1.n_params; i++) ck_assert(fabs((double)l1.params[i] - (double)l2.params[i]) < 1e-6);
    for (size_t i = 0; i < plait_train_grads_count(ta); i++) ck_assert(ga[i] == 0.0f); /* zeroed by step */
    plait_train_destroy(ta);
    plait_train_destroy(tb);
    plait_lora_free(&l1);
    plait_lora_free(&l2);
    plait_model_free(&m);
}
END_TEST

START_TEST(test_clip)
{
    plait_model_t m;
    plait_model_init(&m);
    plait_model_config_t mc = small_cfg(1);
    ck_assert_int_eq(plait_model_init_random(&m, &mc, 2), 0);
    plait_lora_t l;
    random_adapter(&l, &m, 0x7f, 4, 8);
    plait_train_config_t cfg = plait_train_config_default();
    cfg.B = 2;
    cfg.T = 8;
    cfg.weight_decay = 0.0;
    /* Make the update equal the clipped gradient: beta1 = beta2 = 0 gives
     * m = g, v = g^2, no bias correction; with eps = lr = 1e6 the step is
     * lr * g / (|g| + eps) = g to within |g| / 1e6. */
    cfg.beta1 = 0.0;
    cfg.beta2 = 0.0;
    cfg.eps = 1e6;
    cfg.lr = 1e6;
    int32_t tok[2 * 9];
    random_tokens(tok, 18, mc.vocab_size, 5);
    plait_trainer_t *tr;
    cfg.grad_clip = 0.0;
    ck_assert_int_eq(plait_train_create(&tr, &m, &l, &cfg), 0);
    ck_assert_int_eq(plait_train_forward_backward(tr, tok, NULL), 0);
    double norm = plait_train_grad_norm(tr);
    plait_train_destroy(tr);
    ck_assert(norm > 0.0);
    double bound = 0.1 * norm; /* clip to a tenth of the unclipped norm */
    cfg.grad_clip = bound;
    float *before = malloc(l.n_params * sizeof(float));
    memcpy(before, l.params, l.n_params * sizeof(float));
    ck_assert_int_eq(plait_train_create(&tr, &m, &l, &cfg), 0);
    ck_assert_int_eq(plait_train_forward_backward(tr, tok, NULL), 0);
    ck_assert(fabs(plait_train_grad_norm(tr) - norm) <= 1e-5 * norm);
    ck_assert_int_eq(plait_train_step(tr), 0);
    ck_assert(fabs(plait_train_last_grad_norm(tr) - norm) <= 1e-5 * norm);
    double ss = 0.0;
    for (size_t i = 0; i < l.n_params; i++) {
        double d = (double)before[i] - (double)l.params[i];
        ss += d * d;
    }
    double applied = sqrt(ss);
    ck_assert_msg(applied <= bound * (1.0 + 1e-4), "applied norm %g > bound %g", applied, bound);
    ck_assert_msg(applied >= bound * 0.99, "applied norm %g far below bound %g", applied, bound);
    free(before);
    plait_train_destroy(tr);
    plait_lora_free(&l);
    plait_model_free(&m);
}
END_TEST

/* After plait_train_reset a used trainer behaves exactly like a new one. */
START_TEST(test_reset)
{
    plait_model_t m;
    plait_model_init(&m);
    plait_model_config_t mc = small_cfg(1);
    ck_assert_int_eq(plait_model_init_random(&m, &mc, 4), 0);
    plait_lora_t a, b;
    random_adapter(&a, &m, 0x7f, 2, 6);
    random_adapter(&b, &m, 0x7f, 2, 6);
    float *init = malloc(a.n_params * sizeof(float));
    memcpy(init, a.params, a.n_params * sizeof(float));
    int32_t tok[2 * 9];
    random_tokens(tok, 18, mc.vocab_size, 8);
    plait_train_config_t cfg = plait_train_config_default();
    cfg.B = 2;
    cfg.T = 8;
    plait_trainer_t *used, *fresh;
    ck_assert_int_eq(plait_train_create(&used, &m, &a, &cfg), 0);
    for (int i = 0; i < 3; i++) {
        ck_assert_int_eq(plait_train_forward_backward(used, tok, NULL), 0);
        ck_assert_int_eq(plait_train_step(used), 0);
    }
    ck_assert_int_eq(plait_train_forward_backward(used, tok, NULL), 0); /* pending micro-batch */
    plait_train_reset(used);
    plait_train_reset(NULL);
    ck_assert_int_eq(plait_train_steps_done(used), 0);
    memcpy(a.params, init, a.n_params * sizeof(float));
    ck_assert_int_eq(plait_train_create(&fresh, &m, &b, &cfg), 0);
    for (int i = 0; i < 2; i++) {
        ck_assert_int_eq(plait_train_forward_backward(used, tok, NULL), 0);
        ck_assert_int_eq(plait_train_forward_backward(fresh, tok, NULL), 0);
        ck_assert_int_eq(plait_train_step(used), 0);
        ck_assert_int_eq(plait_train_step(fresh), 0);
    }
    ck_assert_int_eq(memcmp(a.params, b.params, a.n_params * sizeof(float)), 0);
    free(init);
    plait_train_destroy(used);
    plait_train_destroy(fresh);
    plait_lora_free(&a);
    plait_lora_free(&b);
    plait_model_free(&m);
}
END_TEST

START_TEST(test_schedule)
{
    plait_train_config_t c = plait_train_config_default();
    c.lr = 1e-3;
    ck_assert(plait_train_lr_at(&c, 0) == 1e-3);
    ck_assert(plait_train_lr_at(&c, 1000) == 1e-3);
    c.warmup_steps = 10;
    c.total_steps = 110;
    c.min_lr_frac = 0.1;
    ck_assert(fabs(plait_train_lr_at(&c, 0) - 1e-4) < 1e-15);
    ck_assert(fabs(plait_train_lr_at(&c, 4) - 5e-4) < 1e-15);
    ck_assert(fabs(plait_train_lr_at(&c, 9) - 1e-3) < 1e-15);
    ck_assert(fabs(plait_train_lr_at(&c, 10) - 1e-3) < 1e-15);               /* cosine starts at the peak */
    ck_assert(fabs(plait_train_lr_at(&c, 60) - (1e-4 + 0.5 * 9e-4)) < 1e-15); /* half way */
    ck_assert(fabs(plait_train_lr_at(&c, 110) - 1e-4) < 1e-15);              /* floor */
    ck_assert(fabs(plait_train_lr_at(&c, 500) - 1e-4) < 1e-15);
    for (long s = 11; s < 110; s++) ck_assert(plait_train_lr_at(&c, s) < plait_train_lr_at(&c, s - 1));
}
END_TEST

START_TEST(test_bad_tokens_and_config)
{
    plait_model_t m;
    plait_model_init(&m);
    plait_model_config_t mc = small_cfg(1);
    ck_assert_int_eq(plait_model_init_random(&m, &mc, 2), 0);
    plait_lora_t l;
    random_adapter(&l, &m, 0x3, 2, 8);
    plait_train_config_t cfg = plait_train_config_default();
    cfg.B = 2;
    cfg.T = 8;
    plait_trainer_t *tr;
    ck_assert_int_eq(plait_train_create(&tr, &m, &l, &cfg), 0);
    int32_t tok[18];
    random_tokens(tok, 18, mc.vocab_size, 5);
    tok[13] = mc.vocab_size; /* row 1, column 4 */
    ck_assert_int_eq(plait_train_forward_backward(tr, tok, NULL), PLAIT_EINVAL);
    ck_assert_msg(strstr(plait_errmsg(), "row 1, column 4") != NULL, "%s", plait_errmsg());
    tok[13] = -1;
    ck_assert_int_eq(plait_train_forward_backward(tr, tok, NULL), PLAIT_EINVAL);
    ck_assert_int_eq(plait_train_eval_loss(tr, tok, 2, NULL), PLAIT_EINVAL);
    for (size_t i = 0; i < plait_train_grads_count(tr); i++) ck_assert(plait_train_grads(tr)[i] == 0.0f);
    tok[13] = 0;
    float loss;
    ck_assert_int_eq(plait_train_forward_backward(tr, tok, &loss), 0);
    ck_assert(isfinite(loss));
    /* eval on the same rows reports the same loss, and a partial last chunk works. */
    float ev;
    ck_assert_int_eq(plait_train_eval_loss(tr, tok, 2, &ev), 0);
    ck_assert(fabs(ev - loss) <= 1e-6 * loss);
    int32_t tok3[27];
    memcpy(tok3, tok, sizeof(tok));
    memcpy(tok3 + 18, tok, 9 * sizeof(int32_t));
    ck_assert_int_eq(plait_train_eval_loss(tr, tok3, 3, &ev), 0);
    plait_train_destroy(tr);
    /* Config validation. */
    cfg.T = mc.seq_len + 1;
    ck_assert_int_eq(plait_train_create(&tr, &m, &l, &cfg), PLAIT_EINVAL);
    ck_assert_ptr_null(tr);
    cfg = plait_train_config_default();
    ck_assert_int_eq(plait_train_config_validate(&cfg, NULL), 0);
    cfg.beta2 = 1.0;
    ck_assert_int_eq(plait_train_config_validate(&cfg, NULL), PLAIT_EINVAL);
    cfg = plait_train_config_default();
    cfg.accum_steps = 0;
    ck_assert_int_eq(plait_train_config_validate(&cfg, NULL), PLAIT_EINVAL);
    cfg = plait_train_config_default();
    cfg.lr = NAN;
    ck_assert_int_eq(plait_train_config_validate(&cfg, NULL), PLAIT_EINVAL);
    plait_train_destroy(NULL);
    plait_lora_free(&l);
    plait_model_free(&m);
}
END_TEST

Suite *train_suite(void)
{
    Suite *s = suite_create("train");
    TCase *tc = tcase_create("reference");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_ref_stories260k);
    tcase_add_test(tc, test_ref_tiny_untied);
    tcase_add_test(tc, test_ref_threads);
    tcase_add_loop_test(tc, test_ref_paths, PLAIT__KPATH_PORTABLE, PLAIT__KPATH_AVX512 + 1);
    tcase_add_test(tc, test_ref_detects_error);
    suite_add_tcase(s, tc);
    tc = tcase_create("gradients");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_finite_differences);
    tcase_add_test(tc, test_finite_differences_long);
    tcase_add_test(tc, test_forward_vs_naive);
    tcase_add_test(tc, test_ffa_lora);
    tcase_add_test(tc, test_accumulation);
    suite_add_tcase(s, tc);
    tc = tcase_create("optimizer");
    tcase_add_test(tc, test_clip);
    tcase_add_test(tc, test_schedule);
    tcase_add_test(tc, test_reset);
    tcase_add_test(tc, test_bad_tokens_and_config);
    suite_add_tcase(s, tc);
    return s;
}
