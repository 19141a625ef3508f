// Argument checks and device dispatch of the cross-entropy steps.
#include "ops/cross_entropy.h"

#include "ops/check.h"
#include "ops/cpu/cross_entropy.h"
#if ORIGAMI_CUDA
#include "ops/cuda/cross_entropy.h"
#endif

namespace origami::ops {

namespace {

// logits-like tensors: [T, V] f32/bf16 whose rows have stride 1 (a vocabulary shard may be a
// narrow() view of a wider tensor).
void check_logits(const char* op, const char* name, const Tensor& t) {
  check_dim(op, name, t, 2);
  check_dtype(op, name, t, {DType::f32, DType::bf16});
  ORIGAMI_CHECK(t.size(1) <= 1 || t.stride(1) == 1, op, ": ", name,
                " must have rows of stride 1 along the vocabulary, got ", t.str(), " with strides ",
                shape_str(t.strides()));
}

// A per-row [T] f32 tensor.
void check_row_f32(const char* op, const char* name, const Tensor& t, int64_t T) {
  check_shape(op, name, t, {T});
  check_dtype(op, name, t, {DType::f32});
  check_contiguous(op, name, t);
}

void check_targets(const char* op, const Tensor& targets, int64_t T) {
  check_shape(op, "targets", targets, {T});
  check_dtype(op, "targets", targets, {DType::i32, DType::i64});
  check_contiguous(op, "targets", targets);
}

int64_t target_at(const Tensor& targets, int64_t t) {
  return targets.dtype() == DType::i32 ? int64_t(targets.data_as<int32_t>()[t])
                                       : targets.data_as<int64_t>()[t];
}

// On the CPU, where reading the targets costs nothing: every target is ignore_index or lies in
// [0, vocab) (vocab < 0: only the lower bound is known, as for one shard of the vocabulary).
void check_target_values(const char* op, const Tensor& targets, int64_t ignore_index, int64_t vocab,
                         const Tensor& logits) {
  if (!targets.device().is_cpu()) return;
  for (int64_t t = 0; t < targets.numel(); ++t) {
    const int64_t y = target_at(targets, t);
    if (y == ignore_index) continue;
    if (vocab >= 0) {
      ORIGAMI_CHECK(y >= 0 && y < vocab, op, ": targets[", t, "] = ", y,
                    " is outside the vocabulary [0, ", vocab, ") and is not ignore_index ",
                    ignore_index, " (logits ", logits.str(), ", targets ", targets.str(), ")");
    } else {
      ORIGAMI_CHECK(y >= 0, op, ": targets[", t, "] = ", y, " is negative and is not ignore_index ",
                    ignore_index, " (targets ", targets.str(), ")");
    }
  }
}

}  // namespace

void ce_row_max(const Tensor& logits, Tensor& row_max) {
  const char* op = "ce_row_max";
  check_logits(op, "logits", logits);
  check_row_f32(op, "row_max", row_max, logits.size(0));
  const Device d = check_same_device(op, {{"logits", &logits}, {"row_max", &row_max}});
  if (logits.numel() == 0 && logits.size(0) == 0) return;
  if (d.is_cpu()) return cpu::ce_row_max(logits, row_max);
#if ORIGAMI_CUDA
  cuda::ce_row_max(logits, row_max);
#else
  fail_no_cuda(op);
#endif
}

void ce_sum_exp(const Tensor& logits, const Tensor& row_max, Tensor& sum_exp) {
  const char* op = "ce_sum_exp";
  check_logits(op, "logits", logits);
  check_row_f32(op, "row_max", row_max, logits.size(0));
  check_row_f32(op, "sum_exp", sum_exp, logits.size(0));
  const Device d =
      check_same_device(op, {{"logits", &logits}, {"row_max", &row_max}, {"sum_exp", &sum_exp}});
  if (logits.size(0) == 0) return;
  if (d.is_cpu()) return cpu::ce_sum_exp(logits, row_max, sum_exp);
#if ORIGAMI_CUDA
  cuda::ce_sum_exp(logits, row_max, sum_exp);
#else
  fail_no_cuda(op);
#endif
}

void ce_target_logit(const Tensor& logits, const Tensor& targets, int64_t vocab_offset,
                     Tensor& target_logit) {
  const char* op = "ce_target_logit";
  check_logits(op, "logits", logits);
  check_targets(op, targets, logits.size(0));
  check_row_f32(op, "target_logit", target_logit, logits.size(0));
  ORIGAMI_CHECK(vocab_offset >= 0, op, ": vocab_offset must be >= 0, got ", vocab_offset);
  const Device d = check_same_device(
      op, {{"logits", &logits}, {"targets", &targets}, {"target_logit", &target_logit}});
  if (logits.size(0) == 0) return;
  if (d.is_cpu()) return cpu::ce_target_logit(logits, targets, vocab_offset, target_logit);
#if ORIGAMI_CUDA
  cuda::ce_target_logit(logits, targets, vocab_offset, target_logit);
#else
  fail_no_cuda(op);
#endif
}

void ce_finish(const Tensor& row_max, const Tensor& sum_exp, const Tensor& target_logit,
               const Tensor& targets, int64_t ignore_index, Tensor& loss, Tensor& lse) {
  const char* op = "ce_finish";
  check_dim(op, "row_max", row_max, 1);
  const int64_t T = row_max.size(0);
  check_row_f32(op, "row_max", row_max, T);
  check_row_f32(op, "sum_exp", sum_exp, T);
  check_row_f32(op, "target_logit", target_logit, T);
  check_targets(op, targets, T);
  check_row_f32(op, "loss", loss, T);
  check_row_f32(op, "lse", lse, T);
  const Device d = check_same_device(op, {{"row_max", &row_max},
                                          {"sum_exp", &sum_exp},
                                          {"target_logit", &target_logit},
                                          {"targets", &targets},
                                          {"loss", &loss},
                                          {"lse", &lse}});
  if (T == 0) return;
  check_target_values(op, targets, ignore_index, -1, Tensor());
  if (d.is_cpu())
    return cpu::ce_finish(row_max, sum_exp, target_logit, targets, ignore_index, loss, lse);
#if ORIGAMI_CUDA
  cuda::ce_finish(row_max, sum_exp, target_logit, targets, ignore_index, loss, lse);
#else
  fail_no_cuda(op);
#endif
}

void cross_entropy_forward(const Tensor& logits, const Tensor& targets, int64_t ignore_index,
                           Tensor& loss, Tensor& lse) {
  const char* op = "cross_entropy_forward";
  check_logits(op, "logits", logits);
  const int64_t T = logits.size(0);
  check_targets(op, targets, T);
  check_row_f32(op, "loss", loss, T);
  check_row_f32(op, "lse", lse, T);
  const Device d = check_same_device(
      op, {{"logits", &logits}, {"targets", &targets}, {"loss", &loss}, {"lse", &lse}});
  if (T == 0) return;
  ORIGAMI_CHECK(logits.size(1) > 0, op, ": logits must have a non-empty vocabulary, got ",
                logits.str());
  check_target_values(op, targets, ignore_index, logits.size(1), logits);
  if (d.is_cpu()) return cpu::cross_entropy_forward(logits, targets, ignore_index, loss, lse);
#if ORIGAMI_CUDA
  cuda::cross_entropy_forward(logits, targets, ignore_index, loss, lse);
#else
  fail_no_cuda(op);
#endif
}

void cross_entropy_backward(const Tensor& logits, const Tensor& targets, const Tensor& lse,
                            int64_t ignore_index, float grad_scale, Tensor& dlogits,
                            int64_t vocab_offset) {
  const char* op = "cross_entropy_backward";
  check_logits(op, "logits", logits);
  const int64_t T = logits.size(0);
  check_targets(op, targets, T);
  check_row_f32(op, "lse", lse, T);
  check_logits(op, "dlogits", dlogits);
  check_shape(op, "dlogits", dlogits, logits.shape());
  check_same_dtype(op, "logits", logits, "dlogits", dlogits);
  ORIGAMI_CHECK(vocab_offset >= 0, op, ": vocab_offset must be >= 0, got ", vocab_offset);
  const Device d = check_same_device(
      op, {{"logits", &logits}, {"targets", &targets}, {"lse", &lse}, {"dlogits", &dlogits}});
  if (logits.numel() == 0) return;
  check_target_values(op, targets, ignore_index, -1, Tensor());
  if (d.is_cpu())
    return cpu::cross_entropy_backward(logits, targets, lse, ignore_index, grad_scale, dlogits,
                                       vocab_offset);
#if ORIGAMI_CUDA
  cuda::cross_entropy_backward(logits, targets, lse, ignore_index, grad_scale, dlogits,
                               vocab_offset);
#else
  fail_no_cuda(op);
#endif
}

}  // namespace origami::ops
