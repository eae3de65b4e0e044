/*
 * aggstore_versions.c: reading global versions back (part of aggstore.c).
 * Every blob's size is checked against the limits before it is read; the
 * adapter is hashed on every read and compared with its sha256.
 */
#include "aggstore_int.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "plait/crypto.h"
#include "plait/le.h"

/* ------------------------------------------------------------------------ */
/* Reading versions                                                          */
/* ------------------------------------------------------------------------ */

void plait_aggstore_version_init(plait_aggstore_version_t *v)
{
    memset(v, 0, sizeof(*v));
}

void plait_aggstore_version_free(plait_aggstore_version_t *v)
{
    if (!v) return;
    free(v->adapter);
    free(v->opt_state);
    plait_aggstore_version_init(v);
}

#define VERSION_META_COLS                                                                                   \
    "number, round_id, created, sha256, lora_rank, lora_alpha, lora_targets, opt_kind, length(adapter),"   \
    " length(opt_state), typeof(adapter), typeof(opt_state)"

static bool is_blob_type(sqlite3_stmt *s, int col)
{
    const unsigned char *t = sqlite3_column_text(s, col);
    return t && strcmp((const char *)t, "blob") == 0;
}

/* Validate the metadata columns of a version row into v (no blobs). */
static int read_version_meta(const plait_aggstore_t *st, sqlite3_stmt *s, plait_aggstore_version_t *v)
{
    v->number = sqlite3_column_int64(s, 0);
    long long n = (long long)v->number;
    int64_t rank = 0, targets = 0, kind = 0, alen = 0, olen = 0;
    const char *bad = NULL;
    if (v->number < 1) bad = "number";
    else if (!plait__aggstore_opt_nonneg(s, 1, &v->round_id)) bad = "round_id";
    else if (!plait__aggstore_nonneg(s, 2, &v->created)) bad = "created";
    else if (sqlite3_column_type(s, 3) != SQLITE_BLOB || sqlite3_column_bytes(s, 3) != 32) bad = "sha256";
    else if (!plait__aggstore_nonneg(s, 4, &rank) || rank < 1 || rank > PLAIT_AGGSTORE_MAX_RANK) bad = "lora_rank";
    else if (sqlite3_column_type(s, 5) != SQLITE_FLOAT || !(sqlite3_column_double(s, 5) > 0.0) ||
             !isfinite(sqlite3_column_double(s, 5)))
        bad = "lora_alpha";
    else if (!plait__aggstore_nonneg(s, 6, &targets) || targets < 1 || targets > 0x7f) bad = "lora_targets";
    else if (!plait__aggstore_nonneg(s, 7, &kind) || kind > 255) bad = "opt_kind";
    else if (!is_blob_type(s, 10) || !plait__aggstore_nonneg(s, 8, &alen) || alen < 1) bad = "adapter";
    else if (!is_blob_type(s, 11) || !plait__aggstore_nonneg(s, 9, &olen) || olen % 4 != 0) bad = "opt_state";
    if (bad) return plait_fail(PLAIT_EPROTO, "aggstore: versions: version %lld: malformed %s", n, bad);
    if ((uint64_t)alen > st->max_adapter)
        return plait_fail(PLAIT_EPROTO, "aggstore: versions: version %lld: adapter is %lld bytes, max %zu", n,
                          (long long)alen, st->max_adapter);
    if ((uint64_t)olen > st->max_opt)
        return plait_fail(PLAIT_EPROTO, "aggstore: versions: version %lld: optimizer state is %lld bytes, max %zu", n,
                          (long long)olen, st->max_opt);
    memcpy(v->sha256, sqlite3_column_blob(s, 3), 32);
    v->lora_rank = (int)rank;
    v->lora_alpha = sqlite3_column_double(s, 5);
    v->lora_targets = (uint32_t)targets;
    v->opt_kind = (int)kind;
    v->adapter_len = (size_t)alen;
    v->opt_state_len = (size_t)olen / 4;
    return 0;
}

/*
 * Copy column col of version number into a fresh buffer of exactly n bytes
 * with incremental blob I/O: sqlite reads the pages straight into it, so the
 * blob is in memory once, and only after its size was checked.
 */
static int read_blob(plait_aggstore_t *st, int64_t number, const char *col, size_t n, uint8_t **out)
{
    sqlite3_blob *b = NULL;
    int rc = sqlite3_blob_open(st->db, "main", "versions", col, number, 0, &b);
    if (rc != SQLITE_OK) {
        int ret = plait__aggstore_sqfail(st->db, rc, "opening a version blob");
        sqlite3_blob_close(b);
        return ret;
    }
    int ret = 0;
    if ((size_t)sqlite3_blob_bytes(b) != n) {
        ret = plait_fail(PLAIT_EPROTO, "aggstore: versions: version %lld: %s changed size while read",
                         (long long)number, col);
    } else if (!(*out = malloc(n))) {
        ret = plait_fail(PLAIT_ENOMEM, "aggstore: out of memory");
    } else if ((rc = sqlite3_blob_read(b, *out, (int)n, 0)) != SQLITE_OK) {
        ret = plait__aggstore_sqfail(st->db, rc, "reading a version blob");
        free(*out);
        *out = NULL;
    }
    sqlite3_blob_close(b);
    return ret;
}

/* The body of plait_aggstore_version_get, inside a read transaction. */
static int version_get_tx(plait_aggstore_t *st, int64_t number, plait_aggstore_version_t *v)
{
    sqlite3_stmt *s;
    int ret = plait__aggstore_prep(st, "SELECT " VERSION_META_COLS " FROM versions WHERE number = ?1", &s);
    if (ret != 0) return ret;
    sqlite3_bind_int64(s, 1, number);
    int rc = sqlite3_step(s);
    if (rc == SQLITE_DONE) ret = plait_fail(PLAIT_ENOENT, "aggstore: no version %lld", (long long)number);
    else if (rc != SQLITE_ROW) ret = plait__aggstore_sqfail(st->db, rc, "reading version");
    else ret = read_version_meta(st, s, v); /* checks both blob sizes against the limits */
    sqlite3_finalize(s);
    if (ret != 0) return ret;

    long long n = (long long)number;
    if ((ret = read_blob(st, number, "adapter", v->adapter_len, &v->adapter)) != 0) return ret;
    uint8_t sha[32];
    plait_sha256(v->adapter, v->adapter_len, sha);
    if (memcmp(sha, v->sha256, 32) != 0)
        return plait_fail(PLAIT_EPROTO, "aggstore: versions: version %lld: adapter does not match its sha256", n);
    if (v->opt_state_len == 0) return 0;
    uint8_t *o = NULL;
    if ((ret = read_blob(st, number, "opt_state", v->opt_state_len * 4, &o)) != 0) return ret;
    /* Decode in place: the buffer has exactly opt_state_len floats' room. */
    v->opt_state = (float *)(void *)o;
    for (size_t i = 0; i < v->opt_state_len; i++) {
        const uint8_t *p = o + 4 * i;
        uint32_t u = plait_le32(p);
        float f;
        memcpy(&f, &u, 4);
        if (!isfinite(f))
            return plait_fail(PLAIT_EPROTO, "aggstore: versions: version %lld: optimizer state element %zu not finite",
                              n, i);
        memcpy(o + 4 * i, &f, 4);
    }
    return 0;
}

int plait_aggstore_version_get(plait_aggstore_t *st, int64_t number, plait_aggstore_version_t *v)
{
    if (!v) return plait_fail(PLAIT_EINVAL, "aggstore: version is NULL");
    plait_aggstore_version_free(v);
    int ret = plait__aggstore_check_usable(st);
    if (ret != 0) return ret;
    /* One read transaction: the row and its blobs come from one snapshot. */
    if ((ret = plait__aggstore_exec(st, "BEGIN", "beginning a read")) != 0) return ret;
    ret = version_get_tx(st, number, v);
    plait__aggstore_tx_rollback(st); /* a read transaction: nothing to commit */
    if (ret != 0) plait_aggstore_version_free(v);
    return ret;
}

int plait_aggstore_version_latest_number(plait_aggstore_t *st, int64_t *out)
{
    int ret = plait__aggstore_check_usable(st);
    if (ret != 0) return ret;
    if (!out) return plait_fail(PLAIT_EINVAL, "aggstore: out is NULL");
    bool found;
    int64_t n = 0;
    if ((ret = plait__aggstore_query_i64(st, "SELECT coalesce(max(number), 0) FROM versions", false, 0, &n, &found,
                         "reading latest version")) != 0)
        return ret;
    if (!found || n < 0) return plait_fail(PLAIT_EPROTO, "aggstore: versions: malformed version number");
    *out = n;
    return 0;
}

int plait_aggstore_version_latest(plait_aggstore_t *st, plait_aggstore_version_t *v)
{
    int64_t n = 0;
    int ret = plait_aggstore_version_latest_number(st, &n);
    if (ret != 0) return ret;
    if (n == 0) {
        if (v) plait_aggstore_version_free(v);
        return plait_fail(PLAIT_ENOENT, "aggstore: no version yet");
    }
    return plait_aggstore_version_get(st, n, v);
}

int plait_aggstore_versions_foreach(plait_aggstore_t *st, plait_aggstore_version_cb cb, void *ud)
{
    int ret = plait__aggstore_check_usable(st);
    if (ret != 0) return ret;
    if (!cb) return plait_fail(PLAIT_EINVAL, "aggstore: callback is NULL");
    sqlite3_stmt *s;
    if ((ret = plait__aggstore_prep(
             st, "SELECT " VERSION_META_COLS " FROM versions ORDER BY number", &s)) != 0)
        return ret;
    int rc;
    while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
        plait_aggstore_version_t v;
        plait_aggstore_version_init(&v);
        if ((ret = read_version_meta(st, s, &v)) != 0) break;
        st->in_cb = true;
        ret = cb(ud, &v);
        st->in_cb = false;
        if (ret != 0) break;
    }
    if (ret == 0 && rc != SQLITE_DONE) ret = plait__aggstore_sqfail(st->db, rc, "reading versions");
    sqlite3_finalize(s);
    return ret;
}
