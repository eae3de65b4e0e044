/*
 * check_agent.c: the device agent (client/agent.c).
 *
 *   config     defaults validate; each bad field is named
 *   pipeline   plait__agent_make_update against the update.h primitives
 *              (bit-exact words with the same stream), clipping bound, weight word
 *   state      atomic state/pending files: round trip, a stale temporary file
 *              left by a crash, torn and foreign files refused
 *   decision   the no-double-upload rule, as a table
 *   backoff    schedule bounds with jitter, the cap, come-back-later jitter
 *   loopback   a minimal fake aggregator thread (lib/tls.c + wire.h over
 *              127.0.0.1) that offers one task, serves the adapter, receives
 *              the update and acks: the agent's side of the conversation end
 *              to end with real mutual TLS; then restarts that prove a round
 *              is never uploaded twice and that an interrupted upload is
 *              re-sent word for word without retraining; come-back-later;
 *              eligibility; stop from another thread; backoff give-up.
 *
 * Small on purpose (two shared cores): stories260K, rank 4, B=2, T=32, a few
 * steps. Every wait is bounded (socket timeouts, check's tcase timeout).
 */
#include <check.h>
#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <signal.h>
#include <fcntl.h>
#include <time.h>
#include <unistd.h>
#include <arpa/inet.h>

#include "agent_int.h"
#include "plait/adapter.h"
#include "plait/client.h"
#include "plait/crypto.h"
#include "plait/data.h"
#include "plait/lora.h"
#include "plait/model.h"
#include "plait/pki.h"
#include "plait/store.h"
#include "plait/tok.h"
#include "plait/tls.h"
#include "plait/update.h"
#include "plait/wire.h"
#include "testutil.h"

#define RANK 4
#define ALPHA 8.0f
#define A_SEED 777u
#define STEPS 3
#define BATCH 2
#define SEQ 32
#define CLIP 0.05
#define QBITS 16
#define QRANGE 0.05
#define EXAMPLE_CAP 100
#define AGENT_SEED 4242u

/* ------------------------------------------------------------ shared fixture */

static char *g_dir; /* scratch dir with the PEM files and the store */
static char *g_ca, *g_crt, *g_key, *g_srv_crt, *g_srv_key, *g_store, *g_model, *g_tok;
static char *ca_pem, *ca_key, *srv_pem, *srv_key_pem;

static const char *texts[] = {
    "Once upon a time there was a little girl named Lily. She liked to play in the park with her "
    "dog.",
    "The sun was shining and the birds were singing. Tom went outside to look for his red ball.",
    "One day a small cat found a big box. The cat jumped into the box and fell asleep.",
    "Mom said it was time for bed. Ben brushed his teeth and read a book about a brave dragon.",
    "The old tree in the garden had many apples. Sue picked one and gave it to her friend.",
    "A little bird could not fly. The kind boy helped the bird and they became good friends.",
};

static void write_pem(char *path, const char *pem, int secret)
{
    ck_assert_int_eq(plait_pki_write_file(path, pem, secret), 0);
}

static void fixture_up(void)
{
    g_dir = tu_tmpdir("agent");
    ck_assert_ptr_nonnull(g_dir);
    plait_pki_config_t pc;
    plait_pki_config_default(&pc);
    char *dev_crt = NULL, *dev_key = NULL;
    ck_assert_int_eq(plait_pki_ca_create(&pc, NULL, &ca_pem, &ca_key), 0);
    ck_assert_int_eq(plait_pki_server_issue(&pc, ca_pem, ca_key, NULL, &srv_pem, &srv_key_pem), 0);
    ck_assert_int_eq(
        plait_pki_device_issue(&pc, ca_pem, ca_key, "phone-1", NULL, &dev_crt, &dev_key, NULL), 0);
    g_ca = tu_path(g_dir, "ca.crt");
    g_crt = tu_path(g_dir, "dev.crt");
    g_key = tu_path(g_dir, "dev.key");
    g_srv_crt = tu_path(g_dir, "server.crt");
    g_srv_key = tu_path(g_dir, "server.key");
    write_pem(g_ca, ca_pem, 0);
    write_pem(g_crt, dev_crt, 0);
    write_pem(g_key, dev_key, 1);
    plait_pki_free_pem(dev_crt);
    plait_pki_free_pem(dev_key);

    g_store = tu_path(g_dir, "user.db");
    plait_store_config_t sc;
    plait_store_config_default(&sc);
    sc.path = g_store;
    plait_store_t *st = NULL;
    ck_assert_int_eq(plait_store_open(&st, &sc), 0);
    for (int i = 0; i < 40; i++) {
        const char *t = texts[i % (int)(sizeof(texts) / sizeof(texts[0]))];
        ck_assert_int_eq(plait_store_add(st, 1700000000 + i, NULL, t, strlen(t), NULL), 0);
    }
    plait_store_close(st);
    g_model = tu_path(tu_assets_dir(), "stories260K.bin");
    g_tok = tu_path(tu_assets_dir(), "tok512.bin");
}

static void fixture_down(void)
{
    plait_pki_free_pem(ca_pem);
    plait_pki_free_pem(ca_key);
    plait_pki_free_pem(srv_pem);
    plait_pki_free_pem(srv_key_pem);
    free(g_ca);
    free(g_crt);
    free(g_key);
    free(g_srv_crt);
    free(g_srv_key);
    free(g_store);
    free(g_model);
    free(g_tok);
    free(g_dir);
}

static void base_config(plait_agent_config_t *cfg, const char *state, int port)
{
    plait_agent_config_default(cfg);
    cfg->server_host = "127.0.0.1";
    cfg->server_port = port;
    cfg->ca_path = g_ca;
    cfg->cert_path = g_crt;
    cfg->key_path = g_key;
    cfg->model_path = g_model;
    cfg->tokenizer_path = g_tok;
    cfg->store_path = g_store;
    cfg->state_dir = state;
    cfg->min_records = 4;
    cfg->seed = AGENT_SEED;
    cfg->connect_timeout_ms = 5000;
    cfg->io_timeout_ms = 10000;
    cfg->keepalive_ms = 1000;
    cfg->backoff_initial_ms = 10;
    cfg->backoff_max_ms = 100;
    cfg->require_secure_agg = 0; /* the fake aggregator offers plain rounds (integ_secagg: secure ones) */
}

/* ------------------------------------------------------------------ config */

/* A keystore that serves the test's PEM files, or refuses the key. */
static int keystore(void *ud, plait_agent_pem_t which, char *buf, size_t cap, size_t *len)
{
    int refuse_key = *(int *)ud;
    if (which == PLAIT_AGENT_PEM_KEY && refuse_key) return PLAIT_ENOENT;
    const char *path = which == PLAIT_AGENT_PEM_CA ? g_ca : which == PLAIT_AGENT_PEM_CERT ? g_crt : g_key;
    size_t n = 0;
    uint8_t *b = tu_read_file(path, &n);
    if (!b || n > cap) {
        free(b);
        return PLAIT_EIO;
    }
    memcpy(buf, b, n);
    *len = n;
    free(b);
    return 0;
}

START_TEST(test_embed_config)
{
    char *state = tu_tmpdir("agent_embed");
    plait_agent_config_t c;
    base_config(&c, state, 7443);
    /* Keys from a keystore: the PEM paths may be absent. */
    int refuse = 0;
    c.ca_path = c.cert_path = c.key_path = NULL;
    c.load_pem = keystore;
    c.pem_ud = &refuse;
    ck_assert_int_eq(plait_agent_config_validate(&c), 0);
    plait_agent_t *a = NULL;
    ck_assert_msg(plait_agent_create(&a, &c) == 0, "%s", plait_errmsg());
    /* No round yet: no personalized adapter, said plainly. */
    plait_lora_t pl;
    ck_assert_int_eq(plait_agent_personal_load(a, &pl), PLAIT_ENOENT);
    ck_assert_ptr_nonnull(strstr(plait_errmsg(), "no personalized adapter yet"));
    ck_assert_int_eq(plait_agent_last_error_fatal(a), 0);
    plait_agent_destroy(a);
    refuse = 1;
    ck_assert_int_eq(plait_agent_create(&a, &c), PLAIT_ENOENT);
    ck_assert_ptr_null(a);
    ck_assert_msg(strstr(plait_errmsg(), "device key from the keystore") != NULL, "%s", plait_errmsg());
    /* A config not filled by plait_agent_config_default (or from another client.h) is refused. */
    base_config(&c, state, 7443);
    c.struct_size = 0;
    ck_assert_int_eq(plait_agent_config_validate(&c), PLAIT_EINVAL);
    ck_assert_ptr_nonnull(strstr(plait_errmsg(), "plait_agent_config_default"));
    c.struct_size = sizeof(c) + 8;
    ck_assert_int_eq(plait_agent_create(&a, &c), PLAIT_EINVAL);
    tu_rmdir(state);
    free(state);
}
END_TEST

START_TEST(test_config)
{
    plait_agent_config_t c;
    base_config(&c, "/tmp/x", 7443);
    ck_assert_int_eq(plait_agent_config_validate(&c), 0);
    ck_assert_int_eq(plait_agent_config_validate(NULL), PLAIT_EINVAL);
    plait_agent_config_t d;
    plait_agent_config_default(&d);
    ck_assert_int_eq(plait_agent_config_validate(&d), PLAIT_EINVAL); /* required paths unset */
    ck_assert_ptr_nonnull(strstr(plait_errmsg(), "server_host"));
    ck_assert_int_eq(d.server_port, 7443);
    ck_assert_int_eq(d.daemon, 0);
    ck_assert_int_eq(d.base_bf16, 0);
    ck_assert_uint_eq(d.seed, 0);

#define BAD(field, value, word)                                                                    \
    do {                                                                                           \
        plait_agent_config_t b = c;                                                                \
        b.field = value;                                                                           \
        ck_assert_int_eq(plait_agent_config_validate(&b), PLAIT_EINVAL);                           \
        ck_assert_msg(strstr(plait_errmsg(), word) != NULL, "%s", plait_errmsg());                 \
    } while (0)
    BAD(server_port, 0, "server_port");
    BAD(server_port, 70000, "server_port");
    BAD(ca_path, NULL, "ca_path");
    BAD(key_path, "", "key_path");
    BAD(state_dir, NULL, "state_dir");
    BAD(store_path, NULL, "store_path");
    BAD(server_name, "", "server_name");
    BAD(threads, 0, "threads");
    BAD(base_bf16, 2, "base_bf16");
    BAD(min_records, 0, "min_records");
    BAD(keepalive_ms, 90000, "keepalive_ms");
    BAD(backoff_initial_ms, 1000, "backoff_initial_ms"); /* above max 100 */
    BAD(backoff_jitter, 1.5, "backoff_jitter");
    BAD(come_back_jitter, -0.1, "come_back_jitter");
    BAD(come_back_jitter, NAN, "come_back_jitter");
    BAD(daemon, 2, "daemon");
    BAD(max_attempts, 0, "max_attempts");
    BAD(io_timeout_ms, 0, "io_timeout_ms");
#undef BAD
    /* create refuses a bad config without touching anything */
    plait_agent_t *a = (plait_agent_t *)1;
    c.server_port = 0;
    ck_assert_int_eq(plait_agent_create(&a, &c), PLAIT_EINVAL);
    ck_assert_ptr_null(a);
    plait_agent_destroy(NULL);
}
END_TEST

/* ---------------------------------------------------------------- pipeline */

static void small_pair(plait_model_t *m, plait_lora_t *g, plait_lora_t *l, double scale)
{
    plait_model_config_t mc = {.dim = 16,
                               .hidden_dim = 32,
                               .n_layers = 2,
                               .n_heads = 2,
                               .n_kv_heads = 2,
                               .vocab_size = 32,
                               .seq_len = 16,
                               .shared = 1};
    ck_assert_int_eq(plait_model_config_validate(&mc), 0);
    plait_model_init(m);
    ck_assert_int_eq(plait_model_init_random(m, &mc, 1), 0);
    plait_lora_config_t lc;
    plait_lora_config_default(&lc);
    lc.rank = 2;
    plait_lora_init(g);
    plait_lora_init(l);
    ck_assert_int_eq(plait_lora_setup(g, &m->cfg, &lc), 0);
    ck_assert_int_eq(plait_lora_setup(l, &m->cfg, &lc), 0);
    plait_lora_init_weights(g, 5);
    uint64_t s = 99;
    for (size_t i = 0; i < g->n_params; i++) {
        double u = (double)(plait_rand_u64(&s) >> 11) / 9007199254740992.0;
        l->params[i] = g->params[i] + (float)((u - 0.5) * scale);
    }
}

START_TEST(test_pipeline_matches_primitives)
{
    plait_model_t m;
    plait_lora_t g, l;
    small_pair(&m, &g, &l, 0.2);
    const plait_lora_mode_t modes[] = {PLAIT_LORA_MODE_FFA, PLAIT_LORA_MODE_FEDIT,
                                       PLAIT_LORA_MODE_FEDSA};
    for (size_t k = 0; k < 3; k++) {
        plait_lora_mode_t mode = modes[k];
        size_t off, len;
        ck_assert_int_eq(plait_update_span(&g, mode, &off, &len), 0);
        plait_quant_config_t qc = {.bits = QBITS, .range = 0.5};
        const double S = 0.3, w = 0.7, sd = k == 2 ? 0.01 : 0.0;
        uint32_t *got = calloc(len + 1, sizeof(uint32_t)),
                 *want = calloc(len + 1, sizeof(uint32_t));
        float *x = malloc(len * sizeof(float));
        plait_rng_t r1, r2;
        plait_rng_seed_u64(&r1, 11, 3);
        plait_rng_seed_u64(&r2, 11, 3);
        plait_clip_info_t ci;
        ck_assert_int_eq(
            plait__agent_make_update(&g, &l, mode, S, sd, &qc, w, &r1, got, len + 1, &ci), 0);
        /* The same pipeline by hand, in the documented order (privacy.md §2). */
        ck_assert_int_eq(plait_update_diff(x, l.params + off, g.params + off, len), 0);
        double norm0 = plait_update_l2(x, len);
        plait_clip_info_t ci2;
        ck_assert_int_eq(plait_update_clip_l2(x, len, S, &ci2), 0);
        if (sd > 0) ck_assert_int_eq(plait_update_add_noise(x, len, sd, &r2), 0);
        for (size_t i = 0; i < len; i++)
            x[i] = (float)((double)x[i] * w);
        ck_assert_int_eq(plait_quant_encode(&qc, x, len, &r2, want), 0);
        ck_assert_int_eq(plait_quant_encode_weight(&qc, w, &r2, &want[len]), 0);
        ck_assert_mem_eq(got, want, (len + 1) * sizeof(uint32_t));
        ck_assert_double_eq_tol(ci.norm, norm0, 1e-9);
        ck_assert_uint_eq(ci.clipped,
                          1); /* 0.2-wide noise over hundreds of entries is far above S */
        if (sd == 0) {
            /* Decoded update stays in the clip ball (scaled by w) up to quantization slack. */
            double *dec = malloc(len * sizeof(double));
            ck_assert_int_eq(plait_quant_decode_sum(&qc, got, len, 1, dec), 0);
            double n2 = 0;
            for (size_t i = 0; i < len; i++)
                n2 += dec[i] * dec[i];
            ck_assert_double_le(sqrt(n2), S * w + plait_quant_norm_slack(&qc, len) + 1e-9);
            double wd;
            ck_assert_int_eq(plait_quant_decode_weight_sum(&qc, got[len], 1, &wd), 0);
            ck_assert_double_le(fabs(wd - w), 1.0 / 65535.0 + 1e-12);
            free(dec);
        }
        /* Wrong word count: refused with the shape named, nothing half-written. */
        ck_assert_int_eq(plait__agent_make_update(&g, &l, mode, S, 0, &qc, w, &r1, got, len, NULL),
                         PLAIT_EMISMATCH);
        /* Weight outside [0, 1] and a non-finite local value are refused; words zeroed. */
        ck_assert_int_eq(
            plait__agent_make_update(&g, &l, mode, S, 0, &qc, 1.5, &r1, got, len + 1, NULL),
            PLAIT_EINVAL);
        float keep = l.params[off];
        l.params[off] = NAN;
        memset(got, 0xff, (len + 1) * sizeof(uint32_t));
        ck_assert_int_eq(
            plait__agent_make_update(&g, &l, mode, S, 0, &qc, w, &r1, got, len + 1, NULL),
            PLAIT_EINVAL);
        for (size_t i = 0; i <= len; i++)
            ck_assert_uint_eq(got[i], 0);
        l.params[off] = keep;
        free(got);
        free(want);
        free(x);
        plait_rng_wipe(&r1);
        plait_rng_wipe(&r2);
    }
    plait_lora_free(&g);
    plait_lora_free(&l);
    plait_model_free(&m);
}
END_TEST

/* Adaptive clipping: with span + 2 words the update gains the bit "norm <= S" as a weight word
 * after the weight word; the first span + 1 words are those of the plain pipeline. */
START_TEST(test_pipeline_clip_bit)
{
    plait_model_t m;
    plait_lora_t g, l;
    small_pair(&m, &g, &l, 0.2);
    size_t off, len;
    ck_assert_int_eq(plait_update_span(&g, PLAIT_LORA_MODE_FFA, &off, &len), 0);
    plait_quant_config_t qc = {.bits = QBITS, .range = 0.5};
    uint32_t *plain = calloc(len + 1, sizeof(uint32_t)), *bit = calloc(len + 3, sizeof(uint32_t));
    const double bounds[2] = {0.3, 1e6}; /* the update's norm is far above 0.3 and far below 1e6 */
    for (int k = 0; k < 2; k++) {
        plait_rng_t r1, r2;
        plait_rng_seed_u64(&r1, 5, 1);
        plait_rng_seed_u64(&r2, 5, 1);
        plait_clip_info_t ci;
        ck_assert_int_eq(plait__agent_make_update(&g, &l, PLAIT_LORA_MODE_FFA, bounds[k], 0, &qc, 0.5, &r1, plain,
                                                  len + 1, NULL),
                         0);
        ck_assert_int_eq(plait__agent_make_update(&g, &l, PLAIT_LORA_MODE_FFA, bounds[k], 0, &qc, 0.5, &r2, bit,
                                                  len + 2, &ci),
                         0);
        ck_assert_mem_eq(plain, bit, (len + 1) * sizeof(uint32_t));
        double b = -1;
        ck_assert_int_eq(plait_quant_decode_weight_sum(&qc, bit[len + 1], 1, &b), 0);
        ck_assert(b == (k == 0 ? 0.0 : 1.0));
        ck_assert_uint_eq(ci.clipped, k == 0 ? 1 : 0);
        ck_assert_int_eq(plait__agent_make_update(&g, &l, PLAIT_LORA_MODE_FFA, bounds[k], 0, &qc, 0.5, &r2, bit,
                                                  len + 3, NULL),
                         PLAIT_EMISMATCH);
        plait_rng_wipe(&r1);
        plait_rng_wipe(&r2);
    }
    free(plain);
    free(bit);
    plait_lora_free(&g);
    plait_lora_free(&l);
    plait_model_free(&m);
}
END_TEST

/* Federated evaluation's words: [min(loss, L) / L, 1], summed as the aggregator sums them. */
START_TEST(test_eval_words)
{
    plait_quant_config_t qc = {.bits = 16, .range = 1.0};
    plait_rng_t r;
    plait_rng_seed_u64(&r, 9, 1);
    const double losses[3] = {2.0, 5.5, 100.0}; /* the last is clipped to L = 8 */
    uint32_t w[2], sum[2] = {0, 0};
    for (int i = 0; i < 3; i++) {
        ck_assert_int_eq(plait__agent_eval_words(&qc, losses[i], 8.0, &r, w), 0);
        sum[0] += w[0];
        sum[1] += w[1];
    }
    double v = 0, n = 0;
    ck_assert_int_eq(plait_quant_decode_sum(&qc, sum, 1, 3, &v), 0);
    ck_assert_int_eq(plait_quant_decode_weight_sum(&qc, sum[1], 3, &n), 0);
    ck_assert(n == 3.0);
    double step = 2.0 * qc.range / 65535.0;
    ck_assert_msg(fabs(v * 8.0 - (2.0 + 5.5 + 8.0)) <= 3 * step * 8.0, "sum %g", v * 8.0);
    const double bad[3] = {NAN, -1.0, INFINITY};
    for (int i = 0; i < 3; i++) {
        w[0] = w[1] = 7;
        ck_assert_int_eq(plait__agent_eval_words(&qc, bad[i], 8.0, &r, w), PLAIT_EINVAL);
        ck_assert_uint_eq(w[0], 0);
    }
    ck_assert_int_eq(plait__agent_eval_words(&qc, 1.0, 0.0, &r, w), PLAIT_EINVAL);
    plait_quant_config_t narrow = {.bits = 16, .range = 0.5}; /* cannot carry a value of 1 */
    ck_assert_int_eq(plait__agent_eval_words(&narrow, 1.0, 8.0, &r, w), PLAIT_EINVAL);
    plait_rng_wipe(&r);
}
END_TEST

START_TEST(test_pipeline_small_update_not_clipped)
{
    plait_model_t m;
    plait_lora_t g, l;
    small_pair(&m, &g, &l, 1e-4);
    size_t off, len;
    ck_assert_int_eq(plait_update_span(&g, PLAIT_LORA_MODE_FFA, &off, &len), 0);
    ck_assert_uint_eq(off, g.n_a);
    plait_quant_config_t qc = {.bits = 24, .range = 1.0};
    uint32_t *w = calloc(len + 1, sizeof(uint32_t));
    plait_rng_t r;
    plait_rng_seed_u64(&r, 1, 1);
    plait_clip_info_t ci;
    ck_assert_int_eq(plait__agent_make_update(&g, &l, PLAIT_LORA_MODE_FFA, 10.0, 0, &qc, 1.0, &r, w,
                                              len + 1, &ci),
                     0);
    ck_assert_uint_eq(ci.clipped, 0);
    double *dec = malloc(len * sizeof(double));
    ck_assert_int_eq(plait_quant_decode_sum(&qc, w, len, 1, dec), 0);
    double step = plait_quant_step(&qc);
    for (size_t i = 0; i < len; i++)
        ck_assert_double_le(fabs(dec[i] - (double)(l.params[off + i] - g.params[off + i])), step);
    free(dec);
    free(w);
    plait_rng_wipe(&r);
    plait_lora_free(&g);
    plait_lora_free(&l);
    plait_model_free(&m);
}
END_TEST

/* ------------------------------------------------------------------- state */

static char *fresh_state(const char *tag)
{
    char *d = tu_tmpdir(tag);
    ck_assert_ptr_nonnull(d);
    return d;
}

START_TEST(test_state_files)
{
    char *d = fresh_state("agent_state");
    plait__agent_state_t st = {.last_uploaded = 7, .last_acked = 6}, back;
    ck_assert_int_eq(plait__agent_state_load(d, &back), 0); /* missing: zeros */
    ck_assert_uint_eq(back.last_acked, 0);
    ck_assert_int_eq(plait__agent_state_save(d, &st), 0);
    /* A crash while writing the next version leaves only a temporary file behind. */
    char *tmp = tu_path(d, ".state.tmp");
    ck_assert_int_eq(tu_write_file(tmp, "plait-agent-state 1\nlast_upl", 28), 0);
    ck_assert_int_eq(plait__agent_state_load(d, &back), 0);
    ck_assert_uint_eq(back.last_uploaded, 7);
    ck_assert_uint_eq(back.last_acked, 6);
    /* The next save replaces both. */
    st.last_acked = 7;
    ck_assert_int_eq(plait__agent_state_save(d, &st), 0);
    ck_assert_int_eq(access(tmp, F_OK), -1);
    ck_assert_int_eq(plait__agent_state_load(d, &back), 0);
    ck_assert_uint_eq(back.last_acked, 7);
    /* Torn or foreign files are refused, not guessed. */
    char *sp = tu_path(d, "state");
    const char *bad[] = {"",
                         "plait-agent-state 1\n",
                         "plait-agent-state 1\nlast_uploaded 7\nlast_acked 6",
                         "plait-agent-state 2\nlast_uploaded 7\nlast_acked 6\n",
                         "plait-agent-state 1\nlast_uploaded -7\nlast_acked 6\n",
                         "plait-agent-state 1\nlast_uploaded 7\nlast_acked 6\nextra\n",
                         "plait-agent-state 1\nlast_uploaded 99999999999999999999\nlast_acked 6\n"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        ck_assert_int_eq(tu_write_file(sp, bad[i], strlen(bad[i])), 0);
        ck_assert_int_eq(plait__agent_state_load(d, &back), PLAIT_EPROTO);
    }

    /* The pending update: round trip, then every truncation and a flipped bit. */
    uint32_t words[5] = {1, 65535, 0, 12345, 32768};
    plait__agent_pending_t p = {.round_id = 9,
                                .adapter_version = 4,
                                .num_examples = 33,
                                .words = words,
                                .n_words = 5},
                           q;
    ck_assert_int_eq(plait__agent_pending_load(d, &q), PLAIT_ENOENT);
    ck_assert_int_eq(plait__agent_pending_save(d, &p), 0);
    ck_assert_int_eq(plait__agent_pending_load(d, &q), 0);
    ck_assert_uint_eq(q.round_id, 9);
    ck_assert_uint_eq(q.adapter_version, 4);
    ck_assert_uint_eq(q.num_examples, 33);
    ck_assert_uint_eq(q.n_words, 5);
    ck_assert_mem_eq(q.words, words, sizeof(words));
    plait__agent_pending_free(&q);
    plait__agent_pending_free(&q);
    char *pp = tu_path(d, "pending.upd");
    size_t len;
    uint8_t *img = tu_read_file(pp, &len);
    ck_assert_ptr_nonnull(img);
    for (size_t cut = 0; cut < len; cut++) {
        ck_assert_int_eq(tu_write_file(pp, img, cut), 0);
        ck_assert_int_eq(plait__agent_pending_load(d, &q), PLAIT_EPROTO);
        ck_assert_ptr_null(q.words);
    }
    for (size_t i = 0; i < len; i += 7) {
        img[i] ^= 0x10;
        ck_assert_int_eq(tu_write_file(pp, img, len), 0);
        ck_assert_int_eq(plait__agent_pending_load(d, &q), PLAIT_EPROTO);
        img[i] ^= 0x10;
    }
    free(img);
    ck_assert_int_eq(plait__agent_pending_remove(d), 0);
    ck_assert_int_eq(plait__agent_pending_remove(d), 0);
    ck_assert_int_eq(plait__agent_pending_load(d, &q), PLAIT_ENOENT);
    free(pp);
    free(sp);
    free(tmp);
    free(d);
}
END_TEST

/* The state files are read like user-named files (plait_file_read): a FIFO or a directory
 * in their place is refused at once as PLAIT_EIO, never waited on, and an oversized pending
 * update is refused from its size, before it is read. */
START_TEST(test_state_files_not_regular)
{
    char *d = fresh_state("agent_state_odd");
    char *sp = tu_path(d, "state"), *pp = tu_path(d, "pending.upd");
    plait__agent_state_t back;
    plait__agent_pending_t q;
    ck_assert_int_eq(mkfifo(sp, 0600), 0);
    ck_assert_int_eq(mkfifo(pp, 0600), 0);
    ck_assert_int_eq(plait__agent_state_load(d, &back), PLAIT_EIO);
    ck_assert_msg(strstr(plait_errmsg(), "not a regular file") != NULL, "%s", plait_errmsg());
    ck_assert_int_eq(plait__agent_pending_load(d, &q), PLAIT_EIO);
    ck_assert_ptr_null(q.words);
    ck_assert_int_eq(unlink(sp), 0);
    ck_assert_int_eq(mkdir(sp, 0700), 0);
    ck_assert_int_eq(plait__agent_state_load(d, &back), PLAIT_EIO);
    ck_assert_int_eq(rmdir(sp), 0);
    /* One byte over the largest update the wire allows (2^26 + 1 words, header, hash): a
     * sparse file, so nothing big is written. */
    ck_assert_int_eq(unlink(pp), 0);
    int fd = open(pp, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    ck_assert_int_ge(fd, 0);
    ck_assert_int_eq(ftruncate(fd, (off_t)(8 + 4 + 8 * 4) + ((off_t)(1 << 26) + 1) * 4 + 32 + 1), 0);
    close(fd);
    ck_assert_int_eq(plait__agent_pending_load(d, &q), PLAIT_EPROTO);
    ck_assert_ptr_null(q.words);
    ck_assert_int_eq(plait__agent_pending_remove(d), 0);
    ck_assert_int_eq(plait__agent_pending_load(d, &q), PLAIT_ENOENT);
    free(pp);
    free(sp);
    free(d);
}
END_TEST

START_TEST(test_task_decision)
{
    plait__agent_state_t st = {.last_uploaded = 5, .last_acked = 4};
    /* acknowledged rounds and older: never again */
    ck_assert_int_eq(plait__agent_task_decision(&st, 0, 3), PLAIT__TASK_STALE);
    ck_assert_int_eq(plait__agent_task_decision(&st, 0, 4), PLAIT__TASK_STALE);
    /* uploaded but not acknowledged, words gone: no second (different) update */
    ck_assert_int_eq(plait__agent_task_decision(&st, 0, 5), PLAIT__TASK_STALE);
    /* uploaded, words kept: the same words again */
    ck_assert_int_eq(plait__agent_task_decision(&st, 5, 5), PLAIT__TASK_RESEND);
    /* a stored update for a later round than offered: the offer is stale */
    ck_assert_int_eq(plait__agent_task_decision(&st, 7, 6), PLAIT__TASK_STALE);
    ck_assert_int_eq(plait__agent_task_decision(&st, 7, 7), PLAIT__TASK_RESEND);
    /* new rounds */
    ck_assert_int_eq(plait__agent_task_decision(&st, 0, 6), PLAIT__TASK_TRAIN);
    ck_assert_int_eq(plait__agent_task_decision(&st, 5, 6), PLAIT__TASK_TRAIN);
    plait__agent_state_t zero = {0, 0};
    ck_assert_int_eq(plait__agent_task_decision(&zero, 0, 1), PLAIT__TASK_TRAIN);
    /* a stored update for an acknowledged round is not re-sent */
    ck_assert_int_eq(plait__agent_task_decision(&st, 4, 4), PLAIT__TASK_STALE);
}
END_TEST

/* ----------------------------------------------------------------- backoff */

START_TEST(test_backoff)
{
    plait_agent_config_t c;
    plait_agent_config_default(&c);
    c.backoff_initial_ms = 1000;
    c.backoff_max_ms = 60000;
    c.backoff_jitter = 0.5;
    uint64_t prev_hi = 0;
    for (uint32_t n = 0; n < 40; n++) {
        double base = 1000.0 * pow(2.0, n);
        if (base > 60000.0) base = 60000.0;
        uint64_t lo = plait_agent_backoff_ms(&c, n, 0.0),
                 hi = plait_agent_backoff_ms(&c, n, 0.999999);
        ck_assert_uint_eq(lo, (uint64_t)(base * 0.5));
        ck_assert_uint_le(hi, (uint64_t)base);
        ck_assert_uint_ge(hi + 1, (uint64_t)base);
        ck_assert_uint_ge(hi, prev_hi); /* the ceiling never shrinks */
        prev_hi = hi;
        for (int k = 0; k < 50; k++) {
            double u = (double)k / 50.0;
            uint64_t d = plait_agent_backoff_ms(&c, n, u);
            ck_assert_uint_ge(d, lo);
            ck_assert_uint_le(d, (uint64_t)base);
        }
    }
    ck_assert_uint_le(plait_agent_backoff_ms(&c, UINT32_MAX, 0.9),
                      60000);                                    /* no overflow at huge n */
    ck_assert_uint_eq(plait_agent_backoff_ms(&c, 3, NAN), 4000); /* bad u clamps */
    c.backoff_jitter = 0;
    ck_assert_uint_eq(plait_agent_backoff_ms(&c, 2, 0.7), 4000);
    c.come_back_jitter = 0.5;
    for (int k = 0; k < 50; k++) {
        uint64_t d = plait_agent_come_back_ms(&c, 10000, (double)k / 50.0);
        ck_assert_uint_ge(d, 10000);
        ck_assert_uint_lt(d, 15000);
    }
    c.come_back_jitter = 0;
    ck_assert_uint_eq(plait_agent_come_back_ms(&c, 1234, 0.9), 1234);
}
END_TEST

/* ------------------------------------------------------ the fake aggregator */

typedef enum {
    FAKE_TASK = 0,      /* full round: task, adapter, update, ack */
    FAKE_COME_BACK = 1, /* ComeBackLater */
    FAKE_DROP = 2,      /* task, adapter, then close after the first update chunk */
    FAKE_ERROR = 3,     /* Error(EMISMATCH) after the hello */
    FAKE_DROP_DL = 4,   /* task, then close after the first adapter chunk */
    FAKE_END_ROUND = 5  /* full round, but a ComeBackLater(cbl_reason) instead of the Ack */
} fake_mode_t;

typedef struct {
    fake_mode_t mode;
    int lfd, port;
    plait_tls_config_t *cfg;
    const uint8_t *blob;
    size_t blob_len;
    plait_msg_task_t task;
    /* observed */
    int got_hello;
    plait_msg_hello_t hello;
    int adapter_requests, pongs, pings, chunks;
    uint64_t req_offset; /* offset of the last AdapterRequest */
    uint32_t *words;
    size_t n_words;
    int got_error, error_code;
    size_t max_chunk_words; /* largest UpdateChunk seen */
    plait_retry_reason_t cbl_reason; /* FAKE_END_ROUND */
    plait_adapter_encoding_t hostile; /* not FULL: answer the first request offering it with junk so encoded */
    uint32_t accept_first, accept_last; /* AdapterRequest.accept of the first and last request */
    int base_first;                     /* the first request named a held adapter */
    int got_decline, decline_code; /* a Decline: the only thing a declining agent sends */
    uint64_t decline_round;
    char fail[256];
} fake_t;

static void fake_failf(fake_t *f, const char *what, int rc)
{
    if (!f->fail[0]) snprintf(f->fail, sizeof(f->fail), "%s: %d %s", what, rc, plait_errmsg());
}

static int fake_send(plait_tls_t *s, int fd, const plait_msg_t *m)
{
    uint8_t *b = NULL;
    size_t n = 0;
    int rc = plait_wire_encode_alloc(m, NULL, &b, &n);
    if (rc == 0) rc = plait_tls_fd_write(s, fd, b, n);
    free(b);
    return rc;
}

/* Next message from the agent (Pongs are counted and skipped). */
static int fake_recv(plait_tls_t *s, int fd, uint8_t *buf, size_t *len, size_t cap, unsigned flags,
                     plait_msg_t *m, fake_t *f)
{
    for (;;) {
        size_t used = 0;
        int rc = plait_wire_parse(buf, *len, NULL, flags, m, &used);
        if (rc == 0) {
            memmove(buf, buf + used, *len - used);
            *len -= used;
            if (m->type == PLAIT_MSG_PONG) {
                f->pongs++;
                plait_msg_free(m);
                continue;
            }
            if (m->type == PLAIT_MSG_PING) { /* the agent's keepalive while it trains */
                f->pings++;
                plait_msg_t pong;
                plait_msg_init(&pong, PLAIT_MSG_PONG);
                pong.u.ping.nonce = m->u.ping.nonce;
                plait_msg_free(m);
                if ((rc = fake_send(s, fd, &pong)) != 0) return rc;
                continue;
            }
            return 0;
        }
        if (rc != PLAIT_EAGAIN) return rc;
        int r = plait_tls_fd_read(s, fd, buf + *len, cap - *len);
        if (r <= 0) return r == 0 ? PLAIT_EIO : r;
        *len += (size_t)r;
    }
}

static void fake_serve(fake_t *f, int fd)
{
    plait_tls_t *s = NULL;
    size_t cap = 4u << 20, len = 0;
    uint8_t *buf = malloc(cap);
    plait_msg_t m;
    int rc;
    if ((rc = plait_tls_new(&s, f->cfg)) != 0 || (rc = plait_tls_fd_handshake(s, fd)) != 0) {
        fake_failf(f, "handshake", rc);
        goto out;
    }
    if ((rc = fake_recv(s, fd, buf, &len, cap, PLAIT_FRAME_PREAUTH, &m, f)) != 0 ||
        m.type != PLAIT_MSG_HELLO) {
        fake_failf(f, "hello", rc);
        goto out;
    }
    f->got_hello = 1;
    f->hello = m.u.hello;
    plait_msg_free(&m);
    if (f->mode == FAKE_COME_BACK) {
        plait_msg_init(&m, PLAIT_MSG_COME_BACK_LATER);
        m.u.come_back_later.retry_ms = 1234;
        m.u.come_back_later.reason = PLAIT_RETRY_NO_ROUND;
        if ((rc = fake_send(s, fd, &m)) != 0) fake_failf(f, "send cbl", rc);
        goto out;
    }
    if (f->mode == FAKE_ERROR) {
        plait_msg_init(&m, PLAIT_MSG_ERROR);
        m.u.error.code = PLAIT_EMISMATCH;
        snprintf(m.u.error.message, sizeof(m.u.error.message), "base model differs");
        if ((rc = fake_send(s, fd, &m)) != 0) fake_failf(f, "send error", rc);
        goto out;
    }
    plait_msg_init(&m, PLAIT_MSG_TASK);
    m.u.task = f->task;
    if ((rc = fake_send(s, fd, &m)) != 0) {
        fake_failf(f, "send task", rc);
        goto out;
    }
    /* A keepalive probe the agent must answer whatever it is doing. */
    plait_msg_init(&m, PLAIT_MSG_PING);
    m.u.ping.nonce = 77;
    if ((rc = fake_send(s, fd, &m)) != 0) {
        fake_failf(f, "send ping", rc);
        goto out;
    }
    size_t expect = (size_t)f->task.update_elements;
    f->words = calloc(expect, sizeof(uint32_t));
    for (;;) {
        if ((rc = fake_recv(s, fd, buf, &len, cap, 0, &m, f)) != 0) {
            fake_failf(f, "recv", rc);
            goto out;
        }
        if (m.type == PLAIT_MSG_ERROR) {
            f->got_error = 1;
            f->error_code = m.u.error.code;
            plait_msg_free(&m);
            goto out;
        }
        if (m.type == PLAIT_MSG_DECLINE) {
            f->got_decline = 1;
            f->decline_code = (int)m.u.decline.code;
            f->decline_round = m.u.decline.round_id;
            plait_msg_free(&m);
            goto out;
        }
        if (m.type == PLAIT_MSG_ADAPTER_REQUEST) {
            f->adapter_requests++;
            uint64_t off = m.u.adapter_request.offset;
            f->req_offset = off;
            uint32_t accept = m.u.adapter_request.accept;
            if (f->adapter_requests == 1) {
                f->accept_first = accept;
                f->base_first = m.u.adapter_request.has_base;
            }
            f->accept_last = accept;
            plait_msg_free(&m);
            if (f->hostile != PLAIT_ADAPTER_FULL && f->adapter_requests == 1 && (accept & (1u << f->hostile))) {
                /* A compact encoding that cannot rebuild the adapter: a delta of an unknown format
                 * version, or a B span of the wrong length. */
                static const uint8_t junk[64] = {'P', 'L', 'D', 'T', 7};
                plait_msg_init(&m, PLAIT_MSG_ADAPTER_CHUNK);
                plait_msg_adapter_chunk_t *c = &m.u.adapter_chunk;
                c->version = f->task.adapter_version;
                c->total_len = sizeof(junk);
                c->data = junk;
                c->len = sizeof(junk);
                c->has_sha256 = 1;
                memcpy(c->sha256, f->task.adapter_sha256, 32);
                c->encoding = f->hostile;
                if ((rc = fake_send(s, fd, &m)) != 0) {
                    fake_failf(f, "send hostile chunk", rc);
                    goto out;
                }
                continue;
            }
            /* Three chunks, so the agent reassembles. */
            size_t piece = f->blob_len / 3 + 1;
            for (size_t o = (size_t)off; o < f->blob_len; o += piece) {
                plait_msg_init(&m, PLAIT_MSG_ADAPTER_CHUNK);
                plait_msg_adapter_chunk_t *c = &m.u.adapter_chunk;
                c->version = f->task.adapter_version;
                c->offset = o;
                c->total_len = f->blob_len;
                c->data = f->blob + o;
                c->len = o + piece < f->blob_len ? piece : f->blob_len - o;
                c->has_sha256 = o + c->len == f->blob_len;
                if (c->has_sha256) memcpy(c->sha256, f->task.adapter_sha256, 32);
                if ((rc = fake_send(s, fd, &m)) != 0) {
                    fake_failf(f, "send chunk", rc);
                    goto out;
                }
                if (f->mode == FAKE_DROP_DL) goto out; /* vanishes mid-download */
            }
            continue;
        }
        if (m.type != PLAIT_MSG_UPDATE_CHUNK) {
            fake_failf(f, plait_msg_type_name(m.type), -1);
            plait_msg_free(&m);
            goto out;
        }
        const plait_msg_update_chunk_t *u = &m.u.update_chunk;
        if (u->round_id != f->task.round_id || u->total_elements != expect ||
            u->offset != f->n_words || u->chunk_index != (uint32_t)f->chunks) {
            fake_failf(f, "chunk order", -1);
            plait_msg_free(&m);
            goto out;
        }
        memcpy(f->words + f->n_words, u->words, u->n_words * sizeof(uint32_t));
        f->n_words += u->n_words;
        if (u->n_words > f->max_chunk_words) f->max_chunk_words = u->n_words;
        f->chunks++;
        plait_msg_free(&m);
        if (f->mode == FAKE_DROP) goto out; /* the "aggregator" vanishes mid-upload */
        if (f->n_words == expect) break;
    }
    if (f->mode == FAKE_END_ROUND) { /* the round failed, or the aggregator stops */
        plait_msg_init(&m, PLAIT_MSG_COME_BACK_LATER);
        m.u.come_back_later.retry_ms = 4321;
        m.u.come_back_later.reason = f->cbl_reason;
        if ((rc = fake_send(s, fd, &m)) != 0) fake_failf(f, "send cbl", rc);
        goto out;
    }
    plait_msg_init(&m, PLAIT_MSG_ACK);
    m.u.ack.round_id = f->task.round_id;
    m.u.ack.kind = PLAIT_ACK_UPDATE;
    m.u.ack.elements = expect;
    if ((rc = fake_send(s, fd, &m)) != 0) fake_failf(f, "send ack", rc);
    /* Wait for the agent's close_notify (bounded by SO_RCVTIMEO). */
    uint8_t tmp[256];
    while (plait_tls_fd_read(s, fd, tmp, sizeof(tmp)) > 0) {
    }
out:
    plait_tls_free(s);
    free(buf);
}

static void *fake_main(void *p)
{
    fake_t *f = p;
    struct pollfd pf = {.fd = f->lfd, .events = POLLIN};
    if (poll(&pf, 1, 20000) != 1) {
        fake_failf(f, "accept timeout", -1);
        return NULL;
    }
    int fd = accept(f->lfd, NULL, NULL);
    if (fd < 0) {
        fake_failf(f, "accept", -1);
        return NULL;
    }
    struct timeval tv = {.tv_sec = 20};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    fake_serve(f, fd);
    close(fd);
    return NULL;
}

static int listen_any(int *port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    ck_assert_int_ge(fd, 0);
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = 0};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ck_assert_int_eq(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    ck_assert_int_eq(listen(fd, 4), 0);
    socklen_t sl = sizeof(sa);
    ck_assert_int_eq(getsockname(fd, (struct sockaddr *)&sa, &sl), 0);
    *port = ntohs(sa.sin_port);
    return fd;
}

/* The global adapter of the test round and its task. */
typedef struct {
    plait_model_t model;
    plait_lora_t global; /* A from the task seed, B = 0 */
    uint8_t *blob;
    size_t blob_len;
    plait_msg_task_t task;
} round_t;

static void round_setup(round_t *r, uint64_t round_id, plait_lora_mode_t mode)
{
    plait_model_init(&r->model);
    ck_assert_int_eq(plait_model_load(&r->model, g_model), 0);
    plait_lora_config_t lc;
    plait_lora_config_default(&lc);
    lc.rank = RANK;
    lc.alpha = ALPHA;
    plait_lora_init(&r->global);
    ck_assert_int_eq(plait_lora_setup(&r->global, &r->model.cfg, &lc), 0);
    plait_lora_init_weights(&r->global, A_SEED);
    ck_assert_int_eq(plait_adapter_save_mem(&r->global, r->model.sha256, &r->blob, &r->blob_len),
                     0);
    size_t off, len;
    ck_assert_int_eq(plait_update_span(&r->global, mode, &off, &len), 0);
    plait_msg_task_t *t = &r->task;
    memset(t, 0, sizeof(*t));
    t->round_id = round_id;
    t->adapter_version = round_id;
    t->adapter_len = r->blob_len;
    plait_sha256(r->blob, r->blob_len, t->adapter_sha256);
    t->lora.rank = RANK;
    t->lora.alpha = ALPHA;
    t->lora.targets = lc.targets;
    t->lora.mode = mode;
    t->lora.a_seed = A_SEED;
    t->train.local_steps = STEPS;
    t->train.batch = BATCH;
    t->train.seq_len = SEQ;
    t->train.lr = 0.05;
    t->clip_norm = CLIP;
    t->quant_bits = QBITS;
    t->quant_range = QRANGE;
    t->secure_agg = 0;
    t->dp.mode = PLAIT_DP_NONE;
    t->deadline_s = 60;
    t->update_elements = len + 1;
    t->example_cap = EXAMPLE_CAP;
}

static void round_free(round_t *r)
{
    free(r->blob);
    plait_lora_free(&r->global);
    plait_model_free(&r->model);
}

typedef struct {
    fake_t f;
    pthread_t th;
} server_t;

static plait_retry_reason_t g_cbl_reason = PLAIT_RETRY_ROUND_FAILED; /* FAKE_END_ROUND's answer */
static plait_adapter_encoding_t g_hostile = PLAIT_ADAPTER_FULL; /* server_start: fake_t.hostile */

static void server_start(server_t *sv, fake_mode_t mode, const round_t *r)
{
    memset(sv, 0, sizeof(*sv));
    sv->f.mode = mode;
    sv->f.cbl_reason = g_cbl_reason;
    sv->f.hostile = g_hostile;
    sv->f.lfd = listen_any(&sv->f.port);
    ck_assert_int_eq(
        plait_tls_config_server(&sv->f.cfg, ca_pem, srv_pem, srv_key_pem, 1, NULL, NULL), 0);
    if (r) {
        sv->f.blob = r->blob;
        sv->f.blob_len = r->blob_len;
        sv->f.task = r->task;
    }
    ck_assert_int_eq(pthread_create(&sv->th, NULL, fake_main, &sv->f), 0);
}

static void server_join(server_t *sv)
{
    pthread_join(sv->th, NULL);
    close(sv->f.lfd);
    plait_tls_config_free(sv->f.cfg);
}

static void server_free(server_t *sv)
{
    free(sv->f.words);
}

typedef struct {
    int counts[16];
    uint32_t last_step;
    int log_lines;     /* lines that reached this agent's own sink */
    int log_acked;     /* ... of which "round 1: acknowledged" ones */
    char log_text[65536]; /* the lines, as far as they fit */
    size_t log_len;
} evlog_t;

static void on_log(plait_log_level_t level, const char *line, void *ud)
{
    evlog_t *e = ud;
    (void)level;
    e->log_lines++;
    if (strstr(line, "round 1: acknowledged")) e->log_acked++;
    size_t n = strlen(line);
    if (e->log_len + n + 2 < sizeof(e->log_text)) {
        memcpy(e->log_text + e->log_len, line, n);
        e->log_len += n;
        e->log_text[e->log_len++] = '\n';
        e->log_text[e->log_len] = 0;
    }
}

static void on_event(void *ud, const plait_agent_event_t *ev)
{
    evlog_t *e = ud;
    if ((int)ev->type >= 0 && (int)ev->type < 16) e->counts[ev->type]++;
    if (ev->type == PLAIT_AGENT_EV_TRAINING) e->last_step = ev->step;
}

static plait_agent_t *make_agent_steps(const char *state, int port, evlog_t *ev, uint32_t max_steps)
{
    plait_agent_config_t cfg;
    base_config(&cfg, state, port);
    if (max_steps) cfg.max_local_steps = max_steps;
    if (ev) {
        cfg.on_event = on_event;
        cfg.event_ud = ev;
        cfg.on_log = on_log;
        cfg.log_ud = ev;
    }
    plait_agent_t *a = NULL;
    int rc = plait_agent_create(&a, &cfg);
    ck_assert_msg(rc == 0, "create: %s", plait_errmsg());
    return a;
}

static plait_agent_t *make_agent(const char *state, int port, evlog_t *ev)
{
    return make_agent_steps(state, port, ev, 0);
}

/* The words the agent must have sent, recomputed from its personal adapter (same stream). */
static void check_words_match_personal(const round_t *r, const char *state, const fake_t *f,
                                       uint64_t examples)
{
    double stddev =
        r->task.dp.mode == PLAIT_DP_LOCAL ? r->task.dp.noise_multiplier * r->task.clip_norm : 0.0;
    char *pp = tu_path(state, "personal.safetensors");
    plait_lora_t local;
    plait_lora_init(&local);
    ck_assert_int_eq(plait_adapter_load(&local, pp, &r->model, 0), 0);
    /* FFA: A frozen at the seed; only B moved. */
    if (r->task.lora.mode == PLAIT_LORA_MODE_FFA)
        ck_assert_mem_eq(local.params, r->global.params, r->global.n_a * sizeof(float));
    size_t n = (size_t)r->task.update_elements;
    uint32_t *want = calloc(n, sizeof(uint32_t));
    plait_rng_t rng;
    plait_rng_seed_u64(&rng, AGENT_SEED, r->task.round_id);
    plait_quant_config_t qc = {.bits = QBITS, .range = QRANGE};
    uint64_t cap = r->task.example_cap, ex = examples < cap ? examples : cap;
    double w = (double)ex / (double)cap;
    ck_assert_int_eq(plait__agent_make_update(&r->global, &local, r->task.lora.mode, CLIP, stddev,
                                              &qc, w, &rng, want, n, NULL),
                     0);
    ck_assert_mem_eq(f->words, want, n * sizeof(uint32_t));
    /* and the update is not trivial: training moved B */
    double *dec = malloc((n - 1) * sizeof(double));
    ck_assert_int_eq(plait_quant_decode_sum(&qc, f->words, n - 1, 1, dec), 0);
    double n2 = 0;
    for (size_t i = 0; i + 1 < n; i++)
        n2 += dec[i] * dec[i];
    ck_assert_double_gt(sqrt(n2), 0.0);
    if (stddev == 0)
        ck_assert_double_le(sqrt(n2), CLIP * w + plait_quant_norm_slack(&qc, n - 1) + 1e-9);
    free(dec);
    plait_rng_wipe(&rng);
    free(want);
    plait_lora_free(&local);
    free(pp);
}

/* Chunks of an upload of total words at per words a chunk: the lead chunk, then full ones. */
static int upload_chunks(uint64_t total, uint64_t per)
{
    uint64_t lead = per < PLAIT_WIRE_UPDATE_LEAD_WORDS ? per : PLAIT_WIRE_UPDATE_LEAD_WORDS;
    if (total <= lead) return 1;
    return 1 + (int)((total - lead + per - 1) / per);
}

START_TEST(test_loopback_round)
{
    round_t r;
    round_setup(&r, 1, PLAIT_LORA_MODE_FFA);
    server_t sv;
    server_start(&sv, FAKE_TASK, &r);
    char *state = fresh_state("agent_lb");
    evlog_t ev;
    memset(&ev, 0, sizeof(ev));
    plait_agent_t *a = make_agent(state, sv.f.port, &ev);
    plait__agent_set_chunk_words(a, 1000); /* several UpdateChunks */
    plait_agent_result_t res;
    int rc = plait_agent_run_once(a, &res);
    server_join(&sv);
    ck_assert_msg(sv.f.fail[0] == 0, "fake server: %s", sv.f.fail);
    ck_assert_msg(rc == 0, "run_once: %s", plait_errmsg());
    ck_assert_int_eq(res.outcome, PLAIT_AGENT_OUT_ACKED);
    ck_assert_uint_eq(res.round_id, 1);
    /* the hello */
    ck_assert_int_eq(sv.f.got_hello, 1);
    ck_assert_int_eq(sv.f.hello.has_last_round, 0);
    ck_assert_mem_eq(sv.f.hello.base_model_sha256, r.model.sha256, 32);
    ck_assert_uint_ne(sv.f.hello.capabilities & PLAIT_CAP_FFA, 0);
    ck_assert_uint_ne(sv.f.hello.capabilities & PLAIT_CAP_SECURE_AGG, 0);
    ck_assert_uint_ne(sv.f.hello.capabilities & PLAIT_CAP_SECAGG, 0);
    ck_assert_ptr_nonnull(strstr(sv.f.hello.client_version, "plait-agent"));
    /* the conversation */
    ck_assert_int_eq(sv.f.adapter_requests, 1);
    ck_assert_int_eq(sv.f.pongs, 1);
    ck_assert_uint_eq(sv.f.n_words, r.task.update_elements);
    ck_assert_int_eq(sv.f.chunks, upload_chunks(r.task.update_elements, 1000));
    ck_assert_uint_ge(res.num_examples, 4); /* known on the device; not on the wire */
    check_words_match_personal(&r, state, &sv.f, res.num_examples);
    /* events */
    ck_assert_int_eq(ev.counts[PLAIT_AGENT_EV_CONNECTED], 1);
    ck_assert_int_eq(ev.counts[PLAIT_AGENT_EV_TASK], 1);
    ck_assert_int_eq(ev.counts[PLAIT_AGENT_EV_DOWNLOADED], 1);
    ck_assert_int_eq(ev.counts[PLAIT_AGENT_EV_UPLOADED], 1);
    ck_assert_int_eq(ev.counts[PLAIT_AGENT_EV_ACKED], 1);
    ck_assert_int_eq(ev.counts[PLAIT_AGENT_EV_ADAPTER_UPDATED], 1);
    ck_assert_uint_eq(ev.last_step, STEPS);
    /* The agent's lines went to its own sink. */
    ck_assert_int_ge(ev.log_lines, 3);
    ck_assert_int_eq(ev.log_acked, 1);
    /* The personalized model for inference: the adapter the device serves (the validated
     * choice after the round, agent_serve.c), else the one the round trained. */
    {
        plait_lora_t pl;
        ck_assert_int_eq(plait_agent_personal_load(a, &pl), 0);
        ck_assert_ptr_nonnull(plait_agent_model(a));
        ck_assert_ptr_nonnull(plait_agent_tokenizer(a));
        char sp[4096];
        int serving = plait_agent_serving(state, sp, sizeof(sp), NULL, 0) == 0;
        char *pp = serving ? strdup(sp) : tu_path(state, "personal.safetensors");
        plait_lora_t ref;
        plait_lora_init(&ref);
        ck_assert_int_eq(plait_adapter_load(&ref, pp, plait_agent_model(a), 0), 0);
        ck_assert_uint_eq(pl.n_params, ref.n_params);
        ck_assert_mem_eq(pl.params, ref.params, ref.n_params * sizeof(float));
        plait_lora_free(&ref);
        plait_lora_free(&pl);
        free(pp);
    }
    /* crash-safe state: acknowledged, nothing pending, adapter cached */
    plait__agent_state_t st;
    ck_assert_int_eq(plait__agent_state_load(state, &st), 0);
    ck_assert_uint_eq(st.last_acked, 1);
    ck_assert_uint_eq(st.last_uploaded, 1);
    plait__agent_pending_t p;
    ck_assert_int_eq(plait__agent_pending_load(state, &p), PLAIT_ENOENT);
    char *gp = tu_path(state, "global.safetensors");
    ck_assert_int_eq(access(gp, F_OK), 0);
    free(gp);
    /* the serving adapter, chosen on a validation tail: global unless something beat it there */
    {
        char sp[4096], why[512];
        ck_assert_msg(plait_agent_serving(state, sp, sizeof(sp), why, sizeof(why)) == 0, "serving: %s",
                      plait_errmsg());
        plait_lora_t sv_l;
        plait_lora_init(&sv_l);
        ck_assert_int_eq(plait_adapter_load(&sv_l, sp, &r.model, 0), 0);
        ck_assert_uint_eq(sv_l.n_params, r.global.n_params);
        ck_assert_msg(strncmp(why, "global, round 1", 15) == 0 || strncmp(why, "personal, round 1", 17) == 0 ||
                          strncmp(why, "mix a=", 6) == 0,
                      "why: %s", why);
        ck_assert_ptr_nonnull(strstr(why, "validation"));
        /* The validation losses behind the choice stay in serve.txt: none reached the agent's
         * log, which names only the kind chosen (privacy.md 1). */
        {
            char *sinfo0 = tu_path(state, "serve.txt");
            size_t sl = 0;
            char *sv_txt = (char *)tu_read_file(sinfo0, &sl);
            ck_assert_ptr_nonnull(sv_txt);
            int losses = 0;
            for (char *tok = strtok(sv_txt, " \n"); tok; tok = strtok(NULL, " \n")) {
                const char *dot = strchr(tok, '.');
                if (!dot || strlen(dot + 1) < 3) continue; /* a loss is written with decimals */
                double v = strtod(tok, NULL);
                if (!(v > 0.5 && v < 20)) continue;        /* a per-token loss, not the mixing weight */
                char needle[32];
                snprintf(needle, sizeof(needle), "%.3f", v);
                ck_assert_msg(strstr(ev.log_text, needle) == NULL, "validation loss %s in the agent's log:\n%s", needle,
                              ev.log_text);
                losses++;
            }
            ck_assert_int_ge(losses, 2); /* the global's and the personal's, at least */
            free(sv_txt);
            free(sinfo0);
        }
        if (strncmp(why, "global", 6) == 0)
            ck_assert_mem_eq(sv_l.params, r.global.params, r.global.n_params * sizeof(float));
        plait_lora_free(&sv_l);
        /* Its output bias: present exactly when serve.txt says so, and said in the why. */
        size_t V = (size_t)r.model.cfg.vocab_size;
        float *bias = malloc((V + 1) * sizeof(float)); /* V + 1: also asked for another vocabulary below */
        char *bpath = tu_path(state, "serve_bias.bin");
        int brc = plait_agent_serving_bias(state, bias, V);
        ck_assert_msg(brc == 0 || brc == PLAIT_ENOENT, "bias: %s", plait_errmsg());
        ck_assert_int_eq(brc == 0, strstr(why, "output bias") != NULL);
        char *bpath_b0 = tu_path(state, "serve_bias-b.bin");
        if (brc != 0) ck_assert(access(bpath, F_OK) != 0 && access(bpath_b0, F_OK) != 0);
        free(bpath_b0);
        /* Its kNN memory likewise: present exactly when serve.txt says so, of the model's width. */
        {
            plait_knn_t km;
            plait_knn_init(&km);
            int krc = plait_agent_serving_knn(state, &km, (size_t)r.model.cfg.dim, V);
            ck_assert_msg(krc == 0 || krc == PLAIT_ENOENT, "memory: %s", plait_errmsg());
            ck_assert_int_eq(krc == 0, strstr(why, "kNN memory") != NULL);
            if (krc == 0) ck_assert(km.n > 0 && km.lambda > 0 && km.C == (size_t)r.model.cfg.dim);
            plait_knn_free(&km);
        }
        /* A hand-made choice with a bias: read back exactly; a wrong magic, size or vocabulary is refused. */
        char *sinfo = tu_path(state, "serve.txt");
        const char *line11 = "mix 0.5000 3.0 2.9 2.8 5 100 1 0 1 2.7\n"; /* slot 0, with a bias */
        ck_assert_int_eq(tu_write_file(sinfo, line11, strlen(line11)), 0);
        uint8_t *img = calloc(8 + 4 * V, 1);
        memcpy(img, "PLB2", 4);
        img[4] = (uint8_t)V, img[5] = (uint8_t)(V >> 8);
        for (size_t v = 0; v < V; v++) {
            float x = 0.01f * (float)v - 1.0f;
            uint32_t u;
            memcpy(&u, &x, 4);
            for (int k = 0; k < 4; k++) img[8 + 4 * v + (size_t)k] = (uint8_t)(u >> (8 * k));
        }
        ck_assert_int_eq(tu_write_file(bpath, img, 8 + 4 * V), 0);
        ck_assert_msg(plait_agent_serving_bias(state, bias, V) == 0, "bias: %s", plait_errmsg());
        for (size_t v = 0; v < V; v++) ck_assert_float_eq(bias[v], 0.01f * (float)v - 1.0f);
        ck_assert_int_eq(plait_agent_serving(state, sp, sizeof(sp), why, sizeof(why)), 0);
        ck_assert_ptr_nonnull(strstr(why, "output bias (validation loss 2.7000)"));
        ck_assert_int_eq(plait_agent_serving_bias(state, bias, V + 1), PLAIT_EPROTO); /* another vocabulary */
        img[0] = 'X';
        ck_assert_int_eq(tu_write_file(bpath, img, 8 + 4 * V), 0);
        ck_assert_int_eq(plait_agent_serving_bias(state, bias, V), PLAIT_EPROTO);
        img[0] = 'P';
        ck_assert_int_eq(tu_write_file(bpath, img, 8 + 4 * V - 4), 0);
        ck_assert_int_eq(plait_agent_serving_bias(state, bias, V), PLAIT_EPROTO);
        uint32_t nan_bits = 0x7fc00000u;
        for (int k = 0; k < 4; k++) img[8 + (size_t)k] = (uint8_t)(nan_bits >> (8 * k));
        ck_assert_int_eq(tu_write_file(bpath, img, 8 + 4 * V), 0);
        ck_assert_int_eq(plait_agent_serving_bias(state, bias, V), PLAIT_EPROTO);
        unlink(bpath);
        ck_assert_int_eq(plait_agent_serving_bias(state, bias, V), PLAIT_ENOENT); /* named but missing */
        /* Slot 1's bias is its own file. */
        img[8] = img[9] = img[10] = img[11] = 0;
        char *bpath_b = tu_path(state, "serve_bias-b.bin");
        ck_assert_int_eq(tu_write_file(bpath_b, img, 8 + 4 * V), 0);
        const char *line11b = "personal 1.0 3.0 2.9 2.8 5 100 2 1 1 2.7\n";
        ck_assert_int_eq(tu_write_file(sinfo, line11b, strlen(line11b)), 0);
        ck_assert_msg(plait_agent_serving_bias(state, bias, V) == 0, "bias: %s", plait_errmsg());
        ck_assert_float_eq(bias[0], 0.0f);
        ck_assert_float_eq(bias[7], 0.07f - 1.0f);
        unlink(bpath_b);
        free(bpath_b);
        /* An older line without the bias fields: still served, without a bias. */
        const char *line8 = "global 0.0000 3.0 3.1 3.0 0 100 1\n";
        ck_assert_int_eq(tu_write_file(sinfo, line8, strlen(line8)), 0);
        ck_assert_int_eq(plait_agent_serving(state, sp, sizeof(sp), why, sizeof(why)), 0);
        ck_assert_int_eq(plait_agent_serving_bias(state, bias, V), PLAIT_ENOENT);
        const char *line10 = "global 0.0000 3.0 3.1 3.0 0 100 1 1 1\n"; /* a bias flag without its loss */
        ck_assert_int_eq(tu_write_file(sinfo, line10, strlen(line10)), 0);
        ck_assert_int_eq(plait_agent_serving(state, sp, sizeof(sp), why, sizeof(why)), PLAIT_EPROTO);
        const char *line12 = "global 0.0000 3.0 3.1 3.0 0 100 1 1 0 3.0 1\n"; /* a memory flag without its loss */
        ck_assert_int_eq(tu_write_file(sinfo, line12, strlen(line12)), 0);
        ck_assert_int_eq(plait_agent_serving(state, sp, sizeof(sp), why, sizeof(why)), PLAIT_EPROTO);
        const char *line13 = "global 0.0000 3.0 3.1 3.0 0 100 1 1 0 3.0 2 2.9\n"; /* a memory flag of 2 */
        ck_assert_int_eq(tu_write_file(sinfo, line13, strlen(line13)), 0);
        ck_assert_int_eq(plait_agent_serving(state, sp, sizeof(sp), why, sizeof(why)), PLAIT_EPROTO);
        free(img);
        free(bias);
        free(bpath);
        /* two slots: serve.txt names the one in use (no slot field: slot 0, as before the slots) */
        const char *slot1 = "personal 1.0 3.0 2.9 2.9 5 100 7 1\n", *slot0 = "personal 1.0 3.0 2.9 2.9 5 100 7\n",
                   *slot2 = "personal 1.0 3.0 2.9 2.9 5 100 7 2\n";
        ck_assert_int_eq(tu_write_file(sinfo, slot1, strlen(slot1)), 0);
        ck_assert_int_eq(plait_agent_serving(state, sp, sizeof(sp), why, sizeof(why)), 0);
        ck_assert_str_eq(sp + strlen(sp) - strlen("/serve-b.safetensors"), "/serve-b.safetensors");
        ck_assert_ptr_nonnull(strstr(why, "round 7"));
        ck_assert_int_eq(tu_write_file(sinfo, slot0, strlen(slot0)), 0);
        ck_assert_int_eq(plait_agent_serving(state, sp, sizeof(sp), why, sizeof(why)), 0);
        ck_assert_str_eq(sp + strlen(sp) - strlen("/serve.safetensors"), "/serve.safetensors");
        ck_assert_int_eq(tu_write_file(sinfo, slot2, strlen(slot2)), 0);
        ck_assert_int_eq(plait_agent_serving(state, sp, sizeof(sp), why, sizeof(why)), PLAIT_EPROTO);
        ck_assert_str_eq(sp, "");
        ck_assert_int_eq(tu_write_file(sinfo, "bogus 1 2\n", 10), 0);
        ck_assert_int_eq(plait_agent_serving(state, sp, sizeof(sp), why, sizeof(why)), PLAIT_EPROTO);
        unlink(sinfo);
        ck_assert_int_eq(plait_agent_serving(state, sp, sizeof(sp), why, sizeof(why)), PLAIT_ENOENT);
        free(sinfo);
    }
    ck_assert_uint_eq(plait_agent_rounds_acked(a), 1);
    plait_agent_destroy(a);

    /* Restart (a new agent on the same state) and the same round offered again:
     * the hello says round 1 is done, and the agent declines without uploading. */
    server_free(&sv);
    server_start(&sv, FAKE_TASK, &r);
    a = make_agent(state, sv.f.port, NULL);
    rc = plait_agent_run_once(a, &res);
    server_join(&sv);
    ck_assert_msg(rc == 0, "run_once: %s", plait_errmsg());
    ck_assert_int_eq(sv.f.hello.has_last_round, 1);
    ck_assert_uint_eq(sv.f.hello.last_round_completed, 1);
    ck_assert_int_eq(res.outcome, PLAIT_AGENT_OUT_DECLINED);
    ck_assert_int_eq(res.declined_rc, PLAIT_ESTALE);
    ck_assert_int_eq(sv.f.got_error, 0);
    ck_assert_int_eq(sv.f.got_decline, 1);
    ck_assert_int_eq(sv.f.decline_code, PLAIT_DECLINE_ALREADY_DONE);
    ck_assert_uint_eq(sv.f.decline_round, 1);
    ck_assert_uint_eq(sv.f.n_words, 0);
    ck_assert_int_eq(sv.f.adapter_requests, 0);
    plait_agent_destroy(a);
    server_free(&sv);
    round_free(&r);
    free(state);
}
END_TEST

START_TEST(test_loopback_interrupted_upload_resent)
{
    round_t r;
    round_setup(&r, 2, PLAIT_LORA_MODE_FFA);
    char *state = fresh_state("agent_resend");
    /* 1: the aggregator vanishes after the first chunk. */
    server_t sv;
    server_start(&sv, FAKE_DROP, &r);
    plait_agent_t *a = make_agent(state, sv.f.port, NULL);
    plait__agent_set_chunk_words(a, 500);
    plait_agent_result_t res;
    int rc = plait_agent_run_once(a, &res);
    server_join(&sv);
    ck_assert_int_ne(rc, 0); /* EIO: connection lost before the Ack */
    ck_assert_uint_eq(sv.f.n_words, PLAIT_WIRE_UPDATE_LEAD_WORDS); /* the lead chunk */
    uint32_t first[PLAIT_WIRE_UPDATE_LEAD_WORDS];
    memcpy(first, sv.f.words, sizeof(first));
    plait_agent_destroy(a); /* "crash" */
    server_free(&sv);
    plait__agent_pending_t p;
    ck_assert_int_eq(plait__agent_pending_load(state, &p), 0);
    ck_assert_uint_eq(p.round_id, 2);
    ck_assert_uint_eq(p.n_words, r.task.update_elements);
    plait__agent_pending_free(&p);
    plait__agent_state_t st;
    ck_assert_int_eq(plait__agent_state_load(state, &st), 0);
    ck_assert_uint_eq(st.last_acked, 0);

    /* 2: restart; the same round is offered: the stored words go again, no download, no training.
     */
    server_start(&sv, FAKE_TASK, &r);
    evlog_t ev;
    memset(&ev, 0, sizeof(ev));
    a = make_agent(state, sv.f.port, &ev);
    plait__agent_set_chunk_words(a, 500);
    rc = plait_agent_run_once(a, &res);
    server_join(&sv);
    ck_assert_msg(sv.f.fail[0] == 0, "fake server: %s", sv.f.fail);
    ck_assert_msg(rc == 0, "run_once: %s", plait_errmsg());
    ck_assert_int_eq(res.outcome, PLAIT_AGENT_OUT_ACKED);
    ck_assert_int_eq(sv.f.adapter_requests, 0);
    ck_assert_int_eq(ev.counts[PLAIT_AGENT_EV_TRAINING], 0);
    ck_assert_mem_eq(sv.f.words, first, sizeof(first));
    check_words_match_personal(&r, state, &sv.f, res.num_examples);
    ck_assert_int_eq(plait__agent_state_load(state, &st), 0);
    ck_assert_uint_eq(st.last_acked, 2);
    ck_assert_int_eq(plait__agent_pending_load(state, &p), PLAIT_ENOENT);
    plait_agent_destroy(a);
    server_free(&sv);
    round_free(&r);
    free(state);
}
END_TEST

START_TEST(test_loopback_fedsa_personal_b)
{
    round_t r;
    round_setup(&r, 3, PLAIT_LORA_MODE_FEDSA);
    server_t sv;
    server_start(&sv, FAKE_TASK, &r);
    char *state = fresh_state("agent_fedsa");
    plait_agent_t *a = make_agent(state, sv.f.port, NULL);
    plait_agent_result_t res;
    int rc = plait_agent_run_once(a, &res);
    server_join(&sv);
    ck_assert_msg(sv.f.fail[0] == 0, "fake server: %s", sv.f.fail);
    ck_assert_msg(rc == 0, "run_once: %s", plait_errmsg());
    ck_assert_int_eq(res.outcome, PLAIT_AGENT_OUT_ACKED);
    ck_assert_uint_eq(sv.f.n_words, r.global.n_a + 1); /* A travels, B stays */
    char *pp = tu_path(state, "personal.safetensors");
    plait_lora_t pers;
    plait_lora_init(&pers);
    ck_assert_int_eq(plait_adapter_load(&pers, pp, &r.model, 0), 0);
    double nb = plait_update_l2(pers.params + pers.n_a, pers.n_params - pers.n_a);
    ck_assert_double_gt(nb, 0.0); /* the personal B was trained and kept */
    plait_lora_free(&pers);
    free(pp);
    plait_agent_destroy(a);
    server_free(&sv);
    round_free(&r);
    free(state);
}
END_TEST

START_TEST(test_loopback_come_back_and_error)
{
    server_t sv;
    server_start(&sv, FAKE_COME_BACK, NULL);
    char *state = fresh_state("agent_cbl");
    evlog_t ev;
    memset(&ev, 0, sizeof(ev));
    plait_agent_t *a = make_agent(state, sv.f.port, &ev);
    plait_agent_result_t res;
    int rc = plait_agent_run_once(a, &res);
    server_join(&sv);
    ck_assert_msg(rc == 0, "run_once: %s", plait_errmsg());
    ck_assert_int_eq(res.outcome, PLAIT_AGENT_OUT_COME_BACK);
    ck_assert_uint_eq(res.retry_ms, 1234);
    ck_assert_int_eq(ev.counts[PLAIT_AGENT_EV_COME_BACK], 1);
    ck_assert_int_eq(plait_agent_last_result(a)->outcome, PLAIT_AGENT_OUT_COME_BACK);
    plait_agent_destroy(a);
    server_free(&sv);

    server_start(&sv, FAKE_ERROR, NULL);
    a = make_agent(state, sv.f.port, NULL);
    rc = plait_agent_run_once(a, &res);
    server_join(&sv);
    ck_assert_int_eq(rc, PLAIT_EMISMATCH);
    ck_assert_ptr_nonnull(strstr(plait_errmsg(), "base model differs"));
    plait_agent_destroy(a);
    server_free(&sv);
    free(state);
}
END_TEST

/* Issue #11 items 3, 5, 13: the agent keeps its UpdateChunks within the
 * task's max_chunk_bytes, and a ComeBackLater where the Ack was expected (the
 * round failed, or the aggregator is shutting down) is a come-back outcome,
 * not a protocol error. */
START_TEST(test_loopback_task_chunk_limit_and_round_end)
{
    static const plait_retry_reason_t reasons[] = {PLAIT_RETRY_ROUND_FAILED, PLAIT_RETRY_SHUTTING_DOWN};
    round_t r;
    round_setup(&r, 1, PLAIT_LORA_MODE_FFA);
    r.task.max_chunk_bytes = 4002; /* 1000 words (rounded down to whole words) */
    ck_assert_uint_gt(r.task.update_elements, 1000);
    for (int i = 0; i < 2; i++) {
        server_t sv;
        g_cbl_reason = reasons[i];
        server_start(&sv, FAKE_END_ROUND, &r);
        char *state = fresh_state(i ? "agent_end_shut" : "agent_end_fail");
        evlog_t ev;
        memset(&ev, 0, sizeof(ev));
        plait_agent_t *a = make_agent(state, sv.f.port, &ev);
        plait_agent_result_t res;
        int rc = plait_agent_run_once(a, &res);
        server_join(&sv);
        ck_assert_msg(sv.f.fail[0] == 0, "fake server: %s", sv.f.fail);
        ck_assert_msg(rc == 0, "run_once: %s (%s)", plait_errmsg(), plait_err_name(rc));
        ck_assert_int_eq(res.outcome, PLAIT_AGENT_OUT_COME_BACK);
        ck_assert_uint_eq(res.retry_ms, 4321);
        ck_assert_uint_eq(sv.f.n_words, r.task.update_elements);
        ck_assert_uint_le(sv.f.max_chunk_words, 1000);
        ck_assert_int_eq(sv.f.chunks, upload_chunks(r.task.update_elements, 1000));
        ck_assert_int_eq(ev.counts[PLAIT_AGENT_EV_ACKED], 0);
        plait__agent_pending_t p;
        int prc = plait__agent_pending_load(state, &p);
        if (reasons[i] == PLAIT_RETRY_ROUND_FAILED) {
            ck_assert_int_eq(prc, PLAIT_ENOENT); /* a failed round's words are useless */
        } else {
            ck_assert_int_eq(prc, 0); /* kept: a shutdown is not a verdict on the round */
            plait__agent_pending_free(&p);
        }
        plait_agent_destroy(a);
        server_free(&sv);
        free(state);
    }
    round_free(&r);
}
END_TEST

static int never(void *ud)
{
    (*(int *)ud)++;
    return 0;
}

START_TEST(test_not_eligible)
{
    char *state = fresh_state("agent_elig");
    plait_agent_config_t cfg;
    base_config(&cfg, state, 9); /* nothing listens there; it must not even try */
    int calls = 0;
    cfg.eligible = never;
    cfg.eligible_ud = &calls;
    plait_agent_t *a = NULL;
    ck_assert_int_eq(plait_agent_create(&a, &cfg), 0);
    plait_agent_result_t res;
    ck_assert_int_eq(plait_agent_run_once(a, &res), 0);
    ck_assert_int_eq(res.outcome, PLAIT_AGENT_OUT_NOT_ELIGIBLE);
    ck_assert_int_eq(calls, 1);
    plait_agent_destroy(a);
    cfg.eligible = NULL;
    cfg.min_records = 1000000;
    ck_assert_int_eq(plait_agent_create(&a, &cfg), 0);
    ck_assert_int_eq(plait_agent_run_once(a, &res), 0);
    ck_assert_int_eq(res.outcome, PLAIT_AGENT_OUT_NOT_ELIGIBLE);
    ck_assert_int_eq(plait_agent_run(a), 0); /* one-shot: returns after the (non-)conversation */
    plait_agent_destroy(a);
    free(state);
}
END_TEST

/* A port that refuses connections for the rest of the process: bound (so no
 * test running alongside can take it), never listening (so a connect gets
 * RST: "Connection refused"). The socket is left open on purpose. A port
 * merely closed again could be reused at once by another process on a busy
 * machine, and the "refused" connection would then reach it. */
static int closed_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    ck_assert_int_ge(fd, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = 0};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ck_assert_int_eq(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    socklen_t sl = sizeof(sa);
    ck_assert_int_eq(getsockname(fd, (struct sockaddr *)&sa, &sl), 0);
    return ntohs(sa.sin_port);
}

static void *stopper(void *p)
{
    struct timespec ts = {0, 300 * 1000000L};
    nanosleep(&ts, NULL);
    plait_agent_stop(p);
    return NULL;
}

static uint64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

START_TEST(test_run_backoff_and_stop)
{
    char *state = fresh_state("agent_stop");
    int port = closed_port();
    /* One-shot gives up after max_attempts refused connections, with short backoffs. */
    plait_agent_config_t cfg;
    base_config(&cfg, state, port);
    cfg.max_attempts = 3;
    evlog_t ev;
    memset(&ev, 0, sizeof(ev));
    cfg.on_event = on_event;
    cfg.event_ud = &ev;
    plait_agent_t *a = NULL;
    ck_assert_int_eq(plait_agent_create(&a, &cfg), 0);
    uint64_t t0 = mono_ms();
    ck_assert_int_eq(plait_agent_run(a), PLAIT_EIO);
    ck_assert_uint_lt(mono_ms() - t0, 5000);
    ck_assert_int_eq(ev.counts[PLAIT_AGENT_EV_ERROR], 3);
    ck_assert_int_eq(ev.counts[PLAIT_AGENT_EV_SLEEP], 2);
    plait_agent_destroy(a);

    /* A daemon backing off for a long time is stopped from another thread at once. */
    cfg.daemon = 1;
    cfg.backoff_initial_ms = 60000;
    cfg.backoff_max_ms = 60000;
    ck_assert_int_eq(plait_agent_create(&a, &cfg), 0);
    pthread_t th;
    ck_assert_int_eq(pthread_create(&th, NULL, stopper, a), 0);
    t0 = mono_ms();
    ck_assert_int_eq(plait_agent_run(a), 0);
    ck_assert_uint_lt(mono_ms() - t0, 5000);
    pthread_join(th, NULL);
    /* stop is sticky until reset */
    plait_agent_result_t res;
    ck_assert_int_eq(plait_agent_run_once(a, &res), PLAIT_ECANCELED);
    plait_agent_reset_stop(a);
    ck_assert_int_eq(plait_agent_run_once(a, &res), PLAIT_EIO);
    plait_agent_destroy(a);

    /* max_runtime_ms bounds a daemon too. */
    cfg.backoff_initial_ms = 10;
    cfg.backoff_max_ms = 50;
    cfg.max_runtime_ms = 300;
    ck_assert_int_eq(plait_agent_create(&a, &cfg), 0);
    t0 = mono_ms();
    ck_assert_int_eq(plait_agent_run(a), 0);
    ck_assert_uint_lt(mono_ms() - t0, 5000);
    plait_agent_destroy(a);
    free(state);
}
END_TEST

/* A long task: the agent pings while it trains and abandons the round at its deadline. */
START_TEST(test_loopback_keepalive_and_deadline)
{
    round_t r;
    round_setup(&r, 5, PLAIT_LORA_MODE_FFA);
    r.task.train.local_steps = 500000;
    r.task.deadline_s = 3;
    server_t sv;
    server_start(&sv, FAKE_TASK, &r);
    char *state = fresh_state("agent_deadline");
    plait_agent_t *a = make_agent_steps(state, sv.f.port, NULL, 1000000);
    plait_agent_result_t res;
    uint64_t t0 = mono_ms();
    int rc = plait_agent_run_once(a, &res);
    uint64_t dt = mono_ms() - t0;
    server_join(&sv);
    ck_assert_msg(sv.f.fail[0] == 0, "fake server: %s", sv.f.fail);
    ck_assert_msg(rc == 0, "run_once: %s", plait_errmsg());
    ck_assert_int_eq(res.outcome, PLAIT_AGENT_OUT_DECLINED);
    ck_assert_int_eq(res.declined_rc, PLAIT_ECANCELED);
    ck_assert_int_eq(sv.f.got_error, 0);
    ck_assert_int_eq(sv.f.got_decline, 1);
    ck_assert_int_eq(sv.f.decline_code, PLAIT_DECLINE_DEADLINE);
    ck_assert_int_ge(sv.f.pings, 2); /* keepalive 1 s over a 3 s deadline */
    ck_assert_uint_eq(sv.f.n_words, 0);
    ck_assert_uint_ge(dt, 2900);
    ck_assert_uint_lt(dt, 10000);
    plait__agent_pending_t p;
    ck_assert_int_eq(plait__agent_pending_load(state, &p), PLAIT_ENOENT);
    plait_agent_destroy(a);
    server_free(&sv);
    round_free(&r);
    free(state);
}
END_TEST

/* plait_agent_stop() during training returns at once and uploads nothing. */
START_TEST(test_loopback_stop_during_training)
{
    round_t r;
    round_setup(&r, 6, PLAIT_LORA_MODE_FFA);
    r.task.train.local_steps = 500000;
    server_t sv;
    server_start(&sv, FAKE_TASK, &r);
    char *state = fresh_state("agent_stoptrain");
    plait_agent_t *a = make_agent_steps(state, sv.f.port, NULL, 1000000);
    pthread_t th;
    ck_assert_int_eq(pthread_create(&th, NULL, stopper, a), 0);
    plait_agent_result_t res;
    uint64_t t0 = mono_ms();
    int rc = plait_agent_run_once(a, &res);
    ck_assert_uint_lt(mono_ms() - t0, 5000);
    pthread_join(th, NULL);
    server_join(&sv);
    ck_assert_int_eq(rc, PLAIT_ECANCELED);
    ck_assert_uint_eq(sv.f.n_words, 0);
    plait__agent_state_t st;
    ck_assert_int_eq(plait__agent_state_load(state, &st), 0);
    ck_assert_uint_eq(st.last_uploaded, 0);
    plait_agent_destroy(a);
    server_free(&sv);
    round_free(&r);
    free(state);
}
END_TEST

/* Run plait-agent with argv (NULL-terminated), stdout+stderr to out; SIGTERM after sig_ms (0:
 * never). Returns the exit status, or -1 if it had to be killed at timeout_ms. */
static int file_has(const char *path, const char *needle);

/* Run a command; SIGTERM it once `out` contains wait_for (or after sig_ms
 * when wait_for is NULL), SIGKILL it after timeout_ms. The exit status, -1 on
 * the timeout, -2 for a signal. */
static uint64_t g_sig_to_exit_ms; /* of the last run_cli_until that signalled */

static int run_cli_until(char *const argv[], const char *out, const char *wait_for, int sig_ms, int timeout_ms)
{
    pid_t pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        int fd = open(out, O_WRONLY | O_CREAT | O_TRUNC, 0600);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
        }
        execv(argv[0], argv);
        _exit(127);
    }
    uint64_t t0 = mono_ms();
    int signaled = 0;
    uint64_t t_sig = 0;
    for (;;) {
        int st;
        pid_t w = waitpid(pid, &st, WNOHANG);
        if (w == pid) {
            g_sig_to_exit_ms = signaled ? mono_ms() - t_sig : 0;
            return WIFEXITED(st) ? WEXITSTATUS(st) : -2;
        }
        uint64_t el = mono_ms() - t0;
        if (!signaled && (wait_for ? file_has(out, wait_for) : sig_ms && el >= (uint64_t)sig_ms)) {
            kill(pid, SIGTERM);
            signaled = 1;
            t_sig = mono_ms();
        }
        if (el >= (uint64_t)timeout_ms) {
            kill(pid, SIGKILL);
            waitpid(pid, &st, 0);
            return -1;
        }
        struct timespec ts = {0, 20 * 1000000L};
        nanosleep(&ts, NULL);
    }
}

static int run_cli(char *const argv[], const char *out, int sig_ms, int timeout_ms)
{
    return run_cli_until(argv, out, NULL, sig_ms, timeout_ms);
}

static int file_has(const char *path, const char *needle)
{
    size_t n;
    uint8_t *b = tu_read_file(path, &n);
    int ok = b && strstr((const char *)b, needle) != NULL;
    free(b);
    return ok;
}

/* The command line the integration tests drive: usage errors, one round, SIGTERM of a daemon. */
START_TEST(test_cli_join)
{
    char *bin = tu_path(PLAIT_BINARY_DIR, "client/plait-agent");
    char *state = fresh_state("agent_cli");
    char *out = tu_path(state, "out.txt");
    char *st2 = tu_path(state, "st");
    char port_s[32], server[64];
    {
        char *argv[] = {bin, "join", "--help", NULL};
        ck_assert_int_eq(run_cli(argv, out, 0, 10000), 0);
        ck_assert(file_has(out, "--server HOST:PORT"));
    }
    {
        char *argv[] = {bin, "join", "--ca", g_ca, NULL};
        ck_assert_int_eq(run_cli(argv, out, 0, 10000), 2);
        ck_assert(file_has(out, "--server is required"));
    }
    {
        char *argv[] = {bin, "join", "--server", "127.0.0.1", NULL};
        ck_assert_int_eq(run_cli(argv, out, 0, 10000), 2);
        ck_assert(file_has(out, "--server"));
    }
    {
        char *argv[] = {bin, "join", "--server", "127.0.0.1:1", "--bogus", NULL};
        ck_assert_int_eq(run_cli(argv, out, 0, 10000), 2);
        ck_assert(file_has(out, "--bogus"));
    }
    /* One round with the fake aggregator. */
    round_t r;
    round_setup(&r, 7, PLAIT_LORA_MODE_FFA);
    server_t sv;
    server_start(&sv, FAKE_TASK, &r);
    snprintf(server, sizeof(server), "localhost:%d",
             sv.f.port); /* a DNS name: resolved, and matched to the SAN */
    {
        char *argv[] = {bin,       "join",   "--server", server,          "--ca",        g_ca,
                        "--cert",  g_crt,    "--key",    g_key,           "--db",        g_store,
                        "--state", st2,      "--model",  g_model,         "--tokenizer", g_tok,
                        "--once",  "--seed", "5",        "--min-records", "4",           "--allow-plain-aggregation",
                        NULL};
        int rc = run_cli(argv, out, 0, 60000);
        server_join(&sv);
        ck_assert_msg(rc == 0, "join exited %d", rc);
        ck_assert(file_has(out, "round 7 acknowledged"));
        ck_assert(file_has(out, "round 7: uploaded 1921 words"));
    }
    ck_assert_msg(sv.f.fail[0] == 0, "fake server: %s", sv.f.fail);
    ck_assert_uint_eq(sv.f.n_words, r.task.update_elements);
    server_free(&sv);
    round_free(&r);
    /* A daemon that cannot connect backs off; SIGTERM ends it with status 0. */
    snprintf(port_s, sizeof(port_s), "127.0.0.1:%d", closed_port());
    {
        char *argv[] = {bin,           "join",
                        "--server",    port_s,
                        "--ca",        g_ca,
                        "--cert",      g_crt,
                        "--key",       g_key,
                        "--db",        g_store,
                        "--state",     st2,
                        "--model",     g_model,
                        "--tokenizer", g_tok,
                        "--daemon",    "--backoff-initial-ms",
                        "60000",       "--backoff-max-ms",
                        "60000",       NULL};
        /* SIGTERM once it has been refused (however slow the machine), then it must end at once:
         * well before its 60 s backoff. */
        int rc = run_cli_until(argv, out, "Connection refused", 0, 110000);
        ck_assert_msg(rc == 0, "join exited %d", rc);
        ck_assert_uint_lt(g_sig_to_exit_ms, 45000);
        ck_assert(file_has(out, "Connection refused"));
    }
    /* --rounds that --max-runtime cuts short is a failure, said in one line. */
    {
        char *argv[] = {bin,           "join",
                        "--server",    port_s,
                        "--ca",        g_ca,
                        "--cert",      g_crt,
                        "--key",       g_key,
                        "--db",        g_store,
                        "--state",     st2,
                        "--model",     g_model,
                        "--tokenizer", g_tok,
                        "--daemon",    "--rounds",
                        "2",           "--max-runtime",
                        "1",           "--backoff-initial-ms",
                        "50",          NULL};
        int rc = run_cli(argv, out, 0, 20000);
        ck_assert_int_eq(rc, 1);
        ck_assert(file_has(out, "after 0 of 2 rounds"));
    }
    free(st2);
    free(out);
    free(state);
    free(bin);
}
END_TEST

/* FedIT with local DP: A and B travel, noise z·S is added (same stream: words match bit for bit);
 * a second round with the same global adapter uses the cached copy. */
START_TEST(test_loopback_fedit_local_dp_and_cache)
{
    round_t r;
    round_setup(&r, 10, PLAIT_LORA_MODE_FEDIT);
    r.task.dp.mode = PLAIT_DP_LOCAL;
    r.task.dp.noise_multiplier = 0.5;
    r.task.example_cap = 1; /* the device refuses local DP with a data-dependent weight word */
    ck_assert_uint_eq(r.task.update_elements, r.global.n_params + 1);
    server_t sv;
    server_start(&sv, FAKE_TASK, &r);
    char *state = fresh_state("agent_fedit");
    plait_agent_t *a = make_agent(state, sv.f.port, NULL);
    plait_agent_result_t res;
    int rc = plait_agent_run_once(a, &res);
    server_join(&sv);
    ck_assert_msg(sv.f.fail[0] == 0, "fake server: %s", sv.f.fail);
    ck_assert_msg(rc == 0, "run_once: %s", plait_errmsg());
    ck_assert_int_eq(res.outcome, PLAIT_AGENT_OUT_ACKED);
    check_words_match_personal(&r, state, &sv.f, res.num_examples);
    server_free(&sv);
    /* next round, same adapter bytes: no download */
    r.task.round_id = 11;
    server_start(&sv, FAKE_TASK, &r);
    plait_agent_destroy(a);
    a = make_agent(state, sv.f.port, NULL);
    rc = plait_agent_run_once(a, &res);
    server_join(&sv);
    ck_assert_msg(rc == 0, "run_once: %s", plait_errmsg());
    ck_assert_int_eq(res.outcome, PLAIT_AGENT_OUT_ACKED);
    ck_assert_int_eq(sv.f.adapter_requests, 0);
    ck_assert_uint_eq(sv.f.hello.last_round_completed, 10);
    plait_agent_destroy(a);
    server_free(&sv);
    round_free(&r);
    free(state);
}
END_TEST

static int flip(void *ud)
{
    int *n = ud;
    return (*n)++ == 0; /* eligible when asked before connecting, not when the task comes */
}

/* No decline code says anything computed from the device's data: too little data (EINVAL)
 * goes out as NOT_ELIGIBLE, and no failure maps to NOT_ENOUGH_DATA. */
START_TEST(test_decline_codes)
{
    for (int secure = 0; secure <= 1; secure++) {
        ck_assert_int_eq(plait__agent_work_decline_code(PLAIT_EINVAL, secure), PLAIT_DECLINE_NOT_ELIGIBLE);
        ck_assert_int_eq(plait__agent_work_decline_code(PLAIT_ECANCELED, secure), PLAIT_DECLINE_DEADLINE);
        for (int rc = -40; rc < 0; rc++)
            ck_assert_int_ne(plait__agent_work_decline_code(rc, secure), PLAIT_DECLINE_NOT_ENOUGH_DATA);
    }
    ck_assert_int_eq(plait__agent_work_decline_code(PLAIT_ETHRESHOLD, 1), PLAIT_DECLINE_POLICY);
    ck_assert_int_eq(plait__agent_work_decline_code(PLAIT_EMISMATCH, 0), PLAIT_DECLINE_INCOMPATIBLE_TASK);
}
END_TEST

/* Tasks the agent must refuse, each answered with a Decline code and nothing uploaded. */
START_TEST(test_loopback_declines)
{
    char *state = fresh_state("agent_decl");
    /* A store with the records the agent needs to check in, but fewer tokens than a window. */
    char *tiny = tu_path(state, "tiny.db"), *state9 = fresh_state("agent_decl_data");
    {
        plait_store_config_t sc;
        plait_store_config_default(&sc);
        sc.path = tiny;
        plait_store_t *st = NULL;
        ck_assert_int_eq(plait_store_open(&st, &sc), 0);
        for (int i = 0; i < 6; i++) ck_assert_int_eq(plait_store_add(st, 1700000000 + i, NULL, "hi", 2, NULL), 0);
        plait_store_close(st);
    }
    for (int k = 0; k < 10; k++) {
        round_t r;
        round_setup(&r, 20 + (uint64_t)k, PLAIT_LORA_MODE_FFA);
        int want = 0, calls = 0, want_code = PLAIT_DECLINE_INCOMPATIBLE_TASK;
        plait_agent_config_t cfg;
        base_config(&cfg, state, 0);
        switch (k) {
        case 0:
            cfg.require_secure_agg = 1;
            want = PLAIT_EREFUSED;
            want_code = PLAIT_DECLINE_POLICY;
            break; /* policy: a plain round for a device that requires secure aggregation */
        case 1:
            r.task.update_elements += 1;
            want = PLAIT_EMISMATCH;
            break; /* wrong span length */
        case 2:
            r.task.train.local_steps = 20000;
            want = PLAIT_ETOOBIG;
            break; /* above max_local_steps */
        case 3:
            cfg.eligible = flip;
            cfg.eligible_ud = &calls;
            want = PLAIT_ECANCELED;
            want_code = PLAIT_DECLINE_NOT_ELIGIBLE;
            break;
        case 4:
            cfg.min_noise_multiplier = 0.5;
            want = PLAIT_EREFUSED;
            want_code = PLAIT_DECLINE_POLICY;
            break; /* policy: less noise than this device's minimum */
        case 5:
            cfg.max_clip_norm = r.task.clip_norm / 2;
            want = PLAIT_EREFUSED;
            want_code = PLAIT_DECLINE_POLICY;
            break; /* policy: a clip norm above this device's maximum */
        case 6:
        case 7:
            r.task.dp.mode = PLAIT_DP_LOCAL;
            r.task.dp.noise_multiplier = 1.0;
            if (k == 6) {
                r.task.example_cap = 64; /* the weight word would carry the record count, un-noised */
            } else {
                r.task.example_cap = 1;
                r.task.clip_bit = 1; /* the bit "norm <= clip" would go out un-noised */
                r.task.update_elements += 1;
            }
            want = PLAIT_EREFUSED;
            want_code = PLAIT_DECLINE_POLICY;
            break; /* policy: local DP whose extra words are data, not noise */
        case 8:
            r.task.kind = PLAIT_TASK_EVALUATE; /* an evaluation adds no local noise to its loss */
            r.task.eval_loss_max = 10.0;
            r.task.update_elements = PLAIT_WIRE_EVAL_WORDS;
            r.task.dp.mode = PLAIT_DP_LOCAL;
            r.task.dp.noise_multiplier = 1.0;
            r.task.example_cap = 1;
            want = PLAIT_EREFUSED;
            want_code = PLAIT_DECLINE_POLICY;
            break;
        case 9:
            /* Too little text: declined as NOT_ELIGIBLE before the download, where a device that
             * is no longer eligible declines, so when it declined says nothing about its data. */
            cfg.store_path = tiny;
            cfg.min_records = 1; /* the store's random split may hold out several of its 6 records */
            cfg.state_dir = state9; /* nothing cached: the adapter would be asked for */
            want = PLAIT_ECANCELED;
            want_code = PLAIT_DECLINE_NOT_ELIGIBLE;
            break;
        }
        server_t sv;
        server_start(&sv, FAKE_TASK, &r);
        cfg.server_port = sv.f.port;
        plait_agent_t *a = NULL;
        ck_assert_int_eq(plait_agent_create(&a, &cfg), 0);
        plait_agent_result_t res;
        int rc = plait_agent_run_once(a, &res);
        server_join(&sv);
        ck_assert_msg(rc == 0, "case %d: %s", k, plait_errmsg());
        ck_assert_int_eq(res.outcome, PLAIT_AGENT_OUT_DECLINED);
        ck_assert_int_eq(res.declined_rc, want);
        ck_assert_int_eq(sv.f.got_error, 0); /* a code from the fixed list, no text */
        ck_assert_int_eq(sv.f.got_decline, 1);
        ck_assert_int_eq(sv.f.decline_code, want_code);
        ck_assert_uint_eq(sv.f.decline_round, r.task.round_id);
        ck_assert_uint_eq(sv.f.n_words, 0);
        if (k == 9) ck_assert_int_eq(sv.f.adapter_requests, 0); /* declined before the download */
        plait__agent_pending_t p;
        ck_assert_int_eq(plait__agent_pending_load(k == 9 ? state9 : state, &p), PLAIT_ENOENT);
        plait_agent_destroy(a);
        server_free(&sv);
        round_free(&r);
    }
    free(tiny);
    free(state9);
    free(state);
}
END_TEST

/* A download cut after the first chunk resumes at that offset on the next task (PLAIT_CAP_RESUME).
 */
START_TEST(test_loopback_download_resume)
{
    round_t r;
    round_setup(&r, 30, PLAIT_LORA_MODE_FFA);
    char *state = fresh_state("agent_resume");
    server_t sv;
    server_start(&sv, FAKE_DROP_DL, &r);
    plait_agent_t *a = make_agent(state, sv.f.port, NULL);
    plait_agent_result_t res;
    int rc = plait_agent_run_once(a, &res);
    server_join(&sv);
    ck_assert_int_eq(rc, PLAIT_EIO);
    ck_assert_uint_ne(sv.f.hello.capabilities & PLAIT_CAP_RESUME, 0);
    ck_assert_uint_eq(sv.f.req_offset, 0);
    char *part = tu_path(state, "global.part");
    ck_assert_int_eq(access(part, F_OK), 0);
    server_free(&sv);
    plait_agent_destroy(a);

    server_start(&sv, FAKE_TASK, &r);
    evlog_t ev;
    memset(&ev, 0, sizeof(ev));
    a = make_agent(state, sv.f.port, &ev);
    rc = plait_agent_run_once(a, &res);
    server_join(&sv);
    ck_assert_msg(sv.f.fail[0] == 0, "fake server: %s", sv.f.fail);
    ck_assert_msg(rc == 0, "run_once: %s", plait_errmsg());
    ck_assert_int_eq(res.outcome, PLAIT_AGENT_OUT_ACKED);
    ck_assert_uint_eq(sv.f.req_offset, r.blob_len / 3 + 1); /* the first chunk's size */
    ck_assert_int_eq(access(part, F_OK), -1);
    check_words_match_personal(&r, state, &sv.f, res.num_examples);
    plait_agent_destroy(a);
    server_free(&sv);

    /* A kept prefix that does not belong to the blob fails the final hash, and is dropped. */
    uint8_t *img;
    size_t n;
    char *gp = tu_path(state, "global.safetensors");
    unlink(gp);
    r.task.round_id = 31;
    server_start(&sv, FAKE_DROP_DL, &r);
    a = make_agent(state, sv.f.port, NULL);
    ck_assert_int_eq(plait_agent_run_once(a, &res), PLAIT_EIO);
    server_join(&sv);
    server_free(&sv);
    plait_agent_destroy(a);
    img = tu_read_file(part, &n);
    ck_assert_ptr_nonnull(img);
    img[n - 1] ^= 0x55; /* corrupt a kept byte, header intact */
    ck_assert_int_eq(tu_write_file(part, img, n), 0);
    free(img);
    server_start(&sv, FAKE_TASK, &r);
    a = make_agent(state, sv.f.port, NULL);
    rc = plait_agent_run_once(a, &res);
    server_join(&sv);
    ck_assert_int_eq(rc, 0);
    ck_assert_int_eq(res.outcome, PLAIT_AGENT_OUT_DECLINED);
    ck_assert_int_eq(res.declined_rc, PLAIT_EMISMATCH);
    ck_assert_int_eq(access(part, F_OK), -1);
    plait_agent_destroy(a);
    server_free(&sv);
    free(gp);
    free(part);
    round_free(&r);
    free(state);
}
END_TEST

/* A compact download that does not rebuild the task's adapter (a malformed delta from the held
 * version; a B span of the wrong length) is refused, and the agent downloads the full file on
 * the same connection and completes the round. */
START_TEST(test_loopback_hostile_encoding)
{
    round_t r;
    round_setup(&r, 40, PLAIT_LORA_MODE_FFA);
    for (int k = 0; k < 2; k++) {
        char *state = fresh_state(k ? "agent_hostile_delta" : "agent_hostile_seeded");
        if (k) { /* hold an older version: the blob with one B value changed (still a valid adapter) */
            uint8_t *old = malloc(r.blob_len);
            memcpy(old, r.blob, r.blob_len);
            old[r.blob_len - 3] ^= 0x01;
            char *gp = tu_path(state, "global.safetensors");
            ck_assert_int_eq(tu_write_file(gp, old, r.blob_len), 0);
            free(gp);
            free(old);
        }
        server_t sv;
        g_hostile = k ? PLAIT_ADAPTER_DELTA : PLAIT_ADAPTER_SEEDED;
        server_start(&sv, FAKE_TASK, &r);
        g_hostile = PLAIT_ADAPTER_FULL;
        plait_agent_t *a = make_agent(state, sv.f.port, NULL);
        plait_agent_result_t res;
        int rc = plait_agent_run_once(a, &res);
        server_join(&sv);
        ck_assert_msg(sv.f.fail[0] == 0, "fake server: %s", sv.f.fail);
        ck_assert_msg(rc == 0, "run_once: %s", plait_errmsg());
        ck_assert_int_eq(res.outcome, PLAIT_AGENT_OUT_ACKED);
        ck_assert_int_eq(sv.f.adapter_requests, 2);
        ck_assert_uint_ne(sv.f.accept_first & (1u << PLAIT_ADAPTER_SEEDED), 0);
        ck_assert_int_eq(sv.f.base_first, k);
        ck_assert_uint_eq(sv.f.accept_last, 0); /* the fallback asks for the file only */
        char *gp = tu_path(state, "global.safetensors");
        size_t n = 0;
        uint8_t *got = tu_read_file(gp, &n);
        ck_assert_uint_eq(n, r.blob_len);
        ck_assert_mem_eq(got, r.blob, n);
        free(got);
        free(gp);
        plait_agent_destroy(a);
        server_free(&sv);
        free(state);
    }
    round_free(&r);
}
END_TEST

static int has_bytes(const uint8_t *b, size_t n, const char *needle)
{
    size_t k = strlen(needle);
    for (size_t i = 0; i + k <= n; i++)
        if (memcmp(b + i, needle, k) == 0) return 1;
    return 0;
}

/* Files under dir (not recursive) containing needle; modes of regular files that are not 0600. */
static void scan_dir(const char *dir, const char *needle, int *hits, int *loose, char *what, size_t cap)
{
    DIR *d = opendir(dir);
    ck_assert_ptr_nonnull(d);
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
        char *p = tu_path(dir, e->d_name);
        struct stat sb;
        ck_assert_int_eq(lstat(p, &sb), 0);
        if (S_ISREG(sb.st_mode)) {
            if ((sb.st_mode & 0777) != 0600) {
                (*loose)++;
                snprintf(what, cap, "%.100s mode %o", e->d_name, (unsigned)(sb.st_mode & 0777));
            }
            size_t n = 0;
            uint8_t *b = tu_read_file(p, &n);
            if (b && has_bytes(b, n, needle)) {
                (*hits)++;
                snprintf(what, cap, "%.100s holds the marker", e->d_name);
            }
            free(b);
        }
        free(p);
    }
    closedir(d);
}

/* A marker ingested, trained on, uploaded (one round acked, one cut mid-upload so an update is
 * pending), then `plait-agent forget --all --state`: no byte of it and no file derived from it
 * is left under the store's and the state's directories; every file there is 0600 under umask
 * 022. */
START_TEST(test_forget_leaves_nothing)
{
    static const char marker[] = "QZXV-marker-5e1f9c";
    mode_t old_mask = umask(022);
    char *sdir = fresh_state("agent_forget_db");
    char *state = fresh_state("agent_forget_st");
    char *tdir = fresh_state("agent_forget_txt");
    char *db = tu_path(sdir, "user.db");
    char *txt = tu_path(tdir, "in.txt");
    char *out = tu_path(tdir, "out.txt");
    char *bin = tu_path(PLAIT_BINARY_DIR, "client/plait-agent");
    size_t cap = 64 * 1024, len = 0;
    char *text = malloc(cap);
    for (int i = 0; i < 40; i++)
        len += (size_t)snprintf(text + len, cap - len, "%s %s number %d.\n\n", texts[i % 6], marker, i);
    ck_assert_int_eq(tu_write_file(txt, text, len), 0);
    free(text);
    {
        char *argv[] = {bin, "ingest", "--db", db, "--text", txt, NULL};
        ck_assert_int_eq(run_cli(argv, out, 0, 30000), 0);
    }
    int hits = 0, loose = 0;
    char what[256] = "";
    scan_dir(sdir, marker, &hits, &loose, what, sizeof(what));
    ck_assert_msg(loose == 0, "after ingest: %s", what);
    ck_assert_int_ge(hits, 1); /* the marker really is in the store */

    round_t r;
    round_setup(&r, 40, PLAIT_LORA_MODE_FEDSA);
    server_t sv;
    for (int k = 0; k < 2; k++) {
        server_start(&sv, k == 0 ? FAKE_TASK : FAKE_DROP, &r);
        plait_agent_config_t cfg;
        base_config(&cfg, state, sv.f.port);
        cfg.store_path = db;
        plait_agent_t *a = NULL;
        ck_assert_int_eq(plait_agent_create(&a, &cfg), 0);
        plait_agent_result_t res;
        int rc = plait_agent_run_once(a, &res);
        server_join(&sv);
        ck_assert_msg(sv.f.fail[0] == 0, "fake server: %s", sv.f.fail);
        if (k == 0) {
            ck_assert_msg(rc == 0, "run_once: %s", plait_errmsg());
            ck_assert_int_eq(res.outcome, PLAIT_AGENT_OUT_ACKED);
        } else {
            ck_assert_int_ne(rc, 0); /* cut mid-upload */
        }
        plait_agent_destroy(a);
        server_free(&sv);
        r.task.round_id++;
    }
    round_free(&r);
    char *personal = tu_path(state, "personal.safetensors");
    char *pending = tu_path(state, "pending.upd");
    char *tmp = tu_path(state, ".personal.safetensors.tmp");
    /* Two rounds chose a serving adapter: the second went to the other slot and the first's
     * file is gone (serve.txt names the one in use). */
    char *serve = tu_path(state, "serve-b.safetensors"), *serve0 = tu_path(state, "serve.safetensors");
    ck_assert_int_eq(access(personal, F_OK), 0);
    ck_assert_int_eq(access(pending, F_OK), 0);
    ck_assert_int_eq(access(serve, F_OK), 0);
    ck_assert_int_eq(access(serve0, F_OK), -1);
    {
        char sp[4096];
        ck_assert_int_eq(plait_agent_serving(state, sp, sizeof(sp), NULL, 0), 0);
        ck_assert_str_eq(sp, serve);
    }
    free(serve0);
    {
        char *argv[] = {bin, "info", "--db", db, "--state", state, NULL};
        ck_assert_int_eq(run_cli(argv, out, 0, 30000), 0);
        ck_assert(file_has(out, "serving adapter: "));
        ck_assert(file_has(out, "validation loss") || file_has(out, "on validation"));
    }
    {
        /* generate --state serves the chosen adapter with its output bias: a bias that overwhelms one token
         * changes greedy text; --adapter (the same file) serves no bias. */
        size_t V = 512; /* stories260K */
        uint8_t *img = calloc(8 + 4 * V, 1);
        memcpy(img, "PLB2", 4);
        img[4] = (uint8_t)V, img[5] = (uint8_t)(V >> 8);
        float big = 1000.0f;
        uint32_t u;
        memcpy(&u, &big, 4);
        for (int k = 0; k < 4; k++) img[8 + 4 * 300 + (size_t)k] = (uint8_t)(u >> (8 * k));
        char *bfile = tu_path(state, "serve_bias-b.bin"), *sinfo = tu_path(state, "serve.txt");
        const char *line = "personal 1.0 3.0 2.9 2.9 5 100 2 1 1 2.8\n";
        ck_assert_int_eq(tu_write_file(bfile, img, 8 + 4 * V), 0);
        ck_assert_int_eq(tu_write_file(sinfo, line, strlen(line)), 0);
        char *gen1 = tu_path(sdir, "gen1.txt"), *gen2 = tu_path(sdir, "gen2.txt");
        char *a1[] = {bin, "generate", "--state", state, "--model", g_model, "--tokenizer", g_tok, "--prompt", "ROMEO",
                      "--temperature", "0", "--steps", "12", NULL};
        ck_assert_int_eq(run_cli(a1, gen1, 0, 30000), 0);
        ck_assert(file_has(gen1, "plus its output bias"));
        char *a2[] = {bin, "generate", "--adapter", serve, "--model", g_model, "--tokenizer", g_tok, "--prompt", "ROMEO",
                      "--temperature", "0", "--steps", "12", NULL};
        ck_assert_int_eq(run_cli(a2, gen2, 0, 30000), 0);
        size_t n1, n2;
        uint8_t *t1 = tu_read_file(gen1, &n1), *t2 = tu_read_file(gen2, &n2);
        ck_assert(t1 && t2);
        const char *g1 = strstr((const char *)t1, "ROMEO"), *g2 = strstr((const char *)t2, "ROMEO");
        ck_assert(g1 && g2);
        ck_assert_msg(strcmp(g1, g2) != 0, "the bias changed nothing: %s", g1);
        free(t1);
        free(t2);
        unlink(gen1);
        unlink(gen2);
        free(gen1);
        free(gen2);
        free(bfile);
        free(sinfo);
        free(img);
    }
    {
        /* generate --state serves the kNN memory too: a memory of one entry with lambda 1 makes every next
         * token its token; a memory for another width is refused by name. */
        plait_knn_t knn;
        plait_knn_init(&knn);
        ck_assert_int_eq(plait_knn_setup(&knn, 64, 1), 0); /* stories260K: C = 64 */
        float key[64] = {0};
        ck_assert_int_eq(plait_knn_add(&knn, key, 300), 0);
        knn.k = 1;
        knn.tau = 1.0;
        knn.lambda = 1.0;
        uint8_t *kimg = NULL;
        size_t klen = 0;
        ck_assert_int_eq(plait_knn_save_mem(&knn, &kimg, &klen), 0);
        char *kfile = tu_path(state, "serve_knn-b.bin"), *sinfo = tu_path(state, "serve.txt");
        const char *line = "personal 1.0 3.0 2.9 2.9 5 100 2 1 0 2.9 1 2.5\n";
        ck_assert_int_eq(tu_write_file(kfile, kimg, klen), 0);
        ck_assert_int_eq(tu_write_file(sinfo, line, strlen(line)), 0);
        plait_knn_t back;
        plait_knn_init(&back);
        ck_assert_int_eq(plait_agent_serving_knn(state, &back, 64, 512), 0);
        ck_assert_uint_eq(back.n, 1);
        ck_assert_int_eq(plait_agent_serving_knn(state, &back, 32, 512), PLAIT_EPROTO);
        ck_assert_ptr_nonnull(strstr(plait_errmsg(), "serve_knn-b.bin"));
        plait_knn_free(&back);
        char *gen = tu_path(sdir, "gen3.txt");
        char *a1[] = {bin, "generate", "--state", state, "--model", g_model, "--tokenizer", g_tok, "--prompt", "ROMEO",
                      "--temperature", "0", "--steps", "16", NULL};
        ck_assert_int_eq(run_cli(a1, gen, 0, 30000), 0);
        ck_assert(file_has(gen, "plus its kNN memory"));
        plait_tok_t tok;
        plait_tok_init(&tok);
        ck_assert_int_eq(plait_tok_load(&tok, g_tok, 512), 0);
        const char *piece = plait_tok_decode(&tok, 300, 300, NULL);
        ck_assert_ptr_nonnull(piece);
        char want[128];
        snprintf(want, sizeof(want), "%s%s%s", piece, piece, piece); /* the memory's token, again and again */
        ck_assert_msg(file_has(gen, want), "no run of token 300 (%s)", piece);
        plait_tok_free(&tok);
        /* A line without the memory's fields (written before it existed) serves none. */
        const char *old_line = "personal 1.0 3.0 2.9 2.9 5 100 2 1 0 2.9\n";
        ck_assert_int_eq(tu_write_file(sinfo, old_line, strlen(old_line)), 0);
        ck_assert_int_eq(plait_agent_serving_knn(state, &back, 64, 512), PLAIT_ENOENT);
        ck_assert_int_eq(tu_write_file(sinfo, line, strlen(line)), 0);
        unlink(gen);
        free(gen);
        free(kfile);
        free(sinfo);
        free(kimg);
        plait_knn_free(&knn);
    }
    /* what a crash mid-write would leave */
    ck_assert_int_eq(tu_write_file(tmp, marker, sizeof(marker)), 0);
    ck_assert_int_eq(chmod(tmp, 0600), 0);
    hits = loose = 0;
    scan_dir(sdir, marker, &hits, &loose, what, sizeof(what));
    scan_dir(state, marker, &hits, &loose, what, sizeof(what));
    ck_assert_msg(loose == 0, "after training: %s", what);

    {
        char *bias = tu_path(state, "serve_bias-b.bin"); /* there when the device kept an output bias */
        char *kmem = tu_path(state, "serve_knn-b.bin"); /* and its kNN memory (written above) */
        int has_bias = access(bias, F_OK) == 0, has_knn = access(kmem, F_OK) == 0;
        char erased[64];
        snprintf(erased, sizeof(erased), "erased %d derived files", 5 + has_bias + has_knn);
        char *argv[] = {bin, "forget", "--db", db, "--all", "--state", state, NULL};
        ck_assert_int_eq(run_cli(argv, out, 0, 30000), 0);
        ck_assert(file_has(out, "erased 40 records"));
        /* personal, pending, tmp, serve, serve.txt (and serve_bias-b.bin, serve_knn-b.bin: the second round
         * used slot 1) */
        ck_assert_msg(file_has(out, erased), "wanted '%s'", erased);
        ck_assert_int_eq(access(bias, F_OK), -1);
        ck_assert_int_eq(access(kmem, F_OK), -1);
        free(bias);
        free(kmem);
    }
    ck_assert_int_eq(access(serve, F_OK), -1);
    free(serve);
    ck_assert_int_eq(access(personal, F_OK), -1);
    ck_assert_int_eq(access(pending, F_OK), -1);
    ck_assert_int_eq(access(tmp, F_OK), -1);
    hits = loose = 0;
    what[0] = 0;
    scan_dir(sdir, marker, &hits, &loose, what, sizeof(what));
    scan_dir(state, marker, &hits, &loose, what, sizeof(what));
    ck_assert_msg(hits == 0 && loose == 0, "after forget: %s", what);
    /* Without --state the command says what it left. */
    {
        char *argv[] = {bin, "forget", "--db", db, "--all", NULL};
        ck_assert_int_eq(run_cli(argv, out, 0, 30000), 0);
        ck_assert(file_has(out, "no --state given"));
    }
    umask(old_mask);
    free(personal);
    free(pending);
    free(tmp);
    free(bin);
    free(out);
    free(txt);
    free(db);
    free(tdir);
    free(state);
    free(sdir);
}
END_TEST

START_TEST(test_create_errors)
{
    char *state = fresh_state("agent_create");
    plait_agent_config_t cfg;
    base_config(&cfg, state, 7443);
    plait_agent_t *a = NULL;
    cfg.key_path = g_srv_crt; /* does not exist */
    ck_assert_int_ne(plait_agent_create(&a, &cfg), 0);
    ck_assert_ptr_null(a);
    base_config(&cfg, state, 7443);
    cfg.model_path = g_tok; /* not a checkpoint */
    ck_assert_int_eq(plait_agent_create(&a, &cfg), PLAIT_EPROTO);
    base_config(&cfg, state, 7443);
    /* A foreign state file is refused rather than guessed. */
    char *sp = tu_path(state, "state");
    ck_assert_int_eq(tu_write_file(sp, "garbage", 7), 0);
    ck_assert_int_eq(plait_agent_create(&a, &cfg), PLAIT_EPROTO);
    unlink(sp);
    /* Words stored for a round that was acknowledged (a crash before they were deleted) are
     * dropped. */
    plait__agent_state_t st = {.last_uploaded = 3, .last_acked = 3};
    ck_assert_int_eq(plait__agent_state_save(state, &st), 0);
    uint32_t words[3] = {1, 2, 3};
    plait__agent_pending_t p = {
        .round_id = 3, .adapter_version = 1, .num_examples = 5, .words = words, .n_words = 3};
    ck_assert_int_eq(plait__agent_pending_save(state, &p), 0);
    ck_assert_int_eq(plait_agent_create(&a, &cfg), 0);
    plait__agent_pending_t q;
    ck_assert_int_eq(plait__agent_pending_load(state, &q), PLAIT_ENOENT);
    plait_agent_destroy(a);
    /* ... while words for a round not yet acknowledged are kept for the re-send. */
    p.round_id = 4;
    ck_assert_int_eq(plait__agent_pending_save(state, &p), 0);
    ck_assert_int_eq(plait_agent_create(&a, &cfg), 0);
    ck_assert_int_eq(plait__agent_pending_load(state, &q), 0);
    ck_assert_uint_eq(q.round_id, 4);
    plait__agent_pending_free(&q);
    plait_agent_destroy(a);
    free(sp);
    free(state);
}
END_TEST

Suite *agent_suite(void)
{
    Suite *s = suite_create("agent");
    TCase *tc = tcase_create("config");
    tcase_add_unchecked_fixture(tc, fixture_up, fixture_down);
    tcase_add_test(tc, test_config);
    tcase_add_test(tc, test_embed_config);
    tcase_add_test(tc, test_create_errors);
    suite_add_tcase(s, tc);

    tc = tcase_create("pipeline");
    tcase_add_test(tc, test_pipeline_matches_primitives);
    tcase_add_test(tc, test_pipeline_clip_bit);
    tcase_add_test(tc, test_decline_codes);
    tcase_add_test(tc, test_eval_words);
    tcase_add_test(tc, test_pipeline_small_update_not_clipped);
    suite_add_tcase(s, tc);

    tc = tcase_create("state");
    tcase_add_test(tc, test_state_files);
    tcase_add_test(tc, test_state_files_not_regular);
    tcase_add_test(tc, test_task_decision);
    tcase_add_test(tc, test_backoff);
    suite_add_tcase(s, tc);

    tc = tcase_create("loopback");
    tcase_add_unchecked_fixture(tc, fixture_up, fixture_down);
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_loopback_round);
    tcase_add_test(tc, test_loopback_interrupted_upload_resent);
    tcase_add_test(tc, test_loopback_fedsa_personal_b);
    tcase_add_test(tc, test_loopback_come_back_and_error);
    tcase_add_test(tc, test_not_eligible);
    tcase_add_test(tc, test_run_backoff_and_stop);
    tcase_add_test(tc, test_loopback_keepalive_and_deadline);
    tcase_add_test(tc, test_loopback_stop_during_training);
    tcase_add_test(tc, test_cli_join);
    tcase_add_test(tc, test_loopback_fedit_local_dp_and_cache);
    tcase_add_test(tc, test_loopback_declines);
    tcase_add_test(tc, test_loopback_download_resume);
    tcase_add_test(tc, test_loopback_hostile_encoding);
    tcase_add_test(tc, test_loopback_task_chunk_limit_and_round_end);
    tcase_add_test(tc, test_forget_leaves_nothing);
    suite_add_tcase(s, tc);
    return s;
}
