/*
 * check_ddg.c: the exact discrete Gaussian sampler and the distributed
 * discrete Gaussian accountant. The sampler's empirical mean, variance and
 * (for a small sigma) point probabilities must match the exact distribution,
 * computed here by summing exp(-x^2 / 2 sigma^2), within 5 standard errors
 * (fixed seeds: the outcome is deterministic). The accountant is checked
 * against hand-computed values of KLS21 Proposition 14 and against the
 * continuous Gaussian it approaches for large noise.
 */
#include <check.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "plait/ddg.h"
#include "plait/privacy.h"

/* Exact mean (0), variance and P[X = k] of N_Z(0, s2). */
static double dg_var(double s2, double *p, int kmax)
{
    double z = 0, v = 0;
    int lim = (int)(40 * sqrt(s2)) + 40;
    for (int x = -lim; x <= lim; x++) {
        double w = exp(-(double)x * x / (2 * s2));
        z += w;
        v += w * x * x;
    }
    for (int k = -kmax; p && k <= kmax; k++) p[k + kmax] = exp(-(double)k * k / (2 * s2)) / z;
    return v / z;
}

static void check_moments(uint64_t num, uint64_t den, size_t N, uint64_t seed)
{
    plait_rng_t r;
    plait_rng_seed_u64(&r, seed, 0);
    double s2 = (double)num / (double)den, sum = 0, sq = 0, q4 = 0;
    enum { KM = 4 };
    size_t cnt[2 * KM + 1] = {0};
    for (size_t i = 0; i < N; i++) {
        int64_t x;
        ck_assert_int_eq(plait_ddg_sample(&r, num, den, &x), 0);
        double d = (double)x;
        sum += d;
        sq += d * d;
        q4 += d * d * d * d;
        if (x >= -KM && x <= KM) cnt[x + KM]++;
    }
    double p[2 * KM + 1];
    double var = dg_var(s2, p, KM);
    double mean = sum / (double)N, evar = sq / (double)N;
    /* mean: SE = sqrt(var / N); second moment: SE = sqrt((E x^4 - var^2) / N) */
    ck_assert_msg(fabs(mean) < 5 * sqrt(var / (double)N), "mean %g for var %g", mean, var);
    double se2 = sqrt((q4 / (double)N - evar * evar) / (double)N);
    ck_assert_msg(fabs(evar - var) < 5 * se2 + 1e-12, "E x^2 %g, exact %g (se %g)", evar, var, se2);
    for (int k = -KM; k <= KM; k++) {
        double e = p[k + KM] * (double)N, sd = sqrt(p[k + KM] * (1 - p[k + KM]) * (double)N);
        ck_assert_msg(fabs((double)cnt[k + KM] - e) <= 5 * sd + 1, "P[X=%d]: %zu of %zu, expected %g", k,
                      cnt[k + KM], N, e);
    }
    plait_rng_wipe(&r);
}

START_TEST(test_sampler_moments)
{
    check_moments(1, 4, 200000, 1);          /* sigma^2 = 1/4: mostly 0 */
    check_moments(9, 2, 200000, 2);          /* 4.5 */
    check_moments(100000, 7, 100000, 3);     /* 14285.7 */
    check_moments((uint64_t)1 << 40, 256, 50000, 4); /* 2^32: sigma = 65536 */
}
END_TEST

START_TEST(test_sampler_is_the_discrete_gaussian_not_rounding)
{
    /* Sanity that the test above can fail: rounded continuous Gaussian
     * samples at sigma^2 = 1/4 have P[X = 0] = 0.6827, the discrete
     * Gaussian 0.7866: they are told apart by the same check. */
    double p[3];
    dg_var(0.25, p, 1);
    ck_assert(fabs(p[1] - 0.786570) < 1e-5);
    ck_assert(fabs(p[1] - erf(0.5 / sqrt(2 * 0.25))) > 0.1);
}
END_TEST

START_TEST(test_add_noise_wraps)
{
    plait_rng_t a, b;
    plait_rng_seed_u64(&a, 9, 1);
    plait_rng_seed_u64(&b, 9, 1);
    uint32_t w[2000];
    for (size_t i = 0; i < 2000; i++) w[i] = (uint32_t)(i & 7);
    ck_assert_int_eq(plait_ddg_add_noise(&a, 900, 1, w, 2000, 12), 0);
    int neg = 0;
    for (size_t i = 0; i < 2000; i++) {
        int64_t z;
        ck_assert_int_eq(plait_ddg_sample(&b, 900, 1, &z), 0);
        int64_t want = ((int64_t)(i & 7) + z) % 4096;
        if (want < 0) want += 4096, neg++;
        ck_assert_uint_eq(w[i], (uint32_t)want);
    }
    ck_assert_int_gt(neg, 100); /* negative noise did wrap */
    ck_assert_int_eq(plait_ddg_add_noise(&a, 900, 1, w, 2000, 0), PLAIT_EINVAL);
    int64_t z;
    ck_assert_int_eq(plait_ddg_sample(&a, 0, 1, &z), PLAIT_EINVAL);
    ck_assert_int_eq(plait_ddg_sample(&a, PLAIT_DDG_NUM_MAX + 1, 1, &z), PLAIT_EINVAL);
    uint64_t num, den;
    ck_assert_int_eq(plait_ddg_variance(2.3, &num, &den), 0);
    ck_assert_uint_eq(den, 256);
    ck_assert_uint_eq(num, 589); /* ceil(2.3 * 256) = ceil(588.8) */
    ck_assert_int_eq(plait_ddg_variance(-1, &num, &den), PLAIT_EINVAL);
}
END_TEST

START_TEST(test_accountant_hand)
{
    /* n = 2, v = 1, D2 = 10, d = 100, alpha = 2:
     * tau = 10 exp(-2 pi^2 · 1/2) = 10 e^-pi^2 = 5.17231e-4;
     * s2^2 = 100 / 2 = 50, so term1 = 50 + 100 tau = 50.0517231;
     * term2 = 50 + 2 · 70.7107 · tau + 100 tau^2 = 50.0731744;
     * term3 = (7.0710678 + 10 tau)^2 = 50.0731744 (equal here). The minimum is term1. */
    double order = 2, rdp;
    ck_assert_int_eq(plait_ddg_rdp(10, 100, 1, 2, &order, 1, &rdp), 0);
    ck_assert(fabs(rdp - 50.0517231) < 1e-6);
    /* n = 1: a single discrete Gaussian, alpha D^2 / (2 v) exactly (tau = 0). */
    order = 8;
    ck_assert_int_eq(plait_ddg_rdp(3, 5, 2, 1, &order, 1, &rdp), 0);
    ck_assert(fabs(rdp - 8.0 * 9.0 / 4.0) < 1e-12);
    /* Rounding: D2 = c + sqrt(d). */
    ck_assert(fabs(plait_ddg_rounded_l2(100, 10000) - 200) < 1e-12);
    /* Large noise: tau vanishes and the bound is the Gaussian's alpha / (2 z^2),
     * z = sqrt(n v) / D2, which privacy.c computes for q = 1. */
    plait_accountant_t a, g;
    ck_assert_int_eq(plait_accountant_init(&a, NULL, 0), 0);
    ck_assert_int_eq(plait_accountant_init(&g, NULL, 0), 0);
    double v = 400, l2 = 1000;
    uint32_t n = 50;
    ck_assert_int_eq(plait_accountant_compose_ddg(&a, l2, 1000, v, n, 10), 0);
    ck_assert_int_eq(plait_accountant_compose(&g, 1.0, sqrt(n * v) / l2, 10), 0);
    for (size_t i = 0; i < a.n_orders; i++) ck_assert(fabs(a.rdp[i] - g.rdp[i]) <= 1e-9 * g.rdp[i]);
    double e1, e2;
    ck_assert_int_eq(plait_accountant_epsilon(&a, 1e-5, PLAIT_EPS_IMPROVED, &e1, NULL), 0);
    ck_assert_int_eq(plait_accountant_epsilon(&g, 1e-5, PLAIT_EPS_IMPROVED, &e2, NULL), 0);
    ck_assert(fabs(e1 - e2) < 1e-9 * e2);
    /* Small noise per device: tau is not negligible and the bound is worse. */
    ck_assert_int_eq(plait_accountant_init(&a, NULL, 0), 0);
    ck_assert_int_eq(plait_accountant_compose_ddg(&a, 30, 1000, 0.04, 500, 1), 0);
    ck_assert_int_eq(plait_accountant_init(&g, NULL, 0), 0);
    ck_assert_int_eq(plait_accountant_compose(&g, 1.0, sqrt(500 * 0.04) / 30, 1), 0);
    for (size_t i = 0; i < a.n_orders; i++) ck_assert(a.rdp[i] > g.rdp[i]);
    ck_assert_int_eq(plait_accountant_compose_ddg(&a, 30, 1000, 0.04, 0, 1), PLAIT_EINVAL);
    /* Wrap bound. */
    ck_assert(fabs(plait_ddg_wrap_bound(4, 25, 100) - 2 * exp(-10000.0 / 200)) < 1e-30);
}
END_TEST

Suite *ddg_suite(void)
{
    Suite *s = suite_create("ddg");
    TCase *tc = tcase_create("sampler");
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, test_sampler_moments);
    tcase_add_test(tc, test_sampler_is_the_discrete_gaussian_not_rounding);
    tcase_add_test(tc, test_add_noise_wraps);
    suite_add_tcase(s, tc);
    tc = tcase_create("accountant");
    tcase_add_test(tc, test_accountant_hand);
    suite_add_tcase(s, tc);
    return s;
}
