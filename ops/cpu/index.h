// CPU kernels of ops/index.h. Arguments are checked by ops/index.cpp (contiguous, shapes, dtypes,
// index range).
#pragma once

#include "runtime/tensor.h"

namespace origami::ops::cpu {

void gather_rows(const Tensor& src, const Tensor& idx, Tensor& out);
void scatter_add_rows(const Tensor& src, const Tensor& idx, Tensor& out, const Tensor& weight);
void scatter_add_rows_weight_grad(const Tensor& src, const Tensor& idx, const Tensor& dout,
                                  Tensor& dweight);

}  // namespace origami::ops::cpu
