/*
 * model.c: loading llama2.c legacy (v0) float32 checkpoints, read-only.
 *
 * File layout (all little-endian): 7 int32 header fields (dim, hidden_dim,
 * n_layers, n_heads, n_kv_heads, vocab_size, seq_len; a negative vocab_size
 * means the classifier is stored separately), then float32 tensors in the
 * order of plait_model_weights_t, then two legacy RoPE tables of
 * seq_len * head_size / 2 floats each (skipped), then the classifier when
 * untied. The header is parsed field by field, every field is bounded before
 * any size is computed, sizes are computed in 64-bit with overflow checks,
 * and the file size must equal the size the header implies exactly: a
 * truncated or oversized file is rejected before a weight is touched.
 *
 * The file is read into one heap buffer, not memory-mapped: a mapping of a
 * file that is truncated or rewritten while a trainer or daemon runs kills
 * the process with SIGBUS, while a copy stays valid and is exactly what was
 * hashed. A file that changes while it is read is refused. Every weight
 * must be finite (a NaN or infinity is refused naming its tensor), so the
 * kernels never see one from the file. The SHA-256 of the bytes is computed
 * at load (it binds adapters to their base model).
 */
#include "plait/le.h"
#include "plait/model.h"
#include "plait/crypto.h"
#include "plait/file.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define HEADER_BYTES 28

void plait_model_init(plait_model_t *m) { memset(m, 0, sizeof(*m)); }

int plait_model_config_validate(plait_model_config_t *c)
{
#define BOUND(field, lo, hi)                                                               \
    if (c->field < (lo) || c->field > (hi))                                                \
        return plait_fail(PLAIT_EPROTO, "model header: " #field " = %d is outside %d..%d", \
                          c->field, (int)(lo), (int)(hi));
    BOUND(dim, 1, PLAIT_MODEL_MAX_DIM);
    BOUND(hidden_dim, 1, PLAIT_MODEL_MAX_HIDDEN);
    BOUND(n_layers, 1, PLAIT_MODEL_MAX_LAYERS);
    BOUND(n_heads, 1, PLAIT_MODEL_MAX_HEADS);
    BOUND(n_kv_heads, 1, PLAIT_MODEL_MAX_HEADS);
    BOUND(vocab_size, 1, PLAIT_MODEL_MAX_VOCAB);
    BOUND(seq_len, 1, PLAIT_MODEL_MAX_SEQ);
#undef BOUND
    if (c->dim % c->n_heads != 0)
        return plait_fail(PLAIT_EPROTO, "model header: dim %d is not a multiple of n_heads %d", c->dim,
                          c->n_heads);
    if (c->n_kv_heads > c->n_heads || c->n_heads % c->n_kv_heads != 0)
        return plait_fail(PLAIT_EPROTO, "model header: n_heads %d is not a multiple of n_kv_heads %d",
                          c->n_heads, c->n_kv_heads);
    c->head_size = c->dim / c->n_heads;
    if (c->head_size % 2 != 0)
        return plait_fail(PLAIT_EPROTO, "model header: head size %d is odd (rotary pairs need even)",
                          c->head_size);
    c->kv_dim = c->n_kv_heads * c->head_size;
    c->shared = c->shared ? 1 : 0;
    if (c->rope_theta == 0.0f) c->rope_theta = 10000.0f;
    if (c->rope_scale == 0.0f) c->rope_scale = 1.0f;
    if (c->rms_eps == 0.0f) c->rms_eps = 1e-5f;
    if (!(c->rope_theta > 1.0f && c->rope_theta < 1e12f) || !(c->rope_scale >= 1.0f && c->rope_scale <= 1024.0f) ||
        !(c->rms_eps > 0.0f && c->rms_eps < 1.0f))
        return plait_fail(PLAIT_EPROTO, "model header: rope_theta %g, rope_scale %g or rms_eps %g is absurd",
                          (double)c->rope_theta, (double)c->rope_scale, (double)c->rms_eps);
    c->rope_neox = c->rope_neox ? 1 : 0;
    c->qkv_bias = c->qkv_bias ? 1 : 0;
    return 0;
}

/* Number of floats the weights occupy, excluding the RoPE tables. Bounded
 * fields keep every product below 2^62, so no overflow is possible. */
static uint64_t weight_floats(const plait_model_config_t *c)
{
    uint64_t C = (uint64_t)c->dim, H = (uint64_t)c->hidden_dim, L = (uint64_t)c->n_layers;
    uint64_t V = (uint64_t)c->vocab_size, KV = (uint64_t)c->kv_dim;
    uint64_t n = V * C;                          /* token_embedding */
    n += L * C;                                  /* rms_att */
    n += L * C * C + 2 * L * KV * C + L * C * C; /* wq wk wv wo */
    n += L * C;                                  /* rms_ffn */
    n += 3 * L * H * C;                          /* w1 w2 w3 */
    n += C;                                      /* rms_final */
    if (!c->shared) n += V * C;                  /* wcls */
    return n;
}

static void point_weights(plait_model_t *m, const float *p, const float *wcls_if_untied)
{
    const plait_model_config_t *c = &m->cfg;
    size_t C = (size_t)c->dim, H = (size_t)c->hidden_dim, L = (size_t)c->n_layers;
    size_t V = (size_t)c->vocab_size, KV = (size_t)c->kv_dim;
    m->w.token_embedding = p; p += V * C;
    m->w.rms_att = p;         p += L * C;
    m->w.wq = p;              p += L * C * C;
    m->w.wk = p;              p += L * KV * C;
    m->w.wv = p;              p += L * KV * C;
    m->w.wo = p;              p += L * C * C;
    m->w.rms_ffn = p;         p += L * C;
    m->w.w1 = p;              p += L * H * C;
    m->w.w2 = p;              p += L * C * H;
    m->w.w3 = p;              p += L * H * C;
    m->w.rms_final = p;       p += C;
    m->w.wcls = c->shared ? m->w.token_embedding : (wcls_if_untied ? wcls_if_untied : p);
}

/* Typed views of the F32 matrices of a llama2.c or random model. */
static int point_mats(plait_model_t *m)
{
    const plait_model_config_t *c = &m->cfg;
    size_t L = (size_t)c->n_layers;
    m->mats = calloc(L * PLAIT_NPROJ + 2, sizeof(*m->mats));
    if (!m->mats) return plait_fail(PLAIT_ENOMEM, "model: matrix table");
    for (size_t l = 0; l < L; l++)
        for (int p = 0; p < PLAIT_NPROJ; p++) {
            int in, out;
            plait_proj_shape(c, (plait_proj_t)p, &in, &out);
            plait_wmat_t *w = &m->mats[l * PLAIT_NPROJ + (size_t)p];
            w->data = plait_proj_weight(m, (int)l, (plait_proj_t)p);
            w->type = PLAIT_DT_F32;
            w->row_bytes = (size_t)in * sizeof(float);
        }
    m->mats[L * PLAIT_NPROJ] = (plait_wmat_t){m->w.token_embedding, PLAIT_DT_F32, (size_t)c->dim * sizeof(float)};
    m->mats[L * PLAIT_NPROJ + 1] = (plait_wmat_t){m->w.wcls, PLAIT_DT_F32, (size_t)c->dim * sizeof(float)};
    return 0;
}

const plait_wmat_t *plait_model_proj(const plait_model_t *m, int l, plait_proj_t p)
{
    return &m->mats[(size_t)l * PLAIT_NPROJ + (size_t)p];
}

const plait_wmat_t *plait_model_embedding(const plait_model_t *m)
{
    return &m->mats[(size_t)m->cfg.n_layers * PLAIT_NPROJ];
}

const plait_wmat_t *plait_model_classifier(const plait_model_t *m)
{
    return &m->mats[(size_t)m->cfg.n_layers * PLAIT_NPROJ + 1];
}

int plait_model_is_f32(const plait_model_t *m)
{
    size_t n = (size_t)m->cfg.n_layers * PLAIT_NPROJ + 2;
    for (size_t i = 0; i < n; i++)
        if (m->mats[i].type != PLAIT_DT_F32) return 0;
    return 1;
}

static int32_t rd_i32(const uint8_t *b)
{
    return (int32_t)plait_le32(b);
}

/* Every named tensor of the checkpoint, in file order, for naming a bad value. */
static int check_finite(const plait_model_t *m, const char *path)
{
    const plait_model_config_t *c = &m->cfg;
    size_t C = (size_t)c->dim, H = (size_t)c->hidden_dim, L = (size_t)c->n_layers;
    size_t V = (size_t)c->vocab_size, KV = (size_t)c->kv_dim;
    struct {
        const char *name;
        const float *p;
        size_t n;
    } t[] = {{"token_embedding", m->w.token_embedding, V * C}, {"rms_att", m->w.rms_att, L * C},
             {"wq", m->w.wq, L * C * C}, {"wk", m->w.wk, L * KV * C}, {"wv", m->w.wv, L * KV * C},
             {"wo", m->w.wo, L * C * C}, {"rms_ffn", m->w.rms_ffn, L * C}, {"w1", m->w.w1, L * H * C},
             {"w2", m->w.w2, L * C * H}, {"w3", m->w.w3, L * H * C}, {"rms_final", m->w.rms_final, C},
             {"wcls", m->w.wcls, c->shared ? 0 : V * C}};
    for (size_t k = 0; k < sizeof(t) / sizeof(t[0]); k++)
        for (size_t i = 0; i < t[k].n; i++)
            if (!isfinite(t[k].p[i]))
                return plait_fail(PLAIT_EPROTO, "model %s: tensor %s holds a non-finite value (%g) at index %zu",
                                  path, t[k].name, (double)t[k].p[i], i);
    return 0;
}

int plait_model_load(plait_model_t *m, const char *path)
{
    int ret = PLAIT_EINTERNAL;
    int fd = -1;
    uint8_t *img = NULL;
    struct stat st;
    char label[300];

    snprintf(label, sizeof(label), "model %s", path ? path : "(null)");
    /* Non-blocking open and fstat first: a FIFO is refused, not waited on. */
    if ((ret = plait_file_open(path, label, &fd, &st)) != 0)
        return ret == PLAIT_ENOENT || ret == PLAIT_EINVAL ? plait_fail(PLAIT_EIO, "%s", plait_errmsg())
                                                          : ret; /* documented: EIO */
    uint8_t magic[4];
    if (st.st_size >= 4 && pread(fd, magic, 4, 0) == 4 && memcmp(magic, "GGUF", 4) == 0) {
        close(fd);
        return plait_model_load_gguf(m, path); /* mapped, see model_gguf.c */
    }
    if ((uint64_t)st.st_size < HEADER_BYTES) {
        ret = plait_fail(PLAIT_EPROTO, "model %s: file is %lld bytes, shorter than the 28-byte header",
                         path, (long long)st.st_size);
        goto exit;
    }
    uint8_t hdr[HEADER_BYTES];
    if (pread(fd, hdr, HEADER_BYTES, 0) != HEADER_BYTES) {
        ret = plait_fail(PLAIT_EIO, "model %s: cannot read header", path);
        goto exit;
    }
    plait_model_config_t c;
    memset(&c, 0, sizeof(c));
    c.dim = rd_i32(hdr);
    c.hidden_dim = rd_i32(hdr + 4);
    c.n_layers = rd_i32(hdr + 8);
    c.n_heads = rd_i32(hdr + 12);
    c.n_kv_heads = rd_i32(hdr + 16);
    int32_t vocab = rd_i32(hdr + 20);
    c.seq_len = rd_i32(hdr + 24);
    c.shared = vocab > 0;
    c.vocab_size = vocab == INT32_MIN ? 0 : (vocab < 0 ? -vocab : vocab);
    if ((ret = plait_model_config_validate(&c)) != 0) {
        /* Prefix the file name to the detail the validator recorded. */
        char detail[400];
        snprintf(detail, sizeof(detail), "%s", plait_errmsg());
        ret = plait_fail(ret, "model %s: %s", path, detail);
        goto exit;
    }
    uint64_t rope = 2ull * (uint64_t)c.seq_len * (uint64_t)(c.head_size / 2);
    uint64_t expect = HEADER_BYTES + 4ull * (weight_floats(&c) + rope);
    if ((uint64_t)st.st_size != expect) {
        ret = plait_fail(PLAIT_EPROTO,
                         "model %s: file is %lld bytes but its header (dim %d, layers %d, vocab %d%s) "
                         "implies %llu: %s",
                         path, (long long)st.st_size, c.dim, c.n_layers, c.vocab_size,
                         c.shared ? ", tied" : ", untied", (unsigned long long)expect,
                         (uint64_t)st.st_size < expect ? "truncated" : "trailing bytes");
        goto exit;
    }
    /* Copied, not mapped: a mapped file that is truncated or rewritten while
     * a trainer or a daemon runs would kill the process with SIGBUS. The
     * copy is what was hashed, so the weights stay the ones the hash names. */
    if (expect > SIZE_MAX || !(img = malloc((size_t)expect))) {
        ret = plait_fail(PLAIT_ENOMEM, "model %s: %llu bytes", path, (unsigned long long)expect);
        goto exit;
    }
    size_t n = (size_t)expect, off = 0;
    while (off < n) {
        ssize_t r = pread(fd, img + off, n - off, (off_t)off);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) {
            ret = plait_fail(PLAIT_EIO, "model %s: read failed: %s", path, strerror(errno));
            goto exit;
        }
        if (r == 0) break;
        off += (size_t)r;
    }
    struct stat st2;
    uint8_t extra;
    if (off != n || pread(fd, &extra, 1, (off_t)n) != 0 || fstat(fd, &st2) != 0 || st2.st_size != st.st_size ||
        st2.st_mtim.tv_sec != st.st_mtim.tv_sec || st2.st_mtim.tv_nsec != st.st_mtim.tv_nsec) {
        ret = plait_fail(PLAIT_EIO, "model %s: the file changed while it was read (truncated or rewritten?)",
                         path);
        goto exit;
    }
    /* The header is 28 bytes and malloc aligns to 8 or more, so the floats
     * after it are 4-byte aligned. */
    const float *base = (const float *)(img + HEADER_BYTES);
    m->cfg = c;
    /* Untied classifier follows the RoPE tables. */
    uint64_t before_cls = weight_floats(&c) - (c.shared ? 0 : (uint64_t)c.vocab_size * (uint64_t)c.dim);
    point_weights(m, base, c.shared ? NULL : base + before_cls + rope);
    if ((ret = check_finite(m, path)) != 0) {
        memset(&m->w, 0, sizeof(m->w));
        memset(&m->cfg, 0, sizeof(m->cfg));
        goto exit;
    }
    m->map = img;
    m->map_len = n;
    img = NULL;
    if ((ret = point_mats(m)) != 0) {
        plait_model_free(m);
        goto exit;
    }
    plait_sha256((const uint8_t *)m->map, m->map_len, m->sha256);
    ret = 0;
exit:
    free(img);
    if (fd >= 0) close(fd);
    return ret;
}

static uint64_t mix64(uint64_t *s)
{
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

int plait_model_init_random(plait_model_t *m, const plait_model_config_t *cfg, uint64_t seed)
{
    plait_model_config_t c = *cfg;
    int rc = plait_model_config_validate(&c);
    if (rc != 0) return rc;
    uint64_t n = weight_floats(&c);
    if (n > SIZE_MAX / sizeof(float)) return plait_fail(PLAIT_ENOMEM, "random model of %llu floats", (unsigned long long)n);
    float *buf = malloc((size_t)n * sizeof(float));
    if (!buf) return plait_fail(PLAIT_ENOMEM, "random model of %llu floats", (unsigned long long)n);
    uint64_t s = seed;
    for (uint64_t i = 0; i < n; i++) {
        /* Box-Muller, std 0.02 as GPT-2-style initializations use. */
        double u1 = ((double)(mix64(&s) >> 11) + 0.5) * (1.0 / 9007199254740992.0);
        double u2 = (double)(mix64(&s) >> 11) * (1.0 / 9007199254740992.0);
        buf[i] = (float)(0.02 * sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
    }
    c.qkv_bias = 0; /* random models have no biases */
    m->cfg = c;
    m->owned = buf;
    point_weights(m, buf, NULL);
    /* Norm weights start at one. */
    size_t C = (size_t)c.dim, L = (size_t)c.n_layers;
    for (size_t i = 0; i < L * C; i++) ((float *)m->w.rms_att)[i] = 1.0f;
    for (size_t i = 0; i < L * C; i++) ((float *)m->w.rms_ffn)[i] = 1.0f;
    for (size_t i = 0; i < C; i++) ((float *)m->w.rms_final)[i] = 1.0f;
    memset(m->sha256, 0, sizeof(m->sha256));
    if ((rc = point_mats(m)) != 0) plait_model_free(m);
    return rc;
}

void plait_model_free(plait_model_t *m)
{
    if (!m) return;
    if (m->is_gguf) plait_file_unmap(m->map, m->map_len);
    else free(m->map);
    free(m->owned);
    free(m->mats);
    free((void *)m->bias);
    free(m->aux);
    memset(m, 0, sizeof(*m));
}
