/*
 * check_agent_secagg.c: the device's SecAgg+ conversation (client/agent_secagg.c)
 * against a scripted aggregator in process. The device under test is index 1
 * of a 3-device round; devices 2 and 3 are played with the library. Every
 * message the device sends and receives goes through wire encode/decode.
 *   - an honest round: the device's answer lets the library's server remove
 *     every mask, and the sum equals the plain sum of the three updates;
 *   - an unmask request naming device 2 both as survivor and as dropout is
 *     refused: the device answers Error(PLAIT_EREFUSED) and reveals nothing;
 *   - a roster of another round is refused (PLAIT_ESTALE) before any share leaves;
 *   - device 2 is hostile and sends the device a share that does not open: the
 *     device drops it, stays in the round, and the sum is still exact;
 *   - the policy declines tasks outside the device's bounds;
 *   - with fewer than t - 1 share messages relayed the device leaves right after the relay,
 *     before training, and sends no masked input.
 */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "agent_int.h"
#include "plait/pki.h"
#include "plait/secagg.h"
#include "testutil.h"

#define N 3
#define LEN 37
#define BITS 18
#define ROUND 9

typedef enum { HONEST, BOTH_SHARES, STALE_ROSTER, BAD_CT, NO_RELAY } script_t;

typedef struct {
    script_t script;
    char *ca, *ca_key, *crt[N + 1], *key[N + 1];
    uint8_t dep[32], seed[32];
    plait_secagg_round_t r;
    plait_secagg_device_t *dv[N + 1]; /* 2, 3: played here */
    plait_secagg_advert_t adv[N + 1];
    plait_secagg_server_t *srv;
    plait_drbg_t drbg;
    uint32_t x[N + 1][LEN]; /* plain words of each device */
    /* inbox of frames for the device */
    uint8_t *q[8];
    size_t qlen[8], qn, qpos;
    /* what the device sent */
    int adverts, shares, error_code, responses, masked_msgs;
    uint8_t packed[4096];
    plait_wire_xfer_t mx;
    int masked_done;
    plait_msg_task_t task;
} fake_t;

static void push(fake_t *f, const plait_msg_t *m)
{
    ck_assert_uint_lt(f->qn, 8);
    ck_assert_int_eq(plait_wire_encode_alloc(m, NULL, &f->q[f->qn], &f->qlen[f->qn]), 0);
    f->qn++;
}

static plait_secagg_advert_t advert_of(const plait_msg_secagg_advertise_t *a, uint32_t idx)
{
    plait_secagg_advert_t v;
    memset(&v, 0, sizeof(v));
    v.idx = idx;
    memcpy(v.c_pk, a->mask_pk, 32);
    memcpy(v.s_pk, a->enc_pk, 32);
    v.has_b_commit = a->has_b_commit;
    memcpy(v.b_commit, a->b_commit, 32);
    memcpy(v.sig, a->signature, a->sig_len);
    v.sig_len = a->sig_len;
    return v;
}

static int fake_send(void *conn, const plait_msg_t *m)
{
    fake_t *f = conn;
    /* What the aggregator would decode. */
    uint8_t *buf = NULL;
    size_t len = 0, used = 0;
    ck_assert_int_eq(plait_wire_encode_alloc(m, NULL, &buf, &len), 0);
    plait_msg_t d;
    ck_assert_int_eq(plait_wire_parse(buf, len, NULL, 0, &d, &used), 0);
    free(buf);
    switch (d.type) {
    case PLAIT_MSG_SECAGG_ADVERTISE: {
        f->adverts++;
        f->adv[1] = advert_of(&d.u.secagg_advertise, 1);
        ck_assert_int_eq(plait_secagg_advert_verify(&f->r, &f->adv[1], d.u.secagg_advertise.cert,
                                                    d.u.secagg_advertise.cert_len, f->ca),
                         0);
        for (int i = 1; i <= N; i++) ck_assert_int_eq(plait_secagg_server_add_advert(f->srv, &f->adv[i]), 0);
        for (int i = 2; i <= N; i++)
            for (int j = 1; j <= N; j++)
                if (j != i)
                    ck_assert_int_eq(plait_secagg_device_accept_advert(f->dv[i], &f->adv[j], (const uint8_t *)f->crt[j],
                                                                       strlen(f->crt[j]), f->ca),
                                     0);
        plait_secagg_peer_t peers[2];
        for (int i = 2; i <= N; i++) {
            plait_secagg_peer_t *p = &peers[i - 2];
            p->index = (uint32_t)i;
            p->cert = (const uint8_t *)f->crt[i];
            p->cert_len = strlen(f->crt[i]);
            memcpy(p->mask_pk, f->adv[i].c_pk, 32);
            memcpy(p->enc_pk, f->adv[i].s_pk, 32);
            p->has_b_commit = f->adv[i].has_b_commit;
            memcpy(p->b_commit, f->adv[i].b_commit, 32);
            p->signature = f->adv[i].sig;
            p->sig_len = f->adv[i].sig_len;
        }
        plait_msg_t r;
        plait_msg_init(&r, PLAIT_MSG_SECAGG_ROSTER);
        r.u.secagg_roster.round_id = f->script == STALE_ROSTER ? ROUND - 1 : ROUND;
        r.u.secagg_roster.peers = peers;
        r.u.secagg_roster.n_peers = 2;
        push(f, &r);
        break;
    }
    case PLAIT_MSG_SECAGG_SHARES: {
        f->shares++;
        ck_assert_uint_eq(d.u.secagg_shares.n_shares, 2);
        plait_secagg_ct_t cts[N + 1][2];
        for (int i = 2; i <= N; i++) {
            size_t n = 0;
            ck_assert_int_eq(plait_secagg_device_shares(f->dv[i], &f->drbg, cts[i], 2, &n), 0);
            ck_assert_uint_eq(n, 2);
        }
        for (size_t s = 0; s < d.u.secagg_shares.n_shares; s++) { /* relay device 1's shares to 2 and 3 */
            plait_secagg_ct_t c;
            c.from = 1;
            c.to = d.u.secagg_shares.shares[s].peer;
            ck_assert_uint_eq(d.u.secagg_shares.shares[s].len, PLAIT_SECAGG_CT_LEN);
            memcpy(c.ct, d.u.secagg_shares.shares[s].data, PLAIT_SECAGG_CT_LEN);
            ck_assert_int_eq(plait_secagg_device_recv_share(f->dv[c.to], &c), 0);
        }
        for (int i = 2; i <= N; i++) /* 2 <-> 3 */
            for (int s = 0; s < 2; s++)
                if (cts[i][s].to != 1) ck_assert_int_eq(plait_secagg_device_recv_share(f->dv[cts[i][s].to], &cts[i][s]), 0);
        for (uint32_t u = 1; u <= N; u++) ck_assert_int_eq(plait_secagg_server_mark_shared(f->srv, u), 0);
        plait_secagg_share_t sh[2];
        for (int i = 2; i <= N; i++)
            for (int s = 0; s < 2; s++)
                if (cts[i][s].to == 1) {
                    if (f->script == BAD_CT && i == 2) cts[i][s].ct[40] ^= 0xA5; /* hostile device 2 */
                    sh[i - 2].peer = (uint32_t)i;
                    sh[i - 2].data = cts[i][s].ct;
                    sh[i - 2].len = PLAIT_SECAGG_CT_LEN;
                }
        plait_msg_t r;
        plait_msg_init(&r, PLAIT_MSG_SECAGG_RELAY);
        r.u.secagg_shares.round_id = ROUND;
        r.u.secagg_shares.shares = sh;
        r.u.secagg_shares.n_shares = f->script == NO_RELAY ? 0 : 2; /* withheld: fewer than t - 1 */
        push(f, &r);
        break;
    }
    case PLAIT_MSG_SECAGG_MASKED_INPUT: {
        f->masked_msgs++;
        int rc = plait_wire_masked_rx_add(&f->mx, &d.u.secagg_masked_input, BITS, f->packed);
        ck_assert_int_ge(rc, 0);
        if (rc == 1) {
            uint32_t y[LEN];
            ck_assert_int_eq(plait_unpack_bits(f->packed, plait_pack_bits_len(LEN, BITS), LEN, BITS, y), 0);
            ck_assert_int_eq(plait_secagg_server_add_masked(f->srv, 1, y, LEN), 0);
            for (uint32_t i = 2; i <= N; i++) {
                ck_assert_int_eq(plait_secagg_device_mask(f->dv[i], f->x[i], LEN, y), 0);
                ck_assert_int_eq(plait_secagg_server_add_masked(f->srv, i, y, LEN), 0);
            }
            plait_msg_t a;
            plait_msg_init(&a, PLAIT_MSG_ACK);
            a.u.ack.round_id = ROUND;
            a.u.ack.kind = PLAIT_ACK_UPDATE;
            a.u.ack.elements = LEN;
            push(f, &a);
            for (uint32_t v = 1; v <= N; v++) { /* what an honest aggregator would ask */
                const uint32_t *sv = NULL, *dr = NULL;
                size_t ns = 0, nd = 0;
                ck_assert_int_eq(plait_secagg_server_request(f->srv, v, &sv, &ns, &dr, &nd), 0);
                ck_assert_uint_eq(nd, 0);
            }
            static const uint32_t all[3] = {1, 2, 3}, two[1] = {2};
            plait_msg_t q;
            plait_msg_init(&q, PLAIT_MSG_SECAGG_UNMASK_REQUEST);
            q.u.secagg_unmask_request.round_id = ROUND;
            q.u.secagg_unmask_request.survivors = all;
            q.u.secagg_unmask_request.n_survivors = 3;
            if (f->script == BOTH_SHARES) { /* device 2 as survivor and as dropout */
                q.u.secagg_unmask_request.dropouts = two;
                q.u.secagg_unmask_request.n_dropouts = 1;
            }
            push(f, &q);
        }
        break;
    }
    case PLAIT_MSG_SECAGG_UNMASK_RESPONSE: {
        f->responses++;
        const plait_msg_secagg_unmask_response_t *r = &d.u.secagg_unmask_response;
        plait_secagg_reveal_t rev[8];
        size_t n = 0;
        for (size_t i = 0; i < r->n_seed; i++, n++) {
            rev[n].owner = r->seed_shares[i].peer;
            rev[n].kind = PLAIT_SECAGG_REVEAL_B;
            memcpy(rev[n].share, r->seed_shares[i].data, PLAIT_SECAGG_SHARE_LEN);
        }
        ck_assert_uint_eq(r->n_key, 0);
        ck_assert_int_eq(plait_secagg_server_add_reveals(f->srv, 1, rev, n), 0);
        break;
    }
    case PLAIT_MSG_ERROR:
        f->error_code = d.u.error.code;
        break;
    default:
        break;
    }
    plait_msg_free(&d);
    return 0;
}

static int fake_recv(void *conn, uint64_t deadline, plait_msg_t *m)
{
    (void)deadline;
    fake_t *f = conn;
    if (f->qpos == f->qn) return plait_fail(PLAIT_EIO, "fake aggregator: nothing more to say");
    size_t used = 0;
    int rc = plait_wire_parse(f->q[f->qpos], f->qlen[f->qpos], NULL, 0, m, &used);
    free(f->q[f->qpos]);
    f->q[f->qpos++] = NULL;
    return rc;
}

static int fake_peer_error(void *conn, const plait_msg_t *m, uint64_t round)
{
    (void)conn;
    (void)round;
    return m->u.error.code;
}

static void fake_setup(fake_t *f, script_t script)
{
    memset(f, 0, sizeof(*f));
    f->script = script;
    plait_drbg_init(&f->drbg);
    ck_assert_int_eq(plait_drbg_seed_deterministic(&f->drbg, (const uint8_t *)"agent-secagg", 12), 0);
    plait_pki_config_t pc;
    plait_pki_config_default(&pc);
    ck_assert_int_eq(plait_pki_ca_create(&pc, &f->drbg, &f->ca, &f->ca_key), 0);
    for (int i = 1; i <= N; i++) {
        char id[16];
        snprintf(id, sizeof(id), "dev%d", i);
        plait_pki_cert_info_t info;
        ck_assert_int_eq(plait_pki_device_issue(&pc, f->ca, f->ca_key, id, &f->drbg, &f->crt[i], &f->key[i], &info), 0);
    }
    plait_sha256((const uint8_t *)f->ca, strlen(f->ca), f->dep);
    memset(f->seed, 7, 32);
    plait_secagg_params_t p = {N, N - 1, 2, 1, 0};
    plait_secagg_round_init(&f->r);
    ck_assert_int_eq(plait_secagg_round_setup(&f->r, f->dep, 32, ROUND, &p, f->seed, BITS, LEN), 0);
    ck_assert_int_eq(plait_secagg_server_create(&f->srv, &f->r), 0);
    for (int i = 2; i <= N; i++) {
        ck_assert_int_eq(plait_secagg_device_create(&f->dv[i], &f->r, (uint32_t)i, &f->drbg), 0);
        ck_assert_int_eq(plait_secagg_device_advertise(f->dv[i], f->key[i], &f->drbg, &f->adv[i]), 0);
    }
    for (int i = 1; i <= N; i++)
        for (int j = 0; j < LEN; j++) f->x[i][j] = (uint32_t)((i * 7919 + j * 104729) % 65536);
    plait_wire_xfer_init(&f->mx, ROUND, LEN, 0);
    f->task.round_id = ROUND;
    f->task.secure_agg = 1;
    f->task.has_secagg = 1;
    f->task.secagg.index = 1;
    f->task.secagg.n = N;
    f->task.secagg.k = N - 1;
    f->task.secagg.t = 2;
    f->task.secagg.bits = BITS;
    memcpy(f->task.secagg.graph_seed, f->seed, 32);
    f->task.update_elements = LEN;
    f->task.quant_bits = 16;
}

static void fake_free(fake_t *f)
{
    for (size_t i = f->qpos; i < f->qn; i++) free(f->q[i]);
    for (int i = 1; i <= N; i++) {
        plait_secagg_device_free(f->dv[i]);
        plait_pki_free_pem(f->crt[i]);
        plait_pki_free_pem(f->key[i]);
    }
    plait_secagg_server_free(f->srv);
    plait_secagg_round_free(&f->r);
    plait_pki_free_pem(f->ca);
    plait_pki_free_pem(f->ca_key);
    plait_drbg_free(&f->drbg);
}

static int run(fake_t *f, int *acked)
{
    plait_wire_limits_t lim;
    plait_wire_limits_default(&lim);
    plait__agent_sa_env_t env = {f,    fake_send, fake_recv, fake_peer_error, &f->drbg, "dev1", f->ca, f->crt[1],
                                 f->key[1], &lim, 32 /* 8 words of 18 bits per chunk: several chunks */, 1000};
    plait__agent_sa_t *sa = NULL;
    *acked = 0;
    int rc = plait__agent_sa_begin(&env, &f->task, UINT64_MAX / 2, &sa);
    if (rc == 0) rc = plait__agent_sa_finish(sa, &env, f->x[1], LEN, UINT64_MAX / 2, acked);
    plait__agent_sa_free(sa);
    return rc;
}

/* Devices 2..N reveal for survivors {1, 2, 3}; the unmasked sum must be the plain sum. */
static void others_unmask_and_check_sum(fake_t *f)
{
    static const uint32_t all[3] = {1, 2, 3};
    for (uint32_t i = 2; i <= N; i++) {
        plait_secagg_reveal_t rev[8];
        size_t n = 0;
        ck_assert_int_eq(plait_secagg_device_unmask(f->dv[i], all, 3, NULL, 0, rev, 8, &n), 0);
        ck_assert_int_eq(plait_secagg_server_add_reveals(f->srv, i, rev, n), 0);
    }
    uint32_t sum[LEN];
    ck_assert_msg(plait_secagg_server_finish(f->srv, sum, LEN) == 0, "%s", plait_errmsg());
    for (int j = 0; j < LEN; j++)
        ck_assert_uint_eq(sum[j], (f->x[1][j] + f->x[2][j] + f->x[3][j]) & ((1u << BITS) - 1));
}

START_TEST(test_honest_round_sums_exactly)
{
    fake_t f;
    fake_setup(&f, HONEST);
    int acked = 0;
    ck_assert_msg(run(&f, &acked) == 0, "%s", plait_errmsg());
    ck_assert_int_eq(acked, 1);
    ck_assert_int_eq(f.responses, 1);
    ck_assert_int_eq(f.error_code, 0);
    /* devices 2 and 3 answer too; then the masks come off */
    others_unmask_and_check_sum(&f);
    fake_free(&f);
}
END_TEST

START_TEST(test_bad_share_from_hostile_neighbour)
{
    fake_t f;
    fake_setup(&f, BAD_CT);
    int acked = 0;
    ck_assert_msg(run(&f, &acked) == 0, "%s", plait_errmsg());
    ck_assert_int_eq(acked, 1);
    ck_assert_int_eq(f.responses, 1);
    ck_assert_int_eq(f.error_code, 0);
    /* The device revealed no share of device 2 (it holds none); 2's seed comes
     * from 2's own share and 3's (t = 2). */
    others_unmask_and_check_sum(&f);
    fake_free(&f);
}
END_TEST

START_TEST(test_refuses_both_shares_of_one_device)
{
    fake_t f;
    fake_setup(&f, BOTH_SHARES);
    int acked = 0;
    ck_assert_int_eq(run(&f, &acked), PLAIT_EREFUSED);
    ck_assert_int_eq(acked, 1);          /* the masked input was in */
    ck_assert_int_eq(f.responses, 0);     /* nothing revealed */
    ck_assert_int_eq(f.error_code, PLAIT_EREFUSED);
    fake_free(&f);
}
END_TEST

/* Fewer than t - 1 share messages relayed: the device cannot mask, and it leaves the round
 * right after the relay, before training, sending no masked input. */
START_TEST(test_too_few_relayed_leaves_before_training)
{
    fake_t f;
    fake_setup(&f, NO_RELAY);
    plait_wire_limits_t lim;
    plait_wire_limits_default(&lim);
    plait__agent_sa_env_t env = {&f,       fake_send, fake_recv, fake_peer_error, &f.drbg, "dev1", f.ca, f.crt[1],
                                 f.key[1], &lim,      32,        1000};
    plait__agent_sa_t *sa = NULL;
    ck_assert_int_eq(plait__agent_sa_begin(&env, &f.task, UINT64_MAX / 2, &sa), PLAIT_ETHRESHOLD);
    ck_assert_ptr_null(sa);
    ck_assert_int_eq(f.shares, 1);      /* its own shares went out */
    ck_assert_int_eq(f.masked_msgs, 0); /* nothing masked */
    fake_free(&f);
}
END_TEST

START_TEST(test_roster_of_another_round_refused)
{
    fake_t f;
    fake_setup(&f, STALE_ROSTER);
    int acked = 0;
    ck_assert_int_eq(run(&f, &acked), PLAIT_ESTALE);
    ck_assert_int_eq(f.adverts, 1);
    ck_assert_int_eq(f.shares, 0); /* no share left the device */
    fake_free(&f);
}
END_TEST

START_TEST(test_policy)
{
    plait_agent_config_t c;
    plait_agent_config_default(&c);
    plait_msg_task_t t;
    memset(&t, 0, sizeof(t));
    t.clip_norm = 1.0;
    t.dp.mode = PLAIT_DP_NONE;
    ck_assert_int_eq(c.require_secure_agg, 1);
    ck_assert_int_eq(plait__agent_sa_policy(&c, &t), PLAIT_EREFUSED); /* plain: declined by default */
    t.secure_agg = 1;
    ck_assert_int_eq(plait__agent_sa_policy(&c, &t), 0);
    c.min_noise_multiplier = 0.8;
    ck_assert_int_eq(plait__agent_sa_policy(&c, &t), PLAIT_EREFUSED);
    t.dp.mode = PLAIT_DP_CENTRAL;
    t.dp.noise_multiplier = 0.8;
    ck_assert_int_eq(plait__agent_sa_policy(&c, &t), 0);
    c.max_clip_norm = 0.5;
    ck_assert_int_eq(plait__agent_sa_policy(&c, &t), PLAIT_EREFUSED);
    t.clip_norm = 0.5;
    ck_assert_int_eq(plait__agent_sa_policy(&c, &t), 0);
    c.require_secure_agg = 0;
    t.secure_agg = 0;
    ck_assert_int_eq(plait__agent_sa_policy(&c, &t), 0);
}
END_TEST

/* Distributed DP: the device's policy, and the integer noise share it adds before masking. */
#define DDG_N 4096
START_TEST(test_distributed_dp)
{
    plait_agent_config_t c;
    plait_agent_config_default(&c);
    plait_msg_task_t t;
    memset(&t, 0, sizeof(t));
    t.clip_norm = 1.0;
    t.quant_bits = 16;
    t.quant_range = 4.0; /* step 8 / 65535: the clip is 8191.875 steps */
    t.example_cap = 1;
    t.secure_agg = 1;
    t.has_secagg = 1;
    t.secagg.n = 4;
    t.secagg.bits = 20;
    t.dp.mode = PLAIT_DP_DISTRIBUTED;
    t.dp.noise_multiplier = 1.0;
    t.dp.ddg_var_num = 256ull * 16777216ull; /* v = 2^24 = (4096 steps)^2: n v = (8192)^2 */
    t.dp.ddg_var_den = 256;
    ck_assert_int_eq(plait__agent_sa_policy(&c, &t), 0);
    c.min_noise_multiplier = 1.0;
    ck_assert_int_eq(plait__agent_sa_policy(&c, &t), 0); /* 4 · 2^24 >= 8191.875^2 */
    c.min_noise_multiplier = 1.01;
    ck_assert_int_eq(plait__agent_sa_policy(&c, &t), PLAIT_EREFUSED);
    ck_assert_ptr_nonnull(strstr(plait_errmsg(), "noise"));
    c.min_noise_multiplier = 0;
    t.example_cap = 2;
    ck_assert_int_eq(plait__agent_sa_policy(&c, &t), PLAIT_EREFUSED);
    t.example_cap = 1;
    /* without secure aggregation: refused even by a device that does not require it */
    c.require_secure_agg = 0;
    t.secure_agg = 0;
    t.has_secagg = 0;
    ck_assert_int_eq(plait__agent_sa_policy(&c, &t), PLAIT_EREFUSED);
    ck_assert_ptr_nonnull(strstr(plait_errmsg(), "secure aggregation"));
    uint32_t w1 = 7;
    ck_assert_int_eq(plait__agent_sa_ddg(&t, NULL, &w1, 1), PLAIT_EREFUSED);
    ck_assert_uint_eq(w1, 7);
    t.secure_agg = 1;
    t.has_secagg = 1;

    /* The share: integer words in Z_{2^20}, nonzero noise of variance v; the weight word untouched. */
    plait_drbg_t d;
    plait_drbg_init(&d);
    ck_assert_int_eq(plait_drbg_seed(&d, (const uint8_t *)"ddg", 3), 0);
        static uint32_t w[DDG_N + 1];
    for (size_t i = 0; i <= DDG_N; i++) w[i] = 1u << 15;
    ck_assert_int_eq(plait__agent_sa_ddg(&t, &d, w, DDG_N), 0);
    ck_assert_uint_eq(w[DDG_N], 1u << 15);
    double ss = 0;
    size_t nonzero = 0;
    for (size_t i = 0; i < DDG_N; i++) {
        ck_assert_uint_lt(w[i], 1u << 20);
        int64_t e = ((int64_t)w[i] - (1 << 15) + (1 << 19)) % (1 << 20) - (1 << 19); /* centered noise */
        nonzero += e != 0;
        ss += (double)e * (double)e;
    }
    ck_assert_uint_gt(nonzero, DDG_N / 2);
    double var = ss / DDG_N; /* ~ 2^24, relative sd ~ 2.2 %: a 20 % band is about 9 sd */
    ck_assert_msg(fabs(var / 16777216.0 - 1.0) < 0.2, "empirical variance %g", var);
    /* other modes add nothing */
    t.dp.mode = PLAIT_DP_CENTRAL;
    uint32_t w2 = 5;
    ck_assert_int_eq(plait__agent_sa_ddg(&t, &d, &w2, 1), 0);
    ck_assert_uint_eq(w2, 5);
    plait_drbg_free(&d);
}
END_TEST

Suite *agent_secagg_suite(void)
{
    Suite *s = suite_create("agent_secagg");
    TCase *tc = tcase_create("secagg");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_honest_round_sums_exactly);
    tcase_add_test(tc, test_bad_share_from_hostile_neighbour);
    tcase_add_test(tc, test_refuses_both_shares_of_one_device);
    tcase_add_test(tc, test_roster_of_another_round_refused);
    tcase_add_test(tc, test_too_few_relayed_leaves_before_training);
    tcase_add_test(tc, test_policy);
    tcase_add_test(tc, test_distributed_dp);
    suite_add_tcase(s, tc);
    return s;
}
