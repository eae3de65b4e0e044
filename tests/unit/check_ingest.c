/*
 * check_ingest.c: the text-block and JSON-lines parsers (record boundaries,
 * \r\n, blank lines, field types, line numbers in errors) and file ingest
 * into a store (all or nothing, size limits, the tinyshakespeare corpus), and
 * hostile store rows and ingest input that must end in a clear error.
 */
#include <check.h>
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "plait/ingest.h"
#include "plait/json.h"
#include "plait/store.h"
#include "testutil.h"

typedef struct {
    char text[16][256];
    char kind[16][80];
    char user[16][80];
    bool has_kind[16], has_user[16];
    int64_t time[16];
    size_t len[16];
    size_t n;
    int stop_at;  /* return 5 at this call (1-based) when > 0 */
    int fail_at;  /* return PLAIT_ETOOBIG at this call when > 0 */
} rec_t;

static int rec_cb(void *ud, int64_t t, const char *kind, const char *user, const char *text, size_t len)
{
    rec_t *r = ud;
    ck_assert_ptr_nonnull(text);
    ck_assert_uint_ge(len, 1);
    ck_assert_uint_eq(strlen(text), len);
    ck_assert(plait_utf8_valid(text, len, NULL));
    if (r->n < 16) {
        snprintf(r->text[r->n], sizeof(r->text[0]), "%s", text);
        r->has_kind[r->n] = kind != NULL;
        r->has_user[r->n] = user != NULL;
        snprintf(r->kind[r->n], sizeof(r->kind[0]), "%s", kind ? kind : "");
        snprintf(r->user[r->n], sizeof(r->user[0]), "%s", user ? user : "");
        r->time[r->n] = t;
        r->len[r->n] = len;
    }
    r->n++;
    if (r->stop_at > 0 && (int)r->n == r->stop_at) return 5;
    if (r->fail_at > 0 && (int)r->n == r->fail_at) return plait_fail(PLAIT_ETOOBIG, "store: too big");
    return 0;
}

static int text_of(const char *s, rec_t *r)
{
    memset(r, 0, sizeof(*r));
    return plait_ingest_text(s, strlen(s), rec_cb, r);
}

static int jsonl_of(const char *s, rec_t *r)
{
    memset(r, 0, sizeof(*r));
    return plait_ingest_jsonl(s, strlen(s), rec_cb, r);
}

/* ---- text ---- */

START_TEST(test_text_blocks)
{
    rec_t r;
    ck_assert_int_eq(text_of("a\nb\n\n\nc\r\n\r\nd  \n \t\n\n  e  \n", &r), 0);
    ck_assert_uint_eq(r.n, 4);
    ck_assert_str_eq(r.text[0], "a\nb");
    ck_assert_str_eq(r.text[1], "c");
    ck_assert_str_eq(r.text[2], "d");
    ck_assert_str_eq(r.text[3], "  e"); /* indentation kept, trailing space trimmed */
    ck_assert_int_eq(r.time[0], PLAIT_STORE_TIME_NOW);
    ck_assert(!r.has_kind[0] && !r.has_user[0]);

    /* \r\n inside a block becomes \n; no final newline. */
    ck_assert_int_eq(text_of("x\r\ny\r\n\r\n\r\nz", &r), 0);
    ck_assert_uint_eq(r.n, 2);
    ck_assert_str_eq(r.text[0], "x\ny");
    ck_assert_str_eq(r.text[1], "z");
    /* Leading blank lines, only blank lines, empty input. */
    ck_assert_int_eq(text_of("\n\n \n\nfirst\n", &r), 0);
    ck_assert_uint_eq(r.n, 1);
    ck_assert_str_eq(r.text[0], "first");
    ck_assert_int_eq(text_of("\n \r\n\t\n", &r), 0);
    ck_assert_uint_eq(r.n, 0);
    ck_assert_int_eq(text_of("", &r), 0);
    ck_assert_uint_eq(r.n, 0);
    ck_assert_int_eq(plait_ingest_text(NULL, 0, rec_cb, &r), 0);
    /* UTF-8 passes through. */
    ck_assert_int_eq(text_of("caf\xc3\xa9\n\n\xe2\x82\xac", &r), 0);
    ck_assert_str_eq(r.text[0], "caf\xc3\xa9");
    ck_assert_str_eq(r.text[1], "\xe2\x82\xac");
    /* Input not NUL-terminated: only len bytes are read. */
    memset(&r, 0, sizeof(r));
    ck_assert_int_eq(plait_ingest_text("one\n\ntwoXXXX", 8, rec_cb, &r), 0);
    ck_assert_uint_eq(r.n, 2);
    ck_assert_str_eq(r.text[1], "two");
}
END_TEST

START_TEST(test_text_errors)
{
    rec_t r;
    ck_assert_int_eq(text_of("ok\n\nfine\nSECRET \xff here\n", &r), PLAIT_EPROTO);
    ck_assert_ptr_nonnull(strstr(plait_errmsg(), "line 4"));
    ck_assert_ptr_nonnull(strstr(plait_errmsg(), "column 8"));
    ck_assert_ptr_null(strstr(plait_errmsg(), "SECRET"));
    ck_assert_uint_eq(r.n, 1); /* the first record was delivered before the bad line */
    memset(&r, 0, sizeof(r));
    ck_assert_int_eq(plait_ingest_text("a\0b", 3, rec_cb, &r), PLAIT_EPROTO);
    /* A positive callback value stops and is returned unchanged. */
    memset(&r, 0, sizeof(r));
    r.stop_at = 2;
    ck_assert_int_eq(plait_ingest_text("a\n\nb\n\nc", 7, rec_cb, &r), 5);
    ck_assert_uint_eq(r.n, 2);
    /* A negative one is returned with the record's first line. */
    memset(&r, 0, sizeof(r));
    r.fail_at = 2;
    ck_assert_int_eq(plait_ingest_text("a\n\n\nb\nb2\n\nc", 11, rec_cb, &r), PLAIT_ETOOBIG);
    ck_assert_str_eq(plait_errmsg(), "text record at line 4: store: too big");
    ck_assert_int_eq(plait_ingest_text("x", 1, NULL, NULL), PLAIT_EINVAL);
    ck_assert_int_eq(plait_ingest_text(NULL, 1, rec_cb, &r), PLAIT_EINVAL);
}
END_TEST

/* ---- jsonl ---- */

START_TEST(test_jsonl_valid)
{
    rec_t r;
    const char *doc =
        "{\"text\":\"hello\\nworld\",\"time\":1700000000,\"kind\":\"chat\",\"user\":\"u1\"}\n"
        "\n"
        "   \t \n"
        "{\"text\":\"caf\\u00e9\",\"extra\":{\"nested\":[1,2]},\"kind\":null}\r\n"
        "  {\"user\":\"u2\", \"text\":\"x\", \"time\": 5}  \n"
        "{\"text\":\"last, no newline\",\"time\":0}";
    ck_assert_int_eq(jsonl_of(doc, &r), 0);
    ck_assert_uint_eq(r.n, 4);
    ck_assert_str_eq(r.text[0], "hello\nworld");
    ck_assert_int_eq(r.time[0], 1700000000);
    ck_assert_str_eq(r.kind[0], "chat");
    ck_assert_str_eq(r.user[0], "u1");
    ck_assert_str_eq(r.text[1], "caf\xc3\xa9");
    ck_assert_int_eq(r.time[1], PLAIT_STORE_TIME_NOW);
    ck_assert(!r.has_kind[1] && !r.has_user[1]);
    ck_assert_str_eq(r.user[2], "u2");
    ck_assert_int_eq(r.time[2], 5);
    ck_assert_str_eq(r.text[3], "last, no newline");
    ck_assert_int_eq(r.time[3], 0);
    ck_assert_int_eq(jsonl_of("", &r), 0);
    ck_assert_uint_eq(r.n, 0);
    ck_assert_int_eq(jsonl_of("\n\n\r\n", &r), 0);
    ck_assert_uint_eq(r.n, 0);
}
END_TEST

START_TEST(test_jsonl_bad_lines)
{
    struct {
        const char *line;
        int rc;
        const char *detail; /* substring expected in the message */
    } cases[] = {
        {"not json", PLAIT_EPROTO, "offset 0"},
        {"[\"text\"]", PLAIT_EPROTO, "not a JSON object"},
        {"\"text\"", PLAIT_EPROTO, "not a JSON object"},
        {"{}", PLAIT_EPROTO, "missing \"text\""},
        {"{\"text\":5}", PLAIT_EPROTO, "missing \"text\""},
        {"{\"text\":\"\"}", PLAIT_EPROTO, "empty"},
        {"{\"text\":\"a\",\"time\":1.5}", PLAIT_EPROTO, "\"time\""},
        {"{\"text\":\"a\",\"time\":\"noon\"}", PLAIT_EPROTO, "\"time\""},
        {"{\"text\":\"a\",\"time\":-3}", PLAIT_EPROTO, "negative"},
        {"{\"text\":\"a\",\"time\":99999999999999999999}", PLAIT_ETOOBIG, "\"time\""},
        {"{\"text\":\"a\",\"kind\":3}", PLAIT_EPROTO, "\"kind\" is not a string"},
        {"{\"text\":\"a\",\"user\":[]}", PLAIT_EPROTO, "\"user\" is not a string"},
        {"{\"text\":\"a\",\"text\":\"b\"}", PLAIT_EPROTO, "duplicate"},
        {"{\"text\":\"a\",}", PLAIT_EPROTO, "offset"},
        {"{\"text\":\"a\\u0000b\"}", PLAIT_EPROTO, "u0000"},
        {"{\"text\":\"SECRET\xff\"}", PLAIT_EPROTO, "UTF-8"},
        {"{\"text\":\"a\"} {\"text\":\"b\"}", PLAIT_EPROTO, "trailing"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        /* Two good lines, a blank line, then the bad one: it is line 4. */
        char doc[512];
        snprintf(doc, sizeof(doc), "{\"text\":\"ok\"}\r\n{\"text\":\"ok2\"}\n\n%s\n{\"text\":\"after\"}\n",
                 cases[i].line);
        rec_t r;
        int rc = jsonl_of(doc, &r);
        ck_assert_msg(rc == cases[i].rc, "case %zu: rc %d (%s)", i, rc, plait_errmsg());
        const char *msg = plait_errmsg();
        ck_assert_msg(strncmp(msg, "jsonl line 4: ", 14) == 0, "case %zu: '%s'", i, msg);
        ck_assert_msg(strstr(msg, cases[i].detail) != NULL, "case %zu: '%s'", i, msg);
        ck_assert_ptr_null(strstr(msg, "SECRET"));
        ck_assert_uint_eq(r.n, 2);
    }
}
END_TEST

START_TEST(test_jsonl_callback_results)
{
    rec_t r;
    memset(&r, 0, sizeof(r));
    r.stop_at = 1;
    const char *doc = "{\"text\":\"a\"}\n{\"text\":\"b\"}\n";
    ck_assert_int_eq(plait_ingest_jsonl(doc, strlen(doc), rec_cb, &r), 5);
    ck_assert_uint_eq(r.n, 1);
    memset(&r, 0, sizeof(r));
    r.fail_at = 2;
    ck_assert_int_eq(plait_ingest_jsonl(doc, strlen(doc), rec_cb, &r), PLAIT_ETOOBIG);
    ck_assert_str_eq(plait_errmsg(), "jsonl line 2: store: too big");
    ck_assert_int_eq(plait_ingest_jsonl(doc, 3, NULL, NULL), PLAIT_EINVAL);
    /* Truncated input: the cut line is malformed. */
    memset(&r, 0, sizeof(r));
    ck_assert_int_eq(plait_ingest_jsonl(doc, strlen(doc) - 3, rec_cb, &r), PLAIT_EPROTO);
    ck_assert_uint_eq(r.n, 1);
}
END_TEST

/* ---- files into a store ---- */

static char *tmpdir;

static void setup(void)
{
    tmpdir = tu_tmpdir("ingest");
    ck_assert_ptr_nonnull(tmpdir);
}

static void teardown(void)
{
    tu_rmdir(tmpdir);
    free(tmpdir);
}

static plait_store_t *open_store(const char *name)
{
    char *p = tu_path(tmpdir, name);
    plait_store_config_t cfg;
    plait_store_config_default(&cfg);
    cfg.path = p;
    plait_store_t *st = NULL;
    ck_assert_int_eq(plait_store_open(&st, &cfg), 0);
    free(p);
    return st;
}

typedef struct {
    size_t n;
    char first[64];
} first_t;

static int first_cb(void *ud, const plait_store_record_t *rec)
{
    first_t *f = ud;
    if (f->n++ == 0) snprintf(f->first, sizeof(f->first), "%s", rec->text);
    return 0;
}

START_TEST(test_file_shakespeare)
{
    plait_store_t *st = open_store("shake.db");
    char *path = tu_path(tu_assets_dir(), "tinyshakespeare.txt");
    int64_t added = -1, n;
    int rc = plait_ingest_file(st, path, PLAIT_INGEST_TEXT, 0, &added);
    ck_assert_msg(rc == 0, "%s", plait_errmsg());
    /* One record per speech: 7,222 blank-line separated blocks. */
    ck_assert_int_gt(added, 7000);
    ck_assert_int_lt(added, 7500);
    ck_assert_int_eq(plait_store_count(st, &n), 0);
    ck_assert_int_eq(n, added);
    first_t f = {0};
    ck_assert_int_eq(plait_store_foreach(st, PLAIT_STORE_ALL, first_cb, &f), 0);
    ck_assert_uint_eq(f.n, (size_t)added);
    ck_assert(strncmp(f.first, "First Citizen:\nBefore we proceed", 32) == 0);
    /* The held-out split is about 10%. */
    int64_t held;
    ck_assert_int_eq(plait_store_count_split(st, PLAIT_STORE_HELDOUT, &held), 0);
    ck_assert_int_gt(held, added / 20);
    ck_assert_int_lt(held, added / 6);
    /* Size cap checked before reading. */
    ck_assert_int_eq(plait_ingest_file(st, path, PLAIT_INGEST_TEXT, 1000, &added), PLAIT_ETOOBIG);
    ck_assert_int_eq(added, 0);
    free(path);
    plait_store_close(st);
}
END_TEST

START_TEST(test_file_jsonl_all_or_nothing)
{
    plait_store_t *st = open_store("jl.db");
    char *path = tu_path(tmpdir, "in.jsonl");
    const char *good = "{\"text\":\"one\",\"time\":10,\"kind\":\"chat\"}\n{\"text\":\"two\"}\n";
    ck_assert_int_eq(tu_write_file(path, good, strlen(good)), 0);
    int64_t added = -1, n;
    ck_assert_int_eq(plait_ingest_file(st, path, PLAIT_INGEST_JSONL, 0, &added), 0);
    ck_assert_int_eq(added, 2);

    /* A bad third line: nothing from this file is kept. */
    const char *bad = "{\"text\":\"three\"}\n{\"text\":\"four\"}\n{\"text\":\"five\",\"time\":\"x\"}\n";
    ck_assert_int_eq(tu_write_file(path, bad, strlen(bad)), 0);
    ck_assert_int_eq(plait_ingest_file(st, path, PLAIT_INGEST_JSONL, 0, &added), PLAIT_EPROTO);
    ck_assert_ptr_nonnull(strstr(plait_errmsg(), "line 3"));
    ck_assert_int_eq(added, 0);
    ck_assert_int_eq(plait_store_count(st, &n), 0);
    ck_assert_int_eq(n, 2);

    /* The store refuses a record (bad kind): line number and rollback. */
    const char *badkind = "{\"text\":\"six\"}\n{\"text\":\"seven\",\"kind\":\"tab\\there\"}\n";
    ck_assert_int_eq(tu_write_file(path, badkind, strlen(badkind)), 0);
    ck_assert_int_eq(plait_ingest_file(st, path, PLAIT_INGEST_JSONL, 0, &added), PLAIT_EINVAL);
    ck_assert_ptr_nonnull(strstr(plait_errmsg(), "jsonl line 2: store: kind"));
    ck_assert_int_eq(plait_store_count(st, &n), 0);
    ck_assert_int_eq(n, 2);
    /* The store is usable afterwards (no transaction left open). */
    ck_assert_int_eq(plait_store_begin(st), 0);
    ck_assert_int_eq(plait_store_rollback(st), 0);

    /* A record over the store's max_text. */
    size_t big = (1u << 20) + 100;
    char *doc = malloc(big + 64);
    size_t k = (size_t)snprintf(doc, 64, "{\"text\":\"");
    memset(doc + k, 'a', big);
    k += big;
    k += (size_t)snprintf(doc + k, 64, "\"}\n");
    ck_assert_int_eq(tu_write_file(path, doc, k), 0);
    free(doc);
    ck_assert_int_eq(plait_ingest_file(st, path, PLAIT_INGEST_JSONL, 0, &added), PLAIT_ETOOBIG);
    ck_assert_ptr_nonnull(strstr(plait_errmsg(), "jsonl line 1"));

    /* Missing file, directory, bad format, open transaction. */
    char *missing = tu_path(tmpdir, "nope.jsonl");
    ck_assert_int_eq(plait_ingest_file(st, missing, PLAIT_INGEST_JSONL, 0, &added), PLAIT_ENOENT);
    ck_assert_int_eq(plait_ingest_file(st, tmpdir, PLAIT_INGEST_JSONL, 0, &added), PLAIT_EINVAL);
    ck_assert_int_eq(plait_ingest_file(st, path, (plait_ingest_format_t)7, 0, &added), PLAIT_EINVAL);
    ck_assert_int_eq(plait_ingest_file(NULL, path, PLAIT_INGEST_JSONL, 0, &added), PLAIT_EINVAL);
    ck_assert_int_eq(tu_write_file(path, good, strlen(good)), 0);
    ck_assert_int_eq(plait_store_begin(st), 0);
    ck_assert_int_eq(plait_ingest_file(st, path, PLAIT_INGEST_JSONL, 0, &added), PLAIT_EINVAL);
    ck_assert_int_eq(plait_store_rollback(st), 0);
    /* An empty file adds nothing. */
    ck_assert_int_eq(tu_write_file(path, "", 0), 0);
    ck_assert_int_eq(plait_ingest_file(st, path, PLAIT_INGEST_JSONL, 0, &added), 0);
    ck_assert_int_eq(added, 0);
    free(missing);
    free(path);
    plait_store_close(st);
}
END_TEST

/* ---- hostile store rows and ingest input ---- */

static int count_rec(void *ud, int64_t time, const char *kind, const char *user, const char *text,
                     size_t len)
{
    (void)time, (void)kind, (void)user;
    ck_assert(len >= 1 && strlen(text) == len);
    (*(int *)ud)++;
    return 0;
}

START_TEST(test_store_ingest_hostile)
{
    plait_store_config_t cfg;
    plait_store_config_default(&cfg);
    char *db = tu_path(tmpdir, "h.db");
    cfg.path = db;
    cfg.max_text = 4096;
    plait_store_t *st = NULL;
    ck_assert_int_eq(plait_store_open(&st, &cfg), 0);
    int64_t id;
    ck_assert_int_eq(plait_store_add(st, PLAIT_STORE_TIME_NOW, NULL, "a\0b", 3, &id), PLAIT_EINVAL);
    ck_assert_int_eq(plait_store_add(st, PLAIT_STORE_TIME_NOW, NULL, "a\xff", 2, &id),
                     PLAIT_EINVAL);
    ck_assert_int_eq(plait_store_add(st, PLAIT_STORE_TIME_NOW, NULL, "\xed\xa0\x80", 3, &id),
                     PLAIT_EINVAL); /* surrogate */
    ck_assert_int_eq(plait_store_add(st, PLAIT_STORE_TIME_NOW, NULL, "\xc0\xaf", 2, &id),
                     PLAIT_EINVAL); /* overlong */
    ck_assert_int_eq(plait_store_add(st, PLAIT_STORE_TIME_NOW, NULL, "\xf4\x90\x80\x80", 4, &id),
                     PLAIT_EINVAL);
    ck_assert_int_eq(plait_store_add(st, PLAIT_STORE_TIME_NOW, NULL, "x", 0, &id), PLAIT_EINVAL);
    ck_assert_int_eq(plait_store_add(st, -5, NULL, "x", 1, &id), PLAIT_EINVAL);
    ck_assert_int_eq(plait_store_add(st, PLAIT_STORE_TIME_NOW, "bad\nkind", "x", 1, &id),
                     PLAIT_EINVAL);
    ck_assert_int_eq(plait_store_add(st, PLAIT_STORE_TIME_NOW, "", "x", 1, &id), PLAIT_EINVAL);
    char *huge = malloc(4097);
    ck_assert_ptr_nonnull(huge);
    memset(huge, 'a', 4097);
    ck_assert_int_eq(plait_store_add(st, PLAIT_STORE_TIME_NOW, NULL, huge, 4097, &id),
                     PLAIT_ETOOBIG);
    ck_assert_int_eq(plait_store_add(st, PLAIT_STORE_TIME_NOW, NULL, huge, 4096, &id), 0);
    ck_assert_int_eq(plait_store_add(st, INT64_MAX, NULL, "\xf0\x9f\x98\x80 ok", 7, &id), 0);
    int64_t n = 0;
    ck_assert_int_eq(plait_store_count(st, &n), 0);
    ck_assert_int_eq(n, 2);
    plait_store_close(st);
    free(huge);
    free(db);

    /* JSONL: every hostile line is refused with a clear code, none crashes. */
    static const struct {
        const char *line;
        int want;
    } lines[] = {
        {"{\"text\":\"ok\"}", 0},
        {"{\"text\":\"ok\",\"time\":1e400}", PLAIT_ETOOBIG},
        {"{\"text\":\"ok\",\"time\":9223372036854775808}", PLAIT_ETOOBIG},
        {"{\"text\":\"ok\",\"time\":-1}", PLAIT_EPROTO},
        {"{\"text\":\"ok\",\"time\":1.5}", PLAIT_EPROTO},
        {"{\"text\":\"ok\",\"time\":\"now\"}", PLAIT_EPROTO},
        {"{\"text\":5}", PLAIT_EPROTO},
        {"{\"text\":null}", PLAIT_EPROTO},
        {"{\"text\":[\"a\"]}", PLAIT_EPROTO},
        {"{\"text\":\"\"}", PLAIT_EPROTO},
        {"{\"text\":\"a\\u0000b\"}", PLAIT_EPROTO},
        {"{\"text\":\"\\ud800\"}", PLAIT_EPROTO},
        {"{\"text\":\"a\xff\"}", PLAIT_EPROTO},
        {"{\"text\":\"a\",\"text\":\"b\"}", PLAIT_EPROTO},
        {"[\"text\"]", PLAIT_EPROTO},
        {"\"text\"", PLAIT_EPROTO},
        {"{\"text\":\"ok\"} trailing", PLAIT_EPROTO},
        {"{\"text\":\"ok\"", PLAIT_EPROTO},
        {"{\"text\":\"ok\",\"kind\":7}", PLAIT_EPROTO},
    };
    for (size_t i = 0; i < sizeof(lines) / sizeof(lines[0]); i++) {
        int cnt = 0;
        int rc = plait_ingest_jsonl(lines[i].line, strlen(lines[i].line), count_rec, &cnt);
        if (lines[i].want == 0)
            ck_assert_int_eq(rc, 0);
        else
            ck_assert_msg(rc < 0, "line %zu accepted: %s", i, lines[i].line);
        ck_assert_msg(rc == 0 || rc == lines[i].want || rc == PLAIT_EPROTO || rc == PLAIT_ETOOBIG,
                      "line %zu: rc %d (%s)", i, rc, plait_errmsg());
    }
    /* Deep nesting and a huge number: limits, not a stack overflow. */
    size_t depth = 200000;
    char *deep = malloc(2 * depth + 16);
    ck_assert_ptr_nonnull(deep);
    size_t k = 0;
    k += (size_t)sprintf(deep, "{\"x\":");
    for (size_t i = 0; i < depth; i++)
        deep[k++] = '[';
    for (size_t i = 0; i < depth; i++)
        deep[k++] = ']';
    deep[k++] = '}';
    int cnt = 0;
    ck_assert_int_lt(plait_ingest_jsonl(deep, k, count_rec, &cnt), 0);
    ck_assert_int_eq(cnt, 0);
    k = (size_t)sprintf(deep, "{\"text\":\"a\",\"time\":1");
    for (size_t i = 0; i < 100000; i++)
        deep[k++] = '0';
    deep[k++] = '}';
    ck_assert_int_lt(plait_ingest_jsonl(deep, k, count_rec, &cnt), 0);
    free(deep);
}
END_TEST

Suite *ingest_suite(void)
{
    Suite *s = suite_create("ingest");
    TCase *tc = tcase_create("parse");
    tcase_add_test(tc, test_text_blocks);
    tcase_add_test(tc, test_text_errors);
    tcase_add_test(tc, test_jsonl_valid);
    tcase_add_test(tc, test_jsonl_bad_lines);
    tcase_add_test(tc, test_jsonl_callback_results);
    suite_add_tcase(s, tc);
    tc = tcase_create("file");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_file_shakespeare);
    tcase_add_test(tc, test_file_jsonl_all_or_nothing);
    tcase_add_test(tc, test_store_ingest_hostile);
    suite_add_tcase(s, tc);
    return s;
}
