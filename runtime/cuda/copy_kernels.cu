// Strided, dtype-converting copy and fill on a CUDA device (Tensor::copy_from, Tensor::fill_).
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "runtime/cuda/cuda_check.h"
#include "runtime/cuda_copy.h"

namespace origami::detail {

namespace {

constexpr int kMaxDims = 8;
struct Layout {
  int nd;
  int64_t shape[kMaxDims];
  int64_t dst_stride[kMaxDims];
  int64_t src_stride[kMaxDims];
};

__device__ double load(const void* p, int64_t i, int t) {
  switch (t) {
    case 0: return static_cast<const float*>(p)[i];
    case 1: return __bfloat162float(static_cast<const __nv_bfloat16*>(p)[i]);
    case 2: return __half2float(static_cast<const __half*>(p)[i]);
    case 3: return static_cast<const int32_t*>(p)[i];
    case 4: return double(static_cast<const int64_t*>(p)[i]);
    default: return static_cast<const uint8_t*>(p)[i];
  }
}

__device__ void store(void* p, int64_t i, int t, double v) {
  switch (t) {
    case 0: static_cast<float*>(p)[i] = float(v); break;
    case 1: static_cast<__nv_bfloat16*>(p)[i] = __float2bfloat16(float(v)); break;
    case 2: static_cast<__half*>(p)[i] = __float2half(float(v)); break;
    case 3: static_cast<int32_t*>(p)[i] = int32_t(v); break;
    case 4: static_cast<int64_t*>(p)[i] = int64_t(v); break;
    default: static_cast<uint8_t*>(p)[i] = uint8_t(v); break;
  }
}

__global__ void copy_convert_kernel(void* dst, int dt, const void* src, int st, Layout L, int64_t n,
                                    bool fill, double value) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    int64_t rem = i, doff = 0, soff = 0;
    for (int d = L.nd - 1; d >= 0; --d) {
      const int64_t c = rem % L.shape[d];
      rem /= L.shape[d];
      doff += c * L.dst_stride[d];
      soff += c * L.src_stride[d];
    }
    if (dt == 4 && st == 4 && !fill)  // int64 keeps its full range
      static_cast<int64_t*>(dst)[doff] = static_cast<const int64_t*>(src)[soff];
    else
      store(dst, doff, dt, fill ? value : load(src, soff, st));
  }
}

Layout make_layout(const Tensor& dst, const Tensor* src) {
  ORIGAMI_CHECK(dst.dim() <= kMaxDims, "CUDA copy supports up to ", kMaxDims, " dimensions, got ",
                dst.str());
  Layout L{};
  L.nd = dst.dim();
  for (int d = 0; d < L.nd; ++d) {
    L.shape[d] = dst.shape()[d];
    L.dst_stride[d] = dst.strides()[d];
    L.src_stride[d] = src ? src->strides()[d] : 0;
  }
  return L;
}

void launch(const Tensor& dst, const Tensor* src, bool fill, double value) {
  const int64_t n = dst.numel();
  if (n == 0) return;
  set_cuda_device(dst.device());
  const int threads = 256;
  const int64_t blocks = std::min<int64_t>((n + threads - 1) / threads, 65535);
  copy_convert_kernel<<<unsigned(blocks), threads, 0, current_cuda_stream(dst.device())>>>(
      dst.data(), int(dst.dtype()), src ? src->data() : nullptr, src ? int(src->dtype()) : 0,
      make_layout(dst, src), n, fill, value);
  ORIGAMI_CUDA_CHECK(cudaGetLastError());
}

}  // namespace

void cuda_copy_convert(const Tensor& dst, const Tensor& src) {
  if (dst.dtype() == src.dtype() && dst.is_contiguous() && src.is_contiguous()) {
    set_cuda_device(dst.device());
    ORIGAMI_CUDA_CHECK(cudaMemcpyAsync(dst.data(), src.data(), dst.nbytes(),
                                       cudaMemcpyDeviceToDevice, current_cuda_stream(dst.device())));
    return;
  }
  launch(dst, &src, false, 0.0);
}

void cuda_fill(const Tensor& dst, double value) { launch(dst, nullptr, true, value); }

}  // namespace origami::detail
