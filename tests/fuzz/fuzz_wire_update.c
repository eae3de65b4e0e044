/*
 * fuzz_wire_update.c: fuzz target for the UpdateChunk decoder, the largest
 * message an authenticated device sends. The input is the protobuf payload
 * of an UPDATE_CHUNK frame (an Envelope); the same bytes are also decoded as
 * the other bulk messages (adapter chunk, task) to cover their validators.
 *
 * Properties checked on every input:
 *   - plait_wire_decode() returns 0, PLAIT_EPROTO or PLAIT_ETOOBIG, and a
 *     zeroed message on failure;
 *   - an accepted chunk carries exactly one form: words, 1 <= n_words <=
 *     max_chunk_bytes / 4, readable (ASan checks the whole span); or packed,
 *     bits 8..32, 1..max_chunk_bytes bytes, exactly plait_pack_bits_len of
 *     n_words values, which plait_unpack_bits() takes (zero padding) into
 *     values below 2^bits; offset + n_words <= total_elements <=
 *     max_update_elements, chunk 0 iff offset 0; and encode(decode(x)) is a
 *     fixed point.
 * Any violation calls abort(), which both libFuzzer and replay report.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "plait/secagg.h"
#include "plait/wire.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void fixed_point(const plait_msg_t *m, const plait_wire_limits_t *lim)
{
    uint8_t *a = NULL, *b = NULL;
    size_t na = 0, nb = 0, used = 0;
    plait_msg_t d;
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
    static const plait_msg_type_t types[] = {PLAIT_MSG_UPDATE_CHUNK, PLAIT_MSG_ADAPTER_CHUNK,
                                             PLAIT_MSG_TASK};
    for (size_t t = 0; t < sizeof(types) / sizeof(types[0]); t++) {
        plait_frame_t f = {PLAIT_WIRE_VERSION, types[t], data, size, size + PLAIT_FRAME_HEADER};
        plait_msg_t m;
        int rc = plait_wire_decode(&f, &lim, &m);
        if (rc != 0 && rc != PLAIT_EPROTO && rc != PLAIT_ETOOBIG) abort();
        if (rc != 0) {
            if (m.priv != NULL || m.type != 0) abort();
            continue;
        }
        if (m.type != types[t]) abort();
        if (m.type == PLAIT_MSG_UPDATE_CHUNK) {
            const plait_msg_update_chunk_t *u = &m.u.update_chunk;
            if ((u->words == NULL) == (u->packed == NULL)) abort();
            if (u->words && (u->n_words < 1 || u->n_words > lim.max_chunk_bytes / 4)) abort();
            if (u->packed) {
                if (u->bits < 8 || u->bits > 32 || u->packed_len < 1 || u->packed_len > lim.max_chunk_bytes ||
                    u->n_words < 1 || u->packed_len != plait_pack_bits_len(u->n_words, u->bits))
                    abort();
                uint32_t *v = malloc(u->n_words * sizeof(uint32_t));
                if (!v) abort();
                if (plait_unpack_bits(u->packed, u->packed_len, u->n_words, u->bits, v) != 0) abort();
                for (size_t i = 0; i < u->n_words; i++)
                    if (u->bits < 32 && (v[i] >> u->bits) != 0) abort();
                free(v);
            }
            if (u->total_elements > lim.max_update_elements || u->offset > u->total_elements ||
                u->n_words > u->total_elements - u->offset)
                abort();
            if ((u->chunk_index == 0) != (u->offset == 0)) abort();
            uint32_t acc = 0;
            for (size_t i = 0; u->words && i < u->n_words; i++)
                acc += u->words[i]; /* mod 2^32, as the aggregator sums */
            (void)acc;
        } else if (m.type == PLAIT_MSG_ADAPTER_CHUNK) {
            const plait_msg_adapter_chunk_t *c = &m.u.adapter_chunk;
            if (c->len < 1 || c->len > lim.max_chunk_bytes || c->offset > c->total_len ||
                c->len > c->total_len - c->offset)
                abort();
            volatile uint8_t last = c->data[c->len - 1];
            (void)last;
        }
        if (plait_msg_validate(&m, &lim) != 0) abort();
        fixed_point(&m, &lim);
        plait_msg_free(&m);
    }
    return 0;
}
