/*
 * selection.h (private to aggregator/): who takes part in a central-DP round.
 *
 * Poisson sampling, the selection the privacy accountant (privacy.h) assumes:
 * every device that checks in while a round is selecting is admitted with
 * probability q, drawn independently from a caller-supplied plait_rng_t (the
 * service keys it from its CTR_DRBG). The cohort size is therefore random
 * (Binomial(devices checking in, q)). A device is decided once per round: a
 * second check-in in the same round gets the first answer, so reconnecting
 * cannot re-roll the draw.
 *
 * q comes from the deployment: sampling_rate when the operator sets one,
 * else target_cohort / population, capped at 1. population is the number of
 * enrolled, non-revoked devices in the aggregator store; an operator may set
 * a smaller number (a larger q: more devices per round, and the accountant
 * composes that q), never a larger one (plait_sel_population() refuses it,
 * since it would make q, and so the reported epsilon, smaller than what runs).
 *
 * Also here, the per-device worst case the `privacy` and `status` reports
 * print next to the amortized epsilon: q = 1 (no amplification by sampling)
 * composed over the largest number of DP rounds any one device joined, with
 * the smallest noise multiplier of the ledger.
 *
 * No I/O, no clock. Thread-safety: one plait_sel_t per thread (the service's
 * loop thread).
 */
#ifndef PLAIT_AGG_SELECTION_H
#define PLAIT_AGG_SELECTION_H

#include <stddef.h>
#include <stdint.h>

#include "plait/plait.h"
#include "plait/rng.h"

typedef struct plait_sel_s plait_sel_t;

/** \brief Create an empty selector. \return 0; PLAIT_EINVAL (NULL); PLAIT_ENOMEM. */
int plait_sel_create(plait_sel_t **out /* OUT */) PLAIT_WUR;
/** \brief Free. NULL is safe. */
void plait_sel_destroy(plait_sel_t *s);

/**
 * \brief Start deciding for a new round: forget every decision, sample at q.
 * \param q sampling probability in (0, 1].
 * \return 0; PLAIT_EINVAL (q out of range, NULL).
 */
int plait_sel_open(plait_sel_t *s, uint64_t round_id, double q) PLAIT_WUR;

/**
 * \brief Decide a device for the open round (once; later calls repeat the answer).
 * \param rng       the draw's source (consumed only on a first decision).
 * \param admitted  OUT: 1 if sampled into the round, else 0.
 * \param first     OUT (may be NULL): 1 if this call made the decision.
 * \return 0; PLAIT_EINVAL (NULL, or no round opened); PLAIT_ENOMEM (the decision is then not made).
 */
int plait_sel_decide(plait_sel_t *s, plait_rng_t *rng, uint64_t client, int *admitted /* OUT */,
                     int *first /* OUT */) PLAIT_WUR;

/** \brief q of the open round (0 before the first open). */
double plait_sel_rate(const plait_sel_t *s);
/** \brief Devices decided in the open round, and how many of them were admitted. */
void plait_sel_counts(const plait_sel_t *s, uint64_t *decided /* OUT */, uint64_t *admitted /* OUT */);

/**
 * \brief The population a round samples from.
 * \param configured the `population` setting (0: use enrolled).
 * \param enrolled   enrolled, non-revoked devices in the store.
 * \param out        OUT: configured if set, else enrolled.
 * \return 0; PLAIT_EINVAL naming `population` when configured > enrolled.
 */
int plait_sel_population(uint64_t configured, uint64_t enrolled, uint64_t *out /* OUT */) PLAIT_WUR;

/**
 * \brief q of a round: sampling_rate if > 0, else min(1, target / population)
 *        (1 when population is 0: there is nobody to protect by sampling).
 * \return 0; PLAIT_EINVAL (target 0, sampling_rate outside [0, 1]).
 */
int plait_sel_rate_of(uint64_t target, uint64_t population, double sampling_rate, double *q /* OUT */) PLAIT_WUR;

/**
 * \brief Worst-case epsilon of one device: the Gaussian mechanism without
 *        sampling (q = 1) at multiplier z, composed `rounds` times, at delta.
 * \param eps OUT: 0 when rounds is 0; may be +inf.
 * \return 0; PLAIT_EINVAL (z not finite and > 0, delta outside (0, 1)).
 */
int plait_sel_worst_epsilon(uint64_t rounds, double z, double delta, double *eps /* OUT */) PLAIT_WUR;

#endif /* PLAIT_AGG_SELECTION_H */
