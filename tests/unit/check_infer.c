/*
 * check_infer.c: inference: the known answers of the assets (greedy text
 * from BOS and after "Zoo"), logits with a LoRA adapter against PyTorch
 * (../shared/reference, both cases) and against a naive double-precision
 * forward written here, merged against unmerged adapters, batched prefill
 * against token-by-token decoding, the sampler, and argument errors.
 */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "plait/infer.h"
#include "plait/train.h"
#include "testutil.h"

/* Logits may differ from a reference by this fraction of the row's largest
 * magnitude (float32 forward vs float64 reference; case.json records the
 * float32 deviation of PyTorch itself at ~2e-6). */
#define TOL_REF 1e-4
/* Merged vs unmerged adapter: different float rounding only. */
#define TOL_MERGE 1e-4
/* Prefill vs token by token: the same arithmetic in a different order. */
#define TOL_PREFILL 1e-5

/* ------------------------------------------------------------- fixtures */

static void load_model(plait_model_t *m, const char *dir, const char *name)
{
    char *p = tu_path(dir, name);
    plait_model_init(m);
    ck_assert_msg(plait_model_load(m, p) == 0, "%s", plait_errmsg());
    free(p);
}

static void load_stories(plait_model_t *m, plait_tok_t *t)
{
    load_model(m, tu_assets_dir(), "stories260K.bin");
    if (t) {
        char *p = tu_path(tu_assets_dir(), "tok512.bin");
        plait_tok_init(t);
        ck_assert_msg(plait_tok_load(t, p, m->cfg.vocab_size) == 0, "%s", plait_errmsg());
        free(p);
    }
}

typedef struct {
    char *buf;
    size_t len, cap;
} text_t;

static int collect(void *ctx, const char *piece, size_t len)
{
    text_t *t = ctx;
    if (t->len + len + 1 > t->cap) {
        t->cap = 2 * (t->len + len + 1);
        t->buf = realloc(t->buf, t->cap);
        ck_assert_ptr_nonnull(t->buf);
    }
    memcpy(t->buf + t->len, piece, len);
    t->len += len;
    t->buf[t->len] = '\0';
    return 0;
}

/* Generate into a fresh string (caller frees). */
static char *gen_text(plait_infer_t *st, const plait_tok_t *tok, const char *prompt,
                      const plait_gen_config_t *g, plait_gen_stats_t *stats)
{
    text_t t = {0};
    collect(&t, "", 0);
    int rc = plait_generate(st, tok, prompt, g, collect, &t, stats);
    ck_assert_msg(rc == 0, "%s", plait_errmsg());
    return t.buf;
}

/* A minimal reader for the reference adapters: locate each tensor by name
 * in the safetensors JSON header and copy its F32 data. Enough for these
 * trusted test files; the project's real loader lives elsewhere. */
static void st_tensor(const uint8_t *file, size_t flen, const char *name, float *dst, size_t n)
{
    ck_assert_uint_ge(flen, 8);
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--)
        hlen = hlen << 8 | file[i];
    ck_assert_uint_le(hlen, flen - 8);
    char *hdr = malloc(hlen + 1);
    memcpy(hdr, file + 8, hlen);
    hdr[hlen] = '\0';
    char key[128];
    snprintf(key, sizeof(key), "\"%s\":", name);
    char *at = strstr(hdr, key);
    ck_assert_msg(at != NULL, "tensor %s missing", name);
    char *end = strchr(at, '}');
    char *dt = strstr(at, "\"dtype\":\"F32\"");
    ck_assert_msg(dt && dt < end, "tensor %s is not F32", name);
    char *off = strstr(at, "\"data_offsets\":[");
    ck_assert(off && off < end);
    off += strlen("\"data_offsets\":[");
    char *e;
    unsigned long long a = strtoull(off, &e, 10);
    unsigned long long b = strtoull(e + 1, NULL, 10);
    ck_assert_uint_eq(b - a, n * sizeof(float));
    ck_assert_uint_le(8 + hlen + b, flen);
    memcpy(dst, file + 8 + hlen + a, n * sizeof(float));
    free(hdr);
}

/* Fill an adapter from a reference case's adapter_init.safetensors. */
static void load_adapter(plait_lora_t *lo, const plait_model_t *m, const char *casedir, int rank,
                         float alpha, uint32_t targets)
{
    char *p = tu_path(casedir, "adapter_init.safetensors");
    size_t flen;
    uint8_t *file = tu_read_file(p, &flen);
    ck_assert_ptr_nonnull(file);
    plait_lora_config_t lc = {.rank = rank, .alpha = alpha, .targets = targets};
    plait_lora_init(lo);
    ck_assert_int_eq(plait_lora_setup(lo, &m->cfg, &lc), 0);
    for (int l = 0; l < m->cfg.n_layers; l++) {
        for (int q = 0; q < PLAIT_NPROJ; q++) {
            if (!(targets & (1u << q))) continue;
            int in, out;
            plait_proj_shape(&m->cfg, (plait_proj_t)q, &in, &out);
            char name[96];
            size_t slot = plait_lora_slot(l, (plait_proj_t)q);
            snprintf(name, sizeof(name), "layers.%d.%s.lora_A", l,
                     plait_proj_name((plait_proj_t)q));
            st_tensor(file, flen, name, lo->A[slot], (size_t)rank * (size_t)in);
            snprintf(name, sizeof(name), "layers.%d.%s.lora_B", l,
                     plait_proj_name((plait_proj_t)q));
            st_tensor(file, flen, name, lo->B[slot], (size_t)out * (size_t)rank);
        }
    }
    free(file);
    free(p);
}

/* Row 0 of tokens.i32 (B rows of T+1) and logits_row0.f64 (T, V). */
static void load_case(const char *casedir, int T, int V, int *tokens, double *logits)
{
    char *p = tu_path(casedir, "tokens.i32");
    size_t len;
    uint8_t *b = tu_read_file(p, &len);
    ck_assert_ptr_nonnull(b);
    ck_assert_uint_ge(len, (size_t)(T + 1) * 4);
    memcpy(tokens, b, (size_t)T * sizeof(int));
    free(b);
    free(p);
    p = tu_path(casedir, "logits_row0.f64");
    b = tu_read_file(p, &len);
    ck_assert_ptr_nonnull(b);
    ck_assert_uint_eq(len, (size_t)T * (size_t)V * 8);
    memcpy(logits, b, len);
    free(b);
    free(p);
}

/* Max |got - want| over a row, relative to the row's max |want|. */
static double rel_err_row(const float *got, const double *want, int V)
{
    double mx = 0.0, err = 0.0;
    for (int i = 0; i < V; i++) {
        if (fabs(want[i]) > mx) mx = fabs(want[i]);
        if (fabs((double)got[i] - want[i]) > err) err = fabs((double)got[i] - want[i]);
    }
    return err / (mx > 0 ? mx : 1.0);
}

/* ------------------------------------------- naive double-precision model */

/* out (T, OUT) = in (T, IN) · Wᵀ + s · (in · Aᵀ) · Bᵀ, all in double. */
static void naive_lin(const plait_model_t *m, const plait_lora_t *lo, int l, plait_proj_t p,
                      const double *in, double *out, int T)
{
    int IN, OUT;
    plait_proj_shape(&m->cfg, p, &IN, &OUT);
    const float *W = plait_proj_weight(m, l, p);
    size_t slot = plait_lora_slot(l, p);
    const float *A = lo ? lo->A[slot] : NULL, *B = lo ? lo->B[slot] : NULL;
    int R = lo ? lo->cfg.rank : 0;
    for (int t = 0; t < T; t++) {
        const double *x = in + (size_t)t * IN;
        double ax[PLAIT_LORA_MAX_RANK];
        if (A)
            for (int r = 0; r < R; r++) {
                ax[r] = 0;
                for (int i = 0; i < IN; i++)
                    ax[r] += (double)A[(size_t)r * IN + i] * x[i];
            }
        for (int o = 0; o < OUT; o++) {
            double y = 0;
            for (int i = 0; i < IN; i++)
                y += (double)W[(size_t)o * IN + i] * x[i];
            if (A)
                for (int r = 0; r < R; r++)
                    y += (double)lo->scaling * (double)B[(size_t)o * R + r] * ax[r];
            out[(size_t)t * OUT + o] = y;
        }
    }
}

static void naive_rms(const double *x, const float *w, double *out, int T, int C)
{
    for (int t = 0; t < T; t++) {
        double ss = 0;
        for (int i = 0; i < C; i++)
            ss += x[t * C + i] * x[t * C + i];
        double inv = 1.0 / sqrt(ss / C + 1e-5);
        for (int i = 0; i < C; i++)
            out[t * C + i] = x[t * C + i] * inv * (double)w[i];
    }
}

static void naive_rope(double *v, int T, int width, int HS)
{
    for (int t = 0; t < T; t++)
        for (int i = 0; i < width; i += 2) {
            int j = i % HS;
            double ang = t * pow(10000.0, -(double)j / HS);
            double a = v[t * width + i], b = v[t * width + i + 1];
            v[t * width + i] = a * cos(ang) - b * sin(ang);
            v[t * width + i + 1] = a * sin(ang) + b * cos(ang);
        }
}

/* Full-sequence causal forward without a cache: logits (T, V). */
static void naive_forward(const plait_model_t *m, const plait_lora_t *lo, const int *tok, int T,
                          double *logits)
{
    const plait_model_config_t *c = &m->cfg;
    int C = c->dim, H = c->hidden_dim, KV = c->kv_dim, HS = c->head_size, NH = c->n_heads,
        V = c->vocab_size;
    int kvmul = c->n_heads / c->n_kv_heads;
    double *x = calloc((size_t)T * C, 8), *xn = calloc((size_t)T * C, 8),
           *q = calloc((size_t)T * C, 8);
    double *k = calloc((size_t)T * KV, 8), *v = calloc((size_t)T * KV, 8),
           *ao = calloc((size_t)T * C, 8);
    double *h1 = calloc((size_t)T * H, 8), *h3 = calloc((size_t)T * H, 8),
           *tmp = calloc((size_t)T * C, 8);
    double *att = calloc((size_t)T, 8);
    for (int t = 0; t < T; t++)
        for (int i = 0; i < C; i++)
            x[t * C + i] = m->w.token_embedding[(size_t)tok[t] * C + i];
    for (int l = 0; l < c->n_layers; l++) {
        naive_rms(x, m->w.rms_att + (size_t)l * C, xn, T, C);
        naive_lin(m, lo, l, PLAIT_WQ, xn, q, T);
        naive_lin(m, lo, l, PLAIT_WK, xn, k, T);
        naive_lin(m, lo, l, PLAIT_WV, xn, v, T);
        naive_rope(q, T, C, HS);
        naive_rope(k, T, KV, HS);
        for (int t = 0; t < T; t++)
            for (int h = 0; h < NH; h++) {
                int g = h / kvmul;
                double mx = -1e300, sum = 0;
                for (int u = 0; u <= t; u++) {
                    double d = 0;
                    for (int i = 0; i < HS; i++)
                        d += q[t * C + h * HS + i] * k[u * KV + g * HS + i];
                    att[u] = d / sqrt((double)HS);
                    if (att[u] > mx) mx = att[u];
                }
                for (int u = 0; u <= t; u++)
                    sum += (att[u] = exp(att[u] - mx));
                for (int i = 0; i < HS; i++) {
                    double o = 0;
                    for (int u = 0; u <= t; u++)
                        o += att[u] / sum * v[u * KV + g * HS + i];
                    ao[t * C + h * HS + i] = o;
                }
            }
        naive_lin(m, lo, l, PLAIT_WO, ao, tmp, T);
        for (int i = 0; i < T * C; i++)
            x[i] += tmp[i];
        naive_rms(x, m->w.rms_ffn + (size_t)l * C, xn, T, C);
        naive_lin(m, lo, l, PLAIT_W1, xn, h1, T);
        naive_lin(m, lo, l, PLAIT_W3, xn, h3, T);
        for (int i = 0; i < T * H; i++)
            h1[i] = h1[i] / (1.0 + exp(-h1[i])) * h3[i];
        naive_lin(m, lo, l, PLAIT_W2, h1, tmp, T);
        for (int i = 0; i < T * C; i++)
            x[i] += tmp[i];
    }
    naive_rms(x, m->w.rms_final, xn, T, C);
    for (int t = 0; t < T; t++)
        for (int o = 0; o < V; o++) {
            double y = 0;
            for (int i = 0; i < C; i++)
                y += (double)m->w.wcls[(size_t)o * C + i] * xn[t * C + i];
            logits[(size_t)t * V + o] = y;
        }
    free(x), free(xn), free(q), free(k), free(v), free(ao), free(h1), free(h3), free(tmp),
        free(att);
}

/* ---------------------------------------------------------------- tests */

START_TEST(test_greedy_known_answer)
{
    plait_model_t m;
    plait_tok_t tok;
    load_stories(&m, &tok);
    char *p = tu_path(tu_assets_dir(), "stories260K.greedy200.txt");
    size_t want_len;
    char *want = (char *)tu_read_file(p, &want_len);
    ck_assert_ptr_nonnull(want);
    ck_assert_uint_eq(want_len, 465);
    plait_gen_config_t g;
    plait_gen_config_default(&g);
    g.temperature = 0.0f;
    g.steps = 200;
    /* Single-threaded, then on a pool of 3 threads: same bytes. */
    for (int threads = 1; threads <= 3; threads += 2) {
        plait_pool_t *pool = NULL;
        if (threads > 1) ck_assert_int_eq(plait_pool_create(&pool, threads), 0);
        plait_infer_config_t ic;
        plait_infer_config_default(&ic);
        ic.pool = pool;
        plait_infer_t st;
        plait_infer_init(&st);
        ck_assert_int_eq(plait_infer_setup(&st, &m, NULL, &ic), 0);
        plait_gen_stats_t stats;
        char *got = gen_text(&st, &tok, "", &g, &stats);
        ck_assert_uint_eq(stats.prompt_tokens, 1);
        /* run.c -n 200: 200 forward passes, each printing its sampled
         * token (the README counts the 199 after the first position). */
        ck_assert_uint_eq(stats.generated_tokens, 200);
        ck_assert_int_eq(stats.stop_token, -1);
        size_t n = strlen(got);
        ck_assert_msg(n + 1 == want_len && memcmp(got, want, n) == 0 && want[n] == '\n',
                      "greedy text differs (%d threads):\n%s", threads, got);
        free(got);
        plait_infer_free(&st);
        plait_pool_destroy(pool);
    }
    free(want);
    free(p);
    plait_tok_free(&tok);
    plait_model_free(&m);
}
END_TEST

START_TEST(test_zoo_prompt)
{
    plait_model_t m;
    plait_tok_t tok;
    load_stories(&m, &tok);
    plait_infer_t st;
    plait_infer_init(&st);
    ck_assert_int_eq(plait_infer_setup(&st, &m, NULL, NULL), 0);
    plait_gen_config_t g;
    plait_gen_config_default(&g);
    g.temperature = 0.0f;
    g.steps = 40;
    plait_gen_stats_t stats;
    char *got = gen_text(&st, &tok, "Zoo", &g, &stats);
    const char *want = "Zoo was a little girl named Lily. She loved to play outside in the park.";
    ck_assert_msg(strncmp(got, want, strlen(want)) == 0, "got: %s", got);
    ck_assert_uint_eq(stats.prompt_tokens, 4);
    ck_assert_uint_eq(stats.generated_tokens, 40 - 3); /* positions 3..39 sample */
    free(got);
    /* A prompt longer than steps is only echoed, as run.c does. */
    g.steps = 3;
    got = gen_text(&st, &tok, "Once upon a time", &g, &stats);
    ck_assert_str_eq(got, "Once upon a");
    ck_assert_uint_eq(stats.generated_tokens, 0);
    free(got);
    plait_infer_free(&st);
    plait_tok_free(&tok);
    plait_model_free(&m);
}
END_TEST

/* Logits of every position: KV-cache forward (token by token and prefill,
 * merged and unmerged) against PyTorch's float64 logits and the naive
 * double forward above. */
static void check_reference_case(const char *casename, const char *model_dir,
                                 const char *model_name, int T, int rank, float alpha,
                                 uint32_t targets)
{
    char *casedir = tu_path(tu_reference_dir(), casename);
    plait_model_t m;
    load_model(&m, model_dir ? model_dir : casedir, model_name);
    int V = m.cfg.vocab_size;
    plait_lora_t lo;
    load_adapter(&lo, &m, casedir, rank, alpha, targets);
    int *tokens = malloc((size_t)T * sizeof(int));
    double *ref = malloc((size_t)T * (size_t)V * sizeof(double));
    double *naive = malloc((size_t)T * (size_t)V * sizeof(double));
    load_case(casedir, T, V, tokens, ref);

    /* The naive model itself must agree with PyTorch (to ~3e-8: PyTorch's
     * RoPE frequencies are float32 even in its float64 run). */
    naive_forward(&m, &lo, tokens, T, naive);
    for (int t = 0; t < T; t++) {
        double mx = 0, err = 0;
        for (int i = 0; i < V; i++) {
            mx = fmax(mx, fabs(ref[(size_t)t * V + i]));
            err = fmax(err, fabs(naive[(size_t)t * V + i] - ref[(size_t)t * V + i]));
        }
        ck_assert_msg(err / mx < 1e-6, "%s: naive model differs from PyTorch at %d: %g", casename,
                      t, err / mx);
    }

    for (int merge = 0; merge <= 1; merge++) {
        plait_infer_config_t ic;
        plait_infer_config_default(&ic);
        ic.merge = merge;
        ic.max_ctx = T;
        ic.prefill_chunk = 5; /* not a divisor of T: a partial last chunk */
        plait_infer_t st;
        plait_infer_init(&st);
        ck_assert_msg(plait_infer_setup(&st, &m, &lo, &ic) == 0, "%s", plait_errmsg());
        ck_assert_int_eq(st.merged, merge);
        double worst = 0;
        for (int t = 0; t < T; t++) {
            const float *lg;
            ck_assert_int_eq(plait_infer_forward(&st, tokens[t], t, &lg), 0);
            double e1 = rel_err_row(lg, ref + (size_t)t * V, V);
            double e2 = rel_err_row(lg, naive + (size_t)t * V, V);
            ck_assert_msg(e1 < TOL_REF && e2 < TOL_REF,
                          "%s merge=%d pos %d: rel err %g (PyTorch) %g (naive)", casename, merge, t,
                          e1, e2);
            worst = fmax(worst, e1);
        }
        /* Prefill of every prefix length ends in the same logits. */
        for (int n = 1; n <= T; n += 7) {
            const float *lg;
            ck_assert_int_eq(plait_infer_prefill(&st, tokens, (size_t)n, 0, &lg), 0);
            double e = rel_err_row(lg, ref + (size_t)(n - 1) * V, V);
            ck_assert_msg(e < TOL_REF, "%s merge=%d prefill %d: rel err %g", casename, merge, n, e);
        }
        fprintf(stderr, "%s merge=%d: worst relative logit error vs PyTorch %.3g\n", casename,
                merge, worst);
        plait_infer_free(&st);
    }
    free(tokens);
    free(ref);
    free(naive);
    plait_lora_free(&lo);
    plait_model_free(&m);
    free(casedir);
}

START_TEST(test_reference_stories260k_wq_wv)
{
    check_reference_case("stories260K_wq_wv_r8", tu_assets_dir(), "stories260K.bin", 32, 8, 16.0f,
                         (1u << PLAIT_WQ) | (1u << PLAIT_WV));
}
END_TEST

START_TEST(test_reference_tiny_untied_all7)
{
    check_reference_case("tiny_untied_all7_r4", NULL, "model.bin", 16, 4, 8.0f,
                         (1u << PLAIT_NPROJ) - 1);
}
END_TEST

/* Without an adapter the naive model must match too (no LoRA term at all). */
START_TEST(test_naive_no_adapter)
{
    plait_model_t m;
    load_stories(&m, NULL);
    int T = 48, V = m.cfg.vocab_size;
    int tokens[48];
    for (int i = 0; i < T; i++)
        tokens[i] = (i * 37 + 1) % V;
    double *naive = malloc((size_t)T * (size_t)V * sizeof(double));
    naive_forward(&m, NULL, tokens, T, naive);
    plait_infer_t st;
    plait_infer_init(&st);
    ck_assert_int_eq(plait_infer_setup(&st, &m, NULL, NULL), 0);
    for (int t = 0; t < T; t++) {
        const float *lg;
        ck_assert_int_eq(plait_infer_forward(&st, tokens[t], t, &lg), 0);
        double e = rel_err_row(lg, naive + (size_t)t * V, V);
        ck_assert_msg(e < TOL_REF, "pos %d: rel err %g", t, e);
    }
    /* Deliberately wrong: a shifted token sequence must be detected, so the
     * comparison above can fail. */
    const float *lg;
    ck_assert_int_eq(plait_infer_forward(&st, (tokens[T - 1] + 1) % V, T - 1, &lg), 0);
    ck_assert(rel_err_row(lg, naive + (size_t)(T - 1) * V, V) > TOL_REF);
    plait_infer_free(&st);
    free(naive);
    plait_model_free(&m);
}
END_TEST

/* Merged and unmerged agree; a zero adapter changes nothing, bit for bit. */
START_TEST(test_merged_vs_unmerged)
{
    plait_model_t m;
    load_stories(&m, NULL);
    int V = m.cfg.vocab_size, T = 64;
    plait_lora_config_t lc;
    plait_lora_config_default(&lc);
    lc.targets = (1u << PLAIT_NPROJ) - 1;
    plait_lora_t lo;
    plait_lora_init(&lo);
    ck_assert_int_eq(plait_lora_setup(&lo, &m.cfg, &lc), 0);
    plait_lora_init_weights(&lo, 7); /* B = 0 */

    plait_infer_t base, un, mg;
    plait_infer_init(&base);
    plait_infer_init(&un);
    plait_infer_init(&mg);
    plait_infer_config_t ic;
    plait_infer_config_default(&ic);
    ck_assert_int_eq(plait_infer_setup(&base, &m, NULL, &ic), 0);
    ck_assert_int_eq(plait_infer_setup(&un, &m, &lo, &ic), 0);
    ic.merge = 1;
    ck_assert_int_eq(plait_infer_setup(&mg, &m, &lo, &ic), 0);
    /* Merging copies only the targeted projections, never the model. */
    size_t per_layer = 0;
    for (int p = 0; p < PLAIT_NPROJ; p++) {
        int in, out;
        plait_proj_shape(&m.cfg, (plait_proj_t)p, &in, &out);
        per_layer += (size_t)in * (size_t)out;
    }
    ck_assert_uint_eq(mg.merged_n, per_layer * (size_t)m.cfg.n_layers);
    ck_assert_ptr_eq(mg.w[plait_lora_slot(0, PLAIT_WQ)], mg.merged_w);
    ck_assert_ptr_eq(un.w[plait_lora_slot(0, PLAIT_WQ)], m.w.wq);

    for (int t = 0; t < 8; t++) {
        const float *a, *b, *c;
        int tk = (t * 91 + 1) % V;
        ck_assert_int_eq(plait_infer_forward(&base, tk, t, &a), 0);
        ck_assert_int_eq(plait_infer_forward(&un, tk, t, &b), 0);
        ck_assert_int_eq(plait_infer_forward(&mg, tk, t, &c), 0);
        ck_assert_int_eq(memcmp(a, b, (size_t)V * sizeof(float)), 0);
        ck_assert_int_eq(memcmp(a, c, (size_t)V * sizeof(float)), 0);
    }

    /* Now a non-zero B: the adapter must change the logits, and merged must
     * agree with unmerged after plait_infer_remerge. */
    uint64_t s = 5;
    for (size_t i = lo.n_a; i < lo.n_params; i++)
        lo.params[i] = (float)((double)plait_xorshift_f32(&s) - 0.5) * 0.1f;
    plait_infer_remerge(&mg);
    double max_change = 0, worst = 0;
    for (int t = 0; t < T; t++) {
        const float *a, *b, *c;
        int tk = (t * 91 + 1) % V;
        ck_assert_int_eq(plait_infer_forward(&base, tk, t, &a), 0);
        ck_assert_int_eq(plait_infer_forward(&un, tk, t, &b), 0);
        ck_assert_int_eq(plait_infer_forward(&mg, tk, t, &c), 0);
        double mx = 0, e = 0, ch = 0;
        for (int i = 0; i < V; i++) {
            mx = fmax(mx, fabs(b[i]));
            e = fmax(e, fabs(b[i] - c[i]));
            ch = fmax(ch, fabs(a[i] - b[i]));
        }
        worst = fmax(worst, e / mx);
        max_change = fmax(max_change, ch / mx);
    }
    ck_assert_msg(worst < TOL_MERGE, "merged vs unmerged rel err %g", worst);
    ck_assert_msg(max_change > 100 * TOL_MERGE, "adapter barely changes logits (%g)", max_change);
    plait_infer_free(&base);
    plait_infer_free(&un);
    plait_infer_free(&mg);
    plait_infer_free(&mg);
    plait_lora_free(&lo);
    plait_model_free(&m);
}
END_TEST

START_TEST(test_prefill_matches_decode)
{
    plait_model_t m;
    load_stories(&m, NULL);
    int V = m.cfg.vocab_size, T = 100;
    int tokens[100];
    for (int i = 0; i < T; i++)
        tokens[i] = (i * 53 + 1) % V;
    plait_pool_t *pool;
    ck_assert_int_eq(plait_pool_create(&pool, 2), 0);
    plait_infer_config_t ic;
    plait_infer_config_default(&ic);
    ic.prefill_chunk = 7;
    ic.pool = pool;
    plait_infer_t a, b;
    plait_infer_init(&a);
    plait_infer_init(&b);
    ck_assert_int_eq(plait_infer_setup(&a, &m, NULL, &ic), 0);
    ic.pool = NULL;
    ck_assert_int_eq(plait_infer_setup(&b, &m, NULL, &ic), 0);
    const float *la, *lb;
    /* Prefill 60 then continue token by token, against all token by token. */
    ck_assert_int_eq(plait_infer_prefill(&a, tokens, 60, 0, &la), 0);
    for (int t = 0; t < T; t++) {
        ck_assert_int_eq(plait_infer_forward(&b, tokens[t], t, &lb), 0);
        if (t >= 60) ck_assert_int_eq(plait_infer_forward(&a, tokens[t], t, &la), 0);
        if (t >= 59) {
            double e = 0, mx = 0;
            for (int i = 0; i < V; i++) {
                mx = fmax(mx, fabs(lb[i]));
                e = fmax(e, fabs(la[i] - lb[i]));
            }
            ck_assert_msg(e / mx < TOL_PREFILL, "pos %d: rel err %g", t, e / mx);
        }
    }
    plait_infer_free(&a);
    plait_infer_free(&b);
    plait_pool_destroy(pool);
    plait_model_free(&m);
}
END_TEST

/* A logit bias (a device's personal output bias) is added to the logits exactly, on both paths, and
 * greedy decoding follows it. */
START_TEST(test_logit_bias)
{
    plait_model_t m;
    load_stories(&m, NULL);
    int V = m.cfg.vocab_size;
    plait_infer_t a;
    plait_infer_init(&a);
    float *bias = calloc((size_t)V, sizeof(float)), *l0 = malloc((size_t)V * sizeof(float));
    ck_assert_int_eq(plait_infer_set_logit_bias(&a, bias), PLAIT_EINVAL); /* not set up */
    ck_assert_int_eq(plait_infer_setup(&a, &m, NULL, NULL), 0);
    int tokens[5] = {1, 403, 407, 261, 378};
    const float *lg;
    ck_assert_int_eq(plait_infer_prefill(&a, tokens, 5, 0, &lg), 0);
    memcpy(l0, lg, (size_t)V * sizeof(float));
    for (int v = 0; v < V; v++) bias[v] = 0.25f * (float)(v % 5) - 0.5f;
    bias[77] = 100.0f; /* overwhelming: the argmax */
    ck_assert_int_eq(plait_infer_set_logit_bias(&a, bias), 0);
    ck_assert_int_eq(plait_infer_prefill(&a, tokens, 5, 0, &lg), 0);
    for (int v = 0; v < V; v++) ck_assert_float_eq(lg[v], l0[v] + bias[v]);
    ck_assert_int_eq(plait_infer_forward(&a, tokens[4], 4, &lg), 0);
    for (int v = 0; v < V; v++) ck_assert_float_eq_tol(lg[v], l0[v] + bias[v], 1e-4f);
    int best = 0;
    for (int v = 1; v < V; v++)
        if (lg[v] > lg[best]) best = v;
    ck_assert_int_eq(best, 77);
    ck_assert_int_eq(plait_infer_set_logit_bias(&a, NULL), 0);
    ck_assert_int_eq(plait_infer_prefill(&a, tokens, 5, 0, &lg), 0);
    for (int v = 0; v < V; v++) ck_assert_float_eq(lg[v], l0[v]);
    bias[3] = INFINITY;
    ck_assert_int_eq(plait_infer_set_logit_bias(&a, bias), PLAIT_EINVAL);
    free(bias);
    free(l0);
    plait_infer_free(&a);
    plait_model_free(&m);
}
END_TEST

/* A kNN memory at inference: the query is the final normed hidden state of the last position, the same vector
 * the trainer gives as a key (plait_train_eval_hidden), so a memory filled from the trainer and mixed into the
 * trainer's logits agrees with the inference engine's mixed logits at every position; with the adapter too. */
START_TEST(test_knn_query_matches_trainer)
{
    plait_model_t m;
    load_stories(&m, NULL);
    size_t V = (size_t)m.cfg.vocab_size, C = (size_t)m.cfg.dim, T = 16;
    plait_lora_t lo;
    plait_lora_init(&lo);
    plait_lora_config_t lc;
    plait_lora_config_default(&lc);
    ck_assert_int_eq(plait_lora_setup(&lo, &m.cfg, &lc), 0);
    plait_lora_init_weights(&lo, 3);
    for (size_t i = lo.n_a; i < lo.n_params; i++) lo.params[i] = 0.01f * (float)((int)(i % 7) - 3); /* B != 0 */
    plait_train_config_t tc = plait_train_config_default();
    tc.B = 1;
    tc.T = (int)T;
    tc.threads = 1;
    plait_trainer_t *tr = NULL;
    ck_assert_int_eq(plait_train_create(&tr, &m, &lo, &tc), 0);
    int32_t row[17] = {1, 403, 407, 261, 378, 300, 45, 12, 99, 260, 301, 17, 404, 88, 77, 5, 61};
    float *lg = malloc(T * V * sizeof(float)), *hid = malloc(T * C * sizeof(float)), *want = malloc(V * sizeof(float));
    ck_assert_int_eq(plait_train_eval_hidden(tr, row, lg, hid), 0);
    plait_knn_t knn;
    plait_knn_init(&knn);
    ck_assert_int_eq(plait_knn_setup(&knn, C, T), 0);
    for (size_t t = 0; t < T; t++) ck_assert_int_eq(plait_knn_add(&knn, hid + t * C, row[t + 1]), 0);
    knn.k = 4;
    knn.tau = 0.5;
    knn.lambda = 0.5;
    plait_infer_t st;
    plait_infer_init(&st);
    ck_assert_int_eq(plait_infer_setup(&st, &m, &lo, NULL), 0);
    ck_assert_int_eq(plait_infer_set_knn(&st, &knn), 0);
    int toks[17];
    for (size_t i = 0; i < 17; i++) toks[i] = row[i];
    for (size_t t = 0; t < T; t++) {
        const float *got;
        ck_assert_int_eq(plait_infer_prefill(&st, toks, t + 1, 0, &got), 0);
        memcpy(want, lg + t * V, V * sizeof(float));
        ck_assert_int_eq(plait_knn_mix_logits(&knn, hid + t * C, want, V), 0);
        double tot = 0;
        for (size_t v = 0; v < V; v++) {
            ck_assert_msg(fabsf(got[v] - want[v]) < 2e-3f, "pos %zu token %zu: %g vs %g", t, v, got[v], want[v]);
            tot += exp((double)got[v]);
        }
        ck_assert_double_eq_tol(tot, 1.0, 1e-3); /* log-probabilities */
        ck_assert_double_gt(exp((double)got[row[t + 1]]), 0.5 * 0.9); /* the memory's own entry votes */
    }
    /* A memory of another width, or holding a token outside the vocabulary, is refused. */
    plait_knn_t bad;
    plait_knn_init(&bad);
    ck_assert_int_eq(plait_knn_setup(&bad, C + 1, 1), 0);
    float *k1 = calloc(C + 1, sizeof(float));
    ck_assert_int_eq(plait_knn_add(&bad, k1, 3), 0);
    ck_assert_int_eq(plait_infer_set_knn(&st, &bad), PLAIT_EINVAL);
    ck_assert_int_eq(plait_knn_setup(&bad, C, 1), 0);
    ck_assert_int_eq(plait_knn_add(&bad, k1, (int32_t)V), 0);
    ck_assert_int_eq(plait_infer_set_knn(&st, &bad), PLAIT_EINVAL);
    ck_assert_int_eq(plait_infer_set_knn(&st, NULL), 0);
    free(k1);
    plait_knn_free(&bad);
    plait_knn_free(&knn);
    plait_infer_free(&st);
    plait_train_destroy(tr);
    plait_lora_free(&lo);
    free(lg);
    free(hid);
    free(want);
    plait_model_free(&m);
}
END_TEST

START_TEST(test_sampler)
{
    /* run.c random_u32 from state 42 (values computed independently). */
    uint64_t s = 42;
    ck_assert_uint_eq(plait_xorshift_u32(&s), 1456360119u);
    ck_assert_uint_eq(plait_xorshift_u32(&s), 3359763283u);
    ck_assert_uint_eq(plait_xorshift_u32(&s), 3393612768u);
    for (int i = 0; i < 1000; i++) {
        float f = plait_xorshift_f32(&s);
        ck_assert(f >= 0.0f && f < 1.0f);
    }

    float logits[4] = {logf(0.5f), logf(0.3f), logf(0.2f), -INFINITY};
    float copy[4];
    memcpy(copy, logits, sizeof(copy));
    plait_sampler_t sm;
    plait_sampler_init(&sm);
    ck_assert_int_eq(plait_sampler_setup(&sm, 4, 0.0f, 0.9f, 1), 0);
    ck_assert_int_eq(plait_sampler_sample(&sm, logits), 0);
    plait_sampler_free(&sm);

    /* Full distribution (top-p 1), then nucleus 0.6: {0, 1} renormalized. */
    const float topps[2] = {1.0f, 0.6f};
    const double want[2][4] = {{0.5, 0.3, 0.2, 0.0}, {0.625, 0.375, 0.0, 0.0}};
    for (int k = 0; k < 2; k++) {
        ck_assert_int_eq(plait_sampler_setup(&sm, 4, 1.0f, topps[k], 1234), 0);
        int count[4] = {0};
        const int N = 40000;
        for (int i = 0; i < N; i++)
            count[plait_sampler_sample(&sm, logits)]++;
        for (int i = 0; i < 4; i++)
            ck_assert_msg(fabs((double)count[i] / N - want[k][i]) < 0.015,
                          "topp %g token %d: %g, want %g", (double)topps[k], i,
                          (double)count[i] / N, want[k][i]);
        plait_sampler_free(&sm);
    }
    ck_assert_int_eq(memcmp(copy, logits, sizeof(copy)), 0); /* logits untouched */
    /* Low temperature concentrates on the argmax. */
    ck_assert_int_eq(plait_sampler_setup(&sm, 4, 0.01f, 0.9f, 9), 0);
    for (int i = 0; i < 100; i++)
        ck_assert_int_eq(plait_sampler_sample(&sm, logits), 0);
    plait_sampler_free(&sm);
    plait_sampler_free(&sm);
    ck_assert_int_eq(plait_sampler_setup(&sm, 4, -1.0f, 0.9f, 1), PLAIT_EINVAL);
    ck_assert_int_eq(plait_sampler_setup(&sm, 4, NAN, 0.9f, 1), PLAIT_EINVAL);
    ck_assert_int_eq(plait_sampler_setup(&sm, 4, 1.0f, NAN, 1), PLAIT_EINVAL);
    ck_assert_int_eq(plait_sampler_setup(&sm, 0, 1.0f, 0.9f, 1), PLAIT_EINVAL);
}
END_TEST

static int stop_after_3(void *ctx, const char *piece, size_t len)
{
    (void)piece;
    (void)len;
    return ++*(int *)ctx >= 3;
}

START_TEST(test_generate_sampling)
{
    plait_model_t m;
    plait_tok_t tok;
    load_stories(&m, &tok);
    plait_infer_config_t ic;
    plait_infer_config_default(&ic);
    ic.max_ctx = 64;
    plait_infer_t st;
    plait_infer_init(&st);
    ck_assert_int_eq(plait_infer_setup(&st, &m, NULL, &ic), 0);
    plait_gen_config_t g;
    plait_gen_config_default(&g);
    ck_assert_int_eq(g.steps, 256);
    ck_assert(g.temperature == 1.0f && g.topp == 0.9f);
    g.seed = 7;
    plait_gen_stats_t st1, st2;
    char *a = gen_text(&st, &tok, "Once upon", &g, &st1);
    char *b = gen_text(&st, &tok, "Once upon", &g, &st2);
    ck_assert_str_eq(a, b); /* same seed, same text */
    ck_assert(strncmp(a, "Once upon", 9) == 0);
    /* steps above max_ctx are clamped to it (run.c clamps to seq_len). */
    ck_assert_uint_le(st1.generated_tokens, 64 - 2);
    ck_assert(st1.stop_token == -1 ? st1.generated_tokens == 62
                                   : st1.stop_token == 1 || st1.stop_token == 2);
    free(b);
    g.seed = 8;
    b = gen_text(&st, &tok, "Once upon", &g, NULL);
    ck_assert_str_ne(a, b);
    free(a);
    free(b);
    /* The callback can stop generation. */
    int calls = 0;
    ck_assert_int_eq(plait_generate(&st, &tok, "Once upon a time", &g, stop_after_3, &calls, NULL),
                     PLAIT_ECANCELED);
    ck_assert_int_eq(calls, 3);
    /* A NULL callback discards text; bad configs fail before any callback. */
    ck_assert_int_eq(plait_generate(&st, &tok, NULL, &g, NULL, NULL, NULL), 0);
    calls = 0;
    g.temperature = -1.0f;
    ck_assert_int_eq(plait_gen_config_validate(&g), PLAIT_EINVAL);
    ck_assert_ptr_nonnull(strstr(plait_errmsg(), "temperature"));
    ck_assert_int_eq(plait_generate(&st, &tok, "x", &g, stop_after_3, &calls, NULL), PLAIT_EINVAL);
    g.temperature = 1.0f;
    g.topp = NAN;
    ck_assert_int_eq(plait_generate(&st, &tok, "x", &g, stop_after_3, &calls, NULL), PLAIT_EINVAL);
    g.topp = 0.9f;
    ck_assert_int_eq(plait_gen_config_validate(&g), 0);
    g.temperature = 1.0f;
    g.bos = 0;
    ck_assert_int_eq(plait_generate(&st, &tok, "", &g, stop_after_3, &calls, NULL), PLAIT_EINVAL);
    ck_assert_int_eq(calls, 0);
    plait_infer_free(&st);
    plait_tok_free(&tok);
    plait_model_free(&m);
}
END_TEST

START_TEST(test_errors)
{
    plait_model_t m;
    load_stories(&m, NULL);
    plait_infer_t st;
    plait_infer_init(&st);
    const float *lg;
    ck_assert_int_eq(plait_infer_forward(&st, 1, 0, &lg), PLAIT_EINVAL); /* not set up */
    plait_infer_config_t ic;
    plait_infer_config_default(&ic);
    ic.max_ctx = m.cfg.seq_len + 1;
    ck_assert_int_eq(plait_infer_setup(&st, &m, NULL, &ic), PLAIT_EINVAL);
    ic.max_ctx = -1;
    ck_assert_int_eq(plait_infer_setup(&st, &m, NULL, &ic), PLAIT_EINVAL);
    ic.max_ctx = 8;
    ic.prefill_chunk = 0;
    ck_assert_int_eq(plait_infer_setup(&st, &m, NULL, &ic), PLAIT_EINVAL);
    ic.prefill_chunk = 4;
    ck_assert_int_eq(plait_infer_setup(&st, NULL, NULL, &ic), PLAIT_EINVAL);

    /* An adapter for another shape. */
    plait_model_config_t other = m.cfg;
    other.dim = 32;
    other.n_heads = 4;
    other.n_kv_heads = 2;
    plait_lora_config_t lc;
    plait_lora_config_default(&lc);
    plait_lora_t lo;
    plait_lora_init(&lo);
    ck_assert_int_eq(plait_lora_setup(&lo, &other, &lc), 0);
    ck_assert_int_eq(plait_infer_setup(&st, &m, &lo, &ic), PLAIT_EMISMATCH);
    plait_lora_free(&lo);

    ck_assert_int_eq(plait_infer_setup(&st, &m, NULL, &ic), 0);
    ck_assert_int_eq(plait_infer_forward(&st, 1, 0, &lg), 0);
    ck_assert_int_eq(plait_infer_forward(&st, -1, 1, &lg), PLAIT_EINVAL);
    ck_assert_int_eq(plait_infer_forward(&st, 512, 1, &lg), PLAIT_EINVAL);
    ck_assert_int_eq(plait_infer_forward(&st, 1, 8, &lg), PLAIT_ETOOBIG);
    ck_assert_int_eq(plait_infer_forward(&st, 1, -1, &lg), PLAIT_ETOOBIG);
    int toks[9] = {1, 2, 3, 4, 5, 6, 7, 8, 9};
    ck_assert_int_eq(plait_infer_prefill(&st, toks, 9, 0, &lg), PLAIT_ETOOBIG);
    ck_assert_int_eq(plait_infer_prefill(&st, toks, 2, 7, &lg), PLAIT_ETOOBIG);
    ck_assert_int_eq(plait_infer_prefill(&st, toks, 0, 0, &lg), PLAIT_EINVAL);
    ck_assert_int_eq(plait_infer_prefill(&st, toks, 8, 0, NULL), 0);

    /* A tokenizer of another vocabulary size. */
    plait_tok_t tok;
    plait_tok_init(&tok);
    ck_assert_int_eq(plait_generate(&st, &tok, "x", NULL, NULL, NULL, NULL), PLAIT_EINVAL);
    plait_infer_free(&st);
    plait_infer_free(NULL);
    plait_model_free(&m);
}
END_TEST

Suite *infer_suite(void)
{
    Suite *s = suite_create("infer");
    TCase *tc = tcase_create("known_answers");
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, test_greedy_known_answer);
    tcase_add_test(tc, test_zoo_prompt);
    suite_add_tcase(s, tc);
    tc = tcase_create("reference");
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, test_reference_stories260k_wq_wv);
    tcase_add_test(tc, test_reference_tiny_untied_all7);
    tcase_add_test(tc, test_naive_no_adapter);
    tcase_add_test(tc, test_merged_vs_unmerged);
    tcase_add_test(tc, test_prefill_matches_decode);
    tcase_add_test(tc, test_logit_bias);
    tcase_add_test(tc, test_knn_query_matches_trainer);
    suite_add_tcase(s, tc);
    tc = tcase_create("sampling");
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, test_sampler);
    tcase_add_test(tc, test_generate_sampling);
    tcase_add_test(tc, test_errors);
    suite_add_tcase(s, tc);
    return s;
}
