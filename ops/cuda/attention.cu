// CUDA attention: a straightforward flash-attention forward and backward, fp32 accumulation,
// f32 / bf16 input and output, any head dim that fits in shared memory.
//
// Forward: one block per (query tile of kRowsPerBlock rows, query head, batch), one thread per
// query row. K and V tiles of kKeysPerTile rows pass through shared memory; each thread keeps its
// tile of scores in registers and its running max / sum, and its output row in shared memory (rows
// padded to D + 1 floats so that threads reading their own rows hit different banks).
//
// Backward: (1) delta = rowsum(dout * out), one warp per row; (2) one block per (key tile, kv head,
// batch), one thread per key row: for every query head of the group and every query tile that
// sees the keys it recomputes P = exp(S - lse), accumulates dV = P^T dO and dK = dS^T Q in shared
// memory (so the heads of a group sum without atomics), and adds dQ = dS K to an f32 accumulator
// with atomics; (3) the accumulator is converted to dq's dtype.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

#include "ops/cuda/attention.h"
#include "ops/cuda/attention_tile.cuh"
#include "ops/cuda/common.cuh"

namespace origami::ops::cuda {
namespace {

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

constexpr int kKeysPerTile = 32;  // forward: keys per shared-memory tile (scores in registers)
constexpr int kBwdKeys = 32;      // backward: key rows per block (one thread each)
constexpr int kBwdRows = 32;      // backward: query rows per tile (P and dS in registers)

// Shapes and mask of one call; q_pos = q_offset + i, k_pos = k_offset + j.
struct Dims {
  int64_t B, Sq, Sk, Hq, Hkv, D;
  bool causal;
  int64_t window, q_offset, k_offset;

  // Keys visible to query row i: [lo, hi).
  __host__ __device__ void key_range(int64_t i, int64_t& lo, int64_t& hi) const {
    const int64_t qp = q_offset + i - k_offset;
    lo = 0;
    hi = Sk;
    if (causal || window > 0) hi = hi < qp + 1 ? hi : qp + 1;
    if (window > 0) lo = lo > qp - window + 1 ? lo : qp - window + 1;
  }
  // Query rows that see a key of [j0, j1): [ilo, ihi).
  __host__ __device__ void query_range(int64_t j0, int64_t j1, int64_t& ilo, int64_t& ihi) const {
    ilo = 0;
    ihi = Sq;
    if (causal || window > 0) {
      const int64_t a = j0 + k_offset - q_offset;
      ilo = ilo > a ? ilo : a;
    }
    if (window > 0) {
      const int64_t a = j1 + window - 1 + k_offset - q_offset;
      ihi = ihi < a ? ihi : a;
    }
  }
};

// ---- forward ------------------------------------------------------------------------------------

template <typename T, int ROWS>
__global__ void attention_forward_kernel(const T* __restrict__ q, const T* __restrict__ k,
                                         const T* __restrict__ v, T* __restrict__ out,
                                         float* __restrict__ lse, Dims dims, float scale_log2) {
  extern __shared__ float smem[];
  const int64_t D = dims.D, ld = D + 1;
  float* sQ = smem;                   // [ROWS][ld] q * scale * log2(e)
  float* sO = sQ + ROWS * ld;         // [ROWS][ld] unnormalised output
  float* sK = sO + ROWS * ld;         // [kKeysPerTile][D]
  float* sV = sK + kKeysPerTile * D;  // [kKeysPerTile][D]
  const int tid = threadIdx.x;
  const int64_t i0 = int64_t(blockIdx.x) * ROWS, h = blockIdx.y, b = blockIdx.z;
  const int64_t hk = h / (dims.Hq / dims.Hkv);
  const int64_t nq = dims.Sq - i0 < ROWS ? dims.Sq - i0 : ROWS;

  for (int64_t e = tid; e < ROWS * D; e += ROWS) {
    const int64_t r = e / D, d = e % D;
    sQ[r * ld + d] =
        r < nq ? to_float(q[((b * dims.Sq + i0 + r) * dims.Hq + h) * D + d]) * scale_log2 : 0.0f;
    sO[r * ld + d] = 0.0f;
  }

  const int64_t i = i0 + tid;
  int64_t lo = 0, hi = 0;
  if (tid < nq) dims.key_range(i, lo, hi);
  int64_t jbeg, jend, unused;
  dims.key_range(i0, jbeg, unused);
  dims.key_range(i0 + nq - 1, unused, jend);
  float m = -INFINITY, l = 0.0f;
  float* o = sO + tid * ld;
  const float* qr = sQ + tid * ld;

  for (int64_t j0 = jbeg < jend ? jbeg / kKeysPerTile * kKeysPerTile : jend; j0 < jend;
       j0 += kKeysPerTile) {
    __syncthreads();  // the previous tile is consumed (and sQ / sO are written, first time)
    for (int64_t e = tid; e < kKeysPerTile * D; e += ROWS) {
      const int64_t r = e / D, d = e % D, j = j0 + r;
      const bool in = j < dims.Sk;
      const int64_t g = ((b * dims.Sk + j) * dims.Hkv + hk) * D + d;
      sK[e] = in ? to_float(k[g]) : 0.0f;
      sV[e] = in ? to_float(v[g]) : 0.0f;
    }
    __syncthreads();

    online_softmax_tile<kKeysPerTile>(qr, sK, sV, D, j0, lo, hi, m, l, o);
  }

  __syncthreads();  // (also covers blocks that saw no key tile)
  const float inv = l > 0.0f ? 1.0f / l : 0.0f;
  for (int64_t d = 0; d < D; ++d) o[d] *= inv;
  if (tid < nq) lse[(b * dims.Hq + h) * dims.Sq + i] = l > 0.0f ? (m + log2f(l)) * kLn2 : -INFINITY;
  __syncthreads();
  for (int64_t e = tid; e < nq * D; e += ROWS) {
    const int64_t r = e / D, d = e % D;
    out[((b * dims.Sq + i0 + r) * dims.Hq + h) * D + d] = from_float<T>(sO[r * ld + d]);
  }
}

// ---- backward -----------------------------------------------------------------------------------

// delta[b,h,i] = sum_d dout * out; one warp per (b, h, i) row.
template <typename T>
__global__ void attention_delta_kernel(const T* __restrict__ out, const T* __restrict__ dout,
                                       float* __restrict__ delta, Dims dims) {
  const int64_t row = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  const int lane = threadIdx.x & 31;
  const int64_t nrows = dims.B * dims.Hq * dims.Sq;
  if (row >= nrows) return;  // whole warps leave together
  const int64_t i = row % dims.Sq, bh = row / dims.Sq;
  const int64_t b = bh / dims.Hq, h = bh % dims.Hq;
  const int64_t base = ((b * dims.Sq + i) * dims.Hq + h) * dims.D;
  float s = 0.0f;
  for (int64_t d = lane; d < dims.D; d += 32)
    s += to_float(dout[base + d]) * to_float(out[base + d]);
  for (int off = 16; off > 0; off >>= 1) s += __shfl_xor_sync(0xffffffffu, s, off);
  if (lane == 0) delta[row] = s;
}

template <typename T>
__global__ void attention_backward_kernel(const T* __restrict__ q, const T* __restrict__ k,
                                          const T* __restrict__ v, const T* __restrict__ dout,
                                          const float* __restrict__ lse,
                                          const float* __restrict__ delta,
                                          float* __restrict__ dq_acc, T* __restrict__ dk,
                                          T* __restrict__ dv, Dims dims, float scale) {
  extern __shared__ float smem[];
  const int64_t D = dims.D, ld = D + 1;
  constexpr int ldS = kBwdKeys + 1;
  float* sK = smem;                    // [kBwdKeys][ld]
  float* sV = sK + kBwdKeys * ld;      // [kBwdKeys][ld]
  float* sdK = sV + kBwdKeys * ld;     // [kBwdKeys][ld] sum dS^T Q (unscaled)
  float* sdV = sdK + kBwdKeys * ld;    // [kBwdKeys][ld] sum P^T dO
  float* sQ = sdV + kBwdKeys * ld;     // [kBwdRows][D]
  float* sdO = sQ + kBwdRows * D;      // [kBwdRows][D]
  float* sdS = sdO + kBwdRows * D;     // [kBwdRows][ldS]
  float* sLse = sdS + kBwdRows * ldS;  // [kBwdRows] lse * log2(e)
  float* sDelta = sLse + kBwdRows;     // [kBwdRows]
  const int tid = threadIdx.x;
  const int64_t j0 = int64_t(blockIdx.x) * kBwdKeys, hk = blockIdx.y, b = blockIdx.z;
  const int64_t nk = dims.Sk - j0 < kBwdKeys ? dims.Sk - j0 : kBwdKeys;
  const int64_t group = dims.Hq / dims.Hkv;
  const float scale_log2 = scale * kLog2e;

  for (int64_t e = tid; e < kBwdKeys * D; e += kBwdKeys) {
    const int64_t r = e / D, d = e % D;
    const int64_t g = ((b * dims.Sk + j0 + r) * dims.Hkv + hk) * D + d;
    sK[r * ld + d] = r < nk ? to_float(k[g]) : 0.0f;
    sV[r * ld + d] = r < nk ? to_float(v[g]) : 0.0f;
    sdK[r * ld + d] = 0.0f;
    sdV[r * ld + d] = 0.0f;
  }
  const int64_t j = j0 + tid;
  const float* kr = sK + tid * ld;
  const float* vr = sV + tid * ld;
  float* dkr = sdK + tid * ld;
  float* dvr = sdV + tid * ld;

  int64_t ilo, ihi;
  dims.query_range(j0, j0 + nk, ilo, ihi);
  for (int64_t g = 0; g < group && ilo < ihi; ++g) {
    const int64_t h = hk * group + g;
    for (int64_t i0 = ilo / kBwdRows * kBwdRows; i0 < ihi; i0 += kBwdRows) {
      const int64_t nq = dims.Sq - i0 < kBwdRows ? dims.Sq - i0 : kBwdRows;
      __syncthreads();  // the previous query tile is consumed
      for (int64_t e = tid; e < kBwdRows * D; e += kBwdKeys) {
        const int64_t r = e / D, d = e % D;
        const int64_t gi = ((b * dims.Sq + i0 + r) * dims.Hq + h) * D + d;
        sQ[e] = r < nq ? to_float(q[gi]) : 0.0f;
        sdO[e] = r < nq ? to_float(dout[gi]) : 0.0f;
      }
      for (int r = tid; r < kBwdRows; r += kBwdKeys) {
        const int64_t li = (b * dims.Hq + h) * dims.Sq + i0 + r;
        sLse[r] = r < nq ? lse[li] * kLog2e : -INFINITY;
        sDelta[r] = r < nq ? delta[li] : 0.0f;
      }
      __syncthreads();

      float p[kBwdRows], ds[kBwdRows];
#pragma unroll
      for (int r = 0; r < kBwdRows; ++r) p[r] = ds[r] = 0.0f;
      for (int64_t d = 0; d < D; ++d) {
        const float kd = kr[d], vd = vr[d];
#pragma unroll
        for (int r = 0; r < kBwdRows; ++r) {
          p[r] += kd * sQ[r * D + d];
          ds[r] += vd * sdO[r * D + d];  // dP
        }
      }
#pragma unroll
      for (int r = 0; r < kBwdRows; ++r) {
        int64_t lo = 0, hi = 0;
        if (r < nq && tid < nk) dims.key_range(i0 + r, lo, hi);
        const bool visible = j >= lo && j < hi && sLse[r] != -INFINITY;
        p[r] = visible ? exp2f(p[r] * scale_log2 - sLse[r]) : 0.0f;
        ds[r] = p[r] * (ds[r] - sDelta[r]);
        sdS[r * ldS + tid] = ds[r];
      }
      for (int64_t d = 0; d < D; ++d) {
        float adv = dvr[d], adk = dkr[d];
#pragma unroll
        for (int r = 0; r < kBwdRows; ++r) {
          adv += p[r] * sdO[r * D + d];
          adk += ds[r] * sQ[r * D + d];
        }
        dvr[d] = adv;
        dkr[d] = adk;
      }
      __syncthreads();  // sdS complete
      // dQ[i0 + r, d] += scale * sum_j dS[r][j] K[j][d]
      for (int64_t e = tid; e < nq * D; e += kBwdKeys) {
        const int64_t r = e / D, d = e % D;
        float acc = 0.0f;
#pragma unroll
        for (int jj = 0; jj < kBwdKeys; ++jj) acc += sdS[r * ldS + jj] * sK[jj * ld + d];
        if (acc != 0.0f)
          atomicAdd(dq_acc + ((b * dims.Sq + i0 + r) * dims.Hq + h) * D + d, scale * acc);
      }
    }
  }

  __syncthreads();
  for (int64_t e = tid; e < nk * D; e += kBwdKeys) {
    const int64_t r = e / D, d = e % D;
    const int64_t g = ((b * dims.Sk + j0 + r) * dims.Hkv + hk) * D + d;
    dk[g] = from_float<T>(scale * sdK[r * ld + d]);
    dv[g] = from_float<T>(sdV[r * ld + d]);
  }
}

template <typename T>
__global__ void attention_convert_kernel(const float* __restrict__ src, T* __restrict__ dst,
                                         int64_t n) {
  for (int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; e < n;
       e += int64_t(gridDim.x) * blockDim.x)
    dst[e] = from_float<T>(src[e]);
}

// ---- merge --------------------------------------------------------------------------------------

// One warp per (b, s, h) row of out; lse [B,H,S].
template <typename T>
__global__ void attention_merge_kernel(T* __restrict__ out_a, float* __restrict__ lse_a,
                                       const T* __restrict__ out_b, const float* __restrict__ lse_b,
                                       int64_t B, int64_t S, int64_t H, int64_t D) {
  const int64_t row = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  const int lane = threadIdx.x & 31;
  if (row >= B * S * H) return;
  const int64_t h = row % H, s = row / H % S, b = row / (H * S);
  const int64_t li = (b * H + h) * S + s;
  const float a = lse_a[li], c = lse_b[li];
  const float m = fmaxf(a, c);
  float fa = 0.0f, fb = 0.0f, merged = -INFINITY;
  if (m != -INFINITY) {
    const float wa = expf(a - m), wb = expf(c - m), sum = wa + wb;
    fa = wa / sum;
    fb = wb / sum;
    merged = m + logf(sum);
  }
  T* oa = out_a + row * D;
  const T* ob = out_b + row * D;
  for (int64_t d = lane; d < D; d += 32)
    oa[d] = from_float<T>(fa * to_float(oa[d]) + fb * to_float(ob[d]));
  __syncwarp();
  if (lane == 0) lse_a[li] = merged;
}

// ---- launch helpers -----------------------------------------------------------------------------

Dims make_dims(const Tensor& q, const Tensor& k, const AttentionParams& p) {
  return Dims{q.size(0), q.size(1), k.size(1), q.size(2),  k.size(2),
              q.size(3), p.causal,  p.window,  p.q_offset, p.k_offset};
}

template <typename T, int ROWS>
void launch_forward(const Tensor& q, const Tensor& k, const Tensor& v, const Dims& dims,
                    float scale, Tensor& out, Tensor& lse, cudaStream_t stream) {
  const size_t bytes = size_t(2 * ROWS * (dims.D + 1) + 2 * kKeysPerTile * dims.D) * sizeof(float);
  allow_shared_memory(attention_forward_kernel<T, ROWS>, bytes, "attention_forward", q.size(3), "q",
                      q);
  const dim3 grid(unsigned((dims.Sq + ROWS - 1) / ROWS), unsigned(dims.Hq), unsigned(dims.B));
  attention_forward_kernel<T, ROWS><<<grid, ROWS, bytes, stream>>>(
      q.data_as<const T>(), k.data_as<const T>(), v.data_as<const T>(), out.data_as<T>(),
      lse.data_as<float>(), dims, scale * kLog2e);
  ORIGAMI_CUDA_LAUNCH_CHECK();
}

}  // namespace

void attention_forward(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionParams& p,
                       Tensor& out, Tensor& lse) {
  const Dims dims = make_dims(q, k, p);
  if (dims.B == 0 || dims.Sq == 0 || dims.Hq == 0) return;
  cudaStream_t stream = stream_for(q);
  dispatch_float(q.dtype(), "attention_forward", [&](auto tag) {
    using T = decltype(tag);
    // 64 query rows per block while their shared memory stays within reach of every sm_80+ GPU.
    if (dims.D <= 128)
      launch_forward<T, 64>(q, k, v, dims, p.scale, out, lse, stream);
    else
      launch_forward<T, 32>(q, k, v, dims, p.scale, out, lse, stream);
  });
}

void attention_backward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                        const Tensor& lse, const Tensor& dout, const AttentionParams& p, Tensor& dq,
                        Tensor& dk, Tensor& dv) {
  const Dims dims = make_dims(q, k, p);
  cudaStream_t stream = stream_for(q);
  const int64_t nrows = dims.B * dims.Hq * dims.Sq;
  // Workspace: delta [B,Hq,Sq] and the dq accumulator (dq's layout, f32). Freed on return; the
  // CUDA backend frees with cudaFree, which waits for the kernels below.
  Tensor delta = Tensor::empty({nrows}, DType::f32, q.device());
  Tensor dq_acc = Tensor::empty(q.shape(), DType::f32, q.device());
  if (dq_acc.numel() > 0)
    ORIGAMI_CUDA_CHECK(cudaMemsetAsync(dq_acc.data(), 0, dq_acc.nbytes(), stream));
  dispatch_float(q.dtype(), "attention_backward", [&](auto tag) {
    using T = decltype(tag);
    if (nrows > 0) {
      const int threads = 256;
      const unsigned blocks = unsigned((nrows * 32 + threads - 1) / threads);
      attention_delta_kernel<T><<<blocks, threads, 0, stream>>>(
          out.data_as<const T>(), dout.data_as<const T>(), delta.data_as<float>(), dims);
      ORIGAMI_CUDA_LAUNCH_CHECK();
    }
    if (dims.B > 0 && dims.Sk > 0 && dims.Hkv > 0) {
      const int64_t D = dims.D;
      const size_t bytes = size_t(4 * kBwdKeys * (D + 1) + 2 * kBwdRows * D +
                                  kBwdRows * (kBwdKeys + 1) + 2 * kBwdRows) *
                           sizeof(float);
      allow_shared_memory(attention_backward_kernel<T>, bytes, "attention_backward", q.size(3), "q",
                          q);
      const dim3 grid(unsigned((dims.Sk + kBwdKeys - 1) / kBwdKeys), unsigned(dims.Hkv),
                      unsigned(dims.B));
      attention_backward_kernel<T><<<grid, kBwdKeys, bytes, stream>>>(
          q.data_as<const T>(), k.data_as<const T>(), v.data_as<const T>(), dout.data_as<const T>(),
          lse.data_as<const float>(), delta.data_as<const float>(), dq_acc.data_as<float>(),
          dk.data_as<T>(), dv.data_as<T>(), dims, p.scale);
      ORIGAMI_CUDA_LAUNCH_CHECK();
    }
    if (dq.numel() > 0) {
      attention_convert_kernel<T><<<grid_for(dq.numel()), 256, 0, stream>>>(
          dq_acc.data_as<const float>(), dq.data_as<T>(), dq.numel());
      ORIGAMI_CUDA_LAUNCH_CHECK();
    }
  });
}

void attention_merge(Tensor& out_a, Tensor& lse_a, const Tensor& out_b, const Tensor& lse_b) {
  const int64_t B = out_a.size(0), S = out_a.size(1), H = out_a.size(2), D = out_a.size(3);
  const int64_t nrows = B * S * H;
  if (nrows == 0) return;
  cudaStream_t stream = stream_for(out_a);
  dispatch_float(out_a.dtype(), "attention_merge", [&](auto tag) {
    using T = decltype(tag);
    const int threads = 256;
    const unsigned blocks = unsigned((nrows * 32 + threads - 1) / threads);
    attention_merge_kernel<T><<<blocks, threads, 0, stream>>>(
        out_a.data_as<T>(), lse_a.data_as<float>(), out_b.data_as<const T>(),
        lse_b.data_as<const float>(), B, S, H, D);
    ORIGAMI_CUDA_LAUNCH_CHECK();
  });
}

}  // namespace origami::ops::cuda
