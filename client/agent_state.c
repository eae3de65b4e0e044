/*
 * agent_state.c: the agent's state directory (docs/client-api.md): the round
 * record (DIR/state), the stored update (DIR/pending.upd), an interrupted
 * adapter download (DIR/global.part) and the FedSA personal adapter
 * (DIR/personal.safetensors). DIR/global.safetensors, the cached global
 * adapter, is written through plait__agent_atomic_write by agent.c.
 *
 * Contract:
 *   - Every file is written whole by plait__agent_atomic_write (temporary
 *     0600 file, fsync, rename, fsync of the directory): a crash leaves the
 *     old or the new file, never a mix.
 *   - Every file is read as untrusted bytes: bounded in size, checked for its
 *     magic, version, lengths and (pending update, partial download) a
 *     SHA-256. A torn or foreign state or pending file is refused with
 *     PLAIT_EPROTO rather than guessed at; a partial download or personal
 *     adapter that does not fit is ignored (the round starts afresh).
 *   - The no-double-upload rule (plait__agent_task_decision) is a pure
 *     function of the round record and the stored update's round.
 */
#include "agent_int.h"

#include "plait/adapter.h"
#include "plait/crypto.h"
#include "plait/file.h"
#include "plait/le.h"
#include "plait/log.h"
#include "plait/lora.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

#define STATE_MAGIC "plait-agent-state 1"
#define PENDING_MAGIC "PLAITUPD"
#define PENDING_VERSION 1u

int plait__agent_path_join(char *out, size_t cap, const char *dir, const char *name)
{
    int n = snprintf(out, cap, "%s/%s", dir, name);
    if (n < 0 || (size_t)n >= cap)
        return plait_fail(PLAIT_EINVAL, "state path too long: %.80s/%s", dir, name);
    return 0;
}

/* ------------------------------------------------------------- state files */

int plait__agent_atomic_write(const char *dir, const char *name, const uint8_t *buf, size_t len)
{
    char tmp[4096], dst[4096];
    int rc;
    if ((rc = plait__agent_path_join(dst, sizeof(dst), dir, name)) != 0) return rc;
    int n = snprintf(tmp, sizeof(tmp), "%s/.%s.tmp", dir, name);
    if (n < 0 || (size_t)n >= sizeof(tmp)) return plait_fail(PLAIT_EINVAL, "state path too long");
    return plait_file_write_atomic(dst, tmp, buf, len, 0600);
}

/* A whole file of the state directory (at most max bytes), read by plait_file_read: no blocking
 * open, regular files only, a file that changes while it is read refused. PLAIT_ENOENT when
 * missing; a file that is not a regular one is PLAIT_EIO here, like any other unreadable file
 * (plait__agent_state_load and plait__agent_pending_load promise PLAIT_EIO). */
static int read_file(const char *path, size_t max, uint8_t **out, size_t *len)
{
    int rc = plait_file_read(path, NULL, max, out, len);
    if (rc == PLAIT_EINVAL) rc = plait_fail(PLAIT_EIO, "%s", plait_errmsg());
    return rc;
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
    if ((rc = plait__agent_path_join(path, sizeof(path), dir, STATE_FILE)) != 0) return rc;
    uint8_t *buf;
    size_t len;
    rc = read_file(path, 4096, &buf, &len);
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

#define PENDING_HEADER (8 + 4 + 8 * 4)

int plait__agent_pending_save(const char *dir, const plait__agent_pending_t *p)
{
    if (!p || !p->words || p->n_words == 0)
        return plait_fail(PLAIT_EINVAL, "pending update: empty");
    size_t len = PENDING_HEADER + p->n_words * 4 + 32;
    uint8_t *b = malloc(len);
    if (!b) return plait_fail(PLAIT_ENOMEM, "pending update: %zu bytes", len);
    memcpy(b, PENDING_MAGIC, 8);
    plait_put_le32(b + 8, PENDING_VERSION);
    plait_put_le64(b + 12, p->round_id);
    plait_put_le64(b + 20, p->adapter_version);
    plait_put_le64(b + 28, p->num_examples);
    plait_put_le64(b + 36, (uint64_t)p->n_words);
    for (size_t i = 0; i < p->n_words; i++) plait_put_le32(b + PENDING_HEADER + 4 * i, p->words[i]);
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
    if ((rc = plait__agent_path_join(path, sizeof(path), dir, PENDING_FILE)) != 0) return rc;
    uint8_t *b;
    size_t len;
    /* The largest update the wire allows, plus header and hash. */
    size_t max = PENDING_HEADER + (size_t)((1u << 26) + 1) * 4 + 32;
    if ((rc = read_file(path, max, &b, &len)) != 0) return rc == PLAIT_ETOOBIG ? PLAIT_EPROTO : rc;
    rc = PLAIT_EPROTO;
    uint8_t h[32];
    if (len < PENDING_HEADER + 4 + 32 || memcmp(b, PENDING_MAGIC, 8) != 0) goto bad;
    uint32_t ver = plait_le32(b + 8);
    if (ver != PENDING_VERSION) goto bad;
    uint64_t n = plait_le64(b + 36);
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
    p->round_id = plait_le64(b + 12);
    p->adapter_version = plait_le64(b + 20);
    p->num_examples = plait_le64(b + 28);
    p->n_words = (size_t)n;
    for (size_t i = 0; i < p->n_words; i++) p->words[i] = plait_le32(b + PENDING_HEADER + 4 * i);
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
    if ((rc = plait__agent_path_join(path, sizeof(path), dir, PENDING_FILE)) != 0) return rc;
    if (unlink(path) != 0 && errno != ENOENT)
        return plait_fail(PLAIT_EIO, "%s: unlink: %s", path, strerror(errno));
    return 0;
}

void plait__agent_pending_free(plait__agent_pending_t *p)
{
    if (!p) return;
    /* Under secure aggregation these are the unmasked words (the quantized update or held-out
     * loss) that only their masked sum may reveal: wiped, as the masked copies are. */
    if (p->words) plait_zeroize(p->words, p->n_words * sizeof(uint32_t));
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

/* ------------------------------------------------------- partial download */

/*
 * An interrupted download is kept as DIR/global.part: magic, total length,
 * the task's SHA-256, the byte count, then the bytes. A later task for the
 * same blob (same hash and length) asks for the rest only (PLAIT_CAP_RESUME);
 * the final hash check covers the resumed bytes too.
 */
#define PART_MAGIC "PLAITPRT"
#define PART_HEADER (8 + 8 + 32 + 8)

void plait__agent_partial_save(plait_agent_t *a, const plait_msg_task_t *t, const uint8_t *buf,
                               size_t got)
{
    uint8_t *b = malloc(PART_HEADER + got);
    if (!b) return;
    memcpy(b, PART_MAGIC, 8);
    plait_put_le64(b + 8, t->adapter_len);
    memcpy(b + 16, t->adapter_sha256, 32);
    plait_put_le64(b + 48, (uint64_t)got);
    memcpy(b + PART_HEADER, buf, got);
    if (plait__agent_atomic_write(a->state_dir, PARTIAL_FILE, b, PART_HEADER + got) == 0)
        PLAIT_LOG(PLAIT_LOG_INFO, "agent %s: kept %zu of %llu adapter bytes to resume",
                  a->device_id, got, (unsigned long long)t->adapter_len);
    free(b);
}

void plait__agent_partial_remove(plait_agent_t *a)
{
    char path[4096];
    if (plait__agent_path_join(path, sizeof(path), a->state_dir, PARTIAL_FILE) == 0) unlink(path);
}

/* Bytes of the task's blob already held (copied into buf); 0 when none fit. */
size_t plait__agent_partial_load(plait_agent_t *a, const plait_msg_task_t *t, uint8_t *buf)
{
    char path[4096];
    uint8_t *b = NULL;
    size_t len = 0, got = 0;
    if (plait__agent_path_join(path, sizeof(path), a->state_dir, PARTIAL_FILE) != 0) return 0;
    if (read_file(path, PART_HEADER + (size_t)t->adapter_len, &b, &len) == 0 &&
        len >= PART_HEADER && memcmp(b, PART_MAGIC, 8) == 0 && plait_le64(b + 8) == t->adapter_len &&
        plait_ct_memcmp(b + 16, t->adapter_sha256, 32) == 0 &&
        plait_le64(b + 48) == (uint64_t)(len - PART_HEADER) && len - PART_HEADER < t->adapter_len) {
        got = len - PART_HEADER;
        memcpy(buf, b + PART_HEADER, got);
    }
    free(b);
    plait_clear_error();
    return got;
}

/* -------------------------------------------------------- personal adapter */

/* FedSA: start B from the personal adapter kept by the previous round, when it fits. */
void plait__agent_load_personal_b(plait_agent_t *a, plait_lora_t *local)
{
    char path[4096];
    if (plait__agent_path_join(path, sizeof(path), a->state_dir, PERSONAL_FILE) != 0) return;
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

int plait__agent_save_personal(plait_agent_t *a, const plait_lora_t *l)
{
    uint8_t *img = NULL;
    size_t len = 0;
    int rc = plait_adapter_save_mem(l, a->model.sha256, &img, &len);
    if (rc == 0) rc = plait__agent_atomic_write(a->state_dir, PERSONAL_FILE, img, len);
    free(img);
    return rc;
}

/* ---------------------------------------------------------- the directory */

int plait__agent_state_open(plait_agent_t *a)
{
    int rc;
    if (mkdir(a->state_dir, 0700) != 0 && errno != EEXIST)
        return plait_fail(PLAIT_EIO, "state dir %s: %s", a->state_dir, strerror(errno));
    if ((rc = plait__agent_state_load(a->state_dir, &a->state)) != 0) return rc;
    /* A crash between recording the Ack and deleting the stored words leaves words
     * for an acknowledged round: they can never be sent again, so drop them now. */
    plait__agent_pending_t p;
    int prc = plait__agent_pending_load(a->state_dir, &p);
    if ((prc == 0 && p.round_id <= a->state.last_acked) || prc == PLAIT_EPROTO) {
        PLAIT_LOG(PLAIT_LOG_INFO, "agent %s: dropping a %s stored update", a->device_id,
                  prc == 0 ? "stale" : "damaged");
        if ((rc = plait__agent_pending_remove(a->state_dir)) != 0) {
            plait__agent_pending_free(&p);
            return rc;
        }
    }
    plait__agent_pending_free(&p);
    plait_clear_error();
    return 0;
}
