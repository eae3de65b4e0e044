/*
 * pki_int.h: what the pki files (pki.c, pki_csr.c, pki_check.c, pki_dir.c)
 * share with each other and with tls.c (private to lib/). No mbedTLS header
 * is included here: mbedTLS types appear only as incomplete struct pointers,
 * so the header can be included anywhere in lib/ without dragging mbedtls
 * headers along.
 */
#ifndef PLAIT_PKI_INT_H
#define PLAIT_PKI_INT_H

#include <stddef.h>
#include <stdint.h>

#include "plait/crypto.h"
#include "plait/pki.h"

/** Short static reason for mbedTLS X.509 verification flags (MBEDTLS_X509_BADCERT_*). */
const char *plait__pki_flags_reason(uint32_t flags);

/** The X.509 profile plait accepts (ECDSA P-256 keys, SHA-256/384/512 signatures);
 *  returns a `const mbedtls_x509_crt_profile *`. */
const void *plait__pki_profile(void);

/** mbedTLS-shaped RNG over a plait_drbg_t (p_rng): returns 0 or an mbedTLS error. */
int plait__pki_rng(void *p_rng, unsigned char *out, size_t len);

/* ---- shared by the pki files only ------------------------------------- */

#define PKI_PEM_BUF 4096 /* a P-256 certificate with a few SANs is ~800 bytes of PEM */
#define PKI_FILE_MAX (1024 * 1024)

struct mbedtls_x509_crt;
struct mbedtls_pk_context;
struct mbedtls_x509_time;
struct mbedtls_asn1_named_data; /* mbedtls_x509_name */

/* Record "<what> (mbedTLS -0xNNNN)" with code; returns code. */
int plait__pki_mbed_fail(int code, int mrc, const char *what);

/* A DRBG for one call: the caller's, or a fresh system-seeded one. */
typedef struct {
    plait_drbg_t own;
    plait_drbg_t *use;
} plait__pki_rng_t;
int plait__pki_rng_begin(plait__pki_rng_t *r, plait_drbg_t *given);
void plait__pki_rng_end(plait__pki_rng_t *r);

/* Names we put in a DN: 1..PLAIT_PKI_ID_MAX of [A-Za-z0-9._-] (inner spaces if allow_space). */
int plait__pki_name_ok(const char *s, int allow_space);
/* Copy a NUL-terminated buffer of cap bytes out into *out (owned), wiping the source. */
int plait__pki_pem_out(unsigned char *buf, size_t cap, char **out);
/* PEM input must include its NUL in the length mbedTLS sees; DER must not.
 * *tmp (owned, free it) is set when a NUL had to be appended. */
int plait__pki_input_view(const uint8_t *buf, size_t len, size_t max, uint8_t **tmp, const uint8_t **use,
                          size_t *use_len);
/* Parse a PEM certificate / an ECDSA P-256 private key; what names it in errors. */
int plait__pki_load_crt(struct mbedtls_x509_crt *crt, const char *pem, const char *what);
int plait__pki_load_key(struct mbedtls_pk_context *pk, const char *pem, const char *what);
/* A fresh P-256 key into pk (initialized, empty), and its PEM (owned). */
int plait__pki_gen_key(struct mbedtls_pk_context *pk, plait_drbg_t *rng);
int plait__pki_key_pem(struct mbedtls_pk_context *pk, char **out);
/* An X.509 time as Unix seconds (UTC). */
int64_t plait__pki_x509_time_unix(const struct mbedtls_x509_time *t);
/* Copy the subject CN out of a parsed name; "" if absent or not a plain string. */
void plait__pki_name_cn(const struct mbedtls_asn1_named_data *name, char *out, size_t cap);
/* A serial in hex, lower-case, leading zeros dropped; PLAIT_EINVAL if not hex or too long. */
int plait__pki_serial_norm(const char *in, char out[PLAIT_PKI_SERIAL_HEX_MAX + 1]);

#endif /* PLAIT_PKI_INT_H */
