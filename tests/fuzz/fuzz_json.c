/*
 * fuzz_json.c: fuzz target for the strict JSON reader and the writer.
 *
 * Properties checked on every input:
 *   - the parser returns 0, PLAIT_EPROTO, PLAIT_ETOOBIG or PLAIT_ENOMEM and
 *     sets the root to NULL on failure (and never reads past size: ASan and
 *     the exact-size buffers of replay.c / libFuzzer catch that);
 *   - an accepted document, written back with the plait_buf_t writer, parses
 *     again, and writing that second tree gives the same bytes (canonical
 *     form is a fixed point).
 * Any violation calls abort(), which both libFuzzer and replay report.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "plait/json.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void write_value(plait_buf_t *b, const plait_json_t *v)
{
    switch (plait_json_type(v)) {
    case PLAIT_JSON_NULL: plait_buf_append(b, "null", 4); break;
    case PLAIT_JSON_BOOL: {
        bool x = false;
        if (plait_json_bool(v, &x) != 0) abort();
        plait_buf_append(b, x ? "true" : "false", x ? 4 : 5);
        break;
    }
    case PLAIT_JSON_NUMBER:
        if (plait_buf_json_number(b, plait_json_number(v)) != 0 && plait_buf_status(b) == 0) abort();
        break;
    case PLAIT_JSON_STRING: {
        size_t n = 0;
        const char *s = plait_json_string(v, &n);
        if (!s || strlen(s) != n) abort(); /* no embedded NUL, ever */
        plait_buf_json_string(b, s, n);
        break;
    }
    case PLAIT_JSON_ARRAY:
        plait_buf_append(b, "[", 1);
        for (size_t i = 0; i < plait_json_len(v); i++) {
            if (i) plait_buf_append(b, ",", 1);
            write_value(b, plait_json_at(v, i));
        }
        plait_buf_append(b, "]", 1);
        break;
    case PLAIT_JSON_OBJECT:
        plait_buf_append(b, "{", 1);
        for (size_t i = 0; i < plait_json_len(v); i++) {
            const char *k = plait_json_key_at(v, i);
            if (!k || plait_json_get(v, k) == NULL) abort();
            if (i) plait_buf_append(b, ",", 1);
            plait_buf_json_string(b, k, strlen(k));
            plait_buf_append(b, ":", 1);
            write_value(b, plait_json_at(v, i));
        }
        plait_buf_append(b, "}", 1);
        break;
    }
}

static void check_rc(int rc, const plait_json_t *root)
{
    if (rc == 0) {
        if (!root) abort();
        return;
    }
    if (root) abort();
    if (rc != PLAIT_EPROTO && rc != PLAIT_ETOOBIG && rc != PLAIT_ENOMEM) abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* Tight limits first, so the fuzzer explores the limit paths cheaply. */
    plait_json_limits_t lim;
    plait_json_limits_default(&lim);
    lim.max_depth = 8;
    lim.max_nodes = 64;
    lim.max_string = 32;
    plait_json_t *root = NULL;
    int rc = plait_json_parse_ex((const char *)data, size, &lim, &root);
    check_rc(rc, root);
    plait_json_free(root);

    root = NULL;
    rc = plait_json_parse((const char *)data, size, &root);
    check_rc(rc, root);
    if (rc != 0) return 0;

    plait_buf_t b1, b2;
    plait_buf_init(&b1, 0);
    plait_buf_init(&b2, 0);
    write_value(&b1, root);
    if (plait_buf_status(&b1) == 0) {
        plait_json_t *again = NULL;
        if (plait_json_parse(b1.data, b1.len, &again) != 0) abort();
        write_value(&b2, again);
        if (plait_buf_status(&b2) != 0 || b1.len != b2.len || memcmp(b1.data, b2.data, b1.len) != 0)
            abort();
        plait_json_free(again);
    }
    plait_buf_free(&b1);
    plait_buf_free(&b2);
    plait_json_free(root);
    return 0;
}
