/*
 * svcstore.c: the service's calls into the aggregator store (aggstore.h),
 * translated from the service's terms (see svcstore.h for why this file
 * exists). No policy lives here: the service decides what to write and when.
 */
#include "svcstore.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "plait/aggstore.h"
#include "plait/ddg.h"
#include "plait/privacy.h"

int plait__svc_open(plait_aggstore_t **out, const char *path, int create, int recover, int64_t *abandoned)
{
    plait_aggstore_config_t cfg;
    plait_aggstore_config_default(&cfg);
    cfg.path = path;
    cfg.create = create != 0;
    cfg.recover_open_rounds = recover != 0;
    int rc = plait_aggstore_open(out, &cfg);
    if (rc == 0 && abandoned) {
        plait_aggstore_info_t info;
        *abandoned = plait_aggstore_info(*out, &info) == 0 ? info.abandoned_at_open : 0;
    }
    return rc;
}

void plait__svc_close(plait_aggstore_t *st) { plait_aggstore_close(st); }

static int take_blob(plait_aggstore_version_t *v, int64_t *number, uint8_t **blob, size_t *len)
{
    *blob = malloc(v->adapter_len);
    if (!*blob) return plait_fail(PLAIT_ENOMEM, "adapter of %zu bytes", v->adapter_len);
    memcpy(*blob, v->adapter, v->adapter_len);
    *len = v->adapter_len;
    if (number) *number = v->number;
    return 0;
}

int plait__svc_latest(plait_aggstore_t *st, int64_t *number, uint8_t **blob, size_t *len)
{
    plait_aggstore_version_t v;
    plait_aggstore_version_init(&v);
    int rc = plait_aggstore_version_latest(st, &v);
    if (rc == 0) rc = take_blob(&v, number, blob, len);
    plait_aggstore_version_free(&v);
    return rc;
}

int plait__svc_latest_opt(plait_aggstore_t *st, int *kind, float **state, size_t *n)
{
    plait_aggstore_version_t v;
    plait_aggstore_version_init(&v);
    int rc = plait_aggstore_version_latest(st, &v);
    *state = NULL;
    *n = 0;
    if (rc == 0) {
        *kind = v.opt_kind;
        if (v.opt_state_len) {
            *state = malloc(v.opt_state_len * sizeof(float));
            if (!*state) rc = plait_fail(PLAIT_ENOMEM, "optimizer state of %zu floats", v.opt_state_len);
            else {
                memcpy(*state, v.opt_state, v.opt_state_len * sizeof(float));
                *n = v.opt_state_len;
            }
        }
    }
    plait_aggstore_version_free(&v);
    return rc;
}

int plait__svc_version(plait_aggstore_t *st, int64_t number, uint8_t **blob, size_t *len)
{
    plait_aggstore_version_t v;
    plait_aggstore_version_init(&v);
    int rc = plait_aggstore_version_get(st, number, &v);
    if (rc == 0) rc = take_blob(&v, NULL, blob, len);
    plait_aggstore_version_free(&v);
    return rc;
}

static void fill_lora(plait_aggstore_commit_t *c, const plait__svc_lora_t *lo)
{
    c->lora_rank = lo->rank;
    c->lora_alpha = lo->alpha;
    c->lora_targets = lo->targets;
    c->opt_kind = lo->opt_kind;
}

int plait__svc_put_initial(plait_aggstore_t *st, const uint8_t *blob, size_t len, const uint8_t sha[32],
                           const plait__svc_lora_t *lo)
{
    plait_aggstore_commit_t c;
    memset(&c, 0, sizeof(c));
    c.adapter = blob;
    c.adapter_len = len;
    c.sha256 = sha;
    fill_lora(&c, lo);
    return plait_aggstore_version_put_initial(st, &c);
}

int plait__svc_round_begin(plait_aggstore_t *st, int64_t target, int64_t min, const char *task_json,
                           int64_t base_version, int64_t *rid)
{
    return plait_aggstore_round_begin(st, target, min, task_json, base_version, rid);
}

/* The nonzero rejection counters as store rows. */
static size_t fill_stats(plait_aggstore_stats_t *o, plait_aggstore_rejection_t *rows, const plait__svc_stats_t *s)
{
    memset(o, 0, sizeof(*o));
    o->participants = s->participants;
    o->dropouts = s->dropouts;
    o->bytes_up = s->bytes_up;
    o->bytes_down = s->bytes_down;
    size_t n = 0;
    for (int r = 0; r < PLAIT__REJ_COUNT; r++)
        if (s->rej[r]) {
            rows[n].reason = plait__rej_name((plait__rej_t)r);
            rows[n].count = (int64_t)s->rej[r];
            n++;
        }
    o->rejections = rows;
    o->n_rejections = n;
    return n;
}

int plait__svc_round_fail(plait_aggstore_t *st, int64_t rid, const char *reason, const plait__svc_stats_t *stats)
{
    plait_aggstore_stats_t s;
    plait_aggstore_rejection_t rows[PLAIT__REJ_COUNT];
    if (stats) fill_stats(&s, rows, stats);
    return plait_aggstore_round_fail(st, rid, reason, stats ? &s : NULL);
}

int plait__svc_eval_begin(plait_aggstore_t *st, int64_t target, int64_t min, const char *task_json, int64_t version,
                          int64_t *rid)
{
    return plait_aggstore_eval_begin(st, target, min, task_json, version, rid);
}

int plait__svc_eval_commit(plait_aggstore_t *st, int64_t rid, int64_t devices, double mean_loss, double loss_max,
                           const plait__svc_stats_t *stats)
{
    plait_aggstore_stats_t s;
    plait_aggstore_rejection_t rows[PLAIT__REJ_COUNT];
    fill_stats(&s, rows, stats);
    return plait_aggstore_eval_commit(st, rid, devices, mean_loss, loss_max, &s);
}

int plait__svc_eval_request(plait_aggstore_t *st)
{
    return plait_aggstore_eval_request(st);
}

int plait__svc_eval_take_request(plait_aggstore_t *st, int *requested)
{
    bool r = false;
    int rc = plait_aggstore_eval_take_request(st, &r);
    *requested = r;
    return rc;
}

int plait__svc_round_commit(plait_aggstore_t *st, int64_t rid, const plait__svc_commit_t *c, int64_t *version)
{
    int rc;
    plait_aggstore_commit_t cm;
    memset(&cm, 0, sizeof(cm));
    cm.uploaders = c->uploaders; /* counted inside the commit's transaction */
    cm.n_uploaders = c->n_uploaders;
    cm.adapter = c->adapter;
    cm.adapter_len = c->adapter_len;
    cm.sha256 = c->sha256;
    fill_lora(&cm, &c->lora);
    cm.opt_state = c->opt_state;
    cm.opt_state_len = c->opt_state_len;
    plait_aggstore_stats_t s;
    plait_aggstore_rejection_t rows[PLAIT__REJ_COUNT];
    if (c->stats) {
        fill_stats(&s, rows, c->stats);
        cm.stats = &s;
    }
    plait_aggstore_ledger_t led;
    if (c->dp) {
        /* epsilon after this round, recomposed from the whole ledger (a restart
         * starts a fresh accountant in the round core, so its own figure would
         * under-report). */
        plait_accountant_t acc;
        double eps = INFINITY, order;
        if ((rc = plait_accountant_init(&acc, NULL, 0)) != 0) return rc;
        if ((rc = plait_aggstore_ledger_compose(st, &acc)) != 0) return rc;
        if ((rc = c->ddg ? plait_accountant_compose_ddg(&acc, c->ddg_l2, (size_t)c->ddg_dim, c->ddg_var,
                                                        (uint32_t)c->ddg_n, 1)
                         : plait_accountant_compose(&acc, c->q, c->z, 1)) != 0)
            return rc;
        if (plait_accountant_epsilon(&acc, c->delta, PLAIT_EPS_IMPROVED, &eps, &order) != 0) eps = INFINITY;
        memset(&led, 0, sizeof(led));
        led.q = c->q;
        led.noise_multiplier = c->z;
        led.steps = 1;
        led.delta = c->delta;
        led.epsilon = eps;
        led.clip = c->clip;
        snprintf(led.mechanism, sizeof(led.mechanism), "%s",
                 c->ddg ? "ddg" : c->adaptive ? "gaussian+clip-count" : "gaussian");
        if (c->ddg) {
            led.ddg_dim = c->ddg_dim;
            led.ddg_var = c->ddg_var;
            led.ddg_n = c->ddg_n;
            led.ddg_l2 = c->ddg_l2;
        }
        snprintf(led.selection, sizeof(led.selection), "%s", c->poisson ? "poisson" : "first-come");
        cm.ledger = &led;
    }
    /* The adaptive clip after this round is a released value (the next Task carries it); stored
     * with the commit so that a restart resumes it (plait__svc_adaptive_clip). */
    plait_aggstore_metric_t mets[3] = {{"accepted", c->accepted}, {"duration_s", c->duration_s},
                                       {"dp_next_clip", c->next_clip}};
    cm.metrics = mets;
    cm.n_metrics = c->dp && c->adaptive && c->next_clip > 0 ? 3 : 2;
    return plait_aggstore_round_commit(st, rid, &cm, version);
}

typedef struct {
    int64_t round;
    int adaptive;
    double clip;
    int found;
} last_clip_t;

static int last_ledger(void *ud, const plait_aggstore_ledger_t *l)
{
    last_clip_t *lc = ud;
    lc->round = l->round_id; /* rows come in round order: the last one wins */
    lc->adaptive = strcmp(l->mechanism, "gaussian+clip-count") == 0;
    return 0;
}

static int next_clip_metric(void *ud, int64_t round, const plait_aggstore_metric_t *m)
{
    (void)round;
    last_clip_t *lc = ud;
    if (strcmp(m->key, "dp_next_clip") == 0) {
        lc->clip = m->value;
        lc->found = 1;
    }
    return 0;
}

int plait__svc_adaptive_clip(plait_aggstore_t *st, double *clip, int64_t *round)
{
    last_clip_t lc;
    memset(&lc, 0, sizeof(lc));
    int rc = plait_aggstore_ledger_foreach(st, last_ledger, &lc);
    if (rc != 0) return rc;
    if (lc.round == 0 || !lc.adaptive) return PLAIT_ENOENT;
    if ((rc = plait_aggstore_metrics_foreach(st, lc.round, next_clip_metric, &lc)) != 0) return rc;
    if (!lc.found) return PLAIT_ENOENT;
    if (!isfinite(lc.clip) || lc.clip <= 0)
        return plait_fail(PLAIT_EPROTO, "round %lld: stored dp_next_clip is not finite and > 0", (long long)lc.round);
    *clip = lc.clip;
    *round = lc.round;
    return 0;
}

int plait__svc_device_revoked(plait_aggstore_t *st, const char *id)
{
    bool revoked = false;
    return plait_aggstore_device_is_revoked(st, id, &revoked) == 0 && revoked;
}

int plait__svc_device_check(plait_aggstore_t *st, const char *id, const uint8_t fpr[32])
{
    return plait_aggstore_device_check(st, id, fpr);
}

static int count_live(void *ud, const plait_aggstore_device_t *d)
{
    if (!d->revoked) (*(uint64_t *)ud)++;
    return 0;
}

int plait__svc_population(plait_aggstore_t *st, uint64_t *n)
{
    uint64_t k = 0;
    int rc = plait_aggstore_devices_foreach(st, count_live, &k);
    if (rc == 0) *n = k;
    return rc;
}

int plait__svc_fill_check(plait_aggstore_t *st, size_t want, size_t min_cohort, double selection_timeout_s,
                          uint64_t *live, char *why, size_t cap)
{
    uint64_t n = 0;
    int rc = plait__svc_population(st, &n);
    if (rc != 0) return rc;
    *live = n;
    if (cap) why[0] = '\0';
    if (n < min_cohort) {
        snprintf(why, cap,
                 "this round can never fill: it needs min_cohort = %zu devices and %llu %s enrolled and not revoked; "
                 "it fails after selection_timeout_s = %g s (enroll devices, or lower min_cohort and target_cohort)",
                 min_cohort, (unsigned long long)n, n == 1 ? "is" : "are", selection_timeout_s);
        return 1;
    }
    if (n < want) {
        snprintf(why, cap,
                 "this round selects %zu devices (target_cohort x overselect) and only %llu %s enrolled: training "
                 "starts only after selection_timeout_s = %g s (lower target_cohort or overselect to start at once)",
                 want, (unsigned long long)n, n == 1 ? "is" : "are", selection_timeout_s);
        return 2;
    }
    return 0;
}
