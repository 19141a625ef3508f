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
#include <memory>
#include <string>
#include <vector>

#include "models/generator.h"
#include "models/hf_import.h"
#include "models/parallel_model.h"
#include "mpi_test.h"
#include "parallel/process_groups.h"
#include "parallel/rank_groups.h"
#include "runtime/checkpoint.h"

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
  std::string source = "buffer";  // buffer, hf, checkpoint
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
  return s;
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

models::GeneratorOptions gen_options() {
  models::GeneratorOptions go;
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
  models::Generator ref(spec, whole, gen_options());
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
  const std::string dir = (fs::temp_directory_path() / ("origami_generate_" + c.name)).string();
  if (c.source == "buffer") {
    gen = std::make_unique<models::Generator>(spec, whole, gen_options(), par);
  } else if (c.source == "hf") {
    // rank 0 writes the folder (bf16 would round: f32), every rank reads its own shard of it
    if (world.rank() == 0) {
      fs::remove_all(dir);
      models::export_hf(dir, spec, whole, DType::f32, 1 << 16);  // several shard files
    }
    world.barrier();
    gen = std::make_unique<models::Generator>(spec, gen_options(), par);
    models::load_hf_weights(dir, gen->weights());
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
    gen = std::make_unique<models::Generator>(spec, gen_options(), par);
    models::load_training_checkpoint(*CheckpointReader::latest(dir), *gen);
  }
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

}  // namespace
}  // namespace origami
