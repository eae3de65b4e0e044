/*
 * check_wire.c: the frame codec and the protocol messages (include/plait/wire.h).
 *
 * - round trip of every message type (encode -> frame -> decode -> equal);
 * - every prefix of every valid frame gives PLAIT_EAGAIN and consumes nothing,
 *   with the input ending exactly at a guard page (an unmapped page follows
 *   the last byte, so any read past the end faults);
 * - an oversized declared length gives PLAIT_ETOOBIG from the 4-byte header
 *   alone, also at the lower pre-auth limit; bad length, version and type
 *   give PLAIT_EPROTO as soon as their byte arrives;
 * - flipped bytes and garbage payloads never crash and never decode into an
 *   invalid message; hand-built protobuf payloads check presence, lengths,
 *   enum values and chunk bounds field by field (the error names the field);
 * - the committed fuzz seeds still parse (and are rewritten from the samples
 *   here when PLAIT_WIRE_WRITE_CORPUS=1).
 */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "plait/secagg.h"
#include "plait/wire.h"
#include "testutil.h"

/* ---- guard page: the byte after the input is unmapped ------------------- */

typedef struct {
    uint8_t *map;
    size_t maplen;
    uint8_t *p;
} guarded_t;

static uint8_t *guard_copy(guarded_t *g, const void *src, size_t len)
{
    size_t pg = (size_t)sysconf(_SC_PAGESIZE);
    size_t data_pages = (len + pg - 1) / pg;
    if (data_pages == 0) data_pages = 1;
    g->maplen = (data_pages + 1) * pg;
    g->map = mmap(NULL, g->maplen, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    ck_assert_ptr_ne(g->map, MAP_FAILED);
    ck_assert_int_eq(mprotect(g->map + data_pages * pg, pg, PROT_NONE), 0);
    g->p = g->map + data_pages * pg - len;
    if (len) memcpy(g->p, src, len);
    return g->p;
}

static void guard_free(guarded_t *g)
{
    munmap(g->map, g->maplen);
    memset(g, 0, sizeof(*g));
}

/* ---- sample messages: one or more of every type ------------------------- */

static const uint32_t k_words[6] = {0u, 1u, 0x7fffffffu, 0x80000000u, 0xffffffffu, 12345u};
static uint8_t k_blob[100];
static uint8_t k_sha[32];

static void fill_consts(void)
{
    for (size_t i = 0; i < sizeof(k_blob); i++)
        k_blob[i] = (uint8_t)(i * 7 + 3);
    for (size_t i = 0; i < sizeof(k_sha); i++)
        k_sha[i] = (uint8_t)(0xa0 + i);
}

static void sample_task(plait_msg_t *m)
{
    plait_msg_init(m, PLAIT_MSG_TASK);
    plait_msg_task_t *t = &m->u.task;
    t->round_id = 42;
    t->adapter_version = 7;
    t->adapter_len = 123456;
    memcpy(t->adapter_sha256, k_sha, 32);
    t->lora.rank = 8;
    t->lora.alpha = 16.0f;
    t->lora.targets = (1u << 0) | (1u << 2);
    t->lora.mode = PLAIT_LORA_MODE_FFA;
    t->lora.a_seed = 0x0123456789abcdefull;
    t->train.local_steps = 20;
    t->train.batch = 8;
    t->train.seq_len = 128;
    t->train.lr = 1e-3;
    t->clip_norm = 1.0;
    t->quant_bits = 16;
    t->quant_range = 1.0;
    t->secure_agg = 1;
    t->dp.mode = PLAIT_DP_LOCAL;
    t->dp.noise_multiplier = 0.8;
    t->deadline_s = 600;
    t->update_elements = 65537;
    t->example_cap = 1000;
    t->has_secagg = 1;
    t->secagg.index = 3;
    t->secagg.n = 13;
    t->secagg.k = 12;
    t->secagg.t = 7;
    t->secagg.bits = 20;
    memcpy(t->secagg.graph_seed, k_sha, 32);
}

#define N_SAMPLES 23

/* Secure-aggregation samples: fixed keys, certificates, signatures and shares. */
static uint8_t k_key[2][32], k_sig[72], k_cert[3][40], k_share[4][48], k_packed[64];
static plait_secagg_peer_t k_peers[3];
static plait_secagg_share_t k_shares[4];
static const uint32_t k_survivors[] = {1, 2, 5, 9}, k_dropouts[] = {1, 7};

static void fill_secagg(void)
{
    for (int i = 0; i < 32; i++)
        k_key[0][i] = (uint8_t)(i + 1), k_key[1][i] = (uint8_t)(0x80 | i);
    for (int i = 0; i < 72; i++)
        k_sig[i] = (uint8_t)(0x30 + i);
    for (int c = 0; c < 3; c++)
        for (int i = 0; i < 40; i++)
            k_cert[c][i] = (uint8_t)('A' + (c + i) % 26);
    for (int c = 0; c < 4; c++)
        for (int i = 0; i < 48; i++)
            k_share[c][i] = (uint8_t)(c * 48 + i);
    for (int i = 0; i < 64; i++)
        k_packed[i] = (uint8_t)(255 - i);
    static const uint32_t idx[3] = {1, 4, 6};
    for (int c = 0; c < 3; c++) {
        k_peers[c].index = idx[c];
        k_peers[c].cert = k_cert[c];
        k_peers[c].cert_len = sizeof(k_cert[c]) - (size_t)c;
        memcpy(k_peers[c].mask_pk, k_key[0], 32);
        memcpy(k_peers[c].enc_pk, k_key[1], 32);
        k_peers[c].mask_pk[0] = (uint8_t)c;
        k_peers[c].signature = k_sig;
        k_peers[c].sig_len = 70 + (size_t)c;
    }
    static const uint32_t sidx[4] = {1, 3, 4, 11};
    for (int c = 0; c < 4; c++) {
        k_shares[c].peer = sidx[c];
        k_shares[c].data = k_share[c];
        k_shares[c].len = 48 - (size_t)c;
    }
}

static void sample(int i, plait_msg_t *m)
{
    fill_consts();
    switch (i) {
    case 0:
        plait_msg_init(m, PLAIT_MSG_HELLO);
        strcpy(m->u.hello.client_version, "plait-agent 0.1.0");
        memcpy(m->u.hello.base_model_sha256, k_sha, 32);
        m->u.hello.capabilities = PLAIT_CAP_SECURE_AGG | PLAIT_CAP_FFA;
        break;
    case 1:
        sample(0, m);
        m->u.hello.has_last_round = 1;
        m->u.hello.last_round_completed = 41;
        break;
    case 2:
        sample_task(m);
        break;
    case 3:
        plait_msg_init(m, PLAIT_MSG_COME_BACK_LATER);
        m->u.come_back_later.retry_ms = 30000;
        m->u.come_back_later.reason = PLAIT_RETRY_PACE;
        break;
    case 4:
        plait_msg_init(m, PLAIT_MSG_ADAPTER_REQUEST);
        m->u.adapter_request.round_id = 42;
        m->u.adapter_request.version = 7;
        m->u.adapter_request.offset = 4096;
        break;
    case 5:
        plait_msg_init(m, PLAIT_MSG_ADAPTER_CHUNK);
        m->u.adapter_chunk.version = 7;
        m->u.adapter_chunk.offset = 0;
        m->u.adapter_chunk.total_len = 160;
        m->u.adapter_chunk.data = k_blob;
        m->u.adapter_chunk.len = 100;
        break;
    case 6:
        plait_msg_init(m, PLAIT_MSG_ADAPTER_CHUNK);
        m->u.adapter_chunk.version = 7;
        m->u.adapter_chunk.offset = 100;
        m->u.adapter_chunk.total_len = 160;
        m->u.adapter_chunk.data = k_blob;
        m->u.adapter_chunk.len = 60;
        m->u.adapter_chunk.has_sha256 = 1;
        memcpy(m->u.adapter_chunk.sha256, k_sha, 32);
        break;
    case 7:
        plait_msg_init(m, PLAIT_MSG_UPDATE_CHUNK);
        m->u.update_chunk.round_id = 42;
        m->u.update_chunk.chunk_index = 0;
        m->u.update_chunk.offset = 0;
        m->u.update_chunk.total_elements = 12;
        m->u.update_chunk.words = k_words;
        m->u.update_chunk.n_words = 6;
        break;
    case 8:
        plait_msg_init(m, PLAIT_MSG_UPDATE_CHUNK);
        m->u.update_chunk.round_id = 42;
        m->u.update_chunk.chunk_index = 1;
        m->u.update_chunk.offset = 6;
        m->u.update_chunk.total_elements = 12;
        m->u.update_chunk.words = k_words;
        m->u.update_chunk.n_words = 6;
        break;
    case 9:
        plait_msg_init(m, PLAIT_MSG_ACK);
        m->u.ack.round_id = 42;
        m->u.ack.kind = PLAIT_ACK_UPDATE;
        m->u.ack.elements = 12;
        break;
    case 10:
        plait_msg_init(m, PLAIT_MSG_ERROR);
        m->u.error.code = PLAIT_ESTALE;
        strcpy(m->u.error.message, "round 41 is closed");
        break;
    case 11:
        plait_msg_init(m, PLAIT_MSG_ERROR);
        m->u.error.code = PLAIT_EPROTO;
        break;
    case 12:
        plait_msg_init(m, PLAIT_MSG_PING);
        m->u.ping.nonce = 0xfeedfacecafebeefull;
        break;
    case 13:
        plait_msg_init(m, PLAIT_MSG_PONG);
        m->u.ping.nonce = 0;
        break;
    case 14:
        plait_msg_init(m, PLAIT_MSG_DECLINE);
        m->u.decline.round_id = 42;
        m->u.decline.code = PLAIT_DECLINE_NOT_ELIGIBLE;
        break;
    case 15:
        fill_secagg();
        plait_msg_init(m, PLAIT_MSG_SECAGG_ADVERTISE);
        m->u.secagg_advertise.round_id = 42;
        memcpy(m->u.secagg_advertise.mask_pk, k_key[0], 32);
        memcpy(m->u.secagg_advertise.enc_pk, k_key[1], 32);
        m->u.secagg_advertise.signature = k_sig;
        m->u.secagg_advertise.sig_len = 71;
        m->u.secagg_advertise.cert = k_cert[0];
        m->u.secagg_advertise.cert_len = 40;
        break;
    case 16: {
        fill_secagg();
        plait_msg_init(m, PLAIT_MSG_SECAGG_ROSTER);
        plait_msg_secagg_roster_t *r = &m->u.secagg_roster;
        r->round_id = 42;
        r->peers = k_peers;
        r->n_peers = 3;
        break;
    }
    case 17:
        fill_secagg();
        plait_msg_init(m, PLAIT_MSG_SECAGG_SHARES);
        m->u.secagg_shares.round_id = 42;
        m->u.secagg_shares.shares = k_shares;
        m->u.secagg_shares.n_shares = 4;
        break;
    case 18:
        fill_secagg();
        plait_msg_init(m, PLAIT_MSG_SECAGG_RELAY);
        m->u.secagg_shares.round_id = 42;
        m->u.secagg_shares.shares = k_shares + 1;
        m->u.secagg_shares.n_shares = 2;
        break;
    case 19:
        fill_secagg();
        plait_msg_init(m, PLAIT_MSG_SECAGG_MASKED_INPUT);
        m->u.secagg_masked_input.round_id = 42;
        m->u.secagg_masked_input.chunk_index = 0;
        m->u.secagg_masked_input.offset = 0;
        m->u.secagg_masked_input.total_elements = 21;
        m->u.secagg_masked_input.bits = 20;
        m->u.secagg_masked_input.count = 16;
        m->u.secagg_masked_input.data = k_packed;
        m->u.secagg_masked_input.len = 40;
        break;
    case 20:
        fill_secagg();
        plait_msg_init(m, PLAIT_MSG_SECAGG_MASKED_INPUT);
        m->u.secagg_masked_input.round_id = 42;
        m->u.secagg_masked_input.chunk_index = 1;
        m->u.secagg_masked_input.offset = 16;
        m->u.secagg_masked_input.total_elements = 21;
        m->u.secagg_masked_input.bits = 20;
        m->u.secagg_masked_input.count = 5;
        m->u.secagg_masked_input.data = k_packed;
        m->u.secagg_masked_input.len = 13;
        break;
    case 21:
        fill_secagg();
        plait_msg_init(m, PLAIT_MSG_SECAGG_UNMASK_REQUEST);
        m->u.secagg_unmask_request.round_id = 42;
        m->u.secagg_unmask_request.survivors = k_survivors;
        m->u.secagg_unmask_request.n_survivors = 4;
        m->u.secagg_unmask_request.dropouts = k_dropouts;
        m->u.secagg_unmask_request.n_dropouts = 2;
        break;
    default:
        fill_secagg();
        plait_msg_init(m, PLAIT_MSG_SECAGG_UNMASK_RESPONSE);
        m->u.secagg_unmask_response.round_id = 42;
        m->u.secagg_unmask_response.seed_shares = k_shares;
        m->u.secagg_unmask_response.n_seed = 3;
        m->u.secagg_unmask_response.key_shares = k_shares + 3;
        m->u.secagg_unmask_response.n_key = 1;
        break;
    }
}

static void assert_shares_eq(const plait_secagg_share_t *a, size_t na, const plait_secagg_share_t *b,
                             size_t nb)
{
    ck_assert_uint_eq(na, nb);
    for (size_t i = 0; i < na; i++) {
        ck_assert_uint_eq(a[i].peer, b[i].peer);
        ck_assert_uint_eq(a[i].len, b[i].len);
        ck_assert_mem_eq(a[i].data, b[i].data, a[i].len);
    }
}

static void assert_msg_eq(const plait_msg_t *a, const plait_msg_t *b)
{
    ck_assert_int_eq(a->type, b->type);
    switch (a->type) {
    case PLAIT_MSG_HELLO:
        ck_assert_str_eq(a->u.hello.client_version, b->u.hello.client_version);
        ck_assert_mem_eq(a->u.hello.base_model_sha256, b->u.hello.base_model_sha256, 32);
        ck_assert_uint_eq(a->u.hello.capabilities, b->u.hello.capabilities);
        ck_assert_int_eq(a->u.hello.has_last_round, b->u.hello.has_last_round);
        ck_assert_uint_eq(a->u.hello.last_round_completed, b->u.hello.last_round_completed);
        break;
    case PLAIT_MSG_TASK: {
        const plait_msg_task_t *x = &a->u.task, *y = &b->u.task;
        ck_assert_uint_eq(x->round_id, y->round_id);
        ck_assert_uint_eq(x->adapter_version, y->adapter_version);
        ck_assert_uint_eq(x->adapter_len, y->adapter_len);
        ck_assert_mem_eq(x->adapter_sha256, y->adapter_sha256, 32);
        ck_assert_uint_eq(x->lora.rank, y->lora.rank);
        ck_assert(x->lora.alpha == y->lora.alpha);
        ck_assert_uint_eq(x->lora.targets, y->lora.targets);
        ck_assert_int_eq(x->lora.mode, y->lora.mode);
        ck_assert_uint_eq(x->lora.a_seed, y->lora.a_seed);
        ck_assert_uint_eq(x->train.local_steps, y->train.local_steps);
        ck_assert_uint_eq(x->train.batch, y->train.batch);
        ck_assert_uint_eq(x->train.seq_len, y->train.seq_len);
        ck_assert(x->train.lr == y->train.lr);
        ck_assert(x->train.prox_mu == y->train.prox_mu);
        ck_assert(x->clip_norm == y->clip_norm);
        ck_assert_uint_eq(x->quant_bits, y->quant_bits);
        ck_assert(x->quant_range == y->quant_range);
        ck_assert_int_eq(x->secure_agg, y->secure_agg);
        ck_assert_int_eq(x->dp.mode, y->dp.mode);
        ck_assert(x->dp.noise_multiplier == y->dp.noise_multiplier);
        ck_assert_uint_eq(x->dp.ddg_var_num, y->dp.ddg_var_num);
        ck_assert_uint_eq(x->dp.ddg_var_den, y->dp.ddg_var_den);
        ck_assert_uint_eq(x->deadline_s, y->deadline_s);
        ck_assert_uint_eq(x->update_elements, y->update_elements);
        ck_assert_uint_eq(x->example_cap, y->example_cap);
        ck_assert_uint_eq(x->max_chunk_bytes, y->max_chunk_bytes);
        ck_assert_int_eq(x->has_secagg, y->has_secagg);
        ck_assert_uint_eq(x->secagg.index, y->secagg.index);
        ck_assert_uint_eq(x->secagg.n, y->secagg.n);
        ck_assert_uint_eq(x->secagg.k, y->secagg.k);
        ck_assert_uint_eq(x->secagg.t, y->secagg.t);
        ck_assert_uint_eq(x->secagg.bits, y->secagg.bits);
        ck_assert_mem_eq(x->secagg.graph_seed, y->secagg.graph_seed, 32);
        break;
    }
    case PLAIT_MSG_COME_BACK_LATER:
        ck_assert_uint_eq(a->u.come_back_later.retry_ms, b->u.come_back_later.retry_ms);
        ck_assert_int_eq(a->u.come_back_later.reason, b->u.come_back_later.reason);
        break;
    case PLAIT_MSG_ADAPTER_REQUEST:
        ck_assert_uint_eq(a->u.adapter_request.round_id, b->u.adapter_request.round_id);
        ck_assert_uint_eq(a->u.adapter_request.version, b->u.adapter_request.version);
        ck_assert_uint_eq(a->u.adapter_request.offset, b->u.adapter_request.offset);
        ck_assert_uint_eq(a->u.adapter_request.accept, b->u.adapter_request.accept);
        ck_assert_int_eq(a->u.adapter_request.has_base, b->u.adapter_request.has_base);
        if (a->u.adapter_request.has_base)
            ck_assert_mem_eq(a->u.adapter_request.base_sha256, b->u.adapter_request.base_sha256, 32);
        break;
    case PLAIT_MSG_ADAPTER_CHUNK: {
        const plait_msg_adapter_chunk_t *x = &a->u.adapter_chunk, *y = &b->u.adapter_chunk;
        ck_assert_uint_eq(x->version, y->version);
        ck_assert_uint_eq(x->offset, y->offset);
        ck_assert_uint_eq(x->total_len, y->total_len);
        ck_assert_uint_eq(x->len, y->len);
        ck_assert_mem_eq(x->data, y->data, x->len);
        ck_assert_int_eq(x->has_sha256, y->has_sha256);
        if (x->has_sha256) ck_assert_mem_eq(x->sha256, y->sha256, 32);
        ck_assert_int_eq(x->encoding, y->encoding);
        break;
    }
    case PLAIT_MSG_UPDATE_CHUNK: {
        const plait_msg_update_chunk_t *x = &a->u.update_chunk, *y = &b->u.update_chunk;
        ck_assert_uint_eq(x->round_id, y->round_id);
        ck_assert_uint_eq(x->chunk_index, y->chunk_index);
        ck_assert_uint_eq(x->offset, y->offset);
        ck_assert_uint_eq(x->total_elements, y->total_elements);
        ck_assert_uint_eq(x->n_words, y->n_words);
        ck_assert_int_eq(x->words == NULL, y->words == NULL);
        if (x->words) ck_assert_mem_eq(x->words, y->words, x->n_words * 4);
        ck_assert_uint_eq(x->bits, y->bits);
        ck_assert_uint_eq(x->packed_len, y->packed_len);
        if (x->packed) ck_assert_mem_eq(x->packed, y->packed, x->packed_len);
        break;
    }
    case PLAIT_MSG_ACK:
        ck_assert_uint_eq(a->u.ack.round_id, b->u.ack.round_id);
        ck_assert_int_eq(a->u.ack.kind, b->u.ack.kind);
        ck_assert_uint_eq(a->u.ack.elements, b->u.ack.elements);
        break;
    case PLAIT_MSG_ERROR:
        ck_assert_int_eq(a->u.error.code, b->u.error.code);
        ck_assert_str_eq(a->u.error.message, b->u.error.message);
        break;
    case PLAIT_MSG_PING:
    case PLAIT_MSG_PONG:
        ck_assert_uint_eq(a->u.ping.nonce, b->u.ping.nonce);
        break;
    case PLAIT_MSG_SECAGG_ADVERTISE: {
        const plait_msg_secagg_advertise_t *x = &a->u.secagg_advertise, *y = &b->u.secagg_advertise;
        ck_assert_uint_eq(x->round_id, y->round_id);
        ck_assert_mem_eq(x->mask_pk, y->mask_pk, 32);
        ck_assert_mem_eq(x->enc_pk, y->enc_pk, 32);
        ck_assert_uint_eq(x->sig_len, y->sig_len);
        ck_assert_mem_eq(x->signature, y->signature, x->sig_len);
        ck_assert_uint_eq(x->cert_len, y->cert_len);
        ck_assert_mem_eq(x->cert, y->cert, x->cert_len);
        break;
    }
    case PLAIT_MSG_SECAGG_ROSTER: {
        const plait_msg_secagg_roster_t *x = &a->u.secagg_roster, *y = &b->u.secagg_roster;
        ck_assert_uint_eq(x->round_id, y->round_id);
        ck_assert_uint_eq(x->n_peers, y->n_peers);
        for (size_t i = 0; i < x->n_peers; i++) {
            const plait_secagg_peer_t *p = &x->peers[i], *q = &y->peers[i];
            ck_assert_uint_eq(p->index, q->index);
            ck_assert_uint_eq(p->cert_len, q->cert_len);
            ck_assert_mem_eq(p->cert, q->cert, p->cert_len);
            ck_assert_mem_eq(p->mask_pk, q->mask_pk, 32);
            ck_assert_mem_eq(p->enc_pk, q->enc_pk, 32);
            ck_assert_uint_eq(p->sig_len, q->sig_len);
            ck_assert_mem_eq(p->signature, q->signature, p->sig_len);
        }
        break;
    }
    case PLAIT_MSG_SECAGG_SHARES:
    case PLAIT_MSG_SECAGG_RELAY:
        ck_assert_uint_eq(a->u.secagg_shares.round_id, b->u.secagg_shares.round_id);
        assert_shares_eq(a->u.secagg_shares.shares, a->u.secagg_shares.n_shares,
                         b->u.secagg_shares.shares, b->u.secagg_shares.n_shares);
        break;
    case PLAIT_MSG_SECAGG_MASKED_INPUT: {
        const plait_msg_secagg_masked_input_t *x = &a->u.secagg_masked_input,
                                              *y = &b->u.secagg_masked_input;
        ck_assert_uint_eq(x->round_id, y->round_id);
        ck_assert_uint_eq(x->chunk_index, y->chunk_index);
        ck_assert_uint_eq(x->offset, y->offset);
        ck_assert_uint_eq(x->total_elements, y->total_elements);
        ck_assert_uint_eq(x->bits, y->bits);
        ck_assert_uint_eq(x->count, y->count);
        ck_assert_uint_eq(x->len, y->len);
        ck_assert_mem_eq(x->data, y->data, x->len);
        break;
    }
    case PLAIT_MSG_SECAGG_UNMASK_REQUEST: {
        const plait_msg_secagg_unmask_request_t *x = &a->u.secagg_unmask_request,
                                                *y = &b->u.secagg_unmask_request;
        ck_assert_uint_eq(x->round_id, y->round_id);
        ck_assert_uint_eq(x->n_survivors, y->n_survivors);
        ck_assert_mem_eq(x->survivors, y->survivors, x->n_survivors * 4);
        ck_assert_uint_eq(x->n_dropouts, y->n_dropouts);
        if (x->n_dropouts) ck_assert_mem_eq(x->dropouts, y->dropouts, x->n_dropouts * 4);
        break;
    }
    case PLAIT_MSG_SECAGG_UNMASK_RESPONSE: {
        const plait_msg_secagg_unmask_response_t *x = &a->u.secagg_unmask_response,
                                                 *y = &b->u.secagg_unmask_response;
        ck_assert_uint_eq(x->round_id, y->round_id);
        assert_shares_eq(x->seed_shares, x->n_seed, y->seed_shares, y->n_seed);
        assert_shares_eq(x->key_shares, x->n_key, y->key_shares, y->n_key);
        break;
    }
    case PLAIT_MSG_DECLINE:
        ck_assert_uint_eq(a->u.decline.round_id, b->u.decline.round_id);
        ck_assert_int_eq(a->u.decline.code, b->u.decline.code);
        break;
    }
}

/* Encode sample i into a malloc'd frame. */
static uint8_t *encode_sample(int i, size_t *len)
{
    plait_msg_t m;
    sample(i, &m);
    uint8_t *buf = NULL;
    ck_assert_int_eq(plait_wire_encode_alloc(&m, NULL, &buf, len), 0);
    return buf;
}

/* Parse a whole buffer placed against a guard page. */
static int parse_guarded(const uint8_t *buf, size_t len, const plait_wire_limits_t *lim,
                         unsigned flags, plait_msg_t *out, size_t *used)
{
    guarded_t g;
    uint8_t *p = guard_copy(&g, buf, len);
    int rc = plait_wire_parse(p, len, lim, flags, out, used);
    /* A decoded message owns its data: it must survive the input buffer. */
    guard_free(&g);
    return rc;
}

/* ---- round trip ---------------------------------------------------------- */

/* FedProx's mu travels in TrainParams; absent (0) leaves the task's bytes as before. */
START_TEST(test_task_prox_mu)
{
    plait_msg_t m, d;
    sample(2, &m);
    ck_assert(m.u.task.train.prox_mu == 0.0);
    uint8_t *plain = NULL, *prox = NULL;
    size_t n_plain = 0, n_prox = 0, used = 0;
    ck_assert_int_eq(plait_wire_encode_alloc(&m, NULL, &plain, &n_plain), 0);
    m.u.task.train.prox_mu = 0.25;
    ck_assert_int_eq(plait_wire_encode_alloc(&m, NULL, &prox, &n_prox), 0);
    ck_assert_uint_eq(n_prox, n_plain + 9); /* one double field: tag byte + 8 bytes */
    ck_assert_msg(parse_guarded(prox, n_prox, NULL, 0, &d, &used) == 0, "%s", plait_errmsg());
    ck_assert(d.u.task.train.prox_mu == 0.25);
    plait_msg_free(&d);
    ck_assert_msg(parse_guarded(plain, n_plain, NULL, 0, &d, &used) == 0, "%s", plait_errmsg());
    ck_assert(d.u.task.train.prox_mu == 0.0);
    plait_msg_free(&d);
    plait_msg_free(&m);
    free(plain);
    free(prox);
}
END_TEST

START_TEST(test_roundtrip_all)
{
    for (int i = 0; i < N_SAMPLES; i++) {
        plait_msg_t m, d;
        sample(i, &m);
        size_t want = 0, len = 0;
        ck_assert_int_eq(plait_msg_validate(&m, NULL), 0);
        ck_assert_int_eq(plait_wire_encoded_size(&m, NULL, &want), 0);
        uint8_t *buf = encode_sample(i, &len);
        ck_assert_uint_eq(len, want);
        /* header: length, version, type */
        ck_assert_uint_eq(
            ((size_t)buf[0] << 24 | (size_t)buf[1] << 16 | (size_t)buf[2] << 8 | buf[3]) + 4, len);
        ck_assert_uint_eq(buf[4], PLAIT_WIRE_VERSION);
        ck_assert_uint_eq(buf[5], m.type);

        size_t used = 0;
        ck_assert_msg(parse_guarded(buf, len, NULL, 0, &d, &used) == 0, "sample %d: %s", i,
                      plait_errmsg());
        ck_assert_uint_eq(used, len);
        assert_msg_eq(&m, &d);

        /* Re-encoding the decoded message gives the same bytes. */
        uint8_t *again = NULL;
        size_t len2 = 0;
        ck_assert_int_eq(plait_wire_encode_alloc(&d, NULL, &again, &len2), 0);
        ck_assert_uint_eq(len2, len);
        ck_assert_mem_eq(again, buf, len);

        /* A buffer one byte short is refused without writing past it. */
        uint8_t *small = malloc(len);
        size_t got = 99;
        ck_assert_int_eq(plait_wire_encode(&m, NULL, small, len - 1, &got), PLAIT_ETOOBIG);
        ck_assert_uint_eq(got, 0);
        ck_assert_int_eq(plait_wire_encode(&m, NULL, small, len, &got), 0);
        ck_assert_mem_eq(small, buf, len);

        free(small);
        free(again);
        free(buf);
        plait_msg_free(&d);
        plait_msg_free(&d); /* twice is safe */
    }
    plait_msg_free(NULL);
}
END_TEST

START_TEST(test_stream_of_frames)
{
    /* All samples back to back: parse them one after another, then a partial tail. */
    uint8_t stream[8192];
    size_t total = 0, lens[N_SAMPLES];
    for (int i = 0; i < N_SAMPLES; i++) {
        uint8_t *buf = encode_sample(i, &lens[i]);
        ck_assert_uint_le(total + lens[i], sizeof(stream));
        memcpy(stream + total, buf, lens[i]);
        total += lens[i];
        free(buf);
    }
    guarded_t g;
    uint8_t *p = guard_copy(&g, stream, total - 3);
    size_t off = 0;
    for (int i = 0; i < N_SAMPLES - 1; i++) {
        plait_msg_t m, want;
        size_t used = 0;
        ck_assert_int_eq(plait_wire_parse(p + off, total - 3 - off, NULL, 0, &m, &used), 0);
        ck_assert_uint_eq(used, lens[i]);
        sample(i, &want);
        assert_msg_eq(&want, &m);
        plait_msg_free(&m);
        off += used;
    }
    plait_msg_t m;
    size_t used = 7;
    ck_assert_int_eq(plait_wire_parse(p + off, total - 3 - off, NULL, 0, &m, &used), PLAIT_EAGAIN);
    ck_assert_uint_eq(used, 0);
    guard_free(&g);
}
END_TEST

START_TEST(test_type_names)
{
    ck_assert_str_eq(plait_msg_type_name(PLAIT_MSG_HELLO), "hello");
    ck_assert_str_eq(plait_msg_type_name(PLAIT_MSG_UPDATE_CHUNK), "update_chunk");
    ck_assert_str_eq(plait_msg_type_name(PLAIT_MSG_PONG), "pong");
    ck_assert_str_eq(plait_msg_type_name(0), "unknown");
    ck_assert_str_eq(plait_msg_type_name(11), "secagg_advertise");
    ck_assert_str_eq(plait_msg_type_name(PLAIT_MSG_SECAGG_UNMASK_RESPONSE), "secagg_unmask_response");
    ck_assert_str_eq(plait_msg_type_name(PLAIT_MSG_TYPE_MAX + 1), "unknown");
    ck_assert_str_eq(plait_msg_type_name(PLAIT_MSG_DECLINE), "decline");
    for (int c = 1; c <= PLAIT_DECLINE_CODE_MAX; c++)
        ck_assert_str_ne(plait_decline_code_name(c), "unknown");
    ck_assert_str_eq(plait_decline_code_name(0), "unknown");
    ck_assert_str_eq(plait_decline_code_name(PLAIT_DECLINE_CODE_MAX + 1), "unknown");
}
END_TEST

/* ---- prefixes ------------------------------------------------------------- */

START_TEST(test_every_prefix_eagain)
{
    for (int i = 0; i < N_SAMPLES; i++) {
        size_t len = 0;
        uint8_t *buf = encode_sample(i, &len);
        for (size_t k = 0; k < len; k++) {
            guarded_t g;
            uint8_t *p = guard_copy(&g, buf, k);
            plait_frame_t f;
            size_t used = 99;
            ck_assert_msg(plait_frame_decode(k ? p : NULL, k, NULL, 0, &f, &used) == PLAIT_EAGAIN,
                          "sample %d prefix %zu", i, k);
            ck_assert_uint_eq(used, 0);
            ck_assert_uint_eq(f.frame_len, k >= 4 ? len : 0);
            plait_msg_t m;
            ck_assert_int_eq(plait_wire_parse(p, k, NULL, 0, &m, &used), PLAIT_EAGAIN);
            ck_assert_uint_eq(used, 0);
            ck_assert_int_eq(m.type, 0);
            ck_assert_ptr_null(m.priv);
            guard_free(&g);
        }
        free(buf);
    }
}
END_TEST

START_TEST(test_every_truncated_payload)
{
    /* A frame whose header is rewritten to cover only part of a valid payload:
     * the decoder sees a complete frame with a cut message, which must be
     * refused (EPROTO) or, where the cut falls on a field boundary, fail the
     * presence/validation checks; it never crashes or reads past the end. */
    for (int i = 0; i < N_SAMPLES; i++) {
        size_t len = 0;
        uint8_t *buf = encode_sample(i, &len);
        for (size_t k = PLAIT_FRAME_HEADER; k < len; k++) {
            uint32_t n = (uint32_t)(k - 4);
            buf[0] = (uint8_t)(n >> 24), buf[1] = (uint8_t)(n >> 16), buf[2] = (uint8_t)(n >> 8),
            buf[3] = (uint8_t)n;
            plait_msg_t m;
            size_t used = 0;
            int rc = parse_guarded(buf, k, NULL, 0, &m, &used);
            if (rc == 0) {
                /* A cut between two elements of a trailing repeated field (roster peers,
                 * shares) is a shorter valid message: it must be exactly those bytes. */
                uint8_t *again = NULL;
                size_t n2 = 0;
                ck_assert_int_eq(plait_wire_encode_alloc(&m, NULL, &again, &n2), 0);
                ck_assert_msg(n2 == k && memcmp(again, buf, k) == 0, "sample %d cut at %zu", i,
                              k);
                ck_assert(m.type >= PLAIT_MSG_SECAGG_ADVERTISE);
                free(again);
                plait_msg_free(&m);
                continue;
            }
            ck_assert_msg(rc == PLAIT_EPROTO, "sample %d cut at %zu: %s", i, k, plait_err_name(rc));
        }
        free(buf);
    }
}
END_TEST

/* ---- limits and the header ------------------------------------------------ */

static void put_header(uint8_t *h, uint32_t n, uint8_t version, uint8_t type)
{
    h[0] = (uint8_t)(n >> 24), h[1] = (uint8_t)(n >> 16), h[2] = (uint8_t)(n >> 8),
    h[3] = (uint8_t)n;
    h[4] = version;
    h[5] = type;
}

/* Decode the first k bytes of h against a guard page. */
static int frame_guarded(const uint8_t *h, size_t k, const plait_wire_limits_t *lim, unsigned flags,
                         size_t *flen)
{
    guarded_t g;
    uint8_t *p = guard_copy(&g, h, k);
    plait_frame_t f;
    size_t used = 0;
    int rc = plait_frame_decode(p, k, lim, flags, &f, &used);
    if (flen) *flen = f.frame_len;
    guard_free(&g);
    return rc;
}

START_TEST(test_oversize_from_header)
{
    plait_wire_limits_t lim;
    plait_wire_limits_default(&lim);
    uint8_t h[6];
    size_t flen = 0;

    /* Exactly at the limit: a prefix, read more. One above: refused from 4 bytes. */
    put_header(h, (uint32_t)(lim.max_frame - 4), PLAIT_WIRE_VERSION, PLAIT_MSG_UPDATE_CHUNK);
    ck_assert_int_eq(frame_guarded(h, 4, &lim, 0, &flen), PLAIT_EAGAIN);
    ck_assert_uint_eq(flen, lim.max_frame);
    ck_assert_int_eq(frame_guarded(h, 6, &lim, 0, NULL), PLAIT_EAGAIN);
    put_header(h, (uint32_t)(lim.max_frame - 3), PLAIT_WIRE_VERSION, PLAIT_MSG_UPDATE_CHUNK);
    ck_assert_int_eq(frame_guarded(h, 4, &lim, 0, NULL), PLAIT_ETOOBIG);
    ck_assert_ptr_nonnull(strstr(plait_errmsg(), "limit"));
    put_header(h, 0xffffffffu, PLAIT_WIRE_VERSION, PLAIT_MSG_UPDATE_CHUNK);
    ck_assert_int_eq(frame_guarded(h, 4, &lim, 0, NULL), PLAIT_ETOOBIG);
    ck_assert_int_eq(frame_guarded(h, 6, &lim, 0, NULL), PLAIT_ETOOBIG);

    /* Before the hello the cap is much lower. */
    put_header(h, (uint32_t)(lim.max_preauth_frame - 4), PLAIT_WIRE_VERSION, PLAIT_MSG_HELLO);
    ck_assert_int_eq(frame_guarded(h, 6, &lim, PLAIT_FRAME_PREAUTH, NULL), PLAIT_EAGAIN);
    put_header(h, (uint32_t)(lim.max_preauth_frame - 3), PLAIT_WIRE_VERSION, PLAIT_MSG_HELLO);
    ck_assert_int_eq(frame_guarded(h, 4, &lim, PLAIT_FRAME_PREAUTH, NULL), PLAIT_ETOOBIG);
    ck_assert_int_eq(frame_guarded(h, 4, &lim, 0, NULL), PLAIT_EAGAIN);

    /* Custom limits are honoured. */
    lim.max_preauth_frame = 64;
    put_header(h, 61, PLAIT_WIRE_VERSION, PLAIT_MSG_HELLO);
    ck_assert_int_eq(frame_guarded(h, 4, &lim, PLAIT_FRAME_PREAUTH, NULL), PLAIT_ETOOBIG);

    /* A real hello is far below the pre-auth cap. */
    size_t len = 0;
    uint8_t *buf = encode_sample(1, &len);
    ck_assert_uint_lt(len, 200);
    plait_msg_t m;
    size_t used = 0;
    ck_assert_int_eq(parse_guarded(buf, len, NULL, PLAIT_FRAME_PREAUTH, &m, &used), 0);
    plait_msg_free(&m);
    free(buf);

    /* plait_wire_decode enforces the frame limit on hand-built frames too. */
    plait_wire_limits_default(&lim);
    plait_frame_t f = {PLAIT_WIRE_VERSION, PLAIT_MSG_PING, (const uint8_t *)"", lim.max_frame, 0};
    ck_assert_int_eq(plait_wire_decode(&f, &lim, &m), PLAIT_ETOOBIG);
}
END_TEST

START_TEST(test_bad_header)
{
    uint8_t h[6];
    /* length below 2 */
    for (uint32_t n = 0; n < 2; n++) {
        put_header(h, n, PLAIT_WIRE_VERSION, PLAIT_MSG_PING);
        ck_assert_int_eq(frame_guarded(h, 4, NULL, 0, NULL), PLAIT_EPROTO);
    }
    /* length 2 with a valid type: an empty envelope, refused by the decoder */
    put_header(h, 2, PLAIT_WIRE_VERSION, PLAIT_MSG_PING);
    ck_assert_int_eq(frame_guarded(h, 6, NULL, 0, NULL), 0);
    plait_msg_t m;
    size_t used = 0;
    ck_assert_int_eq(parse_guarded(h, 6, NULL, 0, &m, &used), PLAIT_EPROTO);
    ck_assert_ptr_nonnull(strstr(plait_errmsg(), "envelope"));
    /* version, decided at 5 bytes */
    const uint8_t versions[] = {0, 2, 0xff};
    for (size_t i = 0; i < sizeof(versions); i++) {
        put_header(h, 10, versions[i], PLAIT_MSG_PING);
        ck_assert_int_eq(frame_guarded(h, 4, NULL, 0, NULL), PLAIT_EAGAIN);
        ck_assert_int_eq(frame_guarded(h, 5, NULL, 0, NULL), PLAIT_EPROTO);
        ck_assert_ptr_nonnull(strstr(plait_errmsg(), "version"));
    }
    /* type, decided at 6 bytes */
    const uint8_t types[] = {0, 18, 19, PLAIT_MSG_TYPE_MAX + 1, 0x80, 0xff}; /* 18..19: undefined */
    for (size_t i = 0; i < sizeof(types); i++) {
        put_header(h, 10, PLAIT_WIRE_VERSION, types[i]);
        ck_assert_int_eq(frame_guarded(h, 5, NULL, 0, NULL), PLAIT_EAGAIN);
        ck_assert_int_eq(frame_guarded(h, 6, NULL, 0, NULL), PLAIT_EPROTO);
    }
    /* only a hello before authentication */
    for (uint8_t t = 2; t <= PLAIT_MSG_TYPE_MAX; t++) {
        if (strcmp(plait_msg_type_name(t), "unknown") == 0) continue;
        put_header(h, 10, PLAIT_WIRE_VERSION, t);
        ck_assert_int_eq(frame_guarded(h, 6, NULL, PLAIT_FRAME_PREAUTH, NULL), PLAIT_EPROTO);
        ck_assert_int_eq(frame_guarded(h, 6, NULL, 0, NULL), PLAIT_EAGAIN);
    }
    /* bad arguments */
    plait_frame_t f;
    ck_assert_int_eq(plait_frame_decode(h, 6, NULL, 0, NULL, &used), PLAIT_EINVAL);
    ck_assert_int_eq(plait_frame_decode(h, 6, NULL, 0, &f, NULL), PLAIT_EINVAL);
    ck_assert_int_eq(plait_frame_decode(NULL, 6, NULL, 0, &f, &used), PLAIT_EINVAL);
    ck_assert_int_eq(plait_frame_decode(h, 6, NULL, 0x80, &f, &used), PLAIT_EINVAL);
}
END_TEST

START_TEST(test_limits_validate)
{
    plait_wire_limits_t lim, bad;
    plait_wire_limits_default(&lim);
    ck_assert_int_eq(plait_wire_limits_validate(&lim), 0);
    ck_assert_int_eq(plait_wire_limits_validate(NULL), PLAIT_EINVAL);
    bad = lim, bad.max_frame = lim.max_chunk_bytes; /* no room for the chunk's other fields */
    ck_assert_int_eq(plait_wire_limits_validate(&bad), PLAIT_EINVAL);
    bad = lim, bad.max_frame = PLAIT_WIRE_MAX_FRAME_HARD + 1;
    ck_assert_int_eq(plait_wire_limits_validate(&bad), PLAIT_EINVAL);
    bad = lim, bad.max_preauth_frame = lim.max_frame + 1;
    ck_assert_int_eq(plait_wire_limits_validate(&bad), PLAIT_EINVAL);
    bad = lim, bad.max_preauth_frame = 10;
    ck_assert_int_eq(plait_wire_limits_validate(&bad), PLAIT_EINVAL);
    bad = lim, bad.max_chunk_bytes = 3;
    ck_assert_int_eq(plait_wire_limits_validate(&bad), PLAIT_EINVAL);
    bad = lim, bad.max_update_elements = 1;
    ck_assert_int_eq(plait_wire_limits_validate(&bad), PLAIT_EINVAL);
    bad = lim, bad.max_adapter_bytes = 0;
    ck_assert_int_eq(plait_wire_limits_validate(&bad), PLAIT_EINVAL);
    bad = lim, bad.max_string = PLAIT_WIRE_MAX_STRING + 1;
    ck_assert_int_eq(plait_wire_limits_validate(&bad), PLAIT_EINVAL);
    bad = lim, bad.max_deadline_s = 0;
    ck_assert_int_eq(plait_wire_limits_validate(&bad), PLAIT_EINVAL);
    bad = lim, bad.max_retry_ms = 0;
    ck_assert_int_eq(plait_wire_limits_validate(&bad), PLAIT_EINVAL);
    /* functions taking limits refuse bad ones */
    plait_msg_t m;
    sample(12, &m);
    size_t n = 0;
    ck_assert_int_eq(plait_wire_encoded_size(&m, &bad, &n), PLAIT_EINVAL);
    uint8_t h[6];
    plait_frame_t f;
    ck_assert_int_eq(plait_frame_decode(h, 0, &bad, 0, &f, &n), PLAIT_EINVAL);
}
END_TEST

/* Full-size chunks fit the smallest frame limit that the limits allow. */
START_TEST(test_full_chunks_fit)
{
    plait_wire_limits_t lim;
    plait_wire_limits_default(&lim);
    lim.max_frame = lim.max_chunk_bytes + PLAIT_WIRE_CHUNK_OVERHEAD;
    ck_assert_int_eq(plait_wire_limits_validate(&lim), 0);
    size_t nw = lim.max_chunk_bytes / 4;
    uint32_t *w = malloc(nw * 4);
    for (size_t i = 0; i < nw; i++)
        w[i] = (uint32_t)(i * 2654435761u);

    plait_msg_t m, d;
    plait_msg_init(&m, PLAIT_MSG_UPDATE_CHUNK);
    plait_msg_update_chunk_t *u = &m.u.update_chunk;
    lim.max_update_elements = (uint64_t)1 << 32; /* the largest values give the longest varints */
    u->round_id = UINT64_MAX;
    u->offset = lim.max_update_elements - nw;
    u->chunk_index = (uint32_t)u->offset;
    u->total_elements = lim.max_update_elements;
    u->words = w;
    u->n_words = nw;
    uint8_t *buf = NULL;
    size_t len = 0, used = 0;
    ck_assert_msg(plait_wire_encode_alloc(&m, &lim, &buf, &len) == 0, "%s", plait_errmsg());
    ck_assert_uint_le(len, lim.max_frame);
    ck_assert_int_eq(plait_wire_parse(buf, len, &lim, 0, &d, &used), 0);
    assert_msg_eq(&m, &d);
    plait_msg_free(&d);
    free(buf);

    /* one word more is a field error, not a frame error */
    u->n_words = nw + 1;
    u->offset -= 1;
    ck_assert_int_eq(plait_wire_encoded_size(&m, &lim, &len), PLAIT_EPROTO);
    ck_assert_ptr_nonnull(strstr(plait_errmsg(), "update_chunk.words"));

    plait_msg_init(&m, PLAIT_MSG_ADAPTER_CHUNK);
    plait_msg_adapter_chunk_t *a = &m.u.adapter_chunk;
    a->version = UINT64_MAX;
    a->total_len = lim.max_adapter_bytes;
    a->offset = lim.max_adapter_bytes - lim.max_chunk_bytes;
    a->data = (const uint8_t *)w;
    a->len = lim.max_chunk_bytes;
    a->has_sha256 = 1;
    ck_assert_int_eq(plait_wire_encode_alloc(&m, &lim, &buf, &len), 0);
    ck_assert_uint_le(len, lim.max_frame);
    ck_assert_int_eq(plait_wire_parse(buf, len, &lim, 0, &d, &used), 0);
    assert_msg_eq(&m, &d);
    plait_msg_free(&d);
    free(buf);
    free(w);
}
END_TEST

/* Download encodings (protocol.md, "Adapter encodings"): the request's accept bits and base hash,
 * the chunk's encoding, round-trip; the rules on them are enforced at encode and decode. */
START_TEST(test_adapter_encodings)
{
    plait_msg_t m, d;
    uint8_t *buf;
    size_t len, used;
    plait_msg_init(&m, PLAIT_MSG_ADAPTER_REQUEST);
    plait_msg_adapter_request_t *r = &m.u.adapter_request;
    r->round_id = 3;
    r->version = 2;
    r->offset = 0;
    r->accept = (1u << PLAIT_ADAPTER_DELTA) | (1u << PLAIT_ADAPTER_SEEDED) | (1u << 20); /* unknown bits pass */
    r->has_base = 1;
    memset(r->base_sha256, 0xab, 32);
    ck_assert_int_eq(plait_wire_encode_alloc(&m, NULL, &buf, &len), 0);
    ck_assert_int_eq(plait_wire_parse(buf, len, NULL, 0, &d, &used), 0);
    assert_msg_eq(&m, &d);
    plait_msg_free(&d);
    free(buf);
    /* a base without the DELTA bit, and encodings on a resumed download, are refused by name */
    r->accept = 1u << PLAIT_ADAPTER_SEEDED;
    ck_assert_int_eq(plait_wire_encode_alloc(&m, NULL, &buf, &len), PLAIT_EPROTO);
    ck_assert_ptr_nonnull(strstr(plait_errmsg(), "adapter_request.base_sha256"));
    r->has_base = 0;
    r->offset = 100;
    ck_assert_int_eq(plait_wire_encode_alloc(&m, NULL, &buf, &len), PLAIT_EPROTO);
    ck_assert_ptr_nonnull(strstr(plait_errmsg(), "adapter_request.accept"));
    r->accept = 0; /* an old device's request: no encodings */
    ck_assert_int_eq(plait_wire_encode_alloc(&m, NULL, &buf, &len), 0);
    ck_assert_int_eq(plait_wire_parse(buf, len, NULL, 0, &d, &used), 0);
    ck_assert_uint_eq(d.u.adapter_request.accept, 0);
    ck_assert_int_eq(d.u.adapter_request.has_base, 0);
    plait_msg_free(&d);
    free(buf);

    static const uint8_t data[40] = {1, 2, 3};
    plait_msg_init(&m, PLAIT_MSG_ADAPTER_CHUNK);
    plait_msg_adapter_chunk_t *c = &m.u.adapter_chunk;
    c->version = 2;
    c->offset = 0;
    c->total_len = sizeof(data);
    c->data = data;
    c->len = sizeof(data);
    c->has_sha256 = 1;
    c->encoding = PLAIT_ADAPTER_DELTA;
    ck_assert_int_eq(plait_wire_encode_alloc(&m, NULL, &buf, &len), 0);
    ck_assert_int_eq(plait_wire_parse(buf, len, NULL, 0, &d, &used), 0);
    assert_msg_eq(&m, &d);
    plait_msg_free(&d);
    free(buf);
    c->encoding = (plait_adapter_encoding_t)3;
    ck_assert_int_eq(plait_wire_encode_alloc(&m, NULL, &buf, &len), PLAIT_EPROTO);
    ck_assert_ptr_nonnull(strstr(plait_errmsg(), "adapter_chunk.encoding"));
}
END_TEST

/* ---- garbage --------------------------------------------------------------- */

static uint64_t xs_state = 0x9e3779b97f4a7c15ull;
static uint32_t xs32(void)
{
    xs_state ^= xs_state << 13;
    xs_state ^= xs_state >> 7;
    xs_state ^= xs_state << 17;
    return (uint32_t)(xs_state >> 32);
}

/* Whatever the decoder accepts must be a valid message that re-encodes. */
static void check_accepted(const plait_msg_t *m)
{
    ck_assert_int_eq(plait_msg_validate(m, NULL), 0);
    size_t n = 0;
    ck_assert_int_eq(plait_wire_encoded_size(m, NULL, &n), 0);
}

START_TEST(test_flipped_bytes)
{
    for (int i = 0; i < N_SAMPLES; i++) {
        size_t len = 0;
        uint8_t *buf = encode_sample(i, &len);
        for (size_t k = 0; k < len; k++) {
            for (int v = 0; v < 3; v++) {
                uint8_t save = buf[k];
                buf[k] = v == 0   ? (uint8_t)(save ^ 0xff)
                         : v == 1 ? (uint8_t)(save ^ 1)
                                  : (uint8_t)0x80;
                plait_msg_t m;
                size_t used = 0;
                int rc = parse_guarded(buf, len, NULL, 0, &m, &used);
                ck_assert_msg(rc == 0 || rc == PLAIT_EPROTO || rc == PLAIT_EAGAIN ||
                                  rc == PLAIT_ETOOBIG,
                              "sample %d byte %zu: %s", i, k, plait_err_name(rc));
                if (rc == 0) {
                    ck_assert_uint_le(used, len);
                    check_accepted(&m);
                    plait_msg_free(&m);
                } else {
                    ck_assert_uint_eq(used, 0);
                    ck_assert_ptr_null(m.priv);
                }
                buf[k] = save;
            }
        }
        free(buf);
    }
}
END_TEST

START_TEST(test_garbage_payloads)
{
    uint8_t buf[512];
    for (int iter = 0; iter < 3000; iter++) {
        size_t n = 6 + xs32() % (sizeof(buf) - 6);
        for (size_t i = 6; i < n; i++)
            buf[i] = (uint8_t)xs32();
        /* bias towards plausible protobuf: small field numbers and wire types */
        if (iter % 2) buf[6] = (uint8_t)((1 + iter % PLAIT_MSG_TYPE_MAX) << 3 | 2);
        uint8_t type = (uint8_t)(1 + xs32() % PLAIT_MSG_TYPE_MAX);
        put_header(buf, (uint32_t)(n - 4), PLAIT_WIRE_VERSION, type);
        plait_msg_t m;
        size_t used = 0;
        int rc = parse_guarded(buf, n, NULL, 0, &m, &used);
        ck_assert_msg(rc == 0 || rc == PLAIT_EPROTO || rc == PLAIT_ETOOBIG, "iter %d: %s", iter,
                      plait_err_name(rc));
        if (rc == 0) {
            check_accepted(&m);
            plait_msg_free(&m);
        }
    }
}
END_TEST

/* ---- hand-built protobuf payloads ------------------------------------------ */

typedef struct {
    uint8_t b[4096];
    size_t n;
} pbw_t;

static void pb_byte(pbw_t *w, uint8_t x)
{
    ck_assert_uint_lt(w->n, sizeof(w->b));
    w->b[w->n++] = x;
}
static void pb_varint(pbw_t *w, uint64_t v)
{
    while (v >= 0x80) {
        pb_byte(w, (uint8_t)(v | 0x80));
        v >>= 7;
    }
    pb_byte(w, (uint8_t)v);
}
static void pb_tag(pbw_t *w, unsigned f, unsigned wt)
{
    pb_varint(w, (uint64_t)f << 3 | wt);
}
static void pb_u(pbw_t *w, unsigned f, uint64_t v)
{
    pb_tag(w, f, 0);
    pb_varint(w, v);
}
static void pb_bytes(pbw_t *w, unsigned f, const void *p, size_t n)
{
    pb_tag(w, f, 2);
    pb_varint(w, n);
    for (size_t i = 0; i < n; i++)
        pb_byte(w, ((const uint8_t *)p)[i]);
}
static void pb_sub(pbw_t *w, unsigned f, const pbw_t *s)
{
    pb_bytes(w, f, s->b, s->n);
}
static void pb_fixed32(pbw_t *w, unsigned f, uint32_t v)
{
    pb_tag(w, f, 5);
    for (int i = 0; i < 4; i++)
        pb_byte(w, (uint8_t)(v >> (8 * i)));
}
static void pb_double(pbw_t *w, unsigned f, double d)
{
    uint64_t v;
    memcpy(&v, &d, 8);
    pb_tag(w, f, 1);
    for (int i = 0; i < 8; i++)
        pb_byte(w, (uint8_t)(v >> (8 * i)));
}

/* Wrap msg as Envelope field `type` in a frame of that type and parse it. */
static int parse_pb(uint8_t type, const pbw_t *msg, plait_msg_t *out)
{
    pbw_t env = {.n = 0};
    pb_sub(&env, type, msg);
    uint8_t frame[8192];
    put_header(frame, (uint32_t)(env.n + 2), PLAIT_WIRE_VERSION, type);
    memcpy(frame + 6, env.b, env.n);
    size_t used = 0;
    return parse_guarded(frame, env.n + 6, NULL, 0, out, &used);
}

#define EXPECT_FIELD_ERR(rc, field)                                                                \
    do {                                                                                           \
        int rc_ = (rc);                                                                            \
        ck_assert_msg(rc_ == PLAIT_EPROTO, "want EPROTO for %s, got %s", field,                    \
                      plait_err_name(rc_));                                                        \
        ck_assert_msg(strstr(plait_errmsg(), field) != NULL, "error '%s' does not name %s",        \
                      plait_errmsg(), field);                                                      \
    } while (0)

static void hello_pb(pbw_t *w, int skip, size_t sha_len, const char *ver, size_t ver_len)
{
    w->n = 0;
    if (skip != 1) pb_bytes(w, 1, ver, ver_len);
    if (skip != 2) pb_bytes(w, 2, k_sha, sha_len);
    if (skip != 3) pb_u(w, 3, 5);
}

START_TEST(test_decode_hello_fields)
{
    fill_consts();
    pbw_t w;
    plait_msg_t m;
    hello_pb(&w, 0, 32, "v1", 2);
    ck_assert_int_eq(parse_pb(PLAIT_MSG_HELLO, &w, &m), 0);
    ck_assert_str_eq(m.u.hello.client_version, "v1");
    ck_assert_int_eq(m.u.hello.has_last_round, 0);
    plait_msg_free(&m);

    /* unknown fields are skipped (forward compatibility) */
    pb_u(&w, 99, 1234);
    pb_bytes(&w, 100, "future", 6);
    ck_assert_int_eq(parse_pb(PLAIT_MSG_HELLO, &w, &m), 0);
    plait_msg_free(&m);

    hello_pb(&w, 1, 32, "v1", 2);
    EXPECT_FIELD_ERR(parse_pb(PLAIT_MSG_HELLO, &w, &m), "hello.client_version");
    hello_pb(&w, 2, 32, "v1", 2);
    EXPECT_FIELD_ERR(parse_pb(PLAIT_MSG_HELLO, &w, &m), "hello.base_model_sha256");
    hello_pb(&w, 3, 32, "v1", 2);
    EXPECT_FIELD_ERR(parse_pb(PLAIT_MSG_HELLO, &w, &m), "hello.capabilities");
    hello_pb(&w, 0, 31, "v1", 2);
    EXPECT_FIELD_ERR(parse_pb(PLAIT_MSG_HELLO, &w, &m), "hello.base_model_sha256");
    hello_pb(&w, 0, 0, "v1", 2);
    EXPECT_FIELD_ERR(parse_pb(PLAIT_MSG_HELLO, &w, &m), "hello.base_model_sha256");
    hello_pb(&w, 0, 32, "v\0x", 3);
    EXPECT_FIELD_ERR(parse_pb(PLAIT_MSG_HELLO, &w, &m), "hello.client_version");
    hello_pb(&w, 0, 32, "v\n", 2);
    EXPECT_FIELD_ERR(parse_pb(PLAIT_MSG_HELLO, &w, &m), "hello.client_version");
    hello_pb(&w, 0, 32, "", 0);
    EXPECT_FIELD_ERR(parse_pb(PLAIT_MSG_HELLO, &w, &m), "hello.client_version");
    char longv[PLAIT_WIRE_MAX_CLIENT_VERSION + 1];
    memset(longv, 'x', sizeof(longv));
    hello_pb(&w, 0, 32, longv, PLAIT_WIRE_MAX_CLIENT_VERSION);
    ck_assert_int_eq(parse_pb(PLAIT_MSG_HELLO, &w, &m), 0);
    plait_msg_free(&m);
    hello_pb(&w, 0, 32, longv, PLAIT_WIRE_MAX_CLIENT_VERSION + 1);
    EXPECT_FIELD_ERR(parse_pb(PLAIT_MSG_HELLO, &w, &m), "hello.client_version");
    /* a hello inside a ping frame, and a frame whose envelope holds another type */
    hello_pb(&w, 0, 32, "v1", 2);
    pbw_t env = {.n = 0};
    pb_sub(&env, PLAIT_MSG_HELLO, &w);
    uint8_t frame[512];
    put_header(frame, (uint32_t)(env.n + 2), PLAIT_WIRE_VERSION, PLAIT_MSG_PING);
    memcpy(frame + 6, env.b, env.n);
    size_t used = 0;
    EXPECT_FIELD_ERR(parse_guarded(frame, env.n + 6, NULL, 0, &m, &used), "envelope");
    /* a wrong wire type for a field makes the payload undecodable */
    w.n = 0;
    pb_u(&w, 2, 7);
    ck_assert_int_eq(parse_pb(PLAIT_MSG_HELLO, &w, &m), PLAIT_EPROTO);
}
END_TEST

/* The encoded task's inner message (Envelope field 2), to extend with overrides:
 * protobuf's "last value wins" rule lets a test replace any scalar field. */
static void task_inner(pbw_t *w)
{
    plait_msg_t m;
    sample_task(&m);
    uint8_t *buf = NULL;
    size_t len = 0;
    ck_assert_int_eq(plait_wire_encode_alloc(&m, NULL, &buf, &len), 0);
    /* skip header, tag 0x12 and the varint length */
    size_t p = 7;
    while (buf[p] & 0x80)
        p++;
    p++;
    w->n = len - p;
    memcpy(w->b, buf + p, w->n);
    free(buf);
}

START_TEST(test_decode_task_fields)
{
    fill_consts();
    pbw_t w, sub;
    plait_msg_t m;
    task_inner(&w);
    ck_assert_int_eq(parse_pb(PLAIT_MSG_TASK, &w, &m), 0);
    plait_msg_free(&m);

    struct {
        unsigned field;
        uint64_t v;
        const char *name;
    } top[] = {
        {1, 0, "task.round_id"},
        {3, 0, "task.adapter_len"},
        {3, (uint64_t)1 << 40, "task.adapter_len"},
        {8, 7, "task.quant_bits"},
        {8, 33, "task.quant_bits"},
        {12, 0, "task.deadline_s"},
        {12, 8 * 86400, "task.deadline_s"},
        {13, 1, "task.update_elements"},
        {13, (uint64_t)1 << 30, "task.update_elements"},
        {14, 0, "task.example_cap"},
    };
    for (size_t i = 0; i < sizeof(top) / sizeof(top[0]); i++) {
        task_inner(&w);
        pb_u(&w, top[i].field, top[i].v);
        EXPECT_FIELD_ERR(parse_pb(PLAIT_MSG_TASK, &w, &m), top[i].name);
    }
    const double bad_d[] = {0.0, -1.0, NAN, INFINITY};
    for (size_t i = 0; i < 4; i++) {
        task_inner(&w);
        pb_double(&w, 7, bad_d[i]);
        EXPECT_FIELD_ERR(parse_pb(PLAIT_MSG_TASK, &w, &m), "task.clip_norm");
        task_inner(&w);
        pb_double(&w, 9, bad_d[i]);
        EXPECT_FIELD_ERR(parse_pb(PLAIT_MSG_TASK, &w, &m), "task.quant_range");
    }
    task_inner(&w);
    pb_bytes(&w, 4, k_blob, 33);
    EXPECT_FIELD_ERR(parse_pb(PLAIT_MSG_TASK, &w, &m), "task.adapter_sha256");

    /* submessages merge: override one field of lora / train / dp */
    struct {
        unsigned outer, field;
        uint64_t v;
        const char *name;
    } subs[] = {
        {5, 1, 0, "task.lora.rank"},
        {5, 1, 1025, "task.lora.rank"},
        {5, 3, 0, "task.lora.targets"},
        {5, 3, 1u << 7, "task.lora.targets"},
        {5, 4, 3, "task.lora.mode"},
        {6, 1, 0, "task.train.local_steps"},
        {6, 2, 4097, "task.train.batch"},
        {6, 3, 0, "task.train.seq_len"},
        {11, 1, 9, "task.dp.mode"},
        {11, 1, 0, "task.dp.noise_multiplier"}, /* NONE with z = 0.8 */
    };
    for (size_t i = 0; i < sizeof(subs) / sizeof(subs[0]); i++) {
        task_inner(&w);
        sub.n = 0;
        pb_u(&sub, subs[i].field, subs[i].v);
        pb_sub(&w, subs[i].outer, &sub);
        int rc = parse_pb(PLAIT_MSG_TASK, &w, &m);
        /* protobuf-c may itself refuse an unknown value of a closed enum */
        if (strstr(subs[i].name, "mode") && rc == PLAIT_EPROTO &&
            strstr(plait_errmsg(), "undecodable"))
            continue;
        EXPECT_FIELD_ERR(rc, subs[i].name);
    }
    task_inner(&w);
    sub.n = 0;
    pb_double(&sub, 4, 2.0);
    pb_sub(&w, 6, &sub);
    EXPECT_FIELD_ERR(parse_pb(PLAIT_MSG_TASK, &w, &m), "task.train.lr");
    task_inner(&w);
    sub.n = 0;
    pb_tag(&sub, 2, 5); /* alpha: float NaN */
    pb_byte(&sub, 0), pb_byte(&sub, 0), pb_byte(&sub, 0xc0), pb_byte(&sub, 0x7f);
    pb_sub(&w, 5, &sub);
    EXPECT_FIELD_ERR(parse_pb(PLAIT_MSG_TASK, &w, &m), "task.lora.alpha");

    /* a task without its submessages */
    w.n = 0;
    pb_u(&w, 1, 1);
    pb_u(&w, 2, 1);
    pb_u(&w, 3, 1);
    pb_bytes(&w, 4, k_sha, 32);
    EXPECT_FIELD_ERR(parse_pb(PLAIT_MSG_TASK, &w, &m), "task.lora");
}
END_TEST

/* Task.kind = EVALUATE: round trip, absent kind is TRAIN, hostile loss bounds and shapes. */
static void sample_eval_task(plait_msg_t *m)
{
    sample_task(m);
    m->u.task.kind = PLAIT_TASK_EVALUATE;
    m->u.task.eval_loss_max = 8.0;
    m->u.task.update_elements = PLAIT_WIRE_EVAL_WORDS;
}

START_TEST(test_task_evaluate)
{
    fill_consts();
    plait_msg_t m, back;
    uint8_t *buf = NULL;
    size_t len = 0;
    sample_eval_task(&m);
    ck_assert_int_eq(plait_wire_encode_alloc(&m, NULL, &buf, &len), 0);
    size_t used = 0;
    ck_assert_int_eq(plait_wire_parse(buf, len, NULL, 0, &back, &used), 0);
    ck_assert_uint_eq(used, len);
    ck_assert_int_eq(back.u.task.kind, PLAIT_TASK_EVALUATE);
    ck_assert(back.u.task.eval_loss_max == 8.0);
    ck_assert_uint_eq(back.u.task.update_elements, 2);
    plait_msg_free(&back);
    free(buf);

    /* a training task carries neither field: its bytes are what an old device knows */
    pbw_t w;
    task_inner(&w);
    ck_assert_int_eq(parse_pb(PLAIT_MSG_TASK, &w, &back), 0);
    ck_assert_int_eq(back.u.task.kind, PLAIT_TASK_TRAIN);
    ck_assert(back.u.task.eval_loss_max == 0.0);
    plait_msg_free(&back);
    task_inner(&w);
    pb_double(&w, 25, 4.0); /* a loss clip on a training task */
    EXPECT_FIELD_ERR(parse_pb(PLAIT_MSG_TASK, &w, &back), "task.eval_loss_max");
    task_inner(&w);
    pb_u(&w, 24, 1); /* EVALUATE without L */
    EXPECT_FIELD_ERR(parse_pb(PLAIT_MSG_TASK, &w, &back), "task.eval_loss_max");
    const double bad[] = {0.0, -1.0, NAN, INFINITY, 1000.5, 1e300};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        task_inner(&w);
        pb_u(&w, 13, 2);
        pb_u(&w, 24, 1);
        pb_double(&w, 25, bad[i]);
        EXPECT_FIELD_ERR(parse_pb(PLAIT_MSG_TASK, &w, &back), "task.eval_loss_max");
    }
    task_inner(&w); /* 65537 update words: not the two metric words */
    pb_u(&w, 24, 1);
    pb_double(&w, 25, 4.0);
    EXPECT_FIELD_ERR(parse_pb(PLAIT_MSG_TASK, &w, &back), "task.update_elements");
    task_inner(&w);
    pb_u(&w, 13, 2);
    pb_u(&w, 24, 1);
    pb_double(&w, 25, 4.0);
    ck_assert_int_eq(parse_pb(PLAIT_MSG_TASK, &w, &back), 0);
    plait_msg_free(&back);
    pb_u(&w, 24, 7); /* an unknown kind */
    int rc = parse_pb(PLAIT_MSG_TASK, &w, &back);
    ck_assert_int_eq(rc, PLAIT_EPROTO);

    /* the encoder refuses what the decoder would */
    sample_eval_task(&m);
    m.u.task.clip_bit = 1;
    ck_assert_int_eq(plait_wire_encode_alloc(&m, NULL, &buf, &len), PLAIT_EPROTO);
    ck_assert_ptr_nonnull(strstr(plait_errmsg(), "task.update_elements")); /* the clip bit's word count first */
    m.u.task.update_elements = 3;
    ck_assert_int_eq(plait_wire_encode_alloc(&m, NULL, &buf, &len), PLAIT_EPROTO);
    ck_assert_ptr_nonnull(strstr(plait_errmsg(), "task.update_elements"));
    sample_eval_task(&m);
    m.u.task.eval_loss_max = NAN;
    ck_assert_int_eq(plait_wire_encode_alloc(&m, NULL, &buf, &len), PLAIT_EPROTO);
    sample_task(&m);
    m.u.task.eval_loss_max = 3.0;
    ck_assert_int_eq(plait_wire_encode_alloc(&m, NULL, &buf, &len), PLAIT_EPROTO);

    /* the fuzz corpus's evaluation frames: one valid, one with a NaN loss clip */
    static const char *const seeds[2] = {"valid_task_evaluate", "bad_task_evaluate_nan"};
    for (int i = 0; i < 2; i++) {
        char path[1024];
        snprintf(path, sizeof(path), "%s/fuzz/corpus/frame/%s", PLAIT_TEST_SOURCE_DIR, seeds[i]);
        size_t n = 0;
        uint8_t *seed = tu_read_file(path, &n);
        ck_assert_ptr_nonnull(seed);
        rc = plait_wire_parse(seed, n, NULL, 0, &back, &used);
        if (i == 0) {
            ck_assert_int_eq(rc, 0);
            ck_assert_int_eq(back.u.task.kind, PLAIT_TASK_EVALUATE);
            ck_assert(back.u.task.eval_loss_max == 8.0);
            plait_msg_free(&back);
        } else {
            EXPECT_FIELD_ERR(rc, "task.eval_loss_max");
        }
        free(seed);
    }
}
END_TEST

START_TEST(test_decode_chunk_fields)
{
    fill_consts();
    pbw_t w;
    plait_msg_t m;

    /* words sent unpacked (one fixed32 field each) are accepted too */
    w.n = 0;
    pb_u(&w, 1, 9);
    pb_u(&w, 2, 0);
    pb_u(&w, 3, 0);
    pb_u(&w, 4, 3);
    for (uint32_t i = 0; i < 3; i++)
        pb_fixed32(&w, 5, 0xdead0000u + i);
    pb_u(&w, 6, 1);
    ck_assert_int_eq(parse_pb(PLAIT_MSG_UPDATE_CHUNK, &w, &m), 0);
    ck_assert_uint_eq(m.u.update_chunk.n_words, 3);
    ck_assert_uint_eq(m.u.update_chunk.words[2], 0xdead0002u);
    plait_msg_free(&m);

    struct {
        uint64_t round, index, offset, total;
        size_t nw;
        int has_ex;
        uint64_t ex;
        const char *name;
    } uc[] = {
        {0, 0, 0, 3, 3, 1, 1, "update_chunk.round_id"},
        {1, 0, 0, 0, 3, 1, 1, "update_chunk.total_elements"},
        {1, 0, 0, ((uint64_t)1 << 26) + 2, 3, 1, 1, "update_chunk.total_elements"},
        {1, 0, 0, 3, 0, 1, 1, "update_chunk.words"},
        {1, 0, 1, 3, 3, 1, 1, "update_chunk.offset"},
        {1, 1, UINT64_MAX, 3, 3, 0, 0, "update_chunk.offset"},
        {1, 0, 1, 4, 3, 1, 1, "update_chunk.chunk_index"},
        {1, 1, 0, 4, 3, 0, 0, "update_chunk.chunk_index"},
        {1, 5, 2, 8, 3, 0, 0, "update_chunk.chunk_index"},
    };
    for (size_t i = 0; i < sizeof(uc) / sizeof(uc[0]); i++) {
        w.n = 0;
        pb_u(&w, 1, uc[i].round);
        pb_u(&w, 2, uc[i].index);
        pb_u(&w, 3, uc[i].offset);
        pb_u(&w, 4, uc[i].total);
        if (uc[i].nw) {
            pb_tag(&w, 5, 2);
            pb_varint(&w, uc[i].nw * 4);
            for (size_t k = 0; k < uc[i].nw * 4; k++)
                pb_byte(&w, (uint8_t)k);
        }
        if (uc[i].has_ex) pb_u(&w, 6, uc[i].ex);
        EXPECT_FIELD_ERR(parse_pb(PLAIT_MSG_UPDATE_CHUNK, &w, &m), uc[i].name);
    }
    /* a packed run whose length is not a multiple of 4 is undecodable */
    w.n = 0;
    pb_u(&w, 1, 1);
    pb_bytes(&w, 5, "abcde", 5);
    ck_assert_int_eq(parse_pb(PLAIT_MSG_UPDATE_CHUNK, &w, &m), PLAIT_EPROTO);

    struct {
        uint64_t offset, total;
        size_t len;
        size_t sha;
        const char *name;
    } ac[] = {
        {0, 0, 10, 0, "adapter_chunk.total_len"},
        {0, ((uint64_t)256 << 20) + 1, 10, 0, "adapter_chunk.total_len"},
        {0, 10, 0, 0, "adapter_chunk.data"},
        {5, 10, 10, 32, "adapter_chunk.offset"},
        {UINT64_MAX, 10, 10, 32, "adapter_chunk.offset"},
        {0, 10, 10, 0, "adapter_chunk.sha256"},
        {0, 20, 10, 32, "adapter_chunk.sha256"},
        {10, 20, 10, 31, "adapter_chunk.sha256"},
    };
    for (size_t i = 0; i < sizeof(ac) / sizeof(ac[0]); i++) {
        w.n = 0;
        pb_u(&w, 1, 7);
        pb_u(&w, 2, ac[i].offset);
        pb_u(&w, 3, ac[i].total);
        pb_bytes(&w, 4, k_blob, ac[i].len);
        if (ac[i].sha) pb_bytes(&w, 5, k_sha, ac[i].sha);
        EXPECT_FIELD_ERR(parse_pb(PLAIT_MSG_ADAPTER_CHUNK, &w, &m), ac[i].name);
    }
}
END_TEST

START_TEST(test_decode_small_messages)
{
    pbw_t w;
    plait_msg_t m;
    w.n = 0;
    EXPECT_FIELD_ERR(parse_pb(PLAIT_MSG_PING, &w, &m), "ping.nonce");
    EXPECT_FIELD_ERR(parse_pb(PLAIT_MSG_PONG, &w, &m), "pong.nonce");
    EXPECT_FIELD_ERR(parse_pb(PLAIT_MSG_ACK, &w, &m), "ack.round_id");
    EXPECT_FIELD_ERR(parse_pb(PLAIT_MSG_ERROR, &w, &m), "error.code");
    EXPECT_FIELD_ERR(parse_pb(PLAIT_MSG_COME_BACK_LATER, &w, &m), "come_back_later.retry_ms");
    EXPECT_FIELD_ERR(parse_pb(PLAIT_MSG_ADAPTER_REQUEST, &w, &m), "adapter_request.round_id");

    pb_u(&w, 1, 0);
    pb_u(&w, 2, 0);
    EXPECT_FIELD_ERR(parse_pb(PLAIT_MSG_COME_BACK_LATER, &w, &m), "come_back_later.retry_ms");
    w.n = 0;
    pb_u(&w, 1, 25u * 3600u * 1000u);
    pb_u(&w, 2, 0);
    EXPECT_FIELD_ERR(parse_pb(PLAIT_MSG_COME_BACK_LATER, &w, &m), "come_back_later.retry_ms");
    w.n = 0;
    pb_u(&w, 1, 1000);
    pb_u(&w, 2, PLAIT_RETRY_REASON_MAX + 1);
    ck_assert_int_eq(parse_pb(PLAIT_MSG_COME_BACK_LATER, &w, &m), PLAIT_EPROTO);

    w.n = 0;
    pb_u(&w, 1, 5);
    pb_u(&w, 2, 2);
    pb_u(&w, 3, 3);
    ck_assert_int_eq(parse_pb(PLAIT_MSG_ACK, &w, &m), PLAIT_EPROTO); /* kind 2 unknown */

    w.n = 0;
    pb_u(&w, 1, 5);
    pb_u(&w, 2, 0);
    pb_u(&w, 3, (uint64_t)256 << 20);
    EXPECT_FIELD_ERR(parse_pb(PLAIT_MSG_ADAPTER_REQUEST, &w, &m), "adapter_request.offset");

    /* error: code is sint32 (zigzag): 5 encodes -3 (EPROTO), 6 encodes 3 */
    w.n = 0;
    pb_u(&w, 1, 5);
    ck_assert_int_eq(parse_pb(PLAIT_MSG_ERROR, &w, &m), 0);
    ck_assert_int_eq(m.u.error.code, PLAIT_EPROTO);
    ck_assert_str_eq(m.u.error.message, "");
    plait_msg_free(&m);
    w.n = 0;
    pb_u(&w, 1, 6);
    EXPECT_FIELD_ERR(parse_pb(PLAIT_MSG_ERROR, &w, &m), "error.code");
    char msg[PLAIT_WIRE_MAX_STRING + 1];
    memset(msg, 'e', sizeof(msg));
    w.n = 0;
    pb_u(&w, 1, 5);
    pb_bytes(&w, 2, msg, PLAIT_WIRE_MAX_STRING);
    ck_assert_int_eq(parse_pb(PLAIT_MSG_ERROR, &w, &m), 0);
    ck_assert_uint_eq(strlen(m.u.error.message), PLAIT_WIRE_MAX_STRING);
    plait_msg_free(&m);
    w.n = 0;
    pb_u(&w, 1, 5);
    pb_bytes(&w, 2, msg, PLAIT_WIRE_MAX_STRING + 1);
    EXPECT_FIELD_ERR(parse_pb(PLAIT_MSG_ERROR, &w, &m), "error.message");
    w.n = 0;
    pb_u(&w, 1, 5);
    pb_bytes(&w, 2, "a\x1b[31m", 6);
    EXPECT_FIELD_ERR(parse_pb(PLAIT_MSG_ERROR, &w, &m), "error.message");
}
END_TEST

/* Many tiny repeated fields: unpacking is bounded and still works. */
START_TEST(test_repeated_fields_bounded)
{
    /* 200 000 repeated nonces in one ping: 600 KB of 3-byte fields. */
    size_t reps = 200000, n = 0;
    uint8_t *buf = malloc(6 + 8 + reps * 3);
    uint8_t *p = buf + 6;
    size_t body = reps * 3;
    p[n++] = (PLAIT_MSG_PING << 3) | 2;
    for (size_t v = body;; v >>= 7) {
        p[n++] = (uint8_t)(v >= 0x80 ? (v & 0x7f) | 0x80 : v);
        if (v < 0x80) break;
    }
    for (size_t i = 0; i < reps; i++) {
        p[n++] = 0x08;
        p[n++] = 0x81;
        p[n++] = (uint8_t)(1 + i % 100);
    }
    put_header(buf, (uint32_t)(n + 2), PLAIT_WIRE_VERSION, PLAIT_MSG_PING);
    plait_msg_t m;
    size_t used = 0;
    int rc = plait_wire_parse(buf, n + 6, NULL, 0, &m, &used);
    /* Either decoded (the last value wins) or refused for the allocation cap. */
    ck_assert_msg(rc == 0 || rc == PLAIT_ETOOBIG, "%s", plait_err_name(rc));
    if (rc == 0) {
        ck_assert_uint_eq(m.u.ping.nonce, 1 + (1 + (reps - 1) % 100) * 128);
        plait_msg_free(&m);
    }
    free(buf);
}
END_TEST

/* ---- validation (encoder side) ---------------------------------------------- */

START_TEST(test_encode_refuses_invalid)
{
    plait_msg_t m;
    size_t n = 0;
    uint8_t out[512];
#define REFUSE(mutate, field)                                                                      \
    do {                                                                                           \
        mutate;                                                                                    \
        EXPECT_FIELD_ERR(plait_wire_encode(&m, NULL, out, sizeof(out), &n), field);                \
        ck_assert_uint_eq(n, 0);                                                                   \
    } while (0)
    REFUSE((sample(0, &m), m.u.hello.client_version[0] = 0), "hello.client_version");
    REFUSE((sample(0, &m), m.u.hello.client_version[1] = '\t'), "hello.client_version");
    REFUSE((sample(0, &m), memset(m.u.hello.client_version, 'a', sizeof(m.u.hello.client_version))),
           "hello.client_version");
    REFUSE((sample(2, &m), m.u.task.round_id = 0), "task.round_id");
    REFUSE((sample(2, &m), m.u.task.lora.alpha = -1.0f), "task.lora.alpha");
    REFUSE((sample(2, &m), m.u.task.lora.mode = (plait_lora_mode_t)3), "task.lora.mode");
    REFUSE((sample(2, &m), m.u.task.train.lr = 0), "task.train.lr");
    REFUSE((sample(2, &m), m.u.task.train.prox_mu = -0.5), "task.train.prox_mu");
    REFUSE((sample(2, &m), m.u.task.train.prox_mu = 1e5), "task.train.prox_mu");
    REFUSE((sample(2, &m), m.u.task.train.batch = 0), "task.train.batch");
    REFUSE((sample(2, &m), m.u.task.train.local_steps = PLAIT_WIRE_MAX_LOCAL_STEPS + 1),
           "task.train.local_steps");
    REFUSE((sample(2, &m), m.u.task.train.seq_len = PLAIT_WIRE_MAX_SEQ_LEN + 1),
           "task.train.seq_len");
    REFUSE((sample(2, &m), m.u.task.secure_agg = 2), "task.secure_agg");
    REFUSE((sample(2, &m), m.u.task.dp.mode = PLAIT_DP_LOCAL, m.u.task.dp.noise_multiplier = 0),
           "task.dp.noise");
    REFUSE((sample(2, &m), m.u.task.dp.mode = PLAIT_DP_CENTRAL, m.u.task.dp.noise_multiplier = -1),
           "task.dp.noise");
    REFUSE((sample(2, &m), m.u.task.dp.mode = (plait_dp_mode_t)4), "task.dp.mode");
    REFUSE((sample(3, &m), m.u.come_back_later.reason = (plait_retry_reason_t)(PLAIT_RETRY_REASON_MAX + 1)),
           "come_back_later.reason");
    REFUSE((sample(2, &m), m.u.task.max_chunk_bytes = 3), "task.max_chunk_bytes");
    REFUSE((sample(4, &m), m.u.adapter_request.round_id = 0), "adapter_request.round_id");
    REFUSE((sample(5, &m), m.u.adapter_chunk.has_sha256 = 1), "adapter_chunk.sha256");
    REFUSE((sample(6, &m), m.u.adapter_chunk.has_sha256 = 0), "adapter_chunk.sha256");
    REFUSE((sample(5, &m), m.u.adapter_chunk.data = NULL), "adapter_chunk.data");
    REFUSE((sample(7, &m), m.u.update_chunk.words = NULL), "update_chunk.words");
    REFUSE((sample(14, &m), m.u.decline.round_id = 0), "decline.round_id");
    REFUSE((sample(14, &m), m.u.decline.code = (plait_decline_code_t)0), "decline.code");
    REFUSE((sample(14, &m), m.u.decline.code = (plait_decline_code_t)(PLAIT_DECLINE_CODE_MAX + 1)),
           "decline.code");
    REFUSE((sample(9, &m), m.u.ack.kind = (plait_ack_kind_t)0), "ack.kind");
    REFUSE((sample(9, &m), m.u.ack.round_id = 0), "ack.round_id");
    REFUSE((sample(10, &m), m.u.error.code = 0), "error.code");
    REFUSE((sample(10, &m), m.u.error.code = 3), "error.code");
    REFUSE((sample(10, &m), m.u.error.message[0] = '\x7f'), "error.message");
    /* secure aggregation */
    REFUSE((sample(3, &m), m.u.come_back_later.reason = (plait_retry_reason_t)11),
           "come_back_later.reason");
    REFUSE((sample(15, &m), m.u.secagg_advertise.round_id = 0), "secagg_advertise.round_id");
    REFUSE((sample(15, &m), m.u.secagg_advertise.sig_len = 0), "secagg_advertise.signature");
    REFUSE((sample(15, &m), m.u.secagg_advertise.sig_len = PLAIT_WIRE_SECAGG_MAX_SIG + 1),
           "secagg_advertise.signature");
    REFUSE((sample(2, &m), m.u.task.has_secagg = 0), "task.secagg");
    REFUSE((sample(2, &m), m.u.task.secure_agg = 0), "task.secagg");
    REFUSE((sample(2, &m), m.u.task.secagg.n = 1), "task.secagg.n");
    REFUSE((sample(2, &m), m.u.task.secagg.index = 0), "task.secagg.index");
    REFUSE((sample(2, &m), m.u.task.secagg.index = 14), "task.secagg.index");
    REFUSE((sample(2, &m), m.u.task.secagg.k = 13), "task.secagg.k");
    REFUSE((sample(2, &m), m.u.task.secagg.t = 13), "task.secagg.t");
    REFUSE((sample(2, &m), m.u.task.secagg.t = 0), "task.secagg.t");
    REFUSE((sample(2, &m), m.u.task.secagg.bits = 15), "task.secagg.bits");
    REFUSE((sample(2, &m), m.u.task.secagg.bits = 33), "task.secagg.bits");
    REFUSE((sample(15, &m), m.u.secagg_advertise.cert_len = 0), "secagg_advertise.device_cert");
    REFUSE((sample(16, &m), m.u.secagg_roster.round_id = 0), "secagg_roster.round_id");
    REFUSE((sample(16, &m), k_peers[1].index = 1), "secagg_roster.peers[1].index");
    REFUSE((sample(16, &m), k_peers[2].index = 4), "secagg_roster.peers[2].index");
    REFUSE((sample(16, &m), k_peers[0].index = 0), "secagg_roster.peers[0].index");
    REFUSE((sample(16, &m), k_peers[0].cert_len = 0), "secagg_roster.peers[0].device_cert");
    REFUSE((sample(16, &m), k_peers[0].sig_len = 0), "secagg_roster.peers[].signature");
    REFUSE((sample(17, &m), m.u.secagg_shares.n_shares = 0), "secagg_shares.shares");
    REFUSE((sample(17, &m), k_shares[2].peer = 3), "secagg_shares.shares[2].peer");
    REFUSE((sample(17, &m), k_shares[3].peer = PLAIT_WIRE_SECAGG_MAX_COHORT + 1),
           "secagg_shares.shares[3].peer");
    REFUSE((sample(17, &m), k_shares[0].len = PLAIT_WIRE_SECAGG_MAX_SHARE + 1),
           "secagg_shares.shares[0].data");
    REFUSE((sample(18, &m), m.u.secagg_shares.round_id = 0), "secagg_relay.round_id");
    REFUSE((sample(19, &m), m.u.secagg_masked_input.bits = 33), "secagg_masked_input.bits");
    REFUSE((sample(19, &m), m.u.secagg_masked_input.len = 39), "secagg_masked_input.data");
    REFUSE((sample(19, &m), m.u.secagg_masked_input.count = 15, m.u.secagg_masked_input.len = 38),
           "secagg_masked_input.count");
    REFUSE((sample(19, &m), m.u.secagg_masked_input.count = 24, m.u.secagg_masked_input.len = 60),
           "secagg_masked_input.count");
    REFUSE((sample(19, &m), m.u.secagg_masked_input.chunk_index = 1),
           "secagg_masked_input.chunk_index");
    REFUSE((sample(20, &m), m.u.secagg_masked_input.offset = 15), "secagg_masked_input.offset");
    REFUSE((sample(20, &m), m.u.secagg_masked_input.total_elements = 0),
           "secagg_masked_input.total_elements");
    REFUSE((sample(21, &m), m.u.secagg_unmask_request.n_survivors = 0),
           "secagg_unmask_request.survivors");
    static const uint32_t descending[] = {5, 2}, zero[] = {0};
    REFUSE((sample(21, &m), m.u.secagg_unmask_request.survivors = zero,
            m.u.secagg_unmask_request.n_survivors = 1),
           "secagg_unmask_request.survivors[0]");
    REFUSE((sample(21, &m), m.u.secagg_unmask_request.survivors = descending),
           "secagg_unmask_request.survivors[1]");
    REFUSE((sample(21, &m), m.u.secagg_unmask_request.dropouts = descending),
           "secagg_unmask_request.dropouts[1]");
    REFUSE((sample(22, &m), m.u.secagg_unmask_response.round_id = 0),
           "secagg_unmask_response.round_id");
    REFUSE((sample(22, &m), m.u.secagg_unmask_response.n_key = PLAIT_WIRE_SECAGG_MAX_PEERS + 1),
           "secagg_unmask_response.key_shares");
#undef REFUSE
    /* a lower max_string applies to errors */
    plait_wire_limits_t lim;
    plait_wire_limits_default(&lim);
    lim.max_string = 4;
    sample(10, &m);
    EXPECT_FIELD_ERR(plait_wire_encode(&m, &lim, out, sizeof(out), &n), "error.message");
    /* unknown type and NULLs */
    plait_msg_init(&m, (plait_msg_type_t)0);
    ck_assert_int_eq(plait_msg_validate(&m, NULL), PLAIT_EINVAL);
    ck_assert_int_eq(plait_msg_validate(NULL, NULL), PLAIT_EINVAL);
    ck_assert_int_eq(plait_wire_encode(NULL, NULL, out, sizeof(out), &n), PLAIT_EINVAL);
    sample(12, &m);
    ck_assert_int_eq(plait_wire_encode(&m, NULL, NULL, 10, &n), PLAIT_EINVAL);
    ck_assert_int_eq(plait_wire_encode(&m, NULL, out, sizeof(out), NULL), PLAIT_EINVAL);
}
END_TEST

/* ---- chunked transfers -------------------------------------------------------- */

/* Encode and decode m (as the peer would see it), into d. */
static void over_the_wire(const plait_msg_t *m, const plait_wire_limits_t *lim, plait_msg_t *d)
{
    uint8_t *buf = NULL;
    size_t len = 0, used = 0;
    ck_assert_msg(plait_wire_encode_alloc(m, lim, &buf, &len) == 0, "%s", plait_errmsg());
    ck_assert_int_eq(plait_wire_parse(buf, len, lim, 0, d, &used), 0);
    free(buf);
}

START_TEST(test_update_transfer)
{
    plait_wire_limits_t lim;
    plait_wire_limits_default(&lim);
    lim.max_chunk_bytes = 64; /* 16 words a chunk */
    lim.max_frame = 64 + PLAIT_WIRE_CHUNK_OVERHEAD;
    lim.max_preauth_frame = lim.max_frame;
    ck_assert_int_eq(plait_wire_limits_validate(&lim), 0);
    const size_t total = 1001;
    uint32_t *src = malloc(total * 4), *dst = calloc(total, 4);
    for (size_t i = 0; i < total; i++)
        src[i] = (uint32_t)(i * 2654435761u);

    plait_wire_xfer_t tx, rx;
    plait_wire_xfer_init(&tx, 42, total, 0);
    plait_wire_xfer_init(&rx, 42, total, 0);
    plait_msg_t m, d;
    int rc, done = 0, chunks = 0;
    while ((rc = plait_wire_update_tx_next(&tx, &lim, src, &m)) == 1) {
        ck_assert_int_eq(done, 0);
        over_the_wire(&m, &lim, &d);
        if (chunks == 3) {
            /* out of order, duplicate, wrong round, wrong total: refused, rx unchanged */
            plait_msg_update_chunk_t bad = d.u.update_chunk;
            bad.offset += 16, bad.chunk_index++;
            ck_assert_int_eq(plait_wire_update_rx_add(&rx, &bad, dst), PLAIT_EMISMATCH);
            bad = d.u.update_chunk;
            bad.offset -= 16, bad.chunk_index--;
            ck_assert_int_eq(plait_wire_update_rx_add(&rx, &bad, dst), PLAIT_EMISMATCH);
            bad = d.u.update_chunk;
            bad.offset += 16; /* index right, offset wrong */
            ck_assert_int_eq(plait_wire_update_rx_add(&rx, &bad, dst), PLAIT_EMISMATCH);
            bad = d.u.update_chunk;
            bad.n_words = total; /* runs past the end */
            ck_assert_int_eq(plait_wire_update_rx_add(&rx, &bad, dst), PLAIT_EMISMATCH);
            bad = d.u.update_chunk;
            bad.round_id = 41;
            ck_assert_int_eq(plait_wire_update_rx_add(&rx, &bad, dst), PLAIT_ESTALE);
            bad = d.u.update_chunk;
            bad.total_elements = total + 1;
            ck_assert_int_eq(plait_wire_update_rx_add(&rx, &bad, dst), PLAIT_EMISMATCH);
            bad = d.u.update_chunk;
            bad.chunk_index++;
            ck_assert_int_eq(plait_wire_update_rx_add(&rx, &bad, dst), PLAIT_EMISMATCH);
        }
        rc = plait_wire_update_rx_add(&rx, &d.u.update_chunk, dst);
        ck_assert_int_ge(rc, 0);
        done = rc;
        chunks++;
        if (done) {
            /* anything after completion is refused */
            ck_assert_int_eq(plait_wire_update_rx_add(&rx, &d.u.update_chunk, dst),
                             PLAIT_EMISMATCH);
        }
        plait_msg_free(&d);
    }
    ck_assert_int_eq(rc, 0);
    ck_assert_int_eq(done, 1);
    ck_assert_int_eq(chunks, (int)((total + 15) / 16));
    ck_assert_mem_eq(src, dst, total * 4);
    ck_assert_int_eq(plait_wire_update_tx_next(&tx, &lim, src, &m), 0); /* stays done */

    /* With room for more, chunk 0 is a small lead chunk (its own record), then full chunks. */
    {
        plait_wire_limits_t big;
        plait_wire_limits_default(&big);
        plait_wire_xfer_t t2;
        plait_wire_xfer_init(&t2, 42, total, 0);
        ck_assert_int_eq(plait_wire_update_tx_next(&t2, &big, src, &m), 1);
        ck_assert_uint_eq(m.u.update_chunk.n_words, PLAIT_WIRE_UPDATE_LEAD_WORDS);
        ck_assert_int_eq(plait_wire_update_tx_next(&t2, &big, src, &m), 1);
        ck_assert_uint_eq(m.u.update_chunk.offset, PLAIT_WIRE_UPDATE_LEAD_WORDS);
        ck_assert_uint_eq(m.u.update_chunk.n_words, total - PLAIT_WIRE_UPDATE_LEAD_WORDS);
        uint8_t pk[2048];
        plait_wire_xfer_init(&t2, 42, total, 0);
        ck_assert_int_eq(plait_wire_update_tx_next_packed(&t2, &big, src, 32, pk, sizeof(pk), &m), 1);
        ck_assert_uint_eq(m.u.update_chunk.n_words, PLAIT_WIRE_UPDATE_LEAD_WORDS);
        ck_assert_uint_eq(m.u.update_chunk.packed_len, PLAIT_WIRE_UPDATE_LEAD_WORDS * 4);
    }

    /* bad sender arguments */
    plait_wire_xfer_init(&tx, 42, total, 0);
    ck_assert_int_eq(plait_wire_update_tx_next(&tx, &lim, NULL, &m), PLAIT_EINVAL);
    plait_wire_xfer_init(&tx, 42, 0, 0);
    ck_assert_int_eq(plait_wire_update_tx_next(&tx, &lim, src, &m), PLAIT_EINVAL);
    plait_wire_xfer_init(&tx, 42, 10, 11);
    ck_assert_int_eq(plait_wire_update_tx_next(&tx, &lim, src, &m), PLAIT_EINVAL);
    free(src);
    free(dst);
}
END_TEST

START_TEST(test_masked_transfer)
{
    /* 21 elements of 20 bits: 53 packed bytes; a 20-byte chunk limit gives chunks of 8, 8, 5. */
    enum { TOTAL = 21, BITS = 20 };
    uint8_t packed[64], dst[64];
    ck_assert_uint_eq(plait_wire_packed_len(TOTAL, BITS), 53);
    ck_assert_uint_eq(plait_wire_packed_len(8, 32), 32);
    for (size_t i = 0; i < sizeof(packed); i++)
        packed[i] = (uint8_t)(i * 13 + 1);
    plait_wire_limits_t lim;
    plait_wire_limits_default(&lim);
    lim.max_chunk_bytes = 20;
    lim.max_frame = lim.max_chunk_bytes + PLAIT_WIRE_CHUNK_OVERHEAD;
    lim.max_preauth_frame = 64;
    plait_wire_xfer_t tx, rx;
    plait_wire_xfer_init(&tx, 42, TOTAL, 0);
    plait_wire_xfer_init(&rx, 42, TOTAL, 0);
    memset(dst, 0, sizeof(dst));
    plait_msg_t m;
    int rc, chunks = 0, done = 0;
    static const uint64_t counts[3] = {8, 8, 5};
    while ((rc = plait_wire_masked_tx_next(&tx, &lim, packed, BITS, &m)) == 1) {
        ck_assert_int_lt(chunks, 3);
        ck_assert_uint_eq(m.u.secagg_masked_input.count, counts[chunks]);
        plait_msg_t d;
        over_the_wire(&m, &lim, &d);
        if (chunks == 1) {
            /* the wrong round, the wrong ring, and a chunk out of order are refused */
            plait_msg_secagg_masked_input_t bad = d.u.secagg_masked_input;
            bad.round_id = 41;
            ck_assert_int_eq(plait_wire_masked_rx_add(&rx, &bad, BITS, dst), PLAIT_ESTALE);
            ck_assert_int_eq(plait_wire_masked_rx_add(&rx, &d.u.secagg_masked_input, BITS + 1, dst),
                             PLAIT_EMISMATCH);
            bad = d.u.secagg_masked_input;
            bad.chunk_index = 2;
            ck_assert_int_eq(plait_wire_masked_rx_add(&rx, &bad, BITS, dst), PLAIT_EMISMATCH);
        }
        done = plait_wire_masked_rx_add(&rx, &d.u.secagg_masked_input, BITS, dst);
        ck_assert_int_eq(done, chunks == 2 ? 1 : 0);
        if (chunks == 2) /* after completion nothing more is taken */
            ck_assert_int_eq(plait_wire_masked_rx_add(&rx, &d.u.secagg_masked_input, BITS, dst),
                             PLAIT_EMISMATCH);
        plait_msg_free(&d);
        chunks++;
    }
    ck_assert_int_eq(rc, 0);
    ck_assert_int_eq(chunks, 3);
    ck_assert_mem_eq(dst, packed, 53);
    /* a chunk limit below one group of 8 elements cannot carry a masked update */
    lim.max_chunk_bytes = 19;
    plait_wire_xfer_init(&tx, 42, TOTAL, 0);
    ck_assert_int_eq(plait_wire_masked_tx_next(&tx, &lim, packed, 33, &m), PLAIT_EINVAL);
    lim.max_chunk_bytes = 8;
    lim.max_frame = lim.max_chunk_bytes + PLAIT_WIRE_CHUNK_OVERHEAD;
    ck_assert_int_eq(plait_wire_masked_tx_next(&tx, &lim, packed, BITS, &m), PLAIT_EINVAL);
}
END_TEST

/* Privacy (docs/privacy.md): a Decline is a round id and a code from the fixed list, byte for
 * byte; text in it is not decodable into anything; an old agent's num_examples (field 6 of
 * UpdateChunk) is dropped by the decoder and never re-encoded. */
START_TEST(test_decline_code_only)
{
    plait_msg_t m, d;
    sample(14, &m);
    uint8_t *buf = NULL;
    size_t len = 0;
    ck_assert_int_eq(plait_wire_encode_alloc(&m, NULL, &buf, &len), 0);
    const uint8_t want[] = {0, 0, 0, 9, PLAIT_WIRE_VERSION, PLAIT_MSG_DECLINE, /* header */
                            0xa2, 0x01, 4,                                     /* Envelope.decline */
                            0x08, 42,                                          /* round_id */
                            0x10, PLAIT_DECLINE_NOT_ELIGIBLE};                 /* code */
    ck_assert_uint_eq(len, sizeof(want));
    ck_assert_mem_eq(buf, want, sizeof(want));
    free(buf);
    /* extra text in a Decline (an unknown field 3) does not survive decoding */
    pbw_t w = {.n = 0};
    pb_u(&w, 1, 42);
    pb_u(&w, 2, PLAIT_DECLINE_POLICY);
    pb_bytes(&w, 3, "the training split holds 151 tokens", 35);
    ck_assert_int_eq(parse_pb(PLAIT_MSG_DECLINE, &w, &d), 0);
    ck_assert_int_eq(d.u.decline.code, PLAIT_DECLINE_POLICY);
    ck_assert_int_eq(plait_wire_encode_alloc(&d, NULL, &buf, &len), 0);
    ck_assert_uint_eq(len, sizeof(want));
    free(buf);
    plait_msg_free(&d);
    /* missing code, missing round */
    w.n = 0;
    pb_u(&w, 1, 42);
    EXPECT_FIELD_ERR(parse_pb(PLAIT_MSG_DECLINE, &w, &d), "decline.code");
    w.n = 0;
    pb_u(&w, 2, PLAIT_DECLINE_POLICY);
    EXPECT_FIELD_ERR(parse_pb(PLAIT_MSG_DECLINE, &w, &d), "decline.round_id");
    /* a legacy chunk 0 with num_examples = 250: accepted, the count is not kept */
    sample(7, &m);
    ck_assert_int_eq(plait_wire_encode_alloc(&m, NULL, &buf, &len), 0);
    w.n = 0;
    pb_u(&w, 1, 42);
    pb_u(&w, 2, 0);
    pb_u(&w, 3, 0);
    pb_u(&w, 4, 12);
    pb_tag(&w, 5, 2);
    pb_varint(&w, 24);
    for (int i = 0; i < 24; i++)
        pb_byte(&w, ((const uint8_t *)m.u.update_chunk.words)[i]);
    pb_u(&w, 6, 250);
    ck_assert_int_eq(parse_pb(PLAIT_MSG_UPDATE_CHUNK, &w, &d), 0);
    uint8_t *buf2 = NULL;
    size_t len2 = 0;
    ck_assert_int_eq(plait_wire_encode_alloc(&d, NULL, &buf2, &len2), 0);
    ck_assert_uint_eq(len2, len);
    ck_assert_mem_eq(buf2, buf, len);
    plait_msg_free(&d);
    free(buf);
    free(buf2);
}
END_TEST

START_TEST(test_adapter_transfer)
{
    fill_consts();
    plait_wire_limits_t lim;
    plait_wire_limits_default(&lim);
    lim.max_chunk_bytes = 100;
    lim.max_frame = 100 + PLAIT_WIRE_CHUNK_OVERHEAD;
    lim.max_preauth_frame = lim.max_frame;
    const size_t total = 1234, resume = 300;
    uint8_t *blob = malloc(total), *dst = calloc(total, 1);
    for (size_t i = 0; i < total; i++)
        blob[i] = (uint8_t)(i * 31 + 7);
    uint8_t other[32];
    memset(other, 0x55, sizeof(other));

    /* A download resumed at byte 300: the device already holds [0, 300). */
    memcpy(dst, blob, resume);
    plait_wire_xfer_t tx, rx;
    plait_wire_xfer_init(&tx, 7, total, resume);
    plait_wire_xfer_init(&rx, 7, total, resume);
    plait_msg_t m, d;
    int rc, done = 0, chunks = 0;
    while ((rc = plait_wire_adapter_tx_next(&tx, &lim, blob, k_sha, &m)) == 1) {
        over_the_wire(&m, &lim, &d);
        plait_msg_adapter_chunk_t c = d.u.adapter_chunk;
        ck_assert_int_eq(c.has_sha256, c.offset + c.len == total);
        if (c.has_sha256) {
            /* the hash of another adapter is refused */
            ck_assert_int_eq(plait_wire_adapter_rx_add(&rx, &c, other, dst), PLAIT_EMISMATCH);
        }
        plait_msg_adapter_chunk_t bad = c;
        bad.version = 8;
        ck_assert_int_eq(plait_wire_adapter_rx_add(&rx, &bad, k_sha, dst), PLAIT_EMISMATCH);
        bad = c;
        bad.total_len = total - 1;
        ck_assert_int_eq(plait_wire_adapter_rx_add(&rx, &bad, k_sha, dst), PLAIT_EMISMATCH);
        if (chunks > 0) {
            bad = c;
            bad.offset -= 100;
            ck_assert_int_eq(plait_wire_adapter_rx_add(&rx, &bad, k_sha, dst), PLAIT_EMISMATCH);
        }
        rc = plait_wire_adapter_rx_add(&rx, &c, k_sha, dst);
        ck_assert_int_ge(rc, 0);
        done = rc;
        chunks++;
        if (done) ck_assert_int_eq(plait_wire_adapter_rx_add(&rx, &c, k_sha, dst), PLAIT_EMISMATCH);
        plait_msg_free(&d);
    }
    ck_assert_int_eq(rc, 0);
    ck_assert_int_eq(done, 1);
    ck_assert_int_eq(chunks, (int)((total - resume + 99) / 100));
    ck_assert_mem_eq(blob, dst, total);
    plait_wire_xfer_init(&tx, 7, 0, 0);
    ck_assert_int_eq(plait_wire_adapter_tx_next(&tx, &lim, blob, k_sha, &m), PLAIT_EINVAL);
    free(blob);
    free(dst);
}
END_TEST

/* Task.max_chunk_bytes (field 23, issue #11): optional; it round-trips when
 * set, is absent (0) when not, and 1..3 is refused. */
START_TEST(test_task_max_chunk_bytes)
{
    uint32_t vals[] = {0, 4, 4096, 262144};
    for (size_t i = 0; i < sizeof(vals) / sizeof(vals[0]); i++) {
        plait_msg_t m, d;
        sample(2, &m);
        m.u.task.max_chunk_bytes = vals[i];
        uint8_t *buf = NULL;
        size_t len = 0, used = 0;
        ck_assert_int_eq(plait_wire_encode_alloc(&m, NULL, &buf, &len), 0);
        ck_assert_int_eq(plait_wire_parse(buf, len, NULL, 0, &d, &used), 0);
        ck_assert_uint_eq(d.u.task.max_chunk_bytes, vals[i]);
        plait_msg_free(&d);
        free(buf);
    }
}
END_TEST

/* ---- packed update chunks (Task.packed_update) ------------------------------------ */

/* The packed form round-trips at 8, 12, 16 and 32 bits: every chunk's bytes within
 * max_chunk_bytes, the chunks cut at max_chunk_bytes * 8 / bits values, the words
 * rebuilt exactly, and the frames a bits/32 fraction of the words form's. */
START_TEST(test_packed_update_transfer)
{
    plait_wire_limits_t lim;
    plait_wire_limits_default(&lim);
    lim.max_chunk_bytes = 64;
    lim.max_frame = 64 + PLAIT_WIRE_CHUNK_OVERHEAD;
    lim.max_preauth_frame = lim.max_frame;
    ck_assert_int_eq(plait_wire_limits_validate(&lim), 0);
    const size_t total = 1001;
    uint32_t *src = malloc(total * 4), *dst = malloc(total * 4);
    uint8_t buf[64];
    static const unsigned bitss[] = {8, 12, 16, 32};
    for (size_t b = 0; b < sizeof(bitss) / sizeof(bitss[0]); b++) {
        unsigned bits = bitss[b];
        uint32_t mask = bits == 32 ? 0xffffffffu : (1u << bits) - 1;
        for (size_t i = 0; i < total; i++)
            src[i] = (uint32_t)(i * 2654435761u) & mask;
        memset(dst, 0xa5, total * 4);
        plait_wire_xfer_t tx, rx;
        plait_wire_xfer_init(&tx, 42, total, 0);
        plait_wire_xfer_init(&rx, 42, total, 0);
        plait_msg_t m, d;
        int rc, done = 0, chunks = 0;
        size_t per = 64 * 8 / bits, frames = 0;
        while ((rc = plait_wire_update_tx_next_packed(&tx, &lim, src, bits, buf, sizeof(buf), &m)) == 1) {
            ck_assert_ptr_null(m.u.update_chunk.words);
            ck_assert_uint_le(m.u.update_chunk.packed_len, 64);
            size_t len = 0;
            ck_assert_int_eq(plait_wire_encoded_size(&m, &lim, &len), 0);
            frames += len;
            over_the_wire(&m, &lim, &d);
            assert_msg_eq(&m, &d);
            ck_assert_uint_eq(d.u.update_chunk.n_words, total - (size_t)m.u.update_chunk.offset < per
                                                             ? total - (size_t)m.u.update_chunk.offset
                                                             : per);
            rc = plait_wire_update_rx_add(&rx, &d.u.update_chunk, dst);
            ck_assert_int_ge(rc, 0);
            done = rc;
            chunks++;
            plait_msg_free(&d);
        }
        ck_assert_int_eq(rc, 0);
        ck_assert_int_eq(done, 1);
        ck_assert_int_eq(chunks, (int)((total + per - 1) / per));
        ck_assert_mem_eq(src, dst, total * 4);
        /* the same update as words: 16 words a chunk */
        size_t wframes = 0;
        plait_wire_xfer_init(&tx, 42, total, 0);
        while ((rc = plait_wire_update_tx_next(&tx, &lim, src, &m)) == 1) {
            size_t len = 0;
            ck_assert_int_eq(plait_wire_encoded_size(&m, &lim, &len), 0);
            wframes += len;
        }
        ck_assert_uint_le(frames * 32, wframes * bits + wframes * bits / 4); /* within 25% of bits/32 */
    }
    /* a word that does not fit in the bits is refused by the sender */
    src[500] = 256;
    plait_wire_xfer_t tx;
    plait_msg_t m;
    plait_wire_xfer_init(&tx, 42, total, 496);
    ck_assert_int_eq(plait_wire_update_tx_next_packed(&tx, &lim, src, 8, buf, sizeof(buf), &m), PLAIT_EINVAL);
    plait_wire_xfer_init(&tx, 42, total, 0);
    ck_assert_int_eq(plait_wire_update_tx_next_packed(&tx, &lim, src, 7, buf, sizeof(buf), &m), PLAIT_EINVAL);
    ck_assert_int_eq(plait_wire_update_tx_next_packed(&tx, &lim, src, 33, buf, sizeof(buf), &m), PLAIT_EINVAL);
    ck_assert_int_eq(plait_wire_update_tx_next_packed(&tx, &lim, src, 8, buf, 63, &m), PLAIT_ETOOBIG);
    ck_assert_int_eq(plait_wire_update_tx_next_packed(&tx, &lim, src, 8, NULL, 64, &m), PLAIT_EINVAL);
    free(src);
    free(dst);
}
END_TEST

static void pb_packed_chunk(pbw_t *w, uint64_t off, uint64_t total, const uint8_t *p, size_t n, int bits,
                            int count)
{
    w->n = 0;
    pb_u(w, 1, 9);
    pb_u(w, 2, off ? 1 : 0);
    pb_u(w, 3, off);
    pb_u(w, 4, total);
    if (p) pb_bytes(w, 7, p, n);
    if (bits >= 0) pb_u(w, 8, (uint64_t)bits);
    if (count >= 0) pb_u(w, 9, (uint64_t)count);
}

/* Hostile packed chunks: both forms, neither, a length that is not
 * plait_pack_bits_len(count, bits), nonzero padding, bits outside 8..32,
 * a count of 0 or past total_elements or above what max_chunk_bytes holds,
 * bits or count missing: each refused naming the field. */
START_TEST(test_decode_packed_chunk)
{
    pbw_t w;
    plait_msg_t m;
    uint32_t v[7] = {0xfff, 1, 2, 3, 0x800, 5, 6};
    uint8_t p[16];
    ck_assert_int_eq(plait_pack_bits(v, 7, 12, p, sizeof(p)), 0); /* 11 bytes, 4 padding bits */

    pb_packed_chunk(&w, 0, 7, p, 11, 12, 7);
    ck_assert_int_eq(parse_pb(PLAIT_MSG_UPDATE_CHUNK, &w, &m), 0);
    ck_assert_ptr_null(m.u.update_chunk.words);
    ck_assert_uint_eq(m.u.update_chunk.n_words, 7);
    ck_assert_uint_eq(m.u.update_chunk.bits, 12);
    ck_assert_uint_eq(m.u.update_chunk.packed_len, 11);
    uint32_t back[7];
    ck_assert_int_eq(plait_unpack_bits(m.u.update_chunk.packed, 11, 7, 12, back), 0);
    ck_assert_mem_eq(back, v, sizeof(v));
    plait_msg_free(&m);

    /* both forms */
    pb_packed_chunk(&w, 0, 9, p, 11, 12, 7);
    pb_fixed32(&w, 5, 1);
    EXPECT_FIELD_ERR(parse_pb(PLAIT_MSG_UPDATE_CHUNK, &w, &m), "update_chunk");
    /* neither */
    pb_packed_chunk(&w, 0, 7, NULL, 0, -1, -1);
    EXPECT_FIELD_ERR(parse_pb(PLAIT_MSG_UPDATE_CHUNK, &w, &m), "update_chunk.words");
    /* bits or count without packed bytes, or packed without them */
    pb_packed_chunk(&w, 0, 7, NULL, 0, 12, 7);
    EXPECT_FIELD_ERR(parse_pb(PLAIT_MSG_UPDATE_CHUNK, &w, &m), "update_chunk.words");
    pb_packed_chunk(&w, 0, 7, p, 11, -1, 7);
    EXPECT_FIELD_ERR(parse_pb(PLAIT_MSG_UPDATE_CHUNK, &w, &m), "update_chunk.bits");
    pb_packed_chunk(&w, 0, 7, p, 11, 12, -1);
    EXPECT_FIELD_ERR(parse_pb(PLAIT_MSG_UPDATE_CHUNK, &w, &m), "update_chunk.count");
    pb_packed_chunk(&w, 0, 7, p, 0, 12, 7);
    EXPECT_FIELD_ERR(parse_pb(PLAIT_MSG_UPDATE_CHUNK, &w, &m), "update_chunk.packed");
    /* lengths */
    pb_packed_chunk(&w, 0, 7, p, 10, 12, 7);
    EXPECT_FIELD_ERR(parse_pb(PLAIT_MSG_UPDATE_CHUNK, &w, &m), "update_chunk.packed");
    pb_packed_chunk(&w, 0, 7, p, 12, 12, 7);
    EXPECT_FIELD_ERR(parse_pb(PLAIT_MSG_UPDATE_CHUNK, &w, &m), "update_chunk.packed");
    pb_packed_chunk(&w, 0, 8, p, 11, 12, 8); /* 8 x 12 bits = 12 bytes */
    EXPECT_FIELD_ERR(parse_pb(PLAIT_MSG_UPDATE_CHUNK, &w, &m), "update_chunk.packed");
    pb_packed_chunk(&w, 0, 7, p, 11, 11, 7); /* 77 bits = 10 bytes */
    EXPECT_FIELD_ERR(parse_pb(PLAIT_MSG_UPDATE_CHUNK, &w, &m), "update_chunk.packed");
    /* nonzero padding: one encoding per chunk */
    uint8_t q[16];
    memcpy(q, p, 11);
    q[10] |= 0x10;
    pb_packed_chunk(&w, 0, 7, q, 11, 12, 7);
    EXPECT_FIELD_ERR(parse_pb(PLAIT_MSG_UPDATE_CHUNK, &w, &m), "update_chunk.packed");
    /* bits outside 8..32, a count of 0, past the total */
    pb_packed_chunk(&w, 0, 7, p, 7, 7, 8);
    EXPECT_FIELD_ERR(parse_pb(PLAIT_MSG_UPDATE_CHUNK, &w, &m), "update_chunk.bits");
    pb_packed_chunk(&w, 0, 7, p, 11, 33, 2);
    EXPECT_FIELD_ERR(parse_pb(PLAIT_MSG_UPDATE_CHUNK, &w, &m), "update_chunk.bits");
    pb_packed_chunk(&w, 0, 7, p, 1, 12, 0);
    EXPECT_FIELD_ERR(parse_pb(PLAIT_MSG_UPDATE_CHUNK, &w, &m), "update_chunk.count");
    pb_packed_chunk(&w, 0, 6, p, 11, 12, 7);
    EXPECT_FIELD_ERR(parse_pb(PLAIT_MSG_UPDATE_CHUNK, &w, &m), "update_chunk.offset");
    pb_packed_chunk(&w, 3, 9, p, 11, 12, 7);
    EXPECT_FIELD_ERR(parse_pb(PLAIT_MSG_UPDATE_CHUNK, &w, &m), "update_chunk.offset");
    pb_packed_chunk(&w, 0, (uint64_t)1 << 40, p, 11, 12, 7);
    EXPECT_FIELD_ERR(parse_pb(PLAIT_MSG_UPDATE_CHUNK, &w, &m), "update_chunk.total_elements");
    /* more values than max_chunk_bytes holds at these bits (count 2^32 - 1, far beyond the bytes) */
    pb_packed_chunk(&w, 0, (uint64_t)1 << 26, p, 11, 12, -1);
    pb_u(&w, 9, 0xffffffffu);
    EXPECT_FIELD_ERR(parse_pb(PLAIT_MSG_UPDATE_CHUNK, &w, &m), "update_chunk.count");

    /* the encoder refuses the same */
    uint8_t out[512];
    size_t n = 0;
    plait_msg_init(&m, PLAIT_MSG_UPDATE_CHUNK);
    plait_msg_update_chunk_t *u = &m.u.update_chunk;
    u->round_id = 9, u->total_elements = 7, u->n_words = 7, u->packed = p, u->packed_len = 11, u->bits = 12;
    ck_assert_int_eq(plait_wire_encode(&m, NULL, out, sizeof(out), &n), 0);
    u->words = v;
    EXPECT_FIELD_ERR(plait_wire_encode(&m, NULL, out, sizeof(out), &n), "update_chunk");
    u->words = NULL, u->packed_len = 10;
    EXPECT_FIELD_ERR(plait_wire_encode(&m, NULL, out, sizeof(out), &n), "update_chunk.packed");
    u->packed_len = 11, u->packed = q;
    EXPECT_FIELD_ERR(plait_wire_encode(&m, NULL, out, sizeof(out), &n), "update_chunk.packed");
    u->packed = p, u->bits = 40;
    EXPECT_FIELD_ERR(plait_wire_encode(&m, NULL, out, sizeof(out), &n), "update_chunk.bits");

    /* the wire_update corpus entries decode as their names say */
    static const struct {
        const char *name;
        int ok;
    } seeds[] = {
        {"valid_packed_8bit_first", 1}, {"valid_packed_12bit_next", 1}, {"valid_packed_32bit", 1},
        {"bad_packed_and_words", 0},    {"bad_packed_len", 0},          {"bad_packed_padding", 0},
        {"bad_packed_bits7", 0},        {"bad_packed_no_count", 0},     {"bad_packed_past_total", 0},
    };
    char *dir = tu_path(PLAIT_TEST_SOURCE_DIR "/fuzz/corpus", "wire_update");
    for (size_t i = 0; i < sizeof(seeds) / sizeof(seeds[0]); i++) {
        char *path = tu_path(dir, seeds[i].name);
        size_t len = 0;
        uint8_t *b = tu_read_file(path, &len);
        ck_assert_msg(b != NULL, "%s missing", path);
        plait_frame_t f = {PLAIT_WIRE_VERSION, PLAIT_MSG_UPDATE_CHUNK, b, len, len + PLAIT_FRAME_HEADER};
        int rc = plait_wire_decode(&f, NULL, &m);
        ck_assert_msg(seeds[i].ok ? rc == 0 : rc == PLAIT_EPROTO, "%s: %s", seeds[i].name, plait_err_name(rc));
        if (rc == 0) {
            ck_assert_ptr_nonnull(m.u.update_chunk.packed);
            plait_msg_free(&m);
        }
        free(b);
        free(path);
    }
    free(dir);
}
END_TEST

/* Task.packed_update: absent when off (an old device sees the same task), round-trips when
 * on, and is refused in a secure task (masked input is packed in its own messages). */
START_TEST(test_task_packed_update)
{
    for (int on = 0; on <= 1; on++) {
        plait_msg_t m, d;
        sample(2, &m);
        m.u.task.secure_agg = 0, m.u.task.has_secagg = 0; /* a plain round */
        m.u.task.packed_update = on;
        uint8_t *buf = NULL;
        size_t len = 0, used = 0, len0 = 0;
        ck_assert_int_eq(plait_wire_encode_alloc(&m, NULL, &buf, &len), 0);
        ck_assert_int_eq(plait_wire_parse(buf, len, NULL, 0, &d, &used), 0);
        ck_assert_int_eq(d.u.task.packed_update, on);
        plait_msg_free(&d);
        free(buf);
        m.u.task.packed_update = 0;
        ck_assert_int_eq(plait_wire_encoded_size(&m, NULL, &len0), 0);
        ck_assert_uint_eq(len, len0 + (on ? 3 : 0)); /* tag 26 (2 bytes) + 1 */
    }
    plait_msg_t m;
    uint8_t out[4096];
    size_t n = 0;
    sample(2, &m);
    ck_assert_int_eq(m.u.task.secure_agg, 1);
    m.u.task.packed_update = 1;
    EXPECT_FIELD_ERR(plait_wire_encode(&m, NULL, out, sizeof(out), &n), "task.packed_update");
    sample(2, &m);
    m.u.task.secure_agg = 0, m.u.task.has_secagg = 0;
    m.u.task.packed_update = 2;
    EXPECT_FIELD_ERR(plait_wire_encode(&m, NULL, out, sizeof(out), &n), "task.packed_update");
}
END_TEST

/* ---- fuzz seeds ------------------------------------------------------------- */

/* Seeds written by this test (PLAIT_WIRE_WRITE_CORPUS=1) into
 * tests/fuzz/corpus/{frame,wire_hello,wire_update}. The frame corpus holds
 * whole frames; the message corpora hold bare Envelope payloads, as the
 * fuzz targets wrap them themselves. */
static void write_or_check_seed(const char *dir, const char *name, const uint8_t *buf, size_t len)
{
    char *d = tu_path(PLAIT_TEST_SOURCE_DIR "/fuzz/corpus", dir);
    char *path = tu_path(d, name);
    const char *w = getenv("PLAIT_WIRE_WRITE_CORPUS");
    if (w && strcmp(w, "1") == 0) {
        ck_assert_int_eq(tu_write_file(path, buf, len), 0);
    } else {
        size_t n = 0;
        uint8_t *have = tu_read_file(path, &n);
        ck_assert_msg(have != NULL, "seed %s missing (run with PLAIT_WIRE_WRITE_CORPUS=1)", path);
        ck_assert_msg(n == len && memcmp(have, buf, len) == 0, "seed %s is stale", path);
        free(have);
    }
    free(path);
    free(d);
}

START_TEST(test_fuzz_seeds)
{
    static const char *names[N_SAMPLES] = {
        "valid_hello",       "valid_hello_resume", "valid_task",         "valid_come_back_later",
        "valid_adapter_req", "valid_adapter_mid",  "valid_adapter_last", "valid_update_first",
        "valid_update_next", "valid_ack",          "valid_error",        "valid_error_empty",
        "valid_ping",        "valid_pong",         "valid_decline",      "valid_secagg_advertise",
        "valid_secagg_roster", "valid_secagg_shares", "valid_secagg_relay",
        "valid_secagg_masked_first", "valid_secagg_masked_last", "valid_secagg_unmask_request",
        "valid_secagg_unmask_response",
    };
    uint8_t stream[8192];
    size_t total = 0;
    for (int i = 0; i < N_SAMPLES; i++) {
        size_t len = 0;
        uint8_t *buf = encode_sample(i, &len);
        write_or_check_seed("frame", names[i], buf, len);
        if (i == 0 || i == 1) write_or_check_seed("wire_hello", names[i], buf + 6, len - 6);
        if (i == 7 || i == 8) write_or_check_seed("wire_update", names[i], buf + 6, len - 6);
        if (i >= 15) write_or_check_seed("wire_secagg", names[i], buf + 6, len - 6);
        memcpy(stream + total, buf, len);
        total += len;
        free(buf);
    }
    write_or_check_seed("frame", "valid_stream", stream, total);
}
END_TEST

/* A distributed-DP Task round-trips with its variance; malformed ones are refused. */
START_TEST(test_task_distributed_dp)
{
    plait_msg_t m, d;
    sample(2, &m);
    m.u.task.dp.mode = PLAIT_DP_DISTRIBUTED;
    m.u.task.dp.noise_multiplier = 1.5;
    m.u.task.dp.ddg_var_num = 123457;
    m.u.task.dp.ddg_var_den = 256;
    uint8_t *buf = NULL;
    size_t len = 0, used = 0;
    ck_assert_int_eq(plait_wire_encode_alloc(&m, NULL, &buf, &len), 0);
    ck_assert_int_eq(parse_guarded(buf, len, NULL, 0, &d, &used), 0);
    ck_assert_int_eq(d.u.task.dp.mode, PLAIT_DP_DISTRIBUTED);
    ck_assert_uint_eq(d.u.task.dp.ddg_var_num, 123457);
    ck_assert_uint_eq(d.u.task.dp.ddg_var_den, 256);
    ck_assert(d.u.task.dp.noise_multiplier == 1.5);
    assert_msg_eq(&m, &d);
    plait_msg_free(&d);
    free(buf);

    uint8_t out[1 << 16];
    size_t n = 0;
#define REFUSE_DDG(mutate, field)                                                                  \
    do {                                                                                           \
        sample(2, &m);                                                                             \
        m.u.task.dp.mode = PLAIT_DP_DISTRIBUTED;                                                   \
        m.u.task.dp.noise_multiplier = 1.5;                                                        \
        m.u.task.dp.ddg_var_num = 1000;                                                            \
        m.u.task.dp.ddg_var_den = 1;                                                               \
        mutate;                                                                                    \
        EXPECT_FIELD_ERR(plait_wire_encode(&m, NULL, out, sizeof(out), &n), field);                \
        ck_assert_uint_eq(n, 0);                                                                   \
    } while (0)
    REFUSE_DDG(m.u.task.dp.noise_multiplier = 0, "task.dp.noise_multiplier");
    REFUSE_DDG(m.u.task.dp.noise_multiplier = NAN, "task.dp.noise_multiplier");
    REFUSE_DDG(m.u.task.dp.ddg_var_num = 0, "task.dp.ddg_var_num");
    REFUSE_DDG(m.u.task.dp.ddg_var_num = ((uint64_t)1 << 40) + 1, "task.dp.ddg_var_num");
    REFUSE_DDG(m.u.task.dp.ddg_var_den = 0, "task.dp.ddg_var_den");
    REFUSE_DDG(m.u.task.dp.ddg_var_den = ((uint64_t)1 << 32) + 1, "task.dp.ddg_var_den");
    REFUSE_DDG((m.u.task.secure_agg = 0, m.u.task.has_secagg = 0), "task.dp.mode");
    REFUSE_DDG(m.u.task.dp.mode = PLAIT_DP_CENTRAL, "task.dp.ddg_var_num");
#undef REFUSE_DDG
}
END_TEST

Suite *wire_suite(void)
{
    Suite *s = suite_create("wire");
    TCase *tc = tcase_create("roundtrip");
    tcase_add_test(tc, test_roundtrip_all);
    tcase_add_test(tc, test_task_prox_mu);
    tcase_add_test(tc, test_adapter_encodings);
    tcase_add_test(tc, test_stream_of_frames);
    tcase_add_test(tc, test_type_names);
    tcase_add_test(tc, test_decline_code_only);
    tcase_add_test(tc, test_task_distributed_dp);
    suite_add_tcase(s, tc);

    tc = tcase_create("frame");
    tcase_add_test(tc, test_every_prefix_eagain);
    tcase_add_test(tc, test_every_truncated_payload);
    tcase_add_test(tc, test_oversize_from_header);
    tcase_add_test(tc, test_bad_header);
    tcase_add_test(tc, test_limits_validate);
    tcase_add_test(tc, test_full_chunks_fit);
    tcase_set_timeout(tc, 60);
    suite_add_tcase(s, tc);

    tc = tcase_create("untrusted");
    tcase_add_test(tc, test_flipped_bytes);
    tcase_add_test(tc, test_garbage_payloads);
    tcase_add_test(tc, test_decode_hello_fields);
    tcase_add_test(tc, test_decode_task_fields);
    tcase_add_test(tc, test_task_evaluate);
    tcase_add_test(tc, test_decode_chunk_fields);
    tcase_add_test(tc, test_decode_small_messages);
    tcase_add_test(tc, test_repeated_fields_bounded);
    tcase_set_timeout(tc, 60);
    suite_add_tcase(s, tc);

    tc = tcase_create("transfer");
    tcase_add_test(tc, test_update_transfer);
    tcase_add_test(tc, test_adapter_transfer);
    tcase_add_test(tc, test_masked_transfer);
    tcase_add_test(tc, test_packed_update_transfer);
    tcase_add_test(tc, test_decode_packed_chunk);
    tcase_add_test(tc, test_task_packed_update);
    suite_add_tcase(s, tc);

    tc = tcase_create("encode");
    tcase_add_test(tc, test_encode_refuses_invalid);
    tcase_add_test(tc, test_task_max_chunk_bytes);
    tcase_add_test(tc, test_fuzz_seeds);
    suite_add_tcase(s, tc);
    return s;
}
