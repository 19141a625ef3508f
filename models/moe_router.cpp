#include "models/moe_router.h"

#include <algorithm>
#include <cmath>

#include "runtime/error.h"

namespace origami::models {

int64_t router_capacity(const MoeSpec& moe, int64_t tokens) {
  if (moe.capacity_factor <= 0) return 0;
  const double c =
      double(tokens) * double(moe.top_k) / double(moe.num_experts) * moe.capacity_factor;
  return std::max<int64_t>(1, int64_t(std::ceil(c - 1e-9)));
}

int64_t router_max_rows(const MoeSpec& moe, int64_t tokens) {
  const int64_t dropless = tokens * moe.top_k;
  if (moe.capacity_factor > 0 && moe.pad_to_capacity)
    return std::max(dropless, moe.num_experts * router_capacity(moe, tokens));
  return dropless;
}

double route_forward(const MoeSpec& moe, int64_t T, const float* expert_bias, RouterBuffers& b,
                     int64_t z_tokens) {
  const double z_den = double(z_tokens > 0 ? z_tokens : T);
  const int64_t E = moe.num_experts, k = moe.top_k;
  const float* logits = b.logits.data_as<float>();
  float* probs = b.probs.data_as<float>();
  float* aux_probs = b.aux_probs.data_as<float>();
  float* lse = b.lse.data_as<float>();
  int64_t* selected = b.selected.data_as<int64_t>();
  float* top_value = b.top_value.data_as<float>();
  float* weight = b.weight.data_as<float>();
  int64_t* slot = b.slot.data_as<int64_t>();
  int64_t* counts = b.counts.data_as<int64_t>();
  int64_t* group_rows = b.group_rows.data_as<int64_t>();
  int64_t* perm_token = b.perm_token.data_as<int64_t>();
  float* perm_weight = b.perm_weight.data_as<float>();
  const bool sigmoid = moe.router == RouterKind::sigmoid;

  for (int64_t e = 0; e < E; ++e) counts[e] = 0;
  double zsum = 0.0;
  for (int64_t t = 0; t < T; ++t) {
    const float* l = logits + t * E;
    float* p = probs + t * E;
    float* q = aux_probs + t * E;
    // Probabilities in double, stored in f32 (as torch's softmax(dtype=float)).
    double mx = l[0];
    for (int64_t e = 1; e < E; ++e) mx = std::max(mx, double(l[e]));
    double se = 0.0;
    for (int64_t e = 0; e < E; ++e) se += std::exp(double(l[e]) - mx);
    const double lse_t = mx + std::log(se);
    lse[t] = float(lse_t);
    zsum += lse_t * lse_t;
    if (!sigmoid) {
      for (int64_t e = 0; e < E; ++e) p[e] = q[e] = float(std::exp(double(l[e]) - lse_t));
    } else {
      double ss = 0.0;
      for (int64_t e = 0; e < E; ++e) {
        p[e] = float(1.0 / (1.0 + std::exp(-double(l[e]))));
        ss += p[e];
      }
      for (int64_t e = 0; e < E; ++e) q[e] = float(p[e] / ss);
    }
    // Top-k by score (+ bias for selection), descending; ties to the lower expert id.
    int64_t* sel = selected + t * k;
    auto score = [&](int64_t e) { return p[e] + (expert_bias ? expert_bias[e] : 0.0f); };
    for (int64_t j = 0; j < k; ++j) {
      int64_t best = -1;
      for (int64_t e = 0; e < E; ++e) {
        bool taken = false;
        for (int64_t i = 0; i < j; ++i) taken = taken || sel[i] == e;
        if (!taken && (best < 0 || score(e) > score(best))) best = e;
      }
      sel[j] = best;
      top_value[t * k + j] = p[best];
      counts[best] += 1;
    }
    float sum = 0.0f;
    for (int64_t j = 0; j < k; ++j) sum += top_value[t * k + j];
    for (int64_t j = 0; j < k; ++j)
      weight[t * k + j] = moe.norm_topk_prob ? top_value[t * k + j] / sum : top_value[t * k + j];
  }

  // Capacity: mark the copies an over-full expert drops (lowest probability first; ties drop the
  // later token), as slot = -1; kept copies get slot 0 for now.
  const int64_t cap = router_capacity(moe, T);
  for (int64_t i = 0; i < T * k; ++i) slot[i] = 0;
  if (cap > 0) {
    int64_t* cand = b.scratch.data_as<int64_t>();
    for (int64_t e = 0; e < E; ++e) {
      if (counts[e] <= cap) continue;
      int64_t n = 0;
      for (int64_t i = 0; i < T * k; ++i)
        if (selected[i] == e) cand[n++] = i;
      std::sort(cand, cand + n, [&](int64_t a, int64_t c) {
        const float pa = probs[(a / k) * E + e], pc = probs[(c / k) * E + e];
        return pa != pc ? pa > pc : a < c;
      });
      for (int64_t i = cap; i < n; ++i) slot[cand[i]] = -1;
    }
  }

  // Permutation: counting sort of the kept copies by expert, token order inside an expert.
  int64_t n_rows = 0;
  for (int64_t e = 0; e < E; ++e) group_rows[e] = 0;
  for (int64_t i = 0; i < T * k; ++i)
    if (slot[i] >= 0) group_rows[selected[i]] += 1;
  if (cap > 0 && moe.pad_to_capacity)
    for (int64_t e = 0; e < E; ++e) group_rows[e] = cap;
  int64_t* next = b.scratch.data_as<int64_t>();  // [E] write position per expert
  for (int64_t e = 0; e < E; ++e) {
    next[e] = n_rows;
    n_rows += group_rows[e];
  }
  ORIGAMI_CHECK(n_rows <= b.perm_token.numel(), "moe router: ", n_rows,
                " permuted rows do not fit the planned ", b.perm_token.numel());
  for (int64_t i = 0; i < n_rows; ++i) {  // padding rows: token 0, weight 0 (add exact zeros)
    perm_token[i] = 0;
    perm_weight[i] = 0.0f;
  }
  for (int64_t i = 0; i < T * k; ++i) {
    if (slot[i] < 0) continue;
    const int64_t r = next[selected[i]]++;
    slot[i] = r;
    perm_token[r] = i / k;
    perm_weight[r] = weight[i];
  }
  b.rows = n_rows;
  return moe.z_loss_coeff > 0 ? moe.z_loss_coeff * zsum / z_den : 0.0;
}

void route_backward(const MoeSpec& moe, int64_t T, const RouterBuffers& b, const float* drow,
                    const double* aux_grad, float* dlogits, int64_t z_tokens) {
  const double z_den = double(z_tokens > 0 ? z_tokens : T);
  const int64_t E = moe.num_experts, k = moe.top_k;
  const float* logits = b.logits.data_as<float>();
  const float* probs = b.probs.data_as<float>();
  const float* aux_probs = b.aux_probs.data_as<float>();
  const float* lse = b.lse.data_as<float>();
  const int64_t* selected = b.selected.data_as<int64_t>();
  const float* top_value = b.top_value.data_as<float>();
  const float* weight = b.weight.data_as<float>();
  const int64_t* slot = b.slot.data_as<int64_t>();
  const bool sigmoid = moe.router == RouterKind::sigmoid;

  for (int64_t t = 0; t < T; ++t) {
    const float* p = probs + t * E;
    const float* q = aux_probs + t * E;
    float* dl = dlogits + t * E;
    // d loss / d p[e] (p = softmax probs or sigmoid scores), in double.
    double dp[1024];
    ORIGAMI_CHECK(E <= 1024, "moe router: at most 1024 experts, got ", E);
    for (int64_t e = 0; e < E; ++e) dp[e] = 0.0;
    // Routing weights: w_j = v_j / S (S = sum of the k values) or w_j = v_j.
    double dw[64];
    ORIGAMI_CHECK(k <= 64, "moe router: top_k at most 64, got ", k);
    double dot = 0.0, sum = 0.0;
    for (int64_t j = 0; j < k; ++j) {
      const int64_t s = slot[t * k + j];
      dw[j] = s >= 0 ? double(drow[s]) : 0.0;
      dot += dw[j] * weight[t * k + j];
      sum += top_value[t * k + j];
    }
    for (int64_t j = 0; j < k; ++j) {
      const double dv = moe.norm_topk_prob ? (dw[j] - dot) / sum : dw[j];
      dp[selected[t * k + j]] += dv;
    }
    // Balancing loss through aux_probs: softmax probs directly, or q = p / sum(p) (sigmoid).
    if (aux_grad) {
      if (!sigmoid) {
        for (int64_t e = 0; e < E; ++e) dp[e] += aux_grad[e];
      } else {
        double ps = 0.0, gq = 0.0;
        for (int64_t e = 0; e < E; ++e) {
          ps += p[e];
          gq += aux_grad[e] * q[e];
        }
        for (int64_t e = 0; e < E; ++e) dp[e] += (aux_grad[e] - gq) / ps;
      }
    }
    // Through the nonlinearity to the logits.
    if (!sigmoid) {
      double s = 0.0;
      for (int64_t e = 0; e < E; ++e) s += dp[e] * p[e];
      for (int64_t e = 0; e < E; ++e) dl[e] = float(p[e] * (dp[e] - s));
    } else {
      for (int64_t e = 0; e < E; ++e) dl[e] = float(dp[e] * p[e] * (1.0 - p[e]));
    }
    // z-loss: coeff * mean_t lse_t^2  ->  2 coeff lse_t / T * softmax(logits_t).
    if (moe.z_loss_coeff > 0) {
      const double c = 2.0 * moe.z_loss_coeff * lse[t] / z_den;
      for (int64_t e = 0; e < E; ++e)
        dl[e] += float(c * std::exp(double(logits[t * E + e]) - double(lse[t])));
    }
  }
}

}  // namespace origami::models
