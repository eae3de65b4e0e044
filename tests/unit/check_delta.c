/*
 * check_delta.c: the adapter download delta (lib/delta.c): exact and
 * quantized deltas rebuild bit for bit, the quantized commit is what the
 * device rebuilds, and hostile deltas are refused with a message naming
 * what was wrong.
 */
#include <check.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "plait/delta.h"
#include "plait/rng.h"

#define N 1000

static void fill(float *prev, float *next, size_t n, uint64_t seed)
{
    plait_rng_t r;
    plait_rng_seed_u64(&r, seed, 0);
    for (size_t i = 0; i < n; i++) {
        prev[i] = (float)(plait_rng_uniform(&r) - 0.5);
        /* a small change for most, none for some, a large one for a few */
        double u = plait_rng_uniform(&r);
        next[i] = i % 7 == 0 ? prev[i]
                  : u < 0.01 ? prev[i] * -3.0f
                             : prev[i] + (float)((u - 0.5) * 1e-3);
    }
}

START_TEST(exact_roundtrip_bit_exact)
{
    float prev[N], next[N], got[N];
    fill(prev, next, N, 1);
    next[3] = -0.0f; /* signed zero survives */
    uint8_t *d;
    size_t len;
    ck_assert_int_eq(plait_delta_encode_exact(prev, next, N, &d, &len), 0);
    ck_assert_uint_lt(len, N * 4); /* compact: most words cost 2 or 3 bytes */
    ck_assert_int_eq(plait_delta_apply(prev, N, d, len, got), 0);
    ck_assert_int_eq(memcmp(got, next, sizeof(got)), 0);
    /* in place */
    memcpy(got, prev, sizeof(got));
    ck_assert_int_eq(plait_delta_apply(got, N, d, len, got), 0);
    ck_assert_int_eq(memcmp(got, next, sizeof(got)), 0);
    /* an unchanged span costs 2 bits an element */
    free(d);
    ck_assert_int_eq(plait_delta_encode_exact(prev, prev, N, &d, &len), 0);
    ck_assert_uint_eq(len, PLAIT_DELTA_HEADER + N / 4);
    free(d);
}
END_TEST

START_TEST(quant_commit_is_rebuilt_exactly)
{
    static const unsigned bits[2] = {8, 16};
    static const size_t blocks[3] = {1, 64, 333};
    for (int b = 0; b < 2; b++)
        for (int k = 0; k < 3; k++) {
            float prev[N], target[N], com[N], got[N];
            fill(prev, target, N, 2 + (uint64_t)k);
            uint8_t *d;
            size_t len;
            ck_assert_int_eq(
                plait_delta_encode_quant(prev, target, N, bits[b], blocks[k], com, &d, &len), 0);
            ck_assert_int_eq(plait_delta_apply(prev, N, d, len, got), 0);
            ck_assert_int_eq(memcmp(got, com, sizeof(got)), 0);
            /* the commit is within half a step of the target: step = block max / qmax */
            double qmax = (double)((1u << (bits[b] - 1)) - 1);
            for (size_t s = 0; s < N; s += blocks[k]) {
                size_t m = N - s < blocks[k] ? N - s : blocks[k];
                double mx = 0;
                for (size_t i = s; i < s + m; i++)
                    mx = fmax(mx, fabs((double)target[i] - prev[i]));
                for (size_t i = s; i < s + m; i++)
                    ck_assert(fabs((double)com[i] - target[i]) <=
                              mx / qmax * 0.5 + 1e-6 * fabs((double)target[i]) + 1e-12);
            }
            free(d);
        }
}
END_TEST

START_TEST(quant_unchanged_blocks_are_small)
{
    float prev[N], com[N];
    for (size_t i = 0; i < N; i++)
        prev[i] = (float)i * 0.001f;
    uint8_t *d;
    size_t len;
    ck_assert_int_eq(plait_delta_encode_quant(prev, prev, N, 8, 100, com, &d, &len), 0);
    ck_assert_uint_eq(len, PLAIT_DELTA_HEADER + 10 * 4);
    ck_assert_int_eq(memcmp(com, prev, sizeof(com)), 0);
    free(d);
    float bad[N];
    memcpy(bad, prev, sizeof(bad));
    bad[5] = INFINITY;
    ck_assert_int_eq(plait_delta_encode_quant(prev, bad, N, 8, 100, com, &d, &len), PLAIT_EINVAL);
    ck_assert_int_eq(plait_delta_encode_quant(prev, prev, N, 4, 100, com, &d, &len), PLAIT_EINVAL);
}
END_TEST

static void expect_refused(const float *prev, const uint8_t *d, size_t len, int code,
                           const char *needle)
{
    float got[N];
    int rc = plait_delta_apply(prev, N, d, len, got);
    ck_assert_int_eq(rc, code);
    ck_assert_msg(strstr(plait_errmsg(), needle) != NULL, "message '%s' lacks '%s'", plait_errmsg(),
                  needle);
}

START_TEST(hostile_deltas_refused)
{
    float prev[N], next[N], com[N];
    fill(prev, next, N, 9);
    uint8_t *d, *q;
    size_t len, qlen;
    ck_assert_int_eq(plait_delta_encode_exact(prev, next, N, &d, &len), 0);
    ck_assert_int_eq(plait_delta_encode_quant(prev, next, N, 8, 256, com, &q, &qlen), 0);
    uint8_t *c = malloc(len + 8);
    /* every strict prefix is refused, never read past */
    for (size_t k = 0; k < len; k += (k < 64 ? 1 : 97)) {
        uint8_t *pre = malloc(k ? k : 1);
        memcpy(pre, d, k);
        float got[N];
        ck_assert_int_lt(plait_delta_apply(prev, N, pre, k, got), 0);
        free(pre);
    }
    for (size_t k = 0; k < qlen; k += (k < 64 ? 1 : 31)) {
        uint8_t *pre = malloc(k ? k : 1);
        memcpy(pre, q, k);
        float got[N];
        ck_assert_int_lt(plait_delta_apply(prev, N, pre, k, got), 0);
        free(pre);
    }
    expect_refused(prev, d, 10, PLAIT_EPROTO, "header");
    memcpy(c, d, len);
    c[0] = 'X';
    expect_refused(prev, c, len, PLAIT_EPROTO, "magic");
    memcpy(c, d, len);
    c[4] = 2;
    expect_refused(prev, c, len, PLAIT_EPROTO, "format version");
    memcpy(c, d, len);
    c[5] = 3;
    expect_refused(prev, c, len, PLAIT_EPROTO, "kind");
    memcpy(c, d, len);
    c[12] = (uint8_t)(N + 1);
    expect_refused(prev, c, len, PLAIT_EMISMATCH, "elements");
    memcpy(c, d, len);
    c[len] = 0;
    expect_refused(prev, c, len + 1, PLAIT_EPROTO, "trailing");
    memcpy(c, d, len);
    c[6] = 8;
    expect_refused(prev, c, len, PLAIT_EPROTO, "bits");
    /* a word that turns a value into NaN: tag 3 (4 bytes) of 0x7fc00000 ^ bits(prev) */
    {
        float p1[N];
        memcpy(p1, prev, sizeof(p1));
        float nan_next[N];
        memcpy(nan_next, prev, sizeof(nan_next));
        nan_next[17] = NAN;
        uint8_t *e;
        size_t elen;
        ck_assert_int_eq(plait_delta_encode_exact(p1, nan_next, N, &e, &elen), 0);
        expect_refused(p1, e, elen, PLAIT_EPROTO, "element 17");
        free(e);
    }
    /* quantized: bad bits, block, scale, value */
    uint8_t *qc = malloc(qlen + 8);
    memcpy(qc, q, qlen);
    qc[6] = 12;
    expect_refused(prev, qc, qlen, PLAIT_EPROTO, "bits");
    memcpy(qc, q, qlen);
    memset(qc + 8, 0, 4);
    expect_refused(prev, qc, qlen, PLAIT_EPROTO, "block");
    memcpy(qc, q, qlen);
    qc[PLAIT_DELTA_HEADER + 3] = 0xff;
    qc[PLAIT_DELTA_HEADER + 2] = 0x80; /* -inf/NaN-ish */
    expect_refused(prev, qc, qlen, PLAIT_EPROTO, "scale");
    memcpy(qc, q, qlen);
    qc[PLAIT_DELTA_HEADER + 4] = 0x80; /* -128 is outside +-127 */
    expect_refused(prev, qc, qlen, PLAIT_EPROTO, "outside");
    free(qc);
    free(c);
    free(d);
    free(q);
}
END_TEST

START_TEST(wrong_base_does_not_rebuild)
{
    /* The delta is relative: applied to another base it gives another
     * version, which the device's SHA-256 check then refuses. */
    float prev[N], next[N], other[N], got[N];
    fill(prev, next, N, 4);
    fill(other, got, N, 5);
    uint8_t *d;
    size_t len;
    ck_assert_int_eq(plait_delta_encode_exact(prev, next, N, &d, &len), 0);
    ck_assert_int_eq(plait_delta_apply(other, N, d, len, got), 0);
    ck_assert_int_ne(memcmp(got, next, sizeof(got)), 0);
    free(d);
}
END_TEST

Suite *delta_suite(void)
{
    Suite *s = suite_create("delta");
    TCase *tc = tcase_create("codec");
    tcase_add_test(tc, exact_roundtrip_bit_exact);
    tcase_add_test(tc, quant_commit_is_rebuilt_exactly);
    tcase_add_test(tc, quant_unchanged_blocks_are_small);
    tcase_add_test(tc, hostile_deltas_refused);
    tcase_add_test(tc, wrong_base_does_not_rebuild);
    suite_add_tcase(s, tc);
    return s;
}
