/*
 * sim_int.h: internals shared by the simulator's files (not a public header).
 */
#ifndef PLAIT_SIM_INT_H
#define PLAIT_SIM_INT_H

#include <stdio.h>

#include "plait/data.h"
#include "plait/lora.h"
#include "plait/model.h"
#include "plait/tok.h"
#include "plait/sim.h"

/* Kind tags of the two sides of a client's store. */
#define PLAIT__SIM_KIND_TRAIN "train"
#define PLAIT__SIM_KIND_HELDOUT "heldout"

/* The least text a client needs, whatever seq_len is: 4 training tokens (a validation tail of 2 and 2 to
 * train on) and 2 held-out tokens (one prediction). */
#define PLAIT__SIM_MIN_TRAIN 4
#define PLAIT__SIM_MIN_HELDOUT 2

/* The centralized baseline's default steps (eval.centralized_steps = 0), at eval.centralized_batch 16. */
#define PLAIT__SIM_CENTRAL_STEPS 10000

/* Purposes of the random streams (the high byte of a stream number). */
enum {
    PLAIT__SIM_RNG_TRAITS = 1,
    PLAIT__SIM_RNG_AVAIL = 2,
    PLAIT__SIM_RNG_SELECT = 3,
    PLAIT__SIM_RNG_FATE = 4,
    PLAIT__SIM_RNG_TRAIN = 5,
    PLAIT__SIM_RNG_QUANT = 6,
    PLAIT__SIM_RNG_DP = 7,
    PLAIT__SIM_RNG_EVAL = 8,
    PLAIT__SIM_RNG_PERSONAL = 9,
    PLAIT__SIM_RNG_PARTITION = 10
};

/* Stream number of (purpose, round, client): distinct for rounds < 2^24 and clients < 2^32. */
static inline uint64_t plait__sim_stream(unsigned purpose, uint64_t round, uint64_t client)
{
    return ((uint64_t)purpose << 56) | ((round & 0xffffffULL) << 32) | (client & 0xffffffffULL);
}

/* Fail with rc, prefixing the detail recorded on this thread (copied first:
 * plait_fail must not format its own buffer into itself). */
static inline int plait__sim_wrap(int rc, const char *prefix)
{
    char tmp[512];
    snprintf(tmp, sizeof(tmp), "%s", plait_errmsg());
    return plait_fail(rc, "%.512s: %s", prefix, tmp);
}

/* Append client i's records to train and/or heldout (either may be NULL). */
int plait__sim_load_client(const plait_sim_pop_t *pop, size_t i, const plait_tok_t *tok, plait_corpus_t *train,
                           plait_corpus_t *heldout);

/* The centralized baseline (central.c): train one adapter, set up like
 * global (same LoRA config and initial weights), on the pooled training
 * splits of every client, and evaluate it token-weighted on the held-out
 * data of eval_ids (n_eval clients, in order) as the global adapter is.
 * Fills res->centralized_*. Deterministic from cfg->seed; runs on one thread. */
int plait__sim_centralized(const plait_sim_config_t *cfg, const plait_model_t *model, const plait_tok_t *tok,
                           const plait_sim_pop_t *pop, const plait_lora_t *global, const size_t *eval_ids,
                           size_t n_eval, plait_sim_result_t *res);

/* Secure aggregation per virtual client (secagg_sim.c). */
typedef struct plait__sim_sa_s plait__sim_sa_t;
int plait__sim_sa_create(plait__sim_sa_t **out, const plait_sim_config_t *cfg, size_t n_clients);
void plait__sim_sa_free(plait__sim_sa_t *sa);
/* Run SecAgg+ over the k selected clients (clients[i] in slot i, its words at
 * slab + i·len); accepted[i]: the round core took slot i's update. *failed = 1
 * when the survivors fall below the threshold (the round must not commit). */
int plait__sim_sa_round(plait__sim_sa_t *sa, const plait_sim_config_t *cfg, int round, size_t min_cohort,
                        const size_t *clients, size_t k, const uint8_t *accepted, const uint32_t *slab, size_t len,
                        int *failed);

/* Write metrics.csv, metrics.jsonl, loss.svg and report.md into dir. */
int plait__sim_write_outputs(const plait_sim_config_t *cfg, const plait_sim_result_t *res,
                             const plait_sim_pop_t *pop, const char *dir);

/* One line of the per-round CSV / JSON into a buffer. */
struct plait_buf_s;
void plait__sim_csv_header(struct plait_buf_s *b);
void plait__sim_csv_row(struct plait_buf_s *b, const plait_sim_round_t *m);
void plait__sim_json_row(struct plait_buf_s *b, const plait_sim_round_t *m);

/* One curve of a comparison chart: y over x (NULL: rounds 0..n-1), with an optional band lo..hi. */
typedef struct {
    const char *name;
    const double *x, *y, *lo, *hi; /* (n); NAN = no point */
    size_t n;
} plait__sim_curve_t;

/* An SVG of n_series loss curves and a base line (NAN: none); xlabel NULL = "round". */
int plait__sim_svg_compare(const char *path, const char *title, const char *xlabel, const plait__sim_curve_t *c,
                           size_t n_series, double base);

/* plait-sim compare ARGS (argv[0] = "compare"): the exit status. */
int plait__sim_compare_main(int argc, char **argv);

/* Two-sided 95% Student t critical value for df degrees of freedom (1.96 beyond 30). */
double plait__sim_t95(size_t df);

/* The aggregator settings ("key=value", at most cap) of an experiment (export.c); returns how many. */
int plait__sim_agg_sets(const plait_sim_config_t *cfg, char (*sets)[160], int cap);
/* Write them as an aggregator.conf at path ("-": stdout). */
int plait__sim_export_config(const plait_sim_config_t *cfg, const char *path);

/* Network mode (net.c): a temporary deployment of the real plait-aggregator, served on 127.0.0.1, with one
 * enrolled device and one training-only store per client. */
typedef struct plait__sim_net_s plait__sim_net_t;
int plait__sim_net_start(plait__sim_net_t **out, const plait_sim_config_t *cfg, const plait_sim_pop_t *pop);
/* Round r: K plait-agent processes (a seeded sample); fills m's counts and, when the round committed, adapter
 * with the exported global adapter's path ("" otherwise). */
int plait__sim_net_round(plait__sim_net_t *n, int r, size_t span_len, plait_sim_round_t *m, char *adapter,
                         size_t cap);
/* SIGTERM the aggregator, wait for it (bounded), free. NULL is safe. */
void plait__sim_net_stop(plait__sim_net_t *n);

#endif
