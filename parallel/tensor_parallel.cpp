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
                           const Tensor& w, const Tensor& x, const Tensor& scratch, Tensor& out,
                           const ops::PackedLinear* packed, const ops::PackedLinearOptions* opt) {
  // y = in w^T + beta * y
  const auto product = [&](Tensor& y, float beta) {
    if (packed == nullptr) return ops::gemm(in, w, y, {false, true, 1.0f, beta});
    ops::PackedLinearOptions po = opt ? *opt : ops::PackedLinearOptions{};
    po.beta = beta;
    ops::packed_linear(in, *packed, y, po);
  };
  if (!tp || tp->size() == 1) {
    out.copy_from(x);
    product(out, 1.0f);
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
  product(partial, beta);
  if (sequence_parallel) {
    tp->reduce_scatter(partial, out);
  } else {
    tp->all_reduce(partial);
    out.copy_from(partial);
  }
}

}  // namespace origami
