// CUDA kernels of ops/index.h (arguments checked by ops/index.cpp; at most 2^31 - 2 rows). They
// run on the current stream of the tensors' device.
#pragma once

#include "runtime/tensor.h"

namespace origami::ops::cuda {

void gather_rows(const Tensor& src, const Tensor& idx, Tensor& out);
void scatter_add_rows(const Tensor& src, const Tensor& idx, Tensor& out, const Tensor& weight);
void scatter_add_rows_weight_grad(const Tensor& src, const Tensor& idx, const Tensor& dout,
                                  Tensor& dweight);

}  // namespace origami::ops::cuda
