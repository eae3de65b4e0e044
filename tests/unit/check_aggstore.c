/*
 * check_aggstore.c: the aggregator store: each table's rows in and out,
 * duplicate uploads, commit atomicity (a fault injected after every write of
 * the commit transaction), corrupted and tampered rows, recovery of an open
 * round, hostile files, and a kill -9 crash loop against a child process
 * committing versions as fast as it can. Hostile files are crafted with
 * sqlite directly; only tests do that.
 */
#include <check.h>
#include <dirent.h>
#include <fcntl.h>
#include <math.h>
#include <signal.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "plait/aggstore.h"
#include "plait/crypto.h"
#include "plait/ddg.h"
#include "plait/store.h"
#include "testutil.h"

static char *tmpdir;

static void setup(void)
{
    tmpdir = tu_tmpdir("aggstore");
    ck_assert_ptr_nonnull(tmpdir);
}

static void teardown(void)
{
    tu_rmdir(tmpdir);
    free(tmpdir);
    tmpdir = NULL;
}

static const char *db_path(const char *name)
{
    static char buf[4][600];
    static int k;
    k = (k + 1) % 4;
    snprintf(buf[k], sizeof(buf[k]), "%s/%s", tmpdir, name);
    return buf[k];
}

static plait_aggstore_t *open_agg(const char *path)
{
    plait_aggstore_config_t cfg;
    plait_aggstore_config_default(&cfg);
    cfg.path = path;
    plait_aggstore_t *st = NULL;
    int rc = plait_aggstore_open(&st, &cfg);
    ck_assert_msg(rc == 0, "open: %s", plait_errmsg());
    return st;
}

static int open_rc(const char *path)
{
    plait_aggstore_config_t cfg;
    plait_aggstore_config_default(&cfg);
    cfg.path = path;
    plait_aggstore_t *st = (plait_aggstore_t *)1;
    int rc = plait_aggstore_open(&st, &cfg);
    if (rc != 0) ck_assert_ptr_null(st);
    plait_aggstore_close(rc == 0 ? st : NULL);
    return rc;
}

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

static int64_t raw_count(const char *path, const char *sql)
{
    sqlite3 *db = NULL;
    sqlite3_stmt *s = NULL;
    ck_assert_int_eq(sqlite3_open(path, &db), SQLITE_OK);
    ck_assert_int_eq(sqlite3_prepare_v2(db, sql, -1, &s, NULL), SQLITE_OK);
    ck_assert_int_eq(sqlite3_step(s), SQLITE_ROW);
    int64_t n = sqlite3_column_int64(s, 0);
    sqlite3_finalize(s);
    sqlite3_close(db);
    return n;
}

/* The recognizable adapter of version n: its size and bytes depend on n only. */
static size_t blob_len(int64_t n)
{
    return 1000 + (size_t)((n * 7919) % 30000);
}

static uint8_t *make_blob(int64_t n, size_t *len)
{
    *len = blob_len(n);
    uint8_t *b = malloc(*len);
    ck_assert_ptr_nonnull(b);
    for (size_t i = 0; i < *len; i++) b[i] = (uint8_t)(n * 131 + (int64_t)i * 31 + (int64_t)(i >> 8));
    return b;
}

static bool blob_matches(int64_t n, const uint8_t *b, size_t len)
{
    if (len != blob_len(n)) return false;
    for (size_t i = 0; i < len; i++)
        if (b[i] != (uint8_t)(n * 131 + (int64_t)i * 31 + (int64_t)(i >> 8))) return false;
    return true;
}

static const float OPT[6] = {0.5f, -1.25f, 3.0f, 0.0f, 1e-3f, 2.0f};

static void fill_commit(plait_aggstore_commit_t *c, const uint8_t *blob, size_t len)
{
    memset(c, 0, sizeof(*c));
    c->adapter = blob;
    c->adapter_len = len;
    c->lora_rank = 8;
    c->lora_alpha = 16.0;
    c->lora_targets = 0x5;
    c->opt_kind = 2;
    c->opt_state = OPT;
    c->opt_state_len = 6;
}

/* Begin a round on the latest version and commit version latest+1 with its recognizable blob. */
static int64_t commit_next(plait_aggstore_t *st, const plait_aggstore_ledger_t *ledger,
                           const plait_aggstore_metric_t *m, size_t nm)
{
    int64_t latest = -1, round = 0, ver = 0;
    ck_assert_int_eq(plait_aggstore_version_latest_number(st, &latest), 0);
    int rc = plait_aggstore_round_begin(st, 10, 5, "{\"lr\":0.001}", latest, &round);
    ck_assert_msg(rc == 0, "begin: %s", plait_errmsg());
    size_t len;
    uint8_t *b = make_blob(latest + 1, &len);
    plait_aggstore_commit_t c;
    fill_commit(&c, b, len);
    c.ledger = ledger;
    c.metrics = m;
    c.n_metrics = nm;
    rc = plait_aggstore_round_commit(st, round, &c, &ver);
    ck_assert_msg(rc == 0, "commit: %s", plait_errmsg());
    ck_assert_int_eq(ver, latest + 1);
    free(b);
    return round;
}

/* ---- config ---- */

START_TEST(test_config)
{
    plait_aggstore_config_t cfg;
    plait_aggstore_config_default(&cfg);
    ck_assert_int_eq(plait_aggstore_config_validate(&cfg), PLAIT_EINVAL); /* no path */
    cfg.path = db_path("a.db");
    ck_assert_int_eq(plait_aggstore_config_validate(&cfg), 0);
    cfg.max_adapter_bytes = 0;
    ck_assert_int_eq(plait_aggstore_config_validate(&cfg), PLAIT_EINVAL);
    cfg.max_adapter_bytes = PLAIT_AGGSTORE_MAX_BLOB_CEILING + 1;
    ck_assert_int_eq(plait_aggstore_config_validate(&cfg), PLAIT_EINVAL);
    plait_aggstore_config_default(&cfg);
    cfg.path = db_path("a.db");
    cfg.busy_timeout_ms = -1;
    ck_assert_int_eq(plait_aggstore_config_validate(&cfg), PLAIT_EINVAL);
    cfg.busy_timeout_ms = 0;
    cfg.deployment_id = "bad\nid";
    ck_assert_int_eq(plait_aggstore_config_validate(&cfg), PLAIT_EINVAL);
    ck_assert_ptr_nonnull(strstr(plait_errmsg(), "deployment_id"));
    cfg.deployment_id = "acme-prod";
    cfg.max_reasons = 1001;
    ck_assert_int_eq(plait_aggstore_config_validate(&cfg), PLAIT_EINVAL);
    ck_assert_int_eq(plait_aggstore_config_validate(NULL), PLAIT_EINVAL);
    plait_aggstore_close(NULL);

    /* Deployment id is written, then enforced. */
    cfg.max_reasons = 32;
    plait_aggstore_t *st = NULL;
    ck_assert_int_eq(plait_aggstore_open(&st, &cfg), 0);
    plait_aggstore_info_t info;
    ck_assert_int_eq(plait_aggstore_info(st, &info), 0);
    ck_assert_str_eq(info.deployment_id, "acme-prod");
    ck_assert_int_eq(info.schema_version, PLAIT_AGGSTORE_SCHEMA_VERSION);
    ck_assert_int_ge(info.created, 1);
    ck_assert_int_eq(info.abandoned_at_open, 0);
    ck_assert_int_eq(plait_aggstore_check_integrity(st), 0);
    plait_aggstore_close(st);
    cfg.deployment_id = "acme-test";
    ck_assert_int_eq(plait_aggstore_open(&st, &cfg), PLAIT_EMISMATCH);
    ck_assert_ptr_null(st);
    cfg.deployment_id = NULL;
    ck_assert_int_eq(plait_aggstore_open(&st, &cfg), 0);
    plait_aggstore_close(st);
    /* The file is in WAL mode (persistent; synchronous is per connection). */
    ck_assert_int_eq(raw_count(cfg.path, "SELECT journal_mode = 'wal' FROM pragma_journal_mode"), 1);
    /* A random id for a new file without one. */
    st = open_agg(db_path("b.db"));
    ck_assert_int_eq(plait_aggstore_info(st, &info), 0);
    ck_assert_uint_eq(strlen(info.deployment_id), 32);
    plait_aggstore_close(st);
}
END_TEST

/* ---- devices ---- */

typedef struct {
    int n;
    char ids[8][PLAIT_AGGSTORE_MAX_DEVICE_ID + 1];
} dev_list_t;

static int dev_cb(void *ud, const plait_aggstore_device_t *d)
{
    dev_list_t *l = ud;
    if (l->n < 8) snprintf(l->ids[l->n], sizeof(l->ids[0]), "%s", d->id);
    l->n++;
    return 0;
}

START_TEST(test_devices)
{
    plait_aggstore_t *st = open_agg(db_path("dev.db"));
    uint8_t fp1[32], fp2[32];
    plait_sha256((const uint8_t *)"cert-1", 6, fp1);
    plait_sha256((const uint8_t *)"cert-2", 6, fp2);
    ck_assert_int_eq(plait_aggstore_device_enroll(st, "dev-b", fp1), 0);
    ck_assert_int_eq(plait_aggstore_device_enroll(st, "dev-a", fp2), 0);
    ck_assert_int_eq(plait_aggstore_device_enroll(st, "dev-a", fp2), PLAIT_EINVAL);
    ck_assert_ptr_nonnull(strstr(plait_errmsg(), "already enrolled"));
    ck_assert_int_eq(plait_aggstore_device_enroll(st, "", fp1), PLAIT_EINVAL);
    ck_assert_int_eq(plait_aggstore_device_enroll(st, "tab\there", fp1), PLAIT_EINVAL);
    char longid[80];
    memset(longid, 'x', sizeof(longid) - 1);
    longid[79] = '\0';
    ck_assert_int_eq(plait_aggstore_device_enroll(st, longid, fp1), PLAIT_EINVAL);

    plait_aggstore_device_t d;
    ck_assert_int_eq(plait_aggstore_device_get(st, "dev-b", &d), 0);
    ck_assert_str_eq(d.id, "dev-b");
    ck_assert_mem_eq(d.fingerprint, fp1, 32);
    ck_assert_int_ge(d.enrolled, 1);
    ck_assert(!d.revoked);
    ck_assert_int_eq(d.last_seen, 0);
    ck_assert_int_eq(d.rounds_participated, 0);
    ck_assert_int_eq(d.last_round, 0);
    ck_assert_int_eq(plait_aggstore_device_get(st, "nobody", &d), PLAIT_ENOENT);

    ck_assert_int_eq(plait_aggstore_device_touch(st, "dev-b"), 0);
    ck_assert_int_eq(plait_aggstore_device_get(st, "dev-b", &d), 0);
    ck_assert_int_ge(d.last_seen, d.enrolled);
    ck_assert_int_eq(plait_aggstore_device_touch(st, "nobody"), PLAIT_ENOENT);

    ck_assert_int_eq(plait_aggstore_device_check(st, "dev-b", fp1), 0);
    ck_assert_int_eq(plait_aggstore_device_check(st, "dev-b", fp2), PLAIT_EAUTH);
    ck_assert_int_eq(plait_aggstore_device_check(st, "nobody", fp2), PLAIT_ENOENT);

    bool rev = true;
    ck_assert_int_eq(plait_aggstore_device_is_revoked(st, "dev-b", &rev), 0);
    ck_assert(!rev);
    ck_assert_int_eq(plait_aggstore_device_revoke(st, "dev-b"), 0);
    ck_assert_int_eq(plait_aggstore_device_is_revoked(st, "dev-b", &rev), 0);
    ck_assert(rev);
    ck_assert_int_eq(plait_aggstore_device_get(st, "dev-b", &d), 0);
    int64_t first = d.revoked_at;
    ck_assert_int_ge(first, 1);
    ck_assert_int_eq(plait_aggstore_device_revoke(st, "dev-b"), 0); /* idempotent */
    ck_assert_int_eq(plait_aggstore_device_get(st, "dev-b", &d), 0);
    ck_assert_int_eq(d.revoked_at, first);
    ck_assert_int_eq(plait_aggstore_device_check(st, "dev-b", fp1), PLAIT_EAUTH);
    ck_assert_ptr_nonnull(strstr(plait_errmsg(), "revoked"));
    ck_assert_int_eq(plait_aggstore_device_revoke(st, "nobody"), PLAIT_ENOENT);
    ck_assert_int_eq(plait_aggstore_device_is_revoked(st, "nobody", &rev), PLAIT_ENOENT);

    dev_list_t l = {0};
    ck_assert_int_eq(plait_aggstore_devices_foreach(st, dev_cb, &l), 0);
    ck_assert_int_eq(l.n, 2);
    ck_assert_str_eq(l.ids[0], "dev-a");
    ck_assert_str_eq(l.ids[1], "dev-b");
    plait_aggstore_close(st);

    /* Survives reopen. */
    st = open_agg(db_path("dev.db"));
    ck_assert_int_eq(plait_aggstore_device_is_revoked(st, "dev-b", &rev), 0);
    ck_assert(rev);
    plait_aggstore_close(st);
}
END_TEST

/* Labels: the operator's name for an opaque id, stored with the device in one transaction. */
START_TEST(test_device_labels)
{
    plait_aggstore_t *st = open_agg(db_path("labels.db"));
    uint8_t fp[32];
    plait_sha256((const uint8_t *)"cert-l", 6, fp);
    const char *id1 = "0a1b2c3d4e5f60718293a4b5c6d7e8f9", *id2 = "ffeeddccbbaa99887766554433221100";
    ck_assert_int_eq(plait_aggstore_device_enroll_labeled(st, id1, "alice-phone", fp), 0);
    char out[PLAIT_AGGSTORE_MAX_DEVICE_ID + 1];
    ck_assert_int_eq(plait_aggstore_device_find(st, "alice-phone", out), 0);
    ck_assert_str_eq(out, id1);
    ck_assert_int_eq(plait_aggstore_device_find(st, id1, out), 0); /* an id works too */
    ck_assert_str_eq(out, id1);
    ck_assert_int_eq(plait_aggstore_device_label(st, id1, out), 0);
    ck_assert_str_eq(out, "alice-phone");
    ck_assert_int_eq(plait_aggstore_device_find(st, "bob-phone", out), PLAIT_ENOENT);
    /* a taken label: refused, and the device row is not left behind */
    ck_assert_int_eq(plait_aggstore_device_enroll_labeled(st, id2, "alice-phone", fp), PLAIT_EINVAL);
    ck_assert_ptr_nonnull(strstr(plait_errmsg(), "already taken"));
    plait_aggstore_device_t d;
    ck_assert_int_eq(plait_aggstore_device_get(st, id2, &d), PLAIT_ENOENT);
    /* a device enrolled without a label has none */
    ck_assert_int_eq(plait_aggstore_device_enroll(st, id2, fp), 0);
    ck_assert_int_eq(plait_aggstore_device_label(st, id2, out), PLAIT_ENOENT);
    ck_assert_int_eq(plait_aggstore_device_enroll_labeled(st, "x", "bad label\t", fp), PLAIT_EINVAL);
    plait_aggstore_close(st);
    /* reopened read-only: still there */
    plait_aggstore_config_t cfg;
    plait_aggstore_config_default(&cfg);
    cfg.path = db_path("labels.db");
    cfg.read_only = true;
    ck_assert_int_eq(plait_aggstore_open(&st, &cfg), 0);
    ck_assert_int_eq(plait_aggstore_device_find(st, "alice-phone", out), 0);
    ck_assert_str_eq(out, id1);
    plait_aggstore_close(st);
}
END_TEST

START_TEST(test_duplicate_upload)
{
    plait_aggstore_t *st = open_agg(db_path("up.db"));
    uint8_t fp[32] = {1};
    ck_assert_int_eq(plait_aggstore_device_enroll(st, "d1", fp), 0);
    ck_assert_int_eq(plait_aggstore_device_enroll(st, "d2", fp), 0);
    int64_t r1 = 0;
    ck_assert_int_eq(plait_aggstore_round_begin(st, 2, 1, "{}", 0, &r1), 0);
    ck_assert_int_eq(plait_aggstore_device_mark_uploaded(st, "d1", r1), 0);
    ck_assert_int_eq(plait_aggstore_device_mark_uploaded(st, "d1", r1), PLAIT_ESTALE);
    ck_assert_ptr_nonnull(strstr(plait_errmsg(), "already uploaded"));
    ck_assert_int_eq(plait_aggstore_device_mark_uploaded(st, "d1", r1 + 1), PLAIT_ENOENT); /* no such round */
    ck_assert_int_eq(plait_aggstore_device_mark_uploaded(st, "ghost", r1), PLAIT_ENOENT);
    ck_assert_int_eq(plait_aggstore_device_mark_uploaded(st, "d1", 0), PLAIT_EINVAL);
    plait_aggstore_device_t d;
    ck_assert_int_eq(plait_aggstore_device_get(st, "d1", &d), 0);
    ck_assert_int_eq(d.last_round, r1);
    ck_assert_int_eq(d.rounds_participated, 1);
    ck_assert_int_ge(d.last_seen, 1);
    plait_aggstore_close(st);

    /* A restart does not forget it: the restarted service refuses the replay. */
    plait_aggstore_config_t cfg;
    plait_aggstore_config_default(&cfg);
    cfg.path = db_path("up.db");
    cfg.recover_open_rounds = false; /* keep r1 open to prove the device record alone refuses */
    ck_assert_int_eq(plait_aggstore_open(&st, &cfg), 0);
    ck_assert_int_eq(plait_aggstore_device_mark_uploaded(st, "d1", r1), PLAIT_ESTALE);
    ck_assert_int_eq(plait_aggstore_device_mark_uploaded(st, "d2", r1), 0);
    ck_assert_int_eq(plait_aggstore_round_fail(st, r1, "deadline", NULL), 0);
    /* A closed round takes no upload. */
    ck_assert_int_eq(plait_aggstore_device_enroll(st, "d3", fp), 0);
    ck_assert_int_eq(plait_aggstore_device_mark_uploaded(st, "d3", r1), PLAIT_ESTALE);
    ck_assert_ptr_nonnull(strstr(plait_errmsg(), "failed"));
    /* The next round: fine once, and a revoked device is refused. */
    int64_t r2 = 0;
    ck_assert_int_eq(plait_aggstore_round_begin(st, 2, 1, "{}", 0, &r2), 0);
    ck_assert_int_gt(r2, r1);
    ck_assert_int_eq(plait_aggstore_device_mark_uploaded(st, "d1", r2), 0);
    ck_assert_int_eq(plait_aggstore_device_mark_uploaded(st, "d1", r2), PLAIT_ESTALE);
    ck_assert_int_eq(plait_aggstore_device_revoke(st, "d2"), 0);
    ck_assert_int_eq(plait_aggstore_device_mark_uploaded(st, "d2", r2), PLAIT_EAUTH);
    ck_assert_int_eq(plait_aggstore_device_get(st, "d1", &d), 0);
    ck_assert_int_eq(d.rounds_participated, 2);
    plait_aggstore_close(st);
}
END_TEST

/* ---- rounds ---- */

typedef struct {
    int n;
    int64_t ids[16];
    plait_aggstore_round_state_t states[16];
    int64_t participants, dropouts, bytes_up, bytes_down, new_version, base_version, ended;
    size_t n_rej;
    char rej0[80];
    int64_t rej0_count;
    char config[128];
    char reason[300];
} round_list_t;

static int round_cb(void *ud, const plait_aggstore_round_t *r)
{
    round_list_t *l = ud;
    if (l->n < 16) {
        l->ids[l->n] = r->id;
        l->states[l->n] = r->state;
    }
    l->n++;
    l->participants = r->stats.participants;
    l->dropouts = r->stats.dropouts;
    l->bytes_up = r->stats.bytes_up;
    l->bytes_down = r->stats.bytes_down;
    l->new_version = r->new_version;
    l->base_version = r->base_version;
    l->ended = r->ended;
    l->n_rej = r->stats.n_rejections;
    if (r->stats.n_rejections > 0) {
        snprintf(l->rej0, sizeof(l->rej0), "%s", r->stats.rejections[0].reason);
        l->rej0_count = r->stats.rejections[0].count;
    }
    snprintf(l->config, sizeof(l->config), "%s", r->task_config);
    snprintf(l->reason, sizeof(l->reason), "%s", r->reason);
    return 0;
}

typedef struct {
    plait_aggstore_t *st;
    int rc;
} reenter_t;

static int reenter_cb(void *ud, const plait_aggstore_round_t *r)
{
    reenter_t *re = ud;
    int64_t n;
    (void)r;
    re->rc = plait_aggstore_version_latest_number(re->st, &n);
    return 7;
}

START_TEST(test_rounds)
{
    plait_aggstore_t *st = open_agg(db_path("rounds.db"));
    int64_t r1 = 0, r2 = 0;
    ck_assert_int_eq(plait_aggstore_round_begin(st, 0, 1, "{}", 0, &r1), PLAIT_EINVAL);
    ck_assert_int_eq(plait_aggstore_round_begin(st, 10, 11, "{}", 0, &r1), PLAIT_EINVAL);
    ck_assert_int_eq(plait_aggstore_round_begin(st, 10, 5, "[1,2]", 0, &r1), PLAIT_EINVAL);
    ck_assert_int_eq(plait_aggstore_round_begin(st, 10, 5, "{\"lr\":", 0, &r1), PLAIT_EINVAL);
    ck_assert_int_eq(plait_aggstore_round_begin(st, 10, 5, "{}", 3, &r1), PLAIT_ESTALE);
    ck_assert_int_eq(plait_aggstore_round_begin(st, 10, 5, "{\"lr\":0.5,\"rank\":8}", 0, &r1), 0);
    ck_assert_int_ge(r1, 1);
    ck_assert_int_eq(plait_aggstore_round_begin(st, 10, 5, "{}", 0, &r2), PLAIT_EINVAL);
    ck_assert_ptr_nonnull(strstr(plait_errmsg(), "still open"));

    plait_aggstore_rejection_t rej[2] = {{"nan", 3}, {"shape", 1}};
    plait_aggstore_stats_t stats = {12, 2, 1000, 5000, rej, 2};
    ck_assert_int_eq(plait_aggstore_round_record_stats(st, r1, &stats), 0);
    plait_aggstore_rejection_t dup[2] = {{"nan", 3}, {"nan", 1}};
    plait_aggstore_stats_t bad = {1, 0, 0, 0, dup, 2};
    ck_assert_int_eq(plait_aggstore_round_record_stats(st, r1, &bad), PLAIT_EINVAL);
    bad.rejections = rej;
    bad.participants = -1;
    ck_assert_int_eq(plait_aggstore_round_record_stats(st, r1, &bad), PLAIT_EINVAL);

    round_list_t l;
    memset(&l, 0, sizeof(l));
    ck_assert_int_eq(plait_aggstore_round_get(st, r1, round_cb, &l), 0);
    ck_assert_int_eq(l.n, 1);
    ck_assert_int_eq(l.states[0], PLAIT_AGGSTORE_ROUND_OPEN);
    ck_assert_int_eq(l.participants, 12);
    ck_assert_int_eq(l.dropouts, 2);
    ck_assert_int_eq(l.bytes_up, 1000);
    ck_assert_int_eq(l.bytes_down, 5000);
    ck_assert_uint_eq(l.n_rej, 2);
    ck_assert_str_eq(l.rej0, "nan");
    ck_assert_int_eq(l.rej0_count, 3);
    ck_assert_str_eq(l.config, "{\"lr\":0.5,\"rank\":8}");
    ck_assert_int_eq(l.ended, 0);
    ck_assert_int_eq(plait_aggstore_round_get(st, 999, round_cb, &l), PLAIT_ENOENT);

    /* A callback cannot re-enter the store. */
    reenter_t re = {st, 0};
    ck_assert_int_eq(plait_aggstore_round_get(st, r1, reenter_cb, &re), 7);
    ck_assert_int_eq(re.rc, PLAIT_EINVAL);

    /* Fail it (final counters replace the recorded ones, rejections included). */
    plait_aggstore_stats_t fin = {12, 9, 1100, 5000, NULL, 0};
    ck_assert_int_eq(plait_aggstore_round_fail(st, r1, "too few updates (3 < 5)", &fin), 0);
    ck_assert_int_eq(plait_aggstore_round_fail(st, r1, "again", NULL), PLAIT_ESTALE);
    ck_assert_int_eq(plait_aggstore_round_record_stats(st, r1, &stats), PLAIT_ESTALE);
    memset(&l, 0, sizeof(l));
    ck_assert_int_eq(plait_aggstore_round_get(st, r1, round_cb, &l), 0);
    ck_assert_int_eq(l.states[0], PLAIT_AGGSTORE_ROUND_FAILED);
    ck_assert_int_eq(l.dropouts, 9);
    ck_assert_uint_eq(l.n_rej, 0);
    ck_assert_str_eq(l.reason, "too few updates (3 < 5)");
    ck_assert_int_ge(l.ended, 1);

    /* A long reason is cut, not refused. */
    char longr[600];
    memset(longr, 'r', sizeof(longr) - 1);
    longr[599] = '\0';
    ck_assert_int_eq(plait_aggstore_round_begin(st, 10, 5, "{}", 0, &r2), 0);
    ck_assert_int_eq(plait_aggstore_round_fail(st, r2, longr, NULL), 0);
    memset(&l, 0, sizeof(l));
    ck_assert_int_eq(plait_aggstore_round_get(st, r2, round_cb, &l), 0);
    ck_assert_uint_eq(strlen(l.reason), PLAIT_AGGSTORE_MAX_REASON);

    /* Commit a third: state, version, counters. */
    int64_t r3 = commit_next(st, NULL, NULL, 0);
    memset(&l, 0, sizeof(l));
    ck_assert_int_eq(plait_aggstore_round_get(st, r3, round_cb, &l), 0);
    ck_assert_int_eq(l.states[0], PLAIT_AGGSTORE_ROUND_COMMITTED);
    ck_assert_int_eq(l.new_version, 1);
    ck_assert_int_eq(l.base_version, 0);

    /* Listing: oldest first, newest first, limited. */
    memset(&l, 0, sizeof(l));
    ck_assert_int_eq(plait_aggstore_rounds_foreach(st, false, 0, round_cb, &l), 0);
    ck_assert_int_eq(l.n, 3);
    ck_assert_int_eq(l.ids[0], r1);
    ck_assert_int_eq(l.ids[2], r3);
    memset(&l, 0, sizeof(l));
    ck_assert_int_eq(plait_aggstore_rounds_foreach(st, true, 2, round_cb, &l), 0);
    ck_assert_int_eq(l.n, 2);
    ck_assert_int_eq(l.ids[0], r3);
    ck_assert_int_eq(l.ids[1], r2);
    ck_assert_str_eq(plait_aggstore_round_state_name(PLAIT_AGGSTORE_ROUND_ABANDONED), "abandoned");
    plait_aggstore_close(st);
}
END_TEST

/* ---- versions ---- */

typedef struct {
    int n;
    int64_t numbers[16];
    int64_t rounds[16];
    size_t lens[16];
    bool blobs_null;
} ver_list_t;

static int ver_cb(void *ud, const plait_aggstore_version_t *v)
{
    ver_list_t *l = ud;
    if (l->n < 16) {
        l->numbers[l->n] = v->number;
        l->rounds[l->n] = v->round_id;
        l->lens[l->n] = v->adapter_len;
    }
    if (v->adapter || v->opt_state) l->blobs_null = false;
    l->n++;
    return 0;
}

START_TEST(test_versions)
{
    plait_aggstore_t *st = open_agg(db_path("ver.db"));
    plait_aggstore_version_t v;
    plait_aggstore_version_init(&v);
    ck_assert_int_eq(plait_aggstore_version_latest(st, &v), PLAIT_ENOENT);
    int64_t n = -1;
    ck_assert_int_eq(plait_aggstore_version_latest_number(st, &n), 0);
    ck_assert_int_eq(n, 0);

    /* The initial adapter, without an optimizer state (FedAvg). */
    size_t len;
    uint8_t *b1 = make_blob(1, &len);
    plait_aggstore_commit_t c;
    fill_commit(&c, b1, len);
    c.opt_state = NULL;
    c.opt_state_len = 0;
    c.opt_kind = 0;
    uint8_t sha[32];
    plait_sha256(b1, len, sha);
    c.sha256 = sha;
    ck_assert_int_eq(plait_aggstore_version_put_initial(st, &c), 0);
    ck_assert_int_eq(plait_aggstore_version_put_initial(st, &c), PLAIT_EINVAL);
    free(b1);

    ck_assert_int_eq(plait_aggstore_version_latest(st, &v), 0);
    ck_assert_int_eq(v.number, 1);
    ck_assert_int_eq(v.round_id, 0);
    ck_assert(blob_matches(1, v.adapter, v.adapter_len));
    ck_assert_mem_eq(v.sha256, sha, 32);
    ck_assert_ptr_null(v.opt_state);
    ck_assert_uint_eq(v.opt_state_len, 0);
    ck_assert_int_eq(v.opt_kind, 0);
    ck_assert_int_eq(v.lora_rank, 8);

    /* A round on version 1 produces version 2 with an optimizer state. */
    int64_t r = commit_next(st, NULL, NULL, 0);
    ck_assert_int_eq(plait_aggstore_version_get(st, 2, &v), 0); /* frees the previous blobs */
    ck_assert_int_eq(v.number, 2);
    ck_assert_int_eq(v.round_id, r);
    ck_assert(blob_matches(2, v.adapter, v.adapter_len));
    ck_assert_uint_eq(v.opt_state_len, 6);
    ck_assert_mem_eq(v.opt_state, OPT, sizeof(OPT));
    ck_assert_int_eq(v.opt_kind, 2);
    ck_assert_int_eq(v.lora_targets, 0x5);
    ck_assert(v.lora_alpha == 16.0);
    ck_assert_int_eq(plait_aggstore_version_get(st, 3, &v), PLAIT_ENOENT);
    ck_assert_ptr_null(v.adapter);
    plait_aggstore_version_free(&v);
    plait_aggstore_version_free(&v); /* twice is safe */

    /* Listing gives metadata only. */
    ver_list_t l;
    memset(&l, 0, sizeof(l));
    l.blobs_null = true;
    ck_assert_int_eq(plait_aggstore_versions_foreach(st, ver_cb, &l), 0);
    ck_assert_int_eq(l.n, 2);
    ck_assert_int_eq(l.numbers[0], 1);
    ck_assert_int_eq(l.numbers[1], 2);
    ck_assert_int_eq(l.rounds[1], r);
    ck_assert_uint_eq(l.lens[1], blob_len(2));
    ck_assert(l.blobs_null);

    /* Bad inputs are refused before anything is written. */
    int64_t r2 = 0, ver = 0;
    ck_assert_int_eq(plait_aggstore_round_begin(st, 4, 2, "{}", 2, &r2), 0);
    uint8_t *b3 = make_blob(3, &len);
    fill_commit(&c, b3, len);
    uint8_t wrong[32] = {0};
    c.sha256 = wrong;
    ck_assert_int_eq(plait_aggstore_round_commit(st, r2, &c, &ver), PLAIT_EMISMATCH);
    c.sha256 = NULL;
    c.lora_rank = 0;
    ck_assert_int_eq(plait_aggstore_round_commit(st, r2, &c, &ver), PLAIT_EINVAL);
    c.lora_rank = 8;
    float nanstate[2] = {1.0f, NAN};
    c.opt_state = nanstate;
    c.opt_state_len = 2;
    ck_assert_int_eq(plait_aggstore_round_commit(st, r2, &c, &ver), PLAIT_EINVAL);
    c.opt_state = OPT;
    c.opt_state_len = 6;
    ck_assert_int_eq(plait_aggstore_round_commit(st, r2 + 1, &c, &ver), PLAIT_ENOENT);
    ck_assert_int_eq(plait_aggstore_round_commit(st, r2, &c, &ver), 0);
    ck_assert_int_eq(ver, 3);
    ck_assert_int_eq(plait_aggstore_round_commit(st, r2, &c, &ver), PLAIT_ESTALE); /* already committed */
    free(b3);
    plait_aggstore_close(st);
}
END_TEST

/* A realistic size: a 4 MiB adapter and a FedAdam state of 2 x 1M floats. */
START_TEST(test_large_version)
{
    plait_aggstore_t *st = open_agg(db_path("large.db"));
    size_t n = (size_t)4 << 20, nf = (size_t)2 << 20;
    uint8_t *blob = malloc(n);
    float *opt = malloc(nf * sizeof(float));
    ck_assert_ptr_nonnull(blob);
    ck_assert_ptr_nonnull(opt);
    for (size_t i = 0; i < n; i++) blob[i] = (uint8_t)(i * 2654435761u >> 13);
    for (size_t i = 0; i < nf; i++) opt[i] = (float)i * 0.25f - 1000.0f;
    plait_aggstore_commit_t c;
    fill_commit(&c, blob, n);
    c.opt_state = opt;
    c.opt_state_len = nf;
    ck_assert_int_eq(plait_aggstore_version_put_initial(st, &c), 0);
    plait_aggstore_close(st);
    st = open_agg(db_path("large.db"));
    plait_aggstore_version_t v;
    plait_aggstore_version_init(&v);
    ck_assert_int_eq(plait_aggstore_version_latest(st, &v), 0);
    ck_assert_uint_eq(v.adapter_len, n);
    ck_assert_mem_eq(v.adapter, blob, n);
    ck_assert_uint_eq(v.opt_state_len, nf);
    ck_assert_mem_eq(v.opt_state, opt, nf * sizeof(float));
    plait_aggstore_version_free(&v);
    plait_aggstore_close(st);
    free(blob);
    free(opt);
}
END_TEST

/* ---- ledger and metrics ---- */

typedef struct {
    int n;
    double eps[8];
    char keys[8][PLAIT_AGGSTORE_MAX_KEY + 1];
    double values[8];
} misc_list_t;

static int ledger_cb(void *ud, const plait_aggstore_ledger_t *row)
{
    misc_list_t *l = ud;
    if (l->n < 8) l->eps[l->n] = row->epsilon;
    l->n++;
    return 0;
}

static int metric_cb(void *ud, int64_t round, const plait_aggstore_metric_t *m)
{
    misc_list_t *l = ud;
    (void)round;
    if (l->n < 8) {
        snprintf(l->keys[l->n], sizeof(l->keys[0]), "%s", m->key);
        l->values[l->n] = m->value;
    }
    l->n++;
    return 0;
}

START_TEST(test_ledger_metrics)
{
    plait_aggstore_t *st = open_agg(db_path("ledger.db"));
    plait_aggstore_privacy_t tot;
    ck_assert_int_eq(plait_aggstore_ledger_total(st, &tot), 0);
    ck_assert_int_eq(tot.rounds, 0);
    ck_assert(tot.epsilon == 0.0);

    plait_aggstore_ledger_t l1 = {0, 0.01, 1.1, 1, 1e-6, 0.25, "gaussian", 1.0, "poisson", 0, 0, 0, 0};
    plait_aggstore_ledger_t l2 = {0, 0.02, 1.1, 3, 1e-6, 0.75, "gaussian", 1.0, "poisson", 0, 0, 0, 0};
    plait_aggstore_metric_t m[2] = {{"loss", 2.5}, {"clients", 10}};
    int64_t r1 = commit_next(st, &l1, m, 2);
    int64_t r2 = commit_next(st, &l2, NULL, 0);
    (void)commit_next(st, NULL, NULL, 0); /* a round without DP has no ledger row */
    plait_aggstore_ledger_t bad = l1;
    bad.delta = 1.0;
    int64_t r4 = 0;
    ck_assert_int_eq(plait_aggstore_round_begin(st, 2, 1, "{}", 3, &r4), 0);
    size_t len;
    uint8_t *b = make_blob(4, &len);
    plait_aggstore_commit_t c;
    fill_commit(&c, b, len);
    c.ledger = &bad;
    ck_assert_int_eq(plait_aggstore_round_commit(st, r4, &c, NULL), PLAIT_EINVAL);
    free(b);

    misc_list_t ml;
    memset(&ml, 0, sizeof(ml));
    ck_assert_int_eq(plait_aggstore_ledger_foreach(st, ledger_cb, &ml), 0);
    ck_assert_int_eq(ml.n, 2);
    ck_assert(ml.eps[0] == 0.25 && ml.eps[1] == 0.75);
    ck_assert_int_eq(plait_aggstore_ledger_total(st, &tot), 0);
    ck_assert_int_eq(tot.rounds, 2);
    ck_assert_int_eq(tot.steps, 4);
    ck_assert(tot.epsilon == 0.75 && tot.delta == 1e-6);

    /* Recomposing from the ledger equals composing the same segments directly. */
    static plait_accountant_t a, b2;
    ck_assert_int_eq(plait_accountant_init(&a, NULL, 0), 0);
    ck_assert_int_eq(plait_accountant_init(&b2, NULL, 0), 0);
    ck_assert_int_eq(plait_aggstore_ledger_compose(st, &a), 0);
    ck_assert_int_eq(plait_accountant_compose(&b2, 0.01, 1.1, 1), 0);
    ck_assert_int_eq(plait_accountant_compose(&b2, 0.02, 1.1, 3), 0);
    ck_assert_uint_eq(a.steps, 4);
    ck_assert_mem_eq(a.rdp, b2.rdp, sizeof(double) * a.n_orders);

    memset(&ml, 0, sizeof(ml));
    ck_assert_int_eq(plait_aggstore_metrics_foreach(st, r1, metric_cb, &ml), 0);
    ck_assert_int_eq(ml.n, 2);
    ck_assert_str_eq(ml.keys[0], "clients");
    ck_assert(ml.values[0] == 10.0);
    ck_assert_str_eq(ml.keys[1], "loss");
    /* put adds and replaces; works on failed rounds too. */
    plait_aggstore_metric_t m2[2] = {{"loss", 2.0}, {"duration_s", 61.5}};
    ck_assert_int_eq(plait_aggstore_metrics_put(st, r1, m2, 2), 0);
    memset(&ml, 0, sizeof(ml));
    ck_assert_int_eq(plait_aggstore_metrics_foreach(st, r1, metric_cb, &ml), 0);
    ck_assert_int_eq(ml.n, 3);
    ck_assert_str_eq(ml.keys[2], "loss");
    ck_assert(ml.values[2] == 2.0);
    ck_assert_int_eq(plait_aggstore_metrics_put(st, 999, m2, 2), PLAIT_ENOENT);
    plait_aggstore_metric_t nanm = {"x", NAN};
    ck_assert_int_eq(plait_aggstore_metrics_put(st, r2, &nanm, 1), PLAIT_EINVAL);
    plait_aggstore_close(st);

    /* The per-round cap. */
    plait_aggstore_config_t cfg;
    plait_aggstore_config_default(&cfg);
    cfg.path = db_path("ledger.db");
    cfg.max_metrics = 3;
    ck_assert_int_eq(plait_aggstore_open(&st, &cfg), 0);
    plait_aggstore_metric_t m3 = {"one_more", 1.0};
    ck_assert_int_eq(plait_aggstore_metrics_put(st, r1, &m3, 1), PLAIT_ETOOBIG);
    memset(&ml, 0, sizeof(ml));
    ck_assert_int_eq(plait_aggstore_metrics_foreach(st, r1, metric_cb, &ml), 0);
    ck_assert_int_eq(ml.n, 3);
    plait_aggstore_close(st);
}
END_TEST

/* ---- DP participation and the schema 1 -> 2 migration ---- */

static uint8_t FPR[32] = {1, 2, 3};

/* A round where the listed devices upload, committed with (or without) a ledger row. */
static void dp_round(plait_aggstore_t *st, const char *const *ids, size_t n, const plait_aggstore_ledger_t *led)
{
    int64_t latest = -1, round = 0;
    ck_assert_int_eq(plait_aggstore_version_latest_number(st, &latest), 0);
    ck_assert_int_eq(plait_aggstore_round_begin(st, 2, 1, "{}", latest, &round), 0);
    for (size_t i = 0; i < n; i++) ck_assert_int_eq(plait_aggstore_device_mark_uploaded(st, ids[i], round), 0);
    size_t len;
    uint8_t *b = make_blob(latest + 1, &len);
    plait_aggstore_commit_t c;
    fill_commit(&c, b, len);
    c.ledger = led;
    ck_assert_int_eq(plait_aggstore_round_commit(st, round, &c, NULL), 0);
    free(b);
}

/* A "ddg" ledger row keeps its parameters and recomposes with the DDG accountant. */
START_TEST(test_ledger_ddg)
{
    const char *p = db_path("ddg.db");
    plait_aggstore_t *st = open_agg(p);
    const char *all[] = {"a", "b"};
    for (int i = 0; i < 2; i++) ck_assert_int_eq(plait_aggstore_device_enroll(st, all[i], FPR), 0);
    plait_aggstore_ledger_t bad = {0, 1.0, 1.0, 1, 1e-5, 0.0, "ddg", 1.0, "first-come", 0, 10.0, 2, 5.0};
    plait_aggstore_ledger_t led = {0, 1.0, 1.0, 1, 1e-5, 0.0, "ddg", 1.0, "first-come", 1000, 12500.5, 2, 158.1};
    dp_round(st, all, 2, &led);
    dp_round(st, all, 2, &led);
    plait_accountant_t a, b;
    ck_assert_int_eq(plait_accountant_init(&a, NULL, 0), 0);
    ck_assert_int_eq(plait_accountant_init(&b, NULL, 0), 0);
    ck_assert_int_eq(plait_aggstore_ledger_compose(st, &a), 0);
    ck_assert_int_eq(plait_accountant_compose_ddg(&b, 158.1, 1000, 12500.5, 2, 2), 0);
    double ea = 0, eb = 1, oa, ob;
    ck_assert_int_eq(plait_accountant_epsilon(&a, 1e-5, PLAIT_EPS_IMPROVED, &ea, &oa), 0);
    ck_assert_int_eq(plait_accountant_epsilon(&b, 1e-5, PLAIT_EPS_IMPROVED, &eb, &ob), 0);
    ck_assert(ea == eb && isfinite(ea) && ea > 0);
    ck_assert_int_eq(raw_count(p, "SELECT count(*) FROM ledger WHERE mechanism = 'ddg' AND ddg_dim = 1000 AND "
                                  "ddg_n = 2 AND ddg_var = 12500.5"),
                     2);
    /* a ddg row without its parameters is refused at commit */
    int64_t latest = -1, round = 0;
    ck_assert_int_eq(plait_aggstore_version_latest_number(st, &latest), 0);
    ck_assert_int_eq(plait_aggstore_round_begin(st, 2, 1, "{}", latest, &round), 0);
    size_t len;
    uint8_t *blob = make_blob(latest + 1, &len);
    plait_aggstore_commit_t c;
    fill_commit(&c, blob, len);
    c.ledger = &bad;
    ck_assert_int_eq(plait_aggstore_round_commit(st, round, &c, NULL), PLAIT_EINVAL);
    ck_assert_ptr_nonnull(strstr(plait_errmsg(), "ddg"));
    free(blob);
    plait_aggstore_close(st);
}
END_TEST

START_TEST(test_dp_participation)
{
    const char *p = db_path("part.db");
    plait_aggstore_t *st = open_agg(p);
    const char *all[] = {"a", "b", "c"};
    for (int i = 0; i < 3; i++) ck_assert_int_eq(plait_aggstore_device_enroll(st, all[i], FPR), 0);
    plait_aggstore_ledger_t led = {0, 0.5, 1.2, 1, 1e-5, 0.0, "gaussian", 1.0, "poisson", 0, 0, 0, 0};
    plait_aggstore_ledger_t led2 = {0, 0.5, 0.9, 1, 1e-5, 0.0, "", 1.0, "", 0, 0, 0, 0};
    dp_round(st, all, 3, &led);
    dp_round(st, all, 1, &led);   /* "a" only */
    dp_round(st, all + 1, 2, NULL); /* b, c in a round without DP: not counted */
    dp_round(st, all, 2, &led2);  /* a, b; names left empty */
    plait_aggstore_privacy_t tot;
    ck_assert_int_eq(plait_aggstore_ledger_total(st, &tot), 0);
    ck_assert_int_eq(tot.rounds, 3);
    ck_assert_int_eq(tot.poisson_rounds, 2);
    ck_assert_int_eq(tot.max_device_rounds, 3); /* "a" joined every DP round */
    ck_assert(tot.min_noise_multiplier == 0.9);
    ck_assert_int_eq(raw_count(p, "SELECT count(*) FROM ledger WHERE mechanism = 'unrecorded' AND selection = "
                                  "'unrecorded'"),
                     1);
    plait_aggstore_close(st);

    /* Turn the file back into a schema-1 file, as an older build wrote it. */
    raw_exec(p, "ALTER TABLE ledger DROP COLUMN mechanism; ALTER TABLE ledger DROP COLUMN clip;"
                "ALTER TABLE ledger DROP COLUMN selection; ALTER TABLE devices DROP COLUMN dp_rounds;"
                "ALTER TABLE ledger DROP COLUMN ddg_dim; ALTER TABLE ledger DROP COLUMN ddg_var;"
                "ALTER TABLE ledger DROP COLUMN ddg_n; ALTER TABLE ledger DROP COLUMN ddg_l2;"
                "ALTER TABLE rounds DROP COLUMN kind; DROP TABLE evals;"
                "UPDATE meta SET value = 1 WHERE key = 'schema_version'; PRAGMA user_version = 1;");
    plait_aggstore_config_t cfg;
    plait_aggstore_config_default(&cfg);
    cfg.path = p;
    cfg.read_only = true;
    ck_assert_int_eq(plait_aggstore_open(&st, &cfg), PLAIT_EMISMATCH); /* read-only cannot migrate */
    ck_assert_ptr_nonnull(strstr(plait_errmsg(), "migration"));
    st = open_agg(p);
    plait_aggstore_info_t info;
    ck_assert_int_eq(plait_aggstore_info(st, &info), 0);
    ck_assert_int_eq(info.schema_version, PLAIT_AGGSTORE_SCHEMA_VERSION);
    ck_assert_int_eq(plait_aggstore_ledger_total(st, &tot), 0);
    ck_assert_int_eq(tot.rounds, 3);
    ck_assert_int_eq(tot.poisson_rounds, 0); /* old rows: first-come */
    /* backfilled from rounds_participated: an upper bound (a's 3 uploads; b's 3 include a non-DP round) */
    ck_assert_int_eq(tot.max_device_rounds, 3);
    ck_assert_int_eq(raw_count(p, "SELECT dp_rounds FROM devices WHERE id = 'c'"), 2);
    ck_assert_int_eq(raw_count(p, "SELECT count(*) FROM ledger WHERE selection = 'first-come' AND clip = 0 AND "
                                  "mechanism = 'gaussian'"),
                     3);
    /* new rounds count on top of the backfill */
    dp_round(st, all + 2, 1, &led);
    ck_assert_int_eq(raw_count(p, "SELECT dp_rounds FROM devices WHERE id = 'c'"), 3);
    plait_aggstore_close(st);
    ck_assert_int_eq(open_rc(p), 0); /* a migrated file opens as any other */
}
END_TEST

/* ---- federated evaluation ---- */

typedef struct {
    int n;
    plait_aggstore_eval_t last;
} eval_list_t;

static int eval_cb(void *ud, const plait_aggstore_eval_t *e)
{
    eval_list_t *l = ud;
    l->n++;
    l->last = *e;
    return 0;
}

static int kind_cb(void *ud, const plait_aggstore_round_t *r)
{
    *(plait_aggstore_kind_t *)ud = r->kind;
    return 0;
}

/* An evaluation round commits one evals row and no version; a training commit refuses it. */
START_TEST(test_evals)
{
    const char *p = db_path("evals.db");
    plait_aggstore_t *st = open_agg(p);
    const char *ids[] = {"a"};
    ck_assert_int_eq(plait_aggstore_device_enroll(st, "a", FPR), 0);
    int64_t round = 0;
    ck_assert_int_eq(plait_aggstore_eval_begin(st, 3, 2, "{}", 0, &round), PLAIT_EINVAL); /* no version yet */
    /* the operator's request: set (twice is once), taken once */
    bool req = true;
    ck_assert_int_eq(plait_aggstore_eval_take_request(st, &req), 0);
    ck_assert(!req);
    ck_assert_int_eq(plait_aggstore_eval_request(st), 0);
    ck_assert_int_eq(plait_aggstore_eval_request(st), 0);
    ck_assert_int_eq(plait_aggstore_eval_take_request(st, &req), 0);
    ck_assert(req);
    ck_assert_int_eq(plait_aggstore_eval_take_request(st, &req), 0);
    ck_assert(!req);
    dp_round(st, ids, 1, NULL);                                                          /* version 1 */
    ck_assert_int_eq(plait_aggstore_eval_begin(st, 3, 2, "{\"kind\":\"evaluate\"}", 2, &round), PLAIT_ESTALE);
    ck_assert_int_eq(plait_aggstore_eval_begin(st, 3, 2, "{\"kind\":\"evaluate\"}", 1, &round), 0);
    plait_aggstore_kind_t kind = PLAIT_AGGSTORE_KIND_TRAIN;
    ck_assert_int_eq(plait_aggstore_round_get(st, round, kind_cb, &kind), 0);
    ck_assert_int_eq(kind, PLAIT_AGGSTORE_KIND_EVALUATE);
    /* a training commit of an evaluation round is refused, and writes nothing */
    size_t len;
    uint8_t *b = make_blob(2, &len);
    plait_aggstore_commit_t c;
    fill_commit(&c, b, len);
    ck_assert_int_eq(plait_aggstore_round_commit(st, round, &c, NULL), PLAIT_EINVAL);
    free(b);
    int64_t latest = 0;
    ck_assert_int_eq(plait_aggstore_version_latest_number(st, &latest), 0);
    ck_assert_int_eq(latest, 1);
    /* hostile values */
    ck_assert_int_eq(plait_aggstore_eval_commit(st, round, 1, 2.0, 8.0, NULL), PLAIT_EINVAL); /* below min_cohort */
    ck_assert_int_eq(plait_aggstore_eval_commit(st, round, 2, NAN, 8.0, NULL), PLAIT_EINVAL);
    ck_assert_int_eq(plait_aggstore_eval_commit(st, round, 2, 9.0, 8.0, NULL), PLAIT_EINVAL);
    ck_assert_int_eq(plait_aggstore_eval_commit(st, round, 2, -0.5, 8.0, NULL), PLAIT_EINVAL);
    ck_assert_int_eq(plait_aggstore_eval_commit(st, round, 2, 1.0, INFINITY, NULL), PLAIT_EINVAL);
    ck_assert_int_eq(raw_count(p, "SELECT count(*) FROM evals"), 0);
    plait_aggstore_stats_t stx = {3, 1, 24, 99, NULL, 0};
    ck_assert_int_eq(plait_aggstore_eval_commit(st, round, 2, 2.25, 8.0, &stx), 0);
    ck_assert_int_eq(plait_aggstore_eval_commit(st, round, 2, 2.25, 8.0, NULL), PLAIT_ESTALE);
    eval_list_t el = {0};
    ck_assert_int_eq(plait_aggstore_evals_foreach(st, true, 0, eval_cb, &el), 0);
    ck_assert_int_eq(el.n, 1);
    ck_assert_int_eq(el.last.round_id, round);
    ck_assert_int_eq(el.last.version, 1);
    ck_assert_int_eq(el.last.devices, 2);
    ck_assert(el.last.mean_loss == 2.25 && el.last.loss_max == 8.0);
    round_list_t rl;
    memset(&rl, 0, sizeof(rl));
    ck_assert_int_eq(plait_aggstore_round_get(st, round, round_cb, &rl), 0);
    ck_assert_int_eq(rl.states[0], PLAIT_AGGSTORE_ROUND_COMMITTED);
    ck_assert_int_eq(rl.new_version, 0);
    ck_assert_int_eq(rl.participants, 3);
    /* training goes on from the same version; a training round cannot commit an evaluation */
    int64_t r2 = 0;
    ck_assert_int_eq(plait_aggstore_round_begin(st, 2, 1, "{}", 1, &r2), 0);
    ck_assert_int_eq(plait_aggstore_eval_commit(st, r2, 2, 1.0, 8.0, NULL), PLAIT_EINVAL);
    ck_assert_int_eq(plait_aggstore_round_fail(st, r2, "test", NULL), 0);
    plait_aggstore_close(st);
    /* a tampered row is refused on reading */
    raw_exec(p, "UPDATE evals SET mean_loss = 100.0");
    st = open_agg(p);
    ck_assert_int_eq(plait_aggstore_evals_foreach(st, false, 0, eval_cb, &el), PLAIT_EPROTO);
    plait_aggstore_close(st);
    raw_exec(p, "UPDATE evals SET mean_loss = 2.25; UPDATE rounds SET new_version = 7 WHERE kind = 'evaluate'");
    st = open_agg(p);
    ck_assert_int_eq(plait_aggstore_round_get(st, round, round_cb, &rl), PLAIT_EPROTO);
    plait_aggstore_close(st);
}
END_TEST

/* A schema-3 file (before federated evaluation) migrates: its rounds are training rounds. */
START_TEST(test_evals_migration)
{
    const char *p = db_path("evals_mig.db");
    plait_aggstore_t *st = open_agg(p);
    const char *ids[] = {"a"};
    ck_assert_int_eq(plait_aggstore_device_enroll(st, "a", FPR), 0);
    dp_round(st, ids, 1, NULL);
    plait_aggstore_close(st);
    raw_exec(p, "ALTER TABLE rounds DROP COLUMN kind; DROP TABLE evals;"
                "UPDATE meta SET value = 3 WHERE key = 'schema_version'; PRAGMA user_version = 3;");
    plait_aggstore_config_t cfg;
    plait_aggstore_config_default(&cfg);
    cfg.path = p;
    cfg.read_only = true;
    ck_assert_int_eq(plait_aggstore_open(&st, &cfg), PLAIT_EMISMATCH); /* read-only cannot migrate */
    st = open_agg(p);
    plait_aggstore_info_t info;
    ck_assert_int_eq(plait_aggstore_info(st, &info), 0);
    ck_assert_int_eq(info.schema_version, 4);
    plait_aggstore_kind_t kind = PLAIT_AGGSTORE_KIND_EVALUATE;
    ck_assert_int_eq(plait_aggstore_round_get(st, 1, kind_cb, &kind), 0);
    ck_assert_int_eq(kind, PLAIT_AGGSTORE_KIND_TRAIN);
    int64_t round = 0;
    ck_assert_int_eq(plait_aggstore_eval_begin(st, 2, 2, "{}", 1, &round), 0);
    ck_assert_int_eq(plait_aggstore_eval_commit(st, round, 2, 0.5, 4.0, NULL), 0);
    eval_list_t el = {0};
    ck_assert_int_eq(plait_aggstore_evals_foreach(st, false, 0, eval_cb, &el), 0);
    ck_assert_int_eq(el.n, 1);
    plait_aggstore_close(st);
}
END_TEST

/* ---- commit atomicity ---- */

/* Everything a commit of round r could have written is absent; r is still open. */
static void assert_nothing_committed(plait_aggstore_t *st, const char *path, int64_t r, int64_t latest)
{
    int64_t n = -1;
    ck_assert_int_eq(plait_aggstore_version_latest_number(st, &n), 0);
    ck_assert_int_eq(n, latest);
    round_list_t l;
    memset(&l, 0, sizeof(l));
    ck_assert_int_eq(plait_aggstore_round_get(st, r, round_cb, &l), 0);
    ck_assert_int_eq(l.states[0], PLAIT_AGGSTORE_ROUND_OPEN);
    ck_assert_int_eq(l.new_version, 0);
    ck_assert_int_eq(l.participants, 7); /* recorded before the commit, unchanged */
    ck_assert_uint_eq(l.n_rej, 1);
    ck_assert_str_eq(l.rej0, "early");
    char sql[128];
    snprintf(sql, sizeof(sql), "SELECT count(*) FROM ledger WHERE round_id = %lld", (long long)r);
    ck_assert_int_eq(raw_count(path, sql), 0);
    snprintf(sql, sizeof(sql), "SELECT count(*) FROM metrics WHERE round_id = %lld", (long long)r);
    ck_assert_int_eq(raw_count(path, sql), 0);
    ck_assert_int_eq(raw_count(path, "SELECT count(*) FROM versions"), latest);
}

START_TEST(test_commit_atomicity)
{
    const char *path = db_path("atomic.db");
    plait_aggstore_t *st = open_agg(path);
    (void)commit_next(st, NULL, NULL, 0);
    int64_t r = 0;
    ck_assert_int_eq(plait_aggstore_round_begin(st, 10, 2, "{}", 1, &r), 0);
    plait_aggstore_rejection_t early = {"early", 1};
    plait_aggstore_stats_t pre = {7, 0, 10, 20, &early, 1};
    ck_assert_int_eq(plait_aggstore_round_record_stats(st, r, &pre), 0);

    size_t len;
    uint8_t *b = make_blob(2, &len);
    plait_aggstore_commit_t c;
    fill_commit(&c, b, len);
    plait_aggstore_rejection_t rej = {"late", 4};
    plait_aggstore_stats_t fin = {9, 1, 99, 99, &rej, 1};
    plait_aggstore_ledger_t led = {0, 0.1, 1.0, 1, 1e-5, 1.5, "gaussian", 1.0, "poisson", 0, 0, 0, 0};
    plait_aggstore_metric_t m[2] = {{"loss", 1.0}, {"acc", 0.5}};
    c.stats = &fin;
    c.ledger = &led;
    c.metrics = m;
    c.n_metrics = 2;

    /* A fault after each write of the transaction: nothing of it is visible. */
    for (int step = 1; step <= 5; step++) {
        plait__aggstore_inject_commit_fault(st, step);
        int64_t ver = -1;
        ck_assert_int_eq(plait_aggstore_round_commit(st, r, &c, &ver), PLAIT_EIO);
        ck_assert_ptr_nonnull(strstr(plait_errmsg(), "injected"));
        ck_assert_int_eq(ver, -1);
        assert_nothing_committed(st, path, r, 1);
    }
    /* A genuine failure mid-transaction: the duplicate metric key is caught
     * by the table's primary key after the version was written. */
    plait_aggstore_metric_t dupm[2] = {{"loss", 1.0}, {"loss", 2.0}};
    c.metrics = dupm;
    ck_assert_int_eq(plait_aggstore_round_commit(st, r, &c, NULL), PLAIT_EINVAL);
    ck_assert_ptr_nonnull(strstr(plait_errmsg(), "twice"));
    assert_nothing_committed(st, path, r, 1);
    c.metrics = m;
    plait_aggstore_close(st);

    /* A blob over the limit. */
    plait_aggstore_config_t cfg;
    plait_aggstore_config_default(&cfg);
    cfg.path = path;
    cfg.recover_open_rounds = false;
    cfg.max_adapter_bytes = len - 1;
    ck_assert_int_eq(plait_aggstore_open(&st, &cfg), 0);
    ck_assert_int_eq(plait_aggstore_round_commit(st, r, &c, NULL), PLAIT_ETOOBIG);
    plait_aggstore_close(st);
    cfg.max_adapter_bytes = 1 << 20;
    cfg.max_opt_state_bytes = 8; /* two floats */
    ck_assert_int_eq(plait_aggstore_open(&st, &cfg), 0);
    ck_assert_int_eq(plait_aggstore_round_commit(st, r, &c, NULL), PLAIT_ETOOBIG);
    assert_nothing_committed(st, path, r, 1);
    plait_aggstore_close(st);

    /* And after all that, the commit goes through whole. */
    st = open_agg(path); /* recovery abandons r: it was left open */
    plait_aggstore_info_t info;
    ck_assert_int_eq(plait_aggstore_info(st, &info), 0);
    ck_assert_int_eq(info.abandoned_at_open, 1);
    ck_assert_int_eq(plait_aggstore_round_commit(st, r, &c, NULL), PLAIT_ESTALE);
    int64_t r2 = 0, ver = 0;
    ck_assert_int_eq(plait_aggstore_round_begin(st, 10, 2, "{}", 1, &r2), 0);
    ck_assert_int_eq(plait_aggstore_round_commit(st, r2, &c, &ver), 0);
    ck_assert_int_eq(ver, 2);
    round_list_t l;
    memset(&l, 0, sizeof(l));
    ck_assert_int_eq(plait_aggstore_round_get(st, r2, round_cb, &l), 0);
    ck_assert_int_eq(l.states[0], PLAIT_AGGSTORE_ROUND_COMMITTED);
    ck_assert_int_eq(l.participants, 9);
    ck_assert_str_eq(l.rej0, "late");
    ck_assert_int_eq(raw_count(path, "SELECT count(*) FROM ledger"), 1);
    ck_assert_int_eq(raw_count(path, "SELECT count(*) FROM metrics"), 2);
    free(b);
    plait_aggstore_close(st);
}
END_TEST

/* Issue #11 item 12: the uploaders' participation counters are written in
 * the commit's transaction (a failed commit leaves none), and a device
 * revoked since its upload is skipped instead of failing the commit. */
START_TEST(test_commit_participation)
{
    const char *path = db_path("particip.db");
    plait_aggstore_t *st = open_agg(path);
    (void)commit_next(st, NULL, NULL, 0);
    uint8_t fp[32];
    plait_sha256((const uint8_t *)"cert", 4, fp);
    ck_assert_int_eq(plait_aggstore_device_enroll(st, "d1", fp), 0);
    ck_assert_int_eq(plait_aggstore_device_enroll(st, "d2", fp), 0);
    ck_assert_int_eq(plait_aggstore_device_enroll(st, "d3", fp), 0);
    int64_t r = 0;
    ck_assert_int_eq(plait_aggstore_round_begin(st, 10, 2, "{}", 1, &r), 0);
    ck_assert_int_eq(plait_aggstore_device_revoke(st, "d3"), 0); /* revoked mid-round */
    size_t len;
    uint8_t *b = make_blob(2, &len);
    plait_aggstore_commit_t c;
    fill_commit(&c, b, len);
    const char *up[] = {"d1", "d3", "d2", "ghost"};
    c.uploaders = up;
    c.n_uploaders = 4;
    for (int step = 1; step <= 5; step++) {
        plait__aggstore_inject_commit_fault(st, step);
        ck_assert_int_eq(plait_aggstore_round_commit(st, r, &c, NULL), PLAIT_EIO);
        ck_assert_int_eq(raw_count(path, "SELECT sum(rounds_participated) FROM devices"), 0);
        ck_assert_int_eq(raw_count(path, "SELECT max(last_round) FROM devices"), 0);
    }
    int64_t ver = 0;
    ck_assert_int_eq(plait_aggstore_round_commit(st, r, &c, &ver), 0);
    ck_assert_int_eq(ver, 2);
    plait_aggstore_device_t d;
    ck_assert_int_eq(plait_aggstore_device_get(st, "d1", &d), 0);
    ck_assert_int_eq(d.rounds_participated, 1);
    ck_assert_int_eq(d.last_round, r);
    ck_assert_int_eq(plait_aggstore_device_get(st, "d2", &d), 0);
    ck_assert_int_eq(d.rounds_participated, 1);
    ck_assert_int_eq(plait_aggstore_device_get(st, "d3", &d), 0);
    ck_assert_int_eq(d.rounds_participated, 0);
    ck_assert_int_eq(d.last_round, 0);
    free(b);
    plait_aggstore_close(st);
}
END_TEST

/* ---- recovery ---- */

START_TEST(test_recovery)
{
    const char *path = db_path("rec.db");
    plait_aggstore_t *st = open_agg(path);
    (void)commit_next(st, NULL, NULL, 0);
    int64_t r = 0;
    ck_assert_int_eq(plait_aggstore_round_begin(st, 10, 2, "{}", 1, &r), 0);
    plait_aggstore_close(st);

    /* A secondary connection (recover off, or read-only) leaves the live round alone. */
    plait_aggstore_config_t cfg;
    plait_aggstore_config_default(&cfg);
    cfg.path = path;
    cfg.read_only = true;
    ck_assert_int_eq(plait_aggstore_open(&st, &cfg), 0);
    round_list_t l;
    memset(&l, 0, sizeof(l));
    ck_assert_int_eq(plait_aggstore_round_get(st, r, round_cb, &l), 0);
    ck_assert_int_eq(l.states[0], PLAIT_AGGSTORE_ROUND_OPEN);
    uint8_t fp[32] = {0};
    int rc = plait_aggstore_device_enroll(st, "x", fp);
    ck_assert_msg(rc == PLAIT_EIO, "read-only write gave %d", rc);
    plait_aggstore_close(st);

    /* The service's open abandons it. */
    st = open_agg(path);
    plait_aggstore_info_t info;
    ck_assert_int_eq(plait_aggstore_info(st, &info), 0);
    ck_assert_int_eq(info.abandoned_at_open, 1);
    memset(&l, 0, sizeof(l));
    ck_assert_int_eq(plait_aggstore_round_get(st, r, round_cb, &l), 0);
    ck_assert_int_eq(l.states[0], PLAIT_AGGSTORE_ROUND_ABANDONED);
    ck_assert_int_ge(l.ended, 1);
    ck_assert_ptr_nonnull(strstr(l.reason, "restarted"));
    int64_t n = 0;
    ck_assert_int_eq(plait_aggstore_version_latest_number(st, &n), 0);
    ck_assert_int_eq(n, 1);
    (void)commit_next(st, NULL, NULL, 0);
    plait_aggstore_close(st);
}
END_TEST

/* ---- corrupted and tampered rows ---- */

static int versions_rc(const char *path, int64_t number, size_t max_adapter)
{
    plait_aggstore_config_t cfg;
    plait_aggstore_config_default(&cfg);
    cfg.path = path;
    cfg.max_adapter_bytes = max_adapter;
    plait_aggstore_t *st = NULL;
    ck_assert_int_eq(plait_aggstore_open(&st, &cfg), 0);
    plait_aggstore_version_t v;
    plait_aggstore_version_init(&v);
    int rc = plait_aggstore_version_get(st, number, &v);
    if (rc != 0) ck_assert_ptr_null(v.adapter);
    plait_aggstore_version_free(&v);
    plait_aggstore_close(st);
    return rc;
}

/* Flip one bit of version number's adapter in place (same length, same type). */
static void flip_byte(const char *path, int64_t number, int off)
{
    sqlite3 *db = NULL;
    sqlite3_blob *b = NULL;
    ck_assert_int_eq(sqlite3_open(path, &db), SQLITE_OK);
    ck_assert_int_eq(sqlite3_blob_open(db, "main", "versions", "adapter", number, 1, &b), SQLITE_OK);
    uint8_t x;
    ck_assert_int_eq(sqlite3_blob_read(b, &x, 1, off), SQLITE_OK);
    x ^= 0x10;
    ck_assert_int_eq(sqlite3_blob_write(b, &x, 1, off), SQLITE_OK);
    sqlite3_blob_close(b);
    sqlite3_close(db);
}

START_TEST(test_corrupted_blob)
{
    const char *path = db_path("corrupt.db");
    plait_aggstore_t *st = open_agg(path);
    (void)commit_next(st, NULL, NULL, 0);
    (void)commit_next(st, NULL, NULL, 0);
    plait_aggstore_close(st);
    ck_assert_int_eq(versions_rc(path, 2, 1 << 20), 0);

    /* One flipped byte in version 2's adapter, same length. */
    flip_byte(path, 2, 100);
    ck_assert_int_eq(versions_rc(path, 2, 1 << 20), PLAIT_EPROTO);
    ck_assert_ptr_nonnull(strstr(plait_errmsg(), "version 2"));
    ck_assert_ptr_nonnull(strstr(plait_errmsg(), "sha256"));
    ck_assert_int_eq(versions_rc(path, 1, 1 << 20), 0); /* the other version is fine */
    st = open_agg(path);
    plait_aggstore_version_t v;
    plait_aggstore_version_init(&v);
    ck_assert_int_eq(plait_aggstore_version_latest(st, &v), PLAIT_EPROTO);
    plait_aggstore_close(st);

    /* A blob over the configured maximum is refused before it is read. */
    ck_assert_int_eq(versions_rc(path, 1, 100), PLAIT_EPROTO);
    ck_assert_ptr_nonnull(strstr(plait_errmsg(), "max 100"));
    ck_assert_ptr_nonnull(strstr(plait_errmsg(), "version 1"));
    /* A truncated hash, a non-blob adapter, an odd optimizer state. */
    raw_exec(path, "UPDATE versions SET sha256 = x'0011' WHERE number = 1");
    ck_assert_int_eq(versions_rc(path, 1, 1 << 20), PLAIT_EPROTO);
    ck_assert_ptr_nonnull(strstr(plait_errmsg(), "sha256"));
    raw_exec(path, "UPDATE versions SET sha256 = zeroblob(32), adapter = 'text' WHERE number = 1");
    ck_assert_int_eq(versions_rc(path, 1, 1 << 20), PLAIT_EPROTO);
    ck_assert_ptr_nonnull(strstr(plait_errmsg(), "adapter"));
    raw_exec(path, "UPDATE versions SET opt_state = x'001122' WHERE number = 2");
    ck_assert_int_eq(versions_rc(path, 2, 1 << 20), PLAIT_EPROTO);
    ck_assert_ptr_nonnull(strstr(plait_errmsg(), "opt_state"));
}
END_TEST

static int round_get_rc(const char *path, int64_t r)
{
    plait_aggstore_config_t cfg;
    plait_aggstore_config_default(&cfg);
    cfg.path = path;
    cfg.recover_open_rounds = false;
    plait_aggstore_t *st = NULL;
    ck_assert_int_eq(plait_aggstore_open(&st, &cfg), 0);
    round_list_t l;
    memset(&l, 0, sizeof(l));
    int rc = plait_aggstore_round_get(st, r, round_cb, &l);
    if (rc != 0) ck_assert_int_eq(l.n, 0);
    plait_aggstore_close(st);
    return rc;
}

START_TEST(test_tampered_rows)
{
    const char *path = db_path("tamper.db");
    plait_aggstore_t *st = open_agg(path);
    int64_t r1 = commit_next(st, NULL, NULL, 0);
    uint8_t fp[32] = {9};
    ck_assert_int_eq(plait_aggstore_device_enroll(st, "dev", fp), 0);
    plait_aggstore_ledger_t led = {0, 0.1, 1.0, 1, 1e-5, 1.5, "gaussian", 1.0, "poisson", 0, 0, 0, 0};
    plait_aggstore_metric_t m = {"loss", 1.0};
    int64_t r2 = commit_next(st, &led, &m, 1);
    plait_aggstore_close(st);
    ck_assert_int_eq(round_get_rc(path, r1), 0);

    raw_exec(path, "PRAGMA ignore_check_constraints = ON; UPDATE rounds SET state = 'weird' WHERE id = 1");
    ck_assert_int_eq(round_get_rc(path, r1), PLAIT_EPROTO);
    ck_assert_ptr_nonnull(strstr(plait_errmsg(), "rounds: round 1: malformed state"));
    raw_exec(path, "UPDATE rounds SET state = 'committed', task_config = '{oops' WHERE id = 1");
    ck_assert_int_eq(round_get_rc(path, r1), PLAIT_EPROTO);
    ck_assert_ptr_nonnull(strstr(plait_errmsg(), "task_config"));
    raw_exec(path, "UPDATE rounds SET task_config = '{\"a\":\"' || hex(zeroblob(70000)) || '\"}' WHERE id = 1");
    ck_assert_int_eq(round_get_rc(path, r1), PLAIT_EPROTO);
    ck_assert_ptr_nonnull(strstr(plait_errmsg(), "over"));
    raw_exec(path, "UPDATE rounds SET task_config = '{}', participants = -4 WHERE id = 1");
    ck_assert_int_eq(round_get_rc(path, r1), PLAIT_EPROTO);
    ck_assert_ptr_nonnull(strstr(plait_errmsg(), "participants"));
    raw_exec(path, "UPDATE rounds SET participants = 1, new_version = NULL WHERE id = 1");
    ck_assert_int_eq(round_get_rc(path, r1), PLAIT_EPROTO);
    ck_assert_ptr_nonnull(strstr(plait_errmsg(), "new_version"));
    raw_exec(path, "UPDATE rounds SET new_version = 1 WHERE id = 1;"
                   "INSERT INTO rejections VALUES (1, 'bad' || char(10), 1)");
    ck_assert_int_eq(round_get_rc(path, r1), PLAIT_EPROTO);
    ck_assert_ptr_nonnull(strstr(plait_errmsg(), "rejections"));
    raw_exec(path, "DELETE FROM rejections");
    ck_assert_int_eq(round_get_rc(path, r1), 0);

    /* Devices, ledger and metrics rows. */
    raw_exec(path, "UPDATE devices SET fingerprint = x'01'");
    st = open_agg(path);
    plait_aggstore_device_t d;
    ck_assert_int_eq(plait_aggstore_device_get(st, "dev", &d), PLAIT_EPROTO);
    ck_assert_ptr_nonnull(strstr(plait_errmsg(), "device 'dev': malformed fingerprint"));
    plait_aggstore_close(st);
    raw_exec(path, "UPDATE ledger SET q = 2.0");
    st = open_agg(path);
    plait_aggstore_privacy_t tot;
    ck_assert_int_eq(plait_aggstore_ledger_total(st, &tot), PLAIT_EPROTO);
    ck_assert_ptr_nonnull(strstr(plait_errmsg(), "ledger: round 2: malformed q"));
    plait_aggstore_close(st);
    raw_exec(path, "UPDATE metrics SET value = 'text'");
    st = open_agg(path);
    misc_list_t ml;
    memset(&ml, 0, sizeof(ml));
    ck_assert_int_eq(plait_aggstore_metrics_foreach(st, r2, metric_cb, &ml), PLAIT_EPROTO);
    ck_assert_ptr_nonnull(strstr(plait_errmsg(), "metrics: round 2"));
    plait_aggstore_close(st);
}
END_TEST

/* ---- hostile files ---- */

START_TEST(test_hostile_files)
{
    /* Random bytes. */
    const char *p = db_path("random.db");
    uint8_t junk[8192];
    uint32_t s = 777;
    for (size_t i = 0; i < sizeof(junk); i++) {
        s = s * 1664525u + 1013904223u;
        junk[i] = (uint8_t)(s >> 24);
    }
    ck_assert_int_eq(tu_write_file(p, junk, sizeof(junk)), 0);
    ck_assert_int_eq(open_rc(p), PLAIT_EPROTO);
    ck_assert_ptr_nonnull(strstr(plait_errmsg(), "not an sqlite database"));
    size_t len;
    uint8_t *back = tu_read_file(p, &len);
    ck_assert_uint_eq(len, sizeof(junk));
    ck_assert_mem_eq(back, junk, len); /* untouched */
    free(back);
    /* An sqlite header followed by garbage. */
    p = db_path("header.db");
    memcpy(junk, "SQLite format 3", 16);
    ck_assert_int_eq(tu_write_file(p, junk, sizeof(junk)), 0);
    int rc = open_rc(p);
    ck_assert_msg(rc == PLAIT_EPROTO || rc == PLAIT_EMISMATCH, "rc %d", rc);
    /* Other applications' databases. */
    p = db_path("foreign.db");
    raw_exec(p, "CREATE TABLE foo(x); INSERT INTO foo VALUES (1);");
    ck_assert_int_eq(open_rc(p), PLAIT_EMISMATCH);
    p = db_path("foreign_meta.db");
    raw_exec(p, "CREATE TABLE meta(key TEXT PRIMARY KEY, value); INSERT INTO meta VALUES ('magic','other');");
    ck_assert_int_eq(open_rc(p), PLAIT_EMISMATCH);
    p = db_path("foreign_shape.db");
    raw_exec(p, "CREATE TABLE meta(a, b);");
    ck_assert_int_eq(open_rc(p), PLAIT_EMISMATCH);
    p = db_path("foreign_app.db");
    raw_exec(p, "PRAGMA application_id = 1234; CREATE TABLE t(x);");
    ck_assert_int_eq(open_rc(p), PLAIT_EMISMATCH);
    /* A plait DEVICE store is not an aggregator store (and vice versa). */
    p = db_path("device.db");
    plait_store_config_t scfg;
    plait_store_config_default(&scfg);
    scfg.path = p;
    plait_store_t *ds = NULL;
    ck_assert_int_eq(plait_store_open(&ds, &scfg), 0);
    plait_store_close(ds);
    ck_assert_int_eq(open_rc(p), PLAIT_EMISMATCH);
    ck_assert_ptr_nonnull(strstr(plait_errmsg(), "not an aggregator store"));
    p = db_path("agg.db");
    ck_assert_int_eq(open_rc(p), 0);
    scfg.path = p;
    ck_assert_int_eq(plait_store_open(&ds, &scfg), PLAIT_EMISMATCH);
    /* Newer schema, malformed meta, a missing table. */
    raw_exec(p, "UPDATE meta SET value = 5 WHERE key = 'schema_version';");
    ck_assert_int_eq(open_rc(p), PLAIT_EMISMATCH);
    ck_assert_ptr_nonnull(strstr(plait_errmsg(), "newer"));
    raw_exec(p, "UPDATE meta SET value = 'one' WHERE key = 'schema_version';");
    ck_assert_int_eq(open_rc(p), PLAIT_EPROTO);
    raw_exec(p, "UPDATE meta SET value = 4 WHERE key = 'schema_version'; DELETE FROM meta WHERE key = 'deployment_id'");
    ck_assert_int_eq(open_rc(p), PLAIT_EPROTO);
    ck_assert_ptr_nonnull(strstr(plait_errmsg(), "deployment_id"));
    raw_exec(p, "INSERT INTO meta VALUES ('deployment_id', 'x'); DROP TABLE ledger;");
    ck_assert_int_eq(open_rc(p), PLAIT_EPROTO);
    ck_assert_ptr_nonnull(strstr(plait_errmsg(), "ledger"));
    /* Missing file without create, and read-only. */
    plait_aggstore_config_t cfg;
    plait_aggstore_config_default(&cfg);
    cfg.path = db_path("missing.db");
    cfg.create = false;
    plait_aggstore_t *st = NULL;
    ck_assert_int_eq(plait_aggstore_open(&st, &cfg), PLAIT_ENOENT);
    cfg.create = true;
    cfg.read_only = true;
    ck_assert_int_eq(plait_aggstore_open(&st, &cfg), PLAIT_ENOENT);
    ck_assert_int_ne(access(cfg.path, F_OK), 0);
    /* A zero-length file becomes a new store. */
    p = db_path("empty.db");
    ck_assert_int_eq(tu_write_file(p, "", 0), 0);
    ck_assert_int_eq(open_rc(p), 0);
}
END_TEST

/* ---- locks ---- */

START_TEST(test_busy)
{
    const char *path = db_path("busy.db");
    plait_aggstore_t *st = open_agg(path);
    (void)commit_next(st, NULL, NULL, 0);
    plait_aggstore_close(st);
    plait_aggstore_config_t cfg;
    plait_aggstore_config_default(&cfg);
    cfg.path = path;
    cfg.busy_timeout_ms = 0;
    ck_assert_int_eq(plait_aggstore_open(&st, &cfg), 0);
    int64_t r = 0;
    ck_assert_int_eq(plait_aggstore_round_begin(st, 2, 1, "{}", 1, &r), 0);

    /* Another writer holds the lock: writes give PLAIT_EBUSY and change nothing. */
    sqlite3 *other = NULL;
    ck_assert_int_eq(sqlite3_open(path, &other), SQLITE_OK);
    ck_assert_int_eq(sqlite3_exec(other, "BEGIN IMMEDIATE; INSERT INTO metrics VALUES (1, 'x', 1.0)", NULL, NULL, NULL),
                     SQLITE_OK);
    uint8_t fp[32] = {3};
    ck_assert_int_eq(plait_aggstore_device_enroll(st, "d", fp), PLAIT_EBUSY);
    size_t len;
    uint8_t *b = make_blob(2, &len);
    plait_aggstore_commit_t c;
    fill_commit(&c, b, len);
    ck_assert_int_eq(plait_aggstore_round_commit(st, r, &c, NULL), PLAIT_EBUSY);
    /* Readers are not blocked by the writer (WAL), and see only committed data. */
    plait_aggstore_config_t ro = cfg;
    ro.read_only = true;
    plait_aggstore_t *rd = NULL;
    ck_assert_int_eq(plait_aggstore_open(&rd, &ro), 0);
    plait_aggstore_version_t v;
    plait_aggstore_version_init(&v);
    ck_assert_int_eq(plait_aggstore_version_latest(rd, &v), 0);
    ck_assert_int_eq(v.number, 1);
    plait_aggstore_version_free(&v);
    misc_list_t ml;
    memset(&ml, 0, sizeof(ml));
    ck_assert_int_eq(plait_aggstore_metrics_foreach(rd, 1, metric_cb, &ml), 0);
    ck_assert_int_eq(ml.n, 0);
    ck_assert_int_eq(sqlite3_exec(other, "ROLLBACK", NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(other);
    /* The lock is gone: the same commit now succeeds, and the reader sees it. */
    int64_t ver = 0;
    ck_assert_int_eq(plait_aggstore_round_commit(st, r, &c, &ver), 0);
    ck_assert_int_eq(ver, 2);
    ck_assert_int_eq(plait_aggstore_version_latest(rd, &v), 0);
    ck_assert_int_eq(v.number, 2);
    ck_assert(blob_matches(2, v.adapter, v.adapter_len));
    plait_aggstore_version_free(&v);
    free(b);
    plait_aggstore_close(rd);
    plait_aggstore_close(st);
}
END_TEST

/* ---- kill -9 ---- */

/* Child: commit versions as fast as possible, reporting each committed number on fd. */
static void crash_child(const char *path, int fd)
{
    plait_aggstore_config_t cfg;
    plait_aggstore_config_default(&cfg);
    cfg.path = path;
    plait_aggstore_t *st = NULL;
    if (plait_aggstore_open(&st, &cfg) != 0) _exit(10);
    int64_t latest = 0;
    if (plait_aggstore_version_latest_number(st, &latest) != 0) _exit(11);
    for (int i = 0; i < 100000; i++) {
        int64_t round = 0, ver = 0;
        if (plait_aggstore_round_begin(st, 4, 2, "{\"lr\":0.001}", latest, &round) != 0) _exit(12);
        size_t len = blob_len(latest + 1);
        uint8_t *b = malloc(len);
        if (!b) _exit(13);
        for (size_t k = 0; k < len; k++) b[k] = (uint8_t)((latest + 1) * 131 + (int64_t)k * 31 + (int64_t)(k >> 8));
        plait_aggstore_commit_t c;
        memset(&c, 0, sizeof(c));
        c.adapter = b;
        c.adapter_len = len;
        c.lora_rank = 4;
        c.lora_alpha = 8.0;
        c.lora_targets = 1;
        plait_aggstore_ledger_t led = {0, 0.01, 1.0, 1, 1e-6, 0.1 * (double)(latest + 1), "gaussian", 1.0, "poisson", 0, 0, 0, 0};
        c.ledger = &led;
        if (plait_aggstore_round_commit(st, round, &c, &ver) != 0) _exit(14);
        free(b);
        latest = ver;
        if (write(fd, &ver, sizeof(ver)) != (ssize_t)sizeof(ver)) _exit(15);
    }
    plait_aggstore_close(st);
    _exit(0);
}

typedef struct {
    int64_t expect;
    bool ok;
    int64_t max_round;
} crash_ver_t;

static int crash_ver_cb(void *ud, const plait_aggstore_version_t *v)
{
    crash_ver_t *c = ud;
    if (v->number != c->expect) c->ok = false;
    c->expect++;
    return 0;
}

typedef struct {
    int64_t open, abandoned, committed;
} crash_rounds_t;

static int crash_round_cb(void *ud, const plait_aggstore_round_t *r)
{
    crash_rounds_t *c = ud;
    if (r->state == PLAIT_AGGSTORE_ROUND_OPEN) c->open++;
    if (r->state == PLAIT_AGGSTORE_ROUND_ABANDONED) c->abandoned++;
    if (r->state == PLAIT_AGGSTORE_ROUND_COMMITTED) c->committed++;
    return 0;
}

START_TEST(test_kill9)
{
    const char *path = db_path("crash.db");
    srand(20261123u);
    int64_t known = 0;       /* versions the parent has seen committed */
    int64_t abandoned = 0;
    const int iterations = 10;
    for (int it = 0; it < iterations; it++) {
        int pfd[2];
        ck_assert_int_eq(pipe(pfd), 0);
        pid_t pid = fork();
        ck_assert_int_ge(pid, 0);
        if (pid == 0) {
            close(pfd[0]);
            crash_child(path, pfd[1]);
        }
        close(pfd[1]);
        /* 0, then 5..255 ms: from "before open finished" to tens of commits in
         * (each commit waits for an fsync, so most kills land inside one). */
        int delay_us = it == 0 ? 0 : 5000 + (rand() % 250000);
        usleep((useconds_t)delay_us);
        ck_assert_int_eq(kill(pid, SIGKILL), 0);
        int status = 0;
        ck_assert_int_eq(waitpid(pid, &status, 0), pid);
        ck_assert_msg(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL, "child exited with %d",
                      WIFEXITED(status) ? WEXITSTATUS(status) : -1);
        /* The highest version the child saw committed. */
        int64_t v, reported = 0;
        while (read(pfd[0], &v, sizeof(v)) == (ssize_t)sizeof(v)) reported = v;
        close(pfd[0]);

        plait_aggstore_t *st = open_agg(path);
        ck_assert_int_eq(plait_aggstore_check_integrity(st), 0);
        plait_aggstore_info_t info;
        ck_assert_int_eq(plait_aggstore_info(st, &info), 0);
        ck_assert_int_le(info.abandoned_at_open, 1);
        abandoned += info.abandoned_at_open;
        int64_t n = 0;
        ck_assert_int_eq(plait_aggstore_version_latest_number(st, &n), 0);
        /* Nothing committed is lost: neither what the child reported nor what we saw before. */
        ck_assert_int_ge(n, reported);
        ck_assert_int_ge(n, known);
        crash_ver_t cv = {1, true, 0};
        ck_assert_int_eq(plait_aggstore_versions_foreach(st, crash_ver_cb, &cv), 0);
        ck_assert_msg(cv.ok && cv.expect == n + 1, "versions not contiguous 1..%lld", (long long)n);
        plait_aggstore_version_t ver;
        plait_aggstore_version_init(&ver);
        for (int64_t k = (known > 1 ? known - 1 : 1); k <= n; k++) { /* the new ones and the last old one */
            int rc = plait_aggstore_version_get(st, k, &ver);
            ck_assert_msg(rc == 0, "version %lld: %s", (long long)k, plait_errmsg());
            ck_assert_msg(blob_matches(k, ver.adapter, ver.adapter_len), "version %lld content", (long long)k);
        }
        plait_aggstore_version_free(&ver);
        crash_rounds_t cr = {0, 0, 0};
        ck_assert_int_eq(plait_aggstore_rounds_foreach(st, false, 0, crash_round_cb, &cr), 0);
        ck_assert_int_eq(cr.open, 0);
        ck_assert_int_eq(cr.committed, n);
        ck_assert_int_eq(cr.abandoned, abandoned);
        plait_aggstore_privacy_t tot;
        ck_assert_int_eq(plait_aggstore_ledger_total(st, &tot), 0);
        ck_assert_int_eq(tot.rounds, n - it); /* one per child commit (the parent's have none) */
        /* A new round can begin and commit. */
        (void)commit_next(st, NULL, NULL, 0);
        known = n + 1;
        plait_aggstore_close(st);
    }
    /* Every version, including the oldest, still reads back intact. */
    plait_aggstore_t *st = open_agg(path);
    plait_aggstore_version_t ver;
    plait_aggstore_version_init(&ver);
    for (int64_t k = 1; k <= known; k++) {
        ck_assert_int_eq(plait_aggstore_version_get(st, k, &ver), 0);
        ck_assert(blob_matches(k, ver.adapter, ver.adapter_len));
    }
    plait_aggstore_version_free(&ver);
    plait_aggstore_close(st);
    ck_assert_int_gt(known, iterations); /* the children did commit something */
}
END_TEST

Suite *aggstore_suite(void)
{
    Suite *s = suite_create("aggstore");
    TCase *tc = tcase_create("tables");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_config);
    tcase_add_test(tc, test_devices);
    tcase_add_test(tc, test_device_labels);
    tcase_add_test(tc, test_duplicate_upload);
    tcase_add_test(tc, test_rounds);
    tcase_add_test(tc, test_versions);
    tcase_add_test(tc, test_large_version);
    tcase_add_test(tc, test_ledger_metrics);
    tcase_add_test(tc, test_dp_participation);
    tcase_add_test(tc, test_ledger_ddg);
    tcase_add_test(tc, test_evals);
    tcase_add_test(tc, test_evals_migration);
    suite_add_tcase(s, tc);

    tc = tcase_create("durability");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_commit_atomicity);
    tcase_add_test(tc, test_commit_participation);
    tcase_add_test(tc, test_recovery);
    tcase_add_test(tc, test_busy);
    tcase_add_test(tc, test_kill9);
    suite_add_tcase(s, tc);

    tc = tcase_create("hostile");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_corrupted_blob);
    tcase_add_test(tc, test_tampered_rows);
    tcase_add_test(tc, test_hostile_files);
    suite_add_tcase(s, tc);
    return s;
}
