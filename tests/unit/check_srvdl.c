/*
 * check_srvdl.c: the aggregator's download encodings (aggregator/server_dl.c)
 * without sockets: a failed delta or seeded encoding is remembered for its
 * version (the O(n) attempt is not repeated for every later request), and a
 * version that leaves the current slot is kept as its arena and hash alone.
 */
#include <check.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "server_int.h"
#include "plait/log.h"

#define NP 256 /* parameters of the test adapters */

static int n_delta_warn, n_seeded_warn;

static void count_sink(plait_log_level_t level, const char *line, void *ud)
{
    (void)ud;
    if (level != PLAIT_LOG_WARN) return;
    if (strstr(line, "download delta")) n_delta_warn++;
    if (strstr(line, "seeded encoding")) n_seeded_warn++;
}

/* A version: n floats (value v + i/1000), a fake file, and its hash byte. */
static blob_t *mk_blob(uint64_t version, float v, int with_params, uint8_t tag)
{
    blob_t *b = calloc(1, sizeof(*b));
    ck_assert_ptr_nonnull(b);
    b->refs = 1;
    b->version = version;
    b->len = 8 * NP; /* larger than any delta between two of these arenas */
    b->data = calloc(1, b->len);
    memset(b->sha, tag, sizeof(b->sha));
    b->n_params = NP;
    b->n_a = NP / 2;
    if (with_params) {
        b->params = malloc(NP * sizeof(float));
        for (size_t i = 0; i < NP; i++) b->params[i] = v + (float)i / 1000.0f;
    }
    return b;
}

static plait_server_t *mk_server(void)
{
    plait_server_t *s = calloc(1, sizeof(*s));
    ck_assert_ptr_nonnull(s);
    s->cfg.download_delta_keep = 2;
    s->mode = PLAIT_LORA_MODE_FEDIT;
    return s;
}

static plait_msg_adapter_request_t delta_req(uint8_t base_tag)
{
    plait_msg_adapter_request_t r;
    memset(&r, 0, sizeof(r));
    r.round_id = 1;
    r.version = 3;
    r.accept = 1u << PLAIT_ADAPTER_DELTA;
    r.has_base = 1;
    memset(r.base_sha256, base_tag, sizeof(r.base_sha256));
    return r;
}

START_TEST(test_delta_failure_cached)
{
    plait_server_t *s = mk_server();
    s->blob = mk_blob(3, 0.5f, 1, 0x33);
    /* v2 kept without an arena: encoding a delta from it fails (as out of memory would). */
    s->hist[0] = mk_blob(2, 0.25f, 0, 0x22);
    s->hist[1] = mk_blob(1, 0.125f, 1, 0x11);
    s->n_hist = 2;
    conn_t c;
    memset(&c, 0, sizeof(c));
    c.srv = s;
    c.dl = s->blob;
    n_delta_warn = 0;
    plait_log_set_sink(count_sink, NULL);
    plait_msg_adapter_request_t r = delta_req(0x22);
    for (int k = 0; k < 3; k++) {
        ck_assert_int_eq(plait__srv_dl_choose(&c, &r), 0);
        ck_assert_int_eq(c.dl_enc, PLAIT_ADAPTER_FULL);
        ck_assert_ptr_eq(c.dl_data, s->blob->data);
    }
    ck_assert_int_eq(n_delta_warn, 1); /* tried once, not once per request */
    ck_assert_uint_eq(s->blob->n_delta, 1);
    ck_assert_ptr_null(s->blob->delta[0].data);
    /* A base that works is encoded once and then served from the cache. */
    r = delta_req(0x11);
    ck_assert_int_eq(plait__srv_dl_choose(&c, &r), 0);
    ck_assert_int_eq(c.dl_enc, PLAIT_ADAPTER_DELTA);
    const uint8_t *first = c.dl_data;
    ck_assert_int_eq(plait__srv_dl_choose(&c, &r), 0);
    ck_assert_ptr_eq(c.dl_data, first);
    ck_assert_uint_eq(s->blob->n_delta, 2);
    ck_assert_int_eq(n_delta_warn, 1);
    plait_log_set_sink(NULL, NULL);
    plait__srv_hist_clear(s);
    plait__srv_blob_unref(s->blob);
    free(s);
}
END_TEST

START_TEST(test_seeded_failure_cached)
{
#if defined(__SANITIZE_ADDRESS__)
    /* ASan aborts on an allocation this large instead of returning NULL. */
    return;
#endif
    plait_server_t *s = mk_server();
    s->mode = PLAIT_LORA_MODE_FFA;
    s->blob = mk_blob(3, 0.5f, 1, 0x33);
    /* A B span no allocation can hold: the seeded encoding fails (its arena is never read). */
    s->blob->n_params = SIZE_MAX / 8;
    s->blob->n_a = 0;
    conn_t c;
    memset(&c, 0, sizeof(c));
    c.srv = s;
    c.dl = s->blob;
    n_seeded_warn = 0;
    plait_log_set_sink(count_sink, NULL);
    plait_msg_adapter_request_t r;
    memset(&r, 0, sizeof(r));
    r.round_id = 1;
    r.version = 3;
    r.accept = 1u << PLAIT_ADAPTER_SEEDED;
    for (int k = 0; k < 3; k++) {
        ck_assert_int_eq(plait__srv_dl_choose(&c, &r), 0);
        ck_assert_int_eq(c.dl_enc, PLAIT_ADAPTER_FULL);
    }
    ck_assert_int_eq(n_seeded_warn, 1);
    ck_assert_int_eq(s->blob->seeded_failed, 1);
    plait_log_set_sink(NULL, NULL);
    s->blob->n_params = NP;
    plait__srv_blob_unref(s->blob);
    free(s);
}
END_TEST

START_TEST(test_hist_keeps_arena_only)
{
    plait_server_t *s = mk_server();
    blob_t *old = mk_blob(2, 0.25f, 1, 0x22);
    old->delta[0].data = malloc(16);
    old->delta[0].len = 16;
    old->n_delta = 1;
    old->refs = 2; /* a connection is still sending it */
    float *arena = old->params;
    uint8_t *file = old->data;
    plait__srv_hist_push(s, old);
    ck_assert_uint_eq(s->n_hist, 1);
    blob_t *h = s->hist[0];
    ck_assert_ptr_ne(h, old);
    ck_assert_ptr_eq(h->params, arena); /* moved, not copied */
    ck_assert_ptr_null(h->data);
    ck_assert_uint_eq(h->n_delta, 0);
    ck_assert_uint_eq(h->version, 2);
    ck_assert_int_eq(h->sha[0], 0x22);
    ck_assert_ptr_null(old->params); /* the connection keeps the file it sends */
    ck_assert_ptr_eq(old->data, file);
    ck_assert_int_eq(old->refs, 1);
    plait__srv_blob_unref(old);
    /* The history never holds more than download_delta_keep versions. */
    plait__srv_hist_push(s, mk_blob(3, 0.5f, 1, 0x33));
    plait__srv_hist_push(s, mk_blob(4, 0.75f, 1, 0x44));
    ck_assert_uint_eq(s->n_hist, 2);
    ck_assert_uint_eq(s->hist[0]->version, 4);
    ck_assert_uint_eq(s->hist[1]->version, 3);
    plait__srv_hist_clear(s);
    free(s);
}
END_TEST

Suite *srvdl_suite(void)
{
    Suite *su = suite_create("srvdl");
    TCase *tc = tcase_create("encodings");
    tcase_add_test(tc, test_delta_failure_cached);
    tcase_add_test(tc, test_seeded_failure_cached);
    tcase_add_test(tc, test_hist_keeps_arena_only);
    suite_add_tcase(su, tc);
    return su;
}
