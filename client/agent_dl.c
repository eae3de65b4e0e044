/*
 * agent_dl.c: rebuilding the task's global adapter from a compact download
 * (docs/protocol.md, "Adapter encodings"): a delta from the adapter the
 * device holds (plait/delta.h), or, under FFA-LoRA, the B span with A derived
 * from the task's a_seed. The rebuilt file is the aggregator's serialization
 * of the same arena, so it must hash to the task's adapter_sha256; anything
 * else (a hostile or corrupt delta, another base, another serializer) is
 * refused here and the caller downloads the full file.
 *
 * Everything read here is untrusted: the cached base file is parsed by the
 * adapter loader (shapes from the model, values finite), the delta by
 * plait_delta_apply, the seeded span by its exact length.
 */
#include "agent_int.h"

#include "plait/adapter.h"
#include "plait/crypto.h"
#include "plait/delta.h"
#include "plait/le.h"
#include "plait/lora.h"

#include <stdlib.h>
#include <string.h>

int plait__agent_rebuild_adapter(plait_agent_t *a, const plait_msg_task_t *t,
                                 plait_adapter_encoding_t enc, const uint8_t *base, size_t base_len,
                                 const uint8_t *data, size_t len, uint8_t **out, size_t *out_len)
{
    int rc;
    plait_lora_t l;
    plait_lora_init(&l);
    *out = NULL;
    *out_len = 0;
    if (enc == PLAIT_ADAPTER_DELTA) {
        if (!base)
            return plait_fail(PLAIT_EPROTO, "adapter delta: this device holds no base adapter");
        if ((rc = plait_adapter_load_mem(&l, base, base_len, &a->model, 0)) != 0)
            return plait_fail(rc, "adapter delta: the held adapter: %s", plait_errmsg());
        if ((rc = plait_delta_apply(l.params, l.n_params, data, len, l.params)) != 0) {
            plait_lora_free(&l);
            return plait_fail(rc == PLAIT_EMISMATCH ? PLAIT_EPROTO : rc, "adapter %s",
                              plait_errmsg());
        }
    } else if (enc == PLAIT_ADAPTER_SEEDED) {
        if (t->lora.mode != PLAIT_LORA_MODE_FFA)
            return plait_fail(PLAIT_EPROTO,
                              "adapter_chunk.encoding: seeded, but the task is not FFA-LoRA");
        plait_lora_config_t lc = {
            .rank = (int)t->lora.rank, .alpha = t->lora.alpha, .targets = t->lora.targets};
        if ((rc = plait_lora_setup(&l, &a->model.cfg, &lc)) != 0) return rc;
        size_t nb = l.n_params - l.n_a;
        if (len != nb * 4) {
            plait_lora_free(&l);
            return plait_fail(PLAIT_EPROTO,
                              "adapter seeded span: %zu bytes, the task's B span needs %zu", len,
                              nb * 4);
        }
        plait_lora_init_weights(&l, t->lora.a_seed);
        for (size_t i = 0; i < nb; i++) {
            uint32_t u = plait_le32(data + 4 * i);
            memcpy(&l.params[l.n_a + i], &u, 4);
        }
    } else {
        return plait_fail(PLAIT_EPROTO, "adapter_chunk.encoding: %d not rebuilt here", (int)enc);
    }
    uint8_t *img = NULL;
    size_t n = 0;
    rc = plait_adapter_save_mem(&l, a->model.sha256, &img, &n); /* refuses a non-finite value */
    plait_lora_free(&l);
    if (rc != 0) return plait_fail(PLAIT_EPROTO, "rebuilt adapter: %s", plait_errmsg());
    uint8_t h[32];
    plait_sha256(img, n, h);
    if (n != t->adapter_len || plait_ct_memcmp(h, t->adapter_sha256, 32) != 0) {
        free(img);
        return plait_fail(PLAIT_EMISMATCH,
                          "rebuilt adapter does not hash to the task's adapter_sha256");
    }
    *out = img;
    *out_len = n;
    return 0;
}
