// RMSNorm (Llama): y = x / sqrt(mean(x^2) + eps) * w, over the last dimension.
#pragma once

#include "runtime/tensor.h"

namespace origami::ops {

// x [T,H], w [H], out [T,H] (x, w, out f32 or bf16; w may differ from x), rstd [T] f32 saved for
// backward (1/sqrt(mean(x^2)+eps)).
void rmsnorm_forward(const Tensor& x, const Tensor& w, float eps, Tensor& out, Tensor& rstd);
// dx [T,H] written; dw [H] f32 accumulated (+=) so micro-batches can add up. dw may be undefined.
void rmsnorm_backward(const Tensor& x, const Tensor& w, const Tensor& rstd, const Tensor& dout,
                      Tensor& dx, Tensor& dw);

}  // namespace origami::ops
