/*
 * check_sim.c: the fleet simulator (sim/): the population split of
 * tinyshakespeare by speaker, the 80/20 line split, the fleet model's rates,
 * the config file, and small fixed-seed runs (determinism across thread
 * counts, a recorded checksum).
 */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "plait/data.h"
#include "plait/json.h"
#include "plait/model.h"
#include "plait/sim.h"
#include "plait/tensor.h"
#include "tensor_int.h"
#include "plait/tok.h"
#include "sim_int.h"
#include "testutil.h"

/* The checksum of the fixed-seed small run below (FNV-1a of the final global
 * adapter and every deterministic metric). Recorded from a run of this code;
 * a change in training, aggregation, sampling or the fleet model changes it. */
/* (Re-recorded when the personalized evaluation gained the output bias: with eval.personal_bias_steps = 0
 * the run gives the previous 0x3c9c33710211717b; and when it gained the kNN memory and the guards: with
 * eval.personal_knn_bytes = 0 and eval.personal_guard_z = 0 it gives the previous 0x60f069c193450a94.) */
#define SMALL_RUN_CHECKSUM 0xbe12e532a86cc615ULL

/* Rates over many draws: allow 4 standard errors. */
#define RATE_SIGMAS 4.0

static void small_config(plait_sim_config_t *c, const char *tag)
{
    plait_sim_config_default(c, tu_assets_dir());
    char *dir = tu_tmpdir(tag);
    snprintf(c->out_dir, sizeof(c->out_dir), "%s", dir);
    free(dir);
    c->max_clients = 50;
    c->rounds = 3;
    c->clients_per_round = 8;
    c->local_steps = 2;
    c->batch = 2;
    c->seq_len = 16;
    c->lr = 1e-2;
    c->dropout = 0.2;
    c->deadline_s = 3.0;      /* 2 steps · 32 tokens at median 200 tok/s = 0.32 s; slow clients miss 3 s */
    c->speed_sigma = 1.5;
    c->eval_clients = 10;
    c->eval_windows = 2;
    c->personal_clients = 2;
    c->personal_steps = 1;
    c->personal_rounds = 1; /* personalize every evaluated round */
    c->quiet = true;
}

static void load_tok(plait_tok_t *tok)
{
    plait_model_t m;
    plait_model_init(&m);
    char *mp = tu_path(tu_assets_dir(), "stories260K.bin"), *tp = tu_path(tu_assets_dir(), "tok512.bin");
    ck_assert_int_eq(plait_model_load(&m, mp), 0);
    plait_tok_init(tok);
    ck_assert_int_eq(plait_tok_load(tok, tp, m.cfg.vocab_size), 0);
    plait_model_free(&m);
    free(mp);
    free(tp);
}

START_TEST(test_population_shakespeare)
{
    plait_sim_config_t c;
    small_config(&c, "sim_pop");
    c.max_clients = 0;
    c.seq_len = 32;
    plait_tok_t tok;
    load_tok(&tok);
    plait_sim_pop_t pop;
    char dir[PLAIT_SIM_PATH_MAX + 16];
    snprintf(dir, sizeof(dir), "%s/clients", c.out_dir);
    ck_assert_int_eq(plait_sim_pop_build(&pop, &c, &tok, dir), 0);
    /* The assets README: 308 distinct names (the "LADY  CAPULET" typo joined), 163 with >= 20 lines. */
    ck_assert_uint_eq(pop.n_sources, 308);
    ck_assert_uint_eq(pop.n, 163);
    ck_assert_uint_eq(pop.n_too_few, 308 - 163);
    ck_assert_uint_eq(pop.n_too_small, 0);
    ck_assert_uint_eq(pop.n_skipped, 0);
    size_t lines = 0, max_lines = 0;
    for (size_t i = 0; i < pop.n; i++) {
        const plait_sim_client_t *k = &pop.clients[i];
        size_t tot = (size_t)k->train_lines + k->heldout_lines;
        ck_assert_uint_ge(tot, 20);
        /* 80/20 by lines, rounded to the nearest line. */
        ck_assert_uint_eq(k->train_lines, (size_t)floor(0.8 * (double)tot + 0.5));
        ck_assert_uint_gt(k->heldout_records, 0);
        lines += tot;
        if (tot > max_lines) max_lines = tot;
    }
    ck_assert_uint_eq(max_lines, 902); /* GLOUCESTER */
    ck_assert_uint_gt(lines, 20000);
    /* The store holds exactly the counted records, in order, split by kind. */
    plait_corpus_t tr, ho;
    plait_corpus_init(&tr);
    plait_corpus_init(&ho);
    ck_assert_int_eq(plait__sim_load_client(&pop, 0, &tok, &tr, &ho), 0);
    ck_assert_uint_eq(tr.n_records, pop.clients[0].train_records);
    ck_assert_uint_eq(ho.n_records, pop.clients[0].heldout_records);
    ck_assert_uint_eq(tr.n, pop.clients[0].train_tokens);
    ck_assert_uint_eq(ho.n, pop.clients[0].heldout_tokens);
    plait_corpus_free(&tr);
    plait_corpus_free(&ho);
    /* A second build in the same folder reuses the stores (manifest) with the same counts. */
    plait_sim_pop_t again;
    ck_assert_int_eq(plait_sim_pop_build(&again, &c, &tok, dir), 0);
    ck_assert_uint_eq(again.n, pop.n);
    ck_assert_uint_eq(again.n_sources, pop.n_sources);
    ck_assert_uint_eq(again.n_too_few, pop.n_too_few);
    ck_assert(memcmp(again.clients, pop.clients, pop.n * sizeof(plait_sim_client_t)) == 0);
    plait_sim_pop_free(&again);
    /* A damaged manifest is not trusted: the stores are rebuilt. */
    char *mp = tu_path(dir, "manifest.txt");
    ck_assert_int_eq(tu_write_file(mp, "plait-sim-population 1\nkey 0\n", 29), 0);
    ck_assert_int_eq(plait_sim_pop_build(&again, &c, &tok, dir), 0);
    ck_assert_uint_eq(again.n, 163);
    plait_sim_pop_free(&again);
    free(mp);
    plait_sim_pop_free(&pop);

    /* At 100 lines, 70 speakers (README). */
    c.min_lines = 100;
    ck_assert_int_eq(plait_sim_pop_build(&pop, &c, &tok, dir), 0);
    ck_assert_uint_eq(pop.n, 70);
    plait_sim_pop_free(&pop);
    plait_tok_free(&tok);
}
END_TEST

START_TEST(test_population_jsonl_and_dir)
{
    plait_sim_config_t c;
    small_config(&c, "sim_gen");
    c.min_lines = 3;
    c.seq_len = 2;
    plait_tok_t tok;
    load_tok(&tok);
    /* JSON lines: two users with enough lines, one with too few, one record without a user. */
    char *path = tu_path(c.out_dir, "data.jsonl");
    const char *doc = "{\"user\":\"a\",\"text\":\"one two three\\nfour five six\"}\n"
                      "{\"user\":\"b\",\"text\":\"seven eight nine ten\"}\n"
                      "{\"text\":\"nobody's line\"}\n"
                      "{\"user\":\"a\",\"text\":\"seven eight\\nnine ten eleven\\ntwelve thirteen fourteen\"}\n"
                      "{\"user\":\"c\",\"text\":\"x1 x2 x3 x4 x5\\ny1 y2 y3 y4\\nz1 z2 z3 z4 z5\\nw1 w2 w3 w4 w5\"}\n";
    ck_assert_int_eq(tu_write_file(path, doc, strlen(doc)), 0);
    snprintf(c.data, sizeof(c.data), "%s", path);
    c.source = PLAIT_SIM_SRC_JSONL;
    plait_sim_pop_t pop;
    char dir[PLAIT_SIM_PATH_MAX + 16];
    snprintf(dir, sizeof(dir), "%s/clients", c.out_dir);
    ck_assert_int_eq(plait_sim_pop_build(&pop, &c, &tok, dir), 0);
    ck_assert_uint_eq(pop.n_sources, 3);
    ck_assert_uint_eq(pop.n_skipped, 1);
    ck_assert_uint_eq(pop.n_too_few, 1);
    ck_assert_uint_eq(pop.n, 2);
    /* User a: 5 lines → 4 train, 1 held out; the second record straddles the cut. */
    ck_assert_uint_eq(pop.clients[0].train_lines, 4);
    ck_assert_uint_eq(pop.clients[0].heldout_lines, 1);
    ck_assert_uint_eq(pop.clients[0].train_records, 2);
    plait_sim_pop_free(&pop);
    free(path);

    /* A malformed line is an error naming the line, not a crash. */
    path = tu_path(c.out_dir, "bad.jsonl");
    ck_assert_int_eq(tu_write_file(path, "{\"user\":\"a\",\"text\":\"ok\"}\n{\"user\":\n", 35), 0);
    snprintf(c.data, sizeof(c.data), "%s", path);
    ck_assert_int_eq(plait_sim_pop_build(&pop, &c, &tok, dir), PLAIT_EPROTO);
    ck_assert_ptr_nonnull(strstr(plait_errmsg(), "line 2"));
    free(path);

    /* A folder of .txt files: one client per file, sorted by name; other files ignored. */
    char *fdir = tu_tmpdir("sim_gen_dir");
    char *p1 = tu_path(fdir, "b.txt"), *p2 = tu_path(fdir, "a.txt"), *p3 = tu_path(fdir, "notes.md");
    const char *t1 = "l1 aaa bbb\nl2 ccc ddd\n\nl3 eee fff\nl4 ggg hhh\nl5 iii jjj\n";
    ck_assert_int_eq(tu_write_file(p1, t1, strlen(t1)), 0);
    ck_assert_int_eq(tu_write_file(p2, "short\n", 6), 0);
    ck_assert_int_eq(tu_write_file(p3, t1, strlen(t1)), 0);
    snprintf(c.data, sizeof(c.data), "%s", fdir);
    c.source = PLAIT_SIM_SRC_DIR;
    ck_assert_int_eq(plait_sim_pop_build(&pop, &c, &tok, dir), 0);
    ck_assert_uint_eq(pop.n_sources, 2);
    ck_assert_uint_eq(pop.n, 1);
    ck_assert_uint_eq(pop.clients[0].train_lines, 4);
    ck_assert_uint_eq(pop.clients[0].heldout_lines, 1);
    plait_sim_pop_free(&pop);
    free(p1);
    free(p2);
    free(p3);
    free(fdir);
    plait_tok_free(&tok);
}
END_TEST

/* The population does not depend on seq_len: a client with little text is kept, trained and evaluated (one
 * partial window), whatever the window. */
START_TEST(test_population_seq_len)
{
    plait_sim_config_t c;
    small_config(&c, "sim_seqlen");
    c.max_clients = 0;
    c.min_lines = 3;
    plait_tok_t tok;
    load_tok(&tok);
    char *path = tu_path(c.out_dir, "data.jsonl");
    const char *doc = "{\"user\":\"a\",\"text\":\"one two three\\nfour five six\\nseven eight\\nnine ten\"}\n"
                      "{\"user\":\"b\",\"text\":\"the king is dead\\nlong live the king\\nand the queen\"}\n"
                      "{\"user\":\"c\",\"text\":\"x1 x2 x3 x4 x5\\ny1 y2 y3 y4\\nz1 z2 z3 z4 z5\\nw1\"}\n";
    ck_assert_int_eq(tu_write_file(path, doc, strlen(doc)), 0);
    snprintf(c.data, sizeof(c.data), "%s", path);
    c.source = PLAIT_SIM_SRC_JSONL;
    char dir[PLAIT_SIM_PATH_MAX + 16];
    snprintf(dir, sizeof(dir), "%s/clients", c.out_dir);
    plait_sim_pop_t p8, p128;
    c.seq_len = 8;
    ck_assert_int_eq(plait_sim_pop_build(&p8, &c, &tok, dir), 0);
    c.seq_len = 128;
    ck_assert_int_eq(plait_sim_pop_build(&p128, &c, &tok, dir), 0);
    ck_assert_uint_eq(p8.n, 3);
    ck_assert_uint_eq(p128.n, p8.n);
    ck_assert(memcmp(p8.clients, p128.clients, p8.n * sizeof(plait_sim_client_t)) == 0);
    for (size_t i = 0; i < p8.n; i++) ck_assert_uint_lt(p8.clients[i].heldout_tokens, 129); /* shorter than a window */
    plait_sim_pop_free(&p8);
    plait_sim_pop_free(&p128);
    /* Shakespeare: the same 163 speakers at seq_len 16 and 256. */
    plait_sim_config_t s;
    small_config(&s, "sim_seqlen_sh");
    s.max_clients = 0;
    snprintf(dir, sizeof(dir), "%s/clients", s.out_dir);
    s.seq_len = 256;
    ck_assert_int_eq(plait_sim_pop_build(&p128, &s, &tok, dir), 0);
    ck_assert_uint_eq(p128.n, 163);
    plait_sim_pop_free(&p128);
    plait_tok_free(&tok);
    /* A run at a window longer than every client's held-out text evaluates all of them, like for like. */
    c.seq_len = 64;
    c.rounds = 1;
    c.clients_per_round = 2;
    c.min_clients = 1;
    c.dropout = 0;
    c.deadline_s = 1e6;
    c.eval_windows = 0;
    c.personal_steps = 5;
    c.personal_clients = 1000000000; /* the default: all */
    c.personal_val_every = 1;
    plait_sim_result_t r;
    ck_assert_msg(plait_sim_run(&c, &r) == 0, "run: %s", plait_errmsg());
    ck_assert_uint_eq(r.n_eval_clients, 3);
    ck_assert_uint_eq(r.n_pers_clients, 3);
    for (size_t i = 0; i < 3; i++) {
        ck_assert(isfinite(r.client_global[i]) && isfinite(r.client_personal[i]));
        /* The personalized evaluation's global loss is the global evaluation's, client for client. */
        ck_assert_msg(r.client_pglobal[i] == r.client_global[i], "client %zu: %g vs %g", i, r.client_pglobal[i],
                      r.client_global[i]);
        ck_assert_uint_gt(r.client_tokens[i], 0);
    }
    ck_assert(isfinite(r.rounds[1].personal_global_loss));
    ck_assert_double_eq_tol(r.rounds[1].personal_global_loss, r.rounds[1].global_loss, 1e-12);
    plait_sim_result_free(&r);
    free(path);
}
END_TEST

static double phi(double x) { return 0.5 * erfc(-x / sqrt(2.0)); }

START_TEST(test_fleet_rates)
{
    plait_sim_config_t c;
    plait_sim_config_default(&c, NULL);
    c.dropout = 0.2;
    c.avail_min = 0.2;
    c.avail_max = 0.6;
    c.bw_median = 1e15; /* network time negligible: duration = work / speed */
    c.speed_median = 100;
    c.speed_sigma = 0.7;
    const double work = 1000, deadline = 15; /* P(speed < 1000/15) */
    size_t n = 20000, drop = 0, late = 0, avail = 0;
    for (size_t i = 0; i < n; i++) {
        plait_sim_fate_t f;
        int round = 1 + (int)(i % 5);
        size_t client = i / 5;
        plait_sim_fleet_fate(&c, round, client, 0, 0, work, &f);
        drop += (size_t)f.dropped;
        late += f.duration > deadline;
        ck_assert(!f.dropped || (f.drop_at >= 0 && f.drop_at <= f.duration));
        avail += (size_t)plait_sim_fleet_available(&c, round, client);
    }
    /* Straggling depends on the client's speed only: count over clients. */
    size_t nc = n / 5, late_c = 0;
    for (size_t k = 0; k < nc; k++) {
        plait_sim_traits_t t;
        plait_sim_fleet_traits(&c, k, &t);
        late_c += work / t.speed > deadline;
    }
    double p_late = phi((log(work / deadline) - log(c.speed_median)) / c.speed_sigma);
    double se = sqrt(0.2 * 0.8 / (double)n);
    ck_assert_msg(fabs((double)drop / (double)n - 0.2) < RATE_SIGMAS * se, "dropout rate %g", (double)drop / (double)n);
    se = sqrt(p_late * (1 - p_late) / (double)nc);
    ck_assert_msg(fabs((double)late_c / (double)nc - p_late) < RATE_SIGMAS * se, "late rate %g vs %g",
                  (double)late_c / (double)nc, p_late);
    ck_assert_uint_eq(late, late_c * 5); /* the same clients straggle every round */
    se = sqrt(0.4 * 0.6 / (double)n) + 0.02; /* availability varies per client: looser */
    ck_assert_msg(fabs((double)avail / (double)n - 0.4) < RATE_SIGMAS * se, "availability %g", (double)avail / (double)n);
    /* Pure functions of the seed. */
    plait_sim_fate_t a, b;
    plait_sim_fleet_fate(&c, 3, 7, 0, 0, work, &a);
    plait_sim_fleet_fate(&c, 3, 7, 0, 0, work, &b);
    ck_assert(a.dropped == b.dropped && a.duration == b.duration && a.drop_at == b.drop_at);
    c.seed = 2;
    plait_sim_fleet_fate(&c, 3, 7, 0, 0, work, &b);
    ck_assert(a.duration != b.duration);
}
END_TEST

START_TEST(test_config)
{
    plait_sim_config_t c, d;
    plait_sim_config_default(&c, "/assets");
    ck_assert_int_eq(plait_sim_config_validate(&c), 0);
    ck_assert_str_eq(c.model, "/assets/stories260K.bin");
    const char *good = "{\"rounds\":{\"count\":7,\"clients_per_round\":3},\"lora\":{\"mode\":\"fedsa\","
                       "\"targets\":\"wq,wk,wv\"},\"server\":{\"strategy\":\"fedyogi\"},\"privacy\":{\"clip\":0.5}}";
    ck_assert_int_eq(plait_sim_config_apply_json(&c, good, strlen(good)), 0);
    ck_assert_int_eq(c.rounds, 7);
    ck_assert_uint_eq(c.clients_per_round, 3);
    ck_assert_int_eq(c.lora_mode, PLAIT_LORA_MODE_FEDSA);
    ck_assert_str_eq(c.strategy, "fedyogi");
    ck_assert(c.clip == 0.5);
    /* Round trip: write, read into defaults, identical. */
    plait_buf_t b;
    plait_buf_init(&b, 0);
    ck_assert_int_eq(plait_sim_config_to_json(&c, &b), 0);
    plait_sim_config_default(&d, "/elsewhere");
    ck_assert_int_eq(plait_sim_config_apply_json(&d, b.data, b.len), 0);
    ck_assert(memcmp(&c, &d, sizeof(c)) == 0);
    plait_buf_free(&b);
    /* Errors name the key. */
    static const struct {
        const char *doc, *needle;
    } bad[] = {
        {"{\"rounds\":{\"cuont\":3}}", "rounds.cuont"},
        {"{\"round\":{}}", "round"},
        {"{\"rounds\":{\"count\":\"3\"}}", "rounds.count"},
        {"{\"rounds\":{\"count\":0}}", "rounds.count"},
        {"{\"rounds\":{\"count\":1.5}}", "rounds.count"},
        {"{\"lora\":{\"mode\":\"lora\"}}", "lora.mode"},
        {"{\"privacy\":{\"clip\":-1}}", "privacy.clip"},
        {"{\"rounds\":[]}", "rounds"},
        {"[1]", "object"},
        {"{\"rounds\":{\"count\":3}", "offset"},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        plait_sim_config_default(&d, NULL);
        int rc = plait_sim_config_apply_json(&d, bad[i].doc, strlen(bad[i].doc));
        ck_assert_msg(rc == PLAIT_EPROTO, "doc %zu gave %d", i, rc);
        ck_assert_msg(strstr(plait_errmsg(), bad[i].needle) != NULL, "doc %zu: '%s' lacks '%s'", i, plait_errmsg(),
                      bad[i].needle);
    }
    plait_sim_config_default(&d, NULL);
    snprintf(d.mode, sizeof(d.mode), "network"); /* runs (tests/integ/check_simnet.c) */
    ck_assert_int_eq(plait_sim_config_validate(&d), 0);
    snprintf(d.mode, sizeof(d.mode), "cluster");
    ck_assert_int_eq(plait_sim_config_validate(&d), PLAIT_EINVAL);
    plait_sim_config_default(&d, NULL);
    d.min_clients = d.clients_per_round + 1;
    ck_assert_int_eq(plait_sim_config_validate(&d), PLAIT_EINVAL);
}
END_TEST

static uint64_t run_small(int threads, uint64_t seed, plait_sim_result_t *res)
{
    plait_sim_config_t c;
    small_config(&c, threads == 1 ? "sim_run1" : "sim_run2");
    c.threads = threads;
    c.seed = seed;
    ck_assert_msg(plait_sim_run(&c, res) == 0, "run: %s", plait_errmsg());
    return res->checksum;
}

START_TEST(test_small_run_deterministic)
{
    plait_sim_result_t r1, r2;
    /* The recorded checksum holds on the AVX2+FMA kernels; the AVX-512 ones
     * (exp, softmax, RMSNorm) round differently, so the run is pinned to AVX2
     * where the CPU has it. Thread invariance holds on every path. */
    if (plait_cpu_has_avx2_fma()) plait__tensor_force_path(PLAIT__KPATH_AVX2);
    uint64_t h1 = run_small(1, 1, &r1), h2 = run_small(2, 1, &r2);
    ck_assert_uint_eq(r1.n_clients, 50);
    ck_assert_uint_eq(r1.n_rounds, 3);
    /* Identical whatever the thread count: every metric but wall time, and the adapter. */
    ck_assert_msg(h1 == h2, "checksums %016llx (1 thread) vs %016llx (2 threads)", (unsigned long long)h1,
                  (unsigned long long)h2);
    for (size_t r = 0; r <= 3; r++) {
        ck_assert(r1.rounds[r].global_loss == r2.rounds[r].global_loss);
        ck_assert(r1.rounds[r].personal_loss == r2.rounds[r].personal_loss);
        ck_assert_uint_eq(r1.rounds[r].participants, r2.rounds[r].participants);
    }
    /* Not vacuous: rounds committed with participants, the fleet misbehaved, the loss fell. */
    size_t drops = 0, strag = 0;
    for (size_t r = 1; r <= 3; r++) {
        ck_assert_int_eq(r1.rounds[r].committed, 1);
        ck_assert_uint_ge(r1.rounds[r].participants, 4);
        ck_assert_uint_gt(r1.rounds[r].bytes_up, 0);
        drops += r1.rounds[r].dropouts;
        strag += r1.rounds[r].stragglers;
    }
    ck_assert_uint_gt(drops, 0);
    ck_assert_uint_gt(strag, 0);
    ck_assert(r1.rounds[0].global_loss == r1.base_loss);
    ck_assert_msg(r1.rounds[3].global_loss < r1.base_loss - 0.05, "global %g base %g", r1.rounds[3].global_loss,
                  r1.base_loss);
    ck_assert(isfinite(r1.rounds[3].personal_loss));
    /* The recorded checksum (see SMALL_RUN_CHECKSUM). It was recorded on the
     * AVX2+FMA kernels; the portable kernels sum in another order, so there
     * only the thread-count invariance above is checked. */
    if (plait_cpu_has_avx2_fma()) ck_assert_msg(h1 == SMALL_RUN_CHECKSUM, "checksum %016llx, recorded %016llx", (unsigned long long)h1,
                  (unsigned long long)SMALL_RUN_CHECKSUM);
    /* Another seed gives another run. */
    plait_sim_result_t r3;
    ck_assert(run_small(1, 2, &r3) != h1);
    plait__tensor_force_path(-1);
    plait_sim_result_free(&r1);
    plait_sim_result_free(&r2);
    plait_sim_result_free(&r3);
}
END_TEST

/* SecAgg+ per virtual client: the same run bit for bit (each round's
 * unmasked sum is checked against the plain sum inside), and a threshold
 * chosen for 1% dropouts makes every round with more fail uncommitted. */
START_TEST(test_small_run_secure_agg)
{
    plait_sim_config_t c;
    plait_sim_result_t plain, sec, strict;
    small_config(&c, "sim_sa0");
    c.threads = 2;
    c.min_clients = 6; /* SecAgg+ needs more than half of the 11 selected to survive */
    ck_assert_msg(plait_sim_run(&c, &plain) == 0, "run: %s", plait_errmsg());
    small_config(&c, "sim_sa1");
    c.threads = 2;
    c.min_clients = 6;
    c.secure_agg = true;
    ck_assert_msg(plait_sim_run(&c, &sec) == 0, "run: %s", plait_errmsg());
    ck_assert_uint_eq(sec.checksum, plain.checksum);
    size_t committed = 0;
    for (size_t r = 1; r <= 3; r++) {
        committed += (size_t)sec.rounds[r].committed;
        if (sec.rounds[r].committed) ck_assert(sec.rounds[r].secagg_s > 0);
        ck_assert(plain.rounds[r].secagg_s == 0);
    }
    ck_assert_uint_gt(committed, 0);
    small_config(&c, "sim_sa2");
    c.threads = 2;
    c.min_clients = 6;
    c.secure_agg = true;
    c.secure_agg_dropout = 0.01; /* t = 10 of 11 selected, while at most 8 updates are taken */
    ck_assert_msg(plait_sim_run(&c, &strict) == 0, "run: %s", plait_errmsg());
    for (size_t r = 1; r <= 3; r++) {
        ck_assert_int_eq(strict.rounds[r].committed, 0);
        if (plain.rounds[r].committed) ck_assert(strict.rounds[r].secagg_s > 0); /* it ran, and failed */
    }
    ck_assert(strict.rounds[3].global_loss == strict.base_loss); /* nothing was committed */
    /* A sparse graph (k = 4, t = 3) with heavy dropout: a survivor whose neighbours all dropped
     * refuses its unmask request (docs/secagg.md, "Withheld share messages"); as on the service
     * it answers nothing and the round fails uncommitted, not the run. */
    plait_sim_result_t sparse;
    small_config(&c, "sim_sa4");
    c.threads = 2;
    c.max_clients = 200;
    c.clients_per_round = 40;
    c.min_clients = 27;
    c.dropout = 0.35;
    c.rounds = 4;
    c.local_steps = 1;
    c.eval_clients = 4;
    c.eval_windows = 1;
    c.personal_clients = 0;
    c.secure_agg = true;
    c.secure_agg_dropout = 0.01;
    ck_assert_msg(plait_sim_run(&c, &sparse) == 0, "run: %s", plait_errmsg());
    plait_sim_result_free(&sparse);
    /* A minimum cohort of half the selected has no secure threshold: refused up front. */
    small_config(&c, "sim_sa3");
    c.secure_agg = true;
    ck_assert_int_eq(plait_sim_config_validate(&c), PLAIT_EINVAL);
    ck_assert_ptr_nonnull(strstr(plait_errmsg(), "min_clients"));
    plait_sim_result_free(&plain);
    plait_sim_result_free(&sec);
    plait_sim_result_free(&strict);
}
END_TEST

/* FedSA-LoRA keeps B on the devices; central DP spends ε; outputs are written. */
START_TEST(test_small_run_fedsa_dp)
{
    plait_sim_config_t c;
    small_config(&c, "sim_fedsa");
    c.lora_mode = PLAIT_LORA_MODE_FEDSA;
    c.noise_multiplier = 0.5;
    c.rounds = 2;
    c.dropout = 0;
    c.deadline_s = 1e6;
    plait_sim_result_t res;
    ck_assert_msg(plait_sim_run(&c, &res) == 0, "run: %s", plait_errmsg());
    ck_assert(res.rounds[1].epsilon > 0 && res.rounds[2].epsilon > res.rounds[1].epsilon);
    ck_assert_uint_eq(res.rounds[1].dropouts, 0);
    ck_assert_uint_eq(res.rounds[1].participants, 8); /* the over-selected others arrive after the target */
    /* Personal state files exist for trained clients. */
    char p[PLAIT_SIM_PATH_MAX + 64];
    size_t found = 0;
    for (size_t i = 0; i < 50; i++) {
        snprintf(p, sizeof(p), "%s/personal/c%07zu.bin", c.out_dir, i);
        FILE *f = fopen(p, "rb");
        if (f) found++, fclose(f);
    }
    ck_assert_uint_ge(found, 8);
    static const char *files[] = {"metrics.csv", "metrics.jsonl", "loss.svg", "report.md", "config.json",
                                  "global.safetensors"};
    for (size_t i = 0; i < 6; i++) {
        char *fp = tu_path(c.out_dir, files[i]);
        size_t len = 0;
        uint8_t *buf = tu_read_file(fp, &len);
        ck_assert_msg(buf && len > 0, "%s missing", files[i]);
        if (i == 2) ck_assert_ptr_nonnull(strstr((char *)buf, "</svg>"));
        free(buf);
        free(fp);
    }
    plait_sim_result_free(&res);
}
END_TEST

/* The centralized baseline: pooled training data, same evaluation; deterministic whatever the thread count. */
static double run_central(int threads, const char *tag, plait_sim_result_t *res)
{
    plait_sim_config_t c;
    small_config(&c, tag);
    c.max_clients = 20;
    c.centralized_only = true;
    c.centralized_steps = 30;
    c.threads = threads;
    ck_assert_msg(plait_sim_run(&c, res) == 0, "run: %s", plait_errmsg());
    char *fp = tu_path(c.out_dir, "summary.json");
    size_t len = 0;
    uint8_t *buf = tu_read_file(fp, &len);
    ck_assert_msg(buf && len > 0 && strstr((char *)buf, "\"centralized_loss\":") != NULL, "summary.json");
    free(buf);
    free(fp);
    fp = tu_path(c.out_dir, "loss.svg");
    buf = tu_read_file(fp, &len);
    ck_assert_msg(buf && strstr((char *)buf, ">centralized<") != NULL, "loss.svg lacks the centralized line");
    free(buf);
    free(fp);
    return res->centralized_loss;
}

START_TEST(test_centralized_baseline)
{
    plait_sim_result_t r1, r2;
    double l1 = run_central(1, "sim_central1", &r1), l2 = run_central(2, "sim_central2", &r2);
    ck_assert_uint_eq(r1.n_rounds, 0); /* centralized only: no federated rounds */
    ck_assert_int_eq(r1.centralized_steps, 30);
    ck_assert_uint_gt(r1.centralized_tokens, 0);
    ck_assert_msg(isfinite(l1) && l1 < r1.base_loss - 0.05, "centralized %g base %g", l1, r1.base_loss);
    ck_assert_msg(l1 == l2, "centralized %.17g (1 thread) vs %.17g (2 threads)", l1, l2);
    ck_assert(r1.checksum == r2.checksum);
    plait_sim_result_free(&r1);
    plait_sim_result_free(&r2);
    /* After a federated run, with its own batch (the default is the tuned 16 x 10,000 steps: too slow here). */
    plait_sim_config_t c;
    small_config(&c, "sim_central_fed");
    ck_assert_int_eq(c.centralized_batch, 16);
    ck_assert_int_eq(c.centralized_steps, 0);
    c.max_clients = 20;
    c.rounds = 2;
    c.centralized = true;
    c.centralized_steps = 40;
    c.centralized_batch = 4;
    plait_sim_result_t r;
    ck_assert_msg(plait_sim_run(&c, &r) == 0, "run: %s", plait_errmsg());
    ck_assert_uint_eq(r.n_rounds, 2);
    ck_assert_int_eq(r.centralized_steps, 40);
    ck_assert(isfinite(r.centralized_loss) && isfinite(r.rounds[2].global_loss));
    plait_sim_result_free(&r);
}
END_TEST

Suite *sim_suite(void)
{
    Suite *s = suite_create("sim");
    TCase *tc = tcase_create("population");
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, test_population_shakespeare);
    tcase_add_test(tc, test_population_jsonl_and_dir);
    tcase_add_test(tc, test_population_seq_len);
    suite_add_tcase(s, tc);
    tc = tcase_create("model");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_fleet_rates);
    tcase_add_test(tc, test_config);
    suite_add_tcase(s, tc);
    tc = tcase_create("run");
    tcase_set_timeout(tc, 600);
    tcase_add_test(tc, test_small_run_deterministic);
    tcase_add_test(tc, test_small_run_fedsa_dp);
    tcase_add_test(tc, test_small_run_secure_agg);
    tcase_add_test(tc, test_centralized_baseline);
    suite_add_tcase(s, tc);
    return s;
}
