/*
 * fuzz_wire_secagg.c: fuzz target for the secure-aggregation messages
 * (SecAggAdvertise .. SecAggUnmaskResponse, docs/protocol.md §9). The input is
 * the protobuf payload of a frame (an Envelope); it is decoded as each of the
 * seven SecAgg types in turn.
 *
 * Properties checked on every input:
 *   - plait_wire_decode() returns 0, PLAIT_EPROTO or PLAIT_ETOOBIG, and a
 *     zeroed message on failure;
 *   - an accepted message satisfies its bounds: signatures of
 *     1..PLAIT_WIRE_SECAGG_MAX_SIG bytes, certificates of 1..MAX_CERT, roster
 *     peers with indices 1..MAX_COHORT strictly ascending, shares of 1..MAX_SHARE bytes
 *     in strictly ascending peer order, masked chunks whose data is exactly
 *     ceil(count·bits/8) bytes; every pointed-to byte is readable (ASan reads
 *     them all); and encode(decode(x)) is a fixed point.
 * Any violation calls abort(), which both libFuzzer and replay report.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "plait/wire.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static volatile uint8_t sink;

static void touch(const uint8_t *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        sink ^= p[i];
}

static void check_shares(const plait_secagg_share_t *sh, size_t n)
{
    if (n > PLAIT_WIRE_SECAGG_MAX_PEERS) abort();
    for (size_t i = 0; i < n; i++) {
        if (sh[i].len < 1 || sh[i].len > PLAIT_WIRE_SECAGG_MAX_SHARE) abort();
        if (sh[i].peer < 1 || (i > 0 && sh[i].peer <= sh[i - 1].peer)) abort();
        touch(sh[i].data, sh[i].len);
    }
}

static void check(const plait_msg_t *m)
{
    switch (m->type) {
    case PLAIT_MSG_SECAGG_ADVERTISE: {
        const plait_msg_secagg_advertise_t *a = &m->u.secagg_advertise;
        if (a->round_id == 0 || a->sig_len < 1 || a->sig_len > PLAIT_WIRE_SECAGG_MAX_SIG ||
            a->cert_len < 1 || a->cert_len > PLAIT_WIRE_SECAGG_MAX_CERT)
            abort();
        touch(a->signature, a->sig_len);
        touch(a->cert, a->cert_len);
        break;
    }
    case PLAIT_MSG_SECAGG_ROSTER: {
        const plait_msg_secagg_roster_t *r = &m->u.secagg_roster;
        if (r->n_peers > PLAIT_WIRE_SECAGG_MAX_PEERS) abort();
        for (size_t i = 0; i < r->n_peers; i++) {
            const plait_secagg_peer_t *p = &r->peers[i];
            if (p->index < 1 || p->index > PLAIT_WIRE_SECAGG_MAX_COHORT) abort();
            if (i > 0 && p->index <= r->peers[i - 1].index) abort();
            if (p->cert_len < 1 || p->cert_len > PLAIT_WIRE_SECAGG_MAX_CERT) abort();
            if (p->sig_len < 1 || p->sig_len > PLAIT_WIRE_SECAGG_MAX_SIG) abort();
            touch(p->cert, p->cert_len);
            touch(p->signature, p->sig_len);
        }
        break;
    }
    case PLAIT_MSG_SECAGG_SHARES:
    case PLAIT_MSG_SECAGG_RELAY:
        check_shares(m->u.secagg_shares.shares, m->u.secagg_shares.n_shares);
        if (m->type == PLAIT_MSG_SECAGG_SHARES && m->u.secagg_shares.n_shares < 1) abort();
        break;
    case PLAIT_MSG_SECAGG_MASKED_INPUT: {
        const plait_msg_secagg_masked_input_t *c = &m->u.secagg_masked_input;
        if (c->bits < 8 || c->bits > 32 || c->count < 1 || c->offset % 8 != 0 ||
            c->offset + c->count > c->total_elements ||
            (uint64_t)c->len != plait_wire_packed_len(c->count, c->bits))
            abort();
        touch(c->data, c->len);
        break;
    }
    case PLAIT_MSG_SECAGG_UNMASK_REQUEST: {
        const plait_msg_secagg_unmask_request_t *r = &m->u.secagg_unmask_request;
        if (r->n_survivors < 1 || r->survivors[0] < 1 || (r->n_dropouts && r->dropouts[0] < 1))
            abort();
        for (size_t i = 1; i < r->n_survivors; i++)
            if (r->survivors[i] <= r->survivors[i - 1]) abort();
        for (size_t i = 1; i < r->n_dropouts; i++)
            if (r->dropouts[i] <= r->dropouts[i - 1]) abort();
        break;
    }
    case PLAIT_MSG_SECAGG_UNMASK_RESPONSE:
        check_shares(m->u.secagg_unmask_response.seed_shares, m->u.secagg_unmask_response.n_seed);
        check_shares(m->u.secagg_unmask_response.key_shares, m->u.secagg_unmask_response.n_key);
        break;
    default:
        abort();
    }
}

static void fixed_point(const plait_msg_t *m, const plait_wire_limits_t *lim)
{
    uint8_t *a = NULL, *b = NULL;
    size_t na = 0, nb = 0, used = 0;
    plait_msg_t d;
    /* An accepted message may still be too big to re-encode only if it was; it was not. */
    if (plait_wire_encode_alloc(m, lim, &a, &na) != 0) abort();
    if (plait_wire_parse(a, na, lim, 0, &d, &used) != 0 || used != na) abort();
    if (plait_wire_encode_alloc(&d, lim, &b, &nb) != 0 || na != nb || memcmp(a, b, na) != 0)
        abort();
    plait_msg_free(&d);
    free(a);
    free(b);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    plait_wire_limits_t lim;
    plait_wire_limits_default(&lim);
    for (int t = PLAIT_MSG_SECAGG_ADVERTISE; t <= PLAIT_MSG_SECAGG_UNMASK_RESPONSE; t++) {
        plait_frame_t f = {PLAIT_WIRE_VERSION, (plait_msg_type_t)t, data, size,
                           size + PLAIT_FRAME_HEADER};
        plait_msg_t m;
        int rc = plait_wire_decode(&f, &lim, &m);
        if (rc != 0 && rc != PLAIT_EPROTO && rc != PLAIT_ETOOBIG) abort();
        if (rc != 0) {
            if (m.priv != NULL || m.priv_arr != NULL || m.type != 0) abort();
            continue;
        }
        if ((int)m.type != t) abort();
        check(&m);
        fixed_point(&m, &lim);
        plait_msg_free(&m);
    }
    return 0;
}
