/*
 * personal_int.h: what personal.c and personal_knn.c share.
 */
#ifndef PLAIT_PERSONAL_INT_H
#define PLAIT_PERSONAL_INT_H

#include "plait/personal.h"

/**
 * Per-prediction losses (nats) of the trainer's adapter and logit bias on c's
 * windows as plait_personal_eval picks them, into out (malloc'd, *n of them;
 * the caller wipes and frees it).
 */
int plait__personal_pred_losses(const plait_corpus_t *c, plait_trainer_t *tr, size_t max_windows, double **out,
                                size_t *n) PLAIT_WUR;

/** Standard error of the mean of b[i] - a[i] over n pairs taken in groups of W consecutive ones (a window's
 *  predictions, which are not independent): the spread of the groups' mean differences over sqrt(groups)
 *  (INFINITY for fewer than 2 groups; a last partial group counts as one). */
double plait__personal_paired_se(const double *a, const double *b, size_t n, size_t W);

/** The margin a candidate must beat the current choice by on validation (losses a, the candidate's b, n paired
 *  predictions in windows of W): min_gain, plus guard_z paired standard errors when guard_z > 0, the larger of
 *  the windows' and the single predictions' (so one window of validation never clears a guard). */
double plait__personal_margin(const plait_personal_config_t *cfg, const double *a, const double *b, size_t n,
                              size_t W);

#endif /* PLAIT_PERSONAL_INT_H */
