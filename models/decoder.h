// The decoder-only transformer (Llama, Mixtral, Qwen2-MoE, DeepSeek-MoE style) on one rank, with
// its forward and backward written out by hand, layer by layer.
//
//   x0 = embed(ids)                                                        [T,H], T = B*S
//   per layer l:   h  = rmsnorm(x_l);  q,k,v = h Wq^T (+bq), ...;  rope(q, k)
//                  a  = attention(q, k, v)  (causal, GQA, optional sliding window)
//                  xm = x_l + a Wo^T
//                  h2 = rmsnorm(xm);  x_{l+1} = xm + mlp(h2)   (SwiGLU, or MoE)
//   logits = rmsnorm(x_L) Wlm^T;  loss = mean CE over targets != -100 + MoE aux losses
//
// Memory: a MemoryPlan (parameters, gradients, compute weights, optimizer state, activations,
// host router buffers) is computed from the spec and the batch shape before anything runs; every
// buffer comes from an Arena of exactly that size, so a training step allocates no tensor memory.
// With recompute, only each layer's input is kept and the layer forward is run again in backward.
//
// Parallel (DecoderParallel): one Decoder is one rank's part of the model -- its tensor-parallel
// slice (models/parameters.h ShardSpec) of one pipeline chunk of layers. Inside a layer, with TP
// ranks t = 0..tp-1 (Megatron-style):
//   attention:  hn1 -> q,k,v of this rank's heads (column parallel) -> attention -> partial
//               o-projection (row parallel) -> sum over TP
//   MLP:        hn2 -> gate, up columns F/tp -> SwiGLU -> partial down projection -> sum over TP
//   embedding:  rows of this rank's vocabulary slice (others zero) -> sum over TP
//   head:       logits of this rank's vocabulary slice, cross-entropy reduced over TP
// Without sequence parallelism every TP rank holds the whole residual stream [T,H] and the sums
// are all-reduces. With it, rank t holds rows [t*T/tp, (t+1)*T/tp) of the stream (norms and
// residual adds on those rows only); a TP region starts with an all-gather of the rows and ends
// with a reduce-scatter (in backward: the reverse). MoE blocks run on the rows this rank holds,
// with the expert weights replicated over TP.
// Loss: mean cross-entropy over the valid targets of the whole batch, counted over the
// data-parallel group, so that gradients SUM over data-parallel ranks to the single-rank ones.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <iosfwd>
#include <map>
#include <memory>
#include <span>
#include <vector>

#include "models/model_spec.h"
#include "models/moe_router.h"
#include "models/packed_weights.h"
#include "models/parameters.h"
#include "ops/optimizer.h"
#include "runtime/arena.h"
#include "runtime/serve/step_batch.h"
#include "runtime/tensor.h"

namespace origami {
class Communicator;
class CpAttention;
class ExpertDispatcher;
}  // namespace origami

namespace origami::models {

using serve::StepBatch;

struct DecoderParallel {
  Communicator* tp = nullptr;  // tensor-parallel group (null: no TP)
  // The ranks that split the batch (data parallel, later also context parallel): token counts
  // and MoE statistics are summed over it (null: this rank holds the whole batch).
  Communicator* dp = nullptr;
  bool sequence_parallel = false;
  // Expert layout (docs/design-facts.md, 'MoE parallel folding' and 'MoE dispatch'): experts
  // split over ep, each expert's width over etp; tokens dispatched over ep (all-to-all) and
  // gathered over etp, or with the all-gather dispatcher gathered over tp_ep (the ETP x EP group).
  // Null: size 1.
  Communicator* ep = nullptr;
  Communicator* etp = nullptr;
  Communicator* tp_ep = nullptr;
  bool allgather_dispatcher = false;
  // Context parallelism (docs/design-facts.md, 'Context parallelism'): the batch's sequences are
  // split over cp in the zigzag order (DecoderOptions::seq is then this rank's S/cp tokens);
  // attention runs across the group, by ring or by all-gather of K/V. `dp` must then span dp x cp.
  Communicator* cp = nullptr;
  bool cp_ring = true;
  int64_t layer_begin = 0, layer_end = -1;  // this chunk's layers (-1: to the last)
  int slots = 1;  // microbatches whose activations are held at once (pipeline schedules)
};

// Inference over a paged KV cache (DecoderOptions::inference): the cache's size and the most
// a step may hold. Each layer of the chunk keeps K and V [kv_blocks, kv_block_size, Hkv/tp, D] in
// the compute dtype; which block holds which token is the caller's bookkeeping (BlockManager in
// runtime/serve/kv_blocks.h), handed to every step in its StepBatch.
struct InferenceOptions {
  int64_t kv_blocks = 0;       // blocks in the pool (> 0)
  int64_t kv_block_size = 16;  // tokens per block
  int64_t max_sequences = 1;   // sequences in one step
  int64_t max_context = 0;     // tokens one sequence may hold (sizes the block tables)
  int64_t max_logit_rows = 0;  // rows of logits one step returns; 0 = max_sequences
  // Every row computed the same way whatever else is in the step (ops::PagedAttentionParams::
  // batch_invariant): a request's tokens do not depend on the batch or on prefill chunking.
  bool batch_invariant = false;
  // How the linear layers' weights are held (models/packed_weights.h): dense in the compute dtype
  // (bf16 decodes with the packed bf16 kernels on the same bytes), or packed int8 / int4.
  LinearWeights weights;
};

struct DecoderOptions {
  int64_t batch = 1;           // B (inference: 1)
  int64_t seq = 1;             // S (inference: the most tokens one step runs)
  DType compute = DType::f32;  // f32 or bf16 (bf16 weights copy and activations)
  Device device = Device::cpu();
  bool recompute = false;       // full-layer activation recomputation
  bool optimizer_state = true;  // plan and allocate AdamW m, v
  DecoderParallel parallel;
  // Serving instead of training: the forward only (infer()), no gradients or optimizer state, the
  // weights once in the compute dtype (params() is that buffer), one set of layer activations
  // reused by every layer, MoE routed dropless. See InferenceOptions.
  bool inference = false;
  InferenceOptions infer;
};

// The parts of the loss of one step (all means as in Hugging Face's CausalLM loss).
struct LossInfo {
  double loss = 0;     // ce + aux_loss_coeff * aux + z
  double ce = 0;       // mean cross-entropy over non-ignored targets
  double aux = 0;      // transformers' load_balancing_loss_func (before the coefficient)
  double z = 0;        // sum over MoE layers of z_loss_coeff * mean(lse^2)
  int64_t tokens = 0;  // targets counted by the cross-entropy
};

class LinearObserver;
struct LayerWeights;
struct LayerPacked;
struct LayerActivations;
struct Microbatch;
struct Scratch;
struct InferenceBuffers;

class Decoder {
 public:
  static constexpr int64_t kIgnoreIndex = -100;

  Decoder(const ModelSpec& spec, const DecoderOptions& opt);
  ~Decoder();
  Decoder(const Decoder&) = delete;
  Decoder& operator=(const Decoder&) = delete;

  // The plan this decoder allocates (computable without building one).
  static MemoryPlan memory_plan(const ModelSpec& spec, const DecoderOptions& opt);
  // The same for the part of the model that `shard` describes: a rank of any layout, planned in
  // one process without communicators (opt.parallel's communicators are ignored).
  static MemoryPlan memory_plan(const ModelSpec& spec, const DecoderOptions& opt,
                                const ShardSpec& shard);
  const MemoryPlan& plan() const { return plan_; }
  void print_plan(std::ostream& os, bool detail = false) const;

  const ModelSpec& spec() const { return spec_; }
  const DecoderOptions& options() const { return opt_; }
  const ParameterLayout& layout() const { return layout_; }
  ParameterBuffer& params() { return master_; }  // f32 master weights
  // Inference: the packed linear weights (ParamEntry::packed entries; empty when none), filled
  // by the loaders alongside params().
  PackedWeights& packed_weights() { return packed_; }
  ParameterBuffer& grads() { return grads_; }  // f32 gradients (accumulated by backward)
  ParameterBuffer& optimizer_m() { return adam_m_; }
  ParameterBuffer& optimizer_v() { return adam_v_; }
  // The compute copy's flat buffer (bf16), or an undefined tensor in f32 (the master is used).
  Tensor compute_flat() const { return opt_.compute == DType::f32 ? Tensor() : compute_.flat(); }
  // Refreshes the bf16 compute copy from the master weights (no-op in f32, where they alias).
  void sync_compute_weights();

  // Whole model (one chunk holding every layer):
  // ids, targets: [B,S] i32/i64 on any device (targets kIgnoreIndex are not counted).
  LossInfo forward(const Tensor& ids, const Tensor& targets);
  // forward, then backward: gradients of LossInfo::loss are ADDED to grads() (zero them first).
  LossInfo forward_backward(const Tensor& ids, const Tensor& targets);

  // ---- pipeline chunk interface ---------------------------------------------------------------
  bool is_first_chunk() const {
    return layout_.has_embedding() && !layout_.entries().empty() && layout_.layer_begin() == 0;
  }
  bool is_last_chunk() const { return layout_.has_head(); }
  // Forward of one microbatch into activation slot `slot` (< parallel.slots). The first chunk
  // reads ids [B,S]; the others read x_in [T_local,H] (compute dtype), the previous chunk's
  // output. The last chunk reads targets [B,S] and returns the loss (zeros elsewhere).
  LossInfo chunk_forward(int slot, const Tensor& ids, const Tensor& targets, const Tensor& x_in);
  // The chunk's output for the slot [T_local,H] (compute dtype; not for the last chunk).
  const Tensor& chunk_output(int slot) const;
  // Backward of the slot's microbatch. dx_in = d loss / d chunk_output [T_local,H] (f32 or the
  // compute dtype; ignored by the last chunk). Gradients are ADDED to grads().
  void chunk_backward(int slot, const Tensor& dx_in);
  // After chunk_backward: d loss / d x_in [T_local,H] f32 (the first chunk's is the embedding's).
  const Tensor& chunk_input_grad() const;
  // Rows of the residual stream this rank holds: B*S, or B*S/tp with sequence parallelism.
  int64_t local_tokens() const { return Tl_; }
  // AdamW over all parameters at once (one flat tensor), then the compute copy is refreshed.
  void adamw_step(const ops::AdamWParams& p);

  // ---- inference (DecoderOptions::inference) -------------------------------------------------
  // Runs one step: copies the batch's copy-on-write blocks in every layer's cache, then the
  // forward of this chunk's layers, storing each token's keys and values at its slot. The first
  // chunk embeds batch.ids; the others read x_in [step_rows(batch)/tp or step_rows, H] (compute
  // dtype), the previous chunk's chunk_output(0). The last chunk returns the logits of
  // batch.logit_rows, [R,V] f32 on the host (valid until the next step); the others an undefined
  // tensor. Collective over the chunk's TP and expert groups.
  Tensor infer(const StepBatch& batch, const Tensor& x_in = Tensor());
  // Rows one step runs: the batch's tokens, rounded up to a multiple of tp with sequence
  // parallelism (the padding rows attend to nothing and write no cache).
  int64_t step_rows(const StepBatch& batch) const;
  // KV cache of layer l (a global layer index of this chunk): [blocks, block_size, Hkv/tp, D].
  const Tensor& k_cache(int64_t l) const;
  const Tensor& v_cache(int64_t l) const;

  // After forward: logits [T,V] in the compute dtype on the device.
  const Tensor& logits() const;
  // After forward: tokens routed to each expert (before dropping), [num_moe_layers][E].
  const std::vector<std::vector<int64_t>>& expert_counts() const { return expert_counts_; }
  // After forward (without recompute): the routing of MoE layer `layer` (a global layer index of
  // this chunk) for the microbatch in `slot`, over this rank's rows: probabilities, chosen
  // experts, and slot -1 for the copies capacity dropped.
  const RouterBuffers& routing(int64_t layer, int slot = 0) const;
  // Sigmoid router with expert bias: bias_e += rate * sign(mean count - count_e), per layer.
  void update_expert_bias();
  std::vector<float>& expert_bias(int64_t moe_layer) { return expert_bias_[size_t(moe_layer)]; }

  // Calibration: `observer` is handed the input rows of every linear layer as the forward runs
  // (models/linear_observer.h); nullptr turns it off. Not owned.
  void set_linear_observer(LinearObserver* observer) { observer_ = observer; }

 private:
  LossInfo finish_loss(Microbatch& b);
  int64_t z_tokens() const;
  Microbatch& mb() { return *mbs_[size_t(cur_)]; }
  void layer_forward(int64_t l, LayerActivations& a);
  void layer_backward(int64_t l, LayerActivations& a);
  void attention_forward(int64_t l, LayerActivations& a);
  void attention_backward(int64_t l, LayerActivations& a);
  void mlp_forward(int64_t l, LayerActivations& a);
  void mlp_backward(int64_t l, LayerActivations& a);
  void moe_forward(int64_t l, LayerActivations& a);
  void moe_backward(int64_t l, LayerActivations& a);
  LayerActivations& acts_for(int64_t l);
  void set_step_rows(int64_t T);  // inference: narrows the working views to a step's rows
  Tensor infer_head(const StepBatch& batch);  // inference: logits of the requested rows
  void embed_tokens(Microbatch& b);           // x0 = embed(ids), summed over TP
  void final_norm(Microbatch& b);
  void load_chunk_input(Microbatch& b,
                        const Tensor& x_in);  // x0 = the previous chunk's output             // hf
                                              // = rmsnorm(x_L), gathered over TP with SP
  void attention_paged(int64_t l, LayerActivations& a);  // inference attention over the cache
  // y [T,N] = x [T,K] w^T + beta * y: the packed kernels when `packed` is set (inference), else
  // ops::gemm on w.
  void project(const Tensor& x, const Tensor& w, const ops::PackedLinear* packed, Tensor y,
               float beta = 0.0f) const;
  // project() of several linears that read the same x (q, k, v; gate, up): one
  // ops::packed_linear_group call when all of them are packed.
  struct Projection {
    const Tensor& w;
    const ops::PackedLinear* packed;
    Tensor& y;
  };
  void project_group(const Tensor& x, std::initializer_list<Projection> linears) const;
  ops::PackedLinearOptions packed_options(float beta = 0.0f) const;
  void build_packed_views();  // inference: pw_ and head_packed_ from packed_ and dense_views_
  // The linear observer's calls (decoder_observe.cpp): x is the input of the linears at `site` of
  // layer l; for experts, x holds rows[e] rows of each local expert e in turn.
  enum class LinearSite {
    qkv,
    o,
    gate_up,
    down,
    shared_gate_up,
    shared_down,
    expert_gate_up,
    expert_down
  };
  void observe(int64_t l, LinearSite site, const Tensor& x);
  void observe_experts(int64_t l, LinearSite site, std::span<const int64_t> rows, const Tensor& x);

  ModelSpec spec_;
  DecoderOptions opt_;
  ParameterLayout layout_;
  MemoryPlan plan_;
  std::vector<std::unique_ptr<Arena>> arenas_;
  ParameterBuffer master_, grads_, compute_, adam_m_, adam_v_;
  std::vector<LayerWeights> w_, g_;  // compute weights, f32 gradients: views per layer
  // Inference: the packed form of each layer's linears (null: ops::gemm on w_), the head's, the
  // packed weights themselves and the bf16 views of dense ones.
  std::vector<LayerPacked> pw_;
  const ops::PackedLinear* head_packed_ = nullptr;
  PackedWeights packed_;
  std::map<std::string, std::vector<ops::PackedLinear>> dense_views_;
  std::vector<std::unique_ptr<Microbatch>> mbs_;  // one per slot
  std::vector<LayerActivations> shared_acts_;     // the one set reused with recompute
  std::unique_ptr<Scratch> s_;
  std::unique_ptr<CpAttention> cp_attn_;  // context parallel attention (cp > 1)
  // The experts of MoE layers across ranks (ep or etp > 1), else null.
  std::unique_ptr<ExpertDispatcher> dispatcher_;
  // Inference: the full-size buffers the per-step views narrow, the KV caches and step metadata.
  std::unique_ptr<InferenceBuffers> inf_;
  int64_t current_sequences_ = 0, current_max_blocks_ = 0;  // of the step being run
  int cur_ = 0;                                             // the slot being run
  int tp_ = 1, tp_rank_ = 0;                                // tensor-parallel size and rank
  bool sp_ = false;                                         // sequence parallel (with tp_ > 1)
  int64_t T_ = 0, Tl_ = 0;                // rows of a microbatch: all, this rank's residual rows
  int64_t Lb_ = 0, Le_ = 0;               // this chunk's layers [Lb_, Le_)
  int64_t hq_ = 0, hkv_ = 0, ffn_ = 0;    // this rank's query heads, KV heads, MLP width
  int64_t vocab_ = 0, vocab_offset_ = 0;  // this rank's vocabulary rows
  std::vector<int64_t> moe_index_;        // layer -> MoE layer index (-1 for dense)
  std::vector<std::vector<int64_t>> expert_counts_;
  std::vector<std::vector<float>> expert_bias_;
  std::vector<double> aux_prob_sums_;  // [E] sum over MoE layers and tokens of aux_probs
  bool recomputing_ = false;           // layer forward re-run inside backward
  double z_total_ = 0;

  LinearObserver* observer_ = nullptr;  // calibration hook (null: off)
};

}  // namespace origami::models
