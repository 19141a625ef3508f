// ModelSpec: the plain description of one decoder-only model (dense or Mixture-of-Experts) that
// the parameter layout, the decoder and the Hugging Face import all read. Built from a config
// file's ModelConfig or from a Hugging Face config.json (models/hf_import.h).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "configs/schema/origami.pb.h"
#include "ops/rope.h"

namespace origami::models {

enum class Family { llama, mixtral, qwen2_moe, deepseek_moe };
const char* family_name(Family f);
Family family_from_name(const std::string& name);  // throws naming the known families

enum class RouterKind { softmax, sigmoid };

struct MoeSpec {
  int64_t num_experts = 0;          // E; 0 = dense model
  int64_t top_k = 0;                // k
  int64_t expert_ffn = 0;           // F_e, per-expert SwiGLU width
  int64_t shared_expert_ffn = 0;    // F_s, Qwen2-MoE / DeepSeek shared expert (0 = none)
  bool shared_expert_gate = false;  // Qwen2-MoE: shared output * sigmoid(h . w_g), w_g [1,H]
  RouterKind router = RouterKind::softmax;
  bool norm_topk_prob = false;   // renormalise the k chosen weights to sum to 1
  double aux_loss_coeff = 0.0;   // load balancing (transformers' load_balancing_loss_func)
  double z_loss_coeff = 0.0;     // coeff * mean_t(logsumexp(logits_t)^2), per MoE layer
  double capacity_factor = 0.0;  // 0 = dropless
  bool pad_to_capacity = false;
  bool expert_bias = false;  // sigmoid router: selection by score + bias
  double expert_bias_update_rate = 0.0;
  int64_t sparse_step = 1;               // MoE on layers with (l+1) % sparse_step == 0 ...
  std::vector<int64_t> mlp_only_layers;  // ... that are not listed here
};

struct ModelSpec {
  Family family = Family::llama;
  int64_t vocab = 0;     // V
  int64_t hidden = 0;    // H
  int64_t layers = 0;    // L
  int64_t heads = 0;     // Hq
  int64_t kv_heads = 0;  // Hkv
  int64_t head_dim = 0;  // D
  int64_t ffn = 0;       // F, dense SwiGLU width
  ops::RopeConfig rope;  // theta and Llama-3 scaling; rope.head_dim == head_dim
  double rms_eps = 1e-6;
  bool tie_embeddings = false;
  bool qkv_bias = false;  // Qwen2: q, k, v projections carry a bias
  // Sliding-window attention: a query at position i sees the keys j with 0 <= i - j <= window
  // (window + 1 keys), as Mistral's reference, flash-attention's window_size and transformers
  // >= 4.40 define it (the eager mask of transformers 4.38 kept one key fewer). 0 = off.
  int64_t sliding_window = 0;
  int64_t max_seq_len = 0;  // informational (0 = unknown)
  double init_std = 0.02;
  MoeSpec moe;

  bool is_moe() const { return moe.num_experts > 0; }
  // Whether layer l has an MoE block (else a dense SwiGLU MLP): as Hugging Face Qwen2-MoE.
  bool is_moe_layer(int64_t l) const;
  int64_t num_moe_layers() const;
  // Throws origami::Error naming the first inconsistent field.
  void validate() const;
  // "llama L=2 H=96 heads=6/2 D=16 F=160 V=300" style summary.
  std::string str() const;
};

// From a validated config (runtime/config.h fills the defaults).
ModelSpec spec_from_config(const config::ModelConfig& c);

}  // namespace origami::models
