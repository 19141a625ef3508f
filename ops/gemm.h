// Matrix products: GEMM, batched GEMM and grouped GEMM (one weight per expert, variable rows).
// CPU: oneDNN matmul primitives (AMX for bf16 where the CPU has it), cached per shape.
// CUDA: cuBLAS / cuBLASLt. Inputs f32 or bf16 (both the same), fp32 accumulation; out f32, or
// the input dtype. All tensors contiguous.
#pragma once

#include <cstdint>
#include <span>

#include "runtime/tensor.h"

namespace origami::ops {

struct GemmOptions {
  bool trans_a = false;  // use a^T: a is stored [K,M]
  bool trans_b = false;  // use b^T: b is stored [N,K]
  float alpha = 1.0f;
  float beta = 0.0f;  // out = alpha * op(a) @ op(b) + beta * out
};

// out [M,N] = alpha * op(a) [M,K] @ op(b) [K,N] + beta * out.
// Backward of out = a @ b:  da = dout @ b^T (trans_b),  db = a^T @ dout (trans_a).
void gemm(const Tensor& a, const Tensor& b, Tensor& out, const GemmOptions& opt = {});

// The same for every batch: a [B,M,K] (or [B,K,M]), b [B,K,N] (or [B,N,K]), out [B,M,N].
void batched_gemm(const Tensor& a, const Tensor& b, Tensor& out, const GemmOptions& opt = {});

// Grouped GEMM for experts. x [T,K] holds the rows of group g contiguously, groups in order,
// group_rows[g] rows each (sum = T; zero-row groups allowed). w [G,K,N], or [G,N,K] with trans_w.
//   out[rows of g] [T_g,N] = alpha * x[rows of g] @ op(w[g]) + beta * out[rows of g]
// fixed_rows (CPU): one GEMM primitive per row count instead of one for any count, so that a
// row's result does not depend on how many rows its group has (batch-invariant inference; the
// runtime-sized primitive blocks rows differently for different counts). CUDA ignores it.
void grouped_gemm(const Tensor& x, const Tensor& w, std::span<const int64_t> group_rows,
                  Tensor& out, bool trans_w = false, float alpha = 1.0f, float beta = 0.0f,
                  bool fixed_rows = false);

// Backward of grouped_gemm(x, w, out, trans_w) with alpha 1:
//   dx[rows of g] = dout_g @ op(w[g])^T               (written, or added with accumulate)
//   dw[g]        += x_g^T @ dout_g  (or its transpose when trans_w), zero-row groups untouched
// dx or dw may be undefined to skip that gradient. dout [T,N] has x's dtype; dx [T,K] and dw
// (w's shape) are f32 or x's dtype (e.g. bf16 activations with fp32 weight gradients).
void grouped_gemm_backward(const Tensor& x, const Tensor& w, const Tensor& dout,
                           std::span<const int64_t> group_rows, Tensor& dx, Tensor& dw,
                           bool trans_w = false, bool accumulate_dx = false);

}  // namespace origami::ops
