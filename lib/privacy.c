/*
 * privacy.c: RDP accountant for the Poisson-subsampled Gaussian mechanism.
 *
 * Mironov, Talwar, Zhang (2019) give A_a = E_{x~mu0}[(mu(x)/mu0(x))^a] with
 * mu0 = N(0, z^2), mu = (1-q) N(0, z^2) + q N(1, z^2); RDP at order a is
 * log(A_a) / (a - 1). Every sum here is taken in log space (log_add) so that
 * orders up to 1024 and tiny q neither overflow nor underflow; the binomial
 * coefficients come from lgamma, the Gaussian tails from a log-erfc that
 * stays accurate far into the tail. The structure (and the convergence rule
 * of the fractional series) mirrors dp_accounting's rdp_privacy_accountant.py
 * so that results agree with it to rounding.
 *
 * Invariants: an accountant's rdp[] is non-decreasing under composition
 * (each step adds a non-negative or +inf amount); orders never change after
 * init. Workload: a few hundred orders x up to ~1000 terms each, once per
 * round or per CLI call; microseconds to milliseconds.
 */
#include "plait/privacy.h"

#include <float.h>
#include <math.h>
#include <string.h>

#define LOG_A_FRAC_MAX_STEPS 1000

/* Thread-safe lgamma: glibc's lgamma() writes the global signgam. */
static double lgam(double x)
{
#if defined(__GLIBC__) || defined(_DEFAULT_SOURCE)
    int sign;
    return lgamma_r(x, &sign);
#else
    return lgamma(x);
#endif
}

/* log(exp(a) + exp(b)) */
static double log_add(double a, double b)
{
    double lo = a < b ? a : b, hi = a < b ? b : a;
    if (lo == -INFINITY) return hi;
    return log1p(exp(lo - hi)) + hi;
}

static double log_comb(double n, double k)
{
    return lgam(n + 1.0) - lgam(k + 1.0) - lgam(n - k + 1.0);
}

/* log(erfc(x)). erfc() keeps full relative precision until it underflows
 * (x > ~26.5); beyond x = 25 use the asymptotic (Laurent) series
 * erfc(x) ~ exp(-x^2 - 1/(2x^2) + 5/(8x^4) - 37/(24x^6) + 353/(64x^8)) / (x sqrt(pi)),
 * whose next term is below 1e-12 there. */
static double log_erfc(double x)
{
    if (x < 25.0) return log(erfc(x));
    double x2 = x * x, i2 = 1.0 / x2;
    return -0.5 * log(M_PI) - log(x) - x2 - 0.5 * i2 + 0.625 * i2 * i2 - 37.0 / 24.0 * i2 * i2 * i2 +
           353.0 / 64.0 * i2 * i2 * i2 * i2;
}

/* log(A_a) for integer a >= 2, 0 < q < 1. */
static double log_a_int(double q, double sigma, double alpha)
{
    double log_a = -INFINITY, logq = log(q), log1mq = log1p(-q), s2 = 2.0 * sigma * sigma;
    for (double i = 0.0; i <= alpha; i += 1.0) {
        double log_coef = log_comb(alpha, i) + i * logq + (alpha - i) * log1mq;
        log_a = log_add(log_a, log_coef + (i * i - i) / s2);
    }
    return log_a;
}

/* log(A_a) for fractional a > 1, 0 < q < 1 (MTZ 2019, section 3.3): the
 * integral is split at z0 where mu(x)/mu0(x) crosses 1 and each side is a
 * series whose terms eventually decrease. */
static double log_a_frac(double q, double sigma, double alpha)
{
    double log_a0 = -INFINITY, log_a1 = -INFINITY;
    double z0 = sigma * sigma * log(1.0 / q - 1.0) + 0.5;
    double logq = log(q), log1mq = log1p(-q), s2 = 2.0 * sigma * sigma, rs = sqrt(2.0) * sigma;
    double last_s0 = -INFINITY, last_s1 = -INFINITY;
    for (int k = 0; k < LOG_A_FRAC_MAX_STEPS; k++) {
        double i = (double)k, j = alpha - i;
        double log_coef = log_comb(alpha, i);
        double log_t0 = log_coef + i * logq + j * log1mq;
        double log_t1 = log_coef + j * logq + i * log1mq;
        double log_e0 = log(0.5) + log_erfc((i - z0) / rs);
        double log_e1 = log(0.5) + log_erfc((z0 - j) / rs);
        double log_s0 = log_t0 + (i * i - i) / s2 + log_e0;
        double log_s1 = log_t1 + (j * j - j) / s2 + log_e1;
        log_a0 = log_add(log_a0, log_s0);
        log_a1 = log_add(log_a1, log_s1);
        double total = log_add(log_a0, log_a1);
        if (log_s0 < last_s0 && log_s1 < last_s1 && fmax(log_s0, log_s1) < total - 30.0) return total;
        last_s0 = log_s0;
        last_s1 = log_s1;
    }
    return INFINITY; /* did not converge: exclude this order */
}

static double rdp_one(double q, double z, double alpha)
{
    if (q == 0.0) return 0.0;
    /* z = 0, or so small that 2z^2 underflows: no noise to speak of. */
    if (!(2.0 * z * z >= DBL_MIN)) return INFINITY;
    if (q == 1.0) return alpha / (2.0 * z * z);
    if (alpha == 1.0) return INFINITY; /* log A_1 = 0: the 0/0 limit is not computed here */
    double log_a = floor(alpha) == alpha ? log_a_int(q, z, alpha) : log_a_frac(q, z, alpha);
    double r = log_a / (alpha - 1.0);
    /* A numerical breakdown must never look like privacy: report +inf (the
     * order is then never chosen) rather than NaN or a negative value. */
    return isnan(r) ? INFINITY : r;
}

static int check_orders(const double *orders, size_t n)
{
    if (orders == NULL || n == 0) return plait_fail(PLAIT_EINVAL, "rdp: no orders");
    for (size_t i = 0; i < n; i++) {
        if (!(orders[i] >= 1.0 && orders[i] <= PLAIT_RDP_MAX_ORDER))
            return plait_fail(PLAIT_EINVAL, "rdp: order %zu is %g (want 1 <= order <= %g)", i, orders[i],
                              PLAIT_RDP_MAX_ORDER);
    }
    return 0;
}

static int check_qz(double q, double z)
{
    if (!(q >= 0.0 && q <= 1.0)) return plait_fail(PLAIT_EINVAL, "rdp: sampling rate q = %g outside [0, 1]", q);
    if (!(z >= 0.0) || !isfinite(z)) return plait_fail(PLAIT_EINVAL, "rdp: noise multiplier %g must be finite and >= 0", z);
    return 0;
}

size_t plait_rdp_default_orders(double *orders, size_t cap)
{
    size_t n = 0;
#define PUT(v)                                                                \
    do {                                                                      \
        if (orders != NULL && n < cap) orders[n] = (v);                       \
        n++;                                                                  \
    } while (0)
    for (int x = 1; x < 100; x++) PUT(1.0 + (double)x / 10.0);
    for (int x = 11; x < 64; x++) PUT((double)x);
    PUT(128.0);
    PUT(256.0);
    PUT(512.0);
    PUT(1024.0);
#undef PUT
    return n;
}

int plait_rdp_subsampled_gaussian(double q, double z, const double *orders, size_t n, double *rdp)
{
    int rc;
    if ((rc = check_qz(q, z)) != 0 || (rc = check_orders(orders, n)) != 0) return rc;
    if (rdp == NULL) return plait_fail(PLAIT_EINVAL, "rdp: NULL output");
    for (size_t i = 0; i < n; i++) rdp[i] = rdp_one(q, z, orders[i]);
    return 0;
}

static int check_rdp(const double *rdp, size_t n)
{
    if (rdp == NULL) return plait_fail(PLAIT_EINVAL, "rdp: NULL rdp values");
    for (size_t i = 0; i < n; i++)
        if (isnan(rdp[i])) return plait_fail(PLAIT_EINVAL, "rdp: value %zu is NaN", i);
    return 0;
}

int plait_rdp_to_epsilon(const double *orders, const double *rdp, size_t n, double delta, plait_eps_method_t method,
                         double *eps, double *order)
{
    int rc;
    if ((rc = check_orders(orders, n)) != 0 || (rc = check_rdp(rdp, n)) != 0) return rc;
    if (eps == NULL) return plait_fail(PLAIT_EINVAL, "rdp_to_epsilon: NULL output");
    if (!(delta > 0.0 && delta < 1.0)) return plait_fail(PLAIT_EINVAL, "rdp_to_epsilon: delta = %g outside (0, 1)", delta);
    if (method != PLAIT_EPS_IMPROVED && method != PLAIT_EPS_CLASSIC)
        return plait_fail(PLAIT_EINVAL, "rdp_to_epsilon: unknown method %d", (int)method);
    double best = INFINITY;
    size_t arg = 0;
    for (size_t i = 0; i < n; i++) {
        double a = orders[i], r = rdp[i], e;
        if (method == PLAIT_EPS_CLASSIC) {
            e = a > 1.0 ? r - log(delta) / (a - 1.0) : INFINITY;
        } else if (r < 0.0) {
            e = 0.0; /* negative RDP only arises from rounding in extreme cases */
        } else if (delta * delta + expm1(-r) > 0.0) {
            e = 0.0; /* KL bound: delta <= sqrt(1 - exp(-KL)) already holds */
        } else if (a > 1.01) {
            e = r + log1p(-1.0 / a) - log(delta * a) / (a - 1.0);
        } else {
            e = INFINITY; /* the bound is unstable as a -> 1 */
        }
        if (e < best) { /* first minimum wins, like numpy.argmin */
            best = e;
            arg = i;
        }
    }
    *eps = best > 0.0 ? best : 0.0;
    if (order) *order = orders[arg];
    return 0;
}

int plait_rdp_to_delta(const double *orders, const double *rdp, size_t n, double eps, double *delta, double *order)
{
    int rc;
    if ((rc = check_orders(orders, n)) != 0 || (rc = check_rdp(rdp, n)) != 0) return rc;
    if (delta == NULL) return plait_fail(PLAIT_EINVAL, "rdp_to_delta: NULL output");
    if (!(eps >= 0.0) || !isfinite(eps)) return plait_fail(PLAIT_EINVAL, "rdp_to_delta: epsilon = %g must be finite and >= 0", eps);
    double best = INFINITY;
    size_t arg = 0;
    for (size_t i = 0; i < n; i++) {
        double a = orders[i], r = rdp[i], ld;
        if (r <= 0.0) ld = -INFINITY;
        else ld = 0.5 * log1p(-exp(-r));
        if (a > 1.01) {
            double b = (a - 1.0) * (r - eps + log1p(-1.0 / a)) - log(a);
            if (b < ld) ld = b;
        }
        if (ld < best) {
            best = ld;
            arg = i;
        }
    }
    double d = exp(best);
    *delta = d < 1.0 ? d : 1.0;
    if (order) *order = orders[arg];
    return 0;
}

int plait_accountant_init(plait_accountant_t *acc, const double *orders, size_t n)
{
    if (acc == NULL) return plait_fail(PLAIT_EINVAL, "accountant: NULL");
    if (orders == NULL) {
        n = plait_rdp_default_orders(acc->orders, PLAIT_RDP_MAX_ORDERS);
    } else {
        if (n == 0 || n > PLAIT_RDP_MAX_ORDERS)
            return plait_fail(PLAIT_EINVAL, "accountant: %zu orders (want 1..%d)", n, PLAIT_RDP_MAX_ORDERS);
        int rc = check_orders(orders, n);
        if (rc != 0) return rc;
        memcpy(acc->orders, orders, n * sizeof(double));
    }
    acc->n_orders = n;
    memset(acc->rdp, 0, sizeof(acc->rdp));
    acc->steps = 0;
    return 0;
}

int plait_accountant_compose(plait_accountant_t *acc, double q, double z, uint64_t steps)
{
    if (acc == NULL || acc->n_orders == 0 || acc->n_orders > PLAIT_RDP_MAX_ORDERS)
        return plait_fail(PLAIT_EINVAL, "accountant: not initialized");
    if (steps == 0) return plait_fail(PLAIT_EINVAL, "accountant: 0 steps");
    double step_rdp[PLAIT_RDP_MAX_ORDERS];
    int rc = plait_rdp_subsampled_gaussian(q, z, acc->orders, acc->n_orders, step_rdp);
    if (rc != 0) return rc;
    for (size_t i = 0; i < acc->n_orders; i++)
        if (step_rdp[i] != 0.0) acc->rdp[i] += (double)steps * step_rdp[i];
    acc->steps += steps;
    return 0;
}

int plait_accountant_epsilon(const plait_accountant_t *acc, double delta, plait_eps_method_t method, double *eps,
                             double *order)
{
    if (acc == NULL) return plait_fail(PLAIT_EINVAL, "accountant: NULL");
    return plait_rdp_to_epsilon(acc->orders, acc->rdp, acc->n_orders, delta, method, eps, order);
}

int plait_accountant_delta(const plait_accountant_t *acc, double eps, double *delta, double *order)
{
    if (acc == NULL) return plait_fail(PLAIT_EINVAL, "accountant: NULL");
    return plait_rdp_to_delta(acc->orders, acc->rdp, acc->n_orders, eps, delta, order);
}
