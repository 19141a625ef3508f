#include "ops/cuda/common.cuh"
#include "ops/cuda/pointwise.h"

namespace origami::ops::cuda {

namespace {

__device__ __forceinline__ float sigmoid(float g) {
  return 1.0f / (1.0f + expf(-g));
}

template <typename X>
__global__ void swiglu_forward_kernel(const X* __restrict__ gate, const X* __restrict__ up,
                                      X* __restrict__ out, const float* __restrict__ row_scale,
                                      int64_t T, int64_t F) {
  const int64_t n = T * F;
  for (int64_t k = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; k < n;
       k += int64_t(gridDim.x) * blockDim.x) {
    const float s = row_scale ? row_scale[k / F] : 1.0f;
    const float g = to_float(gate[k]);
    out[k] = from_float<X>(g * sigmoid(g) * to_float(up[k]) * s);
  }
}

// One block per row (the row sum for drow_scale is a block reduction).
template <typename X>
__global__ void swiglu_backward_kernel(const X* gate, const X* up, const X* dout, X* dgate, X* dup,
                                       const float* __restrict__ row_scale,
                                       float* __restrict__ drow_scale, int64_t F) {
  const int64_t t = blockIdx.x;
  const float s = row_scale ? row_scale[t] : 1.0f;
  float ds = 0.0f;
  for (int64_t j = t * F + threadIdx.x; j < (t + 1) * F; j += blockDim.x) {
    const float g = to_float(gate[j]), u = to_float(up[j]), d = to_float(dout[j]);
    const float sig = sigmoid(g), silu = g * sig;
    ds += d * silu * u;
    dgate[j] = from_float<X>(d * u * s * (sig * (1.0f + g * (1.0f - sig))));
    dup[j] = from_float<X>(d * silu * s);
  }
  if (drow_scale) {
    ds = block_sum(ds);
    if (threadIdx.x == 0) drow_scale[t] = ds;
  }
}

}  // namespace

void swiglu_forward(const Tensor& gate, const Tensor& up, Tensor& out, const Tensor& row_scale) {
  const int64_t T = gate.size(0), F = gate.size(1);
  if (T * F == 0) return;
  cudaStream_t stream = stream_for(gate);
  dispatch_float(gate.dtype(), "swiglu_forward", [&](auto tag) {
    using X = decltype(tag);
    swiglu_forward_kernel<X><<<grid_for(T * F), 256, 0, stream>>>(
        gate.data_as<const X>(), up.data_as<const X>(), out.data_as<X>(),
        row_scale.defined() ? row_scale.data_as<const float>() : nullptr, T, F);
  });
  ORIGAMI_CUDA_LAUNCH_CHECK();
}

void swiglu_backward(const Tensor& gate, const Tensor& up, const Tensor& dout, Tensor& dgate,
                     Tensor& dup, const Tensor& row_scale, Tensor& drow_scale) {
  const int64_t T = gate.size(0), F = gate.size(1);
  const int threads = F >= 1024 ? 512 : (F >= 256 ? 256 : 64);
  cudaStream_t stream = stream_for(gate);
  dispatch_float(gate.dtype(), "swiglu_backward", [&](auto tag) {
    using X = decltype(tag);
    swiglu_backward_kernel<X><<<unsigned(T), threads, 0, stream>>>(
        gate.data_as<const X>(), up.data_as<const X>(), dout.data_as<const X>(), dgate.data_as<X>(),
        dup.data_as<X>(), row_scale.defined() ? row_scale.data_as<const float>() : nullptr,
        drow_scale.defined() ? drow_scale.data_as<float>() : nullptr, F);
  });
  ORIGAMI_CUDA_LAUNCH_CHECK();
}

}  // namespace origami::ops::cuda
