// CUDA packed linear layers (ops/qlinear.h) on the packed tensors of ops/cpu/qlinear.cpp, copied to
// the device as they are. Arguments are checked by ops/qlinear.cpp: x, y and every packed tensor on
// one CUDA device, shapes and dtypes consistent.
#pragma once

#include "ops/qlinear.h"
#include "runtime/tensor.h"

namespace origami::ops::cuda {

// M <= 16: one GEMV-like kernel, levels dequantized in registers, f32 accumulation, x's own values
// (f32 or bf16; `exact` changes nothing). Larger M: W^ in tiles of rows, in x's dtype, through
// ops::gemm (cuBLAS). bf16 W: ops::gemm directly for large M.
void packed_linear(const Tensor& x, const PackedLinear& w, Tensor& y,
                   const PackedLinearOptions& opt);

}  // namespace origami::ops::cuda
