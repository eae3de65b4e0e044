/*
 * adapter.c: safetensors reading and writing, and the LoRA adapter file.
 *
 * Invariants:
 *  - Input is untrusted. The header length is bounded (PLAIT_ST_MAX_HEADER
 *    and the buffer) before anything is allocated; the JSON header is parsed
 *    by the strict, bounded plait_json reader (depth 3, strings <= 4 KiB,
 *    duplicate keys rejected) and then checked against the safetensors
 *    schema: a tensor has exactly dtype, shape and data_offsets, integers are
 *    non-negative and below 2^53, metadata values are strings.
 *  - After a successful parse, every tensor's byte range lies in the data
 *    section, has exactly dtype size x prod(shape) bytes (computed with
 *    overflow checks), and the ranges sorted by offset tile the data section
 *    with no hole and no overlap, as the format requires.
 *  - Tensor data may be unaligned: it is only ever read with memcpy. The host
 *    is little-endian (checked at compile time), like the format.
 *  - An adapter load either fully succeeds or leaves the adapter empty.
 *
 * Decisions: an adapter file with a tensor that the metadata's targets do
 * not call for is rejected (a file is exactly one adapter); non-finite values
 * are rejected (they would poison training and aggregation); grads are
 * dumped as F32, the precision the engine computes in.
 */
#include "plait/adapter.h"
#include "plait/crypto.h"
#include "plait/file.h"
#include "plait/json.h"
#include "plait/le.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <fcntl.h>

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "adapter.c assumes a little-endian host (safetensors is little-endian)"
#endif

#define ADAPTER_FORMAT "plait-lora"
#define MAX_JSON_DEPTH 3 /* root object > tensor object > shape array */
#define MAX_META 64      /* metadata entries accepted */
#define MAX_META_VALUE 4096

/* ------------------------------------------------------------- safetensors */

typedef struct {
    plait_st_tensor_t t;
    uint64_t begin, end;
} entry_t;

void plait_safetensors_init(plait_safetensors_t *st) { memset(st, 0, sizeof(*st)); }

void plait_safetensors_free(plait_safetensors_t *st)
{
    if (!st) return;
    for (size_t i = 0; i < st->n_tensors; i++) free(st->tensors[i].name);
    for (size_t i = 0; i < st->n_meta; i++) {
        free(st->meta[i].key);
        free(st->meta[i].value);
    }
    free(st->tensors);
    free(st->meta);
    free(st->owned);
    memset(st, 0, sizeof(*st));
}

static int dtype_parse(const char *s, plait_st_dtype_t *d, size_t *size)
{
    if (!s) return -1;
    if (strcmp(s, "F32") == 0) { *d = PLAIT_ST_F32; *size = 4; return 0; }
    if (strcmp(s, "F64") == 0) { *d = PLAIT_ST_F64; *size = 8; return 0; }
    if (strcmp(s, "I32") == 0) { *d = PLAIT_ST_I32; *size = 4; return 0; }
    return -1;
}

/* A JSON array of at most cap non-negative integers below 2^53. */
static int uint_array(const plait_json_t *arr, uint64_t *out, int cap, int *n, const char *tname, const char *field)
{
    if (plait_json_type(arr) != PLAIT_JSON_ARRAY)
        return plait_fail(PLAIT_EPROTO, "safetensors: tensor '%s' %s is not an array", tname, field);
    size_t len = plait_json_len(arr);
    if (len > (size_t)cap)
        return plait_fail(PLAIT_EPROTO, "safetensors: tensor '%s' %s array longer than %d", tname, field, cap);
    for (size_t i = 0; i < len; i++) {
        int64_t v;
        if (plait_json_int64(plait_json_at(arr, i), &v) != 0 || v < 0 || v >= ((int64_t)1 << 53))
            return plait_fail(PLAIT_EPROTO, "safetensors: tensor '%s' %s[%zu] is not a non-negative integer", tname,
                              field, i);
        out[i] = (uint64_t)v;
    }
    *n = (int)len;
    return 0;
}

/* {"dtype": ..., "shape": [...], "data_offsets": [b, e]} and nothing else. */
static int tensor_entry(const plait_json_t *obj, entry_t *e)
{
    const char *name = e->t.name;
    size_t dsize = 0;
    int rc, n;
    if (plait_json_type(obj) != PLAIT_JSON_OBJECT)
        return plait_fail(PLAIT_EPROTO, "safetensors: tensor '%s' is not an object", name);
    const plait_json_t *dt = plait_json_get(obj, "dtype"), *sh = plait_json_get(obj, "shape"),
                       *of = plait_json_get(obj, "data_offsets");
    if (!dt || !sh || !of)
        return plait_fail(PLAIT_EPROTO, "safetensors: tensor '%s' lacks dtype, shape or data_offsets", name);
    if (plait_json_len(obj) != 3) /* keys are unique, so a fourth one is unknown */
        return plait_fail(PLAIT_EPROTO, "safetensors: tensor '%s' has an unknown field", name);
    if (dtype_parse(plait_json_string(dt, NULL), &e->t.dtype, &dsize) != 0)
        return plait_fail(PLAIT_EPROTO, "safetensors: tensor '%s' has an unsupported dtype", name);
    if ((rc = uint_array(sh, e->t.shape, PLAIT_ST_MAX_DIMS, &e->t.ndim, name, "shape")) != 0) return rc;
    uint64_t off[2];
    if ((rc = uint_array(of, off, 2, &n, name, "data_offsets")) != 0) return rc;
    if (n != 2) return plait_fail(PLAIT_EPROTO, "safetensors: tensor '%s' data_offsets needs 2 values", name);
    e->begin = off[0];
    e->end = off[1];
    /* numel and byte size with overflow checks. */
    uint64_t numel = 1;
    for (int i = 0; i < e->t.ndim; i++) {
        if (e->t.shape[i] != 0 && numel > UINT64_MAX / e->t.shape[i])
            return plait_fail(PLAIT_EPROTO, "safetensors: tensor '%s' shape overflows", name);
        numel *= e->t.shape[i];
    }
    if (numel > UINT64_MAX / dsize || e->end < e->begin || e->end - e->begin != numel * dsize)
        return plait_fail(PLAIT_EPROTO, "safetensors: tensor '%s' data_offsets [%llu, %llu] do not match its shape",
                          name, (unsigned long long)e->begin, (unsigned long long)e->end);
    e->t.numel = numel;
    e->t.nbytes = (size_t)(numel * dsize);
    return 0;
}

/* "__metadata__": an object of string values. */
static int metadata(const plait_json_t *obj, plait_safetensors_t *st)
{
    if (plait_json_type(obj) != PLAIT_JSON_OBJECT)
        return plait_fail(PLAIT_EPROTO, "safetensors: __metadata__ is not an object");
    size_t n = plait_json_len(obj);
    if (n > MAX_META) return plait_fail(PLAIT_ETOOBIG, "safetensors: more than %d metadata entries", MAX_META);
    if (n == 0) return 0;
    st->meta = calloc(n, sizeof(*st->meta));
    if (!st->meta) return plait_fail(PLAIT_ENOMEM, "safetensors metadata");
    for (size_t i = 0; i < n; i++) {
        const char *k = plait_json_key_at(obj, i), *v = plait_json_string(plait_json_at(obj, i), NULL);
        if (!v) return plait_fail(PLAIT_EPROTO, "safetensors: metadata '%.64s' is not a string", k);
        if (strlen(k) > PLAIT_ST_MAX_NAME)
            return plait_fail(PLAIT_ETOOBIG, "safetensors: metadata key longer than %d bytes", PLAIT_ST_MAX_NAME);
        st->meta[i].key = strdup(k);
        st->meta[i].value = strdup(v);
        st->n_meta = i + 1;
        if (!st->meta[i].key || !st->meta[i].value) return plait_fail(PLAIT_ENOMEM, "safetensors metadata");
    }
    return 0;
}

static int cmp_entry_offset(const void *a, const void *b)
{
    const entry_t *x = a, *y = b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    return x->end < y->end ? -1 : x->end > y->end;
}

static int parse_image(plait_safetensors_t *st, const uint8_t *buf, size_t len)
{
    if (len < 8) return plait_fail(PLAIT_EPROTO, "safetensors: %zu bytes is shorter than the 8-byte header length", len);
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = (hlen << 8) | buf[i];
    if (hlen > PLAIT_ST_MAX_HEADER)
        return plait_fail(PLAIT_ETOOBIG, "safetensors: header length %llu exceeds %u", (unsigned long long)hlen,
                          PLAIT_ST_MAX_HEADER);
    if (hlen < 2 || hlen > len - 8)
        return plait_fail(PLAIT_EPROTO, "safetensors: header length %llu does not fit a %zu-byte file",
                          (unsigned long long)hlen, len);
    const uint8_t *data = buf + 8 + hlen;
    size_t data_len = len - 8 - (size_t)hlen;
    plait_json_limits_t lim;
    plait_json_limits_default(&lim);
    lim.max_depth = MAX_JSON_DEPTH;
    lim.max_string = MAX_META_VALUE;
    plait_json_t *root = NULL;
    entry_t *ents = NULL;
    size_t n = 0;
    int rc = plait_json_parse_ex((const char *)buf + 8, (size_t)hlen, &lim, &root);
    if (rc != 0) return rc == PLAIT_EINVAL ? PLAIT_EPROTO : rc; /* detail: "json: offset N: ..." */
    if (plait_json_type(root) != PLAIT_JSON_OBJECT) {
        rc = plait_fail(PLAIT_EPROTO, "safetensors: header is not a JSON object");
        goto out;
    }
    size_t members = plait_json_len(root);
    if (members > PLAIT_ST_MAX_TENSORS + 1) {
        rc = plait_fail(PLAIT_ETOOBIG, "safetensors: more than %d tensors", PLAIT_ST_MAX_TENSORS);
        goto out;
    }
    ents = calloc(members ? members : 1, sizeof(*ents));
    if (!ents) { rc = plait_fail(PLAIT_ENOMEM, "safetensors entries"); goto out; }
    for (size_t i = 0; i < members; i++) {
        const char *key = plait_json_key_at(root, i);
        const plait_json_t *val = plait_json_at(root, i);
        if (strcmp(key, "__metadata__") == 0) {
            if ((rc = metadata(val, st)) != 0) goto out;
            continue;
        }
        if (strlen(key) > PLAIT_ST_MAX_NAME) {
            rc = plait_fail(PLAIT_ETOOBIG, "safetensors: tensor name longer than %d bytes", PLAIT_ST_MAX_NAME);
            goto out;
        }
        ents[n].t.name = strdup(key);
        if (!ents[n].t.name) { rc = plait_fail(PLAIT_ENOMEM, "safetensors names"); goto out; }
        n++;
        if ((rc = tensor_entry(val, &ents[n - 1])) != 0) goto out;
    }
    /* Names are unique (the JSON reader rejects duplicate keys). Ranges must
     * tile the data section: sorted, contiguous, in bounds. */
    if (n > 1) qsort(ents, n, sizeof(*ents), cmp_entry_offset);
    uint64_t pos = 0;
    for (size_t i = 0; i < n; i++) {
        if (ents[i].begin != pos) {
            rc = plait_fail(PLAIT_EPROTO, "safetensors: tensor '%.64s' at offset %llu %s (expected %llu)",
                            ents[i].t.name, (unsigned long long)ents[i].begin,
                            ents[i].begin < pos ? "overlaps another" : "leaves a hole", (unsigned long long)pos);
            goto out;
        }
        pos = ents[i].end;
        if (pos > data_len) {
            rc = plait_fail(PLAIT_EPROTO, "safetensors: tensor '%.64s' ends at %llu past the %zu-byte data section",
                            ents[i].t.name, (unsigned long long)pos, data_len);
            goto out;
        }
    }
    if (pos != data_len) {
        rc = plait_fail(PLAIT_EPROTO, "safetensors: %llu bytes of data after the last tensor",
                        (unsigned long long)(data_len - pos));
        goto out;
    }
    st->tensors = calloc(n ? n : 1, sizeof(*st->tensors));
    if (!st->tensors) { rc = plait_fail(PLAIT_ENOMEM, "safetensors tensors"); goto out; }
    for (size_t i = 0; i < n; i++) {
        st->tensors[i] = ents[i].t;
        st->tensors[i].data = data + ents[i].begin;
        ents[i].t.name = NULL; /* moved */
    }
    st->n_tensors = n;
    rc = 0;
out:
    for (size_t i = 0; i < n; i++) free(ents[i].t.name);
    free(ents);
    plait_json_free(root);
    return rc;
}

int plait_safetensors_parse(plait_safetensors_t *st, const uint8_t *buf, size_t len)
{
    plait_safetensors_init(st);
    int rc = parse_image(st, buf, len);
    if (rc != 0) plait_safetensors_free(st);
    return rc;
}

/* Non-blocking, regular files only (a FIFO is refused), size-capped. */
static int read_file(const char *path, uint64_t max, uint8_t **out, size_t *len)
{
    int rc = plait_file_read(path, NULL, max > SIZE_MAX - 1 ? SIZE_MAX - 1 : (size_t)max, out, len);
    return rc == PLAIT_ENOENT ? plait_fail(PLAIT_EIO, "%s", plait_errmsg()) : rc; /* documented: EIO */
}

/* An adapter (and a gradient dump) is derived from the user's private data:
 * write it readable by its owner only (0600), and atomically, so a crash
 * leaves either the old file or the new one, never half of one. */
static int write_file(const char *path, const uint8_t *buf, size_t len)
{
    char tmp[4096];
    int n = snprintf(tmp, sizeof(tmp), "%s.tmp", path);
    if (n < 0 || (size_t)n >= sizeof(tmp)) return plait_fail(PLAIT_EINVAL, "%.64s...: path too long", path);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) return plait_fail(PLAIT_EIO, "%s: %s", tmp, strerror(errno));
    size_t off = 0;
    while (off < len) {
        ssize_t w = write(fd, buf + off, len - off);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) break;
        off += (size_t)w;
    }
    int ok = off == len && fsync(fd) == 0;
    if (close(fd) != 0) ok = 0;
    if (!ok || rename(tmp, path) != 0) {
        int e = errno;
        unlink(tmp);
        return plait_fail(PLAIT_EIO, "%s: write failed: %s", path, strerror(e));
    }
    return 0;
}

int plait_safetensors_read(plait_safetensors_t *st, const char *path)
{
    plait_safetensors_init(st);
    uint8_t *buf;
    size_t len = 0;
    int rc = read_file(path, PLAIT_ST_MAX_FILE, &buf, &len);
    if (rc != 0) return rc;
    rc = plait_safetensors_parse(st, buf, len);
    if (rc != 0) {
        free(buf);
        return rc;
    }
    st->owned = buf;
    return 0;
}

const plait_st_tensor_t *plait_safetensors_find(const plait_safetensors_t *st, const char *name)
{
    for (size_t i = 0; i < st->n_tensors; i++)
        if (strcmp(st->tensors[i].name, name) == 0) return &st->tensors[i];
    return NULL;
}

const char *plait_safetensors_meta(const plait_safetensors_t *st, const char *key)
{
    for (size_t i = 0; i < st->n_meta; i++)
        if (strcmp(st->meta[i].key, key) == 0) return st->meta[i].value;
    return NULL;
}

int plait_safetensors_get_f64(const plait_safetensors_t *st, const char *name, double *out, size_t n)
{
    const plait_st_tensor_t *t = plait_safetensors_find(st, name);
    if (!t) return plait_fail(PLAIT_ENOENT, "safetensors: no tensor '%s'", name);
    if (t->numel != n || t->dtype == PLAIT_ST_I32)
        return plait_fail(PLAIT_EMISMATCH, "safetensors: tensor '%s' has %llu elements of dtype %d, wanted %zu floats",
                          name, (unsigned long long)t->numel, (int)t->dtype, n);
    for (size_t i = 0; i < n; i++) {
        if (t->dtype == PLAIT_ST_F64) {
            memcpy(&out[i], t->data + 8 * i, 8);
        } else {
            float f;
            memcpy(&f, t->data + 4 * i, 4);
            out[i] = f;
        }
    }
    return 0;
}

/* ------------------------------------------------------------- writer */

typedef struct {
    char *p;
    size_t n, cap;
    int oom;
} sbuf_t;

static void sb_putf(sbuf_t *s, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;

#include <stdarg.h>
static void sb_putf(sbuf_t *s, const char *fmt, ...)
{
    if (s->oom) return;
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int k = vsnprintf(s->p ? s->p + s->n : NULL, s->p ? s->cap - s->n : 0, fmt, ap);
        va_end(ap);
        if (k < 0) { s->oom = 1; return; }
        if (s->p && s->n + (size_t)k < s->cap) { s->n += (size_t)k; return; }
        size_t nc = (s->cap ? s->cap * 2 : 1024) + (size_t)k;
        char *np = realloc(s->p, nc);
        if (!np) { s->oom = 1; return; }
        s->p = np;
        s->cap = nc;
    }
}

/* Names and values we write are plain ASCII without quotes or backslashes. */
static int json_safe(const char *s)
{
    for (; *s; s++)
        if ((unsigned char)*s < 0x20 || *s == '"' || *s == '\\' || (unsigned char)*s >= 0x7f) return 0;
    return 1;
}

int plait_safetensors_write_mem(const plait_st_out_t *t, size_t n, const plait_st_meta_t *meta, size_t n_meta,
                                uint8_t **out, size_t *len)
{
    *out = NULL;
    *len = 0;
    sbuf_t s = {0};
    uint64_t off = 0;
    sb_putf(&s, "{");
    for (size_t i = 0; i < n; i++) {
        if (!json_safe(t[i].name) || t[i].ndim < 0 || t[i].ndim > PLAIT_ST_MAX_DIMS) {
            free(s.p);
            return plait_fail(PLAIT_EINVAL, "safetensors write: bad name or rank for tensor %zu", i);
        }
        uint64_t numel = 1;
        sb_putf(&s, "%s\"%s\":{\"dtype\":\"F32\",\"shape\":[", i ? "," : "", t[i].name);
        for (int d = 0; d < t[i].ndim; d++) {
            sb_putf(&s, "%s%llu", d ? "," : "", (unsigned long long)t[i].shape[d]);
            numel *= t[i].shape[d];
        }
        sb_putf(&s, "],\"data_offsets\":[%llu,%llu]}", (unsigned long long)off, (unsigned long long)(off + 4 * numel));
        off += 4 * numel;
    }
    if (n_meta) {
        sb_putf(&s, "%s\"__metadata__\":{", n ? "," : "");
        for (size_t i = 0; i < n_meta; i++) {
            if (!json_safe(meta[i].key) || !json_safe(meta[i].value)) {
                free(s.p);
                return plait_fail(PLAIT_EINVAL, "safetensors write: metadata entry %zu is not plain ASCII", i);
            }
            sb_putf(&s, "%s\"%s\":\"%s\"", i ? "," : "", meta[i].key, meta[i].value);
        }
        sb_putf(&s, "}");
    }
    sb_putf(&s, "}");
    while (!s.oom && s.n % 8 != 0) sb_putf(&s, " "); /* align the data section to 8 bytes */
    if (s.oom) {
        free(s.p);
        return plait_fail(PLAIT_ENOMEM, "safetensors header");
    }
    size_t total = 8 + s.n + (size_t)off;
    uint8_t *buf = malloc(total);
    if (!buf) {
        free(s.p);
        return plait_fail(PLAIT_ENOMEM, "safetensors image of %zu bytes", total);
    }
    uint64_t hl = s.n;
    plait_put_le64(buf, hl);
    memcpy(buf + 8, s.p, s.n);
    free(s.p);
    uint8_t *d = buf + 8 + hl;
    for (size_t i = 0; i < n; i++) {
        uint64_t numel = 1;
        for (int k = 0; k < t[i].ndim; k++) numel *= t[i].shape[k];
        if (numel) memcpy(d, t[i].data, (size_t)numel * 4);
        d += numel * 4;
    }
    *out = buf;
    *len = total;
    return 0;
}

/* ------------------------------------------------------------- adapters */

void plait_adapter_tensor_name(char *buf, size_t len, int layer, plait_proj_t p, int is_b)
{
    snprintf(buf, len, "layers.%d.%s.lora_%c", layer, plait_proj_name(p), is_b ? 'B' : 'A');
}

/* Every adapted (layer, projection) as two plait_st_out_t; names in `names`. */
static int adapter_tensors(const plait_lora_t *l, const float *base, size_t goff, plait_st_out_t **out, char **names,
                           size_t *n_out)
{
    size_t L = (size_t)l->model.n_layers, n = 0, R = (size_t)l->cfg.rank;
    plait_st_out_t *t = calloc(2 * L * PLAIT_NPROJ + 1, sizeof(*t));
    char *nm = calloc(2 * L * PLAIT_NPROJ + 1, 64);
    if (!t || !nm) {
        free(t);
        free(nm);
        return plait_fail(PLAIT_ENOMEM, "adapter tensor list");
    }
    for (size_t layer = 0; layer < L; layer++) {
        for (int p = 0; p < PLAIT_NPROJ; p++) {
            size_t slot = plait_lora_slot((int)layer, (plait_proj_t)p);
            if (!l->A[slot]) continue;
            int in, o;
            plait_proj_shape(&l->model, (plait_proj_t)p, &in, &o);
            for (int is_b = 0; is_b < 2; is_b++) {
                const float *param = is_b ? l->B[slot] : l->A[slot];
                size_t idx = (size_t)(param - l->params);
                if (idx < goff) continue; /* no gradient for this tensor */
                char *name = nm + 64 * n;
                plait_adapter_tensor_name(name, 64, (int)layer, (plait_proj_t)p, is_b);
                t[n].name = name;
                t[n].ndim = 2;
                t[n].shape[0] = is_b ? (uint64_t)o : R;
                t[n].shape[1] = is_b ? R : (uint64_t)in;
                t[n].data = base + (idx - goff);
                n++;
            }
        }
    }
    *out = t;
    *names = nm;
    *n_out = n;
    return 0;
}

int plait_adapter_save_mem(const plait_lora_t *l, const uint8_t base_sha256[32], uint8_t **out, size_t *len)
{
    plait_st_out_t *t;
    char *names;
    size_t n;
    /* The loader refuses non-finite values, so writing one would produce a
     * file no device accepts (a diverged trainer can hold NaN): refuse here. */
    for (size_t i = 0; i < l->n_params; i++)
        if (!isfinite(l->params[i]))
            return plait_fail(PLAIT_EINVAL, "adapter: parameter %zu of %zu is not finite; not saving", i, l->n_params);
    int rc = adapter_tensors(l, l->params, 0, &t, &names, &n);
    if (rc != 0) return rc;
    char rank[16], alpha[32], targets[64], hex[65];
    snprintf(rank, sizeof(rank), "%d", l->cfg.rank);
    snprintf(alpha, sizeof(alpha), "%.9g", (double)l->cfg.alpha);
    plait_lora_format_targets(l->cfg.targets, targets, sizeof(targets));
    plait_hex(base_sha256, 32, hex);
    plait_st_meta_t meta[] = {{"format", ADAPTER_FORMAT}, {"rank", rank}, {"alpha", alpha},
                              {"targets", targets}, {"base_sha256", hex}};
    rc = plait_safetensors_write_mem(t, n, meta, sizeof(meta) / sizeof(meta[0]), out, len);
    free(t);
    free(names);
    return rc;
}

int plait_adapter_save(const char *path, const plait_lora_t *l, const uint8_t base_sha256[32])
{
    uint8_t *buf;
    size_t len;
    int rc = plait_adapter_save_mem(l, base_sha256, &buf, &len);
    if (rc != 0) return rc;
    rc = write_file(path, buf, len);
    free(buf);
    return rc;
}


/* "layers.<L>.<proj>.lora_<A|B>" with L decimal (at most 6 digits, so it
 * cannot overflow), proj one of wq..w3. Written by hand: sscanf's %d has
 * undefined behaviour on overflow, and names come from untrusted files. */
static int parse_tensor_name(const char *name, int *layer, plait_proj_t *p, char *ab)
{
    static const char pre[] = "layers.";
    if (strncmp(name, pre, sizeof(pre) - 1) != 0) return -1;
    const char *c = name + sizeof(pre) - 1;
    int v = 0, digits = 0;
    while (*c >= '0' && *c <= '9' && digits < 7) {
        v = v * 10 + (*c++ - '0');
        digits++;
    }
    if (digits == 0 || digits > 6 || *c++ != '.') return -1;
    if (c[0] == '\0' || c[1] == '\0' || plait_proj_parse(c, 2, p) != 0) return -1;
    c += 2;
    static const char mid[] = ".lora_";
    if (strncmp(c, mid, sizeof(mid) - 1) != 0) return -1;
    c += sizeof(mid) - 1;
    if ((*c != 'A' && *c != 'B') || c[1] != '\0') return -1;
    *ab = *c;
    *layer = v;
    return 0;
}

int plait_adapter_save_grads(const char *path, const plait_lora_t *l, const float *grads, size_t goff, size_t n,
                             float loss)
{
    if (!l->params || (goff != 0 && goff != l->n_a) || n != l->n_params - goff)
        return plait_fail(PLAIT_EINVAL, "adapter grads: span (offset %zu, %zu floats) does not match the adapter", goff, n);
    plait_st_out_t *t;
    char *names;
    size_t nt;
    int rc = adapter_tensors(l, grads, goff, &t, &names, &nt);
    if (rc != 0) return rc;
    /* "loss" first, then the gradients: shift the list by one. */
    memmove(t + 1, t, nt * sizeof(*t));
    t[0] = (plait_st_out_t){.name = "loss", .ndim = 1, .shape = {1}, .data = &loss};
    uint8_t *buf;
    size_t len;
    plait_st_meta_t meta[] = {{"format", "plait-lora-grads"}};
    rc = plait_safetensors_write_mem(t, nt + 1, meta, 1, &buf, &len);
    free(t);
    free(names);
    if (rc != 0) return rc;
    rc = write_file(path, buf, len);
    free(buf);
    return rc;
}

/* Metadata value that must be present. */
static int need_meta(const plait_safetensors_t *st, const char *key, const char **out)
{
    *out = plait_safetensors_meta(st, key);
    if (!*out) return plait_fail(PLAIT_EPROTO, "adapter: metadata '%s' is missing", key);
    return 0;
}

static int adapter_from_st(plait_lora_t *l, const plait_safetensors_t *st, const plait_model_t *m, unsigned flags)
{
    const char *fmt, *rank_s, *alpha_s, *targets_s, *hash_s;
    int rc;
    if ((rc = need_meta(st, "format", &fmt)) != 0 || (rc = need_meta(st, "rank", &rank_s)) != 0 ||
        (rc = need_meta(st, "alpha", &alpha_s)) != 0 || (rc = need_meta(st, "targets", &targets_s)) != 0 ||
        (rc = need_meta(st, "base_sha256", &hash_s)) != 0)
        return rc;
    if (strcmp(fmt, ADAPTER_FORMAT) != 0)
        return plait_fail(PLAIT_EPROTO, "adapter: format '%.32s' is not '%s'", fmt, ADAPTER_FORMAT);
    plait_lora_config_t cfg;
    char *end;
    errno = 0;
    long rank = strtol(rank_s, &end, 10);
    if (errno || end == rank_s || *end || rank < 1 || rank > PLAIT_LORA_MAX_RANK)
        return plait_fail(PLAIT_EPROTO, "adapter: rank '%.32s' is not an integer in 1..%d", rank_s, PLAIT_LORA_MAX_RANK);
    errno = 0;
    double alpha = strtod(alpha_s, &end);
    if (errno || end == alpha_s || *end || !isfinite(alpha) || !(alpha > 0.0) || alpha > 1e6)
        return plait_fail(PLAIT_EPROTO, "adapter: alpha '%.32s' is not a positive number", alpha_s);
    cfg.rank = (int)rank;
    cfg.alpha = (float)alpha;
    if (plait_lora_parse_targets(targets_s, &cfg.targets) != 0)
        return plait_fail(PLAIT_EPROTO, "adapter: targets '%.64s' is not a list of wq,wk,wv,wo,w1,w2,w3", targets_s);
    uint8_t hash[32];
    if (strlen(hash_s) != 64 || plait_unhex(hash_s, hash, 32) != 0)
        return plait_fail(PLAIT_EPROTO, "adapter: base_sha256 is not 64 hex digits");
    if (!(flags & PLAIT_ADAPTER_IGNORE_BASE) && memcmp(hash, m->sha256, 32) != 0) {
        char mine[65];
        plait_hex(m->sha256, 32, mine);
        return plait_fail(PLAIT_EMISMATCH, "adapter: trained for base model %.16s..., this model is %.16s...", hash_s,
                          mine);
    }
    /* Every tensor in the file must be one this configuration calls for. */
    for (size_t i = 0; i < st->n_tensors; i++) {
        const char *name = st->tensors[i].name;
        int layer;
        char ab;
        plait_proj_t p;
        if (parse_tensor_name(name, &layer, &p, &ab) != 0 || layer >= m->cfg.n_layers || !(cfg.targets & (1u << p)))
            return plait_fail(PLAIT_EPROTO, "adapter: unexpected tensor '%.64s' for targets %s and %d layers", name,
                              targets_s, m->cfg.n_layers);
        char canon[64];
        plait_adapter_tensor_name(canon, sizeof(canon), layer, p, ab == 'B');
        if (strcmp(canon, name) != 0) /* "layers.01..." and the like */
            return plait_fail(PLAIT_EPROTO, "adapter: tensor name '%.64s' is not canonical", name);
    }
    if ((rc = plait_lora_setup(l, &m->cfg, &cfg)) != 0) return rc == PLAIT_EINVAL ? PLAIT_EPROTO : rc;
    size_t R = (size_t)cfg.rank;
    for (int layer = 0; layer < m->cfg.n_layers; layer++) {
        for (int p = 0; p < PLAIT_NPROJ; p++) {
            size_t slot = plait_lora_slot(layer, (plait_proj_t)p);
            if (!l->A[slot]) continue;
            int in, o;
            plait_proj_shape(&m->cfg, (plait_proj_t)p, &in, &o);
            for (int is_b = 0; is_b < 2; is_b++) {
                char name[64];
                plait_adapter_tensor_name(name, sizeof(name), layer, (plait_proj_t)p, is_b);
                const plait_st_tensor_t *t = plait_safetensors_find(st, name);
                uint64_t r0 = is_b ? (uint64_t)o : R, r1 = is_b ? R : (uint64_t)in;
                if (!t) { rc = plait_fail(PLAIT_EPROTO, "adapter: tensor '%s' is missing", name); goto fail; }
                if (t->dtype != PLAIT_ST_F32) {
                    rc = plait_fail(PLAIT_EPROTO, "adapter: tensor '%s' is not F32", name);
                    goto fail;
                }
                if (t->ndim != 2 || t->shape[0] != r0 || t->shape[1] != r1) {
                    rc = plait_fail(PLAIT_EPROTO, "adapter: tensor '%s' has the wrong shape (expected [%llu, %llu])",
                                    name, (unsigned long long)r0, (unsigned long long)r1);
                    goto fail;
                }
                float *dst = is_b ? l->B[slot] : l->A[slot];
                memcpy(dst, t->data, t->nbytes);
                for (size_t i = 0; i < t->numel; i++)
                    if (!isfinite(dst[i])) {
                        rc = plait_fail(PLAIT_EPROTO, "adapter: tensor '%s' element %zu is not finite", name, i);
                        goto fail;
                    }
            }
        }
    }
    return 0;
fail:
    plait_lora_free(l);
    return rc;
}

int plait_adapter_load_mem(plait_lora_t *l, const uint8_t *buf, size_t len, const plait_model_t *m, unsigned flags)
{
    if (!l || !m || (!buf && len)) return plait_fail(PLAIT_EINVAL, "adapter load: NULL argument");
    plait_lora_init(l);
    plait_safetensors_t st;
    int rc = plait_safetensors_parse(&st, buf ? buf : (const uint8_t *)"", len);
    if (rc != 0) return rc;
    rc = adapter_from_st(l, &st, m, flags);
    plait_safetensors_free(&st);
    return rc;
}

int plait_adapter_load(plait_lora_t *l, const char *path, const plait_model_t *m, unsigned flags)
{
    uint8_t *buf;
    size_t len = 0;
    if (!l || !m) return plait_fail(PLAIT_EINVAL, "adapter load: NULL adapter or model");
    plait_lora_init(l);
    /* No adapter of m is larger than rank PLAIT_LORA_MAX_RANK on every
     * projection plus the largest header: refuse a bigger file before
     * reading it into memory (the generic cap is 16 GiB). */
    uint64_t per_rank = 0;
    for (int p = 0; p < PLAIT_NPROJ; p++) {
        int in, o;
        plait_proj_shape(&m->cfg, (plait_proj_t)p, &in, &o);
        per_rank += (uint64_t)in + (uint64_t)o;
    }
    uint64_t max = 8 + (uint64_t)PLAIT_ST_MAX_HEADER +
                   4 * (uint64_t)m->cfg.n_layers * PLAIT_LORA_MAX_RANK * per_rank;
    if (max > PLAIT_ST_MAX_FILE) max = PLAIT_ST_MAX_FILE;
    int rc = read_file(path, max, &buf, &len);
    if (rc != 0) return rc;
    rc = plait_adapter_load_mem(l, buf, len, m, flags);
    free(buf);
    return rc;
}
