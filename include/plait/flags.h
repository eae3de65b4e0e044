/*
 * flags.h: one table per command, from which its flags are parsed (getopt_long
 * underneath) and its --help is written. Shared by plait-agent and the other
 * command lines; values go through the strict parsers of cli.h.
 *
 * A command describes each flag once: its long name, the kind of value, where
 * the value goes, bounds, a placeholder and one line of help. Rules over the
 * table ("--db is required", "give exactly one of --text and --jsonl") are
 * checked after every flag was read. Errors are recorded with plait_fail() as
 * one line naming the flag; the caller prints them and exits with its usage
 * status:
 *   unknown flag or missing value: '--bogus' (see --help)
 *   --rank: '0' is outside 1..1024
 *   unexpected argument 'x'
 *   --db is required
 *
 * The table holds pointers into the caller's variables, so it is usually an
 * automatic array built where the variables (with their defaults) live;
 * --help shows a flag's default from that variable (as it was before parsing)
 * when show_default is set.
 *
 * Thread-safety: not reentrant (getopt_long keeps global state).
 */
#ifndef PLAIT_FLAGS_H
#define PLAIT_FLAGS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>

#include "plait/plait.h"

/** What a flag's value is and where it goes. */
typedef enum {
    PLAIT_FLAG_SET,    /**< no value: *(int *)dest = set */
    PLAIT_FLAG_STR,    /**< *(const char **)dest = the value (argv's storage) */
    PLAIT_FLAG_INT,    /**< int in lo..hi */
    PLAIT_FLAG_LLONG,  /**< long long in lo..hi */
    PLAIT_FLAG_U32,    /**< uint32_t in lo..hi (0 <= lo, hi <= UINT32_MAX) */
    PLAIT_FLAG_SIZE,   /**< size_t in lo..hi (0 <= lo) */
    PLAIT_FLAG_BOOL,   /**< no value: *(bool *)dest = set != 0 */
    PLAIT_FLAG_U64,    /**< uint64_t, decimal or 0x hex */
    PLAIT_FLAG_DOUBLE, /**< finite double in dlo..dhi */
    PLAIT_FLAG_FLOAT,  /**< finite float in dlo..dhi (parsed as a double) */
    PLAIT_FLAG_LIST,   /**< repeatable: each value appended to a plait_flag_list_t */
    PLAIT_FLAG_CUSTOM, /**< parse(dest, value) */
    PLAIT_FLAG_ACTION, /**< no value: parse(dest, NULL) */
} plait_flag_kind_t;

/** The values of a repeatable flag, in the order given; v has cap slots. */
typedef struct {
    const char **v;
    size_t n, cap;
} plait_flag_list_t;

/** One flag of a command's table. */
typedef struct {
    const char *name; /**< long name without the dashes: "rank" */
    plait_flag_kind_t kind;
    void *dest;       /**< where the value goes (type by kind) */
    const char *meta; /**< value placeholder in --help ("N", "FILE"); unused for SET */
    const char *help; /**< help text (may hold '\n'); NULL: accepted, not listed */
    long long lo, hi; /**< INT, LLONG, U32, SIZE bounds */
    double dlo, dhi;  /**< DOUBLE, FLOAT bounds */
    int set;          /**< SET, BOOL: the value stored */
    /** CUSTOM, ACTION: store value (NULL for ACTION); 0 or plait_fail(PLAIT_EINVAL, ...) */
    int (*parse)(void *dest, const char *value);
    int show_default; /**< --help appends "(default V)", dest's value before parsing */
    int seen;         /**< OUT: how many times the flag was given */
    char def0[48];    /**< internal: the default as it was before parsing */
} plait_flag_t;

/* Table rows, every field named (strict C11, no missing initializers). def: 1
 * appends "(default V)" to the help line (show_default). */
#define PLAIT_FLAG_ROW(n, k, d, m, h, l, u, dl, du, v, fn, def)                                    \
    {                                                                                              \
        .name = (n), .kind = (k), .dest = (d), .meta = (m), .help = (h), .lo = (l), .hi = (u),     \
        .dlo = (dl), .dhi = (du), .set = (v), .parse = (fn), .show_default = (def), .seen = 0,     \
        .def0 = ""                                                                                 \
    }
#define PLAIT_F_SET(n, d, v, h)                                                                    \
    PLAIT_FLAG_ROW(n, PLAIT_FLAG_SET, d, NULL, h, 0, 0, 0, 0, v, NULL, 0)
#define PLAIT_F_STR(n, d, m, h) PLAIT_FLAG_ROW(n, PLAIT_FLAG_STR, d, m, h, 0, 0, 0, 0, 0, NULL, 0)
#define PLAIT_F_INT(n, d, lo, hi, m, h, def)                                                       \
    PLAIT_FLAG_ROW(n, PLAIT_FLAG_INT, d, m, h, lo, hi, 0, 0, 0, NULL, def)
#define PLAIT_F_LLONG(n, d, lo, hi, m, h, def)                                                     \
    PLAIT_FLAG_ROW(n, PLAIT_FLAG_LLONG, d, m, h, lo, hi, 0, 0, 0, NULL, def)
#define PLAIT_F_U32(n, d, lo, hi, m, h, def)                                                       \
    PLAIT_FLAG_ROW(n, PLAIT_FLAG_U32, d, m, h, lo, hi, 0, 0, 0, NULL, def)
#define PLAIT_F_SIZE(n, d, lo, hi, m, h, def)                                                      \
    PLAIT_FLAG_ROW(n, PLAIT_FLAG_SIZE, d, m, h, lo, hi, 0, 0, 0, NULL, def)
#define PLAIT_F_BOOL(n, d, h) PLAIT_FLAG_ROW(n, PLAIT_FLAG_BOOL, d, NULL, h, 0, 0, 0, 0, 1, NULL, 0)
#define PLAIT_F_U64(n, d, m, h, def)                                                               \
    PLAIT_FLAG_ROW(n, PLAIT_FLAG_U64, d, m, h, 0, 0, 0, 0, 0, NULL, def)
#define PLAIT_F_DOUBLE(n, d, lo, hi, m, h, def)                                                    \
    PLAIT_FLAG_ROW(n, PLAIT_FLAG_DOUBLE, d, m, h, 0, 0, lo, hi, 0, NULL, def)
#define PLAIT_F_FLOAT(n, d, lo, hi, m, h, def)                                                     \
    PLAIT_FLAG_ROW(n, PLAIT_FLAG_FLOAT, d, m, h, 0, 0, lo, hi, 0, NULL, def)
#define PLAIT_F_LIST(n, d, m, h) PLAIT_FLAG_ROW(n, PLAIT_FLAG_LIST, d, m, h, 0, 0, 0, 0, 0, NULL, 0)
#define PLAIT_F_ACTION(n, d, fn, h)                                                                \
    PLAIT_FLAG_ROW(n, PLAIT_FLAG_ACTION, d, NULL, h, 0, 0, 0, 0, 0, fn, 0)
#define PLAIT_F_CUSTOM(n, d, fn, m, h)                                                             \
    PLAIT_FLAG_ROW(n, PLAIT_FLAG_CUSTOM, d, m, h, 0, 0, 0, 0, 0, fn, 0)

/** Checks over the table, made in order after parsing. */
typedef enum {
    PLAIT_RULE_REQUIRED, /**< every name given: "--db is required", "--key and --csr are required"
                          */
    PLAIT_RULE_ONE_OF,   /**< exactly one given: "give exactly one of --db and --text" */
    PLAIT_RULE_AT_MOST_ONE, /**< "give at most one of --once and --daemon" */
    PLAIT_RULE_NEEDS,       /**< names[0] given only with names[1]: "--rounds needs --daemon" */
    /* Shown in the usage line only; the command checks them itself, in its own words. */
    PLAIT_RULE_SHOW_REQUIRED, /**< listed bare, as required */
    PLAIT_RULE_SHOW_ONE_OF,   /**< listed as a group "(--a A | --b B)" */
} plait_flag_rule_kind_t;

#define PLAIT_FLAG_RULE_MAX 6

typedef struct {
    plait_flag_rule_kind_t kind;
    const char *names[PLAIT_FLAG_RULE_MAX]; /**< flag names without dashes; unused slots NULL */
} plait_flag_rule_t;

/** A command: its table, rules and help prose. */
typedef struct {
    const char *prog; /**< "plait-agent ingest": the usage line's start */
    const char *args; /**< positional part of the usage line, or NULL */
    const char
        *synopsis;     /**< replaces the generated usage line: what follows "usage: ", '\n'-ended */
    const char *about; /**< prose between the usage line and the flags, or NULL */
    const char *epilogue; /**< prose after the flag lines (examples, notes), or NULL */
    plait_flag_t *flags;
    size_t n_flags;
    const plait_flag_rule_t *rules;
    size_t n_rules;
    int extra_args; /**< 0: a positional argument is an error; 1: left to the caller */
    /**
     * 0: getopt_long style (abbreviations, a flag may repeat: the last wins).
     * 1: strict style, as plait-aggregator parses: exact names, each flag at
     * most once (LIST excepted), value as the next argument or after '=';
     * positional arguments fill pos[0..n_pos) in order. Its messages:
     * "unknown flag '--x' (try --help)", "unknown argument 'x' (try --help)",
     * "--x given twice", "--x takes no value", "--x needs a value" (a LIST:
     * "--set needs key=value", from its meta).
     */
    int strict;
    const char **pos; /**< strict: OUT positional arguments (NULL where not given) */
    const char
        *unknown; /**< OUT: the argument that was an unknown flag or lacked its value, or NULL */
    size_t n_pos;
} plait_flags_cmd_t;

/** plait_flags_parse(): --help was given and written. */
#define PLAIT_FLAGS_HELP 1

/**
 * \brief Parse argv[1..argc) (argv[0] is the command's name) against cmd.
 * Flags are read in order; the first bad one stops parsing. Then an
 * unexpected positional argument (unless extra_args), then the rules.
 * --help (or -h) writes plait_flags_help() to help_out and stops.
 * \param first_arg OUT (may be NULL): index in argv of the first positional
 *        argument after parsing (getopt permutes them to the end).
 * \return 0, PLAIT_FLAGS_HELP, PLAIT_EINVAL (message recorded) or PLAIT_ENOMEM.
 */
int plait_flags_parse(plait_flags_cmd_t *cmd, int argc, char **argv, FILE *help_out,
                      int *first_arg /* OUT */);

/** \brief Write cmd's help: usage line, about, one line per listed flag, epilogue. */
void plait_flags_help(const plait_flags_cmd_t *cmd, FILE *out);

/** \brief How many times flag name was given in the last parse (0 if unknown). */
int plait_flags_seen(const plait_flags_cmd_t *cmd, const char *name);

#endif /* PLAIT_FLAGS_H */
