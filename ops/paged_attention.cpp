// Paged attention: argument checks (shapes, dtypes, devices; on the CPU also the metadata values)
// and dispatch to the CPU or CUDA kernels.
#include "ops/paged_attention.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "ops/check.h"
#include "ops/cpu/paged_attention.h"
#if ORIGAMI_CUDA
#include "ops/cuda/paged_attention.h"
#endif

namespace origami::ops {
namespace {

// k_cache and v_cache [num_blocks, block_size, Hkv, D], one dtype (f32 or bf16), contiguous.
void check_caches(const char* op, const Tensor& k_cache, const Tensor& v_cache) {
  check_dim(op, "k_cache", k_cache, 4);
  check_dtype(op, "k_cache", k_cache, {DType::f32, DType::bf16});
  check_same_dtype(op, "k_cache", k_cache, "v_cache", v_cache);
  ORIGAMI_CHECK(k_cache.shape() == v_cache.shape(), op,
                ": k_cache and v_cache must have the same shape [num_blocks,block_size,Hkv,D], "
                "got ",
                k_cache.str(), " and ", v_cache.str());
  ORIGAMI_CHECK(k_cache.size(1) > 0 && k_cache.size(2) > 0 && k_cache.size(3) > 0, op,
                ": block_size, Hkv and D of k_cache [num_blocks,block_size,Hkv,D] must be "
                "positive, got ",
                k_cache.str());
  check_contiguous(op, "k_cache", k_cache);
  check_contiguous(op, "v_cache", v_cache);
}

void check_index_tensor(const char* op, const char* name, const Tensor& t, const Shape& shape,
                        DType dtype) {
  check_dtype(op, name, t, {dtype});
  check_shape(op, name, t, shape);
  check_contiguous(op, name, t);
}

// The metadata values of a forward call (CPU tensors only: on a GPU reading them would cost a
// synchronisation). Only the block-table entries the kernels read are checked: with a sliding
// window the blocks before it may hold anything (a freed block, -1).
void check_forward_metadata(const char* op, const Tensor& q, const Tensor& k_cache,
                            const Tensor& query_start, const Tensor& context_len,
                            const Tensor& block_table, int64_t window) {
  const int64_t N = context_len.size(0), T = q.size(0);
  const int64_t num_blocks = k_cache.size(0), block_size = k_cache.size(1);
  const int64_t max_blocks = block_table.size(1);
  const int64_t* qs = query_start.data_as<const int64_t>();
  const int64_t* cl = context_len.data_as<const int64_t>();
  const int32_t* bt = block_table.data_as<const int32_t>();
  ORIGAMI_CHECK(qs[0] == 0, op, ": query_start[0] must be 0, got ", qs[0]);
  ORIGAMI_CHECK(qs[N] <= T, op, ": query_start[", N, "] = ", qs[N], " exceeds the query rows of q ",
                q.str());
  for (int64_t i = 0; i < N; ++i) {
    const int64_t q_len = qs[i + 1] - qs[i], ctx = cl[i];
    ORIGAMI_CHECK(q_len >= 0, op, ": query_start must be non-decreasing, got query_start[", i,
                  "] = ", qs[i], " > query_start[", i + 1, "] = ", qs[i + 1]);
    ORIGAMI_CHECK(ctx >= q_len, op, ": context_len[", i, "] = ", ctx,
                  " is smaller than the sequence's query rows (", q_len,
                  "); the context includes the new tokens");
    ORIGAMI_CHECK(ctx <= max_blocks * block_size, op, ": context_len[", i, "] = ", ctx,
                  " needs more than the ", max_blocks, " blocks of ", block_size,
                  " rows a block_table ", block_table.str(), " row holds");
    if (q_len == 0) continue;
    const int64_t first_key = window > 0 ? std::max<int64_t>(0, ctx - q_len - window + 1) : 0;
    for (int64_t b = first_key / block_size; b * block_size < ctx; ++b) {
      const int64_t id = bt[i * max_blocks + b];
      ORIGAMI_CHECK(id >= 0 && id < num_blocks, op, ": block_table[", i, "][", b, "] = ", id,
                    " is outside the ", num_blocks, " blocks of k_cache ", k_cache.str());
    }
  }
}

}  // namespace

void paged_attention_forward(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache,
                             const Tensor& query_start, const Tensor& context_len,
                             const Tensor& block_table, const PagedAttentionParams& p,
                             Tensor& out) {
  const char* op = "paged_attention_forward";
  check_dim(op, "q", q, 3);
  check_dtype(op, "q", q, {DType::f32, DType::bf16});
  check_contiguous(op, "q", q);
  check_caches(op, k_cache, v_cache);
  check_same_dtype(op, "q", q, "k_cache", k_cache);
  const int64_t Hq = q.size(1), D = q.size(2), Hkv = k_cache.size(2);
  ORIGAMI_CHECK(D == k_cache.size(3), op, ": q [T,Hq,D] and k_cache [num_blocks,block_size,Hkv,D]",
                " must agree in D, got q ", q.str(), " and k_cache ", k_cache.str());
  ORIGAMI_CHECK(Hq % Hkv == 0, op, ": query heads (", Hq, ") must be a multiple of kv heads (", Hkv,
                "), got q ", q.str(), " and k_cache ", k_cache.str());
  check_dim(op, "context_len", context_len, 1);
  const int64_t N = context_len.size(0);
  check_index_tensor(op, "context_len", context_len, {N}, DType::i64);
  check_index_tensor(op, "query_start", query_start, {N + 1}, DType::i64);
  check_dim(op, "block_table", block_table, 2);
  check_index_tensor(op, "block_table", block_table, {N, block_table.size(1)}, DType::i32);
  check_shape(op, "out", out, q.shape());
  check_same_dtype(op, "q", q, "out", out);
  check_contiguous(op, "out", out);
  ORIGAMI_CHECK(p.window == -1 || p.window >= 1, op,
                ": window must be -1 (off) or at least 1, got ", p.window);
  ORIGAMI_CHECK(std::isfinite(p.scale), op, ": scale must be finite, got ", p.scale);
  const Device dev = check_same_device(op, {{"q", &q},
                                            {"k_cache", &k_cache},
                                            {"v_cache", &v_cache},
                                            {"query_start", &query_start},
                                            {"context_len", &context_len},
                                            {"block_table", &block_table},
                                            {"out", &out}});
  PagedAttentionParams rp = p;
  if (rp.scale == 0.0f) rp.scale = 1.0f / std::sqrt(float(D));
  if (dev.is_cpu()) {
    check_forward_metadata(op, q, k_cache, query_start, context_len, block_table, p.window);
    return cpu::paged_attention_forward(q, k_cache, v_cache, query_start, context_len, block_table,
                                        rp, out);
  }
#if ORIGAMI_CUDA
  cuda::paged_attention_forward(q, k_cache, v_cache, query_start, context_len, block_table, rp,
                                out);
#else
  fail_no_cuda(op);
#endif
}

void paged_kv_write(const Tensor& k, const Tensor& v, const Tensor& slot_mapping, Tensor& k_cache,
                    Tensor& v_cache) {
  const char* op = "paged_kv_write";
  check_caches(op, k_cache, v_cache);
  check_dim(op, "k", k, 3);
  check_same_dtype(op, "k", k, "k_cache", k_cache);
  check_contiguous(op, "k", k);
  ORIGAMI_CHECK(k.size(1) == k_cache.size(2) && k.size(2) == k_cache.size(3), op,
                ": k [T,Hkv,D] must agree with k_cache [num_blocks,block_size,Hkv,D] in Hkv and D,",
                " got k ", k.str(), " and k_cache ", k_cache.str());
  check_shape(op, "v", v, k.shape());
  check_same_dtype(op, "k", k, "v", v);
  check_contiguous(op, "v", v);
  const int64_t T = k.size(0);
  check_index_tensor(op, "slot_mapping", slot_mapping, {T}, DType::i64);
  const Device dev = check_same_device(op, {{"k", &k},
                                            {"v", &v},
                                            {"slot_mapping", &slot_mapping},
                                            {"k_cache", &k_cache},
                                            {"v_cache", &v_cache}});
  if (T == 0) return;
  if (dev.is_cpu()) {
    const int64_t slots = k_cache.size(0) * k_cache.size(1);
    const int64_t* sm = slot_mapping.data_as<const int64_t>();
    for (int64_t t = 0; t < T; ++t)
      ORIGAMI_CHECK(sm[t] >= -1 && sm[t] < slots, op, ": slot_mapping[", t, "] = ", sm[t],
                    " is outside [0, ", slots, ") (the slots of k_cache ", k_cache.str(),
                    ") and is not -1 (skip)");
    return cpu::paged_kv_write(k, v, slot_mapping, k_cache, v_cache);
  }
#if ORIGAMI_CUDA
  cuda::paged_kv_write(k, v, slot_mapping, k_cache, v_cache);
#else
  fail_no_cuda(op);
#endif
}

void paged_kv_copy_blocks(Tensor& k_cache, Tensor& v_cache, const Tensor& pairs) {
  const char* op = "paged_kv_copy_blocks";
  check_caches(op, k_cache, v_cache);
  check_dim(op, "pairs", pairs, 2);
  check_index_tensor(op, "pairs", pairs, {pairs.size(0), 2}, DType::i32);
  const Device dev =
      check_same_device(op, {{"k_cache", &k_cache}, {"v_cache", &v_cache}, {"pairs", &pairs}});
  const int64_t n = pairs.size(0);
  if (n == 0) return;
  if (dev.is_cpu()) {
    const int64_t num_blocks = k_cache.size(0);
    const int32_t* pr = pairs.data_as<const int32_t>();
    thread_local std::vector<int32_t> dsts, srcs;  // reused: a serving step allocates nothing
    dsts.resize(size_t(n));
    srcs.resize(size_t(n));
    for (int64_t i = 0; i < n; ++i) {
      for (int c = 0; c < 2; ++c)
        ORIGAMI_CHECK(pr[2 * i + c] >= 0 && pr[2 * i + c] < num_blocks, op, ": pairs[", i, "][", c,
                      "] = ", pr[2 * i + c], " is outside the ", num_blocks, " blocks of k_cache ",
                      k_cache.str());
      srcs[size_t(i)] = pr[2 * i];
      dsts[size_t(i)] = pr[2 * i + 1];
    }
    std::sort(dsts.begin(), dsts.end());
    std::sort(srcs.begin(), srcs.end());
    for (int64_t i = 0; i < n; ++i) {
      const int32_t d = dsts[size_t(i)];
      ORIGAMI_CHECK(i == 0 || dsts[size_t(i - 1)] != d, op, ": block ", d,
                    " is the destination of two pairs");
      ORIGAMI_CHECK(!std::binary_search(srcs.begin(), srcs.end(), d), op, ": block ", d,
                    " is both a source and a destination in pairs; split the copy into two calls");
    }
    return cpu::paged_kv_copy_blocks(k_cache, v_cache, pairs);
  }
#if ORIGAMI_CUDA
  cuda::paged_kv_copy_blocks(k_cache, v_cache, pairs);
#else
  fail_no_cuda(op);
#endif
}

}  // namespace origami::ops
