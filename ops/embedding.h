// Token embedding lookup, written for a vocabulary split over ranks: a rank holding rows
// [vocab_offset, vocab_offset + V) writes zeros for ids outside its range.
#pragma once

#include <cstdint>

#include "runtime/tensor.h"

namespace origami::ops {

// weight [V,H] f32/bf16, ids [T] i32/i64, out [T,H] (same dtype as weight).
// Ids outside [0, vocab_size_total) are an error when vocab_offset == 0 and V is the full
// vocabulary; ids outside this shard give zero rows.
void embedding_forward(const Tensor& weight, const Tensor& ids, Tensor& out,
                       int64_t vocab_offset = 0);
// dweight [V,H] f32 accumulated (+=) with the rows of dout [T,H] of the ids in this shard.
void embedding_backward(const Tensor& ids, const Tensor& dout, Tensor& dweight,
                        int64_t vocab_offset = 0);

}  // namespace origami::ops
