// CUDA kernels of ops/optimizer.h (arguments checked by ops/optimizer.cpp). They run on the
// current stream of the tensors' device; sum_squares waits for its result.
#pragma once

#include "ops/optimizer.h"

namespace origami::ops::cuda {

// param: undefined when there is no separate parameter copy to write.
void adamw_step(Tensor& master, const Tensor& grad, Tensor& m, Tensor& v, const AdamWParams& p,
                const Tensor& param, float grad_scale);
double sum_squares(const Tensor& g);
void scale_(Tensor& g, float s);
void axpy_(Tensor& y, const Tensor& x, float alpha);

}  // namespace origami::ops::cuda
