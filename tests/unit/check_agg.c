/*
 * check_agg.c: the aggregator core (aggregator/fedavg.c, server_opt.c,
 * robust.c, dp.c): streaming FedAvg against a naive model (and a wrong model
 * that must be caught), rejection counters, the secure-aggregation decode,
 * hand-computed optimizer steps, robust estimators, central DP noise and
 * adaptive clipping.
 */
#include <check.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "plait/agg.h"
#include "plait/lora.h"
#include "plait/privacy.h"
#include "plait/rng.h"
#include "plait/update.h"

#define AVG_REL_TOL 1e-6  /* float output of a double accumulator vs long double model */
#define OPT_TOL 2e-6      /* float state vs hand computation */
#define STD_REL_TOL 0.01  /* noise std, 2e5 samples: ~6 standard errors */

/* ---- FedAvg vs a naive model ------------------------------------------- */

typedef struct {
    float *u;
    double examples;
} upd_t;

/* The model: store everything, sum in long double, divide once. `wrong`
 * forgets the example cap, as a buggy implementation might. */
static void naive_avg(const upd_t *ups, size_t k, size_t P, double cap, int wrong, double *out)
{
    long double wsum = 0;
    long double *acc = calloc(P, sizeof(long double));
    for (size_t j = 0; j < k; j++) {
        long double w = wrong ? ups[j].examples / cap : fmin(ups[j].examples, cap) / cap;
        wsum += w;
        for (size_t i = 0; i < P; i++) acc[i] += w * ups[j].u[i];
    }
    for (size_t i = 0; i < P; i++) out[i] = (double)(acc[i] / wsum);
    free(acc);
}

static double max_rel_diff(const float *a, const double *b, size_t P)
{
    double m = 0, scale = 0;
    for (size_t i = 0; i < P; i++) scale = fmax(scale, fabs(b[i]));
    for (size_t i = 0; i < P; i++) m = fmax(m, fabs(a[i] - b[i]) / scale);
    return m;
}

START_TEST(test_fedavg_vs_naive)
{
    const size_t P = 777, K = 60;
    plait_rng_t r;
    plait_rng_seed_u64(&r, 42, 0);
    plait_fedavg_config_t cfg;
    plait_fedavg_config_default(&cfg);
    cfg.dim = P;
    cfg.clip_norm = 2.0;
    cfg.weight_cap = 100;
    plait_fedavg_t *fa;
    ck_assert_int_eq(plait_fedavg_create(&fa, &cfg), 0);
    upd_t ups[60];
    for (size_t j = 0; j < K; j++) {
        ups[j].u = malloc(P * sizeof(float));
        for (size_t i = 0; i < P; i++) ups[j].u[i] = (float)plait_rng_normal(&r);
        ck_assert_int_eq(plait_update_clip_l2(ups[j].u, P, 2.0, NULL), 0);
        ups[j].examples = 1 + plait_rng_u32(&r) % 300; /* a third exceed the cap */
        ck_assert_int_eq(plait_fedavg_add(fa, ups[j].u, P, ups[j].examples), 0);
    }
    float *got = malloc(P * sizeof(float));
    double *want = malloc(P * sizeof(double)), *bad = malloc(P * sizeof(double));
    ck_assert_int_eq(plait_fedavg_result(fa, got, P), 0);
    naive_avg(ups, K, P, 100, 0, want);
    naive_avg(ups, K, P, 100, 1, bad);
    ck_assert_double_le(max_rel_diff(got, want, P), AVG_REL_TOL);
    /* The same comparison catches the wrong model: the check can fail. */
    ck_assert_double_gt(max_rel_diff(got, bad, P), 100 * AVG_REL_TOL);
    plait_fedavg_stats_t st;
    plait_fedavg_stats(fa, &st);
    ck_assert_uint_eq(st.accepted, K);
    ck_assert_double_gt(st.weight_sum, 0.0);
    /* reset forgets */
    plait_fedavg_reset(fa);
    ck_assert_int_eq(plait_fedavg_result(fa, got, P), PLAIT_EAGAIN);
    for (size_t j = 0; j < K; j++) free(ups[j].u);
    free(got);
    free(want);
    free(bad);
    plait_fedavg_destroy(fa);
}
END_TEST

START_TEST(test_fedavg_rejects)
{
    plait_fedavg_config_t cfg;
    plait_fedavg_config_default(&cfg);
    cfg.dim = 4;
    plait_fedavg_t *fa;
    ck_assert_int_eq(plait_fedavg_create(&fa, &cfg), 0);
    float good[4] = {0.5f, 0.5f, 0.0f, 0.0f}, out[4];
    ck_assert_int_eq(plait_fedavg_add(fa, good, 4, 10), 0);
    float nan_u[4] = {0.1f, NAN, 0, 0}, inf_u[4] = {0.1f, 0, -INFINITY, 0}, big[4] = {1.0f, 1.0f, 0, 0};
    ck_assert_int_eq(plait_fedavg_add(fa, good, 3, 10), PLAIT_EMISMATCH);
    ck_assert_int_eq(plait_fedavg_add(fa, good, 5, 10), PLAIT_EMISMATCH);
    ck_assert_int_eq(plait_fedavg_add(fa, nan_u, 4, 10), PLAIT_EINVAL);
    ck_assert_int_eq(plait_fedavg_add(fa, inf_u, 4, 10), PLAIT_EINVAL);
    ck_assert_int_eq(plait_fedavg_add(fa, big, 4, 10), PLAIT_ETOOBIG);
    ck_assert_ptr_nonnull(strstr(plait_errmsg(), "clip bound"));
    ck_assert_int_eq(plait_fedavg_add(fa, good, 4, 0), PLAIT_EINVAL);
    ck_assert_int_eq(plait_fedavg_add(fa, good, 4, -3), PLAIT_EINVAL);
    ck_assert_int_eq(plait_fedavg_add(fa, good, 4, NAN), PLAIT_EINVAL);
    ck_assert_int_eq(plait_fedavg_add(fa, good, 4, INFINITY), PLAIT_EINVAL);
    ck_assert_int_eq(plait_fedavg_add(fa, NULL, 4, 1), PLAIT_EINVAL);
    plait_fedavg_stats_t st;
    plait_fedavg_stats(fa, &st);
    ck_assert_uint_eq(st.accepted, 1);
    ck_assert_uint_eq(st.rejected_length, 2);
    ck_assert_uint_eq(st.rejected_nonfinite, 2);
    ck_assert_uint_eq(st.rejected_norm, 1);
    ck_assert_uint_eq(st.rejected_weight, 4);
    /* rejected updates left no trace */
    ck_assert_int_eq(plait_fedavg_result(fa, out, 4), 0);
    for (int i = 0; i < 4; i++) ck_assert_float_eq(out[i], good[i]);
    ck_assert_int_eq(plait_fedavg_result(fa, out, 3), PLAIT_EMISMATCH);
    plait_fedavg_destroy(fa);
    /* absurd configs */
    cfg.dim = 0;
    ck_assert_int_eq(plait_fedavg_create(&fa, &cfg), PLAIT_EINVAL);
    ck_assert_ptr_null(fa);
    cfg.dim = PLAIT_AGG_MAX_DIM + 1;
    ck_assert_int_eq(plait_fedavg_create(&fa, &cfg), PLAIT_ETOOBIG);
    cfg.dim = 4;
    cfg.clip_norm = -1;
    ck_assert_int_eq(plait_fedavg_create(&fa, &cfg), PLAIT_EINVAL);
    cfg.clip_norm = 1;
    cfg.weight_cap = 0;
    ck_assert_int_eq(plait_fedavg_create(&fa, &cfg), PLAIT_EINVAL);
    cfg.weight_cap = NAN;
    ck_assert_int_eq(plait_fedavg_create(&fa, &cfg), PLAIT_EINVAL);
    plait_fedavg_destroy(NULL);
}
END_TEST

START_TEST(test_fedavg_fixed_denominator_uniform)
{
    plait_fedavg_config_t cfg;
    plait_fedavg_config_default(&cfg);
    cfg.dim = 2;
    cfg.uniform_weights = 1;
    cfg.fixed_denominator = 10;
    plait_fedavg_t *fa;
    ck_assert_int_eq(plait_fedavg_create(&fa, &cfg), 0);
    float a[2] = {0.5f, 0}, b[2] = {0, 0.25f}, out[2];
    ck_assert_int_eq(plait_fedavg_add(fa, a, 2, 1), 0);
    ck_assert_int_eq(plait_fedavg_add(fa, b, 2, 5000), 0);
    ck_assert_int_eq(plait_fedavg_result(fa, out, 2), 0);
    ck_assert_float_eq_tol(out[0], 0.05f, 1e-7f); /* divided by 10, not by 2 */
    ck_assert_float_eq_tol(out[1], 0.025f, 1e-7f);
    plait_fedavg_destroy(fa);
}
END_TEST

/* Secure aggregation: clients upload quantize(w·x) and quantize(w), masked;
 * the server sums words mod 2^32, decodes, and gets the weighted average. */
START_TEST(test_secure_path)
{
    const size_t P = 300, K = 50;
    plait_quant_config_t qc = {.bits = 20, .range = 1.0};
    ck_assert_int_eq(plait_quant_check_cohort(&qc, K), 0);
    plait_rng_t r;
    plait_rng_seed_u64(&r, 8, 0);
    uint32_t *acc = calloc(P + 1, sizeof(uint32_t)), *words = malloc((P + 1) * sizeof(uint32_t));
    uint32_t *mask_sum = calloc(P + 1, sizeof(uint32_t));
    double *truth = calloc(P, sizeof(double)), tw = 0;
    float *x = malloc(P * sizeof(float));
    for (size_t c = 0; c < K; c++) {
        for (size_t i = 0; i < P; i++) x[i] = (float)plait_rng_normal(&r);
        ck_assert_int_eq(plait_update_clip_l2(x, P, 1.0, NULL), 0);
        double w = 0.1 + 0.9 * plait_rng_uniform(&r);
        for (size_t i = 0; i < P; i++) {
            x[i] = (float)(w * x[i]);
            truth[i] += x[i];
        }
        tw += w;
        ck_assert_int_eq(plait_quant_encode(&qc, x, P, &r, words), 0);
        ck_assert_int_eq(plait_quant_encode_weight(&qc, w, &r, &words[P]), 0);
        for (size_t i = 0; i <= P; i++) {
            uint32_t m = c + 1 < K ? plait_rng_u32(&r) : 0u - mask_sum[i];
            mask_sum[i] += m;
            words[i] += m;
        }
        plait_update_add_u32(acc, words, P + 1);
    }
    double *sum = malloc(P * sizeof(double)), wsum;
    ck_assert_int_eq(plait_agg_decode_secure_sum(&qc, acc, P + 1, K, sum, &wsum), 0);
    double step = plait_quant_step(&qc);
    ck_assert_double_le(fabs(wsum - tw), K / 1048575.0);
    double worst = 0;
    for (size_t i = 0; i < P; i++) worst = fmax(worst, fabs(sum[i] - truth[i]));
    ck_assert_double_le(worst, K * step);
    plait_fedavg_config_t cfg;
    plait_fedavg_config_default(&cfg);
    cfg.dim = P;
    plait_fedavg_t *fa;
    ck_assert_int_eq(plait_fedavg_create(&fa, &cfg), 0);
    ck_assert_int_eq(plait_fedavg_add_sum(fa, sum, P, wsum, K), 0);
    float *avg = malloc(P * sizeof(float));
    ck_assert_int_eq(plait_fedavg_result(fa, avg, P), 0);
    worst = 0;
    for (size_t i = 0; i < P; i++) worst = fmax(worst, fabs(avg[i] - truth[i] / tw));
    ck_assert_double_le(worst, 2 * K * step / tw + 1e-6);
    ck_assert_int_eq(plait_agg_decode_secure_sum(&qc, acc, 1, K, sum, &wsum), PLAIT_EINVAL);
    ck_assert_int_eq(plait_agg_decode_secure_sum(&qc, acc, P + 1, 5000, sum, &wsum), PLAIT_ETOOBIG);
    plait_fedavg_destroy(fa);
    free(acc);
    free(words);
    free(mask_sum);
    free(truth);
    free(x);
    free(sum);
    free(avg);
}
END_TEST

/* The block-wise decode (plait_fedavg_add_quant_sum, plait_agg_mean_quant_sum: the round core's
 * plain path, without P doubles) against decode-then-add-then-result, bit for bit; a span that is
 * not a multiple of the block; a bad word in a later block; a zero weight. */
START_TEST(test_quant_sum_blockwise)
{
    const size_t P = 1300, K = 7;
    plait_quant_config_t qc = {.bits = 12, .range = 0.5};
    plait_rng_t r;
    plait_rng_seed_u64(&r, 21, 0);
    uint32_t *acc = calloc(P + 1, sizeof(uint32_t)), *words = malloc((P + 1) * sizeof(uint32_t));
    float *x = malloc(P * sizeof(float));
    for (size_t c = 0; c < K; c++) {
        for (size_t i = 0; i < P; i++) x[i] = (float)(0.4 * plait_rng_normal(&r));
        ck_assert_int_eq(plait_quant_encode(&qc, x, P, &r, words), 0);
        ck_assert_int_eq(plait_quant_encode_weight(&qc, 0.2 + 0.1 * (double)c, &r, &words[P]), 0);
        plait_update_add_u32(acc, words, P + 1);
    }
    plait_fedavg_config_t cfg;
    plait_fedavg_config_default(&cfg);
    cfg.dim = P;
    plait_fedavg_t *ref, *blk;
    ck_assert_int_eq(plait_fedavg_create(&ref, &cfg), 0);
    ck_assert_int_eq(plait_fedavg_create(&blk, &cfg), 0);
    double *sum = malloc(P * sizeof(double)), wsum = 0;
    ck_assert_int_eq(plait_agg_decode_secure_sum(&qc, acc, P + 1, K, sum, &wsum), 0);
    ck_assert_int_eq(plait_fedavg_add_sum(ref, sum, P, wsum, K), 0);
    ck_assert_int_eq(plait_fedavg_add_quant_sum(blk, &qc, acc, P + 1, K), 0);
    ck_assert_mem_eq(plait_fedavg_sum(ref), plait_fedavg_sum(blk), P * sizeof(double));
    plait_fedavg_stats_t sr, sb;
    plait_fedavg_stats(ref, &sr);
    plait_fedavg_stats(blk, &sb);
    ck_assert(sr.weight_sum == sb.weight_sum && sr.accepted == sb.accepted);
    float *want = malloc(P * sizeof(float)), *got = malloc(P * sizeof(float));
    ck_assert_int_eq(plait_fedavg_result(ref, want, P), 0);
    ck_assert_int_eq(plait_agg_mean_quant_sum(&qc, acc, P + 1, K, got, P), 0);
    ck_assert_mem_eq(want, got, P * sizeof(float));
    /* A word out of range in the third block: refused, naming it, nothing written. */
    uint32_t keep = acc[1100];
    acc[1100] = (uint32_t)(K * 4095u + 1u);
    memset(got, 0x5a, P * sizeof(float));
    memcpy(want, got, P * sizeof(float));
    ck_assert_int_eq(plait_agg_mean_quant_sum(&qc, acc, P + 1, K, got, P), PLAIT_EPROTO);
    ck_assert_ptr_nonnull(strstr(plait_errmsg(), "word 1100 "));
    ck_assert_mem_eq(want, got, P * sizeof(float));
    ck_assert_int_eq(plait_fedavg_add_quant_sum(blk, &qc, acc, P + 1, K), PLAIT_EPROTO);
    ck_assert_mem_eq(plait_fedavg_sum(ref), plait_fedavg_sum(blk), P * sizeof(double));
    acc[1100] = keep;
    /* No weight: no mean (as plait_fedavg_result on a zero weight sum); the wrong length. */
    uint32_t w0 = acc[P];
    acc[P] = 0;
    ck_assert_int_eq(plait_agg_mean_quant_sum(&qc, acc, P + 1, K, got, P), PLAIT_EAGAIN);
    ck_assert_mem_eq(want, got, P * sizeof(float));
    acc[P] = w0;
    ck_assert_int_eq(plait_agg_mean_quant_sum(&qc, acc, P, K, got, P), PLAIT_EMISMATCH);
    ck_assert_int_eq(plait_agg_mean_quant_sum(&qc, acc, 1, K, got, P), PLAIT_EINVAL);
    plait_fedavg_destroy(ref);
    plait_fedavg_destroy(blk);
    free(acc);
    free(words);
    free(x);
    free(sum);
    free(want);
    free(got);
}
END_TEST

/* ---- server optimizers: two steps on x = (1, -2) with Δ1 = (0.5, -0.2),
 * Δ2 = (0.1, 0.3), lr 0.1, β1 0.9, β2 0.99, τ 1e-3, v0 = τ². By hand for
 * FedAdam, coordinate 0, step 1: m = 0.1·0.5 = 0.05; v = 0.99e-6 + 0.01·0.25
 * = 0.00250099; x = 1 + 0.1·0.05 / (sqrt(0.00250099) + 0.001) = 1.098020190.
 * The other entries follow the same formulas (values to 9 decimals). */
static const double opt_expect[4][4] = {
    {1.050000000, -2.020000000, 1.060000000, -1.990000000},  /* FedAvg: x += 0.1·Δ */
    {1.009980020, -2.009950125, 1.020745274, -2.006631142},  /* FedAdagrad */
    {1.098020190, -2.095126052, 1.204291935, -2.062705545},  /* FedAdam */
    {1.098019998, -2.095124922, 1.203789229, -2.062753189},  /* FedYogi */
};

START_TEST(test_server_opt_hand)
{
    const float d1[2] = {0.5f, -0.2f}, d2[2] = {0.1f, 0.3f};
    for (int k = 0; k < 4; k++) {
        plait_server_opt_config_t cfg;
        plait_server_opt_config_default(&cfg, (plait_server_opt_kind_t)k);
        cfg.lr = 0.1;
        plait_server_opt_t *o;
        ck_assert_int_eq(plait_server_opt_create(&o, &cfg, 2), 0);
        float x[2] = {1.0f, -2.0f};
        ck_assert_int_eq(plait_server_opt_step(o, x, d1, 2), 0);
        ck_assert_double_eq_tol(x[0], opt_expect[k][0], OPT_TOL);
        ck_assert_double_eq_tol(x[1], opt_expect[k][1], OPT_TOL);
        /* persist the state, continue in a fresh optimizer */
        size_t sl = plait_server_opt_state_len(o);
        ck_assert_uint_eq(sl, k == 0 ? 0 : 4);
        float st[4];
        ck_assert_int_eq(plait_server_opt_export(o, st, sl), 0);
        plait_server_opt_t *o2;
        ck_assert_int_eq(plait_server_opt_create(&o2, &cfg, 2), 0);
        ck_assert_int_eq(plait_server_opt_import(o2, st, sl), 0);
        float x2[2] = {x[0], x[1]};
        ck_assert_int_eq(plait_server_opt_step(o, x, d2, 2), 0);
        ck_assert_int_eq(plait_server_opt_step(o2, x2, d2, 2), 0);
        ck_assert_double_eq_tol(x[0], opt_expect[k][2], OPT_TOL);
        ck_assert_double_eq_tol(x[1], opt_expect[k][3], OPT_TOL);
        ck_assert_float_eq(x[0], x2[0]);
        ck_assert_float_eq(x[1], x2[1]);
        /* bad input changes nothing */
        float bad[2] = {NAN, 0};
        ck_assert_int_eq(plait_server_opt_step(o, x, bad, 2), PLAIT_EINVAL);
        ck_assert_float_eq(x[0], x2[0]);
        ck_assert_int_eq(plait_server_opt_step(o, x, d2, 3), PLAIT_EMISMATCH);
        if (k > 0) {
            st[0] = NAN;
            ck_assert_int_eq(plait_server_opt_import(o2, st, 4), PLAIT_EPROTO);
            st[0] = 0;
            st[3] = -1;
            ck_assert_int_eq(plait_server_opt_import(o2, st, 4), PLAIT_EPROTO);
            ck_assert_int_eq(plait_server_opt_import(o2, st, 3), PLAIT_EMISMATCH);
        }
        plait_server_opt_destroy(o);
        plait_server_opt_destroy(o2);
    }
    plait_server_opt_config_t cfg;
    plait_server_opt_config_default(&cfg, PLAIT_OPT_FEDADAM);
    cfg.beta1 = 1.0;
    ck_assert_int_eq(plait_server_opt_config_validate(&cfg), PLAIT_EINVAL);
    cfg.beta1 = 0.9;
    cfg.tau = 0;
    ck_assert_int_eq(plait_server_opt_config_validate(&cfg), PLAIT_EINVAL);
    cfg.tau = 1e-3;
    cfg.lr = -1;
    ck_assert_int_eq(plait_server_opt_config_validate(&cfg), PLAIT_EINVAL);
    plait_server_opt_kind_t kind;
    ck_assert_int_eq(plait_server_opt_kind_parse("fedyogi", &kind), 0);
    ck_assert_int_eq(kind, PLAIT_OPT_FEDYOGI);
    ck_assert_int_eq(plait_server_opt_kind_parse("sgd", &kind), PLAIT_EINVAL);
}
END_TEST

/* ---- robust aggregators ------------------------------------------------- */

START_TEST(test_robust)
{
    plait_robust_config_t cfg;
    plait_robust_config_default(&cfg);
    cfg.dim = 3;
    cfg.max_updates = 5;
    cfg.trim_fraction = 0.2; /* drop 1 at each end of 5 */
    plait_robust_t *r;
    ck_assert_int_eq(plait_robust_create(&r, &cfg), 0);
    float out[3];
    ck_assert_int_eq(plait_robust_result(r, PLAIT_ROBUST_MEDIAN, out, 3), PLAIT_EAGAIN);
    const float u[5][3] = {{1, 10, -1}, {2, 20, -2}, {3, 30, -3}, {4, 40, -4}, {1000, -1000, 1000}}; /* last: attacker */
    for (int i = 0; i < 5; i++) ck_assert_int_eq(plait_robust_add(r, u[i], 3), 0);
    ck_assert_int_eq(plait_robust_add(r, u[0], 3), PLAIT_ETOOBIG); /* full */
    ck_assert_int_eq(plait_robust_result(r, PLAIT_ROBUST_MEDIAN, out, 3), 0);
    ck_assert_float_eq(out[0], 3.0f);
    ck_assert_float_eq(out[1], 20.0f);
    ck_assert_float_eq(out[2], -2.0f);
    ck_assert_int_eq(plait_robust_result(r, PLAIT_ROBUST_TRIMMED_MEAN, out, 3), 0);
    ck_assert_float_eq_tol(out[0], 3.0f, 1e-6f);  /* (2+3+4)/3 */
    ck_assert_float_eq_tol(out[1], 20.0f, 1e-6f); /* (10+20+30)/3 */
    ck_assert_float_eq_tol(out[2], -2.0f, 1e-6f);
    plait_robust_destroy(r);
    /* even count: mean of the middle two */
    cfg.max_updates = 4;
    ck_assert_int_eq(plait_robust_create(&r, &cfg), 0);
    for (int i = 0; i < 4; i++) ck_assert_int_eq(plait_robust_add(r, u[i], 3), 0);
    ck_assert_int_eq(plait_robust_result(r, PLAIT_ROBUST_MEDIAN, out, 3), 0);
    ck_assert_float_eq(out[0], 2.5f);
    float nan_u[3] = {0, NAN, 0};
    plait_robust_destroy(r);
    ck_assert_int_eq(plait_robust_create(&r, &cfg), 0);
    ck_assert_int_eq(plait_robust_add(r, nan_u, 3), PLAIT_EINVAL);
    ck_assert_int_eq(plait_robust_add(r, u[0], 2), PLAIT_EMISMATCH);
    ck_assert_uint_eq(plait_robust_count(r), 0);
    plait_robust_destroy(r);
    /* memory is refused up front: 1000 updates of 10^6 floats = 4 GB > 1 GiB */
    cfg.dim = 1000000;
    cfg.max_updates = 1000;
    ck_assert_int_eq(plait_robust_create(&r, &cfg), PLAIT_ETOOBIG);
    cfg.dim = 3;
    cfg.trim_fraction = 0.5;
    ck_assert_int_eq(plait_robust_create(&r, &cfg), PLAIT_EINVAL);
}
END_TEST

/* ---- central DP ---------------------------------------------------------- */

START_TEST(test_dp_noise_std)
{
    plait_dp_config_t cfg;
    plait_dp_config_default(&cfg);
    cfg.clip = 2.0;
    cfg.noise_multiplier = 1.3;
    cfg.expected_weight = 50;
    plait_dp_t dp;
    ck_assert_int_eq(plait_dp_setup(&dp, &cfg), 0);
    ck_assert_double_eq(dp.z_update, 1.3);
    const size_t n = 200000;
    double *sum = calloc(n, sizeof(double));
    for (size_t i = 0; i < n; i++) sum[i] = 5.0; /* fixed denominator: mean 5/50 = 0.1 */
    float *out = malloc(n * sizeof(float));
    plait_rng_t r;
    plait_rng_seed_u64(&r, 31337, 0);
    plait_dp_round_info_t info;
    ck_assert_int_eq(plait_dp_finish_round(&dp, sum, n, 0, &r, out, &info), 0);
    double want_sd = 1.3 * 2.0 / 50.0, mean = 0, var = 0;
    ck_assert_double_eq_tol(info.noise_stddev, want_sd, 1e-15);
    for (size_t i = 0; i < n; i++) mean += out[i];
    mean /= (double)n;
    for (size_t i = 0; i < n; i++) var += (out[i] - mean) * (out[i] - mean);
    var /= (double)(n - 1);
    ck_assert_double_le(fabs(mean - 0.1), 5 * want_sd / sqrt((double)n));
    ck_assert_double_le(fabs(sqrt(var) / want_sd - 1), STD_REL_TOL);
    ck_assert_double_gt(fabs(sqrt(var) / (want_sd * 1.05) - 1), STD_REL_TOL); /* a 5% error would show */
    ck_assert_double_eq(dp.clip, 2.0); /* not adaptive: C fixed */
    /* Replay: the same seed gives the same noised round (the simulator relies on it). */
    float *again = malloc(n * sizeof(float));
    plait_dp_t dp2;
    ck_assert_int_eq(plait_dp_setup(&dp2, &cfg), 0);
    plait_rng_seed_u64(&r, 31337, 0);
    ck_assert_int_eq(plait_dp_finish_round(&dp2, sum, n, 0, &r, again, NULL), 0);
    ck_assert_int_eq(memcmp(out, again, n * sizeof(float)), 0);
    free(again);
    sum[3] = NAN;
    ck_assert_int_eq(plait_dp_finish_round(&dp, sum, n, 0, &r, out, NULL), PLAIT_EINVAL);
    free(sum);
    free(out);
    plait_rng_wipe(&r);
}
END_TEST

START_TEST(test_dp_config)
{
    plait_dp_config_t cfg;
    plait_dp_config_default(&cfg);
    plait_dp_t dp;
    ck_assert_int_eq(plait_dp_setup(&dp, &cfg), PLAIT_EINVAL); /* expected_weight unset */
    cfg.expected_weight = 100;
    cfg.adaptive = 1;
    ck_assert_int_eq(plait_dp_setup(&dp, &cfg), 0);
    /* σ_b = 100/20 = 5; z_Δ = (1 - 1/100)^-1/2; the pair costs exactly z = 1 */
    ck_assert_double_eq_tol(dp.sigma_b, 5.0, 1e-15);
    ck_assert_double_eq_tol(dp.z_update, 1.0 / sqrt(1.0 - 0.01), 1e-15);
    double z = pow(pow(dp.z_update, -2) + pow(2 * dp.sigma_b, -2), -0.5);
    ck_assert_double_eq_tol(z, 1.0, 1e-15);
    cfg.count_stddev = 0.4; /* 2σ_b = 0.8 <= z = 1: impossible */
    ck_assert_int_eq(plait_dp_setup(&dp, &cfg), PLAIT_EINVAL);
    ck_assert_ptr_nonnull(strstr(plait_errmsg(), "count_stddev"));
    cfg.count_stddev = 0;
    cfg.target_quantile = 1.0;
    ck_assert_int_eq(plait_dp_setup(&dp, &cfg), PLAIT_EINVAL);
    cfg.target_quantile = 0.5;
    cfg.noise_multiplier = -1;
    ck_assert_int_eq(plait_dp_setup(&dp, &cfg), PLAIT_EINVAL);
    cfg.noise_multiplier = 1;
    cfg.clip = 0;
    ck_assert_int_eq(plait_dp_setup(&dp, &cfg), PLAIT_EINVAL);
}
END_TEST

static int cmp_d(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Adaptive clipping converges to the target quantile of the update norms
 * (log-normal synthetic norms; the quantile is known in closed form, and
 * checked empirically too). */
START_TEST(test_adaptive_clipping_converges)
{
    const double gammas[2] = {0.5, 0.8};
    const size_t m = 500, rounds = 400, tail = 100;
    plait_rng_t r;
    plait_rng_seed_u64(&r, 4242, 0);
    for (int g = 0; g < 2; g++) {
        plait_dp_config_t cfg;
        plait_dp_config_default(&cfg);
        cfg.adaptive = 1;
        cfg.clip = 0.05; /* start far below */
        cfg.expected_weight = (double)m;
        cfg.target_quantile = gammas[g];
        plait_dp_t dp;
        ck_assert_int_eq(plait_dp_setup(&dp, &cfg), 0);
        double zero = 0, avg_tail = 0, *norms = malloc(m * rounds * sizeof(double));
        float out;
        for (size_t t = 0; t < rounds; t++) {
            double unclipped = 0;
            for (size_t i = 0; i < m; i++) {
                double nrm = exp(0.5 * plait_rng_normal(&r)); /* log-normal(0, 0.5) */
                norms[t * m + i] = nrm;
                unclipped += nrm <= dp.clip;
            }
            ck_assert_int_eq(plait_dp_finish_round(&dp, &zero, 1, unclipped, &r, &out, NULL), 0);
            if (t >= rounds - tail) avg_tail += dp.clip / (double)tail;
        }
        qsort(norms, m * rounds, sizeof(double), cmp_d);
        double emp = norms[(size_t)(gammas[g] * (double)(m * rounds))];
        double exact = exp(0.5 * (g == 0 ? 0.0 : 0.8416212335729143)); /* Φ^-1(0.8) */
        ck_assert_double_le(fabs(emp / exact - 1), 0.01);
        ck_assert_msg(fabs(avg_tail / exact - 1) <= 0.05, "gamma %g: clip %g, quantile %g", gammas[g], avg_tail, exact);
        free(norms);
    }
}
END_TEST

/* ---- one whole round on real LoRA arenas ----------------------------------
 * FFA-LoRA: devices train only B (the span after n_a), upload
 * quantize(w·clip(ΔB)) and their weight word, masked; the aggregator sums
 * words mod 2^32, decodes, averages, applies FedAvg (lr 1), and the global B
 * becomes the weighted average of the devices' B within quantization error,
 * while A is untouched. A DP round then adds noise of the documented std and
 * the accountant charges it. */
START_TEST(test_round_end_to_end)
{
    plait_model_config_t mc = {.dim = 16, .hidden_dim = 32, .n_layers = 2, .n_heads = 2, .n_kv_heads = 2,
                               .vocab_size = 32, .seq_len = 16, .head_size = 8, .kv_dim = 16};
    plait_lora_config_t lc;
    plait_lora_config_default(&lc);
    plait_lora_t global, local;
    plait_lora_init(&global);
    plait_lora_init(&local);
    ck_assert_int_eq(plait_lora_setup(&global, &mc, &lc), 0);
    ck_assert_int_eq(plait_lora_setup(&local, &mc, &lc), 0);
    plait_lora_init_weights(&global, 777);
    size_t off, P;
    ck_assert_int_eq(plait_update_span(&global, PLAIT_LORA_MODE_FFA, &off, &P), 0);
    ck_assert_uint_eq(off, global.n_a);
    ck_assert_ptr_eq(global.params + off, global.B[plait_lora_slot(0, PLAIT_WQ)]);

    const size_t K = 40;
    const double S = 0.5;
    plait_quant_config_t qc = {.bits = 20, .range = S};
    ck_assert_int_eq(plait_quant_check_cohort(&qc, K), 0);
    plait_rng_t rng;
    plait_rng_seed_u64(&rng, 99, 0);
    float *upd = malloc(P * sizeof(float));
    uint32_t *words = malloc((P + 1) * sizeof(uint32_t)), *acc = calloc(P + 1, sizeof(uint32_t));
    uint32_t *masks = calloc(P + 1, sizeof(uint32_t));
    double *expect = calloc(P, sizeof(double)), wtot = 0;
    float *A_before = malloc(global.n_a * sizeof(float));
    memcpy(A_before, global.params, global.n_a * sizeof(float));
    for (size_t c = 0; c < K; c++) {
        memcpy(local.params, global.params, global.n_params * sizeof(float));
        for (size_t i = 0; i < P; i++) local.params[off + i] += (float)(0.05 * plait_rng_normal(&rng)); /* "training" */
        ck_assert_int_eq(plait_update_diff(upd, local.params + off, global.params + off, P), 0);
        ck_assert_int_eq(plait_update_clip_l2(upd, P, S, NULL), 0);
        double examples = 10 + (double)(plait_rng_u32(&rng) % 2000), w = fmin(examples, 1000) / 1000;
        for (size_t i = 0; i < P; i++) {
            upd[i] = (float)(w * upd[i]);
            expect[i] += upd[i];
        }
        wtot += w;
        ck_assert_int_eq(plait_quant_encode(&qc, upd, P, &rng, words), 0);
        ck_assert_int_eq(plait_quant_encode_weight(&qc, w, &rng, &words[P]), 0);
        for (size_t i = 0; i <= P; i++) {
            uint32_t m = c + 1 < K ? plait_rng_u32(&rng) : 0u - masks[i];
            masks[i] += m;
            words[i] += m;
        }
        plait_update_add_u32(acc, words, P + 1);
    }
    double *sum = malloc(P * sizeof(double)), wsum;
    ck_assert_int_eq(plait_agg_decode_secure_sum(&qc, acc, P + 1, K, sum, &wsum), 0);
    plait_fedavg_config_t fc;
    plait_fedavg_config_default(&fc);
    fc.dim = P;
    plait_fedavg_t *fa;
    ck_assert_int_eq(plait_fedavg_create(&fa, &fc), 0);
    ck_assert_int_eq(plait_fedavg_add_sum(fa, sum, P, wsum, K), 0);
    float *avg = malloc(P * sizeof(float)), *B0 = malloc(P * sizeof(float));
    ck_assert_int_eq(plait_fedavg_result(fa, avg, P), 0);
    memcpy(B0, global.params + off, P * sizeof(float));
    plait_server_opt_config_t oc;
    plait_server_opt_config_default(&oc, PLAIT_OPT_FEDAVG);
    plait_server_opt_t *opt;
    ck_assert_int_eq(plait_server_opt_create(&opt, &oc, P), 0);
    ck_assert_int_eq(plait_server_opt_step(opt, global.params + off, avg, P), 0);
    double tol = 2.0 * (double)K * plait_quant_step(&qc) / wtot + 1e-5;
    double worst = 0;
    for (size_t i = 0; i < P; i++) worst = fmax(worst, fabs(global.params[off + i] - (B0[i] + expect[i] / wtot)));
    ck_assert_double_le(worst, tol);
    ck_assert_int_eq(memcmp(A_before, global.params, global.n_a * sizeof(float)), 0); /* A frozen */

    /* The same round under central DP (uniform weights, fixed denominator). */
    plait_dp_config_t dc;
    plait_dp_config_default(&dc);
    dc.clip = S;
    dc.noise_multiplier = 1.1;
    dc.expected_weight = (double)K;
    plait_dp_t dp;
    ck_assert_int_eq(plait_dp_setup(&dp, &dc), 0);
    plait_dp_round_info_t info;
    ck_assert_int_eq(plait_dp_finish_round(&dp, plait_fedavg_sum(fa), P, 0, &rng, avg, &info), 0);
    ck_assert_double_eq_tol(info.noise_stddev, 1.1 * S / (double)K, 1e-15);
    plait_accountant_t pa;
    ck_assert_int_eq(plait_accountant_init(&pa, NULL, 0), 0);
    ck_assert_int_eq(plait_accountant_compose(&pa, 0.01, dc.noise_multiplier, 1), 0);
    double eps;
    ck_assert_int_eq(plait_accountant_epsilon(&pa, 1e-6, PLAIT_EPS_IMPROVED, &eps, NULL), 0);
    ck_assert(eps > 0 && isfinite(eps));

    plait_server_opt_destroy(opt);
    plait_fedavg_destroy(fa);
    plait_lora_free(&global);
    plait_lora_free(&local);
    plait_rng_wipe(&rng);
    free(upd);
    free(words);
    free(acc);
    free(masks);
    free(expect);
    free(A_before);
    free(sum);
    free(avg);
    free(B0);
}
END_TEST

Suite *agg_suite(void)
{
    Suite *s = suite_create("agg");
    TCase *tc = tcase_create("fedavg");
    tcase_set_timeout(tc, 300); /* shared CI machines and sanitizer builds are slow */
    tcase_add_test(tc, test_fedavg_vs_naive);
    tcase_add_test(tc, test_fedavg_rejects);
    tcase_add_test(tc, test_fedavg_fixed_denominator_uniform);
    tcase_add_test(tc, test_secure_path);
    tcase_add_test(tc, test_quant_sum_blockwise);
    suite_add_tcase(s, tc);
    tc = tcase_create("optimizers");
    tcase_set_timeout(tc, 300); /* shared CI machines and sanitizer builds are slow */
    tcase_add_test(tc, test_server_opt_hand);
    tcase_add_test(tc, test_robust);
    suite_add_tcase(s, tc);
    tc = tcase_create("dp");
    tcase_set_timeout(tc, 300); /* shared CI machines and sanitizer builds are slow */
    tcase_add_test(tc, test_dp_noise_std);
    tcase_add_test(tc, test_dp_config);
    tcase_add_test(tc, test_adaptive_clipping_converges);
    suite_add_tcase(s, tc);
    tc = tcase_create("round");
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, test_round_end_to_end);
    suite_add_tcase(s, tc);
    return s;
}
