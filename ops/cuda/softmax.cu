#include "ops/cuda/common.cuh"
#include "ops/cuda/pointwise.h"

namespace origami::ops::cuda {

namespace {

int threads_for_row(int64_t C) {
  return C >= 1024 ? 512 : (C >= 256 ? 256 : 64);
}

// One block per row: max, sum of exp(x - max), then the quotient written. The block reductions
// separate the reads of x from the writes of out, so out may alias x.
template <typename X>
__global__ void softmax_forward_kernel(const X* x, X* out, int64_t C) {
  const X* xr = x + blockIdx.x * C;
  X* orow = out + blockIdx.x * C;
  float m = -INFINITY;
  for (int64_t j = threadIdx.x; j < C; j += blockDim.x) m = fmaxf(m, to_float(xr[j]));
  m = block_max(m);
  float sum = 0.0f;
  for (int64_t j = threadIdx.x; j < C; j += blockDim.x) sum += expf(to_float(xr[j]) - m);
  const float inv = 1.0f / block_sum(sum);
  for (int64_t j = threadIdx.x; j < C; j += blockDim.x)
    orow[j] = from_float<X>(expf(to_float(xr[j]) - m) * inv);
}

template <typename X>
__global__ void softmax_backward_kernel(const X* y, const X* dy, X* dx, int64_t C) {
  const X* yr = y + blockIdx.x * C;
  const X* dyr = dy + blockIdx.x * C;
  X* dxr = dx + blockIdx.x * C;
  float dot = 0.0f;
  for (int64_t j = threadIdx.x; j < C; j += blockDim.x) dot += to_float(yr[j]) * to_float(dyr[j]);
  dot = block_sum(dot);
  for (int64_t j = threadIdx.x; j < C; j += blockDim.x)
    dxr[j] = from_float<X>(to_float(yr[j]) * (to_float(dyr[j]) - dot));
}

// The order of top-k: larger value first, then lower index (a strict total order).
__device__ __forceinline__ bool comes_before(float av, int ai, float bv, int bi) {
  return av > bv || (av == bv && ai < bi);
}
// Keeps the earlier of (v, i) and (ov, oi); an index < 0 means "no candidate".
__device__ __forceinline__ void keep_earlier(float& v, int& i, float ov, int oi) {
  if (oi >= 0 && (i < 0 || comes_before(ov, oi, v, i))) {
    v = ov;
    i = oi;
  }
}
__device__ __forceinline__ void warp_earliest(float& v, int& i) {
  for (int o = 16; o > 0; o >>= 1) {
    const float ov = __shfl_xor_sync(0xffffffffu, v, o);
    const int oi = __shfl_xor_sync(0xffffffffu, i, o);
    keep_earlier(v, i, ov, oi);
  }
}

// One block per row, k rounds: round j picks the earliest element (in the order above) that comes
// after the pick of round j - 1. O(k * C / threads) per row: meant for router-sized rows and
// small k. NaN never comes before anything, so it is never picked.
template <typename I>
__global__ void topk_kernel(const float* __restrict__ x, int64_t C, int64_t k,
                            float* __restrict__ values, I* __restrict__ indices) {
  __shared__ float warp_v[32];
  __shared__ int warp_i[32];
  __shared__ float pick_v;
  __shared__ int pick_i;
  const int64_t r = blockIdx.x;
  const float* xr = x + r * C;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = (blockDim.x + 31) >> 5;
  float prev_v = INFINITY;  // every element comes after (+inf, -1)
  int prev_i = -1;
  for (int64_t j = 0; j < k; ++j) {
    float v = 0.0f;
    int i = -1;
    for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
      const float xv = xr[c];
      if (comes_before(prev_v, prev_i, xv, int(c))) keep_earlier(v, i, xv, int(c));
    }
    warp_earliest(v, i);
    if (lane == 0) {
      warp_v[warp] = v;
      warp_i[warp] = i;
    }
    __syncthreads();
    if (warp == 0) {
      v = lane < nwarps ? warp_v[lane] : 0.0f;
      i = lane < nwarps ? warp_i[lane] : -1;
      warp_earliest(v, i);
      if (lane == 0) {
        pick_v = v;
        pick_i = i;
        values[r * k + j] = v;
        indices[r * k + j] = I(i);
      }
    }
    __syncthreads();
    prev_v = pick_v;
    prev_i = pick_i;
    __syncthreads();  // everyone has read pick_* before the next round writes it
  }
}

// One block per row: zeros, then thread 0 writes the k gradients in order (a repeated index keeps
// the last one, as on the CPU). Indices outside [0, C) are skipped.
template <typename I>
__global__ void topk_backward_kernel(const I* __restrict__ indices,
                                     const float* __restrict__ dvalues, float* __restrict__ dx,
                                     int64_t C, int64_t k) {
  const int64_t r = blockIdx.x;
  float* d = dx + r * C;
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) d[c] = 0.0f;
  __syncthreads();
  if (threadIdx.x == 0) {
    for (int64_t j = 0; j < k; ++j) {
      const int64_t c = int64_t(indices[r * k + j]);
      if (c >= 0 && c < C) d[c] = dvalues[r * k + j];
    }
  }
}

}  // namespace

void softmax_forward(const Tensor& x, Tensor& out) {
  const int64_t R = x.size(0), C = x.size(1);
  cudaStream_t stream = stream_for(x);
  dispatch_float(x.dtype(), "softmax_forward", [&](auto tag) {
    using X = decltype(tag);
    softmax_forward_kernel<X>
        <<<unsigned(R), threads_for_row(C), 0, stream>>>(x.data_as<const X>(), out.data_as<X>(), C);
  });
  ORIGAMI_CUDA_LAUNCH_CHECK();
}

void softmax_backward(const Tensor& y, const Tensor& dy, Tensor& dx) {
  const int64_t R = y.size(0), C = y.size(1);
  cudaStream_t stream = stream_for(y);
  dispatch_float(y.dtype(), "softmax_backward", [&](auto tag) {
    using X = decltype(tag);
    softmax_backward_kernel<X><<<unsigned(R), threads_for_row(C), 0, stream>>>(
        y.data_as<const X>(), dy.data_as<const X>(), dx.data_as<X>(), C);
  });
  ORIGAMI_CUDA_LAUNCH_CHECK();
}

void topk(const Tensor& x, int64_t k, Tensor& values, Tensor& indices) {
  const int64_t R = x.size(0), C = x.size(1);
  ORIGAMI_CHECK(C < (int64_t(1) << 31), "topk: CUDA supports fewer than 2^31 columns, got ",
                x.str());
  const int threads = C >= 256 ? 256 : (C >= 128 ? 128 : 64);
  cudaStream_t stream = stream_for(x);
  if (indices.dtype() == DType::i32)
    topk_kernel<int32_t><<<unsigned(R), threads, 0, stream>>>(
        x.data_as<const float>(), C, k, values.data_as<float>(), indices.data_as<int32_t>());
  else
    topk_kernel<int64_t><<<unsigned(R), threads, 0, stream>>>(
        x.data_as<const float>(), C, k, values.data_as<float>(), indices.data_as<int64_t>());
  ORIGAMI_CUDA_LAUNCH_CHECK();
}

void topk_backward(const Tensor& indices, const Tensor& dvalues, Tensor& dx) {
  const int64_t R = dx.size(0), C = dx.size(1), k = indices.size(1);
  const int threads = C >= 256 ? 256 : 64;
  cudaStream_t stream = stream_for(dx);
  if (indices.dtype() == DType::i32)
    topk_backward_kernel<int32_t><<<unsigned(R), threads, 0, stream>>>(
        indices.data_as<const int32_t>(), dvalues.data_as<const float>(), dx.data_as<float>(), C,
        k);
  else
    topk_backward_kernel<int64_t><<<unsigned(R), threads, 0, stream>>>(
        indices.data_as<const int64_t>(), dvalues.data_as<const float>(), dx.data_as<float>(), C,
        k);
  ORIGAMI_CUDA_LAUNCH_CHECK();
}

}  // namespace origami::ops::cuda
