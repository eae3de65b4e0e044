/*
 * robust.c: coordinate-wise median and trimmed mean (Yin et al. 2018).
 *
 * These estimators need every update at once, so unlike FedAvg they hold
 * m × P floats (plus m floats of scratch): 1000 updates of 10^6 parameters
 * are 4 GB. The config's mem_limit refuses such sizes up front. They cannot
 * run under secure aggregation (the server never sees individual updates).
 *
 * Invariants: buf holds count rows of dim floats, all finite; result()
 * does not change the rows (it gathers one column at a time into scratch).
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "plait/agg.h"

struct plait_robust_s {
    plait_robust_config_t cfg;
    float *buf;     /* (m, P) row-major */
    float *scratch; /* (m) */
    size_t count;
};

void plait_robust_config_default(plait_robust_config_t *cfg)
{
    cfg->dim = 0;                    /* must be set */
    cfg->max_updates = 1000;         /* a large cross-device cohort */
    cfg->trim_fraction = 0.1;        /* drop the top and bottom 10% per coordinate */
    cfg->clip_norm = 0.0;            /* no norm check: robustness comes from the estimator */
    cfg->mem_limit = (size_t)1 << 30; /* 1 GiB of held updates */
}

int plait_robust_config_validate(const plait_robust_config_t *cfg)
{
    if (cfg == NULL) return plait_fail(PLAIT_EINVAL, "robust config: NULL");
    if (cfg->dim == 0 || cfg->max_updates == 0) return plait_fail(PLAIT_EINVAL, "robust config: dim and max_updates must be > 0");
    if (!(cfg->trim_fraction >= 0 && cfg->trim_fraction < 0.5))
        return plait_fail(PLAIT_EINVAL, "robust config: trim_fraction must be in [0, 0.5)");
    if (!isfinite(cfg->clip_norm) || cfg->clip_norm < 0) return plait_fail(PLAIT_EINVAL, "robust config: clip_norm must be finite and >= 0");
    if (cfg->dim > PLAIT_AGG_MAX_DIM || cfg->max_updates > SIZE_MAX / sizeof(float) / cfg->dim ||
        cfg->max_updates * cfg->dim * sizeof(float) > cfg->mem_limit)
        return plait_fail(PLAIT_ETOOBIG, "robust config: %zu updates x %zu floats exceed the %zu-byte limit",
                          cfg->max_updates, cfg->dim, cfg->mem_limit);
    return 0;
}

int plait_robust_create(plait_robust_t **out, const plait_robust_config_t *cfg)
{
    if (out == NULL) return plait_fail(PLAIT_EINVAL, "robust_create: NULL output");
    *out = NULL;
    int rc = plait_robust_config_validate(cfg);
    if (rc != 0) return rc;
    plait_robust_t *r = calloc(1, sizeof(*r));
    if (r == NULL) return plait_fail(PLAIT_ENOMEM, "robust_create");
    r->cfg = *cfg;
    r->buf = malloc(cfg->max_updates * cfg->dim * sizeof(float));
    r->scratch = malloc(cfg->max_updates * sizeof(float));
    if (r->buf == NULL || r->scratch == NULL) {
        plait_robust_destroy(r);
        return plait_fail(PLAIT_ENOMEM, "robust_create: %zu x %zu floats", cfg->max_updates, cfg->dim);
    }
    *out = r;
    return 0;
}

void plait_robust_destroy(plait_robust_t *r)
{
    if (r == NULL) return;
    plait_robust_reset(r);
    free(r->buf);
    free(r->scratch);
    free(r);
}

void plait_robust_reset(plait_robust_t *r)
{
    if (r == NULL) return;
    /* Held rows are single devices' updates: wipe them, not just forget them. */
    if (r->buf && r->count > 0) plait_zeroize(r->buf, r->count * r->cfg.dim * sizeof(float));
    if (r->scratch) plait_zeroize(r->scratch, r->cfg.max_updates * sizeof(float));
    r->count = 0;
}

size_t plait_robust_count(const plait_robust_t *r) { return r->count; }

int plait_robust_add(plait_robust_t *r, const float *u, size_t n)
{
    if (r == NULL || u == NULL) return plait_fail(PLAIT_EINVAL, "robust_add: NULL argument");
    if (n != r->cfg.dim) return plait_fail(PLAIT_EMISMATCH, "robust_add: %zu values, expected %zu", n, r->cfg.dim);
    if (r->count == r->cfg.max_updates) return plait_fail(PLAIT_ETOOBIG, "robust_add: already holding %zu updates", r->count);
    double sq = 0;
    for (size_t i = 0; i < n; i++) sq += (double)u[i] * u[i];
    if (!isfinite(sq)) return plait_fail(PLAIT_EINVAL, "robust_add: non-finite values");
    if (r->cfg.clip_norm > 0 && sqrt(sq) > r->cfg.clip_norm * (1 + 1e-6))
        return plait_fail(PLAIT_ETOOBIG, "robust_add: update norm above the clip bound %.6g", r->cfg.clip_norm);
    memcpy(r->buf + r->count * n, u, n * sizeof(float));
    r->count++;
    return 0;
}

static int cmp_float(const void *a, const void *b)
{
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

int plait_robust_result(plait_robust_t *r, plait_robust_kind_t kind, float *out, size_t n)
{
    if (r == NULL || out == NULL) return plait_fail(PLAIT_EINVAL, "robust_result: NULL argument");
    if (n != r->cfg.dim) return plait_fail(PLAIT_EMISMATCH, "robust_result: %zu values, expected %zu", n, r->cfg.dim);
    if (kind != PLAIT_ROBUST_MEDIAN && kind != PLAIT_ROBUST_TRIMMED_MEAN)
        return plait_fail(PLAIT_EINVAL, "robust_result: unknown kind %d", (int)kind);
    const size_t m = r->count;
    if (m == 0) return plait_fail(PLAIT_EAGAIN, "robust_result: no updates");
    const size_t k = (size_t)floor(r->cfg.trim_fraction * (double)m); /* dropped at each end */
    if (kind == PLAIT_ROBUST_TRIMMED_MEAN && 2 * k >= m) return plait_fail(PLAIT_EAGAIN, "robust_result: trimming drops all %zu updates", m);
    for (size_t j = 0; j < n; j++) {
        for (size_t i = 0; i < m; i++) r->scratch[i] = r->buf[i * n + j];
        qsort(r->scratch, m, sizeof(float), cmp_float);
        if (kind == PLAIT_ROBUST_MEDIAN) {
            out[j] = m % 2 ? r->scratch[m / 2] : (float)(0.5 * ((double)r->scratch[m / 2 - 1] + r->scratch[m / 2]));
        } else {
            double s = 0;
            for (size_t i = k; i < m - k; i++) s += r->scratch[i];
            out[j] = (float)(s / (double)(m - 2 * k));
        }
    }
    return 0;
}
