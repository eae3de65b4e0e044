/*
 * check_file.c: lib/file.c's helpers for user-named files: whole-file maps
 * (plait_file_map: the bytes mapped are the file's; empty files, FIFOs,
 * directories and missing files are PLAIT_EIO naming the label) and
 * directory syncs (plait_file_sync_dir: a missing directory is an error
 * only when it must open).
 */
#include <check.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "plait/file.h"
#include "testutil.h"

START_TEST(test_map_contents)
{
    char *dir = tu_tmpdir("file_map");
    char *p = tu_path(dir, "blob");
    uint8_t buf[5000];
    for (size_t i = 0; i < sizeof(buf); i++)
        buf[i] = (uint8_t)(i * 131u + 7u);
    ck_assert_int_eq(tu_write_file(p, buf, sizeof(buf)), 0);
    void *map = (void *)1;
    size_t n = 1;
    ck_assert_int_eq(plait_file_map(p, NULL, &map, &n), 0);
    ck_assert_ptr_nonnull(map);
    ck_assert_uint_eq(n, sizeof(buf));
    ck_assert_int_eq(memcmp(map, buf, sizeof(buf)), 0);
    plait_file_unmap(map, n);
    plait_file_unmap(NULL, 0); /* does nothing */
    free(p);
    tu_rmdir(dir);
    free(dir);
}
END_TEST

START_TEST(test_map_refusals)
{
    char *dir = tu_tmpdir("file_map_bad");
    char *empty = tu_path(dir, "empty"), *fifo = tu_path(dir, "fifo"),
         *missing = tu_path(dir, "missing");
    ck_assert_int_eq(tu_write_file(empty, "", 0), 0);
    ck_assert_int_eq(mkfifo(fifo, 0600), 0);
    void *map = (void *)1;
    size_t n = 1;
    ck_assert_int_eq(plait_file_map(empty, "model x", &map, &n), PLAIT_EIO);
    ck_assert_ptr_null(map);
    ck_assert_uint_eq(n, 0);
    ck_assert_str_eq(plait_errmsg(), "model x: empty file");
    ck_assert_int_eq(plait_file_map(fifo, NULL, &map, &n),
                     PLAIT_EIO); /* refused at once, not waited on */
    ck_assert_ptr_nonnull(strstr(plait_errmsg(), "FIFO"));
    ck_assert_int_eq(plait_file_map(missing, NULL, &map, &n), PLAIT_EIO);
    ck_assert_ptr_nonnull(strstr(plait_errmsg(), missing));
    ck_assert_int_eq(plait_file_map(dir, NULL, &map, &n), PLAIT_EIO);
    ck_assert_ptr_null(map);
    free(empty);
    free(fifo);
    free(missing);
    tu_rmdir(dir);
    free(dir);
}
END_TEST

START_TEST(test_sync_dir)
{
    char *dir = tu_tmpdir("file_sync");
    char *missing = tu_path(dir, "missing");
    ck_assert_int_eq(plait_file_sync_dir(dir, 1), 0);
    ck_assert_int_eq(plait_file_sync_dir(dir, 0), 0);
    ck_assert_int_eq(plait_file_sync_dir(missing, 0), 0); /* best effort: skipped */
    ck_assert_int_eq(plait_file_sync_dir(missing, 1), PLAIT_EIO);
    ck_assert_ptr_nonnull(strstr(plait_errmsg(), "cannot sync the directory"));
    free(missing);
    tu_rmdir(dir);
    free(dir);
}
END_TEST

Suite *file_suite(void)
{
    Suite *s = suite_create("file");
    TCase *tc = tcase_create("map");
    tcase_add_test(tc, test_map_contents);
    tcase_add_test(tc, test_map_refusals);
    suite_add_tcase(s, tc);
    tc = tcase_create("sync_dir");
    tcase_add_test(tc, test_sync_dir);
    suite_add_tcase(s, tc);
    return s;
}
