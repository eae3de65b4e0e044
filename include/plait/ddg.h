/*
 * ddg.h: distributed discrete Gaussian noise (Kairouz, Liu and Steinke 2021,
 * "The Distributed Discrete Gaussian Mechanism for Federated Learning with
 * Secure Aggregation") drawn with the exact sampler of Canonne, Kamath and
 * Steinke 2020 ("The Discrete Gaussian for Differential Privacy", Algorithms
 * 1-3).
 *
 * Each of n devices adds independent N_Z(0, sigma^2 / n) noise to every
 * quantized word, in the ring Z_{2^m}, before masking; the securely
 * aggregated sum then carries the sum of n discrete Gaussians, whose privacy
 * the accountant in privacy.h bounds (plait_ddg_rdp(), KLS21 Proposition 14).
 *
 * The variance is a rational num/den. The sampler uses only integer
 * arithmetic (64- and 128-bit) and uniform bits from a plait_rng_t (ChaCha20
 * keyed from the mbedTLS CTR_DRBG on devices): no floating point touches a
 * sample, so its distribution is exactly the discrete Gaussian. One event is
 * outside its integer range: an intermediate Laplace candidate so far out
 * that the acceptance probability is below e^-2048; the sampler then returns
 * PLAIT_EINTERNAL instead of an inexact sample.
 *
 * Example (device side, total variance 2500 over a cohort of 100, m-bit ring):
 *
 *     uint64_t num, den;
 *     plait_ddg_variance(2500.0 / 100, &num, &den);    // rounded up: never less noise
 *     plait_ddg_add_noise(&rng, num, den, words, len, m);
 *
 * Thread-safety: reentrant; the rng is the caller's (one per thread).
 */
#ifndef PLAIT_DDG_H
#define PLAIT_DDG_H

#include "plait/plait.h"
#include "plait/privacy.h"
#include "plait/rng.h"

/** Largest variance numerator and denominator accepted (sigma^2 <= 2^40). */
#define PLAIT_DDG_NUM_MAX ((uint64_t)1 << 40)
#define PLAIT_DDG_DEN_MAX ((uint64_t)1 << 32)
/** Most devices one distributed-DP sum may hold (the SecAgg+ cohort limit); the accountant's cost is
 *  linear in it, so a larger n (from a corrupt ledger row) is refused, not looped over. */
#define PLAIT_DDG_MAX_DEVICES 100000u

/**
 * \brief Exact variance as a rational for a real variance: den = 256,
 *        num = ceil(var · 256) (rounded up, so the noise is never smaller).
 * \return 0; PLAIT_EINVAL (var not finite, <= 0 or above 2^32).
 */
int plait_ddg_variance(double var, uint64_t *num /* OUT */, uint64_t *den /* OUT */) PLAIT_WUR;

/**
 * \brief One sample of the discrete Gaussian N_Z(0, num/den):
 *        P[X = x] proportional to exp(-x^2 / (2 num/den)).
 * \param num, den  1 <= num <= PLAIT_DDG_NUM_MAX, 1 <= den <= PLAIT_DDG_DEN_MAX.
 * \return 0; PLAIT_EINVAL (bad arguments); PLAIT_EINTERNAL (see above,
 *         probability below e^-2048).
 */
int plait_ddg_sample(plait_rng_t *rng, uint64_t num, uint64_t den, int64_t *out /* OUT */) PLAIT_WUR;

/**
 * \brief words[i] = (words[i] + N_Z(0, num/den)) mod 2^m for i < n.
 *        On error the words are left partly noised: the caller must not
 *        send them (the round is skipped).
 * \return 0; PLAIT_EINVAL (bad arguments, m outside 1..32), PLAIT_EINTERNAL.
 */
int plait_ddg_add_noise(plait_rng_t *rng, uint64_t num, uint64_t den, uint32_t *words, size_t n,
                        unsigned m) PLAIT_WUR;

/* ---- accounting (lib/privacy_ddg.c) ----------------------------------------------
 *
 * KLS21 Proposition 14: the sum of n independent N_Z(0, v) noises added to
 * an integer vector of dimension d whose L2 sensitivity is D2 (L1: D1) is
 * (alpha, eps(alpha))-RDP for every alpha > 1 with
 *     eps(alpha) = min( alpha/2 · s2^2 + tau·d,
 *                       alpha/2 · (s2^2 + 2·s1·tau + tau^2·d),
 *                       alpha/2 · (s2 + tau·sqrt(d))^2 ),
 *     s2 = D2 / sqrt(n v),  s1 = D1 / sqrt(n v),
 *     tau = 10 · sum_{k=1}^{n-1} exp(-2 pi^2 v · k / (k+1)).
 * Rounding: plait's quantizer rounds each coordinate stochastically by less
 * than one step, so a clipped update of norm <= c (in steps) has rounded
 * norm D2 <= c + sqrt(d) (KLS21's unconditional bound; plait does not use
 * conditional rounding), and D1 <= sqrt(d) · D2 (Cauchy-Schwarz).
 * Modular wrap: the server sees the noisy sum mod 2^m, a function of the
 * noisy sum, so wrapping costs no privacy (post-processing); it only hurts
 * accuracy when |noise| exceeds the ring's headroom, which
 * plait_ddg_wrap_bound() bounds.
 * No amplification by sampling is claimed: every round composes in full.
 */

/** \brief D2 = clip_steps + sqrt(dim): the L2 sensitivity after rounding. */
double plait_ddg_rounded_l2(double clip_steps, size_t dim);

/**
 * \brief RDP of one round at each order (formula above).
 * \param l2        L2 sensitivity in quantization steps (after rounding), > 0.
 * \param dim       vector dimension, >= 1.
 * \param local_var per-device variance v in steps^2 (num/den as sampled), > 0.
 * \param n         number of devices whose noise is in the sum (the
 *                  survivors, not the cohort), >= 1.
 * \param orders    n_orders orders, each > 1.
 * \return 0; PLAIT_EINVAL.
 */
int plait_ddg_rdp(double l2, size_t dim, double local_var, uint32_t n, const double *orders, size_t n_orders,
                  double *rdp /* OUT */) PLAIT_WUR;

/**
 * \brief Add `steps` rounds of the distributed discrete Gaussian to an
 *        accountant (privacy.h); its orders must all be > 1 (the default grid is).
 * \return 0; PLAIT_EINVAL (as plait_ddg_rdp, steps == 0). On error acc is unchanged.
 */
int plait_accountant_compose_ddg(plait_accountant_t *acc, double l2, size_t dim, double local_var, uint32_t n,
                                 uint64_t steps) PLAIT_WUR;

/**
 * \brief Probability bound that the total noise of n devices, each
 *        N_Z(0, v), reaches magnitude a or more: 2 exp(-a^2 / (2 n v))
 *        (the discrete Gaussian is sub-Gaussian with variance proxy v,
 *        Canonne et al. 2020). Use it to size the ring's headroom.
 */
double plait_ddg_wrap_bound(double local_var, uint32_t n, double a);

#endif /* PLAIT_DDG_H */
