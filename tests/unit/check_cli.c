/*
 * check_cli.c: strict flag value parsing (no blanks, signs or octal where cli.h promises decimal or 0x).
 */
#include <check.h>
#include <stdint.h>
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

START_TEST(test_cli_u64_strict)
{
    /* strtoull skips leading blanks and negates a '-' after them: " -1" was
     * UINT64_MAX, so `ingest --max-bytes " -1"` lifted the file-size cap.
     * And base 0 read "010" as octal 8 where cli.h promises decimal or 0x. */
    uint64_t u = 7;
    ck_assert_int_eq(plait_cli_u64("--max-bytes", " -1", &u), PLAIT_EINVAL);
    ck_assert_int_eq(plait_cli_u64("--max-bytes", "\t-1", &u), PLAIT_EINVAL);
    ck_assert_int_eq(plait_cli_u64("--max-bytes", " 5", &u), PLAIT_EINVAL);
    ck_assert_int_eq(plait_cli_u64("--max-bytes", "+5", &u), PLAIT_EINVAL);
    ck_assert_int_eq(plait_cli_u64("--max-bytes", "0x", &u), PLAIT_EINVAL);
    ck_assert_int_eq(plait_cli_u64("--max-bytes", "0x-1", &u), PLAIT_EINVAL);
    ck_assert_int_eq(plait_cli_u64("--max-bytes", "18446744073709551616", &u), PLAIT_EINVAL);
    ck_assert_uint_eq(u, 7); /* untouched on error */
    ck_assert_int_eq(plait_cli_u64("--seed", "010", &u), 0);
    ck_assert_uint_eq(u, 10);
    ck_assert_int_eq(plait_cli_u64("--seed", "0x10", &u), 0);
    ck_assert_uint_eq(u, 16);
    ck_assert_int_eq(plait_cli_u64("--seed", "0XfF", &u), 0);
    ck_assert_uint_eq(u, 255);
    ck_assert_int_eq(plait_cli_u64("--seed", "0", &u), 0);
    ck_assert_uint_eq(u, 0);
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
    tcase_add_test(tc, test_cli_u64_strict);
    suite_add_tcase(s, tc);
    return s;
}
