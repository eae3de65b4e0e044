/*
 * model.h: a frozen llama2.c-architecture language model (float32).
 *
 * Shape letters used in comments throughout the client:
 *   V = vocab_size, C = dim, H = hidden_dim, L = n_layers, NH = n_heads,
 *   NKV = n_kv_heads, HS = head_size = C / NH, KV = kv_dim = NKV * HS,
 *   B = batch size, T = sequence length, R = LoRA rank.
 *
 * Weights follow nn.Linear: a projection W has shape (out, in), stored row
 * major, and y = x · Wᵀ. A model either memory-maps a checkpoint read-only
 * (the base model is never copied) or owns a heap buffer of random weights
 * (tests and benchmarks of shapes that have no file).
 *
 * Example:
 *     plait_model_t m;
 *     plait_model_init(&m);
 *     if (plait_model_load(&m, "stories260K.bin") != 0)
 *         fprintf(stderr, "%s\n", plait_errmsg());
 *     ...
 *     plait_model_free(&m);
 *
 * Thread-safety: a loaded model is immutable and may be shared by any number
 * of threads (inference states and trainers each hold their own buffers).
 */
#ifndef PLAIT_MODEL_H
#define PLAIT_MODEL_H

#include "plait/plait.h"
#include "plait/quant.h"

/* Limits applied to checkpoint headers before anything is allocated. */
#define PLAIT_MODEL_MAX_DIM 16384
#define PLAIT_MODEL_MAX_HIDDEN 65536
#define PLAIT_MODEL_MAX_LAYERS 256
#define PLAIT_MODEL_MAX_HEADS 1024
#define PLAIT_MODEL_MAX_VOCAB 1048576
#define PLAIT_MODEL_MAX_SEQ 1048576

typedef struct {
    int dim;        /* C */
    int hidden_dim; /* H */
    int n_layers;   /* L */
    int n_heads;    /* NH */
    int n_kv_heads; /* NKV */
    int vocab_size; /* V (always positive here) */
    int seq_len;    /* maximum context */
    int shared;     /* 1: classifier is the token embedding (tied) */
    int head_size;  /* HS = C / NH */
    int kv_dim;     /* KV = NKV * HS */
    /* Set from GGUF metadata; 0 means the llama2.c value, which
     * plait_model_config_validate fills in. */
    float rope_theta; /* RoPE base (10000) */
    float rope_scale; /* linear RoPE scaling: positions are divided by it (1) */
    float rms_eps;    /* RMSNorm epsilon (1e-5) */
    int rope_neox;    /* 1: rotate-half pairs (i, i + HS/2) as Qwen2; 0: interleaved (2i, 2i+1) */
    int qkv_bias;     /* 1: the q, k, v projections have biases (Qwen2) */
} plait_model_config_t;

/* Pointers into the mapping or the owned buffer; all read-only. */
typedef struct {
    const float *token_embedding; /* (V, C) */
    const float *rms_att;         /* (L, C) */
    const float *wq;              /* (L, C, C) */
    const float *wk;              /* (L, KV, C) */
    const float *wv;              /* (L, KV, C) */
    const float *wo;              /* (L, C, C) */
    const float *rms_ffn;         /* (L, C) */
    const float *w1;              /* (L, H, C) */
    const float *w2;              /* (L, C, H) */
    const float *w3;              /* (L, H, C) */
    const float *rms_final;       /* (C) */
    const float *wcls;            /* (V, C); == token_embedding when shared */
} plait_model_weights_t;

typedef struct plait_model_s {
    plait_model_config_t cfg;
    plait_model_weights_t w;
    uint8_t sha256[32]; /* of the checkpoint file (zero for random models) */
    void *map;          /* heap copy of a .bin file, read-only mapping of a GGUF file (is_gguf), or NULL */
    size_t map_len;
    float *owned;       /* heap weights of a random model, or NULL */
    /* Typed views of every matrix, for both formats: L * PLAIT_NPROJ
     * projections (index l * PLAIT_NPROJ + p), then the token embedding,
     * then the classifier. The float pointers in w are set only where the
     * matrix is F32 (always for llama2.c files); norms are always F32. */
    plait_wmat_t *mats;
    const float **bias; /* (L, 3) q, k, v biases when cfg.qkv_bias, else NULL */
    float *aux;         /* owned F32 copies of small (1-D) GGUF tensors stored in F16/BF16 */
    int is_gguf;        /* loaded from a GGUF file */
} plait_model_t;

/** \brief Make m safe to free. Cannot fail. */
void plait_model_init(plait_model_t *m);

/**
 * \brief Check a header and derive head_size and kv_dim.
 * \return 0, or PLAIT_EPROTO naming the absurd field.
 */
int plait_model_config_validate(plait_model_config_t *cfg);

/**
 * \brief Read a llama2.c legacy (v0) float32 checkpoint into memory and hash it.
 * \param m    initialized with plait_model_init; must not hold a model.
 * \param path file path; never NULL.
 * \return 0; PLAIT_EIO if it cannot be opened, is not a regular file (a
 *         FIFO is refused without blocking), is read short or changes while
 *         it is read; PLAIT_ENOMEM; PLAIT_EPROTO for a
 *         bad header, a size that does not match the header (truncated or
 *         oversized) or a non-finite weight (the detail names the tensor).
 */
int plait_model_load(plait_model_t *m, const char *path) PLAIT_WUR;

/**
 * \brief Build a model of the given shape with random weights drawn from
 *        seed (normal, std 0.02; norm weights 1), as tests and benchmarks
 *        need for shapes that have no checkpoint.
 * \return 0, PLAIT_EPROTO for a bad config, PLAIT_ENOMEM.
 */
int plait_model_init_random(plait_model_t *m, const plait_model_config_t *cfg, uint64_t seed) PLAIT_WUR;

/** \brief Release the weights. NULL and double free are safe. */
void plait_model_free(plait_model_t *m);

/** Projection targets of LoRA, in canonical order. */
typedef enum {
    PLAIT_WQ = 0,
    PLAIT_WK = 1,
    PLAIT_WV = 2,
    PLAIT_WO = 3,
    PLAIT_W1 = 4,
    PLAIT_W2 = 5,
    PLAIT_W3 = 6,
    PLAIT_NPROJ = 7
} plait_proj_t;

/** \brief "wq" ... "w3". */
const char *plait_proj_name(plait_proj_t p);
/** \brief Look up a projection by name. \return 0 or PLAIT_EINVAL. */
int plait_proj_parse(const char *name, size_t len, plait_proj_t *out /* OUT */);
/** \brief Input and output width of projection p in this model. */
void plait_proj_shape(const plait_model_config_t *cfg, plait_proj_t p, int *in /* OUT */, int *out /* OUT */);
/** \brief Base weight of projection p in layer l: (out, in); NULL when it is not F32. */
const float *plait_proj_weight(const plait_model_t *m, int l, plait_proj_t p);
/** \brief Typed base weight of projection p in layer l: (out, in) of any type. */
const plait_wmat_t *plait_model_proj(const plait_model_t *m, int l, plait_proj_t p);
/** \brief Typed token embedding (V, C). */
const plait_wmat_t *plait_model_embedding(const plait_model_t *m);
/** \brief Typed classifier (V, C) (the embedding when tied). */
const plait_wmat_t *plait_model_classifier(const plait_model_t *m);
/** \brief Nonzero when every matrix is F32 (so the float pointers in w are all set). */
int plait_model_is_f32(const plait_model_t *m);

/**
 * \brief Memory-map a GGUF v3 file of a llama-family model (architecture
 *        "llama" or "qwen2"), check every offset, count, size and alignment
 *        against the file, and hash it. plait_model_load calls this for
 *        files that start with "GGUF".
 * \return 0; PLAIT_EIO; PLAIT_EPROTO naming what is wrong.
 */
int plait_model_load_gguf(plait_model_t *m, const char *path) PLAIT_WUR;

/**
 * \brief Write m as a GGUF v3 file (architecture "llama"), its projection,
 *        embedding and classifier matrices converted to type (F32, F16,
 *        BF16, Q8_0 or Q4_0; norms stay F32). Used by `plait-agent convert`.
 * \return 0; PLAIT_EINVAL (a dimension that is not whole blocks of the type,
 *         or a model whose matrices are not F32); PLAIT_EIO; PLAIT_ENOMEM.
 */
int plait_model_save_gguf(const plait_model_t *m, const char *path, int type) PLAIT_WUR;

#endif /* PLAIT_MODEL_H */
