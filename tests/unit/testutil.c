/*
 * testutil.c: see testutil.h.
 */
#include "testutil.h"

#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <dirent.h>
#include <unistd.h>

const char *tu_assets_dir(void)
{
    const char *e = getenv("PLAIT_ASSETS");
    return (e && *e) ? e : PLAIT_DEFAULT_ASSETS;
}

const char *tu_reference_dir(void)
{
    const char *e = getenv("PLAIT_REFERENCE");
    return (e && *e) ? e : PLAIT_DEFAULT_REFERENCE;
}

char *tu_path(const char *dir, const char *name)
{
    size_t n = strlen(dir) + strlen(name) + 2;
    char *p = malloc(n);
    if (p) snprintf(p, n, "%s/%s", dir, name);
    return p;
}

uint8_t *tu_read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    if (fseek(f, 0, SEEK_END) != 0) { fclose(f); return NULL; }
    long sz = ftell(f);
    if (sz < 0) { fclose(f); return NULL; }
    rewind(f);
    uint8_t *buf = malloc((size_t)sz + 1);
    if (buf && fread(buf, 1, (size_t)sz, f) != (size_t)sz) { free(buf); buf = NULL; }
    fclose(f);
    if (buf) { buf[sz] = 0; if (len) *len = (size_t)sz; }
    return buf;
}

int tu_write_file(const char *path, const void *buf, size_t len)
{
    FILE *f = fopen(path, "wb");
    if (!f) return -1;
    size_t w = fwrite(buf, 1, len, f);
    int rc = fclose(f);
    return (w == len && rc == 0) ? 0 : -1;
}

char *tu_tmpdir(const char *tag)
{
    char tmpl[512];
    snprintf(tmpl, sizeof(tmpl), "%s/tmp-%s-XXXXXX", PLAIT_BINARY_DIR, tag);
    char *d = mkdtemp(tmpl);
    return d ? strdup(d) : NULL;
}

void tu_rmdir(const char *dir)
{
    if (!dir) return;
    DIR *d = opendir(dir);
    if (!d) return;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
        char *p = tu_path(dir, e->d_name);
        if (p) unlink(p);
        free(p);
    }
    closedir(d);
    rmdir(dir);
}

void tu_put_i32le(uint8_t *b, int32_t v)
{
    uint32_t u = (uint32_t)v;
    b[0] = (uint8_t)u, b[1] = (uint8_t)(u >> 8), b[2] = (uint8_t)(u >> 16),
    b[3] = (uint8_t)(u >> 24);
}

uint64_t tu_splitmix64(uint64_t *s)
{
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

double tu_unif(uint64_t *s)
{
    return (double)(tu_splitmix64(s) >> 11) * (1.0 / 9007199254740992.0);
}

/* A model of the shape with weights large enough that every path matters:
 * embeddings std ~0.5, projections std ~0.6/sqrt(in), norm weights 1 +- 0.3. */
void tu_make_model(plait_model_t *m, const tu_shape_t *s, uint64_t seed)
{
    plait_model_config_t c;
    memset(&c, 0, sizeof(c));
    c.dim = s->C;
    c.hidden_dim = s->H;
    c.n_layers = s->L;
    c.n_heads = s->NH;
    c.n_kv_heads = s->NKV;
    c.vocab_size = s->V;
    c.seq_len = s->seq;
    c.shared = s->shared;
    plait_model_init(m);
    ck_assert_int_eq(plait_model_init_random(m, &c, seed), 0);
    size_t C = (size_t)c.dim, L = (size_t)c.n_layers, V = (size_t)c.vocab_size;
    float *emb = (float *)m->w.token_embedding;
    for (size_t i = 0; i < V * C; i++)
        emb[i] *= 25.0f;
    if (!c.shared) {
        float *cls = (float *)m->w.wcls;
        for (size_t i = 0; i < V * C; i++)
            cls[i] *= 25.0f;
    }
    for (int l = 0; l < (int)L; l++)
        for (int p = 0; p < PLAIT_NPROJ; p++) {
            int in, out;
            plait_proj_shape(&m->cfg, (plait_proj_t)p, &in, &out);
            float *w = (float *)plait_proj_weight(m, l, (plait_proj_t)p);
            float k = (float)(0.6 / sqrt((double)in) / 0.02);
            for (size_t i = 0; i < (size_t)in * (size_t)out; i++)
                w[i] *= k;
        }
    uint64_t r = seed ^ 0x5555;
    float *ra = (float *)m->w.rms_att, *rf = (float *)m->w.rms_ffn, *rfin = (float *)m->w.rms_final;
    for (size_t i = 0; i < L * C; i++)
        ra[i] = (float)(1.0 + 0.6 * (tu_unif(&r) - 0.5));
    for (size_t i = 0; i < L * C; i++)
        rf[i] = (float)(1.0 + 0.6 * (tu_unif(&r) - 0.5));
    for (size_t i = 0; i < C; i++)
        rfin[i] = (float)(1.0 + 0.6 * (tu_unif(&r) - 0.5));
}
