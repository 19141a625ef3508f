// A calibration hook on the decoder's linear layers: an observer set with
// Decoder::set_linear_observer (or Generator::set_linear_observer) is handed the input rows of
// every linear layer as the forward runs, before the layer's GEMM. GPTQ (models/quantize.h)
// accumulates each layer's Hessian 2 X X^T / N from them. With no observer set the forward does
// nothing more than test a null pointer.
//
// What each call sees, for layer l of this rank (names are canonical ParameterLayout names):
//   q_proj, k_proj, v_proj   one call for the three  x = rmsnorm(x_l)                   [T, H]
//   o_proj                                           x = attention output               [T, Hq*D]
//   gate_proj, up_proj       one call for the two    x = rmsnorm(x_mid)                 [T, H]
//   down_proj                                        x = silu(gate) * up                [T, F]
//   MoE experts (stacked [E, ...] weights), one call per expert with tokens, expert = the local
//   expert index (dim 0 of the stacked weight):
//     gate/up  x = the rows routed to the expert     [n_e, H]
//     down     x = silu(gate) * up * routing weight  [n_e, Fe]  (the GEMM's input as computed:
//              the routing weight scales the rows before the down projection)
//   shared expert gate/up, down as the dense MLP (down's rows scaled by the shared-expert gate)
// The router and the shared-expert gate are not observed. Rows are this rank's (with tensor
// parallelism the columns of q/k/v/gate/up outputs, hence of o/down inputs, are this rank's
// slice). x lives on the decoder's device in its compute dtype and is valid only during the call.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "runtime/tensor.h"

namespace origami::models {

class LinearObserver {
 public:
  virtual ~LinearObserver() = default;
  // x [rows, in]: the input rows of the linears `weight_names` (several when they share one
  // input); expert: the local expert index for stacked expert weights, else -1.
  virtual void observe(const std::vector<std::string>& weight_names, int64_t expert,
                       const Tensor& x) = 0;
};

}  // namespace origami::models
