/*
 * privacy.h: the privacy accountant. Rényi differential privacy (RDP) of the
 * Poisson-subsampled Gaussian mechanism (Mironov, Talwar and Zhang 2019,
 * "Rényi Differential Privacy of the Sampled Gaussian Mechanism"),
 * composition over rounds, and conversion to (epsilon, delta)-DP.
 *
 * The numerics follow Google's dp_accounting (rdp_privacy_accountant.py:
 * _compute_log_a_int, _compute_log_a_frac, compute_epsilon, compute_delta)
 * and are tested against values published in that library's tests and in
 * tensorflow/privacy (tests/vectors/rdp_known_answers.txt); they agree to a
 * relative 1e-6 or better.
 *
 * One round of DP-FedAvg with expected cohort q·N out of N devices, clip S
 * and noise std z·S on the sum is one Poisson-subsampled Gaussian with
 * sampling rate q and noise multiplier z (add-or-remove-one-device adjacency).
 *
 * Example (100 rounds at q = 0.01, z = 1.1, then 50 rounds at q = 0.02):
 *
 *     plait_accountant_t acc;
 *     plait_accountant_init(&acc, NULL, 0);                // dp_accounting's default orders
 *     plait_accountant_compose(&acc, 0.01, 1.1, 100);
 *     plait_accountant_compose(&acc, 0.02, 1.1, 50);       // heterogeneous segments add up
 *     double eps, order;
 *     plait_accountant_epsilon(&acc, 1e-6, PLAIT_EPS_IMPROVED, &eps, &order);
 *
 * Thread-safety: all functions are reentrant; an accountant is a plain value
 * owned by its caller (persist it by storing orders[], rdp[] and steps).
 */
#ifndef PLAIT_PRIVACY_H
#define PLAIT_PRIVACY_H

#include "plait/plait.h"

/** Capacity of an accountant's order grid (the default grid has 156 orders). */
#define PLAIT_RDP_MAX_ORDERS 256
/** Largest order accepted: log A at integer order a sums a + 1 terms. */
#define PLAIT_RDP_MAX_ORDER 1.0e5

/** How RDP becomes (epsilon, delta). */
typedef enum {
    /** Canonne, Kamath and Steinke 2020 / Balle et al. 2020 (dp_accounting's compute_epsilon):
     *  eps = rdp + log1p(-1/a) - (log delta + log a) / (a - 1), orders a > 1.01 only. */
    PLAIT_EPS_IMPROVED = 0,
    /** Mironov 2017, Proposition 3: eps = rdp - log(delta) / (a - 1). Looser; kept for comparison. */
    PLAIT_EPS_CLASSIC = 1
} plait_eps_method_t;

/**
 * \brief Write dp_accounting's default order grid into orders:
 *        1.1, 1.2, ..., 10.9 (1 + x/10, x = 1..99), 11, 12, ..., 63, 128, 256, 512, 1024.
 * \param cap capacity of orders (at least 156 to get them all).
 * \return the number of orders in the grid (156), even when cap is smaller
 *         (then only cap are written).
 */
size_t plait_rdp_default_orders(double *orders /* OUT */, size_t cap);

/**
 * \brief RDP of ONE step of the Poisson-subsampled Gaussian at each order:
 *        rdp[i] = log(A_a) / (a - 1) with A_a computed in log space
 *        (integer a: binomial expansion; fractional a: the two-sided series
 *        with erfc terms). q = 0 gives 0, z = 0 gives +inf, q = 1 gives
 *        a / (2 z^2). An order whose fractional series does not converge in
 *        1000 terms gives +inf (that order is then never chosen), as in
 *        dp_accounting.
 * \param q      sampling probability in [0, 1].
 * \param z      noise multiplier (noise std / L2 sensitivity), finite, >= 0.
 * \param orders n orders, each >= 1 and <= PLAIT_RDP_MAX_ORDER (order 1 gives
 *               +inf unless q is 0 or 1).
 * \return 0; PLAIT_EINVAL (NULL pointers, q or z out of range, bad order).
 */
int plait_rdp_subsampled_gaussian(double q, double z, const double *orders, size_t n,
                                  double *rdp /* OUT */) PLAIT_WUR;

/**
 * \brief Smallest epsilon over the orders for a target delta, and the order
 *        that attains it (the first one on ties, as numpy's argmin).
 *        Matches dp_accounting.compute_epsilon for PLAIT_EPS_IMPROVED
 *        (including its KL-divergence shortcut to 0 and its clamp at 0).
 * \param delta in (0, 1).
 * \return 0; PLAIT_EINVAL (NULL, n == 0, order < 1, delta outside (0, 1),
 *         NaN rdp, unknown method). eps may be +inf (no order gives a bound).
 */
int plait_rdp_to_epsilon(const double *orders, const double *rdp, size_t n, double delta, plait_eps_method_t method,
                         double *eps /* OUT */, double *order /* OUT, may be NULL */) PLAIT_WUR;

/**
 * \brief Smallest delta over the orders for a target epsilon (dp_accounting's
 *        compute_delta, improved bound, with the KL bound for small orders).
 * \return 0; PLAIT_EINVAL (NULL, n == 0, order < 1, eps < 0 or not finite).
 */
int plait_rdp_to_delta(const double *orders, const double *rdp, size_t n, double eps, double *delta /* OUT */,
                       double *order /* OUT, may be NULL */) PLAIT_WUR;

/** Accumulated RDP over a fixed order grid. A plain value: copy it, store it. */
typedef struct {
    size_t n_orders;
    double orders[PLAIT_RDP_MAX_ORDERS];
    double rdp[PLAIT_RDP_MAX_ORDERS]; /* total RDP of everything composed so far */
    uint64_t steps;                   /* number of mechanism steps composed */
} plait_accountant_t;

/**
 * \brief Start an accountant with zero RDP.
 * \param orders the grid (copied), or NULL for the default grid (n ignored).
 * \return 0; PLAIT_EINVAL (n == 0 or > PLAIT_RDP_MAX_ORDERS, bad order).
 */
int plait_accountant_init(plait_accountant_t *acc, const double *orders, size_t n) PLAIT_WUR;

/**
 * \brief Compose `steps` rounds of the Poisson-subsampled Gaussian (q, z).
 *        Call once per segment of rounds that share settings; RDP adds up.
 * \return 0; PLAIT_EINVAL (as plait_rdp_subsampled_gaussian, steps == 0).
 *         On error the accountant is unchanged.
 */
int plait_accountant_compose(plait_accountant_t *acc, double q, double z, uint64_t steps) PLAIT_WUR;

/** \brief epsilon for delta over the accountant's grid (see plait_rdp_to_epsilon). */
int plait_accountant_epsilon(const plait_accountant_t *acc, double delta, plait_eps_method_t method,
                             double *eps /* OUT */, double *order /* OUT, may be NULL */) PLAIT_WUR;

/** \brief delta for epsilon over the accountant's grid (see plait_rdp_to_delta). */
int plait_accountant_delta(const plait_accountant_t *acc, double eps, double *delta /* OUT */,
                           double *order /* OUT, may be NULL */) PLAIT_WUR;

#endif /* PLAIT_PRIVACY_H */
