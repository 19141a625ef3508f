// The model families (models/): finite differences of whole tiny models, the MoE router, recompute,
// allocation-free steps, the memory plan and Hugging Face import/export (suite Models), and the
// comparison with Hugging Face transformers in float64 (suite ModelsGolden, data from
// tests/golden/hf_models.py): logits, loss over AdamW steps, every gradient and every parameter.
#include <gtest/gtest.h>
#include <stdlib.h>

#include <atomic>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "models/decoder.h"
#include "models/hf_import.h"
#include "models/moe_router.h"
#include "ops/attention.h"
#include "runtime/config.h"
#include "runtime/safetensors.h"
#include "tests/support/test_support.h"

// ---- allocation counter
// --------------------------------------------------------------------------- The CPU device
// allocates tensor memory with aligned_alloc; this definition takes the place of the C library's in
// this test binary (same behaviour, through posix_memalign) and counts calls while counting is on,
// so a test can assert that a training step allocates no tensor memory.
namespace {
std::atomic<bool> g_count_allocs{false};
std::atomic<int64_t> g_allocs{0};
}  // namespace
extern "C" void* aligned_alloc(size_t alignment, size_t size) noexcept {
  if (g_count_allocs.load(std::memory_order_relaxed)) g_allocs.fetch_add(1);
  void* p = nullptr;
  if (alignment < sizeof(void*)) alignment = sizeof(void*);
  return posix_memalign(&p, alignment, size) == 0 ? p : nullptr;
}

namespace origami {
namespace {

using models::Decoder;
using models::DecoderOptions;
using models::Family;
using models::ModelSpec;
namespace fs = std::filesystem;

// ---- model-level tolerances ---------------------------------------------------------------------
// Against transformers in float64. Errors are max|ours - reference| / max|reference| per tensor.
// f32: the model is a few hundred f32 operations deep; logits within 1e-4 and the loss within 1e-5
// (docs/design-facts.md, 'How correctness is judged'). Gradients and the parameters after 5 AdamW
// steps within 1e-3: Adam divides by sqrt(v), which amplifies the f32 rounding of near-zero
// gradient elements.
constexpr double kLogitsF32 = 1e-4;
constexpr double kLossF32 = 1e-5;
constexpr double kGradF32 = 1e-3;
constexpr double kParamF32 = 1e-3;
// bf16 (bf16 weights and activations, f32 gradients and master weights): 8 mantissa bits
// through every layer. Loss within 1e-2 (docs/design-facts.md, 'How correctness is judged');
// logits and gradients 5e-2.
// Parameters after 5 steps: 2e-2 relative plus 2 * lr * steps = 1e-2 absolute. An Adam step is
// about lr in size whatever the gradient's size, so an element whose near-zero gradient bf16
// rounding flips in sign (k_proj biases, whose gradient nearly cancels) moves by up to 2 lr per
// step; only errors beyond that are the optimizer's or the model's.
constexpr double kLogitsBf16 = 5e-2;
constexpr double kLossBf16 = 1e-2;
constexpr double kGradBf16 = 5e-2;
constexpr double kParamBf16 = 2e-2;
constexpr double kParamAbsBf16 = 2 * 1e-3 * 5;

// ---- helpers ------------------------------------------------------------------------------------

struct Err {
  double max_abs = 0, max_ref = 0;
  double rel() const { return max_abs / std::max(max_ref, 1e-30); }
};
Err compare(const Tensor& actual, const test::HostArray& expected) {
  test::HostArray a = test::to_host_array(actual);
  EXPECT_EQ(a.numel(), expected.numel());
  Err e;
  for (int64_t i = 0; i < std::min(a.numel(), expected.numel()); ++i) {
    e.max_abs = std::max(e.max_abs, std::abs(a[i] - expected[i]));
    e.max_ref = std::max(e.max_ref, std::abs(expected[i]));
  }
  return e;
}

Tensor to_i64(const test::HostArray& h) {
  std::vector<int64_t> v(h.data.begin(), h.data.end());
  return Tensor::from_vector_i64(v, h.shape);
}

std::string make_temp_dir(const char* stem) {
  std::string tmpl = (fs::temp_directory_path() / (std::string(stem) + "_XXXXXX")).string();
  const char* d = mkdtemp(tmpl.data());
  EXPECT_NE(d, nullptr);
  return d ? std::string(d) : std::string();
}

// A tiny model from a config file text (exercises spec_from_config as well).
ModelSpec tiny_spec(const std::string& family, const std::string& extra_model = "",
                    const std::string& moe = "", int layers = 2) {
  std::string text = "model { family: \"" + family +
                     "\" vocab_size: 37 hidden_size: 24 num_heads: 3 num_kv_heads: 1 "
                     "ffn_hidden_size: 20 max_seq_len: 16 num_layers: " +
                     std::to_string(layers) + " " + extra_model;
  if (!moe.empty()) text += " moe { " + moe + " }";
  text += " }";
  return models::spec_from_config(parse_config(text, "tiny").model());
}

struct Batch {
  Tensor ids, targets;
};
Batch random_batch(int64_t B, int64_t S, int64_t V, uint64_t seed) {
  Batch b;
  b.ids = test::random_ints({B, S}, DType::i64, 0, V, seed);
  b.targets = test::random_ints({B, S}, DType::i64, 0, V, seed + 1);
  for (int64_t i = 0; i < B * S; i += 4) b.targets.set_at(i, double(Decoder::kIgnoreIndex));
  return b;
}

// Finite differences of the whole model's loss for each named parameter (f32, CPU).
void check_finite_differences(const ModelSpec& spec, const std::vector<std::string>& names,
                              uint64_t seed, double init_std = 0.15) {
  DecoderOptions o;
  o.batch = 2;
  o.seq = 5;
  Decoder dec(spec, o);
  dec.params().init_random(seed, init_std);
  Batch b = random_batch(o.batch, o.seq, spec.vocab, seed + 10);
  dec.grads().zero();
  dec.forward_backward(b.ids, b.targets);
  for (const std::string& name : names) {
    Tensor x = dec.params().get(name);
    const Tensor& g = dec.grads().get(name);
    const double err = test::finite_difference_error(
        [&] { return dec.forward(b.ids, b.targets).loss; }, x, g, 12, 1e-2, seed + 3);
    EXPECT_LE(err, test::kFiniteDifferenceTolerance) << spec.str() << ": " << name;
  }
}

#define SKIP_UNLESS_CPU_DEVICE()                                                             \
  do {                                                                                       \
    ORIGAMI_REQUIRE_TEST_DEVICE();                                                           \
    if (test::test_device().is_cuda()) GTEST_SKIP() << "CPU-only test (finite differences)"; \
  } while (0)

// ---- finite differences of whole models -------------------------------------------------------

TEST(Models, FiniteDifferencesDenseWithBiasAndTiedEmbeddings) {
  SKIP_UNLESS_CPU_DEVICE();
  ModelSpec s = tiny_spec("llama", "tie_embeddings: true");
  s.qkv_bias = true;  // the Qwen2 attention
  const std::string p = "model.layers.1.";
  check_finite_differences(
      s,
      {"model.embed_tokens.weight", p + "input_layernorm.weight", p + "self_attn.q_proj.weight",
       p + "self_attn.q_proj.bias", p + "self_attn.k_proj.weight", p + "self_attn.k_proj.bias",
       p + "self_attn.v_proj.bias", p + "self_attn.o_proj.weight",
       p + "post_attention_layernorm.weight", p + "mlp.gate_proj.weight",
       p + "mlp.down_proj.weight", "model.norm.weight"},
      11);
}

TEST(Models, FiniteDifferencesSlidingWindowLmHead) {
  SKIP_UNLESS_CPU_DEVICE();
  ModelSpec s = tiny_spec("llama", "sliding_window: 3");
  check_finite_differences(s,
                           {"lm_head.weight", "model.layers.0.self_attn.q_proj.weight",
                            "model.layers.0.mlp.up_proj.weight"},
                           12);
}

TEST(Models, FiniteDifferencesMixtralWithAuxAndZLoss) {
  SKIP_UNLESS_CPU_DEVICE();
  ModelSpec s = tiny_spec("mixtral", "",
                          "num_experts: 4 top_k: 2 expert_ffn_hidden_size: 12 "
                          "norm_topk_prob: true aux_loss_coeff: 0.1 z_loss_coeff: 0.05");
  const std::string p = "model.layers.1.block_sparse_moe.";
  check_finite_differences(s,
                           {p + "gate.weight", p + "experts.w1.weight", p + "experts.w3.weight",
                            p + "experts.w2.weight", "model.layers.0.block_sparse_moe.gate.weight",
                            "model.layers.0.post_attention_layernorm.weight"},
                           21);
}

TEST(Models, FiniteDifferencesQwen2MoeSharedExpertAndDenseLayers) {
  SKIP_UNLESS_CPU_DEVICE();
  ModelSpec s = tiny_spec("qwen2_moe", "",
                          "num_experts: 5 top_k: 2 expert_ffn_hidden_size: 10 "
                          "shared_expert_ffn_hidden_size: 14 aux_loss_coeff: 0.1 "
                          "sparse_step: 1 mlp_only_layers: [0]",
                          3);
  ASSERT_FALSE(s.is_moe_layer(0));
  ASSERT_TRUE(s.is_moe_layer(1));
  const std::string p = "model.layers.2.mlp.";
  check_finite_differences(
      s,
      {p + "gate.weight", p + "experts.gate_proj.weight", p + "experts.down_proj.weight",
       p + "shared_expert.gate_proj.weight", p + "shared_expert.down_proj.weight",
       p + "shared_expert_gate.weight", "model.layers.2.self_attn.v_proj.bias",
       "model.layers.0.mlp.up_proj.weight"},
      31);
}

TEST(Models, FiniteDifferencesSigmoidRouterWithBiasAndCapacity) {
  SKIP_UNLESS_CPU_DEVICE();
  ModelSpec s =
      tiny_spec("deepseek_moe", "",
                "num_experts: 4 top_k: 2 expert_ffn_hidden_size: 12 router: \"sigmoid\" "
                "norm_topk_prob: true expert_bias: true aux_loss_coeff: 0.1 "
                "z_loss_coeff: 0.02 capacity_factor: 1.0 shared_expert_ffn_hidden_size: 8");
  const std::string p = "model.layers.1.mlp.";
  check_finite_differences(
      s, {p + "gate.weight", p + "experts.up_proj.weight", p + "shared_expert.up_proj.weight"}, 41);
}

// ---- the router on its own ----------------------------------------------------------------------

struct RouterFixture {
  models::RouterBuffers b;
  RouterFixture(const models::MoeSpec& m, int64_t T) {
    const int64_t E = m.num_experts, k = m.top_k, N = models::router_max_rows(m, T);
    b.logits = Tensor::empty({T, E}, DType::f32);
    b.probs = Tensor::empty({T, E}, DType::f32);
    b.aux_probs = Tensor::empty({T, E}, DType::f32);
    b.lse = Tensor::empty({T}, DType::f32);
    b.selected = Tensor::empty({T, k}, DType::i64);
    b.top_value = Tensor::empty({T, k}, DType::f32);
    b.weight = Tensor::empty({T, k}, DType::f32);
    b.slot = Tensor::empty({T, k}, DType::i64);
    b.counts = Tensor::empty({E}, DType::i64);
    b.group_rows = Tensor::empty({E}, DType::i64);
    b.perm_token = Tensor::empty({N}, DType::i64);
    b.perm_weight = Tensor::empty({N}, DType::f32);
    b.scratch = Tensor::empty({std::max(T * k, E)}, DType::i64);
  }
};

TEST(Models, RouterCapacityDropsLowestProbabilityCopies) {
  ORIGAMI_REQUIRE_TEST_DEVICE();
  for (bool pad : {false, true}) {
    models::MoeSpec m;
    m.num_experts = 3;
    m.top_k = 2;
    m.capacity_factor = 0.5;  // capacity = ceil(7*2/3*0.5) = 3
    m.pad_to_capacity = pad;
    m.norm_topk_prob = true;
    const int64_t T = 7, E = 3, k = 2;
    RouterFixture f(m, T);
    f.b.logits.copy_from(test::random_tensor({T, E}, DType::f32, 5, -2, 2));
    models::route_forward(m, T, nullptr, f.b);
    const int64_t cap = models::router_capacity(m, T);
    ASSERT_EQ(cap, 3);
    // Naive: per expert, the copies choosing it, by probability descending; keep `cap`.
    std::vector<int64_t> kept_rows(E, 0);
    for (int64_t e = 0; e < E; ++e) {
      std::vector<std::pair<double, int64_t>> c;
      for (int64_t t = 0; t < T; ++t)
        for (int64_t j = 0; j < k; ++j)
          if (f.b.selected.item_at(t * k + j) == e) c.push_back({-f.b.probs.item_at(t * E + e), t});
      std::sort(c.begin(), c.end());
      std::vector<int64_t> keep;
      for (size_t i = 0; i < c.size() && int64_t(i) < cap; ++i) keep.push_back(c[i].second);
      std::sort(keep.begin(), keep.end());
      kept_rows[size_t(e)] = int64_t(keep.size());
      // The rows of expert e in the permuted order are exactly those tokens, in token order.
      int64_t start = 0;
      for (int64_t x = 0; x < e; ++x) start += int64_t(f.b.group_rows.item_at(x));
      for (size_t i = 0; i < keep.size(); ++i)
        EXPECT_EQ(int64_t(f.b.perm_token.item_at(start + int64_t(i))), keep[i]) << "expert " << e;
      EXPECT_EQ(int64_t(f.b.group_rows.item_at(e)), pad ? cap : int64_t(keep.size()));
      for (int64_t i = int64_t(keep.size()); pad && i < cap; ++i)
        EXPECT_EQ(f.b.perm_weight.item_at(start + i), 0.0) << "padding row has weight 0";
    }
    EXPECT_EQ(f.b.rows, pad ? E * cap : kept_rows[0] + kept_rows[1] + kept_rows[2]);
  }
}

TEST(Models, RouterBackwardMatchesFiniteDifferences) {
  ORIGAMI_REQUIRE_TEST_DEVICE();
  for (int variant = 0; variant < 4; ++variant) {
    models::MoeSpec m;
    m.num_experts = 5;
    m.top_k = 2;
    m.router = variant >= 2 ? models::RouterKind::sigmoid : models::RouterKind::softmax;
    m.norm_topk_prob = variant % 2 == 0;
    m.z_loss_coeff = 0.3;
    const int64_t T = 6, E = 5, k = 2;
    RouterFixture f(m, T);
    Tensor logits = test::random_tensor({T, E}, DType::f32, 40 + uint64_t(variant), -2, 2);
    Tensor c = test::random_tensor({T, k}, DType::f32, 50, -1, 1);  // d loss / d weight
    std::vector<double> aux(static_cast<size_t>(E), 0.0);
    for (int64_t e = 0; e < E; ++e) aux[size_t(e)] = 0.1 * double(e + 1);
    // loss = sum c * weight + sum aux_e * aux_probs + z
    auto loss = [&](const Tensor& l) {
      f.b.logits.copy_from(l);
      double L = models::route_forward(m, T, nullptr, f.b);
      for (int64_t i = 0; i < T * k; ++i) L += c.item_at(i) * f.b.weight.item_at(i);
      for (int64_t i = 0; i < T * E; ++i) L += aux[size_t(i % E)] * f.b.aux_probs.item_at(i);
      return L;
    };
    loss(logits);
    std::vector<float> drow(size_t(f.b.rows), 0.0f);
    for (int64_t i = 0; i < T * k; ++i) drow[size_t(f.b.slot.item_at(i))] = float(c.item_at(i));
    std::vector<float> dl(size_t(T * E));
    models::route_backward(m, T, f.b, drow.data(), aux.data(), dl.data());
    double worst = 0, scale = 0;
    for (int64_t i = 0; i < T * E; ++i) {
      const double h = 1e-3, x = logits.item_at(i);
      logits.set_at(i, x + h);
      const double lp = loss(logits);
      logits.set_at(i, x - h);
      const double lm = loss(logits);
      logits.set_at(i, x);
      worst = std::max(worst, std::abs((lp - lm) / (2 * h) - dl[size_t(i)]));
      scale = std::max(scale, std::abs(double(dl[size_t(i)])));
    }
    EXPECT_LE(worst / scale, test::kFiniteDifferenceTolerance) << "variant " << variant;
  }
}

// ---- recompute, allocation, memory plan -------------------------------------------------------

ModelSpec moe_mixed_spec() {
  return tiny_spec("qwen2_moe", "",
                   "num_experts: 4 top_k: 2 expert_ffn_hidden_size: 10 "
                   "shared_expert_ffn_hidden_size: 14 aux_loss_coeff: 0.05 z_loss_coeff: 0.01 "
                   "sparse_step: 2",
                   3);
}

TEST(Models, RecomputeIsBitIdentical) {
  SKIP_UNLESS_CPU_DEVICE();
  for (DType dt : test::float_dtypes()) {
    std::vector<float> grads[2];
    double losses[2];
    for (int rc = 0; rc < 2; ++rc) {
      DecoderOptions o;
      o.batch = 2;
      o.seq = 7;
      o.compute = dt;
      o.recompute = rc == 1;
      Decoder dec(moe_mixed_spec(), o);
      dec.params().init_random(3, 0.1);
      dec.sync_compute_weights();
      Batch b = random_batch(2, 7, 37, 8);
      dec.grads().zero();
      losses[rc] = dec.forward_backward(b.ids, b.targets).loss;
      grads[rc] = dec.grads().flat().to_float_vector();
    }
    EXPECT_EQ(losses[0], losses[1]) << dtype_name(dt);
    ASSERT_EQ(grads[0].size(), grads[1].size());
    EXPECT_EQ(std::memcmp(grads[0].data(), grads[1].data(), grads[0].size() * sizeof(float)), 0)
        << dtype_name(dt) << ": gradients differ with recompute";
  }
}

TEST(Models, TrainingStepAllocatesNoTensorMemory) {
  SKIP_UNLESS_CPU_DEVICE();
  for (bool recompute : {false, true}) {
    for (DType dt : test::float_dtypes()) {
      DecoderOptions o;
      o.batch = 2;
      o.seq = 6;
      o.compute = dt;
      o.recompute = recompute;
      const ModelSpec spec = moe_mixed_spec();
      Decoder dec(spec, o);
      dec.params().init_random(4, 0.1);
      dec.sync_compute_weights();
      Batch b = random_batch(2, 6, 37, 9);
      ops::AdamWParams p;
      auto step = [&] {
        dec.grads().zero();
        dec.forward_backward(b.ids, b.targets);
        dec.adamw_step(p);
        p.step += 1;
      };
      step();  // warm-up (op caches)
      // Check that counting works at all: one tensor allocated = one count.
      g_allocs = 0;
      g_count_allocs = true;
      { Tensor probe = Tensor::empty({16}, DType::f32); }
      g_count_allocs = false;
      ASSERT_EQ(g_allocs.load(), 1) << "the allocation counter does not see Tensor::empty";
      g_allocs = 0;
      g_count_allocs = true;
      step();
      step();
      g_count_allocs = false;
      EXPECT_EQ(g_allocs.load(), 0) << dtype_name(dt) << (recompute ? " recompute" : "")
                                    << ": tensor memory allocated inside a training step";
    }
  }
}

// The plan of every rank of a 64-rank layout (attention TP8 x PP4 x DP2, experts EP8 x EDP2,
// sequence parallel), computed in one process from ShardSpec values, no communicators: the
// ranks of one data-parallel replica hold the whole model once (counting each TP-replicated
// tensor once), and an inference plan holds only compute weights, activations, host buffers and
// the KV cache.
TEST(Models, MemoryPlanOfA64RankLayoutWithoutCommunicators) {
  SKIP_UNLESS_CPU_DEVICE();
  ModelSpec s = moe_mixed_spec();
  s.layers = 8;
  s.heads = 8;
  s.kv_heads = 8;
  s.vocab = 64;
  s.ffn = 16;
  s.moe.num_experts = 8;
  s.moe.sparse_step = 1;
  s.moe.aux_loss_coeff = 0;
  const int tp = 8, pp = 4, ep = 8;
  DecoderOptions o;
  o.batch = 1;
  o.seq = 16;
  int64_t held = 0, expert_held = 0;
  for (int stage = 0; stage < pp; ++stage)
    for (int t = 0; t < tp; ++t) {  // one data-parallel replica: the ep rank runs with tp here
      models::ShardSpec sh;
      sh.tp = tp;
      sh.tp_rank = t;
      sh.ep = ep;
      sh.ep_rank = t;
      sh.etp = 1;
      sh.layer_begin = stage * 2;
      sh.layer_end = stage * 2 + 2;
      sh.sequence_parallel = true;
      const MemoryPlan plan = Decoder::memory_plan(s, o, sh);
      EXPECT_GT(plan.arena_bytes("parameters"), 0u);
      const models::ParameterLayout layout(s, sh);
      for (const models::ParamEntry& e : layout.entries()) {
        if (!e.owner) continue;
        held += e.numel;
        if (e.is_expert()) expert_held += e.numel;
      }
    }
  const models::ParameterLayout whole(s);
  int64_t whole_experts = 0;
  for (const models::ParamEntry& e : whole.entries())
    if (e.is_expert()) whole_experts += e.numel;
  EXPECT_EQ(expert_held, whole_experts);
  EXPECT_EQ(held, whole.parameter_count());  // replicated tensors: one owner per TP group
  o.inference = true;
  o.infer.kv_blocks = 8;
  o.infer.max_context = 32;
  o.infer.max_sequences = 2;
  models::ShardSpec first;
  first.tp = tp;
  first.layer_end = 2;
  const MemoryPlan inf = Decoder::memory_plan(s, o, first);
  EXPECT_EQ(inf.arena_bytes("parameters"), 0u);
  EXPECT_EQ(inf.arena_bytes("gradients"), 0u);
  EXPECT_GT(inf.arena_bytes("kv cache"), 0u);
  // two layers of K and V: 8 blocks x 16 tokens x 1 KV head (8 / tp) x head_dim f32
  EXPECT_EQ(inf.arena_bytes("kv cache"), size_t(2 * 2 * 8 * 16 * 1 * s.head_dim * 4));
}

TEST(Models, MemoryPlanIsPrintedAndRecomputeSavesActivations) {
  ORIGAMI_REQUIRE_TEST_DEVICE();
  DecoderOptions o;
  o.batch = 4;
  o.seq = 16;
  const ModelSpec s = moe_mixed_spec();
  const MemoryPlan full = Decoder::memory_plan(s, o);
  o.recompute = true;
  const MemoryPlan rc = Decoder::memory_plan(s, o);
  EXPECT_LT(rc.arena_bytes("activations"), full.arena_bytes("activations"));
  EXPECT_EQ(rc.arena_bytes("parameters"), full.arena_bytes("parameters"));
  models::ParameterLayout layout(s);
  EXPECT_GE(full.arena_bytes("parameters"), size_t(layout.parameter_count()) * 4);
  EXPECT_EQ(full.arena_bytes("optimizer state"), 2 * full.arena_bytes("parameters"));
  o.compute = DType::bf16;
  Decoder dec(s, o);
  std::ostringstream os;
  dec.print_plan(os);
  for (const char* a : {"parameters", "gradients", "compute weights", "optimizer state",
                        "activations", "host", "total"})
    EXPECT_NE(os.str().find(a), std::string::npos) << a << " missing from:\n" << os.str();
}

TEST(Models, ParameterInitIsDeterministic) {
  ORIGAMI_REQUIRE_TEST_DEVICE();
  const ModelSpec s = moe_mixed_spec();
  models::ParameterLayout layout(s);
  models::ParameterBuffer a(layout, DType::f32), b(layout, DType::f32);
  a.init_random(7, 0.02);
  b.init_random(7, 0.02);
  EXPECT_EQ(a.flat().to_float_vector(), b.flat().to_float_vector());
  EXPECT_EQ(a.get("model.norm.weight").item_at(0), 1.0);
  EXPECT_EQ(a.get("model.layers.0.self_attn.q_proj.bias").item_at(3), 0.0);
  const Tensor& w = a.get("model.layers.1.mlp.experts.gate_proj.weight");
  EXPECT_EQ(w.shape(), (Shape{4, 10, 24}));
  double sum2 = 0;
  for (int64_t i = 0; i < w.numel(); ++i) sum2 += w.item_at(i) * w.item_at(i);
  EXPECT_NEAR(std::sqrt(sum2 / double(w.numel())), 0.02, 0.002);
}

// ---- Hugging Face import / export ---------------------------------------------------------------

TEST(Models, HfExportImportRoundTrip) {
  ORIGAMI_REQUIRE_TEST_DEVICE();
  const std::string dir = make_temp_dir("origami_hf_export");
  for (const ModelSpec& s : {moe_mixed_spec(),
                             tiny_spec("mixtral", "sliding_window: 4",
                                       "num_experts: 3 top_k: 1 expert_ffn_hidden_size: 6 "
                                       "aux_loss_coeff: 0.01"),
                             tiny_spec("llama", "tie_embeddings: true")}) {
    models::ParameterLayout layout(s);
    models::ParameterBuffer p(layout, DType::f32);
    p.init_random(9, 0.05);
    const std::string d = dir + "/" + models::family_name(s.family);
    models::export_hf(d, s, p, DType::f32, 20000);  // small shards: exercises the index
    const ModelSpec back = models::spec_from_hf_config(d);
    EXPECT_EQ(back.str(), s.str());
    EXPECT_EQ(back.tie_embeddings, s.tie_embeddings);
    EXPECT_EQ(back.qkv_bias, s.qkv_bias);
    EXPECT_EQ(back.sliding_window, s.sliding_window);
    EXPECT_EQ(back.moe.aux_loss_coeff, s.moe.aux_loss_coeff);
    models::ParameterBuffer q(models::ParameterLayout(back), DType::f32);
    models::load_hf_weights(d, q);
    EXPECT_EQ(p.flat().to_float_vector(), q.flat().to_float_vector()) << s.str();
  }
  fs::remove_all(dir);
}

TEST(Models, HfImportErrorsNameTheTensors) {
  ORIGAMI_REQUIRE_TEST_DEVICE();
  const std::string dir = make_temp_dir("origami_hf_errors");
  const ModelSpec s = tiny_spec("mixtral", "", "num_experts: 3 top_k: 2 expert_ffn_hidden_size: 6");
  models::ParameterLayout layout(s);
  models::ParameterBuffer p(layout, DType::f32);
  NamedTensors all = models::to_hf_tensors(p);
  auto expect_error = [&](const NamedTensors& t, const std::vector<std::string>& parts) {
    write_safetensors(dir + "/model.safetensors", t);
    models::ParameterBuffer q(layout, DType::f32);
    try {
      models::load_hf_weights(dir, q);
      ADD_FAILURE() << "no error";
    } catch (const Error& e) {
      for (const std::string& part : parts)
        EXPECT_NE(std::string(e.what()).find(part), std::string::npos)
            << "'" << part << "' not in: " << e.what();
    }
  };
  NamedTensors missing(all.begin() + 1, all.end());
  expect_error(missing, {"missing tensors", all[0].first});
  NamedTensors extra = all;
  extra.emplace_back("model.layers.0.block_sparse_moe.experts.3.w1.weight", all[5].second);
  expect_error(extra, {"unexpected tensors", "experts.3.w1.weight"});
  NamedTensors wrong = all;
  wrong[2].second = Tensor::zeros({5}, DType::f32);
  expect_error(wrong, {"shape mismatches", wrong[2].first, "[5]"});

  const std::string bad_arch = R"({"architectures": ["GPT2LMHeadModel"], "vocab_size": 10})";
  try {
    models::spec_from_hf_config_text(bad_arch, "cfg.json");
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("GPT2LMHeadModel"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("MixtralForCausalLM"), std::string::npos) << e.what();
  }
  EXPECT_THROW(models::spec_from_hf_config_text(
                   R"({"architectures": ["LlamaForCausalLM"], "hidden_size": 8})", "cfg.json"),
               Error);  // vocab_size missing
  fs::remove_all(dir);
}

TEST(Models, BadInputsThrow) {
  ORIGAMI_REQUIRE_TEST_DEVICE();
  DecoderOptions o;
  o.batch = 1;
  o.seq = 4;
  Decoder dec(tiny_spec("llama"), o);
  Tensor ids = Tensor::zeros({1, 5}, DType::i64);
  EXPECT_THROW(dec.forward(ids, ids), Error);
  Tensor f = Tensor::zeros({1, 4}, DType::f32);
  EXPECT_THROW(dec.forward(f, f), Error);
  o.compute = DType::f16;
  EXPECT_THROW(Decoder(tiny_spec("llama"), o), Error);
}

// ---- golden: against transformers -------------------------------------------------------------

class ModelsGolden : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = make_temp_dir("origami_hf_golden");
    const std::string cmd = std::string("\"") + ORIGAMI_PYTHON + "\" \"" + ORIGAMI_SOURCE_DIR +
                            "/tests/golden/hf_models.py\" \"" + dir_ +
                            "\" llama llama_tied mixtral qwen2_moe > \"" + dir_ + "/log.txt\" 2>&1";
    python_rc_ = std::system(cmd.c_str());
  }
  static void TearDownTestSuite() {
    if (!dir_.empty() && !std::getenv("ORIGAMI_KEEP_GOLDEN")) fs::remove_all(dir_);
  }
  static std::string dir_;
  static int python_rc_;
};
std::string ModelsGolden::dir_;
int ModelsGolden::python_rc_ = -1;

struct GoldenTolerances {
  double logits, loss, grad, param, param_abs;
};

void check_against_transformers(const std::string& root, DType dtype, GoldenTolerances tol) {
  const std::string model_dir = root + "/model";
  ModelSpec spec = models::spec_from_hf_config(model_dir);
  // The window the reference used, in our convention (window + 1 keys per query).
  const double window_keys = test::read_npy(root + "/window_keys.npy")[0];
  if (window_keys > 0) spec.sliding_window = int64_t(window_keys) - 1;
  const test::HostArray ids = test::read_npy(root + "/ids.npy");
  const test::HostArray targets = test::read_npy(root + "/targets.npy");
  const test::HostArray losses = test::read_npy(root + "/loss.npy");
  DecoderOptions o;
  o.batch = ids.shape[0];
  o.seq = ids.shape[1];
  o.compute = dtype;
  o.device = test::test_device();
  Decoder dec(spec, o);
  models::load_hf_weights(model_dir, dec.params());
  dec.sync_compute_weights();
  const Tensor tid = to_i64(ids), ttg = to_i64(targets);
  const std::string what = spec.str() + " " + dtype_name(dtype);

  ops::AdamWParams adam;
  adam.lr = 1e-3f;
  adam.beta1 = 0.9f;
  adam.beta2 = 0.95f;
  adam.eps = 1e-8f;
  adam.weight_decay = 0.1f;
  const int64_t steps = losses.numel() - 1;
  double worst_loss = 0, worst_grad = 0, worst_param = 0;
  std::string worst_grad_name, worst_param_name;
  for (int64_t step = 0; step <= steps; ++step) {
    models::LossInfo info;
    if (step < steps) {
      dec.grads().zero();
      info = dec.forward_backward(tid, ttg);
    } else {
      info = dec.forward(tid, ttg);
    }
    const double lerr = std::abs(info.loss - losses[step]) / std::abs(losses[step]);
    worst_loss = std::max(worst_loss, lerr);
    EXPECT_LE(lerr, tol.loss) << what << ": loss at step " << step << " " << info.loss
                              << " vs transformers " << losses[step];
    if (step == 0) {
      const Err le = compare(dec.logits(), test::read_npy(root + "/logits.npy"));
      EXPECT_LE(le.rel(), tol.logits) << what << ": logits";
      const test::HostArray aux = test::read_npy(root + "/aux.npy");
      if (spec.is_moe()) {
        EXPECT_NEAR(info.aux, aux[0], (dtype == DType::f32 ? 1e-5 : 1e-2) * aux[0])
            << what << ": load-balancing loss";
      }
      int64_t n = 0;
      for (const auto& [name, g] : models::to_hf_tensors(dec.grads())) {
        const Err e = compare(g, test::read_npy(root + "/grads/" + name + ".npy"));
        EXPECT_LE(e.rel(), tol.grad) << what << ": gradient of " << name;
        if (e.rel() > worst_grad) worst_grad = e.rel(), worst_grad_name = name;
        ++n;
      }
      int64_t files = 0;
      for (const auto& f : fs::directory_iterator(root + "/grads"))
        files += f.path().extension() == ".npy";
      EXPECT_EQ(n, files) << what << ": transformers has parameters the model does not map";
      std::printf("[ models ] %s: logits rel err %.2e, loss %.6f (ce %.6f aux %.6f)\n",
                  what.c_str(), le.rel(), info.loss, info.ce, info.aux);
    }
    if (step < steps) {
      adam.step = step + 1;
      dec.adamw_step(adam);
    }
  }
  for (const auto& [name, p] : models::to_hf_tensors(dec.params())) {
    const Err e = compare(p, test::read_npy(root + "/params/" + name + ".npy"));
    EXPECT_LE(e.max_abs, tol.param * e.max_ref + tol.param_abs)
        << what << ": parameter " << name << " after " << steps << " AdamW steps, max abs err "
        << e.max_abs << ", max |value| " << e.max_ref;
    if (e.rel() > worst_param) worst_param = e.rel(), worst_param_name = name;
  }
  std::printf(
      "[ models ] %s: worst loss rel err %.2e over %lld steps, worst grad rel err %.2e (%s), "
      "worst param rel err %.2e (%s)\n",
      what.c_str(), worst_loss, (long long)steps + 1, worst_grad, worst_grad_name.c_str(),
      worst_param, worst_param_name.c_str());
}

void run_golden(const std::string& dir, int rc, const std::string& family, DType dtype) {
  ASSERT_EQ(rc, 0) << "tests/golden/hf_models.py failed; see " << dir << "/log.txt";
  std::ifstream st(dir + "/" + family + "/status.txt");
  std::string status;
  std::getline(st, status);
  if (status.rfind("unavailable", 0) == 0) GTEST_SKIP() << family << ": " << status;
  ASSERT_EQ(status, "ok") << family;
  const GoldenTolerances f32{kLogitsF32, kLossF32, kGradF32, kParamF32, 0.0};
  const GoldenTolerances bf16{kLogitsBf16, kLossBf16, kGradBf16, kParamBf16, kParamAbsBf16};
  check_against_transformers(dir + "/" + family, dtype, dtype == DType::f32 ? f32 : bf16);
}

TEST_F(ModelsGolden, LlamaF32) {
  run_golden(dir_, python_rc_, "llama", DType::f32);
}
TEST_F(ModelsGolden, LlamaBf16) {
  run_golden(dir_, python_rc_, "llama", DType::bf16);
}
TEST_F(ModelsGolden, LlamaTiedF32) {
  run_golden(dir_, python_rc_, "llama_tied", DType::f32);
}
TEST_F(ModelsGolden, MixtralF32) {
  run_golden(dir_, python_rc_, "mixtral", DType::f32);
}
TEST_F(ModelsGolden, MixtralBf16) {
  run_golden(dir_, python_rc_, "mixtral", DType::bf16);
}
TEST_F(ModelsGolden, Qwen2MoeF32) {
  run_golden(dir_, python_rc_, "qwen2_moe", DType::f32);
}
TEST_F(ModelsGolden, Qwen2MoeBf16) {
  run_golden(dir_, python_rc_, "qwen2_moe", DType::bf16);
}

}  // namespace
}  // namespace origami
