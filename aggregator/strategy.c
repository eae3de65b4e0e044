/*
 * strategy.c: the strategy registry (strategy.h) and the built-in strategies.
 *
 * The built-ins wrap the server optimizers of server_opt.c (their state is a
 * plait_server_opt_t); fedprox is FedAvg on the server plus a proximal
 * weight for the devices. The registry is a fixed array filled with the
 * built-ins on first use; plait_strategy_register appends to it.
 *
 * Invariants: names in the table are unique; a configured instance either
 * holds a table and the state its configure returned, or is all zero.
 */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "plait/agg.h"
#include "plait/strategy.h"

void plait_strategy_params_default(plait_strategy_params_t *p)
{
    p->server_lr = 0;   /* the strategy's default */
    p->momentum = -1;   /* the strategy's default (0.9) */
    p->prox_mu = -1;    /* the strategy's default (0.01 for fedprox) */
}

/* ---- built-ins: the server optimizers ------------------------------------------ */

static int opt_configure(plait_server_opt_kind_t kind, void **state, const plait_strategy_params_t *p, size_t dim)
{
    plait_server_opt_config_t oc;
    plait_server_opt_config_default(&oc, kind);
    if (p->server_lr != 0) {
        if (!(p->server_lr > 0 && p->server_lr <= 1e3))
            return plait_fail(PLAIT_EINVAL, "strategy: server lr %g is outside (0, 1000]", p->server_lr);
        oc.lr = p->server_lr;
    }
    if (p->momentum >= 0) {
        if (!(p->momentum < 1)) return plait_fail(PLAIT_EINVAL, "strategy: momentum %g is outside [0, 1)", p->momentum);
        oc.beta1 = p->momentum;
    }
    plait_server_opt_t *o = NULL;
    int rc = plait_server_opt_create(&o, &oc, dim);
    if (rc != 0) return rc;
    *state = o;
    return 0;
}

static int opt_aggregate(void *state, float *global, const float *avg, size_t n)
{
    return plait_server_opt_step(state, global, avg, n);
}

static void opt_destroy(void *state) { plait_server_opt_destroy(state); }

static int no_prox(const plait_strategy_params_t *p, const char *name)
{
    if (p->prox_mu > 0)
        return plait_fail(PLAIT_EINVAL, "strategy %s: prox_mu is FedProx's; set server.strategy = \"fedprox\"", name);
    return 0;
}

#define OPT_STRATEGY(fn, kind, label)                                                                       \
    static int fn(void **state, const plait_strategy_params_t *p, size_t dim, plait_strategy_client_t *c) \
    {                                                                                                      \
        (void)c;                                                                                           \
        int rc = no_prox(p, label);                                                                        \
        return rc != 0 ? rc : opt_configure(kind, state, p, dim);                                          \
    }
OPT_STRATEGY(fedavg_configure, PLAIT_OPT_FEDAVG, "fedavg")
OPT_STRATEGY(fedadagrad_configure, PLAIT_OPT_FEDADAGRAD, "fedadagrad")
OPT_STRATEGY(fedadam_configure, PLAIT_OPT_FEDADAM, "fedadam")
OPT_STRATEGY(fedyogi_configure, PLAIT_OPT_FEDYOGI, "fedyogi")
OPT_STRATEGY(fedavgm_configure, PLAIT_OPT_FEDAVGM, "fedavgm")

static int fedprox_configure(void **state, const plait_strategy_params_t *p, size_t dim, plait_strategy_client_t *c)
{
    double mu = p->prox_mu < 0 ? 0.01 : p->prox_mu; /* Li et al. 2020 tune mu in {0.001, 0.01, 0.1, 1} */
    if (!(mu > 0 && mu <= 1e4)) return plait_fail(PLAIT_EINVAL, "strategy fedprox: prox_mu %g is outside (0, 10000]", mu);
    c->prox_mu = mu;
    return opt_configure(PLAIT_OPT_FEDAVG, state, p, dim);
}

static const plait_strategy_t builtins[] = {
    {"fedavg", "FedAvg: the global adapter moves by server_lr times the average update", fedavg_configure,
     opt_aggregate, opt_destroy},
    {"fedadagrad", "FedAdagrad (Reddi et al. 2021)", fedadagrad_configure, opt_aggregate, opt_destroy},
    {"fedadam", "FedAdam (Reddi et al. 2021)", fedadam_configure, opt_aggregate, opt_destroy},
    {"fedyogi", "FedYogi (Reddi et al. 2021)", fedyogi_configure, opt_aggregate, opt_destroy},
    {"fedavgm", "FedAvgM: server momentum m = momentum*m + avg, global += server_lr*m (Hsu et al. 2019)",
     fedavgm_configure, opt_aggregate, opt_destroy},
    {"fedprox", "FedProx: FedAvg with a proximal term (prox_mu/2)|w - w_global|^2 in local training (Li et al. 2020)",
     fedprox_configure, opt_aggregate, opt_destroy},
};

/* ---- the registry ------------------------------------------------------------- */

static const plait_strategy_t *table[PLAIT_STRATEGY_MAX];
static size_t n_table;

static void init_table(void)
{
    if (n_table > 0) return;
    for (size_t i = 0; i < sizeof(builtins) / sizeof(builtins[0]); i++) table[n_table++] = &builtins[i];
}

const plait_strategy_t *plait_strategy_at(size_t i)
{
    init_table();
    return i < n_table ? table[i] : NULL;
}

void plait_strategy_names(char *buf, size_t cap)
{
    init_table();
    size_t off = 0;
    if (cap == 0) return;
    buf[0] = '\0';
    for (size_t i = 0; i < n_table && off < cap; i++) {
        int k = snprintf(buf + off, cap - off, "%s%s", i ? ", " : "", table[i]->name);
        if (k < 0) break;
        off += (size_t)k;
    }
}

const plait_strategy_t *plait_strategy_find(const char *name)
{
    init_table();
    for (size_t i = 0; name && i < n_table; i++)
        if (strcmp(table[i]->name, name) == 0) return table[i];
    char names[512];
    plait_strategy_names(names, sizeof(names));
    plait_fail(PLAIT_EINVAL, "unknown strategy '%.32s' (known: %s)", name ? name : "(null)", names);
    return NULL;
}

int plait_strategy_register(const plait_strategy_t *s)
{
    init_table();
    if (s == NULL || s->name == NULL || s->configure == NULL || s->aggregate == NULL || s->destroy == NULL)
        return plait_fail(PLAIT_EINVAL, "strategy_register: NULL table, name or callback");
    size_t len = strlen(s->name);
    if (len == 0 || len > 31) return plait_fail(PLAIT_EINVAL, "strategy_register: name must have 1 to 31 characters");
    for (size_t i = 0; i < len; i++) {
        char ch = s->name[i];
        if (!((ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') || ch == '_'))
            return plait_fail(PLAIT_EINVAL, "strategy_register: name '%s' is not [a-z0-9_]", s->name);
    }
    for (size_t i = 0; i < n_table; i++)
        if (strcmp(table[i]->name, s->name) == 0)
            return plait_fail(PLAIT_EINVAL, "strategy_register: '%s' is already registered", s->name);
    if (n_table >= PLAIT_STRATEGY_MAX)
        return plait_fail(PLAIT_ETOOBIG, "strategy_register: %d strategies at most", PLAIT_STRATEGY_MAX);
    table[n_table++] = s;
    return 0;
}

int plait_strategy_setup(plait_strategy_inst_t *inst, const plait_strategy_t *s, const plait_strategy_params_t *p,
                         size_t dim)
{
    if (inst == NULL) return plait_fail(PLAIT_EINVAL, "strategy_setup: NULL instance");
    memset(inst, 0, sizeof(*inst));
    if (s == NULL || p == NULL) return plait_fail(PLAIT_EINVAL, "strategy_setup: NULL strategy or params");
    void *state = NULL;
    plait_strategy_client_t c;
    memset(&c, 0, sizeof(c));
    int rc = s->configure(&state, p, dim, &c);
    if (rc != 0) {
        s->destroy(state);
        return rc < 0 ? rc : plait_fail(PLAIT_EINTERNAL, "strategy %s: configure returned %d", s->name, rc);
    }
    if (!(c.prox_mu >= 0 && c.prox_mu <= 1e4)) {
        s->destroy(state);
        return plait_fail(PLAIT_EINVAL, "strategy %s: configure asked for prox_mu %g", s->name, c.prox_mu);
    }
    inst->s = s;
    inst->state = state;
    inst->client = c;
    return 0;
}

void plait_strategy_free(plait_strategy_inst_t *inst)
{
    if (inst == NULL || inst->s == NULL) return;
    inst->s->destroy(inst->state);
    memset(inst, 0, sizeof(*inst));
}
