/*
 * fuzz_jsonl.c: fuzz target for the ingest parsers (JSON lines, and the
 * blank-line text splitter on the same bytes).
 *
 * Properties checked on every input:
 *   - the parsers return 0, PLAIT_EPROTO, PLAIT_ETOOBIG or PLAIT_ENOMEM;
 *   - every record handed to the callback is non-empty, NUL-terminated at
 *     len, valid UTF-8 without NUL, and lies within what the input could
 *     produce (a record's text is never longer than the input);
 *   - a JSONL time is PLAIT_STORE_TIME_NOW or >= 0;
 *   - a positive callback value stops the parse and is returned unchanged.
 * Any violation calls abort().
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "plait/ingest.h"
#include "plait/json.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

typedef struct {
    size_t input_len;
    size_t calls;
    size_t stop_at; /* 0: never stop */
} ctx_t;

static int check_cb(void *ud, int64_t t, const char *kind, const char *user, const char *text, size_t len)
{
    ctx_t *c = ud;
    if (!text || len == 0 || len > c->input_len) abort();
    if (text[len] != '\0' || strlen(text) != len) abort();
    if (!plait_utf8_valid(text, len, NULL)) abort();
    if (t != PLAIT_STORE_TIME_NOW && t < 0) abort();
    if (kind && strlen(kind) > c->input_len) abort();
    if (user && strlen(user) > c->input_len) abort();
    c->calls++;
    if (c->stop_at && c->calls == c->stop_at) return 99;
    return 0;
}

static void check_rc(int rc, const ctx_t *c)
{
    if (rc == 99) {
        if (!c->stop_at || c->calls != c->stop_at) abort();
        return;
    }
    if (rc != 0 && rc != PLAIT_EPROTO && rc != PLAIT_ETOOBIG && rc != PLAIT_ENOMEM) abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *buf = (const char *)data;
    ctx_t c = {size, 0, 0};
    check_rc(plait_ingest_jsonl(buf, size, check_cb, &c), &c);
    /* Again, stopping at the second record. */
    ctx_t s = {size, 0, 2};
    check_rc(plait_ingest_jsonl(buf, size, check_cb, &s), &s);
    ctx_t t = {size, 0, 0};
    check_rc(plait_ingest_text(buf, size, check_cb, &t), &t);
    return 0;
}
