// Expert dispatchers (docs/design-facts.md, 'MoE dispatch'): the communication of an MoE layer
// whose experts live on other ranks. Megatron-style, the layer runs
//   route (the model) -> dispatch -> experts (the model: grouped GEMM) -> combine
// and its backward
//   combine_backward -> experts backward (the model) -> dispatch_backward.
// The dispatcher knows rows, counts and groups, nothing of the experts' math.
//
// Ranks: experts are split over ep (E/ep local experts each, contiguous), each expert's width
// over etp; tp-ep is the ETP x EP group, member m = etp rank + ETP * ep rank. Each rank brings
// its N token copies sorted by global expert ("permuted"), with their routing weights and the
// rows per expert.
//
// Source order: the rows this rank receives, in blocks by source member of tp-ep and, inside a
// block, by global expert (each source sorted its copies by expert).
//   all-to-all: a2a-v over ep (the rows for this rank's experts), then all-gather-v over etp (the
//     ETP peers hold the other slices of the same experts and need the same rows); blocks
//     [etp peer][ep peer][local expert].
//   all-gather: all-gather-v over tp-ep of every rank's rows, blocks [member][expert] (rows of
//     other ranks' experts are skipped and get zero outputs). Simpler; the same result.
// Expert order: the source rows of this rank's experts grouped by local expert (sources in order
// inside), what grouped GEMM takes; idx maps each expert-order row to its source row.
// Combine is the mirror of dispatch: source-order outputs (the ETP slices' partial outputs
// summed by a reduce-scatter over etp, or over tp-ep) go back to the source rows.
//
// Shapes: N = this rank's token copies, S = source-order rows, n = expert-order rows, El = E/ep,
// H = hidden; "compute" is the layer's dtype (f32 or bf16).
//   dispatch           xg [N,H] compute, pw [N] f32, rows per global expert [E] i64 host
//                        -> xe [n,H], pe [n] f32 (the front of the buffers handed in)
//   combine            ye [n,H] -> y [N,H] (each copy's expert output)
//   combine_backward   dy [N,H] -> dye [n,H]
//   dispatch_backward  dxe [n,H], dpe [n] f32 -> dxg [N,H], dpw [N] f32
// Every rank takes part in every exchange, with or without rows (N = 0 or n = 0 work). The calls
// are collective over ep, etp and tp-ep, and allocate no tensor memory: the scratch is handed in
// (DispatchBuffers), the per-layer state is the caller's (DispatchState, kept with the layer's
// activations from dispatch to dispatch_backward).
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "runtime/tensor.h"

namespace origami {

class Communicator;

// The groups of the expert layout (null: a group of one; tp_ep is required).
struct ExpertGroups {
  Communicator* ep = nullptr;     // experts split over it
  Communicator* etp = nullptr;    // each expert's width split over it
  Communicator* tp_ep = nullptr;  // ETP x EP: member m = etp rank + ETP * ep rank
};

// Scratch shared by every layer, Smax = most source-order rows (G * most copies per rank).
struct DispatchBuffers {
  Tensor src_x;     // [Smax,H] compute: source-order rows (backward: their input gradients)
  Tensor src_y;     // [Smax,H] compute: source-order outputs (backward: output gradients)
  Tensor src_p;     // [Smax] f32: source-order routing weights (backward: their gradients)
  Tensor recv;      // [Smax,H] compute: rows received over ep (all-to-all)
  Tensor recv_p;    // [Smax] f32: their routing weights
  Tensor idx_host;  // [Smax] i64 host: staging of idx
};

// One layer's exchange, computed once by dispatch and used by the three other calls.
struct DispatchState {
  Tensor table;                          // [G*E] i64 host: rows per (tp-ep member, global expert)
  Tensor idx;                            // [Smax] i64: source row of each expert-order row
  int64_t tokens = 0;                    // N
  int64_t source_rows = 0;               // S
  int64_t expert_rows = 0;               // n
  std::vector<int64_t> rows_per_expert;  // [El] expert-order rows of each local expert
  std::vector<int64_t> send, recv;       // [ep] rows to / from each ep peer (all-to-all)
  // Rows of each block of the gather: [etp] per ETP peer (all-to-all), [G] per member of tp-ep
  // (all-gather).
  std::vector<int64_t> gathered;
};

enum class DispatcherKind : uint8_t { all_to_all, all_gather };

class ExpertDispatcher {
 public:
  virtual ~ExpertDispatcher() = default;

  // xg [N,H], pw [N] f32: this rank's permuted copies and their routing weights; rows [E] i64
  // host: copies per global expert. Fills `state` and writes xe [n,H], pe [n] f32 (n =
  // state.expert_rows) to the front of xe [>=n,H] and pe [>=n].
  virtual void dispatch(const Tensor& xg, const Tensor& pw, const Tensor& rows,
                        DispatchState& state, Tensor& xe, Tensor& pe) = 0;
  // ye [n,H]: the experts' outputs in expert order -> y [N,H]: each copy's output (summed over
  // the ETP slices).
  virtual void combine(const Tensor& ye, const DispatchState& state, Tensor& y) = 0;
  // dy [N,H] = d loss / d y -> dye [n,H] = d loss / d ye.
  virtual void combine_backward(const Tensor& dy, const DispatchState& state, Tensor& dye) = 0;
  // dxe [n,H], dpe [n] f32 = d loss / d xe, pe -> dxg [N,H], dpw [N] f32 = d loss / d xg, pw
  // (summed over the ETP slices).
  virtual void dispatch_backward(const Tensor& dxe, const Tensor& dpe, const DispatchState& state,
                                 Tensor& dxg, Tensor& dpw) = 0;
};

// A dispatcher of `kind` for `num_experts` experts over rows of `hidden` columns. The groups and
// the buffers' storage must outlive it.
std::unique_ptr<ExpertDispatcher> make_expert_dispatcher(DispatcherKind kind,
                                                         const ExpertGroups& groups,
                                                         int64_t num_experts, int64_t hidden,
                                                         const DispatchBuffers& buffers);

}  // namespace origami
