/*
 * peft.c: LoRA adapters out to and in from Hugging Face PEFT and llama.cpp's
 * GGUF adapter format (see peft.h for names, shapes and the q/k row
 * permutation). Inputs are untrusted: every name is parsed exactly, every
 * shape is checked against the model and the declared rank, the set of
 * adapted projections must be the same in every layer (plait adapters
 * have one target set), and values must be finite.
 */
#include "plait/peft.h"
#include "plait/adapter.h"
#include "plait/file.h"
#include "plait/gguf.h"
#include "plait/json.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define MAX_CONFIG (1u << 20)

static const char *const hf_names[PLAIT_NPROJ] = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                                                   "self_attn.o_proj", "mlp.gate_proj",    "mlp.down_proj",
                                                   "mlp.up_proj"};
static const char *const hf_short[PLAIT_NPROJ] = {"q_proj", "k_proj", "v_proj", "o_proj",
                                                   "gate_proj", "down_proj", "up_proj"};
static const char *const gg_names[PLAIT_NPROJ] = {"attn_q",   "attn_k",   "attn_v", "attn_output",
                                                   "ffn_gate", "ffn_down", "ffn_up"};

int plait_peft_qk_row(const plait_model_config_t *c, plait_proj_t p, int row, int inverse)
{
    if ((p != PLAIT_WQ && p != PLAIT_WK) || c->rope_neox) return row;
    int HS = c->head_size, half = HS / 2, h = row / HS, r = row % HS;
    if (!inverse) return h * HS + (r % 2) * half + r / 2;  /* plait 2i + a -> HF a * HS/2 + i */
    return h * HS + 2 * (r % half) + r / half;              /* HF a * HS/2 + i -> plait 2i + a */
}

static int write_bytes(const char *path, const void *buf, size_t len)
{
    FILE *f = fopen(path, "wb");
    if (!f) return plait_fail(PLAIT_EIO, "%s: cannot create: %s", path, strerror(errno));
    int ok = fwrite(buf, 1, len, f) == len;
    ok = (fclose(f) == 0) && ok;
    return ok ? 0 : plait_fail(PLAIT_EIO, "%s: write failed", path);
}

/* ------------------------------------------------------------- export */

int plait_peft_export(const plait_lora_t *l, const char *dir)
{
    const plait_model_config_t *c = &l->model;
    size_t L = (size_t)c->n_layers, R = (size_t)l->cfg.rank, n = 0;
    plait_st_out_t *outs = calloc(2 * L * PLAIT_NPROJ, sizeof(*outs));
    char *names = calloc(2 * L * PLAIT_NPROJ, 96);
    float *perm = calloc((size_t)(c->dim > c->kv_dim ? c->dim : c->kv_dim) * R * 2 * L, sizeof(float));
    float *pp = perm;
    uint8_t *img = NULL;
    size_t len = 0;
    plait_buf_t js;
    plait_buf_init(&js, 1u << 16);
    int rc = 0;
    if (!outs || !names || !perm) rc = plait_fail(PLAIT_ENOMEM, "peft: export tables");
    for (size_t li = 0; li < L && rc == 0; li++)
        for (int p = 0; p < PLAIT_NPROJ; p++) {
            size_t slot = plait_lora_slot((int)li, (plait_proj_t)p);
            if (!l->A[slot]) continue;
            int in, out;
            plait_proj_shape(c, (plait_proj_t)p, &in, &out);
            for (int ab = 0; ab < 2; ab++) {
                char *nm = names + n * 96;
                snprintf(nm, 96, "base_model.model.model.layers.%zu.%s.lora_%c.weight", li, hf_names[p], ab ? 'B' : 'A');
                plait_st_out_t *o = &outs[n++];
                o->name = nm;
                o->ndim = 2;
                o->shape[0] = ab ? (uint64_t)out : R;
                o->shape[1] = ab ? R : (uint64_t)in;
                o->data = ab ? l->B[slot] : l->A[slot];
                if (ab && (p == PLAIT_WQ || p == PLAIT_WK) && !c->rope_neox) {
                    for (int r = 0; r < out; r++)
                        memcpy(pp + (size_t)plait_peft_qk_row(c, (plait_proj_t)p, r, 0) * R, l->B[slot] + (size_t)r * R,
                               R * sizeof(float));
                    o->data = pp;
                    pp += (size_t)out * R;
                }
            }
        }
    plait_st_meta_t meta = {.key = "format", .value = "pt"};
    if (rc == 0) rc = plait_safetensors_write_mem(outs, n, &meta, 1, &img, &len);
    if (rc == 0 && mkdir(dir, 0755) != 0 && errno != EEXIST)
        rc = plait_fail(PLAIT_EIO, "peft: cannot create %s: %s", dir, strerror(errno));
    char path[4096];
    if (rc == 0) {
        snprintf(path, sizeof(path), "%s/adapter_model.safetensors", dir);
        rc = write_bytes(path, img, len);
    }
    if (rc == 0) {
        plait_buf_printf(&js, "{\n  \"peft_type\": \"LORA\",\n  \"task_type\": \"CAUSAL_LM\",\n  \"r\": %d,\n"
                              "  \"lora_alpha\": ", l->cfg.rank);
        plait_buf_json_number(&js, (double)l->cfg.alpha);
        plait_buf_printf(&js, ",\n  \"lora_dropout\": 0.0,\n  \"bias\": \"none\",\n  \"fan_in_fan_out\": false,\n"
                              "  \"use_rslora\": false,\n  \"inference_mode\": true,\n  \"target_modules\": [");
        int first = 1;
        for (int p = 0; p < PLAIT_NPROJ; p++)
            if (l->cfg.targets & (1u << p)) {
                plait_buf_printf(&js, "%s\"%s\"", first ? "" : ", ", hf_short[p]);
                first = 0;
            }
        plait_buf_printf(&js, "]\n}\n");
        if ((rc = plait_buf_status(&js)) == 0) {
            snprintf(path, sizeof(path), "%s/adapter_config.json", dir);
            rc = write_bytes(path, js.data, js.len);
        }
    }
    plait_buf_free(&js);
    free(img);
    free(outs);
    free(names);
    free(perm);
    return rc;
}

int plait_lora_gguf_export(const plait_lora_t *l, const char *path)
{
    const plait_model_config_t *c = &l->model;
    plait_gguf_writer_t *w = NULL;
    int rc = plait_gguf_writer_create(&w);
    if (rc == 0) rc = plait_gguf_add_str(w, "general.architecture", c->rope_neox ? "qwen2" : "llama");
    if (rc == 0) rc = plait_gguf_add_str(w, "general.type", "adapter");
    if (rc == 0) rc = plait_gguf_add_str(w, "adapter.type", "lora");
    if (rc == 0) rc = plait_gguf_add_f32(w, "adapter.lora.alpha", l->cfg.alpha);
    size_t R = (size_t)l->cfg.rank;
    for (int li = 0; li < c->n_layers && rc == 0; li++)
        for (int p = 0; p < PLAIT_NPROJ && rc == 0; p++) {
            size_t slot = plait_lora_slot(li, (plait_proj_t)p);
            if (!l->A[slot]) continue;
            int in, out;
            plait_proj_shape(c, (plait_proj_t)p, &in, &out);
            char nm[96];
            uint64_t na[2] = {(uint64_t)in, R}, nb[2] = {R, (uint64_t)out};
            snprintf(nm, sizeof(nm), "blk.%d.%s.weight.lora_a", li, gg_names[p]);
            rc = plait_gguf_add_tensor(w, nm, PLAIT_DT_F32, 2, na, l->A[slot], (size_t)in * R * sizeof(float));
            snprintf(nm, sizeof(nm), "blk.%d.%s.weight.lora_b", li, gg_names[p]);
            if (rc == 0)
                rc = plait_gguf_add_tensor(w, nm, PLAIT_DT_F32, 2, nb, l->B[slot], (size_t)out * R * sizeof(float));
        }
    if (rc == 0) rc = plait_gguf_write_file(w, path);
    plait_gguf_writer_free(w);
    return rc;
}

/* ------------------------------------------------------------- import */

/* One imported half: layer, projection, A or B, rows x cols, values. */
typedef struct {
    int layer;
    plait_proj_t p;
    int is_b;
    uint64_t rows, cols;
    const void *src; /* F32/F64 safetensors tensor or a GGUF tensor */
    int kind;        /* 0 safetensors, 1 gguf */
} half_t;

/* Parse "<prefix>N<mid>NAME<suffix>" with NAME one of names[]. */
static int parse_name(const char *s, size_t n, const char *prefix, const char *const *names, const char *sfx_a,
                      const char *sfx_b, int *layer, plait_proj_t *p, int *is_b)
{
    size_t pl = strlen(prefix);
    if (n <= pl || memcmp(s, prefix, pl) != 0) return -1;
    size_t i = pl;
    long v = 0;
    if (i >= n || s[i] < '0' || s[i] > '9') return -1;
    while (i < n && s[i] >= '0' && s[i] <= '9' && v < 100000) v = v * 10 + (s[i++] - '0');
    if (i >= n || s[i] != '.') return -1;
    i++;
    for (int k = 0; k < PLAIT_NPROJ; k++) {
        size_t kl = strlen(names[k]);
        if (n - i < kl || memcmp(s + i, names[k], kl) != 0) continue;
        const char *rest = s + i + kl;
        size_t rl = n - i - kl;
        int b = -1;
        if (rl == strlen(sfx_a) && memcmp(rest, sfx_a, rl) == 0) b = 0;
        if (rl == strlen(sfx_b) && memcmp(rest, sfx_b, rl) == 0) b = 1;
        if (b < 0) continue;
        *layer = (int)v;
        *p = (plait_proj_t)k;
        *is_b = b;
        return 0;
    }
    return -1;
}

/* Set up l from halves and copy the values in (permuting q/k rows of PEFT's B). */
static int fill_lora(plait_lora_t *l, const plait_model_t *m, half_t *h, size_t nh, int rank, double alpha,
                     int peft, const char *what)
{
    const plait_model_config_t *c = &m->cfg;
    uint32_t targets = 0;
    for (size_t i = 0; i < nh; i++) {
        if (h[i].layer >= c->n_layers)
            return plait_fail(PLAIT_EMISMATCH, "%s: layer %d, the model has %d", what, h[i].layer, c->n_layers);
        targets |= 1u << h[i].p;
    }
    if (nh != 2 * (size_t)c->n_layers * (size_t)__builtin_popcount(targets))
        return plait_fail(PLAIT_EPROTO,
                          "%s: %zu tensors; plait adapters adapt the same projections in every layer, with A and B",
                          what, nh);
    if (rank < 1 || rank > PLAIT_LORA_MAX_RANK || !(alpha > 0.0) || !isfinite(alpha))
        return plait_fail(PLAIT_EPROTO, "%s: rank %d or alpha %g is out of range", what, rank, alpha);
    plait_lora_config_t lc = {.rank = rank, .alpha = (float)alpha, .targets = targets};
    int rc = plait_lora_setup(l, c, &lc);
    if (rc != 0) return rc;
    uint8_t *seen = calloc((size_t)c->n_layers * PLAIT_NPROJ * 2, 1);
    size_t wmax = (size_t)(c->hidden_dim > c->dim ? c->hidden_dim : c->dim);
    if ((size_t)rank > wmax) wmax = (size_t)rank;
    float *row = malloc(wmax * sizeof(float));
    if (!seen || !row) rc = plait_fail(PLAIT_ENOMEM, "%s: tables", what);
    for (size_t i = 0; i < nh && rc == 0; i++) {
        int in, out;
        plait_proj_shape(c, h[i].p, &in, &out);
        uint64_t wr = h[i].is_b ? (uint64_t)out : (uint64_t)rank, wc = h[i].is_b ? (uint64_t)rank : (uint64_t)in;
        size_t slot = plait_lora_slot(h[i].layer, h[i].p);
        if (h[i].rows != wr || h[i].cols != wc) {
            rc = plait_fail(PLAIT_EMISMATCH, "%s: layer %d %s lora_%c is %llux%llu, expected %llux%llu", what,
                            h[i].layer, plait_proj_name(h[i].p), h[i].is_b ? 'B' : 'A', (unsigned long long)h[i].rows,
                            (unsigned long long)h[i].cols, (unsigned long long)wr, (unsigned long long)wc);
            break;
        }
        if (seen[slot * 2 + (size_t)h[i].is_b]++) {
            rc = plait_fail(PLAIT_EPROTO, "%s: layer %d %s lora_%c appears twice", what, h[i].layer,
                            plait_proj_name(h[i].p), h[i].is_b ? 'B' : 'A');
            break;
        }
        float *dst = h[i].is_b ? l->B[slot] : l->A[slot];
        for (uint64_t r = 0; r < wr && rc == 0; r++) {
            if (h[i].kind == 0) {
                const plait_st_tensor_t *t = h[i].src;
                for (uint64_t k = 0; k < wc; k++) {
                    if (t->dtype == PLAIT_ST_F32) {
                        memcpy(&row[k], t->data + 4 * (r * wc + k), 4);
                    } else {
                        double d;
                        memcpy(&d, t->data + 8 * (r * wc + k), 8);
                        row[k] = (float)d;
                    }
                }
            } else {
                const plait_gguf_tensor_t *t = h[i].src;
                plait_wmat_t wm = {t->data, (int)t->type, plait_dtype_row_bytes((int)t->type, (size_t)wc)};
                plait_dequant_row(row, &wm, (size_t)r, 0, (size_t)wc);
            }
            for (uint64_t k = 0; k < wc; k++)
                if (!isfinite(row[k])) {
                    rc = plait_fail(PLAIT_EPROTO, "%s: layer %d %s has a non-finite value", what, h[i].layer,
                                    plait_proj_name(h[i].p));
                    break;
                }
            int to = peft && h[i].is_b ? plait_peft_qk_row(c, h[i].p, (int)r, 1) : (int)r;
            memcpy(dst + (size_t)to * wc, row, (size_t)wc * sizeof(float));
        }
    }
    free(seen);
    free(row);
    if (rc != 0) plait_lora_free(l);
    return rc;
}

static int import_peft(plait_lora_t *l, const char *dir, const plait_model_t *m)
{
    char path[4096];
    snprintf(path, sizeof(path), "%s/adapter_config.json", dir);
    uint8_t *cfg = NULL;
    size_t cl = 0;
    int rc = plait_file_read(path, NULL, MAX_CONFIG, &cfg, &cl); /* regular files only, size-capped */
    if (rc != 0) return rc == PLAIT_ENOENT || rc == PLAIT_EINVAL ? plait_fail(PLAIT_EIO, "peft: %s", plait_errmsg()) : rc;
    plait_json_t *js = NULL;
    rc = plait_json_parse((const char *)cfg, cl, &js);
    free(cfg);
    if (rc != 0) return plait_fail(PLAIT_EPROTO, "peft: %s is not JSON", path);
    int64_t r = 0;
    double alpha = 0;
    const plait_json_t *v;
    bool bv;
    size_t sl;
    const char *s;
    if (!(v = plait_json_get(js, "r")) || plait_json_int64(v, &r) != 0)
        rc = plait_fail(PLAIT_EPROTO, "peft: adapter_config.json has no integer \"r\"");
    else if (!(v = plait_json_get(js, "lora_alpha")) || plait_json_type(v) != PLAIT_JSON_NUMBER)
        rc = plait_fail(PLAIT_EPROTO, "peft: adapter_config.json has no number \"lora_alpha\"");
    else
        alpha = plait_json_number(v);
    if (rc == 0 && (v = plait_json_get(js, "peft_type")) && (!(s = plait_json_string(v, &sl)) || strcmp(s, "LORA") != 0))
        rc = plait_fail(PLAIT_EPROTO, "peft: peft_type is not \"LORA\"");
    if (rc == 0 && (v = plait_json_get(js, "use_rslora")) && plait_json_bool(v, &bv) == 0 && bv)
        rc = plait_fail(PLAIT_EPROTO, "peft: use_rslora is not supported");
    if (rc == 0 && (v = plait_json_get(js, "use_dora")) && plait_json_bool(v, &bv) == 0 && bv)
        rc = plait_fail(PLAIT_EPROTO, "peft: use_dora is not supported");
    if (rc == 0 && (v = plait_json_get(js, "bias")) && (!(s = plait_json_string(v, &sl)) || strcmp(s, "none") != 0))
        rc = plait_fail(PLAIT_EPROTO, "peft: bias other than \"none\" is not supported");
    plait_json_free(js);
    if (rc != 0) return rc;
    plait_safetensors_t st;
    plait_safetensors_init(&st);
    snprintf(path, sizeof(path), "%s/adapter_model.safetensors", dir);
    if ((rc = plait_safetensors_read(&st, path)) != 0) return rc;
    half_t *h = calloc(st.n_tensors ? st.n_tensors : 1, sizeof(*h));
    if (!h) rc = plait_fail(PLAIT_ENOMEM, "peft: tensors");
    for (size_t i = 0; i < st.n_tensors && rc == 0; i++) {
        const plait_st_tensor_t *t = &st.tensors[i];
        if (parse_name(t->name, strlen(t->name), "base_model.model.model.layers.", hf_names, ".lora_A.weight",
                       ".lora_B.weight", &h[i].layer, &h[i].p, &h[i].is_b) != 0)
            rc = plait_fail(PLAIT_EPROTO, "peft: tensor '%.80s' is not a LoRA tensor plait knows", t->name);
        else if (t->ndim != 2 || (t->dtype != PLAIT_ST_F32 && t->dtype != PLAIT_ST_F64))
            rc = plait_fail(PLAIT_EPROTO, "peft: tensor '%.80s' is not a 2-D F32/F64 tensor", t->name);
        else
            h[i].rows = t->shape[0], h[i].cols = t->shape[1], h[i].src = t, h[i].kind = 0;
    }
    if (rc == 0) rc = fill_lora(l, m, h, st.n_tensors, (int)(r > 0 && r <= PLAIT_LORA_MAX_RANK ? r : 0), alpha, 1, "peft");
    free(h);
    plait_safetensors_free(&st);
    return rc;
}

static int import_gguf(plait_lora_t *l, const char *path, const plait_model_t *m)
{
    void *map;
    size_t map_len;
    int rc = plait_file_map(path, NULL, &map, &map_len);
    if (rc != 0) return rc;
    plait_gguf_t g;
    rc = plait_gguf_parse(&g, map, map_len);
    half_t *h = NULL;
    if (rc == 0) {
        const char *s;
        size_t n;
        if (plait_gguf_get_str(&g, "general.type", &s, &n) != 0 || n != 7 || memcmp(s, "adapter", 7) != 0 ||
            plait_gguf_get_str(&g, "adapter.type", &s, &n) != 0 || n != 4 || memcmp(s, "lora", 4) != 0)
            rc = plait_fail(PLAIT_EPROTO, "%s: not a llama.cpp LoRA adapter (general.type, adapter.type)", path);
    }
    double alpha = 0;
    int rank = 0;
    if (rc == 0 && plait_gguf_find(&g, "adapter.lora.alpha")) rc = plait_gguf_get_float(&g, "adapter.lora.alpha", &alpha);
    if (rc == 0) {
        h = calloc(g.n_tensors ? g.n_tensors : 1, sizeof(*h));
        if (!h) rc = plait_fail(PLAIT_ENOMEM, "gguf adapter: tensors");
    }
    for (size_t i = 0; rc == 0 && i < g.n_tensors; i++) {
        const plait_gguf_tensor_t *t = &g.tensors[i];
        if (parse_name(t->name, t->name_len, "blk.", gg_names, ".weight.lora_a", ".weight.lora_b", &h[i].layer,
                       &h[i].p, &h[i].is_b) != 0)
            rc = plait_fail(PLAIT_EPROTO, "%s: tensor '%.*s' is not a LoRA tensor plait knows", path,
                            (int)(t->name_len > 80 ? 80 : t->name_len), t->name);
        else if (t->n_dims != 2 || (t->type != PLAIT_DT_F32 && t->type != PLAIT_DT_F16 && t->type != PLAIT_DT_BF16))
            rc = plait_fail(PLAIT_EPROTO, "%s: tensor '%.*s' is not 2-D F32/F16/BF16", path,
                            (int)(t->name_len > 80 ? 80 : t->name_len), t->name);
        else {
            h[i].rows = t->ne[1], h[i].cols = t->ne[0], h[i].src = t, h[i].kind = 1;
            uint64_t rk = h[i].is_b ? t->ne[0] : t->ne[1];
            if (rank == 0) rank = rk <= PLAIT_LORA_MAX_RANK ? (int)rk : -1;
            else if ((uint64_t)rank != rk) rc = plait_fail(PLAIT_EPROTO, "%s: tensors disagree on the rank", path);
        }
    }
    if (rc == 0) {
        if (alpha == 0.0) alpha = rank; /* llama.cpp: no alpha means scale 1 */
        rc = fill_lora(l, m, h, g.n_tensors, rank, alpha, 0, "gguf adapter");
    }
    free(h);
    plait_gguf_free(&g);
    plait_file_unmap(map, map_len);
    return rc;
}

int plait_adapter_import(plait_lora_t *l, const char *path, const plait_model_t *m, unsigned flags)
{
    struct stat sb;
    if (stat(path, &sb) != 0) return plait_fail(PLAIT_EIO, "%s: %s", path, strerror(errno));
    if (S_ISDIR(sb.st_mode)) return import_peft(l, path, m);
    if (!S_ISREG(sb.st_mode)) /* a FIFO would block the read below forever */
        return plait_fail(PLAIT_EINVAL, "%s: not a regular file or a PEFT folder", path);
    size_t n = strlen(path);
    static const char peft_file[] = "adapter_model.safetensors";
    size_t pl = sizeof(peft_file) - 1;
    if (n >= pl && strcmp(path + n - pl, peft_file) == 0 && (n == pl || path[n - pl - 1] == '/')) {
        char dir[4096];
        if (n == pl) snprintf(dir, sizeof(dir), ".");
        else snprintf(dir, sizeof(dir), "%.*s", (int)(n - pl - 1), path);
        return import_peft(l, dir, m);
    }
    FILE *f = NULL; /* opened without blocking: the path may have changed since the stat */
    char magic[4] = {0};
    if (plait_file_fopen(path, NULL, &f) != 0) return plait_fail(PLAIT_EIO, "%s: %s", path, plait_errmsg());
    if (f) {
        size_t got = fread(magic, 1, 4, f);
        (void)got;
        fclose(f);
    }
    if (memcmp(magic, "GGUF", 4) == 0) return import_gguf(l, path, m);
    return plait_adapter_load(l, path, m, flags);
}
