// Cross-entropy over the vocabulary with an ignore index, split into steps so that the
// vocabulary can be sharded over a tensor-parallel group: every step works on one shard
// [T, V_shard] holding vocabulary ids [vocab_offset, vocab_offset + V_shard), and the caller
// reduces row_max (max) and sum_exp / target_logit (sum) over the group between steps.
// Single-rank use: cross_entropy_forward does all of it.
#pragma once

#include <cstdint>

#include "runtime/tensor.h"

namespace origami::ops {

// logits [T,V] f32/bf16 with rows of stride 1 (a shard may be a narrow() view of the full
// logits), targets [T] i32/i64. Outputs are [T] f32. Accumulation in fp32.
//
// Targets: ignore_index, or an id in [0, V_total). Where V_total is known (cross_entropy_forward)
// a CPU target outside it throws, naming the row and the value; on CUDA it gives a NaN loss (the
// check would cost a synchronisation). ce_finish and cross_entropy_backward reject negative
// targets that are not ignore_index the same way on the CPU.
void ce_row_max(const Tensor& logits, Tensor& row_max);
// sum_exp[t] = sum_j exp(logits[t,j] - row_max[t]) with the row_max given: pass the maximum over
// the whole vocabulary (reduced over the group) so that the shards' sums add up.
void ce_sum_exp(const Tensor& logits, const Tensor& row_max, Tensor& sum_exp);
// The logit of the target if it lies in this shard, else 0 (ignored rows give 0).
void ce_target_logit(const Tensor& logits, const Tensor& targets, int64_t vocab_offset,
                     Tensor& target_logit);
// loss[t] = log(sum_exp) + row_max - target_logit, lse[t] = log(sum_exp) + row_max; ignored rows
// (targets == ignore_index) get loss 0.
void ce_finish(const Tensor& row_max, const Tensor& sum_exp, const Tensor& target_logit,
               const Tensor& targets, int64_t ignore_index, Tensor& loss, Tensor& lse);

// Everything above on one unsharded [T,V]: per-row loss [T] f32 and lse [T] f32.
void cross_entropy_forward(const Tensor& logits, const Tensor& targets, int64_t ignore_index,
                           Tensor& loss, Tensor& lse);

// dlogits [T,V] = (softmax(logits) - onehot(target)) * grad_scale, rows with ignore_index zero.
// lse from forward. Works on a shard the same way (vocab_offset). dlogits has the dtype of logits
// and rows of stride 1 (it may be a narrow() view).
void cross_entropy_backward(const Tensor& logits, const Tensor& targets, const Tensor& lse,
                            int64_t ignore_index, float grad_scale, Tensor& dlogits,
                            int64_t vocab_offset = 0);

}  // namespace origami::ops
