/*
 * server_admit.h (private to aggregator/): admission of federation
 * connections before they authenticate, and rate-limited refusal logs.
 *
 * Contract. The loop thread owns a plait__admit_t. A connection enters the
 * pre-auth pool at accept (plait__admit_enter, which may refuse it) and
 * leaves it exactly once: when its Hello is accepted or when it closes
 * (plait__admit_leave). Two caps hold for the pool: at most `cap` connections
 * in all, at most `per_addr` from one IP address. The pool cap is kept below
 * max_connections (plait__admit_cap), so the slots above it can only be
 * filled by authenticated devices. Nothing here allocates per connection
 * beyond one entry per distinct address with pool members (freed when its
 * count drops to zero).
 *
 * Refusal logs: plait__admit_log_ok is a token bucket (burst
 * PLAIT__ADMIT_LOG_BURST lines, refilled at PLAIT__ADMIT_LOG_RATE per second);
 * a refusal that finds it empty is counted as suppressed instead of logged
 * (the per-reason counters in metrics are kept either way).
 */
#ifndef PLAIT_AGG_SERVER_ADMIT_H
#define PLAIT_AGG_SERVER_ADMIT_H

#include <stddef.h>
#include <stdint.h>

#define PLAIT__ADMIT_ADDR_MAX 48 /* INET6_ADDRSTRLEN (46) rounded up */
#define PLAIT__ADMIT_LOG_BURST 20.0
#define PLAIT__ADMIT_LOG_RATE 5.0

typedef struct {
    char addr[PLAIT__ADMIT_ADDR_MAX];
    size_t n; /* pre-auth connections from addr */
} plait__admit_addr_t;

typedef struct {
    size_t preauth;              /* connections in the pool */
    plait__admit_addr_t *addrs;  /* distinct addresses with members */
    size_t n_addrs, cap_addrs;
    double tokens, t_tokens;     /* log bucket */
    uint64_t suppressed;         /* refusal log lines not written, since start */
    uint64_t suppressed_reported;/* ... of which already summarized in the log */
} plait__admit_t;

typedef enum {
    PLAIT__ADMIT_OK = 0,
    PLAIT__ADMIT_POOL_FULL = 1, /* the pre-auth pool is full */
    PLAIT__ADMIT_ADDR_FULL = 2, /* this address has per_addr connections in it */
    PLAIT__ADMIT_NOMEM = 3
} plait__admit_result_t;

void plait__admit_init(plait__admit_t *a);
void plait__admit_free(plait__admit_t *a);

/** \brief The pre-auth pool cap for a configuration: min(preauth_cfg, max_connections - max_connections / 4), >= 1. */
size_t plait__admit_cap(uint64_t max_connections, uint64_t preauth_cfg);

/** \brief Try to enter the pool from addr. On PLAIT__ADMIT_OK the caller must call plait__admit_leave once. */
plait__admit_result_t plait__admit_enter(plait__admit_t *a, const char *addr, size_t cap, size_t per_addr);

/** \brief Leave the pool (authenticated, or closed before). */
void plait__admit_leave(plait__admit_t *a, const char *addr);

/** \brief Pre-auth connections from addr now. */
size_t plait__admit_count(const plait__admit_t *a, const char *addr);

/** \brief 1 when a refusal may be logged at time now (seconds), else 0 (counted as suppressed). */
int plait__admit_log_ok(plait__admit_t *a, double now);

#endif
