/*
 * tok.c: the llama2.c BPE tokenizer: loading an untrusted export, encoding
 * exactly as run.c `encode` does, decoding as run.c `decode` does.
 *
 * Loading. The file has no token count, so the caller supplies V and the
 * parser checks that the file is consumed exactly. Before any per-token
 * allocation the file must be long enough for V empty tokens (8 bytes each),
 * so a tiny file cannot make us allocate for a huge V; the piece arena is
 * bounded by the file length.
 *
 * Encoding. run.c splits the text into code points (a lead byte and at most
 * three continuation bytes), maps each to its piece or to byte tokens, and
 * then repeatedly merges the adjacent pair whose concatenation is the
 * best-scoring piece, leftmost on ties, rescanning all pairs per merge:
 * O(n^2) lookups. Here the tokens form a doubly linked list and every
 * mergeable pair sits in a max-heap ordered by (score, -position). A heap
 * entry is stale once either token has changed (each node carries a version
 * counter) or has been merged away; stale entries are dropped when popped.
 * The valid entries are exactly the mergeable adjacent pairs of the current
 * list, and list order equals original position order, so the pair popped is
 * the pair run.c would pick: the output is identical, in O(n log n).
 *
 * Pieces are looked up by binary search over ids sorted by their bytes
 * (memcmp order, shorter first on a common prefix, then lower id), so a piece
 * that appears twice resolves to its lower id deterministically.
 */
#include "plait/tok.h"
#include "plait/gguf.h"
#include "tok_bpe_int.h"
#include "plait/crypto.h"
#include "plait/file.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "plait/model.h"
#include "plait/le.h"

void plait_tok_init(plait_tok_t *t)
{
    memset(t, 0, sizeof(*t));
}

void plait_tok_free(plait_tok_t *t)
{
    if (!t) return;
    free(t->vocab);
    free(t->lens);
    free(t->scores);
    free(t->byte_of);
    free(t->sorted);
    free(t->arena);
    plait__bpe_free(t->bpe);
    memset(t, 0, sizeof(*t));
}

static int32_t rd_i32(const uint8_t *p)
{
    uint32_t v = plait_le32(p);
    int32_t r;
    memcpy(&r, &v, 4);
    return r;
}

static float rd_f32(const uint8_t *p)
{
    uint32_t v = plait_le32(p);
    float r;
    memcpy(&r, &v, 4);
    return r;
}

/* Three-way compare of byte strings: memcmp order, a prefix sorts first. */
static int bytes_cmp(const char *a, size_t na, const char *b, size_t nb)
{
    int c = memcmp(a, b, na < nb ? na : nb);
    if (c != 0) return c;
    return na < nb ? -1 : (na > nb ? 1 : 0);
}

/* A sort record: qsort has no context argument, so each entry carries its
 * piece (a global context would make concurrent loads race). */
typedef struct {
    const char *p;
    uint32_t len;
    int id;
} sort_ent_t;

static int sort_cmp(const void *pa, const void *pb)
{
    const sort_ent_t *a = pa, *b = pb;
    int c = bytes_cmp(a->p, a->len, b->p, b->len);
    if (c != 0) return c;
    return a->id < b->id ? -1 : (a->id > b->id ? 1 : 0);
}

/* Id of the piece equal to s[0..n), the lowest id if repeated, or -1. */
static int lookup(const plait_tok_t *t, const char *s, size_t n)
{
    size_t lo = 0, hi = (size_t)t->vocab_size; /* first index whose piece >= s */
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int id = t->sorted[mid];
        if (bytes_cmp(t->vocab[id], t->lens[id], s, n) < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo < (size_t)t->vocab_size) {
        int id = t->sorted[lo];
        if (t->lens[id] == n && memcmp(t->vocab[id], s, n) == 0) return id;
    }
    return -1;
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
}

/* The byte a piece "<0xNN>" stands for, or -1. */
static int piece_byte(const char *p, uint32_t n)
{
    if (n != 6 || p[0] != '<' || p[1] != '0' || p[2] != 'x' || p[5] != '>') return -1;
    int hi = hexval(p[3]), lo = hexval(p[4]);
    if (hi < 0 || lo < 0) return -1;
    return hi * 16 + lo;
}

int plait_tok_parse(plait_tok_t *t, const uint8_t *buf, size_t len, int vocab_size)
{
    if (!t || (!buf && len > 0)) return plait_fail(PLAIT_EINVAL, "tokenizer: NULL argument");
    if (vocab_size < PLAIT_TOK_MIN_VOCAB || vocab_size > PLAIT_MODEL_MAX_VOCAB)
        return plait_fail(PLAIT_EINVAL, "tokenizer: vocab_size %d is outside %d..%d", vocab_size,
                          PLAIT_TOK_MIN_VOCAB, PLAIT_MODEL_MAX_VOCAB);
    if (len >= 4 && memcmp(buf, "GGUF", 4) == 0) return plait__tok_parse_gguf(t, buf, len, vocab_size);
    size_t V = (size_t)vocab_size;
    if (len < 4)
        return plait_fail(PLAIT_EPROTO, "tokenizer: file of %zu bytes is shorter than its header",
                          len);
    int32_t mtl = rd_i32(buf);
    if (mtl < 1 || mtl > PLAIT_TOK_MAX_PIECE)
        return plait_fail(PLAIT_EPROTO, "tokenizer: max_token_length %d is outside 1..%d", (int)mtl,
                          PLAIT_TOK_MAX_PIECE);
    /* Every token takes at least 8 bytes: refuse before allocating for V. */
    if ((len - 4) / 8 < V)
        return plait_fail(PLAIT_EPROTO,
                          "tokenizer: file of %zu bytes is truncated: %zu tokens need at least %zu",
                          len, V, 4 + 8 * V);

    int rc = PLAIT_ENOMEM;
    t->vocab = calloc(V, sizeof(char *));
    t->lens = calloc(V, sizeof(uint32_t));
    t->scores = calloc(V, sizeof(float));
    t->byte_of = calloc(V, sizeof(int16_t));
    t->sorted = calloc(V, sizeof(int));
    t->arena = malloc(len - 4 - 8 * V + V); /* piece bytes + one NUL each */
    if (!t->vocab || !t->lens || !t->scores || !t->byte_of || !t->sorted || !t->arena) {
        rc = plait_fail(PLAIT_ENOMEM, "tokenizer: tables for %zu tokens", V);
        goto fail;
    }
    size_t off = 4, aoff = 0;
    for (size_t i = 0; i < V; i++) {
        if (len - off < 8) {
            rc = plait_fail(PLAIT_EPROTO,
                            "tokenizer: truncated at token %zu (offset %zu): missing score/length",
                            i, off);
            goto fail;
        }
        float score = rd_f32(buf + off);
        int32_t n = rd_i32(buf + off + 4);
        off += 8;
        if (n < 0 || n > mtl) {
            rc = plait_fail(PLAIT_EPROTO,
                            "tokenizer: token %zu has length %d, outside 0..%d (max_token_length)",
                            i, (int)n, (int)mtl);
            goto fail;
        }
        /* The remaining tokens need 8 bytes each, which also keeps the
         * arena (sized for len - 4 - 8 V piece bytes) from overflowing. */
        size_t reserve = 8 * (V - 1 - i);
        if (len - off < reserve || len - off - reserve < (size_t)n) {
            rc = plait_fail(
                PLAIT_EPROTO,
                "tokenizer: truncated at token %zu (offset %zu): %d bytes declared, %zu left for "
                "%zu more tokens",
                i, off, (int)n, len - off, V - 1 - i);
            goto fail;
        }
        t->vocab[i] = t->arena + aoff;
        memcpy(t->arena + aoff, buf + off, (size_t)n);
        t->arena[aoff + (size_t)n] = '\0';
        aoff += (size_t)n + 1;
        off += (size_t)n;
        t->lens[i] = (uint32_t)n;
        t->scores[i] = score;
        t->byte_of[i] = (int16_t)piece_byte(t->vocab[i], (uint32_t)n);
    }
    if (off != len) {
        rc = plait_fail(PLAIT_EPROTO,
                        "tokenizer: %zu trailing bytes after %zu tokens (vocab_size mismatch?)",
                        len - off, V);
        goto fail;
    }
    t->vocab_size = vocab_size;
    t->max_token_length = (int)mtl;
    sort_ent_t *ents = malloc(V * sizeof(sort_ent_t));
    if (!ents) {
        rc = plait_fail(PLAIT_ENOMEM, "tokenizer: sort table for %zu tokens", V);
        goto fail;
    }
    for (size_t i = 0; i < V; i++)
        ents[i] = (sort_ent_t){.p = t->vocab[i], .len = t->lens[i], .id = (int)i};
    qsort(ents, V, sizeof(sort_ent_t), sort_cmp);
    for (size_t i = 0; i < V; i++)
        t->sorted[i] = ents[i].id;
    free(ents);
    for (int i = 0; i < 256; i++) {
        t->byte_pieces[2 * i] = (char)i;
        t->byte_pieces[2 * i + 1] = '\0';
    }
    t->space_id = lookup(t, " ", 1);
    if (t->space_id < 0) t->space_id = PLAIT_TOK_BYTE0 + ' ';
    return 0;
fail:
    plait_tok_free(t);
    return rc;
}

int plait_tok_load(plait_tok_t *t, const char *path, int vocab_size)
{
    if (!t || !path) return plait_fail(PLAIT_EINVAL, "tokenizer: NULL argument");
    {
        /* A GGUF file (a model with tokenizer metadata): map it rather than read it all. */
        int fd;
        uint8_t magic[4];
        if (plait_file_open(path, NULL, &fd, NULL) == 0) {
            int is_gguf = pread(fd, magic, 4, 0) == 4 && memcmp(magic, "GGUF", 4) == 0;
            close(fd);
            if (is_gguf) {
                int grc = plait__tok_load_gguf_file(t, path, vocab_size);
                if (grc != 0) {
                    char detail[256];
                    snprintf(detail, sizeof(detail), "%s", plait_errmsg());
                    grc = plait_fail(grc, "%s: %s", path, detail);
                }
                return grc;
            }
        }
    }
    uint8_t *buf = NULL;
    size_t sz = 0;
    /* Non-blocking, regular files only (a FIFO is refused), size-capped. */
    int rc = plait_file_read(path, NULL, PLAIT_TOK_MAX_FILE, &buf, &sz);
    if (rc != 0) return rc == PLAIT_ENOENT ? plait_fail(PLAIT_EIO, "%s", plait_errmsg()) : rc; /* documented: EIO */
    rc = plait_tok_parse(t, buf, sz, vocab_size);
    if (rc != 0) {
        /* Prefix the detail with the path, keeping the parser's words. */
        char detail[256];
        snprintf(detail, sizeof(detail), "%s", plait_errmsg());
        rc = plait_fail(rc, "%s: %s", path, detail);
    }
    free(buf);
    return rc;
}

size_t plait_tok_encode_bound(size_t len)
{
    return len + 3;
}

/* ------------------------------------------------------------- encoding */

typedef struct {
    int id;         /* current token */
    int prev, next; /* list neighbours, -1 at the ends */
    uint32_t ver;   /* bumped whenever id changes; 0 marks a merged-away node */
} node_t;

typedef struct {
    float score; /* score of the merged piece */
    int left;    /* node index of the left token (its original position) */
    int id;      /* merged piece */
    uint32_t lver, rver;
    int right;
} cand_t;

/* Heap order: higher score first, then leftmost. */
static int cand_before(const cand_t *a, const cand_t *b)
{
    if (a->score != b->score) return a->score > b->score;
    return a->left < b->left;
}

static void heap_push(cand_t *h, size_t *n, cand_t c)
{
    size_t i = (*n)++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!cand_before(&c, &h[p])) break;
        h[i] = h[p];
        i = p;
    }
    h[i] = c;
}

static cand_t heap_pop(cand_t *h, size_t *n)
{
    cand_t top = h[0], last = h[--(*n)];
    size_t i = 0;
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = l;
        if (l >= *n) break;
        if (r < *n && cand_before(&h[r], &h[l])) m = r;
        if (!cand_before(&h[m], &last)) break;
        h[i] = h[m];
        i = m;
    }
    h[i] = last;
    return top;
}

typedef struct {
    const plait_tok_t *t;
    node_t *nodes;
    cand_t *heap;
    size_t nheap, capheap;
    char *buf; /* (2 * max_token_length) */
} enc_t;

/* Push the pair (a, a.next) if its concatenation is a piece run.c would
 * merge. \return 0 or PLAIT_ENOMEM. */
static int try_pair(enc_t *e, int a)
{
    if (a < 0) return 0;
    int b = e->nodes[a].next;
    if (b < 0) return 0;
    const plait_tok_t *t = e->t;
    int ia = e->nodes[a].id, ib = e->nodes[b].id;
    size_t na = t->lens[ia], nb = t->lens[ib];
    if (na + nb > (size_t)t->max_token_length) return 0; /* no piece is that long */
    memcpy(e->buf, t->vocab[ia], na);
    memcpy(e->buf + na, t->vocab[ib], nb);
    int id = lookup(t, e->buf, na + nb);
    /* run.c starts from best_score = -1e10 and needs a strictly greater score. */
    if (id < 0 || !(t->scores[id] > -1e10f)) return 0;
    if (e->nheap == e->capheap) {
        /* Rarely needed: most pairs never merge, so the heap starts at n. */
        size_t ncap = e->capheap + e->capheap / 2 + 16;
        cand_t *nh = realloc(e->heap, ncap * sizeof(cand_t));
        if (!nh) return PLAIT_ENOMEM;
        e->heap = nh;
        e->capheap = ncap;
    }
    cand_t c = {.score = t->scores[id],
                .left = a,
                .id = id,
                .lver = e->nodes[a].ver,
                .rver = e->nodes[b].ver,
                .right = b};
    heap_push(e->heap, &e->nheap, c);
    return 0;
}

int plait_tok_encode(const plait_tok_t *t, const char *text, size_t len, int bos, int eos,
                     int *tokens, size_t cap, size_t *n_out)
{
    if (t && t->bpe && (text || len == 0) && (tokens || cap == 0) && n_out)
        return plait__bpe_encode(t, text, len, bos, eos, tokens, cap, n_out);
    if (!t || !t->sorted || (!text && len > 0) || (!tokens && cap > 0) || !n_out)
        return plait_fail(PLAIT_EINVAL, "tok_encode: NULL argument or tokenizer not loaded");
    *n_out = 0;
    if (len > (size_t)INT32_MAX - 3)
        return plait_fail(PLAIT_ETOOBIG, "tok_encode: text of %zu bytes", len);
    size_t maxn = len + 2; /* BOS, dummy prefix, one token per byte */
    int rc = 0;
    enc_t e = {.t = t};
    e.nodes = malloc(maxn * sizeof(node_t));
    /* Initial pairs (maxn - 1); each merge adds at most two, so the heap
     * grows on demand up to 3 maxn. */
    e.capheap = maxn;
    e.heap = malloc(e.capheap * sizeof(cand_t));
    e.buf = malloc(2 * (size_t)t->max_token_length + 1);
    if (!e.nodes || !e.heap || !e.buf) {
        rc = plait_fail(PLAIT_ENOMEM, "tok_encode: work space for %zu bytes", len);
        goto exit;
    }

    /* 1. Code points to pieces, or to byte tokens. */
    int n = 0;
    if (bos) e.nodes[n++].id = PLAIT_TOK_BOS;
    if (len > 0) e.nodes[n++].id = t->space_id;
    const unsigned char *s = (const unsigned char *)text;
    size_t start = 0;
    while (start < len) {
        /* A code point: this byte plus up to three continuation bytes (run.c
         * also starts a new one at a stray continuation byte after four). */
        size_t end = start + 1;
        while (end < len && (s[end] & 0xC0) == 0x80 && end - start < 4)
            end++;
        int id = lookup(t, text + start, end - start);
        if (id >= 0) {
            e.nodes[n++].id = id;
        } else {
            for (size_t i = start; i < end; i++)
                e.nodes[n++].id = PLAIT_TOK_BYTE0 + s[i];
        }
        start = end;
    }
    for (int i = 0; i < n; i++) {
        e.nodes[i].prev = i - 1;
        e.nodes[i].next = i + 1 < n ? i + 1 : -1;
        e.nodes[i].ver = 1;
    }

    /* 2. Merge the best pair until none is left. */
    for (int i = 0; i + 1 < n && rc == 0; i++)
        rc = try_pair(&e, i);
    int count = n;
    while (e.nheap > 0 && rc == 0) {
        cand_t c = heap_pop(e.heap, &e.nheap);
        node_t *a = &e.nodes[c.left], *b = &e.nodes[c.right];
        if (a->ver != c.lver || b->ver != c.rver || a->next != c.right) continue; /* stale */
        a->id = c.id;
        a->ver++;
        a->next = b->next;
        if (b->next >= 0) e.nodes[b->next].prev = c.left;
        b->ver = 0;
        count--;
        rc = try_pair(&e, a->prev);
        if (rc == 0) rc = try_pair(&e, c.left);
    }
    if (rc != 0) {
        rc = plait_fail(PLAIT_ENOMEM, "tok_encode: merge heap for %zu bytes", len);
        goto exit;
    }

    /* 3. Copy out. */
    size_t need = (size_t)count + (eos ? 1 : 0);
    if (need > cap) {
        rc = plait_fail(PLAIT_ETOOBIG, "tok_encode: %zu tokens do not fit in %zu", need, cap);
        goto exit;
    }
    size_t k = 0;
    for (int i = n > 0 ? 0 : -1; i >= 0; i = e.nodes[i].next)
        tokens[k++] = e.nodes[i].id;
    if (eos) tokens[k++] = PLAIT_TOK_EOS;
    *n_out = k;
exit:
    /* The work buffers held the user's text and its tokens. */
    if (e.nodes) plait_zeroize(e.nodes, maxn * sizeof(node_t));
    if (e.heap) plait_zeroize(e.heap, e.capheap * sizeof(cand_t));
    if (e.buf) plait_zeroize(e.buf, 2 * (size_t)t->max_token_length + 1);
    free(e.nodes);
    free(e.heap);
    free(e.buf);
    return rc;
}

/* ------------------------------------------------------------- decoding */

const char *plait_tok_decode(const plait_tok_t *t, int prev_token, int token, size_t *len)
{
    if (len) *len = 0;
    if (!t || !t->vocab || token < 0 || token >= t->vocab_size) return NULL;
    const char *p = t->vocab[token];
    size_t n = t->lens[token];
    if (t->bpe) { /* raw bytes; no BOS convention */
        if (len) *len = n;
        return p;
    }
    if (prev_token == PLAIT_TOK_BOS && n > 0 && p[0] == ' ') {
        p++;
        n--;
    }
    int b = t->byte_of[token];
    if (b >= 0) {
        p = t->byte_pieces + 2 * b;
        n = 1;
    }
    if (len) *len = n;
    return p;
}

int plait_tok_piece_is_printable(const char *piece, size_t len)
{
    if (!piece || len == 0) return 1;
    if (len == 1) {
        unsigned char c = (unsigned char)piece[0];
        /* isprint/isspace in the C locale, without depending on the locale. */
        int print = c >= 0x20 && c <= 0x7E;
        int space = c == ' ' || (c >= '\t' && c <= '\r');
        return print || space;
    }
    return 1;
}
