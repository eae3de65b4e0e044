/*
 * agent_secagg.c: the device's side of SecAgg+ (docs/protocol.md §9) inside
 * one round's conversation, and the device's privacy policy on tasks.
 *
 * The conversation for a task with secure_agg, around the usual training:
 *
 *     Task ──> advertise keys ──> roster (neighbours' signed keys) ──> shares
 *          ──> relayed shares ──> [download, train, clip, quantize] ──> masked input
 *          ──> Ack ──> unmask request ──> opened shares (or a refusal)
 *
 * The cryptography is include/plait/secagg.h; this file moves its structs
 * through wire.h messages and decides when to stop: a neighbour key that does
 * not verify ends the round for this device before anything masked leaves it;
 * a relayed share that does not open costs only that neighbour's shares (the
 * device masks with it and stays), and an unmask request naming one device both as survivor and as
 * dropout is refused (the library refuses; this file logs the refusal, without
 * any secret, and tells the aggregator).
 *
 * What leaves the device here: two public keys and their signature, the
 * device certificate, share ciphertexts (only the addressed neighbour can
 * open them), the masked words (uniform in Z_{2^m} to anyone without the
 * masks) and, once, the shares the unmask request asks for. The unmasked
 * words never leave it; secrets live in the library's device object and are
 * wiped by plait__agent_sa_free().
 */
#include "agent_int.h"

#include <math.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "plait/ddg.h"
#include "plait/log.h"
#include "plait/secagg.h"

/* TEST HOOK, for the hostile-device tests only (tests/integ/check_federation.c):
 * PLAIT_TEST_SECAGG_HOSTILE containing "share" makes this device seal garbage
 * for its lowest-index neighbour; containing "reveal" makes it reveal a wrong
 * share (one bit flipped) of every other device. Unset, nothing changes. */
static int test_hostile(const char *what)
{
    const char *e = getenv("PLAIT_TEST_SECAGG_HOSTILE");
    return e != NULL && strstr(e, what) != NULL;
}

struct plait__agent_sa_s {
    plait_secagg_round_t r;
    plait_secagg_device_t *d;
    uint64_t round_id;
    uint32_t self;
    size_t len;
};

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

int plait__agent_sa_policy(const plait_agent_config_t *cfg, const plait_msg_task_t *t)
{
    if (cfg->require_secure_agg && !t->secure_agg)
        return plait_fail(PLAIT_EREFUSED, "the task does not use secure aggregation, which this device requires");
    /* Local DP noises the span only: the weight word and the clip bit go out as they are, so
     * under it they must carry no data (a malicious aggregator could ask for them). */
    if (t->dp.mode == PLAIT_DP_LOCAL && t->example_cap != 1)
        return plait_fail(PLAIT_EREFUSED, "the task asks for local DP with example_cap %u: the weight word would "
                          "carry the record count without noise (needs 1)", t->example_cap);
    if (t->dp.mode == PLAIT_DP_LOCAL && t->kind == PLAIT_TASK_EVALUATE)
        return plait_fail(PLAIT_EREFUSED, "the task asks for an evaluation under local DP: the held-out loss would "
                          "go out without noise");
    if (t->dp.mode == PLAIT_DP_LOCAL && t->clip_bit)
        return plait_fail(PLAIT_EREFUSED, "the task asks for local DP with a clip bit, which would go out without "
                          "noise");
    double z = t->dp.mode == PLAIT_DP_NONE ? 0.0 : t->dp.noise_multiplier;
    if (cfg->min_noise_multiplier > 0 && !(z >= cfg->min_noise_multiplier))
        return plait_fail(PLAIT_EREFUSED, "the task's noise multiplier %g is below this device's minimum %g", z,
                          cfg->min_noise_multiplier);
    if (t->dp.mode == PLAIT_DP_DISTRIBUTED) {
        /* The device's own noise share is the part it can check: with all n index slots
         * surviving, n · v must reach (z_min · clip in steps)^2. Fewer survivors carry less
         * noise; the aggregator's ledger accounts the survivors it saw. */
        if (!t->secure_agg || !t->has_secagg)
            return plait_fail(PLAIT_EREFUSED, "the task asks for distributed DP without secure aggregation");
        if (t->example_cap != 1)
            return plait_fail(PLAIT_EREFUSED, "the task asks for distributed DP with example_cap %u: the weight "
                              "word would release an un-noised, data-dependent sum (needs 1)", t->example_cap);
        plait_quant_config_t qc = {.bits = t->quant_bits, .range = t->quant_range};
        double steps = t->clip_norm / plait_quant_step(&qc);
        double v = (double)t->dp.ddg_var_num / (double)t->dp.ddg_var_den;
        double want = cfg->min_noise_multiplier * steps;
        if (cfg->min_noise_multiplier > 0 && !((double)t->secagg.n * v * (1 + 1e-9) >= want * want)) /* float slack */
            return plait_fail(PLAIT_EREFUSED, "the task's noise share (variance %g over %u devices) is below this "
                              "device's minimum noise multiplier %g", v, t->secagg.n, cfg->min_noise_multiplier);
    }
    if (cfg->max_clip_norm > 0 && !(t->clip_norm <= cfg->max_clip_norm))
        return plait_fail(PLAIT_EREFUSED, "the task's clip norm %g is above this device's maximum %g", t->clip_norm,
                          cfg->max_clip_norm);
    return 0;
}

int plait__agent_sa_ddg(const plait_msg_task_t *t, plait_drbg_t *drbg, uint32_t *words, size_t n_span)
{
    if (t->dp.mode != PLAIT_DP_DISTRIBUTED) return 0;
    if (!t->has_secagg) return plait_fail(PLAIT_EREFUSED, "distributed DP without secure aggregation");
    plait_rng_t rng;
    int rc = plait_rng_seed_drbg(&rng, drbg); /* never the agent's --seed: the noise must stay secret */
    if (rc == 0) rc = plait_ddg_add_noise(&rng, t->dp.ddg_var_num, t->dp.ddg_var_den, words, n_span, t->secagg.bits);
    plait_rng_wipe(&rng);
    return rc;
}

void plait__agent_sa_free(plait__agent_sa_t *sa)
{
    if (!sa) return;
    plait_secagg_device_free(sa->d);
    plait_secagg_round_free(&sa->r);
    free(sa);
}

/* Wait for a message of type want until deadline, pinging every keepalive_ms. */
static int wait_for(const plait__agent_sa_env_t *env, uint64_t round, plait_msg_type_t want, uint64_t deadline,
                    plait_msg_t *m)
{
    uint64_t next_ping = now_ms() + env->keepalive_ms;
    static atomic_uint_least64_t nonce; /* shared by the agents of a process: atomic */
    for (;;) {
        uint64_t now = now_ms();
        if (now >= deadline)
            return plait_fail(PLAIT_ECANCELED, "round %llu: deadline passed waiting for %s",
                              (unsigned long long)round, plait_msg_type_name((int)want));
        if (now >= next_ping) {
            plait_msg_t p;
            plait_msg_init(&p, PLAIT_MSG_PING);
            p.u.ping.nonce = (uint64_t)atomic_fetch_add(&nonce, 1) + 1;
            int rc = env->send(env->conn, &p);
            if (rc != 0) return rc;
            next_ping = now + env->keepalive_ms;
        }
        uint64_t until = next_ping < deadline ? next_ping : deadline;
        int rc = env->recv(env->conn, until, m);
        if (rc == PLAIT_EAGAIN) continue;
        if (rc != 0) return rc;
        if (m->type == want) return 0;
        if (m->type == PLAIT_MSG_ERROR) {
            rc = env->peer_error(env->conn, m, round);
        } else {
            rc = plait_fail(PLAIT_EPROTO, "aggregator sent %s while the agent waited for %s",
                            plait_msg_type_name((int)m->type), plait_msg_type_name((int)want));
        }
        plait_msg_free(m);
        return rc;
    }
}

static int cmp_ct(const void *a, const void *b)
{
    uint32_t x = ((const plait_secagg_ct_t *)a)->to, y = ((const plait_secagg_ct_t *)b)->to;
    return x < y ? -1 : x > y;
}

int plait__agent_sa_begin(const plait__agent_sa_env_t *env, const plait_msg_task_t *t, uint64_t deadline,
                          plait__agent_sa_t **out)
{
    *out = NULL;
    if (!t->secure_agg || !t->has_secagg) return plait_fail(PLAIT_EPROTO, "task: secure_agg without parameters");
    plait__agent_sa_t *sa = calloc(1, sizeof(*sa));
    if (!sa) return plait_fail(PLAIT_ENOMEM, "secure aggregation state");
    plait_secagg_round_init(&sa->r);
    sa->round_id = t->round_id;
    sa->self = t->secagg.index;
    sa->len = (size_t)t->update_elements;
    plait_secagg_ct_t *cts = NULL;
    plait_secagg_share_t *sh = NULL;
    size_t n_ct = 0;
    plait_msg_t m;
    plait_msg_init(&m, PLAIT_MSG_PING);
    uint8_t dep[32];
    plait_sha256((const uint8_t *)env->ca_pem, strlen(env->ca_pem), dep);
    plait_secagg_params_t p;
    memset(&p, 0, sizeof(p));
    p.n = t->secagg.n;
    p.k = t->secagg.k;
    p.t = t->secagg.t;
    p.complete = t->secagg.k == t->secagg.n - 1;
    /* Only this device's row of the graph: a task naming a huge cohort costs the device O(n), not O(n·k). */
    int rc = plait_secagg_round_setup_device(&sa->r, dep, sizeof(dep), t->round_id, &p, t->secagg.graph_seed,
                                             t->secagg.bits, sa->len, sa->self);
    if (rc != 0) {
        rc = plait_fail(PLAIT_EPROTO, "task.secagg: %s", plait_errmsg());
        goto fail;
    }
    /* 0. advertise this round's keys, signed with the device key */
    plait_secagg_advert_t adv;
    if ((rc = plait_secagg_device_create(&sa->d, &sa->r, sa->self, env->drbg)) != 0 ||
        (rc = plait_secagg_device_advertise(sa->d, env->key_pem, env->drbg, &adv)) != 0)
        goto fail;
    plait_msg_init(&m, PLAIT_MSG_SECAGG_ADVERTISE);
    m.u.secagg_advertise.round_id = t->round_id;
    memcpy(m.u.secagg_advertise.mask_pk, adv.c_pk, 32);
    memcpy(m.u.secagg_advertise.enc_pk, adv.s_pk, 32);
    m.u.secagg_advertise.signature = adv.sig;
    m.u.secagg_advertise.sig_len = adv.sig_len;
    m.u.secagg_advertise.has_b_commit = adv.has_b_commit;
    memcpy(m.u.secagg_advertise.b_commit, adv.b_commit, 32);
    m.u.secagg_advertise.cert = (const uint8_t *)env->cert_pem;
    m.u.secagg_advertise.cert_len = strlen(env->cert_pem);
    if ((rc = env->send(env->conn, &m)) != 0) goto fail;

    /* 1. the roster: every neighbour's keys must verify (chain to the CA, signature) */
    if ((rc = wait_for(env, t->round_id, PLAIT_MSG_SECAGG_ROSTER, deadline, &m)) != 0) goto fail;
    const plait_msg_secagg_roster_t *ro = &m.u.secagg_roster;
    if (ro->round_id != t->round_id) {
        rc = plait_fail(PLAIT_ESTALE, "secagg_roster for round %llu in round %llu", (unsigned long long)ro->round_id,
                        (unsigned long long)t->round_id);
        goto fail;
    }
    for (size_t i = 0; i < ro->n_peers; i++) {
        const plait_secagg_peer_t *q = &ro->peers[i];
        plait_secagg_advert_t a;
        memset(&a, 0, sizeof(a));
        a.idx = q->index;
        memcpy(a.c_pk, q->mask_pk, 32);
        memcpy(a.s_pk, q->enc_pk, 32);
        a.has_b_commit = q->has_b_commit;
        memcpy(a.b_commit, q->b_commit, 32);
        if (q->sig_len > sizeof(a.sig)) {
            rc = plait_fail(PLAIT_EPROTO, "secagg_roster: signature of %zu bytes", q->sig_len);
            goto fail;
        }
        memcpy(a.sig, q->signature, q->sig_len);
        a.sig_len = q->sig_len;
        rc = plait_secagg_device_accept_advert(sa->d, &a, q->cert, q->cert_len, env->ca_pem);
        if (rc != 0) {
            PLAIT_LOG(PLAIT_LOG_WARN,
                      "agent %s: round %llu: the keys of neighbour %u do not verify (%s): leaving the round",
                      env->device_id, (unsigned long long)t->round_id, q->index, plait_err_name(rc));
            rc = plait_fail(rc == PLAIT_EINVAL ? PLAIT_EPROTO : rc, "secagg_roster: neighbour %u: %s", q->index,
                            plait_errmsg());
            goto fail;
        }
    }
    size_t n_peers = ro->n_peers; /* m is reused for the relay below */
    plait_msg_free(&m);
    uint32_t k = t->secagg.k;
    cts = calloc(k, sizeof(*cts));
    sh = calloc(k, sizeof(*sh));
    if (!cts || !sh) {
        rc = plait_fail(PLAIT_ENOMEM, "shares");
        goto fail;
    }
    if ((rc = plait_secagg_device_shares(sa->d, env->drbg, cts, k, &n_ct)) != 0) goto fail;
    qsort(cts, n_ct, sizeof(*cts), cmp_ct);
    if (n_ct > 0 && test_hostile("share")) cts[0].ct[20] ^= 0x5A; /* TEST HOOK (above) */
    for (size_t i = 0; i < n_ct; i++) {
        sh[i].peer = cts[i].to;
        sh[i].data = cts[i].ct;
        sh[i].len = PLAIT_SECAGG_CT_LEN;
    }
    plait_msg_init(&m, PLAIT_MSG_SECAGG_SHARES);
    m.u.secagg_shares.round_id = t->round_id;
    m.u.secagg_shares.shares = sh;
    m.u.secagg_shares.n_shares = n_ct;
    if ((rc = env->send(env->conn, &m)) != 0) goto fail;

    /* the shares addressed to this device: one that does not open costs only that
     * neighbour's shares (this device masks with it anyway, as the aggregator expects) */
    if ((rc = wait_for(env, t->round_id, PLAIT_MSG_SECAGG_RELAY, deadline, &m)) != 0) goto fail;
    if (m.u.secagg_shares.round_id != t->round_id) {
        rc = plait_fail(PLAIT_ESTALE, "secagg_relay for round %llu in round %llu",
                        (unsigned long long)m.u.secagg_shares.round_id, (unsigned long long)t->round_id);
        goto fail;
    }
    size_t n_bad = 0; /* relayed shares that did not open */
    for (size_t i = 0; i < m.u.secagg_shares.n_shares; i++) {
        const plait_secagg_share_t *s = &m.u.secagg_shares.shares[i];
        plait_secagg_ct_t c;
        if (s->len != PLAIT_SECAGG_CT_LEN) {
            rc = plait_fail(PLAIT_EPROTO, "secagg_relay: a share of %zu bytes", s->len);
            goto fail;
        }
        c.from = s->peer;
        c.to = sa->self;
        memcpy(c.ct, s->data, PLAIT_SECAGG_CT_LEN);
        if ((rc = plait_secagg_device_recv_share(sa->d, &c)) == PLAIT_EAUTH) {
            /* A hostile or broken neighbour: drop its share, stay in the round. Logged on
             * this device only; nothing about it goes to the aggregator. */
            PLAIT_LOG(PLAIT_LOG_WARN, "agent %s: round %llu: the share from neighbour %u does not open: dropped "
                      "(this device cannot help recover that neighbour)", env->device_id,
                      (unsigned long long)t->round_id, s->peer);
            n_bad++;
            rc = 0;
            continue;
        }
        if (rc != 0) {
            PLAIT_LOG(PLAIT_LOG_WARN, "agent %s: round %llu: the relayed share from %u is refused (%s): "
                      "leaving the round", env->device_id, (unsigned long long)t->round_id, s->peer,
                      plait_err_name(rc));
            rc = plait_fail(rc == PLAIT_EINVAL ? PLAIT_EPROTO : rc, "secagg_relay: share from %u: %s", s->peer,
                            plait_errmsg());
            goto fail;
        }
    }
    PLAIT_LOG(PLAIT_LOG_INFO, "agent %s: round %llu: secure aggregation index %u: %zu neighbours' keys checked, "
              "%zu shares received, %zu dropped", env->device_id, (unsigned long long)t->round_id, sa->self, n_peers,
              m.u.secagg_shares.n_shares - n_bad, n_bad);
    plait_msg_free(&m);
    /* Too few relayed share messages to mask: leave now, not after training. */
    if ((rc = plait_secagg_device_check_relayed(sa->d)) != 0) {
        PLAIT_LOG(PLAIT_LOG_WARN, "agent %s: round %llu: leaving the round before training: %s", env->device_id,
                  (unsigned long long)t->round_id, plait_errmsg());
        goto fail;
    }
    if (cts) plait_zeroize(cts, k * sizeof(*cts));
    free(cts);
    free(sh);
    *out = sa;
    return 0;
fail:
    plait_msg_free(&m); /* decoded or built here: either is safe to free */
    if (cts) plait_zeroize(cts, t->secagg.k * sizeof(*cts));
    free(cts);
    free(sh);
    plait__agent_sa_free(sa);
    return rc;
}

static int cmp_rev(const void *a, const void *b)
{
    uint32_t x = ((const plait_secagg_reveal_t *)a)->owner, y = ((const plait_secagg_reveal_t *)b)->owner;
    return x < y ? -1 : x > y;
}

int plait__agent_sa_finish(plait__agent_sa_t *sa, const plait__agent_sa_env_t *env, const uint32_t *words,
                           size_t n_words, uint64_t deadline, int *acked)
{
    *acked = 0;
    if (n_words != sa->len) return plait_fail(PLAIT_EMISMATCH, "secure aggregation: %zu words, the round has %zu",
                                              n_words, sa->len);
    unsigned mbits = sa->r.m;
    size_t plen = plait_pack_bits_len(n_words, mbits);
    uint32_t *y = malloc(n_words * sizeof(uint32_t));
    uint8_t *packed = malloc(plen ? plen : 1);
    plait_secagg_reveal_t *rev = NULL;
    size_t rev_cap = 0;
    plait_secagg_share_t *sh = NULL;
    plait_msg_t m;
    plait_msg_init(&m, PLAIT_MSG_PING);
    int rc = 0;
    if (!y || !packed) {
        rc = plait_fail(PLAIT_ENOMEM, "masked update");
        goto out;
    }
    /* 2. masked input: y = x + masks in Z_{2^m}, packed at m bits */
    if ((rc = plait_secagg_device_mask(sa->d, words, n_words, y)) != 0) goto out;
    if ((rc = plait_pack_bits(y, n_words, mbits, packed, plen)) != 0) goto out;
    plait_wire_limits_t lim = *env->lim;
    lim.max_chunk_bytes = env->chunk_bytes;
    plait_wire_xfer_t x;
    plait_wire_xfer_init(&x, sa->round_id, n_words, 0);
    int r;
    while ((r = plait_wire_masked_tx_next(&x, &lim, packed, mbits, &m)) == 1) {
        if (now_ms() >= deadline) {
            rc = plait_fail(PLAIT_ECANCELED, "round %llu: deadline passed during the upload",
                            (unsigned long long)sa->round_id);
            goto out;
        }
        if ((rc = env->send(env->conn, &m)) != 0) goto out;
    }
    plait_msg_init(&m, PLAIT_MSG_PING);
    if (r < 0) {
        rc = plait_fail(r, "masked upload: %s", plait_errmsg());
        goto out;
    }
    PLAIT_LOG(PLAIT_LOG_INFO, "agent %s: round %llu: masked update sent (%zu words at %u bits: %zu bytes)",
              env->device_id, (unsigned long long)sa->round_id, n_words, mbits, plen);
    /* The Ack comes once the round core counted the masked input; the unmask request after the
     * masked-input stage closes, which may take until the round's deadline. */
    uint64_t wait_until = deadline + 120000u;
    if ((rc = wait_for(env, sa->round_id, PLAIT_MSG_ACK, wait_until, &m)) != 0) goto out;
    if (m.u.ack.round_id != sa->round_id || m.u.ack.elements != n_words) {
        rc = plait_fail(PLAIT_EPROTO, "Ack for round %llu / %llu words, expected %llu / %zu",
                        (unsigned long long)m.u.ack.round_id, (unsigned long long)m.u.ack.elements,
                        (unsigned long long)sa->round_id, n_words);
        goto out;
    }
    plait_msg_free(&m);
    *acked = 1;

    /* 3. unmask: open the shares the request asks for, or refuse it */
    if ((rc = wait_for(env, sa->round_id, PLAIT_MSG_SECAGG_UNMASK_REQUEST, wait_until, &m)) != 0) goto out;
    const plait_msg_secagg_unmask_request_t *q = &m.u.secagg_unmask_request;
    if (q->round_id != sa->round_id) {
        rc = plait_fail(PLAIT_ESTALE, "secagg_unmask_request for round %llu in round %llu",
                        (unsigned long long)q->round_id, (unsigned long long)sa->round_id);
        goto out;
    }
    /* At most one reveal per listed device (the lists are bounded by the wire limits). */
    size_t cap = q->n_survivors + q->n_dropouts;
    rev = calloc(cap, sizeof(*rev));
    rev_cap = cap;
    sh = calloc(cap, sizeof(*sh));
    if (!rev || !sh) {
        rc = plait_fail(PLAIT_ENOMEM, "unmask answer");
        goto out;
    }
    size_t n_rev = 0;
    rc = plait_secagg_device_unmask(sa->d, q->survivors, q->n_survivors, q->dropouts, q->n_dropouts, rev, cap,
                                    &n_rev);
    if (rc == PLAIT_EREFUSED || rc == PLAIT_EPROTO) {
        /* The detail names indices and the rule, never a share or key. */
        PLAIT_LOG(PLAIT_LOG_WARN, "agent %s: round %llu: refused the aggregator's unmask request: %s",
                  env->device_id, (unsigned long long)sa->round_id, plait_errmsg());
        plait_msg_t e;
        plait_msg_init(&e, PLAIT_MSG_ERROR);
        e.u.error.code = PLAIT_EREFUSED;
        snprintf(e.u.error.message, sizeof(e.u.error.message), "unmask request refused");
        (void)env->send(env->conn, &e);
        rc = plait_fail(PLAIT_EREFUSED, "round %llu: unmask request refused", (unsigned long long)sa->round_id);
        goto out;
    }
    if (rc != 0) goto out;
    plait_msg_free(&m);
    for (size_t i = 0; i < n_rev && test_hostile("reveal"); i++) /* TEST HOOK (above) */
        if (rev[i].owner != sa->self) rev[i].share[3] ^= 0x10;
    qsort(rev, n_rev, sizeof(*rev), cmp_rev);
    size_t nb = 0, nk = 0;
    for (size_t i = 0; i < n_rev; i++)
        if (rev[i].kind == PLAIT_SECAGG_REVEAL_B) nb++;
    for (size_t i = 0, ib = 0, ik = nb; i < n_rev; i++) {
        size_t at = rev[i].kind == PLAIT_SECAGG_REVEAL_B ? ib++ : ik++;
        sh[at].peer = rev[i].owner;
        sh[at].data = rev[i].share;
        sh[at].len = PLAIT_SECAGG_SHARE_LEN;
    }
    nk = n_rev - nb;
    plait_msg_init(&m, PLAIT_MSG_SECAGG_UNMASK_RESPONSE);
    m.u.secagg_unmask_response.round_id = sa->round_id;
    m.u.secagg_unmask_response.seed_shares = nb ? sh : NULL;
    m.u.secagg_unmask_response.n_seed = nb;
    m.u.secagg_unmask_response.key_shares = nk ? sh + nb : NULL;
    m.u.secagg_unmask_response.n_key = nk;
    if ((rc = env->send(env->conn, &m)) != 0) goto out;
    PLAIT_LOG(PLAIT_LOG_INFO, "agent %s: round %llu: unmask answered (%zu survivor and %zu dropout shares)",
              env->device_id, (unsigned long long)sa->round_id, nb, nk);
out:
    plait_msg_free(&m);
    if (y) plait_zeroize(y, n_words * sizeof(uint32_t));
    free(y);
    if (packed) plait_zeroize(packed, plen ? plen : 1);
    free(packed);
    if (rev) plait_zeroize(rev, rev_cap * sizeof(*rev));
    free(rev);
    free(sh);
    return rc;
}
