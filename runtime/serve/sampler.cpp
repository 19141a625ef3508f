#include "runtime/serve/sampler.h"

#include <algorithm>
#include <cmath>

#include "runtime/error.h"

namespace origami::serve {

void SamplingParams::validate() const {
  ORIGAMI_CHECK(std::isfinite(temperature) && temperature >= 0.0,
                "sampling: temperature must be >= 0 (0 = greedy), got ", temperature);
  ORIGAMI_CHECK(top_k >= -1, "sampling: top_k must be > 0, or 0 / -1 for off, got ", top_k);
  ORIGAMI_CHECK(std::isfinite(top_p) && top_p > 0.0 && top_p <= 1.0,
                "sampling: top_p must be in (0, 1] (1 = off), got ", top_p);
  ORIGAMI_CHECK(std::isfinite(repetition_penalty) && repetition_penalty > 0.0,
                "sampling: repetition_penalty must be > 0 (1 = off), got ", repetition_penalty);
  ORIGAMI_CHECK(std::isfinite(presence_penalty) && std::abs(presence_penalty) <= 2.0,
                "sampling: presence_penalty must be in [-2, 2], got ", presence_penalty);
  ORIGAMI_CHECK(std::isfinite(frequency_penalty) && std::abs(frequency_penalty) <= 2.0,
                "sampling: frequency_penalty must be in [-2, 2], got ", frequency_penalty);
}

Sampler::Sampler(const SamplingParams& params, int64_t vocab)
    : params_(params),
      vocab_(vocab),
      rng_(params.seed),
      work_(size_t(vocab)),
      order_(size_t(vocab)),
      weight_(size_t(vocab)),
      count_(size_t(vocab), 0) {
  params_.validate();
  ORIGAMI_CHECK(vocab >= 1, "sampler: vocabulary must have at least one token, got ", vocab);
}

int64_t Sampler::prepare(std::span<const float> logits, std::span<const int64_t> history,
                         size_t generated, double& total) {
  ORIGAMI_CHECK(int64_t(logits.size()) == vocab_, "sampler: logits have ", logits.size(),
                " entries, the vocabulary has ", vocab_);
  const int64_t V = vocab_;
  float* w = work_.data();
  std::copy(logits.begin(), logits.end(), w);

  // Repetition penalty, once per distinct id (as transformers' gather / scatter): a logit still
  // equal to its input has not been penalised yet (a zero logit is a fixed point either way).
  const double rp = params_.repetition_penalty;
  if (rp != 1.0) {
    for (int64_t id : history) {
      if (id < 0 || id >= V || w[id] != logits[size_t(id)]) continue;
      w[id] = float(w[id] < 0 ? double(w[id]) * rp : double(w[id]) / rp);
    }
  }

  // Presence and frequency penalties over the generated tokens (counted, applied once per id,
  // then the counts are cleared for the next call).
  const double pp = params_.presence_penalty, fp = params_.frequency_penalty;
  if ((pp != 0.0 || fp != 0.0) && generated > 0) {
    const std::span<const int64_t> out = history.last(std::min(generated, history.size()));
    for (int64_t id : out)
      if (id >= 0 && id < V) ++count_[size_t(id)];
    for (int64_t id : out) {
      if (id < 0 || id >= V || count_[size_t(id)] == 0) continue;
      w[id] = float(double(w[id]) - pp - fp * double(count_[size_t(id)]));
      count_[size_t(id)] = 0;
    }
  }

  // Greedy: the argmax, ties to the lowest id.
  if (params_.greedy()) {
    int64_t best = 0;
    for (int64_t i = 1; i < V; ++i)
      if (w[i] > w[best]) best = i;
    order_[0] = int32_t(best);
    weight_[0] = 1.0;
    total = 1.0;
    return 1;
  }

  // Candidates, most likely first (ties to the lower id). Sorting is needed only to truncate.
  for (int64_t i = 0; i < V; ++i) order_[size_t(i)] = int32_t(i);
  const auto before = [w](int32_t a, int32_t b) { return w[a] > w[b] || (w[a] == w[b] && a < b); };
  const bool top_k = params_.top_k > 0 && params_.top_k < V;
  const bool top_p = params_.top_p < 1.0;
  int64_t n = V;
  if (top_k) {
    n = params_.top_k;
    std::partial_sort(order_.begin(), order_.begin() + n, order_.end(), before);
  } else if (top_p) {
    std::sort(order_.begin(), order_.end(), before);
  }

  // Weights exp((w - max) / T) in double; the maximum is the first candidate once sorted.
  float mx = w[order_[0]];
  if (!top_k && !top_p)
    for (int64_t i = 1; i < V; ++i) mx = std::max(mx, w[i]);
  const double inv_t = 1.0 / params_.temperature;
  total = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    weight_[size_t(i)] = std::exp((double(w[order_[size_t(i)]]) - double(mx)) * inv_t);
    total += weight_[size_t(i)];
  }

  // Nucleus: keep a token while the probability of the tokens before it is below top_p (the
  // smallest prefix whose mass reaches top_p; at least one token), as transformers'
  // TopPLogitsWarper.
  if (top_p) {
    const double limit = params_.top_p * total;
    double before_mass = 0.0;
    int64_t kept = 0;
    while (kept < n && (kept == 0 || before_mass < limit)) before_mass += weight_[size_t(kept++)];
    n = kept;
    total = before_mass;
  }
  return n;
}

int64_t Sampler::sample(std::span<const float> logits, std::span<const int64_t> history,
                        size_t generated) {
  double total = 0.0;
  const int64_t n = prepare(logits, history, generated, total);
  if (params_.greedy()) return order_[0];
  // Inverse CDF over the kept candidates, in their sorted order.
  const double u = rng_.uniform() * total;
  double cum = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    cum += weight_[size_t(i)];
    if (u < cum) return order_[size_t(i)];
  }
  return order_[size_t(n - 1)];  // u rounded up to the total
}

void Sampler::distribution(std::span<const float> logits, std::span<const int64_t> history,
                           std::vector<double>& probs, size_t generated) {
  double total = 0.0;
  const int64_t n = prepare(logits, history, generated, total);
  probs.assign(size_t(vocab_), 0.0);
  for (int64_t i = 0; i < n; ++i) probs[size_t(order_[size_t(i)])] = weight_[size_t(i)] / total;
}

}  // namespace origami::serve
