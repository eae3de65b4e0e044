/*
 * svcstore.h (private to aggregator/): what the service needs from the
 * aggregator store (aggstore.h), in the service's own terms.
 *
 * It keeps server*.c in the service's terms (its stats counters, rejection
 * reasons and LoRA description) and translates them to the store's rows in
 * one place. (The store's round states are PLAIT_AGGSTORE_ROUND_*, the round
 * core's PLAIT_ROUND_*.)
 *
 * Thread-safety: as aggstore.h: a store object is used by one thread at a
 * time; the service keeps a writer (moved into its worker jobs) and a reader
 * (loop thread).
 */
#ifndef PLAIT_AGG_SVCSTORE_H
#define PLAIT_AGG_SVCSTORE_H

#include <stddef.h>
#include <stdint.h>

#include "metrics.h"
#include "plait/plait.h"

typedef struct plait_aggstore_s plait_aggstore_t;

/** \brief Open DIR's database. recover: abandon rounds a crash left open (the service's writer only).
 *  \param abandoned OUT, may be NULL: rounds this open abandoned. \return aggstore codes. */
int plait__svc_open(plait_aggstore_t **out, const char *path, int create, int recover,
                    int64_t *abandoned /* OUT */) PLAIT_WUR;
void plait__svc_close(plait_aggstore_t *st);

/** \brief Latest version: number and adapter bytes (owned, free()). \return 0, PLAIT_ENOENT when none, errors. */
int plait__svc_latest(plait_aggstore_t *st, int64_t *number, uint8_t **blob, size_t *len) PLAIT_WUR;

/**
 * \brief Server-optimizer state stored with the latest version.
 * \param kind OUT: the plait_server_opt_kind_t that wrote it.
 * \param state OUT: owned floats (free()), NULL when *n is 0.
 * \return 0, PLAIT_ENOENT when there is no version, errors.
 */
int plait__svc_latest_opt(plait_aggstore_t *st, int *kind, float **state, size_t *n) PLAIT_WUR;

/** \brief A version's adapter bytes (owned, free()). \return 0, PLAIT_ENOENT, errors. */
int plait__svc_version(plait_aggstore_t *st, int64_t number, uint8_t **blob, size_t *len) PLAIT_WUR;

/** LoRA and optimizer description stored with a version. */
typedef struct {
    int rank;
    double alpha;
    uint32_t targets;
    int opt_kind;
} plait__svc_lora_t;

/** \brief Store the initial adapter as version 1. */
int plait__svc_put_initial(plait_aggstore_t *st, const uint8_t *blob, size_t len, const uint8_t sha[32],
                           const plait__svc_lora_t *lo) PLAIT_WUR;

/** \brief Open a round row. \param rid OUT: its id. */
int plait__svc_round_begin(plait_aggstore_t *st, int64_t target, int64_t min, const char *task_json,
                           int64_t base_version, int64_t *rid /* OUT */) PLAIT_WUR;

/** Counters of a round as the service keeps them. */
typedef struct {
    int64_t participants, dropouts, bytes_up, bytes_down;
    uint64_t rej[PLAIT__REJ_COUNT];
} plait__svc_stats_t;

/** \brief Open an evaluation round of version (federated evaluation, server_eval.c). */
int plait__svc_eval_begin(plait_aggstore_t *st, int64_t target, int64_t min, const char *task_json, int64_t version,
                          int64_t *rid) PLAIT_WUR;
/** \brief Commit an evaluation round: its counters and the mean of `devices` clipped losses. */
int plait__svc_eval_commit(plait_aggstore_t *st, int64_t rid, int64_t devices, double mean_loss, double loss_max,
                           const plait__svc_stats_t *stats) PLAIT_WUR;
/** \brief Put the operator's evaluation request (back). */
int plait__svc_eval_request(plait_aggstore_t *st) PLAIT_WUR;
/** \brief Take the operator's evaluation request, if any (*requested). */
int plait__svc_eval_take_request(plait_aggstore_t *st, int *requested) PLAIT_WUR;

/** \brief Close a round as failed (reason in words). */
int plait__svc_round_fail(plait_aggstore_t *st, int64_t rid, const char *reason,
                          const plait__svc_stats_t *stats) PLAIT_WUR;

typedef struct {
    const uint8_t *adapter;
    size_t adapter_len;
    const uint8_t *sha256;
    plait__svc_lora_t lora;
    const plait__svc_stats_t *stats;
    const float *opt_state; /* server-optimizer state after this round (NULL when opt_state_len is 0) */
    size_t opt_state_len;
    int dp;            /* 1: write a ledger row */
    double q, z, delta;
    double clip;       /* clip bound C the round used */
    int adaptive;      /* 1: the round also released the noised unclipped count (adaptive clipping) */
    double next_clip;  /* adaptive: the clip the next round starts from (metric "dp_next_clip"; 0: none) */
    int poisson;       /* 1: the cohort was Poisson-sampled at rate q */
    int ddg;           /* 1: distributed discrete Gaussian (ledger mechanism "ddg", q = 1) */
    int64_t ddg_dim, ddg_n; /* its dimension and the devices whose noise is in the sum */
    double ddg_var, ddg_l2; /* per-device variance and L2 sensitivity, in quantization steps */
    double accepted, duration_s, epsilon_core;
    const char *const *uploaders; /* device ids whose updates were accepted */
    size_t n_uploaders;
} plait__svc_commit_t;

/**
 * \brief Record the uploads, then commit the round and its new version in one
 *        transaction (ledger ε recomposed from the stored ledger plus this round).
 * \param version OUT: the new version number.
 */
int plait__svc_round_commit(plait_aggstore_t *st, int64_t rid, const plait__svc_commit_t *c,
                            int64_t *version /* OUT */) PLAIT_WUR;

/**
 * \brief The adaptive clip to resume from: the "dp_next_clip" metric of the
 *        latest ledger round, when that round used adaptive clipping.
 * \return 0 (*clip, *round set); PLAIT_ENOENT (no such round or metric);
 *         PLAIT_EPROTO (a stored value that is not finite and > 0); store errors.
 */
int plait__svc_adaptive_clip(plait_aggstore_t *st, double *clip /* OUT */, int64_t *round /* OUT */) PLAIT_WUR;

/** \brief Enrolled, non-revoked devices (the population Poisson sampling draws from). */
int plait__svc_population(plait_aggstore_t *st, uint64_t *n /* OUT */) PLAIT_WUR;

/**
 * \brief Whether a round that selects want devices and needs at least min_cohort
 *        can fill from the live enrolled devices.
 * \return 0 (it can fill at once); 1 (it can never reach min_cohort: it fails at
 *         the selection timeout); 2 (it reaches min_cohort only at the selection
 *         timeout, never want); or a store error. why (cap bytes) says what and
 *         what to change; *live receives the count.
 */
int plait__svc_fill_check(plait_aggstore_t *st, size_t want, size_t min_cohort, double selection_timeout_s,
                          uint64_t *live /* OUT */, char *why, size_t cap) PLAIT_WUR;

/** \brief After the handshake: enrolled, not revoked, same certificate. \return 0, PLAIT_ENOENT, PLAIT_EAUTH, errors. */
int plait__svc_device_check(plait_aggstore_t *st, const char *id, const uint8_t fpr[32]) PLAIT_WUR;

/** \brief 1 when the store marks device id revoked, 0 when not (or on a read error: the next sweep retries). */
int plait__svc_device_revoked(plait_aggstore_t *st, const char *id);

#endif
