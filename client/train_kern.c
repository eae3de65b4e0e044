/*
 * train_kern.c: the portable twins of the trainer's kernels (train_kern.h)
 * and the choice of a kernel table by the path tensor.c takes. Results of
 * every path are held to these by tests/unit/check_train.c.
 */
#include "train_kern.h"
#include "tensor_int.h"
#include "tensor_kern.h"

#include <math.h>

static double exp_sum_portable(float *x, size_t n, float sub, float mul)
{
    double sum = 0.0;
    for (size_t i = 0; i < n; i++) {
        x[i] = exp_poly((x[i] - sub) * mul);
        sum += x[i];
    }
    return sum;
}

static float max_portable(const float *x, size_t n)
{
    float mx = -INFINITY;
    for (size_t i = 0; i < n; i++)
        mx = x[i] > mx ? x[i] : mx;
    return mx;
}

static void scale_flush_portable(float *x, size_t n, float f)
{
    for (size_t i = 0; i < n; i++)
        x[i] = flush(x[i] * f);
}

static double dot_portable(const float *a, const float *b, size_t n)
{
    double s = 0.0;
    for (size_t i = 0; i < n; i++)
        s += (double)a[i] * (double)b[i];
    return s;
}

static void softmax_bwd_portable(float *dr, const float *p, size_t n, float dot, float scale)
{
    for (size_t i = 0; i < n; i++)
        dr[i] = p[i] * (dr[i] - dot) * scale;
}

static void swiglu_fwd_portable(float *out, const float *h1, const float *h3, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        float x = h1[i];
        out[i] = x / (1.0f + exp_poly(-x)) * h3[i];
    }
}

static void swiglu_bwd_portable(float *dh1, float *dh3, const float *d, const float *h1,
                                const float *h3, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        float x = h1[i], sig = 1.0f / (1.0f + exp_poly(-x)), g = d[i];
        dh3[i] = g * x * sig;
        dh1[i] = g * h3[i] * sig * (1.0f + x * (1.0f - sig));
    }
}

static float rms_fwd_row_portable(float *o, const float *x, const float *w, size_t C, float eps)
{
    double ss = 0.0;
    for (size_t i = 0; i < C; i++)
        ss += (double)x[i] * (double)x[i];
    float rstd = (float)(1.0 / sqrt(ss / (double)C + (double)eps));
    for (size_t i = 0; i < C; i++)
        o[i] = x[i] * rstd * w[i];
    return rstd;
}

static void rms_bwd_row_portable(float *dx, const float *dy, const float *x, const float *w,
                                 float rstd, size_t C)
{
    double dot = 0.0; /* sum_i dy_i w_i x_i */
    for (size_t i = 0; i < C; i++)
        dot += (double)(dy[i] * w[i]) * (double)x[i];
    float c2 = (float)(dot / (double)C) * rstd * rstd * rstd;
    for (size_t i = 0; i < C; i++)
        dx[i] += dy[i] * w[i] * rstd - x[i] * c2;
}

static void rope_heads_portable(float *x, const float *cs, const float *sn, size_t width, size_t HS, float sgn)
{
    for (size_t h0 = 0; h0 < width; h0 += HS)
        for (size_t i = 0; i < HS; i += 2) {
            float xr = x[h0 + i], xi = x[h0 + i + 1];
            x[h0 + i] = xr * cs[i] + xi * (sn[i] * sgn);
            x[h0 + i + 1] = xi * cs[i + 1] + xr * (sn[i + 1] * sgn);
        }
}

static void adamw_portable(float *p, float *m, float *v, const float *g, size_t n, const plait__adamw_t *h)
{
    for (size_t i = 0; i < n; i++) {
        double gi = g[i];
        double mi = h->b1 * (double)m[i] + (1.0 - h->b1) * gi;
        double vi = h->b2 * (double)v[i] + (1.0 - h->b2) * gi * gi;
        m[i] = (float)mi;
        v[i] = (float)vi;
        double pi = (double)p[i] * h->decay;
        pi -= h->step_size * mi / (sqrt(vi) / h->bc2_sqrt + h->eps);
        p[i] = (float)pi;
    }
}

const plait__tkern_t plait__tkern_portable = {
    .exp_sum = exp_sum_portable,
    .max = max_portable,
    .scale_flush = scale_flush_portable,
    .dot = dot_portable,
    .softmax_bwd = softmax_bwd_portable,
    .swiglu_fwd = swiglu_fwd_portable,
    .swiglu_bwd = swiglu_bwd_portable,
    .rms_fwd_row = rms_fwd_row_portable,
    .rms_bwd_row = rms_bwd_row_portable,
    .rope_heads = rope_heads_portable,
    .attn_head_fwd = NULL,
    .attn_head_bwd = NULL,
    .adamw = adamw_portable,
    .name = "portable",
};

const plait__tkern_t *plait__tkern(void)
{
#if PLAIT_HAVE_X86_SIMD
    int path = plait__tensor_path();
    if (path >= PLAIT__KPATH_AVX512) return &plait__tkern_avx512;
    if (path == PLAIT__KPATH_AVX2) return &plait__tkern_avx2;
#endif
    return &plait__tkern_portable;
}

const plait__tkern_t *plait__tkern_for(int path)
{
    if (path == PLAIT__KPATH_PORTABLE) return &plait__tkern_portable;
#if PLAIT_HAVE_X86_SIMD
    if (path == PLAIT__KPATH_AVX2 && plait_cpu_has_avx2_fma()) return &plait__tkern_avx2;
    if (path == PLAIT__KPATH_AVX512 && plait_cpu_has_avx512()) return &plait__tkern_avx512;
#endif
    return NULL;
}
