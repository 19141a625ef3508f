#include "models/parameters.h"

#include <cmath>
#include <vector>

#include "runtime/error.h"

namespace origami::models {

ModelParamNames param_names(const ModelSpec& s) {
  ModelParamNames n;
  n.embed = "model.embed_tokens.weight";
  n.final_norm = "model.norm.weight";
  n.lm_head = s.tie_embeddings ? "" : "lm_head.weight";
  for (int64_t l = 0; l < s.layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    LayerParamNames y;
    y.input_norm = p + "input_layernorm.weight";
    y.q = p + "self_attn.q_proj.weight";
    y.k = p + "self_attn.k_proj.weight";
    y.v = p + "self_attn.v_proj.weight";
    if (s.qkv_bias) {
      y.q_bias = p + "self_attn.q_proj.bias";
      y.k_bias = p + "self_attn.k_proj.bias";
      y.v_bias = p + "self_attn.v_proj.bias";
    }
    y.o = p + "self_attn.o_proj.weight";
    y.post_norm = p + "post_attention_layernorm.weight";
    if (!s.is_moe_layer(l)) {
      y.mlp_gate = p + "mlp.gate_proj.weight";
      y.mlp_up = p + "mlp.up_proj.weight";
      y.mlp_down = p + "mlp.down_proj.weight";
    } else if (s.family == Family::mixtral) {
      y.router = p + "block_sparse_moe.gate.weight";
      y.expert_gate = p + "block_sparse_moe.experts.w1.weight";
      y.expert_up = p + "block_sparse_moe.experts.w3.weight";
      y.expert_down = p + "block_sparse_moe.experts.w2.weight";
    } else {
      y.router = p + "mlp.gate.weight";
      y.expert_gate = p + "mlp.experts.gate_proj.weight";
      y.expert_up = p + "mlp.experts.up_proj.weight";
      y.expert_down = p + "mlp.experts.down_proj.weight";
    }
    if (s.is_moe_layer(l) && s.moe.shared_expert_ffn > 0) {
      y.shared_gate = p + "mlp.shared_expert.gate_proj.weight";
      y.shared_up = p + "mlp.shared_expert.up_proj.weight";
      y.shared_down = p + "mlp.shared_expert.down_proj.weight";
      if (s.moe.shared_expert_gate) y.shared_expert_gate = p + "mlp.shared_expert_gate.weight";
    }
    n.layers.push_back(y);
  }
  return n;
}

ParameterLayout::ParameterLayout(const ModelSpec& s, const ShardSpec& sh) : shard_(sh) {
  s.validate();
  names_ = param_names(s);
  const int64_t H = s.hidden, D = s.head_dim, Hq = s.heads, Hkv = s.kv_heads, L = s.layers;
  const int tp = sh.tp;
  layer_begin_ = sh.layer_begin;
  layer_end_ = sh.layer_end < 0 ? L : sh.layer_end;
  ORIGAMI_CHECK(tp >= 1 && sh.tp_rank >= 0 && sh.tp_rank < tp, "parameter layout: tp rank ",
                sh.tp_rank, " of ", tp);
  ORIGAMI_CHECK(0 <= layer_begin_ && layer_begin_ < layer_end_ && layer_end_ <= L,
                "parameter layout: layers [", layer_begin_, ", ", layer_end_,
                ") are not a non-empty part of the model's ", L, " layers");
  ORIGAMI_CHECK(Hq % tp == 0, "tensor parallel size ", tp, " does not divide the ", Hq,
                " attention heads");
  ORIGAMI_CHECK(Hkv % tp == 0 || tp % Hkv == 0, "tensor parallel size ", tp, " and the ", Hkv,
                " KV heads: one must divide the other");
  ORIGAMI_CHECK(s.vocab % tp == 0, "tensor parallel size ", tp,
                " does not divide the vocabulary of ", s.vocab,
                " (set model.vocab_size to a multiple of ", tp, ")");
  const bool first = layer_begin_ == 0, last = layer_end_ == L;
  // K and V: split like q when every rank gets whole KV heads, else each rank keeps the one KV
  // head its query heads use (query head i uses KV head i / (Hq / Hkv)).
  const auto add_kv = [&](const std::string& name, const Shape& global, ParamInit init) {
    if (Hkv % tp == 0) {
      add(name, global, init, 0, 0);
    } else {
      const int rep = tp / int(Hkv);
      Shape off(global.size(), 0), shape = global;
      off[0] = (sh.tp_rank / rep) * D;
      shape[0] = D;
      add_slice(name, global, init, off, shape, true, sh.tp_rank % rep == 0);
    }
  };
  if (first) add(names_.embed, {s.vocab, H}, ParamInit::normal, 0, 0);
  for (int64_t l = layer_begin_; l < layer_end_; ++l) {
    const LayerParamNames& y = names_.layers[size_t(l)];
    add(y.input_norm, {H}, ParamInit::ones);
    add(y.q, {Hq * D, H}, ParamInit::normal, 0, 0);
    if (!y.q_bias.empty()) add(y.q_bias, {Hq * D}, ParamInit::zeros, 0, 0);
    add_kv(y.k, {Hkv * D, H}, ParamInit::normal);
    if (!y.k_bias.empty()) add_kv(y.k_bias, {Hkv * D}, ParamInit::zeros);
    add_kv(y.v, {Hkv * D, H}, ParamInit::normal);
    if (!y.v_bias.empty()) add_kv(y.v_bias, {Hkv * D}, ParamInit::zeros);
    add(y.o, {H, Hq * D}, ParamInit::normal, 0, 1);
    add(y.post_norm, {H}, ParamInit::ones);
    if (!y.mlp_gate.empty()) {
      ORIGAMI_CHECK(s.ffn % tp == 0, "tensor parallel size ", tp, " does not divide the MLP width ",
                    s.ffn);
      add(y.mlp_gate, {s.ffn, H}, ParamInit::normal, 0, 0);
      add(y.mlp_up, {s.ffn, H}, ParamInit::normal, 0, 0);
      add(y.mlp_down, {H, s.ffn}, ParamInit::normal, 0, 1);
    }
    // MoE: the router is replicated over TP; the experts follow the expert layout (added last).
    if (!y.router.empty()) add(y.router, {s.moe.num_experts, H}, ParamInit::normal);
    if (!y.shared_gate.empty()) {
      const int64_t Fs = s.moe.shared_expert_ffn;
      add(y.shared_gate, {Fs, H}, ParamInit::normal);
      add(y.shared_up, {Fs, H}, ParamInit::normal);
      add(y.shared_down, {H, Fs}, ParamInit::normal);
      if (!y.shared_expert_gate.empty()) add(y.shared_expert_gate, {1, H}, ParamInit::normal);
    }
  }
  if (last) {
    add(names_.final_norm, {H}, ParamInit::ones);
    // (the head follows; experts come after everything else)
    if (!names_.lm_head.empty()) {
      add(names_.lm_head, {s.vocab, H}, ParamInit::normal, 0, 0);
    } else if (!first) {
      add(names_.embed, {s.vocab, H}, ParamInit::normal, 0, 0);
      ParamEntry& e = entries_.back();
      e.tied_copy = true;
      e.owner = false;
    }
  }
  // The expert region: every expert tensor of the chunk's layers, after all the others.
  expert_offset_ = total_;
  const int64_t E = s.moe.num_experts;
  ORIGAMI_CHECK(sh.ep >= 1 && sh.etp >= 1 && sh.ep_rank >= 0 && sh.ep_rank < sh.ep &&
                    sh.etp_rank >= 0 && sh.etp_rank < sh.etp,
                "parameter layout: ep rank ", sh.ep_rank, " of ", sh.ep, ", etp rank ", sh.etp_rank,
                " of ", sh.etp);
  for (int64_t l = layer_begin_; l < layer_end_; ++l) {
    const LayerParamNames& y = names_.layers[size_t(l)];
    if (y.router.empty()) continue;
    ORIGAMI_CHECK(E % sh.ep == 0, "expert parallel size ", sh.ep, " does not divide the ", E,
                  " experts");
    ORIGAMI_CHECK(s.moe.expert_ffn % sh.etp == 0, "expert tensor parallel size ", sh.etp,
                  " does not divide the expert width ", s.moe.expert_ffn);
    const int64_t Fe = s.moe.expert_ffn;
    add_expert(y.expert_gate, {E, Fe, H}, 1);
    add_expert(y.expert_up, {E, Fe, H}, 1);
    add_expert(y.expert_down, {E, H, Fe}, 2);
  }
}

void ParameterLayout::add_expert(const std::string& name, const Shape& global, int etp_dim) {
  const ShardSpec& sh = shard_;
  Shape off(global.size(), 0), shape = global;
  shape[0] = global[0] / sh.ep;
  off[0] = sh.ep_rank * shape[0];
  shape[size_t(etp_dim)] = global[size_t(etp_dim)] / sh.etp;
  off[size_t(etp_dim)] = sh.etp_rank * shape[size_t(etp_dim)];
  add_slice(name, global, ParamInit::normal, off, shape, false, true);
  entries_.back().experts = shape[0];
}

void ParameterLayout::add(const std::string& name, const Shape& shape, ParamInit init,
                          int64_t experts, int shard_dim) {
  const int tp = shard_.tp;
  Shape off(shape.size(), 0), local = shape;
  if (shard_dim >= 0 && tp > 1) {
    local[size_t(shard_dim)] = shape[size_t(shard_dim)] / tp;
    off[size_t(shard_dim)] = shard_.tp_rank * local[size_t(shard_dim)];
  }
  const bool replicated = shard_dim < 0 && tp > 1;
  add_slice(name, shape, init, off, local, false, !replicated || shard_.tp_rank == 0);
  entries_.back().tp_partial = replicated && shard_.sequence_parallel;
  entries_.back().experts = experts;
}

void ParameterLayout::add_slice(const std::string& name, const Shape& global, ParamInit init,
                                const Shape& offset, const Shape& shape, bool shared, bool owner) {
  ParamEntry e;
  e.name = name;
  e.global_shape = global;
  e.shape = shape;
  e.slice_offset = offset;
  e.offset = total_;
  e.numel = shape_numel(e.shape);
  e.init = init;
  e.tp_shared = shared && shard_.tp > 1;
  e.owner = owner;
  index_[name] = entries_.size();
  entries_.push_back(e);
  total_ += (e.numel + kParamAlignElements - 1) / kParamAlignElements * kParamAlignElements;
}

Tensor ParameterLayout::slice_of(const ParamEntry& e, const Tensor& whole) {
  ORIGAMI_CHECK(whole.shape() == e.global_shape, "parameter '", e.name, "': expected the whole ",
                shape_str(e.global_shape), ", got ", whole.str());
  Tensor t = whole;
  for (size_t d = 0; d < e.shape.size(); ++d)
    if (e.shape[d] != e.global_shape[d]) t = t.narrow(int(d), e.slice_offset[d], e.shape[d]);
  return t;
}

void ParameterLayout::set_packed(const std::set<std::string>& names) {
  for (const std::string& n : names) entry(n);  // every name is known
  total_ = 0;
  expert_offset_ = -1;
  for (ParamEntry& e : entries_) {
    if (e.is_expert() && expert_offset_ < 0) expert_offset_ = total_;
    e.packed = names.count(e.name) != 0;
    if (e.packed) {
      e.offset = -1;
      continue;
    }
    e.offset = total_;
    total_ += (e.numel + kParamAlignElements - 1) / kParamAlignElements * kParamAlignElements;
  }
  if (expert_offset_ < 0) expert_offset_ = total_;
}

int64_t ParameterLayout::parameter_count() const {
  int64_t n = 0;
  for (const ParamEntry& e : entries_) n += e.numel;
  return n;
}

const ParamEntry& ParameterLayout::entry(const std::string& name) const {
  auto it = index_.find(name);
  ORIGAMI_CHECK(it != index_.end(), "parameter layout: no parameter named '", name, "'");
  return entries_[it->second];
}

ParameterBuffer::ParameterBuffer(const ParameterLayout& layout, DType dtype, Device device)
    : layout_(layout) {
  flat_ = Tensor::zeros({layout.total_numel()}, dtype, device);
  make_views();
}

ParameterBuffer::ParameterBuffer(const ParameterLayout& layout, Tensor flat) : layout_(layout) {
  ORIGAMI_CHECK(flat.defined() && flat.dim() == 1 && flat.numel() == layout.total_numel() &&
                    flat.is_contiguous(),
                "parameter buffer: flat storage must be a contiguous [", layout.total_numel(),
                "] tensor, got ", flat.defined() ? flat.str() : std::string("undefined"));
  flat_ = std::move(flat);
  make_views();
}

void ParameterBuffer::make_views() {
  views_.clear();
  for (const ParamEntry& e : layout_.entries())
    views_[e.name] = e.packed ? Tensor() : flat_.narrow(0, e.offset, e.numel).view(e.shape);
}

const Tensor& ParameterBuffer::get(const std::string& name) const {
  static const Tensor undefined;
  if (name.empty()) return undefined;
  auto it = views_.find(name);
  ORIGAMI_CHECK(it != views_.end(), "parameters: no parameter named '", name, "'");
  return it->second;
}

namespace {
// splitmix64: a small, well-mixed generator whose output is the same on every platform.
struct SplitMix64 {
  uint64_t state;
  uint64_t next() {
    uint64_t z = (state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
  double uniform() { return double(next() >> 11) * 0x1.0p-53; }  // [0, 1)
};
uint64_t fnv1a(const std::string& s) {
  uint64_t h = 1469598103934665603ull;
  for (unsigned char c : s) h = (h ^ c) * 1099511628211ull;
  return h;
}
}  // namespace

void ParameterBuffer::init_random(uint64_t seed, double std) {
  Tensor host = Tensor::zeros({layout_.total_numel()}, DType::f32);
  std::vector<float> whole;
  for (const ParamEntry& e : layout_.entries()) {
    if (e.packed) continue;
    const int64_t n = shape_numel(e.global_shape);
    whole.assign(size_t(n), 0.0f);
    if (e.init == ParamInit::ones) {
      whole.assign(size_t(n), 1.0f);
    } else if (e.init == ParamInit::normal) {
      SplitMix64 rng{seed ^ fnv1a(e.name)};
      for (int64_t i = 0; i < n; i += 2) {  // Box-Muller: two normals per draw
        const double u1 = 1.0 - rng.uniform(), u2 = rng.uniform();
        const double r = std::sqrt(-2.0 * std::log(u1)), a = 2.0 * M_PI * u2;
        whole[size_t(i)] = float(std * r * std::cos(a));
        if (i + 1 < n) whole[size_t(i + 1)] = float(std * r * std::sin(a));
      }
    }
    Tensor w = Tensor::from_vector(whole, e.global_shape, DType::f32);
    Tensor dst = host.narrow(0, e.offset, e.numel).view(e.shape);
    dst.copy_from(ParameterLayout::slice_of(e, w));
  }
  flat_.copy_from(host);
}

}  // namespace origami::models
