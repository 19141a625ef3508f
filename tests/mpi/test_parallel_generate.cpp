// The inference matrix: greedy generation and step logits under each layout must equal one rank's
// (fp32: logits within 1e-5 of their largest magnitude, the same greedy tokens). The single-rank
// reference (a whole-model Generator) runs in every process on the same weights; the parallel
// Generator splits the model over the ranks as training does (TP heads, shared KV heads and
// vocabulary; PP stages with microbatches in flight; experts over EP x ETP folded with attention
// TP). Weights come from a whole buffer, from a Hugging Face folder each rank reads its shard of,
// or from a checkpoint saved by training under another layout.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "models/generator.h"
#include "models/gptq.h"
#include "models/hf_import.h"
#include "models/packed_weights.h"
#include "models/parallel_model.h"
#include "mpi_test.h"
#include "parallel/process_groups.h"
#include "parallel/rank_groups.h"
#include "runtime/checkpoint.h"
#include "runtime/safetensors.h"

namespace origami {
namespace {

namespace fs = std::filesystem;
using test::mpi_world;

constexpr double kTol = 1e-5;  // fp32, of the largest logit magnitude

struct Case {
  std::string name;
  int world = 1, tp = 1, pp = 1, ep = 1, etp = 0;
  bool moe = false;
  int experts = 4;
  int64_t window = 0;  // sliding window (Mixtral-style)
  int microbatches = 0;
  std::string source = "buffer";  // buffer, hf, checkpoint, gptq (a GPTQ folder)
  // Packed linears (models/packed_weights.h): the reference is one rank with the same packing.
  models::WeightMode weights = models::WeightMode::dense;
  bool quantized_dims() const { return weights != models::WeightMode::dense || source == "gptq"; }
};

models::ModelSpec spec_of(const Case& c) {
  models::ModelSpec s;
  s.family = c.moe ? models::Family::mixtral : models::Family::llama;
  s.vocab = 96;
  s.hidden = 32;
  s.layers = 4;
  s.heads = 4;
  s.kv_heads = 2;  // TP4: each KV head shared by two TP ranks
  s.head_dim = 8;
  s.ffn = 48;
  s.rope.head_dim = 8;
  s.rope.theta = 10000.0;
  s.rms_eps = 1e-5;
  s.max_seq_len = 64;
  s.sliding_window = c.window;
  if (c.moe) {
    s.moe.num_experts = c.experts;
    s.moe.top_k = 2;
    s.moe.expert_ffn = 24;
    s.moe.norm_topk_prob = true;
  }
  if (c.quantized_dims()) {  // packed: every rank's input widths a multiple of 32
    s.hidden = 64;
    s.head_dim = 16;
    s.rope.head_dim = 16;
    s.ffn = 128;
    s.moe.expert_ffn = 64;
  }
  return s;
}

// A GPTQ-layout folder of the whole model: every linear of the layers quantized round-to-nearest
// (4 bits, groups of 32) and packed (models/gptq.h), the rest f32, config.json with its
// quantization_config.
void write_gptq_folder(const std::string& dir, const models::ModelSpec& spec,
                       const models::ParameterBuffer& whole) {
  fs::remove_all(dir);
  fs::create_directories(dir);
  NamedTensors tensors;
  models::QuantConfig qc;
  qc.bits = 4;
  qc.group_size = 32;
  for (const auto& [name, t] : models::to_hf_tensors(whole)) {
    const std::string stem = name.substr(0, name.size() - std::string(".weight").size());
    bool linear = false;  // the decoder layers' projections (not routers, norms or embeddings)
    for (const char* p : {"_proj", ".w1", ".w2", ".w3"})
      linear = linear || (name.find(".layers.") != std::string::npos && stem.ends_with(p));
    if (!linear) {
      tensors.emplace_back(name, t.contiguous());
      continue;
    }
    const std::vector<float> w = t.to_float_vector();
    const models::QuantizedLinear q = models::rtn_quantize(w.data(), t.size(0), t.size(1), qc);
    const models::GptqTensors p = models::pack_gptq(q);
    tensors.emplace_back(stem + ".qweight", p.qweight);
    tensors.emplace_back(stem + ".qzeros", p.qzeros);
    tensors.emplace_back(stem + ".scales", p.scales);
    tensors.emplace_back(stem + ".g_idx", p.g_idx);
  }
  write_safetensors(dir + "/model.safetensors", tensors, {{"format", "pt"}});
  models::GptqFormat f;
  f.bits = 4;
  f.group_size = 32;
  f.sym = false;
  std::string config = models::hf_config_json(spec);
  const size_t brace = config.rfind('}');
  config = config.substr(0, brace) +
           ",\n  \"quantization_config\": " + models::gptq_quantization_config_json(f) + "\n}\n";
  std::ofstream(dir + "/config.json") << config;
}

std::vector<std::vector<int64_t>> prompts() {
  std::vector<std::vector<int64_t>> p;
  for (int64_t i = 0; i < 5; ++i) {
    std::vector<int64_t> ids;
    for (int64_t t = 0; t < 3 + 4 * i; ++t) ids.push_back((7 * i + 13 * t + 5) % 96);
    p.push_back(ids);
  }
  return p;
}

models::GeneratorOptions gen_options(const Case& c = {}) {
  models::GeneratorOptions go;
  go.weights.mode = c.weights;
  go.weights.group_size = 32;
  // f32 activations in the int kernels: the TP sums, added in another order, may move an
  // activation by an ulp, which with int8 activations can flip a rounding (the int8 activation
  // path is checked against a reference on one rank: tests/ops/test_quantized_generate.cpp).
  go.weights.exact = true;
  go.max_batch = 5;
  go.max_seq = 48;
  go.max_step_tokens = 24;  // the longest prompts prefill in chunks
  go.kv_block_size = 4;
  return go;
}

// Two steps through the step() API: prefill chunks of three sequences, then a mixed step (one
// decode token and one more chunk). Returns the logits of both, concatenated.
std::vector<float> step_logits(models::Generator& g) {
  g.reset();
  const std::vector<int64_t> a = {1, 2, 3, 4, 5}, b = {9, 8, 7}, c = {40, 41, 42, 43, 44, 45, 46};
  const std::vector<models::SequenceChunk> first = {{0, a}, {1, b}, {2, c}};
  std::vector<float> out = g.step(first).to_float_vector();
  const std::vector<int64_t> d = {17}, e = {60, 61};
  const std::vector<models::SequenceChunk> second = {{1, d}, {2, e}};
  const std::vector<float> more = g.step(second).to_float_vector();
  out.insert(out.end(), more.begin(), more.end());
  return out;
}

void run_case(const Case& c) {
  Communicator& world = mpi_world();
  if (world.size() != c.world) GTEST_SKIP() << "needs " << c.world << " ranks";
  const models::ModelSpec spec = spec_of(c);
  models::ParameterBuffer whole(models::ParameterLayout(spec), DType::f32);
  whole.init_random(7, 0.3);

  models::GenerationConfig gc;
  gc.max_new_tokens = 10;
  gc.sampling.temperature = 0;
  const std::string dir = (fs::temp_directory_path() / ("origami_generate_" + c.name)).string();
  models::GeneratorOptions go = gen_options(c);
  if (c.source == "gptq") {  // rank 0 writes a GPTQ folder; every rank (and the reference) reads it
    if (world.rank() == 0) write_gptq_folder(dir, spec, whole);
    world.barrier();
    go.weights.quantized = models::gptq_quantized_names(dir, spec);
  }
  std::unique_ptr<models::Generator> ref_gen;
  if (c.source == "gptq") {
    ref_gen = std::make_unique<models::Generator>(spec, go);
    models::load_hf_weights(dir, ref_gen->weights(), &ref_gen->packed_weights());
  } else {
    ref_gen = std::make_unique<models::Generator>(spec, whole, go);
  }
  models::Generator& ref = *ref_gen;
  const std::vector<models::GenerationResult> want = ref.generate(prompts(), gc);
  const std::vector<float> want_logits = step_logits(ref);

  ParallelLayout pl;
  pl.tp = c.tp;
  pl.pp = c.pp;
  pl.ep = c.ep;
  pl.etp = c.etp;
  const RankGroups layout(world.size(), pl);
  ProcessGroups groups = ProcessGroups::create(world, layout);
  models::GeneratorParallel par;
  par.groups = &groups;
  par.layout = &layout;
  par.microbatches = c.microbatches;

  std::unique_ptr<models::Generator> gen;
  if (c.source == "buffer") {
    gen = std::make_unique<models::Generator>(spec, whole, go, par);
  } else if (c.source == "gptq") {
    gen = std::make_unique<models::Generator>(spec, go, par);
    models::load_hf_weights(dir, gen->weights(), &gen->packed_weights());
  } else if (c.source == "hf") {
    // rank 0 writes the folder (bf16 would round: f32), every rank reads its own shard of it
    if (world.rank() == 0) {
      fs::remove_all(dir);
      models::export_hf(dir, spec, whole, DType::f32, 1 << 16);  // several shard files
    }
    world.barrier();
    gen = std::make_unique<models::Generator>(spec, go, par);
    models::load_hf_weights(dir, gen->weights(), &gen->packed_weights());
  } else {
    // Trained (saved) under TP1 x PP1 x DP=world (and EP=world for MoE), loaded under the case's.
    if (world.rank() == 0) fs::remove_all(dir);
    world.barrier();
    {
      ParallelLayout tl;
      tl.ep = c.moe ? world.size() : 1;
      const RankGroups train_layout(world.size(), tl);
      ProcessGroups tg = ProcessGroups::create(world, train_layout);
      models::DecoderOptions dopt;
      dopt.batch = 1;
      dopt.seq = 8;
      models::ParallelOptions po;
      po.layout = tl;
      models::ParallelModel pm(spec, dopt, po, train_layout, tg, 1);
      pm.load_whole(whole);
      CheckpointWriter w(dir, 1, world.rank(), world.size());
      pm.save(w);
      w.write_rank_files();
      world.barrier();
      if (world.rank() == 0) w.commit({{"model", spec.str()}});
      world.barrier();
    }
    gen = std::make_unique<models::Generator>(spec, go, par);
    models::load_training_checkpoint(*CheckpointReader::latest(dir), *gen);
  }
  ASSERT_TRUE(gen->packed_weights().missing().empty()) << c.name;
  if (world.rank() == 0) std::printf("[ %s ]\n%s", c.name.c_str(), gen->describe().c_str());

  const std::vector<models::GenerationResult> got = gen->generate(prompts(), gc);
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < want.size(); ++i) {
    EXPECT_EQ(got[i].tokens, want[i].tokens) << c.name << ": prompt " << i;
    EXPECT_EQ(got[i].reason, want[i].reason) << c.name << ": prompt " << i;
  }
  const std::vector<float> got_logits = step_logits(*gen);
  ASSERT_EQ(got_logits.size(), want_logits.size());
  double max_ref = 0, max_err = 0;
  for (size_t i = 0; i < want_logits.size(); ++i) {
    max_ref = std::max(max_ref, std::abs(double(want_logits[i])));
    max_err = std::max(max_err, std::abs(double(got_logits[i]) - double(want_logits[i])));
  }
  EXPECT_LE(max_err, kTol * max_ref) << c.name;
  if (world.rank() == 0)
    std::printf("[ %s ] greedy tokens equal on %zu prompts; logits max error %.2e (of %.2f)\n",
                c.name.c_str(), want.size(), max_err, max_ref);
  world.barrier();
  if (world.rank() == 0 && c.source != "buffer") fs::remove_all(dir);
}

TEST(ParallelGenerate, TP2) {
  run_case({"tp2", 2, 2});
}
TEST(ParallelGenerate, TP4SharedKvHeads) {
  run_case({"tp4", 4, 4});
}
TEST(ParallelGenerate, PP2TwoMicrobatchesInFlight) {
  run_case({"pp2", 2, 1, 2, 1, 0, false, 4, 0, 2});
}
TEST(ParallelGenerate, TP2xPP2FromHuggingFaceFolder) {
  run_case({"tp2_pp2_hf", 4, 2, 2, 1, 0, false, 4, 0, 3, "hf"});
}
TEST(ParallelGenerate, EP2SlidingWindow) {
  run_case({"ep2", 2, 1, 1, 2, 0, true, 4, 6});
}
TEST(ParallelGenerate, TP2FoldedWithEP4FromCheckpoint) {
  run_case({"tp2_ep4_ckpt", 4, 2, 1, 4, 1, true, 4, 0, 0, "checkpoint"});
}
TEST(ParallelGenerate, EP3) {
  run_case({"ep3", 3, 1, 1, 3, 0, true, 6});
}
TEST(ParallelGenerate, PP3FromCheckpoint) {
  run_case({"pp3_ckpt", 3, 1, 3, 1, 0, false, 4, 0, 0, "checkpoint"});
}
// Packed linears: int4 / int8 quantized at load on each rank's slice, GPTQ tensors cut to it.
TEST(ParallelGenerate, TP2Int4) {
  run_case({"tp2_int4", 2, 2, 1, 1, 0, false, 4, 0, 0, "buffer", models::WeightMode::int4});
}
TEST(ParallelGenerate, TP2FoldedWithEP2Int8FromHuggingFaceFolder) {
  run_case({"tp2_ep2_int8_hf", 2, 2, 1, 2, 1, true, 4, 0, 0, "hf", models::WeightMode::int8});
}
TEST(ParallelGenerate, PP2Int4FromCheckpoint) {
  run_case(
      {"pp2_int4_ckpt", 2, 1, 2, 1, 0, false, 4, 0, 2, "checkpoint", models::WeightMode::int4});
}
TEST(ParallelGenerate, TP2xPP2GptqFolder) {
  run_case({"tp2_pp2_gptq", 4, 2, 2, 1, 0, false, 4, 0, 3, "gptq"});
}
TEST(ParallelGenerate, EP2GptqFolder) {
  run_case({"ep2_gptq", 2, 1, 1, 2, 0, true, 4, 0, 0, "gptq"});
}

}  // namespace
}  // namespace origami
