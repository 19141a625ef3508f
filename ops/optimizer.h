// AdamW (decoupled weight decay, as torch.optim.AdamW) on fp32 master weights, and the pieces of
// gradient-norm clipping. Works on flat tensors so that a ZeRO shard is just a narrow() view.
#pragma once

#include <cstdint>

#include "runtime/tensor.h"

namespace origami::ops {

struct AdamWParams {
  float lr = 1e-3f;
  float beta1 = 0.9f;
  float beta2 = 0.999f;
  float eps = 1e-8f;
  float weight_decay = 0.01f;
  int64_t step = 1;  // 1-based, after incrementing: bias corrections use beta^step
};

// master [N] f32 (the fp32 weights), grad [N] f32/bf16, m, v [N] f32: updated in place;
//   master *= 1 - lr*wd; m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2;
//   master -= (lr / (1-b1^t)) * m / (sqrt(v) / sqrt(1-b2^t) + eps)
//   (all in fp32; the bias corrections 1-b^t and lr/(1-b1^t) in double, as torch computes them)
// g = grad * grad_scale first (an unscaling or clipping factor). All tensors contiguous, one shape.
// param [N] (f32 or bf16, may be undefined or the same tensor as master) receives the new value
// (bf16: the fp32 master rounded to nearest even).
void adamw_step(Tensor& master, const Tensor& grad, Tensor& m, Tensor& v, const AdamWParams& p,
                Tensor param = Tensor(), float grad_scale = 1.0f);

// Sum of squares of g (f32, bf16 or f16, contiguous), accumulated in double in a fixed order (the
// same result on every run). Returned on the host: on CUDA this waits for the stream.
double sum_squares(const Tensor& g);
// g *= s in place (f32 or bf16, contiguous).
void scale_(Tensor& g, float s);
// y += alpha * x (same shape, contiguous; y f32, x f32/bf16).
void axpy_(Tensor& y, const Tensor& x, float alpha = 1.0f);

// Clipping factor for a global norm, as torch.nn.utils.clip_grad_norm_:
// min(1, max_norm / (norm + 1e-6)); max_norm <= 0 disables clipping.
inline float clip_coefficient(double norm, double max_norm) {
  if (max_norm <= 0) return 1.0f;
  const double c = max_norm / (norm + 1e-6);
  return c < 1.0 ? float(c) : 1.0f;
}

}  // namespace origami::ops
