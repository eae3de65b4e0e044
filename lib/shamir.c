/*
 * shamir.c: Shamir secret sharing of 32-byte secrets over GF(p), p = 2^61 - 1.
 *
 * A secret is cut into five little-endian limbs (bytes 0-6, 7-13, 14-20,
 * 21-27 of 56 bits and bytes 28-31 of 32 bits); each limb is the constant
 * term of its own random polynomial of degree t - 1 with coefficients uniform
 * in [0, p). A share at x is the five evaluations, 8 bytes little-endian each.
 * Combining t shares is Lagrange interpolation at 0; any t shares give the
 * secret, t - 1 shares are independent of it. A combined limb that does not
 * fit its width cannot come from honest shares and is rejected (PLAIT_EAUTH).
 * plait__shamir_eval() evaluates the polynomial through t shares at other
 * points (barycentric weights once, O(t) per point): the server's robust
 * reconstruction uses it to see which revealed shares lie on a candidate.
 *
 * Field arithmetic uses unsigned __int128 products reduced with the Mersenne
 * identity 2^61 = 1 (mod p). Every polynomial coefficient is wiped after use.
 */
#include "plait/secagg.h"

#include <stdlib.h>
#include <string.h>

#include "secagg_int.h"

#define P61 ((uint64_t)0x1FFFFFFFFFFFFFFFull) /* 2^61 - 1 */
#define LIMBS 5

__extension__ typedef unsigned __int128 u128;

static uint64_t fadd(uint64_t a, uint64_t b)
{
    uint64_t r = a + b; /* < 2^62 */
    return r >= P61 ? r - P61 : r;
}

static uint64_t fsub(uint64_t a, uint64_t b)
{
    return a >= b ? a - b : a + P61 - b;
}

static uint64_t fmul(uint64_t a, uint64_t b)
{
    u128 p = (u128)a * b; /* < 2^122 */
    uint64_t lo = (uint64_t)(p & P61), hi = (uint64_t)(p >> 61);
    uint64_t r = lo + hi; /* < 2^62 */
    r = (r & P61) + (r >> 61);
    return r >= P61 ? r - P61 : r;
}

static uint64_t fpow(uint64_t a, uint64_t e)
{
    uint64_t r = 1;
    while (e) {
        if (e & 1) r = fmul(r, a);
        a = fmul(a, a);
        e >>= 1;
    }
    return r;
}

static uint64_t finv(uint64_t a)
{
    return fpow(a, P61 - 2); /* Fermat; a != 0 */
}

static const size_t limb_off[LIMBS] = {0, 7, 14, 21, 28};
static const size_t limb_len[LIMBS] = {7, 7, 7, 7, 4};

static uint64_t get_le(const uint8_t *p, size_t n)
{
    uint64_t v = 0;
    for (size_t i = n; i-- > 0;) v = (v << 8) | p[i];
    return v;
}

static void put_le(uint8_t *p, uint64_t v, size_t n)
{
    for (size_t i = 0; i < n; i++) p[i] = (uint8_t)(v >> (8 * i));
}

int plait_shamir_split(const uint8_t secret[32], uint32_t t, const uint32_t *xs, size_t n, plait_drbg_t *rng,
                       uint8_t (*shares)[PLAIT_SECAGG_SHARE_LEN])
{
    if (secret == NULL || xs == NULL || shares == NULL || rng == NULL || t < 1 || (size_t)t > n)
        return plait_fail(PLAIT_EINVAL, "shamir: bad arguments (t %u, n %zu)", (unsigned)t, n);
    for (size_t i = 0; i < n; i++)
        if (xs[i] == 0) return plait_fail(PLAIT_EINVAL, "shamir: share x must be nonzero");
    size_t nc = (size_t)(t - 1) * LIMBS;
    uint64_t *coef = calloc(nc + 1, sizeof(uint64_t));
    if (coef == NULL) return plait_fail(PLAIT_ENOMEM, "shamir: %zu coefficients", nc);
    int ret = 0;
    /* Uniform in [0, p): 61 random bits, redraw the single value p. */
    for (size_t i = 0; i < nc; i++) {
        do {
            uint8_t b[8];
            if ((ret = plait_drbg_random(rng, b, sizeof(b))) != 0) goto exit;
            coef[i] = get_le(b, 8) & P61;
            plait_zeroize(b, sizeof(b));
        } while (coef[i] == P61);
    }
    for (size_t s = 0; s < n; s++) {
        uint64_t x = xs[s] % P61;
        for (size_t l = 0; l < LIMBS; l++) {
            /* Horner from the highest coefficient down to the secret limb. */
            uint64_t acc = 0;
            for (size_t j = t - 1; j >= 1; j--) acc = fadd(fmul(acc, x), coef[(j - 1) * LIMBS + l]);
            acc = fadd(fmul(acc, x), get_le(secret + limb_off[l], limb_len[l]));
            put_le(shares[s] + 8 * l, acc, 8);
        }
    }
exit:
    plait_zeroize(coef, (nc + 1) * sizeof(uint64_t));
    free(coef);
    return ret;
}

int plait_shamir_combine(const uint32_t *xs, const uint8_t (*shares)[PLAIT_SECAGG_SHARE_LEN], size_t t,
                         uint8_t secret[32])
{
    if (xs == NULL || shares == NULL || secret == NULL || t == 0)
        return plait_fail(PLAIT_EINVAL, "shamir: bad arguments");
    for (size_t i = 0; i < t; i++) {
        if (xs[i] == 0) return plait_fail(PLAIT_EINVAL, "shamir: share x must be nonzero");
        for (size_t j = 0; j < i; j++)
            if (xs[i] == xs[j]) return plait_fail(PLAIT_EINVAL, "shamir: repeated share x %u", (unsigned)xs[i]);
    }
    uint64_t acc[LIMBS] = {0};
    for (size_t i = 0; i < t; i++) {
        /* Lagrange basis at 0: prod_{j != i} x_j / (x_j - x_i). */
        uint64_t num = 1, den = 1;
        for (size_t j = 0; j < t; j++) {
            if (j == i) continue;
            num = fmul(num, xs[j]);
            den = fmul(den, fsub(xs[j], xs[i]));
        }
        uint64_t li = fmul(num, finv(den));
        for (size_t l = 0; l < LIMBS; l++) {
            uint64_t y = get_le(shares[i] + 8 * l, 8);
            if (y >= P61) {
                plait_zeroize(acc, sizeof(acc));
                return plait_fail(PLAIT_EAUTH, "shamir: share value out of the field");
            }
            acc[l] = fadd(acc[l], fmul(li, y));
        }
    }
    int ret = 0;
    for (size_t l = 0; l < LIMBS; l++)
        if (acc[l] >> (8 * limb_len[l]) != 0) ret = plait_fail(PLAIT_EAUTH, "shamir: shares are inconsistent");
    for (size_t l = 0; l < LIMBS && ret == 0; l++) put_le(secret + limb_off[l], acc[l], limb_len[l]);
    if (ret != 0) memset(secret, 0, 32);
    plait_zeroize(acc, sizeof(acc));
    return ret;
}

int plait__shamir_eval(const uint32_t *xs, const uint8_t (*shares)[PLAIT_SECAGG_SHARE_LEN], size_t t,
                       const uint32_t *at, size_t n_at, uint8_t (*out)[PLAIT_SECAGG_SHARE_LEN])
{
    if (xs == NULL || shares == NULL || t == 0 || (n_at > 0 && (at == NULL || out == NULL)))
        return plait_fail(PLAIT_EINVAL, "shamir: bad arguments");
    for (size_t i = 0; i < t; i++) {
        if (xs[i] == 0) return plait_fail(PLAIT_EINVAL, "shamir: share x must be nonzero");
        for (size_t j = 0; j < i; j++)
            if (xs[i] == xs[j]) return plait_fail(PLAIT_EINVAL, "shamir: repeated share x %u", (unsigned)xs[i]);
        for (size_t l = 0; l < LIMBS; l++)
            if (get_le(shares[i] + 8 * l, 8) >= P61)
                return plait_fail(PLAIT_EAUTH, "shamir: share value out of the field");
    }
    /* w_i = 1 / prod_{j != i} (x_i - x_j), once; then each point costs O(t) with
     * prefix and suffix products of (x - x_j). */
    uint64_t *w = malloc((3 + LIMBS) * t * sizeof(uint64_t));
    if (w == NULL) return plait_fail(PLAIT_ENOMEM, "shamir: %zu weights", t);
    uint64_t *pre = w + t, *suf = w + 2 * t, *y = w + 3 * t; /* y[i·LIMBS + l]: share i, limb l */
    for (size_t i = 0; i < t; i++)
        for (size_t l = 0; l < LIMBS; l++) y[i * LIMBS + l] = get_le(shares[i] + 8 * l, 8);
    for (size_t i = 0; i < t; i++) {
        uint64_t den = 1;
        for (size_t j = 0; j < t; j++)
            if (j != i) den = fmul(den, fsub(xs[i], xs[j]));
        w[i] = finv(den);
    }
    for (size_t a = 0; a < n_at; a++) {
        uint64_t x = at[a] % P61, acc[LIMBS] = {0};
        for (size_t i = 0; i < t; i++) pre[i] = i == 0 ? 1 : fmul(pre[i - 1], fsub(x, xs[i - 1]));
        for (size_t i = t; i-- > 0;) suf[i] = i == t - 1 ? 1 : fmul(suf[i + 1], fsub(x, xs[i + 1]));
        for (size_t i = 0; i < t; i++) {
            uint64_t li = fmul(fmul(pre[i], suf[i]), w[i]);
            for (size_t l = 0; l < LIMBS; l++) acc[l] = fadd(acc[l], fmul(li, y[i * LIMBS + l]));
        }
        for (size_t l = 0; l < LIMBS; l++) put_le(out[a] + 8 * l, acc[l], 8);
        plait_zeroize(acc, sizeof(acc));
    }
    plait_zeroize(w, (3 + LIMBS) * t * sizeof(uint64_t));
    free(w);
    return 0;
}
