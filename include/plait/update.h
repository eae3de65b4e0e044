/*
 * update.h: the device-side arithmetic of a federated round, on flat spans.
 *
 * A client's update is the flat difference between its locally trained
 * adapter and the global adapter it started from (restricted to the span the
 * task's LoRA mode uploads). Before it leaves the device it goes through
 *
 *     diff → clip (L2, float) → [local DP noise] → quantize (uint32) → [mask]
 *
 * and the aggregator sums the uint32 words modulo 2^32 (masks cancel there)
 * and dequantizes the sum. Masks never touch floats.
 *
 * Worked example (FFA-LoRA, clip S = 1, 16-bit quantization):
 *
 *     size_t off, len;
 *     plait_update_span(&lora, PLAIT_LORA_MODE_FFA, &off, &len);
 *     plait_update_diff(upd, local.params + off, global.params + off, len);
 *     plait_clip_info_t ci;
 *     plait_update_clip_l2(upd, len, 1.0, &ci);          // ci.norm: pre-clip norm
 *     for (size_t i = 0; i < len; i++) upd[i] *= w;      // w = min(examples, cap) / cap
 *     plait_quant_config_t qc;
 *     plait_quant_config_default(&qc);                   // 16 bits, range 1
 *     plait_quant_encode(&qc, upd, len, &rng, words);    // len words
 *     plait_quant_encode_weight(&qc, w, &rng, &words[len]); // the weight word
 *     plait_zeroize(upd, len * sizeof(float));           // unclipped data is secret
 *
 * Quantization (b bits, 8 <= b <= 32, range R): L = 2^b - 1 levels above
 * zero, step = 2R / L; x is clamped to [-R, R] and mapped to k = (x + R) /
 * step rounded stochastically (up with probability equal to the fraction),
 * so E[k·step - R] = x and |k·step - R - x| < step. The sum of n words stays
 * below 2^32 (no wrap-around) while n·L <= 2^32 - 1, i.e. for
 *     n <= plait_quant_max_cohort(b) = floor((2^32 - 1) / (2^b - 1))
 * (65537 at b = 16, 16843009 at b = 8, 1 at b = 32); larger cohorts are
 * refused with PLAIT_ETOOBIG. The sum dequantizes as K·step - n·R, within
 * n steps of the true sum.
 *
 * Client weights travel the same way: the client multiplies its (clipped)
 * update by its weight w in [0, 1] before quantizing, and appends one word
 * holding w quantized over [0, 1] with the same b; the aggregator decodes
 * sum(w_i x_i) and sum(w_i) from one masked vector of len + 1 words and
 * divides. Because w <= 1, w·x stays inside the clip ball.
 *
 * Thread-safety: all functions are reentrant; they touch only their arguments.
 */
#ifndef PLAIT_UPDATE_H
#define PLAIT_UPDATE_H

#include "plait/plait.h"
#include "plait/rng.h"

struct plait_lora_s; /* lora.h; only its n_a and n_params are read */

/* ---- LoRA aggregation modes ---------------------------------------------- */

/** Which part of the adapter is trained, uploaded and averaged. Part of the task config. */
typedef enum {
    PLAIT_LORA_MODE_FFA = 0,   /**< FFA-LoRA (Sun et al. 2024): A frozen from the task seed, B only (default; exact) */
    PLAIT_LORA_MODE_FEDIT = 1, /**< FedIT: A and B trained and averaged separately (baseline; inexact) */
    PLAIT_LORA_MODE_FEDSA = 2  /**< FedSA-LoRA (Guo et al. 2025): A shared and averaged, B personal */
} plait_lora_mode_t;

/**
 * \brief The flat span [off, off + len) of the adapter arena that travels in
 *        mode, from the arena sizes (A occupies [0, n_a), B [n_a, n_params)).
 * \return 0; PLAIT_EINVAL for NULL outputs, n_a > n_params, an unknown mode,
 *         or an empty span.
 */
int plait_update_span_n(size_t n_a, size_t n_params, plait_lora_mode_t mode, size_t *off /* OUT */,
                        size_t *len /* OUT */) PLAIT_WUR;

/** \brief plait_update_span_n() on an adapter (reads l->n_a and l->n_params). */
int plait_update_span(const struct plait_lora_s *l, plait_lora_mode_t mode, size_t *off /* OUT */,
                      size_t *len /* OUT */) PLAIT_WUR;

/**
 * \brief Per-tensor segment ends of mode's span (relative to its offset), in
 *        arena order: one segment per uploaded A or B matrix. Feed them to
 *        plait_update_clip_segments() for per-layer clipping.
 * \param l     a set-up adapter.
 * \param ends  room for cap values; may be NULL when cap is 0 (to ask for the count).
 * \param n_seg receives the number of segments (also when cap is too small).
 * \return 0; PLAIT_EINVAL (NULL l or n_seg, unknown mode, empty span),
 *         PLAIT_ETOOBIG (cap < *n_seg), PLAIT_EINTERNAL (arena invariant broken).
 */
int plait_update_tensor_segments(const struct plait_lora_s *l, plait_lora_mode_t mode, size_t *ends, size_t cap,
                                 size_t *n_seg /* OUT */) PLAIT_WUR;

/** \brief Parse "ffa", "fedit" or "fedsa". \return 0 or PLAIT_EINVAL naming the input. */
int plait_lora_mode_parse(const char *s, plait_lora_mode_t *mode /* OUT */);
/** \brief Name of a mode ("ffa"), or "unknown". */
const char *plait_lora_mode_name(plait_lora_mode_t mode);

/* ---- difference and clipping --------------------------------------------- */

/**
 * \brief out[i] = local[i] - global[i]. out may alias local.
 * \return 0; PLAIT_EINVAL on NULL pointers (with n > 0) or a non-finite
 *         input or result (out is then zeroed).
 */
int plait_update_diff(float *out, const float *local, const float *global, size_t n) PLAIT_WUR;

/** \brief L2 norm of x, accumulated in double. n == 0 gives 0. */
double plait_update_l2(const float *x, size_t n);

/** \brief What clipping did. */
typedef struct {
    double norm;     /**< L2 norm before clipping (of the whole span) */
    double norm_out; /**< L2 norm after clipping (<= the bound) */
    size_t clipped;  /**< number of segments that were scaled down (0 or 1 for whole-update clipping) */
} plait_clip_info_t;

/**
 * \brief Scale x in place so that its L2 norm is at most S (no-op when it is
 *        already). The result's norm, computed in double over the float
 *        values, is guaranteed <= S (scaling includes a 2^-22 relative margin
 *        against float rounding).
 * \param S    bound, finite and > 0.
 * \param info may be NULL.
 * \return 0; PLAIT_EINVAL for NULL x (n > 0), a bad S, or non-finite values
 *         in x (x is then zeroed so no unclipped data survives).
 */
int plait_update_clip_l2(float *x, size_t n, double S, plait_clip_info_t *info /* OUT, may be NULL */) PLAIT_WUR;

/**
 * \brief Per-layer clipping: segment j = [ends[j-1], ends[j]) (ends[-1] = 0)
 *        is clipped to bound[j], or to S / sqrt(n_seg) when bounds is NULL,
 *        so the whole update's norm is at most sqrt(sum bound[j]^2) (= S in
 *        the default split). ends must be strictly increasing and
 *        ends[n_seg-1] == n.
 * \return 0; PLAIT_EINVAL for bad segments, bounds, S or non-finite values.
 */
int plait_update_clip_segments(float *x, size_t n, const size_t *ends, size_t n_seg, const double *bounds,
                               double S, plait_clip_info_t *info /* OUT, may be NULL */) PLAIT_WUR;

/**
 * \brief Local DP: add independent N(0, stddev^2) to every x[i]
 *        (stddev = sigma·S for noise multiplier sigma).
 * \param rng keyed from the DRBG on devices (see rng.h).
 * \return 0; PLAIT_EINVAL for NULL pointers or stddev not finite and >= 0.
 */
int plait_update_add_noise(float *x, size_t n, double stddev, plait_rng_t *rng) PLAIT_WUR;

/* ---- quantization --------------------------------------------------------- */

#define PLAIT_QUANT_MIN_BITS 8
#define PLAIT_QUANT_MAX_BITS 32

typedef struct {
    unsigned bits; /**< b, 8..32 (default 16: cohorts up to 65537, step 2R/65535) */
    double range;  /**< R: values are clamped to [-R, R] (default 1.0; set it to the clip
                        norm S, or wider, e.g. S·(1 + 4σ), when local noise σS is added) */
} plait_quant_config_t;

/** \brief Defaults: bits 16, range 1.0. */
void plait_quant_config_default(plait_quant_config_t *cfg);
/** \brief \return 0 or PLAIT_EINVAL (bits outside 8..32, range not finite and > 0). */
int plait_quant_config_validate(const plait_quant_config_t *cfg);
/** \brief The step 2R / (2^b - 1). */
double plait_quant_step(const plait_quant_config_t *cfg);
/** \brief Largest n whose sum of b-bit words cannot wrap mod 2^32: floor((2^32-1)/(2^b-1)); 0 for bad b. */
uint64_t plait_quant_max_cohort(unsigned bits);
/** \brief \return 0, or PLAIT_ETOOBIG when n > plait_quant_max_cohort(bits), PLAIT_EINVAL for n == 0. */
int plait_quant_check_cohort(const plait_quant_config_t *cfg, uint64_t n) PLAIT_WUR;
/**
 * \brief A bound on how much quantization can lengthen a clipped update of n
 *        coordinates: sqrt(n)·step (each coordinate moves by less than a step).
 *        The aggregator adds it to the norm bound when it checks plaintext
 *        quantized updates.
 */
double plait_quant_norm_slack(const plait_quant_config_t *cfg, size_t n);

/**
 * \brief Stochastic rounding of x[0..n) into out[0..n) (values in [0, 2^b - 1]).
 * \return 0; PLAIT_EINVAL for a bad config, NULL pointers, or non-finite
 *         input (out is then zeroed).
 */
int plait_quant_encode(const plait_quant_config_t *cfg, const float *x, size_t n, plait_rng_t *rng,
                       uint32_t *out /* OUT */) PLAIT_WUR;

/** \brief Quantize a client weight w in [0, 1] over [0, 1] with b bits (stochastic rounding).
 *  \return 0; PLAIT_EINVAL for a bad config or w outside [0, 1] or not finite. */
int plait_quant_encode_weight(const plait_quant_config_t *cfg, double w, plait_rng_t *rng,
                              uint32_t *out /* OUT */) PLAIT_WUR;

/**
 * \brief Dequantize the mod-2^32 sum of n_clients encoded vectors:
 *        out[i] = sum[i]·step - n_clients·R (one client: the inverse of encode).
 * \return 0; PLAIT_EINVAL (bad config, NULL, n_clients 0), PLAIT_ETOOBIG
 *         (n_clients beyond the no-wrap bound), PLAIT_EPROTO (a word larger
 *         than n_clients·(2^b-1): not a sum of valid encodings).
 */
int plait_quant_decode_sum(const plait_quant_config_t *cfg, const uint32_t *sum, size_t n, uint64_t n_clients,
                           double *out /* OUT */) PLAIT_WUR;

/** \brief Dequantize the sum of n_clients weight words: K / (2^b - 1).
 *  \return as plait_quant_decode_sum(). */
int plait_quant_decode_weight_sum(const plait_quant_config_t *cfg, uint32_t sum, uint64_t n_clients,
                                  double *out /* OUT */) PLAIT_WUR;

/** \brief acc[i] += x[i] mod 2^32 (how the aggregator sums masked words). */
void plait_update_add_u32(uint32_t *acc, const uint32_t *x, size_t n);
/** \brief acc[i] -= x[i] mod 2^32: takes back exactly what plait_update_add_u32() added. */
void plait_update_sub_u32(uint32_t *acc, const uint32_t *x, size_t n);

/**
 * \brief One device's quantized words w[0, n) checked and summed in one pass (the aggregator's
 *        plain path): every word must be a single-client encoding (<= 2^b - 1); acc[i] += w[i]
 *        mod 2^32, and *sumsq = the sum of squares of the decoded values w[i]·step - R (in an
 *        order fixed by n, not left to right).
 * \return 0; PLAIT_EPROTO naming the first word out of range (acc is then as before);
 *         PLAIT_EINVAL for a bad config or NULL pointers.
 */
int plait_quant_add_checked(const plait_quant_config_t *cfg, uint32_t *acc, const uint32_t *w, size_t n,
                            double *sumsq /* OUT */) PLAIT_WUR;

/* Narrow words: the aggregator keeps an update as it arrives, wb = ceil(bits / 8) bytes a
 * word, little-endian (1 <= wb <= 4). These read such a buffer where the functions above
 * read uint32_t words, with the same results. */

/** \brief Word i of a buffer of wb-byte little-endian words. */
uint32_t plait_narrow_word(const uint8_t *b, unsigned wb, size_t i);
/** \brief acc[i] += word i, mod 2^32. */
void plait_update_add_narrow(uint32_t *acc, const uint8_t *b, unsigned wb, size_t n);
/** \brief acc[i] -= word i, mod 2^32: takes back what plait_update_add_narrow() added. */
void plait_update_sub_narrow(uint32_t *acc, const uint8_t *b, unsigned wb, size_t n);
/** \brief plait_quant_decode_sum() for one client's narrow words. */
int plait_quant_decode_narrow(const plait_quant_config_t *cfg, const uint8_t *b, unsigned wb, size_t n,
                              double *out /* OUT */) PLAIT_WUR;
/**
 * \brief plait_quant_add_checked() for one client's narrow words. With wb <= 2 (and bits <=
 *        8·wb) the sum of squares is exact: (R/L)^2 times an integer sum of (2v - L)^2, one
 *        rounding; wider words sum doubles as plait_quant_add_checked() does.
 * \return 0; PLAIT_EPROTO naming the first word out of range (acc is then as before);
 *         PLAIT_EINVAL for a bad config, a width outside 1..4 or NULL pointers.
 */
int plait_quant_add_checked_narrow(const plait_quant_config_t *cfg, uint32_t *acc, const uint8_t *b, unsigned wb,
                                   size_t n, double *sumsq /* OUT */) PLAIT_WUR;

#endif /* PLAIT_UPDATE_H */
