/*
 * infer.h: text generation with a frozen model and an optional LoRA adapter:
 * a run state with a KV cache, the forward pass of one token (or a batch of
 * prompt tokens), a sampler, and a generate helper.
 *
 * The adapter is applied either unmerged, y = x·Wᵀ + s·(x·Aᵀ)·Bᵀ (reads the
 * adapter live, so a trainer may update it between calls), or merged: at
 * setup the targeted projections only are copied as W + s·B·A into a private
 * buffer (the base model itself is never copied), and the forward pass is
 * then as fast as without an adapter. Both give the same logits up to float
 * rounding.
 *
 * Worked example (error handling shortened):
 *
 *     plait_model_t m;  plait_tok_t tok;  plait_infer_t st;
 *     plait_model_init(&m);  plait_tok_init(&tok);  plait_infer_init(&st);
 *     if (plait_model_load(&m, "stories260K.bin") != 0 ||
 *         plait_tok_load(&tok, "tok512.bin", m.cfg.vocab_size) != 0)
 *         goto fail;
 *     plait_infer_config_t icfg;
 *     plait_infer_config_default(&icfg);          // whole context, unmerged, no pool
 *     if (plait_infer_setup(&st, &m, NULL, &icfg) != 0) goto fail;  // NULL: no adapter
 *
 *     plait_gen_config_t g;
 *     plait_gen_config_default(&g);
 *     g.temperature = 0.0f;                        // greedy
 *     g.steps = 200;
 *     if (plait_generate(&st, &tok, "Once upon a time", &g, print_piece, stdout, NULL) != 0)
 *         fprintf(stderr, "%s\n", plait_errmsg());
 *
 *     // or token by token:
 *     const float *logits;
 *     plait_infer_forward(&st, PLAIT_TOK_BOS, 0, &logits);   // logits: (V)
 *
 *     plait_infer_free(&st);  plait_tok_free(&tok);  plait_model_free(&m);
 *
 * where print_piece is
 *
 *     static int print_piece(void *ctx, const char *piece, size_t len)
 *     { fwrite(piece, 1, len, ctx); fflush(ctx); return 0; }
 *
 * Thread-safety: a run state is used by one thread at a time (its pool may
 * run the matmuls on more). The model, the adapter and the tokenizer are
 * only read, so several run states may share them; an adapter must not be
 * written while a run state that reads it unmerged is running.
 */
#ifndef PLAIT_INFER_H
#define PLAIT_INFER_H

#include "plait/knn.h"
#include "plait/lora.h"
#include "plait/model.h"
#include "plait/tensor.h"
#include "plait/tok.h"

/* Shape letters as in model.h; P = rows of one prefill chunk. */

typedef struct {
    int max_ctx;        /* positions the KV cache holds; 0 (default) = model seq_len */
    int merge;          /* 1: merge the adapter into private weight copies; 0 (default): unmerged */
    int prefill_chunk;  /* P: prompt tokens per batched forward pass (default 32) */
    plait_pool_t *pool; /* threads for the matmuls; NULL (default) runs on the caller */
} plait_infer_config_t;

typedef struct plait_infer_s {
    const plait_model_t *model; /* borrowed; must outlive the state */
    const plait_lora_t *lora;   /* borrowed, or NULL */
    plait_pool_t *pool;         /* borrowed, or NULL */
    int max_ctx;                /* T_max: positions in the KV cache */
    int chunk;                  /* P */
    int merged;                 /* adapter merged into merged_w */
    /* Activations, one arena; each pointer into it. */
    float *act;         /* the activation arena */
    float *x;           /* (P, C) residual stream */
    float *xb;          /* (P, C) normed input / attention output */
    float *xb2;         /* (P, C) projection output */
    float *q;           /* (P, C) queries */
    float *hb;          /* (P, H) w1 x, then silu(w1 x) * w3 x */
    float *hb2;         /* (P, H) w3 x */
    float *att;         /* (P, NH, T_max) attention scores per row and head */
    float *lora_t;      /* (P, R) x · Aᵀ of the adapter, scaled */
    float *rope;        /* (P, HS) cos and sin per pair: [2j] = cos, [2j+1] = sin */
    float *logits;      /* (V) */
    float *key_cache;   /* (L, T_max, KV) */
    float *value_cache; /* (L, T_max, KV) */
    /* Projection weights in use: the base, or a merged copy. */
    const float **w; /* [L * PLAIT_NPROJ] (out, in) each */
    float *merged_w; /* merged copies of the targeted projections, or NULL */
    size_t merged_n; /* floats in merged_w */
    const float *logit_bias; /* (V) added to the logits (a personal output bias), borrowed, or NULL */
    const plait_knn_t *knn;  /* a kNN memory mixed into the next-token distribution (knn.h), borrowed, or NULL */
} plait_infer_t;

/** \brief Defaults: whole context, unmerged, chunk 32, no pool. */
void plait_infer_config_default(plait_infer_config_t *cfg);

/** \brief Make s safe to free. Cannot fail. */
void plait_infer_init(plait_infer_t *s);

/**
 * \brief Allocate a run state (KV cache and activations, sized once).
 * \param s     initialized with plait_infer_init and not set up.
 * \param model a loaded model; borrowed, must outlive s.
 * \param lora  an adapter for this model's shape, or NULL for none;
 *              borrowed, must outlive s (when merged it is read only here).
 * \param cfg   settings; NULL means the defaults.
 * \return 0; PLAIT_EINVAL (NULL model, bad max_ctx or prefill_chunk);
 *         PLAIT_EMISMATCH if the adapter was made for another model shape;
 *         PLAIT_ETOOBIG if the buffers would exceed the address space;
 *         PLAIT_ENOMEM. On failure s stays safe to free.
 */
int plait_infer_setup(plait_infer_t *s, const plait_model_t *model, const plait_lora_t *lora,
                      const plait_infer_config_t *cfg) PLAIT_WUR;

/**
 * \brief Recompute the merged weights after the adapter changed (a no-op for
 *        an unmerged state or one without adapter).
 */
void plait_infer_remerge(plait_infer_t *s);

/**
 * \brief Add bias[v] to the logit of token v from now on (a device's personal
 *        output bias, personal.h), or stop with NULL (the default).
 * \param bias vocab_size floats, borrowed: must outlive its use by s.
 * \return 0 or PLAIT_EINVAL (state not set up, a non-finite value).
 */
int plait_infer_set_logit_bias(plait_infer_t *s, const float *bias) PLAIT_WUR;

/**
 * \brief Mix a kNN memory into the next-token distribution from now on (a
 *        device's memory of its own text, knn.h): after the bias, the logits
 *        become log((1 - lambda) softmax(logits) + lambda p_knn), p_knn voted
 *        by the entries nearest to the final normed hidden state. NULL stops.
 * \param knn borrowed: must outlive its use by s.
 * \return 0; PLAIT_EINVAL (state not set up; a memory of another width, or
 *         holding a token outside the vocabulary).
 */
int plait_infer_set_knn(plait_infer_t *s, const plait_knn_t *knn) PLAIT_WUR;

/** \brief Release the state's buffers (never the model or adapter). NULL and double free are safe.
 */
void plait_infer_free(plait_infer_t *s);

/**
 * \brief Run one token at position pos and return the next-token logits.
 *
 * Positions 0 .. pos-1 must have been run before (their keys and values are
 * read from the cache); running pos again overwrites it and what follows.
 *
 * \param token  0 .. V-1.
 * \param pos    0 .. max_ctx-1.
 * \param logits OUT: (V) logits, valid until the next call on s; may be NULL.
 * \return 0; PLAIT_EINVAL for a bad token or state; PLAIT_ETOOBIG for pos
 *         outside the context.
 */
int plait_infer_forward(plait_infer_t *s, int token, int pos,
                        const float **logits /* OUT */) PLAIT_WUR;

/**
 * \brief Run n tokens at positions pos0 .. pos0+n-1 in batched passes of up
 *        to P tokens (prompt prefill) and return the logits of the last one.
 *        Same results as n calls of plait_infer_forward, faster.
 * \return as plait_infer_forward; PLAIT_EINVAL also for n == 0.
 */
int plait_infer_prefill(plait_infer_t *s, const int *tokens, size_t n, int pos0,
                        const float **logits /* OUT */) PLAIT_WUR;

/* ------------------------------------------------------------- sampling */

/** \brief xorshift64* step as llama2.c random_u32: updates *state (never 0). */
uint32_t plait_xorshift_u32(uint64_t *state);
/** \brief Uniform float in [0, 1) with 24 random bits (llama2.c random_f32). */
float plait_xorshift_f32(uint64_t *state);

typedef struct {
    float prob;
    int index;
} plait_probidx_t;

typedef struct {
    int vocab_size;           /* V */
    float temperature;        /* 0: greedy (argmax) */
    float topp;               /* nucleus threshold; <= 0 or >= 1 samples the whole distribution */
    uint64_t rng;             /* xorshift state */
    float *probs;             /* (V) work copy of the logits */
    plait_probidx_t *probidx; /* (V) nucleus candidates */
} plait_sampler_t;

/** \brief Make s safe to free. Cannot fail. */
void plait_sampler_init(plait_sampler_t *s);
/**
 * \brief Allocate a sampler as llama2.c's: greedy when temperature is 0,
 *        otherwise softmax(logits / temperature) sampled with top-p.
 * \param seed RNG seed; 0 is replaced by a fixed non-zero constant because
 *             xorshift cannot leave 0. Equal seeds give equal samples.
 * \return 0; PLAIT_EINVAL (vocab_size < 1, temperature negative or not
 *         finite, topp NaN); PLAIT_ENOMEM.
 */
int plait_sampler_setup(plait_sampler_t *s, int vocab_size, float temperature, float topp,
                        uint64_t seed) PLAIT_WUR;
/** \brief Free the buffers. NULL and double free are safe. */
void plait_sampler_free(plait_sampler_t *s);
/**
 * \brief Draw the next token from logits (V); logits are not modified.
 *        Greedy takes the first maximum. The draw is run.c's: one coin per
 *        call, ties in the nucleus ordered by id.
 * \return a token id 0 .. V-1.
 */
int plait_sampler_sample(plait_sampler_t *s, const float *logits);

/* ----------------------------------------------------------- generation */

typedef struct {
    float temperature; /* 1.0: sample the model's distribution (llama2.c default); 0 = greedy */
    float topp;        /* 0.9: nucleus sampling (llama2.c default); >= 1 disables */
    int steps;         /* 256: positions to run, prompt included; <= 0 or > max_ctx means max_ctx */
    uint64_t seed;     /* 42: sampler seed (the CLI may pass time(NULL) for run.c's behaviour) */
    int bos;           /* 1: start the prompt with BOS, as run.c does */
    int stop_at_eos;   /* 1: stop at EOS as well as at BOS (run.c stops only at BOS) */
    int printable_only; /* 1: skip pieces that are a lone non-printable byte (run.c safe_printf) */
} plait_gen_config_t;

typedef struct {
    size_t prompt_tokens;    /* ids of the encoded prompt, BOS included */
    size_t generated_tokens; /* tokens sampled (the one that stopped generation included) */
    int stop_token;          /* the BOS/EOS that ended generation, or -1 (steps ran out) */
} plait_gen_stats_t;

/**
 * Receives each piece of text as it is produced (the prompt's pieces first,
 * as run.c echoes them). The piece is not NUL-terminated where it holds raw
 * bytes; it is valid only during the call. Return 0 to continue, nonzero to
 * stop (plait_generate then returns PLAIT_ECANCELED).
 */
typedef int (*plait_piece_cb)(void *ctx, const char *piece, size_t len);

/** \brief Defaults as commented in plait_gen_config_t. */
void plait_gen_config_default(plait_gen_config_t *cfg);

/**
 * \brief Check a generation config (for a CLI: before loading anything).
 * \return 0, or PLAIT_EINVAL naming the field (temperature negative or not
 *         finite, top-p NaN).
 */
int plait_gen_config_validate(const plait_gen_config_t *cfg);

/**
 * \brief Generate text as llama2.c run.c `generate` does: encode the prompt
 *        (BOS first), run steps positions, echo the prompt and then emit
 *        each sampled token's piece through cb; stop early when the next
 *        token is BOS (or EOS, see stop_at_eos). No final newline.
 *
 * The state's KV cache is reused from position 0. All checks (config,
 * prompt encoding, allocation) happen before cb is first called.
 *
 * \param s      a set-up run state.
 * \param tok    a tokenizer with the model's vocabulary size.
 * \param prompt NUL-terminated text; NULL or "" means none.
 * \param cfg    settings; NULL means the defaults.
 * \param cb     piece callback; NULL discards the text (stats still count).
 * \param ctx    passed to cb.
 * \param stats  OUT: counts; may be NULL.
 * A prompt of more than `steps` tokens is not an error: as in run.c only
 * its first `steps` pieces are echoed and nothing is sampled.
 *
 * \return 0; PLAIT_EINVAL (state or tokenizer not set up, tokenizer of
 *         another vocabulary size, bad temperature or top-p, empty prompt
 *         with bos = 0); PLAIT_ENOMEM; PLAIT_ECANCELED if cb asked to stop;
 *         PLAIT_EPROTO if a logit to sample from is not finite (the model or
 *         adapter overflows float32; pieces may have been emitted already).
 */
int plait_generate(plait_infer_t *s, const plait_tok_t *tok, const char *prompt,
                   const plait_gen_config_t *cfg, plait_piece_cb cb, void *ctx,
                   plait_gen_stats_t *stats /* OUT */);

#endif /* PLAIT_INFER_H */
