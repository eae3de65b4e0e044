/*
 * server_secagg.c: the aggregator's SecAgg+ stages for one round (see
 * server_secagg.h for the stage diagram). Pure bookkeeping around
 * include/plait/secagg.h: the library does the cryptography (advert
 * signatures, the graph, Shamir reconstruction, unmasking); this file checks
 * who may send what and when, relays, and reassembles packed masked uploads.
 *
 * Invariants:
 *   - Every device index is 1..n; member i - 1 holds index i.
 *   - A device enters the library's sets in stage order only: advert (U1) in
 *     ADVERTISE, shares (U2) in SHARE, masked input (U3) in MASKED once the
 *     round core accepted it; anything else is refused with PLAIT_EPROTO.
 *   - Bounds before allocations: at most k ciphertexts per device, one
 *     packed buffer of ceil(len·m/8) bytes per device uploading.
 *   - Secrets never reach a log line; ciphertexts and masked words are
 *     opaque here and wiped when freed.
 */
#include "server_secagg.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "plait/crypto.h"
#include "plait/log.h"
#include "plait/pki.h"
#include "plait/secagg.h"

/* ST_FINISH: every reveal is in (or its time is up); the unmasking runs off the loop thread
 * (plait__sa_finish_work), and the next step applies its outcome. */
typedef enum { ST_ADVERTISE, ST_SHARE, ST_MASKED, ST_UNMASK, ST_FINISH, ST_END } stage_t;

typedef struct {
    uint64_t client; /* 0: slot not assigned */
    char device[PLAIT_PKI_ID_MAX + 1];
    int advertised, shared, masked, asked, answered, gone;
    plait_secagg_advert_t adv;
    uint8_t *cert;
    size_t cert_len;
    plait_secagg_ct_t *cts; /* the ciphertexts this device sent, one per recipient */
    size_t n_cts;
    uint8_t *packed; /* masked upload being reassembled */
    plait_wire_xfer_t x;
} member_t;

struct plait__sa_s {
    plait__sa_config_t cfg;
    plait__sa_io_t io;
    uint8_t dep[PLAIT_SECAGG_DEP_MAX];
    char *ca_pem;
    plait_secagg_round_t r;
    plait_secagg_server_t *srv;
    uint8_t seed[PLAIT_WIRE_SECAGG_SEED_LEN];
    member_t *mb;
    uint32_t assigned;
    stage_t stage;
    double t_stage;      /* when the current stage's clock started (0: not yet) */
    plait__sa_result_t result;
    uint32_t *sum;
    int finish_done; /* ST_FINISH: plait__sa_finish_work ran; finish_why says why it failed ("" ok) */
    char finish_why[300];
};

static member_t *find(const plait__sa_t *sa, uint64_t client, uint32_t *idx)
{
    for (uint32_t i = 0; i < sa->assigned; i++)
        if (sa->mb[i].client == client) {
            if (idx) *idx = i + 1;
            return &sa->mb[i];
        }
    return NULL;
}

int plait__sa_open(plait__sa_t **out, const plait__sa_config_t *cfg, const plait__sa_io_t *io, double now)
{
    (void)now;
    if (!out || !cfg || !io || !cfg->dep || cfg->dep_len < 1 || cfg->dep_len > PLAIT_SECAGG_DEP_MAX ||
        !cfg->ca_pem)
        return plait_fail(PLAIT_EINVAL, "secagg: bad arguments");
    *out = NULL;
    plait__sa_t *sa = calloc(1, sizeof(*sa));
    if (!sa) return plait_fail(PLAIT_ENOMEM, "secagg: round state");
    sa->cfg = *cfg;
    sa->io = *io;
    memcpy(sa->dep, cfg->dep, cfg->dep_len);
    sa->cfg.dep = sa->dep;
    plait_secagg_round_init(&sa->r);
    int rc;
    unsigned m = 0;
    plait_secagg_params_t p;
    plait_drbg_t d;
    plait_drbg_init(&d);
    if ((rc = plait_secagg_mask_bits(cfg->quant_bits, cfg->n, &m)) != 0) goto fail;
    if ((rc = plait_secagg_params_choose(cfg->n, cfg->dropout, cfg->corrupt, cfg->sigma, &p)) != 0) goto fail;
    if ((rc = plait_drbg_seed(&d, (const uint8_t *)"plait secagg graph", 18)) != 0 ||
        (rc = plait_drbg_random(&d, sa->seed, sizeof(sa->seed))) != 0)
        goto fail;
    if ((rc = plait_secagg_round_setup(&sa->r, sa->dep, cfg->dep_len, cfg->round_id, &p, sa->seed, m, cfg->len)) !=
        0)
        goto fail;
    if ((rc = plait_secagg_server_create(&sa->srv, &sa->r)) != 0) goto fail;
    sa->ca_pem = strdup(cfg->ca_pem);
    sa->mb = calloc(p.n, sizeof(member_t));
    if (!sa->ca_pem || !sa->mb) {
        rc = plait_fail(PLAIT_ENOMEM, "secagg: %u members", p.n);
        goto fail;
    }
    sa->cfg.ca_pem = sa->ca_pem;
    sa->stage = ST_ADVERTISE;
    plait_drbg_free(&d);
    PLAIT_LOG(PLAIT_LOG_INFO, "secagg round=%llu: n=%u k=%u t=%u m=%u (%s graph, failure bound 2^%.1f)",
              (unsigned long long)cfg->round_id, p.n, p.k, p.t, m, p.complete ? "complete" : "k-regular",
              p.log2_fail);
    *out = sa;
    return 0;
fail:
    plait_drbg_free(&d);
    plait__sa_free(sa);
    return rc;
}

static void member_wipe(member_t *mb, size_t plen)
{
    if (mb->cts) plait_zeroize(mb->cts, mb->n_cts * sizeof(*mb->cts));
    free(mb->cts);
    mb->cts = NULL;
    mb->n_cts = 0;
    free(mb->cert);
    mb->cert = NULL;
    if (mb->packed) plait_zeroize(mb->packed, plen);
    free(mb->packed);
    mb->packed = NULL;
}

void plait__sa_free(plait__sa_t *sa)
{
    if (!sa) return;
    if (sa->mb)
        for (uint32_t i = 0; i < sa->r.p.n; i++)
            member_wipe(&sa->mb[i], (size_t)plait_wire_packed_len(sa->cfg.len, sa->r.m));
    free(sa->mb);
    if (sa->sum) plait_zeroize(sa->sum, sa->cfg.len * sizeof(uint32_t));
    free(sa->sum);
    plait_secagg_server_free(sa->srv);
    plait_secagg_round_free(&sa->r);
    free(sa->ca_pem);
    free(sa);
}

int plait__sa_assign(plait__sa_t *sa, uint64_t client, const char *device)
{
    if (find(sa, client, NULL)) return 0;
    if (sa->assigned >= sa->r.p.n || sa->stage != ST_ADVERTISE)
        return plait_fail(PLAIT_EBUSY, "secagg: all %u indices are taken", sa->r.p.n);
    member_t *mb = &sa->mb[sa->assigned++];
    mb->client = client;
    snprintf(mb->device, sizeof(mb->device), "%s", device);
    return 0;
}

int plait__sa_has(const plait__sa_t *sa, uint64_t client) { return sa && find(sa, client, NULL) != NULL; }

int plait__sa_task(const plait__sa_t *sa, uint64_t client, plait_msg_task_t *t)
{
    uint32_t idx = 0;
    if (!find(sa, client, &idx)) return plait_fail(PLAIT_ENOENT, "secagg: device has no index");
    t->secure_agg = 1;
    t->packed_update = 0; /* masked input travels packed at m bits in its own messages */
    t->has_secagg = 1;
    t->secagg.index = idx;
    t->secagg.n = sa->r.p.n;
    t->secagg.k = sa->r.p.k;
    t->secagg.t = sa->r.p.t;
    t->secagg.bits = sa->r.m;
    memcpy(t->secagg.graph_seed, sa->seed, sizeof(sa->seed));
    return 0;
}

/* ---- messages ------------------------------------------------------------ */

static int on_advertise(plait__sa_t *sa, member_t *mb, uint32_t idx, const uint8_t fp[32],
                        const plait_msg_secagg_advertise_t *a)
{
    if (sa->stage != ST_ADVERTISE || mb->advertised)
        return plait_fail(PLAIT_EPROTO, "secagg_advertise: %s", mb->advertised ? "repeated" : "after the stage closed");
    /* The advert's certificate must be the one this device authenticated with in TLS. */
    plait_pki_cert_info_t info;
    int rc = plait_pki_cert_info(a->cert, a->cert_len, &info);
    if (rc != 0) return plait_fail(PLAIT_EPROTO, "secagg_advertise.device_cert: unparseable");
    if (plait_ct_memcmp(info.fingerprint, fp, 32) != 0)
        return plait_fail(PLAIT_EAUTH, "secagg_advertise.device_cert: not the certificate of this connection");
    plait_secagg_advert_t adv;
    memset(&adv, 0, sizeof(adv));
    adv.idx = idx;
    memcpy(adv.c_pk, a->mask_pk, PLAIT_SECAGG_KEY_LEN);
    memcpy(adv.s_pk, a->enc_pk, PLAIT_SECAGG_KEY_LEN);
    adv.has_b_commit = a->has_b_commit;
    memcpy(adv.b_commit, a->b_commit, PLAIT_SECAGG_KEY_LEN);
    if (a->sig_len > PLAIT_SECAGG_SIG_MAX)
        return plait_fail(PLAIT_EPROTO, "secagg_advertise.signature: %zu bytes above %d", a->sig_len,
                          PLAIT_SECAGG_SIG_MAX);
    memcpy(adv.sig, a->signature, a->sig_len);
    adv.sig_len = a->sig_len;
    if ((rc = plait_secagg_advert_verify(&sa->r, &adv, a->cert, a->cert_len, sa->ca_pem)) != 0)
        return plait_fail(rc == PLAIT_EAUTH ? PLAIT_EAUTH : PLAIT_EPROTO, "secagg_advertise: %s", plait_errmsg());
    if (!(mb->cert = malloc(a->cert_len))) return plait_fail(PLAIT_ENOMEM, "secagg: certificate");
    memcpy(mb->cert, a->cert, a->cert_len);
    mb->cert_len = a->cert_len;
    if ((rc = plait_secagg_server_add_advert(sa->srv, &adv)) != 0) {
        free(mb->cert);
        mb->cert = NULL;
        return plait_fail(PLAIT_EPROTO, "secagg_advertise: %s", plait_errmsg());
    }
    mb->adv = adv;
    mb->advertised = 1;
    return 0;
}

static int on_shares(plait__sa_t *sa, member_t *mb, uint32_t idx, const plait_msg_secagg_shares_t *sh)
{
    if (sa->stage != ST_SHARE || !mb->advertised || mb->shared)
        return plait_fail(PLAIT_EPROTO, "secagg_shares: %s",
                          mb->shared ? "repeated" : !mb->advertised ? "from a device that did not advertise"
                                                                    : "outside the share stage");
    if (sh->n_shares > sa->r.p.k)
        return plait_fail(PLAIT_EPROTO, "secagg_shares.shares: %zu above k %u", sh->n_shares, sa->r.p.k);
    for (size_t i = 0; i < sh->n_shares; i++) {
        uint32_t to = sh->shares[i].peer;
        if (to > sa->r.p.n || !plait_secagg_adjacent(&sa->r, idx, to) || !sa->mb[to - 1].advertised)
            return plait_fail(PLAIT_EPROTO, "secagg_shares.shares[%zu].peer: %u is not an advertised neighbour", i,
                              to);
        if (sh->shares[i].len != PLAIT_SECAGG_CT_LEN)
            return plait_fail(PLAIT_EPROTO, "secagg_shares.shares[%zu].data: %zu bytes, want %d", i,
                              sh->shares[i].len, PLAIT_SECAGG_CT_LEN);
    }
    /* One ciphertext for every advertised neighbour, each once: a neighbour left without a share
     * would not add the pair mask that the unmasking later removes, and the sum would be wrong. */
    size_t want = 0;
    const uint32_t *nb = sa->r.nbr + (size_t)(idx - 1) * sa->r.p.k;
    for (uint32_t j = 0; j < sa->r.p.k; j++) want += sa->mb[nb[j] - 1].advertised ? 1 : 0;
    for (size_t i = 0; i < sh->n_shares; i++)
        for (size_t j = 0; j < i; j++)
            if (sh->shares[j].peer == sh->shares[i].peer)
                return plait_fail(PLAIT_EPROTO, "secagg_shares.shares[%zu].peer: %u given twice", i,
                                  sh->shares[i].peer);
    if (sh->n_shares != want)
        return plait_fail(PLAIT_EPROTO, "secagg_shares.shares: %zu ciphertexts for %zu advertised neighbours",
                          sh->n_shares, want);
    plait_secagg_ct_t *cts = calloc(sh->n_shares ? sh->n_shares : 1, sizeof(*cts));
    if (!cts) return plait_fail(PLAIT_ENOMEM, "secagg: %zu shares", sh->n_shares);
    for (size_t i = 0; i < sh->n_shares; i++) {
        cts[i].from = idx;
        cts[i].to = sh->shares[i].peer;
        memcpy(cts[i].ct, sh->shares[i].data, PLAIT_SECAGG_CT_LEN);
    }
    int rc = plait_secagg_server_mark_shared(sa->srv, idx);
    if (rc != 0) {
        free(cts);
        return plait_fail(PLAIT_EPROTO, "secagg_shares: %s", plait_errmsg());
    }
    mb->cts = cts;
    mb->n_cts = sh->n_shares;
    mb->shared = 1;
    return 0;
}

static int on_masked(plait__sa_t *sa, member_t *mb, uint32_t idx, const plait_msg_secagg_masked_input_t *c)
{
    if (sa->stage != ST_MASKED || !mb->shared || mb->masked)
        return plait_fail(mb->masked || sa->stage > ST_MASKED ? PLAIT_ESTALE : PLAIT_EPROTO,
                          "secagg_masked_input: %s",
                          mb->masked            ? "repeated"
                          : sa->stage > ST_MASKED ? "after the masked-input stage closed"
                                                  : !mb->shared ? "from a device that did not share"
                                                                : "before the shares were relayed");
    if (c->bits != sa->r.m || c->total_elements != sa->cfg.len)
        return plait_fail(PLAIT_EPROTO, "secagg_masked_input: %llu elements of %u bits, the round has %zu of %u",
                          (unsigned long long)c->total_elements, c->bits, sa->cfg.len, sa->r.m);
    size_t plen = (size_t)plait_wire_packed_len(sa->cfg.len, sa->r.m);
    if (!mb->packed) {
        if (c->offset != 0) return plait_fail(PLAIT_EPROTO, "secagg_masked_input: first chunk at %llu",
                                              (unsigned long long)c->offset);
        if (!(mb->packed = calloc(plen, 1))) return plait_fail(PLAIT_ENOMEM, "secagg: %zu packed bytes", plen);
        plait_wire_xfer_init(&mb->x, sa->cfg.round_id, sa->cfg.len, 0);
    }
    int rc = plait_wire_masked_rx_add(&mb->x, c, sa->r.m, mb->packed);
    if (rc < 0) return plait_fail(PLAIT_EPROTO, "%s", plait_errmsg());
    if (rc == 0) return 0;
    uint32_t *y = malloc(sa->cfg.len * sizeof(uint32_t));
    if (!y) return plait_fail(PLAIT_ENOMEM, "secagg: masked words");
    rc = plait_unpack_bits(mb->packed, plen, sa->cfg.len, sa->r.m, y);
    plait_zeroize(mb->packed, plen);
    free(mb->packed);
    mb->packed = NULL;
    if (rc != 0) {
        free(y);
        return plait_fail(PLAIT_EPROTO, "secagg_masked_input.data: %s", plait_errmsg());
    }
    /* The round core first: it may refuse (late, duplicate); only then the library's sum. */
    rc = sa->io.accept(sa->io.ud, mb->client);
    if (rc == 0) {
        rc = plait_secagg_server_add_masked(sa->srv, idx, y, sa->cfg.len);
        if (rc != 0) rc = plait_fail(PLAIT_EINTERNAL, "secagg: the round core took a masked input the library refused: %s",
                                     plait_errmsg());
    }
    plait_zeroize(y, sa->cfg.len * sizeof(uint32_t));
    free(y);
    if (rc != 0) return rc;
    mb->masked = 1;
    plait_msg_t a;
    plait_msg_init(&a, PLAIT_MSG_ACK);
    a.u.ack.round_id = sa->cfg.round_id;
    a.u.ack.kind = PLAIT_ACK_UPDATE;
    a.u.ack.elements = sa->cfg.len;
    (void)sa->io.send(sa->io.ud, mb->client, &a);
    PLAIT_LOG(PLAIT_LOG_INFO, "secagg round=%llu: masked input accepted device=%s index=%u (%zu bytes packed)",
              (unsigned long long)sa->cfg.round_id, mb->device, idx, plen);
    return 0;
}

static int on_unmask(plait__sa_t *sa, member_t *mb, uint32_t idx, const plait_msg_secagg_unmask_response_t *r)
{
    if (sa->stage != ST_UNMASK || !mb->asked || mb->answered)
        return plait_fail(mb->answered ? PLAIT_EPROTO : PLAIT_ESTALE, "secagg_unmask_response: %s",
                          mb->answered ? "repeated" : "not asked for now");
    size_t n = r->n_seed + r->n_key;
    plait_secagg_reveal_t *rev = calloc(n ? n : 1, sizeof(*rev));
    if (!rev) return plait_fail(PLAIT_ENOMEM, "secagg: reveals");
    int rc = 0;
    for (size_t i = 0; i < n && rc == 0; i++) {
        const plait_secagg_share_t *s = i < r->n_seed ? &r->seed_shares[i] : &r->key_shares[i - r->n_seed];
        if (s->len != PLAIT_SECAGG_SHARE_LEN)
            rc = plait_fail(PLAIT_EPROTO, "secagg_unmask_response: a share of %zu bytes, want %d", s->len,
                            PLAIT_SECAGG_SHARE_LEN);
        rev[i].owner = s->peer;
        rev[i].kind = i < r->n_seed ? PLAIT_SECAGG_REVEAL_B : PLAIT_SECAGG_REVEAL_SK;
        if (rc == 0) memcpy(rev[i].share, s->data, PLAIT_SECAGG_SHARE_LEN);
    }
    if (rc == 0 && (rc = plait_secagg_server_add_reveals(sa->srv, idx, rev, n)) != 0)
        rc = plait_fail(PLAIT_EPROTO, "secagg_unmask_response: %s", plait_errmsg());
    plait_zeroize(rev, n * sizeof(*rev));
    free(rev);
    mb->answered = 1; /* a refused answer too: the stage does not wait for this device again */
    if (rc != 0) return rc;
    return 0;
}

int plait__sa_on_msg(plait__sa_t *sa, uint64_t client, const uint8_t fp[32], const plait_msg_t *m, double now)
{
    (void)now;
    uint32_t idx = 0;
    member_t *mb = find(sa, client, &idx);
    if (!mb) return plait_fail(PLAIT_ESTALE, "secagg: device has no index in this round");
    uint64_t rid = 0;
    switch (m->type) {
    case PLAIT_MSG_SECAGG_ADVERTISE: rid = m->u.secagg_advertise.round_id; break;
    case PLAIT_MSG_SECAGG_SHARES: rid = m->u.secagg_shares.round_id; break;
    case PLAIT_MSG_SECAGG_MASKED_INPUT: rid = m->u.secagg_masked_input.round_id; break;
    case PLAIT_MSG_SECAGG_UNMASK_RESPONSE: rid = m->u.secagg_unmask_response.round_id; break;
    default: return plait_fail(PLAIT_EPROTO, "secagg: %s from a device", plait_msg_type_name((int)m->type));
    }
    if (rid != sa->cfg.round_id)
        return plait_fail(PLAIT_ESTALE, "%s for round %llu, this is round %llu", plait_msg_type_name((int)m->type),
                          (unsigned long long)rid, (unsigned long long)sa->cfg.round_id);
    if (sa->stage == ST_END) return plait_fail(PLAIT_ESTALE, "secagg: the round's secure aggregation is over");
    switch (m->type) {
    case PLAIT_MSG_SECAGG_ADVERTISE: return on_advertise(sa, mb, idx, fp, &m->u.secagg_advertise);
    case PLAIT_MSG_SECAGG_SHARES: return on_shares(sa, mb, idx, &m->u.secagg_shares);
    case PLAIT_MSG_SECAGG_MASKED_INPUT: return on_masked(sa, mb, idx, &m->u.secagg_masked_input);
    default: return on_unmask(sa, mb, idx, &m->u.secagg_unmask_response);
    }
}

void plait__sa_left(plait__sa_t *sa, uint64_t client)
{
    member_t *mb = sa ? find(sa, client, NULL) : NULL;
    if (!mb || mb->gone) return;
    mb->gone = 1;
    /* A device gone before its masked input is in: the round core stops waiting for it
     * now (the core ignores the report while still selecting; the stage close repeats it). */
    if (!mb->masked) sa->io.dropout(sa->io.ud, client);
}

/* ---- stages ---------------------------------------------------------------- */

static void send_rosters(plait__sa_t *sa)
{
    uint32_t k = sa->r.p.k;
    plait_secagg_peer_t *peers = calloc(k, sizeof(*peers));
    size_t n_adv = 0;
    for (uint32_t i = 0; i < sa->assigned; i++) {
        member_t *mb = &sa->mb[i];
        if (!mb->advertised) {
            if (!mb->gone) PLAIT_LOG(PLAIT_LOG_INFO, "secagg round=%llu: device=%s index=%u did not advertise keys: dropout",
                                     (unsigned long long)sa->cfg.round_id, mb->device, i + 1);
            sa->io.dropout(sa->io.ud, mb->client);
            continue;
        }
        n_adv++;
    }
    for (uint32_t i = 0; i < sa->assigned && peers; i++) {
        member_t *mb = &sa->mb[i];
        if (!mb->advertised || mb->gone) continue;
        const uint32_t *nb = plait_secagg_neighbours(&sa->r, i + 1);
        size_t np = 0;
        for (uint32_t j = 0; nb && j < k; j++) {
            member_t *o = &sa->mb[nb[j] - 1];
            if (nb[j] > sa->assigned || !o->advertised) continue;
            peers[np].index = nb[j];
            peers[np].cert = o->cert;
            peers[np].cert_len = o->cert_len;
            memcpy(peers[np].mask_pk, o->adv.c_pk, 32);
            memcpy(peers[np].enc_pk, o->adv.s_pk, 32);
            peers[np].has_b_commit = o->adv.has_b_commit;
            memcpy(peers[np].b_commit, o->adv.b_commit, 32);
            peers[np].signature = o->adv.sig;
            peers[np].sig_len = o->adv.sig_len;
            np++;
        }
        plait_msg_t m;
        plait_msg_init(&m, PLAIT_MSG_SECAGG_ROSTER);
        m.u.secagg_roster.round_id = sa->cfg.round_id;
        m.u.secagg_roster.peers = peers;
        m.u.secagg_roster.n_peers = np;
        if (sa->io.send(sa->io.ud, mb->client, &m) != 0)
            PLAIT_LOG(PLAIT_LOG_WARN, "secagg round=%llu: roster to device=%s not sent: %s",
                      (unsigned long long)sa->cfg.round_id, mb->device, plait_errmsg());
    }
    free(peers);
    PLAIT_LOG(PLAIT_LOG_INFO, "secagg round=%llu: %zu of %u devices advertised keys; rosters sent",
              (unsigned long long)sa->cfg.round_id, n_adv, sa->assigned);
}

static void send_relays(plait__sa_t *sa)
{
    uint32_t k = sa->r.p.k;
    plait_secagg_share_t *sh = calloc(k, sizeof(*sh));
    size_t n_sh = 0;
    for (uint32_t i = 0; i < sa->assigned; i++) {
        member_t *mb = &sa->mb[i];
        if (mb->advertised && !mb->shared) {
            PLAIT_LOG(PLAIT_LOG_INFO, "secagg round=%llu: device=%s index=%u sent no shares: dropout",
                      (unsigned long long)sa->cfg.round_id, mb->device, i + 1);
            sa->io.dropout(sa->io.ud, mb->client);
        }
        if (mb->shared) n_sh++;
    }
    for (uint32_t i = 0; i < sa->assigned && sh; i++) {
        member_t *mb = &sa->mb[i];
        if (!mb->shared || mb->gone) continue;
        const uint32_t *nb = plait_secagg_neighbours(&sa->r, i + 1);
        size_t ns = 0;
        for (uint32_t j = 0; nb && j < k; j++) {
            if (nb[j] > sa->assigned) continue;
            member_t *o = &sa->mb[nb[j] - 1];
            if (!o->shared) continue;
            for (size_t c = 0; c < o->n_cts; c++)
                if (o->cts[c].to == i + 1) {
                    sh[ns].peer = nb[j];
                    sh[ns].data = o->cts[c].ct;
                    sh[ns].len = PLAIT_SECAGG_CT_LEN;
                    ns++;
                    break;
                }
        }
        plait_msg_t m;
        plait_msg_init(&m, PLAIT_MSG_SECAGG_RELAY);
        m.u.secagg_shares.round_id = sa->cfg.round_id;
        m.u.secagg_shares.shares = sh;
        m.u.secagg_shares.n_shares = ns;
        if (sa->io.send(sa->io.ud, mb->client, &m) != 0)
            PLAIT_LOG(PLAIT_LOG_WARN, "secagg round=%llu: relay to device=%s not sent: %s",
                      (unsigned long long)sa->cfg.round_id, mb->device, plait_errmsg());
    }
    free(sh);
    PLAIT_LOG(PLAIT_LOG_INFO, "secagg round=%llu: %zu devices shared keys; shares relayed",
              (unsigned long long)sa->cfg.round_id, n_sh);
}

static void fail(plait__sa_t *sa, const char *why)
{
    PLAIT_LOG(PLAIT_LOG_WARN, "secagg round=%llu: failed: %s", (unsigned long long)sa->cfg.round_id, why);
    sa->stage = ST_END;
    sa->result = PLAIT__SA_FAILED;
    /* Devices still waiting in the round learn at once that it is over. */
    plait_msg_t e;
    plait_msg_init(&e, PLAIT_MSG_ERROR);
    e.u.error.code = PLAIT_ETHRESHOLD;
    snprintf(e.u.error.message, sizeof(e.u.error.message), "secure aggregation of round %llu failed",
             (unsigned long long)sa->cfg.round_id);
    for (uint32_t i = 0; i < sa->assigned; i++)
        if (!sa->mb[i].gone) (void)sa->io.send(sa->io.ud, sa->mb[i].client, &e);
}

static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

static void send_requests(plait__sa_t *sa)
{
    size_t asked = 0;
    uint32_t *sv = calloc(2 * (size_t)sa->r.p.k + 2, sizeof(uint32_t));
    if (!sv) {
        fail(sa, "out of memory for the unmask requests");
        return;
    }
    for (uint32_t i = 0; i < sa->assigned; i++) {
        member_t *mb = &sa->mb[i];
        if (!mb->masked) continue;
        const uint32_t *surv = NULL, *drop = NULL;
        size_t ns = 0, nd = 0;
        int rc = plait_secagg_server_request(sa->srv, i + 1, &surv, &ns, &drop, &nd);
        if (rc == PLAIT_ETHRESHOLD) {
            free(sv);
            fail(sa, plait_errmsg());
            return;
        }
        if (rc != 0 || mb->gone || ns + nd > 2 * (size_t)sa->r.p.k + 2) continue;
        /* The wire lists are strictly ascending. */
        memcpy(sv, surv, ns * sizeof(uint32_t));
        memcpy(sv + ns, drop, nd * sizeof(uint32_t));
        qsort(sv, ns, sizeof(uint32_t), cmp_u32);
        qsort(sv + ns, nd, sizeof(uint32_t), cmp_u32);
        surv = sv;
        drop = sv + ns;
        plait_msg_t m;
        plait_msg_init(&m, PLAIT_MSG_SECAGG_UNMASK_REQUEST);
        m.u.secagg_unmask_request.round_id = sa->cfg.round_id;
        m.u.secagg_unmask_request.survivors = surv;
        m.u.secagg_unmask_request.n_survivors = ns;
        m.u.secagg_unmask_request.dropouts = drop;
        m.u.secagg_unmask_request.n_dropouts = nd;
        if (sa->io.send(sa->io.ud, mb->client, &m) == 0) {
            mb->asked = 1;
            asked++;
        }
    }
    free(sv);
    PLAIT_LOG(PLAIT_LOG_INFO, "secagg round=%llu: unmask requests sent to %zu devices",
              (unsigned long long)sa->cfg.round_id, asked);
}

/* The unmasking proper: reconstruct the secrets and remove the masks (seconds for a large cohort
 * with dropouts). Touches only sa's library objects and sum, and sends nothing, so the server runs
 * it in a job off the loop thread while no message reaches sa (the job holds `busy`). */
void plait__sa_finish_work(plait__sa_t *sa)
{
    if (!sa || sa->stage != ST_FINISH || sa->finish_done) return;
    /* Test hook (integ_secagg): PLAIT_TEST_SECAGG_FINISH_DELAY_MS stretches the unmasking, to show that
     * the loop serves other connections meanwhile. */
    const char *delay = getenv("PLAIT_TEST_SECAGG_FINISH_DELAY_MS");
    if (delay && *delay) {
        long ms = strtol(delay, NULL, 10);
        if (ms > 0 && ms <= 60000) {
            struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
            nanosleep(&ts, NULL);
        }
    }
    sa->finish_done = 1;
    sa->finish_why[0] = '\0';
    sa->sum = calloc(sa->cfg.len, sizeof(uint32_t));
    if (!sa->sum) {
        snprintf(sa->finish_why, sizeof(sa->finish_why), "out of memory for the sum");
        return;
    }
    int rc = plait_secagg_server_finish(sa->srv, sa->sum, sa->cfg.len);
    if (rc != 0)
        snprintf(sa->finish_why, sizeof(sa->finish_why), "unmasking: %s (%s)", plait_errmsg(), plait_err_name(rc));
}

int plait__sa_finish_due(const plait__sa_t *sa) { return sa && sa->stage == ST_FINISH && !sa->finish_done; }

/* Loop thread: the outcome of plait__sa_finish_work (run here if no job did). */
static void finish_apply(plait__sa_t *sa)
{
    if (!sa->finish_done) plait__sa_finish_work(sa);
    if (sa->finish_why[0]) {
        char why[300];
        snprintf(why, sizeof(why), "%s", sa->finish_why);
        fail(sa, why);
        return;
    }
    sa->stage = ST_END;
    size_t n_masked = 0;
    plait_secagg_server_counts(sa->srv, NULL, NULL, &n_masked);
    size_t n_bad = plait_secagg_server_inconsistent(sa->srv);
    if (n_bad == 0)
        PLAIT_LOG(PLAIT_LOG_INFO, "secagg round=%llu: unmasked the sum of %zu masked inputs",
                  (unsigned long long)sa->cfg.round_id, n_masked);
    else /* a count only: which device is not logged */
        PLAIT_LOG(PLAIT_LOG_WARN, "secagg round=%llu: unmasked the sum of %zu masked inputs (%zu devices revealed "
                  "inconsistent shares: outvoted)", (unsigned long long)sa->cfg.round_id, n_masked, n_bad);
    sa->result = PLAIT__SA_DONE;
}

static int all(const plait__sa_t *sa, int stage)
{
    for (uint32_t i = 0; i < sa->assigned; i++) {
        const member_t *mb = &sa->mb[i];
        if (mb->gone) continue;
        if (stage == ST_ADVERTISE && !mb->advertised) return 0;
        if (stage == ST_SHARE && mb->advertised && !mb->shared) return 0;
        if (stage == ST_UNMASK && mb->asked && !mb->answered) return 0;
    }
    return 1;
}

void plait__sa_step(plait__sa_t *sa, plait_round_state_t core, double now)
{
    if (!sa || sa->stage == ST_END) return;
    if (core == PLAIT_ROUND_FAILED || core == PLAIT_ROUND_IDLE) {
        fail(sa, "the round closed");
        return;
    }
    double to = sa->cfg.stage_timeout_s;
    if (sa->stage == ST_ADVERTISE) {
        if (core == PLAIT_ROUND_SELECTION) return; /* more devices may still join */
        if (sa->t_stage == 0) sa->t_stage = now;
        if (!all(sa, ST_ADVERTISE) && now - sa->t_stage < to && core == PLAIT_ROUND_TRAINING) return;
        send_rosters(sa);
        sa->stage = ST_SHARE;
        sa->t_stage = now;
    }
    if (sa->stage == ST_SHARE) {
        if (!all(sa, ST_SHARE) && now - sa->t_stage < to && core == PLAIT_ROUND_TRAINING) return;
        send_relays(sa);
        sa->stage = ST_MASKED;
        sa->t_stage = now;
    }
    if (sa->stage == ST_MASKED) {
        if (core == PLAIT_ROUND_TRAINING) return;
        for (uint32_t i = 0; i < sa->assigned; i++)
            if (sa->mb[i].packed) { /* an upload cut by the close: its words stay out */
                plait_zeroize(sa->mb[i].packed, (size_t)plait_wire_packed_len(sa->cfg.len, sa->r.m));
                free(sa->mb[i].packed);
                sa->mb[i].packed = NULL;
            }
        sa->stage = ST_UNMASK;
        sa->t_stage = now;
        send_requests(sa);
        if (sa->stage == ST_END) return;
    }
    if (sa->stage == ST_UNMASK) {
        if (!all(sa, ST_UNMASK) && now - sa->t_stage < to) return;
        sa->stage = ST_FINISH; /* the server runs plait__sa_finish_work in a job, then steps again */
        PLAIT_LOG(PLAIT_LOG_INFO, "secagg round=%llu: unmasking", (unsigned long long)sa->cfg.round_id);
        return;
    }
    if (sa->stage == ST_FINISH && sa->finish_done) finish_apply(sa);
}

plait__sa_result_t plait__sa_result(const plait__sa_t *sa) { return sa ? sa->result : PLAIT__SA_FAILED; }

const uint32_t *plait__sa_sum(const plait__sa_t *sa) { return sa && sa->result == PLAIT__SA_DONE ? sa->sum : NULL; }

unsigned plait__sa_bits(const plait__sa_t *sa) { return sa ? sa->r.m : 0; }
