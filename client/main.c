/*
 * main.c: plait-agent, the device-side command line.
 *
 *   plait-agent ingest    fill the device store from a text or JSON-lines file
 *   plait-agent train     fine-tune a LoRA adapter on the store (or a text file)
 *   plait-agent eval      held-out loss and perplexity, base model and adapter
 *   plait-agent generate  sample text, with or without an adapter
 *   plait-agent info      what the store holds
 *   plait-agent forget    erase records (one, all before a time, or all)
 *   plait-agent join      take part in federated rounds (client.h), once or as a daemon
 *
 * Every command takes --help. A bad flag, value or file prints one line that
 * names it and exits with status 2 (usage) or 1 (a failure while running).
 * Private text never reaches the terminal except where the user asked for it
 * (generate prints generated text).
 */
#include "plait/adapter.h"
#include "plait/cli.h"
#include "plait/client.h"
#include "plait/crypto.h"
#include "plait/data.h"
#include "plait/file.h"
#include "plait/gguf.h"
#include "plait/infer.h"
#include "plait/ingest.h"
#include "plait/json.h"
#include "plait/log.h"
#include "plait/lora.h"
#include "plait/model.h"
#include "plait/peft.h"
#include "plait/store.h"
#include "plait/tok.h"
#include "plait/train.h"

#include <errno.h>
#include <getopt.h>
#include <unistd.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/stat.h>

#define EXIT_USAGE 2

static const char *prog = "plait-agent";
static const char *cmd_name = "";

/* Print "plait-agent CMD: <detail>" for the last recorded failure. */
static int die_usage(int rc)
{
    fprintf(stderr, "%s %s: %s\n", prog, cmd_name, plait_errmsg());
    (void)rc;
    return EXIT_USAGE;
}

static int die_run(int rc)
{
    fprintf(stderr, "%s %s: %s (%s)\n", prog, cmd_name, plait_errmsg(), plait_err_name(rc));
    return EXIT_FAILURE;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* ------------------------------------------------------------ shared flags */

/* Values of the flags several commands share, with their defaults. */
typedef struct {
    const char *model;     /* --model (default $PLAIT_ASSETS/stories260K.bin) */
    const char *tokenizer; /* --tokenizer (default $PLAIT_ASSETS/tok512.bin) */
    const char *db;        /* --db */
    const char *text;      /* --text */
    const char *adapter;   /* --adapter */
    int threads;           /* --threads (default 1) */
    int batch;             /* --batch (default 8) */
    int seq;               /* --seq (default 128) */
    char model_buf[1024];
    char tok_buf[1024];
} common_t;

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
static int resolve_assets(common_t *c, int need_tok)
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

static void common_default(common_t *c)
{
    memset(c, 0, sizeof(*c)); /* model and tokenizer: resolve_assets() unless given */
    c->threads = 1;
    c->batch = 8;
    c->seq = 128;
}

enum {
    OPT_MODEL = 1000, OPT_TOKENIZER, OPT_DB, OPT_TEXT, OPT_ADAPTER, OPT_THREADS, OPT_BATCH, OPT_SEQ,
    OPT_JSONL, OPT_RANK, OPT_ALPHA, OPT_TARGETS, OPT_STEPS, OPT_LR, OPT_OUT, OPT_SEED, OPT_INIT,
    OPT_FREEZE_A, OPT_TOKENS, OPT_DUMP, OPT_WARMUP, OPT_COSINE, OPT_WD, OPT_CLIP, OPT_ACCUM,
    OPT_EVAL_EVERY, OPT_LOG_EVERY, OPT_SPLIT, OPT_MAX_WINDOWS, OPT_PROMPT, OPT_TEMP, OPT_TOPP,
    OPT_MERGED, OPT_ID, OPT_BEFORE, OPT_ALL, OPT_KIND, OPT_HELDOUT, OPT_QUIET, OPT_JSON,
    OPT_MIN_LR, OPT_MAX_BYTES, OPT_SERVER, OPT_CA, OPT_CERT, OPT_KEY, OPT_CSR, OPT_STATE, OPT_ONCE, OPT_DAEMON,
    OPT_ROUNDS, OPT_MIN_RECORDS, OPT_SERVER_NAME, OPT_BACKOFF_INIT, OPT_BACKOFF_MAX, OPT_REJOIN,
    OPT_MAX_RUNTIME, OPT_ATTEMPTS, OPT_CONNECT_TIMEOUT, OPT_IO_TIMEOUT, OPT_KEEPALIVE,
    OPT_NO_SECURE_AGG, OPT_MIN_NOISE, OPT_MAX_CLIP
};

#define COMMON_OPTS                                                                    \
    {"model", required_argument, 0, OPT_MODEL}, {"tokenizer", required_argument, 0, OPT_TOKENIZER}, \
    {"db", required_argument, 0, OPT_DB}, {"text", required_argument, 0, OPT_TEXT},     \
    {"threads", required_argument, 0, OPT_THREADS}, {"help", no_argument, 0, 'h'}

/* Handle a flag of common_t; returns 1 if handled, 0 if not, -1 on a bad value. */
static int common_opt(common_t *c, int opt, const char *arg)
{
    long long v;
    switch (opt) {
    case OPT_MODEL: c->model = arg; return 1;
    case OPT_TOKENIZER: c->tokenizer = arg; return 1;
    case OPT_DB: c->db = arg; return 1;
    case OPT_TEXT: c->text = arg; return 1;
    case OPT_ADAPTER: c->adapter = arg; return 1;
    case OPT_THREADS:
        if (plait_cli_int("--threads", arg, 1, 256, &v) != 0) return -1;
        c->threads = (int)v;
        return 1;
    case OPT_BATCH:
        if (plait_cli_int("--batch", arg, 1, 4096, &v) != 0) return -1;
        c->batch = (int)v;
        return 1;
    case OPT_SEQ:
        if (plait_cli_int("--seq", arg, 1, PLAIT_MODEL_MAX_SEQ, &v) != 0) return -1;
        c->seq = (int)v;
        return 1;
    default: return 0;
    }
}

/* getopt_long loop prologue: reports unknown flags and missing values by name. */
static int bad_flag(char **argv)
{
    const char *f = argv[optind - 1];
    plait_fail(PLAIT_EINVAL, "unknown flag or missing value: '%.60s' (see --help)", f ? f : "?");
    return EXIT_USAGE;
}

static int open_store(plait_store_t **st, const char *path, int create)
{
    plait_store_config_t cfg;
    plait_store_config_default(&cfg);
    cfg.path = path;
    cfg.create = create != 0;
    return plait_store_open(st, &cfg);
}

/* Model, tokenizer and optional pool, loaded together. */
typedef struct {
    plait_model_t model;
    plait_tok_t tok;
    plait_pool_t *pool;
    int have_tok;
} engine_t;

static int engine_load(engine_t *e, common_t *c, int need_tok)
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

static void engine_free(engine_t *e)
{
    plait_pool_destroy(e->pool);
    plait_tok_free(&e->tok);
    plait_model_free(&e->model);
}

/* Build a corpus from --db (one split) or --text (every block). */
static int load_corpus(plait_corpus_t *corpus, const common_t *c, const plait_tok_t *tok,
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
static int check_out_dir(const char *out)
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

/* --------------------------------------------------------------- ingest */

static void ingest_usage(void)
{
    printf("usage: plait-agent ingest --db DB (--text FILE | --jsonl FILE) [--max-bytes N]\n"
           "\n"
           "Adds records to the device store DB (created if missing):\n"
           "  --text FILE    one record per blank-line-separated block\n"
           "  --jsonl FILE   one JSON object per line: {\"text\": ..., \"time\": unix s, \"kind\": ...}\n"
           "  --max-bytes N  refuse files larger than N bytes (default 256 MiB)\n"
           "The file is ingested in one transaction: entirely or not at all.\n");
}

#define PLAIT_PATH_LABEL_MAX 300

static int cmd_ingest(int argc, char **argv)
{
    common_t c;
    common_default(&c);
    const char *jsonl = NULL;
    uint64_t max_bytes = PLAIT_INGEST_DEFAULT_MAX_FILE;
    static const struct option opts[] = {COMMON_OPTS, {"jsonl", required_argument, 0, OPT_JSONL},
                                         {"max-bytes", required_argument, 0, OPT_MAX_BYTES}, {0, 0, 0, 0}};
    int o;
    while ((o = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        if (o == 'h') { ingest_usage(); return 0; }
        int h = common_opt(&c, o, optarg);
        if (h < 0) return die_usage(PLAIT_EINVAL);
        if (h) continue;
        if (o == OPT_JSONL) jsonl = optarg;
        else if (o == OPT_MAX_BYTES) {
            if (plait_cli_u64("--max-bytes", optarg, &max_bytes) != 0) return die_usage(PLAIT_EINVAL);
        } else return bad_flag(argv), die_usage(PLAIT_EINVAL);
    }
    if (optind < argc) return plait_fail(PLAIT_EINVAL, "unexpected argument '%.60s'", argv[optind]), die_usage(0);
    if (!c.db) return plait_fail(PLAIT_EINVAL, "--db is required"), die_usage(0);
    if (!c.text == !jsonl) return plait_fail(PLAIT_EINVAL, "give exactly one of --text and --jsonl"), die_usage(0);
    /* A missing input must not leave an empty store behind. */
    FILE *in = NULL; /* opened without blocking: a FIFO or device is refused, not waited on */
    char label[PLAIT_PATH_LABEL_MAX];
    snprintf(label, sizeof(label), "%s %s", jsonl ? "--jsonl" : "--text", jsonl ? jsonl : c.text);
    int orc = plait_file_fopen(jsonl ? jsonl : c.text, label, &in);
    if (orc != 0)
        return plait_fail(orc, "%s (no store created)", plait_errmsg()), die_run(orc);
    fclose(in);
    plait_store_t *st = NULL;
    int rc = open_store(&st, c.db, 1);
    if (rc != 0) return die_run(rc);
    int64_t added = 0, total = 0, held = 0;
    rc = plait_ingest_file(st, jsonl ? jsonl : c.text, jsonl ? PLAIT_INGEST_JSONL : PLAIT_INGEST_TEXT,
                           (size_t)max_bytes, &added);
    if (rc == 0) rc = plait_store_count(st, &total);
    if (rc == 0) rc = plait_store_count_split(st, PLAIT_STORE_HELDOUT, &held);
    plait_store_close(st);
    if (rc == 0 && added == 0)
        rc = plait_fail(PLAIT_EINVAL, "%s holds no records (empty, or only blank lines): nothing was ingested",
                        jsonl ? jsonl : c.text);
    if (rc != 0) return die_run(rc);
    printf("ingested %lld records into %s (%lld in store, %lld held out for evaluation)\n", (long long)added,
           c.db, (long long)total, (long long)held);
    return 0;
}

/* ----------------------------------------------------------------- info */

static int cmd_info(int argc, char **argv)
{
    common_t c;
    common_default(&c);
    static const struct option opts[] = {COMMON_OPTS, {"json", no_argument, 0, OPT_JSON},
                                         {"state", required_argument, 0, OPT_STATE}, {0, 0, 0, 0}};
    int json = 0;
    const char *state = NULL;
    int o;
    while ((o = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        if (o == 'h') {
            printf("usage: plait-agent info --db DB [--state DIR] [--json]\n\nPrints how many records the store holds, "
                   "per split\n(--json: one object {\"records\": N, \"train\": N, \"heldout\": N}), and with --state the\n"
                   "adapter the device serves (global, personal or a mix) and why (\"serving\" in JSON).\n");
            return 0;
        }
        if (o == OPT_JSON) {
            json = 1;
            continue;
        }
        if (o == OPT_STATE) {
            state = optarg;
            continue;
        }
        int h = common_opt(&c, o, optarg);
        if (h < 0) return die_usage(PLAIT_EINVAL);
        if (!h) return bad_flag(argv), die_usage(PLAIT_EINVAL);
    }
    if (!c.db) return plait_fail(PLAIT_EINVAL, "--db is required"), die_usage(0);
    plait_store_t *st = NULL;
    int rc = open_store(&st, c.db, 0);
    int64_t total = 0, train = 0, held = 0;
    if (rc == 0) rc = plait_store_count(st, &total);
    if (rc == 0) rc = plait_store_count_split(st, PLAIT_STORE_TRAIN, &train);
    if (rc == 0) rc = plait_store_count_split(st, PLAIT_STORE_HELDOUT, &held);
    plait_store_close(st);
    if (rc != 0) return die_run(rc);
    char serve_path[4096], why[512] = "";
    int src = state ? plait_agent_serving(state, serve_path, sizeof(serve_path), why, sizeof(why)) : PLAIT_ENOENT;
    if (state && src != 0 && src != PLAIT_ENOENT) return die_run(src);
    if (state && src == PLAIT_ENOENT) snprintf(why, sizeof(why), "none chosen yet (after the first round)");
    if (json) {
        printf("{\"records\": %lld, \"train\": %lld, \"heldout\": %lld", (long long)total, (long long)train,
               (long long)held);
        if (state) {
            plait_buf_t b;
            plait_buf_init(&b, 0);
            plait_buf_json_string(&b, why, strlen(why));
            printf(", \"serving\": %.*s", (int)b.len, (const char *)b.data);
            plait_buf_free(&b);
        }
        printf("}\n");
    } else {
        printf("%s: %lld records (%lld train, %lld held out)\n", c.db, (long long)total, (long long)train,
               (long long)held);
        if (state) printf("serving adapter: %s\n", why);
    }
    return 0;
}

/* --------------------------------------------------------------- forget */

static int cmd_forget(int argc, char **argv)
{
    common_t c;
    common_default(&c);
    long long id = 0, before = -1;
    int all = 0;
    static const struct option opts[] = {COMMON_OPTS, {"id", required_argument, 0, OPT_ID},
                                         {"before", required_argument, 0, OPT_BEFORE},
                                         {"all", no_argument, 0, OPT_ALL},
                                         {"state", required_argument, 0, OPT_STATE}, {0, 0, 0, 0}};
    const char *state = NULL;
    int o;
    while ((o = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        if (o == 'h') {
            printf("usage: plait-agent forget --db DB (--id ID | --before UNIX_SECONDS | --all) [--state DIR]\n\n"
                   "Erases records for good: deleted text is overwritten in the database file.\n"
                   "  --state DIR   the state directory `join` uses with this store: also erase what was\n"
                   "                derived from the records there (personal adapter, pending update,\n"
                   "                partial download). Stop the agent first.\n");
            return 0;
        }
        if (o == OPT_STATE) {
            state = optarg;
            continue;
        }
        int h = common_opt(&c, o, optarg);
        if (h < 0) return die_usage(PLAIT_EINVAL);
        if (h) continue;
        if (o == OPT_ID) {
            if (plait_cli_int("--id", optarg, 1, INT64_MAX, &id) != 0) return die_usage(0);
        } else if (o == OPT_BEFORE) {
            if (plait_cli_int("--before", optarg, 0, INT64_MAX, &before) != 0) return die_usage(0);
        } else if (o == OPT_ALL) all = 1;
        else return bad_flag(argv), die_usage(PLAIT_EINVAL);
    }
    if (!c.db) return plait_fail(PLAIT_EINVAL, "--db is required"), die_usage(0);
    if ((id > 0) + (before >= 0) + all != 1)
        return plait_fail(PLAIT_EINVAL, "give exactly one of --id, --before and --all"), die_usage(0);
    plait_store_t *st = NULL;
    int rc = open_store(&st, c.db, 0);
    int64_t n = 0;
    if (rc == 0) {
        if (id > 0) {
            rc = plait_store_delete(st, id);
            n = rc == 0;
        } else {
            rc = plait_store_delete_before(st, all ? INT64_MAX : before, &n);
        }
    }
    if (rc == 0) rc = plait_store_checkpoint(st);
    plait_store_close(st);
    if (rc != 0) return die_run(rc);
    printf("erased %lld records from %s\n", (long long)n, c.db);
    if (!state) {
        printf("no --state given: an agent state directory used with this store still holds its\n"
               "personal adapter; run again with --state DIR to erase it\n");
        return 0;
    }
    int removed = 0;
    if ((rc = plait_agent_forget_derived(state, &removed)) != 0) return die_run(rc);
    printf("erased %d derived files from %s\n", removed, state);
    return 0;
}

/* --------------------------------------------------------------- keygen */

static int cmd_keygen(int argc, char **argv)
{
    static const struct option opts[] = {{"key", required_argument, 0, OPT_KEY},
                                         {"csr", required_argument, 0, OPT_CSR},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    const char *key = NULL, *csr = NULL;
    int o;
    while ((o = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        if (o == 'h') {
            printf("usage: plait-agent keygen --key FILE --csr FILE\n\n"
                   "Makes this device's TLS key (ECDSA P-256, written 0600; never overwritten) and a\n"
                   "certificate request naming no one. The key stays here; send the CSR to the\n"
                   "operator, who runs `plait-aggregator enroll DIR --device LABEL --csr FILE` and\n"
                   "returns the certificate for `join --cert`.\n");
            return 0;
        }
        if (o == OPT_KEY) key = optarg;
        else if (o == OPT_CSR) csr = optarg;
        else return bad_flag(argv), die_usage(PLAIT_EINVAL);
    }
    if (!key || !csr) return plait_fail(PLAIT_EINVAL, "--key and --csr are required"), die_usage(0);
    int rc = plait_agent_keygen(key, csr);
    if (rc != 0) return die_run(rc);
    printf("key written to %s (keep it on this device), certificate request to %s\n", key, csr);
    return 0;
}

/* ---------------------------------------------------------------- train */

static void train_usage(void)
{
    plait_train_config_t d = plait_train_config_default();
    printf("usage: plait-agent train [--model M] [--tokenizer TOK] (--db DB | --text FILE) --out ADAPTER [options]\n"
           "       plait-agent train --model M --init-adapter A --tokens X.i32 --batch B --seq T --dump-grads G\n"
           "\n"
           "Fine-tunes a LoRA adapter of the frozen model on the store's training split\n"
           "(or every block of a text file) and writes it as safetensors.\n"
           "  --model FILE         llama2.c checkpoint or GGUF model (default $PLAIT_ASSETS/stories260K.bin)\n"
           "  --tokenizer FILE     llama2.c tokenizer or GGUF file (default $PLAIT_ASSETS/tok512.bin)\n"
           "  --rank R             LoRA rank (default 8)\n"
           "  --alpha A            LoRA alpha; scaling is alpha/rank (default 16)\n"
           "  --targets LIST       projections among wq,wk,wv,wo,w1,w2,w3 (default wq,wv)\n"
           "  --init-adapter FILE  start from this adapter (plait, PEFT directory or GGUF) instead of a fresh one\n"
           "  --seed N             seeds A's initialization and the batch sampler (default 1)\n"
           "  --freeze-a           train B only (FFA-LoRA)\n"
           "  --batch B            sequences per micro-batch (default %d)\n"
           "  --seq T              tokens per sequence (default %d)\n"
           "  --steps N            optimizer steps (default 100)\n"
           "  --lr X               peak learning rate (default %g)\n"
           "  --warmup N           linear warm-up steps (default 0)\n"
           "  --cosine             cosine decay to --min-lr-frac of lr over the steps\n"
           "  --min-lr-frac X      floor of the cosine decay (default %g)\n"
           "  --weight-decay X     AdamW decoupled weight decay (default %g)\n"
           "  --clip X             global gradient-norm clip, 0 = off (default %g)\n"
           "  --accum N            micro-batches per step (default 1)\n"
           "  --threads N          threads (default 1)\n"
           "  --eval-every N       evaluate on the held-out split every N steps (default: start and end)\n"
           "  --log-every N        print progress every N steps (default 10)\n"
           "  --out FILE           where to write the adapter\n"
           "Verification: --tokens reads B rows of T+1 int32 tokens; --dump-grads writes the loss\n"
           "and every adapter gradient of one step on them, before clipping or any update.\n",
           d.B, d.T, d.lr, d.min_lr_frac, d.weight_decay, d.grad_clip);
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

static int cmd_train(int argc, char **argv)
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
    long long v;
    double d;
    static const struct option opts[] = {
        COMMON_OPTS, {"batch", required_argument, 0, OPT_BATCH}, {"seq", required_argument, 0, OPT_SEQ},
        {"rank", required_argument, 0, OPT_RANK}, {"alpha", required_argument, 0, OPT_ALPHA},
        {"targets", required_argument, 0, OPT_TARGETS}, {"steps", required_argument, 0, OPT_STEPS},
        {"lr", required_argument, 0, OPT_LR}, {"out", required_argument, 0, OPT_OUT},
        {"seed", required_argument, 0, OPT_SEED}, {"init-adapter", required_argument, 0, OPT_INIT},
        {"freeze-a", no_argument, 0, OPT_FREEZE_A}, {"tokens", required_argument, 0, OPT_TOKENS},
        {"dump-grads", required_argument, 0, OPT_DUMP}, {"warmup", required_argument, 0, OPT_WARMUP},
        {"cosine", no_argument, 0, OPT_COSINE}, {"min-lr-frac", required_argument, 0, OPT_MIN_LR},
        {"weight-decay", required_argument, 0, OPT_WD}, {"clip", required_argument, 0, OPT_CLIP},
        {"accum", required_argument, 0, OPT_ACCUM}, {"eval-every", required_argument, 0, OPT_EVAL_EVERY},
        {"log-every", required_argument, 0, OPT_LOG_EVERY}, {"quiet", no_argument, 0, OPT_QUIET},
        {0, 0, 0, 0}};
    int o;
    while ((o = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        if (o == 'h') { train_usage(); return 0; }
        int h = common_opt(&c, o, optarg);
        if (h < 0) return die_usage(PLAIT_EINVAL);
        if (h) continue;
        switch (o) {
        case OPT_RANK:
            if (plait_cli_int("--rank", optarg, 1, PLAIT_LORA_MAX_RANK, &v) != 0) return die_usage(0);
            lc.rank = (int)v;
            break;
        case OPT_ALPHA:
            if (plait_cli_double("--alpha", optarg, 1e-6, 1e6, &d) != 0) return die_usage(0);
            lc.alpha = (float)d;
            break;
        case OPT_TARGETS:
            if (plait_lora_parse_targets(optarg, &lc.targets) != 0) return die_usage(0);
            break;
        case OPT_STEPS:
            /* 0 steps would write the untrained initial adapter as if trained. */
            if (plait_cli_int("--steps", optarg, 1, 100000000, &steps) != 0) return die_usage(0);
            break;
        case OPT_LR:
            if (plait_cli_double("--lr", optarg, 0, 10, &tc.lr) != 0) return die_usage(0);
            break;
        case OPT_OUT: out = optarg; break;
        case OPT_SEED:
            if (plait_cli_u64("--seed", optarg, &seed) != 0) return die_usage(0);
            break;
        case OPT_INIT: init = optarg; break;
        case OPT_FREEZE_A: tc.train_a = 0; break;
        case OPT_TOKENS: tokens_path = optarg; break;
        case OPT_DUMP: dump = optarg; break;
        case OPT_WARMUP:
            if (plait_cli_int("--warmup", optarg, 0, 100000000, &v) != 0) return die_usage(0);
            tc.warmup_steps = (int)v;
            break;
        case OPT_COSINE: cosine = 1; break;
        case OPT_MIN_LR:
            if (plait_cli_double("--min-lr-frac", optarg, 0, 1, &tc.min_lr_frac) != 0) return die_usage(0);
            break;
        case OPT_WD:
            if (plait_cli_double("--weight-decay", optarg, 0, 10, &tc.weight_decay) != 0) return die_usage(0);
            break;
        case OPT_CLIP:
            if (plait_cli_double("--clip", optarg, 0, 1e9, &tc.grad_clip) != 0) return die_usage(0);
            break;
        case OPT_ACCUM:
            if (plait_cli_int("--accum", optarg, 1, 65536, &v) != 0) return die_usage(0);
            tc.accum_steps = (int)v;
            break;
        case OPT_EVAL_EVERY:
            if (plait_cli_int("--eval-every", optarg, 0, 100000000, &eval_every) != 0) return die_usage(0);
            break;
        case OPT_LOG_EVERY:
            if (plait_cli_int("--log-every", optarg, 1, 100000000, &log_every) != 0) return die_usage(0);
            break;
        case OPT_QUIET: quiet = 1; break;
        default: return bad_flag(argv), die_usage(PLAIT_EINVAL);
        }
    }
    if (optind < argc) return plait_fail(PLAIT_EINVAL, "unexpected argument '%.60s'", argv[optind]), die_usage(0);
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

static int cmd_eval(int argc, char **argv)
{
    common_t c;
    common_default(&c);
    const char *split_s = "heldout";
    long long max_windows = 0;
    int json = 0;
    static const struct option opts[] = {
        COMMON_OPTS, {"adapter", required_argument, 0, OPT_ADAPTER}, {"batch", required_argument, 0, OPT_BATCH},
        {"seq", required_argument, 0, OPT_SEQ}, {"split", required_argument, 0, OPT_SPLIT},
        {"max-windows", required_argument, 0, OPT_MAX_WINDOWS}, {"json", no_argument, 0, OPT_JSON}, {0, 0, 0, 0}};
    int o;
    while ((o = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        if (o == 'h') {
            printf("usage: plait-agent eval [--model M] [--tokenizer TOK] (--db DB [--split heldout|train|all] | --text FILE)\n"
                   "                        [--adapter A] [--seq T] [--batch B] [--max-windows N] [--threads N] [--json]\n"
                   "\n"
                   "Mean next-token loss (nats/token) and perplexity of the base model and, with\n"
                   "--adapter, of base+adapter, over non-overlapping windows of --seq tokens\n"
                   "(default 128) of the store's held-out split or of a text file.\n");
            return 0;
        }
        int h = common_opt(&c, o, optarg);
        if (h < 0) return die_usage(PLAIT_EINVAL);
        if (h) continue;
        if (o == OPT_SPLIT) split_s = optarg;
        else if (o == OPT_MAX_WINDOWS) {
            if (plait_cli_int("--max-windows", optarg, 0, 1LL << 40, &max_windows) != 0) return die_usage(0);
        } else if (o == OPT_JSON) json = 1;
        else return bad_flag(argv), die_usage(PLAIT_EINVAL);
    }
    if (optind < argc) return plait_fail(PLAIT_EINVAL, "unexpected argument '%.60s'", argv[optind]), die_usage(0);
    if (!c.db == !c.text) return plait_fail(PLAIT_EINVAL, "give exactly one of --db and --text"), die_usage(0);
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

/* ------------------------------------------------------------- generate */

static int print_piece(void *ctx, const char *piece, size_t len)
{
    fwrite(piece, 1, len, (FILE *)ctx);
    fflush((FILE *)ctx);
    return 0;
}

static int cmd_generate(int argc, char **argv)
{
    common_t c;
    common_default(&c);
    plait_gen_config_t g;
    plait_gen_config_default(&g);
    const char *prompt = NULL;
    int merged = 1;
    long long v;
    double d;
    static const struct option opts[] = {
        COMMON_OPTS, {"adapter", required_argument, 0, OPT_ADAPTER}, {"prompt", required_argument, 0, OPT_PROMPT},
        {"temperature", required_argument, 0, OPT_TEMP}, {"top-p", required_argument, 0, OPT_TOPP},
        {"steps", required_argument, 0, OPT_STEPS}, {"seed", required_argument, 0, OPT_SEED},
        {"unmerged", no_argument, 0, OPT_MERGED}, {"state", required_argument, 0, OPT_STATE}, {0, 0, 0, 0}};
    const char *state = NULL;
    char serve_path[4096], why[512];
    int o;
    while ((o = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        if (o == 'h') {
            printf("usage: plait-agent generate [--model M] [--tokenizer TOK] [--adapter A | --state DIR] [--prompt TEXT]\n"
                   "                            [--temperature X] [--top-p X] [--steps N] [--seed N] [--unmerged]\n"
                   "\n"
                   "Samples text as llama2.c does (BOS, then the prompt, then up to --steps positions).\n"
                   "  --state DIR      the agent's state directory: use the adapter the device serves (chosen\n"
                   "                   after each round: global, personal or a mix; `info --state` says which)\n"
                   "  --temperature X  0 is greedy (default %g)\n"
                   "  --top-p X        nucleus threshold, 1 disables (default %g)\n"
                   "  --steps N        positions including the prompt (default %d)\n"
                   "  --seed N         sampler seed (default %llu)\n"
                   "  --unmerged       apply the adapter as a side path instead of merging it\n",
                   (double)g.temperature, (double)g.topp, g.steps, (unsigned long long)g.seed);
            return 0;
        }
        int h = common_opt(&c, o, optarg);
        if (h < 0) return die_usage(PLAIT_EINVAL);
        if (h) continue;
        switch (o) {
        case OPT_PROMPT: prompt = optarg; break;
        case OPT_TEMP:
            if (plait_cli_double("--temperature", optarg, 0, 100, &d) != 0) return die_usage(0);
            g.temperature = (float)d;
            break;
        case OPT_TOPP:
            if (plait_cli_double("--top-p", optarg, 0, 1, &d) != 0) return die_usage(0);
            g.topp = (float)d;
            break;
        case OPT_STEPS:
            if (plait_cli_int("--steps", optarg, 1, PLAIT_MODEL_MAX_SEQ, &v) != 0) return die_usage(0);
            g.steps = (int)v;
            break;
        case OPT_SEED:
            if (plait_cli_u64("--seed", optarg, &g.seed) != 0) return die_usage(0);
            break;
        case OPT_MERGED: merged = 0; break;
        case OPT_STATE: state = optarg; break;
        default: return bad_flag(argv), die_usage(PLAIT_EINVAL);
        }
    }
    if (optind < argc) return plait_fail(PLAIT_EINVAL, "unexpected argument '%.60s'", argv[optind]), die_usage(0);
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
    if (rc == 0) rc = plait_generate(&st, &e.tok, prompt, &g, print_piece, stdout, NULL);
    if (rc == 0) printf("\n");
    plait_infer_free(&st);
    plait_lora_free(&lora);
    engine_free(&e);
    return rc == 0 ? 0 : die_run(rc);
}

/* ----------------------------------------------------------------- join */

/* For the signal handler: plait_agent_stop is async-signal-safe. A signal that
 * arrives before the agent exists is remembered and applied once it does. */
static plait_agent_t *volatile join_agent;
static volatile sig_atomic_t join_signaled;

static void join_on_signal(int sig)
{
    (void)sig;
    join_signaled = 1;
    if (join_agent) plait_agent_stop(join_agent);
}

static void join_usage(void)
{
    plait_agent_config_t d;
    plait_agent_config_default(&d);
    printf("usage: plait-agent join --server HOST:PORT --ca CA.crt --cert DEV.crt --key DEV.key --db STORE --state DIR\n"
           "                        [--model M] [--tokenizer TOK] [--threads N] [--once | --daemon] [options]\n"
           "\n"
           "Takes part in federated rounds of the aggregator at HOST:PORT over mutual TLS: says hello,\n"
           "and when offered a task downloads the global adapter, trains it on the store's training\n"
           "split, uploads the clipped, quantized update and keeps a personal copy in DIR.\n"
           "Only the update leaves the device; no text, tokens or gradients do.\n"
           "  --server HOST:PORT     the aggregator ([v6::addr]:PORT for IPv6 literals)\n"
           "  --server-name NAME     name the server certificate must carry (default: HOST)\n"
           "  --ca FILE              the deployment CA certificate (PEM)\n"
           "  --cert FILE, --key FILE  this device's certificate and private key (PEM)\n"
           "  --db STORE             the device store (plait-agent ingest)\n"
           "  --state DIR            crash-safe state, adapter cache, personal adapter (created 0700)\n"
           "  --model FILE           llama2.c checkpoint or GGUF model (default $PLAIT_ASSETS/stories260K.bin)\n"
           "  --tokenizer FILE       llama2.c tokenizer or GGUF file (default $PLAIT_ASSETS/tok512.bin)\n"
           "  --threads N            training threads (default 1)\n"
           "  --once                 one conversation, retrying failed connections (default)\n"
           "  --daemon               keep taking part until SIGINT/SIGTERM\n"
           "  --rounds N             with --daemon: exit 0 after N acknowledged rounds\n"
           "  --max-runtime S        stop after S seconds (default: no limit); with --rounds, exit 1\n"
           "                         if fewer rounds were acknowledged by then\n"
           "  --attempts N           --once: connection attempts before giving up (default %u)\n"
           "  --min-records N        fewest training records to take part (default %lld)\n"
           "  --seed N               derive sampling, rounding and jitter from N (tests only: makes\n"
           "                         local DP noise predictable; default: system randomness)\n"
           "  --backoff-initial-ms N, --backoff-max-ms N   reconnect backoff (default %u, %u)\n"
           "  --rejoin-ms N          daemon: wait after an acknowledged round (default %u)\n"
           "  --connect-timeout-ms N, --io-timeout-ms N, --keepalive-ms N  (default %u, %u, %u)\n"
           "Privacy policy (a task outside it is declined; the server cannot downgrade the device):\n"
           "  --allow-plain-aggregation  take tasks without secure aggregation (default: decline them)\n"
           "  --min-noise Z          decline tasks whose DP noise multiplier is below Z (default 0)\n"
           "  --max-clip S           decline tasks whose clip norm is above S (default 0: no limit)\n"
           "Exit status: 0 done (round acknowledged, come back later, not eligible, or task declined),\n"
           "1 failure, 2 usage. Logs go to stderr, one line each ($PLAIT_LOG_LEVEL=debug for more).\n",
           d.max_attempts, (long long)d.min_records, d.backoff_initial_ms, d.backoff_max_ms, d.rejoin_ms,
           d.connect_timeout_ms, d.io_timeout_ms, d.keepalive_ms);
}

/* Split "host:port" or "[v6]:port" into buf (the host) and *port. */
static int parse_server(const char *arg, char *host, size_t cap, int *port)
{
    const char *colon;
    const char *h = arg;
    size_t hl;
    if (arg[0] == '[') {
        const char *end = strchr(arg, ']');
        if (!end || end[1] != ':') return plait_fail(PLAIT_EINVAL, "--server: '%.80s' is not [ADDR]:PORT", arg);
        h = arg + 1;
        hl = (size_t)(end - h);
        colon = end + 1;
    } else {
        colon = strrchr(arg, ':');
        if (!colon || strchr(arg, ':') != colon) return plait_fail(PLAIT_EINVAL, "--server: '%.80s' is not HOST:PORT", arg);
        hl = (size_t)(colon - arg);
    }
    if (hl == 0 || hl >= cap) return plait_fail(PLAIT_EINVAL, "--server: empty or too long host in '%.80s'", arg);
    memcpy(host, h, hl);
    host[hl] = '\0';
    long long v;
    if (plait_cli_int("--server port", colon + 1, 1, 65535, &v) != 0) return PLAIT_EINVAL;
    *port = (int)v;
    return 0;
}

static int cmd_join(int argc, char **argv)
{
    common_t c;
    common_default(&c);
    plait_agent_config_t cfg;
    plait_agent_config_default(&cfg);
    char host[256] = "";
    int have_server = 0;
    long long v;
    uint64_t u;
    static const struct option opts[] = {
        COMMON_OPTS, {"server", required_argument, 0, OPT_SERVER}, {"ca", required_argument, 0, OPT_CA},
        {"cert", required_argument, 0, OPT_CERT}, {"key", required_argument, 0, OPT_KEY},
        {"state", required_argument, 0, OPT_STATE}, {"once", no_argument, 0, OPT_ONCE},
        {"daemon", no_argument, 0, OPT_DAEMON}, {"rounds", required_argument, 0, OPT_ROUNDS},
        {"min-records", required_argument, 0, OPT_MIN_RECORDS}, {"seed", required_argument, 0, OPT_SEED},
        {"server-name", required_argument, 0, OPT_SERVER_NAME},
        {"backoff-initial-ms", required_argument, 0, OPT_BACKOFF_INIT},
        {"backoff-max-ms", required_argument, 0, OPT_BACKOFF_MAX}, {"rejoin-ms", required_argument, 0, OPT_REJOIN},
        {"max-runtime", required_argument, 0, OPT_MAX_RUNTIME}, {"attempts", required_argument, 0, OPT_ATTEMPTS},
        {"connect-timeout-ms", required_argument, 0, OPT_CONNECT_TIMEOUT},
        {"io-timeout-ms", required_argument, 0, OPT_IO_TIMEOUT},
        {"keepalive-ms", required_argument, 0, OPT_KEEPALIVE},
        {"allow-plain-aggregation", no_argument, 0, OPT_NO_SECURE_AGG},
        {"min-noise", required_argument, 0, OPT_MIN_NOISE}, {"max-clip", required_argument, 0, OPT_MAX_CLIP},
        {0, 0, 0, 0}};
    int o, once = 0;
    while ((o = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        if (o == 'h') { join_usage(); return 0; }
        int hd = common_opt(&c, o, optarg);
        if (hd < 0) return die_usage(PLAIT_EINVAL);
        if (hd) continue;
        switch (o) {
        case OPT_SERVER:
            if (parse_server(optarg, host, sizeof(host), &cfg.server_port) != 0) return die_usage(0);
            have_server = 1;
            break;
        case OPT_SERVER_NAME: cfg.server_name = optarg; break;
        case OPT_CA: cfg.ca_path = optarg; break;
        case OPT_CERT: cfg.cert_path = optarg; break;
        case OPT_KEY: cfg.key_path = optarg; break;
        case OPT_STATE: cfg.state_dir = optarg; break;
        case OPT_ONCE: once = 1; break;
        case OPT_DAEMON: cfg.daemon = 1; break;
        case OPT_ROUNDS:
            if (plait_cli_int("--rounds", optarg, 1, UINT32_MAX, &v) != 0) return die_usage(0);
            cfg.max_rounds = (uint32_t)v;
            break;
        case OPT_MIN_RECORDS:
            if (plait_cli_int("--min-records", optarg, 1, INT64_MAX, &v) != 0) return die_usage(0);
            cfg.min_records = (int64_t)v;
            break;
        case OPT_SEED:
            if (plait_cli_u64("--seed", optarg, &u) != 0) return die_usage(0);
            if (u == 0) return plait_fail(PLAIT_EINVAL, "--seed: 0 means no seed; give a nonzero value"), die_usage(0);
            cfg.seed = u;
            break;
        case OPT_BACKOFF_INIT:
            if (plait_cli_int("--backoff-initial-ms", optarg, 1, UINT32_MAX, &v) != 0) return die_usage(0);
            cfg.backoff_initial_ms = (uint32_t)v;
            break;
        case OPT_BACKOFF_MAX:
            if (plait_cli_int("--backoff-max-ms", optarg, 1, UINT32_MAX, &v) != 0) return die_usage(0);
            cfg.backoff_max_ms = (uint32_t)v;
            break;
        case OPT_REJOIN:
            if (plait_cli_int("--rejoin-ms", optarg, 0, UINT32_MAX, &v) != 0) return die_usage(0);
            cfg.rejoin_ms = (uint32_t)v;
            break;
        case OPT_MAX_RUNTIME:
            if (plait_cli_int("--max-runtime", optarg, 1, 100LL * 365 * 86400, &v) != 0) return die_usage(0);
            cfg.max_runtime_ms = (uint64_t)v * 1000u;
            break;
        case OPT_ATTEMPTS:
            if (plait_cli_int("--attempts", optarg, 1, 1000000, &v) != 0) return die_usage(0);
            cfg.max_attempts = (uint32_t)v;
            break;
        case OPT_CONNECT_TIMEOUT:
            if (plait_cli_int("--connect-timeout-ms", optarg, 1, 3600000, &v) != 0) return die_usage(0);
            cfg.connect_timeout_ms = (uint32_t)v;
            break;
        case OPT_IO_TIMEOUT:
            if (plait_cli_int("--io-timeout-ms", optarg, 1, 3600000, &v) != 0) return die_usage(0);
            cfg.io_timeout_ms = (uint32_t)v;
            break;
        case OPT_KEEPALIVE:
            if (plait_cli_int("--keepalive-ms", optarg, 1000, 60000, &v) != 0) return die_usage(0);
            cfg.keepalive_ms = (uint32_t)v;
            break;
        case OPT_NO_SECURE_AGG: cfg.require_secure_agg = 0; break;
        case OPT_MIN_NOISE:
            if (plait_cli_double("--min-noise", optarg, 0, 1e6, &cfg.min_noise_multiplier) != 0) return die_usage(0);
            break;
        case OPT_MAX_CLIP:
            if (plait_cli_double("--max-clip", optarg, 0, 1e9, &cfg.max_clip_norm) != 0) return die_usage(0);
            break;
        default: return bad_flag(argv), die_usage(PLAIT_EINVAL);
        }
    }
    if (optind < argc) return plait_fail(PLAIT_EINVAL, "unexpected argument '%.60s'", argv[optind]), die_usage(0);
    if (once && cfg.daemon) return plait_fail(PLAIT_EINVAL, "give at most one of --once and --daemon"), die_usage(0);
    if (cfg.max_rounds && !cfg.daemon) return plait_fail(PLAIT_EINVAL, "--rounds needs --daemon"), die_usage(0);
    if (!have_server) return plait_fail(PLAIT_EINVAL, "--server is required"), die_usage(0);
    if (!cfg.ca_path) return plait_fail(PLAIT_EINVAL, "--ca is required"), die_usage(0);
    if (!cfg.cert_path) return plait_fail(PLAIT_EINVAL, "--cert is required"), die_usage(0);
    if (!cfg.key_path) return plait_fail(PLAIT_EINVAL, "--key is required"), die_usage(0);
    if (!c.db) return plait_fail(PLAIT_EINVAL, "--db is required"), die_usage(0);
    if (!cfg.state_dir) return plait_fail(PLAIT_EINVAL, "--state is required"), die_usage(0);
    if (c.text) return plait_fail(PLAIT_EINVAL, "--text is not used by join (ingest it into --db)"), die_usage(0);
    if (cfg.backoff_initial_ms > cfg.backoff_max_ms)
        return plait_fail(PLAIT_EINVAL, "--backoff-initial-ms is above --backoff-max-ms"), die_usage(0);
    cfg.server_host = host;
    if (resolve_assets(&c, 1) != 0) return die_usage(PLAIT_ENOENT);
    cfg.model_path = c.model;
    cfg.tokenizer_path = c.tokenizer;
    cfg.store_path = c.db;
    cfg.threads = c.threads;
    if (cfg.seed) PLAIT_LOG(PLAIT_LOG_WARN, "join: --seed makes randomness replayable; for tests only");

    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = join_on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    plait_agent_t *a = NULL;
    int rc = plait_agent_create(&a, &cfg);
    if (rc != 0) return rc == PLAIT_EINVAL ? die_usage(rc) : die_run(rc);
    join_agent = a;
    if (join_signaled) plait_agent_stop(a);
    rc = plait_agent_run(a);
    const plait_agent_result_t *r = plait_agent_last_result(a);
    if (rc == 0 && !cfg.daemon) {
        switch (r->outcome) {
        case PLAIT_AGENT_OUT_ACKED:
            printf("round %llu acknowledged (%llu records)\n", (unsigned long long)r->round_id,
                   (unsigned long long)r->num_examples);
            break;
        case PLAIT_AGENT_OUT_COME_BACK: printf("no task now: come back in %u ms\n", r->retry_ms); break;
        case PLAIT_AGENT_OUT_NOT_ELIGIBLE: printf("not eligible now\n"); break;
        case PLAIT_AGENT_OUT_DECLINED:
            printf("round %llu declined (%s)\n", (unsigned long long)r->round_id, plait_err_name(r->declined_rc));
            break;
        default: printf("stopped\n"); break;
        }
    } else if (rc == 0) {
        uint32_t done = plait_agent_rounds_acked(a);
        printf("%u rounds acknowledged\n", done);
        /* --rounds N that --max-runtime cut short is a failure a test harness should see. */
        if (cfg.max_rounds && done < cfg.max_rounds && !join_signaled)
            rc = plait_fail(PLAIT_ECANCELED, "--max-runtime reached after %u of %u rounds", done, cfg.max_rounds);
    }
    join_agent = NULL;
    plait_agent_destroy(a);
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

static int cmd_convert(int argc, char **argv)
{
    const char *model = NULL, *tokp = NULL, *out = NULL;
    int type = PLAIT_DT_F32;
    static const struct option opts[] = {{"model", required_argument, 0, 'm'}, {"tokenizer", required_argument, 0, 'k'},
                                         {"out", required_argument, 0, 'o'},   {"type", required_argument, 0, 't'},
                                         {"help", no_argument, 0, 'h'},        {0, 0, 0, 0}};
    int o;
    while ((o = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (o) {
        case 'm': model = optarg; break;
        case 'k': tokp = optarg; break;
        case 'o': out = optarg; break;
        case 't':
            if (parse_dtype(optarg, &type) != 0) return die_usage(PLAIT_EINVAL);
            break;
        case 'h':
            printf("usage: plait-agent convert --model IN --out OUT.gguf [--tokenizer TOK] [--type f32|f16|bf16|q8_0|q4_0]\n\n"
                   "Writes a llama2.c checkpoint (or a GGUF model) as a GGUF v3 file, its matrices in --type\n"
                   "(default f32; rows that are not whole 32-element blocks stay f32) and, with --tokenizer,\n"
                   "the tokenizer as GGUF metadata, so that --tokenizer OUT.gguf works afterwards.\n");
            return 0;
        default: return bad_flag(argv), die_usage(PLAIT_EINVAL);
        }
    }
    if (!model || !out) return plait_fail(PLAIT_EINVAL, "--model and --out are required"), die_usage(0);
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

static int cmd_export(int argc, char **argv)
{
    const char *model = NULL, *adapter = NULL, *out = NULL, *fmt = "plait";
    static const struct option opts[] = {{"model", required_argument, 0, 'm'}, {"adapter", required_argument, 0, 'a'},
                                         {"out", required_argument, 0, 'o'},   {"format", required_argument, 0, 'f'},
                                         {"help", no_argument, 0, 'h'},        {0, 0, 0, 0}};
    int o;
    while ((o = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (o) {
        case 'm': model = optarg; break;
        case 'a': adapter = optarg; break;
        case 'o': out = optarg; break;
        case 'f': fmt = optarg; break;
        case 'h':
            printf("usage: plait-agent export --model M --adapter A --out PATH [--format plait|peft|gguf]\n\n"
                   "Loads adapter A (a plait adapter, a PEFT directory or a llama.cpp GGUF adapter) for model M\n"
                   "and writes it as a plait adapter file, a Hugging Face PEFT directory (adapter_model.safetensors,\n"
                   "adapter_config.json) or a llama.cpp GGUF LoRA adapter. See docs/models.md.\n");
            return 0;
        default: return bad_flag(argv), die_usage(PLAIT_EINVAL);
        }
    }
    if (!model || !adapter || !out)
        return plait_fail(PLAIT_EINVAL, "--model, --adapter and --out are required"), die_usage(0);
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
            opterr = 0; /* unknown flags are reported by name below, in one line */
            return commands[i].fn(argc - 1, argv + 1);
        }
    }
    fprintf(stderr, "%s: unknown command '%.40s' (try --help)\n", prog, argv[1]);
    return EXIT_USAGE;
}
