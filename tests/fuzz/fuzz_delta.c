/*
 * fuzz_delta.c: fuzz target for the adapter download delta decoder
 * (plait_delta_apply, lib/delta.c), which reads bytes an aggregator sent.
 * The input is a delta; the base span is a fixed pattern whose length is the
 * header's n when that is small (so the body is reached), else 64.
 *
 * Properties checked on every input:
 *   - the answer is 0, PLAIT_EPROTO or PLAIT_EMISMATCH;
 *   - an accepted delta rebuilds only finite values, and the exact delta
 *     from the base to that rebuild rebuilds the same bits again.
 * Any violation calls abort(), which both libFuzzer and replay report.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "plait/delta.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    size_t n = 64;
    if (size >= PLAIT_DELTA_HEADER) {
        uint64_t dn = (uint64_t)data[12] | (uint64_t)data[13] << 8 | (uint64_t)data[14] << 16 |
                      (uint64_t)data[15] << 24 | (uint64_t)data[16] << 32 |
                      (uint64_t)data[17] << 40 | (uint64_t)data[18] << 48 |
                      (uint64_t)data[19] << 56;
        if (dn >= 1 && dn <= 65536) n = (size_t)dn;
    }
    float *prev = malloc(n * sizeof(float)), *out = malloc(n * sizeof(float)),
          *again = malloc(n * sizeof(float));
    if (!prev || !out || !again) abort();
    for (size_t i = 0; i < n; i++)
        prev[i] = (float)((int)(i % 17) - 8) * 0.125f;
    /* a copy of exactly size bytes, so a read past the end is caught by ASan */
    uint8_t *d = malloc(size ? size : 1);
    if (!d) abort();
    if (size) memcpy(d, data, size);
    int rc = plait_delta_apply(prev, n, d, size, out);
    if (rc != 0 && rc != PLAIT_EPROTO && rc != PLAIT_EMISMATCH) abort();
    if (rc == 0) {
        for (size_t i = 0; i < n; i++)
            if (!isfinite(out[i])) abort();
        uint8_t *e;
        size_t elen;
        if (plait_delta_encode_exact(prev, out, n, &e, &elen) != 0) abort();
        if (plait_delta_apply(prev, n, e, elen, again) != 0) abort();
        if (memcmp(again, out, n * sizeof(float)) != 0) abort();
        free(e);
    }
    free(d);
    free(prev);
    free(out);
    free(again);
    return 0;
}
