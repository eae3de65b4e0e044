/*
 * secagg.h: secure aggregation (SecAgg+, Bell, Bonawitz, Gascón, Lepoint and
 * Raykova, CCS 2020) as a library: per-round key material, the communication
 * graph, Shamir sharing, share encryption, masking, unmasking, and m-bit word
 * packing. No I/O and no protocol messages: the wire protocol (proto/, the
 * agent and the aggregator) moves the plain structs below and calls these
 * functions in the order of the four SecAgg+ steps.
 *
 * Worked example (one round; the server relays every struct):
 *
 *     // both sides, from the task: deployment id, round id, n, k, t, graph seed, m
 *     plait_secagg_params_t p;
 *     plait_secagg_params_choose(n, 0.1, 0.0, 20.0, &p);       // server picks k and t
 *     plait_secagg_round_t r;
 *     plait_secagg_round_init(&r);
 *     plait_secagg_round_setup(&r, dep, dep_len, round_id, &p, graph_seed, m_bits, len);
 *
 *     // device u (index 1..n): 0. advertise keys
 *     plait_secagg_device_t *d;
 *     plait_secagg_device_create(&d, &r, u, &drbg);
 *     plait_secagg_advert_t adv;
 *     plait_secagg_device_advertise(d, device_key_pem, &drbg, &adv);   // -> server
 *     // 1. share keys: for each neighbour's advert (+ its certificate) relayed by the server
 *     plait_secagg_device_accept_advert(d, &nb_adv, nb_crt, nb_crt_len, ca_pem);
 *     plait_secagg_device_shares(d, &drbg, cts, cap, &n_ct);           // -> server -> recipients
 *     // 2. masked input: after receiving the ciphertexts addressed to u
 *     plait_secagg_device_recv_share(d, &ct);                          // for each
 *     plait_secagg_device_mask(d, x, len, y);                          // y -> server (packed)
 *     // 3. unmask: answer the server's request (or refuse it)
 *     plait_secagg_device_unmask(d, surv, n_surv, drop, n_drop, rev, cap, &n_rev);
 *     plait_secagg_device_free(d);                                     // wipes keys and seeds
 *
 *     // server
 *     plait_secagg_server_t *s;
 *     plait_secagg_server_create(&s, &r);
 *     plait_secagg_server_add_advert(s, &adv);          // each device (U1)
 *     plait_secagg_server_mark_shared(s, u);            // u's ciphertexts arrived (U2)
 *     plait_secagg_server_add_masked(s, u, y, len);     // u's masked input (U3)
 *     plait_secagg_server_request(s, v, &surv, &n_surv, &drop, &n_drop); // for each v in U3
 *     plait_secagg_server_add_reveals(s, v, rev, n_rev);
 *     plait_secagg_server_finish(s, sum, len);          // sum of x over U3, mod 2^m
 *     plait_secagg_server_free(s);
 *
 * Algorithms (docs/secagg.md has the details and what each test proves):
 *   - Key agreement: X25519 (RFC 7748) through mbedTLS Curve25519. Each device
 *     makes a mask-agreement pair c and a share-encryption pair s per round
 *     and a 32-byte self-mask seed b, and signs SHA-256(domain || c_pk || s_pk
 *     || SHA-256(deployment id) || round id || index) with its enrolled ECDSA
 *     P-256 device key (advert v2, made by this library: domain
 *     "plait-secagg-adv-v2" and a commitment to b after s_pk, so the server
 *     can check a reconstructed b; v1 adverts without it still verify).
 *     Peers check the certificate chain (deployment CA,
 *     EKU clientAuth) and the signature, so the server cannot substitute keys
 *     of its own, and refuse a certificate behind two neighbours' keys, so one
 *     enrolled device cannot stand for several neighbours.
 *   - Graph: n <= k + 1 gives the complete graph. Otherwise the Harary graph
 *     H(n, k) (k even: ring positions joined to the k/2 nearest on each side)
 *     with positions permuted by a ChaCha20 stream keyed by the server's
 *     32-byte graph seed, so each device's neighbour set is a uniformly random
 *     k-subset and the analysis below is exact per device.
 *   - Parameters: plait_secagg_params_choose() picks the smallest even k and a
 *     threshold t such that, with at most ceil(dropout·n) dropouts and
 *     floor(corrupt·n) colluding devices placed independently of the seed,
 *     the union bound over the n devices of three exact hypergeometric tails
 *     is at most 2^-sigma: (a) fewer than t of a device's k neighbours
 *     survive (the round would fail), (b) a device has at least 2t - k - 1
 *     corrupt neighbours (a malicious server could then collect both shares of
 *     it, since the device and its honest neighbours each reveal at most one
 *     of them), (c) k/2
 *     consecutive ring positions are all dropped or corrupt (the only way the
 *     Harary graph of the remaining honest devices disconnects).
 *     The complete graph (n <= 16, or when no smaller k meets the bound) uses
 *     the largest t = n - D that D dropouts leave reachable, if 2t > n + C.
 *   - Shamir t-of-(k+1) over GF(p), p = 2^61 - 1, the holders being a
 *     device's accepted neighbours and the device itself (so exactly t
 *     survivors can finish a round): a 32-byte secret is split into
 *     five limbs of at most 56 bits (7+7+7+7+4 bytes), each shared with its
 *     own random polynomial of degree t - 1; a share is the five evaluations
 *     at x = recipient index (40 bytes). Reconstruction is Lagrange at 0 and
 *     rejects a limb >= 2^56 (a forged share).
 *   - Share encryption: key = HKDF-SHA256(X25519(s_sk_u, s_pk_v), salt
 *     "plait-secagg-v1", info "share" || round context || sender || receiver),
 *     ChaCha20-Poly1305 with a random 96-bit nonce, AAD = "plait-secagg-share"
 *     || round context || sender || receiver. A share from another round,
 *     deployment, sender or recipient does not decrypt (PLAIT_EAUTH).
 *   - Masks in Z_{2^m}: y_u = x_u + PRG(b_u) + sum over neighbours v whose
 *     shares u received of (+PRG(s_uv) if u < v else -PRG(s_uv)), where
 *     s_uv = HKDF(X25519(c_sk_u, c_pk_v), info "pair" || context || min ||
 *     max) and PRG(seed) is the ChaCha20 keystream (RFC 8439, zero nonce,
 *     key HKDF(seed, info "prg" || context)) read as little-endian 32-bit
 *     words, each reduced mod 2^m.
 *   - Unmask: a survivor reveals its b-share of each survivor neighbour and
 *     its c_sk-share of each dropped neighbour, once per round, and refuses
 *     (PLAIT_EREFUSED) a request that names one device in both lists, names
 *     itself as dropped, names none of the neighbours it masked with as a
 *     survivor, or differs from the one it already answered.
 *
 * Round context: SHA-256("plait-secagg-v1" || len(dep) || dep || round id);
 * every key derivation, signature and AAD is bound to it.
 *
 * Thread-safety: a round, device or server object is used by one thread at a
 * time; functions on different objects are reentrant. Secrets (private keys,
 * seeds, shares, pairwise keys) live only inside device and server objects
 * and are wiped by their free functions; none is ever logged or put in an
 * error detail.
 */
#ifndef PLAIT_SECAGG_H
#define PLAIT_SECAGG_H

#include "plait/crypto.h"
#include "plait/plait.h"

/* ---- sizes and limits ----------------------------------------------------- */

/** X25519 public keys, private keys, shared secrets and seeds are 32 bytes. */
#define PLAIT_SECAGG_KEY_LEN 32
/** One Shamir share of a 32-byte secret: 5 field elements of 8 bytes (LE). */
#define PLAIT_SECAGG_SHARE_LEN 40
/** Largest DER ECDSA P-256 signature (2 + 2·(2 + 33)). */
#define PLAIT_SECAGG_SIG_MAX 72
/** Plaintext of a share message: sender (4) || receiver (4) || c_sk share || b share. */
#define PLAIT_SECAGG_SHARE_PT_LEN (8 + 2 * PLAIT_SECAGG_SHARE_LEN)
/** Share ciphertext: nonce (12) || ciphertext || Poly1305 tag (16). */
#define PLAIT_SECAGG_CT_LEN (12 + PLAIT_SECAGG_SHARE_PT_LEN + 16)
/** Largest cohort (device indices are 1..n, n at most this). */
#define PLAIT_SECAGG_MAX_COHORT 100000u
/** Most neighbours per device (the wire's PLAIT_WIRE_SECAGG_MAX_PEERS): bounds the graph a task can
 *  make a device allocate, and the degrees plait_secagg_params_choose() considers. */
#define PLAIT_SECAGG_MAX_DEGREE 1024u
/** Largest deployment id accepted (bytes). */
#define PLAIT_SECAGG_DEP_MAX 256
/** Largest certificate accepted by plait_secagg_advert_verify() (bytes). */
#define PLAIT_SECAGG_CRT_MAX 16384

/* ---- m-bit packing ---------------------------------------------------------- */

/**
 * \brief Bytes needed for n words of m bits: ceil(n·m / 8).
 * \return the length, or 0 when m is outside 1..32 or n·m overflows.
 */
size_t plait_pack_bits_len(size_t n, unsigned m);

/**
 * \brief Pack n words of m bits each, little-endian bit order (word i
 *        occupies bits [i·m, (i+1)·m) of the little-endian byte stream);
 *        the unused high bits of the last byte are zero.
 * \param w   n words, each < 2^m.
 * \param out cap bytes; at least plait_pack_bits_len(n, m).
 * \return 0; PLAIT_EINVAL (NULL with n > 0, m outside 1..32, a word >= 2^m),
 *         PLAIT_ETOOBIG (cap too small).
 */
int plait_pack_bits(const uint32_t *w, size_t n, unsigned m, uint8_t *out, size_t cap) PLAIT_WUR;

/**
 * \brief Inverse of plait_pack_bits(). in is untrusted.
 * \param len must equal plait_pack_bits_len(n, m) exactly.
 * \return 0; PLAIT_EINVAL (NULL, m outside 1..32), PLAIT_EPROTO (wrong
 *         length, or nonzero padding bits).
 */
int plait_unpack_bits(const uint8_t *in, size_t len, size_t n, unsigned m, uint32_t *w /* OUT */) PLAIT_WUR;

/* ---- parameters ------------------------------------------------------------- */

/**
 * \brief Ring width m = quant_bits + ceil(log2(max_cohort)): the sum of
 *        max_cohort words below 2^quant_bits never wraps mod 2^m.
 * \return 0; PLAIT_EINVAL (quant_bits outside 1..32, max_cohort 0),
 *         PLAIT_ETOOBIG (m > 32; the detail names both inputs).
 */
int plait_secagg_mask_bits(unsigned quant_bits, uint32_t max_cohort, unsigned *m /* OUT */) PLAIT_WUR;

/** Graph degree and threshold for one round (see plait_secagg_params_choose()). */
typedef struct {
    uint32_t n;         /**< cohort size (devices 1..n) */
    uint32_t k;         /**< neighbours per device; n - 1 for the complete graph */
    uint32_t t;         /**< Shamir threshold, 1 <= t <= k */
    int complete;       /**< 1 when the graph is complete */
    double log2_fail;   /**< log2 of the union bound achieved (<= -sigma); -inf when exactly 0 */
} plait_secagg_params_t;

/**
 * \brief Choose k and t for cohort n (method above; docs/secagg.md).
 * \param dropout fraction of the cohort that may drop over the round, [0, 1).
 * \param corrupt fraction that may collude with the server, [0, 1); 0 for an
 *                honest-but-curious model where only the server is curious.
 * \param sigma   target failure probability 2^-sigma (20 by default), in [1, 128].
 * \return 0; PLAIT_EINVAL (n < 2 or > PLAIT_SECAGG_MAX_COHORT, bad fractions
 *         or sigma); PLAIT_ETHRESHOLD (even the complete graph cannot meet
 *         the bound: too many dropouts or corrupt devices for n).
 */
int plait_secagg_params_choose(uint32_t n, double dropout, double corrupt, double sigma,
                               plait_secagg_params_t *out /* OUT */) PLAIT_WUR;

/**
 * \brief The union bound of plait_secagg_params_choose() for given (n, k, t)
 *        (k = n - 1 means the complete graph): log2 of the probability that
 *        the round fails or is insecure. For tests and docs.
 * \return 0; PLAIT_EINVAL for inconsistent arguments.
 */
int plait_secagg_params_bound(uint32_t n, uint32_t k, uint32_t t, double dropout, double corrupt,
                              double *log2_fail /* OUT */) PLAIT_WUR;

/* ---- round context and graph ---------------------------------------------------- */

/** What both the devices and the server derive from the task. A plain value. */
typedef struct {
    uint8_t ctx[32];          /**< round context hash (binds deployment and round) */
    uint8_t dep_hash[32];     /**< SHA-256 of the deployment id */
    uint64_t round_id;
    plait_secagg_params_t p;
    unsigned m;               /**< ring width in bits, 1..32 */
    size_t len;               /**< words per masked vector */
    uint32_t *nbr;            /**< (n, k) sorted neighbour indices of device i at nbr[(i-1)·k]; owned.
                                   With `only` set, one row: the neighbours of device `only` */
    uint32_t only;            /**< 0: every device's row (the server); else the one device whose row is kept */
} plait_secagg_round_t;

/** \brief Make r safe to free. Cannot fail. */
void plait_secagg_round_init(plait_secagg_round_t *r);

/**
 * \brief Derive the round context and build the graph.
 * \param dep, dep_len  deployment id (1..PLAIT_SECAGG_DEP_MAX bytes; not secret).
 * \param p             n, k, t as chosen by the server (validated here: 2 <= n
 *                      <= max, k even or k == n - 1, k <= n - 1, and
 *                      (k + 1) / 2 < t <= k, so that a malicious server cannot
 *                      collect t shares of both secrets of one device from the
 *                      device and its honest neighbours, who reveal one each).
 * \param graph_seed    32 bytes from the server (not secret).
 * \param m             ring width, 1..32. \param len words per vector, >= 1.
 * \return 0; PLAIT_EINVAL (with a detail naming the bad field), PLAIT_ENOMEM.
 */
int plait_secagg_round_setup(plait_secagg_round_t *r, const uint8_t *dep, size_t dep_len, uint64_t round_id,
                             const plait_secagg_params_t *p, const uint8_t graph_seed[32], unsigned m,
                             size_t len) PLAIT_WUR;

/**
 * \brief plait_secagg_round_setup() for one device: the same context and the
 *        same graph, but only device `self`'s row is kept (k words, where the
 *        server's table has n·k), so a task naming a large cohort costs the
 *        device O(n) memory for the ring permutation, not O(n·k).
 *        plait_secagg_neighbours() then answers only for self.
 * \param self 1..n.
 * \return as plait_secagg_round_setup(); PLAIT_EINVAL for a bad self.
 */
int plait_secagg_round_setup_device(plait_secagg_round_t *r, const uint8_t *dep, size_t dep_len, uint64_t round_id,
                                    const plait_secagg_params_t *p, const uint8_t graph_seed[32], unsigned m,
                                    size_t len, uint32_t self) PLAIT_WUR;

/** \brief 1 when u and v (1..n) are neighbours in r's graph (a device's round: u is the device), else 0. */
int plait_secagg_adjacent(const plait_secagg_round_t *r, uint32_t u, uint32_t v);

/** \brief The k sorted neighbours of u (1..n), valid while r lives; NULL for a bad u (in a
 *         device's round, any u but the device). */
const uint32_t *plait_secagg_neighbours(const plait_secagg_round_t *r, uint32_t u);

/** \brief Release the graph. NULL and double free are safe. */
void plait_secagg_round_free(plait_secagg_round_t *r);

/* ---- step 0: advertise keys ------------------------------------------------------ */

/** A device's signed public keys for one round (public; relayed by the server). */
typedef struct {
    uint32_t idx;                         /**< device index 1..n */
    uint8_t c_pk[PLAIT_SECAGG_KEY_LEN];   /**< X25519 mask-agreement public key */
    uint8_t s_pk[PLAIT_SECAGG_KEY_LEN];   /**< X25519 share-encryption public key */
    uint8_t sig[PLAIT_SECAGG_SIG_MAX];    /**< DER ECDSA-SHA256 signature by the device key */
    size_t sig_len;
    int has_b_commit;                     /**< 1: a v2 advert, committing to b (0: v1, older devices) */
    uint8_t b_commit[PLAIT_SECAGG_KEY_LEN]; /**< SHA-256("plait-secagg-bcommit-v1" || ctx || idx || b) */
} plait_secagg_advert_t;

/**
 * \brief Check an advert against a device certificate: the certificate
 *        chains to ca_pem (when not NULL) with EKU clientAuth, and its public
 *        key verifies the signature over the advert bound to r's deployment
 *        and round.
 * \param crt, crt_len the advertising device's certificate, PEM (with or
 *                     without the NUL) or DER, at most PLAIT_SECAGG_CRT_MAX.
 * \param ca_pem       the deployment CA (NUL-terminated PEM), or NULL to skip
 *                     the chain check (the server already checked it in TLS).
 * \return 0; PLAIT_EAUTH (signature or chain does not verify), PLAIT_EPROTO
 *         (certificate or signature unparseable), PLAIT_EINVAL.
 */
int plait_secagg_advert_verify(const plait_secagg_round_t *r, const plait_secagg_advert_t *a, const uint8_t *crt,
                               size_t crt_len, const char *ca_pem) PLAIT_WUR;

/* ---- device ------------------------------------------------------------------------ */

typedef struct plait_secagg_device_s plait_secagg_device_t;

/**
 * \brief Create a device's round state: two X25519 key pairs and the self
 *        seed b, drawn from rng.
 * \param r    set up; borrowed, must outlive the device object.
 * \param self this device's index, 1..n.
 * \param rng  a seeded DRBG.
 * \return 0; PLAIT_EINVAL, PLAIT_ENOMEM, PLAIT_EIO (DRBG), PLAIT_EINTERNAL.
 */
int plait_secagg_device_create(plait_secagg_device_t **out /* OUT */, const plait_secagg_round_t *r,
                               uint32_t self, plait_drbg_t *rng) PLAIT_WUR;

/**
 * \brief Sign this device's public keys with its enrolled ECDSA P-256 key.
 * \param key_pem the device key (NUL-terminated PEM); borrowed.
 * \return 0; PLAIT_EPROTO (key unparseable or not EC), PLAIT_EINVAL, PLAIT_EINTERNAL.
 */
int plait_secagg_device_advertise(plait_secagg_device_t *d, const char *key_pem, plait_drbg_t *rng,
                                  plait_secagg_advert_t *out /* OUT */) PLAIT_WUR;

/**
 * \brief Accept a neighbour's advert after plait_secagg_advert_verify().
 *        Only adverts of graph neighbours are accepted, once each, and
 *        each from its own certificate (one device, one index).
 * \return 0; PLAIT_EINVAL (not a neighbour, own index, repeated, wrong
 *         state), PLAIT_EAUTH (as plait_secagg_advert_verify(), or the
 *         certificate already stands behind another accepted neighbour) and
 *         PLAIT_EPROTO as plait_secagg_advert_verify().
 */
int plait_secagg_device_accept_advert(plait_secagg_device_t *d, const plait_secagg_advert_t *a, const uint8_t *crt,
                                      size_t crt_len, const char *ca_pem) PLAIT_WUR;

/** A share message from one device to another (relayed by the server). */
typedef struct {
    uint32_t from, to;
    uint8_t ct[PLAIT_SECAGG_CT_LEN];
} plait_secagg_ct_t;

/**
 * \brief Shamir-share c_sk and b among the accepted neighbours and encrypt
 *        one message per neighbour. Callable once.
 * \param out cap entries; the number of accepted neighbours is needed.
 * \return 0; PLAIT_ETHRESHOLD (fewer than t - 1 neighbours accepted, so the
 *         device and its neighbours hold fewer than t shares: the device must
 *         not continue the round), PLAIT_ETOOBIG (cap), PLAIT_EINVAL
 *         (wrong state), PLAIT_EIO, PLAIT_EINTERNAL.
 */
int plait_secagg_device_shares(plait_secagg_device_t *d, plait_drbg_t *rng, plait_secagg_ct_t *out, size_t cap,
                               size_t *n_out /* OUT */) PLAIT_WUR;

/**
 * \brief Decrypt and keep a share message addressed to this device from an
 *        accepted neighbour. Its sender joins the set this device masks with
 *        (the server relayed it, so the server counts the pair as masked),
 *        even when the message does not open: then only that neighbour's
 *        shares are dropped (this device cannot help reconstruct it later)
 *        and the device goes on with the round.
 * \return 0; PLAIT_EAUTH (does not decrypt: tampered, or another round,
 *         deployment, sender or recipient; the share is dropped and the
 *         device may continue), PLAIT_EINVAL (not addressed to this device,
 *         sender not accepted, repeated, wrong state; nothing changes).
 */
int plait_secagg_device_recv_share(plait_secagg_device_t *d, const plait_secagg_ct_t *c) PLAIT_WUR;

/**
 * \brief Whether enough share messages were relayed to this device for it to
 *        mask (plait_secagg_device_mask() checks the same): a device can ask
 *        right after the relay, before it trains.
 * \return 0; PLAIT_ETHRESHOLD (shares from fewer than t - 1 neighbours: the
 *         device must leave the round); PLAIT_EINVAL (NULL).
 */
int plait_secagg_device_check_relayed(const plait_secagg_device_t *d) PLAIT_WUR;

/**
 * \brief y = x + PRG(b) + sum of ±PRG(s_uv) mod 2^m over the neighbours whose
 *        shares were received. Callable once.
 * \param x len words, each < 2^m (len as in the round). \param y OUT len words.
 * \return 0; PLAIT_EINVAL (a word >= 2^m, wrong len or state),
 *         PLAIT_ETHRESHOLD (shares from fewer than t - 1 neighbours), PLAIT_ENOMEM.
 */
int plait_secagg_device_mask(plait_secagg_device_t *d, const uint32_t *x, size_t len, uint32_t *y /* OUT */) PLAIT_WUR;

/** One revealed share: of the self seed b (kind 0) or of c_sk (kind 1) of `owner`. */
typedef struct {
    uint32_t owner;
    uint32_t kind;                           /**< PLAIT_SECAGG_REVEAL_B or _SK */
    uint8_t share[PLAIT_SECAGG_SHARE_LEN];
} plait_secagg_reveal_t;

#define PLAIT_SECAGG_REVEAL_B 0u
#define PLAIT_SECAGG_REVEAL_SK 1u

/**
 * \brief Answer an unmask request: b-shares of the listed survivors and
 *        c_sk-shares of the listed dropouts, for the neighbours whose shares
 *        this device holds (other listed devices are skipped). Answers one
 *        request per round: the same request resent (a lost answer) gets the
 *        same answer again, any other request is refused.
 * \param surv, n_surv  survivors (sent masked input); must contain this device.
 * \param drop, n_drop  dropouts (shared keys, sent no masked input).
 * \param out cap entries (k + 1 is always enough: this device's own b-share
 *            comes first).
 * \return the count in *n_out and 0; PLAIT_EREFUSED (a device in both lists,
 *         this device listed as dropped or missing from the survivors, none of
 *         the neighbours it masked with listed as a survivor (its own b-share
 *         could then complete b for holders outside its mask set: a server
 *         that withheld their share messages could unmask y), a different
 *         second request, any request after a refusal, or no masked input
 *         sent yet); PLAIT_EPROTO (index
 *         out of range or repeated in a list); PLAIT_ETOOBIG (cap).
 */
int plait_secagg_device_unmask(plait_secagg_device_t *d, const uint32_t *surv, size_t n_surv, const uint32_t *drop,
                               size_t n_drop, plait_secagg_reveal_t *out, size_t cap,
                               size_t *n_out /* OUT */) PLAIT_WUR;

/** \brief Wipe every secret and free. NULL is safe. */
void plait_secagg_device_free(plait_secagg_device_t *d);

/* ---- server ------------------------------------------------------------------------ */

typedef struct plait_secagg_server_s plait_secagg_server_t;

/** \brief Server state for one round. \param r borrowed, must outlive it. */
int plait_secagg_server_create(plait_secagg_server_t **out /* OUT */, const plait_secagg_round_t *r) PLAIT_WUR;

/**
 * \brief Record a device's advert (U1). The protocol verifies it first with
 *        plait_secagg_advert_verify() against the TLS peer's certificate.
 * \return 0; PLAIT_EINVAL (index out of range, repeated, wrong stage).
 */
int plait_secagg_server_add_advert(plait_secagg_server_t *s, const plait_secagg_advert_t *a) PLAIT_WUR;

/**
 * \brief Record that device u's share messages arrived and were relayed (U2).
 * \return 0; PLAIT_EINVAL (unknown or repeated device, wrong stage).
 */
int plait_secagg_server_mark_shared(plait_secagg_server_t *s, uint32_t u) PLAIT_WUR;

/**
 * \brief Add device u's masked input to the running sum (U3). u must be in U2.
 * \return 0; PLAIT_EINVAL (u not in U2, repeated, wrong len), PLAIT_EPROTO
 *         (a word >= 2^m).
 */
int plait_secagg_server_add_masked(plait_secagg_server_t *s, uint32_t u, const uint32_t *y, size_t len) PLAIT_WUR;

/**
 * \brief The unmask request for survivor v: its neighbours in U3 (survivors)
 *        and in U2 minus U3 (dropouts). Closes the masked-input stage.
 * \param surv, drop OUT: valid until the next call on s.
 * \return 0; PLAIT_EINVAL (v not in U3); PLAIT_ETHRESHOLD (fewer than t
 *         devices sent masked input: the round cannot finish).
 */
int plait_secagg_server_request(plait_secagg_server_t *s, uint32_t v, const uint32_t **surv /* OUT */,
                                size_t *n_surv /* OUT */, const uint32_t **drop /* OUT */,
                                size_t *n_drop /* OUT */) PLAIT_WUR;

/**
 * \brief Store survivor v's answer. Reveals are untrusted: a reveal that
 *        does not match the request sent to v is rejected.
 * \return 0; PLAIT_EPROTO (owner not a neighbour of v, wrong kind for the
 *         owner, repeated); PLAIT_EINVAL (v not in U3, repeated answer).
 */
int plait_secagg_server_add_reveals(plait_secagg_server_t *s, uint32_t v, const plait_secagg_reveal_t *rev,
                                    size_t n) PLAIT_WUR;

/** Most t-subsets of one device's revealed shares that plait_secagg_server_finish() tries. */
#define PLAIT_SECAGG_MAX_SUBSETS 64u

/**
 * \brief Reconstruct b of every survivor and c_sk of every dropout, remove
 *        all masks and write sum over U3 of x mod 2^m. Reconstruction is
 *        robust to wrong revealed shares: it tries t-subsets of a device's
 *        shares (at most PLAIT_SECAGG_MAX_SUBSETS; holders already caught
 *        with a wrong share last) until one verifies: a c_sk against the
 *        advertised c_pk; a b against the advert's commitment or, for a v1
 *        advert without one, by at least max(t + 1, ceil((s + t) / 2)) of
 *        its s shares lying on the polynomial (then, with exactly t shares,
 *        a b cannot be checked and is used as it is).
 * \param sum OUT len words.
 * \return 0; PLAIT_ETHRESHOLD (fewer than t shares for some device: the
 *         round fails and nothing must be committed), PLAIT_EAUTH (no subset
 *         of some device's shares verifies: forged shares; the round fails),
 *         PLAIT_EINVAL, PLAIT_ENOMEM.
 */
int plait_secagg_server_finish(plait_secagg_server_t *s, uint32_t *sum /* OUT */, size_t len) PLAIT_WUR;

/** \brief Share holders whose revealed shares were off a verified
 *         reconstruction in the last plait_secagg_server_finish() (a count
 *         only: for an operator's log). */
size_t plait_secagg_server_inconsistent(const plait_secagg_server_t *s);

/** \brief Number of devices in U1, U2, U3 (any pointer may be NULL). */
void plait_secagg_server_counts(const plait_secagg_server_t *s, size_t *n_adv, size_t *n_shared, size_t *n_masked);

/** \brief Wipe and free. NULL is safe. */
void plait_secagg_server_free(plait_secagg_server_t *s);

/* ---- primitives (exposed for known-answer tests) ------------------------------------- */

/** \brief X25519(scalar, u) per RFC 7748 (scalar clamped). \return 0; PLAIT_EAUTH (all-zero output). */
int plait_x25519(const uint8_t scalar[32], const uint8_t u[32], uint8_t out[32] /* OUT */) PLAIT_WUR;

/** \brief HKDF-SHA256 (RFC 5869). \return 0; PLAIT_EINVAL (okm_len > 255·32). */
int plait_hkdf_sha256(const uint8_t *salt, size_t salt_len, const uint8_t *ikm, size_t ikm_len, const uint8_t *info,
                      size_t info_len, uint8_t *okm /* OUT */, size_t okm_len) PLAIT_WUR;

/** \brief ChaCha20 (RFC 8439) XOR: out = in ^ keystream(key, nonce, counter). */
int plait_chacha20(const uint8_t key[32], const uint8_t nonce[12], uint32_t counter, const uint8_t *in, size_t len,
                   uint8_t *out /* OUT */) PLAIT_WUR;

/** \brief ChaCha20-Poly1305 seal: out = ciphertext (len) || tag (16). */
int plait_aead_seal(const uint8_t key[32], const uint8_t nonce[12], const uint8_t *aad, size_t aad_len,
                    const uint8_t *in, size_t len, uint8_t *out /* OUT */) PLAIT_WUR;

/** \brief ChaCha20-Poly1305 open of ct (len) || tag (16). \return 0; PLAIT_EAUTH (out zeroed). */
int plait_aead_open(const uint8_t key[32], const uint8_t nonce[12], const uint8_t *aad, size_t aad_len,
                    const uint8_t *in, size_t len, uint8_t *out /* OUT */) PLAIT_WUR;

/** Shamir over GF(2^61 - 1) on 32-byte secrets (see above). */
/**
 * \brief Split secret into n shares with threshold t at x = xs[i] (distinct, nonzero).
 * \return 0; PLAIT_EINVAL (t < 1, t > n, bad x), PLAIT_EIO (DRBG).
 */
int plait_shamir_split(const uint8_t secret[32], uint32_t t, const uint32_t *xs, size_t n, plait_drbg_t *rng,
                       uint8_t (*shares)[PLAIT_SECAGG_SHARE_LEN] /* OUT n */) PLAIT_WUR;
/**
 * \brief Reconstruct from exactly t shares at distinct x. With fewer than the
 *        split's threshold the result is unrelated to the secret (usually
 *        rejected as PLAIT_EAUTH when a limb is >= 2^56).
 * \return 0; PLAIT_EINVAL (t == 0, repeated or zero x), PLAIT_EAUTH (limb out of range).
 */
int plait_shamir_combine(const uint32_t *xs, const uint8_t (*shares)[PLAIT_SECAGG_SHARE_LEN], size_t t,
                         uint8_t secret[32] /* OUT */) PLAIT_WUR;

#endif /* PLAIT_SECAGG_H */
