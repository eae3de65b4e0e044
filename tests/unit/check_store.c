/*
 * check_store.c: the device store: records in and out, persistence, the
 * held-out split, transactions, erasure (including that deleted text is gone
 * from the file bytes), hostile files, and sqlite error translation.
 * Hostile files are crafted with sqlite directly; only tests do that.
 */
#include <check.h>
#include <dirent.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/stat.h>
#include <unistd.h>

#include "plait/store.h"
#include "testutil.h"

static char *tmpdir;

static void setup(void)
{
    tmpdir = tu_tmpdir("store");
    ck_assert_ptr_nonnull(tmpdir);
}

static void teardown(void)
{
    tu_rmdir(tmpdir);
    free(tmpdir);
    tmpdir = NULL;
}

/* A fresh path in the scratch dir (static buffer, one per call site use). */
static const char *db_path(const char *name)
{
    static char buf[4][600];
    static int k;
    k = (k + 1) % 4;
    snprintf(buf[k], sizeof(buf[k]), "%s/%s", tmpdir, name);
    return buf[k];
}

static plait_store_t *open_store(const char *path, double fraction)
{
    plait_store_config_t cfg;
    plait_store_config_default(&cfg);
    cfg.path = path;
    cfg.heldout_fraction = fraction;
    plait_store_t *st = NULL;
    int rc = plait_store_open(&st, &cfg);
    ck_assert_msg(rc == 0, "open: %s", plait_errmsg());
    return st;
}

static int open_rc(const char *path)
{
    plait_store_config_t cfg;
    plait_store_config_default(&cfg);
    cfg.path = path;
    plait_store_t *st = (plait_store_t *)1;
    int rc = plait_store_open(&st, &cfg);
    if (rc != 0) ck_assert_ptr_null(st);
    plait_store_close(rc == 0 ? st : NULL);
    return rc;
}

static void add_text(plait_store_t *st, int64_t t, const char *kind, const char *text, int64_t *id)
{
    int rc = plait_store_add(st, t, kind, text, strlen(text), id);
    ck_assert_msg(rc == 0, "add: %s", plait_errmsg());
}

/* Copies of the fields of one record, for comparisons after the callback. */
typedef struct {
    int64_t id, time;
    char kind[80];
    char text[256];
    size_t len;
    bool heldout;
} rec_copy_t;

typedef struct {
    rec_copy_t recs[64];
    size_t n, calls;
    int stop_after; /* return 7 after this many calls when > 0 */
    plait_store_t *st;
    int reentry_rc;
} collect_t;

static int collect_cb(void *ud, const plait_store_record_t *r)
{
    collect_t *c = ud;
    c->calls++;
    if (c->st) c->reentry_rc = plait_store_delete(c->st, r->id);
    if (c->n < 64) {
        rec_copy_t *o = &c->recs[c->n++];
        o->id = r->id;
        o->time = r->time;
        snprintf(o->kind, sizeof(o->kind), "%s", r->kind);
        snprintf(o->text, sizeof(o->text), "%s", r->text);
        o->len = r->len;
        o->heldout = r->heldout;
        ck_assert_uint_eq(strlen(r->text), r->len);
    }
    if (c->stop_after > 0 && (int)c->calls == c->stop_after) return 7;
    return 0;
}

/* ---- config ---- */

START_TEST(test_config)
{
    plait_store_config_t cfg;
    plait_store_config_default(&cfg);
    ck_assert_int_eq(plait_store_config_validate(&cfg), PLAIT_EINVAL); /* no path */
    cfg.path = "x.db";
    ck_assert_int_eq(plait_store_config_validate(&cfg), 0);
    ck_assert_uint_eq(cfg.max_text, 1u << 20);
    ck_assert(cfg.wal && cfg.create && !cfg.sync_full);
    cfg.heldout_fraction = 1.5;
    ck_assert_int_eq(plait_store_config_validate(&cfg), PLAIT_EINVAL);
    cfg.heldout_fraction = 0.0 / 0.0;
    ck_assert_int_eq(plait_store_config_validate(&cfg), PLAIT_EINVAL);
    cfg.heldout_fraction = 1.0;
    ck_assert_int_eq(plait_store_config_validate(&cfg), 0);
    cfg.max_text = 0;
    ck_assert_int_eq(plait_store_config_validate(&cfg), PLAIT_EINVAL);
    cfg.max_text = PLAIT_STORE_MAX_TEXT_CEILING + 1;
    ck_assert_int_eq(plait_store_config_validate(&cfg), PLAIT_EINVAL);
    cfg.max_text = 10;
    cfg.busy_timeout_ms = -1;
    ck_assert_int_eq(plait_store_config_validate(&cfg), PLAIT_EINVAL);
    ck_assert_int_eq(plait_store_config_validate(NULL), PLAIT_EINVAL);
    plait_store_t *st = (plait_store_t *)1;
    ck_assert_int_eq(plait_store_open(&st, &cfg), PLAIT_EINVAL);
    ck_assert_ptr_null(st);
    plait_store_close(NULL);
}
END_TEST

/* ---- records ---- */

START_TEST(test_add_get_iterate)
{
    const char *path = db_path("basic.db");
    plait_store_t *st = open_store(path, 0.1);
    int64_t id1, id2, id3, n = -1;
    ck_assert_int_eq(plait_store_count(st, &n), 0);
    ck_assert_int_eq(n, 0);
    add_text(st, 1000, "chat", "hello there", &id1);
    add_text(st, 2000, NULL, "caf\xc3\xa9 \xf0\x9f\x98\x80", &id2);
    time_t before = time(NULL);
    add_text(st, PLAIT_STORE_TIME_NOW, "note", "third", &id3);
    ck_assert_int_gt(id1, 0);
    ck_assert_int_gt(id2, id1);
    ck_assert_int_gt(id3, id2);
    ck_assert_int_eq(plait_store_count(st, &n), 0);
    ck_assert_int_eq(n, 3);

    collect_t c = {0};
    ck_assert_int_eq(plait_store_get(st, id2, collect_cb, &c), 0);
    ck_assert_uint_eq(c.n, 1);
    ck_assert_int_eq(c.recs[0].id, id2);
    ck_assert_int_eq(c.recs[0].time, 2000);
    ck_assert_str_eq(c.recs[0].kind, PLAIT_STORE_DEFAULT_KIND);
    ck_assert_str_eq(c.recs[0].text, "caf\xc3\xa9 \xf0\x9f\x98\x80");
    ck_assert_int_eq(c.recs[0].heldout, plait_store_is_heldout(st, id2));
    memset(&c, 0, sizeof(c));
    ck_assert_int_eq(plait_store_get(st, id3 + 100, collect_cb, &c), PLAIT_ENOENT);
    ck_assert_uint_eq(c.calls, 0);

    memset(&c, 0, sizeof(c));
    ck_assert_int_eq(plait_store_foreach(st, PLAIT_STORE_ALL, collect_cb, &c), 0);
    ck_assert_uint_eq(c.n, 3);
    ck_assert_int_eq(c.recs[0].id, id1);
    ck_assert_str_eq(c.recs[0].kind, "chat");
    ck_assert_str_eq(c.recs[0].text, "hello there");
    ck_assert_uint_eq(c.recs[0].len, 11);
    ck_assert_int_ge(c.recs[2].time, (int64_t)before);
    ck_assert_int_le(c.recs[2].time, (int64_t)time(NULL));
    plait_store_close(st);

    /* Persistence across close/reopen, same ids. */
    st = open_store(path, 0.1);
    memset(&c, 0, sizeof(c));
    ck_assert_int_eq(plait_store_foreach(st, PLAIT_STORE_ALL, collect_cb, &c), 0);
    ck_assert_uint_eq(c.n, 3);
    ck_assert_int_eq(c.recs[0].id, id1);
    ck_assert_int_eq(c.recs[1].id, id2);
    ck_assert_str_eq(c.recs[2].text, "third");
    plait_store_close(st);
}
END_TEST

START_TEST(test_add_validation)
{
    plait_store_t *st = open_store(db_path("valid.db"), 0.1);
    int64_t id;
    char kind65[66];
    memset(kind65, 'k', 65);
    kind65[65] = 0;
    ck_assert_int_eq(plait_store_add(st, 1, kind65, "x", 1, &id), PLAIT_EINVAL);
    kind65[64] = 0; /* 64 is fine */
    ck_assert_int_eq(plait_store_add(st, 1, kind65, "x", 1, &id), 0);
    ck_assert_int_eq(plait_store_add(st, 1, "", "x", 1, &id), PLAIT_EINVAL);
    ck_assert_int_eq(plait_store_add(st, 1, "a\nb", "x", 1, &id), PLAIT_EINVAL);
    ck_assert_int_eq(plait_store_add(st, -5, "chat", "x", 1, &id), PLAIT_EINVAL);
    ck_assert_int_eq(plait_store_add(st, 1, "chat", "x", 0, &id), PLAIT_EINVAL);
    ck_assert_int_eq(plait_store_add(st, 1, "chat", NULL, 1, &id), PLAIT_EINVAL);
    /* Invalid UTF-8 and NUL: refused, and the detail does not quote the text. */
    const char bad[] = "SECRETWORD \xff tail";
    ck_assert_int_eq(plait_store_add(st, 1, "chat", bad, sizeof(bad) - 1, &id), PLAIT_EINVAL);
    ck_assert_ptr_null(strstr(plait_errmsg(), "SECRET"));
    ck_assert_ptr_nonnull(strstr(plait_errmsg(), "byte 11"));
    ck_assert_int_eq(plait_store_add(st, 1, "chat", "a\0b", 3, &id), PLAIT_EINVAL);
    ck_assert_int_eq(plait_store_add(st, 1, "chat", "\xed\xa0\x80", 3, &id), PLAIT_EINVAL);
    /* Text need not be NUL-terminated: only len bytes are stored. */
    ck_assert_int_eq(plait_store_add(st, 1, "chat", "abcdef", 3, &id), 0);
    collect_t c = {0};
    ck_assert_int_eq(plait_store_get(st, id, collect_cb, &c), 0);
    ck_assert_str_eq(c.recs[0].text, "abc");
    /* Too big: ETOOBIG at max_text + 1, fine at max_text. */
    size_t big = (1u << 20) + 1;
    char *huge = malloc(big);
    memset(huge, 'a', big);
    ck_assert_int_eq(plait_store_add(st, 1, "chat", huge, big, &id), PLAIT_ETOOBIG);
    ck_assert_int_eq(plait_store_add(st, 1, "chat", huge, big - 1, &id), 0);
    free(huge);
    int64_t n;
    ck_assert_int_eq(plait_store_count(st, &n), 0);
    ck_assert_int_eq(n, 3);
    plait_store_close(st);
}
END_TEST

START_TEST(test_delete)
{
    plait_store_t *st = open_store(db_path("del.db"), 0.1);
    int64_t ids[200];
    for (int i = 0; i < 200; i++) {
        char t[32];
        snprintf(t, sizeof(t), "record %d", i);
        add_text(st, 100 + i, "chat", t, &ids[i]);
    }
    ck_assert_int_eq(plait_store_delete(st, ids[10]), 0);
    collect_t c = {0};
    ck_assert_int_eq(plait_store_get(st, ids[10], collect_cb, &c), PLAIT_ENOENT);
    ck_assert_int_eq(plait_store_delete(st, ids[10]), PLAIT_ENOENT);
    int64_t n, del = -1;
    ck_assert_int_eq(plait_store_delete_before(st, 150, &del), 0);
    ck_assert_int_eq(del, 49); /* times 100..149, minus the one already gone */
    ck_assert_int_eq(plait_store_count(st, &n), 0);
    ck_assert_int_eq(n, 150);
    ck_assert_int_eq(plait_store_delete_before(st, 150, &del), 0);
    ck_assert_int_eq(del, 0);
    memset(&c, 0, sizeof(c));
    ck_assert_int_eq(plait_store_foreach(st, PLAIT_STORE_ALL, collect_cb, &c), 0);
    ck_assert_int_eq(c.recs[0].time, 150); /* records at exactly the cut-off are kept */
    ck_assert_str_eq(c.recs[0].text, "record 50");
    /* Ids are never reused: delete the newest, add, get a larger id. */
    ck_assert_int_eq(plait_store_delete(st, ids[199]), 0);
    int64_t nid;
    add_text(st, 5, "chat", "new", &nid);
    ck_assert_int_gt(nid, ids[199]);
    plait_store_close(st);
}
END_TEST

START_TEST(test_callback_stop_and_reentry)
{
    plait_store_t *st = open_store(db_path("cb.db"), 0.0);
    for (int i = 0; i < 10; i++) add_text(st, i, "chat", "x", NULL);
    collect_t c = {0};
    c.stop_after = 3;
    ck_assert_int_eq(plait_store_foreach(st, PLAIT_STORE_ALL, collect_cb, &c), 7);
    ck_assert_uint_eq(c.calls, 3);
    /* The statement was reset: a second iteration starts from the beginning. */
    memset(&c, 0, sizeof(c));
    ck_assert_int_eq(plait_store_foreach(st, PLAIT_STORE_ALL, collect_cb, &c), 0);
    ck_assert_uint_eq(c.calls, 10);
    ck_assert_int_eq(c.recs[0].time, 0);
    /* Using the store from inside the callback is refused. */
    memset(&c, 0, sizeof(c));
    c.st = st;
    c.stop_after = 1;
    ck_assert_int_eq(plait_store_foreach(st, PLAIT_STORE_ALL, collect_cb, &c), 7);
    ck_assert_int_eq(c.reentry_rc, PLAIT_EINVAL);
    int64_t n;
    ck_assert_int_eq(plait_store_count(st, &n), 0);
    ck_assert_int_eq(n, 10);
    ck_assert_int_eq(plait_store_foreach(st, PLAIT_STORE_ALL, NULL, NULL), PLAIT_EINVAL);
    ck_assert_int_eq(plait_store_foreach(st, (plait_store_split_t)9, collect_cb, &c), PLAIT_EINVAL);
    plait_store_close(st);
}
END_TEST

/* ---- split ---- */

typedef struct {
    int64_t *ids;
    size_t n, cap;
    bool want_heldout;
    bool all_match;
} idlist_t;

static int ids_cb(void *ud, const plait_store_record_t *r)
{
    idlist_t *l = ud;
    if (r->heldout != l->want_heldout) l->all_match = false;
    if (l->n < l->cap) l->ids[l->n++] = r->id;
    return 0;
}

START_TEST(test_split)
{
    const char *path = db_path("split.db");
    plait_store_t *st = open_store(path, 0.2);
    const int N = 3000;
    ck_assert_int_eq(plait_store_begin(st), 0);
    for (int i = 0; i < N; i++) add_text(st, i, "chat", "t", NULL);
    ck_assert_int_eq(plait_store_commit(st), 0);
    int64_t all, train, held;
    ck_assert_int_eq(plait_store_count_split(st, PLAIT_STORE_ALL, &all), 0);
    ck_assert_int_eq(plait_store_count_split(st, PLAIT_STORE_TRAIN, &train), 0);
    ck_assert_int_eq(plait_store_count_split(st, PLAIT_STORE_HELDOUT, &held), 0);
    ck_assert_int_eq(all, N);
    ck_assert_int_eq(train + held, N);
    /* Binomial(3000, 0.2): mean 600, sd ~22; allow > 4 sd. */
    ck_assert_int_gt(held, 500);
    ck_assert_int_lt(held, 700);

    idlist_t h1 = {calloc((size_t)N, sizeof(int64_t)), 0, (size_t)N, true, true};
    ck_assert_int_eq(plait_store_foreach(st, PLAIT_STORE_HELDOUT, ids_cb, &h1), 0);
    ck_assert_int_eq((int64_t)h1.n, held);
    ck_assert(h1.all_match);
    idlist_t t1 = {calloc((size_t)N, sizeof(int64_t)), 0, (size_t)N, false, true};
    ck_assert_int_eq(plait_store_foreach(st, PLAIT_STORE_TRAIN, ids_cb, &t1), 0);
    ck_assert_int_eq((int64_t)t1.n, train);
    ck_assert(t1.all_match);
    plait_store_close(st);

    /* Same split after reopen. */
    st = open_store(path, 0.2);
    idlist_t h2 = {calloc((size_t)N, sizeof(int64_t)), 0, (size_t)N, true, true};
    ck_assert_int_eq(plait_store_foreach(st, PLAIT_STORE_HELDOUT, ids_cb, &h2), 0);
    ck_assert_uint_eq(h2.n, h1.n);
    ck_assert_mem_eq(h2.ids, h1.ids, h1.n * sizeof(int64_t));
    /* Deleting other records does not move anyone between splits. */
    ck_assert_int_eq(plait_store_delete(st, t1.ids[0]), 0);
    h2.n = 0;
    ck_assert_int_eq(plait_store_foreach(st, PLAIT_STORE_HELDOUT, ids_cb, &h2), 0);
    ck_assert_mem_eq(h2.ids, h1.ids, h1.n * sizeof(int64_t));
    plait_store_close(st);

    /* A larger fraction only adds held-out records. */
    st = open_store(path, 0.3);
    idlist_t h3 = {calloc((size_t)N, sizeof(int64_t)), 0, (size_t)N, true, true};
    ck_assert_int_eq(plait_store_foreach(st, PLAIT_STORE_HELDOUT, ids_cb, &h3), 0);
    ck_assert_uint_gt(h3.n, h1.n);
    size_t j = 0;
    for (size_t i = 0; i < h3.n && j < h1.n; i++)
        if (h3.ids[i] == h1.ids[j]) j++;
    ck_assert_uint_eq(j, h1.n); /* h1 is a subsequence of h3 */
    plait_store_close(st);

    /* Fractions 0 and 1. */
    st = open_store(path, 0.0);
    ck_assert_int_eq(plait_store_count_split(st, PLAIT_STORE_HELDOUT, &held), 0);
    ck_assert_int_eq(held, 0);
    plait_store_close(st);
    st = open_store(path, 1.0);
    ck_assert_int_eq(plait_store_count_split(st, PLAIT_STORE_TRAIN, &train), 0);
    ck_assert_int_eq(train, 0);
    plait_store_close(st);

    /* Another store (another salt) holds out different ids. */
    plait_store_t *other = open_store(db_path("split2.db"), 0.2);
    size_t same = 0;
    plait_store_t *again = open_store(path, 0.2);
    for (int64_t id = 1; id <= 1000; id++)
        if (plait_store_is_heldout(other, id) && plait_store_is_heldout(again, id)) same++;
    ck_assert_uint_lt(same, 100); /* independent: ~40 expected, identical would be ~200 */
    plait_store_close(other);
    plait_store_close(again);
    free(h1.ids);
    free(t1.ids);
    free(h2.ids);
    free(h3.ids);
}
END_TEST

/* ---- transactions ---- */

START_TEST(test_transactions)
{
    const char *path = db_path("tx.db");
    plait_store_t *st = open_store(path, 0.1);
    int64_t n;
    ck_assert_int_eq(plait_store_begin(st), 0);
    ck_assert_int_eq(plait_store_begin(st), PLAIT_EINVAL);
    for (int i = 0; i < 1000; i++) add_text(st, i, "chat", "batch", NULL);
    ck_assert_int_eq(plait_store_count(st, &n), 0);
    ck_assert_int_eq(n, 1000); /* visible inside the transaction */
    ck_assert_int_eq(plait_store_rollback(st), 0);
    ck_assert_int_eq(plait_store_count(st, &n), 0);
    ck_assert_int_eq(n, 0);
    ck_assert_int_eq(plait_store_commit(st), PLAIT_EINVAL);
    ck_assert_int_eq(plait_store_rollback(st), 0);

    ck_assert_int_eq(plait_store_begin(st), 0);
    for (int i = 0; i < 1000; i++) add_text(st, i, "chat", "batch", NULL);
    int64_t del;
    ck_assert_int_eq(plait_store_delete_before(st, 500, &del), 0);
    ck_assert_int_eq(del, 500);
    ck_assert_int_eq(plait_store_checkpoint(st), PLAIT_EINVAL); /* inside a transaction */
    ck_assert_int_eq(plait_store_commit(st), 0);
    ck_assert_int_eq(plait_store_count(st, &n), 0);
    ck_assert_int_eq(n, 500);

    /* Closing with an open transaction rolls it back. */
    ck_assert_int_eq(plait_store_begin(st), 0);
    add_text(st, 1, "chat", "lost", NULL);
    plait_store_close(st);
    st = open_store(path, 0.1);
    ck_assert_int_eq(plait_store_count(st, &n), 0);
    ck_assert_int_eq(n, 500);
    plait_store_close(st);
}
END_TEST

START_TEST(test_busy)
{
    const char *path = db_path("busy.db");
    plait_store_t *a = open_store(path, 0.1);
    plait_store_config_t cfg;
    plait_store_config_default(&cfg);
    cfg.path = path;
    cfg.busy_timeout_ms = 0;
    plait_store_t *b = NULL;
    ck_assert_int_eq(plait_store_open(&b, &cfg), 0);
    ck_assert_int_eq(plait_store_begin(a), 0);
    add_text(a, 1, "chat", "held", NULL);
    ck_assert_int_eq(plait_store_add(b, 1, "chat", "x", 1, NULL), PLAIT_EBUSY);
    ck_assert_ptr_nonnull(strstr(plait_errmsg(), "sqlite"));
    ck_assert_int_eq(plait_store_begin(b), PLAIT_EBUSY);
    /* WAL: the reader still sees the last committed state. */
    int64_t n;
    ck_assert_int_eq(plait_store_count(b, &n), 0);
    ck_assert_int_eq(n, 0);
    ck_assert_int_eq(plait_store_commit(a), 0);
    ck_assert_int_eq(plait_store_add(b, 1, "chat", "x", 1, NULL), 0);
    ck_assert_int_eq(plait_store_count(a, &n), 0);
    ck_assert_int_eq(n, 2);
    plait_store_close(a);
    plait_store_close(b);
}
END_TEST

/* ---- secure delete ---- */

static bool file_contains(const char *path, const char *needle)
{
    size_t len = 0;
    uint8_t *buf = tu_read_file(path, &len);
    if (!buf) return false; /* no file, no copy */
    size_t nl = strlen(needle);
    bool found = false;
    for (size_t i = 0; i + nl <= len && !found; i++)
        if (memcmp(buf + i, needle, nl) == 0) found = true;
    free(buf);
    return found;
}

static bool store_files_contain(const char *path, const char *needle)
{
    char wal[700], jrn[700];
    snprintf(wal, sizeof(wal), "%s-wal", path);
    snprintf(jrn, sizeof(jrn), "%s-journal", path);
    return file_contains(path, needle) || file_contains(wal, needle) || file_contains(jrn, needle);
}

static void secure_delete_case(const char *name, bool wal, bool by_id)
{
    const char *path = db_path(name);
    plait_store_config_t cfg;
    plait_store_config_default(&cfg);
    cfg.path = path;
    cfg.wal = wal;
    plait_store_t *st = NULL;
    ck_assert_int_eq(plait_store_open(&st, &cfg), 0);
    const char *marker = "ZQXJ-unique-marker-7f3a9c";
    /* Surround the marker with other records so it shares pages with survivors. */
    char text[400];
    for (int i = 0; i < 50; i++) {
        snprintf(text, sizeof(text), "keep me %d ................................................", i);
        add_text(st, 1000 + i, "chat", text, NULL);
    }
    int64_t mid;
    snprintf(text, sizeof(text), "private: %s and more private words", marker);
    add_text(st, 10, "chat", text, &mid);
    /* A second copy of the marker in a big record that spills onto overflow pages. */
    size_t big = 20000;
    char *bigtext = malloc(big + 1);
    for (size_t i = 0; i < big; i++) bigtext[i] = (char)('a' + i % 26);
    memcpy(bigtext + 9000, marker, strlen(marker));
    bigtext[big] = 0;
    add_text(st, 11, "chat", bigtext, NULL);
    free(bigtext);
    for (int i = 50; i < 100; i++) {
        snprintf(text, sizeof(text), "keep me %d ................................................", i);
        add_text(st, 1000 + i, "chat", text, NULL);
    }
    ck_assert_int_eq(plait_store_checkpoint(st), 0);
    /* Control: the marker is in the file now, so the check below can fail. */
    ck_assert(store_files_contain(path, marker));

    if (by_id) {
        ck_assert_int_eq(plait_store_delete(st, mid), 0);
        ck_assert_int_eq(plait_store_delete(st, mid + 1), 0);
    } else {
        int64_t n = 0;
        ck_assert_int_eq(plait_store_delete_before(st, 1000, &n), 0);
        ck_assert_int_eq(n, 2);
    }
    /* Gone from the files right after the call returns, before close. */
    ck_assert_msg(!store_files_contain(path, marker), "marker still in file after delete");
    plait_store_close(st);
    ck_assert_msg(!store_files_contain(path, marker), "marker still in file after close");
    /* Survivors are intact. */
    st = NULL;
    ck_assert_int_eq(plait_store_open(&st, &cfg), 0);
    int64_t n;
    ck_assert_int_eq(plait_store_count(st, &n), 0);
    ck_assert_int_eq(n, 100);
    plait_store_close(st);
}

START_TEST(test_secure_delete_wal_before)
{
    secure_delete_case("sd1.db", true, false);
}
END_TEST

START_TEST(test_secure_delete_wal_by_id)
{
    secure_delete_case("sd2.db", true, true);
}
END_TEST

START_TEST(test_secure_delete_rollback_journal)
{
    secure_delete_case("sd3.db", false, false);
}
END_TEST

/* ---- hostile files ---- */

static void raw_exec(const char *path, const char *sql)
{
    sqlite3 *db = NULL;
    ck_assert_int_eq(sqlite3_open(path, &db), SQLITE_OK);
    char *err = NULL;
    int rc = sqlite3_exec(db, sql, NULL, NULL, &err);
    ck_assert_msg(rc == SQLITE_OK, "raw sql: %s", err ? err : "?");
    sqlite3_free(err);
    sqlite3_close(db);
}

START_TEST(test_not_a_store)
{
    /* Random bytes. */
    const char *p = db_path("random.db");
    uint8_t junk[8192];
    uint32_t s = 12345;
    for (size_t i = 0; i < sizeof(junk); i++) {
        s = s * 1664525u + 1013904223u;
        junk[i] = (uint8_t)(s >> 24);
    }
    ck_assert_int_eq(tu_write_file(p, junk, sizeof(junk)), 0);
    ck_assert_int_eq(open_rc(p), PLAIT_EPROTO);
    ck_assert_ptr_nonnull(strstr(plait_errmsg(), "not an sqlite database"));
    /* The file was not modified. */
    size_t len;
    uint8_t *back = tu_read_file(p, &len);
    ck_assert_uint_eq(len, sizeof(junk));
    ck_assert_mem_eq(back, junk, len);
    free(back);
    /* A text file. */
    p = db_path("text.db");
    const char *txt = "this is not a database\n";
    ck_assert_int_eq(tu_write_file(p, txt, strlen(txt)), 0);
    ck_assert_int_eq(open_rc(p), PLAIT_EPROTO);
    /* An sqlite header followed by garbage. */
    p = db_path("header.db");
    memcpy(junk, "SQLite format 3", 16);
    ck_assert_int_eq(tu_write_file(p, junk, sizeof(junk)), 0);
    int rc = open_rc(p);
    ck_assert_msg(rc == PLAIT_EPROTO || rc == PLAIT_EMISMATCH, "rc %d", rc);
    /* Another application's database. */
    p = db_path("foreign.db");
    raw_exec(p, "CREATE TABLE foo(x); INSERT INTO foo VALUES (1);");
    ck_assert_int_eq(open_rc(p), PLAIT_EMISMATCH);
    ck_assert_ptr_nonnull(strstr(plait_errmsg(), "not a plait store"));
    p = db_path("foreign_meta.db");
    raw_exec(p, "CREATE TABLE meta(key TEXT PRIMARY KEY, value); INSERT INTO meta VALUES ('magic','other');");
    ck_assert_int_eq(open_rc(p), PLAIT_EMISMATCH);
    p = db_path("foreign_meta_shape.db");
    raw_exec(p, "CREATE TABLE meta(a, b);");
    ck_assert_int_eq(open_rc(p), PLAIT_EMISMATCH);
    p = db_path("foreign_app.db");
    raw_exec(p, "PRAGMA application_id = 1234; CREATE TABLE t(x);");
    ck_assert_int_eq(open_rc(p), PLAIT_EMISMATCH);
    /* A zero-length file becomes a new store. */
    p = db_path("empty.db");
    ck_assert_int_eq(tu_write_file(p, "", 0), 0);
    ck_assert_int_eq(open_rc(p), 0);
    /* Missing file with create = false. */
    plait_store_config_t cfg;
    plait_store_config_default(&cfg);
    cfg.path = db_path("missing.db");
    cfg.create = false;
    plait_store_t *st = NULL;
    ck_assert_int_eq(plait_store_open(&st, &cfg), PLAIT_ENOENT);
    ck_assert_int_ne(access(cfg.path, F_OK), 0);
}
END_TEST

START_TEST(test_schema_version)
{
    const char *p = db_path("newer.db");
    plait_store_t *st = open_store(p, 0.1);
    plait_store_close(st);
    raw_exec(p, "UPDATE meta SET value = 2 WHERE key = 'schema_version';");
    ck_assert_int_eq(open_rc(p), PLAIT_EMISMATCH);
    ck_assert_ptr_nonnull(strstr(plait_errmsg(), "newer"));
    raw_exec(p, "UPDATE meta SET value = 'one' WHERE key = 'schema_version';");
    ck_assert_int_eq(open_rc(p), PLAIT_EPROTO);
    raw_exec(p, "UPDATE meta SET value = 1 WHERE key = 'schema_version';"
                "DELETE FROM meta WHERE key = 'salt';");
    ck_assert_int_eq(open_rc(p), PLAIT_EPROTO);
    raw_exec(p, "INSERT INTO meta VALUES ('salt', 42); DROP TABLE records;");
    ck_assert_int_eq(open_rc(p), PLAIT_EPROTO);
    ck_assert_ptr_nonnull(strstr(plait_errmsg(), "records"));
}
END_TEST

typedef struct {
    size_t calls;
} count_ctx_t;

static int count_cb(void *ud, const plait_store_record_t *r)
{
    (void)r;
    ((count_ctx_t *)ud)->calls++;
    return 0;
}

/* Tamper with record 2 of a 3-record store and expect EPROTO naming id 2. */
static void tampered_case(const char *name, const char *sql, size_t max_text)
{
    const char *p = db_path(name);
    plait_store_t *st = open_store(p, 0.0);
    add_text(st, 1, "chat", "first", NULL);
    add_text(st, 2, "chat", "second, a bit longer than ten bytes", NULL);
    add_text(st, 3, "chat", "third", NULL);
    plait_store_close(st);
    if (sql) raw_exec(p, sql);
    plait_store_config_t cfg;
    plait_store_config_default(&cfg);
    cfg.path = p;
    cfg.max_text = max_text;
    cfg.heldout_fraction = 0.0;
    ck_assert_int_eq(plait_store_open(&st, &cfg), 0);
    count_ctx_t c = {0};
    ck_assert_int_eq(plait_store_foreach(st, PLAIT_STORE_ALL, count_cb, &c), PLAIT_EPROTO);
    ck_assert_msg(strstr(plait_errmsg(), "record 2") != NULL, "%s: %s", name, plait_errmsg());
    ck_assert_ptr_null(strstr(plait_errmsg(), "second"));
    ck_assert_uint_eq(c.calls, 1); /* record 1 was delivered before the bad row */
    c.calls = 0;
    ck_assert_int_eq(plait_store_get(st, 2, count_cb, &c), PLAIT_EPROTO);
    ck_assert_uint_eq(c.calls, 0);
    ck_assert_int_eq(plait_store_get(st, 3, count_cb, &c), 0);
    plait_store_close(st);
}

START_TEST(test_tampered_rows)
{
    tampered_case("t_blob.db", "UPDATE records SET text = x'6869' WHERE id = 2;", 1 << 20);
    tampered_case("t_utf8.db", "UPDATE records SET text = CAST(x'68ff69' AS TEXT) WHERE id = 2;", 1 << 20);
    tampered_case("t_nul.db", "UPDATE records SET text = CAST(x'680069' AS TEXT) WHERE id = 2;", 1 << 20);
    tampered_case("t_empty.db", "UPDATE records SET text = '' WHERE id = 2;", 1 << 20);
    tampered_case("t_kind.db", "UPDATE records SET kind = 'a' || char(10) || 'b' WHERE id = 2;", 1 << 20);
    tampered_case("t_kindblob.db", "UPDATE records SET kind = x'41' WHERE id = 2;", 1 << 20);
    tampered_case("t_time.db", "UPDATE records SET time = 'yesterday' WHERE id = 2;", 1 << 20);
    tampered_case("t_negtime.db", "UPDATE records SET time = -1 WHERE id = 2;", 1 << 20);
    tampered_case("t_big.db", NULL, 10); /* opened with a smaller max_text */
    /* Far larger than max_text: sqlite refuses to materialize it (SQLITE_LIMIT_LENGTH). */
    tampered_case("t_huge.db", "UPDATE records SET text = replace(hex(zeroblob(100000)), '0', 'a') WHERE id = 2;",
                  1000);
    /* A NULL text needs a table without the NOT NULL constraint. */
    tampered_case("t_null.db",
                  "CREATE TABLE r2(id INTEGER PRIMARY KEY AUTOINCREMENT, time INTEGER, kind TEXT, text TEXT);"
                  "INSERT INTO r2 SELECT * FROM records; DROP TABLE records; ALTER TABLE r2 RENAME TO records;"
                  "UPDATE records SET text = NULL WHERE id = 2;",
                  1 << 20);
}
END_TEST

static bool rc_allowed(int rc)
{
    return rc == 0 || rc == PLAIT_EPROTO || rc == PLAIT_EMISMATCH || rc == PLAIT_EIO ||
           rc == PLAIT_ETOOBIG || rc == PLAIT_EINVAL;
}

/* Damage a valid store at random places; every operation must fail cleanly or work. */
START_TEST(test_corrupted_files)
{
    const char *base = db_path("base.db");
    plait_store_config_t cfg;
    plait_store_config_default(&cfg);
    cfg.path = base;
    cfg.wal = false; /* everything in one file */
    plait_store_t *st = NULL;
    ck_assert_int_eq(plait_store_open(&st, &cfg), 0);
    char text[300];
    for (int i = 0; i < 60; i++) {
        snprintf(text, sizeof(text), "record number %d with some padding text to fill pages ........", i);
        add_text(st, i, i % 2 ? "chat" : "note", text, NULL);
    }
    plait_store_close(st);
    size_t len;
    uint8_t *orig = tu_read_file(base, &len);
    ck_assert_ptr_nonnull(orig);
    uint8_t *buf = malloc(len);
    uint32_t seed = 0xC0FFEEu;
    const char *p = db_path("damaged.db");
    cfg.path = p;
    for (int iter = 0; iter < 300; iter++) {
        memcpy(buf, orig, len);
        int flips = 1 + (int)((seed = seed * 1664525u + 1013904223u) >> 29);
        for (int f = 0; f < flips; f++) {
            seed = seed * 1664525u + 1013904223u;
            size_t off = (iter % 3 == 0) ? (seed >> 8) % 100 : (seed >> 8) % len; /* header or anywhere */
            seed = seed * 1664525u + 1013904223u;
            buf[off] = (uint8_t)(seed >> 24);
        }
        ck_assert_int_eq(tu_write_file(p, buf, len), 0);
        st = NULL;
        int rc = plait_store_open(&st, &cfg);
        ck_assert_msg(rc_allowed(rc), "iter %d: open rc %d", iter, rc);
        if (rc == 0) {
            count_ctx_t c = {0};
            int64_t n;
            rc = plait_store_foreach(st, PLAIT_STORE_ALL, count_cb, &c);
            ck_assert_msg(rc_allowed(rc), "iter %d: foreach rc %d", iter, rc);
            rc = plait_store_count_split(st, PLAIT_STORE_HELDOUT, &n);
            ck_assert_msg(rc_allowed(rc), "iter %d: count rc %d", iter, rc);
            rc = plait_store_get(st, 5, count_cb, &c);
            ck_assert_msg(rc_allowed(rc) || rc == PLAIT_ENOENT, "iter %d: get rc %d", iter, rc);
            rc = plait_store_add(st, 1, "chat", "x", 1, NULL);
            ck_assert_msg(rc_allowed(rc), "iter %d: add rc %d", iter, rc);
            rc = plait_store_delete_before(st, 30, &n);
            ck_assert_msg(rc_allowed(rc), "iter %d: delete rc %d", iter, rc);
            plait_store_close(st);
        }
        unlink(p);
    }
    free(buf);
    free(orig);
}
END_TEST

START_TEST(test_memory_store)
{
    plait_store_t *st = open_store(":memory:", 0.5);
    int64_t id, n;
    add_text(st, 1, "chat", "in memory", &id);
    ck_assert_int_eq(plait_store_delete(st, id), 0);
    ck_assert_int_eq(plait_store_count(st, &n), 0);
    ck_assert_int_eq(n, 0);
    plait_store_close(st);
    ck_assert_int_eq(access(":memory:", F_OK), -1); /* no file of that name was made */
}
END_TEST

/* The store holds raw text: created 0600 under umask 022, and a store an older version left
 * 0644 (with its -wal) is made 0600 when opened. */
START_TEST(test_private_modes)
{
    mode_t old = umask(022);
    const char *p = db_path("private.db");
    plait_store_t *st = open_store(p, 0.5);
    int64_t id;
    add_text(st, 1, "chat", "raw text", &id);
    struct stat sb;
    ck_assert_int_eq(stat(p, &sb), 0);
    ck_assert_uint_eq(sb.st_mode & 0777, 0600);
    char side[700];
    snprintf(side, sizeof(side), "%s-wal", p);
    if (stat(side, &sb) == 0) ck_assert_uint_eq(sb.st_mode & 0777, 0600);
    plait_store_close(st);
    ck_assert_int_eq(chmod(p, 0644), 0);
    if (access(side, F_OK) == 0) ck_assert_int_eq(chmod(side, 0644), 0);
    st = open_store(p, 0.5);
    ck_assert_int_eq(stat(p, &sb), 0);
    ck_assert_uint_eq(sb.st_mode & 0777, 0600);
    if (stat(side, &sb) == 0) ck_assert_uint_eq(sb.st_mode & 0777, 0600);
    plait_store_close(st);
    umask(old);
}
END_TEST

Suite *store_suite(void)
{
    Suite *s = suite_create("store");
    TCase *tc = tcase_create("records");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_config);
    tcase_add_test(tc, test_add_get_iterate);
    tcase_add_test(tc, test_add_validation);
    tcase_add_test(tc, test_delete);
    tcase_add_test(tc, test_callback_stop_and_reentry);
    tcase_add_test(tc, test_split);
    tcase_add_test(tc, test_transactions);
    tcase_add_test(tc, test_busy);
    tcase_add_test(tc, test_memory_store);
    tcase_add_test(tc, test_private_modes);
    suite_add_tcase(s, tc);
    tc = tcase_create("erase");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_secure_delete_wal_before);
    tcase_add_test(tc, test_secure_delete_wal_by_id);
    tcase_add_test(tc, test_secure_delete_rollback_journal);
    suite_add_tcase(s, tc);
    tc = tcase_create("hostile");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_not_a_store);
    tcase_add_test(tc, test_schema_version);
    tcase_add_test(tc, test_tampered_rows);
    tcase_add_test(tc, test_corrupted_files);
    suite_add_tcase(s, tc);
    return s;
}
