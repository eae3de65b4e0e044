/*
 * check_embed.c: the embedding API's record call (plait_agent_add_record):
 * an app adds its interactions to the store the agent trains on.
 */
#include <check.h>
#include <stdlib.h>
#include <string.h>

#include "plait/client.h"
#include "plait/store.h"
#include "testutil.h"

START_TEST(test_add_record)
{
    char *dir = tu_tmpdir("embed");
    ck_assert_ptr_nonnull(dir);
    char *db = tu_path(dir, "app.db");
    int64_t id1 = 0, id2 = 0;
    /* The first record creates the store. */
    ck_assert_int_eq(plait_agent_add_record(db, PLAIT_STORE_TIME_NOW, "chat", "hello there", 11, &id1), 0);
    ck_assert_int_eq(plait_agent_add_record(db, 1700000000, NULL, "second note", 11, &id2), 0);
    ck_assert(id1 > 0 && id2 > id1);
    plait_store_config_t sc;
    plait_store_config_default(&sc);
    sc.path = db;
    sc.create = false;
    plait_store_t *st = NULL;
    ck_assert_int_eq(plait_store_open(&st, &sc), 0);
    int64_t n = 0;
    ck_assert_int_eq(plait_store_count(st, &n), 0);
    ck_assert_int_eq(n, 2);
    plait_store_close(st);
    /* Mistakes: one clear error, never the text itself. */
    ck_assert_int_eq(plait_agent_add_record(db, PLAIT_STORE_TIME_NOW, "bad\nkind", "secret words", 12, NULL), PLAIT_EINVAL);
    ck_assert_ptr_null(strstr(plait_errmsg(), "secret"));
    ck_assert_int_eq(plait_agent_add_record(db, PLAIT_STORE_TIME_NOW, NULL, "", 0, NULL), PLAIT_EINVAL);
    ck_assert_int_eq(plait_agent_add_record(NULL, PLAIT_STORE_TIME_NOW, NULL, "x", 1, NULL), PLAIT_EINVAL);
    char *missing = tu_path(dir, "no/such/dir/app.db");
    ck_assert_int_ne(plait_agent_add_record(missing, PLAIT_STORE_TIME_NOW, NULL, "x", 1, NULL), 0);
    free(missing);
    free(db);
    tu_rmdir(dir);
    free(dir);
}
END_TEST

Suite *embed_suite(void)
{
    Suite *s = suite_create("embed");
    TCase *tc = tcase_create("records");
    tcase_add_test(tc, test_add_record);
    suite_add_tcase(s, tc);
    return s;
}
