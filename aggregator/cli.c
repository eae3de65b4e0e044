/*
 * cli.c: the plait-aggregator command table and the `privacy` subcommand.
 *
 * Adding a subcommand (init, serve, enroll, ...) means writing one
 * `static int cmd_x(int argc, char **argv, FILE *out, FILE *err)` that
 * parses its own flags (argv[0] is the subcommand name) and adding a row to
 * `commands`. Conventions every subcommand keeps: `--help` prints usage to
 * out and returns 0; a usage error prints ONE line to err naming the flag and
 * returns 2; a failure while running prints one line with plait_errmsg() and
 * returns 1. Flags take their value as the next argument or as --flag=value.
 */
#include "cli.h"
#include "cli_eval.h"
#include "stagedir.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <limits.h>
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

#define PROG "plait-aggregator"

typedef struct {
    const char *name;
    const char *summary;
    int (*run)(int argc, char **argv, FILE *out, FILE *err);
} command_t;

/* ---- flag parsing shared by subcommands --------------------------------- */

typedef struct {
    const char *name;  /* "--q" */
    int takes_value;   /* 0: boolean switch */
    const char *value; /* set when seen (or "1" for switches) */
} flag_t;

/* Fill flags from argv[1..); returns 0 or 2 (after printing one line). A
 * "--help" anywhere sets *help. */
static int parse_flags(const char *cmd, int argc, char **argv, flag_t *flags, size_t nflags, int *help, FILE *err)
{
    *help = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            *help = 1;
            return 0;
        }
        const char *eq = strchr(a, '=');
        size_t nlen = eq ? (size_t)(eq - a) : strlen(a);
        flag_t *f = NULL;
        for (size_t k = 0; k < nflags; k++)
            if (strlen(flags[k].name) == nlen && strncmp(flags[k].name, a, nlen) == 0) f = &flags[k];
        if (f == NULL) {
            fprintf(err, PROG " %s: unknown %s '%.*s' (try --help)\n", cmd, a[0] == '-' ? "flag" : "argument",
                    (int)nlen, a);
            return 2;
        }
        if (f->value != NULL) {
            fprintf(err, PROG " %s: %s given twice\n", cmd, f->name);
            return 2;
        }
        if (!f->takes_value) {
            if (eq) {
                fprintf(err, PROG " %s: %s takes no value\n", cmd, f->name);
                return 2;
            }
            f->value = "1";
        } else if (eq) {
            f->value = eq + 1;
        } else if (i + 1 < argc) {
            f->value = argv[++i];
        } else {
            fprintf(err, PROG " %s: %s needs a value\n", cmd, f->name);
            return 2;
        }
    }
    return 0;
}

/* A finite double, the whole string. */
static int parse_double(const char *s, double *out)
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
static int parse_count(const char *s, uint64_t max, uint64_t *out)
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
static void fmt_double(char *buf, size_t len, double v)
{
    for (int prec = 15; prec <= 17; prec++) {
        snprintf(buf, len, "%.*g", prec, v);
        if (strtod(buf, NULL) == v) return;
    }
}

/* ---- privacy ------------------------------------------------------------- */

static void usage_privacy(FILE *f)
{
    fputs("usage: " PROG " privacy --q Q --noise-multiplier Z --rounds N --delta D [--json] [--classic]\n"
          "\n"
          "Privacy spent by N rounds of DP-FedAvg in which each device takes part\n"
          "independently with probability Q (expected cohort / population) and the\n"
          "sum of clipped updates gets Gaussian noise of std Z x clip norm. Prints\n"
          "the epsilon of (epsilon, D)-DP (device level, add/remove one device) and\n"
          "the Renyi order that attains it, over dp_accounting's default orders.\n"
          "\n"
          "  --q Q                 sampling probability, 0 < Q <= 1\n"
          "  --noise-multiplier Z  noise std / clip norm, Z > 0\n"
          "  --rounds N            number of rounds, integer >= 1\n"
          "  --delta D             target delta, 0 < D < 1 (below 1/population)\n"
          "  --json                one JSON object: {\"epsilon\": ..., \"order\": ..., \"delta\": ...}\n"
          "                        (epsilon is null when no order gives a finite bound)\n"
          "  --classic             use the classic RDP conversion (Mironov 2017) instead of\n"
          "                        the improved one (Canonne-Kamath-Steinke / Balle et al. 2020)\n",
          f);
}

static int cmd_privacy(int argc, char **argv, FILE *out, FILE *err)
{
    flag_t flags[] = {
        {"--q", 1, NULL}, {"--noise-multiplier", 1, NULL}, {"--rounds", 1, NULL},
        {"--delta", 1, NULL}, {"--json", 0, NULL}, {"--classic", 0, NULL},
    };
    int help, rc = parse_flags("privacy", argc, argv, flags, sizeof(flags) / sizeof(flags[0]), &help, err);
    if (rc != 0) return rc;
    if (help) {
        usage_privacy(out);
        return 0;
    }
    /* Values first (so `--q abc` is reported as a bad --q), then absences. */
    double q = 0, z = 0, delta = 0;
    uint64_t rounds = 0;
    if (flags[0].value && (parse_double(flags[0].value, &q) != 0 || !(q > 0 && q <= 1))) {
        fprintf(err, PROG " privacy: bad value '%s' for --q (want a number with 0 < q <= 1)\n", flags[0].value);
        return 2;
    }
    if (flags[1].value && (parse_double(flags[1].value, &z) != 0 || !(z > 0))) {
        fprintf(err, PROG " privacy: bad value '%s' for --noise-multiplier (want a finite number > 0)\n", flags[1].value);
        return 2;
    }
    if (flags[2].value && parse_count(flags[2].value, UINT64_C(1000000000000), &rounds) != 0) {
        fprintf(err, PROG " privacy: bad value '%s' for --rounds (want an integer from 1 to 10^12)\n", flags[2].value);
        return 2;
    }
    if (flags[3].value && (parse_double(flags[3].value, &delta) != 0 || !(delta > 0 && delta < 1))) {
        fprintf(err, PROG " privacy: bad value '%s' for --delta (want a number with 0 < delta < 1)\n", flags[3].value);
        return 2;
    }
    for (size_t k = 0; k < 4; k++) {
        if (flags[k].value == NULL) {
            fprintf(err, PROG " privacy: missing %s (try --help)\n", flags[k].name);
            return 2;
        }
    }
    int json = flags[4].value != NULL;
    plait_eps_method_t method = flags[5].value ? PLAIT_EPS_CLASSIC : PLAIT_EPS_IMPROVED;

    plait_accountant_t acc;
    double eps, order;
    if ((rc = plait_accountant_init(&acc, NULL, 0)) != 0 || (rc = plait_accountant_compose(&acc, q, z, rounds)) != 0 ||
        (rc = plait_accountant_epsilon(&acc, delta, method, &eps, &order)) != 0) {
        fprintf(err, PROG " privacy: %s (%s)\n", plait_errmsg(), plait_err_name(rc));
        return 1;
    }
    if (json) {
        char e[32], o[32], d[32];
        fmt_double(d, sizeof(d), delta);
        if (isfinite(eps)) {
            fmt_double(e, sizeof(e), eps);
            fmt_double(o, sizeof(o), order);
            fprintf(out, "{\"epsilon\": %s, \"order\": %s, \"delta\": %s}\n", e, o, d);
        } else {
            fprintf(out, "{\"epsilon\": null, \"order\": null, \"delta\": %s}\n", d);
        }
    } else {
        fprintf(out, "epsilon: %.10g\norder: %.10g\ndelta: %.10g\n", eps, order, delta);
        fprintf(out, "(%llu rounds, q = %.10g, noise multiplier %.10g, %s conversion over %zu orders)\n",
                (unsigned long long)rounds, q, z, method == PLAIT_EPS_CLASSIC ? "classic" : "improved", acc.n_orders);
    }
    return 0;
}

/* ---- deployment commands: shared argument handling --------------------- */

#define MAX_SETS 64

/* Positional DIR plus flags; "--set key=value" may repeat. Returns 0 or 2. */
static int parse_dir_args(const char *cmd, int argc, char **argv, flag_t *flags, size_t nflags, const char **dir,
                          const char **sets, size_t *n_sets, int *help, FILE *err)
{
    char *rest[256];
    int nrest = 1;
    *dir = NULL;
    if (n_sets) *n_sets = 0;
    if (argc > 256) {
        fprintf(err, PROG " %s: too many arguments\n", cmd);
        return 2;
    }
    rest[0] = argv[0];
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (n_sets && (strcmp(a, "--set") == 0 || strncmp(a, "--set=", 6) == 0)) {
            const char *v = a[5] == '=' ? a + 6 : (i + 1 < argc ? argv[++i] : NULL);
            if (v == NULL) {
                fprintf(err, PROG " %s: --set needs key=value\n", cmd);
                return 2;
            }
            if (*n_sets == MAX_SETS) {
                fprintf(err, PROG " %s: more than %d --set flags\n", cmd, MAX_SETS);
                return 2;
            }
            sets[(*n_sets)++] = v;
        } else if (a[0] != '-' && *dir == NULL) {
            *dir = a;
        } else {
            rest[nrest++] = argv[i];
            /* keep a flag's separate value with it */
            if (a[0] == '-' && strchr(a, '=') == NULL && i + 1 < argc)
                for (size_t k = 0; k < nflags; k++)
                    if (flags[k].takes_value && strcmp(flags[k].name, a) == 0) rest[nrest++] = argv[++i];
        }
    }
    int rc = parse_flags(cmd, nrest, rest, flags, nflags, help, err);
    if (rc != 0 || *help) return rc;
    if (*dir == NULL) {
        fprintf(err, PROG " %s: missing deployment directory DIR (try --help)\n", cmd);
        return 2;
    }
    return 0;
}

static int open_store(const char *dir, int create, plait_aggstore_t **st, FILE *err, const char *cmd)
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
static int load_config(const char *cmd, const char *dir, const char **sets, size_t n_sets, plait_aggcfg_t *c,
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

static const char *fmt_time(int64_t t, char *buf, size_t len)
{
    if (t <= 0) return "-";
    time_t tt = (time_t)t;
    struct tm tm;
    gmtime_r(&tt, &tm);
    strftime(buf, len, "%Y-%m-%dT%H:%M:%SZ", &tm);
    return buf;
}

/* ---- init ---------------------------------------------------------------- */

static int cmd_init(int argc, char **argv, FILE *out, FILE *err)
{
    flag_t flags[] = {{"--base-model", 1, NULL}, {"--server-names", 1, NULL}, {"--org", 1, NULL}};
    const char *dir, *sets[MAX_SETS];
    size_t n_sets;
    int help, rc = parse_dir_args("init", argc, argv, flags, 3, &dir, sets, &n_sets, &help, err);
    if (rc != 0) return rc;
    if (help) {
        fputs("usage: " PROG " init DIR --base-model PATH [--server-names LIST] [--org NAME] [--set key=value]...\n"
              "\n"
              "Create a deployment in DIR (created 0700; an existing deployment is never\n"
              "overwritten): the CA (ca.crt, ca.key), the aggregator's key and certificate\n"
              "(server.crt, server.key), an empty revocation list (revoked.txt), the database\n"
              "(plait.db) and aggregator.conf with every setting written out and commented.\n"
              "All or nothing: it is built beside DIR and renamed into place, so a failed\n"
              "init leaves nothing behind; a DIR that exists and is not empty is refused.\n"
              "\n"
              "  --base-model PATH     the base model checkpoint devices run (stored in the config)\n"
              "  --server-names LIST   subjectAltNames of the server certificate, comma-separated\n"
              "                        DNS names and IP addresses (default localhost,127.0.0.1)\n"
              "  --org NAME            organization in every certificate (default plait)\n"
              "  --set key=value       any other setting of aggregator.conf (repeatable)\n",
              out);
        return 0;
    }
    plait_aggcfg_t c;
    plait_aggcfg_default(&c);
    if (flags[0].value == NULL) {
        fputs(PROG " init: missing --base-model (try --help)\n", err);
        return 2;
    }
    char abs[PATH_MAX];
    const char *bm = realpath(flags[0].value, abs) ? abs : flags[0].value;
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
    if (flags[1].value) pc.server_alt_names = flags[1].value;
    if (flags[2].value) pc.org = flags[2].value;
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
    if (open_store(stage, 1, &st, err, "init") != 0) goto fail;
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

/* ---- enroll / revoke ------------------------------------------------------ */

/* A fresh opaque device id: 128 random bits in hex. The certificate CN is this, never the
 * operator's label: TLS 1.2 sends the client certificate in clear. */
static int random_device_id(char out[33])
{
    plait_drbg_t d;
    plait_drbg_init(&d);
    static const uint8_t pers[] = "plait-device-id";
    uint8_t b[16];
    int rc = plait_drbg_seed(&d, pers, sizeof(pers) - 1);
    if (rc == 0) rc = plait_drbg_random(&d, b, sizeof(b));
    plait_drbg_free(&d);
    if (rc == 0) plait_hex(b, sizeof(b), out);
    return rc;
}

static int cmd_enroll(int argc, char **argv, FILE *out, FILE *err)
{
    flag_t flags[] = {{"--device", 1, NULL},   {"--csr", 1, NULL},       {"--out-key", 1, NULL},
                      {"--out-cert", 1, NULL}, {"--out-record", 1, NULL}};
    const char *dir;
    int help, rc = parse_dir_args("enroll", argc, argv, flags, 5, &dir, NULL, NULL, &help, err);
    if (rc != 0) return rc;
    if (help) {
        fputs("usage: " PROG " enroll DIR --device LABEL (--csr FILE | --out-key FILE)\n"
              "                   [--out-cert FILE] [--out-record FILE]\n"
              "\n"
              "Issue a device certificate (clientAuth) with the CA in DIR. Its CN is a fresh\n"
              "random id (128 bits, hex), never LABEL: TLS 1.2 sends client certificates in\n"
              "clear. LABEL is the operator's name for the device; it stays in the database\n"
              "and in this tool's output. With --csr the device keeps its key (`plait-agent\n"
              "keygen`): the request's signature is verified and its public key certified.\n"
              "With --out-key a fresh P-256 key is generated and written (0600).\n"
              "Without --out-record the device is recorded in DIR's database (this host\n"
              "serves). With --out-record (an offline CA host) the database is not touched:\n"
              "FILE is an enrollment record signed by the CA, to be imported on the serving\n"
              "host with `" PROG " import-enrollment`. Labels and ids are never reused.\n",
              out);
        return 0;
    }
    const char *label = flags[0].value, *csr = flags[1].value, *okey = flags[2].value, *ocrt = flags[3].value,
               *orec = flags[4].value;
    if (!label || (!ocrt && !orec) || (!csr == !okey)) {
        fputs(PROG " enroll: need --device, --out-cert or --out-record, and exactly one of --csr, --out-key (try "
                   "--help)\n",
              err);
        return 2;
    }
    if (!plait_pki_device_id_valid(label)) {
        fprintf(err, PROG " enroll: bad device label '%s' (1..64 of A-Z a-z 0-9 . _ -)\n", label);
        return 2;
    }
    char id[33];
    if (random_device_id(id) != 0) {
        fprintf(err, PROG " enroll: no randomness for a device id: %s\n", plait_errmsg());
        return 1;
    }
    plait_pki_config_t pc;
    plait_pki_config_default(&pc);
    char *crt = NULL, *key = NULL, *req = NULL, *rec = NULL;
    plait_pki_cert_info_t info;
    if (csr) {
        if ((rc = plait_pki_read_file(csr, &req)) != 0) {
            fprintf(err, PROG " enroll: %s: %s\n", csr, plait_errmsg());
            return 1;
        }
        rc = plait_pki_enroll_csr(dir, &pc, (const uint8_t *)req, strlen(req), id, &crt, &info);
        plait_pki_free_pem(req);
    } else {
        rc = plait_pki_enroll(dir, &pc, id, &crt, &key, &info);
    }
    if (rc == 0 && orec) {
        char p[1200], *ca_key = NULL;
        snprintf(p, sizeof(p), "%s/ca.key", dir);
        rc = plait_pki_read_file(p, &ca_key);
        if (rc == 0) rc = plait_pki_record_create(ca_key, label, id, crt, &rec);
        plait_pki_free_pem(ca_key);
    }
    if (rc != 0) {
        fprintf(err, PROG " enroll: %s (%s)\n", plait_errmsg(), plait_err_name(rc));
        rc = 1;
        goto done;
    }
    if (!orec) {
        plait_aggstore_t *st = NULL;
        if (open_store(dir, 0, &st, err, "enroll") != 0) {
            rc = 1;
            goto done;
        }
        rc = plait_aggstore_device_enroll_labeled(st, id, label, info.fingerprint);
        plait_aggstore_close(st);
        if (rc != 0) {
            fprintf(err, PROG " enroll: device %s: %s (%s)\n", label, plait_errmsg(), plait_err_name(rc));
            rc = 1;
            goto done;
        }
    }
    if ((key && (rc = plait_pki_write_file(okey, key, 1)) != 0) || (ocrt && (rc = plait_pki_write_file(ocrt, crt, 0)) != 0) ||
        (orec && (rc = plait_pki_write_file(orec, rec, 0)) != 0)) {
        fprintf(err, PROG " enroll: %s (%s)\n", plait_errmsg(),
                orec ? "nothing was recorded; retry" : "the device is enrolled; revoke it or retry with another label");
        rc = 1;
        goto done;
    }
    fprintf(out, "%s %s as id %s serial %s sha256 %s valid until %s\n", orec ? "record for" : "enrolled", label, id,
            info.serial_hex, info.fingerprint_hex, fmt_time(info.not_after, (char[32]){0}, 32));
    if (orec) fprintf(out, "next, on the serving host: " PROG " import-enrollment DIR %s\n", orec);
    rc = 0;
done:
    plait_pki_free_pem(crt);
    plait_pki_free_pem(key);
    plait_pki_free_pem(rec);
    return rc;
}

/* Whether DIR/revoked.txt already has the line "<kind> <hex>" (case-insensitive hex). */
static int revoked_has(const char *dir, const char *kind, const char *hex)
{
    char path[1200], line[256];
    snprintf(path, sizeof(path), "%s/revoked.txt", dir);
    FILE *f = fopen(path, "r");
    if (!f) return 0;
    size_t kl = strlen(kind), hl = strlen(hex);
    int found = 0;
    while (!found && fgets(line, sizeof(line), f)) {
        char *p = line;
        while (*p == ' ' || *p == '\t') p++;
        if (strncmp(p, kind, kl) != 0 || (p[kl] != ' ' && p[kl] != '\t')) continue;
        p += kl;
        while (*p == ' ' || *p == '\t') p++;
        size_t n = strcspn(p, " \t\r\n#");
        if (n != hl) continue;
        found = 1;
        for (size_t k = 0; k < n && found; k++) {
            char a = p[k], b = hex[k];
            if (a >= 'A' && a <= 'F') a = (char)(a - 'A' + 'a');
            if (b >= 'A' && b <= 'F') b = (char)(b - 'A' + 'a');
            found = a == b;
        }
    }
    fclose(f);
    return found;
}

/* 64 hex digits into 32 bytes; 0 or -1. */
static int parse_fingerprint(const char *hex, uint8_t fp[32])
{
    return strlen(hex) == 64 && plait_unhex(hex, fp, 32) == 0 ? 0 : -1;
}

typedef struct {
    const uint8_t *fp;
    char id[PLAIT_AGGSTORE_MAX_DEVICE_ID + 1];
} find_fp_t;

static int find_fp(void *ud, const plait_aggstore_device_t *d)
{
    find_fp_t *f = ud;
    if (memcmp(d->fingerprint, f->fp, 32) == 0) snprintf(f->id, sizeof(f->id), "%s", d->id);
    return 0;
}

static int cmd_import_enrollment(int argc, char **argv, FILE *out, FILE *err)
{
    const char *dir = NULL, *file = NULL;
    int help = 0, rc;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) help = 1;
        else if (argv[i][0] == '-' || (dir && file)) {
            fprintf(err, PROG " import-enrollment: unexpected argument '%.60s' (try --help)\n", argv[i]);
            return 2;
        } else if (!dir) dir = argv[i];
        else file = argv[i];
    }
    if (help) {
        fputs("usage: " PROG " import-enrollment DIR RECORD\n"
              "\n"
              "Record a device enrolled on an offline CA host (`" PROG " enroll --out-record`)\n"
              "in DIR's database. The record's signature and certificate are checked against\n"
              "DIR/ca.crt; DIR needs no ca.key.\n",
              out);
        return 0;
    }
    if (!dir || !file) {
        fputs(PROG " import-enrollment: need DIR and RECORD (try --help)\n", err);
        return 2;
    }
    char p[1200], *ca = NULL, *rec = NULL;
    char label[PLAIT_PKI_ID_MAX + 1], id[PLAIT_PKI_ID_MAX + 1];
    plait_pki_cert_info_t info;
    snprintf(p, sizeof(p), "%s/ca.crt", dir);
    if ((rc = plait_pki_read_file(p, &ca)) == 0 && (rc = plait_pki_read_file(file, &rec)) == 0)
        rc = plait_pki_record_verify(ca, rec, strlen(rec), label, id, &info);
    plait_pki_free_pem(ca);
    plait_pki_free_pem(rec);
    if (rc != 0) {
        fprintf(err, PROG " import-enrollment: %s: %s (%s)\n", file, plait_errmsg(), plait_err_name(rc));
        return 1;
    }
    plait_aggstore_t *st = NULL;
    if (open_store(dir, 0, &st, err, "import-enrollment") != 0) return 1;
    rc = plait_aggstore_device_enroll_labeled(st, id, label, info.fingerprint);
    plait_aggstore_close(st);
    if (rc != 0) {
        fprintf(err, PROG " import-enrollment: device %s: %s (%s)\n", label, plait_errmsg(), plait_err_name(rc));
        return 1;
    }
    fprintf(out, "enrolled %s as id %s serial %s sha256 %s\n", label, id, info.serial_hex, info.fingerprint_hex);
    return 0;
}

static int cmd_revoke(int argc, char **argv, FILE *out, FILE *err)
{
    flag_t flags[] = {{"--device", 1, NULL}, {"--serial", 1, NULL}, {"--fingerprint", 1, NULL}, {"--cert", 1, NULL}};
    const char *dir;
    int help, rc = parse_dir_args("revoke", argc, argv, flags, 4, &dir, NULL, NULL, &help, err);
    if (rc != 0) return rc;
    if (help) {
        fputs("usage: " PROG " revoke DIR (--device LABEL|ID | --fingerprint SHA256 | --cert FILE | --serial HEX)\n"
              "\n"
              "Revoke a device: its certificate's fingerprint is appended to DIR/revoked.txt\n"
              "(a running aggregator reloads it within a second and refuses the certificate in\n"
              "the TLS handshake) and the device is marked revoked in the database (checked\n"
              "after every handshake). Its past contributions stay in committed versions.\n"
              "  --device LABEL|ID      by the device's label (as enrolled) or id\n"
              "  --fingerprint SHA256   by the certificate's SHA-256 (as enroll and cert-info print it)\n"
              "  --cert FILE            by a certificate file (its fingerprint)\n"
              "  --serial HEX           by serial: appends \"serial HEX\" to revoked.txt only (the\n"
              "                         database does not keep serials; the device record is unchanged)\n"
              "Revoking what is already revoked changes nothing and says so.\n",
              out);
        return 0;
    }
    int given = !!flags[0].value + !!flags[1].value + !!flags[2].value + !!flags[3].value;
    if (given != 1) {
        fputs(PROG " revoke: give exactly one of --device, --fingerprint, --cert, --serial (try --help)\n", err);
        return 2;
    }
    if (flags[1].value) { /* a serial: the revocation list only */
        const char *hex = flags[1].value;
        if (revoked_has(dir, "serial", hex)) {
            fprintf(out, "serial %s is already revoked\n", hex);
            return 0;
        }
        if ((rc = plait_pki_revoke(dir, hex, NULL)) != 0) {
            fprintf(err, PROG " revoke: serial %s: %s\n", hex, plait_errmsg());
            return rc == PLAIT_EINVAL ? 2 : 1;
        }
        fprintf(out, "revoked serial %s\n", hex);
        return 0;
    }
    plait_aggstore_t *st = NULL;
    if (open_store(dir, 0, &st, err, "revoke") != 0) return 1;
    uint8_t fp[32];
    char id[PLAIT_AGGSTORE_MAX_DEVICE_ID + 1] = "";
    const char *what = flags[0].value ? flags[0].value : flags[2].value ? flags[2].value : flags[3].value;
    if (flags[0].value) {
        rc = plait_aggstore_device_find(st, flags[0].value, id);
    } else {
        if (flags[2].value && parse_fingerprint(flags[2].value, fp) != 0) {
            plait_aggstore_close(st);
            fprintf(err, PROG " revoke: --fingerprint: '%.80s' is not 64 hex digits\n", flags[2].value);
            return 2;
        }
        if (flags[3].value) {
            char *pem = NULL;
            plait_pki_cert_info_t ci;
            if ((rc = plait_pki_read_file(flags[3].value, &pem)) == 0)
                rc = plait_pki_cert_info((const uint8_t *)pem, strlen(pem), &ci);
            plait_pki_free_pem(pem);
            if (rc != 0) {
                plait_aggstore_close(st);
                fprintf(err, PROG " revoke: %s: %s\n", flags[3].value, plait_errmsg());
                return 1;
            }
            memcpy(fp, ci.fingerprint, 32);
        }
        find_fp_t ff = {fp, ""};
        if ((rc = plait_aggstore_devices_foreach(st, find_fp, &ff)) == 0 && !ff.id[0])
            rc = plait_fail(PLAIT_ENOENT, "no enrolled device has this certificate (a renewed device's old one is "
                                          "already revoked)");
        snprintf(id, sizeof(id), "%s", ff.id);
    }
    plait_aggstore_device_t d;
    int already = 0;
    char label[PLAIT_AGGSTORE_MAX_DEVICE_ID + 1] = "";
    if (rc == 0 && plait_aggstore_device_label(st, id, label) != 0) label[0] = '\0';
    if (rc == 0 && (rc = plait_aggstore_device_get(st, id, &d)) == 0) {
        char hex[65];
        plait_hex(d.fingerprint, 32, hex);
        already = d.revoked && revoked_has(dir, "sha256", hex);
        if (!already && !revoked_has(dir, "sha256", hex)) rc = plait_pki_revoke(dir, NULL, d.fingerprint);
        if (rc == 0 && !d.revoked) rc = plait_aggstore_device_revoke(st, id);
    }
    plait_aggstore_close(st);
    if (rc != 0) {
        fprintf(err, PROG " revoke: %s%s: %s (%s)\n", flags[0].value ? "device " : "", what, plait_errmsg(),
                plait_err_name(rc));
        return 1;
    }
    if (already) fprintf(out, "device %s is already revoked\n", label[0] ? label : id);
    else fprintf(out, "revoked %s\n", label[0] ? label : id);
    return 0;
}

/* ---- renew ------------------------------------------------------------------- */

static int cmd_renew(int argc, char **argv, FILE *out, FILE *err)
{
    flag_t flags[] = {{"--device", 1, NULL}, {"--csr", 1, NULL}, {"--out-key", 1, NULL}, {"--out-cert", 1, NULL}};
    const char *dir;
    int help, rc = parse_dir_args("renew", argc, argv, flags, 4, &dir, NULL, NULL, &help, err);
    if (rc != 0) return rc;
    if (help) {
        fputs("usage: " PROG " renew DIR --device LABEL|ID (--csr FILE | --out-key FILE) --out-cert FILE\n"
              "\n"
              "Issue a new certificate for an enrolled, unrevoked device, keeping its id and its\n"
              "history (rounds, counters): before the old certificate expires, or after a lost\n"
              "key. The database takes the new fingerprint and the old certificate's fingerprint\n"
              "is appended to DIR/revoked.txt, so only the new one is accepted from now on.\n"
              "--csr / --out-key as for enroll. A revoked device cannot be renewed.\n",
              out);
        return 0;
    }
    const char *id = flags[0].value, *csr = flags[1].value, *okey = flags[2].value, *ocrt = flags[3].value;
    if (!id || !ocrt || (!csr == !okey)) {
        fputs(PROG " renew: need --device, --out-cert and exactly one of --csr, --out-key (try --help)\n", err);
        return 2;
    }
    plait_aggstore_t *st = NULL;
    if (open_store(dir, 0, &st, err, "renew") != 0) return 1;
    plait_aggstore_device_t d;
    const char *name = id; /* as the operator named it */
    char idb[PLAIT_AGGSTORE_MAX_DEVICE_ID + 1];
    if ((rc = plait_aggstore_device_find(st, name, idb)) == 0) id = idb; /* the certificate's CN */
    if (rc != 0 || (rc = plait_aggstore_device_get(st, id, &d)) != 0 || d.revoked) {
        fprintf(err, PROG " renew: device %s: %s\n", name,
                rc != 0 ? plait_errmsg() : "revoked (enroll it again under a new label instead)");
        plait_aggstore_close(st);
        return 1;
    }
    plait_pki_config_t pc;
    plait_pki_config_default(&pc);
    char *crt = NULL, *key = NULL, *req = NULL;
    plait_pki_cert_info_t info;
    if (csr) {
        if ((rc = plait_pki_read_file(csr, &req)) == 0)
            rc = plait_pki_enroll_csr(dir, &pc, (const uint8_t *)req, strlen(req), id, &crt, &info);
        plait_pki_free_pem(req);
    } else {
        rc = plait_pki_enroll(dir, &pc, id, &crt, &key, &info);
    }
    if (rc == 0 && key) rc = plait_pki_write_file(okey, key, 1);
    if (rc == 0) rc = plait_pki_write_file(ocrt, crt, 0);
    if (rc == 0) rc = plait_aggstore_device_rekey(st, id, info.fingerprint);
    if (rc == 0) rc = plait_pki_revoke(dir, NULL, d.fingerprint); /* the old certificate */
    plait_aggstore_close(st);
    plait_pki_free_pem(crt);
    plait_pki_free_pem(key);
    if (rc != 0) {
        fprintf(err, PROG " renew: device %s: %s (%s)\n", id, plait_errmsg(), plait_err_name(rc));
        return 1;
    }
    char tb[32];
    fprintf(out, "renewed %s (id %s) serial %s sha256 %s valid until %s (the old certificate is revoked)\n", name,
            id, info.serial_hex, info.fingerprint_hex, fmt_time(info.not_after, tb, sizeof(tb)));
    return 0;
}

/* ---- cert-info ---------------------------------------------------------------- */

static int cmd_cert_info(int argc, char **argv, FILE *out, FILE *err)
{
    flag_t flags[] = {{"--json", 0, NULL}, {"--ca", 1, NULL}};
    int help;
    const char *file = NULL;
    /* One positional FILE among the flags. */
    char *args[16];
    int n = 0;
    for (int i = 0; i < argc && n < 16; i++) {
        if (i > 0 && argv[i][0] != '-' && !file && !(i > 1 && strcmp(argv[i - 1], "--ca") == 0)) file = argv[i];
        else args[n++] = argv[i];
    }
    int rc = parse_flags("cert-info", n, args, flags, 2, &help, err);
    if (rc != 0) return rc;
    if (help) {
        fputs("usage: " PROG " cert-info FILE [--ca CA.crt] [--json]\n"
              "\n"
              "Device id (CN), serial, SHA-256 fingerprint and validity of a certificate (PEM\n"
              "or DER); with --ca also whether it verifies against that CA as a device\n"
              "certificate, exactly as the TLS handshake checks it (chain, dates, usage).\n",
              out);
        return 0;
    }
    if (!file) {
        fputs(PROG " cert-info: missing FILE (try --help)\n", err);
        return 2;
    }
    uint8_t *buf = NULL;
    size_t len = 0;
    plait_pki_cert_info_t ci;
    rc = plait_file_read(file, "certificate", 65535, &buf, &len); /* a FIFO is refused, not waited on */
    if (rc == 0) rc = plait_pki_cert_info(buf, len, &ci);
    free(buf);
    if (rc != 0) {
        fprintf(err, PROG " cert-info: %s: %s\n", file, plait_errmsg());
        return 1;
    }
    const char *verdict = NULL;
    char why[256] = "";
    if (flags[1].value) {
        char *ca = NULL, *crt = NULL;
        int vr = plait_pki_read_file(flags[1].value, &ca);
        if (vr == 0) vr = plait_pki_read_file(file, &crt);
        if (vr == 0) {
            const char *reason = NULL;
            vr = plait_pki_verify(ca, crt, 1, &reason);
            snprintf(why, sizeof(why), "%s", vr == 0 ? "ok" : reason ? reason : plait_errmsg());
        } else {
            snprintf(why, sizeof(why), "%s", plait_errmsg());
        }
        plait_pki_free_pem(ca);
        plait_pki_free_pem(crt);
        verdict = why;
    }
    char a[32], b[32];
    if (flags[0].value) {
        plait_buf_t j;
        plait_buf_init(&j, 0);
        plait_buf_printf(&j, "{\"device\": ");
        plait_buf_json_string(&j, ci.device_id, strlen(ci.device_id));
        plait_buf_printf(&j, ", \"serial\": \"%s\", \"sha256\": \"%s\", \"not_before\": \"%s\", \"not_after\": \"%s\", "
                             "\"ca\": %s",
                         ci.serial_hex, ci.fingerprint_hex, fmt_time(ci.not_before, a, sizeof(a)),
                         fmt_time(ci.not_after, b, sizeof(b)), ci.is_ca ? "true" : "false");
        if (verdict) {
            plait_buf_printf(&j, ", \"verify\": ");
            plait_buf_json_string(&j, verdict, strlen(verdict));
        }
        plait_buf_printf(&j, "}\n");
        if (plait_buf_status(&j) == 0) fwrite(j.data, 1, j.len, out);
        plait_buf_free(&j);
    } else {
        fprintf(out, "device: %s\nserial: %s\nsha256: %s\nvalid: %s to %s\nca: %s\n", ci.device_id[0] ? ci.device_id : "-",
                ci.serial_hex, ci.fingerprint_hex, fmt_time(ci.not_before, a, sizeof(a)),
                fmt_time(ci.not_after, b, sizeof(b)), ci.is_ca ? "yes" : "no");
        if (verdict) fprintf(out, "verify: %s\n", verdict);
    }
    return verdict && strcmp(verdict, "ok") != 0 ? 1 : 0;
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
    flag_t flags[] = {{"--port", 1, NULL}, {"--metrics-port", 1, NULL}, {"--port-file", 1, NULL}};
    const char *dir, *sets[MAX_SETS + 3];
    size_t n_sets;
    int help, rc = parse_dir_args("serve", argc, argv, flags, 3, &dir, sets, &n_sets, &help, err);
    if (rc != 0) return rc;
    if (help) {
        fputs("usage: " PROG " serve DIR [--port N] [--metrics-port N] [--port-file FILE] [--set key=value]...\n"
              "\n"
              "Run the aggregator of the deployment in DIR until SIGTERM or SIGINT (then it\n"
              "stops accepting, abandons the open round, closes every connection and exits 0).\n"
              "Settings: DIR/aggregator.conf, overridden by the flags (port 0: any free port;\n"
              "--port-file writes {\"port\": N, \"metrics_port\": M} once listening).\n"
              "Logs: one JSON object per line on stderr.\n",
              out);
        return 0;
    }
    char kv[3][PLAIT_AGGCFG_STR_MAX + 32];
    const char *keys[3] = {"port", "metrics_port", "port_file"};
    for (int k = 0; k < 3; k++)
        if (flags[k].value) {
            snprintf(kv[k], sizeof(kv[k]), "%s=%s", keys[k], flags[k].value);
            sets[n_sets++] = kv[k];
        }
    plait_aggcfg_t c;
    if ((rc = load_config("serve", dir, sets, n_sets, &c, err)) != 0) return rc;
    plait_log_level_t lvl;
    if (plait_log_parse_level(c.log_level, &lvl) == 0) plait_log_set_level(lvl);
    plait_log_set_sink(json_sink, err);
    /* A peer that vanishes must cost a failed write (EPIPE), not the process. */
    signal(SIGPIPE, SIG_IGN);
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

/* ---- status / rounds --------------------------------------------------------- */

typedef struct {
    int64_t n, revoked, by_state[4], last_id, open_id;
    FILE *out;
    int json, first;
} scan_t;

static int count_dev(void *ud, const plait_aggstore_device_t *d)
{
    scan_t *sc = ud;
    sc->n++;
    if (d->revoked) sc->revoked++;
    return 0;
}

static int count_round(void *ud, const plait_aggstore_round_t *r)
{
    scan_t *sc = ud;
    if ((unsigned)r->state < 4) sc->by_state[r->state]++;
    if (r->id > sc->last_id) sc->last_id = r->id;
    if (r->state == PLAIT_AGGSTORE_ROUND_OPEN) sc->open_id = r->id;
    return 0;
}

static int cmd_status(int argc, char **argv, FILE *out, FILE *err)
{
    flag_t flags[] = {{"--check", 0, NULL}, {"--json", 0, NULL}};
    const char *dir;
    int help, rc = parse_dir_args("status", argc, argv, flags, 2, &dir, NULL, NULL, &help, err);
    if (rc != 0) return rc;
    if (help) {
        fputs("usage: " PROG " status DIR [--check] [--json]\n\n"
              "Deployment summary: latest global adapter version, rounds by state, devices\n"
              "enrolled and revoked, privacy spent. Safe while the service runs (read only).\n"
              "  --check   also run sqlite's integrity check over the whole database\n"
              "  --json    one JSON object instead of lines\n",
              out);
        return 0;
    }
    plait_aggstore_t *st = NULL;
    if (open_store(dir, 0, &st, err, "status") != 0) return 1;
    plait_aggstore_info_t info;
    int64_t ver = 0;
    scan_t sc;
    memset(&sc, 0, sizeof(sc));
    plait_aggstore_privacy_t pv;
    plait_aggstore_eval_t ev; /* federated evaluation: the newest committed mean */
    int64_t n_evals = 0;
    int have_eval = 0;
    if ((rc = plait_aggstore_info(st, &info)) != 0 || (rc = plait_aggstore_version_latest_number(st, &ver)) != 0 ||
        (rc = plait_aggstore_devices_foreach(st, count_dev, &sc)) != 0 ||
        (rc = plait_aggstore_rounds_foreach(st, false, 0, count_round, &sc)) != 0 ||
        (rc = plait_aggstore_ledger_total(st, &pv)) != 0 ||
        (rc = plait__cli_eval_latest(st, &ev, &n_evals, &have_eval)) != 0 ||
        (flags[0].value && (rc = plait_aggstore_check_integrity(st)) != 0)) {
        fprintf(err, PROG " status: %s (%s)\n", plait_errmsg(), plait_err_name(rc));
        plait_aggstore_close(st);
        return 1;
    }
    plait_aggstore_close(st);
    char tb[32];
    if (flags[1].value) {
        plait_buf_t b;
        plait_buf_init(&b, 0);
        plait_buf_printf(&b, "{\"deployment\": ");
        plait_buf_json_string(&b, info.deployment_id, strlen(info.deployment_id));
        plait_buf_printf(&b,
                         ", \"created\": \"%s\", \"global_version\": %lld, \"rounds\": {\"total\": %lld, "
                         "\"committed\": %lld, \"failed\": %lld, \"abandoned\": %lld, \"open\": %lld}, "
                         "\"open_round\": %lld, \"devices\": {\"enrolled\": %lld, \"revoked\": %lld}, \"privacy\": ",
                         fmt_time(info.created, tb, sizeof(tb)), (long long)ver, (long long)sc.last_id,
                         (long long)sc.by_state[PLAIT_AGGSTORE_ROUND_COMMITTED],
                         (long long)sc.by_state[PLAIT_AGGSTORE_ROUND_FAILED],
                         (long long)sc.by_state[PLAIT_AGGSTORE_ROUND_ABANDONED],
                         (long long)sc.by_state[PLAIT_AGGSTORE_ROUND_OPEN], (long long)sc.open_id, (long long)sc.n,
                         (long long)sc.revoked);
        if (pv.rounds) {
            plait_buf_printf(&b, "{\"epsilon\": ");
            plait_buf_json_number(&b, pv.epsilon);
            plait_buf_printf(&b, ", \"delta\": ");
            plait_buf_json_number(&b, pv.delta);
            plait_buf_printf(&b, ", \"rounds\": %lld}", (long long)pv.rounds);
        } else {
            plait_buf_printf(&b, "null");
        }
        plait_buf_printf(&b, ", \"evaluation\": ");
        if (have_eval) {
            plait_buf_printf(&b, "{\"evaluations\": %lld, \"round\": %lld, \"version\": %lld, \"devices\": %lld, "
                                 "\"mean_loss\": ", (long long)n_evals, (long long)ev.round_id, (long long)ev.version,
                             (long long)ev.devices);
            plait_buf_json_number(&b, ev.mean_loss);
            plait_buf_printf(&b, "}");
        } else {
            plait_buf_printf(&b, "null");
        }
        if (flags[0].value) plait_buf_printf(&b, ", \"integrity\": \"ok\"");
        plait_buf_printf(&b, "}\n");
        rc = plait_buf_status(&b);
        if (rc == 0) fwrite(b.data, 1, b.len, out);
        plait_buf_free(&b);
        return rc == 0 ? 0 : 1;
    }
    fprintf(out, "deployment: %s (created %s)\n", info.deployment_id, fmt_time(info.created, tb, sizeof(tb)));
    fprintf(out, "global_version: %lld\n", (long long)ver);
    fprintf(out, "rounds: %lld (committed %lld, failed %lld, abandoned %lld, open %lld)\n", (long long)sc.last_id,
            (long long)sc.by_state[PLAIT_AGGSTORE_ROUND_COMMITTED], (long long)sc.by_state[PLAIT_AGGSTORE_ROUND_FAILED],
            (long long)sc.by_state[PLAIT_AGGSTORE_ROUND_ABANDONED], (long long)sc.by_state[PLAIT_AGGSTORE_ROUND_OPEN]);
    if (sc.open_id) fprintf(out, "open_round: %lld\n", (long long)sc.open_id);
    fprintf(out, "devices: %lld enrolled, %lld revoked\n", (long long)sc.n, (long long)sc.revoked);
    if (pv.rounds) {
        double worst = INFINITY;
        if (plait_sel_worst_epsilon((uint64_t)pv.max_device_rounds, pv.min_noise_multiplier, pv.delta, &worst) != 0)
            worst = INFINITY;
        fprintf(out, "privacy: epsilon %.6g at delta %.3g after %lld DP rounds (amortized: %s)\n", pv.epsilon, pv.delta,
                (long long)pv.rounds,
                pv.poisson_rounds == pv.rounds ? "holds if Poisson sampling stays secret"
                                               : "NOT VALID, some rounds were not Poisson-sampled");
        fprintf(out, "privacy: worst case per device epsilon %.6g at delta %.3g (q = 1 over the %lld DP rounds the "
                "most active device joined; no sampling assumption)\n",
                worst, pv.delta, (long long)pv.max_device_rounds);
    } else {
        fputs("privacy: no DP rounds\n", out);
    }
    if (have_eval)
        fprintf(out, "evaluation: version %lld mean held-out loss %.4f over %lld devices (round %lld; %lld evaluations)\n",
                (long long)ev.version, ev.mean_loss, (long long)ev.devices, (long long)ev.round_id, (long long)n_evals);
    if (flags[0].value) fputs("integrity: ok\n", out);
    return 0;
}

static int print_round(void *ud, const plait_aggstore_round_t *r)
{
    scan_t *sc = ud;
    char a[32], b[32];
    if (sc->json) { /* one JSON object per line */
        plait_buf_t j;
        plait_buf_init(&j, 0);
        plait_buf_printf(&j, "{\"round\": %lld, \"state\": \"%s\", \"kind\": \"%s\", \"started\": ", (long long)r->id,
                         plait_aggstore_round_state_name(r->state), plait_aggstore_kind_name(r->kind));
        if (r->started > 0) plait_buf_printf(&j, "\"%s\"", fmt_time(r->started, a, sizeof(a)));
        else plait_buf_printf(&j, "null");
        plait_buf_printf(&j, ", \"ended\": ");
        if (r->ended > 0) plait_buf_printf(&j, "\"%s\"", fmt_time(r->ended, b, sizeof(b)));
        else plait_buf_printf(&j, "null");
        plait_buf_printf(&j, ", \"base_version\": %lld, \"new_version\": %lld, \"participants\": %lld, "
                             "\"dropouts\": %lld, \"reason\": ",
                         (long long)r->base_version, (long long)r->new_version, (long long)r->stats.participants,
                         (long long)r->stats.dropouts);
        plait_buf_json_string(&j, r->reason, strlen(r->reason));
        plait_buf_printf(&j, "}\n");
        int rc = plait_buf_status(&j);
        if (rc == 0) fwrite(j.data, 1, j.len, sc->out);
        plait_buf_free(&j);
        return rc;
    }
    fprintf(sc->out, "%-6lld %-9s %-8s %-20s %-20s %5lld %5lld %6lld %8lld %s\n", (long long)r->id,
            plait_aggstore_round_state_name(r->state), plait_aggstore_kind_name(r->kind), fmt_time(r->started, a, sizeof(a)),
            fmt_time(r->ended, b, sizeof(b)), (long long)r->base_version, (long long)r->new_version,
            (long long)r->stats.participants, (long long)r->stats.dropouts, r->reason);
    return 0;
}

typedef struct {
    plait_aggstore_device_t *v;
    size_t n, cap;
} devlist_t;

static int collect_dev(void *ud, const plait_aggstore_device_t *d)
{
    devlist_t *l = ud;
    if (l->n == l->cap) {
        size_t cap = l->cap ? 2 * l->cap : 64;
        plait_aggstore_device_t *v = realloc(l->v, cap * sizeof(*v));
        if (!v) return plait_fail(PLAIT_ENOMEM, "devices: %zu rows", cap);
        l->v = v;
        l->cap = cap;
    }
    l->v[l->n++] = *d;
    return 0;
}

/* The operator's view: labels next to the opaque ids the logs print. */
static int cmd_devices(int argc, char **argv, FILE *out, FILE *err)
{
    const char *dir;
    int help, rc = parse_dir_args("devices", argc, argv, NULL, 0, &dir, NULL, NULL, &help, err);
    if (rc != 0) return rc;
    if (help) {
        fputs("usage: " PROG " devices DIR\n\nOne line per enrolled device: its label, its id (the certificate CN the\n"
              "logs print), revoked or not, when last seen, rounds it contributed to.\n",
              out);
        return 0;
    }
    plait_aggstore_t *st = NULL;
    if (open_store(dir, 0, &st, err, "devices") != 0) return 1;
    devlist_t l = {0};
    rc = plait_aggstore_devices_foreach(st, collect_dev, &l);
    if (rc == 0) fprintf(out, "%-24s %-32s %-7s %-20s %s\n", "label", "id", "revoked", "last_seen", "rounds");
    for (size_t i = 0; rc == 0 && i < l.n; i++) {
        char label[PLAIT_AGGSTORE_MAX_DEVICE_ID + 1];
        int lr = plait_aggstore_device_label(st, l.v[i].id, label);
        if (lr == PLAIT_ENOENT) snprintf(label, sizeof(label), "-");
        else if (lr != 0) rc = lr;
        if (rc == 0)
            fprintf(out, "%-24s %-32s %-7s %-20s %lld\n", label, l.v[i].id, l.v[i].revoked ? "yes" : "no",
                    l.v[i].last_seen ? fmt_time(l.v[i].last_seen, (char[32]){0}, 32) : "never",
                    (long long)l.v[i].rounds_participated);
    }
    plait_aggstore_close(st);
    free(l.v);
    if (rc != 0) {
        fprintf(err, PROG " devices: %s (%s)\n", plait_errmsg(), plait_err_name(rc));
        return 1;
    }
    return 0;
}

static int cmd_rounds(int argc, char **argv, FILE *out, FILE *err)
{
    flag_t flags[] = {{"--last", 1, NULL}, {"--json", 0, NULL}};
    const char *dir;
    int help, rc = parse_dir_args("rounds", argc, argv, flags, 2, &dir, NULL, NULL, &help, err);
    if (rc != 0) return rc;
    if (help) {
        fputs("usage: " PROG " rounds DIR [--last N] [--json]\n\nOne line per round, oldest first (with --last: the newest N, newest first).\n"
              "  --json    one JSON object per line (round, state, kind, started, ended, base_version,\n"
              "            new_version, participants, dropouts, reason), no header\n",
              out);
        return 0;
    }
    uint64_t last = 0;
    if (flags[0].value && parse_count(flags[0].value, 1000000000, &last) != 0) {
        fprintf(err, PROG " rounds: bad value '%s' for --last\n", flags[0].value);
        return 2;
    }
    plait_aggstore_t *st = NULL;
    if (open_store(dir, 0, &st, err, "rounds") != 0) return 1;
    scan_t sc;
    memset(&sc, 0, sizeof(sc));
    sc.out = out;
    sc.json = flags[1].value != NULL;
    if (!sc.json)
        fprintf(out, "%-6s %-9s %-8s %-20s %-20s %5s %5s %6s %8s %s\n", "round", "state", "kind", "started", "ended",
                "base", "new", "sel", "dropouts", "reason");
    /* --last N: the newest N, newest first. */
    rc = plait_aggstore_rounds_foreach(st, last != 0, (size_t)last, print_round, &sc);
    plait_aggstore_close(st);
    if (rc != 0) {
        fprintf(err, PROG " rounds: %s (%s)\n", plait_errmsg(), plait_err_name(rc));
        return 1;
    }
    return 0;
}

/* ---- federated evaluation (cli_eval.c) --------------------------------------- */

static int cmd_evals(int argc, char **argv, FILE *out, FILE *err)
{
    flag_t flags[] = {{"--last", 1, NULL}, {"--json", 0, NULL}};
    const char *dir;
    int help, rc = parse_dir_args("evals", argc, argv, flags, 2, &dir, NULL, NULL, &help, err);
    if (rc != 0) return rc;
    if (help) {
        fputs("usage: " PROG " evals DIR [--last N] [--json]\n\nFederated evaluations, oldest first (--last: the newest N):\n"
              "the version measured, the devices in the mean (>= min_cohort) and the mean of\n"
              "their held-out losses, each clipped to loss_max. No device's own loss exists here.\n"
              "  --json    one JSON object per line (round, version, created, devices, mean_loss,\n"
              "            perplexity, loss_max), no header\n",
              out);
        return 0;
    }
    uint64_t last = 0;
    if (flags[0].value && parse_count(flags[0].value, 1000000000, &last) != 0) {
        fprintf(err, PROG " evals: bad value '%s' for --last\n", flags[0].value);
        return 2;
    }
    plait_aggstore_t *st = NULL;
    if (open_store(dir, 0, &st, err, "evals") != 0) return 1;
    rc = plait__cli_evals_print(st, (size_t)last, flags[1].value != NULL, out);
    plait_aggstore_close(st);
    if (rc != 0) {
        fprintf(err, PROG " evals: %s (%s)\n", plait_errmsg(), plait_err_name(rc));
        return 1;
    }
    return 0;
}

static int cmd_evaluate(int argc, char **argv, FILE *out, FILE *err)
{
    const char *dir;
    int help, rc = parse_dir_args("evaluate", argc, argv, NULL, 0, &dir, NULL, NULL, &help, err);
    if (rc != 0) return rc;
    if (help) {
        fputs("usage: " PROG " evaluate DIR\n\nQueue one federated evaluation of the current version: the running service\n"
              "makes its next round an evaluation round (devices report their clipped held-out\n"
              "loss through secure aggregation; `evals` shows the mean). Needs secure_agg = true\n"
              "and dp = none in DIR/aggregator.conf.\n",
              out);
        return 0;
    }
    plait_aggcfg_t c;
    if ((rc = load_config("evaluate", dir, NULL, 0, &c, err)) != 0) return rc;
    if (plait_aggcfg_eval_allowed(&c) != 0) {
        fprintf(err, PROG " evaluate: %s\n", plait_errmsg());
        return 1;
    }
    plait_aggstore_t *st = NULL;
    if (open_store(dir, 0, &st, err, "evaluate") != 0) return 1;
    rc = plait_aggstore_eval_request(st);
    plait_aggstore_close(st);
    if (rc != 0) {
        fprintf(err, PROG " evaluate: %s (%s)\n", plait_errmsg(), plait_err_name(rc));
        return 1;
    }
    fputs("evaluation queued: the service's next round evaluates the current version\n", out);
    return 0;
}

/* ---- export ----------------------------------------------------------------- */

static int cmd_export(int argc, char **argv, FILE *out, FILE *err)
{
    flag_t flags[] = {{"--version", 1, NULL}, {"--out", 1, NULL}, {"--format", 1, NULL}};
    const char *dir;
    int help, rc = parse_dir_args("export", argc, argv, flags, 3, &dir, NULL, NULL, &help, err);
    if (rc != 0) return rc;
    if (help) {
        fputs("usage: " PROG " export DIR --version N --out PATH [--format plait|peft|gguf]\n\n"
              "Write global adapter version N as a safetensors LoRA adapter (the file\n"
              "plait-agent and the engine load), after checking its hash and that it loads\n"
              "against the deployment's base model. --format peft writes a Hugging Face PEFT\n"
              "directory PATH (adapter_model.safetensors, adapter_config.json); --format gguf\n"
              "a llama.cpp GGUF LoRA adapter file (see docs/models.md).\n",
              out);
        return 0;
    }
    uint64_t v = 0;
    if (!flags[0].value || !flags[1].value) {
        fputs(PROG " export: need --version and --out (try --help)\n", err);
        return 2;
    }
    if (parse_count(flags[0].value, INT64_MAX, &v) != 0) {
        fprintf(err, PROG " export: bad value '%s' for --version\n", flags[0].value);
        return 2;
    }
    const char *fmt = flags[2].value ? flags[2].value : "plait";
    if (strcmp(fmt, "plait") != 0 && strcmp(fmt, "peft") != 0 && strcmp(fmt, "gguf") != 0) {
        fprintf(err, PROG " export: bad value '%.40s' for --format (plait, peft, gguf)\n", fmt);
        return 2;
    }
    plait_aggcfg_t c;
    if ((rc = load_config("export", dir, NULL, 0, &c, err)) != 0) return rc;
    plait_aggstore_t *st = NULL;
    if (open_store(dir, 0, &st, err, "export") != 0) return 1;
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
        if (strcmp(fmt, "peft") == 0) rc = plait_peft_export(&l, flags[1].value);
        else if (strcmp(fmt, "gguf") == 0) rc = plait_lora_gguf_export(&l, flags[1].value);
        else rc = plait_adapter_save(flags[1].value, &l, m.sha256);
        if (rc != 0) {
            fprintf(err, PROG " export: %s: %s\n", flags[1].value, plait_errmsg());
            rc = 1;
        } else {
            char hex[65];
            plait_hex(ver.sha256, 32, hex);
            fprintf(out, "exported version %llu (round %lld, sha256 %s) to %s (%s)\n", (unsigned long long)v,
                    (long long)ver.round_id, hex, flags[1].value, fmt);
        }
    }
    plait_lora_free(&l);
    plait_model_free(&m);
    plait_aggstore_version_free(&ver);
    return rc;
}

/* ---- privacy DIR --------------------------------------------------------------- */

static int cmd_privacy_dir(int argc, char **argv, FILE *out, FILE *err)
{
    flag_t flags[] = {{"--delta", 1, NULL}, {"--json", 0, NULL}};
    const char *dir;
    int help, rc = parse_dir_args("privacy", argc, argv, flags, 2, &dir, NULL, NULL, &help, err);
    if (rc != 0) return rc;
    if (help) {
        fputs("usage: " PROG " privacy DIR [--delta D] [--json]\n\n"
              "Epsilon spent so far by the deployment in DIR, two figures at delta D (default:\n"
              "the delta recorded with the latest round):\n"
              "  amortized   every central-DP round of the privacy ledger (sampling rate q,\n"
              "              noise multiplier, steps) recomposed with the RDP accountant.\n"
              "              Holds only if every round Poisson-sampled each device with\n"
              "              probability q and who was sampled stays secret.\n"
              "  worst case  per device, without amplification by sampling: q = 1 composed\n"
              "              over the most DP rounds any one device joined, at the smallest\n"
              "              noise multiplier of the ledger. Needs no sampling assumption.\n"
              "Without DIR, `privacy --q ...` is the calculator (see `privacy --help`).\n",
              out);
        return 0;
    }
    double delta = 0;
    if (flags[0].value && (parse_double(flags[0].value, &delta) != 0 || !(delta > 0 && delta < 1))) {
        fprintf(err, PROG " privacy: bad value '%s' for --delta (want 0 < delta < 1)\n", flags[0].value);
        return 2;
    }
    plait_aggstore_t *st = NULL;
    if (open_store(dir, 0, &st, err, "privacy") != 0) return 1;
    plait_accountant_t acc;
    plait_aggstore_privacy_t pv;
    if ((rc = plait_accountant_init(&acc, NULL, 0)) != 0 || (rc = plait_aggstore_ledger_total(st, &pv)) != 0 ||
        (rc = plait_aggstore_ledger_compose(st, &acc)) != 0) {
        fprintf(err, PROG " privacy: %s (%s)\n", plait_errmsg(), plait_err_name(rc));
        plait_aggstore_close(st);
        return 1;
    }
    plait_aggstore_close(st);
    if (delta == 0) delta = pv.delta;
    double eps = 0, order = 0;
    if (pv.rounds > 0) {
        if ((rc = plait_accountant_epsilon(&acc, delta, PLAIT_EPS_IMPROVED, &eps, &order)) != 0) {
            fprintf(err, PROG " privacy: %s (%s)\n", plait_errmsg(), plait_err_name(rc));
            return 1;
        }
    }
    double worst = 0;
    /* Distributed discrete Gaussian rows compose in full (q = 1): their ε needs no sampling
     * assumption. A ledger of only those has that ε as its worst case; a mixed one has no
     * per-device bound here (the Gaussian one below would not hold for the ddg rounds). */
    const int all_ddg = pv.rounds > 0 && pv.ddg_rounds == pv.rounds;
    const char *mech = pv.ddg_rounds == 0 ? "gaussian" : all_ddg ? "ddg" : "gaussian+ddg";
    if (all_ddg) worst = eps;
    else if (pv.ddg_rounds > 0) worst = INFINITY;
    else if (pv.rounds > 0 && !(pv.min_noise_multiplier > 0)) worst = INFINITY; /* a round without noise */
    else if (pv.rounds > 0 &&
        (rc = plait_sel_worst_epsilon((uint64_t)pv.max_device_rounds, pv.min_noise_multiplier, delta, &worst)) != 0) {
        fprintf(err, PROG " privacy: %s (%s)\n", plait_errmsg(), plait_err_name(rc));
        return 1;
    }
    const int valid = pv.poisson_rounds + pv.ddg_rounds == pv.rounds;
    static const char AMORTIZED[] = "every DP round Poisson-sampled each device with the recorded q from the "
                                    "server's CSPRNG, and who was sampled stays secret";
    static const char WORST[] = "none about sampling: q = 1 over the most DP rounds one device joined, at the "
                                "smallest recorded noise multiplier";
    static const char WORST_DDG[] = "none about sampling: every distributed discrete Gaussian round composed in "
                                    "full (q = 1) with the devices that survived it";
    if (flags[1].value) {
        char e[32], d[32], w[32], z[32];
        fmt_double(d, sizeof(d), delta);
        if (isfinite(eps)) fmt_double(e, sizeof(e), eps);
        if (isfinite(worst)) fmt_double(w, sizeof(w), worst);
        fmt_double(z, sizeof(z), pv.min_noise_multiplier);
        fprintf(out,
                "{\"dp_rounds\": %lld, \"steps\": %lld, \"epsilon\": %s, \"delta\": %s, \"poisson_rounds\": %lld, "
                "\"amortized_valid\": %s, \"amortized_assumes\": \"%s\", \"worst_case_epsilon\": %s, "
                "\"max_device_rounds\": %lld, \"worst_case_noise_multiplier\": %s, \"worst_case_assumes\": \"%s\", "
                "\"mechanism\": \"%s\", \"ddg_rounds\": %lld}\n",
                (long long)pv.rounds, (long long)pv.steps, isfinite(eps) ? e : "null", d, (long long)pv.poisson_rounds,
                valid ? "true" : "false", AMORTIZED, isfinite(worst) ? w : "null", (long long)pv.max_device_rounds, z,
                all_ddg ? WORST_DDG : WORST, mech, (long long)pv.ddg_rounds);
    } else if (pv.rounds == 0) {
        fputs("no DP rounds committed: epsilon 0\n", out);
    } else {
        fprintf(out, "epsilon: %.10g\ndelta: %.10g\norder: %.10g\n(%lld DP rounds recomposed from the ledger)\n", eps,
                delta, order, (long long)pv.rounds);
        fprintf(out, "mechanism: %s\n", all_ddg ? "ddg (distributed discrete Gaussian, Kairouz-Liu-Steinke 2021)"
                                                 : mech);
        if (!all_ddg) fprintf(out, "  amortized: assumes %s\n", AMORTIZED);
        if (!valid)
            fprintf(out, "  NOT VALID here: %lld of %lld DP rounds were not Poisson-sampled (first-come selection)\n",
                    (long long)(pv.rounds - pv.poisson_rounds), (long long)pv.rounds);
        if (all_ddg)
            fprintf(out, "worst_case_epsilon: %.10g\n  assumes: %s\n", worst, WORST_DDG);
        else
            fprintf(out, "worst_case_epsilon: %.10g\n  per device: %lld DP rounds joined at most, noise multiplier %.10g\n"
                    "  assumes: %s\n",
                    worst, (long long)pv.max_device_rounds, pv.min_noise_multiplier, WORST);
    }
    return 0;
}

/* `privacy` with a DIR is the deployment report; with flags only, the calculator. */
static int cmd_privacy_any(int argc, char **argv, FILE *out, FILE *err)
{
    for (int i = 1; i < argc; i++)
        if (argv[i][0] != '-') {
            /* a value of the calculator's flags is never a bare first word here */
            if (i == 1 || argv[i - 1][0] != '-' || strchr(argv[i - 1], '=') != NULL)
                return cmd_privacy_dir(argc, argv, out, err);
            break;
        }
    return cmd_privacy(argc, argv, out, err);
}

/* ---- dispatch -------------------------------------------------------------- */

static const command_t commands[] = {
    {"init", "create a deployment: CA, server certificate, database, aggregator.conf", cmd_init},
    {"enroll", "issue a device certificate and record the device", cmd_enroll},
    {"import-enrollment", "record a device enrolled on an offline CA host", cmd_import_enrollment},
    {"revoke", "revoke a device (by label, id, certificate, fingerprint or serial)", cmd_revoke},
    {"renew", "issue a new certificate for a device, keeping its id; revoke the old one", cmd_renew},
    {"cert-info", "device id, serial, fingerprint and validity of a certificate", cmd_cert_info},
    {"serve", "run the aggregator service", cmd_serve},
    {"status", "summary of a deployment", cmd_status},
    {"devices", "list enrolled devices: label, id, state", cmd_devices},
    {"rounds", "list a deployment's rounds", cmd_rounds},
    {"evals", "list federated evaluations: version, devices, mean held-out loss", cmd_evals},
    {"evaluate", "queue a federated evaluation of the current version", cmd_evaluate},
    {"export", "write a global adapter version (plait, PEFT or GGUF adapter)", cmd_export},
    {"privacy", "privacy spent: of a deployment (DIR), or by given DP-FedAvg settings", cmd_privacy_any},
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
