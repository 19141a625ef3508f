#include "ops/activation.h"

#include "ops/check.h"
#include "ops/cpu/pointwise.h"
#if ORIGAMI_CUDA
#include "ops/cuda/pointwise.h"
#endif

namespace origami::ops {

namespace {

void check_row_scale(const char* op, const char* name, const Tensor& s, int64_t T) {
  if (!s.defined()) return;
  check_shape(op, name, s, {T});
  check_dtype(op, name, s, {DType::f32});
  check_contiguous(op, name, s);
}

}  // namespace

void swiglu_forward(const Tensor& gate, const Tensor& up, Tensor& out, const Tensor& row_scale) {
  constexpr const char* op = "swiglu_forward";
  check_dim(op, "gate", gate, 2);
  check_dtype(op, "gate", gate, {DType::f32, DType::bf16});
  check_shape(op, "up", up, gate.shape());
  check_same_dtype(op, "gate", gate, "up", up);
  check_shape(op, "out", out, gate.shape());
  check_same_dtype(op, "gate", gate, "out", out);
  check_contiguous(op, "gate", gate);
  check_contiguous(op, "up", up);
  check_contiguous(op, "out", out);
  check_row_scale(op, "row_scale", row_scale, gate.size(0));
  const Device dev = check_same_device(
      op, {{"gate", &gate}, {"up", &up}, {"out", &out}, {"row_scale", &row_scale}});
  if (gate.size(0) == 0) return;
  if (dev.is_cuda()) {
#if ORIGAMI_CUDA
    cuda::swiglu_forward(gate, up, out, row_scale);
#else
    fail_no_cuda(op);
#endif
    return;
  }
  cpu::swiglu_forward(gate, up, out, row_scale);
}

void swiglu_backward(const Tensor& gate, const Tensor& up, const Tensor& dout, Tensor& dgate,
                     Tensor& dup, const Tensor& row_scale, Tensor drow_scale) {
  constexpr const char* op = "swiglu_backward";
  check_dim(op, "gate", gate, 2);
  check_dtype(op, "gate", gate, {DType::f32, DType::bf16});
  check_shape(op, "up", up, gate.shape());
  check_same_dtype(op, "gate", gate, "up", up);
  check_shape(op, "dout", dout, gate.shape());
  check_same_dtype(op, "gate", gate, "dout", dout);
  check_shape(op, "dgate", dgate, gate.shape());
  check_same_dtype(op, "gate", gate, "dgate", dgate);
  check_shape(op, "dup", dup, gate.shape());
  check_same_dtype(op, "gate", gate, "dup", dup);
  check_contiguous(op, "gate", gate);
  check_contiguous(op, "up", up);
  check_contiguous(op, "dout", dout);
  check_contiguous(op, "dgate", dgate);
  check_contiguous(op, "dup", dup);
  check_row_scale(op, "row_scale", row_scale, gate.size(0));
  check_row_scale(op, "drow_scale", drow_scale, gate.size(0));
  ORIGAMI_CHECK(!drow_scale.defined() || row_scale.defined(), op,
                ": drow_scale needs row_scale (got drow_scale ", drow_scale.str(),
                " and no row_scale)");
  const Device dev = check_same_device(op, {{"gate", &gate},
                                            {"up", &up},
                                            {"dout", &dout},
                                            {"dgate", &dgate},
                                            {"dup", &dup},
                                            {"row_scale", &row_scale},
                                            {"drow_scale", &drow_scale}});
  if (gate.size(0) == 0) return;
  if (dev.is_cuda()) {
#if ORIGAMI_CUDA
    cuda::swiglu_backward(gate, up, dout, dgate, dup, row_scale, drow_scale);
#else
    fail_no_cuda(op);
#endif
    return;
  }
  cpu::swiglu_backward(gate, up, dout, dgate, dup, row_scale, drow_scale);
}

}  // namespace origami::ops
