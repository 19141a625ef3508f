// Row gather and scatter-add by index: the token permute / unpermute of MoE dispatch.
// Each is the other's backward.
#pragma once

#include "runtime/tensor.h"

namespace origami::ops {

// out[i] = src[idx[i]] for i in [0, M): src [N,H], idx [M] i32/i64 in [0,N), out [M,H].
void gather_rows(const Tensor& src, const Tensor& idx, Tensor& out);
// out[idx[i]] += weight[i] * src[i]: src [M,H], idx [M], out [N,H] (accumulated; zero it first),
// weight [M] f32 or undefined (1). Repeated indices add up. Deterministic on every backend.
void scatter_add_rows(const Tensor& src, const Tensor& idx, Tensor& out,
                      const Tensor& weight = Tensor());
// Backward of scatter_add_rows for the weights: dweight[i] = dot(dout[idx[i]], src[i]).
void scatter_add_rows_weight_grad(const Tensor& src, const Tensor& idx, const Tensor& dout,
                                  Tensor& dweight);

}  // namespace origami::ops
