/*
 * check_admit.c: the aggregator's pre-auth admission pool and refusal-log
 * bucket (aggregator/server_admit.c, issue #11 item 1), without sockets:
 * caps, per-address shares, leaving, the pool cap's reserve for devices, and
 * the token bucket driven by explicit times.
 */
#include <check.h>
#include <stdio.h>

#include "server_admit.h"
#include "testutil.h"

START_TEST(test_caps_and_leave)
{
    plait__admit_t a;
    plait__admit_init(&a);
    /* 3 per address, 5 in all */
    for (int i = 0; i < 3; i++) ck_assert_int_eq(plait__admit_enter(&a, "10.0.0.1", 5, 3), PLAIT__ADMIT_OK);
    ck_assert_int_eq(plait__admit_enter(&a, "10.0.0.1", 5, 3), PLAIT__ADMIT_ADDR_FULL);
    ck_assert_uint_eq(plait__admit_count(&a, "10.0.0.1"), 3);
    ck_assert_int_eq(plait__admit_enter(&a, "10.0.0.2", 5, 3), PLAIT__ADMIT_OK);
    ck_assert_int_eq(plait__admit_enter(&a, "::1", 5, 3), PLAIT__ADMIT_OK);
    ck_assert_int_eq(plait__admit_enter(&a, "10.0.0.3", 5, 3), PLAIT__ADMIT_POOL_FULL);
    ck_assert_uint_eq(a.preauth, 5);
    /* leaving frees the slot and, at zero, the address entry */
    plait__admit_leave(&a, "10.0.0.2");
    ck_assert_uint_eq(plait__admit_count(&a, "10.0.0.2"), 0);
    ck_assert_uint_eq(a.n_addrs, 2);
    ck_assert_int_eq(plait__admit_enter(&a, "10.0.0.3", 5, 3), PLAIT__ADMIT_OK);
    for (int i = 0; i < 3; i++) plait__admit_leave(&a, "10.0.0.1");
    plait__admit_leave(&a, "::1");
    plait__admit_leave(&a, "10.0.0.3");
    ck_assert_uint_eq(a.preauth, 0);
    ck_assert_uint_eq(a.n_addrs, 0);
    /* many distinct addresses: the table grows */
    char addr[32];
    for (int i = 0; i < 100; i++) {
        snprintf(addr, sizeof(addr), "10.1.0.%d", i);
        ck_assert_int_eq(plait__admit_enter(&a, addr, 1000, 1), PLAIT__ADMIT_OK);
    }
    ck_assert_uint_eq(a.n_addrs, 100);
    plait__admit_free(&a);
}
END_TEST

START_TEST(test_pool_cap_keeps_room_for_devices)
{
    ck_assert_uint_eq(plait__admit_cap(256, 64), 64);
    ck_assert_uint_eq(plait__admit_cap(64, 64), 48);  /* a quarter stays for devices */
    ck_assert_uint_eq(plait__admit_cap(16, 100), 12);
    ck_assert_uint_eq(plait__admit_cap(2, 64), 2);    /* tiny configurations still admit */
    ck_assert_uint_eq(plait__admit_cap(1, 64), 1);
}
END_TEST

START_TEST(test_log_bucket)
{
    plait__admit_t a;
    plait__admit_init(&a);
    int logged = 0;
    for (int i = 0; i < 100; i++) logged += plait__admit_log_ok(&a, 10.0); /* a burst at one instant */
    ck_assert_int_eq(logged, (int)PLAIT__ADMIT_LOG_BURST);
    ck_assert_uint_eq(a.suppressed, 100 - (int)PLAIT__ADMIT_LOG_BURST);
    /* one second later: PLAIT__ADMIT_LOG_RATE more */
    logged = 0;
    for (int i = 0; i < 100; i++) logged += plait__admit_log_ok(&a, 11.0);
    ck_assert_int_eq(logged, (int)PLAIT__ADMIT_LOG_RATE);
    /* a long quiet spell refills only up to the burst */
    logged = 0;
    for (int i = 0; i < 100; i++) logged += plait__admit_log_ok(&a, 1000.0);
    ck_assert_int_eq(logged, (int)PLAIT__ADMIT_LOG_BURST);
    plait__admit_free(&a);
}
END_TEST

Suite *admit_suite(void)
{
    Suite *s = suite_create("admit");
    TCase *tc = tcase_create("admit");
    tcase_add_test(tc, test_caps_and_leave);
    tcase_add_test(tc, test_pool_cap_keeps_room_for_devices);
    tcase_add_test(tc, test_log_bucket);
    suite_add_tcase(s, tc);
    return s;
}
