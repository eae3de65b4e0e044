/*
 * wire.c: frames of the plait protocol, its limits and names, and the entry
 * points that decode a frame into a message and encode a message into a
 * frame. With wire_validate.c, wire_convert.c, wire_secagg.c and wire_xfer.c
 * (internals in wire_int.h) the only user of protobuf-c and of the generated
 * plait.pb-c.h.
 *
 * A frame is `u32 BE length | u8 version | u8 type | payload`, where length
 * counts version + type + payload and the payload is one protobuf Envelope
 * whose oneof case equals the type byte (include/plait/wire.h,
 * docs/protocol.md).
 *
 * Invariants:
 * - Untrusted bytes never crash these files and never make them read outside
 *   [buf, buf + len). plait_frame_decode() looks at the header only and
 *   decides size, version and type from it before the body is buffered.
 * - Allocation is bounded: a payload is unpacked only after its size was
 *   checked against the frame limit, and through an allocator that refuses
 *   to hold more than UNPACK_BUDGET(payload_len) bytes at once (protobuf-c
 *   needs at most a few bytes per input byte; the cap stops pathological
 *   inputs from amplifying further).
 * - Generated structs never leave proto/. A decoded plait_msg_t keeps the
 *   unpacked Envelope behind its opaque `priv` pointer, so adapter bytes and
 *   update words are not copied a second time; plait_msg_free() releases it.
 * - One validator (wire_validate.c: a rule table per message, one loop) on
 *   the plain C struct serves both directions: the decoder runs it after
 *   converting, the encoder before packing, so plait never sends what a plait
 *   peer would refuse.
 *
 * Workload: one decode per received frame; update chunks of up to 1 MiB are
 * the large ones, and cost one unpack (a memcpy of the packed words on
 * little-endian hosts) and no further copy.
 */
#include "plait/wire.h"

#include <stdlib.h>
#include <string.h>

#include "wire_int.h"

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

const plait_wire_limits_t *plait__wire_limits_or_default(const plait_wire_limits_t *lim,
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
    if (!(lim = plait__wire_limits_or_default(lim, &tmp))) return PLAIT_EINVAL;
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

int plait_wire_decode(const plait_frame_t *frame, const plait_wire_limits_t *lim, plait_msg_t *msg)
{
    plait_wire_limits_t tmp;
    if (!msg) return plait_fail(PLAIT_EINVAL, "wire decode: NULL message");
    memset(msg, 0, sizeof(*msg));
    if (!frame || (!frame->payload && frame->payload_len > 0))
        return plait_fail(PLAIT_EINVAL, "wire decode: NULL frame");
    if (!(lim = plait__wire_limits_or_default(lim, &tmp))) return PLAIT_EINVAL;
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
    if ((rc = plait__wire_from_envelope(env, msg, lim)) != 0) goto fail;
    if ((rc = plait__wire_validate(msg, lim)) != 0) goto fail;
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

/* ---- encode ------------------------------------------------------------ */

static void pb_release(plait__wire_pb_t *pb)
{
    free(pb->heap);
    pb->heap = NULL;
}

/* Validate m and fill pb; *frame_len is the whole frame's size. */
static int prepare(const plait_msg_t *m, const plait_wire_limits_t *lim, plait__wire_pb_t *pb,
                   size_t *frame_len)
{
    plait_wire_limits_t tmp;
    if (!m) return plait_fail(PLAIT_EINVAL, "wire encode: NULL message");
    if (!(lim = plait__wire_limits_or_default(lim, &tmp))) return PLAIT_EINVAL;
    int rc = plait__wire_validate(m, lim);
    if (rc != 0) return rc;
    if ((rc = plait__wire_to_envelope(m, pb)) != 0) return rc;
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
    plait__wire_pb_t pb;
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
    plait__wire_pb_t pb;
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

