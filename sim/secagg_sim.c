/*
 * secagg_sim.c: secure aggregation per virtual device ([privacy] secure_agg).
 *
 * When the switch is on, every in-process round also runs the SecAgg+
 * library (include/plait/secagg.h) over the selected cohort, one device
 * object per virtual client, with real keys: the simulator's CA issues each
 * client a certificate the first time it is selected. The protocol steps are
 * timed against the simulated fate of each client:
 *   - every selected client advertises and shares keys when the task arrives;
 *   - clients whose update the round core accepted send masked input and
 *     answer the unmask request;
 *   - clients that dropped, missed the deadline or were not needed count as
 *     dropouts after key sharing (their masks are recomputed from shares).
 * The unmasked sum must equal the plain sum of the accepted words bit for
 * bit (PLAIT_EINTERNAL otherwise), so the round core's result stands; when
 * too few survivors remain for the threshold the round fails and is not
 * committed, as it would be on the real service.
 *
 * Parameters: plait_secagg_params_choose(cohort, design dropout, 0, 20) with
 * the design dropout from [privacy] secure_agg_dropout, or, when that is 0,
 * the fraction of the cohort the round core may lose (1 - min cohort /
 * selected). All randomness is a CTR_DRBG seeded from the run's seed and the
 * round, so runs replay exactly.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "plait/pki.h"
#include "plait/secagg.h"
#include "sim_int.h"

struct plait__sim_sa_s {
    char *ca, *ca_key;
    char **crt, **key; /* per client id, made on first selection */
    size_t n;
};

static int drbg_for(plait_drbg_t *d, uint64_t seed, uint64_t round)
{
    uint8_t s[16];
    for (int i = 0; i < 8; i++) s[i] = (uint8_t)(seed >> (8 * i)), s[8 + i] = (uint8_t)(round >> (8 * i));
    plait_drbg_init(d);
    return plait_drbg_seed_deterministic(d, s, sizeof(s));
}

int plait__sim_sa_create(plait__sim_sa_t **out, const plait_sim_config_t *cfg, size_t n_clients)
{
    plait__sim_sa_t *sa = calloc(1, sizeof(*sa));
    if (sa == NULL) return plait_fail(PLAIT_ENOMEM, "sim secagg: state");
    sa->n = n_clients;
    sa->crt = calloc(n_clients ? n_clients : 1, sizeof(char *));
    sa->key = calloc(n_clients ? n_clients : 1, sizeof(char *));
    plait_drbg_t d;
    int rc = drbg_for(&d, cfg->seed, UINT64_MAX);
    plait_pki_config_t pc;
    plait_pki_config_default(&pc);
    if (rc == 0 && (sa->crt == NULL || sa->key == NULL)) rc = plait_fail(PLAIT_ENOMEM, "sim secagg: certificates");
    if (rc == 0) rc = plait_pki_ca_create(&pc, &d, &sa->ca, &sa->ca_key);
    plait_drbg_free(&d);
    if (rc != 0) {
        plait__sim_sa_free(sa);
        return rc;
    }
    *out = sa;
    return 0;
}

void plait__sim_sa_free(plait__sim_sa_t *sa)
{
    if (sa == NULL) return;
    for (size_t i = 0; i < sa->n; i++) {
        if (sa->crt) plait_pki_free_pem(sa->crt[i]);
        if (sa->key) plait_pki_free_pem(sa->key[i]);
    }
    free(sa->crt);
    free(sa->key);
    plait_pki_free_pem(sa->ca);
    plait_pki_free_pem(sa->ca_key);
    free(sa);
}

static int ensure_cert(plait__sim_sa_t *sa, size_t client, plait_drbg_t *d)
{
    if (client >= sa->n) return plait_fail(PLAIT_EINVAL, "sim secagg: client %zu", client);
    if (sa->crt[client]) return 0;
    char id[32];
    snprintf(id, sizeof(id), "sim-%zu", client);
    plait_pki_config_t pc;
    plait_pki_config_default(&pc);
    plait_pki_cert_info_t info;
    return plait_pki_device_issue(&pc, sa->ca, sa->ca_key, id, d, &sa->crt[client], &sa->key[client], &info);
}

int plait__sim_sa_round(plait__sim_sa_t *sa, const plait_sim_config_t *cfg, int round, size_t min_cohort,
                        const size_t *clients, size_t k, const uint8_t *accepted, const uint32_t *slab, size_t len,
                        int *failed)
{
    *failed = 0;
    if (k < 2) {
        *failed = 1;
        return 0;
    }
    double drop = cfg->secure_agg_dropout;
    /* (k - min) / k, nudged down so that ceil(drop · k) is exactly k - min. */
    if (drop <= 0) drop = min_cohort < k ? (double)(k - min_cohort) / (double)k - 1e-9 : 0.0;
    plait_secagg_params_t p;
    int rc = plait_secagg_params_choose((uint32_t)k, drop, 0.0, 20.0, &p);
    if (rc == PLAIT_ETHRESHOLD) {
        *failed = 1;
        return 0;
    }
    if (rc != 0) return plait__sim_wrap(rc, "sim secagg: parameters");
    unsigned m;
    if ((rc = plait_secagg_mask_bits(cfg->quant_bits, (uint32_t)k, &m)) != 0) return plait__sim_wrap(rc, "sim secagg");
    uint32_t n = (uint32_t)k, kk = p.k;
    plait_drbg_t d;
    if ((rc = drbg_for(&d, cfg->seed, (uint64_t)round)) != 0) return rc;
    plait_secagg_round_t r;
    plait_secagg_round_init(&r);
    uint8_t gseed[32];
    static const uint8_t dep[] = "plait-sim";
    plait_secagg_device_t **dev = calloc(n + 1, sizeof(*dev));
    plait_secagg_advert_t *adv = calloc(n + 1, sizeof(*adv));
    plait_secagg_ct_t *cts = calloc((size_t)n * kk, sizeof(*cts));
    plait_secagg_reveal_t *rev = calloc(kk + 1, sizeof(*rev));
    uint32_t *y = malloc(len * sizeof(uint32_t)), *sum = malloc(len * sizeof(uint32_t)),
             *plain = calloc(len, sizeof(uint32_t));
    plait_secagg_server_t *s = NULL;
    size_t n_ct = 0, n_acc = 0;
    if (!dev || !adv || !cts || !rev || !y || !sum || !plain) rc = plait_fail(PLAIT_ENOMEM, "sim secagg: buffers");
    if (rc == 0) rc = plait_drbg_random(&d, gseed, sizeof(gseed));
    if (rc == 0) rc = plait_secagg_round_setup(&r, dep, sizeof(dep) - 1, (uint64_t)round, &p, gseed, m, len);
    if (rc == 0) rc = plait_secagg_server_create(&s, &r);
    /* 0, 1: at task time every selected client advertises and shares keys. */
    for (uint32_t u = 1; rc == 0 && u <= n; u++) {
        if ((rc = ensure_cert(sa, clients[u - 1], &d)) != 0) break;
        if ((rc = plait_secagg_device_create(&dev[u], &r, u, &d)) == 0 &&
            (rc = plait_secagg_device_advertise(dev[u], sa->key[clients[u - 1]], &d, &adv[u])) == 0)
            rc = plait_secagg_server_add_advert(s, &adv[u]);
    }
    for (uint32_t u = 1; rc == 0 && u <= n; u++) {
        const uint32_t *nb = plait_secagg_neighbours(&r, u);
        for (uint32_t i = 0; rc == 0 && i < kk; i++) {
            const char *crt = sa->crt[clients[nb[i] - 1]];
            rc = plait_secagg_device_accept_advert(dev[u], &adv[nb[i]], (const uint8_t *)crt, strlen(crt), sa->ca);
        }
    }
    for (uint32_t u = 1; rc == 0 && u <= n; u++) {
        size_t c = 0;
        if ((rc = plait_secagg_device_shares(dev[u], &d, cts + n_ct, kk, &c)) == 0)
            rc = plait_secagg_server_mark_shared(s, u);
        n_ct += c;
    }
    for (size_t i = 0; rc == 0 && i < n_ct; i++) rc = plait_secagg_device_recv_share(dev[cts[i].to], &cts[i]);
    /* 2: the clients the round core accepted send masked input. */
    uint32_t mask = m >= 32 ? 0xFFFFFFFFu : (1u << m) - 1u;
    for (uint32_t u = 1; rc == 0 && u <= n; u++) {
        if (!accepted[u - 1]) continue;
        const uint32_t *x = slab + (size_t)(u - 1) * len;
        if ((rc = plait_secagg_device_mask(dev[u], x, len, y)) == 0) rc = plait_secagg_server_add_masked(s, u, y, len);
        for (size_t i = 0; rc == 0 && i < len; i++) plain[i] = (plain[i] + x[i]) & mask;
        n_acc++;
    }
    /* 3: they answer the unmask request; the server removes the masks. */
    for (uint32_t v = 1; rc == 0 && v <= n; v++) {
        if (!accepted[v - 1]) continue;
        const uint32_t *sv, *dp;
        size_t ns, nd, nr = 0;
        if ((rc = plait_secagg_server_request(s, v, &sv, &ns, &dp, &nd)) != 0) break;
        rc = plait_secagg_device_unmask(dev[v], sv, ns, dp, nd, rev, kk + 1, &nr);
        if (rc == PLAIT_EREFUSED) { /* e.g. none of its neighbours survived: it answers nothing, as on the service */
            rc = 0;
            continue;
        }
        if (rc == 0) rc = plait_secagg_server_add_reveals(s, v, rev, nr);
    }
    if (rc == 0 && n_acc == 0) rc = PLAIT_ETHRESHOLD;
    if (rc == 0) rc = plait_secagg_server_finish(s, sum, len);
    if (rc == 0 && memcmp(sum, plain, len * sizeof(uint32_t)) != 0)
        rc = plait_fail(PLAIT_EINTERNAL, "sim secagg: round %d: unmasked sum differs from the plain sum", round);
    if (rc == PLAIT_ETHRESHOLD) {
        *failed = 1;
        rc = 0;
    } else if (rc != 0) {
        rc = plait__sim_wrap(rc, "sim secagg");
    }
    for (uint32_t u = 1; dev && u <= n; u++) plait_secagg_device_free(dev[u]);
    plait_secagg_server_free(s);
    plait_secagg_round_free(&r);
    plait_drbg_free(&d);
    free(dev);
    free(adv);
    free(cts);
    free(rev);
    free(y);
    free(sum);
    free(plain);
    return rc;
}
