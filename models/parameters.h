// Parameters of a model in ONE allocation (llm.c style): a ParameterLayout lists every tensor by
// its canonical name (the Hugging Face name; expert weights stacked per layer, the ".{e}" of the
// Hugging Face name dropped) with its shape and offset; a ParameterBuffer is one flat tensor of
// that layout with a named view per parameter. Gradients are a second ParameterBuffer of the same
// layout in f32; a bf16 compute copy is a third.
//
// Expert weights are stacked so that grouped GEMM uses them directly:
//   .experts.gate_proj.weight [E,F,H]  (Mixtral: .experts.w1.weight)
//   .experts.up_proj.weight   [E,F,H]  (Mixtral: .experts.w3.weight)
//   .experts.down_proj.weight [E,H,F]  (Mixtral: .experts.w2.weight)
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "models/model_spec.h"
#include "runtime/tensor.h"

namespace origami::models {

enum class ParamInit { normal, ones, zeros };

struct ParamEntry {
  std::string name;
  Shape shape;
  int64_t offset = 0;  // elements into the flat buffer (a multiple of kParamAlignElements)
  int64_t numel = 0;
  ParamInit init = ParamInit::normal;
  int64_t experts = 0;  // > 0: stacked expert weight, dim 0 = expert
};

// Offsets are rounded up to this many elements (128 bytes of f32, 64 of bf16).
constexpr int64_t kParamAlignElements = 32;

// The roles of one decoder layer's tensors, as canonical names (empty = absent in this layer).
struct LayerParamNames {
  std::string input_norm, q, q_bias, k, k_bias, v, v_bias, o, post_norm;
  std::string mlp_gate, mlp_up, mlp_down;           // dense SwiGLU MLP
  std::string router;                               // MoE router [E,H]
  std::string expert_gate, expert_up, expert_down;  // stacked experts
  std::string shared_gate, shared_up, shared_down;  // shared expert MLP
  std::string shared_expert_gate;                   // [1,H]
};
struct ModelParamNames {
  std::string embed, final_norm, lm_head;  // lm_head empty when tied to embed
  std::vector<LayerParamNames> layers;
};
ModelParamNames param_names(const ModelSpec& spec);

class ParameterLayout {
 public:
  ParameterLayout() = default;
  explicit ParameterLayout(const ModelSpec& spec);

  const std::vector<ParamEntry>& entries() const { return entries_; }
  int64_t total_numel() const { return total_; }  // including alignment padding
  int64_t parameter_count() const;                // without padding
  bool has(const std::string& name) const { return index_.count(name) != 0; }
  const ParamEntry& entry(const std::string& name) const;  // throws naming the unknown name
  const ModelParamNames& names() const { return names_; }

 private:
  void add(const std::string& name, const Shape& shape, ParamInit init, int64_t experts = 0);
  std::vector<ParamEntry> entries_;
  std::map<std::string, size_t> index_;
  ModelParamNames names_;
  int64_t total_ = 0;
};

class ParameterBuffer {
 public:
  ParameterBuffer() = default;
  // Allocates the flat buffer (zero-filled).
  ParameterBuffer(const ParameterLayout& layout, DType dtype, Device device = Device::cpu());
  // Uses `flat` ([total_numel], from an arena) as the storage.
  ParameterBuffer(const ParameterLayout& layout, Tensor flat);

  const ParameterLayout& layout() const { return layout_; }
  const Tensor& flat() const { return flat_; }
  Tensor& flat() { return flat_; }
  DType dtype() const { return flat_.dtype(); }
  Device device() const { return flat_.device(); }
  // The named view (throws naming an unknown name); an empty name gives an undefined tensor.
  const Tensor& get(const std::string& name) const;
  const Tensor& operator[](const std::string& name) const { return get(name); }

  // Deterministic init from `seed`: normal(0, std) for matrices, ones for norms, zeros for
  // biases. Every tensor draws from its own stream (seed and name), so the values do not depend
  // on the layout order or on the device.
  void init_random(uint64_t seed, double std);
  void zero() { flat_.zero_(); }
  // Copies (converting dtype / device) every element from another buffer of the same layout.
  void copy_from(const ParameterBuffer& src) { flat_.copy_from(src.flat_); }

 private:
  void make_views();
  ParameterLayout layout_;
  Tensor flat_;
  std::map<std::string, Tensor> views_;
};

}  // namespace origami::models
