/*
 * runner.c: main() for one module's check suite. Each tests/unit/check_X.c
 * defines `Suite *X_suite(void)`; CMake passes its name as PLAIT_SUITE_FN.
 * CK_RUN_CASE / CK_FORK=no work as check documents them.
 */
#include <check.h>
#include <stdlib.h>

Suite *PLAIT_SUITE_FN(void);

int main(void)
{
    SRunner *sr = srunner_create(PLAIT_SUITE_FN());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
