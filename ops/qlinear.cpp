// Packed linear layers: argument checks, packing and device dispatch (kernels: ops/cpu/qlinear.cpp,
// ops/cuda/qlinear.cu).
#include "ops/qlinear.h"

#include <algorithm>
#include <iterator>
#include <string>
#include <vector>

#include "ops/check.h"
#include "ops/cpu/qlinear.h"
#if ORIGAMI_CUDA
#include "ops/cuda/qlinear.h"
#endif

namespace origami::ops {
namespace {

// The packed tensors of w on `device` (the CPU ones are copied; nothing else changes).
PackedLinear packed_on(const PackedLinear& w, Device device) {
  PackedLinear out = w;
  for (Tensor* t : {&out.data, &out.scales, &out.zeros, &out.perm})
    if (t->defined() && t->device() != device) *t = t->to(device);
  return out;
}

// What a PackedLinear must hold to be read by the kernels (one built by hand, or damaged, fails
// here rather than in a kernel). Errors name the tensor.
void check_packed(const char* op, const PackedLinear& w) {
  ORIGAMI_CHECK(w.defined(), op,
                ": w is undefined (make it with pack_f32, pack_bf16 or pack_quantized)");
  ORIGAMI_CHECK(w.rows > 0 && w.cols > 0, op, ": w has ", w.rows, " rows and ", w.cols,
                " columns; both must be positive");
  if (w.format == WeightFormat::bf16 || w.format == WeightFormat::f32) {
    check_dtype(op, "w.data", w.data, {w.format == WeightFormat::f32 ? DType::f32 : DType::bf16});
    check_shape(op, "w.data", w.data, {w.rows, w.cols});
    check_contiguous(op, "w.data", w.data);
    return;
  }
  const bool int4 = w.format == WeightFormat::int4;
  ORIGAMI_CHECK(w.group_size > 0 && w.group_size % cpu::kQBlock == 0 && w.cols % w.group_size == 0,
                op, ": w.group_size ", w.group_size, " must be a positive multiple of ",
                cpu::kQBlock, " dividing w.cols ", w.cols);
  ORIGAMI_CHECK(w.bits >= 1 && w.bits <= (int4 ? 4 : 8), op, ": w.bits ", w.bits,
                " does not fit format ", weight_format_name(w.format));
  const int64_t tiles = (w.rows + cpu::kQTileRows - 1) / cpu::kQTileRows;
  const int64_t groups = w.cols / w.group_size;
  check_dtype(op, "w.data", w.data, {DType::u8});
  check_shape(op, "w.data", w.data, {tiles, (int4 ? 8 : 16) * w.cols});
  check_dtype(op, "w.scales", w.scales, {DType::f32});
  check_shape(op, "w.scales", w.scales, {tiles, groups, cpu::kQTileRows});
  check_dtype(op, "w.zeros", w.zeros, {DType::f32});
  check_shape(op, "w.zeros", w.zeros, {tiles, groups, cpu::kQTileRows});
  for (const auto* t : {&w.data, &w.scales, &w.zeros}) check_contiguous(op, "w", *t);
  if (w.perm.defined()) {
    check_dtype(op, "w.perm", w.perm, {DType::i32});
    check_shape(op, "w.perm", w.perm, {w.cols});
  }
}

}  // namespace

const char* weight_format_name(WeightFormat f) {
  switch (f) {
    case WeightFormat::bf16:
      return "bf16";
    case WeightFormat::int8:
      return "int8";
    case WeightFormat::int4:
      return "int4";
    case WeightFormat::f32:
      return "f32";
  }
  return "?";
}

WeightFormat parse_weight_format(const std::string& name) {
  for (WeightFormat f :
       {WeightFormat::bf16, WeightFormat::int8, WeightFormat::int4, WeightFormat::f32})
    if (name == weight_format_name(f)) return f;
  ORIGAMI_FAIL("unknown weight format '", name, "': use f32, bf16, int8 or int4");
}

int64_t PackedLinear::bytes() const {
  int64_t total = 0;
  for (const Tensor* t : {&data, &scales, &zeros, &perm})
    if (t->defined()) total += int64_t(t->nbytes());
  return total;
}

namespace {

// W [N,K] itself as a PackedLinear of a dense format.
PackedLinear dense_view(WeightFormat format, int bits, const Tensor& w) {
  PackedLinear p;
  p.format = format;
  p.rows = w.size(0);
  p.cols = w.size(1);
  p.bits = bits;
  p.data = w;
  return p;
}

}  // namespace

PackedLinear pack_bf16(const Tensor& w) {
  const char* op = "pack_bf16";
  check_dim(op, "w", w, 2);
  check_dtype(op, "w", w, {DType::f32, DType::bf16});
  check_contiguous(op, "w", w);
  return dense_view(WeightFormat::bf16, 16, w.dtype() == DType::bf16 ? w : w.to(DType::bf16));
}

PackedLinear pack_f32(const Tensor& w) {
  const char* op = "pack_f32";
  check_dim(op, "w", w, 2);
  check_dtype(op, "w", w, {DType::f32});
  check_contiguous(op, "w", w);
  return dense_view(WeightFormat::f32, 32, w);
}

PackedLinear pack_quantized(int bits, int64_t rows, int64_t cols, const int32_t* q,
                            const float* scales, const int32_t* zeros, int64_t groups,
                            const int32_t* g_idx, Device device) {
  const char* op = "pack_quantized";
  ORIGAMI_CHECK(bits >= 1 && bits <= 8, op, ": bits must be 1..8, got ", bits);
  ORIGAMI_CHECK(rows > 0 && cols > 0, op, ": rows (N) and cols (K) must be positive, got ", rows,
                " and ", cols);
  ORIGAMI_CHECK(cols % cpu::kQBlock == 0, op, ": cols (K) must be a multiple of ", cpu::kQBlock,
                " for the int formats (activations are quantized in blocks of ", cpu::kQBlock,
                " columns), got ", cols, "; keep this layer in bf16 (pack_bf16)");
  ORIGAMI_CHECK(groups >= 1 && cols % groups == 0, op, ": groups must divide cols (K) ", cols,
                ", got ", groups);
  const int64_t group_size = cols / groups;
  ORIGAMI_CHECK(group_size % cpu::kQBlock == 0, op, ": a group must hold a multiple of ",
                cpu::kQBlock, " columns, got ", groups, " groups of ", group_size, " columns (K ",
                cols, "); requantize with a group size that is a multiple of ", cpu::kQBlock,
                ", or keep this layer in bf16");
  ORIGAMI_CHECK(q && scales && zeros, op, ": q, scales and zeros must not be null");
  const int32_t max_level = (1 << bits) - 1;
  for (int64_t i = 0; i < rows * cols; ++i)
    ORIGAMI_CHECK(q[i] >= 0 && q[i] <= max_level, op, ": q[", i, "] (row ", i / cols, ", column ",
                  i % cols, ") = ", q[i], " is not a ", bits, "-bit level (0..", max_level, ")");
  for (int64_t i = 0; i < groups * rows; ++i)
    ORIGAMI_CHECK(zeros[i] >= 0 && zeros[i] <= max_level, op, ": zeros[", i, "] (group ", i / rows,
                  ", row ", i % rows, ") = ", zeros[i], " is not a ", bits, "-bit level (0..",
                  max_level, ")");

  // Packed column order: the columns of group 0, then of group 1, ... each in W's order. No
  // permutation when that is W's own order.
  std::vector<int32_t> perm;
  if (g_idx) {
    std::vector<int64_t> count(size_t(groups), 0);
    bool identity = true;
    for (int64_t k = 0; k < cols; ++k) {
      ORIGAMI_CHECK(g_idx[k] >= 0 && g_idx[k] < groups, op, ": g_idx[", k, "] = ", g_idx[k],
                    " is not a group (0..", groups - 1, ")");
      ++count[size_t(g_idx[k])];
      identity = identity && g_idx[k] == k / group_size;
    }
    for (int64_t g = 0; g < groups; ++g)
      ORIGAMI_CHECK(count[size_t(g)] == group_size, op, ": group ", g, " of g_idx holds ",
                    count[size_t(g)], " columns; every group must hold K/groups = ", group_size);
    if (!identity) {
      std::vector<int64_t> next(static_cast<size_t>(groups));
      for (int64_t g = 0; g < groups; ++g) next[size_t(g)] = g * group_size;
      perm.resize(size_t(cols));
      for (int64_t k = 0; k < cols; ++k) perm[size_t(next[size_t(g_idx[k])]++)] = int32_t(k);
    }
  }
  if (device.is_cuda()) {
#if !ORIGAMI_CUDA
    fail_no_cuda(op);
#endif
  }
  const PackedLinear w = cpu::pack_int(bits, rows, cols, groups, q, scales, zeros, perm);
  return device.is_cpu() ? w : packed_on(w, device);
}

Tensor dequantize(const PackedLinear& w) {
  check_packed("dequantize", w);
  const Device device = w.device();
  if (device.is_cpu()) return cpu::dequantize(w);
  return cpu::dequantize(packed_on(w, Device::cpu())).to(device);
}

namespace {

// The checks of one linear of a call; returns the device it runs on.
Device check_linear(const char* op, const Tensor& x, const PackedLinear& w, const Tensor& y) {
  check_packed(op, w);
  check_dim(op, "x", x, 2);
  check_dtype(op, "x", x, {DType::f32, DType::bf16});
  check_contiguous(op, "x", x);
  ORIGAMI_CHECK(x.size(1) == w.cols, op, ": x ", x.str(), " has ", x.size(1), " columns but w (",
                weight_format_name(w.format), " [", w.rows, ",", w.cols, "]) expects K = ", w.cols);
  check_dim(op, "y", y, 2);
  if (x.dtype() == DType::f32)
    check_dtype(op, "y", y, {DType::f32});
  else
    check_dtype(op, "y", y, {DType::f32, x.dtype()});
  check_shape(op, "y", y, {x.size(0), w.rows});
  check_contiguous(op, "y", y);
  const Device device = check_same_device(op, {{"x", &x}, {"y", &y}, {"w.data", &w.data}});
  check_same_device(
      op,
      {{"w.data", &w.data}, {"w.scales", &w.scales}, {"w.zeros", &w.zeros}, {"w.perm", &w.perm}});
  if (device.is_cuda()) {
#if !ORIGAMI_CUDA
    fail_no_cuda(op);
#endif
  }
  return device;
}

}  // namespace

void packed_linear(const Tensor& x, const PackedLinear& w, Tensor& y,
                   const PackedLinearOptions& opt) {
  if (check_linear("packed_linear", x, w, y).is_cpu()) return cpu::packed_linear(x, w, y, opt);
#if ORIGAMI_CUDA
  cuda::packed_linear(x, w, y, opt);
#endif
}

void packed_linear_group(std::span<const Tensor* const> x, std::span<const PackedLinear* const> w,
                         std::span<Tensor* const> y, const PackedLinearOptions& opt) {
  const char* op = "packed_linear_group";
  ORIGAMI_CHECK(w.size() == y.size() && w.size() == x.size(), op, ": ", x.size(), " inputs, ",
                w.size(), " weights and ", y.size(), " outputs; one of each per linear");
  ORIGAMI_CHECK(w.size() >= 1 && w.size() <= kMaxPackedGroup, op, ": 1 to ", kMaxPackedGroup,
                " linears, got ", w.size());
  Device device;
  for (size_t i = 0; i < w.size(); ++i) {
    ORIGAMI_CHECK(x[i] && w[i] && y[i], op, ": linear ", i, " has no input, weights or output");
    const Device d = check_linear(op, *x[i], *w[i], *y[i]);
    ORIGAMI_CHECK(i == 0 || d == device, op, ": linear ", i, " is on ", d.str(), ", linear 0 on ",
                  device.str(), "; a group runs on one device");
    device = d;
  }
  if (device.is_cpu()) return cpu::packed_linear_group(x, w, y, opt);
#if ORIGAMI_CUDA
  for (size_t i = 0; i < w.size(); ++i) cuda::packed_linear(*x[i], *w[i], *y[i], opt);
#endif
}

void packed_linear_group(const Tensor& x, std::span<const PackedLinear* const> w,
                         std::span<Tensor* const> y, const PackedLinearOptions& opt) {
  ORIGAMI_CHECK(w.size() >= 1 && w.size() <= kMaxPackedGroup, "packed_linear_group: 1 to ",
                kMaxPackedGroup, " linears, got ", w.size());
  const Tensor* xs[kMaxPackedGroup];
  std::fill(std::begin(xs), std::end(xs), &x);
  packed_linear_group({xs, w.size()}, w, y, opt);
}

}  // namespace origami::ops
