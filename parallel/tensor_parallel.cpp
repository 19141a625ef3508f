#include "parallel/tensor_parallel.h"

#include "ops/gemm.h"
#include "parallel/communicator.h"

namespace origami {

void tp_gather_rows(Communicator& tp, const Tensor& local, Tensor& full) {
  tp.all_gather(local, full);
}

void tp_reduce_rows(Communicator& tp, bool sequence_parallel, Tensor& partial, Tensor& local) {
  if (sequence_parallel)
    tp.reduce_scatter(partial, local);
  else
    tp.all_reduce(partial);
}

void row_parallel_residual(Communicator* tp, bool sequence_parallel, const Tensor& in,
                           const Tensor& w, const Tensor& x, const Tensor& scratch, Tensor& out) {
  const ops::GemmOptions plus{false, true, 1.0f, 1.0f};  // out = in w^T + out
  if (!tp || tp->size() == 1) {
    out.copy_from(x);
    ops::gemm(in, w, out, plus);
    return;
  }
  const int64_t Tl = x.size(0);
  Tensor partial = scratch.narrow(0, 0, in.size(0));
  float beta = 0.0f;
  if (sequence_parallel) {
    partial.zero_();
    partial.narrow(0, int64_t(tp->rank()) * Tl, Tl).copy_from(x);
    beta = 1.0f;
  } else if (tp->rank() == 0) {
    partial.copy_from(x);
    beta = 1.0f;
  }
  ops::gemm(in, w, partial, {false, true, 1.0f, beta});
  if (sequence_parallel) {
    tp->reduce_scatter(partial, out);
  } else {
    tp->all_reduce(partial);
    out.copy_from(partial);
  }
}

}  // namespace origami
