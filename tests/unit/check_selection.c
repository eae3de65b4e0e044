/*
 * check_selection.c: Poisson sampling of a round's cohort
 * (aggregator/selection.c), the round core in poisson mode, and the privacy
 * report against the calculator: the amortized epsilon recomposed from the
 * ledger equals `privacy --q --noise-multiplier --rounds` for the recorded
 * parameters, and the per-device worst case equals the calculator at q = 1
 * over the most rounds one device joined; adaptive clipping in the round
 * core (clip-bit words summed like weight words) moves the clip to the
 * target quantile of the update norms. Every random draw comes from a
 * fixed seed, so the statistical bounds are checked on one fixed sample and
 * cannot flake.
 */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "plait/aggstore.h"
#include "plait/privacy.h"
#include "plait/round.h"
#include "selection.h"
#include "testutil.h"

/* Admission frequency matches q: 400 rounds x 100 devices = 40000 draws per q,
 * |admitted - n q| within 5 standard deviations of Binomial(n, q). */
START_TEST(test_admission_frequency)
{
    const double qs[] = {0.02, 0.1, 0.5, 0.9};
    plait_sel_t *s = NULL;
    ck_assert_int_eq(plait_sel_create(&s), 0);
    for (size_t k = 0; k < sizeof(qs) / sizeof(qs[0]); k++) {
        plait_rng_t rng;
        plait_rng_seed_u64(&rng, 20260417, k);
        uint64_t total = 0, n = 0, per_device[100];
        memset(per_device, 0, sizeof(per_device));
        for (uint64_t round = 1; round <= 400; round++) {
            ck_assert_int_eq(plait_sel_open(s, round, qs[k]), 0);
            for (uint64_t dev = 0; dev < 100; dev++) {
                int yes = -1, first = -1;
                ck_assert_int_eq(plait_sel_decide(s, &rng, 1000 + dev * 7919, &yes, &first), 0);
                ck_assert_int_eq(first, 1);
                total += (uint64_t)yes;
                per_device[dev] += (uint64_t)yes;
                n++;
            }
            uint64_t dec = 0, adm = 0;
            plait_sel_counts(s, &dec, &adm);
            ck_assert_uint_eq(dec, 100);
        }
        double mean = (double)n * qs[k], sd = sqrt((double)n * qs[k] * (1 - qs[k]));
        ck_assert_msg(fabs((double)total - mean) <= 5 * sd, "q %g: %llu admitted of %llu draws", qs[k],
                      (unsigned long long)total, (unsigned long long)n);
        /* every device is sampled at the same rate (no device favoured): 5 sigma over its 400 rounds */
        double dm = 400 * qs[k], dsd = sqrt(400 * qs[k] * (1 - qs[k]));
        for (int d = 0; d < 100; d++)
            ck_assert_msg(fabs((double)per_device[d] - dm) <= 5 * dsd + 1, "q %g: device %d joined %llu of 400",
                          qs[k], d, (unsigned long long)per_device[d]);
        plait_rng_wipe(&rng);
    }
    plait_sel_destroy(s);
}
END_TEST

/* A device is decided once per round: checking in again repeats the answer
 * without a draw; a new round draws again. */
START_TEST(test_decided_once)
{
    plait_sel_t *s = NULL;
    ck_assert_int_eq(plait_sel_create(&s), 0);
    plait_rng_t rng;
    plait_rng_seed_u64(&rng, 7, 0);
    int yes = 0, first = 0;
    ck_assert_int_eq(plait_sel_decide(s, &rng, 1, &yes, &first), PLAIT_EINVAL); /* no round opened */
    ck_assert_int_eq(plait_sel_open(s, 1, 0), PLAIT_EINVAL);
    ck_assert_int_eq(plait_sel_open(s, 1, 1.5), PLAIT_EINVAL);
    ck_assert_int_eq(plait_sel_open(s, 1, 0.5), 0);
    int ans[3000];
    for (uint64_t c = 0; c < 3000; c++) { /* also makes the table grow several times */
        ck_assert_int_eq(plait_sel_decide(s, &rng, c, &ans[c], &first), 0);
        ck_assert_int_eq(first, 1);
    }
    plait_rng_t before = rng;
    for (int rep = 0; rep < 5; rep++)
        for (uint64_t c = 0; c < 3000; c++) {
            ck_assert_int_eq(plait_sel_decide(s, &rng, c, &yes, &first), 0);
            ck_assert_int_eq(first, 0);
            ck_assert_int_eq(yes, ans[c]);
        }
    ck_assert_mem_eq(&before, &rng, sizeof(rng)); /* no draw for a repeated check-in */
    uint64_t dec, adm, want = 0;
    for (int c = 0; c < 3000; c++) want += (uint64_t)ans[c];
    plait_sel_counts(s, &dec, &adm);
    ck_assert_uint_eq(dec, 3000);
    ck_assert_uint_eq(adm, want);
    /* a new round forgets: the same devices are drawn again */
    ck_assert_int_eq(plait_sel_open(s, 2, 1.0), 0);
    ck_assert_int_eq(plait_sel_decide(s, &rng, 5, &yes, &first), 0);
    ck_assert_int_eq(first, 1);
    ck_assert_int_eq(yes, 1); /* q = 1 admits everyone */
    ck_assert(plait_sel_rate(s) == 1.0);
    plait_rng_wipe(&rng);
    plait_sel_destroy(s);
}
END_TEST

START_TEST(test_population_and_rate)
{
    uint64_t pop = 0;
    ck_assert_int_eq(plait_sel_population(0, 4, &pop), 0);
    ck_assert_uint_eq(pop, 4);
    ck_assert_int_eq(plait_sel_population(3, 4, &pop), 0);
    ck_assert_uint_eq(pop, 3);
    /* the setting: population = 10^6 with 4 enrolled devices is refused, naming the setting */
    ck_assert_int_eq(plait_sel_population(1000000, 4, &pop), PLAIT_EINVAL);
    ck_assert_ptr_nonnull(strstr(plait_errmsg(), "population"));
    ck_assert_ptr_nonnull(strstr(plait_errmsg(), "4 enrolled"));
    double q = 0;
    ck_assert_int_eq(plait_sel_rate_of(2, 8, 0, &q), 0);
    ck_assert(q == 0.25);
    ck_assert_int_eq(plait_sel_rate_of(8, 3, 0, &q), 0);
    ck_assert(q == 1.0); /* fewer devices than the target: everyone who checks in */
    ck_assert_int_eq(plait_sel_rate_of(8, 0, 0, &q), 0);
    ck_assert(q == 1.0);
    ck_assert_int_eq(plait_sel_rate_of(2, 8, 0.125, &q), 0);
    ck_assert(q == 0.125); /* a configured sampling_rate wins */
    ck_assert_int_eq(plait_sel_rate_of(2, 8, 1.5, &q), PLAIT_EINVAL);
    ck_assert_int_eq(plait_sel_rate_of(0, 8, 0, &q), PLAIT_EINVAL);
    double e = -1;
    ck_assert_int_eq(plait_sel_worst_epsilon(0, 1.0, 1e-5, &e), 0);
    ck_assert(e == 0);
    ck_assert_int_eq(plait_sel_worst_epsilon(3, 0, 1e-5, &e), PLAIT_EINVAL);
}
END_TEST

/* The round core in poisson mode: the cohort is whoever the sampler admitted
 * (here more than target_cohort), training starts at the selection timeout,
 * the round does not close at target_cohort updates, and the accountant
 * composes the round's q. */
START_TEST(test_poisson_round)
{
    enum { DIM = 16, POP = 60 };
    plait_round_config_t c;
    plait_round_config_default(&c);
    c.dim = DIM;
    c.target_cohort = 3;
    c.min_cohort = 2;
    c.selection_timeout_s = 10;
    c.round_timeout_s = 100;
    c.dp = 1;
    c.dp_cfg.noise_multiplier = 1.3;
    c.poisson = 1;
    c.population = POP;
    c.sample_rate = 0.2;
    float g[DIM] = {0};
    plait_round_t *r = NULL;
    ck_assert_int_eq(plait_round_create(&r, &c, g, DIM), 0);
    ck_assert_int_eq(plait_round_set_sample_rate(r, 0), PLAIT_EINVAL);
    ck_assert_int_eq(plait_round_set_sample_rate(r, 0.25), 0);
    plait_sel_t *s = NULL;
    ck_assert_int_eq(plait_sel_create(&s), 0);
    plait_rng_t rng, noise;
    plait_rng_seed_u64(&rng, 99, 0);
    plait_rng_seed_u64(&noise, 99, 1);
    uint64_t rid = 0;
    ck_assert_int_eq(plait_round_open(r, 0, &rid), 0);
    ck_assert_int_eq(plait_round_set_sample_rate(r, 0.5), PLAIT_EBUSY); /* between rounds only */
    ck_assert_int_eq(plait_sel_open(s, rid, 0.25), 0);
    uint64_t chosen[POP];
    size_t n = 0;
    for (uint64_t dev = 1; dev <= POP; dev++) {
        int yes = 0;
        ck_assert_int_eq(plait_sel_decide(s, &rng, dev, &yes, NULL), 0);
        if (yes) {
            ck_assert_int_eq(plait_round_select(r, dev, 1.0), 0);
            chosen[n++] = dev;
        }
    }
    /* seed 99 admits more than the target of 3: the cohort is not cut to it */
    ck_assert_uint_gt(n, 3);
    ck_assert_int_eq(plait_round_state(r), PLAIT_ROUND_SELECTION);
    ck_assert_int_eq(plait_round_tick(r, 10.0), 0);
    ck_assert_int_eq(plait_round_state(r), PLAIT_ROUND_TRAINING);
    uint32_t words[DIM + 1];
    float u[DIM];
    for (size_t i = 0; i < n; i++) {
        for (size_t k = 0; k < DIM; k++) u[k] = 0.01f * (float)(k + i);
        ck_assert_int_eq(plait_quant_encode(plait_round_quant(r), u, DIM, &rng, words), 0);
        ck_assert_int_eq(plait_quant_encode_weight(plait_round_quant(r), 1.0, &rng, &words[DIM]), 0);
        ck_assert_int_eq(plait_round_submit_words(r, chosen[i], rid, words, DIM + 1, 1, 11.0), 0);
        if (i + 1 < n) ck_assert_int_eq(plait_round_state(r), PLAIT_ROUND_TRAINING); /* past the target: still open */
    }
    ck_assert_int_eq(plait_round_state(r), PLAIT_ROUND_AGGREGATION);
    ck_assert_int_eq(plait_round_aggregate(r, &noise), 0);
    ck_assert_int_eq(plait_round_commit(r), 0);
    plait_round_stats_t st;
    plait_round_stats(r, &st);
    ck_assert_uint_eq(st.accepted, n);
    ck_assert(st.sample_rate == 0.25);
    plait_accountant_t acc;
    double eps = 0;
    ck_assert_int_eq(plait_accountant_init(&acc, NULL, 0), 0);
    /* 1.3 × clip / (clip + √P·step): the quantization slack (check_round has the formula) */
    ck_assert(st.noise_multiplier < 1.3 && st.noise_multiplier > 1.3 * 0.5);
    ck_assert_int_eq(plait_accountant_compose(&acc, 0.25, st.noise_multiplier, 1), 0);
    ck_assert_int_eq(plait_accountant_epsilon(&acc, plait_round_delta(r), PLAIT_EPS_IMPROVED, &eps, NULL), 0);
    ck_assert(plait_round_epsilon(r) == eps);
    /* first-come configs cannot take a sample rate */
    plait_round_t *r2 = NULL;
    c.poisson = 0;
    c.population = 100;
    ck_assert_int_eq(plait_round_create(&r2, &c, g, DIM), 0);
    ck_assert_int_eq(plait_round_set_sample_rate(r2, 0.5), PLAIT_EINVAL);
    plait_round_destroy(r2);
    plait_rng_wipe(&rng);
    plait_rng_wipe(&noise);
    plait_sel_destroy(s);
    plait_round_destroy(r);
}
END_TEST

/* Adaptive clipping over rounds: 40 clients a round with update norms
 * uniform on [0.2, 1.8]; each sends its clipped update, weight 1 and the bit
 * "norm <= C" as words (as the agent does). The clip must converge to the
 * target quantile of the norms: 0.2 + 1.6 t. Fixed seeds: deterministic. */
static double run_adaptive(double start, double quantile, int rounds, double *trace)
{
    enum { DIM = 8, COHORT = 40 };
    plait_round_config_t c;
    plait_round_config_default(&c);
    c.dim = DIM;
    c.target_cohort = COHORT;
    c.min_cohort = 2;
    c.quant.range = 4;
    c.dp = 1;
    c.poisson = 1;
    c.population = 200;
    c.sample_rate = 0.2;
    c.clip_bit = 1;
    c.dp_cfg.clip = start;
    c.dp_cfg.noise_multiplier = 0.1;
    c.dp_cfg.adaptive = 1;
    c.dp_cfg.target_quantile = quantile;
    c.dp_cfg.clip_lr = 0.5;
    c.dp_cfg.count_stddev = 0.5;
    c.dp_cfg.max_clip = 4;
    float g[DIM] = {0};
    plait_round_t *r = NULL;
    ck_assert_int_eq(plait_round_create(&r, &c, g, DIM), 0);
    plait_rng_t rng, noise;
    plait_rng_seed_u64(&rng, 4242, 0);
    plait_rng_seed_u64(&noise, 4242, 1);
    for (int k = 0; k < rounds; k++) {
        uint64_t rid = 0;
        double now = 1000.0 * k;
        ck_assert_int_eq(plait_round_open(r, now, &rid), 0);
        for (uint64_t i = 1; i <= COHORT; i++) ck_assert_int_eq(plait_round_select(r, i, now), 0);
        ck_assert_int_eq(plait_round_start(r, now), 0);
        double C = plait_round_clip(r);
        for (uint64_t i = 1; i <= COHORT; i++) {
            double norm = 0.2 + 1.6 * plait_rng_uniform(&rng);
            float u[DIM];
            for (int j = 0; j < DIM; j++) u[j] = (float)(norm / sqrt((double)DIM)) * (j % 2 ? -1.0f : 1.0f);
            plait_clip_info_t ci;
            ck_assert_int_eq(plait_update_clip_l2(u, DIM, C, &ci), 0);
            uint32_t w[DIM + 2];
            ck_assert_int_eq(plait_quant_encode(plait_round_quant(r), u, DIM, &rng, w), 0);
            ck_assert_int_eq(plait_quant_encode_weight(plait_round_quant(r), 1.0, &rng, &w[DIM]), 0);
            ck_assert_int_eq(plait_quant_encode_weight(plait_round_quant(r), ci.clipped ? 0.0 : 1.0, &rng, &w[DIM + 1]),
                             0);
            /* the unclipped argument is ignored when the bits travel: pass the opposite */
            ck_assert_int_eq(plait_round_submit_words(r, i, rid, w, DIM + 2, ci.clipped ? 1 : 0, now + 1), 0);
        }
        ck_assert_int_eq(plait_round_state(r), PLAIT_ROUND_AGGREGATION);
        ck_assert_int_eq(plait_round_aggregate(r, &noise), 0);
        ck_assert_int_eq(plait_round_commit(r), 0);
        if (trace) trace[k] = plait_round_clip(r);
    }
    double C = plait_round_clip(r);
    plait_round_destroy(r);
    return C;
}

START_TEST(test_adaptive_clip_converges)
{
    double trace[60];
    double C = run_adaptive(0.1, 0.5, 60, trace);
    /* far below every norm: all bits 0, the clip grows by e^(0.5 * 0.5) a round, give or take the count noise */
    for (int k = 1; k < 8; k++) ck_assert_msg(trace[k] > trace[k - 1], "round %d: %g after %g", k, trace[k], trace[k - 1]);
    ck_assert_msg(C > 0.75 && C < 1.3, "median target: clip %g, want about 1.0", C);
    C = run_adaptive(3.0, 0.25, 60, trace);
    for (int k = 1; k < 5; k++) ck_assert(trace[k] < trace[k - 1]); /* above every norm: shrinks */
    ck_assert_msg(C > 0.45 && C < 0.8, "quartile target: clip %g, want about 0.6", C);

    /* a clip-bit word must be 0 or 1 alone; the word count includes it */
    plait_round_config_t c;
    plait_round_config_default(&c);
    c.dim = 4;
    c.target_cohort = 2;
    c.min_cohort = 1;
    c.clip_bit = 1;
    float g[4] = {0};
    plait_round_t *r = NULL;
    ck_assert_int_eq(plait_round_create(&r, &c, g, 4), 0);
    uint64_t rid;
    ck_assert_int_eq(plait_round_open(r, 0, &rid), 0);
    ck_assert_int_eq(plait_round_select(r, 1, 0), 0);
    ck_assert_int_eq(plait_round_select(r, 2, 0), 0);
    ck_assert_int_eq(plait_round_start(r, 0), 0);
    plait_rng_t rng;
    plait_rng_seed_u64(&rng, 1, 0);
    uint32_t w[6];
    float u[4] = {0.1f, 0, 0, 0};
    ck_assert_int_eq(plait_quant_encode(plait_round_quant(r), u, 4, &rng, w), 0);
    ck_assert_int_eq(plait_quant_encode_weight(plait_round_quant(r), 1.0, &rng, &w[4]), 0);
    ck_assert_int_eq(plait_quant_encode_weight(plait_round_quant(r), 0.5, &rng, &w[5]), 0);
    ck_assert_int_eq(plait_round_submit_words(r, 1, rid, w, 6, 0, 1), PLAIT_EPROTO);
    ck_assert_int_eq(plait_round_submit_words(r, 2, rid, w, 5, 0, 1), PLAIT_EMISMATCH);
    plait_round_destroy(r);
    c.quantized = 0;
    ck_assert_int_eq(plait_round_config_validate(&c), PLAIT_EINVAL);
}
END_TEST

/* ---- the privacy report against the calculator ---- */

typedef struct {
    int rc;
    char out[4096], err[4096];
} run_t;

static run_t cli(const char *const *args)
{
    char *argv[32];
    int argc = 0;
    argv[argc++] = "plait-aggregator";
    while (args[argc - 1]) {
        argv[argc] = (char *)args[argc - 1];
        argc++;
    }
    argv[argc] = NULL;
    FILE *o = tmpfile(), *e = tmpfile();
    ck_assert_ptr_nonnull(o);
    ck_assert_ptr_nonnull(e);
    run_t r;
    r.rc = plait__agg_cli_main(argc, argv, o, e);
    rewind(o);
    rewind(e);
    r.out[fread(r.out, 1, sizeof(r.out) - 1, o)] = '\0';
    r.err[fread(r.err, 1, sizeof(r.err) - 1, e)] = '\0';
    fclose(o);
    fclose(e);
    return r;
}

static double json_num(const char *json, const char *key)
{
    char pat[64];
    snprintf(pat, sizeof(pat), "\"%s\": ", key);
    const char *p = strstr(json, pat);
    ck_assert_msg(p != NULL, "no %s in %s", key, json);
    return strtod(p + strlen(pat), NULL);
}

static void ck_close(double a, double b)
{
    ck_assert_msg(fabs(a - b) <= 1e-9 * fabs(b), "%.17g != %.17g", a, b);
}

/* Commit round with a small adapter (first byte tag) and the ledger row led. */
static void commit_dp_round(plait_aggstore_t *st, int64_t round, uint8_t tag, const plait_aggstore_ledger_t *led)
{
    uint8_t blob[64];
    memset(blob, 7, sizeof(blob));
    blob[0] = tag;
    plait_aggstore_commit_t c;
    memset(&c, 0, sizeof(c));
    c.adapter = blob;
    c.adapter_len = sizeof(blob);
    c.lora_rank = 4;
    c.lora_alpha = 8;
    c.lora_targets = 1;
    c.ledger = led;
    ck_assert_int_eq(plait_aggstore_round_commit(st, round, &c, NULL), 0);
}

/* 6 central-DP rounds at q = 0.25, z = 1.3 over 4 devices; "a" joins every one. */
START_TEST(test_ledger_matches_calculator)
{
    char *dir = tu_tmpdir("selection_cli");
    char *db = tu_path(dir, "plait.db");
    plait_aggstore_config_t cfg;
    plait_aggstore_config_default(&cfg);
    cfg.path = db;
    plait_aggstore_t *st = NULL;
    ck_assert_int_eq(plait_aggstore_open(&st, &cfg), 0);
    const char *ids[] = {"a", "b", "c", "d"};
    uint8_t fpr[32] = {9};
    for (int i = 0; i < 4; i++) ck_assert_int_eq(plait_aggstore_device_enroll(st, ids[i], fpr), 0);
    const double delta = 1e-3;
    for (int64_t k = 0; k < 6; k++) {
        int64_t round = 0;
        ck_assert_int_eq(plait_aggstore_round_begin(st, 1, 1, "{}", k, &round), 0);
        ck_assert_int_eq(plait_aggstore_device_mark_uploaded(st, "a", round), 0);
        if (k % 3 == 0) ck_assert_int_eq(plait_aggstore_device_mark_uploaded(st, ids[1 + k % 2], round), 0);
        plait_aggstore_ledger_t led = {0, 0.25, 1.3, 1, delta, 0.0, "gaussian", 1.0, "poisson", 0, 0, 0, 0};
        commit_dp_round(st, round, (uint8_t)k, &led);
    }
    plait_aggstore_close(st);

    const char *a1[] = {"privacy", dir, "--json", NULL};
    run_t r = cli(a1);
    ck_assert_msg(r.rc == 0, "%s", r.err);
    ck_assert_ptr_nonnull(strstr(r.out, "\"amortized_valid\": true"));
    ck_assert_int_eq((int)json_num(r.out, "dp_rounds"), 6);
    ck_assert_int_eq((int)json_num(r.out, "max_device_rounds"), 6);
    double amort = json_num(r.out, "epsilon"), worst = json_num(r.out, "worst_case_epsilon");
    const char *a2[] = {"privacy", "--q", "0.25", "--noise-multiplier", "1.3", "--rounds", "6", "--delta", "1e-3",
                        "--json", NULL};
    run_t c1 = cli(a2);
    ck_assert_msg(c1.rc == 0, "%s", c1.err);
    ck_close(amort, json_num(c1.out, "epsilon"));
    /* the device that joined all 6 rounds: no amplification, q = 1 over 6 rounds */
    const char *a3[] = {"privacy", "--q", "1", "--noise-multiplier", "1.3", "--rounds", "6", "--delta", "1e-3",
                        "--json", NULL};
    run_t c2 = cli(a3);
    ck_assert_msg(c2.rc == 0, "%s", c2.err);
    ck_close(worst, json_num(c2.out, "epsilon"));
    ck_assert(worst > 3 * amort); /* the worst case is far above the amortized figure here */
    /* the text form says which assumption each figure needs */
    const char *a4[] = {"privacy", dir, NULL};
    r = cli(a4);
    ck_assert_int_eq(r.rc, 0);
    ck_assert_ptr_nonnull(strstr(r.out, "amortized: assumes every DP round Poisson-sampled"));
    ck_assert_ptr_nonnull(strstr(r.out, "worst_case_epsilon:"));
    ck_assert_ptr_nonnull(strstr(r.out, "assumes: none about sampling"));
    const char *a5[] = {"status", dir, NULL};
    r = cli(a5);
    ck_assert_int_eq(r.rc, 0);
    ck_assert_ptr_nonnull(strstr(r.out, "privacy: worst case per device epsilon"));
    ck_assert_ptr_nonnull(strstr(r.out, "holds if Poisson sampling stays secret"));
    /* one first-come DP round: the amortized figure's assumption no longer holds, and both
     * forms say so (privacy.md 2.7) */
    ck_assert_int_eq(plait_aggstore_open(&st, &cfg), 0);
    {
        int64_t round = 0;
        ck_assert_int_eq(plait_aggstore_round_begin(st, 1, 1, "{}", 6, &round), 0);
        ck_assert_int_eq(plait_aggstore_device_mark_uploaded(st, "a", round), 0);
        plait_aggstore_ledger_t led = {0, 1.0, 1.3, 1, delta, 0.0, "gaussian", 1.0, "first-come", 0, 0, 0, 0};
        commit_dp_round(st, round, 99, &led);
    }
    plait_aggstore_close(st);
    r = cli(a1);
    ck_assert_msg(r.rc == 0, "%s", r.err);
    ck_assert_ptr_nonnull(strstr(r.out, "\"amortized_valid\": false"));
    r = cli(a4);
    ck_assert_int_eq(r.rc, 0);
    ck_assert_ptr_nonnull(strstr(r.out, "NOT VALID here: 1 of 7 DP rounds were not Poisson-sampled"));
    tu_rmdir(dir);
    free(db);
    free(dir);
}
END_TEST

Suite *selection_suite(void)
{
    Suite *s = suite_create("selection");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_admission_frequency);
    tcase_add_test(tc, test_decided_once);
    tcase_add_test(tc, test_population_and_rate);
    tcase_add_test(tc, test_poisson_round);
    tcase_add_test(tc, test_adaptive_clip_converges);
    tcase_add_test(tc, test_ledger_matches_calculator);
    suite_add_tcase(s, tc);
    return s;
}
