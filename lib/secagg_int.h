/*
 * secagg_int.h: internals shared by the SecAgg+ files of lib/; never
 * included outside lib/ (users see include/plait/secagg.h).
 *
 * Files: secagg.c (primitives, m-bit packing, parameters, the round context
 * and its communication graph), secagg_keys.c (key agreement, advert
 * signatures, the device's key pairs and its encrypted Shamir shares),
 * secagg_mask.c (the PRG masks: the device's masking and unmasking answer,
 * and the server that sums, reconstructs and unmasks).
 */
#ifndef PLAIT_SECAGG_INT_H
#define PLAIT_SECAGG_INT_H

#include <stdint.h>

#include "plait/secagg.h"

/* Salt of every derivation and prefix of the round context hash. */
#define PLAIT__SECAGG_DOMAIN "plait-secagg-v1"

/* ---- byte helpers ---- */

static inline void be32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

static inline void be64(uint8_t *p, uint64_t v)
{
    be32(p, (uint32_t)(v >> 32));
    be32(p + 4, (uint32_t)v);
}

static inline uint32_t rd_be32(const uint8_t *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

static inline uint32_t word_mask(unsigned m)
{
    return m >= 32 ? 0xFFFFFFFFu : (uint32_t)((1u << m) - 1u);
}

/* X25519 public key of a (clamped) secret key: sk · 9. */
int plait__secagg_x25519_public(const uint8_t sk[32], uint8_t pk[32]);

/* Position of v in u's sorted neighbour row, or -1. */
long plait__secagg_nbr_pos(const plait_secagg_round_t *r, uint32_t u, uint32_t v);

/* Evaluate, at each of the n_at points at[] (nonzero), the polynomial of
 * degree < t through t shares at distinct nonzero xs (shamir.c): out[a] is the
 * share a holder at at[a] should have. 0; PLAIT_EINVAL, PLAIT_ENOMEM,
 * PLAIT_EAUTH (a share value outside the field). */
int plait__shamir_eval(const uint32_t *xs, const uint8_t (*shares)[PLAIT_SECAGG_SHARE_LEN], size_t t,
                       const uint32_t *at, size_t n_at, uint8_t (*out)[PLAIT_SECAGG_SHARE_LEN]);

/* The advert's commitment to the self-mask seed b of device idx:
 * SHA-256("plait-secagg-bcommit-v1" || round context || idx (BE32) || b). */
void plait__secagg_b_commit(const plait_secagg_round_t *r, uint32_t idx, const uint8_t b[32], uint8_t out[32]);

/* HKDF with the domain as salt and info = label || ctx || a || b (big endian). */
int plait__secagg_derive(const plait_secagg_round_t *r, const char *label, const uint8_t ikm[32], uint32_t a,
                         uint32_t b, uint8_t out[32]);

/* ---- the device's state (secagg_keys.c creates it, secagg_mask.c uses it) ---- */

enum { ST_KEYS = 0, ST_SHARED, ST_MASKED, ST_DONE };

typedef struct {
    int accepted, received, has_sz;
    int relayed; /* a share message from this peer was relayed (opened or not): we mask with it */
    uint8_t c_pk[32], s_pk[32];
    uint8_t crt_fp[32];                       /* SHA-256 of its certificate (DER): one device, one index */
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

#endif
