/*
 * adapter.c: safetensors reading and writing, and the LoRA adapter file.
 *
 * Invariants:
 *  - Input is untrusted. The header length is bounded (PLAIT_ST_MAX_HEADER
 *    and the buffer) before anything is allocated; the JSON header is parsed
 *    by a strict recursive-descent parser for the safetensors schema (objects,
 *    arrays, strings with escapes, non-negative integers; anything else is
 *    PLAIT_EPROTO, as are duplicate keys and unknown fields of a tensor).
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

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "adapter.c assumes a little-endian host (safetensors is little-endian)"
#endif

#define ADAPTER_FORMAT "plait-lora"
#define MAX_JSON_DEPTH 4 /* the schema nests objects 2 deep and arrays 3 */
#define MAX_META 64      /* metadata entries accepted */
#define MAX_META_VALUE 4096

/* ------------------------------------------------------------- JSON lexer */

typedef struct {
    const char *p, *end, *start;
} lex_t;

static void skip_ws(lex_t *x)
{
    while (x->p < x->end && (*x->p == ' ' || *x->p == '\t' || *x->p == '\n' || *x->p == '\r')) x->p++;
}

static int peek(lex_t *x)
{
    skip_ws(x);
    return x->p < x->end ? (unsigned char)*x->p : -1;
}

static int expect(lex_t *x, char c)
{
    if (peek(x) != (unsigned char)c)
        return plait_fail(PLAIT_EPROTO, "safetensors header: expected '%c' at byte %zu", c,
                          (size_t)(x->p - x->start));
    x->p++;
    return 0;
}

static int hexval(int c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

static int read_u4(lex_t *x, unsigned *v)
{
    if (x->end - x->p < 4) return -1;
    unsigned r = 0;
    for (int i = 0; i < 4; i++) {
        int h = hexval((unsigned char)x->p[i]);
        if (h < 0) return -1;
        r = r * 16 + (unsigned)h;
    }
    x->p += 4;
    *v = r;
    return 0;
}

/* A JSON string into a fresh malloc'd NUL-terminated buffer of at most cap
 * bytes (escapes decoded; \u0000 and unpaired surrogates rejected). */
static int parse_string(lex_t *x, char **out, size_t cap)
{
    *out = NULL;
    if (peek(x) != '"') return plait_fail(PLAIT_EPROTO, "safetensors header: expected a string");
    x->p++;
    const char *s = x->p;
    while (s < x->end && *s != '"') { /* bound the output: decoded <= raw length */
        if (*s == '\\' && x->end - s < 2) break;
        s += *s == '\\' ? 2 : 1;
    }
    if (s >= x->end || *s != '"') return plait_fail(PLAIT_EPROTO, "safetensors header: unterminated string");
    size_t need = (size_t)(s - x->p);
    if (need > cap) return plait_fail(PLAIT_ETOOBIG, "safetensors header: string of %zu bytes exceeds %zu", need, cap);
    char *buf = malloc(need + 1);
    if (!buf) return plait_fail(PLAIT_ENOMEM, "safetensors header string");
    size_t n = 0;
    while (*x->p != '"') {
        unsigned char c = (unsigned char)*x->p++;
        if (c < 0x20) goto bad;
        if (c != '\\') { buf[n++] = (char)c; continue; }
        c = (unsigned char)*x->p++;
        switch (c) {
        case '"': buf[n++] = '"'; break;
        case '\\': buf[n++] = '\\'; break;
        case '/': buf[n++] = '/'; break;
        case 'b': buf[n++] = '\b'; break;
        case 'f': buf[n++] = '\f'; break;
        case 'n': buf[n++] = '\n'; break;
        case 'r': buf[n++] = '\r'; break;
        case 't': buf[n++] = '\t'; break;
        case 'u': {
            unsigned cp;
            if (read_u4(x, &cp) != 0 || cp == 0) goto bad;
            if (cp >= 0xD800 && cp < 0xDC00) {
                unsigned lo;
                if (x->end - x->p < 6 || x->p[0] != '\\' || x->p[1] != 'u') goto bad;
                x->p += 2;
                if (read_u4(x, &lo) != 0 || lo < 0xDC00 || lo >= 0xE000) goto bad;
                cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
            } else if (cp >= 0xDC00 && cp < 0xE000) {
                goto bad;
            }
            /* \uXXXX is 6 input bytes and at most 3 output bytes; a pair is 12 and 4. */
            if (cp < 0x80) {
                buf[n++] = (char)cp;
            } else if (cp < 0x800) {
                buf[n++] = (char)(0xC0 | (cp >> 6));
                buf[n++] = (char)(0x80 | (cp & 0x3F));
            } else if (cp < 0x10000) {
                buf[n++] = (char)(0xE0 | (cp >> 12));
                buf[n++] = (char)(0x80 | ((cp >> 6) & 0x3F));
                buf[n++] = (char)(0x80 | (cp & 0x3F));
            } else {
                buf[n++] = (char)(0xF0 | (cp >> 18));
                buf[n++] = (char)(0x80 | ((cp >> 12) & 0x3F));
                buf[n++] = (char)(0x80 | ((cp >> 6) & 0x3F));
                buf[n++] = (char)(0x80 | (cp & 0x3F));
            }
            break;
        }
        default: goto bad;
        }
    }
    x->p++; /* closing quote */
    buf[n] = '\0';
    *out = buf;
    return 0;
bad:
    free(buf);
    return plait_fail(PLAIT_EPROTO, "safetensors header: bad string (control character or escape)");
}

/* A non-negative JSON integer below 2^53 (no sign, fraction or exponent). */
static int parse_uint(lex_t *x, uint64_t *v)
{
    int c = peek(x);
    if (c < '0' || c > '9') return plait_fail(PLAIT_EPROTO, "safetensors header: expected a non-negative integer");
    if (c == '0' && x->p + 1 < x->end && x->p[1] >= '0' && x->p[1] <= '9')
        return plait_fail(PLAIT_EPROTO, "safetensors header: integer with a leading zero");
    uint64_t r = 0;
    while (x->p < x->end && *x->p >= '0' && *x->p <= '9') {
        r = r * 10 + (uint64_t)(*x->p - '0');
        if (r >= ((uint64_t)1 << 53)) return plait_fail(PLAIT_EPROTO, "safetensors header: integer too large");
        x->p++;
    }
    if (x->p < x->end && (*x->p == '.' || *x->p == 'e' || *x->p == 'E'))
        return plait_fail(PLAIT_EPROTO, "safetensors header: expected an integer, got a fraction or exponent");
    *v = r;
    return 0;
}

/* [u, u, ...] into out (at most cap values). */
static int parse_uint_array(lex_t *x, uint64_t *out, int cap, int *n)
{
    int rc;
    *n = 0;
    if ((rc = expect(x, '[')) != 0) return rc;
    if (peek(x) == ']') { x->p++; return 0; }
    for (;;) {
        if (*n >= cap) return plait_fail(PLAIT_EPROTO, "safetensors header: array longer than %d", cap);
        if ((rc = parse_uint(x, &out[*n])) != 0) return rc;
        (*n)++;
        int c = peek(x);
        if (c == ',') { x->p++; continue; }
        if (c == ']') { x->p++; return 0; }
        return plait_fail(PLAIT_EPROTO, "safetensors header: expected ',' or ']' in an array");
    }
}

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
    if (strcmp(s, "F32") == 0) { *d = PLAIT_ST_F32; *size = 4; return 0; }
    if (strcmp(s, "F64") == 0) { *d = PLAIT_ST_F64; *size = 8; return 0; }
    if (strcmp(s, "I32") == 0) { *d = PLAIT_ST_I32; *size = 4; return 0; }
    return -1;
}

/* {"dtype": ..., "shape": [...], "data_offsets": [b, e]} */
static int parse_tensor_obj(lex_t *x, entry_t *e)
{
    int rc, seen_dtype = 0, seen_shape = 0, seen_off = 0;
    char *key = NULL, *dt = NULL;
    size_t dsize = 0;
    if ((rc = expect(x, '{')) != 0) return rc;
    if (peek(x) != '}') {
        for (;;) {
            if ((rc = parse_string(x, &key, PLAIT_ST_MAX_NAME)) != 0) goto out;
            if ((rc = expect(x, ':')) != 0) goto out;
            if (strcmp(key, "dtype") == 0 && !seen_dtype) {
                seen_dtype = 1;
                if ((rc = parse_string(x, &dt, 16)) != 0) goto out;
                if (dtype_parse(dt, &e->t.dtype, &dsize) != 0) {
                    rc = plait_fail(PLAIT_EPROTO, "safetensors: tensor '%s' has unsupported dtype '%s'", e->t.name, dt);
                    goto out;
                }
            } else if (strcmp(key, "shape") == 0 && !seen_shape) {
                seen_shape = 1;
                if ((rc = parse_uint_array(x, e->t.shape, PLAIT_ST_MAX_DIMS, &e->t.ndim)) != 0) goto out;
            } else if (strcmp(key, "data_offsets") == 0 && !seen_off) {
                seen_off = 1;
                uint64_t off[2];
                int n;
                if ((rc = parse_uint_array(x, off, 2, &n)) != 0) goto out;
                if (n != 2) {
                    rc = plait_fail(PLAIT_EPROTO, "safetensors: tensor '%s' data_offsets needs 2 values", e->t.name);
                    goto out;
                }
                e->begin = off[0];
                e->end = off[1];
            } else {
                rc = plait_fail(PLAIT_EPROTO, "safetensors: tensor '%s' has an unknown or repeated field '%.32s'",
                                e->t.name, key);
                goto out;
            }
            free(key);
            key = NULL;
            int c = peek(x);
            if (c == ',') { x->p++; continue; }
            if (c == '}') break;
            rc = plait_fail(PLAIT_EPROTO, "safetensors header: expected ',' or '}' in tensor '%s'", e->t.name);
            goto out;
        }
    }
    x->p++;
    if (!seen_dtype || !seen_shape || !seen_off) {
        rc = plait_fail(PLAIT_EPROTO, "safetensors: tensor '%s' lacks dtype, shape or data_offsets", e->t.name);
        goto out;
    }
    /* numel and byte size with overflow checks. */
    uint64_t numel = 1;
    for (int i = 0; i < e->t.ndim; i++) {
        if (e->t.shape[i] != 0 && numel > UINT64_MAX / e->t.shape[i]) {
            rc = plait_fail(PLAIT_EPROTO, "safetensors: tensor '%s' shape overflows", e->t.name);
            goto out;
        }
        numel *= e->t.shape[i];
    }
    if (numel > UINT64_MAX / dsize || e->end < e->begin || e->end - e->begin != numel * dsize) {
        rc = plait_fail(PLAIT_EPROTO, "safetensors: tensor '%s' data_offsets [%llu, %llu] do not match its shape",
                        e->t.name, (unsigned long long)e->begin, (unsigned long long)e->end);
        goto out;
    }
    e->t.numel = numel;
    e->t.nbytes = (size_t)(numel * dsize);
    rc = 0;
out:
    free(key);
    free(dt);
    return rc;
}

static int parse_metadata(lex_t *x, plait_safetensors_t *st)
{
    int rc;
    if ((rc = expect(x, '{')) != 0) return rc;
    if (peek(x) == '}') { x->p++; return 0; }
    st->meta = calloc(MAX_META, sizeof(*st->meta));
    if (!st->meta) return plait_fail(PLAIT_ENOMEM, "safetensors metadata");
    for (;;) {
        if (st->n_meta >= MAX_META) return plait_fail(PLAIT_ETOOBIG, "safetensors: more than %d metadata entries", MAX_META);
        plait_st_meta_t *kv = &st->meta[st->n_meta];
        if ((rc = parse_string(x, &kv->key, PLAIT_ST_MAX_NAME)) != 0) return rc;
        st->n_meta++;
        if ((rc = expect(x, ':')) != 0) return rc;
        if ((rc = parse_string(x, &kv->value, MAX_META_VALUE)) != 0) return rc;
        for (size_t i = 0; i + 1 < st->n_meta; i++)
            if (strcmp(st->meta[i].key, kv->key) == 0)
                return plait_fail(PLAIT_EPROTO, "safetensors: metadata key '%.64s' repeated", kv->key);
        int c = peek(x);
        if (c == ',') { x->p++; continue; }
        if (c == '}') { x->p++; return 0; }
        return plait_fail(PLAIT_EPROTO, "safetensors header: expected ',' or '}' in __metadata__");
    }
}

static int cmp_entry_offset(const void *a, const void *b)
{
    const entry_t *x = a, *y = b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    return x->end < y->end ? -1 : x->end > y->end;
}

static int cmp_name_ptr(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
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
    lex_t x = {(const char *)buf + 8, (const char *)buf + 8 + hlen, (const char *)buf + 8};
    entry_t *ents = NULL;
    size_t n = 0, cap = 0;
    char *key = NULL;
    char **names = NULL;
    int rc, seen_meta = 0;
    if ((rc = expect(&x, '{')) != 0) goto out;
    if (peek(&x) == '}') {
        x.p++;
    } else {
        for (;;) {
            if ((rc = parse_string(&x, &key, PLAIT_ST_MAX_NAME)) != 0) goto out;
            if ((rc = expect(&x, ':')) != 0) goto out;
            if (strcmp(key, "__metadata__") == 0) {
                if (seen_meta) { rc = plait_fail(PLAIT_EPROTO, "safetensors: __metadata__ repeated"); goto out; }
                seen_meta = 1;
                free(key);
                key = NULL;
                if ((rc = parse_metadata(&x, st)) != 0) goto out;
            } else {
                if (n == cap) {
                    if (n >= PLAIT_ST_MAX_TENSORS) {
                        rc = plait_fail(PLAIT_ETOOBIG, "safetensors: more than %d tensors", PLAIT_ST_MAX_TENSORS);
                        goto out;
                    }
                    size_t nc = cap ? cap * 2 : 16;
                    entry_t *ne = realloc(ents, nc * sizeof(*ne));
                    if (!ne) { rc = plait_fail(PLAIT_ENOMEM, "safetensors entries"); goto out; }
                    ents = ne;
                    cap = nc;
                }
                memset(&ents[n], 0, sizeof(ents[n]));
                ents[n].t.name = key;
                key = NULL;
                n++;
                if ((rc = parse_tensor_obj(&x, &ents[n - 1])) != 0) goto out;
            }
            int c = peek(&x);
            if (c == ',') { x.p++; continue; }
            if (c == '}') { x.p++; break; }
            rc = plait_fail(PLAIT_EPROTO, "safetensors header: expected ',' or '}' at the top level");
            goto out;
        }
    }
    skip_ws(&x);
    if (x.p != x.end) { rc = plait_fail(PLAIT_EPROTO, "safetensors header: trailing bytes after the JSON object"); goto out; }
    /* Unique names. */
    if (n > 1) {
        names = malloc(n * sizeof(*names));
        if (!names) { rc = plait_fail(PLAIT_ENOMEM, "safetensors names"); goto out; }
        for (size_t i = 0; i < n; i++) names[i] = ents[i].t.name;
        qsort(names, n, sizeof(*names), cmp_name_ptr);
        for (size_t i = 1; i < n; i++)
            if (strcmp(names[i - 1], names[i]) == 0) {
                rc = plait_fail(PLAIT_EPROTO, "safetensors: tensor '%.64s' appears twice", names[i]);
                goto out;
            }
    }
    /* Ranges tile the data section: sorted, contiguous, in bounds. */
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
    free(names);
    free(key);
    return rc;
}

int plait_safetensors_parse(plait_safetensors_t *st, const uint8_t *buf, size_t len)
{
    plait_safetensors_init(st);
    int rc = parse_image(st, buf, len);
    if (rc != 0) plait_safetensors_free(st);
    return rc;
}

static int read_file(const char *path, uint8_t **out, size_t *len)
{
    *out = NULL;
    FILE *f = fopen(path, "rb");
    if (!f) return plait_fail(PLAIT_EIO, "%s: %s", path, strerror(errno));
    int rc = 0;
    long sz;
    if (fseek(f, 0, SEEK_END) != 0 || (sz = ftell(f)) < 0 || fseek(f, 0, SEEK_SET) != 0) {
        rc = plait_fail(PLAIT_EIO, "%s: cannot size the file", path);
    } else if ((unsigned long)sz > PLAIT_ST_MAX_FILE) {
        rc = plait_fail(PLAIT_ETOOBIG, "%s: %ld bytes is too large", path, sz);
    } else {
        uint8_t *buf = malloc(sz ? (size_t)sz : 1);
        if (!buf) {
            rc = plait_fail(PLAIT_ENOMEM, "%s: %ld bytes", path, sz);
        } else if (fread(buf, 1, (size_t)sz, f) != (size_t)sz) {
            free(buf);
            rc = plait_fail(PLAIT_EIO, "%s: short read", path);
        } else {
            *out = buf;
            *len = (size_t)sz;
        }
    }
    fclose(f);
    return rc;
}

static int write_file(const char *path, const uint8_t *buf, size_t len)
{
    FILE *f = fopen(path, "wb");
    if (!f) return plait_fail(PLAIT_EIO, "%s: %s", path, strerror(errno));
    size_t w = fwrite(buf, 1, len, f);
    int rc = fclose(f);
    if (w != len || rc != 0) return plait_fail(PLAIT_EIO, "%s: write failed", path);
    return 0;
}

int plait_safetensors_read(plait_safetensors_t *st, const char *path)
{
    plait_safetensors_init(st);
    uint8_t *buf;
    size_t len = 0;
    int rc = read_file(path, &buf, &len);
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
    for (int i = 0; i < 8; i++) buf[i] = (uint8_t)(hl >> (8 * i));
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
        int layer, consumed = 0;
        char proj[3], ab;
        plait_proj_t p;
        if (sscanf(name, "layers.%d.%2[a-z0-9].lora_%c%n", &layer, proj, &ab, &consumed) != 3 ||
            name[consumed] != '\0' || layer < 0 || layer >= m->cfg.n_layers || (ab != 'A' && ab != 'B') ||
            plait_proj_parse(proj, strlen(proj), &p) != 0 || !(cfg.targets & (1u << p)))
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
    if (!l) return plait_fail(PLAIT_EINVAL, "adapter load: NULL adapter");
    plait_lora_init(l);
    int rc = read_file(path, &buf, &len);
    if (rc != 0) return rc;
    rc = plait_adapter_load_mem(l, buf, len, m, flags);
    free(buf);
    return rc;
}
