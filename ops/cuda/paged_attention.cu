// CUDA paged attention, written to be plainly correct first; f32 accumulation, f32 / bf16 data.
//
// The host never reads the metadata (that would synchronise with the device), so every call
// launches all kernels and each picks its own sequences on the device:
//  - decode (sequences with one query row), split-K: one block per (split of the key range, kv
//    head, sequence). Its warps take the split's keys in turn; each warp keeps an online softmax
//    for every query head of the group (a lane owns head-dim elements d = lane + 32 i), the warps
//    are merged in shared memory, and the block writes each head's normalised partial output and
//    log-sum-exp to a workspace. A second kernel merges the splits of every (sequence, head) into
//    out. The split count comes from the batch size and the longest context the block table can
//    hold (max_blocks * block_size); splits past a sequence's context exit at once.
//  - prefill (sequences with several query rows) and rows no sequence owns: one block per (tile
//    of 64 consecutive rows of q (32 for head dims over 128), query head), one thread per row. The
//    block walks the sequences its rows belong to; for each, the key tiles its rows can see pass
//    through shared memory (gathered through the block table) and each thread keeps its row's
//    online softmax (ops/cuda/attention_tile.cuh, shared with ops/cuda/attention.cu's forward).
// Block ids outside the cache read as zero rows rather than faulting (the CPU path rejects them).
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "ops/cuda/attention_tile.cuh"
#include "ops/cuda/common.cuh"
#include "ops/cuda/paged_attention.h"

namespace origami::ops::cuda {
namespace {

constexpr float kLog2e = 1.4426950408889634f;
constexpr int kDecodeWarps = 4;         // warps of a decode block
constexpr int kMaxPerLane = 8;          // decode: head-dim elements per lane (D <= 256)
constexpr int64_t kTargetBlocks = 512;  // decode: split until about this many blocks
constexpr int64_t kMinSplitKeys = 256;  // decode: keys of a split, at least
constexpr int kKeysPerTile = 32;        // prefill: keys per shared-memory tile

struct PagedDims {
  int64_t N, T, Hq, Hkv, D, group, block_size, max_blocks, num_blocks, window;
  float scale_log2;  // scale * log2(e): scores in log2 units
};

// Keys visible to the query at position qpos: [lo, hi).
__device__ __forceinline__ void key_range(const PagedDims& d, int64_t qpos, int64_t& lo,
                                          int64_t& hi) {
  lo = d.window > 0 && qpos - d.window + 1 > 0 ? qpos - d.window + 1 : 0;
  hi = qpos + 1;
}

// Offset of element 0 of (position pos, kv head hk) in a cache, or -1 for a block id outside it.
__device__ __forceinline__ int64_t cache_offset(const int32_t* table_row, const PagedDims& d,
                                                int64_t pos, int64_t hk) {
  const int64_t blk = table_row[pos / d.block_size];
  if (blk < 0 || blk >= d.num_blocks) return -1;
  return ((blk * d.block_size + pos % d.block_size) * d.Hkv + hk) * d.D;
}

// The sequence owning row t (qs[N] > t): the last i < N with qs[i] <= t.
__device__ __forceinline__ int64_t sequence_of(const int64_t* qs, int64_t N, int64_t t) {
  int64_t lo = 0, hi = N;
  while (hi - lo > 1) {
    const int64_t mid = (lo + hi) / 2;
    if (qs[mid] <= t)
      lo = mid;
    else
      hi = mid;
  }
  return lo;
}

// ---- decode -------------------------------------------------------------------------------------

// Partial results: part_out [N,Hq,splits,D] (normalised), part_lse [N,Hq,splits] (log2 units).
template <typename T>
__global__ void paged_decode_kernel(const T* __restrict__ q, const T* __restrict__ k_cache,
                                    const T* __restrict__ v_cache,
                                    const int64_t* __restrict__ query_start,
                                    const int64_t* __restrict__ context_len,
                                    const int32_t* __restrict__ block_table,
                                    float* __restrict__ part_out, float* __restrict__ part_lse,
                                    PagedDims d, int64_t splits, int64_t chunk) {
  const int64_t split = blockIdx.x, hk = blockIdx.y, seq = blockIdx.z;
  const int64_t q0 = query_start[seq];
  if (query_start[seq + 1] - q0 != 1) return;  // not a decode sequence (the whole block leaves)
  extern __shared__ float smem[];
  const int64_t G = d.group, D = d.D;
  float* sQ = smem;                         // [G][D] q * scale * log2(e)
  float* sAcc = sQ + G * D;                 // [kDecodeWarps][G][D] unnormalised outputs
  float* sM = sAcc + kDecodeWarps * G * D;  // [kDecodeWarps][G] running max
  float* sL = sM + kDecodeWarps * G;        // [kDecodeWarps][G] running sum
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  for (int64_t e = threadIdx.x; e < G * D; e += blockDim.x)
    sQ[e] = to_float(q[(q0 * d.Hq + hk * G) * D + e]) * d.scale_log2;
  for (int64_t e = threadIdx.x; e < kDecodeWarps * G * D; e += blockDim.x) sAcc[e] = 0.0f;
  for (int64_t e = threadIdx.x; e < kDecodeWarps * G; e += blockDim.x) {
    sM[e] = -INFINITY;
    sL[e] = 0.0f;
  }
  __syncthreads();

  int64_t lo, hi;
  key_range(d, context_len[seq] - 1, lo, hi);
  const int64_t k0 = lo > split * chunk ? lo : split * chunk;
  const int64_t k1 = hi < (split + 1) * chunk ? hi : (split + 1) * chunk;
  const int32_t* table = block_table + seq * d.max_blocks;
  float* acc = sAcc + warp * G * D;
  float* m = sM + warp * G;
  float* l = sL + warp * G;
  for (int64_t j = k0 + warp; j < k1; j += kDecodeWarps) {
    const int64_t off = cache_offset(table, d, j, hk);
    float kr[kMaxPerLane], vr[kMaxPerLane];
#pragma unroll
    for (int i = 0; i < kMaxPerLane; ++i) {
      const int64_t e = lane + 32 * i;
      const bool in = off >= 0 && e < D;
      kr[i] = in ? to_float(k_cache[off + e]) : 0.0f;
      vr[i] = in ? to_float(v_cache[off + e]) : 0.0f;
    }
    for (int64_t g = 0; g < G; ++g) {
      float s = 0.0f;
#pragma unroll
      for (int i = 0; i < kMaxPerLane; ++i)
        if (lane + 32 * i < D) s += sQ[g * D + lane + 32 * i] * kr[i];
      for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
      const float mold = m[g], lold = l[g];
      const float mnew = fmaxf(mold, s);
      const float alpha = exp2f(mold - mnew);  // 0 for the first key (mold = -inf)
      const float p = exp2f(s - mnew);
#pragma unroll
      for (int i = 0; i < kMaxPerLane; ++i)
        if (lane + 32 * i < D) {
          float& a = acc[g * D + lane + 32 * i];
          a = a * alpha + p * vr[i];
        }
      __syncwarp();  // every lane has read m[g] and l[g]
      if (lane == 0) {
        m[g] = mnew;
        l[g] = lold * alpha + p;
      }
      __syncwarp();
    }
  }
  __syncthreads();

  // Merge the warps; each (head, element) of the group by one thread.
  for (int64_t e = threadIdx.x; e < G * D; e += blockDim.x) {
    const int64_t g = e / D, c = e % D;
    float mx = -INFINITY;
    for (int w = 0; w < kDecodeWarps; ++w) mx = fmaxf(mx, sM[w * G + g]);
    float num = 0.0f, den = 0.0f;
    if (mx != -INFINITY)
      for (int w = 0; w < kDecodeWarps; ++w) {
        const float f = exp2f(sM[w * G + g] - mx);
        num += f * sAcc[(w * G + g) * D + c];
        den += f * sL[w * G + g];
      }
    const int64_t slot = (seq * d.Hq + hk * G + g) * splits + split;
    part_out[slot * D + c] = den > 0.0f ? num / den : 0.0f;
    if (c == 0) part_lse[slot] = den > 0.0f ? mx + log2f(den) : -INFINITY;
  }
}

// out row of every decode sequence and head = its splits weighted by 2^(lse_s - max) / sum.
template <typename T>
__global__ void paged_decode_merge_kernel(const float* __restrict__ part_out,
                                          const float* __restrict__ part_lse,
                                          const int64_t* __restrict__ query_start,
                                          T* __restrict__ out, PagedDims d, int64_t splits) {
  const int64_t h = blockIdx.x, seq = blockIdx.y;
  const int64_t q0 = query_start[seq];
  if (query_start[seq + 1] - q0 != 1) return;
  const int64_t base = (seq * d.Hq + h) * splits;
  float mx = -INFINITY;
  for (int64_t s = 0; s < splits; ++s) mx = fmaxf(mx, part_lse[base + s]);
  float den = 0.0f;
  if (mx != -INFINITY)
    for (int64_t s = 0; s < splits; ++s) den += exp2f(part_lse[base + s] - mx);
  for (int64_t c = threadIdx.x; c < d.D; c += blockDim.x) {
    float num = 0.0f;
    if (mx != -INFINITY)
      for (int64_t s = 0; s < splits; ++s)
        num += exp2f(part_lse[base + s] - mx) * part_out[(base + s) * d.D + c];
    out[(q0 * d.Hq + h) * d.D + c] = from_float<T>(den > 0.0f ? num / den : 0.0f);
  }
}

// ---- prefill ------------------------------------------------------------------------------------

template <typename T, int ROWS>
__global__ void paged_prefill_kernel(const T* __restrict__ q, const T* __restrict__ k_cache,
                                     const T* __restrict__ v_cache, T* __restrict__ out,
                                     const int64_t* __restrict__ query_start,
                                     const int64_t* __restrict__ context_len,
                                     const int32_t* __restrict__ block_table, PagedDims d) {
  extern __shared__ float smem[];
  const int64_t D = d.D, ld = D + 1;
  float* sQ = smem;                   // [ROWS][ld] q * scale * log2(e)
  float* sO = sQ + ROWS * ld;         // [ROWS][ld] unnormalised output
  float* sK = sO + ROWS * ld;         // [kKeysPerTile][D]
  float* sV = sK + kKeysPerTile * D;  // [kKeysPerTile][D]
  const int tid = threadIdx.x;
  const int64_t t0 = int64_t(blockIdx.x) * ROWS, h = blockIdx.y, hk = h / d.group;
  const int64_t t = t0 + tid;
  const int64_t owned = query_start[d.N];

  if (t < d.T && t >= owned)  // a row no sequence owns
    for (int64_t c = 0; c < D; ++c) out[(t * d.Hq + h) * D + c] = from_float<T>(0.0f);
  if (t0 >= owned) return;  // the whole block

  const int64_t t_end = t0 + ROWS < owned ? t0 + ROWS : owned;
  const int64_t first = sequence_of(query_start, d.N, t0);
  const int64_t last = sequence_of(query_start, d.N, t_end - 1);
  for (int64_t seq = first; seq <= last; ++seq) {
    const int64_t q0 = query_start[seq], q_len = query_start[seq + 1] - q0;
    if (q_len < 2) continue;  // empty, or a decode row (paged_decode_kernel)
    const int64_t r0 = t0 > q0 ? t0 : q0, r1 = t_end < q0 + q_len ? t_end : q0 + q_len;
    const int64_t pos0 = context_len[seq] - q_len - q0;  // position of row t: pos0 + t
    const bool mine = t >= r0 && t < r1;
    __syncthreads();  // the previous sequence is written out
    for (int64_t e = tid; e < ROWS * D; e += ROWS) {
      const int64_t r = e / D, c = e % D, row = t0 + r;
      const bool in = row >= r0 && row < r1;
      sQ[r * ld + c] = in ? to_float(q[(row * d.Hq + h) * D + c]) * d.scale_log2 : 0.0f;
      sO[r * ld + c] = 0.0f;
    }
    int64_t lo = 0, hi = 0, jbeg, jend, unused;
    if (mine) key_range(d, pos0 + t, lo, hi);
    key_range(d, pos0 + r0, jbeg, unused);  // keys any row of the block sees: [jbeg, jend)
    key_range(d, pos0 + r1 - 1, unused, jend);
    const int32_t* table = block_table + seq * d.max_blocks;
    float m = -INFINITY, l = 0.0f;
    float* o = sO + tid * ld;
    const float* qr = sQ + tid * ld;

    for (int64_t j0 = jbeg / kKeysPerTile * kKeysPerTile; j0 < jend; j0 += kKeysPerTile) {
      __syncthreads();  // the previous tile is consumed (and sQ / sO written, the first time)
      for (int64_t e = tid; e < kKeysPerTile * D; e += ROWS) {
        const int64_t j = j0 + e / D, c = e % D;
        // Keys outside [jbeg, jend) may lie in blocks the table does not hold (never read).
        const int64_t off = j >= jbeg && j < jend ? cache_offset(table, d, j, hk) : -1;
        sK[e] = off >= 0 ? to_float(k_cache[off + c]) : 0.0f;
        sV[e] = off >= 0 ? to_float(v_cache[off + c]) : 0.0f;
      }
      __syncthreads();

      online_softmax_tile<kKeysPerTile>(qr, sK, sV, D, j0, lo, hi, m, l, o);
    }

    const float inv = l > 0.0f ? 1.0f / l : 0.0f;
    for (int64_t c = 0; c < D; ++c) o[c] *= inv;
    __syncthreads();
    for (int64_t e = tid; e < ROWS * D; e += ROWS) {
      const int64_t r = e / D, c = e % D, row = t0 + r;
      if (row >= r0 && row < r1) out[(row * d.Hq + h) * D + c] = from_float<T>(sO[r * ld + c]);
    }
  }
}

// ---- cache writes -------------------------------------------------------------------------------

template <typename T>
__global__ void paged_kv_write_kernel(const T* __restrict__ k, const T* __restrict__ v,
                                      const int64_t* __restrict__ slot_mapping,
                                      T* __restrict__ k_cache, T* __restrict__ v_cache,
                                      int64_t rows, int64_t row_elems, int64_t num_slots) {
  const int64_t n = rows * row_elems;
  for (int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; e < n;
       e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t t = e / row_elems, c = e % row_elems, slot = slot_mapping[t];
    if (slot < 0 || slot >= num_slots) continue;  // -1 skips; out of range is ignored
    k_cache[slot * row_elems + c] = k[e];
    v_cache[slot * row_elems + c] = v[e];
  }
}

template <typename T>
__global__ void paged_copy_blocks_kernel(T* __restrict__ k_cache, T* __restrict__ v_cache,
                                         const int32_t* __restrict__ pairs, int64_t npairs,
                                         int64_t block_elems, int64_t num_blocks) {
  const int64_t n = npairs * block_elems;
  for (int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; e < n;
       e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t i = e / block_elems, c = e % block_elems;
    const int64_t src = pairs[2 * i], dst = pairs[2 * i + 1];
    if (src < 0 || src >= num_blocks || dst < 0 || dst >= num_blocks) continue;
    k_cache[dst * block_elems + c] = k_cache[src * block_elems + c];
    v_cache[dst * block_elems + c] = v_cache[src * block_elems + c];
  }
}

template <typename T, int ROWS>
void launch_prefill(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache,
                    const Tensor& query_start, const Tensor& context_len, const Tensor& block_table,
                    const PagedDims& d, Tensor& out, cudaStream_t stream) {
  const size_t bytes = size_t(2 * ROWS * (d.D + 1) + 2 * kKeysPerTile * d.D) * sizeof(float);
  allow_shared_memory(paged_prefill_kernel<T, ROWS>, bytes, "paged_attention_forward", d.D, "q", q);
  const dim3 grid(unsigned((d.T + ROWS - 1) / ROWS), unsigned(d.Hq));
  paged_prefill_kernel<T, ROWS><<<grid, ROWS, bytes, stream>>>(
      q.data_as<const T>(), k_cache.data_as<const T>(), v_cache.data_as<const T>(),
      out.data_as<T>(), query_start.data_as<const int64_t>(), context_len.data_as<const int64_t>(),
      block_table.data_as<const int32_t>(), d);
  ORIGAMI_CUDA_LAUNCH_CHECK();
}

}  // namespace

void paged_attention_forward(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache,
                             const Tensor& query_start, const Tensor& context_len,
                             const Tensor& block_table, const PagedAttentionParams& p,
                             Tensor& out) {
  const char* op = "paged_attention_forward";
  PagedDims d;
  d.N = context_len.size(0);
  d.T = q.size(0);
  d.Hq = q.size(1);
  d.D = q.size(2);
  d.Hkv = k_cache.size(2);
  d.group = d.Hq / d.Hkv;
  d.block_size = k_cache.size(1);
  d.max_blocks = block_table.size(1);
  d.num_blocks = k_cache.size(0);
  d.window = p.window;
  d.scale_log2 = p.scale * kLog2e;
  ORIGAMI_CHECK(d.D <= 32 * kMaxPerLane, op, ": the CUDA kernels support head dims up to ",
                32 * kMaxPerLane, ", got q ", q.str());
  ORIGAMI_CHECK(d.N <= 65535 && d.Hq <= 65535, op,
                ": the CUDA kernels support at most 65535 sequences and query heads, got q ",
                q.str(), " and context_len ", context_len.str());
  if (d.T == 0 || d.Hq == 0) return;
  cudaStream_t stream = stream_for(q);

  // Decode splits: enough blocks to fill the device, each at least kMinSplitKeys keys of the
  // longest context the block table holds.
  const int64_t max_keys = std::max<int64_t>(1, d.max_blocks * d.block_size);
  const int64_t want = (kTargetBlocks + d.N * d.Hkv - 1) / std::max<int64_t>(1, d.N * d.Hkv);
  const int64_t splits =
      std::clamp<int64_t>(want, 1, (max_keys + kMinSplitKeys - 1) / kMinSplitKeys);
  const int64_t chunk = (max_keys + splits - 1) / splits;
  // Workspace of the partial results; freed on return (the CUDA backend's free waits for the
  // kernels below).
  Tensor part_out, part_lse;
  if (d.N > 0) {
    part_out = Tensor::empty({d.N, d.Hq, splits, d.D}, DType::f32, q.device());
    part_lse = Tensor::empty({d.N, d.Hq, splits}, DType::f32, q.device());
  }

  dispatch_float(q.dtype(), op, [&](auto tag) {
    using T = decltype(tag);
    if (d.N > 0) {
      const size_t bytes =
          size_t(d.group * d.D * (1 + kDecodeWarps) + 2 * kDecodeWarps * d.group) * sizeof(float);
      allow_shared_memory(paged_decode_kernel<T>, bytes, op, d.D, "q", q);
      const dim3 grid(unsigned(splits), unsigned(d.Hkv), unsigned(d.N));
      paged_decode_kernel<T><<<grid, 32 * kDecodeWarps, bytes, stream>>>(
          q.data_as<const T>(), k_cache.data_as<const T>(), v_cache.data_as<const T>(),
          query_start.data_as<const int64_t>(), context_len.data_as<const int64_t>(),
          block_table.data_as<const int32_t>(), part_out.data_as<float>(),
          part_lse.data_as<float>(), d, splits, chunk);
      ORIGAMI_CUDA_LAUNCH_CHECK();
      paged_decode_merge_kernel<T><<<dim3(unsigned(d.Hq), unsigned(d.N)), 128, 0, stream>>>(
          part_out.data_as<const float>(), part_lse.data_as<const float>(),
          query_start.data_as<const int64_t>(), out.data_as<T>(), d, splits);
      ORIGAMI_CUDA_LAUNCH_CHECK();
    }
    if (d.D <= 128)
      launch_prefill<T, 64>(q, k_cache, v_cache, query_start, context_len, block_table, d, out,
                            stream);
    else
      launch_prefill<T, 32>(q, k_cache, v_cache, query_start, context_len, block_table, d, out,
                            stream);
  });
}

void paged_kv_write(const Tensor& k, const Tensor& v, const Tensor& slot_mapping, Tensor& k_cache,
                    Tensor& v_cache) {
  const int64_t rows = k.size(0), row_elems = k.size(1) * k.size(2);
  const int64_t num_slots = k_cache.size(0) * k_cache.size(1);
  if (rows * row_elems == 0) return;
  cudaStream_t stream = stream_for(k);
  dispatch_float(k.dtype(), "paged_kv_write", [&](auto tag) {
    using T = decltype(tag);
    paged_kv_write_kernel<T><<<grid_for(rows * row_elems), 256, 0, stream>>>(
        k.data_as<const T>(), v.data_as<const T>(), slot_mapping.data_as<const int64_t>(),
        k_cache.data_as<T>(), v_cache.data_as<T>(), rows, row_elems, num_slots);
    ORIGAMI_CUDA_LAUNCH_CHECK();
  });
}

void paged_kv_copy_blocks(Tensor& k_cache, Tensor& v_cache, const Tensor& pairs) {
  const int64_t npairs = pairs.size(0);
  const int64_t block_elems = k_cache.size(1) * k_cache.size(2) * k_cache.size(3);
  if (npairs * block_elems == 0) return;
  cudaStream_t stream = stream_for(k_cache);
  dispatch_float(k_cache.dtype(), "paged_kv_copy_blocks", [&](auto tag) {
    using T = decltype(tag);
    paged_copy_blocks_kernel<T><<<grid_for(npairs * block_elems), 256, 0, stream>>>(
        k_cache.data_as<T>(), v_cache.data_as<T>(), pairs.data_as<const int32_t>(), npairs,
        block_elems, k_cache.size(0));
    ORIGAMI_CUDA_LAUNCH_CHECK();
  });
}

}  // namespace origami::ops::cuda
