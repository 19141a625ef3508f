// CUDA kernels of ops/cross_entropy.h (arguments checked by ops/cross_entropy.cpp). They run on the
// current stream of the tensors' device and do not synchronise.
#pragma once

#include <cstdint>

#include "runtime/tensor.h"

namespace origami::ops::cuda {

void ce_row_max(const Tensor& logits, Tensor& row_max);
void ce_sum_exp(const Tensor& logits, const Tensor& row_max, Tensor& sum_exp);
void ce_target_logit(const Tensor& logits, const Tensor& targets, int64_t vocab_offset,
                     Tensor& target_logit);
void ce_finish(const Tensor& row_max, const Tensor& sum_exp, const Tensor& target_logit,
               const Tensor& targets, int64_t ignore_index, Tensor& loss, Tensor& lse);
void cross_entropy_forward(const Tensor& logits, const Tensor& targets, int64_t ignore_index,
                           Tensor& loss, Tensor& lse);
void cross_entropy_backward(const Tensor& logits, const Tensor& targets, const Tensor& lse,
                            int64_t ignore_index, float grad_scale, Tensor& dlogits,
                            int64_t vocab_offset);

}  // namespace origami::ops::cuda
