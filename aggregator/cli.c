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

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "plait/plait.h"
#include "plait/privacy.h"

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

/* ---- dispatch -------------------------------------------------------------- */

static const command_t commands[] = {
    {"privacy", "privacy spent (epsilon, best RDP order) by rounds of DP-FedAvg", cmd_privacy},
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
