/*
 * bench_gguf.c: `plait-bench train --shape 135M`: LoRA training and token
 * generation over a GGUF base of SmolLM2-135M's shape (dim 576, 30 layers,
 * 9 heads, 3 KV heads, hidden 1536, vocab 49152, tied; random weights),
 * stored in F32 and in Q8_0, with peak RSS against the memory bound
 * "file size + trainer buffers + 10%".
 *
 * A forked child writes each GGUF file (so the parent, whose pages every
 * later child would inherit, stays small); then, per type and thread count,
 * fresh children measure: training tokens/s (B=4, T=256, rank 8 on wq,wv;
 * median step) with its peak RSS from wait4(); the trainer's own buffer
 * bytes (plait_train_memory_bytes); and generation tokens/s (one token at
 * a time with the KV cache, 64 positions). Nothing here asserts a speed.
 */
#include "bench.h"

#include "plait/infer.h"
#include "plait/lora.h"
#include "plait/model.h"
#include "plait/train.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define B135 4
#define T135 256

static const plait_model_config_t cfg135 = {.dim = 576, .hidden_dim = 1536, .n_layers = 30, .n_heads = 9,
                                             .n_kv_heads = 3, .vocab_size = 49152, .seq_len = 2048, .shared = 1,
                                             .rope_theta = 100000.0f};

typedef struct {
    const char *path;
    int type, threads, warmup, steps;
} job135_t;

static int gen_file(void *ctx, double *v)
{
    const job135_t *j = ctx;
    plait_model_t m;
    plait_model_init(&m);
    int rc = plait_model_init_random(&m, &cfg135, 7);
    if (rc == 0) rc = plait_model_save_gguf(&m, j->path, j->type);
    if (rc != 0) fprintf(stderr, "plait-bench train: %s\n", plait_errmsg());
    plait_model_free(&m);
    *v = 0;
    return rc;
}

static int setup(const job135_t *j, plait_model_t *m, plait_lora_t *lora, plait_trainer_t **tr)
{
    plait_model_init(m);
    plait_lora_init(lora);
    if (plait_model_load(m, j->path) != 0) return -1;
    plait_lora_config_t lc;
    plait_lora_config_default(&lc); /* rank 8, alpha 16, wq,wv */
    if (plait_lora_setup(lora, &m->cfg, &lc) != 0) return -1;
    plait_lora_init_weights(lora, 1);
    if (!tr) return 0;
    plait_train_config_t tc = plait_train_config_default();
    tc.B = B135;
    tc.T = T135;
    tc.threads = j->threads;
    return plait_train_create(tr, m, lora, &tc) == 0 ? 0 : -1;
}

static int train_child(void *ctx, double *tok_s)
{
    const job135_t *j = ctx;
    plait_model_t m;
    plait_lora_t lora;
    plait_trainer_t *tr = NULL;
    if (setup(j, &m, &lora, &tr) != 0) return fprintf(stderr, "plait-bench train: %s\n", plait_errmsg()), -1;
    size_t n = (size_t)B135 * (T135 + 1);
    int32_t *tokens = malloc(n * sizeof(int32_t));
    double dt[64];
    if (!tokens) return -1;
    uint64_t s = 12345;
    for (size_t i = 0; i < n; i++) {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        tokens[i] = (int32_t)((s >> 33) % (uint64_t)m.cfg.vocab_size);
    }
    for (int i = 0; i < j->warmup + j->steps; i++) {
        float loss;
        double t0 = bench_now();
        if (plait_train_forward_backward(tr, tokens, &loss) != 0 || plait_train_step(tr) != 0) return -1;
        if (i >= j->warmup) dt[i - j->warmup] = bench_now() - t0;
    }
    *tok_s = (double)B135 * T135 / bench_median(dt, (size_t)j->steps);
    free(tokens);
    plait_train_destroy(tr);
    plait_lora_free(&lora);
    plait_model_free(&m);
    return 0;
}

static int mem_child(void *ctx, double *bytes)
{
    const job135_t *j = ctx;
    plait_model_t m;
    plait_lora_t lora;
    plait_trainer_t *tr = NULL;
    if (setup(j, &m, &lora, &tr) != 0) return -1;
    *bytes = (double)plait_train_memory_bytes(tr);
    plait_train_destroy(tr);
    plait_lora_free(&lora);
    plait_model_free(&m);
    return 0;
}

static int gen_child(void *ctx, double *tok_s)
{
    const job135_t *j = ctx;
    plait_model_t m;
    plait_lora_t lora;
    if (setup(j, &m, &lora, NULL) != 0) return -1;
    plait_pool_t *pool = NULL;
    if (j->threads > 1 && plait_pool_create(&pool, j->threads) != 0) return -1;
    plait_infer_t st;
    plait_infer_init(&st);
    plait_infer_config_t ic;
    plait_infer_config_default(&ic);
    ic.max_ctx = 128;
    ic.pool = pool;
    if (plait_infer_setup(&st, &m, &lora, &ic) != 0) return -1;
    const float *lg;
    int tok = 1;
    double t0 = 0;
    for (int pos = 0; pos < 72; pos++) {
        if (pos == 8) t0 = bench_now(); /* 8 warm-up positions */
        if (plait_infer_forward(&st, tok, pos, &lg) != 0) return -1;
        int best = 0;
        for (int v = 1; v < m.cfg.vocab_size; v++)
            if (lg[v] > lg[best]) best = v;
        tok = best;
    }
    *tok_s = 64.0 / (bench_now() - t0);
    plait_infer_free(&st);
    plait_pool_destroy(pool);
    plait_lora_free(&lora);
    plait_model_free(&m);
    return 0;
}

int bench_train_135m(size_t repeats, const int *threads, int n_threads, size_t steps_opt, size_t warmup_opt)
{
    char dir[256];
    const char *tmp = getenv("TMPDIR");
    snprintf(dir, sizeof(dir), "%s/plait-bench-135m-%d", tmp && *tmp ? tmp : "/tmp", (int)getpid());
    if (mkdir(dir, 0700) != 0) return fprintf(stderr, "plait-bench train: cannot create %s\n", dir), 1;
    static const int types[2] = {PLAIT_DT_F32, PLAIT_DT_Q8_0};
    static const char *const tname[2] = {"135M-F32", "135M-Q8_0"};
    printf("SmolLM2-135M shape (random weights), GGUF base; LoRA r=8 on wq,wv; B=%d T=%d; generation: 64 tokens\n",
           B135, T135);
    printf("%-10s %7s %9s %9s %10s %9s %9s %8s\n", "model", "threads", "file MiB", "train MiB", "train tok/s",
           "peak MiB", "bound MiB", "gen tok/s");
    int rc = 0;
    for (int t = 0; t < 2 && rc == 0; t++) {
        char path[320];
        snprintf(path, sizeof(path), "%s/%s.gguf", dir, tname[t]);
        job135_t j = {.path = path, .type = types[t], .threads = 1};
        double v, r;
        if (bench_fork_measure(gen_file, &j, &v, &r) != 0) {
            fprintf(stderr, "plait-bench train: writing %s failed\n", path);
            rc = 1;
            break;
        }
        struct stat sb;
        double file_mib = stat(path, &sb) == 0 ? (double)sb.st_size / 1048576.0 : 0;
        for (int ti = 0; ti < n_threads && rc == 0; ti++) {
            j.threads = threads[ti];
            j.steps = (int)(steps_opt ? (steps_opt < 64 ? steps_opt : 64) : 2);
            j.warmup = (int)(warmup_opt ? warmup_opt : 1);
            double tok[1000], rss[1000], gen[1000], tb = 0, rr;
            size_t ok = 0, gok = 0;
            for (size_t k = 0; k < repeats; k++) {
                if (bench_fork_measure(train_child, &j, &tok[ok], &rss[ok]) == 0) ok++;
                if (bench_fork_measure(gen_child, &j, &gen[gok], &rr) == 0) gok++;
            }
            if (ok == 0 || gok == 0 || bench_fork_measure(mem_child, &j, &tb, &rr) != 0) {
                fprintf(stderr, "plait-bench train: %s with %d threads failed\n", tname[t], threads[ti]);
                rc = 1;
                break;
            }
            double train_mib = tb / 1048576.0;
            printf("%-10s %7d %9.1f %9.1f %10.1f %9.1f %9.1f %8.2f\n", tname[t], threads[ti], file_mib, train_mib,
                   bench_median(tok, ok), bench_median(rss, ok), 1.1 * (file_mib + train_mib), bench_median(gen, gok));
            fflush(stdout);
        }
        unlink(path);
    }
    rmdir(dir);
    printf("bound = 1.1 x (file + trainer buffers); peak = the training process's maximum RSS\n");
    return rc;
}
