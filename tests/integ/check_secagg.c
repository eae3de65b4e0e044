/*
 * check_secagg.c: secure aggregation (SecAgg+) against a real
 * `plait-aggregator serve`, with test devices that speak the protocol of
 * docs/protocol.md §9 through the real library (include/plait/secagg.h) and
 * can leave the round at any stage:
 *   - devices dropping after the task, after advertising, after sharing and
 *     right after their masked input: the round still commits, with the
 *     masked inputs that arrived;
 *   - the committed adapter of a secure round is byte for byte the one a
 *     plain round commits from the same updates;
 *   - past the threshold (too few unmask answers) the round fails cleanly,
 *     nothing is committed, and the next round starts from the same version;
 *   - a message of another round is refused (PLAIT_ESTALE);
 *   - one hostile device (garbage share for a neighbour, wrong unmask shares)
 *     does not stop the round: the honest devices drop its share as the agent
 *     does, and the aggregator leaves its wrong shares out.
 * No timing asserts: every wait is a bounded poll of the server log or a
 * blocking receive with a generous timeout.
 */
#include <check.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cli.h"
#include "integ.h"
#include "plait/aggstore.h"
#include "plait/ddg.h"
#include "plait/crypto.h"
#include "plait/secagg.h"
#include "testutil.h"

/* HOSTILE: runs the whole round but seals garbage for its lowest-index neighbour
 * and reveals a wrong share (one bit flipped) of every other device. */
enum { RUN_FULL = 0, STOP_AFTER_TASK, STOP_AFTER_ADVERTISE, STOP_AFTER_SHARES, STOP_AFTER_MASKED, HOSTILE,
       STOP_AFTER_RELAY };

typedef struct {
    const it_dep_t *d;
    char id[32];
    float value;
    int stop;
    int rc;
    plait_msg_task_t task;
} sdev_t;

static void nap_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* Receive the next message of type want (30 s); an Error becomes its code. */
static int expect(it_client_t *c, plait_msg_type_t want, plait_msg_t *m)
{
    int rc = it_recv(c, m, 30000);
    if (rc != 0) return rc;
    if (m->type == want) return 0;
    rc = m->type == PLAIT_MSG_ERROR ? m->u.error.code : PLAIT_EPROTO;
    plait_msg_free(m);
    return rc;
}

/* Connect and take a task (come back later is honoured a bounded number of times). */
static int get_task(it_client_t *c, const it_dep_t *d, const char *id, plait_msg_task_t *t)
{
    int rc = PLAIT_EBUSY;
    for (int attempt = 0; attempt < 150 && rc == PLAIT_EBUSY; attempt++) {
        plait_msg_t m;
        rc = it_client_connect(c, d, id);
        if (rc == 0) rc = it_hello_caps(c, d, PLAIT_CAP_FFA | PLAIT_CAP_SECURE_AGG | PLAIT_CAP_SECAGG);
        if (rc == 0) rc = it_recv(c, &m, 20000);
        if (rc == 0) {
            if (m.type == PLAIT_MSG_TASK) {
                *t = m.u.task;
            } else {
                int ms = m.type == PLAIT_MSG_COME_BACK_LATER ? (int)m.u.come_back_later.retry_ms : 200;
                rc = PLAIT_EBUSY;
                it_client_close(c);
                nap_ms(ms > 300 ? 300 : ms);
            }
            plait_msg_free(&m);
        }
    }
    return rc;
}

static int cmp_ct(const void *a, const void *b)
{
    uint32_t x = ((const plait_secagg_ct_t *)a)->to, y = ((const plait_secagg_ct_t *)b)->to;
    return x < y ? -1 : x > y;
}

static int cmp_rev(const void *a, const void *b)
{
    const plait_secagg_reveal_t *x = a, *y = b;
    if (x->kind != y->kind) return x->kind < y->kind ? -1 : 1;
    return x->owner < y->owner ? -1 : x->owner > y->owner;
}

static int ddg_noised;     /* devices that added a distributed-DP noise share */
static int shares_dropped; /* relayed shares that did not open */

/* One test device's round; returns 0 when it did what its `stop` says. */
static int sdev_run(sdev_t *s)
{
    it_client_t *c = calloc(1, sizeof(*c));
    plait_secagg_round_t r;
    plait_secagg_round_init(&r);
    plait_secagg_device_t *dv = NULL;
    plait_drbg_t drbg;
    plait_drbg_init(&drbg);
    char *ca = it_read(s->d, "ca.crt"), name[64];
    snprintf(name, sizeof(name), "%s.crt", s->id);
    char *crt = it_read(s->d, name);
    snprintf(name, sizeof(name), "%s.key", s->id);
    char *key = it_read(s->d, name);
    plait_secagg_ct_t *cts = NULL;
    plait_secagg_share_t *sh = NULL;
    plait_secagg_reveal_t *rev = NULL;
    uint32_t *w = NULL, *y = NULL;
    uint8_t *packed = NULL;
    plait_msg_t m;
    plait_msg_init(&m, PLAIT_MSG_PING);
    int rc = (!c || !ca || !crt || !key) ? PLAIT_ENOMEM : 0;
    if (rc == 0) rc = plait_drbg_seed(&drbg, (const uint8_t *)s->id, strlen(s->id));
    if (rc == 0) rc = get_task(c, s->d, s->id, &s->task);
    plait_msg_task_t *t = &s->task;
    if (rc == 0 && (!t->secure_agg || !t->has_secagg)) rc = PLAIT_EPROTO;
    if (rc != 0 || s->stop == STOP_AFTER_TASK) goto out;
    uint8_t dep[32];
    plait_sha256((const uint8_t *)ca, strlen(ca), dep);
    plait_secagg_params_t p = {t->secagg.n, t->secagg.k, t->secagg.t, t->secagg.k == t->secagg.n - 1, 0};
    uint32_t self = t->secagg.index, k = t->secagg.k;
    size_t len = (size_t)t->update_elements;
    plait_secagg_advert_t adv;
    if ((rc = plait_secagg_round_setup(&r, dep, 32, t->round_id, &p, t->secagg.graph_seed, t->secagg.bits, len)) ||
        (rc = plait_secagg_device_create(&dv, &r, self, &drbg)) ||
        (rc = plait_secagg_device_advertise(dv, key, &drbg, &adv)))
        goto out;
    plait_msg_init(&m, PLAIT_MSG_SECAGG_ADVERTISE);
    m.u.secagg_advertise.round_id = t->round_id;
    memcpy(m.u.secagg_advertise.mask_pk, adv.c_pk, 32);
    memcpy(m.u.secagg_advertise.enc_pk, adv.s_pk, 32);
    m.u.secagg_advertise.has_b_commit = adv.has_b_commit;
    memcpy(m.u.secagg_advertise.b_commit, adv.b_commit, 32);
    m.u.secagg_advertise.signature = adv.sig;
    m.u.secagg_advertise.sig_len = adv.sig_len;
    m.u.secagg_advertise.cert = (const uint8_t *)crt;
    m.u.secagg_advertise.cert_len = strlen(crt);
    if ((rc = it_send(c, &m)) != 0 || s->stop == STOP_AFTER_ADVERTISE) goto out;
    if ((rc = expect(c, PLAIT_MSG_SECAGG_ROSTER, &m)) != 0) goto out;
    for (size_t i = 0; i < m.u.secagg_roster.n_peers && rc == 0; i++) {
        const plait_secagg_peer_t *q = &m.u.secagg_roster.peers[i];
        plait_secagg_advert_t a;
        memset(&a, 0, sizeof(a));
        a.idx = q->index;
        memcpy(a.c_pk, q->mask_pk, 32);
        memcpy(a.s_pk, q->enc_pk, 32);
        a.has_b_commit = q->has_b_commit;
        memcpy(a.b_commit, q->b_commit, 32);
        memcpy(a.sig, q->signature, q->sig_len);
        a.sig_len = q->sig_len;
        rc = plait_secagg_device_accept_advert(dv, &a, q->cert, q->cert_len, ca);
    }
    plait_msg_free(&m);
    size_t n_ct = 0;
    cts = calloc(k, sizeof(*cts));
    sh = calloc(2 * (size_t)t->secagg.n, sizeof(*sh));
    if (rc == 0 && (!cts || !sh)) rc = PLAIT_ENOMEM;
    if (rc == 0) rc = plait_secagg_device_shares(dv, &drbg, cts, k, &n_ct);
    if (rc != 0) goto out;
    qsort(cts, n_ct, sizeof(*cts), cmp_ct);
    if (s->stop == HOSTILE && n_ct > 0) cts[0].ct[20] ^= 0x5A;
    for (size_t i = 0; i < n_ct; i++) {
        sh[i].peer = cts[i].to;
        sh[i].data = cts[i].ct;
        sh[i].len = PLAIT_SECAGG_CT_LEN;
    }
    plait_msg_init(&m, PLAIT_MSG_SECAGG_SHARES);
    m.u.secagg_shares.round_id = t->round_id;
    m.u.secagg_shares.shares = sh;
    m.u.secagg_shares.n_shares = n_ct;
    if ((rc = it_send(c, &m)) != 0 || s->stop == STOP_AFTER_SHARES) goto out;
    if ((rc = expect(c, PLAIT_MSG_SECAGG_RELAY, &m)) != 0) goto out;
    for (size_t i = 0; i < m.u.secagg_shares.n_shares && rc == 0; i++) {
        plait_secagg_ct_t ct;
        ct.from = m.u.secagg_shares.shares[i].peer;
        ct.to = self;
        memcpy(ct.ct, m.u.secagg_shares.shares[i].data, PLAIT_SECAGG_CT_LEN);
        rc = plait_secagg_device_recv_share(dv, &ct);
        if (rc == PLAIT_EAUTH) { /* as the agent: drop that neighbour's share, stay */
            __atomic_fetch_add(&shares_dropped, 1, __ATOMIC_SEQ_CST);
            rc = 0;
        }
    }
    plait_msg_free(&m);
    if (rc != 0 || s->stop == STOP_AFTER_RELAY) goto out;
    /* the masked update, packed at m bits */
    w = it_update_words(t, s->value);
    y = malloc(len * sizeof(uint32_t));
    size_t plen = plait_pack_bits_len(len, t->secagg.bits);
    packed = malloc(plen);
    if (!w || !y || !packed) {
        rc = PLAIT_ENOMEM;
        goto out;
    }
    if (t->dp.mode == PLAIT_DP_DISTRIBUTED) {
        /* distributed DP: this device's discrete Gaussian share on every span word, before masking */
        plait_rng_t nr;
        if ((rc = plait_rng_seed_drbg(&nr, &drbg)) == 0)
            rc = plait_ddg_add_noise(&nr, t->dp.ddg_var_num, t->dp.ddg_var_den, w, len - 1, t->secagg.bits);
        plait_rng_wipe(&nr);
        if (rc != 0) goto out;
        __atomic_fetch_add(&ddg_noised, 1, __ATOMIC_SEQ_CST);
    }
    if ((rc = plait_secagg_device_mask(dv, w, len, y)) || (rc = plait_pack_bits(y, len, t->secagg.bits, packed, plen)))
        goto out;
    plait_wire_xfer_t x;
    plait_wire_xfer_init(&x, t->round_id, len, 0);
    plait_wire_limits_t lim = c->lim;
    lim.max_chunk_bytes = 4096;
    while ((rc = plait_wire_masked_tx_next(&x, &lim, packed, t->secagg.bits, &m)) == 1)
        if ((rc = it_send(c, &m)) != 0) goto out;
    plait_msg_init(&m, PLAIT_MSG_PING);
    if (rc != 0) goto out;
    if ((rc = expect(c, PLAIT_MSG_ACK, &m)) != 0) goto out;
    plait_msg_free(&m);
    if (s->stop == STOP_AFTER_MASKED) goto out;
    if ((rc = expect(c, PLAIT_MSG_SECAGG_UNMASK_REQUEST, &m)) != 0) goto out;
    const plait_msg_secagg_unmask_request_t *q = &m.u.secagg_unmask_request;
    size_t cap = q->n_survivors + q->n_dropouts, n_rev = 0;
    rev = calloc(cap, sizeof(*rev));
    if (!rev || cap > 2 * (size_t)t->secagg.n) rc = PLAIT_ENOMEM;
    if (rc == 0)
        rc = plait_secagg_device_unmask(dv, q->survivors, q->n_survivors, q->dropouts, q->n_dropouts, rev, cap, &n_rev);
    plait_msg_free(&m);
    if (rc != 0) goto out;
    for (size_t i = 0; i < n_rev && s->stop == HOSTILE; i++)
        if (rev[i].owner != self) rev[i].share[3] ^= 0x10;
    qsort(rev, n_rev, sizeof(*rev), cmp_rev); /* b-shares (kind 0) first, each by owner */
    size_t nb = 0;
    for (size_t i = 0; i < n_rev; i++) {
        nb += rev[i].kind == PLAIT_SECAGG_REVEAL_B;
        sh[i].peer = rev[i].owner;
        sh[i].data = rev[i].share;
        sh[i].len = PLAIT_SECAGG_SHARE_LEN;
    }
    plait_msg_init(&m, PLAIT_MSG_SECAGG_UNMASK_RESPONSE);
    m.u.secagg_unmask_response.round_id = t->round_id;
    m.u.secagg_unmask_response.seed_shares = nb ? sh : NULL;
    m.u.secagg_unmask_response.n_seed = nb;
    m.u.secagg_unmask_response.key_shares = n_rev > nb ? sh + nb : NULL;
    m.u.secagg_unmask_response.n_key = n_rev - nb;
    rc = it_send(c, &m);
    plait_msg_init(&m, PLAIT_MSG_PING);
    if (rc == 0) (void)plait_tls_fd_close(c->tls, c->fd);
out:
    plait_msg_free(&m);
    if (c) it_client_close(c); /* the droppers leave abruptly */
    free(c);
    plait_secagg_device_free(dv);
    plait_secagg_round_free(&r);
    plait_drbg_free(&drbg);
    free(cts);
    free(sh);
    free(rev);
    free(w);
    free(y);
    free(packed);
    free(ca);
    free(crt);
    free(key);
    return rc;
}

static void *sdev_main(void *arg)
{
    sdev_t *s = arg;
    s->rc = sdev_run(s);
    return NULL;
}

/* Run n devices concurrently (devices dev<first>..), stop[i] each; returns how many succeeded. */
static int run_devices(const it_dep_t *d, int first, int n, const int *stop, const float *value)
{
    pthread_t th[16];
    sdev_t s[16];
    for (int i = 0; i < n; i++) {
        memset(&s[i], 0, sizeof(s[i]));
        s[i].d = d;
        s[i].stop = stop ? stop[i] : RUN_FULL;
        s[i].value = value ? value[i] : 0.001f * (float)(i + 1);
        snprintf(s[i].id, sizeof(s[i].id), "dev%d", first + i);
        ck_assert_int_eq(pthread_create(&th[i], NULL, sdev_main, &s[i]), 0);
    }
    int ok = 0;
    for (int i = 0; i < n; i++) {
        pthread_join(th[i], NULL);
        if (s[i].rc == 0) ok++;
        else fprintf(stderr, "secagg device %s (stop %d): %s\n", s[i].id, s[i].stop, plait_err_name(s[i].rc));
    }
    return ok;
}

static void dep_up(it_dep_t *d, const char *tag, int ndev, const char *cohort, const char *minc, const char *secure,
                   const char *dropout)
{
    ck_assert_int_eq(it_init(d, tag, cohort, minc, "overselect=1", "selection_timeout_s=60", "round_timeout_s=60",
                             "secagg_stage_timeout_s=30", dropout, "idle_timeout_s=60",
                             "max_chunk_bytes=4096", "retry_ms=200", secure,
                             "max_preauth_per_addr=64", /* every test device connects from 127.0.0.1 */ NULL),
                     0);
    for (int i = 0; i < ndev; i++) {
        char id[32];
        snprintf(id, sizeof(id), "dev%d", i);
        ck_assert_int_eq(it_enroll(d, id), 0);
    }
    ck_assert_int_eq(it_start(d, NULL), 0);
}

START_TEST(test_secure_dropouts_at_each_stage)
{
    it_dep_t d;
    dep_up(&d, "integ_sa_drop", 12, "target_cohort=12", "min_cohort=6", "secure_agg=true",
           "secagg_dropout=0.4");
    static const int stop[12] = {RUN_FULL,       RUN_FULL,          RUN_FULL,          RUN_FULL,
                                 RUN_FULL,       RUN_FULL,          RUN_FULL,          RUN_FULL,
                                 STOP_AFTER_TASK, STOP_AFTER_ADVERTISE, STOP_AFTER_SHARES, STOP_AFTER_MASKED};
    ck_assert_int_eq(run_devices(&d, 0, 12, stop, NULL), 12);
    /* 8 full devices + the one that left right after its masked input are in the sum. */
    ck_assert_msg(it_log_wait(&d, "round committed round=1 version=2 accepted=9", 60000), "round 1 did not commit");
    ck_assert_int_eq(it_stop(&d), 0);
}
END_TEST

START_TEST(test_secure_hostile_device)
{
    it_dep_t d;
    dep_up(&d, "integ_sa_hostile", 10, "target_cohort=10", "min_cohort=6", "secure_agg=true",
           "secagg_dropout=0.3");
    /* dev0 is hostile; dev9 leaves after taking its relayed shares, so key shares
     * are revealed too. */
    static const int stop[10] = {HOSTILE, RUN_FULL, RUN_FULL, RUN_FULL, RUN_FULL,
                                 RUN_FULL, RUN_FULL, RUN_FULL, RUN_FULL, STOP_AFTER_RELAY};
    shares_dropped = 0;
    ck_assert_int_eq(run_devices(&d, 0, 10, stop, NULL), 10);
    ck_assert_int_eq(shares_dropped, 1);
    ck_assert_msg(it_log_wait(&d, "round committed round=1 version=2 accepted=9", 60000), "round 1 did not commit");
    ck_assert_int_eq(it_log_count(&d, "(1 devices revealed inconsistent shares"), 1);
    ck_assert_int_eq(it_stop(&d), 0);
}
END_TEST

typedef struct {
    const it_dep_t *d;
    char id[16];
    float v;
    int rc;
} plain_t;

static void *plain_main(void *arg)
{
    plain_t *p = arg;
    p->rc = it_participate(p->d, p->id, p->v, NULL);
    return NULL;
}

static uint8_t *export_v2(const it_dep_t *d, size_t *n)
{
    char out[700];
    snprintf(out, sizeof(out), "%s/v2.safetensors", d->dir);
    ck_assert_int_eq(it_cli("export", d->dir, "--version", "2", "--out", out, NULL), 0);
    uint8_t *b = tu_read_file(out, n);
    ck_assert_ptr_nonnull(b);
    return b;
}

START_TEST(test_secure_sum_equals_plain_sum)
{
    static const float v[3] = {0.01f, -0.0075f, 0.005f}; /* norms below the clip at rank 8 (the plain round checks) */
    it_dep_t ds, dp;
    dep_up(&ds, "integ_sa_eq_s", 3, "target_cohort=3", "min_cohort=3", "secure_agg=true",
           "secagg_dropout=0.3");
    dep_up(&dp, "integ_sa_eq_p", 3, "target_cohort=3", "min_cohort=3", "secure_agg=false",
           "secagg_dropout=0.3");
    ck_assert_int_eq(run_devices(&ds, 0, 3, NULL, v), 3);
    plain_t pa[3];
    pthread_t pt[3];
    for (int i = 0; i < 3; i++) { /* the same words, in the clear */
        pa[i].d = &dp;
        snprintf(pa[i].id, sizeof(pa[i].id), "dev%d", i);
        pa[i].v = v[i];
        pa[i].rc = -1;
        ck_assert_int_eq(pthread_create(&pt[i], NULL, plain_main, &pa[i]), 0);
    }
    for (int i = 0; i < 3; i++) {
        pthread_join(pt[i], NULL);
        ck_assert_int_eq(pa[i].rc, 0);
    }
    ck_assert(it_log_wait(&ds, "round committed round=1 version=2 accepted=3", 60000));
    ck_assert(it_log_wait(&dp, "round committed round=1 version=2 accepted=3", 60000));
    /* Both deployments start from the same adapter (same model, seed and config): the
     * unmasked sum must give the same next version, bit for bit. */
    size_t ns = 0, np = 0;
    uint8_t *as = export_v2(&ds, &ns), *ap = export_v2(&dp, &np);
    ck_assert_uint_eq(ns, np);
    ck_assert_mem_eq(as, ap, ns);
    free(as);
    free(ap);

    /* A message of another round is refused: dev0 joins round 2 and advertises for round 1. */
    it_client_t *c = calloc(1, sizeof(*c));
    plait_msg_task_t t;
    ck_assert_int_eq(get_task(c, &ds, "dev0", &t), 0);
    ck_assert_uint_eq(t.round_id, 2);
    plait_msg_t m;
    plait_msg_init(&m, PLAIT_MSG_SECAGG_ADVERTISE);
    uint8_t sig[8] = {1};
    m.u.secagg_advertise.round_id = 1;
    m.u.secagg_advertise.signature = sig;
    m.u.secagg_advertise.sig_len = sizeof(sig);
    m.u.secagg_advertise.cert = sig;
    m.u.secagg_advertise.cert_len = sizeof(sig);
    ck_assert_int_eq(it_send(c, &m), 0);
    ck_assert_int_eq(it_recv(c, &m, 30000), 0);
    ck_assert_int_eq(m.type, PLAIT_MSG_ERROR);
    ck_assert_int_eq(m.u.error.code, PLAIT_ESTALE);
    plait_msg_free(&m);
    it_client_close(c);
    free(c);
    ck_assert_int_eq(it_stop(&ds), 0);
    ck_assert_int_eq(it_stop(&dp), 0);
}
END_TEST

START_TEST(test_secure_below_threshold_fails_cleanly)
{
    it_dep_t d;
    dep_up(&d, "integ_sa_thr", 4, "target_cohort=4", "min_cohort=2", "secure_agg=true",
           "secagg_dropout=0.2");
    /* Two of four leave right after their masked input: too few unmask answers. */
    static const int stop[4] = {RUN_FULL, RUN_FULL, STOP_AFTER_MASKED, STOP_AFTER_MASKED};
    int ok = run_devices(&d, 0, 4, stop, NULL);
    ck_assert_int_ge(ok, 2); /* the full ones may see the round fail (an Error) instead of finishing */
    ck_assert_msg(it_log_wait(&d, "round failed round=1", 60000), "round 1 did not fail");
    ck_assert_int_eq(it_log_count(&d, "round committed round=1"), 0);
    /* The next round starts from the same version and commits with everyone. */
    ck_assert_int_eq(run_devices(&d, 0, 4, NULL, NULL), 4);
    ck_assert_msg(it_log_wait(&d, "round committed round=2 version=2 accepted=4", 60000), "round 2 did not commit");
    ck_assert_int_eq(it_stop(&d), 0);
}
END_TEST

typedef struct {
    const it_dep_t *d;
    int ok;
} bg_round_t;

static void *bg_round(void *arg)
{
    bg_round_t *b = arg;
    b->ok = run_devices(b->d, 0, 4, NULL, NULL);
    return NULL;
}

/* The unmasking runs in a job: while it takes 20 s (test hook), the loop still serves a new
 * device's handshake and Hello (it is told to come back later), and the round then commits. */
START_TEST(test_secure_unmask_off_the_loop)
{
    it_dep_t d;
    ck_assert_int_eq(setenv("PLAIT_TEST_SECAGG_FINISH_DELAY_MS", "20000", 1), 0);
    dep_up(&d, "integ_sa_live", 5, "target_cohort=4", "min_cohort=2", "secure_agg=true", "secagg_dropout=0.2");
    unsetenv("PLAIT_TEST_SECAGG_FINISH_DELAY_MS"); /* the aggregator has it; the devices need not */
    bg_round_t b = {&d, 0};
    pthread_t th;
    ck_assert_int_eq(pthread_create(&th, NULL, bg_round, &b), 0);
    ck_assert_msg(it_log_wait(&d, "secagg round=1: unmasking", 120000), "round 1 did not reach the unmasking");
    it_client_t *c = calloc(1, sizeof(*c));
    ck_assert_int_eq(it_client_connect(c, &d, "dev4"), 0);
    ck_assert_int_eq(it_hello_caps(c, &d, PLAIT_CAP_FFA | PLAIT_CAP_SECURE_AGG | PLAIT_CAP_SECAGG), 0);
    plait_msg_t m;
    ck_assert_int_eq(it_recv(c, &m, 15000), 0);
    ck_assert_int_eq(m.type, PLAIT_MSG_COME_BACK_LATER);
    plait_msg_free(&m);
    /* answered while the sum was still being unmasked */
    ck_assert_int_eq(it_log_count(&d, "secagg round=1: unmasked the sum"), 0);
    it_client_close(c);
    free(c);
    pthread_join(th, NULL);
    ck_assert_int_eq(b.ok, 4);
    ck_assert_msg(it_log_wait(&d, "round committed round=1 version=2 accepted=4", 60000), "round 1 did not commit");
    ck_assert_int_eq(it_stop(&d), 0);
}
END_TEST

static int cli_capture(char *out, size_t cap, char **argv)
{
    int argc = 0;
    while (argv[argc]) argc++;
    FILE *o = tmpfile(), *e = tmpfile();
    int rc = plait__agg_cli_main(argc, argv, o, e);
    rewind(o);
    out[fread(out, 1, cap - 1, o)] = '\0';
    fclose(o);
    fclose(e);
    return rc;
}

static int ledger_cb(void *ud, const plait_aggstore_ledger_t *row)
{
    plait_aggstore_ledger_t *rows = ud;
    if (rows[0].round_id == 0) rows[0] = *row;
    else rows[1] = *row;
    return 0;
}

/* dp = distributed: the devices add discrete Gaussian shares before masking; the round
 * commits, the ledger says ddg with its parameters, and `privacy DIR` composes them with
 * the DDG accountant. */
START_TEST(test_secure_distributed_dp)
{
    it_dep_t d;
    ck_assert_int_eq(it_init(&d, "integ_sa_ddg", "target_cohort=3", "min_cohort=3", "overselect=1",
                             "selection_timeout_s=60", "round_timeout_s=60", "secagg_stage_timeout_s=30",
                             "secagg_dropout=0.3", "idle_timeout_s=60", "max_chunk_bytes=4096", "retry_ms=200",
                             "secure_agg=true", "dp=distributed", "noise_multiplier=1.5", "example_cap=1",
                             "dp_delta=1e-5", "max_preauth_per_addr=64", NULL),
                     0);
    for (int i = 0; i < 3; i++) {
        char id[32];
        snprintf(id, sizeof(id), "dev%d", i);
        ck_assert_int_eq(it_enroll(&d, id), 0);
    }
    ck_assert_int_eq(it_start(&d, NULL), 0);
    ddg_noised = 0;
    ck_assert_int_eq(run_devices(&d, 0, 3, NULL, NULL), 3);
    ck_assert_int_eq(__atomic_load_n(&ddg_noised, __ATOMIC_SEQ_CST), 3); /* every task was distributed DP */
    ck_assert(it_log_wait(&d, "round committed round=1 version=2 accepted=3", 60000));
    ck_assert_int_eq(it_stop(&d), 0);

    char path[sizeof(d.dir) + 16];
    snprintf(path, sizeof(path), "%s/plait.db", d.dir);
    plait_aggstore_config_t cfg;
    plait_aggstore_config_default(&cfg);
    cfg.path = path;
    cfg.read_only = true;
    plait_aggstore_t *st = NULL;
    ck_assert_int_eq(plait_aggstore_open(&st, &cfg), 0);
    plait_aggstore_ledger_t rows[2];
    memset(rows, 0, sizeof(rows));
    ck_assert_int_eq(plait_aggstore_ledger_foreach(st, ledger_cb, rows), 0);
    plait_aggstore_close(st);
    const plait_aggstore_ledger_t *l = &rows[0];
    ck_assert_int_eq(rows[1].round_id, 0); /* one row */
    ck_assert_str_eq(l->mechanism, "ddg");
    ck_assert_int_eq(l->ddg_n, 3);
    ck_assert(l->q == 1.0 && l->noise_multiplier == 1.5 && l->delta == 1e-5);
    /* v = (z · clip / step)^2 / min_cohort, rounded up to a multiple of 1/256 */
    plait_quant_config_t qc = {.bits = 16, .range = 1.0};
    double cs = 1.0 / plait_quant_step(&qc), want = 1.5 * 1.5 * cs * cs / 3;
    ck_assert_msg(l->ddg_var >= want && l->ddg_var < want + 1.0 / 256 + 1e-6, "ddg_var %g, want %g", l->ddg_var, want);
    ck_assert(l->ddg_dim >= 1);
    ck_assert(fabs(l->ddg_l2 - plait_ddg_rounded_l2(cs, (size_t)l->ddg_dim)) < 1e-9);

    static char out[8192];
    char *argv[] = {"plait-aggregator", "privacy", d.dir, "--json", NULL};
    ck_assert_int_eq(cli_capture(out, sizeof(out), argv), 0);
    ck_assert_msg(strstr(out, "\"mechanism\": \"ddg\"") != NULL, "%s", out);
    ck_assert_msg(strstr(out, "\"amortized_valid\": true") != NULL, "%s", out);
    plait_accountant_t acc;
    ck_assert_int_eq(plait_accountant_init(&acc, NULL, 0), 0);
    ck_assert_int_eq(plait_accountant_compose_ddg(&acc, l->ddg_l2, (size_t)l->ddg_dim, l->ddg_var, 3, 1), 0);
    double eps = 0, order = 0;
    ck_assert_int_eq(plait_accountant_epsilon(&acc, 1e-5, PLAIT_EPS_IMPROVED, &eps, &order), 0);
    const char *e = strstr(out, "\"epsilon\": ");
    ck_assert_ptr_nonnull(e);
    double got = strtod(e + strlen("\"epsilon\": "), NULL);
    ck_assert_msg(got == eps && isfinite(eps) && eps > 0, "privacy says %.17g, the DDG accountant %.17g", got, eps);
    /* and the Gaussian accountant at the same z would say something else */
    plait_accountant_t g;
    double eg = 0;
    ck_assert_int_eq(plait_accountant_init(&g, NULL, 0), 0);
    ck_assert_int_eq(plait_accountant_compose(&g, 1.0, 1.5, 1), 0);
    ck_assert_int_eq(plait_accountant_epsilon(&g, 1e-5, PLAIT_EPS_IMPROVED, &eg, &order), 0);
    ck_assert(eg != eps);
}
END_TEST

Suite *secagg_suite(void)
{
    Suite *s = suite_create("integ_secagg");
    TCase *tc = tcase_create("secagg");
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, test_secure_dropouts_at_each_stage);
    tcase_add_test(tc, test_secure_hostile_device);
    tcase_add_test(tc, test_secure_sum_equals_plain_sum);
    tcase_add_test(tc, test_secure_below_threshold_fails_cleanly);
    tcase_add_test(tc, test_secure_unmask_off_the_loop);
    tcase_add_test(tc, test_secure_distributed_dp);
    suite_add_tcase(s, tc);
    return s;
}
