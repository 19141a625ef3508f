// The linear layers' weights of an inference decoder, packed for the decode kernels
// (ops/qlinear.h). Which weights are packed, and how:
//
//   mode dense  every weight stays in the decoder's buffer in the compute dtype; with bf16
//               compute the decoder also views each linear as a bf16 PackedLinear (no copy), so
//               decode runs the small-batch kernels on the same bytes oneDNN reads for prefill
//   mode int8 / int4
//               the linears (attention q, k, v, o; MLP gate, up, down; every expert; the shared
//               expert's MLP) are quantized round-to-nearest at load (asymmetric, per group of
//               group_size input columns), the untied lm_head to int8; they leave the buffer
//               (ParamEntry::packed), so the weights are held once
//   quantized   names whose weights come quantized from the checkpoint (a GPTQ folder): packed
//               as stored (int8 for 5-8 bits, int4 for 2-4), whatever the mode
// Embeddings, norms, biases, routers and the shared-expert gate stay in the buffer.
//
// Groups: RTN uses group_size when it divides the layer's input width, else the largest multiple
// of 32 below it that does (the kernels need groups of a multiple of 32 columns). A tensor-
// parallel slice of a quantized weight is cut at group boundaries: rows (q, k, v, gate, up) any
// way, columns (o, down) only where a group starts (and not with act-order, whose groups are
// scattered over the columns).
#pragma once

#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "models/gptq.h"
#include "models/parameters.h"
#include "ops/qlinear.h"

namespace origami::models {

enum class WeightMode { dense, int8, int4 };
const char* weight_mode_name(WeightMode m);  // "dense", "int8", "int4"
// "dense" (also "bf16", "f32": the compute dtype), "int8", "int4"; throws listing them otherwise.
WeightMode parse_weight_mode(const std::string& name);

struct LinearWeights {
  WeightMode mode = WeightMode::dense;
  int64_t group_size = 128;         // RTN: input columns per scale and zero
  std::set<std::string> quantized;  // canonical names stored quantized in the checkpoint
  bool exact = false;               // int kernels with f32 activations (ops::PackedLinearOptions)
  bool packs() const { return mode != WeightMode::dense || !quantized.empty(); }
};

// The canonical names of a layout's linear weights (not its router or embedding); with `head`
// the untied lm_head too.
std::vector<std::string> linear_weight_names(const ParameterLayout& layout, bool head);
// The entries a decoder with these settings holds packed.
std::set<std::string> packed_weight_names(const ParameterLayout& layout, const LinearWeights& lw);

class PackedWeights {
 public:
  PackedWeights() = default;
  // An empty slot per packed entry of `layout` (one per local expert for stacked experts).
  PackedWeights(const ParameterLayout& layout, const LinearWeights& lw, Device device);

  bool holds(const std::string& name) const { return slots_.count(name) != 0; }
  // The slot of `name` (expert: local index; -1 for a plain linear); filled or not.
  const ops::PackedLinear& get(const std::string& name, int64_t expert = -1) const;

  // From this rank's dense slice w [N,K] (f32, bf16 or f16, host): round-to-nearest at the mode's
  // bits (int8 for the head), packed.
  void set_dense(const std::string& name, int64_t expert, const Tensor& w);
  // The same for a whole entry's slice: [N,K], or [local experts, N, K] for stacked experts.
  void set_dense_entry(const std::string& name, const Tensor& slice);
  // From a checkpoint's quantized linear (the whole tensor, [out, in] of the global shape): this
  // rank's slice, packed. Groups of unequal size (a smaller last group) are split into groups
  // of 32 columns with their parent's scale and zero. Errors name the tensor.
  void set_quantized(const std::string& name, int64_t expert, const QuantizedLinear& whole);

  // Slots not yet filled, as "NAME" or "NAME (expert e)".
  std::vector<std::string> missing() const;
  int64_t bytes() const;  // of every filled slot
  int64_t count() const;  // slots

 private:
  ops::PackedLinear& slot(const std::string& name, int64_t expert);
  const ParameterLayout* layout_ = nullptr;
  LinearWeights lw_;
  std::string head_;
  Device device_ = Device::cpu();
  std::map<std::string, std::vector<ops::PackedLinear>> slots_;  // [1] or [local experts]
};

// The group size RTN uses for a layer `cols` wide (see above); throws when cols is not a
// multiple of 32.
int64_t rtn_group_size(int64_t requested, int64_t cols, const std::string& name);

}  // namespace origami::models
