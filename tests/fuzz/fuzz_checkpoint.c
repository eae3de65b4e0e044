/*
 * fuzz_checkpoint.c: the llama2.c checkpoint loader on arbitrary bytes. The
 * loader reads a path, so the input is written to an unlinked temporary
 * file and loaded through /proc/self/fd. A model that loads is used for one
 * forward pass (its weights are all finite: the loader refuses NaN and inf,
 * corpus nan_embedding.bin and inf_rms_final.bin).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "plait/infer.h"
#include "plait/model.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    FILE *f = tmpfile();
    if (!f) return 0;
    if (size && fwrite(data, 1, size, f) != size) {
        fclose(f);
        return 0;
    }
    fflush(f);
    char path[64];
    snprintf(path, sizeof(path), "/proc/self/fd/%d", fileno(f));
    plait_model_t m;
    plait_model_init(&m);
    if (plait_model_load(&m, path) == 0 && m.map_len < (1u << 20)) {
        plait_infer_t s;
        plait_infer_init(&s);
        plait_infer_config_t cfg;
        plait_infer_config_default(&cfg);
        cfg.max_ctx = 2;
        const float *logits;
        if (plait_infer_setup(&s, &m, NULL, &cfg) == 0) {
            int rc = plait_infer_forward(&s, 0, 0, &logits);
            (void)rc;
        }
        plait_infer_free(&s);
    }
    plait_model_free(&m);
    fclose(f);
    return 0;
}
