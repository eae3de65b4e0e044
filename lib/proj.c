/*
 * proj.c: names, shapes and base weights of the seven projections LoRA can
 * target. One table here so that lora, safetensors I/O, training and
 * inference agree on names and (out, in) shapes.
 */
#include "plait/model.h"

#include <string.h>

static const char *proj_names[PLAIT_NPROJ] = {"wq", "wk", "wv", "wo", "w1", "w2", "w3"};

const char *plait_proj_name(plait_proj_t p)
{
    return ((int)p >= 0 && p < PLAIT_NPROJ) ? proj_names[p] : "?";
}

int plait_proj_parse(const char *name, size_t len, plait_proj_t *out)
{
    for (int p = 0; p < PLAIT_NPROJ; p++) {
        if (len == 2 && memcmp(name, proj_names[p], 2) == 0) {
            *out = (plait_proj_t)p;
            return 0;
        }
    }
    return PLAIT_EINVAL;
}

void plait_proj_shape(const plait_model_config_t *cfg, plait_proj_t p, int *in, int *out)
{
    switch (p) {
    case PLAIT_WQ: *in = cfg->dim; *out = cfg->dim; break;
    case PLAIT_WK:
    case PLAIT_WV: *in = cfg->dim; *out = cfg->kv_dim; break;
    case PLAIT_WO: *in = cfg->dim; *out = cfg->dim; break;
    case PLAIT_W1:
    case PLAIT_W3: *in = cfg->dim; *out = cfg->hidden_dim; break;
    case PLAIT_W2: *in = cfg->hidden_dim; *out = cfg->dim; break;
    default: *in = 0; *out = 0; break;
    }
}

const float *plait_proj_weight(const plait_model_t *m, int l, plait_proj_t p)
{
    const plait_model_config_t *c = &m->cfg;
    size_t C = (size_t)c->dim, H = (size_t)c->hidden_dim, KV = (size_t)c->kv_dim, L = (size_t)l;
    if (m->is_gguf) { /* separate tensors per layer, of any type */
        const plait_wmat_t *w = plait_model_proj(m, l, p);
        return w->type == PLAIT_DT_F32 ? (const float *)w->data : NULL;
    }
    switch (p) {
    case PLAIT_WQ: return m->w.wq + L * C * C;
    case PLAIT_WK: return m->w.wk + L * KV * C;
    case PLAIT_WV: return m->w.wv + L * KV * C;
    case PLAIT_WO: return m->w.wo + L * C * C;
    case PLAIT_W1: return m->w.w1 + L * H * C;
    case PLAIT_W2: return m->w.w2 + L * C * H;
    case PLAIT_W3: return m->w.w3 + L * H * C;
    default: return NULL;
    }
}
