/*
 * fuzz_simcfg.c: fuzz target for the simulator's JSON configuration
 * (plait_sim_config_apply_json in sim/config.c).
 *
 * Properties checked on every input:
 *   - apply returns 0, PLAIT_EPROTO or PLAIT_ETOOBIG (never reads past size)
 *     with a message naming what was wrong;
 *   - plait_sim_config_validate returns 0 or PLAIT_EINVAL;
 *   - an accepted document, written back with plait_sim_config_to_json,
 *     applies to a fresh default config, and writing that one gives the
 *     same bytes (every value survives the round trip).
 * Any violation calls abort(), which both libFuzzer and replay report.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "plait/json.h"
#include "plait/plait.h"
#include "plait/sim.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static plait_sim_config_t c, c2; /* large (paths): not on the stack */
    plait_sim_config_default(&c, "/nonexistent-assets");
    int rc = plait_sim_config_apply_json(&c, (const char *)data, size);
    if (rc != 0) {
        if (rc != PLAIT_EPROTO && rc != PLAIT_ETOOBIG && rc != PLAIT_ENOMEM) abort();
        if (plait_errmsg()[0] == '\0') abort();
        return 0;
    }
    int v = plait_sim_config_validate(&c);
    if (v != 0 && (v != PLAIT_EINVAL || plait_errmsg()[0] == '\0')) abort();
    plait_buf_t b1, b2;
    plait_buf_init(&b1, 0);
    plait_buf_init(&b2, 0);
    if (plait_sim_config_to_json(&c, &b1) != 0) abort();
    plait_sim_config_default(&c2, "/nonexistent-assets");
    if (plait_sim_config_apply_json(&c2, b1.data, b1.len) != 0) abort();
    if (plait_sim_config_to_json(&c2, &b2) != 0) abort();
    if (!b1.data || !b2.data || b1.len != b2.len || memcmp(b1.data, b2.data, b1.len) != 0) abort();
    plait_buf_free(&b1);
    plait_buf_free(&b2);
    return 0;
}
