/*
 * fuzz_aggcfg.c: fuzz target for the aggregator's configuration parser
 * (aggregator.conf, plait_aggcfg_parse in aggregator/config.c).
 *
 * Properties checked on every input:
 *   - the parser returns 0 or PLAIT_EPROTO (never reads past size: replay.c
 *     and libFuzzer hand it an exact-size buffer) and names the line;
 *   - plait_aggcfg_validate returns 0 or PLAIT_EINVAL with a message;
 *   - an accepted file, written back with plait_aggcfg_write, parses into a
 *     fresh default config, and writing that one gives the same bytes (the
 *     written form is a fixed point: every value survives the round trip).
 * Any violation calls abort(), which both libFuzzer and replay report.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "plait/aggcfg.h"
#include "plait/plait.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* The written form of c, malloc'd (NUL-terminated); aborts on failure. */
static char *written(const plait_aggcfg_t *c, size_t *len)
{
    char *buf = NULL;
    FILE *f = open_memstream(&buf, len);
    if (!f) abort();
    if (plait_aggcfg_write(c, f) != 0) abort();
    if (fclose(f) != 0 || !buf) abort();
    return buf;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    plait_aggcfg_t c;
    plait_aggcfg_default(&c);
    int rc = plait_aggcfg_parse(&c, (const char *)data, size, "fuzz.conf");
    if (rc != 0) {
        if (rc != PLAIT_EPROTO && rc != PLAIT_ETOOBIG) abort();
        if (strncmp(plait_errmsg(), "fuzz.conf", 9) != 0 && rc == PLAIT_EPROTO) abort();
        return 0;
    }
    int v = plait_aggcfg_validate(&c);
    if (v != 0 && (v != PLAIT_EINVAL || plait_errmsg()[0] == '\0')) abort();
    size_t n1 = 0, n2 = 0;
    char *w1 = written(&c, &n1);
    plait_aggcfg_t c2;
    plait_aggcfg_default(&c2);
    if (plait_aggcfg_parse(&c2, w1, n1, "written.conf") != 0) abort();
    char *w2 = written(&c2, &n2);
    if (n1 != n2 || memcmp(w1, w2, n1) != 0) abort();
    free(w1);
    free(w2);
    return 0;
}
