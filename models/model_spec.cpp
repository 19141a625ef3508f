#include "models/model_spec.h"

#include <algorithm>
#include <sstream>

#include "runtime/error.h"

namespace origami::models {

const char* family_name(Family f) {
  switch (f) {
    case Family::llama:
      return "llama";
    case Family::mixtral:
      return "mixtral";
    case Family::qwen2_moe:
      return "qwen2_moe";
    case Family::deepseek_moe:
      return "deepseek_moe";
  }
  return "?";
}

Family family_from_name(const std::string& name) {
  for (Family f : {Family::llama, Family::mixtral, Family::qwen2_moe, Family::deepseek_moe})
    if (name == family_name(f)) return f;
  ORIGAMI_FAIL("unknown model family '", name,
               "'; expected one of llama, mixtral, qwen2_moe, deepseek_moe");
}

bool ModelSpec::is_moe_layer(int64_t l) const {
  if (!is_moe()) return false;
  if (std::find(moe.mlp_only_layers.begin(), moe.mlp_only_layers.end(), l) !=
      moe.mlp_only_layers.end())
    return false;
  return (l + 1) % moe.sparse_step == 0;
}

int64_t ModelSpec::num_moe_layers() const {
  int64_t n = 0;
  for (int64_t l = 0; l < layers; ++l) n += is_moe_layer(l) ? 1 : 0;
  return n;
}

void ModelSpec::validate() const {
  auto check = [](bool ok, const char* field, const std::string& why) {
    ORIGAMI_CHECK(ok, "model spec: ", field, " ", why);
  };
  check(vocab >= 1, "vocab", "must be >= 1, got " + std::to_string(vocab));
  check(hidden >= 1, "hidden", "must be >= 1, got " + std::to_string(hidden));
  check(layers >= 1, "layers", "must be >= 1, got " + std::to_string(layers));
  check(heads >= 1, "heads", "must be >= 1, got " + std::to_string(heads));
  check(kv_heads >= 1 && heads % kv_heads == 0, "kv_heads",
        "must divide heads (" + std::to_string(heads) + "), got " + std::to_string(kv_heads));
  check(head_dim >= 2 && head_dim % 2 == 0, "head_dim",
        "must be even and >= 2, got " + std::to_string(head_dim));
  check(rope.head_dim == head_dim, "rope.head_dim", "must equal head_dim");
  check(rms_eps > 0, "rms_eps", "must be > 0");
  check(sliding_window >= 0, "sliding_window", "must be >= 0 (0 = off)");
  bool any_dense = false;
  for (int64_t l = 0; l < layers; ++l) any_dense = any_dense || !is_moe_layer(l);
  check(!any_dense || ffn >= 1, "ffn", "must be >= 1 when a layer has a dense MLP");
  if (is_moe()) {
    check(moe.top_k >= 1 && moe.top_k <= moe.num_experts, "moe.top_k",
          "must be in [1, num_experts=" + std::to_string(moe.num_experts) + "], got " +
              std::to_string(moe.top_k));
    check(moe.expert_ffn >= 1, "moe.expert_ffn", "must be >= 1");
    check(moe.shared_expert_ffn >= 0, "moe.shared_expert_ffn", "must be >= 0");
    check(!moe.shared_expert_gate || moe.shared_expert_ffn > 0, "moe.shared_expert_gate",
          "needs a shared expert (shared_expert_ffn > 0)");
    check(moe.sparse_step >= 1, "moe.sparse_step", "must be >= 1");
    check(moe.capacity_factor >= 0, "moe.capacity_factor", "must be >= 0 (0 = dropless)");
    check(!moe.expert_bias || moe.router == RouterKind::sigmoid, "moe.expert_bias",
          "needs the sigmoid router");
    check(moe.aux_loss_coeff >= 0 && moe.z_loss_coeff >= 0, "moe.aux_loss_coeff",
          "and z_loss_coeff must be >= 0");
    for (int64_t l : moe.mlp_only_layers)
      check(l >= 0 && l < layers, "moe.mlp_only_layers",
            "entry " + std::to_string(l) + " is not a layer index");
  }
}

std::string ModelSpec::str() const {
  std::ostringstream os;
  os << family_name(family) << " L=" << layers << " H=" << hidden << " heads=" << heads << "/"
     << kv_heads << " D=" << head_dim << " V=" << vocab;
  if (ffn && num_moe_layers() < layers) os << " F=" << ffn;
  if (is_moe())
    os << " E=" << moe.num_experts << " k=" << moe.top_k << " Fe=" << moe.expert_ffn
       << (moe.shared_expert_ffn ? " Fs=" + std::to_string(moe.shared_expert_ffn) : "")
       << " moe_layers=" << num_moe_layers();
  return os.str();
}

ModelSpec spec_from_config(const config::ModelConfig& c) {
  ModelSpec s;
  s.family = family_from_name(c.family());
  s.vocab = c.vocab_size();
  s.hidden = c.hidden_size();
  s.layers = c.num_layers();
  s.heads = c.num_heads();
  s.kv_heads = c.num_kv_heads() ? c.num_kv_heads() : c.num_heads();
  s.head_dim = c.head_dim() ? c.head_dim() : (c.num_heads() ? c.hidden_size() / c.num_heads() : 0);
  s.ffn = c.ffn_hidden_size();
  s.rope.head_dim = s.head_dim;
  s.rope.theta = c.rope_theta() > 0 ? c.rope_theta() : 10000.0;
  if (c.has_rope_scaling() && c.rope_scaling().factor() > 1.0) {
    s.rope.llama3_factor = c.rope_scaling().factor();
    s.rope.llama3_low_freq_factor = c.rope_scaling().low_freq_factor();
    s.rope.llama3_high_freq_factor = c.rope_scaling().high_freq_factor();
    s.rope.llama3_original_max_position = c.rope_scaling().original_max_position();
  }
  s.rms_eps = c.rms_norm_eps() > 0 ? c.rms_norm_eps() : 1e-6;
  s.tie_embeddings = c.tie_embeddings();
  s.qkv_bias = s.family == Family::qwen2_moe;
  s.sliding_window = c.sliding_window();
  s.max_seq_len = c.max_seq_len();
  s.init_std = c.init_std() > 0 ? c.init_std() : 0.02;
  const auto& m = c.moe();
  s.moe.num_experts = m.num_experts();
  if (s.is_moe()) {
    s.moe.top_k = m.top_k();
    s.moe.expert_ffn = m.expert_ffn_hidden_size();
    s.moe.shared_expert_ffn = m.shared_expert_ffn_hidden_size();
    s.moe.shared_expert_gate = s.family == Family::qwen2_moe && s.moe.shared_expert_ffn > 0;
    s.moe.router = m.router() == "sigmoid" ? RouterKind::sigmoid : RouterKind::softmax;
    s.moe.norm_topk_prob = m.norm_topk_prob();
    s.moe.aux_loss_coeff = m.aux_loss_coeff();
    s.moe.z_loss_coeff = m.z_loss_coeff();
    s.moe.capacity_factor = m.capacity_factor();
    s.moe.pad_to_capacity = m.pad_to_capacity();
    s.moe.expert_bias = m.expert_bias();
    s.moe.expert_bias_update_rate = m.expert_bias_update_rate();
    s.moe.sparse_step = m.sparse_step() > 0 ? m.sparse_step() : 1;
    s.moe.mlp_only_layers.assign(m.mlp_only_layers().begin(), m.mlp_only_layers().end());
  }
  s.validate();
  return s;
}

}  // namespace origami::models
