/*
 * check_round.c: the round state machine (aggregator/round.c): transitions,
 * deadlines, minimum cohort, duplicate/stale/late updates, validation, and
 * the aggregated result against a naive double-precision average.
 */
#include <check.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "evalcore.h"
#include "plait/privacy.h"
#include "plait/round.h"
#include "plait/strategy.h"
#include "plait/update.h"

#define P 64
#define AVG_TOL 1e-6  /* float path: float rounding of a mean of unit-scale values */

static void cfg_small(plait_round_config_t *c, int quantized)
{
    plait_round_config_default(c);
    c->dim = P;
    c->target_cohort = 4;
    c->min_cohort = 2;
    c->overselect = 1.5; /* want = 6 */
    c->quantized = quantized;
    c->selection_timeout_s = 10;
    c->round_timeout_s = 100;
}

static plait_round_t *make(const plait_round_config_t *c, float *g0)
{
    for (size_t i = 0; i < P; i++) g0[i] = 0.01f * (float)i;
    plait_round_t *r = NULL;
    ck_assert_int_eq(plait_round_create(&r, c, g0, P), 0);
    return r;
}

/* A clipped random update of norm <= 0.9. */
static void rand_update(plait_rng_t *rng, float *u)
{
    for (size_t i = 0; i < P; i++) u[i] = (float)plait_rng_normal(rng);
    ck_assert_int_eq(plait_update_clip_l2(u, P, 0.9, NULL), 0);
}

/* Quantize w·u and the weight into P + 1 words, as a client does. */
static void encode(const plait_round_t *r, plait_rng_t *rng, const float *u, double w, uint32_t *words)
{
    float tmp[P];
    for (size_t i = 0; i < P; i++) tmp[i] = (float)(w * u[i]);
    ck_assert_int_eq(plait_quant_encode(plait_round_quant(r), tmp, P, rng, words), 0);
    ck_assert_int_eq(plait_quant_encode_weight(plait_round_quant(r), w, rng, &words[P]), 0);
}

static void select_n(plait_round_t *r, uint64_t first, size_t n, double now)
{
    for (size_t i = 0; i < n; i++) ck_assert_int_eq(plait_round_select(r, first + i, now), 0);
}

START_TEST(test_happy_path)
{
    plait_round_config_t c;
    cfg_small(&c, 1);
    float g0[P];
    plait_round_t *r = make(&c, g0);
    plait_rng_t rng;
    plait_rng_seed_u64(&rng, 1, 0);
    ck_assert_int_eq(plait_round_state(r), PLAIT_ROUND_IDLE);
    uint64_t rid = 0;
    ck_assert_int_eq(plait_round_open(r, 0.0, &rid), 0);
    ck_assert_uint_eq(rid, 1);
    ck_assert_int_eq(plait_round_open(r, 0.0, NULL), PLAIT_EBUSY);
    ck_assert_int_eq(plait_round_state(r), PLAIT_ROUND_SELECTION);
    select_n(r, 100, 5, 1.0);
    ck_assert_int_eq(plait_round_select(r, 100, 1.0), PLAIT_EINVAL); /* already selected */
    ck_assert_int_eq(plait_round_state(r), PLAIT_ROUND_SELECTION);
    ck_assert_int_eq(plait_round_select(r, 105, 2.0), 0); /* the 6th fills the cohort */
    ck_assert_int_eq(plait_round_state(r), PLAIT_ROUND_TRAINING);
    ck_assert_int_eq(plait_round_select(r, 106, 2.0), PLAIT_EBUSY);
    uint32_t words[P + 1];
    float u[P];
    for (int k = 0; k < 4; k++) {
        rand_update(&rng, u);
        encode(r, &rng, u, 1.0, words);
        ck_assert_int_eq(plait_round_submit_words(r, 100 + (uint64_t)k, rid, words, P + 1, 1, 3.0 + k), 0);
    }
    /* Target reached: closed at once, two stragglers. */
    ck_assert_int_eq(plait_round_state(r), PLAIT_ROUND_AGGREGATION);
    ck_assert_int_eq(plait_round_submit_words(r, 104, rid, words, P + 1, 1, 7.0), PLAIT_ESTALE);
    plait_round_stats_t st;
    plait_round_stats(r, &st);
    ck_assert_uint_eq(st.accepted, 4);
    ck_assert_uint_eq(st.selected, 6);
    ck_assert_uint_eq(st.stragglers, 2);
    ck_assert_uint_eq(st.rej_late, 1);
    ck_assert_uint_eq(st.bytes_down, 6 * P * 4);
    ck_assert_uint_eq(st.bytes_up, 5 * (P + 1) * 4);
    ck_assert(st.t_close == 6.0 && st.t_train == 2.0);
    ck_assert_int_eq(plait_round_commit(r), PLAIT_ESTALE); /* must aggregate first */
    ck_assert_int_eq(plait_round_aggregate(r, NULL), 0);
    ck_assert_int_eq(plait_round_state(r), PLAIT_ROUND_COMMIT);
    ck_assert_int_eq(plait_round_commit(r), 0);
    ck_assert_int_eq(plait_round_state(r), PLAIT_ROUND_IDLE);
    ck_assert_uint_eq(plait_round_version(r), 1);
    ck_assert(memcmp(plait_round_global(r), g0, sizeof(g0)) != 0);
    plait_round_stats(r, &st);
    ck_assert_int_eq(st.committed, 1);
    /* The service may commit a nearby span instead (a quantized download delta, plait/delta.h):
     * only right after the commit, of the right length, finite. */
    float q[P];
    memcpy(q, plait_round_global(r), sizeof(q));
    q[0] += 1e-3f;
    ck_assert_int_eq(plait_round_replace_global(r, q, P - 1), PLAIT_EMISMATCH);
    q[1] = NAN;
    ck_assert_int_eq(plait_round_replace_global(r, q, P), PLAIT_EINVAL);
    q[1] = plait_round_global(r)[1];
    ck_assert_int_eq(plait_round_replace_global(r, q, P), 0);
    ck_assert(memcmp(plait_round_global(r), q, sizeof(q)) == 0);
    ck_assert_int_eq(plait_round_open(r, 10.0, &rid), 0);
    ck_assert_uint_eq(rid, 2);
    ck_assert_int_eq(plait_round_replace_global(r, q, P), PLAIT_ESTALE);
    plait_round_destroy(r);
}
END_TEST

START_TEST(test_deadline_and_min_cohort)
{
    plait_round_config_t c;
    cfg_small(&c, 1);
    float g0[P];
    plait_round_t *r = make(&c, g0);
    plait_rng_t rng;
    plait_rng_seed_u64(&rng, 2, 0);
    uint64_t rid;
    uint32_t words[P + 1];
    float u[P];

    /* Selection timeout with too few clients: the round fails. */
    ck_assert_int_eq(plait_round_open(r, 0.0, &rid), 0);
    select_n(r, 1, 1, 0.0);
    plait_round_tick(r, 9.9);
    ck_assert_int_eq(plait_round_state(r), PLAIT_ROUND_SELECTION);
    plait_round_tick(r, 10.0);
    ck_assert_int_eq(plait_round_state(r), PLAIT_ROUND_FAILED);

    /* Enough selected, one update and one dropout by the deadline: fails; the global is unchanged. */
    ck_assert_int_eq(plait_round_open(r, 20.0, &rid), 0);
    ck_assert_uint_eq(rid, 2);
    select_n(r, 10, 3, 20.0);
    ck_assert_int_eq(plait_round_start(r, 21.0), 0);
    ck_assert_int_eq(plait_round_state(r), PLAIT_ROUND_TRAINING);
    rand_update(&rng, u);
    encode(r, &rng, u, 1.0, words);
    ck_assert_int_eq(plait_round_submit_words(r, 10, rid, words, P + 1, 1, 30.0), 0);
    ck_assert_int_eq(plait_round_dropout(r, 11, rid, 40.0), 0);
    ck_assert_int_eq(plait_round_dropout(r, 11, rid, 40.0), PLAIT_ESTALE);
    plait_round_tick(r, 120.9);
    ck_assert_int_eq(plait_round_state(r), PLAIT_ROUND_TRAINING);
    plait_round_tick(r, 121.0);
    ck_assert_int_eq(plait_round_state(r), PLAIT_ROUND_FAILED);
    plait_round_stats_t st;
    plait_round_stats(r, &st);
    ck_assert_uint_eq(st.accepted, 1);
    ck_assert_uint_eq(st.dropouts, 1);
    ck_assert_uint_eq(st.stragglers, 1);
    ck_assert_int_eq(st.committed, 0);
    ck_assert(memcmp(plait_round_global(r), g0, sizeof(g0)) == 0);
    ck_assert_int_eq(plait_round_aggregate(r, NULL), PLAIT_ESTALE);

    /* Two updates by the deadline: enough (min 2), aggregated with one straggler. */
    ck_assert_int_eq(plait_round_open(r, 200.0, &rid), 0);
    select_n(r, 20, 3, 200.0);
    ck_assert_int_eq(plait_round_start(r, 200.0), 0);
    for (uint64_t k = 0; k < 2; k++) {
        rand_update(&rng, u);
        encode(r, &rng, u, 1.0, words);
        ck_assert_int_eq(plait_round_submit_words(r, 20 + k, rid, words, P + 1, 1, 250.0), 0);
    }
    /* An update arriving after the deadline is late, and the round closes then. */
    ck_assert_int_eq(plait_round_submit_words(r, 22, rid, words, P + 1, 1, 300.0), PLAIT_ESTALE);
    ck_assert_int_eq(plait_round_state(r), PLAIT_ROUND_AGGREGATION);
    plait_round_stats(r, &st);
    ck_assert_uint_eq(st.rej_late, 1);
    ck_assert_uint_eq(st.stragglers, 1);
    ck_assert(st.t_close == 300.0);

    /* Abort from AGGREGATION leaves the global alone. */
    plait_round_abort(r, 301.0);
    ck_assert_int_eq(plait_round_state(r), PLAIT_ROUND_FAILED);
    ck_assert(memcmp(plait_round_global(r), g0, sizeof(g0)) == 0);
    ck_assert_uint_eq(plait_round_version(r), 0);
    plait_round_destroy(r);
}
END_TEST

START_TEST(test_rejections)
{
    plait_round_config_t c;
    cfg_small(&c, 1);
    float g0[P];
    plait_round_t *r = make(&c, g0);
    plait_rng_t rng;
    plait_rng_seed_u64(&rng, 3, 0);
    uint64_t rid;
    uint32_t words[P + 1], bad[P + 1];
    float u[P];
    ck_assert_int_eq(plait_round_open(r, 0.0, &rid), 0);
    select_n(r, 1, 6, 0.0);
    rand_update(&rng, u);
    encode(r, &rng, u, 1.0, words);
    ck_assert_int_eq(plait_round_submit_words(r, 1, rid + 1, words, P + 1, 1, 1.0), PLAIT_ESTALE); /* stale */
    ck_assert_int_eq(plait_round_submit_words(r, 1, rid - 1, words, P + 1, 1, 1.0), PLAIT_ESTALE);
    ck_assert_int_eq(plait_round_submit_words(r, 99, rid, words, P + 1, 1, 1.0), PLAIT_ENOENT); /* not selected */
    ck_assert_int_eq(plait_round_submit_words(r, 1, rid, words, P, 1, 1.0), PLAIT_EMISMATCH);  /* length */
    ck_assert_int_eq(plait_round_submit_words(r, 1, rid, words, P + 1, 1, 1.0), PLAIT_ESTALE); /* refused: done */
    memcpy(bad, words, sizeof(words));
    bad[3] = 70000; /* above 2^16 - 1: not an encoding */
    ck_assert_int_eq(plait_round_submit_words(r, 2, rid, bad, P + 1, 1, 1.0), PLAIT_EPROTO);
    memcpy(bad, words, sizeof(words));
    bad[P] = 0; /* zero weight */
    ck_assert_int_eq(plait_round_submit_words(r, 3, rid, bad, P + 1, 1, 1.0), PLAIT_EINVAL);
    for (size_t i = 0; i < P; i++) bad[i] = 65535; /* every coordinate at +R: norm sqrt(P) > 1 */
    bad[P] = 65535;
    ck_assert_int_eq(plait_round_submit_words(r, 4, rid, bad, P + 1, 1, 1.0), PLAIT_ETOOBIG);
    ck_assert_int_eq(plait_round_submit_words(r, 5, rid, words, P + 1, 1, 1.0), 0);
    ck_assert_int_eq(plait_round_submit_words(r, 5, rid, words, P + 1, 1, 1.0), PLAIT_ESTALE); /* duplicate */
    ck_assert_int_eq(plait_round_submit_float(r, 6, rid, u, P, 1.0, 1, 1.0), PLAIT_EINVAL);     /* wrong form */
    plait_round_stats_t st;
    plait_round_stats(r, &st);
    ck_assert_uint_eq(st.rej_stale, 2);
    ck_assert_uint_eq(st.rej_unknown, 1);
    ck_assert_uint_eq(st.rej_length, 1);
    ck_assert_uint_eq(st.rej_malformed, 2);
    ck_assert_uint_eq(st.rej_norm, 1);
    ck_assert_uint_eq(st.rej_duplicate, 2);
    ck_assert_uint_eq(st.accepted, 1);
    ck_assert_int_eq(plait_round_state(r), PLAIT_ROUND_TRAINING);
    /* The last selected client drops: everyone is accounted for, and 1 < min_cohort: failed. */
    ck_assert_int_eq(plait_round_dropout(r, 6, rid, 2.0), 0);
    ck_assert_int_eq(plait_round_state(r), PLAIT_ROUND_FAILED);
    ck_assert_int_eq(plait_round_dropout(r, 6, rid, 2.0), PLAIT_ESTALE);
    plait_round_destroy(r);

    /* Bad configs. */
    plait_round_config_default(&c);
    ck_assert_int_eq(plait_round_config_validate(&c), PLAIT_EINVAL); /* dim 0 */
    c.dim = P;
    ck_assert_int_eq(plait_round_config_validate(&c), 0);
    c.min_cohort = 11;
    ck_assert_int_eq(plait_round_config_validate(&c), PLAIT_EINVAL);
    c.min_cohort = 2;
    c.overselect = 0.5;
    ck_assert_int_eq(plait_round_config_validate(&c), PLAIT_EINVAL);
    c.overselect = 1.0;
    c.quant.bits = 32; /* one 32-bit word per client cannot be summed */
    ck_assert_int_eq(plait_round_config_validate(&c), PLAIT_ETOOBIG);
    c.quant.bits = 16;
    c.dp = 1; /* without a population */
    ck_assert_int_eq(plait_round_config_validate(&c), PLAIT_EINVAL);
}
END_TEST

/* The committed global equals g0 + the naive weighted mean (FedAvg, lr 1). */
static void check_against_naive(int quantized)
{
    plait_round_config_t c;
    cfg_small(&c, quantized);
    c.target_cohort = 5;
    c.overselect = 1.0;
    float g0[P];
    plait_round_t *r = make(&c, g0);
    plait_rng_t rng;
    plait_rng_seed_u64(&rng, 4, (uint64_t)quantized);
    uint64_t rid;
    ck_assert_int_eq(plait_round_open(r, 0.0, &rid), 0);
    select_n(r, 0, 5, 0.0);
    double num[P] = {0}, den = 0, plain[P] = {0};
    float u[P];
    uint32_t words[P + 1];
    for (uint64_t k = 0; k < 5; k++) {
        rand_update(&rng, u);
        double examples = 100.0 * (double)(k + 1), w = examples / c.weight_cap;
        for (size_t i = 0; i < P; i++) {
            num[i] += w * u[i];
            plain[i] += u[i] / 5.0;
        }
        den += w;
        if (quantized) {
            encode(r, &rng, u, w, words);
            ck_assert_int_eq(plait_round_submit_words(r, k, rid, words, P + 1, 1, 1.0), 0);
        } else {
            ck_assert_int_eq(plait_round_submit_float(r, k, rid, u, P, examples, 1, 1.0), 0);
        }
    }
    ck_assert_int_eq(plait_round_state(r), PLAIT_ROUND_AGGREGATION);
    ck_assert_int_eq(plait_round_aggregate(r, NULL), 0);
    ck_assert_int_eq(plait_round_commit(r), 0);
    const float *g = plait_round_global(r);
    /* Quantized: each of 5 sums is within 5 steps, and the weight sum within 5 weight steps. */
    double step = plait_quant_step(plait_round_quant(r));
    double tol = quantized ? (5 * step + 5.0 / 65535.0) / den + 1e-6 : AVG_TOL;
    double worst = 0, worst_plain = 0;
    for (size_t i = 0; i < P; i++) {
        double want = g0[i] + num[i] / den;
        worst = fmax(worst, fabs(g[i] - want));
        worst_plain = fmax(worst_plain, fabs(g[i] - (g0[i] + plain[i])));
    }
    ck_assert_msg(worst <= tol, "worst deviation %g > %g", worst, tol);
    /* The deliberately wrong model (unweighted mean) must be told apart. */
    ck_assert_msg(worst_plain > 100 * tol, "the unweighted mean matched too (%g): the test cannot fail", worst_plain);
    plait_round_destroy(r);
}

START_TEST(test_naive_average_float) { check_against_naive(0); }
END_TEST

START_TEST(test_naive_average_quantized) { check_against_naive(1); }
END_TEST

/* The quantized sum does not depend on the arrival order: bit-identical globals. */
START_TEST(test_order_independent)
{
    float out[2][P];
    for (int order = 0; order < 2; order++) {
        plait_round_config_t c;
        cfg_small(&c, 1);
        c.overselect = 1.0;
        float g0[P];
        plait_round_t *r = make(&c, g0);
        uint64_t rid;
        ck_assert_int_eq(plait_round_open(r, 0.0, &rid), 0);
        select_n(r, 0, 4, 0.0);
        for (int j = 0; j < 4; j++) {
            int k = order ? 3 - j : j;
            plait_rng_t rng;
            plait_rng_seed_u64(&rng, 5, (uint64_t)k);
            float u[P];
            uint32_t words[P + 1];
            rand_update(&rng, u);
            encode(r, &rng, u, 0.5, words);
            ck_assert_int_eq(plait_round_submit_words(r, (uint64_t)k, rid, words, P + 1, 1, 1.0), 0);
        }
        ck_assert_int_eq(plait_round_aggregate(r, NULL), 0);
        ck_assert_int_eq(plait_round_commit(r), 0);
        memcpy(out[order], plait_round_global(r), sizeof(out[0]));
        plait_round_destroy(r);
    }
    ck_assert(memcmp(out[0], out[1], sizeof(out[0])) == 0);
}
END_TEST

/* Central DP over a population of 100, z = 1, clip 0.9, no over-selection. */
static void cfg_dp(plait_round_config_t *c, int quantized)
{
    cfg_small(c, quantized);
    c->overselect = 1.0;
    c->dp = 1;
    c->population = 100;
    c->dp_cfg.noise_multiplier = 1.0;
    c->dp_cfg.clip = 0.9;
}

START_TEST(test_dp_and_adaptive_opt)
{
    plait_round_config_t c;
    cfg_dp(&c, 1);
    c.opt.kind = PLAIT_OPT_FEDADAM;
    c.opt.lr = 0.01;
    float g0[P];
    plait_round_t *r = make(&c, g0);
    plait_rng_t rng, noise;
    plait_rng_seed_u64(&rng, 6, 0);
    plait_rng_seed_u64(&noise, 6, 1);
    ck_assert(plait_round_clip(r) == 0.9);
    double eps_prev = 0;
    for (int round = 0; round < 3; round++) {
        uint64_t rid;
        ck_assert_int_eq(plait_round_open(r, 100.0 * round, &rid), 0);
        select_n(r, 0, 4, 100.0 * round);
        for (uint64_t k = 0; k < 4; k++) {
            float u[P];
            uint32_t words[P + 1];
            rand_update(&rng, u);
            encode(r, &rng, u, 1.0, words);
            ck_assert_int_eq(plait_round_submit_words(r, k, rid, words, P + 1, 1, 100.0 * round + 1), 0);
        }
        ck_assert_int_eq(plait_round_aggregate(r, NULL), PLAIT_EINVAL); /* DP needs a noise source */
        ck_assert_int_eq(plait_round_aggregate(r, &noise), 0);
        ck_assert_int_eq(plait_round_commit(r), 0);
        plait_round_stats_t st;
        plait_round_stats(r, &st);
        ck_assert(st.noise_stddev > 0);
        ck_assert(st.epsilon > eps_prev && isfinite(st.epsilon));
        eps_prev = st.epsilon;
        /* The accountant's multiplier counts the quantization slack: a decoded update may
         * reach clip + √P·step, and the noise was sized on the clip alone. */
        double slack = sqrt((double)P) * plait_quant_step(&c.quant);
        ck_assert(slack > 0);
        ck_assert_double_eq_tol(st.noise_multiplier, 1.0 * 0.9 / (0.9 + slack), 1e-12);
        plait_accountant_t ref;
        ck_assert_int_eq(plait_accountant_init(&ref, NULL, 0), 0);
        ck_assert_int_eq(plait_accountant_compose(&ref, st.sample_rate, st.noise_multiplier, round + 1), 0);
        double eps_ref = 0;
        ck_assert_int_eq(plait_accountant_epsilon(&ref, plait_round_delta(r), PLAIT_EPS_IMPROVED, &eps_ref, NULL), 0);
        ck_assert_double_eq_tol(st.epsilon, eps_ref, 1e-9 * eps_ref);
    }
    ck_assert(plait_round_delta(r) > 0 && plait_round_delta(r) < 1.0 / 100);
    /* Float updates carry no quantization slack: the configured multiplier is the one accounted. */
    {
        plait_round_config_t cf;
        cfg_dp(&cf, 0);
        float gf[P];
        plait_round_t *rf = make(&cf, gf);
        uint64_t rid;
        ck_assert_int_eq(plait_round_open(rf, 0, &rid), 0);
        select_n(rf, 0, 4, 0);
        for (uint64_t k = 0; k < 4; k++) {
            float u[P];
            rand_update(&rng, u);
            ck_assert_int_eq(plait_round_submit_float(rf, k, rid, u, P, 1, 1, 1.0), 0);
        }
        ck_assert_int_eq(plait_round_aggregate(rf, &noise), 0);
        ck_assert_int_eq(plait_round_commit(rf), 0);
        plait_round_stats_t sf;
        plait_round_stats(rf, &sf);
        ck_assert(sf.noise_multiplier == 1.0);
        plait_round_destroy(rf);
    }
    for (size_t i = 0; i < P; i++) ck_assert(isfinite(plait_round_global(r)[i]));
    /* The FedAdam moments survive an export/import into a fresh round core
     * (what the service does across a restart), and nothing else fits. */
    size_t n = plait_round_opt_state_len(r);
    ck_assert_uint_eq(n, 2 * P);
    float st1[2 * P], st2[2 * P];
    ck_assert_int_eq(plait_round_opt_export(r, st1, n), 0);
    int nonzero = 0;
    for (size_t i = 0; i < n; i++) nonzero += st1[i] != 0.0f;
    ck_assert_int_gt(nonzero, 0);
    plait_round_t *r2 = make(&c, g0);
    ck_assert_int_eq(plait_round_opt_export(r2, st2, n), 0);
    ck_assert(memcmp(st1, st2, sizeof(st1)) != 0); /* a fresh core starts from zero moments */
    ck_assert_int_eq(plait_round_opt_import(r2, st1, n - 1), PLAIT_EMISMATCH);
    ck_assert_int_eq(plait_round_opt_import(r2, st1, n), 0);
    ck_assert_int_eq(plait_round_opt_export(r2, st2, n), 0);
    ck_assert(memcmp(st1, st2, sizeof(st1)) == 0);
    st1[3] = NAN;
    ck_assert_int_eq(plait_round_opt_import(r2, st1, n), PLAIT_EPROTO);
    plait_round_destroy(r2);
    plait_round_destroy(r);
}
END_TEST

/* The federated-evaluation core (aggregator/evalcore.h): from the devices' [v, 1] words,
 * masked and summed, the committed value is the mean of the v, and L times it the mean loss. */
START_TEST(test_eval_core_mean)
{
    plait_round_config_t train, ec;
    plait_round_config_default(&train);
    train.dim = 4096;
    train.target_cohort = 3;
    train.min_cohort = 2;
    train.overselect = 1.0;
    train.secure = 1;
    train.quant.bits = 16;
    train.quant.range = 0.05;
    train.clip_bit = 1;
    plait__eval_core_config(&train, &ec);
    ck_assert_uint_eq(ec.dim, 1);
    ck_assert(ec.quant.range == 1.0 && ec.clip_bit == 0 && ec.dp == 0 && ec.ddg == 0);
    ck_assert_uint_eq(ec.quant.bits, 16);
    const float zero = 0.0f;
    plait_round_t *r = NULL;
    ck_assert_int_eq(plait_round_create(&r, &ec, &zero, 1), 0);
    const double loss_max = 8.0, losses[3] = {2.0, 3.5, 20.0}; /* the last is clipped to 8 */
    plait_rng_t rng;
    plait_rng_seed_u64(&rng, 3, 4);
    for (int round = 0; round < 2; round++) { /* a second round starts from a fresh core, as the service does */
        uint64_t rid = 0;
        ck_assert_int_eq(plait_round_open(r, 0.0, &rid), 0);
        for (uint64_t c = 1; c <= 3; c++) ck_assert_int_eq(plait_round_select(r, c, 0.0), 0);
        ck_assert_int_eq(plait_round_state(r), PLAIT_ROUND_TRAINING); /* the full cohort starts it */
        uint32_t sum[2] = {0, 0};
        double want = 0;
        for (uint64_t c = 1; c <= 3; c++) {
            double l = losses[c - 1] < loss_max ? losses[c - 1] : loss_max;
            want += l / 3.0;
            float v = (float)(l / loss_max);
            uint32_t w[2];
            ck_assert_int_eq(plait_quant_encode(&ec.quant, &v, 1, &rng, &w[0]), 0);
            ck_assert_int_eq(plait_quant_encode_weight(&ec.quant, 1.0, &rng, &w[1]), 0);
            sum[0] += w[0];
            sum[1] += w[1];
            ck_assert_int_eq(plait_round_submit_masked(r, c, rid, 2, 1.0), 0);
        }
        ck_assert_int_eq(plait_round_state(r), PLAIT_ROUND_AGGREGATION);
        ck_assert_int_eq(plait_round_set_unmasked_sum(r, sum, 2), 0);
        ck_assert_int_eq(plait_round_aggregate(r, &rng), 0);
        ck_assert_int_eq(plait_round_commit(r), 0);
        double mean = -1;
        size_t n = 0;
        ck_assert_int_eq(plait__eval_core_mean(r, 2, loss_max, &mean, &n), 0);
        ck_assert_uint_eq(n, 3);
        double step = 2.0 / 65535.0 * loss_max; /* one quantization step of L */
        ck_assert_msg(fabs(mean - want) <= step, "mean %.6f want %.6f", mean, want);
        ck_assert_int_eq(plait__eval_core_mean(r, 4, loss_max, &mean, &n), PLAIT_EPROTO); /* below min_cohort */
        plait_round_destroy(r);
        r = NULL;
        ck_assert_int_eq(plait_round_create(&r, &ec, &zero, 1), 0);
    }
    plait_rng_wipe(&rng);
    plait_round_destroy(r);
}
END_TEST

/* The evaluation core is FedAvg from 0 with lr 1 whatever the training core runs: a strategy
 * (server momentum, adaptive optimizers) or robust aggregation of the training core would turn
 * the committed value into something other than the mean loss. */
START_TEST(test_eval_core_drops_training_aggregator)
{
    plait_strategy_params_t sp;
    plait_strategy_params_default(&sp);
    plait_strategy_inst_t inst;
    ck_assert_int_eq(plait_strategy_setup(&inst, plait_strategy_find("fedadam"), &sp, 4096), 0);
    plait_round_config_t train, ec;
    plait_round_config_default(&train);
    train.dim = 4096;
    train.target_cohort = 2;
    train.min_cohort = 2;
    train.overselect = 1.0;
    train.secure = 1;
    train.strategy = &inst;
    train.robust = 1;
    train.robust_kind = PLAIT_ROBUST_TRIMMED_MEAN;
    plait__eval_core_config(&train, &ec);
    ck_assert_ptr_null(ec.strategy);
    ck_assert_int_eq(ec.robust, 0);
    const float zero = 0.0f;
    plait_round_t *r = NULL;
    ck_assert_int_eq(plait_round_create(&r, &ec, &zero, 1), 0);
    plait_rng_t rng;
    plait_rng_seed_u64(&rng, 5, 6);
    uint64_t rid = 0;
    ck_assert_int_eq(plait_round_open(r, 0.0, &rid), 0);
    for (uint64_t c = 1; c <= 2; c++) ck_assert_int_eq(plait_round_select(r, c, 0.0), 0);
    uint32_t sum[2] = {0, 0};
    const float v[2] = {0.25f, 0.75f};
    for (uint64_t c = 1; c <= 2; c++) {
        uint32_t w[2];
        ck_assert_int_eq(plait_quant_encode(&ec.quant, &v[c - 1], 1, &rng, &w[0]), 0);
        ck_assert_int_eq(plait_quant_encode_weight(&ec.quant, 1.0, &rng, &w[1]), 0);
        sum[0] += w[0];
        sum[1] += w[1];
        ck_assert_int_eq(plait_round_submit_masked(r, c, rid, 2, 1.0), 0);
    }
    ck_assert_int_eq(plait_round_set_unmasked_sum(r, sum, 2), 0);
    ck_assert_int_eq(plait_round_aggregate(r, &rng), 0);
    ck_assert_int_eq(plait_round_commit(r), 0);
    double mean = -1;
    size_t n = 0;
    ck_assert_int_eq(plait__eval_core_mean(r, 2, 4.0, &mean, &n), 0);
    ck_assert_msg(fabs(mean - 2.0) <= 4.0 * 2.0 / 65535.0, "mean %.6f want 2", mean);
    plait_rng_wipe(&rng);
    plait_round_destroy(r);
    plait_strategy_free(&inst);
}
END_TEST

Suite *round_suite(void)
{
    Suite *s = suite_create("round");
    TCase *tc = tcase_create("state");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_happy_path);
    tcase_add_test(tc, test_deadline_and_min_cohort);
    tcase_add_test(tc, test_rejections);
    suite_add_tcase(s, tc);
    tc = tcase_create("result");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_naive_average_float);
    tcase_add_test(tc, test_naive_average_quantized);
    tcase_add_test(tc, test_order_independent);
    tcase_add_test(tc, test_dp_and_adaptive_opt);
    tcase_add_test(tc, test_eval_core_mean);
    tcase_add_test(tc, test_eval_core_drops_training_aggregator);
    suite_add_tcase(s, tc);
    return s;
}
