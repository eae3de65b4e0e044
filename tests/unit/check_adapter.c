/*
 * check_adapter.c: safetensors reading/writing and the adapter file: round
 * trips, the reference files, and every way an untrusted file can be wrong
 * (hash, names, shapes, dtype, offsets, header length, truncation, JSON,
 * metadata, non-finite values, metadata that lies about the tensors, a file
 * far larger than any adapter of the model), each rejected with a clear error.
 */
#include <check.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "plait/adapter.h"
#include "plait/crypto.h"
#include "plait/lora.h"
#include "plait/model.h"
#include "testutil.h"

/* Bytes of a valid image after the header that prefix tests visit one by
 * one; past that they step by PREFIX_STRIDE (the data section is uniform). */
#define PREFIX_STRIDE 97


/* ------------------------------------------------------------ helpers */

/* A tiny model (C = 8, one layer) whose wq adapter of rank 1 is
 * A (1, 8) at bytes [0, 32) and B (8, 1) at [32, 64). */
static void tiny_model(plait_model_t *m)
{
    plait_model_config_t c = {.dim = 8, .hidden_dim = 8, .n_layers = 1, .n_heads = 2, .n_kv_heads = 2,
                              .vocab_size = 10, .seq_len = 4, .shared = 1};
    plait_model_init(m);
    ck_assert_int_eq(plait_model_init_random(m, &c, 1), 0);
}

#define TENSORS_OK                                                                                      \
    "\"layers.0.wq.lora_A\":{\"dtype\":\"F32\",\"shape\":[1,8],\"data_offsets\":[0,32]},"              \
    "\"layers.0.wq.lora_B\":{\"dtype\":\"F32\",\"shape\":[8,1],\"data_offsets\":[32,64]}"
#define META_OK                                                                                         \
    "\"__metadata__\":{\"format\":\"plait-lora\",\"rank\":\"1\",\"alpha\":\"2\",\"targets\":\"wq\","    \
    "\"base_sha256\":\"0000000000000000000000000000000000000000000000000000000000000000\"}"

/* header JSON + dlen data bytes (floats 0.01 * i) as a safetensors image. */
static uint8_t *craft(const char *json, size_t dlen, size_t *len)
{
    size_t hl = strlen(json);
    *len = 8 + hl + dlen;
    uint8_t *b = malloc(*len);
    for (int i = 0; i < 8; i++) b[i] = (uint8_t)((uint64_t)hl >> (8 * i));
    memcpy(b + 8, json, hl);
    for (size_t i = 0; i + 4 <= dlen; i += 4) {
        float f = 0.01f * (float)(i / 4);
        memcpy(b + 8 + hl + i, &f, 4);
    }
    return b;
}

/* Load crafted JSON into the tiny model's adapter and expect code (and a
 * detail containing needle). */
static void expect_load(const char *json, size_t dlen, int code, const char *needle)
{
    plait_model_t m;
    tiny_model(&m);
    size_t len;
    uint8_t *img = craft(json, dlen, &len);
    plait_lora_t l;
    plait_lora_init(&l);
    int rc = plait_adapter_load_mem(&l, img, len, &m, 0);
    ck_assert_msg(rc == code, "expected %s, got %s (%s) for %s", plait_err_name(code), plait_err_name(rc),
                  plait_errmsg(), json);
    if (needle)
        ck_assert_msg(strstr(plait_errmsg(), needle) != NULL, "detail '%s' lacks '%s'", plait_errmsg(), needle);
    if (rc != 0) ck_assert_ptr_null(l.params); /* failure leaves the adapter empty */
    plait_lora_free(&l);
    free(img);
    plait_model_free(&m);
}

/* ------------------------------------------------------------ tests */

START_TEST(test_crafted_ok)
{
    expect_load("{" TENSORS_OK "," META_OK "}", 64, 0, NULL);
    /* Order of keys and whitespace do not matter; header padding is allowed. */
    expect_load("{ " META_OK " ,\n" TENSORS_OK "}        ", 64, 0, NULL);
    plait_model_t m;
    tiny_model(&m);
    size_t len;
    uint8_t *img = craft("{" TENSORS_OK "," META_OK "}", 64, &len);
    plait_lora_t l;
    ck_assert_int_eq(plait_adapter_load_mem(&l, img, len, &m, 0), 0);
    ck_assert_int_eq(l.cfg.rank, 1);
    ck_assert(l.cfg.alpha == 2.0f);
    ck_assert_uint_eq(l.cfg.targets, 1u << PLAIT_WQ);
    ck_assert(l.A[0][7] == 0.07f && l.B[0][0] == 0.08f);
    plait_lora_free(&l);
    free(img);
    plait_model_free(&m);
}
END_TEST

START_TEST(test_round_trip_and_hash)
{
    char *p = tu_path(tu_assets_dir(), "stories260K.bin");
    plait_model_t m;
    plait_model_init(&m);
    ck_assert_int_eq(plait_model_load(&m, p), 0);
    free(p);
    plait_lora_config_t lc;
    plait_lora_config_default(&lc);
    lc.rank = 4;
    lc.alpha = 3.5f;
    lc.targets = (1u << PLAIT_WK) | (1u << PLAIT_WO) | (1u << PLAIT_W2);
    plait_lora_t l, back;
    plait_lora_init(&l);
    ck_assert_int_eq(plait_lora_setup(&l, &m.cfg, &lc), 0);
    plait_lora_init_weights(&l, 42);
    for (size_t i = l.n_a; i < l.n_params; i++) l.params[i] = 0.001f * (float)(i % 17);
    char *d = tu_tmpdir("adapter");
    char *f = tu_path(d, "a.safetensors");
    ck_assert_int_eq(plait_adapter_save(f, &l, m.sha256), 0);
    ck_assert_msg(plait_adapter_load(&back, f, &m, 0) == 0, "%s", plait_errmsg());
    ck_assert_int_eq(back.cfg.rank, 4);
    ck_assert(back.cfg.alpha == 3.5f);
    ck_assert_uint_eq(back.cfg.targets, lc.targets);
    ck_assert_uint_eq(back.n_params, l.n_params);
    ck_assert_int_eq(memcmp(back.params, l.params, l.n_params * sizeof(float)), 0);
    plait_lora_free(&back);
    /* The file is standard safetensors: the generic reader sees the metadata. */
    plait_safetensors_t st;
    ck_assert_int_eq(plait_safetensors_read(&st, f), 0);
    ck_assert_str_eq(plait_safetensors_meta(&st, "targets"), "wk,wo,w2");
    ck_assert_str_eq(plait_safetensors_meta(&st, "format"), "plait-lora");
    ck_assert_uint_eq(st.n_tensors, 2 * 5 * 3);
    const plait_st_tensor_t *t = plait_safetensors_find(&st, "layers.4.w2.lora_A");
    ck_assert_ptr_nonnull(t);
    ck_assert_int_eq(t->ndim, 2);
    ck_assert_uint_eq(t->shape[0], 4);
    ck_assert_uint_eq(t->shape[1], 172);
    plait_safetensors_free(&st);
    /* Another base model: EMISMATCH, unless the caller opts out. */
    plait_model_t other;
    char *op = tu_path(tu_reference_dir(), "tiny_untied_all7_r4/model.bin");
    plait_model_init(&other);
    ck_assert_int_eq(plait_model_load(&other, op), 0);
    free(op);
    memcpy(other.sha256, m.sha256, 32);
    other.sha256[5] ^= 1;
    memcpy(&other.cfg, &m.cfg, sizeof(m.cfg)); /* same shape, different hash */
    ck_assert_int_eq(plait_adapter_load(&back, f, &other, 0), PLAIT_EMISMATCH);
    ck_assert_msg(strstr(plait_errmsg(), "base model") != NULL, "%s", plait_errmsg());
    ck_assert_ptr_null(back.params);
    ck_assert_int_eq(plait_adapter_load(&back, f, &other, PLAIT_ADAPTER_IGNORE_BASE), 0);
    plait_lora_free(&back);
    plait_model_free(&other);
    ck_assert_int_eq(plait_adapter_load(&back, "/nonexistent/a.safetensors", &m, 0), PLAIT_EIO);
    remove(f);
    remove(d);
    free(f);
    free(d);
    plait_lora_free(&l);
    plait_model_free(&m);
}
END_TEST

/* The reference adapters load strictly: their base_sha256 is the model's. */
START_TEST(test_reference_files)
{
    const char *cases[2] = {"stories260K_wq_wv_r8", "tiny_untied_all7_r4"};
    for (int c = 0; c < 2; c++) {
        char *dir = tu_path(tu_reference_dir(), cases[c]);
        char *mp = c == 0 ? tu_path(tu_assets_dir(), "stories260K.bin") : tu_path(dir, "model.bin");
        char *ap = tu_path(dir, "adapter_init.safetensors");
        char *gp = tu_path(dir, "grads.safetensors");
        plait_model_t m;
        plait_model_init(&m);
        ck_assert_int_eq(plait_model_load(&m, mp), 0);
        plait_lora_t l;
        ck_assert_msg(plait_adapter_load(&l, ap, &m, 0) == 0, "%s", plait_errmsg());
        ck_assert_int_eq(l.cfg.rank, c == 0 ? 8 : 4);
        ck_assert_uint_eq(l.cfg.targets, c == 0 ? 0x5u : 0x7fu);
        /* Re-serializing gives a file that loads to the same values. */
        size_t len;
        uint8_t *img;
        ck_assert_int_eq(plait_adapter_save_mem(&l, m.sha256, &img, &len), 0);
        plait_lora_t back;
        ck_assert_int_eq(plait_adapter_load_mem(&back, img, len, &m, 0), 0);
        ck_assert_int_eq(memcmp(back.params, l.params, l.n_params * sizeof(float)), 0);
        plait_lora_free(&back);
        free(img);
        /* F64 through the generic reader; an adapter file must be F32. */
        plait_safetensors_t st;
        ck_assert_int_eq(plait_safetensors_read(&st, gp), 0);
        double loss;
        ck_assert_int_eq(plait_safetensors_get_f64(&st, "loss", &loss, 1), 0);
        ck_assert(loss > 1.0 && loss < 30.0);
        ck_assert_int_eq(plait_safetensors_get_f64(&st, "loss", &loss, 2), PLAIT_EMISMATCH);
        ck_assert_int_eq(plait_safetensors_get_f64(&st, "nope", &loss, 1), PLAIT_ENOENT);
        plait_safetensors_free(&st);
        ck_assert_int_eq(plait_adapter_load(&back, gp, &m, 0), PLAIT_EPROTO); /* no metadata, F64 */
        plait_lora_free(&l);
        plait_model_free(&m);
        free(dir);
        free(mp);
        free(ap);
        free(gp);
    }
}
END_TEST

START_TEST(test_names_shapes_dtypes)
{
    /* Missing B. */
    expect_load("{\"layers.0.wq.lora_A\":{\"dtype\":\"F32\",\"shape\":[1,8],\"data_offsets\":[0,32]}," META_OK "}",
                32, PLAIT_EPROTO, "layers.0.wq.lora_B' is missing");
    /* An extra tensor the targets do not call for. */
    expect_load("{" TENSORS_OK ",\"layers.0.wk.lora_A\":{\"dtype\":\"F32\",\"shape\":[1,8],\"data_offsets\":[64,96]},"
                META_OK "}", 96, PLAIT_EPROTO, "unexpected tensor 'layers.0.wk.lora_A'");
    /* A layer the model does not have. */
    expect_load("{" TENSORS_OK ",\"layers.1.wq.lora_A\":{\"dtype\":\"F32\",\"shape\":[1,8],\"data_offsets\":[64,96]},"
                META_OK "}", 96, PLAIT_EPROTO, "unexpected tensor");
    /* Non-canonical name. */
    expect_load("{" TENSORS_OK ",\"layers.00.wq.lora_A\":{\"dtype\":\"F32\",\"shape\":[1,8],\"data_offsets\":[64,96]},"
                META_OK "}", 96, PLAIT_EPROTO, "not canonical");
    /* Transposed shape (same byte count). */
    expect_load("{\"layers.0.wq.lora_A\":{\"dtype\":\"F32\",\"shape\":[8,1],\"data_offsets\":[0,32]},"
                "\"layers.0.wq.lora_B\":{\"dtype\":\"F32\",\"shape\":[8,1],\"data_offsets\":[32,64]}," META_OK "}",
                64, PLAIT_EPROTO, "wrong shape");
    /* Rank in metadata disagrees with the tensors. */
    expect_load("{" TENSORS_OK ",\"__metadata__\":{\"format\":\"plait-lora\",\"rank\":\"2\",\"alpha\":\"2\","
                "\"targets\":\"wq\",\"base_sha256\":\"" "0000000000000000000000000000000000000000000000000000000000000000"
                "\"}}", 64, PLAIT_EPROTO, "wrong shape");
    /* F64 adapter tensors. */
    expect_load("{\"layers.0.wq.lora_A\":{\"dtype\":\"F64\",\"shape\":[1,8],\"data_offsets\":[0,64]},"
                "\"layers.0.wq.lora_B\":{\"dtype\":\"F32\",\"shape\":[8,1],\"data_offsets\":[64,96]}," META_OK "}",
                96, PLAIT_EPROTO, "not F32");
    /* Unknown dtype. */
    expect_load("{\"layers.0.wq.lora_A\":{\"dtype\":\"BF16\",\"shape\":[1,8],\"data_offsets\":[0,16]}," META_OK "}",
                16, PLAIT_EPROTO, "unsupported dtype");
    /* Shape that does not match the byte range. */
    expect_load("{\"layers.0.wq.lora_A\":{\"dtype\":\"F32\",\"shape\":[1,9],\"data_offsets\":[0,32]},"
                "\"layers.0.wq.lora_B\":{\"dtype\":\"F32\",\"shape\":[8,1],\"data_offsets\":[32,64]}," META_OK "}",
                64, PLAIT_EPROTO, "do not match its shape");
    /* Shape whose product overflows. */
    expect_load("{\"x\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296,4294967296],\"data_offsets\":[0,0]}}", 0,
                PLAIT_EPROTO, NULL);
}
END_TEST

START_TEST(test_offsets)
{
    /* Overlap: B starts inside A. */
    expect_load("{\"layers.0.wq.lora_A\":{\"dtype\":\"F32\",\"shape\":[1,8],\"data_offsets\":[0,32]},"
                "\"layers.0.wq.lora_B\":{\"dtype\":\"F32\",\"shape\":[8,1],\"data_offsets\":[16,48]}," META_OK "}",
                64, PLAIT_EPROTO, "overlaps");
    /* Same range twice. */
    expect_load("{\"layers.0.wq.lora_A\":{\"dtype\":\"F32\",\"shape\":[1,8],\"data_offsets\":[0,32]},"
                "\"layers.0.wq.lora_B\":{\"dtype\":\"F32\",\"shape\":[8,1],\"data_offsets\":[0,32]}," META_OK "}",
                32, PLAIT_EPROTO, "overlaps");
    /* Hole between tensors. */
    expect_load("{\"layers.0.wq.lora_A\":{\"dtype\":\"F32\",\"shape\":[1,8],\"data_offsets\":[0,32]},"
                "\"layers.0.wq.lora_B\":{\"dtype\":\"F32\",\"shape\":[8,1],\"data_offsets\":[40,72]}," META_OK "}",
                72, PLAIT_EPROTO, "hole");
    /* Past the end of the data. */
    expect_load("{" TENSORS_OK "," META_OK "}", 60, PLAIT_EPROTO, "past the");
    /* Trailing bytes after the last tensor. */
    expect_load("{" TENSORS_OK "," META_OK "}", 68, PLAIT_EPROTO, "after the last tensor");
    /* end < begin. */
    expect_load("{\"layers.0.wq.lora_A\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[32,0]}}", 32,
                PLAIT_EPROTO, NULL);
}
END_TEST

START_TEST(test_json_and_metadata)
{
    static const struct {
        const char *json;
        const char *needle;
    } bad[] = {
        {"{" TENSORS_OK "," META_OK "}x", "json:"},
        {"{" TENSORS_OK "," META_OK, "json:"},
        {"{\"a\":[]}", "not an object"},
        {"[" TENSORS_OK "]", "json:"},
        {"{" TENSORS_OK "," TENSORS_OK "," META_OK "}", "json:"},
        {"{" TENSORS_OK "," META_OK "," META_OK "}", "json:"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4],\"extra\":1}}", "unknown field"},
        {"{\"a\":{\"dtype\":\"F32\",\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", "json:"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,4]}}", "non-negative integer"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[01],\"data_offsets\":[0,4]}}", "json:"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1.5],\"data_offsets\":[0,4]}}", "non-negative integer"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4,8]}}", "array longer"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,4]}}", "array longer"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1]}}", "lacks"},
        {"{\"a\\q\":{}}", "json:"},
        {"{\"a\\ud800\":{}}", "json:"},
        {"{\"a\x01\":{}}", "json:"},
        {"{\"a", "json:"},
        {"{\"__metadata__\":{\"format\":3}}", "is not a string"},
        {"{" TENSORS_OK ",\"__metadata__\":{\"format\":\"other\",\"rank\":\"1\",\"alpha\":\"2\",\"targets\":\"wq\","
         "\"base_sha256\":\"0000000000000000000000000000000000000000000000000000000000000000\"}}", "format"},
        {"{" TENSORS_OK ",\"__metadata__\":{\"format\":\"plait-lora\",\"rank\":\"1x\",\"alpha\":\"2\",\"targets\":\"wq\","
         "\"base_sha256\":\"0000000000000000000000000000000000000000000000000000000000000000\"}}", "rank"},
        {"{" TENSORS_OK ",\"__metadata__\":{\"format\":\"plait-lora\",\"rank\":\"1\",\"alpha\":\"nan\",\"targets\":\"wq\","
         "\"base_sha256\":\"0000000000000000000000000000000000000000000000000000000000000000\"}}", "alpha"},
        {"{" TENSORS_OK ",\"__metadata__\":{\"format\":\"plait-lora\",\"rank\":\"1\",\"alpha\":\"2\",\"targets\":\"wq,xx\","
         "\"base_sha256\":\"0000000000000000000000000000000000000000000000000000000000000000\"}}", "targets"},
        {"{" TENSORS_OK ",\"__metadata__\":{\"format\":\"plait-lora\",\"rank\":\"1\",\"alpha\":\"2\",\"targets\":\"wq\","
         "\"base_sha256\":\"00\"}}", "64 hex"},
        {"{" TENSORS_OK ",\"__metadata__\":{\"format\":\"plait-lora\",\"rank\":\"1\",\"alpha\":\"2\",\"targets\":\"wq\"}}",
         "'base_sha256' is missing"},
        {"{" TENSORS_OK "}", "'format' is missing"},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) expect_load(bad[i].json, 64, PLAIT_EPROTO, bad[i].needle);
    /* Nesting deeper than the schema needs is over a limit. */
    expect_load("{\"a\":{\"dtype\":\"F32\",\"shape\":[[1]],\"data_offsets\":[0,4]}}", 64, PLAIT_ETOOBIG, "json:");
    /* A hash that is well-formed but not this model's. */
    expect_load("{" TENSORS_OK ",\"__metadata__\":{\"format\":\"plait-lora\",\"rank\":\"1\",\"alpha\":\"2\","
                "\"targets\":\"wq\",\"base_sha256\":\"1000000000000000000000000000000000000000000000000000000000000000\"}}",
                64, PLAIT_EMISMATCH, "base model");
    /* Escapes decode: "\u0077q" is "wq". */
    expect_load("{" TENSORS_OK ",\"__metadata__\":{\"format\":\"plait-lora\",\"rank\":\"1\",\"alpha\":\"2\","
                "\"targets\":\"\\u0077q\",\"base_sha256\":\"0000000000000000000000000000000000000000000000000000000000000000\"}}",
                64, 0, NULL);
}
END_TEST

START_TEST(test_non_finite)
{
    plait_model_t m;
    tiny_model(&m);
    size_t len;
    uint8_t *img = craft("{" TENSORS_OK "," META_OK "}", 64, &len);
    float bad[2] = {NAN, INFINITY};
    for (int k = 0; k < 2; k++) {
        memcpy(img + len - 4, &bad[k], 4); /* last element of B */
        plait_lora_t l;
        ck_assert_int_eq(plait_adapter_load_mem(&l, img, len, &m, 0), PLAIT_EPROTO);
        ck_assert_msg(strstr(plait_errmsg(), "not finite") != NULL, "%s", plait_errmsg());
        ck_assert_ptr_null(l.params);
    }
    free(img);
    plait_model_free(&m);
}
END_TEST

START_TEST(test_header_length_and_truncation)
{
    plait_model_t m;
    tiny_model(&m);
    size_t len;
    uint8_t *img = craft("{" TENSORS_OK "," META_OK "}", 64, &len);
    plait_lora_t l;
    /* Absurd header lengths. */
    uint8_t saved[8];
    memcpy(saved, img, 8);
    memset(img, 0xff, 8);
    ck_assert_int_eq(plait_adapter_load_mem(&l, img, len, &m, 0), PLAIT_ETOOBIG);
    memset(img, 0, 8);
    img[2] = 0x01; /* 65536 bytes: under the cap, over the file */
    ck_assert_int_eq(plait_adapter_load_mem(&l, img, len, &m, 0), PLAIT_EPROTO);
    memset(img, 0, 8);
    img[3] = 0x01; /* 16 MiB + 1... exactly 2^24 is the cap, 2^24 + 2^16 is over */
    img[2] = 0x01;
    ck_assert_int_eq(plait_adapter_load_mem(&l, img, len, &m, 0), PLAIT_ETOOBIG);
    memset(img, 0, 8);
    ck_assert_int_eq(plait_adapter_load_mem(&l, img, len, &m, 0), PLAIT_EPROTO); /* zero */
    memcpy(img, saved, 8);
    ck_assert_int_eq(plait_adapter_load_mem(&l, img, len, &m, 0), 0);
    plait_lora_free(&l);
    /* Every proper prefix fails cleanly (copied so ASan sees its end). */
    for (size_t n = 0; n < len; n++) {
        uint8_t *pre = malloc(n ? n : 1);
        memcpy(pre, img, n);
        int rc = plait_adapter_load_mem(&l, pre, n, &m, 0);
        ck_assert_msg(rc == PLAIT_EPROTO, "prefix %zu: %s", n, plait_err_name(rc));
        ck_assert_ptr_null(l.params);
        free(pre);
    }
    free(img);
    /* Prefixes of a real adapter file. */
    char *dir = tu_path(tu_reference_dir(), "stories260K_wq_wv_r8");
    char *ap = tu_path(dir, "adapter_init.safetensors");
    char *mp = tu_path(tu_assets_dir(), "stories260K.bin");
    plait_model_t big;
    plait_model_init(&big);
    ck_assert_int_eq(plait_model_load(&big, mp), 0);
    uint8_t *file = tu_read_file(ap, &len);
    ck_assert_ptr_nonnull(file);
    size_t hdr = 8 + (size_t)file[0] + 256 * (size_t)file[1];
    for (size_t n = 0; n < len; n += n < hdr + 16 ? 1 : PREFIX_STRIDE) {
        uint8_t *pre = malloc(n ? n : 1);
        memcpy(pre, file, n);
        ck_assert_int_eq(plait_adapter_load_mem(&l, pre, n, &big, 0), PLAIT_EPROTO);
        free(pre);
    }
    ck_assert_int_eq(plait_adapter_load_mem(&l, file, len, &big, 0), 0);
    plait_lora_free(&l);
    free(file);
    free(ap);
    free(mp);
    free(dir);
    plait_model_free(&big);
    plait_model_free(&m);
}
END_TEST

START_TEST(test_save_grads)
{
    plait_model_t m;
    tiny_model(&m);
    plait_lora_config_t lc;
    plait_lora_config_default(&lc);
    lc.rank = 2;
    lc.targets = (1u << PLAIT_WQ) | (1u << PLAIT_W1);
    plait_lora_t l;
    plait_lora_init(&l);
    ck_assert_int_eq(plait_lora_setup(&l, &m.cfg, &lc), 0);
    float *g = malloc(l.n_params * sizeof(float));
    for (size_t i = 0; i < l.n_params; i++) g[i] = 0.5f * (float)i;
    char *d = tu_tmpdir("grads");
    char *f = tu_path(d, "g.safetensors");
    for (int ffa = 0; ffa < 2; ffa++) {
        size_t off = ffa ? l.n_a : 0;
        ck_assert_int_eq(plait_adapter_save_grads(f, &l, g, off, l.n_params - off, 2.25f), 0);
        plait_safetensors_t st;
        ck_assert_int_eq(plait_safetensors_read(&st, f), 0);
        ck_assert_uint_eq(st.n_tensors, ffa ? 3 : 5);
        double v[64];
        ck_assert_int_eq(plait_safetensors_get_f64(&st, "loss", v, 1), 0);
        ck_assert(v[0] == 2.25);
        ck_assert_int_eq(plait_safetensors_get_f64(&st, "layers.0.w1.lora_B", v, 16), 0);
        size_t idx = (size_t)(l.B[plait_lora_slot(0, PLAIT_W1)] - l.params) - off;
        for (int i = 0; i < 16; i++) ck_assert(v[i] == (double)g[idx + (size_t)i]);
        ck_assert(plait_safetensors_find(&st, "layers.0.wq.lora_A") != NULL || ffa);
        ck_assert(plait_safetensors_find(&st, "layers.0.wq.lora_A") == NULL || !ffa);
        plait_safetensors_free(&st);
    }
    ck_assert_int_eq(plait_adapter_save_grads(f, &l, g, 1, l.n_params - 1, 0.0f), PLAIT_EINVAL);
    remove(f);
    remove(d);
    free(f);
    free(d);
    free(g);
    plait_lora_free(&l);
    plait_model_free(&m);
}
END_TEST

static char *scratch;

static void hostile_setup(void)
{
    scratch = tu_tmpdir("adapter_hostile");
    ck_assert_ptr_nonnull(scratch);
}

static void hostile_teardown(void)
{
    tu_rmdir(scratch);
    free(scratch);
    scratch = NULL;
}

/* ----------------------------------- lying metadata, hostile headers, size */

/* An adapter image built from parts: tensors named for (layer, proj, is_b)
 * with the given rows/cols, metadata as given. */
typedef struct {
    const char *rank, *alpha, *targets, *sha, *format;
} meta_t;

static int load_crafted(const plait_model_t *m, const meta_t *mt, const plait_st_out_t *t,
                        size_t nt, plait_lora_t *out)
{
    plait_st_meta_t meta[5];
    size_t nm = 0;
    if (mt->format) meta[nm++] = (plait_st_meta_t){"format", (char *)mt->format};
    if (mt->rank) meta[nm++] = (plait_st_meta_t){"rank", (char *)mt->rank};
    if (mt->alpha) meta[nm++] = (plait_st_meta_t){"alpha", (char *)mt->alpha};
    if (mt->targets) meta[nm++] = (plait_st_meta_t){"targets", (char *)mt->targets};
    if (mt->sha) meta[nm++] = (plait_st_meta_t){"base_sha256", (char *)mt->sha};
    uint8_t *img = NULL;
    size_t len = 0;
    ck_assert_int_eq(plait_safetensors_write_mem(t, nt, meta, nm, &img, &len), 0);
    int rc = plait_adapter_load_mem(out, img, len, m, 0);
    free(img);
    return rc;
}

#define ZERO64 "0000000000000000000000000000000000000000000000000000000000000000"

START_TEST(test_adapter_lying_metadata)
{
    /* Model C 12, H 37, 1 layer; adapter on wq: A (R, 12), B (12, R). */
    tu_shape_t s = {12, 37, 1, 2, 1, 300, 8, 1, 2, 4.0f, TU_TGT(PLAIT_WQ), 1, 2, 1};
    plait_model_t m;
    tu_make_model(&m, &s, 9);
    float data[12 * 16];
    for (size_t i = 0; i < sizeof(data) / sizeof(data[0]); i++)
        data[i] = 0.01f * (float)i;
    plait_st_out_t good[2] = {{"layers.0.wq.lora_A", 2, {2, 12}, data},
                              {"layers.0.wq.lora_B", 2, {12, 2}, data}};
    meta_t mt = {"2", "4", "wq", ZERO64, "plait-lora"};
    plait_lora_t l;
    plait_lora_init(&l);
    ck_assert_msg(load_crafted(&m, &mt, good, 2, &l) == 0, "%s", plait_errmsg());
    ck_assert_int_eq(l.cfg.rank, 2);
    ck_assert(l.scaling == 2.0f);
    plait_lora_free(&l);

    /* Each lie must be refused with EPROTO (or EMISMATCH for another base). */
    static const struct {
        meta_t mt;
        int want;
    } lies[] = {
        {{"3", "4", "wq", ZERO64, "plait-lora"}, PLAIT_EPROTO}, /* rank lies about the shapes */
        {{"1", "4", "wq", ZERO64, "plait-lora"}, PLAIT_EPROTO},
        {{"0", "4", "wq", ZERO64, "plait-lora"}, PLAIT_EPROTO},
        {{"-2", "4", "wq", ZERO64, "plait-lora"}, PLAIT_EPROTO},
        {{"99999999999999999999", "4", "wq", ZERO64, "plait-lora"}, PLAIT_EPROTO},
        {{"2x", "4", "wq", ZERO64, "plait-lora"}, PLAIT_EPROTO},
        {{"", "4", "wq", ZERO64, "plait-lora"}, PLAIT_EPROTO},
        {{"2", "nan", "wq", ZERO64, "plait-lora"}, PLAIT_EPROTO}, /* alpha */
        {{"2", "-4", "wq", ZERO64, "plait-lora"}, PLAIT_EPROTO},
        {{"2", "0", "wq", ZERO64, "plait-lora"}, PLAIT_EPROTO},
        {{"2", "inf", "wq", ZERO64, "plait-lora"}, PLAIT_EPROTO},
        {{"2", "1e300", "wq", ZERO64, "plait-lora"}, PLAIT_EPROTO},
        {{"2", "1e39", "wq", ZERO64, "plait-lora"}, PLAIT_EPROTO}, /* finite double, inf as float */
        {{"2", "", "wq", ZERO64, "plait-lora"}, PLAIT_EPROTO},
        {{"2", "4", "wq,wk", ZERO64, "plait-lora"}, PLAIT_EPROTO}, /* targets: wk tensors missing */
        {{"2", "4", "wk", ZERO64, "plait-lora"}, PLAIT_EPROTO},    /* wq tensors unexpected */
        {{"2", "4", "", ZERO64, "plait-lora"}, PLAIT_EPROTO},
        {{"2", "4", "wq,zz", ZERO64, "plait-lora"}, PLAIT_EPROTO},
        {{"2", "4", "wq", "00", "plait-lora"}, PLAIT_EPROTO}, /* base_sha256 malformed */
        {{"2", "4", "wq", ZERO64 "0", "plait-lora"}, PLAIT_EPROTO},
        {{"2", "4", "wq", "g000000000000000000000000000000000000000000000000000000000000000",
          "plait-lora"},
         PLAIT_EPROTO},
        {{"2", "4", "wq", "", "plait-lora"}, PLAIT_EPROTO},
        {{"2", "4", "wq", "1000000000000000000000000000000000000000000000000000000000000000",
          "plait-lora"},
         PLAIT_EMISMATCH},
        {{"2", "4", "wq", ZERO64, "other"}, PLAIT_EPROTO},
        {{NULL, "4", "wq", ZERO64, "plait-lora"}, PLAIT_EPROTO}, /* missing fields */
        {{"2", NULL, "wq", ZERO64, "plait-lora"}, PLAIT_EPROTO},
        {{"2", "4", NULL, ZERO64, "plait-lora"}, PLAIT_EPROTO},
        {{"2", "4", "wq", NULL, "plait-lora"}, PLAIT_EPROTO},
        {{"2", "4", "wq", ZERO64, NULL}, PLAIT_EPROTO},
    };
    for (size_t i = 0; i < sizeof(lies) / sizeof(lies[0]); i++) {
        plait_lora_init(&l);
        int rc = load_crafted(&m, &lies[i].mt, good, 2, &l);
        ck_assert_msg(rc == lies[i].want, "lie %zu: rc %d, want %d (%s)", i, rc, lies[i].want,
                      plait_errmsg());
        ck_assert_ptr_null(l.params);
        plait_lora_free(&l);
    }
    /* Tensors that lie: wrong shapes, transposed, extra, missing, a layer
     * out of range, non-canonical names, non-finite values. */
    float nanv[24];
    for (int i = 0; i < 24; i++)
        nanv[i] = i == 5 ? NAN : 0.0f;
    const plait_st_out_t bad_sets[][3] = {
        {{"layers.0.wq.lora_A", 2, {12, 2}, data}, {"layers.0.wq.lora_B", 2, {12, 2}, data}},
        {{"layers.0.wq.lora_A", 2, {2, 12}, data}, {"layers.0.wq.lora_B", 2, {2, 12}, data}},
        {{"layers.0.wq.lora_A", 1, {24}, data}, {"layers.0.wq.lora_B", 2, {12, 2}, data}},
        {{"layers.0.wq.lora_A", 3, {1, 2, 12}, data}, {"layers.0.wq.lora_B", 2, {12, 2}, data}},
        {{"layers.0.wq.lora_A", 2, {2, 12}, data}},
        {{"layers.0.wq.lora_A", 2, {2, 12}, data},
         {"layers.0.wq.lora_B", 2, {12, 2}, data},
         {"layers.1.wq.lora_A", 2, {2, 12}, data}},
        {{"layers.0.wq.lora_A", 2, {2, 12}, data},
         {"layers.0.wq.lora_B", 2, {12, 2}, data},
         {"extra", 1, {1}, data}},
        {{"layers.00.wq.lora_A", 2, {2, 12}, data}, {"layers.0.wq.lora_B", 2, {12, 2}, data}},
        {{"layers.0.wq.lora_A", 2, {2, 12}, data},
         {"layers.0.wq.lora_B", 2, {12, 2}, data},
         {"layers.99999999999999999999.wq.lora_A", 2, {2, 12}, data}},
        {{"layers.0.wq.lora_A", 2, {2, 12}, data}, {"layers.0.wq.lora_B", 2, {12, 2}, nanv}},
        {{"layers.0.wq.lora_A", 2, {2, 12}, data},
         {"layers.0.wq.lora_B", 2, {12, 2}, data},
         {"layers.-1.wq.lora_A", 2, {2, 12}, data}},
        {{"layers.0.wq.lora_A", 2, {2, 12}, data}, {"layers.0.wq.lora_b", 2, {12, 2}, data}},
    };
    const size_t nset[] = {2, 2, 2, 2, 1, 3, 3, 2, 3, 2, 3, 2};
    for (size_t i = 0; i < sizeof(nset) / sizeof(nset[0]); i++) {
        plait_lora_init(&l);
        int rc = load_crafted(&m, &mt, bad_sets[i], nset[i], &l);
        ck_assert_msg(rc == PLAIT_EPROTO, "tensor set %zu: rc %d (%s)", i, rc, plait_errmsg());
        ck_assert_ptr_null(l.params);
        plait_lora_free(&l);
    }
    plait_model_free(&m);
}
END_TEST

/* A hand-written safetensors image (header JSON given) with data bytes. */
static int load_raw(const plait_model_t *m, const char *json, size_t data_len)
{
    size_t hl = strlen(json), len = 8 + hl + data_len;
    uint8_t *img = calloc(1, len);
    ck_assert_ptr_nonnull(img);
    for (int i = 0; i < 8; i++)
        img[i] = (uint8_t)((uint64_t)hl >> (8 * i));
    memcpy(img + 8, json, hl);
    plait_lora_t l;
    plait_lora_init(&l);
    int rc = plait_adapter_load_mem(&l, img, len, m, 0);
    plait_lora_free(&l);
    free(img);
    return rc;
}

#define RAW_META_OK                                                                                    \
    "\"__metadata__\":{\"format\":\"plait-lora\",\"rank\":\"1\",\"alpha\":\"1\",\"targets\":"      \
    "\"wq\",\"base_sha256\":\"" ZERO64 "\"}"

START_TEST(test_adapter_raw_hostile)
{
    tu_shape_t s = {12, 37, 1, 2, 1, 300, 8, 1, 1, 1.0f, TU_TGT(PLAIT_WQ), 1, 2, 1};
    plait_model_t m;
    tu_make_model(&m, &s, 9);
    const char *A =
        "\"layers.0.wq.lora_A\":{\"dtype\":\"F32\",\"shape\":[1,12],\"data_offsets\":[0,48]}";
    const char *Bt =
        "\"layers.0.wq.lora_B\":{\"dtype\":\"F32\",\"shape\":[12,1],\"data_offsets\":[48,96]}";
    char json[2048];
    snprintf(json, sizeof(json), "{%s,%s,%s}", A, Bt, RAW_META_OK);
    ck_assert_msg(load_raw(&m, json, 96) == 0, "%s", plait_errmsg());
    /* Duplicate tensor (same name twice, different ranges). */
    snprintf(
        json, sizeof(json), "{%s,%s,%s,%s}", A, Bt,
        "\"layers.0.wq.lora_A\":{\"dtype\":\"F32\",\"shape\":[1,12],\"data_offsets\":[96,144]}",
        RAW_META_OK);
    ck_assert_int_eq(load_raw(&m, json, 144), PLAIT_EPROTO);
    /* Duplicate metadata key. */
    snprintf(json, sizeof(json), "{%s,%s,%s,\"__metadata__\":{\"rank\":\"2\"}}", A, Bt, RAW_META_OK);
    ck_assert_int_eq(load_raw(&m, json, 96), PLAIT_EPROTO);
    /* A name with an embedded NUL that equals a canonical name up to it. */
    snprintf(json, sizeof(json),
             "{\"layers.0.wq.lora_A\\u0000x\":{\"dtype\":\"F32\",\"shape\":[1,12],\"data_offsets\":"
             "[0,48]},%s,%s}",
             Bt, RAW_META_OK);
    ck_assert_int_eq(load_raw(&m, json, 96), PLAIT_EPROTO);
    /* A metadata key with an embedded NUL that shadows "rank". */
    snprintf(json, sizeof(json),
             "{%s,%s,\"__metadata__\":{\"rank\\u0000\":\"7\",\"format\":\"plait-lora\","
             "\"rank\":\"1\",\"alpha\":\"1\",\"targets\":\"wq\",\"base_sha256\":\"" ZERO64 "\"}}",
             A, Bt);
    int rc = load_raw(&m, json, 96);
    ck_assert_msg(rc == PLAIT_EPROTO || rc == 0, "rc %d", rc);
    /* Overlapping, out-of-range, huge and negative offsets; a hole; bad dtype. */
    const char *bad[] = {
        "{\"layers.0.wq.lora_A\":{\"dtype\":\"F32\",\"shape\":[1,12],\"data_offsets\":[0,48]},"
        "\"layers.0.wq.lora_B\":{\"dtype\":\"F32\",\"shape\":[12,1],\"data_offsets\":[40,88]}"
        "," RAW_META_OK "}",
        "{\"layers.0.wq.lora_A\":{\"dtype\":\"F32\",\"shape\":[1,12],\"data_offsets\":[0,48]},"
        "\"layers.0.wq.lora_B\":{\"dtype\":\"F32\",\"shape\":[12,1],\"data_offsets\":[48,"
        "18446744073709551615]}," RAW_META_OK "}",
        "{\"layers.0.wq.lora_A\":{\"dtype\":\"F32\",\"shape\":[1,12],\"data_offsets\":[0,48]},"
        "\"layers.0.wq.lora_B\":{\"dtype\":\"F32\",\"shape\":[12,1],\"data_offsets\":[-48,0]}"
        "," RAW_META_OK "}",
        "{\"layers.0.wq.lora_A\":{\"dtype\":\"F32\",\"shape\":[1,12],\"data_offsets\":[0,48]},"
        "\"layers.0.wq.lora_B\":{\"dtype\":\"F32\",\"shape\":[4611686018427387904,4],\"data_"
        "offsets\":[48,96]}," RAW_META_OK "}",
        "{\"layers.0.wq.lora_A\":{\"dtype\":\"F32\",\"shape\":[1,12],\"data_offsets\":[0,48]},"
        "\"layers.0.wq.lora_B\":{\"dtype\":\"F16\",\"shape\":[12,1],\"data_offsets\":[48,96]}"
        "," RAW_META_OK "}",
        "{\"layers.0.wq.lora_A\":{\"dtype\":\"F32\",\"shape\":[1,12],\"data_offsets\":[0,48]},"
        "\"layers.0.wq.lora_B\":{\"dtype\":\"F32\",\"shape\":[12,1.5],\"data_offsets\":[48,96]}"
        "," RAW_META_OK "}",
        "{\"layers.0.wq.lora_A\":{\"dtype\":\"F32\",\"shape\":[1,12],\"data_offsets\":[0,48]},"
        "\"layers.0.wq.lora_B\":{\"dtype\":\"F32\",\"shape\":\"12\",\"data_offsets\":[48,96]}"
        "," RAW_META_OK "}",
        "{\"layers.0.wq.lora_A\":{\"dtype\":\"F32\",\"shape\":[1,12],\"data_offsets\":[0,48]},"
        "\"layers.0.wq.lora_B\":{\"dtype\":\"F32\",\"shape\":[12,1],\"data_offsets\":[52,100]}"
        "," RAW_META_OK "}",
        "{\"layers.0.wq.lora_A\":{\"dtype\":\"F32\",\"shape\":[1,12],\"data_offsets\":[0,48]},"
        "\"layers.0.wq.lora_B\":{\"dtype\":\"F32\",\"shape\":[12,1],\"data_offsets\":[48,96]},\"__"
        "metadata__\":{\"rank\":1}}",
        "[]",
        "",
        "{\"__metadata__\":{\"format\":\"plait-lora\"}}",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        rc = load_raw(&m, bad[i], 100);
        ck_assert_msg(rc == PLAIT_EPROTO || rc == PLAIT_ETOOBIG, "raw %zu: rc %d (%s)", i, rc,
                      plait_errmsg());
    }
    /* Header length that lies (bigger than the file, and 2^64 - 1). */
    uint8_t img[16] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, '{', '}'};
    plait_lora_t l;
    plait_lora_init(&l);
    rc = plait_adapter_load_mem(&l, img, sizeof(img), &m, 0);
    ck_assert(rc == PLAIT_EPROTO || rc == PLAIT_ETOOBIG);
    img[7] = 0, img[6] = 0, img[5] = 0, img[4] = 0, img[3] = 0, img[2] = 0, img[1] = 0, img[0] = 9;
    ck_assert_int_eq(plait_adapter_load_mem(&l, img, sizeof(img), &m, 0), PLAIT_EPROTO);
    ck_assert_int_eq(plait_adapter_load_mem(&l, img, 7, &m, 0), PLAIT_EPROTO);
    ck_assert_int_eq(plait_adapter_load_mem(&l, NULL, 0, &m, 0), PLAIT_EPROTO);
    plait_model_free(&m);
}
END_TEST

START_TEST(test_adapter_file_size_bounded)
{
    /* An adapter file far larger than any adapter of this model can be (here
     * a sparse 1 GiB file) is refused from its size, before it is read into
     * memory: the loader used to malloc and read up to 16 GiB whatever the
     * model, then fail to parse. */
    tu_shape_t s = {12, 37, 1, 2, 1, 300, 8, 1, 2, 4.0f, TU_TGT(PLAIT_WQ), 1, 2, 1};
    plait_model_t m;
    tu_make_model(&m, &s, 9);
    char *path = tu_path(scratch, "huge.safetensors");
    int fd = open(path, O_CREAT | O_TRUNC | O_WRONLY, 0600);
    ck_assert_int_ge(fd, 0);
    ck_assert_int_eq(ftruncate(fd, (off_t)1 << 30), 0);
    close(fd);
    plait_lora_t l;
    plait_lora_init(&l);
    int rc = plait_adapter_load(&l, path, &m, 0);
    ck_assert_msg(rc == PLAIT_ETOOBIG, "rc %d (%s)", rc, plait_errmsg());
    /* The largest legal adapter (rank 1024 on every projection) still loads. */
    plait_lora_config_t lc = {.rank = PLAIT_LORA_MAX_RANK, .alpha = 1.0f, .targets = TU_ALL7};
    ck_assert_int_eq(plait_lora_setup(&l, &m.cfg, &lc), 0);
    uint8_t sha[32] = {0};
    ck_assert_int_eq(plait_adapter_save(path, &l, sha), 0);
    plait_lora_free(&l);
    ck_assert_msg(plait_adapter_load(&l, path, &m, 0) == 0, "%s", plait_errmsg());
    plait_lora_free(&l);
    free(path);
    plait_model_free(&m);
}
END_TEST

Suite *adapter_suite(void)
{
    Suite *s = suite_create("adapter");
    TCase *tc = tcase_create("files");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_crafted_ok);
    tcase_add_test(tc, test_round_trip_and_hash);
    tcase_add_test(tc, test_reference_files);
    tcase_add_test(tc, test_save_grads);
    suite_add_tcase(s, tc);
    tc = tcase_create("untrusted");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_names_shapes_dtypes);
    tcase_add_test(tc, test_offsets);
    tcase_add_test(tc, test_json_and_metadata);
    tcase_add_test(tc, test_non_finite);
    tcase_add_test(tc, test_header_length_and_truncation);
    suite_add_tcase(s, tc);
    tc = tcase_create("hostile");
    tcase_add_checked_fixture(tc, hostile_setup, hostile_teardown);
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_adapter_lying_metadata);
    tcase_add_test(tc, test_adapter_raw_hostile);
    tcase_add_test(tc, test_adapter_file_size_bounded);
    suite_add_tcase(s, tc);
    return s;
}
