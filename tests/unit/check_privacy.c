/*
 * check_privacy.c: the RDP accountant (lib/privacy.c) against published
 * known answers (tests/vectors/rdp_known_answers.txt), an independent
 * numerical integration, composition laws and bad input.
 */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "plait/privacy.h"
#include "testutil.h"

#define KAT_FILE PLAIT_TEST_SOURCE_DIR "/vectors/rdp_known_answers.txt"
#define QUAD_REL_TOL 1e-6 /* accountant vs. numerical integration of A_alpha */
#define FRAC_REL_TOL 0.05 /* fractional orders: an upper bound at most 5% high (see below) */

typedef struct {
    double *v;
    size_t n, cap;
} vec_t;

static void vpush(vec_t *v, double x)
{
    if (v->n == v->cap) {
        v->cap = v->cap ? 2 * v->cap : 64;
        v->v = realloc(v->v, v->cap * sizeof(double));
        ck_assert_ptr_nonnull(v->v);
    }
    v->v[v->n++] = x;
}

static void parse_grid(const char *spec, vec_t *g)
{
    char *s = strdup(spec), *save = NULL;
    for (char *part = strtok_r(s, "+", &save); part; part = strtok_r(NULL, "+", &save)) {
        if (strcmp(part, "default") == 0) {
            double o[PLAIT_RDP_MAX_ORDERS];
            size_t n = plait_rdp_default_orders(o, PLAIT_RDP_MAX_ORDERS);
            for (size_t i = 0; i < n; i++) vpush(g, o[i]);
        } else if (strncmp(part, "list:", 5) == 0) {
            char *save2 = NULL;
            for (char *t = strtok_r(part + 5, ",", &save2); t; t = strtok_r(NULL, ",", &save2)) vpush(g, strtod(t, NULL));
        } else if (strncmp(part, "scaled:", 7) == 0) {
            long i0, i1;
            double sc;
            ck_assert_int_eq(sscanf(part + 7, "%ld:%ld:%lf", &i0, &i1, &sc), 3);
            for (long i = i0; i < i1; i++) vpush(g, sc * (double)i); /* as Python's 0.001 * i */
        } else {
            ck_abort_msg("bad grid %s", part);
        }
    }
    free(s);
}

/* Total RDP over grid g of the segments in toks[0..nt). */
static void total_rdp(const vec_t *g, char **toks, int nt, double *out)
{
    double *tmp = malloc(g->n * sizeof(double));
    memset(out, 0, g->n * sizeof(double));
    for (int k = 0; k < nt; k++) {
        if (strncmp(toks[k], "const:", 6) == 0) {
            double r = strtod(toks[k] + 6, NULL);
            for (size_t i = 0; i < g->n; i++) out[i] += r;
            continue;
        }
        double q, z;
        unsigned long long steps;
        ck_assert_int_eq(sscanf(toks[k], "%lf:%lf:%llu", &q, &z, &steps), 3);
        ck_assert_int_eq(plait_rdp_subsampled_gaussian(q, z, g->v, g->n, tmp), 0);
        for (size_t i = 0; i < g->n; i++) out[i] += (double)steps * tmp[i];
        /* the accountant composes to the same numbers when the grid fits */
    }
    free(tmp);
}

static void check_close(double got, double want, const char *kind, double tol, int line)
{
    if (strcmp(kind, "le") == 0) {
        ck_assert_msg(got <= want, "line %d: got %.17g, want at most %.17g", line, got, want);
        return;
    }
    double err = fabs(got - want);
    double lim = strcmp(kind, "rel") == 0 ? tol * fabs(want) : tol;
    ck_assert_msg(err <= lim, "line %d: got %.17g want %.17g (%s tol %g)", line, got, want, kind, tol);
}

START_TEST(test_known_answers)
{
    FILE *f = fopen(KAT_FILE, "r");
    ck_assert_msg(f != NULL, "cannot open %s", KAT_FILE);
    char line[4096];
    int lineno = 0, checked = 0;
    while (fgets(line, sizeof(line), f)) {
        lineno++;
        char *toks[32];
        int nt = 0;
        char *save = NULL;
        for (char *t = strtok_r(line, " \t\r\n", &save); t && nt < 32; t = strtok_r(NULL, " \t\r\n", &save)) toks[nt++] = t;
        if (nt == 0 || toks[0][0] == '#') continue;
        vec_t g = {0};
        if (strcmp(toks[0], "rdp") == 0) {
            ck_assert_int_ge(nt, 6);
            vpush(&g, strtod(toks[1], NULL));
            double r;
            total_rdp(&g, toks + 5, nt - 5, &r);
            check_close(r, strtod(toks[2], NULL), toks[3], strtod(toks[4], NULL), lineno);
            /* same through the accountant */
            plait_accountant_t acc;
            ck_assert_int_eq(plait_accountant_init(&acc, g.v, 1), 0);
            for (int k = 5; k < nt; k++) {
                double q, z;
                unsigned long long steps;
                ck_assert_int_eq(sscanf(toks[k], "%lf:%lf:%llu", &q, &z, &steps), 3);
                ck_assert_int_eq(plait_accountant_compose(&acc, q, z, steps), 0);
            }
            check_close(acc.rdp[0], strtod(toks[2], NULL), toks[3], strtod(toks[4], NULL), lineno);
        } else if (strcmp(toks[0], "eps") == 0) {
            ck_assert_int_ge(nt, 9);
            plait_eps_method_t m = strcmp(toks[1], "classic") == 0 ? PLAIT_EPS_CLASSIC : PLAIT_EPS_IMPROVED;
            parse_grid(toks[3], &g);
            double *r = malloc(g.n * sizeof(double)), eps, order;
            total_rdp(&g, toks + 8, nt - 8, r);
            ck_assert_int_eq(plait_rdp_to_epsilon(g.v, r, g.n, strtod(toks[2], NULL), m, &eps, &order), 0);
            check_close(eps, strtod(toks[4], NULL), toks[6], strtod(toks[7], NULL), lineno);
            if (strcmp(toks[5], "-") != 0)
                ck_assert_msg(order == strtod(toks[5], NULL), "line %d: order %g want %s", lineno, order, toks[5]);
            free(r);
        } else if (strcmp(toks[0], "delta") == 0) {
            ck_assert_int_ge(nt, 8);
            parse_grid(toks[2], &g);
            double *r = malloc(g.n * sizeof(double)), delta, order;
            total_rdp(&g, toks + 7, nt - 7, r);
            ck_assert_int_eq(plait_rdp_to_delta(g.v, r, g.n, strtod(toks[1], NULL), &delta, &order), 0);
            check_close(delta, strtod(toks[3], NULL), toks[5], strtod(toks[6], NULL), lineno);
            if (strcmp(toks[4], "-") != 0) ck_assert(order == strtod(toks[4], NULL));
            free(r);
        } else {
            ck_abort_msg("line %d: unknown record %s", lineno, toks[0]);
        }
        free(g.v);
        checked++;
    }
    fclose(f);
    ck_assert_int_ge(checked, 20);
}
END_TEST

/* A_alpha = integral of mu0(x) ((1-q) + q exp((2x-1)/(2 s^2)))^alpha dx by
 * composite Simpson, in log space around the peak; independent of the
 * series used by the library. */
static double log_a_quad(double q, double s, double alpha)
{
    const double lo = -30.0 * s, hi = alpha + 30.0 * s;
    const int N = 400000;
    const double h = (hi - lo) / N;
    /* find the max exponent to scale */
    double mx = -INFINITY;
    for (int k = 0; k <= N; k += 100) {
        double x = lo + k * h;
        double e = -x * x / (2 * s * s) + alpha * log((1 - q) + q * exp((2 * x - 1) / (2 * s * s)));
        if (e > mx) mx = e;
    }
    double sum = 0;
    for (int k = 0; k <= N; k++) {
        double x = lo + k * h;
        double e = -x * x / (2 * s * s) + alpha * log((1 - q) + q * exp((2 * x - 1) / (2 * s * s))) - mx;
        double w = (k == 0 || k == N) ? 1 : (k % 2 ? 4 : 2);
        sum += w * exp(e);
    }
    return log(sum * h / 3.0) + mx - 0.5 * log(2 * M_PI * s * s);
}

START_TEST(test_against_quadrature)
{
    static const double cases[][3] = {
        {0.1, 2.0, 5.0}, {0.1, 2.0, 5.5}, {0.01, 1.0, 1.5}, {0.05, 0.8, 3.3}, {0.3, 3.0, 20.5}, {0.001, 1.2, 63.0},
    };
    for (size_t c = 0; c < sizeof(cases) / sizeof(cases[0]); c++) {
        double q = cases[c][0], s = cases[c][1], a = cases[c][2], r;
        ck_assert_int_eq(plait_rdp_subsampled_gaussian(q, s, &a, 1, &r), 0);
        double want = log_a_quad(q, s, a) / (a - 1);
        if (floor(a) == a) {
            ck_assert_msg(fabs(r - want) <= QUAD_REL_TOL * fabs(want), "q=%g s=%g a=%g: %.12g vs %.12g", q, s, a, r,
                          want);
        } else {
            /* Fractional orders: dp_accounting (and so plait) sums |binomial|
             * terms, an upper bound on A_alpha (the old tensorflow/privacy
             * series subtracted the negative terms and was exact). So the
             * result is never below the truth, and close to it: 1.6e-5 high at
             * q=0.1, z=2, a=5.5; 4% high at q=0.01, z=1, a=1.5, where RDP is
             * ~1e-4 and such orders never decide epsilon. */
            ck_assert_msg(r >= want * (1.0 - QUAD_REL_TOL), "q=%g s=%g a=%g: %.12g below %.12g", q, s, a, r, want);
            ck_assert_msg(r <= want * (1.0 + FRAC_REL_TOL), "q=%g s=%g a=%g: %.12g vs %.12g", q, s, a, r, want);
        }
    }
}
END_TEST

START_TEST(test_default_orders)
{
    double o[PLAIT_RDP_MAX_ORDERS];
    size_t n = plait_rdp_default_orders(o, PLAIT_RDP_MAX_ORDERS);
    ck_assert_uint_eq(n, 156);
    ck_assert_double_eq(o[0], 1.1);
    ck_assert_double_eq(o[98], 10.9);
    ck_assert_double_eq(o[99], 11.0);
    ck_assert_double_eq(o[151], 63.0);
    ck_assert_double_eq(o[152], 128.0);
    ck_assert_double_eq(o[155], 1024.0);
    plait_accountant_t acc;
    ck_assert_int_eq(plait_accountant_init(&acc, NULL, 0), 0);
    ck_assert_uint_eq(acc.n_orders, 156);
}
END_TEST

START_TEST(test_composition_laws)
{
    plait_accountant_t a, b, c;
    ck_assert_int_eq(plait_accountant_init(&a, NULL, 0), 0);
    ck_assert_int_eq(plait_accountant_init(&b, NULL, 0), 0);
    ck_assert_int_eq(plait_accountant_compose(&a, 0.02, 1.1, 30), 0);
    ck_assert_int_eq(plait_accountant_compose(&b, 0.02, 1.1, 10), 0);
    ck_assert_int_eq(plait_accountant_compose(&b, 0.02, 1.1, 20), 0);
    for (size_t i = 0; i < a.n_orders; i++) ck_assert_double_eq_tol(a.rdp[i], b.rdp[i], 1e-12 * a.rdp[i]);
    ck_assert_uint_eq(b.steps, 30);
    double e1, e2, e3, o;
    ck_assert_int_eq(plait_accountant_epsilon(&a, 1e-6, PLAIT_EPS_IMPROVED, &e1, &o), 0);
    ck_assert_int_eq(plait_accountant_compose(&a, 0.02, 1.1, 30), 0);
    ck_assert_int_eq(plait_accountant_epsilon(&a, 1e-6, PLAIT_EPS_IMPROVED, &e2, &o), 0);
    ck_assert_double_gt(e2, e1); /* more rounds, more epsilon */
    ck_assert_int_eq(plait_accountant_init(&c, NULL, 0), 0);
    ck_assert_int_eq(plait_accountant_compose(&c, 0.02, 2.0, 60), 0);
    ck_assert_int_eq(plait_accountant_epsilon(&c, 1e-6, PLAIT_EPS_IMPROVED, &e3, &o), 0);
    ck_assert_double_lt(e3, e2); /* more noise, less epsilon */
    double ec;
    ck_assert_int_eq(plait_accountant_epsilon(&c, 1e-6, PLAIT_EPS_CLASSIC, &ec, &o), 0);
    ck_assert_double_ge(ec, e3); /* the improved conversion is never worse */
    /* Classic conversion by hand: constant RDP 1.1 over orders 2..32, delta
     * 1e-5: the largest order wins, eps = 1.1 - log(1e-5) / 31. */
    double ords[31], rd[31];
    for (int i = 0; i < 31; i++) {
        ords[i] = 2 + i;
        rd[i] = 1.1;
    }
    ck_assert_int_eq(plait_rdp_to_epsilon(ords, rd, 31, 1e-5, PLAIT_EPS_CLASSIC, &ec, &o), 0);
    ck_assert_double_eq_tol(ec, 1.1 - log(1e-5) / 31.0, 1e-14);
    ck_assert_double_eq(o, 32.0);
    /* q = 0 costs nothing */
    ck_assert_int_eq(plait_accountant_init(&c, NULL, 0), 0);
    ck_assert_int_eq(plait_accountant_compose(&c, 0.0, 1.0, 100), 0);
    ck_assert_int_eq(plait_accountant_epsilon(&c, 1e-6, PLAIT_EPS_IMPROVED, &e3, &o), 0);
    ck_assert_double_eq(e3, 0.0);
    /* z = 0 is no privacy */
    ck_assert_int_eq(plait_accountant_compose(&c, 0.5, 0.0, 1), 0);
    ck_assert_int_eq(plait_accountant_epsilon(&c, 1e-6, PLAIT_EPS_IMPROVED, &e3, &o), 0);
    ck_assert(isinf(e3));
    /* a noise multiplier so small that z^2 underflows is no privacy, not NaN */
    ck_assert_int_eq(plait_accountant_init(&c, NULL, 0), 0);
    ck_assert_int_eq(plait_accountant_compose(&c, 0.5, 1e-300, 1), 0);
    ck_assert_int_eq(plait_accountant_epsilon(&c, 1e-6, PLAIT_EPS_IMPROVED, &e3, &o), 0);
    ck_assert(isinf(e3));
    /* and a huge one costs (almost) nothing */
    ck_assert_int_eq(plait_accountant_init(&c, NULL, 0), 0);
    ck_assert_int_eq(plait_accountant_compose(&c, 0.5, 1e300, 1000), 0);
    ck_assert_int_eq(plait_accountant_epsilon(&c, 1e-6, PLAIT_EPS_IMPROVED, &e3, &o), 0);
    ck_assert(e3 >= 0 && e3 < 1e-3);
    /* epsilon <-> delta consistency (dp_accounting test_epsilon_delta_consistency) */
    ck_assert_int_eq(plait_accountant_init(&c, NULL, 0), 0);
    ck_assert_int_eq(plait_accountant_compose(&c, 0.1, 1.0, 1), 0);
    double deltas[] = {0.1, 1e-3, 1e-5, 1e-9, 1e-12};
    for (size_t i = 0; i < 5; i++) {
        double eps, d2;
        ck_assert_int_eq(plait_accountant_epsilon(&c, deltas[i], PLAIT_EPS_IMPROVED, &eps, &o), 0);
        ck_assert_int_eq(plait_accountant_delta(&c, eps, &d2, &o), 0);
        if (eps > 0) ck_assert_double_eq_tol(d2, deltas[i], 1e-6 * deltas[i]);
        else ck_assert_double_le(d2, deltas[i]);
    }
}
END_TEST

START_TEST(test_bad_input)
{
    double o = 2.0, r, e;
    ck_assert_int_eq(plait_rdp_subsampled_gaussian(-0.1, 1.0, &o, 1, &r), PLAIT_EINVAL);
    ck_assert_ptr_nonnull(strstr(plait_errmsg(), "sampling rate"));
    ck_assert_int_eq(plait_rdp_subsampled_gaussian(1.5, 1.0, &o, 1, &r), PLAIT_EINVAL);
    ck_assert_int_eq(plait_rdp_subsampled_gaussian(NAN, 1.0, &o, 1, &r), PLAIT_EINVAL);
    ck_assert_int_eq(plait_rdp_subsampled_gaussian(0.1, -1.0, &o, 1, &r), PLAIT_EINVAL);
    ck_assert_int_eq(plait_rdp_subsampled_gaussian(0.1, INFINITY, &o, 1, &r), PLAIT_EINVAL);
    ck_assert_int_eq(plait_rdp_subsampled_gaussian(0.1, NAN, &o, 1, &r), PLAIT_EINVAL);
    double bad_o = 0.5;
    ck_assert_int_eq(plait_rdp_subsampled_gaussian(0.1, 1.0, &bad_o, 1, &r), PLAIT_EINVAL);
    bad_o = 1e9;
    ck_assert_int_eq(plait_rdp_subsampled_gaussian(0.1, 1.0, &bad_o, 1, &r), PLAIT_EINVAL);
    ck_assert_int_eq(plait_rdp_subsampled_gaussian(0.1, 1.0, &o, 0, &r), PLAIT_EINVAL);
    r = 0.1;
    ck_assert_int_eq(plait_rdp_to_epsilon(&o, &r, 1, 0.0, PLAIT_EPS_IMPROVED, &e, NULL), PLAIT_EINVAL);
    ck_assert_int_eq(plait_rdp_to_epsilon(&o, &r, 1, 1.0, PLAIT_EPS_IMPROVED, &e, NULL), PLAIT_EINVAL);
    ck_assert_int_eq(plait_rdp_to_epsilon(&o, &r, 1, 1e-5, (plait_eps_method_t)9, &e, NULL), PLAIT_EINVAL);
    r = NAN;
    ck_assert_int_eq(plait_rdp_to_epsilon(&o, &r, 1, 1e-5, PLAIT_EPS_IMPROVED, &e, NULL), PLAIT_EINVAL);
    ck_assert_int_eq(plait_rdp_to_delta(&o, &r, 1, -1.0, &e, NULL), PLAIT_EINVAL);
    plait_accountant_t acc;
    ck_assert_int_eq(plait_accountant_init(&acc, &o, 0), PLAIT_EINVAL);
    ck_assert_int_eq(plait_accountant_init(&acc, &o, PLAIT_RDP_MAX_ORDERS + 1), PLAIT_EINVAL);
    ck_assert_int_eq(plait_accountant_init(&acc, NULL, 0), 0);
    ck_assert_int_eq(plait_accountant_compose(&acc, 0.1, 1.0, 0), PLAIT_EINVAL);
    ck_assert_int_eq(plait_accountant_compose(&acc, 2.0, 1.0, 1), PLAIT_EINVAL);
    ck_assert_uint_eq(acc.steps, 0); /* unchanged on error */
    ck_assert_double_eq(acc.rdp[0], 0.0);
}
END_TEST

Suite *privacy_suite(void)
{
    Suite *s = suite_create("privacy");
    TCase *tc = tcase_create("rdp");
    tcase_set_timeout(tc, 300); /* shared CI machines and sanitizer builds are slow */
    tcase_add_test(tc, test_known_answers);
    tcase_add_test(tc, test_against_quadrature);
    tcase_add_test(tc, test_default_orders);
    tcase_add_test(tc, test_composition_laws);
    tcase_add_test(tc, test_bad_input);
    suite_add_tcase(s, tc);
    return s;
}
