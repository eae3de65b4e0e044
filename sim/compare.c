/*
 * compare.c: `plait-sim compare`, several runs' loss curves in one SVG chart
 * and a table of their final numbers.
 *
 *   plait-sim compare --out FILE.svg [--metric global|personal] [--x round|mb] [--title T] NAME=DIR...
 *
 * A DIR is one run (its metrics.csv) or a multi-seed run (`plait-sim --seeds N`:
 * its seeds.txt lists one run folder per seed). A multi-seed curve is the mean
 * over seeds with a shaded 95% confidence interval (Student t, n - 1 degrees of
 * freedom); the printed table gives the final mean ± the interval's half-width.
 * --x mb puts the cumulative megabytes moved (bytes_up + bytes_down) on the x
 * axis instead of the round: loss against communication cost.
 *
 * Files are untrusted: a missing column, a malformed line or too many rows is
 * an error naming the file; nothing is allocated from a size read in a file.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "plait/file.h"
#include "plait/flags.h"
#include "plait/sim.h"
#include "sim_int.h"

#define EXIT_USAGE 2
#define MAX_RUNS 16
#define MAX_SEEDS 64
#define MAX_POINTS 20001

double plait__sim_t95(size_t df)
{
    static const double t[] = {0,     12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
                               2.201, 2.179,  2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080,
                               2.074, 2.069,  2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042};
    if (df == 0) return NAN;
    return df < sizeof(t) / sizeof(t[0]) ? t[df] : 1.96;
}

/* Read column col of DIR/metrics.csv into y (rounds 0..), returning the count or -1. */
static long read_column(const char *dir, const char *col, double *y, size_t cap)
{
    char path[PLAIT_SIM_PATH_MAX + 32], line[4096];
    snprintf(path, sizeof(path), "%s/metrics.csv", dir);
    FILE *f = NULL;
    if (plait_file_fopen(path, NULL, &f) != 0) /* a FIFO is refused, not waited on */
        return plait_fail(PLAIT_ENOENT, "%s: cannot open (is %s a plait-sim --out folder?)", path, dir), -1;
    int idx = -1;
    if (fgets(line, sizeof(line), f)) {
        int k = 0;
        for (char *t = strtok(line, ",\n"); t; t = strtok(NULL, ",\n"), k++)
            if (strcmp(t, col) == 0) idx = k;
    }
    long n = 0;
    while (idx >= 0 && (size_t)n < cap && fgets(line, sizeof(line), f)) {
        /* Empty fields (NAN) matter here, so split by hand. */
        char *p = line;
        for (int k = 0; k < idx && p; k++) {
            p = strchr(p, ',');
            if (p) p++;
        }
        y[n++] = (p && *p && *p != ',' && *p != '\n') ? strtod(p, NULL) : NAN;
    }
    fclose(f);
    if (idx < 0) return plait_fail(PLAIT_EPROTO, "%s: no column %s", path, col), -1;
    return n;
}

/* Column col, or for --x mb the cumulative MB, of one run folder. */
static long read_run(const char *dir, const char *col, int x_mb, double *y, size_t cap)
{
    if (!x_mb) return read_column(dir, col, y, cap);
    double *down = malloc(cap * sizeof(double));
    if (!down) return plait_fail(PLAIT_ENOMEM, "compare"), -1;
    long n = read_column(dir, "bytes_up", y, cap), m = n >= 0 ? read_column(dir, "bytes_down", down, cap) : -1;
    double mb = 0;
    for (long i = 0; i < n && i < m; i++) {
        mb += ((isfinite(y[i]) ? y[i] : 0) + (isfinite(down[i]) ? down[i] : 0)) / 1e6;
        y[i] = mb;
    }
    free(down);
    return m < 0 ? -1 : (n < m ? n : m);
}

/* The run folders of DIR: DIR/seeds.txt's lines (relative to DIR), or DIR itself. */
static int run_dirs(const char *dir, char (*out)[PLAIT_SIM_PATH_MAX + 80], size_t *n)
{
    char path[PLAIT_SIM_PATH_MAX + 32], line[80];
    snprintf(path, sizeof(path), "%s/seeds.txt", dir);
    *n = 0;
    FILE *f = NULL;
    if (plait_file_fopen(path, NULL, &f) != 0) {
        snprintf(out[0], sizeof(out[0]), "%s", dir);
        *n = 1;
        return 0;
    }
    while (fgets(line, sizeof(line), f)) {
        size_t l = strcspn(line, "\r\n");
        line[l] = '\0';
        if (l == 0) continue;
        if (*n >= MAX_SEEDS || strchr(line, '/') || strcmp(line, "..") == 0) {
            fclose(f);
            return plait_fail(PLAIT_EPROTO, "%s: more than %d seeds or a name with '/'", path, MAX_SEEDS);
        }
        snprintf(out[*n], sizeof(out[0]), "%s/%s", dir, line);
        (*n)++;
    }
    fclose(f);
    if (*n == 0) return plait_fail(PLAIT_EPROTO, "%s: lists no run", path);
    return 0;
}

typedef struct {
    double *x, *y, *lo, *hi;
    size_t n, seeds;
} curve_buf_t;

/* Mean (and with 2+ seeds the 95% CI) over the seeds of one NAME=DIR. */
static int load_curve(const char *dir, const char *col, int x_mb, curve_buf_t *c, double *base)
{
    static char dirs[MAX_SEEDS][PLAIT_SIM_PATH_MAX + 80];
    size_t nd = 0;
    int rc = run_dirs(dir, dirs, &nd);
    if (rc != 0) return rc;
    double *ys = malloc(nd * MAX_POINTS * sizeof(double)), *xs = malloc(nd * MAX_POINTS * sizeof(double));
    c->x = calloc(MAX_POINTS, sizeof(double));
    c->y = calloc(MAX_POINTS, sizeof(double));
    c->lo = calloc(MAX_POINTS, sizeof(double));
    c->hi = calloc(MAX_POINTS, sizeof(double));
    if (!ys || !xs || !c->x || !c->y || !c->lo || !c->hi) rc = plait_fail(PLAIT_ENOMEM, "compare");
    size_t n = MAX_POINTS;
    for (size_t k = 0; rc == 0 && k < nd; k++) {
        long got = read_column(dirs[k], col, ys + k * MAX_POINTS, MAX_POINTS);
        long gx = got >= 0 && x_mb ? read_run(dirs[k], col, 1, xs + k * MAX_POINTS, MAX_POINTS) : got;
        if (got < 0 || gx < 0) rc = PLAIT_ENOENT;
        else if ((size_t)got < n) n = (size_t)got; /* seeds of one experiment have the same rounds */
        if (rc == 0 && k == 0 && base) {
            double b[1];
            *base = read_column(dirs[0], "global_loss", b, 1) == 1 ? b[0] : NAN; /* round 0: the base model */
        }
    }
    for (size_t i = 0; rc == 0 && i < n; i++) {
        double s = 0, s2 = 0, sx = 0;
        size_t m = 0;
        for (size_t k = 0; k < nd; k++) {
            double v = ys[k * MAX_POINTS + i];
            sx += x_mb ? xs[k * MAX_POINTS + i] : (double)i;
            if (!isfinite(v)) continue;
            s += v, s2 += v * v, m++;
        }
        c->x[i] = sx / (double)nd;
        c->y[i] = m ? s / (double)m : NAN;
        c->lo[i] = c->hi[i] = NAN;
        if (m >= 2) {
            double var = (s2 - s * s / (double)m) / (double)(m - 1);
            double h = plait__sim_t95(m - 1) * sqrt(var > 0 ? var : 0) / sqrt((double)m);
            c->lo[i] = c->y[i] - h, c->hi[i] = c->y[i] + h;
        }
    }
    c->n = rc == 0 ? n : 0;
    c->seeds = nd;
    free(ys);
    free(xs);
    return rc;
}

int plait__sim_compare_main(int argc, char **argv)
{
    const char *out = NULL, *metric = "global", *title = "held-out loss", *xaxis = "round";
    plait_flag_t flags[] = {
        PLAIT_F_STR("out", &out, "FILE.svg", "the chart to write (required)"),
        PLAIT_F_STR("metric", &metric, "M", "global (default) or personal loss"),
        PLAIT_F_STR("x", &xaxis, "X", "round (default) or mb: cumulative megabytes moved, up + down"),
        PLAIT_F_STR("title", &title, "T", "chart title"),
    };
    plait_flags_cmd_t cmd = {
        .prog = "plait-sim compare",
        .synopsis = "plait-sim compare --out FILE.svg [--metric global|personal] [--x round|mb] [--title T] "
                    "NAME=DIR...\n",
        .about = "  draws the held-out loss of several runs in one chart and prints each run's final value.\n"
                 "  DIR is a run's --out folder; a multi-seed run (plait-sim --seeds N) gives the mean over its\n"
                 "  seeds with a 95% confidence interval (shaded; ± half-width in the table).\n",
        .flags = flags,
        .n_flags = sizeof(flags) / sizeof(flags[0]),
        .extra_args = 1,
    };
    int a = 1, prc = plait_flags_parse(&cmd, argc, argv, stdout, &a);
    if (prc == PLAIT_FLAGS_HELP) return 0;
    if (prc != 0) {
        if (cmd.unknown)
            fprintf(stderr, "plait-sim compare: %.32s: unknown flag or missing value (see compare --help)\n",
                    cmd.unknown);
        else
            fprintf(stderr, "plait-sim compare: %s (see compare --help)\n", plait_errmsg());
        return EXIT_USAGE;
    }
    const char *why = NULL;
    if (!out || a >= argc) why = "needs --out FILE.svg and NAME=DIR...";
    else if (strcmp(metric, "global") != 0 && strcmp(metric, "personal") != 0) why = "--metric: global or personal";
    else if (strcmp(xaxis, "round") != 0 && strcmp(xaxis, "mb") != 0) why = "--x: round or mb";
    else if (argc - a > MAX_RUNS) why = "at most 16 runs";
    if (why) {
        fprintf(stderr, "plait-sim compare: %s (see compare --help)\n", why);
        return EXIT_USAGE;
    }
    int x_mb = strcmp(xaxis, "mb") == 0;
    char col[32];
    snprintf(col, sizeof(col), "%s_loss", metric);
    size_t n = (size_t)(argc - a);
    curve_buf_t cb[MAX_RUNS];
    plait__sim_curve_t cv[MAX_RUNS];
    char names[MAX_RUNS][96];
    memset(cb, 0, sizeof(cb));
    double base = NAN;
    int rc = 0;
    for (size_t i = 0; i < n && rc == 0; i++) {
        const char *arg = argv[a + i], *eq = strrchr(arg, '='); /* names may hold '=' */
        if (!eq || eq == arg || !eq[1]) {
            rc = plait_fail(PLAIT_EINVAL, "'%.64s' is not NAME=DIR", arg);
            break;
        }
        rc = load_curve(eq + 1, col, x_mb, &cb[i], i == 0 ? &base : NULL);
        if (cb[i].seeds > 1) snprintf(names[i], sizeof(names[i]), "%.*s (%zu seeds)", (int)(eq - arg) > 64 ? 64 : (int)(eq - arg), arg, cb[i].seeds);
        else snprintf(names[i], sizeof(names[i]), "%.*s", (int)(eq - arg) > 64 ? 64 : (int)(eq - arg), arg);
        cv[i] = (plait__sim_curve_t){names[i], cb[i].x, cb[i].y, cb[i].seeds > 1 ? cb[i].lo : NULL,
                                     cb[i].seeds > 1 ? cb[i].hi : NULL, cb[i].n};
    }
    if (rc == 0)
        rc = plait__sim_svg_compare(out, title, x_mb ? "MB moved (up + down), cumulative" : NULL, cv, n, base);
    if (rc == 0) {
        printf("%-24s %6s %10s %10s %s\n", "run", "seeds", "round", col, "95% CI ±");
        for (size_t i = 0; i < n; i++) {
            size_t last = cb[i].n;
            while (last > 0 && !isfinite(cb[i].y[last - 1])) last--;
            if (last == 0) {
                printf("%-24s %6zu %10s %10s\n", names[i], cb[i].seeds, "-", "-");
                continue;
            }
            double h = cb[i].hi[last - 1] - cb[i].y[last - 1];
            printf("%-24.24s %6zu %10zu %10.4f ", names[i], cb[i].seeds, last - 1, cb[i].y[last - 1]);
            if (isfinite(h)) printf("%.4f\n", h);
            else printf("-\n");
        }
        printf("%s\n", out);
    }
    for (size_t i = 0; i < n; i++) {
        free(cb[i].x);
        free(cb[i].y);
        free(cb[i].lo);
        free(cb[i].hi);
    }
    if (rc != 0) {
        fprintf(stderr, "plait-sim compare: %s\n", plait_errmsg());
        return rc == PLAIT_EINVAL ? EXIT_USAGE : EXIT_FAILURE;
    }
    return 0;
}
