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
#include <set>
#include <string>
#include <vector>

#include "models/model_spec.h"
#include "runtime/tensor.h"

namespace origami::models {

enum class ParamInit { normal, ones, zeros };

struct ParamEntry {
  std::string name;
  Shape shape;         // this rank's slice
  int64_t offset = 0;  // elements into the flat buffer (a multiple of kParamAlignElements)
  int64_t numel = 0;
  ParamInit init = ParamInit::normal;
  int64_t experts = 0;  // > 0: stacked expert weight, dim 0 = expert

  // Where the slice sits in the whole tensor (see ShardSpec): shape == global_shape when whole.
  Shape global_shape;
  Shape slice_offset;  // per dimension: where this rank's slice starts in the whole tensor
  // Replicated over the TP group, but each rank sees only its tokens (sequence parallel): the
  // gradients are partial sums, all-reduced over TP.
  bool tp_partial = false;
  // A slice held by several TP ranks (KV heads replicated when there are fewer KV heads than TP
  // ranks): their gradients are summed among the ranks holding the same slice.
  bool tp_shared = false;
  // This rank is the one that owns the values (counts them in the gradient norm, writes them to
  // checkpoints, contributes them when tensors are gathered). False for the copies of replicated
  // and shared slices on all but one TP rank, and for the head stage's copy of a tied embedding.
  bool owner = true;
  bool tied_copy = false;  // the pipeline head stage's copy of the tied embedding
  // Held outside the flat buffer, packed for inference (models/packed_weights.h): no space in
  // the buffer (offset -1) and an undefined view; loaders hand its values to the packed store.
  bool packed = false;
  bool sharded() const { return shape != global_shape; }
  bool is_expert() const { return experts > 0; }
};

// Which part of the model one rank holds: its tensor-parallel slice (Megatron-style: q/k/v and
// gate/up split by output rows, o and down by input columns, embedding and lm_head by
// vocabulary rows) of the layers [layer_begin, layer_end) (a pipeline chunk). The chunk that
// starts at layer 0 holds the embedding; the one that ends at the last layer holds the final
// norm and the head (and, with tied embeddings, a copy of the embedding kept in sync).
//
// Expert weights follow the expert layout of the same ranks (MoE parallel folding): the rank holds
// experts [ep_rank*E/ep, (ep_rank+1)*E/ep), each split over ETP like the MLP (gate/up by rows of
// the expert width, down by columns). They are placed after every other tensor, from
// expert_offset() on, so that the expert region is reduced over the expert-data-parallel group.
struct ShardSpec {
  int tp = 1, tp_rank = 0;
  int ep = 1, ep_rank = 0, etp = 1, etp_rank = 0;
  int64_t layer_begin = 0, layer_end = -1;  // -1: every layer
  bool sequence_parallel = false;
  bool whole() const { return tp == 1 && ep == 1 && etp == 1 && layer_begin == 0 && layer_end < 0; }
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
  explicit ParameterLayout(const ModelSpec& spec, const ShardSpec& shard = {});

  const std::vector<ParamEntry>& entries() const { return entries_; }
  int64_t total_numel() const { return total_; }  // including alignment padding
  int64_t parameter_count() const;                // without padding
  bool has(const std::string& name) const { return index_.count(name) != 0; }
  const ParamEntry& entry(const std::string& name) const;  // throws naming the unknown name
  const ModelParamNames& names() const { return names_; }
  const ShardSpec& shard() const { return shard_; }
  int64_t layer_begin() const { return layer_begin_; }
  int64_t layer_end() const { return layer_end_; }
  // Where the expert tensors start (== total_numel() when there are none).
  int64_t expert_offset() const { return expert_offset_; }
  bool has_embedding() const { return has(names_.embed); }
  bool has_head() const { return has(names_.final_norm); }

  // The slice of `whole` (a tensor of e.global_shape) that this layout holds for entry e.
  static Tensor slice_of(const ParamEntry& e, const Tensor& whole);

  // Marks these entries packed (ParamEntry::packed) and lays the others out again without them.
  // Throws naming a name the layout does not have.
  void set_packed(const std::set<std::string>& names);

 private:
  // Adds a tensor of global shape `shape`, split over TP along `shard_dim` (or whole).
  void add(const std::string& name, const Shape& shape, ParamInit init, int64_t experts = 0,
           int shard_dim = -1);
  // A slice of shape `shape` at `offset` (per dimension) of a tensor of shape `global`.
  void add_slice(const std::string& name, const Shape& global, ParamInit init, const Shape& offset,
                 const Shape& shape, bool shared, bool owner);
  void add_expert(const std::string& name, const Shape& global, int etp_dim);
  ShardSpec shard_;
  int64_t layer_begin_ = 0, layer_end_ = 0, expert_offset_ = 0;
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
  // The named view (throws naming an unknown name); an empty name or a packed entry gives an
  // undefined tensor.
  const Tensor& get(const std::string& name) const;
  const Tensor& operator[](const std::string& name) const { return get(name); }

  // Deterministic init from `seed`: normal(0, std) for matrices, ones for norms, zeros for
  // biases. Every tensor draws from its own stream (seed and name) over its whole shape, and a
  // slice keeps its part, so the values depend neither on the layout order, nor on the device,
  // nor on how the model is split over ranks.
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
