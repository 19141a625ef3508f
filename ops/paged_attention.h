// Paged attention (vLLM style): keys and values live in a cache of fixed-size blocks, and every
// sequence reaches its positions through a row of a block table. One call serves a batch of
// sequences, each either a prefill chunk (several query rows) or one decode token, mixed freely.
// Causal, grouped-query heads, optional sliding window; accumulation in f32.
#pragma once

#include <cstdint>

#include "runtime/tensor.h"

namespace origami::ops {

struct PagedAttentionParams {
  float scale = 0.0f;   // softmax scale; 0 means 1/sqrt(head_dim)
  int64_t window = -1;  // sliding window: keep keys with 0 <= q_pos - k_pos < window; -1 = off
                        // (the convention of AttentionParams)
  // Batch-invariant work split (deterministic serving): every query row is its own job (as a
  // decode token is) and a sequence's keys are split at fixed positions (every
  // kInvariantSplitKeys) whatever else is in the call, so each output row is computed the same
  // way, bit for bit, alone or in any batch and however a prompt is chunked. Off: prompt rows
  // share tiles and splits adapt to the number of jobs per thread (faster prefill, and decode of
  // small batches). CPU only; CUDA ignores it.
  bool batch_invariant = false;
};

inline constexpr int64_t kInvariantSplitKeys = 512;

// A batch of N sequences over a paged KV cache.
//  q            [T,Hq,D]    query rows of all sequences packed; sequence i owns the rows
//                           [query_start[i], query_start[i+1])
//  k_cache, v_cache [num_blocks, block_size, Hkv, D]   Hq % Hkv == 0 (query head h uses kv head
//                           h / (Hq/Hkv))
//  query_start  [N+1] i64   non-decreasing, query_start[0] = 0, query_start[N] <= T
//  context_len  [N]   i64   the keys of sequence i are its positions [0, context_len[i]) (already
//                           written, its new tokens included); its query row j sits at position
//                           context_len[i] - q_len_i + j (q_len_i <= context_len[i]); causal mask
//  block_table  [N, max_blocks] i32   position p of sequence i is row p % block_size of block
//                           block_table[i][p / block_size]; entries past the context, and with a
//                           window those wholly before the window of the sequence's first query
//                           row, are never read (they may hold anything, -1 say)
//  out          [T,Hq,D]    same dtype as q; rows of q that no sequence owns are set to zero
// dtypes f32 or bf16 (q, caches and out the same). All tensors on one device. On the CPU the
// metadata is validated (block ids in range, lengths consistent); on a GPU it is trusted.
void paged_attention_forward(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache,
                             const Tensor& query_start, const Tensor& context_len,
                             const Tensor& block_table, const PagedAttentionParams& p, Tensor& out);

// Stores k and v [T,Hkv,D] into the caches: row t goes to slot slot_mapping[t] (i64 [T];
// slot = block * block_size + row in block; -1 skips the row). Slots must be distinct.
void paged_kv_write(const Tensor& k, const Tensor& v, const Tensor& slot_mapping, Tensor& k_cache,
                    Tensor& v_cache);

// Copy-on-write of whole blocks in both caches: pairs [n,2] i32 of (src, dst) block ids. No
// destination may also be a source or appear twice (the copies then commute).
void paged_kv_copy_blocks(Tensor& k_cache, Tensor& v_cache, const Tensor& pairs);

}  // namespace origami::ops
