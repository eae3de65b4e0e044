/*
 * ddg.c: the exact discrete Gaussian sampler of Canonne, Kamath and Steinke
 * 2020 (Algorithm 1: Bernoulli(exp(-gamma)) for rational gamma; Algorithm 2:
 * discrete Laplace; Algorithm 3: discrete Gaussian by rejection from the
 * discrete Laplace), in integer arithmetic, for the distributed discrete
 * Gaussian mechanism.
 *
 * Ranges: sigma^2 = num/den with num <= 2^40, den <= 2^32, so sigma <= 2^20
 * and the Laplace scale t = floor(sigma) + 1 <= 2^20 + 1. The rejection step
 * needs gamma = (|Y| den t - num)^2 / (2 num den t^2): its denominator is
 * below 2^115 and its numerator is computed exactly in 128 bits whenever
 * |Y| den t - num < 2^63. Beyond that gamma >= 2^126 / 2^115 = 2048; the
 * sampler then runs the first floor(2^126 / denominator) of the Bernoulli
 * (exp(-1)) trials the exact algorithm would run, and only if every one of
 * them succeeds (probability < e^-2048) gives up with PLAIT_EINTERNAL.
 *
 * Randomness: uniform integers by rejection from plait_rng_u64(), so every
 * Bernoulli(p) for rational p is exact.
 */
#include "plait/ddg.h"

#include <math.h>
#include <string.h>

__extension__ typedef unsigned __int128 u128;
__extension__ typedef __int128 i128;

/* Uniform in [0, bound), bound >= 1, by masking and rejection. */
static u128 uniform_below(plait_rng_t *r, u128 bound)
{
    if (bound <= 1) return 0;
    u128 top = bound - 1, mask = top;
    for (int s = 1; s < 128; s <<= 1) mask |= mask >> s;
    if (top <= UINT64_MAX) { /* one 64-bit draw per try */
        uint64_t t64 = (uint64_t)top, m64 = (uint64_t)mask;
        for (;;) {
            uint64_t v = plait_rng_u64(r) & m64;
            if (v <= t64) return v;
        }
    }
    for (;;) {
        u128 v = ((u128)plait_rng_u64(r) << 64) | plait_rng_u64(r);
        v &= mask;
        if (v <= top) return v;
    }
}

/* Bernoulli(a / b), 0 <= a <= b, b >= 1. */
static int bern(plait_rng_t *r, u128 a, u128 b)
{
    return uniform_below(r, b) < a;
}

/* Bernoulli(exp(-a/b)) for 0 <= a/b <= 1 (CKS Algorithm 1, first case).
 * Returns 0 or 1, or PLAIT_EINTERNAL when K would make b·K overflow: K
 * exceeds k with probability at most 1/k!, so K >= 2^11 (b < 2^116) has
 * probability below 1/2048!. */
static int bern_exp_le1(plait_rng_t *r, u128 a, u128 b)
{
    u128 k = 1;
    while (bern(r, a, b * k))
        if (++k >= ((u128)1 << 11)) return plait_fail(PLAIT_EINTERNAL, "ddg: Bernoulli loop out of range");
    return (int)(k & 1);
}

static int bern_exp_neg1(plait_rng_t *r)
{
    return bern_exp_le1(r, 1, 1);
}

/* Bernoulli(exp(-a/b)) for any a/b >= 0 (CKS Algorithm 1): 0, 1 or an error. */
static int bern_exp(plait_rng_t *r, u128 a, u128 b)
{
    u128 whole = a / b;
    for (u128 i = 0; i < whole; i++) {
        int c = bern_exp_neg1(r);
        if (c != 1) return c;
    }
    return bern_exp_le1(r, a % b, b);
}

/* Discrete Laplace with scale t (CKS Algorithm 2 with s = 1). */
static int dlap(plait_rng_t *r, uint64_t t, int64_t *out)
{
    for (;;) {
        uint64_t u = (uint64_t)uniform_below(r, t);
        int c = bern_exp(r, u, t);
        if (c < 0) return c;
        if (c == 0) continue;
        uint64_t v = 0;
        while ((c = bern_exp_neg1(r)) == 1) {
            /* P[v >= 2^20] = e^-(2^20): treat as broken rather than overflow. */
            if (++v >= ((uint64_t)1 << 20)) return plait_fail(PLAIT_EINTERNAL, "ddg: geometric draw out of range");
        }
        if (c < 0) return c;
        uint64_t x = u + t * v; /* < 2^21 · 2^20 */
        int neg = bern(r, 1, 2);
        if (neg && x == 0) continue;
        *out = neg ? -(int64_t)x : (int64_t)x;
        return 0;
    }
}

static uint64_t isqrt64(uint64_t x)
{
    uint64_t r = 0, bit = (uint64_t)1 << 62;
    while (bit > x) bit >>= 2;
    while (bit) {
        if (x >= r + bit) {
            x -= r + bit;
            r = (r >> 1) + bit;
        } else {
            r >>= 1;
        }
        bit >>= 2;
    }
    return r;
}

int plait_ddg_sample(plait_rng_t *rng, uint64_t num, uint64_t den, int64_t *out)
{
    if (rng == NULL || out == NULL || num < 1 || num > PLAIT_DDG_NUM_MAX || den < 1 || den > PLAIT_DDG_DEN_MAX)
        return plait_fail(PLAIT_EINVAL, "ddg: variance %llu/%llu out of range", (unsigned long long)num,
                          (unsigned long long)den);
    uint64_t t = isqrt64(num / den) + 1; /* floor(sigma) + 1 */
    u128 B = (u128)2 * num * den * t * t; /* < 2^115 */
    for (;;) {
        int64_t y = 0;
        int ret = dlap(rng, t, &y);
        if (ret != 0) return ret;
        uint64_t ay = (uint64_t)(y < 0 ? -y : y);
        i128 A = (i128)((u128)ay * den * t) - (i128)num; /* |Y| den t - num */
        u128 absA = (u128)(A < 0 ? -A : A);
        int accept;
        if (absA < ((u128)1 << 63)) {
            accept = bern_exp(rng, absA * absA, B);
        } else {
            /* gamma >= 2^126 / B >= 2048: run that many exp(-1) trials first. */
            u128 g = ((u128)1 << 126) / B;
            accept = 1;
            for (u128 i = 0; i < g && accept == 1; i++) accept = bern_exp_neg1(rng);
            if (accept < 0) return accept;
            if (accept) return plait_fail(PLAIT_EINTERNAL, "ddg: sample beyond the exact arithmetic range");
        }
        if (accept < 0) return accept;
        if (accept) {
            *out = y;
            return 0;
        }
    }
}

int plait_ddg_add_noise(plait_rng_t *rng, uint64_t num, uint64_t den, uint32_t *words, size_t n, unsigned m)
{
    if (rng == NULL || (n > 0 && words == NULL) || m < 1 || m > 32)
        return plait_fail(PLAIT_EINVAL, "ddg: bad arguments (m %u)", m);
    uint32_t mask = m == 32 ? 0xFFFFFFFFu : (uint32_t)((1u << m) - 1u);
    for (size_t i = 0; i < n; i++) {
        int64_t z;
        int ret = plait_ddg_sample(rng, num, den, &z);
        if (ret != 0) return ret;
        /* Two's complement wrap: adding z mod 2^32 then reducing mod 2^m is z mod 2^m. */
        words[i] = (words[i] + (uint32_t)(uint64_t)z) & mask;
    }
    return 0;
}

int plait_ddg_variance(double var, uint64_t *num, uint64_t *den)
{
    if (num == NULL || den == NULL || !isfinite(var) || var <= 0 ||
        var * 256.0 > (double)PLAIT_DDG_NUM_MAX)
        return plait_fail(PLAIT_EINVAL, "ddg: variance %g out of range (0, 2^32]", var);
    double s = ceil(var * 256.0);
    *num = s < 1 ? 1 : (uint64_t)s;
    *den = 256;
    return 0;
}
