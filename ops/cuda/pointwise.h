// CUDA kernels of the row-wise op families (embedding, RMSNorm, RoPE, SwiGLU, softmax, top-k),
// callable from host C++ code. Arguments are checked by the dispatchers in ops/*.cpp: every
// tensor here is a contiguous tensor on one CUDA device, of the documented shape and dtype.
// Kernels run on the current stream of that device and do not synchronise it.
#pragma once

#include <cstdint>

#include "runtime/tensor.h"

namespace origami::ops::cuda {

// Ids outside this shard (including invalid ids, which are not checked on the device) give zero
// rows / no gradient.
void embedding_forward(const Tensor& weight, const Tensor& ids, Tensor& out, int64_t vocab_offset);
void embedding_backward(const Tensor& ids, const Tensor& dout, Tensor& dweight,
                        int64_t vocab_offset);

void rmsnorm_forward(const Tensor& x, const Tensor& w, float eps, Tensor& out, Tensor& rstd);
void rmsnorm_backward(const Tensor& x, const Tensor& w, const Tensor& rstd, const Tensor& dout,
                      Tensor& dx, Tensor& dw);

void rope_apply(const Tensor& x, const Tensor& positions, const Tensor& inv_freq, Tensor& out,
                bool inverse);

void swiglu_forward(const Tensor& gate, const Tensor& up, Tensor& out, const Tensor& row_scale);
void swiglu_backward(const Tensor& gate, const Tensor& up, const Tensor& dout, Tensor& dgate,
                     Tensor& dup, const Tensor& row_scale, Tensor& drow_scale);

void softmax_forward(const Tensor& x, Tensor& out);
void softmax_backward(const Tensor& y, const Tensor& dy, Tensor& dx);
void topk(const Tensor& x, int64_t k, Tensor& values, Tensor& indices);
// Indices outside [0, C) are skipped.
void topk_backward(const Tensor& indices, const Tensor& dvalues, Tensor& dx);

}  // namespace origami::ops::cuda
