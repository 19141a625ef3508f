// Post-training quantization of a whole model into a Hugging Face GPTQ folder: the driver behind
// `origami quantize` (docs/quantization.md).
//
// GPTQ, layer by layer (as AutoGPTQ, without its "true sequential" sub-steps inside a layer):
//   for l = 0 .. L-1:
//     run the calibration windows through the model (the inference forward of models::Generator,
//     prefill only), whose layers 0 .. l-1 already hold their quantized-dequantized weights;
//     a LinearObserver (models/linear_observer.h) accumulates H = 2 X X^T / N for every linear of
//     layer l (one Hessian per distinct input: q/k/v share one, gate/up another; MoE: per expert,
//     over the tokens routed to it)
//     quantize each linear of layer l with gptq_quantize (models/gptq.h), round its scales to fp16
//     (what the checkpoint stores) and write the dequantized weight back into the model
// Memory: the model (f32) and one layer's Hessians (in^2 doubles per distinct input). Cost: L
// forward passes of the calibration set, plus GPTQ itself (about rows * in^2 per linear).
// Quantized: q, k, v, o, gate, up, down (MoE: every expert's, and the shared expert's MLP). Left
// as they are, as AutoGPTQ does: embeddings, norms, lm_head, the router and the shared-expert gate.
// An expert that no calibration token reached falls back to round-to-nearest (said in the
// progress). RTN (QuantizeOptions::gptq false) quantizes the original weights, no calibration.
#pragma once

#include <cstdint>
#include <iosfwd>
#include <string>
#include <utility>
#include <vector>

#include "models/generator.h"
#include "models/gptq.h"
#include "models/model_spec.h"
#include "models/parameters.h"
#include "runtime/data.h"
#include "runtime/gptq_format.h"

namespace origami::models {

struct QuantizeOptions {
  QuantConfig config;           // bits (2, 3, 4, 8), group_size, sym, act_order, percdamp
  bool gptq = true;             // false: round-to-nearest on the original weights
  int64_t batch_tokens = 2048;  // calibration tokens per forward pass (whole windows, at least 1)
};

// One linear layer to quantize: the weight `param` (a ParameterLayout name), the expert (dim 0 of
// a stacked expert weight; -1 otherwise), and its Hugging Face name without ".weight" (the NAME of
// NAME.qweight, NAME.qzeros, NAME.scales, NAME.g_idx). W is [rows = out, cols = in].
struct QuantTarget {
  std::string param;
  int64_t expert = -1;
  std::string name;
  int64_t rows = 0, cols = 0;
};

// The linears of layer `layer` that get quantized, in layout order.
std::vector<QuantTarget> quantization_targets(const ParameterLayout& layout, int64_t layer);

// Checks, before anything heavy runs, that the model can be quantized with `opt`: bits the format
// packs (2, 3, 4, 8), every linear's width a multiple of the packing unit, the group size dividing
// every input width, a model Hugging Face can describe. Throws origami::Error saying what to
// change.
void check_quantizable(const ModelSpec& spec, const QuantizeOptions& opt);

// `samples` windows of `seq_len` tokens at random starts in the stream (SplitMix64 from `seed`).
// Throws when the stream holds fewer than seq_len tokens.
std::vector<std::vector<int64_t>> calibration_windows(const TokenStream& stream, int64_t samples,
                                                      int64_t seq_len, uint64_t seed);

// Options of the one-process f32 Generator that runs the calibration windows (prefill only).
// Throws when seq_len exceeds the model's context.
GeneratorOptions calibration_generator_options(const ModelSpec& spec, int64_t samples,
                                               int64_t seq_len, const QuantizeOptions& opt);

// The packed tensors of each quantized linear, by Hugging Face name (without ".weight").
using PackedLinears = std::vector<std::pair<std::string, GptqTensors>>;

// Quantizes every linear of `gen`'s model (one rank holding the whole model, f32), layer by layer
// as above; the dequantized weights replace the originals in gen.weights(). `windows` (GPTQ only)
// are the calibration token windows. Progress, one block per layer, goes to `log`.
PackedLinears quantize_model(Generator& gen, const std::vector<std::vector<int64_t>>& windows,
                             const QuantizeOptions& opt, std::ostream& log);

// Where and how to write the result.
struct QuantizedOutput {
  std::string dir;               // the GPTQ folder
  std::string dequantized_dir;   // also the dequantized model as an fp32 folder ("" = no)
  std::string base_config_json;  // the model's Hugging Face config.json text
  std::string tokenizer;         // "byte", a tokenizer file or a folder holding one
  std::string model_dir;         // the source Hugging Face folder ("" = a training checkpoint)
  DType dtype = DType::f16;      // of the tensors left unquantized (and torch_dtype)
  bool overwrite = false;        // replace a non-empty dir
};

// Throws when `dir` exists and is not an empty folder (unless overwrite); `what` names it.
void check_output_dir(const std::string& dir, bool overwrite, const std::string& what);

// Writes out.dir atomically (a temporary folder beside it, renamed at the end):
//   config.json        base_config_json with torch_dtype = out.dtype and quantization_config
//                      {quant_method "gptq", bits, group_size, desc_act, sym, damp_percent,
//                      true_sequential false, checkpoint_format "gptq"}
//   model.safetensors  NAME.qweight / qzeros / scales / g_idx for the quantized linears, every
//                      other tensor of `weights` as out.dtype (sharded above 5 GiB)
//   the tokenizer's files (tokenizer.json, tokenizer_config.json, tokenizer.model, ...) and the
//   model folder's generation_config.json; with the byte tokenizer origami_tokenizer.txt, whose
//   first line "byte" origami's model loading reads (launcher/model_source.cpp)
// and, with out.dequantized_dir, `weights` as a plain fp32 Hugging Face folder (same files).
void write_quantized_model(const QuantizedOutput& out, const ModelSpec& spec,
                           const ParameterBuffer& weights, const PackedLinears& packed,
                           const QuantizeOptions& opt);

}  // namespace origami::models
