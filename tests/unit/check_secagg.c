/*
 * check_secagg.c: the secure-aggregation library. Known-answer vectors for
 * its primitives (RFC 5869 HKDF-SHA256, RFC 8439 ChaCha20 and
 * ChaCha20-Poly1305, RFC 7748 X25519, from tests/vectors/secagg_kat.txt);
 * m-bit packing; Shamir over random subsets (t recover, t - 1 do not); the
 * parameter choice; and whole in-memory rounds (n = 8 complete graph, n = 50
 * Harary graph) with devices dropping at every stage, whose unmasked sum must
 * equal the plain sum bit for bit. Also: exactly t survivors finish and t - 1
 * fail cleanly, a request for both shares of one device is refused, a
 * substituted key fails its signature check, and a share from round r does
 * not decrypt in round r + 1.
 */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "plait/pki.h"
#include "plait/secagg.h"
#include "testutil.h"

/* ---- vectors ------------------------------------------------------------------ */

/* Find "name = hex" in the vector file and decode it; returns the length. */
static size_t vec(const char *name, uint8_t *out, size_t cap)
{
    static char *text;
    if (text == NULL) {
        char *p = tu_path(PLAIT_TEST_SOURCE_DIR "/vectors", "secagg_kat.txt");
        size_t len;
        text = (char *)tu_read_file(p, &len);
        free(p);
        ck_assert_msg(text != NULL, "tests/vectors/secagg_kat.txt missing");
    }
    size_t nl = strlen(name);
    for (const char *l = text; l && *l; l = strchr(l, '\n') ? strchr(l, '\n') + 1 : NULL) {
        if (strncmp(l, name, nl) != 0 || strncmp(l + nl, " = ", 3) != 0) continue;
        const char *h = l + nl + 3;
        size_t c = 0;
        while (h[c] && h[c] != '\n' && h[c] != '\r') c++;
        ck_assert_uint_eq(c % 2, 0);
        ck_assert_uint_le(c / 2, cap);
        char *one = strndup(h, c); /* plait_unhex wants the digits to end the string */
        ck_assert_int_eq(plait_unhex(one, out, c / 2), 0);
        free(one);
        return c / 2;
    }
    ck_abort_msg("vector %s not found", name);
    return 0;
}

START_TEST(test_hkdf_rfc5869)
{
    for (int tc = 1; tc <= 3; tc++) {
        uint8_t ikm[128], salt[128], info[128], okm[128], got[128];
        char nm[32];
        snprintf(nm, sizeof(nm), "hkdf%d_ikm", tc);
        size_t il = vec(nm, ikm, sizeof(ikm));
        snprintf(nm, sizeof(nm), "hkdf%d_salt", tc);
        size_t sl = vec(nm, salt, sizeof(salt));
        snprintf(nm, sizeof(nm), "hkdf%d_info", tc);
        size_t nl = vec(nm, info, sizeof(info));
        snprintf(nm, sizeof(nm), "hkdf%d_okm", tc);
        size_t ol = vec(nm, okm, sizeof(okm));
        ck_assert_int_eq(plait_hkdf_sha256(sl ? salt : NULL, sl, ikm, il, info, nl, got, ol), 0);
        ck_assert_mem_eq(got, okm, ol);
    }
}
END_TEST

START_TEST(test_chacha20_rfc8439)
{
    uint8_t key[32], nonce[12], pt[256], ct[256], got[256];
    ck_assert_uint_eq(vec("chacha_key", key, 32), 32);
    ck_assert_uint_eq(vec("chacha_nonce", nonce, 12), 12);
    size_t n = vec("chacha_pt", pt, sizeof(pt));
    ck_assert_uint_eq(vec("chacha_ct", ct, sizeof(ct)), n);
    ck_assert_int_eq(plait_chacha20(key, nonce, 1, pt, n, got), 0);
    ck_assert_mem_eq(got, ct, n);
}
END_TEST

START_TEST(test_aead_rfc8439)
{
    uint8_t key[32], nonce[12], aad[64], pt[256], ct[256], tag[16], got[256 + 16], back[256];
    vec("aead_key", key, 32);
    vec("aead_nonce", nonce, 12);
    size_t al = vec("aead_aad", aad, sizeof(aad));
    size_t n = vec("aead_pt", pt, sizeof(pt));
    ck_assert_uint_eq(vec("aead_ct", ct, sizeof(ct)), n);
    vec("aead_tag", tag, 16);
    ck_assert_int_eq(plait_aead_seal(key, nonce, aad, al, pt, n, got), 0);
    ck_assert_mem_eq(got, ct, n);
    ck_assert_mem_eq(got + n, tag, 16);
    ck_assert_int_eq(plait_aead_open(key, nonce, aad, al, got, n, back), 0);
    ck_assert_mem_eq(back, pt, n);
    /* A flipped bit anywhere (ciphertext, tag, AAD) fails and zeroes the output. */
    got[7] ^= 1;
    memset(back, 0xAA, n);
    ck_assert_int_eq(plait_aead_open(key, nonce, aad, al, got, n, back), PLAIT_EAUTH);
    for (size_t i = 0; i < n; i++) ck_assert_uint_eq(back[i], 0);
    got[7] ^= 1;
    aad[0] ^= 1;
    ck_assert_int_eq(plait_aead_open(key, nonce, aad, al, got, n, back), PLAIT_EAUTH);
}
END_TEST

START_TEST(test_x25519_rfc7748)
{
    uint8_t k[32], u[32], want[32], got[32];
    for (int tc = 1; tc <= 2; tc++) {
        char nm[32];
        snprintf(nm, sizeof(nm), "x25519_%d_scalar", tc);
        vec(nm, k, 32);
        snprintf(nm, sizeof(nm), "x25519_%d_u", tc);
        vec(nm, u, 32);
        snprintf(nm, sizeof(nm), "x25519_%d_out", tc);
        vec(nm, want, 32);
        ck_assert_int_eq(plait_x25519(k, u, got), 0);
        ck_assert_mem_eq(got, want, 32);
    }
    /* Section 6.1: both sides of a Diffie-Hellman exchange. */
    uint8_t a[32], b[32], apk[32], bpk[32], shared[32], nine[32] = {9};
    vec("dh_alice_sk", a, 32);
    vec("dh_alice_pk", apk, 32);
    vec("dh_bob_sk", b, 32);
    vec("dh_bob_pk", bpk, 32);
    vec("dh_shared", shared, 32);
    ck_assert_int_eq(plait_x25519(a, nine, got), 0);
    ck_assert_mem_eq(got, apk, 32);
    ck_assert_int_eq(plait_x25519(b, nine, got), 0);
    ck_assert_mem_eq(got, bpk, 32);
    ck_assert_int_eq(plait_x25519(a, bpk, got), 0);
    ck_assert_mem_eq(got, shared, 32);
    ck_assert_int_eq(plait_x25519(b, apk, got), 0);
    ck_assert_mem_eq(got, shared, 32);
    /* A low-order point (u = 0) never yields a key. */
    uint8_t zero[32] = {0};
    ck_assert_int_eq(plait_x25519(a, zero, got), PLAIT_EAUTH);
}
END_TEST

/* ---- packing ------------------------------------------------------------------ */

static uint32_t lcg(uint64_t *s)
{
    *s = *s * 6364136223846793005ull + 1442695040888963407ull;
    return (uint32_t)(*s >> 32);
}

START_TEST(test_pack_roundtrip)
{
    uint64_t s = 7;
    for (unsigned m = 1; m <= 32; m++) {
        size_t n = 1 + lcg(&s) % 300;
        uint32_t w[300], back[300], mask = m == 32 ? 0xFFFFFFFFu : (1u << m) - 1u;
        for (size_t i = 0; i < n; i++) w[i] = lcg(&s) & mask;
        size_t len = plait_pack_bits_len(n, m);
        ck_assert_uint_eq(len, (n * m + 7) / 8);
        uint8_t buf[1200];
        ck_assert_int_eq(plait_pack_bits(w, n, m, buf, sizeof(buf)), 0);
        ck_assert_int_eq(plait_unpack_bits(buf, len, n, m, back), 0);
        ck_assert_mem_eq(back, w, n * sizeof(uint32_t));
        ck_assert_int_eq(plait_unpack_bits(buf, len - 1, n, m, back), PLAIT_EPROTO);
        if ((n * m) % 8 != 0) { /* a set padding bit is malformed */
            buf[len - 1] |= 0x80;
            ck_assert_int_eq(plait_unpack_bits(buf, len, n, m, back), PLAIT_EPROTO);
        }
        ck_assert_int_eq(plait_pack_bits(w, n, m, buf, len - 1), PLAIT_ETOOBIG);
        if (m < 32) {
            w[n - 1] = mask + 1;
            ck_assert_int_eq(plait_pack_bits(w, n, m, buf, sizeof(buf)), PLAIT_EINVAL);
        }
    }
    /* 20-bit words: 1,000,000 of them take 2.5 MB, not 4 MB. */
    ck_assert_uint_eq(plait_pack_bits_len(1000000, 20), 2500000);
    ck_assert_uint_eq(plait_pack_bits_len(3, 0), 0);
    ck_assert_uint_eq(plait_pack_bits_len(3, 33), 0);
}
END_TEST

/* ---- Shamir ---------------------------------------------------------------------- */

static void drbg_det(plait_drbg_t *d, uint64_t seed)
{
    uint8_t s[8];
    for (int i = 0; i < 8; i++) s[i] = (uint8_t)(seed >> (8 * i));
    plait_drbg_init(d);
    ck_assert_int_eq(plait_drbg_seed_deterministic(d, s, 8), 0);
}

START_TEST(test_shamir_subsets)
{
    plait_drbg_t d;
    drbg_det(&d, 1);
    uint64_t s = 99;
    enum { N = 12 };
    for (int trial = 0; trial < 20; trial++) {
        uint8_t secret[32], got[32], sh[N][PLAIT_SECAGG_SHARE_LEN];
        ck_assert_int_eq(plait_drbg_random(&d, secret, 32), 0);
        if (trial == 0) memset(secret, 0xFF, 32); /* every limb at its maximum */
        uint32_t t = 1 + lcg(&s) % N, xs[N];
        for (int i = 0; i < N; i++) xs[i] = 1 + (uint32_t)i * 37u + (uint32_t)trial;
        ck_assert_int_eq(plait_shamir_split(secret, t, xs, N, &d, sh), 0);
        for (int sub = 0; sub < 10; sub++) {
            /* random subset of size t: partial Fisher-Yates over indices */
            int idx[N];
            for (int i = 0; i < N; i++) idx[i] = i;
            for (int i = 0; i < (int)t; i++) {
                int j = i + (int)(lcg(&s) % (uint32_t)(N - i)), tmp = idx[i];
                idx[i] = idx[j];
                idx[j] = tmp;
            }
            uint32_t sx[N];
            uint8_t ss[N][PLAIT_SECAGG_SHARE_LEN];
            for (uint32_t i = 0; i < t; i++) {
                sx[i] = xs[idx[i]];
                memcpy(ss[i], sh[idx[i]], PLAIT_SECAGG_SHARE_LEN);
            }
            ck_assert_int_eq(plait_shamir_combine(sx, (const uint8_t(*)[PLAIT_SECAGG_SHARE_LEN])ss, t, got), 0);
            ck_assert_mem_eq(got, secret, 32);
            if (t >= 2) {
                /* t - 1 shares: either rejected or a different value, never the secret */
                int rc = plait_shamir_combine(sx, (const uint8_t(*)[PLAIT_SECAGG_SHARE_LEN])ss, t - 1, got);
                ck_assert(rc == PLAIT_EAUTH || (rc == 0 && memcmp(got, secret, 32) != 0));
            }
        }
    }
    uint8_t secret[32] = {1}, sh[2][PLAIT_SECAGG_SHARE_LEN], got[32];
    uint32_t xs[2] = {3, 3};
    ck_assert_int_eq(plait_shamir_split(secret, 3, xs, 2, &d, sh), PLAIT_EINVAL); /* t > n */
    xs[1] = 4;
    ck_assert_int_eq(plait_shamir_split(secret, 2, xs, 2, &d, sh), 0);
    xs[1] = 3;
    ck_assert_int_eq(plait_shamir_combine(xs, (const uint8_t(*)[PLAIT_SECAGG_SHARE_LEN])sh, 2, got), PLAIT_EINVAL);
    plait_drbg_free(&d);
}
END_TEST

/* ---- parameters -------------------------------------------------------------------- */

START_TEST(test_params)
{
    unsigned m;
    ck_assert_int_eq(plait_secagg_mask_bits(16, 1000, &m), 0);
    ck_assert_uint_eq(m, 26);
    ck_assert_int_eq(plait_secagg_mask_bits(16, 1024, &m), 0);
    ck_assert_uint_eq(m, 26);
    ck_assert_int_eq(plait_secagg_mask_bits(16, 1025, &m), 0);
    ck_assert_uint_eq(m, 27);
    ck_assert_int_eq(plait_secagg_mask_bits(24, 1000, &m), PLAIT_ETOOBIG);
    ck_assert_ptr_nonnull(strstr(plait_errmsg(), "more than 32"));

    plait_secagg_params_t p;
    /* Small cohort: complete graph, t = n - ceil(dropout * n); n = 10 at 30%: t = 7. */
    ck_assert_int_eq(plait_secagg_params_choose(10, 0.3, 0.0, 20, &p), 0);
    ck_assert_int_eq(p.complete, 1);
    ck_assert_uint_eq(p.k, 9);
    ck_assert_uint_eq(p.t, 7);
    /* ... and impossible when colluders push 2t <= n + C: n = 10, 30% drop, 20% collude -> 14 <= 12 ok; 40%: */
    ck_assert_int_eq(plait_secagg_params_choose(10, 0.3, 0.4, 20, &p), PLAIT_ETHRESHOLD);

    /* Large cohorts: a sparse graph whose bound meets 2^-20, and no smaller even k does. */
    const uint32_t ns[] = {100, 1000, 10000};
    for (size_t i = 0; i < 3; i++) {
        ck_assert_int_eq(plait_secagg_params_choose(ns[i], 0.1, 0.05, 20, &p), 0);
        ck_assert_int_eq(p.complete, 0);
        ck_assert_uint_lt(p.k, ns[i] - 1);
        ck_assert(p.t > p.k / 2 && p.t <= p.k);
        double lf;
        ck_assert_int_eq(plait_secagg_params_bound(ns[i], p.k, p.t, 0.1, 0.05, &lf), 0);
        ck_assert(lf <= -20.0);
        for (uint32_t t = p.k / 2 - 1; t <= p.k - 2; t++) {
            ck_assert_int_eq(plait_secagg_params_bound(ns[i], p.k - 2, t, 0.1, 0.05, &lf), 0);
            ck_assert(lf > -20.0);
        }
    }
    ck_assert_int_eq(plait_secagg_params_choose(1000, 0.1, 0.05, 20, &p), 0);
    ck_assert_uint_lt(p.k, 200); /* far sparser than complete */

    /* Hand-computed bound: n = 20, k = 4, t = 3, 1 dropout (5%), no colluders.
     * (a) a device loses >= 2 of 4 neighbours: impossible with 1 dropout;
     * (b) 0 corrupt: 0; (c) 2 consecutive positions removed out of 1: 0. */
    double lf;
    ck_assert_int_eq(plait_secagg_params_bound(20, 4, 3, 0.05, 0.0, &lf), 0);
    ck_assert(isinf(lf) && lf < 0);
    /* n = 20, k = 4, t = 4, 2 dropouts (10%): (a) P[>= 1 of 4 neighbours among 2
     * dropped of 19] = 1 - C(17,4)/C(19,4) = 1 - 2380/3876 = 0.385965;
     * (c) P[2 given positions both dropped] = C(18,0)/C(20,2) = 1/190;
     * bound = 20 * 0.385965 + 20 / 190 = 7.8246 -> capped at 1 (log2 = 0). */
    ck_assert_int_eq(plait_secagg_params_bound(20, 4, 4, 0.1, 0.0, &lf), 0);
    ck_assert(fabs(lf) < 1e-12);
    /* n = 100, k = 4, t = 3, 1 dropout: (a) 0 (two losses needed); (c) 0 (r < k/2);
     * with 2 dropouts: (a) P[both dropped are among 4 of 99] = C(4,2)/C(99,2) = 6/4851,
     * (c) 100 * 1/C(100,2) = 100/4950; total 100 * 6/4851 + 100/4950. */
    ck_assert_int_eq(plait_secagg_params_bound(100, 4, 3, 0.02, 0.0, &lf), 0);
    double want = 100.0 * 6.0 / 4851.0 + 100.0 / 4950.0;
    ck_assert(fabs(lf - log2(want)) < 1e-9);
}
END_TEST

/* ---- whole rounds -------------------------------------------------------------------- */

/* Where a device stops: it completes every step before the named one. */
enum { FULL = 0, NO_ADVERT, NO_SHARES, NO_MASKED, NO_UNMASK };

typedef struct {
    uint32_t n;
    char *ca_crt, *ca_key;
    char **crt, **key; /* per device 1..n */
} fleet_t;

static void fleet_make(fleet_t *f, uint32_t n)
{
    plait_drbg_t d;
    drbg_det(&d, 1000 + n);
    plait_pki_config_t cfg;
    plait_pki_config_default(&cfg);
    f->n = n;
    ck_assert_int_eq(plait_pki_ca_create(&cfg, &d, &f->ca_crt, &f->ca_key), 0);
    f->crt = calloc(n + 1, sizeof(char *));
    f->key = calloc(n + 1, sizeof(char *));
    for (uint32_t i = 1; i <= n; i++) {
        char id[32];
        snprintf(id, sizeof(id), "dev-%u", (unsigned)i);
        plait_pki_cert_info_t info;
        ck_assert_int_eq(plait_pki_device_issue(&cfg, f->ca_crt, f->ca_key, id, &d, &f->crt[i], &f->key[i], &info),
                         0);
    }
    plait_drbg_free(&d);
}

static void fleet_free(fleet_t *f)
{
    for (uint32_t i = 1; i <= f->n; i++) {
        plait_pki_free_pem(f->crt[i]);
        plait_pki_free_pem(f->key[i]);
    }
    free(f->crt);
    free(f->key);
    plait_pki_free_pem(f->ca_crt);
    plait_pki_free_pem(f->ca_key);
}

static const uint8_t DEP[] = "deployment-test";

static void round_make(plait_secagg_round_t *r, uint32_t n, uint32_t k, uint32_t t, uint64_t round_id, unsigned m,
                       size_t len)
{
    plait_secagg_params_t p = {.n = n, .k = k, .t = t};
    uint8_t seed[32];
    for (int i = 0; i < 32; i++) seed[i] = (uint8_t)(i * 7 + n);
    plait_secagg_round_init(r);
    ck_assert_int_eq(plait_secagg_round_setup(r, DEP, sizeof(DEP) - 1, round_id, &p, seed, m, len), 0);
}

/* Device u's own view of a round_make() round: the same context and u's row only (what the agent
 * builds); checked against the server's full table. */
static void device_round_make(plait_secagg_round_t *dr, const plait_secagg_round_t *r, uint32_t u)
{
    uint8_t seed[32];
    for (int i = 0; i < 32; i++) seed[i] = (uint8_t)(i * 7 + r->p.n);
    plait_secagg_params_t p = {.n = r->p.n, .k = r->p.k, .t = r->p.t};
    plait_secagg_round_init(dr);
    ck_assert_int_eq(plait_secagg_round_setup_device(dr, DEP, sizeof(DEP) - 1, r->round_id, &p, seed, r->m, r->len, u),
                     0);
    ck_assert(memcmp(dr->ctx, r->ctx, sizeof(r->ctx)) == 0);
    ck_assert(memcmp(plait_secagg_neighbours(dr, u), plait_secagg_neighbours(r, u), r->p.k * sizeof(uint32_t)) == 0);
    ck_assert_ptr_null(plait_secagg_neighbours(dr, u == 1 ? 2 : 1));
}

/* A hostile participant in run_round() (0: none): bad_ct_from seals garbage
 * for the recipients in the bit set bad_ct_to (bit v: device v); bad_rev_by
 * reveals a wrong share (one bit flipped) of every other device it is asked
 * about (of the kinds in bad_rev_kinds). last_inconsistent: plait_secagg_server_inconsistent() after finish. */
static uint32_t bad_ct_from, bad_rev_by, bad_rev_kinds = 3; /* bit 1 << kind: which reveals are wrong */
static uint64_t bad_ct_to;
static size_t last_inconsistent;
static int v1_adverts; /* the server gets adverts without the commitment to b (older devices) */

/* Run one round; stage[u] says where device u stops. Returns finish()'s code;
 * on success sum holds the unmasked sum and plain the sum in the clear. */
static int run_round(const fleet_t *f, const plait_secagg_round_t *r, const int *stage, int check_chain, uint64_t seed,
                     uint32_t *sum, uint32_t *plain)
{
    uint32_t n = r->p.n, k = r->p.k;
    size_t len = r->len;
    uint32_t mask = r->m == 32 ? 0xFFFFFFFFu : (1u << r->m) - 1u;
    unsigned qbits = r->m;
    uint32_t lg = 0;
    while ((1u << lg) < n) lg++;
    qbits -= lg; /* x < 2^qbits so the sum of n never wraps */
    plait_drbg_t d;
    drbg_det(&d, seed);
    plait_secagg_device_t **dev = calloc(n + 1, sizeof(*dev));
    plait_secagg_round_t *devr = calloc(n + 1, sizeof(*devr)); /* each device's own row of the graph */
    plait_secagg_advert_t *adv = calloc(n + 1, sizeof(*adv));
    int *alive = calloc(n + 1, sizeof(int));
    plait_secagg_ct_t *cts = calloc((size_t)n * k + 1, sizeof(plait_secagg_ct_t));
    size_t n_ct = 0;
    plait_secagg_server_t *s;
    ck_assert_int_eq(plait_secagg_server_create(&s, r), 0);
    /* 0: advertise */
    for (uint32_t u = 1; u <= n; u++) {
        device_round_make(&devr[u], r, u);
        ck_assert_int_eq(plait_secagg_device_create(&dev[u], &devr[u], u, &d), 0);
        if (stage[u] == NO_ADVERT) continue;
        ck_assert_int_eq(plait_secagg_device_advertise(dev[u], f->key[u], &d, &adv[u]), 0);
        ck_assert_int_eq(plait_secagg_advert_verify(r, &adv[u], (const uint8_t *)f->crt[u], strlen(f->crt[u]), NULL),
                         0);
        plait_secagg_advert_t sa = adv[u];
        ck_assert_int_eq(sa.has_b_commit, 1);
        if (v1_adverts) sa.has_b_commit = 0;
        ck_assert_int_eq(plait_secagg_server_add_advert(s, &sa), 0);
        alive[u] = 1;
    }
    /* 1: share keys */
    for (uint32_t u = 1; u <= n; u++) {
        if (!alive[u]) continue;
        const uint32_t *nb = plait_secagg_neighbours(r, u);
        for (uint32_t i = 0; i < k; i++) {
            uint32_t v = nb[i];
            if (!alive[v]) continue;
            ck_assert_int_eq(plait_secagg_device_accept_advert(dev[u], &adv[v], (const uint8_t *)f->crt[v],
                                                               strlen(f->crt[v]) + 1, check_chain ? f->ca_crt : NULL),
                             0);
        }
    }
    for (uint32_t u = 1; u <= n; u++) {
        if (!alive[u]) continue;
        if (stage[u] == NO_SHARES) {
            alive[u] = 0;
            continue;
        }
        size_t c = 0;
        int rc = plait_secagg_device_shares(dev[u], &d, cts + n_ct, k, &c);
        if (rc == PLAIT_ETHRESHOLD) {
            alive[u] = 0;
            continue;
        }
        ck_assert_int_eq(rc, 0);
        n_ct += c;
        ck_assert_int_eq(plait_secagg_server_mark_shared(s, u), 0);
    }
    for (size_t i = 0; i < n_ct; i++) {
        if (!alive[cts[i].to]) continue;
        if (cts[i].from == bad_ct_from && cts[i].to < 64 && (bad_ct_to >> cts[i].to & 1)) {
            cts[i].ct[30] ^= 0x5A; /* the honest recipient drops this share and goes on */
            ck_assert_int_eq(plait_secagg_device_recv_share(dev[cts[i].to], &cts[i]), PLAIT_EAUTH);
        } else {
            ck_assert_int_eq(plait_secagg_device_recv_share(dev[cts[i].to], &cts[i]), 0);
        }
    }
    /* 2: masked input */
    uint32_t *x = malloc(len * sizeof(uint32_t)), *y = malloc(len * sizeof(uint32_t));
    memset(plain, 0, len * sizeof(uint32_t));
    uint64_t ls = seed;
    for (uint32_t u = 1; u <= n; u++) {
        if (!alive[u]) continue;
        if (stage[u] == NO_MASKED) {
            alive[u] = 0;
            continue;
        }
        for (size_t i = 0; i < len; i++) x[i] = qbits >= 32 ? lcg(&ls) : lcg(&ls) & ((1u << qbits) - 1u);
        int rc = plait_secagg_device_mask(dev[u], x, len, y);
        if (rc == PLAIT_ETHRESHOLD) {
            alive[u] = 0;
            continue;
        }
        ck_assert_int_eq(rc, 0);
        for (size_t i = 0; i < len; i++) plain[i] = (plain[i] + x[i]) & mask;
        /* The masked words say nothing obvious: not equal to x. */
        ck_assert(len < 8 || memcmp(x, y, len * sizeof(uint32_t)) != 0);
        ck_assert_int_eq(plait_secagg_server_add_masked(s, u, y, len), 0);
    }
    /* 3: unmask */
    int ret = 0;
    plait_secagg_reveal_t *rev = calloc(k + 1, sizeof(*rev));
    for (uint32_t v = 1; v <= n && ret == 0; v++) {
        if (!alive[v]) continue;
        const uint32_t *sv, *dp;
        size_t ns, nd, nr;
        ret = plait_secagg_server_request(s, v, &sv, &ns, &dp, &nd);
        if (ret != 0) break;
        if (stage[v] == NO_UNMASK) continue;
        ck_assert_int_eq(plait_secagg_device_unmask(dev[v], sv, ns, dp, nd, rev, k + 1, &nr), 0);
        for (size_t i = 0; i < nr && v == bad_rev_by; i++)
            if (rev[i].owner != v && (bad_rev_kinds >> rev[i].kind & 1)) rev[i].share[3] ^= 0x10;
        ck_assert_int_eq(plait_secagg_server_add_reveals(s, v, rev, nr), 0);
    }
    if (ret == 0) ret = plait_secagg_server_finish(s, sum, len);
    last_inconsistent = plait_secagg_server_inconsistent(s);
    free(rev);
    free(x);
    free(y);
    for (uint32_t u = 1; u <= n; u++) {
        plait_secagg_device_free(dev[u]);
        plait_secagg_round_free(&devr[u]);
    }
    plait_secagg_server_free(s);
    free(dev);
    free(devr);
    free(adv);
    free(alive);
    free(cts);
    plait_drbg_free(&d);
    return ret;
}

START_TEST(test_round_n10_dropouts)
{
    fleet_t f;
    fleet_make(&f, 10);
    plait_secagg_round_t r;
    round_make(&r, 10, 9, 6, 41, 24, 1000);
    /* One device drops at each stage; six finish (t = 6). */
    int stage[11] = {0, FULL, NO_ADVERT, FULL, NO_SHARES, FULL, NO_MASKED, FULL, NO_UNMASK, FULL, FULL};
    uint32_t sum[1000], plain[1000];
    ck_assert_int_eq(run_round(&f, &r, stage, 1, 5, sum, plain), 0);
    ck_assert_mem_eq(sum, plain, sizeof(sum));
    /* No dropouts at all. */
    int none[11] = {0};
    ck_assert_int_eq(run_round(&f, &r, none, 0, 6, sum, plain), 0);
    ck_assert_mem_eq(sum, plain, sizeof(sum));
    /* The full 32-bit ring works too. */
    plait_secagg_round_t r32;
    round_make(&r32, 10, 9, 6, 41, 32, 1000);
    ck_assert_int_eq(run_round(&f, &r32, stage, 0, 7, sum, plain), 0);
    ck_assert_mem_eq(sum, plain, sizeof(sum));
    plait_secagg_round_free(&r32);
    plait_secagg_round_free(&r);
    fleet_free(&f);
}
END_TEST

START_TEST(test_round_n50_harary)
{
    fleet_t f;
    fleet_make(&f, 50);
    plait_secagg_params_t p;
    ck_assert_int_eq(plait_secagg_params_choose(50, 0.1, 0.0, 20, &p), 0);
    ck_assert_int_eq(p.complete, 0);
    plait_secagg_round_t r;
    round_make(&r, 50, p.k, p.t, 77, 22, 257);
    /* 5 dropouts (10%): before advertising, after advertising, two after
     * sharing, one right after its masked input. */
    int stage[51] = {0};
    stage[3] = NO_ADVERT;
    stage[10] = NO_SHARES;
    stage[17] = NO_MASKED;
    stage[18] = NO_MASKED;
    stage[40] = NO_UNMASK;
    uint32_t sum[257], plain[257];
    ck_assert_int_eq(run_round(&f, &r, stage, 0, 8, sum, plain), 0);
    ck_assert_mem_eq(sum, plain, sizeof(sum));
    plait_secagg_round_free(&r);
    fleet_free(&f);
}
END_TEST

START_TEST(test_round_threshold_exact)
{
    fleet_t f;
    fleet_make(&f, 8);
    plait_secagg_round_t r;
    round_make(&r, 8, 7, 5, 9, 20, 300);
    uint32_t sum[300], plain[300];
    /* Exactly t = 5 devices answer the unmask request: the round finishes. */
    int ok[9] = {0, FULL, NO_UNMASK, FULL, NO_UNMASK, FULL, NO_UNMASK, FULL, FULL};
    ck_assert_int_eq(run_round(&f, &r, ok, 0, 11, sum, plain), 0);
    ck_assert_mem_eq(sum, plain, sizeof(sum));
    /* t - 1 = 4 answer: the round fails cleanly and writes no sum. */
    int bad[9] = {0, FULL, NO_UNMASK, FULL, NO_UNMASK, NO_UNMASK, NO_UNMASK, FULL, FULL};
    for (size_t i = 0; i < 300; i++) sum[i] = 0xDEADu;
    ck_assert_int_eq(run_round(&f, &r, bad, 0, 12, sum, plain), PLAIT_ETHRESHOLD);
    for (size_t i = 0; i < 300; i++) ck_assert_uint_eq(sum[i], 0xDEADu);
    /* Fewer than t masked inputs: the server refuses to start unmasking. */
    int few[9] = {0, FULL, NO_MASKED, FULL, NO_MASKED, FULL, NO_MASKED, FULL, NO_MASKED};
    ck_assert_int_eq(run_round(&f, &r, few, 0, 13, sum, plain), PLAIT_ETHRESHOLD);
    plait_secagg_round_free(&r);
    fleet_free(&f);
}
END_TEST

/* One hostile device never stops the honest ones' round, and never makes the
 * sum silently wrong (docs/secagg.md, "Hostile devices"). */
START_TEST(test_hostile_device)
{
    fleet_t f;
    fleet_make(&f, 10);
    plait_secagg_round_t r;
    round_make(&r, 10, 9, 6, 31, 24, 200);
    uint32_t sum[200], plain[200];
    int full[11] = {0};
    /* Device 3 seals garbage for devices 1, 2 and 4: they drop its shares, still
     * mask with it (the server relayed them), and the round sums exactly. */
    bad_ct_from = 3;
    bad_ct_to = (1u << 1) | (1u << 2) | (1u << 4);
    ck_assert_msg(run_round(&f, &r, full, 0, 41, sum, plain) == 0, "%s", plait_errmsg());
    ck_assert_mem_eq(sum, plain, sizeof(sum));
    /* ... also when device 3 then drops (its key comes back from the other shares). */
    int drop3[11] = {0, FULL, FULL, NO_MASKED, FULL, FULL, FULL, FULL, FULL, FULL, FULL};
    ck_assert_msg(run_round(&f, &r, drop3, 0, 42, sum, plain) == 0, "%s", plait_errmsg());
    ck_assert_mem_eq(sum, plain, sizeof(sum));
    /* Garbage for every neighbour: nobody can rebuild device 3's seed, so the
     * round fails cleanly (PLAIT_ETHRESHOLD) and writes no sum. */
    bad_ct_to = ~(uint64_t)0;
    for (size_t i = 0; i < 200; i++) sum[i] = 0xBEEFu;
    ck_assert_int_eq(run_round(&f, &r, full, 0, 43, sum, plain), PLAIT_ETHRESHOLD);
    for (size_t i = 0; i < 200; i++) ck_assert_uint_eq(sum[i], 0xBEEFu);
    bad_ct_from = 0;
    bad_ct_to = 0;

    /* Device 2 reveals a wrong share of every other device, with device 9 dropped
     * (so c_sk shares too): the wrong ones are voted out, the sum is exact, and
     * the server counts one inconsistent holder. */
    bad_rev_by = 2;
    int drop9[11] = {0, FULL, FULL, FULL, FULL, FULL, FULL, FULL, FULL, NO_MASKED, FULL};
    ck_assert_msg(run_round(&f, &r, drop9, 0, 44, sum, plain) == 0, "%s", plait_errmsg());
    ck_assert_mem_eq(sum, plain, sizeof(sum));
    ck_assert_uint_eq(last_inconsistent, 1);
    /* t + 1 = 7 answers: each seed is checked against its advert's commitment,
     * so the wrong share is left out and the sum is exact. */
    int seven[11] = {0, FULL, FULL, FULL, FULL, FULL, FULL, FULL, NO_UNMASK, NO_UNMASK, NO_UNMASK};
    ck_assert_msg(run_round(&f, &r, seven, 0, 45, sum, plain) == 0, "%s", plait_errmsg());
    ck_assert_mem_eq(sum, plain, sizeof(sum));
    /* Exactly t = 6 answers: no subset without the wrong share, and the
     * commitment catches it: the round fails cleanly, never with a wrong sum. */
    int six[11] = {0, FULL, FULL, FULL, FULL, FULL, FULL, NO_UNMASK, NO_UNMASK, NO_UNMASK, NO_UNMASK};
    for (size_t i = 0; i < 200; i++) sum[i] = 0xBEEFu;
    ck_assert_int_eq(run_round(&f, &r, six, 0, 47, sum, plain), PLAIT_EAUTH);
    for (size_t i = 0; i < 200; i++) ck_assert_uint_eq(sum[i], 0xBEEFu);
    /* v1 adverts (no commitment): with t + 1 answers the vote detects the wrong
     * seed share but cannot outvote it: PLAIT_EAUTH, no sum. */
    v1_adverts = 1;
    ck_assert_int_eq(run_round(&f, &r, seven, 0, 45, sum, plain), PLAIT_EAUTH);
    for (size_t i = 0; i < 200; i++) ck_assert_uint_eq(sum[i], 0xBEEFu);
    /* ... and with t + 3 = 9 answers (device 9 dropped) it is outvoted. */
    ck_assert_msg(run_round(&f, &r, drop9, 0, 44, sum, plain) == 0, "%s", plait_errmsg());
    ck_assert_mem_eq(sum, plain, sizeof(sum));
    v1_adverts = 0;
    /* A dropout's key is checked against its advert, so t + 1 answers suffice
     * to drop a wrong key share: 7 survivors, devices 8, 9 and 10 dropped. */
    int seven_drop[11] = {0, FULL, FULL, FULL, FULL, FULL, FULL, FULL, NO_MASKED, NO_MASKED, NO_MASKED};
    bad_rev_kinds = 1u << PLAIT_SECAGG_REVEAL_SK;
    ck_assert_msg(run_round(&f, &r, seven_drop, 0, 46, sum, plain) == 0, "%s", plait_errmsg());
    ck_assert_mem_eq(sum, plain, sizeof(sum));
    ck_assert_uint_eq(last_inconsistent, 1);
    bad_rev_by = 0;
    bad_rev_kinds = 3;
    plait_secagg_round_free(&r);
    fleet_free(&f);
}
END_TEST

/* Drive devices 1..n of a complete round up to masked input (no dropouts). */
typedef struct {
    plait_secagg_device_t *dev[9];
    plait_secagg_advert_t adv[9];
    plait_secagg_ct_t ct[9][8];
    size_t n_ct[9];
} mini_t;

static void mini_run(mini_t *mm, const fleet_t *f, const plait_secagg_round_t *r, uint64_t seed, int to_mask)
{
    plait_drbg_t d;
    drbg_det(&d, seed);
    uint32_t n = r->p.n;
    for (uint32_t u = 1; u <= n; u++) {
        ck_assert_int_eq(plait_secagg_device_create(&mm->dev[u], r, u, &d), 0);
        ck_assert_int_eq(plait_secagg_device_advertise(mm->dev[u], f->key[u], &d, &mm->adv[u]), 0);
    }
    for (uint32_t u = 1; u <= n; u++)
        for (uint32_t v = 1; v <= n; v++)
            if (u != v)
                ck_assert_int_eq(plait_secagg_device_accept_advert(mm->dev[u], &mm->adv[v], (const uint8_t *)f->crt[v],
                                                                   strlen(f->crt[v]), NULL),
                                 0);
    for (uint32_t u = 1; u <= n; u++)
        ck_assert_int_eq(plait_secagg_device_shares(mm->dev[u], &d, mm->ct[u], 8, &mm->n_ct[u]), 0);
    if (to_mask) {
        for (uint32_t u = 1; u <= n; u++)
            for (size_t i = 0; i < mm->n_ct[u]; i++)
                ck_assert_int_eq(plait_secagg_device_recv_share(mm->dev[mm->ct[u][i].to], &mm->ct[u][i]), 0);
        uint32_t x[4] = {1, 2, 3, 4}, y[4];
        for (uint32_t u = 1; u <= n; u++) ck_assert_int_eq(plait_secagg_device_mask(mm->dev[u], x, 4, y), 0);
    }
    plait_drbg_free(&d);
}

static void mini_free(mini_t *mm, uint32_t n)
{
    for (uint32_t u = 1; u <= n; u++) plait_secagg_device_free(mm->dev[u]);
}

START_TEST(test_unmask_refusals)
{
    fleet_t f;
    fleet_make(&f, 4);
    plait_secagg_round_t r;
    round_make(&r, 4, 3, 3, 3, 16, 4);
    mini_t mm;
    memset(&mm, 0, sizeof(mm));
    mini_run(&mm, &f, &r, 21, 1);
    plait_secagg_reveal_t rev[4];
    size_t nr = 99;
    /* Device 1 is asked for both shares of device 2: refused, nothing revealed. */
    uint32_t surv[3] = {1, 2, 3}, drop[2] = {2, 4};
    ck_assert_int_eq(plait_secagg_device_unmask(mm.dev[1], surv, 3, drop, 2, rev, 4, &nr), PLAIT_EREFUSED);
    ck_assert_uint_eq(nr, 0);
    ck_assert_ptr_nonnull(strstr(plait_errmsg(), "survivor and dropout"));
    /* ... and the refusal is final for this round, even for a clean request. */
    uint32_t surv2[3] = {1, 2, 3}, drop2[1] = {4};
    ck_assert_int_eq(plait_secagg_device_unmask(mm.dev[1], surv2, 3, drop2, 1, rev, 4, &nr), PLAIT_EREFUSED);
    /* Device 2: told it dropped -> refused. */
    uint32_t surv3[2] = {1, 3}, drop3[2] = {2, 4};
    ck_assert_int_eq(plait_secagg_device_unmask(mm.dev[2], surv3, 2, drop3, 2, rev, 4, &nr), PLAIT_EREFUSED);
    /* Device 3: a clean request is answered once (own b + 2 b + 1 key share), then refused. */
    ck_assert_int_eq(plait_secagg_device_unmask(mm.dev[3], surv2, 3, drop2, 1, rev, 4, &nr), 0);
    ck_assert_uint_eq(nr, 4);
    size_t nb = 0, nsk = 0;
    for (size_t i = 0; i < nr; i++) {
        if (rev[i].kind == PLAIT_SECAGG_REVEAL_B) nb++;
        if (rev[i].kind == PLAIT_SECAGG_REVEAL_SK) {
            nsk++;
            ck_assert_uint_eq(rev[i].owner, 4);
        }
    }
    ck_assert_uint_eq(nb, 3);
    ck_assert_uint_eq(nsk, 1);
    /* The same request resent (a lost answer) gets the same answer; any other is refused. */
    plait_secagg_reveal_t again[4];
    size_t nr2 = 0;
    ck_assert_int_eq(plait_secagg_device_unmask(mm.dev[3], surv2, 3, drop2, 1, again, 4, &nr2), 0);
    ck_assert_uint_eq(nr2, nr);
    ck_assert_mem_eq(again, rev, nr * sizeof(rev[0]));
    uint32_t surv4[4] = {1, 2, 3, 4};
    ck_assert_int_eq(plait_secagg_device_unmask(mm.dev[3], surv4, 4, NULL, 0, rev, 4, &nr), PLAIT_EREFUSED);
    ck_assert_ptr_nonnull(strstr(plait_errmsg(), "different request"));
    /* Device 4: malformed lists. */
    uint32_t badi[2] = {4, 9};
    ck_assert_int_eq(plait_secagg_device_unmask(mm.dev[4], badi, 2, NULL, 0, rev, 4, &nr), PLAIT_EPROTO);
    mini_free(&mm, 4);
    /* Before masking, a device answers nothing. */
    memset(&mm, 0, sizeof(mm));
    mini_run(&mm, &f, &r, 22, 0);
    ck_assert_int_eq(plait_secagg_device_unmask(mm.dev[1], surv2, 3, drop2, 1, rev, 4, &nr), PLAIT_EREFUSED);
    mini_free(&mm, 4);
    plait_secagg_round_free(&r);
    fleet_free(&f);
}
END_TEST

/* A server that withholds share messages from a victim v: v masks only with the neighbours
 * whose messages reached it (its mask set M), while every accepted neighbour holds a share of
 * v's b. With k = 6, t = 4 (complete graph of 7) and the messages of 2, 3 and 4 withheld from
 * device 1, M = {5, 6, 7}: the server would drop 5, 6 and 7 (their c_sk is then revealed, as
 * for any dropout, so every pair mask on y_1 is known) and ask 2, 3 and 4 for b_1 with
 * requests consistent with the one survivor list {1, 2, 3, 4}; device 1's own share would make
 * t. Device 1 refuses a request naming none of M as a survivor. The same edge in an honest
 * round (2, 3 and 4 dropped before sharing: n = 2D + 1 with t = n - D) still finishes. */
static void withheld_run(const fleet_t *f, const plait_secagg_round_t *r, int honest)
{
    plait_drbg_t d;
    drbg_det(&d, 77 + honest);
    plait_secagg_device_t *dev[8] = {0};
    plait_secagg_advert_t adv[8];
    plait_secagg_ct_t ct[8][6];
    size_t n_ct[8] = {0};
    for (uint32_t u = 1; u <= 7; u++) {
        ck_assert_int_eq(plait_secagg_device_create(&dev[u], r, u, &d), 0);
        ck_assert_int_eq(plait_secagg_device_advertise(dev[u], f->key[u], &d, &adv[u]), 0);
    }
    for (uint32_t u = 1; u <= 7; u++)
        for (uint32_t v = 1; v <= 7; v++)
            if (u != v)
                ck_assert_int_eq(plait_secagg_device_accept_advert(dev[u], &adv[v], (const uint8_t *)f->crt[v],
                                                                   strlen(f->crt[v]), NULL),
                                 0);
    for (uint32_t u = 1; u <= 7; u++) {
        if (honest && u >= 2 && u <= 4) continue; /* dropped after advertising */
        ck_assert_int_eq(plait_secagg_device_shares(dev[u], &d, ct[u], 6, &n_ct[u]), 0);
    }
    for (uint32_t u = 1; u <= 7; u++)
        for (size_t i = 0; i < n_ct[u]; i++) {
            uint32_t to = ct[u][i].to;
            if (honest && to >= 2 && to <= 4) continue;
            if (!honest && to == 1 && u >= 2 && u <= 4) continue; /* withheld from the victim */
            ck_assert_int_eq(plait_secagg_device_recv_share(dev[to], &ct[u][i]), 0);
        }
    uint32_t x[4] = {1, 2, 3, 4}, y[4];
    for (uint32_t u = 1; u <= 7; u++)
        if (!honest || u < 2 || u > 4) ck_assert_int_eq(plait_secagg_device_mask(dev[u], x, 4, y), 0);
    plait_secagg_reveal_t rev[8];
    size_t nr = 99;
    if (!honest) {
        uint32_t surv[4] = {1, 2, 3, 4}, drop[3] = {5, 6, 7};
        ck_assert_int_eq(plait_secagg_device_unmask(dev[1], surv, 4, drop, 3, rev, 8, &nr), PLAIT_EREFUSED);
        ck_assert_uint_eq(nr, 0);
        ck_assert_ptr_nonnull(strstr(plait_errmsg(), "none of the neighbours this device masked with"));
        /* The holders asked for b_1 answer (their requests look like any other): the refusal is
         * what keeps the count of b_1's shares at t - 1. */
        ck_assert_int_eq(plait_secagg_device_unmask(dev[2], surv, 4, drop, 3, rev, 8, &nr), 0);
        /* One survivor among the neighbours it masked with: its pair key stays secret. */
        uint32_t surv2[5] = {1, 2, 3, 4, 5}, drop2[2] = {6, 7};
        ck_assert_int_eq(plait_secagg_device_unmask(dev[3], surv2, 5, drop2, 2, rev, 8, &nr), 0);
    } else {
        /* Honest: 2, 3 and 4 never shared (not dropouts of the sum: no shares of theirs exist). */
        uint32_t surv[4] = {1, 5, 6, 7};
        ck_assert_int_eq(plait_secagg_device_unmask(dev[1], surv, 4, NULL, 0, rev, 8, &nr), 0);
        ck_assert_uint_eq(nr, 4); /* its own b share and those of 5, 6 and 7 */
    }
    for (uint32_t u = 1; u <= 7; u++) plait_secagg_device_free(dev[u]);
    plait_drbg_free(&d);
}

START_TEST(test_withheld_shares)
{
    fleet_t f;
    fleet_make(&f, 7);
    plait_secagg_round_t r;
    round_make(&r, 7, 6, 4, 9, 16, 4);
    withheld_run(&f, &r, 0);
    withheld_run(&f, &r, 1);
    /* The honest edge as a whole round: 3 of 7 drop before sharing, t = 4 survivors finish. */
    int stage[8] = {0, FULL, NO_SHARES, NO_SHARES, NO_SHARES, FULL, FULL, FULL};
    uint32_t sum[4], plain[4];
    ck_assert_msg(run_round(&f, &r, stage, 0, 31, sum, plain) == 0, "%s", plait_errmsg());
    ck_assert_mem_eq(sum, plain, sizeof(sum));
    plait_secagg_round_free(&r);
    fleet_free(&f);
}
END_TEST

START_TEST(test_server_rejects_bad_reveals)
{
    fleet_t f;
    fleet_make(&f, 4);
    plait_secagg_round_t r;
    round_make(&r, 4, 3, 3, 3, 16, 4);
    mini_t mm;
    memset(&mm, 0, sizeof(mm));
    mini_run(&mm, &f, &r, 23, 1);
    plait_secagg_server_t *s;
    ck_assert_int_eq(plait_secagg_server_create(&s, &r), 0);
    uint32_t y[4] = {0};
    for (uint32_t u = 1; u <= 4; u++) ck_assert_int_eq(plait_secagg_server_add_advert(s, &mm.adv[u]), 0);
    ck_assert_int_eq(plait_secagg_server_add_masked(s, 4, y, 4), PLAIT_EINVAL); /* never shared */
    for (uint32_t u = 1; u <= 4; u++) ck_assert_int_eq(plait_secagg_server_mark_shared(s, u), 0);
    for (uint32_t u = 1; u <= 3; u++) ck_assert_int_eq(plait_secagg_server_add_masked(s, u, y, 4), 0);
    uint32_t big[4] = {0x10000u, 0, 0, 0};
    ck_assert_int_eq(plait_secagg_server_add_masked(s, 4, big, 4), PLAIT_EPROTO); /* > 16 bits */
    const uint32_t *sv, *dp;
    size_t ns, nd;
    ck_assert_int_eq(plait_secagg_server_request(s, 1, &sv, &ns, &dp, &nd), 0);
    ck_assert_uint_eq(ns, 3);
    ck_assert_uint_eq(nd, 1);
    ck_assert_uint_eq(dp[0], 4);
    ck_assert_int_eq(plait_secagg_server_add_masked(s, 4, y, 4), PLAIT_EINVAL); /* stage closed */
    plait_secagg_reveal_t rev = {.owner = 4, .kind = PLAIT_SECAGG_REVEAL_B};
    ck_assert_int_eq(plait_secagg_server_add_reveals(s, 1, &rev, 1), PLAIT_EPROTO); /* b of a dropout */
    rev.owner = 2;
    rev.kind = PLAIT_SECAGG_REVEAL_SK;
    ck_assert_int_eq(plait_secagg_server_add_reveals(s, 1, &rev, 1), PLAIT_EPROTO); /* key of a survivor */
    plait_secagg_reveal_t two[2] = {{.owner = 2, .kind = PLAIT_SECAGG_REVEAL_B}, {.owner = 2, .kind = PLAIT_SECAGG_REVEAL_B}};
    ck_assert_int_eq(plait_secagg_server_add_reveals(s, 1, two, 2), PLAIT_EPROTO);
    ck_assert_int_eq(plait_secagg_server_add_reveals(s, 4, two, 1), PLAIT_EINVAL); /* 4 was not asked */
    uint32_t sum[4];
    ck_assert_int_eq(plait_secagg_server_finish(s, sum, 4), PLAIT_ETHRESHOLD);
    plait_secagg_server_free(s);
    mini_free(&mm, 4);
    plait_secagg_round_free(&r);
    fleet_free(&f);
}
END_TEST

START_TEST(test_substituted_key)
{
    fleet_t f, other;
    fleet_make(&f, 3);
    fleet_make(&other, 4); /* another deployment's CA and devices */
    plait_secagg_round_t r;
    round_make(&r, 3, 2, 2, 1, 16, 4);
    plait_drbg_t d;
    drbg_det(&d, 31);
    plait_secagg_device_t *a, *b;
    ck_assert_int_eq(plait_secagg_device_create(&a, &r, 1, &d), 0);
    ck_assert_int_eq(plait_secagg_device_create(&b, &r, 2, &d), 0);
    plait_secagg_advert_t adv, bad;
    ck_assert_int_eq(plait_secagg_device_advertise(b, f.key[2], &d, &adv), 0);
    const uint8_t *crt2 = (const uint8_t *)f.crt[2];
    size_t l2 = strlen(f.crt[2]);
    ck_assert_int_eq(plait_secagg_advert_verify(&r, &adv, crt2, l2, f.ca_crt), 0);
    /* The server swaps in its own mask key: the signature no longer verifies. */
    bad = adv;
    bad.c_pk[5] ^= 0x40;
    ck_assert_int_eq(plait_secagg_advert_verify(&r, &bad, crt2, l2, f.ca_crt), PLAIT_EAUTH);
    bad = adv;
    bad.s_pk[31] ^= 1;
    ck_assert_int_eq(plait_secagg_device_accept_advert(a, &bad, crt2, l2, f.ca_crt), PLAIT_EAUTH);
    /* The commitment to b is signed too (advert v2): changed or stripped (a
     * downgrade to v1), the advert no longer verifies. */
    ck_assert_int_eq(adv.has_b_commit, 1);
    bad = adv;
    bad.b_commit[0] ^= 1;
    ck_assert_int_eq(plait_secagg_advert_verify(&r, &bad, crt2, l2, f.ca_crt), PLAIT_EAUTH);
    bad = adv;
    bad.has_b_commit = 0;
    ck_assert_int_eq(plait_secagg_advert_verify(&r, &bad, crt2, l2, f.ca_crt), PLAIT_EAUTH);
    /* Low-order keys (zero, one) are refused as such, before any signature check. */
    for (int w = 0; w < 2; w++) {
        bad = adv;
        memset(w ? bad.s_pk : bad.c_pk, 0, 32);
        (w ? bad.s_pk : bad.c_pk)[0] = (uint8_t)w;
        ck_assert_int_eq(plait_secagg_advert_verify(&r, &bad, crt2, l2, f.ca_crt), PLAIT_EAUTH);
        ck_assert_ptr_nonnull(strstr(plait_errmsg(), "low-order"));
    }
    /* Same keys presented as another device index. */
    bad = adv;
    bad.idx = 3;
    ck_assert_int_eq(plait_secagg_advert_verify(&r, &bad, (const uint8_t *)f.crt[3], strlen(f.crt[3]), NULL),
                     PLAIT_EAUTH);
    /* Keys signed by a key the server made, with a certificate from another CA. */
    ck_assert_int_eq(plait_secagg_device_advertise(b, other.key[2], &d, &bad), 0);
    ck_assert_int_eq(plait_secagg_advert_verify(&r, &bad, (const uint8_t *)other.crt[2], strlen(other.crt[2]),
                                                f.ca_crt),
                     PLAIT_EAUTH);
    ck_assert_int_eq(plait_secagg_advert_verify(&r, &bad, crt2, l2, f.ca_crt), PLAIT_EAUTH);
    /* An advert from another round of the same deployment does not verify here. */
    plait_secagg_round_t r2;
    round_make(&r2, 3, 2, 2, 2, 16, 4);
    ck_assert_int_eq(plait_secagg_advert_verify(&r2, &adv, crt2, l2, f.ca_crt), PLAIT_EAUTH);
    /* Garbage certificate. */
    ck_assert_int_eq(plait_secagg_advert_verify(&r, &adv, (const uint8_t *)"junk", 4, NULL), PLAIT_EPROTO);
    /* The genuine advert is accepted once. */
    ck_assert_int_eq(plait_secagg_device_accept_advert(a, &adv, crt2, l2, f.ca_crt), 0);
    ck_assert_int_eq(plait_secagg_device_accept_advert(a, &adv, crt2, l2, f.ca_crt), PLAIT_EINVAL);
    plait_secagg_device_free(a);
    plait_secagg_device_free(b);
    plait_drbg_free(&d);
    plait_secagg_round_free(&r);
    plait_secagg_round_free(&r2);
    fleet_free(&f);
    fleet_free(&other);
}
END_TEST

/* One enrolled device cannot stand for several neighbours: the server (or a device colluding with it)
 * could otherwise put one certificate's keys at every neighbour index of a victim and receive all of
 * its shares. Each index's advert verifies on its own; the certificate seen a second time is refused
 * (compared as DER: here its PEM once without and once with its NUL). */
START_TEST(test_roster_one_device_twice)
{
    fleet_t f;
    fleet_make(&f, 4);
    plait_secagg_round_t r;
    round_make(&r, 4, 3, 3, 1, 16, 4);
    plait_drbg_t d;
    drbg_det(&d, 33);
    plait_secagg_device_t *a, *b, *c;
    ck_assert_int_eq(plait_secagg_device_create(&a, &r, 1, &d), 0);
    ck_assert_int_eq(plait_secagg_device_create(&b, &r, 2, &d), 0);
    ck_assert_int_eq(plait_secagg_device_create(&c, &r, 3, &d), 0);
    plait_secagg_advert_t adv2, adv3;
    ck_assert_int_eq(plait_secagg_device_advertise(b, f.key[2], &d, &adv2), 0);
    ck_assert_int_eq(plait_secagg_device_advertise(c, f.key[2], &d, &adv3), 0); /* index 3, device 2's key */
    const uint8_t *crt2 = (const uint8_t *)f.crt[2];
    size_t l2 = strlen(f.crt[2]);
    ck_assert_int_eq(plait_secagg_advert_verify(&r, &adv3, crt2, l2, f.ca_crt), 0); /* alone it verifies */
    ck_assert_int_eq(plait_secagg_device_accept_advert(a, &adv2, crt2, l2, f.ca_crt), 0);
    ck_assert_int_eq(plait_secagg_device_accept_advert(a, &adv3, crt2, l2 + 1, f.ca_crt), PLAIT_EAUTH);
    ck_assert_ptr_nonnull(strstr(plait_errmsg(), "neighbour 2"));
    /* Nothing was accepted for index 3: its genuine advert still is. */
    plait_secagg_advert_t real3;
    ck_assert_int_eq(plait_secagg_device_advertise(c, f.key[3], &d, &real3), 0);
    ck_assert_int_eq(plait_secagg_device_accept_advert(a, &real3, (const uint8_t *)f.crt[3], strlen(f.crt[3]),
                                                       f.ca_crt),
                     0);
    plait_secagg_device_free(a);
    plait_secagg_device_free(b);
    plait_secagg_device_free(c);
    plait_drbg_free(&d);
    plait_secagg_round_free(&r);
    fleet_free(&f);
}
END_TEST

START_TEST(test_share_replay)
{
    fleet_t f;
    fleet_make(&f, 3);
    plait_secagg_round_t r1, r2;
    round_make(&r1, 3, 2, 2, 100, 16, 4);
    round_make(&r2, 3, 2, 2, 101, 16, 4);
    /* Same DRBG seed: the devices of rounds 100 and 101 hold the same keys,
     * so only the round binding differs. */
    mini_t m1, m2;
    memset(&m1, 0, sizeof(m1));
    memset(&m2, 0, sizeof(m2));
    mini_run(&m1, &f, &r1, 55, 0);
    mini_run(&m2, &f, &r2, 55, 0);
    ck_assert_mem_eq(m1.adv[1].c_pk, m2.adv[1].c_pk, 32);
    plait_secagg_ct_t c = m1.ct[1][0]; /* from 1 to 2, round 100 */
    ck_assert_uint_eq(c.to, 2);
    ck_assert_int_eq(plait_secagg_device_recv_share(m2.dev[2], &c), PLAIT_EAUTH); /* replayed into 101 */
    /* Redirected (claimed to come from device 3) or tampered: refused. */
    plait_secagg_ct_t redir = c;
    redir.from = 3;
    ck_assert_int_eq(plait_secagg_device_recv_share(m1.dev[2], &redir), PLAIT_EAUTH);
    plait_secagg_ct_t flip = c;
    flip.ct[20] ^= 1;
    ck_assert_int_eq(plait_secagg_device_recv_share(m1.dev[2], &flip), PLAIT_EAUTH);
    ck_assert_int_eq(plait_secagg_device_recv_share(m1.dev[3], &c), PLAIT_EINVAL); /* not addressed to 3 */
    /* In its own round it decrypts, once. */
    ck_assert_int_eq(plait_secagg_device_recv_share(m1.dev[2], &c), 0);
    ck_assert_int_eq(plait_secagg_device_recv_share(m1.dev[2], &c), PLAIT_EINVAL);
    mini_free(&m1, 3);
    mini_free(&m2, 3);
    plait_secagg_round_free(&r1);
    plait_secagg_round_free(&r2);
    fleet_free(&f);
}
END_TEST

START_TEST(test_graph)
{
    plait_secagg_round_t r;
    round_make(&r, 101, 10, 6, 1, 20, 1);
    for (uint32_t u = 1; u <= 101; u++) {
        const uint32_t *nb = plait_secagg_neighbours(&r, u);
        for (uint32_t i = 0; i < 10; i++) {
            ck_assert_uint_ne(nb[i], u);
            ck_assert(i == 0 || nb[i] > nb[i - 1]);
            ck_assert(plait_secagg_adjacent(&r, nb[i], u)); /* symmetric */
        }
    }
    /* A device keeps only its own row (agent_secagg.c): the same row as the server's table. */
    for (uint32_t u = 1; u <= 101; u += 25) {
        plait_secagg_round_t dr;
        device_round_make(&dr, &r, u);
        ck_assert(plait_secagg_adjacent(&dr, u, plait_secagg_neighbours(&r, u)[0]));
        plait_drbg_t d;
        drbg_det(&d, 3);
        plait_secagg_device_t *dev = NULL;
        ck_assert_int_eq(plait_secagg_device_create(&dev, &dr, u == 101 ? 1 : u + 1, &d), PLAIT_EINVAL);
        plait_drbg_free(&d);
        plait_secagg_round_free(&dr);
    }
    {
        plait_secagg_round_t rc, dr;
        round_make(&rc, 12, 11, 7, 5, 20, 1); /* complete graph */
        device_round_make(&dr, &rc, 12);
        plait_secagg_params_t pc = rc.p;
        uint8_t s0[32] = {0};
        ck_assert_int_eq(plait_secagg_round_setup_device(&dr, DEP, sizeof(DEP) - 1, 5, &pc, s0, 20, 1, 13),
                         PLAIT_EINVAL);
        ck_assert_int_eq(plait_secagg_round_setup_device(&dr, DEP, sizeof(DEP) - 1, 5, &pc, s0, 20, 1, 0),
                         PLAIT_EINVAL);
        plait_secagg_round_free(&dr);
        plait_secagg_round_free(&rc);
    }
    /* Another seed gives another graph; the same seed the same one. */
    plait_secagg_round_t r2;
    plait_secagg_round_init(&r2);
    plait_secagg_params_t p = {.n = 101, .k = 10, .t = 6};
    uint8_t seed[32] = {1};
    ck_assert_int_eq(plait_secagg_round_setup(&r2, DEP, sizeof(DEP) - 1, 1, &p, seed, 20, 1), 0);
    ck_assert(memcmp(r.nbr, r2.nbr, 101 * 10 * sizeof(uint32_t)) != 0);
    p.k = 9; /* odd and not n - 1 */
    ck_assert_int_eq(plait_secagg_round_setup(&r2, DEP, sizeof(DEP) - 1, 1, &p, seed, 20, 1), PLAIT_EINVAL);
    p.k = 10;
    p.t = 5; /* 2t <= k + 1: a malicious server could collect both shares */
    ck_assert_int_eq(plait_secagg_round_setup(&r2, DEP, sizeof(DEP) - 1, 1, &p, seed, 20, 1), PLAIT_EINVAL);
    p.t = 11;
    ck_assert_int_eq(plait_secagg_round_setup(&r2, DEP, sizeof(DEP) - 1, 1, &p, seed, 20, 1), PLAIT_EINVAL);
    plait_secagg_round_free(&r2);
    plait_secagg_round_free(&r);
}
END_TEST

Suite *secagg_suite(void)
{
    Suite *s = suite_create("secagg");
    TCase *tc = tcase_create("primitives");
    tcase_set_timeout(tc, 300); /* generous: sanitizers on a loaded 2-core machine */
    tcase_add_test(tc, test_hkdf_rfc5869);
    tcase_add_test(tc, test_chacha20_rfc8439);
    tcase_add_test(tc, test_aead_rfc8439);
    tcase_add_test(tc, test_x25519_rfc7748);
    tcase_add_test(tc, test_pack_roundtrip);
    tcase_add_test(tc, test_shamir_subsets);
    suite_add_tcase(s, tc);
    tc = tcase_create("params");
    tcase_set_timeout(tc, 300); /* generous: sanitizers on a loaded 2-core machine */
    tcase_add_test(tc, test_params);
    tcase_add_test(tc, test_graph);
    suite_add_tcase(s, tc);
    tc = tcase_create("round");
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, test_round_n10_dropouts);
    tcase_add_test(tc, test_round_n50_harary);
    tcase_add_test(tc, test_round_threshold_exact);
    tcase_add_test(tc, test_hostile_device);
    tcase_add_test(tc, test_unmask_refusals);
    tcase_add_test(tc, test_withheld_shares);
    tcase_add_test(tc, test_server_rejects_bad_reveals);
    tcase_add_test(tc, test_substituted_key);
    tcase_add_test(tc, test_share_replay);
    tcase_add_test(tc, test_roster_one_device_twice);
    suite_add_tcase(s, tc);
    return s;
}
