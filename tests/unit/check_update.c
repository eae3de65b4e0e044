/*
 * check_update.c: spans, clipping, local noise, the quantizer, the DRBG and
 * the ChaCha20 noise stream (lib/update.c, lib/rng.c, lib/crypto.c DRBG).
 */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "plait/crypto.h"
#include "plait/lora.h"
#include "plait/rng.h"
#include "plait/update.h"

/* Tolerances, named as STYLE.md asks. */
#define NORM_TOL 0.0           /* clipped norm must not exceed S at all */
#define CLIP_TIGHT 1e-5        /* a clipped update ends within this relative distance of S */
#define STD_REL_TOL 0.01       /* noise std within 1% (about 6 standard errors at 2e5 samples) */

static float *rand_vec(plait_rng_t *r, size_t n, double scale)
{
    float *x = malloc(n * sizeof(float) + 1);
    ck_assert_ptr_nonnull(x);
    for (size_t i = 0; i < n; i++) x[i] = (float)(scale * plait_rng_normal(r));
    return x;
}

START_TEST(test_span_modes)
{
    plait_lora_t l;
    memset(&l, 0, sizeof(l));
    l.n_a = 100;
    l.n_params = 300;
    size_t off, len;
    ck_assert_int_eq(plait_update_span(&l, PLAIT_LORA_MODE_FFA, &off, &len), 0);
    ck_assert_uint_eq(off, 100);
    ck_assert_uint_eq(len, 200);
    ck_assert_int_eq(plait_update_span(&l, PLAIT_LORA_MODE_FEDIT, &off, &len), 0);
    ck_assert_uint_eq(off, 0);
    ck_assert_uint_eq(len, 300);
    ck_assert_int_eq(plait_update_span(&l, PLAIT_LORA_MODE_FEDSA, &off, &len), 0);
    ck_assert_uint_eq(off, 0);
    ck_assert_uint_eq(len, 100);
    ck_assert_int_eq(plait_update_span(&l, (plait_lora_mode_t)7, &off, &len), PLAIT_EINVAL);
    ck_assert_int_eq(plait_update_span(NULL, PLAIT_LORA_MODE_FFA, &off, &len), PLAIT_EINVAL);
    ck_assert_int_eq(plait_update_span_n(5, 4, PLAIT_LORA_MODE_FFA, &off, &len), PLAIT_EINVAL);
    ck_assert_int_eq(plait_update_span_n(4, 4, PLAIT_LORA_MODE_FFA, &off, &len), PLAIT_EINVAL); /* empty */
    plait_lora_mode_t m;
    ck_assert_int_eq(plait_lora_mode_parse("fedsa", &m), 0);
    ck_assert_int_eq(m, PLAIT_LORA_MODE_FEDSA);
    ck_assert_int_eq(plait_lora_mode_parse("lora", &m), PLAIT_EINVAL);
    ck_assert_ptr_nonnull(strstr(plait_errmsg(), "lora"));
    ck_assert_str_eq(plait_lora_mode_name(PLAIT_LORA_MODE_FFA), "ffa");
}
END_TEST

/* Per-tensor segments on a real adapter arena: every uploaded matrix is one
 * segment, and the segments tile the span. */
START_TEST(test_tensor_segments)
{
    plait_model_config_t mc = {.dim = 16, .hidden_dim = 32, .n_layers = 2, .n_heads = 2, .n_kv_heads = 1,
                               .vocab_size = 32, .seq_len = 16, .head_size = 8, .kv_dim = 8};
    plait_lora_config_t lc;
    plait_lora_config_default(&lc); /* rank 8, wq and wv */
    plait_lora_t l;
    plait_lora_init(&l);
    ck_assert_int_eq(plait_lora_setup(&l, &mc, &lc), 0);
    size_t ends[16], n, off, len;
    /* FFA: B of wq (16 x 8) and of wv (8 x 8) per layer */
    ck_assert_int_eq(plait_update_tensor_segments(&l, PLAIT_LORA_MODE_FFA, ends, 16, &n), 0);
    ck_assert_uint_eq(n, 4);
    ck_assert_uint_eq(ends[0], 128);
    ck_assert_uint_eq(ends[1], 192);
    ck_assert_uint_eq(ends[2], 320);
    ck_assert_uint_eq(ends[3], 384);
    ck_assert_int_eq(plait_update_span(&l, PLAIT_LORA_MODE_FFA, &off, &len), 0);
    ck_assert_uint_eq(len, 384);
    ck_assert_int_eq(plait_update_tensor_segments(&l, PLAIT_LORA_MODE_FEDIT, ends, 16, &n), 0);
    ck_assert_uint_eq(n, 8);
    ck_assert_int_eq(plait_update_span(&l, PLAIT_LORA_MODE_FEDIT, &off, &len), 0);
    ck_assert_uint_eq(ends[7], len);
    ck_assert_uint_eq(ends[3], l.n_a); /* A part ends where B begins */
    ck_assert_int_eq(plait_update_tensor_segments(&l, PLAIT_LORA_MODE_FEDSA, ends, 16, &n), 0);
    ck_assert_uint_eq(n, 4);
    ck_assert_uint_eq(ends[3], l.n_a);
    ck_assert_int_eq(plait_update_tensor_segments(&l, PLAIT_LORA_MODE_FEDIT, ends, 3, &n), PLAIT_ETOOBIG);
    ck_assert_uint_eq(n, 8);
    ck_assert_int_eq(plait_update_tensor_segments(&l, PLAIT_LORA_MODE_FEDIT, NULL, 0, &n), PLAIT_ETOOBIG);
    /* the segments drive per-layer clipping */
    ck_assert_int_eq(plait_update_tensor_segments(&l, PLAIT_LORA_MODE_FEDIT, ends, 16, &n), 0);
    plait_rng_t r;
    plait_rng_seed_u64(&r, 1, 0);
    float *x = rand_vec(&r, len, 1.0);
    ck_assert_int_eq(plait_update_clip_segments(x, len, ends, n, NULL, 2.0, NULL), 0);
    size_t prev = 0;
    double worst = 0;
    for (size_t j = 0; j < n; j++) {
        worst = fmax(worst, plait_update_l2(x + prev, ends[j] - prev));
        prev = ends[j];
    }
    ck_assert_double_le(worst, 2.0 / sqrt(8.0));
    free(x);
    plait_lora_free(&l);
}
END_TEST

START_TEST(test_diff)
{
    float a[4] = {1, 2, 3, 4}, b[4] = {0.5f, 2, 4, 0}, d[4];
    ck_assert_int_eq(plait_update_diff(d, a, b, 4), 0);
    ck_assert_float_eq(d[0], 0.5f);
    ck_assert_float_eq(d[2], -1.0f);
    ck_assert_float_eq(d[3], 4.0f);
    a[1] = NAN;
    ck_assert_int_eq(plait_update_diff(d, a, b, 4), PLAIT_EINVAL);
    for (int i = 0; i < 4; i++) ck_assert_float_eq(d[i], 0.0f); /* wiped */
    a[1] = 2;
    b[0] = -INFINITY;
    ck_assert_int_eq(plait_update_diff(d, a, b, 4), PLAIT_EINVAL);
    ck_assert_int_eq(plait_update_diff(NULL, a, b, 4), PLAIT_EINVAL);
}
END_TEST

/* Property: after clipping, the norm never exceeds S; short vectors are
 * untouched; long ones end (almost) exactly on the sphere. */
START_TEST(test_clip_property)
{
    plait_rng_t r;
    plait_rng_seed_u64(&r, 1234, 0);
    for (int trial = 0; trial < 2000; trial++) {
        size_t n = 1 + plait_rng_u32(&r) % 3000;
        double scale = pow(10.0, -6.0 + 14.0 * plait_rng_uniform(&r));
        double S = pow(10.0, -3.0 + 6.0 * plait_rng_uniform(&r));
        float *x = rand_vec(&r, n, scale);
        float *orig = malloc(n * sizeof(float));
        memcpy(orig, x, n * sizeof(float));
        double before = plait_update_l2(x, n);
        plait_clip_info_t ci;
        ck_assert_int_eq(plait_update_clip_l2(x, n, S, &ci), 0);
        double after = plait_update_l2(x, n);
        ck_assert_double_le(after, S + NORM_TOL);
        ck_assert_double_eq(ci.norm, before);
        ck_assert_double_eq(ci.norm_out, after);
        if (before <= S) {
            ck_assert_uint_eq(ci.clipped, 0);
            ck_assert_int_eq(memcmp(x, orig, n * sizeof(float)), 0);
        } else {
            ck_assert_uint_eq(ci.clipped, 1);
            ck_assert_double_ge(after, S * (1.0 - CLIP_TIGHT));
            /* direction kept */
            size_t flipped = 0;
            for (size_t i = 0; i < n; i++) flipped += !(x[i] == 0.0f || (x[i] > 0) == (orig[i] > 0));
            ck_assert_uint_eq(flipped, 0);
        }
        free(orig);
        free(x);
    }
}
END_TEST

START_TEST(test_clip_edge_and_errors)
{
    float big[3] = {3.0e38f, -3.0e38f, 3.0e38f};
    plait_clip_info_t ci;
    ck_assert_int_eq(plait_update_clip_l2(big, 3, 1.0, &ci), 0);
    ck_assert_double_le(plait_update_l2(big, 3), 1.0);
    float z[2] = {0, 0};
    ck_assert_int_eq(plait_update_clip_l2(z, 2, 1.0, &ci), 0);
    ck_assert_double_eq(ci.norm, 0.0);
    float x[3] = {1, INFINITY, 2};
    ck_assert_int_eq(plait_update_clip_l2(x, 3, 1.0, NULL), PLAIT_EINVAL);
    ck_assert_float_eq(x[0], 0.0f); /* unclipped data wiped */
    float y[2] = {1, NAN};
    ck_assert_int_eq(plait_update_clip_l2(y, 2, 1.0, NULL), PLAIT_EINVAL);
    float w[2] = {1, 1};
    ck_assert_int_eq(plait_update_clip_l2(w, 2, 0.0, NULL), PLAIT_EINVAL);
    ck_assert_int_eq(plait_update_clip_l2(w, 2, -1.0, NULL), PLAIT_EINVAL);
    ck_assert_int_eq(plait_update_clip_l2(w, 2, NAN, NULL), PLAIT_EINVAL);
    ck_assert_int_eq(plait_update_clip_l2(w, 2, INFINITY, NULL), PLAIT_EINVAL);
    ck_assert_int_eq(plait_update_clip_l2(NULL, 2, 1.0, NULL), PLAIT_EINVAL);
}
END_TEST

START_TEST(test_clip_segments)
{
    plait_rng_t r;
    plait_rng_seed_u64(&r, 99, 0);
    for (int trial = 0; trial < 300; trial++) {
        size_t ends[4] = {10, 250, 251, 400};
        float *x = rand_vec(&r, 400, 1.0);
        plait_clip_info_t ci;
        double S = 0.5 + plait_rng_uniform(&r) * 5;
        ck_assert_int_eq(plait_update_clip_segments(x, 400, ends, 4, NULL, S, &ci), 0);
        size_t prev = 0;
        for (int j = 0; j < 4; j++) {
            ck_assert_double_le(plait_update_l2(x + prev, ends[j] - prev), S / 2.0); /* S/sqrt(4) */
            prev = ends[j];
        }
        ck_assert_double_le(plait_update_l2(x, 400), S);
        ck_assert_double_le(ci.norm_out, S);
        free(x);
    }
    float x[4] = {3, 4, 6, 8};
    size_t ends[2] = {2, 4};
    double bounds[2] = {1.0, 20.0};
    plait_clip_info_t ci;
    ck_assert_int_eq(plait_update_clip_segments(x, 4, ends, 2, bounds, 0, &ci), 0);
    ck_assert_uint_eq(ci.clipped, 1);
    ck_assert_double_eq_tol(ci.norm, sqrt(25.0 + 100.0), 1e-9);
    ck_assert_float_eq(x[2], 6.0f); /* second segment under its bound */
    size_t bad1[2] = {3, 2}, bad2[2] = {2, 3};
    ck_assert_int_eq(plait_update_clip_segments(x, 4, bad1, 2, NULL, 1.0, NULL), PLAIT_EINVAL);
    ck_assert_int_eq(plait_update_clip_segments(x, 4, bad2, 2, NULL, 1.0, NULL), PLAIT_EINVAL);
    double badb[2] = {1.0, -1.0};
    ck_assert_int_eq(plait_update_clip_segments(x, 4, ends, 2, badb, 1.0, NULL), PLAIT_EINVAL);
}
END_TEST

/* The noise has the intended standard deviation and zero mean (fixed seed,
 * so the test is deterministic). */
START_TEST(test_noise_std)
{
    const size_t n = 200000;
    const double sd = 0.37;
    float *x = calloc(n, sizeof(float));
    plait_rng_t r;
    plait_rng_seed_u64(&r, 2024, 7);
    ck_assert_int_eq(plait_update_add_noise(x, n, sd, &r), 0);
    double m = 0, s2 = 0, m4 = 0;
    for (size_t i = 0; i < n; i++) m += x[i];
    m /= (double)n;
    for (size_t i = 0; i < n; i++) {
        double d = x[i] - m;
        s2 += d * d;
        m4 += d * d * d * d;
    }
    s2 /= (double)(n - 1);
    m4 /= (double)n;
    ck_assert_double_le(fabs(m), 5.0 * sd / sqrt((double)n));
    ck_assert_double_le(fabs(sqrt(s2) / sd - 1.0), STD_REL_TOL);
    ck_assert_double_le(fabs(m4 / (s2 * s2) - 3.0), 0.1); /* Gaussian kurtosis */
    /* The check can fail: a 10% wrong sigma is detected. */
    ck_assert_double_gt(fabs(sqrt(s2) / (sd * 1.1) - 1.0), STD_REL_TOL);
    ck_assert_int_eq(plait_update_add_noise(x, n, -1.0, &r), PLAIT_EINVAL);
    ck_assert_int_eq(plait_update_add_noise(x, n, NAN, &r), PLAIT_EINVAL);
    ck_assert_int_eq(plait_update_add_noise(x, n, 1.0, NULL), PLAIT_EINVAL);
    plait_rng_wipe(&r);
    free(x);
}
END_TEST

/* ChaCha20 known answers: the all-zero key and nonce, blocks 0 and 1
 * (RFC 8439 appendix A.1, test vectors #1 and #2; the DJB and IETF layouts
 * agree when the nonce is zero). */
START_TEST(test_chacha_kat)
{
    uint8_t key[32] = {0};
    plait_rng_t r;
    plait_rng_seed(&r, key, 0);
    ck_assert_uint_eq(plait_rng_u32(&r), 0xade0b876u); /* 76 b8 e0 ad */
    ck_assert_uint_eq(plait_rng_u32(&r), 0x903df1a0u); /* a0 f1 3d 90 */
    for (int i = 2; i < 16; i++) (void)plait_rng_u32(&r);
    ck_assert_uint_eq(plait_rng_u32(&r), 0xbee7079fu); /* 9f 07 e7 be */
    plait_rng_t a, b;
    plait_rng_seed_u64(&a, 5, 1);
    plait_rng_seed_u64(&b, 5, 1);
    for (int i = 0; i < 100; i++) ck_assert_uint_eq(plait_rng_u32(&a), plait_rng_u32(&b));
    plait_rng_seed_u64(&b, 5, 2);
    int same = 0;
    for (int i = 0; i < 100; i++) same += plait_rng_u32(&a) == plait_rng_u32(&b);
    ck_assert_int_lt(same, 3);
    for (int i = 0; i < 1000; i++) {
        double u = plait_rng_uniform(&a);
        ck_assert(u >= 0.0 && u < 1.0);
    }
}
END_TEST

START_TEST(test_drbg)
{
    plait_drbg_t d1, d2;
    plait_drbg_init(&d1);
    plait_drbg_init(&d2);
    uint8_t o1[3000], o2[3000];
    ck_assert_int_eq(plait_drbg_random(&d1, o1, 16), PLAIT_EINVAL); /* not seeded */
    const uint8_t seed[] = "fixed test seed";
    ck_assert_int_eq(plait_drbg_seed_deterministic(&d1, seed, sizeof(seed)), 0);
    ck_assert_int_eq(plait_drbg_seed_deterministic(&d2, seed, sizeof(seed)), 0);
    ck_assert_int_eq(plait_drbg_random(&d1, o1, sizeof(o1)), 0);
    ck_assert_int_eq(plait_drbg_random(&d2, o2, sizeof(o2)), 0);
    ck_assert_int_eq(memcmp(o1, o2, sizeof(o1)), 0);
    ck_assert_int_eq(plait_drbg_seed(&d2, (const uint8_t *)"test", 4), 0); /* reseed from the system */
    ck_assert_int_eq(plait_drbg_random(&d2, o2, sizeof(o2)), 0);
    ck_assert_int_ne(memcmp(o1, o2, 64), 0);
    plait_rng_t r;
    ck_assert_int_eq(plait_rng_seed_drbg(&r, &d2), 0);
    plait_rng_wipe(&r);
    ck_assert_int_eq(plait_drbg_seed_deterministic(&d1, seed, 0), PLAIT_EINVAL);
    ck_assert_int_eq(plait_drbg_seed_deterministic(&d1, seed, 65), PLAIT_EINVAL);
    plait_drbg_free(&d1);
    plait_drbg_free(&d1); /* double free is safe */
    plait_drbg_free(&d2);
    plait_drbg_free(NULL);
}
END_TEST

START_TEST(test_quant_roundtrip)
{
    static const unsigned bits[] = {8, 9, 12, 16, 20, 24, 31, 32};
    plait_rng_t r;
    plait_rng_seed_u64(&r, 77, 0);
    const size_t n = 5000;
    float *x = malloc(n * sizeof(float));
    uint32_t *q = malloc(n * sizeof(uint32_t));
    double *y = malloc(n * sizeof(double));
    for (size_t b = 0; b < sizeof(bits) / sizeof(bits[0]); b++) {
        plait_quant_config_t qc = {.bits = bits[b], .range = 0.75};
        ck_assert_int_eq(plait_quant_config_validate(&qc), 0);
        double step = plait_quant_step(&qc);
        for (size_t i = 0; i < n; i++) x[i] = (float)((2.0 * plait_rng_uniform(&r) - 1.0) * qc.range);
        x[0] = (float)qc.range;
        x[1] = (float)-qc.range;
        x[2] = 0.0f;
        ck_assert_int_eq(plait_quant_encode(&qc, x, n, &r, q), 0);
        ck_assert_int_eq(plait_quant_decode_sum(&qc, q, n, 1, y), 0);
        uint64_t L = (UINT64_C(1) << bits[b]) - 1;
        uint32_t qmax = 0;
        double worst = 0;
        for (size_t i = 0; i < n; i++) {
            qmax = q[i] > qmax ? q[i] : qmax;
            worst = fmax(worst, fabs(y[i] - (double)x[i]));
        }
        ck_assert_uint_le(qmax, L);
        ck_assert_double_le(worst, step * (1.0 + 1e-9)); /* within one step */
        ck_assert_double_eq_tol(y[0], qc.range, 1e-9);
        ck_assert_double_eq_tol(y[1], -qc.range, 1e-9);
    }
    free(x);
    free(q);
    free(y);
}
END_TEST

/* Stochastic rounding is unbiased: the mean of many encodings of one value
 * approaches the value, not the nearest level. */
START_TEST(test_quant_unbiased)
{
    plait_quant_config_t qc = {.bits = 8, .range = 1.0};
    double step = plait_quant_step(&qc);
    float v = (float)(-1.0 + 100.3 * step); /* 30% of the way between two levels */
    plait_rng_t r;
    plait_rng_seed_u64(&r, 3, 0);
    const int N = 100000;
    double acc = 0;
    for (int i = 0; i < N; i++) {
        uint32_t w;
        double y;
        int rc = plait_quant_encode(&qc, &v, 1, &r, &w) | plait_quant_decode_sum(&qc, &w, 1, 1, &y);
        if (rc != 0) ck_abort_msg("encode/decode failed");
        acc += y;
    }
    acc /= N;
    ck_assert_double_le(fabs(acc - v), 5.0 * 0.5 * step / sqrt((double)N));
}
END_TEST

/* A sum of n masked quantized updates dequantizes to the sum of the inputs
 * within n steps; the masks cancel mod 2^32. */
START_TEST(test_quant_sum_with_masks)
{
    static const unsigned bits[] = {8, 16, 24};
    const size_t n = 2000, clients = 100;
    plait_rng_t r;
    plait_rng_seed_u64(&r, 11, 0);
    float *x = malloc(n * sizeof(float));
    double *truth = calloc(n, sizeof(double)), *y = malloc(n * sizeof(double));
    uint32_t *q = malloc(n * sizeof(uint32_t)), *acc = malloc(n * sizeof(uint32_t));
    uint32_t *mask_total = malloc(n * sizeof(uint32_t));
    for (size_t b = 0; b < 3; b++) {
        plait_quant_config_t qc = {.bits = bits[b], .range = 2.0};
        memset(truth, 0, n * sizeof(double));
        memset(acc, 0, n * sizeof(uint32_t));
        memset(mask_total, 0, n * sizeof(uint32_t));
        for (size_t c = 0; c < clients; c++) {
            float *u = rand_vec(&r, n, 1.0);
            ck_assert_int_eq(plait_update_clip_l2(u, n, qc.range, NULL), 0);
            for (size_t i = 0; i < n; i++) truth[i] += u[i];
            ck_assert_int_eq(plait_quant_encode(&qc, u, n, &r, q), 0);
            /* pairwise-style masks: random words, the last client's cancel the rest */
            for (size_t i = 0; i < n; i++) {
                uint32_t m = c + 1 < clients ? plait_rng_u32(&r) : (uint32_t)(0u - mask_total[i]);
                mask_total[i] += m;
                q[i] += m;
            }
            plait_update_add_u32(acc, q, n);
            free(u);
        }
        size_t bad = 0;
        for (size_t i = 0; i < n; i++) bad += mask_total[i] != 0;
        ck_assert_uint_eq(bad, 0);
        ck_assert_int_eq(plait_quant_decode_sum(&qc, acc, n, clients, y), 0);
        double step = plait_quant_step(&qc);
        double worst = 0;
        for (size_t i = 0; i < n; i++) worst = fmax(worst, fabs(y[i] - truth[i]));
        ck_assert_double_le(worst, (double)clients * step);
    }
    free(x);
    free(truth);
    free(y);
    free(q);
    free(acc);
    free(mask_total);
}
END_TEST

START_TEST(test_quant_cohort_bound)
{
    ck_assert_uint_eq(plait_quant_max_cohort(8), 16843009u);
    ck_assert_uint_eq(plait_quant_max_cohort(16), 65537u);
    ck_assert_uint_eq(plait_quant_max_cohort(32), 1u);
    ck_assert_uint_eq(plait_quant_max_cohort(7), 0u);
    for (unsigned b = 8; b <= 32; b++) {
        uint64_t L = (UINT64_C(1) << b) - 1, nmax = plait_quant_max_cohort(b);
        ck_assert_uint_le(nmax * L, UINT32_MAX);     /* the worst sum fits */
        ck_assert_uint_gt((nmax + 1) * L, UINT32_MAX); /* one more could wrap */
        plait_quant_config_t qc = {.bits = b, .range = 1.0};
        ck_assert_int_eq(plait_quant_check_cohort(&qc, nmax), 0);
        ck_assert_int_eq(plait_quant_check_cohort(&qc, nmax + 1), PLAIT_ETOOBIG);
    }
    /* Worst case at the bound: every client sends the top level; the sum
     * decodes exactly to n·R. */
    plait_quant_config_t qc = {.bits = 16, .range = 1.0};
    uint32_t top = 65535u, acc = 0;
    for (int i = 0; i < 65537; i++) plait_update_add_u32(&acc, &top, 1);
    double y;
    ck_assert_int_eq(plait_quant_decode_sum(&qc, &acc, 1, 65537, &y), 0);
    ck_assert_double_eq_tol(y, 65537.0, 1e-6);
    ck_assert_int_eq(plait_quant_decode_sum(&qc, &acc, 1, 65538, &y), PLAIT_ETOOBIG);
    ck_assert_ptr_nonnull(strstr(plait_errmsg(), "wrap"));
    uint32_t w = 65535u * 3u + 1u; /* impossible for 3 clients */
    ck_assert_int_eq(plait_quant_decode_sum(&qc, &w, 1, 3, &y), PLAIT_EPROTO);
    ck_assert_int_eq(plait_quant_decode_sum(&qc, &w, 1, 0, &y), PLAIT_EINVAL);
}
END_TEST

START_TEST(test_quant_weights_and_errors)
{
    plait_quant_config_t qc;
    plait_quant_config_default(&qc);
    ck_assert_uint_eq(qc.bits, 16);
    plait_rng_t r;
    plait_rng_seed_u64(&r, 5, 0);
    double ws[5] = {1.0, 0.25, 0.0, 0.7, 0.123456}, tw = 0;
    uint32_t acc = 0;
    for (int i = 0; i < 5; i++) {
        uint32_t w;
        ck_assert_int_eq(plait_quant_encode_weight(&qc, ws[i], &r, &w), 0);
        plait_update_add_u32(&acc, &w, 1);
        tw += ws[i];
    }
    double got;
    ck_assert_int_eq(plait_quant_decode_weight_sum(&qc, acc, 5, &got), 0);
    ck_assert_double_le(fabs(got - tw), 5.0 / 65535.0);
    uint32_t w;
    ck_assert_int_eq(plait_quant_encode_weight(&qc, -0.1, &r, &w), PLAIT_EINVAL);
    ck_assert_int_eq(plait_quant_encode_weight(&qc, 1.5, &r, &w), PLAIT_EINVAL);
    ck_assert_int_eq(plait_quant_encode_weight(&qc, NAN, &r, &w), PLAIT_EINVAL);
    ck_assert_int_eq(plait_quant_decode_weight_sum(&qc, 65535u * 2u + 1u, 2, &got), PLAIT_EPROTO);
    float x[3] = {0.1f, NAN, 0.2f};
    uint32_t q[3];
    ck_assert_int_eq(plait_quant_encode(&qc, x, 3, &r, q), PLAIT_EINVAL);
    x[1] = INFINITY;
    ck_assert_int_eq(plait_quant_encode(&qc, x, 3, &r, q), PLAIT_EINVAL);
    plait_quant_config_t bad = {.bits = 7, .range = 1.0};
    ck_assert_int_eq(plait_quant_config_validate(&bad), PLAIT_EINVAL);
    bad.bits = 33;
    ck_assert_int_eq(plait_quant_config_validate(&bad), PLAIT_EINVAL);
    bad.bits = 16;
    bad.range = 0.0;
    ck_assert_int_eq(plait_quant_config_validate(&bad), PLAIT_EINVAL);
    bad.range = INFINITY;
    ck_assert_int_eq(plait_quant_encode(&bad, x, 1, &r, q), PLAIT_EINVAL);
    /* Values outside the range are clamped to it. */
    float o[2] = {5.0f, -5.0f};
    double y[2];
    ck_assert_int_eq(plait_quant_encode(&qc, o, 2, &r, q), 0);
    ck_assert_int_eq(plait_quant_decode_sum(&qc, q, 2, 1, y), 0);
    ck_assert_double_eq_tol(y[0], 1.0, 1e-12);
    ck_assert_double_eq_tol(y[1], -1.0, 1e-12);
    ck_assert_double_eq_tol(plait_quant_norm_slack(&qc, 100), 10.0 * 2.0 / 65535.0, 1e-15);
}
END_TEST

/* The aggregator's one-pass check-and-add against decode, sum of squares and add done apart:
 * the same sum bit for bit, the same sum of squares to rounding, a bad word named and the
 * accumulator left exactly as it was. Lengths around the 8-wide blocks; 8, 13, 16, 32 bits. */
START_TEST(test_quant_add_checked)
{
    static const unsigned bits[] = {8, 13, 16, 32};
    static const size_t lens[] = {0, 1, 7, 8, 9, 1000, 1003};
    plait_rng_t rng;
    plait_rng_seed_u64(&rng, 5, 6);
    for (size_t b = 0; b < sizeof(bits) / sizeof(bits[0]); b++)
        for (size_t l = 0; l < sizeof(lens) / sizeof(lens[0]); l++) {
            size_t n = lens[l];
            plait_quant_config_t qc = {bits[b], 0.5};
            uint32_t *w = malloc((n + 1) * 4), *acc = malloc((n + 1) * 4), *ref = malloc((n + 1) * 4);
            double *dec = malloc((n + 1) * sizeof(double));
            ck_assert(w && acc && ref && dec);
            uint64_t lv = bits[b] == 32 ? UINT32_MAX : ((UINT64_C(1) << bits[b]) - 1);
            for (size_t i = 0; i < n; i++) {
                w[i] = (uint32_t)(plait_rng_u64(&rng) % (lv + 1));
                acc[i] = ref[i] = (uint32_t)plait_rng_u64(&rng); /* wraps mod 2^32 */
            }
            double ss = -1, want = 0;
            ck_assert_int_eq(plait_quant_add_checked(&qc, acc, w, n, &ss), 0);
            ck_assert_int_eq(plait_quant_decode_sum(&qc, w, n, 1, dec), 0);
            for (size_t i = 0; i < n; i++) want += dec[i] * dec[i];
            plait_update_add_u32(ref, w, n);
            ck_assert(n == 0 || memcmp(acc, ref, n * 4) == 0);
            ck_assert_msg(fabs(ss - want) <= 1e-12 * (want + 1), "n %zu bits %u: %.17g vs %.17g", n, bits[b], ss, want);
            if (n > 0 && bits[b] < 32) { /* one word out of range: refused, named, acc untouched */
                size_t j = n / 2;
                w[j] = (uint32_t)lv + 1;
                memcpy(ref, acc, n * 4);
                ck_assert_int_eq(plait_quant_add_checked(&qc, acc, w, n, &ss), PLAIT_EPROTO);
                char name[32];
                snprintf(name, sizeof(name), "word %zu ", j);
                ck_assert_msg(strstr(plait_errmsg(), name) != NULL, "%s", plait_errmsg());
                ck_assert_int_eq(memcmp(acc, ref, n * 4), 0);
            }
            free(w);
            free(acc);
            free(ref);
            free(dec);
        }
    plait_quant_config_t bad = {7, 1.0};
    double ss;
    uint32_t one = 0;
    ck_assert_int_eq(plait_quant_add_checked(&bad, &one, &one, 1, &ss), PLAIT_EINVAL);
    plait_quant_config_t ok = {8, 1.0};
    ck_assert_int_eq(plait_quant_add_checked(&ok, NULL, &one, 1, &ss), PLAIT_EINVAL);
}
END_TEST

/* The narrow-word forms (how the aggregator keeps an update: ceil(bits / 8) bytes a word, or 4
 * after a device sent a 32-bit word) against the uint32_t ones on the same words: the same
 * sums bit for bit, the same sum of squares to rounding (exact in integers for 1 and 2 bytes;
 * lengths past the 65,536-word and 262,144-word blocks of the 8-bit sums), the same decode, the same word named
 * when one is out of range and the accumulator left as it was. */
START_TEST(test_quant_add_checked_narrow)
{
    static const unsigned bits[] = {8, 8, 12, 16, 16, 20, 24, 32};
    static const unsigned wbs[] = {1, 4, 2, 2, 3, 3, 3, 4};
    static const size_t lens[] = {0, 1, 9, 1003, 65536, 65537, 140001, 600011};
    plait_rng_t rng;
    plait_rng_seed_u64(&rng, 7, 8);
    for (size_t b = 0; b < sizeof(bits) / sizeof(bits[0]); b++)
        for (size_t l = 0; l < sizeof(lens) / sizeof(lens[0]); l++) {
            size_t n = lens[l];
            unsigned wb = wbs[b];
            plait_quant_config_t qc = {bits[b], 0.25};
            uint32_t *w = malloc((n + 1) * 4), *acc = malloc((n + 1) * 4), *ref = malloc((n + 1) * 4);
            uint8_t *nb = malloc((n + 1) * wb);
            double *dec = malloc((n + 1) * sizeof(double)), *dec2 = malloc((n + 1) * sizeof(double));
            ck_assert(w && acc && ref && nb && dec && dec2);
            uint64_t lv = bits[b] == 32 ? UINT32_MAX : ((UINT64_C(1) << bits[b]) - 1);
            for (size_t i = 0; i < n; i++) {
                /* the extremes often: they carry the largest squares */
                uint64_t r = plait_rng_u64(&rng);
                w[i] = (uint32_t)(r % 4 == 0 ? 0 : r % 4 == 1 ? lv : (r >> 8) % (lv + 1));
                for (unsigned k = 0; k < wb; k++) nb[(size_t)wb * i + k] = (uint8_t)(w[i] >> (8 * k));
                ck_assert_uint_eq(plait_narrow_word(nb, wb, i), w[i]);
                acc[i] = ref[i] = (uint32_t)plait_rng_u64(&rng);
            }
            double ss = -1, want = -1;
            ck_assert_int_eq(plait_quant_add_checked(&qc, ref, w, n, &want), 0);
            ck_assert_int_eq(plait_quant_add_checked_narrow(&qc, acc, nb, wb, n, &ss), 0);
            ck_assert(n == 0 || memcmp(acc, ref, n * 4) == 0);
            ck_assert_msg(fabs(ss - want) <= 1e-12 * (want + 1), "n %zu bits %u wb %u: %.17g vs %.17g", n, bits[b], wb,
                          ss, want);
            ck_assert_int_eq(plait_quant_decode_sum(&qc, w, n, 1, dec), 0);
            ck_assert_int_eq(plait_quant_decode_narrow(&qc, nb, wb, n, dec2), 0);
            ck_assert(n == 0 || memcmp(dec, dec2, n * sizeof(double)) == 0);
            plait_update_sub_narrow(acc, nb, wb, n);
            plait_update_sub_u32(ref, w, n);
            ck_assert(n == 0 || memcmp(acc, ref, n * 4) == 0);
            plait_update_add_narrow(acc, nb, wb, n);
            plait_update_add_u32(ref, w, n);
            ck_assert(n == 0 || memcmp(acc, ref, n * 4) == 0);
            if (n > 0 && lv < ((UINT64_C(1) << (8 * wb)) - 1)) { /* a word that fits wb bytes but not the bits */
                size_t j = n - 1 - n / 3;
                uint32_t big = (uint32_t)lv + 1;
                for (unsigned k = 0; k < wb; k++) nb[(size_t)wb * j + k] = (uint8_t)(big >> (8 * k));
                memcpy(ref, acc, n * 4);
                ck_assert_int_eq(plait_quant_add_checked_narrow(&qc, acc, nb, wb, n, &ss), PLAIT_EPROTO);
                char name[32];
                snprintf(name, sizeof(name), "word %zu ", j);
                ck_assert_msg(strstr(plait_errmsg(), name) != NULL, "%s", plait_errmsg());
                ck_assert_int_eq(memcmp(acc, ref, n * 4), 0);
                ck_assert_int_eq(plait_quant_decode_narrow(&qc, nb, wb, n, dec2), PLAIT_EPROTO);
                ck_assert_msg(strstr(plait_errmsg(), name) != NULL, "%s", plait_errmsg());
            }
            free(w);
            free(acc);
            free(ref);
            free(nb);
            free(dec);
            free(dec2);
        }
    plait_quant_config_t ok = {8, 1.0};
    double ss;
    uint32_t one = 0;
    uint8_t b1 = 0;
    ck_assert_int_eq(plait_quant_add_checked_narrow(&ok, &one, &b1, 0, 1, &ss), PLAIT_EINVAL);
    ck_assert_int_eq(plait_quant_add_checked_narrow(&ok, &one, &b1, 5, 1, &ss), PLAIT_EINVAL);
    ck_assert_int_eq(plait_quant_add_checked_narrow(&ok, NULL, &b1, 1, 1, &ss), PLAIT_EINVAL);
    ck_assert_int_eq(plait_quant_decode_narrow(&ok, &b1, 0, 1, (double[1]){0}), PLAIT_EINVAL);
}
END_TEST

Suite *update_suite(void)
{
    Suite *s = suite_create("update");
    TCase *tc = tcase_create("clip");
    tcase_set_timeout(tc, 300); /* shared CI machines and sanitizer builds are slow */
    tcase_add_test(tc, test_span_modes);
    tcase_add_test(tc, test_tensor_segments);
    tcase_add_test(tc, test_diff);
    tcase_add_test(tc, test_clip_property);
    tcase_add_test(tc, test_clip_edge_and_errors);
    tcase_add_test(tc, test_clip_segments);
    suite_add_tcase(s, tc);
    tc = tcase_create("noise");
    tcase_set_timeout(tc, 300); /* shared CI machines and sanitizer builds are slow */
    tcase_add_test(tc, test_noise_std);
    tcase_add_test(tc, test_chacha_kat);
    tcase_add_test(tc, test_drbg);
    suite_add_tcase(s, tc);
    tc = tcase_create("quant");
    tcase_set_timeout(tc, 300); /* shared CI machines and sanitizer builds are slow */
    tcase_add_test(tc, test_quant_roundtrip);
    tcase_add_test(tc, test_quant_unbiased);
    tcase_add_test(tc, test_quant_sum_with_masks);
    tcase_add_test(tc, test_quant_cohort_bound);
    tcase_add_test(tc, test_quant_weights_and_errors);
    tcase_add_test(tc, test_quant_add_checked);
    tcase_add_test(tc, test_quant_add_checked_narrow);
    suite_add_tcase(s, tc);
    return s;
}
