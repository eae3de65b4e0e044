/*
 * update.c: update difference, L2 clipping, local DP noise and the
 * fixed-point quantizer that feeds secure aggregation.
 *
 * Invariants:
 *   - after plait_update_clip_l2(x, n, S) returns 0, the double-precision L2
 *     norm of the float values in x is <= S (checked, not assumed);
 *   - an encoded word lies in [0, 2^b - 1]; a decoded sum of n words is only
 *     accepted when n <= plait_quant_max_cohort(b), so K = sum of words never
 *     wrapped mod 2^32 and K·step - n·R is within n steps of the true sum;
 *   - on a non-finite input the working buffer is zeroed before returning, so
 *     no partially processed (unclipped, secret) data is left behind.
 *
 * Workload: spans of 10^4..10^7 floats once per round per device; every
 * function is one or two linear passes, no allocation.
 * Nothing here logs: values are private.
 */
#include "plait/update.h"

#include <math.h>
#include <string.h>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "plait/crypto.h"
#include "plait/lora.h"

/* ---- spans ---------------------------------------------------------------- */

int plait_update_span_n(size_t n_a, size_t n_params, plait_lora_mode_t mode, size_t *off, size_t *len)
{
    if (off == NULL || len == NULL) return plait_fail(PLAIT_EINVAL, "update_span: NULL output");
    if (n_a > n_params) return plait_fail(PLAIT_EINVAL, "update_span: n_a %zu > n_params %zu", n_a, n_params);
    switch (mode) {
    case PLAIT_LORA_MODE_FFA: *off = n_a; *len = n_params - n_a; break;
    case PLAIT_LORA_MODE_FEDIT: *off = 0; *len = n_params; break;
    case PLAIT_LORA_MODE_FEDSA: *off = 0; *len = n_a; break;
    default: return plait_fail(PLAIT_EINVAL, "update_span: unknown LoRA mode %d", (int)mode);
    }
    if (*len == 0) return plait_fail(PLAIT_EINVAL, "update_span: mode %s selects an empty span", plait_lora_mode_name(mode));
    return 0;
}

int plait_update_span(const struct plait_lora_s *l, plait_lora_mode_t mode, size_t *off, size_t *len)
{
    if (l == NULL) return plait_fail(PLAIT_EINVAL, "update_span: NULL adapter");
    return plait_update_span_n(l->n_a, l->n_params, mode, off, len);
}

int plait_update_tensor_segments(const struct plait_lora_s *l, plait_lora_mode_t mode, size_t *ends, size_t cap,
                                 size_t *n_seg)
{
    if (l == NULL || n_seg == NULL || (cap > 0 && ends == NULL))
        return plait_fail(PLAIT_EINVAL, "tensor_segments: NULL argument");
    size_t off, len;
    int rc = plait_update_span(l, mode, &off, &len);
    if (rc != 0) return rc;
    size_t slots = (size_t)(l->model.n_layers > 0 ? l->model.n_layers : 0) * PLAIT_NPROJ;
    size_t n = 0, prev_start = 0;
    /* Tensor starts in arena order: all A (if uploaded), then all B (if uploaded). */
    for (int part = 0; part < 2; part++) {
        float *const *t = part == 0 ? l->A : l->B;
        int uploaded = part == 0 ? mode != PLAIT_LORA_MODE_FFA : mode != PLAIT_LORA_MODE_FEDSA;
        if (!uploaded || t == NULL) continue;
        for (size_t s = 0; s < slots; s++) {
            if (t[s] == NULL) continue;
            size_t start = (size_t)(t[s] - l->params);
            if (start < off || start >= off + len || (n > 0 && start - off <= prev_start))
                return plait_fail(PLAIT_EINTERNAL, "tensor_segments: tensor %zu breaks the arena layout", s);
            if (n > 0 && n - 1 < cap) ends[n - 1] = start - off; /* the previous segment ends here */
            if (n == 0 && start != off)
                return plait_fail(PLAIT_EINTERNAL, "tensor_segments: span does not start at a tensor");
            prev_start = start - off;
            n++;
        }
    }
    if (n == 0) return plait_fail(PLAIT_EINTERNAL, "tensor_segments: no tensors in the span");
    if (n - 1 < cap) ends[n - 1] = len;
    *n_seg = n;
    if (cap < n) return plait_fail(PLAIT_ETOOBIG, "tensor_segments: %zu segments, room for %zu", n, cap);
    return 0;
}

static const char *const mode_names[] = {"ffa", "fedit", "fedsa"};

int plait_lora_mode_parse(const char *s, plait_lora_mode_t *mode)
{
    if (s == NULL || mode == NULL) return plait_fail(PLAIT_EINVAL, "lora mode: NULL argument");
    for (size_t i = 0; i < sizeof(mode_names) / sizeof(mode_names[0]); i++) {
        if (strcmp(s, mode_names[i]) == 0) {
            *mode = (plait_lora_mode_t)i;
            return 0;
        }
    }
    return plait_fail(PLAIT_EINVAL, "unknown LoRA mode '%.32s' (want ffa, fedit or fedsa)", s);
}

const char *plait_lora_mode_name(plait_lora_mode_t mode)
{
    unsigned m = (unsigned)mode;
    return m < sizeof(mode_names) / sizeof(mode_names[0]) ? mode_names[m] : "unknown";
}

/* ---- difference and clipping --------------------------------------------- */

int plait_update_diff(float *out, const float *local, const float *global, size_t n)
{
    if (n > 0 && (out == NULL || local == NULL || global == NULL))
        return plait_fail(PLAIT_EINVAL, "update_diff: NULL span");
    for (size_t i = 0; i < n; i++) {
        float d = local[i] - global[i];
        if (!isfinite(d)) {
            plait_zeroize(out, n * sizeof(float));
            return plait_fail(PLAIT_EINVAL, "update_diff: non-finite value at index %zu of %zu", i, n);
        }
        out[i] = d;
    }
    return 0;
}

double plait_update_l2(const float *x, size_t n)
{
    /* Eight independent partial sums break the dependency chain of one
     * accumulator (a float square is exact in double, so only the additions
     * round); this runs several times faster and is no less accurate. */
    double p[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    size_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (size_t k = 0; k < 8; k++) p[k] += (double)x[i + k] * (double)x[i + k];
    for (; i < n; i++) p[0] += (double)x[i] * (double)x[i];
    return sqrt(((p[0] + p[1]) + (p[2] + p[3])) + ((p[4] + p[5]) + (p[6] + p[7])));
}

static int all_finite(const float *x, size_t n, size_t *bad)
{
    for (size_t i = 0; i < n; i++) {
        if (!isfinite(x[i])) {
            *bad = i;
            return 0;
        }
    }
    return 1;
}

/* Clip one span to S; x already checked finite. Returns 1 if it scaled. */
static int clip_span(float *x, size_t n, double S, double *norm_in, double *norm_out)
{
    double norm = plait_update_l2(x, n);
    *norm_in = norm;
    if (norm <= S) {
        *norm_out = norm;
        return 0;
    }
    /* Each float product is rounded with relative error <= 2^-24, so the
     * result's norm is at most S·(1 - 2^-22)(1 + 2^-24) < S. The loop below
     * re-checks anyway; it never runs more than once in practice. */
    double scale = S / norm * (1.0 - 0x1.0p-22);
    for (;;) {
        for (size_t i = 0; i < n; i++) x[i] = (float)((double)x[i] * scale);
        norm = plait_update_l2(x, n);
        if (norm <= S) break;
        scale = 1.0 - 0x1.0p-20;
    }
    *norm_out = norm;
    return 1;
}

int plait_update_clip_l2(float *x, size_t n, double S, plait_clip_info_t *info)
{
    if (n > 0 && x == NULL) return plait_fail(PLAIT_EINVAL, "clip_l2: NULL span");
    if (!isfinite(S) || S <= 0.0) return plait_fail(PLAIT_EINVAL, "clip_l2: bound must be finite and > 0");
    size_t bad;
    if (!all_finite(x, n, &bad)) {
        plait_zeroize(x, n * sizeof(float));
        return plait_fail(PLAIT_EINVAL, "clip_l2: non-finite value at index %zu of %zu", bad, n);
    }
    double in, out;
    int c = clip_span(x, n, S, &in, &out);
    if (info) {
        info->norm = in;
        info->norm_out = out;
        info->clipped = (size_t)c;
    }
    return 0;
}

int plait_update_clip_segments(float *x, size_t n, const size_t *ends, size_t n_seg, const double *bounds,
                               double S, plait_clip_info_t *info)
{
    if ((n > 0 && x == NULL) || ends == NULL || n_seg == 0)
        return plait_fail(PLAIT_EINVAL, "clip_segments: NULL span or no segments");
    if (bounds == NULL && (!isfinite(S) || S <= 0.0))
        return plait_fail(PLAIT_EINVAL, "clip_segments: bound must be finite and > 0");
    size_t prev = 0;
    for (size_t j = 0; j < n_seg; j++) {
        if (ends[j] <= prev || ends[j] > n)
            return plait_fail(PLAIT_EINVAL, "clip_segments: segment %zu ends at %zu (previous end %zu, span %zu)", j,
                              ends[j], prev, n);
        if (bounds && (!isfinite(bounds[j]) || bounds[j] <= 0.0))
            return plait_fail(PLAIT_EINVAL, "clip_segments: bound of segment %zu must be finite and > 0", j);
        prev = ends[j];
    }
    if (prev != n) return plait_fail(PLAIT_EINVAL, "clip_segments: segments cover %zu of %zu values", prev, n);
    size_t bad;
    if (!all_finite(x, n, &bad)) {
        plait_zeroize(x, n * sizeof(float));
        return plait_fail(PLAIT_EINVAL, "clip_segments: non-finite value at index %zu of %zu", bad, n);
    }
    double sq_in = 0.0, sq_out = 0.0;
    size_t clipped = 0;
    double even = S / sqrt((double)n_seg);
    prev = 0;
    for (size_t j = 0; j < n_seg; j++) {
        double in, out;
        clipped += (size_t)clip_span(x + prev, ends[j] - prev, bounds ? bounds[j] : even, &in, &out);
        sq_in += in * in;
        sq_out += out * out;
        prev = ends[j];
    }
    if (info) {
        info->norm = sqrt(sq_in);
        info->norm_out = sqrt(sq_out);
        info->clipped = clipped;
    }
    return 0;
}

int plait_update_add_noise(float *x, size_t n, double stddev, plait_rng_t *rng)
{
    if ((n > 0 && x == NULL) || rng == NULL) return plait_fail(PLAIT_EINVAL, "add_noise: NULL argument");
    if (!isfinite(stddev) || stddev < 0.0) return plait_fail(PLAIT_EINVAL, "add_noise: stddev must be finite and >= 0");
    for (size_t i = 0; i < n; i++) x[i] = (float)((double)x[i] + stddev * plait_rng_normal(rng));
    return 0;
}

/* ---- quantization --------------------------------------------------------- */

void plait_quant_config_default(plait_quant_config_t *cfg)
{
    cfg->bits = 16;   /* sum of up to 65537 clients fits 32 bits; step 2R/65535 */
    cfg->range = 1.0; /* match the default clip norm S = 1 */
}

int plait_quant_config_validate(const plait_quant_config_t *cfg)
{
    if (cfg == NULL) return plait_fail(PLAIT_EINVAL, "quant config: NULL");
    if (cfg->bits < PLAIT_QUANT_MIN_BITS || cfg->bits > PLAIT_QUANT_MAX_BITS)
        return plait_fail(PLAIT_EINVAL, "quant config: bits %u outside %d..%d", cfg->bits, PLAIT_QUANT_MIN_BITS,
                          PLAIT_QUANT_MAX_BITS);
    if (!isfinite(cfg->range) || cfg->range <= 0.0 || cfg->range > 1e30)
        return plait_fail(PLAIT_EINVAL, "quant config: range must be finite, > 0 and <= 1e30");
    return 0;
}

static uint64_t levels(unsigned bits) { return (UINT64_C(1) << bits) - 1; }

double plait_quant_step(const plait_quant_config_t *cfg)
{
    return 2.0 * cfg->range / (double)levels(cfg->bits);
}

uint64_t plait_quant_max_cohort(unsigned bits)
{
    if (bits < PLAIT_QUANT_MIN_BITS || bits > PLAIT_QUANT_MAX_BITS) return 0;
    return (uint64_t)UINT32_MAX / levels(bits);
}

int plait_quant_check_cohort(const plait_quant_config_t *cfg, uint64_t n)
{
    int rc = plait_quant_config_validate(cfg);
    if (rc != 0) return rc;
    if (n == 0) return plait_fail(PLAIT_EINVAL, "quant: cohort of 0 clients");
    uint64_t max = plait_quant_max_cohort(cfg->bits);
    if (n > max)
        return plait_fail(PLAIT_ETOOBIG, "quant: a sum of %llu %u-bit words could wrap mod 2^32 (at most %llu)",
                          (unsigned long long)n, cfg->bits, (unsigned long long)max);
    return 0;
}

double plait_quant_norm_slack(const plait_quant_config_t *cfg, size_t n)
{
    return sqrt((double)n) * plait_quant_step(cfg);
}

/* Stochastic rounding of t in [0, L] (clamped) to an integer in [0, L]. */
static uint32_t sround(double t, double L, plait_rng_t *rng)
{
    if (t <= 0.0) return 0;
    if (t >= L) return (uint32_t)L;
    double fl = floor(t);
    double k = fl + (plait_rng_uniform(rng) < t - fl ? 1.0 : 0.0);
    if (k > L) k = L;
    return (uint32_t)k;
}

int plait_quant_encode(const plait_quant_config_t *cfg, const float *x, size_t n, plait_rng_t *rng, uint32_t *out)
{
    int rc = plait_quant_config_validate(cfg);
    if (rc != 0) return rc;
    if ((n > 0 && (x == NULL || out == NULL)) || rng == NULL) return plait_fail(PLAIT_EINVAL, "quant_encode: NULL argument");
    const double L = (double)levels(cfg->bits), R = cfg->range, inv_step = L / (2.0 * R);
    for (size_t i = 0; i < n; i++) {
        if (!isfinite(x[i])) {
            memset(out, 0, n * sizeof(uint32_t));
            return plait_fail(PLAIT_EINVAL, "quant_encode: non-finite value at index %zu of %zu", i, n);
        }
        out[i] = sround(((double)x[i] + R) * inv_step, L, rng);
    }
    return 0;
}

int plait_quant_encode_weight(const plait_quant_config_t *cfg, double w, plait_rng_t *rng, uint32_t *out)
{
    int rc = plait_quant_config_validate(cfg);
    if (rc != 0) return rc;
    if (rng == NULL || out == NULL) return plait_fail(PLAIT_EINVAL, "quant_encode_weight: NULL argument");
    if (!isfinite(w) || w < 0.0 || w > 1.0) return plait_fail(PLAIT_EINVAL, "quant_encode_weight: weight must be in [0, 1]");
    const double L = (double)levels(cfg->bits);
    *out = sround(w * L, L, rng);
    return 0;
}

static int check_sum_args(const plait_quant_config_t *cfg, const void *sum, size_t n, uint64_t n_clients,
                          const void *out)
{
    if ((n > 0 && (sum == NULL || out == NULL))) return plait_fail(PLAIT_EINVAL, "quant_decode: NULL argument");
    return plait_quant_check_cohort(cfg, n_clients);
}

int plait_quant_decode_sum(const plait_quant_config_t *cfg, const uint32_t *sum, size_t n, uint64_t n_clients,
                           double *out)
{
    int rc = check_sum_args(cfg, sum, n, n_clients, out);
    if (rc != 0) return rc;
    const uint64_t kmax = n_clients * levels(cfg->bits); /* <= 2^32 - 1 after the cohort check */
    const double step = plait_quant_step(cfg), off = (double)n_clients * cfg->range;
    /* One branch-free pass (it vectorizes); a word out of range is located afterwards. */
    int bad = 0;
    for (size_t i = 0; i < n; i++) {
        bad |= sum[i] > kmax;
        out[i] = (double)sum[i] * step - off;
    }
    if (bad) {
        size_t i = 0;
        while (sum[i] <= kmax) i++;
        memset(out, 0, n * sizeof(double));
        return plait_fail(PLAIT_EPROTO, "quant_decode: word %zu exceeds %llu clients x %u bits", i,
                          (unsigned long long)n_clients, cfg->bits);
    }
    return 0;
}

int plait_quant_decode_weight_sum(const plait_quant_config_t *cfg, uint32_t sum, uint64_t n_clients, double *out)
{
    int rc = check_sum_args(cfg, &sum, 1, n_clients, out);
    if (rc != 0) return rc;
    if (out == NULL) return plait_fail(PLAIT_EINVAL, "quant_decode_weight: NULL output");
    if ((uint64_t)sum > n_clients * levels(cfg->bits))
        return plait_fail(PLAIT_EPROTO, "quant_decode_weight: weight word exceeds %llu clients",
                          (unsigned long long)n_clients);
    *out = (double)sum / (double)levels(cfg->bits);
    return 0;
}

void plait_update_add_u32(uint32_t *acc, const uint32_t *x, size_t n)
{
    for (size_t i = 0; i < n; i++) acc[i] += x[i]; /* unsigned: wraps mod 2^32 by definition */
}

void plait_update_sub_u32(uint32_t *acc, const uint32_t *x, size_t n)
{
    for (size_t i = 0; i < n; i++) acc[i] -= x[i];
}

/* ---- narrow words: w bytes a word, little-endian (how the aggregator buffers updates) ---- */

static inline uint32_t narrow_at(const uint8_t *b, unsigned wb, size_t i)
{
    const uint8_t *p = b + (size_t)wb * i;
    uint32_t v = 0;
    for (unsigned k = 0; k < wb; k++) v |= (uint32_t)p[k] << (8 * k);
    return v;
}

uint32_t plait_narrow_word(const uint8_t *b, unsigned wb, size_t i) { return narrow_at(b, wb, i); }

void plait_update_add_narrow(uint32_t *acc, const uint8_t *b, unsigned wb, size_t n)
{
    if (wb == 1) {
        for (size_t i = 0; i < n; i++) acc[i] += b[i];
    } else if (wb == 2) {
        for (size_t i = 0; i < n; i++) acc[i] += (uint32_t)b[2 * i] | (uint32_t)b[2 * i + 1] << 8;
    } else {
        for (size_t i = 0; i < n; i++) acc[i] += narrow_at(b, wb, i);
    }
}

void plait_update_sub_narrow(uint32_t *acc, const uint8_t *b, unsigned wb, size_t n)
{
    if (wb == 1) {
        for (size_t i = 0; i < n; i++) acc[i] -= b[i];
    } else if (wb == 2) {
        for (size_t i = 0; i < n; i++) acc[i] -= (uint32_t)b[2 * i] | (uint32_t)b[2 * i + 1] << 8;
    } else {
        for (size_t i = 0; i < n; i++) acc[i] -= narrow_at(b, wb, i);
    }
}

int plait_quant_decode_narrow(const plait_quant_config_t *cfg, const uint8_t *b, unsigned wb, size_t n, double *out)
{
    if (wb < 1 || wb > 4) return plait_fail(PLAIT_EINVAL, "quant_decode: %u bytes a word, not 1..4", wb);
    int rc = check_sum_args(cfg, b, n, 1, out);
    if (rc != 0) return rc;
    const uint32_t kmax = (uint32_t)levels(cfg->bits);
    const double step = plait_quant_step(cfg), off = cfg->range;
    for (size_t i = 0; i < n; i++) {
        uint32_t v = narrow_at(b, wb, i);
        if (v > kmax) {
            memset(out, 0, n * sizeof(double));
            return plait_fail(PLAIT_EPROTO, "quant_decode: word %zu exceeds 1 clients x %u bits", i, cfg->bits);
        }
        out[i] = (double)v * step - off;
    }
    return 0;
}

/* Exact sums of squares of d = 2v - L (L = 2^bits - 1): the decoded value is v·step - R =
 * d·R/L, so the sum of squares is (R/L)^2 · sum d^2, with the sum in integers. */
static uint32_t add_sq_u8(uint32_t *acc, const uint8_t *b, size_t n, int32_t L, uint32_t kmax, uint64_t *ss)
{
    uint32_t bad = 0;
    uint64_t tot = 0;
    size_t s = 0;
#if defined(__SSE2__)
    if (kmax == 255) { /* every byte is in range: 16 words a step (SSE2 is x86-64's baseline) */
        const __m128i zero = _mm_setzero_si128(), vl = _mm_set1_epi16((short)L);
        while (n - s >= 16) {
            /* a step adds 4 squares to each of the 4 lanes: 16,384 · 4 · 255^2 < 2^32 */
            size_t steps = (n - s) / 16 < 16384 ? (n - s) / 16 : 16384;
            __m128i part = zero;
            for (size_t k = 0; k < steps; k++, s += 16) {
                __m128i v = _mm_loadu_si128((const __m128i *)(b + s));
                __m128i lo = _mm_unpacklo_epi8(v, zero), hi = _mm_unpackhi_epi8(v, zero);
                __m128i dl = _mm_sub_epi16(_mm_add_epi16(lo, lo), vl), dh = _mm_sub_epi16(_mm_add_epi16(hi, hi), vl);
                part = _mm_add_epi32(part, _mm_add_epi32(_mm_madd_epi16(dl, dl), _mm_madd_epi16(dh, dh)));
                __m128i *a = (__m128i *)(acc + s);
                _mm_storeu_si128(a + 0, _mm_add_epi32(_mm_loadu_si128(a + 0), _mm_unpacklo_epi16(lo, zero)));
                _mm_storeu_si128(a + 1, _mm_add_epi32(_mm_loadu_si128(a + 1), _mm_unpackhi_epi16(lo, zero)));
                _mm_storeu_si128(a + 2, _mm_add_epi32(_mm_loadu_si128(a + 2), _mm_unpacklo_epi16(hi, zero)));
                _mm_storeu_si128(a + 3, _mm_add_epi32(_mm_loadu_si128(a + 3), _mm_unpackhi_epi16(hi, zero)));
            }
            uint32_t l4[4];
            _mm_storeu_si128((__m128i *)l4, part);
            tot += (uint64_t)l4[0] + l4[1] + l4[2] + l4[3];
        }
    }
#endif
    for (; s < n; s += 65536) { /* 65,536 squares of at most 255^2 fit in 32 bits */
        size_t e = n - s < 65536 ? n : s + 65536;
        uint32_t part = 0;
        for (size_t i = s; i < e; i++) {
            uint32_t v = b[i];
            int32_t d = 2 * (int32_t)v - L;
            part += (uint32_t)(d * d);
            bad |= (uint32_t)(v > kmax);
            acc[i] += v;
        }
        tot += part;
    }
    *ss = tot;
    return bad;
}

static uint32_t add_sq_u16(uint32_t *acc, const uint8_t *b, size_t n, int32_t L, uint32_t kmax, uint64_t *ss)
{
    uint32_t bad = 0;
    uint64_t tot = 0;
    for (size_t i = 0; i < n; i++) {
        uint32_t v = (uint32_t)b[2 * i] | (uint32_t)b[2 * i + 1] << 8;
        int64_t d = 2 * (int64_t)v - L;
        tot += (uint64_t)(d * d); /* < 2^32 each: n < 2^32 of them fit */
        bad |= (uint32_t)(v > kmax);
        acc[i] += v;
    }
    *ss = tot;
    return bad;
}

int plait_quant_add_checked_narrow(const plait_quant_config_t *cfg, uint32_t *acc, const uint8_t *b, unsigned wb,
                                   size_t n, double *sumsq)
{
    if (!cfg || !sumsq || (n > 0 && (!acc || !b))) return plait_fail(PLAIT_EINVAL, "quant_add: NULL argument");
    if (wb < 1 || wb > 4) return plait_fail(PLAIT_EINVAL, "quant_add: %u bytes a word, not 1..4", wb);
    int rc = plait_quant_config_validate(cfg);
    if (rc != 0) return rc;
    *sumsq = 0;
    const uint32_t kmax = (uint32_t)levels(cfg->bits);
    if (wb > 2 || cfg->bits > 8 * wb || n > UINT32_MAX) { /* wide words: squares overflow 64-bit sums */
        double part[8] = {0};
        const double step = plait_quant_step(cfg), off = cfg->range;
        uint32_t bad = 0;
        for (size_t i = 0; i < n; i++) {
            uint32_t v = narrow_at(b, wb, i);
            bad |= (uint32_t)(v > kmax);
            double x = (double)v * step - off;
            part[i & 7] += x * x;
            acc[i] += v;
        }
        if (bad) goto refused;
        *sumsq = ((part[0] + part[1]) + (part[2] + part[3])) + ((part[4] + part[5]) + (part[6] + part[7]));
        return 0;
    }
    uint64_t ss = 0;
    uint32_t bad = wb == 1 ? add_sq_u8(acc, b, n, (int32_t)kmax, kmax, &ss) : add_sq_u16(acc, b, n, (int32_t)kmax, kmax, &ss);
    if (bad) goto refused;
    const double rl = cfg->range / (double)kmax;
    *sumsq = (double)ss * rl * rl;
    return 0;
refused:
    plait_update_sub_narrow(acc, b, wb, n);
    size_t j = 0;
    while (narrow_at(b, wb, j) <= kmax) j++;
    return plait_fail(PLAIT_EPROTO, "quant_decode: word %zu exceeds 1 clients x %u bits", j, cfg->bits);
}

int plait_quant_add_checked(const plait_quant_config_t *cfg, uint32_t *acc, const uint32_t *w, size_t n,
                            double *sumsq)
{
    if (!cfg || !sumsq || (n > 0 && (!acc || !w))) return plait_fail(PLAIT_EINVAL, "quant_add: NULL argument");
    int rc = plait_quant_config_validate(cfg);
    if (rc != 0) return rc;
    *sumsq = 0;
    const uint32_t kmax = (uint32_t)levels(cfg->bits);
    const double step = plait_quant_step(cfg), off = cfg->range;
    /* One pass over the words, branch-free so it vectorizes; 8 partial sums of squares. */
    double part[8] = {0};
    uint32_t bad = 0;
    size_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (size_t k = 0; k < 8; k++) {
            uint32_t v = w[i + k];
            bad |= (uint32_t)(v > kmax);
            double x = (double)v * step - off;
            part[k] += x * x;
            acc[i + k] += v;
        }
    for (; i < n; i++) {
        bad |= (uint32_t)(w[i] > kmax);
        double x = (double)w[i] * step - off;
        part[0] += x * x;
        acc[i] += w[i];
    }
    if (bad) {
        plait_update_sub_u32(acc, w, n);
        size_t j = 0;
        while (w[j] <= kmax) j++;
        return plait_fail(PLAIT_EPROTO, "quant_decode: word %zu exceeds 1 clients x %u bits", j, cfg->bits);
    }
    *sumsq = ((part[0] + part[1]) + (part[2] + part[3])) + ((part[4] + part[5]) + (part[6] + part[7]));
    return 0;
}
