#include "ops/cuda/common.cuh"
#include "ops/cuda/pointwise.h"

namespace origami::ops::cuda {

namespace {

// One block per token: cos/sin of the D/2 angles float(pos) * inv_freq[i] (an f32 product, as in
// Hugging Face; sincosf is the accurate version, no fast math) into shared memory, then every
// (head, i) pair is rotated by one thread. Each pair is read before it is written: out may alias x.
template <typename X, typename P>
__global__ void rope_kernel(const X* x, const P* __restrict__ positions,
                            const float* __restrict__ inv_freq, X* out, int64_t H, int64_t half,
                            float sign) {
  extern __shared__ float cs[];  // [2 * half]: cos then sin
  const int64_t t = blockIdx.x;
  const float pos = float(positions[t]);
  for (int64_t i = threadIdx.x; i < half; i += blockDim.x) {
    float s, c;
    sincosf(__fmul_rn(pos, inv_freq[i]), &s, &c);
    cs[i] = c;
    cs[half + i] = sign * s;
  }
  __syncthreads();
  const int64_t D = 2 * half;
  for (int64_t k = threadIdx.x; k < H * half; k += blockDim.x) {
    const int64_t h = k / half, i = k - h * half;
    const int64_t base = (t * H + h) * D;
    const float a = to_float(x[base + i]), b = to_float(x[base + i + half]);
    const float c = cs[i], s = cs[half + i];
    out[base + i] = from_float<X>(a * c - b * s);
    out[base + i + half] = from_float<X>(b * c + a * s);
  }
}

}  // namespace

void rope_apply(const Tensor& x, const Tensor& positions, const Tensor& inv_freq, Tensor& out,
                bool inverse) {
  const int64_t T = x.size(0), H = x.size(1), half = x.size(2) / 2;
  const size_t shared = size_t(2 * half) * sizeof(float);
  ORIGAMI_CHECK(shared <= 48 * 1024, inverse ? "rope_backward" : "rope_forward",
                ": CUDA supports head dimensions up to 12288, got ", x.str());
  const int64_t pairs = H * half;
  const int threads = pairs >= 256 ? 256 : (pairs >= 128 ? 128 : 64);
  cudaStream_t stream = stream_for(x);
  dispatch_float(x.dtype(), inverse ? "rope_backward" : "rope_forward", [&](auto tag) {
    using X = decltype(tag);
    const float sign = inverse ? -1.0f : 1.0f;
    if (positions.dtype() == DType::i32)
      rope_kernel<X, int32_t><<<unsigned(T), threads, shared, stream>>>(
          x.data_as<const X>(), positions.data_as<const int32_t>(), inv_freq.data_as<const float>(),
          out.data_as<X>(), H, half, sign);
    else
      rope_kernel<X, int64_t><<<unsigned(T), threads, shared, stream>>>(
          x.data_as<const X>(), positions.data_as<const int64_t>(), inv_freq.data_as<const float>(),
          out.data_as<X>(), H, half, sign);
  });
  ORIGAMI_CUDA_LAUNCH_CHECK();
}

}  // namespace origami::ops::cuda
