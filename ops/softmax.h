// Softmax over the last dimension and top-k selection (the MoE router's building blocks).
#pragma once

#include <cstdint>

#include "runtime/tensor.h"

namespace origami::ops {

// x, out [R,C] f32/bf16 (same dtype; out may alias x); computed in f32.
void softmax_forward(const Tensor& x, Tensor& out);
// dx = y * (dy - sum(dy * y)) row-wise; y is the forward output. y, dy, dx the same dtype (dx may
// alias dy).
void softmax_backward(const Tensor& y, const Tensor& dy, Tensor& dx);

// The k largest values of each row of x [R,C] f32, in descending order; ties go to the lower
// column index. values [R,k] f32, indices [R,k] i32 or i64. 1 <= k <= C. x must not hold NaN.
// The CUDA kernel makes k passes over each row: it is meant for router-sized rows and small k.
void topk(const Tensor& x, int64_t k, Tensor& values, Tensor& indices);
// dx [R,C] f32 = 0 except dx[r, indices[r,j]] = dvalues[r,j]. Indices outside [0, C) are an error
// on the CPU and skipped on CUDA (which does not read them back).
void topk_backward(const Tensor& indices, const Tensor& dvalues, Tensor& dx);

}  // namespace origami::ops
