// The serving engine (runtime/serve/engine.h) over a real model (models::DecoderRunner): requests
// that join a running batch at different steps, with chunked prefill, produce exactly the tokens
// the generator produces for each prompt alone (greedy, and seeded sampling); a KV cache too
// small for the load preempts and recomputes sequences and still gives the same tokens; aborting
// frees a request's blocks at once; requests that can never run are refused.
#include <gtest/gtest.h>

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
  std::unique_ptr<models::Decoder> decoder(int64_t kv_blocks, int64_t step_tokens) {
    models::DecoderOptions o;
    o.seq = step_tokens;
    o.device = test::test_device();
    o.inference = true;
    o.optimizer_state = false;
    o.infer.kv_blocks = kv_blocks;
    o.infer.kv_block_size = 4;
    o.infer.max_sequences = 4;
    o.infer.max_context = 96;
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
  p.max_tokens = 0;
  EXPECT_THROW(e.add_request(p, {}), Error);
  p.max_tokens = 94;
  EXPECT_THROW(e.add_request(p, {}), Error);  // beyond the context
  p.max_tokens = 40;
  EXPECT_THROW(e.add_request(p, {}), Error);  // more than the whole cache (32 tokens)
  EXPECT_FALSE(e.has_work());
}

}  // namespace
}  // namespace origami
