#include "models/packed_weights.h"

#include <algorithm>

#include "runtime/error.h"

namespace origami::models {

const char* weight_mode_name(WeightMode m) {
  switch (m) {
    case WeightMode::dense:
      return "dense";
    case WeightMode::int8:
      return "int8";
    case WeightMode::int4:
      return "int4";
  }
  return "?";
}

WeightMode parse_weight_mode(const std::string& name) {
  if (name == "dense" || name == "bf16" || name == "f32") return WeightMode::dense;
  if (name == "int8") return WeightMode::int8;
  if (name == "int4") return WeightMode::int4;
  ORIGAMI_FAIL("unknown weight format '", name,
               "': use dense (the compute dtype), int8 or int4 (round-to-nearest at load)");
}

std::vector<std::string> linear_weight_names(const ParameterLayout& layout, bool head) {
  std::vector<std::string> out;
  const ModelParamNames& n = layout.names();
  for (int64_t l = layout.layer_begin(); l < layout.layer_end(); ++l) {
    const LayerParamNames& y = n.layers[size_t(l)];
    for (const std::string* name :
         {&y.q, &y.k, &y.v, &y.o, &y.mlp_gate, &y.mlp_up, &y.mlp_down, &y.expert_gate, &y.expert_up,
          &y.expert_down, &y.shared_gate, &y.shared_up, &y.shared_down})
      if (!name->empty() && layout.has(*name)) out.push_back(*name);
  }
  if (head && !n.lm_head.empty() && layout.has(n.lm_head)) out.push_back(n.lm_head);
  return out;
}

std::set<std::string> packed_weight_names(const ParameterLayout& layout, const LinearWeights& lw) {
  std::set<std::string> out;
  if (lw.mode != WeightMode::dense)
    for (const std::string& n : linear_weight_names(layout, true)) out.insert(n);
  for (const std::string& n : lw.quantized)
    if (layout.has(n)) out.insert(n);
  return out;
}

int64_t rtn_group_size(int64_t requested, int64_t cols, const std::string& name) {
  ORIGAMI_CHECK(cols % 32 == 0, name, ": ", cols,
                " input columns; int8/int4 weights need a multiple of 32 (use --weights dense)");
  int64_t g = requested <= 0 || requested > cols ? cols : requested / 32 * 32;
  if (g < 32) g = 32;
  while (cols % g != 0) g -= 32;
  return g;
}

PackedWeights::PackedWeights(const ParameterLayout& layout, const LinearWeights& lw, Device device)
    : layout_(&layout), lw_(lw), head_(layout.names().lm_head), device_(device) {
  for (const ParamEntry& e : layout.entries())
    if (e.packed) slots_[e.name].resize(size_t(e.is_expert() ? e.experts : 1));
}

ops::PackedLinear& PackedWeights::slot(const std::string& name, int64_t expert) {
  auto it = slots_.find(name);
  ORIGAMI_CHECK(it != slots_.end(), "packed weights: '", name, "' is not a packed weight");
  const int64_t n = int64_t(it->second.size());
  ORIGAMI_CHECK((n == 1 && expert < 0) || (expert >= 0 && expert < n), "packed weights: '", name,
                "' has ", n, " slot(s), asked for expert ", expert);
  return it->second[size_t(expert < 0 ? 0 : expert)];
}

const ops::PackedLinear& PackedWeights::get(const std::string& name, int64_t expert) const {
  return const_cast<PackedWeights*>(this)->slot(name, expert);
}

void PackedWeights::set_dense(const std::string& name, int64_t expert, const Tensor& w) {
  ops::PackedLinear& dst = slot(name, expert);
  ORIGAMI_CHECK(w.dim() == 2, "packed weights: '", name, "' must be [out, in], got ", w.str());
  const ParamEntry& e = layout_->entry(name);
  const Shape want = e.is_expert() ? Shape(e.shape.begin() + 1, e.shape.end()) : e.shape;
  ORIGAMI_CHECK(w.shape() == want, "packed weights: '", name, "' is ", shape_str(want),
                " on this rank, got ", w.str());
  const int64_t rows = w.size(0), cols = w.size(1);
  QuantConfig qc;
  qc.bits = name == head_ || lw_.mode != WeightMode::int4 ? 8 : 4;
  qc.group_size = rtn_group_size(lw_.group_size, cols, name);
  Tensor f = w.device().is_cpu() ? w : w.to(Device::cpu());
  if (f.dtype() != DType::f32) f = f.to(DType::f32);
  if (!f.is_contiguous()) f = f.contiguous();
  const QuantizedLinear q = rtn_quantize(f.data_as<float>(), rows, cols, qc);
  dst = ops::pack_quantized(q.bits, rows, cols, q.q.data(), q.scales.data(), q.zeros.data(),
                            q.groups(), q.g_idx.data(), device_);
}

namespace {
// The same weights with every group split into groups of 32 columns (the kernels need groups of
// one size; AutoGPTQ leaves a smaller last group when the group size does not divide the width).
// Each new group keeps its parent's scale and zero, so nothing changes numerically.
QuantizedLinear split_groups(const QuantizedLinear& q, const std::string& name) {
  const int64_t G = q.groups();
  std::vector<int64_t> count(size_t(G), 0);
  for (int32_t g : q.g_idx) ++count[size_t(g)];
  std::vector<int64_t> first(size_t(G), 0);  // first new group of each old one
  int64_t total = 0;
  for (int64_t g = 0; g < G; ++g) {
    ORIGAMI_CHECK(count[size_t(g)] % 32 == 0, name, ": group ", g, " holds ", count[size_t(g)],
                  " columns; the int kernels need groups of a multiple of 32 columns");
    first[size_t(g)] = total;
    total += count[size_t(g)] / 32;
  }
  QuantizedLinear out = q;
  out.group_size = 32;
  out.scales.assign(size_t(total * q.rows), 0.0f);
  out.zeros.assign(size_t(total * q.rows), 0);
  std::vector<int64_t> seen(size_t(G), 0);
  for (int64_t c = 0; c < q.cols; ++c) {
    const int64_t g = q.g_idx[size_t(c)];
    out.g_idx[size_t(c)] = int32_t(first[size_t(g)] + seen[size_t(g)]++ / 32);
  }
  for (int64_t g = 0; g < G; ++g)
    for (int64_t s = 0; s < count[size_t(g)] / 32; ++s)
      for (int64_t r = 0; r < q.rows; ++r) {
        out.scales[size_t((first[size_t(g)] + s) * q.rows + r)] = q.scales[size_t(g * q.rows + r)];
        out.zeros[size_t((first[size_t(g)] + s) * q.rows + r)] = q.zeros[size_t(g * q.rows + r)];
      }
  return out;
}

// Whether every group of q holds the same number of columns.
bool even_groups(const QuantizedLinear& q) {
  const int64_t G = q.groups();
  if (G <= 0 || q.cols % G != 0) return false;
  std::vector<int64_t> count(size_t(G), 0);
  for (int32_t g : q.g_idx) ++count[size_t(g)];
  for (int64_t c : count)
    if (c != q.cols / G) return false;
  return true;
}
}  // namespace

void PackedWeights::set_dense_entry(const std::string& name, const Tensor& slice) {
  if (!layout_->entry(name).is_expert()) return set_dense(name, -1, slice);
  for (int64_t x = 0; x < slice.size(0); ++x) set_dense(name, x, slice.select(0, x));
}

void PackedWeights::set_quantized(const std::string& name, int64_t expert,
                                  const QuantizedLinear& stored) {
  ops::PackedLinear& dst = slot(name, expert);
  const QuantizedLinear whole = even_groups(stored) ? stored : split_groups(stored, name);
  const ParamEntry& e = layout_->entry(name);
  const size_t d0 = e.is_expert() ? 1 : 0;  // the [out, in] dims of the entry
  const int64_t gr = e.global_shape[d0], gc = e.global_shape[d0 + 1];
  ORIGAMI_CHECK(whole.rows == gr && whole.cols == gc, name,
                ": the checkpoint's quantized weight is [", whole.rows, ", ", whole.cols,
                "], the model expects [", gr, ", ", gc, "]");
  const int64_t r0 = e.slice_offset.empty() ? 0 : e.slice_offset[d0];
  const int64_t c0 = e.slice_offset.empty() ? 0 : e.slice_offset[d0 + 1];
  const int64_t rows = e.shape[d0], cols = e.shape[d0 + 1];
  const int64_t G = whole.groups();
  if (rows == gr && cols == gc) {
    dst = ops::pack_quantized(whole.bits, rows, cols, whole.q.data(), whole.scales.data(),
                              whole.zeros.data(), G, whole.g_idx.data(), device_);
    return;
  }
  // Columns [c0, c0 + cols): whole groups only, and groups in column order (no act-order).
  int64_t g0 = 0, Gl = G;
  if (cols != gc) {
    const int64_t g = gc / G;
    bool monotone = gc % G == 0;
    for (int64_t c = 0; c < gc && monotone; ++c) monotone = whole.g_idx[size_t(c)] == c / g;
    ORIGAMI_CHECK(monotone, name,
                  ": its input columns are split over tensor-parallel ranks, but its groups are "
                  "not in column order (act-order checkpoint); run it with tp 1 or quantize "
                  "without --act-order");
    ORIGAMI_CHECK(c0 % g == 0 && cols % g == 0, name, ": this rank's input columns [", c0, ", ",
                  c0 + cols, ") do not start and end at group boundaries (groups of ", g,
                  "); use a tensor-parallel size whose slices hold whole groups");
    g0 = c0 / g;
    Gl = cols / g;
  }
  std::vector<int32_t> q(size_t(rows * cols)), zeros(size_t(Gl * rows));
  std::vector<int32_t> g_idx(static_cast<size_t>(cols));
  std::vector<float> scales(size_t(Gl * rows));
  for (int64_t r = 0; r < rows; ++r)
    std::copy_n(whole.q.begin() + (r0 + r) * gc + c0, cols, q.begin() + r * cols);
  for (int64_t g = 0; g < Gl; ++g)
    for (int64_t r = 0; r < rows; ++r) {
      scales[size_t(g * rows + r)] = whole.scales[size_t((g0 + g) * gr + r0 + r)];
      zeros[size_t(g * rows + r)] = whole.zeros[size_t((g0 + g) * gr + r0 + r)];
    }
  for (int64_t c = 0; c < cols; ++c) g_idx[size_t(c)] = whole.g_idx[size_t(c0 + c)] - int32_t(g0);
  dst = ops::pack_quantized(whole.bits, rows, cols, q.data(), scales.data(), zeros.data(), Gl,
                            g_idx.data(), device_);
}

std::vector<std::string> PackedWeights::missing() const {
  std::vector<std::string> out;
  for (const auto& [name, v] : slots_)
    for (size_t i = 0; i < v.size(); ++i)
      if (!v[i].defined())
        out.push_back(v.size() == 1 ? name : name + " (expert " + std::to_string(i) + ")");
  return out;
}

int64_t PackedWeights::bytes() const {
  int64_t n = 0;
  for (const auto& [name, v] : slots_)
    for (const ops::PackedLinear& p : v)
      if (p.defined()) n += p.bytes();
  return n;
}

int64_t PackedWeights::count() const {
  int64_t n = 0;
  for (const auto& [name, v] : slots_) n += int64_t(v.size());
  return n;
}

}  // namespace origami::models
