/*
 * fuzz_csr.c: the enrollment path on arbitrary bytes: a certificate signing
 * request (PEM or DER) handed to plait_pki_issue_from_csr, and the same bytes
 * read as a certificate by plait_pki_cert_info. A CA is made once, from a
 * deterministic generator, so every run is reproducible.
 */
#include <stdint.h>
#include <stdlib.h>

#include "plait/crypto.h"
#include "plait/pki.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static char *ca_crt, *ca_key;
static plait_pki_config_t cfg;
static plait_drbg_t rng;

static int setup_once(void)
{
    static int done;
    if (done) return ca_crt != NULL;
    done = 1;
    plait_pki_config_default(&cfg);
    plait_drbg_init(&rng);
    static const uint8_t seed[] = "fuzz_csr: not a secret";
    if (plait_drbg_seed_deterministic(&rng, seed, sizeof(seed)) != 0) return 0;
    if (plait_pki_ca_create(&cfg, &rng, &ca_crt, &ca_key) != 0) return 0;
    return 1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!setup_once()) abort();
    char *crt = NULL;
    plait_pki_cert_info_t info;
    if (plait_pki_issue_from_csr(&cfg, ca_crt, ca_key, data, size, NULL, &rng, &crt, &info) == 0) {
        const char *reason = NULL;
        /* Whatever was issued must verify as a client certificate of this CA. */
        if (plait_pki_verify(ca_crt, crt, 1, &reason) != 0) abort();
    }
    plait_pki_free_pem(crt);
    if (plait_pki_cert_info(data, size, &info) != 0) return 0;
    return 0;
}
