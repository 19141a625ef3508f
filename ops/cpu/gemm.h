// CPU GEMM through oneDNN matmul primitives. Arguments are checked by ops/gemm.cpp: every
// tensor is contiguous, on the CPU, with consistent shapes and dtypes.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>

#include "ops/gemm.h"

namespace origami::ops::cpu {

// a and b 2-D (or both 3-D, batched), out 2-D (3-D).
void gemm(const Tensor& a, const Tensor& b, Tensor& out, const GemmOptions& opt);

void grouped_gemm(const Tensor& x, const Tensor& w, std::span<const int64_t> group_rows,
                  Tensor& out, bool trans_w, float alpha, float beta, bool fixed_rows = false);

void grouped_gemm_backward(const Tensor& x, const Tensor& w, const Tensor& dout,
                           std::span<const int64_t> group_rows, Tensor& dx, Tensor& dw,
                           bool trans_w, bool accumulate_dx);

// The primitive cache, for tests and benchmarks: primitives held now, and created since start.
size_t cached_primitives();
uint64_t primitives_created();

}  // namespace origami::ops::cpu
