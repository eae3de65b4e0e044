/*
 * cli_eval.h (private to aggregator/): what `plait-aggregator evals` and
 * `status` print of federated evaluation (cli_eval.c); cli.c parses the
 * flags and opens the store.
 */
#ifndef PLAIT_AGG_CLI_EVAL_H
#define PLAIT_AGG_CLI_EVAL_H

#include <stdio.h>

#include "plait/aggstore.h"

/** \brief One line per committed evaluation (oldest first; last > 0: the newest `last`, newest
 * first), or one JSON object per line. \return 0 or the store's error. */
int plait__cli_evals_print(plait_aggstore_t *st, size_t last, int json, FILE *out);

/** \brief The newest committed evaluation (*have 0 when none) and how many there are. */
int plait__cli_eval_latest(plait_aggstore_t *st, plait_aggstore_eval_t *e /* OUT */, int64_t *count /* OUT */,
                           int *have /* OUT */);

#endif
