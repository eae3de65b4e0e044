/*
 * check_flags.c: the table-driven flag parser (flags.h): values land in their
 * destinations, each kind of error is one line naming the flag, rules, and a
 * --help generated from the table that lists every flag.
 */
#include <check.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "plait/flags.h"

/* A command with one flag of every kind and a rule of every kind. */
typedef struct {
    const char *db, *text, *jsonl;
    int rank, quiet, once, daemon;
    long long rounds;
    uint32_t ms;
    uint64_t seed;
    double lr;
    float alpha;
    int parity;
    size_t clients;
    bool loud;
    const char *setv[3];
    plait_flag_list_t sets;
    plait_flag_t flags[20];
    plait_flag_rule_t rules[4];
    plait_flags_cmd_t cmd;
} fixture_t;

static int parse_even(void *dest, const char *v)
{
    if (strcmp(v, "even") == 0) return *(int *)dest = 2, 0;
    return plait_fail(PLAIT_EINVAL, "--parity: '%.20s' is not even", v);
}

static void fixture(fixture_t *x)
{
    memset(x, 0, sizeof(*x));
    x->rank = 8;
    x->lr = 0.5;
    x->alpha = 16;
    x->sets.v = x->setv;
    x->sets.cap = 3;
    plait_flag_t f[] = {
        PLAIT_F_STR("db", &x->db, "DB", "the store"),
        PLAIT_F_STR("text", &x->text, "FILE", "a text file"),
        PLAIT_F_STR("jsonl", &x->jsonl, "FILE", "a JSON-lines file"),
        PLAIT_F_INT("rank", &x->rank, 1, 64, "R", "LoRA rank", 1),
        PLAIT_F_LLONG("rounds", &x->rounds, 1, 1000, "N", "rounds", 0),
        PLAIT_F_U32("ms", &x->ms, 0, UINT32_MAX, "MS", "milliseconds", 0),
        PLAIT_F_U64("seed", &x->seed, "N", "seed", 0),
        PLAIT_F_DOUBLE("lr", &x->lr, 0, 1, "X", "learning rate\nsecond line", 1),
        PLAIT_F_FLOAT("alpha", &x->alpha, 1e-6, 1e6, "A", "alpha", 0),
        PLAIT_F_SET("quiet", &x->quiet, 1, "say less"),
        PLAIT_F_SET("once", &x->once, 1, "one round"),
        PLAIT_F_SET("daemon", &x->daemon, 1, "keep going"),
        PLAIT_F_LIST("set", &x->sets, "K=V", "a setting (repeatable)"),
        PLAIT_F_CUSTOM("parity", &x->parity, parse_even, "P", "even only"),
        PLAIT_F_STR("hidden", &x->jsonl, "X", NULL),
        PLAIT_F_SIZE("clients", &x->clients, 1, 1000, "N", "clients", 0),
        PLAIT_F_BOOL("loud", &x->loud, "say more"),
    };
    memcpy(x->flags, f, sizeof(f));
    plait_flag_rule_t r[] = {
        {PLAIT_RULE_REQUIRED, {"db"}},
        {PLAIT_RULE_ONE_OF, {"text", "jsonl"}},
        {PLAIT_RULE_AT_MOST_ONE, {"once", "daemon"}},
        {PLAIT_RULE_NEEDS, {"rounds", "daemon"}},
    };
    memcpy(x->rules, r, sizeof(r));
    x->cmd = (plait_flags_cmd_t){.prog = "plait-test run",
                                 .about = "Runs a test.\n",
                                 .epilogue = "Example: plait-test run --db x\n",
                                 .flags = x->flags,
                                 .n_flags = sizeof(f) / sizeof(f[0]),
                                 .rules = x->rules,
                                 .n_rules = 4};
}

/* Parse a space-separated command line (argv[0] "run" is prepended). */
static int run(fixture_t *x, const char *line, int *first)
{
    static char buf[512];
    static char *argv[32];
    snprintf(buf, sizeof(buf), "run %s", line);
    int argc = 0;
    for (char *t = strtok(buf, " "); t && argc < 31; t = strtok(NULL, " "))
        argv[argc++] = t;
    argv[argc] = NULL;
    FILE *devnull = fopen("/dev/null", "w");
    int rc = plait_flags_parse(&x->cmd, argc, argv, devnull, first);
    fclose(devnull);
    return rc;
}

static void expect_err(const char *line, const char *msg)
{
    fixture_t x;
    fixture(&x);
    ck_assert_int_eq(run(&x, line, NULL), PLAIT_EINVAL);
    ck_assert_msg(strcmp(plait_errmsg(), msg) == 0, "'%s': got '%s', want '%s'", line,
                  plait_errmsg(), msg);
}

START_TEST(test_values)
{
    fixture_t x;
    fixture(&x);
    ck_assert_int_eq(run(&x,
                         "--db d --text t --rank 4 --rounds 3 --daemon --ms 4294967295 --seed 0x10 "
                         "--lr 0.25 --alpha=2 --quiet --set a=1 --set b=2 --parity even --hidden h "
                         "--clients 1000 --loud",
                         NULL),
                     0);
    ck_assert_str_eq(x.db, "d");
    ck_assert_str_eq(x.text, "t");
    ck_assert_str_eq(x.jsonl, "h"); /* an unlisted flag still parses */
    ck_assert_int_eq(x.rank, 4);
    ck_assert_int_eq(x.rounds, 3);
    ck_assert_int_eq(x.daemon, 1);
    ck_assert_uint_eq(x.ms, UINT32_MAX);
    ck_assert_uint_eq(x.seed, 16);
    ck_assert_double_eq(x.lr, 0.25);
    ck_assert_float_eq(x.alpha, 2.0f);
    ck_assert_int_eq(x.quiet, 1);
    ck_assert_int_eq(x.once, 0);
    ck_assert_uint_eq(x.sets.n, 2);
    ck_assert_str_eq(x.setv[1], "b=2");
    ck_assert_int_eq(x.parity, 2);
    ck_assert_uint_eq(x.clients, 1000);
    ck_assert(x.loud);
    ck_assert_int_eq(plait_flags_seen(&x.cmd, "set"), 2);
    ck_assert_int_eq(plait_flags_seen(&x.cmd, "once"), 0);
    ck_assert_int_eq(plait_flags_seen(&x.cmd, "nope"), 0);

    /* The last of a repeated flag wins; parsing again starts over. */
    fixture(&x);
    ck_assert_int_eq(run(&x, "--db a --jsonl j --rank 2 --rank 3", NULL), 0);
    ck_assert_int_eq(x.rank, 3);
    ck_assert_int_eq(plait_flags_seen(&x.cmd, "rank"), 2);
    ck_assert_int_eq(plait_flags_seen(&x.cmd, "daemon"), 0);

    /* Positional arguments, when the command takes them, are left at the end. */
    fixture(&x);
    x.cmd.extra_args = 1;
    int first = 0;
    ck_assert_int_eq(run(&x, "DIR --db a --text t OTHER", &first), 0);
    ck_assert_int_eq(first, 5);
}
END_TEST

START_TEST(test_errors)
{
    expect_err("--db a --text t --bogus", "unknown flag or missing value: '--bogus' (see --help)");
    fixture_t y;
    fixture(&y);
    ck_assert_int_eq(run(&y, "--db a --rank", NULL), PLAIT_EINVAL);
    ck_assert_str_eq(y.cmd.unknown, "--rank");
    expect_err("--db a --text t --rank", "unknown flag or missing value: '--rank' (see --help)");
    expect_err("--db a --text t --quiet=1",
               "unknown flag or missing value: '--quiet=1' (see --help)");
    expect_err("--db a --text t --rank 0", "--rank: '0' is outside 1..64");
    expect_err("--db a --text t --rank 2x", "--rank: '2x' is not an integer");
    expect_err("--db a --text t --lr 2", "--lr: '2' is outside 0..1");
    expect_err("--db a --text t --alpha nan", "--alpha: 'nan' is not a finite number");
    expect_err("--db a --text t --seed -1", "--seed: '-1' is negative");
    expect_err("--db a --text t --clients 0", "--clients: '0' is outside 1..1000");
    expect_err("--db a --text t --loud=1",
               "unknown flag or missing value: '--loud=1' (see --help)");
    expect_err("--db a --text t --ms -1", "--ms: '-1' is outside 0..4294967295");
    expect_err("--db a --text t --parity odd", "--parity: 'odd' is not even");
    expect_err("--db a --text t --set 1 --set 2 --set 3 --set 4", "more than 3 --set flags");
    expect_err("--db a --text t stray", "unexpected argument 'stray'");
    /* The first bad flag is the one reported. */
    expect_err("--rank 0 --bogus", "--rank: '0' is outside 1..64");
    /* Rules, in the table's order. */
    expect_err("--text t", "--db is required");
    expect_err("--db a", "give exactly one of --text and --jsonl");
    expect_err("--db a --text t --jsonl j", "give exactly one of --text and --jsonl");
    expect_err("--db a --text t --once --daemon", "give at most one of --once and --daemon");
    expect_err("--db a --text t --rounds 2", "--rounds needs --daemon");

    fixture_t x;
    fixture(&x);
    x.rules[0].names[1] = "jsonl";
    x.rules[0].names[2] = "seed";
    ck_assert_int_eq(run(&x, "--db a --text t", NULL), PLAIT_EINVAL);
    ck_assert_str_eq(plait_errmsg(), "--db, --jsonl and --seed are required");
    /* A bad value stops parsing before the rules, leaving the default in place. */
    fixture(&x);
    ck_assert_int_eq(run(&x, "--rank 99", NULL), PLAIT_EINVAL);
    ck_assert_int_eq(x.rank, 8);
}
END_TEST

START_TEST(test_help)
{
    fixture_t x;
    fixture(&x);
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    ck_assert_ptr_nonnull(f);
    char *argv[] = {"run", "--rank", "4", "--help", "--bogus", NULL};
    ck_assert_int_eq(plait_flags_parse(&x.cmd, 5, argv, f, NULL), PLAIT_FLAGS_HELP);
    fclose(f);
    /* The usage line: required bare, groups in brackets, the rest optional. */
    ck_assert_msg(strncmp(text,
                          "usage: plait-test run --db DB (--text FILE | --jsonl FILE) [--rank R]",
                          69) == 0,
                  "%s", text);
    ck_assert_msg(strstr(text, "[--once | --daemon]") != NULL, "%s", text);
    ck_assert_msg(strstr(text, "[--set K=V]...") != NULL, "%s", text);
    ck_assert_msg(strstr(text, "\nRuns a test.\n") != NULL, "%s", text);
    ck_assert_msg(strstr(text, "Example: plait-test run --db x\n") != NULL, "%s", text);
    /* One line per listed flag; the default read from its variable (set before --help). */
    for (size_t i = 0; i < x.cmd.n_flags; i++) {
        char want[64];
        snprintf(want, sizeof(want), "\n  --%s", x.flags[i].name);
        if (x.flags[i].help)
            ck_assert_msg(strstr(text, want) != NULL, "no %s in %s", want, text);
        else
            ck_assert_msg(strstr(text, want) == NULL, "%s listed in %s", want, text);
    }
    /* the default as it was before parsing, not the --rank 4 given before --help */
    ck_assert_msg(strstr(text, "LoRA rank (default 8)") != NULL, "%s", text);
    ck_assert_msg(strstr(text, "learning rate\n") != NULL &&
                      strstr(text, "second line (default 0.5)"),
                  "%s", text);
    /* Continuation lines of a help text line up with the first. */
    const char *l1 = strstr(text, "learning rate"), *l2 = strstr(text, "second line");
    const char *nl = strchr(l1, '\n');
    const char *bol = l1;
    while (bol > text && bol[-1] != '\n')
        bol--;
    ck_assert_int_eq((int)(l2 - nl - 1), (int)(l1 - bol));
    free(text);
}
END_TEST

/* The strict style (plait-aggregator's): exact names, once each, DIR positional. */
static void expect_strict(const char *line, const char *msg)
{
    fixture_t x;
    fixture(&x);
    const char *pos[1];
    x.cmd.strict = 1;
    x.cmd.pos = pos;
    x.cmd.n_pos = 1;
    x.cmd.n_rules = 0;
    int rc = run(&x, line, NULL);
    if (!msg) {
        ck_assert_msg(rc == 0, "'%s': %s", line, plait_errmsg());
        return;
    }
    ck_assert_int_eq(rc, PLAIT_EINVAL);
    ck_assert_msg(strcmp(plait_errmsg(), msg) == 0, "'%s': got '%s', want '%s'", line,
                  plait_errmsg(), msg);
}

START_TEST(test_strict)
{
    fixture_t x;
    fixture(&x);
    const char *pos[2];
    x.cmd.strict = 1;
    x.cmd.pos = pos;
    x.cmd.n_pos = 2;
    ck_assert_int_eq(run(&x, "--db=a DIR --text t --set k=1 --set=k=2 --daemon --rank 3", NULL), 0);
    ck_assert_str_eq(pos[0], "DIR");
    ck_assert_ptr_null(pos[1]);
    ck_assert_str_eq(x.db, "a");
    ck_assert_int_eq(x.rank, 3);
    ck_assert_uint_eq(x.sets.n, 2);
    ck_assert_str_eq(x.setv[1], "k=2");
    ck_assert_int_eq(x.daemon, 1);

    expect_strict("DIR --db a", NULL);
    expect_strict("DIR --bogus 1", "unknown flag '--bogus' (try --help)");
    expect_strict("DIR --bogus=1", "unknown flag '--bogus' (try --help)");
    expect_strict("DIR --ran 1", "unknown flag '--ran' (try --help)"); /* no abbreviations */
    expect_strict("DIR OTHER", "unknown argument 'OTHER' (try --help)");
    expect_strict("DIR --db a --db b", "--db given twice");
    expect_strict("DIR --quiet=1", "--quiet takes no value");
    expect_strict("DIR --db", "--db needs a value");
    expect_strict("DIR --set", "--set needs K=V");
    expect_strict("DIR --rank 0", "--rank: '0' is outside 1..64");
    expect_strict("--rank 0 --help", "--rank: '0' is outside 1..64");
    fixture(&x);
    x.cmd.strict = 1;
    x.cmd.pos = pos;
    x.cmd.n_pos = 1;
    FILE *devnull = fopen("/dev/null", "w");
    char *argv[] = {"run", "--help", "--bogus", NULL};
    ck_assert_int_eq(plait_flags_parse(&x.cmd, 3, argv, devnull, NULL), PLAIT_FLAGS_HELP);
    fclose(devnull);
}
END_TEST

Suite *flags_suite(void)
{
    Suite *s = suite_create("flags");
    TCase *tc = tcase_create("parse");
    tcase_add_test(tc, test_values);
    tcase_add_test(tc, test_errors);
    tcase_add_test(tc, test_help);
    tcase_add_test(tc, test_strict);
    suite_add_tcase(s, tc);
    return s;
}
