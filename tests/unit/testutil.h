/*
 * testutil.h: helpers shared by the unit tests: where the shared assets and
 * reference values are, reading whole files, scratch directories, and small
 * builders of test data (a splitmix64 stream, little-endian file images,
 * random models of a given shape).
 */
#ifndef PLAIT_TESTUTIL_H
#define PLAIT_TESTUTIL_H

#include <stddef.h>
#include <stdint.h>

#include "plait/model.h"

/** Directory of the shared assets: $PLAIT_ASSETS or ../shared/assets. */
const char *tu_assets_dir(void);
/** Directory of the reference values: $PLAIT_REFERENCE or ../shared/reference. */
const char *tu_reference_dir(void);
/** Join dir and name into a static-per-call heap string (caller frees). */
char *tu_path(const char *dir, const char *name);
/** Read a whole file; returns malloc'd bytes (NUL-terminated) or NULL. */
uint8_t *tu_read_file(const char *path, size_t *len /* OUT */);
/** Write bytes to a file; returns 0 on success. */
int tu_write_file(const char *path, const void *buf, size_t len);
/** Remove the files in dir, then dir itself (not recursive; NULL is safe). */
void tu_rmdir(const char *dir);
/** The next value of a splitmix64 stream with state *s (test data, not secrets). */
uint64_t tu_splitmix64(uint64_t *s);
/** Store v little-endian in b[0..4) (model and tokenizer file images). */
void tu_put_i32le(uint8_t *b, int32_t v);
/** Make a fresh scratch directory under the build tree; caller frees. */
char *tu_tmpdir(const char *tag);

/** Uniform in [0, 1) from the stream *s. */
double tu_unif(uint64_t *s);

/** A model and adapter shape (C dim, H hidden, L layers, NH/NKV heads, V vocab,
 * seq, shared (tied) classifier; LoRA rank R, alpha, targets; B, T, threads). */
typedef struct {
    int C, H, L, NH, NKV, V, seq, shared;
    int R;
    float alpha;
    uint32_t targets;
    int B, T, threads;
} tu_shape_t;

#define TU_ALL7 0x7Fu
#define TU_TGT(p) (1u << (p))

/** A random model of shape s with weights large enough that every path matters
 * (embeddings std ~0.5, projections std ~0.6/sqrt(in), norm weights 1 +- 0.3). */
void tu_make_model(plait_model_t *m, const tu_shape_t *s, uint64_t seed);

#endif
