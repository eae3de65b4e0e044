/*
 * check_knn.c: the device's kNN memory (client/knn.c): the search finds the
 * k nearest entries in order, earlier entries first on ties (checked
 * against a stable sort, on integer keys where float distances are exact);
 * the vote is the known weighted share; the mixture is a distribution equal
 * to (1 - lambda) softmax + lambda p_knn; the file image round-trips and
 * every malformed field is refused by name.
 */
#include <check.h>
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "plait/knn.h"
#include "testutil.h"

static uint64_t rng = 88172645463325252ull;
static uint32_t next_u32(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (uint32_t)(rng >> 11);
}

START_TEST(test_search_matches_stable_sort)
{
    for (int trial = 0; trial < 200; trial++) {
        size_t C = 1 + next_u32() % 17, n = 1 + next_u32() % 300, k = 1 + next_u32() % 80;
        plait_knn_t s;
        plait_knn_init(&s);
        ck_assert_int_eq(plait_knn_setup(&s, C, n), 0);
        float *key = malloc(C * sizeof(float)), *q = malloc(C * sizeof(float));
        int *keys = malloc(n * C * sizeof(int));
        for (size_t i = 0; i < n; i++) {
            for (size_t c = 0; c < C; c++) key[c] = (float)(keys[i * C + c] = (int)(next_u32() % 7) - 3);
            ck_assert_int_eq(plait_knn_add(&s, key, (int32_t)i), 0);
        }
        for (size_t c = 0; c < C; c++) q[c] = (float)((int)(next_u32() % 7) - 3);
        /* Reference: exact integer distances, a stable selection (the earlier entry first on ties). */
        long *dist = malloc(n * sizeof(long));
        char *taken = calloc(n, 1);
        for (size_t i = 0; i < n; i++) {
            long d = 0;
            for (size_t c = 0; c < C; c++) {
                long e = keys[i * C + c] - (long)q[c];
                d += e * e;
            }
            dist[i] = d;
        }
        float d[PLAIT_KNN_MAX_K];
        int32_t y[PLAIT_KNN_MAX_K];
        size_t r = plait_knn_search(&s, q, k, d, y);
        size_t want = k < n ? k : n;
        if (want > PLAIT_KNN_MAX_K) want = PLAIT_KNN_MAX_K;
        ck_assert_uint_eq(r, want);
        for (size_t j = 0; j < r; j++) {
            size_t bi = n;
            for (size_t i = 0; i < n; i++)
                if (!taken[i] && (bi == n || dist[i] < dist[bi])) bi = i;
            taken[bi] = 1;
            ck_assert_int_eq(y[j], (int32_t)bi);
            ck_assert_float_eq(d[j], (float)dist[bi]);
        }
        free(dist);
        free(taken);
        free(keys);
        free(key);
        free(q);
        plait_knn_free(&s);
        plait_knn_free(&s); /* twice is safe */
    }
}
END_TEST

START_TEST(test_vote_known_answer)
{
    float d[3] = {0.5f, 1.5f, 2.5f};
    int32_t y[3] = {5, 7, 5};
    double w1 = exp(-1.0), w2 = exp(-2.0);
    ck_assert_double_eq_tol(plait_knn_prob(d, y, 3, 1.0, 5), (1.0 + w2) / (1.0 + w1 + w2), 1e-12);
    ck_assert_double_eq_tol(plait_knn_prob(d, y, 3, 1.0, 7), w1 / (1.0 + w1 + w2), 1e-12);
    ck_assert_double_eq(plait_knn_prob(d, y, 3, 1.0, 9), 0.0);
    ck_assert_double_eq_tol(plait_knn_prob(d, y, 2, 1.0, 5), 1.0 / (1.0 + w1), 1e-12); /* only the first two */
    /* A large tau: equal votes; a tiny one: the nearest alone. */
    ck_assert_double_eq_tol(plait_knn_prob(d, y, 3, 1e12, 5), 2.0 / 3.0, 1e-9);
    ck_assert_double_eq_tol(plait_knn_prob(d, y, 3, 1e-3, 5), 1.0, 1e-12);
    ck_assert_double_eq(plait_knn_prob(d, y, 3, 0.0, 5), 0.0); /* no temperature: no vote */
}
END_TEST

START_TEST(test_mix_is_the_mixture)
{
    const size_t C = 4, V = 11, n = 40;
    plait_knn_t s;
    plait_knn_init(&s);
    ck_assert_int_eq(plait_knn_setup(&s, C, n), 0);
    float key[4];
    for (size_t i = 0; i < n; i++) {
        for (size_t c = 0; c < C; c++) key[c] = (float)(next_u32() % 1000) / 250.0f;
        ck_assert_int_eq(plait_knn_add(&s, key, (int32_t)(next_u32() % V)), 0);
    }
    float q[4] = {1.0f, 2.0f, 0.5f, 3.0f}, lg[11], mixed[11];
    for (size_t v = 0; v < V; v++) lg[v] = (float)v * 0.3f - 1.0f;
    memcpy(mixed, lg, sizeof(lg));
    ck_assert_int_eq(plait_knn_mix_logits(&s, q, mixed, V), 0); /* lambda 0: unchanged */
    ck_assert(memcmp(mixed, lg, sizeof(lg)) == 0);
    s.k = 8;
    s.tau = 0.7;
    s.lambda = 0.3;
    ck_assert_int_eq(plait_knn_mix_logits(&s, q, mixed, V), 0);
    float d[PLAIT_KNN_MAX_K];
    int32_t y[PLAIT_KNN_MAX_K];
    size_t r = plait_knn_search(&s, q, 8, d, y);
    ck_assert_uint_eq(r, 8);
    double z = 0.0, tot = 0.0;
    for (size_t v = 0; v < V; v++) z += exp((double)lg[v]);
    for (size_t v = 0; v < V; v++) {
        double want = 0.7 * exp((double)lg[v]) / z + 0.3 * plait_knn_prob(d, y, r, 0.7, (int32_t)v);
        ck_assert_double_eq_tol(exp((double)mixed[v]), want, 1e-6);
        tot += exp((double)mixed[v]);
    }
    ck_assert_double_eq_tol(tot, 1.0, 1e-5);
    /* A memory token outside the vocabulary is refused, not read past. */
    ck_assert_int_eq(plait_knn_mix_logits(&s, q, mixed, 3), PLAIT_EINVAL);
    plait_knn_free(&s);
}
END_TEST

START_TEST(test_add_checks)
{
    plait_knn_t s;
    plait_knn_init(&s);
    ck_assert_int_eq(plait_knn_setup(&s, 0, 4), PLAIT_EINVAL);
    ck_assert_int_eq(plait_knn_setup(&s, 2, 0), PLAIT_EINVAL);
    ck_assert_int_eq(plait_knn_setup(&s, 2, 2), 0);
    float k1[2] = {1, 2}, bad[2] = {NAN, 0}, big[2] = {3e38f, 3e38f}, large[2] = {1e16f, 0};
    ck_assert_int_eq(plait_knn_add(&s, bad, 1), PLAIT_EINVAL);
    ck_assert_int_eq(plait_knn_add(&s, big, 1), PLAIT_EINVAL);
    ck_assert_int_eq(plait_knn_add(&s, large, 1), PLAIT_EINVAL); /* finite, but its square norm is 1e32 */
    ck_assert_int_eq(plait_knn_add(&s, k1, -1), PLAIT_EINVAL);
    ck_assert_int_eq(plait_knn_add(&s, k1, 1), 0);
    ck_assert_int_eq(plait_knn_add(&s, k1, 2), 0);
    ck_assert_int_eq(plait_knn_add(&s, k1, 3), PLAIT_ETOOBIG);
    ck_assert_uint_eq(s.n, 2);
    plait_knn_free(&s);
    ck_assert_uint_eq(s.n, 0);
    ck_assert_ptr_null(s.keys);
}
END_TEST

static void put32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i));
}
static void put_f64(uint8_t *p, double x)
{
    uint64_t u;
    memcpy(&u, &x, 8);
    put32(p, (uint32_t)u);
    put32(p + 4, (uint32_t)(u >> 32));
}

/* A mutated copy of img must be refused with code and a message naming what. */
static void refused(const uint8_t *img, size_t len, size_t off, const uint8_t *patch, size_t plen, int code,
                    const char *what)
{
    uint8_t *b = malloc(len);
    memcpy(b, img, len);
    memcpy(b + off, patch, plen);
    plait_knn_t s;
    plait_knn_init(&s);
    ck_assert_int_eq(plait_knn_load_mem(&s, b, len, 3, 10), code);
    ck_assert_msg(strstr(plait_errmsg(), what) != NULL, "%s: %s", what, plait_errmsg());
    ck_assert_uint_eq(s.n, 0);
    ck_assert_double_eq(s.lambda, 0.0);
    free(b);
}

START_TEST(test_image_round_trip_and_refusals)
{
    const size_t C = 3, V = 10, n = 5;
    plait_knn_t s, t;
    plait_knn_init(&s);
    plait_knn_init(&t);
    ck_assert_int_eq(plait_knn_setup(&s, C, n), 0);
    for (size_t i = 0; i < n; i++) {
        float key[3] = {(float)i, -0.5f * (float)i, 1e-3f};
        ck_assert_int_eq(plait_knn_add(&s, key, (int32_t)(i * 2)), 0);
    }
    uint8_t *img = NULL;
    size_t len = 0;
    ck_assert_int_eq(plait_knn_save_mem(&s, &img, &len), PLAIT_EINVAL); /* off (lambda 0): nothing to serve */
    ck_assert_ptr_null(img);
    s.k = 3;
    s.tau = 0.25;
    s.lambda = 0.4;
    ck_assert_int_eq(plait_knn_save_mem(&s, &img, &len), 0);
    ck_assert_uint_eq(len, 36 + n * C * 4 + n * 4);
    ck_assert_int_eq(plait_knn_load_mem(&t, img, len, C, V), 0);
    ck_assert_uint_eq(t.n, n);
    ck_assert_int_eq(t.k, 3);
    ck_assert_double_eq(t.tau, 0.25);
    ck_assert_double_eq(t.lambda, 0.4);
    ck_assert(memcmp(t.keys, s.keys, n * C * sizeof(float)) == 0);
    ck_assert(memcmp(t.vals, s.vals, n * sizeof(int32_t)) == 0);
    ck_assert(memcmp(t.norms, s.norms, n * sizeof(float)) == 0);
    /* Every truncation and one byte too many. */
    for (size_t l = 0; l < len; l++) ck_assert_int_eq(plait_knn_load_mem(&t, img, l, C, V), PLAIT_EPROTO);
    uint8_t *longer = calloc(len + 1, 1);
    memcpy(longer, img, len);
    ck_assert_int_eq(plait_knn_load_mem(&t, longer, len + 1, C, V), PLAIT_EPROTO);
    ck_assert_ptr_nonnull(strstr(plait_errmsg(), "the header says"));
    free(longer);
    ck_assert_int_eq(plait_knn_load_mem(&t, img, len, 4, V), PLAIT_EMISMATCH);
    uint8_t b4[4], b8[8];
    refused(img, len, 0, (const uint8_t *)"PLK2", 4, PLAIT_EPROTO, "not a PLK1");
    put32(b4, 0);
    refused(img, len, 8, b4, 4, PLAIT_EPROTO, "entries");
    put32(b4, 0);
    refused(img, len, 12, b4, 4, PLAIT_EPROTO, "k 0");
    put32(b4, PLAIT_KNN_MAX_K + 1);
    refused(img, len, 12, b4, 4, PLAIT_EPROTO, "k 65");
    put_f64(b8, 0.0);
    refused(img, len, 16, b8, 8, PLAIT_EPROTO, "tau");
    put_f64(b8, NAN);
    refused(img, len, 16, b8, 8, PLAIT_EPROTO, "tau");
    put_f64(b8, INFINITY);
    refused(img, len, 16, b8, 8, PLAIT_EPROTO, "tau");
    put_f64(b8, 0.0);
    refused(img, len, 24, b8, 8, PLAIT_EPROTO, "lambda");
    put_f64(b8, 1.5);
    refused(img, len, 24, b8, 8, PLAIT_EPROTO, "lambda");
    put_f64(b8, NAN);
    refused(img, len, 24, b8, 8, PLAIT_EPROTO, "lambda");
    put32(b4, 1);
    refused(img, len, 32, b4, 4, PLAIT_EPROTO, "reserved");
    float nanf_ = NAN;
    memcpy(b4, &nanf_, 4);
    refused(img, len, 36 + 2 * C * 4 + 4, b4, 4, PLAIT_EPROTO, "entry 2 has a key");
    put32(b4, (uint32_t)V);
    refused(img, len, 36 + n * C * 4 + 3 * 4, b4, 4, PLAIT_EPROTO, "entry 3 holds a token outside 0..9");
    put32(b4, 0xffffffffu);
    refused(img, len, 36 + n * C * 4, b4, 4, PLAIT_EPROTO, "entry 0 holds a token");
    float huge = 1e20f; /* finite, but its square is past what distances in float can hold */
    memcpy(b4, &huge, 4);
    refused(img, len, 36 + 4 * C * 4, b4, 4, PLAIT_EPROTO, "entry 4 has a key that is not finite or too large");
    /* A count past the limit is refused before any allocation. */
    put32(b4, PLAIT_KNN_MAX_ENTRIES + 1);
    refused(img, len, 8, b4, 4, PLAIT_EPROTO, "entries");
    /* An empty memory has no image. */
    plait_knn_t e;
    plait_knn_init(&e);
    uint8_t *none = NULL;
    size_t nl = 0;
    ck_assert_int_eq(plait_knn_save_mem(&e, &none, &nl), PLAIT_EINVAL);
    free(img);
    plait_knn_free(&s);
    plait_knn_free(&t);
}
END_TEST

Suite *knn_suite(void)
{
    Suite *s = suite_create("knn");
    TCase *tc = tcase_create("knn");
    tcase_add_test(tc, test_search_matches_stable_sort);
    tcase_add_test(tc, test_vote_known_answer);
    tcase_add_test(tc, test_mix_is_the_mixture);
    tcase_add_test(tc, test_add_checks);
    tcase_add_test(tc, test_image_round_trip_and_refusals);
    suite_add_tcase(s, tc);
    return s;
}
