// Generation with a KV cache (models/generator.h) and sampling (runtime/serve/sampler.h).
//
// Suite Generate: the logits of prefill and decode steps equal, row for row, the logits of the
// training Decoder's forward over the whole sequence (every family, MoE, sliding window, qkv bias,
// tied embeddings, batches of sequences at different positions, chunked prefill); greedy sampling
// is the argmax; the top-k / top-p / temperature / repetition-penalty distributions match a naive
// reference, checked by counting seeded draws; seeds are deterministic; stopping and bad inputs.
// Suite GenerateGolden: greedy generations of tiny Hugging Face models equal transformers'
// generate(do_sample=False) token for token (data from tests/golden/hf_generate.py).
#include <gtest/gtest.h>
#include <stdlib.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <numeric>
#include <string>
#include <vector>

#include "models/decoder.h"
#include "models/generator.h"
#include "models/hf_import.h"
#include "runtime/config.h"
#include "runtime/serve/sampler.h"
#include "tests/support/test_support.h"

namespace origami {
namespace {

using models::Decoder;
using models::DecoderOptions;
using models::GenerationConfig;
using models::GenerationResult;
using models::Generator;
using models::GeneratorOptions;
using models::ModelSpec;
using models::SequenceChunk;
using serve::Sampler;
using serve::SamplingParams;
namespace fs = std::filesystem;

// bf16 generation against the bf16 training forward: the same rounding points, but GEMMs of
// different row counts may round differently, and one bf16 rounding of an activation moves the
// logits by up to ~1e-2 of their size (as the model golden tests' bf16 logits tolerance).
constexpr double kLogitsBf16 = 5e-2;

// A tiny model from a config text (V=37, H=24, 3 query heads over 1 kv head, D=8).
ModelSpec tiny_spec(const std::string& family, const std::string& extra_model = "",
                    const std::string& moe = "", int layers = 2) {
  std::string text = "model { family: \"" + family +
                     "\" vocab_size: 37 hidden_size: 24 num_heads: 3 num_kv_heads: 1 "
                     "ffn_hidden_size: 20 max_seq_len: 32 num_layers: " +
                     std::to_string(layers) + " " + extra_model;
  if (!moe.empty()) text += " moe { " + moe + " }";
  text += " }";
  return models::spec_from_config(parse_config(text, "tiny").model());
}

ModelSpec mixtral_spec() {
  return tiny_spec("mixtral", "",
                   "num_experts: 4 top_k: 2 expert_ffn_hidden_size: 12 norm_topk_prob: true");
}
ModelSpec qwen2_moe_spec() {
  ModelSpec s = tiny_spec("qwen2_moe", "",
                          "num_experts: 5 top_k: 2 expert_ffn_hidden_size: 10 "
                          "shared_expert_ffn_hidden_size: 14 sparse_step: 1 mlp_only_layers: [0]",
                          3);
  s.qkv_bias = true;
  return s;
}

std::vector<int64_t> row_ids(const Tensor& ids, int64_t b) {
  const int64_t S = ids.size(1);
  std::vector<int64_t> v(static_cast<size_t>(S));
  for (int64_t s = 0; s < S; ++s) v[size_t(s)] = int64_t(ids.item_at(b * S + s));
  return v;
}

// Max |a - b| over max |b| of logits rows: a [*, V] (host f32, row ra) vs b (row rb).
struct RowErr {
  double max_abs = 0, max_ref = 0;
  void add(const std::vector<float>& a, int64_t ra, const std::vector<float>& b, int64_t rb,
           int64_t V) {
    for (int64_t i = 0; i < V; ++i) {
      max_abs = std::max(max_abs,
                         std::abs(double(a[size_t(ra * V + i)]) - double(b[size_t(rb * V + i)])));
      max_ref = std::max(max_ref, std::abs(double(b[size_t(rb * V + i)])));
    }
  }
  double rel() const { return max_abs / std::max(max_ref, 1e-30); }
};

// The scenario every family runs: two sequences of length S through the training Decoder (the
// reference logits [2*S,V]), then through the generator in all_logits mode:
//   step 1: slot 0 prefills p0 tokens and slot 1 p1 tokens together;
//   step 2: slot 1 prefills its next c1 tokens as a chunk, alone;
//   then decode steps of one token per unfinished sequence until both reach S.
// Every row the generator returns is compared with the Decoder's row of the same position.
void check_decode_matches_forward(const ModelSpec& spec, DType dtype, double tol, int64_t S = 10,
                                  int64_t p0 = 3, int64_t p1 = 4, int64_t c1 = 3,
                                  uint64_t seed = 5) {
  DecoderOptions o;
  o.batch = 2;
  o.seq = S;
  o.compute = dtype;
  o.device = test::test_device();
  o.optimizer_state = false;
  Decoder dec(spec, o);
  dec.params().init_random(seed, 0.2);
  dec.sync_compute_weights();
  // A sigmoid router with expert bias selects by score + bias: give the bias values that matter.
  std::vector<std::vector<float>> biases;
  for (int64_t m = 0; m < spec.num_moe_layers() && spec.moe.expert_bias; ++m) {
    std::vector<float> b(size_t(spec.moe.num_experts));
    for (size_t e = 0; e < b.size(); ++e) b[e] = 0.05f * float(int(e % 3) - 1);
    dec.expert_bias(m) = b;
    biases.push_back(b);
  }
  const Tensor ids = test::random_ints({2, S}, DType::i64, 0, spec.vocab, seed + 1);
  dec.forward(ids, ids);
  const std::vector<float> ref = dec.logits().to_float_vector();  // [2*S,V]

  GeneratorOptions go;
  go.max_batch = 2;
  go.max_seq = S;
  go.compute = dtype;
  go.device = test::test_device();
  go.all_logits = true;
  Generator gen(spec, dec.params(), go);
  for (size_t m = 0; m < biases.size(); ++m) gen.set_expert_bias(int64_t(m), biases[m]);
  const std::vector<int64_t> seq[2] = {row_ids(ids, 0), row_ids(ids, 1)};
  const int64_t V = spec.vocab;
  RowErr err;
  int64_t rows_checked = 0;
  auto run = [&](std::vector<SequenceChunk> chunks) {
    std::vector<int64_t> start;
    for (const SequenceChunk& c : chunks) start.push_back(gen.length(c.slot));
    const std::vector<float> got = gen.step(chunks).to_float_vector();
    int64_t row = 0;
    for (size_t j = 0; j < chunks.size(); ++j)
      for (size_t i = 0; i < chunks[j].tokens.size(); ++i, ++row, ++rows_checked)
        err.add(got, row, ref, chunks[j].slot * S + start[j] + int64_t(i), V);
    ASSERT_EQ(row * V, int64_t(got.size()));
  };
  auto span = [&](int64_t b, int64_t from, int64_t n) {
    return std::span<const int64_t>(seq[b].data() + from, size_t(n));
  };
  run({{0, span(0, 0, p0)}, {1, span(1, 0, p1)}});
  run({{1, span(1, p1, c1)}});
  while (gen.length(0) < S || gen.length(1) < S) {
    std::vector<SequenceChunk> chunks;
    for (int64_t b = 0; b < 2; ++b)
      if (gen.length(b) < S) chunks.push_back({b, span(b, gen.length(b), 1)});
    run(chunks);
  }
  EXPECT_EQ(rows_checked, 2 * S);
  EXPECT_LE(err.rel(), tol) << spec.str() << " " << dtype_name(dtype) << ": max abs err "
                            << err.max_abs << ", max |logit| " << err.max_ref;
  std::printf("[ generate ] %s %s: KV-cache logits vs full forward, rel err %.2e\n",
              spec.str().c_str(), dtype_name(dtype), err.rel());
}

double f32_tol() {
  return test::tolerance_for(DType::f32).rel;
}

// ---- KV-cache decode equals the full-sequence forward -----------------------------------------

TEST(Generate, DecodeMatchesForwardLlama) {
  ORIGAMI_REQUIRE_TEST_DEVICE();
  check_decode_matches_forward(tiny_spec("llama"), DType::f32, f32_tol());
}

TEST(Generate, DecodeMatchesForwardQkvBiasTiedEmbeddings) {
  ORIGAMI_REQUIRE_TEST_DEVICE();
  ModelSpec s = tiny_spec("llama", "tie_embeddings: true", "", 3);
  s.qkv_bias = true;
  check_decode_matches_forward(s, DType::f32, f32_tol(), 13, 1, 6, 5, 8);
}

TEST(Generate, DecodeMatchesForwardSlidingWindow) {
  ORIGAMI_REQUIRE_TEST_DEVICE();
  // Window 3 (4 keys per query) over 17 positions: prefill chunks of 6 and 5 tokens start and
  // end inside windows, and decode runs long past the window.
  check_decode_matches_forward(tiny_spec("llama", "sliding_window: 3"), DType::f32, f32_tol(), 17,
                               6, 2, 5, 9);
}

TEST(Generate, DecodeMatchesForwardMixtral) {
  ORIGAMI_REQUIRE_TEST_DEVICE();
  check_decode_matches_forward(mixtral_spec(), DType::f32, f32_tol());
}

TEST(Generate, DecodeMatchesForwardMixtralSlidingWindow) {
  ORIGAMI_REQUIRE_TEST_DEVICE();
  ModelSpec s = mixtral_spec();
  s.sliding_window = 4;
  check_decode_matches_forward(s, DType::f32, f32_tol(), 12, 7, 3, 3, 10);
}

TEST(Generate, DecodeMatchesForwardQwen2Moe) {
  ORIGAMI_REQUIRE_TEST_DEVICE();
  ModelSpec s = qwen2_moe_spec();
  ASSERT_FALSE(s.is_moe_layer(0));
  ASSERT_TRUE(s.is_moe_layer(1));
  ASSERT_TRUE(s.moe.shared_expert_gate);
  check_decode_matches_forward(s, DType::f32, f32_tol());
}

TEST(Generate, DecodeMatchesForwardSigmoidRouterWithExpertBias) {
  ORIGAMI_REQUIRE_TEST_DEVICE();
  ModelSpec s =
      tiny_spec("deepseek_moe", "",
                "num_experts: 4 top_k: 2 expert_ffn_hidden_size: 12 router: \"sigmoid\" "
                "norm_topk_prob: true expert_bias: true shared_expert_ffn_hidden_size: 8");
  check_decode_matches_forward(s, DType::f32, f32_tol());
}

TEST(Generate, DecodeMatchesForwardBf16) {
  ORIGAMI_REQUIRE_TEST_DEVICE();
  check_decode_matches_forward(tiny_spec("llama"), DType::bf16, kLogitsBf16);
  check_decode_matches_forward(mixtral_spec(), DType::bf16, kLogitsBf16);
}

// The default mode returns one row per sequence: its last token's logits.
TEST(Generate, LastRowLogitsPerSequence) {
  ORIGAMI_REQUIRE_TEST_DEVICE();
  const ModelSpec spec = qwen2_moe_spec();
  const int64_t S = 7, V = spec.vocab;
  models::ParameterBuffer params(models::ParameterLayout(spec), DType::f32);
  params.init_random(3, 0.2);
  GeneratorOptions all;
  all.max_batch = 3;
  all.max_seq = S;
  all.all_logits = true;
  all.device = test::test_device();
  GeneratorOptions last = all;
  last.all_logits = false;
  Generator ga(spec, params, all), gl(spec, params, last);
  const Tensor ids = test::random_ints({3, S}, DType::i64, 0, V, 4);
  const std::vector<int64_t> seq[3] = {row_ids(ids, 0), row_ids(ids, 1), row_ids(ids, 2)};
  const std::vector<SequenceChunk> chunks = {
      {2, {seq[2].data(), 5}}, {0, {seq[0].data(), 1}}, {1, {seq[1].data(), 3}}};
  const std::vector<float> a = ga.step(chunks).to_float_vector();
  const Tensor lt = gl.step(chunks);
  ASSERT_EQ(lt.shape(), (Shape{3, V}));
  const std::vector<float> l = lt.to_float_vector();
  RowErr err;
  err.add(l, 0, a, 4, V);  // slot 2: rows 0..4
  err.add(l, 1, a, 5, V);  // slot 0: row 5
  err.add(l, 2, a, 8, V);  // slot 1: rows 6..8
  EXPECT_LE(err.rel(), f32_tol());
  EXPECT_EQ(gl.length(0), 1);
  EXPECT_EQ(gl.length(1), 3);
  EXPECT_EQ(gl.length(2), 5);
}

// ---- sampling ---------------------------------------------------------------------------------

// The naive reference: probabilities of the next token after repetition penalty, temperature,
// top-k and top-p, from the definitions (ranks counted pairwise, no sorting).
std::vector<double> reference_distribution(const std::vector<float>& logits,
                                           const SamplingParams& p,
                                           const std::vector<int64_t>& history,
                                           size_t generated = 0) {
  const size_t V = logits.size();
  std::vector<double> z(V);
  for (size_t i = 0; i < V; ++i) {
    double l = logits[i];
    const bool seen = std::find(history.begin(), history.end(), int64_t(i)) != history.end();
    if (seen) l = float(l < 0 ? l * p.repetition_penalty : l / p.repetition_penalty);
    // OpenAI's penalties over the last `generated` entries of the history.
    const auto n = std::count(history.end() - std::ptrdiff_t(generated), history.end(), int64_t(i));
    if (n > 0) l = float(l - p.presence_penalty - p.frequency_penalty * double(n));
    z[i] = l;
  }
  // rank[i]: tokens ahead of i (higher logit, or equal logit and lower id)
  std::vector<size_t> rank(V, 0);
  for (size_t i = 0; i < V; ++i)
    for (size_t j = 0; j < V; ++j)
      if (z[j] > z[i] || (z[j] == z[i] && j < i)) ++rank[i];
  std::vector<double> prob(V, 0.0);
  if (p.temperature == 0) {
    for (size_t i = 0; i < V; ++i) prob[i] = rank[i] == 0 ? 1.0 : 0.0;
    return prob;
  }
  double mx = *std::max_element(z.begin(), z.end()), sum = 0;
  for (size_t i = 0; i < V; ++i) {
    const bool kept = p.top_k <= 0 || rank[i] < size_t(p.top_k);
    prob[i] = kept ? std::exp((z[i] - mx) / p.temperature) : 0.0;
    sum += prob[i];
  }
  for (double& x : prob) x /= sum;
  if (p.top_p < 1.0) {
    std::vector<double> keep(V, 0.0);
    double kept_sum = 0;
    for (size_t i = 0; i < V; ++i) {
      double ahead = 0;
      for (size_t j = 0; j < V; ++j)
        if (rank[j] < rank[i]) ahead += prob[j];
      if (prob[i] > 0 && (rank[i] == 0 || ahead < p.top_p)) keep[i] = prob[i], kept_sum += prob[i];
    }
    for (size_t i = 0; i < V; ++i) prob[i] = keep[i] / kept_sum;
  }
  return prob;
}

const std::vector<float> kLogits = {1.5f,   -0.3f, 2.2f, 0.1f,  2.2f, -1.7f, 0.9f,
                                    -0.05f, 3.0f,  0.4f, -2.5f, 1.1f, 0.0f};

TEST(Generate, GreedyIsArgmax) {
  ORIGAMI_REQUIRE_TEST_DEVICE();
  Sampler s(SamplingParams{}, 13);
  EXPECT_EQ(s.sample(kLogits), 8);
  // Ties go to the lower id.
  std::vector<float> tie = kLogits;
  tie[8] = 2.2f;
  EXPECT_EQ(s.sample(tie), 2);
  // Random rows against a plain argmax.
  for (uint64_t seed = 0; seed < 20; ++seed) {
    const std::vector<float> l =
        test::random_tensor({101}, DType::f32, seed, -4, 4).to_float_vector();
    Sampler g(SamplingParams{}, 101);
    EXPECT_EQ(g.sample(l), int64_t(std::max_element(l.begin(), l.end()) - l.begin()));
  }
  // The repetition penalty moves the argmax off a token already seen (3.0 / 2 < 2.2).
  SamplingParams rp;
  rp.repetition_penalty = 2.0;
  Sampler r(rp, 13);
  const std::vector<int64_t> hist = {8, 8, 99};
  EXPECT_EQ(r.sample(kLogits, hist), 2);
}

TEST(Generate, SamplingDistributionsMatchReference) {
  ORIGAMI_REQUIRE_TEST_DEVICE();
  struct Case {
    const char* what;
    SamplingParams p;
    std::vector<int64_t> history;
    size_t generated = 0;  // of the history, the generated tokens (presence/frequency penalties)
  };
  auto params = [](double t, int64_t k, double p, double rp = 1.0, double pres = 0.0,
                   double freq = 0.0) {
    SamplingParams s;
    s.temperature = t;
    s.top_k = k;
    s.top_p = p;
    s.repetition_penalty = rp;
    s.presence_penalty = pres;
    s.frequency_penalty = freq;
    return s;
  };
  const std::vector<Case> cases = {
      {"temperature 1", params(1.0, 0, 1.0), {}},
      {"temperature 0.7, top-k 5", params(0.7, 5, 1.0), {}},
      {"temperature 1.3, top-p 0.8", params(1.3, -1, 0.8), {}},
      {"top-k 4 then top-p 0.6", params(1.0, 4, 0.6), {}},
      {"top-p 0.3 keeps one token", params(1.0, 0, 0.3), {}},
      {"top-k larger than the vocabulary", params(2.0, 50, 1.0), {}},
      {"repetition penalty 1.8, top-p 0.9", params(0.9, 0, 0.9, 1.8), {8, 3, 8, 5, 2, 0, 0}},
      {"presence 0.6, frequency 0.4 on the generated tokens",
       params(1.0, 0, 1.0, 1.0, 0.6, 0.4),
       {8, 3, 8, 8, 2, 2, 11},
       5},
      {"negative presence, repetition 1.2, top-k 6",
       params(0.8, 6, 1.0, 1.2, -1.5, 0.3),
       {0, 4, 4, 9},
       3},
  };
  const int64_t draws = 60000;
  for (size_t ci = 0; ci < cases.size(); ++ci) {
    const Case& c = cases[ci];
    SamplingParams p = c.p;
    p.seed = 1000 + ci;
    const std::vector<double> ref = reference_distribution(kLogits, p, c.history, c.generated);
    Sampler s(p, int64_t(kLogits.size()));
    std::vector<double> dist;
    s.distribution(kLogits, c.history, dist, c.generated);
    for (size_t i = 0; i < ref.size(); ++i)
      EXPECT_NEAR(dist[i], ref[i], 1e-12) << c.what << ": probability of token " << i;
    std::vector<int64_t> count(kLogits.size(), 0);
    for (int64_t d = 0; d < draws; ++d) ++count[size_t(s.sample(kLogits, c.history, c.generated))];
    for (size_t i = 0; i < ref.size(); ++i) {
      const double f = double(count[i]) / double(draws);
      if (ref[i] == 0.0) {
        EXPECT_EQ(count[i], 0) << c.what << ": token " << i << " is outside the kept set";
        continue;
      }
      // 5 standard deviations of a binomial frequency.
      const double sigma = std::sqrt(ref[i] * (1 - ref[i]) / double(draws));
      EXPECT_NEAR(f, ref[i], 5 * sigma + 1e-12) << c.what << ": frequency of token " << i;
    }
  }
}

TEST(Generate, SeedDeterminism) {
  ORIGAMI_REQUIRE_TEST_DEVICE();
  SamplingParams p;
  p.temperature = 1.0;
  p.top_p = 0.95;
  auto draw = [&](uint64_t seed) {
    p.seed = seed;
    Sampler s(p, int64_t(kLogits.size()));
    std::vector<int64_t> out;
    for (int i = 0; i < 64; ++i) out.push_back(s.sample(kLogits));
    return out;
  };
  EXPECT_EQ(draw(7), draw(7));
  EXPECT_NE(draw(7), draw(8));

  // Whole generations: the same seed gives the same tokens, another seed other tokens.
  const ModelSpec spec = mixtral_spec();
  models::ParameterBuffer params(models::ParameterLayout(spec), DType::f32);
  params.init_random(9, 0.3);
  GeneratorOptions go;
  go.max_batch = 2;
  go.device = test::test_device();
  Generator gen(spec, params, go);
  GenerationConfig gc;
  gc.max_new_tokens = 20;
  gc.sampling.temperature = 1.5;
  gc.sampling.seed = 42;
  const std::vector<std::vector<int64_t>> prompts = {{1, 2, 3}, {4, 5, 6, 7, 8}};
  const auto a = gen.generate(prompts, gc);
  const auto b = gen.generate(prompts, gc);
  gc.sampling.seed = 43;
  const auto c = gen.generate(prompts, gc);
  ASSERT_EQ(a.size(), 2u);
  for (size_t i = 0; i < 2; ++i) {
    EXPECT_EQ(a[i].tokens.size(), 20u);
    EXPECT_EQ(a[i].tokens, b[i].tokens) << "sequence " << i;
  }
  EXPECT_NE(a[0].tokens, c[0].tokens);
}

// ---- the generation loop ----------------------------------------------------------------------

// Greedy generation of each prompt alone (full forward of the whole text at every step, no
// cache): the reference for the KV-cache loop.
std::vector<int64_t> greedy_without_cache(const ModelSpec& spec,
                                          const models::ParameterBuffer& params,
                                          std::vector<int64_t> text, int64_t n) {
  std::vector<int64_t> out;
  for (int64_t i = 0; i < n; ++i) {
    DecoderOptions o;
    o.batch = 1;
    o.seq = int64_t(text.size());
    o.optimizer_state = false;
    o.device = test::test_device();
    Decoder dec(spec, o);
    dec.params().copy_from(params);
    dec.sync_compute_weights();
    const Tensor ids = Tensor::from_vector_i64(text, {1, o.seq});
    dec.forward(ids, ids);
    const std::vector<float> l = dec.logits().to_float_vector();
    const auto last = l.begin() + (o.seq - 1) * spec.vocab;
    const int64_t tok = int64_t(std::max_element(last, last + spec.vocab) - last);
    out.push_back(tok);
    text.push_back(tok);
  }
  return out;
}

TEST(Generate, BatchedGreedyEqualsUncachedGreedy) {
  ORIGAMI_REQUIRE_TEST_DEVICE();
  const ModelSpec spec = qwen2_moe_spec();
  models::ParameterBuffer params(models::ParameterLayout(spec), DType::f32);
  params.init_random(17, 0.3);
  GeneratorOptions go;
  go.max_batch = 3;
  go.max_step_tokens = 4;  // the prompts are prefilled in chunks of at most 4 tokens in all
  go.device = test::test_device();
  Generator gen(spec, params, go);
  const std::vector<std::vector<int64_t>> prompts = {{3, 1, 4, 1, 5, 9, 2}, {6}, {5, 3, 5}};
  GenerationConfig gc;
  gc.max_new_tokens = 6;
  std::vector<std::vector<int64_t>> streamed(3);
  const auto res =
      gen.generate(prompts, gc, [&](int64_t i, int64_t t) { streamed[size_t(i)].push_back(t); });
  for (size_t i = 0; i < prompts.size(); ++i) {
    EXPECT_EQ(res[i].tokens, greedy_without_cache(spec, params, prompts[i], 6)) << "prompt " << i;
    EXPECT_EQ(streamed[i], res[i].tokens);
    EXPECT_EQ(res[i].reason, models::StopReason::max_new_tokens);
  }
}

TEST(Generate, StopsOnEosMaxTokensAndFullContext) {
  ORIGAMI_REQUIRE_TEST_DEVICE();
  const ModelSpec spec = tiny_spec("llama");
  models::ParameterBuffer params(models::ParameterLayout(spec), DType::f32);
  params.init_random(23, 0.3);
  GeneratorOptions go;
  go.max_batch = 2;
  go.max_seq = 12;
  go.device = test::test_device();
  Generator gen(spec, params, go);
  const std::vector<std::vector<int64_t>> prompts = {{1, 2, 3, 4}, {7, 8}};
  GenerationConfig gc;
  gc.max_new_tokens = 6;
  const auto free_run = gen.generate(prompts, gc);
  ASSERT_EQ(free_run[0].tokens.size(), 6u);
  EXPECT_EQ(free_run[0].reason, models::StopReason::max_new_tokens);

  // EOS: the third token of sequence 0 ends it (included, as transformers); sequence 1 goes on
  // unless it meets the same id.
  const int64_t eos = free_run[0].tokens[2];
  gc.stop_ids = {eos};
  const auto stopped = gen.generate(prompts, gc);
  const size_t first = size_t(std::find(free_run[0].tokens.begin(), free_run[0].tokens.end(), eos) -
                              free_run[0].tokens.begin());
  EXPECT_EQ(stopped[0].tokens,
            std::vector<int64_t>(free_run[0].tokens.begin(),
                                 free_run[0].tokens.begin() + int64_t(first) + 1));
  EXPECT_EQ(stopped[0].reason, models::StopReason::eos);
  const auto& t1 = free_run[1].tokens;
  const auto hit = std::find(t1.begin(), t1.end(), eos);
  EXPECT_EQ(stopped[1].tokens, std::vector<int64_t>(t1.begin(), hit == t1.end() ? hit : hit + 1));

  // A context of 12: the 4-token prompt can take 12 - 4 + 1 = 9 new tokens (the last one is never
  // fed back), the 2-token prompt 11.
  gc.stop_ids.clear();
  gc.max_new_tokens = 100;
  const auto full = gen.generate(prompts, gc);
  EXPECT_EQ(full[0].tokens.size(), 9u);
  EXPECT_EQ(full[1].tokens.size(), 11u);
  EXPECT_EQ(full[0].reason, models::StopReason::context_full);
  EXPECT_EQ(full[0].tokens[5], free_run[0].tokens[5]);
}

TEST(Generate, LoadsWeightsInPlaceFromHuggingFaceFolder) {
  ORIGAMI_REQUIRE_TEST_DEVICE();
  // export_hf -> load_hf_weights straight into the generator (bf16 rounding on load) equals a
  // generator copied from the same f32 parameters.
  const ModelSpec spec = mixtral_spec();
  models::ParameterBuffer params(models::ParameterLayout(spec), DType::f32);
  params.init_random(31, 0.3);
  std::string tmpl = (fs::temp_directory_path() / "origami_generate_XXXXXX").string();
  ASSERT_NE(mkdtemp(tmpl.data()), nullptr);
  models::export_hf(tmpl, spec, params);
  for (DType dt : test::float_dtypes()) {
    GeneratorOptions go;
    go.compute = dt;
    go.device = test::test_device();
    Generator a(models::spec_from_hf_config(tmpl), go);
    models::load_hf_weights(tmpl, a.weights());
    Generator b(spec, params, go);
    GenerationConfig gc;
    gc.max_new_tokens = 8;
    EXPECT_EQ(a.generate({{2, 4, 6}}, gc)[0].tokens, b.generate({{2, 4, 6}}, gc)[0].tokens)
        << dtype_name(dt);
  }
  fs::remove_all(tmpl);
}

TEST(Generate, BadInputsThrow) {
  ORIGAMI_REQUIRE_TEST_DEVICE();
  const ModelSpec spec = tiny_spec("llama");
  GeneratorOptions go;
  go.max_batch = 2;
  go.max_seq = 8;
  go.device = test::test_device();
  Generator gen(spec, go);
  GenerationConfig gc;
  auto message = [](auto&& fn) {
    try {
      fn();
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_NE(message([&] {
              gen.generate({std::vector<int64_t>(9, 1)}, gc);
            }).find("prompt 0 has 9 tokens, longer than the context of 8"),
            std::string::npos);
  EXPECT_NE(message([&] { gen.generate({{1, 40}}, gc); }).find("token id 40"), std::string::npos);
  EXPECT_NE(message([&] {
              gen.generate(std::vector<std::vector<int64_t>>{std::vector<int64_t>{}}, gc);
            }).find("empty"),
            std::string::npos);
  EXPECT_NE(message([&] {
              gen.generate({{1}, {2}, {3}}, gc);
            }).find("max_batch"),
            std::string::npos);
  const std::vector<int64_t> t = {1, 2, 3, 4, 5};
  EXPECT_NE(message([&] {
              gen.step(std::vector<SequenceChunk>{{0, t}, {0, t}});
            }).find("slot 0 given twice"),
            std::string::npos);
  EXPECT_NE(message([&] {
              gen.step(std::vector<SequenceChunk>{{2, t}});
            }).find("slot 2"),
            std::string::npos);
  gen.reset();
  gen.step(std::vector<SequenceChunk>{{0, t}});
  EXPECT_NE(message([&] {
              gen.step(std::vector<SequenceChunk>{{0, t}});
            }).find("exceed the context of 8"),
            std::string::npos);
  for (auto bad : {SamplingParams{-1.0, 0, 1.0, 1.0, 0}, SamplingParams{1.0, -2, 1.0, 1.0, 0},
                   SamplingParams{1.0, 0, 0.0, 1.0, 0}, SamplingParams{1.0, 0, 1.5, 1.0, 0},
                   SamplingParams{1.0, 0, 1.0, 0.0, 0}})
    EXPECT_THROW(Sampler(bad, 10), Error);
  EXPECT_THROW(Sampler(SamplingParams{}, 10).sample(kLogits), Error);  // 13 logits, vocab 10
  GeneratorOptions bad = go;
  bad.compute = DType::f16;
  EXPECT_THROW(Generator(spec, bad), Error);
  bad = go;
  bad.max_step_tokens = 1;  // fewer than max_batch
  EXPECT_THROW(Generator(spec, bad), Error);
  ModelSpec no_ctx = spec;
  no_ctx.max_seq_len = 0;
  EXPECT_THROW(Generator(no_ctx, GeneratorOptions{}), Error);
}

// ---- golden: against transformers' generate
// ------------------------------------------------------

class GenerateGolden : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    std::string tmpl = (fs::temp_directory_path() / "origami_hf_generate_XXXXXX").string();
    const char* d = mkdtemp(tmpl.data());
    dir_ = d ? std::string(d) : std::string();
    const std::string cmd = std::string("\"") + ORIGAMI_PYTHON + "\" \"" + ORIGAMI_SOURCE_DIR +
                            "/tests/golden/hf_generate.py\" \"" + dir_ +
                            "\" llama llama_tied mixtral qwen2_moe > \"" + dir_ + "/log.txt\" 2>&1";
    python_rc_ = std::system(cmd.c_str());
  }
  static void TearDownTestSuite() {
    if (!dir_.empty() && !std::getenv("ORIGAMI_KEEP_GOLDEN")) fs::remove_all(dir_);
  }
  static std::string dir_;
  static int python_rc_;
};
std::string GenerateGolden::dir_;
int GenerateGolden::python_rc_ = -1;

std::vector<int64_t> npy_ids(const std::string& path) {
  const test::HostArray a = test::read_npy(path);
  return std::vector<int64_t>(a.data.begin(), a.data.end());
}

void check_greedy_against_transformers(const std::string& dir, int rc, const std::string& family) {
  ASSERT_EQ(rc, 0) << "tests/golden/hf_generate.py failed; see " << dir << "/log.txt";
  const std::string root = dir + "/" + family;
  std::ifstream st(root + "/status.txt");
  std::string status;
  std::getline(st, status);
  if (status.rfind("unavailable", 0) == 0) GTEST_SKIP() << family << ": " << status;
  ASSERT_EQ(status, "ok") << family;

  ModelSpec spec = models::spec_from_hf_config(root + "/model");
  // The window the installed transformers applies, in our convention (window + 1 keys).
  const double window_keys = test::read_npy(root + "/window_keys.npy")[0];
  if (window_keys > 0) spec.sliding_window = int64_t(window_keys) - 1;
  std::vector<std::vector<int64_t>> prompts, expected;
  for (int i = 0; fs::exists(root + "/prompt_" + std::to_string(i) + ".npy"); ++i) {
    prompts.push_back(npy_ids(root + "/prompt_" + std::to_string(i) + ".npy"));
    expected.push_back(npy_ids(root + "/tokens_" + std::to_string(i) + ".npy"));
  }
  ASSERT_FALSE(prompts.empty());
  // All prompts at once, in one batch (transformers ran them one by one).
  GeneratorOptions go;
  go.max_batch = int64_t(prompts.size());
  go.device = test::test_device();
  Generator gen(spec, go);
  models::load_hf_weights(root + "/model", gen.weights());
  GenerationConfig gc;
  gc.max_new_tokens = int64_t(test::read_npy(root + "/max_new_tokens.npy")[0]);
  const int64_t eos = int64_t(test::read_npy(root + "/eos.npy")[0]);
  if (eos >= 0) gc.stop_ids = {eos};
  const std::vector<GenerationResult> got = gen.generate(prompts, gc);
  for (size_t i = 0; i < prompts.size(); ++i) {
    const test::HostArray margins = test::read_npy(root + "/margins_" + std::to_string(i) + ".npy");
    size_t diverge = 0;
    while (diverge < got[i].tokens.size() && diverge < expected[i].size() &&
           got[i].tokens[diverge] == expected[i][diverge])
      ++diverge;
    EXPECT_EQ(got[i].tokens, expected[i])
        << family << " prompt " << i << " (" << prompts[i].size() << " tokens): first difference "
        << "at generated token " << diverge << ", where transformers' top-2 logit margin is "
        << (diverge < size_t(margins.numel()) ? margins[int64_t(diverge)] : -1.0);
    double min_margin = 1e30;
    for (int64_t s = 0; s < margins.numel(); ++s) min_margin = std::min(min_margin, margins[s]);
    std::printf(
        "[ generate ] %s prompt %zu: %zu greedy tokens equal to transformers' (smallest "
        "top-2 margin %.2e)\n",
        family.c_str(), i, diverge, min_margin);
  }
}

TEST_F(GenerateGolden, LlamaGreedy) {
  ORIGAMI_REQUIRE_TEST_DEVICE();
  check_greedy_against_transformers(dir_, python_rc_, "llama");
}
TEST_F(GenerateGolden, LlamaTiedGreedy) {
  ORIGAMI_REQUIRE_TEST_DEVICE();
  check_greedy_against_transformers(dir_, python_rc_, "llama_tied");
}
TEST_F(GenerateGolden, MixtralSlidingWindowGreedy) {
  ORIGAMI_REQUIRE_TEST_DEVICE();
  check_greedy_against_transformers(dir_, python_rc_, "mixtral");
}
TEST_F(GenerateGolden, Qwen2MoeGreedy) {
  ORIGAMI_REQUIRE_TEST_DEVICE();
  check_greedy_against_transformers(dir_, python_rc_, "qwen2_moe");
}

}  // namespace
}  // namespace origami
