// CPU kernels of the attention family (ops/attention.h). Arguments are checked by the dispatch in
// ops/attention.cpp: contiguous CPU tensors, f32 or bf16, shapes consistent, p.scale resolved.
#pragma once

#include <string>
#include <vector>

#include "ops/attention.h"
#include "runtime/tensor.h"

namespace origami::ops::cpu {

void attention_forward(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionParams& p,
                       Tensor& out, Tensor& lse);
void attention_backward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                        const Tensor& lse, const Tensor& dout, const AttentionParams& p, Tensor& dq,
                        Tensor& dk, Tensor& dv);
void attention_merge(Tensor& out_a, Tensor& lse_a, const Tensor& out_b, const Tensor& lse_b);

// The instruction set the CPU kernels were selected for at run time: "avx512", "avx2" or
// "generic" (benchmarks print it next to their figures).
const char* attention_isa();
// Every instruction set this CPU can run the kernels with, best first (tests run each of them).
std::vector<std::string> attention_isas();
// Uses the kernels of instruction set `name` (one of attention_isas()) until called with nullptr,
// which restores the automatic choice. Not thread-safe against concurrent attention calls.
void attention_force_isa(const char* name);

}  // namespace origami::ops::cpu
