/*
 * personal_int.h: what personal.c and personal_knn.c share.
 */
#ifndef PLAIT_PERSONAL_INT_H
#define PLAIT_PERSONAL_INT_H

#include "plait/personal.h"

/* The windows of a text that plait_personal_eval scores (at most max_windows, the first ones), thinned evenly
 * to at most max_rows (0: all), or one partial window of every prediction of a text shorter than T + 1 tokens
 * (padded with its last token: causality hides the pad). */
typedef struct {
    const plait_corpus_t *c;
    size_t T, nw, use, n_pred; /* windows, those used, predictions of a partial window */
    int32_t *pad;              /* (T + 1) tokens for a partial window, else NULL */
} plait__rows_t;

/** Plan c's rows. \return 0; PLAIT_EINVAL (under 2 tokens); PLAIT_ENOMEM. */
int plait__rows_plan(plait__rows_t *r, const plait_corpus_t *c, size_t T, size_t max_windows,
                     size_t max_rows) PLAIT_WUR;
/** Row k (< r->use) of T + 1 tokens and its number of predictions. */
const int32_t *plait__rows_get(const plait__rows_t *r, size_t k, size_t *n_pred);
/** The predictions of all rows of the plan. */
size_t plait__rows_total(const plait__rows_t *r);
/** Wipe and free the pad (safe twice). */
void plait__rows_free(plait__rows_t *r);

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
