// Autoregressive generation over a paged KV cache: a thin driver of the decoder's inference
// forward (models/decoder.h Decoder::infer, the same layer code as training) and of the cache's
// bookkeeping (runtime/serve/kv_blocks.h BlockManager). A step packs the new tokens of up to
// max_batch sequences ("slots"): prompt chunks and decode tokens mixed; each slot is one sequence
// of the block manager, its keys and values in blocks of kv_block_size tokens.
//
// On many ranks (GeneratorParallel) every rank holds its part of the model as in training: TP
// splits heads, KV heads (each rank caching its own) and the vocabulary; experts follow their own
// layout (EP x ETP, folded over the same ranks, with the training dispatchers; MoE with TP uses
// sequence parallelism); PP gives each stage a run of layers, and generate() keeps several
// microbatches of sequences in flight so that stage s works on microbatch i+1 while stage s+1
// works on microbatch i. Every rank runs the same loop on the same bookkeeping; the last stage
// samples and sends the tokens back to the others. Data-parallel replicas run the same batch.
#pragma once

#include <cstdint>
#include <functional>
#include <iosfwd>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "models/decoder.h"
#include "models/model_spec.h"
#include "models/parameters.h"
#include "parallel/process_groups.h"
#include "parallel/rank_groups.h"
#include "runtime/arena.h"
#include "runtime/serve/kv_blocks.h"
#include "runtime/serve/sampler.h"
#include "runtime/tensor.h"

namespace origami::models {

using serve::BlockCopy;
using serve::BlockManager;
using serve::Sampler;
using serve::SamplingParams;

struct GeneratorOptions {
  int64_t max_batch = 1;        // sequences with a cache at once (slots 0 .. max_batch-1)
  int64_t max_seq = 0;          // tokens per sequence, prompt and generated; 0 = spec.max_seq_len
  int64_t max_step_tokens = 0;  // tokens in one forward pass (prefill chunk); 0 = see resolve()
  DType compute = DType::f32;   // f32 or bf16 (weights, activations and KV cache)
  Device device = Device::cpu();
  bool all_logits = false;  // step() returns the logits of every token, not one row per sequence
  // Rows of logits one step may return; 0 = max_step_tokens with all_logits, else max_batch.
  // More than max_batch lets a step return some prompt tokens' logits (the server's echo with
  // logprobs).
  int64_t max_logit_rows = 0;
  int64_t kv_block_size = 16;    // tokens per KV-cache block
  int64_t kv_blocks = 0;         // blocks in the pool; 0 = enough for max_batch full sequences
  bool batch_invariant = false;  // rows computed alike in any batch (InferenceOptions)
  LinearWeights weights;         // dense, or packed int8 / int4 (models/packed_weights.h)

  // max_seq from the spec when 0; max_step_tokens = min(max_batch * max_seq, 512) when 0;
  // kv_blocks = max_batch * ceil(max_seq / kv_block_size) when 0; max_logit_rows as above.
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

// The ranks a generator runs on: every rank of `layout` builds one Generator with its groups.
struct GeneratorParallel {
  ProcessGroups* groups = nullptr;  // null: one rank
  const RankGroups* layout = nullptr;
  bool allgather_dispatcher = false;  // MoE: all-gather tokens over tp-ep, not all-to-all
  int microbatches = 0;  // sequences split into this many groups in flight (0: pp, at least 2)
};

// Checks a layout for inference before anything is allocated (every rank stops with the same
// message): TP divides the heads, KV heads and vocabulary, EP the experts, enough layers for the
// stages, no context parallelism.
void check_inference_layout(const ModelSpec& spec, const RankGroups& layout);

class Generator {
 public:
  // Weights are zero: fill weights() (load_hf_weights, CheckpointReader::read) before use.
  Generator(const ModelSpec& spec, const GeneratorOptions& opt, const GeneratorParallel& par = {});
  // Weights copied (converted to the compute dtype and device) from `params` (a whole model's,
  // e.g. a single-rank Decoder's f32 master weights): this rank keeps its slice.
  Generator(const ModelSpec& spec, const ParameterBuffer& params, const GeneratorOptions& opt,
            const GeneratorParallel& par = {});
  ~Generator();
  Generator(const Generator&) = delete;
  Generator& operator=(const Generator&) = delete;

  static MemoryPlan memory_plan(const ModelSpec& spec, const GeneratorOptions& opt);
  const MemoryPlan& plan() const { return decoder_->plan(); }
  void print_plan(std::ostream& os, bool detail = false) const;

  const ModelSpec& spec() const { return spec_; }
  const GeneratorOptions& options() const { return opt_; }  // resolved
  ParameterBuffer& weights();  // this rank's part, compute dtype, on the device
  // The packed linears of this rank (GeneratorOptions::weights), filled with weights().
  PackedWeights& packed_weights() { return decoder_->packed_weights(); }
  Decoder& decoder() { return *decoder_; }
  const BlockManager& kv_blocks() const { return blocks_; }
  // What rank 0 prints: the layout (on many ranks) and this rank's plan.
  std::string describe() const;
  // Calibration: every linear layer's input rows go to `observer` as steps run (nullptr: off).
  void set_linear_observer(LinearObserver* observer) { decoder_->set_linear_observer(observer); }
  // Selection bias of a sigmoid router with expert bias (as trained; zero by default).
  void set_expert_bias(int64_t moe_layer, std::span<const float> bias);

  void reset();              // empties every cache
  void reset(int64_t slot);  // empties one
  int64_t length(int64_t slot) const;

  // One forward pass over the chunks (distinct slots, at most max_step_tokens tokens in all).
  // Returns logits f32 on the host, valid until the next step: [chunks, V] for the last token of
  // each chunk, or [tokens, V] for every token in chunk order with all_logits. With pipeline
  // stages the step runs through every stage and the logits are sent back to every rank.
  Tensor step(std::span<const SequenceChunk> chunks);
  // Runs a step that someone else described (the serving engine, which keeps its own block
  // tables): this generator's own bookkeeping (slots, length) is bypassed, so do not mix it with
  // step() / generate() on the same cache. Collective over every rank, like step().
  Tensor run(const StepBatch& batch);

  // Generates from each prompt (slot i for prompt i; every cache is reset first): prefill, then
  // one token per sequence per step until a stop id, max_new_tokens or a full context.
  // on_token(i, token) is called for every generated token of sequence i as it is sampled.
  std::vector<GenerationResult> generate(
      const std::vector<std::vector<int64_t>>& prompts, const GenerationConfig& config,
      const std::function<void(int64_t, int64_t)>& on_token = {});

 private:
  struct Microbatch;
  void build(const ParameterBuffer* params);
  // The step's batch description from the chunks (the cache grows by their tokens).
  const StepBatch& describe_step(std::span<const SequenceChunk> chunks);
  // This rank's forward of the step described in batch_ (pipeline: receive, run, send).
  Tensor run_stage(int tag);
  Tensor run_step();  // run_stage, then the logits to every pipeline stage
  std::vector<GenerationResult> generate_pipelined(
      const std::vector<std::vector<int64_t>>& prompts, const GenerationConfig& config,
      const std::function<void(int64_t, int64_t)>& on_token);

  ModelSpec spec_;
  GeneratorOptions opt_;
  GeneratorParallel par_;
  std::unique_ptr<Decoder> decoder_;
  BlockManager blocks_;
  StepBatch batch_;
  int pp_ = 1, pp_rank_ = 0;
  Tensor recv_x_, send_x_, logits_x_;  // pipeline: activations in and out, logits to all stages
  Request send_req_;
};

// Fills the generator's weights (this rank's slices) from a checkpoint step folder of origami
// train, written under any layout ("params/NAME" with its global shape), and the expert biases
// it saved. Throws naming the tensor when the checkpoint does not fit the generator's model.
void load_training_checkpoint(const std::string& step_dir, Generator& gen);

}  // namespace origami::models
