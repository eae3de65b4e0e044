/*
 * bench_train.c: `plait-bench train`, training throughput and peak memory
 * of the LoRA engine, side by side with the PyTorch peer in the same run.
 *
 * For each model shape (stories260K from the assets, and a random-weight
 * model of the stories15M shape) and each thread count, a forked child builds
 * the model, a rank-8 adapter on wq,wv and a B=8, T=128 trainer, runs warm-up
 * steps, then times each of the measured steps (forward, backward and AdamW
 * step). The median step time gives tokens/s = B*T / median; the child's
 * peak RSS comes from wait4(). Repeating in fresh children and reporting
 * medians keeps one noisy run from deciding a figure.
 *
 * With --torch, the PyTorch trainer of ../shared/peers (torch_lora_ref.py,
 * same architecture, adapters, batch and threads) is run in the same
 * invocation, and the ratios plait/torch are printed. This is a benchmark,
 * never a test: nothing here asserts a speed.
 */
#include "bench.h"

#include "plait/lora.h"
#include "plait/model.h"
#include "plait/tensor.h"
#include "plait/train.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

typedef struct {
    const char *name;
    const char *model_path; /* NULL: random weights of cfg */
    plait_model_config_t cfg;
    const char *torch_args; /* peer flags selecting the same model */
} shape_t;

static int run_child(const shape_t *sh, int threads, int B, int T, int warmup, int steps, int bf16, double *tok_s)
{
    plait_model_t m;
    plait_model_init(&m);
    int rc = sh->model_path ? plait_model_load(&m, sh->model_path) : plait_model_init_random(&m, &sh->cfg, 7);
    if (rc != 0) {
        fprintf(stderr, "plait-bench train: %s\n", plait_errmsg());
        return -1;
    }
    plait_lora_t lora;
    plait_lora_init(&lora);
    plait_lora_config_t lc;
    plait_lora_config_default(&lc); /* rank 8, alpha 16, wq,wv */
    if (plait_lora_setup(&lora, &m.cfg, &lc) != 0) return -1;
    plait_lora_init_weights(&lora, 1);
    plait_train_config_t tc = plait_train_config_default();
    tc.B = B;
    tc.T = T;
    tc.threads = threads;
    tc.base_bf16 = bf16;
    plait_trainer_t *tr = NULL;
    if (plait_train_create(&tr, &m, &lora, &tc) != 0) {
        fprintf(stderr, "plait-bench train: %s\n", plait_errmsg());
        return -1;
    }
    size_t n = (size_t)B * ((size_t)T + 1);
    int32_t *tokens = malloc(n * sizeof(int32_t));
    double *dt = malloc((size_t)steps * sizeof(double));
    if (!tokens || !dt) return -1;
    uint64_t s = 12345;
    for (size_t i = 0; i < n; i++) {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        tokens[i] = (int32_t)((s >> 33) % (uint64_t)m.cfg.vocab_size);
    }
    for (int i = 0; i < warmup + steps; i++) {
        float loss;
        double t0 = bench_now();
        if (plait_train_forward_backward(tr, tokens, &loss) != 0 || plait_train_step(tr) != 0) return -1;
        if (i >= warmup) dt[i - warmup] = bench_now() - t0;
    }
    *tok_s = (double)B * (double)T / bench_median(dt, (size_t)steps);
    free(dt);
    free(tokens);
    plait_train_destroy(tr);
    plait_lora_free(&lora);
    plait_model_free(&m);
    return 0;
}

typedef struct {
    const shape_t *sh;
    int threads, B, T, warmup, steps, bf16;
} train_job_t;

static int train_child(void *ctx, double *tok_s)
{
    const train_job_t *j = ctx;
    return run_child(j->sh, j->threads, j->B, j->T, j->warmup, j->steps, j->bf16, tok_s);
}

static int measure(const shape_t *sh, int threads, int B, int T, int warmup, int steps, int bf16, double *tok_s,
                   double *rss_mib)
{
    train_job_t j = {sh, threads, B, T, warmup, steps, bf16};
    return bench_fork_measure(train_child, &j, tok_s, rss_mib);
}

/* Run the PyTorch peer once; parse its "tokens/s" and "peak RSS" lines. */
static int run_torch(const char *peer, const char *args, int threads, int B, int T, int warmup, int steps,
                     double *tok_s, double *rss_mib)
{
    char cmd[2048];
    const char *py = getenv("PLAIT_PYTHON"); /* a Python with torch (default Debian's) */
    if (!py || !*py || strchr(py, '\'')) py = "/usr/bin/python3";
    snprintf(cmd, sizeof(cmd),
             "'%s' '%s' %s --lora-r 8 --lora-alpha 16 --lora-targets wq,wv --batch %d --seq %d "
             "--warmup %d --steps %d --threads %d 2>&1",
             py, peer, args, B, T, warmup, steps, threads);
    FILE *p = popen(cmd, "r");
    if (!p) return -1;
    char line[512];
    int have = 0;
    while (fgets(line, sizeof(line), p)) {
        if (strncmp(line, "tokens/s", 8) == 0 && sscanf(strchr(line, ':') + 1, "%lf", tok_s) == 1) have |= 1;
        if (strncmp(line, "peak RSS", 8) == 0 && sscanf(strchr(line, ':') + 1, "%lf", rss_mib) == 1) have |= 2;
    }
    int st = pclose(p);
    return (st == 0 && have == 3) ? 0 : -1;
}

typedef struct {
    int *v, n;
} thread_list_t;

/* --threads 1,2,4: up to 8 counts of 1..256. */
static int set_threads(void *dest, const char *value)
{
    thread_list_t *tl = dest;
    tl->n = 0;
    for (const char *p = value; *p && tl->n < 8;) {
        char *end;
        long t = strtol(p, &end, 10);
        if (end == p || t < 1 || t > 256 || (*end && *end != ','))
            return plait_fail(PLAIT_EINVAL, "--threads '%.40s' is not a list of 1..256", value);
        tl->v[tl->n++] = (int)t;
        p = *end == ',' ? end + 1 : end;
    }
    return 0;
}

static int set_prec(void *dest, const char *value)
{
    if (strcmp(value, "f32") && strcmp(value, "bf16") && strcmp(value, "both"))
        return plait_fail(PLAIT_EINVAL, "--base-precision '%.20s' is not f32, bf16 or both", value);
    *(const char **)dest = value;
    return 0;
}

static int set_shape(void *dest, const char *value)
{
    if (strcmp(value, "260K") && strcmp(value, "15M") && strcmp(value, "135M") && strcmp(value, "all"))
        return plait_fail(PLAIT_EINVAL, "--shape '%.20s' is not 260K, 15M, 135M or all", value);
    *(const char **)dest = value;
    return 0;
}

/* FLOPs of one trained token: the frozen base's matmuls run forward and
 * input-gradient (2 + 2 per weight), the rank-8 adapter on wq,wv also its
 * weight gradient (6 per weight), and causal attention (QK^T and AV over
 * (T+1)/2 keys on average, backward twice the forward). For the 15M shape
 * this is ~62 MFLOP. Shapes read from a file use its header's config. */
static double flops_per_token(const shape_t *sh, size_t T)
{
    plait_model_config_t c = sh->cfg;
    if (sh->model_path) {
        plait_model_t m;
        plait_model_init(&m);
        if (plait_model_load(&m, sh->model_path) != 0) return 0;
        c = m.cfg;
        plait_model_free(&m);
    }
    double D = (double)c.dim, H = (double)c.hidden_dim, L = (double)c.n_layers, V = (double)c.vocab_size;
    double kv = D * (double)c.n_kv_heads / (double)c.n_heads;
    double base = L * (2 * D * D + 2 * D * kv + 3 * D * H) + D * V;
    double lora = L * 8.0 * ((D + D) + (D + kv));
    double attn = L * 3.0 * 4.0 * D * ((double)T + 1) / 2;
    return 4 * base + 6 * lora + attn;
}

int bench_train(int argc, char **argv)
{
    size_t repeats = 3, steps_opt = 0, warmup_opt = 0, B = 8, T = 128;
    int torch = 0, threads[8] = {1, 2}, n_threads = 2;
    const char *shape_sel = "all", *prec_sel = NULL;
    thread_list_t tl = {threads, n_threads};
    plait_flag_t flags[] = {
        PLAIT_F_SIZE("repeats", &repeats, 0, 1000, "R", "processes per configuration", 1),
        PLAIT_F_SIZE("steps", &steps_opt, 0, 100000, "N", "timed steps per process (default 20; 6 for 15M)", 0),
        PLAIT_F_SIZE("warmup", &warmup_opt, 0, 100000, "N", "untimed steps first (default 3; 2 for 15M)", 0),
        PLAIT_F_CUSTOM("threads", &tl, set_threads, "LIST", "comma list of thread counts (default 1,2)"),
        PLAIT_F_SET("torch", &torch, 1,
                    "also run the PyTorch peer (../shared/peers/torch_lora_ref.py, or\n"
                    "$PLAIT_PEERS/torch_lora_ref.py) at the same settings and print ratios"),
        PLAIT_F_CUSTOM("shape", &shape_sel, set_shape, "S", "260K, 15M, 135M or all (default all)"),
        PLAIT_F_SIZE("batch", &B, 0, 1024, "B", "sequences per step", 1),
        PLAIT_F_SIZE("seq", &T, 0, 4096, "T", "tokens per sequence", 1),
        PLAIT_F_CUSTOM("base-precision", &prec_sel, set_prec, "P",
                       "the frozen base's matmuls in f32, bf16 (AVX512-BF16 only) or both\n"
                       "(default: both where the CPU has AVX512-BF16, else f32); each row's\n"
                       "PyTorch ratio uses the same PyTorch measurement (float32)"),
    };
    plait_flags_cmd_t cmd = {
        .prog = "plait-bench train",
        .synopsis = "plait-bench train [--repeats R] [--steps N] [--warmup N] [--threads LIST] [--torch]\n"
                    "                         [--shape 260K|15M|135M|all] [--batch B] [--seq T]\n"
                    "                         [--base-precision f32|bf16|both]\n",
        .about = "Training tokens/s (median over R fresh processes of the median step) and peak RSS of\n"
                 "LoRA fine-tuning (rank 8 on wq,wv) for stories260K ($PLAIT_ASSETS/stories260K.bin) and a\n"
                 "random-weight model of the stories15M shape (dim 288, hidden 768, 6 layers, 6 heads,\n"
                 "vocab 32000). --shape 135M (not part of all) instead measures a GGUF base of the\n"
                 "SmolLM2-135M shape in F32 and Q8_0 at B=4, T=256: training and generation tokens/s\n"
                 "and peak RSS against file size + trainer buffers + 10% (default 2 steps, 1 warm-up).\n",
        .flags = flags,
        .n_flags = sizeof(flags) / sizeof(flags[0]),
    };
    int st = bench_flags(&cmd, argc, argv);
    if (st >= 0) return st;
    n_threads = tl.n;
    if (strcmp(shape_sel, "135M") == 0) return bench_train_135m(repeats, threads, n_threads, steps_opt, warmup_opt);
    const char *assets = getenv("PLAIT_ASSETS");
    if (!assets || !*assets) assets = "../shared/assets";
    const char *peers = getenv("PLAIT_PEERS");
    if (!peers || !*peers) peers = "../shared/peers";
    char model_path[1024], peer[1024], args260[2300];
    snprintf(model_path, sizeof(model_path), "%s/stories260K.bin", assets);
    snprintf(peer, sizeof(peer), "%s/torch_lora_ref.py", peers);
    snprintf(args260, sizeof(args260), "--bin '%s' --data '%s/tinyshakespeare.txt'", model_path, assets);
    shape_t shapes[2] = {
        {"stories260K", model_path, {0}, args260},
        {"15M-shape", NULL,
         {.dim = 288, .hidden_dim = 768, .n_layers = 6, .n_heads = 6, .n_kv_heads = 6, .vocab_size = 32000,
          .seq_len = 256, .shared = 1},
         "--config 15M"},
    };
    int has_bf16 = plait_cpu_has_avx512_bf16() && strcmp(plait_kernel_path_name(), "avx512") == 0;
    if (!prec_sel) prec_sel = has_bf16 ? "both" : "f32";
    if (strcmp(prec_sel, "f32") != 0 && !has_bf16) {
        fprintf(stderr, "plait-bench train: --base-precision %s needs AVX512-BF16 and the avx512 kernel path\n",
                prec_sel);
        return 2;
    }
    int precs[2], n_precs = 0;
    if (strcmp(prec_sel, "bf16") != 0) precs[n_precs++] = 0;
    if (strcmp(prec_sel, "f32") != 0) precs[n_precs++] = 1;
    char machine[256];
    bench_machine(machine, sizeof(machine));
    printf("machine: %s\nkernel path: %s (AVX2+FMA %s, AVX-512 %s; PLAIT_KERNEL=portable|avx2|avx512 narrows it)\n",
           machine, plait_kernel_path_name(), plait_cpu_has_avx2_fma() ? "yes" : "no",
           plait_cpu_has_avx512() ? "yes" : "no");
    printf("AVX512-BF16: %s; AMX-BF16: %s\n", plait_cpu_has_avx512_bf16() ? "yes" : "no",
           plait_amx_bf16_active() ? "yes, the bf16 rows run on AMX tiles (PLAIT_AMX=0 turns it off)"
                                   : "not used (absent, not granted by the kernel, or PLAIT_AMX=0)");
    double la[3];
    if (getloadavg(la, 3) == 3) printf("load average at start: %.2f %.2f %.2f\n", la[0], la[1], la[2]);
    double peak[8];
    for (int ti = 0; ti < n_threads; ti++) {
        peak[ti] = bench_fma_peak_gflops(threads[ti]);
        printf("measured FMA peak on %d thread%s: %.1f GFLOP/s\n", threads[ti], threads[ti] == 1 ? "" : "s", peak[ti]);
    }
    printf("LoRA r=8 alpha=16 on wq,wv; B=%zu T=%zu; %zu processes per row; medians\n", B, T, repeats);
    printf("%-12s %4s %7s %12s %10s %12s %10s %8s %8s %8s %6s\n", "model", "base", "threads", "plait tok/s",
           "plait MiB", "torch tok/s", "torch MiB", "speed x", "mem /", "GFLOP/s", "peak%");
    for (int s = 0; s < 2; s++) {
        if (strcmp(shape_sel, "all") != 0 && strcmp(shape_sel, s == 0 ? "260K" : "15M") != 0) continue;
        int is15 = s == 1;
        int steps = (int)(steps_opt ? steps_opt : (is15 ? 6 : 20));
        int warmup = (int)(warmup_opt ? warmup_opt : (is15 ? 2 : 3));
        for (int ti = 0; ti < n_threads; ti++) {
            double ttok[1000], trss[1000];
            size_t tok_ok = 0;
            for (size_t r = 0; torch && r < repeats; r++)
                if (run_torch(peer, shapes[s].torch_args, threads[ti], (int)B, (int)T, warmup, steps, &ttok[tok_ok],
                              &trss[tok_ok]) == 0)
                    tok_ok++;
            for (int pi = 0; pi < n_precs; pi++) {
                double tok[1000], rss[1000];
                size_t ok = 0;
                for (size_t r = 0; r < repeats; r++)
                    if (measure(&shapes[s], threads[ti], (int)B, (int)T, warmup, steps, precs[pi], &tok[ok], &rss[ok]) ==
                        0)
                        ok++;
                if (ok == 0) {
                    fprintf(stderr, "plait-bench train: %s with %d threads failed\n", shapes[s].name, threads[ti]);
                    return 1;
                }
                double mt = bench_median(tok, ok), mr = bench_median(rss, ok);
                double gf = mt * flops_per_token(&shapes[s], T) / 1e9, pk = peak[ti] > 0 ? 100.0 * gf / peak[ti] : 0;
                const char *bn = precs[pi] ? "bf16" : "f32";
                if (tok_ok) {
                    double tt = bench_median(ttok, tok_ok), tr = bench_median(trss, tok_ok);
                    printf("%-12s %4s %7d %12.0f %10.1f %12.0f %10.1f %8.2f %8.2f %8.1f %6.1f\n", shapes[s].name, bn,
                           threads[ti], mt, mr, tt, tr, mt / tt, tr / mr, gf, pk);
                } else {
                    printf("%-12s %4s %7d %12.0f %10.1f %12s %10s %8s %8s %8.1f %6.1f\n", shapes[s].name, bn,
                           threads[ti], mt, mr, torch ? "failed" : "-", "-", "-", "-", gf, pk);
                }
                fflush(stdout);
            }
        }
    }
    if (getloadavg(la, 3) == 3) printf("load average at end: %.2f %.2f %.2f\n", la[0], la[1], la[2]);
    if (torch) printf("speed x = plait tok/s / torch tok/s; mem / = torch peak RSS / plait peak RSS\n");
    printf("GFLOP/s counts the matmuls and attention of one trained token (frozen base: forward + input\n"
           "gradient, 4 FLOPs per base weight; the adapter's 6 per weight); peak%% = GFLOP/s / measured FMA peak\n"
           "(the float32 FMA peak, for bf16 rows too: vdpbf16ps does twice the multiply-adds per instruction)\n");
    return 0;
}
