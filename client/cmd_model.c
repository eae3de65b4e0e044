/*
 * cmd_model.c: plait-agent's model-file commands: generate (sample text, with
 * or without an adapter), convert (write a checkpoint as GGUF, optionally
 * quantized) and export (write an adapter as plait, PEFT or GGUF).
 */
#include "cmd_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "plait/adapter.h"
#include "plait/client.h"
#include "plait/crypto.h"
#include "plait/gguf.h"
#include "plait/infer.h"
#include "plait/lora.h"
#include "plait/peft.h"

/* ------------------------------------------------------------- generate */

static int print_piece(void *ctx, const char *piece, size_t len)
{
    fwrite(piece, 1, len, (FILE *)ctx);
    fflush((FILE *)ctx);
    return 0;
}

int cmd_generate(int argc, char **argv)
{
    common_t c;
    common_default(&c);
    plait_gen_config_t g;
    plait_gen_config_default(&g);
    const char *prompt = NULL;
    int merged = 1;
    const char *state = NULL;
    char serve_path[4096], why[512];
    plait_flag_t flags[] = {
        ROW_MODEL(c, HELP_MODEL),
        ROW_TOKENIZER(c, HELP_TOKENIZER),
        ROW_ADAPTER(c, "apply this adapter (plait, PEFT directory or GGUF)"),
        PLAIT_F_STR("state", &state, "DIR",
                    "the agent's state directory: without --adapter, use the adapter the device serves\n"
                    "(chosen after each round: global, personal or a mix; `info --state` says which)"),
        PLAIT_F_STR("prompt", &prompt, "TEXT", "the text to continue"),
        PLAIT_F_FLOAT("temperature", &g.temperature, 0, 100, "X", "0 is greedy", 1),
        PLAIT_F_FLOAT("top-p", &g.topp, 0, 1, "X", "nucleus threshold, 1 disables", 1),
        PLAIT_F_INT("steps", &g.steps, 1, PLAIT_MODEL_MAX_SEQ, "N", "positions including the prompt", 1),
        PLAIT_F_U64("seed", &g.seed, "N", "sampler seed", 1),
        PLAIT_F_SET("unmerged", &merged, 0, "apply the adapter as a side path instead of merging it"),
        ROW_THREADS(c, "threads"),
        ROW_DB(c, NULL), ROW_TEXT(c, NULL),
    };
    plait_flags_cmd_t cmd = {
        .prog = "plait-agent generate",
        .about = "Samples text as llama2.c does (BOS, then the prompt, then up to --steps positions).\n",
        .flags = flags, .n_flags = sizeof(flags) / sizeof(flags[0]),
    };
    int prc = agent_flags(&cmd, argc, argv);
    if (prc != FLAGS_OK) return prc;
    if (state && !c.adapter) {
        /* The device's serving adapter; none chosen yet: the base model, said so. */
        int src = plait_agent_serving(state, serve_path, sizeof(serve_path), why, sizeof(why));
        if (src == 0) {
            c.adapter = serve_path;
            fprintf(stderr, "adapter: %s\n", why);
        } else if (src == PLAIT_ENOENT) {
            fprintf(stderr, "adapter: none (%s): the base model\n", plait_errmsg());
        } else {
            return die_run(src);
        }
    }
    engine_t e;
    plait_lora_t lora;
    plait_lora_init(&lora);
    plait_infer_t st;
    plait_infer_init(&st);
    int rc = engine_load(&e, &c, 1);
    if (rc == 0 && c.adapter) rc = plait_adapter_import(&lora, c.adapter, &e.model, 0);
    if (rc == 0) {
        plait_infer_config_t ic;
        plait_infer_config_default(&ic);
        ic.merge = merged;
        ic.pool = e.pool;
        rc = plait_infer_setup(&st, &e.model, c.adapter ? &lora : NULL, &ic);
    }
    float *bias = NULL; /* the device's output bias, served with its adapter when it kept one */
    plait_knn_t knn;    /* and its kNN memory */
    plait_knn_init(&knn);
    if (rc == 0 && c.adapter == serve_path) {
        size_t V = (size_t)e.model.cfg.vocab_size;
        bias = calloc(V, sizeof(float));
        if (!bias) rc = plait_fail(PLAIT_ENOMEM, "generate: output bias");
        int brc = rc == 0 ? plait_agent_serving_bias(state, bias, V) : rc;
        if (brc == 0) rc = plait_infer_set_logit_bias(&st, bias);
        else if (brc != PLAIT_ENOENT) rc = brc;
        int krc = rc == 0 ? plait_agent_serving_knn(state, &knn, (size_t)e.model.cfg.dim, V) : rc;
        if (krc == 0) rc = plait_infer_set_knn(&st, &knn);
        else if (krc != PLAIT_ENOENT) rc = krc;
    }
    if (rc == 0) rc = plait_generate(&st, &e.tok, prompt, &g, print_piece, stdout, NULL);
    if (rc == 0) printf("\n");
    plait_infer_free(&st);
    if (bias) plait_zeroize(bias, (size_t)e.model.cfg.vocab_size * sizeof(float));
    free(bias);
    plait_knn_free(&knn);
    plait_lora_free(&lora);
    engine_free(&e);
    return rc == 0 ? 0 : die_run(rc);
}

/* -------------------------------------------------------------- convert */

static int parse_dtype(const char *s, int *type)
{
    static const struct {
        const char *name;
        int type;
    } t[] = {{"f32", PLAIT_DT_F32}, {"f16", PLAIT_DT_F16}, {"bf16", PLAIT_DT_BF16},
             {"q8_0", PLAIT_DT_Q8_0}, {"q4_0", PLAIT_DT_Q4_0}};
    for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++)
        if (strcmp(s, t[i].name) == 0) return *type = t[i].type, 0;
    return plait_fail(PLAIT_EINVAL, "--type '%.20s' is not one of f32, f16, bf16, q8_0, q4_0", s);
}

static int parse_type(void *dest, const char *v)
{
    return parse_dtype(v, (int *)dest);
}

int cmd_convert(int argc, char **argv)
{
    const char *model = NULL, *tokp = NULL, *out = NULL;
    int type = PLAIT_DT_F32;
    plait_flag_t flags[] = {
        PLAIT_F_STR("model", &model, "IN", "llama2.c checkpoint or GGUF model to convert"),
        PLAIT_F_STR("out", &out, "OUT.gguf", "the GGUF v3 file to write"),
        PLAIT_F_STR("tokenizer", &tokp, "TOK", "also write this tokenizer as GGUF metadata"),
        PLAIT_F_CUSTOM("type", &type, parse_type, "f32|f16|bf16|q8_0|q4_0", "the matrices' type (default f32)"),
    };
    static const plait_flag_rule_t rules[] = {{PLAIT_RULE_REQUIRED, {"model", "out"}}};
    plait_flags_cmd_t cmd = {
        .prog = "plait-agent convert",
        .about = "Writes a llama2.c checkpoint (or a GGUF model) as a GGUF v3 file, its matrices in --type\n"
                 "(rows that are not whole 32-element blocks stay f32) and, with --tokenizer,\n"
                 "the tokenizer as GGUF metadata, so that --tokenizer OUT.gguf works afterwards.\n",
        .flags = flags, .n_flags = sizeof(flags) / sizeof(flags[0]),
        .rules = rules, .n_rules = 1,
        .extra_args = 1, /* ignored, as they always were */
    };
    int prc = agent_flags(&cmd, argc, argv);
    if (prc != FLAGS_OK) return prc;
    plait_model_t m;
    plait_tok_t tok;
    plait_gguf_writer_t *w = NULL;
    plait_model_init(&m);
    plait_tok_init(&tok);
    int rc = plait_model_load(&m, model);
    if (rc == 0 && tokp) rc = plait_tok_load(&tok, tokp, m.cfg.vocab_size);
    if (rc == 0) rc = plait_gguf_writer_create(&w);
    if (rc == 0) rc = plait__model_gguf_fill(w, &m, type);
    if (rc == 0 && tokp) rc = plait__tok_gguf_fill(w, &tok);
    if (rc == 0) rc = plait_gguf_write_file(w, out);
    plait_gguf_writer_free(w);
    plait_tok_free(&tok);
    if (rc == 0) {
        plait_model_t c;
        plait_model_init(&c);
        rc = plait_model_load(&c, out);
        if (rc == 0) {
            char hex[65];
            plait_hex(c.sha256, 32, hex);
            printf("wrote %s: %zu bytes, %s, base model sha256 %s\n", out, c.map_len, plait_dtype_name(type), hex);
        }
        plait_model_free(&c);
    }
    plait_model_free(&m);
    return rc == 0 ? 0 : die_run(rc);
}

/* --------------------------------------------------------------- export */

int cmd_export(int argc, char **argv)
{
    const char *model = NULL, *adapter = NULL, *out = NULL, *fmt = "plait";
    plait_flag_t flags[] = {
        PLAIT_F_STR("model", &model, "M", "the base model the adapter belongs to"),
        PLAIT_F_STR("adapter", &adapter, "A", "a plait adapter, a PEFT directory or a llama.cpp GGUF adapter"),
        PLAIT_F_STR("out", &out, "PATH", "where to write it"),
        PLAIT_F_STR("format", &fmt, "plait|peft|gguf", "what to write (default plait)"),
    };
    static const plait_flag_rule_t rules[] = {{PLAIT_RULE_REQUIRED, {"model", "adapter", "out"}}};
    plait_flags_cmd_t cmd = {
        .prog = "plait-agent export",
        .about = "Loads adapter A for model M and writes it as a plait adapter file, a Hugging Face PEFT\n"
                 "directory (adapter_model.safetensors, adapter_config.json) or a llama.cpp GGUF LoRA\n"
                 "adapter. See docs/models.md.\n",
        .flags = flags, .n_flags = sizeof(flags) / sizeof(flags[0]),
        .rules = rules, .n_rules = 1,
        .extra_args = 1, /* ignored, as they always were */
    };
    int prc = agent_flags(&cmd, argc, argv);
    if (prc != FLAGS_OK) return prc;
    if (strcmp(fmt, "plait") != 0 && strcmp(fmt, "peft") != 0 && strcmp(fmt, "gguf") != 0)
        return plait_fail(PLAIT_EINVAL, "--format '%.20s' is not one of plait, peft, gguf", fmt), die_usage(0);
    plait_model_t m;
    plait_lora_t l;
    plait_model_init(&m);
    plait_lora_init(&l);
    int rc = plait_model_load(&m, model);
    if (rc == 0) rc = plait_adapter_import(&l, adapter, &m, 0);
    if (rc == 0) {
        if (strcmp(fmt, "peft") == 0) rc = plait_peft_export(&l, out);
        else if (strcmp(fmt, "gguf") == 0) rc = plait_lora_gguf_export(&l, out);
        else rc = plait_adapter_save(out, &l, m.sha256);
    }
    if (rc == 0) printf("wrote %s (%s, rank %d, %zu parameters)\n", out, fmt, l.cfg.rank, l.n_params);
    plait_lora_free(&l);
    plait_model_free(&m);
    return rc == 0 ? 0 : die_run(rc);
}

