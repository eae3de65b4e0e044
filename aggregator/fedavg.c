/*
 * fedavg.c: streaming weighted federated averaging, and decoding of the
 * secure-aggregation sum.
 *
 * Invariants: sum[] holds exactly sum over accepted updates of w_i·u_i (in
 * double), weight_sum the sum of the w_i, and every counter is bumped once
 * per call. A rejected update leaves sum[] untouched: all checks run before
 * the first addition. Memory is dim doubles whatever the number of clients.
 *
 * Workload: 10^2..10^4 updates of 10^4..10^7 floats per round; each add is
 * two linear passes (check + norm, then axpy), memory bound.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "plait/agg.h"

struct plait_fedavg_s {
    plait_fedavg_config_t cfg;
    double *sum; /* (P) */
    plait_fedavg_stats_t st;
};

void plait_fedavg_config_default(plait_fedavg_config_t *cfg)
{
    cfg->dim = 0;               /* must be set by the caller */
    cfg->clip_norm = 1.0;       /* matches the device default clip S */
    cfg->norm_slack = 1e-6;     /* float rounding only; add plait_quant_norm_slack() for quantized uploads */
    cfg->weight_cap = 1000.0;   /* a device with >= 1000 examples counts as 1000 */
    cfg->uniform_weights = 0;   /* weight by (capped) example count */
    cfg->fixed_denominator = 0; /* divide by the accepted weight */
}

int plait_fedavg_config_validate(const plait_fedavg_config_t *cfg)
{
    if (cfg == NULL) return plait_fail(PLAIT_EINVAL, "fedavg config: NULL");
    if (cfg->dim == 0) return plait_fail(PLAIT_EINVAL, "fedavg config: dim is 0");
    if (cfg->dim > PLAIT_AGG_MAX_DIM)
        return plait_fail(PLAIT_ETOOBIG, "fedavg config: dim %zu above %zu", cfg->dim, PLAIT_AGG_MAX_DIM);
    if (!isfinite(cfg->clip_norm) || cfg->clip_norm <= 0)
        return plait_fail(PLAIT_EINVAL, "fedavg config: clip_norm must be finite and > 0");
    if (!isfinite(cfg->norm_slack) || cfg->norm_slack < 0)
        return plait_fail(PLAIT_EINVAL, "fedavg config: norm_slack must be finite and >= 0");
    if (!isfinite(cfg->weight_cap) || cfg->weight_cap <= 0)
        return plait_fail(PLAIT_EINVAL, "fedavg config: weight_cap must be finite and > 0");
    if (!isfinite(cfg->fixed_denominator) || cfg->fixed_denominator < 0)
        return plait_fail(PLAIT_EINVAL, "fedavg config: fixed_denominator must be finite and >= 0");
    return 0;
}

int plait_fedavg_create(plait_fedavg_t **out, const plait_fedavg_config_t *cfg)
{
    if (out == NULL) return plait_fail(PLAIT_EINVAL, "fedavg_create: NULL output");
    *out = NULL;
    int rc = plait_fedavg_config_validate(cfg);
    if (rc != 0) return rc;
    plait_fedavg_t *fa = calloc(1, sizeof(*fa));
    if (fa == NULL) return plait_fail(PLAIT_ENOMEM, "fedavg_create");
    fa->cfg = *cfg;
    fa->sum = calloc(cfg->dim, sizeof(double)); /* dim <= 2^28 checked: no overflow */
    if (fa->sum == NULL) {
        free(fa);
        return plait_fail(PLAIT_ENOMEM, "fedavg_create: %zu doubles", cfg->dim);
    }
    *out = fa;
    return 0;
}

void plait_fedavg_destroy(plait_fedavg_t *fa)
{
    if (fa == NULL) return;
    free(fa->sum);
    free(fa);
}

void plait_fedavg_reset(plait_fedavg_t *fa)
{
    memset(fa->sum, 0, fa->cfg.dim * sizeof(double));
    memset(&fa->st, 0, sizeof(fa->st));
}

int plait_fedavg_add(plait_fedavg_t *fa, const float *u, size_t n, double examples)
{
    if (fa == NULL || u == NULL) return plait_fail(PLAIT_EINVAL, "fedavg_add: NULL argument");
    if (n != fa->cfg.dim) {
        fa->st.rejected_length++;
        return plait_fail(PLAIT_EMISMATCH, "fedavg_add: update has %zu values, expected %zu", n, fa->cfg.dim);
    }
    double norm = plait_update_l2(u, n);
    if (!isfinite(norm)) { /* a NaN or infinity anywhere makes the sum non-finite */
        fa->st.rejected_nonfinite++;
        return plait_fail(PLAIT_EINVAL, "fedavg_add: update contains non-finite values");
    }
    if (!isfinite(examples) || examples <= 0) {
        fa->st.rejected_weight++;
        return plait_fail(PLAIT_EINVAL, "fedavg_add: example count must be finite and > 0");
    }
    if (norm > fa->cfg.clip_norm + fa->cfg.norm_slack) {
        fa->st.rejected_norm++;
        /* The norm itself is a statistic of private data: it stays out of the detail. */
        return plait_fail(PLAIT_ETOOBIG, "fedavg_add: update norm above the clip bound %.6g", fa->cfg.clip_norm);
    }
    double w = fa->cfg.uniform_weights ? 1.0 : fmin(examples, fa->cfg.weight_cap) / fa->cfg.weight_cap;
    double *s = fa->sum;
    size_t i = 0;
    /* Fixed-width blocks let GCC's -O2 (very cheap cost model) vectorize the
     * float->double conversion and the multiply-add. */
    for (; i + 8 <= n; i += 8)
        for (size_t k = 0; k < 8; k++) s[i + k] += w * (double)u[i + k];
    for (; i < n; i++) s[i] += w * (double)u[i];
    fa->st.weight_sum += w;
    fa->st.accepted++;
    return 0;
}

int plait_fedavg_add_sum(plait_fedavg_t *fa, const double *s, size_t n, double weight, uint64_t n_clients)
{
    if (fa == NULL || s == NULL) return plait_fail(PLAIT_EINVAL, "fedavg_add_sum: NULL argument");
    if (n != fa->cfg.dim) return plait_fail(PLAIT_EMISMATCH, "fedavg_add_sum: %zu values, expected %zu", n, fa->cfg.dim);
    if (!isfinite(weight) || weight < 0) return plait_fail(PLAIT_EINVAL, "fedavg_add_sum: weight must be finite and >= 0");
    for (size_t i = 0; i < n; i++)
        if (!isfinite(s[i])) return plait_fail(PLAIT_EINVAL, "fedavg_add_sum: non-finite value at %zu", i);
    for (size_t i = 0; i < n; i++) fa->sum[i] += s[i];
    fa->st.weight_sum += weight;
    fa->st.accepted += n_clients;
    return 0;
}

/* The decoded span of a quantized sum, in blocks of BLK doubles (so no caller needs P of them),
 * either added into add[] or turned into the mean (float)((0.0 + x) / (0.0 + weight)) in mean[]:
 * exactly what plait_agg_decode_secure_sum() then plait_fedavg_add_sum() (into add, or into a
 * fresh sum) then plait_fedavg_result() compute, with the same checks in the same order. */
static int quant_sum_pass(const plait_quant_config_t *qc, const uint32_t *words, size_t n_words, uint64_t n_clients,
                          size_t dim, double *add, float *mean, double *weight_out)
{
    enum { BLK = 512 }; /* 4 KiB on the stack */
    double blk[BLK];
    if (qc == NULL || words == NULL || n_words < 2)
        return plait_fail(PLAIT_EINVAL, "decode_secure_sum: need P + 1 >= 2 words and outputs");
    const size_t n = n_words - 1;
    /* Pass 1 checks every word as plait_quant_decode_sum() does (the same errors; an index
     * relative to the block is restated for the whole span), so nothing is written on error. */
    for (size_t o = 0; o < n; o += BLK) {
        size_t k = n - o < BLK ? n - o : BLK;
        int rc = plait_quant_decode_sum(qc, words + o, k, n_clients, blk);
        if (rc == PLAIT_EPROTO) {
            const uint64_t kmax = n_clients * (((uint64_t)1 << qc->bits) - 1);
            size_t i = o;
            while (words[i] <= kmax) i++;
            return plait_fail(PLAIT_EPROTO, "quant_decode: word %zu exceeds %llu clients x %u bits", i,
                              (unsigned long long)n_clients, qc->bits);
        }
        if (rc != 0) return rc;
    }
    double weight = 0;
    int rc = plait_quant_decode_weight_sum(qc, words[n], n_clients, &weight);
    if (rc != 0) return rc;
    if (n != dim) return plait_fail(PLAIT_EMISMATCH, "fedavg_add_sum: %zu values, expected %zu", n, dim);
    if (!isfinite(weight) || weight < 0)
        return plait_fail(PLAIT_EINVAL, "fedavg_add_sum: weight must be finite and >= 0");
    const double den = 0.0 + weight; /* a fresh accumulator's weight_sum */
    if (mean && !(den > 0)) return plait_fail(PLAIT_EAGAIN, "fedavg_result: no update accepted yet");
    /* Pass 2: decode again (the same arithmetic, so the same doubles). A decoded word is finite
     * (a 32-bit integer times a finite step), which plait_fedavg_add_sum() would check. */
    for (size_t o = 0; o < n; o += BLK) {
        size_t k = n - o < BLK ? n - o : BLK;
        if ((rc = plait_quant_decode_sum(qc, words + o, k, n_clients, blk)) != 0) return rc; /* cannot fail now */
        for (size_t i = 0; i < k; i++)
            if (!isfinite(blk[i])) return plait_fail(PLAIT_EINTERNAL, "fedavg_add_sum: non-finite value at %zu", o + i);
        if (add)
            for (size_t i = 0; i < k; i++) add[o + i] += blk[i];
        else
            for (size_t i = 0; i < k; i++) mean[o + i] = (float)((0.0 + blk[i]) / den);
    }
    *weight_out = weight;
    return 0;
}

int plait_fedavg_add_quant_sum(plait_fedavg_t *fa, const plait_quant_config_t *qc, const uint32_t *words,
                               size_t n_words, uint64_t n_clients)
{
    if (fa == NULL) return plait_fail(PLAIT_EINVAL, "fedavg_add_sum: NULL argument");
    double weight = 0;
    int rc = quant_sum_pass(qc, words, n_words, n_clients, fa->cfg.dim, fa->sum, NULL, &weight);
    if (rc != 0) return rc;
    fa->st.weight_sum += weight;
    fa->st.accepted += n_clients;
    return 0;
}

int plait_agg_mean_quant_sum(const plait_quant_config_t *qc, const uint32_t *words, size_t n_words,
                             uint64_t n_clients, float *out, size_t n)
{
    if (out == NULL) return plait_fail(PLAIT_EINVAL, "fedavg_result: NULL argument");
    double weight = 0;
    return quant_sum_pass(qc, words, n_words, n_clients, n, NULL, out, &weight);
}

const double *plait_fedavg_sum(const plait_fedavg_t *fa) { return fa->sum; }

void plait_fedavg_stats(const plait_fedavg_t *fa, plait_fedavg_stats_t *st) { *st = fa->st; }

int plait_fedavg_result(const plait_fedavg_t *fa, float *out, size_t n)
{
    if (fa == NULL || out == NULL) return plait_fail(PLAIT_EINVAL, "fedavg_result: NULL argument");
    if (n != fa->cfg.dim) return plait_fail(PLAIT_EMISMATCH, "fedavg_result: %zu values, expected %zu", n, fa->cfg.dim);
    double den = fa->cfg.fixed_denominator > 0 ? fa->cfg.fixed_denominator : fa->st.weight_sum;
    if (!(den > 0)) return plait_fail(PLAIT_EAGAIN, "fedavg_result: no update accepted yet");
    for (size_t i = 0; i < n; i++) out[i] = (float)(fa->sum[i] / den);
    return 0;
}

int plait_agg_decode_secure_sum(const plait_quant_config_t *qc, const uint32_t *words, size_t n_words,
                                uint64_t n_clients, double *sum, double *weight_sum)
{
    if (words == NULL || sum == NULL || weight_sum == NULL || n_words < 2)
        return plait_fail(PLAIT_EINVAL, "decode_secure_sum: need P + 1 >= 2 words and outputs");
    int rc = plait_quant_decode_sum(qc, words, n_words - 1, n_clients, sum);
    if (rc != 0) return rc;
    return plait_quant_decode_weight_sum(qc, words[n_words - 1], n_clients, weight_sum);
}
