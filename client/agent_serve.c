/*
 * agent_serve.c: the adapter a device serves inference with (client.h,
 * plait_agent_serving). After a round's local training the agent runs the
 * validated personalization of personal.h on its own training text, from
 * the round's global adapter (FedSA-LoRA: the global A with its own B), and
 * keeps the winner in its state directory:
 *
 *   serve.safetensors  the chosen adapter (global, personal or a mix), in one
 *   serve-b.safetensors  of two slots
 *   serve.txt          why: "kind mix val_global val_personal val_chosen
 *                      best_step val_tokens round slot", one line of text
 *                      (slot 0 or 1; a line without it, written before the
 *                      slots, means slot 0)
 *
 * A new choice is written to the slot serve.txt does not name, then
 * serve.txt is replaced (both atomically): a crash between the two leaves
 * the previous adapter and its reason, never a new adapter with an old
 * reason.
 *
 * Both are derived from the device's records: they never leave the device
 * (no message or server log carries them) and `plait-agent forget --state`
 * erases them (agent_privacy.c).
 *
 * Contract: a failure here never fails the round: the caller logs it and the
 * previous serving adapter (if any) stays. Everything trained is wiped.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "agent_int.h"
#include "plait/adapter.h"
#include "plait/file.h"
#include "plait/personal.h"
#include "plait/plait.h"

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
    uint8_t *img = NULL;
    size_t len = 0;
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
    }
    if (rc == 0) rc = plait_adapter_save_mem(&l, m->sha256, &img, &len);
    int slot = 0; /* the slot the current serve.txt does not name (a missing or bad one names none) */
    if (rc == 0) {
        char cur[4096];
        if (plait_agent_serving(state_dir, cur, sizeof(cur), NULL, 0) == 0) {
            size_t cl = strlen(cur), sl = strlen(SERVE_FILE);
            slot = cl >= sl && strcmp(cur + cl - sl, SERVE_FILE) == 0 ? 1 : 0;
        }
        rc = plait__agent_atomic_write(state_dir, slot ? SERVE_FILE_B : SERVE_FILE, img, len);
    }
    if (rc == 0) {
        char why[256];
        int k = snprintf(why, sizeof(why), "%s %.4f %.6f %.6f %.6f %d %zu %llu %d\n",
                         plait_personal_kind_name(res->kind), res->mix, res->val_global, res->val_personal,
                         res->val_chosen, res->best_step, res->val_tokens, (unsigned long long)round, slot);
        rc = plait__agent_atomic_write(state_dir, SERVE_INFO_FILE, (const uint8_t *)why, (size_t)k);
    }
    if (rc == 0) { /* the previous slot's adapter is no longer served: drop it (best effort) */
        char old[4096];
        int ko = snprintf(old, sizeof(old), "%s/%s", state_dir, slot ? SERVE_FILE : SERVE_FILE_B);
        if (ko > 0 && (size_t)ko < sizeof(old)) (void)unlink(old);
    }
    if (img) plait_zeroize(img, len);
    free(img);
    plait_train_destroy(tr);
    if (l.params) plait_zeroize(l.params, l.n_params * sizeof(float));
    plait_lora_free(&l);
    plait_corpus_free(&tpart);
    plait_corpus_free(&val);
    return rc;
}

int plait_agent_serving(const char *state_dir, char *path, size_t path_cap, char *why, size_t why_cap)
{
    if (!state_dir || !path || path_cap == 0) return plait_fail(PLAIT_EINVAL, "serving: bad arguments");
    path[0] = '\0';
    if (why && why_cap) why[0] = '\0';
    char info[4096];
    int k = snprintf(info, sizeof(info), "%s/%s", state_dir, SERVE_INFO_FILE);
    if (k < 0 || (size_t)k >= sizeof(info)) return plait_fail(PLAIT_EINVAL, "serving: state path too long");
    uint8_t *line = NULL; /* one short line; plait_file_read refuses a FIFO or a file past 256 bytes */
    size_t ll = 0;
    int rr = plait_file_read(info, "serve.txt", 256, &line, &ll);
    if (rr != 0) {
        path[0] = '\0';
        if (rr == PLAIT_ENOENT)
            return plait_fail(PLAIT_ENOENT, "%s: no serving adapter chosen yet (it is chosen after a round)", state_dir);
        return rr;
    }
    char kind[16] = {0};
    double mix = NAN, vg = NAN, vp = NAN, vc = NAN;
    int best = 0;
    size_t vt = 0;
    unsigned long long round = 0;
    int slot = 0, nf = sscanf((const char *)line, "%15s %lf %lf %lf %lf %d %zu %llu %d", kind, &mix, &vg, &vp, &vc,
                              &best, &vt, &round, &slot);
    int ok = (nf == 8 || (nf == 9 && (slot == 0 || slot == 1))) &&
             (strcmp(kind, "global") == 0 || strcmp(kind, "personal") == 0 || strcmp(kind, "mix") == 0) &&
             isfinite(mix) && mix >= 0 && mix <= 1 && isfinite(vg) && isfinite(vp) && isfinite(vc);
    free(line);
    if (!ok) {
        path[0] = '\0';
        return plait_fail(PLAIT_EPROTO, "%s: malformed", info);
    }
    int kp = snprintf(path, path_cap, "%s/%s", state_dir, slot ? SERVE_FILE_B : SERVE_FILE);
    if (kp < 0 || (size_t)kp >= path_cap) {
        path[0] = '\0';
        return plait_fail(PLAIT_EINVAL, "serving: state path too long");
    }
    if (why && why_cap) {
        if (strcmp(kind, "mix") == 0)
            snprintf(why, why_cap,
                     "mix a=%.2f ((1-a) global + a personal), round %llu: validation loss %.4f vs global %.4f "
                     "(personal alone %.4f, best step %d, %zu tokens)",
                     mix, round, vc, vg, vp, best, vt);
        else if (strcmp(kind, "personal") == 0)
            snprintf(why, why_cap,
                     "personal, round %llu: validation loss %.4f vs global %.4f (best step %d, %zu tokens)", round, vc,
                     vg, best, vt);
        else
            snprintf(why, why_cap,
                     "global, round %llu: nothing beat it on validation (global %.4f, best personal %.4f, %zu "
                     "tokens)",
                     round, vg, vp, vt);
    }
    return 0;
}
