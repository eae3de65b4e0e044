/*
 * agent_setup.c: the agent's configuration (defaults, checks, the backoff and
 * come-back delays) and its lifecycle: create, destroy, stop (client.h).
 *
 * Contract:
 *   - plait_agent_create() checks everything it can once, before the first
 *     round: the config, the model and tokenizer, the certificates and key
 *     (the key PEM is wiped as soon as the TLS config holds it), the device
 *     store, and the state directory (agent_state.c). A failure there returns
 *     an error naming the file; nothing is left allocated.
 *   - The config's strings are copied: the caller's may go away.
 *   - plait_agent_stop() is async-signal-safe (an atomic store and a write to
 *     the wake pipe).
 *   - The DRBG is always seeded from the system (secure-aggregation keys come
 *     from it); cfg->seed only makes sampling, rounding and jitter replayable.
 */
#include "agent_int.h"

#include "plait/client.h"
#include "plait/crypto.h"
#include "plait/log.h"
#include "plait/model.h"
#include "plait/pki.h"
#include "plait/rng.h"
#include "plait/store.h"
#include "plait/tls.h"
#include "plait/tok.h"
#include "plait/train.h"
#include "plait/wire.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char *dup_str(const char *s)
{
    if (!s) return NULL;
    size_t n = strlen(s) + 1;
    char *d = malloc(n);
    if (d) memcpy(d, s, n);
    return d;
}

/* ------------------------------------------------------------------ config */

void plait_agent_config_default(plait_agent_config_t *cfg)
{
    memset(cfg, 0, sizeof(*cfg));
    cfg->server_port = 7443;
    cfg->threads = 1;
    cfg->min_records = 16;
    cfg->max_local_steps = 10000;
    cfg->max_batch_tokens = 65536;
    cfg->require_secure_agg = 1;
    cfg->min_noise_multiplier = 0;
    cfg->max_clip_norm = 0;
    cfg->connect_timeout_ms = 10000;
    cfg->io_timeout_ms = 60000;
    cfg->keepalive_ms = 30000;
    cfg->backoff_initial_ms = 1000;
    cfg->backoff_max_ms = 300000;
    cfg->backoff_jitter = 0.5;
    cfg->come_back_jitter = 0.5;
    cfg->rejoin_ms = 60000;
    cfg->not_eligible_ms = 60000;
    cfg->daemon = 0;
    cfg->max_attempts = 5;
    cfg->struct_size = sizeof(*cfg); /* the layout this app was compiled against */
}

int plait_agent_config_validate(const plait_agent_config_t *c)
{
    if (!c) return plait_fail(PLAIT_EINVAL, "agent config: NULL");
    if (c->struct_size != sizeof(*c))
        return plait_fail(PLAIT_EINVAL, "agent config: struct_size %zu is not this library's %zu (fill the config with "
                                        "plait_agent_config_default() and rebuild against this client.h)",
                          c->struct_size, sizeof(*c));
    const struct {
        const char *name;
        const char *v;
    } req[] = {{"server_host", c->server_host}, {"ca_path", c->ca_path},
               {"cert_path", c->cert_path},     {"key_path", c->key_path},
               {"model_path", c->model_path},   {"tokenizer_path", c->tokenizer_path},
               {"store_path", c->store_path},   {"state_dir", c->state_dir}};
    for (size_t i = 0; i < sizeof(req) / sizeof(req[0]); i++)
        if ((!req[i].v || !*req[i].v) && !(c->load_pem && (i >= 1 && i <= 3))) /* a keystore replaces the PEM paths */
            return plait_fail(PLAIT_EINVAL, "agent config: %s is required", req[i].name);
    if (strlen(c->server_host) > 253)
        return plait_fail(PLAIT_EINVAL, "agent config: server_host longer than 253 bytes");
    if (c->server_name && !*c->server_name)
        return plait_fail(PLAIT_EINVAL, "agent config: server_name is empty");
    if (c->server_port < 1 || c->server_port > 65535)
        return plait_fail(PLAIT_EINVAL, "agent config: server_port %d outside 1..65535",
                          c->server_port);
    if (c->base_bf16 != 0 && c->base_bf16 != 1)
        return plait_fail(PLAIT_EINVAL, "agent config: base_bf16 %d is not 0 or 1", c->base_bf16);
    if (c->threads < 1 || c->threads > 256)
        return plait_fail(PLAIT_EINVAL, "agent config: threads %d outside 1..256", c->threads);
    if (c->min_records < 1)
        return plait_fail(PLAIT_EINVAL, "agent config: min_records must be >= 1");
    if (c->max_local_steps < 1)
        return plait_fail(PLAIT_EINVAL, "agent config: max_local_steps must be >= 1");
    if (c->max_batch_tokens < 1)
        return plait_fail(PLAIT_EINVAL, "agent config: max_batch_tokens must be >= 1");
    if (c->require_secure_agg != 0 && c->require_secure_agg != 1)
        return plait_fail(PLAIT_EINVAL, "agent config: require_secure_agg must be 0 or 1");
    if (!(isfinite(c->min_noise_multiplier) && c->min_noise_multiplier >= 0))
        return plait_fail(PLAIT_EINVAL, "agent config: min_noise_multiplier must be finite and >= 0");
    if (!(isfinite(c->max_clip_norm) && c->max_clip_norm >= 0))
        return plait_fail(PLAIT_EINVAL, "agent config: max_clip_norm must be finite and >= 0");
    if (c->connect_timeout_ms < 1)
        return plait_fail(PLAIT_EINVAL, "agent config: connect_timeout_ms must be >= 1");
    if (c->io_timeout_ms < 1)
        return plait_fail(PLAIT_EINVAL, "agent config: io_timeout_ms must be >= 1");
    if (c->keepalive_ms < 1000 || c->keepalive_ms > 60000)
        return plait_fail(
            PLAIT_EINVAL,
            "agent config: keepalive_ms %u outside 1000..60000 (the aggregator's idle "
            "limit is 90 s)",
            c->keepalive_ms);
    if (c->backoff_initial_ms < 1 || c->backoff_initial_ms > c->backoff_max_ms)
        return plait_fail(PLAIT_EINVAL,
                          "agent config: backoff_initial_ms %u must be in 1..backoff_max_ms (%u)",
                          c->backoff_initial_ms, c->backoff_max_ms);
    if (!(c->backoff_jitter >= 0.0 && c->backoff_jitter <= 1.0))
        return plait_fail(PLAIT_EINVAL, "agent config: backoff_jitter outside 0..1");
    if (!(c->come_back_jitter >= 0.0 && c->come_back_jitter <= 1.0))
        return plait_fail(PLAIT_EINVAL, "agent config: come_back_jitter outside 0..1");
    if (c->daemon != 0 && c->daemon != 1)
        return plait_fail(PLAIT_EINVAL, "agent config: daemon must be 0 or 1");
    if (c->max_attempts < 1)
        return plait_fail(PLAIT_EINVAL, "agent config: max_attempts must be >= 1");
    return 0;
}

uint64_t plait_agent_backoff_ms(const plait_agent_config_t *cfg, uint32_t attempt, double u)
{
    double max = (double)cfg->backoff_max_ms, base = (double)cfg->backoff_initial_ms;
    for (uint32_t i = 0; i < attempt && base < max; i++)
        base *= 2.0;
    if (base > max) base = max;
    if (!(u >= 0.0)) u = 0.0;
    if (u >= 1.0) u = 0.999999;
    double lo = base * (1.0 - cfg->backoff_jitter);
    return (uint64_t)(lo + (base - lo) * u);
}

uint64_t plait_agent_come_back_ms(const plait_agent_config_t *cfg, uint32_t retry_ms, double u)
{
    if (!(u >= 0.0)) u = 0.0;
    if (u >= 1.0) u = 0.999999;
    return (uint64_t)retry_ms + (uint64_t)((double)retry_ms * cfg->come_back_jitter * u);
}

void plait__agent_set_chunk_words(plait_agent_t *a, size_t words)
{
    size_t max = a->lim.max_chunk_bytes / 4;
    a->chunk_words = words == 0 ? 1 : (words > max ? max : words);
}

/* ------------------------------------------------------------ create/destroy */

#define PEM_CAP ((size_t)64 << 10)

/* A PEM object from the app's keystore callback (client.h plait_agent_pem_cb), NUL-terminated and
 * owned like plait_pki_read_file()'s (free with plait_pki_free_pem, which wipes it). */
static int keystore_pem(const plait_agent_config_t *cfg, plait_agent_pem_t which, const char *what, char **out)
{
    *out = NULL;
    char *buf = calloc(1, PEM_CAP + 1);
    if (!buf) return plait_fail(PLAIT_ENOMEM, "%s from the keystore", what);
    size_t len = 0;
    int rc = cfg->load_pem(cfg->pem_ud, which, buf, PEM_CAP, &len);
    if (rc == 0 && (len == 0 || len > PEM_CAP)) rc = PLAIT_EPROTO;
    if (rc == 0 && memchr(buf, '\0', len) != NULL) rc = PLAIT_EPROTO;
    if (rc != 0) {
        plait_zeroize(buf, PEM_CAP);
        free(buf);
        if (rc > 0) rc = PLAIT_EINTERNAL;
        return plait_fail(rc, "%s from the keystore: %s", what,
                          rc == PLAIT_EPROTO ? "the callback returned no PEM text (empty, too long or with a NUL)"
                                             : plait_strerror(rc));
    }
    buf[len] = '\0';
    *out = buf;
    return 0;
}

int plait__agent_load_pem(const char *path, const char *what, char **out)
{
    int rc = plait_pki_read_file(path, out);
    if (rc != 0) return plait_fail(rc, "%s %s: %s", what, path, plait_errmsg());
    return 0;
}

/* "store PATH: <why>", without repeating the store's own "store: " prefix. */
int plait__agent_store_fail(const plait_agent_t *a, int rc)
{
    const char *m = plait_errmsg();
    if (strncmp(m, "store: ", 7) == 0) m += 7;
    return plait_fail(rc, "store %s: %s", a->store_path, m);
}

int plait__agent_create(plait_agent_t **out, const plait_agent_config_t *cfg)
{
    if (!out) return plait_fail(PLAIT_EINVAL, "agent: NULL out");
    *out = NULL;
    int rc = plait_agent_config_validate(cfg);
    if (rc != 0) return rc;
    plait_agent_t *a = calloc(1, sizeof(*a));
    if (!a) return plait_fail(PLAIT_ENOMEM, "agent");
    a->cfg = *cfg;
    a->wake[0] = a->wake[1] = -1;
    plait_model_init(&a->model);
    plait_tok_init(&a->tok);
    plait_drbg_init(&a->drbg);
    atomic_init(&a->stop, 0);
    plait_wire_limits_default(&a->lim);
    a->chunk_words = a->lim.max_chunk_bytes / 4 < 65536 ? a->lim.max_chunk_bytes / 4 : 65536;
    char *ca = NULL, *crt = NULL, *key = NULL;

    a->host = dup_str(cfg->server_host);
    a->name = dup_str(cfg->server_name ? cfg->server_name : cfg->server_host);
    a->ca_path = dup_str(cfg->load_pem ? "(keystore)" : cfg->ca_path);
    a->cert_path = dup_str(cfg->load_pem ? "(keystore)" : cfg->cert_path);
    a->key_path = dup_str(cfg->load_pem ? "(keystore)" : cfg->key_path);
    a->model_path = dup_str(cfg->model_path);
    a->tok_path = dup_str(cfg->tokenizer_path);
    a->store_path = dup_str(cfg->store_path);
    a->state_dir = dup_str(cfg->state_dir);
    if (!a->host || !a->name || !a->ca_path || !a->cert_path || !a->key_path || !a->model_path ||
        !a->tok_path || !a->store_path || !a->state_dir) {
        rc = plait_fail(PLAIT_ENOMEM, "agent config strings");
        goto fail;
    }
    a->cfg.server_host = a->host;
    a->cfg.server_name = a->name;
    a->cfg.ca_path = a->ca_path;
    a->cfg.cert_path = a->cert_path;
    a->cfg.key_path = a->key_path;
    a->cfg.model_path = a->model_path;
    a->cfg.tokenizer_path = a->tok_path;
    a->cfg.store_path = a->store_path;
    a->cfg.state_dir = a->state_dir;

    if (pipe(a->wake) != 0) {
        rc = plait_fail(PLAIT_EIO, "agent: pipe: %s", strerror(errno));
        goto fail;
    }
    for (int i = 0; i < 2; i++) {
        fcntl(a->wake[i], F_SETFL, fcntl(a->wake[i], F_GETFL) | O_NONBLOCK);
        fcntl(a->wake[i], F_SETFD, FD_CLOEXEC);
    }
    if ((rc = plait_model_load(&a->model, a->model_path)) != 0) goto fail;
    if ((rc = plait_tok_load(&a->tok, a->tok_path, a->model.cfg.vocab_size)) != 0) goto fail;
    if (cfg->threads > 1 && (rc = plait_pool_create(&a->pool, cfg->threads)) != 0) goto fail;

    if (cfg->load_pem) {
        if ((rc = keystore_pem(cfg, PLAIT_AGENT_PEM_CA, "CA certificate", &ca)) != 0 ||
            (rc = keystore_pem(cfg, PLAIT_AGENT_PEM_CERT, "device certificate", &crt)) != 0 ||
            (rc = keystore_pem(cfg, PLAIT_AGENT_PEM_KEY, "device key", &key)) != 0)
            goto fail;
    } else {
        if ((rc = plait__agent_load_pem(a->ca_path, "CA certificate", &ca)) != 0) goto fail;
        if ((rc = plait__agent_load_pem(a->cert_path, "device certificate", &crt)) != 0) goto fail;
        if ((rc = plait__agent_load_pem(a->key_path, "device key", &key)) != 0) goto fail;
    }
    plait_pki_cert_info_t info;
    if ((rc = plait_pki_cert_info((const uint8_t *)crt, strlen(crt), &info)) != 0) {
        rc = plait_fail(rc, "device certificate %s: %s", a->cert_path, plait_errmsg());
        goto fail;
    }
    snprintf(a->device_id, sizeof(a->device_id), "%s",
             info.device_id[0] ? info.device_id : "device");
    if ((rc = plait_tls_config_client(&a->tls, ca, crt, key, a->name)) != 0) {
        rc = plait_fail(rc, "TLS client config (%s, %s): %s", a->cert_path, a->key_path,
                        plait_errmsg());
        goto fail;
    }
    /* A returning device resumes its TLS session (RFC 5077): no ECDHE and no
     * certificate signatures on either side; the server re-checks revocation. */
    if ((rc = plait_tls_config_tickets(a->tls, 0)) != 0) goto fail;
    plait_pki_free_pem(ca);
    plait_pki_free_pem(crt);
    plait_pki_free_pem(key); /* wiped */
    ca = crt = key = NULL;

    {
        /* A store that cannot be opened fails here, once, not after every retry of a round. */
        int64_t n0 = 0;
        if ((rc = plait__agent_check_eligible(a, &n0)) != 0) {
            rc = plait__agent_store_fail(a, rc);
            goto fail;
        }
    }
    if ((rc = plait__agent_state_open(a)) != 0) goto fail;

    /* The DRBG is always seeded from the system: secure-aggregation keys and shares come from it
     * even when cfg->seed makes sampling, rounding and jitter replayable. */
    static const uint8_t pers[] = "plait-agent";
    if ((rc = plait_drbg_seed(&a->drbg, pers, sizeof(pers) - 1)) != 0) goto fail;
    if (cfg->seed != 0) {
        plait_rng_seed_u64(&a->jitter, cfg->seed, 0x6a1773ull);
    } else {
        if ((rc = plait_rng_seed_drbg(&a->jitter, &a->drbg)) != 0) goto fail;
    }
    PLAIT_LOG(PLAIT_LOG_INFO,
              "agent %s: ready (model %s, last round uploaded %llu, acknowledged %llu)",
              a->device_id, a->model_path, (unsigned long long)a->state.last_uploaded,
              (unsigned long long)a->state.last_acked);
    *out = a;
    return 0;
fail:
    plait_pki_free_pem(ca);
    plait_pki_free_pem(crt);
    plait_pki_free_pem(key);
    plait_agent_destroy(a);
    return rc;
}

void plait_agent_destroy(plait_agent_t *a)
{
    if (!a) return;
    plait_tls_config_free(a->tls); /* wipes the private key */
    plait_pool_destroy(a->pool);
    plait_tok_free(&a->tok);
    plait_model_free(&a->model);
    plait_drbg_free(&a->drbg);
    plait_rng_wipe(&a->jitter);
    for (int i = 0; i < 2; i++)
        if (a->wake[i] >= 0) close(a->wake[i]);
    free(a->host);
    free(a->name);
    free(a->ca_path);
    free(a->cert_path);
    free(a->key_path);
    free(a->model_path);
    free(a->tok_path);
    free(a->store_path);
    free(a->state_dir);
    free(a);
}

void plait_agent_stop(plait_agent_t *a)
{
    if (!a) return;
    atomic_store(&a->stop, 1);
    char c = 's';
    ssize_t w = write(a->wake[1], &c, 1); /* async-signal-safe; a full pipe already wakes */
    (void)w;
}

void plait_agent_reset_stop(plait_agent_t *a)
{
    if (!a) return;
    atomic_store(&a->stop, 0);
}

const plait_agent_result_t *plait_agent_last_result(const plait_agent_t *a)
{
    return &a->last;
}

uint32_t plait_agent_rounds_acked(const plait_agent_t *a)
{
    return a->rounds_acked;
}

int plait__agent_check_eligible(plait_agent_t *a, int64_t *n_train)
{
    plait_store_t *st = NULL;
    plait_store_config_t sc;
    plait_store_config_default(&sc);
    sc.path = a->store_path;
    sc.create = false;
    int rc = plait_store_open(&st, &sc);
    if (rc == 0) rc = plait_store_count_split(st, PLAIT_STORE_TRAIN, n_train);
    plait_store_close(st);
    return rc;
}
