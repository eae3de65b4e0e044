/*
 * check_strategy.c: the strategy plug-in point (strategy.h), FedAvgM's server
 * momentum (server_opt.c) and FedProx's proximal term in local training
 * (train.c prox_mu), and robust aggregation (median, trimmed mean) as a round
 * core and aggregator.conf setting.
 */
#include <check.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "plait/agg.h"
#include "plait/aggcfg.h"
#include "plait/rng.h"
#include "plait/lora.h"
#include "plait/model.h"
#include "plait/round.h"
#include "plait/strategy.h"
#include "plait/train.h"

/* ---- FedProx: the gradient of (mu/2)||w - w0||^2 -------------------------------- */

START_TEST(test_prox_gradient)
{
    plait_model_t m;
    plait_model_init(&m);
    plait_model_config_t mc = {.dim = 16, .hidden_dim = 24, .n_layers = 2, .n_heads = 4, .n_kv_heads = 2,
                               .vocab_size = 40, .seq_len = 16, .shared = 1};
    ck_assert_int_eq(plait_model_init_random(&m, &mc, 5), 0);
    plait_lora_config_t lc;
    plait_lora_config_default(&lc);
    lc.rank = 2;
    plait_lora_t lora;
    plait_lora_init(&lora);
    ck_assert_int_eq(plait_lora_setup(&lora, &m.cfg, &lc), 0);
    plait_lora_init_weights(&lora, 3);
    const double mu = 0.5;
    plait_train_config_t c0 = plait_train_config_default(), c1 = c0;
    c0.B = c1.B = 2;
    c0.T = c1.T = 8;
    c1.prox_mu = mu;
    c1.accum_steps = 2; /* the term is split over the step's micro-batches */
    plait_trainer_t *t0 = NULL, *t1 = NULL;
    ck_assert_int_eq(plait_train_create(&t0, &m, &lora, &c0), 0);
    ck_assert_int_eq(plait_train_create(&t1, &m, &lora, &c1), 0); /* w0 = the adapter now */
    ck_assert(plait_train_prox_value(t1) == 0.0);
    ck_assert(plait_train_prox_value(t0) == 0.0);
    size_t off = plait_train_grads_offset(t1), n = plait_train_grads_count(t1);
    ck_assert_uint_eq(n, plait_train_grads_count(t0));
    float *w0 = malloc(n * sizeof(float));
    ck_assert_ptr_nonnull(w0);
    memcpy(w0, lora.params + off, n * sizeof(float));
    /* Move away from the anchor. */
    double want_val = 0;
    for (size_t i = 0; i < n; i++) {
        float d = (float)(0.01 * (double)((int)(i % 7) - 3));
        lora.params[off + i] += d;
        double dd = (double)lora.params[off + i] - (double)w0[i];
        want_val += 0.5 * mu * dd * dd;
    }
    ck_assert_msg(fabs(plait_train_prox_value(t1) - want_val) <= 1e-9 * (1 + want_val), "%g vs %g",
                  plait_train_prox_value(t1), want_val);
    int32_t tok[2 * 9];
    for (int i = 0; i < 18; i++) tok[i] = (i * 7 + 3) % 40;
    float l0, l1;
    ck_assert_int_eq(plait_train_forward_backward(t0, tok, &l0), 0);
    ck_assert_int_eq(plait_train_forward_backward(t1, tok, &l1), 0);
    ck_assert(l0 == l1); /* the reported loss is the cross-entropy alone */
    /* With accum_steps 2 the data part is scaled by 1/2 and so is the proximal part. */
    const float *g0 = plait_train_grads(t0), *g1 = plait_train_grads(t1);
    double worst = 0, moved = 0;
    for (size_t i = 0; i < n; i++) {
        double want = 0.5 * (double)g0[i] + 0.5 * mu * ((double)lora.params[off + i] - (double)w0[i]);
        worst = fmax(worst, fabs((double)g1[i] - want));
        moved = fmax(moved, fabs((double)g1[i] - 0.5 * (double)g0[i]));
    }
    ck_assert_msg(worst <= 1e-6, "proximal gradient off by %g", worst);
    ck_assert_msg(moved > 1e-3, "the proximal term added nothing (%g): the test cannot fail", moved);
    /* Central differences of the proximal value agree with mu (w - w0). */
    for (size_t i = 0; i < n; i += n / 5 + 1) {
        float keep = lora.params[off + i];
        double h = 1e-3;
        lora.params[off + i] = (float)(keep + h);
        double up = plait_train_prox_value(t1);
        lora.params[off + i] = (float)(keep - h);
        double dn = plait_train_prox_value(t1);
        lora.params[off + i] = keep;
        double fd = (up - dn) / (2 * h), an = mu * ((double)keep - (double)w0[i]);
        ck_assert_msg(fabs(fd - an) <= 1e-4, "element %zu: fd %g vs %g", i, fd, an);
    }
    /* Reset makes the adapter now the anchor. */
    plait_train_reset(t1);
    ck_assert(plait_train_prox_value(t1) == 0.0);
    c1.prox_mu = -1;
    ck_assert_int_eq(plait_train_config_validate(&c1, &m), PLAIT_EINVAL);
    ck_assert_ptr_nonnull(strstr(plait_errmsg(), "prox_mu"));
    free(w0);
    plait_train_destroy(t0);
    plait_train_destroy(t1);
    plait_lora_free(&lora);
    plait_model_free(&m);
}
END_TEST

/* ---- FedAvgM -------------------------------------------------------------------- */

START_TEST(test_fedavgm)
{
    plait_server_opt_kind_t k;
    ck_assert_int_eq(plait_server_opt_kind_parse("fedavgm", &k), 0);
    ck_assert_int_eq(k, PLAIT_OPT_FEDAVGM);
    plait_server_opt_config_t oc;
    plait_server_opt_config_default(&oc, k);
    ck_assert(oc.lr == 1.0 && oc.beta1 == 0.9);
    plait_server_opt_t *o = NULL;
    ck_assert_int_eq(plait_server_opt_create(&o, &oc, 2), 0);
    ck_assert_uint_eq(plait_server_opt_state_len(o), 2);
    float x[2] = {0, 1}, d[2] = {1, -2};
    ck_assert_int_eq(plait_server_opt_step(o, x, d, 2), 0); /* m = d */
    ck_assert(fabsf(x[0] - 1.0f) < 1e-6f && fabsf(x[1] + 1.0f) < 1e-6f);
    ck_assert_int_eq(plait_server_opt_step(o, x, d, 2), 0); /* m = 0.9 d + d */
    ck_assert_msg(fabsf(x[0] - 2.9f) < 1e-5f && fabsf(x[1] + 4.8f) < 1e-5f, "%g %g", x[0], x[1]);
    float st[2];
    ck_assert_int_eq(plait_server_opt_export(o, st, 2), 0);
    ck_assert(fabsf(st[0] - 1.9f) < 1e-6f);
    plait_server_opt_t *o2 = NULL;
    ck_assert_int_eq(plait_server_opt_create(&o2, &oc, 2), 0);
    ck_assert_int_eq(plait_server_opt_import(o2, st, 2), 0);
    float y[2] = {x[0], x[1]};
    ck_assert_int_eq(plait_server_opt_step(o, x, d, 2), 0);
    ck_assert_int_eq(plait_server_opt_step(o2, y, d, 2), 0);
    ck_assert(x[0] == y[0] && x[1] == y[1]);
    ck_assert_int_eq(plait_server_opt_import(o2, st, 4), PLAIT_EMISMATCH);
    plait_server_opt_destroy(o);
    plait_server_opt_destroy(o2);
}
END_TEST

/* ---- the registry and the round core's hook --------------------------------------- */

typedef struct {
    int calls;
    float seen[4];
} probe_t;

static int probe_configure(void **state, const plait_strategy_params_t *p, size_t dim, plait_strategy_client_t *c)
{
    if (dim > 4) return plait_fail(PLAIT_EINVAL, "probe: dim %zu > 4", dim);
    if (p->server_lr < 0) return plait_fail(PLAIT_EINVAL, "probe: server_lr");
    probe_t *pr = calloc(1, sizeof(*pr));
    if (!pr) return plait_fail(PLAIT_ENOMEM, "probe");
    c->prox_mu = 0.25;
    *state = pr;
    return 0;
}

/* Sign SGD on the server: global += 0.5·sign(avg). */
static int probe_aggregate(void *state, float *global, const float *avg, size_t n)
{
    probe_t *pr = state;
    pr->calls++;
    for (size_t i = 0; i < n; i++) {
        pr->seen[i] = avg[i];
        global[i] += avg[i] > 0 ? 0.5f : avg[i] < 0 ? -0.5f : 0.0f;
    }
    return 0;
}

static const plait_strategy_t probe = {"probe_signsgd", "test", probe_configure, probe_aggregate, free};

START_TEST(test_registry_and_round)
{
    ck_assert_ptr_nonnull(plait_strategy_find("fedavg"));
    ck_assert_ptr_null(plait_strategy_find("nope"));
    ck_assert_msg(strstr(plait_errmsg(), "unknown strategy 'nope'") && strstr(plait_errmsg(), "fedprox") &&
                      strstr(plait_errmsg(), "fedavgm"),
                  "%s", plait_errmsg());
    plait_strategy_params_t p;
    plait_strategy_params_default(&p);
    plait_strategy_inst_t in;
    ck_assert_int_eq(plait_strategy_setup(&in, plait_strategy_find("fedprox"), &p, 3), 0);
    ck_assert(in.client.prox_mu == 0.01);
    plait_strategy_free(&in);
    plait_strategy_free(&in); /* twice is safe */
    p.prox_mu = 0.1;
    ck_assert_int_eq(plait_strategy_setup(&in, plait_strategy_find("fedavg"), &p, 3), PLAIT_EINVAL);
    ck_assert_ptr_nonnull(strstr(plait_errmsg(), "fedprox"));
    ck_assert_ptr_null(in.s);
    plait_strategy_params_default(&p);
    p.momentum = 1.0;
    ck_assert_int_eq(plait_strategy_setup(&in, plait_strategy_find("fedavgm"), &p, 3), PLAIT_EINVAL);
    plait_strategy_params_default(&p);

    /* Registration: names checked, no duplicates. */
    plait_strategy_t bad = probe;
    bad.name = "Bad Name";
    ck_assert_int_eq(plait_strategy_register(&bad), PLAIT_EINVAL);
    bad = probe;
    bad.aggregate = NULL;
    ck_assert_int_eq(plait_strategy_register(&bad), PLAIT_EINVAL);
    if (plait_strategy_find("probe_signsgd") == NULL) ck_assert_int_eq(plait_strategy_register(&probe), 0);
    ck_assert_int_eq(plait_strategy_register(&probe), PLAIT_EINVAL);
    ck_assert_ptr_nonnull(strstr(plait_errmsg(), "already"));

    /* The round core averages, then hands the average to the strategy. */
    ck_assert_int_eq(plait_strategy_setup(&in, plait_strategy_find("probe_signsgd"), &p, 3), 0);
    ck_assert(in.client.prox_mu == 0.25);
    plait_round_config_t rc;
    plait_round_config_default(&rc);
    rc.dim = 3;
    rc.target_cohort = 2;
    rc.min_cohort = 2;
    rc.overselect = 1;
    rc.quantized = 0;
    rc.weight_cap = 1;
    rc.strategy = &in;
    float g0[3] = {1, 1, 1};
    plait_round_t *r = NULL;
    ck_assert_int_eq(plait_round_create(&r, &rc, g0, 3), 0);
    ck_assert_uint_eq(plait_round_opt_state_len(r), 0);
    uint64_t rid;
    ck_assert_int_eq(plait_round_open(r, 0, &rid), 0);
    ck_assert_int_eq(plait_round_select(r, 1, 0), 0);
    ck_assert_int_eq(plait_round_select(r, 2, 0), 0);
    float u1[3] = {0.1f, -0.2f, 0.0f}, u2[3] = {0.3f, 0.1f, 0.0f};
    ck_assert_int_eq(plait_round_submit_float(r, 1, rid, u1, 3, 1, 1, 1), 0);
    ck_assert_int_eq(plait_round_submit_float(r, 2, rid, u2, 3, 1, 1, 1), 0);
    ck_assert_int_eq(plait_round_aggregate(r, NULL), 0);
    ck_assert_int_eq(plait_round_commit(r), 0);
    probe_t *pr = in.state;
    ck_assert_int_eq(pr->calls, 1);
    ck_assert(fabsf(pr->seen[0] - 0.2f) < 1e-6f && fabsf(pr->seen[1] + 0.05f) < 1e-6f);
    const float *g = plait_round_global(r);
    ck_assert(g[0] == 1.5f && g[1] == 0.5f && g[2] == 1.0f); /* sign step, not the FedAvg step */
    plait_round_destroy(r);
    plait_strategy_free(&in);
}
END_TEST

/* ---- robust aggregation ------------------------------------------------------------ */

/* Five devices, one of them far off: the median keeps the honest value, the mean does not. */
static void robust_round(plait_robust_kind_t kind, int quantized)
{
    enum { D = 4 };
    plait_round_config_t rc;
    plait_round_config_default(&rc);
    rc.dim = D;
    rc.target_cohort = 5;
    rc.min_cohort = 5;
    rc.overselect = 1;
    rc.quantized = quantized;
    rc.weight_cap = 1;
    rc.robust = 1;
    rc.robust_kind = kind;
    rc.trim_fraction = 0.2; /* one value at each end of five */
    float g0[D] = {0};
    plait_round_t *r = NULL;
    ck_assert_int_eq(plait_round_create(&r, &rc, g0, D), 0);
    plait_rng_t rng;
    plait_rng_seed_u64(&rng, 9, 1);
    for (int round = 0; round < 2; round++) { /* the second round must not see the first's updates */
        uint64_t rid;
        ck_assert_int_eq(plait_round_open(r, round, &rid), 0);
        for (uint64_t k = 0; k < 5; k++) ck_assert_int_eq(plait_round_select(r, k, round), 0);
        for (uint64_t k = 0; k < 5; k++) {
            float u[D];
            for (int i = 0; i < D; i++) u[i] = k == 4 ? 0.45f : 0.01f * (float)(k + 1);
            double w = 0.25 + 0.15 * (double)k; /* weights must not matter */
            if (quantized) {
                uint32_t words[D + 1];
                float tmp[D];
                for (int i = 0; i < D; i++) tmp[i] = (float)(w * u[i]);
                ck_assert_int_eq(plait_quant_encode(plait_round_quant(r), tmp, D, &rng, words), 0);
                ck_assert_int_eq(plait_quant_encode_weight(plait_round_quant(r), w, &rng, &words[D]), 0);
                ck_assert_int_eq(plait_round_submit_words(r, k, rid, words, D + 1, 1, round), 0);
            } else {
                ck_assert_int_eq(plait_round_submit_float(r, k, rid, u, D, w, 1, round), 0);
            }
        }
        ck_assert_int_eq(plait_round_state(r), PLAIT_ROUND_AGGREGATION);
        ck_assert_int_eq(plait_round_aggregate(r, NULL), 0);
        ck_assert_int_eq(plait_round_commit(r), 0);
        /* median: 0.03; trimmed mean of {0.02, 0.03, 0.04}: 0.03; the mean would be ~0.1 */
        const float *g = plait_round_global(r);
        double tol = quantized ? 3e-4 : 1e-6; /* a quantization step over the smallest weight, per round */
        for (int i = 0; i < D; i++)
            ck_assert_msg(fabs(g[i] - 0.03 * (round + 1)) <= tol, "round %d [%d] = %g", round, i, g[i]);
    }
    plait_round_destroy(r);
}

START_TEST(test_robust_round)
{
    robust_round(PLAIT_ROBUST_MEDIAN, 1);
    robust_round(PLAIT_ROBUST_TRIMMED_MEAN, 1);
    robust_round(PLAIT_ROBUST_MEDIAN, 0);
    plait_round_config_t rc;
    plait_round_config_default(&rc);
    rc.dim = 4;
    rc.robust = 1;
    rc.secure = 1;
    ck_assert_int_eq(plait_round_config_validate(&rc), PLAIT_EINVAL);
    ck_assert_ptr_nonnull(strstr(plait_errmsg(), "secure aggregation hides"));
}
END_TEST

static plait_aggcfg_t agg_base(void)
{
    plait_aggcfg_t c;
    plait_aggcfg_default(&c);
    snprintf(c.base_model, sizeof(c.base_model), "/models/m.bin");
    return c;
}

START_TEST(test_aggcfg_robust_and_momentum)
{
    plait_aggcfg_t c = agg_base();
    ck_assert_str_eq(c.aggregation, "mean");
    ck_assert_int_eq(plait_aggcfg_set(&c, "aggregation=median"), 0);
    /* secure_agg is on by default: refused, saying why. */
    ck_assert_int_eq(plait_aggcfg_validate(&c), PLAIT_EINVAL);
    ck_assert_msg(strstr(plait_errmsg(), "secure_agg = false") && strstr(plait_errmsg(), "only their sum"), "%s",
                  plait_errmsg());
    ck_assert_int_eq(plait_aggcfg_set(&c, "secure_agg=false"), 0);
    ck_assert_int_eq(plait_aggcfg_validate(&c), 0);
    ck_assert_int_eq(plait_aggcfg_set(&c, "dp=central"), 0);
    ck_assert_int_eq(plait_aggcfg_validate(&c), PLAIT_EINVAL);
    ck_assert_ptr_nonnull(strstr(plait_errmsg(), "privacy accounting"));
    c = agg_base();
    ck_assert_int_eq(plait_aggcfg_set(&c, "aggregation=trimmed_mean"), 0);
    ck_assert_int_eq(plait_aggcfg_set(&c, "dp=distributed"), 0);
    ck_assert_int_eq(plait_aggcfg_validate(&c), PLAIT_EINVAL); /* secure aggregation again */
    ck_assert_int_eq(plait_aggcfg_set(&c, "aggregation=mode"), 0);
    ck_assert_int_eq(plait_aggcfg_validate(&c), PLAIT_EINVAL);
    ck_assert_ptr_nonnull(strstr(plait_errmsg(), "median or trimmed_mean"));
    ck_assert_int_eq(plait_aggcfg_set(&c, "trim_fraction=0.5"), PLAIT_EINVAL);
    c = agg_base();
    ck_assert_int_eq(plait_aggcfg_set(&c, "server_opt=fedavgm"), 0);
    ck_assert_int_eq(plait_aggcfg_set(&c, "server_momentum=0.5"), 0);
    ck_assert_int_eq(plait_aggcfg_validate(&c), 0);
    ck_assert(c.server_momentum == 0.5);
    ck_assert_int_eq(plait_aggcfg_set(&c, "server_momentum=1"), PLAIT_EINVAL);
}
END_TEST

Suite *strategy_suite(void)
{
    Suite *s = suite_create("strategy");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, test_prox_gradient);
    tcase_add_test(tc, test_fedavgm);
    tcase_add_test(tc, test_registry_and_round);
    tcase_add_test(tc, test_robust_round);
    tcase_add_test(tc, test_aggcfg_robust_and_momentum);
    suite_add_tcase(s, tc);
    return s;
}
