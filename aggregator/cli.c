/*
 * cli.c: the plait-aggregator command table, the argument handling its
 * subcommands share (cli_int.h), and init, serve and export. The certificate
 * commands live in cli_pki.c, the reports (status, devices, rounds, privacy)
 * in cli_report.c.
 *
 * Adding a subcommand (init, serve, enroll, ...) means writing one
 * `int f(int argc, char **argv, FILE *out, FILE *err)` that
 * parses its own flags (argv[0] is the subcommand name) and adding a row to
 * `commands`. Conventions every subcommand keeps: `--help` prints usage to
 * out and returns 0; a usage error prints ONE line to err naming the flag and
 * returns 2; a failure while running prints one line with plait_errmsg() and
 * returns 1. Flags take their value as the next argument or as --flag=value.
 * Each subcommand describes its flags in a plait_flag_t table (plait/flags.h)
 * and parses them with plait__aggcli_flags(), which also writes --help.
 */
#include "cli.h"
#include "cli_int.h"
#include "stagedir.h"

#include <errno.h>
#include <stdarg.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <limits.h>
#if defined(__GLIBC__)
#include <malloc.h>
#endif
#include <signal.h>
#include <time.h>
#include <unistd.h>

#include "plait/adapter.h"
#include "plait/peft.h"
#include "plait/aggcfg.h"
#include "plait/aggstore.h"
#include "plait/crypto.h"
#include "plait/file.h"
#include "plait/json.h"
#include "plait/log.h"
#include "plait/lora.h"
#include "plait/model.h"
#include "plait/pki.h"
#include "plait/plait.h"
#include "plait/privacy.h"
#include "selection.h"
#include "plait/server.h"


typedef struct {
    const char *name;
    const char *summary;
    int (*run)(int argc, char **argv, FILE *out, FILE *err);
} command_t;

/* ---- value parsing shared by subcommands --------------------------------- */

/* A finite double, the whole string. */
int plait__aggcli_parse_double(const char *s, double *out)
{
    if (s == NULL || *s == '\0') return -1;
    errno = 0;
    char *end;
    double v = strtod(s, &end);
    if (*end != '\0' || errno == ERANGE || !isfinite(v)) return -1;
    *out = v;
    return 0;
}

/* A positive decimal integer, the whole string, at most max. */
int plait__aggcli_parse_count(const char *s, uint64_t max, uint64_t *out)
{
    if (s == NULL || *s < '0' || *s > '9') return -1;
    errno = 0;
    char *end;
    unsigned long long v = strtoull(s, &end, 10);
    if (*end != '\0' || errno == ERANGE || v == 0 || v > max) return -1;
    *out = v;
    return 0;
}

/* Shortest %g form of a finite double that reads back exactly (a valid JSON number). */
void plait__aggcli_fmt_double(char *buf, size_t len, double v)
{
    for (int prec = 15; prec <= 17; prec++) {
        snprintf(buf, len, "%.*g", prec, v);
        if (strtod(buf, NULL) == v) return;
    }
}

/* ---- flag tables (plait/flags.h, strict style) ----------------------------- */

int plait__aggcli_flags(const char *name, plait_flags_cmd_t *cmd, const char **pos, const char *missing, int argc,
                        char **argv, FILE *out, FILE *err)
{
    cmd->strict = 1;
    cmd->pos = pos;
    cmd->n_pos = pos ? 1 : 0;
    int rc = plait_flags_parse(cmd, argc, argv, out, NULL);
    if (rc == PLAIT_FLAGS_HELP) return 0;
    if (rc != 0) {
        fprintf(err, PROG " %s: %s\n", name, plait_errmsg());
        return 2;
    }
    if (pos && !*pos) {
        fprintf(err, PROG " %s: %s\n", name, missing);
        return 2;
    }
    return AGGCLI_FLAGS_OK;
}

/* ---- deployment commands: shared argument handling --------------------- */

int plait__aggcli_open_store(const char *dir, int create, plait_aggstore_t **st, FILE *err, const char *cmd)
{
    char path[1200];
    snprintf(path, sizeof(path), "%s/plait.db", dir);
    plait_aggstore_config_t cfg;
    plait_aggstore_config_default(&cfg);
    cfg.path = path;
    cfg.create = create != 0;
    cfg.recover_open_rounds = false; /* the service may be running: never abandon its round */
    int rc = plait_aggstore_open(st, &cfg);
    if (rc != 0) fprintf(err, PROG " %s: %s: %s (%s)\n", cmd, path, plait_errmsg(), plait_err_name(rc));
    return rc;
}

/* DIR/aggregator.conf over the defaults, then --set flags; validated. Returns 0, 1 or 2. */
int plait__aggcli_load_config(const char *cmd, const char *dir, const char **sets, size_t n_sets, plait_aggcfg_t *c,
                       FILE *err)
{
    char path[1200];
    snprintf(path, sizeof(path), "%s/%s", dir, PLAIT_AGGCFG_FILE);
    plait_aggcfg_default(c);
    int rc = plait_aggcfg_load(c, path);
    if (rc != 0) {
        fprintf(err, PROG " %s: %s (%s)\n", cmd, plait_errmsg(), plait_err_name(rc));
        return 1;
    }
    for (size_t i = 0; i < n_sets; i++)
        if (plait_aggcfg_set(c, sets[i]) != 0) {
            fprintf(err, PROG " %s: %s\n", cmd, plait_errmsg());
            return 2;
        }
    if ((rc = plait_aggcfg_validate(c)) != 0) {
        fprintf(err, PROG " %s: %s: %s\n", cmd, path, plait_errmsg());
        return 1;
    }
    return 0;
}

const char *plait__aggcli_fmt_time(int64_t t, char *buf, size_t len)
{
    if (t <= 0) return "-";
    time_t tt = (time_t)t;
    struct tm tm;
    gmtime_r(&tt, &tm);
    strftime(buf, len, "%Y-%m-%dT%H:%M:%SZ", &tm);
    return buf;
}

int plait__aggcli_fail(FILE *err, int rc, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs(PROG " ", err);
    vfprintf(err, fmt, ap);
    va_end(ap);
    fprintf(err, ": %s (%s)\n", plait_errmsg(), plait_err_name(rc));
    return 1;
}

/* ---- init ---------------------------------------------------------------- */

static int cmd_init(int argc, char **argv, FILE *out, FILE *err)
{
    const char *dir = NULL, *sets[MAX_SETS], *v[3] = {NULL, NULL, NULL};
    plait_flag_list_t set_list = {sets, 0, MAX_SETS};
    plait_flag_t flags[] = {
        PLAIT_F_STR("base-model", &v[0], "PATH", "the base model checkpoint devices run (stored in the config)"),
        PLAIT_F_STR("server-names", &v[1], "LIST",
                    "subjectAltNames of the server certificate, comma-separated\n"
                    "DNS names and IP addresses (default localhost,127.0.0.1)"),
        PLAIT_F_STR("org", &v[2], "NAME", "organization in every certificate (default plait)"),
        ROW_SET(set_list),
    };
    static const plait_flag_rule_t rules[] = {{PLAIT_RULE_SHOW_REQUIRED, {"base-model"}}};
    plait_flags_cmd_t cmd = {
        .prog = PROG " init",
        .args = "DIR",
        .about = "Create a deployment in DIR (created 0700; an existing deployment is never\n"
                 "overwritten): the CA (ca.crt, ca.key), the aggregator's key and certificate\n"
                 "(server.crt, server.key), an empty revocation list (revoked.txt), the database\n"
                 "(plait.db) and aggregator.conf with every setting written out and commented.\n"
                 "All or nothing: it is built beside DIR and renamed into place, so a failed\n"
                 "init leaves nothing behind; a DIR that exists and is not empty is refused.\n",
        .flags = flags,
        .n_flags = sizeof(flags) / sizeof(flags[0]),
        .rules = rules,
        .n_rules = sizeof(rules) / sizeof(rules[0]),
    };
    int rc = plait__aggcli_flags("init", &cmd, &dir, MISSING_DIR, argc, argv, out, err);
    if (rc != AGGCLI_FLAGS_OK) return rc;
    size_t n_sets = set_list.n;
    plait_aggcfg_t c;
    plait_aggcfg_default(&c);
    if (v[0] == NULL) {
        fputs(PROG " init: missing --base-model (try --help)\n", err);
        return 2;
    }
    char abs[PATH_MAX];
    const char *bm = realpath(v[0], abs) ? abs : v[0];
    if (strlen(bm) > PLAIT_AGGCFG_STR_MAX || snprintf(c.base_model, sizeof(c.base_model), "%s", bm) < 0) {
        fputs(PROG " init: --base-model path too long\n", err);
        return 2;
    }
    for (size_t i = 0; i < n_sets; i++)
        if (plait_aggcfg_set(&c, sets[i]) != 0) {
            fprintf(err, PROG " init: %s\n", plait_errmsg());
            return 2;
        }
    if ((rc = plait_aggcfg_validate(&c)) != 0) {
        fprintf(err, PROG " init: %s\n", plait_errmsg());
        return 2;
    }
    plait_model_t m;
    memset(&m, 0, sizeof(m));
    if ((rc = plait_model_load(&m, c.base_model)) != 0) {
        fprintf(err, PROG " init: base model %s: %s (%s)\n", c.base_model, plait_errmsg(), plait_err_name(rc));
        return 1;
    }
    plait_model_free(&m);
    plait_pki_config_t pc;
    plait_pki_config_default(&pc);
    if (v[1]) pc.server_alt_names = v[1];
    if (v[2]) pc.org = v[2];
    /* Everything is built in a staging directory beside DIR and renamed onto
     * it at the end (stagedir.h): a failure leaves nothing that blocks a re-run. */
    char stage[4096];
    if ((rc = plait__stage_create(dir, stage, sizeof(stage))) != 0) {
        fprintf(err, PROG " init: %s (%s)\n", plait_errmsg(), plait_err_name(rc));
        return 1;
    }
    if ((rc = plait_pki_init_deployment(stage, &pc)) != 0) {
        fprintf(err, PROG " init: %s: %s (%s)\n", dir, plait_errmsg(), plait_err_name(rc));
        goto fail;
    }
    char path[4200];
    snprintf(path, sizeof(path), "%s/%s", stage, PLAIT_AGGCFG_FILE);
    FILE *f = fopen(path, "wx");
    if (f == NULL) {
        fprintf(err, PROG " init: %s/%s: %s\n", dir, PLAIT_AGGCFG_FILE, strerror(errno));
        goto fail;
    }
    rc = plait_aggcfg_write(&c, f);
    if ((fflush(f) != 0 || fsync(fileno(f)) != 0) && rc == 0) rc = PLAIT_EIO;
    if (fclose(f) != 0 && rc == 0) rc = PLAIT_EIO;
    if (rc != 0) {
        fprintf(err, PROG " init: %s/%s: cannot write (disk full?)\n", dir, PLAIT_AGGCFG_FILE);
        goto fail;
    }
    plait_aggstore_t *st = NULL;
    if (plait__aggcli_open_store(stage, 1, &st, err, "init") != 0) goto fail;
    plait_aggstore_info_t info;
    if (plait_aggstore_info(st, &info) != 0) info.deployment_id[0] = '\0';
    plait_aggstore_close(st);
    if ((rc = plait__stage_commit(stage, dir)) != 0) {
        fprintf(err, PROG " init: %s (%s)\n", plait_errmsg(), plait_err_name(rc));
        goto fail;
    }
    fprintf(out, "deployment %s created in %s\n", info.deployment_id, dir);
    fprintf(out, "next: " PROG " enroll %s --device LABEL --out-key LABEL.key --out-cert LABEL.crt\n", dir);
    fprintf(out, "then: " PROG " serve %s\n", dir);
    return 0;
fail:
    plait__stage_discard(stage);
    return 1;
}

/* ---- serve ---------------------------------------------------------------- */

/* One JSON object per log line on stderr: {"ts": ..., "level": ..., "msg": ...}. */
static void json_sink(plait_log_level_t level, const char *line, void *ud)
{
    FILE *f = ud;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    gmtime_r(&ts.tv_sec, &tm);
    char when[40];
    strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%S", &tm);
    plait_buf_t b;
    plait_buf_init(&b, 8192);
    plait_buf_printf(&b, "{\"ts\": \"%s.%03ldZ\", \"level\": \"", when, ts.tv_nsec / 1000000);
    const char *ln = plait_log_level_name(level);
    for (const char *p = ln; *p; p++) {
        char ch = (char)(*p >= 'A' && *p <= 'Z' ? *p - 'A' + 'a' : *p);
        plait_buf_append(&b, &ch, 1);
    }
    plait_buf_append(&b, "\", \"msg\": ", 10);
    plait_buf_json_string(&b, line, strlen(line));
    plait_buf_append(&b, "}\n", 2);
    if (plait_buf_status(&b) == 0) {
        fwrite(b.data, 1, b.len, f);
        fflush(f);
    }
    plait_buf_free(&b);
}

static int cmd_serve(int argc, char **argv, FILE *out, FILE *err)
{
    const char *dir = NULL, *sets[MAX_SETS + 3], *v[3] = {NULL, NULL, NULL};
    plait_flag_list_t set_list = {sets, 0, MAX_SETS};
    plait_flag_t flags[] = {
        PLAIT_F_STR("port", &v[0], "N", "the devices' TLS port (0: any free port)"),
        PLAIT_F_STR("metrics-port", &v[1], "N", "the metrics HTTP port (0: any free port)"),
        PLAIT_F_STR("port-file", &v[2], "FILE", "write {\"port\": N, \"metrics_port\": M} here once listening"),
        ROW_SET(set_list),
    };
    plait_flags_cmd_t cmd = {
        .prog = PROG " serve",
        .args = "DIR",
        .about = "Run the aggregator of the deployment in DIR until SIGTERM or SIGINT (then it\n"
                 "stops accepting, abandons the open round, closes every connection and exits 0).\n"
                 "Settings: DIR/aggregator.conf, overridden by the flags.\n",
        .epilogue = "Logs: one JSON object per line on stderr.\n",
        .flags = flags,
        .n_flags = sizeof(flags) / sizeof(flags[0]),
    };
    int rc = plait__aggcli_flags("serve", &cmd, &dir, MISSING_DIR, argc, argv, out, err);
    if (rc != AGGCLI_FLAGS_OK) return rc;
    size_t n_sets = set_list.n;
    char kv[3][PLAIT_AGGCFG_STR_MAX + 32];
    const char *keys[3] = {"port", "metrics_port", "port_file"};
    for (int k = 0; k < 3; k++)
        if (v[k]) {
            snprintf(kv[k], sizeof(kv[k]), "%s=%s", keys[k], v[k]);
            sets[n_sets++] = kv[k];
        }
    plait_aggcfg_t c;
    if ((rc = plait__aggcli_load_config("serve", dir, sets, n_sets, &c, err)) != 0) return rc;
    plait_log_level_t lvl;
    if (plait_log_parse_level(c.log_level, &lvl) == 0) plait_log_set_level(lvl);
    plait_log_set_sink(json_sink, err);
    /* A peer that vanishes must cost a failed write (EPIPE), not the process. */
    signal(SIGPIPE, SIG_IGN);
#if defined(__GLIBC__)
    /* glibc raises its mmap threshold to the largest block freed (up to 32 MiB); the service's
     * P-sized blocks (arenas, encodings, the files it sends) then come from the heaps, where they
     * fragment, and the resident set grows round over round (docs/performance.md). A fixed
     * threshold keeps blocks of 1 MiB and more mapped, given back to the system when freed. It
     * also fixes the trim threshold, at 128 KiB by default: the heap's free top (frame and
     * send buffers, a few MiB while devices download) would be given back and faulted in again
     * many times a round, so up to 16 MiB of it is kept. */
    (void)mallopt(M_MMAP_THRESHOLD, 1 << 20);
    (void)mallopt(M_TRIM_THRESHOLD, 16 << 20);
#endif
    plait_server_t *s = NULL;
    if ((rc = plait_server_create(&s, dir, &c)) != 0) {
        PLAIT_LOG(PLAIT_LOG_ERROR, "cannot start: %s (%s)", plait_errmsg(), plait_err_name(rc));
        plait_log_set_sink(NULL, NULL);
        return 1;
    }
    rc = plait_server_run(s);
    plait_server_destroy(s);
    plait_log_set_sink(NULL, NULL);
    (void)out;
    return rc == 0 ? 0 : 1;
}

/* ---- export ----------------------------------------------------------------- */

static int cmd_export(int argc, char **argv, FILE *out, FILE *err)
{
    const char *dir = NULL, *fv[3] = {NULL, NULL, NULL};
    plait_flag_t flags[] = {
        PLAIT_F_STR("version", &fv[0], "N", "the global adapter version"),
        PLAIT_F_STR("out", &fv[1], "PATH", "where to write it"),
        PLAIT_F_STR("format", &fv[2], "plait|peft|gguf", "what to write (default plait)"),
    };
    static const plait_flag_rule_t rules[] = {{PLAIT_RULE_SHOW_REQUIRED, {"version", "out"}}};
    plait_flags_cmd_t cmd = {
        .prog = PROG " export",
        .args = "DIR",
        .about = "Write global adapter version N as a safetensors LoRA adapter (the file\n"
                 "plait-agent and the engine load), after checking its hash and that it loads\n"
                 "against the deployment's base model. --format peft writes a Hugging Face PEFT\n"
                 "directory PATH (adapter_model.safetensors, adapter_config.json); --format gguf\n"
                 "a llama.cpp GGUF LoRA adapter file (see docs/models.md).\n",
        .flags = flags,
        .n_flags = sizeof(flags) / sizeof(flags[0]),
        .rules = rules,
        .n_rules = sizeof(rules) / sizeof(rules[0]),
    };
    int rc = plait__aggcli_flags("export", &cmd, &dir, MISSING_DIR, argc, argv, out, err);
    if (rc != AGGCLI_FLAGS_OK) return rc;
    uint64_t v = 0;
    if (!fv[0] || !fv[1]) {
        fputs(PROG " export: need --version and --out (try --help)\n", err);
        return 2;
    }
    if (plait__aggcli_parse_count(fv[0], INT64_MAX, &v) != 0) {
        fprintf(err, PROG " export: bad value '%s' for --version\n", fv[0]);
        return 2;
    }
    const char *fmt = fv[2] ? fv[2] : "plait";
    if (strcmp(fmt, "plait") != 0 && strcmp(fmt, "peft") != 0 && strcmp(fmt, "gguf") != 0) {
        fprintf(err, PROG " export: bad value '%.40s' for --format (plait, peft, gguf)\n", fmt);
        return 2;
    }
    plait_aggcfg_t c;
    if ((rc = plait__aggcli_load_config("export", dir, NULL, 0, &c, err)) != 0) return rc;
    plait_aggstore_t *st = NULL;
    if (plait__aggcli_open_store(dir, 0, &st, err, "export") != 0) return 1;
    plait_aggstore_version_t ver;
    plait_aggstore_version_init(&ver);
    rc = plait_aggstore_version_get(st, (int64_t)v, &ver);
    plait_aggstore_close(st);
    if (rc != 0) {
        fprintf(err, PROG " export: version %llu: %s (%s)\n", (unsigned long long)v, plait_errmsg(), plait_err_name(rc));
        return 1;
    }
    plait_model_t m;
    memset(&m, 0, sizeof(m));
    plait_lora_t l;
    plait_lora_init(&l);
    if ((rc = plait_model_load(&m, c.base_model)) != 0 ||
        (rc = plait_adapter_load_mem(&l, ver.adapter, ver.adapter_len, &m, 0)) != 0) {
        fprintf(err, PROG " export: version %llu does not load against %s: %s (%s)\n", (unsigned long long)v,
                c.base_model, plait_errmsg(), plait_err_name(rc));
        rc = 1;
    } else {
        if (strcmp(fmt, "peft") == 0) rc = plait_peft_export(&l, fv[1]);
        else if (strcmp(fmt, "gguf") == 0) rc = plait_lora_gguf_export(&l, fv[1]);
        else rc = plait_adapter_save(fv[1], &l, m.sha256);
        if (rc != 0) {
            fprintf(err, PROG " export: %s: %s\n", fv[1], plait_errmsg());
            rc = 1;
        } else {
            char hex[65];
            plait_hex(ver.sha256, 32, hex);
            fprintf(out, "exported version %llu (round %lld, sha256 %s) to %s (%s)\n", (unsigned long long)v,
                    (long long)ver.round_id, hex, fv[1], fmt);
        }
    }
    plait_lora_free(&l);
    plait_model_free(&m);
    plait_aggstore_version_free(&ver);
    return rc;
}

/* ---- dispatch -------------------------------------------------------------- */

static const command_t commands[] = {
    {"init", "create a deployment: CA, server certificate, database, aggregator.conf", cmd_init},
    {"enroll", "issue a device certificate and record the device", plait__aggcli_enroll},
    {"import-enrollment", "record a device enrolled on an offline CA host", plait__aggcli_import_enrollment},
    {"revoke", "revoke a device (by label, id, certificate, fingerprint or serial)", plait__aggcli_revoke},
    {"renew", "issue a new certificate for a device, keeping its id; revoke the old one", plait__aggcli_renew},
    {"cert-info", "device id, serial, fingerprint and validity of a certificate", plait__aggcli_cert_info},
    {"serve", "run the aggregator service", cmd_serve},
    {"status", "summary of a deployment", plait__aggcli_status},
    {"devices", "list enrolled devices: label, id, state", plait__aggcli_devices},
    {"rounds", "list a deployment's rounds", plait__aggcli_rounds},
    {"evals", "list federated evaluations: version, devices, mean held-out loss", plait__aggcli_evals},
    {"evaluate", "queue a federated evaluation of the current version", plait__aggcli_evaluate},
    {"export", "write a global adapter version (plait, PEFT or GGUF adapter)", cmd_export},
    {"privacy", "privacy spent: of a deployment (DIR), or by given DP-FedAvg settings", plait__aggcli_privacy_any},
};

static void usage_main(FILE *f)
{
    fputs("usage: " PROG " <command> [flags]\n\ncommands:\n", f);
    for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
        fprintf(f, "  %-10s %s\n", commands[i].name, commands[i].summary);
    fputs("\n" PROG " <command> --help shows a command's flags.\n", f);
}

int plait__agg_cli_main(int argc, char **argv, FILE *out, FILE *err)
{
    if (argc < 2) {
        fputs(PROG ": missing command (try --help)\n", err);
        return 2;
    }
    const char *c = argv[1];
    if (strcmp(c, "--help") == 0 || strcmp(c, "-h") == 0 || strcmp(c, "help") == 0) {
        usage_main(out);
        return 0;
    }
    if (strcmp(c, "--version") == 0) {
        fputs(PROG " " PLAIT_VERSION_STRING "\n", out);
        return 0;
    }
    for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
        if (strcmp(c, commands[i].name) == 0) return commands[i].run(argc - 1, argv + 1, out, err);
    fprintf(err, PROG ": unknown command '%s' (try --help)\n", c);
    return 2;
}
