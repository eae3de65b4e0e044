/*
 * tok_gguf.c: SentencePiece-style (llama) tokenizers from GGUF metadata, and
 * the same tokenizer written as GGUF metadata (by `plait-agent convert`).
 *
 * GGUF keys: tokenizer.ggml.model = "llama", tokenizer.ggml.tokens (string
 * array, V entries, '▁' U+2581 for a space), tokenizer.ggml.scores (f32
 * array, V entries; absent: all 0), tokenizer.ggml.{unknown,bos,eos}_token_id
 * (when present they must be plait's fixed ids 0, 1, 2). The pieces are
 * rewritten into a llama2.c tokenizer image ('▁' becomes ' ', as llama2.c's
 * export does) and parsed by plait_tok_parse, so encoding is exactly the
 * llama2.c one. Other tokenizer models (e.g. "gpt2" byte-level BPE) are
 * refused with an error naming them.
 */
#include "plait/gguf.h"
#include "plait/file.h"
#include "plait/le.h"
#include "plait/model.h"
#include "plait/tok.h"
#include "tok_bpe_int.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static const char SP[3] = {(char)0xE2, (char)0x96, (char)0x81}; /* U+2581 */

/* Length of s with every U+2581 replaced by one space (to = NULL: count only). */
static size_t unspace(const char *s, size_t n, char *to)
{
    size_t o = 0;
    for (size_t i = 0; i < n;) {
        if (i + 3 <= n && memcmp(s + i, SP, 3) == 0) {
            if (to) to[o] = ' ';
            o++, i += 3;
        } else {
            if (to) to[o] = s[i];
            o++, i++;
        }
    }
    return o;
}

static int check_id(const plait_gguf_t *g, const char *key, uint64_t want)
{
    if (!plait_gguf_find(g, key)) return 0;
    uint64_t v;
    int rc = plait_gguf_get_uint(g, key, UINT32_MAX, &v);
    if (rc != 0) return rc;
    if (v != want)
        return plait_fail(PLAIT_EPROTO, "tokenizer: %s is %llu; plait's llama tokenizer needs %llu", key,
                          (unsigned long long)v, (unsigned long long)want);
    return 0;
}

int plait__tok_parse_gguf(plait_tok_t *t, const uint8_t *buf, size_t len, int vocab_size)
{
    plait_gguf_t g;
    int rc = plait_gguf_parse(&g, buf, len);
    if (rc != 0) return rc;
    uint8_t *img = NULL;
    const char *model;
    size_t mn;
    if ((rc = plait_gguf_get_str(&g, "tokenizer.ggml.model", &model, &mn)) != 0) goto exit;
    if (mn == 4 && memcmp(model, "gpt2", 4) == 0) {
        rc = plait__bpe_parse_gguf(t, &g, vocab_size);
        goto exit;
    }
    if (!(mn == 5 && memcmp(model, "llama", 5) == 0)) {
        rc = plait_fail(PLAIT_EPROTO, "tokenizer: GGUF tokenizer model '%.*s' is not supported (llama, gpt2)",
                        (int)(mn > 40 ? 40 : mn), model);
        goto exit;
    }
    const plait_gguf_kv_t *toks = plait_gguf_find(&g, "tokenizer.ggml.tokens");
    const plait_gguf_kv_t *scores = plait_gguf_find(&g, "tokenizer.ggml.scores");
    if (!toks || toks->type != PLAIT_GGUF_ARR || toks->arr_type != PLAIT_GGUF_STR) {
        rc = plait_fail(PLAIT_EPROTO, "tokenizer: tokenizer.ggml.tokens is missing or not a string array");
        goto exit;
    }
    if (toks->arr_n != (uint64_t)vocab_size) {
        rc = plait_fail(PLAIT_EPROTO, "tokenizer: %llu tokens, the model's vocabulary is %d",
                        (unsigned long long)toks->arr_n, vocab_size);
        goto exit;
    }
    if (scores && (scores->type != PLAIT_GGUF_ARR || scores->arr_type != PLAIT_GGUF_F32 ||
                   scores->arr_n != toks->arr_n)) {
        rc = plait_fail(PLAIT_EPROTO, "tokenizer: tokenizer.ggml.scores is not %llu f32 values",
                        (unsigned long long)toks->arr_n);
        goto exit;
    }
    if ((rc = check_id(&g, "tokenizer.ggml.unknown_token_id", PLAIT_TOK_UNK)) != 0 ||
        (rc = check_id(&g, "tokenizer.ggml.bos_token_id", PLAIT_TOK_BOS)) != 0 ||
        (rc = check_id(&g, "tokenizer.ggml.eos_token_id", PLAIT_TOK_EOS)) != 0)
        goto exit;
    /* Size of the llama2.c image: header, then 8 + piece bytes per token
     * (pieces only shrink, and the parser checked they fit in len). */
    size_t V = (size_t)vocab_size, total = 4, mtl = 1;
    const uint8_t *p = toks->val;
    for (size_t i = 0; i < V; i++) {
        size_t n = (size_t)plait_le64(p);
        size_t u = unspace((const char *)p + 8, n, NULL);
        if (u > mtl) mtl = u;
        total += 8 + u;
        p += 8 + n;
    }
    if (mtl > PLAIT_TOK_MAX_PIECE) {
        rc = plait_fail(PLAIT_EPROTO, "tokenizer: a piece of %zu bytes exceeds %d", mtl, PLAIT_TOK_MAX_PIECE);
        goto exit;
    }
    img = malloc(total);
    if (!img) {
        rc = plait_fail(PLAIT_ENOMEM, "tokenizer: %zu bytes", total);
        goto exit;
    }
    uint32_t m32 = (uint32_t)mtl;
    memcpy(img, &m32, 4);
    size_t off = 4;
    p = toks->val;
    for (size_t i = 0; i < V; i++) {
        uint64_t n64;
        memcpy(&n64, p, 8); /* little-endian hosts, as everywhere in plait */
        size_t n = (size_t)n64;
        float sc = 0.0f;
        if (scores) memcpy(&sc, scores->val + 4 * i, 4);
        uint32_t u = (uint32_t)unspace((const char *)p + 8, n, (char *)img + off + 8);
        memcpy(img + off, &sc, 4);
        memcpy(img + off + 4, &u, 4);
        off += 8 + u;
        p += 8 + n;
    }
    rc = plait_tok_parse(t, img, total, vocab_size);
exit:
    free(img);
    plait_gguf_free(&g);
    return rc;
}

int plait__tok_load_gguf_file(plait_tok_t *t, const char *path, int vocab_size)
{
    void *map;
    size_t map_len;
    int rc = plait_file_map(path, NULL, &map, &map_len);
    if (rc != 0) return rc;
    rc = plait__tok_parse_gguf(t, map, map_len, vocab_size);
    plait_file_unmap(map, map_len);
    return rc;
}

int plait__tok_gguf_fill(plait_gguf_writer_t *w, const plait_tok_t *t)
{
    /* A byte-level BPE tokenizer has no byte_of / scores tables to write from. */
    if (t->bpe) return plait_fail(PLAIT_EINVAL, "convert: writing a byte-level BPE (gpt2) tokenizer is not supported");
    size_t V = (size_t)t->vocab_size;
    char **pieces = calloc(V, sizeof(char *));
    size_t *lens = calloc(V, sizeof(size_t));
    int32_t *types = calloc(V, sizeof(int32_t));
    int rc = 0;
    if (!pieces || !lens || !types) rc = plait_fail(PLAIT_ENOMEM, "tokenizer: %zu pieces", V);
    for (size_t i = 0; i < V && rc == 0; i++) {
        const char *s = t->vocab[i];
        size_t n = t->lens[i], o = 0;
        pieces[i] = malloc(3 * n + 1);
        if (!pieces[i]) {
            rc = plait_fail(PLAIT_ENOMEM, "tokenizer: piece");
            break;
        }
        for (size_t k = 0; k < n; k++) {
            if (s[k] == ' ') memcpy(pieces[i] + o, SP, 3), o += 3;
            else pieces[i][o++] = s[k];
        }
        lens[i] = o;
        /* llama.cpp token types: 1 normal, 2 unknown, 3 control, 6 byte. */
        types[i] = i == PLAIT_TOK_UNK ? 2 : (i == PLAIT_TOK_BOS || i == PLAIT_TOK_EOS) ? 3 : t->byte_of[i] >= 0 ? 6 : 1;
    }
    if (rc == 0) rc = plait_gguf_add_str(w, "tokenizer.ggml.model", "llama");
    if (rc == 0) rc = plait_gguf_add_str_arr(w, "tokenizer.ggml.tokens", (const char *const *)pieces, lens, V);
    if (rc == 0) rc = plait_gguf_add_arr(w, "tokenizer.ggml.scores", PLAIT_GGUF_F32, t->scores, V);
    if (rc == 0) rc = plait_gguf_add_arr(w, "tokenizer.ggml.token_type", PLAIT_GGUF_I32, types, V);
    if (rc == 0) rc = plait_gguf_add_u32(w, "tokenizer.ggml.unknown_token_id", PLAIT_TOK_UNK);
    if (rc == 0) rc = plait_gguf_add_u32(w, "tokenizer.ggml.bos_token_id", PLAIT_TOK_BOS);
    if (rc == 0) rc = plait_gguf_add_u32(w, "tokenizer.ggml.eos_token_id", PLAIT_TOK_EOS);
    for (size_t i = 0; pieces && i < V; i++) free(pieces[i]);
    free(pieces);
    free(lens);
    free(types);
    return rc;
}
