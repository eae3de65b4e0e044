/*
 * data.h: token corpora for training and evaluation, built from the device
 * store (or a plain text file) with the tokenizer.
 *
 * A corpus is the concatenation of its records, each encoded as BOS followed
 * by the record's tokens, so a window that crosses a record boundary sees the
 * BOS that starts the next record, as in pretraining on TinyStories.
 *
 * Training draws B random windows of T + 1 tokens (inputs and shifted
 * targets) from a seeded generator. Evaluation walks non-overlapping windows:
 * window i predicts tokens i*T+1 .. i*T+T, so every predicted token is counted
 * once and the mean of window means is the mean over tokens. A tail shorter
 * than T tokens is not evaluated.
 *
 * Thread-safety: a built corpus is immutable and may be shared.
 */
#ifndef PLAIT_DATA_H
#define PLAIT_DATA_H

#include "plait/store.h"
#include "plait/tok.h"
#include "plait/train.h"

typedef struct {
    int32_t *tokens;   /* (n) */
    size_t n;
    size_t cap;
    size_t n_records;
    size_t max_tokens; /* building stops with PLAIT_ETOOBIG past this */
} plait_corpus_t;

/** Default cap on a corpus: 64 Mi tokens (256 MiB). */
#define PLAIT_CORPUS_DEFAULT_MAX ((size_t)64 << 20)

/** \brief Make c empty and safe to free. Cannot fail. */
void plait_corpus_init(plait_corpus_t *c);
/** \brief Free the tokens. NULL and double free are safe. The tokens are wiped: they are private text. */
void plait_corpus_free(plait_corpus_t *c);

/**
 * \brief Append one record: BOS, then the encoding of text.
 * \return 0, PLAIT_ETOOBIG (past max_tokens), PLAIT_ENOMEM.
 */
int plait_corpus_add_text(plait_corpus_t *c, const plait_tok_t *tok, const char *text, size_t len) PLAIT_WUR;

/**
 * \brief Append every record of a split of the store, in id order.
 * \return 0 or the store's or plait_corpus_add_text's error.
 */
int plait_corpus_add_store(plait_corpus_t *c, const plait_tok_t *tok, plait_store_t *st,
                           plait_store_split_t split) PLAIT_WUR;

/**
 * \brief Fill out with B random windows of T + 1 tokens.
 * \param rng generator state, advanced; any value is a valid seed.
 * \return 0, or PLAIT_EINVAL when the corpus holds fewer than T + 1 tokens.
 */
int plait_corpus_sample(const plait_corpus_t *c, int B, int T, uint64_t *rng, int32_t *out /* (B, T+1) */);

/** \brief Number of non-overlapping evaluation windows of T + 1 tokens. */
size_t plait_corpus_n_windows(const plait_corpus_t *c, int T);

/**
 * \brief Mean next-token loss over the corpus' evaluation windows (at most
 *        max_windows of them, 0 = all), computed forward only with tr's
 *        model and adapter.
 * \param T must be the T tr was created with (plait_train_seq_len): the
 *          trainer reads rows of its own T + 1 tokens.
 * \return 0, PLAIT_EINVAL (T differs from the trainer's, or no window fits), PLAIT_EPROTO (the loss is not
 *         finite: the model or adapter overflows float32), PLAIT_ENOMEM, or
 *         the trainer's error.
 */
int plait_corpus_eval(const plait_corpus_t *c, plait_trainer_t *tr, int T, size_t max_windows,
                      double *loss /* OUT */, size_t *n_tokens /* OUT, may be NULL */) PLAIT_WUR;

/** \brief A 64-bit generator step (splitmix64); deterministic, not for secrets. */
uint64_t plait_rand_u64(uint64_t *state);

#endif /* PLAIT_DATA_H */
