/*
 * fuzz_file.c: plait_file_read (lib/file.c), the reader behind --text,
 * --tokenizer, --adapter and configs, on arbitrary bytes. The first byte
 * picks the size limit (0..255 bytes, or none); the rest is the file, written
 * to an unlinked temporary file and read through /proc/self/fd. What comes
 * back must be exactly the file, NUL-terminated, or a refusal above the
 * limit; anything else aborts.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "plait/file.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0) return 0;
    size_t max = data[0] == 255 ? (size_t)1 << 30 : data[0];
    data++;
    size--;
    FILE *f = tmpfile();
    if (!f) return 0;
    if (size && fwrite(data, 1, size, f) != size) {
        fclose(f);
        return 0;
    }
    fflush(f);
    char path[64];
    snprintf(path, sizeof(path), "/proc/self/fd/%d", fileno(f));
    uint8_t *out = NULL;
    size_t len = 0;
    int rc = plait_file_read(path, "fuzz", max, &out, &len);
    if (size > max) {
        if (rc != PLAIT_ETOOBIG || out) abort();
    } else {
        if (rc != 0 || len != size || out[len] != 0 || (size && memcmp(out, data, size) != 0)) abort();
    }
    free(out);
    fclose(f);
    return 0;
}
