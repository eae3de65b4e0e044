/*
 * json.c: strict, bounded RFC 8259 reader and a safe JSON writer.
 *
 * The reader is a recursive-descent parser over an untrusted byte span. Its
 * invariants:
 *   - every read of p->b[i] is preceded by a check i < p->len, so input need
 *     not be NUL-terminated and nothing past len is touched;
 *   - recursion depth is bounded by limits.max_depth (<= 1024), the number of
 *     nodes by limits.max_nodes and every decoded string by limits.max_string,
 *     each checked before the memory for it is allocated;
 *   - on failure the partial tree is freed and *out is NULL, and the detail
 *     names a byte offset and the problem, never input bytes.
 *
 * Strings are scanned twice: a first pass validates escapes and UTF-8 and
 * measures the decoded length, a second pass (which cannot fail) decodes into
 * an allocation of exactly that size. Decoded bytes are never more than raw
 * bytes, so no escape can inflate memory use beyond the input.
 *
 * Expected workload: safetensors headers (tens of KiB), JSON-lines records (up
 * to a few MiB), config files. Member lookup is linear; duplicate detection is
 * O(n log n) per object.
 */
#include "plait/json.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* memset through a volatile pointer so wipes before free are not elided. */
static void *(*const volatile wipe_memset)(void *, int, size_t) = memset;

static void wipe(void *p, size_t n)
{
    if (p && n) wipe_memset(p, 0, n);
}

enum { NUM_INT = 0, NUM_INT_OVERFLOW = 1, NUM_REAL = 2 };

struct plait_json_s {
    plait_json_type_t type;
    union {
        bool b;
        struct {
            double d;
            int64_t i;  /* valid when kind == NUM_INT */
            int kind;   /* NUM_INT, NUM_INT_OVERFLOW or NUM_REAL (had '.' or exponent) */
        } num;
        struct {
            char *s;    /* NUL-terminated, no embedded NUL */
            size_t len;
        } str;
        struct {
            plait_json_t **items; /* n values */
            char **keys;          /* n keys for an object, NULL for an array */
            size_t n, cap;
        } agg;
    } u;
};

typedef struct {
    const unsigned char *b;
    size_t len;
    size_t pos;
    size_t nodes;
    const plait_json_limits_t *lim;
} parser_t;

/* ------------------------------------------------------------------------ */
/* Limits                                                                    */
/* ------------------------------------------------------------------------ */

void plait_json_limits_default(plait_json_limits_t *limits)
{
    limits->max_depth = 64;           /* far deeper than any config or header we read */
    limits->max_nodes = 1000000;      /* ~40 MiB of nodes at worst */
    limits->max_string = 16u << 20;   /* larger than the store's 1 MiB record cap */
}

int plait_json_limits_validate(const plait_json_limits_t *limits)
{
    if (!limits) return plait_fail(PLAIT_EINVAL, "json: limits is NULL");
    if (limits->max_depth < 1 || limits->max_depth > PLAIT_JSON_MAX_DEPTH_CEILING)
        return plait_fail(PLAIT_EINVAL, "json: max_depth %zu not in 1..%d", limits->max_depth,
                          PLAIT_JSON_MAX_DEPTH_CEILING);
    if (limits->max_nodes < 1) return plait_fail(PLAIT_EINVAL, "json: max_nodes is 0");
    if (limits->max_string < 1 || limits->max_string > SIZE_MAX / 2)
        return plait_fail(PLAIT_EINVAL, "json: max_string %zu out of range", limits->max_string);
    return 0;
}

/* ------------------------------------------------------------------------ */
/* UTF-8                                                                     */
/* ------------------------------------------------------------------------ */

/*
 * Length (1..4) of the well-formed UTF-8 sequence starting at p, given avail
 * readable bytes, or 0 if it is ill-formed (RFC 3629: no overlongs, no
 * surrogates, nothing above U+10FFFF, no truncation).
 */
static size_t utf8_seq_len(const unsigned char *p, size_t avail)
{
    unsigned char c = p[0];
    if (c < 0x80) return 1;
    size_t n;
    unsigned char lo = 0x80, hi = 0xBF; /* allowed range of the second byte */
    if (c >= 0xC2 && c <= 0xDF) {
        n = 2;
    } else if (c >= 0xE0 && c <= 0xEF) {
        n = 3;
        if (c == 0xE0) lo = 0xA0;       /* overlong */
        else if (c == 0xED) hi = 0x9F;  /* surrogates */
    } else if (c >= 0xF0 && c <= 0xF4) {
        n = 4;
        if (c == 0xF0) lo = 0x90;       /* overlong */
        else if (c == 0xF4) hi = 0x8F;  /* > U+10FFFF */
    } else {
        return 0;
    }
    if (avail < n) return 0;
    if (p[1] < lo || p[1] > hi) return 0;
    for (size_t i = 2; i < n; i++)
        if (p[i] < 0x80 || p[i] > 0xBF) return 0;
    return n;
}

static size_t utf8_encode(uint32_t cp, char *out)
{
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (char)(0xC0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (char)(0xE0 | (cp >> 12));
        out[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        out[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (char)(0xF0 | (cp >> 18));
    out[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    out[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
    out[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

static size_t utf8_len_of(uint32_t cp)
{
    return cp < 0x80 ? 1 : cp < 0x800 ? 2 : cp < 0x10000 ? 3 : 4;
}

bool plait_utf8_valid(const char *s, size_t n, size_t *bad)
{
    const unsigned char *u = (const unsigned char *)s;
    size_t i = 0;
    while (i < n) {
        if (u[i] == 0) break;
        if (u[i] < 0x80) {
            i++;
            continue;
        }
        size_t k = utf8_seq_len(u + i, n - i);
        if (k == 0) break;
        i += k;
    }
    if (i == n) return true;
    if (bad) *bad = i;
    return false;
}

/* ------------------------------------------------------------------------ */
/* Parser                                                                    */
/* ------------------------------------------------------------------------ */

static int perr(size_t off, const char *what)
{
    return plait_fail(PLAIT_EPROTO, "json: offset %zu: %s", off, what);
}

static int pbig(size_t off, const char *what)
{
    return plait_fail(PLAIT_ETOOBIG, "json: offset %zu: %s", off, what);
}

static void skip_ws(parser_t *p)
{
    while (p->pos < p->len) {
        unsigned char c = p->b[p->pos];
        if (c != ' ' && c != '\t' && c != '\n' && c != '\r') break;
        p->pos++;
    }
}

static int new_node(parser_t *p, plait_json_type_t type, plait_json_t **out)
{
    if (p->nodes >= p->lim->max_nodes) return pbig(p->pos, "too many values (max_nodes)");
    plait_json_t *v = calloc(1, sizeof(*v));
    if (!v) return plait_fail(PLAIT_ENOMEM, "json: out of memory");
    v->type = type;
    p->nodes++;
    *out = v;
    return 0;
}

static void node_free(plait_json_t *v)
{
    if (!v) return;
    switch (v->type) {
    case PLAIT_JSON_STRING:
        wipe(v->u.str.s, v->u.str.len);
        free(v->u.str.s);
        break;
    case PLAIT_JSON_ARRAY:
    case PLAIT_JSON_OBJECT:
        for (size_t i = 0; i < v->u.agg.n; i++) {
            node_free(v->u.agg.items[i]);
            if (v->u.agg.keys) {
                wipe(v->u.agg.keys[i], strlen(v->u.agg.keys[i]));
                free(v->u.agg.keys[i]);
            }
        }
        free(v->u.agg.items);
        free(v->u.agg.keys);
        break;
    default: break;
    }
    free(v);
}

void plait_json_free(plait_json_t *v)
{
    node_free(v);
}

static int hex4(const unsigned char *s, uint32_t *out)
{
    uint32_t v = 0;
    for (int i = 0; i < 4; i++) {
        unsigned char c = s[i];
        uint32_t d;
        if (c >= '0' && c <= '9') d = (uint32_t)(c - '0');
        else if (c >= 'a' && c <= 'f') d = (uint32_t)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F') d = (uint32_t)(c - 'A' + 10);
        else return -1;
        v = (v << 4) | d;
    }
    *out = v;
    return 0;
}

/*
 * Scan the string whose opening quote is at p->pos. With dst == NULL,
 * validate and measure: *declen gets the decoded length and *end the offset
 * just past the closing quote. With dst != NULL (second pass over a string
 * already validated), decode into dst, which has room for *declen + 1 bytes.
 */
static int scan_string(parser_t *p, char *dst, size_t *declen, size_t *end)
{
    const unsigned char *b = p->b;
    size_t i = p->pos + 1, n = 0;
    for (;;) {
        if (i >= p->len) return perr(p->pos, "unterminated string");
        unsigned char c = b[i];
        if (c == '"') break;
        if (c < 0x20) return perr(i, "control character in string");
        if (c == '\\') {
            if (i + 1 >= p->len) return perr(i, "unterminated escape");
            unsigned char e = b[i + 1];
            char one = 0;
            switch (e) {
            case '"': one = '"'; break;
            case '\\': one = '\\'; break;
            case '/': one = '/'; break;
            case 'b': one = '\b'; break;
            case 'f': one = '\f'; break;
            case 'n': one = '\n'; break;
            case 'r': one = '\r'; break;
            case 't': one = '\t'; break;
            case 'u': break;
            default: return perr(i, "invalid escape");
            }
            if (e != 'u') {
                if (dst) dst[n] = one;
                n++;
                i += 2;
            } else {
                uint32_t cp, lo;
                if (p->len - i < 6 || hex4(b + i + 2, &cp) != 0)
                    return perr(i, "invalid \\u escape");
                if (cp == 0) return perr(i, "\\u0000 is not allowed");
                size_t esc_at = i;
                i += 6;
                if (cp >= 0xDC00 && cp <= 0xDFFF) return perr(esc_at, "lone low surrogate");
                if (cp >= 0xD800 && cp <= 0xDBFF) {
                    if (p->len - i < 6 || b[i] != '\\' || b[i + 1] != 'u' ||
                        hex4(b + i + 2, &lo) != 0 || lo < 0xDC00 || lo > 0xDFFF)
                        return perr(esc_at, "lone high surrogate");
                    cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                    i += 6;
                }
                if (dst) n += utf8_encode(cp, dst + n);
                else n += utf8_len_of(cp);
            }
        } else if (c < 0x80) {
            if (dst) dst[n] = (char)c;
            n++;
            i++;
        } else {
            size_t k = utf8_seq_len(b + i, p->len - i);
            if (k == 0) return perr(i, "invalid UTF-8 in string");
            if (dst) memcpy(dst + n, b + i, k);
            n += k;
            i += k;
        }
        if (n > p->lim->max_string) return pbig(p->pos, "string too long (max_string)");
    }
    *declen = n;
    *end = i + 1;
    return 0;
}

/* Parse a string at p->pos into a fresh heap buffer. */
static int parse_raw_string(parser_t *p, char **out, size_t *outlen)
{
    size_t n, end;
    int rc = scan_string(p, NULL, &n, &end);
    if (rc != 0) return rc;
    char *s = malloc(n + 1);
    if (!s) return plait_fail(PLAIT_ENOMEM, "json: out of memory");
    (void)scan_string(p, s, &n, &end);
    s[n] = '\0';
    p->pos = end;
    *out = s;
    *outlen = n;
    return 0;
}

static int parse_number(parser_t *p, plait_json_t **out)
{
    const unsigned char *b = p->b;
    size_t start = p->pos, i = p->pos;
    bool neg = false, real = false;
    if (i < p->len && b[i] == '-') {
        neg = true;
        i++;
    }
    if (i >= p->len || b[i] < '0' || b[i] > '9') return perr(i, "expected digit");
    size_t int_start = i;
    if (b[i] == '0') {
        i++;
    } else {
        while (i < p->len && b[i] >= '0' && b[i] <= '9') i++;
    }
    size_t int_end = i;
    if (i < p->len && b[i] == '.') {
        real = true;
        i++;
        if (i >= p->len || b[i] < '0' || b[i] > '9') return perr(i, "expected digit after '.'");
        while (i < p->len && b[i] >= '0' && b[i] <= '9') i++;
    }
    if (i < p->len && (b[i] == 'e' || b[i] == 'E')) {
        real = true;
        i++;
        if (i < p->len && (b[i] == '+' || b[i] == '-')) i++;
        if (i >= p->len || b[i] < '0' || b[i] > '9') return perr(i, "expected digit in exponent");
        while (i < p->len && b[i] >= '0' && b[i] <= '9') i++;
    }
    size_t n = i - start;
    if (n > p->lim->max_string) return pbig(start, "number too long (max_string)");

    /* strtod needs a NUL-terminated copy; the input is not. */
    char small[64];
    char *tmp = n < sizeof(small) ? small : malloc(n + 1);
    if (!tmp) return plait_fail(PLAIT_ENOMEM, "json: out of memory");
    memcpy(tmp, b + start, n);
    tmp[n] = '\0';
    double d = strtod(tmp, NULL);
    if (tmp != small) free(tmp);
    if (!isfinite(d)) return pbig(start, "number out of range of a double");

    plait_json_t *v;
    int rc = new_node(p, PLAIT_JSON_NUMBER, &v);
    if (rc != 0) return rc;
    v->u.num.d = d;
    if (real) {
        v->u.num.kind = NUM_REAL;
    } else {
        /* Exact integer conversion, accumulating negatively to reach INT64_MIN. */
        int64_t acc = 0;
        int kind = NUM_INT;
        for (size_t k = int_start; k < int_end; k++) {
            int digit = b[k] - '0';
            if (acc < (INT64_MIN + digit) / 10) {
                kind = NUM_INT_OVERFLOW;
                break;
            }
            acc = acc * 10 - digit;
        }
        if (kind == NUM_INT && !neg) {
            if (acc == INT64_MIN) kind = NUM_INT_OVERFLOW;
            else acc = -acc;
        }
        v->u.num.kind = kind;
        v->u.num.i = kind == NUM_INT ? acc : 0;
    }
    p->pos = i;
    *out = v;
    return 0;
}

static int parse_value(parser_t *p, size_t depth, plait_json_t **out);

/* Append child (and key, for objects) to an aggregate; takes ownership on success. */
static int agg_push(plait_json_t *v, char *key, plait_json_t *child)
{
    if (v->u.agg.n == v->u.agg.cap) {
        size_t nc = v->u.agg.cap ? v->u.agg.cap * 2 : 4;
        if (nc > SIZE_MAX / sizeof(void *)) return plait_fail(PLAIT_ENOMEM, "json: out of memory");
        plait_json_t **items = realloc(v->u.agg.items, nc * sizeof(*items));
        if (!items) return plait_fail(PLAIT_ENOMEM, "json: out of memory");
        v->u.agg.items = items;
        if (v->type == PLAIT_JSON_OBJECT) {
            char **keys = realloc(v->u.agg.keys, nc * sizeof(*keys));
            if (!keys) return plait_fail(PLAIT_ENOMEM, "json: out of memory");
            v->u.agg.keys = keys;
        }
        v->u.agg.cap = nc;
    }
    v->u.agg.items[v->u.agg.n] = child;
    if (v->type == PLAIT_JSON_OBJECT) v->u.agg.keys[v->u.agg.n] = key;
    v->u.agg.n++;
    return 0;
}

static int cmp_key(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Reject an object with two equal keys; start is the offset of its '{'. */
static int check_duplicates(const plait_json_t *v, size_t start)
{
    size_t n = v->u.agg.n;
    char **keys = v->u.agg.keys;
    if (n < 2) return 0;
    if (n <= 16) {
        for (size_t i = 0; i < n; i++)
            for (size_t j = i + 1; j < n; j++)
                if (strcmp(keys[i], keys[j]) == 0)
                    return perr(start, "duplicate key in object");
        return 0;
    }
    char **sorted = malloc(n * sizeof(*sorted));
    if (!sorted) return plait_fail(PLAIT_ENOMEM, "json: out of memory");
    memcpy(sorted, keys, n * sizeof(*sorted));
    qsort(sorted, n, sizeof(*sorted), cmp_key);
    int rc = 0;
    for (size_t i = 1; i < n && rc == 0; i++)
        if (strcmp(sorted[i - 1], sorted[i]) == 0) rc = perr(start, "duplicate key in object");
    free(sorted);
    return rc;
}

static int parse_array(parser_t *p, size_t depth, plait_json_t **out)
{
    size_t start = p->pos;
    if (depth + 1 > p->lim->max_depth) return pbig(start, "nesting too deep (max_depth)");
    plait_json_t *v;
    int rc = new_node(p, PLAIT_JSON_ARRAY, &v);
    if (rc != 0) return rc;
    p->pos++; /* '[' */
    skip_ws(p);
    if (p->pos < p->len && p->b[p->pos] == ']') {
        p->pos++;
        *out = v;
        return 0;
    }
    for (;;) {
        plait_json_t *child = NULL;
        if ((rc = parse_value(p, depth + 1, &child)) != 0) goto fail;
        if ((rc = agg_push(v, NULL, child)) != 0) {
            node_free(child);
            goto fail;
        }
        skip_ws(p);
        if (p->pos >= p->len) {
            rc = perr(p->pos, "unterminated array");
            goto fail;
        }
        unsigned char c = p->b[p->pos++];
        if (c == ']') break;
        if (c != ',') {
            rc = perr(p->pos - 1, "expected ',' or ']' in array");
            goto fail;
        }
    }
    *out = v;
    return 0;
fail:
    node_free(v);
    return rc;
}

static int parse_object(parser_t *p, size_t depth, plait_json_t **out)
{
    size_t start = p->pos;
    if (depth + 1 > p->lim->max_depth) return pbig(start, "nesting too deep (max_depth)");
    plait_json_t *v;
    int rc = new_node(p, PLAIT_JSON_OBJECT, &v);
    if (rc != 0) return rc;
    p->pos++; /* '{' */
    skip_ws(p);
    if (p->pos < p->len && p->b[p->pos] == '}') {
        p->pos++;
        *out = v;
        return 0;
    }
    for (;;) {
        skip_ws(p);
        if (p->pos >= p->len) {
            rc = perr(p->pos, "unterminated object");
            goto fail;
        }
        if (p->b[p->pos] != '"') {
            rc = perr(p->pos, "expected string key in object");
            goto fail;
        }
        char *key = NULL;
        size_t keylen;
        if ((rc = parse_raw_string(p, &key, &keylen)) != 0) goto fail;
        skip_ws(p);
        if (p->pos >= p->len || p->b[p->pos] != ':') {
            wipe(key, keylen);
            free(key);
            rc = perr(p->pos, "expected ':' after object key");
            goto fail;
        }
        p->pos++;
        plait_json_t *child = NULL;
        if ((rc = parse_value(p, depth + 1, &child)) != 0) {
            wipe(key, keylen);
            free(key);
            goto fail;
        }
        if ((rc = agg_push(v, key, child)) != 0) {
            wipe(key, keylen);
            free(key);
            node_free(child);
            goto fail;
        }
        skip_ws(p);
        if (p->pos >= p->len) {
            rc = perr(p->pos, "unterminated object");
            goto fail;
        }
        unsigned char c = p->b[p->pos++];
        if (c == '}') break;
        if (c != ',') {
            rc = perr(p->pos - 1, "expected ',' or '}' in object");
            goto fail;
        }
    }
    if ((rc = check_duplicates(v, start)) != 0) goto fail;
    *out = v;
    return 0;
fail:
    node_free(v);
    return rc;
}

static int parse_literal(parser_t *p, const char *word, plait_json_type_t type, bool bval,
                         plait_json_t **out)
{
    size_t n = strlen(word);
    if (p->len - p->pos < n || memcmp(p->b + p->pos, word, n) != 0)
        return perr(p->pos, "invalid literal");
    plait_json_t *v;
    int rc = new_node(p, type, &v);
    if (rc != 0) return rc;
    v->u.b = bval;
    p->pos += n;
    *out = v;
    return 0;
}

static int parse_value(parser_t *p, size_t depth, plait_json_t **out)
{
    skip_ws(p);
    if (p->pos >= p->len) return perr(p->pos, "unexpected end of input, expected a value");
    unsigned char c = p->b[p->pos];
    switch (c) {
    case '{': return parse_object(p, depth, out);
    case '[': return parse_array(p, depth, out);
    case '"': {
        char *s;
        size_t n;
        int rc = parse_raw_string(p, &s, &n);
        if (rc != 0) return rc;
        plait_json_t *v;
        if ((rc = new_node(p, PLAIT_JSON_STRING, &v)) != 0) {
            wipe(s, n);
            free(s);
            return rc;
        }
        v->u.str.s = s;
        v->u.str.len = n;
        *out = v;
        return 0;
    }
    case 't': return parse_literal(p, "true", PLAIT_JSON_BOOL, true, out);
    case 'f': return parse_literal(p, "false", PLAIT_JSON_BOOL, false, out);
    case 'n': return parse_literal(p, "null", PLAIT_JSON_NULL, false, out);
    default:
        if (c == '-' || (c >= '0' && c <= '9')) return parse_number(p, out);
        return perr(p->pos, "unexpected character, expected a value");
    }
}

int plait_json_parse_ex(const char *buf, size_t len, const plait_json_limits_t *limits,
                        plait_json_t **out)
{
    if (!out) return plait_fail(PLAIT_EINVAL, "json: out is NULL");
    *out = NULL;
    if (!buf && len > 0) return plait_fail(PLAIT_EINVAL, "json: buf is NULL");
    plait_json_limits_t def;
    if (!limits) {
        plait_json_limits_default(&def);
        limits = &def;
    }
    int rc = plait_json_limits_validate(limits);
    if (rc != 0) return rc;
    parser_t p = {(const unsigned char *)buf, len, 0, 0, limits};
    skip_ws(&p);
    if (p.pos >= len) return perr(p.pos, "empty input");
    plait_json_t *v = NULL;
    if ((rc = parse_value(&p, 0, &v)) != 0) return rc;
    skip_ws(&p);
    if (p.pos != len) {
        node_free(v);
        return perr(p.pos, "trailing characters after the value");
    }
    *out = v;
    return 0;
}

int plait_json_parse(const char *buf, size_t len, plait_json_t **out)
{
    return plait_json_parse_ex(buf, len, NULL, out);
}

/* ------------------------------------------------------------------------ */
/* Accessors                                                                 */
/* ------------------------------------------------------------------------ */

plait_json_type_t plait_json_type(const plait_json_t *v)
{
    return v ? v->type : PLAIT_JSON_NULL;
}

const plait_json_t *plait_json_get(const plait_json_t *obj, const char *key)
{
    if (!obj || obj->type != PLAIT_JSON_OBJECT || !key) return NULL;
    for (size_t i = 0; i < obj->u.agg.n; i++)
        if (strcmp(obj->u.agg.keys[i], key) == 0) return obj->u.agg.items[i];
    return NULL;
}

size_t plait_json_len(const plait_json_t *v)
{
    if (!v || (v->type != PLAIT_JSON_ARRAY && v->type != PLAIT_JSON_OBJECT)) return 0;
    return v->u.agg.n;
}

const plait_json_t *plait_json_at(const plait_json_t *v, size_t i)
{
    if (!v || (v->type != PLAIT_JSON_ARRAY && v->type != PLAIT_JSON_OBJECT)) return NULL;
    return i < v->u.agg.n ? v->u.agg.items[i] : NULL;
}

const char *plait_json_key_at(const plait_json_t *obj, size_t i)
{
    if (!obj || obj->type != PLAIT_JSON_OBJECT) return NULL;
    return i < obj->u.agg.n ? obj->u.agg.keys[i] : NULL;
}

double plait_json_number(const plait_json_t *v)
{
    if (!v || v->type != PLAIT_JSON_NUMBER) return NAN;
    return v->u.num.d;
}

int plait_json_int64(const plait_json_t *v, int64_t *out)
{
    if (!v || v->type != PLAIT_JSON_NUMBER) return plait_fail(PLAIT_EPROTO, "json: not a number");
    switch (v->u.num.kind) {
    case NUM_INT: *out = v->u.num.i; return 0;
    case NUM_INT_OVERFLOW: return plait_fail(PLAIT_ETOOBIG, "json: integer out of int64 range");
    default: {
        double d = v->u.num.d;
        if (d != floor(d)) return plait_fail(PLAIT_EPROTO, "json: number is not an integer");
        if (fabs(d) > 9007199254740992.0)
            return plait_fail(PLAIT_ETOOBIG, "json: integer beyond 2^53 written with fraction or exponent");
        *out = (int64_t)d;
        return 0;
    }
    }
}

const char *plait_json_string(const plait_json_t *v, size_t *len)
{
    if (!v || v->type != PLAIT_JSON_STRING) return NULL;
    if (len) *len = v->u.str.len;
    return v->u.str.s;
}

int plait_json_bool(const plait_json_t *v, bool *out)
{
    if (!v || v->type != PLAIT_JSON_BOOL) return plait_fail(PLAIT_EPROTO, "json: not a boolean");
    *out = v->u.b;
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Writer                                                                    */
/* ------------------------------------------------------------------------ */

/* Bounded emitter: counts every byte, stores those that fit. */
typedef struct {
    char *out;
    size_t cap, n;
} emit_t;

static void emit(emit_t *e, const char *s, size_t k)
{
    if (e->n < e->cap) {
        size_t room = e->cap - e->n;
        memcpy(e->out + e->n, s, k < room ? k : room);
    }
    e->n += k;
}

size_t plait_json_escape(const char *s, size_t n, char *out, size_t cap)
{
    static const char hexd[] = "0123456789abcdef";
    emit_t e = {out, cap, 0};
    const unsigned char *u = (const unsigned char *)s;
    size_t i = 0;
    while (i < n) {
        unsigned char c = u[i];
        if (c == '"') {
            emit(&e, "\\\"", 2);
        } else if (c == '\\') {
            emit(&e, "\\\\", 2);
        } else if (c < 0x20) {
            switch (c) {
            case '\b': emit(&e, "\\b", 2); break;
            case '\f': emit(&e, "\\f", 2); break;
            case '\n': emit(&e, "\\n", 2); break;
            case '\r': emit(&e, "\\r", 2); break;
            case '\t': emit(&e, "\\t", 2); break;
            default: {
                char esc[6] = {'\\', 'u', '0', '0', hexd[c >> 4], hexd[c & 15]};
                emit(&e, esc, 6);
            }
            }
        } else if (c < 0x80) {
            emit(&e, (const char *)&u[i], 1);
        } else {
            size_t k = utf8_seq_len(u + i, n - i);
            if (k == 0) {
                emit(&e, "\xEF\xBF\xBD", 3); /* U+FFFD for one bad byte */
                k = 1;
            } else {
                emit(&e, (const char *)&u[i], k);
            }
            i += k;
            continue;
        }
        i++;
    }
    if (cap > 0) {
        if (e.n < cap) out[e.n] = '\0';
        else out[0] = '\0';
    }
    return e.n;
}

void plait_buf_init(plait_buf_t *b, size_t max)
{
    b->data = NULL;
    b->len = 0;
    b->cap = 0;
    b->max = (max == 0 || max > SIZE_MAX / 2) ? SIZE_MAX / 2 : max;
    b->err = 0;
}

void plait_buf_free(plait_buf_t *b)
{
    if (!b) return;
    wipe(b->data, b->cap);
    free(b->data);
    b->data = NULL;
    b->len = 0;
    b->cap = 0;
    b->err = 0;
}

void plait_buf_reset(plait_buf_t *b)
{
    b->len = 0;
    b->err = 0;
    if (b->data) b->data[0] = '\0';
}

int plait_buf_status(const plait_buf_t *b)
{
    return b->err;
}

/* Make room for extra more bytes plus the terminator. */
static int buf_reserve(plait_buf_t *b, size_t extra)
{
    if (b->err) return b->err;
    if (extra > b->max - b->len) {
        b->err = PLAIT_ETOOBIG;
        return plait_fail(PLAIT_ETOOBIG, "buf: text would exceed %zu bytes", b->max);
    }
    size_t need = b->len + extra + 1; /* <= SIZE_MAX / 2 + 1 */
    if (need <= b->cap) return 0;
    size_t nc = b->cap ? b->cap : 64;
    while (nc < need) nc = nc > SIZE_MAX / 4 ? need : nc * 2;
    /* malloc + copy + wipe rather than realloc, so no stale copy of the
     * text is left behind in freed memory. */
    char *d = malloc(nc);
    if (!d) {
        b->err = PLAIT_ENOMEM;
        return plait_fail(PLAIT_ENOMEM, "buf: out of memory");
    }
    if (b->data) {
        memcpy(d, b->data, b->len + 1);
        wipe(b->data, b->cap);
        free(b->data);
    }
    b->data = d;
    b->cap = nc;
    return 0;
}

int plait_buf_append(plait_buf_t *b, const char *s, size_t n)
{
    int rc = buf_reserve(b, n);
    if (rc != 0) return rc;
    if (n) memcpy(b->data + b->len, s, n);
    b->len += n;
    b->data[b->len] = '\0';
    return 0;
}

int plait_buf_vprintf(plait_buf_t *b, const char *fmt, va_list ap)
{
    if (b->err) return b->err;
    va_list ap2;
    va_copy(ap2, ap);
    int k = vsnprintf(NULL, 0, fmt, ap2);
    va_end(ap2);
    if (k < 0) return plait_fail(PLAIT_EINVAL, "buf: formatting error");
    int rc = buf_reserve(b, (size_t)k);
    if (rc != 0) return rc;
    vsnprintf(b->data + b->len, (size_t)k + 1, fmt, ap);
    b->len += (size_t)k;
    return 0;
}

int plait_buf_printf(plait_buf_t *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int rc = plait_buf_vprintf(b, fmt, ap);
    va_end(ap);
    return rc;
}

int plait_buf_json_string(plait_buf_t *b, const char *s, size_t n)
{
    size_t k = plait_json_escape(s, n, NULL, 0);
    int rc = buf_reserve(b, k > SIZE_MAX / 2 ? SIZE_MAX : k + 2); /* huge: sticky ETOOBIG */
    if (rc != 0) return rc;
    b->data[b->len++] = '"';
    plait_json_escape(s, n, b->data + b->len, k + 1);
    b->len += k;
    b->data[b->len++] = '"';
    b->data[b->len] = '\0';
    return 0;
}

int plait_buf_json_number(plait_buf_t *b, double x)
{
    if (!isfinite(x)) return plait_fail(PLAIT_EINVAL, "buf: NaN or infinity has no JSON form");
    if (x == floor(x) && fabs(x) <= 9007199254740992.0) return plait_buf_printf(b, "%.0f", x);
    return plait_buf_printf(b, "%.17g", x);
}
