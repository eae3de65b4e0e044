/*
 * fuzz_wire_hello.c: fuzz target for the Hello decoder, the message an
 * unauthenticated peer controls first. The input is the protobuf payload of
 * a HELLO frame (an Envelope).
 *
 * Properties checked on every input:
 *   - plait_wire_decode() returns 0, PLAIT_EPROTO or PLAIT_ETOOBIG, and a
 *     zeroed message (nothing owned) on failure;
 *   - an accepted hello has a 1..64-byte printable client_version, and
 *     re-encoding it gives a frame that decodes to the same bytes again;
 *   - the same payload behind a real header, parsed with the pre-auth flag,
 *     gives the same answer when it fits the pre-auth limit and
 *     PLAIT_ETOOBIG when it does not.
 * Any violation calls abort(), which both libFuzzer and replay report.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "plait/wire.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    plait_wire_limits_t lim;
    plait_wire_limits_default(&lim);
    plait_frame_t f = {PLAIT_WIRE_VERSION, PLAIT_MSG_HELLO, data, size, size + PLAIT_FRAME_HEADER};
    plait_msg_t m;
    int rc = plait_wire_decode(&f, &lim, &m);
    if (rc != 0 && rc != PLAIT_EPROTO && rc != PLAIT_ETOOBIG) abort();
    if (rc != 0 && (m.priv != NULL || m.type != 0)) abort();
    if (rc == 0) {
        const plait_msg_hello_t *h = &m.u.hello;
        size_t n = strlen(h->client_version);
        if (m.type != PLAIT_MSG_HELLO || n < 1 || n > PLAIT_WIRE_MAX_CLIENT_VERSION) abort();
        for (size_t i = 0; i < n; i++)
            if (h->client_version[i] < 0x20 || h->client_version[i] > 0x7e) abort();
        uint8_t *a = NULL, *b = NULL;
        size_t na = 0, nb = 0, used = 0;
        plait_msg_t d;
        if (plait_wire_encode_alloc(&m, &lim, &a, &na) != 0) abort();
        if (plait_wire_parse(a, na, &lim, PLAIT_FRAME_PREAUTH, &d, &used) != 0 || used != na)
            abort();
        if (memcmp(d.u.hello.base_model_sha256, h->base_model_sha256, PLAIT_WIRE_SHA256_LEN) != 0)
            abort();
        if (plait_wire_encode_alloc(&d, &lim, &b, &nb) != 0 || na != nb || memcmp(a, b, na) != 0)
            abort();
        plait_msg_free(&d);
        free(a);
        free(b);
    }

    /* The same payload as a whole frame, before authentication. */
    if (size <= (size_t)UINT32_MAX - 2) {
        uint8_t *frame = malloc(size + PLAIT_FRAME_HEADER);
        if (!frame) return 0;
        uint32_t n = (uint32_t)(size + 2);
        frame[0] = (uint8_t)(n >> 24), frame[1] = (uint8_t)(n >> 16), frame[2] = (uint8_t)(n >> 8);
        frame[3] = (uint8_t)n, frame[4] = PLAIT_WIRE_VERSION, frame[5] = PLAIT_MSG_HELLO;
        if (size) memcpy(frame + PLAIT_FRAME_HEADER, data, size);
        plait_msg_t p;
        size_t used = 0;
        int prc = plait_wire_parse(frame, size + PLAIT_FRAME_HEADER, &lim, PLAIT_FRAME_PREAUTH, &p,
                                   &used);
        if (size + PLAIT_FRAME_HEADER > lim.max_preauth_frame) {
            if (prc != PLAIT_ETOOBIG) abort();
        } else if (prc != rc) {
            abort();
        }
        plait_msg_free(&p);
        free(frame);
    }
    plait_msg_free(&m);
    return 0;
}
