/*
 * round.c: the federated round state machine (see round.h), shared by the
 * in-process simulator and the aggregator service. No I/O, no clock, no
 * randomness of its own: time and the DP noise stream come from the caller.
 *
 * Invariants:
 *   - the cohort table holds exactly the selected clients of the open round,
 *     each with one status (selected, accepted, dropped, refused);
 *   - first come: accepted <= target_cohort; once accepted == target, or every selected
 *     client is accounted for, or the deadline passed, the round is closed
 *     and no update is folded in any more (poisson: no target; the round
 *     closes when every selected client is accounted for, or at the deadline);
 *   - the global span, the optimizer and the DP state change only in
 *     commit() (the DP state is snapshotted at aggregate() and restored on
 *     abort), so an abandoned round leaves no trace but its stats;
 *   - quantized updates are summed mod 2^32 (exact, order-independent),
 *     which is what a secure-aggregation protocol reveals; the sum of at most
 *     want <= plait_quant_max_cohort(bits) vectors cannot wrap.
 *
 * Workload: one call per check-in and per update; a quantized update costs a
 * decode and a norm over P values plus a P-word add; aggregate and commit
 * are O(P). The cohort table is an open-addressing hash of 2·want slots.
 * Memory: 12 bytes a word for plain quantized FedAvg (the global span, the
 * round's mean, the integer sum: the mean is decoded from the sum in blocks);
 * float updates, central DP and ddg add the double accumulator, the robust
 * estimators and ddg a double per word of scratch, the robust ones every update.
 */
#include "plait/round.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "plait/crypto.h"
#include "plait/ddg.h"
#include "plait/strategy.h"

enum { M_EMPTY = 0, M_SELECTED, M_ACCEPTED, M_DROPPED, M_REFUSED };

typedef struct {
    uint64_t id;
    uint8_t status; /* M_* */
} member_t;

struct plait_round_s {
    plait_round_config_t cfg;
    plait_round_state_t state;
    float *global;      /* (P) committed global span */
    float *pending;     /* (P) averaged update Δ awaiting commit */
    double *scratch;    /* (P) one decoded update (robust or ddg only, else NULL) */
    uint32_t *wsum;     /* (P + 1 + clip_bit) sum mod 2^32 of quantized words */
    plait_fedavg_t *fa; /* float updates, and the decoded sum of quantized ones */
    plait_server_opt_t *opt;
    plait_robust_t *robust; /* robust: every accepted update of the round, else NULL */
    float *one;         /* robust, quantized: (P) one decoded, unweighted update */
    plait_dp_t dp, dp_saved;
    plait_accountant_t acc;
    double delta;
    double epsilon;
    uint64_t version;
    uint64_t round_id;
    double deadline;
    member_t *tab;      /* cohort hash table */
    size_t tab_cap;     /* power of two >= 2·want */
    size_t accounted;   /* accepted + dropped + refused members */
    int masked_open;    /* secure: masked updates were accepted, their unmasked sum is not set yet */
    plait_round_stats_t st;
};

const char *plait_round_state_name(plait_round_state_t s)
{
    switch (s) {
    case PLAIT_ROUND_IDLE: return "idle";
    case PLAIT_ROUND_SELECTION: return "selection";
    case PLAIT_ROUND_TRAINING: return "training";
    case PLAIT_ROUND_AGGREGATION: return "aggregation";
    case PLAIT_ROUND_COMMIT: return "commit";
    case PLAIT_ROUND_FAILED: return "failed";
    }
    return "unknown";
}

void plait_round_config_default(plait_round_config_t *cfg)
{
    memset(cfg, 0, sizeof(*cfg));
    cfg->dim = 0;                     /* must be set */
    cfg->target_cohort = 10;          /* updates per round */
    cfg->min_cohort = 2;              /* fewer fail the round */
    cfg->overselect = 1.3;            /* 30% extra, as Bonawitz et al. 2019 */
    cfg->selection_timeout_s = 60.0;  /* selection window */
    cfg->round_timeout_s = 600.0;     /* training deadline */
    cfg->quantized = 1;               /* P + 1 words per update */
    cfg->secure = 0;                  /* words in the clear: checked one by one */
    cfg->check_norm = 1;              /* refuse over-long updates */
    plait_quant_config_default(&cfg->quant); /* 16 bits, range 1 */
    cfg->clip_norm = 1.0;             /* S */
    cfg->weight_cap = 1000.0;         /* examples counted at most */
    plait_server_opt_config_default(&cfg->opt, PLAIT_OPT_FEDAVG); /* x += Δ */
    cfg->dp = 0;                      /* no central DP */
    plait_dp_config_default(&cfg->dp_cfg);
    cfg->population = 0;              /* required with dp */
    cfg->dp_delta = 0;                /* 1 / N^1.1 */
    cfg->poisson = 0;                 /* first come */
    cfg->sample_rate = 1.0;           /* set per round by the caller */
    cfg->clip_bit = 0;                /* P + 1 words */
    cfg->robust = 0;                  /* the weighted mean (FedAvg) */
    cfg->robust_kind = PLAIT_ROBUST_MEDIAN;
    cfg->trim_fraction = 0.1;         /* Yin et al. 2018's beta for a few Byzantine devices */
}

static size_t want_of(const plait_round_config_t *c)
{
    if (c->poisson) {
        /* Every sampled client, up to the population and what the sum can hold. */
        uint64_t cap = c->population < PLAIT_ROUND_MAX_COHORT ? c->population : PLAIT_ROUND_MAX_COHORT;
        if (c->quantized && c->quant.bits >= 1 && c->quant.bits <= 31) {
            uint64_t wrap = plait_quant_max_cohort(c->quant.bits);
            if (wrap < cap) cap = wrap;
        }
        return cap ? (size_t)cap : 1;
    }
    double w = ceil((double)c->target_cohort * c->overselect);
    return w >= (double)PLAIT_ROUND_MAX_COHORT ? PLAIT_ROUND_MAX_COHORT + 1 : (size_t)w;
}

int plait_round_config_validate(const plait_round_config_t *c)
{
    if (!c) return plait_fail(PLAIT_EINVAL, "round config: NULL");
    if (c->dim == 0) return plait_fail(PLAIT_EINVAL, "round config: dim must be > 0");
    if (c->dim > PLAIT_AGG_MAX_DIM) return plait_fail(PLAIT_ETOOBIG, "round config: dim %zu too large", c->dim);
    if (c->target_cohort == 0) return plait_fail(PLAIT_EINVAL, "round config: target_cohort must be >= 1");
    if (c->min_cohort == 0 || c->min_cohort > c->target_cohort)
        return plait_fail(PLAIT_EINVAL, "round config: min_cohort must be in 1..target_cohort");
    if (!isfinite(c->overselect) || c->overselect < 1.0 || c->overselect > 100.0)
        return plait_fail(PLAIT_EINVAL, "round config: overselect must be in [1, 100]");
    if (want_of(c) > PLAIT_ROUND_MAX_COHORT)
        return plait_fail(PLAIT_ETOOBIG, "round config: cohort of %zu·%g exceeds %zu", c->target_cohort,
                          c->overselect, PLAIT_ROUND_MAX_COHORT);
    if (!isfinite(c->selection_timeout_s) || c->selection_timeout_s < 0)
        return plait_fail(PLAIT_EINVAL, "round config: selection_timeout_s must be finite and >= 0");
    if (!isfinite(c->round_timeout_s) || c->round_timeout_s <= 0)
        return plait_fail(PLAIT_EINVAL, "round config: round_timeout_s must be finite and > 0");
    if (c->quantized != 0 && c->quantized != 1) return plait_fail(PLAIT_EINVAL, "round config: quantized is 0 or 1");
    if (c->secure && !c->quantized) return plait_fail(PLAIT_EINVAL, "round config: secure needs quantized updates");
    if (c->clip_bit != 0 && c->clip_bit != 1) return plait_fail(PLAIT_EINVAL, "round config: clip_bit is 0 or 1");
    if (c->clip_bit && !c->quantized) return plait_fail(PLAIT_EINVAL, "round config: clip_bit needs quantized updates");
    int rc;
    if (c->quantized) {
        if ((rc = plait_quant_config_validate(&c->quant)) != 0) return rc;
        if (plait_quant_check_cohort(&c->quant, want_of(c)) != 0)
            return plait_fail(PLAIT_ETOOBIG, "round config: %zu selected clients could wrap a %u-bit sum", want_of(c),
                              c->quant.bits);
    }
    if (!isfinite(c->clip_norm) || c->clip_norm <= 0)
        return plait_fail(PLAIT_EINVAL, "round config: clip_norm must be finite and > 0");
    if (!isfinite(c->weight_cap) || c->weight_cap <= 0)
        return plait_fail(PLAIT_EINVAL, "round config: weight_cap must be finite and > 0");
    if ((rc = plait_server_opt_config_validate(&c->opt)) != 0) return rc;
    if (c->poisson) {
        if (c->population == 0) return plait_fail(PLAIT_EINVAL, "round config: poisson needs population >= 1");
        if (!(c->sample_rate > 0 && c->sample_rate <= 1))
            return plait_fail(PLAIT_EINVAL, "round config: sample_rate must be in (0, 1]");
    }
    if (c->robust) {
        if (c->secure)
            return plait_fail(PLAIT_EINVAL, "round config: robust aggregation needs each update, which secure "
                                            "aggregation hides");
        if (c->dp || c->ddg)
            return plait_fail(PLAIT_EINVAL, "round config: robust aggregation with DP: the accountant assumes a sum "
                                            "of clipped updates");
        if (c->poisson) return plait_fail(PLAIT_EINVAL, "round config: robust aggregation needs a bounded cohort (not poisson)");
        if (c->robust_kind != PLAIT_ROBUST_MEDIAN && c->robust_kind != PLAIT_ROBUST_TRIMMED_MEAN)
            return plait_fail(PLAIT_EINVAL, "round config: robust_kind %d", (int)c->robust_kind);
        if (!(c->trim_fraction >= 0 && c->trim_fraction < 0.5))
            return plait_fail(PLAIT_EINVAL, "round config: trim_fraction must be in [0, 0.5)");
    }
    if (c->ddg) {
        if (!c->secure || !c->quantized || c->dp || c->clip_bit)
            return plait_fail(PLAIT_EINVAL, "round config: ddg needs secure quantized words, without dp or clip_bit");
        if (!(c->ddg_var > 0 && isfinite(c->ddg_var)))
            return plait_fail(PLAIT_EINVAL, "round config: ddg_var must be finite and > 0");
        if (!(c->dp_delta > 0 && c->dp_delta < 1) && !(c->dp_delta == 0 && c->population >= 1))
            return plait_fail(PLAIT_EINVAL, "round config: ddg needs dp_delta in (0, 1) or a population");
    }
    if (c->dp) {
        if (!c->poisson && c->population < c->target_cohort)
            return plait_fail(PLAIT_EINVAL, "round config: dp needs population >= target_cohort");
        plait_dp_config_t d = c->dp_cfg;
        if (d.expected_weight == 0) d.expected_weight = (double)c->target_cohort;
        if ((rc = plait_dp_config_validate(&d)) != 0) return rc;
        if (c->dp_delta != 0 && !(c->dp_delta > 0 && c->dp_delta < 1))
            return plait_fail(PLAIT_EINVAL, "round config: dp_delta must be in (0, 1) (or 0 for 1/N^1.1)");
    }
    return 0;
}

void plait_round_destroy(plait_round_t *r)
{
    if (!r) return;
    free(r->global);
    free(r->pending);
    if (r->scratch) plait_zeroize(r->scratch, r->cfg.dim * sizeof(double));
    free(r->scratch);
    free(r->wsum);
    free(r->tab);
    plait_fedavg_destroy(r->fa);
    plait_server_opt_destroy(r->opt);
    plait_robust_destroy(r->robust);
    if (r->one) plait_zeroize(r->one, r->cfg.dim * sizeof(float));
    free(r->one);
    plait_zeroize(r, sizeof(*r));
    free(r);
}

/* The plain mean of quantized updates needs no double accumulator: aggregate() decodes the
 * integer sum straight into the mean (plait_agg_mean_quant_sum). */
static int mean_direct(const plait_round_t *r)
{
    return r->cfg.quantized && !r->cfg.ddg && !r->cfg.dp && !r->cfg.robust;
}

/* A fresh accumulator for the round: the clip bound may have moved (adaptive DP). */
static int make_fedavg(plait_round_t *r)
{
    plait_fedavg_destroy(r->fa);
    r->fa = NULL;
    if (mean_direct(r)) return 0;
    plait_fedavg_config_t fc;
    plait_fedavg_config_default(&fc);
    fc.dim = r->cfg.dim;
    /* Without the norm check, a bound no finite float update can exceed. */
    fc.clip_norm = r->cfg.check_norm ? plait_round_clip(r) : 1e300;
    fc.weight_cap = r->cfg.weight_cap;
    fc.uniform_weights = r->cfg.dp;
    return plait_fedavg_create(&r->fa, &fc);
}

int plait_round_create(plait_round_t **out, const plait_round_config_t *cfg, const float *global, size_t n)
{
    if (!out) return plait_fail(PLAIT_EINVAL, "round: NULL out");
    *out = NULL;
    int rc = plait_round_config_validate(cfg);
    if (rc != 0) return rc;
    if (!global) return plait_fail(PLAIT_EINVAL, "round: NULL global span");
    if (n != cfg->dim) return plait_fail(PLAIT_EMISMATCH, "round: global span of %zu, dim %zu", n, cfg->dim);
    for (size_t i = 0; i < n; i++)
        if (!isfinite(global[i])) return plait_fail(PLAIT_EINVAL, "round: non-finite global value at %zu", i);
    plait_round_t *r = calloc(1, sizeof(*r));
    if (!r) return plait_fail(PLAIT_ENOMEM, "round: struct");
    r->cfg = *cfg;
    size_t P = cfg->dim, want = want_of(cfg);
    r->tab_cap = 16;
    while (r->tab_cap < 2 * want) r->tab_cap <<= 1;
    r->global = malloc(P * sizeof(float));
    r->pending = calloc(P, sizeof(float));
    /* One decoded update: only the robust estimators (per update) and a ddg sum need it; the
     * plain sum is decoded in blocks (plait_fedavg_add_quant_sum), so P doubles are not kept. */
    if (cfg->robust || cfg->ddg) r->scratch = calloc(P, sizeof(double));
    r->wsum = calloc(P + 2, sizeof(uint32_t));
    r->tab = calloc(r->tab_cap, sizeof(member_t));
    if (!r->global || !r->pending || ((cfg->robust || cfg->ddg) && !r->scratch) || !r->wsum || !r->tab) {
        plait_round_destroy(r);
        return plait_fail(PLAIT_ENOMEM, "round: buffers for %zu values", P);
    }
    memcpy(r->global, global, P * sizeof(float));
    if ((rc = plait_server_opt_create(&r->opt, &cfg->opt, P)) != 0) goto fail;
    if (cfg->robust) {
        plait_robust_config_t rb;
        plait_robust_config_default(&rb);
        rb.dim = P;
        rb.max_updates = want;
        rb.trim_fraction = cfg->trim_fraction;
        if ((rc = plait_robust_create(&r->robust, &rb)) != 0) goto fail;
        if (!(r->one = malloc(P * sizeof(float)))) {
            rc = plait_fail(PLAIT_ENOMEM, "round: robust buffer");
            goto fail;
        }
    }
    if (cfg->dp) {
        plait_dp_config_t d = cfg->dp_cfg;
        if (d.expected_weight == 0) d.expected_weight = (double)cfg->target_cohort;
        if ((rc = plait_dp_setup(&r->dp, &d)) != 0) goto fail;
        if ((rc = plait_accountant_init(&r->acc, NULL, 0)) != 0) goto fail;
        r->delta = cfg->dp_delta > 0 ? cfg->dp_delta : pow((double)cfg->population, -1.1);
    }
    if (cfg->ddg) {
        if ((rc = plait_accountant_init(&r->acc, NULL, 0)) != 0) goto fail;
        r->delta = cfg->dp_delta > 0 ? cfg->dp_delta : pow((double)cfg->population, -1.1);
    }
    if ((rc = make_fedavg(r)) != 0) goto fail;
    r->state = PLAIT_ROUND_IDLE;
    *out = r;
    return 0;
fail:
    plait_round_destroy(r);
    return rc;
}

plait_round_state_t plait_round_state(const plait_round_t *r) { return r->state; }
const float *plait_round_global(const plait_round_t *r) { return r->global; }

int plait_round_replace_global(plait_round_t *r, const float *g, size_t n)
{
    if (!r || !g) return plait_fail(PLAIT_EINVAL, "round: NULL");
    if (n != r->cfg.dim) return plait_fail(PLAIT_EMISMATCH, "round: global span of %zu, dim %zu", n, r->cfg.dim);
    if (r->state != PLAIT_ROUND_IDLE || !r->st.committed)
        return plait_fail(PLAIT_ESTALE, "round: the global span is replaced only just after a commit");
    for (size_t i = 0; i < n; i++)
        if (!isfinite(g[i])) return plait_fail(PLAIT_EINVAL, "round: non-finite global value at %zu", i);
    memcpy(r->global, g, n * sizeof(float));
    return 0;
}
uint64_t plait_round_version(const plait_round_t *r) { return r->version; }
double plait_round_clip(const plait_round_t *r) { return r->cfg.dp ? r->dp.clip : r->cfg.clip_norm; }
const plait_quant_config_t *plait_round_quant(const plait_round_t *r) { return &r->cfg.quant; }
double plait_round_epsilon(const plait_round_t *r) { return r->epsilon; }
double plait_round_delta(const plait_round_t *r) { return r->delta; }

int plait_round_set_sample_rate(plait_round_t *r, double q)
{
    if (!r || !r->cfg.poisson) return plait_fail(PLAIT_EINVAL, "round: sample rate needs a poisson config");
    if (!(q > 0 && q <= 1)) return plait_fail(PLAIT_EINVAL, "round: sample rate %g not in (0, 1]", q);
    if (r->state != PLAIT_ROUND_IDLE && r->state != PLAIT_ROUND_FAILED)
        return plait_fail(PLAIT_EBUSY, "round: sample rate changes between rounds only");
    r->cfg.sample_rate = q;
    return 0;
}

/* q the accountant composes for the current round. */
static double rate_of(const plait_round_t *r)
{
    if (r->cfg.poisson) return r->cfg.sample_rate;
    double q = (double)r->cfg.target_cohort / (double)r->cfg.population;
    return q > 1 ? 1 : q;
}

size_t plait_round_opt_state_len(const plait_round_t *r)
{
    return r && !r->cfg.strategy ? plait_server_opt_state_len(r->opt) : 0;
}

int plait_round_opt_export(const plait_round_t *r, float *out, size_t n)
{
    if (!r) return plait_fail(PLAIT_EINVAL, "round_opt_export: NULL round");
    if (r->cfg.strategy) return n == 0 ? 0 : plait_fail(PLAIT_EMISMATCH, "round_opt_export: a strategy keeps its own state");
    return plait_server_opt_export(r->opt, out, n);
}

int plait_round_opt_import(plait_round_t *r, const float *in, size_t n)
{
    if (!r) return plait_fail(PLAIT_EINVAL, "round_opt_import: NULL round");
    if (r->cfg.strategy) return n == 0 ? 0 : plait_fail(PLAIT_EMISMATCH, "round_opt_import: a strategy keeps its own state");
    return plait_server_opt_import(r->opt, in, n);
}

void plait_round_stats(const plait_round_t *r, plait_round_stats_t *st)
{
    *st = r->st;
    st->state = r->state;
}

/* ---- cohort table ------------------------------------------------------- */

static uint64_t mix64(uint64_t x)
{
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ULL;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

/* The slot holding id, or the empty slot where it would go. */
static member_t *slot_of(plait_round_t *r, uint64_t id)
{
    size_t mask = r->tab_cap - 1, i = (size_t)mix64(id) & mask;
    while (r->tab[i].status != M_EMPTY && r->tab[i].id != id) i = (i + 1) & mask;
    return &r->tab[i];
}

/* ---- transitions -------------------------------------------------------- */

static void close_round(plait_round_t *r, double now)
{
    r->st.t_close = now;
    r->st.stragglers = r->st.selected - r->accounted;
    r->state = r->st.accepted >= r->cfg.min_cohort ? PLAIT_ROUND_AGGREGATION : PLAIT_ROUND_FAILED;
}

static void maybe_close(plait_round_t *r, double now)
{
    if (r->state != PLAIT_ROUND_TRAINING) return;
    if ((!r->cfg.poisson && r->st.accepted >= r->cfg.target_cohort) || r->accounted >= r->st.selected || now >= r->deadline)
        close_round(r, now);
}

static void start_training(plait_round_t *r, double now)
{
    r->st.t_train = now;
    r->st.bytes_down = (uint64_t)r->st.selected * r->cfg.dim * sizeof(float);
    if (r->st.selected < r->cfg.min_cohort) {
        r->st.t_close = now;
        r->st.stragglers = 0;
        r->state = PLAIT_ROUND_FAILED;
        return;
    }
    r->deadline = now + r->cfg.round_timeout_s;
    r->state = PLAIT_ROUND_TRAINING;
}

int plait_round_open(plait_round_t *r, double now, uint64_t *round_id)
{
    if (!r) return plait_fail(PLAIT_EINVAL, "round: NULL");
    if (r->state != PLAIT_ROUND_IDLE && r->state != PLAIT_ROUND_FAILED)
        return plait_fail(PLAIT_EBUSY, "round %llu is %s", (unsigned long long)r->round_id,
                          plait_round_state_name(r->state));
    int rc = make_fedavg(r);
    if (rc != 0) return rc;
    memset(r->tab, 0, r->tab_cap * sizeof(member_t));
    memset(r->wsum, 0, (r->cfg.dim + 2) * sizeof(uint32_t));
    plait_robust_reset(r->robust);
    r->masked_open = 0;
    r->accounted = 0;
    r->round_id++;
    memset(&r->st, 0, sizeof(r->st));
    r->st.round_id = r->round_id;
    r->st.want = want_of(&r->cfg);
    r->st.t_open = now;
    r->st.clip_used = plait_round_clip(r);
    r->st.epsilon = r->epsilon;
    r->st.sample_rate = r->cfg.dp ? rate_of(r) : 0;
    r->deadline = now + r->cfg.selection_timeout_s;
    r->state = PLAIT_ROUND_SELECTION;
    if (round_id) *round_id = r->round_id;
    return 0;
}

int plait_round_select(plait_round_t *r, uint64_t client, double now)
{
    if (!r) return plait_fail(PLAIT_EINVAL, "round: NULL");
    if (r->state != PLAIT_ROUND_SELECTION || r->st.selected >= r->st.want)
        return plait_fail(PLAIT_EBUSY, "round %llu: not selecting", (unsigned long long)r->round_id);
    member_t *m = slot_of(r, client);
    if (m->status != M_EMPTY) return plait_fail(PLAIT_EINVAL, "round: client already selected");
    m->id = client;
    m->status = M_SELECTED;
    r->st.selected++;
    if (r->st.selected == r->st.want) start_training(r, now);
    return 0;
}

int plait_round_start(plait_round_t *r, double now)
{
    if (!r) return plait_fail(PLAIT_EINVAL, "round: NULL");
    if (r->state != PLAIT_ROUND_SELECTION) return plait_fail(PLAIT_ESTALE, "round: not selecting");
    start_training(r, now);
    return 0;
}

/* Common admission of an update: which round, which client, when. */
static int admit(plait_round_t *r, uint64_t client, uint64_t round_id, size_t bytes, member_t **out)
{
    r->st.bytes_up += bytes;
    if (round_id != r->round_id) {
        r->st.rej_stale++;
        return plait_fail(PLAIT_ESTALE, "update for round %llu, current round %llu", (unsigned long long)round_id,
                          (unsigned long long)r->round_id);
    }
    member_t *m = slot_of(r, client);
    if (m->status == M_EMPTY) {
        r->st.rej_unknown++;
        return plait_fail(PLAIT_ENOENT, "round %llu: client not selected", (unsigned long long)round_id);
    }
    if (m->status != M_SELECTED) {
        r->st.rej_duplicate++;
        return plait_fail(PLAIT_ESTALE, "round %llu: client already reported", (unsigned long long)round_id);
    }
    if (r->state != PLAIT_ROUND_TRAINING) {
        r->st.rej_late++;
        return plait_fail(PLAIT_ESTALE, "round %llu: update after the round closed", (unsigned long long)round_id);
    }
    *out = m;
    return 0;
}

static void refuse(plait_round_t *r, member_t *m, int rc, double now)
{
    switch (rc) {
    case PLAIT_EMISMATCH: r->st.rej_length++; break;
    case PLAIT_ETOOBIG: r->st.rej_norm++; break;
    default: r->st.rej_malformed++; break;
    }
    m->status = M_REFUSED;
    r->accounted++;
    maybe_close(r, now);
}

static void accept(plait_round_t *r, member_t *m, int unclipped, double now)
{
    m->status = M_ACCEPTED;
    r->accounted++;
    r->st.accepted++;
    r->st.unclipped += unclipped ? 1 : 0;
    maybe_close(r, now);
}

/* A quantized update, as uint32_t words (w32) or as wb-byte little-endian words (nb). */
typedef struct {
    const uint32_t *w32;
    const uint8_t *nb;
    unsigned wb;
} qwords_t;

static uint32_t qword(const qwords_t *q, size_t i) { return q->w32 ? q->w32[i] : plait_narrow_word(q->nb, q->wb, i); }

static void qadd(uint32_t *acc, const qwords_t *q, size_t from, size_t n)
{
    if (q->w32) plait_update_add_u32(acc + from, q->w32 + from, n);
    else plait_update_add_narrow(acc + from, q->nb + from * q->wb, q->wb, n);
}

static int submit_q(plait_round_t *r, uint64_t client, uint64_t round_id, const qwords_t *q, size_t n_words,
                    int unclipped, double now)
{
    if (!r) return plait_fail(PLAIT_EINVAL, "round: NULL");
    if (!r->cfg.quantized) return plait_fail(PLAIT_EINVAL, "round: this task takes float updates");
    plait_round_tick(r, now);
    member_t *m = NULL;
    int rc = admit(r, client, round_id, n_words * sizeof(uint32_t), &m);
    if (rc != 0) return rc;
    size_t P = r->cfg.dim;
    if (!q->w32 && !q->nb) rc = plait_fail(PLAIT_EINVAL, "round: NULL update");
    const size_t nw = P + 1 + (r->cfg.clip_bit ? 1 : 0);
    if (rc == 0 && n_words != nw) rc = plait_fail(PLAIT_EMISMATCH, "round: %zu words, expected %zu", n_words, nw);
    int added = 0; /* the span is in wsum already (the fused check below) */
    if (rc == 0 && !r->cfg.secure) {
        /* Decode this update alone: every word must be a valid encoding, the
         * weight positive, and w·x inside the clip ball up to quantization. */
        double w = 0, ss = 0;
        if (r->robust) { /* the estimators need the decoded values */
            rc = q->w32 ? plait_quant_decode_sum(&r->cfg.quant, q->w32, P, 1, r->scratch)
                        : plait_quant_decode_narrow(&r->cfg.quant, q->nb, q->wb, P, r->scratch);
            for (size_t i = 0; rc == 0 && i < P; i++) ss += r->scratch[i] * r->scratch[i];
        } else { /* range check, sum of squares and the sum in one pass; taken back on refusal */
            rc = q->w32 ? plait_quant_add_checked(&r->cfg.quant, r->wsum, q->w32, P, &ss)
                        : plait_quant_add_checked_narrow(&r->cfg.quant, r->wsum, q->nb, q->wb, P, &ss);
            added = rc == 0;
        }
        if (rc == 0) rc = plait_quant_decode_weight_sum(&r->cfg.quant, qword(q, P), 1, &w);
        if (rc == 0 && !(w > 0)) rc = plait_fail(PLAIT_EINVAL, "round: zero weight");
        if (rc == 0 && r->cfg.check_norm) {
            double bound = plait_round_clip(r) + plait_quant_norm_slack(&r->cfg.quant, P) + 1e-9;
            if (sqrt(ss) > bound)
                rc = plait_fail(PLAIT_ETOOBIG, "round: update norm above the bound %g (clip plus quantization slack)",
                                bound); /* never the norm itself: it is computed from one device's data */
        }
        if (rc == 0 && r->cfg.clip_bit) {
            /* The clip bit travels as a weight word: exactly 0 or 1 alone. */
            double b = -1;
            rc = plait_quant_decode_weight_sum(&r->cfg.quant, qword(q, P + 1), 1, &b);
            if (rc == 0 && b != 0.0 && b != 1.0) rc = plait_fail(PLAIT_EPROTO, "round: clip bit word is not 0 or 1");
        }
    }
    if (rc == 0 && r->robust) {
        /* The estimators compare devices' updates x, not their weighted w·x. */
        double w = 0;
        rc = plait_quant_decode_weight_sum(&r->cfg.quant, qword(q, P), 1, &w);
        for (size_t i = 0; rc == 0 && i < P; i++) r->one[i] = (float)(r->scratch[i] / w);
        if (rc == 0) rc = plait_robust_add(r->robust, r->one, P);
    }
    if (rc != 0) {
        if (added) { /* exact: the sum is mod 2^32 */
            if (q->w32) plait_update_sub_u32(r->wsum, q->w32, P);
            else plait_update_sub_narrow(r->wsum, q->nb, q->wb, P);
        }
        refuse(r, m, rc, now);
        return rc;
    }
    if (added) qadd(r->wsum, q, P, nw - P);
    else qadd(r->wsum, q, 0, nw);
    accept(r, m, unclipped, now);
    return 0;
}

int plait_round_submit_words(plait_round_t *r, uint64_t client, uint64_t round_id, const uint32_t *words,
                             size_t n_words, int unclipped, double now)
{
    qwords_t q = {words, NULL, 4};
    return submit_q(r, client, round_id, &q, n_words, unclipped, now);
}

int plait_round_submit_narrow(plait_round_t *r, uint64_t client, uint64_t round_id, const uint8_t *b, unsigned wb,
                              size_t n_words, int unclipped, double now)
{
    if (b && (wb < 1 || wb > 4)) return plait_fail(PLAIT_EINVAL, "round: %u bytes a word, not 1..4", wb);
    qwords_t q = {NULL, b, wb};
    return submit_q(r, client, round_id, &q, n_words, unclipped, now);
}

int plait_round_submit_masked(plait_round_t *r, uint64_t client, uint64_t round_id, size_t n_words, double now)
{
    if (!r) return plait_fail(PLAIT_EINVAL, "round: NULL");
    if (!r->cfg.secure) return plait_fail(PLAIT_EINVAL, "round: masked updates need a secure task");
    plait_round_tick(r, now);
    member_t *m = NULL;
    int rc = admit(r, client, round_id, n_words * sizeof(uint32_t), &m);
    if (rc != 0) return rc;
    const size_t nw = r->cfg.dim + 1 + (r->cfg.clip_bit ? 1 : 0); /* span, weight, [clip bit] */
    if (n_words != nw) {
        rc = plait_fail(PLAIT_EMISMATCH, "round: %zu words, expected %zu", n_words, nw);
        refuse(r, m, rc, now);
        return rc;
    }
    r->masked_open = 1;
    accept(r, m, 0, now);
    return 0;
}

int plait_round_set_unmasked_sum(plait_round_t *r, const uint32_t *sum, size_t n_words)
{
    if (!r || !sum) return plait_fail(PLAIT_EINVAL, "round: NULL");
    if (r->state != PLAIT_ROUND_AGGREGATION) return plait_fail(PLAIT_ESTALE, "round: not aggregating");
    if (!r->cfg.secure) return plait_fail(PLAIT_EINVAL, "round: not a secure task");
    const size_t nw = r->cfg.dim + 1 + (r->cfg.clip_bit ? 1 : 0);
    if (n_words != nw) return plait_fail(PLAIT_EMISMATCH, "round: sum of %zu words, expected %zu", n_words, nw);
    /* The unmasked sum mod 2^m equals the plain sum (m leaves room for the cohort), so it is
     * also the mod-2^32 sum that plait_round_submit_words() would have accumulated. */
    memcpy(r->wsum, sum, n_words * sizeof(uint32_t));
    r->masked_open = 0;
    return 0;
}

int plait_round_submit_float(plait_round_t *r, uint64_t client, uint64_t round_id, const float *u, size_t n,
                             double examples, int unclipped, double now)
{
    if (!r) return plait_fail(PLAIT_EINVAL, "round: NULL");
    if (r->cfg.quantized) return plait_fail(PLAIT_EINVAL, "round: this task takes quantized updates");
    plait_round_tick(r, now);
    member_t *m = NULL;
    int rc = admit(r, client, round_id, n * sizeof(float), &m);
    if (rc != 0) return rc;
    if ((rc = plait_fedavg_add(r->fa, u, n, examples)) != 0 || (r->robust && (rc = plait_robust_add(r->robust, u, n)) != 0)) {
        refuse(r, m, rc, now);
        return rc;
    }
    accept(r, m, unclipped, now);
    return 0;
}

int plait_round_dropout(plait_round_t *r, uint64_t client, uint64_t round_id, double now)
{
    if (!r) return plait_fail(PLAIT_EINVAL, "round: NULL");
    plait_round_tick(r, now);
    if (round_id != r->round_id || r->state != PLAIT_ROUND_TRAINING)
        return plait_fail(PLAIT_ESTALE, "round: dropout outside training");
    member_t *m = slot_of(r, client);
    if (m->status == M_EMPTY) return plait_fail(PLAIT_ENOENT, "round: client not selected");
    if (m->status != M_SELECTED) return plait_fail(PLAIT_ESTALE, "round: client already reported");
    m->status = M_DROPPED;
    r->accounted++;
    r->st.dropouts++;
    maybe_close(r, now);
    return 0;
}

int plait_round_tick(plait_round_t *r, double now)
{
    if (!r) return plait_fail(PLAIT_EINVAL, "round: NULL");
    if (r->state == PLAIT_ROUND_SELECTION && now >= r->deadline) start_training(r, now);
    if (r->state == PLAIT_ROUND_TRAINING && now >= r->deadline) close_round(r, now);
    return 0;
}

int plait_round_aggregate(plait_round_t *r, plait_rng_t *rng)
{
    if (!r) return plait_fail(PLAIT_EINVAL, "round: NULL");
    if (r->state != PLAIT_ROUND_AGGREGATION) return plait_fail(PLAIT_ESTALE, "round: not aggregating");
    if (r->cfg.dp && !rng) return plait_fail(PLAIT_EINVAL, "round: DP needs a noise source");
    if (r->masked_open) return plait_fail(PLAIT_ESTALE, "round: masked updates are not unmasked yet");
    size_t P = r->cfg.dim;
    int rc = 0;
    double unclipped = (double)r->st.unclipped; /* the callers' reports, unless the clip bits travel */
    if (r->cfg.ddg) {
        /* The sum carries the devices' integer noise, so it may leave 0..n·L: read each word as the
         * integer nearest the encoded centre n·L/2 (mod 2^32, the ring of a ddg round). */
        double wsum = 0;
        const double L = (double)(((uint64_t)1 << r->cfg.quant.bits) - 1), step = plait_quant_step(&r->cfg.quant);
        const double n = (double)r->st.accepted;
        const int64_t centre = (int64_t)llround(n * L / 2.0);
        for (size_t i = 0; i < P; i++) {
            int32_t d = (int32_t)(r->wsum[i] - (uint32_t)centre);
            r->scratch[i] = (double)(centre + d) * step - n * r->cfg.quant.range;
        }
        rc = plait_quant_decode_weight_sum(&r->cfg.quant, r->wsum[P], r->st.accepted, &wsum);
        if (rc == 0) rc = plait_fedavg_add_sum(r->fa, r->scratch, P, wsum, r->st.accepted);
        if (rc == 0) r->st.noise_stddev = sqrt(n * r->cfg.ddg_var) * step / (wsum > 0 ? wsum : 1);
    } else if (mean_direct(r)) {
        rc = plait_agg_mean_quant_sum(&r->cfg.quant, r->wsum, P + 1, r->st.accepted, r->pending, P);
        /* EAGAIN (a zero weight) is the mean's own error: as in the path below, the clip-bit word
         * is decoded first, and its error, if any, is the one reported. */
        if ((rc == 0 || rc == PLAIT_EAGAIN) && r->cfg.clip_bit) {
            int rb = plait_quant_decode_weight_sum(&r->cfg.quant, r->wsum[P + 1], r->st.accepted, &unclipped);
            if (rb != 0) rc = rb;
        }
    } else if (r->cfg.quantized) {
        rc = plait_fedavg_add_quant_sum(r->fa, &r->cfg.quant, r->wsum, P + 1, r->st.accepted);
        /* Adaptive clipping: the unclipped count is the decoded sum of the clip-bit words. */
        if (rc == 0 && r->cfg.clip_bit)
            rc = plait_quant_decode_weight_sum(&r->cfg.quant, r->wsum[P + 1], r->st.accepted, &unclipped);
    }
    r->dp_saved = r->dp;
    if (rc == 0) {
        if (r->cfg.dp) {
            plait_dp_round_info_t info;
            rc = plait_dp_finish_round(&r->dp, plait_fedavg_sum(r->fa), P, unclipped, rng, r->pending, &info);
            if (rc == 0) {
                r->st.noise_stddev = info.noise_stddev;
                r->st.clip_next = info.clip_next;
            }
        } else if (r->robust) {
            rc = plait_robust_result(r->robust, r->cfg.robust_kind, r->pending, P);
        } else if (mean_direct(r)) {
            /* r->pending holds the mean already */
        } else {
            rc = plait_fedavg_result(r->fa, r->pending, P);
        }
    }
    if (rc != 0) {
        r->dp = r->dp_saved;
        r->state = PLAIT_ROUND_FAILED;
        return rc;
    }
    r->state = PLAIT_ROUND_COMMIT;
    return 0;
}

int plait_round_commit(plait_round_t *r)
{
    if (!r) return plait_fail(PLAIT_EINVAL, "round: NULL");
    if (r->state != PLAIT_ROUND_COMMIT) return plait_fail(PLAIT_ESTALE, "round: nothing to commit");
    const plait_strategy_inst_t *st = r->cfg.strategy;
    int rc = st ? st->s->aggregate(st->state, r->global, r->pending, r->cfg.dim)
                : plait_server_opt_step(r->opt, r->global, r->pending, r->cfg.dim);
    if (rc > 0) rc = plait_fail(PLAIT_EINTERNAL, "strategy %s: aggregate returned %d", st->s->name, rc);
    if (rc != 0) {
        r->dp = r->dp_saved;
        r->state = PLAIT_ROUND_FAILED;
        return rc;
    }
    if (r->cfg.dp) {
        /* Sensitivity is the clip plus the quantization slack (a device's decoded words may
         * exceed the clip by √P·step), while the noise was sized on the clip alone. With
         * adaptive clipping the configured multiplier is the pair's combined one; scaling it
         * whole is conservative (the clip count's own sensitivity has no slack). */
        double c = r->st.clip_used, slack = r->cfg.quantized ? plait_quant_norm_slack(&r->cfg.quant, r->cfg.dim) : 0.0;
        r->st.noise_multiplier = r->cfg.dp_cfg.noise_multiplier * (c > 0 ? c / (c + slack) : 0.0);
        if (plait_accountant_compose(&r->acc, rate_of(r), r->st.noise_multiplier, 1) == 0) {
            double eps = INFINITY;
            if (plait_accountant_epsilon(&r->acc, r->delta, PLAIT_EPS_IMPROVED, &eps, NULL) == 0) r->epsilon = eps;
        }
    }
    if (r->cfg.ddg) {
        double cs = r->cfg.clip_norm / plait_quant_step(&r->cfg.quant);
        if (plait_accountant_compose_ddg(&r->acc, plait_ddg_rounded_l2(cs, r->cfg.dim), r->cfg.dim, r->cfg.ddg_var,
                                         (uint32_t)r->st.accepted, 1) == 0) {
            double eps = INFINITY;
            if (plait_accountant_epsilon(&r->acc, r->delta, PLAIT_EPS_IMPROVED, &eps, NULL) == 0) r->epsilon = eps;
        }
    }
    r->version++;
    r->st.committed = 1;
    r->st.epsilon = r->epsilon;
    r->state = PLAIT_ROUND_IDLE;
    return 0;
}

void plait_round_abort(plait_round_t *r, double now)
{
    if (!r) return;
    if (r->state == PLAIT_ROUND_IDLE || r->state == PLAIT_ROUND_FAILED) return;
    if (r->state == PLAIT_ROUND_COMMIT) r->dp = r->dp_saved;
    if (r->st.t_close == 0) r->st.t_close = now;
    r->st.stragglers = r->st.selected >= r->accounted ? r->st.selected - r->accounted : 0;
    r->state = PLAIT_ROUND_FAILED;
}
