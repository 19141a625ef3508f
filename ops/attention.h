// Causal attention with grouped-query heads and an optional sliding window, computed block by
// block with an online softmax (flash-attention style: no S x S matrix is ever stored). Returns the
// log-sum-exp of every query row so that partial results over different key ranges can be merged
// (context parallelism), and so that backward can recompute probabilities.
#pragma once

#include <cstdint>

#include "runtime/tensor.h"

namespace origami::ops {

struct AttentionParams {
  float scale = 0.0f;   // softmax scale; 0 means 1/sqrt(head_dim)
  bool causal = true;   // key position must be <= query position
  int64_t window = -1;  // sliding window: keep keys with 0 <= q_pos - k_pos < window; -1 = off
  // Absolute positions of the first query and first key row; masks compare
  // q_pos = q_offset + i with k_pos = k_offset + j (context-parallel chunks use these).
  int64_t q_offset = 0;
  int64_t k_offset = 0;
};

// q [B,Sq,Hq,D], k and v [B,Sk,Hkv,D] with Hq % Hkv == 0 (query head h uses kv head h/(Hq/Hkv)),
// out [B,Sq,Hq,D] (same dtype as q), lse [B,Hq,Sq] f32 (natural log; -inf for a row with no key).
// dtypes f32 or bf16 (q, k, v, out the same); accumulation in f32.
void attention_forward(const Tensor& q, const Tensor& k, const Tensor& v,
                       const AttentionParams& p, Tensor& out, Tensor& lse);

// Gradients given out, lse from forward and dout [B,Sq,Hq,D]. dq, dk, dv are overwritten
// (dk, dv summed over the query heads that share a kv head).
void attention_backward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                        const Tensor& lse, const Tensor& dout, const AttentionParams& p, Tensor& dq,
                        Tensor& dk, Tensor& dv);

// Merges a partial result (out_b, lse_b) into (out_a, lse_a) in place:
//   lse = log(exp(lse_a) + exp(lse_b)); out = exp(lse_a - lse) out_a + exp(lse_b - lse) out_b.
// out [B,S,H,D] f32 or bf16, lse [B,H,S] f32.
void attention_merge(Tensor& out_a, Tensor& lse_a, const Tensor& out_b, const Tensor& lse_b);

}  // namespace origami::ops
