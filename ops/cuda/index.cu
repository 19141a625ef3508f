// Row gather / scatter-add kernels.
//
// scatter_add_rows is deterministic without float atomics: a stable radix sort (CUB) of the
// destination indices groups the source rows by destination row while keeping index order inside
// each group; a binary search gives each destination row the start of its group; then one thread
// per (destination row, column) sums its group in that fixed order in fp32 and adds the sum to
// out once. Same order, same bits, on every run.
//
// Indices are not range-checked on the GPU (that would need a synchronisation): an out-of-range
// index gives a NaN row in gather_rows and dweight, and is skipped by scatter_add_rows.
#include <cub/device/device_radix_sort.cuh>

#include "ops/cuda/common.cuh"
#include "ops/cuda/index.h"

namespace origami::ops::cuda {

namespace {

constexpr int kThreads = 256;

template <typename Fn>
void dispatch_index(DType dt, Fn&& fn) {
  if (dt == DType::i32)
    fn(int32_t{});
  else
    fn(int64_t{});
}

// Columns of a [rows, H] elementwise grid: blockIdx.x / threadIdx.x over H, blockIdx.y over rows.
dim3 row_grid(int64_t rows, int64_t H) {
  int64_t cb = (H + kThreads - 1) / kThreads;
  if (cb > 256) cb = 256;
  if (cb < 1) cb = 1;
  return dim3(unsigned(cb), unsigned(rows < 65535 ? (rows < 1 ? 1 : rows) : 65535));
}

template <typename T, typename I>
__global__ void gather_kernel(const T* __restrict__ src, const I* __restrict__ idx, int64_t M,
                              int64_t N, int64_t H, T* __restrict__ out) {
  for (int64_t i = blockIdx.y; i < M; i += gridDim.y) {
    const int64_t r = int64_t(idx[i]);
    const bool ok = r >= 0 && r < N;
    for (int64_t c = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; c < H;
         c += int64_t(gridDim.x) * blockDim.x)
      out[i * H + c] = ok ? src[r * H + c] : from_float<T>(NAN);
  }
}

// keys[i] = idx[i] (N for an out-of-range index: sorted after every real row), vals[i] = i.
template <typename I>
__global__ void sort_input_kernel(const I* __restrict__ idx, int64_t M, int64_t N,
                                  uint32_t* __restrict__ keys, int32_t* __restrict__ vals) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < M;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t r = int64_t(idx[i]);
    keys[i] = uint32_t(r >= 0 && r < N ? r : N);
    vals[i] = int32_t(i);
  }
}

// start[n] = first position of key >= n in the sorted keys, n in [0, N].
__global__ void group_start_kernel(const uint32_t* __restrict__ sorted_keys, int64_t M, int64_t N,
                                   int32_t* __restrict__ start) {
  for (int64_t n = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; n <= N;
       n += int64_t(gridDim.x) * blockDim.x) {
    int64_t lo = 0, hi = M;
    while (lo < hi) {
      const int64_t mid = (lo + hi) / 2;
      if (int64_t(sorted_keys[mid]) < n)
        lo = mid + 1;
      else
        hi = mid;
    }
    start[n] = int32_t(lo);
  }
}

template <typename S, typename O>
__global__ void scatter_groups_kernel(const S* __restrict__ src, const float* __restrict__ weight,
                                      const int32_t* __restrict__ order,
                                      const int32_t* __restrict__ start, int64_t N, int64_t H,
                                      O* __restrict__ out) {
  for (int64_t n = blockIdx.y; n < N; n += gridDim.y) {
    const int32_t b = start[n], e = start[n + 1];
    if (b == e) continue;
    for (int64_t c = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; c < H;
         c += int64_t(gridDim.x) * blockDim.x) {
      float acc = 0.0f;
      for (int32_t k = b; k < e; ++k) {
        const int64_t i = order[k];
        const float w = weight ? weight[i] : 1.0f;
        acc += w * to_float(src[i * H + c]);
      }
      out[n * H + c] = from_float<O>(to_float(out[n * H + c]) + acc);
    }
  }
}

// One warp per source row: dweight[i] = dot(dout[idx[i]], src[i]).
template <typename S, typename D, typename I>
__global__ void weight_grad_kernel(const S* __restrict__ src, const I* __restrict__ idx,
                                   const D* __restrict__ dout, int64_t M, int64_t N, int64_t H,
                                   float* __restrict__ dweight) {
  const int lane = threadIdx.x & 31;
  const int64_t warps = int64_t(gridDim.x) * (blockDim.x / 32);
  for (int64_t i = blockIdx.x * int64_t(blockDim.x / 32) + (threadIdx.x / 32); i < M; i += warps) {
    const int64_t r = int64_t(idx[i]);
    const bool ok = r >= 0 && r < N;
    float acc = 0.0f;
    if (ok)
      for (int64_t c = lane; c < H; c += 32)
        acc += to_float(src[i * H + c]) * to_float(dout[r * H + c]);
    for (int o = 16; o > 0; o >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, o);
    if (lane == 0) dweight[i] = ok ? acc : NAN;
  }
}

size_t align_up(size_t x) {
  return (x + 255) / 256 * 256;
}

// Stream-ordered scratch memory (cudaMallocAsync: the device's memory pool), given back on the
// same stream when it goes out of scope, also when a launch check throws.
struct StreamScratch {
  StreamScratch(size_t bytes, cudaStream_t s) : stream(s) {
    ORIGAMI_CUDA_CHECK(cudaMallocAsync(reinterpret_cast<void**>(&data), bytes, s));
  }
  ~StreamScratch() {
    if (data) cudaFreeAsync(data, stream);
  }
  StreamScratch(const StreamScratch&) = delete;
  StreamScratch& operator=(const StreamScratch&) = delete;
  char* data = nullptr;
  cudaStream_t stream;
};

}  // namespace

void gather_rows(const Tensor& src, const Tensor& idx, Tensor& out) {
  const int64_t M = out.size(0), H = out.size(1), N = src.size(0);
  cudaStream_t s = stream_for(out);
  dispatch_float(src.dtype(), "gather_rows", [&](auto tag) {
    using T = decltype(tag);
    dispatch_index(idx.dtype(), [&](auto itag) {
      using I = decltype(itag);
      gather_kernel<T, I><<<row_grid(M, H), kThreads, 0, s>>>(src.data_as<T>(), idx.data_as<I>(), M,
                                                              N, H, out.data_as<T>());
    });
  });
  ORIGAMI_CUDA_LAUNCH_CHECK();
}

void scatter_add_rows(const Tensor& src, const Tensor& idx, Tensor& out, const Tensor& weight) {
  const int64_t M = src.size(0), H = src.size(1), N = out.size(0);
  cudaStream_t s = stream_for(out);

  // Keys lie in [0, N]: sort only the bits that can differ.
  int end_bit = 1;
  while (end_bit < 32 && (int64_t(1) << end_bit) <= N) ++end_bit;

  // Scratch: keys_in, keys_out [M] u32, vals_in, vals_out [M] i32, start [N+1] i32, then CUB's
  // temporary storage.
  size_t cub_bytes = 0;
  ORIGAMI_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(
      nullptr, cub_bytes, static_cast<const uint32_t*>(nullptr), static_cast<uint32_t*>(nullptr),
      static_cast<const int32_t*>(nullptr), static_cast<int32_t*>(nullptr), M, 0, end_bit, s));
  const size_t idx_bytes = align_up(size_t(M) * sizeof(int32_t));
  const size_t start_bytes = align_up(size_t(N + 1) * sizeof(int32_t));
  const size_t total = 4 * idx_bytes + start_bytes + align_up(cub_bytes);
  StreamScratch buffer(total, s);
  char* scratch = buffer.data;
  uint32_t* keys_in = reinterpret_cast<uint32_t*>(scratch);
  uint32_t* keys_out = reinterpret_cast<uint32_t*>(scratch + idx_bytes);
  int32_t* vals_in = reinterpret_cast<int32_t*>(scratch + 2 * idx_bytes);
  int32_t* vals_out = reinterpret_cast<int32_t*>(scratch + 3 * idx_bytes);
  int32_t* start = reinterpret_cast<int32_t*>(scratch + 4 * idx_bytes);
  void* cub_tmp = scratch + 4 * idx_bytes + start_bytes;

  dispatch_index(idx.dtype(), [&](auto itag) {
    using I = decltype(itag);
    sort_input_kernel<I><<<grid_for(M), kThreads, 0, s>>>(idx.data_as<I>(), M, N, keys_in, vals_in);
  });
  ORIGAMI_CUDA_LAUNCH_CHECK();
  ORIGAMI_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(cub_tmp, cub_bytes, keys_in, keys_out, vals_in,
                                                     vals_out, M, 0, end_bit, s));
  group_start_kernel<<<grid_for(N + 1), kThreads, 0, s>>>(keys_out, M, N, start);
  ORIGAMI_CUDA_LAUNCH_CHECK();
  const float* w = weight.defined() ? weight.data_as<float>() : nullptr;
  dispatch_float(src.dtype(), "scatter_add_rows", [&](auto stag) {
    using S = decltype(stag);
    dispatch_float(out.dtype(), "scatter_add_rows", [&](auto otag) {
      using O = decltype(otag);
      scatter_groups_kernel<S, O><<<row_grid(N, H), kThreads, 0, s>>>(
          src.data_as<S>(), w, vals_out, start, N, H, out.data_as<O>());
    });
  });
  ORIGAMI_CUDA_LAUNCH_CHECK();
}

void scatter_add_rows_weight_grad(const Tensor& src, const Tensor& idx, const Tensor& dout,
                                  Tensor& dweight) {
  const int64_t M = src.size(0), H = src.size(1), N = dout.size(0);
  cudaStream_t s = stream_for(dweight);
  const int warps_per_block = kThreads / 32;
  const unsigned blocks = grid_for(M, warps_per_block);
  dispatch_float(src.dtype(), "scatter_add_rows_weight_grad", [&](auto stag) {
    using S = decltype(stag);
    dispatch_float(dout.dtype(), "scatter_add_rows_weight_grad", [&](auto dtag) {
      using D = decltype(dtag);
      dispatch_index(idx.dtype(), [&](auto itag) {
        using I = decltype(itag);
        weight_grad_kernel<S, D, I><<<blocks, kThreads, 0, s>>>(src.data_as<S>(), idx.data_as<I>(),
                                                                dout.data_as<D>(), M, N, H,
                                                                dweight.data_as<float>());
      });
    });
  });
  ORIGAMI_CUDA_LAUNCH_CHECK();
}

}  // namespace origami::ops::cuda
