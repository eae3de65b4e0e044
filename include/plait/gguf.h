/*
 * gguf.h: GGUF v3 containers (llama.cpp's model file format): a checked
 * parser over a byte buffer (usually a read-only mapping) and a writer.
 *
 * Layout (little-endian): "GGUF", u32 version (3), u64 tensor count, u64
 * metadata count; metadata entries (string key, u32 value type, value);
 * tensor infos (string name, u32 n_dims, u64 ne[n_dims] fastest first, u32
 * ggml type, u64 offset from the data section); padding to
 * general.alignment (32 unless set); the data section. A string is a u64
 * length and that many bytes (no NUL).
 *
 * The parser checks everything against the buffer before use: counts
 * against the bytes left (and fixed caps), every length, the alignment, each
 * tensor's type, dimensions, byte size, offset alignment and extent, and
 * that tensors do not overlap. The structures it fills point into the
 * buffer, which must outlive them.
 *
 *     plait_gguf_t g;
 *     if (plait_gguf_parse(&g, buf, len) != 0) ... plait_errmsg() names what is wrong ...
 *     const plait_gguf_tensor_t *t = plait_gguf_tensor(&g, "token_embd.weight");
 *     plait_gguf_free(&g);
 */
#ifndef PLAIT_GGUF_H
#define PLAIT_GGUF_H

#include "plait/plait.h"

/* Metadata value types. */
enum {
    PLAIT_GGUF_U8 = 0, PLAIT_GGUF_I8 = 1, PLAIT_GGUF_U16 = 2, PLAIT_GGUF_I16 = 3,
    PLAIT_GGUF_U32 = 4, PLAIT_GGUF_I32 = 5, PLAIT_GGUF_F32 = 6, PLAIT_GGUF_BOOL = 7,
    PLAIT_GGUF_STR = 8, PLAIT_GGUF_ARR = 9, PLAIT_GGUF_U64 = 10, PLAIT_GGUF_I64 = 11,
    PLAIT_GGUF_F64 = 12
};

#define PLAIT_GGUF_MAX_KV 65536         /* metadata entries */
#define PLAIT_GGUF_MAX_TENSORS 65536
#define PLAIT_GGUF_MAX_NAME 65535       /* bytes of a key or tensor name */
#define PLAIT_GGUF_DEFAULT_ALIGN 32

typedef struct {
    const char *key; /* not NUL-terminated */
    size_t key_len;
    uint32_t type;     /* PLAIT_GGUF_* */
    const uint8_t *val; /* the value's bytes (for arrays: the first element) */
    uint32_t arr_type; /* element type of an array */
    uint64_t arr_n;    /* elements of an array */
} plait_gguf_kv_t;

typedef struct {
    const char *name; /* not NUL-terminated */
    size_t name_len;
    uint32_t n_dims;  /* 1..4 */
    uint64_t ne[4];   /* ne[0] varies fastest; unused dims are 1 */
    uint32_t type;    /* plait_dtype_t */
    uint64_t offset;  /* from the data section */
    const uint8_t *data;
    size_t nbytes;
} plait_gguf_tensor_t;

typedef struct {
    uint32_t version;
    size_t n_kv, n_tensors;
    plait_gguf_kv_t *kv;
    plait_gguf_tensor_t *tensors;
    size_t alignment;
    size_t data_offset; /* of the data section in the buffer */
} plait_gguf_t;

/** \brief Parse and check a GGUF v3 image. \return 0, PLAIT_EPROTO naming the problem, PLAIT_ENOMEM. */
int plait_gguf_parse(plait_gguf_t *g, const uint8_t *buf, size_t len) PLAIT_WUR;
/** \brief Release the index (not the buffer). NULL and double free are safe. */
void plait_gguf_free(plait_gguf_t *g);

const plait_gguf_kv_t *plait_gguf_find(const plait_gguf_t *g, const char *key);
const plait_gguf_tensor_t *plait_gguf_tensor(const plait_gguf_t *g, const char *name);
/** \brief An integer value (any integer type) in 0..max. \return 0, or PLAIT_EPROTO if absent, not an integer or out of range. */
int plait_gguf_get_uint(const plait_gguf_t *g, const char *key, uint64_t max, uint64_t *out);
/** \brief An F32 or F64 value. */
int plait_gguf_get_float(const plait_gguf_t *g, const char *key, double *out);
/** \brief A string value (not NUL-terminated). */
int plait_gguf_get_str(const plait_gguf_t *g, const char *key, const char **s, size_t *n);
/** \brief Element i of an array of strings (i < kv->arr_n; O(i)). */
int plait_gguf_arr_str(const plait_gguf_kv_t *kv, uint64_t i, const char **s, size_t *n);

/* ------------------------------------------------------------- writer */

typedef struct plait_gguf_writer_s plait_gguf_writer_t;

int plait_gguf_writer_create(plait_gguf_writer_t **w) PLAIT_WUR;
void plait_gguf_writer_free(plait_gguf_writer_t *w);
int plait_gguf_add_str(plait_gguf_writer_t *w, const char *key, const char *val) PLAIT_WUR;
int plait_gguf_add_u32(plait_gguf_writer_t *w, const char *key, uint32_t val) PLAIT_WUR;
int plait_gguf_add_f32(plait_gguf_writer_t *w, const char *key, float val) PLAIT_WUR;
/** \brief An array of n strings (lens[i] bytes each; lens NULL: NUL-terminated). */
int plait_gguf_add_str_arr(plait_gguf_writer_t *w, const char *key, const char *const *vals, const size_t *lens,
                           size_t n) PLAIT_WUR;
/** \brief An array of n elements of a fixed-size type (U8..F64 except STR/ARR). */
int plait_gguf_add_arr(plait_gguf_writer_t *w, const char *key, uint32_t type, const void *vals, size_t n) PLAIT_WUR;
/**
 * \brief Add a tensor; data (nbytes, which must match type and ne) is
 *        copied. ne[0] varies fastest.
 */
int plait_gguf_add_tensor(plait_gguf_writer_t *w, const char *name, int type, uint32_t n_dims, const uint64_t *ne,
                          const void *data, size_t nbytes) PLAIT_WUR;
/** \brief The file image (malloc'ed, the caller frees it). */
int plait_gguf_write_mem(plait_gguf_writer_t *w, uint8_t **out, size_t *len) PLAIT_WUR;
/** \brief Write the file image to path (via a temporary file and rename). */
int plait_gguf_write_file(plait_gguf_writer_t *w, const char *path) PLAIT_WUR;

/* Internal (client/, tools and tests): add m's metadata and tensors to w,
 * matrices in type (rows that are not whole blocks of it stay F32). */
struct plait_model_s;
int plait__model_gguf_fill(plait_gguf_writer_t *w, const struct plait_model_s *m, int type) PLAIT_WUR;

#endif /* PLAIT_GGUF_H */
