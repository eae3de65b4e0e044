/*
 * server_dl.c: how a device's adapter download is encoded (docs/protocol.md,
 * "Adapter encodings").
 *
 * Every version (blob_t) keeps the parameter arena it serializes. The
 * service keeps the download_delta_keep versions before the current one
 * (s->hist), each as its arena and hash alone (a base for deltas: 4 bytes a
 * parameter); a version's file and encodings live while a connection sends them. A device that asks for the current version from offset 0 says
 * which encodings it can rebuild and, for a delta, the SHA-256 of the
 * adapter it holds; it gets the smallest of:
 *   - FULL: the adapter file;
 *   - DELTA: plait/delta.h from a kept version with that hash;
 *   - SEEDED (FFA-LoRA): the B span, A being what the task's a_seed gives.
 * Each encoding is built once per version (and per base for a delta), on
 * first use, and cached on the blob, so its cost does not grow with the
 * cohort; so is a failure to build one (out of memory), so that the O(n)
 * attempt is not repeated for every later request of that version; a built encoding is immutable and lives as long as its blob, which
 * every connection sending it holds a reference to. The device checks the
 * rebuilt adapter against the task's adapter_sha256 and falls back to a full
 * download on any mismatch.
 *
 * With download_delta_bits = 8 or 16 the commit job (worker thread) makes
 * each version the previous one plus a delta quantized per block, so the
 * delta it caches is exact for that version: the operator trades a rounding
 * of each round's step (at most half a step of its block's largest change)
 * for a download of about bits/32 of the adapter.
 *
 * Runs on the loop thread, except plait__srv_commit_quant (the commit job's
 * worker; it reads only the current blob's immutable arena and writes the new
 * blob, which no connection sees yet). Logs carry sizes and versions only.
 */
#include <stdlib.h>
#include <string.h>

#include "server_int.h"

#include "plait/adapter.h"
#include "plait/crypto.h"
#include "plait/delta.h"
#include "plait/log.h"

int plait__srv_blob_set_params(blob_t *b, const float *params, size_t n_params, size_t n_a)
{
    free(b->params);
    b->params = malloc(n_params * sizeof(float));
    if (!b->params) return plait_fail(PLAIT_ENOMEM, "adapter arena of %zu floats", n_params);
    memcpy(b->params, params, n_params * sizeof(float));
    b->n_params = n_params;
    b->n_a = n_a;
    return 0;
}

void plait__srv_hist_push(plait_server_t *s, blob_t *old)
{
    size_t keep = (size_t)s->cfg.download_delta_keep;
    if (keep > DL_KEEP_MAX) keep = DL_KEEP_MAX;
    if (!old) return;
    if (keep == 0 || !old->params) {
        plait__srv_blob_unref(old);
        return;
    }
    /* Only the arena and the hash serve as a base from now on (no request is for an old
     * version): they move to a small entry, and the file and encodings go with the last
     * connection still sending them (at once when none is). */
    blob_t *h = calloc(1, sizeof(*h));
    if (!h) { /* best effort: no deltas from it */
        plait__srv_blob_unref(old);
        return;
    }
    h->refs = 1;
    h->version = old->version;
    memcpy(h->sha, old->sha, 32);
    h->params = old->params;
    h->n_params = old->n_params;
    h->n_a = old->n_a;
    old->params = NULL;
    plait__srv_blob_unref(old);
    old = h;
    while (s->n_hist >= keep) plait__srv_blob_unref(s->hist[--s->n_hist]); /* never past DL_KEEP_MAX */
    memmove(s->hist + 1, s->hist, s->n_hist * sizeof(s->hist[0]));
    s->hist[0] = old;
    s->n_hist++;
}

void plait__srv_hist_clear(plait_server_t *s)
{
    for (size_t i = 0; i < s->n_hist; i++)
        plait__srv_blob_unref(s->hist[i]);
    s->n_hist = 0;
}

void plait__srv_hist_load(plait_server_t *s)
{
    size_t keep = (size_t)s->cfg.download_delta_keep;
    if (keep > DL_KEEP_MAX) keep = DL_KEEP_MAX;
    plait_model_t mm;
    memset(&mm, 0, sizeof(mm));
    mm.cfg = s->mcfg;
    memcpy(mm.sha256, s->base_sha, 32);
    /* oldest first, so that each push leaves the newest at hist[0] */
    uint64_t v0 = s->blob->version > keep ? s->blob->version - keep : 1;
    for (uint64_t v = v0; v < s->blob->version; v++) {
        blob_t *b = calloc(1, sizeof(*b));
        if (!b) return;
        b->refs = 1;
        b->version = v;
        plait_lora_t l;
        plait_lora_init(&l);
        int rc = plait__svc_version(s->store, (int64_t)v, &b->data, &b->len);
        if (rc == 0) rc = plait_adapter_load_mem(&l, b->data, b->len, &mm, 0);
        if (rc == 0 && (l.n_params != s->lora.n_params || l.n_a != s->lora.n_a))
            rc = plait_fail(PLAIT_EMISMATCH, "LoRA shape differs from the configuration");
        if (rc == 0) rc = plait__srv_blob_set_params(b, l.params, l.n_params, l.n_a);
        plait_lora_free(&l);
        if (rc != 0) { /* an older version that does not fit: no deltas from it */
            PLAIT_LOG(PLAIT_LOG_INFO, "version %llu not kept for download deltas: %s", (unsigned long long)v,
                      plait_errmsg());
            plait__srv_blob_unref(b);
            continue;
        }
        plait_sha256(b->data, b->len, b->sha);
        /* the file is not sent any more: only the arena and the hash are needed */
        free(b->data);
        b->data = NULL;
        b->len = 0;
        plait__srv_hist_push(s, b);
    }
}

int plait__srv_commit_quant(plait_server_t *s, blob_t *nb)
{
    const blob_t *prev = s->blob;
    size_t n = s->lora.n_params;
    if (!prev || !prev->params || prev->n_params != n)
        return plait_fail(PLAIT_ENOENT, "the previous version's arena is not at hand");
    float *com = malloc(n * sizeof(float));
    if (!com) return plait_fail(PLAIT_ENOMEM, "quantized commit: %zu floats", n);
    uint8_t *d = NULL;
    size_t len = 0;
    int rc = plait_delta_encode_quant(prev->params, s->lora.params, n,
                                      (unsigned)s->cfg.download_delta_bits,
                                      PLAIT_DELTA_BLOCK_DEFAULT, com, &d, &len);
    if (rc == 0) rc = plait_round_replace_global(s->round, com + s->span_off, s->span_len);
    if (rc != 0) {
        free(com);
        free(d);
        return rc;
    }
    memcpy(s->lora.params, com, n * sizeof(float));
    free(com);
    memcpy(nb->delta[0].base, prev->sha, 32);
    nb->delta[0].data = d;
    nb->delta[0].len = len;
    nb->n_delta = 1;
    return 0;
}

/* The delta from base to b: cached, or encoded exactly now and cached. NULL when it cannot be
 * built. */
static const dl_delta_t *delta_for(blob_t *b, const blob_t *base)
{
    for (size_t i = 0; i < b->n_delta; i++)
        if (memcmp(b->delta[i].base, base->sha, 32) == 0) return b->delta[i].data ? &b->delta[i] : NULL;
    if (b->n_delta == sizeof(b->delta) / sizeof(b->delta[0]) || base->n_params != b->n_params)
        return NULL;
    dl_delta_t *d = &b->delta[b->n_delta];
    memcpy(d->base, base->sha, 32);
    b->n_delta++; /* a failure is kept too (data NULL): each request would pay the O(n) attempt again */
    if (plait_delta_encode_exact(base->params, b->params, b->n_params, &d->data, &d->len) != 0) {
        d->data = NULL;
        d->len = 0;
        PLAIT_LOG(PLAIT_LOG_WARN, "download delta v%llu -> v%llu: %s; sending full adapters to devices holding v%llu",
                  (unsigned long long)base->version, (unsigned long long)b->version, plait_errmsg(),
                  (unsigned long long)base->version);
        return NULL;
    }
    PLAIT_LOG(PLAIT_LOG_DEBUG, "download delta v%llu -> v%llu: %zu bytes (adapter %zu)",
              (unsigned long long)base->version, (unsigned long long)b->version, d->len, b->len);
    return d;
}

/* The B span as float32 little-endian, built once. */
static int seeded_for(blob_t *b)
{
    if (b->seeded) return 0;
    if (b->seeded_failed) return PLAIT_ENOMEM; /* tried once for this version */
    size_t n = b->n_params - b->n_a;
    if (n == 0) return PLAIT_ENOENT;
    uint8_t *p = malloc(n * 4);
    if (!p) {
        b->seeded_failed = 1;
        PLAIT_LOG(PLAIT_LOG_WARN, "seeded encoding of v%llu: out of memory for %zu bytes; sending full adapters",
                  (unsigned long long)b->version, n * 4);
        return plait_fail(PLAIT_ENOMEM, "seeded encoding: %zu bytes", n * 4);
    }
    for (size_t i = 0; i < n; i++) {
        uint32_t u;
        memcpy(&u, &b->params[b->n_a + i], 4);
        p[4 * i] = (uint8_t)u;
        p[4 * i + 1] = (uint8_t)(u >> 8);
        p[4 * i + 2] = (uint8_t)(u >> 16);
        p[4 * i + 3] = (uint8_t)(u >> 24);
    }
    b->seeded = p;
    b->seeded_len = n * 4;
    return 0;
}

int plait__srv_dl_choose(conn_t *c, const plait_msg_adapter_request_t *r)
{
    plait_server_t *s = c->srv;
    blob_t *b = c->dl;
    c->dl_enc = PLAIT_ADAPTER_FULL;
    c->dl_data = b->data;
    c->dl_len = b->len;
    if (r->offset == 0 && b->params) {
        if ((r->accept & (1u << PLAIT_ADAPTER_DELTA)) && r->has_base) {
            for (size_t i = 0; i < s->n_hist; i++) {
                if (memcmp(s->hist[i]->sha, r->base_sha256, 32) != 0) continue;
                const dl_delta_t *d = delta_for(b, s->hist[i]);
                if (d && d->len < c->dl_len) {
                    c->dl_enc = PLAIT_ADAPTER_DELTA;
                    c->dl_data = d->data;
                    c->dl_len = d->len;
                }
                break;
            }
        }
        if ((r->accept & (1u << PLAIT_ADAPTER_SEEDED)) && s->mode == PLAIT_LORA_MODE_FFA &&
            seeded_for(b) == 0 && b->seeded_len < c->dl_len) {
            c->dl_enc = PLAIT_ADAPTER_SEEDED;
            c->dl_data = b->seeded;
            c->dl_len = b->seeded_len;
        }
    }
    s->m.downloads[c->dl_enc]++;
    s->dl_round_n++;
    return 0;
}
