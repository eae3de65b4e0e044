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
#include "plait/model.h"
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
    return s;
}
