/*
 * check_errors.c: the error table and the logger.
 */
#include <check.h>
#include <string.h>

#include "plait/log.h"
#include "plait/plait.h"

START_TEST(test_strerror_names)
{
    ck_assert_str_eq(plait_err_name(PLAIT_EINVAL), "PLAIT_EINVAL");
    ck_assert_str_eq(plait_strerror(PLAIT_ENOMEM), "out of memory");
    ck_assert_str_eq(plait_err_name(0), "PLAIT_OK");
    ck_assert_str_eq(plait_err_name(-9999), "PLAIT_EUNKNOWN");
    /* Every code in the table has a distinct name. */
    int codes[] = {
#define XX(n, c, m) c,
        PLAIT_ERR_MAP(XX)
#undef XX
    };
    size_t n = sizeof(codes) / sizeof(codes[0]);
    for (size_t i = 0; i < n; i++) {
        ck_assert_int_lt(codes[i], 0);
        for (size_t j = i + 1; j < n; j++) {
            ck_assert_int_ne(codes[i], codes[j]);
            ck_assert_str_ne(plait_err_name(codes[i]), plait_err_name(codes[j]));
        }
    }
}
END_TEST

START_TEST(test_fail_detail)
{
    plait_clear_error();
    ck_assert_str_eq(plait_errmsg(), "success");
    int rc = plait_fail(PLAIT_EIO, "file %s is %d bytes", "x.bin", 12);
    ck_assert_int_eq(rc, PLAIT_EIO);
    ck_assert_str_eq(plait_errmsg(), "file x.bin is 12 bytes");
    plait_clear_error();
    ck_assert_str_eq(plait_errmsg(), "success");
}
END_TEST

static int sink_calls;
static char sink_last[256];
static void sink(plait_log_level_t level, const char *line, void *ud)
{
    (void)level;
    (void)ud;
    sink_calls++;
    strncpy(sink_last, line, sizeof(sink_last) - 1);
}

static int evaluated;
static int side_effect(void) { return ++evaluated; }

START_TEST(test_log_levels)
{
    plait_log_set_sink(sink, NULL);
    plait_log_set_level(PLAIT_LOG_WARN);
    sink_calls = 0;
    evaluated = 0;
    PLAIT_LOG(PLAIT_LOG_INFO, "hidden %d", side_effect());
    ck_assert_int_eq(sink_calls, 0);
    ck_assert_int_eq(evaluated, 0); /* arguments not evaluated below the level */
    PLAIT_LOG(PLAIT_LOG_ERROR, "shown %d", side_effect());
    ck_assert_int_eq(sink_calls, 1);
    ck_assert_str_eq(sink_last, "shown 1");
    plait_log_level_t lv;
    ck_assert_int_eq(plait_log_parse_level("debug", &lv), 0);
    ck_assert_int_eq(lv, PLAIT_LOG_DEBUG);
    ck_assert_int_eq(plait_log_parse_level("loud", &lv), PLAIT_EINVAL);
    plait_log_set_sink(NULL, NULL);
    plait_log_set_level(PLAIT_LOG_INFO);
}
END_TEST

Suite *errors_suite(void)
{
    Suite *s = suite_create("errors");
    TCase *tc = tcase_create("table");
    tcase_add_test(tc, test_strerror_names);
    tcase_add_test(tc, test_fail_detail);
    tcase_add_test(tc, test_log_levels);
    suite_add_tcase(s, tc);
    return s;
}
