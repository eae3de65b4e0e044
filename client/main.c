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
#include "cmd_int.h"

#include "plait/adapter.h"
#include "plait/cli.h"
#include "plait/client.h"
#include "plait/crypto.h"
#include "plait/data.h"
#include "plait/file.h"
#include "plait/gguf.h"
#include "plait/infer.h"
#include "plait/ingest.h"
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

/* ------------------------------------------------------------ shared flags */

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

/* --------------------------------------------------------------- keygen */

int cmd_keygen(int argc, char **argv)
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

int cmd_join(int argc, char **argv)
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
