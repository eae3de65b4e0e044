/*
 * check_model.c: checkpoint loading: the real stories260K header and hash,
 * and every way a file can be wrong (truncated, oversized, absurd header,
 * missing) rejected with an error, never a crash.
 */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "plait/crypto.h"
#include "plait/infer.h"
#include "plait/lora.h"
#include "plait/model.h"
#include "plait/train.h"
#include "testutil.h"

static char *model_path(void) { return tu_path(tu_assets_dir(), "stories260K.bin"); }

START_TEST(test_load_stories260k)
{
    char *p = model_path();
    plait_model_t m;
    plait_model_init(&m);
    ck_assert_msg(plait_model_load(&m, p) == 0, "%s", plait_errmsg());
    ck_assert_int_eq(m.cfg.dim, 64);
    ck_assert_int_eq(m.cfg.hidden_dim, 172);
    ck_assert_int_eq(m.cfg.n_layers, 5);
    ck_assert_int_eq(m.cfg.n_heads, 8);
    ck_assert_int_eq(m.cfg.n_kv_heads, 4);
    ck_assert_int_eq(m.cfg.vocab_size, 512);
    ck_assert_int_eq(m.cfg.head_size, 8);
    ck_assert_int_eq(m.cfg.kv_dim, 32);
    ck_assert_int_eq(m.cfg.shared, 1);
    ck_assert_ptr_eq(m.w.wcls, m.w.token_embedding);
    char hex[65];
    plait_hex(m.sha256, 32, hex);
    ck_assert_str_eq(hex, "b0a507e7ad0f626624f17112325e66691f9076d622e1d3274d103d00299f2696");
    /* rms_final sits right before the RoPE tables: 28 + 4 * (weights - C). */
    const float *rf = (const float *)((const uint8_t *)m.map + 28) + (264128 - 64 - 2 * 512 * 4);
    ck_assert_ptr_eq(m.w.rms_final, rf);
    plait_model_free(&m);
    plait_model_free(&m); /* double free is safe */
    free(p);
}
END_TEST

START_TEST(test_load_untied_reference)
{
    char *dir = tu_path(tu_reference_dir(), "tiny_untied_all7_r4");
    char *p = tu_path(dir, "model.bin");
    plait_model_t m;
    plait_model_init(&m);
    ck_assert_msg(plait_model_load(&m, p) == 0, "%s", plait_errmsg());
    ck_assert_int_eq(m.cfg.shared, 0);
    ck_assert_int_eq(m.cfg.vocab_size, 96);
    ck_assert_ptr_ne(m.w.wcls, m.w.token_embedding);
    /* The classifier is the last V*C floats of the file. */
    const float *end = (const float *)((const uint8_t *)m.map + m.map_len);
    ck_assert_ptr_eq(m.w.wcls + 96 * 32, end);
    plait_model_free(&m);
    free(p);
    free(dir);
}
END_TEST

/* Write a mutated copy of stories260K and expect load to fail with code. */
static void expect_bad(const uint8_t *buf, size_t len, int code, const char *needle)
{
    char *d = tu_tmpdir("model");
    char *p = tu_path(d, "bad.bin");
    ck_assert_int_eq(tu_write_file(p, buf, len), 0);
    plait_model_t m;
    plait_model_init(&m);
    int rc = plait_model_load(&m, p);
    ck_assert_msg(rc == code, "expected %s, got %s (%s)", plait_err_name(code), plait_err_name(rc),
                  plait_errmsg());
    if (needle) ck_assert_msg(strstr(plait_errmsg(), needle) != NULL, "detail '%s' lacks '%s'",
                              plait_errmsg(), needle);
    plait_model_free(&m);
    remove(p);
    remove(d);
    free(p);
    free(d);
}

START_TEST(test_bad_files)
{
    char *p = model_path();
    size_t len;
    uint8_t *buf = tu_read_file(p, &len);
    ck_assert_ptr_nonnull(buf);
    ck_assert_uint_eq(len, 1056540);
    expect_bad(buf, 0, PLAIT_EPROTO, "shorter");
    expect_bad(buf, 27, PLAIT_EPROTO, "shorter");
    expect_bad(buf, 28, PLAIT_EPROTO, "truncated");
    expect_bad(buf, len - 1, PLAIT_EPROTO, "truncated");
    uint8_t *big = calloc(1, len + 4);
    memcpy(big, buf, len);
    expect_bad(big, len + 4, PLAIT_EPROTO, "trailing");
    free(big);
    /* Absurd header fields, one at a time. */
    struct { int off; int32_t v; const char *field; } cases[] = {
        {0, 0, "dim"}, {0, -5, "dim"}, {0, 1 << 30, "dim"}, {4, 0, "hidden_dim"},
        {8, 0, "n_layers"}, {8, 100000, "n_layers"}, {12, 0, "n_heads"}, {12, 7, "n_heads"},
        {16, 3, "n_kv_heads"}, {16, 16, "n_kv_heads"}, {20, 0, "vocab_size"},
        {20, INT32_MIN, "vocab_size"}, {24, 0, "seq_len"}, {24, -1, "seq_len"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        uint8_t *c = malloc(len);
        memcpy(c, buf, len);
        memcpy(c + cases[i].off, &cases[i].v, 4);
        expect_bad(c, len, PLAIT_EPROTO, NULL);
        free(c);
    }
    /* A consistent but different header: the size no longer matches. */
    uint8_t *c = malloc(len);
    memcpy(c, buf, len);
    int32_t untied = -512;
    memcpy(c + 20, &untied, 4);
    expect_bad(c, len, PLAIT_EPROTO, "truncated");
    free(c);
    free(buf);
    free(p);
}
END_TEST

START_TEST(test_missing_file)
{
    plait_model_t m;
    plait_model_init(&m);
    ck_assert_int_eq(plait_model_load(&m, "/nonexistent/model.bin"), PLAIT_EIO);
    ck_assert_ptr_nonnull(strstr(plait_errmsg(), "/nonexistent/model.bin"));
    ck_assert_int_eq(plait_model_load(&m, "/"), PLAIT_EIO);
}
END_TEST

START_TEST(test_random_model)
{
    plait_model_config_t c = {.dim = 32, .hidden_dim = 80, .n_layers = 2, .n_heads = 4,
                              .n_kv_heads = 2, .vocab_size = 96, .seq_len = 64, .shared = 0};
    plait_model_t a, b;
    plait_model_init(&a);
    plait_model_init(&b);
    ck_assert_int_eq(plait_model_init_random(&a, &c, 42), 0);
    ck_assert_int_eq(plait_model_init_random(&b, &c, 42), 0);
    ck_assert_int_eq(a.cfg.kv_dim, 16);
    ck_assert_float_eq(a.w.rms_final[0], 1.0f);
    ck_assert_int_eq(memcmp(a.w.wq, b.w.wq, 32 * 32 * sizeof(float)), 0);
    ck_assert_ptr_ne(a.w.wcls, a.w.token_embedding);
    plait_model_free(&a);
    plait_model_free(&b);
    c.n_heads = 3;
    ck_assert_int_eq(plait_model_init_random(&a, &c, 1), PLAIT_EPROTO);
}
END_TEST

/* ---------------------------------------------------- hostile headers */

static char *scratch;

static void hostile_setup(void)
{
    scratch = tu_tmpdir("model_hostile");
    ck_assert_ptr_nonnull(scratch);
}

static void hostile_teardown(void)
{
    tu_rmdir(scratch);
    free(scratch);
    scratch = NULL;
}

/* Write a header (7 fields) followed by extra zero bytes; load it. */
static int load_header(const int32_t h[7], size_t extra, plait_model_t *m)
{
    size_t n = 28 + extra;
    uint8_t *buf = calloc(1, n);
    ck_assert_ptr_nonnull(buf);
    for (int i = 0; i < 7; i++)
        tu_put_i32le(buf + 4 * i, h[i]);
    char *path = tu_path(scratch, "model.bin");
    ck_assert_int_eq(tu_write_file(path, buf, n), 0);
    plait_model_init(m);
    int rc = plait_model_load(m, path);
    free(path);
    free(buf);
    return rc;
}

/* Floats a valid file of this header holds after the 28-byte header. */
static size_t file_floats(const int32_t h[7])
{
    size_t C = (size_t)h[0], H = (size_t)h[1], L = (size_t)h[2], NH = (size_t)h[3],
           NKV = (size_t)h[4];
    size_t V = (size_t)(h[5] < 0 ? -h[5] : h[5]), S = (size_t)h[6], HS = C / NH, KV = NKV * HS;
    size_t n = V * C + L * C + L * C * C * 2 + 2 * L * KV * C + L * C + 3 * L * H * C + C + S * HS;
    if (h[5] < 0) n += V * C;
    return n;
}

START_TEST(test_model_header_hostile)
{
    plait_model_t m;
    static const int32_t bad[][7] = {
        {16, 32, 1, 2, 4, 300, 8},        /* n_kv_heads > n_heads */
        {16, 32, 1, 4, 3, 300, 8},        /* n_heads not a multiple of n_kv_heads */
        {10, 32, 1, 4, 4, 300, 8},        /* dim not divisible by n_heads */
        {12, 32, 1, 4, 4, 300, 8},        /* head size 3: odd */
        {16, 32, 1, 2, 2, INT32_MIN, 8},  /* vocab INT32_MIN */
        {16, 32, 1, 2, 2, 0, 8},          /* vocab 0 */
        {16, 32, 1, 2, 2, 300, 0},        /* seq_len 0 */
        {16, 32, 0, 2, 2, 300, 8},        /* no layers */
        {16, 0, 1, 2, 2, 300, 8},         /* no hidden */
        {-16, 32, 1, 2, 2, 300, 8},       /* negative dim */
        {INT32_MAX, 32, 1, 2, 2, 300, 8}, /* huge dim */
        {16, 32, 1, 0, 0, 300, 8},        /* no heads */
        {16, 32, 1, 2, 0, 300, 8},        /* no kv heads */
        {16384, 65536, 256, 1024, 1024, -1048576, 1048576}, /* every limit at once: size mismatch */
        {16384, 65536, 256, 2, 1, 1048576, 1048576},
        {16, 32, 1, 2, 2, 300, INT32_MAX},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        int rc = load_header(bad[i], 64, &m);
        ck_assert_msg(rc == PLAIT_EPROTO, "header %zu: rc %d (%s)", i, rc, plait_errmsg());
        ck_assert_ptr_null(m.map);
        plait_model_free(&m);
    }
    /* A valid header with one float too few or too many. */
    static const int32_t ok[7] = {16, 37, 1, 2, 1, -300, 1};
    size_t nf = file_floats(ok);
    ck_assert_int_eq(load_header(ok, nf * 4 - 4, &m), PLAIT_EPROTO);
    ck_assert_int_eq(load_header(ok, nf * 4 + 4, &m), PLAIT_EPROTO);
    ck_assert_int_eq(load_header(ok, nf * 4 + 1, &m), PLAIT_EPROTO);
    /* Exactly right: seq_len 1 loads, trains at T = 1, refuses T = 2, and
     * inference refuses position 1. */
    ck_assert_msg(load_header(ok, nf * 4, &m) == 0, "%s", plait_errmsg());
    ck_assert_int_eq(m.cfg.seq_len, 1);
    ck_assert_int_eq(m.cfg.shared, 0);
    plait_lora_t l;
    plait_lora_config_t lc;
    plait_lora_config_default(&lc);
    plait_lora_init(&l);
    ck_assert_int_eq(plait_lora_setup(&l, &m.cfg, &lc), 0);
    plait_train_config_t tc = plait_train_config_default();
    tc.B = 2;
    tc.T = 2;
    plait_trainer_t *tr = NULL;
    ck_assert_int_eq(plait_train_create(&tr, &m, &l, &tc), PLAIT_EINVAL);
    ck_assert_ptr_null(tr);
    tc.T = 1;
    ck_assert_int_eq(plait_train_create(&tr, &m, &l, &tc), 0);
    int32_t tok[4] = {1, 2, 299, 0};
    float loss = 0;
    ck_assert_int_eq(plait_train_forward_backward(tr, tok, &loss), 0);
    ck_assert(isfinite(loss) && loss > 0);
    ck_assert_int_eq(plait_train_step(tr), 0);
    plait_train_destroy(tr);
    plait_infer_t st;
    plait_infer_init(&st);
    ck_assert_int_eq(plait_infer_setup(&st, &m, &l, NULL), 0);
    ck_assert_int_eq(plait_infer_forward(&st, 1, 0, NULL), 0);
    ck_assert_int_eq(plait_infer_forward(&st, 1, 1, NULL), PLAIT_ETOOBIG);
    ck_assert_int_eq(plait_infer_forward(&st, 1, -1, NULL), PLAIT_ETOOBIG);
    plait_infer_free(&st);
    plait_infer_config_t ic;
    plait_infer_config_default(&ic);
    ic.max_ctx = 2;
    plait_infer_init(&st);
    ck_assert_int_eq(plait_infer_setup(&st, &m, &l, &ic), PLAIT_EINVAL);
    ic.max_ctx = -1;
    ck_assert_int_eq(plait_infer_setup(&st, &m, &l, &ic), PLAIT_EINVAL);
    ic.max_ctx = 0;
    ic.prefill_chunk = 0;
    ck_assert_int_eq(plait_infer_setup(&st, &m, &l, &ic), PLAIT_EINVAL);
    plait_infer_free(&st);
    plait_lora_free(&l);
    plait_model_free(&m);
}
END_TEST

START_TEST(test_random_model_limits)
{
    /* init_random refuses the same headers, and refuses to allocate absurd
     * sizes with an error rather than a crash. */
    plait_model_config_t c = {.dim = 16,
                              .hidden_dim = 32,
                              .n_layers = 1,
                              .n_heads = 2,
                              .n_kv_heads = 4,
                              .vocab_size = 300,
                              .seq_len = 8};
    plait_model_t m;
    plait_model_init(&m);
    ck_assert_int_eq(plait_model_init_random(&m, &c, 1), PLAIT_EPROTO);
    c.n_kv_heads = 2;
    c.dim = 14; /* head size 7 */
    ck_assert_int_eq(plait_model_init_random(&m, &c, 1), PLAIT_EPROTO);
    c.dim = 16;
    c.seq_len = PLAIT_MODEL_MAX_SEQ + 1;
    ck_assert_int_eq(plait_model_init_random(&m, &c, 1), PLAIT_EPROTO);
    plait_model_free(&m);
}
END_TEST

Suite *model_suite(void)
{
    Suite *s = suite_create("model");
    TCase *tc = tcase_create("load");
    tcase_add_test(tc, test_load_stories260k);
    tcase_add_test(tc, test_load_untied_reference);
    tcase_add_test(tc, test_bad_files);
    tcase_add_test(tc, test_missing_file);
    tcase_add_test(tc, test_random_model);
    suite_add_tcase(s, tc);
    TCase *th = tcase_create("hostile");
    tcase_add_checked_fixture(th, hostile_setup, hostile_teardown);
    tcase_set_timeout(th, 60);
    tcase_add_test(th, test_model_header_hostile);
    tcase_add_test(th, test_random_model_limits);
    suite_add_tcase(s, th);
    return s;
}
