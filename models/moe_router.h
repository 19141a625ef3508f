// The MoE router of one layer on one rank, computed on the host: the dispatcher needs the
// per-expert token counts on the host anyway (grouped GEMM takes them as a host array, and the
// all-to-all splits are host integers), and [T,E] is small. Softmax top-k (renormalised over the
// k chosen when norm_topk_prob) or sigmoid scores with an optional selection-only expert bias;
// optional capacity (drop the lowest-probability token copies of an over-full expert, optionally
// pad every expert to capacity); z-loss and the statistics of the load-balancing loss.
//
// Every buffer is a CPU tensor handed in by the caller (carved from the host arena), so routing
// allocates nothing.
#pragma once

#include <cstdint>

#include "models/model_spec.h"
#include "runtime/tensor.h"

namespace origami::models {

struct RouterBuffers {
  // Inputs
  Tensor logits;  // [T,E] f32, h @ Wr^T
  // Forward results
  Tensor probs;        // [T,E] f32: softmax(logits), or sigmoid(logits) for the sigmoid router
  Tensor aux_probs;    // [T,E] f32: the probabilities the balancing loss uses (softmax probs, or
                       //            the sigmoid scores normalised over the experts)
  Tensor lse;          // [T] f32 logsumexp(logits_t) (z-loss)
  Tensor selected;     // [T,k] i64 expert of each token copy
  Tensor top_value;    // [T,k] f32 probs[t, selected] (before renormalisation)
  Tensor weight;       // [T,k] f32 routing weight of each copy
  Tensor slot;         // [T,k] i64 row of the copy in the permuted order; -1 when dropped
  Tensor counts;       // [E] i64 copies chosen per expert (before any dropping)
  Tensor group_rows;   // [E] i64 rows per expert in the permuted order (after drop / pad)
  Tensor perm_token;   // [Nmax] i64 token of each permuted row (stable: by expert, then token)
  Tensor perm_weight;  // [Nmax] f32 routing weight of each permuted row (0 for padding)
  Tensor scratch;      // [T*k] i64 (capacity selection)
  int64_t rows = 0;    // N, rows used in the permuted order
};

// Rows the permuted order may need: T*k dropless; with padding, E*capacity.
int64_t router_capacity(const MoeSpec& moe, int64_t tokens);  // 0 when dropless
int64_t router_max_rows(const MoeSpec& moe, int64_t tokens);

// Fills every forward result from b.logits. expert_bias [E] (or nullptr) shifts selection only.
// Returns the z-loss term z_loss_coeff * mean_t(lse_t^2) (0 when the coefficient is 0). The mean
// divides by z_tokens (0: `tokens`): when a batch is split over ranks, pass the whole batch's
// token count and the ranks' terms add up to the whole batch's.
double route_forward(const MoeSpec& moe, int64_t tokens, const float* expert_bias, RouterBuffers& b,
                     int64_t z_tokens = 0);

// dlogits [T,E] (written) from: drow [N] = d loss / d perm_weight (the row scale of every
// permuted row), aux_grad [E] = d loss / d aux_probs[t,e] (the same for every token; nullptr for
// none), and the z-loss (mean over z_tokens as in route_forward).
void route_backward(const MoeSpec& moe, int64_t tokens, const RouterBuffers& b, const float* drow,
                    const double* aux_grad, float* dlogits, int64_t z_tokens = 0);

}  // namespace origami::models
