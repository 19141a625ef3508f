// The serving engine (runtime/serve/engine.h) over a real model (models::DecoderRunner): requests
// that join a running batch at different steps, with chunked prefill, produce exactly the tokens
// the generator produces for each prompt alone (greedy, and seeded sampling); a KV cache too
// small for the load preempts and recomputes sequences and still gives the same tokens; aborting
// frees a request's blocks at once; requests that can never run are refused; prompt
// log-probabilities (echo) equal the log-softmax of a whole-prompt forward pass.
#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <string>
#include <vector>

#include "models/decoder.h"
#include "models/generator.h"
#include "models/serving_runner.h"
#include "runtime/serve/engine.h"
#include "tests/support/test_support.h"

namespace origami {
namespace {

using serve::Engine;
using serve::FinishReason;
using serve::RequestParams;

models::ModelSpec spec() {
  models::ModelSpec s;
  s.family = models::Family::mixtral;  // MoE routing inside the batch, sliding window
  s.vocab = 80;
  s.hidden = 32;
  s.layers = 3;
  s.heads = 4;
  s.kv_heads = 2;
  s.head_dim = 8;
  s.ffn = 48;
  s.rope.head_dim = 8;
  s.rope.theta = 10000.0;
  s.rms_eps = 1e-5;
  s.max_seq_len = 96;
  s.sliding_window = 20;
  s.moe.num_experts = 4;
  s.moe.top_k = 2;
  s.moe.expert_ffn = 24;
  s.moe.norm_topk_prob = true;
  return s;
}

std::vector<int64_t> prompt(int i) {
  std::vector<int64_t> p;
  for (int t = 0; t < 3 + 7 * i; ++t) p.push_back((11 * i + 17 * t + 3) % 80);
  return p;
}

struct Output {
  std::vector<int64_t> tokens;
  FinishReason reason = FinishReason::none;
};

class EngineTest : public ::testing::Test {
 protected:
  void SetUp() override {
    whole_ = models::ParameterBuffer(models::ParameterLayout(spec()), DType::f32);
    whole_.init_random(5, 0.3);
  }
  // What the generator gives for prompt i alone.
  Output reference(int i, int64_t max_tokens, const serve::SamplingParams& sp) {
    models::GeneratorOptions go;
    go.max_seq = 96;
    go.device = test::test_device();
    models::Generator g(spec(), whole_, go);
    models::GenerationConfig gc;
    gc.max_new_tokens = max_tokens;
    gc.sampling = sp;
    const models::GenerationResult r = g.generate({prompt(i)}, gc)[0];
    return {r.tokens, r.reason == models::StopReason::max_new_tokens ? FinishReason::length
                                                                     : FinishReason::stop};
  }
  std::unique_ptr<models::Decoder> decoder(int64_t kv_blocks, int64_t step_tokens,
                                           int64_t logit_rows = 0) {
    models::DecoderOptions o;
    o.seq = step_tokens;
    o.device = test::test_device();
    o.inference = true;
    o.optimizer_state = false;
    o.infer.kv_blocks = kv_blocks;
    o.infer.kv_block_size = 4;
    o.infer.max_sequences = 4;
    o.infer.max_context = 96;
    o.infer.max_logit_rows = logit_rows;
    auto d = std::make_unique<models::Decoder>(spec(), o);
    d->params().copy_from(whole_);  // the same (whole) layout, converted to the device
    return d;
  }
  int64_t add(Engine& e, int i, int64_t max_tokens, const serve::SamplingParams& sp) {
    RequestParams p;
    p.prompt = prompt(i);
    p.max_tokens = max_tokens;
    p.sampling = sp;
    return e.add_request(p, [this, i](const serve::TokenEvent& ev) {
      if (ev.token >= 0) out_[i].tokens.push_back(ev.token);
      out_[i].reason = ev.reason;
    });
  }
  models::ParameterBuffer whole_;
  std::map<int, Output> out_;
};

TEST_F(EngineTest, ContinuousBatchingEqualsEachPromptAlone) {
  ORIGAMI_REQUIRE_TEST_DEVICE();
  for (double temperature : {0.0, 0.9}) {
    out_.clear();
    serve::SamplingParams sp;
    sp.temperature = temperature;
    sp.seed = 42;
    auto d = decoder(96, 16);
    models::DecoderRunner runner(*d);
    Engine e(runner);
    for (int i = 0; i < 3; ++i) add(e, i, 6 + i, sp);
    e.step();
    e.step();
    for (int i = 3; i < 6; ++i) add(e, i, 6 + i, sp);
    while (e.has_work()) e.step();
    for (int i = 0; i < 6; ++i) {
      const Output want = reference(i, 6 + i, sp);
      EXPECT_EQ(out_[i].tokens, want.tokens) << "request " << i << " temperature " << temperature;
      EXPECT_EQ(out_[i].reason, FinishReason::length);
    }
    EXPECT_EQ(e.stats().kv_blocks_used, 0);
    EXPECT_EQ(e.stats().preemptions, 0);
  }
}

TEST_F(EngineTest, SmallKvCachePreemptsAndRecomputesWithTheSameTokens) {
  ORIGAMI_REQUIRE_TEST_DEVICE();
  serve::SamplingParams sp;  // greedy
  auto d = decoder(14, 16);  // 56 tokens of cache for four sequences of up to 48
  models::DecoderRunner runner(*d);
  Engine e(runner);
  for (int i = 1; i < 6; ++i) add(e, i, 12, sp);
  int64_t steps = 0;
  while (e.has_work()) {
    e.step();
    ASSERT_LT(++steps, 1000) << "the engine does not make progress";
  }
  EXPECT_GT(e.stats().preemptions, 0);
  for (int i = 1; i < 6; ++i)
    EXPECT_EQ(out_[i].tokens, reference(i, 12, sp).tokens) << "request " << i;
  EXPECT_EQ(e.stats().kv_blocks_used, 0);
}

// Two requests with the same long prefix (a shared system prompt), the second after the first
// finished: the second reuses the first's cached blocks and still gives its solo tokens.
TEST_F(EngineTest, PrefixCacheReusesSharedPromptBlocks) {
  ORIGAMI_REQUIRE_TEST_DEVICE();
  serve::SamplingParams sp;
  auto d = decoder(96, 16);
  models::DecoderRunner runner(*d);
  Engine e(runner);
  const std::vector<int64_t> a = prompt(5), b = [&] {
    std::vector<int64_t> p = prompt(5);
    p.resize(30);  // the first 30 tokens: 7 full blocks of 4 shared with `a`
    p.push_back(7);
    p.push_back(9);
    return p;
  }();
  std::map<int, std::vector<int64_t>> got;
  for (int i = 0; i < 2; ++i) {
    RequestParams p;
    p.prompt = i == 0 ? a : b;
    p.max_tokens = 8;
    e.add_request(p, [&got, i](const serve::TokenEvent& ev) {
      if (ev.token >= 0) got[i].push_back(ev.token);
    });
    while (e.has_work()) e.step();
  }
  EXPECT_EQ(e.stats().prefix_hit_tokens, 28);  // 7 blocks of 4
  models::GeneratorOptions go;
  go.max_seq = 96;
  go.device = test::test_device();
  models::Generator g(spec(), whole_, go);
  models::GenerationConfig gc;
  gc.max_new_tokens = 8;
  EXPECT_EQ(got[0], g.generate({a}, gc)[0].tokens);
  EXPECT_EQ(got[1], g.generate({b}, gc)[0].tokens);
  EXPECT_EQ(e.stats().kv_blocks_used, 0);
}

TEST_F(EngineTest, AbortFreesBlocksAtOnce) {
  ORIGAMI_REQUIRE_TEST_DEVICE();
  serve::SamplingParams sp;
  auto d = decoder(96, 16);
  models::DecoderRunner runner(*d);
  Engine e(runner);
  const int64_t a = add(e, 2, 30, sp);
  add(e, 3, 30, sp);
  for (int s = 0; s < 4; ++s) e.step();
  const int64_t used = e.stats().kv_blocks_used;
  e.abort(a);
  EXPECT_EQ(out_[2].reason, FinishReason::abort);
  EXPECT_LT(e.stats().kv_blocks_used, used);
  EXPECT_EQ(e.stats().running, 1);
  while (e.has_work()) e.step();
  EXPECT_EQ(e.stats().kv_blocks_used, 0);
  EXPECT_EQ(out_[3].tokens, reference(3, 30, sp).tokens);
  e.abort(a);  // finished ids are ignored
}

TEST_F(EngineTest, RefusesRequestsThatCanNeverRun) {
  ORIGAMI_REQUIRE_TEST_DEVICE();
  auto d = decoder(8, 16);
  models::DecoderRunner runner(*d);
  Engine e(runner);
  RequestParams p;
  EXPECT_THROW(e.add_request(p, {}), Error);  // empty prompt
  p.prompt = {1, 2, 90};
  EXPECT_THROW(e.add_request(p, {}), Error);  // outside the vocabulary
  p.prompt = {1, 2, 3};
  p.max_tokens = -1;
  EXPECT_THROW(e.add_request(p, {}), Error);
  p.max_tokens = 4;
  p.prompt_logprobs = true;  // without logprobs
  EXPECT_THROW(e.add_request(p, {}), Error);
  p.prompt_logprobs = false;
  p.max_tokens = 94;
  EXPECT_THROW(e.add_request(p, {}), Error);  // beyond the context
  p.max_tokens = 40;
  EXPECT_THROW(e.add_request(p, {}), Error);  // more than the whole cache (32 tokens)
  EXPECT_FALSE(e.has_work());
}

// Prompt log-probabilities: the log-softmax of a whole-prompt forward pass (the generator with
// every token's logits, computed here in double), token i from row i - 1, the first with none.
// The runner returns 4 + 5 rows a step, so long prompts take several cut chunks; the KV cache is
// small enough that sequences are preempted and recomputed (no prompt token may be reported
// twice); a second copy of a prompt finds its blocks cached but must not take them; n = 2 gives
// both samples the prompt's events; max_tokens 0 ends after the prompt.
TEST_F(EngineTest, PromptLogprobsEqualAWholePromptForward) {
  ORIGAMI_REQUIRE_TEST_DEVICE();
  models::GeneratorOptions go;
  go.max_seq = 96;
  go.max_step_tokens = 96;
  go.all_logits = true;
  go.device = test::test_device();
  models::Generator g(spec(), whole_, go);
  const int64_t V = spec().vocab;
  auto log_softmax = [&](const std::vector<int64_t>& p) {  // [P][V] of each position's logits
    g.reset();
    const models::SequenceChunk c{0, p};
    const Tensor logits = g.step({&c, 1});
    std::vector<std::vector<double>> lp(p.size(), std::vector<double>(size_t(V)));
    for (size_t t = 0; t < p.size(); ++t) {
      const float* row = logits.data_as<float>() + int64_t(t) * V;
      double mx = row[0], sum = 0.0;
      for (int64_t v = 0; v < V; ++v) mx = std::max(mx, double(row[v]));
      for (int64_t v = 0; v < V; ++v) sum += std::exp(double(row[v]) - mx);
      for (int64_t v = 0; v < V; ++v) lp[t][size_t(v)] = double(row[v]) - mx - std::log(sum);
    }
    return lp;
  };
  struct Seen {
    std::map<int, std::vector<serve::TokenEvent>> prompt;  // per sample, top copied below
    std::map<int, std::vector<std::vector<std::pair<int64_t, double>>>> tops;
    std::map<int, std::vector<int64_t>> tokens;
    std::map<int, FinishReason> reason;
    bool prompt_after_token = false;
  };
  auto d = decoder(20, 16, 4 + 5);  // 80 tokens of cache
  models::DecoderRunner runner(*d);
  Engine e(runner);
  ASSERT_EQ(runner.limits().max_logit_rows, 9);
  std::map<int, Seen> seen;
  std::map<int, std::vector<int64_t>> prompts;
  auto add_lp = [&](int key, std::vector<int64_t> p, int64_t max_tokens, int n) {
    RequestParams r;
    r.prompt = p;
    r.max_tokens = max_tokens;
    r.n = n;
    r.logprobs = 2;
    r.prompt_logprobs = true;
    prompts[key] = p;
    e.add_request(r, [&seen, key](const serve::TokenEvent& ev) {
      Seen& s = seen[key];
      if (ev.prompt) {
        if (!s.tokens[ev.sample].empty()) s.prompt_after_token = true;
        s.prompt[ev.sample].push_back(ev);
        s.tops[ev.sample].emplace_back(ev.top.begin(), ev.top.end());
        return;
      }
      if (ev.token >= 0) s.tokens[ev.sample].push_back(ev.token);
      if (ev.reason != FinishReason::none) s.reason[ev.sample] = ev.reason;
    });
  };
  add(e, 4, 10, {});  // plain requests in the same steps
  add(e, 6, 20, {});
  add_lp(1, prompt(3), 0, 2);  // the prompt alone, two samples
  add_lp(2, {7}, 3, 1);        // one token: nothing but its null event
  add_lp(0, prompt(5), 6, 1);  // 38 tokens in cut chunks, the newest: preempted mid-prompt
  int64_t steps = 0;
  while (e.has_work()) {
    e.step();
    ASSERT_LT(++steps, 1000) << "the engine does not make progress";
  }
  add_lp(3, prompt(5), 6, 1);  // the same prompt again: its blocks are cached
  while (e.has_work()) e.step();
  EXPECT_GT(e.stats().preemptions, 0) << "the test meant to preempt";
  EXPECT_EQ(e.stats().kv_blocks_used, 0);
  for (auto& [key, p] : prompts) {
    Seen& s = seen[key];
    const auto want = log_softmax(p);
    EXPECT_FALSE(s.prompt_after_token) << "request " << key;
    const int n = key == 1 ? 2 : 1;
    for (int sample = 0; sample < n; ++sample) {
      const auto& events = s.prompt[sample];
      ASSERT_EQ(events.size(), p.size()) << "request " << key << " sample " << sample;
      EXPECT_FALSE(events[0].logprob.has_value());
      for (size_t t = 0; t < p.size(); ++t) {
        EXPECT_EQ(events[t].token, p[t]);
        if (t == 0) continue;
        const std::vector<double>& row = want[t - 1];
        ASSERT_TRUE(events[t].logprob.has_value());
        EXPECT_NEAR(*events[t].logprob, row[size_t(p[t])], 1e-4)
            << "request " << key << " token " << t;
        // The two most likely, from the same row.
        std::vector<int64_t> order(static_cast<size_t>(V));
        for (int64_t v = 0; v < V; ++v) order[size_t(v)] = v;
        std::sort(order.begin(), order.end(),
                  [&row](int64_t a, int64_t b) { return row[size_t(a)] > row[size_t(b)]; });
        const auto& top = s.tops[sample][t];
        ASSERT_EQ(top.size(), 2u);
        for (size_t k = 0; k < 2; ++k) {
          EXPECT_NEAR(top[k].second, row[size_t(order[k])], 1e-4);
          if (std::abs(row[size_t(order[k])] - row[size_t(order[k ^ 1])]) > 1e-4) {
            EXPECT_EQ(top[k].first, order[k]) << "request " << key << " token " << t;
          }
        }
      }
      if (key == 1) {
        EXPECT_TRUE(s.tokens[sample].empty());
        EXPECT_EQ(s.reason[sample], FinishReason::length);
      } else {
        models::GenerationConfig gc;
        gc.max_new_tokens = key == 2 ? 3 : 6;
        models::GeneratorOptions so;
        so.max_seq = 96;
        so.device = test::test_device();
        models::Generator solo(spec(), whole_, so);
        EXPECT_EQ(s.tokens[sample], solo.generate({p}, gc)[0].tokens) << "request " << key;
      }
    }
  }
  EXPECT_EQ(out_[4].tokens, reference(4, 10, {}).tokens);
  EXPECT_EQ(out_[6].tokens, reference(6, 20, {}).tokens);
}

}  // namespace
}  // namespace origami
