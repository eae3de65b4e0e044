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

/** Standard error of the mean of b[i] - a[i] over n pairs (INFINITY for n < 2). */
double plait__personal_paired_se(const double *a, const double *b, size_t n);

#endif /* PLAIT_PERSONAL_INT_H */
