#include "ops/embedding.h"

#include "ops/check.h"
#include "ops/cpu/pointwise.h"
#if ORIGAMI_CUDA
#include "ops/cuda/pointwise.h"
#endif

namespace origami::ops {

namespace {

// The vocabulary size ids are checked against: -1 when it is not known (a shard with an offset
// and no total given).
int64_t checked_vocab_size(const char* op, int64_t V, int64_t vocab_offset,
                           int64_t vocab_size_total) {
  ORIGAMI_CHECK(vocab_offset >= 0, op, ": vocab_offset must be >= 0, got ", vocab_offset);
  ORIGAMI_CHECK(vocab_size_total >= 0, op, ": vocab_size_total must be >= 0, got ",
                vocab_size_total);
  if (vocab_size_total == 0) return vocab_offset == 0 ? V : -1;
  ORIGAMI_CHECK(vocab_offset + V <= vocab_size_total, op, ": the shard [", vocab_offset, ", ",
                vocab_offset + V, ") does not fit in the vocabulary of ", vocab_size_total, " ids");
  return vocab_size_total;
}

}  // namespace

void embedding_forward(const Tensor& weight, const Tensor& ids, Tensor& out, int64_t vocab_offset,
                       int64_t vocab_size_total) {
  constexpr const char* op = "embedding_forward";
  check_dim(op, "weight", weight, 2);
  check_dim(op, "ids", ids, 1);
  check_dtype(op, "weight", weight, {DType::f32, DType::bf16});
  check_dtype(op, "ids", ids, {DType::i32, DType::i64});
  check_shape(op, "out", out, {ids.size(0), weight.size(1)});
  check_same_dtype(op, "weight", weight, "out", out);
  check_contiguous(op, "weight", weight);
  check_contiguous(op, "ids", ids);
  check_contiguous(op, "out", out);
  const Device dev = check_same_device(op, {{"weight", &weight}, {"ids", &ids}, {"out", &out}});
  const int64_t vocab = checked_vocab_size(op, weight.size(0), vocab_offset, vocab_size_total);
  if (out.numel() == 0) return;
  if (dev.is_cuda()) {
#if ORIGAMI_CUDA
    cuda::embedding_forward(weight, ids, out, vocab_offset);
#else
    fail_no_cuda(op);
#endif
    return;
  }
  cpu::embedding_check_ids(op, ids, vocab);
  cpu::embedding_forward(weight, ids, out, vocab_offset);
}

void embedding_backward(const Tensor& ids, const Tensor& dout, Tensor& dweight,
                        int64_t vocab_offset, int64_t vocab_size_total) {
  constexpr const char* op = "embedding_backward";
  check_dim(op, "ids", ids, 1);
  check_dim(op, "dout", dout, 2);
  check_dim(op, "dweight", dweight, 2);
  check_dtype(op, "ids", ids, {DType::i32, DType::i64});
  check_dtype(op, "dout", dout, {DType::f32, DType::bf16});
  check_dtype(op, "dweight", dweight, {DType::f32});
  check_shape(op, "dout", dout, {ids.size(0), dweight.size(1)});
  check_contiguous(op, "ids", ids);
  check_contiguous(op, "dout", dout);
  check_contiguous(op, "dweight", dweight);
  const Device dev = check_same_device(op, {{"ids", &ids}, {"dout", &dout}, {"dweight", &dweight}});
  const int64_t vocab = checked_vocab_size(op, dweight.size(0), vocab_offset, vocab_size_total);
  if (dout.numel() == 0 || dweight.numel() == 0) return;
  if (dev.is_cuda()) {
#if ORIGAMI_CUDA
    cuda::embedding_backward(ids, dout, dweight, vocab_offset);
#else
    fail_no_cuda(op);
#endif
    return;
  }
  cpu::embedding_check_ids(op, ids, vocab);
  cpu::embedding_backward(ids, dout, dweight, vocab_offset);
}

}  // namespace origami::ops
