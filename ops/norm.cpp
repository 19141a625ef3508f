#include "ops/norm.h"

#include "ops/check.h"
#include "ops/cpu/pointwise.h"
#if ORIGAMI_CUDA
#include "ops/cuda/pointwise.h"
#endif

namespace origami::ops {

void rmsnorm_forward(const Tensor& x, const Tensor& w, float eps, Tensor& out, Tensor& rstd) {
  constexpr const char* op = "rmsnorm_forward";
  check_dim(op, "x", x, 2);
  check_dtype(op, "x", x, {DType::f32, DType::bf16});
  check_dtype(op, "w", w, {DType::f32, DType::bf16});
  check_shape(op, "w", w, {x.size(1)});
  check_shape(op, "out", out, x.shape());
  check_same_dtype(op, "x", x, "out", out);
  check_shape(op, "rstd", rstd, {x.size(0)});
  check_dtype(op, "rstd", rstd, {DType::f32});
  check_contiguous(op, "x", x);
  check_contiguous(op, "w", w);
  check_contiguous(op, "out", out);
  check_contiguous(op, "rstd", rstd);
  ORIGAMI_CHECK(x.size(1) > 0, op, ": x needs at least one column, got ", x.str());
  ORIGAMI_CHECK(eps >= 0.0f, op, ": eps must be >= 0, got ", eps);
  const Device dev = check_same_device(op, {{"x", &x}, {"w", &w}, {"out", &out}, {"rstd", &rstd}});
  if (x.size(0) == 0) return;
  if (dev.is_cuda()) {
#if ORIGAMI_CUDA
    cuda::rmsnorm_forward(x, w, eps, out, rstd);
#else
    fail_no_cuda(op);
#endif
    return;
  }
  cpu::rmsnorm_forward(x, w, eps, out, rstd);
}

void rmsnorm_backward(const Tensor& x, const Tensor& w, const Tensor& rstd, const Tensor& dout,
                      Tensor& dx, Tensor& dw) {
  constexpr const char* op = "rmsnorm_backward";
  check_dim(op, "x", x, 2);
  check_dtype(op, "x", x, {DType::f32, DType::bf16});
  check_dtype(op, "w", w, {DType::f32, DType::bf16});
  check_shape(op, "w", w, {x.size(1)});
  check_shape(op, "rstd", rstd, {x.size(0)});
  check_dtype(op, "rstd", rstd, {DType::f32});
  check_shape(op, "dout", dout, x.shape());
  check_same_dtype(op, "x", x, "dout", dout);
  check_shape(op, "dx", dx, x.shape());
  check_same_dtype(op, "x", x, "dx", dx);
  check_contiguous(op, "x", x);
  check_contiguous(op, "w", w);
  check_contiguous(op, "rstd", rstd);
  check_contiguous(op, "dout", dout);
  check_contiguous(op, "dx", dx);
  if (dw.defined()) {
    check_shape(op, "dw", dw, {x.size(1)});
    check_dtype(op, "dw", dw, {DType::f32});
    check_contiguous(op, "dw", dw);
  }
  const Device dev = check_same_device(
      op, {{"x", &x}, {"w", &w}, {"rstd", &rstd}, {"dout", &dout}, {"dx", &dx}, {"dw", &dw}});
  if (x.size(0) == 0) return;
  if (dev.is_cuda()) {
#if ORIGAMI_CUDA
    cuda::rmsnorm_backward(x, w, rstd, dout, dx, dw);
#else
    fail_no_cuda(op);
#endif
    return;
  }
  cpu::rmsnorm_backward(x, w, rstd, dout, dx, dw);
}

}  // namespace origami::ops
