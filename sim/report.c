/*
 * report.c: the simulator's outputs: per-round metrics as CSV and JSON lines,
 * a hand-written SVG chart (held-out loss per round for the global and the
 * personalized adapters, the frozen base model as a dashed line), and a short
 * markdown report. Numbers only: no client names, no text.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "plait/json.h"
#include "plait/lora.h"
#include "plait/sim.h"
#include "sim_int.h"

/* ---- CSV and JSON lines ------------------------------------------------------ */

void plait__sim_csv_header(plait_buf_t *b)
{
    plait_buf_printf(b, "round,committed,available,selected,participants,dropouts,stragglers,rejected,bytes_up,"
                        "bytes_down,sim_time_s,wall_s,train_loss,global_loss,global_ppl,personal_loss,personal_ppl,"
                        "epsilon,clip,personal_global_loss\n");
}

static void csv_num(plait_buf_t *b, double x, int last)
{
    if (isfinite(x)) plait_buf_printf(b, "%.6f", x);
    plait_buf_append(b, last ? "\n" : ",", 1);
}

void plait__sim_csv_row(plait_buf_t *b, const plait_sim_round_t *m)
{
    plait_buf_printf(b, "%d,%d,%zu,%zu,%zu,%zu,%zu,%zu,%llu,%llu,", m->round, m->committed, m->available, m->selected,
                     m->participants, m->dropouts, m->stragglers, m->rejected, (unsigned long long)m->bytes_up,
                     (unsigned long long)m->bytes_down);
    csv_num(b, m->sim_time_s, 0);
    csv_num(b, m->wall_s, 0);
    csv_num(b, m->train_loss, 0);
    csv_num(b, m->global_loss, 0);
    csv_num(b, m->global_ppl, 0);
    csv_num(b, m->personal_loss, 0);
    csv_num(b, m->personal_ppl, 0);
    csv_num(b, m->epsilon, 0);
    csv_num(b, m->clip, 0);
    csv_num(b, m->personal_global_loss, 1);
}

static void json_num(plait_buf_t *b, const char *key, double x)
{
    plait_buf_printf(b, ",\"%s\":", key);
    if (isfinite(x)) plait_buf_json_number(b, x);
    else plait_buf_append(b, "null", 4);
}

void plait__sim_json_row(plait_buf_t *b, const plait_sim_round_t *m)
{
    plait_buf_printf(b,
                     "{\"round\":%d,\"committed\":%s,\"available\":%zu,\"selected\":%zu,\"participants\":%zu,"
                     "\"dropouts\":%zu,\"stragglers\":%zu,\"rejected\":%zu,\"bytes_up\":%llu,\"bytes_down\":%llu",
                     m->round, m->committed ? "true" : "false", m->available, m->selected, m->participants,
                     m->dropouts, m->stragglers, m->rejected, (unsigned long long)m->bytes_up,
                     (unsigned long long)m->bytes_down);
    json_num(b, "sim_time_s", m->sim_time_s);
    json_num(b, "wall_s", m->wall_s);
    json_num(b, "train_loss", m->train_loss);
    json_num(b, "global_loss", m->global_loss);
    json_num(b, "global_ppl", m->global_ppl);
    json_num(b, "personal_loss", m->personal_loss);
    json_num(b, "personal_ppl", m->personal_ppl);
    json_num(b, "personal_global_loss", m->personal_global_loss);
    json_num(b, "epsilon", m->epsilon);
    json_num(b, "secagg_s", m->secagg_s);
    json_num(b, "clip", m->clip);
    plait_buf_append(b, "}\n", 2);
}

static int write_buf(const char *dir, const char *name, const plait_buf_t *b)
{
    char path[PLAIT_SIM_PATH_MAX + 64];
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    if (plait_buf_status(b) != 0) return plait_fail(plait_buf_status(b), "%s: out of memory", path);
    FILE *f = fopen(path, "wb");
    if (!f) return plait_fail(PLAIT_EIO, "%s: cannot write", path);
    int ok = b->len == 0 || fwrite(b->data, 1, b->len, f) == b->len;
    ok &= fclose(f) == 0;
    return ok ? 0 : plait_fail(PLAIT_EIO, "%s: write failed", path);
}

/* ---- SVG ----------------------------------------------------------------------- */

/* A "nice" tick step (1, 2 or 5 times a power of ten) for about n ticks over range. */
static double nice_step(double range, int n)
{
    if (!(range > 0)) return 1;
    double raw = range / n, p = pow(10, floor(log10(raw))), f = raw / p;
    return (f < 1.5 ? 1 : f < 3.5 ? 2 : f < 7.5 ? 5 : 10) * p;
}

typedef struct {
    const char *name;
    const char *color;
    const double *y; /* (n) NAN = no point */
    size_t n;        /* points at x = 0..n-1, or at x[i] */
    int dashed;
    const double *x;      /* (n) or NULL: the index */
    const double *lo, *hi; /* (n) or NULL: a shaded band (a confidence interval) */
} series_t;

/* hline/hname: the base model (dashed grey); hline2/hname2: a second reference, the centralized baseline
 * (dotted green); NAN leaves either out. */
static int svg_chart(const char *path, const char *title, const series_t *ser, size_t n_ser, double hline,
                     const char *hname, double hline2, const char *hname2, const char *xlabel)
{
    const double W = 760, H = 440, L = 70, R = 200, T = 40, B = 55;
    double pw = W - L - R, ph = H - T - B;
    double ymin = INFINITY, ymax = -INFINITY;
    double xmax = 1;
#define SX(s, i) ((s)->x ? (s)->x[i] : (double)(i))
    for (size_t s = 0; s < n_ser; s++) {
        for (size_t i = 0; i < ser[s].n; i++) {
            if (!isfinite(ser[s].y[i])) continue;
            if (isfinite(SX(&ser[s], i)) && SX(&ser[s], i) > xmax) xmax = SX(&ser[s], i);
            ymin = fmin(ymin, ser[s].y[i]), ymax = fmax(ymax, ser[s].y[i]);
            if (ser[s].lo && isfinite(ser[s].lo[i])) ymin = fmin(ymin, ser[s].lo[i]);
            if (ser[s].hi && isfinite(ser[s].hi[i])) ymax = fmax(ymax, ser[s].hi[i]);
        }
    }
    if (isfinite(hline)) ymin = fmin(ymin, hline), ymax = fmax(ymax, hline);
    if (isfinite(hline2)) ymin = fmin(ymin, hline2), ymax = fmax(ymax, hline2);
    if (!isfinite(ymin)) ymin = 0, ymax = 1;
    if (ymax - ymin < 1e-6) ymin -= 0.5, ymax += 0.5;
    double ystep = nice_step(ymax - ymin, 5);
    ymin = floor(ymin / ystep) * ystep;
    ymax = ceil(ymax / ystep) * ystep;
    double xstep = nice_step(xmax, 8);
    if (xstep < 1 && !xlabel) xstep = 1;
    if (xlabel) xmax = ceil(xmax / xstep - 1e-9) * xstep; /* a continuous axis ends on a tick */
#define X(v) (L + pw * (double)(v) / (double)xmax)
#define Y(v) (T + ph * (1.0 - ((v) - ymin) / (ymax - ymin)))
    plait_buf_t b;
    plait_buf_init(&b, 0);
    plait_buf_printf(&b,
                     "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%.0f\" height=\"%.0f\" viewBox=\"0 0 %.0f "
                     "%.0f\" font-family=\"sans-serif\" font-size=\"12\">\n"
                     "<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n",
                     W, H, W, H);
    plait_buf_printf(&b, "<text x=\"%.1f\" y=\"22\" font-size=\"15\" text-anchor=\"middle\">", L + pw / 2);
    for (const char *c = title; *c; c++) {
        if (*c == '<') plait_buf_printf(&b, "&lt;");
        else if (*c == '>') plait_buf_printf(&b, "&gt;");
        else if (*c == '&') plait_buf_printf(&b, "&amp;");
        else plait_buf_append(&b, c, 1);
    }
    plait_buf_printf(&b, "</text>\n");
    /* Grid, ticks and labels. */
    for (double y = ymin; y <= ymax + ystep * 1e-6; y += ystep) {
        plait_buf_printf(&b,
                         "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#e5e5e5\"/>"
                         "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"black\"/>"
                         "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"end\">%.*f</text>\n",
                         L, Y(y), L + pw, Y(y), L - 5, Y(y), L, Y(y), L - 8, Y(y) + 4, ystep < 0.1 ? 2 : 1, y);
    }
    for (double x = 0; x <= (double)xmax + 1e-9; x += xstep) {
        plait_buf_printf(&b,
                         "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"black\"/>"
                         "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">%g</text>\n",
                         X(x), T + ph, X(x), T + ph + 5, X(x), T + ph + 19, fabs(x) < 1e-12 ? 0.0 : x);
    }
    plait_buf_printf(&b,
                     "<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" fill=\"none\" stroke=\"black\"/>\n"
                     "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">%s</text>\n"
                     "<text x=\"18\" y=\"%.1f\" text-anchor=\"middle\" transform=\"rotate(-90 18 %.1f)\">held-out "
                     "loss (nats/token)</text>\n",
                     L, T, pw, ph, L + pw / 2, H - 12, xlabel ? xlabel : "round", T + ph / 2, T + ph / 2);
    /* Series. */
    double ly = T + 10;
    if (isfinite(hline)) {
        plait_buf_printf(&b,
                         "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#777\" stroke-width=\"1.5\" "
                         "stroke-dasharray=\"6 4\"/>\n",
                         L, Y(hline), L + pw, Y(hline));
        plait_buf_printf(&b,
                         "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#777\" stroke-width=\"1.5\" "
                         "stroke-dasharray=\"6 4\"/><text x=\"%.1f\" y=\"%.1f\">%s</text>\n",
                         L + pw + 15, ly, L + pw + 45, ly, L + pw + 50, ly + 4, hname);
        ly += 20;
    }
    if (isfinite(hline2)) {
        plait_buf_printf(&b,
                         "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#2ca02c\" "
                         "stroke-width=\"1.5\" stroke-dasharray=\"2 3\"/>\n",
                         L, Y(hline2), L + pw, Y(hline2));
        plait_buf_printf(&b,
                         "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#2ca02c\" "
                         "stroke-width=\"1.5\" stroke-dasharray=\"2 3\"/><text x=\"%.1f\" y=\"%.1f\">%s</text>\n",
                         L + pw + 15, ly, L + pw + 45, ly, L + pw + 50, ly + 4, hname2);
        ly += 20;
    }
    for (size_t s = 0; s < n_ser; s++) { /* bands first, under every line */
        const series_t *x = &ser[s];
        if (!x->lo || !x->hi) continue;
        plait_buf_printf(&b, "<polygon fill=\"%s\" fill-opacity=\"0.18\" stroke=\"none\" points=\"", x->color);
        for (size_t i = 0; i < x->n; i++)
            if (isfinite(x->y[i]) && isfinite(x->hi[i])) plait_buf_printf(&b, "%.1f,%.1f ", X(SX(x, i)), Y(x->hi[i]));
        for (size_t i = x->n; i-- > 0;)
            if (isfinite(x->y[i]) && isfinite(x->lo[i])) plait_buf_printf(&b, "%.1f,%.1f ", X(SX(x, i)), Y(x->lo[i]));
        plait_buf_printf(&b, "\"/>\n");
    }
    for (size_t s = 0; s < n_ser; s++) {
        const series_t *x = &ser[s];
        plait_buf_printf(&b, "<polyline fill=\"none\" stroke=\"%s\" stroke-width=\"2\"%s points=\"", x->color,
                         x->dashed ? " stroke-dasharray=\"3 3\"" : "");
        for (size_t i = 0; i < x->n; i++)
            if (isfinite(x->y[i])) plait_buf_printf(&b, "%.1f,%.1f ", X(SX(x, i)), Y(x->y[i]));
        plait_buf_printf(&b, "\"/>\n");
        for (size_t i = 0; i < x->n; i++)
            if (isfinite(x->y[i]))
                plait_buf_printf(&b, "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"2.5\" fill=\"%s\"/>\n", X(SX(x, i)), Y(x->y[i]),
                                 x->color);
        plait_buf_printf(&b,
                         "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"%s\" stroke-width=\"2\"/>"
                         "<text x=\"%.1f\" y=\"%.1f\">",
                         L + pw + 15, ly, L + pw + 45, ly, x->color, L + pw + 50, ly + 4);
        for (const char *c = x->name; *c; c++) {
            if (*c == '<' || *c == '>' || *c == '&') continue;
            plait_buf_append(&b, c, 1);
        }
        plait_buf_printf(&b, "</text>\n");
        ly += 20;
    }
    plait_buf_printf(&b, "</svg>\n");
#undef X
#undef Y
#undef SX
    int rc = plait_buf_status(&b);
    if (rc == 0) {
        FILE *f = fopen(path, "wb");
        if (!f) rc = plait_fail(PLAIT_EIO, "%s: cannot write", path);
        else {
            int ok = fwrite(b.data, 1, b.len, f) == b.len;
            ok &= fclose(f) == 0;
            if (!ok) rc = plait_fail(PLAIT_EIO, "%s: write failed", path);
        }
    }
    plait_buf_free(&b);
    return rc;
}

int plait_sim_write_svg(const plait_sim_result_t *res, const char *title, const char *path)
{
    size_t n = res->n_rounds + 1;
    double *g = malloc(n * sizeof(double)), *p = malloc(n * sizeof(double));
    if (!g || !p) {
        free(g);
        free(p);
        return plait_fail(PLAIT_ENOMEM, "svg");
    }
    for (size_t i = 0; i < n; i++) g[i] = res->rounds[i].global_loss, p[i] = res->rounds[i].personal_loss;
    series_t s[2] = {{"global adapter", "#1f77b4", g, n, 0, NULL, NULL, NULL},
                     {"personalized", "#ff7f0e", p, n, 0, NULL, NULL, NULL}};
    int rc = svg_chart(path, title, s, 2, res->base_loss, "base model",
                       res->centralized_steps > 0 ? res->centralized_loss : NAN, "centralized", NULL);
    free(g);
    free(p);
    return rc;
}

int plait__sim_svg_compare(const char *path, const char *title, const char *xlabel, const plait__sim_curve_t *c,
                           size_t n_series, double base)
{
    static const char *colors[] = {"#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b",
                                   "#e377c2", "#7f7f7f"};
    series_t s[16];
    if (n_series > 16) n_series = 16;
    for (size_t i = 0; i < n_series; i++)
        s[i] = (series_t){c[i].name, colors[i % 8], c[i].y, c[i].n, i >= 8, c[i].x, c[i].lo, c[i].hi};
    return svg_chart(path, title, s, n_series, base, "base model", NAN, "", xlabel);
}

/* Held-out loss against the cumulative megabytes moved (up + down) by the end of each round. */
static int write_bytes_svg(const plait_sim_result_t *res, const char *title, const char *path)
{
    size_t n = res->n_rounds + 1;
    double *x = malloc(n * sizeof(double)), *g = malloc(n * sizeof(double)), *p = malloc(n * sizeof(double));
    int rc = 0;
    if (!x || !g || !p) rc = plait_fail(PLAIT_ENOMEM, "svg");
    double mb = 0;
    for (size_t i = 0; rc == 0 && i < n; i++) {
        mb += (double)(res->rounds[i].bytes_up + res->rounds[i].bytes_down) / 1e6;
        x[i] = mb;
        g[i] = res->rounds[i].global_loss;
        p[i] = res->rounds[i].personal_loss;
    }
    if (rc == 0) {
        series_t s[2] = {{"global adapter", "#1f77b4", g, n, 0, x, NULL, NULL},
                         {"personalized", "#ff7f0e", p, n, 0, x, NULL, NULL}};
        rc = svg_chart(path, title, s, 2, res->base_loss, "base model", NAN, "", "MB moved (up + down), cumulative");
    }
    free(x);
    free(g);
    free(p);
    return rc;
}

/* ---- per-client distributions ----------------------------------------------------- */

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* The q-quantile (0..1) of sorted v (n > 0), linearly interpolated. */
static double quantile(const double *v, size_t n, double q)
{
    double pos = q * (double)(n - 1);
    size_t i = (size_t)pos;
    return i + 1 < n ? v[i] + (pos - (double)i) * (v[i + 1] - v[i]) : v[n - 1];
}

/* One row of the distribution table: after's quantiles, the share of clients better than before, the worst. */
static void dist_row(plait_buf_t *md, plait_buf_t *csv, const char *what, const char *kind, const double *before,
                     const double *after, size_t n)
{
    double *v = n ? malloc(n * sizeof(double)) : NULL;
    size_t m = 0, better = 0;
    double worst_change = -INFINITY;
    for (size_t i = 0; v && i < n; i++) {
        if (!isfinite(after[i]) || !isfinite(before[i])) continue;
        v[m++] = after[i];
        better += after[i] < before[i];
        worst_change = fmax(worst_change, after[i] - before[i]);
        plait_buf_printf(csv, "%s,%zu,%.6f,%.6f\n", kind, i, before[i], after[i]);
    }
    if (m == 0) {
        free(v);
        return;
    }
    qsort(v, m, sizeof(double), cmp_double);
    plait_buf_printf(md, "| %s | %zu | %.4f | %.4f | %.4f | %.4f | %.0f%% | %+.4f |\n", what, m, quantile(v, m, 0.1),
                     quantile(v, m, 0.5), quantile(v, m, 0.9), v[m - 1], 100.0 * (double)better / (double)m,
                     worst_change);
    free(v);
}

/* Personalized vs the global adapter on the same clients: quantiles of the per-client difference (personal -
 * global: negative is better), the share improved, the worst device, and how many kept the global adapter. */
typedef struct {
    size_t n, improved, worse, kept_global, mixed, biased, knn;
    size_t beyond;   /* clients worse by more than 2 standard errors of their own paired estimate */
    size_t no_se;    /* clients with one held-out window: no standard error */
    double p10, p50, p90, worst, mean_rel; /* mean_rel: token-weighted (personal - global) / global */
    double worst_z;  /* the worst difference in standard errors of its held-out estimate */
} lfl_t;

static int like_for_like(const plait_sim_result_t *res, lfl_t *o)
{
    memset(o, 0, sizeof(*o));
    size_t n = res->n_pers_clients;
    if (n == 0 || !res->client_pglobal || !res->client_personal) return 0;
    double *d = malloc(n * sizeof(double));
    if (!d) return 0;
    double sp = 0, sg = 0;
    o->worst = -INFINITY;
    o->worst_z = -INFINITY;
    for (size_t i = 0; i < n; i++) {
        double g = res->client_pglobal[i], p = res->client_personal[i];
        if (!isfinite(g) || !isfinite(p)) continue;
        double di = p - g;
        d[o->n++] = di;
        o->improved += di < 0;
        o->worse += di > 0;
        int b = res->client_bias && res->client_bias[i] != 0.0;
        int kn = res->client_knn && res->client_knn[i] != 0.0;
        o->kept_global += res->client_mix[i] == 0.0 && !b && !kn;
        o->knn += kn;
        o->mixed += res->client_mix[i] > 0.0 && res->client_mix[i] < 1.0;
        o->biased += b;
        size_t t = res->client_tokens[i] ? res->client_tokens[i] : 1;
        sp += p * (double)t;
        sg += g * (double)t;
        if (di > o->worst) o->worst = di;
        /* Noise: the spread of the paired per-window differences (res->client_se). */
        double se = res->client_se ? res->client_se[i] : NAN;
        if (!isfinite(se)) {
            o->no_se++;
        } else if (di > 0) {
            double z = se > 0 ? di / se : INFINITY;
            if (z > o->worst_z) o->worst_z = z;
            o->beyond += z > 2.0;
        }
    }
    if (o->n > 0) {
        qsort(d, o->n, sizeof(double), cmp_double);
        o->p10 = quantile(d, o->n, 0.1);
        o->p50 = quantile(d, o->n, 0.5);
        o->p90 = quantile(d, o->n, 0.9);
        o->mean_rel = sg > 0 ? (sp - sg) / sg : NAN;
    }
    free(d);
    return o->n > 0;
}

/* ---- markdown report -------------------------------------------------------------- */

static void md_num(plait_buf_t *b, double x, int digits)
{
    if (isfinite(x)) plait_buf_printf(b, "%.*f", digits, x);
    else plait_buf_printf(b, "-");
}

int plait__sim_write_outputs(const plait_sim_config_t *cfg, const plait_sim_result_t *res, const plait_sim_pop_t *pop,
                             const char *dir)
{
    plait_buf_t csv, jl, md, cj;
    plait_buf_init(&csv, 0);
    plait_buf_init(&jl, 0);
    plait_buf_init(&md, 0);
    plait_buf_init(&cj, 0);
    plait__sim_csv_header(&csv);
    for (size_t r = 0; r <= res->n_rounds; r++) {
        plait__sim_csv_row(&csv, &res->rounds[r]);
        plait__sim_json_row(&jl, &res->rounds[r]);
    }
    int rc = plait_sim_config_to_json(cfg, &cj);
    char tg[128];
    plait_lora_format_targets(cfg->targets, tg, sizeof(tg));
    const plait_sim_round_t *last = &res->rounds[res->n_rounds];
    /* The last evaluated round. */
    for (size_t r = res->n_rounds; r > 0 && !isfinite(last->global_loss); r--) last = &res->rounds[r - 1];
    size_t committed = 0, parts = 0, drops = 0, strag = 0;
    uint64_t up = 0, down = 0;
    for (size_t r = 1; r <= res->n_rounds; r++) {
        committed += (size_t)res->rounds[r].committed;
        parts += res->rounds[r].participants;
        drops += res->rounds[r].dropouts;
        strag += res->rounds[r].stragglers;
        up += res->rounds[r].bytes_up;
        down += res->rounds[r].bytes_down;
    }
    plait_buf_printf(&md, "# plait-sim report\n\n![held-out loss per round](loss.svg)\n\n## Setup\n\n");
    if (strcmp(cfg->partition, "dirichlet") == 0)
        plait_buf_printf(&md,
                         "- population: %zu clients (each %s's records dealt to %zu clients by Dirichlet(α = %g) "
                         "proportions; %zu with fewer than %zu lines and %zu with too few tokens left out), first "
                         "%.0f%% of each client's lines train, the rest held out\n",
                         pop->n, strcmp(cfg->partition_label, "kind") == 0 ? "kind" : "author", pop->n_sources,
                         cfg->partition_alpha, pop->n_too_few, cfg->min_lines, pop->n_too_small,
                         100 * cfg->train_fraction);
    else
        plait_buf_printf(&md,
                         "- population: %zu clients (%zu authors in the corpus; %zu with fewer than %zu lines and %zu "
                         "with too few tokens left out), first %.0f%% of each client's lines train, the rest held "
                         "out\n",
                         pop->n, pop->n_sources, pop->n_too_few, cfg->min_lines, pop->n_too_small,
                         100 * cfg->train_fraction);
    plait_buf_printf(&md,
                     "- LoRA: mode %s, rank %d, alpha %g, targets %s; %zu of %zu adapter parameters travel\n",
                     plait_lora_mode_name(cfg->lora_mode), cfg->rank, cfg->alpha, tg, res->span_len, res->n_params);
    if (cfg->local_epochs > 0)
        plait_buf_printf(&md, "- local training: %g epochs (at most %d steps)", cfg->local_epochs,
                         cfg->max_local_steps);
    else plait_buf_printf(&md, "- local training: %d steps", cfg->local_steps);
    plait_buf_printf(&md, " of batch %d × %d tokens, AdamW lr %g\n", cfg->batch, cfg->seq_len, cfg->lr);
    plait_buf_printf(&md,
                     "- rounds: %d, %zu clients per round (over-selection %g, deadline %g simulated s), server %s%s%s\n",
                     cfg->rounds, cfg->clients_per_round, cfg->overselect, cfg->deadline_s, cfg->strategy,
                     strcmp(cfg->aggregation, "mean") != 0 ? ", aggregation " : "",
                     strcmp(cfg->aggregation, "mean") != 0 ? cfg->aggregation : "");
    plait_buf_printf(&md, "- updates: clip %g, %u-bit quantization", cfg->clip, cfg->quant_bits);
    if (cfg->noise_multiplier > 0) plait_buf_printf(&md, ", central DP z = %g", cfg->noise_multiplier);
    if (cfg->local_noise > 0) plait_buf_printf(&md, ", local noise σ = %g·clip", cfg->local_noise);
    plait_buf_printf(&md, "\n- fleet: availability U[%g, %g], dropout %g, speed lognormal(median %g tok/s, σ %g)\n",
                     cfg->avail_min, cfg->avail_max, cfg->dropout, cfg->speed_median, cfg->speed_sigma);
    plait_buf_printf(&md, "- seed %llu, %d threads; full config in `config.json`\n\n",
                     (unsigned long long)cfg->seed, cfg->threads);
    plait_buf_printf(&md, "## Result\n\n");
    plait_buf_printf(&md, "| | held-out loss | perplexity |\n|---|---|---|\n| frozen base model | %.4f | %.2f |\n",
                     res->base_loss, exp(res->base_loss));
    plait_buf_printf(&md, "| global adapter, round %d | ", last->round);
    md_num(&md, last->global_loss, 4);
    plait_buf_printf(&md, " | ");
    md_num(&md, last->global_ppl, 2);
    plait_buf_printf(&md, " |\n| personalized, round %d | ", last->round);
    md_num(&md, last->personal_loss, 4);
    plait_buf_printf(&md, " | ");
    md_num(&md, last->personal_ppl, 2);
    if (cfg->centralized || cfg->centralized_only) {
        plait_buf_printf(&md, " |\n| centralized LoRA, %d steps on the pooled training data | ",
                         res->centralized_steps);
        md_num(&md, res->centralized_loss, 4);
        plait_buf_printf(&md, " | ");
        md_num(&md, exp(res->centralized_loss), 2);
    }
    plait_buf_printf(&md,
                     " |\n\n%zu of %zu rounds committed; %zu updates, %zu dropouts, %zu stragglers; %.2f MB up, "
                     "%.2f MB down; ε = %.3g; %.1f s wall, %.1f client-rounds/s, peak RSS %ld MiB; checksum "
                     "%016llx.\n\n",
                     committed, res->n_rounds, parts, drops, strag, (double)up / 1e6, (double)down / 1e6,
                     last->epsilon, res->wall_s, res->client_rounds_per_s, res->peak_rss_kb / 1024,
                     (unsigned long long)res->checksum);
    plait_buf_printf(&md, "Global loss: the global adapter on the held-out data of %s clients (token-weighted, at "
                          "most %zu windows of %d tokens each; a shorter text is one partial window). Personalized: "
                          "%zu clients each fine-tune the global adapter on their own training text (early-stopped "
                          "on its last %.0f%%, held for validation), keep whichever of global, personal or a mix "
                          "does best there, and are evaluated on their own held-out data. Round 0 is "
                          "the starting point (no federated training yet).\n\n",
                     cfg->eval_clients ? "a fixed sample of" : "all", cfg->eval_windows, cfg->seq_len,
                     res->n_pers_clients, 100 * cfg->personal_val);
    if (cfg->centralized || cfg->centralized_only)
        plait_buf_printf(&md, "Centralized: one adapter (same LoRA config, initial weights, AdamW, lr, batch and "
                              "window as the clients) trained for %d steps on the pooled training data of all %zu "
                              "clients (%zu tokens), evaluated like the global adapter; the reference the global "
                              "adapter should approach.\n\n",
                         res->centralized_steps, pop->n, res->centralized_tokens);
    plait_buf_t ccsv;
    plait_buf_init(&ccsv, 0);
    plait_buf_printf(&ccsv, "kind,client,before,after\n");
    if (res->n_eval_clients + res->n_pers_clients > 0 && res->client_base && res->client_local) {
        plait_buf_printf(&md, "## Per client\n\nHeld-out loss of each evaluated client (the last evaluated round): "
                              "quantiles over clients, the share of clients whose loss went down, and the worst "
                              "client's change (positive: that client got worse). One row per client in "
                              "`clients.csv`.\n\n| | clients | p10 | median | p90 | worst | improved | worst change "
                              "|\n|---|---|---|---|---|---|---|---|\n");
        dist_row(&md, &ccsv, "global adapter vs base model", "global", res->client_base, res->client_global,
                 res->n_eval_clients);
        dist_row(&md, &ccsv, "personalized vs local-only (round 0)", "personal", res->client_local,
                 res->client_personal, res->n_pers_clients);
        plait_buf_printf(&md, "\n");
    }
    lfl_t lf;
    int have_lf = like_for_like(res, &lf);
    if (have_lf) {
        for (size_t i = 0; i < res->n_pers_clients; i++)
            plait_buf_printf(&ccsv, "personal_vs_global,%zu,%.6f,%.6f\n", i, res->client_pglobal[i],
                             res->client_personal[i]);
        plait_buf_printf(&md,
                         "## Personalized vs global, same clients\n\nEach of %zu clients: the global adapter and the "
                         "adapter the device chose (global, personal, or a mix, on a validation tail of its own "
                         "training text, with its output bias and its kNN memory where they helped there too) on the same held-out "
                         "data, round %d. Difference personalized − global "
                         "(negative: personalization helped):\n\n| clients | mean (token-weighted) | p10 | median "
                         "| p90 | worst device | worst, in standard errors | improved | worse | worse by > 2 SE | kept "
                         "global | mix | output bias | kNN memory |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n| %zu | "
                         "%+.2f%% | %+.4f | %+.4f | %+.4f | %+.4f | %+.2f | %.0f%% | %zu | %zu | %zu | %zu | %zu | %zu "
                         "|\n\nA client's standard "
                         "error: the spread of its per-window differences (personalized − global on the same "
                         "held-out windows) over √windows; %zu clients with a single window have none.\n\n",
                         lf.n, last->round, lf.n, 100.0 * lf.mean_rel, lf.p10, lf.p50, lf.p90, lf.worst,
                         isfinite(lf.worst_z) ? lf.worst_z : 0.0, 100.0 * (double)lf.improved / (double)lf.n,
                         lf.worse, lf.beyond, lf.kept_global, lf.mixed, lf.biased, lf.knn, lf.no_se);
    }
    plait_buf_printf(&md, "## Rounds\n\n| round | ok | clients | dropouts | stragglers | global loss | ppl | "
                          "personal loss | ε | up kB | down kB | sim s | wall s |\n"
                          "|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
    for (size_t r = 0; r <= res->n_rounds; r++) {
        const plait_sim_round_t *m = &res->rounds[r];
        plait_buf_printf(&md, "| %d | %s | %zu/%zu | %zu | %zu | ", m->round, r == 0 ? "-" : m->committed ? "yes" : "no",
                         m->participants, m->selected, m->dropouts, m->stragglers);
        md_num(&md, m->global_loss, 4);
        plait_buf_printf(&md, " | ");
        md_num(&md, m->global_ppl, 2);
        plait_buf_printf(&md, " | ");
        md_num(&md, m->personal_loss, 4);
        plait_buf_printf(&md, " | %.3g | %.1f | %.1f | %.1f | %.2f |\n", m->epsilon, (double)m->bytes_up / 1e3,
                         (double)m->bytes_down / 1e3, m->sim_time_s, m->wall_s);
    }
    plait_buf_printf(&md, "\nFiles: `metrics.csv`, `metrics.jsonl`, `summary.json`, `clients.csv`, `loss.svg`, `loss-bytes.svg` "
                          "(loss against cumulative MB moved), `config.json`, "
                          "`global.safetensors` (the final global adapter).\n");
    plait_buf_t sj;
    plait_buf_init(&sj, 0);
    plait_buf_printf(&sj, "{\"rounds\":%zu,\"clients\":%zu", res->n_rounds, res->n_clients);
    json_num(&sj, "base_loss", res->base_loss);
    json_num(&sj, "global_loss", last->global_loss);
    json_num(&sj, "personal_loss", last->personal_loss);
    json_num(&sj, "centralized_loss", res->centralized_loss);
    json_num(&sj, "personal_global_loss", last->personal_global_loss);
    if (have_lf) {
        plait_buf_printf(&sj, ",\"personal_vs_global\":{\"clients\":%zu", lf.n);
        json_num(&sj, "mean_rel", lf.mean_rel);
        json_num(&sj, "p10", lf.p10);
        json_num(&sj, "p50", lf.p50);
        json_num(&sj, "p90", lf.p90);
        json_num(&sj, "worst", lf.worst);
        json_num(&sj, "worst_se", lf.worst_z);
        json_num(&sj, "improved_share", (double)lf.improved / (double)lf.n);
        plait_buf_printf(&sj,
                         ",\"worse\":%zu,\"worse_beyond_2se\":%zu,\"kept_global\":%zu,\"mixed\":%zu,"
                         "\"output_bias\":%zu,\"knn_memory\":%zu}",
                         lf.worse, lf.beyond, lf.kept_global, lf.mixed, lf.biased, lf.knn);
    }
    plait_buf_printf(&sj, ",\"centralized_steps\":%d,\"eval_tokens\":%zu,\"checksum\":\"%016llx\"}\n",
                     res->centralized_steps, res->eval_tokens, (unsigned long long)res->checksum);
    if (rc == 0) rc = write_buf(dir, "summary.json", &sj);
    plait_buf_free(&sj);
    if (rc == 0) rc = write_buf(dir, "metrics.csv", &csv);
    if (rc == 0) rc = write_buf(dir, "metrics.jsonl", &jl);
    if (rc == 0) rc = write_buf(dir, "report.md", &md);
    if (rc == 0) rc = write_buf(dir, "config.json", &cj);
    if (rc == 0) rc = write_buf(dir, "clients.csv", &ccsv);
    plait_buf_free(&ccsv);
    if (rc == 0) {
        char path[PLAIT_SIM_PATH_MAX + 32], title[256];
        snprintf(path, sizeof(path), "%s/loss.svg", dir);
        snprintf(title, sizeof(title), "%s, %s, %zu clients/round", plait_lora_mode_name(cfg->lora_mode),
                 cfg->strategy, cfg->clients_per_round);
        rc = plait_sim_write_svg(res, title, path);
        snprintf(path, sizeof(path), "%s/loss-bytes.svg", dir);
        if (rc == 0) rc = write_bytes_svg(res, title, path);
    }
    plait_buf_free(&csv);
    plait_buf_free(&jl);
    plait_buf_free(&md);
    plait_buf_free(&cj);
    return rc;
}
