/*
 * adapter.h: safetensors files: a generic reader for F32/F64/I32 tensors and
 * the LoRA adapter file (save, strict load, gradient dump).
 *
 * File format (https://github.com/huggingface/safetensors): an 8-byte
 * little-endian u64 header length n, n bytes of JSON
 *   {"<name>": {"dtype": "F32", "shape": [r, c], "data_offsets": [begin, end]},
 *    ..., "__metadata__": {"<key>": "<string value>", ...}}
 * (possibly padded with spaces), then the data section: raw little-endian
 * tensor bytes, offsets relative to its start. Ranges must lie in the data
 * section, match dtype x shape exactly, not overlap, and cover it without
 * holes (as the format requires).
 *
 * The adapter file holds, for each layer i and each target t in canonical
 * order, F32 tensors "layers.{i}.{t}.lora_A" (R, in) and
 * "layers.{i}.{t}.lora_B" (out, R), and the metadata format = "plait-lora",
 * rank, alpha, targets (comma list, canonical order) and base_sha256 (hex of
 * the base model file), all strings.
 *
 * Example:
 *     plait_lora_t lora;
 *     plait_lora_init(&lora);
 *     int rc = plait_adapter_load(&lora, "adapter.safetensors", &model, 0);
 *     if (rc == PLAIT_EMISMATCH) ... trained for another base model ...
 *
 * Files are untrusted: every length, offset, shape, name and metadata value
 * is checked before use; failures return PLAIT_EPROTO (malformed),
 * PLAIT_ETOOBIG (over a limit) or PLAIT_EMISMATCH (well formed but for
 * another model or configuration), with detail in plait_errmsg().
 *
 * Thread-safety: reentrant; objects are used by one thread at a time.
 */
#ifndef PLAIT_ADAPTER_H
#define PLAIT_ADAPTER_H

#include "plait/lora.h"
#include "plait/model.h"

#define PLAIT_ST_MAX_HEADER (16u << 20) /* bytes of JSON header accepted */
#define PLAIT_ST_MAX_TENSORS 65536      /* tensors per file */
#define PLAIT_ST_MAX_DIMS 8             /* dimensions per tensor */
#define PLAIT_ST_MAX_NAME 256           /* bytes per tensor name or metadata key */
#define PLAIT_ST_MAX_FILE ((size_t)1 << 34) /* a file larger than 16 GiB is refused */

typedef enum { PLAIT_ST_F32 = 0, PLAIT_ST_F64 = 1, PLAIT_ST_I32 = 2 } plait_st_dtype_t;

typedef struct {
    char *name;                        /* NUL-terminated, owned by the file object */
    plait_st_dtype_t dtype;
    int ndim;
    uint64_t shape[PLAIT_ST_MAX_DIMS];
    uint64_t numel;
    const uint8_t *data;               /* into the buffer; possibly unaligned, little-endian */
    size_t nbytes;
} plait_st_tensor_t;

typedef struct {
    char *key;   /* NUL-terminated */
    char *value; /* NUL-terminated */
} plait_st_meta_t;

typedef struct {
    plait_st_tensor_t *tensors; /* sorted by data offset */
    size_t n_tensors;
    plait_st_meta_t *meta;
    size_t n_meta;
    uint8_t *owned;             /* file bytes when read from a path, else NULL */
} plait_safetensors_t;

/** \brief Make st safe to free. Cannot fail. */
void plait_safetensors_init(plait_safetensors_t *st);
/**
 * \brief Parse a safetensors image in memory. The tensors point into buf,
 *        which the caller keeps alive and unchanged while st is used.
 * \return 0, PLAIT_EPROTO (malformed: bad JSON, dtype, shape, offsets, holes,
 *         overlap, duplicate name), PLAIT_ETOOBIG (header over
 *         PLAIT_ST_MAX_HEADER or more tensors than PLAIT_ST_MAX_TENSORS),
 *         PLAIT_ENOMEM.
 */
int plait_safetensors_parse(plait_safetensors_t *st, const uint8_t *buf, size_t len) PLAIT_WUR;
/** \brief Read and parse a file (st owns the bytes). \return as parse, plus PLAIT_EIO. */
int plait_safetensors_read(plait_safetensors_t *st, const char *path) PLAIT_WUR;
/** \brief Tensor by name, or NULL. */
const plait_st_tensor_t *plait_safetensors_find(const plait_safetensors_t *st, const char *name);
/** \brief Metadata value by key, or NULL. */
const char *plait_safetensors_meta(const plait_safetensors_t *st, const char *key);
/**
 * \brief Copy tensor `name` (F32 or F64) into out as doubles.
 * \return 0; PLAIT_ENOENT (no such tensor); PLAIT_EMISMATCH (numel != n or
 *         an integer dtype).
 */
int plait_safetensors_get_f64(const plait_safetensors_t *st, const char *name, double *out, size_t n) PLAIT_WUR;
/** \brief Free what st owns. NULL and double free are safe. */
void plait_safetensors_free(plait_safetensors_t *st);

/** One tensor to write: F32 data of numel = prod(shape). */
typedef struct {
    const char *name;
    int ndim;
    uint64_t shape[PLAIT_ST_MAX_DIMS];
    const float *data;
} plait_st_out_t;

/**
 * \brief Serialize F32 tensors and string metadata to a safetensors image.
 * \param out  receives a malloc'd image (free with free()).
 * \return 0, PLAIT_EINVAL (bad name or shape), PLAIT_ENOMEM.
 */
int plait_safetensors_write_mem(const plait_st_out_t *t, size_t n, const plait_st_meta_t *meta, size_t n_meta,
                                uint8_t **out /* OUT */, size_t *len /* OUT */) PLAIT_WUR;

/* ----------------------------------------------------------- adapters */

/** Load flag: accept an adapter whose base_sha256 differs from the model's. */
#define PLAIT_ADAPTER_IGNORE_BASE 1u

/**
 * \brief Serialize an adapter (F32, names above) bound to a base model hash.
 * \param l            a set-up adapter.
 * \param base_sha256  32 bytes, the model's sha256 (plait_model_t.sha256).
 * \return 0, PLAIT_EINVAL (a parameter is not finite: the loader would
 *         refuse the file), PLAIT_ENOMEM.
 */
int plait_adapter_save_mem(const plait_lora_t *l, const uint8_t base_sha256[32], uint8_t **out /* OUT */,
                           size_t *len /* OUT */) PLAIT_WUR;
/** \brief plait_adapter_save_mem() then write path. \return also PLAIT_EIO. */
int plait_adapter_save(const char *path, const plait_lora_t *l, const uint8_t base_sha256[32]) PLAIT_WUR;

/**
 * \brief Load an untrusted adapter image for model m.
 * \param l     initialized with plait_lora_init() and empty; on success it is
 *              set up (rank, alpha, targets from the file's metadata) and
 *              holds the file's values; on failure it stays empty.
 * \param m     the model; its cfg gives the expected shapes and its sha256
 *              must equal base_sha256 unless flags has PLAIT_ADAPTER_IGNORE_BASE.
 * \return 0; PLAIT_EPROTO (malformed file, wrong dtype or shape, a missing or
 *         unexpected tensor, bad metadata, a non-finite value);
 *         PLAIT_ETOOBIG; PLAIT_EMISMATCH (base_sha256 differs from the model's);
 *         PLAIT_ENOMEM.
 */
int plait_adapter_load_mem(plait_lora_t *l, const uint8_t *buf, size_t len, const plait_model_t *m,
                           unsigned flags) PLAIT_WUR;
/** \brief Read path then plait_adapter_load_mem(). \return also PLAIT_EIO,
 *         PLAIT_EINVAL for a path that is not a regular file (a FIFO is refused
 *         without blocking), and PLAIT_ETOOBIG, before reading, for a file
 *         larger than any adapter of m can be (rank PLAIT_LORA_MAX_RANK on
 *         every projection). */
int plait_adapter_load(plait_lora_t *l, const char *path, const plait_model_t *m, unsigned flags) PLAIT_WUR;

/**
 * \brief Write the `--dump-grads` file: F32 tensor "loss" shape [1] and, for
 *        every adapter tensor that has a gradient, the gradient under the
 *        adapter's own name (F32: the precision the engine computes in).
 * \param grads  grads[i] is the gradient of l->params[goff + i], n floats
 *               (plait_train_grads / _offset / _count); goff must be 0 or l->n_a.
 * \return 0, PLAIT_EINVAL, PLAIT_ENOMEM, PLAIT_EIO.
 */
int plait_adapter_save_grads(const char *path, const plait_lora_t *l, const float *grads, size_t goff, size_t n,
                             float loss) PLAIT_WUR;

/** \brief Tensor name of an adapter tensor into buf: "layers.3.wq.lora_A". */
void plait_adapter_tensor_name(char *buf, size_t len, int layer, plait_proj_t p, int is_b);

#endif /* PLAIT_ADAPTER_H */
