/*
 * check_strategy.c: the strategy plug-in point (strategy.h), FedAvgM's server
 * momentum (server_opt.c) and FedProx's proximal term in local training
 * (train.c prox_mu).
 */
#include <check.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "plait/agg.h"
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

Suite *strategy_suite(void)
{
    Suite *s = suite_create("strategy");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, test_prox_gradient);
    tcase_add_test(tc, test_fedavgm);
    tcase_add_test(tc, test_registry_and_round);
    suite_add_tcase(s, tc);
    return s;
}
