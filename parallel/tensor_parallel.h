// Tensor-parallel region boundaries on the rows of the residual stream (Megatron-style; see
// docs/parallel.md, 'How each dimension works').
//
// Without sequence parallelism every TP rank holds all T rows and a row-parallel output [T,H] is
// summed over TP by an all-reduce. With it, rank t holds rows [t*T/tp, (t+1)*T/tp) (Tl = T/tp
// rows): a TP region starts with an all-gather of the rows and ends with a reduce-scatter (in
// backward: the reverse). The calls are collective over the TP group.
#pragma once

#include "ops/qlinear.h"
#include "runtime/tensor.h"

namespace origami {

class Communicator;

// full [T,H] = every TP rank's local [Tl,H], in rank order.
void tp_gather_rows(Communicator& tp, const Tensor& local, Tensor& full);

// partial [T,H]: this rank's share of a row-parallel output. Sequence parallel: this rank's rows
// [Tl,H] of the sum land in `local`; otherwise `partial` itself becomes the sum (local unused).
void tp_reduce_rows(Communicator& tp, bool sequence_parallel, Tensor& partial, Tensor& local);

// out [Tl,H] = x [Tl,H] + in [T,K] @ w [H,K]^T summed over TP (w: this rank's K columns; tp null
// or of size 1: no TP, Tl = T). The residual is folded into the reduction: each rank adds its own
// rows of x (without SP, rank 0 adds all of them), so the sum arrives complete. scratch [>=T,H]:
// this rank's share is summed in its first T rows (unused without TP; may be undefined then).
// With `packed` (inference), the product runs on the packed weight (ops/qlinear.h) with `opt`
// (its beta is set here) instead of on w.
void row_parallel_residual(Communicator* tp, bool sequence_parallel, const Tensor& in,
                           const Tensor& w, const Tensor& x, const Tensor& scratch, Tensor& out,
                           const ops::PackedLinear* packed = nullptr,
                           const ops::PackedLinearOptions* opt = nullptr);

}  // namespace origami
