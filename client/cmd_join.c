/*
 * cmd_join.c: plait-agent's federation commands: keygen (this device's key
 * and a certificate request) and join (take part in federated rounds with an
 * aggregator over mutual TLS, once or as a daemon).
 */
#include "cmd_int.h"

#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "plait/cli.h"
#include "plait/client.h"
#include "plait/log.h"

/* --------------------------------------------------------------- keygen */

int cmd_keygen(int argc, char **argv)
{
    const char *key = NULL, *csr = NULL;
    plait_flag_t flags[] = {
        PLAIT_F_STR("key", &key, "FILE", "where to write the key (ECDSA P-256, 0600; never overwritten)"),
        PLAIT_F_STR("csr", &csr, "FILE", "where to write the certificate request"),
    };
    static const plait_flag_rule_t rules[] = {{PLAIT_RULE_REQUIRED, {"key", "csr"}}};
    plait_flags_cmd_t cmd = {
        .prog = "plait-agent keygen",
        .about = "Makes this device's TLS key and a certificate request naming no one. The key stays\n"
                 "here; send the CSR to the operator, who runs\n"
                 "`plait-aggregator enroll DIR --device LABEL --csr FILE` and returns the certificate\n"
                 "for `join --cert`.\n",
        .flags = flags, .n_flags = sizeof(flags) / sizeof(flags[0]),
        .rules = rules, .n_rules = 1,
        .extra_args = 1, /* ignored, as they always were */
    };
    int prc = agent_flags(&cmd, argc, argv);
    if (prc != FLAGS_OK) return prc;
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

typedef struct {
    char host[256];
    int *port;
} server_arg_t;

static int parse_server_flag(void *dest, const char *v)
{
    server_arg_t *s = dest;
    return parse_server(v, s->host, sizeof(s->host), s->port);
}

static int parse_seed(void *dest, const char *v)
{
    uint64_t u;
    if (plait_cli_u64("--seed", v, &u) != 0) return PLAIT_EINVAL;
    if (u == 0) return plait_fail(PLAIT_EINVAL, "--seed: 0 means no seed; give a nonzero value");
    *(uint64_t *)dest = u;
    return 0;
}

int cmd_join(int argc, char **argv)
{
    common_t c;
    common_default(&c);
    plait_agent_config_t cfg;
    plait_agent_config_default(&cfg);
    server_arg_t srv = {"", &cfg.server_port};
    const char *host = srv.host;
    int once = 0;
    long long max_runtime = 0, min_records = cfg.min_records;
    plait_flag_t flags[] = {
        PLAIT_F_CUSTOM("server", &srv, parse_server_flag, "HOST:PORT",
                       "the aggregator ([v6::addr]:PORT for IPv6 literals)"),
        PLAIT_F_STR("server-name", &cfg.server_name, "NAME", "name the server certificate must carry (default: HOST)"),
        PLAIT_F_STR("ca", &cfg.ca_path, "CA.crt", "the deployment CA certificate (PEM)"),
        PLAIT_F_STR("cert", &cfg.cert_path, "DEV.crt", "this device's certificate (PEM)"),
        PLAIT_F_STR("key", &cfg.key_path, "DEV.key", "this device's private key (PEM)"),
        ROW_DB(c, "the device store (plait-agent ingest)"),
        PLAIT_F_STR("state", &cfg.state_dir, "DIR", "crash-safe state, adapter cache, personal adapter (created 0700)"),
        ROW_MODEL(c, HELP_MODEL),
        ROW_TOKENIZER(c, HELP_TOKENIZER),
        ROW_THREADS(c, "training threads"),
        ROW_BASE_PREC(c),
        PLAIT_F_SET("once", &once, 1, "one conversation, retrying failed connections (default)"),
        PLAIT_F_SET("daemon", &cfg.daemon, 1, "keep taking part until SIGINT/SIGTERM"),
        PLAIT_F_U32("rounds", &cfg.max_rounds, 1, UINT32_MAX, "N", "with --daemon: exit 0 after N acknowledged rounds",
                    0),
        PLAIT_F_LLONG("max-runtime", &max_runtime, 1, 100LL * 365 * 86400, "S",
                      "stop after S seconds (default: no limit); with --rounds, exit 1\n"
                      "if fewer rounds were acknowledged by then",
                      0),
        PLAIT_F_U32("attempts", &cfg.max_attempts, 1, 1000000, "N", "--once: connection attempts before giving up",
                    1),
        PLAIT_F_LLONG("min-records", &min_records, 1, INT64_MAX, "N", "fewest training records to take part", 1),
        PLAIT_F_CUSTOM("seed", &cfg.seed, parse_seed, "N",
                       "derive sampling, rounding and jitter from N (tests only: makes\n"
                       "local DP noise predictable; default: system randomness)"),
        PLAIT_F_U32("backoff-initial-ms", &cfg.backoff_initial_ms, 1, UINT32_MAX, "N", "first reconnect backoff", 1),
        PLAIT_F_U32("backoff-max-ms", &cfg.backoff_max_ms, 1, UINT32_MAX, "N", "longest reconnect backoff", 1),
        PLAIT_F_U32("rejoin-ms", &cfg.rejoin_ms, 0, UINT32_MAX, "N", "daemon: wait after an acknowledged round", 1),
        PLAIT_F_U32("connect-timeout-ms", &cfg.connect_timeout_ms, 1, 3600000, "N", "TCP connect and TLS handshake",
                    1),
        PLAIT_F_U32("io-timeout-ms", &cfg.io_timeout_ms, 1, 3600000, "N", "waiting for a frame outside training", 1),
        PLAIT_F_U32("keepalive-ms", &cfg.keepalive_ms, 1000, 60000, "N", "Ping interval while training", 1),
        PLAIT_F_SET("allow-plain-aggregation", &cfg.require_secure_agg, 0,
                    "policy: take tasks without secure aggregation (default: decline them)"),
        PLAIT_F_DOUBLE("min-noise", &cfg.min_noise_multiplier, 0, 1e6, "Z",
                       "policy: decline tasks whose DP noise multiplier is below Z", 1),
        PLAIT_F_DOUBLE("max-clip", &cfg.max_clip_norm, 0, 1e9, "S",
                       "policy: decline tasks whose clip norm is above S; 0: no limit", 1),
        ROW_TEXT(c, NULL),
    };
    static const plait_flag_rule_t rules[] = {
        {PLAIT_RULE_AT_MOST_ONE, {"once", "daemon"}}, {PLAIT_RULE_NEEDS, {"rounds", "daemon"}},
        {PLAIT_RULE_REQUIRED, {"server"}},           {PLAIT_RULE_REQUIRED, {"ca"}},
        {PLAIT_RULE_REQUIRED, {"cert"}},             {PLAIT_RULE_REQUIRED, {"key"}},
        {PLAIT_RULE_REQUIRED, {"db"}},               {PLAIT_RULE_REQUIRED, {"state"}},
    };
    plait_flags_cmd_t cmd = {
        .prog = "plait-agent join",
        .about = "Takes part in federated rounds of the aggregator at HOST:PORT over mutual TLS: says hello,\n"
                 "and when offered a task downloads the global adapter, trains it on the store's training\n"
                 "split, uploads the clipped, quantized update and keeps a personal copy in DIR.\n"
                 "Only the update leaves the device; no text, tokens or gradients do.\n",
        .epilogue = "Privacy policy (the policy: flags): a task outside it is declined; the server cannot\n"
                    "downgrade the device.\n"
                    "Exit status: 0 done (round acknowledged, come back later, not eligible, or task declined),\n"
                    "1 failure, 2 usage. Logs go to stderr, one line each ($PLAIT_LOG_LEVEL=debug for more).\n",
        .flags = flags, .n_flags = sizeof(flags) / sizeof(flags[0]),
        .rules = rules, .n_rules = sizeof(rules) / sizeof(rules[0]),
    };
    int prc = agent_flags(&cmd, argc, argv);
    if (prc != FLAGS_OK) return prc;
    if (plait_flags_seen(&cmd, "max-runtime")) cfg.max_runtime_ms = (uint64_t)max_runtime * 1000u;
    cfg.min_records = (int64_t)min_records;
    if (c.text) return plait_fail(PLAIT_EINVAL, "--text is not used by join (ingest it into --db)"), die_usage(0);
    if (cfg.backoff_initial_ms > cfg.backoff_max_ms)
        return plait_fail(PLAIT_EINVAL, "--backoff-initial-ms is above --backoff-max-ms"), die_usage(0);
    cfg.server_host = host;
    if (resolve_assets(&c, 1) != 0) return die_usage(PLAIT_ENOENT);
    cfg.model_path = c.model;
    cfg.tokenizer_path = c.tokenizer;
    cfg.store_path = c.db;
    cfg.threads = c.threads;
    cfg.base_bf16 = c.base_bf16;
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

