// Token embedding lookup, written for a vocabulary split over ranks: a rank holding rows
// [vocab_offset, vocab_offset + V) writes zeros for ids outside its range.
#pragma once

#include <cstdint>

#include "runtime/tensor.h"

namespace origami::ops {

// weight [V,H] f32/bf16, ids [T] i32/i64, out [T,H] (same dtype as weight).
// vocab_size_total is the size of the whole vocabulary; 0 means "this shard is the whole
// vocabulary" when vocab_offset == 0 (then vocab_size_total = V) and "not known" otherwise.
// Ids outside [0, vocab_size_total) (and negative ids always) are an error, naming the id and the
// vocabulary size; ids inside the vocabulary but outside this shard give zero rows.
// The check needs the ids on the host: it is made on the CPU. On CUDA the ids are not read back
// (that would synchronise the stream): invalid ids give zero rows, like ids of other shards.
void embedding_forward(const Tensor& weight, const Tensor& ids, Tensor& out,
                       int64_t vocab_offset = 0, int64_t vocab_size_total = 0);
// dweight [V,H] f32 accumulated (+=) with the rows of dout [T,H] (f32/bf16) of the ids in this
// shard; ids of other shards contribute nothing (same id rules as the forward). Every row of
// dweight adds its tokens' rows in token order, on the CPU and on CUDA alike (no atomics), so the
// result is deterministic and the same on both backends.
void embedding_backward(const Tensor& ids, const Tensor& dout, Tensor& dweight,
                        int64_t vocab_offset = 0, int64_t vocab_size_total = 0);

}  // namespace origami::ops
