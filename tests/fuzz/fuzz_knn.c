/*
 * fuzz_knn.c: libFuzzer target for the kNN memory image (knn.h,
 * plait_knn_load_mem), the file a device serves inference with.
 *
 * Each input is loaded for two shapes (C = 3, V = 10, which the hand-made
 * seeds target, and C = 64, V = 512, stories260K's). Any return code is
 * fine; crashes, leaks and sanitizer reports are not. A successful load must
 * give a memory that searches and mixes within bounds, and whose image
 * saves back to the same bytes.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "plait/knn.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void try_load(const uint8_t *data, size_t size, size_t C, size_t V)
{
    plait_knn_t s;
    plait_knn_init(&s);
    if (plait_knn_load_mem(&s, data, size, C, V) == 0) {
        if (s.n == 0 || s.C != C || s.k < 1 || s.k > PLAIT_KNN_MAX_K || !(s.lambda > 0) || s.lambda > 1)
            __builtin_trap();
        float *q = calloc(C, sizeof(float)), *lg = calloc(V, sizeof(float));
        float d[PLAIT_KNN_MAX_K];
        int32_t y[PLAIT_KNN_MAX_K];
        if (!q || !lg) __builtin_trap();
        size_t r = plait_knn_search(&s, q, (size_t)s.k, d, y);
        for (size_t j = 0; j < r; j++)
            if (y[j] < 0 || (size_t)y[j] >= V || !(d[j] >= 0)) __builtin_trap();
        if (plait_knn_mix_logits(&s, q, lg, V) != 0) __builtin_trap();
        uint8_t *img = NULL;
        size_t len = 0;
        if (plait_knn_save_mem(&s, &img, &len) != 0 || len != size || memcmp(img, data, size) != 0) __builtin_trap();
        free(img);
        free(q);
        free(lg);
    } else if (s.keys != NULL || s.n != 0) {
        __builtin_trap(); /* a failed load leaves the memory empty */
    }
    plait_knn_free(&s);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    try_load(data, size, 3, 10);
    try_load(data, size, 64, 512);
    return 0;
}
