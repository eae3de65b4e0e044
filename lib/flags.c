/*
 * flags.c: table-driven flag parsing and generated --help (see flags.h).
 *
 * The table becomes a getopt_long option array (index + FLAG_BASE as each
 * option's value); values go through plait_cli_int/u64/double, so a bad value
 * reads the same in every command ("--rank: '0' is outside 1..1024").
 */
#include "plait/flags.h"

#include <getopt.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "plait/cli.h"

#define FLAG_BASE 1000
#define USAGE_WIDTH 100 /* wrap the usage line before this column */
#define LABEL_MAX 24    /* flag labels longer than this do not widen the help column */

static int fmt_default(const plait_flag_t *f, char *buf, size_t cap);

static int no_value(const plait_flag_t *f)
{
    return f->kind == PLAIT_FLAG_SET || f->kind == PLAIT_FLAG_BOOL || f->kind == PLAIT_FLAG_ACTION;
}

static plait_flag_t *find(const plait_flags_cmd_t *cmd, const char *name)
{
    for (size_t i = 0; i < cmd->n_flags; i++)
        if (strcmp(cmd->flags[i].name, name) == 0) return &cmd->flags[i];
    return NULL;
}

int plait_flags_seen(const plait_flags_cmd_t *cmd, const char *name)
{
    const plait_flag_t *f = find(cmd, name);
    return f ? f->seen : 0;
}

/* Store one value of flag f (its text as given on the command line: arg). */
static int apply(plait_flag_t *f, const char *arg)
{
    char flag[80];
    snprintf(flag, sizeof(flag), "--%.70s", f->name);
    long long v;
    double d;
    switch (f->kind) {
    case PLAIT_FLAG_SET:
        *(int *)f->dest = f->set;
        return 0;
    case PLAIT_FLAG_BOOL:
        *(bool *)f->dest = f->set != 0;
        return 0;
    case PLAIT_FLAG_STR:
        *(const char **)f->dest = arg;
        return 0;
    case PLAIT_FLAG_INT:
        if (plait_cli_int(flag, arg, f->lo, f->hi, &v) != 0) return PLAIT_EINVAL;
        *(int *)f->dest = (int)v;
        return 0;
    case PLAIT_FLAG_LLONG:
        return plait_cli_int(flag, arg, f->lo, f->hi, (long long *)f->dest);
    case PLAIT_FLAG_U32:
        if (plait_cli_int(flag, arg, f->lo, f->hi, &v) != 0) return PLAIT_EINVAL;
        *(uint32_t *)f->dest = (uint32_t)v;
        return 0;
    case PLAIT_FLAG_SIZE:
        if (plait_cli_int(flag, arg, f->lo, f->hi, &v) != 0) return PLAIT_EINVAL;
        *(size_t *)f->dest = (size_t)v;
        return 0;
    case PLAIT_FLAG_U64:
        return plait_cli_u64(flag, arg, (uint64_t *)f->dest);
    case PLAIT_FLAG_DOUBLE:
        return plait_cli_double(flag, arg, f->dlo, f->dhi, (double *)f->dest);
    case PLAIT_FLAG_FLOAT:
        if (plait_cli_double(flag, arg, f->dlo, f->dhi, &d) != 0) return PLAIT_EINVAL;
        *(float *)f->dest = (float)d;
        return 0;
    case PLAIT_FLAG_LIST: {
        plait_flag_list_t *l = f->dest;
        if (l->n >= l->cap) return plait_fail(PLAIT_EINVAL, "more than %zu %s flags", l->cap, flag);
        l->v[l->n++] = arg;
        return 0;
    }
    case PLAIT_FLAG_CUSTOM:
        return f->parse(f->dest, arg);
    case PLAIT_FLAG_ACTION:
        return f->parse(f->dest, NULL);
    }
    return plait_fail(PLAIT_EINVAL, "%s: unknown flag kind %d", flag, (int)f->kind);
}

/* "--a", "--a and --b", "--a, --b and --c" into buf. */
static void name_list(const plait_flag_rule_t *r, char *buf, size_t cap)
{
    size_t n = 0, used = 0;
    while (n < PLAIT_FLAG_RULE_MAX && r->names[n])
        n++;
    buf[0] = '\0';
    for (size_t i = 0; i < n && used < cap; i++) {
        const char *sep = i == 0 ? "" : i + 1 == n ? " and " : ", ";
        int w = snprintf(buf + used, cap - used, "%s--%s", sep, r->names[i]);
        if (w < 0) break;
        used += (size_t)w;
    }
}

static int check_rule(const plait_flags_cmd_t *cmd, const plait_flag_rule_t *r)
{
    size_t n = 0, given = 0;
    for (; n < PLAIT_FLAG_RULE_MAX && r->names[n]; n++)
        given += plait_flags_seen(cmd, r->names[n]) > 0;
    char list[400];
    name_list(r, list, sizeof(list));
    switch (r->kind) {
    case PLAIT_RULE_REQUIRED:
        if (given == n) return 0;
        return plait_fail(PLAIT_EINVAL, "%s %s required", list, n == 1 ? "is" : "are");
    case PLAIT_RULE_ONE_OF:
        if (given == 1) return 0;
        return plait_fail(PLAIT_EINVAL, "give exactly one of %s", list);
    case PLAIT_RULE_AT_MOST_ONE:
        if (given <= 1) return 0;
        return plait_fail(PLAIT_EINVAL, "give at most one of %s", list);
    case PLAIT_RULE_NEEDS:
        if (n < 2 || !plait_flags_seen(cmd, r->names[0]) || plait_flags_seen(cmd, r->names[1]))
            return 0;
        return plait_fail(PLAIT_EINVAL, "--%s needs --%s", r->names[0], r->names[1]);
    case PLAIT_RULE_SHOW_REQUIRED:
    case PLAIT_RULE_SHOW_ONE_OF:
        return 0;
    }
    return plait_fail(PLAIT_EINVAL, "unknown flag rule %d", (int)r->kind);
}

/* The strict style (flags.h): one pass over argv in order. */
static int parse_strict(plait_flags_cmd_t *cmd, int argc, char **argv, FILE *help_out)
{
    size_t npos = 0;
    for (size_t k = 0; k < cmd->n_pos; k++)
        cmd->pos[k] = NULL;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            plait_flags_help(cmd, help_out);
            return PLAIT_FLAGS_HELP;
        }
        if (a[0] != '-' && npos < cmd->n_pos) {
            cmd->pos[npos++] = a;
            continue;
        }
        const char *eq = strchr(a, '=');
        size_t nlen = eq ? (size_t)(eq - a) : strlen(a);
        plait_flag_t *f = NULL;
        for (size_t k = 0; k < cmd->n_flags && a[0] == '-' && a[1] == '-'; k++)
            if (strlen(cmd->flags[k].name) == nlen - 2 &&
                strncmp(cmd->flags[k].name, a + 2, nlen - 2) == 0)
                f = &cmd->flags[k];
        if (f == NULL) {
            cmd->unknown = a;
            return plait_fail(PLAIT_EINVAL, "unknown %s '%.*s' (try --help)",
                              a[0] == '-' ? "flag" : "argument", (int)nlen, a);
        }
        if (f->seen && f->kind != PLAIT_FLAG_LIST)
            return plait_fail(PLAIT_EINVAL, "--%s given twice", f->name);
        const char *v;
        if (no_value(f)) {
            if (eq) return plait_fail(PLAIT_EINVAL, "--%s takes no value", f->name);
            v = NULL;
        } else if (eq) {
            v = eq + 1;
        } else if (i + 1 < argc) {
            v = argv[++i];
        } else if (f->kind == PLAIT_FLAG_LIST && f->meta) {
            return plait_fail(PLAIT_EINVAL, "--%s needs %s", f->name, f->meta);
        } else {
            return plait_fail(PLAIT_EINVAL, "--%s needs a value", f->name);
        }
        f->seen++;
        int rc = apply(f, v);
        if (rc != 0) return rc;
    }
    return 0;
}

int plait_flags_parse(plait_flags_cmd_t *cmd, int argc, char **argv, FILE *help_out, int *first_arg)
{
    struct option *opts = calloc(cmd->n_flags + 2, sizeof(*opts));
    if (!opts) return plait_fail(PLAIT_ENOMEM, "flag table of %zu flags", cmd->n_flags);
    cmd->unknown = NULL;
    for (size_t i = 0; i < cmd->n_flags; i++) {
        plait_flag_t *f = &cmd->flags[i];
        f->seen = 0;
        if (!f->show_default || !fmt_default(f, f->def0, sizeof(f->def0))) f->def0[0] = '\0';
        opts[i].name = f->name;
        opts[i].has_arg = no_value(f) ? no_argument : required_argument;
        opts[i].val = FLAG_BASE + (int)i;
    }
    if (cmd->strict) {
        free(opts);
        int rc = parse_strict(cmd, argc, argv, help_out);
        if (first_arg) *first_arg = argc;
        for (size_t i = 0; rc == 0 && i < cmd->n_rules; i++)
            rc = check_rule(cmd, &cmd->rules[i]);
        return rc;
    }
    opts[cmd->n_flags].name = "help";
    opts[cmd->n_flags].has_arg = no_argument;
    opts[cmd->n_flags].val = 'h';
    /* optind 0 makes glibc start over, so that one process can parse several argv. */
    optind = 0;
    opterr = 0; /* unknown flags are reported below, in one line */
    int rc = 0, o;
    while (rc == 0 && (o = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        if (o == 'h') {
            plait_flags_help(cmd, help_out);
            rc = PLAIT_FLAGS_HELP;
        } else if (o >= FLAG_BASE && (size_t)(o - FLAG_BASE) < cmd->n_flags) {
            plait_flag_t *f = &cmd->flags[o - FLAG_BASE];
            f->seen++;
            rc = apply(f, optarg);
        } else {
            const char *f = optind > 0 && optind <= argc ? argv[optind - 1] : NULL;
            cmd->unknown = f;
            rc = plait_fail(PLAIT_EINVAL, "unknown flag or missing value: '%.60s' (see --help)",
                            f ? f : "?");
        }
    }
    free(opts);
    if (first_arg) *first_arg = optind;
    if (rc != 0) return rc;
    if (!cmd->extra_args && optind < argc)
        return plait_fail(PLAIT_EINVAL, "unexpected argument '%.60s'", argv[optind]);
    for (size_t i = 0; i < cmd->n_rules; i++)
        if ((rc = check_rule(cmd, &cmd->rules[i])) != 0) return rc;
    return 0;
}

/* ---- --help --------------------------------------------------------------- */

/* The first rule of kind k naming flag name, or NULL. */
static const plait_flag_rule_t *rule_of(const plait_flags_cmd_t *cmd, plait_flag_rule_kind_t k,
                                        const char *name)
{
    for (size_t i = 0; i < cmd->n_rules; i++) {
        if (cmd->rules[i].kind != k) continue;
        for (size_t j = 0; j < PLAIT_FLAG_RULE_MAX && cmd->rules[i].names[j]; j++)
            if (strcmp(cmd->rules[i].names[j], name) == 0) return &cmd->rules[i];
    }
    return NULL;
}

static size_t label(const plait_flag_t *f, char *buf, size_t cap)
{
    int w = no_value(f) || !f->meta ? snprintf(buf, cap, "--%s", f->name)
                                    : snprintf(buf, cap, "--%s %s", f->name, f->meta);
    return w < 0 ? 0 : (size_t)w >= cap ? cap - 1 : (size_t)w;
}

typedef struct {
    FILE *out;
    size_t col, indent;
} line_t;

/* Append " word" to the usage line, wrapping before USAGE_WIDTH. */
static void put_word(line_t *l, const char *word)
{
    size_t n = strlen(word);
    if (l->col + 1 + n > USAGE_WIDTH && l->col > l->indent) {
        fprintf(l->out, "\n%*s", (int)l->indent, "");
        l->col = l->indent;
        fputs(word, l->out);
        l->col += n;
        return;
    }
    fprintf(l->out, " %s", word);
    l->col += 1 + n;
}

/* A group rule's members as "(--a A | --b B)" or "[--a | --b]", at its first listed member. */
static void put_group(line_t *l, const plait_flags_cmd_t *cmd, const plait_flag_rule_t *r,
                      const char *open, const char *close)
{
    char word[400], lab[120];
    size_t used = (size_t)snprintf(word, sizeof(word), "%s", open);
    for (size_t j = 0; j < PLAIT_FLAG_RULE_MAX && r->names[j]; j++) {
        const plait_flag_t *f = find(cmd, r->names[j]);
        if (!f || !f->help) continue;
        label(f, lab, sizeof(lab));
        if (used < sizeof(word))
            used += (size_t)snprintf(word + used, sizeof(word) - used, "%s%s",
                                     used > strlen(open) ? " | " : "", lab);
    }
    if (used < sizeof(word)) snprintf(word + used, sizeof(word) - used, "%s", close);
    put_word(l, word);
}

/* Whether f is the first listed (help != NULL) member of rule r. */
static int first_member(const plait_flags_cmd_t *cmd, const plait_flag_rule_t *r,
                        const plait_flag_t *f)
{
    for (size_t j = 0; j < PLAIT_FLAG_RULE_MAX && r->names[j]; j++) {
        const plait_flag_t *g = find(cmd, r->names[j]);
        if (g && g->help) return g == f;
    }
    return 0;
}

static void usage_line(const plait_flags_cmd_t *cmd, FILE *out)
{
    if (cmd->synopsis) {
        fprintf(out, "usage: %s", cmd->synopsis);
        return;
    }
    line_t l = {out, 0, 0};
    fprintf(out, "usage: %s", cmd->prog);
    l.col = l.indent = strlen("usage: ") + strlen(cmd->prog);
    l.indent++;
    if (cmd->args) put_word(&l, cmd->args);
    char lab[120], word[130];
    for (size_t i = 0; i < cmd->n_flags; i++) {
        const plait_flag_t *f = &cmd->flags[i];
        if (!f->help) continue;
        const plait_flag_rule_t *r;
        if ((r = rule_of(cmd, PLAIT_RULE_ONE_OF, f->name)) != NULL ||
            (r = rule_of(cmd, PLAIT_RULE_SHOW_ONE_OF, f->name)) != NULL) {
            if (first_member(cmd, r, f)) put_group(&l, cmd, r, "(", ")");
            continue;
        }
        if ((r = rule_of(cmd, PLAIT_RULE_AT_MOST_ONE, f->name)) != NULL) {
            if (first_member(cmd, r, f)) put_group(&l, cmd, r, "[", "]");
            continue;
        }
        label(f, lab, sizeof(lab));
        if (rule_of(cmd, PLAIT_RULE_REQUIRED, f->name) ||
            rule_of(cmd, PLAIT_RULE_SHOW_REQUIRED, f->name))
            snprintf(word, sizeof(word), "%s", lab);
        else
            snprintf(word, sizeof(word), "[%s]%s", lab, f->kind == PLAIT_FLAG_LIST ? "..." : "");
        put_word(&l, word);
    }
    fputc('\n', out);
}

/* The current value of f's destination, for "(default V)"; 0 if it has none to show. */
static int fmt_default(const plait_flag_t *f, char *buf, size_t cap)
{
    switch (f->kind) {
    case PLAIT_FLAG_INT:
        snprintf(buf, cap, "%d", *(const int *)f->dest);
        return 1;
    case PLAIT_FLAG_LLONG:
        snprintf(buf, cap, "%lld", *(const long long *)f->dest);
        return 1;
    case PLAIT_FLAG_U32:
        snprintf(buf, cap, "%u", (unsigned)*(const uint32_t *)f->dest);
        return 1;
    case PLAIT_FLAG_SIZE:
        snprintf(buf, cap, "%zu", *(const size_t *)f->dest);
        return 1;
    case PLAIT_FLAG_U64:
        snprintf(buf, cap, "%llu", (unsigned long long)*(const uint64_t *)f->dest);
        return 1;
    case PLAIT_FLAG_DOUBLE:
        snprintf(buf, cap, "%g", *(const double *)f->dest);
        return 1;
    case PLAIT_FLAG_FLOAT:
        snprintf(buf, cap, "%g", (double)*(const float *)f->dest);
        return 1;
    case PLAIT_FLAG_STR:
        if (!*(const char *const *)f->dest) return 0;
        snprintf(buf, cap, "%s", *(const char *const *)f->dest);
        return 1;
    default:
        return 0;
    }
}

void plait_flags_help(const plait_flags_cmd_t *cmd, FILE *out)
{
    usage_line(cmd, out);
    if (cmd->about) fprintf(out, "\n%s", cmd->about);
    size_t width = 0;
    char lab[120], def[64];
    for (size_t i = 0; i < cmd->n_flags; i++) {
        if (!cmd->flags[i].help) continue;
        size_t n = label(&cmd->flags[i], lab, sizeof(lab));
        if (n > width && n <= LABEL_MAX) width = n;
    }
    if (!cmd->about) fputc('\n', out);
    for (size_t i = 0; i < cmd->n_flags; i++) {
        const plait_flag_t *f = &cmd->flags[i];
        if (!f->help) continue;
        size_t n = label(f, lab, sizeof(lab));
        fprintf(out, "  %s%*s", lab, n < width ? (int)(width - n) + 2 : 2, "");
        for (const char *p = f->help; *p; p++) {
            fputc(*p, out);
            if (*p == '\n') fprintf(out, "%*s", (int)width + 4, "");
        }
        if (f->show_default && f->def0[0])
            fprintf(out, " (default %s)", f->def0);
        else if (f->show_default && fmt_default(f, def, sizeof(def)))
            fprintf(out, " (default %s)", def);
        fputc('\n', out);
    }
    if (cmd->epilogue) fputs(cmd->epilogue, out);
}
