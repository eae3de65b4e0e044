/*
 * lora.h: LoRA adapters on a frozen model, in one contiguous arena.
 *
 * For each targeted projection W (out, in) of each layer, the adapter holds
 * A (R, in) and B (out, R) and the projection becomes
 *     y = x · Wᵀ + (x · Aᵀ) · Bᵀ · (alpha / R)          (HF PEFT convention)
 *
 * Arena layout (the invariant later modules rely on): params[0 .. n_a) holds
 * every A, then params[n_a .. n_params) holds every B; within each span the
 * order is layer-major, then projection in plait_proj_t order (wq wk wv wo w1
 * w2 w3), each tensor row-major. So the B-only update of FFA-LoRA is the flat
 * span params + n_a of n_params - n_a floats, and a full update is the whole
 * arena.
 *
 * Thread-safety: one adapter per thread while it is written; concurrent
 * readers are safe.
 */
#ifndef PLAIT_LORA_H
#define PLAIT_LORA_H

#include "plait/model.h"

#define PLAIT_LORA_MAX_RANK 1024

typedef struct {
    int rank;          /* R; 1..PLAIT_LORA_MAX_RANK (default 8) */
    float alpha;       /* scaling is alpha / R (default 16) */
    uint32_t targets;  /* bit (1u << plait_proj_t) per targeted projection (default wq|wv) */
} plait_lora_config_t;

typedef struct plait_lora_s {
    plait_lora_config_t cfg;
    plait_model_config_t model; /* shape of the model it adapts */
    float scaling;              /* alpha / R */
    float *params;              /* the arena: all A, then all B */
    size_t n_params;
    size_t n_a;                 /* number of A elements; B span starts here */
    float **A;                  /* [L * PLAIT_NPROJ]: (R, in) or NULL if not targeted */
    float **B;                  /* [L * PLAIT_NPROJ]: (out, R) or NULL */
} plait_lora_t;

/** \brief Defaults: rank 8, alpha 16, targets wq,wv. */
void plait_lora_config_default(plait_lora_config_t *cfg);
/** \brief Check rank, alpha and targets. \return 0 or PLAIT_EINVAL with detail. */
int plait_lora_config_validate(const plait_lora_config_t *cfg);
/** \brief Parse "wq,wv" into a target mask. \return 0 or PLAIT_EINVAL naming the bad name. */
int plait_lora_parse_targets(const char *list, uint32_t *mask /* OUT */);
/** \brief Write "wq,wv" for a mask into buf (NUL-terminated). */
void plait_lora_format_targets(uint32_t mask, char *buf, size_t len);

/** \brief Make l safe to free. Cannot fail. */
void plait_lora_init(plait_lora_t *l);
/**
 * \brief Allocate a zeroed adapter for a model shape.
 * \return 0, PLAIT_EINVAL (bad config), PLAIT_ENOMEM.
 */
int plait_lora_setup(plait_lora_t *l, const plait_model_config_t *model, const plait_lora_config_t *cfg) PLAIT_WUR;
/** \brief Free the arena. NULL and double free are safe. */
void plait_lora_free(plait_lora_t *l);

/** Index of (layer, projection) in A/B. */
static inline size_t plait_lora_slot(int layer, plait_proj_t p) { return (size_t)layer * PLAIT_NPROJ + (size_t)p; }

/**
 * \brief Initialize as PEFT does: every A uniform in ±1/sqrt(in) from a
 *        deterministic generator seeded by seed (so every device of a fleet
 *        derives the same A from a task's seed), every B = 0.
 */
void plait_lora_init_weights(plait_lora_t *l, uint64_t seed);

#endif /* PLAIT_LORA_H */
