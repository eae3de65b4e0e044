/*
 * model_gguf.c: llama-family models in GGUF v3 files, read-only and memory-
 * mapped, and the writer that converts a float32 model to GGUF.
 *
 * Architectures: "llama" (llama, SmolLM2: interleaved RoPE, as llama.cpp's
 * converter permutes Hugging Face q/k rows for it) and "qwen2" (rotate-half
 * RoPE, q/k/v biases). Metadata read (prefix = architecture):
 * embedding_length, feed_forward_length, block_count,
 * attention.head_count, attention.head_count_kv (default head_count),
 * context_length, rope.freq_base (10000), rope.scaling.type ("none" or
 * "linear") with rope.scaling.factor, attention.layer_norm_rms_epsilon
 * (1e-5), rope.dimension_count (must be the head size when present).
 *
 * Tensors (ggml shapes, ne[0] fastest): token_embd.weight [C, V],
 * output_norm.weight [C], output.weight [C, V] (absent: tied),
 * blk.N.{attn_norm [C], attn_q [C, C], attn_k [C, KV], attn_v [C, KV],
 * attn_output [C, C], ffn_norm [C], ffn_gate [C, H], ffn_down [H, C],
 * ffn_up [C, H]}.weight and, when present in every layer,
 * blk.N.attn_{q,k,v}.bias. Matrices stay in the mapping in their own type
 * (F32, F16, BF16, Q8_0, Q4_0); the kernels dequantize them as they go.
 * Norm vectors are copied into one small F32 buffer (per-layer norms are
 * contiguous there, as the kernels index them), and so are biases that are
 * not F32.
 */
#include "plait/gguf.h"
#include "plait/crypto.h"
#include "plait/model.h"
#include "plait/file.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

typedef struct {
    const plait_gguf_t *g;
    const char *path;
    float *aux; /* next free float of the aux buffer */
} ld_t;

static int find_t(ld_t *x, const char *name, uint64_t ne0, uint64_t ne1, int optional,
                  const plait_gguf_tensor_t **out)
{
    const plait_gguf_tensor_t *t = plait_gguf_tensor(x->g, name);
    *out = t;
    if (!t) return optional ? 0 : plait_fail(PLAIT_EPROTO, "model %s: tensor '%s' is missing", x->path, name);
    uint32_t want = ne1 ? 2 : 1;
    if (t->n_dims != want || t->ne[0] != ne0 || (ne1 && t->ne[1] != ne1))
        return plait_fail(PLAIT_EPROTO, "model %s: tensor '%s' has shape [%llu, %llu] (%u dims), expected [%llu, %llu]",
                          x->path, name, (unsigned long long)t->ne[0], (unsigned long long)t->ne[1], t->n_dims,
                          (unsigned long long)ne0, (unsigned long long)ne1);
    return 0;
}

static int get_mat(ld_t *x, const char *name, int cols, int rows, plait_wmat_t *w)
{
    const plait_gguf_tensor_t *t;
    int rc = find_t(x, name, (uint64_t)cols, (uint64_t)rows, 0, &t);
    if (rc != 0) return rc;
    w->data = t->data;
    w->type = (int)t->type;
    w->row_bytes = t->nbytes / (size_t)rows;
    return 0;
}

/* A 1-D F32/F16/BF16 tensor of n floats, converted into dst, or into the
 * next n free floats of the aux buffer when dst is NULL; *where (if given)
 * gets the copy. */
static int get_vec(ld_t *x, const char *name, int n, float *dst, const float **where, int optional)
{
    const plait_gguf_tensor_t *t;
    int rc = find_t(x, name, (uint64_t)n, 0, optional, &t);
    if (rc != 0 || !t) return rc;
    if (t->type != PLAIT_DT_F32 && t->type != PLAIT_DT_F16 && t->type != PLAIT_DT_BF16)
        return plait_fail(PLAIT_EPROTO, "model %s: vector '%s' is %s (F32, F16 or BF16 expected)", x->path, name,
                          plait_dtype_name((int)t->type));
    if (!dst) {
        dst = x->aux;
        x->aux += n;
    }
    plait_wmat_t w = {t->data, (int)t->type, t->nbytes};
    plait_dequant_row(dst, &w, 0, 0, (size_t)n);
    if (where) *where = dst;
    return 0;
}

static int read_config(ld_t *x, plait_model_config_t *c, const char *arch)
{
    char k[128];
    uint64_t v;
    double f;
    int rc;
#define U(field, suffix, max)                                                        \
    snprintf(k, sizeof(k), "%s." suffix, arch);                                      \
    if ((rc = plait_gguf_get_uint(x->g, k, (max), &v)) != 0) return rc;              \
    c->field = (int)v;
    U(dim, "embedding_length", PLAIT_MODEL_MAX_DIM);
    U(hidden_dim, "feed_forward_length", PLAIT_MODEL_MAX_HIDDEN);
    U(n_layers, "block_count", PLAIT_MODEL_MAX_LAYERS);
    U(n_heads, "attention.head_count", PLAIT_MODEL_MAX_HEADS);
    snprintf(k, sizeof(k), "%s.attention.head_count_kv", arch);
    if (plait_gguf_find(x->g, k)) {
        U(n_kv_heads, "attention.head_count_kv", PLAIT_MODEL_MAX_HEADS);
    } else {
        c->n_kv_heads = c->n_heads;
    }
    U(seq_len, "context_length", PLAIT_MODEL_MAX_SEQ);
#undef U
    snprintf(k, sizeof(k), "%s.rope.freq_base", arch);
    if (plait_gguf_find(x->g, k)) {
        if ((rc = plait_gguf_get_float(x->g, k, &f)) != 0) return rc;
        c->rope_theta = (float)f;
        if (!(c->rope_theta > 1.0f)) return plait_fail(PLAIT_EPROTO, "model %s: %s = %g", x->path, k, f);
    }
    snprintf(k, sizeof(k), "%s.attention.layer_norm_rms_epsilon", arch);
    if (plait_gguf_find(x->g, k)) {
        if ((rc = plait_gguf_get_float(x->g, k, &f)) != 0) return rc;
        c->rms_eps = (float)f;
        if (!(c->rms_eps > 0.0f)) return plait_fail(PLAIT_EPROTO, "model %s: %s = %g", x->path, k, f);
    }
    snprintf(k, sizeof(k), "%s.rope.scaling.type", arch);
    const char *st = "none";
    size_t stn = 4;
    if (plait_gguf_find(x->g, k) && (rc = plait_gguf_get_str(x->g, k, &st, &stn)) != 0) return rc;
    if (stn == 6 && memcmp(st, "linear", 6) == 0) {
        snprintf(k, sizeof(k), "%s.rope.scaling.factor", arch);
        if ((rc = plait_gguf_get_float(x->g, k, &f)) != 0) return rc;
        c->rope_scale = (float)f;
        if (!(c->rope_scale >= 1.0f)) return plait_fail(PLAIT_EPROTO, "model %s: %s = %g", x->path, k, f);
    } else if (!(stn == 4 && memcmp(st, "none", 4) == 0)) {
        return plait_fail(PLAIT_EPROTO, "model %s: RoPE scaling '%.*s' is not supported (none, linear)", x->path,
                          (int)(stn > 40 ? 40 : stn), st);
    }
    return 0;
}

int plait_model_load_gguf(plait_model_t *m, const char *path)
{
    int ret;
    void *map = NULL;
    size_t map_len = 0;
    plait_gguf_t g;
    memset(&g, 0, sizeof(g));
    char label[300];
    snprintf(label, sizeof(label), "model %s", path);
    if ((ret = plait_file_map(path, label, &map, &map_len)) != 0) return ret;
    if ((ret = plait_gguf_parse(&g, map, map_len)) != 0) {
        char d[400];
        snprintf(d, sizeof(d), "%s", plait_errmsg());
        ret = plait_fail(ret, "model %s: %s", path, d);
        goto fail;
    }
    ld_t x = {.g = &g, .path = path};
    const char *arch;
    size_t an;
    if ((ret = plait_gguf_get_str(&g, "general.architecture", &arch, &an)) != 0) goto fail;
    char archs[16];
    if (an == 5 && memcmp(arch, "llama", 5) == 0) {
        strcpy(archs, "llama");
    } else if (an == 5 && memcmp(arch, "qwen2", 5) == 0) {
        strcpy(archs, "qwen2");
    } else {
        ret = plait_fail(PLAIT_EPROTO, "model %s: architecture '%.*s' is not supported (llama, qwen2)", path,
                         (int)(an > 40 ? 40 : an), arch);
        goto fail;
    }
    plait_model_config_t c;
    memset(&c, 0, sizeof(c));
    if ((ret = read_config(&x, &c, archs)) != 0) goto fail;
    c.rope_neox = strcmp(archs, "qwen2") == 0;
    const plait_gguf_tensor_t *emb = plait_gguf_tensor(&g, "token_embd.weight");
    if (!emb || emb->n_dims != 2 || emb->ne[1] > PLAIT_MODEL_MAX_VOCAB) {
        ret = plait_fail(PLAIT_EPROTO, "model %s: token_embd.weight is missing, not 2-D or has > %d rows", path,
                         PLAIT_MODEL_MAX_VOCAB);
        goto fail;
    }
    c.vocab_size = (int)emb->ne[1];
    c.shared = plait_gguf_tensor(&g, "output.weight") == NULL;
    c.qkv_bias = plait_gguf_tensor(&g, "blk.0.attn_q.bias") != NULL;
    if ((ret = plait_model_config_validate(&c)) != 0) {
        char d[400];
        snprintf(d, sizeof(d), "%s", plait_errmsg());
        ret = plait_fail(ret, "model %s: %s", path, d);
        goto fail;
    }
    char k[128];
    snprintf(k, sizeof(k), "%s.rope.dimension_count", archs);
    uint64_t rd;
    if (plait_gguf_find(&g, k) && (plait_gguf_get_uint(&g, k, (uint64_t)c.head_size, &rd) != 0 ||
                                   rd != (uint64_t)c.head_size)) {
        ret = plait_fail(PLAIT_EPROTO, "model %s: %s is not the head size %d (partial RoPE is not supported)", path, k,
                         c.head_size);
        goto fail;
    }
    size_t L = (size_t)c.n_layers, C = (size_t)c.dim, KV = (size_t)c.kv_dim;
    m->cfg = c;
    m->map = map;
    m->map_len = map_len;
    m->is_gguf = 1;
    map = NULL; /* owned by m from here: plait_model_free releases it */
    m->mats = calloc(L * PLAIT_NPROJ + 2, sizeof(*m->mats));
    m->aux = malloc((2 * L * C + C + (c.qkv_bias ? L * (C + 2 * KV) : 0)) * sizeof(float));
    if (c.qkv_bias) m->bias = calloc(L * 3, sizeof(float *));
    if (!m->mats || !m->aux || (c.qkv_bias && !m->bias)) {
        ret = plait_fail(PLAIT_ENOMEM, "model %s: tables", path);
        goto fail_m;
    }
    float *rms_att = m->aux, *rms_ffn = rms_att + L * C, *rms_final = rms_ffn + L * C;
    x.aux = rms_final + C;
    static const char *const proj_names[PLAIT_NPROJ] = {"attn_q",   "attn_k",   "attn_v",  "attn_output",
                                                         "ffn_gate", "ffn_down", "ffn_up"};
    for (size_t l = 0; l < L; l++) {
        char n[96];
        for (int p = 0; p < PLAIT_NPROJ; p++) {
            int in, out;
            plait_proj_shape(&c, (plait_proj_t)p, &in, &out);
            snprintf(n, sizeof(n), "blk.%zu.%s.weight", l, proj_names[p]);
            if ((ret = get_mat(&x, n, in, out, &m->mats[l * PLAIT_NPROJ + (size_t)p])) != 0) goto fail_m;
        }
        snprintf(n, sizeof(n), "blk.%zu.attn_norm.weight", l);
        if ((ret = get_vec(&x, n, (int)C, rms_att + l * C, NULL, 0)) != 0) goto fail_m;
        snprintf(n, sizeof(n), "blk.%zu.ffn_norm.weight", l);
        if ((ret = get_vec(&x, n, (int)C, rms_ffn + l * C, NULL, 0)) != 0) goto fail_m;
        if (c.qkv_bias) {
            static const char *const bn[3] = {"attn_q", "attn_k", "attn_v"};
            for (int b = 0; b < 3; b++) {
                snprintf(n, sizeof(n), "blk.%zu.%s.bias", l, bn[b]);
                if ((ret = get_vec(&x, n, b == 0 ? (int)C : (int)KV, NULL, &m->bias[l * 3 + (size_t)b], 0)) != 0)
                    goto fail_m;
            }
        }
    }
    if ((ret = get_vec(&x, "output_norm.weight", (int)C, rms_final, NULL, 0)) != 0) goto fail_m;
    plait_wmat_t *we = &m->mats[L * PLAIT_NPROJ], *wc = we + 1;
    if ((ret = get_mat(&x, "token_embd.weight", (int)C, c.vocab_size, we)) != 0) goto fail_m;
    if (c.shared) *wc = *we;
    else if ((ret = get_mat(&x, "output.weight", (int)C, c.vocab_size, wc)) != 0) goto fail_m;
    /* Every weight must be finite (as for .bin files): one row at a time. */
    size_t wmax = (size_t)(c.hidden_dim > c.dim ? c.hidden_dim : c.dim);
    float *row = malloc(wmax * sizeof(float));
    if (!row) {
        ret = plait_fail(PLAIT_ENOMEM, "model %s: row", path);
        goto fail_m;
    }
    for (size_t i = 0; i < L * PLAIT_NPROJ + 2 && ret == 0; i++) {
        int in = c.dim, out = c.vocab_size;
        if (i < L * PLAIT_NPROJ) plait_proj_shape(&c, (plait_proj_t)(i % PLAIT_NPROJ), &in, &out);
        for (int r = 0; r < out && ret == 0; r++) {
            plait_dequant_row(row, &m->mats[i], (size_t)r, 0, (size_t)in);
            for (int e = 0; e < in; e++)
                if (!isfinite(row[e])) {
                    ret = plait_fail(PLAIT_EPROTO, "model %s: %s of layer %zu holds a non-finite value at row %d",
                                     path, i < L * PLAIT_NPROJ ? plait_proj_name((plait_proj_t)(i % PLAIT_NPROJ))
                                                               : (i == L * PLAIT_NPROJ ? "token_embd" : "output"),
                                     i / PLAIT_NPROJ, r);
                    break;
                }
        }
    }
    free(row);
    size_t n_aux = 2 * L * C + C + (c.qkv_bias ? L * (C + 2 * KV) : 0);
    for (size_t i = 0; i < n_aux && ret == 0; i++)
        if (!isfinite(m->aux[i])) ret = plait_fail(PLAIT_EPROTO, "model %s: a norm or bias holds a non-finite value", path);
    if (ret != 0) goto fail_m;
    m->w.rms_att = rms_att;
    m->w.rms_ffn = rms_ffn;
    m->w.rms_final = rms_final;
    m->w.token_embedding = we->type == PLAIT_DT_F32 ? we->data : NULL;
    m->w.wcls = wc->type == PLAIT_DT_F32 ? wc->data : NULL;
    plait_sha256((const uint8_t *)m->map, m->map_len, m->sha256);
    plait_gguf_free(&g);
    return 0;
fail_m:
    plait_model_free(m);
fail:
    plait_gguf_free(&g);
    plait_file_unmap(map, map_len);
    return ret;
}

/* ------------------------------------------------------------- writer */

static int add_mat(plait_gguf_writer_t *w, const char *name, const plait_wmat_t *src, int rows, int cols, int type)
{
    size_t rb = plait_dtype_row_bytes(type, (size_t)cols);
    if (rb == 0) type = PLAIT_DT_F32, rb = (size_t)cols * 4; /* rows that are not whole blocks stay F32 */
    uint8_t *buf = malloc(rb * (size_t)rows);
    float *row = malloc((size_t)cols * sizeof(float));
    int rc = 0;
    if (!buf || !row) rc = plait_fail(PLAIT_ENOMEM, "gguf: tensor %s", name);
    for (int r = 0; r < rows && rc == 0; r++) {
        plait_dequant_row(row, src, (size_t)r, 0, (size_t)cols);
        rc = plait_quantize_row(buf + (size_t)r * rb, type, row, (size_t)cols);
    }
    uint64_t ne[2] = {(uint64_t)cols, (uint64_t)rows};
    if (rc == 0) rc = plait_gguf_add_tensor(w, name, type, 2, ne, buf, rb * (size_t)rows);
    free(buf);
    free(row);
    return rc;
}

static int add_vec(plait_gguf_writer_t *w, const char *name, const float *v, int n)
{
    uint64_t ne[1] = {(uint64_t)n};
    return plait_gguf_add_tensor(w, name, PLAIT_DT_F32, 1, ne, v, (size_t)n * sizeof(float));
}

int plait__model_gguf_fill(plait_gguf_writer_t *w, const plait_model_t *m, int type)
{
    const plait_model_config_t *c = &m->cfg;
    if (!plait_dtype_name(type)) return plait_fail(PLAIT_EINVAL, "gguf: unknown type %d", type);
    const char *a = c->rope_neox ? "qwen2" : "llama";
    char k[96];
    int rc = plait_gguf_add_str(w, "general.architecture", a);
#define PU(suffix, val)                                                          \
    if (rc == 0) {                                                               \
        snprintf(k, sizeof(k), "%s." suffix, a);                                 \
        rc = plait_gguf_add_u32(w, k, (uint32_t)(val));                          \
    }
#define PF(suffix, val)                                                          \
    if (rc == 0) {                                                               \
        snprintf(k, sizeof(k), "%s." suffix, a);                                 \
        rc = plait_gguf_add_f32(w, k, (val));                                    \
    }
    PU("context_length", c->seq_len);
    PU("embedding_length", c->dim);
    PU("block_count", c->n_layers);
    PU("feed_forward_length", c->hidden_dim);
    PU("attention.head_count", c->n_heads);
    PU("attention.head_count_kv", c->n_kv_heads);
    PU("rope.dimension_count", c->head_size);
    PF("rope.freq_base", c->rope_theta);
    PF("attention.layer_norm_rms_epsilon", c->rms_eps);
    if (rc == 0 && c->rope_scale != 1.0f) {
        snprintf(k, sizeof(k), "%s.rope.scaling.type", a);
        rc = plait_gguf_add_str(w, k, "linear");
        PF("rope.scaling.factor", c->rope_scale);
    }
#undef PU
#undef PF
    size_t L = (size_t)c->n_layers, C = (size_t)c->dim, KV = (size_t)c->kv_dim;
    if (rc == 0) rc = add_mat(w, "token_embd.weight", plait_model_embedding(m), c->vocab_size, c->dim, type);
    if (rc == 0) rc = add_vec(w, "output_norm.weight", m->w.rms_final, c->dim);
    if (rc == 0 && !c->shared) rc = add_mat(w, "output.weight", plait_model_classifier(m), c->vocab_size, c->dim, type);
    static const char *const proj_names[PLAIT_NPROJ] = {"attn_q",   "attn_k",   "attn_v",  "attn_output",
                                                         "ffn_gate", "ffn_down", "ffn_up"};
    for (size_t l = 0; l < L && rc == 0; l++) {
        char n[96];
        snprintf(n, sizeof(n), "blk.%zu.attn_norm.weight", l);
        rc = add_vec(w, n, m->w.rms_att + l * C, c->dim);
        snprintf(n, sizeof(n), "blk.%zu.ffn_norm.weight", l);
        if (rc == 0) rc = add_vec(w, n, m->w.rms_ffn + l * C, c->dim);
        for (int p = 0; p < PLAIT_NPROJ && rc == 0; p++) {
            int in, out;
            plait_proj_shape(c, (plait_proj_t)p, &in, &out);
            snprintf(n, sizeof(n), "blk.%zu.%s.weight", l, proj_names[p]);
            rc = add_mat(w, n, plait_model_proj(m, (int)l, (plait_proj_t)p), out, in, type);
        }
        if (c->qkv_bias && m->bias) {
            static const char *const bn[3] = {"attn_q", "attn_k", "attn_v"};
            for (int b = 0; b < 3 && rc == 0; b++) {
                snprintf(n, sizeof(n), "blk.%zu.%s.bias", l, bn[b]);
                rc = add_vec(w, n, m->bias[l * 3 + (size_t)b], b == 0 ? (int)C : (int)KV);
            }
        }
    }
    return rc;
}

int plait_model_save_gguf(const plait_model_t *m, const char *path, int type)
{
    plait_gguf_writer_t *w = NULL;
    int rc = plait_gguf_writer_create(&w);
    if (rc == 0) rc = plait__model_gguf_fill(w, m, type);
    if (rc == 0) rc = plait_gguf_write_file(w, path);
    plait_gguf_writer_free(w);
    return rc;
}
