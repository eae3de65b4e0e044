/*
 * main.c: plait-agent, the device-side command line: the command table, the
 * dispatcher, and what the commands share (cmd_int.h).
 *
 *   plait-agent ingest    fill the device store from a text or JSON-lines file   cmd_data.c
 *   plait-agent info      what the store holds                                   cmd_data.c
 *   plait-agent forget    erase records (one, all before a time, or all)         cmd_data.c
 *   plait-agent train     fine-tune a LoRA adapter on the store (or a text file) cmd_train.c
 *   plait-agent eval      held-out loss and perplexity, base model and adapter   cmd_train.c
 *   plait-agent generate  sample text, with or without an adapter                cmd_model.c
 *   plait-agent convert   write a checkpoint as GGUF                             cmd_model.c
 *   plait-agent export    write an adapter as plait, PEFT or GGUF                cmd_model.c
 *   plait-agent keygen    this device's key and a certificate request            cmd_join.c
 *   plait-agent join      take part in federated rounds (client.h)               cmd_join.c
 *
 * Every command takes --help, generated from its flag table (plait/flags.h).
 * A bad flag, value or file prints one line that names it and exits with
 * status 2 (usage) or 1 (a failure while running). Private text never reaches
 * the terminal except where the user asked for it (generate prints generated
 * text).
 */
#include "cmd_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/stat.h>

#include "plait/crypto.h"
#include "plait/file.h"
#include "plait/ingest.h"
#include "plait/log.h"

static const char *prog = "plait-agent";
static const char *cmd_name = "";

/* Print "plait-agent CMD: <detail>" for the last recorded failure. */
int die_usage(int rc)
{
    fprintf(stderr, "%s %s: %s\n", prog, cmd_name, plait_errmsg());
    (void)rc;
    return EXIT_USAGE;
}

int die_run(int rc)
{
    fprintf(stderr, "%s %s: %s (%s)\n", prog, cmd_name, plait_errmsg(), plait_err_name(rc));
    return EXIT_FAILURE;
}

double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* ------------------------------------------------- shared values and helpers */

#ifndef PLAIT_DEFAULT_ASSETS
#define PLAIT_DEFAULT_ASSETS "../shared/assets"
#endif

/* The default asset `name`: $PLAIT_ASSETS/name, else the build's assets folder; the first that exists. When
 * neither does, fails naming every path tried (one line). */
static int find_asset(const char *flag, const char *name, char *buf, size_t cap)
{
    const char *env = getenv("PLAIT_ASSETS");
    char tried[2][1000];
    int n = 0;
    if (env && *env) snprintf(tried[n++], sizeof(tried[0]), "%s/%s", env, name);
    snprintf(tried[n++], sizeof(tried[0]), "%s/%s", PLAIT_DEFAULT_ASSETS, name);
    for (int i = 0; i < n; i++) {
        struct stat sb;
        if (stat(tried[i], &sb) == 0 && S_ISREG(sb.st_mode)) {
            snprintf(buf, cap, "%.1000s", tried[i]);
            return 0;
        }
    }
    if (n == 2)
        return plait_fail(PLAIT_ENOENT, "no %s given and none found: tried $PLAIT_ASSETS/%s (%s) and the build's %s; "
                                        "give %s FILE or set PLAIT_ASSETS",
                          flag + 2, name, tried[0], tried[1], flag);
    return plait_fail(PLAIT_ENOENT, "no %s given and none found: tried the build's %s ($PLAIT_ASSETS is not set); "
                                    "give %s FILE or set PLAIT_ASSETS",
                      flag + 2, tried[0], flag);
}

/* Resolve --model / --tokenizer when not given (see find_asset). */
int resolve_assets(common_t *c, int need_tok)
{
    int rc;
    if (!c->model && (rc = find_asset("--model", "stories260K.bin", c->model_buf, sizeof(c->model_buf))) != 0)
        return rc;
    if (!c->model) c->model = c->model_buf;
    if (need_tok && !c->tokenizer &&
        (rc = find_asset("--tokenizer", "tok512.bin", c->tok_buf, sizeof(c->tok_buf))) != 0)
        return rc;
    if (need_tok && !c->tokenizer) c->tokenizer = c->tok_buf;
    return 0;
}

void common_default(common_t *c)
{
    memset(c, 0, sizeof(*c)); /* model and tokenizer: resolve_assets() unless given */
    c->threads = 1;
    c->batch = 8;
    c->seq = 128;
}

int set_base_precision(void *dest, const char *value)
{
    if (strcmp(value, "f32") == 0) *(int *)dest = 0;
    else if (strcmp(value, "bf16") == 0) *(int *)dest = 1;
    else return plait_fail(PLAIT_EINVAL, "--base-precision '%.20s' is not f32 or bf16", value);
    return 0;
}

int agent_flags(plait_flags_cmd_t *cmd, int argc, char **argv)
{
    int rc = plait_flags_parse(cmd, argc, argv, stdout, NULL);
    if (rc == 0) return FLAGS_OK;
    if (rc == PLAIT_FLAGS_HELP) return 0;
    return die_usage(rc);
}

int open_store(plait_store_t **st, const char *path, int create)
{
    plait_store_config_t cfg;
    plait_store_config_default(&cfg);
    cfg.path = path;
    cfg.create = create != 0;
    return plait_store_open(st, &cfg);
}

int engine_load(engine_t *e, common_t *c, int need_tok)
{
    int rc;
    plait_model_init(&e->model);
    plait_tok_init(&e->tok);
    e->pool = NULL;
    e->have_tok = 0;
    if ((rc = resolve_assets(c, need_tok)) != 0) return rc;
    if ((rc = plait_model_load(&e->model, c->model)) != 0) return rc;
    if (need_tok) {
        if ((rc = plait_tok_load(&e->tok, c->tokenizer, e->model.cfg.vocab_size)) != 0) return rc;
        e->have_tok = 1;
    }
    if (c->threads > 1 && (rc = plait_pool_create(&e->pool, c->threads)) != 0) return rc;
    return 0;
}

void engine_free(engine_t *e)
{
    plait_pool_destroy(e->pool);
    plait_tok_free(&e->tok);
    plait_model_free(&e->model);
}

/* Build a corpus from --db (one split) or --text (every block). */
int load_corpus(plait_corpus_t *corpus, const common_t *c, const plait_tok_t *tok,
                       plait_store_split_t split)
{
    int rc;
    if (c->db) {
        plait_store_t *st = NULL;
        if ((rc = open_store(&st, c->db, 0)) != 0) return rc;
        rc = plait_corpus_add_store(corpus, tok, st, split);
        plait_store_close(st);
        return rc;
    }
    size_t len = 0;
    uint8_t *ubuf = NULL;
    char label[1100];
    snprintf(label, sizeof(label), "--text %s", c->text);
    /* Non-blocking, regular files only: a FIFO is refused, not waited on. */
    if ((rc = plait_file_read(c->text, label, PLAIT_INGEST_DEFAULT_MAX_FILE, &ubuf, &len)) != 0) return rc;
    char *buf = (char *)ubuf;
    rc = plait_corpus_add_text(corpus, tok, buf, len);
    plait_zeroize(buf, len + 1); /* the user's private text */
    free(buf);
    return rc;
}

/* The folder that will hold file out must exist and be writable: 0, or fails naming it. */
int check_out_dir(const char *out)
{
    char dir[1024];
    const char *slash = strrchr(out, '/');
    if (!slash) snprintf(dir, sizeof(dir), ".");
    else if (slash == out) snprintf(dir, sizeof(dir), "/");
    else snprintf(dir, sizeof(dir), "%.*s", (int)(slash - out) < 1000 ? (int)(slash - out) : 1000, out);
    struct stat sb;
    if (stat(dir, &sb) != 0 || !S_ISDIR(sb.st_mode))
        return plait_fail(PLAIT_EINVAL, "--out %.200s: folder %.200s does not exist", out, dir);
    if (access(dir, W_OK) != 0) return plait_fail(PLAIT_EINVAL, "--out %.200s: folder %.200s is not writable", out, dir);
    return 0;
}

/* ----------------------------------------------------------------- main */

typedef struct {
    const char *name;
    int (*fn)(int argc, char **argv);
    const char *help;
} command_t;

static const command_t commands[] = {
    {"ingest", cmd_ingest, "add records to the device store from a text or JSON-lines file"},
    {"train", cmd_train, "fine-tune a LoRA adapter on the store or a text file"},
    {"eval", cmd_eval, "held-out loss and perplexity of the base model and an adapter"},
    {"generate", cmd_generate, "sample text with or without an adapter"},
    {"info", cmd_info, "count the store's records"},
    {"forget", cmd_forget, "erase records from the store (and what was derived from them)"},
    {"keygen", cmd_keygen, "make this device's key and a certificate request (the key stays here)"},
    {"join", cmd_join, "take part in federated rounds with an aggregator (mutual TLS)"},
    {"convert", cmd_convert, "write a llama2.c checkpoint as GGUF (optionally quantized)"},
    {"export", cmd_export, "write an adapter as a plait, PEFT or llama.cpp GGUF adapter"},
};

static void usage(FILE *f)
{
    fprintf(f, "usage: plait-agent COMMAND [--help] [options]\n\ncommands:\n");
    for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
        fprintf(f, "  %-9s %s\n", commands[i].name, commands[i].help);
    fprintf(f, "\nplait %s. Without --model/--tokenizer the model and tokenizer are looked up in $PLAIT_ASSETS,\n"
               "then in the build's assets folder (%s).\n", PLAIT_VERSION_STRING, PLAIT_DEFAULT_ASSETS);
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        usage(stderr);
        return EXIT_USAGE;
    }
    if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "help") == 0) {
        usage(stdout);
        return 0;
    }
    if (strcmp(argv[1], "--version") == 0) {
        printf("plait-agent %s\n", PLAIT_VERSION_STRING);
        return 0;
    }
    const char *lvl = getenv("PLAIT_LOG_LEVEL");
    plait_log_level_t level;
    if (lvl && plait_log_parse_level(lvl, &level) == 0) plait_log_set_level(level);
    for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++) {
        if (strcmp(argv[1], commands[i].name) == 0) {
            cmd_name = commands[i].name;
            return commands[i].fn(argc - 1, argv + 1);
        }
    }
    fprintf(stderr, "%s: unknown command '%.40s' (try --help)\n", prog, argv[1]);
    return EXIT_USAGE;
}
