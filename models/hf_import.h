// Hugging Face import and export: config.json <-> ModelSpec for LlamaForCausalLM,
// MixtralForCausalLM and Qwen2MoeForCausalLM, and safetensors checkpoints (single file or
// sharded with model.safetensors.index.json) <-> a ParameterBuffer.
//
// Tensor names are Hugging Face's; the per-expert tensors of a checkpoint
// (model.layers.{i}.block_sparse_moe.experts.{e}.w1.weight, model.layers.{i}.mlp.experts.{e}.
// gate_proj.weight, ...) are joined into the stacked [E, ...] parameters on import and split
// again on export.
#pragma once

#include <cstddef>
#include <set>
#include <string>

#include "models/model_spec.h"
#include "models/packed_weights.h"
#include "models/parameters.h"
#include "runtime/safetensors.h"

namespace origami::models {

// Reads `path` (a config.json or the folder holding it). Throws origami::Error naming the file
// and the field for unsupported architectures or options.
ModelSpec spec_from_hf_config(const std::string& path);
// The same from the JSON text; `label` names it in messages.
ModelSpec spec_from_hf_config_text(const std::string& json_text, const std::string& label);
// config.json text for the spec (LlamaForCausalLM, MixtralForCausalLM or Qwen2MoeForCausalLM);
// torch_dtype names `dtype`.
std::string hf_config_json(const ModelSpec& spec, DType dtype = DType::f32);

// The Hugging Face name of expert e of a stacked expert weight:
// "model.layers.0.mlp.experts.up_proj.weight" -> "model.layers.0.mlp.experts.{e}.up_proj.weight".
std::string hf_expert_name(const std::string& stacked, int64_t e);

// The Hugging Face tensors of a parameter buffer, in layout order: views (no copies); stacked
// experts become one [F,H] / [H,F] view per expert. Works for a gradient buffer the same way.
NamedTensors to_hf_tensors(const ParameterBuffer& params);

// Copies every tensor of the checkpoint at `path` (folder, index file or .safetensors file) into
// `params` (any dtype / device; F64, F32, BF16, F16 sources converted). Every parameter must be
// present exactly once and with its shape; names the checkpoint has and the model does not are an
// error, except rotary inv_freq buffers and a tied lm_head.weight. The messages name the tensors.
//
// With `packed`, the entries the layout marks packed go there instead: a dense tensor is
// quantized at load (PackedWeights::set_dense), and a GPTQ-quantized one (NAME.qweight, qzeros,
// scales, g_idx; config.json's quantization_config, the layout in runtime/gptq_format.h) is
// unpacked, cut to this rank's slice and packed. A GPTQ tensor whose entry is not packed is an
// error that says so (the model must be built with its gptq_quantized_names).
void load_hf_weights(const std::string& path, ParameterBuffer& params,
                     PackedWeights* packed = nullptr);

// The canonical names (ParameterLayout) of the linears a checkpoint stores GPTQ-quantized
// (NAME.qweight present; experts map to their stacked name); empty for a dense checkpoint.
std::set<std::string> gptq_quantized_names(const std::string& path, const ModelSpec& spec);

// Writes config.json and the weights (as `dtype`) into `dir`: model.safetensors, or shards of at
// most `max_shard_bytes` with model.safetensors.index.json, as save_pretrained does.
void export_hf(const std::string& dir, const ModelSpec& spec, const ParameterBuffer& params,
               DType dtype = DType::f32, size_t max_shard_bytes = size_t(5) << 30);

}  // namespace origami::models
