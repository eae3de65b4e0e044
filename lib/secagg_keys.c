/*
 * secagg_keys.c: SecAgg+ key agreement and share encryption. The device
 * makes its two X25519 key pairs (c: masks, s: share encryption) and its
 * self-mask seed b, signs an advert of its public keys and a commitment to b
 * (advert v2; v1 adverts without it still verify) with its device
 * certificate's key, accepts its neighbours' verified adverts (each from a
 * certificate no other accepted neighbour used), splits c_sk
 * and b into Shamir shares (threshold t) and seals each neighbour's shares
 * with ChaCha20-Poly1305 under a key derived from the s-pair secret, bound to
 * the round context and the (sender, receiver) pair; and it opens the shares
 * it receives (one that does not open is dropped: its sender still counts as
 * relayed, so the receiver masks with it). The server checks adverts with the same
 * plait_secagg_advert_verify(). Masking is in secagg_mask.c.
 */
#include "plait/secagg.h"

#include <stdlib.h>
#include <string.h>

#include <mbedtls/md.h>
#include <mbedtls/oid.h>
#include <mbedtls/pk.h>
#include <mbedtls/x509_crt.h>

#include "pki_int.h"
#include "secagg_int.h"

static const char DOMAIN[] = PLAIT__SECAGG_DOMAIN;

/* ---- key derivations ------------------------------------------------------------------- */

int plait__secagg_derive(const plait_secagg_round_t *r, const char *label, const uint8_t ikm[32], uint32_t a,
                         uint32_t b, uint8_t out[32])
{
    uint8_t info[16 + 32 + 8];
    size_t ll = strlen(label);
    memcpy(info, label, ll);
    memcpy(info + ll, r->ctx, 32);
    be32(info + ll + 32, a);
    be32(info + ll + 36, b);
    return plait_hkdf_sha256((const uint8_t *)DOMAIN, sizeof(DOMAIN) - 1, ikm, 32, info, ll + 40, out, 32);
}

/* Share-encryption key for the ordered pair (sender, receiver), from the
 * X25519 secret z shared by the two devices' s pairs. */
static int share_key(const plait_secagg_round_t *r, const uint8_t z[32], uint32_t from, uint32_t to, uint8_t key[32])
{
    return plait__secagg_derive(r, "share", z, from, to, key);
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

void plait__secagg_b_commit(const plait_secagg_round_t *r, uint32_t idx, const uint8_t b[32], uint8_t out[32])
{
    static const char lbl[] = "plait-secagg-bcommit-v1";
    plait_sha256_t h;
    uint8_t i4[4];
    be32(i4, idx);
    plait_sha256_init(&h);
    plait_sha256_update(&h, (const uint8_t *)lbl, sizeof(lbl) - 1);
    plait_sha256_update(&h, r->ctx, 32);
    plait_sha256_update(&h, i4, 4);
    plait_sha256_update(&h, b, 32);
    plait_sha256_finish(&h, out);
}

/* v1: domain || c_pk || s_pk || H(dep) || round || idx; v2 (with a commitment to
 * b) uses its own domain and puts the commitment after s_pk. */
static void advert_hash(const plait_secagg_round_t *r, const plait_secagg_advert_t *a, uint8_t out[32])
{
    static const char v1[] = "plait-secagg-adv-v1", v2[] = "plait-secagg-adv-v2";
    plait_sha256_t h;
    uint8_t b[12];
    plait_sha256_init(&h);
    if (a->has_b_commit) plait_sha256_update(&h, (const uint8_t *)v2, sizeof(v2) - 1);
    else plait_sha256_update(&h, (const uint8_t *)v1, sizeof(v1) - 1);
    plait_sha256_update(&h, a->c_pk, 32);
    plait_sha256_update(&h, a->s_pk, 32);
    if (a->has_b_commit) plait_sha256_update(&h, a->b_commit, 32);
    plait_sha256_update(&h, r->dep_hash, 32);
    be64(b, r->round_id);
    be32(b + 8, a->idx);
    plait_sha256_update(&h, b, 12);
    plait_sha256_finish(&h, out);
}

/* plait_secagg_advert_verify(); fp (when not NULL) gets the SHA-256 of the certificate's DER. */
static int advert_verify_fp(const plait_secagg_round_t *r, const plait_secagg_advert_t *a, const uint8_t *crt,
                            size_t crt_len, const char *ca_pem, uint8_t fp[32])
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
    else if (fp != NULL)
        plait_sha256(c.raw.p, c.raw.len, fp);
exit:
    free(tmp);
    mbedtls_x509_crt_free(&c);
    mbedtls_x509_crt_free(&ca);
    return ret;
}

int plait_secagg_advert_verify(const plait_secagg_round_t *r, const plait_secagg_advert_t *a, const uint8_t *crt,
                               size_t crt_len, const char *ca_pem)
{
    return advert_verify_fp(r, a, crt, crt_len, ca_pem, NULL);
}

/* ---- device ------------------------------------------------------------------------------ */

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
    return plait__secagg_x25519_public(sk, pk);
}

int plait_secagg_device_create(plait_secagg_device_t **out, const plait_secagg_round_t *r, uint32_t self,
                               plait_drbg_t *rng)
{
    if (out == NULL || r == NULL || r->nbr == NULL || rng == NULL)
        return plait_fail(PLAIT_EINVAL, "secagg: NULL argument or round not set up");
    *out = NULL;
    if (self < 1 || self > r->p.n)
        return plait_fail(PLAIT_EINVAL, "secagg: device index %u (cohort %u)", (unsigned)self, (unsigned)r->p.n);
    if (r->only && r->only != self)
        return plait_fail(PLAIT_EINVAL, "secagg: the round was set up for device %u, not %u", (unsigned)r->only,
                          (unsigned)self);
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
    out->has_b_commit = 1;
    plait__secagg_b_commit(d->r, d->self, d->b, out->b_commit);
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
    long pos = plait__secagg_nbr_pos(d->r, d->self, a->idx);
    if (pos < 0)
        return plait_fail(PLAIT_EINVAL, "secagg: device %u is not a neighbour of %u", (unsigned)a->idx,
                          (unsigned)d->self);
    peer_t *p = &d->peer[pos];
    if (p->accepted) return plait_fail(PLAIT_EINVAL, "secagg: second advert from device %u", (unsigned)a->idx);
    uint8_t fp[32];
    int ret = advert_verify_fp(d->r, a, crt, crt_len, ca_pem, fp);
    if (ret != 0) return ret;
    /* One enrolled device holds one index: a certificate already behind another neighbour's keys
     * would let one device (with the server) collect several of this device's shares. */
    const uint32_t *row = plait_secagg_neighbours(d->r, d->self);
    for (uint32_t i = 0; i < d->r->p.k; i++)
        if (d->peer[i].accepted && memcmp(d->peer[i].crt_fp, fp, 32) == 0)
            return plait_fail(PLAIT_EAUTH, "secagg: device %u's certificate already signed the keys of neighbour %u",
                              (unsigned)a->idx, (unsigned)row[i]);
    memcpy(p->crt_fp, fp, 32);
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
    long pos = plait__secagg_nbr_pos(d->r, d->self, c->from);
    if (pos < 0 || !d->peer[pos].accepted)
        return plait_fail(PLAIT_EINVAL, "secagg: share from device %u, not an accepted neighbour", (unsigned)c->from);
    peer_t *p = &d->peer[pos];
    if (p->received) return plait_fail(PLAIT_EINVAL, "secagg: second share from device %u", (unsigned)c->from);
    /* The server relayed it, so it counts the pair as masked: we mask with this
     * peer whether or not its share message opens (docs/secagg.md, hostile devices). */
    p->relayed = 1;
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
        /* Only this peer's shares are lost: this device cannot help reconstruct it. */
        ret = plait_fail(PLAIT_EAUTH, "secagg: share from device %u does not decrypt (tampered, or another round): "
                         "dropped", (unsigned)c->from);
    }
    plait_zeroize(key, sizeof(key));
    plait_zeroize(pt, sizeof(pt));
    return ret;
}

