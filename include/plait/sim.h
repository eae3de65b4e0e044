/*
 * sim.h: plait-sim, a fleet of virtual clients driven through the real
 * client and aggregator code in one process.
 *
 * Pieces:
 *   - the experiment config (plait_sim_config_t): defaults < JSON file <
 *     flags; every key is documented in docs/researcher-guide.md. The same
 *     config is meant to drive the network mode (a real plait-aggregator and
 *     agents over loopback TLS) once the federation service exists: the
 *     "rounds", "server", "privacy" and "lora" sections become the
 *     aggregator's task, the "fleet" and "local" sections the agents'
 *     behaviour. Mode "network" runs it against a real plait-aggregator
 *     and plait-agent processes on 127.0.0.1 (sim/net.c).
 *   - the population (plait_sim_pop_t): virtual clients from a corpus split
 *     by author (tinyshakespeare by speaker, a folder of .txt files, or JSON
 *     lines with a "user" field). Each client's records are written once into
 *     its own device store (sqlite, store.h) in the work directory, tagged
 *     kind "train" or "heldout" (the first train_fraction of its lines in
 *     order, the rest held out). Only small per-client counts stay in memory.
 *   - the fleet model (plait_sim_fleet_*): per-client compute speed,
 *     bandwidth and availability, per-round dropout and arrival time, drawn
 *     from the master seed, in simulated seconds.
 *   - the run (plait_sim_run): rounds of sampling, local training on a
 *     thread pool (one trainer per worker), the client update pipeline
 *     (diff → clip → local noise → quantize) and the round core
 *     (round.h); metrics per round to CSV, JSON lines, an SVG chart and a
 *     markdown report.
 *
 * Reproducibility: every random draw comes from a ChaCha20 stream keyed by
 * the master seed and numbered by (purpose, round, client), so a run replays
 * exactly; local training is single-threaded per client and quantized
 * updates are summed as exact integers, so the metrics and the final
 * adapter do not depend on the number of threads.
 *
 * Centralized baseline (config "centralized"): one adapter with the same
 * LoRA config, trained with the clients' optimizer, lr, batch and window on
 * the pooled training splits of every client (read from the same stores),
 * for as many steps as the federation's clients take in total, and
 * evaluated on the same held-out data as the global adapter: the reference
 * the global adapter is meant to approach.
 *
 * Thread-safety: a run uses its own threads; call plait_sim_run from one thread.
 */
#ifndef PLAIT_SIM_H
#define PLAIT_SIM_H

#include <stdbool.h>

#include "plait/agg.h"
#include "plait/plait.h"
#include "plait/strategy.h"
#include "plait/update.h"

#define PLAIT_SIM_PATH_MAX 1024

typedef enum {
    PLAIT_SIM_SRC_SHAKESPEARE = 0, /**< tinyshakespeare-style: blank-line speeches, "NAME:" first line */
    PLAIT_SIM_SRC_DIR = 1,         /**< a folder of .txt files, one client per file, blank-line records */
    PLAIT_SIM_SRC_JSONL = 2        /**< JSON lines with "user" and "text": one client per user */
} plait_sim_source_t;

/** The experiment. Every field's default is in plait_sim_config_default(). */
typedef struct {
    /* run */
    char mode[16];                   /**< "inprocess" (default) or "network" (real plait-aggregator and
                                          plait-agent processes over loopback TLS, sim/net.c) */
    uint64_t seed;                   /**< master seed (default 1) */
    int threads;                     /**< worker threads, 1..256 (default 2) */
    char out_dir[PLAIT_SIM_PATH_MAX]; /**< outputs and the clients' stores (default "sim-out") */
    char model[PLAIT_SIM_PATH_MAX];  /**< llama2.c checkpoint (default <assets>/stories260K.bin) */
    char tokenizer[PLAIT_SIM_PATH_MAX]; /**< tokenizer (default <assets>/tok512.bin) */
    int progress;                    /**< -1 auto (bar on a TTY), 0 plain lines, 1 bar (default -1) */
    bool quiet;                      /**< no per-round output (default false) */
    /* population */
    plait_sim_source_t source;       /**< default SHAKESPEARE */
    char data[PLAIT_SIM_PATH_MAX];   /**< corpus file or folder (default <assets>/tinyshakespeare.txt) */
    size_t min_lines;                /**< clients with fewer lines are left out (default 20) */
    double train_fraction;           /**< first fraction of each client's lines trains (default 0.8) */
    size_t max_clients;              /**< keep at most this many clients, first ones first; 0 = all (default 0) */
    /* LoRA */
    plait_lora_mode_t lora_mode;     /**< default FFA */
    int rank;                        /**< default 8 */
    double alpha;                    /**< default 16 (scaling alpha/rank = 2) */
    uint32_t targets;                /**< projection mask (default wq,wv) */
    /* local training */
    int local_steps;                 /**< optimizer steps per round (default 10) */
    double local_epochs;             /**< > 0: steps = ceil(epochs · train tokens / (batch·seq_len)),
                                          capped at max_local_steps (default 0: use local_steps) */
    int max_local_steps;             /**< cap for epochs (default 200) */
    int batch;                       /**< B (default 4) */
    int seq_len;                     /**< T (default 32) */
    double lr;                       /**< client AdamW learning rate (default 3e-3) */
    /* rounds */
    int rounds;                      /**< default 20 */
    size_t clients_per_round;        /**< target cohort K (default 10) */
    size_t min_clients;              /**< minimum cohort; 0 = ceil(K/2) (default 0) */
    double overselect;               /**< select ceil(K·overselect) (default 1.3) */
    double deadline_s;               /**< simulated seconds from task to upload deadline (default 15) */
    /* server */
    char strategy[32];               /**< a strategy of strategy.h: fedavg, fedadagrad, fedadam, fedyogi, fedavgm,
                                          fedprox or one registered in C (default "fedavg") */
    double server_lr;                /**< 0 = the strategy's default (1 for FedAvg(M), 0.01 adaptive) (default 0) */
    double server_momentum;          /**< fedavgm's server momentum, the adaptive ones' β1, in [0, 1) (default 0.9) */
    double prox_mu;                  /**< fedprox's proximal weight mu; 0 = its default 0.01 (default 0) */
    char aggregation[16];            /**< "mean" (default), "median" or "trimmed_mean": the round core's robust
                                          estimators over the clients' unweighted updates (not with secure_agg
                                          or central DP) */
    double trim_fraction;            /**< trimmed_mean: fraction dropped at each end per coordinate (default 0.1) */
    /* privacy and the update pipeline */
    double clip;                     /**< client L2 clip S (default 1.0) */
    double noise_multiplier;         /**< > 0: central DP-FedAvg with this z (default 0: off) */
    double local_noise;              /**< > 0: clients add N(0, (σS)²) per coordinate (default 0) */
    unsigned quant_bits;             /**< update quantization (default 16) */
    double delta;                    /**< δ for ε; 0 = 1/N^1.1 (default 0) */
    double weight_cap;               /**< client weight = min(train tokens, cap)/cap (default 10000) */
    bool secure_agg;                 /**< in-process mode: also run SecAgg+ (secagg.h) per virtual client; a round
                                          whose survivors fall below its threshold fails (default false, for speed) */
    double secure_agg_dropout;       /**< dropout rate SecAgg+ parameters are chosen for; 0 = what the round core
                                          may lose, 1 - min cohort / selected (default 0) */
    /* fleet */
    double avail_min, avail_max;     /**< each client's availability is uniform in [min, max] (default 0.5, 1) */
    double dropout;                  /**< probability a selected client drops mid-round (default 0.05) */
    double speed_median;             /**< training tokens per second, lognormal median (default 200) */
    double speed_sigma;              /**< its log-space sigma (default 0.7) */
    double bw_median;                /**< download bytes per second, lognormal median (default 1e6) */
    double bw_sigma;                 /**< its log-space sigma (default 1.0) */
    double upload_ratio;             /**< upload bandwidth = download · ratio (default 0.25) */
    /* evaluation */
    size_t eval_clients;             /**< clients whose held-out data measure the global adapter; 0 = all (default 0) */
    size_t eval_windows;             /**< windows of seq_len per client at most; 0 = all (default 8) */
    size_t personal_clients;         /**< clients personalized and compared with the global adapter on their
                                          own held-out data; at least the population = all (default 1e9: all) */
    int personal_steps;              /**< their fine-tuning budget (early-stopped on validation); 0 = 16 ·
                                          local steps (default 0) */
    double personal_val;             /**< share of a client's training tokens held for validation (default 0.15) */
    double personal_lambda;          /**< Ditto proximal weight toward the global adapter (default 0: off) */
    int personal_val_every;          /**< validate every k fine-tuning steps (default 10) */
    int personal_rounds;             /**< personalize at round 0, the last evaluated round and, when > 0, every
                                          evaluated round that is a multiple of this (default 0) */
    double personal_lr;              /**< their AdamW learning rate; 0 = local.lr (default 3e-4) */
    int personal_bias_steps;         /**< a personal output bias on the chosen adapter (personal.h): full-batch
                                          Adam steps, 0 = none (default 100) */
    double personal_bias_lr;         /**< its learning rate (default 0.05) */
    double personal_bias_l2;         /**< its L2 weight toward 0 (default 3e-3) */
    size_t personal_knn_bytes;       /**< room for a kNN memory of the device's training text on top (knn.h,
                                          plait_personal_fit_knn); 0: none (default 8 MiB) */
    double personal_guard_z;         /**< the bias and the memory must beat validation by this many standard
                                          errors too (personal.h guard_z; default 2) */
    double fedsa_lambda;             /**< FedSA-LoRA: proximal weight of a client's local training toward the
                                          adapter it started from (its own B) (default 0) */
    int eval_every;                  /**< evaluate every k rounds (and the last) (default 1) */
    /* centralized baseline (sim/central.c) */
    bool centralized;                /**< also train one adapter on the pooled training text of every client
                                          and evaluate it like the global adapter (default false) */
    bool centralized_only;           /**< run only that baseline, no federated rounds (default false) */
    int centralized_steps;           /**< its optimizer steps; 0 = 10,000, tuned with centralized_batch 16
                                          (default 0) */
    int centralized_batch;           /**< its batch; 0 = local.batch (default 16) */
    /* partition (population.partition): "natural" = one client per author/file/user (default);
     * "dirichlet" = partition_clients clients, each label's records dealt by proportions drawn from
     * Dirichlet(partition_alpha) (Hsu et al. 2019), the label being the record's author ("user") or its
     * JSONL "kind" ("kind"). Small alpha: each client sees few labels (non-IID); large: close to IID. */
    char partition[16];              /**< "natural" (default) or "dirichlet" */
    double partition_alpha;          /**< Dirichlet concentration (default 0.5) */
    size_t partition_clients;        /**< clients of a Dirichlet partition; 0 = as many as authors (default 0) */
    char partition_label[8];         /**< "user" (default: the author, speaker or file) or "kind" (JSONL) */
    /* network mode only (flags, not config keys: they describe the machine, not the experiment) */
    char aggregator_bin[PLAIT_SIM_PATH_MAX]; /**< plait-aggregator; "" = ../aggregator/ next to plait-sim */
    char agent_bin[PLAIT_SIM_PATH_MAX];      /**< plait-agent; "" = ../client/ next to plait-sim */
} plait_sim_config_t;

/** \brief Fill cfg with the defaults; assets paths are resolved under assets_dir (NULL: "../shared/assets"). */
void plait_sim_config_default(plait_sim_config_t *cfg, const char *assets_dir);
/** \brief \return 0 or PLAIT_EINVAL naming the bad field. */
int plait_sim_config_validate(const plait_sim_config_t *cfg);
/**
 * \brief Apply a JSON config document over cfg (unknown keys and wrong types are errors).
 * \param buf untrusted bytes; never read past len.
 * \return 0; PLAIT_EPROTO (bad JSON, unknown key, wrong type, detail names the key); PLAIT_ETOOBIG.
 */
int plait_sim_config_apply_json(plait_sim_config_t *cfg, const char *buf, size_t len) PLAIT_WUR;
/**
 * \brief Apply one "section.key=value" override (the --set flag), with the
 *        JSON file's names, types and ranges; string values need no quotes.
 * \return 0; PLAIT_EINVAL naming the key or the value.
 */
int plait_sim_config_set(plait_sim_config_t *cfg, const char *assignment) PLAIT_WUR;
/** \brief Read a file and apply it. \return as apply_json, plus PLAIT_EIO / PLAIT_ENOENT. */
int plait_sim_config_load(plait_sim_config_t *cfg, const char *path) PLAIT_WUR;
/**
 * \brief Write the config as a JSON document (the format apply_json reads).
 * \return 0; PLAIT_ENOMEM. out holds the text, owned by the caller (plait_buf_free).
 */
struct plait_buf_s;
int plait_sim_config_to_json(const plait_sim_config_t *cfg, struct plait_buf_s *out) PLAIT_WUR;

/* ---- population ---------------------------------------------------------- */

/** One virtual client's metadata (what stays in memory). */
typedef struct {
    uint32_t train_lines, heldout_lines;
    uint32_t train_records, heldout_records;
    uint32_t train_tokens, heldout_tokens; /**< as the corpus holds them (BOS per record) */
} plait_sim_client_t;

typedef struct {
    plait_sim_client_t *clients; /**< (n) */
    size_t n;
    size_t n_sources;     /**< authors/files/users seen in the corpus */
    size_t n_too_few;     /**< left out: fewer than min_lines lines */
    size_t n_too_small;   /**< left out: too few tokens for one training or evaluation window */
    size_t n_skipped;     /**< blocks without a "NAME:" line (Shakespeare) */
    char dir[PLAIT_SIM_PATH_MAX]; /**< where the stores are */
} plait_sim_pop_t;

/**
 * \brief Split a corpus into clients and write each client's store under dir
 *        (created if missing). When dir/manifest.txt describes the same
 *        population (same corpus bytes, tokenizer and split settings) and
 *        every store is there, the stores are reused and only the counts are
 *        read back; otherwise the stores are rewritten and the manifest
 *        written last.
 * \param tok tokenizer used to count tokens (clients that cannot fill one
 *            window of T + 1 tokens for training and for evaluation are left out).
 * \return 0; PLAIT_EINVAL (config); PLAIT_ENOENT / PLAIT_EIO (files); PLAIT_EPROTO (corpus);
 *         PLAIT_ENOMEM. On error pop is empty.
 */
struct plait_tok_s;
int plait_sim_pop_build(plait_sim_pop_t *pop /* OUT */, const plait_sim_config_t *cfg, const struct plait_tok_s *tok,
                        const char *dir) PLAIT_WUR;
/** \brief Free the metadata (the stores stay on disk). NULL is safe. */
void plait_sim_pop_free(plait_sim_pop_t *pop);
/** \brief Path of client i's store into buf. */
void plait_sim_pop_store_path(const plait_sim_pop_t *pop, size_t i, char *buf, size_t cap);

/* ---- fleet model ---------------------------------------------------------- */

/** A client's fixed traits, a pure function of (seed, client). */
typedef struct {
    double speed;        /**< training tokens per simulated second */
    double bw_down;      /**< bytes per second */
    double bw_up;
    double availability; /**< probability of being available in a round */
} plait_sim_traits_t;

/** What happens to a selected client in one round, a pure function of (seed, round, client). */
typedef struct {
    int dropped;         /**< 1: it leaves at drop_at */
    double drop_at;      /**< seconds after the task */
    double duration;     /**< download + train + upload seconds (the arrival time if not dropped) */
} plait_sim_fate_t;

/** \brief Traits of client i. */
void plait_sim_fleet_traits(const plait_sim_config_t *cfg, size_t client, plait_sim_traits_t *t /* OUT */);
/** \brief Whether client i is available in round r (1-based). */
int plait_sim_fleet_available(const plait_sim_config_t *cfg, int round, size_t client);
/** \brief Fate of client i in round r for a task of bytes_down / bytes_up and work_tokens of training. */
void plait_sim_fleet_fate(const plait_sim_config_t *cfg, int round, size_t client, double bytes_down,
                          double bytes_up, double work_tokens, plait_sim_fate_t *f /* OUT */);

/* ---- the run ---------------------------------------------------------------- */

/** Metrics of one round (round 0 is the starting point, before any training). */
typedef struct {
    int round;
    int committed;            /**< the round produced a new global version */
    size_t available;         /**< clients available for selection */
    size_t selected, participants, dropouts, stragglers, rejected;
    uint64_t bytes_up, bytes_down;
    double sim_time_s;        /**< simulated duration of the round (task to close) */
    double wall_s;            /**< wall-clock seconds of the round, training and evaluation */
    double train_loss;        /**< mean last-step training loss of the participants (NAN if none) */
    double global_loss;       /**< token-weighted held-out loss of the global adapter (NAN if not evaluated) */
    double global_ppl;
    double personal_loss;     /**< token-weighted held-out loss after local fine-tuning (NAN if not evaluated) */
    double personal_ppl;
    double personal_global_loss; /**< the global adapter on the personalized clients' held-out data (like for like) */
    double epsilon;           /**< ε spent so far (0 without DP) */
    double clip;              /**< clip bound of the round */
    double secagg_s;          /**< wall seconds of the round's secure aggregation (0 when off) */
} plait_sim_round_t;

typedef struct {
    plait_sim_round_t *rounds; /**< (n_rounds + 1): index 0 is the starting point */
    size_t n_rounds;
    double base_loss;          /**< the frozen base model on the evaluation clients' held-out data */
    size_t eval_tokens;        /**< tokens in that evaluation */
    size_t n_clients;
    size_t n_params;           /**< adapter parameters, and the span that travels */
    size_t span_len;
    uint64_t checksum;         /**< FNV-1a of the final global adapter and every deterministic metric */
    double wall_s;             /**< whole run */
    double client_rounds_per_s;/**< trained clients per wall second of training */
    double cpu_s_per_client_round; /**< CPU seconds (all threads) per trained client: load-independent */
    long peak_rss_kb;
    double centralized_loss;   /**< held-out loss of the centralized baseline (NAN when not run) */
    int centralized_steps;     /**< its optimizer steps (0 when not run) */
    size_t centralized_tokens; /**< tokens of the pooled training corpus it trained on */
    double centralized_wall_s; /**< its wall-clock seconds, training and evaluation */
    /* Per-client held-out losses, in evaluation-sample order (for the report's distributions). */
    size_t n_eval_clients;     /**< the global loss's clients */
    double *client_base;       /**< (n_eval_clients) the frozen base model */
    double *client_global;     /**< (n_eval_clients) the global adapter of the last evaluated round */
    size_t n_pers_clients;     /**< the personalized loss's clients */
    double *client_local;      /**< (n_pers_clients) round 0: local fine-tuning of the base model only */
    double *client_personal;   /**< (n_pers_clients) personalized, last evaluated round */
    double *client_pglobal;    /**< (n_pers_clients) the global adapter on the same clients, same round */
    double *client_mix;        /**< (n_pers_clients) the chosen adapter: 0 global, 1 personal, else the mix a */
    double *client_bias;       /**< (n_pers_clients) 1 when the device also serves its output bias, else 0 */
    double *client_knn;        /**< (n_pers_clients) 1 when the device also serves its kNN memory, else 0 */
    size_t *client_tokens;     /**< (n_pers_clients) held-out predictions of each of them */
    double *client_se;         /**< (n_pers_clients) standard error of personal - global from paired held-out
                                    windows (NAN for a client with one window) */
} plait_sim_result_t;

/** \brief Free a result's arrays. NULL is safe. */
void plait_sim_result_free(plait_sim_result_t *res);

/**
 * \brief Run an experiment: build the population under cfg->out_dir/clients,
 *        run the rounds, write metrics.csv, metrics.jsonl, loss.svg,
 *        report.md, config.json and global.safetensors into cfg->out_dir.
 * \param res OUT (may be NULL): the metrics; free with plait_sim_result_free().
 * \return 0; PLAIT_EINVAL (config); PLAIT_EIO/PLAIT_ENOENT (files); PLAIT_ENOMEM;
 *         a training error. The detail is in plait_errmsg().
 */
int plait_sim_run(const plait_sim_config_t *cfg, plait_sim_result_t *res /* OUT */) PLAIT_WUR;

/** \brief Write the SVG chart of a result into path. \return 0 or PLAIT_EIO. */
int plait_sim_write_svg(const plait_sim_result_t *res, const char *title, const char *path) PLAIT_WUR;

#endif /* PLAIT_SIM_H */
