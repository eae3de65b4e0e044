/*
 * check_agg_cli.c: `plait-aggregator` dispatch and the `privacy` subcommand,
 * run in-process through plait__agg_cli_main() with temporary streams.
 */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "plait/privacy.h"

typedef struct {
    int rc;
    char out[4096];
    char err[4096];
} run_t;

static void slurp(FILE *f, char *buf, size_t len)
{
    rewind(f);
    size_t n = fread(buf, 1, len - 1, f);
    buf[n] = '\0';
    fclose(f);
}

static run_t run(const char *const *args)
{
    char *argv[32];
    int argc = 0;
    argv[argc++] = "plait-aggregator";
    for (; args[argc - 1] != NULL; argc++) argv[argc] = (char *)args[argc - 1];
    argv[argc] = NULL;
    FILE *o = tmpfile(), *e = tmpfile();
    ck_assert_ptr_nonnull(o);
    ck_assert_ptr_nonnull(e);
    run_t r;
    r.rc = plait__agg_cli_main(argc, argv, o, e);
    slurp(o, r.out, sizeof(r.out));
    slurp(e, r.err, sizeof(r.err));
    return r;
}

static int count_lines(const char *s)
{
    int n = 0;
    for (; *s; s++) n += *s == '\n';
    return n;
}

/* Known answer with the default order grid: tensorflow/privacy
 * compute_dp_sgd_privacy_test.py, example privacy with Poisson sampling
 * (q = 0.01, z = 0.7, 120 steps, delta 1e-5) -> 3.2392676 (also in
 * tests/vectors/rdp_known_answers.txt). */
START_TEST(test_privacy_json)
{
    const char *a[] = {"privacy", "--q", "0.01", "--noise-multiplier", "0.7", "--rounds", "120", "--delta", "1e-5", "--json", NULL};
    run_t r = run(a);
    ck_assert_int_eq(r.rc, 0);
    ck_assert_str_eq(r.err, "");
    ck_assert_int_eq(count_lines(r.out), 1);
    double eps, order, delta;
    ck_assert_int_eq(sscanf(r.out, "{\"epsilon\": %lf, \"order\": %lf, \"delta\": %lf}", &eps, &order, &delta), 3);
    ck_assert_double_eq_tol(eps, 3.2392676, 5e-8);
    ck_assert_double_eq(delta, 1e-5);
    /* the same numbers as the C API */
    plait_accountant_t acc;
    double e2, o2;
    ck_assert_int_eq(plait_accountant_init(&acc, NULL, 0), 0);
    ck_assert_int_eq(plait_accountant_compose(&acc, 0.01, 0.7, 120), 0);
    ck_assert_int_eq(plait_accountant_epsilon(&acc, 1e-5, PLAIT_EPS_IMPROVED, &e2, &o2), 0);
    ck_assert_double_eq(eps, e2);
    ck_assert_double_eq(order, o2);
}
END_TEST

START_TEST(test_privacy_text_and_classic)
{
    const char *a[] = {"privacy", "--q=0.1", "--noise-multiplier=2", "--rounds=10", "--delta=1e-5", NULL};
    run_t r = run(a);
    ck_assert_int_eq(r.rc, 0);
    ck_assert_ptr_nonnull(strstr(r.out, "epsilon: "));
    ck_assert_ptr_nonnull(strstr(r.out, "order: "));
    double e_impr, e_cl;
    ck_assert_int_eq(sscanf(strstr(r.out, "epsilon: "), "epsilon: %lf", &e_impr), 1);
    const char *b[] = {"privacy", "--q", "0.1", "--noise-multiplier", "2", "--rounds", "10", "--delta", "1e-5", "--classic", NULL};
    r = run(b);
    ck_assert_int_eq(r.rc, 0);
    ck_assert_int_eq(sscanf(strstr(r.out, "epsilon: "), "epsilon: %lf", &e_cl), 1);
    ck_assert_double_gt(e_cl, e_impr);
}
END_TEST

static void expect_usage_error(const char *const *a, const char *needle)
{
    run_t r = run(a);
    ck_assert_int_eq(r.rc, 2);
    ck_assert_str_eq(r.out, "");
    ck_assert_int_eq(count_lines(r.err), 1);
    ck_assert_msg(strstr(r.err, needle) != NULL, "'%s' does not name '%s'", r.err, needle);
}

START_TEST(test_privacy_bad_flags)
{
    const char *missing_delta[] = {"privacy", "--q", "0.1", "--noise-multiplier", "2", "--rounds", "10", NULL};
    expect_usage_error(missing_delta, "--delta");
    const char *missing_q[] = {"privacy", "--noise-multiplier", "2", "--rounds", "10", "--delta", "1e-5", NULL};
    expect_usage_error(missing_q, "--q");
    const char *bad_q[] = {"privacy", "--q", "abc", NULL};
    expect_usage_error(bad_q, "--q");
    const char *q_big[] = {"privacy", "--q", "1.5", "--noise-multiplier", "2", "--rounds", "10", "--delta", "1e-5", NULL};
    expect_usage_error(q_big, "--q");
    const char *q_zero[] = {"privacy", "--q", "0", NULL};
    expect_usage_error(q_zero, "--q");
    const char *q_nan[] = {"privacy", "--q", "nan", NULL};
    expect_usage_error(q_nan, "--q");
    const char *z_neg[] = {"privacy", "--noise-multiplier", "-1", NULL};
    expect_usage_error(z_neg, "--noise-multiplier");
    const char *z_inf[] = {"privacy", "--noise-multiplier", "inf", NULL};
    expect_usage_error(z_inf, "--noise-multiplier");
    const char *r_frac[] = {"privacy", "--rounds", "2.5", NULL};
    expect_usage_error(r_frac, "--rounds");
    const char *r_neg[] = {"privacy", "--rounds", "-3", NULL};
    expect_usage_error(r_neg, "--rounds");
    const char *d_one[] = {"privacy", "--delta", "1", NULL};
    expect_usage_error(d_one, "--delta");
    const char *no_val[] = {"privacy", "--q", NULL};
    expect_usage_error(no_val, "--q");
    const char *unknown[] = {"privacy", "--sigma", "1", NULL};
    expect_usage_error(unknown, "--sigma");
    const char *twice[] = {"privacy", "--q", "0.1", "--q", "0.2", NULL};
    expect_usage_error(twice, "--q");
    const char *sw_val[] = {"privacy", "--json=1", NULL};
    expect_usage_error(sw_val, "--json");
}
END_TEST

START_TEST(test_dispatch)
{
    const char *none[] = {NULL};
    expect_usage_error(none, "missing command");
    const char *bogus[] = {"frobnicate", NULL};
    expect_usage_error(bogus, "frobnicate");
    const char *help[] = {"--help", NULL};
    run_t r = run(help);
    ck_assert_int_eq(r.rc, 0);
    ck_assert_ptr_nonnull(strstr(r.out, "privacy"));
    const char *phelp[] = {"privacy", "--help", NULL};
    r = run(phelp);
    ck_assert_int_eq(r.rc, 0);
    ck_assert_ptr_nonnull(strstr(r.out, "--noise-multiplier"));
    ck_assert_str_eq(r.err, "");
}
END_TEST

Suite *agg_cli_suite(void)
{
    Suite *s = suite_create("agg_cli");
    TCase *tc = tcase_create("privacy");
    tcase_set_timeout(tc, 300); /* shared CI machines and sanitizer builds are slow */
    tcase_add_test(tc, test_privacy_json);
    tcase_add_test(tc, test_privacy_text_and_classic);
    tcase_add_test(tc, test_privacy_bad_flags);
    tcase_add_test(tc, test_dispatch);
    suite_add_tcase(s, tc);
    return s;
}
