/*
 * tok_bpe.c: GPT-2-style byte-level BPE (SmolLM2, Qwen2, GPT-2) from GGUF
 * metadata: tokenizer.ggml.model = "gpt2", tokenizer.ggml.tokens (pieces in
 * GPT-2's byte-to-unicode alphabet, "Ġ" for a space), tokenizer.ggml.merges
 * ("A B" strings, best first), tokenizer.ggml.token_type (optional: 3
 * control and 4 user-defined tokens are never produced from text),
 * tokenizer.ggml.pre (pre-tokenizer: "gpt2"/"default", "smollm", "qwen2";
 * absent = "gpt2"), tokenizer.ggml.{bos,eos}_token_id (optional).
 *
 * Encoding: the text is split by the pre-tokenizer's regex (hand-written
 * matchers below, with Unicode letter/number classes from unicode_tab.c),
 * each piece starts as its bytes' tokens and the adjacent pair with the
 * best merge rank is merged until none is left (as GPT-2's encoder.py).
 * Special tokens written in the text are not recognized: they encode as
 * their characters. BOS / EOS are added when asked and the file names them.
 * Invalid UTF-8 is split byte by byte, each byte a piece of class "other".
 */
#include "tok_bpe_int.h"

#include <stdlib.h>
#include <string.h>

struct plait_bpe_s {
    int pre;
    int bos_id, eos_id; /* -1: none */
    int byte_id[256];
    size_t cap;       /* slots of the piece hash (power of two) */
    int32_t *slots;   /* id + 1, or 0 */
    size_t mcap;      /* slots of the merge hash */
    uint64_t *mkey;   /* (a + 1) << 32 | (b + 1), 0 = empty */
    uint32_t *mrank;
    int32_t *mres;    /* id of the merged piece */
};

void plait__bpe_free(struct plait_bpe_s *b)
{
    if (!b) return;
    free(b->slots);
    free(b->mkey);
    free(b->mrank);
    free(b->mres);
    free(b);
}

/* ----------------------------------------------------------- hashing */

static uint64_t fnv(const char *s, size_t n)
{
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++) h = (h ^ (uint8_t)s[i]) * 1099511628211ull;
    return h;
}

static int find_piece(const plait_tok_t *t, const char *s, size_t n)
{
    const struct plait_bpe_s *b = t->bpe;
    for (size_t i = (size_t)fnv(s, n) & (b->cap - 1);; i = (i + 1) & (b->cap - 1)) {
        int32_t v = b->slots[i];
        if (v == 0) return -1;
        if (t->lens[v - 1] == n && memcmp(t->vocab[v - 1], s, n) == 0) return v - 1;
    }
}

static uint64_t mix(uint64_t k)
{
    k ^= k >> 33;
    k *= 0xff51afd7ed558ccdull;
    k ^= k >> 33;
    return k;
}

/* Rank of merging (a, b), or UINT32_MAX; *res gets the merged id. */
static uint32_t merge_rank(const struct plait_bpe_s *b, int x, int y, int *res)
{
    if (b->mcap == 0) return UINT32_MAX;
    uint64_t key = (uint64_t)(x + 1) << 32 | (uint64_t)(uint32_t)(y + 1);
    for (size_t i = (size_t)mix(key) & (b->mcap - 1);; i = (i + 1) & (b->mcap - 1)) {
        if (b->mkey[i] == 0) return UINT32_MAX;
        if (b->mkey[i] == key) {
            *res = b->mres[i];
            return b->mrank[i];
        }
    }
}

/* ------------------------------------------- GPT-2 byte <-> unicode */

static int printable_byte(int c) { return (c >= '!' && c <= '~') || (c >= 0xA1 && c <= 0xAC) || (c >= 0xAE); }

/* Decode one UTF-8 code point at s (n bytes left); returns its length, or 0 if invalid. */
static size_t utf8_dec(const uint8_t *s, size_t n, uint32_t *cp)
{
    if (n == 0) return 0;
    uint8_t c = s[0];
    size_t len;
    uint32_t v;
    if (c < 0x80) return *cp = c, 1;
    if ((c & 0xE0) == 0xC0) len = 2, v = c & 0x1F;
    else if ((c & 0xF0) == 0xE0) len = 3, v = c & 0x0F;
    else if ((c & 0xF8) == 0xF0) len = 4, v = c & 0x07;
    else return 0;
    if (len > n) return 0;
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xC0) != 0x80) return 0;
        v = v << 6 | (s[i] & 0x3F);
    }
    static const uint32_t minv[5] = {0, 0, 0x80, 0x800, 0x10000};
    if (v < minv[len] || v > 0x10FFFF || (v >= 0xD800 && v <= 0xDFFF)) return 0;
    *cp = v;
    return len;
}

/* Raw bytes of a byte-level piece into out (n bytes of it at most); returns
 * the length, or (size_t)-1 when a character is outside GPT-2's alphabet
 * (printable bytes map to themselves, the other 68 to U+0100 ... U+0143). */
static size_t piece_bytes(const char *s, size_t n, char *out)
{
    size_t o = 0;
    for (size_t i = 0; i < n;) {
        uint32_t cp;
        size_t l = utf8_dec((const uint8_t *)s + i, n - i, &cp);
        int byte = -1;
        if (l != 0 && cp < 256 && printable_byte((int)cp)) {
            byte = (int)cp;
        } else if (l != 0 && cp >= 256 && cp < 256 + 68) { /* the (cp - 256)-th non-printable byte */
            for (int c = 0, k = 0; c < 256; c++)
                if (!printable_byte(c) && k++ == (int)(cp - 256)) {
                    byte = c;
                    break;
                }
        }
        if (byte < 0) return (size_t)-1;
        out[o++] = (char)byte;
        i += l;
    }
    return o;
}

/* ------------------------------------------------------------ loading */

static int str_eq(const char *s, size_t n, const char *lit) { return strlen(lit) == n && memcmp(s, lit, n) == 0; }

int plait__bpe_parse_gguf(plait_tok_t *t, const plait_gguf_t *g, int vocab_size)
{
    size_t V = (size_t)vocab_size;
    const plait_gguf_kv_t *toks = plait_gguf_find(g, "tokenizer.ggml.tokens");
    const plait_gguf_kv_t *merges = plait_gguf_find(g, "tokenizer.ggml.merges");
    const plait_gguf_kv_t *types = plait_gguf_find(g, "tokenizer.ggml.token_type");
    if (!toks || toks->type != PLAIT_GGUF_ARR || toks->arr_type != PLAIT_GGUF_STR || toks->arr_n != V)
        return plait_fail(PLAIT_EPROTO, "tokenizer: tokenizer.ggml.tokens is not an array of %zu strings", V);
    if (!merges || merges->type != PLAIT_GGUF_ARR || merges->arr_type != PLAIT_GGUF_STR || merges->arr_n > UINT32_MAX)
        return plait_fail(PLAIT_EPROTO, "tokenizer: tokenizer.ggml.merges is missing or not a string array");
    if (types && (types->type != PLAIT_GGUF_ARR || types->arr_type != PLAIT_GGUF_I32 || types->arr_n != V))
        return plait_fail(PLAIT_EPROTO, "tokenizer: tokenizer.ggml.token_type is not %zu i32 values", V);
    int pre = PLAIT_BPE_PRE_GPT2;
    const char *ps;
    size_t pn;
    if (plait_gguf_find(g, "tokenizer.ggml.pre")) {
        int grc = plait_gguf_get_str(g, "tokenizer.ggml.pre", &ps, &pn);
        if (grc != 0) return grc;
        if (str_eq(ps, pn, "gpt2") || str_eq(ps, pn, "default")) pre = PLAIT_BPE_PRE_GPT2;
        else if (str_eq(ps, pn, "smollm")) pre = PLAIT_BPE_PRE_SMOLLM;
        else if (str_eq(ps, pn, "qwen2")) pre = PLAIT_BPE_PRE_QWEN2;
        else
            return plait_fail(PLAIT_EPROTO, "tokenizer: pre-tokenizer '%.*s' is not supported (gpt2, smollm, qwen2)",
                              (int)(pn > 40 ? 40 : pn), ps);
    }
    struct plait_bpe_s *b = calloc(1, sizeof(*b));
    if (!b) return plait_fail(PLAIT_ENOMEM, "tokenizer: bpe");
    int rc = PLAIT_EPROTO;
    t->bpe = b;
    b->pre = pre;
    b->bos_id = b->eos_id = -1;
    uint64_t v;
    if (plait_gguf_find(g, "tokenizer.ggml.bos_token_id")) {
        if (plait_gguf_get_uint(g, "tokenizer.ggml.bos_token_id", V - 1, &v) != 0) goto bad;
        b->bos_id = (int)v;
    }
    if (plait_gguf_find(g, "tokenizer.ggml.eos_token_id")) {
        if (plait_gguf_get_uint(g, "tokenizer.ggml.eos_token_id", V - 1, &v) != 0) goto bad;
        b->eos_id = (int)v;
    }
    /* Pieces: raw bytes are never longer than the byte-level text, so the
     * arena is bounded by the metadata's size. */
    size_t total = 0;
    const uint8_t *p = toks->val;
    for (size_t i = 0; i < V; i++) {
        uint64_t n;
        memcpy(&n, p, 8);
        total += (size_t)n + 1;
        p += 8 + n;
    }
    t->vocab = calloc(V, sizeof(char *));
    t->lens = calloc(V, sizeof(uint32_t));
    t->arena = malloc(total ? total : 1);
    for (b->cap = 16; b->cap < 2 * V; b->cap *= 2) {}
    b->slots = calloc(b->cap, sizeof(int32_t));
    if (!t->vocab || !t->lens || !t->arena || !b->slots) {
        rc = plait_fail(PLAIT_ENOMEM, "tokenizer: tables for %zu tokens", V);
        goto fail;
    }
    for (int c = 0; c < 256; c++) b->byte_id[c] = -1;
    size_t ao = 0;
    p = toks->val;
    for (size_t i = 0; i < V; i++) {
        uint64_t n64;
        memcpy(&n64, p, 8);
        size_t n = (size_t)n64;
        const char *s = (const char *)p + 8;
        p += 8 + n;
        int32_t ty = 1;
        if (types) memcpy(&ty, types->val + 4 * i, 4);
        size_t r = (ty == 3 || ty == 4) ? (size_t)-1 : piece_bytes(s, n, t->arena + ao);
        int special = r == (size_t)-1;
        if (special) { /* control, user-defined or outside the alphabet: its text as is */
            memcpy(t->arena + ao, s, n);
            r = n;
        }
        t->vocab[i] = t->arena + ao;
        t->lens[i] = (uint32_t)r;
        t->arena[ao + r] = '\0';
        ao += r + 1;
        if (special) continue;
        if (r == 1 && b->byte_id[(uint8_t)t->vocab[i][0]] < 0) b->byte_id[(uint8_t)t->vocab[i][0]] = (int)i;
        if (find_piece(t, t->vocab[i], r) >= 0) continue; /* a duplicate: the first id wins */
        size_t k = (size_t)fnv(t->vocab[i], r) & (b->cap - 1);
        while (b->slots[k]) k = (k + 1) & (b->cap - 1);
        b->slots[k] = (int32_t)i + 1;
    }
    for (int c = 0; c < 256; c++)
        if (b->byte_id[c] < 0) {
            rc = plait_fail(PLAIT_EPROTO, "tokenizer: no token for byte 0x%02X (byte-level BPE needs all 256)", c);
            goto fail;
        }
    size_t M = (size_t)merges->arr_n;
    for (b->mcap = 16; b->mcap < 2 * M; b->mcap *= 2) {}
    b->mkey = calloc(b->mcap, sizeof(uint64_t));
    b->mrank = calloc(b->mcap, sizeof(uint32_t));
    b->mres = calloc(b->mcap, sizeof(int32_t));
    char *tmp = malloc(2 * (total + 1));
    if (!b->mkey || !b->mrank || !b->mres || !tmp) {
        free(tmp);
        rc = plait_fail(PLAIT_ENOMEM, "tokenizer: %zu merges", M);
        goto fail;
    }
    p = merges->val;
    for (size_t m = 0; m < M; m++) {
        uint64_t n64;
        memcpy(&n64, p, 8);
        size_t n = (size_t)n64;
        const char *s = (const char *)p + 8;
        p += 8 + n;
        if (n > 2 * total) { /* a real merge is two tokens and a space; tmp holds 2 * (total + 1) bytes */
            free(tmp);
            rc = plait_fail(PLAIT_EPROTO, "tokenizer: merge %zu is %zu bytes, longer than any two tokens", m, n);
            goto fail;
        }
        const char *sp = memchr(s, ' ', n);
        size_t la = sp ? piece_bytes(s, (size_t)(sp - s), tmp) : (size_t)-1;
        size_t lb = sp && la != (size_t)-1 ? piece_bytes(sp + 1, n - (size_t)(sp - s) - 1, tmp + la) : (size_t)-1;
        int x = -1, y = -1, z = -1;
        if (lb != (size_t)-1) {
            x = find_piece(t, tmp, la);
            y = find_piece(t, tmp + la, lb);
            z = find_piece(t, tmp, la + lb);
        }
        if (x < 0 || y < 0 || z < 0) {
            free(tmp);
            rc = plait_fail(PLAIT_EPROTO, "tokenizer: merge %zu ('%.*s') does not join two tokens into a token", m,
                       (int)(n > 40 ? 40 : n), s);
            goto fail;
        }
        uint64_t key = (uint64_t)(x + 1) << 32 | (uint64_t)(uint32_t)(y + 1);
        size_t k = (size_t)mix(key) & (b->mcap - 1);
        while (b->mkey[k] && b->mkey[k] != key) k = (k + 1) & (b->mcap - 1);
        if (b->mkey[k]) continue; /* repeated merge: the better rank stays */
        b->mkey[k] = key;
        b->mrank[k] = (uint32_t)m;
        b->mres[k] = z;
    }
    free(tmp);
    t->vocab_size = vocab_size;
    t->max_token_length = 0;
    for (size_t i = 0; i < V; i++)
        if ((int)t->lens[i] > t->max_token_length) t->max_token_length = (int)t->lens[i];
    return 0;
bad:
    rc = plait_fail(PLAIT_EPROTO, "tokenizer: bos/eos token id outside 0..%zu", V - 1);
fail:
    plait_tok_free(t);
    return rc;
}

/* ------------------------------------------------------- pre-tokenizer */

typedef struct {
    uint32_t cp;
    size_t off; /* byte offset of the code point */
    int cls;    /* 'L', 'N', 'S' (whitespace), 'O' (other; also invalid bytes) */
} ch_t;

static int is_nl(uint32_t c) { return c == '\r' || c == '\n'; }

static uint32_t lower(uint32_t c) { return c >= 'A' && c <= 'Z' ? c + 32 : c; }

/* Length (in code points) of a contraction at i: 's 't 're 've 'm 'll 'd. */
static size_t contraction(const ch_t *c, size_t i, size_t n, int fold)
{
    if (c[i].cp != '\'' || i + 1 >= n) return 0;
    uint32_t a = fold ? lower(c[i + 1].cp) : c[i + 1].cp;
    uint32_t b = i + 2 < n ? (fold ? lower(c[i + 2].cp) : c[i + 2].cp) : 0;
    if (a == 's' || a == 't' || a == 'm' || a == 'd') return 2;
    if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l')) return 3;
    return 0;
}

static size_t run(const ch_t *c, size_t i, size_t n, int cls)
{
    size_t j = i;
    while (j < n && c[j].cls == cls) j++;
    return j - i;
}

/* Whitespace alternatives shared by both regexes: \s+(?!\S) | \s+. */
static size_t spaces(const ch_t *c, size_t i, size_t n)
{
    size_t k = run(c, i, n, 'S');
    if (i + k == n || k == 1) return k;
    return k - 1; /* leave one space to lead the next word */
}

/* GPT-2: 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+ */
static size_t match_gpt2(const ch_t *c, size_t i, size_t n)
{
    size_t k = contraction(c, i, n, 0);
    if (k) return k;
    size_t sp = c[i].cp == ' ' && i + 1 < n ? 1 : 0;
    static const int cls[3] = {'L', 'N', 'O'};
    for (int a = 0; a < 3; a++) {
        if (sp && c[i + 1].cls == cls[a]) return 1 + run(c, i + 1, n, cls[a]);
        if (c[i].cls == cls[a]) return run(c, i, n, cls[a]);
    }
    return spaces(c, i, n);
}

/* Qwen2: (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|
 *        \s*[\r\n]+|\s+(?!\S)|\s+ */
static size_t match_qwen2(const ch_t *c, size_t i, size_t n)
{
    size_t k = contraction(c, i, n, 1);
    if (k) return k;
    if (c[i].cls == 'L') return run(c, i, n, 'L');
    if (c[i].cls != 'N' && !is_nl(c[i].cp) && i + 1 < n && c[i + 1].cls == 'L') return 1 + run(c, i + 1, n, 'L');
    if (c[i].cls == 'N') return 1;
    size_t sp = c[i].cp == ' ' && i + 1 < n && c[i + 1].cls == 'O' ? 1 : 0;
    if (c[i + sp].cls == 'O') {
        size_t j = i + sp + run(c, i + sp, n, 'O');
        while (j < n && is_nl(c[j].cp)) j++;
        return j - i;
    }
    /* \s*[\r\n]+: through the last newline of the whitespace run. */
    size_t w = run(c, i, n, 'S'), last = 0;
    for (size_t j = i; j < i + w; j++)
        if (is_nl(c[j].cp)) last = j + 1;
    if (last) return last - i;
    return spaces(c, i, n);
}

int plait__bpe_pretokenize(int pre, const char *text, size_t len, int (*fn)(void *ctx, size_t b, size_t e),
                           void *ctx)
{
    ch_t *c = malloc((len ? len : 1) * sizeof(ch_t));
    if (!c) return plait_fail(PLAIT_ENOMEM, "tok_encode: %zu bytes", len);
    size_t n = 0;
    for (size_t i = 0; i < len;) {
        uint32_t cp = 0xFFFD;
        size_t l = utf8_dec((const uint8_t *)text + i, len - i, &cp);
        int cls = 'O';
        if (l == 0) l = 1; /* an invalid byte: a character of its own, class other */
        else if (plait__uni_is_space(cp)) cls = 'S';
        else if (plait__uni_is_letter(cp)) cls = 'L';
        else if (plait__uni_is_number(cp)) cls = 'N';
        c[n++] = (ch_t){cp, i, cls};
        i += l;
    }
    int rc = 0;
    size_t i = 0;
    while (i < n && rc == 0) {
        size_t k;
        if (pre == PLAIT_BPE_PRE_QWEN2) {
            k = match_qwen2(c, i, n);
        } else if (pre == PLAIT_BPE_PRE_SMOLLM) {
            /* each number alone; GPT-2's regex on the text between numbers */
            if (c[i].cls == 'N') {
                k = 1;
            } else {
                size_t e = i;
                while (e < n && c[e].cls != 'N') e++;
                k = match_gpt2(c, i, e);
            }
        } else {
            k = match_gpt2(c, i, n);
        }
        size_t e = i + k;
        rc = fn(ctx, c[i].off, e < n ? c[e].off : len);
        i = e;
    }
    free(c);
    return rc;
}

/* ------------------------------------------------------------- encoding */

typedef struct {
    const plait_tok_t *t;
    const char *text;
    int *out;
    size_t cap, n;
    int *sym; /* work space: one id per byte of the longest piece */
} benc_t;

static int encode_piece(void *ctx, size_t b0, size_t e0)
{
    benc_t *e = ctx;
    const struct plait_bpe_s *b = e->t->bpe;
    size_t n = 0;
    for (size_t i = b0; i < e0; i++) e->sym[n++] = b->byte_id[(uint8_t)e->text[i]];
    /* Merge the best-ranked adjacent pair until none is left. */
    for (;;) {
        uint32_t best = UINT32_MAX;
        size_t at = 0;
        int res = -1;
        for (size_t i = 0; i + 1 < n; i++) {
            int r;
            uint32_t rk = merge_rank(b, e->sym[i], e->sym[i + 1], &r);
            if (rk < best) best = rk, at = i, res = r;
        }
        if (best == UINT32_MAX) break;
        e->sym[at] = res;
        memmove(e->sym + at + 1, e->sym + at + 2, (n - at - 2) * sizeof(int));
        n--;
    }
    if (e->cap - e->n < n) return plait_fail(PLAIT_ETOOBIG, "tok_encode: more than %zu tokens", e->cap);
    memcpy(e->out + e->n, e->sym, n * sizeof(int));
    e->n += n;
    return 0;
}

int plait__bpe_encode(const plait_tok_t *t, const char *text, size_t len, int bos, int eos, int *tokens, size_t cap,
                      size_t *n_out)
{
    const struct plait_bpe_s *b = t->bpe;
    benc_t e = {.t = t, .text = text, .out = tokens, .cap = cap};
    e.sym = malloc((len ? len : 1) * sizeof(int));
    if (!e.sym) return plait_fail(PLAIT_ENOMEM, "tok_encode: %zu bytes", len);
    int rc = 0;
    if (bos && b->bos_id >= 0) {
        if (cap == 0) rc = plait_fail(PLAIT_ETOOBIG, "tok_encode: no room for BOS");
        else tokens[e.n++] = b->bos_id;
    }
    if (rc == 0) rc = plait__bpe_pretokenize(b->pre, text, len, encode_piece, &e);
    if (rc == 0 && eos && b->eos_id >= 0) {
        if (e.n == cap) rc = plait_fail(PLAIT_ETOOBIG, "tok_encode: no room for EOS");
        else tokens[e.n++] = b->eos_id;
    }
    free(e.sym);
    *n_out = rc == 0 ? e.n : 0;
    return rc;
}
