#include "ops/softmax.h"

#include "ops/check.h"
#include "ops/cpu/pointwise.h"
#if ORIGAMI_CUDA
#include "ops/cuda/pointwise.h"
#endif

namespace origami::ops {

void softmax_forward(const Tensor& x, Tensor& out) {
  constexpr const char* op = "softmax_forward";
  check_dim(op, "x", x, 2);
  check_dtype(op, "x", x, {DType::f32, DType::bf16});
  check_shape(op, "out", out, x.shape());
  check_same_dtype(op, "x", x, "out", out);
  check_contiguous(op, "x", x);
  check_contiguous(op, "out", out);
  const Device dev = check_same_device(op, {{"x", &x}, {"out", &out}});
  if (x.numel() == 0) return;
  if (dev.is_cuda()) {
#if ORIGAMI_CUDA
    cuda::softmax_forward(x, out);
#else
    fail_no_cuda(op);
#endif
    return;
  }
  cpu::softmax_forward(x, out);
}

void softmax_backward(const Tensor& y, const Tensor& dy, Tensor& dx) {
  constexpr const char* op = "softmax_backward";
  check_dim(op, "y", y, 2);
  check_dtype(op, "y", y, {DType::f32, DType::bf16});
  check_shape(op, "dy", dy, y.shape());
  check_same_dtype(op, "y", y, "dy", dy);
  check_shape(op, "dx", dx, y.shape());
  check_same_dtype(op, "y", y, "dx", dx);
  check_contiguous(op, "y", y);
  check_contiguous(op, "dy", dy);
  check_contiguous(op, "dx", dx);
  const Device dev = check_same_device(op, {{"y", &y}, {"dy", &dy}, {"dx", &dx}});
  if (y.numel() == 0) return;
  if (dev.is_cuda()) {
#if ORIGAMI_CUDA
    cuda::softmax_backward(y, dy, dx);
#else
    fail_no_cuda(op);
#endif
    return;
  }
  cpu::softmax_backward(y, dy, dx);
}

void topk(const Tensor& x, int64_t k, Tensor& values, Tensor& indices) {
  constexpr const char* op = "topk";
  check_dim(op, "x", x, 2);
  check_dtype(op, "x", x, {DType::f32});
  ORIGAMI_CHECK(k >= 1 && k <= x.size(1), op, ": k must lie in [1, ", x.size(1),
                "] (the columns of x), got k = ", k, " for x ", x.str());
  check_shape(op, "values", values, {x.size(0), k});
  check_dtype(op, "values", values, {DType::f32});
  check_shape(op, "indices", indices, {x.size(0), k});
  check_dtype(op, "indices", indices, {DType::i32, DType::i64});
  check_contiguous(op, "x", x);
  check_contiguous(op, "values", values);
  check_contiguous(op, "indices", indices);
  const Device dev = check_same_device(op, {{"x", &x}, {"values", &values}, {"indices", &indices}});
  if (x.size(0) == 0) return;
  if (dev.is_cuda()) {
#if ORIGAMI_CUDA
    cuda::topk(x, k, values, indices);
#else
    fail_no_cuda(op);
#endif
    return;
  }
  cpu::topk(x, k, values, indices);
}

void topk_backward(const Tensor& indices, const Tensor& dvalues, Tensor& dx) {
  constexpr const char* op = "topk_backward";
  check_dim(op, "indices", indices, 2);
  check_dtype(op, "indices", indices, {DType::i32, DType::i64});
  check_shape(op, "dvalues", dvalues, indices.shape());
  check_dtype(op, "dvalues", dvalues, {DType::f32});
  check_dim(op, "dx", dx, 2);
  check_dtype(op, "dx", dx, {DType::f32});
  ORIGAMI_CHECK(dx.size(0) == indices.size(0) && dx.size(1) >= indices.size(1), op,
                ": dx must be [R,C] with C >= k for indices [R,k], got dx ", dx.str(),
                " and indices ", indices.str());
  check_contiguous(op, "indices", indices);
  check_contiguous(op, "dvalues", dvalues);
  check_contiguous(op, "dx", dx);
  const Device dev =
      check_same_device(op, {{"indices", &indices}, {"dvalues", &dvalues}, {"dx", &dx}});
  if (dx.numel() == 0) return;
  if (dev.is_cuda()) {
#if ORIGAMI_CUDA
    cuda::topk_backward(indices, dvalues, dx);
#else
    fail_no_cuda(op);
#endif
    return;
  }
  cpu::topk_backward(indices, dvalues, dx);
}

}  // namespace origami::ops
