/*
 * agent_serve.c: the adapter a device serves inference with (client.h,
 * plait_agent_serving). After a round's local training the agent runs the
 * validated personalization of personal.h on its own training text, from
 * the round's global adapter (FedSA-LoRA: the global A with its own B), and
 * keeps the winner in its state directory:
 *
 *   serve.safetensors  the chosen adapter (global, personal or a mix), in one
 *   serve-b.safetensors  of two slots
 *   serve_bias.bin     the slot's personal output bias (personal.h step 4),
 *   serve_bias-b.bin   when one beat the chosen adapter on validation:
 *                      "PLB2", u32 V, then V float32 (little-endian)
 *   serve_knn.bin      the slot's kNN memory of the device's text (personal.h
 *   serve_knn-b.bin    step 5, knn.h), when one beat the rest on validation:
 *                      plait_knn_save_mem's "PLK1" image
 *   serve.txt          why: "kind mix val_global val_personal val_chosen
 *                      best_step val_tokens round slot bias val_bias knn
 *                      val_knn", one line of text (slot 0 or 1, bias and knn
 *                      0 or 1; a line without the knn fields means no memory,
 *                      one without the bias fields no bias, one without the
 *                      slot, written before the slots, means slot 0)
 *
 * A new choice is written to the slot serve.txt does not name, then
 * serve.txt is replaced (both atomically): a crash between the two leaves
 * the previous adapter and its reason, never a new adapter with an old
 * reason (the slot's bias and memory files are written before serve.txt too).
 *
 * Both are derived from the device's records: they never leave the device
 * (no message or server log carries them) and `plait-agent forget --state`
 * erases them (agent_privacy.c).
 *
 * Contract: a failure here never fails the round: the caller logs it and the
 * previous serving adapter (if any) stays. Everything trained is wiped.
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "agent_int.h"
#include "plait/adapter.h"
#include "plait/file.h"
#include "plait/le.h"
#include "plait/personal.h"
#include "plait/plait.h"

#define BIAS_MAGIC "PLB2"

/* The bias file image: magic, V, V little-endian floats. */
static int bias_image(const float *bias, size_t V, uint8_t **out, size_t *len)
{
    *len = 8 + 4 * V;
    uint8_t *b = malloc(*len);
    if (!b) return plait_fail(PLAIT_ENOMEM, "serve: bias image");
    memcpy(b, BIAS_MAGIC, 4);
    for (int k = 0; k < 4; k++) b[4 + k] = (uint8_t)((uint32_t)V >> (8 * k));
    for (size_t v = 0; v < V; v++) {
        uint32_t u;
        memcpy(&u, &bias[v], 4);
        for (int k = 0; k < 4; k++) b[8 + 4 * v + (size_t)k] = (uint8_t)(u >> (8 * k));
    }
    *out = b;
    return 0;
}

/* Overwrite and remove dir/name if it is there (best effort: a stale file is never read, serve.txt says which
 * one is). Every file here is derived from the device's text (the memory holds its tokens): none is left to
 * the filesystem's free blocks, and a slot is wiped before it is written again. */
static void drop(const char *dir, const char *name)
{
    char p[4096];
    int k = snprintf(p, sizeof(p), "%s/%s", dir, name);
    if (k > 0 && (size_t)k < sizeof(p) && plait__agent_wipe_file(p) < 0)
        PLAIT_LOG(PLAIT_LOG_WARN, "serve: %s: cannot remove: %s", name, plait_errmsg());
}

/* serve.txt, parsed and checked: 8 fields (before the slots), 9 (with the slot), 11 (with the bias) or 13 (with
 * the kNN memory). */
typedef struct {
    char kind[16];
    double mix, vg, vp, vc, vbias, vknn;
    int best, slot, bias, knn;
    size_t vt;
    unsigned long long round;
} serve_info_t;

static int parse_info(const uint8_t *line, size_t len, serve_info_t *si)
{
    char buf[257];
    if (len >= sizeof(buf)) return 0;
    memcpy(buf, line, len);
    buf[len] = '\0';
    memset(si, 0, sizeof(*si));
    si->vbias = si->vknn = NAN;
    int n = sscanf(buf, "%15s %lf %lf %lf %lf %d %zu %llu %d %d %lf %d %lf", si->kind, &si->mix, &si->vg, &si->vp,
                   &si->vc, &si->best, &si->vt, &si->round, &si->slot, &si->bias, &si->vbias, &si->knn, &si->vknn);
    if (n == 8 || n == 9) si->bias = 0, si->vbias = si->vc;
    else if ((n != 11 && n != 13) || (si->bias != 0 && si->bias != 1) || !isfinite(si->vbias))
        return 0;
    if (n < 13) si->knn = 0, si->vknn = si->vbias;
    else if ((si->knn != 0 && si->knn != 1) || !isfinite(si->vknn))
        return 0;
    return (si->slot == 0 || si->slot == 1) &&
           (strcmp(si->kind, "global") == 0 || strcmp(si->kind, "personal") == 0 || strcmp(si->kind, "mix") == 0) &&
           isfinite(si->mix) && si->mix >= 0 && si->mix <= 1 && isfinite(si->vg) && isfinite(si->vp) &&
           isfinite(si->vc);
}

/* dir/serve.txt read and parsed: 0; PLAIT_ENOENT (none chosen yet); PLAIT_EPROTO (malformed);
 * PLAIT_EINVAL (path too long); plait_file_read's codes. */
static int read_info(const char *state_dir, serve_info_t *si)
{
    char info[4096];
    int k = snprintf(info, sizeof(info), "%s/%s", state_dir, SERVE_INFO_FILE);
    if (k < 0 || (size_t)k >= sizeof(info)) return plait_fail(PLAIT_EINVAL, "serving: state path too long");
    uint8_t *line = NULL; /* one short line; plait_file_read refuses a FIFO or a file past 256 bytes */
    size_t ll = 0;
    int rr = plait_file_read(info, "serve.txt", 256, &line, &ll);
    if (rr == PLAIT_ENOENT)
        return plait_fail(PLAIT_ENOENT, "%s: no serving adapter chosen yet (it is chosen after a round)", state_dir);
    if (rr != 0) return rr;
    int ok = parse_info(line, ll, si);
    free(line);
    return ok ? 0 : plait_fail(PLAIT_EPROTO, "%s: malformed", info);
}

int plait__agent_serve_choose(const plait_model_t *m, const plait_lora_t *ref, const plait_corpus_t *train,
                              const char *state_dir, int B, int T, double lr, int train_a, int steps,
                              uint64_t seed, plait_pool_t *pool, int threads, int base_bf16, uint64_t round,
                              int (*stop)(void *ud), void *stop_ud, plait_personal_result_t *res)
{
    if (!m || !ref || !train || !state_dir || !res) return plait_fail(PLAIT_EINVAL, "serve: bad arguments");
    plait_lora_t l;
    plait_lora_init(&l);
    plait_trainer_t *tr = NULL;
    plait_corpus_t tpart, val;
    plait_corpus_init(&tpart);
    plait_corpus_init(&val);
    uint8_t *img = NULL, *bimg = NULL, *kimg = NULL;
    size_t len = 0, blen = 0, klen = 0, V = (size_t)m->cfg.vocab_size;
    float *bias = NULL;
    plait_knn_t knn;
    plait_knn_init(&knn);
    int rc = plait_lora_setup(&l, &ref->model, &ref->cfg);
    if (rc == 0 && l.n_params != ref->n_params) rc = plait_fail(PLAIT_EMISMATCH, "serve: adapter shape");
    if (rc == 0) rc = plait_personal_split(train, 0.15, T, &tpart, &val);
    if (rc == 0) rc = plait_personal_fill(&tpart, T);
    if (rc == 0) {
        plait_train_config_t tc = plait_train_config_default();
        tc.B = B;
        tc.T = T;
        tc.lr = lr;
        tc.train_a = train_a;
        tc.threads = threads > 0 ? threads : 1;
        tc.base_bf16 = base_bf16;
        tc.pool = pool;
        rc = plait_train_create(&tr, m, &l, &tc);
    }
    if (rc == 0) {
        plait_personal_config_t pc = plait_personal_config_default();
        pc.max_steps = steps > 0 ? steps : 1;
        pc.eval_every = pc.max_steps >= 20 ? 5 : (pc.max_steps + 3) / 4;
        pc.seed = seed;
        pc.val_windows = 64; /* a large store's tail: 64 windows validate well enough, at bounded cost */
        pc.stop = stop;
        pc.stop_ud = stop_ud;
        rc = plait_personal_fit(tr, &l, ref->params, &tpart, &val, &pc, res);
        if (rc == 0 && !(bias = calloc(V, sizeof(float)))) rc = plait_fail(PLAIT_ENOMEM, "serve: bias");
        if (rc == 0) { /* on the chosen adapter; a bias that cannot be fitted is not served, the adapter still is */
            int rb = plait_personal_fit_bias(tr, &tpart, &val, &pc, bias, res);
            if (rb != 0) { /* stopped too (out of time): the chosen adapter is still served */
                PLAIT_LOG(PLAIT_LOG_WARN, "serve: no output bias this round: %s", plait_errmsg());
                res->bias = 0;
                res->val_bias = res->val_chosen;
            }
        }
        if (rc == 0) { /* the kNN memory on top; likewise optional */
            int rk = plait_personal_fit_knn(tr, &tpart, &val, &pc, res->bias ? bias : NULL, &knn, res);
            if (rk != 0) { /* stopped too (out of time): the adapter and bias are still served */
                PLAIT_LOG(PLAIT_LOG_WARN, "serve: no kNN memory this round: %s", plait_errmsg());
                res->knn = 0;
                res->val_knn = res->bias ? res->val_bias : res->val_chosen;
            }
        }
    }
    if (rc == 0) rc = plait_adapter_save_mem(&l, m->sha256, &img, &len);
    int slot = 0; /* the slot the current serve.txt does not name (a missing or bad one names none) */
    if (rc == 0) {
        serve_info_t cur;
        if (read_info(state_dir, &cur) == 0) slot = !cur.slot;
        plait_clear_error();
        /* The slot not in use: what an older choice left there is wiped before it is replaced. */
        drop(state_dir, slot ? SERVE_FILE_B : SERVE_FILE);
        drop(state_dir, slot ? SERVE_BIAS_FILE_B : SERVE_BIAS_FILE);
        drop(state_dir, slot ? SERVE_KNN_FILE_B : SERVE_KNN_FILE);
        rc = plait__agent_atomic_write(state_dir, slot ? SERVE_FILE_B : SERVE_FILE, img, len);
    }
    if (rc == 0 && res->bias) rc = bias_image(bias, V, &bimg, &blen);
    if (rc == 0 && res->bias) rc = plait__agent_atomic_write(state_dir, slot ? SERVE_BIAS_FILE_B : SERVE_BIAS_FILE,
                                                             bimg, blen);
    if (rc == 0 && res->knn) rc = plait_knn_save_mem(&knn, &kimg, &klen);
    if (rc == 0 && res->knn)
        rc = plait__agent_atomic_write(state_dir, slot ? SERVE_KNN_FILE_B : SERVE_KNN_FILE, kimg, klen);
    if (rc == 0) {
        char why[256];
        int k = snprintf(why, sizeof(why), "%s %.4f %.6f %.6f %.6f %d %zu %llu %d %d %.6f %d %.6f\n",
                         plait_personal_kind_name(res->kind), res->mix, res->val_global, res->val_personal,
                         res->val_chosen, res->best_step, res->val_tokens, (unsigned long long)round, slot, res->bias,
                         res->val_bias, res->knn, res->val_knn);
        rc = plait__agent_atomic_write(state_dir, SERVE_INFO_FILE, (const uint8_t *)why, (size_t)k);
    }
    if (rc == 0) { /* the previous slot's files are no longer served: wipe them (best effort); this slot's were
                    * wiped before it was written, so a bias or memory not kept this round is not there */
        drop(state_dir, slot ? SERVE_FILE : SERVE_FILE_B);
        drop(state_dir, slot ? SERVE_BIAS_FILE : SERVE_BIAS_FILE_B);
        drop(state_dir, slot ? SERVE_KNN_FILE : SERVE_KNN_FILE_B);
    }
    if (img) plait_zeroize(img, len);
    free(img);
    if (bimg) plait_zeroize(bimg, blen);
    free(bimg);
    if (kimg) plait_zeroize(kimg, klen);
    free(kimg);
    plait_knn_free(&knn);
    if (bias) plait_zeroize(bias, V * sizeof(float));
    free(bias);
    plait_train_destroy(tr);
    if (l.params) plait_zeroize(l.params, l.n_params * sizeof(float));
    plait_lora_free(&l);
    plait_corpus_free(&tpart);
    plait_corpus_free(&val);
    return rc;
}

/* The file of the slot serve.txt names, for the output bias (knn 0) or the kNN memory (knn 1), read whole (at
 * most max bytes); its path into path. PLAIT_ENOENT when the choice serves none. */
static int read_served(const char *state_dir, int knn, size_t max, char *path, size_t path_cap, uint8_t **img,
                       size_t *il)
{
    serve_info_t si;
    int rc = read_info(state_dir, &si);
    if (rc != 0) return rc;
    const char *what = knn ? "kNN memory" : "output bias";
    if (!(knn ? si.knn : si.bias)) return plait_fail(PLAIT_ENOENT, "%s: the device serves no %s", state_dir, what);
    const char *name = knn ? (si.slot ? SERVE_KNN_FILE_B : SERVE_KNN_FILE)
                           : (si.slot ? SERVE_BIAS_FILE_B : SERVE_BIAS_FILE);
    int k = snprintf(path, path_cap, "%s/%s", state_dir, name);
    if (k < 0 || (size_t)k >= path_cap) return plait_fail(PLAIT_EINVAL, "serving %s: state path too long", what);
    return plait_file_read(path, knn ? "serving memory" : "serving bias", max, img, il);
}

int plait_agent_serving_bias(const char *state_dir, float *bias, size_t V)
{
    if (!state_dir || !bias || V == 0) return plait_fail(PLAIT_EINVAL, "serving bias: bad arguments");
    char path[4096];
    uint8_t *img = NULL;
    size_t il = 0;
    int rc = read_served(state_dir, 0, 8 + 4 * V, path, sizeof(path), &img, &il);
    if (rc != 0) return rc;
    uint32_t n = 0;
    if (il >= 8) n = plait_le32(img + 4);
    if (il != 8 + 4 * V || memcmp(img, BIAS_MAGIC, 4) != 0 || n != V)
        rc = plait_fail(PLAIT_EPROTO, "%s: not a bias of %zu logits", path, V);
    for (size_t v = 0; rc == 0 && v < V; v++) {
        const uint8_t *p = img + 8 + 4 * v;
        uint32_t u = plait_le32(p);
        memcpy(&bias[v], &u, 4);
        if (!isfinite(bias[v])) rc = plait_fail(PLAIT_EPROTO, "%s: logit %zu is not finite", path, v);
    }
    if (rc != 0) memset(bias, 0, V * sizeof(float));
    plait_zeroize(img, il);
    free(img);
    return rc;
}

int plait_agent_serving_knn(const char *state_dir, plait_knn_t *knn, size_t C, size_t V)
{
    if (!state_dir || !knn || C == 0 || V == 0) return plait_fail(PLAIT_EINVAL, "serving memory: bad arguments");
    plait_knn_free(knn);
    char path[4096];
    uint8_t *img = NULL;
    size_t il = 0;
    int rc = read_served(state_dir, 1, SERVE_KNN_MAX_BYTES, path, sizeof(path), &img, &il);
    if (rc != 0) return rc;
    rc = plait_knn_load_mem(knn, img, il, C, V);
    if (rc == PLAIT_EMISMATCH) rc = plait_fail(PLAIT_EPROTO, "%s: %s", path, plait_errmsg());
    else if (rc != 0) rc = plait_fail(rc, "%s: %s", path, plait_errmsg());
    plait_zeroize(img, il);
    free(img);
    return rc;
}

int plait_agent_serving(const char *state_dir, char *path, size_t path_cap, char *why, size_t why_cap)
{
    if (!state_dir || !path || path_cap == 0) return plait_fail(PLAIT_EINVAL, "serving: bad arguments");
    path[0] = '\0';
    if (why && why_cap) why[0] = '\0';
    serve_info_t si;
    int rr = read_info(state_dir, &si);
    if (rr != 0) return rr;
    const char *kind = si.kind;
    double mix = si.mix, vg = si.vg, vp = si.vp, vc = si.vc;
    int best = si.best, slot = si.slot;
    size_t vt = si.vt;
    unsigned long long round = si.round;
    char extra[192] = "";
    int ke = si.bias ? snprintf(extra, sizeof(extra), "; plus its output bias (validation loss %.4f)", si.vbias) : 0;
    if (si.knn && ke >= 0 && (size_t)ke < sizeof(extra))
        snprintf(extra + ke, sizeof(extra) - (size_t)ke, "; plus its kNN memory of its own text (validation loss %.4f)",
                 si.vknn);
    int kp = snprintf(path, path_cap, "%s/%s", state_dir, slot ? SERVE_FILE_B : SERVE_FILE);
    if (kp < 0 || (size_t)kp >= path_cap) {
        path[0] = '\0';
        return plait_fail(PLAIT_EINVAL, "serving: state path too long");
    }
    if (why && why_cap) {
        if (strcmp(kind, "mix") == 0)
            snprintf(why, why_cap,
                     "mix a=%.2f ((1-a) global + a personal), round %llu: validation loss %.4f vs global %.4f "
                     "(personal alone %.4f, best step %d, %zu tokens)%s",
                     mix, round, vc, vg, vp, best, vt, extra);
        else if (strcmp(kind, "personal") == 0)
            snprintf(why, why_cap,
                     "personal, round %llu: validation loss %.4f vs global %.4f (best step %d, %zu tokens)%s",
                     round, vc, vg, best, vt, extra);
        else
            snprintf(why, why_cap,
                     "global, round %llu: no other adapter beat it on validation (global %.4f, best personal "
                     "%.4f, %zu tokens)%s",
                     round, vg, vp, vt, extra);
    }
    return 0;
}
