/*
 * check_json.c: the strict JSON reader (valid documents, every prefix of a
 * valid document, known-invalid documents, limits, big inputs) and the writer
 * (escape -> parse round trips, plait_buf_t). Inputs that must not be read
 * past their end are placed against a guard page.
 */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "plait/json.h"

/* ---- guard page helpers: the byte after the input is unmapped ---- */

typedef struct {
    unsigned char *map;
    size_t maplen;
    char *p;
} guarded_t;

static char *guard_copy(guarded_t *g, const void *src, size_t len)
{
    size_t pg = (size_t)sysconf(_SC_PAGESIZE);
    size_t data_pages = (len + pg - 1) / pg;
    if (data_pages == 0) data_pages = 1;
    g->maplen = (data_pages + 1) * pg;
    g->map = mmap(NULL, g->maplen, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    ck_assert_ptr_ne(g->map, MAP_FAILED);
    ck_assert_int_eq(mprotect(g->map + data_pages * pg, pg, PROT_NONE), 0);
    g->p = (char *)g->map + data_pages * pg - len;
    if (len) memcpy(g->p, src, len);
    return g->p;
}

static void guard_free(guarded_t *g)
{
    munmap(g->map, g->maplen);
}

static int parse_guarded(const char *doc, size_t len, plait_json_t **out)
{
    guarded_t g;
    char *p = guard_copy(&g, doc, len);
    int rc = plait_json_parse(p, len, out);
    guard_free(&g);
    return rc;
}

static int parse_str(const char *doc, plait_json_t **out)
{
    return parse_guarded(doc, strlen(doc), out);
}

/* ---- valid documents ---- */

START_TEST(test_nested)
{
    const char *doc = " {\"a\": [1, 2.5, -3e2, true, false, null, \"x\"],\n"
                      "  \"b\": {\"c\": {\"d\": []}, \"e\": {}},\r\n\t\"z\": \"last\"} ";
    plait_json_t *v = NULL;
    ck_assert_int_eq(parse_str(doc, &v), 0);
    ck_assert_int_eq(plait_json_type(v), PLAIT_JSON_OBJECT);
    ck_assert_uint_eq(plait_json_len(v), 3);
    ck_assert_str_eq(plait_json_key_at(v, 0), "a");
    ck_assert_str_eq(plait_json_key_at(v, 1), "b");
    ck_assert_str_eq(plait_json_key_at(v, 2), "z");
    ck_assert_ptr_null(plait_json_key_at(v, 3));
    const plait_json_t *a = plait_json_get(v, "a");
    ck_assert_int_eq(plait_json_type(a), PLAIT_JSON_ARRAY);
    ck_assert_uint_eq(plait_json_len(a), 7);
    int64_t i64;
    ck_assert_int_eq(plait_json_int64(plait_json_at(a, 0), &i64), 0);
    ck_assert_int_eq(i64, 1);
    ck_assert_double_eq(plait_json_number(plait_json_at(a, 1)), 2.5);
    ck_assert_int_eq(plait_json_int64(plait_json_at(a, 1), &i64), PLAIT_EPROTO);
    ck_assert_int_eq(plait_json_int64(plait_json_at(a, 2), &i64), 0);
    ck_assert_int_eq(i64, -300);
    bool bv = false;
    ck_assert_int_eq(plait_json_bool(plait_json_at(a, 3), &bv), 0);
    ck_assert(bv);
    ck_assert_int_eq(plait_json_bool(plait_json_at(a, 4), &bv), 0);
    ck_assert(!bv);
    ck_assert_int_eq(plait_json_bool(plait_json_at(a, 5), &bv), PLAIT_EPROTO);
    ck_assert_int_eq(plait_json_type(plait_json_at(a, 5)), PLAIT_JSON_NULL);
    ck_assert_ptr_nonnull(plait_json_at(a, 5));
    size_t sl = 0;
    ck_assert_str_eq(plait_json_string(plait_json_at(a, 6), &sl), "x");
    ck_assert_uint_eq(sl, 1);
    ck_assert_ptr_null(plait_json_at(a, 7));
    ck_assert_ptr_null(plait_json_string(plait_json_at(a, 0), NULL));
    ck_assert(isnan(plait_json_number(plait_json_at(a, 6))));
    const plait_json_t *d = plait_json_get(plait_json_get(plait_json_get(v, "b"), "c"), "d");
    ck_assert_int_eq(plait_json_type(d), PLAIT_JSON_ARRAY);
    ck_assert_uint_eq(plait_json_len(d), 0);
    ck_assert_uint_eq(plait_json_len(plait_json_get(plait_json_get(v, "b"), "e")), 0);
    /* Missing keys and wrong types give NULL, and NULL propagates. */
    ck_assert_ptr_null(plait_json_get(v, "missing"));
    ck_assert_ptr_null(plait_json_get(a, "a"));
    ck_assert_ptr_null(plait_json_get(NULL, "a"));
    ck_assert_ptr_null(plait_json_get(plait_json_get(v, "nope"), "deeper"));
    ck_assert_uint_eq(plait_json_len(NULL), 0);
    /* Object members are also reachable by index. */
    ck_assert_str_eq(plait_json_string(plait_json_at(v, 2), NULL), "last");
    plait_json_free(v);
    plait_json_free(NULL);
}
END_TEST

START_TEST(test_scalars_top_level)
{
    plait_json_t *v = NULL;
    ck_assert_int_eq(parse_str("42", &v), 0);
    ck_assert_double_eq(plait_json_number(v), 42);
    plait_json_free(v);
    ck_assert_int_eq(parse_str(" \"s\" ", &v), 0);
    ck_assert_str_eq(plait_json_string(v, NULL), "s");
    plait_json_free(v);
    ck_assert_int_eq(parse_str("null", &v), 0);
    ck_assert_int_eq(plait_json_type(v), PLAIT_JSON_NULL);
    plait_json_free(v);
    ck_assert_int_eq(parse_str("true", &v), 0);
    ck_assert_int_eq(plait_json_type(v), PLAIT_JSON_BOOL);
    plait_json_free(v);
    ck_assert_int_eq(parse_str("\"\"", &v), 0);
    size_t n = 99;
    ck_assert_str_eq(plait_json_string(v, &n), "");
    ck_assert_uint_eq(n, 0);
    plait_json_free(v);
}
END_TEST

START_TEST(test_unicode)
{
    plait_json_t *v = NULL;
    /* BMP escapes, a surrogate pair, raw UTF-8, all the short escapes. */
    const char *doc = "[\"\\u00e9\\u20AC\", \"\\ud83d\\ude00\", \"caf\xc3\xa9 \xf0\x9f\x98\x80\","
                      " \"\\\"\\\\\\/\\b\\f\\n\\r\\t\", \"\\u0041\\u007f\\u0080\\uffff\"]";
    ck_assert_int_eq(parse_str(doc, &v), 0);
    size_t n;
    const char *s = plait_json_string(plait_json_at(v, 0), &n);
    ck_assert_uint_eq(n, 5);
    ck_assert_mem_eq(s, "\xc3\xa9\xe2\x82\xac", 5);
    s = plait_json_string(plait_json_at(v, 1), &n);
    ck_assert_uint_eq(n, 4);
    ck_assert_mem_eq(s, "\xf0\x9f\x98\x80", 4);
    ck_assert_str_eq(plait_json_string(plait_json_at(v, 2), NULL), "caf\xc3\xa9 \xf0\x9f\x98\x80");
    ck_assert_str_eq(plait_json_string(plait_json_at(v, 3), NULL), "\"\\/\b\f\n\r\t");
    s = plait_json_string(plait_json_at(v, 4), &n);
    ck_assert_uint_eq(n, 1 + 1 + 2 + 3);
    ck_assert_mem_eq(s, "A\x7f\xc2\x80\xef\xbf\xbf", 7);
    ck_assert_uint_eq(strlen(s), n);
    plait_json_free(v);

    /* Keys are decoded too. */
    ck_assert_int_eq(parse_str("{\"k\\u00e9\": 1}", &v), 0);
    ck_assert_str_eq(plait_json_key_at(v, 0), "k\xc3\xa9");
    ck_assert_ptr_nonnull(plait_json_get(v, "k\xc3\xa9"));
    plait_json_free(v);
}
END_TEST

START_TEST(test_numbers)
{
    struct {
        const char *doc;
        double d;
    } cases[] = {
        {"0", 0.0},        {"-0", -0.0},         {"1e3", 1000.0},      {"1E+2", 100.0},
        {"-1.5e-3", -1.5e-3}, {"0.5", 0.5},      {"123.456e1", 1234.56}, {"1e-400", 0.0},
        {"-0.0e0", -0.0},  {"2.2250738585072014e-308", 2.2250738585072014e-308},
        {"1.7976931348623157e308", 1.7976931348623157e308},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        plait_json_t *v = NULL;
        ck_assert_msg(parse_str(cases[i].doc, &v) == 0, "%s: %s", cases[i].doc, plait_errmsg());
        ck_assert_double_eq(plait_json_number(v), cases[i].d);
        plait_json_free(v);
    }
    plait_json_t *v = NULL;
    ck_assert_int_eq(parse_str("-0", &v), 0);
    ck_assert(signbit(plait_json_number(v)));
    int64_t x = 7;
    ck_assert_int_eq(plait_json_int64(v, &x), 0);
    ck_assert_int_eq(x, 0);
    plait_json_free(v);

    /* Exact int64 over the whole range. */
    struct {
        const char *doc;
        int rc;
        int64_t want;
    } ints[] = {
        {"9223372036854775807", 0, INT64_MAX},
        {"-9223372036854775808", 0, INT64_MIN},
        {"9223372036854775808", PLAIT_ETOOBIG, 0},
        {"-9223372036854775809", PLAIT_ETOOBIG, 0},
        {"123456789012345678", 0, 123456789012345678LL},
        {"1e3", 0, 1000},
        {"2.0", 0, 2},
        {"-4.5e1", 0, -45},
        {"1.5", PLAIT_EPROTO, 0},
        {"1e-1", PLAIT_EPROTO, 0},
        {"1e20", PLAIT_ETOOBIG, 0},
        {"99999999999999999999999", PLAIT_ETOOBIG, 0},
    };
    for (size_t i = 0; i < sizeof(ints) / sizeof(ints[0]); i++) {
        ck_assert_int_eq(parse_str(ints[i].doc, &v), 0);
        int64_t got = 0;
        ck_assert_msg(plait_json_int64(v, &got) == ints[i].rc, "%s", ints[i].doc);
        if (ints[i].rc == 0) ck_assert_int_eq(got, ints[i].want);
        plait_json_free(v);
    }
    /* Beyond a double's range. */
    ck_assert_int_eq(parse_str("1e999", &v), PLAIT_ETOOBIG);
    ck_assert_ptr_null(v);
    ck_assert_int_eq(parse_str("[-1e400]", &v), PLAIT_ETOOBIG);
    /* Type mismatch. */
    ck_assert_int_eq(parse_str("\"1\"", &v), 0);
    ck_assert_int_eq(plait_json_int64(v, &x), PLAIT_EPROTO);
    plait_json_free(v);
    ck_assert_int_eq(plait_json_int64(NULL, &x), PLAIT_EPROTO);
}
END_TEST

/* ---- every prefix of a valid document is rejected ---- */

static const char *valid_docs[] = {
    "{\"a\":[1,2,{\"b\":null}],\"c\":\"d\\u00e9\\ud83d\\ude00\",\"e\":-1.5e+10,\"f\":true}",
    "[[],[[]],{},{\"\":\"\"},\"\\\\\\\"\",false,null,0,-0.0]",
    "{\"text\":\"caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80\",\"time\":1700000000,\"kind\":\"chat\"}",
    " [ 1 , \"two\" , [ 3 ] , { \"four\" : 4 } ]",
};

START_TEST(test_prefixes_rejected)
{
    for (size_t d = 0; d < sizeof(valid_docs) / sizeof(valid_docs[0]); d++) {
        const char *doc = valid_docs[d];
        size_t len = strlen(doc);
        plait_json_t *v = NULL;
        ck_assert_msg(parse_guarded(doc, len, &v) == 0, "doc %zu: %s", d, plait_errmsg());
        plait_json_free(v);
        for (size_t k = 0; k < len; k++) {
            v = (plait_json_t *)1;
            int rc = parse_guarded(doc, k, &v);
            ck_assert_msg(rc == PLAIT_EPROTO, "doc %zu prefix %zu gave %d", d, k, rc);
            ck_assert_ptr_null(v);
        }
    }
}
END_TEST

/* ---- known-invalid documents (JSONTestSuite-style n_* cases) ---- */

static const char *invalid_docs[] = {
    "", " ", "\t\r\n",
    /* structure */
    "[", "]", "{", "}", "[1,]", "[,1]", "[1,,2]", "{\"a\":1,}", "{,}", "{\"a\" 1}", "{\"a\":}",
    "{1:1}", "{'a':1}", "{a:1}", "[1 2]", "[1] [2]", "{}}", "[]]", "{\"a\":1}x", "[1]\x00",
    "{\"a\":1 \"b\":2}", "[\"a\":1]", "{\"a\",1}",
    /* literals */
    "tru", "True", "nul", "NULL", "falsey", "[nan]", "NaN", "Infinity", "-Infinity", "[undefined]",
    /* numbers */
    "01", "-01", "+1", ".5", "1.", "-", "1e", "1e+", "1.e3", "0x10", "1_000", "- 1", "[1.2.3]",
    "[-]", "[00]", "1 000", "\xef\xbc\x91",
    /* strings */
    "\"abc", "\"\\\"", "'a'", "\"\\x41\"", "\"\\u12\"", "\"\\u12G4\"", "\"\\U0041\"",
    "\"\\u0000\"", "\"a\tb\"", "\"a\nb\"", "\"\x01\"", "\"\x1f\"",
    "\"\\ud800\"", "\"\\udc00\"", "\"\\ud800\\u0041\"", "\"\\ud800x\"", "\"\\ud83d\\ud83d\"",
    "\"\\udc00\\ud800\"", "\"\\ud83d\\u",
    /* invalid UTF-8 */
    "\"\x80\"", "\"\xc3\"", "\"\xc0\xaf\"", "\"\xc1\xbf\"", "\"\xe0\x80\xaf\"", "\"\xed\xa0\x80\"",
    "\"\xf0\x80\x80\xaf\"", "\"\xf4\x90\x80\x80\"", "\"\xf5\x80\x80\x80\"", "\"\xff\"", "\"\xfe\"",
    "\"\xe2\x82\"", "\"\xe2\x28\xa1\"",
    /* comments and BOM */
    "[1]//c", "/*c*/[1]", "[1,/*c*/2]", "#x\n[1]", "\xef\xbb\xbf[1]",
};

START_TEST(test_invalid_docs)
{
    for (size_t i = 0; i < sizeof(invalid_docs) / sizeof(invalid_docs[0]); i++) {
        const char *doc = invalid_docs[i];
        /* "[1]\x00" is 4 bytes long; strlen would stop at the NUL. */
        size_t len = strcmp(doc, "[1]") == 0 ? 4 : strlen(doc);
        plait_json_t *v = (plait_json_t *)1;
        plait_clear_error();
        int rc = parse_guarded(doc, len, &v);
        ck_assert_msg(rc == PLAIT_EPROTO, "invalid doc %zu was accepted or gave %d", i, rc);
        ck_assert_ptr_null(v);
        ck_assert_msg(strstr(plait_errmsg(), "offset") != NULL, "doc %zu: detail '%s'", i,
                      plait_errmsg());
    }
}
END_TEST

START_TEST(test_error_detail)
{
    plait_json_t *v;
    ck_assert_int_eq(parse_str("{\"secret text\" 1}", &v), PLAIT_EPROTO);
    ck_assert_str_eq(plait_errmsg(), "json: offset 15: expected ':' after object key");
    ck_assert_ptr_null(strstr(plait_errmsg(), "secret"));
    ck_assert_int_eq(parse_str("[1, 2] x", &v), PLAIT_EPROTO);
    ck_assert_str_eq(plait_errmsg(), "json: offset 7: trailing characters after the value");
    ck_assert_int_eq(parse_str("\"ab\\q\"", &v), PLAIT_EPROTO);
    ck_assert_str_eq(plait_errmsg(), "json: offset 3: invalid escape");
    ck_assert_int_eq(plait_json_parse(NULL, 0, &v), PLAIT_EPROTO);
    ck_assert_int_eq(plait_json_parse(NULL, 3, &v), PLAIT_EINVAL);
    ck_assert_int_eq(plait_json_parse("1", 1, NULL), PLAIT_EINVAL);
}
END_TEST

START_TEST(test_duplicate_keys)
{
    plait_json_t *v;
    ck_assert_int_eq(parse_str("{\"a\":1,\"b\":2,\"a\":3}", &v), PLAIT_EPROTO);
    ck_assert_ptr_nonnull(strstr(plait_errmsg(), "duplicate"));
    /* Same key written with an escape is the same key. */
    ck_assert_int_eq(parse_str("{\"\\u0061\":1,\"a\":3}", &v), PLAIT_EPROTO);
    /* Nested objects may reuse keys; only siblings conflict. */
    ck_assert_int_eq(parse_str("{\"a\":{\"a\":{\"a\":1}}}", &v), 0);
    plait_json_free(v);
    /* Large object: sorted check path. */
    plait_buf_t b;
    plait_buf_init(&b, 0);
    plait_buf_append(&b, "{", 1);
    for (int i = 0; i < 1000; i++) plait_buf_printf(&b, "%s\"k%d\":%d", i ? "," : "", i, i);
    plait_buf_append(&b, "}", 1);
    ck_assert_int_eq(plait_buf_status(&b), 0);
    ck_assert_int_eq(plait_json_parse(b.data, b.len, &v), 0);
    ck_assert_uint_eq(plait_json_len(v), 1000);
    int64_t x;
    ck_assert_int_eq(plait_json_int64(plait_json_get(v, "k777"), &x), 0);
    ck_assert_int_eq(x, 777);
    ck_assert_str_eq(plait_json_key_at(v, 999), "k999");
    plait_json_free(v);
    b.len--; /* drop '}' */
    plait_buf_append(&b, ",\"k500\":0}", 10);
    ck_assert_int_eq(plait_json_parse(b.data, b.len, &v), PLAIT_EPROTO);
    plait_buf_free(&b);
}
END_TEST

/* ---- limits ---- */

static char *nested(size_t depth, size_t *len)
{
    char *s = malloc(2 * depth + 1);
    for (size_t i = 0; i < depth; i++) s[i] = '[';
    for (size_t i = 0; i < depth; i++) s[depth + i] = ']';
    s[2 * depth] = 0;
    *len = 2 * depth;
    return s;
}

START_TEST(test_depth_limit)
{
    size_t len;
    plait_json_t *v;
    char *s = nested(64, &len);
    ck_assert_int_eq(plait_json_parse(s, len, &v), 0);
    plait_json_free(v);
    free(s);
    s = nested(65, &len);
    ck_assert_int_eq(plait_json_parse(s, len, &v), PLAIT_ETOOBIG);
    ck_assert_ptr_nonnull(strstr(plait_errmsg(), "max_depth"));
    free(s);
    /* A deep attack is rejected without deep recursion. */
    s = nested(1000000, &len);
    ck_assert_int_eq(plait_json_parse(s, len / 2, &v), PLAIT_ETOOBIG);
    free(s);
    /* Objects count too. */
    ck_assert_int_eq(parse_str("{\"a\":{\"a\":{\"a\":1}}}", &v), 0);
    plait_json_free(v);
    plait_json_limits_t lim;
    plait_json_limits_default(&lim);
    lim.max_depth = 2;
    const char *d3 = "{\"a\":{\"a\":{\"a\":1}}}";
    ck_assert_int_eq(plait_json_parse_ex(d3, strlen(d3), &lim, &v), PLAIT_ETOOBIG);
    lim.max_depth = 3;
    ck_assert_int_eq(plait_json_parse_ex(d3, strlen(d3), &lim, &v), 0);
    plait_json_free(v);
    lim.max_depth = 0;
    ck_assert_int_eq(plait_json_parse_ex(d3, strlen(d3), &lim, &v), PLAIT_EINVAL);
    lim.max_depth = PLAIT_JSON_MAX_DEPTH_CEILING + 1;
    ck_assert_int_eq(plait_json_limits_validate(&lim), PLAIT_EINVAL);
    lim.max_depth = PLAIT_JSON_MAX_DEPTH_CEILING;
    ck_assert_int_eq(plait_json_limits_validate(&lim), 0);
    s = nested(PLAIT_JSON_MAX_DEPTH_CEILING, &len);
    ck_assert_int_eq(plait_json_parse_ex(s, len, &lim, &v), 0);
    plait_json_free(v);
    free(s);
}
END_TEST

START_TEST(test_node_and_string_limits)
{
    plait_json_limits_t lim;
    plait_json_limits_default(&lim);
    lim.max_nodes = 4;
    plait_json_t *v;
    const char *four = "[1,2,3]";   /* 4 nodes */
    const char *five = "[1,2,3,4]"; /* 5 nodes */
    ck_assert_int_eq(plait_json_parse_ex(four, strlen(four), &lim, &v), 0);
    plait_json_free(v);
    ck_assert_int_eq(plait_json_parse_ex(five, strlen(five), &lim, &v), PLAIT_ETOOBIG);
    ck_assert_ptr_null(v);
    plait_json_limits_default(&lim);
    lim.max_string = 3;
    ck_assert_int_eq(plait_json_parse_ex("\"abc\"", 5, &lim, &v), 0);
    plait_json_free(v);
    ck_assert_int_eq(plait_json_parse_ex("\"abcd\"", 6, &lim, &v), PLAIT_ETOOBIG);
    ck_assert_int_eq(plait_json_parse_ex("{\"abcd\":1}", 10, &lim, &v), PLAIT_ETOOBIG);
    /* The limit is on decoded bytes: six escaped bytes decode to one. */
    ck_assert_int_eq(plait_json_parse_ex("\"\\u0041\\u0042\"", 14, &lim, &v), 0);
    plait_json_free(v);
    /* An escape that decodes to 3 bytes on top of 2 exceeds 3. */
    ck_assert_int_eq(plait_json_parse_ex("\"ab\\u20ac\"", 10, &lim, &v), PLAIT_ETOOBIG);
}
END_TEST

START_TEST(test_big_inputs)
{
    /* 200,000-element array. */
    plait_buf_t b;
    plait_buf_init(&b, 0);
    plait_buf_append(&b, "[", 1);
    for (int i = 0; i < 200000; i++) plait_buf_printf(&b, "%s%d", i ? "," : "", i);
    plait_buf_append(&b, "]", 1);
    ck_assert_int_eq(plait_buf_status(&b), 0);
    plait_json_t *v;
    ck_assert_int_eq(plait_json_parse(b.data, b.len, &v), 0);
    ck_assert_uint_eq(plait_json_len(v), 200000);
    int64_t x;
    ck_assert_int_eq(plait_json_int64(plait_json_at(v, 199999), &x), 0);
    ck_assert_int_eq(x, 199999);
    plait_json_free(v);

    /* A 4 MiB string, guarded. */
    size_t n = 4u << 20;
    char *s = malloc(n + 2);
    s[0] = '"';
    for (size_t i = 1; i <= n; i++) s[i] = (char)('a' + i % 26);
    s[n + 1] = '"';
    ck_assert_int_eq(parse_guarded(s, n + 2, &v), 0);
    size_t got;
    ck_assert_ptr_nonnull(plait_json_string(v, &got));
    ck_assert_uint_eq(got, n);
    plait_json_free(v);
    /* Unterminated big string. */
    ck_assert_int_eq(parse_guarded(s, n + 1, &v), PLAIT_EPROTO);
    free(s);

    /* A number with a very long mantissa. */
    plait_buf_reset(&b);
    plait_buf_append(&b, "0.", 2);
    for (int i = 0; i < 10000; i++) plait_buf_append(&b, "1", 1);
    ck_assert_int_eq(plait_json_parse(b.data, b.len, &v), 0);
    ck_assert_double_eq_tol(plait_json_number(v), 1.0 / 9.0, 1e-15);
    plait_json_free(v);
    plait_buf_free(&b);
}
END_TEST

/* ---- writer ---- */

START_TEST(test_utf8_valid)
{
    size_t bad = 99;
    ck_assert(plait_utf8_valid("", 0, &bad));
    ck_assert(plait_utf8_valid(NULL, 0, NULL));
    ck_assert(plait_utf8_valid("caf\xc3\xa9 \xf0\x9f\x98\x80 \xf4\x8f\xbf\xbf", 15, &bad));
    ck_assert_uint_eq(bad, 99);
    ck_assert(!plait_utf8_valid("ab\0c", 4, &bad));
    ck_assert_uint_eq(bad, 2);
    ck_assert(!plait_utf8_valid("abc\xc3", 4, &bad)); /* truncated */
    ck_assert_uint_eq(bad, 3);
    ck_assert(!plait_utf8_valid("\xed\xa0\x80", 3, &bad)); /* surrogate */
    ck_assert_uint_eq(bad, 0);
    ck_assert(!plait_utf8_valid("x\xc0\xaf", 3, &bad)); /* overlong */
    ck_assert_uint_eq(bad, 1);
    ck_assert(!plait_utf8_valid("\xf4\x90\x80\x80", 4, &bad)); /* > U+10FFFF */
    ck_assert(!plait_utf8_valid("\x80", 1, &bad));
}
END_TEST

START_TEST(test_escape_basic)
{
    char out[64];
    size_t k = plait_json_escape("a\"b\\c\n\x01\x7f", 8, out, sizeof(out));
    ck_assert_str_eq(out, "a\\\"b\\\\c\\n\\u0001\x7f");
    ck_assert_uint_eq(k, strlen(out));
    /* Too small: returns the needed length, writes "". */
    char small[4];
    k = plait_json_escape("a\"b\\c", 5, small, sizeof(small));
    ck_assert_uint_eq(k, 7);
    ck_assert_str_eq(small, "");
    ck_assert_uint_eq(plait_json_escape("abc", 3, NULL, 0), 3);
    /* Exactly fits with the terminator. */
    char four[4];
    ck_assert_uint_eq(plait_json_escape("abc", 3, four, sizeof(four)), 3);
    ck_assert_str_eq(four, "abc");
    /* Invalid UTF-8 becomes U+FFFD, valid is kept. */
    k = plait_json_escape("\xff" "a\xc3\xa9\xed\xa0\x80", 7, out, sizeof(out));
    ck_assert_str_eq(out, "\xef\xbf\xbd" "a\xc3\xa9\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd");
    /* Embedded NUL is escaped (valid JSON; our parser rejects it by design). */
    k = plait_json_escape("a\0b", 3, out, sizeof(out));
    ck_assert_str_eq(out, "a\\u0000b");
}
END_TEST

static uint32_t rng_next(uint32_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 17;
    *s ^= *s << 5;
    return *s;
}

START_TEST(test_roundtrip)
{
    uint32_t seed = 0x12345678u;
    plait_buf_t b;
    plait_buf_init(&b, 0);
    for (int iter = 0; iter < 2000; iter++) {
        /* Random bytes 1..255: valid UTF-8 sequences round trip exactly,
         * bad bytes become U+FFFD; either way the output parses. */
        unsigned char raw[64];
        size_t n = rng_next(&seed) % sizeof(raw);
        for (size_t i = 0; i < n; i++) raw[i] = (unsigned char)(1 + rng_next(&seed) % 255);
        plait_buf_reset(&b);
        ck_assert_int_eq(plait_buf_json_string(&b, (const char *)raw, n), 0);
        plait_json_t *v = NULL;
        ck_assert_msg(plait_json_parse(b.data, b.len, &v) == 0, "iter %d: %s", iter, plait_errmsg());
        size_t got;
        const char *s = plait_json_string(v, &got);
        ck_assert_ptr_nonnull(s);
        /* Escaping the decoded string again is a fixed point. */
        plait_buf_t b2;
        plait_buf_init(&b2, 0);
        ck_assert_int_eq(plait_buf_json_string(&b2, s, got), 0);
        ck_assert_str_eq(b2.data, b.data);
        plait_buf_free(&b2);
        plait_json_free(v);
    }
    /* Valid text (ASCII controls, multibyte) round trips byte-exactly. */
    const char *texts[] = {"", "plain", "tab\there\r\nnew", "\x1f\x7f\"\\/",
                           "\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80\xf4\x8f\xbf\xbf"};
    for (size_t i = 0; i < sizeof(texts) / sizeof(texts[0]); i++) {
        plait_buf_reset(&b);
        ck_assert_int_eq(plait_buf_json_string(&b, texts[i], strlen(texts[i])), 0);
        plait_json_t *v;
        ck_assert_int_eq(plait_json_parse(b.data, b.len, &v), 0);
        ck_assert_str_eq(plait_json_string(v, NULL), texts[i]);
        plait_json_free(v);
    }
    plait_buf_free(&b);
}
END_TEST

START_TEST(test_buf)
{
    plait_buf_t b;
    plait_buf_init(&b, 0);
    ck_assert_ptr_null(b.data);
    ck_assert_int_eq(plait_buf_printf(&b, "{\"epsilon\":"), 0);
    ck_assert_int_eq(plait_buf_json_number(&b, 1.5), 0);
    ck_assert_int_eq(plait_buf_printf(&b, ",\"n\":%d,\"name\":", 3), 0);
    ck_assert_int_eq(plait_buf_json_string(&b, "a\"b", 3), 0);
    ck_assert_int_eq(plait_buf_append(&b, "}", 1), 0);
    ck_assert_str_eq(b.data, "{\"epsilon\":1.5,\"n\":3,\"name\":\"a\\\"b\"}");
    ck_assert_uint_eq(b.len, strlen(b.data));
    plait_json_t *v;
    ck_assert_int_eq(plait_json_parse(b.data, b.len, &v), 0);
    ck_assert_double_eq(plait_json_number(plait_json_get(v, "epsilon")), 1.5);
    plait_json_free(v);

    /* Numbers round trip through the writer. */
    double xs[] = {0.0, -0.0, 1.0, -42.0, 0.1, 1.0 / 3.0, 1e300, -2.5e-310, 9007199254740993.0,
                   123456789.125};
    for (size_t i = 0; i < sizeof(xs) / sizeof(xs[0]); i++) {
        plait_buf_reset(&b);
        ck_assert_int_eq(plait_buf_json_number(&b, xs[i]), 0);
        ck_assert_int_eq(plait_json_parse(b.data, b.len, &v), 0);
        ck_assert_msg(plait_json_number(v) == xs[i], "%s", b.data);
        plait_json_free(v);
    }
    plait_buf_reset(&b);
    ck_assert_int_eq(plait_buf_json_number(&b, NAN), PLAIT_EINVAL);
    ck_assert_int_eq(plait_buf_json_number(&b, INFINITY), PLAIT_EINVAL);
    ck_assert_int_eq(plait_buf_status(&b), 0);
    plait_buf_free(&b);
    plait_buf_free(&b); /* twice is safe */
    plait_buf_free(NULL);

    /* max is enforced and sticky. */
    plait_buf_init(&b, 8);
    ck_assert_int_eq(plait_buf_append(&b, "12345678", 8), 0);
    ck_assert_int_eq(plait_buf_append(&b, "9", 1), PLAIT_ETOOBIG);
    ck_assert_int_eq(plait_buf_printf(&b, "x"), PLAIT_ETOOBIG);
    ck_assert_int_eq(plait_buf_status(&b), PLAIT_ETOOBIG);
    ck_assert_str_eq(b.data, "12345678");
    plait_buf_reset(&b);
    ck_assert_int_eq(plait_buf_status(&b), 0);
    ck_assert_int_eq(plait_buf_json_string(&b, "123456", 6), 0); /* 8 with quotes */
    ck_assert_int_eq(plait_buf_json_string(&b, "", 0), PLAIT_ETOOBIG);
    plait_buf_free(&b);
}
END_TEST

Suite *json_suite(void)
{
    Suite *s = suite_create("json");
    TCase *tc = tcase_create("parse");
    tcase_add_test(tc, test_nested);
    tcase_add_test(tc, test_scalars_top_level);
    tcase_add_test(tc, test_unicode);
    tcase_add_test(tc, test_numbers);
    tcase_add_test(tc, test_prefixes_rejected);
    tcase_add_test(tc, test_invalid_docs);
    tcase_add_test(tc, test_error_detail);
    tcase_add_test(tc, test_duplicate_keys);
    suite_add_tcase(s, tc);
    tc = tcase_create("limits");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_depth_limit);
    tcase_add_test(tc, test_node_and_string_limits);
    tcase_add_test(tc, test_big_inputs);
    suite_add_tcase(s, tc);
    tc = tcase_create("writer");
    tcase_add_test(tc, test_utf8_valid);
    tcase_add_test(tc, test_escape_basic);
    tcase_add_test(tc, test_roundtrip);
    tcase_add_test(tc, test_buf);
    suite_add_tcase(s, tc);
    return s;
}
