/*
 * infer.c: the forward pass of a llama2.c-architecture model with an
 * optional LoRA adapter, over a KV cache; the llama2.c sampler; generation.
 *
 * Shape letters as in model.h: C = dim, H = hidden_dim, L = n_layers,
 * NH = n_heads, NKV = n_kv_heads, HS = head_size, KV = kv_dim, V = vocab,
 * R = LoRA rank; T_max = positions in the KV cache; P = prefill chunk rows.
 *
 * One code path runs n (1..P) consecutive tokens: single-token decoding is
 * n = 1, and a prompt is prefilled in chunks, so the two cannot disagree. The
 * keys and values of the rows are written straight into the cache (rows of
 * consecutive positions of one layer are contiguous there), then each row
 * attends to every position up to its own.
 *
 * Architecture (llama2.c run.c): RMSNorm (eps 1e-5), rotary embedding on
 * interleaved pairs of each head (theta 10000; the angles are computed here,
 * in double, not read from the checkpoint's legacy tables), grouped-query
 * attention (query head h reads key/value head h / (NH / NKV)), SwiGLU
 * feed-forward w2(silu(w1 x) * w3 x), and a classifier that may be tied to
 * the token embedding. No biases.
 *
 * Invariants: every buffer is allocated once in setup; forward never
 * allocates and cannot fail once its arguments are checked. The model and
 * adapter are only read. Merged weights exist only for targeted projections;
 * s->w points each (layer, projection) at the base weight or its merged copy.
 */
#include "plait/infer.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define MAX_CHUNK 1024
/* A matrix-vector product is split over threads only from this many
 * multiply-adds: below it a pool dispatch costs more than it saves. */
#define MV_SPLIT_MIN (1u << 15)

/* --------------------------------------------------------------- setup */

void plait_infer_config_default(plait_infer_config_t *cfg)
{
    cfg->max_ctx = 0;        /* the model's seq_len */
    cfg->merge = 0;          /* unmerged: reads the adapter live, no weight copies */
    cfg->prefill_chunk = 32; /* big enough for matmul efficiency, small activations */
    cfg->pool = NULL;        /* single-threaded */
}

void plait_infer_init(plait_infer_t *s)
{
    memset(s, 0, sizeof(*s));
}

void plait_infer_free(plait_infer_t *s)
{
    if (!s) return;
    free(s->act);
    free(s->key_cache);
    free(s->value_cache);
    free((void *)s->w);
    free(s->merged_w);
    memset(s, 0, sizeof(*s));
}

/* a * b into *out unless it overflows size_t. */
static int mul_ok(size_t a, size_t b, size_t *out)
{
    if (a != 0 && b > SIZE_MAX / a) return 0;
    *out = a * b;
    return 1;
}

static int same_shape(const plait_model_config_t *a, const plait_model_config_t *b)
{
    return a->dim == b->dim && a->hidden_dim == b->hidden_dim && a->n_layers == b->n_layers &&
           a->n_heads == b->n_heads && a->n_kv_heads == b->n_kv_heads;
}

void plait_infer_remerge(plait_infer_t *s)
{
    if (!s || !s->merged || !s->lora) return;
    const plait_lora_t *lo = s->lora;
    const plait_model_t *m = s->model;
    size_t R = (size_t)lo->cfg.rank;
    double sc = (double)lo->scaling;
    float *dst = s->merged_w;
    for (int l = 0; l < m->cfg.n_layers; l++) {
        for (int p = 0; p < PLAIT_NPROJ; p++) {
            size_t slot = plait_lora_slot(l, (plait_proj_t)p);
            const float *A = lo->A[slot], *B = lo->B[slot];
            if (!A || !B) continue;
            int in, out;
            plait_proj_shape(&m->cfg, (plait_proj_t)p, &in, &out);
            const float *W = plait_proj_weight(m, l, (plait_proj_t)p);
            /* W' (out, in) = W + s · B (out, R) · A (R, in), accumulated in double. */
            for (size_t o = 0; o < (size_t)out; o++) {
                for (size_t i = 0; i < (size_t)in; i++) {
                    double acc = 0.0;
                    for (size_t r = 0; r < R; r++)
                        acc += (double)B[o * R + r] * (double)A[r * (size_t)in + i];
                    dst[o * (size_t)in + i] = (float)((double)W[o * (size_t)in + i] + sc * acc);
                }
            }
            s->w[slot] = dst;
            dst += (size_t)out * (size_t)in;
        }
    }
}

int plait_infer_setup(plait_infer_t *s, const plait_model_t *model, const plait_lora_t *lora,
                      const plait_infer_config_t *cfg)
{
    plait_infer_config_t def;
    if (!cfg) {
        plait_infer_config_default(&def);
        cfg = &def;
    }
    if (!s || !model || !model->mats)
        return plait_fail(PLAIT_EINVAL, "infer_setup: no state or no loaded model");
    const plait_model_config_t *mc = &model->cfg;
    int T = cfg->max_ctx == 0 ? mc->seq_len : cfg->max_ctx;
    if (T < 1 || T > mc->seq_len)
        return plait_fail(PLAIT_EINVAL,
                          "infer_setup: max_ctx %d is outside 1..%d (the model's seq_len)",
                          cfg->max_ctx, mc->seq_len);
    if (cfg->prefill_chunk < 1 || cfg->prefill_chunk > MAX_CHUNK)
        return plait_fail(PLAIT_EINVAL, "infer_setup: prefill_chunk %d is outside 1..%d",
                          cfg->prefill_chunk, MAX_CHUNK);
    if (lora) {
        if (!lora->params || !lora->A || !lora->B)
            return plait_fail(PLAIT_EINVAL, "infer_setup: adapter is not set up");
        if (!same_shape(&lora->model, mc))
            return plait_fail(
                PLAIT_EMISMATCH,
                "infer_setup: adapter made for dim %d hidden %d layers %d heads %d/%d, model is "
                "%d %d %d %d/%d",
                lora->model.dim, lora->model.hidden_dim, lora->model.n_layers, lora->model.n_heads,
                lora->model.n_kv_heads, mc->dim, mc->hidden_dim, mc->n_layers, mc->n_heads,
                mc->n_kv_heads);
    }
    size_t P = (size_t)cfg->prefill_chunk, C = (size_t)mc->dim, H = (size_t)mc->hidden_dim;
    size_t L = (size_t)mc->n_layers, KV = (size_t)mc->kv_dim, HS = (size_t)mc->head_size;
    size_t NH = (size_t)mc->n_heads, V = (size_t)mc->vocab_size,
           R = lora ? (size_t)lora->cfg.rank : 1;
    size_t Tm = (size_t)T;

    /* Sizes, each checked for overflow: model limits keep them far from
     * SIZE_MAX on 64-bit hosts, but a 32-bit device must fail cleanly. */
    size_t n_x, n_h, n_att, n_lt, n_rope, n_act = 0, n_kv, t1;
    if (!mul_ok(P, C, &n_x) || !mul_ok(P, H, &n_h) || !mul_ok(P * NH, Tm, &n_att) ||
        !mul_ok(P, R, &n_lt) || !mul_ok(P, HS, &n_rope) || !mul_ok(L, Tm, &t1) ||
        !mul_ok(t1, KV, &n_kv) || n_kv > SIZE_MAX / sizeof(float))
        return plait_fail(PLAIT_ETOOBIG,
                          "infer_setup: buffers for context %d exceed the address space", T);
    size_t parts[] = {n_x, n_x, n_x, n_x, n_h, n_h, n_att, n_lt, n_rope, V};
    for (size_t i = 0; i < sizeof(parts) / sizeof(parts[0]); i++) {
        if (n_act > SIZE_MAX / sizeof(float) - parts[i])
            return plait_fail(PLAIT_ETOOBIG, "infer_setup: activations exceed the address space");
        n_act += parts[i];
    }
    size_t n_merged = 0;
    /* A quantized base is never expanded: its adapter stays unmerged. */
    int merge = lora && cfg->merge && plait_model_is_f32(model);
    if (merge) {
        for (size_t l = 0; l < L; l++)
            for (int p = 0; p < PLAIT_NPROJ; p++) {
                if (!lora->A[plait_lora_slot((int)l, (plait_proj_t)p)]) continue;
                int in, out;
                plait_proj_shape(mc, (plait_proj_t)p, &in, &out);
                n_merged += (size_t)in * (size_t)out; /* bounded by the model's own size */
            }
    }

    plait_infer_init(s);
    s->act = calloc(n_act, sizeof(float));
    s->key_cache = calloc(n_kv, sizeof(float));
    s->value_cache = calloc(n_kv, sizeof(float));
    s->w = calloc(L * PLAIT_NPROJ, sizeof(float *));
    if (n_merged) s->merged_w = malloc(n_merged * sizeof(float));
    if (!s->act || !s->key_cache || !s->value_cache || !s->w || (n_merged && !s->merged_w)) {
        plait_infer_free(s);
        return plait_fail(PLAIT_ENOMEM,
                          "infer_setup: %zu activation, 2 x %zu cache and %zu merged floats", n_act,
                          n_kv, n_merged);
    }
    float *a = s->act;
    s->x = a, a += n_x;
    s->xb = a, a += n_x;
    s->xb2 = a, a += n_x;
    s->q = a, a += n_x;
    s->hb = a, a += n_h;
    s->hb2 = a, a += n_h;
    s->att = a, a += n_att;
    s->lora_t = a, a += n_lt;
    s->rope = a, a += n_rope;
    s->logits = a;
    s->model = model;
    s->lora = lora;
    s->pool = cfg->pool;
    s->max_ctx = T;
    s->chunk = (int)P;
    s->merged_n = n_merged;
    for (size_t l = 0; l < L; l++)
        for (int p = 0; p < PLAIT_NPROJ; p++)
            s->w[plait_lora_slot((int)l, (plait_proj_t)p)] =
                plait_proj_weight(model, (int)l, (plait_proj_t)p);
    if (merge) {
        s->merged = 1;
        plait_infer_remerge(s);
    }
    return 0;
}

/* ------------------------------------------------------------- kernels */

typedef struct {
    float *out;
    const float *inp, *w;
    size_t IC;
    int accumulate;
} mv_job_t;

/* Output elements [b, e) of a matrix-vector product, via the matmul kernel
 * on a slice of W's rows. */
static void mv_rows(void *ctx, size_t b, size_t e)
{
    mv_job_t *j = ctx;
    plait_matmul_forward(NULL, j->out + b, j->inp, j->w + b * j->IC, 1, j->IC, e - b,
                         j->accumulate);
}

/* out (N, OC) (+)= inp (N, IC) · W (OC, IC)ᵀ. The matmul splits over rows, so
 * a single row (decoding) is split over output channels here instead. */
static void mm(plait_infer_t *s, float *out, const float *inp, const float *w, size_t N, size_t IC,
               size_t OC, int accumulate)
{
    if (N == 1 && s->pool && plait_pool_size(s->pool) > 1 && IC * OC >= MV_SPLIT_MIN) {
        mv_job_t j = {.out = out, .inp = inp, .w = w, .IC = IC, .accumulate = accumulate};
        plait_pool_run(s->pool, mv_rows, &j, OC);
        return;
    }
    plait_matmul_forward(s->pool, out, inp, w, N, IC, OC, accumulate);
}

typedef struct {
    float *out;
    const float *inp;
    const plait_wmat_t *w;
    size_t IC;
} mvw_job_t;

static void mvw_rows(void *ctx, size_t b, size_t e)
{
    mvw_job_t *j = ctx;
    plait_wmat_t part = {(const uint8_t *)j->w->data + b * j->w->row_bytes, j->w->type, j->w->row_bytes};
    plait_matmul_forward_w(NULL, j->out + b, j->inp, &part, 1, j->IC, e - b, 0);
}

/* mm for a typed W (any plait_dtype_t): out (N, OC) = inp · Wᵀ. */
static void mm_w(plait_infer_t *s, float *out, const float *inp, const plait_wmat_t *w, size_t N, size_t IC,
                 size_t OC)
{
    if (N == 1 && s->pool && plait_pool_size(s->pool) > 1 && IC * OC >= MV_SPLIT_MIN) {
        mvw_job_t j = {.out = out, .inp = inp, .w = w, .IC = IC};
        plait_pool_run(s->pool, mvw_rows, &j, OC);
        return;
    }
    plait_matmul_forward_w(s->pool, out, inp, w, N, IC, OC, 0);
}

/* out (N, OUT) = inp (N, IN) · Wᵀ of projection p in layer l, plus the
 * unmerged adapter term s · (inp · Aᵀ) · Bᵀ. */
static void proj(plait_infer_t *s, int l, plait_proj_t p, float *out, const float *inp, size_t N)
{
    int in, o;
    plait_proj_shape(&s->model->cfg, p, &in, &o);
    size_t slot = plait_lora_slot(l, p);
    if (s->w[slot]) mm(s, out, inp, s->w[slot], N, (size_t)in, (size_t)o, 0);
    else mm_w(s, out, inp, plait_model_proj(s->model, l, p), N, (size_t)in, (size_t)o);
    if (s->model->bias && p <= PLAIT_WV) { /* q, k, v biases (Qwen2) */
        const float *bias = s->model->bias[(size_t)l * 3 + (size_t)p];
        for (size_t r = 0; r < N; r++)
            for (size_t c = 0; c < (size_t)o; c++) out[r * (size_t)o + c] += bias[c];
    }
    if (s->merged || !s->lora) return;
    const float *A = s->lora->A[slot], *B = s->lora->B[slot];
    if (!A || !B) return;
    size_t R = (size_t)s->lora->cfg.rank;
    float sc = s->lora->scaling;
    float *t = s->lora_t; /* (N, R) */
    mm(s, t, inp, A, N, (size_t)in, R, 0);
    for (size_t i = 0; i < N * R; i++)
        t[i] *= sc;
    mm(s, out, t, B, N, R, (size_t)o, 1);
}

/* out (N, C) = x / rms(x) * w, row by row. */
static void rmsnorm(float *out, const float *x, const float *w, size_t N, size_t C, float eps)
{
    for (size_t n = 0; n < N; n++) {
        const float *xr = x + n * C;
        float *o = out + n * C;
        double ss = 0.0;
        for (size_t i = 0; i < C; i++)
            ss += (double)xr[i] * (double)xr[i];
        float inv = (float)(1.0 / sqrt(ss / (double)C + (double)eps));
        for (size_t i = 0; i < C; i++)
            o[i] = w[i] * (inv * xr[i]);
    }
}

/* In-place softmax of x[0..n). */
static void softmax(float *x, size_t n)
{
    float mx = x[0];
    for (size_t i = 1; i < n; i++)
        if (x[i] > mx) mx = x[i];
    float sum = 0.0f;
    for (size_t i = 0; i < n; i++) {
        x[i] = expf(x[i] - mx);
        sum += x[i];
    }
    for (size_t i = 0; i < n; i++)
        x[i] /= sum;
}

/* Rotate the interleaved pairs of each head of v (nheads, HS) by rope (HS). */
static void rope_apply(float *v, const float *rope, size_t nheads, size_t HS, int neox)
{
    for (size_t h = 0; h < nheads; h++) {
        float *vh = v + h * HS;
        if (neox) { /* rotate-half: pairs (i, i + HS/2) at angle i */
            size_t half = HS / 2;
            for (size_t i = 0; i < half; i++) {
                float c = rope[2 * i], sn = rope[2 * i + 1];
                float a = vh[i], b = vh[i + half];
                vh[i] = a * c - b * sn;
                vh[i + half] = a * sn + b * c;
            }
            continue;
        }
        for (size_t j = 0; j < HS; j += 2) {
            float c = rope[j], sn = rope[j + 1];
            float a = vh[j], b = vh[j + 1];
            vh[j] = a * c - b * sn;
            vh[j + 1] = a * sn + b * c;
        }
    }
}

typedef struct {
    plait_infer_t *s;
    size_t l, pos0, NH;
} att_job_t;

/* Items [b, e) of (row, head): each attends to positions 0 .. its own. */
static void att_items(void *ctx, size_t b, size_t e)
{
    att_job_t *j = ctx;
    plait_infer_t *s = j->s;
    const plait_model_config_t *mc = &s->model->cfg;
    size_t C = (size_t)mc->dim, KV = (size_t)mc->kv_dim, HS = (size_t)mc->head_size,
           Tm = (size_t)s->max_ctx;
    size_t kv_mul = (size_t)(mc->n_heads / mc->n_kv_heads);
    float scale = 1.0f / sqrtf((float)HS);
    const float *kc = s->key_cache + j->l * Tm * KV, *vc = s->value_cache + j->l * Tm * KV;
    for (size_t it = b; it < e; it++) {
        size_t row = it / j->NH, h = it % j->NH, pos = j->pos0 + row, kvh = h / kv_mul;
        const float *qh = s->q + row * C + h * HS;
        float *att = s->att + it * Tm; /* (pos + 1) scores */
        for (size_t t = 0; t <= pos; t++) {
            const float *kh = kc + t * KV + kvh * HS;
            float d = 0.0f;
            for (size_t i = 0; i < HS; i++)
                d += qh[i] * kh[i];
            att[t] = d * scale;
        }
        softmax(att, pos + 1);
        float *o = s->xb + row * C + h * HS;
        memset(o, 0, HS * sizeof(float));
        for (size_t t = 0; t <= pos; t++) {
            const float *vh = vc + t * KV + kvh * HS;
            float a = att[t];
            for (size_t i = 0; i < HS; i++)
                o[i] += a * vh[i];
        }
    }
}

/* Run tokens[0..n) at positions pos0.. (n <= P, all checked); logits of the
 * last row when want_logits. */
static void forward_rows(plait_infer_t *s, const int *tokens, size_t n, size_t pos0,
                         int want_logits)
{
    const plait_model_t *m = s->model;
    const plait_model_config_t *mc = &m->cfg;
    size_t C = (size_t)mc->dim, H = (size_t)mc->hidden_dim, KV = (size_t)mc->kv_dim,
           HS = (size_t)mc->head_size;
    size_t NH = (size_t)mc->n_heads, NKV = (size_t)mc->n_kv_heads, Tm = (size_t)s->max_ctx;

    for (size_t i = 0; i < n; i++)
        plait_dequant_row(s->x + i * C, plait_model_embedding(m), (size_t)tokens[i], 0, C);
    /* Rotation angles (pos * theta^(-2j/HS)) per row, computed in double. */
    for (size_t i = 0; i < n; i++) {
        for (size_t j = 0; j < HS; j += 2) {
            double freq = pow((double)mc->rope_theta, -(double)j / (double)HS);
            double ang = (double)(pos0 + i) / (double)mc->rope_scale * freq;
            s->rope[i * HS + j] = (float)cos(ang);
            s->rope[i * HS + j + 1] = (float)sin(ang);
        }
    }

    for (int l = 0; l < mc->n_layers; l++) {
        size_t lu = (size_t)l;
        float *kc = s->key_cache + (lu * Tm + pos0) * KV;   /* (n, KV) rows of this layer */
        float *vc = s->value_cache + (lu * Tm + pos0) * KV; /* (n, KV) */

        /* Attention block. */
        rmsnorm(s->xb, s->x, m->w.rms_att + lu * C, n, C, mc->rms_eps);
        proj(s, l, PLAIT_WQ, s->q, s->xb, n);
        proj(s, l, PLAIT_WK, kc, s->xb, n);
        proj(s, l, PLAIT_WV, vc, s->xb, n);
        for (size_t i = 0; i < n; i++) {
            rope_apply(s->q + i * C, s->rope + i * HS, NH, HS, mc->rope_neox);
            rope_apply(kc + i * KV, s->rope + i * HS, NKV, HS, mc->rope_neox);
        }
        att_job_t aj = {.s = s, .l = lu, .pos0 = pos0, .NH = NH};
        plait_pool_run(s->pool, att_items, &aj, n * NH);
        proj(s, l, PLAIT_WO, s->xb2, s->xb, n);
        for (size_t i = 0; i < n * C; i++)
            s->x[i] += s->xb2[i];

        /* Feed-forward block. */
        rmsnorm(s->xb, s->x, m->w.rms_ffn + lu * C, n, C, mc->rms_eps);
        proj(s, l, PLAIT_W1, s->hb, s->xb, n);
        proj(s, l, PLAIT_W3, s->hb2, s->xb, n);
        for (size_t i = 0; i < n * H; i++) {
            float v = s->hb[i];
            s->hb[i] = v / (1.0f + expf(-v)) * s->hb2[i];
        }
        proj(s, l, PLAIT_W2, s->xb2, s->hb, n);
        for (size_t i = 0; i < n * C; i++)
            s->x[i] += s->xb2[i];
    }

    if (want_logits) {
        rmsnorm(s->xb, s->x + (n - 1) * C, m->w.rms_final, 1, C, mc->rms_eps);
        mm_w(s, s->logits, s->xb, plait_model_classifier(m), 1, C, (size_t)mc->vocab_size);
        if (s->logit_bias)
            for (size_t v = 0; v < (size_t)mc->vocab_size; v++) s->logits[v] += s->logit_bias[v];
        /* Cannot fail: plait_infer_set_knn checked the width and every token. */
        if (s->knn && plait_knn_mix_logits(s->knn, s->xb, s->logits, (size_t)mc->vocab_size) != 0) s->knn = NULL;
    }
}

int plait_infer_set_knn(plait_infer_t *s, const plait_knn_t *knn)
{
    if (!s || !s->model) return plait_fail(PLAIT_EINVAL, "infer: state is not set up");
    if (knn && knn->n > 0) {
        if (knn->C != (size_t)s->model->cfg.dim)
            return plait_fail(PLAIT_EINVAL, "infer: a kNN memory of width %zu for a model of %d", knn->C,
                              s->model->cfg.dim);
        for (size_t i = 0; i < knn->n; i++)
            if (knn->vals[i] < 0 || knn->vals[i] >= s->model->cfg.vocab_size)
                return plait_fail(PLAIT_EINVAL, "infer: kNN entry %zu holds a token outside the vocabulary", i);
    }
    s->knn = knn;
    return 0;
}

int plait_infer_set_logit_bias(plait_infer_t *s, const float *bias)
{
    if (!s || !s->model) return plait_fail(PLAIT_EINVAL, "infer: state is not set up");
    if (bias)
        for (int v = 0; v < s->model->cfg.vocab_size; v++)
            if (!isfinite(bias[v])) return plait_fail(PLAIT_EINVAL, "infer: logit bias %d is not finite", v);
    s->logit_bias = bias;
    return 0;
}

static int check_tokens(const plait_infer_t *s, const int *tokens, size_t n, int pos0)
{
    if (!s || !s->act) return plait_fail(PLAIT_EINVAL, "infer: state is not set up");
    if (n == 0 || !tokens) return plait_fail(PLAIT_EINVAL, "infer: no tokens");
    if (pos0 < 0 || (size_t)pos0 >= (size_t)s->max_ctx || n > (size_t)(s->max_ctx - pos0))
        return plait_fail(PLAIT_ETOOBIG, "infer: positions %d..%zu outside the context of %d", pos0,
                          (size_t)pos0 + n - 1, s->max_ctx);
    for (size_t i = 0; i < n; i++)
        if (tokens[i] < 0 || tokens[i] >= s->model->cfg.vocab_size)
            return plait_fail(PLAIT_EINVAL, "infer: token %d at index %zu is outside 0..%d",
                              tokens[i], i, s->model->cfg.vocab_size - 1);
    return 0;
}

int plait_infer_prefill(plait_infer_t *s, const int *tokens, size_t n, int pos0,
                        const float **logits)
{
    int rc = check_tokens(s, tokens, n, pos0);
    if (rc != 0) return rc;
    size_t P = (size_t)s->chunk;
    for (size_t k = 0; k < n; k += P) {
        size_t m = n - k < P ? n - k : P;
        forward_rows(s, tokens + k, m, (size_t)pos0 + k, k + m == n);
    }
    if (logits) *logits = s->logits;
    return 0;
}

int plait_infer_forward(plait_infer_t *s, int token, int pos, const float **logits)
{
    return plait_infer_prefill(s, &token, 1, pos, logits);
}

/* ------------------------------------------------------------- sampling */

uint32_t plait_xorshift_u32(uint64_t *state)
{
    /* xorshift64* as llama2.c random_u32 (https://en.wikipedia.org/wiki/Xorshift). */
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    return (uint32_t)((*state * 0x2545F4914F6CDD1Dull) >> 32);
}

float plait_xorshift_f32(uint64_t *state)
{
    return (float)(plait_xorshift_u32(state) >> 8) / 16777216.0f;
}

void plait_sampler_init(plait_sampler_t *s)
{
    memset(s, 0, sizeof(*s));
}

void plait_sampler_free(plait_sampler_t *s)
{
    if (!s) return;
    free(s->probs);
    free(s->probidx);
    memset(s, 0, sizeof(*s));
}

int plait_sampler_setup(plait_sampler_t *s, int vocab_size, float temperature, float topp,
                        uint64_t seed)
{
    if (!s || vocab_size < 1 || vocab_size > PLAIT_MODEL_MAX_VOCAB)
        return plait_fail(PLAIT_EINVAL, "sampler: vocab_size %d is outside 1..%d", vocab_size,
                          PLAIT_MODEL_MAX_VOCAB);
    if (!(temperature >= 0.0f) || !isfinite(temperature))
        return plait_fail(PLAIT_EINVAL, "sampler: temperature %g must be finite and >= 0",
                          (double)temperature);
    if (isnan(topp)) return plait_fail(PLAIT_EINVAL, "sampler: top-p is NaN");
    plait_sampler_init(s);
    s->probs = malloc((size_t)vocab_size * sizeof(float));
    s->probidx = malloc((size_t)vocab_size * sizeof(plait_probidx_t));
    if (!s->probs || !s->probidx) {
        plait_sampler_free(s);
        return plait_fail(PLAIT_ENOMEM, "sampler: buffers for %d tokens", vocab_size);
    }
    s->vocab_size = vocab_size;
    s->temperature = temperature;
    s->topp = topp;
    s->rng = seed ? seed : 0x9E3779B97F4A7C15ull;
    return 0;
}

static int argmax(const float *p, int n)
{
    int best = 0;
    for (int i = 1; i < n; i++)
        if (p[i] > p[best]) best = i;
    return best;
}

static int sample_mult(const float *p, int n, float coin)
{
    float cdf = 0.0f;
    for (int i = 0; i < n; i++) {
        cdf += p[i];
        if (coin < cdf) return i;
    }
    return n - 1; /* rounding */
}

static int cmp_probidx(const void *a, const void *b)
{
    const plait_probidx_t *x = a, *y = b;
    if (x->prob > y->prob) return -1;
    if (x->prob < y->prob) return 1;
    return x->index < y->index ? -1 : (x->index > y->index); /* deterministic ties */
}

/* run.c sample_topp: the smallest set of most likely tokens whose mass
 * exceeds topp, sampled in proportion. Tokens below (1 - topp) / (n - 1)
 * cannot be in it and are dropped before sorting. */
static int sample_topp(const float *p, int n, float topp, plait_probidx_t *pi, float coin)
{
    int n0 = 0;
    const float cutoff = n > 1 ? (1.0f - topp) / (float)(n - 1) : 0.0f;
    for (int i = 0; i < n; i++) {
        if (p[i] >= cutoff) {
            pi[n0].index = i;
            pi[n0].prob = p[i];
            n0++;
        }
    }
    if (n0 == 0) return argmax(p, n); /* cannot happen for a distribution; keeps NaN input safe */
    qsort(pi, (size_t)n0, sizeof(*pi), cmp_probidx);
    float cum = 0.0f;
    int last = n0 - 1;
    for (int i = 0; i < n0; i++) {
        cum += pi[i].prob;
        if (cum > topp) {
            last = i;
            break;
        }
    }
    float r = coin * cum, cdf = 0.0f;
    for (int i = 0; i <= last; i++) {
        cdf += pi[i].prob;
        if (r < cdf) return pi[i].index;
    }
    return pi[last].index;
}

int plait_sampler_sample(plait_sampler_t *s, const float *logits)
{
    int n = s->vocab_size;
    if (s->temperature == 0.0f) return argmax(logits, n);
    int overflow = 0;
    for (int i = 0; i < n; i++) {
        s->probs[i] = logits[i] / s->temperature;
        overflow |= isinf(s->probs[i]) && isfinite(logits[i]);
    }
    if (overflow) {
        /* A tiny temperature overflows logits / T to inf, and softmax of inf
         * is NaN. Softmax is shift-invariant, so divide after subtracting the
         * maximum: every value is then <= 0 (only run.c's order is kept
         * otherwise, so samples stay bit-identical to it). */
        float mx = logits[0];
        for (int i = 1; i < n; i++)
            if (logits[i] > mx) mx = logits[i];
        for (int i = 0; i < n; i++)
            s->probs[i] = (logits[i] - mx) / s->temperature;
    }
    softmax(s->probs, (size_t)n);
    float coin = plait_xorshift_f32(&s->rng);
    if (s->topp <= 0.0f || s->topp >= 1.0f) return sample_mult(s->probs, n, coin);
    return sample_topp(s->probs, n, s->topp, s->probidx, coin);
}

/* ----------------------------------------------------------- generation */

void plait_gen_config_default(plait_gen_config_t *cfg)
{
    cfg->temperature = 1.0f; /* llama2.c run.c default */
    cfg->topp = 0.9f;        /* llama2.c run.c default */
    cfg->steps = 256;        /* llama2.c run.c default */
    cfg->seed = 42;          /* fixed so runs replay; the CLI may seed from the clock */
    cfg->bos = 1;            /* run.c always starts with BOS */
    cfg->stop_at_eos = 1;    /* EOS ends a text for any caller; run.c only checks BOS */
    cfg->printable_only = 1; /* run.c safe_printf */
}

int plait_gen_config_validate(const plait_gen_config_t *cfg)
{
    if (!cfg) return plait_fail(PLAIT_EINVAL, "generate: no config");
    if (!(cfg->temperature >= 0.0f) || !isfinite(cfg->temperature))
        return plait_fail(PLAIT_EINVAL, "generate: temperature %g must be finite and >= 0",
                          (double)cfg->temperature);
    if (isnan(cfg->topp)) return plait_fail(PLAIT_EINVAL, "generate: top-p is NaN");
    return 0;
}

int plait_generate(plait_infer_t *s, const plait_tok_t *tok, const char *prompt,
                   const plait_gen_config_t *cfg, plait_piece_cb cb, void *ctx,
                   plait_gen_stats_t *stats)
{
    plait_gen_config_t def;
    if (!cfg) {
        plait_gen_config_default(&def);
        cfg = &def;
    }
    if (stats) memset(stats, 0, sizeof(*stats)), stats->stop_token = -1;
    int rc = plait_gen_config_validate(cfg);
    if (rc != 0) return rc;
    if (!s || !s->act || !tok || !tok->vocab)
        return plait_fail(PLAIT_EINVAL, "generate: state or tokenizer not set up");
    if (tok->vocab_size != s->model->cfg.vocab_size)
        return plait_fail(PLAIT_EINVAL, "generate: tokenizer has %d tokens, model %d",
                          tok->vocab_size, s->model->cfg.vocab_size);
    if (!prompt) prompt = "";
    size_t plen = strlen(prompt), np = 0;
    int steps = cfg->steps <= 0 || cfg->steps > s->max_ctx ? s->max_ctx : cfg->steps;
    plait_sampler_t smp;
    plait_sampler_init(&smp);
    int *ids = NULL;
    if ((rc = plait_sampler_setup(&smp, s->model->cfg.vocab_size, cfg->temperature, cfg->topp,
                                  cfg->seed)) != 0)
        goto exit;
    size_t cap = plait_tok_encode_bound(plen);
    ids = malloc(cap * sizeof(int));
    if (!ids) {
        rc = plait_fail(PLAIT_ENOMEM, "generate: prompt of %zu bytes", plen);
        goto exit;
    }
    if ((rc = plait_tok_encode(tok, prompt, plen, cfg->bos, 0, ids, cap, &np)) != 0) goto exit;
    if (np == 0) {
        rc = plait_fail(PLAIT_EINVAL,
                        "generate: empty prompt without BOS gives nothing to start from");
        goto exit;
    }
    if (stats) stats->prompt_tokens = np;

    /* Run the prompt in one batched pass when generation goes past it; a
     * prompt longer than steps is only echoed, as run.c does. */
    const float *logits = NULL;
    if ((size_t)steps > np - 1) {
        if ((rc = plait_infer_prefill(s, ids, np, 0, &logits)) != 0) goto exit;
    }
    int token = ids[0];
    for (int pos = 0; pos < steps;) {
        int next;
        if ((size_t)pos < np - 1) {
            next = ids[pos + 1];
        } else {
            if ((size_t)pos != np - 1 && (rc = plait_infer_forward(s, token, pos, &logits)) != 0)
                goto exit;
            for (int v = 0; v < s->model->cfg.vocab_size; v++)
                if (!isfinite(logits[v])) {
                    /* Sampling NaN picks an arbitrary token: garbage text, no error. */
                    rc = plait_fail(PLAIT_EPROTO,
                                    "generate: non-finite logit at position %d "
                                    "(the model or adapter overflows float32)",
                                    pos);
                    goto exit;
                }
            next = plait_sampler_sample(&smp, logits);
            if (stats) stats->generated_tokens++;
        }
        pos++;
        if (next == PLAIT_TOK_BOS || (cfg->stop_at_eos && next == PLAIT_TOK_EOS)) {
            if (stats) stats->stop_token = next;
            break;
        }
        size_t len;
        const char *piece = plait_tok_decode(tok, token, next, &len);
        if (piece && len > 0 && cb &&
            (!cfg->printable_only || plait_tok_piece_is_printable(piece, len))) {
            if (cb(ctx, piece, len) != 0) {
                rc = plait_fail(PLAIT_ECANCELED, "generate: stopped by the callback at position %d",
                                pos);
                goto exit;
            }
        }
        token = next;
    }
    rc = 0;
exit:
    free(ids);
    plait_sampler_free(&smp);
    return rc;
}
