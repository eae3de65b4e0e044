/*
 * wire_secagg.c: the SecAgg+ messages (docs/protocol.md §9) between the
 * plain structs and the generated protobuf-c structs, and the chunked
 * masked-input upload.
 *
 * Decoding: repeated sub-messages (roster peers, shares) become one plain
 * array in m->priv_arr, their counts capped at PLAIT_WIRE_SECAGG_MAX_PEERS
 * before the array is allocated; keys are exactly PLAIT_WIRE_X25519_LEN
 * bytes; every other range is left to wire_validate.c. Encoding allocates
 * the sub-messages in one block, pb->heap, which the encoder frees.
 * Masked words are packed `bits` wide; a chunk starts at a multiple of 8
 * elements, so it starts on a whole byte.
 */
#include <stdlib.h>
#include <string.h>

#include "wire_int.h"

/* ---- decode: repeated sub-messages become plain arrays in m->priv_arr ---- */

static int copy_key(const ProtobufCBinaryData *b, uint8_t out[PLAIT_WIRE_X25519_LEN],
                    const char *field, size_t i)
{
    if (b->len != PLAIT_WIRE_X25519_LEN)
        return BAD("%s[%zu]: %zu bytes, want %d", field, i, b->len, PLAIT_WIRE_X25519_LEN);
    memcpy(out, b->data, PLAIT_WIRE_X25519_LEN);
    return 0;
}

/* Convert n repeated SecAggShare into out[0, n) (count checked before by the caller). */
static int from_shares(Plait__SecAggShare *const *in, size_t n, plait_secagg_share_t *out,
                       const char *field)
{
    for (size_t i = 0; i < n; i++) {
        if (!in[i]->has_peer) return BAD("%s[%zu].peer: missing", field, i);
        if (!in[i]->has_data) return BAD("%s[%zu].data: missing", field, i);
        out[i].peer = in[i]->peer;
        out[i].data = in[i]->data.data;
        out[i].len = in[i]->data.len;
    }
    return 0;
}

static void *arr_alloc(plait_msg_t *m, size_t n, size_t size)
{
    if (n == 0) return NULL;
    m->priv_arr = calloc(n, size);
    return m->priv_arr;
}

static int from_sa_advertise(const Plait__SecAggAdvertise *p, plait_msg_secagg_advertise_t *a)
{
    int rc;
    NEED(p->has_round_id, "secagg_advertise.round_id");
    NEED(p->has_mask_pk, "secagg_advertise.mask_pk");
    NEED(p->has_enc_pk, "secagg_advertise.enc_pk");
    NEED(p->has_signature, "secagg_advertise.signature");
    NEED(p->has_device_cert, "secagg_advertise.device_cert");
    a->round_id = p->round_id;
    a->cert = p->device_cert.data;
    a->cert_len = p->device_cert.len;
    if ((rc = copy_key(&p->mask_pk, a->mask_pk, "secagg_advertise.mask_pk", 0)) != 0) return rc;
    if ((rc = copy_key(&p->enc_pk, a->enc_pk, "secagg_advertise.enc_pk", 0)) != 0) return rc;
    a->signature = p->signature.data;
    a->sig_len = p->signature.len;
    a->has_b_commit = p->has_b_commit;
    if (p->has_b_commit && (rc = copy_key(&p->b_commit, a->b_commit, "secagg_advertise.b_commit", 0)) != 0) return rc;
    return 0;
}

static int from_sa_roster(const Plait__SecAggRoster *p, plait_msg_t *m)
{
    plait_msg_secagg_roster_t *r = &m->u.secagg_roster;
    int rc;
    NEED(p->has_round_id, "secagg_roster.round_id");
    r->round_id = p->round_id;
    if (p->n_peers > PLAIT_WIRE_SECAGG_MAX_PEERS)
        return BAD("secagg_roster.peers: %zu above %u", p->n_peers, PLAIT_WIRE_SECAGG_MAX_PEERS);
    plait_secagg_peer_t *pe = arr_alloc(m, p->n_peers, sizeof(*pe));
    if (p->n_peers && !pe) return plait_fail(PLAIT_ENOMEM, "secagg_roster: %zu peers", p->n_peers);
    for (size_t i = 0; i < p->n_peers; i++) {
        const Plait__SecAggPeer *q = p->peers[i];
        if (!q->has_index || !q->has_device_cert || !q->has_mask_pk || !q->has_enc_pk ||
            !q->has_signature)
            return BAD("secagg_roster.peers[%zu]: a field is missing", i);
        pe[i].index = q->index;
        pe[i].cert = q->device_cert.data;
        pe[i].cert_len = q->device_cert.len;
        if ((rc = copy_key(&q->mask_pk, pe[i].mask_pk, "secagg_roster.peers.mask_pk", i)) != 0)
            return rc;
        if ((rc = copy_key(&q->enc_pk, pe[i].enc_pk, "secagg_roster.peers.enc_pk", i)) != 0)
            return rc;
        pe[i].signature = q->signature.data;
        pe[i].sig_len = q->signature.len;
        pe[i].has_b_commit = q->has_b_commit;
        if (q->has_b_commit &&
            (rc = copy_key(&q->b_commit, pe[i].b_commit, "secagg_roster.peers.b_commit", i)) != 0)
            return rc;
    }
    r->peers = pe;
    r->n_peers = p->n_peers;
    return 0;
}

static int from_sa_shares(int has_round, uint64_t round_id, Plait__SecAggShare *const *in,
                          size_t n, plait_msg_t *m, const char *name)
{
    plait_msg_secagg_shares_t *sh = &m->u.secagg_shares;
    if (!has_round) return BAD("%s.round_id: missing", name);
    sh->round_id = round_id;
    if (n > PLAIT_WIRE_SECAGG_MAX_PEERS)
        return BAD("%s.shares: %zu above %u", name, n, PLAIT_WIRE_SECAGG_MAX_PEERS);
    plait_secagg_share_t *out = arr_alloc(m, n, sizeof(*out));
    if (n && !out) return plait_fail(PLAIT_ENOMEM, "%s: %zu shares", name, n);
    int rc = from_shares(in, n, out, name);
    if (rc != 0) return rc;
    sh->shares = out;
    sh->n_shares = n;
    return 0;
}

static int from_sa_masked(const Plait__SecAggMaskedInput *p, plait_msg_secagg_masked_input_t *c)
{
    NEED(p->has_round_id, "secagg_masked_input.round_id");
    NEED(p->has_chunk_index, "secagg_masked_input.chunk_index");
    NEED(p->has_offset, "secagg_masked_input.offset");
    NEED(p->has_total_elements, "secagg_masked_input.total_elements");
    NEED(p->has_bits, "secagg_masked_input.bits");
    NEED(p->has_count, "secagg_masked_input.count");
    NEED(p->has_data, "secagg_masked_input.data");
    c->round_id = p->round_id;
    c->chunk_index = p->chunk_index;
    c->offset = p->offset;
    c->total_elements = p->total_elements;
    c->bits = p->bits;
    c->count = p->count;
    c->data = p->data.data;
    c->len = p->data.len;
    return 0;
}

static int from_sa_unmask_req(const Plait__SecAggUnmaskRequest *p,
                              plait_msg_secagg_unmask_request_t *r)
{
    NEED(p->has_round_id, "secagg_unmask_request.round_id");
    r->round_id = p->round_id;
    r->survivors = p->survivors;
    r->n_survivors = p->n_survivors;
    r->dropouts = p->dropouts;
    r->n_dropouts = p->n_dropouts;
    return 0;
}

static int from_sa_unmask_resp(const Plait__SecAggUnmaskResponse *p, plait_msg_t *m)
{
    plait_msg_secagg_unmask_response_t *r = &m->u.secagg_unmask_response;
    NEED(p->has_round_id, "secagg_unmask_response.round_id");
    r->round_id = p->round_id;
    if (p->n_seed_shares > PLAIT_WIRE_SECAGG_MAX_PEERS || p->n_key_shares > PLAIT_WIRE_SECAGG_MAX_PEERS)
        return BAD("secagg_unmask_response: %zu seed and %zu key shares, above %u each",
                   p->n_seed_shares, p->n_key_shares, PLAIT_WIRE_SECAGG_MAX_PEERS);
    size_t n = p->n_seed_shares + p->n_key_shares;
    plait_secagg_share_t *out = arr_alloc(m, n, sizeof(*out));
    if (n && !out) return plait_fail(PLAIT_ENOMEM, "secagg_unmask_response: %zu shares", n);
    int rc = from_shares(p->seed_shares, p->n_seed_shares, out,
                         "secagg_unmask_response.seed_shares");
    if (rc == 0)
        rc = from_shares(p->key_shares, p->n_key_shares, out + p->n_seed_shares,
                         "secagg_unmask_response.key_shares");
    if (rc != 0) return rc;
    r->seed_shares = p->n_seed_shares ? out : NULL;
    r->n_seed = p->n_seed_shares;
    r->key_shares = p->n_key_shares ? out + p->n_seed_shares : NULL;
    r->n_key = p->n_key_shares;
    return 0;
}

int plait__wire_from_envelope_secagg(const Plait__Envelope *env, plait_msg_t *m)
{
    switch (env->msg_case) {
    case PLAIT__ENVELOPE__MSG_SECAGG_ADVERTISE:
        return from_sa_advertise(env->secagg_advertise, &m->u.secagg_advertise);
    case PLAIT__ENVELOPE__MSG_SECAGG_ROSTER:
        return from_sa_roster(env->secagg_roster, m);
    case PLAIT__ENVELOPE__MSG_SECAGG_SHARES:
        return from_sa_shares(env->secagg_shares->has_round_id, env->secagg_shares->round_id,
                              env->secagg_shares->shares, env->secagg_shares->n_shares, m,
                              "secagg_shares");
    case PLAIT__ENVELOPE__MSG_SECAGG_RELAY:
        return from_sa_shares(env->secagg_relay->has_round_id, env->secagg_relay->round_id,
                              env->secagg_relay->shares, env->secagg_relay->n_shares, m,
                              "secagg_relay");
    case PLAIT__ENVELOPE__MSG_SECAGG_MASKED_INPUT:
        return from_sa_masked(env->secagg_masked_input, &m->u.secagg_masked_input);
    case PLAIT__ENVELOPE__MSG_SECAGG_UNMASK_REQUEST:
        return from_sa_unmask_req(env->secagg_unmask_request, &m->u.secagg_unmask_request);
    case PLAIT__ENVELOPE__MSG_SECAGG_UNMASK_RESPONSE:
        return from_sa_unmask_resp(env->secagg_unmask_response, m);
    default:
        return BAD("envelope: no message");
    }
}

/* ---- encode ---- */

/* n SecAggShare sub-messages and their pointer array in one block at *pos of pb->heap. */
static Plait__SecAggShare **to_shares(const plait_secagg_share_t *in, size_t n, uint8_t **pos)
{
    Plait__SecAggShare **ptrs = (Plait__SecAggShare **)(void *)*pos;
    Plait__SecAggShare *subs = (Plait__SecAggShare *)(void *)(*pos + n * sizeof(*ptrs));
    for (size_t i = 0; i < n; i++) {
        plait__sec_agg_share__init(&subs[i]);
        subs[i].has_peer = subs[i].has_data = 1;
        subs[i].peer = in[i].peer;
        subs[i].data = plait__wire_bin(in[i].data, in[i].len);
        ptrs[i] = &subs[i];
    }
    *pos += n * (sizeof(*ptrs) + sizeof(*subs));
    return n ? ptrs : NULL;
}

#define SHARE_BYTES (sizeof(Plait__SecAggShare *) + sizeof(Plait__SecAggShare))

/* The SecAgg part of plait__wire_to_envelope (the messages with repeated sub-messages allocate). */
int plait__wire_to_envelope_secagg(const plait_msg_t *m, plait__wire_pb_t *pb)
{
    uint8_t *pos;
    switch (m->type) {
    case PLAIT_MSG_SECAGG_ADVERTISE: {
        const plait_msg_secagg_advertise_t *a = &m->u.secagg_advertise;
        plait__sec_agg_advertise__init(&pb->sa_adv);
        pb->sa_adv.has_round_id = pb->sa_adv.has_mask_pk = pb->sa_adv.has_enc_pk = 1;
        pb->sa_adv.has_signature = 1;
        pb->sa_adv.round_id = a->round_id;
        pb->sa_adv.mask_pk = plait__wire_bin(a->mask_pk, PLAIT_WIRE_X25519_LEN);
        pb->sa_adv.enc_pk = plait__wire_bin(a->enc_pk, PLAIT_WIRE_X25519_LEN);
        pb->sa_adv.signature = plait__wire_bin(a->signature, a->sig_len);
        pb->sa_adv.has_device_cert = 1;
        pb->sa_adv.device_cert = plait__wire_bin(a->cert, a->cert_len);
        if (a->has_b_commit) {
            pb->sa_adv.has_b_commit = 1;
            pb->sa_adv.b_commit = plait__wire_bin(a->b_commit, PLAIT_WIRE_X25519_LEN);
        }
        pb->env.msg_case = PLAIT__ENVELOPE__MSG_SECAGG_ADVERTISE;
        pb->env.secagg_advertise = &pb->sa_adv;
        return 0;
    }
    case PLAIT_MSG_SECAGG_ROSTER: {
        const plait_msg_secagg_roster_t *r = &m->u.secagg_roster;
        Plait__SecAggRoster *p = &pb->sa_roster;
        plait__sec_agg_roster__init(p);
        p->has_round_id = 1;
        p->round_id = r->round_id;
        if (r->n_peers) {
            size_t per = sizeof(Plait__SecAggPeer *) + sizeof(Plait__SecAggPeer);
            if (!(pb->heap = malloc(r->n_peers * per)))
                return plait_fail(PLAIT_ENOMEM, "secagg_roster: encoding %zu peers", r->n_peers);
            Plait__SecAggPeer **ptrs = pb->heap;
            Plait__SecAggPeer *subs = (Plait__SecAggPeer *)(ptrs + r->n_peers);
            for (size_t i = 0; i < r->n_peers; i++) {
                const plait_secagg_peer_t *q = &r->peers[i];
                plait__sec_agg_peer__init(&subs[i]);
                subs[i].has_index = subs[i].has_device_cert = subs[i].has_mask_pk = 1;
                subs[i].has_enc_pk = subs[i].has_signature = 1;
                subs[i].index = q->index;
                subs[i].device_cert = plait__wire_bin(q->cert, q->cert_len);
                subs[i].mask_pk = plait__wire_bin(q->mask_pk, PLAIT_WIRE_X25519_LEN);
                subs[i].enc_pk = plait__wire_bin(q->enc_pk, PLAIT_WIRE_X25519_LEN);
                subs[i].signature = plait__wire_bin(q->signature, q->sig_len);
                if (q->has_b_commit) {
                    subs[i].has_b_commit = 1;
                    subs[i].b_commit = plait__wire_bin(q->b_commit, PLAIT_WIRE_X25519_LEN);
                }
                ptrs[i] = &subs[i];
            }
            p->peers = ptrs;
            p->n_peers = r->n_peers;
        }
        pb->env.msg_case = PLAIT__ENVELOPE__MSG_SECAGG_ROSTER;
        pb->env.secagg_roster = p;
        return 0;
    }
    case PLAIT_MSG_SECAGG_SHARES:
    case PLAIT_MSG_SECAGG_RELAY: {
        const plait_msg_secagg_shares_t *sh = &m->u.secagg_shares;
        if (sh->n_shares && !(pb->heap = malloc(sh->n_shares * SHARE_BYTES)))
            return plait_fail(PLAIT_ENOMEM, "secagg shares: encoding %zu", sh->n_shares);
        pos = pb->heap;
        Plait__SecAggShare **ptrs = to_shares(sh->shares, sh->n_shares, &pos);
        if (m->type == PLAIT_MSG_SECAGG_SHARES) {
            plait__sec_agg_shares__init(&pb->sa_shares);
            pb->sa_shares.has_round_id = 1;
            pb->sa_shares.round_id = sh->round_id;
            pb->sa_shares.shares = ptrs;
            pb->sa_shares.n_shares = sh->n_shares;
            pb->env.msg_case = PLAIT__ENVELOPE__MSG_SECAGG_SHARES;
            pb->env.secagg_shares = &pb->sa_shares;
        } else {
            plait__sec_agg_relay__init(&pb->sa_relay);
            pb->sa_relay.has_round_id = 1;
            pb->sa_relay.round_id = sh->round_id;
            pb->sa_relay.shares = ptrs;
            pb->sa_relay.n_shares = sh->n_shares;
            pb->env.msg_case = PLAIT__ENVELOPE__MSG_SECAGG_RELAY;
            pb->env.secagg_relay = &pb->sa_relay;
        }
        return 0;
    }
    case PLAIT_MSG_SECAGG_MASKED_INPUT: {
        const plait_msg_secagg_masked_input_t *c = &m->u.secagg_masked_input;
        Plait__SecAggMaskedInput *p = &pb->sa_masked;
        plait__sec_agg_masked_input__init(p);
        p->has_round_id = p->has_chunk_index = p->has_offset = p->has_total_elements = 1;
        p->has_bits = p->has_count = p->has_data = 1;
        p->round_id = c->round_id;
        p->chunk_index = c->chunk_index;
        p->offset = c->offset;
        p->total_elements = c->total_elements;
        p->bits = c->bits;
        p->count = c->count;
        p->data = plait__wire_bin(c->data, c->len);
        pb->env.msg_case = PLAIT__ENVELOPE__MSG_SECAGG_MASKED_INPUT;
        pb->env.secagg_masked_input = p;
        return 0;
    }
    case PLAIT_MSG_SECAGG_UNMASK_REQUEST: {
        const plait_msg_secagg_unmask_request_t *r = &m->u.secagg_unmask_request;
        Plait__SecAggUnmaskRequest *p = &pb->sa_ureq;
        plait__sec_agg_unmask_request__init(p);
        p->has_round_id = 1;
        p->round_id = r->round_id;
        p->n_survivors = r->n_survivors;
        p->survivors = (uint32_t *)(uintptr_t)r->survivors;
        p->n_dropouts = r->n_dropouts;
        p->dropouts = (uint32_t *)(uintptr_t)r->dropouts;
        pb->env.msg_case = PLAIT__ENVELOPE__MSG_SECAGG_UNMASK_REQUEST;
        pb->env.secagg_unmask_request = p;
        return 0;
    }
    case PLAIT_MSG_SECAGG_UNMASK_RESPONSE: {
        const plait_msg_secagg_unmask_response_t *r = &m->u.secagg_unmask_response;
        Plait__SecAggUnmaskResponse *p = &pb->sa_uresp;
        plait__sec_agg_unmask_response__init(p);
        size_t n = r->n_seed + r->n_key;
        if (n && !(pb->heap = malloc(n * SHARE_BYTES)))
            return plait_fail(PLAIT_ENOMEM, "secagg_unmask_response: encoding %zu shares", n);
        pos = pb->heap;
        p->has_round_id = 1;
        p->round_id = r->round_id;
        p->seed_shares = to_shares(r->seed_shares, r->n_seed, &pos);
        p->n_seed_shares = r->n_seed;
        p->key_shares = to_shares(r->key_shares, r->n_key, &pos);
        p->n_key_shares = r->n_key;
        pb->env.msg_case = PLAIT__ENVELOPE__MSG_SECAGG_UNMASK_RESPONSE;
        pb->env.secagg_unmask_response = p;
        return 0;
    }
    default:
        return plait_fail(PLAIT_EINVAL, "message: unknown type %d", (int)m->type);
    }
}

uint64_t plait_wire_packed_len(uint64_t total, unsigned bits)
{
    /* total <= 2^32 and bits <= 32 in every use: the product fits in 64 bits. */
    return (total * bits + 7) / 8;
}

/* ---- masked (secure-aggregation) uploads ---------------------------------- */

int plait_wire_masked_tx_next(plait_wire_xfer_t *x, const plait_wire_limits_t *lim,
                              const uint8_t *packed, unsigned bits, plait_msg_t *out)
{
    plait_wire_limits_t tmp;
    if (!x || !packed || !out) return plait_fail(PLAIT_EINVAL, "masked tx: NULL argument");
    if (!(lim = plait__wire_limits_or_default(lim, &tmp))) return PLAIT_EINVAL;
    uint64_t per = (uint64_t)(lim->max_chunk_bytes / (bits ? bits : 1)) * 8u;
    if (bits < PLAIT_WIRE_SECAGG_MIN_BITS || bits > PLAIT_WIRE_SECAGG_MAX_BITS || per == 0 ||
        x->total < 1 || x->total > lim->max_update_elements || x->next > x->total ||
        (x->next < x->total && x->next % 8 != 0))
        return plait_fail(PLAIT_EINVAL, "masked tx: bits %u, total %llu, offset %llu", bits,
                          (unsigned long long)x->total, (unsigned long long)x->next);
    if (x->next == x->total) return 0;
    uint64_t n = x->total - x->next;
    if (n > per) n = per;
    plait_msg_init(out, PLAIT_MSG_SECAGG_MASKED_INPUT);
    plait_msg_secagg_masked_input_t *c = &out->u.secagg_masked_input;
    c->round_id = x->id;
    c->chunk_index = x->index;
    c->offset = x->next;
    c->total_elements = x->total;
    c->bits = bits;
    c->count = n;
    c->data = packed + x->next / 8 * bits; /* a multiple of 8 elements is a whole byte count */
    c->len = (size_t)plait_wire_packed_len(n, bits);
    x->next += n;
    x->index++;
    return 1;
}

int plait_wire_masked_rx_add(plait_wire_xfer_t *x, const plait_msg_secagg_masked_input_t *c,
                             unsigned bits, uint8_t *dst)
{
    if (!x || !c || !dst || !c->data) return plait_fail(PLAIT_EINVAL, "masked rx: NULL argument");
    if (c->round_id != x->id)
        return plait_fail(PLAIT_ESTALE,
                          "secagg_masked_input.round_id: %llu, the upload is for round %llu",
                          (unsigned long long)c->round_id, (unsigned long long)x->id);
    if (c->total_elements != x->total || c->bits != bits)
        return plait_fail(PLAIT_EMISMATCH,
                          "secagg_masked_input: %llu elements of %u bits, the round has %llu of %u",
                          (unsigned long long)c->total_elements, c->bits,
                          (unsigned long long)x->total, bits);
    if (x->next >= x->total)
        return plait_fail(PLAIT_EMISMATCH, "secagg_masked_input: the upload is already complete");
    if (c->offset != x->next || c->chunk_index != x->index || c->count > x->total - c->offset ||
        c->offset % 8 != 0)
        return plait_fail(PLAIT_EMISMATCH,
                          "secagg_masked_input: chunk %u at offset %llu, expected chunk %u at %llu",
                          c->chunk_index, (unsigned long long)c->offset, x->index,
                          (unsigned long long)x->next);
    if ((uint64_t)c->len != plait_wire_packed_len(c->count, bits))
        return plait_fail(PLAIT_EMISMATCH, "secagg_masked_input.data: wrong length");
    memcpy(dst + c->offset / 8 * bits, c->data, c->len);
    x->next += c->count;
    x->index++;
    return x->next == x->total ? 1 : 0;
}
