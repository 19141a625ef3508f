// Linear layers with weights packed once at load for fast inference, above all decode (a few rows
// a step, where reading the weights is the whole cost):
//
//   y [M,N] = x [M,K] @ W^T + beta * y          W [N = rows, K = cols], one of four formats:
//   f32   W itself, f32 [N,K] row-major (a view: f32 inference runs its decode through the
//         same small-batch kernels as bf16, instead of one oneDNN call per linear)
//   bf16  W itself, bf16 [N,K] row-major (the layout oneDNN uses too, so it is held once)
//   int8  levels q in 0..255        W[n,k] = scale(n, g) * (q[n,k] - zero(n, g)), g = k / group
//   int4  levels q in 0..15 (also used for 2- and 3-bit levels)
//
// Groups run along K (input columns), `group_size` columns each (a multiple of 32 dividing K). A
// GPTQ checkpoint with act-order has a column order (`g_idx` not monotone): the packed columns are
// W's columns permuted so that every group is contiguous, and the kernel gathers x's columns by
// the same permutation (`perm`) first.
//
// Kernels (CPU): rows in blocks of up to 16 stream W once per block (AVX-512 / AVX-512-BF16 / VNNI
// variants picked at run time, a baseline elsewhere); f32 dots x as it is (f32, or bf16 widened),
// bf16 rounds x to bf16, int8 and int4 quantize
// x to int8 per block of 32 columns (symmetric, scale max|x|/127, as llama.cpp's q8_0) unless
// `exact` asks for f32 activations (slower, exact up to f32 rounding: golden tests). Larger M
// dequantizes W in tiles and runs the tiles through ops::gemm (oneDNN), except batch-invariant
// calls, which run the small-batch kernels on every row at any M (f32 and bf16 W go to ops::gemm
// as they are). The work is split over N across the OpenMP threads. CUDA: w8a16 / w4a16 kernels on
// the same packed data; f32 and bf16 W through ops::gemm.
//
// Numerics, exactly: a block of x is 32 consecutive packed columns (W's columns permuted by `perm`)
// of one row; in f32 arithmetic sx = max|x| / 127, xq = round-half-to-even(x * (127 / max|x|))
// (0 when max|x| is 0), and y = sum over blocks of scale * (sum q*xq - zero * sum xq) * sx, the
// integer part exact. M > 16 (and CUDA at any M) uses x's own values, with W^ rounded to x's dtype
// where a GEMM multiplies it (M > 16); `exact` changes nothing there. Packed layouts: the top of
// ops/cpu/qlinear.cpp.
#pragma once

#include <cstdint>
#include <span>
#include <string>

#include "runtime/tensor.h"

namespace origami::ops {

enum class WeightFormat { bf16, int8, int4, f32 };
const char* weight_format_name(WeightFormat f);  // "bf16", "int8", "int4", "f32"
// "bf16", "int8", "int4", "f32" -> the format; throws origami::Error listing the names otherwise.
WeightFormat parse_weight_format(const std::string& name);

struct PackedLinear {
  WeightFormat format = WeightFormat::bf16;
  int64_t rows = 0;        // N (outputs)
  int64_t cols = 0;        // K (inputs)
  int64_t group_size = 0;  // int formats: columns per scale and zero (divides K); f32, bf16: 0
  int bits = 16;           // bits of the levels (int4 holds 2, 3 or 4; f32 32)
  // The packed tensors, in the kernel's own order (ops/cpu/qlinear.cpp documents it). f32, bf16:
  // data is W [N,K], possibly a view of a bigger buffer (nothing copied). int: data u8 [Nt, 16K]
  // (int8) or [Nt, 8K] (int4), Nt = ceil(N/16) tiles of 16 rows; scales and zeros f32 [Nt,G,16];
  // perm i32 [K] (packed column j is W's column perm[j]) or undefined.
  Tensor data, scales, zeros, perm;

  bool defined() const { return data.defined(); }
  Device device() const { return data.device(); }
  int64_t bytes() const;  // of data, scales, zeros and perm: what a pass over W reads
};

// W [N,K] bf16 as it is (a view; no copy). f32 W is rounded into a new bf16 tensor.
PackedLinear pack_bf16(const Tensor& w);
// W [N,K] f32 as it is (a view; no copy).
PackedLinear pack_f32(const Tensor& w);

// Packs quantized levels (the models::QuantizedLinear layout, any 1 <= bits <= 8):
//   q       [N*K] levels in 0..2^bits-1, row-major in W's own column order
//   scales  [G*N] f32, group g of row n at g*N + n;  zeros [G*N] the level of w = 0 (a level
//           too), same order
//   g_idx   [K] the group of each column; every group must hold K/G columns (a multiple of 32);
//           null: column k is in group k / (K/G)
// bits <= 4 -> int4, else int8. The packed column order is group 0's columns, then group 1's, ...,
// each group in W's order (perm undefined when that is W's own order). K must be a multiple of 32.
// The result lives on `device`. Errors name the bad argument.
PackedLinear pack_quantized(int bits, int64_t rows, int64_t cols, const int32_t* q,
                            const float* scales, const int32_t* zeros, int64_t groups,
                            const int32_t* g_idx, Device device = Device::cpu());

// W^ [N,K] f32 in W's own column order: scale * (q - zero), or the f32 / bf16 values.
Tensor dequantize(const PackedLinear& w);

struct PackedLinearOptions {
  float beta = 0.0f;   // y = x W^T + beta * y
  bool exact = false;  // int formats: f32 activations (not int8 blocks)
  // Every row computed by the small-batch kernels whatever M (all rows in one parallel region),
  // so that a row's result does not depend on how many rows share the call (batch-invariant
  // inference; without it larger M takes the dequantize + oneDNN path, rounded differently).
  bool batch_invariant = false;
};

// y [M,N] = x [M,K] @ W^T + beta * y. x f32 or bf16 contiguous; y f32 or x's dtype; all on w's
// device. Errors name the tensor whose shape, dtype or device is wrong.
void packed_linear(const Tensor& x, const PackedLinear& w, Tensor& y,
                   const PackedLinearOptions& opt = {});

constexpr size_t kMaxPackedGroup = 8;  // linears in one packed_linear_group call

// y_i = x @ W_i^T + beta * y_i for 1 to kMaxPackedGroup linears that read the same x (q, k and v;
// gate and up), each checked as packed_linear checks it. The results are packed_linear's on each,
// bit for bit. A CPU decode call (M <= 16, or any M batch-invariant; one format, K and column
// order; not `exact` int) rounds
// or quantizes x once and runs every member in one parallel region with the threads sharing all the
// members' rows: a small member (k, v) no longer runs on one thread while the others wait, and the
// threads are woken once. Other calls run the members one after the other.
void packed_linear_group(const Tensor& x, std::span<const PackedLinear* const> w,
                         std::span<Tensor* const> y, const PackedLinearOptions& opt = {});
// The same for linears that each read their own x_i [M_i,K] (the experts of an MoE layer, each on
// its tokens' rows); one region needs every M_i in 1..16 (any M_i batch-invariant) and the x's of
// one dtype.
void packed_linear_group(std::span<const Tensor* const> x, std::span<const PackedLinear* const> w,
                         std::span<Tensor* const> y, const PackedLinearOptions& opt = {});

}  // namespace origami::ops
