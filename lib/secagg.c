/*
 * secagg.c: SecAgg+ (Bell et al. 2020) round state for devices and server,
 * the communication graph, its parameters, and the primitives under them
 * (X25519, HKDF-SHA256, ChaCha20, ChaCha20-Poly1305 from mbedTLS 2.28).
 *
 * Invariants:
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
#include <mbedtls/oid.h>
#include <mbedtls/pk.h>
#include <mbedtls/x509_crt.h>

#include "pki_int.h"

static const char DOMAIN[] = "plait-secagg-v1";

/* ---- byte helpers ----------------------------------------------------------- */

static void be32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

static void be64(uint8_t *p, uint64_t v)
{
    be32(p, (uint32_t)(v >> 32));
    be32(p + 4, (uint32_t)v);
}

static uint32_t rd_be32(const uint8_t *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

static uint32_t word_mask(unsigned m)
{
    return m >= 32 ? 0xFFFFFFFFu : (uint32_t)((1u << m) - 1u);
}

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

static int x25519_public(const uint8_t sk[32], uint8_t pk[32])
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

int plait_secagg_round_setup(plait_secagg_round_t *r, const uint8_t *dep, size_t dep_len, uint64_t round_id,
                             const plait_secagg_params_t *p, const uint8_t graph_seed[32], unsigned m, size_t len)
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
    uint32_t *nbr = malloc((size_t)n * k * sizeof(uint32_t));
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
    if (k == n - 1) {
        for (uint32_t u = 1; u <= n; u++) {
            uint32_t *row = nbr + (size_t)(u - 1) * k, c = 0;
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
        uint32_t u = perm[pos], *row = nbr + (size_t)(u - 1) * k, c = 0;
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
    return r->nbr + (size_t)(u - 1) * r->p.k;
}

/* Position of v in u's sorted neighbour row, or -1. */
static long nbr_pos(const plait_secagg_round_t *r, uint32_t u, uint32_t v)
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
    return nbr_pos(r, u, v) >= 0;
}

/* ---- key derivations and the PRG ----------------------------------------------------- */

/* HKDF with the domain as salt and info = label || ctx || a || b (big endian). */
static int derive(const plait_secagg_round_t *r, const char *label, const uint8_t ikm[32], uint32_t a, uint32_t b,
                  uint8_t out[32])
{
    uint8_t info[16 + 32 + 8];
    size_t ll = strlen(label);
    memcpy(info, label, ll);
    memcpy(info + ll, r->ctx, 32);
    be32(info + ll + 32, a);
    be32(info + ll + 36, b);
    return plait_hkdf_sha256((const uint8_t *)DOMAIN, sizeof(DOMAIN) - 1, ikm, 32, info, ll + 40, out, 32);
}

/* acc[i] += sign · PRG(key)[i] (mod 2^32), PRG = ChaCha20 keystream, zero nonce, LE words. */
static void prg_add(const uint8_t key[32], int negate, uint32_t *acc, size_t len)
{
    static const uint8_t zeros[1024], zero_nonce[12];
    uint8_t ks[1024];
    mbedtls_chacha20_context cc;
    mbedtls_chacha20_init(&cc);
    mbedtls_chacha20_setkey(&cc, key);
    mbedtls_chacha20_starts(&cc, zero_nonce, 0);
    for (size_t i = 0; i < len;) {
        size_t nw = len - i < sizeof(ks) / 4 ? len - i : sizeof(ks) / 4;
        mbedtls_chacha20_update(&cc, nw * 4, zeros, ks);
        if (negate)
            for (size_t j = 0; j < nw; j++)
                acc[i + j] -= (uint32_t)ks[4 * j] | ((uint32_t)ks[4 * j + 1] << 8) | ((uint32_t)ks[4 * j + 2] << 16) |
                              ((uint32_t)ks[4 * j + 3] << 24);
        else
            for (size_t j = 0; j < nw; j++)
                acc[i + j] += (uint32_t)ks[4 * j] | ((uint32_t)ks[4 * j + 1] << 8) | ((uint32_t)ks[4 * j + 2] << 16) |
                              ((uint32_t)ks[4 * j + 3] << 24);
        i += nw;
    }
    plait_zeroize(ks, sizeof(ks));
    mbedtls_chacha20_free(&cc);
}

/* Self-mask key of device u from its seed b. */
static int self_key(const plait_secagg_round_t *r, const uint8_t b[32], uint32_t u, uint8_t key[32])
{
    return derive(r, "self", b, u, 0, key);
}

/* Pairwise mask key from one side's c_sk and the other's c_pk. */
static int pair_key(const plait_secagg_round_t *r, const uint8_t c_sk[32], const uint8_t c_pk_peer[32], uint32_t u,
                    uint32_t v, uint8_t key[32])
{
    uint8_t z[32];
    int ret = plait_x25519(c_sk, c_pk_peer, z);
    if (ret == 0) ret = derive(r, "pair", z, u < v ? u : v, u < v ? v : u, key);
    plait_zeroize(z, sizeof(z));
    return ret;
}

/* Share-encryption key for the ordered pair (sender, receiver), from the
 * X25519 secret z shared by the two devices' s pairs. */
static int share_key(const plait_secagg_round_t *r, const uint8_t z[32], uint32_t from, uint32_t to, uint8_t key[32])
{
    return derive(r, "share", z, from, to, key);
}

static size_t share_aad(const plait_secagg_round_t *r, uint32_t from, uint32_t to, uint8_t *aad)
{
    static const char lbl[] = "plait-secagg-share";
    memcpy(aad, lbl, sizeof(lbl) - 1);
    memcpy(aad + sizeof(lbl) - 1, r->ctx, 32);
    be32(aad + sizeof(lbl) - 1 + 32, from);
    be32(aad + sizeof(lbl) - 1 + 36, to);
    return sizeof(lbl) - 1 + 40;
}

/* ---- signatures ------------------------------------------------------------------------- */

static void advert_hash(const plait_secagg_round_t *r, const plait_secagg_advert_t *a, uint8_t out[32])
{
    static const char lbl[] = "plait-secagg-adv-v1";
    plait_sha256_t h;
    uint8_t b[12];
    plait_sha256_init(&h);
    plait_sha256_update(&h, (const uint8_t *)lbl, sizeof(lbl) - 1);
    plait_sha256_update(&h, a->c_pk, 32);
    plait_sha256_update(&h, a->s_pk, 32);
    plait_sha256_update(&h, r->dep_hash, 32);
    be64(b, r->round_id);
    be32(b + 8, a->idx);
    plait_sha256_update(&h, b, 12);
    plait_sha256_finish(&h, out);
}

int plait_secagg_advert_verify(const plait_secagg_round_t *r, const plait_secagg_advert_t *a, const uint8_t *crt,
                               size_t crt_len, const char *ca_pem)
{
    if (r == NULL || r->nbr == NULL || a == NULL || crt == NULL) return plait_fail(PLAIT_EINVAL, "secagg: NULL argument");
    if (a->idx < 1 || a->idx > r->p.n) return plait_fail(PLAIT_EINVAL, "secagg: advert index %u", (unsigned)a->idx);
    if (a->sig_len < 8 || a->sig_len > PLAIT_SECAGG_SIG_MAX)
        return plait_fail(PLAIT_EPROTO, "secagg: signature of %zu bytes", a->sig_len);
    if (crt_len < 1 || crt_len > PLAIT_SECAGG_CRT_MAX)
        return plait_fail(PLAIT_EINVAL, "secagg: certificate of %zu bytes (max %d)", crt_len, PLAIT_SECAGG_CRT_MAX);
    /* A low-order public key would give every neighbour an all-zero secret: refused here, where
     * the server and each device check adverts, rather than failing the neighbours later. A
     * clamped scalar is a multiple of 8, so it maps exactly the low-order points to zero. */
    {
        uint8_t probe[32], z[32];
        memset(probe, 0x5a, sizeof(probe));
        probe[0] &= 248;
        probe[31] = (uint8_t)((probe[31] & 127) | 64);
        const uint8_t *pks[2] = {a->c_pk, a->s_pk};
        for (int i = 0; i < 2; i++)
            if (plait_x25519(probe, pks[i], z) != 0)
                return plait_fail(PLAIT_EAUTH, "secagg: advert %u: %s key is a low-order point", (unsigned)a->idx,
                                  i == 0 ? "mask" : "share");
        plait_zeroize(z, sizeof(z));
    }
    int ret = 0, mrc;
    mbedtls_x509_crt c, ca;
    mbedtls_x509_crt_init(&c);
    mbedtls_x509_crt_init(&ca);
    uint8_t *tmp = NULL;
    const uint8_t *use = crt;
    size_t use_len = crt_len;
    if (crt[0] == '-' && crt[crt_len - 1] != '\0') { /* PEM without its NUL: mbedTLS wants one */
        if ((tmp = malloc(crt_len + 1)) == NULL) return plait_fail(PLAIT_ENOMEM, "secagg: certificate copy");
        memcpy(tmp, crt, crt_len);
        tmp[crt_len] = '\0';
        use = tmp;
        use_len = crt_len + 1;
    }
    if ((mrc = mbedtls_x509_crt_parse(&c, use, use_len)) != 0) {
        ret = plait_fail(PLAIT_EPROTO, "secagg: device %u certificate unparseable (mbedTLS -0x%04x)",
                         (unsigned)a->idx, (unsigned)-mrc);
        goto exit;
    }
    if (ca_pem != NULL) {
        uint32_t flags = 0;
        if ((mrc = mbedtls_x509_crt_parse(&ca, (const unsigned char *)ca_pem, strlen(ca_pem) + 1)) != 0) {
            ret = plait_fail(PLAIT_EINVAL, "secagg: CA certificate unparseable (mbedTLS -0x%04x)", (unsigned)-mrc);
            goto exit;
        }
        mrc = mbedtls_x509_crt_verify_with_profile(&c, &ca, NULL, plait__pki_profile(), NULL, &flags, NULL, NULL);
        if (mrc != 0) {
            ret = plait_fail(PLAIT_EAUTH, "secagg: device %u certificate: %s", (unsigned)a->idx,
                             plait__pki_flags_reason(flags));
            goto exit;
        }
        if (mbedtls_x509_crt_check_extended_key_usage(&c, MBEDTLS_OID_CLIENT_AUTH,
                                                      MBEDTLS_OID_SIZE(MBEDTLS_OID_CLIENT_AUTH)) != 0) {
            ret = plait_fail(PLAIT_EAUTH, "secagg: device %u certificate is not for client authentication",
                             (unsigned)a->idx);
            goto exit;
        }
    }
    if (!mbedtls_pk_can_do(&c.pk, MBEDTLS_PK_ECDSA)) {
        ret = plait_fail(PLAIT_EAUTH, "secagg: device %u certificate key is not ECDSA", (unsigned)a->idx);
        goto exit;
    }
    uint8_t hash[32];
    advert_hash(r, a, hash);
    if ((mrc = mbedtls_pk_verify(&c.pk, MBEDTLS_MD_SHA256, hash, 32, a->sig, a->sig_len)) != 0)
        ret = plait_fail(PLAIT_EAUTH, "secagg: device %u key advert signature does not verify", (unsigned)a->idx);
exit:
    free(tmp);
    mbedtls_x509_crt_free(&c);
    mbedtls_x509_crt_free(&ca);
    return ret;
}

/* ---- device ------------------------------------------------------------------------------ */

enum { ST_KEYS = 0, ST_SHARED, ST_MASKED, ST_DONE };

typedef struct {
    int accepted, received, has_sz;
    uint8_t c_pk[32], s_pk[32];
    uint8_t sz[32];                           /* X25519(s_sk, s_pk): both directions' share keys come from it */
    uint8_t sk_share[PLAIT_SECAGG_SHARE_LEN]; /* neighbour's c_sk share held by us */
    uint8_t b_share[PLAIT_SECAGG_SHARE_LEN];  /* neighbour's b share held by us */
} peer_t;

struct plait_secagg_device_s {
    const plait_secagg_round_t *r;
    uint32_t self;
    int state;
    uint8_t c_sk[32], c_pk[32], s_sk[32], s_pk[32], b[32];
    uint8_t own_b_share[PLAIT_SECAGG_SHARE_LEN]; /* our own share of b (x = self) */
    uint8_t req_hash[32];                         /* the unmask request answered (ST_DONE, !refused) */
    int refused;                                  /* an unmask request was refused: answer no more */
    peer_t *peer;                                 /* k, by position in our neighbour row */
};

/* The s-pair secret with a peer, computed once (it serves both directions). */
static int peer_sz(plait_secagg_device_t *d, peer_t *p)
{
    if (p->has_sz) return 0;
    int ret = plait_x25519(d->s_sk, p->s_pk, p->sz);
    if (ret == 0) p->has_sz = 1;
    return ret;
}

static void device_wipe(plait_secagg_device_t *d)
{
    if (d->peer) plait_zeroize(d->peer, (size_t)d->r->p.k * sizeof(peer_t));
    free(d->peer);
    plait_zeroize(d, sizeof(*d));
}

void plait_secagg_device_free(plait_secagg_device_t *d)
{
    if (d == NULL) return;
    device_wipe(d);
    free(d);
}

static int gen_x25519(plait_drbg_t *rng, uint8_t sk[32], uint8_t pk[32])
{
    int ret = plait_drbg_random(rng, sk, 32);
    if (ret != 0) return ret;
    sk[0] &= 248; /* store clamped, so shares reconstruct the scalar actually used */
    sk[31] &= 127;
    sk[31] |= 64;
    return x25519_public(sk, pk);
}

int plait_secagg_device_create(plait_secagg_device_t **out, const plait_secagg_round_t *r, uint32_t self,
                               plait_drbg_t *rng)
{
    if (out == NULL || r == NULL || r->nbr == NULL || rng == NULL)
        return plait_fail(PLAIT_EINVAL, "secagg: NULL argument or round not set up");
    *out = NULL;
    if (self < 1 || self > r->p.n)
        return plait_fail(PLAIT_EINVAL, "secagg: device index %u (cohort %u)", (unsigned)self, (unsigned)r->p.n);
    plait_secagg_device_t *d = calloc(1, sizeof(*d));
    if (d == NULL) return plait_fail(PLAIT_ENOMEM, "secagg: device state");
    d->r = r;
    d->self = self;
    d->peer = calloc(r->p.k, sizeof(peer_t));
    int ret;
    if (d->peer == NULL) {
        ret = plait_fail(PLAIT_ENOMEM, "secagg: %u peers", (unsigned)r->p.k);
        goto fail;
    }
    if ((ret = gen_x25519(rng, d->c_sk, d->c_pk)) != 0 || (ret = gen_x25519(rng, d->s_sk, d->s_pk)) != 0 ||
        (ret = plait_drbg_random(rng, d->b, 32)) != 0)
        goto fail;
    *out = d;
    return 0;
fail:
    plait_secagg_device_free(d);
    return ret;
}

int plait_secagg_device_advertise(plait_secagg_device_t *d, const char *key_pem, plait_drbg_t *rng,
                                  plait_secagg_advert_t *out)
{
    if (d == NULL || key_pem == NULL || rng == NULL || out == NULL)
        return plait_fail(PLAIT_EINVAL, "secagg: NULL argument");
    memset(out, 0, sizeof(*out));
    out->idx = d->self;
    memcpy(out->c_pk, d->c_pk, 32);
    memcpy(out->s_pk, d->s_pk, 32);
    uint8_t hash[32];
    advert_hash(d->r, out, hash);
    mbedtls_pk_context pk;
    mbedtls_pk_init(&pk);
    int ret = 0;
    int mrc = mbedtls_pk_parse_key(&pk, (const unsigned char *)key_pem, strlen(key_pem) + 1, NULL, 0);
    if (mrc != 0) {
        ret = plait_fail(PLAIT_EPROTO, "secagg: device key unparseable (mbedTLS -0x%04x)", (unsigned)-mrc);
        goto exit;
    }
    if (!mbedtls_pk_can_do(&pk, MBEDTLS_PK_ECDSA)) {
        ret = plait_fail(PLAIT_EPROTO, "secagg: device key is not an EC key");
        goto exit;
    }
    uint8_t sig[MBEDTLS_PK_SIGNATURE_MAX_SIZE];
    size_t sig_len = 0;
    mrc = mbedtls_pk_sign(&pk, MBEDTLS_MD_SHA256, hash, 32, sig, &sig_len, plait__pki_rng, rng);
    if (mrc != 0 || sig_len > PLAIT_SECAGG_SIG_MAX) {
        ret = plait_fail(PLAIT_EINTERNAL, "secagg: signing the key advert failed (mbedTLS -0x%04x, %zu bytes)",
                         (unsigned)-mrc, sig_len);
        goto exit;
    }
    memcpy(out->sig, sig, sig_len);
    out->sig_len = sig_len;
exit:
    mbedtls_pk_free(&pk);
    return ret;
}

int plait_secagg_device_accept_advert(plait_secagg_device_t *d, const plait_secagg_advert_t *a, const uint8_t *crt,
                                      size_t crt_len, const char *ca_pem)
{
    if (d == NULL || a == NULL) return plait_fail(PLAIT_EINVAL, "secagg: NULL argument");
    if (d->state != ST_KEYS) return plait_fail(PLAIT_EINVAL, "secagg: adverts are accepted before sharing only");
    long pos = nbr_pos(d->r, d->self, a->idx);
    if (pos < 0)
        return plait_fail(PLAIT_EINVAL, "secagg: device %u is not a neighbour of %u", (unsigned)a->idx,
                          (unsigned)d->self);
    peer_t *p = &d->peer[pos];
    if (p->accepted) return plait_fail(PLAIT_EINVAL, "secagg: second advert from device %u", (unsigned)a->idx);
    int ret = plait_secagg_advert_verify(d->r, a, crt, crt_len, ca_pem);
    if (ret != 0) return ret;
    memcpy(p->c_pk, a->c_pk, 32);
    memcpy(p->s_pk, a->s_pk, 32);
    p->accepted = 1;
    return 0;
}

int plait_secagg_device_shares(plait_secagg_device_t *d, plait_drbg_t *rng, plait_secagg_ct_t *out, size_t cap,
                               size_t *n_out)
{
    if (d == NULL || rng == NULL || n_out == NULL || (cap > 0 && out == NULL))
        return plait_fail(PLAIT_EINVAL, "secagg: NULL argument");
    *n_out = 0;
    if (d->state != ST_KEYS) return plait_fail(PLAIT_EINVAL, "secagg: keys already shared");
    const plait_secagg_round_t *r = d->r;
    const uint32_t *row = plait_secagg_neighbours(r, d->self);
    uint32_t k = r->p.k, t = r->p.t;
    size_t na = 0;
    for (uint32_t i = 0; i < k; i++) na += d->peer[i].accepted != 0;
    /* Holders are the accepted neighbours and this device itself. */
    if (na + 1 < t)
        return plait_fail(PLAIT_ETHRESHOLD, "secagg: %zu neighbours advertised keys, threshold %u needs %u", na,
                          (unsigned)t, (unsigned)(t - 1));
    if (cap < na) return plait_fail(PLAIT_ETOOBIG, "secagg: room for %zu share messages, need %zu", cap, na);
    uint32_t *xs = malloc((na + 1) * sizeof(uint32_t));
    uint8_t(*sk_sh)[PLAIT_SECAGG_SHARE_LEN] = malloc((na + 1) * PLAIT_SECAGG_SHARE_LEN);
    uint8_t(*b_sh)[PLAIT_SECAGG_SHARE_LEN] = malloc((na + 1) * PLAIT_SECAGG_SHARE_LEN);
    int ret = 0;
    if (xs == NULL || sk_sh == NULL || b_sh == NULL) {
        ret = plait_fail(PLAIT_ENOMEM, "secagg: shares for %zu neighbours", na);
        goto exit;
    }
    size_t c = 0;
    for (uint32_t i = 0; i < k; i++)
        if (d->peer[i].accepted) xs[c++] = row[i];
    xs[c] = d->self;
    if ((ret = plait_shamir_split(d->c_sk, t, xs, na + 1, rng, sk_sh)) != 0 ||
        (ret = plait_shamir_split(d->b, t, xs, na + 1, rng, b_sh)) != 0)
        goto exit;
    memcpy(d->own_b_share, b_sh[na], PLAIT_SECAGG_SHARE_LEN);
    c = 0;
    for (uint32_t i = 0; i < k; i++) {
        if (!d->peer[i].accepted) continue;
        uint32_t to = row[i];
        uint8_t pt[PLAIT_SECAGG_SHARE_PT_LEN], key[32], aad[64];
        be32(pt, d->self);
        be32(pt + 4, to);
        memcpy(pt + 8, sk_sh[c], PLAIT_SECAGG_SHARE_LEN);
        memcpy(pt + 8 + PLAIT_SECAGG_SHARE_LEN, b_sh[c], PLAIT_SECAGG_SHARE_LEN);
        plait_secagg_ct_t *o = &out[c];
        o->from = d->self;
        o->to = to;
        size_t al = share_aad(r, d->self, to, aad);
        if ((ret = peer_sz(d, &d->peer[i])) == 0 && (ret = share_key(r, d->peer[i].sz, d->self, to, key)) == 0 &&
            (ret = plait_drbg_random(rng, o->ct, 12)) == 0)
            ret = plait_aead_seal(key, o->ct, aad, al, pt, sizeof(pt), o->ct + 12);
        plait_zeroize(pt, sizeof(pt));
        plait_zeroize(key, sizeof(key));
        if (ret != 0) goto exit;
        c++;
    }
    *n_out = c;
    d->state = ST_SHARED;
exit:
    if (ret != 0 && out != NULL && cap > 0) plait_zeroize(out, (cap < na ? cap : na) * sizeof(*out));
    if (sk_sh) plait_zeroize(sk_sh, (na + 1) * PLAIT_SECAGG_SHARE_LEN);
    if (b_sh) plait_zeroize(b_sh, (na + 1) * PLAIT_SECAGG_SHARE_LEN);
    free(xs);
    free(sk_sh);
    free(b_sh);
    return ret;
}

int plait_secagg_device_recv_share(plait_secagg_device_t *d, const plait_secagg_ct_t *c)
{
    if (d == NULL || c == NULL) return plait_fail(PLAIT_EINVAL, "secagg: NULL argument");
    if (d->state != ST_SHARED) return plait_fail(PLAIT_EINVAL, "secagg: shares are received after sharing, before masking");
    if (c->to != d->self)
        return plait_fail(PLAIT_EINVAL, "secagg: share for device %u delivered to %u", (unsigned)c->to,
                          (unsigned)d->self);
    long pos = nbr_pos(d->r, d->self, c->from);
    if (pos < 0 || !d->peer[pos].accepted)
        return plait_fail(PLAIT_EINVAL, "secagg: share from device %u, not an accepted neighbour", (unsigned)c->from);
    peer_t *p = &d->peer[pos];
    if (p->received) return plait_fail(PLAIT_EINVAL, "secagg: second share from device %u", (unsigned)c->from);
    uint8_t key[32], aad[64], pt[PLAIT_SECAGG_SHARE_PT_LEN];
    size_t al = share_aad(d->r, c->from, c->to, aad);
    int ret = peer_sz(d, p);
    if (ret == 0) ret = share_key(d->r, p->sz, c->from, c->to, key);
    if (ret == 0) ret = plait_aead_open(key, c->ct, aad, al, c->ct + 12, sizeof(pt), pt);
    if (ret == 0 && (rd_be32(pt) != c->from || rd_be32(pt + 4) != c->to))
        ret = plait_fail(PLAIT_EAUTH, "secagg: share from device %u names other devices", (unsigned)c->from);
    if (ret == 0) {
        memcpy(p->sk_share, pt + 8, PLAIT_SECAGG_SHARE_LEN);
        memcpy(p->b_share, pt + 8 + PLAIT_SECAGG_SHARE_LEN, PLAIT_SECAGG_SHARE_LEN);
        p->received = 1;
    } else if (ret == PLAIT_EAUTH) {
        ret = plait_fail(PLAIT_EAUTH, "secagg: share from device %u does not decrypt (tampered, or another round)",
                         (unsigned)c->from);
    }
    plait_zeroize(key, sizeof(key));
    plait_zeroize(pt, sizeof(pt));
    return ret;
}

int plait_secagg_device_mask(plait_secagg_device_t *d, const uint32_t *x, size_t len, uint32_t *y)
{
    if (d == NULL || x == NULL || y == NULL) return plait_fail(PLAIT_EINVAL, "secagg: NULL argument");
    const plait_secagg_round_t *r = d->r;
    if (d->state != ST_SHARED) return plait_fail(PLAIT_EINVAL, "secagg: masking needs shared keys, once");
    if (len != r->len) return plait_fail(PLAIT_EINVAL, "secagg: %zu words, round has %zu", len, r->len);
    uint32_t mask = word_mask(r->m);
    size_t nr = 0;
    for (uint32_t i = 0; i < r->p.k; i++) nr += d->peer[i].received != 0;
    if (nr + 1 < r->p.t)
        return plait_fail(PLAIT_ETHRESHOLD, "secagg: shares from %zu neighbours, threshold %u", nr, (unsigned)r->p.t);
    for (size_t i = 0; i < len; i++) {
        if (x[i] & ~mask) return plait_fail(PLAIT_EINVAL, "secagg: word %zu does not fit in %u bits", i, r->m);
        y[i] = x[i];
    }
    const uint32_t *row = plait_secagg_neighbours(r, d->self);
    uint8_t key[32];
    int ret = self_key(r, d->b, d->self, key);
    if (ret == 0) prg_add(key, 0, y, len);
    for (uint32_t i = 0; i < r->p.k && ret == 0; i++) {
        if (!d->peer[i].received) continue;
        uint32_t v = row[i];
        if ((ret = pair_key(r, d->c_sk, d->peer[i].c_pk, d->self, v, key)) == 0) prg_add(key, d->self > v, y, len);
    }
    plait_zeroize(key, sizeof(key));
    if (ret != 0) {
        memset(y, 0, len * sizeof(uint32_t));
        return ret;
    }
    for (size_t i = 0; i < len; i++) y[i] &= mask;
    d->state = ST_MASKED;
    return 0;
}

int plait_secagg_device_unmask(plait_secagg_device_t *d, const uint32_t *surv, size_t n_surv, const uint32_t *drop,
                               size_t n_drop, plait_secagg_reveal_t *out, size_t cap, size_t *n_out)
{
    if (d == NULL || n_out == NULL || (n_surv > 0 && surv == NULL) || (n_drop > 0 && drop == NULL) ||
        (cap > 0 && out == NULL))
        return plait_fail(PLAIT_EINVAL, "secagg: NULL argument");
    *n_out = 0;
    const plait_secagg_round_t *r = d->r;
    uint32_t n = r->p.n;
    /* A resent identical request gets the identical answer (nothing new is
     * revealed); any other request after the first is refused. */
    uint8_t h[32], b4[4];
    plait_sha256_t hs;
    plait_sha256_init(&hs);
    be32(b4, (uint32_t)n_surv);
    plait_sha256_update(&hs, b4, 4);
    for (size_t i = 0; i < n_surv && n_surv <= n; i++) be32(b4, surv[i]), plait_sha256_update(&hs, b4, 4);
    be32(b4, (uint32_t)n_drop);
    plait_sha256_update(&hs, b4, 4);
    for (size_t i = 0; i < n_drop && n_drop <= n; i++) be32(b4, drop[i]), plait_sha256_update(&hs, b4, 4);
    plait_sha256_finish(&hs, h);
    if (d->state == ST_DONE && (d->refused || plait_ct_memcmp(h, d->req_hash, 32) != 0))
        return plait_fail(PLAIT_EREFUSED, "secagg: unmask request refused: %s",
                          d->refused ? "an earlier request was refused" : "already answered a different request");
    if (d->state != ST_MASKED && d->state != ST_DONE)
        return plait_fail(PLAIT_EREFUSED, "secagg: unmask request refused: no masked input sent yet");
    if (n_surv > n || n_drop > n) return plait_fail(PLAIT_EPROTO, "secagg: unmask lists longer than the cohort");
    /* 1 = survivor, 2 = dropout, per device index. */
    uint8_t *cls = calloc((size_t)n + 1, 1);
    if (cls == NULL) return plait_fail(PLAIT_ENOMEM, "secagg: unmask bitmap");
    int ret = 0;
    for (size_t i = 0; i < n_surv && ret == 0; i++) {
        uint32_t v = surv[i];
        if (v < 1 || v > n) ret = plait_fail(PLAIT_EPROTO, "secagg: survivor index %u out of range", (unsigned)v);
        else if (cls[v]) ret = plait_fail(PLAIT_EPROTO, "secagg: survivor %u listed twice", (unsigned)v);
        else cls[v] = 1;
    }
    for (size_t i = 0; i < n_drop && ret == 0; i++) {
        uint32_t v = drop[i];
        if (v < 1 || v > n) ret = plait_fail(PLAIT_EPROTO, "secagg: dropout index %u out of range", (unsigned)v);
        else if (cls[v] == 1)
            ret = plait_fail(PLAIT_EREFUSED,
                             "secagg: unmask request refused: device %u listed as survivor and dropout", (unsigned)v);
        else if (cls[v] == 2) ret = plait_fail(PLAIT_EPROTO, "secagg: dropout %u listed twice", (unsigned)v);
        else cls[v] = 2;
    }
    if (ret == 0 && cls[d->self] != 1)
        ret = plait_fail(PLAIT_EREFUSED, "secagg: unmask request refused: this device is not listed as a survivor");
    const uint32_t *row = plait_secagg_neighbours(r, d->self);
    size_t c = 0;
    if (ret == 0) {
        if (cap < 1) ret = plait_fail(PLAIT_ETOOBIG, "secagg: no room for reveals");
        else {
            out[c].owner = d->self;
            out[c].kind = PLAIT_SECAGG_REVEAL_B;
            memcpy(out[c].share, d->own_b_share, PLAIT_SECAGG_SHARE_LEN);
            c++;
        }
    }
    for (uint32_t i = 0; i < r->p.k && ret == 0; i++) {
        const peer_t *p = &d->peer[i];
        uint32_t v = row[i];
        if (!p->received || cls[v] == 0) continue;
        if (c >= cap) {
            ret = plait_fail(PLAIT_ETOOBIG, "secagg: room for %zu reveals", cap);
            break;
        }
        out[c].owner = v;
        out[c].kind = cls[v] == 1 ? PLAIT_SECAGG_REVEAL_B : PLAIT_SECAGG_REVEAL_SK;
        memcpy(out[c].share, cls[v] == 1 ? p->b_share : p->sk_share, PLAIT_SECAGG_SHARE_LEN);
        c++;
    }
    free(cls);
    if (ret != 0) {
        if (c > 0) plait_zeroize(out, c * sizeof(*out));
        /* A refusal is final: a server that asked for both shares gets nothing more this round. */
        if (ret == PLAIT_EREFUSED) {
            d->state = ST_DONE;
            d->refused = 1;
        }
        return ret;
    }
    d->state = ST_DONE;
    memcpy(d->req_hash, h, 32);
    *n_out = c;
    return 0;
}

/* ---- server ------------------------------------------------------------------------------- */

enum { DEV_NONE = 0, DEV_ADV = 1, DEV_SHARED = 2, DEV_MASKED = 3 };

typedef struct {
    uint32_t owner, x, kind;
    uint8_t share[PLAIT_SECAGG_SHARE_LEN];
} held_t;

struct plait_secagg_server_s {
    const plait_secagg_round_t *r;
    uint8_t *st;       /* n + 1: DEV_* per index */
    uint8_t *answered; /* n + 1: reveals stored */
    uint8_t (*c_pk)[32];
    uint32_t *sum;     /* len: running sum of masked inputs */
    size_t n_adv, n_shared, n_masked;
    int closed;        /* masked-input stage closed by the first request */
    uint32_t *req;     /* scratch for request lists (2k + 1) */
    held_t *held;
    size_t n_held, cap_held;
};

int plait_secagg_server_create(plait_secagg_server_t **out, const plait_secagg_round_t *r)
{
    if (out == NULL || r == NULL || r->nbr == NULL) return plait_fail(PLAIT_EINVAL, "secagg: round not set up");
    *out = NULL;
    plait_secagg_server_t *s = calloc(1, sizeof(*s));
    if (s == NULL) return plait_fail(PLAIT_ENOMEM, "secagg: server state");
    size_t n = r->p.n;
    s->r = r;
    s->st = calloc(n + 1, 1);
    s->answered = calloc(n + 1, 1);
    s->c_pk = calloc(n + 1, 32);
    s->sum = calloc(r->len, sizeof(uint32_t));
    s->req = calloc(2 * (size_t)r->p.k + 2, sizeof(uint32_t));
    if (!s->st || !s->answered || !s->c_pk || !s->sum || !s->req) {
        plait_secagg_server_free(s);
        return plait_fail(PLAIT_ENOMEM, "secagg: server state for %zu devices x %zu words", n, r->len);
    }
    *out = s;
    return 0;
}

void plait_secagg_server_free(plait_secagg_server_t *s)
{
    if (s == NULL) return;
    if (s->held) plait_zeroize(s->held, s->cap_held * sizeof(held_t));
    if (s->sum) plait_zeroize(s->sum, s->r->len * sizeof(uint32_t));
    free(s->held);
    free(s->st);
    free(s->answered);
    free(s->c_pk);
    free(s->sum);
    free(s->req);
    free(s);
}

void plait_secagg_server_counts(const plait_secagg_server_t *s, size_t *n_adv, size_t *n_shared, size_t *n_masked)
{
    if (n_adv) *n_adv = s ? s->n_adv : 0;
    if (n_shared) *n_shared = s ? s->n_shared : 0;
    if (n_masked) *n_masked = s ? s->n_masked : 0;
}

int plait_secagg_server_add_advert(plait_secagg_server_t *s, const plait_secagg_advert_t *a)
{
    if (s == NULL || a == NULL) return plait_fail(PLAIT_EINVAL, "secagg: NULL argument");
    if (a->idx < 1 || a->idx > s->r->p.n) return plait_fail(PLAIT_EINVAL, "secagg: advert index %u", (unsigned)a->idx);
    if (s->st[a->idx] != DEV_NONE || s->n_shared > 0)
        return plait_fail(PLAIT_EINVAL, "secagg: advert of device %u repeated or late", (unsigned)a->idx);
    memcpy(s->c_pk[a->idx], a->c_pk, 32);
    s->st[a->idx] = DEV_ADV;
    s->n_adv++;
    return 0;
}

int plait_secagg_server_mark_shared(plait_secagg_server_t *s, uint32_t u)
{
    if (s == NULL || u < 1 || u > s->r->p.n) return plait_fail(PLAIT_EINVAL, "secagg: device index %u", (unsigned)u);
    if (s->st[u] != DEV_ADV || s->n_masked > 0)
        return plait_fail(PLAIT_EINVAL, "secagg: device %u shared without an advert, twice, or late", (unsigned)u);
    s->st[u] = DEV_SHARED;
    s->n_shared++;
    return 0;
}

int plait_secagg_server_add_masked(plait_secagg_server_t *s, uint32_t u, const uint32_t *y, size_t len)
{
    if (s == NULL || y == NULL || u < 1 || u > s->r->p.n)
        return plait_fail(PLAIT_EINVAL, "secagg: masked input from device %u", (unsigned)u);
    if (s->closed) return plait_fail(PLAIT_EINVAL, "secagg: masked input from device %u after unmasking began", (unsigned)u);
    if (s->st[u] != DEV_SHARED)
        return plait_fail(PLAIT_EINVAL, "secagg: masked input from device %u, which did not share keys or sent twice",
                          (unsigned)u);
    if (len != s->r->len) return plait_fail(PLAIT_EINVAL, "secagg: %zu masked words, round has %zu", len, s->r->len);
    uint32_t mask = word_mask(s->r->m);
    for (size_t i = 0; i < len; i++)
        if (y[i] & ~mask) return plait_fail(PLAIT_EPROTO, "secagg: masked word %zu exceeds %u bits", i, s->r->m);
    for (size_t i = 0; i < len; i++) s->sum[i] += y[i];
    s->st[u] = DEV_MASKED;
    s->n_masked++;
    return 0;
}

int plait_secagg_server_request(plait_secagg_server_t *s, uint32_t v, const uint32_t **surv, size_t *n_surv,
                                const uint32_t **drop, size_t *n_drop)
{
    if (s == NULL || surv == NULL || n_surv == NULL || drop == NULL || n_drop == NULL)
        return plait_fail(PLAIT_EINVAL, "secagg: NULL argument");
    if (v < 1 || v > s->r->p.n || s->st[v] != DEV_MASKED)
        return plait_fail(PLAIT_EINVAL, "secagg: device %u sent no masked input", (unsigned)v);
    if (s->n_masked < s->r->p.t)
        return plait_fail(PLAIT_ETHRESHOLD, "secagg: %zu masked inputs, threshold %u", s->n_masked,
                          (unsigned)s->r->p.t);
    s->closed = 1;
    const uint32_t *row = plait_secagg_neighbours(s->r, v);
    uint32_t k = s->r->p.k, *sv = s->req, *dp = s->req + k + 1;
    size_t ns = 0, nd = 0;
    sv[ns++] = v;
    for (uint32_t i = 0; i < k; i++) {
        if (s->st[row[i]] == DEV_MASKED) sv[ns++] = row[i];
        else if (s->st[row[i]] == DEV_SHARED) dp[nd++] = row[i];
    }
    *surv = sv;
    *n_surv = ns;
    *drop = dp;
    *n_drop = nd;
    return 0;
}

int plait_secagg_server_add_reveals(plait_secagg_server_t *s, uint32_t v, const plait_secagg_reveal_t *rev, size_t n)
{
    if (s == NULL || (n > 0 && rev == NULL)) return plait_fail(PLAIT_EINVAL, "secagg: NULL argument");
    if (v < 1 || v > s->r->p.n || s->st[v] != DEV_MASKED || !s->closed)
        return plait_fail(PLAIT_EINVAL, "secagg: reveals from device %u, which was not asked", (unsigned)v);
    if (s->answered[v]) return plait_fail(PLAIT_EINVAL, "secagg: second answer from device %u", (unsigned)v);
    if (n > (size_t)s->r->p.k + 1) return plait_fail(PLAIT_EPROTO, "secagg: %zu reveals from device %u", n, (unsigned)v);
    /* Validate the whole answer before keeping any of it. */
    for (size_t i = 0; i < n; i++) {
        uint32_t o = rev[i].owner;
        int self = o == v;
        if (o < 1 || o > s->r->p.n || (!self && !plait_secagg_adjacent(s->r, v, o)))
            return plait_fail(PLAIT_EPROTO, "secagg: device %u revealed a share of %u, not a neighbour", (unsigned)v,
                              (unsigned)o);
        uint32_t want = s->st[o] == DEV_MASKED ? PLAIT_SECAGG_REVEAL_B
                        : s->st[o] == DEV_SHARED ? PLAIT_SECAGG_REVEAL_SK
                                                 : 99u;
        if (rev[i].kind != want)
            return plait_fail(PLAIT_EPROTO, "secagg: device %u revealed the wrong share kind of %u", (unsigned)v,
                              (unsigned)o);
        for (size_t j = 0; j < i; j++)
            if (rev[j].owner == o)
                return plait_fail(PLAIT_EPROTO, "secagg: device %u revealed two shares of %u", (unsigned)v,
                                  (unsigned)o);
    }
    if (s->n_held + n > s->cap_held) {
        size_t nc = s->cap_held ? s->cap_held : 64;
        while (nc < s->n_held + n) nc *= 2;
        held_t *nh = malloc(nc * sizeof(held_t));
        if (nh == NULL) return plait_fail(PLAIT_ENOMEM, "secagg: %zu revealed shares", nc);
        if (s->held) {
            memcpy(nh, s->held, s->n_held * sizeof(held_t));
            plait_zeroize(s->held, s->cap_held * sizeof(held_t));
            free(s->held);
        }
        s->held = nh;
        s->cap_held = nc;
    }
    for (size_t i = 0; i < n; i++) {
        held_t *h = &s->held[s->n_held++];
        h->owner = rev[i].owner;
        h->x = v;
        h->kind = rev[i].kind;
        memcpy(h->share, rev[i].share, PLAIT_SECAGG_SHARE_LEN);
    }
    s->answered[v] = 1;
    return 0;
}

static int cmp_held(const void *a, const void *b)
{
    const held_t *x = a, *y = b;
    if (x->owner != y->owner) return (x->owner > y->owner) - (x->owner < y->owner);
    return (x->x > y->x) - (x->x < y->x);
}

int plait_secagg_server_finish(plait_secagg_server_t *s, uint32_t *sum, size_t len)
{
    if (s == NULL || sum == NULL) return plait_fail(PLAIT_EINVAL, "secagg: NULL argument");
    const plait_secagg_round_t *r = s->r;
    if (len != r->len) return plait_fail(PLAIT_EINVAL, "secagg: sum of %zu words, round has %zu", len, r->len);
    if (!s->closed) return plait_fail(PLAIT_EINVAL, "secagg: finish before any unmask request");
    uint32_t n = r->p.n, t = r->p.t;
    if (s->n_held > 0) qsort(s->held, s->n_held, sizeof(held_t), cmp_held);
    /* First pass: every survivor's b and every dropout's c_sk must have t shares. */
    size_t *first = calloc((size_t)n + 2, sizeof(size_t)), *cnt = calloc((size_t)n + 2, sizeof(size_t));
    uint32_t *xs = malloc((size_t)t * sizeof(uint32_t));
    uint8_t(*sh)[PLAIT_SECAGG_SHARE_LEN] = malloc((size_t)t * PLAIT_SECAGG_SHARE_LEN);
    uint32_t *acc = malloc(len * sizeof(uint32_t));
    int ret = 0;
    if (!first || !cnt || !xs || !sh || !acc) {
        ret = plait_fail(PLAIT_ENOMEM, "secagg: unmask scratch");
        goto exit;
    }
    for (size_t i = s->n_held; i-- > 0;) {
        first[s->held[i].owner] = i;
        cnt[s->held[i].owner]++;
    }
    size_t short_b = 0, short_sk = 0;
    for (uint32_t u = 1; u <= n; u++) {
        if (s->st[u] == DEV_MASKED && cnt[u] < t) short_b++;
        if (s->st[u] == DEV_SHARED && cnt[u] < t) short_sk++;
    }
    if (short_b || short_sk) {
        ret = plait_fail(PLAIT_ETHRESHOLD,
                         "secagg: fewer than %u shares for %zu survivors' self masks and %zu dropouts' keys",
                         (unsigned)t, short_b, short_sk);
        goto exit;
    }
    memcpy(acc, s->sum, len * sizeof(uint32_t));
    for (uint32_t u = 1; u <= n && ret == 0; u++) {
        if (s->st[u] != DEV_MASKED && s->st[u] != DEV_SHARED) continue;
        for (uint32_t i = 0; i < t; i++) {
            xs[i] = s->held[first[u] + i].x;
            memcpy(sh[i], s->held[first[u] + i].share, PLAIT_SECAGG_SHARE_LEN);
        }
        uint8_t secret[32], key[32];
        if ((ret = plait_shamir_combine(xs, (const uint8_t(*)[PLAIT_SECAGG_SHARE_LEN])sh, t, secret)) != 0) {
            ret = plait_fail(ret, "secagg: shares of device %u do not combine", (unsigned)u);
        } else if (s->st[u] == DEV_MASKED) {
            /* Survivor: remove its self mask. */
            if ((ret = self_key(r, secret, u, key)) == 0) prg_add(key, 1, acc, len);
        } else {
            /* Dropout: check the key, then remove its pairwise masks from each surviving neighbour. */
            uint8_t pk[32];
            if ((ret = x25519_public(secret, pk)) == 0 && plait_ct_memcmp(pk, s->c_pk[u], 32) != 0)
                ret = plait_fail(PLAIT_EAUTH, "secagg: reconstructed key of device %u does not match its advert",
                                 (unsigned)u);
            const uint32_t *row = plait_secagg_neighbours(r, u);
            for (uint32_t i = 0; i < r->p.k && ret == 0; i++) {
                uint32_t v = row[i];
                if (s->st[v] != DEV_MASKED) continue;
                /* v added +PRG(s_vu) when v < u, -PRG otherwise; undo it. */
                if ((ret = pair_key(r, secret, s->c_pk[v], u, v, key)) == 0) prg_add(key, v < u, acc, len);
            }
        }
        plait_zeroize(secret, sizeof(secret));
        plait_zeroize(key, sizeof(key));
    }
    if (ret == 0) {
        uint32_t mask = word_mask(r->m);
        for (size_t i = 0; i < len; i++) sum[i] = acc[i] & mask;
    }
exit:
    if (sh) plait_zeroize(sh, (size_t)t * PLAIT_SECAGG_SHARE_LEN);
    if (acc) plait_zeroize(acc, len * sizeof(uint32_t));
    free(first);
    free(cnt);
    free(xs);
    free(sh);
    free(acc);
    return ret;
}
