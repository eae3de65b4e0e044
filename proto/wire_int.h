/*
 * wire_int.h: internals shared by the proto/ files; never included outside
 * proto/ (users see include/plait/wire.h). It includes the generated
 * plait.pb-c.h, which stays private to this directory (STYLE.md §2).
 *
 * Files: wire.c (limits, names, the bounded allocator, frames, the decode
 * and encode entry points), wire_validate.c (the table-driven field
 * validator, both directions), wire_convert.c (plain messages <-> protobuf-c
 * structs), wire_secagg.c (the SecAgg+ messages' conversion and masked
 * uploads), wire_xfer.c (chunked update and adapter transfers).
 */
#ifndef PLAIT_WIRE_INT_H
#define PLAIT_WIRE_INT_H

#include <stdint.h>

#include "plait/wire.h"
#include "plait.pb-c.h"

#define BAD(...) plait_fail(PLAIT_EPROTO, __VA_ARGS__)

#define NEED(cond, field)                                                                          \
    do {                                                                                           \
        if (!(cond)) return BAD("%s: missing", field);                                             \
    } while (0)

/* Resolve a caller's limits (NULL: defaults) into *tmp; NULL when invalid. */
const plait_wire_limits_t *plait__wire_limits_or_default(const plait_wire_limits_t *lim,
                                                         plait_wire_limits_t *tmp);

/* Check every field of m against lim (wire_validate.c); 0 or PLAIT_EPROTO naming the field. */
int plait__wire_validate(const plait_msg_t *m, const plait_wire_limits_t *lim);

/* ---- protobuf-c structs <-> plain structs ---- */

/* protobuf-c's structs hold non-const pointers; packing only reads them. */
static inline ProtobufCBinaryData plait__wire_bin(const void *p, size_t n)
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
    void *heap; /* sub-messages of repeated fields (SecAgg), freed by the encoder */
    Plait__Decline decline;
} plait__wire_pb_t;

/* Convert an unpacked Envelope into m (m->type set); wire_convert.c. */
int plait__wire_from_envelope(const Plait__Envelope *env, plait_msg_t *m,
                              const plait_wire_limits_t *lim);
/* The SecAgg+ cases of it; wire_secagg.c. */
int plait__wire_from_envelope_secagg(const Plait__Envelope *env, plait_msg_t *m);

/* Fill pb from a validated m; wire_convert.c. */
int plait__wire_to_envelope(const plait_msg_t *m, plait__wire_pb_t *pb);
/* The SecAgg+ cases of it (they allocate pb->heap); wire_secagg.c. */
int plait__wire_to_envelope_secagg(const plait_msg_t *m, plait__wire_pb_t *pb);

#endif
