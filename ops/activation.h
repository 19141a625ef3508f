// SwiGLU: out = silu(gate) * up * row_scale, silu(g) = g * sigmoid(g). The optional per-row scale
// is the routing probability of an MoE expert, applied inside the activation.
#pragma once

#include "runtime/tensor.h"

namespace origami::ops {

// gate, up, out [T,F] f32/bf16 (all the same); row_scale [T] f32 or undefined.
void swiglu_forward(const Tensor& gate, const Tensor& up, Tensor& out,
                    const Tensor& row_scale = Tensor());
// dgate, dup [T,F] written; drow_scale [T] f32 written when row_scale and drow_scale are defined.
void swiglu_backward(const Tensor& gate, const Tensor& up, const Tensor& dout, Tensor& dgate,
                     Tensor& dup, const Tensor& row_scale = Tensor(), Tensor drow_scale = Tensor());

}  // namespace origami::ops
