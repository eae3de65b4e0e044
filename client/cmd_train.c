/*
 * cmd_train.c: plait-agent train (fine-tune a LoRA adapter on the store or a
 * text file; or, for verification, dump one step's gradients on given tokens)
 * and plait-agent eval (held-out loss and perplexity, base model and adapter).
 */
#include "cmd_int.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "plait/adapter.h"
#include "plait/crypto.h"
#include "plait/file.h"
#include "plait/lora.h"
#include "plait/peft.h"

/* ---------------------------------------------------------------- train */

static int parse_targets(void *dest, const char *v)
{
    return plait_lora_parse_targets(v, (uint32_t *)dest);
}

/* Read B rows of T+1 little-endian int32 tokens; the size must match exactly. */
static int read_tokens(const char *path, int B, int T, int32_t **out)
{
    size_t want = (size_t)B * ((size_t)T + 1), bytes = want * sizeof(int32_t);
    char label[1100];
    snprintf(label, sizeof(label), "--tokens %s", path);
    FILE *f = NULL;
    int rc = plait_file_fopen(path, label, &f);
    if (rc != 0) return rc;
    /* The size must match before anything is allocated for it. */
    struct stat st;
    if (fstat(fileno(f), &st) != 0) {
        fclose(f);
        return plait_fail(PLAIT_EIO, "--tokens %s: cannot stat", path);
    }
    if ((uint64_t)st.st_size != (uint64_t)bytes) {
        fclose(f);
        return plait_fail(PLAIT_EPROTO, "--tokens %s: %lld bytes, expected exactly %zu bytes (B=%d rows of T+1=%d int32)",
                          path, (long long)st.st_size, bytes, B, T + 1);
    }
    int32_t *t = malloc(bytes);
    if (!t) {
        fclose(f);
        return plait_fail(PLAIT_ENOMEM, "--tokens: %zu tokens", want);
    }
    size_t got = fread(t, 1, bytes, f);
    fclose(f);
    if (got != bytes) {
        free(t);
        return plait_fail(PLAIT_EIO, "--tokens %s: read %zu of %zu bytes", path, got, bytes);
    }
    *out = t;
    return 0;
}

int cmd_train(int argc, char **argv)
{
    common_t c;
    common_default(&c);
    plait_lora_config_t lc;
    plait_lora_config_default(&lc);
    plait_train_config_t tc = plait_train_config_default();
    const char *out = NULL, *init = NULL, *tokens_path = NULL, *dump = NULL;
    long long steps = 100, eval_every = 0, log_every = 10;
    uint64_t seed = 1;
    int cosine = 0, quiet = 0;
    plait_flag_t flags[] = {
        ROW_MODEL(c, HELP_MODEL),
        ROW_TOKENIZER(c, HELP_TOKENIZER),
        ROW_DB(c, "the device store: train on its training split, evaluate on its held-out split"),
        ROW_TEXT(c, "train on every block of this text file instead"),
        PLAIT_F_STR("out", &out, "FILE", "where to write the adapter"),
        PLAIT_F_INT("rank", &lc.rank, 1, PLAIT_LORA_MAX_RANK, "R", "LoRA rank", 1),
        PLAIT_F_FLOAT("alpha", &lc.alpha, 1e-6, 1e6, "A", "LoRA alpha; scaling is alpha/rank", 1),
        PLAIT_F_CUSTOM("targets", &lc.targets, parse_targets, "LIST",
                       "projections among wq,wk,wv,wo,w1,w2,w3 (default wq,wv)"),
        PLAIT_F_STR("init-adapter", &init, "FILE",
                    "start from this adapter (plait, PEFT directory or GGUF) instead of a fresh one"),
        PLAIT_F_U64("seed", &seed, "N", "seeds A's initialization and the batch sampler", 1),
        PLAIT_F_SET("freeze-a", &tc.train_a, 0, "train B only (FFA-LoRA)"),
        ROW_BATCH(c),
        ROW_SEQ(c, "tokens per sequence"),
        /* 0 steps would write the untrained initial adapter as if trained. */
        PLAIT_F_LLONG("steps", &steps, 1, 100000000, "N", "optimizer steps", 1),
        PLAIT_F_DOUBLE("lr", &tc.lr, 0, 10, "X", "peak learning rate", 1),
        PLAIT_F_INT("warmup", &tc.warmup_steps, 0, 100000000, "N", "linear warm-up steps", 1),
        PLAIT_F_SET("cosine", &cosine, 1, "cosine decay to --min-lr-frac of lr over the steps"),
        PLAIT_F_DOUBLE("min-lr-frac", &tc.min_lr_frac, 0, 1, "X", "floor of the cosine decay", 1),
        PLAIT_F_DOUBLE("weight-decay", &tc.weight_decay, 0, 10, "X", "AdamW decoupled weight decay", 1),
        PLAIT_F_DOUBLE("clip", &tc.grad_clip, 0, 1e9, "X", "global gradient-norm clip, 0 = off", 1),
        PLAIT_F_INT("accum", &tc.accum_steps, 1, 65536, "N", "micro-batches per step", 1),
        ROW_THREADS(c, "threads"),
        ROW_BASE_PREC(c),
        PLAIT_F_LLONG("eval-every", &eval_every, 0, 100000000, "N",
                      "evaluate on the held-out split every N steps (default: start and end)", 0),
        PLAIT_F_LLONG("log-every", &log_every, 1, 100000000, "N", "print progress every N steps", 1),
        PLAIT_F_SET("quiet", &quiet, 1, "print nothing but errors"),
        PLAIT_F_STR("tokens", &tokens_path, "X.i32", "verification: B rows of T+1 int32 tokens"),
        PLAIT_F_STR("dump-grads", &dump, "G", "verification: where to write the loss and gradients"),
    };
    plait_flags_cmd_t cmd = {
        .prog = "plait-agent train",
        .about = "Fine-tunes a LoRA adapter of the frozen model on the store's training split\n"
                 "(or every block of a text file) and writes it as safetensors. Give --out and\n"
                 "exactly one of --db and --text.\n",
        .epilogue = "Verification: plait-agent train --model M --init-adapter A --tokens X.i32 --batch B --seq T\n"
                    "--dump-grads G reads B rows of T+1 int32 tokens from X.i32 and writes the loss and every\n"
                    "adapter gradient of one step on them, before clipping or any update, to G.\n",
        .flags = flags, .n_flags = sizeof(flags) / sizeof(flags[0]),
    };
    int prc = agent_flags(&cmd, argc, argv);
    if (prc != FLAGS_OK) return prc;
    int verify = tokens_path || dump;
    if (verify && !(tokens_path && dump && init))
        return plait_fail(PLAIT_EINVAL, "--tokens and --dump-grads go together, with --init-adapter"), die_usage(0);
    if (!verify && !out) return plait_fail(PLAIT_EINVAL, "--out is required"), die_usage(0);
    if (!verify && !c.db == !c.text) return plait_fail(PLAIT_EINVAL, "give exactly one of --db and --text"), die_usage(0);
    if (!verify && check_out_dir(out) != 0) return die_usage(0); /* before minutes of training, not after */
    tc.B = c.batch;
    tc.T = c.seq;
    if (cosine) tc.total_steps = (int)steps;

    engine_t e;
    plait_lora_t lora;
    plait_lora_init(&lora);
    plait_trainer_t *tr = NULL;
    plait_corpus_t train_c, held_c;
    plait_corpus_init(&train_c);
    plait_corpus_init(&held_c);
    int32_t *batch = NULL;
    int rc = engine_load(&e, &c, !verify);
    if (rc != 0) goto exit;
    if (init) {
        rc = plait_adapter_import(&lora, init, &e.model, 0);
    } else {
        rc = plait_lora_setup(&lora, &e.model.cfg, &lc);
        if (rc == 0) plait_lora_init_weights(&lora, seed);
    }
    if (rc != 0) goto exit;
    tc.pool = e.pool;
    tc.threads = c.threads;
    tc.base_bf16 = c.base_bf16;
    if ((rc = plait_train_create(&tr, &e.model, &lora, &tc)) != 0) goto exit;

    if (verify) {
        int32_t *toks = NULL;
        float loss = 0;
        if ((rc = read_tokens(tokens_path, tc.B, tc.T, &toks)) != 0) goto exit;
        rc = plait_train_forward_backward(tr, toks, &loss);
        free(toks);
        if (rc == 0)
            rc = plait_adapter_save_grads(dump, &lora, plait_train_grads(tr), plait_train_grads_offset(tr),
                                          plait_train_grads_count(tr), loss);
        if (rc != 0) goto exit;
        printf("loss %.6f; wrote gradients of %zu adapter parameters to %s\n", (double)loss,
               plait_train_grads_count(tr), dump);
        goto exit;
    }

    if ((rc = load_corpus(&train_c, &c, &e.tok, c.db ? PLAIT_STORE_TRAIN : PLAIT_STORE_ALL)) != 0) goto exit;
    if (c.db && (rc = load_corpus(&held_c, &c, &e.tok, PLAIT_STORE_HELDOUT)) != 0) goto exit;
    if (train_c.n < (size_t)tc.T + 1) {
        rc = plait_fail(PLAIT_EINVAL, "the training data holds %zu tokens, fewer than one sequence of --seq %d + 1",
                        train_c.n, tc.T);
        goto exit;
    }
    int can_eval = plait_corpus_n_windows(&held_c, tc.T) > 0;
    if (!quiet)
        printf("training %s adapter (rank %d, %zu parameters%s) on %zu tokens from %zu records; %zu held-out tokens\n",
               init ? "the given" : "a new", lora.cfg.rank, lora.n_params, tc.train_a ? "" : ", A frozen",
               train_c.n, train_c.n_records, held_c.n);
    double loss_eval = 0.0;
    if (can_eval && (rc = plait_corpus_eval(&held_c, tr, tc.T, 0, &loss_eval, NULL)) != 0) goto exit;
    if (can_eval && !quiet) printf("step %6d  held-out loss %.4f  perplexity %.2f\n", 0, loss_eval, exp(loss_eval));
    batch = malloc((size_t)tc.B * ((size_t)tc.T + 1) * sizeof(int32_t));
    if (!batch) { rc = plait_fail(PLAIT_ENOMEM, "batch buffer"); goto exit; }
    uint64_t rng = seed ^ 0x5DEECE66Dull;
    double t0 = now_s(), loss_acc = 0.0;
    long n_acc = 0;
    for (long long s = 1; s <= steps; s++) {
        for (int a = 0; a < tc.accum_steps; a++) {
            float loss;
            if ((rc = plait_corpus_sample(&train_c, tc.B, tc.T, &rng, batch)) != 0) goto exit;
            if ((rc = plait_train_forward_backward(tr, batch, &loss)) != 0) goto exit;
            if (!isfinite(loss)) {
                /* Stepping would turn every parameter into NaN, and the
                 * adapter written then is one no loader accepts. */
                rc = plait_fail(PLAIT_EPROTO, "training diverged: non-finite loss at step %lld (the model or adapter "
                                "overflows float32); no adapter written", s);
                goto exit;
            }
            loss_acc += loss;
            n_acc++;
        }
        if ((rc = plait_train_step(tr)) != 0) goto exit;
        if (!quiet && (s % log_every == 0 || s == steps)) {
            double dt = now_s() - t0;
            double tok_s = (double)s * tc.accum_steps * tc.B * tc.T / (dt > 0 ? dt : 1e-9);
            printf("step %6lld  train loss %.4f  lr %.2e  grad norm %.3f  %.0f tokens/s\n", s, loss_acc / (double)n_acc,
                   plait_train_lr_at(&tc, (long)s - 1), plait_train_last_grad_norm(tr), tok_s);
            fflush(stdout);
            loss_acc = 0.0;
            n_acc = 0;
        }
        if (can_eval && eval_every > 0 && s % eval_every == 0 && s != steps) {
            if ((rc = plait_corpus_eval(&held_c, tr, tc.T, 0, &loss_eval, NULL)) != 0) goto exit;
            if (!quiet) printf("step %6lld  held-out loss %.4f  perplexity %.2f\n", s, loss_eval, exp(loss_eval));
        }
    }
    if (can_eval && (rc = plait_corpus_eval(&held_c, tr, tc.T, 0, &loss_eval, NULL)) != 0) goto exit;
    if (can_eval && !quiet) printf("step %6lld  held-out loss %.4f  perplexity %.2f\n", steps, loss_eval, exp(loss_eval));
    if ((rc = plait_adapter_save(out, &lora, e.model.sha256)) != 0) goto exit;
    if (!quiet) printf("wrote %s\n", out);
exit:
    if (batch) plait_zeroize(batch, (size_t)tc.B * ((size_t)tc.T + 1) * sizeof(int32_t));
    free(batch);
    plait_corpus_free(&train_c);
    plait_corpus_free(&held_c);
    plait_train_destroy(tr);
    plait_lora_free(&lora);
    engine_free(&e);
    return rc == 0 ? 0 : die_run(rc);
}

/* ----------------------------------------------------------------- eval */

int cmd_eval(int argc, char **argv)
{
    common_t c;
    common_default(&c);
    const char *split_s = "heldout";
    long long max_windows = 0;
    int json = 0;
    plait_flag_t flags[] = {
        ROW_MODEL(c, HELP_MODEL),
        ROW_TOKENIZER(c, HELP_TOKENIZER),
        ROW_DB(c, "the device store"),
        PLAIT_F_STR("split", &split_s, "heldout|train|all", "which of the store's records (default heldout)"),
        ROW_TEXT(c, "a text file instead of the store"),
        ROW_ADAPTER(c, "also evaluate base + this adapter (plait, PEFT directory or GGUF)"),
        ROW_SEQ(c, "tokens per window"),
        ROW_BATCH(c),
        PLAIT_F_LLONG("max-windows", &max_windows, 0, 1LL << 40, "N", "evaluate at most N windows (0: all)", 0),
        ROW_THREADS(c, "threads"),
        ROW_BASE_PREC(c),
        PLAIT_F_SET("json", &json, 1, "one JSON object"),
    };
    static const plait_flag_rule_t rules[] = {{PLAIT_RULE_ONE_OF, {"db", "text"}}};
    plait_flags_cmd_t cmd = {
        .prog = "plait-agent eval",
        .about = "Mean next-token loss (nats/token) and perplexity of the base model and, with\n"
                 "--adapter, of base+adapter, over non-overlapping windows of --seq tokens\n"
                 "of the store's held-out split or of a text file.\n",
        .flags = flags, .n_flags = sizeof(flags) / sizeof(flags[0]),
        .rules = rules, .n_rules = 1,
    };
    int prc = agent_flags(&cmd, argc, argv);
    if (prc != FLAGS_OK) return prc;
    plait_store_split_t split;
    if (strcmp(split_s, "heldout") == 0) split = PLAIT_STORE_HELDOUT;
    else if (strcmp(split_s, "train") == 0) split = PLAIT_STORE_TRAIN;
    else if (strcmp(split_s, "all") == 0) split = PLAIT_STORE_ALL;
    else return plait_fail(PLAIT_EINVAL, "--split: '%.40s' is not heldout, train or all", split_s), die_usage(0);

    engine_t e;
    plait_lora_t base_lora, lora;
    plait_lora_init(&base_lora);
    plait_lora_init(&lora);
    plait_trainer_t *tr = NULL;
    plait_corpus_t corpus;
    plait_corpus_init(&corpus);
    double base_loss = 0, ad_loss = 0;
    size_t ntok = 0;
    plait_train_config_t tc = plait_train_config_default();
    tc.B = c.batch;
    tc.T = c.seq;
    tc.threads = c.threads;
    tc.base_bf16 = c.base_bf16;
    int rc = engine_load(&e, &c, 1);
    if (rc != 0) goto out;
    tc.pool = e.pool;
    if ((rc = load_corpus(&corpus, &c, &e.tok, split)) != 0) goto out;
    if (corpus.n < (size_t)tc.T + 1) { /* say what to do, not only what is missing */
        rc = plait_fail(PLAIT_EINVAL, "%s has %zu tokens, fewer than one window of --seq %d + 1: %s",
                        c.db ? (split == PLAIT_STORE_HELDOUT ? "the store's held-out split"
                                : split == PLAIT_STORE_TRAIN ? "the store's training split" : "the store")
                             : "--text",
                        corpus.n, tc.T,
                        c.db && split == PLAIT_STORE_HELDOUT && corpus.n == 0
                            ? "ingest more records (about 10% are held out), or try --split all or a smaller --seq"
                            : "give more text, or a smaller --seq");
        goto out;
    }
    /* The base model is the adapter with B = 0: its correction vanishes exactly. */
    plait_lora_config_t lc;
    plait_lora_config_default(&lc);
    lc.rank = 1;
    lc.targets = 1u << PLAIT_WQ;
    if ((rc = plait_lora_setup(&base_lora, &e.model.cfg, &lc)) != 0) goto out;
    if ((rc = plait_train_create(&tr, &e.model, &base_lora, &tc)) != 0) goto out;
    if ((rc = plait_corpus_eval(&corpus, tr, tc.T, (size_t)max_windows, &base_loss, &ntok)) != 0) goto out;
    plait_train_destroy(tr);
    tr = NULL;
    if (c.adapter) {
        if ((rc = plait_adapter_import(&lora, c.adapter, &e.model, 0)) != 0) goto out;
        if ((rc = plait_train_create(&tr, &e.model, &lora, &tc)) != 0) goto out;
        if ((rc = plait_corpus_eval(&corpus, tr, tc.T, (size_t)max_windows, &ad_loss, NULL)) != 0) goto out;
    }
    if (json) {
        printf("{\"tokens\":%zu,\"base_loss\":%.6f,\"base_perplexity\":%.4f", ntok, base_loss, exp(base_loss));
        if (c.adapter) printf(",\"adapter_loss\":%.6f,\"adapter_perplexity\":%.4f", ad_loss, exp(ad_loss));
        printf("}\n");
    } else {
        printf("evaluated %zu tokens (%s)\n", ntok, c.db ? split_s : "text file");
        printf("base model      loss %.4f  perplexity %.2f\n", base_loss, exp(base_loss));
        if (c.adapter) printf("base + adapter  loss %.4f  perplexity %.2f\n", ad_loss, exp(ad_loss));
    }
out:
    plait_corpus_free(&corpus);
    plait_train_destroy(tr);
    plait_lora_free(&lora);
    plait_lora_free(&base_lora);
    engine_free(&e);
    return rc == 0 ? 0 : die_run(rc);
}

