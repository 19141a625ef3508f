// CUDA kernels of paged attention (ops/paged_attention.h). Arguments are checked by the dispatch in
// ops/paged_attention.cpp: contiguous tensors on one CUDA device, f32 or bf16, shapes consistent,
// p.scale resolved. Metadata values are not read on the host; block ids outside the cache read as
// zero rows (and slot ids outside it are skipped) instead of faulting.
#pragma once

#include "ops/paged_attention.h"
#include "runtime/tensor.h"

namespace origami::ops::cuda {

void paged_attention_forward(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache,
                             const Tensor& query_start, const Tensor& context_len,
                             const Tensor& block_table, const PagedAttentionParams& p, Tensor& out);
void paged_kv_write(const Tensor& k, const Tensor& v, const Tensor& slot_mapping, Tensor& k_cache,
                    Tensor& v_cache);
void paged_kv_copy_blocks(Tensor& k_cache, Tensor& v_cache, const Tensor& pairs);

}  // namespace origami::ops::cuda
