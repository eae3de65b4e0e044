/*
 * server_opt.c: server optimizers applied to the averaged client update
 * (Reddi et al., "Adaptive Federated Optimization", ICLR 2021, Algorithm 2).
 *
 * The averaged update Δ = mean(local - global) is a pseudo-gradient with the
 * sign of a descent step, so the global model moves by +η·(...).
 * Invariants: m and v have dim floats each; v >= 0 always (it starts at τ²,
 * Adagrad/Adam only add or mix non-negative terms, and Yogi moves v towards
 * Δ² by at most (1-β2)Δ² per step, so it cannot cross zero); a failed step
 * changes nothing (the update is checked before the first write).
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "plait/agg.h"

struct plait_server_opt_s {
    plait_server_opt_config_t cfg;
    size_t dim;
    float *m; /* (P) first moment, NULL for FedAvg */
    float *v; /* (P) second moment, NULL for FedAvg */
};

static const char *const kind_names[] = {"fedavg", "fedadagrad", "fedadam", "fedyogi", "fedavgm"};

void plait_server_opt_config_default(plait_server_opt_config_t *cfg, plait_server_opt_kind_t kind)
{
    cfg->kind = kind;
    cfg->lr = kind == PLAIT_OPT_FEDAVG || kind == PLAIT_OPT_FEDAVGM ? 1.0 : 0.01; /* FedAvg(M): the average as is;
                                                                                adaptive: Reddi et al.'s grid centre */
    cfg->beta1 = 0.9;                                /* Reddi et al. */
    cfg->beta2 = 0.99;                               /* Reddi et al. */
    cfg->tau = 1e-3;                                 /* Reddi et al.: 1e-3 worked across tasks */
}

int plait_server_opt_config_validate(const plait_server_opt_config_t *cfg)
{
    if (cfg == NULL) return plait_fail(PLAIT_EINVAL, "server_opt config: NULL");
    if ((unsigned)cfg->kind > PLAIT_OPT_FEDAVGM) return plait_fail(PLAIT_EINVAL, "server_opt config: unknown kind %d", (int)cfg->kind);
    if (!isfinite(cfg->lr) || cfg->lr <= 0 || cfg->lr > 1e3) return plait_fail(PLAIT_EINVAL, "server_opt config: lr must be in (0, 1000]");
    if (!(cfg->beta1 >= 0 && cfg->beta1 < 1)) return plait_fail(PLAIT_EINVAL, "server_opt config: beta1 must be in [0, 1)");
    if (!(cfg->beta2 >= 0 && cfg->beta2 < 1)) return plait_fail(PLAIT_EINVAL, "server_opt config: beta2 must be in [0, 1)");
    if (!isfinite(cfg->tau) || cfg->tau <= 0) return plait_fail(PLAIT_EINVAL, "server_opt config: tau must be finite and > 0");
    return 0;
}

int plait_server_opt_kind_parse(const char *s, plait_server_opt_kind_t *kind)
{
    for (size_t i = 0; s && kind && i < sizeof(kind_names) / sizeof(kind_names[0]); i++) {
        if (strcmp(s, kind_names[i]) == 0) {
            *kind = (plait_server_opt_kind_t)i;
            return 0;
        }
    }
    return plait_fail(PLAIT_EINVAL, "unknown server optimizer '%.32s' (want fedavg, fedadagrad, fedadam, fedyogi or fedavgm)",
                      s ? s : "(null)");
}

int plait_server_opt_create(plait_server_opt_t **out, const plait_server_opt_config_t *cfg, size_t dim)
{
    if (out == NULL) return plait_fail(PLAIT_EINVAL, "server_opt_create: NULL output");
    *out = NULL;
    int rc = plait_server_opt_config_validate(cfg);
    if (rc != 0) return rc;
    if (dim == 0) return plait_fail(PLAIT_EINVAL, "server_opt_create: dim is 0");
    if (dim > PLAIT_AGG_MAX_DIM) return plait_fail(PLAIT_ETOOBIG, "server_opt_create: dim %zu", dim);
    plait_server_opt_t *o = calloc(1, sizeof(*o));
    if (o == NULL) return plait_fail(PLAIT_ENOMEM, "server_opt_create");
    o->cfg = *cfg;
    o->dim = dim;
    if (cfg->kind == PLAIT_OPT_FEDAVGM) {
        o->m = calloc(dim, sizeof(float)); /* the momentum buffer only */
        if (o->m == NULL) {
            plait_server_opt_destroy(o);
            return plait_fail(PLAIT_ENOMEM, "server_opt_create: %zu floats", dim);
        }
    } else if (cfg->kind != PLAIT_OPT_FEDAVG) {
        o->m = calloc(dim, sizeof(float));
        o->v = malloc(dim * sizeof(float));
        if (o->m == NULL || o->v == NULL) {
            plait_server_opt_destroy(o);
            return plait_fail(PLAIT_ENOMEM, "server_opt_create: 2 x %zu floats", dim);
        }
        float t2 = (float)(cfg->tau * cfg->tau);
        for (size_t i = 0; i < dim; i++) o->v[i] = t2;
    }
    *out = o;
    return 0;
}

void plait_server_opt_destroy(plait_server_opt_t *o)
{
    if (o == NULL) return;
    free(o->m);
    free(o->v);
    free(o);
}

int plait_server_opt_step(plait_server_opt_t *o, float *x, const float *d, size_t n)
{
    if (o == NULL || x == NULL || d == NULL) return plait_fail(PLAIT_EINVAL, "server_opt_step: NULL argument");
    if (n != o->dim) return plait_fail(PLAIT_EMISMATCH, "server_opt_step: %zu values, expected %zu", n, o->dim);
    for (size_t i = 0; i < n; i++)
        if (!isfinite(d[i])) return plait_fail(PLAIT_EINVAL, "server_opt_step: non-finite update at %zu", i);
    const double lr = o->cfg.lr, b1 = o->cfg.beta1, b2 = o->cfg.beta2, tau = o->cfg.tau;
    switch (o->cfg.kind) {
    case PLAIT_OPT_FEDAVG:
        for (size_t i = 0; i < n; i++) x[i] = (float)(x[i] + lr * d[i]);
        return 0;
    case PLAIT_OPT_FEDAVGM:
        for (size_t i = 0; i < n; i++) {
            double m = b1 * o->m[i] + d[i];
            o->m[i] = (float)m;
            x[i] = (float)(x[i] + lr * m);
        }
        return 0;
    case PLAIT_OPT_FEDADAGRAD:
    case PLAIT_OPT_FEDADAM:
    case PLAIT_OPT_FEDYOGI:
        break;
    }
    for (size_t i = 0; i < n; i++) {
        double g = d[i], g2 = g * g, m = b1 * o->m[i] + (1 - b1) * g, v = o->v[i];
        if (o->cfg.kind == PLAIT_OPT_FEDADAGRAD) v = v + g2;
        else if (o->cfg.kind == PLAIT_OPT_FEDADAM) v = b2 * v + (1 - b2) * g2;
        else v = v - (1 - b2) * g2 * (v > g2 ? 1.0 : v < g2 ? -1.0 : 0.0);
        o->m[i] = (float)m;
        o->v[i] = (float)v;
        x[i] = (float)(x[i] + lr * m / (sqrt(v) + tau));
    }
    return 0;
}

size_t plait_server_opt_state_len(const plait_server_opt_t *o)
{
    return o->cfg.kind == PLAIT_OPT_FEDAVG ? 0 : o->cfg.kind == PLAIT_OPT_FEDAVGM ? o->dim : 2 * o->dim;
}

int plait_server_opt_export(const plait_server_opt_t *o, float *out, size_t n)
{
    if (o == NULL || (n > 0 && out == NULL)) return plait_fail(PLAIT_EINVAL, "server_opt_export: NULL argument");
    if (n != plait_server_opt_state_len(o))
        return plait_fail(PLAIT_EMISMATCH, "server_opt_export: state has %zu floats, buffer %zu", plait_server_opt_state_len(o), n);
    if (n == 0) return 0;
    memcpy(out, o->m, o->dim * sizeof(float));
    if (o->v) memcpy(out + o->dim, o->v, o->dim * sizeof(float));
    return 0;
}

int plait_server_opt_import(plait_server_opt_t *o, const float *in, size_t n)
{
    if (o == NULL || (n > 0 && in == NULL)) return plait_fail(PLAIT_EINVAL, "server_opt_import: NULL argument");
    if (n != plait_server_opt_state_len(o))
        return plait_fail(PLAIT_EMISMATCH, "server_opt_import: state has %zu floats, expected %zu", n, plait_server_opt_state_len(o));
    for (size_t i = 0; i < n; i++) {
        if (!isfinite(in[i])) return plait_fail(PLAIT_EPROTO, "server_opt_import: non-finite value at %zu", i);
        if (i >= o->dim && in[i] < 0) return plait_fail(PLAIT_EPROTO, "server_opt_import: negative second moment at %zu", i - o->dim);
    }
    if (n == 0) return 0;
    memcpy(o->m, in, o->dim * sizeof(float));
    if (o->v) memcpy(o->v, in + o->dim, o->dim * sizeof(float));
    return 0;
}
