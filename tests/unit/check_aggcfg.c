/*
 * check_aggcfg.c: the aggregator configuration (aggcfg.h): defaults validate
 * once base_model is set, the written file parses back to the same struct,
 * the parser is strict (unknown key, duplicate, bad value, out of range, junk
 * after a quoted string: each an error naming file:line), precedence
 * defaults < file < --set, and cross-field rules.
 */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "plait/aggcfg.h"
#include "plait/plait.h"

static plait_aggcfg_t base(void)
{
    plait_aggcfg_t c;
    plait_aggcfg_default(&c);
    snprintf(c.base_model, sizeof(c.base_model), "/models/m.bin");
    return c;
}

static int parse(plait_aggcfg_t *c, const char *text) { return plait_aggcfg_parse(c, text, strlen(text), "t.conf"); }

/* Federated evaluation needs secure_agg and dp = none; the refusal says which. */
START_TEST(test_eval_settings)
{
    plait_aggcfg_t c = base();
    ck_assert_uint_eq(c.eval_every, 0);
    ck_assert(c.eval_loss_max == 10.0);
    ck_assert_int_eq(plait_aggcfg_eval_allowed(&c), 0);
    ck_assert_int_eq(parse(&c, "eval_every = 5\neval_loss_max = 7.5\n"), 0);
    ck_assert_int_eq(plait_aggcfg_validate(&c), 0);
    ck_assert_uint_eq(c.eval_every, 5);
    ck_assert(c.eval_loss_max == 7.5);
    ck_assert_int_ne(parse(&c, "eval_loss_max = 0\n"), 0); /* out of range */
    ck_assert_int_ne(parse(&c, "eval_loss_max = 1001\n"), 0);
    c = base();
    ck_assert_int_eq(parse(&c, "eval_every = 2\nsecure_agg = false\n"), 0);
    ck_assert_int_eq(plait_aggcfg_validate(&c), PLAIT_EINVAL);
    ck_assert_ptr_nonnull(strstr(plait_errmsg(), "eval_every"));
    ck_assert_ptr_nonnull(strstr(plait_errmsg(), "secure_agg = true"));
    c = base();
    ck_assert_int_eq(parse(&c, "eval_every = 2\ndp = central\nnoise_multiplier = 1\n"), 0);
    ck_assert_int_eq(plait_aggcfg_validate(&c), PLAIT_EINVAL);
    ck_assert_ptr_nonnull(strstr(plait_errmsg(), "dp = none"));
    c.eval_every = 0; /* off: DP deployments validate as before */
    ck_assert_int_eq(plait_aggcfg_eval_allowed(&c), PLAIT_EINVAL);
}
END_TEST

START_TEST(test_defaults)
{
    plait_aggcfg_t c;
    plait_aggcfg_default(&c);
    ck_assert_int_eq(plait_aggcfg_validate(&c), PLAIT_EINVAL); /* base_model required */
    ck_assert_ptr_nonnull(strstr(plait_errmsg(), "base_model"));
    c = base();
    ck_assert_int_eq(plait_aggcfg_validate(&c), 0);
    ck_assert_uint_eq(c.port, 7443);
    ck_assert_uint_eq(c.max_preauth_frame, 4096);
    ck_assert_uint_eq(c.max_send_queue, 2u << 20);
    ck_assert_str_eq(c.lora_mode, "ffa");
    ck_assert(c.metrics_enabled == 1);
    /* a send queue below one download piece would send nothing, parsed or set directly */
    ck_assert_int_ne(parse(&c, "max_send_queue = 4096\n"), 0);
    c.max_send_queue = 0;
    ck_assert_int_eq(plait_aggcfg_validate(&c), PLAIT_EINVAL);
    ck_assert_ptr_nonnull(strstr(plait_errmsg(), "max_send_queue"));
}
END_TEST

START_TEST(test_write_roundtrip)
{
    plait_aggcfg_t c = base();
    snprintf(c.port_file, sizeof(c.port_file), "has # hash and  spaces ");
    c.lr = 0.037;
    c.target_cohort = 17;
    c.metrics_enabled = 0;
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    ck_assert_int_eq(plait_aggcfg_write(&c, f), 0);
    fclose(f);
    /* every setting is written, each with a comment line above it */
    ck_assert_ptr_nonnull(strstr(buf, "\n# "));
    ck_assert_ptr_nonnull(strstr(buf, "idle_timeout_s = 90\n"));
    plait_aggcfg_t d;
    plait_aggcfg_default(&d);
    ck_assert_int_eq(plait_aggcfg_parse(&d, buf, len, "w.conf"), 0);
    ck_assert_mem_eq(&c, &d, sizeof(c));
    free(buf);
}
END_TEST

START_TEST(test_strict)
{
    plait_aggcfg_t c = base();
    ck_assert_int_eq(parse(&c, "port = 1\nbogus = 2\n"), PLAIT_EPROTO);
    ck_assert_ptr_nonnull(strstr(plait_errmsg(), "t.conf:2: unknown setting"));
    c = base();
    ck_assert_int_eq(parse(&c, "# c\n\nport = 1\nport = 2\n"), PLAIT_EPROTO);
    ck_assert_ptr_nonnull(strstr(plait_errmsg(), "t.conf:4: port: set twice"));
    ck_assert_int_eq(parse(&c, "port = 70000\n"), PLAIT_EPROTO);
    ck_assert_ptr_nonnull(strstr(plait_errmsg(), "t.conf:1: port: out of range (0..65535)"));
    ck_assert_int_eq(parse(&c, "lr = abc\n"), PLAIT_EPROTO);
    ck_assert_int_eq(parse(&c, "lr = nan\n"), PLAIT_EPROTO);
    ck_assert_int_eq(parse(&c, "port = -1\n"), PLAIT_EPROTO);
    ck_assert_int_eq(parse(&c, "port = 12x\n"), PLAIT_EPROTO);
    ck_assert_int_eq(parse(&c, "port 12\n"), PLAIT_EPROTO);
    ck_assert_int_eq(parse(&c, "port =\n"), PLAIT_EPROTO);
    ck_assert_int_eq(parse(&c, "metrics_enabled = maybe\n"), PLAIT_EPROTO);
    ck_assert_int_eq(parse(&c, "port_file = \"a\" b\n"), PLAIT_EPROTO);
    ck_assert_int_eq(parse(&c, "port_file = \"open\n"), PLAIT_EPROTO);
    ck_assert_int_eq(plait_aggcfg_parse(&c, "port = 1\0\n", 10, "t.conf"), PLAIT_EPROTO);
    char longv[400];
    memset(longv, 'a', sizeof(longv));
    memcpy(longv, "base_model = ", 13);
    longv[sizeof(longv) - 1] = '\0';
    ck_assert_int_eq(parse(&c, longv), PLAIT_EPROTO);
    /* comments and blanks, quoted values, CRLF */
    c = base();
    ck_assert_int_eq(parse(&c, "  # x\r\n\r\nport = 9  # trailing\r\nport_file = \"p # q\"  # c\r\n"), 0);
    ck_assert_uint_eq(c.port, 9);
    ck_assert_str_eq(c.port_file, "p # q");
}
END_TEST

START_TEST(test_precedence_and_rules)
{
    plait_aggcfg_t c = base();
    ck_assert_int_eq(parse(&c, "port = 9\ntarget_cohort = 4\n"), 0);
    ck_assert_int_eq(plait_aggcfg_set(&c, "port=0"), 0); /* a flag wins over the file */
    ck_assert_uint_eq(c.port, 0);
    ck_assert_int_eq(plait_aggcfg_set(&c, "nope=1"), PLAIT_EINVAL);
    ck_assert_int_eq(plait_aggcfg_set(&c, "port"), PLAIT_EINVAL);
    ck_assert_int_eq(plait_aggcfg_set(&c, "min_cohort=5"), 0);
    ck_assert_int_eq(plait_aggcfg_validate(&c), PLAIT_EINVAL); /* min > target */
    ck_assert_ptr_nonnull(strstr(plait_errmsg(), "min_cohort"));
    c = base();
    ck_assert_int_eq(plait_aggcfg_set(&c, "quant_range=0.5"), 0);
    ck_assert_int_eq(plait_aggcfg_validate(&c), PLAIT_EINVAL);
    c = base();
    ck_assert_int_eq(plait_aggcfg_set(&c, "lora_mode=lol"), 0);
    ck_assert_int_eq(plait_aggcfg_validate(&c), PLAIT_EINVAL);
    c = base();
    ck_assert_int_eq(plait_aggcfg_set(&c, "dp=central"), 0);
    ck_assert_int_eq(plait_aggcfg_validate(&c), 0); /* population 0: the enrolled devices, counted by serve */
    ck_assert_int_eq(plait_aggcfg_set(&c, "population=1000"), 0);
    ck_assert_int_eq(plait_aggcfg_validate(&c), 0);
    ck_assert_int_eq(plait_aggcfg_set(&c, "pace_rounds=2"), 0);
    ck_assert_int_eq(plait_aggcfg_validate(&c), PLAIT_EINVAL); /* pacing breaks independent sampling */
    ck_assert_ptr_nonnull(strstr(plait_errmsg(), "pace_rounds"));
    c = base();
    ck_assert_int_eq(plait_aggcfg_set(&c, "adaptive_clip=true"), 0);
    ck_assert_int_eq(plait_aggcfg_validate(&c), PLAIT_EINVAL); /* needs central DP */
    ck_assert_ptr_nonnull(strstr(plait_errmsg(), "adaptive_clip"));
    ck_assert_int_eq(plait_aggcfg_set(&c, "dp=central"), 0);
    ck_assert_int_eq(plait_aggcfg_validate(&c), 0);
    ck_assert_int_eq(plait_aggcfg_set(&c, "sampling_rate=1.5"), PLAIT_EINVAL);
    /* dp = distributed: secure aggregation, uniform weights, noise that fits the ring */
    c = base();
    ck_assert_int_eq(plait_aggcfg_set(&c, "dp=distributed"), 0);
    ck_assert_int_eq(plait_aggcfg_set(&c, "secure_agg=false"), 0);
    ck_assert_int_eq(plait_aggcfg_validate(&c), PLAIT_EINVAL);
    ck_assert_ptr_nonnull(strstr(plait_errmsg(), "secure_agg"));
    ck_assert_int_eq(plait_aggcfg_set(&c, "secure_agg=true"), 0);
    ck_assert_int_eq(plait_aggcfg_set(&c, "example_cap=64"), 0);
    ck_assert_int_eq(plait_aggcfg_validate(&c), PLAIT_EINVAL);
    ck_assert_ptr_nonnull(strstr(plait_errmsg(), "example_cap"));
    ck_assert_int_eq(plait_aggcfg_set(&c, "example_cap=1"), 0);
    ck_assert_int_eq(plait_aggcfg_validate(&c), 0);
    uint64_t num = 0, den = 0;
    ck_assert_int_eq(plait_aggcfg_ddg_variance(&c, &num, &den), 0);
    ck_assert_uint_gt(num, 0);
    ck_assert_uint_eq(den, 256);
    /* 256 devices at 24 bits with quant_range = clip_norm fill the 2^32 ring: no headroom left */
    ck_assert_int_eq(plait_aggcfg_set(&c, "quant_bits=24"), 0);
    ck_assert_int_eq(plait_aggcfg_set(&c, "target_cohort=256"), 0);
    ck_assert_int_eq(plait_aggcfg_set(&c, "min_cohort=256"), 0);
    ck_assert_int_eq(plait_aggcfg_set(&c, "overselect=1"), 0);
    ck_assert_int_eq(plait_aggcfg_set(&c, "quant_range=1"), 0);
    ck_assert_int_eq(plait_aggcfg_set(&c, "clip_norm=1"), 0);
    ck_assert_int_eq(plait_aggcfg_set(&c, "noise_multiplier=0.001"), 0);
    ck_assert_int_eq(plait_aggcfg_validate(&c), PLAIT_EINVAL);
    ck_assert_msg(strstr(plait_errmsg(), "headroom") != NULL, "%s", plait_errmsg());
    ck_assert_int_eq(plait_aggcfg_set(&c, "quant_range=4"), 0); /* a quarter of the ring for the data */
    ck_assert_int_eq(plait_aggcfg_validate(&c), 0);
    c = base();
    ck_assert_int_eq(plait_aggcfg_set(&c, "max_chunk_bytes=2000000"), 0);
    ck_assert_int_eq(plait_aggcfg_validate(&c), PLAIT_EINVAL); /* frame must hold a chunk */
}
END_TEST

Suite *aggcfg_suite(void)
{
    Suite *s = suite_create("aggcfg");
    TCase *tc = tcase_create("config");
    tcase_add_test(tc, test_defaults);
    tcase_add_test(tc, test_write_roundtrip);
    tcase_add_test(tc, test_strict);
    tcase_add_test(tc, test_precedence_and_rules);
    tcase_add_test(tc, test_eval_settings);
    suite_add_tcase(s, tc);
    return s;
}
