// CUDA packed linear layers (ops/qlinear.h) on the packed tensors of the CPU (layouts: top of
// ops/cpu/qlinear.cpp), copied to the device unchanged: w8a16 / w4a16 with x's own values.
//
// M <= 16 (decode): one block per tile of 16 rows of W, 8 warps splitting the 32-column blocks of
// K between them. A lane reads 16 bytes of an int8 block (4 rows x 4 columns) or 8 bytes of an int4
// block (2 rows x 8 columns: low and high nibbles), so a warp reads a block's 512 or 256 bytes in
// one coalesced load; levels are dequantized in registers and dotted with x in f32. Lanes holding
// the same rows are summed with shuffles, the warps through shared memory, and y written with beta.
// M > 16: W^ dequantized tile of rows by tile of rows into a buffer of x's dtype, each tile one
// ops::gemm (cuBLAS, f32 accumulation). bf16 W: ops::gemm on W itself, x rounded to bf16 first;
// f32 W likewise, x widened to f32.
#include "ops/cpu/qlinear.h"
#include "ops/cuda/common.cuh"
#include "ops/cuda/qlinear.h"
#include "ops/gemm.h"

namespace origami::ops::cuda {
namespace {

constexpr int kT = 16;  // rows per packed tile
constexpr int kB = 32;  // columns per block
constexpr int kWarps = 8;
constexpr int kThreads = 32 * kWarps;
constexpr int kThreadsElementwise = 256;

// Stream-ordered scratch memory, given back on the same stream when it goes out of scope.
struct StreamScratch {
  StreamScratch(size_t bytes, cudaStream_t s) : stream(s) {
    if (bytes > 0) ORIGAMI_CUDA_CHECK(cudaMallocAsync(reinterpret_cast<void**>(&data), bytes, s));
  }
  ~StreamScratch() {
    if (data) cudaFreeAsync(data, stream);
  }
  StreamScratch(const StreamScratch&) = delete;
  StreamScratch& operator=(const StreamScratch&) = delete;
  char* data = nullptr;
  cudaStream_t stream;
};

// y [M,N] for M <= MB rows of x [M,K] (columns read through perm when it is not null), one block
// per tile of W. data, scales, zeros: the packed tensors (scales, zeros [Nt][G][16]).
template <typename TX, typename TY, bool int4, int MB>
__global__ void __launch_bounds__(kThreads)
    gemv_kernel(const uint8_t* __restrict__ data, const float* __restrict__ scales,
                const float* __restrict__ zeros, const int32_t* __restrict__ perm,
                const TX* __restrict__ x, TY* __restrict__ y, int M, int64_t N, int64_t K,
                int64_t group, float beta) {
  constexpr int kRows = int4 ? 2 : 4;    // rows of the tile one lane holds
  constexpr int kCols = int4 ? 8 : 4;    // columns of a block one lane holds
  constexpr int kRowLanes = kT / kRows;  // lanes with different rows (the low lane bits)
  const int64_t t = blockIdx.x;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t G = K / group, nb = K / kB;
  const uint8_t* tile = data + t * (int4 ? kT / 2 : kT) * K;
  const int r0 = kRows * (lane % kRowLanes);
  int cols[kCols];
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int c = 4 * (lane / kRowLanes) + i;  // int8: chunk lane / 4; int4: vector lane / 8
    cols[i] = c;
    if constexpr (int4) cols[4 + i] = 16 + c;
  }
  float acc[MB][kRows];
#pragma unroll
  for (int m = 0; m < MB; ++m)
#pragma unroll
    for (int r = 0; r < kRows; ++r) acc[m][r] = 0.0f;

  for (int64_t b = warp; b < nb; b += kWarps) {
    // Byte e of the lane's piece is row r0 + e / 4, column cols[e % 4] (int4: the low nibble;
    // the high one is column cols[4 + e % 4]).
    float q[kRows][kCols];
    if constexpr (int4) {
      const uint2 v = *reinterpret_cast<const uint2*>(tile + b * kB * kT / 2 + lane * 8);
      const uint8_t* bytes = reinterpret_cast<const uint8_t*>(&v);
#pragma unroll
      for (int e = 0; e < 8; ++e) {
        q[e / 4][e % 4] = float(bytes[e] & 15);
        q[e / 4][4 + e % 4] = float(bytes[e] >> 4);
      }
    } else {
      const uint4 v = *reinterpret_cast<const uint4*>(tile + b * kB * kT + lane * 16);
      const uint8_t* bytes = reinterpret_cast<const uint8_t*>(&v);
#pragma unroll
      for (int e = 0; e < 16; ++e) q[e / 4][e % 4] = float(bytes[e]);
    }
    const int64_t g = b * kB / group;
    float s[kRows], z[kRows];
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
      s[r] = scales[(t * G + g) * kT + r0 + r];
      z[r] = zeros[(t * G + g) * kT + r0 + r];
    }
#pragma unroll
    for (int m = 0; m < MB; ++m) {
      if (m >= M) break;
      float xv[kCols];
#pragma unroll
      for (int c = 0; c < kCols; ++c) {
        const int64_t k = b * kB + cols[c];
        xv[c] = to_float(x[m * K + (perm ? perm[k] : k)]);
      }
#pragma unroll
      for (int r = 0; r < kRows; ++r) {
        float part = 0.0f;
#pragma unroll
        for (int c = 0; c < kCols; ++c) part += (q[r][c] - z[r]) * xv[c];
        acc[m][r] += s[r] * part;
      }
    }
  }

  __shared__ float partial[kWarps][MB][kT];
#pragma unroll
  for (int m = 0; m < MB; ++m)
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
      float v = acc[m][r];
      for (int o = kRowLanes; o < 32; o <<= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
      if (lane < kRowLanes) partial[warp][m][r0 + r] = v;
    }
  __syncthreads();
  for (int i = threadIdx.x; i < MB * kT; i += blockDim.x) {
    const int m = i / kT, r = i % kT;
    const int64_t n = t * kT + r;
    if (m >= M || n >= N) continue;
    float sum = 0.0f;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) sum += partial[w][m][r];
    TY* out = y + m * N + n;
    *out = from_float<TY>(beta != 0.0f ? sum + beta * to_float(*out) : sum);
  }
}

// out [n][K] (T) = W^ of rows [n0, n0 + n), packed column order.
template <typename T>
__global__ void dequantize_kernel(const uint8_t* __restrict__ data,
                                  const float* __restrict__ scales, const float* __restrict__ zeros,
                                  int64_t K, int64_t group, bool int4, int64_t n0, int64_t n,
                                  T* __restrict__ out) {
  const int64_t G = K / group;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n * K;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t row = n0 + i / K, j = i % K;
    const int64_t t = row / kT, r = row % kT, b = j / kB, c = j % kB;
    int level;
    if (int4) {
      const int64_t lo = c % 16;
      const uint8_t byte =
          data[t * (kT / 2) * K + b * kB * kT / 2 + ((lo / 4) * kT + r) * 4 + lo % 4];
      level = c < 16 ? byte & 15 : byte >> 4;
    } else {
      level = data[t * kT * K + b * kB * kT + ((c / 4) * kT + r) * 4 + c % 4];
    }
    const int64_t sz = (t * G + j / group) * kT + r;
    out[i] = from_float<T>(scales[sz] * (float(level) - zeros[sz]));
  }
}

// out [M][K] = x [M][K] with its columns in packed order (column j is x's column perm[j]).
template <typename T>
__global__ void gather_columns_kernel(const T* __restrict__ x, const int32_t* __restrict__ perm,
                                      int64_t M, int64_t K, T* __restrict__ out) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < M * K;
       i += int64_t(gridDim.x) * blockDim.x)
    out[i] = x[(i / K) * K + perm[i % K]];
}

// y[:, n0 : n0 + n] = part [M][n] + beta * y[:, ...]   (y [M][N])
template <typename TY>
__global__ void copy_columns_kernel(const float* __restrict__ part, int64_t M, int64_t n0,
                                    int64_t n, int64_t N, float beta, TY* __restrict__ y) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < M * n;
       i += int64_t(gridDim.x) * blockDim.x) {
    TY* out = y + (i / n) * N + n0 + i % n;
    *out = from_float<TY>(beta != 0.0f ? part[i] + beta * to_float(*out) : part[i]);
  }
}

template <typename TX, typename TY, bool int4>
void launch_gemv(const Tensor& x, const PackedLinear& w, Tensor& y, float beta, cudaStream_t s) {
  const int M = int(x.size(0));
  const int64_t N = w.rows, K = w.cols, tiles = (N + kT - 1) / kT;
  const int32_t* perm = w.perm.defined() ? w.perm.data_as<const int32_t>() : nullptr;
  auto go = [&](auto kernel) {
    kernel<<<unsigned(tiles), kThreads, 0, s>>>(
        w.data.data_as<const uint8_t>(), w.scales.data_as<const float>(),
        w.zeros.data_as<const float>(), perm, x.data_as<const TX>(), y.data_as<TY>(), M, N, K,
        w.group_size, beta);
  };
  if (M <= 1)
    go(gemv_kernel<TX, TY, int4, 1>);
  else if (M <= 4)
    go(gemv_kernel<TX, TY, int4, 4>);
  else
    go(gemv_kernel<TX, TY, int4, 16>);
  ORIGAMI_CUDA_LAUNCH_CHECK();
}

// M > 16, int formats: tiles of W^ in x's dtype through ops::gemm.
template <typename TX, typename TY>
void prefill_int(const Tensor& x, const PackedLinear& w, Tensor& y, float beta, cudaStream_t s) {
  const Device dev = x.device();
  const int64_t M = x.size(0), K = w.cols, N = w.rows;
  const bool int4 = w.format == WeightFormat::int4;
  Tensor xp = x;
  StreamScratch xbuf(w.perm.defined() ? size_t(M * K) * sizeof(TX) : 0, s);
  if (w.perm.defined()) {
    TX* dst = reinterpret_cast<TX*>(xbuf.data);
    gather_columns_kernel<TX><<<grid_for(M * K), kThreadsElementwise, 0, s>>>(
        x.data_as<const TX>(), w.perm.data_as<const int32_t>(), M, K, dst);
    ORIGAMI_CUDA_LAUNCH_CHECK();
    xp = Tensor::from_blob(dst, {M, K}, x.dtype(), dev);
  }
  // Rows per tile: about 256 MiB of W^, a whole number of packed tiles.
  const int64_t padded = (N + kT - 1) / kT * kT;
  const int64_t rows_per_tile = std::min(
      padded, std::max<int64_t>(kT, (int64_t(256) << 20) / (K * int64_t(sizeof(TX))) / kT * kT));
  StreamScratch tile(size_t(rows_per_tile * K) * sizeof(TX), s);                 // [rows][K]
  StreamScratch part(rows_per_tile < N ? size_t(M * rows_per_tile) * 4 : 0, s);  // [M][rows]
  for (int64_t n0 = 0; n0 < N; n0 += rows_per_tile) {
    const int64_t n = std::min(rows_per_tile, N - n0);
    dequantize_kernel<TX><<<grid_for(n * K), kThreadsElementwise, 0, s>>>(
        w.data.data_as<const uint8_t>(), w.scales.data_as<const float>(),
        w.zeros.data_as<const float>(), K, w.group_size, int4, n0, n,
        reinterpret_cast<TX*>(tile.data));
    ORIGAMI_CUDA_LAUNCH_CHECK();
    const Tensor wt = Tensor::from_blob(tile.data, {n, K}, x.dtype(), dev);
    GemmOptions g;
    g.trans_b = true;
    if (n == N) {  // one tile: straight into y
      g.beta = beta;
      ops::gemm(xp, wt, y, g);
      return;
    }
    Tensor pt = Tensor::from_blob(part.data, {M, n}, DType::f32, dev);
    ops::gemm(xp, wt, pt, g);
    copy_columns_kernel<TY><<<grid_for(M * n), kThreadsElementwise, 0, s>>>(
        reinterpret_cast<const float*>(part.data), M, n0, n, N, beta, y.data_as<TY>());
    ORIGAMI_CUDA_LAUNCH_CHECK();
  }
}

}  // namespace

void packed_linear(const Tensor& x, const PackedLinear& w, Tensor& y,
                   const PackedLinearOptions& opt) {
  const int64_t M = x.size(0);
  if (M == 0) return;
  cudaStream_t s = stream_for(y);
  if (w.format == WeightFormat::bf16 || w.format == WeightFormat::f32) {
    GemmOptions g;
    g.trans_b = true;
    g.beta = opt.beta;
    const DType wd = w.data.dtype();
    ops::gemm(x.dtype() == wd ? x : x.to(wd), w.data, y, g);
    return;
  }
  const bool int4 = w.format == WeightFormat::int4;
  dispatch_float(x.dtype(), "packed_linear", [&](auto xtag) {
    using TX = decltype(xtag);
    dispatch_float(y.dtype(), "packed_linear", [&](auto ytag) {
      using TY = decltype(ytag);
      if (M > cpu::kQDecodeMaxRows)
        prefill_int<TX, TY>(x, w, y, opt.beta, s);
      else if (int4)
        launch_gemv<TX, TY, true>(x, w, y, opt.beta, s);
      else
        launch_gemv<TX, TY, false>(x, w, y, opt.beta, s);
    });
  });
}

}  // namespace origami::ops::cuda
