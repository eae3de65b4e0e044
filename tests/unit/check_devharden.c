/*
 * check_devharden.c: hostile device-side inputs (issue #11), each a case that
 * failed before its fix:
 *
 * - a FIFO given as any file input of plait-agent, plait-aggregator or
 *   plait-sim is refused at once, naming it (it used to block forever; every
 *   command runs under `timeout` so a regression fails instead of hanging);
 * - a model file truncated or rewritten after loading cannot SIGBUS the
 *   process (the weights are a copy), and non-finite weights are refused at
 *   load naming the tensor;
 * - NaN reaching the trainer's exp (NaN weights, an adapter of 3e38) is a
 *   clean "non-finite loss" error, not an undefined NaN-to-int cast (caught
 *   by the UBSan build, which checks float casts);
 * - `train --steps 0` and an ingest of a file without records are refused;
 * - `plait-aggregator init` that fails half-way (file size limit) leaves
 *   nothing that blocks a re-run;
 * - the device store can be read on a full disk (RLIMIT_FSIZE below the
 *   size of sqlite's -shm index stands in for it), and `serve` says clearly
 *   that the disk is full instead of a garbled message; a full disk that
 *   stops rounds from opening is logged once, not every second.
 */
#include <check.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "plait/aggcfg.h"
#include "plait/infer.h"
#include "plait/lora.h"
#include "plait/model.h"
#include "plait/pki.h"
#include "plait/tok.h"
#include "plait/train.h"
#include "tensor_int.h"
#include "testutil.h"

/* Seconds a command may take before it counts as hung (a loaded 2-core box
 * runs these in well under one). */
#define HANG_S 60

static char *scratch;

static void setup(void)
{
    scratch = tu_tmpdir("devharden");
    ck_assert_ptr_nonnull(scratch);
}

static void teardown(void)
{
    char cmd[1200];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", scratch);
    if (system(cmd) != 0) fprintf(stderr, "cannot remove %s\n", scratch);
    free(scratch);
}

/* Run `BIN ARGS` (BIN relative to the build tree) under timeout, with
 * stdout+stderr in out; return the exit status (124: it hung). */
static int run(char *out, size_t cap, const char *bin, const char *fmt, ...)
{
    char args[4096], cmd[8192], log[1200];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(args, sizeof(args), fmt, ap);
    va_end(ap);
    snprintf(log, sizeof(log), "%s/out.txt", scratch);
    snprintf(cmd, sizeof(cmd), "PLAIT_ASSETS='%s' timeout -k 5 %d '%s/%s' %s >'%s' 2>&1 </dev/null",
             tu_assets_dir(), HANG_S, PLAIT_BINARY_DIR, bin, args, log);
    int st = system(cmd);
    size_t n = 0;
    uint8_t *b = tu_read_file(log, &n);
    snprintf(out, cap, "%s", b ? (char *)b : "");
    free(b);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128;
}

static void expect(int status, const char *needle, const char *bin, const char *args)
{
    char out[4096];
    int rc = run(out, sizeof(out), bin, "%s", args);
    ck_assert_msg(rc != 124, "'%s %s' hung (killed after %d s)", bin, args, HANG_S);
    ck_assert_msg(rc == status, "'%s %s' exited %d, expected %d: %s", bin, args, rc, status, out);
    ck_assert_msg(strstr(out, needle) != NULL, "'%s %s' said '%s', which lacks '%s'", bin, args, out, needle);
}

#define AGENT "client/plait-agent"
#define AGG "aggregator/plait-aggregator"
#define SIM "sim/plait-sim"

START_TEST(test_fifo_inputs)
{
    char *fifo = tu_path(scratch, "pipe");
    ck_assert_int_eq(mkfifo(fifo, 0600), 0);
    char a[2048];
    const char *ok_model = "stories260K.bin";
    char *model = tu_path(tu_assets_dir(), ok_model);
#define CASE(status, bin, ...)                       \
    do {                                             \
        snprintf(a, sizeof(a), __VA_ARGS__);         \
        expect(status, "not a regular file", bin, a); \
    } while (0)
    CASE(1, AGENT, "generate --model '%s'", fifo);
    CASE(1, AGENT, "generate --tokenizer '%s'", fifo);
    CASE(1, AGENT, "generate --adapter '%s' --steps 2", fifo);
    CASE(1, AGENT, "train --text '%s' --out '%s/a' --steps 1", fifo, scratch);
    CASE(1, AGENT, "ingest --db '%s/d.db' --text '%s'", scratch, fifo);
    CASE(1, AGENT, "ingest --db '%s/d.db' --jsonl '%s'", scratch, fifo);
    CASE(1, AGENT, "eval --text '%s' --seq 16", fifo);
    CASE(1, AGENT, "train --init-adapter '%s' --tokens '%s' --batch 2 --seq 32 --dump-grads '%s/g'", fifo, fifo,
         scratch);
    CASE(1, AGG, "init '%s/dep' --base-model '%s'", scratch, fifo);
    CASE(2, SIM, "--config '%s'", fifo);
    CASE(1, AGENT, "info --db '%s'", fifo);
    char *txt = tu_path(scratch, "t.txt");
    ck_assert_int_eq(tu_write_file(txt, "hello there\n", 12), 0);
    CASE(1, AGENT, "ingest --db '%s' --text '%s'", fifo, txt);
    free(txt);
#undef CASE
    /* The library readers the services use (configs, certificates). */
    plait_aggcfg_t c;
    plait_aggcfg_default(&c);
    ck_assert_int_ne(plait_aggcfg_load(&c, fifo), 0);
    ck_assert_ptr_nonnull(strstr(plait_errmsg(), "FIFO"));
    char *text = NULL;
    ck_assert_int_ne(plait_pki_read_file(fifo, &text), 0);
    ck_assert_ptr_null(text);
    plait_tok_t t;
    plait_tok_init(&t);
    ck_assert_int_ne(plait_tok_load(&t, fifo, 512), 0);
    /* A directory is named as one. */
    plait_model_t m;
    plait_model_init(&m);
    ck_assert_int_ne(plait_model_load(&m, scratch), 0);
    ck_assert_ptr_nonnull(strstr(plait_errmsg(), "is a directory"));
    free(fifo);
    free(model);
}
END_TEST

/* Copy the shared model into the scratch directory; returns its path. */
static char *copy_model(const char *name)
{
    size_t n = 0;
    char *src = tu_path(tu_assets_dir(), "stories260K.bin");
    uint8_t *b = tu_read_file(src, &n);
    ck_assert_ptr_nonnull(b);
    char *dst = tu_path(scratch, name);
    ck_assert_int_eq(tu_write_file(dst, b, n), 0);
    free(b);
    free(src);
    return dst;
}

/* Truncating or rewriting the file after load must not touch the loaded
 * weights (a mapping would SIGBUS on the first access past the new end). */
START_TEST(test_model_changed_underneath)
{
    char *p = copy_model("m.bin");
    plait_model_t m;
    plait_model_init(&m);
    ck_assert_msg(plait_model_load(&m, p) == 0, "%s", plait_errmsg());
    uint8_t sha[32];
    memcpy(sha, m.sha256, 32);
    double before = 0;
    for (size_t i = 0; i < (size_t)m.cfg.vocab_size * (size_t)m.cfg.dim; i++) before += m.w.wcls[i];
    ck_assert_int_eq(truncate(p, 0), 0);
    double after = 0;
    for (size_t i = 0; i < (size_t)m.cfg.vocab_size * (size_t)m.cfg.dim; i++) after += m.w.wcls[i];
    ck_assert(before == after);
    /* Rewritten with other bytes: the loaded weights still match their hash. */
    ck_assert_int_eq(tu_write_file(p, "garbage", 7), 0);
    plait_infer_t s;
    plait_infer_init(&s);
    plait_infer_config_t cfg;
    plait_infer_config_default(&cfg);
    cfg.max_ctx = 4;
    const float *logits = NULL;
    ck_assert_int_eq(plait_infer_setup(&s, &m, NULL, &cfg), 0);
    ck_assert_int_eq(plait_infer_forward(&s, 1, 0, &logits), 0);
    ck_assert(isfinite(logits[0]));
    plait_infer_free(&s);
    ck_assert_int_eq(memcmp(sha, m.sha256, 32), 0);
    plait_model_free(&m);
    free(p);
}
END_TEST

START_TEST(test_model_nonfinite)
{
    char *p = copy_model("nan.bin");
    plait_model_t m;
    plait_model_init(&m);
    ck_assert_int_eq(plait_model_load(&m, p), 0);
    size_t off = 28 + 4 * (size_t)(m.w.wq - (const float *)((const uint8_t *)m.map + 28)) + 4 * 7;
    size_t tail = 28 + 4 * (size_t)(m.w.rms_final - (const float *)((const uint8_t *)m.map + 28));
    plait_model_free(&m);
    size_t n = 0;
    uint8_t *b = tu_read_file(p, &n);
    ck_assert_ptr_nonnull(b);
    const float bad[2] = {NAN, INFINITY};
    const char *names[2] = {"tensor wq", "tensor rms_final"};
    size_t at[2] = {off, tail};
    for (int k = 0; k < 2; k++) {
        uint8_t *c = malloc(n);
        memcpy(c, b, n);
        memcpy(c + at[k], &bad[k], 4);
        ck_assert_int_eq(tu_write_file(p, c, n), 0);
        free(c);
        plait_model_init(&m);
        ck_assert_int_eq(plait_model_load(&m, p), PLAIT_EPROTO);
        ck_assert_msg(strstr(plait_errmsg(), names[k]) != NULL, "%s", plait_errmsg());
        ck_assert_ptr_null(m.map);
        plait_model_free(&m);
    }
    free(b);
    free(p);
}
END_TEST

/* NaN from the model, or from an adapter so large that products overflow,
 * reaches exp in softmax and SwiGLU: a clean error, on every kernel path. */
START_TEST(test_train_nan)
{
    plait_model_config_t mc = {.dim = 16, .hidden_dim = 24, .n_layers = 1, .n_heads = 2, .n_kv_heads = 2,
                               .vocab_size = 32, .seq_len = 8, .shared = 1};
    int32_t tok[2 * 9];
    for (int i = 0; i < 18; i++) tok[i] = (i * 7) % 32;
    int widest = plait_cpu_has_avx512() ? PLAIT__KPATH_AVX512 : plait_cpu_has_avx2_fma() ? PLAIT__KPATH_AVX2 : 0;
    for (int path = 0; path <= widest; path++)
        for (int kind = 0; kind < 2; kind++) {
            plait__tensor_force_path(path);
            plait_model_t m;
            plait_model_init(&m);
            ck_assert_int_eq(plait_model_init_random(&m, &mc, 3), 0);
            plait_lora_config_t lc;
            plait_lora_config_default(&lc);
            lc.rank = 2;
            plait_lora_t l;
            plait_lora_init(&l);
            ck_assert_int_eq(plait_lora_setup(&l, &m.cfg, &lc), 0);
            if (kind == 0)
                for (size_t i = 0; i < (size_t)mc.dim * (size_t)mc.dim; i++) ((float *)m.w.wq)[i] = NAN;
            else
                for (size_t i = 0; i < l.n_params; i++) l.params[i] = 3e38f;
            plait_train_config_t cfg = plait_train_config_default();
            cfg.B = 2;
            cfg.T = 8;
            plait_trainer_t *tr = NULL;
            ck_assert_int_eq(plait_train_create(&tr, &m, &l, &cfg), 0);
            float loss = 0;
            ck_assert_int_eq(plait_train_forward_backward(tr, tok, &loss), PLAIT_EPROTO);
            ck_assert_ptr_nonnull(strstr(plait_errmsg(), "non-finite"));
            plait_train_destroy(tr);
            plait_lora_free(&l);
            plait_model_free(&m);
        }
    plait__tensor_force_path(-1);
}
END_TEST

START_TEST(test_steps_and_empty_ingest)
{
    char a[2048];
    snprintf(a, sizeof(a), "train --text '%s/x' --out '%s/a' --steps 0", scratch, scratch);
    expect(2, "--steps", AGENT, a);
    char *ad = tu_path(scratch, "a");
    struct stat st;
    ck_assert_int_ne(stat(ad, &st), 0); /* nothing written */
    char *empty = tu_path(scratch, "empty.txt");
    ck_assert_int_eq(tu_write_file(empty, "\n\n  \n\n", 6), 0);
    snprintf(a, sizeof(a), "ingest --db '%s/d.db' --text '%s'", scratch, empty);
    expect(1, "holds no records", AGENT, a);
    ck_assert_int_eq(tu_write_file(empty, "", 0), 0);
    snprintf(a, sizeof(a), "ingest --db '%s/d.db' --jsonl '%s'", scratch, empty);
    expect(1, "holds no records", AGENT, a);
    free(ad);
    free(empty);
}
END_TEST

/* Count the entries of dir whose name starts with prefix. */
static int count_prefix(const char *dir, const char *prefix)
{
    DIR *d = opendir(dir);
    ck_assert_ptr_nonnull(d);
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) n += strncmp(e->d_name, prefix, strlen(prefix)) == 0;
    closedir(d);
    return n;
}

/* An init that runs out of space half-way (RLIMIT_FSIZE of 4 KiB, SIGXFSZ
 * ignored so writes fail with EFBIG as on a full disk) fails, leaves
 * neither DIR nor its staging directory, and a re-run succeeds. */
START_TEST(test_init_atomic)
{
    char *model = tu_path(tu_assets_dir(), "stories260K.bin");
    char cmd[4096], out[4096];
    snprintf(cmd, sizeof(cmd),
             "trap '' XFSZ; ulimit -f 8 && exec timeout -k 5 %d '%s/" AGG "' init '%s/dep' --base-model '%s' "
             ">'%s/init.txt' 2>&1",
             HANG_S, PLAIT_BINARY_DIR, scratch, model, scratch);
    int st = system(cmd);
    ck_assert(WIFEXITED(st));
    char *log = tu_path(scratch, "init.txt");
    size_t n = 0;
    uint8_t *b = tu_read_file(log, &n);
    ck_assert_msg(WEXITSTATUS(st) == 1, "init under a 4 KiB file limit exited %d: %s", WEXITSTATUS(st),
                  b ? (char *)b : "");
    free(b);
    ck_assert_int_eq(count_prefix(scratch, "dep"), 0);
    ck_assert_int_eq(count_prefix(scratch, ".dep.init-"), 0);
    char a[2048];
    snprintf(a, sizeof(a), "init '%s/dep' --base-model '%s'", scratch, model);
    ck_assert_int_eq(run(out, sizeof(out), AGG, "%s", a), 0);
    ck_assert_ptr_nonnull(strstr(out, "created in"));
    char *ca = tu_path(scratch, "dep/ca.key");
    struct stat sb;
    ck_assert_int_eq(stat(ca, &sb), 0);
    ck_assert_int_eq(count_prefix(scratch, ".dep.init-"), 0);
    /* An existing deployment is still refused, and left as it was. */
    expect(1, "not an empty directory", AGG, a);
    ck_assert_int_eq(stat(ca, &sb), 0);
    ck_assert_int_eq(count_prefix(scratch, ".dep.init-"), 0);
    /* An existing empty directory is fine (operators pre-create it). */
    snprintf(a, sizeof(a), "%s/dep2", scratch);
    ck_assert_int_eq(mkdir(a, 0700), 0);
    snprintf(a, sizeof(a), "init '%s/dep2/' --base-model '%s'", scratch, model);
    ck_assert_int_eq(run(out, sizeof(out), AGG, "%s", a), 0);
    free(ca);
    free(log);
    free(model);
}
END_TEST

/* The device store of a full disk can still be read: sqlite cannot create
 * the -shm index there (simulated with a 4 KiB file size limit, which the
 * index's 32 KiB exceed), so the store falls back to exclusive locking. */
START_TEST(test_store_full_disk_read)
{
    char *txt = tu_path(scratch, "notes.txt");
    FILE *f = fopen(txt, "w");
    ck_assert_ptr_nonnull(f);
    for (int i = 0; i < 40; i++) fprintf(f, "ROMEO:\nBut soft, what light %d.\n\n", i);
    fclose(f);
    char out[4096], cmd[4096];
    ck_assert_int_eq(run(out, sizeof(out), AGENT, "ingest --db '%s/d.db' --text '%s'", scratch, txt), 0);
    const char *cmds[2] = {"info", "eval --split all --seq 16"};
    const char *want[2] = {"40 records", "base model"};
    for (int k = 0; k < 2; k++) {
        char a[1024];
        snprintf(a, sizeof(a), "%s --db '%s/d.db'", cmds[k], scratch);
        snprintf(cmd, sizeof(cmd),
                 "trap '' XFSZ; ulimit -f 8 && PLAIT_ASSETS='%s' exec timeout -k 5 %d '%s/" AGENT "' %s "
                 ">'%s/full.txt' 2>&1",
                 tu_assets_dir(), HANG_S, PLAIT_BINARY_DIR, a, scratch);
        int st = system(cmd);
        char *log = tu_path(scratch, "full.txt");
        size_t n = 0;
        uint8_t *b = tu_read_file(log, &n);
        ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "'%s' on a full disk: %s", a, b ? (char *)b : "");
        ck_assert_msg(b && strstr((char *)b, want[k]), "'%s' on a full disk: %s", a, b ? (char *)b : "");
        free(b);
        free(log);
    }
    /* Writing still fails, saying why. */
    snprintf(cmd, sizeof(cmd),
             "trap '' XFSZ; ulimit -f 8 && exec timeout -k 5 %d '%s/" AGENT "' forget --db '%s/d.db' --all "
             ">'%s/full.txt' 2>&1",
             HANG_S, PLAIT_BINARY_DIR, scratch, scratch);
    int st = system(cmd);
    char *log = tu_path(scratch, "full.txt");
    size_t n = 0;
    uint8_t *b = tu_read_file(log, &n);
    ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 1, "forget on a full disk: %s", b ? (char *)b : "");
    ck_assert_msg(b && strstr((char *)b, "disk full"), "forget on a full disk: %s", b ? (char *)b : "");
    free(b);
    /* And everything is still there once there is room. */
    ck_assert_int_eq(run(out, sizeof(out), AGENT, "info --db '%s/d.db'", scratch), 0);
    ck_assert_ptr_nonnull(strstr(out, "40 records"));
    free(log);
    free(txt);
}
END_TEST

/* A detail that prefixes the previous one (plait_fail(rc, "%s: %s", x,
 * plait_errmsg())) used to overlap its own buffer and print garbage, as
 * `serve` did on a full disk. */
START_TEST(test_errmsg_prefix)
{
    plait_fail(PLAIT_EIO, "aggstore: preparing a statement: disk I/O error");
    plait_fail(PLAIT_EIO, "%s: %s", "dep/plait.db", plait_errmsg());
    ck_assert_str_eq(plait_errmsg(), "dep/plait.db: aggstore: preparing a statement: disk I/O error");
    char *model = tu_path(tu_assets_dir(), "stories260K.bin");
    char out[4096], cmd[4096];
    ck_assert_int_eq(run(out, sizeof(out), AGG, "init '%s/dep' --base-model '%s'", scratch, model), 0);
    snprintf(cmd, sizeof(cmd),
             "trap '' XFSZ; ulimit -f 8 && exec timeout -k 5 %d '%s/" AGG "' serve '%s/dep' --port 0 "
             ">'%s/serve.txt' 2>&1",
             HANG_S, PLAIT_BINARY_DIR, scratch, scratch);
    int st = system(cmd);
    char *log = tu_path(scratch, "serve.txt");
    size_t n = 0;
    uint8_t *b = tu_read_file(log, &n);
    ck_assert_ptr_nonnull(b);
    ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 1, "serve on a full disk: %s", (char *)b);
    const char *p = strstr((char *)b, "plait.db: ");
    ck_assert_msg(p && !strstr(p + 1, "plait.db: "), "garbled: %s", (char *)b);
    ck_assert_msg(strstr((char *)b, "is the disk full?"), "unclear: %s", (char *)b);
    free(b);
    free(log);
    free(model);
}
END_TEST

/* Start `plait-aggregator serve DIR` with stdout+stderr to log and, if
 * fsize > 0, a file size limit of fsize bytes (SIGXFSZ ignored, so writes
 * past it fail with EFBIG as on a full disk). Waits for the port file. */
static pid_t serve_start(const char *dep, rlim_t fsize, const char *log)
{
    char bin[1200], pf[1200];
    snprintf(bin, sizeof(bin), "%s/" AGG, PLAIT_BINARY_DIR);
    snprintf(pf, sizeof(pf), "%s/ports.json", scratch);
    unlink(pf);
    fflush(NULL);
    pid_t pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        int fd = open(log, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
            close(fd);
        }
        if (fsize > 0) {
            struct rlimit rl = {fsize, fsize};
            signal(SIGXFSZ, SIG_IGN);
            if (setrlimit(RLIMIT_FSIZE, &rl) != 0) _exit(126);
        }
        execl(bin, bin, "serve", dep, "--port", "0", "--metrics-port", "0", "--port-file", pf, (char *)NULL);
        _exit(127);
    }
    for (int i = 0; i < HANG_S * 20; i++) {
        struct stat sb;
        if (stat(pf, &sb) == 0 && sb.st_size > 0) return pid;
        int st;
        if (waitpid(pid, &st, WNOHANG) == pid) ck_abort_msg("serve exited before listening (see %s)", log);
        usleep(50000);
    }
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    ck_abort_msg("serve did not listen within %d s", HANG_S);
    return -1;
}

static int serve_stop(pid_t pid)
{
    kill(pid, SIGTERM);
    int st = 0;
    ck_assert_int_eq(waitpid(pid, &st, 0), pid);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static int count_str(const char *hay, const char *needle)
{
    int n = 0;
    for (const char *p = hay; (p = strstr(p, needle)) != NULL; p++) n++;
    return n;
}

/* A full disk that stops rounds from opening is logged once, not on every
 * one-second retry. The limit (32 KiB) lets the -shm index exist but the
 * write-ahead log and the database cannot grow past it. */
START_TEST(test_serve_full_disk_logged_once)
{
    char *model = tu_path(tu_assets_dir(), "stories260K.bin");
    char out[4096], dep[1200], log[1200];
    snprintf(dep, sizeof(dep), "%s/dep", scratch);
    snprintf(log, sizeof(log), "%s/serve.log", scratch);
    ck_assert_int_eq(run(out, sizeof(out), AGG,
                         "init '%s' --base-model '%s' --set selection_timeout_s=0.05 --set round_timeout_s=0.1", dep,
                         model),
                     0);
    /* First start with room: stores the initial adapter. */
    ck_assert_int_eq(serve_stop(serve_start(dep, 0, log)), 0);
    pid_t pid = serve_start(dep, 32768, log);
    const char *fail = "opening a round failed";
    uint8_t *b = NULL;
    size_t n = 0;
    for (int i = 0; i < HANG_S * 10; i++) {
        free(b);
        b = tu_read_file(log, &n);
        if (b && strstr((char *)b, fail)) break;
        usleep(100000);
    }
    ck_assert_msg(b && strstr((char *)b, fail), "no round-open failure on a full disk: %s", b ? (char *)b : "");
    /* Several retries (one a second) later, still one line. */
    sleep(4);
    ck_assert_int_eq(serve_stop(pid), 0);
    free(b);
    b = tu_read_file(log, &n);
    ck_assert_ptr_nonnull(b);
    ck_assert_msg(count_str((char *)b, fail) == 1, "logged %d times: %s", count_str((char *)b, fail), (char *)b);
    ck_assert_ptr_nonnull(strstr((char *)b, "is the disk full?"));
    free(b);
    free(model);
}
END_TEST

Suite *devharden_suite(void)
{
    Suite *s = suite_create("devharden");
    TCase *tc = tcase_create("device");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 600);
    tcase_add_test(tc, test_fifo_inputs);
    tcase_add_test(tc, test_model_changed_underneath);
    tcase_add_test(tc, test_model_nonfinite);
    tcase_add_test(tc, test_train_nan);
    tcase_add_test(tc, test_steps_and_empty_ingest);
    tcase_add_test(tc, test_init_atomic);
    tcase_add_test(tc, test_store_full_disk_read);
    tcase_add_test(tc, test_errmsg_prefix);
    tcase_add_test(tc, test_serve_full_disk_logged_once);
    suite_add_tcase(s, tc);
    return s;
}
