// CUDA kernels of the attention family (ops/attention.h). Arguments are checked by the dispatch in
// ops/attention.cpp: contiguous tensors on one CUDA device, f32 or bf16, p.scale resolved.
#pragma once

#include "ops/attention.h"
#include "runtime/tensor.h"

namespace origami::ops::cuda {

void attention_forward(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionParams& p,
                       Tensor& out, Tensor& lse);
void attention_backward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                        const Tensor& lse, const Tensor& dout, const AttentionParams& p, Tensor& dq,
                        Tensor& dk, Tensor& dv);
void attention_merge(Tensor& out_a, Tensor& lse_a, const Tensor& out_b, const Tensor& lse_b);

}  // namespace origami::ops::cuda
