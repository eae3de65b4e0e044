/*
 * data.c: token corpora from the device store, random training windows and
 * evaluation windows (see data.h for the conventions).
 *
 * The corpus holds private text in token form, so it is wiped on free.
 */
#include "plait/data.h"
#include "plait/crypto.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

_Static_assert(sizeof(int) == sizeof(int32_t), "tokens are stored as int32");

void plait_corpus_init(plait_corpus_t *c)
{
    memset(c, 0, sizeof(*c));
    c->max_tokens = PLAIT_CORPUS_DEFAULT_MAX;
}

void plait_corpus_free(plait_corpus_t *c)
{
    if (!c) return;
    if (c->tokens) plait_zeroize(c->tokens, c->cap * sizeof(int32_t));
    free(c->tokens);
    size_t max = c->max_tokens;
    memset(c, 0, sizeof(*c));
    c->max_tokens = max;
}

static int reserve(plait_corpus_t *c, size_t extra)
{
    if (extra > c->max_tokens || c->n > c->max_tokens - extra)
        return plait_fail(PLAIT_ETOOBIG, "corpus would exceed %zu tokens", c->max_tokens);
    size_t need = c->n + extra;
    if (need <= c->cap) return 0;
    size_t cap = c->cap ? c->cap : 4096;
    while (cap < need) cap = cap > c->max_tokens / 2 ? c->max_tokens : cap * 2;
    int32_t *t = malloc(cap * sizeof(int32_t));
    if (!t) return plait_fail(PLAIT_ENOMEM, "corpus of %zu tokens", cap);
    if (c->tokens) {
        memcpy(t, c->tokens, c->n * sizeof(int32_t));
        plait_zeroize(c->tokens, c->cap * sizeof(int32_t));
        free(c->tokens);
    }
    c->tokens = t;
    c->cap = cap;
    return 0;
}

int plait_corpus_add_text(plait_corpus_t *c, const plait_tok_t *tok, const char *text, size_t len)
{
    size_t bound = plait_tok_encode_bound(len);
    int rc = reserve(c, bound);
    if (rc != 0) return rc;
    size_t n = 0;
    rc = plait_tok_encode(tok, text, len, 1, 0, (int *)(c->tokens + c->n), c->cap - c->n, &n);
    if (rc != 0) return rc;
    c->n += n;
    c->n_records++;
    return 0;
}

typedef struct {
    plait_corpus_t *c;
    const plait_tok_t *tok;
} add_ctx_t;

static int on_record(void *ud, const plait_store_record_t *rec)
{
    add_ctx_t *a = ud;
    return plait_corpus_add_text(a->c, a->tok, rec->text, rec->len);
}

int plait_corpus_add_store(plait_corpus_t *c, const plait_tok_t *tok, plait_store_t *st,
                           plait_store_split_t split)
{
    add_ctx_t a = {c, tok};
    return plait_store_foreach(st, split, on_record, &a);
}

uint64_t plait_rand_u64(uint64_t *s)
{
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

int plait_corpus_sample(const plait_corpus_t *c, int B, int T, uint64_t *rng, int32_t *out)
{
    if (B < 1 || T < 1) return plait_fail(PLAIT_EINVAL, "corpus: batch %d x %d", B, T);
    size_t W = (size_t)T + 1;
    if (c->n < W)
        return plait_fail(PLAIT_EINVAL, "corpus holds %zu tokens, fewer than one window of %zu", c->n, W);
    size_t starts = c->n - W + 1;
    for (int b = 0; b < B; b++) {
        /* Rejection-free: the modulo bias is below starts / 2^64, negligible. */
        size_t s = (size_t)(plait_rand_u64(rng) % starts);
        memcpy(out + (size_t)b * W, c->tokens + s, W * sizeof(int32_t));
    }
    return 0;
}

size_t plait_corpus_n_windows(const plait_corpus_t *c, int T)
{
    if (T < 1 || c->n < 2) return 0;
    return (c->n - 1) / (size_t)T;
}

int plait_corpus_eval(const plait_corpus_t *c, plait_trainer_t *tr, int T, size_t max_windows,
                      double *loss, size_t *n_tokens)
{
    /* The trainer reads rows of its own T + 1 tokens from the staging buffer. */
    if (T != plait_train_seq_len(tr))
        return plait_fail(PLAIT_EINVAL, "corpus eval: T = %d but the trainer was made for T = %d", T,
                          plait_train_seq_len(tr));
    size_t nw = plait_corpus_n_windows(c, T);
    if (max_windows && nw > max_windows) nw = max_windows;
    if (nw == 0)
        return plait_fail(PLAIT_EINVAL, "corpus of %zu tokens has no evaluation window of %d + 1", c->n, T);
    /* Evaluate in chunks so the staging buffer stays small. */
    size_t chunk = 64, W = (size_t)T + 1;
    int32_t *rows = malloc(chunk * W * sizeof(int32_t));
    if (!rows) return plait_fail(PLAIT_ENOMEM, "eval staging buffer");
    double sum = 0.0;
    int rc = 0;
    for (size_t w = 0; w < nw; w += chunk) {
        size_t k = nw - w < chunk ? nw - w : chunk;
        for (size_t i = 0; i < k; i++)
            memcpy(rows + i * W, c->tokens + (w + i) * (size_t)T, W * sizeof(int32_t));
        float l;
        if ((rc = plait_train_eval_loss(tr, rows, k, &l)) != 0) break;
        if (!isfinite(l)) {
            /* The model or adapter overflows float32: a NaN perplexity is
             * not a measurement. */
            rc = plait_fail(PLAIT_EPROTO, "eval: non-finite loss (the model or adapter overflows float32)");
            break;
        }
        sum += (double)l * (double)k;
    }
    plait_zeroize(rows, chunk * W * sizeof(int32_t));
    free(rows);
    if (rc != 0) return rc;
    *loss = sum / (double)nw;
    if (n_tokens) *n_tokens = nw * (size_t)T;
    return 0;
}
