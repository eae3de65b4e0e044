/*
 * secagg_mask.c: SecAgg+ masking and unmasking. A device adds its self mask
 * PRG(b) and, for each neighbour that shared keys, the pairwise mask
 * ±PRG(pair key) to its words, and answers one unmask request with the b
 * shares of survivors and the c_sk shares of dropouts (never both for one
 * device). The server sums masked inputs, builds each device's unmask
 * request, checks and keeps the reveals, reconstructs the secrets with
 * Shamir from t-subsets that verify (a c_sk against its advertised key, a b
 * against its advert's commitment or a vote of its shares), so one wrong
 * revealed share is left out or fails the round, and removes the masks. The PRG is the ChaCha20 keystream (zero
 * nonce) read as little-endian words; everything is mod 2^32, reduced to
 * m bits at the end.
 */
#include "plait/le.h"
#include "plait/secagg.h"

#include <stdlib.h>
#include <string.h>

#include <mbedtls/chacha20.h>

#include "secagg_int.h"

/* ---- the PRG and the mask keys --------------------------------------------------------- */

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
                acc[i + j] -= plait_le32(ks + 4 * j);
        else
            for (size_t j = 0; j < nw; j++)
                acc[i + j] += plait_le32(ks + 4 * j);
        i += nw;
    }
    plait_zeroize(ks, sizeof(ks));
    mbedtls_chacha20_free(&cc);
}

/* Self-mask key of device u from its seed b. */
static int self_key(const plait_secagg_round_t *r, const uint8_t b[32], uint32_t u, uint8_t key[32])
{
    return plait__secagg_derive(r, "self", b, u, 0, key);
}

/* Pairwise mask key from one side's c_sk and the other's c_pk. */
static int pair_key(const plait_secagg_round_t *r, const uint8_t c_sk[32], const uint8_t c_pk_peer[32], uint32_t u,
                    uint32_t v, uint8_t key[32])
{
    uint8_t z[32];
    int ret = plait_x25519(c_sk, c_pk_peer, z);
    if (ret == 0) ret = plait__secagg_derive(r, "pair", z, u < v ? u : v, u < v ? v : u, key);
    plait_zeroize(z, sizeof(z));
    return ret;
}

/* ---- device ------------------------------------------------------------------------------ */

int plait_secagg_device_check_relayed(const plait_secagg_device_t *d)
{
    if (d == NULL) return plait_fail(PLAIT_EINVAL, "secagg: NULL argument");
    size_t nr = 0;
    for (uint32_t i = 0; i < d->r->p.k; i++) nr += d->peer[i].relayed != 0;
    if (nr + 1 < d->r->p.t)
        return plait_fail(PLAIT_ETHRESHOLD, "secagg: shares from %zu neighbours, threshold %u", nr,
                          (unsigned)d->r->p.t);
    return 0;
}

int plait_secagg_device_mask(plait_secagg_device_t *d, const uint32_t *x, size_t len, uint32_t *y)
{
    if (d == NULL || x == NULL || y == NULL) return plait_fail(PLAIT_EINVAL, "secagg: NULL argument");
    const plait_secagg_round_t *r = d->r;
    if (d->state != ST_SHARED) return plait_fail(PLAIT_EINVAL, "secagg: masking needs shared keys, once");
    if (len != r->len) return plait_fail(PLAIT_EINVAL, "secagg: %zu words, round has %zu", len, r->len);
    uint32_t mask = word_mask(r->m);
    int rc = plait_secagg_device_check_relayed(d);
    if (rc != 0) return rc;
    for (size_t i = 0; i < len; i++) {
        if (x[i] & ~mask) return plait_fail(PLAIT_EINVAL, "secagg: word %zu does not fit in %u bits", i, r->m);
        y[i] = x[i];
    }
    const uint32_t *row = plait_secagg_neighbours(r, d->self);
    uint8_t key[32];
    int ret = self_key(r, d->b, d->self, key);
    if (ret == 0) prg_add(key, 0, y, len);
    for (uint32_t i = 0; i < r->p.k && ret == 0; i++) {
        if (!d->peer[i].relayed) continue;
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
    /* Our b has holders outside our mask set too: every accepted neighbour whose share message
     * did not reach us (at most k - (t - 1) <= t - 1 of them, as 2t > k + 1). With our own share
     * they make t, so if none of the neighbours we masked with is a survivor (each one's pair
     * key is then revealable, as a dropout's), our share of b would complete the unmasking of
     * y: a server that withheld share messages from us could ask exactly that (docs/secagg.md,
     * "Withheld share messages"). An honest round with no surviving mask partner cannot
     * finish anyway: our b would have no holder in the sum but us. */
    int partner = 0;
    for (uint32_t i = 0; i < r->p.k && ret == 0; i++) partner |= d->peer[i].relayed && cls[row[i]] == 1;
    if (ret == 0 && !partner)
        ret = plait_fail(PLAIT_EREFUSED, "secagg: unmask request refused: none of the neighbours this device masked "
                         "with is listed as a survivor");
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
    uint8_t (*b_commit)[32]; /* n + 1: advertised commitments to b */
    uint8_t *has_commit;     /* n + 1 */
    uint32_t *sum;     /* len: running sum of masked inputs */
    size_t n_adv, n_shared, n_masked;
    int closed;        /* masked-input stage closed by the first request */
    uint32_t *req;     /* scratch for request lists (2k + 1) */
    held_t *held;
    size_t n_held, cap_held;
    size_t n_bad_holders; /* holders whose revealed shares were off a verified polynomial (last finish) */
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
    s->b_commit = calloc(n + 1, 32);
    s->has_commit = calloc(n + 1, 1);
    s->sum = calloc(r->len, sizeof(uint32_t));
    s->req = calloc(2 * (size_t)r->p.k + 2, sizeof(uint32_t));
    if (!s->st || !s->answered || !s->c_pk || !s->b_commit || !s->has_commit || !s->sum || !s->req) {
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
    free(s->b_commit);
    free(s->has_commit);
    free(s->sum);
    free(s->req);
    free(s);
}

size_t plait_secagg_server_inconsistent(const plait_secagg_server_t *s)
{
    return s ? s->n_bad_holders : 0;
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
    s->has_commit[a->idx] = a->has_b_commit != 0;
    if (a->has_b_commit) memcpy(s->b_commit[a->idx], a->b_commit, 32);
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

/* Scratch for robust reconstruction of one device's secret from its revealed shares. */
typedef struct {
    size_t *ord;                           /* indices into the owner's shares: trusted holders first */
    uint32_t *xs, *all_x, *deck;           /* t chosen x; the x of the shares outside them; a shuffle deck */
    size_t *out_idx;                       /* which shares those are */
    uint8_t *insub;                        /* 1 for the shares in the chosen subset */
    uint8_t (*sh)[PLAIT_SECAGG_SHARE_LEN]; /* t chosen shares */
    uint8_t (*ev)[PLAIT_SECAGG_SHARE_LEN]; /* the candidate polynomial at every share's x */
} rec_t;

/* C(n, t), saturated at cap. */
static size_t choose_sat(size_t n, size_t t, size_t cap)
{
    if (t > n) return 0;
    if (t > n - t) t = n - t;
    size_t c = 1;
    for (size_t i = 1; i <= t; i++) {
        /* exact: c · (n - t + i) / i = C(n - t + i, i); c < cap and n <= k + 1, so no overflow */
        c = c * (n - t + i) / i;
        if (c >= cap) return cap;
    }
    return c;
}

/* Reconstruct device u's secret (b when a survivor, c_sk when a dropout) from
 * its ns shares h[0..ns), robustly: try t-subsets (cyclic windows of the
 * shares, the trusted holders' first and with starts spread over all ns, then
 * pseudo-random subsets; at most PLAIT_SECAGG_MAX_SUBSETS in all) until one
 * verifies; with ns <= 64 every single wrong share is left out by some window.
 * A c_sk verifies when its public key is the advertised one. A b verifies when it matches the
 * commitment of a v2 advert; for a v1 advert (no commitment), when at least
 * max(t + 1, ceil((ns + t) / 2)) shares lie on its polynomial (unique decoding:
 * a single wrong share can never pass), and with exactly t shares it cannot be
 * checked and is taken as it is. Holders whose shares are off the verified
 * polynomial are marked in bad[]. */
static int reconstruct(plait_secagg_server_t *s, uint32_t u, const held_t *h, size_t ns, uint8_t *bad, rec_t *w,
                       uint8_t secret[32])
{
    const plait_secagg_round_t *r = s->r;
    size_t t = r->p.t, c = 0;
    for (size_t i = 0; i < ns; i++)
        if (!bad[h[i].x]) w->ord[c++] = i;
    for (size_t i = 0; i < ns; i++)
        if (bad[h[i].x]) w->ord[c++] = i;
    int sk = s->st[u] == DEV_SHARED;
    size_t need = ns == t ? t : (ns + t + 1) / 2 > t + 1 ? (ns + t + 1) / 2 : t + 1;
    size_t tries = choose_sat(ns, t, PLAIT_SECAGG_MAX_SUBSETS);
    uint64_t rs = 0x9E3779B97F4A7C15ull ^ ((uint64_t)u << 17) ^ r->round_id;
    for (size_t a = 0; a < tries; a++) {
        if (a < ns) { /* cyclic windows of the trusted-first order, starts spread over all ns */
            size_t st = ns <= tries ? a : a * ns / tries;
            for (size_t i = 0; i < t; i++) w->xs[i] = (uint32_t)w->ord[(st + i) % ns];
        } else { /* a pseudo-random t-subset (partial Fisher-Yates with xorshift64) */
            for (size_t i = 0; i < ns; i++) w->deck[i] = (uint32_t)i;
            for (size_t i = 0; i < t; i++) {
                rs ^= rs << 13, rs ^= rs >> 7, rs ^= rs << 17;
                size_t j = i + (size_t)(rs % (ns - i));
                uint32_t tmp = w->deck[i];
                w->deck[i] = w->deck[j];
                w->deck[j] = tmp;
                w->xs[i] = w->deck[i];
            }
        }
        /* w->xs holds share indices: turn them into x values and shares */
        memset(w->insub, 0, ns);
        for (size_t i = 0; i < t; i++) {
            size_t hi = w->xs[i];
            w->insub[hi] = 1;
            memcpy(w->sh[i], h[hi].share, PLAIT_SECAGG_SHARE_LEN);
            w->xs[i] = h[hi].x;
        }
        if (plait_shamir_combine(w->xs, (const uint8_t(*)[PLAIT_SECAGG_SHARE_LEN])w->sh, t, secret) != 0) continue;
        int ok;
        if (sk) {
            uint8_t pk[32];
            ok = plait__secagg_x25519_public(secret, pk) == 0 && plait_ct_memcmp(pk, s->c_pk[u], 32) == 0;
        } else if (s->has_commit[u]) { /* a v2 advert: b must match its signed commitment */
            uint8_t cm[32];
            plait__secagg_b_commit(r, u, secret, cm);
            ok = plait_ct_memcmp(cm, s->b_commit[u], 32) == 0;
        } else {
            ok = 1;
        }
        /* Where each other share should be on this polynomial (the t chosen ones
         * are on it by construction); count those that are. */
        size_t agree = t, no = 0;
        if (ok && ns > t) {
            for (size_t i = 0; i < ns; i++)
                if (!w->insub[i]) {
                    w->out_idx[no] = i;
                    w->all_x[no++] = h[i].x;
                }
            if (plait__shamir_eval(w->xs, (const uint8_t(*)[PLAIT_SECAGG_SHARE_LEN])w->sh, t, w->all_x, no, w->ev) != 0)
                ok = 0;
            for (size_t j = 0; j < no && ok; j++)
                agree += plait_ct_memcmp(w->ev[j], h[w->out_idx[j]].share, PLAIT_SECAGG_SHARE_LEN) == 0;
            if (!sk && !s->has_commit[u] && agree < need) ok = 0;
            for (size_t j = 0; j < no && ok; j++)
                if (plait_ct_memcmp(w->ev[j], h[w->out_idx[j]].share, PLAIT_SECAGG_SHARE_LEN) != 0) {
                    uint32_t x = h[w->out_idx[j]].x;
                    if (!bad[x]) s->n_bad_holders++;
                    bad[x] = 1;
                }
        }
        if (ok) return 0;
        plait_zeroize(secret, 32);
    }
    return plait_fail(PLAIT_EAUTH, "secagg: no %zu of the %zu revealed shares of device %u verify (%zu subsets tried)",
                      t, ns, (unsigned)u, tries);
}

int plait_secagg_server_finish(plait_secagg_server_t *s, uint32_t *sum, size_t len)
{
    if (s == NULL || sum == NULL) return plait_fail(PLAIT_EINVAL, "secagg: NULL argument");
    const plait_secagg_round_t *r = s->r;
    if (len != r->len) return plait_fail(PLAIT_EINVAL, "secagg: sum of %zu words, round has %zu", len, r->len);
    if (!s->closed) return plait_fail(PLAIT_EINVAL, "secagg: finish before any unmask request");
    uint32_t n = r->p.n, t = r->p.t;
    if (s->n_held > 0) qsort(s->held, s->n_held, sizeof(held_t), cmp_held);
    /* First pass: every survivor's b and every dropout's c_sk must have t shares;
     * then each is reconstructed robustly (reconstruct()). */
    size_t *first = calloc((size_t)n + 2, sizeof(size_t)), *cnt = calloc((size_t)n + 2, sizeof(size_t));
    size_t kk = (size_t)r->p.k + 1; /* most shares of one device: its k neighbours and itself */
    rec_t w;
    w.ord = malloc(kk * sizeof(size_t));
    w.xs = malloc(kk * sizeof(uint32_t));
    w.all_x = malloc(kk * sizeof(uint32_t));
    w.deck = malloc(kk * sizeof(uint32_t));
    w.out_idx = malloc(kk * sizeof(size_t));
    w.insub = malloc(kk);
    w.sh = malloc(kk * PLAIT_SECAGG_SHARE_LEN);
    w.ev = malloc(kk * PLAIT_SECAGG_SHARE_LEN);
    uint8_t *bad = calloc((size_t)n + 1, 1);
    uint32_t *acc = malloc(len * sizeof(uint32_t));
    int ret = 0;
    if (!first || !cnt || !w.ord || !w.xs || !w.all_x || !w.deck || !w.out_idx || !w.insub || !w.sh || !w.ev || !bad || !acc) {
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
        if (cnt[u] > kk) {
            ret = plait_fail(PLAIT_EINTERNAL, "secagg: %zu shares of device %u", cnt[u], (unsigned)u);
            goto exit;
        }
    }
    if (short_b || short_sk) {
        ret = plait_fail(PLAIT_ETHRESHOLD,
                         "secagg: fewer than %u shares for %zu survivors' self masks and %zu dropouts' keys",
                         (unsigned)t, short_b, short_sk);
        goto exit;
    }
    memcpy(acc, s->sum, len * sizeof(uint32_t));
    s->n_bad_holders = 0;
    for (uint32_t u = 1; u <= n && ret == 0; u++) {
        if (s->st[u] != DEV_MASKED && s->st[u] != DEV_SHARED) continue;
        uint8_t secret[32], key[32];
        if ((ret = reconstruct(s, u, s->held + first[u], cnt[u], bad, &w, secret)) != 0) {
            /* the detail names the device and the subsets tried */
        } else if (s->st[u] == DEV_MASKED) {
            /* Survivor: remove its self mask. */
            if ((ret = self_key(r, secret, u, key)) == 0) prg_add(key, 1, acc, len);
        } else {
            /* Dropout (its key matched its advert): remove its pairwise masks from each surviving neighbour. */
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
    if (w.sh) plait_zeroize(w.sh, kk * PLAIT_SECAGG_SHARE_LEN);
    if (w.ev) plait_zeroize(w.ev, kk * PLAIT_SECAGG_SHARE_LEN);
    if (acc) plait_zeroize(acc, len * sizeof(uint32_t));
    free(first);
    free(cnt);
    free(w.ord);
    free(w.xs);
    free(w.all_x);
    free(w.deck);
    free(w.out_idx);
    free(w.insub);
    free(w.sh);
    free(w.ev);
    free(bad);
    free(acc);
    return ret;
}
