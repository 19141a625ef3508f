// Rotary position embedding, rotate-half convention (Hugging Face Llama):
//   out = x * cos(pos * f) + rotate_half(x) * sin(pos * f),  rotate_half([a, b]) = [-b, a],
// with the frequencies f of the first and second halves of head_dim equal.
#pragma once

#include <cstdint>

#include "runtime/tensor.h"

namespace origami::ops {

struct RopeConfig {
  int64_t head_dim = 0;
  double theta = 10000.0;
  // Llama-3 frequency scaling ("rope_type": "llama3"); off when factor <= 0.
  double llama3_factor = 0.0;
  double llama3_low_freq_factor = 1.0;
  double llama3_high_freq_factor = 4.0;
  int64_t llama3_original_max_position = 8192;
};

// inv_freq [head_dim/2] f32 on the CPU: theta^(-2i/head_dim), Llama-3 scaled if configured
// (exactly transformers' _compute_llama3_parameters), computed in double and stored as f32.
Tensor rope_inv_freq(const RopeConfig& cfg);

// x [T,H,D] f32/bf16 (out may alias x), positions [T] i32/i64, inv_freq [D/2] f32 on x's device.
// As in Hugging Face's LlamaRotaryEmbedding, the angle is the f32 product float(pos) * inv_freq[i];
// its cosine and sine are then taken to f32 accuracy and the rotation is computed in f32.
void rope_forward(const Tensor& x, const Tensor& positions, const Tensor& inv_freq, Tensor& out);
// The inverse rotation: dx = R(-pos) dout (dx may alias dout).
void rope_backward(const Tensor& dout, const Tensor& positions, const Tensor& inv_freq, Tensor& dx);

}  // namespace origami::ops
