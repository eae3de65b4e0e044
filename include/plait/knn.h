/*
 * knn.h: a device's memory of its own text for next-token prediction
 * (kNN-LM, Khandelwal et al. 2020), the non-parametric half of its
 * personal model.
 *
 * An entry is the model's final normed hidden state at one position of the
 * device's training text (C floats: what the classifier reads) and the token
 * that followed it there. At a new position with hidden state q, the k keys
 * nearest to q (squared L2 distance d_0 <= d_1 <= ...) vote for their
 * tokens with weights exp(-(d_j - d_0) / tau):
 *
 *     p_knn(v) = sum_{j < k, y_j = v} w_j / sum_{j < k} w_j
 *     p(v)     = (1 - lambda) p_model(v) + lambda p_knn(v)
 *
 * k, tau and lambda are fitted on the device's validation slice
 * (personal.h, plait_personal_fit_knn); lambda 0 turns the memory off.
 *
 * The entries are derived from the device's private text (each value IS
 * one of its tokens): the memory lives in the device's state folder, is
 * wiped before it is freed, and never travels.
 *
 * Usage:
 *   plait_knn_t s;
 *   plait_knn_init(&s);                        // cannot fail
 *   if (plait_knn_setup(&s, C, cap) != 0) goto fail;
 *   plait_knn_add(&s, hidden_row, next_token); // per training position
 *   s.k = 16; s.tau = 2.0; s.lambda = 0.2;     // or the fitted values
 *   plait_knn_mix_logits(&s, q, logits, V);    // logits -> log p
 *   plait_knn_free(&s);                        // wipes; safe twice
 */
#ifndef PLAIT_KNN_H
#define PLAIT_KNN_H

#include <stddef.h>
#include <stdint.h>

#include "plait/plait.h"

#define PLAIT_KNN_MAX_K 64         /* neighbours that vote, at most */
#define PLAIT_KNN_MAX_DIM 65536    /* key width, at most */
#define PLAIT_KNN_MAX_ENTRIES (1u << 24)

typedef struct {
    size_t C;       /**< key width */
    size_t n, cap;  /**< entries, room */
    float *keys;    /**< (cap, C) */
    float *norms;   /**< (cap) squared L2 norms of the keys */
    int32_t *vals;  /**< (cap) the token that followed each key */
    int k;          /**< neighbours that vote, 1..PLAIT_KNN_MAX_K */
    double tau;     /**< temperature on squared distances, > 0 */
    double lambda;  /**< weight of the memory, 0..1 (0: off) */
} plait_knn_t;

/** \brief An empty memory, off (lambda 0). Cannot fail. */
void plait_knn_init(plait_knn_t *s);
/** \brief Room for cap entries of C floats (replaces what s held).
 *  \return 0; PLAIT_EINVAL (C or cap 0 or past the limits); PLAIT_ENOMEM. */
int plait_knn_setup(plait_knn_t *s, size_t C, size_t cap) PLAIT_WUR;
/** \brief Wipe and free; s is then empty and off. NULL and twice are safe. */
void plait_knn_free(plait_knn_t *s);
/** \brief Append one entry. \return 0; PLAIT_ETOOBIG (full); PLAIT_EINVAL
 *         (a non-finite key, a negative token). */
int plait_knn_add(plait_knn_t *s, const float *key, int32_t val) PLAIT_WUR;

/**
 * \brief The k entries nearest to q (k is clamped to s->n and to
 *        PLAIT_KNN_MAX_K): d[0..r) their squared distances, ascending, and
 *        y[0..r) their tokens; ties keep the earlier entry first.
 * \return r, the neighbours found (0 for an empty memory).
 */
size_t plait_knn_search(const plait_knn_t *s, const float *q, size_t k, float *d /* OUT */, int32_t *y /* OUT */);

/** \brief p_knn(target) from r neighbours as plait_knn_search returns them,
 *         with temperature tau > 0 (0 when none of them is target). */
double plait_knn_prob(const float *d, const int32_t *y, size_t r, double tau, int32_t target);

/**
 * \brief Replace V logits by log p, p the mixture above at hidden state q
 *        (the model's distribution is softmax(logits)). With lambda 0 or no
 *        entries the logits are left as they are.
 * \return 0; PLAIT_EINVAL (bad arguments, a token of the memory >= V).
 */
int plait_knn_mix_logits(const plait_knn_t *s, const float *q, float *logits, size_t V) PLAIT_WUR;

/**
 * \brief The memory as a file image (little-endian): "PLK1", u32 C, u32 n,
 *        u32 k, f64 tau, f64 lambda, u32 0 (reserved), n * C f32 keys, n i32
 *        tokens. A memory that is off (lambda 0) has no image.
 * \param out malloc'd image (OUT; the caller wipes and frees it).
 * \return 0; PLAIT_EINVAL; PLAIT_ENOMEM.
 */
int plait_knn_save_mem(const plait_knn_t *s, uint8_t **out, size_t *out_len) PLAIT_WUR;

/**
 * \brief Parse an image of plait_knn_save_mem for a model of width C and
 *        vocabulary V into s (replaced). The header is checked before
 *        anything is allocated (the size must be exactly the header's, k
 *        in 1..PLAIT_KNN_MAX_K, tau > 0 and finite, lambda in (0, 1]);
 *        each entry as it is copied (keys finite with a squared norm of at
 *        most 1e30, tokens < V). Messages name an entry, never a token.
 * \return 0; PLAIT_EPROTO naming what is wrong; PLAIT_EMISMATCH (another
 *         width); PLAIT_ENOMEM. On error s is empty and off.
 */
int plait_knn_load_mem(plait_knn_t *s, const uint8_t *buf, size_t len, size_t C, size_t V) PLAIT_WUR;

#endif /* PLAIT_KNN_H */
