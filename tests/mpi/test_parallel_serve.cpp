// The serving engine on many ranks: rank 0's engine schedules every step and sends it to the
// other ranks (models::ParallelRunner), each rank runs its part of the model. Requests joining a
// running batch, with chunked prefill and preemption, must give exactly the tokens of the same
// engine over a single-rank model (greedy and seeded sampling).
#include <gtest/gtest.h>

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "models/generator.h"
#include "models/serving_runner.h"
#include "mpi_test.h"
#include "parallel/process_groups.h"
#include "parallel/rank_groups.h"
#include "runtime/serve/engine.h"

namespace origami {
namespace {

using test::mpi_world;

struct Case {
  std::string name;
  int world = 1, tp = 1, pp = 1, ep = 1, etp = 0;
  bool moe = false;
};

models::ModelSpec spec_of(const Case& c) {
  models::ModelSpec s;
  s.family = c.moe ? models::Family::mixtral : models::Family::llama;
  s.vocab = 96;
  s.hidden = 32;
  s.layers = 4;
  s.heads = 4;
  s.kv_heads = 2;
  s.head_dim = 8;
  s.ffn = 48;
  s.rope.head_dim = 8;
  s.rope.theta = 10000.0;
  s.rms_eps = 1e-5;
  s.max_seq_len = 96;
  s.sliding_window = 24;
  if (c.moe) {
    s.moe.num_experts = 4;
    s.moe.top_k = 2;
    s.moe.expert_ffn = 24;
    s.moe.norm_topk_prob = true;
  }
  return s;
}

models::GeneratorOptions options() {
  models::GeneratorOptions go;
  go.max_batch = 4;
  go.max_seq = 96;
  go.max_step_tokens = 16;  // long prompts prefill in chunks beside other sequences' decode
  go.kv_block_size = 4;
  go.kv_blocks = 20;  // 80 tokens for five requests of up to 40: preemptions
  return go;
}

// Five requests, two joining after the first steps; tokens per request.
std::map<int, std::vector<int64_t>> serve_all(serve::Runner& runner, double temperature) {
  serve::Engine e(runner);
  std::map<int, std::vector<int64_t>> out;
  auto add = [&](int i) {
    serve::RequestParams p;
    for (int t = 0; t < 4 + 6 * i; ++t) p.prompt.push_back((13 * i + 7 * t + 1) % 96);
    p.max_tokens = 10;
    p.sampling.temperature = temperature;
    p.sampling.seed = 100 + uint64_t(i);
    e.add_request(p, [&out, i](const serve::TokenEvent& ev) {
      if (ev.token >= 0) out[i].push_back(ev.token);
    });
  };
  for (int i = 0; i < 3; ++i) add(i);
  e.step();
  e.step();
  for (int i = 3; i < 5; ++i) add(i);
  while (e.has_work()) e.step();
  return out;
}

void run_case(const Case& c) {
  Communicator& world = mpi_world();
  if (world.size() != c.world) GTEST_SKIP() << "needs " << c.world << " ranks";
  const models::ModelSpec spec = spec_of(c);
  models::ParameterBuffer whole(models::ParameterLayout(spec), DType::f32);
  whole.init_random(9, 0.3);

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
  models::Generator gen(spec, whole, options(), par);
  models::ParallelRunner runner(gen, world);
  for (double temperature : {0.0, 0.8}) {
    if (world.rank() != 0) {
      runner.follow();
      continue;
    }
    const std::map<int, std::vector<int64_t>> got = serve_all(runner, temperature);
    runner.stop();
    models::Generator solo(spec, whole, options());  // the whole model on rank 0
    models::DecoderRunner dr(solo.decoder());
    const std::map<int, std::vector<int64_t>> want = serve_all(dr, temperature);
    ASSERT_EQ(got.size(), 5u);
    for (const auto& [i, tokens] : want) {
      EXPECT_EQ(got.at(i), tokens) << c.name << ": request " << i << " temperature " << temperature;
      EXPECT_EQ(tokens.size(), 10u);
    }
    std::printf("[ %s ] temperature %.1f: 5 requests, tokens equal to one rank's engine\n",
                c.name.c_str(), temperature);
  }
  world.barrier();
}

TEST(ParallelServe, TP2) {
  run_case({"tp2", 2, 2});
}
TEST(ParallelServe, PP2) {
  run_case({"pp2", 2, 1, 2});
}
TEST(ParallelServe, EP2FoldedWithTP2) {
  run_case({"tp2_ep2", 2, 2, 1, 2, 1, true});
}
TEST(ParallelServe, TP2xPP2) {
  run_case({"tp2_pp2", 4, 2, 2});
}
TEST(ParallelServe, TP2FoldedWithEP4) {
  run_case({"tp2_ep4", 4, 2, 1, 4, 1, true});
}

}  // namespace
}  // namespace origami
