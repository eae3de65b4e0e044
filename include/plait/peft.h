/*
 * peft.h: LoRA adapters in other tools' formats, out and in.
 *
 * Hugging Face PEFT: a directory with adapter_model.safetensors (F32
 * tensors base_model.model.model.layers.N.self_attn.{q,k,v,o}_proj.lora_{A,B}.weight
 * and base_model.model.model.layers.N.mlp.{gate,up,down}_proj.lora_{A,B}.weight:
 * wq wk wv wo, w1 = gate, w3 = up, w2 = down; A is (R, in), B is (out, R))
 * and adapter_config.json (peft_type LORA, r, lora_alpha, target_modules).
 * Hugging Face llama runs rotate-half RoPE on q/k rows permuted from the
 * interleaved layout plait (llama2.c, llama.cpp's "llama") uses: within
 * each head, HF row a * HS/2 + i is plait row 2i + a. The rows of B for wq
 * and wk are permuted that way on export and back on import, unless the
 * model already uses rotate-half RoPE (cfg.rope_neox, e.g. Qwen2).
 *
 * llama.cpp: a GGUF file with general.type = "adapter", adapter.type =
 * "lora", adapter.lora.alpha, and F32 tensors blk.N.<name>.weight.lora_a
 * (ne [in, R]) and .lora_b (ne [R, out]) where <name> is llama.cpp's
 * attn_q attn_k attn_v attn_output ffn_gate ffn_down ffn_up; its q/k layout
 * is plait's, so nothing is permuted.
 *
 * Imports check every tensor's shape against the model and refuse
 * non-finite values, unknown tensor names, missing halves, and PEFT options
 * plait does not implement (use_rslora, DoRA, biases).
 */
#ifndef PLAIT_PEFT_H
#define PLAIT_PEFT_H

#include "plait/lora.h"

/** \brief Write dir/adapter_model.safetensors and dir/adapter_config.json (dir is created). */
int plait_peft_export(const plait_lora_t *l, const char *dir) PLAIT_WUR;
/** \brief Write a llama.cpp GGUF LoRA adapter file. */
int plait_lora_gguf_export(const plait_lora_t *l, const char *path) PLAIT_WUR;
/**
 * \brief Load an adapter for model m from path in any supported format: a
 *        PEFT directory (or its adapter_model.safetensors, next to which
 *        adapter_config.json must be), a llama.cpp GGUF adapter, or a plait
 *        adapter file (plait_adapter_load with flags).
 * \return 0; PLAIT_EIO; PLAIT_EPROTO naming what is wrong; PLAIT_EMISMATCH
 *         (shapes for another model); PLAIT_ENOMEM.
 */
int plait_adapter_import(plait_lora_t *l, const char *path, const plait_model_t *m, unsigned flags) PLAIT_WUR;

/** \brief Row r of projection p's output in PEFT's layout given plait's row (and back, with inverse). */
int plait_peft_qk_row(const plait_model_config_t *c, plait_proj_t p, int row, int inverse);

#endif /* PLAIT_PEFT_H */
