/*
 * knn.c: the device's kNN memory (knn.h): exact search over every entry
 * (a device holds thousands of positions, not millions), the vote and the
 * mixture, and the file image.
 *
 * C = key width, V = vocabulary, k = neighbours that vote.
 */
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "plait/crypto.h"
#include "plait/knn.h"
#include "plait/le.h"

/* A key's squared norm at most: far below FLT_MAX, so that |q|^2 + |k|^2 - 2 q.k cannot overflow in float for
 * any query of the model's scale (a hidden state after RMSNorm). */
#define KEY_NORM_MAX 1e30

void plait_knn_init(plait_knn_t *s)
{
    memset(s, 0, sizeof(*s));
    s->k = 1;
    s->tau = 1.0;
}

void plait_knn_free(plait_knn_t *s)
{
    if (!s) return;
    if (s->keys) plait_zeroize(s->keys, s->cap * s->C * sizeof(float));
    if (s->norms) plait_zeroize(s->norms, s->cap * sizeof(float));
    if (s->vals) plait_zeroize(s->vals, s->cap * sizeof(int32_t));
    free(s->keys);
    free(s->norms);
    free(s->vals);
    plait_knn_init(s);
}

int plait_knn_setup(plait_knn_t *s, size_t C, size_t cap)
{
    if (!s) return plait_fail(PLAIT_EINVAL, "knn: NULL memory");
    plait_knn_free(s);
    if (C == 0 || C > PLAIT_KNN_MAX_DIM)
        return plait_fail(PLAIT_EINVAL, "knn: key width %zu outside 1..%d", C, PLAIT_KNN_MAX_DIM);
    if (cap == 0 || cap > PLAIT_KNN_MAX_ENTRIES || cap > SIZE_MAX / sizeof(float) / C)
        return plait_fail(PLAIT_EINVAL, "knn: %zu entries outside 1..%u (or too many to address)", cap,
                          PLAIT_KNN_MAX_ENTRIES);
    s->keys = malloc(cap * C * sizeof(float));
    s->norms = malloc(cap * sizeof(float));
    s->vals = malloc(cap * sizeof(int32_t));
    if (!s->keys || !s->norms || !s->vals) {
        free(s->keys);
        free(s->norms);
        free(s->vals);
        plait_knn_init(s);
        return plait_fail(PLAIT_ENOMEM, "knn: %zu entries of %zu floats", cap, C);
    }
    s->C = C;
    s->cap = cap;
    return 0;
}

int plait_knn_add(plait_knn_t *s, const float *key, int32_t val)
{
    if (!s || !key) return plait_fail(PLAIT_EINVAL, "knn: bad arguments");
    if (s->n >= s->cap) return plait_fail(PLAIT_ETOOBIG, "knn: the memory is full (%zu entries)", s->cap);
    if (val < 0) return plait_fail(PLAIT_EINVAL, "knn: token %d", (int)val);
    double nn = 0.0;
    for (size_t c = 0; c < s->C; c++) {
        if (!isfinite(key[c])) return plait_fail(PLAIT_EINVAL, "knn: key value %zu is not finite", c);
        nn += (double)key[c] * key[c];
    }
    if (!(nn <= KEY_NORM_MAX)) return plait_fail(PLAIT_EINVAL, "knn: a key too large to measure distances in float");
    memcpy(s->keys + s->n * s->C, key, s->C * sizeof(float));
    s->norms[s->n] = (float)nn;
    s->vals[s->n++] = val;
    return 0;
}

/* Squared distance of q (norm qq) to entry i: |q|^2 + |k|^2 - 2 q.k, floored at 0 (rounding); a NaN (a query
 * of non-finite values) is as far as can be. */
static float dist(const plait_knn_t *s, const float *q, float qq, size_t i)
{
    const float *k = s->keys + i * s->C;
    /* Eight partial sums: the compiler vectorizes this without reassociating (no -ffast-math), and the order
     * is fixed, so results do not depend on the machine's vector width. */
    float a[8] = {0, 0, 0, 0, 0, 0, 0, 0}, dot = 0.0f;
    size_t c = 0;
    for (; c + 8 <= s->C; c += 8)
        for (size_t j = 0; j < 8; j++) a[j] += q[c + j] * k[c + j];
    for (; c < s->C; c++) dot += q[c] * k[c];
    dot += ((a[0] + a[4]) + (a[1] + a[5])) + ((a[2] + a[6]) + (a[3] + a[7]));
    float d = qq + s->norms[i] - 2.0f * dot;
    return d > 0.0f ? d : d == d ? 0.0f : INFINITY;
}

size_t plait_knn_search(const plait_knn_t *s, const float *q, size_t k, float *d, int32_t *y)
{
    if (!s || !q || !d || !y || s->n == 0 || k == 0) return 0;
    if (k > PLAIT_KNN_MAX_K) k = PLAIT_KNN_MAX_K;
    if (k > s->n) k = s->n;
    float qq = 0.0f;
    for (size_t c = 0; c < s->C; c++) qq += q[c] * q[c];
    size_t r = 0;
    for (size_t i = 0; i < s->n; i++) {
        float di = dist(s, q, qq, i);
        if (r == k && di >= d[r - 1]) continue; /* not nearer than the k-th: the earlier entry stays */
        size_t j = r < k ? r++ : k - 1;
        while (j > 0 && d[j - 1] > di) { /* insertion: strictly greater moves, so ties keep their order */
            d[j] = d[j - 1];
            y[j] = y[j - 1];
            j--;
        }
        d[j] = di;
        y[j] = s->vals[i];
    }
    return r;
}

double plait_knn_prob(const float *d, const int32_t *y, size_t r, double tau, int32_t target)
{
    if (!d || !y || r == 0 || !(tau > 0.0)) return 0.0;
    double num = 0.0, den = 0.0;
    for (size_t j = 0; j < r; j++) {
        double w = exp(-((double)d[j] - (double)d[0]) / tau); /* d[0] is the smallest: w <= 1, no overflow */
        den += w;
        if (y[j] == target) num += w;
    }
    return num / den;
}

int plait_knn_mix_logits(const plait_knn_t *s, const float *q, float *logits, size_t V)
{
    if (!s || !q || !logits || V == 0) return plait_fail(PLAIT_EINVAL, "knn mix: bad arguments");
    if (s->n == 0 || !(s->lambda > 0.0)) return 0;
    float d[PLAIT_KNN_MAX_K];
    int32_t y[PLAIT_KNN_MAX_K];
    size_t r = plait_knn_search(s, q, (size_t)s->k, d, y);
    for (size_t j = 0; j < r; j++)
        if ((size_t)y[j] >= V) {
            plait_zeroize(d, sizeof(d));
            plait_zeroize(y, sizeof(y)); /* the neighbours' tokens are the device's text: not in the message */
            return plait_fail(PLAIT_EINVAL, "knn mix: the memory holds a token outside the vocabulary of %zu", V);
        }
    float mx = logits[0];
    for (size_t v = 1; v < V; v++)
        if (logits[v] > mx) mx = logits[v];
    double z = 0.0;
    for (size_t v = 0; v < V; v++) z += exp((double)logits[v] - mx);
    double a = (1.0 - s->lambda) / z, den = 0.0;
    double w[PLAIT_KNN_MAX_K];
    for (size_t j = 0; j < r; j++) den += (w[j] = exp(-((double)d[j] - (double)d[0]) / s->tau));
    for (size_t v = 0; v < V; v++) logits[v] = (float)(a * exp((double)logits[v] - mx)); /* (1 - lambda) p_model */
    for (size_t j = 0; j < r; j++) logits[y[j]] += (float)(s->lambda * w[j] / den);
    for (size_t v = 0; v < V; v++) /* log p; a probability that underflowed stays finite */
        logits[v] = logf(logits[v] > FLT_MIN ? logits[v] : FLT_MIN);
    plait_zeroize(d, sizeof(d));
    plait_zeroize(y, sizeof(y)); /* the neighbours' tokens are the device's text */
    return 0;
}

/* ---------------------------------------------------------------- image */

#define HDR 36 /* magic, C, n, k, tau, lambda, reserved */

int plait_knn_save_mem(const plait_knn_t *s, uint8_t **out, size_t *out_len)
{
    if (out) *out = NULL;
    if (!s || !out || !out_len || s->C == 0 || s->n == 0 || s->n > PLAIT_KNN_MAX_ENTRIES)
        return plait_fail(PLAIT_EINVAL, "knn save: an empty memory");
    if (s->k < 1 || s->k > PLAIT_KNN_MAX_K || !(s->tau > 0.0) || !isfinite(s->tau) ||
        !(s->lambda > 0.0 && s->lambda <= 1.0))
        return plait_fail(PLAIT_EINVAL, "knn save: a memory that is off or has k, tau or lambda out of range");
    if (s->C > (SIZE_MAX - HDR) / 4 / s->n - 1) return plait_fail(PLAIT_EINVAL, "knn save: too large to address");
    size_t len = HDR + s->n * s->C * 4 + s->n * 4;
    uint8_t *b = malloc(len);
    if (!b) return plait_fail(PLAIT_ENOMEM, "knn save: %zu bytes", len);
    memcpy(b, "PLK1", 4);
    plait_put_le32(b + 4, (uint32_t)s->C);
    plait_put_le32(b + 8, (uint32_t)s->n);
    plait_put_le32(b + 12, (uint32_t)s->k);
    uint64_t u;
    memcpy(&u, &s->tau, 8);
    plait_put_le64(b + 16, u);
    memcpy(&u, &s->lambda, 8);
    plait_put_le64(b + 24, u);
    plait_put_le32(b + 32, 0); /* reserved */
    uint8_t *p = b + HDR;
    for (size_t i = 0; i < s->n * s->C; i++, p += 4) {
        uint32_t f;
        memcpy(&f, &s->keys[i], 4);
        plait_put_le32(p, f);
    }
    for (size_t i = 0; i < s->n; i++, p += 4) plait_put_le32(p, (uint32_t)s->vals[i]);
    *out = b;
    *out_len = len;
    return 0;
}

int plait_knn_load_mem(plait_knn_t *s, const uint8_t *buf, size_t len, size_t C, size_t V)
{
    if (!s) return plait_fail(PLAIT_EINVAL, "knn load: NULL memory");
    plait_knn_free(s);
    if (!buf || len < HDR || memcmp(buf, "PLK1", 4) != 0)
        return plait_fail(PLAIT_EPROTO, "knn memory: not a PLK1 image");
    uint32_t c = plait_le32(buf + 4), n = plait_le32(buf + 8), k = plait_le32(buf + 12), res = plait_le32(buf + 32);
    uint64_t u = plait_le64(buf + 16);
    double tau, lambda;
    memcpy(&tau, &u, 8);
    u = plait_le64(buf + 24);
    memcpy(&lambda, &u, 8);
    if (c != C) return plait_fail(PLAIT_EMISMATCH, "knn memory: keys of %u floats, the model's are %zu", c, C);
    if (n == 0 || n > PLAIT_KNN_MAX_ENTRIES)
        return plait_fail(PLAIT_EPROTO, "knn memory: %u entries outside 1..%u", n, PLAIT_KNN_MAX_ENTRIES);
    if (k < 1 || k > PLAIT_KNN_MAX_K)
        return plait_fail(PLAIT_EPROTO, "knn memory: k %u outside 1..%d", k, PLAIT_KNN_MAX_K);
    if (!(tau > 0.0) || !isfinite(tau)) return plait_fail(PLAIT_EPROTO, "knn memory: tau must be finite and > 0");
    if (!(lambda > 0.0 && lambda <= 1.0)) return plait_fail(PLAIT_EPROTO, "knn memory: lambda outside (0, 1]");
    if (res != 0) return plait_fail(PLAIT_EPROTO, "knn memory: reserved field is not 0");
    /* C <= PLAIT_KNN_MAX_DIM and n <= 2^24: the product fits in 64 bits. */
    if (C == 0 || C > PLAIT_KNN_MAX_DIM) return plait_fail(PLAIT_EINVAL, "knn load: key width %zu", C);
    uint64_t want = HDR + (uint64_t)n * C * 4 + (uint64_t)n * 4;
    if ((uint64_t)len != want)
        return plait_fail(PLAIT_EPROTO, "knn memory: %zu bytes, the header says %llu", len, (unsigned long long)want);
    int rc = plait_knn_setup(s, C, n);
    if (rc != 0) return rc;
    const uint8_t *p = buf + HDR, *pv = buf + HDR + (size_t)n * C * 4;
    for (size_t i = 0; i < n && rc == 0; i++) {
        float *key = s->keys + i * C;
        double nn = 0.0;
        for (size_t j = 0; j < C; j++) {
            uint32_t f = plait_le32(p + (i * C + j) * 4);
            memcpy(&key[j], &f, 4);
            nn += (double)key[j] * key[j];
        }
        int32_t v = (int32_t)plait_le32(pv + i * 4);
        if (!(nn <= KEY_NORM_MAX)) /* NaN, infinite, or too large to measure distances in float */
            rc = plait_fail(PLAIT_EPROTO, "knn memory: entry %zu has a key that is not finite or too large", i);
        else if (v < 0 || (size_t)v >= V)
            rc = plait_fail(PLAIT_EPROTO, "knn memory: entry %zu holds a token outside 0..%zu", i, V - 1);
        s->norms[i] = (float)nn;
        s->vals[i] = v;
        s->n = i + 1;
    }
    if (rc != 0) {
        plait_knn_free(s);
        return rc;
    }
    s->k = (int)k;
    s->tau = tau;
    s->lambda = lambda;
    return 0;
}
