/*
 * fuzz_gguf.c: the GGUF v3 parser on arbitrary bytes; a file that parses has
 * every metadata value read back through the typed getters and every
 * tensor's first and last row dequantized (which touches the first and last
 * byte the parser said it owns).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "plait/gguf.h"
#include "plait/tensor.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* A private, 8-byte-aligned copy, as a mapping would be. */
    uint64_t *copy = malloc(size / 8 + 1 > 0 ? (size / 8 + 1) * 8 : 8);
    if (!copy) return 0;
    memcpy(copy, data, size);
    plait_gguf_t g;
    if (plait_gguf_parse(&g, (const uint8_t *)copy, size) == 0) {
        for (size_t i = 0; i < g.n_kv; i++) {
            char key[128];
            size_t n = g.kv[i].key_len < sizeof(key) - 1 ? g.kv[i].key_len : sizeof(key) - 1;
            memcpy(key, g.kv[i].key, n);
            key[n] = '\0';
            uint64_t u;
            double f;
            const char *s;
            size_t sl;
            (void)plait_gguf_get_uint(&g, key, UINT64_MAX, &u);
            (void)plait_gguf_get_float(&g, key, &f);
            (void)plait_gguf_get_str(&g, key, &s, &sl);
            if (g.kv[i].type == PLAIT_GGUF_ARR && g.kv[i].arr_n > 0)
                (void)plait_gguf_arr_str(&g.kv[i], g.kv[i].arr_n - 1, &s, &sl);
        }
        for (size_t i = 0; i < g.n_tensors; i++) {
            const plait_gguf_tensor_t *t = &g.tensors[i];
            size_t rows = t->nbytes / plait_dtype_row_bytes((int)t->type, (size_t)t->ne[0]);
            plait_wmat_t w = {t->data, (int)t->type, plait_dtype_row_bytes((int)t->type, (size_t)t->ne[0])};
            float buf[64];
            size_t n = t->ne[0] < 64 ? (size_t)t->ne[0] : 64;
            plait_dequant_row(buf, &w, 0, 0, n);
            plait_dequant_row(buf, &w, rows - 1, (size_t)t->ne[0] - n, n);
        }
        plait_gguf_free(&g);
    }
    free(copy);
    return 0;
}
