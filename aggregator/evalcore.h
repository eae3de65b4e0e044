/*
 * evalcore.h (private to aggregator/): the round core of a federated
 * evaluation round (server_eval.c), no I/O. Each device uploads two words,
 * the quantized min(loss, L) / L over range 1 and the weight word of 1; the
 * core's FedAvg step from 0 with lr 1 lands on the mean of the first words,
 * so the mean clipped loss is L times the committed global's one value.
 */
#ifndef PLAIT_AGG_EVALCORE_H
#define PLAIT_AGG_EVALCORE_H

#include "plait/round.h"

/** \brief The evaluation core's config from the training core's: dim 1, range 1, FedAvg lr 1,
 * no strategy, no robust estimator, no DP, no clip bit, no Poisson sampling; cohort, timeouts, bits and secure
 * kept. */
void plait__eval_core_config(const plait_round_config_t *train, plait_round_config_t *out /* OUT */);

/** \brief After aggregate() and commit(): the mean clipped loss (L times the global) and the
 * devices in it. \return 0; PLAIT_EPROTO (the value is not in [0, 1], or fewer than min_cohort
 * devices: nothing to commit). */
int plait__eval_core_mean(const plait_round_t *r, size_t min_cohort, double loss_max, double *mean /* OUT */,
                          size_t *devices /* OUT */) PLAIT_WUR;

#endif
