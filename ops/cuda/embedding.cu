#include <cub/device/device_radix_sort.cuh>

#include "ops/cuda/common.cuh"
#include "ops/cuda/pointwise.h"

namespace origami::ops::cuda {

namespace {

template <typename Id>
__device__ __forceinline__ int64_t shard_row(const Id* ids, int64_t t, int64_t vocab_offset,
                                             int64_t V) {
  const int64_t row = int64_t(ids[t]) - vocab_offset;
  return row >= 0 && row < V ? row : -1;
}

// One block per token: out[t] = weight[id - vocab_offset], or zeros.
template <typename T, typename Id>
__global__ void embedding_forward_kernel(const T* __restrict__ weight, const Id* __restrict__ ids,
                                         T* __restrict__ out, int64_t V, int64_t H,
                                         int64_t vocab_offset) {
  const int64_t t = blockIdx.x;
  const int64_t row = shard_row(ids, t, vocab_offset, V);
  T* dst = out + t * H;
  if (row < 0) {
    for (int64_t h = threadIdx.x; h < H; h += blockDim.x) dst[h] = from_float<T>(0.0f);
    return;
  }
  const T* src = weight + row * H;
  for (int64_t h = threadIdx.x; h < H; h += blockDim.x) dst[h] = src[h];
}

// Sort keys: the shard row of each token, V for tokens of other shards (sorted last).
template <typename Id>
__global__ void embedding_keys_kernel(const Id* __restrict__ ids, int64_t T, int64_t V,
                                      int64_t vocab_offset, int32_t* __restrict__ keys,
                                      int32_t* __restrict__ tokens) {
  for (int64_t t = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; t < T;
       t += int64_t(gridDim.x) * blockDim.x) {
    const int64_t row = shard_row(ids, t, vocab_offset, V);
    keys[t] = int32_t(row < 0 ? V : row);
    tokens[t] = int32_t(t);
  }
}

// One block per position i of the sorted keys; the block that starts a run of equal keys adds the
// run's dout rows, in token order (the radix sort is stable), to its row of dweight. No atomics:
// every dweight element is written by one thread, in the same order as the CPU kernel.
template <typename T>
__global__ void embedding_backward_kernel(const int32_t* __restrict__ keys,
                                          const int32_t* __restrict__ tokens,
                                          const T* __restrict__ dout, float* __restrict__ dweight,
                                          int64_t T_, int64_t V, int64_t H) {
  const int64_t i = blockIdx.x;
  const int32_t row = keys[i];
  if (row >= V || (i > 0 && keys[i - 1] == row)) return;
  int64_t end = i + 1;
  while (end < T_ && keys[end] == row) ++end;
  float* dst = dweight + int64_t(row) * H;
  for (int64_t h = threadIdx.x; h < H; h += blockDim.x) {
    float acc = dst[h];
    for (int64_t j = i; j < end; ++j) acc += to_float(dout[int64_t(tokens[j]) * H + h]);
    dst[h] = acc;
  }
}

int threads_for_row(int64_t H) {
  return H >= 256 ? 256 : (H >= 128 ? 128 : 64);
}

template <typename Fn>
void dispatch_index(DType dt, Fn&& fn) {
  if (dt == DType::i32)
    fn(int32_t{});
  else
    fn(int64_t{});
}

}  // namespace

void embedding_forward(const Tensor& weight, const Tensor& ids, Tensor& out, int64_t vocab_offset) {
  const int64_t V = weight.size(0), H = weight.size(1), T = ids.size(0);
  cudaStream_t stream = stream_for(out);
  dispatch_float(weight.dtype(), "embedding_forward", [&](auto tag) {
    using F = decltype(tag);
    dispatch_index(ids.dtype(), [&](auto itag) {
      using Id = decltype(itag);
      embedding_forward_kernel<F, Id><<<unsigned(T), threads_for_row(H), 0, stream>>>(
          weight.data_as<const F>(), ids.data_as<const Id>(), out.data_as<F>(), V, H, vocab_offset);
    });
  });
  ORIGAMI_CUDA_LAUNCH_CHECK();
}

void embedding_backward(const Tensor& ids, const Tensor& dout, Tensor& dweight,
                        int64_t vocab_offset) {
  const int64_t V = dweight.size(0), H = dweight.size(1), T = ids.size(0);
  ORIGAMI_CHECK(
      T < (int64_t(1) << 31) && V < (int64_t(1) << 31) - 1,
      "embedding_backward: CUDA supports fewer than 2^31 tokens and vocabulary rows, got ",
      ids.str(), " and ", dweight.str());
  cudaStream_t stream = stream_for(dweight);
  int end_bit = 1;
  while (end_bit < 32 && (int64_t(1) << end_bit) <= V) ++end_bit;  // keys lie in [0, V]

  // Scratch from the stream-ordered allocator: keys and tokens, sorted copies, CUB's workspace.
  size_t sort_bytes = 0;
  ORIGAMI_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(
      nullptr, sort_bytes, static_cast<const int32_t*>(nullptr), static_cast<int32_t*>(nullptr),
      static_cast<const int32_t*>(nullptr), static_cast<int32_t*>(nullptr), int(T), 0, end_bit,
      stream));
  const size_t n_bytes = size_t(T) * sizeof(int32_t);
  const size_t n_aligned = (n_bytes + 255) / 256 * 256;
  void* scratch = nullptr;
  ORIGAMI_CUDA_CHECK(cudaMallocAsync(&scratch, 4 * n_aligned + sort_bytes, stream));
  char* base = static_cast<char*>(scratch);
  int32_t* keys = reinterpret_cast<int32_t*>(base);
  int32_t* tokens = reinterpret_cast<int32_t*>(base + n_aligned);
  int32_t* keys_sorted = reinterpret_cast<int32_t*>(base + 2 * n_aligned);
  int32_t* tokens_sorted = reinterpret_cast<int32_t*>(base + 3 * n_aligned);
  void* sort_tmp = base + 4 * n_aligned;

  dispatch_index(ids.dtype(), [&](auto itag) {
    using Id = decltype(itag);
    embedding_keys_kernel<Id><<<grid_for(T), 256, 0, stream>>>(ids.data_as<const Id>(), T, V,
                                                               vocab_offset, keys, tokens);
  });
  ORIGAMI_CUDA_LAUNCH_CHECK();
  ORIGAMI_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(
      sort_tmp, sort_bytes, keys, keys_sorted, tokens, tokens_sorted, int(T), 0, end_bit, stream));
  dispatch_float(dout.dtype(), "embedding_backward", [&](auto tag) {
    using F = decltype(tag);
    embedding_backward_kernel<F><<<unsigned(T), threads_for_row(H), 0, stream>>>(
        keys_sorted, tokens_sorted, dout.data_as<const F>(), dweight.data_as<float>(), T, V, H);
  });
  ORIGAMI_CUDA_LAUNCH_CHECK();
  ORIGAMI_CUDA_CHECK(cudaFreeAsync(scratch, stream));
}

}  // namespace origami::ops::cuda
