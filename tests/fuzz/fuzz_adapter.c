/*
 * fuzz_adapter.c: libFuzzer target for the adapter loader (safetensors
 * header parsing, offset/shape/metadata validation, value checks).
 *
 * Each input is loaded against two model shapes that need no weights (the
 * loader only reads the model's config and hash): a tiny one (C = 8, one
 * layer, sha256 zero), which the hand-made seeds target, and stories260K,
 * whose real hash the reference adapter_init seed carries. Any return code
 * is fine; crashes, leaks and sanitizer reports are not. A successful load
 * must produce an adapter of the model's shape with finite values.
 */
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "plait/adapter.h"
#include "plait/crypto.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void try_load(const uint8_t *data, size_t size, plait_model_config_t c, const char *hash_hex)
{
    plait_model_t m;
    plait_model_init(&m);
    if (plait_model_config_validate(&c) != 0) __builtin_trap();
    m.cfg = c;
    if (hash_hex && plait_unhex(hash_hex, m.sha256, 32) != 0) __builtin_trap();
    for (unsigned flags = 0; flags < 2; flags++) {
        plait_lora_t l;
        if (plait_adapter_load_mem(&l, data, size, &m, flags) == 0) {
            if (l.model.dim != c.dim || l.n_params == 0) __builtin_trap();
            for (size_t i = 0; i < l.n_params; i++)
                if (!isfinite(l.params[i])) __builtin_trap();
        } else if (l.params != NULL) {
            __builtin_trap(); /* a failed load leaves the adapter empty */
        }
        plait_lora_free(&l);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    plait_model_config_t tiny = {.dim = 8, .hidden_dim = 8, .n_layers = 1, .n_heads = 2, .n_kv_heads = 2,
                                 .vocab_size = 10, .seq_len = 4, .shared = 1};
    plait_model_config_t s260k = {.dim = 64, .hidden_dim = 172, .n_layers = 5, .n_heads = 8, .n_kv_heads = 4,
                                  .vocab_size = 512, .seq_len = 512, .shared = 1};
    try_load(data, size, tiny, NULL);
    try_load(data, size, s260k, "b0a507e7ad0f626624f17112325e66691f9076d622e1d3274d103d00299f2696");
    /* The generic reader on its own. */
    plait_safetensors_t st;
    if (plait_safetensors_parse(&st, data, size) == 0) {
        for (size_t i = 0; i < st.n_tensors; i++) {
            const plait_st_tensor_t *t = &st.tensors[i];
            if (t->data < data + 8 || t->data + t->nbytes > data + size) __builtin_trap();
        }
        plait_safetensors_free(&st);
    }
    return 0;
}
