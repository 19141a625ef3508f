// RMSNorm (Llama): y = x / sqrt(mean(x^2) + eps) * w, over the last dimension.
#pragma once

#include "runtime/tensor.h"

namespace origami::ops {

// x [T,H], w [H], out [T,H] (x, w, out f32 or bf16; w may differ from x, out has x's dtype),
// rstd [T] f32 saved for backward (1/sqrt(mean(x^2)+eps)). Computed in f32, rounded once.
void rmsnorm_forward(const Tensor& x, const Tensor& w, float eps, Tensor& out, Tensor& rstd);
// dout, dx [T,H] with x's dtype; dx written; dw [H] f32 accumulated (+=) so micro-batches can add
// up (rows summed in a fixed order: deterministic). dw may be undefined.
void rmsnorm_backward(const Tensor& x, const Tensor& w, const Tensor& rstd, const Tensor& dout,
                      Tensor& dx, Tensor& dw);

}  // namespace origami::ops
