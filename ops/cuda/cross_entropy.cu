// Cross-entropy kernels: one thread block per row for the reductions over the vocabulary (fp32
// accumulation, numerically stable with the row max), an elementwise 2-D grid for the backward.
#include "ops/cuda/common.cuh"
#include "ops/cuda/cross_entropy.h"

namespace origami::ops::cuda {

namespace {

constexpr int kRowThreads = 256;
constexpr int64_t kMaxRowBlocks = 65535 * 16;

unsigned row_blocks(int64_t T) {
  return unsigned(T < kMaxRowBlocks ? T : kMaxRowBlocks);
}

template <typename Fn>
void dispatch_targets(DType dt, Fn&& fn) {
  if (dt == DType::i32)
    fn(int32_t{});
  else
    fn(int64_t{});
}

// Every block walks whole rows, so the loop bound is uniform within a block (block_max/block_sum
// synchronise the block).
template <typename L>
__global__ void row_max_kernel(const L* __restrict__ x, int64_t T, int64_t V, int64_t ld,
                               float* __restrict__ out) {
  for (int64_t t = blockIdx.x; t < T; t += gridDim.x) {
    const L* row = x + t * ld;
    float m = -INFINITY;
    for (int64_t j = threadIdx.x; j < V; j += blockDim.x) m = fmaxf(m, to_float(row[j]));
    m = block_max(m);
    if (threadIdx.x == 0) out[t] = m;
  }
}

template <typename L>
__global__ void sum_exp_kernel(const L* __restrict__ x, int64_t T, int64_t V, int64_t ld,
                               const float* __restrict__ row_max, float* __restrict__ out) {
  for (int64_t t = blockIdx.x; t < T; t += gridDim.x) {
    const L* row = x + t * ld;
    const float m = row_max[t];
    float s = 0.0f;
    for (int64_t j = threadIdx.x; j < V; j += blockDim.x) s += expf(to_float(row[j]) - m);
    s = block_sum(s);
    if (threadIdx.x == 0) out[t] = s;
  }
}

template <typename L, typename I>
__global__ void target_logit_kernel(const L* __restrict__ x, const I* __restrict__ targets,
                                    int64_t T, int64_t V, int64_t ld, int64_t vocab_offset,
                                    float* __restrict__ out) {
  for (int64_t t = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; t < T;
       t += int64_t(gridDim.x) * blockDim.x) {
    const int64_t j = int64_t(targets[t]) - vocab_offset;
    out[t] = (j >= 0 && j < V) ? to_float(x[t * ld + j]) : 0.0f;
  }
}

template <typename I>
__global__ void finish_kernel(const float* __restrict__ row_max, const float* __restrict__ sum_exp,
                              const float* __restrict__ target_logit, const I* __restrict__ targets,
                              int64_t T, int64_t ignore_index, float* __restrict__ loss,
                              float* __restrict__ lse) {
  for (int64_t t = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; t < T;
       t += int64_t(gridDim.x) * blockDim.x) {
    const float l = logf(sum_exp[t]) + row_max[t];
    lse[t] = l;
    const int64_t y = int64_t(targets[t]);
    // A negative target that is not ignored has no logit: NaN makes the mistake visible.
    loss[t] = y == ignore_index ? 0.0f : (y < 0 ? NAN : l - target_logit[t]);
  }
}

template <typename L, typename I>
__global__ void forward_kernel(const L* __restrict__ x, const I* __restrict__ targets, int64_t T,
                               int64_t V, int64_t ld, int64_t ignore_index,
                               float* __restrict__ loss, float* __restrict__ lse) {
  for (int64_t t = blockIdx.x; t < T; t += gridDim.x) {
    const L* row = x + t * ld;
    float m = -INFINITY;
    for (int64_t j = threadIdx.x; j < V; j += blockDim.x) m = fmaxf(m, to_float(row[j]));
    m = block_max(m);
    float s = 0.0f;
    for (int64_t j = threadIdx.x; j < V; j += blockDim.x) s += expf(to_float(row[j]) - m);
    s = block_sum(s);
    if (threadIdx.x == 0) {
      const float l = logf(s) + m;
      lse[t] = l;
      const int64_t y = int64_t(targets[t]);
      // The CPU path rejects targets outside [0, V); here they give a NaN loss.
      loss[t] = y == ignore_index ? 0.0f : (y >= 0 && y < V ? l - to_float(row[y]) : NAN);
    }
  }
}

// blockIdx.y walks rows, blockIdx.x / threadIdx.x the vocabulary.
template <typename L, typename I>
__global__ void backward_kernel(const L* __restrict__ x, const I* __restrict__ targets,
                                const float* __restrict__ lse, int64_t T, int64_t V, int64_t ld,
                                int64_t ldd, int64_t ignore_index, float grad_scale,
                                int64_t vocab_offset, L* __restrict__ dx) {
  for (int64_t t = blockIdx.y; t < T; t += gridDim.y) {
    const int64_t y = int64_t(targets[t]);
    const bool ignored = y == ignore_index;
    const int64_t jt = y - vocab_offset;
    const float l = lse[t];
    const L* row = x + t * ld;
    L* drow = dx + t * ldd;
    for (int64_t j = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; j < V;
         j += int64_t(gridDim.x) * blockDim.x) {
      float g = 0.0f;
      if (!ignored) {
        const float p = expf(to_float(row[j]) - l);
        g = (j == jt ? p - 1.0f : p) * grad_scale;
      }
      drow[j] = from_float<L>(g);
    }
  }
}

}  // namespace

void ce_row_max(const Tensor& logits, Tensor& row_max) {
  const int64_t T = logits.size(0), V = logits.size(1), ld = logits.stride(0);
  cudaStream_t s = stream_for(logits);
  dispatch_float(logits.dtype(), "ce_row_max", [&](auto tag) {
    using L = decltype(tag);
    row_max_kernel<L><<<row_blocks(T), kRowThreads, 0, s>>>(logits.data_as<L>(), T, V, ld,
                                                            row_max.data_as<float>());
  });
  ORIGAMI_CUDA_LAUNCH_CHECK();
}

void ce_sum_exp(const Tensor& logits, const Tensor& row_max, Tensor& sum_exp) {
  const int64_t T = logits.size(0), V = logits.size(1), ld = logits.stride(0);
  cudaStream_t s = stream_for(logits);
  dispatch_float(logits.dtype(), "ce_sum_exp", [&](auto tag) {
    using L = decltype(tag);
    sum_exp_kernel<L><<<row_blocks(T), kRowThreads, 0, s>>>(
        logits.data_as<L>(), T, V, ld, row_max.data_as<float>(), sum_exp.data_as<float>());
  });
  ORIGAMI_CUDA_LAUNCH_CHECK();
}

void ce_target_logit(const Tensor& logits, const Tensor& targets, int64_t vocab_offset,
                     Tensor& target_logit) {
  const int64_t T = logits.size(0), V = logits.size(1), ld = logits.stride(0);
  cudaStream_t s = stream_for(logits);
  dispatch_float(logits.dtype(), "ce_target_logit", [&](auto ltag) {
    using L = decltype(ltag);
    dispatch_targets(targets.dtype(), [&](auto ttag) {
      using I = decltype(ttag);
      target_logit_kernel<L, I>
          <<<grid_for(T), 256, 0, s>>>(logits.data_as<L>(), targets.data_as<I>(), T, V, ld,
                                       vocab_offset, target_logit.data_as<float>());
    });
  });
  ORIGAMI_CUDA_LAUNCH_CHECK();
}

void ce_finish(const Tensor& row_max, const Tensor& sum_exp, const Tensor& target_logit,
               const Tensor& targets, int64_t ignore_index, Tensor& loss, Tensor& lse) {
  const int64_t T = row_max.size(0);
  cudaStream_t s = stream_for(row_max);
  dispatch_targets(targets.dtype(), [&](auto ttag) {
    using I = decltype(ttag);
    finish_kernel<I><<<grid_for(T), 256, 0, s>>>(
        row_max.data_as<float>(), sum_exp.data_as<float>(), target_logit.data_as<float>(),
        targets.data_as<I>(), T, ignore_index, loss.data_as<float>(), lse.data_as<float>());
  });
  ORIGAMI_CUDA_LAUNCH_CHECK();
}

void cross_entropy_forward(const Tensor& logits, const Tensor& targets, int64_t ignore_index,
                           Tensor& loss, Tensor& lse) {
  const int64_t T = logits.size(0), V = logits.size(1), ld = logits.stride(0);
  cudaStream_t s = stream_for(logits);
  dispatch_float(logits.dtype(), "cross_entropy_forward", [&](auto ltag) {
    using L = decltype(ltag);
    dispatch_targets(targets.dtype(), [&](auto ttag) {
      using I = decltype(ttag);
      forward_kernel<L, I><<<row_blocks(T), kRowThreads, 0, s>>>(
          logits.data_as<L>(), targets.data_as<I>(), T, V, ld, ignore_index, loss.data_as<float>(),
          lse.data_as<float>());
    });
  });
  ORIGAMI_CUDA_LAUNCH_CHECK();
}

void cross_entropy_backward(const Tensor& logits, const Tensor& targets, const Tensor& lse,
                            int64_t ignore_index, float grad_scale, Tensor& dlogits,
                            int64_t vocab_offset) {
  const int64_t T = logits.size(0), V = logits.size(1), ld = logits.stride(0);
  const int64_t ldd = dlogits.stride(0);
  cudaStream_t s = stream_for(logits);
  const int threads = 256;
  int64_t col_blocks = (V + threads - 1) / threads;
  if (col_blocks > 1024) col_blocks = 1024;
  const dim3 grid(unsigned(col_blocks), unsigned(T < 65535 ? T : 65535));
  dispatch_float(logits.dtype(), "cross_entropy_backward", [&](auto ltag) {
    using L = decltype(ltag);
    dispatch_targets(targets.dtype(), [&](auto ttag) {
      using I = decltype(ttag);
      backward_kernel<L, I><<<grid, threads, 0, s>>>(
          logits.data_as<L>(), targets.data_as<I>(), lse.data_as<float>(), T, V, ld, ldd,
          ignore_index, grad_scale, vocab_offset, dlogits.data_as<L>());
    });
  });
  ORIGAMI_CUDA_LAUNCH_CHECK();
}

}  // namespace origami::ops::cuda
