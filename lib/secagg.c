/*
 * secagg.c: SecAgg+ (Bell et al. 2020): the primitives under it (X25519,
 * HKDF-SHA256, ChaCha20, ChaCha20-Poly1305 from mbedTLS 2.28), m-bit
 * packing, the choice of the graph's parameters, and the round context with
 * its communication graph. Key agreement and share encryption are in
 * secagg_keys.c, masking and unmasking in secagg_mask.c (internals in
 * secagg_int.h).
 *
 * Invariants (of the three files):
 *   - A device's secrets (c_sk, s_sk, b, the shares it holds) live only in its
 *     plait_secagg_device_t and are wiped by plait_secagg_device_free(); the
 *     server's reconstructed secrets and revealed shares are wiped by
 *     plait_secagg_server_free() (and each reconstructed key right after use).
 *   - Every derived key, signature and AAD includes the round context hash, so
 *     nothing computed for one (deployment, round) is usable in another.
 *   - Masks are added in uint32_t and reduced mod 2^m at the end; since 2^m
 *     divides 2^32, this equals arithmetic in Z_{2^m} throughout.
 *   - Untrusted inputs (adverts, certificates, ciphertexts, unmask requests,
 *     reveals, masked vectors) are size- and range-checked before use.
 *
 * Workload: a device does 2 + 2k X25519 operations and k + 1 PRG streams of
 * len words per round; the server does one X25519 per (dropout, surviving
 * neighbour) pair and one PRG stream per survivor and per such pair.
 */
#include "plait/secagg.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <mbedtls/chacha20.h>
#include <mbedtls/chachapoly.h>
#include <mbedtls/ecp.h>
#include <mbedtls/hkdf.h>
#include <mbedtls/md.h>

#include "secagg_int.h"

static const char DOMAIN[] = PLAIT__SECAGG_DOMAIN;

/* ---- primitives ---------------------------------------------------------------- */

int plait_hkdf_sha256(const uint8_t *salt, size_t salt_len, const uint8_t *ikm, size_t ikm_len, const uint8_t *info,
                      size_t info_len, uint8_t *okm, size_t okm_len)
{
    if (okm == NULL || okm_len > 255u * 32u || (ikm == NULL && ikm_len > 0))
        return plait_fail(PLAIT_EINVAL, "hkdf: bad arguments (okm_len %zu)", okm_len);
    int mrc = mbedtls_hkdf(mbedtls_md_info_from_type(MBEDTLS_MD_SHA256), salt, salt_len, ikm, ikm_len, info,
                           info_len, okm, okm_len);
    if (mrc != 0) return plait_fail(PLAIT_EINTERNAL, "hkdf: mbedTLS -0x%04x", (unsigned)-mrc);
    return 0;
}

int plait_chacha20(const uint8_t key[32], const uint8_t nonce[12], uint32_t counter, const uint8_t *in, size_t len,
                   uint8_t *out)
{
    if (key == NULL || nonce == NULL || (len > 0 && (in == NULL || out == NULL)))
        return plait_fail(PLAIT_EINVAL, "chacha20: NULL argument");
    int mrc = mbedtls_chacha20_crypt(key, nonce, counter, len, in, out);
    if (mrc != 0) return plait_fail(PLAIT_EINTERNAL, "chacha20: mbedTLS -0x%04x", (unsigned)-mrc);
    return 0;
}

int plait_aead_seal(const uint8_t key[32], const uint8_t nonce[12], const uint8_t *aad, size_t aad_len,
                    const uint8_t *in, size_t len, uint8_t *out)
{
    if (key == NULL || nonce == NULL || out == NULL || (len > 0 && in == NULL) || (aad_len > 0 && aad == NULL))
        return plait_fail(PLAIT_EINVAL, "aead: NULL argument");
    mbedtls_chachapoly_context c;
    mbedtls_chachapoly_init(&c);
    int mrc = mbedtls_chachapoly_setkey(&c, key);
    if (mrc == 0) mrc = mbedtls_chachapoly_encrypt_and_tag(&c, len, nonce, aad, aad_len, in, out, out + len);
    mbedtls_chachapoly_free(&c);
    if (mrc != 0) return plait_fail(PLAIT_EINTERNAL, "aead: mbedTLS -0x%04x", (unsigned)-mrc);
    return 0;
}

int plait_aead_open(const uint8_t key[32], const uint8_t nonce[12], const uint8_t *aad, size_t aad_len,
                    const uint8_t *in, size_t len, uint8_t *out)
{
    if (key == NULL || nonce == NULL || in == NULL || (len > 0 && out == NULL) || (aad_len > 0 && aad == NULL))
        return plait_fail(PLAIT_EINVAL, "aead: NULL argument");
    mbedtls_chachapoly_context c;
    mbedtls_chachapoly_init(&c);
    int mrc = mbedtls_chachapoly_setkey(&c, key);
    if (mrc == 0) mrc = mbedtls_chachapoly_auth_decrypt(&c, len, nonce, aad, aad_len, in + len, in, out);
    mbedtls_chachapoly_free(&c);
    if (mrc == MBEDTLS_ERR_CHACHAPOLY_AUTH_FAILED) {
        if (len > 0) plait_zeroize(out, len);
        return plait_fail(PLAIT_EAUTH, "aead: tag does not verify");
    }
    if (mrc != 0) return plait_fail(PLAIT_EINTERNAL, "aead: mbedTLS -0x%04x", (unsigned)-mrc);
    return 0;
}

int plait_x25519(const uint8_t scalar[32], const uint8_t u[32], uint8_t out[32])
{
    if (scalar == NULL || u == NULL || out == NULL) return plait_fail(PLAIT_EINVAL, "x25519: NULL argument");
    mbedtls_ecp_group grp;
    mbedtls_mpi d;
    mbedtls_ecp_point P, R;
    mbedtls_ecp_group_init(&grp);
    mbedtls_mpi_init(&d);
    mbedtls_ecp_point_init(&P);
    mbedtls_ecp_point_init(&R);
    uint8_t k[32], uc[32];
    memcpy(k, scalar, 32);
    k[0] &= 248; /* RFC 7748 decodeScalar25519 */
    k[31] &= 127;
    k[31] |= 64;
    memcpy(uc, u, 32);
    uc[31] &= 127; /* RFC 7748: mask the most significant bit of u */
    int ret = PLAIT_EINTERNAL, mrc;
    if ((mrc = mbedtls_ecp_group_load(&grp, MBEDTLS_ECP_DP_CURVE25519)) != 0 ||
        (mrc = mbedtls_mpi_read_binary_le(&d, k, 32)) != 0 || (mrc = mbedtls_mpi_read_binary_le(&P.X, uc, 32)) != 0 ||
        (mrc = mbedtls_mpi_lset(&P.Z, 1)) != 0) {
        ret = plait_fail(PLAIT_ENOMEM, "x25519: mbedTLS -0x%04x", (unsigned)-mrc);
        goto exit;
    }
    /* Non-canonical u (p <= u < 2^255) is reduced, as RFC 7748 requires. */
    if (mbedtls_mpi_cmp_mpi(&P.X, &grp.P) >= 0 && (mrc = mbedtls_mpi_sub_mpi(&P.X, &P.X, &grp.P)) != 0) goto exit;
    if ((mrc = mbedtls_ecp_mul(&grp, &R, &d, &P, NULL, NULL)) != 0) {
        /* mbedTLS refuses low-order points: the result would be all zero. */
        ret = plait_fail(PLAIT_EAUTH, "x25519: peer public key rejected (mbedTLS -0x%04x)", (unsigned)-mrc);
        goto exit;
    }
    if ((mrc = mbedtls_mpi_write_binary_le(&R.X, out, 32)) != 0) goto exit;
    uint8_t acc = 0;
    for (size_t i = 0; i < 32; i++) acc |= out[i];
    ret = acc == 0 ? plait_fail(PLAIT_EAUTH, "x25519: all-zero shared secret") : 0;
exit:
    if (ret == PLAIT_EINTERNAL) plait_fail(ret, "x25519: mbedTLS -0x%04x", (unsigned)-mrc);
    if (ret != 0) memset(out, 0, 32);
    plait_zeroize(k, sizeof(k));
    mbedtls_mpi_free(&d);
    mbedtls_ecp_point_free(&P);
    mbedtls_ecp_point_free(&R);
    mbedtls_ecp_group_free(&grp);
    return ret;
}

int plait__secagg_x25519_public(const uint8_t sk[32], uint8_t pk[32])
{
    static const uint8_t base[32] = {9};
    return plait_x25519(sk, base, pk);
}

/* ---- m-bit packing --------------------------------------------------------------- */

size_t plait_pack_bits_len(size_t n, unsigned m)
{
    if (m < 1 || m > 32 || n > (SIZE_MAX - 7) / 32) return 0;
    return (n * m + 7) / 8;
}

int plait_pack_bits(const uint32_t *w, size_t n, unsigned m, uint8_t *out, size_t cap)
{
    if (m < 1 || m > 32 || (n > 0 && (w == NULL || out == NULL)))
        return plait_fail(PLAIT_EINVAL, "pack: bad arguments (m %u)", m);
    size_t need = plait_pack_bits_len(n, m);
    if (need == 0 && n > 0) return plait_fail(PLAIT_EINVAL, "pack: %zu words of %u bits overflow", n, m);
    if (cap < need) return plait_fail(PLAIT_ETOOBIG, "pack: need %zu bytes, have %zu", need, cap);
    uint32_t mask = word_mask(m);
    uint64_t acc = 0; /* bits not yet written, low first */
    unsigned nb = 0;
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        if (w[i] & ~mask) {
            if (need) memset(out, 0, need);
            return plait_fail(PLAIT_EINVAL, "pack: word %zu does not fit in %u bits", i, m);
        }
        acc |= (uint64_t)w[i] << nb;
        nb += m;
        while (nb >= 8) {
            out[o++] = (uint8_t)acc;
            acc >>= 8;
            nb -= 8;
        }
    }
    if (nb > 0) out[o++] = (uint8_t)acc;
    return 0;
}

int plait_unpack_bits(const uint8_t *in, size_t len, size_t n, unsigned m, uint32_t *w)
{
    if (m < 1 || m > 32 || (n > 0 && (in == NULL || w == NULL)))
        return plait_fail(PLAIT_EINVAL, "unpack: bad arguments (m %u)", m);
    size_t need = plait_pack_bits_len(n, m);
    if ((need == 0 && n > 0) || len != need)
        return plait_fail(PLAIT_EPROTO, "unpack: %zu bytes for %zu words of %u bits (want %zu)", len, n, m, need);
    if (m % 8 == 0) { /* whole bytes, little-endian (the layout below): no padding bits to check */
        size_t b = m / 8;
        if (b == 1)
            for (size_t i = 0; i < n; i++) w[i] = in[i];
        else if (b == 2)
            for (size_t i = 0; i < n; i++) w[i] = (uint32_t)in[2 * i] | (uint32_t)in[2 * i + 1] << 8;
        else
            for (size_t i = 0; i < n; i++) {
                uint32_t v = 0;
                for (size_t k = 0; k < b; k++) v |= (uint32_t)in[b * i + k] << (8 * k);
                w[i] = v;
            }
        return 0;
    }
    uint32_t mask = word_mask(m);
    uint64_t acc = 0;
    unsigned nb = 0;
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        while (nb < m) {
            acc |= (uint64_t)in[o++] << nb;
            nb += 8;
        }
        w[i] = (uint32_t)acc & mask;
        acc >>= m;
        nb -= m;
    }
    if (acc != 0) return plait_fail(PLAIT_EPROTO, "unpack: nonzero padding bits");
    return 0;
}

/* ---- parameters --------------------------------------------------------------------- */

int plait_secagg_mask_bits(unsigned quant_bits, uint32_t max_cohort, unsigned *m)
{
    if (m == NULL || quant_bits < 1 || quant_bits > 32 || max_cohort == 0)
        return plait_fail(PLAIT_EINVAL, "secagg: quant_bits %u, max cohort %u", quant_bits, (unsigned)max_cohort);
    unsigned lg = 0;
    while (lg < 32 && ((uint64_t)1 << lg) < max_cohort) lg++;
    if (quant_bits + lg > 32)
        return plait_fail(PLAIT_ETOOBIG,
                          "secagg: %u quantization bits + ceil(log2(%u devices)) = %u ring bits, more than 32; use "
                          "fewer bits or a smaller max cohort",
                          quant_bits, (unsigned)max_cohort, quant_bits + lg);
    *m = quant_bits + lg;
    return 0;
}

static double lchoose(double a, double b)
{
    return lgamma(a + 1.0) - lgamma(b + 1.0) - lgamma(a - b + 1.0);
}

/* P[X >= x0] for X ~ Hypergeometric(population N, K marked, k draws), by
 * summing the exact probability mass (log-gamma) over the tail. */
static double hyper_tail_ge(uint32_t N, uint32_t K, uint32_t k, long x0)
{
    long lo = (long)k - (long)(N - K);
    if (lo < 0) lo = 0;
    long hi = (long)(K < k ? K : k);
    if (x0 <= lo) return 1.0;
    if (x0 > hi) return 0.0;
    double lden = lchoose(N, k), s = 0.0;
    for (long x = x0; x <= hi; x++) s += exp(lchoose(K, (double)x) + lchoose(N - K, (double)(k - (uint32_t)x)) - lden);
    return s > 1.0 ? 1.0 : s;
}

/* The three failure events of the header comment, union-bounded over devices. */
static double fail_bound(uint32_t n, uint32_t k, uint32_t t, uint32_t D, uint32_t C)
{
    if (k >= n - 1) {
        /* Complete graph: counts are deterministic. A dropped device's surviving
         * neighbours number at least n - D; a device has at most C corrupt peers. */
        if ((uint64_t)t > (uint64_t)n - D) return 1.0;
        if (2 * (uint64_t)t <= (uint64_t)n + C) return 1.0;
        return 0.0;
    }
    uint32_t Dn = D > n - 1 ? n - 1 : D, Cn = C > n - 1 ? n - 1 : C;
    double pa = hyper_tail_ge(n - 1, Dn, k, (long)k - (long)t + 1); /* fewer than t neighbours survive */
    double pb = hyper_tail_ge(n - 1, Cn, k, 2 * (long)t - (long)k - 1); /* both shares of a device leak */
    uint32_t h = k / 2, r = D + C > n ? n : D + C;
    double pc = 0.0; /* h consecutive ring positions all removed */
    if (r >= h) pc = exp(lchoose(n - h, r - h) - lchoose(n, r));
    double tot = (double)n * (pa + pb) + (double)n * pc;
    return tot > 1.0 ? 1.0 : tot;
}

static void counts(uint32_t n, double dropout, double corrupt, uint32_t *D, uint32_t *C)
{
    *D = (uint32_t)ceil(dropout * (double)n);
    *C = (uint32_t)floor(corrupt * (double)n);
}

int plait_secagg_params_bound(uint32_t n, uint32_t k, uint32_t t, double dropout, double corrupt, double *log2_fail)
{
    if (log2_fail == NULL || n < 2 || n > PLAIT_SECAGG_MAX_COHORT || k < 1 || k > n - 1 || t < 1 || t > k + 1 ||
        !(dropout >= 0 && dropout < 1) || !(corrupt >= 0 && corrupt < 1))
        return plait_fail(PLAIT_EINVAL, "secagg: bad parameters n %u k %u t %u", (unsigned)n, (unsigned)k, (unsigned)t);
    uint32_t D, C;
    counts(n, dropout, corrupt, &D, &C);
    *log2_fail = log2(fail_bound(n, k, t, D, C));
    return 0;
}

/* Cohorts this small always use the complete graph. */
#define COMPLETE_MAX 16u

int plait_secagg_params_choose(uint32_t n, double dropout, double corrupt, double sigma, plait_secagg_params_t *out)
{
    if (out == NULL || n < 2 || n > PLAIT_SECAGG_MAX_COHORT || !(dropout >= 0 && dropout < 1) ||
        !(corrupt >= 0 && corrupt < 1) || !(sigma >= 1 && sigma <= 128))
        return plait_fail(PLAIT_EINVAL, "secagg: params for n %u, dropout %g, corrupt %g, sigma %g", (unsigned)n,
                          dropout, corrupt, sigma);
    uint32_t D, C;
    counts(n, dropout, corrupt, &D, &C);
    double target = exp2(-sigma);
    memset(out, 0, sizeof(*out));
    out->n = n;
    if (n > COMPLETE_MAX) {
        for (uint32_t k = 2; k < n - 1 && k <= PLAIT_SECAGG_MAX_DEGREE; k += 2) {
            double best = 2.0;
            uint32_t best_t = 0;
            for (uint32_t t = k / 2 + 1; t <= k; t++) {
                double f = fail_bound(n, k, t, D, C);
                if (f < best) best = f, best_t = t;
            }
            if (best_t != 0 && best <= target) {
                out->k = k;
                out->t = best_t;
                out->log2_fail = log2(best);
                return 0;
            }
        }
    }
    /* Complete graph: the largest threshold that D dropouts still leave
     * reachable, provided it keeps 2t > n + C. */
    if (n - 1 > PLAIT_SECAGG_MAX_DEGREE)
        return plait_fail(PLAIT_ETHRESHOLD, "secagg: no graph of degree <= %u meets 2^-%g for %u devices",
                          PLAIT_SECAGG_MAX_DEGREE, sigma, (unsigned)n);
    uint32_t t = n - D;
    if (t > n - 1) t = n - 1;
    if (D >= n || t < 1 || 2 * (uint64_t)t <= (uint64_t)n + C)
        return plait_fail(PLAIT_ETHRESHOLD,
                          "secagg: %u devices cannot tolerate %u dropouts and %u colluding devices (need n - dropouts "
                          "> (n + colluding) / 2)",
                          (unsigned)n, (unsigned)D, (unsigned)C);
    out->k = n - 1;
    out->t = t;
    out->complete = 1;
    out->log2_fail = -INFINITY;
    return 0;
}

/* ---- round context and graph --------------------------------------------------------- */

void plait_secagg_round_init(plait_secagg_round_t *r)
{
    memset(r, 0, sizeof(*r));
}

void plait_secagg_round_free(plait_secagg_round_t *r)
{
    if (r == NULL) return;
    free(r->nbr);
    memset(r, 0, sizeof(*r));
}

static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return (x > y) - (x < y);
}

static int round_setup(plait_secagg_round_t *r, const uint8_t *dep, size_t dep_len, uint64_t round_id,
                       const plait_secagg_params_t *p, const uint8_t graph_seed[32], unsigned m, size_t len,
                       uint32_t only);

int plait_secagg_round_setup(plait_secagg_round_t *r, const uint8_t *dep, size_t dep_len, uint64_t round_id,
                             const plait_secagg_params_t *p, const uint8_t graph_seed[32], unsigned m, size_t len)
{
    return round_setup(r, dep, dep_len, round_id, p, graph_seed, m, len, 0);
}

int plait_secagg_round_setup_device(plait_secagg_round_t *r, const uint8_t *dep, size_t dep_len, uint64_t round_id,
                                    const plait_secagg_params_t *p, const uint8_t graph_seed[32], unsigned m,
                                    size_t len, uint32_t self)
{
    if (p != NULL && (self < 1 || self > p->n))
        return plait_fail(PLAIT_EINVAL, "secagg: device index %u outside 1..%u", (unsigned)self, (unsigned)p->n);
    return round_setup(r, dep, dep_len, round_id, p, graph_seed, m, len, self);
}

/* Build r; only = 0 keeps every device's row, else only that device's. */
static int round_setup(plait_secagg_round_t *r, const uint8_t *dep, size_t dep_len, uint64_t round_id,
                       const plait_secagg_params_t *p, const uint8_t graph_seed[32], unsigned m, size_t len,
                       uint32_t only)
{
    if (r == NULL || p == NULL || graph_seed == NULL) return plait_fail(PLAIT_EINVAL, "secagg: NULL argument");
    if (dep == NULL || dep_len < 1 || dep_len > PLAIT_SECAGG_DEP_MAX)
        return plait_fail(PLAIT_EINVAL, "secagg: deployment id of %zu bytes (want 1..%d)", dep_len,
                          PLAIT_SECAGG_DEP_MAX);
    uint32_t n = p->n, k = p->k, t = p->t;
    if (n < 2 || n > PLAIT_SECAGG_MAX_COHORT)
        return plait_fail(PLAIT_EINVAL, "secagg: cohort %u (want 2..%u)", (unsigned)n, PLAIT_SECAGG_MAX_COHORT);
    if (k < 1 || k > n - 1 || k > PLAIT_SECAGG_MAX_DEGREE || (k != n - 1 && k % 2 != 0))
        return plait_fail(PLAIT_EINVAL, "secagg: degree %u for cohort %u (want even, or n - 1)", (unsigned)k,
                          (unsigned)n);
    /* 2t > k + 1: a device and its k neighbours each reveal at most one of
     * its two secrets, so no server can collect t shares of both. */
    if (t > k || 2 * (uint64_t)t <= (uint64_t)k + 1)
        return plait_fail(PLAIT_EINVAL, "secagg: threshold %u for degree %u (want (k + 1) / 2 < t <= k)",
                          (unsigned)t, (unsigned)k);
    if (m < 1 || m > 32) return plait_fail(PLAIT_EINVAL, "secagg: ring width %u bits (want 1..32)", m);
    if (len < 1 || len > ((size_t)1 << 30)) return plait_fail(PLAIT_EINVAL, "secagg: vector length %zu", len);
    plait_secagg_round_free(r);
    uint32_t *nbr = malloc((size_t)(only ? 1 : n) * k * sizeof(uint32_t));
    uint32_t *perm = malloc((size_t)n * sizeof(uint32_t));
    if (nbr == NULL || perm == NULL) {
        free(nbr);
        free(perm);
        return plait_fail(PLAIT_ENOMEM, "secagg: graph of %u x %u", (unsigned)n, (unsigned)k);
    }
    /* Context hash. */
    plait_sha256_t h;
    uint8_t b8[8], b4[4];
    plait_sha256_init(&h);
    plait_sha256_update(&h, (const uint8_t *)DOMAIN, sizeof(DOMAIN) - 1);
    be32(b4, (uint32_t)dep_len);
    plait_sha256_update(&h, b4, 4);
    plait_sha256_update(&h, dep, dep_len);
    be64(b8, round_id);
    plait_sha256_update(&h, b8, 8);
    plait_sha256_finish(&h, r->ctx);
    plait_sha256(dep, dep_len, r->dep_hash);
    r->round_id = round_id;
    r->p = *p;
    r->p.complete = k == n - 1;
    r->m = m;
    r->len = len;
    r->nbr = nbr;
    r->only = only;
    if (k == n - 1) {
        for (uint32_t u = only ? only : 1; u <= (only ? only : n); u++) {
            uint32_t *row = nbr + (only ? 0 : (size_t)(u - 1) * k), c = 0;
            for (uint32_t v = 1; v <= n; v++)
                if (v != u) row[c++] = v;
        }
        free(perm);
        return 0;
    }
    /* perm[pos] = device at ring position pos: Fisher-Yates driven by a
     * ChaCha20 stream keyed by SHA-256(domain || "graph" || seed), with
     * rejection sampling so every permutation is equally likely. */
    uint8_t key[32];
    plait_sha256_init(&h);
    plait_sha256_update(&h, (const uint8_t *)DOMAIN, sizeof(DOMAIN) - 1);
    plait_sha256_update(&h, (const uint8_t *)"graph", 5);
    plait_sha256_update(&h, graph_seed, 32);
    plait_sha256_finish(&h, key);
    mbedtls_chacha20_context cc;
    mbedtls_chacha20_init(&cc);
    static const uint8_t zero_nonce[12];
    mbedtls_chacha20_setkey(&cc, key);
    mbedtls_chacha20_starts(&cc, zero_nonce, 0);
    for (uint32_t i = 0; i < n; i++) perm[i] = i + 1;
    for (uint32_t i = n - 1; i > 0; i--) {
        uint32_t bound = i + 1, lim = (uint32_t)(0x100000000ull - (0x100000000ull % bound)), v;
        do {
            uint8_t z[4] = {0}, o[4];
            mbedtls_chacha20_update(&cc, 4, z, o);
            v = rd_be32(o);
        } while (lim != 0 && v >= lim);
        uint32_t j = v % bound, tmp = perm[i];
        perm[i] = perm[j];
        perm[j] = tmp;
    }
    mbedtls_chacha20_free(&cc);
    uint32_t half = k / 2;
    for (uint32_t pos = 0; pos < n; pos++) {
        uint32_t u = perm[pos];
        if (only && u != only) continue;
        uint32_t *row = nbr + (only ? 0 : (size_t)(u - 1) * k), c = 0;
        for (uint32_t d = 1; d <= half; d++) {
            row[c++] = perm[(pos + d) % n];
            row[c++] = perm[(pos + n - d) % n];
        }
        qsort(row, k, sizeof(uint32_t), cmp_u32);
    }
    free(perm);
    return 0;
}

const uint32_t *plait_secagg_neighbours(const plait_secagg_round_t *r, uint32_t u)
{
    if (r == NULL || r->nbr == NULL || u < 1 || u > r->p.n) return NULL;
    if (r->only) return u == r->only ? r->nbr : NULL;
    return r->nbr + (size_t)(u - 1) * r->p.k;
}

long plait__secagg_nbr_pos(const plait_secagg_round_t *r, uint32_t u, uint32_t v)
{
    const uint32_t *row = plait_secagg_neighbours(r, u);
    if (row == NULL || v < 1 || v > r->p.n) return -1;
    size_t lo = 0, hi = r->p.k;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (row[mid] < v) lo = mid + 1;
        else hi = mid;
    }
    return lo < r->p.k && row[lo] == v ? (long)lo : -1;
}

int plait_secagg_adjacent(const plait_secagg_round_t *r, uint32_t u, uint32_t v)
{
    return plait__secagg_nbr_pos(r, u, v) >= 0;
}

