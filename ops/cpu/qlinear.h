// CPU side of the packed linear layers (ops/qlinear.h): packing (the layouts are documented in
// ops/cpu/qlinear.cpp), dequantization and the kernels. Arguments are checked by ops/qlinear.cpp.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "ops/qlinear.h"
#include "runtime/tensor.h"

namespace origami::ops::cpu {

// Rows per packed tile of the int formats (one AVX-512 vector of outputs) and columns per block of
// activation quantization (and per group at the least).
constexpr int64_t kQTileRows = 16;
constexpr int64_t kQBlock = 32;
// Kernels for decode take up to this many rows of x; more rows go through ops::gemm.
constexpr int64_t kQDecodeMaxRows = 16;
constexpr size_t kQMaxGroup = kMaxPackedGroup;

// Bytes of one packed tile of 16 rows.
constexpr int64_t qtile_bytes(bool int4, int64_t K) {
  return (int4 ? kQTileRows / 2 : kQTileRows) * K;
}

// The packed tensors on the CPU, from checked arguments (ops::pack_quantized): `perm` is the packed
// order of W's columns (packed column j is column perm[j]; empty when the order is W's own).
PackedLinear pack_int(int bits, int64_t rows, int64_t cols, int64_t groups, const int32_t* q,
                      const float* scales, const int32_t* zeros, const std::vector<int32_t>& perm);

// W^ [N,K] f32 in W's own column order (w on the CPU).
Tensor dequantize(const PackedLinear& w);
// dst [rows][ld] f32 = W^ of the first `rows` rows of tile t (int formats), packed column order.
void dequantize_tile(const PackedLinear& w, int64_t t, int64_t rows, float* dst, int64_t ld);

// y [M,N] = x [M,K] @ W^T + beta * y, arguments checked, all on the CPU.
void packed_linear(const Tensor& x, const PackedLinear& w, Tensor& y,
                   const PackedLinearOptions& opt);
void packed_linear_group(std::span<const Tensor* const> x, std::span<const PackedLinear* const> w,
                         std::span<Tensor* const> y, const PackedLinearOptions& opt);

// The instruction set of the decode kernels: "avx512_bf16_vnni", "avx512", "avx2" or "generic".
const char* qlinear_isa();
// Every instruction set this CPU can run them with, best first (tests run each).
std::vector<std::string> qlinear_isas();
// Uses instruction set `name` (one of qlinear_isas()) until called with nullptr, which restores the
// automatic choice. Not thread-safe against concurrent packed_linear calls.
void qlinear_force_isa(const char* name);

}  // namespace origami::ops::cpu
