/*
 * server_admit.c: the pre-auth connection pool and the refusal-log bucket
 * (contract in server_admit.h). A linear scan over the distinct addresses in
 * the pool: the pool is capped (max_preauth_connections, default 64), so the
 * table never holds more entries than that.
 */
#include "server_admit.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void plait__admit_init(plait__admit_t *a)
{
    memset(a, 0, sizeof(*a));
    a->tokens = PLAIT__ADMIT_LOG_BURST;
    a->t_tokens = -1.0;
}

void plait__admit_free(plait__admit_t *a)
{
    free(a->addrs);
    a->addrs = NULL;
    a->n_addrs = a->cap_addrs = 0;
}

size_t plait__admit_cap(uint64_t max_connections, uint64_t preauth_cfg)
{
    uint64_t room = max_connections - max_connections / 4;
    uint64_t cap = preauth_cfg < room ? preauth_cfg : room;
    return cap < 1 ? 1 : (size_t)cap;
}

static plait__admit_addr_t *find(const plait__admit_t *a, const char *addr)
{
    for (size_t i = 0; i < a->n_addrs; i++)
        if (strcmp(a->addrs[i].addr, addr) == 0) return &a->addrs[i];
    return NULL;
}

size_t plait__admit_count(const plait__admit_t *a, const char *addr)
{
    const plait__admit_addr_t *e = find(a, addr);
    return e ? e->n : 0;
}

plait__admit_result_t plait__admit_enter(plait__admit_t *a, const char *addr, size_t cap, size_t per_addr)
{
    if (a->preauth >= cap) return PLAIT__ADMIT_POOL_FULL;
    plait__admit_addr_t *e = find(a, addr);
    if (e && e->n >= per_addr) return PLAIT__ADMIT_ADDR_FULL;
    if (!e) {
        if (a->n_addrs == a->cap_addrs) {
            size_t nc = a->cap_addrs ? 2 * a->cap_addrs : 16;
            plait__admit_addr_t *n = realloc(a->addrs, nc * sizeof(*n));
            if (!n) return PLAIT__ADMIT_NOMEM;
            a->addrs = n;
            a->cap_addrs = nc;
        }
        e = &a->addrs[a->n_addrs++];
        snprintf(e->addr, sizeof(e->addr), "%s", addr);
        e->n = 0;
    }
    e->n++;
    a->preauth++;
    return PLAIT__ADMIT_OK;
}

void plait__admit_leave(plait__admit_t *a, const char *addr)
{
    plait__admit_addr_t *e = find(a, addr);
    if (a->preauth > 0) a->preauth--;
    if (!e) return;
    if (--e->n == 0) *e = a->addrs[--a->n_addrs]; /* order does not matter */
}

int plait__admit_log_ok(plait__admit_t *a, double now)
{
    if (a->t_tokens < 0) a->t_tokens = now;
    a->tokens += (now - a->t_tokens) * PLAIT__ADMIT_LOG_RATE;
    a->t_tokens = now;
    if (a->tokens > PLAIT__ADMIT_LOG_BURST) a->tokens = PLAIT__ADMIT_LOG_BURST;
    if (a->tokens >= 1.0) {
        a->tokens -= 1.0;
        return 1;
    }
    a->suppressed++;
    return 0;
}
