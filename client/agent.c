/*
 * agent.c: the device agent: one federated conversation at a time over a
 * blocking-style TCP + mutual-TLS connection, and the daemon loop around it.
 *
 * This is the one client file that combines everything (STYLE.md §2): the
 * engine (model, tokenizer, LoRA, trainer, corpus), the device store, the
 * update pipeline (update.h), the wire format (wire.h) and TLS (tls.h). It
 * owns no third-party header: sockets are POSIX, TLS is lib/tls.c driven over
 * memory buffers, frames are wire.h.
 *
 * Invariants:
 *   - Every wait is bounded: poll(2) on the socket and on the agent's wake
 *     pipe with a deadline (connect/handshake, each frame, the round's
 *     deadline, keepalive). plait_agent_stop() writes the wake pipe, so a
 *     blocked agent returns PLAIT_ECANCELED at once.
 *   - Training runs on a worker thread (STYLE.md §9) while this thread keeps
 *     the connection alive (Ping at least every keepalive_ms, Pong to Pings)
 *     and watches the deadline. Only the worker touches the trainer and the
 *     corpus; the agent thread reads two atomics (steps done, done flag).
 *   - What leaves the device is the Hello and the quantized words built by
 *     plait__agent_make_update(); the float difference is wiped there, the
 *     corpus (private tokens) is wiped by plait_corpus_free, the noise stream
 *     by plait_rng_wipe, the key PEM by plait_pki_free_pem. Logs carry round
 *     ids, sizes, counts and error names only (STYLE.md §8).
 *   - Crash safety: the words are written to DIR/pending.upd before the first
 *     chunk is sent, DIR/state records the last uploaded and acknowledged
 *     rounds (atomic renames), and plait__agent_task_decision() refuses to
 *     upload an acknowledged round again or to compute a second update for a
 *     round whose words were stored.
 *
 * Workload: a conversation every few minutes to hours; one adapter of some
 * KiB to MiB down, one update span up. Nothing here is performance-critical
 * except training, which is the engine's.
 */
#include "agent_int.h"

#include "plait/adapter.h"
#include "plait/personal.h"
#include "plait/client.h"
#include "plait/crypto.h"
#include "plait/data.h"
#include "plait/log.h"
#include "plait/lora.h"
#include "plait/model.h"
#include "plait/pki.h"
#include "plait/rng.h"
#include "plait/store.h"
#include "plait/tls.h"
#include "plait/tok.h"
#include "plait/train.h"
#include "plait/update.h"
#include "plait/wire.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#define STATE_MAGIC "plait-agent-state 1"
#define PENDING_MAGIC "PLAITUPD"
#define PENDING_VERSION 1u
#define CLIENT_VERSION "plait-agent/" PLAIT_VERSION_STRING
#define AGENT_CAPS                                                                                 \
    (PLAIT_CAP_SECURE_AGG | PLAIT_CAP_LOCAL_DP | PLAIT_CAP_FFA | PLAIT_CAP_FEDIT | PLAIT_CAP_FEDSA |   \
     PLAIT_CAP_RESUME | PLAIT_CAP_SECAGG)
#define IO_CHUNK (16 * 1024)
#define PROGRESS_MS 1000u

struct plait_agent_s {
    plait_agent_config_t cfg; /* strings point at the owned copies below */
    char *host, *name, *ca_path, *cert_path, *key_path, *model_path, *tok_path, *store_path,
        *state_dir;
    plait_model_t model;
    plait_tok_t tok;
    plait_pool_t *pool;
    plait_tls_config_t *tls;
    char device_id[PLAIT_PKI_ID_MAX + 1];
    plait_wire_limits_t lim;
    size_t chunk_words;
    plait__agent_state_t state;
    plait_drbg_t drbg;  /* system randomness (always seeded: secure-aggregation keys) */
    plait_rng_t jitter; /* jitter of delays (not secret, but seeded from the DRBG anyway) */
    int wake[2];        /* self-pipe: stop and worker completion */
    atomic_int stop;
    int fatal;          /* the last failure cannot be fixed by retrying (the store is unusable) */
    plait_agent_result_t last;
    uint32_t rounds_acked;
    uint64_t ping_nonce;
};

/* ------------------------------------------------------------ small helpers */

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static char *dup_str(const char *s)
{
    if (!s) return NULL;
    size_t n = strlen(s) + 1;
    char *d = malloc(n);
    if (d) memcpy(d, s, n);
    return d;
}

static void emit(plait_agent_t *a, plait_agent_event_type_t type, uint64_t round, int rc)
{
    if (!a->cfg.on_event) return;
    plait_agent_event_t ev;
    memset(&ev, 0, sizeof(ev));
    ev.type = type;
    ev.round_id = round;
    ev.rc = rc;
    a->cfg.on_event(a->cfg.event_ud, &ev);
}

static void emit_ev(plait_agent_t *a, const plait_agent_event_t *ev)
{
    if (a->cfg.on_event) a->cfg.on_event(a->cfg.event_ud, ev);
}

static int path_join(char *out, size_t cap, const char *dir, const char *name)
{
    int n = snprintf(out, cap, "%s/%s", dir, name);
    if (n < 0 || (size_t)n >= cap)
        return plait_fail(PLAIT_EINVAL, "state path too long: %.80s/%s", dir, name);
    return 0;
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
}

int plait_agent_config_validate(const plait_agent_config_t *c)
{
    if (!c) return plait_fail(PLAIT_EINVAL, "agent config: NULL");
    const struct {
        const char *name;
        const char *v;
    } req[] = {{"server_host", c->server_host}, {"ca_path", c->ca_path},
               {"cert_path", c->cert_path},     {"key_path", c->key_path},
               {"model_path", c->model_path},   {"tokenizer_path", c->tokenizer_path},
               {"store_path", c->store_path},   {"state_dir", c->state_dir}};
    for (size_t i = 0; i < sizeof(req) / sizeof(req[0]); i++)
        if (!req[i].v || !*req[i].v)
            return plait_fail(PLAIT_EINVAL, "agent config: %s is required", req[i].name);
    if (strlen(c->server_host) > 253)
        return plait_fail(PLAIT_EINVAL, "agent config: server_host longer than 253 bytes");
    if (c->server_name && !*c->server_name)
        return plait_fail(PLAIT_EINVAL, "agent config: server_name is empty");
    if (c->server_port < 1 || c->server_port > 65535)
        return plait_fail(PLAIT_EINVAL, "agent config: server_port %d outside 1..65535",
                          c->server_port);
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

/* ---------------------------------------------------------- update pipeline */

int plait__agent_make_update(const plait_lora_t *global, const plait_lora_t *local,
                             plait_lora_mode_t mode, double clip_norm, double noise_stddev,
                             const plait_quant_config_t *qc, double weight, plait_rng_t *rng,
                             uint32_t *words, size_t n_words, plait_clip_info_t *ci)
{
    if (!global || !local || !qc || !rng || !words)
        return plait_fail(PLAIT_EINVAL, "update: NULL argument");
    if (global->n_params != local->n_params || global->n_a != local->n_a)
        return plait_fail(PLAIT_EINVAL, "update: local and global adapters differ in shape");
    if (!(weight >= 0.0 && weight <= 1.0))
        return plait_fail(PLAIT_EINVAL, "update: weight outside [0, 1]");
    size_t off, len;
    int rc = plait_update_span(global, mode, &off, &len);
    if (rc != 0) return rc;
    if (n_words != len + 1 && n_words != len + 2)
        return plait_fail(PLAIT_EMISMATCH,
                          "update: %zu words asked for a span of %zu (+1 weight word, +1 clip bit)",
                          n_words, len);
    float *upd = malloc(len * sizeof(float));
    if (!upd) return plait_fail(PLAIT_ENOMEM, "update: %zu floats", len);
    plait_clip_info_t info;
    memset(&info, 0, sizeof(info));
    if ((rc = plait_update_diff(upd, local->params + off, global->params + off, len)) != 0)
        goto exit;
    if ((rc = plait_update_clip_l2(upd, len, clip_norm, &info)) != 0) goto exit;
    if (noise_stddev > 0.0 && (rc = plait_update_add_noise(upd, len, noise_stddev, rng)) != 0)
        goto exit;
    for (size_t i = 0; i < len; i++)
        upd[i] = (float)((double)upd[i] * weight);
    if ((rc = plait_quant_encode(qc, upd, len, rng, words)) != 0) goto exit;
    rc = plait_quant_encode_weight(qc, weight, rng, &words[len]);
    /* Adaptive clipping: the bit "norm <= clip", summed (masked, under secure aggregation) like
     * the weight word; 0 and 1 encode exactly. */
    if (rc == 0 && n_words == len + 2)
        rc = plait_quant_encode_weight(qc, info.clipped ? 0.0 : 1.0, rng, &words[len + 1]);
exit:
    plait_zeroize(upd, len * sizeof(float)); /* unclipped (then noised) data is secret */
    free(upd);
    if (rc != 0) memset(words, 0, n_words * sizeof(uint32_t));
    if (ci) *ci = info;
    return rc;
}

/* ------------------------------------------------------------- state files */

int plait__agent_atomic_write(const char *dir, const char *name, const uint8_t *buf, size_t len)
{
    char tmp[4096], dst[4096];
    int rc;
    if ((rc = path_join(dst, sizeof(dst), dir, name)) != 0) return rc;
    int n = snprintf(tmp, sizeof(tmp), "%s/.%s.tmp", dir, name);
    if (n < 0 || (size_t)n >= sizeof(tmp)) return plait_fail(PLAIT_EINVAL, "state path too long");
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) return plait_fail(PLAIT_EIO, "%s: cannot create: %s", tmp, strerror(errno));
    size_t off = 0;
    while (off < len) {
        ssize_t w = write(fd, buf + off, len - off);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) {
            int e = errno;
            close(fd);
            unlink(tmp);
            return plait_fail(PLAIT_EIO, "%s: write: %s", tmp, strerror(e));
        }
        off += (size_t)w;
    }
    if (fsync(fd) != 0) {
        int e = errno;
        close(fd);
        unlink(tmp);
        return plait_fail(PLAIT_EIO, "%s: fsync: %s", tmp, strerror(e));
    }
    close(fd);
    if (rename(tmp, dst) != 0) {
        int e = errno;
        unlink(tmp);
        return plait_fail(PLAIT_EIO, "%s: rename: %s", dst, strerror(e));
    }
    /* The rename is durable only once the directory entry is. */
    int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
        int r = fsync(dfd);
        close(dfd);
        if (r != 0) return plait_fail(PLAIT_EIO, "%s: fsync of the directory failed", dir);
    }
    return 0;
}

/* Read a whole small file (at most max bytes). ENOENT when missing. */
static int read_small(const char *path, size_t max, uint8_t **out, size_t *len)
{
    *out = NULL;
    *len = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK); /* a FIFO is refused below, not waited on */
    if (fd < 0) {
        if (errno == ENOENT) return PLAIT_ENOENT;
        return plait_fail(PLAIT_EIO, "%s: cannot open: %s", path, strerror(errno));
    }
    struct stat sb;
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        close(fd);
        return plait_fail(PLAIT_EIO, "%s: not a regular file", path);
    }
    if ((uint64_t)sb.st_size > (uint64_t)max) {
        close(fd);
        return plait_fail(PLAIT_ETOOBIG, "%s: %lld bytes, more than %zu", path,
                          (long long)sb.st_size, max);
    }
    size_t n = (size_t)sb.st_size;
    uint8_t *b = malloc(n + 1);
    if (!b) {
        close(fd);
        return plait_fail(PLAIT_ENOMEM, "%s: %zu bytes", path, n);
    }
    size_t off = 0;
    while (off < n) {
        ssize_t r = read(fd, b + off, n - off);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) break;
        off += (size_t)r;
    }
    close(fd);
    if (off != n) {
        free(b);
        return plait_fail(PLAIT_EIO, "%s: short read", path);
    }
    b[n] = 0;
    *out = b;
    *len = n;
    return 0;
}

/* Parse "key <u64>\n" at *p exactly. */
static int parse_field(const char **p, const char *key, uint64_t *v)
{
    size_t kl = strlen(key);
    if (strncmp(*p, key, kl) != 0 || (*p)[kl] != ' ') return -1;
    const char *s = *p + kl + 1;
    if (*s < '0' || *s > '9') return -1;
    uint64_t x = 0;
    int digits = 0;
    while (*s >= '0' && *s <= '9') {
        if (++digits > 19) return -1;
        x = x * 10u + (uint64_t)(*s - '0');
        s++;
    }
    if (*s != '\n') return -1;
    *v = x;
    *p = s + 1;
    return 0;
}

int plait__agent_state_load(const char *dir, plait__agent_state_t *st)
{
    char path[4096];
    int rc;
    memset(st, 0, sizeof(*st));
    if ((rc = path_join(path, sizeof(path), dir, STATE_FILE)) != 0) return rc;
    uint8_t *buf;
    size_t len;
    rc = read_small(path, 4096, &buf, &len);
    if (rc == PLAIT_ENOENT) return 0;
    if (rc != 0) return rc;
    const char *p = (const char *)buf;
    size_t ml = strlen(STATE_MAGIC);
    rc = 0;
    if (len != strlen(p) || strncmp(p, STATE_MAGIC, ml) != 0 || p[ml] != '\n') rc = -1;
    if (rc == 0) p += ml + 1;
    if (rc == 0) rc = parse_field(&p, "last_uploaded", &st->last_uploaded);
    if (rc == 0) rc = parse_field(&p, "last_acked", &st->last_acked);
    if (rc == 0 && *p != '\0') rc = -1;
    free(buf);
    if (rc != 0) {
        memset(st, 0, sizeof(*st));
        return plait_fail(PLAIT_EPROTO, "%s: not a plait agent state file (refusing to guess)",
                          path);
    }
    return 0;
}

int plait__agent_state_save(const char *dir, const plait__agent_state_t *st)
{
    char buf[128];
    int n = snprintf(buf, sizeof(buf), STATE_MAGIC "\nlast_uploaded %llu\nlast_acked %llu\n",
                     (unsigned long long)st->last_uploaded, (unsigned long long)st->last_acked);
    return plait__agent_atomic_write(dir, STATE_FILE, (const uint8_t *)buf, (size_t)n);
}

static void put_u64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static uint64_t get_u64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v |= (uint64_t)p[i] << (8 * i);
    return v;
}

#define PENDING_HEADER (8 + 4 + 8 * 4)

int plait__agent_pending_save(const char *dir, const plait__agent_pending_t *p)
{
    if (!p || !p->words || p->n_words == 0)
        return plait_fail(PLAIT_EINVAL, "pending update: empty");
    size_t len = PENDING_HEADER + p->n_words * 4 + 32;
    uint8_t *b = malloc(len);
    if (!b) return plait_fail(PLAIT_ENOMEM, "pending update: %zu bytes", len);
    memcpy(b, PENDING_MAGIC, 8);
    for (int i = 0; i < 4; i++)
        b[8 + i] = (uint8_t)(PENDING_VERSION >> (8 * i));
    put_u64(b + 12, p->round_id);
    put_u64(b + 20, p->adapter_version);
    put_u64(b + 28, p->num_examples);
    put_u64(b + 36, (uint64_t)p->n_words);
    for (size_t i = 0; i < p->n_words; i++)
        for (int k = 0; k < 4; k++)
            b[PENDING_HEADER + 4 * i + (size_t)k] = (uint8_t)(p->words[i] >> (8 * k));
    plait_sha256(b, len - 32, b + len - 32);
    int rc = plait__agent_atomic_write(dir, PENDING_FILE, b, len);
    free(b);
    return rc;
}

int plait__agent_pending_load(const char *dir, plait__agent_pending_t *p)
{
    char path[4096];
    int rc;
    memset(p, 0, sizeof(*p));
    if ((rc = path_join(path, sizeof(path), dir, PENDING_FILE)) != 0) return rc;
    uint8_t *b;
    size_t len;
    /* The largest update the wire allows, plus header and hash. */
    size_t max = PENDING_HEADER + (size_t)((1u << 26) + 1) * 4 + 32;
    if ((rc = read_small(path, max, &b, &len)) != 0) return rc == PLAIT_ETOOBIG ? PLAIT_EPROTO : rc;
    rc = PLAIT_EPROTO;
    uint8_t h[32];
    if (len < PENDING_HEADER + 4 + 32 || memcmp(b, PENDING_MAGIC, 8) != 0) goto bad;
    uint32_t ver =
        (uint32_t)b[8] | (uint32_t)b[9] << 8 | (uint32_t)b[10] << 16 | (uint32_t)b[11] << 24;
    if (ver != PENDING_VERSION) goto bad;
    uint64_t n = get_u64(b + 36);
    if (n == 0 || n > (uint64_t)(len - PENDING_HEADER - 32) / 4 ||
        PENDING_HEADER + n * 4 + 32 != len)
        goto bad;
    plait_sha256(b, len - 32, h);
    if (plait_ct_memcmp(h, b + len - 32, 32) != 0) goto bad;
    p->words = malloc((size_t)n * sizeof(uint32_t));
    if (!p->words) {
        free(b);
        return plait_fail(PLAIT_ENOMEM, "pending update: %llu words", (unsigned long long)n);
    }
    p->round_id = get_u64(b + 12);
    p->adapter_version = get_u64(b + 20);
    p->num_examples = get_u64(b + 28);
    p->n_words = (size_t)n;
    for (size_t i = 0; i < p->n_words; i++) {
        const uint8_t *w = b + PENDING_HEADER + 4 * i;
        p->words[i] =
            (uint32_t)w[0] | (uint32_t)w[1] << 8 | (uint32_t)w[2] << 16 | (uint32_t)w[3] << 24;
    }
    free(b);
    if (p->round_id == 0 || p->num_examples == 0) {
        plait__agent_pending_free(p);
        return plait_fail(PLAIT_EPROTO, "%s: round or example count is 0", path);
    }
    return 0;
bad:
    free(b);
    return plait_fail(rc, "%s: torn or foreign pending update file", path);
}

int plait__agent_pending_remove(const char *dir)
{
    char path[4096];
    int rc;
    if ((rc = path_join(path, sizeof(path), dir, PENDING_FILE)) != 0) return rc;
    if (unlink(path) != 0 && errno != ENOENT)
        return plait_fail(PLAIT_EIO, "%s: unlink: %s", path, strerror(errno));
    return 0;
}

void plait__agent_pending_free(plait__agent_pending_t *p)
{
    if (!p) return;
    free(p->words);
    memset(p, 0, sizeof(*p));
}

plait__task_decision_t plait__agent_task_decision(const plait__agent_state_t *st,
                                                  uint64_t pending_round, uint64_t round_id)
{
    if (round_id <= st->last_acked) return PLAIT__TASK_STALE;
    if (pending_round != 0 && round_id == pending_round) return PLAIT__TASK_RESEND;
    uint64_t hi = st->last_uploaded > pending_round ? st->last_uploaded : pending_round;
    if (round_id <= hi) return PLAIT__TASK_STALE;
    return PLAIT__TASK_TRAIN;
}

void plait__agent_set_chunk_words(plait_agent_t *a, size_t words)
{
    size_t max = a->lim.max_chunk_bytes / 4;
    a->chunk_words = words == 0 ? 1 : (words > max ? max : words);
}

/* ------------------------------------------------------------ create/destroy */

static int load_pem(const char *path, const char *what, char **out)
{
    int rc = plait_pki_read_file(path, out);
    if (rc != 0) return plait_fail(rc, "%s %s: %s", what, path, plait_errmsg());
    return 0;
}

static int check_eligible(plait_agent_t *a, int64_t *n_train);

/* "store PATH: <why>", without repeating the store's own "store: " prefix. */
static int store_fail(const plait_agent_t *a, int rc)
{
    const char *m = plait_errmsg();
    if (strncmp(m, "store: ", 7) == 0) m += 7;
    return plait_fail(rc, "store %s: %s", a->store_path, m);
}

int plait_agent_create(plait_agent_t **out, const plait_agent_config_t *cfg)
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
    a->ca_path = dup_str(cfg->ca_path);
    a->cert_path = dup_str(cfg->cert_path);
    a->key_path = dup_str(cfg->key_path);
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

    if ((rc = load_pem(a->ca_path, "CA certificate", &ca)) != 0) goto fail;
    if ((rc = load_pem(a->cert_path, "device certificate", &crt)) != 0) goto fail;
    if ((rc = load_pem(a->key_path, "device key", &key)) != 0) goto fail;
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
        if ((rc = check_eligible(a, &n0)) != 0) {
            rc = store_fail(a, rc);
            goto fail;
        }
    }
    if (mkdir(a->state_dir, 0700) != 0 && errno != EEXIST) {
        rc = plait_fail(PLAIT_EIO, "state dir %s: %s", a->state_dir, strerror(errno));
        goto fail;
    }
    if ((rc = plait__agent_state_load(a->state_dir, &a->state)) != 0) goto fail;
    {
        /* A crash between recording the Ack and deleting the stored words leaves words
         * for an acknowledged round: they can never be sent again, so drop them now. */
        plait__agent_pending_t p;
        int prc = plait__agent_pending_load(a->state_dir, &p);
        if ((prc == 0 && p.round_id <= a->state.last_acked) || prc == PLAIT_EPROTO) {
            PLAIT_LOG(PLAIT_LOG_INFO, "agent %s: dropping a %s stored update", a->device_id,
                      prc == 0 ? "stale" : "damaged");
            if ((rc = plait__agent_pending_remove(a->state_dir)) != 0) {
                plait__agent_pending_free(&p);
                goto fail;
            }
        }
        plait__agent_pending_free(&p);
        plait_clear_error();
    }

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

static int stopped(plait_agent_t *a)
{
    return atomic_load(&a->stop) != 0;
}

static void drain_wake(plait_agent_t *a)
{
    char buf[64];
    while (read(a->wake[0], buf, sizeof(buf)) > 0) {
    }
}

/*
 * Wait until fd is ready for events, the deadline passes, or the wake pipe
 * fires. \return 1 ready; PLAIT_EAGAIN (deadline or a wake-up: the caller
 * re-checks its state); PLAIT_ECANCELED (stop); PLAIT_EIO (poll failed).
 */
static int wait_fd(plait_agent_t *a, int fd, short events, uint64_t deadline)
{
    for (;;) {
        if (stopped(a)) return plait_fail(PLAIT_ECANCELED, "agent stopped");
        uint64_t now = now_ms();
        if (now >= deadline) return PLAIT_EAGAIN;
        uint64_t left = deadline - now;
        struct pollfd pf[2];
        nfds_t n = 0;
        if (fd >= 0) pf[n++] = (struct pollfd){.fd = fd, .events = events};
        nfds_t wi = n;
        pf[n++] = (struct pollfd){.fd = a->wake[0], .events = POLLIN};
        int r = poll(pf, n, left > 60000 ? 60000 : (int)left);
        if (r < 0) {
            if (errno == EINTR) continue;
            return plait_fail(PLAIT_EIO, "poll: %s", strerror(errno));
        }
        if (r == 0) continue;
        if (pf[wi].revents) {
            drain_wake(a);
            if (stopped(a)) return plait_fail(PLAIT_ECANCELED, "agent stopped");
            if (fd < 0 || !pf[0].revents) return PLAIT_EAGAIN;
        }
        if (fd >= 0 && pf[0].revents) return 1;
    }
}

/* Sleep up to ms, interruptible by stop. \return 0 or PLAIT_ECANCELED. */
static int sleep_ms(plait_agent_t *a, uint64_t ms)
{
    uint64_t deadline = now_ms() + ms;
    while (now_ms() < deadline) {
        int rc = wait_fd(a, -1, 0, deadline);
        if (rc != PLAIT_EAGAIN) return rc;
    }
    return 0;
}

/* -------------------------------------------------------------- connection */

typedef struct {
    plait_agent_t *a;
    int fd;
    plait_tls_t *tls;
    uint8_t *in; /* decrypted bytes not yet parsed into frames */
    size_t in_len, in_cap;
    int peer_error; /* the aggregator sent an Error (and closes) */
    int got_cbl;    /* the aggregator ended our round with a ComeBackLater (and closes) */
    uint32_t cbl_ms;
    plait_retry_reason_t cbl_reason;
} conn_t;

static void conn_init(conn_t *c, plait_agent_t *a)
{
    memset(c, 0, sizeof(*c));
    c->a = a;
    c->fd = -1;
}

static void conn_free(conn_t *c)
{
    if (c->fd >= 0) close(c->fd);
    c->fd = -1;
    plait_tls_free(c->tls);
    c->tls = NULL;
    if (c->in) plait_zeroize(c->in, c->in_cap);
    free(c->in);
    c->in = NULL;
    c->in_len = c->in_cap = 0;
}

static int tls_fail(conn_t *c, int rc, const char *what)
{
    const char *why = plait_tls_reason(c->tls);
    return plait_fail(rc, "%s: %s", what, why && *why ? why : plait_strerror(rc));
}

/* Send all pending TLS output before the deadline. */
static int conn_flush(conn_t *c, uint64_t deadline)
{
    const uint8_t *p;
    size_t n;
    while ((n = plait_tls_pending_out(c->tls, &p)) > 0) {
        ssize_t w = send(c->fd, p, n, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (w > 0) {
            plait_tls_consume_out(c->tls, (size_t)w);
            continue;
        }
        if (w < 0 && errno == EINTR) continue;
        if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            int rc = wait_fd(c->a, c->fd, POLLOUT, deadline);
            if (rc == PLAIT_EAGAIN && now_ms() >= deadline)
                return plait_fail(PLAIT_EIO, "timed out sending to the aggregator");
            if (rc < 0 && rc != PLAIT_EAGAIN) return rc;
            continue;
        }
        return plait_fail(PLAIT_EIO, "send to the aggregator: %s",
                          w < 0 ? strerror(errno) : "0 bytes");
    }
    return 0;
}

/* Receive ciphertext once. \return 0 (fed), PLAIT_EAGAIN (deadline or wake-up), or an error. */
static int conn_fill(conn_t *c, uint64_t deadline)
{
    int rc = wait_fd(c->a, c->fd, POLLIN, deadline);
    if (rc != 1) return rc;
    uint8_t buf[IO_CHUNK];
    for (;;) {
        ssize_t r = recv(c->fd, buf, sizeof(buf), MSG_DONTWAIT);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return PLAIT_EAGAIN;
        if (r == 0) return plait_fail(PLAIT_EIO, "the aggregator closed the connection");
        if (r < 0) return plait_fail(PLAIT_EIO, "recv from the aggregator: %s", strerror(errno));
        return plait_tls_feed(c->tls, buf, (size_t)r);
    }
}

static int set_nonblock(int fd)
{
    int fl = fcntl(fd, F_GETFL);
    return fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) != 0 ? -1 : 0;
}

/* TCP connect to host:port (every address getaddrinfo gives, in order) and the TLS handshake. */
static int conn_open(conn_t *c)
{
    plait_agent_t *a = c->a;
    uint64_t deadline = now_ms() + a->cfg.connect_timeout_ms;
    char port[16];
    snprintf(port, sizeof(port), "%d", a->cfg.server_port);
    struct addrinfo hints, *res = NULL;
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    /* No AI_ADDRCONFIG: on a loopback-only host it hides 127.0.0.1 for "localhost". An
     * address family the host cannot reach fails fast and the next address is tried. */
    int g = getaddrinfo(a->host, port, &hints, &res);
    if (g != 0) return plait_fail(PLAIT_EIO, "resolve %s: %s", a->host, gai_strerror(g));
    int rc = plait_fail(PLAIT_EIO, "connect %s:%s: no address", a->host, port);
    for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
        int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
        if (fd < 0) {
            rc = plait_fail(PLAIT_EIO, "socket: %s", strerror(errno));
            continue;
        }
        if (set_nonblock(fd) != 0) {
            close(fd);
            rc = plait_fail(PLAIT_EIO, "fcntl: %s", strerror(errno));
            continue;
        }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        if (connect(fd, ai->ai_addr, ai->ai_addrlen) != 0) {
            if (errno != EINPROGRESS) {
                rc = plait_fail(PLAIT_EIO, "connect %s:%s: %s", a->host, port, strerror(errno));
                close(fd);
                continue;
            }
            int w;
            do
                w = wait_fd(a, fd, POLLOUT, deadline);
            while (w == PLAIT_EAGAIN && now_ms() < deadline);
            if (w != 1) {
                close(fd);
                rc = w == PLAIT_ECANCELED
                         ? w
                         : plait_fail(PLAIT_EIO, "connect %s:%s: timed out", a->host, port);
                if (rc == PLAIT_ECANCELED) break;
                continue;
            }
            int err = 0;
            socklen_t el = sizeof(err);
            if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &el) != 0 || err != 0) {
                rc = plait_fail(PLAIT_EIO, "connect %s:%s: %s", a->host, port,
                                strerror(err ? err : errno));
                close(fd);
                continue;
            }
        }
        c->fd = fd;
        rc = 0;
        break;
    }
    freeaddrinfo(res);
    if (rc != 0) return rc;
    if ((rc = plait_tls_new(&c->tls, a->tls)) != 0) return rc;
    for (;;) {
        rc = plait_tls_handshake(c->tls);
        int frc = conn_flush(c, deadline); /* also carries our alert after a failure */
        if (rc == 0) return frc;
        if (rc != PLAIT_EAGAIN) return tls_fail(c, rc, "TLS handshake with the aggregator");
        if (frc != 0) return frc;
        int f = conn_fill(c, deadline);
        if (f == PLAIT_EAGAIN) {
            if (now_ms() >= deadline) return plait_fail(PLAIT_EIO, "TLS handshake: timed out");
            continue;
        }
        if (f != 0) return f;
    }
}

static int conn_send(conn_t *c, const plait_msg_t *m)
{
    uint8_t *buf = NULL;
    size_t len = 0;
    int rc = plait_wire_encode_alloc(m, &c->a->lim, &buf, &len);
    if (rc != 0)
        return plait_fail(rc, "encode %s: %s", plait_msg_type_name(m->type), plait_errmsg());
    uint64_t deadline = now_ms() + c->a->cfg.io_timeout_ms;
    size_t off = 0;
    while (off < len) {
        int w = plait_tls_write(c->tls, buf + off, len - off);
        if (w > 0)
            off += (size_t)w;
        else if (w != PLAIT_EAGAIN) {
            rc = tls_fail(c, w, "TLS write");
            break;
        }
        if ((rc = conn_flush(c, deadline)) != 0) break;
    }
    if (rc == 0) rc = conn_flush(c, deadline);
    free(buf);
    return rc;
}

/*
 * Next message from the aggregator, answering Pings and skipping Pongs.
 * \return 0 (msg to free), PLAIT_EAGAIN (deadline passed or a wake-up: no
 * message), or an error.
 */
static int conn_recv(conn_t *c, uint64_t deadline, plait_msg_t *msg)
{
    plait_agent_t *a = c->a;
    for (;;) {
        if (c->in_len > 0) {
            size_t used = 0;
            int rc = plait_wire_parse(c->in, c->in_len, &a->lim, 0, msg, &used);
            if (rc == 0) {
                memmove(c->in, c->in + used, c->in_len - used);
                c->in_len -= used;
                if (msg->type == PLAIT_MSG_PING) {
                    plait_msg_t pong;
                    plait_msg_init(&pong, PLAIT_MSG_PONG);
                    pong.u.ping.nonce = msg->u.ping.nonce;
                    plait_msg_free(msg);
                    if ((rc = conn_send(c, &pong)) != 0) return rc;
                    continue;
                }
                if (msg->type == PLAIT_MSG_PONG) {
                    plait_msg_free(msg);
                    continue;
                }
                return 0;
            }
            if (rc != PLAIT_EAGAIN)
                return plait_fail(rc, "from the aggregator: %s", plait_errmsg());
        }
        /* Make room for one more TLS record; frames are bounded by max_frame. */
        if (c->in_cap - c->in_len < IO_CHUNK) {
            size_t ncap = c->in_cap ? c->in_cap * 2 : 64 * 1024;
            if (ncap > c->a->lim.max_frame + 2 * IO_CHUNK)
                ncap = c->a->lim.max_frame + 2 * IO_CHUNK;
            if (ncap - c->in_len < IO_CHUNK)
                return plait_fail(PLAIT_EPROTO, "aggregator frame exceeds the limit");
            uint8_t *n = realloc(c->in, ncap);
            if (!n) return plait_fail(PLAIT_ENOMEM, "receive buffer");
            c->in = n;
            c->in_cap = ncap;
        }
        int r = plait_tls_read(c->tls, c->in + c->in_len, c->in_cap - c->in_len);
        if (r > 0) {
            c->in_len += (size_t)r;
            continue;
        }
        if (r == 0) return plait_fail(PLAIT_EIO, "the aggregator closed the session");
        if (r != PLAIT_EAGAIN) return tls_fail(c, r, "TLS read");
        int rc = conn_flush(c, now_ms() + a->cfg.io_timeout_ms);
        if (rc != 0) return rc;
        rc = conn_fill(c, deadline);
        if (rc != 0) return rc; /* PLAIT_EAGAIN included */
    }
}

/* Wait for the next message until the deadline. \return 0, or an error (timeout: PLAIT_EIO). */
static int conn_expect(conn_t *c, uint64_t deadline, plait_msg_t *msg, const char *what)
{
    for (;;) {
        int rc = conn_recv(c, deadline, msg);
        if (rc != PLAIT_EAGAIN) return rc;
        if (now_ms() >= deadline) return plait_fail(PLAIT_EIO, "timed out waiting for %s", what);
    }
}

static void conn_close(conn_t *c)
{
    if (c->tls && c->fd >= 0 && plait_tls_established(c->tls)) {
        if (plait_tls_close_notify(c->tls) == 0) (void)conn_flush(c, now_ms() + 1000);
    }
    conn_free(c);
}

/* Send an Error and let the caller close. Failures to send are not reported: we are leaving anyway.
 */
static void send_error(conn_t *c, int code, const char *text)
{
    plait_msg_t m;
    plait_msg_init(&m, PLAIT_MSG_ERROR);
    m.u.error.code = code;
    snprintf(m.u.error.message, sizeof(m.u.error.message), "%s", text);
    int rc = conn_send(c, &m);
    (void)rc;
}

/* An Error from the aggregator becomes our return code. */
static int peer_error(conn_t *c, const plait_msg_t *m, uint64_t round)
{
    plait_agent_t *a = c->a;
    c->peer_error = 1; /* it closes after an Error: no answer is due */
    int code = m->u.error.code;
    int known = code < 0 && code >= PLAIT_ETHRESHOLD && code != PLAIT_EAGAIN;
    char where[48] = "";
    if (round) snprintf(where, sizeof(where), "round %llu: ", (unsigned long long)round);
    /* The message is peer text, validated by wire.c (printable, bounded); logged as data. */
    PLAIT_LOG(PLAIT_LOG_WARN, "agent %s: %saggregator error %s: %s", a->device_id, where,
              known ? plait_err_name(code) : "unknown", m->u.error.message);
    if (!known)
        return plait_fail(PLAIT_EPROTO, "aggregator: %s (unknown code %d)", m->u.error.message,
                          code);
    return plait_fail(code, "aggregator: %s",
                      m->u.error.message[0] ? m->u.error.message : plait_strerror(code));
}

static int unexpected(const plait_msg_t *m, const char *waiting)
{
    return plait_fail(PLAIT_EPROTO, "aggregator sent %s while the agent waited for %s",
                      plait_msg_type_name(m->type), waiting);
}

static const char *retry_reason_name(plait_retry_reason_t r);

/* A ComeBackLater inside a round: the aggregator ended it (failed round,
 * failed commit, shutdown) and closes. Remembered on c; the caller turns it
 * into a come-back outcome. \return PLAIT_ECANCELED (the round is over). */
static int round_ended(conn_t *c, const plait_msg_t *m, uint64_t round)
{
    c->peer_error = 1; /* it closes after this: no answer is due */
    c->got_cbl = 1;
    c->cbl_ms = m->u.come_back_later.retry_ms;
    c->cbl_reason = m->u.come_back_later.reason;
    PLAIT_LOG(PLAIT_LOG_WARN, "agent %s: round %llu: ended by the aggregator (%s); come back in %u ms",
              c->a->device_id, (unsigned long long)round, retry_reason_name(c->cbl_reason), c->cbl_ms);
    return plait_fail(PLAIT_ECANCELED, "round %llu: ended by the aggregator (%s)", (unsigned long long)round,
                      retry_reason_name(c->cbl_reason));
}

/* After round_ended: a come-back outcome (the words of a failed round are useless). */
static int round_ended_outcome(conn_t *c, uint64_t round, plait_agent_result_t *res)
{
    plait_agent_t *a = c->a;
    if (c->cbl_reason == PLAIT_RETRY_ROUND_FAILED || c->cbl_reason == PLAIT_RETRY_COMMIT_FAILED) {
        int r2 = plait__agent_pending_remove(a->state_dir);
        (void)r2;
    }
    plait_clear_error();
    res->outcome = PLAIT_AGENT_OUT_COME_BACK;
    res->round_id = round;
    res->retry_ms = c->cbl_ms;
    plait_agent_event_t ev = {.type = PLAIT_AGENT_EV_COME_BACK, .round_id = round, .delay_ms = c->cbl_ms};
    emit_ev(a, &ev);
    return 0;
}

/* ----------------------------------------------------------------- training */

typedef struct {
    plait_agent_t *a;
    plait_lora_t *lora; /* trained in place */
    int train_a;
    int B, T;
    double lr;
    uint32_t steps;
    uint64_t sample_seed; /* not secret; selects windows */
    atomic_int cancel;
    atomic_uint steps_done;
    atomic_int done;
    int rc;
    char err[256];
    size_t n_records;
    double loss; /* mean training loss of the last step (stays on the device) */
    const plait_lora_t *serve_ref; /* choose the serving adapter from this after training (NULL: from lora) */
    uint64_t round;
} job_t;

static void *job_main(void *p)
{
    job_t *j = p;
    plait_agent_t *a = j->a;
    plait_corpus_t corpus;
    plait_corpus_init(&corpus);
    plait_store_t *st = NULL;
    plait_trainer_t *tr = NULL;
    int32_t *batch = NULL;
    plait_store_config_t sc;
    plait_store_config_default(&sc);
    sc.path = a->store_path;
    sc.create = false;
    int rc = plait_store_open(&st, &sc);
    if (rc == 0) rc = plait_corpus_add_store(&corpus, &a->tok, st, PLAIT_STORE_TRAIN);
    plait_store_close(st);
    if (rc != 0) goto out;
    j->n_records = corpus.n_records;
    if (corpus.n < (size_t)j->T + 1) {
        rc = plait_fail(PLAIT_EINVAL,
                        "the training split holds %zu tokens, fewer than seq_len %d + 1", corpus.n,
                        j->T);
        goto out;
    }
    plait_train_config_t tc = plait_train_config_default();
    tc.B = j->B;
    tc.T = j->T;
    tc.lr = j->lr;
    tc.train_a = j->train_a;
    tc.threads = a->cfg.threads;
    tc.pool = a->pool;
    if ((rc = plait_train_create(&tr, &a->model, j->lora, &tc)) != 0) goto out;
    batch = malloc((size_t)j->B * ((size_t)j->T + 1) * sizeof(int32_t));
    if (!batch) {
        rc = plait_fail(PLAIT_ENOMEM, "training batch");
        goto out;
    }
    uint64_t rng = j->sample_seed;
    for (uint32_t s = 0; s < j->steps; s++) {
        if (atomic_load(&j->cancel)) {
            rc = plait_fail(PLAIT_ECANCELED, "training canceled at step %u", s);
            goto out;
        }
        float loss = 0;
        if ((rc = plait_corpus_sample(&corpus, j->B, j->T, &rng, batch)) != 0) goto out;
        if ((rc = plait_train_forward_backward(tr, batch, &loss)) != 0) goto out;
        if ((rc = plait_train_step(tr)) != 0) goto out;
        j->loss = loss;
        atomic_store(&j->steps_done, s + 1);
    }
    /* The adapter this device serves: validated personalization from the global adapter (FedSA: from the
     * trained global A + own B); a failure keeps the previous one and does not fail the round. */
    plait_train_destroy(tr);
    tr = NULL;
    plait_personal_result_t pr;
    if (plait__agent_serve_choose(&a->model, j->serve_ref ? j->serve_ref : j->lora, &corpus, a->state_dir, j->B,
                                  j->T, j->lr, j->train_a, (int)j->steps, j->sample_seed ^ 0x5e12e5eedULL, a->pool,
                                  a->cfg.threads, j->round, &pr) == 0)
        PLAIT_LOG(PLAIT_LOG_INFO, "agent %s: round %llu: serving the %s adapter", a->device_id,
                  (unsigned long long)j->round, plait_personal_kind_name(pr.kind));
    else
        PLAIT_LOG(PLAIT_LOG_WARN, "agent %s: round %llu: serving adapter not updated: %s", a->device_id,
                  (unsigned long long)j->round, plait_errmsg());
out:
    if (rc != 0) snprintf(j->err, sizeof(j->err), "%s", plait_errmsg());
    if (batch) plait_zeroize(batch, (size_t)j->B * ((size_t)j->T + 1) * sizeof(int32_t));
    free(batch);
    plait_train_destroy(tr);
    plait_corpus_free(&corpus); /* wipes the private tokens */
    j->rc = rc;
    atomic_store(&j->done, 1);
    char c = 'd';
    ssize_t w = write(a->wake[1], &c, 1);
    (void)w;
    return NULL;
}

/*
 * Train on the worker thread while this thread keeps the connection alive.
 * \return 0, the worker's error, PLAIT_ECANCELED (stop or deadline), or a
 * connection error (the worker is canceled and joined in every case).
 */
static int train_with_keepalive(conn_t *c, job_t *j, uint64_t round, uint64_t task_deadline)
{
    plait_agent_t *a = c->a;
    pthread_t th;
    if (pthread_create(&th, NULL, job_main, j) != 0)
        return plait_fail(PLAIT_ENOMEM, "cannot start the training thread");
    uint64_t next_ping = now_ms() + a->cfg.keepalive_ms, next_progress = now_ms() + PROGRESS_MS;
    int rc = 0;
    unsigned last_step = 0;
    while (!atomic_load(&j->done)) {
        uint64_t now = now_ms();
        if (now >= task_deadline) {
            rc = plait_fail(PLAIT_ECANCELED, "round %llu: deadline passed during training",
                            (unsigned long long)round);
            break;
        }
        if (now >= next_ping) {
            plait_msg_t ping;
            plait_msg_init(&ping, PLAIT_MSG_PING);
            ping.u.ping.nonce = ++a->ping_nonce;
            if ((rc = conn_send(c, &ping)) != 0) break;
            next_ping = now + a->cfg.keepalive_ms;
        }
        unsigned s = atomic_load(&j->steps_done);
        if (now >= next_progress && s != last_step) {
            plait_agent_event_t ev = {
                .type = PLAIT_AGENT_EV_TRAINING, .round_id = round, .step = s, .steps = j->steps};
            emit_ev(a, &ev);
            last_step = s;
            next_progress = now + PROGRESS_MS;
        }
        uint64_t until = next_ping < task_deadline ? next_ping : task_deadline;
        if (until > now + PROGRESS_MS) until = now + PROGRESS_MS;
        plait_msg_t m;
        int r = conn_recv(c, until, &m);
        if (r == PLAIT_EAGAIN) continue;
        if (r != 0) {
            rc = r;
            break;
        }
        rc = m.type == PLAIT_MSG_ERROR             ? peer_error(c, &m, round)
             : m.type == PLAIT_MSG_COME_BACK_LATER ? round_ended(c, &m, round)
                                                   : unexpected(&m, "nothing during training");
        plait_msg_free(&m);
        break;
    }
    if (rc != 0) atomic_store(&j->cancel, 1);
    pthread_join(th, NULL);
    drain_wake(a);
    if (stopped(a) && rc == 0 && j->rc != 0) rc = plait_fail(PLAIT_ECANCELED, "agent stopped");
    if (rc == 0 && j->rc != 0) rc = plait_fail(j->rc, "training: %s", j->err);
    if (rc == 0) {
        plait_agent_event_t ev = {.type = PLAIT_AGENT_EV_TRAINING,
                                  .round_id = round,
                                  .step = j->steps,
                                  .steps = j->steps};
        emit_ev(a, &ev);
    }
    return rc;
}

/* --------------------------------------------------------------- the round */

/*
 * An interrupted download is kept as DIR/global.part: magic, total length,
 * the task's SHA-256, the byte count, then the bytes. A later task for the
 * same blob (same hash and length) asks for the rest only (PLAIT_CAP_RESUME);
 * the final hash check covers the resumed bytes too.
 */
#define PART_MAGIC "PLAITPRT"
#define PART_HEADER (8 + 8 + 32 + 8)

static void partial_save(plait_agent_t *a, const plait_msg_task_t *t, const uint8_t *buf,
                         size_t got)
{
    uint8_t *b = malloc(PART_HEADER + got);
    if (!b) return;
    memcpy(b, PART_MAGIC, 8);
    put_u64(b + 8, t->adapter_len);
    memcpy(b + 16, t->adapter_sha256, 32);
    put_u64(b + 48, (uint64_t)got);
    memcpy(b + PART_HEADER, buf, got);
    if (plait__agent_atomic_write(a->state_dir, PARTIAL_FILE, b, PART_HEADER + got) == 0)
        PLAIT_LOG(PLAIT_LOG_INFO, "agent %s: kept %zu of %llu adapter bytes to resume",
                  a->device_id, got, (unsigned long long)t->adapter_len);
    free(b);
}

static void partial_remove(plait_agent_t *a)
{
    char path[4096];
    if (path_join(path, sizeof(path), a->state_dir, PARTIAL_FILE) == 0) unlink(path);
}

/* Bytes of the task's blob already held (copied into buf); 0 when none fit. */
static size_t partial_load(plait_agent_t *a, const plait_msg_task_t *t, uint8_t *buf)
{
    char path[4096];
    uint8_t *b = NULL;
    size_t len = 0, got = 0;
    if (path_join(path, sizeof(path), a->state_dir, PARTIAL_FILE) != 0) return 0;
    if (read_small(path, PART_HEADER + (size_t)t->adapter_len, &b, &len) == 0 &&
        len >= PART_HEADER && memcmp(b, PART_MAGIC, 8) == 0 && get_u64(b + 8) == t->adapter_len &&
        plait_ct_memcmp(b + 16, t->adapter_sha256, 32) == 0 &&
        get_u64(b + 48) == (uint64_t)(len - PART_HEADER) && len - PART_HEADER < t->adapter_len) {
        got = len - PART_HEADER;
        memcpy(buf, b + PART_HEADER, got);
    }
    free(b);
    plait_clear_error();
    return got;
}

/* Global adapter blob: the cached copy when its hash matches, else downloaded (and cached). */
static int get_adapter(conn_t *c, const plait_msg_task_t *t, uint8_t **out, size_t *out_len,
                       uint64_t *downloaded)
{
    plait_agent_t *a = c->a;
    char path[4096];
    int rc;
    *out = NULL;
    *out_len = 0;
    *downloaded = 0;
    if ((rc = path_join(path, sizeof(path), a->state_dir, GLOBAL_FILE)) != 0) return rc;
    uint8_t *buf = NULL;
    size_t len = 0;
    if (read_small(path, (size_t)t->adapter_len, &buf, &len) == 0) {
        uint8_t h[32];
        plait_sha256(buf, len, h);
        if (len == t->adapter_len && plait_ct_memcmp(h, t->adapter_sha256, 32) == 0) {
            *out = buf;
            *out_len = len;
            return 0;
        }
        free(buf);
    }
    plait_clear_error();
    if (t->adapter_len > (uint64_t)SIZE_MAX) return plait_fail(PLAIT_ETOOBIG, "adapter too large");
    len = (size_t)t->adapter_len;
    buf = malloc(len);
    if (!buf) return plait_fail(PLAIT_ENOMEM, "adapter: %zu bytes", len);
    size_t start = partial_load(a, t, buf);
    if (start > 0)
        PLAIT_LOG(PLAIT_LOG_INFO, "agent %s: round %llu: resuming the adapter download at byte %zu",
                  a->device_id, (unsigned long long)t->round_id, start);
    plait_msg_t m;
    plait_msg_init(&m, PLAIT_MSG_ADAPTER_REQUEST);
    m.u.adapter_request.round_id = t->round_id;
    m.u.adapter_request.version = t->adapter_version;
    m.u.adapter_request.offset = start;
    /* wire.h's transfer state checks version, total, offsets and the last chunk's hash. */
    plait_wire_xfer_t x;
    plait_wire_xfer_init(&x, t->adapter_version, t->adapter_len, start);
    if ((rc = conn_send(c, &m)) != 0) goto fail;
    for (;;) {
        if ((rc = conn_expect(c, now_ms() + a->cfg.io_timeout_ms, &m, "an adapter chunk")) != 0)
            goto fail;
        if (m.type != PLAIT_MSG_ADAPTER_CHUNK) {
            rc = m.type == PLAIT_MSG_ERROR             ? peer_error(c, &m, t->round_id)
                 : m.type == PLAIT_MSG_COME_BACK_LATER ? round_ended(c, &m, t->round_id)
                                                       : unexpected(&m, "an adapter chunk");
            plait_msg_free(&m);
            goto fail;
        }
        int r = plait_wire_adapter_rx_add(&x, &m.u.adapter_chunk, t->adapter_sha256, buf);
        plait_msg_free(&m);
        if (r < 0) {
            rc = plait_fail(r == PLAIT_EMISMATCH ? PLAIT_EPROTO : r, "adapter download: %s",
                            plait_errmsg());
            goto fail;
        }
        if (r == 1) break;
    }
    uint8_t h[32];
    plait_sha256(buf, len, h);
    if (plait_ct_memcmp(h, t->adapter_sha256, 32) != 0) {
        partial_remove(a); /* whatever was kept is wrong: start afresh next time */
        free(buf);
        return plait_fail(PLAIT_EMISMATCH,
                          "downloaded adapter does not hash to the task's adapter_sha256");
    }
    partial_remove(a);
    if (plait__agent_atomic_write(a->state_dir, GLOBAL_FILE, buf, len) != 0)
        PLAIT_LOG(PLAIT_LOG_WARN, "agent %s: cannot cache the global adapter: %s", a->device_id,
                  plait_errmsg());
    *out = buf;
    *out_len = len;
    *downloaded = len - start;
    return 0;
fail:
    /* Keep what arrived for a resumed download, unless the bytes themselves were refused. */
    if (rc != PLAIT_EPROTO && x.next > start) {
        int keep = rc;
        char msg[256];
        snprintf(msg, sizeof(msg), "%s", plait_errmsg());
        partial_save(a, t, buf, (size_t)x.next);
        plait_fail(keep, "%s", msg);
    }
    free(buf);
    return rc;
}

static int lora_clone(plait_lora_t *dst, const plait_lora_t *src)
{
    int rc = plait_lora_setup(dst, &src->model, &src->cfg);
    if (rc == 0) memcpy(dst->params, src->params, src->n_params * sizeof(float));
    return rc;
}

/* FedSA: start B from the personal adapter kept by the previous round, when it fits. */
static void load_personal_b(plait_agent_t *a, plait_lora_t *local)
{
    char path[4096];
    if (path_join(path, sizeof(path), a->state_dir, PERSONAL_FILE) != 0) return;
    plait_lora_t p;
    plait_lora_init(&p);
    if (plait_adapter_load(&p, path, &a->model, 0) == 0 && p.n_params == local->n_params &&
        p.n_a == local->n_a && p.cfg.rank == local->cfg.rank &&
        p.cfg.targets == local->cfg.targets) {
        memcpy(local->params + local->n_a, p.params + p.n_a, (p.n_params - p.n_a) * sizeof(float));
        PLAIT_LOG(PLAIT_LOG_DEBUG, "agent %s: FedSA: B starts from the personal adapter",
                  a->device_id);
    }
    plait_clear_error();
    plait_lora_free(&p);
}

static int save_personal(plait_agent_t *a, const plait_lora_t *l)
{
    uint8_t *img = NULL;
    size_t len = 0;
    int rc = plait_adapter_save_mem(l, a->model.sha256, &img, &len);
    if (rc == 0) rc = plait__agent_atomic_write(a->state_dir, PERSONAL_FILE, img, len);
    free(img);
    return rc;
}

/* Why a task cannot be taken, checked before anything is downloaded. 0 if it can. */
static int check_task(plait_agent_t *a, const plait_msg_task_t *t)
{
    if (t->lora.mode != PLAIT_LORA_MODE_FFA && t->lora.mode != PLAIT_LORA_MODE_FEDIT &&
        t->lora.mode != PLAIT_LORA_MODE_FEDSA)
        return plait_fail(PLAIT_EINVAL, "unknown LoRA mode %d", (int)t->lora.mode);
    if (t->train.local_steps > a->cfg.max_local_steps)
        return plait_fail(PLAIT_ETOOBIG, "task asks %u local steps, above this device's %u",
                          t->train.local_steps, a->cfg.max_local_steps);
    if ((uint64_t)t->train.batch * t->train.seq_len > a->cfg.max_batch_tokens)
        return plait_fail(PLAIT_ETOOBIG,
                          "task batch %u x seq_len %u is above this device's %u tokens",
                          t->train.batch, t->train.seq_len, a->cfg.max_batch_tokens);
    if (t->train.seq_len > (uint32_t)a->model.cfg.seq_len)
        return plait_fail(PLAIT_EINVAL, "task seq_len %u is above the model's %d", t->train.seq_len,
                          a->model.cfg.seq_len);
    plait_quant_config_t qc = {.bits = t->quant_bits, .range = t->quant_range};
    if (plait_quant_config_validate(&qc) != 0)
        return plait_fail(PLAIT_EINVAL, "task quantization is invalid");
    if (t->dp.mode == PLAIT_DP_LOCAL && !(t->dp.noise_multiplier > 0.0))
        return plait_fail(PLAIT_EINVAL, "local DP without a noise multiplier");
    return 0;
}

/* Upload words in chunks, record the upload, wait for the Ack. */
static int upload(conn_t *c, const plait__agent_pending_t *p, uint64_t deadline,
                  uint32_t task_chunk_bytes, plait_agent_result_t *res)
{
    plait_agent_t *a = c->a;
    int rc = 0;
    /* Chunks of chunk_words words (wire.h's sequencing: index, offset, examples in chunk 0),
     * never more than the task's max_chunk_bytes (the aggregator refuses bigger ones). */
    plait_wire_limits_t lim = a->lim;
    lim.max_chunk_bytes = a->chunk_words * 4;
    if (task_chunk_bytes >= 4 && task_chunk_bytes / 4 * 4 < lim.max_chunk_bytes)
        lim.max_chunk_bytes = task_chunk_bytes / 4 * 4;
    plait_wire_xfer_t x;
    plait_wire_xfer_init(&x, p->round_id, p->n_words, 0);
    plait_msg_t m;
    int r;
    while ((r = plait_wire_update_tx_next(&x, &lim, p->words, &m)) == 1) {
        if (now_ms() >= deadline)
            return plait_fail(PLAIT_ECANCELED, "round %llu: deadline passed during the upload",
                              (unsigned long long)p->round_id);
        if ((rc = conn_send(c, &m)) != 0) return rc;
    }
    if (r < 0) return plait_fail(r, "update upload: %s", plait_errmsg());
    uint32_t index = x.index;
    if (p->round_id > a->state.last_uploaded) {
        plait__agent_state_t st = a->state;
        st.last_uploaded = p->round_id;
        if ((rc = plait__agent_state_save(a->state_dir, &st)) != 0) return rc;
        a->state = st;
    }
    PLAIT_LOG(PLAIT_LOG_INFO, "agent %s: round %llu: uploaded %zu words in %u chunks", a->device_id,
              (unsigned long long)p->round_id, p->n_words, index);
    plait_agent_event_t ev = {.type = PLAIT_AGENT_EV_UPLOADED,
                              .round_id = p->round_id,
                              .bytes = (uint64_t)p->n_words * 4};
    emit_ev(a, &ev);
    /* The Ack may wait for the round (an update uploaded during selection is acknowledged
     * when training starts): wait until the task's deadline, at least io_timeout_ms,
     * with keepalives. */
    uint64_t ack_deadline = now_ms() + a->cfg.io_timeout_ms;
    if (deadline > ack_deadline) ack_deadline = deadline;
    for (;;) {
        uint64_t now = now_ms(), until = now + a->cfg.keepalive_ms;
        if (until > ack_deadline) until = ack_deadline;
        rc = conn_recv(c, until, &m);
        if (rc == 0) break;
        if (rc != PLAIT_EAGAIN) return rc;
        if (stopped(a)) return plait_fail(PLAIT_ECANCELED, "agent stopped");
        if (now_ms() >= ack_deadline) return plait_fail(PLAIT_EIO, "timed out waiting for the Ack");
        if (now_ms() >= until) {
            plait_msg_t ping;
            plait_msg_init(&ping, PLAIT_MSG_PING);
            ping.u.ping.nonce = ++a->ping_nonce;
            if ((rc = conn_send(c, &ping)) != 0) return rc;
        }
    }
    if (m.type == PLAIT_MSG_COME_BACK_LATER) {
        (void)round_ended(c, &m, p->round_id);
        plait_msg_free(&m);
        return round_ended_outcome(c, p->round_id, res);
    }
    if (m.type == PLAIT_MSG_ERROR) {
        rc = peer_error(c, &m, p->round_id);
        plait_msg_free(&m);
        if (rc == PLAIT_ESTALE) { /* the round is closed or was already counted: the words are
                                     useless now */
            int r2 = plait__agent_pending_remove(a->state_dir);
            (void)r2;
        }
        return rc;
    }
    if (m.type != PLAIT_MSG_ACK || m.u.ack.round_id != p->round_id ||
        m.u.ack.elements != p->n_words) {
        rc = m.type == PLAIT_MSG_ACK
                 ? plait_fail(PLAIT_EPROTO, "Ack for round %llu / %llu words, expected %llu / %zu",
                              (unsigned long long)m.u.ack.round_id,
                              (unsigned long long)m.u.ack.elements, (unsigned long long)p->round_id,
                              p->n_words)
                 : unexpected(&m, "the Ack");
        plait_msg_free(&m);
        return rc;
    }
    plait_msg_free(&m);
    plait__agent_state_t st = a->state;
    st.last_acked = p->round_id;
    if (st.last_uploaded < p->round_id) st.last_uploaded = p->round_id;
    if ((rc = plait__agent_state_save(a->state_dir, &st)) != 0) return rc;
    a->state = st;
    if ((rc = plait__agent_pending_remove(a->state_dir)) != 0) return rc;
    a->rounds_acked++;
    res->outcome = PLAIT_AGENT_OUT_ACKED;
    res->round_id = p->round_id;
    res->num_examples = p->num_examples;
    PLAIT_LOG(PLAIT_LOG_INFO, "agent %s: round %llu: acknowledged", a->device_id,
              (unsigned long long)p->round_id);
    emit(a, PLAIT_AGENT_EV_ACKED, p->round_id, 0);
    return 0;
}

/* Decline the round: the aggregator gets only a code of the fixed DeclineCode list
 * (protocol.md); why stays in this device's own log. */
static int decline(conn_t *c, plait_agent_result_t *res, uint64_t round, int code,
                   plait_decline_code_t wire_code, const char *why)
{
    plait_agent_t *a = c->a;
    PLAIT_LOG(PLAIT_LOG_WARN, "agent %s: round %llu: declined (%s, sent as %s): %s", a->device_id,
              (unsigned long long)round, plait_err_name(code), plait_decline_code_name((int)wire_code),
              why);
    if (!c->peer_error) {
        plait_msg_t m;
        plait_msg_init(&m, PLAIT_MSG_DECLINE);
        m.u.decline.round_id = round;
        m.u.decline.code = wire_code;
        int rc = conn_send(c, &m); /* we are leaving anyway */
        (void)rc;
    }
    res->outcome = PLAIT_AGENT_OUT_DECLINED;
    res->round_id = round;
    res->declined_rc = code;
    emit(a, PLAIT_AGENT_EV_DECLINED, round, code);
    return 0;
}

/* Compute the round's update: adapter, training, pipeline. Fills p (words owned). */
static int compute_update(conn_t *c, const plait_msg_task_t *t, uint64_t deadline,
                          plait__agent_pending_t *p, plait_agent_result_t *res)
{
    plait_agent_t *a = c->a;
    uint64_t round = t->round_id;
    uint8_t *blob = NULL;
    size_t blob_len = 0;
    uint64_t downloaded = 0;
    plait_lora_t global, local, seeded;
    plait_lora_init(&global);
    plait_lora_init(&local);
    plait_lora_init(&seeded);
    plait_rng_t rng;
    memset(&rng, 0, sizeof(rng));
    int rc = get_adapter(c, t, &blob, &blob_len, &downloaded);
    if (rc != 0) goto exit;
    PLAIT_LOG(PLAIT_LOG_INFO, "agent %s: round %llu: global adapter v%llu %s (%zu bytes)",
              a->device_id, (unsigned long long)round, (unsigned long long)t->adapter_version,
              downloaded ? "downloaded" : "cached", blob_len);
    plait_agent_event_t ev = {
        .type = PLAIT_AGENT_EV_DOWNLOADED, .round_id = round, .bytes = downloaded};
    emit_ev(a, &ev);
    if ((rc = plait_adapter_load_mem(&global, blob, blob_len, &a->model, 0)) != 0) goto exit;
    if (global.cfg.rank != (int)t->lora.rank || global.cfg.alpha != t->lora.alpha ||
        global.cfg.targets != t->lora.targets) {
        rc =
            plait_fail(PLAIT_EMISMATCH, "the global adapter's LoRA config differs from the task's");
        goto exit;
    }
    if (t->lora.mode == PLAIT_LORA_MODE_FFA) {
        /* FFA-LoRA: A is frozen at the init every device derives from the task seed. */
        if ((rc = plait_lora_setup(&seeded, &global.model, &global.cfg)) != 0) goto exit;
        plait_lora_init_weights(&seeded, t->lora.a_seed);
        memcpy(global.params, seeded.params, global.n_a * sizeof(float));
    }
    size_t off, len;
    if ((rc = plait_update_span(&global, t->lora.mode, &off, &len)) != 0) goto exit;
    if (t->update_elements != (uint64_t)len + 1 + (t->clip_bit ? 1 : 0)) {
        rc = plait_fail(PLAIT_EMISMATCH, "task wants %llu words, the %s span is %zu + 1%s",
                        (unsigned long long)t->update_elements, plait_lora_mode_name(t->lora.mode),
                        len, t->clip_bit ? " + 1 clip bit" : "");
        goto exit;
    }
    if ((rc = lora_clone(&local, &global)) != 0) goto exit;
    if (t->lora.mode == PLAIT_LORA_MODE_FEDSA) load_personal_b(a, &local);

    job_t *j = calloc(1, sizeof(*j));
    if (!j) {
        rc = plait_fail(PLAIT_ENOMEM, "training job");
        goto exit;
    }
    j->a = a;
    j->lora = &local;
    j->train_a = t->lora.mode != PLAIT_LORA_MODE_FFA;
    j->B = (int)t->train.batch;
    j->T = (int)t->train.seq_len;
    j->lr = t->train.lr;
    j->steps = t->train.local_steps;
    j->round = round;
    j->serve_ref = t->lora.mode == PLAIT_LORA_MODE_FEDSA ? NULL : &global;
    if (a->cfg.seed != 0)
        j->sample_seed = a->cfg.seed ^ (round * 0x9E3779B97F4A7C15ull);
    else if ((rc = plait_drbg_random(&a->drbg, (uint8_t *)&j->sample_seed,
                                     sizeof(j->sample_seed))) != 0) {
        free(j);
        goto exit;
    }
    atomic_init(&j->cancel, 0);
    atomic_init(&j->steps_done, 0);
    atomic_init(&j->done, 0);
    uint64_t t0 = now_ms();
    rc = train_with_keepalive(c, j, round, deadline);
    size_t n_records = j->n_records;
    uint32_t steps = j->steps;
    free(j);
    if (rc != 0) goto exit;
    PLAIT_LOG(PLAIT_LOG_INFO,
              "agent %s: round %llu: trained %u steps (B=%u T=%u, %s) on %zu records in %.1f s",
              a->device_id, (unsigned long long)round, steps, t->train.batch, t->train.seq_len,
              plait_lora_mode_name(t->lora.mode), n_records, (double)(now_ms() - t0) / 1000.0);

    /* The update: diff → clip → [local noise] → × weight → quantize. */
    if (a->cfg.seed != 0)
        plait_rng_seed_u64(&rng, a->cfg.seed, round);
    else if ((rc = plait_rng_seed_drbg(&rng, &a->drbg)) != 0)
        goto exit;
    uint64_t examples = n_records ? n_records : 1;
    double w =
        (double)(examples < t->example_cap ? examples : t->example_cap) / (double)t->example_cap;
    double stddev = t->dp.mode == PLAIT_DP_LOCAL ? t->dp.noise_multiplier * t->clip_norm : 0.0;
    plait_quant_config_t qc = {.bits = t->quant_bits, .range = t->quant_range};
    p->n_words = len + 1 + (t->clip_bit ? 1 : 0);
    p->words = malloc(p->n_words * sizeof(uint32_t));
    if (!p->words) {
        rc = plait_fail(PLAIT_ENOMEM, "update words");
        goto exit;
    }
    plait_clip_info_t ci;
    rc = plait__agent_make_update(&global, &local, t->lora.mode, t->clip_norm, stddev, &qc, w, &rng,
                                  p->words, p->n_words, &ci);
    if (rc != 0) goto exit;
    p->round_id = round;
    p->adapter_version = t->adapter_version;
    p->num_examples = examples;
    res->clip_norm_in = ci.norm;
    PLAIT_LOG(PLAIT_LOG_INFO,
              "agent %s: round %llu: update of %zu words (%s %g%s, %u bits, weight %.3f)",
              a->device_id, (unsigned long long)round, p->n_words,
              ci.clipped ? "clipped to" : "within clip norm", t->clip_norm,
              stddev > 0 ? ", local DP noise" : "", t->quant_bits, w);
    /* The personal copy: FedSA keeps its trained B here (the next round starts from it). */
    if (save_personal(a, &local) != 0)
        PLAIT_LOG(PLAIT_LOG_WARN, "agent %s: cannot save the personal adapter: %s", a->device_id,
                  plait_errmsg());
exit:
    plait_rng_wipe(&rng);
    free(blob);
    plait_lora_free(&seeded);
    plait_lora_free(&global);
    /* local − global is the unclipped update: wipe the trained weights, not only free them. */
    if (local.params) plait_zeroize(local.params, local.n_params * sizeof(float));
    plait_lora_free(&local);
    if (rc != 0) plait__agent_pending_free(p);
    return rc;
}

/* ---- secure aggregation (the conversation is in agent_secagg.c) ---- */

static int sa_send(void *conn, const plait_msg_t *m) { return conn_send(conn, m); }
static int sa_recv(void *conn, uint64_t deadline, plait_msg_t *m) { return conn_recv(conn, deadline, m); }
static int sa_peer_error(void *conn, const plait_msg_t *m, uint64_t round) { return peer_error(conn, m, round); }

/* A round with secure_agg: keys and shares, training, masked upload, unmask (agent_secagg.c). */
static int secure_task(conn_t *c, const plait_msg_task_t *t, uint64_t deadline, plait_agent_result_t *res)
{
    plait_agent_t *a = c->a;
    uint64_t round = t->round_id;
    char *ca = NULL, *crt = NULL, *key = NULL;
    plait__agent_sa_t *sa = NULL;
    plait__agent_pending_t p;
    memset(&p, 0, sizeof(p));
    char why[200];
    int rc;
    if ((rc = load_pem(a->ca_path, "CA certificate", &ca)) != 0 ||
        (rc = load_pem(a->cert_path, "device certificate", &crt)) != 0 ||
        (rc = load_pem(a->key_path, "device key", &key)) != 0)
        goto out;
    plait__agent_sa_env_t env = {c,        sa_send, sa_recv, sa_peer_error, &a->drbg, a->device_id, ca, crt, key,
                                 &a->lim, a->chunk_words * 4, a->cfg.keepalive_ms};
    rc = plait__agent_sa_begin(&env, t, deadline, &sa);
    plait_pki_free_pem(key); /* the round keys are signed: the device key is not needed any more */
    key = NULL;
    if (rc == 0) rc = compute_update(c, t, deadline, &p, res);
    /* distributed DP: the noise share goes in after quantization, before masking */
    if (rc == 0) rc = plait__agent_sa_ddg(t, &a->drbg, p.words, p.n_words - 1 - (t->clip_bit ? 1 : 0));
    if (rc == 0 && t->dp.mode == PLAIT_DP_DISTRIBUTED)
        PLAIT_LOG(PLAIT_LOG_INFO, "agent %s: round %llu: distributed DP noise share added (discrete Gaussian)",
                  a->device_id, (unsigned long long)round);
    if (rc == 0) {
        int acked = 0;
        rc = plait__agent_sa_finish(sa, &env, p.words, p.n_words, deadline, &acked);
        if (acked) {
            int rc2;
            plait__agent_state_t st = a->state;
            st.last_uploaded = st.last_acked = round;
            if ((rc2 = plait__agent_state_save(a->state_dir, &st)) == 0) a->state = st;
            a->rounds_acked++;
            res->outcome = PLAIT_AGENT_OUT_ACKED;
            res->round_id = round;
            res->num_examples = p.num_examples;
            PLAIT_LOG(PLAIT_LOG_INFO, "agent %s: round %llu: masked update acknowledged", a->device_id,
                      (unsigned long long)round);
            emit(a, PLAIT_AGENT_EV_ACKED, round, 0);
            if (rc == 0) rc = rc2;
        }
        goto out;
    }
    if (rc != 0 && c->got_cbl) { /* the aggregator ended the round for this device: come back, as in plain rounds */
        rc = round_ended_outcome(c, round, res);
        goto out;
    }
    if (c->peer_error || rc == PLAIT_EIO || rc == PLAIT_ENOMEM || (rc == PLAIT_ECANCELED && stopped(a))) goto out;
    /* This device leaves the round (a key or share did not verify, too few neighbours, the task
     * cannot be done here): say so and decline. */
    snprintf(why, sizeof(why), "%s", plait_errmsg());
    {
        plait_decline_code_t wc = rc == PLAIT_EINVAL      ? PLAIT_DECLINE_NOT_ENOUGH_DATA
                                  : rc == PLAIT_ECANCELED ? PLAIT_DECLINE_DEADLINE
                                  : rc == PLAIT_EAUTH || rc == PLAIT_ETHRESHOLD || rc == PLAIT_EREFUSED
                                      ? PLAIT_DECLINE_POLICY
                                      : PLAIT_DECLINE_INCOMPATIBLE_TASK;
        rc = decline(c, res, round, rc == PLAIT_EINVAL ? PLAIT_ECANCELED : rc, wc, why);
    }
out:
    plait__agent_sa_free(sa);
    plait__agent_pending_free(&p);
    plait_pki_free_pem(ca);
    plait_pki_free_pem(crt);
    plait_pki_free_pem(key);
    return rc;
}

static int do_task(conn_t *c, const plait_msg_task_t *t, plait_agent_result_t *res)
{
    plait_agent_t *a = c->a;
    uint64_t round = t->round_id;
    uint64_t deadline = now_ms() + (uint64_t)t->deadline_s * 1000u;
    plait__agent_pending_t p;
    memset(&p, 0, sizeof(p));
    int rc = plait__agent_pending_load(a->state_dir, &p);
    if (rc == PLAIT_EPROTO) { /* a torn file cannot be resent; it was never fully written, so it was
                                 never sent */
        PLAIT_LOG(PLAIT_LOG_WARN, "agent %s: discarding a damaged pending update", a->device_id);
        rc = plait__agent_pending_remove(a->state_dir);
    } else if (rc == PLAIT_ENOENT) {
        rc = 0;
        plait_clear_error();
    }
    if (rc != 0) return rc;
    plait__task_decision_t d = plait__agent_task_decision(&a->state, p.round_id, round);
    char why[160];
    if (d == PLAIT__TASK_STALE) {
        plait__agent_pending_free(&p);
        snprintf(why, sizeof(why),
                 "round %llu was already uploaded by this device (last acknowledged %llu)",
                 (unsigned long long)round, (unsigned long long)a->state.last_acked);
        return decline(c, res, round, PLAIT_ESTALE, PLAIT_DECLINE_ALREADY_DONE, why);
    }
    if (d == PLAIT__TASK_RESEND && t->secure_agg) {
        /* A stored plain update is never sent into a secure round. */
        plait__agent_pending_free(&p);
        rc = plait__agent_pending_remove(a->state_dir);
        (void)rc;
        return decline(c, res, round, PLAIT_EREFUSED, PLAIT_DECLINE_POLICY,
                       "a plain update of this round is stored; it is not sent under secure aggregation");
    }
    if (d == PLAIT__TASK_RESEND) {
        if (p.n_words != t->update_elements) {
            plait__agent_pending_free(&p);
            rc = plait__agent_pending_remove(a->state_dir);
            (void)rc;
            return decline(c, res, round, PLAIT_EMISMATCH, PLAIT_DECLINE_INCOMPATIBLE_TASK,
                           "the stored update does not fit the task; not recomputing it");
        }
        PLAIT_LOG(PLAIT_LOG_INFO,
                  "agent %s: round %llu: re-sending the stored update (not retraining)",
                  a->device_id, (unsigned long long)round);
        emit(a, PLAIT_AGENT_EV_TASK, round, 0);
        rc = upload(c, &p, deadline, t->max_chunk_bytes, res);
        plait__agent_pending_free(&p);
        return rc;
    }
    if (p.round_id != 0) { /* an older round's words: that round is over */
        plait__agent_pending_free(&p);
        if ((rc = plait__agent_pending_remove(a->state_dir)) != 0) return rc;
    }
    if ((rc = plait__agent_sa_policy(&a->cfg, t)) != 0)
        return decline(c, res, round, rc, PLAIT_DECLINE_POLICY, plait_errmsg());
    if ((rc = check_task(a, t)) != 0)
        return decline(c, res, round, rc, PLAIT_DECLINE_INCOMPATIBLE_TASK, plait_errmsg());
    if (a->cfg.eligible && !a->cfg.eligible(a->cfg.eligible_ud))
        return decline(c, res, round, PLAIT_ECANCELED, PLAIT_DECLINE_NOT_ELIGIBLE,
                       "the device is no longer eligible (not idle or not charging)");
    PLAIT_LOG(PLAIT_LOG_INFO,
              "agent %s: round %llu: task (adapter v%llu, %s rank %u, %u steps, B=%u T=%u, lr %g, "
              "clip %g, %u bits, "
              "dp %s, deadline %u s)",
              a->device_id, (unsigned long long)round, (unsigned long long)t->adapter_version,
              plait_lora_mode_name(t->lora.mode), t->lora.rank, t->train.local_steps,
              t->train.batch, t->train.seq_len, t->train.lr, t->clip_norm, t->quant_bits,
              t->dp.mode == PLAIT_DP_LOCAL     ? "local"
              : t->dp.mode == PLAIT_DP_CENTRAL ? "central"
              : t->dp.mode == PLAIT_DP_DISTRIBUTED ? "distributed"
                                               : "none",
              t->deadline_s);
    emit(a, PLAIT_AGENT_EV_TASK, round, 0);
    if (t->secure_agg) return secure_task(c, t, deadline, res);
    rc = compute_update(c, t, deadline, &p, res);
    if (rc != 0 && c->got_cbl) return round_ended_outcome(c, round, res);
    if (rc == PLAIT_EMISMATCH || rc == PLAIT_EPROTO || rc == PLAIT_ETOOBIG ||
        (rc == PLAIT_EINVAL && !stopped(a)) || (rc == PLAIT_ECANCELED && !stopped(a))) {
        /* The task cannot be done here (adapter for another model or shape, too little data,
         * deadline): say so. */
        snprintf(why, sizeof(why), "%s", plait_errmsg());
        int code = rc == PLAIT_EINVAL ? PLAIT_ECANCELED : rc;
        plait_decline_code_t wc = rc == PLAIT_EINVAL      ? PLAIT_DECLINE_NOT_ENOUGH_DATA
                                  : rc == PLAIT_ECANCELED ? PLAIT_DECLINE_DEADLINE
                                                          : PLAIT_DECLINE_INCOMPATIBLE_TASK;
        return decline(c, res, round, code, wc, why);
    }
    if (rc != 0) return rc;
    /* Crash safety: the words exist on disk before the first chunk leaves. */
    if ((rc = plait__agent_pending_save(a->state_dir, &p)) != 0) {
        plait__agent_pending_free(&p);
        return rc;
    }
    rc = upload(c, &p, deadline, t->max_chunk_bytes, res);
    plait__agent_pending_free(&p);
    return rc;
}

/* ------------------------------------------------------------ run / run_once */

static const char *retry_reason_name(plait_retry_reason_t r)
{
    switch (r) {
    case PLAIT_RETRY_NO_ROUND:
        return "no round";
    case PLAIT_RETRY_COHORT_FULL:
        return "cohort full";
    case PLAIT_RETRY_PACE:
        return "pace steering";
    case PLAIT_RETRY_BUSY:
        return "aggregator busy";
    case PLAIT_RETRY_SHUTTING_DOWN:
        return "aggregator shutting down";
    case PLAIT_RETRY_INCOMPATIBLE:
        return "incompatible model or capabilities";
    case PLAIT_RETRY_ROUND_FAILED:
        return "round failed";
    case PLAIT_RETRY_COMMIT_FAILED:
        return "round commit failed";
    case PLAIT_RETRY_NOT_SAMPLED:
        return "not sampled this round";
    case PLAIT_RETRY_SECAGG_CLOSED:
        return "secure-aggregation key exchange closed";
    }
    return "unknown reason";
}

static int check_eligible(plait_agent_t *a, int64_t *n_train)
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

int plait_agent_run_once(plait_agent_t *a, plait_agent_result_t *res_out)
{
    if (!a) return plait_fail(PLAIT_EINVAL, "agent: NULL");
    plait_agent_result_t res;
    memset(&res, 0, sizeof(res));
    if (stopped(a)) return plait_fail(PLAIT_ECANCELED, "agent stopped");
    int64_t n_train = 0;
    int rc = check_eligible(a, &n_train);
    if (rc != 0) {
        a->fatal = 1; /* retrying will not bring the store back */
        return store_fail(a, rc);
    }
    a->fatal = 0;
    if (n_train < a->cfg.min_records || (a->cfg.eligible && !a->cfg.eligible(a->cfg.eligible_ud))) {
        if (n_train < a->cfg.min_records)
            PLAIT_LOG(PLAIT_LOG_INFO,
                      "agent %s: not eligible: %lld training records, fewer than %lld",
                      a->device_id, (long long)n_train, (long long)a->cfg.min_records);
        else
            PLAIT_LOG(PLAIT_LOG_INFO, "agent %s: not eligible now (the app says not idle/charging)",
                      a->device_id);
        res.outcome = PLAIT_AGENT_OUT_NOT_ELIGIBLE;
        emit(a, PLAIT_AGENT_EV_NOT_ELIGIBLE, 0, 0);
        a->last = res;
        if (res_out) *res_out = res;
        return 0;
    }
    conn_t c;
    conn_init(&c, a);
    plait_msg_t m;
    plait_msg_init(&m, PLAIT_MSG_HELLO);
    if ((rc = conn_open(&c)) != 0) goto out;
    PLAIT_LOG(PLAIT_LOG_INFO, "agent %s: connected to %s:%d (%s)", a->device_id, a->host,
              a->cfg.server_port, plait_tls_ciphersuite(c.tls));
    plait_msg_hello_t *h = &m.u.hello;
    snprintf(h->client_version, sizeof(h->client_version), "%s", CLIENT_VERSION);
    memcpy(h->base_model_sha256, a->model.sha256, 32);
    h->capabilities = AGENT_CAPS;
    h->has_last_round = a->state.last_acked != 0;
    h->last_round_completed = a->state.last_acked;
    if ((rc = conn_send(&c, &m)) != 0) goto out;
    emit(a, PLAIT_AGENT_EV_CONNECTED, 0, 0);
    if ((rc = conn_expect(&c, now_ms() + a->cfg.io_timeout_ms, &m, "a task or come-back-later")) !=
        0)
        goto out;
    switch (m.type) {
    case PLAIT_MSG_COME_BACK_LATER:
        res.outcome = PLAIT_AGENT_OUT_COME_BACK;
        res.retry_ms = m.u.come_back_later.retry_ms;
        PLAIT_LOG(PLAIT_LOG_INFO, "agent %s: come back in %u ms (%s)", a->device_id, res.retry_ms,
                  retry_reason_name(m.u.come_back_later.reason));
        {
            plait_agent_event_t ev = {.type = PLAIT_AGENT_EV_COME_BACK, .delay_ms = res.retry_ms};
            emit_ev(a, &ev);
        }
        break;
    case PLAIT_MSG_TASK:
        rc = do_task(&c, &m.u.task, &res);
        break;
    case PLAIT_MSG_ERROR:
        rc = peer_error(&c, &m, 0);
        break;
    default:
        rc = unexpected(&m, "a task or come-back-later");
        break;
    }
    plait_msg_free(&m);
out:
    if (rc == PLAIT_EPROTO && !c.peer_error && c.tls && plait_tls_established(c.tls))
        send_error(&c, PLAIT_EPROTO, "protocol error"); /* the detail stays in this device's log */
    conn_close(&c);
    a->last = res;
    if (res_out) *res_out = res;
    return rc;
}

static double uniform(plait_agent_t *a)
{
    return plait_rng_uniform(&a->jitter);
}

int plait_agent_run(plait_agent_t *a)
{
    if (!a) return plait_fail(PLAIT_EINVAL, "agent: NULL");
    uint64_t start = now_ms();
    uint32_t attempt = 0, acked = 0;
    for (;;) {
        if (stopped(a)) return 0;
        if (a->cfg.max_runtime_ms && now_ms() - start >= a->cfg.max_runtime_ms) {
            PLAIT_LOG(PLAIT_LOG_INFO, "agent %s: run time limit reached", a->device_id);
            return 0;
        }
        plait_agent_event_t ev = {.type = PLAIT_AGENT_EV_CONNECTING, .attempt = attempt};
        emit_ev(a, &ev);
        plait_agent_result_t r;
        memset(&r, 0, sizeof(r));
        int rc = plait_agent_run_once(a, &r);
        if (stopped(a)) return 0;
        uint64_t delay;
        if (rc != 0) {
            PLAIT_LOG(PLAIT_LOG_WARN, "agent %s: attempt %u failed: %s (%s)", a->device_id,
                      attempt + 1, plait_errmsg(), plait_err_name(rc));
            emit(a, PLAIT_AGENT_EV_ERROR, r.round_id, rc);
            if (a->fatal) return rc; /* a local failure that retrying cannot fix */
            attempt++;
            if (!a->cfg.daemon && attempt >= a->cfg.max_attempts) return rc;
            delay = plait_agent_backoff_ms(&a->cfg, attempt - 1, uniform(a));
        } else {
            attempt = 0;
            if (!a->cfg.daemon) return 0;
            switch (r.outcome) {
            case PLAIT_AGENT_OUT_ACKED:
                acked++;
                if (a->cfg.max_rounds && acked >= a->cfg.max_rounds) {
                    PLAIT_LOG(PLAIT_LOG_INFO, "agent %s: %u rounds done", a->device_id, acked);
                    return 0;
                }
                delay = plait_agent_come_back_ms(&a->cfg, a->cfg.rejoin_ms, uniform(a));
                break;
            case PLAIT_AGENT_OUT_COME_BACK:
                delay = plait_agent_come_back_ms(&a->cfg, r.retry_ms, uniform(a));
                break;
            case PLAIT_AGENT_OUT_NOT_ELIGIBLE:
                delay = a->cfg.not_eligible_ms;
                break;
            default:
                delay = plait_agent_come_back_ms(&a->cfg, a->cfg.rejoin_ms, uniform(a));
                break;
            }
        }
        if (a->cfg.max_runtime_ms) {
            uint64_t used = now_ms() - start;
            uint64_t left = used < a->cfg.max_runtime_ms ? a->cfg.max_runtime_ms - used : 0;
            if (delay > left) delay = left;
        }
        plait_agent_event_t sl = {
            .type = PLAIT_AGENT_EV_SLEEP, .attempt = attempt, .delay_ms = delay};
        emit_ev(a, &sl);
        PLAIT_LOG(PLAIT_LOG_DEBUG, "agent %s: next attempt in %llu ms", a->device_id,
                  (unsigned long long)delay);
        if (sleep_ms(a, delay) != 0) return 0;
    }
}
