/*
 * cli_int.h (private to aggregator/): what the plait-aggregator commands share.
 *
 * cli.c holds the command table, the dispatcher, the shared argument handling
 * and init, serve and export; cli_pki.c the certificate commands (enroll,
 * import-enrollment, revoke, renew, cert-info); cli_report.c the reports
 * (status, devices, rounds, privacy). Every command is
 * `int f(int argc, char **argv, FILE *out, FILE *err)` (argv[0] is its name)
 * and keeps cli.c's conventions.
 */
#ifndef PLAIT_AGG_CLI_INT_H
#define PLAIT_AGG_CLI_INT_H

#include <stdint.h>
#include <stdio.h>

#include "plait/aggcfg.h"
#include "plait/aggstore.h"
#include "plait/flags.h"

#define PROG "plait-aggregator"
#define MAX_SETS 64

/* plait__aggcli_flags(): parsed, go on. */
#define AGGCLI_FLAGS_OK (-1)
#define MISSING_DIR "missing deployment directory DIR (try --help)"
/* The repeatable --set key=value of init and serve. */
#define ROW_SET(list)                                                                              \
    PLAIT_F_LIST("set", &(list), "key=value", "any other setting of aggregator.conf (repeatable)")

/**
 * Parse a subcommand's flags (argv[0] is its name) with cmd, strict style.
 * pos (may be NULL): its one positional argument, required (missing: print
 * "PROG name: <missing>"). Returns AGGCLI_FLAGS_OK, or the exit status to
 * return: 0 after --help (written to out), 2 after one line to err.
 */
int plait__aggcli_flags(const char *name, plait_flags_cmd_t *cmd, const char **pos,
                        const char *missing, int argc, char **argv, FILE *out, FILE *err);

/* A finite double, the whole string. */
int plait__aggcli_parse_double(const char *s, double *out);
/* A positive decimal integer, the whole string, at most max. */
int plait__aggcli_parse_count(const char *s, uint64_t max, uint64_t *out);
/* Shortest %g form of a finite double that reads back exactly (a valid JSON number). */
void plait__aggcli_fmt_double(char *buf, size_t len, double v);
int plait__aggcli_open_store(const char *dir, int create, plait_aggstore_t **st, FILE *err,
                             const char *cmd);
/* DIR/aggregator.conf over the defaults, then --set flags; validated. Returns 0, 1 or 2. */
int plait__aggcli_load_config(const char *cmd, const char *dir, const char **sets, size_t n_sets,
                              plait_aggcfg_t *c, FILE *err);
/* t as an ISO 8601 UTC time in buf, or "-" when t <= 0. */
const char *plait__aggcli_fmt_time(int64_t t, char *buf, size_t len);

int plait__aggcli_enroll(int argc, char **argv, FILE *out, FILE *err);
int plait__aggcli_import_enrollment(int argc, char **argv, FILE *out, FILE *err);
int plait__aggcli_revoke(int argc, char **argv, FILE *out, FILE *err);
int plait__aggcli_renew(int argc, char **argv, FILE *out, FILE *err);
int plait__aggcli_cert_info(int argc, char **argv, FILE *out, FILE *err);
int plait__aggcli_status(int argc, char **argv, FILE *out, FILE *err);
int plait__aggcli_devices(int argc, char **argv, FILE *out, FILE *err);
int plait__aggcli_rounds(int argc, char **argv, FILE *out, FILE *err);
int plait__aggcli_privacy_any(int argc, char **argv, FILE *out, FILE *err);

#endif /* PLAIT_AGG_CLI_INT_H */
