/*
 * gguf.c: GGUF v3 parser (checked against the buffer) and writer.
 *
 * Parsing reads through a cursor that refuses to move past the end, so a
 * truncated or lying file fails with the name of the field that did not
 * fit. Counts are bounded by fixed caps and by the bytes left (each entry
 * takes at least a few bytes) before anything is allocated. Tensor data is
 * checked last: known type, 1..4 dimensions of 1..2^40 elements each, a row
 * that is whole blocks, a byte size without overflow, an offset that is a
 * multiple of the alignment, an extent inside the file, no overlap with
 * another tensor, and 4-byte alignment in the buffer for F32 tensors (so
 * they can be read in place as float).
 */
#include "plait/gguf.h"
#include "plait/quant.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MAX_DIM_ELEMS (1ull << 40)

typedef struct {
    const uint8_t *p;
    size_t left;
    const uint8_t *base;
} cur_t;

static uint64_t rd_le(const uint8_t *p, int n)
{
    uint64_t v = 0;
    for (int i = n - 1; i >= 0; i--) v = v << 8 | p[i];
    return v;
}

static int take(cur_t *c, size_t n, const uint8_t **out, const char *what)
{
    if (n > c->left)
        return plait_fail(PLAIT_EPROTO, "gguf: %s at byte %zu needs %zu bytes, %zu left (truncated or lying)", what,
                          (size_t)(c->p - c->base), n, c->left);
    *out = c->p;
    c->p += n;
    c->left -= n;
    return 0;
}

static int rd_u32(cur_t *c, uint32_t *v, const char *what)
{
    const uint8_t *p = NULL;
    int rc = take(c, 4, &p, what);
    if (rc == 0) *v = (uint32_t)rd_le(p, 4);
    return rc;
}

static int rd_u64(cur_t *c, uint64_t *v, const char *what)
{
    const uint8_t *p = NULL;
    int rc = take(c, 8, &p, what);
    if (rc == 0) *v = rd_le(p, 8);
    return rc;
}

static int rd_str(cur_t *c, const char **s, size_t *n, const char *what)
{
    uint64_t len;
    const uint8_t *p = NULL;
    int rc = rd_u64(c, &len, what);
    if (rc != 0) return rc;
    if (len > c->left)
        return plait_fail(PLAIT_EPROTO, "gguf: %s at byte %zu claims %llu bytes, %zu left", what,
                          (size_t)(c->p - c->base) - 8, (unsigned long long)len, c->left);
    if ((rc = take(c, (size_t)len, &p, what)) != 0) return rc;
    *s = (const char *)p;
    *n = (size_t)len;
    return 0;
}

static size_t scalar_size(uint32_t t)
{
    switch (t) {
    case PLAIT_GGUF_U8: case PLAIT_GGUF_I8: case PLAIT_GGUF_BOOL: return 1;
    case PLAIT_GGUF_U16: case PLAIT_GGUF_I16: return 2;
    case PLAIT_GGUF_U32: case PLAIT_GGUF_I32: case PLAIT_GGUF_F32: return 4;
    case PLAIT_GGUF_U64: case PLAIT_GGUF_I64: case PLAIT_GGUF_F64: return 8;
    default: return 0;
    }
}

/* Skip one value of type t (not an array) for key (for messages). */
static int skip_value(cur_t *c, uint32_t t, const char *key, size_t key_len)
{
    const uint8_t *p = NULL;
    if (t == PLAIT_GGUF_STR) {
        const char *s;
        size_t n;
        (void)s;
        return rd_str(c, &s, &n, "metadata string value");
    }
    size_t sz = scalar_size(t);
    if (sz == 0)
        return plait_fail(PLAIT_EPROTO, "gguf: metadata '%.*s' has unknown value type %u", (int)(key_len > 80 ? 80 : key_len),
                          key, t);
    return take(c, sz, &p, "metadata value");
}

void plait_gguf_free(plait_gguf_t *g)
{
    if (!g) return;
    free(g->kv);
    free(g->tensors);
    memset(g, 0, sizeof(*g));
}

static int cmp_off(const void *a, const void *b)
{
    const plait_gguf_tensor_t *x = *(const plait_gguf_tensor_t *const *)a, *y = *(const plait_gguf_tensor_t *const *)b;
    return x->offset < y->offset ? -1 : x->offset > y->offset;
}

static int cmp_name(const void *a, const void *b)
{
    const plait_gguf_tensor_t *x = *(const plait_gguf_tensor_t *const *)a, *y = *(const plait_gguf_tensor_t *const *)b;
    size_t n = x->name_len < y->name_len ? x->name_len : y->name_len;
    int r = memcmp(x->name, y->name, n);
    return r != 0 ? r : (x->name_len < y->name_len ? -1 : x->name_len > y->name_len);
}

static int check_tensors(plait_gguf_t *g)
{
    size_t n = g->n_tensors;
    if (n == 0) return 0;
    const plait_gguf_tensor_t **ix = malloc(n * sizeof(*ix));
    if (!ix) return plait_fail(PLAIT_ENOMEM, "gguf: index of %zu tensors", n);
    int rc = 0;
    for (size_t i = 0; i < n; i++) ix[i] = &g->tensors[i];
    qsort(ix, n, sizeof(*ix), cmp_name);
    for (size_t i = 1; i < n && rc == 0; i++)
        if (cmp_name(&ix[i - 1], &ix[i]) == 0)
            rc = plait_fail(PLAIT_EPROTO, "gguf: tensor name '%.*s' appears twice", (int)(ix[i]->name_len > 80 ? 80 : ix[i]->name_len),
                            ix[i]->name);
    if (rc == 0) {
        qsort(ix, n, sizeof(*ix), cmp_off);
        for (size_t i = 1; i < n && rc == 0; i++)
            if (ix[i - 1]->offset + ix[i - 1]->nbytes > ix[i]->offset)
                rc = plait_fail(PLAIT_EPROTO, "gguf: tensors '%.*s' and '%.*s' overlap",
                                (int)(ix[i - 1]->name_len > 80 ? 80 : ix[i - 1]->name_len), ix[i - 1]->name,
                                (int)(ix[i]->name_len > 80 ? 80 : ix[i]->name_len), ix[i]->name);
    }
    free(ix);
    return rc;
}

int plait_gguf_parse(plait_gguf_t *g, const uint8_t *buf, size_t len)
{
    memset(g, 0, sizeof(*g));
    cur_t c = {.p = buf, .left = len, .base = buf};
    const uint8_t *p = NULL;
    uint32_t version;
    uint64_t nt, nkv;
    int rc;
    if ((rc = take(&c, 4, &p, "magic")) != 0) return rc;
    if (memcmp(p, "GGUF", 4) != 0) return plait_fail(PLAIT_EPROTO, "gguf: the file does not start with \"GGUF\"");
    if ((rc = rd_u32(&c, &version, "version")) != 0) return rc;
    if (version != 3) return plait_fail(PLAIT_EPROTO, "gguf: version %u (only 3 is read)", version);
    if ((rc = rd_u64(&c, &nt, "tensor count")) != 0 || (rc = rd_u64(&c, &nkv, "metadata count")) != 0) return rc;
    /* A metadata entry takes at least 8 + 4 + 1 bytes, a tensor info 8 + 4 + 8 + 4 + 8. */
    if (nkv > PLAIT_GGUF_MAX_KV || nkv > c.left / 13)
        return plait_fail(PLAIT_EPROTO, "gguf: metadata count %llu is absurd for a %zu-byte file (cap %d)",
                          (unsigned long long)nkv, len, PLAIT_GGUF_MAX_KV);
    if (nt > PLAIT_GGUF_MAX_TENSORS || nt > c.left / 32)
        return plait_fail(PLAIT_EPROTO, "gguf: tensor count %llu is absurd for a %zu-byte file (cap %d)",
                          (unsigned long long)nt, len, PLAIT_GGUF_MAX_TENSORS);
    g->version = version;
    g->alignment = PLAIT_GGUF_DEFAULT_ALIGN;
    g->kv = calloc(nkv ? (size_t)nkv : 1, sizeof(*g->kv));
    g->tensors = calloc(nt ? (size_t)nt : 1, sizeof(*g->tensors));
    if (!g->kv || !g->tensors) {
        plait_gguf_free(g);
        return plait_fail(PLAIT_ENOMEM, "gguf: index of %llu entries", (unsigned long long)(nkv + nt));
    }
    for (size_t i = 0; i < (size_t)nkv; i++) {
        plait_gguf_kv_t *kv = &g->kv[i];
        if ((rc = rd_str(&c, &kv->key, &kv->key_len, "metadata key")) != 0) goto fail;
        if (kv->key_len == 0 || kv->key_len > PLAIT_GGUF_MAX_NAME) {
            rc = plait_fail(PLAIT_EPROTO, "gguf: metadata key %zu has length %zu (1..%d)", i, kv->key_len,
                            PLAIT_GGUF_MAX_NAME);
            goto fail;
        }
        if ((rc = rd_u32(&c, &kv->type, "metadata value type")) != 0) goto fail;
        kv->val = c.p;
        if (kv->type == PLAIT_GGUF_ARR) {
            if ((rc = rd_u32(&c, &kv->arr_type, "array element type")) != 0 ||
                (rc = rd_u64(&c, &kv->arr_n, "array count")) != 0)
                goto fail;
            kv->val = c.p;
            size_t es = kv->arr_type == PLAIT_GGUF_STR ? 8 : scalar_size(kv->arr_type);
            if (es == 0) {
                rc = plait_fail(PLAIT_EPROTO, "gguf: metadata '%.*s' is an array of unsupported type %u",
                                (int)(kv->key_len > 80 ? 80 : kv->key_len), kv->key, kv->arr_type);
                goto fail;
            }
            if (kv->arr_n > c.left / es) {
                rc = plait_fail(PLAIT_EPROTO, "gguf: metadata '%.*s' claims %llu elements, the file has room for %zu",
                                (int)(kv->key_len > 80 ? 80 : kv->key_len), kv->key, (unsigned long long)kv->arr_n,
                                c.left / es);
                goto fail;
            }
            if (kv->arr_type == PLAIT_GGUF_STR) {
                for (uint64_t k = 0; k < kv->arr_n; k++)
                    if ((rc = skip_value(&c, PLAIT_GGUF_STR, kv->key, kv->key_len)) != 0) goto fail;
            } else if ((rc = take(&c, (size_t)kv->arr_n * es, &p, "array elements")) != 0) {
                goto fail;
            }
        } else if ((rc = skip_value(&c, kv->type, kv->key, kv->key_len)) != 0) {
            goto fail;
        }
    }
    g->n_kv = (size_t)nkv;
    const plait_gguf_kv_t *al = plait_gguf_find(g, "general.alignment");
    if (al) {
        if (al->type != PLAIT_GGUF_U32) {
            rc = plait_fail(PLAIT_EPROTO, "gguf: general.alignment has type %u, not u32", al->type);
            goto fail;
        }
        uint32_t a = (uint32_t)rd_le(al->val, 4);
        if (a == 0 || a > 65536 || (a & (a - 1)) != 0) {
            rc = plait_fail(PLAIT_EPROTO, "gguf: general.alignment %u is not a power of two in 1..65536", a);
            goto fail;
        }
        g->alignment = a;
    }
    for (size_t i = 0; i < (size_t)nt; i++) {
        plait_gguf_tensor_t *t = &g->tensors[i];
        if ((rc = rd_str(&c, &t->name, &t->name_len, "tensor name")) != 0) goto fail;
        int nl = (int)(t->name_len > 80 ? 80 : t->name_len);
        if (t->name_len == 0 || t->name_len > PLAIT_GGUF_MAX_NAME) {
            rc = plait_fail(PLAIT_EPROTO, "gguf: tensor %zu has a name of %zu bytes", i, t->name_len);
            goto fail;
        }
        if ((rc = rd_u32(&c, &t->n_dims, "tensor n_dims")) != 0) goto fail;
        if (t->n_dims < 1 || t->n_dims > 4) {
            rc = plait_fail(PLAIT_EPROTO, "gguf: tensor '%.*s' has %u dimensions (1..4)", nl, t->name, t->n_dims);
            goto fail;
        }
        uint64_t elems = 1;
        for (uint32_t d = 0; d < 4; d++) {
            t->ne[d] = 1;
            if (d < t->n_dims && (rc = rd_u64(&c, &t->ne[d], "tensor dimension")) != 0) goto fail;
            if (t->ne[d] < 1 || t->ne[d] > MAX_DIM_ELEMS || elems > UINT64_MAX / t->ne[d]) {
                rc = plait_fail(PLAIT_EPROTO, "gguf: tensor '%.*s' dimension %u is %llu (absurd)", nl, t->name, d,
                                (unsigned long long)t->ne[d]);
                goto fail;
            }
            elems *= t->ne[d];
        }
        if ((rc = rd_u32(&c, &t->type, "tensor type")) != 0 || (rc = rd_u64(&c, &t->offset, "tensor offset")) != 0)
            goto fail;
        if (!plait_dtype_name((int)t->type)) {
            rc = plait_fail(PLAIT_EPROTO, "gguf: tensor '%.*s' has type %u (known: F32 0, F16 1, Q4_0 2, Q8_0 8, BF16 30)",
                            nl, t->name, t->type);
            goto fail;
        }
        size_t rb = plait_dtype_row_bytes((int)t->type, (size_t)t->ne[0]);
        uint64_t rows = elems / t->ne[0];
        if (rb == 0 || rows > (uint64_t)SIZE_MAX / rb) {
            rc = plait_fail(PLAIT_EPROTO, "gguf: tensor '%.*s' row of %llu %s elements is not whole blocks, or too big",
                            nl, t->name, (unsigned long long)t->ne[0], plait_dtype_name((int)t->type));
            goto fail;
        }
        t->nbytes = (size_t)(rows * rb);
        if (t->offset % g->alignment != 0) {
            rc = plait_fail(PLAIT_EPROTO, "gguf: tensor '%.*s' offset %llu is not a multiple of the alignment %zu", nl,
                            t->name, (unsigned long long)t->offset, g->alignment);
            goto fail;
        }
    }
    g->n_tensors = (size_t)nt;
    size_t hdr = (size_t)(c.p - buf);
    size_t data = (hdr + g->alignment - 1) / g->alignment * g->alignment;
    if (data > len && nt > 0) {
        rc = plait_fail(PLAIT_EPROTO, "gguf: the data section would start at %zu, past the end (%zu bytes)", data, len);
        goto fail;
    }
    g->data_offset = data;
    for (size_t i = 0; i < g->n_tensors; i++) {
        plait_gguf_tensor_t *t = &g->tensors[i];
        int nl = (int)(t->name_len > 80 ? 80 : t->name_len);
        size_t room = len - data;
        if (t->offset > room || t->nbytes > room - t->offset) {
            rc = plait_fail(PLAIT_EPROTO, "gguf: tensor '%.*s' (%zu bytes at offset %llu) runs past the end of the file",
                            nl, t->name, t->nbytes, (unsigned long long)t->offset);
            goto fail;
        }
        t->data = buf + data + t->offset;
        if (t->type == PLAIT_DT_F32 && ((uintptr_t)t->data & 3u) != 0) {
            rc = plait_fail(PLAIT_EPROTO, "gguf: F32 tensor '%.*s' is not 4-byte aligned", nl, t->name);
            goto fail;
        }
    }
    if ((rc = check_tensors(g)) != 0) goto fail;
    return 0;
fail:
    plait_gguf_free(g);
    return rc;
}

const plait_gguf_kv_t *plait_gguf_find(const plait_gguf_t *g, const char *key)
{
    size_t n = strlen(key);
    for (size_t i = 0; i < g->n_kv; i++)
        if (g->kv[i].key_len == n && memcmp(g->kv[i].key, key, n) == 0) return &g->kv[i];
    return NULL;
}

const plait_gguf_tensor_t *plait_gguf_tensor(const plait_gguf_t *g, const char *name)
{
    size_t n = strlen(name);
    for (size_t i = 0; i < g->n_tensors; i++)
        if (g->tensors[i].name_len == n && memcmp(g->tensors[i].name, name, n) == 0) return &g->tensors[i];
    return NULL;
}

int plait_gguf_get_uint(const plait_gguf_t *g, const char *key, uint64_t max, uint64_t *out)
{
    const plait_gguf_kv_t *kv = plait_gguf_find(g, key);
    if (!kv) return plait_fail(PLAIT_EPROTO, "gguf: metadata '%s' is missing", key);
    int64_t sv = 0;
    uint64_t uv = 0;
    int is_signed = 0;
    switch (kv->type) {
    case PLAIT_GGUF_U8: uv = kv->val[0]; break;
    case PLAIT_GGUF_U16: uv = rd_le(kv->val, 2); break;
    case PLAIT_GGUF_U32: uv = rd_le(kv->val, 4); break;
    case PLAIT_GGUF_U64: uv = rd_le(kv->val, 8); break;
    case PLAIT_GGUF_I8: sv = (int8_t)kv->val[0]; is_signed = 1; break;
    case PLAIT_GGUF_I16: sv = (int16_t)rd_le(kv->val, 2); is_signed = 1; break;
    case PLAIT_GGUF_I32: sv = (int32_t)rd_le(kv->val, 4); is_signed = 1; break;
    case PLAIT_GGUF_I64: sv = (int64_t)rd_le(kv->val, 8); is_signed = 1; break;
    default: return plait_fail(PLAIT_EPROTO, "gguf: metadata '%s' has type %u, not an integer", key, kv->type);
    }
    if (is_signed) {
        if (sv < 0) return plait_fail(PLAIT_EPROTO, "gguf: metadata '%s' = %lld is negative", key, (long long)sv);
        uv = (uint64_t)sv;
    }
    if (uv > max)
        return plait_fail(PLAIT_EPROTO, "gguf: metadata '%s' = %llu exceeds %llu", key, (unsigned long long)uv,
                          (unsigned long long)max);
    *out = uv;
    return 0;
}

int plait_gguf_get_float(const plait_gguf_t *g, const char *key, double *out)
{
    const plait_gguf_kv_t *kv = plait_gguf_find(g, key);
    if (!kv) return plait_fail(PLAIT_EPROTO, "gguf: metadata '%s' is missing", key);
    if (kv->type == PLAIT_GGUF_F32) {
        uint32_t b = (uint32_t)rd_le(kv->val, 4);
        float f;
        memcpy(&f, &b, 4);
        *out = f;
    } else if (kv->type == PLAIT_GGUF_F64) {
        uint64_t b = rd_le(kv->val, 8);
        memcpy(out, &b, 8);
    } else {
        return plait_fail(PLAIT_EPROTO, "gguf: metadata '%s' has type %u, not a float", key, kv->type);
    }
    return 0;
}

int plait_gguf_get_str(const plait_gguf_t *g, const char *key, const char **s, size_t *n)
{
    const plait_gguf_kv_t *kv = plait_gguf_find(g, key);
    if (!kv) return plait_fail(PLAIT_EPROTO, "gguf: metadata '%s' is missing", key);
    if (kv->type != PLAIT_GGUF_STR) return plait_fail(PLAIT_EPROTO, "gguf: metadata '%s' is not a string", key);
    *n = (size_t)rd_le(kv->val, 8); /* checked against the file at parse */
    *s = (const char *)kv->val + 8;
    return 0;
}

int plait_gguf_arr_str(const plait_gguf_kv_t *kv, uint64_t i, const char **s, size_t *n)
{
    if (kv->type != PLAIT_GGUF_ARR || kv->arr_type != PLAIT_GGUF_STR || i >= kv->arr_n)
        return plait_fail(PLAIT_EPROTO, "gguf: '%.*s' has no string element %llu", (int)(kv->key_len > 80 ? 80 : kv->key_len),
                          kv->key, (unsigned long long)i);
    const uint8_t *p = kv->val;
    for (uint64_t k = 0; k < i; k++) p += 8 + rd_le(p, 8);
    *n = (size_t)rd_le(p, 8);
    *s = (const char *)p + 8;
    return 0;
}

/* ------------------------------------------------------------- writer */

typedef struct {
    uint8_t *b;
    size_t n, cap;
    int oom;
} buf_t;

static void put(buf_t *b, const void *p, size_t n)
{
    if (b->oom) return;
    if (b->n + n > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->n + n) cap *= 2;
        uint8_t *nb = realloc(b->b, cap);
        if (!nb) {
            b->oom = 1;
            return;
        }
        b->b = nb;
        b->cap = cap;
    }
    if (n) memcpy(b->b + b->n, p, n);
    b->n += n;
}

static void put_le(buf_t *b, uint64_t v, int n)
{
    uint8_t t[8];
    for (int i = 0; i < n; i++) t[i] = (uint8_t)(v >> (8 * i));
    put(b, t, (size_t)n);
}

static void put_str(buf_t *b, const char *s, size_t n)
{
    put_le(b, n, 8);
    put(b, s, n);
}

struct plait_gguf_writer_s {
    buf_t kv, info, data;
    size_t n_kv, n_t;
};

int plait_gguf_writer_create(plait_gguf_writer_t **w)
{
    *w = calloc(1, sizeof(**w));
    return *w ? 0 : plait_fail(PLAIT_ENOMEM, "gguf writer");
}

void plait_gguf_writer_free(plait_gguf_writer_t *w)
{
    if (!w) return;
    free(w->kv.b);
    free(w->info.b);
    free(w->data.b);
    free(w);
}

static int kv_head(plait_gguf_writer_t *w, const char *key, uint32_t type)
{
    put_str(&w->kv, key, strlen(key));
    put_le(&w->kv, type, 4);
    w->n_kv++;
    return w->kv.oom ? plait_fail(PLAIT_ENOMEM, "gguf writer: metadata") : 0;
}

int plait_gguf_add_str(plait_gguf_writer_t *w, const char *key, const char *val)
{
    kv_head(w, key, PLAIT_GGUF_STR);
    put_str(&w->kv, val, strlen(val));
    return w->kv.oom ? plait_fail(PLAIT_ENOMEM, "gguf writer: metadata") : 0;
}

int plait_gguf_add_u32(plait_gguf_writer_t *w, const char *key, uint32_t val)
{
    kv_head(w, key, PLAIT_GGUF_U32);
    put_le(&w->kv, val, 4);
    return w->kv.oom ? plait_fail(PLAIT_ENOMEM, "gguf writer: metadata") : 0;
}

int plait_gguf_add_f32(plait_gguf_writer_t *w, const char *key, float val)
{
    uint32_t b;
    memcpy(&b, &val, 4);
    kv_head(w, key, PLAIT_GGUF_F32);
    put_le(&w->kv, b, 4);
    return w->kv.oom ? plait_fail(PLAIT_ENOMEM, "gguf writer: metadata") : 0;
}

int plait_gguf_add_str_arr(plait_gguf_writer_t *w, const char *key, const char *const *vals, const size_t *lens,
                           size_t n)
{
    kv_head(w, key, PLAIT_GGUF_ARR);
    put_le(&w->kv, PLAIT_GGUF_STR, 4);
    put_le(&w->kv, n, 8);
    for (size_t i = 0; i < n; i++) put_str(&w->kv, vals[i], lens ? lens[i] : strlen(vals[i]));
    return w->kv.oom ? plait_fail(PLAIT_ENOMEM, "gguf writer: metadata") : 0;
}

int plait_gguf_add_arr(plait_gguf_writer_t *w, const char *key, uint32_t type, const void *vals, size_t n)
{
    size_t es = scalar_size(type);
    if (es == 0) return plait_fail(PLAIT_EINVAL, "gguf writer: array type %u", type);
    kv_head(w, key, PLAIT_GGUF_ARR);
    put_le(&w->kv, type, 4);
    put_le(&w->kv, n, 8);
    const uint8_t *p = vals;
    for (size_t i = 0; i < n; i++) {
        uint64_t v = 0;
        memcpy(&v, p + i * es, es); /* host order: little-endian hosts only, as the kernels */
        put_le(&w->kv, v, (int)es);
    }
    return w->kv.oom ? plait_fail(PLAIT_ENOMEM, "gguf writer: metadata") : 0;
}

int plait_gguf_add_tensor(plait_gguf_writer_t *w, const char *name, int type, uint32_t n_dims, const uint64_t *ne,
                          const void *data, size_t nbytes)
{
    if (n_dims < 1 || n_dims > 4 || !plait_dtype_name(type))
        return plait_fail(PLAIT_EINVAL, "gguf writer: tensor %s: %u dims, type %d", name, n_dims, type);
    uint64_t rows = 1;
    for (uint32_t d = 1; d < n_dims; d++) rows *= ne[d];
    size_t rb = plait_dtype_row_bytes(type, (size_t)ne[0]);
    if (rb == 0 || rows * rb != nbytes)
        return plait_fail(PLAIT_EINVAL, "gguf writer: tensor %s: %zu bytes do not match its shape and type", name,
                          nbytes);
    size_t off = (w->data.n + PLAIT_GGUF_DEFAULT_ALIGN - 1) / PLAIT_GGUF_DEFAULT_ALIGN * PLAIT_GGUF_DEFAULT_ALIGN;
    static const uint8_t zeros[PLAIT_GGUF_DEFAULT_ALIGN];
    put(&w->data, zeros, off - w->data.n);
    put(&w->data, data, nbytes);
    put_str(&w->info, name, strlen(name));
    put_le(&w->info, n_dims, 4);
    for (uint32_t d = 0; d < n_dims; d++) put_le(&w->info, ne[d], 8);
    put_le(&w->info, (uint64_t)type, 4);
    put_le(&w->info, off, 8);
    w->n_t++;
    return w->data.oom || w->info.oom ? plait_fail(PLAIT_ENOMEM, "gguf writer: tensor %s", name) : 0;
}

/* Header, metadata and tensor infos, padded to the alignment. */
static int head_image(plait_gguf_writer_t *w, buf_t *b)
{
    put(b, "GGUF", 4);
    put_le(b, 3, 4);
    put_le(b, w->n_t, 8);
    put_le(b, w->n_kv, 8);
    put(b, w->kv.b, w->kv.n);
    put(b, w->info.b, w->info.n);
    static const uint8_t zeros[PLAIT_GGUF_DEFAULT_ALIGN];
    size_t pad = (PLAIT_GGUF_DEFAULT_ALIGN - b->n % PLAIT_GGUF_DEFAULT_ALIGN) % PLAIT_GGUF_DEFAULT_ALIGN;
    put(b, zeros, pad);
    if (b->oom || w->kv.oom || w->info.oom || w->data.oom) {
        free(b->b);
        b->b = NULL;
        return plait_fail(PLAIT_ENOMEM, "gguf writer: image");
    }
    return 0;
}

int plait_gguf_write_mem(plait_gguf_writer_t *w, uint8_t **out, size_t *len)
{
    buf_t b = {0};
    int rc = head_image(w, &b);
    if (rc != 0) return rc;
    put(&b, w->data.b, w->data.n);
    if (b.oom) {
        free(b.b);
        return plait_fail(PLAIT_ENOMEM, "gguf writer: image");
    }
    *out = b.b;
    *len = b.n;
    return 0;
}

int plait_gguf_write_file(plait_gguf_writer_t *w, const char *path)
{
    buf_t h = {0};
    int rc = head_image(w, &h);
    if (rc != 0) return rc;
    char tmp[4096];
    if ((size_t)snprintf(tmp, sizeof(tmp), "%s.tmp", path) >= sizeof(tmp)) {
        free(h.b);
        return plait_fail(PLAIT_EINVAL, "gguf: path too long");
    }
    FILE *f = fopen(tmp, "wb");
    if (!f) {
        free(h.b);
        return plait_fail(PLAIT_EIO, "gguf: cannot create %s: %s", tmp, strerror(errno));
    }
    /* The header, then the data section straight from the writer (no second copy). */
    int ok = fwrite(h.b, 1, h.n, f) == h.n && (w->data.n == 0 || fwrite(w->data.b, 1, w->data.n, f) == w->data.n);
    ok = (fclose(f) == 0) && ok;
    free(h.b);
    if (!ok || rename(tmp, path) != 0) {
        unlink(tmp);
        return plait_fail(PLAIT_EIO, "gguf: cannot write %s: %s", path, strerror(errno));
    }
    return 0;
}
