// Next-token sampling from one row of logits, in the order Hugging Face's generate applies its
// processors: repetition penalty, then temperature, top-k and top-p (nucleus). OpenAI's presence
// and frequency penalties, when set, apply with the repetition penalty, over the generated tokens
// only (as vLLM does). Temperature 0 is
// greedy decoding (argmax, ties to the lowest id). Draws come from a seeded SplitMix64, so the
// same seed gives the same tokens on every platform.
//
// All scratch is sized for the vocabulary at construction: sampling a token allocates nothing.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "runtime/data.h"

namespace origami::serve {

struct SamplingParams {
  double temperature = 0.0;         // 0 = greedy; > 0 divides the logits
  int64_t top_k = 0;                // keep the k most likely tokens; 0 or -1 = off
  double top_p = 1.0;               // keep the smallest set with probability >= top_p; (0, 1]
  double repetition_penalty = 1.0;  // CTRL / transformers: > 1 discourages tokens already seen
  // OpenAI: logit -= presence * (count > 0) + frequency * count, over the generated tokens.
  double presence_penalty = 0.0;   // [-2, 2]
  double frequency_penalty = 0.0;  // [-2, 2]
  uint64_t seed = 0;

  // Throws origami::Error naming the first invalid field.
  void validate() const;
  bool greedy() const { return temperature == 0.0; }
};

class Sampler {
 public:
  Sampler(const SamplingParams& params, int64_t vocab);

  const SamplingParams& params() const { return params_; }
  int64_t vocab() const { return vocab_; }

  // The next token for `logits` [V] (f32). `history` (the prompt and the tokens generated so far)
  // is what the repetition penalty applies to; the presence and frequency penalties apply to its
  // last `generated` entries. Ids outside [0, V) in it are ignored.
  int64_t sample(std::span<const float> logits, std::span<const int64_t> history = {},
                 size_t generated = 0);

  // The distribution sample() draws from (penalised, tempered, truncated, renormalised): probs
  // [V] (written; zero outside the kept set). With temperature 0 it is one-hot on the argmax.
  void distribution(std::span<const float> logits, std::span<const int64_t> history,
                    std::vector<double>& probs, size_t generated = 0);

 private:
  // Fills order_[0, n) with the kept tokens, most likely first, and weight_[i] with the
  // unnormalised probability of order_[i]; returns n (>= 1) and their sum.
  int64_t prepare(std::span<const float> logits, std::span<const int64_t> history, size_t generated,
                  double& total);

  SamplingParams params_;
  int64_t vocab_;
  SplitMix64 rng_;
  std::vector<float> work_;     // [V] penalised logits
  std::vector<int32_t> order_;  // [V] token ids, sorted by logit (descending) over the prefix used
  std::vector<double> weight_;  // [V] exp((logit - max) / T) of order_[i]
  std::vector<int32_t> count_;  // [V] occurrences among the generated tokens (zero between calls)
};

}  // namespace origami::serve
