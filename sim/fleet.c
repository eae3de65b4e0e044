/*
 * fleet.c: the simulated fleet's behaviour, as pure functions of the master
 * seed, the round and the client, so that nothing about a client needs to
 * stay in memory between rounds and a run replays exactly.
 *
 *   traits    speed (training tokens per second) and download bandwidth are
 *             lognormal (median · exp(sigma · N(0, 1))), as device speeds and
 *             mobile bandwidths are heavy-tailed; upload = download · ratio;
 *             availability is uniform in [avail_min, avail_max].
 *   available in round r with probability availability (a fresh draw per round).
 *   fate      a selected client drops with probability dropout, at a uniform
 *             time within what its round would have taken; otherwise it
 *             arrives after download + training + upload seconds. Whether it
 *             beats the deadline is the round core's business.
 */
#include <math.h>

#include "plait/rng.h"
#include "plait/sim.h"
#include "sim_int.h"

void plait_sim_fleet_traits(const plait_sim_config_t *cfg, size_t client, plait_sim_traits_t *t)
{
    plait_rng_t r;
    plait_rng_seed_u64(&r, cfg->seed, plait__sim_stream(PLAIT__SIM_RNG_TRAITS, 0, client));
    t->speed = cfg->speed_median * exp(cfg->speed_sigma * plait_rng_normal(&r));
    t->bw_down = cfg->bw_median * exp(cfg->bw_sigma * plait_rng_normal(&r));
    t->bw_up = t->bw_down * cfg->upload_ratio;
    t->availability = cfg->avail_min + (cfg->avail_max - cfg->avail_min) * plait_rng_uniform(&r);
    plait_rng_wipe(&r);
}

int plait_sim_fleet_available(const plait_sim_config_t *cfg, int round, size_t client)
{
    plait_sim_traits_t t;
    plait_sim_fleet_traits(cfg, client, &t);
    plait_rng_t r;
    plait_rng_seed_u64(&r, cfg->seed, plait__sim_stream(PLAIT__SIM_RNG_AVAIL, (uint64_t)round, client));
    int ok = plait_rng_uniform(&r) < t.availability;
    plait_rng_wipe(&r);
    return ok;
}

void plait_sim_fleet_fate(const plait_sim_config_t *cfg, int round, size_t client, double bytes_down,
                          double bytes_up, double work_tokens, plait_sim_fate_t *f)
{
    plait_sim_traits_t t;
    plait_sim_fleet_traits(cfg, client, &t);
    plait_rng_t r;
    plait_rng_seed_u64(&r, cfg->seed, plait__sim_stream(PLAIT__SIM_RNG_FATE, (uint64_t)round, client));
    f->duration = bytes_down / t.bw_down + work_tokens / t.speed + bytes_up / t.bw_up;
    f->dropped = plait_rng_uniform(&r) < cfg->dropout;
    f->drop_at = f->dropped ? plait_rng_uniform(&r) * f->duration : 0.0;
    plait_rng_wipe(&r);
}
