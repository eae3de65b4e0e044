/*
 * check_agentcli.c: the plait-agent binary, run as a user runs it.
 *
 * - `train --dump-grads` on the PyTorch reference cases writes the loss and
 *   every adapter gradient, which must match the reference values;
 * - ingest → info → train → eval → generate → forget work end to end on a
 *   small store;
 * - every bad flag, value or file exits non-zero with one line on stderr that
 *   names what was wrong.
 */
#include <check.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include "plait/adapter.h"
#include "testutil.h"

/* Relative to the largest gradient of a tensor, as the reference README advises. */
#define GRAD_REL_TOL 1e-4
#define LOSS_REL_TOL 1e-5

static char agent[1024];
static char *scratch;

static void setup(void)
{
    snprintf(agent, sizeof(agent), "%s/client/plait-agent", PLAIT_BINARY_DIR);
    scratch = tu_tmpdir("agentcli");
    ck_assert_ptr_nonnull(scratch);
}

static void teardown(void)
{
    char cmd[1200];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", scratch);
    if (system(cmd) != 0) fprintf(stderr, "cannot remove %s\n", scratch);
    free(scratch);
}

/* Run `plait-agent ARGS`, capture stdout+stderr into out; return exit status. */
static int run(char *out, size_t cap, const char *fmt, ...)
{
    char args[4096], cmd[8192], log[1200];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(args, sizeof(args), fmt, ap);
    va_end(ap);
    snprintf(log, sizeof(log), "%s/out.txt", scratch);
    snprintf(cmd, sizeof(cmd), "PLAIT_ASSETS='%s' '%s' %s >'%s' 2>&1", tu_assets_dir(), agent, args, log);
    int st = system(cmd);
    size_t n = 0;
    uint8_t *b = tu_read_file(log, &n);
    if (out && cap) {
        snprintf(out, cap, "%s", b ? (char *)b : "");
    }
    free(b);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128;
}

static void check_dump(const char *case_name, const char *model)
{
    char *dir = tu_path(tu_reference_dir(), case_name);
    char *init = tu_path(dir, "adapter_init.safetensors");
    char *toks = tu_path(dir, "tokens.i32");
    char *ref = tu_path(dir, "grads.safetensors");
    char *model_path = model ? tu_path(tu_assets_dir(), model) : tu_path(dir, "model.bin");
    char *dump = tu_path(scratch, "grads.safetensors");
    char out[4096];
    /* B and T from case.json: both cases use B = 2; T is 32 and 16. */
    int T = strcmp(case_name, "stories260K_wq_wv_r8") == 0 ? 32 : 16;
    int rc = run(out, sizeof(out), "train --model '%s' --init-adapter '%s' --tokens '%s' --batch 2 --seq %d --dump-grads '%s'",
                 model_path, init, toks, T, dump);
    ck_assert_msg(rc == 0, "train --dump-grads failed: %s", out);

    plait_safetensors_t a, b;
    plait_safetensors_init(&a);
    plait_safetensors_init(&b);
    ck_assert_msg(plait_safetensors_read(&a, dump) == 0, "%s", plait_errmsg());
    ck_assert_msg(plait_safetensors_read(&b, ref) == 0, "%s", plait_errmsg());
    ck_assert_uint_eq(a.n_tensors, b.n_tensors);
    for (size_t i = 0; i < b.n_tensors; i++) {
        const plait_st_tensor_t *t = &b.tensors[i];
        size_t n = (size_t)t->numel;
        double *x = malloc(n * sizeof(double)), *y = malloc(n * sizeof(double));
        ck_assert_msg(plait_safetensors_get_f64(&a, t->name, x, n) == 0, "%s: %s", t->name, plait_errmsg());
        ck_assert_int_eq(plait_safetensors_get_f64(&b, t->name, y, n), 0);
        double mx = 0, err = 0;
        for (size_t j = 0; j < n; j++) {
            mx = fmax(mx, fabs(y[j]));
            err = fmax(err, fabs(x[j] - y[j]));
        }
        double tol = strcmp(t->name, "loss") == 0 ? LOSS_REL_TOL : GRAD_REL_TOL;
        ck_assert_msg(err <= tol * mx, "%s %s: max error %g vs max %g", case_name, t->name, err, mx);
        free(x);
        free(y);
    }
    plait_safetensors_free(&a);
    plait_safetensors_free(&b);
    free(dir); free(init); free(toks); free(ref); free(model_path); free(dump);
}

START_TEST(test_dump_grads_reference)
{
    check_dump("stories260K_wq_wv_r8", "stories260K.bin");
    check_dump("tiny_untied_all7_r4", NULL);
}
END_TEST

START_TEST(test_end_to_end)
{
    char out[8192];
    char *txt = tu_path(scratch, "notes.txt");
    char *db = tu_path(scratch, "dev.db");
    char *ad = tu_path(scratch, "a.safetensors");
    FILE *f = fopen(txt, "w");
    ck_assert_ptr_nonnull(f);
    for (int i = 0; i < 60; i++)
        fprintf(f, "ROMEO:\nBut soft, what light through yonder window breaks? It is the east %d.\n\n", i);
    fclose(f);
    ck_assert_int_eq(run(out, sizeof(out), "ingest --db '%s' --text '%s'", db, txt), 0);
    ck_assert_ptr_nonnull(strstr(out, "ingested 60 records"));
    ck_assert_int_eq(run(out, sizeof(out), "info --db '%s'", db), 0);
    ck_assert_ptr_nonnull(strstr(out, "60 records"));
    ck_assert_msg(run(out, sizeof(out), "train --db '%s' --out '%s' --steps 8 --batch 2 --seq 32 --lr 1e-2 --threads 2",
                      db, ad) == 0, "%s", out);
    ck_assert_ptr_nonnull(strstr(out, "wrote"));
    ck_assert_msg(run(out, sizeof(out), "eval --db '%s' --split all --adapter '%s' --seq 32 --json", db, ad) == 0,
                  "%s", out);
    double base = 0, adl = 0;
    char *p = strstr(out, "\"base_loss\":");
    char *q = strstr(out, "\"adapter_loss\":");
    ck_assert_ptr_nonnull(p);
    ck_assert_ptr_nonnull(q);
    base = atof(p + 12);
    adl = atof(q + 15);
    /* Eight steps on a repetitive text must lower its loss. */
    ck_assert_msg(adl < base - 0.1, "adapter %f vs base %f", adl, base);
    ck_assert_int_eq(run(out, sizeof(out), "generate --adapter '%s' --prompt ROMEO --temperature 0 --steps 20", ad), 0);
    ck_assert_ptr_nonnull(strstr(out, "ROMEO"));
    ck_assert_int_eq(run(out, sizeof(out), "generate --adapter '%s' --unmerged --prompt ROMEO --temperature 0 --steps 20", ad), 0);
    ck_assert_int_eq(run(out, sizeof(out), "forget --db '%s' --all", db), 0);
    ck_assert_ptr_nonnull(strstr(out, "erased 60 records"));
    ck_assert_int_eq(run(out, sizeof(out), "info --db '%s'", db), 0);
    ck_assert_ptr_nonnull(strstr(out, "0 records"));
    free(txt); free(db); free(ad);
}
END_TEST

/* keygen: a P-256 key 0600 (never overwritten) and a CSR that names no one. */
START_TEST(test_keygen)
{
    char out[4096];
    char *key = tu_path(scratch, "dev.key"), *csr = tu_path(scratch, "dev.csr");
    ck_assert_int_eq(run(out, sizeof(out), "keygen --key '%s' --csr '%s'", key, csr), 0);
    struct stat sb;
    ck_assert_int_eq(stat(key, &sb), 0);
    ck_assert_uint_eq(sb.st_mode & 0777, 0600);
    size_t n = 0;
    uint8_t *k1 = tu_read_file(key, &n);
    ck_assert_ptr_nonnull(k1);
    ck_assert_ptr_nonnull(strstr((const char *)k1, "PRIVATE KEY"));
    uint8_t *c = tu_read_file(csr, &n);
    ck_assert_ptr_nonnull(strstr((const char *)c, "CERTIFICATE REQUEST"));
    ck_assert_int_eq(run(out, sizeof(out), "keygen --key '%s' --csr '%s'", key, csr), 1);
    ck_assert_ptr_nonnull(strstr(out, "not overwriting"));
    uint8_t *k2 = tu_read_file(key, &n);
    ck_assert_str_eq((const char *)k1, (const char *)k2);
    ck_assert_int_eq(run(out, sizeof(out), "keygen --key '%s'", key), 2);
    free(k1);
    free(k2);
    free(c);
    free(key);
    free(csr);
}
END_TEST

/* One line on stderr, exit status as given, containing the needle. */
static void expect_fail(int status, const char *needle, const char *args)
{
    char out[4096];
    int rc = run(out, sizeof(out), "%s", args);
    ck_assert_msg(rc == status, "'%s' exited %d, expected %d: %s", args, rc, status, out);
    ck_assert_msg(strstr(out, needle) != NULL, "'%s' said '%s', which lacks '%s'", args, out, needle);
    size_t lines = 0;
    for (const char *c = out; *c; c++) lines += *c == '\n';
    ck_assert_msg(lines == 1, "'%s' printed %zu lines: %s", args, lines, out);
}

START_TEST(test_bad_input)
{
    char args[2048];
    expect_fail(2, "unknown command", "frobnicate");
    expect_fail(2, "--rank", "train --text x --out y --rank 0");
    expect_fail(2, "--lr", "train --text x --out y --lr fast");
    expect_fail(2, "lora target 'wz'", "train --text x --out y --targets wq,wz");
    expect_fail(2, "--out is required", "train --text x");
    expect_fail(2, "--db and --text", "train --out y");
    expect_fail(2, "--bogus", "train --bogus");
    expect_fail(2, "--temperature", "generate --temperature -1");
    expect_fail(2, "--top-p", "generate --top-p 2");
    expect_fail(2, "--split", "eval --db x --split sideways");
    expect_fail(1, "/nonexistent/m.bin", "generate --model /nonexistent/m.bin");
    expect_fail(1, "/nonexistent/t.bin", "generate --tokenizer /nonexistent/t.bin");
    expect_fail(1, "--text /nonexistent.txt", "train --text /nonexistent.txt --out y");
    /* A batch whose buffers would exceed the trainer's memory limit is refused before allocating. */
    expect_fail(1, "above the 4096 MiB limit", "train --text /nonexistent.txt --out y --batch 4096 --seq 512");
    /* A truncated model file names the problem. */
    char *m = tu_path(scratch, "trunc.bin");
    ck_assert_int_eq(tu_write_file(m, "\x40\0\0\0\xac\0\0\0", 8), 0);
    snprintf(args, sizeof(args), "generate --model '%s'", m);
    expect_fail(1, "shorter than the 28-byte header", args);
    /* A tokens file of the wrong size is refused before anything runs. */
    char *dir = tu_path(tu_reference_dir(), "stories260K_wq_wv_r8");
    char *init = tu_path(dir, "adapter_init.safetensors");
    snprintf(args, sizeof(args), "train --init-adapter '%s' --tokens '%s' --batch 2 --seq 32 --dump-grads '%s/g'", init,
             m, scratch);
    expect_fail(1, "expected exactly 264 bytes", args);
    /* An adapter for another base model is refused. */
    char *other = tu_path(tu_reference_dir(), "tiny_untied_all7_r4/adapter_init.safetensors");
    snprintf(args, sizeof(args), "generate --adapter '%s'", other);
    expect_fail(1, "adapter", args);
    free(m); free(dir); free(init); free(other);
}
END_TEST

Suite *agentcli_suite(void)
{
    Suite *s = suite_create("agentcli");
    TCase *tc = tcase_create("cli");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, test_dump_grads_reference);
    tcase_add_test(tc, test_end_to_end);
    tcase_add_test(tc, test_bad_input);
    tcase_add_test(tc, test_keygen);
    suite_add_tcase(s, tc);
    return s;
}
