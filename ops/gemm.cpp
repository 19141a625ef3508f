// Argument checks and device dispatch of the GEMM family (kernels: ops/cpu/gemm.cpp, oneDNN;
// ops/cuda/gemm.cpp, cuBLAS).
#include "ops/gemm.h"

#include <string>
#include <utility>

#include "ops/check.h"
#include "ops/cpu/gemm.h"
#if ORIGAMI_CUDA
#include "ops/cuda/gemm.h"
#endif

namespace origami::ops {
namespace {

using Named = std::pair<const char*, const Tensor*>;

// All defined tensors on one device; the message lists every tensor with its shape and device.
Device common_device(const char* op, std::initializer_list<Named> ts) {
  const Tensor* first = nullptr;
  bool same = true;
  for (const auto& [name, t] : ts) {
    if (!t->defined()) continue;
    if (!first)
      first = t;
    else if (t->device() != first->device())
      same = false;
  }
  if (!same) {
    std::string all;
    for (const auto& [name, t] : ts)
      if (t->defined()) all += std::string(all.empty() ? "" : ", ") + name + " " + t->str();
    ORIGAMI_FAIL(op, ": all tensors must be on one device, got ", all);
  }
  return first ? first->device() : Device::cpu();
}

void check_float_input(const char* op, const char* name, const Tensor& t) {
  check_dtype(op, name, t, {DType::f32, DType::bf16});
  check_contiguous(op, name, t);
}

// Outputs are f32, or the inputs' dtype.
void check_output(const char* op, const char* name, const Tensor& t, DType in) {
  if (in == DType::f32)
    check_dtype(op, name, t, {DType::f32});
  else
    check_dtype(op, name, t, {DType::f32, in});
  check_contiguous(op, name, t);
}

void gemm_checked(const char* op, int dims, const Tensor& a, const Tensor& b, Tensor& out,
                  const GemmOptions& opt) {
  check_dim(op, "a", a, dims);
  check_dim(op, "b", b, dims);
  check_dim(op, "out", out, dims);
  check_float_input(op, "a", a);
  check_float_input(op, "b", b);
  check_same_dtype(op, "a", a, "b", b);
  check_output(op, "out", out, a.dtype());
  const Device device = common_device(op, {{"a", &a}, {"b", &b}, {"out", &out}});
  const int64_t m = opt.trans_a ? a.size(-1) : a.size(-2);
  const int64_t k = opt.trans_a ? a.size(-2) : a.size(-1);
  const int64_t kb = opt.trans_b ? b.size(-1) : b.size(-2);
  const int64_t n = opt.trans_b ? b.size(-2) : b.size(-1);
  ORIGAMI_CHECK(k == kb, op, ": inner dimensions differ: op(a) is [", m, ",", k, "] from a ",
                a.str(), opt.trans_a ? " transposed" : "", ", op(b) is [", kb, ",", n, "] from b ",
                b.str(), opt.trans_b ? " transposed" : "");
  Shape expected = dims == 3 ? Shape{a.size(0), m, n} : Shape{m, n};
  if (dims == 3)
    ORIGAMI_CHECK(a.size(0) == b.size(0), op, ": batch sizes differ: a ", a.str(), ", b ", b.str());
  check_shape(op, "out", out, expected);
  if (device.is_cuda()) {
#if ORIGAMI_CUDA
    cuda::gemm(a, b, out, opt);
#else
    fail_no_cuda(op);
#endif
  } else {
    cpu::gemm(a, b, out, opt);
  }
}

// Shapes shared by grouped_gemm and its backward: x [T,K], w [G,K,N] or [G,N,K], group_rows
// with G entries, each >= 0, summing to T. Returns N.
int64_t check_groups(const char* op, const Tensor& x, const Tensor& w,
                     std::span<const int64_t> group_rows, bool trans_w) {
  check_dim(op, "x", x, 2);
  check_dim(op, "w", w, 3);
  check_float_input(op, "x", x);
  check_float_input(op, "w", w);
  check_same_dtype(op, "x", x, "w", w);
  const int64_t k = trans_w ? w.size(2) : w.size(1), n = trans_w ? w.size(1) : w.size(2);
  ORIGAMI_CHECK(k == x.size(1), op, ": x ", x.str(), " has ", x.size(1), " columns but w ", w.str(),
                trans_w ? " (stored [G,N,K])" : " (stored [G,K,N])", " expects K = ", k);
  ORIGAMI_CHECK(int64_t(group_rows.size()) == w.size(0), op, ": group_rows has ", group_rows.size(),
                " entries but w ", w.str(), " has ", w.size(0), " groups");
  int64_t total = 0;
  for (size_t g = 0; g < group_rows.size(); ++g) {
    ORIGAMI_CHECK(group_rows[g] >= 0, op, ": group_rows[", g, "] is negative (", group_rows[g],
                  ")");
    total += group_rows[g];
  }
  ORIGAMI_CHECK(total == x.size(0), op, ": group_rows sum to ", total, " but x ", x.str(), " has ",
                x.size(0), " rows");
  return n;
}

}  // namespace

void gemm(const Tensor& a, const Tensor& b, Tensor& out, const GemmOptions& opt) {
  gemm_checked("gemm", 2, a, b, out, opt);
}

void batched_gemm(const Tensor& a, const Tensor& b, Tensor& out, const GemmOptions& opt) {
  gemm_checked("batched_gemm", 3, a, b, out, opt);
}

void grouped_gemm(const Tensor& x, const Tensor& w, std::span<const int64_t> group_rows,
                  Tensor& out, bool trans_w, float alpha, float beta, bool fixed_rows) {
  const char* op = "grouped_gemm";
  const int64_t n = check_groups(op, x, w, group_rows, trans_w);
  check_dim(op, "out", out, 2);
  check_output(op, "out", out, x.dtype());
  check_shape(op, "out", out, {x.size(0), n});
  const Device device = common_device(op, {{"x", &x}, {"w", &w}, {"out", &out}});
  if (device.is_cuda()) {
#if ORIGAMI_CUDA
    cuda::grouped_gemm(x, w, group_rows, out, trans_w, alpha, beta);
#else
    fail_no_cuda(op);
#endif
  } else {
    cpu::grouped_gemm(x, w, group_rows, out, trans_w, alpha, beta, fixed_rows);
  }
}

void grouped_gemm_backward(const Tensor& x, const Tensor& w, const Tensor& dout,
                           std::span<const int64_t> group_rows, Tensor& dx, Tensor& dw,
                           bool trans_w, bool accumulate_dx) {
  const char* op = "grouped_gemm_backward";
  const int64_t n = check_groups(op, x, w, group_rows, trans_w);
  check_dim(op, "dout", dout, 2);
  check_float_input(op, "dout", dout);
  check_same_dtype(op, "x", x, "dout", dout);
  check_shape(op, "dout", dout, {x.size(0), n});
  if (dx.defined()) {
    check_output(op, "dx", dx, x.dtype());
    check_shape(op, "dx", dx, x.shape());
  }
  if (dw.defined()) {
    check_output(op, "dw", dw, w.dtype());
    check_shape(op, "dw", dw, w.shape());
  }
  const Device device =
      common_device(op, {{"x", &x}, {"w", &w}, {"dout", &dout}, {"dx", &dx}, {"dw", &dw}});
  if (device.is_cuda()) {
#if ORIGAMI_CUDA
    cuda::grouped_gemm_backward(x, w, dout, group_rows, dx, dw, trans_w, accumulate_dx);
#else
    fail_no_cuda(op);
#endif
  } else {
    cpu::grouped_gemm_backward(x, w, dout, group_rows, dx, dw, trans_w, accumulate_dx);
  }
}

}  // namespace origami::ops
