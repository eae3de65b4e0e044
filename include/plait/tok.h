/*
 * tok.h: the BPE tokenizer of llama2.c models (SentencePiece-style pieces
 * with byte fallback), loaded from a llama2.c tokenizer export.
 *
 * File layout (little-endian, no count field): int32 max_token_length, then
 * for each of the V tokens: float32 score, int32 byte length, the bytes (no
 * NUL). The file is untrusted: it is parsed field by field, every length is
 * bounded, and the caller supplies V (the model header's vocab_size), which
 * must account for the file exactly.
 *
 * Token ids: 0 = unk, 1 = BOS, 2 = EOS, 3..258 = byte fallback <0x00>..<0xFF>.
 *
 * Encoding gives exactly the ids of llama2.c run.c `encode` (dummy prefix
 * space, UTF-8 code point lookup with byte fallback, repeated merge of the
 * best-scoring adjacent pair, leftmost on ties), but in O(n log n): pieces are
 * found by binary search in a sorted vocabulary and merges come from a heap
 * over a linked list instead of a rescan per merge.
 *
 * Example:
 *     plait_tok_t tok;
 *     plait_tok_init(&tok);
 *     if (plait_tok_load(&tok, "tok512.bin", model.cfg.vocab_size) != 0)
 *         fprintf(stderr, "%s\n", plait_errmsg());
 *     size_t cap = plait_tok_encode_bound(strlen(text)), n;
 *     int *ids = malloc(cap * sizeof(int));
 *     plait_tok_encode(&tok, text, strlen(text), 1, 0, ids, cap, &n);
 *     for (size_t i = 1; i < n; i++) {
 *         size_t len;
 *         const char *p = plait_tok_decode(&tok, ids[i - 1], ids[i], &len);
 *         if (plait_tok_piece_is_printable(p, len)) fwrite(p, 1, len, stdout);
 *     }
 *     plait_tok_free(&tok);
 *
 * Thread-safety: a loaded tokenizer is immutable; encode and decode may run
 * concurrently on one tokenizer.
 */
#ifndef PLAIT_TOK_H
#define PLAIT_TOK_H

#include "plait/gguf.h"
#include "plait/plait.h"

#define PLAIT_TOK_UNK 0
#define PLAIT_TOK_BOS 1
#define PLAIT_TOK_EOS 2
#define PLAIT_TOK_BYTE0 3 /* id of the byte fallback token <0x00> */

/* Limits applied to a tokenizer file before anything is allocated. */
#define PLAIT_TOK_MAX_PIECE 1024        /* max_token_length bound (llama 32k vocab: 27) */
#define PLAIT_TOK_MIN_VOCAB 259         /* unk, BOS, EOS and the 256 byte tokens */
#define PLAIT_TOK_MAX_FILE (256u << 20) /* 256 MiB */

typedef struct plait_tok_s {
    int vocab_size;        /* V */
    int max_token_length;  /* longest piece in bytes, as declared by the file */
    char **vocab;          /* [V] NUL-terminated pieces pointing into arena */
    uint32_t *lens;        /* [V] piece lengths in bytes (a piece may hold a NUL) */
    float *scores;         /* [V] merge scores */
    int16_t *byte_of;      /* [V] raw byte a "<0xNN>" piece stands for, or -1 */
    int *sorted;           /* [V] ids ordered by piece bytes, then id */
    int space_id;          /* id of " " (the dummy prefix), or the byte token of ' ' */
    char *arena;           /* piece bytes, each followed by a NUL */
    char byte_pieces[512]; /* (256, 2): each byte value followed by a NUL */
    struct plait_bpe_s *bpe; /* set for GPT-2-style byte-level BPE (GGUF "gpt2"); then vocab and
                                lens hold each token's raw bytes and scores, byte_of, sorted are NULL */
} plait_tok_t;

/** \brief Make t safe to free. Cannot fail. */
void plait_tok_init(plait_tok_t *t);

/**
 * \brief Parse a tokenizer export held in memory.
 * \param t          initialized with plait_tok_init and not holding a tokenizer.
 * \param buf        the file's bytes; borrowed (everything is copied).
 * \param len        number of bytes in buf.
 * \param vocab_size number of tokens the file must hold (the model's V);
 *                   PLAIT_TOK_MIN_VOCAB .. PLAIT_MODEL_MAX_VOCAB.
 * \return 0; PLAIT_EINVAL for a bad vocab_size; PLAIT_EPROTO for a
 *         truncated file, an absurd max_token_length or piece length, or
 *         trailing bytes (detail names the token and offset); PLAIT_ENOMEM.
 *         On failure t stays empty.
 */
int plait_tok_parse(plait_tok_t *t, const uint8_t *buf, size_t len, int vocab_size) PLAIT_WUR;

/**
 * \brief Read and parse a tokenizer file (see plait_tok_parse).
 * \param path file path; never NULL.
 * \return as plait_tok_parse, plus PLAIT_EIO if it cannot be read,
 *         PLAIT_EINVAL if it is not a regular file (a FIFO is refused without
 *         blocking) and PLAIT_ETOOBIG above PLAIT_TOK_MAX_FILE.
 */
int plait_tok_load(plait_tok_t *t, const char *path, int vocab_size) PLAIT_WUR;

/** \brief Release everything. NULL and double free are safe. */
void plait_tok_free(plait_tok_t *t);

/** \brief Most ids plait_tok_encode can produce for len bytes (len + 3). */
size_t plait_tok_encode_bound(size_t len);

/**
 * \brief Encode text as llama2.c run.c `encode` does.
 *
 * The text is len bytes; unlike run.c it may hold NUL bytes, which encode as
 * the byte token <0x00>. BOS takes part in merging exactly as in run.c.
 *
 * \param t      a loaded tokenizer.
 * \param text   bytes of the text; may be NULL when len is 0.
 * \param bos    nonzero: start with BOS (id 1).
 * \param eos    nonzero: end with EOS (id 2).
 * \param tokens output ids; cap entries (plait_tok_encode_bound(len) always suffice).
 * \param n_out  OUT: number of ids written.
 * \return 0; PLAIT_EINVAL (NULL arguments, tokenizer not loaded);
 *         PLAIT_ETOOBIG if the result would exceed cap (tokens then holds
 *         nothing useful); PLAIT_ENOMEM.
 */
int plait_tok_encode(const plait_tok_t *t, const char *text, size_t len, int bos, int eos,
                     int *tokens, size_t cap, size_t *n_out /* OUT */) PLAIT_WUR;

/**
 * \brief The text of token after prev_token, as llama2.c run.c `decode`:
 *        after BOS a leading space is dropped, and a byte token <0xNN>
 *        stands for the raw byte.
 * \param len OUT: length of the piece in bytes (may be 0); may be NULL.
 * \return a pointer valid while t is loaded (NUL-terminated), or NULL for a
 *         token outside 0..V-1.
 */
const char *plait_tok_decode(const plait_tok_t *t, int prev_token, int token,
                             size_t *len /* OUT */);

/**
 * \brief Whether a piece is safe to print, as run.c `safe_printf` decides:
 *        a single byte that is neither printable nor whitespace (a lone
 *        control byte or a fragment of a UTF-8 sequence) is not; anything
 *        else (and the empty piece) is.
 */
int plait_tok_piece_is_printable(const char *piece, size_t len);

/* Internal: llama (SentencePiece-style) tokenizers in GGUF metadata
 * (client/tok_gguf.c). plait_tok_parse and plait_tok_load call the first two
 * for images that start with "GGUF". */
int plait__tok_parse_gguf(plait_tok_t *t, const uint8_t *buf, size_t len, int vocab_size) PLAIT_WUR;
int plait__tok_load_gguf_file(plait_tok_t *t, const char *path, int vocab_size) PLAIT_WUR;
int plait__tok_gguf_fill(plait_gguf_writer_t *w, const plait_tok_t *t) PLAIT_WUR;

#endif /* PLAIT_TOK_H */
