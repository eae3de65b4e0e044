/*
 * pki_int.h: what pki.c shares with tls.c and nothing else (private to lib/).
 * No mbedTLS types appear here, so the header can be included anywhere in
 * lib/ without dragging mbedtls headers along.
 */
#ifndef PLAIT_PKI_INT_H
#define PLAIT_PKI_INT_H

#include <stdint.h>

/** Short static reason for mbedTLS X.509 verification flags (MBEDTLS_X509_BADCERT_*). */
const char *plait__pki_flags_reason(uint32_t flags);

/** The X.509 profile plait accepts (ECDSA P-256 keys, SHA-256/384/512 signatures);
 *  returns a `const mbedtls_x509_crt_profile *`. */
const void *plait__pki_profile(void);

/** mbedTLS-shaped RNG over a plait_drbg_t (p_rng): returns 0 or an mbedTLS error. */
int plait__pki_rng(void *p_rng, unsigned char *out, size_t len);

#endif /* PLAIT_PKI_INT_H */
