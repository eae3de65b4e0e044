/*
 * check_cli.c: strict flag value parsing.
 */
#include <check.h>
#include <string.h>

#include "plait/cli.h"

START_TEST(test_int)
{
    long long v = 7;
    ck_assert_int_eq(plait_cli_int("--rank", "8", 1, 1024, &v), 0);
    ck_assert_int_eq(v, 8);
    ck_assert_int_eq(plait_cli_int("--rank", "0", 1, 1024, &v), PLAIT_EINVAL);
    ck_assert_ptr_nonnull(strstr(plait_errmsg(), "--rank"));
    ck_assert_ptr_nonnull(strstr(plait_errmsg(), "outside"));
    ck_assert_int_eq(v, 8);
    ck_assert_int_eq(plait_cli_int("--rank", "8x", 1, 1024, &v), PLAIT_EINVAL);
    ck_assert_int_eq(plait_cli_int("--rank", "", 1, 1024, &v), PLAIT_EINVAL);
    ck_assert_int_eq(plait_cli_int("--rank", NULL, 1, 1024, &v), PLAIT_EINVAL);
    ck_assert_int_eq(plait_cli_int("--rank", "99999999999999999999999", 1, 1024, &v), PLAIT_EINVAL);
    ck_assert_int_eq(plait_cli_int("--n", "-3", -5, 5, &v), 0);
    ck_assert_int_eq(v, -3);
}
END_TEST

START_TEST(test_double_u64)
{
    double d = 0;
    ck_assert_int_eq(plait_cli_double("--lr", "1e-3", 0, 1, &d), 0);
    ck_assert_double_eq(d, 1e-3);
    ck_assert_int_eq(plait_cli_double("--lr", "nan", 0, 1, &d), PLAIT_EINVAL);
    ck_assert_int_eq(plait_cli_double("--lr", "inf", 0, 1e9, &d), PLAIT_EINVAL);
    ck_assert_int_eq(plait_cli_double("--lr", "2", 0, 1, &d), PLAIT_EINVAL);
    ck_assert_int_eq(plait_cli_double("--lr", "0.1.2", 0, 1, &d), PLAIT_EINVAL);
    uint64_t u = 0;
    ck_assert_int_eq(plait_cli_u64("--seed", "0x10", &u), 0);
    ck_assert_uint_eq(u, 16);
    ck_assert_int_eq(plait_cli_u64("--seed", "-1", &u), PLAIT_EINVAL);
    ck_assert_int_eq(plait_cli_u64("--seed", "18446744073709551615", &u), 0);
    ck_assert_uint_eq(u, UINT64_MAX);
}
END_TEST

Suite *cli_suite(void)
{
    Suite *s = suite_create("cli");
    TCase *tc = tcase_create("parse");
    tcase_add_test(tc, test_int);
    tcase_add_test(tc, test_double_u64);
    suite_add_tcase(s, tc);
    return s;
}
