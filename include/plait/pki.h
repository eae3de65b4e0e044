/*
 * pki.h: the deployment's small certificate authority.
 *
 * A deployment has one CA (ECDSA P-256, self-signed). The CA issues one
 * server certificate to the aggregator (serverAuth, subjectAltName with the
 * DNS names and IP addresses it is reached by) and one certificate per device
 * (clientAuth, subject CN = the device id, a random 128-bit serial). The TLS
 * layer (tls.h) trusts only that CA; a device's identity in the federation is
 * the CN of its verified certificate, never something the device says.
 *
 * Everything is PEM text in memory (NUL-terminated `char *`, owned by the
 * caller and freed with plait_pki_free_pem(), which wipes it first because
 * some of it is private keys). The deployment helpers at the bottom read and
 * write the files of a deployment directory so that `plait-aggregator init`,
 * `enroll` and `revoke` are thin command-line layers:
 *
 *     plait_pki_config_t cfg;
 *     plait_pki_config_default(&cfg);
 *     cfg.server_alt_names = "agg.example.org,10.0.0.5";
 *     // writes ca.crt, ca.key, server.crt, server.key, revoked.txt
 *     if ((rc = plait_pki_init_deployment(dir, &cfg)) != 0) goto fail;
 *     char *crt = NULL, *key = NULL;
 *     plait_pki_cert_info_t info;
 *     // or plait_pki_enroll_csr() when the device sent a CSR
 *     rc = plait_pki_enroll(dir, &cfg, "phone-0042", &crt, &key, &info);
 *     ...
 *     plait_pki_free_pem(crt);
 *     plait_pki_free_pem(key);
 *     // appends "serial <hex>" to revoked.txt
 *     rc = plait_pki_revoke(dir, info.serial_hex, NULL);
 *
 * Randomness: every function that needs it takes a `plait_drbg_t *rng`; NULL
 * means "seed a fresh DRBG from the system entropy source for this call".
 *
 * Errors: PLAIT_EINVAL for bad arguments (with the reason in plait_errmsg()),
 * PLAIT_EPROTO for unparseable PEM/DER, PLAIT_EAUTH for a signature that does
 * not verify, PLAIT_EIO for files, PLAIT_ENOMEM. mbedTLS codes are named in
 * the detail (plait_errmsg()), never key material.
 *
 * Thread-safety: all functions are reentrant; a plait_pki_revlist_t is used by
 * one thread at a time (the aggregator's loop thread).
 */
#ifndef PLAIT_PKI_H
#define PLAIT_PKI_H

#include <stdint.h>

#include "plait/crypto.h"
#include "plait/plait.h"

/** Longest device id (the CN of a device certificate). */
#define PLAIT_PKI_ID_MAX 64
/** Longest serial in hex (20 bytes, RFC 5280). Issued serials are 16 bytes. */
#define PLAIT_PKI_SERIAL_HEX_MAX 40

/** What plait reads from a certificate (its own or a peer's). */
typedef struct plait_pki_cert_info_s {
    char device_id[PLAIT_PKI_ID_MAX + 1];          /**< subject CN ("" when absent) */
    char serial_hex[PLAIT_PKI_SERIAL_HEX_MAX + 1]; /**< serial, lower-case hex, no leading 00 */
    uint8_t fingerprint[32];                       /**< SHA-256 of the certificate DER */
    char fingerprint_hex[65];                      /**< the same in lower-case hex */
    int64_t not_before;                            /**< validity start, Unix seconds (UTC) */
    int64_t not_after;                             /**< validity end, Unix seconds (UTC) */
    int is_ca;                                     /**< basicConstraints CA:true */
} plait_pki_cert_info_t;

/** Settings of a deployment's PKI. Strings are borrowed for each call. */
typedef struct plait_pki_config_s {
    const char *org;         /**< subject O of every certificate; default "plait" */
    const char *ca_name;     /**< CN of the CA; default "plait deployment CA" */
    const char *server_name; /**< CN of the server certificate; default "plait-aggregator" */
    /** Comma-separated subjectAltName entries of the server certificate: DNS
     *  names and IPv4/IPv6 literals. The server_name is always added as a DNS
     *  entry. Default "localhost,127.0.0.1". */
    const char *server_alt_names;
    uint32_t ca_days;     /**< CA validity in days; default 3650 */
    uint32_t server_days; /**< server certificate validity; default 825 */
    uint32_t device_days; /**< device certificate validity; default 365 */
    /** Issue "as of" this Unix time (notBefore = now - 5 minutes of clock
     *  skew allowance). 0, the default, means the current clock. Tests set it
     *  in the past to make certificates that have already expired. */
    int64_t now;
} plait_pki_config_t;

/** \brief Fill cfg with the defaults documented on each field. */
void plait_pki_config_default(plait_pki_config_t *cfg);

/**
 * \brief Check cfg: names are 1..64 characters of [A-Za-z0-9 ._-] (no ',',
 *        '=' or quotes, so they cannot smuggle extra name attributes), day
 *        counts are 1..36500, alt names are valid DNS names or IP literals.
 * \return 0 or PLAIT_EINVAL (reason in plait_errmsg()).
 */
int plait_pki_config_validate(const plait_pki_config_t *cfg) PLAIT_WUR;

/**
 * \brief Is id a valid device id: 1..PLAIT_PKI_ID_MAX characters of
 *        [A-Za-z0-9._-], not starting with '.' or '-'.
 * \return 1 if valid, 0 otherwise.
 */
int plait_pki_device_id_valid(const char *id);

/**
 * \brief Generate an ECDSA P-256 private key.
 * \param rng     seeded DRBG, or NULL for a fresh system-seeded one.
 * \param key_pem OUT: owned PEM ("EC PRIVATE KEY"); free with plait_pki_free_pem().
 * \return 0, PLAIT_EINVAL, PLAIT_ENOMEM, PLAIT_EIO (entropy), PLAIT_EINTERNAL.
 */
int plait_pki_key_generate(plait_drbg_t *rng, char **key_pem /* OUT */) PLAIT_WUR;

/**
 * \brief Create a self-signed CA: basicConstraints CA:true pathlen 0,
 *        keyUsage keyCertSign|cRLSign, a fresh P-256 key, cfg->ca_days.
 * \param ca_crt_pem OUT: owned certificate PEM.
 * \param ca_key_pem OUT: owned private key PEM (secret).
 * \return 0, PLAIT_EINVAL (bad cfg), PLAIT_ENOMEM, PLAIT_EIO, PLAIT_EINTERNAL.
 *         On error the outputs are left NULL.
 */
int plait_pki_ca_create(const plait_pki_config_t *cfg, plait_drbg_t *rng,
                        char **ca_crt_pem /* OUT */, char **ca_key_pem /* OUT */) PLAIT_WUR;

/**
 * \brief Issue the aggregator's certificate: CN cfg->server_name, EKU
 *        serverAuth, keyUsage digitalSignature, subjectAltName from
 *        cfg->server_name and cfg->server_alt_names, cfg->server_days.
 * \param ca_crt_pem, ca_key_pem  the CA (NUL-terminated PEM); the key must
 *        match the certificate.
 * \param crt_pem OUT: owned certificate PEM. \param key_pem OUT: owned key PEM.
 * \return 0, PLAIT_EINVAL, PLAIT_EPROTO (CA PEM unparseable), PLAIT_EMISMATCH
 *         (key is not the CA's), PLAIT_ENOMEM, PLAIT_EINTERNAL.
 */
int plait_pki_server_issue(const plait_pki_config_t *cfg, const char *ca_crt_pem,
                           const char *ca_key_pem, plait_drbg_t *rng, char **crt_pem /* OUT */,
                           char **key_pem /* OUT */) PLAIT_WUR;

/**
 * \brief Issue a device certificate with a freshly generated key: CN
 *        device_id, O cfg->org, EKU clientAuth, keyUsage digitalSignature,
 *        random 128-bit serial, cfg->device_days.
 * \param info OUT, may be NULL: what was issued (serial, fingerprint, ...).
 * \return as plait_pki_server_issue(); PLAIT_EINVAL for an invalid device id.
 */
int plait_pki_device_issue(const plait_pki_config_t *cfg, const char *ca_crt_pem,
                           const char *ca_key_pem, const char *device_id, plait_drbg_t *rng,
                           char **crt_pem /* OUT */, char **key_pem /* OUT */,
                           plait_pki_cert_info_t *info /* OUT */) PLAIT_WUR;

/**
 * \brief Make a certificate signing request (device side: the key never
 *        leaves the device). Subject "CN=device_id,O=org"; signed with key_pem.
 * \param org subject O, or NULL for "plait".
 * \param csr_pem OUT: owned PEM ("CERTIFICATE REQUEST").
 * \return 0, PLAIT_EINVAL, PLAIT_EPROTO (key unparseable), PLAIT_ENOMEM, PLAIT_EINTERNAL.
 */
int plait_pki_csr_create(const char *device_id, const char *org, const char *key_pem,
                         plait_drbg_t *rng, char **csr_pem /* OUT */) PLAIT_WUR;

/**
 * \brief Issue a device certificate for the public key in a CSR.
 *
 * The CSR is untrusted input: it is parsed, its key must be ECDSA P-256, and
 * its self-signature over CertificationRequestInfo is verified (proof that
 * the requester holds the private key) before anything is issued.
 *
 * \param csr, csr_len  PEM (with or without the trailing NUL) or DER; at most 16 KiB.
 * \param device_id  the CN to certify, or NULL to take the CSR's CN. The
 *        operator's choice wins: a CSR's subject is only a request.
 * \param crt_pem OUT: owned certificate PEM. \param info OUT, may be NULL.
 * \return 0; PLAIT_EPROTO (CSR unparseable, reason says where); PLAIT_EAUTH
 *         (the CSR's signature does not verify); PLAIT_EINVAL (key not P-256,
 *         invalid device id, or no CN and device_id NULL); PLAIT_ETOOBIG;
 *         others as plait_pki_server_issue().
 */
int plait_pki_issue_from_csr(const plait_pki_config_t *cfg, const char *ca_crt_pem,
                             const char *ca_key_pem, const uint8_t *csr, size_t csr_len,
                             const char *device_id, plait_drbg_t *rng, char **crt_pem /* OUT */,
                             plait_pki_cert_info_t *info /* OUT */) PLAIT_WUR;

/**
 * \brief Read device id (CN), serial, fingerprint, validity and CA flag from
 *        a certificate. Does not verify anything.
 * \param crt, crt_len  PEM (with or without trailing NUL) or DER.
 * \return 0, PLAIT_EINVAL, PLAIT_EPROTO (unparseable), PLAIT_ENOMEM.
 */
int plait_pki_cert_info(const uint8_t *crt, size_t crt_len,
                        plait_pki_cert_info_t *info /* OUT */) PLAIT_WUR;

/**
 * \brief Verify crt against the CA the way the TLS layer does (chain,
 *        validity dates, key usage, and EKU clientAuth when want_client is 1,
 *        serverAuth when 0). For `enroll` self-checks and tests.
 * \param reason OUT, may be NULL: a short static reason on failure.
 * \return 0, PLAIT_EAUTH (does not verify; see *reason), PLAIT_EPROTO, PLAIT_EINVAL.
 */
int plait_pki_verify(const char *ca_crt_pem, const char *crt_pem, int want_client,
                     const char **reason /* OUT */) PLAIT_WUR;

/** \brief Wipe and free a PEM string returned by this module. NULL is safe. */
void plait_pki_free_pem(char *pem);

/* ---- Revocation list ------------------------------------------------------
 *
 * The aggregator keeps revoked device certificates in a text file
 * (revoked.txt in the deployment directory), one entry per line:
 *     serial <hex>
 *     sha256 <64 hex digits>
 * '#' starts a comment. The TLS server consults the list for every client
 * certificate during the handshake (see plait_tls_revoked_cb in tls.h;
 * plait_pki_revlist_check() is a ready-made callback). Lookups are a linear
 * scan: deployments revoke tens to thousands of devices, and the check runs
 * once per handshake.
 */
typedef struct plait_pki_revlist_s {
    char (*serials)[PLAIT_PKI_SERIAL_HEX_MAX + 1]; /**< owned array, n_serials used */
    uint8_t (*fprs)[32];                           /**< owned array, n_fprs used */
    size_t n_serials, cap_serials, n_fprs, cap_fprs;
} plait_pki_revlist_t;

/** \brief Make rl empty and safe to free. Cannot fail. */
void plait_pki_revlist_init(plait_pki_revlist_t *rl);
/** \brief Release rl's memory. NULL and double free are safe. */
void plait_pki_revlist_free(plait_pki_revlist_t *rl);
/** \brief Add a serial (hex, leading zeros ignored, case-insensitive). \return 0, PLAIT_EINVAL,
 * PLAIT_ENOMEM. */
int plait_pki_revlist_add_serial(plait_pki_revlist_t *rl, const char *serial_hex) PLAIT_WUR;
/** \brief Add a certificate fingerprint (SHA-256 of its DER). \return 0, PLAIT_ENOMEM. */
int plait_pki_revlist_add_fingerprint(plait_pki_revlist_t *rl, const uint8_t fpr[32]) PLAIT_WUR;
/** \brief Is the certificate described by info revoked (by serial or fingerprint)? \return 1 or 0.
 */
int plait_pki_revlist_contains(const plait_pki_revlist_t *rl, const plait_pki_cert_info_t *info);
/**
 * \brief Load a revocation file into rl (entries are added). A missing file is
 *        an empty list.
 * \return 0, PLAIT_EPROTO (bad line; its number is in the detail), PLAIT_EIO, PLAIT_ENOMEM.
 */
int plait_pki_revlist_load(plait_pki_revlist_t *rl, const char *path) PLAIT_WUR;
/**
 * \brief TLS revocation callback over a plait_pki_revlist_t (pass the list
 *        as ud). \return 0 when not revoked, PLAIT_EAUTH when revoked.
 */
int plait_pki_revlist_check(void *ud, const plait_pki_cert_info_t *peer);

/* ---- Deployment directory ------------------------------------------------ */

/**
 * \brief Write a PEM (or any text) file; secret files are created 0600
 *        (O_CREAT|O_EXCL on a temporary name, fsync, rename, directory sync:
 *        plait_file_write_atomic()), others 0644.
 * \return 0, PLAIT_EINVAL, PLAIT_EIO.
 */
int plait_pki_write_file(const char *path, const char *text, int secret) PLAIT_WUR;

/**
 * \brief Read a whole text file (at most 1 MiB) as a NUL-terminated string.
 * \param text OUT: owned; free with plait_pki_free_pem() (it may be a key).
 * \return 0, PLAIT_ENOENT, PLAIT_ETOOBIG, PLAIT_EIO, PLAIT_ENOMEM.
 */
int plait_pki_read_file(const char *path, char **text /* OUT */) PLAIT_WUR;

/**
 * \brief `plait-aggregator init DIR`: create the CA and the server key and
 *        certificate in dir (created 0700 if missing): ca.crt, ca.key (0600),
 *        server.crt, server.key (0600), and an empty revoked.txt.
 * \return 0; PLAIT_EBUSY if dir already holds ca.key (an existing deployment
 *         is never overwritten); PLAIT_EINVAL (bad cfg); PLAIT_EIO; PLAIT_ENOMEM.
 */
int plait_pki_init_deployment(const char *dir, const plait_pki_config_t *cfg) PLAIT_WUR;

/**
 * \brief `plait-aggregator enroll DEVICE_ID`: issue a device certificate and a
 *        fresh key with the CA in dir. The caller writes them where the
 *        device will find them (key 0600: plait_pki_write_file(..., 1)).
 * \return as plait_pki_device_issue(); PLAIT_ENOENT if dir has no CA.
 */
int plait_pki_enroll(const char *dir, const plait_pki_config_t *cfg, const char *device_id,
                     char **crt_pem /* OUT */, char **key_pem /* OUT */,
                     plait_pki_cert_info_t *info /* OUT */) PLAIT_WUR;

/**
 * \brief `plait-aggregator enroll --csr FILE [DEVICE_ID]`: issue a device
 *        certificate for a CSR with the CA in dir.
 * \return as plait_pki_issue_from_csr(); PLAIT_ENOENT if dir has no CA.
 */
int plait_pki_enroll_csr(const char *dir, const plait_pki_config_t *cfg, const uint8_t *csr,
                         size_t csr_len, const char *device_id, char **crt_pem /* OUT */,
                         plait_pki_cert_info_t *info /* OUT */) PLAIT_WUR;

/**
 * \brief `plait-aggregator revoke`: append "serial <hex>" and/or "sha256
 *        <hex>" lines to dir/revoked.txt (created 0644 if missing). The
 *        running server picks the change up when it reloads the list.
 * \param serial_hex a serial, or NULL. \param fingerprint a SHA-256, or NULL;
 *        at least one must be given.
 * \return 0, PLAIT_EINVAL, PLAIT_EIO.
 */
int plait_pki_revoke(const char *dir, const char *serial_hex, const uint8_t *fingerprint) PLAIT_WUR;

/* ---- offline enrollment (docs/operator-pki.md) --------------------------------- */

/** Largest enrollment record file. */
#define PLAIT_PKI_RECORD_MAX 16384

/**
 * \brief An enrollment record: what an offline CA host hands the serving host
 *        for one device. Text:
 *
 *            plait-enrollment 1
 *            label LABEL
 *            id ID
 *            sig HEX            ECDSA-SHA256 by the CA key over the lines above
 *            -----BEGIN CERTIFICATE-----   and the certificate PEM below
 *            ...
 *
 *        The certificate (CN = ID) proves the key; the signature binds the
 *        operator's label to it, so a record cannot be relabelled in transit.
 * \param label, id  valid device ids (plait_pki_device_id_valid); id equals the CN of crt_pem.
 * \param record OUT: owned text, free with plait_pki_free_pem().
 * \return 0; PLAIT_EINVAL (bad label or id, id is not the certificate's CN,
 *         key not P-256); PLAIT_EPROTO (unparseable PEM); PLAIT_ENOMEM.
 */
int plait_pki_record_create(const char *ca_key_pem, const char *label, const char *id,
                            const char *crt_pem, char **record /* OUT */) PLAIT_WUR;

/**
 * \brief Parse and check an enrollment record (untrusted input): its format,
 *        the CA's signature, and that the certificate is a device certificate
 *        of this CA (plait_pki_verify) whose CN is the record's id.
 * \param label, id OUT: PLAIT_PKI_ID_MAX + 1 bytes each.
 * \param info OUT, may be NULL: the certificate.
 * \return 0; PLAIT_EPROTO (malformed, the field is named); PLAIT_EAUTH (bad
 *         signature, or the certificate does not verify); PLAIT_ETOOBIG;
 *         PLAIT_EINVAL; PLAIT_ENOMEM.
 */
int plait_pki_record_verify(const char *ca_crt_pem, const char *record, size_t len, char *label /* OUT */,
                            char *id /* OUT */, plait_pki_cert_info_t *info /* OUT */) PLAIT_WUR;

#endif /* PLAIT_PKI_H */
