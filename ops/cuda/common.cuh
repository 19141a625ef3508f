// Shared helpers of the CUDA op kernels: element loads/stores as float, launch shapes, reductions.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "runtime/cuda/cuda_check.h"
#include "runtime/tensor.h"

namespace origami::ops::cuda {

// Loads and stores of f32 / bf16 elements as float.
__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
template <typename T>
__device__ __forceinline__ T from_float(float x);
template <>
__device__ __forceinline__ float from_float<float>(float x) {
  return x;
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) {
  return __float2bfloat16(x);
}

// Sum of `v` over a block (blockDim.x a multiple of 32, at most 1024); every thread gets it.
__device__ __forceinline__ float block_sum(float v) {
  __shared__ float partial[32];
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  __syncthreads();
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  const int nwarps = (blockDim.x + 31) >> 5;
  v = lane < nwarps ? partial[lane] : 0.0f;
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

__device__ __forceinline__ float block_max(float v) {
  __shared__ float partial[32];
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  __syncthreads();
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  const int nwarps = (blockDim.x + 31) >> 5;
  v = lane < nwarps ? partial[lane] : -INFINITY;
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

inline unsigned grid_for(int64_t n, int threads = 256) {
  int64_t b = (n + threads - 1) / threads;
  return unsigned(b < 1 ? 1 : (b > 65535 * 8 ? 65535 * 8 : b));
}

// The stream kernels of `t`'s device go on (after making that device current).
inline cudaStream_t stream_for(const Tensor& t) {
  detail::set_cuda_device(t.device());
  return detail::current_cuda_stream(t.device());
}

// Grants `kernel` `bytes` of dynamic shared memory, or fails naming what needs it (the head dim
// of tensor `name`).
template <typename Kernel>
void allow_shared_memory(Kernel kernel, size_t bytes, const char* op, int64_t head_dim,
                         const char* name, const Tensor& t) {
  int device = 0, optin = 0;
  ORIGAMI_CUDA_CHECK(cudaGetDevice(&device));
  ORIGAMI_CUDA_CHECK(
      cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  ORIGAMI_CHECK(bytes <= size_t(optin), op, ": head dim ", head_dim, " needs ", bytes,
                " bytes of shared memory per block, the device allows ", optin, " (", name, " ",
                t.str(), ")");
  if (bytes > 48 * 1024)
    ORIGAMI_CUDA_CHECK(
        cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes)));
}

// Dispatches a lambda over the float dtype of a tensor: fn(float{}) or fn(__nv_bfloat16{}).
template <typename Fn>
void dispatch_float(DType dt, const char* op, Fn&& fn) {
  if (dt == DType::f32) fn(float{});
  else if (dt == DType::bf16) fn(__nv_bfloat16{});
  else ORIGAMI_FAIL(op, ": CUDA kernels support f32 and bf16, got ", dtype_name(dt));
}

}  // namespace origami::ops::cuda

#define ORIGAMI_CUDA_LAUNCH_CHECK() ORIGAMI_CUDA_CHECK(cudaGetLastError())
