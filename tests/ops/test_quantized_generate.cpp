// Inference with packed linear weights (models/packed_weights.h over ops/qlinear.h).
//
// Suite QuantizedGenerate: a generator whose linears are quantized round-to-nearest at load
// (int8, int4) gives, row for row over prefill chunks and decode steps, the logits of a dense f32
// generator whose linears hold the same weights dequantized (the reference: rtn_quantize then
// QuantizedLinear::dequantize, run through oneDNN) -- within f32 tolerance with f32 activations
// (exact), within a stated looser bound with the int8 activations decode uses; every family
// (experts, shared experts, tied embeddings). With batch invariance a sequence's logits do not
// depend on what else is in the step. Bad settings throw.
// Suite QuantizedGenerateGolden: GPTQ checkpoints written by Python (tests/golden/
// hf_gptq_model.py: the PyTorch GPTQ reference and packer; act-order, symmetric, gptq_v2, 4 and 8
// bits, Llama and Mixtral) load and give the float64 logits of their dequantized weights; one
// loaded into a model of another MLP width stops naming the tensor.
#include <gtest/gtest.h>
#include <stdlib.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include "models/generator.h"
#include "models/gptq.h"
#include "models/hf_import.h"
#include "models/packed_weights.h"
#include "runtime/config.h"
#include "tests/support/test_support.h"

namespace origami {
namespace {

using models::Generator;
using models::GeneratorOptions;
using models::LinearWeights;
using models::ModelSpec;
using models::ParameterBuffer;
using models::ParameterLayout;
using models::SequenceChunk;
using models::WeightMode;
namespace fs = std::filesystem;

// Widths are multiples of 32 (the int kernels' unit): H 64, 4 query heads over 2 KV heads of 16.
ModelSpec spec_of(const std::string& family, const std::string& extra = "",
                  const std::string& moe = "", int layers = 2) {
  std::string text = "model { family: \"" + family +
                     "\" vocab_size: 96 hidden_size: 64 num_heads: 4 num_kv_heads: 2 "
                     "ffn_hidden_size: 96 max_seq_len: 32 num_layers: " +
                     std::to_string(layers) + " " + extra;
  if (!moe.empty()) text += " moe { " + moe + " }";
  text += " }";
  return models::spec_from_config(parse_config(text, "quantized").model());
}

// The weights a packed generator computes with: every linear replaced by its RTN dequantization
// (the mode's bits, the head at 8 bits), as a whole-model f32 buffer.
ParameterBuffer dequantized(const ParameterBuffer& params, WeightMode mode, int64_t group) {
  ParameterBuffer out(params.layout(), DType::f32);
  out.copy_from(params);
  const ParameterLayout& layout = params.layout();
  for (const std::string& name : models::linear_weight_names(layout, true)) {
    const models::ParamEntry& e = layout.entry(name);
    Tensor w = out.get(name);
    const int64_t E = e.is_expert() ? e.shape[0] : 1;
    for (int64_t x = 0; x < E; ++x) {
      Tensor m = e.is_expert() ? w.select(0, x) : w;
      const int64_t rows = m.size(0), cols = m.size(1);
      models::QuantConfig qc;
      qc.bits = name == layout.names().lm_head || mode == WeightMode::int8 ? 8 : 4;
      qc.group_size = models::rtn_group_size(group, cols, name);
      const std::vector<float> host = m.to_float_vector();
      const std::vector<float> deq = models::rtn_quantize(host.data(), rows, cols, qc).dequantize();
      m.copy_from(Tensor::from_vector(deq, {rows, cols}, DType::f32));
    }
  }
  return out;
}

// Max |a - b| over max |b|.
struct Err {
  double max_abs = 0, max_ref = 0;
  void add(const std::vector<float>& a, const std::vector<float>& b) {
    for (size_t i = 0; i < a.size() && i < b.size(); ++i) {
      max_abs = std::max(max_abs, std::abs(double(a[i]) - double(b[i])));
      max_ref = std::max(max_ref, std::abs(double(b[i])));
    }
  }
  double rel() const { return max_abs / std::max(max_ref, 1e-30); }
};

// Two sequences: a joint prefill of 5 and 3 tokens, a chunk of 4 for the second, then decode
// steps; all logits of `a` against `b`.
Err compare_steps(Generator& a, Generator& b, int64_t vocab) {
  std::vector<int64_t> seq[2];
  for (int64_t i = 0; i < 12; ++i) {
    seq[0].push_back((7 * i + 3) % vocab);
    seq[1].push_back((11 * i + 5) % vocab);
  }
  Err err;
  const auto step = [&](std::vector<SequenceChunk> chunks) {
    err.add(a.step(chunks).to_float_vector(), b.step(chunks).to_float_vector());
  };
  const auto span = [&](int b2, int64_t from, int64_t n) {
    return std::span<const int64_t>(seq[b2].data() + from, size_t(n));
  };
  step({{0, span(0, 0, 5)}, {1, span(1, 0, 3)}});
  step({{1, span(1, 3, 4)}});
  for (int64_t t = 0; t < 5; ++t) step({{0, span(0, 5 + t, 1)}, {1, span(1, 7 + t, 1)}});
  return err;
}

void check_against_dequantized(const ModelSpec& spec, WeightMode mode, int64_t group) {
  ParameterBuffer params(ParameterLayout(spec), DType::f32);
  params.init_random(17, 0.2);
  const ParameterBuffer deq = dequantized(params, mode, group);
  GeneratorOptions go;
  go.max_batch = 2;
  go.max_seq = 16;
  go.all_logits = true;
  go.device = test::test_device();
  Generator ref(spec, deq, go);
  for (bool exact : {true, false}) {
    GeneratorOptions qo = go;
    qo.weights.mode = mode;
    qo.weights.group_size = group;
    qo.weights.exact = exact;
    Generator q(spec, params, qo);
    ref.reset();
    const Err err = compare_steps(q, ref, spec.vocab);
    // exact: f32 rounding only. int8 activations (blocks of 32, max|x|/127, as llama.cpp's
    // q8_0): every input is off by up to half a step of its block (0.4% of the block's largest),
    // which these random layers (weights of std 0.2) amplify to a few % of the largest logit;
    // the kernels' int8 arithmetic itself is checked exactly in test_qlinear.cpp.
    const double tol = exact ? 1e-4 : 1e-1;
    EXPECT_LE(err.rel(), tol) << spec.str() << " " << models::weight_mode_name(mode) << " g"
                              << group << (exact ? " exact" : " int8 activations");
    std::printf("[ quantized ] %s %s g%lld %s: logits vs dequantized dense, rel err %.2e\n",
                spec.str().c_str(), models::weight_mode_name(mode), (long long)group,
                exact ? "exact" : "int8 activations", err.rel());
  }
}

TEST(QuantizedGenerate, Int8AndInt4MatchDequantizedDenseLlama) {
  ORIGAMI_REQUIRE_TEST_DEVICE();
  const ModelSpec spec = spec_of("llama");
  check_against_dequantized(spec, WeightMode::int8, 128);
  check_against_dequantized(spec, WeightMode::int4, 32);
}

TEST(QuantizedGenerate, Int4MatchesDequantizedDenseTiedEmbeddings) {
  ORIGAMI_REQUIRE_TEST_DEVICE();
  check_against_dequantized(spec_of("llama", "tie_embeddings: true"), WeightMode::int4, 64);
}

TEST(QuantizedGenerate, Int4MatchesDequantizedDenseMixtral) {
  ORIGAMI_REQUIRE_TEST_DEVICE();
  check_against_dequantized(
      spec_of("mixtral", "", "num_experts: 4 top_k: 2 expert_ffn_hidden_size: 64"),
      WeightMode::int4, 32);
}

TEST(QuantizedGenerate, Int8MatchesDequantizedDenseQwen2MoeSharedExpert) {
  ORIGAMI_REQUIRE_TEST_DEVICE();
  ModelSpec spec = spec_of("qwen2_moe", "",
                           "num_experts: 4 top_k: 2 expert_ffn_hidden_size: 32 "
                           "shared_expert_ffn_hidden_size: 64 sparse_step: 1 mlp_only_layers: [0]",
                           3);
  spec.qkv_bias = true;
  check_against_dequantized(spec, WeightMode::int8, 32);
}

TEST(QuantizedGenerate, BatchInvariantRowsDoNotDependOnTheBatch) {
  ORIGAMI_REQUIRE_TEST_DEVICE();
  // One sequence decoded alone and among 20 others (steps of 21 rows and more: past the 16-row
  // small-batch kernels) gives bit-identical logits with batch invariance.
  const ModelSpec spec = spec_of("llama");
  ParameterBuffer params(ParameterLayout(spec), DType::f32);
  params.init_random(3, 0.2);
  for (WeightMode mode : {WeightMode::int8, WeightMode::int4}) {
    GeneratorOptions go;
    go.max_batch = 21;
    go.max_seq = 16;
    go.max_step_tokens = 21 * 8;
    go.device = test::test_device();
    go.batch_invariant = true;
    go.weights.mode = mode;
    Generator gen(spec, params, go);
    const std::vector<int64_t> prompt = {1, 2, 3, 4, 5, 6, 7, 8};
    std::vector<std::vector<int64_t>> others(20);
    for (int64_t i = 0; i < 20; ++i)
      for (int64_t t = 0; t < 8; ++t) others[size_t(i)].push_back((i * 13 + t * 7) % spec.vocab);
    std::vector<float> alone, crowded;
    {
      gen.reset();
      alone = gen.step({{{0, prompt}}}).to_float_vector();
    }
    {
      gen.reset();
      std::vector<SequenceChunk> chunks = {{0, prompt}};
      for (int64_t i = 0; i < 20; ++i) chunks.push_back({i + 1, others[size_t(i)]});
      const std::vector<float> all = gen.step(chunks).to_float_vector();
      crowded.assign(all.begin(), all.begin() + spec.vocab);
    }
    EXPECT_EQ(alone, crowded) << models::weight_mode_name(mode);
  }
}

TEST(QuantizedGenerate, BadSettingsThrow) {
  ORIGAMI_REQUIRE_TEST_DEVICE();
  EXPECT_THROW(models::parse_weight_mode("int3"), Error);
  // A layer 24 wide cannot be packed (the kernels need multiples of 32).
  const ModelSpec spec = models::spec_from_config(
      parse_config("model { family: \"llama\" vocab_size: 37 hidden_size: 24 num_heads: 3 "
                   "num_kv_heads: 1 ffn_hidden_size: 20 max_seq_len: 32 num_layers: 1 }",
                   "narrow")
          .model());
  ParameterBuffer params(ParameterLayout(spec), DType::f32);
  GeneratorOptions go;
  go.weights.mode = WeightMode::int4;
  EXPECT_THROW(Generator(spec, params, go), Error);
  // A generator with packed weights whose loader never filled them reports what is missing.
  GeneratorOptions ok;
  ok.weights.mode = WeightMode::int8;
  Generator gen(spec_of("llama"), ok);
  EXPECT_FALSE(gen.packed_weights().missing().empty());
}

// ---- GPTQ checkpoints written by Python --------------------------------------------------------

class QuantizedGenerateGolden : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    std::string tmpl = (fs::temp_directory_path() / "origami_gptq_model_XXXXXX").string();
    const char* d = mkdtemp(tmpl.data());
    dir_ = d ? std::string(d) : std::string();
    const std::string cmd = std::string("\"") + ORIGAMI_PYTHON + "\" \"" + ORIGAMI_SOURCE_DIR +
                            "/tests/golden/hf_gptq_model.py\" \"" + dir_ + "\" " + kCases +
                            " > \"" + dir_ + "/log.txt\" 2>&1";
    python_rc_ = std::system(cmd.c_str());
  }
  static void TearDownTestSuite() {
    if (!dir_.empty() && !std::getenv("ORIGAMI_KEEP_GOLDEN")) fs::remove_all(dir_);
  }
  static constexpr const char* kCases =
      "llama-4-32-act llama-4-64-sym-v2 llama-8-32 llama-4-32 mixtral-4-32-act";
  static std::string dir_;
  static int python_rc_;
};
std::string QuantizedGenerateGolden::dir_;
int QuantizedGenerateGolden::python_rc_ = -1;

TEST_F(QuantizedGenerateGolden, GptqCheckpointsGiveTheLogitsOfTheirDequantizedWeights) {
  ORIGAMI_REQUIRE_TEST_DEVICE();
  ASSERT_EQ(python_rc_, 0) << "tests/golden/hf_gptq_model.py failed; see " << dir_ << "/log.txt";
  std::string cases = kCases;
  for (size_t p = 0; p < cases.size();) {
    size_t q = cases.find(' ', p);
    if (q == std::string::npos) q = cases.size();
    const std::string name = cases.substr(p, q - p);
    p = q + 1;
    const std::string root = dir_ + "/" + name, model = root + "/model";
    const ModelSpec spec = models::spec_from_hf_config(model);
    const test::HostArray ids = test::read_npy(root + "/ids.npy");     // [2,S]
    const test::HostArray ref = test::read_npy(root + "/logits.npy");  // [2,S,V]
    const int64_t S = ids.shape[1], V = spec.vocab;
    for (bool exact : {true, false}) {
      GeneratorOptions go;
      go.max_batch = 2;
      go.max_seq = S;
      go.all_logits = true;
      go.device = test::test_device();
      go.weights.quantized = models::gptq_quantized_names(model, spec);
      go.weights.exact = exact;
      ASSERT_FALSE(go.weights.quantized.empty()) << name;
      Generator gen(spec, go);
      models::load_hf_weights(model, gen.weights(), &gen.packed_weights());
      ASSERT_TRUE(gen.packed_weights().missing().empty()) << name;
      std::vector<int64_t> seq[2];
      for (int64_t b = 0; b < 2; ++b)
        for (int64_t s = 0; s < S; ++s) seq[b].push_back(int64_t(ids[b * S + s]));
      const std::vector<float> got = gen.step({{{0, seq[0]}, {1, seq[1]}}}).to_float_vector();
      Err err;
      err.add(got, std::vector<float>(ref.data.begin(), ref.data.end()));
      ASSERT_EQ(int64_t(got.size()), 2 * S * V);
      // exact: f32 against float64 (1e-4 of the largest logit); int8 activations as above.
      EXPECT_LE(err.rel(), exact ? 1e-4 : 3e-2) << name << (exact ? " exact" : " default kernels");
      if (exact && name == "llama-4-32") {
        // A config that does not match the tensors: the load stops naming the tensor.
        ModelSpec wrong = spec;
        wrong.ffn = 128;
        GeneratorOptions wo = go;
        wo.weights.quantized = models::gptq_quantized_names(model, wrong);
        Generator bad(wrong, wo);
        try {
          models::load_hf_weights(model, bad.weights(), &bad.packed_weights());
          ADD_FAILURE() << "a GPTQ folder loaded into a model of another MLP width";
        } catch (const Error& e) {
          const std::string what = e.what();
          EXPECT_TRUE(what.find("model.layers.0.mlp.") != std::string::npos &&
                      what.find("the model expects") != std::string::npos)
              << what;
        }
      }
      std::printf(
          "[ gptq ] %s %s: logits vs transformers on the dequantized weights, rel err "
          "%.2e\n",
          name.c_str(), exact ? "exact" : "default kernels", err.rel());
    }
  }
}

}  // namespace
}  // namespace origami
