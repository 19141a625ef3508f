// Autoregressive generation with a KV cache: the decoder's forward (models/decoder.h) run for new
// tokens only. A prompt is prefilled in one pass (or in chunks of max_step_tokens), its keys and
// values are kept per layer, then every decode step runs one token per sequence, its queries
// attending to the cached keys [0, pos + n) (or the sliding window of them).
//
//   per step, T new tokens of up to max_batch sequences, packed [T,...]:
//   x = embed(ids)                                                         [T,H]
//   per layer l:  h = rmsnorm(x);  q, k, v = h W^T (+b);  rope(q, k) at each token's position
//                 K_l[slot, pos:pos+n], V_l[slot, pos:pos+n] = k, v        cache [B,Smax,Hkv,D]
//                 a = attention(q at q_offset = pos, K_l[slot, 0:pos+n], V_l[...])  per sequence
//                 x += a Wo^T;  x += mlp(rmsnorm(x))   (SwiGLU, or MoE routed on the host)
//   logits = rmsnorm(x[last token of each sequence]) Wlm^T                 [B,V] f32
//
// Memory: weights (compute dtype), the KV cache, the step's activations and the host buffers each
// live in one Arena sized by a MemoryPlan before the first token; a step allocates no tensor
// memory. MoE layers route dropless (as Hugging Face inference), whatever capacity factor the
// spec trains with.
#pragma once

#include <cstdint>
#include <functional>
#include <iosfwd>
#include <memory>
#include <span>
#include <vector>

#include "models/model_spec.h"
#include "models/parameters.h"
#include "models/sampler.h"
#include "runtime/arena.h"
#include "runtime/tensor.h"

namespace origami::models {

struct GeneratorOptions {
  int64_t max_batch = 1;        // sequences with a cache at once (slots 0 .. max_batch-1)
  int64_t max_seq = 0;          // tokens per sequence, prompt and generated; 0 = spec.max_seq_len
  int64_t max_step_tokens = 0;  // tokens in one forward pass (prefill chunk); 0 = see resolve()
  DType compute = DType::f32;   // f32 or bf16 (weights, activations and KV cache)
  Device device = Device::cpu();
  bool all_logits = false;  // step() returns the logits of every token, not one row per sequence

  // max_seq from the spec when 0; max_step_tokens = min(max_batch * max_seq, 512) when 0.
  // Throws when a size is invalid or the spec gives no context length.
  GeneratorOptions resolve(const ModelSpec& spec) const;
};

// The new tokens of one sequence for one forward pass: appended to the cache of `slot` at
// positions [length(slot), length(slot) + tokens.size()).
struct SequenceChunk {
  int64_t slot = 0;
  std::span<const int64_t> tokens;
};

struct GenerationConfig {
  int64_t max_new_tokens = 16;
  SamplingParams sampling;        // sequence i samples with seed sampling.seed + i
  std::vector<int64_t> stop_ids;  // end of sequence ids (the tokenizer's EOS, ...)
};

enum class StopReason { eos, max_new_tokens, context_full };
const char* stop_reason_name(StopReason r);

struct GenerationResult {
  std::vector<int64_t> tokens;  // generated tokens; a stop token ends the list (as transformers)
  StopReason reason = StopReason::max_new_tokens;
};

struct GeneratorBuffers;

class Generator {
 public:
  // Weights are zero: fill weights() (load_hf_weights, CheckpointReader::read) before use.
  Generator(const ModelSpec& spec, const GeneratorOptions& opt);
  // Weights copied (converted to the compute dtype and device) from `params`, e.g. a Decoder's
  // f32 master weights.
  Generator(const ModelSpec& spec, const ParameterBuffer& params, const GeneratorOptions& opt);
  ~Generator();
  Generator(const Generator&) = delete;
  Generator& operator=(const Generator&) = delete;

  static MemoryPlan memory_plan(const ModelSpec& spec, const GeneratorOptions& opt);
  const MemoryPlan& plan() const { return plan_; }
  void print_plan(std::ostream& os, bool detail = false) const;

  const ModelSpec& spec() const { return spec_; }
  const GeneratorOptions& options() const { return opt_; }  // resolved
  ParameterBuffer& weights() { return weights_; }           // compute dtype, on the device
  // Selection bias of a sigmoid router with expert bias (as trained; zero by default).
  void set_expert_bias(int64_t moe_layer, std::span<const float> bias);

  void reset();              // empties every cache
  void reset(int64_t slot);  // empties one
  int64_t length(int64_t slot) const;

  // One forward pass over the chunks (distinct slots, at most max_step_tokens tokens in all).
  // Returns logits f32 on the host, valid until the next step: [chunks, V] for the last token of
  // each chunk, or [tokens, V] for every token in chunk order with all_logits.
  Tensor step(std::span<const SequenceChunk> chunks);

  // Generates from each prompt (slot i for prompt i; every cache is reset first): prefill, then
  // one token per sequence per step until a stop id, max_new_tokens or a full context.
  // on_token(i, token) is called for every generated token of sequence i as it is sampled.
  std::vector<GenerationResult> generate(
      const std::vector<std::vector<int64_t>>& prompts, const GenerationConfig& config,
      const std::function<void(int64_t, int64_t)>& on_token = {});

 private:
  void build(const ParameterBuffer* params);
  void attention(int64_t l, std::span<const SequenceChunk> chunks, int64_t T);
  void mlp(int64_t l, int64_t T);
  void moe(int64_t l, int64_t T);

  ModelSpec spec_;
  MoeSpec moe_;  // the spec's MoE, dropless
  GeneratorOptions opt_;
  ParameterLayout layout_;
  MemoryPlan plan_;
  std::vector<std::unique_ptr<Arena>> arenas_;
  ParameterBuffer weights_;
  std::unique_ptr<GeneratorBuffers> b_;
  std::vector<int64_t> lengths_;                 // [max_batch] tokens cached per slot
  std::vector<int64_t> moe_index_;               // layer -> MoE layer index (-1 for dense)
  std::vector<std::vector<float>> expert_bias_;  // [MoE layers][E]
};

}  // namespace origami::models
