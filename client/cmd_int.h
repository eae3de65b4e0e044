/*
 * cmd_int.h (private to the plait-agent executable): what its commands share.
 *
 * main.c holds the dispatcher and the helpers below; each cmd_*.c holds a
 * group of commands (cmd_data.c: ingest, info, forget; cmd_train.c: train,
 * eval; cmd_model.c: generate, convert, export; cmd_join.c: keygen, join).
 * Every command parses its flags from a plait_flag_t table (plait/flags.h)
 * with agent_flags(), so --help is generated from the same table and a bad
 * flag reads "plait-agent CMD: <detail>" with exit status 2.
 */
#ifndef PLAIT_CMD_INT_H
#define PLAIT_CMD_INT_H

#include <stddef.h>

#include "plait/data.h"
#include "plait/flags.h"
#include "plait/model.h"
#include "plait/store.h"
#include "plait/tok.h"
#include "plait/train.h"

#define EXIT_USAGE 2

/* agent_flags(): the flags were parsed, go on. */
#define FLAGS_OK (-1)

/* Print "plait-agent CMD: <detail>" for the last recorded failure; return 2. */
int die_usage(int rc);
/* Print "plait-agent CMD: <detail> (PLAIT_E...)"; return 1. */
int die_run(int rc);
double now_s(void);

/**
 * Parse a command's flags (argv[0] is the command). Returns FLAGS_OK, or the
 * exit status to return at once: 0 after --help, 2 after a usage error (printed).
 */
int agent_flags(plait_flags_cmd_t *cmd, int argc, char **argv);

/* Values of the flags several commands share, with their defaults. */
typedef struct {
    const char *model;     /* --model (default $PLAIT_ASSETS/stories260K.bin) */
    const char *tokenizer; /* --tokenizer (default $PLAIT_ASSETS/tok512.bin) */
    const char *db;        /* --db */
    const char *text;      /* --text */
    const char *adapter;   /* --adapter */
    int threads;           /* --threads (default 1) */
    int base_bf16;         /* --base-precision bf16 (default f32) */
    int batch;             /* --batch (default 8) */
    int seq;               /* --seq (default 128) */
    char model_buf[1024];
    char tok_buf[1024];
} common_t;

void common_default(common_t *c);
/* Resolve --model / --tokenizer when not given ($PLAIT_ASSETS, then the build's assets). */
int resolve_assets(common_t *c, int need_tok);

/* Table rows of common_t's flags. Commands that only use the store still
 * accept --model, --tokenizer, --text and --threads unlisted (*_HIDDEN). */
#define ROW_MODEL(c, h) PLAIT_F_STR("model", &(c).model, "FILE", h)
#define ROW_TOKENIZER(c, h) PLAIT_F_STR("tokenizer", &(c).tokenizer, "FILE", h)
#define ROW_DB(c, h) PLAIT_F_STR("db", &(c).db, "DB", h)
#define ROW_TEXT(c, h) PLAIT_F_STR("text", &(c).text, "FILE", h)
#define ROW_THREADS(c, h) PLAIT_F_INT("threads", &(c).threads, 1, 256, "N", h, 1)
/* --base-precision f32|bf16: the frozen base's products (train.h base_bf16). */
int set_base_precision(void *dest, const char *value);
#define ROW_BASE_PREC(c)                                                                               \
    PLAIT_F_CUSTOM("base-precision", &(c).base_bf16, set_base_precision, "P",                          \
                   "the frozen base's products in f32 (default) or bf16: BF16 where the CPU has\n"     \
                   "AVX512-BF16 (faster, 8 significant bits; docs/performance.md), else f32")
#define ROW_ADAPTER(c, h) PLAIT_F_STR("adapter", &(c).adapter, "FILE", h)
#define ROW_BATCH(c) PLAIT_F_INT("batch", &(c).batch, 1, 4096, "B", "sequences per micro-batch", 1)
#define ROW_SEQ(c, h) PLAIT_F_INT("seq", &(c).seq, 1, PLAIT_MODEL_MAX_SEQ, "T", h, 1)
#define HELP_MODEL "llama2.c checkpoint or GGUF model (default $PLAIT_ASSETS/stories260K.bin)"
#define HELP_TOKENIZER "llama2.c tokenizer or GGUF file (default $PLAIT_ASSETS/tok512.bin)"
#define ROWS_ENGINE_HIDDEN(c) ROW_MODEL(c, NULL), ROW_TOKENIZER(c, NULL), ROW_THREADS(c, NULL)

int open_store(plait_store_t **st, const char *path, int create);

/* Model, tokenizer and optional pool, loaded together. */
typedef struct {
    plait_model_t model;
    plait_tok_t tok;
    plait_pool_t *pool;
    int have_tok;
} engine_t;

int engine_load(engine_t *e, common_t *c, int need_tok);
void engine_free(engine_t *e);
/* Build a corpus from --db (one split) or --text (every block). */
int load_corpus(plait_corpus_t *corpus, const common_t *c, const plait_tok_t *tok,
                plait_store_split_t split);
/* The folder that will hold file out must exist and be writable: 0, or fails naming it. */
int check_out_dir(const char *out);

int cmd_ingest(int argc, char **argv);
int cmd_info(int argc, char **argv);
int cmd_forget(int argc, char **argv);
int cmd_train(int argc, char **argv);
int cmd_eval(int argc, char **argv);
int cmd_generate(int argc, char **argv);
int cmd_convert(int argc, char **argv);
int cmd_export(int argc, char **argv);
int cmd_keygen(int argc, char **argv);
int cmd_join(int argc, char **argv);

#endif /* PLAIT_CMD_INT_H */
