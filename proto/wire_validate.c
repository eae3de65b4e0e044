/*
 * wire_validate.c: every field limit of every message, checked on the plain
 * C structs of include/plait/wire.h; one validator serves both directions
 * (the decoder runs it after converting, the encoder before packing).
 *
 * Each message has a rule table: one row per field, in the order the fields
 * are checked, naming the field as the error prints it, its kind (nonzero,
 * an unsigned range, a finite positive float, a 0/1 flag, an enum value, a
 * byte length, a pointer that must be set, a chunk index against its offset,
 * a list of SecAgg+ shares or indices) and its bounds, a constant or one of
 * plait_wire_limits_t. One loop walks the table and stops at the first bad
 * field. What does not fit one field (the DP mode's cases, SecAgg+
 * parameters against each other, roster peers, text) is a CHECK row: a
 * function at its place in the order. The first failure is the one reported, so the order of the rows is
 * part of the behaviour; the messages are listed in docs/protocol.md.
 */
#include <math.h>
#include <stddef.h>
#include <string.h>

#include "plait/secagg.h"
#include "plait/update.h"
#include "wire_int.h"

/* ---- the rule table and its loop ----------------------------------------- */

typedef enum {
    K_NONZERO,     /* unsigned integer, not 0: "<f>: 0" */
    K_RANGE,       /* unsigned integer in lo..hi: "<f>: <v> outside <lo>..<hi>" */
    K_POSITIVE,    /* float or double, finite and > 0: "<f>: not finite and > 0" */
    K_UNIT,        /* double, finite and in (0, 1]: "<f>: not in (0, 1]" */
    K_FLAG,        /* int 0 or 1: "<f>: not 0 or 1" */
    K_ENUM,        /* int v with bit v of hi set: "<f>: unknown value <v>" */
    K_LEN,         /* size_t in lo..hi, and the pointer at off2 set when has_ptr:
                      "<f>: <n> bytes outside <lo>..<hi>" */
    K_PRESENT,     /* pointer set: "<f>: missing" */
    K_CHUNK_INDEX, /* u32 chunk index at off against the u64 offset at off2: 0 exactly at
                      offset 0, and never above the offset */
    K_SHARES,      /* size_t count at off of the shares at off2: lo..PLAIT_WIRE_SECAGG_MAX_PEERS,
                      peers strictly ascending in 1..PLAIT_WIRE_SECAGG_MAX_COHORT, data set
                      and 1..PLAIT_WIRE_SECAGG_MAX_SHARE bytes */
    K_INDICES,     /* size_t count at off of the u32 indices at off2: lo..MAX_COHORT of them,
                      strictly ascending in 1..PLAIT_WIRE_SECAGG_MAX_COHORT */
    K_CHECK        /* check(msg, lim) */
} kind_t;

/* Where a rule's upper bound comes from. */
typedef enum {
    L_CONST, /* the rule's hi */
    L_ADAPTER_BYTES,
    L_UPDATE_ELEMENTS,
    L_DEADLINE_S,
    L_RETRY_MS,
    L_CHUNK_BYTES
} limit_t;

typedef int (*check_fn)(const void *msg, const plait_wire_limits_t *lim);

typedef struct {
    const char *name; /* as errors print it: "<message>.<field>" */
    kind_t kind;
    limit_t hi_lim;
    size_t off;  /* of the field in the message struct */
    size_t size; /* of the field: 4 or 8 */
    size_t off2; /* K_LEN: the data pointer (has_ptr); K_CHUNK_INDEX: the offset;
                    K_SHARES, K_INDICES: the array */
    int has_ptr;
    uint64_t lo, hi;
    check_fn check;
} rule_t;

typedef struct {
    const rule_t *rules;
    size_t n;
    int defined; /* 0: not a message type of this build */
} msg_rules_t;

#define AT(T, f) .off = offsetof(T, f), .size = sizeof(((T *)0)->f)
#define NONZERO(T, f, nm) {.name = nm, .kind = K_NONZERO, AT(T, f)}
#define RANGE(T, f, nm, lo_, hi_) {.name = nm, .kind = K_RANGE, AT(T, f), .lo = lo_, .hi = hi_}
#define RANGE_LIM(T, f, nm, lo_, lim_)                                                             \
    {.name = nm, .kind = K_RANGE, AT(T, f), .lo = lo_, .hi_lim = lim_}
#define POSITIVE(T, f, nm) {.name = nm, .kind = K_POSITIVE, AT(T, f)}
#define UNIT(T, f, nm) {.name = nm, .kind = K_UNIT, AT(T, f)}
#define FLAG(T, f, nm) {.name = nm, .kind = K_FLAG, AT(T, f)}
#define ENUM(T, f, nm, mask) {.name = nm, .kind = K_ENUM, AT(T, f), .hi = mask}
#define LEN_LIM(T, f, nm, lo_, lim_)                                                               \
    {.name = nm, .kind = K_LEN, AT(T, f), .lo = lo_, .hi_lim = lim_}
#define BYTES(T, p, f, nm, lo_, hi_)                                                               \
    {.name = nm, .kind = K_LEN, AT(T, f), .off2 = offsetof(T, p), .has_ptr = 1, .lo = lo_,         \
     .hi = hi_}
#define PRESENT(T, f, nm) {.name = nm, .kind = K_PRESENT, AT(T, f)}
#define CHUNK_INDEX(T, nm)                                                                         \
    {.name = nm, .kind = K_CHUNK_INDEX, AT(T, chunk_index), .off2 = offsetof(T, offset)}
#define SHARES(T, p, f, nm, min)                                                                  \
    {.name = nm, .kind = K_SHARES, AT(T, f), .off2 = offsetof(T, p), .lo = min}
#define INDICES(T, p, f, nm, min)                                                                 \
    {.name = nm, .kind = K_INDICES, AT(T, f), .off2 = offsetof(T, p), .lo = min}
#define CHECK(nm, fn) {.name = nm, .kind = K_CHECK, .check = fn}

#define BIT(v) ((uint64_t)1 << (v))

/* K_FLAG and K_ENUM read an int; K_RANGE and K_LEN read 4 or 8 bytes. */
_Static_assert(sizeof(plait_lora_mode_t) == sizeof(int) && sizeof(plait_retry_reason_t) == sizeof(int) &&
                   sizeof(plait_ack_kind_t) == sizeof(int) && sizeof(plait_decline_code_t) == sizeof(int) &&
                   sizeof(plait_task_kind_t) == sizeof(int) && sizeof(plait_adapter_encoding_t) == sizeof(int),
               "enum fields are read as int");
_Static_assert(sizeof(size_t) == 4 || sizeof(size_t) == 8, "size_t fields are read as 4 or 8 bytes");

static uint64_t get_uint(const uint8_t *p, size_t size)
{
    if (size == sizeof(uint64_t)) {
        uint64_t v;
        memcpy(&v, p, sizeof(v));
        return v;
    }
    uint32_t v;
    memcpy(&v, p, sizeof(v));
    return v;
}

static double get_real(const uint8_t *p, size_t size)
{
    if (size == sizeof(float)) {
        float v;
        memcpy(&v, p, sizeof(v));
        return (double)v;
    }
    double v;
    memcpy(&v, p, sizeof(v));
    return v;
}

static int get_int(const uint8_t *p)
{
    int v;
    memcpy(&v, p, sizeof(v));
    return v;
}

static const void *get_ptr(const uint8_t *p)
{
    const void *v;
    memcpy(&v, p, sizeof(v));
    return v;
}

static uint64_t upper(const rule_t *r, const plait_wire_limits_t *lim)
{
    switch (r->hi_lim) {
    case L_ADAPTER_BYTES:
        return lim->max_adapter_bytes;
    case L_UPDATE_ELEMENTS:
        return lim->max_update_elements;
    case L_DEADLINE_S:
        return lim->max_deadline_s;
    case L_RETRY_MS:
        return lim->max_retry_ms;
    case L_CHUNK_BYTES:
        return lim->max_chunk_bytes;
    case L_CONST:
        break;
    }
    return r->hi;
}

static int finite_pos(double x)
{
    return isfinite(x) && x > 0.0;
}

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

static int check_rule(const rule_t *r, const void *msg, const plait_wire_limits_t *lim)
{
    const uint8_t *p = (const uint8_t *)msg + r->off;
    switch (r->kind) {
    case K_NONZERO:
        if (get_uint(p, r->size) == 0) return BAD("%s: 0", r->name);
        return 0;
    case K_RANGE: {
        uint64_t v = get_uint(p, r->size), hi = upper(r, lim);
        if (v < r->lo || v > hi)
            return BAD("%s: %llu outside %llu..%llu", r->name, (unsigned long long)v,
                       (unsigned long long)r->lo, (unsigned long long)hi);
        return 0;
    }
    case K_POSITIVE:
        if (!finite_pos(get_real(p, r->size))) return BAD("%s: not finite and > 0", r->name);
        return 0;
    case K_UNIT: {
        double v = get_real(p, r->size);
        if (!finite_pos(v) || v > 1.0) return BAD("%s: not in (0, 1]", r->name);
        return 0;
    }
    case K_FLAG: {
        int v = get_int(p);
        if (v != 0 && v != 1) return BAD("%s: not 0 or 1", r->name);
        return 0;
    }
    case K_ENUM: {
        int v = get_int(p);
        if (v < 0 || v >= 64 || !(r->hi & BIT(v))) return BAD("%s: unknown value %d", r->name, v);
        return 0;
    }
    case K_LEN: {
        uint64_t n = get_uint(p, r->size), hi = upper(r, lim);
        if (n < r->lo || n > hi || (r->has_ptr && !get_ptr((const uint8_t *)msg + r->off2)))
            return BAD("%s: %llu bytes outside %llu..%llu", r->name, (unsigned long long)n,
                       (unsigned long long)r->lo, (unsigned long long)hi);
        return 0;
    }
    case K_PRESENT:
        if (!get_ptr(p)) return BAD("%s: missing", r->name);
        return 0;
    case K_CHUNK_INDEX: {
        uint64_t index = get_uint(p, r->size);
        uint64_t offset = get_uint((const uint8_t *)msg + r->off2, sizeof(uint64_t));
        if ((index == 0) != (offset == 0))
            return BAD("%s: %llu with offset %llu (0 exactly at offset 0)", r->name,
                       (unsigned long long)index, (unsigned long long)offset);
        if (index > offset)
            return BAD("%s: %llu exceeds offset %llu", r->name, (unsigned long long)index,
                       (unsigned long long)offset);
        return 0;
    }
    case K_SHARES:
        return check_shares(get_ptr((const uint8_t *)msg + r->off2), (size_t)get_uint(p, r->size),
                            (size_t)r->lo, r->name);
    case K_INDICES:
        return check_indices(get_ptr((const uint8_t *)msg + r->off2), (size_t)get_uint(p, r->size),
                             (size_t)r->lo, r->name);
    case K_CHECK:
        return r->check(msg, lim);
    }
    return plait_fail(PLAIT_EINVAL, "%s: unknown rule", r->name);
}

/* ---- checks that span fields ---------------------------------------------- */

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

static int check_client_version(const void *msg, const plait_wire_limits_t *lim)
{
    const plait_msg_hello_t *h = msg;
    (void)lim;
    size_t n = strnlen(h->client_version, sizeof(h->client_version));
    if (n == 0 || n > PLAIT_WIRE_MAX_CLIENT_VERSION)
        return BAD("hello.client_version: length %zu outside 1..%d", n,
                   PLAIT_WIRE_MAX_CLIENT_VERSION);
    if (!printable_ascii(h->client_version, n))
        return BAD("hello.client_version: not printable ASCII");
    return 0;
}

static int check_prox_mu(const void *msg, const plait_wire_limits_t *lim)
{
    const plait_msg_task_t *t = msg;
    (void)lim;
    if (!(t->train.prox_mu >= 0.0 && t->train.prox_mu <= 1e4)) return BAD("task.train.prox_mu: not in [0, 10000]");
    return 0;
}

static int check_targets(const void *msg, const plait_wire_limits_t *lim)
{
    const plait_msg_task_t *t = msg;
    (void)lim;
    if (t->lora.targets == 0 || t->lora.targets >= (1u << PLAIT_WIRE_NPROJ))
        return BAD("task.lora.targets: 0x%x not a nonzero mask below 0x%x", t->lora.targets,
                   1u << PLAIT_WIRE_NPROJ);
    return 0;
}

static int check_task_dp(const void *msg, const plait_wire_limits_t *lim)
{
    const plait_msg_task_t *t = msg;
    (void)lim;
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
    return 0;
}

static int check_task_chunk(const void *msg, const plait_wire_limits_t *lim)
{
    const plait_msg_task_t *t = msg;
    (void)lim;
    if (t->max_chunk_bytes != 0 && t->max_chunk_bytes < 4)
        return BAD("task.max_chunk_bytes: %u below 4", t->max_chunk_bytes);
    return 0;
}

static int check_task_packed(const void *msg, const plait_wire_limits_t *lim)
{
    const plait_msg_task_t *t = msg;
    (void)lim;
    if (t->packed_update && t->secure_agg)
        return BAD("task.packed_update: set in a secure round (masked input is always packed)");
    return 0;
}

static int check_task_clip_bit(const void *msg, const plait_wire_limits_t *lim)
{
    const plait_msg_task_t *t = msg;
    (void)lim;
    if (t->clip_bit && t->update_elements < 3)
        return BAD("task.update_elements: the clip bit needs at least 3");
    return 0;
}

/* Task.kind and eval_loss_max: an evaluation task uploads exactly the two metric words. */
static int check_task_eval(const void *msg, const plait_wire_limits_t *lim)
{
    const plait_msg_task_t *t = msg;
    (void)lim;
    if (t->kind == PLAIT_TASK_TRAIN) {
        if (t->eval_loss_max != 0.0) return BAD("task.eval_loss_max: set in a training task");
        return 0;
    }
    if (!finite_pos(t->eval_loss_max) || t->eval_loss_max > PLAIT_WIRE_MAX_EVAL_LOSS)
        return BAD("task.eval_loss_max: not finite and in (0, %g]", PLAIT_WIRE_MAX_EVAL_LOSS);
    if (t->update_elements != PLAIT_WIRE_EVAL_WORDS)
        return BAD("task.update_elements: an evaluation task uploads %u words, not %llu", PLAIT_WIRE_EVAL_WORDS,
                   (unsigned long long)t->update_elements);
    return 0;
}

/* Task.secagg: present exactly with secure_agg; m wide enough for the quantized words. */
static int check_task_secagg(const void *msg, const plait_wire_limits_t *lim)
{
    const plait_msg_task_t *t = msg;
    (void)lim;
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

static int check_areq_offset(const void *msg, const plait_wire_limits_t *lim)
{
    const plait_msg_adapter_request_t *r = msg;
    if (r->offset >= lim->max_adapter_bytes)
        return BAD("adapter_request.offset: %llu not below max_adapter_bytes",
                   (unsigned long long)r->offset);
    if (r->offset != 0 && (r->accept != 0 || r->has_base))
        return BAD("adapter_request.accept: encodings other than FULL only with offset 0 (offset %llu)",
                   (unsigned long long)r->offset);
    if (r->has_base && !(r->accept & (1u << PLAIT_ADAPTER_DELTA)))
        return BAD("adapter_request.base_sha256: set without the DELTA bit in accept");
    return 0;
}

static int check_achunk_span(const void *msg, const plait_wire_limits_t *lim)
{
    const plait_msg_adapter_chunk_t *c = msg;
    (void)lim;
    if (c->offset > c->total_len || c->len > c->total_len - c->offset)
        return BAD("adapter_chunk.offset: %llu + %zu bytes exceeds total_len %llu",
                   (unsigned long long)c->offset, c->len, (unsigned long long)c->total_len);
    int last = c->len == c->total_len - c->offset;
    if (last && !c->has_sha256) return BAD("adapter_chunk.sha256: missing in the last chunk");
    if (!last && c->has_sha256) return BAD("adapter_chunk.sha256: only the last chunk carries it");
    return 0;
}

static int check_uchunk_span(const void *msg, const plait_wire_limits_t *lim)
{
    const plait_msg_update_chunk_t *c = msg;
    (void)lim;
    if (c->offset > c->total_elements || c->n_words > c->total_elements - c->offset)
        return BAD("update_chunk.offset: %llu + %zu words exceeds total_elements %llu",
                   (unsigned long long)c->offset, c->n_words,
                   (unsigned long long)c->total_elements);
    return 0;
}

/* Exactly one form (decode refuses both; encode checks it here). The packed
 * form: bits 8..32, 1..max_chunk_bytes bytes, exactly
 * plait_pack_bits_len(count, bits) of them, the last byte's padding bits
 * zero (one encoding per chunk). Every unpacked value is then below 2^bits. */
static int check_uchunk_form(const void *msg, const plait_wire_limits_t *lim)
{
    const plait_msg_update_chunk_t *c = msg;
    if (c->words != NULL) {
        if (c->packed != NULL || c->packed_len != 0 || c->bits != 0)
            return BAD("update_chunk: both words and packed");
        if (c->n_words < 1 || c->n_words > lim->max_chunk_bytes / 4)
            return BAD("update_chunk.words: %zu outside 1..%zu", c->n_words, lim->max_chunk_bytes / 4);
        return 0;
    }
    if (c->packed == NULL) return BAD("update_chunk.words: neither words nor packed");
    if (c->bits < PLAIT_QUANT_MIN_BITS || c->bits > PLAIT_QUANT_MAX_BITS)
        return BAD("update_chunk.bits: %u outside %d..%d", c->bits, PLAIT_QUANT_MIN_BITS,
                   PLAIT_QUANT_MAX_BITS);
    if (c->packed_len < 1 || c->packed_len > lim->max_chunk_bytes)
        return BAD("update_chunk.packed: %zu bytes outside 1..%zu", c->packed_len, lim->max_chunk_bytes);
    if (c->n_words < 1 || c->n_words > (size_t)lim->max_chunk_bytes * 8 / c->bits)
        return BAD("update_chunk.count: %zu values outside 1..%zu", c->n_words,
                   (size_t)lim->max_chunk_bytes * 8 / c->bits);
    size_t need = plait_pack_bits_len(c->n_words, c->bits);
    if (c->packed_len != need)
        return BAD("update_chunk.packed: %zu bytes for %zu values of %u bits (want %zu)", c->packed_len,
                   c->n_words, c->bits, need);
    unsigned used = (unsigned)((c->n_words * c->bits) % 8);
    if (used != 0 && (c->packed[c->packed_len - 1] >> used) != 0)
        return BAD("update_chunk.packed: nonzero padding bits");
    return 0;
}

static int check_error_code(const void *msg, const plait_wire_limits_t *lim)
{
    const plait_msg_error_t *e = msg;
    (void)lim;
    if (e->code >= 0 || e->code < -32768)
        return BAD("error.code: %d not a negative PLAIT_E* code", e->code);
    return 0;
}

static int check_error_message(const void *msg, const plait_wire_limits_t *lim)
{
    const plait_msg_error_t *e = msg;
    size_t n = strnlen(e->message, sizeof(e->message));
    if (n > lim->max_string) return BAD("error.message: %zu bytes above %zu", n, lim->max_string);
    if (!no_controls(e->message, n)) return BAD("error.message: control character");
    return 0;
}

/* ---- secure aggregation ---- */

static int check_roster_peers(const void *msg, const plait_wire_limits_t *lim)
{
    const plait_msg_secagg_roster_t *r = msg;
    (void)lim;
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
        if (p->sig_len < 1 || p->sig_len > PLAIT_WIRE_SECAGG_MAX_SIG || !p->signature)
            return BAD("secagg_roster.peers[].signature: %zu bytes outside 1..%d", p->sig_len,
                       PLAIT_WIRE_SECAGG_MAX_SIG);
    }
    return 0;
}

static int check_masked_span(const void *msg, const plait_wire_limits_t *lim)
{
    const plait_msg_secagg_masked_input_t *c = msg;
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
    return 0;
}

/* ---- the tables: one row per field, in checking order --------------------- */

#define TK plait_msg_task_t
static const rule_t task_rules[] = {
    NONZERO(TK, round_id, "task.round_id"),
    RANGE_LIM(TK, adapter_len, "task.adapter_len", 1, L_ADAPTER_BYTES),
    RANGE(TK, lora.rank, "task.lora.rank", 1, PLAIT_WIRE_MAX_RANK),
    POSITIVE(TK, lora.alpha, "task.lora.alpha"),
    CHECK("task.lora.targets", check_targets),
    ENUM(TK, lora.mode, "task.lora.mode",
         BIT(PLAIT_LORA_MODE_FFA) | BIT(PLAIT_LORA_MODE_FEDIT) | BIT(PLAIT_LORA_MODE_FEDSA)),
    RANGE(TK, train.local_steps, "task.train.local_steps", 1, PLAIT_WIRE_MAX_LOCAL_STEPS),
    RANGE(TK, train.batch, "task.train.batch", 1, PLAIT_WIRE_MAX_BATCH),
    RANGE(TK, train.seq_len, "task.train.seq_len", 1, PLAIT_WIRE_MAX_SEQ_LEN),
    UNIT(TK, train.lr, "task.train.lr"),
    CHECK("task.train.prox_mu", check_prox_mu),
    POSITIVE(TK, clip_norm, "task.clip_norm"),
    RANGE(TK, quant_bits, "task.quant_bits", PLAIT_QUANT_MIN_BITS, PLAIT_QUANT_MAX_BITS),
    POSITIVE(TK, quant_range, "task.quant_range"),
    FLAG(TK, secure_agg, "task.secure_agg"),
    CHECK("task.dp", check_task_dp),
    RANGE_LIM(TK, deadline_s, "task.deadline_s", 1, L_DEADLINE_S),
    RANGE_LIM(TK, update_elements, "task.update_elements", 2, L_UPDATE_ELEMENTS),
    NONZERO(TK, example_cap, "task.example_cap"),
    CHECK("task.max_chunk_bytes", check_task_chunk),
    FLAG(TK, clip_bit, "task.clip_bit"),
    FLAG(TK, packed_update, "task.packed_update"),
    CHECK("task.packed_update", check_task_packed),
    CHECK("task.update_elements", check_task_clip_bit),
    CHECK("task.secagg", check_task_secagg),
    ENUM(TK, kind, "task.kind", BIT(PLAIT_TASK_TRAIN) | BIT(PLAIT_TASK_EVALUATE)),
    CHECK("task.eval_loss_max", check_task_eval),
};
#undef TK

static const rule_t hello_rules[] = {
    CHECK("hello.client_version", check_client_version),
};

static const rule_t cbl_rules[] = {
    RANGE_LIM(plait_msg_come_back_later_t, retry_ms, "come_back_later.retry_ms", 1, L_RETRY_MS),
    /* 0..PLAIT_RETRY_REASON_MAX, and the two named beyond it */
    ENUM(plait_msg_come_back_later_t, reason, "come_back_later.reason",
         (BIT(PLAIT_RETRY_REASON_MAX + 1) - 1) | BIT(PLAIT_RETRY_NOT_SAMPLED) |
             BIT(PLAIT_RETRY_SECAGG_CLOSED)),
};

static const rule_t areq_rules[] = {
    NONZERO(plait_msg_adapter_request_t, round_id, "adapter_request.round_id"),
    CHECK("adapter_request.offset", check_areq_offset),
};

#define AC plait_msg_adapter_chunk_t
static const rule_t achunk_rules[] = {
    RANGE_LIM(AC, total_len, "adapter_chunk.total_len", 1, L_ADAPTER_BYTES),
    LEN_LIM(AC, len, "adapter_chunk.data", 1, L_CHUNK_BYTES),
    PRESENT(AC, data, "adapter_chunk.data"),
    ENUM(AC, encoding, "adapter_chunk.encoding",
         BIT(PLAIT_ADAPTER_FULL) | BIT(PLAIT_ADAPTER_DELTA) | BIT(PLAIT_ADAPTER_SEEDED)),
    CHECK("adapter_chunk.offset", check_achunk_span),
};
#undef AC

#define UC plait_msg_update_chunk_t
static const rule_t uchunk_rules[] = {
    NONZERO(UC, round_id, "update_chunk.round_id"),
    RANGE_LIM(UC, total_elements, "update_chunk.total_elements", 1, L_UPDATE_ELEMENTS),
    CHECK("update_chunk.packed", check_uchunk_form),
    CHECK("update_chunk.offset", check_uchunk_span),
    CHUNK_INDEX(UC, "update_chunk.chunk_index"),
};
#undef UC

static const rule_t ack_rules[] = {
    NONZERO(plait_msg_ack_t, round_id, "ack.round_id"),
    ENUM(plait_msg_ack_t, kind, "ack.kind", BIT(PLAIT_ACK_UPDATE)),
};

static const rule_t error_rules[] = {
    CHECK("error.code", check_error_code),
    CHECK("error.message", check_error_message),
};

#define SA plait_msg_secagg_advertise_t
static const rule_t sa_advertise_rules[] = {
    NONZERO(SA, round_id, "secagg_advertise.round_id"),
    BYTES(SA, cert, cert_len, "secagg_advertise.device_cert", 1, PLAIT_WIRE_SECAGG_MAX_CERT),
    BYTES(SA, signature, sig_len, "secagg_advertise.signature", 1, PLAIT_WIRE_SECAGG_MAX_SIG),
};
#undef SA

static const rule_t sa_roster_rules[] = {
    NONZERO(plait_msg_secagg_roster_t, round_id, "secagg_roster.round_id"),
    CHECK("secagg_roster.peers", check_roster_peers),
};

static const rule_t sa_shares_rules[] = {
    NONZERO(plait_msg_secagg_shares_t, round_id, "secagg_shares.round_id"),
    SHARES(plait_msg_secagg_shares_t, shares, n_shares, "secagg_shares.shares", 1),
};

static const rule_t sa_relay_rules[] = {
    NONZERO(plait_msg_secagg_shares_t, round_id, "secagg_relay.round_id"),
    SHARES(plait_msg_secagg_shares_t, shares, n_shares, "secagg_relay.shares", 0),
};

#define MI plait_msg_secagg_masked_input_t
static const rule_t sa_masked_rules[] = {
    NONZERO(MI, round_id, "secagg_masked_input.round_id"),
    RANGE_LIM(MI, total_elements, "secagg_masked_input.total_elements", 1, L_UPDATE_ELEMENTS),
    RANGE(MI, bits, "secagg_masked_input.bits", PLAIT_WIRE_SECAGG_MIN_BITS,
          PLAIT_WIRE_SECAGG_MAX_BITS),
    CHECK("secagg_masked_input.count", check_masked_span),
    CHUNK_INDEX(MI, "secagg_masked_input.chunk_index"),
};
#undef MI

#define UQ plait_msg_secagg_unmask_request_t
static const rule_t sa_unmask_req_rules[] = {
    NONZERO(UQ, round_id, "secagg_unmask_request.round_id"),
    INDICES(UQ, survivors, n_survivors, "secagg_unmask_request.survivors", 1),
    INDICES(UQ, dropouts, n_dropouts, "secagg_unmask_request.dropouts", 0),
};
#undef UQ

#define UR plait_msg_secagg_unmask_response_t
static const rule_t sa_unmask_resp_rules[] = {
    NONZERO(UR, round_id, "secagg_unmask_response.round_id"),
    SHARES(UR, seed_shares, n_seed, "secagg_unmask_response.seed_shares", 0),
    SHARES(UR, key_shares, n_key, "secagg_unmask_response.key_shares", 0),
};
#undef UR

static const rule_t decline_rules[] = {
    NONZERO(plait_msg_decline_t, round_id, "decline.round_id"),
    ENUM(plait_msg_decline_t, code, "decline.code",
         (BIT(PLAIT_DECLINE_CODE_MAX + 1) - 1) & ~BIT(0)),
};

#define RULES(t) {t, sizeof(t) / sizeof(t[0]), 1}

/* Indexed by type byte; ping and pong carry no limited field. */
static const msg_rules_t by_type[PLAIT_MSG_TYPE_MAX + 1] = {
    [PLAIT_MSG_HELLO] = RULES(hello_rules),
    [PLAIT_MSG_TASK] = RULES(task_rules),
    [PLAIT_MSG_COME_BACK_LATER] = RULES(cbl_rules),
    [PLAIT_MSG_ADAPTER_REQUEST] = RULES(areq_rules),
    [PLAIT_MSG_ADAPTER_CHUNK] = RULES(achunk_rules),
    [PLAIT_MSG_UPDATE_CHUNK] = RULES(uchunk_rules),
    [PLAIT_MSG_ACK] = RULES(ack_rules),
    [PLAIT_MSG_ERROR] = RULES(error_rules),
    [PLAIT_MSG_PING] = {NULL, 0, 1},
    [PLAIT_MSG_PONG] = {NULL, 0, 1},
    [PLAIT_MSG_SECAGG_ADVERTISE] = RULES(sa_advertise_rules),
    [PLAIT_MSG_SECAGG_ROSTER] = RULES(sa_roster_rules),
    [PLAIT_MSG_SECAGG_SHARES] = RULES(sa_shares_rules),
    [PLAIT_MSG_SECAGG_RELAY] = RULES(sa_relay_rules),
    [PLAIT_MSG_SECAGG_MASKED_INPUT] = RULES(sa_masked_rules),
    [PLAIT_MSG_SECAGG_UNMASK_REQUEST] = RULES(sa_unmask_req_rules),
    [PLAIT_MSG_SECAGG_UNMASK_RESPONSE] = RULES(sa_unmask_resp_rules),
    [PLAIT_MSG_DECLINE] = RULES(decline_rules),
};

int plait__wire_validate(const plait_msg_t *m, const plait_wire_limits_t *lim)
{
    int type = (int)m->type;
    if (type < 0 || type > PLAIT_MSG_TYPE_MAX || !by_type[type].defined)
        return plait_fail(PLAIT_EINVAL, "message: unknown type %d", type);
    const msg_rules_t *t = &by_type[type];
    for (size_t i = 0; i < t->n; i++) {
        int rc = check_rule(&t->rules[i], &m->u, lim);
        if (rc != 0) return rc;
    }
    return 0;
}

int plait_msg_validate(const plait_msg_t *m, const plait_wire_limits_t *lim)
{
    plait_wire_limits_t tmp;
    if (!m) return plait_fail(PLAIT_EINVAL, "message: NULL");
    if (!(lim = plait__wire_limits_or_default(lim, &tmp))) return PLAIT_EINVAL;
    return plait__wire_validate(m, lim);
}
