/*
 * cli_report.c: the plait-aggregator reports: status, devices, rounds, and
 * privacy (of a deployment DIR, or the calculator over given DP-FedAvg
 * settings). Conventions: cli.c.
 */
#include "cli_eval.h"
#include "cli_int.h"
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

/* ---- privacy ------------------------------------------------------------- */

static int cmd_privacy(int argc, char **argv, FILE *out, FILE *err)
{
    const char *v[4] = {NULL, NULL, NULL, NULL};
    int json = 0, classic = 0;
    plait_flag_t flags[] = {
        PLAIT_F_STR("q", &v[0], "Q", "sampling probability, 0 < Q <= 1"),
        PLAIT_F_STR("noise-multiplier", &v[1], "Z", "noise std / clip norm, Z > 0"),
        PLAIT_F_STR("rounds", &v[2], "N", "number of rounds, integer >= 1"),
        PLAIT_F_STR("delta", &v[3], "D", "target delta, 0 < D < 1 (below 1/population)"),
        PLAIT_F_SET("json", &json, 1,
                    "one JSON object: {\"epsilon\": ..., \"order\": ..., \"delta\": ...}\n"
                    "(epsilon is null when no order gives a finite bound)"),
        PLAIT_F_SET("classic", &classic, 1,
                    "use the classic RDP conversion (Mironov 2017) instead of\n"
                    "the improved one (Canonne-Kamath-Steinke / Balle et al. 2020)"),
    };
    static const plait_flag_rule_t rules[] = {{PLAIT_RULE_SHOW_REQUIRED, {"q", "noise-multiplier", "rounds", "delta"}}};
    plait_flags_cmd_t cmd = {
        .prog = PROG " privacy",
        .about = "Privacy spent by N rounds of DP-FedAvg in which each device takes part\n"
                 "independently with probability Q (expected cohort / population) and the\n"
                 "sum of clipped updates gets Gaussian noise of std Z x clip norm. Prints\n"
                 "the epsilon of (epsilon, D)-DP (device level, add/remove one device) and\n"
                 "the Renyi order that attains it, over dp_accounting's default orders.\n",
        .flags = flags,
        .n_flags = sizeof(flags) / sizeof(flags[0]),
        .rules = rules,
        .n_rules = sizeof(rules) / sizeof(rules[0]),
    };
    int rc = plait__aggcli_flags("privacy", &cmd, NULL, NULL, argc, argv, out, err);
    if (rc != AGGCLI_FLAGS_OK) return rc;
    /* Values first (so `--q abc` is reported as a bad --q), then absences. */
    double q = 0, z = 0, delta = 0;
    uint64_t rounds = 0;
    if (v[0] && (plait__aggcli_parse_double(v[0], &q) != 0 || !(q > 0 && q <= 1))) {
        fprintf(err, PROG " privacy: bad value '%s' for --q (want a number with 0 < q <= 1)\n", v[0]);
        return 2;
    }
    if (v[1] && (plait__aggcli_parse_double(v[1], &z) != 0 || !(z > 0))) {
        fprintf(err, PROG " privacy: bad value '%s' for --noise-multiplier (want a finite number > 0)\n", v[1]);
        return 2;
    }
    if (v[2] && plait__aggcli_parse_count(v[2], UINT64_C(1000000000000), &rounds) != 0) {
        fprintf(err, PROG " privacy: bad value '%s' for --rounds (want an integer from 1 to 10^12)\n", v[2]);
        return 2;
    }
    if (v[3] && (plait__aggcli_parse_double(v[3], &delta) != 0 || !(delta > 0 && delta < 1))) {
        fprintf(err, PROG " privacy: bad value '%s' for --delta (want a number with 0 < delta < 1)\n", v[3]);
        return 2;
    }
    for (size_t k = 0; k < 4; k++) {
        if (v[k] == NULL) {
            fprintf(err, PROG " privacy: missing --%s (try --help)\n", flags[k].name);
            return 2;
        }
    }
    plait_eps_method_t method = classic ? PLAIT_EPS_CLASSIC : PLAIT_EPS_IMPROVED;

    plait_accountant_t acc;
    double eps, order;
    if ((rc = plait_accountant_init(&acc, NULL, 0)) != 0 || (rc = plait_accountant_compose(&acc, q, z, rounds)) != 0 ||
        (rc = plait_accountant_epsilon(&acc, delta, method, &eps, &order)) != 0) {
        return plait__aggcli_fail(err, rc, "privacy");
    }
    if (json) {
        char e[32], o[32], d[32];
        plait__aggcli_fmt_double(d, sizeof(d), delta);
        if (isfinite(eps)) {
            plait__aggcli_fmt_double(e, sizeof(e), eps);
            plait__aggcli_fmt_double(o, sizeof(o), order);
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

int plait__aggcli_status(int argc, char **argv, FILE *out, FILE *err)
{
    const char *dir = NULL;
    int check = 0, json = 0;
    plait_flag_t flags[] = {
        PLAIT_F_SET("check", &check, 1, "also run sqlite's integrity check over the whole database"),
        PLAIT_F_SET("json", &json, 1, "one JSON object instead of lines"),
    };
    plait_flags_cmd_t cmd = {
        .prog = PROG " status",
        .args = "DIR",
        .about = "Deployment summary: latest global adapter version, rounds by state, devices\n"
                 "enrolled and revoked, privacy spent, the latest federated evaluation. Safe\n"
                 "while the service runs (read only).\n",
        .flags = flags,
        .n_flags = sizeof(flags) / sizeof(flags[0]),
    };
    int rc = plait__aggcli_flags("status", &cmd, &dir, "missing deployment directory DIR (try --help)", argc, argv, out, err);
    if (rc != AGGCLI_FLAGS_OK) return rc;
    plait_aggstore_t *st = NULL;
    if (plait__aggcli_open_store(dir, 0, &st, err, "status") != 0) return 1;
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
        (check && (rc = plait_aggstore_check_integrity(st)) != 0)) {
        fprintf(err, PROG " status: %s (%s)\n", plait_errmsg(), plait_err_name(rc));
        plait_aggstore_close(st);
        return 1;
    }
    plait_aggstore_close(st);
    char tb[32];
    if (json) {
        plait_buf_t b;
        plait_buf_init(&b, 0);
        plait_buf_printf(&b, "{\"deployment\": ");
        plait_buf_json_string(&b, info.deployment_id, strlen(info.deployment_id));
        plait_buf_printf(&b,
                         ", \"created\": \"%s\", \"global_version\": %lld, \"rounds\": {\"total\": %lld, "
                         "\"committed\": %lld, \"failed\": %lld, \"abandoned\": %lld, \"open\": %lld}, "
                         "\"open_round\": %lld, \"devices\": {\"enrolled\": %lld, \"revoked\": %lld}, \"privacy\": ",
                         plait__aggcli_fmt_time(info.created, tb, sizeof(tb)), (long long)ver, (long long)sc.last_id,
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
        if (check) plait_buf_printf(&b, ", \"integrity\": \"ok\"");
        plait_buf_printf(&b, "}\n");
        rc = plait_buf_status(&b);
        if (rc == 0) fwrite(b.data, 1, b.len, out);
        plait_buf_free(&b);
        return rc == 0 ? 0 : 1;
    }
    fprintf(out, "deployment: %s (created %s)\n", info.deployment_id, plait__aggcli_fmt_time(info.created, tb, sizeof(tb)));
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
    if (check) fputs("integrity: ok\n", out);
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
        if (r->started > 0) plait_buf_printf(&j, "\"%s\"", plait__aggcli_fmt_time(r->started, a, sizeof(a)));
        else plait_buf_printf(&j, "null");
        plait_buf_printf(&j, ", \"ended\": ");
        if (r->ended > 0) plait_buf_printf(&j, "\"%s\"", plait__aggcli_fmt_time(r->ended, b, sizeof(b)));
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
            plait_aggstore_round_state_name(r->state), plait_aggstore_kind_name(r->kind),
            plait__aggcli_fmt_time(r->started, a, sizeof(a)),
            plait__aggcli_fmt_time(r->ended, b, sizeof(b)), (long long)r->base_version, (long long)r->new_version,
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
int plait__aggcli_devices(int argc, char **argv, FILE *out, FILE *err)
{
    const char *dir = NULL;
    plait_flags_cmd_t cmd = {
        .prog = PROG " devices",
        .args = "DIR",
        .about = "One line per enrolled device: its label, its id (the certificate CN the\n"
                 "logs print), revoked or not, when last seen, rounds it contributed to.\n",
    };
    int rc = plait__aggcli_flags("devices", &cmd, &dir, "missing deployment directory DIR (try --help)", argc, argv, out, err);
    if (rc != AGGCLI_FLAGS_OK) return rc;
    plait_aggstore_t *st = NULL;
    if (plait__aggcli_open_store(dir, 0, &st, err, "devices") != 0) return 1;
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
                    l.v[i].last_seen ? plait__aggcli_fmt_time(l.v[i].last_seen, (char[32]){0}, 32) : "never",
                    (long long)l.v[i].rounds_participated);
    }
    plait_aggstore_close(st);
    free(l.v);
    if (rc != 0) {
        return plait__aggcli_fail(err, rc, "devices");
    }
    return 0;
}

int plait__aggcli_rounds(int argc, char **argv, FILE *out, FILE *err)
{
    const char *dir = NULL;
    size_t last = 0; /* 0: all */
    int json = 0;
    plait_flag_t flags[] = {
        PLAIT_F_SIZE("last", &last, 1, 1000000000, "N", "the newest N rounds, newest first", 0),
        PLAIT_F_SET("json", &json, 1,
                    "one JSON object per line (round, state, kind, started, ended, base_version,\n"
                    "new_version, participants, dropouts, reason), no header"),
    };
    plait_flags_cmd_t cmd = {
        .prog = PROG " rounds",
        .args = "DIR",
        .about = "One line per round, oldest first (with --last: the newest N, newest first).\n",
        .flags = flags,
        .n_flags = sizeof(flags) / sizeof(flags[0]),
    };
    int rc = plait__aggcli_flags("rounds", &cmd, &dir, "missing deployment directory DIR (try --help)", argc, argv, out, err);
    if (rc != AGGCLI_FLAGS_OK) return rc;
    plait_aggstore_t *st = NULL;
    if (plait__aggcli_open_store(dir, 0, &st, err, "rounds") != 0) return 1;
    scan_t sc;
    memset(&sc, 0, sizeof(sc));
    sc.out = out;
    sc.json = json;
    if (!sc.json)
        fprintf(out, "%-6s %-9s %-8s %-20s %-20s %5s %5s %6s %8s %s\n", "round", "state", "kind", "started", "ended",
                "base", "new", "sel", "dropouts", "reason");
    /* --last N: the newest N, newest first. */
    rc = plait_aggstore_rounds_foreach(st, last != 0, last, print_round, &sc);
    plait_aggstore_close(st);
    if (rc != 0) {
        return plait__aggcli_fail(err, rc, "rounds");
    }
    return 0;
}

/* ---- privacy DIR --------------------------------------------------------------- */

static int cmd_privacy_dir(int argc, char **argv, FILE *out, FILE *err)
{
    const char *dir = NULL, *delta_s = NULL;
    int json = 0;
    plait_flag_t flags[] = {
        PLAIT_F_STR("delta", &delta_s, "D", "the delta (default: the one recorded with the latest round)"),
        PLAIT_F_SET("json", &json, 1, "one JSON object"),
    };
    plait_flags_cmd_t cmd = {
        .prog = PROG " privacy",
        .args = "DIR",
        .about = "Epsilon spent so far by the deployment in DIR, two figures at delta D:\n"
                 "  amortized   every central-DP round of the privacy ledger (sampling rate q,\n"
                 "              noise multiplier, steps) recomposed with the RDP accountant.\n"
                 "              Holds only if every round Poisson-sampled each device with\n"
                 "              probability q and who was sampled stays secret.\n"
                 "  worst case  per device, without amplification by sampling: q = 1 composed\n"
                 "              over the most DP rounds any one device joined, at the smallest\n"
                 "              noise multiplier of the ledger. Needs no sampling assumption.\n",
        .epilogue = "Without DIR, `privacy --q ...` is the calculator (see `privacy --help`).\n",
        .flags = flags,
        .n_flags = sizeof(flags) / sizeof(flags[0]),
    };
    int rc = plait__aggcli_flags("privacy", &cmd, &dir, "missing deployment directory DIR (try --help)", argc, argv, out, err);
    if (rc != AGGCLI_FLAGS_OK) return rc;
    double delta = 0;
    if (delta_s && (plait__aggcli_parse_double(delta_s, &delta) != 0 || !(delta > 0 && delta < 1))) {
        fprintf(err, PROG " privacy: bad value '%s' for --delta (want 0 < delta < 1)\n", delta_s);
        return 2;
    }
    plait_aggstore_t *st = NULL;
    if (plait__aggcli_open_store(dir, 0, &st, err, "privacy") != 0) return 1;
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
            return plait__aggcli_fail(err, rc, "privacy");
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
        return plait__aggcli_fail(err, rc, "privacy");
    }
    const int valid = pv.poisson_rounds + pv.ddg_rounds == pv.rounds;
    static const char AMORTIZED[] = "every DP round Poisson-sampled each device with the recorded q from the "
                                    "server's CSPRNG, and who was sampled stays secret";
    static const char WORST[] = "none about sampling: q = 1 over the most DP rounds one device joined, at the "
                                "smallest recorded noise multiplier";
    static const char WORST_DDG[] = "none about sampling: every distributed discrete Gaussian round composed in "
                                    "full (q = 1) with the devices that survived it";
    if (json) {
        char e[32], d[32], w[32], z[32];
        plait__aggcli_fmt_double(d, sizeof(d), delta);
        if (isfinite(eps)) plait__aggcli_fmt_double(e, sizeof(e), eps);
        if (isfinite(worst)) plait__aggcli_fmt_double(w, sizeof(w), worst);
        plait__aggcli_fmt_double(z, sizeof(z), pv.min_noise_multiplier);
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
int plait__aggcli_privacy_any(int argc, char **argv, FILE *out, FILE *err)
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

