/*
 * fuzz_frame.c: fuzz target for the frame codec on a byte stream, as the
 * aggregator reads it: the first frame is parsed with the pre-auth limits
 * (PLAIT_FRAME_PREAUTH: small, hello only), later ones with the full limits.
 *
 * Properties checked on every input:
 *   - plait_frame_decode() and plait_wire_parse() return only 0, PLAIT_EAGAIN,
 *     PLAIT_EPROTO or PLAIT_ETOOBIG, consume nothing on failure and at most
 *     the bytes given on success;
 *   - every prefix of an accepted frame gives PLAIT_EAGAIN;
 *   - an accepted message validates, and encode(decode(x)) is a fixed point:
 *     decoding it again and encoding gives the same bytes.
 * Any violation calls abort(), which both libFuzzer and replay report.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "plait/wire.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_fixed_point(const plait_msg_t *m, const plait_wire_limits_t *lim)
{
    uint8_t *a = NULL, *b = NULL;
    size_t na = 0, nb = 0, used = 0;
    plait_msg_t d;
    if (plait_msg_validate(m, lim) != 0) abort();
    if (plait_wire_encode_alloc(m, lim, &a, &na) != 0) abort();
    if (plait_wire_parse(a, na, lim, 0, &d, &used) != 0 || used != na) abort();
    if (d.type != m->type) abort();
    if (plait_wire_encode_alloc(&d, lim, &b, &nb) != 0) abort();
    if (na != nb || memcmp(a, b, na) != 0) abort();
    plait_msg_free(&d);
    free(a);
    free(b);
}

static void run_stream(const uint8_t *data, size_t size, unsigned first_flags)
{
    plait_wire_limits_t lim;
    plait_wire_limits_default(&lim);
    unsigned flags = first_flags;
    size_t off = 0;
    while (off < size) {
        plait_frame_t f;
        size_t used = 0, fused = 0;
        plait_msg_t m;
        int frc = plait_frame_decode(data + off, size - off, &lim, flags, &f, &fused);
        int rc = plait_wire_parse(data + off, size - off, &lim, flags, &m, &used);
        if (frc != 0 && frc != PLAIT_EAGAIN && frc != PLAIT_EPROTO && frc != PLAIT_ETOOBIG) abort();
        if (rc != 0 && rc != PLAIT_EAGAIN && rc != PLAIT_EPROTO && rc != PLAIT_ETOOBIG) abort();
        if (frc != 0 && (rc != frc || fused != 0 || used != 0))
            abort(); /* a bad frame is a bad message */
        if (rc != 0) {
            if (used != 0 || m.priv != NULL) abort();
            if (frc == 0)
                off += fused; /* the frame was fine, its message was not: skip it */
            else
                break;
            continue;
        }
        if (used != fused || used < PLAIT_FRAME_HEADER || used > size - off || used != f.frame_len)
            abort();
        /* Every proper prefix of an accepted frame is incomplete. */
        for (size_t k = 0; k < used; k += (used > 64 ? used / 64 : 1)) {
            plait_frame_t g;
            size_t u2 = 1;
            if (plait_frame_decode(data + off, k, &lim, flags, &g, &u2) != PLAIT_EAGAIN || u2 != 0)
                abort();
        }
        check_fixed_point(&m, &lim);
        plait_msg_free(&m);
        off += used;
        flags = 0;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    run_stream(data, size, PLAIT_FRAME_PREAUTH);
    run_stream(data, size, 0);
    return 0;
}
