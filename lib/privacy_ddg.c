/*
 * privacy_ddg.c: the accountant of the distributed discrete Gaussian
 * (Kairouz, Liu and Steinke 2021, Proposition 14), composed into the RDP
 * accountant of privacy.c. Kept apart from privacy.c so that the sampled
 * Gaussian accounting and this one evolve independently; the formulas are
 * in ddg.h.
 */
#include "plait/ddg.h"

#include <math.h>

double plait_ddg_rounded_l2(double clip_steps, size_t dim)
{
    return clip_steps + sqrt((double)dim);
}

static double tau_of(double v, uint32_t n)
{
    /* Terms decrease in neither direction monotonically enough to stop early
     * safely for small v; n <= 10^5 terms are cheap. */
    double s = 0.0;
    for (uint32_t k = 1; k < n; k++) s += exp(-2.0 * M_PI * M_PI * v * (double)k / (double)(k + 1));
    return 10.0 * s;
}

int plait_ddg_rdp(double l2, size_t dim, double local_var, uint32_t n, const double *orders, size_t n_orders,
                  double *rdp)
{
    if (orders == NULL || rdp == NULL || n_orders == 0 || !(l2 > 0) || !isfinite(l2) || dim == 0 ||
        !(local_var > 0) || !isfinite(local_var) || n == 0 || n > PLAIT_DDG_MAX_DEVICES)
        return plait_fail(PLAIT_EINVAL, "ddg accountant: bad arguments (l2 %g, dim %zu, var %g, n %u)", l2, dim,
                          local_var, (unsigned)n);
    for (size_t i = 0; i < n_orders; i++)
        if (!(orders[i] > 1) || !isfinite(orders[i]))
            return plait_fail(PLAIT_EINVAL, "ddg accountant: order %g (want > 1)", orders[i]);
    double d = (double)dim, tau = tau_of(local_var, n), sd = sqrt((double)n * local_var);
    double s2 = l2 / sd, s1 = sqrt(d) * l2 / sd;
    for (size_t i = 0; i < n_orders; i++) {
        double a = orders[i];
        double t1 = a / 2 * s2 * s2 + tau * d;
        double t2 = a / 2 * (s2 * s2 + 2 * s1 * tau + tau * tau * d);
        double t3 = a / 2 * (s2 + tau * sqrt(d)) * (s2 + tau * sqrt(d));
        rdp[i] = fmin(t1, fmin(t2, t3));
    }
    return 0;
}

int plait_accountant_compose_ddg(plait_accountant_t *acc, double l2, size_t dim, double local_var, uint32_t n,
                                 uint64_t steps)
{
    if (acc == NULL || steps == 0 || acc->n_orders == 0 || acc->n_orders > PLAIT_RDP_MAX_ORDERS)
        return plait_fail(PLAIT_EINVAL, "ddg accountant: NULL accountant or zero steps");
    double step[PLAIT_RDP_MAX_ORDERS];
    int rc = plait_ddg_rdp(l2, dim, local_var, n, acc->orders, acc->n_orders, step);
    if (rc != 0) return rc;
    for (size_t i = 0; i < acc->n_orders; i++) acc->rdp[i] += (double)steps * step[i];
    acc->steps += steps;
    return 0;
}

double plait_ddg_wrap_bound(double local_var, uint32_t n, double a)
{
    if (!(a > 0)) return 1.0;
    double p = 2.0 * exp(-a * a / (2.0 * (double)n * local_var));
    return p > 1.0 ? 1.0 : p;
}
