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
#pragma once

#include <cstdint>
#include <iosfwd>
#include <memory>
#include <vector>

#include "models/model_spec.h"
#include "models/parameters.h"
#include "ops/optimizer.h"
#include "runtime/arena.h"
#include "runtime/tensor.h"

namespace origami::models {

struct DecoderOptions {
  int64_t batch = 1;           // B
  int64_t seq = 1;             // S
  DType compute = DType::f32;  // f32 or bf16 (bf16 weights copy and activations)
  Device device = Device::cpu();
  bool recompute = false;       // full-layer activation recomputation
  bool optimizer_state = true;  // plan and allocate AdamW m, v
};

// The parts of the loss of one step (all means as in Hugging Face's CausalLM loss).
struct LossInfo {
  double loss = 0;     // ce + aux_loss_coeff * aux + z
  double ce = 0;       // mean cross-entropy over non-ignored targets
  double aux = 0;      // transformers' load_balancing_loss_func (before the coefficient)
  double z = 0;        // sum over MoE layers of z_loss_coeff * mean(lse^2)
  int64_t tokens = 0;  // targets counted by the cross-entropy
};

struct LayerWeights;
struct LayerActivations;
struct Scratch;

class Decoder {
 public:
  static constexpr int64_t kIgnoreIndex = -100;

  Decoder(const ModelSpec& spec, const DecoderOptions& opt);
  ~Decoder();
  Decoder(const Decoder&) = delete;
  Decoder& operator=(const Decoder&) = delete;

  // The plan this decoder allocates (computable without building one).
  static MemoryPlan memory_plan(const ModelSpec& spec, const DecoderOptions& opt);
  const MemoryPlan& plan() const { return plan_; }
  void print_plan(std::ostream& os, bool detail = false) const;

  const ModelSpec& spec() const { return spec_; }
  const DecoderOptions& options() const { return opt_; }
  const ParameterLayout& layout() const { return layout_; }
  ParameterBuffer& params() { return master_; }  // f32 master weights
  ParameterBuffer& grads() { return grads_; }    // f32 gradients (accumulated by backward)
  ParameterBuffer& optimizer_m() { return adam_m_; }
  ParameterBuffer& optimizer_v() { return adam_v_; }
  // Refreshes the bf16 compute copy from the master weights (no-op in f32, where they alias).
  void sync_compute_weights();

  // ids, targets: [B,S] i32/i64 on any device (targets kIgnoreIndex are not counted).
  LossInfo forward(const Tensor& ids, const Tensor& targets);
  // forward, then backward: gradients of LossInfo::loss are ADDED to grads() (zero them first).
  LossInfo forward_backward(const Tensor& ids, const Tensor& targets);
  // AdamW over all parameters at once (one flat tensor), then the compute copy is refreshed.
  void adamw_step(const ops::AdamWParams& p);

  // After forward: logits [T,V] in the compute dtype on the device.
  const Tensor& logits() const;
  // After forward: tokens routed to each expert (before dropping), [num_moe_layers][E].
  const std::vector<std::vector<int64_t>>& expert_counts() const { return expert_counts_; }
  // Sigmoid router with expert bias: bias_e += rate * sign(mean count - count_e), per layer.
  void update_expert_bias();
  std::vector<float>& expert_bias(int64_t moe_layer) { return expert_bias_[size_t(moe_layer)]; }

 private:
  void build(bool planning, MemoryPlan* plan);
  LossInfo run_forward(const Tensor& ids, const Tensor& targets);
  void layer_forward(int64_t l, LayerActivations& a);
  void layer_backward(int64_t l, LayerActivations& a);
  void attention_forward(int64_t l, LayerActivations& a);
  void attention_backward(int64_t l, LayerActivations& a);
  void mlp_forward(int64_t l, LayerActivations& a);
  void mlp_backward(int64_t l, LayerActivations& a);
  void moe_forward(int64_t l, LayerActivations& a);
  void moe_backward(int64_t l, LayerActivations& a);
  LayerActivations& acts_for(int64_t l);

  ModelSpec spec_;
  DecoderOptions opt_;
  ParameterLayout layout_;
  MemoryPlan plan_;
  std::vector<std::unique_ptr<Arena>> arenas_;
  ParameterBuffer master_, grads_, compute_, adam_m_, adam_v_;
  std::vector<LayerWeights> w_, g_;  // compute weights, f32 gradients: views per layer
  std::vector<LayerActivations> acts_;
  std::unique_ptr<Scratch> s_;
  std::vector<int64_t> moe_index_;  // layer -> MoE layer index (-1 for dense)
  std::vector<std::vector<int64_t>> expert_counts_;
  std::vector<std::vector<float>> expert_bias_;
  std::vector<double> aux_grad_;       // [E] d loss / d aux_probs, from the forward's counts
  std::vector<double> aux_prob_sums_;  // [E] sum over MoE layers and tokens of aux_probs
  bool recomputing_ = false;           // layer forward re-run inside backward
  int64_t step_tokens_ = 0;
  double z_total_ = 0;
};

}  // namespace origami::models
