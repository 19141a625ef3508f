#include "models/evaluate.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "runtime/error.h"

namespace origami::models {

PerplexityResult perplexity(Generator& gen, std::span<const int64_t> ids, int64_t window,
                            int64_t max_windows,
                            const std::function<void(int64_t, int64_t)>& progress) {
  const GeneratorOptions& o = gen.options();
  ORIGAMI_CHECK(o.all_logits, "perplexity: the generator must return every token's logits");
  ORIGAMI_CHECK(window >= 2 && window <= o.max_seq && window <= o.max_step_tokens,
                "perplexity: windows of ", window, " tokens; the generator takes 2 to ",
                std::min(o.max_seq, o.max_step_tokens));
  int64_t windows = int64_t(ids.size()) / window;
  if (max_windows > 0) windows = std::min(windows, max_windows);
  ORIGAMI_CHECK(windows >= 1, "perplexity: the text has ", ids.size(),
                " tokens, fewer than one window of ", window);
  const int64_t per_step = std::max<int64_t>(1, std::min(o.max_batch, o.max_step_tokens / window));
  const int64_t V = gen.spec().vocab;
  PerplexityResult r;
  double sum = 0;
  for (int64_t w0 = 0; w0 < windows; w0 += per_step) {
    const int64_t n = std::min(per_step, windows - w0);
    gen.reset();
    std::vector<SequenceChunk> chunks;
    for (int64_t i = 0; i < n; ++i)
      chunks.push_back({i, ids.subspan(size_t((w0 + i) * window), size_t(window))});
    const Tensor logits = gen.step(chunks);  // [n*window, V] f32 host, in chunk order
    const float* lg = logits.data_as<float>();
    for (int64_t i = 0; i < n; ++i)
      for (int64_t t = 0; t + 1 < window; ++t) {
        const float* row = lg + (i * window + t) * V;
        const int64_t next = ids[size_t((w0 + i) * window + t + 1)];
        double mx = row[0];
        for (int64_t v = 1; v < V; ++v) mx = std::max(mx, double(row[v]));
        double z = 0;
        for (int64_t v = 0; v < V; ++v) z += std::exp(double(row[v]) - mx);
        sum += mx + std::log(z) - double(row[next]);
        ++r.tokens;
      }
    r.windows += n;
    if (progress) progress(r.windows, windows);
  }
  r.nll = sum / double(r.tokens);
  r.perplexity = std::exp(r.nll);
  return r;
}

}  // namespace origami::models
