/*
 * strategy.h: the federated strategy plug-in point (a table of callbacks).
 *
 * A strategy decides two things: what the devices' local training adds to
 * the plain recipe (configure: FedProx's proximal term mu), and how the
 * server turns a round's averaged update into the next global adapter
 * (aggregate: FedAvg, server momentum, the adaptive optimizers). The round
 * core (round.h) averages first and then calls aggregate, so a strategy
 * sees only the cohort's average: what secure aggregation reveals, never
 * one device's update. Estimators that need every update (median, trimmed
 * mean) are the round core's `robust` setting instead (agg.h).
 *
 * Built-ins (plait_strategy_find): fedavg, fedadagrad, fedadam, fedyogi
 * (Reddi et al. 2021), fedavgm (server momentum, Hsu et al. 2019) and
 * fedprox (Li et al. 2020: FedAvg on the server, a proximal term on the
 * devices). A researcher adds one in C:
 *
 *     static int my_configure(void **state, const plait_strategy_params_t *p, size_t dim,
 *                             plait_strategy_client_t *client) { ... }
 *     static int my_aggregate(void *state, float *global, const float *avg, size_t n) { ... }
 *     static void my_destroy(void *state) { free(state); }
 *     static const plait_strategy_t my = {"mine", "what it does", my_configure, my_aggregate, my_destroy};
 *     plait_strategy_register(&my);   // before plait_sim_run; then server.strategy = "mine"
 *
 * Contract of the callbacks:
 *   - configure: check p (return PLAIT_EINVAL naming the bad parameter via
 *     plait_fail), allocate state for a span of dim floats, and fill the
 *     client options (zeroed before the call). *state may stay NULL.
 *   - aggregate: global (n floats) += the strategy's step from avg, the
 *     round's average update (local - global, finite). Return 0 or a
 *     PLAIT_E* code; on error the round fails and global must be unchanged.
 *   - destroy: free state (NULL is passed when configure left it NULL).
 *
 * Thread-safety: register before any run; the registry is not locked. A
 * configured instance belongs to one round core (one thread).
 */
#ifndef PLAIT_STRATEGY_H
#define PLAIT_STRATEGY_H

#include <stddef.h>

#include "plait/plait.h"

/** At most this many strategies, built-ins included. */
#define PLAIT_STRATEGY_MAX 32

/** The knobs a config may set; each strategy reads those it needs. */
typedef struct {
    double server_lr; /**< server step size; 0 = the strategy's default */
    double momentum;  /**< server momentum (fedavgm) or β1 (adaptive ones); < 0 = default (0.9) */
    double prox_mu;   /**< FedProx proximal weight mu >= 0 (fedprox; default 0.01 when < 0) */
} plait_strategy_params_t;

/** What a strategy asks of the devices' local training. */
typedef struct {
    double prox_mu; /**< > 0: add (mu/2)·||w - w_global||² to the local objective (train.h prox_mu) */
} plait_strategy_client_t;

typedef struct plait_strategy_s {
    const char *name;    /**< the config's server.strategy: [a-z0-9_], at most 31 characters */
    const char *summary; /**< one line for --help and the report */
    int (*configure)(void **state /* OUT */, const plait_strategy_params_t *p, size_t dim,
                     plait_strategy_client_t *client /* OUT */);
    int (*aggregate)(void *state, float *global, const float *avg, size_t n);
    void (*destroy)(void *state);
} plait_strategy_t;

/** \brief Params with every field at "the strategy's default". */
void plait_strategy_params_default(plait_strategy_params_t *p);
/**
 * \brief Add a strategy (the table is borrowed: it must outlive every run).
 * \return 0; PLAIT_EINVAL (NULL callback, bad or already taken name); PLAIT_ETOOBIG
 *         (PLAIT_STRATEGY_MAX reached).
 */
int plait_strategy_register(const plait_strategy_t *s) PLAIT_WUR;
/** \brief The strategy called name, or NULL (plait_errmsg() then lists the known names). */
const plait_strategy_t *plait_strategy_find(const char *name);
/** \brief The i-th registered strategy (built-ins first), NULL past the end. */
const plait_strategy_t *plait_strategy_at(size_t i);
/** \brief "fedavg, fedadagrad, ..." into buf (for error messages and --help). */
void plait_strategy_names(char *buf, size_t cap);

/** A configured strategy: the table, its state, the client options. */
typedef struct plait_strategy_inst_s {
    const plait_strategy_t *s;
    void *state;
    plait_strategy_client_t client;
} plait_strategy_inst_t;

/** \brief Configure s for a span of dim floats into inst. \return configure's code; inst is empty on error. */
int plait_strategy_setup(plait_strategy_inst_t *inst /* OUT */, const plait_strategy_t *s,
                         const plait_strategy_params_t *p, size_t dim) PLAIT_WUR;
/** \brief Destroy the state. Safe on a zeroed or freed inst. */
void plait_strategy_free(plait_strategy_inst_t *inst);

#endif /* PLAIT_STRATEGY_H */
