/*
 * cli_eval.c: the operator's view of federated evaluation (cli_eval.h):
 * `plait-aggregator evals DIR [--last N] [--json]` and the line `status`
 * prints. Every value shown is an aggregate the service committed (the mean
 * clipped held-out loss of at least min_cohort devices); no per-device value
 * exists to show.
 */
#include "cli_eval.h"

#include <math.h>
#include <string.h>
#include <time.h>

#include "plait/json.h"

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
