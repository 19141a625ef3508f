// Row gather and scatter-add by index: the token permute / unpermute of MoE dispatch.
// Each is the other's backward.
#pragma once

#include "runtime/tensor.h"

namespace origami::ops {

// All row tensors are contiguous f32/bf16. Indices are checked on the CPU (the error names the
// position and the value); the CUDA kernels do not read them on the host: there an out-of-range
// index gives a NaN row (gather_rows), a NaN dweight, or is skipped (scatter_add_rows).

// out[i] = src[idx[i]] for i in [0, M): src [N,H], idx [M] i32/i64 in [0,N), out [M,H] (dtype of
// src).
void gather_rows(const Tensor& src, const Tensor& idx, Tensor& out);
// out[idx[i]] += weight[i] * src[i]: src [M,H], idx [M], out [N,H] (accumulated; zero it first),
// weight [M] f32 or undefined (1); out f32 or bf16, whatever src is. Repeated indices add up in
// index order: the rows bound for one output row are summed in fp32 in increasing i, then added to
// out once. Deterministic on every backend, without float atomics (CPU: a stable counting sort by
// destination; CUDA: a stable radix sort, see ops/cuda/index.cu).
void scatter_add_rows(const Tensor& src, const Tensor& idx, Tensor& out,
                      const Tensor& weight = Tensor());
// Backward of scatter_add_rows for the weights: dweight[i] = dot(dout[idx[i]], src[i]).
void scatter_add_rows_weight_grad(const Tensor& src, const Tensor& idx, const Tensor& dout,
                                  Tensor& dweight);

}  // namespace origami::ops
