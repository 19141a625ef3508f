// Internal: strided, dtype-converting copies on a CUDA device (runtime/cuda/copy_kernels.cu).
#pragma once

#include "runtime/tensor.h"

namespace origami::detail {

// dst and src on the same CUDA device, equal shapes, any strides and float/int dtypes.
void cuda_copy_convert(const Tensor& dst, const Tensor& src);
void cuda_fill(const Tensor& dst, double value);

}  // namespace origami::detail
