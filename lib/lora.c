/*
 * lora.c: adapter arena, configuration and initialization.
 *
 * Invariant: every A lives in params[0, n_a) and every B in
 * params[n_a, n_params), layer-major then projection order, so an update is
 * a flat span (see lora.h). The arena is one allocation; A[] and B[] only
 * point into it.
 *
 * Initialization draws A from a xorshift-based generator seeded by the
 * caller, so a fleet that shares a task seed shares A (FFA-LoRA). This is a
 * simulation-grade generator on purpose: A is not secret.
 */
#include "plait/lora.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void plait_lora_config_default(plait_lora_config_t *cfg)
{
    cfg->rank = 8;      /* the common LoRA rank for small models */
    cfg->alpha = 16.0f; /* scaling alpha / rank = 2, as in the reference cases */
    cfg->targets = (1u << PLAIT_WQ) | (1u << PLAIT_WV); /* the original LoRA paper's choice */
}

int plait_lora_config_validate(const plait_lora_config_t *cfg)
{
    if (cfg->rank < 1 || cfg->rank > PLAIT_LORA_MAX_RANK)
        return plait_fail(PLAIT_EINVAL, "lora rank %d is outside 1..%d", cfg->rank, PLAIT_LORA_MAX_RANK);
    if (!(cfg->alpha > 0.0f) || !isfinite(cfg->alpha) || cfg->alpha > 1e6f)
        return plait_fail(PLAIT_EINVAL, "lora alpha %g must be positive and finite", (double)cfg->alpha);
    if (cfg->targets == 0 || (cfg->targets >> PLAIT_NPROJ) != 0)
        return plait_fail(PLAIT_EINVAL, "lora targets mask 0x%x is empty or names unknown projections",
                          (unsigned)cfg->targets);
    return 0;
}

int plait_lora_parse_targets(const char *list, uint32_t *mask)
{
    uint32_t m = 0;
    const char *p = list;
    if (!list) return plait_fail(PLAIT_EINVAL, "lora targets missing");
    while (*p) {
        const char *e = strchr(p, ',');
        size_t n = e ? (size_t)(e - p) : strlen(p);
        plait_proj_t proj;
        if (plait_proj_parse(p, n, &proj) != 0)
            return plait_fail(PLAIT_EINVAL, "lora target '%.*s' is not one of wq,wk,wv,wo,w1,w2,w3",
                              (int)(n > 32 ? 32 : n), p);
        m |= 1u << proj;
        p += n;
        if (*p == ',' && *++p == '\0') /* "wq," names an empty target, as "wq,,wv" does */
            return plait_fail(PLAIT_EINVAL, "lora targets list ends with a comma");
    }
    if (m == 0) return plait_fail(PLAIT_EINVAL, "lora targets list is empty");
    *mask = m;
    return 0;
}

void plait_lora_format_targets(uint32_t mask, char *buf, size_t len)
{
    size_t off = 0;
    if (len == 0) return;
    buf[0] = '\0';
    for (int p = 0; p < PLAIT_NPROJ; p++) {
        if (!(mask & (1u << p))) continue;
        int n = snprintf(buf + off, len - off, "%s%s", off ? "," : "", plait_proj_name((plait_proj_t)p));
        if (n < 0 || (size_t)n >= len - off) return;
        off += (size_t)n;
    }
}

void plait_lora_init(plait_lora_t *l) { memset(l, 0, sizeof(*l)); }

int plait_lora_setup(plait_lora_t *l, const plait_model_config_t *model, const plait_lora_config_t *cfg)
{
    int rc = plait_lora_config_validate(cfg);
    if (rc != 0) return rc;
    size_t L = (size_t)model->n_layers, R = (size_t)cfg->rank;
    size_t n_a = 0, n_b = 0;
    for (int p = 0; p < PLAIT_NPROJ; p++) {
        if (!(cfg->targets & (1u << p))) continue;
        int in, out;
        plait_proj_shape(model, (plait_proj_t)p, &in, &out);
        n_a += L * R * (size_t)in;
        n_b += L * (size_t)out * R;
    }
    l->params = calloc(n_a + n_b, sizeof(float));
    l->A = calloc(L * PLAIT_NPROJ, sizeof(float *));
    l->B = calloc(L * PLAIT_NPROJ, sizeof(float *));
    if (!l->params || !l->A || !l->B) {
        plait_lora_free(l);
        return plait_fail(PLAIT_ENOMEM, "lora arena of %zu floats", n_a + n_b);
    }
    l->cfg = *cfg;
    l->model = *model;
    l->scaling = cfg->alpha / (float)cfg->rank;
    l->n_a = n_a;
    l->n_params = n_a + n_b;
    size_t oa = 0, ob = n_a;
    for (size_t layer = 0; layer < L; layer++) {
        for (int p = 0; p < PLAIT_NPROJ; p++) {
            if (!(cfg->targets & (1u << p))) continue;
            int in, out;
            plait_proj_shape(model, (plait_proj_t)p, &in, &out);
            l->A[layer * PLAIT_NPROJ + (size_t)p] = l->params + oa;
            l->B[layer * PLAIT_NPROJ + (size_t)p] = l->params + ob;
            oa += R * (size_t)in;
            ob += (size_t)out * R;
        }
    }
    return 0;
}

void plait_lora_free(plait_lora_t *l)
{
    if (!l) return;
    free(l->params);
    free(l->A);
    free(l->B);
    memset(l, 0, sizeof(*l));
}

/* splitmix64: a tiny, well-mixed, seedable generator (not for secrets). */
static uint64_t splitmix64(uint64_t *s)
{
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

void plait_lora_init_weights(plait_lora_t *l, uint64_t seed)
{
    uint64_t s = seed;
    memset(l->params + l->n_a, 0, (l->n_params - l->n_a) * sizeof(float));
    size_t R = (size_t)l->cfg.rank;
    for (int layer = 0; layer < l->model.n_layers; layer++) {
        for (int p = 0; p < PLAIT_NPROJ; p++) {
            float *A = l->A[plait_lora_slot(layer, (plait_proj_t)p)];
            if (!A) continue;
            int in, out;
            plait_proj_shape(&l->model, (plait_proj_t)p, &in, &out);
            /* PEFT: kaiming_uniform_(a=sqrt(5)) on (R, in) is U(-1/sqrt(in), 1/sqrt(in)). */
            double bound = 1.0 / sqrt((double)in);
            for (size_t i = 0; i < R * (size_t)in; i++) {
                double u = (double)(splitmix64(&s) >> 11) * (1.0 / 9007199254740992.0);
                A[i] = (float)((2.0 * u - 1.0) * bound);
            }
        }
    }
}
