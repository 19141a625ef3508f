// Optimizer kernels: AdamW elementwise, and sum of squares in double with a fixed two-pass
// reduction (per-block partial sums, then one block adds them in order), so the result is the same
// on every run.
#include <cuda_fp16.h>

#include <cmath>

#include "ops/cuda/common.cuh"
#include "ops/cuda/optimizer.h"

namespace origami::ops::cuda {

namespace {

constexpr int kThreads = 256;
constexpr int kMaxPartials = 1024;

__device__ __forceinline__ float load_float(__half x) {
  return __half2float(x);
}
__device__ __forceinline__ float load_float(float x) {
  return x;
}
__device__ __forceinline__ float load_float(__nv_bfloat16 x) {
  return __bfloat162float(x);
}

template <typename G, typename P>
__global__ void adamw_kernel(float* __restrict__ w, const G* __restrict__ g, float* __restrict__ m,
                             float* __restrict__ v, P* __restrict__ param, int64_t n, float decay,
                             float b1, float b2, float step_size, float bc2_sqrt, float eps,
                             float grad_scale) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    const float gi = to_float(g[i]) * grad_scale;
    const float mi = b1 * m[i] + (1.0f - b1) * gi;
    const float vi = b2 * v[i] + (1.0f - b2) * gi * gi;
    const float denom = sqrtf(vi) / bc2_sqrt + eps;
    const float wi = w[i] * decay - step_size * (mi / denom);
    m[i] = mi;
    v[i] = vi;
    w[i] = wi;
    if (param) param[i] = from_float<P>(wi);
  }
}

__device__ __forceinline__ double block_sum_double(double x) {
  __shared__ double partial[32];
  for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  __syncthreads();
  if (lane == 0) partial[warp] = x;
  __syncthreads();
  const int nwarps = (blockDim.x + 31) >> 5;
  x = lane < nwarps ? partial[lane] : 0.0;
  for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
  return x;
}

template <typename T>
__global__ void sum_squares_partial_kernel(const T* __restrict__ g, int64_t n,
                                           double* __restrict__ partial) {
  double s = 0.0;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    const double x = load_float(g[i]);
    s += x * x;
  }
  s = block_sum_double(s);
  if (threadIdx.x == 0) partial[blockIdx.x] = s;
}

__global__ void sum_partials_kernel(const double* __restrict__ partial, int count,
                                    double* __restrict__ out) {
  double s = 0.0;
  for (int i = threadIdx.x; i < count; i += blockDim.x) s += partial[i];
  s = block_sum_double(s);
  if (threadIdx.x == 0) *out = s;
}

template <typename T>
__global__ void scale_kernel(T* __restrict__ x, int64_t n, float s) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    x[i] = from_float<T>(to_float(x[i]) * s);
}

template <typename T>
__global__ void axpy_kernel(float* __restrict__ y, const T* __restrict__ x, int64_t n,
                            float alpha) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    y[i] += alpha * to_float(x[i]);
}

}  // namespace

void adamw_step(Tensor& master, const Tensor& grad, Tensor& m, Tensor& v, const AdamWParams& p,
                const Tensor& param, float grad_scale) {
  const int64_t n = master.numel();
  // Scalars in double on the host, as torch.optim.AdamW computes them in Python.
  const double bc1 = 1.0 - std::pow(double(p.beta1), double(p.step));
  const double bc2 = 1.0 - std::pow(double(p.beta2), double(p.step));
  const float decay = float(1.0 - double(p.lr) * double(p.weight_decay));
  const float step_size = float(double(p.lr) / bc1);
  const float bc2_sqrt = float(std::sqrt(bc2));
  cudaStream_t s = stream_for(master);
  dispatch_float(grad.dtype(), "adamw_step", [&](auto gtag) {
    using G = decltype(gtag);
    auto run = [&](auto* prm) {
      using P = std::remove_pointer_t<decltype(prm)>;
      adamw_kernel<G, P><<<grid_for(n), kThreads, 0, s>>>(
          master.data_as<float>(), grad.data_as<G>(), m.data_as<float>(), v.data_as<float>(), prm,
          n, decay, p.beta1, p.beta2, step_size, bc2_sqrt, p.eps, grad_scale);
    };
    if (!param.defined())
      run(static_cast<float*>(nullptr));
    else if (param.dtype() == DType::f32)
      run(param.data_as<float>());
    else
      run(param.data_as<__nv_bfloat16>());
  });
  ORIGAMI_CUDA_LAUNCH_CHECK();
}

double sum_squares(const Tensor& g) {
  const int64_t n = g.numel();
  cudaStream_t s = stream_for(g);
  int64_t blocks = (n + kThreads * 4 - 1) / (kThreads * 4);
  if (blocks > kMaxPartials) blocks = kMaxPartials;
  if (blocks < 1) blocks = 1;
  // [blocks] partial sums, then the total; stream-ordered (the device's memory pool), given back
  // on the stream also when a check throws.
  struct Scratch {
    double* p;
    cudaStream_t s;
    ~Scratch() {
      if (p) cudaFreeAsync(p, s);
    }
  } buffer{nullptr, s};
  ORIGAMI_CUDA_CHECK(
      cudaMallocAsync(reinterpret_cast<void**>(&buffer.p), size_t(blocks + 1) * sizeof(double), s));
  double* scratch = buffer.p;
  auto launch = [&](auto tag) {
    using T = decltype(tag);
    sum_squares_partial_kernel<T><<<unsigned(blocks), kThreads, 0, s>>>(g.data_as<T>(), n, scratch);
  };
  if (g.dtype() == DType::f32)
    launch(float{});
  else if (g.dtype() == DType::bf16)
    launch(__nv_bfloat16{});
  else
    launch(__half{});
  ORIGAMI_CUDA_LAUNCH_CHECK();
  sum_partials_kernel<<<1, kThreads, 0, s>>>(scratch, int(blocks), scratch + blocks);
  ORIGAMI_CUDA_LAUNCH_CHECK();
  double total = 0.0;
  ORIGAMI_CUDA_CHECK(
      cudaMemcpyAsync(&total, scratch + blocks, sizeof(double), cudaMemcpyDeviceToHost, s));
  ORIGAMI_CUDA_CHECK(cudaStreamSynchronize(s));
  return total;
}

void scale_(Tensor& g, float sc) {
  const int64_t n = g.numel();
  cudaStream_t s = stream_for(g);
  dispatch_float(g.dtype(), "scale_", [&](auto tag) {
    using T = decltype(tag);
    scale_kernel<T><<<grid_for(n), kThreads, 0, s>>>(g.data_as<T>(), n, sc);
  });
  ORIGAMI_CUDA_LAUNCH_CHECK();
}

void axpy_(Tensor& y, const Tensor& x, float alpha) {
  const int64_t n = y.numel();
  cudaStream_t s = stream_for(y);
  dispatch_float(x.dtype(), "axpy_", [&](auto tag) {
    using T = decltype(tag);
    axpy_kernel<T><<<grid_for(n), kThreads, 0, s>>>(y.data_as<float>(), x.data_as<T>(), n, alpha);
  });
  ORIGAMI_CUDA_LAUNCH_CHECK();
}

}  // namespace origami::ops::cuda
