/*
 * cli_eval.c: the operator's side of federated evaluation (cli_eval.h,
 * cli_int.h): `plait-aggregator evals DIR [--last N] [--json]`, `evaluate
 * DIR` (one request row the running service takes at its next round) and
 * the line `status` prints. Every value shown is an aggregate the service committed (the mean
 * clipped held-out loss of at least min_cohort devices); no per-device value
 * exists to show.
 */
#include "cli_eval.h"
#include "cli_int.h"

#include <math.h>
#include <string.h>
#include <time.h>

#include "plait/json.h"
#include "plait/plait.h"

typedef struct {
    FILE *out;
    int json;
} pr_t;

static const char *when(int64_t t, char *buf, size_t len)
{
    time_t tt = (time_t)t;
    struct tm tm;
    if (t <= 0 || !gmtime_r(&tt, &tm) || strftime(buf, len, "%Y-%m-%dT%H:%M:%SZ", &tm) == 0) snprintf(buf, len, "-");
    return buf;
}

static int print_eval(void *ud, const plait_aggstore_eval_t *e)
{
    pr_t *p = ud;
    char tb[32];
    if (p->json) {
        plait_buf_t b;
        plait_buf_init(&b, 0);
        plait_buf_printf(&b, "{\"round\": %lld, \"version\": %lld, \"created\": \"%s\", \"devices\": %lld, \"mean_loss\": ",
                         (long long)e->round_id, (long long)e->version, when(e->created, tb, sizeof(tb)),
                         (long long)e->devices);
        plait_buf_json_number(&b, e->mean_loss);
        plait_buf_printf(&b, ", \"perplexity\": ");
        plait_buf_json_number(&b, exp(e->mean_loss));
        plait_buf_printf(&b, ", \"loss_max\": ");
        plait_buf_json_number(&b, e->loss_max);
        plait_buf_printf(&b, "}\n");
        int rc = plait_buf_status(&b);
        if (rc == 0) fwrite(b.data, 1, b.len, p->out);
        plait_buf_free(&b);
        return rc;
    }
    fprintf(p->out, "%-6lld %-7lld %-20s %7lld %10.4f %10.2f %8g\n", (long long)e->round_id, (long long)e->version,
            when(e->created, tb, sizeof(tb)), (long long)e->devices, e->mean_loss, exp(e->mean_loss), e->loss_max);
    return 0;
}

int plait__cli_evals_print(plait_aggstore_t *st, size_t last, int json, FILE *out)
{
    pr_t p = {out, json};
    if (!json)
        fprintf(out, "%-6s %-7s %-20s %7s %10s %10s %8s\n", "round", "version", "created", "devices", "mean_loss",
                "perplexity", "loss_max");
    return plait_aggstore_evals_foreach(st, last != 0, last, print_eval, &p);
}

typedef struct {
    plait_aggstore_eval_t last;
    int64_t n;
} latest_t;

static int keep_latest(void *ud, const plait_aggstore_eval_t *e)
{
    latest_t *l = ud;
    l->last = *e; /* oldest first: the last one seen is the newest */
    l->n++;
    return 0;
}

int plait__cli_eval_latest(plait_aggstore_t *st, plait_aggstore_eval_t *e, int64_t *count, int *have)
{
    latest_t l;
    memset(&l, 0, sizeof(l));
    int rc = plait_aggstore_evals_foreach(st, false, 0, keep_latest, &l);
    *e = l.last;
    *count = l.n;
    *have = l.n > 0;
    return rc;
}

int plait__aggcli_evals(int argc, char **argv, FILE *out, FILE *err)
{
    const char *dir = NULL;
    size_t last = 0; /* 0: all */
    int json = 0;
    plait_flag_t flags[] = {
        PLAIT_F_SIZE("last", &last, 1, 1000000000, "N", "the newest N evaluations, newest first", 0),
        PLAIT_F_SET("json", &json, 1,
                    "one JSON object per line (round, version, created, devices, mean_loss,\n"
                    "perplexity, loss_max), no header"),
    };
    plait_flags_cmd_t cmd = {
        .prog = PROG " evals",
        .args = "DIR",
        .about = "Federated evaluations, oldest first: the version measured, the devices in the\n"
                 "mean (>= min_cohort) and the mean of their held-out losses, each clipped to\n"
                 "loss_max. No device's own loss exists here. Safe while the service runs.\n",
        .flags = flags,
        .n_flags = sizeof(flags) / sizeof(flags[0]),
    };
    int rc = plait__aggcli_flags("evals", &cmd, &dir, MISSING_DIR, argc, argv, out, err);
    if (rc != AGGCLI_FLAGS_OK) return rc;
    plait_aggstore_t *st = NULL;
    if (plait__aggcli_open_store(dir, 0, &st, err, "evals") != 0) return 1;
    rc = plait__cli_evals_print(st, last, json, out);
    plait_aggstore_close(st);
    if (rc != 0) {
        fprintf(err, PROG " evals: %s (%s)\n", plait_errmsg(), plait_err_name(rc));
        return 1;
    }
    return 0;
}

int plait__aggcli_evaluate(int argc, char **argv, FILE *out, FILE *err)
{
    const char *dir = NULL;
    plait_flags_cmd_t cmd = {
        .prog = PROG " evaluate",
        .args = "DIR",
        .about = "Queue one federated evaluation of the current version: the running service\n"
                 "makes its next round an evaluation round (devices report their clipped held-out\n"
                 "loss through secure aggregation; `evals` shows the mean). Needs secure_agg = true\n"
                 "and dp = none in DIR/aggregator.conf.\n",
    };
    int rc = plait__aggcli_flags("evaluate", &cmd, &dir, MISSING_DIR, argc, argv, out, err);
    if (rc != AGGCLI_FLAGS_OK) return rc;
    plait_aggcfg_t c;
    if ((rc = plait__aggcli_load_config("evaluate", dir, NULL, 0, &c, err)) != 0) return rc;
    if (plait_aggcfg_eval_allowed(&c) != 0) {
        fprintf(err, PROG " evaluate: %s\n", plait_errmsg());
        return 1;
    }
    plait_aggstore_t *st = NULL;
    if (plait__aggcli_open_store(dir, 0, &st, err, "evaluate") != 0) return 1;
    rc = plait_aggstore_eval_request(st);
    plait_aggstore_close(st);
    if (rc != 0) {
        fprintf(err, PROG " evaluate: %s (%s)\n", plait_errmsg(), plait_err_name(rc));
        return 1;
    }
    fputs("evaluation queued: the service's next round evaluates the current version\n", out);
    return 0;
}
