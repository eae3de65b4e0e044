/*
 * tok_bpe_int.h: GPT-2-style byte-level BPE tokenizers (client/tok_bpe.c),
 * reached through plait_tok_t (tok.h): internals shared with tok.c,
 * tok_gguf.c, unicode_tab.c and tests only.
 */
#ifndef PLAIT_TOK_BPE_INT_H
#define PLAIT_TOK_BPE_INT_H

#include <stddef.h>
#include <stdint.h>

#include "plait/gguf.h"
#include "plait/tok.h"

/* Pre-tokenizers (llama.cpp's tokenizer.ggml.pre names). */
enum {
    PLAIT_BPE_PRE_GPT2 = 0,   /* "gpt2", "default": GPT-2's regex */
    PLAIT_BPE_PRE_SMOLLM = 1, /* "smollm": each \p{N} alone, then GPT-2's regex */
    PLAIT_BPE_PRE_QWEN2 = 2,  /* "qwen2": Qwen2's regex */
};

int plait__uni_is_letter(uint32_t c);
int plait__uni_is_number(uint32_t c);
int plait__uni_is_space(uint32_t c);

/** \brief Load a "gpt2" tokenizer from parsed GGUF metadata into t. */
int plait__bpe_parse_gguf(plait_tok_t *t, const plait_gguf_t *g, int vocab_size);
int plait__bpe_encode(const plait_tok_t *t, const char *text, size_t len, int bos, int eos, int *tokens, size_t cap,
                      size_t *n_out);
void plait__bpe_free(struct plait_bpe_s *b);

/**
 * \brief Split text into pre-tokens: calls fn(ctx, start, end) for each
 *        byte range, in order (exposed for tests).
 */
int plait__bpe_pretokenize(int pre, const char *text, size_t len, int (*fn)(void *ctx, size_t b, size_t e),
                           void *ctx);

#endif /* PLAIT_TOK_BPE_INT_H */
