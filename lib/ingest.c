/*
 * ingest.c: parsers that turn the user's files (blank-line separated text,
 * JSON lines) into records, and plait_ingest_file, which feeds a file into
 * the store in one transaction.
 *
 * Invariants:
 *   - the input is an untrusted span that need not be NUL-terminated; every
 *     access is bounded by len;
 *   - a record handed to the callback is UTF-8 without NUL, 1+ bytes, and
 *     NUL-terminated (TEXT blocks are copied into a scratch buffer for that,
 *     JSONL text comes from the JSON tree);
 *   - buffers that held user text (the file, the scratch block, the JSON
 *     tree) are wiped before they are freed;
 *   - error details name a line number and the problem, never the text.
 *
 * Expected workload: files of a few KiB to tens of MiB, read whole (the size
 * is checked before allocating), parsed in one pass.
 */
#include "plait/ingest.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "plait/json.h"

/* memset through a volatile pointer so the wipe before free is not elided. */
static void *(*const volatile wipe_memset)(void *, int, size_t) = memset;

static void wipe(void *p, size_t n)
{
    if (p && n) wipe_memset(p, 0, n);
}

/* Re-record the current detail with a line prefix; returns rc. */
static int with_line(int rc, const char *what, size_t line)
{
    char saved[400];
    snprintf(saved, sizeof(saved), "%s", plait_errmsg());
    return plait_fail(rc, "%s line %zu: %s", what, line, saved);
}

/* Forward a callback's result: 0 continue, >0 stop, <0 error with line context. */
static int cb_result(int rc, const char *what, size_t line)
{
    if (rc < 0) return with_line(rc, what, line);
    return rc;
}

/* ------------------------------------------------------------------------ */
/* TEXT                                                                      */
/* ------------------------------------------------------------------------ */

static bool is_blank(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (s[i] != ' ' && s[i] != '\t' && s[i] != '\r') return false;
    return true;
}

/* Deliver the block in b (trailing whitespace trimmed) and empty b. */
static int emit_block(plait_buf_t *b, size_t first_line, plait_ingest_cb cb, void *ud)
{
    size_t n = b->len;
    while (n > 0 && (b->data[n - 1] == ' ' || b->data[n - 1] == '\t' || b->data[n - 1] == '\r' ||
                     b->data[n - 1] == '\n'))
        n--;
    int rc = 0;
    if (n > 0) {
        b->data[n] = '\0';
        rc = cb_result(cb(ud, PLAIT_STORE_TIME_NOW, NULL, NULL, b->data, n), "text record at", first_line);
    }
    wipe(b->data, b->len);
    plait_buf_reset(b);
    return rc;
}

int plait_ingest_text(const char *buf, size_t len, plait_ingest_cb cb, void *ud)
{
    if (!cb) return plait_fail(PLAIT_EINVAL, "ingest: callback is NULL");
    if (!buf && len > 0) return plait_fail(PLAIT_EINVAL, "ingest: buf is NULL");
    plait_buf_t block;
    plait_buf_init(&block, 0);
    size_t pos = 0, line = 0, first_line = 0;
    int rc = 0;
    while (pos < len && rc == 0) {
        line++;
        const char *nl = memchr(buf + pos, '\n', len - pos);
        size_t end = nl ? (size_t)(nl - buf) : len;
        const char *s = buf + pos;
        size_t n = end - pos;
        pos = nl ? end + 1 : len;
        if (n > 0 && s[n - 1] == '\r') n--; /* \r\n line end */
        if (is_blank(s, n)) {
            if (block.len > 0) rc = emit_block(&block, first_line, cb, ud);
            continue;
        }
        size_t bad;
        if (!plait_utf8_valid(s, n, &bad)) {
            rc = plait_fail(PLAIT_EPROTO, "text line %zu: invalid UTF-8 or NUL at column %zu", line,
                            bad + 1);
            break;
        }
        if (block.len == 0) first_line = line;
        else plait_buf_append(&block, "\n", 1);
        if ((rc = plait_buf_append(&block, s, n)) != 0) rc = with_line(rc, "text", line);
    }
    if (rc == 0 && block.len > 0) rc = emit_block(&block, first_line, cb, ud);
    wipe(block.data, block.cap);
    plait_buf_free(&block);
    return rc;
}

/* ------------------------------------------------------------------------ */
/* JSONL                                                                     */
/* ------------------------------------------------------------------------ */

/* An optional string member: absent or null gives NULL; another type fails. */
static int opt_string(const plait_json_t *obj, const char *key, const char **out, size_t line)
{
    const plait_json_t *v = plait_json_get(obj, key);
    *out = NULL;
    if (!v || plait_json_type(v) == PLAIT_JSON_NULL) return 0;
    if (plait_json_type(v) != PLAIT_JSON_STRING)
        return plait_fail(PLAIT_EPROTO, "jsonl line %zu: \"%s\" is not a string", line, key);
    *out = plait_json_string(v, NULL);
    return 0;
}

static int jsonl_line(const char *s, size_t n, size_t line, plait_ingest_cb cb, void *ud)
{
    plait_json_limits_t lim;
    plait_json_limits_default(&lim);
    lim.max_depth = 16;
    if (lim.max_string > n) lim.max_string = n; /* no string can be longer than its line */
    plait_json_t *root = NULL;
    int rc = plait_json_parse_ex(s, n, &lim, &root);
    if (rc != 0) return with_line(rc, "jsonl", line);
    const char *kind = NULL, *user = NULL, *text;
    size_t tlen = 0;
    int64_t t = PLAIT_STORE_TIME_NOW;
    const plait_json_t *tv, *timev;
    if (plait_json_type(root) != PLAIT_JSON_OBJECT) {
        rc = plait_fail(PLAIT_EPROTO, "jsonl line %zu: not a JSON object", line);
        goto out;
    }
    tv = plait_json_get(root, "text");
    text = plait_json_string(tv, &tlen);
    if (!text) {
        rc = plait_fail(PLAIT_EPROTO, "jsonl line %zu: missing \"text\" string", line);
        goto out;
    }
    if (tlen == 0) {
        rc = plait_fail(PLAIT_EPROTO, "jsonl line %zu: \"text\" is empty", line);
        goto out;
    }
    timev = plait_json_get(root, "time");
    if (timev && plait_json_type(timev) != PLAIT_JSON_NULL) {
        if ((rc = plait_json_int64(timev, &t)) != 0) {
            rc = plait_fail(rc, "jsonl line %zu: \"time\" is not an integer in int64 range", line);
            goto out;
        }
        if (t < 0) {
            rc = plait_fail(PLAIT_EPROTO, "jsonl line %zu: \"time\" is negative", line);
            goto out;
        }
    }
    if ((rc = opt_string(root, "kind", &kind, line)) != 0) goto out;
    if ((rc = opt_string(root, "user", &user, line)) != 0) goto out;
    rc = cb_result(cb(ud, t, kind, user, text, tlen), "jsonl", line);
out:
    plait_json_free(root); /* wipes the strings */
    return rc;
}

int plait_ingest_jsonl(const char *buf, size_t len, plait_ingest_cb cb, void *ud)
{
    if (!cb) return plait_fail(PLAIT_EINVAL, "ingest: callback is NULL");
    if (!buf && len > 0) return plait_fail(PLAIT_EINVAL, "ingest: buf is NULL");
    size_t pos = 0, line = 0;
    int rc = 0;
    while (pos < len && rc == 0) {
        line++;
        const char *nl = memchr(buf + pos, '\n', len - pos);
        size_t end = nl ? (size_t)(nl - buf) : len;
        const char *s = buf + pos;
        size_t n = end - pos;
        pos = nl ? end + 1 : len;
        if (n > 0 && s[n - 1] == '\r') n--;
        bool blank = true;
        for (size_t i = 0; i < n && blank; i++)
            if (s[i] != ' ' && s[i] != '\t') blank = false;
        if (blank) continue;
        rc = jsonl_line(s, n, line, cb, ud);
    }
    return rc;
}

/* ------------------------------------------------------------------------ */
/* Files                                                                     */
/* ------------------------------------------------------------------------ */

typedef struct {
    plait_store_t *st;
    int64_t n;
} file_ctx_t;

static int add_cb(void *ud, int64_t t, const char *kind, const char *user, const char *text, size_t len)
{
    file_ctx_t *c = ud;
    (void)user;
    int rc = plait_store_add(c->st, t, kind, text, len, NULL);
    if (rc == 0) c->n++;
    return rc;
}

/* Read the whole regular file at path into a fresh buffer, size-checked first. */
static int read_file(const char *path, size_t max_bytes, char **out, size_t *out_len)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK); /* a FIFO is refused below, not waited on */
    if (fd < 0) {
        int e = errno;
        if (e == ENOENT) return plait_fail(PLAIT_ENOENT, "ingest: input file does not exist");
        return plait_fail(PLAIT_EIO, "ingest: cannot open input file: %s", strerror(e));
    }
    struct stat sb;
    int ret = 0;
    char *buf = NULL;
    size_t size = 0, got = 0;
    if (fstat(fd, &sb) != 0) {
        ret = plait_fail(PLAIT_EIO, "ingest: cannot stat input file: %s", strerror(errno));
        goto out;
    }
    if (!S_ISREG(sb.st_mode)) {
        ret = plait_fail(PLAIT_EINVAL, "ingest: input is not a regular file");
        goto out;
    }
    if (sb.st_size < 0 || (unsigned long long)sb.st_size > (unsigned long long)max_bytes) {
        ret = plait_fail(PLAIT_ETOOBIG, "ingest: input file is %lld bytes, max %zu",
                         (long long)sb.st_size, max_bytes);
        goto out;
    }
    size = (size_t)sb.st_size;
    buf = malloc(size ? size : 1);
    if (!buf) {
        ret = plait_fail(PLAIT_ENOMEM, "ingest: cannot allocate %zu bytes", size);
        goto out;
    }
    while (got < size) {
        ssize_t r = read(fd, buf + got, size - got);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) {
            ret = plait_fail(PLAIT_EIO, "ingest: read failed: %s", strerror(errno));
            goto out;
        }
        if (r == 0) {
            ret = plait_fail(PLAIT_EIO, "ingest: input file shrank while reading");
            goto out;
        }
        got += (size_t)r;
    }
out:
    close(fd);
    if (ret != 0) {
        wipe(buf, got);
        free(buf);
        return ret;
    }
    *out = buf;
    *out_len = size;
    return 0;
}

int plait_ingest_file(plait_store_t *st, const char *path, plait_ingest_format_t format,
                      size_t max_bytes, int64_t *n_added)
{
    if (n_added) *n_added = 0;
    if (!st || !path) return plait_fail(PLAIT_EINVAL, "ingest: NULL store or path");
    if (format != PLAIT_INGEST_TEXT && format != PLAIT_INGEST_JSONL)
        return plait_fail(PLAIT_EINVAL, "ingest: unknown format %d", (int)format);
    if (max_bytes == 0) max_bytes = PLAIT_INGEST_DEFAULT_MAX_FILE;
    char *buf = NULL;
    size_t len = 0;
    int ret = read_file(path, max_bytes, &buf, &len);
    if (ret != 0) return ret;
    file_ctx_t ctx = {st, 0};
    if ((ret = plait_store_begin(st)) != 0) goto out;
    ret = format == PLAIT_INGEST_TEXT ? plait_ingest_text(buf, len, add_cb, &ctx)
                                      : plait_ingest_jsonl(buf, len, add_cb, &ctx);
    if (ret != 0) {
        (void)plait_store_rollback(st);
        goto out;
    }
    if ((ret = plait_store_commit(st)) != 0) {
        (void)plait_store_rollback(st);
        goto out;
    }
    if (n_added) *n_added = ctx.n;
out:
    wipe(buf, len);
    free(buf);
    return ret;
}
