/*
 * check_kern.c: every SIMD table of the trainer's kernels (train_kern.h:
 * AVX2, AVX-512, whichever this CPU has) against the portable one on random
 * spans of awkward lengths, the row-wise attention heads against a naive
 * double-precision reference, AdamW bit for bit, and the AVX2 backward's
 * two-query-row step bit for bit against two one-row steps.
 */
#include <check.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "tensor_int.h"
#include "train_kern.h"

#define KERN_RTOL 2e-5 /* float rounding in another summation order */

static const size_t lens[] = {1, 2, 5, 7, 8, 9, 15, 16, 17, 31, 32, 33, 48, 100, 288, 768, 1001};
#define NLENS (sizeof(lens) / sizeof(lens[0]))

static uint64_t rng = 0x9e3779b97f4a7c15ull;
static float frand(float lo, float hi)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return lo + (hi - lo) * (float)((rng >> 40) * (1.0 / 16777216.0));
}
static float *rvec(size_t n, float lo, float hi)
{
    float *v = malloc((n ? n : 1) * sizeof(float));
    ck_assert_ptr_nonnull(v);
    for (size_t i = 0; i < n; i++)
        v[i] = frand(lo, hi);
    return v;
}
static float *dup(const float *x, size_t n)
{
    float *v = malloc((n ? n : 1) * sizeof(float));
    ck_assert_ptr_nonnull(v);
    memcpy(v, x, n * sizeof(float));
    return v;
}

/* |a - b| <= rtol * (|b| + scale) element-wise. */
static void close_span(const float *a, const float *b, size_t n, double scale, const char *what,
                       const char *path, size_t len)
{
    for (size_t i = 0; i < n; i++)
        ck_assert_msg(fabs((double)a[i] - (double)b[i]) <= KERN_RTOL * (fabs((double)b[i]) + scale),
                      "%s on %s, n=%zu: [%zu] %.9g vs portable %.9g", what, path, len, i,
                      (double)a[i], (double)b[i]);
}

static void close1(double a, double b, double scale, const char *what, const char *path, size_t len)
{
    ck_assert_msg(fabs(a - b) <= KERN_RTOL * (fabs(b) + scale),
                  "%s on %s, n=%zu: %.12g vs portable %.12g", what, path, len, a, b);
}

static const plait__tkern_t *P;

static void check_spans(const plait__tkern_t *K)
{
    for (size_t li = 0; li < NLENS; li++) {
        size_t n = lens[li];
        float *x = rvec(n, -30.0f, 30.0f), *y = rvec(n, -2.0f, 2.0f), *z = rvec(n, -2.0f, 2.0f);
        /* max and exp_sum (softmax's shape: sub the max, scale) */
        close1(K->max(x, n), P->max(x, n), 0, "max", K->name, n);
        float mx = P->max(x, n);
        float *a = dup(x, n), *b = dup(x, n);
        close1(K->exp_sum(a, n, mx, 0.7f), P->exp_sum(b, n, mx, 0.7f), 0, "exp_sum", K->name, n);
        close_span(a, b, n, 0, "exp", K->name, n);
        /* very negative arguments underflow to 0 on every path */
        for (size_t i = 0; i < n; i++)
            a[i] = b[i] = -200.0f + (float)(i % 128);
        K->exp_sum(a, n, 0.0f, 1.0f);
        P->exp_sum(b, n, 0.0f, 1.0f);
        close_span(a, b, n, 0, "exp underflow", K->name, n);
        /* scale_flush: values that scale below FLT_MIN become 0 */
        memcpy(a, x, n * sizeof(float));
        memcpy(b, x, n * sizeof(float));
        K->scale_flush(a, n, 1e-39f);
        P->scale_flush(b, n, 1e-39f);
        for (size_t i = 0; i < n; i++)
            ck_assert_msg(a[i] == b[i], "scale_flush tiny on %s", K->name);
        memcpy(a, x, n * sizeof(float));
        memcpy(b, x, n * sizeof(float));
        K->scale_flush(a, n, 0.37f);
        P->scale_flush(b, n, 0.37f);
        close_span(a, b, n, 0, "scale_flush", K->name, n);
        close1(K->dot(y, z, n), P->dot(y, z, n), (double)n, "dot", K->name, n);
        memcpy(a, y, n * sizeof(float));
        memcpy(b, y, n * sizeof(float));
        K->softmax_bwd(a, z, n, 0.3f, 0.125f);
        P->softmax_bwd(b, z, n, 0.3f, 0.125f);
        close_span(a, b, n, 1e-3, "softmax_bwd", K->name, n);
        /* SwiGLU */
        float *h1 = rvec(n, -8.0f, 8.0f), *o1 = rvec(n, 0, 1), *o2 = rvec(n, 0, 1),
              *o3 = rvec(n, 0, 1), *o4 = rvec(n, 0, 1);
        K->swiglu_fwd(o1, h1, y, n);
        P->swiglu_fwd(o2, h1, y, n);
        close_span(o1, o2, n, 1e-3, "swiglu_fwd", K->name, n);
        K->swiglu_bwd(o1, o3, z, h1, y, n);
        P->swiglu_bwd(o2, o4, z, h1, y, n);
        close_span(o1, o2, n, 1e-3, "swiglu_bwd dh1", K->name, n);
        close_span(o3, o4, n, 1e-3, "swiglu_bwd dh3", K->name, n);
        /* RMSNorm rows */
        float rk = K->rms_fwd_row(o1, y, z, n, 1e-5f), rp = P->rms_fwd_row(o2, y, z, n, 1e-5f);
        close1(rk, rp, 0, "rms rstd", K->name, n);
        close_span(o1, o2, n, 1e-3, "rms_fwd_row", K->name, n);
        memcpy(o3, h1, n * sizeof(float));
        memcpy(o4, h1, n * sizeof(float));
        K->rms_bwd_row(o3, z, y, x, rp, n);
        P->rms_bwd_row(o4, z, y, x, rp, n);
        close_span(o3, o4, n, 1e-2, "rms_bwd_row", K->name, n);
        /* RoPE over the heads of a row: one head of n (even), and rows of heads of 2, 8
         * (two to a register on AVX-512) and 16 floats, an odd count of heads too */
        if (n % 2 == 0) {
            float *cs = rvec(n, -1, 1), *sn = rvec(n, -1, 1);
            memcpy(a, y, n * sizeof(float));
            memcpy(b, y, n * sizeof(float));
            K->rope_heads(a, cs, sn, n, n, -1.0f);
            P->rope_heads(b, cs, sn, n, n, -1.0f);
            close_span(a, b, n, 1e-3, "rope_heads", K->name, n);
            static const size_t hs[] = {2, 8, 16};
            for (size_t q = 0; q < 3; q++) {
                size_t w = n / hs[q] * hs[q];
                if (w == 0) continue;
                memcpy(a, y, w * sizeof(float));
                memcpy(b, y, w * sizeof(float));
                K->rope_heads(a, cs, sn, w, hs[q], 1.0f);
                P->rope_heads(b, cs, sn, w, hs[q], 1.0f);
                close_span(a, b, w, 1e-3, "rope_heads (rows)", K->name, n);
            }
            free(cs);
            free(sn);
        }
        /* AdamW: identical bits */
        plait__adamw_t h = {.b1 = 0.9,
                            .b2 = 0.999,
                            .step_size = 1e-3 / 0.1,
                            .bc2_sqrt = sqrt(1 - 0.999),
                            .decay = 1 - 1e-3 * 0.01,
                            .eps = 1e-8};
        float *pk = dup(y, n), *pp = dup(y, n), *mk = rvec(n, -0.1f, 0.1f), *vk = rvec(n, 0, 0.01f);
        float *mp = dup(mk, n), *vp = dup(vk, n);
        K->adamw(pk, mk, vk, z, n, &h);
        P->adamw(pp, mp, vp, z, n, &h);
        ck_assert_msg(memcmp(pk, pp, n * sizeof(float)) == 0 &&
                          memcmp(mk, mp, n * sizeof(float)) == 0 &&
                          memcmp(vk, vp, n * sizeof(float)) == 0,
                      "adamw on %s, n=%zu differs from portable", K->name, n);
        free(pk);
        free(pp);
        free(mk);
        free(vk);
        free(mp);
        free(vp);
        free(h1);
        free(o1);
        free(o2);
        free(o3);
        free(o4);
        free(x);
        free(y);
        free(z);
        free(a);
        free(b);
    }
}

/* Naive causal attention of one head in double: P (T, T) and O (T, HS). */
static void naive_fwd(double *p, double *o, const float *q, const float *k, const float *v,
                      size_t T, size_t HS, double scale)
{
    for (size_t t = 0; t < T; t++) {
        double mx = -INFINITY;
        for (size_t s = 0; s <= t; s++) {
            double d = 0;
            for (size_t i = 0; i < HS; i++)
                d += (double)q[t * HS + i] * k[s * HS + i];
            p[t * T + s] = d * scale;
            mx = p[t * T + s] > mx ? p[t * T + s] : mx;
        }
        double sum = 0;
        for (size_t s = 0; s <= t; s++)
            sum += p[t * T + s] = exp(p[t * T + s] - mx);
        for (size_t s = 0; s <= t; s++)
            p[t * T + s] /= sum;
        for (size_t i = 0; i < HS; i++) {
            double acc = 0;
            for (size_t s = 0; s <= t; s++)
                acc += p[t * T + s] * v[s * HS + i];
            o[t * HS + i] = acc;
        }
    }
}

static float *transpose8(const float *x, size_t T, size_t HS)
{
    size_t T8 = round8(T);
    float *d = calloc(HS * T8, sizeof(float));
    ck_assert_ptr_nonnull(d);
    for (size_t t = 0; t < T; t++)
        for (size_t i = 0; i < HS; i++)
            d[i * T8 + t] = x[t * HS + i];
    return d;
}

static void check_attention(const plait__tkern_t *K)
{
    static const size_t Ts[] = {1, 2, 5, 16, 17, 32, 33, 70, 97};
    static const size_t HSs[] = {8, 16, 24, 48};
    for (size_t a = 0; a < sizeof(Ts) / sizeof(Ts[0]); a++)
        for (size_t b = 0; b < sizeof(HSs) / sizeof(HSs[0]); b++) {
            size_t T = Ts[a], HS = HSs[b],
                   AS = att_block_offset((T + ATT_BLOCK - 1) / ATT_BLOCK, T);
            float scale = 1.0f / sqrtf((float)HS);
            float *q = rvec(T * HS, -2, 2), *k = rvec(T * HS, -2, 2), *v = rvec(T * HS, -1, 1);
            float *dO = rvec(T * HS, -1, 1), *att = rvec(AS, 0, 1), *oh = rvec(T * HS, 0, 1);
            float *row = calloc(plait__attn_bwd_scratch_floats(T, HS), sizeof(float)),
                  *kT = transpose8(k, T, HS), *vT = transpose8(v, T, HS);
            double *p = calloc(T * T, sizeof(double)), *o = calloc(T * HS, sizeof(double));
            ck_assert_ptr_nonnull(row);
            K->attn_head_fwd(att, oh, q, kT, v, row, T, HS, scale);
            naive_fwd(p, o, q, k, v, T, HS, (double)scale);
            for (size_t t = 0; t < T; t++) {
                size_t r0 = t / ATT_BLOCK * ATT_BLOCK, r1 = r0 + ATT_BLOCK < T ? r0 + ATT_BLOCK : T;
                const float *pr = att + att_block_offset(t / ATT_BLOCK, T) + (t - r0) * r1;
                for (size_t s = 0; s < r1; s++) {
                    double want = s <= t ? p[t * T + s] : 0.0;
                    ck_assert_msg(fabs(pr[s] - want) <= 1e-5,
                                  "%s attn P T=%zu HS=%zu [%zu,%zu] %g vs %g", K->name, T, HS, t, s,
                                  (double)pr[s], want);
                }
                for (size_t i = 0; i < HS; i++)
                    ck_assert_msg(fabs(oh[t * HS + i] - o[t * HS + i]) <= 1e-5,
                                  "%s attn O T=%zu HS=%zu", K->name, T, HS);
            }
            /* Backward from the kernel's own P, against the naive gradients. */
            float *dq = rvec(T * HS, 0, 1), *dk = calloc(T * HS, sizeof(float)),
                  *dv = calloc(T * HS, sizeof(float));
            K->attn_head_bwd(att, q, k, vT, dO, dq, dk, dv, row, T, HS, scale);
            double *wdq = calloc(T * HS, sizeof(double)), *wdk = calloc(T * HS, sizeof(double)),
                   *wdv = calloc(T * HS, sizeof(double)), *ds = calloc(T, sizeof(double));
            for (size_t t = 0; t < T; t++) {
                size_t r0 = t / ATT_BLOCK * ATT_BLOCK, r1 = r0 + ATT_BLOCK < T ? r0 + ATT_BLOCK : T;
                const float *pr = att + att_block_offset(t / ATT_BLOCK, T) + (t - r0) * r1;
                double dot = 0;
                for (size_t s = 0; s <= t; s++) {
                    double dp = 0;
                    for (size_t i = 0; i < HS; i++)
                        dp += (double)dO[t * HS + i] * v[s * HS + i];
                    ds[s] = dp;
                    dot += pr[s] * dp;
                }
                for (size_t s = 0; s <= t; s++) {
                    ds[s] = pr[s] * (ds[s] - dot) * scale;
                    for (size_t i = 0; i < HS; i++) {
                        wdq[t * HS + i] += ds[s] * k[s * HS + i];
                        wdk[s * HS + i] += ds[s] * q[t * HS + i];
                        wdv[s * HS + i] += pr[s] * dO[t * HS + i];
                    }
                }
            }
            for (size_t i = 0; i < T * HS; i++) {
                ck_assert_msg(fabs(dq[i] - wdq[i]) <= 1e-4 * (1 + fabs(wdq[i])),
                              "%s attn dQ T=%zu HS=%zu [%zu]", K->name, T, HS, i);
                ck_assert_msg(fabs(dk[i] - wdk[i]) <= 1e-4 * (1 + fabs(wdk[i])),
                              "%s attn dK T=%zu HS=%zu", K->name, T, HS);
                ck_assert_msg(fabs(dv[i] - wdv[i]) <= 1e-4 * (1 + fabs(wdv[i])),
                              "%s attn dV T=%zu HS=%zu", K->name, T, HS);
            }
            free(q);
            free(k);
            free(v);
            free(dO);
            free(att);
            free(oh);
            free(row);
            free(kT);
            free(vT);
            free(p);
            free(o);
            free(dq);
            free(dk);
            free(dv);
            free(wdq);
            free(wdk);
            free(wdv);
            free(ds);
        }
}

/* Loop index: the path (avx2, avx512); a path this CPU lacks has no table. */
START_TEST(test_tables_vs_portable)
{
    P = plait__tkern_for(PLAIT__KPATH_PORTABLE);
    ck_assert_ptr_nonnull(P);
    const plait__tkern_t *K = plait__tkern_for(_i);
    if (!K) return; /* not on this CPU */
    ck_assert_ptr_nonnull(K->attn_head_fwd);
    check_spans(K);
    check_attention(K);
}
END_TEST

#if PLAIT_HAVE_X86_SIMD
/* The AVX2 backward's two-row step does one row's operations, in order,
 * then the other's: dK, dV and dQ bit for bit as two one-row steps. */
START_TEST(test_attn_cols8x2_identical)
{
    if (!plait__tkern_for(PLAIT__KPATH_AVX2)) return; /* no AVX2 here */
    static const size_t ns[] = {1, 2, 7, 16, 33};
    static const size_t HSs[] = {8, 24};
    for (size_t a = 0; a < sizeof(ns) / sizeof(ns[0]); a++)
        for (size_t b = 0; b < sizeof(HSs) / sizeof(HSs[0]); b++) {
            size_t n = ns[a], HS = HSs[b], R = n + 1;
            float *p0 = rvec(n, 0, 1), *p1 = rvec(R, 0, 1), *s0 = rvec(n, -1, 1), *s1 = rvec(R, -1, 1);
            float *d0 = rvec(HS, -1, 1), *d1 = rvec(HS, -1, 1), *q0 = rvec(HS, -2, 2), *q1 = rvec(HS, -2, 2);
            float *kh = rvec(R * HS, -2, 2), *dk = rvec(R * HS, -1, 1), *dv = rvec(R * HS, -1, 1);
            float *dk2 = dup(dk, R * HS), *dv2 = dup(dv, R * HS);
            float *dq = calloc(2 * HS, sizeof(float)), *dq2 = calloc(2 * HS, sizeof(float));
            ck_assert_ptr_nonnull(dq);
            ck_assert_ptr_nonnull(dq2);
            for (size_t j = 0; j < HS; j += 8) {
                plait__attn_bwd_cols8(p0, s0, d0, q0, kh, dq, dk, dv, n, HS, j);
                plait__attn_bwd_cols8(p1, s1, d1, q1, kh, dq + HS, dk, dv, R, HS, j);
                plait__attn_bwd_cols8x2(p0, s0, p1, s1, d0, d1, q0, q1, kh, dq2, dq2 + HS, dk2, dv2, n, HS, j);
            }
            ck_assert_msg(memcmp(dq, dq2, 2 * HS * sizeof(float)) == 0 &&
                              memcmp(dk, dk2, R * HS * sizeof(float)) == 0 &&
                              memcmp(dv, dv2, R * HS * sizeof(float)) == 0,
                          "cols8x2 differs from two cols8 steps, n=%zu HS=%zu", n, HS);
            float *all[] = {p0, p1, s0, s1, d0, d1, q0, q1, kh, dk, dv, dk2, dv2, dq, dq2};
            for (size_t i = 0; i < sizeof(all) / sizeof(all[0]); i++)
                free(all[i]);
        }
}
END_TEST
#endif

/* The table in use follows the forced path. */
START_TEST(test_dispatch_follows_path)
{
    for (int path = 0; path <= PLAIT__KPATH_AVX512; path++) {
        const plait__tkern_t *K = plait__tkern_for(path);
        if (!K) continue;
        plait__tensor_force_path(path);
        ck_assert_ptr_eq(plait__tkern(), K);
    }
    plait__tensor_force_path(-1);
    ck_assert_ptr_eq(plait__tkern(), plait__tkern_for(plait__tensor_path()));
}
END_TEST

Suite *kern_suite(void)
{
    Suite *s = suite_create("kern");
    TCase *tc = tcase_create("tables");
    tcase_set_timeout(tc, 120);
    tcase_add_loop_test(tc, test_tables_vs_portable, PLAIT__KPATH_AVX2, PLAIT__KPATH_AVX512 + 1);
    tcase_add_test(tc, test_dispatch_follows_path);
#if PLAIT_HAVE_X86_SIMD
    tcase_add_test(tc, test_attn_cols8x2_identical);
#endif
    suite_add_tcase(s, tc);
    return s;
}
