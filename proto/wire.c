/*
 * wire.c: frames and messages of the plait protocol; the only user of
 * protobuf-c and of the generated plait.pb-c.h.
 *
 * A frame is `u32 BE length | u8 version | u8 type | payload`, where length
 * counts version + type + payload and the payload is one protobuf Envelope
 * whose oneof case equals the type byte (include/plait/wire.h,
 * docs/protocol.md).
 *
 * Invariants:
 * - Untrusted bytes never crash this file and never make it read outside
 *   [buf, buf + len). plait_frame_decode() looks at the header only and
 *   decides size, version and type from it before the body is buffered.
 * - Allocation is bounded: a payload is unpacked only after its size was
 *   checked against the frame limit, and through an allocator that refuses
 *   to hold more than UNPACK_BUDGET(payload_len) bytes at once (protobuf-c
 *   needs at most a few bytes per input byte; the cap stops pathological
 *   inputs from amplifying further).
 * - Generated structs never leave this file. A decoded plait_msg_t keeps the
 *   unpacked Envelope behind its opaque `priv` pointer, so adapter bytes and
 *   update words are not copied a second time; plait_msg_free() releases it.
 * - One validator per message (validate_*) on the plain C struct serves both
 *   directions: the decoder runs it after converting, the encoder before
 *   packing, so plait never sends what a plait peer would refuse.
 *
 * Workload: one decode per received frame; update chunks of up to 1 MiB are
 * the large ones, and cost one unpack (a memcpy of the packed words on
 * little-endian hosts) and no further copy.
 */
#include "plait/wire.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "plait.pb-c.h"

/* ---- limits ------------------------------------------------------------- */

void plait_wire_limits_default(plait_wire_limits_t *lim)
{
    lim->max_frame = ((size_t)1 << 20) + 4096;
    lim->max_preauth_frame = 4096;
    lim->max_chunk_bytes = (size_t)1 << 20;
    lim->max_update_elements = ((uint64_t)1 << 26) + 1;
    lim->max_adapter_bytes = (uint64_t)256 << 20;
    lim->max_string = PLAIT_WIRE_MAX_STRING;
    lim->max_deadline_s = 7u * 24u * 3600u;
    lim->max_retry_ms = 24u * 3600u * 1000u;
}

int plait_wire_limits_validate(const plait_wire_limits_t *lim)
{
    if (!lim) return plait_fail(PLAIT_EINVAL, "wire limits: NULL");
    if (lim->max_chunk_bytes < 4 || lim->max_chunk_bytes > PLAIT_WIRE_MAX_FRAME_HARD)
        return plait_fail(PLAIT_EINVAL, "wire limits: max_chunk_bytes %zu outside 4..%zu",
                          lim->max_chunk_bytes, PLAIT_WIRE_MAX_FRAME_HARD);
    if (lim->max_frame > PLAIT_WIRE_MAX_FRAME_HARD ||
        lim->max_frame < lim->max_chunk_bytes + PLAIT_WIRE_CHUNK_OVERHEAD)
        return plait_fail(PLAIT_EINVAL,
                          "wire limits: max_frame %zu outside max_chunk_bytes + %d..%zu",
                          lim->max_frame, PLAIT_WIRE_CHUNK_OVERHEAD, PLAIT_WIRE_MAX_FRAME_HARD);
    if (lim->max_preauth_frame < 64 || lim->max_preauth_frame > lim->max_frame)
        return plait_fail(PLAIT_EINVAL, "wire limits: max_preauth_frame %zu outside 64..max_frame",
                          lim->max_preauth_frame);
    if (lim->max_update_elements < 2 || lim->max_update_elements > ((uint64_t)1 << 32))
        return plait_fail(PLAIT_EINVAL, "wire limits: max_update_elements outside 2..2^32");
    if (lim->max_adapter_bytes < 1)
        return plait_fail(PLAIT_EINVAL, "wire limits: max_adapter_bytes is 0");
    if (lim->max_string < 1 || lim->max_string > PLAIT_WIRE_MAX_STRING)
        return plait_fail(PLAIT_EINVAL, "wire limits: max_string %zu outside 1..%d",
                          lim->max_string, PLAIT_WIRE_MAX_STRING);
    if (lim->max_deadline_s < 1)
        return plait_fail(PLAIT_EINVAL, "wire limits: max_deadline_s is 0");
    if (lim->max_retry_ms < 1) return plait_fail(PLAIT_EINVAL, "wire limits: max_retry_ms is 0");
    return 0;
}

/* Resolve a caller's limits (NULL: defaults) into *tmp; NULL when invalid. */
static const plait_wire_limits_t *limits_or_default(const plait_wire_limits_t *lim,
                                                    plait_wire_limits_t *tmp)
{
    if (!lim) {
        plait_wire_limits_default(tmp);
        return tmp;
    }
    return plait_wire_limits_validate(lim) == 0 ? lim : NULL;
}

/* ---- message helpers ---------------------------------------------------- */

/* Indexed by type byte; a NULL entry is a type byte this build does not define. */
static const char *const type_names[PLAIT_MSG_TYPE_MAX + 1] = {
    [PLAIT_MSG_HELLO] = "hello",
    [PLAIT_MSG_TASK] = "task",
    [PLAIT_MSG_COME_BACK_LATER] = "come_back_later",
    [PLAIT_MSG_ADAPTER_REQUEST] = "adapter_request",
    [PLAIT_MSG_ADAPTER_CHUNK] = "adapter_chunk",
    [PLAIT_MSG_UPDATE_CHUNK] = "update_chunk",
    [PLAIT_MSG_ACK] = "ack",
    [PLAIT_MSG_ERROR] = "error",
    [PLAIT_MSG_PING] = "ping",
    [PLAIT_MSG_PONG] = "pong",
    [PLAIT_MSG_SECAGG_ADVERTISE] = "secagg_advertise",
    [PLAIT_MSG_SECAGG_ROSTER] = "secagg_roster",
    [PLAIT_MSG_SECAGG_SHARES] = "secagg_shares",
    [PLAIT_MSG_SECAGG_RELAY] = "secagg_relay",
    [PLAIT_MSG_SECAGG_MASKED_INPUT] = "secagg_masked_input",
    [PLAIT_MSG_SECAGG_UNMASK_REQUEST] = "secagg_unmask_request",
    [PLAIT_MSG_SECAGG_UNMASK_RESPONSE] = "secagg_unmask_response",
    [PLAIT_MSG_DECLINE] = "decline",
};

static int type_known(int type)
{
    return type >= 1 && type <= PLAIT_MSG_TYPE_MAX && type_names[type] != NULL;
}

const char *plait_msg_type_name(int type)
{
    return type_known(type) ? type_names[type] : "unknown";
}

static const char *const decline_names[PLAIT_DECLINE_CODE_MAX + 1] = {
    [PLAIT_DECLINE_NOT_ENOUGH_DATA] = "not_enough_data",
    [PLAIT_DECLINE_INCOMPATIBLE_TASK] = "incompatible_task",
    [PLAIT_DECLINE_POLICY] = "policy",
    [PLAIT_DECLINE_NOT_ELIGIBLE] = "not_eligible",
    [PLAIT_DECLINE_INTERNAL] = "internal",
    [PLAIT_DECLINE_ALREADY_DONE] = "already_done",
    [PLAIT_DECLINE_DEADLINE] = "deadline",
};

const char *plait_decline_code_name(int code)
{
    return code >= 1 && code <= PLAIT_DECLINE_CODE_MAX ? decline_names[code] : "unknown";
}

void plait_msg_init(plait_msg_t *m, plait_msg_type_t type)
{
    memset(m, 0, sizeof(*m));
    m->type = type;
}

/* ---- bounded allocator for protobuf-c ----------------------------------- */

/*
 * Every block carries a header with its size, so the budget can be given
 * back on free and a block can later be freed without the budget (after
 * unpack returned, plait_msg_free() uses free_alloc below).
 */
typedef union {
    size_t size;
    max_align_t align;
} block_hdr_t;

typedef struct {
    size_t used;   /* bytes held now (headers included) */
    size_t budget; /* most bytes held at once */
    int over;      /* 1: a request was refused for the budget */
    int nomem;     /* 1: malloc itself failed */
} budget_t;

/* Bytes protobuf-c may hold while unpacking n payload bytes. Each input byte
 * yields at most 4 output bytes (packed fixed32, bytes) or one scan record per
 * 2-byte field (32 bytes); 16x plus a constant for the structs is ample. */
#define UNPACK_BUDGET(n) ((n)*16 + ((size_t)64 << 10))

static void *budget_alloc(void *data, size_t size)
{
    budget_t *b = data;
    if (size > SIZE_MAX - sizeof(block_hdr_t)) {
        b->over = 1;
        return NULL;
    }
    size_t total = size + sizeof(block_hdr_t);
    if (total > b->budget - b->used) {
        b->over = 1;
        return NULL;
    }
    block_hdr_t *h = malloc(total);
    if (!h) {
        b->nomem = 1;
        return NULL;
    }
    h->size = total;
    b->used += total;
    return h + 1;
}

static void budget_free(void *data, void *p)
{
    if (!p) return;
    budget_t *b = data;
    block_hdr_t *h = (block_hdr_t *)p - 1;
    b->used -= h->size;
    free(h);
}

static void *free_alloc_alloc(void *data, size_t size)
{
    (void)data;
    (void)size;
    return NULL; /* never used to allocate */
}

static void free_alloc_free(void *data, void *p)
{
    (void)data;
    if (p) free((block_hdr_t *)p - 1);
}

static ProtobufCAllocator free_alloc = {free_alloc_alloc, free_alloc_free, NULL};

void plait_msg_free(plait_msg_t *m)
{
    if (!m) return;
    if (m->priv) plait__envelope__free_unpacked(m->priv, &free_alloc);
    free(m->priv_arr);
    memset(m, 0, sizeof(*m));
}

/* ---- validation (both directions) --------------------------------------- */

#define BAD(...) plait_fail(PLAIT_EPROTO, __VA_ARGS__)

static int finite_pos(double x)
{
    return isfinite(x) && x > 0.0;
}

/* Printable ASCII only (client_version). */
static int printable_ascii(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)s[i] < 0x20 || (unsigned char)s[i] > 0x7e) return 0;
    return 1;
}

/* No control characters (Error.message; bytes >= 0x80 are allowed for UTF-8). */
static int no_controls(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)s[i] < 0x20 || (unsigned char)s[i] == 0x7f) return 0;
    return 1;
}

static int validate_hello(const plait_msg_hello_t *h)
{
    size_t n = strnlen(h->client_version, sizeof(h->client_version));
    if (n == 0 || n > PLAIT_WIRE_MAX_CLIENT_VERSION)
        return BAD("hello.client_version: length %zu outside 1..%d", n,
                   PLAIT_WIRE_MAX_CLIENT_VERSION);
    if (!printable_ascii(h->client_version, n))
        return BAD("hello.client_version: not printable ASCII");
    return 0;
}

static int validate_task_secagg(const plait_msg_task_t *t);

static int validate_task(const plait_msg_task_t *t, const plait_wire_limits_t *lim)
{
    if (t->round_id == 0) return BAD("task.round_id: 0");
    if (t->adapter_len < 1 || t->adapter_len > lim->max_adapter_bytes)
        return BAD("task.adapter_len: %llu outside 1..%llu", (unsigned long long)t->adapter_len,
                   (unsigned long long)lim->max_adapter_bytes);
    if (t->lora.rank < 1 || t->lora.rank > PLAIT_WIRE_MAX_RANK)
        return BAD("task.lora.rank: %u outside 1..%d", t->lora.rank, PLAIT_WIRE_MAX_RANK);
    if (!finite_pos((double)t->lora.alpha)) return BAD("task.lora.alpha: not finite and > 0");
    if (t->lora.targets == 0 || t->lora.targets >= (1u << PLAIT_WIRE_NPROJ))
        return BAD("task.lora.targets: 0x%x not a nonzero mask below 0x%x", t->lora.targets,
                   1u << PLAIT_WIRE_NPROJ);
    if (t->lora.mode != PLAIT_LORA_MODE_FFA && t->lora.mode != PLAIT_LORA_MODE_FEDIT &&
        t->lora.mode != PLAIT_LORA_MODE_FEDSA)
        return BAD("task.lora.mode: unknown value %d", (int)t->lora.mode);
    if (t->train.local_steps < 1 || t->train.local_steps > PLAIT_WIRE_MAX_LOCAL_STEPS)
        return BAD("task.train.local_steps: %u outside 1..%u", t->train.local_steps,
                   PLAIT_WIRE_MAX_LOCAL_STEPS);
    if (t->train.batch < 1 || t->train.batch > PLAIT_WIRE_MAX_BATCH)
        return BAD("task.train.batch: %u outside 1..%u", t->train.batch, PLAIT_WIRE_MAX_BATCH);
    if (t->train.seq_len < 1 || t->train.seq_len > PLAIT_WIRE_MAX_SEQ_LEN)
        return BAD("task.train.seq_len: %u outside 1..%u", t->train.seq_len,
                   PLAIT_WIRE_MAX_SEQ_LEN);
    if (!finite_pos(t->train.lr) || t->train.lr > 1.0) return BAD("task.train.lr: not in (0, 1]");
    if (!(t->train.prox_mu >= 0.0 && t->train.prox_mu <= 1e4)) return BAD("task.train.prox_mu: not in [0, 10000]");
    if (!finite_pos(t->clip_norm)) return BAD("task.clip_norm: not finite and > 0");
    if (t->quant_bits < PLAIT_QUANT_MIN_BITS || t->quant_bits > PLAIT_QUANT_MAX_BITS)
        return BAD("task.quant_bits: %u outside %d..%d", t->quant_bits, PLAIT_QUANT_MIN_BITS,
                   PLAIT_QUANT_MAX_BITS);
    if (!finite_pos(t->quant_range)) return BAD("task.quant_range: not finite and > 0");
    if (t->secure_agg != 0 && t->secure_agg != 1) return BAD("task.secure_agg: not 0 or 1");
    if (t->dp.mode != PLAIT_DP_DISTRIBUTED && (t->dp.ddg_var_num != 0 || t->dp.ddg_var_den != 0))
        return BAD("task.dp.ddg_var_num/den: set without distributed DP");
    switch (t->dp.mode) {
    case PLAIT_DP_NONE:
        if (t->dp.noise_multiplier != 0.0)
            return BAD("task.dp.noise_multiplier: must be 0 without DP");
        break;
    case PLAIT_DP_LOCAL:
        if (!finite_pos(t->dp.noise_multiplier))
            return BAD("task.dp.noise_multiplier: local DP needs z > 0");
        break;
    case PLAIT_DP_CENTRAL:
        if (!isfinite(t->dp.noise_multiplier) || t->dp.noise_multiplier < 0.0)
            return BAD("task.dp.noise_multiplier: not finite and >= 0");
        break;
    case PLAIT_DP_DISTRIBUTED:
        if (!finite_pos(t->dp.noise_multiplier))
            return BAD("task.dp.noise_multiplier: distributed DP needs z > 0");
        if (!t->secure_agg) return BAD("task.dp.mode: distributed DP needs secure_agg");
        if (t->dp.ddg_var_num < 1 || t->dp.ddg_var_num > ((uint64_t)1 << 40)) /* PLAIT_DDG_NUM_MAX */
            return BAD("task.dp.ddg_var_num: outside 1..2^40");
        if (t->dp.ddg_var_den < 1 || t->dp.ddg_var_den > ((uint64_t)1 << 32)) /* PLAIT_DDG_DEN_MAX */
            return BAD("task.dp.ddg_var_den: outside 1..2^32");
        break;
    default:
        return BAD("task.dp.mode: unknown value %d", (int)t->dp.mode);
    }
    if (t->deadline_s < 1 || t->deadline_s > lim->max_deadline_s)
        return BAD("task.deadline_s: %u outside 1..%u", t->deadline_s, lim->max_deadline_s);
    if (t->update_elements < 2 || t->update_elements > lim->max_update_elements)
        return BAD("task.update_elements: %llu outside 2..%llu",
                   (unsigned long long)t->update_elements,
                   (unsigned long long)lim->max_update_elements);
    if (t->example_cap < 1) return BAD("task.example_cap: 0");
    if (t->max_chunk_bytes != 0 && t->max_chunk_bytes < 4)
        return BAD("task.max_chunk_bytes: %u below 4", t->max_chunk_bytes);
    if (t->clip_bit != 0 && t->clip_bit != 1) return BAD("task.clip_bit: not 0 or 1");
    if (t->clip_bit && t->update_elements < 3) return BAD("task.update_elements: the clip bit needs at least 3");
    return validate_task_secagg(t);
}

static int validate_cbl(const plait_msg_come_back_later_t *c, const plait_wire_limits_t *lim)
{
    if (c->retry_ms < 1 || c->retry_ms > lim->max_retry_ms)
        return BAD("come_back_later.retry_ms: %u outside 1..%u", c->retry_ms, lim->max_retry_ms);
    if ((unsigned)c->reason > PLAIT_RETRY_REASON_MAX && c->reason != PLAIT_RETRY_NOT_SAMPLED &&
        c->reason != PLAIT_RETRY_SECAGG_CLOSED)
        return BAD("come_back_later.reason: unknown value %d", (int)c->reason);
    return 0;
}

static int validate_areq(const plait_msg_adapter_request_t *r, const plait_wire_limits_t *lim)
{
    if (r->round_id == 0) return BAD("adapter_request.round_id: 0");
    if (r->offset >= lim->max_adapter_bytes)
        return BAD("adapter_request.offset: %llu not below max_adapter_bytes",
                   (unsigned long long)r->offset);
    return 0;
}

static int validate_achunk(const plait_msg_adapter_chunk_t *c, const plait_wire_limits_t *lim)
{
    if (c->total_len < 1 || c->total_len > lim->max_adapter_bytes)
        return BAD("adapter_chunk.total_len: %llu outside 1..%llu",
                   (unsigned long long)c->total_len, (unsigned long long)lim->max_adapter_bytes);
    if (c->len < 1 || c->len > lim->max_chunk_bytes)
        return BAD("adapter_chunk.data: %zu bytes outside 1..%zu", c->len, lim->max_chunk_bytes);
    if (!c->data) return BAD("adapter_chunk.data: missing");
    if (c->offset > c->total_len || c->len > c->total_len - c->offset)
        return BAD("adapter_chunk.offset: %llu + %zu bytes exceeds total_len %llu",
                   (unsigned long long)c->offset, c->len, (unsigned long long)c->total_len);
    int last = c->len == c->total_len - c->offset;
    if (last && !c->has_sha256) return BAD("adapter_chunk.sha256: missing in the last chunk");
    if (!last && c->has_sha256) return BAD("adapter_chunk.sha256: only the last chunk carries it");
    return 0;
}

static int validate_uchunk(const plait_msg_update_chunk_t *c, const plait_wire_limits_t *lim)
{
    if (c->round_id == 0) return BAD("update_chunk.round_id: 0");
    if (c->total_elements < 1 || c->total_elements > lim->max_update_elements)
        return BAD("update_chunk.total_elements: %llu outside 1..%llu",
                   (unsigned long long)c->total_elements,
                   (unsigned long long)lim->max_update_elements);
    if (c->n_words < 1 || c->n_words > lim->max_chunk_bytes / 4)
        return BAD("update_chunk.words: %zu outside 1..%zu", c->n_words, lim->max_chunk_bytes / 4);
    if (!c->words) return BAD("update_chunk.words: missing");
    if (c->offset > c->total_elements || c->n_words > c->total_elements - c->offset)
        return BAD("update_chunk.offset: %llu + %zu words exceeds total_elements %llu",
                   (unsigned long long)c->offset, c->n_words,
                   (unsigned long long)c->total_elements);
    if ((c->chunk_index == 0) != (c->offset == 0))
        return BAD("update_chunk.chunk_index: %u with offset %llu (0 exactly at offset 0)",
                   c->chunk_index, (unsigned long long)c->offset);
    if (c->chunk_index > c->offset)
        return BAD("update_chunk.chunk_index: %u exceeds offset %llu", c->chunk_index,
                   (unsigned long long)c->offset);
    return 0;
}

static int validate_ack(const plait_msg_ack_t *a)
{
    if (a->round_id == 0) return BAD("ack.round_id: 0");
    if (a->kind != PLAIT_ACK_UPDATE) return BAD("ack.kind: unknown value %d", (int)a->kind);
    return 0;
}

static int validate_error(const plait_msg_error_t *e, const plait_wire_limits_t *lim)
{
    if (e->code >= 0 || e->code < -32768)
        return BAD("error.code: %d not a negative PLAIT_E* code", e->code);
    size_t n = strnlen(e->message, sizeof(e->message));
    if (n > lim->max_string) return BAD("error.message: %zu bytes above %zu", n, lim->max_string);
    if (!no_controls(e->message, n)) return BAD("error.message: control character");
    return 0;
}

/* ---- secure aggregation ---- */

static int check_shares(const plait_secagg_share_t *sh, size_t n, size_t min, const char *field)
{
    if (n < min || n > PLAIT_WIRE_SECAGG_MAX_PEERS)
        return BAD("%s: %zu shares outside %zu..%u", field, n, min, PLAIT_WIRE_SECAGG_MAX_PEERS);
    if (n > 0 && !sh) return BAD("%s: missing", field);
    for (size_t i = 0; i < n; i++) {
        if (sh[i].peer < 1 || sh[i].peer > PLAIT_WIRE_SECAGG_MAX_COHORT)
            return BAD("%s[%zu].peer: %u outside 1..%u", field, i, sh[i].peer,
                       PLAIT_WIRE_SECAGG_MAX_COHORT);
        if (i > 0 && sh[i].peer <= sh[i - 1].peer)
            return BAD("%s[%zu].peer: %u after %u (must be strictly ascending)", field, i,
                       sh[i].peer, sh[i - 1].peer);
        if (sh[i].len < 1 || sh[i].len > PLAIT_WIRE_SECAGG_MAX_SHARE || !sh[i].data)
            return BAD("%s[%zu].data: %zu bytes outside 1..%u", field, i, sh[i].len,
                       PLAIT_WIRE_SECAGG_MAX_SHARE);
    }
    return 0;
}

static int check_indices(const uint32_t *v, size_t n, size_t min, const char *field)
{
    if (n < min || n > PLAIT_WIRE_SECAGG_MAX_COHORT)
        return BAD("%s: %zu indices outside %zu..%u", field, n, min, PLAIT_WIRE_SECAGG_MAX_COHORT);
    if (n > 0 && !v) return BAD("%s: missing", field);
    for (size_t i = 0; i < n; i++) {
        if (v[i] < 1 || v[i] > PLAIT_WIRE_SECAGG_MAX_COHORT)
            return BAD("%s[%zu]: %u outside 1..%u", field, i, v[i], PLAIT_WIRE_SECAGG_MAX_COHORT);
        if (i > 0 && v[i] <= v[i - 1])
            return BAD("%s[%zu]: %u after %u (must be strictly ascending)", field, i, v[i],
                       v[i - 1]);
    }
    return 0;
}

static int check_sig(const uint8_t *sig, size_t len, const char *field)
{
    if (len < 1 || len > PLAIT_WIRE_SECAGG_MAX_SIG || !sig)
        return BAD("%s: %zu bytes outside 1..%d", field, len, PLAIT_WIRE_SECAGG_MAX_SIG);
    return 0;
}

static int validate_sa_advertise(const plait_msg_secagg_advertise_t *a)
{
    if (a->round_id == 0) return BAD("secagg_advertise.round_id: 0");
    if (a->cert_len < 1 || a->cert_len > PLAIT_WIRE_SECAGG_MAX_CERT || !a->cert)
        return BAD("secagg_advertise.device_cert: %zu bytes outside 1..%d", a->cert_len,
                   PLAIT_WIRE_SECAGG_MAX_CERT);
    return check_sig(a->signature, a->sig_len, "secagg_advertise.signature");
}

static int validate_sa_roster(const plait_msg_secagg_roster_t *r)
{
    if (r->round_id == 0) return BAD("secagg_roster.round_id: 0");
    if (r->n_peers > PLAIT_WIRE_SECAGG_MAX_PEERS)
        return BAD("secagg_roster.peers: %zu above %u", r->n_peers, PLAIT_WIRE_SECAGG_MAX_PEERS);
    if (r->n_peers > 0 && !r->peers) return BAD("secagg_roster.peers: missing");
    for (size_t i = 0; i < r->n_peers; i++) {
        const plait_secagg_peer_t *p = &r->peers[i];
        if (p->index < 1 || p->index > PLAIT_WIRE_SECAGG_MAX_COHORT)
            return BAD("secagg_roster.peers[%zu].index: %u outside 1..%u", i, p->index,
                       PLAIT_WIRE_SECAGG_MAX_COHORT);
        if (i > 0 && p->index <= r->peers[i - 1].index)
            return BAD("secagg_roster.peers[%zu].index: %u after %u (must be strictly ascending)",
                       i, p->index, r->peers[i - 1].index);
        if (p->cert_len < 1 || p->cert_len > PLAIT_WIRE_SECAGG_MAX_CERT || !p->cert)
            return BAD("secagg_roster.peers[%zu].device_cert: %zu bytes outside 1..%d", i,
                       p->cert_len, PLAIT_WIRE_SECAGG_MAX_CERT);
        if (check_sig(p->signature, p->sig_len, "secagg_roster.peers[].signature") != 0)
            return PLAIT_EPROTO;
    }
    return 0;
}

/* Task.secagg: present exactly with secure_agg; m wide enough for the quantized words. */
static int validate_task_secagg(const plait_msg_task_t *t)
{
    if (!t->secure_agg) {
        if (t->has_secagg) return BAD("task.secagg: present without secure_agg");
        return 0;
    }
    if (!t->has_secagg) return BAD("task.secagg: missing with secure_agg");
    if (t->secagg.n < 2 || t->secagg.n > PLAIT_WIRE_SECAGG_MAX_COHORT)
        return BAD("task.secagg.n: %u outside 2..%u", t->secagg.n, PLAIT_WIRE_SECAGG_MAX_COHORT);
    if (t->secagg.index < 1 || t->secagg.index > t->secagg.n)
        return BAD("task.secagg.index: %u outside 1..n (%u)", t->secagg.index, t->secagg.n);
    if (t->secagg.k < 1 || t->secagg.k > t->secagg.n - 1)
        return BAD("task.secagg.k: %u outside 1..n-1 (%u)", t->secagg.k, t->secagg.n - 1);
    if (t->secagg.t < 1 || t->secagg.t > t->secagg.k)
        return BAD("task.secagg.t: %u outside 1..k (%u)", t->secagg.t, t->secagg.k);
    if (t->secagg.bits < t->quant_bits || t->secagg.bits > PLAIT_WIRE_SECAGG_MAX_BITS)
        return BAD("task.secagg.bits: %u outside quant_bits..%u", t->secagg.bits,
                   PLAIT_WIRE_SECAGG_MAX_BITS);
    return 0;
}

uint64_t plait_wire_packed_len(uint64_t total, unsigned bits)
{
    /* total <= 2^32 and bits <= 32 in every use: the product fits in 64 bits. */
    return (total * bits + 7) / 8;
}

static int validate_sa_masked(const plait_msg_secagg_masked_input_t *c,
                              const plait_wire_limits_t *lim)
{
    if (c->round_id == 0) return BAD("secagg_masked_input.round_id: 0");
    if (c->total_elements < 1 || c->total_elements > lim->max_update_elements)
        return BAD("secagg_masked_input.total_elements: %llu outside 1..%llu",
                   (unsigned long long)c->total_elements,
                   (unsigned long long)lim->max_update_elements);
    if (c->bits < PLAIT_WIRE_SECAGG_MIN_BITS || c->bits > PLAIT_WIRE_SECAGG_MAX_BITS)
        return BAD("secagg_masked_input.bits: %u outside %u..%u", c->bits,
                   PLAIT_WIRE_SECAGG_MIN_BITS, PLAIT_WIRE_SECAGG_MAX_BITS);
    if (c->count < 1 || c->offset > c->total_elements || c->count > c->total_elements - c->offset)
        return BAD("secagg_masked_input.count: %llu at offset %llu outside total_elements %llu",
                   (unsigned long long)c->count, (unsigned long long)c->offset,
                   (unsigned long long)c->total_elements);
    if (c->offset % 8 != 0)
        return BAD("secagg_masked_input.offset: %llu not a multiple of 8",
                   (unsigned long long)c->offset);
    if (c->offset + c->count < c->total_elements && c->count % 8 != 0)
        return BAD("secagg_masked_input.count: %llu, not a multiple of 8 before the last chunk",
                   (unsigned long long)c->count);
    uint64_t want = plait_wire_packed_len(c->count, c->bits);
    if (!c->data || (uint64_t)c->len != want)
        return BAD("secagg_masked_input.data: %zu bytes, %llu elements of %u bits need %llu",
                   c->len, (unsigned long long)c->count, c->bits, (unsigned long long)want);
    if (c->len > lim->max_chunk_bytes)
        return BAD("secagg_masked_input.data: %zu bytes above %zu", c->len, lim->max_chunk_bytes);
    if ((c->chunk_index == 0) != (c->offset == 0))
        return BAD("secagg_masked_input.chunk_index: %u with offset %llu (0 exactly at offset 0)",
                   c->chunk_index, (unsigned long long)c->offset);
    if (c->chunk_index > c->offset)
        return BAD("secagg_masked_input.chunk_index: %u exceeds offset %llu", c->chunk_index,
                   (unsigned long long)c->offset);
    return 0;
}

static int validate_sa_unmask_req(const plait_msg_secagg_unmask_request_t *r)
{
    int rc;
    if (r->round_id == 0) return BAD("secagg_unmask_request.round_id: 0");
    if ((rc = check_indices(r->survivors, r->n_survivors, 1,
                            "secagg_unmask_request.survivors")) != 0)
        return rc;
    return check_indices(r->dropouts, r->n_dropouts, 0, "secagg_unmask_request.dropouts");
}

static int validate_sa_unmask_resp(const plait_msg_secagg_unmask_response_t *r)
{
    int rc;
    if (r->round_id == 0) return BAD("secagg_unmask_response.round_id: 0");
    if ((rc = check_shares(r->seed_shares, r->n_seed, 0,
                           "secagg_unmask_response.seed_shares")) != 0)
        return rc;
    return check_shares(r->key_shares, r->n_key, 0, "secagg_unmask_response.key_shares");
}

static int validate_decline(const plait_msg_decline_t *d)
{
    if (d->round_id == 0) return BAD("decline.round_id: 0");
    if ((int)d->code < 1 || (int)d->code > PLAIT_DECLINE_CODE_MAX)
        return BAD("decline.code: unknown value %d", (int)d->code);
    return 0;
}

static int validate(const plait_msg_t *m, const plait_wire_limits_t *lim)
{
    switch (m->type) {
    case PLAIT_MSG_HELLO:
        return validate_hello(&m->u.hello);
    case PLAIT_MSG_TASK:
        return validate_task(&m->u.task, lim);
    case PLAIT_MSG_COME_BACK_LATER:
        return validate_cbl(&m->u.come_back_later, lim);
    case PLAIT_MSG_ADAPTER_REQUEST:
        return validate_areq(&m->u.adapter_request, lim);
    case PLAIT_MSG_ADAPTER_CHUNK:
        return validate_achunk(&m->u.adapter_chunk, lim);
    case PLAIT_MSG_UPDATE_CHUNK:
        return validate_uchunk(&m->u.update_chunk, lim);
    case PLAIT_MSG_ACK:
        return validate_ack(&m->u.ack);
    case PLAIT_MSG_ERROR:
        return validate_error(&m->u.error, lim);
    case PLAIT_MSG_PING:
    case PLAIT_MSG_PONG:
        return 0;
    case PLAIT_MSG_SECAGG_ADVERTISE:
        return validate_sa_advertise(&m->u.secagg_advertise);
    case PLAIT_MSG_SECAGG_ROSTER:
        return validate_sa_roster(&m->u.secagg_roster);
    case PLAIT_MSG_SECAGG_SHARES:
    case PLAIT_MSG_SECAGG_RELAY: {
        const plait_msg_secagg_shares_t *sh = &m->u.secagg_shares;
        const char *f = m->type == PLAIT_MSG_SECAGG_SHARES ? "secagg_shares.shares"
                                                           : "secagg_relay.shares";
        if (sh->round_id == 0)
            return BAD("%s.round_id: 0",
                       m->type == PLAIT_MSG_SECAGG_SHARES ? "secagg_shares" : "secagg_relay");
        return check_shares(sh->shares, sh->n_shares, m->type == PLAIT_MSG_SECAGG_SHARES ? 1 : 0,
                            f);
    }
    case PLAIT_MSG_SECAGG_MASKED_INPUT:
        return validate_sa_masked(&m->u.secagg_masked_input, lim);
    case PLAIT_MSG_SECAGG_UNMASK_REQUEST:
        return validate_sa_unmask_req(&m->u.secagg_unmask_request);
    case PLAIT_MSG_SECAGG_UNMASK_RESPONSE:
        return validate_sa_unmask_resp(&m->u.secagg_unmask_response);
    case PLAIT_MSG_DECLINE:
        return validate_decline(&m->u.decline);
    }
    return plait_fail(PLAIT_EINVAL, "message: unknown type %d", (int)m->type);
}

int plait_msg_validate(const plait_msg_t *m, const plait_wire_limits_t *lim)
{
    plait_wire_limits_t tmp;
    if (!m) return plait_fail(PLAIT_EINVAL, "message: NULL");
    if (!(lim = limits_or_default(lim, &tmp))) return PLAIT_EINVAL;
    return validate(m, lim);
}

/* ---- frames ------------------------------------------------------------- */

static uint32_t load_be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | (uint32_t)p[3];
}

static void store_be32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

int plait_frame_decode(const uint8_t *buf, size_t len, const plait_wire_limits_t *lim,
                       unsigned flags, plait_frame_t *frame, size_t *consumed)
{
    plait_wire_limits_t tmp;
    if (!frame || !consumed || (!buf && len > 0) || (flags & ~PLAIT_FRAME_PREAUTH))
        return plait_fail(PLAIT_EINVAL, "frame decode: bad arguments");
    memset(frame, 0, sizeof(*frame));
    *consumed = 0;
    if (!(lim = limits_or_default(lim, &tmp))) return PLAIT_EINVAL;
    int preauth = (flags & PLAIT_FRAME_PREAUTH) != 0;

    if (len < 4) return PLAIT_EAGAIN;
    uint32_t n = load_be32(buf);
    if (n < 2) return BAD("frame: declared length %u below 2", n);
    size_t max = preauth ? lim->max_preauth_frame : lim->max_frame;
    /* In uint64_t so that 4 + n cannot wrap where size_t is 32 bits. */
    uint64_t total = 4u + (uint64_t)n;
    if (total > (uint64_t)max)
        return plait_fail(PLAIT_ETOOBIG, "frame: %llu bytes above the %s limit %zu",
                          (unsigned long long)total, preauth ? "pre-auth" : "frame", max);
    frame->frame_len = (size_t)total;
    if (len < 5) return PLAIT_EAGAIN;
    if (buf[4] != PLAIT_WIRE_VERSION) {
        frame->frame_len = 0;
        return BAD("frame: version %u, this build speaks %d", buf[4], PLAIT_WIRE_VERSION);
    }
    if (len < 6) return PLAIT_EAGAIN;
    if (!type_known(buf[5])) {
        frame->frame_len = 0;
        return BAD("frame: unknown type %u", buf[5]);
    }
    if (preauth && buf[5] != PLAIT_MSG_HELLO) {
        frame->frame_len = 0;
        return BAD("frame: %s before hello", plait_msg_type_name(buf[5]));
    }
    if (len < frame->frame_len) return PLAIT_EAGAIN;

    frame->version = buf[4];
    frame->type = (plait_msg_type_t)buf[5];
    frame->payload = buf + PLAIT_FRAME_HEADER;
    frame->payload_len = frame->frame_len - PLAIT_FRAME_HEADER;
    *consumed = frame->frame_len;
    return 0;
}

/* ---- decode: protobuf-c structs -> plain structs ------------------------- */

#define NEED(cond, field)                                                                          \
    do {                                                                                           \
        if (!(cond)) return BAD("%s: missing", field);                                             \
    } while (0)

static int copy_sha(const ProtobufCBinaryData *b, uint8_t out[PLAIT_WIRE_SHA256_LEN],
                    const char *field)
{
    if (b->len != PLAIT_WIRE_SHA256_LEN)
        return BAD("%s: %zu bytes, want %d", field, b->len, PLAIT_WIRE_SHA256_LEN);
    memcpy(out, b->data, PLAIT_WIRE_SHA256_LEN);
    return 0;
}

/* Copy a bytes field holding text into a NUL-terminated array of cap + 1; an
 * embedded NUL is refused here because the validators stop at the first. */
static int copy_text(const ProtobufCBinaryData *b, char *out, size_t cap, const char *field)
{
    if (b->len > cap) return BAD("%s: %zu bytes above %zu", field, b->len, cap);
    if (b->len && memchr(b->data, 0, b->len)) return BAD("%s: NUL byte", field);
    if (b->len) memcpy(out, b->data, b->len);
    out[b->len] = '\0';
    return 0;
}

static int from_hello(const Plait__Hello *p, plait_msg_hello_t *h)
{
    int rc;
    NEED(p->has_client_version, "hello.client_version");
    if ((rc = copy_text(&p->client_version, h->client_version, PLAIT_WIRE_MAX_CLIENT_VERSION,
                        "hello.client_version")) != 0)
        return rc;
    NEED(p->has_base_model_sha256, "hello.base_model_sha256");
    if ((rc = copy_sha(&p->base_model_sha256, h->base_model_sha256, "hello.base_model_sha256")) !=
        0)
        return rc;
    NEED(p->has_capabilities, "hello.capabilities");
    h->capabilities = p->capabilities;
    h->has_last_round = p->has_last_round_completed ? 1 : 0;
    h->last_round_completed = p->has_last_round_completed ? p->last_round_completed : 0;
    return 0;
}

static int from_task(const Plait__Task *p, plait_msg_task_t *t)
{
    int rc;
    NEED(p->has_round_id, "task.round_id");
    NEED(p->has_adapter_version, "task.adapter_version");
    NEED(p->has_adapter_len, "task.adapter_len");
    NEED(p->has_adapter_sha256, "task.adapter_sha256");
    t->round_id = p->round_id;
    t->adapter_version = p->adapter_version;
    t->adapter_len = p->adapter_len;
    if ((rc = copy_sha(&p->adapter_sha256, t->adapter_sha256, "task.adapter_sha256")) != 0)
        return rc;

    const Plait__LoraConfig *l = p->lora;
    NEED(l, "task.lora");
    NEED(l->has_rank, "task.lora.rank");
    NEED(l->has_alpha, "task.lora.alpha");
    NEED(l->has_targets, "task.lora.targets");
    NEED(l->has_mode, "task.lora.mode");
    NEED(l->has_a_seed, "task.lora.a_seed");
    t->lora.rank = l->rank;
    t->lora.alpha = l->alpha;
    t->lora.targets = l->targets;
    t->lora.mode = (plait_lora_mode_t)l->mode;
    t->lora.a_seed = l->a_seed;

    const Plait__TrainParams *tp = p->train;
    NEED(tp, "task.train");
    NEED(tp->has_local_steps, "task.train.local_steps");
    NEED(tp->has_batch, "task.train.batch");
    NEED(tp->has_seq_len, "task.train.seq_len");
    NEED(tp->has_lr, "task.train.lr");
    t->train.local_steps = tp->local_steps;
    t->train.batch = tp->batch;
    t->train.seq_len = tp->seq_len;
    t->train.lr = tp->lr;
    t->train.prox_mu = tp->has_prox_mu ? tp->prox_mu : 0.0;

    NEED(p->has_clip_norm, "task.clip_norm");
    NEED(p->has_quant_bits, "task.quant_bits");
    NEED(p->has_quant_range, "task.quant_range");
    NEED(p->has_secure_agg, "task.secure_agg");
    t->clip_norm = p->clip_norm;
    t->quant_bits = p->quant_bits;
    t->quant_range = p->quant_range;
    t->secure_agg = p->secure_agg ? 1 : 0;

    const Plait__DpParams *dp = p->dp;
    NEED(dp, "task.dp");
    NEED(dp->has_mode, "task.dp.mode");
    NEED(dp->has_noise_multiplier, "task.dp.noise_multiplier");
    t->dp.mode = (plait_dp_mode_t)dp->mode;
    t->dp.noise_multiplier = dp->noise_multiplier;
    if (dp->has_ddg_var_num) t->dp.ddg_var_num = dp->ddg_var_num;
    if (dp->has_ddg_var_den) t->dp.ddg_var_den = dp->ddg_var_den;

    NEED(p->has_deadline_s, "task.deadline_s");
    NEED(p->has_update_elements, "task.update_elements");
    NEED(p->has_example_cap, "task.example_cap");
    t->deadline_s = p->deadline_s;
    t->update_elements = p->update_elements;
    t->example_cap = p->example_cap;
    t->max_chunk_bytes = p->has_max_chunk_bytes ? p->max_chunk_bytes : 0;
    if (p->has_max_chunk_bytes && p->max_chunk_bytes == 0) return BAD("task.max_chunk_bytes: 0");
    t->clip_bit = p->has_clip_bit && p->clip_bit ? 1 : 0;
    if (p->secagg) {
        const Plait__SecAggParams *q = p->secagg;
        NEED(q->has_index, "task.secagg.index");
        NEED(q->has_n, "task.secagg.n");
        NEED(q->has_k, "task.secagg.k");
        NEED(q->has_t, "task.secagg.t");
        NEED(q->has_bits, "task.secagg.bits");
        NEED(q->has_graph_seed, "task.secagg.graph_seed");
        if (q->graph_seed.len != PLAIT_WIRE_SECAGG_SEED_LEN)
            return BAD("task.secagg.graph_seed: %zu bytes, want %d", q->graph_seed.len,
                       PLAIT_WIRE_SECAGG_SEED_LEN);
        t->has_secagg = 1;
        t->secagg.index = q->index;
        t->secagg.n = q->n;
        t->secagg.k = q->k;
        t->secagg.t = q->t;
        t->secagg.bits = q->bits;
        memcpy(t->secagg.graph_seed, q->graph_seed.data, PLAIT_WIRE_SECAGG_SEED_LEN);
    }
    return 0;
}

static int from_cbl(const Plait__ComeBackLater *p, plait_msg_come_back_later_t *c)
{
    NEED(p->has_retry_ms, "come_back_later.retry_ms");
    NEED(p->has_reason, "come_back_later.reason");
    c->retry_ms = p->retry_ms;
    c->reason = (plait_retry_reason_t)p->reason;
    return 0;
}

static int from_areq(const Plait__AdapterRequest *p, plait_msg_adapter_request_t *r)
{
    NEED(p->has_round_id, "adapter_request.round_id");
    NEED(p->has_version, "adapter_request.version");
    NEED(p->has_offset, "adapter_request.offset");
    r->round_id = p->round_id;
    r->version = p->version;
    r->offset = p->offset;
    return 0;
}

static int from_achunk(const Plait__AdapterChunk *p, plait_msg_adapter_chunk_t *c)
{
    NEED(p->has_version, "adapter_chunk.version");
    NEED(p->has_offset, "adapter_chunk.offset");
    NEED(p->has_total_len, "adapter_chunk.total_len");
    NEED(p->has_data, "adapter_chunk.data");
    c->version = p->version;
    c->offset = p->offset;
    c->total_len = p->total_len;
    c->data = p->data.data;
    c->len = p->data.len;
    c->has_sha256 = p->has_sha256 ? 1 : 0;
    if (p->has_sha256) return copy_sha(&p->sha256, c->sha256, "adapter_chunk.sha256");
    return 0;
}

static int from_uchunk(const Plait__UpdateChunk *p, plait_msg_update_chunk_t *c)
{
    NEED(p->has_round_id, "update_chunk.round_id");
    NEED(p->has_chunk_index, "update_chunk.chunk_index");
    NEED(p->has_offset, "update_chunk.offset");
    NEED(p->has_total_elements, "update_chunk.total_elements");
    NEED(p->n_words > 0, "update_chunk.words");
    c->round_id = p->round_id;
    c->chunk_index = p->chunk_index;
    c->offset = p->offset;
    c->total_elements = p->total_elements;
    c->words = p->words;
    c->n_words = p->n_words;
    return 0;
}

static int from_ack(const Plait__Ack *p, plait_msg_ack_t *a)
{
    NEED(p->has_round_id, "ack.round_id");
    NEED(p->has_kind, "ack.kind");
    NEED(p->has_elements, "ack.elements");
    a->round_id = p->round_id;
    a->kind = (plait_ack_kind_t)p->kind;
    a->elements = p->elements;
    return 0;
}

static int from_error(const Plait__Error *p, plait_msg_error_t *e, const plait_wire_limits_t *lim)
{
    NEED(p->has_code, "error.code");
    e->code = p->code;
    if (p->has_message) return copy_text(&p->message, e->message, lim->max_string, "error.message");
    e->message[0] = '\0';
    return 0;
}

static int from_ping(const Plait__Ping *p, plait_msg_ping_t *g, const char *field)
{
    NEED(p->has_nonce, field);
    g->nonce = p->nonce;
    return 0;
}

/* ---- secure aggregation: repeated sub-messages become plain arrays in m->priv_arr ---- */

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

static int from_decline(const Plait__Decline *p, plait_msg_decline_t *d)
{
    NEED(p->has_round_id, "decline.round_id");
    NEED(p->has_code, "decline.code");
    d->round_id = p->round_id;
    d->code = (plait_decline_code_t)p->code;
    return 0;
}

static int from_envelope(const Plait__Envelope *env, plait_msg_t *m, const plait_wire_limits_t *lim)
{
    switch (env->msg_case) {
    case PLAIT__ENVELOPE__MSG_HELLO:
        return from_hello(env->hello, &m->u.hello);
    case PLAIT__ENVELOPE__MSG_TASK:
        return from_task(env->task, &m->u.task);
    case PLAIT__ENVELOPE__MSG_COME_BACK_LATER:
        return from_cbl(env->come_back_later, &m->u.come_back_later);
    case PLAIT__ENVELOPE__MSG_ADAPTER_REQUEST:
        return from_areq(env->adapter_request, &m->u.adapter_request);
    case PLAIT__ENVELOPE__MSG_ADAPTER_CHUNK:
        return from_achunk(env->adapter_chunk, &m->u.adapter_chunk);
    case PLAIT__ENVELOPE__MSG_UPDATE_CHUNK:
        return from_uchunk(env->update_chunk, &m->u.update_chunk);
    case PLAIT__ENVELOPE__MSG_ACK:
        return from_ack(env->ack, &m->u.ack);
    case PLAIT__ENVELOPE__MSG_ERROR:
        return from_error(env->error, &m->u.error, lim);
    case PLAIT__ENVELOPE__MSG_PING:
        return from_ping(env->ping, &m->u.ping, "ping.nonce");
    case PLAIT__ENVELOPE__MSG_PONG:
        return from_ping(env->pong, &m->u.ping, "pong.nonce");
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
    case PLAIT__ENVELOPE__MSG_DECLINE:
        return from_decline(env->decline, &m->u.decline);
    default:
        return BAD("envelope: no message");
    }
}

int plait_wire_decode(const plait_frame_t *frame, const plait_wire_limits_t *lim, plait_msg_t *msg)
{
    plait_wire_limits_t tmp;
    if (!msg) return plait_fail(PLAIT_EINVAL, "wire decode: NULL message");
    memset(msg, 0, sizeof(*msg));
    if (!frame || (!frame->payload && frame->payload_len > 0))
        return plait_fail(PLAIT_EINVAL, "wire decode: NULL frame");
    if (!(lim = limits_or_default(lim, &tmp))) return PLAIT_EINVAL;
    if (frame->version != PLAIT_WIRE_VERSION) return BAD("frame: version %u", frame->version);
    if (!type_known((int)frame->type))
        return BAD("frame: unknown type %d", (int)frame->type);
    /* The frame limit is enforced before unpacking, whoever built the frame. */
    if (frame->payload_len > lim->max_frame - PLAIT_FRAME_HEADER)
        return plait_fail(PLAIT_ETOOBIG, "frame: payload %zu bytes above the frame limit",
                          frame->payload_len);

    budget_t b = {0, UNPACK_BUDGET(frame->payload_len), 0, 0};
    ProtobufCAllocator alloc = {budget_alloc, budget_free, &b};
    Plait__Envelope *env = plait__envelope__unpack(&alloc, frame->payload_len, frame->payload);
    if (!env) {
        if (b.over)
            return plait_fail(PLAIT_ETOOBIG, "frame: unpacking needs more than %zu bytes",
                              b.budget);
        if (b.nomem)
            return plait_fail(PLAIT_ENOMEM, "frame: unpacking %zu bytes", frame->payload_len);
        return BAD("%s: undecodable payload", plait_msg_type_name((int)frame->type));
    }
    int rc;
    if ((int)env->msg_case != (int)frame->type) {
        rc = BAD("envelope: holds %s in a %s frame", plait_msg_type_name((int)env->msg_case),
                 plait_msg_type_name((int)frame->type));
        goto fail;
    }
    msg->type = frame->type;
    if ((rc = from_envelope(env, msg, lim)) != 0) goto fail;
    if ((rc = validate(msg, lim)) != 0) goto fail;
    msg->priv = env; /* data/words point into it */
    return 0;
fail:
    plait__envelope__free_unpacked(env, &alloc);
    free(msg->priv_arr);
    memset(msg, 0, sizeof(*msg));
    return rc;
}

int plait_wire_parse(const uint8_t *buf, size_t len, const plait_wire_limits_t *lim, unsigned flags,
                     plait_msg_t *msg, size_t *consumed)
{
    plait_frame_t f;
    size_t used = 0;
    if (!msg || !consumed) return plait_fail(PLAIT_EINVAL, "wire parse: NULL output");
    memset(msg, 0, sizeof(*msg));
    *consumed = 0;
    int rc = plait_frame_decode(buf, len, lim, flags, &f, &used);
    if (rc != 0) return rc;
    if ((rc = plait_wire_decode(&f, lim, msg)) != 0) return rc;
    *consumed = used;
    return 0;
}

/* ---- encode: plain structs -> protobuf-c structs ------------------------ */

/* protobuf-c's structs hold non-const pointers; packing only reads them. */
static ProtobufCBinaryData bin(const void *p, size_t n)
{
    ProtobufCBinaryData b;
    b.len = n;
    b.data = (uint8_t *)(uintptr_t)p;
    return b;
}

/* Everything an Envelope may point to, on the caller's stack. */
typedef struct {
    Plait__Envelope env;
    Plait__Hello hello;
    Plait__Task task;
    Plait__LoraConfig lora;
    Plait__TrainParams train;
    Plait__DpParams dp;
    Plait__ComeBackLater cbl;
    Plait__AdapterRequest areq;
    Plait__AdapterChunk achunk;
    Plait__UpdateChunk uchunk;
    Plait__Ack ack;
    Plait__Error error;
    Plait__Ping ping;
    Plait__SecAggParams sa_params;
    Plait__SecAggAdvertise sa_adv;
    Plait__SecAggRoster sa_roster;
    Plait__SecAggShares sa_shares;
    Plait__SecAggRelay sa_relay;
    Plait__SecAggMaskedInput sa_masked;
    Plait__SecAggUnmaskRequest sa_ureq;
    Plait__SecAggUnmaskResponse sa_uresp;
    void *heap; /* sub-messages of repeated fields (SecAgg), freed by pb_release */
    Plait__Decline decline;
} pb_msg_t;

static void pb_release(pb_msg_t *pb)
{
    free(pb->heap);
    pb->heap = NULL;
}

/* n SecAggShare sub-messages and their pointer array in one block at *pos of pb->heap. */
static Plait__SecAggShare **to_shares(const plait_secagg_share_t *in, size_t n, uint8_t **pos)
{
    Plait__SecAggShare **ptrs = (Plait__SecAggShare **)(void *)*pos;
    Plait__SecAggShare *subs = (Plait__SecAggShare *)(void *)(*pos + n * sizeof(*ptrs));
    for (size_t i = 0; i < n; i++) {
        plait__sec_agg_share__init(&subs[i]);
        subs[i].has_peer = subs[i].has_data = 1;
        subs[i].peer = in[i].peer;
        subs[i].data = bin(in[i].data, in[i].len);
        ptrs[i] = &subs[i];
    }
    *pos += n * (sizeof(*ptrs) + sizeof(*subs));
    return n ? ptrs : NULL;
}

#define SHARE_BYTES (sizeof(Plait__SecAggShare *) + sizeof(Plait__SecAggShare))

/* The SecAgg part of to_envelope (the messages with repeated sub-messages allocate). */
static int to_envelope_secagg(const plait_msg_t *m, pb_msg_t *pb)
{
    uint8_t *pos;
    switch (m->type) {
    case PLAIT_MSG_SECAGG_ADVERTISE: {
        const plait_msg_secagg_advertise_t *a = &m->u.secagg_advertise;
        plait__sec_agg_advertise__init(&pb->sa_adv);
        pb->sa_adv.has_round_id = pb->sa_adv.has_mask_pk = pb->sa_adv.has_enc_pk = 1;
        pb->sa_adv.has_signature = 1;
        pb->sa_adv.round_id = a->round_id;
        pb->sa_adv.mask_pk = bin(a->mask_pk, PLAIT_WIRE_X25519_LEN);
        pb->sa_adv.enc_pk = bin(a->enc_pk, PLAIT_WIRE_X25519_LEN);
        pb->sa_adv.signature = bin(a->signature, a->sig_len);
        pb->sa_adv.has_device_cert = 1;
        pb->sa_adv.device_cert = bin(a->cert, a->cert_len);
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
                subs[i].device_cert = bin(q->cert, q->cert_len);
                subs[i].mask_pk = bin(q->mask_pk, PLAIT_WIRE_X25519_LEN);
                subs[i].enc_pk = bin(q->enc_pk, PLAIT_WIRE_X25519_LEN);
                subs[i].signature = bin(q->signature, q->sig_len);
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
        p->data = bin(c->data, c->len);
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

static int to_envelope(const plait_msg_t *m, pb_msg_t *pb)
{
    plait__envelope__init(&pb->env);
    switch (m->type) {
    case PLAIT_MSG_HELLO: {
        const plait_msg_hello_t *h = &m->u.hello;
        plait__hello__init(&pb->hello);
        pb->hello.has_client_version = 1;
        pb->hello.client_version =
            bin(h->client_version, strnlen(h->client_version, sizeof(h->client_version)));
        pb->hello.has_base_model_sha256 = 1;
        pb->hello.base_model_sha256 = bin(h->base_model_sha256, PLAIT_WIRE_SHA256_LEN);
        pb->hello.has_capabilities = 1;
        pb->hello.capabilities = h->capabilities;
        pb->hello.has_last_round_completed = h->has_last_round ? 1 : 0;
        pb->hello.last_round_completed = h->last_round_completed;
        pb->env.msg_case = PLAIT__ENVELOPE__MSG_HELLO;
        pb->env.hello = &pb->hello;
        break;
    }
    case PLAIT_MSG_TASK: {
        const plait_msg_task_t *t = &m->u.task;
        plait__task__init(&pb->task);
        plait__lora_config__init(&pb->lora);
        plait__train_params__init(&pb->train);
        plait__dp_params__init(&pb->dp);
        Plait__Task *p = &pb->task;
        p->has_round_id = p->has_adapter_version = p->has_adapter_len = p->has_adapter_sha256 = 1;
        p->round_id = t->round_id;
        p->adapter_version = t->adapter_version;
        p->adapter_len = t->adapter_len;
        p->adapter_sha256 = bin(t->adapter_sha256, PLAIT_WIRE_SHA256_LEN);
        pb->lora.has_rank = pb->lora.has_alpha = pb->lora.has_targets = pb->lora.has_mode =
            pb->lora.has_a_seed = 1;
        pb->lora.rank = t->lora.rank;
        pb->lora.alpha = t->lora.alpha;
        pb->lora.targets = t->lora.targets;
        pb->lora.mode = (Plait__LoraMode)t->lora.mode;
        pb->lora.a_seed = t->lora.a_seed;
        p->lora = &pb->lora;
        pb->train.has_local_steps = pb->train.has_batch = pb->train.has_seq_len = pb->train.has_lr =
            1;
        pb->train.local_steps = t->train.local_steps;
        pb->train.batch = t->train.batch;
        pb->train.seq_len = t->train.seq_len;
        pb->train.lr = t->train.lr;
        pb->train.has_prox_mu = t->train.prox_mu != 0.0; /* absent when off: older devices see the same task */
        pb->train.prox_mu = t->train.prox_mu;
        p->train = &pb->train;
        p->has_clip_norm = p->has_quant_bits = p->has_quant_range = p->has_secure_agg = 1;
        p->clip_norm = t->clip_norm;
        p->quant_bits = t->quant_bits;
        p->quant_range = t->quant_range;
        p->secure_agg = t->secure_agg ? 1 : 0;
        pb->dp.has_mode = pb->dp.has_noise_multiplier = 1;
        pb->dp.mode = (Plait__DpMode)t->dp.mode;
        pb->dp.noise_multiplier = t->dp.noise_multiplier;
        if (t->dp.mode == PLAIT_DP_DISTRIBUTED) {
            pb->dp.has_ddg_var_num = pb->dp.has_ddg_var_den = 1;
            pb->dp.ddg_var_num = t->dp.ddg_var_num;
            pb->dp.ddg_var_den = t->dp.ddg_var_den;
        }
        p->dp = &pb->dp;
        p->has_deadline_s = p->has_update_elements = p->has_example_cap = 1;
        p->deadline_s = t->deadline_s;
        p->update_elements = t->update_elements;
        p->example_cap = t->example_cap;
        p->has_max_chunk_bytes = t->max_chunk_bytes != 0;
        p->max_chunk_bytes = t->max_chunk_bytes;
        if (t->clip_bit) {
            p->has_clip_bit = 1;
            p->clip_bit = 1;
        }
        if (t->has_secagg) {
            Plait__SecAggParams *q = &pb->sa_params;
            plait__sec_agg_params__init(q);
            q->has_index = q->has_n = q->has_k = q->has_t = q->has_bits = q->has_graph_seed = 1;
            q->index = t->secagg.index;
            q->n = t->secagg.n;
            q->k = t->secagg.k;
            q->t = t->secagg.t;
            q->bits = t->secagg.bits;
            q->graph_seed = bin(t->secagg.graph_seed, PLAIT_WIRE_SECAGG_SEED_LEN);
            p->secagg = q;
        }
        pb->env.msg_case = PLAIT__ENVELOPE__MSG_TASK;
        pb->env.task = p;
        break;
    }
    case PLAIT_MSG_COME_BACK_LATER:
        plait__come_back_later__init(&pb->cbl);
        pb->cbl.has_retry_ms = pb->cbl.has_reason = 1;
        pb->cbl.retry_ms = m->u.come_back_later.retry_ms;
        pb->cbl.reason = (Plait__RetryReason)m->u.come_back_later.reason;
        pb->env.msg_case = PLAIT__ENVELOPE__MSG_COME_BACK_LATER;
        pb->env.come_back_later = &pb->cbl;
        break;
    case PLAIT_MSG_ADAPTER_REQUEST:
        plait__adapter_request__init(&pb->areq);
        pb->areq.has_round_id = pb->areq.has_version = pb->areq.has_offset = 1;
        pb->areq.round_id = m->u.adapter_request.round_id;
        pb->areq.version = m->u.adapter_request.version;
        pb->areq.offset = m->u.adapter_request.offset;
        pb->env.msg_case = PLAIT__ENVELOPE__MSG_ADAPTER_REQUEST;
        pb->env.adapter_request = &pb->areq;
        break;
    case PLAIT_MSG_ADAPTER_CHUNK: {
        const plait_msg_adapter_chunk_t *c = &m->u.adapter_chunk;
        plait__adapter_chunk__init(&pb->achunk);
        pb->achunk.has_version = pb->achunk.has_offset = pb->achunk.has_total_len =
            pb->achunk.has_data = 1;
        pb->achunk.version = c->version;
        pb->achunk.offset = c->offset;
        pb->achunk.total_len = c->total_len;
        pb->achunk.data = bin(c->data, c->len);
        pb->achunk.has_sha256 = c->has_sha256 ? 1 : 0;
        if (c->has_sha256) pb->achunk.sha256 = bin(c->sha256, PLAIT_WIRE_SHA256_LEN);
        pb->env.msg_case = PLAIT__ENVELOPE__MSG_ADAPTER_CHUNK;
        pb->env.adapter_chunk = &pb->achunk;
        break;
    }
    case PLAIT_MSG_UPDATE_CHUNK: {
        const plait_msg_update_chunk_t *c = &m->u.update_chunk;
        plait__update_chunk__init(&pb->uchunk);
        pb->uchunk.has_round_id = pb->uchunk.has_chunk_index = pb->uchunk.has_offset = 1;
        pb->uchunk.has_total_elements = 1;
        pb->uchunk.round_id = c->round_id;
        pb->uchunk.chunk_index = c->chunk_index;
        pb->uchunk.offset = c->offset;
        pb->uchunk.total_elements = c->total_elements;
        pb->uchunk.n_words = c->n_words;
        pb->uchunk.words = (uint32_t *)(uintptr_t)c->words;
        pb->env.msg_case = PLAIT__ENVELOPE__MSG_UPDATE_CHUNK;
        pb->env.update_chunk = &pb->uchunk;
        break;
    }
    case PLAIT_MSG_ACK:
        plait__ack__init(&pb->ack);
        pb->ack.has_round_id = pb->ack.has_kind = pb->ack.has_elements = 1;
        pb->ack.round_id = m->u.ack.round_id;
        pb->ack.kind = (Plait__AckKind)m->u.ack.kind;
        pb->ack.elements = m->u.ack.elements;
        pb->env.msg_case = PLAIT__ENVELOPE__MSG_ACK;
        pb->env.ack = &pb->ack;
        break;
    case PLAIT_MSG_ERROR: {
        const plait_msg_error_t *e = &m->u.error;
        size_t n = strnlen(e->message, sizeof(e->message));
        plait__error__init(&pb->error);
        pb->error.has_code = 1;
        pb->error.code = e->code;
        pb->error.has_message = n > 0;
        pb->error.message = bin(e->message, n);
        pb->env.msg_case = PLAIT__ENVELOPE__MSG_ERROR;
        pb->env.error = &pb->error;
        break;
    }
    case PLAIT_MSG_PING:
    case PLAIT_MSG_PONG:
        plait__ping__init(&pb->ping);
        pb->ping.has_nonce = 1;
        pb->ping.nonce = m->u.ping.nonce;
        if (m->type == PLAIT_MSG_PING) {
            pb->env.msg_case = PLAIT__ENVELOPE__MSG_PING;
            pb->env.ping = &pb->ping;
        } else {
            pb->env.msg_case = PLAIT__ENVELOPE__MSG_PONG;
            pb->env.pong = &pb->ping;
        }
        break;
    case PLAIT_MSG_DECLINE:
        plait__decline__init(&pb->decline);
        pb->decline.has_round_id = pb->decline.has_code = 1;
        pb->decline.round_id = m->u.decline.round_id;
        pb->decline.code = (Plait__DeclineCode)m->u.decline.code;
        pb->env.msg_case = PLAIT__ENVELOPE__MSG_DECLINE;
        pb->env.decline = &pb->decline;
        break;
    default:
        return to_envelope_secagg(m, pb);
    }
    return 0;
}

/* Validate m and fill pb; *frame_len is the whole frame's size. */
static int prepare(const plait_msg_t *m, const plait_wire_limits_t *lim, pb_msg_t *pb,
                   size_t *frame_len)
{
    plait_wire_limits_t tmp;
    if (!m) return plait_fail(PLAIT_EINVAL, "wire encode: NULL message");
    if (!(lim = limits_or_default(lim, &tmp))) return PLAIT_EINVAL;
    int rc = validate(m, lim);
    if (rc != 0) return rc;
    if ((rc = to_envelope(m, pb)) != 0) return rc;
    size_t payload = plait__envelope__get_packed_size(&pb->env);
    if (payload > lim->max_frame - PLAIT_FRAME_HEADER)
        return plait_fail(PLAIT_ETOOBIG, "%s: frame of %zu bytes above the limit %zu",
                          plait_msg_type_name((int)m->type), payload + PLAIT_FRAME_HEADER,
                          lim->max_frame);
    *frame_len = payload + PLAIT_FRAME_HEADER;
    return 0;
}

int plait_wire_encoded_size(const plait_msg_t *m, const plait_wire_limits_t *lim, size_t *len)
{
    pb_msg_t pb;
    if (!len) return plait_fail(PLAIT_EINVAL, "wire encode: NULL length");
    *len = 0;
    pb.heap = NULL;
    int rc = prepare(m, lim, &pb, len);
    pb_release(&pb);
    if (rc != 0) *len = 0;
    return rc;
}

int plait_wire_encode(const plait_msg_t *m, const plait_wire_limits_t *lim, uint8_t *out,
                      size_t cap, size_t *len)
{
    pb_msg_t pb;
    size_t n = 0;
    if (!len || (!out && cap > 0)) return plait_fail(PLAIT_EINVAL, "wire encode: NULL output");
    *len = 0;
    pb.heap = NULL;
    int rc = prepare(m, lim, &pb, &n);
    if (rc == 0 && n > cap)
        rc = plait_fail(PLAIT_ETOOBIG, "wire encode: %zu bytes do not fit in %zu", n, cap);
    if (rc != 0) {
        pb_release(&pb);
        return rc;
    }
    store_be32(out, (uint32_t)(n - 4));
    out[4] = PLAIT_WIRE_VERSION;
    out[5] = (uint8_t)m->type;
    size_t packed = plait__envelope__pack(&pb.env, out + PLAIT_FRAME_HEADER);
    pb_release(&pb);
    PLAIT_ASSERT(packed == n - PLAIT_FRAME_HEADER);
    *len = n;
    return 0;
}

int plait_wire_encode_alloc(const plait_msg_t *m, const plait_wire_limits_t *lim, uint8_t **out,
                            size_t *len)
{
    size_t n = 0;
    if (!out || !len) return plait_fail(PLAIT_EINVAL, "wire encode: NULL output");
    *out = NULL;
    *len = 0;
    int rc = plait_wire_encoded_size(m, lim, &n);
    if (rc != 0) return rc;
    uint8_t *buf = malloc(n);
    if (!buf) return plait_fail(PLAIT_ENOMEM, "wire encode: %zu bytes", n);
    if ((rc = plait_wire_encode(m, lim, buf, n, len)) != 0) {
        free(buf);
        return rc;
    }
    *out = buf;
    return 0;
}

/* ---- chunked transfers ---------------------------------------------------- */

void plait_wire_xfer_init(plait_wire_xfer_t *x, uint64_t id, uint64_t total, uint64_t offset)
{
    memset(x, 0, sizeof(*x));
    x->id = id;
    x->total = total;
    x->next = offset;
}

int plait_wire_update_tx_next(plait_wire_xfer_t *x, const plait_wire_limits_t *lim,
                              const uint32_t *words, plait_msg_t *out)
{
    plait_wire_limits_t tmp;
    if (!x || !words || !out) return plait_fail(PLAIT_EINVAL, "update tx: NULL argument");
    if (!(lim = limits_or_default(lim, &tmp))) return PLAIT_EINVAL;
    if (x->total < 1 || x->total > lim->max_update_elements || x->next > x->total)
        return plait_fail(PLAIT_EINVAL, "update tx: total %llu, offset %llu",
                          (unsigned long long)x->total, (unsigned long long)x->next);
    if (x->next == x->total) return 0;
    uint64_t n = x->total - x->next;
    uint64_t cap = lim->max_chunk_bytes / 4;
    if (n > cap) n = cap;
    plait_msg_init(out, PLAIT_MSG_UPDATE_CHUNK);
    plait_msg_update_chunk_t *c = &out->u.update_chunk;
    c->round_id = x->id;
    c->chunk_index = x->index;
    c->offset = x->next;
    c->total_elements = x->total;
    c->words = words + x->next;
    c->n_words = (size_t)n;
    x->next += n;
    x->index++;
    return 1;
}

int plait_wire_update_rx_add(plait_wire_xfer_t *x, const plait_msg_update_chunk_t *c, uint32_t *dst)
{
    if (!x || !c || !dst || !c->words) return plait_fail(PLAIT_EINVAL, "update rx: NULL argument");
    if (c->round_id != x->id)
        return plait_fail(PLAIT_ESTALE, "update_chunk.round_id: %llu, the upload is for round %llu",
                          (unsigned long long)c->round_id, (unsigned long long)x->id);
    if (c->total_elements != x->total)
        return plait_fail(PLAIT_EMISMATCH, "update_chunk.total_elements: %llu, the task has %llu",
                          (unsigned long long)c->total_elements, (unsigned long long)x->total);
    if (x->next >= x->total)
        return plait_fail(PLAIT_EMISMATCH, "update_chunk: the upload is already complete");
    if (c->offset != x->next || c->chunk_index != x->index)
        return plait_fail(
            PLAIT_EMISMATCH, "update_chunk: chunk %u at offset %llu, expected chunk %u at %llu",
            c->chunk_index, (unsigned long long)c->offset, x->index, (unsigned long long)x->next);
    if (c->n_words > x->total - c->offset)
        return plait_fail(PLAIT_EMISMATCH, "update_chunk.words: past total_elements");
    memcpy(dst + c->offset, c->words, c->n_words * sizeof(uint32_t));
    x->next += c->n_words;
    x->index++;
    return x->next == x->total ? 1 : 0;
}

int plait_wire_adapter_tx_next(plait_wire_xfer_t *x, const plait_wire_limits_t *lim,
                               const uint8_t *blob, const uint8_t sha256[PLAIT_WIRE_SHA256_LEN],
                               plait_msg_t *out)
{
    plait_wire_limits_t tmp;
    if (!x || !blob || !sha256 || !out)
        return plait_fail(PLAIT_EINVAL, "adapter tx: NULL argument");
    if (!(lim = limits_or_default(lim, &tmp))) return PLAIT_EINVAL;
    if (x->total < 1 || x->total > lim->max_adapter_bytes || x->next > x->total)
        return plait_fail(PLAIT_EINVAL, "adapter tx: total %llu, offset %llu",
                          (unsigned long long)x->total, (unsigned long long)x->next);
    if (x->next == x->total) return 0;
    uint64_t n = x->total - x->next;
    if (n > lim->max_chunk_bytes) n = lim->max_chunk_bytes;
    plait_msg_init(out, PLAIT_MSG_ADAPTER_CHUNK);
    plait_msg_adapter_chunk_t *c = &out->u.adapter_chunk;
    c->version = x->id;
    c->offset = x->next;
    c->total_len = x->total;
    c->data = blob + x->next;
    c->len = (size_t)n;
    x->next += n;
    x->index++;
    if (x->next == x->total) {
        c->has_sha256 = 1;
        memcpy(c->sha256, sha256, PLAIT_WIRE_SHA256_LEN);
    }
    return 1;
}

int plait_wire_adapter_rx_add(plait_wire_xfer_t *x, const plait_msg_adapter_chunk_t *c,
                              const uint8_t expected_sha256[PLAIT_WIRE_SHA256_LEN], uint8_t *dst)
{
    if (!x || !c || !expected_sha256 || !dst || !c->data)
        return plait_fail(PLAIT_EINVAL, "adapter rx: NULL argument");
    if (c->version != x->id)
        return plait_fail(PLAIT_EMISMATCH, "adapter_chunk.version: %llu, requested %llu",
                          (unsigned long long)c->version, (unsigned long long)x->id);
    if (c->total_len != x->total)
        return plait_fail(PLAIT_EMISMATCH, "adapter_chunk.total_len: %llu, the task has %llu",
                          (unsigned long long)c->total_len, (unsigned long long)x->total);
    if (x->next >= x->total)
        return plait_fail(PLAIT_EMISMATCH, "adapter_chunk: the download is already complete");
    if (c->offset != x->next)
        return plait_fail(PLAIT_EMISMATCH, "adapter_chunk.offset: %llu, expected %llu",
                          (unsigned long long)c->offset, (unsigned long long)x->next);
    if (c->len > x->total - c->offset)
        return plait_fail(PLAIT_EMISMATCH, "adapter_chunk.data: past total_len");
    int last = c->len == x->total - c->offset;
    if (last && (!c->has_sha256 || memcmp(c->sha256, expected_sha256, PLAIT_WIRE_SHA256_LEN) != 0))
        return plait_fail(PLAIT_EMISMATCH, "adapter_chunk.sha256: not the task's adapter hash");
    memcpy(dst + c->offset, c->data, c->len);
    x->next += c->len;
    x->index++;
    return last ? 1 : 0;
}

/* ---- masked (secure-aggregation) uploads ---------------------------------- */

int plait_wire_masked_tx_next(plait_wire_xfer_t *x, const plait_wire_limits_t *lim,
                              const uint8_t *packed, unsigned bits, plait_msg_t *out)
{
    plait_wire_limits_t tmp;
    if (!x || !packed || !out) return plait_fail(PLAIT_EINVAL, "masked tx: NULL argument");
    if (!(lim = limits_or_default(lim, &tmp))) return PLAIT_EINVAL;
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
