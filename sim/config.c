/*
 * config.c: the simulator's experiment config: defaults, validation, and the
 * JSON file format (read and written).
 *
 * The file is an object of sections ("run", "population", "lora", "local",
 * "rounds", "server", "privacy", "fleet", "eval"), each an object of keys.
 * One table lists every key with its type, range and field, so reading,
 * writing and the documentation (docs/researcher-guide.md) cannot disagree
 * about names. The file is untrusted: unknown sections or keys, wrong types
 * and out-of-range values are errors naming "section.key"; nothing in it can
 * crash the parser (plait_json bounds depth, nodes and strings).
 */
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "plait/file.h"
#include "plait/json.h"
#include "plait/lora.h"
#include "plait/secagg.h"
#include "plait/sim.h"
#include "sim_int.h"

/* Largest config file read. */
#define CONFIG_MAX_BYTES ((size_t)1 << 20)

typedef enum { K_INT, K_SIZE, K_U64, K_DOUBLE, K_BOOL, K_PATH, K_MODE, K_SOURCE, K_LORA_MODE, K_TARGETS,
               K_STRATEGY, K_UNSIGNED, K_PARTITION, K_LABEL, K_AGGREGATION } ktype_t;

/* Types whose JSON value is a string. */
static int is_string_type(ktype_t t) { return (t >= K_PATH && t <= K_STRATEGY) || t == K_PARTITION || t == K_LABEL ||
                                              t == K_AGGREGATION; }

typedef struct {
    const char *section, *key;
    ktype_t type;
    size_t off;
    double lo, hi;
} key_t_;

#define F(field) offsetof(plait_sim_config_t, field)
/* Grouped by section: config_to_json writes a section each time it changes. */
static const key_t_ KEYS[] = {
    {"run", "mode", K_MODE, F(mode), 0, 0},
    {"run", "seed", K_U64, F(seed), 0, 0},
    {"run", "threads", K_INT, F(threads), 1, 256},
    {"run", "out", K_PATH, F(out_dir), 0, 0},
    {"run", "model", K_PATH, F(model), 0, 0},
    {"run", "tokenizer", K_PATH, F(tokenizer), 0, 0},
    {"run", "progress", K_INT, F(progress), -1, 1},
    {"run", "quiet", K_BOOL, F(quiet), 0, 0},
    {"population", "source", K_SOURCE, F(source), 0, 0},
    {"population", "data", K_PATH, F(data), 0, 0},
    {"population", "min_lines", K_SIZE, F(min_lines), 1, 1e9},
    {"population", "train_fraction", K_DOUBLE, F(train_fraction), 0.01, 0.99},
    {"population", "max_clients", K_SIZE, F(max_clients), 0, 1e9},
    {"population", "partition", K_PARTITION, F(partition), 0, 0},
    {"population", "alpha", K_DOUBLE, F(partition_alpha), 1e-3, 1e6},
    {"population", "clients", K_SIZE, F(partition_clients), 0, 1e7},
    {"population", "label", K_LABEL, F(partition_label), 0, 0},
    {"lora", "mode", K_LORA_MODE, F(lora_mode), 0, 0},
    {"lora", "rank", K_INT, F(rank), 1, PLAIT_LORA_MAX_RANK},
    {"lora", "alpha", K_DOUBLE, F(alpha), 1e-6, 1e6},
    {"lora", "targets", K_TARGETS, F(targets), 0, 0},
    {"lora", "fedsa_lambda", K_DOUBLE, F(fedsa_lambda), 0, 1e6},
    {"local", "steps", K_INT, F(local_steps), 1, 100000},
    {"local", "epochs", K_DOUBLE, F(local_epochs), 0, 1000},
    {"local", "max_steps", K_INT, F(max_local_steps), 1, 100000},
    {"local", "batch", K_INT, F(batch), 1, 1024},
    {"local", "seq_len", K_INT, F(seq_len), 1, 4096},
    {"local", "lr", K_DOUBLE, F(lr), 0, 10},
    {"local", "prox_mu", K_DOUBLE, F(prox_mu), 0, 1e4},
    {"rounds", "count", K_INT, F(rounds), 1, 1000000},
    {"rounds", "clients_per_round", K_SIZE, F(clients_per_round), 1, 1e6},
    {"rounds", "min_clients", K_SIZE, F(min_clients), 0, 1e6},
    {"rounds", "overselect", K_DOUBLE, F(overselect), 1, 100},
    {"rounds", "deadline_s", K_DOUBLE, F(deadline_s), 1e-6, 1e9},
    {"server", "strategy", K_STRATEGY, F(strategy), 0, 0},
    {"server", "lr", K_DOUBLE, F(server_lr), 0, 100},
    {"server", "momentum", K_DOUBLE, F(server_momentum), 0, 0.999},
    {"server", "aggregation", K_AGGREGATION, F(aggregation), 0, 0},
    {"server", "trim_fraction", K_DOUBLE, F(trim_fraction), 0, 0.49},
    {"privacy", "clip", K_DOUBLE, F(clip), 1e-9, 1e9},
    {"privacy", "noise_multiplier", K_DOUBLE, F(noise_multiplier), 0, 1e6},
    {"privacy", "local_noise", K_DOUBLE, F(local_noise), 0, 1e6},
    {"privacy", "quant_bits", K_UNSIGNED, F(quant_bits), PLAIT_QUANT_MIN_BITS, 24},
    {"privacy", "delta", K_DOUBLE, F(delta), 0, 0.5},
    {"privacy", "weight_cap", K_DOUBLE, F(weight_cap), 1, 1e12},
    {"privacy", "secure_agg", K_BOOL, F(secure_agg), 0, 0},
    {"privacy", "secure_agg_dropout", K_DOUBLE, F(secure_agg_dropout), 0, 0.99},
    {"fleet", "availability_min", K_DOUBLE, F(avail_min), 0, 1},
    {"fleet", "availability_max", K_DOUBLE, F(avail_max), 0, 1},
    {"fleet", "dropout", K_DOUBLE, F(dropout), 0, 1},
    {"fleet", "speed_median", K_DOUBLE, F(speed_median), 1e-9, 1e12},
    {"fleet", "speed_sigma", K_DOUBLE, F(speed_sigma), 0, 10},
    {"fleet", "bandwidth_median", K_DOUBLE, F(bw_median), 1e-9, 1e15},
    {"fleet", "bandwidth_sigma", K_DOUBLE, F(bw_sigma), 0, 10},
    {"fleet", "upload_ratio", K_DOUBLE, F(upload_ratio), 1e-6, 1e6},
    {"eval", "clients", K_SIZE, F(eval_clients), 0, 1e9},
    {"eval", "windows", K_SIZE, F(eval_windows), 0, 1e9},
    {"eval", "personal_clients", K_SIZE, F(personal_clients), 0, 1e9},
    {"eval", "personal_steps", K_INT, F(personal_steps), 0, 100000},
    {"eval", "personal_val", K_DOUBLE, F(personal_val), 0.05, 0.5},
    {"eval", "personal_lambda", K_DOUBLE, F(personal_lambda), 0, 1e6},
    {"eval", "personal_val_every", K_INT, F(personal_val_every), 1, 100000},
    {"eval", "personal_rounds", K_INT, F(personal_rounds), 0, 1000000},
    {"eval", "personal_lr", K_DOUBLE, F(personal_lr), 0, 10},
    {"eval", "personal_bias_steps", K_INT, F(personal_bias_steps), 0, 1000000},
    {"eval", "personal_bias_lr", K_DOUBLE, F(personal_bias_lr), 1e-6, 10},
    {"eval", "personal_bias_l2", K_DOUBLE, F(personal_bias_l2), 0, 1e6},
    {"eval", "personal_knn_bytes", K_SIZE, F(personal_knn_bytes), 0, 1e12},
    {"eval", "personal_guard_z", K_DOUBLE, F(personal_guard_z), 0, 100},
    {"eval", "every", K_INT, F(eval_every), 1, 1000000},
    {"eval", "centralized", K_BOOL, F(centralized), 0, 0},
    {"eval", "centralized_only", K_BOOL, F(centralized_only), 0, 0},
    {"eval", "centralized_steps", K_INT, F(centralized_steps), 0, 1000000000},
    {"eval", "centralized_batch", K_INT, F(centralized_batch), 0, 4096},
};
#undef F
#define N_KEYS (sizeof(KEYS) / sizeof(KEYS[0]))

static const char *SOURCES[] = {"shakespeare", "dir", "jsonl"};

static void set_path(char *dst, const char *dir, const char *name)
{
    snprintf(dst, PLAIT_SIM_PATH_MAX, "%s/%s", dir, name);
}

void plait_sim_config_default(plait_sim_config_t *c, const char *assets)
{
    memset(c, 0, sizeof(*c));
    if (!assets) assets = "../shared/assets";
    snprintf(c->mode, sizeof(c->mode), "inprocess"); /* "network": sim/net.c */
    c->seed = 1;                    /* one seed fixes everything */
    c->threads = 2;                 /* the 2-core CI machine */
    snprintf(c->out_dir, sizeof(c->out_dir), "sim-out");
    set_path(c->model, assets, "stories260K.bin");
    set_path(c->tokenizer, assets, "tok512.bin");
    c->progress = -1;               /* bar on a terminal, lines otherwise */
    c->quiet = false;
    c->source = PLAIT_SIM_SRC_SHAKESPEARE;
    set_path(c->data, assets, "tinyshakespeare.txt");
    c->min_lines = 20;              /* 163 speakers of tinyshakespeare */
    c->train_fraction = 0.8;        /* McMahan et al. 2017's 80/20 split of each role */
    c->max_clients = 0;             /* all */
    snprintf(c->partition, sizeof(c->partition), "natural");
    c->partition_alpha = 0.5;       /* a common non-IID setting (Hsu et al. 2019 sweep 0.05..100) */
    c->partition_clients = 0;       /* as many as authors */
    snprintf(c->partition_label, sizeof(c->partition_label), "user");
    c->lora_mode = PLAIT_LORA_MODE_FFA; /* exact aggregation, half the upload */
    c->rank = 8;
    c->alpha = 16;
    c->targets = (1u << PLAIT_WQ) | (1u << PLAIT_WV);
    c->local_steps = 10;            /* FedAvg with several local steps */
    c->local_epochs = 0;            /* steps, not epochs */
    c->max_local_steps = 200;
    c->batch = 4;
    c->seq_len = 32;                /* small windows: fast on 2 cores */
    c->lr = 3e-3;
    c->rounds = 20;
    c->clients_per_round = 10;
    c->min_clients = 0;             /* ceil(K / 2) */
    c->overselect = 1.3;            /* absorbs dropouts and stragglers */
    c->deadline_s = 15;             /* ~11% of clients miss it at the default speeds and 10 steps */
    snprintf(c->strategy, sizeof(c->strategy), "fedavg");
    c->server_lr = 0;               /* the strategy's default */
    c->server_momentum = 0.9;       /* Hsu et al. 2019's FedAvgM; Reddi et al.'s β1 */
    c->prox_mu = 0;                 /* fedprox's default (0.01) */
    snprintf(c->aggregation, sizeof(c->aggregation), "mean");
    c->trim_fraction = 0.1;
    c->clip = 1.0;
    c->noise_multiplier = 0;        /* no central DP */
    c->local_noise = 0;
    c->quant_bits = 16;
    c->secure_agg = false;          /* SecAgg+ per virtual client costs time: opt in */
    c->secure_agg_dropout = 0;      /* 0: 1 - min cohort / selected */
    c->delta = 0;                   /* 1 / N^1.1 */
    c->weight_cap = 10000;          /* tokens */
    c->avail_min = 0.5;
    c->avail_max = 1.0;
    c->dropout = 0.05;
    c->speed_median = 200;          /* tokens/s of a throttled phone core */
    c->speed_sigma = 0.7;
    c->bw_median = 1e6;             /* 1 MB/s down */
    c->bw_sigma = 1.0;
    c->upload_ratio = 0.25;
    c->eval_clients = 0;            /* all */
    c->eval_windows = 8;            /* 256 tokens per client at T = 32 */
    c->personal_clients = 1000000000; /* all: like for like with the global loss */
    c->personal_steps = 0;          /* = 16 · local steps, early-stopped on validation */
    c->personal_val = 0.15;         /* the last 15% of each client's training tokens validate */
    c->personal_lambda = 0;         /* Ditto off */
    c->personal_val_every = 10;
    c->personal_rounds = 0;         /* round 0 and the last: all clients cost minutes per evaluation */
    c->personal_lr = 3e-4;          /* tuned (docs/researcher-guide.md, experiment 4) */
    c->personal_bias_steps = 100;   /* a personal output bias on top (personal.h), experiment 4 */
    c->personal_bias_lr = 0.05;
    c->personal_bias_l2 = 3e-3;   /* 1e-3: a 0.08-point better mean, a worse tail (experiment 4) */
    c->personal_knn_bytes = (size_t)8 << 20; /* a kNN memory of the device's text on top (knn.h), experiment 4 */
    c->personal_guard_z = 2;      /* the bias and the memory must beat validation by 2 standard errors */
    c->fedsa_lambda = 0;
    c->eval_every = 1;
    c->centralized = false;         /* no centralized baseline */
    c->centralized_only = false;
    c->centralized_steps = 0;       /* = 10,000: a strong reference, tuned for itself */
    c->centralized_batch = 16;
}

int plait_sim_config_validate(const plait_sim_config_t *c)
{
    if (!c) return plait_fail(PLAIT_EINVAL, "config: NULL");
    if (strcmp(c->mode, "inprocess") != 0 && strcmp(c->mode, "network") != 0)
        return plait_fail(PLAIT_EINVAL, "run.mode: must be \"inprocess\" or \"network\"");
    if (plait_strategy_find(c->strategy) == NULL) {
        char names[512];
        plait_strategy_names(names, sizeof(names));
        return plait_fail(PLAIT_EINVAL, "server.strategy: '%s' is not registered (known: %s)", c->strategy, names);
    }
    plait_server_opt_kind_t kind;
    if (strcmp(c->mode, "network") == 0 && strcmp(c->strategy, "fedprox") != 0 &&
        plait_server_opt_kind_parse(c->strategy, &kind) != 0)
        return plait_fail(PLAIT_EINVAL, "server.strategy %s runs in-process only: network mode's aggregator offers "
                                        "fedavg, fedadagrad, fedadam, fedyogi, fedavgm and fedprox", c->strategy);
    if (c->prox_mu > 0 && strcmp(c->strategy, "fedprox") != 0)
        return plait_fail(PLAIT_EINVAL, "local.prox_mu is FedProx's: set server.strategy = \"fedprox\" (it is %s)",
                          c->strategy);
    for (size_t i = 0; i < N_KEYS; i++) {
        const key_t_ *k = &KEYS[i];
        const char *p = (const char *)c + k->off;
        double v;
        switch (k->type) {
        case K_INT: v = *(const int *)(const void *)p; break;
        case K_SIZE: v = (double)*(const size_t *)(const void *)p; break;
        case K_UNSIGNED: v = *(const unsigned *)(const void *)p; break;
        case K_DOUBLE: v = *(const double *)(const void *)p; break;
        case K_PATH:
            if (p[0] == '\0') return plait_fail(PLAIT_EINVAL, "%s.%s: empty path", k->section, k->key);
            continue;
        default: continue;
        }
        if (!isfinite(v) || v < k->lo || v > k->hi)
            return plait_fail(PLAIT_EINVAL, "%s.%s: %g is outside %g..%g", k->section, k->key, v, k->lo, k->hi);
    }
    if ((unsigned)c->source > PLAIT_SIM_SRC_JSONL) return plait_fail(PLAIT_EINVAL, "population.source: unknown");
    if (c->lora_mode != PLAIT_LORA_MODE_FFA && c->lora_mode != PLAIT_LORA_MODE_FEDIT &&
        c->lora_mode != PLAIT_LORA_MODE_FEDSA)
        return plait_fail(PLAIT_EINVAL, "lora.mode: unknown");
    if (c->targets == 0 || c->targets >= (1u << PLAIT_NPROJ))
        return plait_fail(PLAIT_EINVAL, "lora.targets: no valid projection");
    if (strcmp(c->partition, "natural") != 0 && strcmp(c->partition, "dirichlet") != 0)
        return plait_fail(PLAIT_EINVAL, "population.partition: must be natural or dirichlet");
    if (strcmp(c->partition_label, "user") != 0 && strcmp(c->partition_label, "kind") != 0)
        return plait_fail(PLAIT_EINVAL, "population.label: must be user or kind");
    if (strcmp(c->partition_label, "kind") == 0 && c->source != PLAIT_SIM_SRC_JSONL)
        return plait_fail(PLAIT_EINVAL, "population.label \"kind\" needs population.source \"jsonl\"");
    if (c->avail_min > c->avail_max)
        return plait_fail(PLAIT_EINVAL, "fleet.availability_min exceeds fleet.availability_max");
    if (c->avail_max <= 0) return plait_fail(PLAIT_EINVAL, "fleet.availability_max must be > 0");
    if (c->min_clients > c->clients_per_round)
        return plait_fail(PLAIT_EINVAL, "rounds.min_clients exceeds rounds.clients_per_round");
    if (c->local_noise > 0 && c->noise_multiplier > 0)
        return plait_fail(PLAIT_EINVAL, "privacy: choose local_noise or noise_multiplier (central DP), not both");
    if (strcmp(c->aggregation, "mean") != 0 && strcmp(c->aggregation, "median") != 0 &&
        strcmp(c->aggregation, "trimmed_mean") != 0)
        return plait_fail(PLAIT_EINVAL, "server.aggregation: must be mean, median or trimmed_mean");
    if (strcmp(c->aggregation, "mean") != 0 && c->secure_agg)
        return plait_fail(PLAIT_EINVAL, "server.aggregation = %s needs each client's update, which secure aggregation "
                                        "hides: set privacy.secure_agg = false", c->aggregation);
    if (strcmp(c->aggregation, "mean") != 0 && c->noise_multiplier > 0)
        return plait_fail(PLAIT_EINVAL, "server.aggregation = %s with central DP: the accountant assumes a noised sum "
                                        "of clipped updates; use mean", c->aggregation);
    double want = ceil((double)c->clients_per_round * c->overselect);
    unsigned ring;
    size_t min_cohort = c->min_clients ? c->min_clients : (c->clients_per_round + 1) / 2;
    if (c->secure_agg && 2.0 * (double)min_cohort <= want)
        return plait_fail(PLAIT_EINVAL,
                          "privacy.secure_agg: a minimum cohort of %zu out of %g selected leaves no secure threshold "
                          "(SecAgg+ needs more than half the selected clients to survive); raise rounds.min_clients",
                          min_cohort, want);
    if (c->secure_agg && want <= PLAIT_SECAGG_MAX_COHORT &&
        plait_secagg_mask_bits(c->quant_bits, (uint32_t)want, &ring) != 0)
        return plait_fail(PLAIT_EINVAL, "privacy.secure_agg: %u quantization bits and %g selected clients need a "
                          "ring wider than 32 bits; lower privacy.quant_bits", c->quant_bits, want);
    if (want > (double)plait_quant_max_cohort(c->quant_bits))
        return plait_fail(PLAIT_EINVAL, "rounds: %g selected clients could wrap %u-bit sums; lower privacy.quant_bits",
                          want, c->quant_bits);
    return 0;
}

/* ---- JSON -------------------------------------------------------------------- */

static int set_key(plait_sim_config_t *c, const key_t_ *k, const plait_json_t *v)
{
    char *p = (char *)c + k->off;
    const char *s = NULL;
    if (is_string_type(k->type)) {
        s = plait_json_string(v, NULL);
        if (!s) return plait_fail(PLAIT_EPROTO, "config %s.%s: expected a string", k->section, k->key);
    }
    switch (k->type) {
    case K_INT:
    case K_SIZE:
    case K_U64:
    case K_UNSIGNED: {
        int64_t x;
        if (plait_json_int64(v, &x) != 0)
            return plait_fail(PLAIT_EPROTO, "config %s.%s: expected an integer", k->section, k->key);
        if (k->type == K_U64) {
            if (x < 0) return plait_fail(PLAIT_EPROTO, "config %s.%s: must be >= 0", k->section, k->key);
            *(uint64_t *)(void *)p = (uint64_t)x;
            return 0;
        }
        if ((double)x < k->lo || (double)x > k->hi)
            return plait_fail(PLAIT_EPROTO, "config %s.%s: %lld is outside %g..%g", k->section, k->key, (long long)x,
                              k->lo, k->hi);
        if (k->type == K_INT) *(int *)(void *)p = (int)x;
        else if (k->type == K_SIZE) *(size_t *)(void *)p = (size_t)x;
        else *(unsigned *)(void *)p = (unsigned)x;
        return 0;
    }
    case K_DOUBLE: {
        if (plait_json_type(v) != PLAIT_JSON_NUMBER)
            return plait_fail(PLAIT_EPROTO, "config %s.%s: expected a number", k->section, k->key);
        double x = plait_json_number(v);
        if (!(x >= k->lo && x <= k->hi))
            return plait_fail(PLAIT_EPROTO, "config %s.%s: %g is outside %g..%g", k->section, k->key, x, k->lo, k->hi);
        *(double *)(void *)p = x;
        return 0;
    }
    case K_BOOL: {
        bool b;
        if (plait_json_bool(v, &b) != 0)
            return plait_fail(PLAIT_EPROTO, "config %s.%s: expected true or false", k->section, k->key);
        *(bool *)(void *)p = b;
        return 0;
    }
    case K_PATH:
        if (strlen(s) == 0 || strlen(s) >= PLAIT_SIM_PATH_MAX)
            return plait_fail(PLAIT_EPROTO, "config %s.%s: path empty or too long", k->section, k->key);
        memset(p, 0, PLAIT_SIM_PATH_MAX);
        memcpy(p, s, strlen(s) + 1);
        return 0;
    case K_MODE:
        if (strcmp(s, "inprocess") != 0 && strcmp(s, "network") != 0)
            return plait_fail(PLAIT_EPROTO, "config run.mode: must be \"inprocess\" or \"network\"");
        snprintf(c->mode, sizeof(c->mode), "%s", s);
        return 0;
    case K_SOURCE:
        for (int i = 0; i < 3; i++)
            if (strcmp(s, SOURCES[i]) == 0) {
                c->source = (plait_sim_source_t)i;
                return 0;
            }
        return plait_fail(PLAIT_EPROTO, "config population.source: must be shakespeare, dir or jsonl");
    case K_LORA_MODE:
        if (plait_lora_mode_parse(s, &c->lora_mode) != 0)
            return plait_fail(PLAIT_EPROTO, "config lora.mode: must be ffa, fedit or fedsa");
        return 0;
    case K_TARGETS:
        if (plait_lora_parse_targets(s, &c->targets) != 0)
            return plait__sim_wrap(PLAIT_EPROTO, "config lora.targets");
        return 0;
    case K_STRATEGY:
        if (strlen(s) >= sizeof(c->strategy) || plait_strategy_find(s) == NULL)
            return plait__sim_wrap(PLAIT_EPROTO, "config server.strategy");
        snprintf(c->strategy, sizeof(c->strategy), "%s", s);
        return 0;
    case K_PARTITION:
        if (strcmp(s, "natural") != 0 && strcmp(s, "dirichlet") != 0)
            return plait_fail(PLAIT_EPROTO, "config population.partition: must be natural or dirichlet");
        snprintf(c->partition, sizeof(c->partition), "%s", s);
        return 0;
    case K_AGGREGATION:
        if (strcmp(s, "mean") != 0 && strcmp(s, "median") != 0 && strcmp(s, "trimmed_mean") != 0)
            return plait_fail(PLAIT_EPROTO, "config server.aggregation: must be mean, median or trimmed_mean");
        snprintf(c->aggregation, sizeof(c->aggregation), "%s", s);
        return 0;
    case K_LABEL:
        if (strcmp(s, "user") != 0 && strcmp(s, "kind") != 0)
            return plait_fail(PLAIT_EPROTO, "config population.label: must be user or kind");
        snprintf(c->partition_label, sizeof(c->partition_label), "%s", s);
        return 0;
    }
    return plait_fail(PLAIT_EINTERNAL, "config: key type");
}

int plait_sim_config_apply_json(plait_sim_config_t *c, const char *buf, size_t len)
{
    plait_json_t *root = NULL;
    int rc = plait_json_parse(buf, len, &root);
    if (rc != 0) return plait__sim_wrap(rc, "config");
    if (plait_json_type(root) != PLAIT_JSON_OBJECT) {
        plait_json_free(root);
        return plait_fail(PLAIT_EPROTO, "config: the document must be an object of sections");
    }
    for (size_t i = 0; i < plait_json_len(root) && rc == 0; i++) {
        const char *sec = plait_json_key_at(root, i);
        const plait_json_t *obj = plait_json_at(root, i);
        int known = 0;
        for (size_t j = 0; j < N_KEYS; j++) known |= strcmp(KEYS[j].section, sec) == 0;
        if (!known) {
            rc = plait_fail(PLAIT_EPROTO, "config: unknown section \"%.64s\"", sec);
            break;
        }
        if (plait_json_type(obj) != PLAIT_JSON_OBJECT) {
            rc = plait_fail(PLAIT_EPROTO, "config %.64s: expected an object", sec);
            break;
        }
        for (size_t m = 0; m < plait_json_len(obj) && rc == 0; m++) {
            const char *key = plait_json_key_at(obj, m);
            const key_t_ *k = NULL;
            for (size_t j = 0; j < N_KEYS; j++)
                if (strcmp(KEYS[j].section, sec) == 0 && strcmp(KEYS[j].key, key) == 0) k = &KEYS[j];
            if (!k) rc = plait_fail(PLAIT_EPROTO, "config: unknown key %.64s.%.64s", sec, key);
            else rc = set_key(c, k, plait_json_at(obj, m));
        }
    }
    plait_json_free(root);
    return rc;
}

int plait_sim_config_set(plait_sim_config_t *c, const char *assignment)
{
    const char *eq = assignment ? strchr(assignment, '=') : NULL, *dot = assignment ? strchr(assignment, '.') : NULL;
    if (!eq || !dot || dot > eq)
        return plait_fail(PLAIT_EINVAL, "--set: '%.64s' is not section.key=value", assignment ? assignment : "");
    const key_t_ *k = NULL;
    size_t sl = (size_t)(dot - assignment), kl = (size_t)(eq - dot - 1);
    for (size_t j = 0; j < N_KEYS; j++)
        if (strlen(KEYS[j].section) == sl && strncmp(KEYS[j].section, assignment, sl) == 0 &&
            strlen(KEYS[j].key) == kl && strncmp(KEYS[j].key, dot + 1, kl) == 0)
            k = &KEYS[j];
    if (!k) return plait_fail(PLAIT_EINVAL, "--set: unknown key %.*s (see config.json of a run)", (int)(eq - assignment), assignment);
    /* The value as a JSON text: strings are quoted here, everything else is read as written. */
    const char *v = eq + 1;
    plait_buf_t b;
    plait_buf_init(&b, CONFIG_MAX_BYTES);
    if (is_string_type(k->type)) plait_buf_json_string(&b, v, strlen(v));
    else plait_buf_printf(&b, "%s", v);
    int rc = plait_buf_status(&b);
    plait_json_t *root = NULL;
    if (rc == 0 && (rc = plait_json_parse(b.data ? b.data : "", b.len, &root)) != 0)
        rc = plait_fail(PLAIT_EINVAL, "--set %s.%s: '%.40s' is not a valid value", k->section, k->key, v);
    if (rc == 0 && (rc = set_key(c, k, root)) != 0) {
        char tmp[512];
        snprintf(tmp, sizeof(tmp), "%s", plait_errmsg());
        rc = plait_fail(PLAIT_EINVAL, "--set: %s", strncmp(tmp, "config ", 7) == 0 ? tmp + 7 : tmp);
    }
    plait_json_free(root);
    plait_buf_free(&b);
    return rc;
}

int plait_sim_config_load(plait_sim_config_t *c, const char *path)
{
    char label[PLAIT_SIM_PATH_MAX + 16];
    snprintf(label, sizeof(label), "config %s", path);
    FILE *f = NULL;
    int frc = plait_file_fopen(path, label, &f); /* regular files only: a FIFO is refused, not waited on */
    if (frc != 0) return frc;
    struct stat sb;
    if (fstat(fileno(f), &sb) != 0 || !S_ISREG(sb.st_mode)) {
        fclose(f);
        return plait_fail(PLAIT_EIO, "config %s: not a regular file", path);
    }
    if ((size_t)sb.st_size > CONFIG_MAX_BYTES) {
        fclose(f);
        return plait_fail(PLAIT_ETOOBIG, "config %s: larger than %zu bytes", path, CONFIG_MAX_BYTES);
    }
    size_t n = (size_t)sb.st_size;
    char *buf = malloc(n + 1);
    if (!buf) {
        fclose(f);
        return plait_fail(PLAIT_ENOMEM, "config buffer");
    }
    size_t got = fread(buf, 1, n, f);
    fclose(f);
    if (got != n) {
        free(buf);
        return plait_fail(PLAIT_EIO, "config %s: short read", path);
    }
    int rc = plait_sim_config_apply_json(c, buf, n);
    free(buf);
    if (rc != 0) return plait__sim_wrap(rc, path);
    return 0;
}

/* Lexically normalize an absolute path into out ("/a/b/../c/." -> "/a/c"); 0 or -1 if it does not fit. */
static int norm_abs(const char *p, char *out, size_t cap)
{
    size_t n = 0;
    out[0] = '\0';
    while (*p) {
        while (*p == '/') p++;
        const char *e = strchr(p, '/');
        size_t l = e ? (size_t)(e - p) : strlen(p);
        if (l == 0 || (l == 1 && p[0] == '.')) {
        } else if (l == 2 && p[0] == '.' && p[1] == '.') {
            while (n > 0 && out[n - 1] != '/') n--;
            if (n > 0) n--;
            out[n] = '\0';
        } else {
            if (n + 1 + l + 1 > cap) return -1;
            out[n++] = '/';
            memcpy(out + n, p, l);
            n += l;
            out[n] = '\0';
        }
        p += l;
    }
    if (n == 0) snprintf(out, cap, "/");
    return 0;
}

/* A path as written in config.json: an absolute one (e.g. the built-in assets folder) that shares a folder with
 * the current folder is written relative to it, as --config reads paths; others as they are. */
static void path_for_json(const char *p, char *out, size_t cap)
{
    char cwd[PLAIT_SIM_PATH_MAX], a[PLAIT_SIM_PATH_MAX], w[PLAIT_SIM_PATH_MAX];
    snprintf(out, cap, "%s", p);
    if (p[0] != '/' || !getcwd(cwd, sizeof(cwd)) || norm_abs(p, a, sizeof(a)) != 0 ||
        norm_abs(cwd, w, sizeof(w)) != 0)
        return;
    /* The longest common prefix of whole components. */
    size_t i = 0, last = 0;
    while (a[i] && a[i] == w[i]) {
        i++;
        if (a[i] == '/' || (a[i] == '\0' && (w[i] == '/' || w[i] == '\0'))) last = i;
    }
    if (w[i] == '\0' && (a[i] == '/' || a[i] == '\0')) last = i;
    if (strcmp(w, "/") == 0) last = 0;
    int ups = 0;
    for (size_t k = last; w[k] && strcmp(w, "/") != 0; k++) ups += w[k] == '/';
    if (last == 0) return; /* nothing in common but the root: keep it absolute */
    const char *rest = a + last;
    while (*rest == '/') rest++;
    size_t n = 0;
    for (int u = 0; u < ups && n + 3 < cap; u++) n += (size_t)snprintf(out + n, cap - n, "../");
    snprintf(out + n, cap - n, "%s", *rest ? rest : ".");
}

int plait_sim_config_to_json(const plait_sim_config_t *c, plait_buf_t *b)
{
    const char *sec = NULL;
    plait_buf_append(b, "{", 1);
    for (size_t i = 0; i < N_KEYS; i++) {
        const key_t_ *k = &KEYS[i];
        const char *p = (const char *)c + k->off;
        if (!sec || strcmp(sec, k->section) != 0) {
            plait_buf_printf(b, "%s\n  \"%s\": {", sec ? "\n  }," : "", k->section);
            sec = k->section;
        } else {
            plait_buf_append(b, ",", 1);
        }
        plait_buf_printf(b, "\n    \"%s\": ", k->key);
        char tg[128];
        switch (k->type) {
        case K_INT: plait_buf_printf(b, "%d", *(const int *)(const void *)p); break;
        case K_SIZE: plait_buf_printf(b, "%zu", *(const size_t *)(const void *)p); break;
        case K_UNSIGNED: plait_buf_printf(b, "%u", *(const unsigned *)(const void *)p); break;
        case K_U64: plait_buf_printf(b, "%llu", (unsigned long long)*(const uint64_t *)(const void *)p); break;
        case K_DOUBLE: plait_buf_json_number(b, *(const double *)(const void *)p); break;
        case K_BOOL: plait_buf_printf(b, "%s", *(const bool *)(const void *)p ? "true" : "false"); break;
        case K_PATH: {
            char rel[PLAIT_SIM_PATH_MAX];
            path_for_json(p, rel, sizeof(rel));
            plait_buf_json_string(b, rel, strlen(rel));
            break;
        }
        case K_MODE: plait_buf_json_string(b, c->mode, strlen(c->mode)); break;
        case K_SOURCE: plait_buf_printf(b, "\"%s\"", SOURCES[c->source]); break;
        case K_LORA_MODE: plait_buf_printf(b, "\"%s\"", plait_lora_mode_name(c->lora_mode)); break;
        case K_TARGETS:
            plait_lora_format_targets(c->targets, tg, sizeof(tg));
            plait_buf_printf(b, "\"%s\"", tg);
            break;
        case K_STRATEGY: plait_buf_json_string(b, c->strategy, strlen(c->strategy)); break;
        case K_PARTITION: plait_buf_printf(b, "\"%s\"", c->partition); break;
        case K_LABEL: plait_buf_printf(b, "\"%s\"", c->partition_label); break;
        case K_AGGREGATION: plait_buf_printf(b, "\"%s\"", c->aggregation); break;
        }
    }
    plait_buf_append(b, "\n  }\n}\n", 7);
    return plait_buf_status(b);
}
