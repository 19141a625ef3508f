// Perplexity of a token stream under a model (the generator's forward, so packed and quantized
// weights are measured as they run): non-overlapping windows of `window` tokens, each predicting
// its tokens 1..window-1 from the ones before (the first token of a window is context only).
//   nll = mean over predicted tokens of (logsumexp(logits) - logit[next token]),  ppl = exp(nll)
// in double from the f32 logits.
#pragma once

#include <cstdint>
#include <functional>
#include <span>

#include "models/generator.h"

namespace origami::models {

struct PerplexityResult {
  double nll = 0;         // mean negative log-likelihood (nats per token)
  double perplexity = 0;  // exp(nll)
  int64_t tokens = 0;     // predicted tokens
  int64_t windows = 0;
};

// The generator needs all_logits, max_batch >= 1 and max_step_tokens >= window (windows run
// max_step_tokens / window at a time, at most max_batch). max_windows 0 = every whole window.
// progress(done, total) after each batch of windows.
PerplexityResult perplexity(Generator& gen, std::span<const int64_t> ids, int64_t window,
                            int64_t max_windows = 0,
                            const std::function<void(int64_t, int64_t)>& progress = {});

}  // namespace origami::models
