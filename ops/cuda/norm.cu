#include "ops/cuda/common.cuh"
#include "ops/cuda/pointwise.h"

namespace origami::ops::cuda {

namespace {

// One block per row.
template <typename X, typename W>
__global__ void rmsnorm_forward_kernel(const X* __restrict__ x, const W* __restrict__ w, float eps,
                                       X* __restrict__ out, float* __restrict__ rstd, int64_t H) {
  const int64_t t = blockIdx.x;
  const X* xr = x + t * H;
  X* orow = out + t * H;
  float ss = 0.0f;
  for (int64_t j = threadIdx.x; j < H; j += blockDim.x) {
    const float v = to_float(xr[j]);
    ss += v * v;
  }
  ss = block_sum(ss);
  const float r = 1.0f / sqrtf(ss / float(H) + eps);
  if (threadIdx.x == 0) rstd[t] = r;
  for (int64_t j = threadIdx.x; j < H; j += blockDim.x)
    orow[j] = from_float<X>(to_float(xr[j]) * r * to_float(w[j]));
}

// dx_j = r w_j dy_j - x_j r^3 / H sum_k dy_k w_k x_k; one block per row.
template <typename X, typename W>
__global__ void rmsnorm_backward_dx_kernel(const X* __restrict__ x, const W* __restrict__ w,
                                           const float* __restrict__ rstd, const X* dout, X* dx,
                                           int64_t H) {
  const int64_t t = blockIdx.x;
  const X* xr = x + t * H;
  const X* dyr = dout + t * H;
  X* dxr = dx + t * H;
  float c = 0.0f;
  for (int64_t j = threadIdx.x; j < H; j += blockDim.x)
    c += to_float(dyr[j]) * to_float(w[j]) * to_float(xr[j]);
  c = block_sum(c);  // all reads of dout happen before any write of dx (dx may alias dout)
  const float r = rstd[t];
  c = c * r * r * r / float(H);
  for (int64_t j = threadIdx.x; j < H; j += blockDim.x)
    dxr[j] = from_float<X>(r * to_float(w[j]) * to_float(dyr[j]) - to_float(xr[j]) * c);
}

// dw partial sums over chunks of kRowsPerChunk rows, rows in order: partial[chunk, j], or dw[j]
// directly (+=) when there is one chunk. Fixed chunking (by row count only): deterministic.
constexpr int64_t kRowsPerChunk = 256;

template <typename X>
__global__ void rmsnorm_backward_dw_kernel(const X* __restrict__ x, const float* __restrict__ rstd,
                                           const X* __restrict__ dout, float* __restrict__ target,
                                           int64_t T, int64_t H, bool accumulate) {
  const int64_t j = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (j >= H) return;
  const int64_t chunk = blockIdx.y;
  const int64_t t0 = chunk * kRowsPerChunk, t1 = min(T, t0 + kRowsPerChunk);
  float acc = 0.0f;
  for (int64_t t = t0; t < t1; ++t)
    acc += to_float(dout[t * H + j]) * to_float(x[t * H + j]) * rstd[t];
  if (accumulate)
    target[j] += acc;
  else
    target[chunk * H + j] = acc;
}

__global__ void sum_chunks_kernel(const float* __restrict__ partial, int64_t chunks, int64_t H,
                                  float* __restrict__ dw) {
  const int64_t j = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (j >= H) return;
  float acc = 0.0f;
  for (int64_t c = 0; c < chunks; ++c) acc += partial[c * H + j];
  dw[j] += acc;
}

int threads_for_row(int64_t H) {
  return H >= 1024 ? 512 : (H >= 256 ? 256 : 64);
}

}  // namespace

void rmsnorm_forward(const Tensor& x, const Tensor& w, float eps, Tensor& out, Tensor& rstd) {
  const int64_t T = x.size(0), H = x.size(1);
  cudaStream_t stream = stream_for(x);
  dispatch_float(x.dtype(), "rmsnorm_forward", [&](auto xtag) {
    using X = decltype(xtag);
    dispatch_float(w.dtype(), "rmsnorm_forward", [&](auto wtag) {
      using W = decltype(wtag);
      rmsnorm_forward_kernel<X, W><<<unsigned(T), threads_for_row(H), 0, stream>>>(
          x.data_as<const X>(), w.data_as<const W>(), eps, out.data_as<X>(), rstd.data_as<float>(),
          H);
    });
  });
  ORIGAMI_CUDA_LAUNCH_CHECK();
}

void rmsnorm_backward(const Tensor& x, const Tensor& w, const Tensor& rstd, const Tensor& dout,
                      Tensor& dx, Tensor& dw) {
  const int64_t T = x.size(0), H = x.size(1);
  cudaStream_t stream = stream_for(x);
  dispatch_float(x.dtype(), "rmsnorm_backward", [&](auto xtag) {
    using X = decltype(xtag);
    // dw first: dx may alias dout.
    if (dw.defined()) {
      const int64_t chunks = (T + kRowsPerChunk - 1) / kRowsPerChunk;
      ORIGAMI_CHECK(chunks <= 65535, "rmsnorm_backward: CUDA supports at most ",
                    65535 * kRowsPerChunk, " rows, got ", x.str());
      const dim3 grid(unsigned((H + 255) / 256), unsigned(chunks));
      if (chunks == 1) {
        rmsnorm_backward_dw_kernel<X>
            <<<grid, 256, 0, stream>>>(x.data_as<const X>(), rstd.data_as<const float>(),
                                       dout.data_as<const X>(), dw.data_as<float>(), T, H, true);
        ORIGAMI_CUDA_LAUNCH_CHECK();
      } else {
        void* partial = nullptr;
        ORIGAMI_CUDA_CHECK(cudaMallocAsync(&partial, size_t(chunks * H) * sizeof(float), stream));
        rmsnorm_backward_dw_kernel<X><<<grid, 256, 0, stream>>>(
            x.data_as<const X>(), rstd.data_as<const float>(), dout.data_as<const X>(),
            static_cast<float*>(partial), T, H, false);
        ORIGAMI_CUDA_LAUNCH_CHECK();
        sum_chunks_kernel<<<unsigned((H + 255) / 256), 256, 0, stream>>>(
            static_cast<const float*>(partial), chunks, H, dw.data_as<float>());
        ORIGAMI_CUDA_LAUNCH_CHECK();
        ORIGAMI_CUDA_CHECK(cudaFreeAsync(partial, stream));
      }
    }
    dispatch_float(w.dtype(), "rmsnorm_backward", [&](auto wtag) {
      using W = decltype(wtag);
      rmsnorm_backward_dx_kernel<X, W><<<unsigned(T), threads_for_row(H), 0, stream>>>(
          x.data_as<const X>(), w.data_as<const W>(), rstd.data_as<const float>(),
          dout.data_as<const X>(), dx.data_as<X>(), H);
    });
    ORIGAMI_CUDA_LAUNCH_CHECK();
  });
}

}  // namespace origami::ops::cuda
