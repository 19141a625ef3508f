// The equivalence matrix of tensor, pipeline and data parallelism (docs/design-facts.md, 'How
// correctness is judged'): a small dense model trained 3 optimizer steps under each layout must
// give the single-rank run's loss at every step (relative error <= 1e-5), and the same gradients
// (last step) and parameters (after the last step), gathered to full tensors from every shard (<=
// 1e-5 of the tensor's largest magnitude). The single-rank reference runs in every process, on the
// whole batch, with gradient accumulation over the same microbatches.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "models/decoder.h"
#include "models/parallel_model.h"
#include "mpi_test.h"
#include "ops/optimizer.h"
#include "parallel/process_groups.h"
#include "parallel/rank_groups.h"
#include "runtime/checkpoint.h"
#include "runtime/data.h"

namespace origami {
namespace {

using test::mpi_world;

constexpr double kTol = 1e-5;  // docs/design-facts.md, 'How correctness is judged', fp32
constexpr int kSteps = 3;
constexpr int kGradStep = kSteps;  // gradients compared at the last step

struct Case {
  std::string name;
  int world = 1, tp = 1, pp = 1, vpp = 1, dp = 1;
  bool sp = false, zero = true, tied = false;
  std::vector<int64_t> stage_layers = {};
  bool moe = false;        // Mixtral-style: top-2, load-balancing and z losses
  int ep = 1, etp = 0;     // expert layout (etp 0: the same as tp)
  bool allgather = false;  // the all-gather dispatcher instead of all-to-all
  int experts = 4;
  // Sigmoid router whose expert bias rules out experts 2 and 3: with EP4 two ranks receive no
  // tokens at all, and must still complete forward and backward.
  bool starve = false;
  int cp = 1;           // context parallel
  bool cp_ring = true;  // ring attention (else all-gather of K/V)
};

// The starving bias (see Case::starve) on every MoE layer of a decoder.
void starve_experts(models::Decoder& d) {
  for (int64_t m = 0; m < d.spec().num_moe_layers(); ++m)
    d.expert_bias(m) = {0.0f, 0.0f, -1000.0f, -1000.0f};
}

models::ModelSpec tiny_spec(const Case& c) {
  models::ModelSpec s;
  s.family = c.moe ? models::Family::mixtral : models::Family::llama;
  s.vocab = 64;
  s.hidden = 32;
  s.layers = 8;
  s.heads = 4;
  s.kv_heads = 2;  // TP4: each KV head shared by two TP ranks
  s.head_dim = 8;
  s.ffn = 48;
  s.rope.head_dim = 8;
  s.rope.theta = 10000.0;
  s.rms_eps = 1e-5;
  s.tie_embeddings = c.tied;
  if (c.moe) {
    s.moe.num_experts = c.experts;
    s.moe.top_k = 2;
    s.moe.expert_ffn = 24;
    s.moe.norm_topk_prob = true;
    s.moe.aux_loss_coeff = c.pp > 1 ? 0.0 : 0.01;  // the aux loss spans stages: pp 1 only
    s.moe.z_loss_coeff = 1e-3;
    if (c.starve) {
      s.moe.router = models::RouterKind::sigmoid;
      s.moe.expert_bias = true;
      s.moe.expert_bias_update_rate = 0.0;
    }
  }
  return s;
}

constexpr int64_t kBatch = 2;  // sequences per dp rank and microbatch
constexpr int64_t kSeq = 8;
constexpr int64_t kMicro = 4;  // microbatches per step (a multiple of every pp used)

// Token of sequence `seq` of the global microbatch (step, m), position t (S+1 tokens: inputs and
// shifted targets); a few targets are ignored.
int64_t token(int step, int64_t m, int64_t seq, int64_t t) {
  SplitMix64 r(uint64_t(step) * 1000003u + uint64_t(m) * 7919u + uint64_t(seq) * 131u +
               uint64_t(t));
  return int64_t(r.next() % 64);
}
void batch(int step, int64_t m, int64_t first_seq, int64_t n, Tensor& ids, Tensor& targets) {
  ids = Tensor::empty({n, kSeq}, DType::i64);
  targets = Tensor::empty({n, kSeq}, DType::i64);
  for (int64_t b = 0; b < n; ++b)
    for (int64_t t = 0; t < kSeq; ++t) {
      ids.data_as<int64_t>()[b * kSeq + t] = token(step, m, first_seq + b, t);
      const int64_t y = token(step, m, first_seq + b, t + 1);
      targets.data_as<int64_t>()[b * kSeq + t] =
          (first_seq + b + t + m) % 7 == 3 ? models::Decoder::kIgnoreIndex : y;
    }
}

// Adam divides by sqrt(v): an element whose gradient is at the level of round-off (1e-7 of the
// tensor's largest) would move by up to lr whatever its sign noise. An eps above that level keeps
// such elements still in every layout, so that what is compared is the layout's arithmetic.
ops::AdamWParams adamw(int step) {
  ops::AdamWParams p;
  p.lr = 1e-3f;
  p.eps = 1e-4f;
  p.weight_decay = 0.1f;
  p.step = step;
  return p;
}
constexpr double kClip = 0.5;  // small enough that clipping acts

double rel_err(const Tensor& got, const Tensor& want) {
  const std::vector<float> a = got.to_float_vector(), b = want.to_float_vector();
  double diff = 0, scale = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    diff = std::max(diff, std::abs(double(a[i]) - double(b[i])));
    scale = std::max(scale, std::abs(double(b[i])));
  }
  return scale > 0 ? diff / scale : diff;
}

struct Reference {
  std::vector<double> losses;
  std::vector<std::vector<float>> grads, params;  // per name, full tensors
};

Reference run_single_rank(const Case& c) {
  const models::ModelSpec spec = tiny_spec(c);
  models::DecoderOptions o;
  o.batch = kBatch * c.dp;
  o.seq = kSeq;
  models::Decoder ref(spec, o);
  ref.params().init_random(11, 0.2);
  if (c.starve) starve_experts(ref);
  Reference out;
  for (int step = 1; step <= kSteps; ++step) {
    ref.grads().zero();
    double loss = 0;
    for (int64_t m = 0; m < kMicro; ++m) {
      Tensor ids, targets;
      batch(step, m, 0, kBatch * c.dp, ids, targets);
      loss += ref.forward_backward(ids, targets).loss / double(kMicro);
    }
    out.losses.push_back(loss);
    if (step == kGradStep)
      for (const models::ParamEntry& e : ref.layout().entries())
        out.grads.push_back(ref.grads().get(e.name).to_float_vector());
    const double inv = 1.0 / double(kMicro);
    const double norm = std::sqrt(ops::sum_squares(ref.grads().flat())) * inv;
    ops::scale_(ref.grads().flat(), float(inv * ops::clip_coefficient(norm, kClip)));
    ref.adamw_step(adamw(step));
  }
  for (const models::ParamEntry& e : ref.layout().entries())
    out.params.push_back(ref.params().get(e.name).to_float_vector());
  return out;
}

class ParallelTrain : public ::testing::TestWithParam<Case> {};

TEST_P(ParallelTrain, MatchesSingleRank) {
  const Case& c = GetParam();
  Communicator& world = mpi_world();
  if (world.size() != c.world) GTEST_SKIP() << "needs " << c.world << " ranks";
  const models::ModelSpec spec = tiny_spec(c);
  models::ParallelOptions po;
  po.layout.tp = c.tp;
  po.layout.pp = c.pp;
  po.vpp = c.vpp;
  po.sequence_parallel = c.sp;
  po.zero = c.zero;
  po.stage_layers = c.stage_layers;
  po.bucket_elements = 1000;  // several buckets, uneven pieces
  po.layout.ep = c.ep;
  po.layout.etp = c.etp;
  po.layout.cp = c.cp;
  po.cp_ring = c.cp_ring;
  po.allgather_dispatcher = c.allgather;
  const RankGroups layout(world.size(), po.layout);
  ASSERT_EQ(layout.dp(), c.dp);
  ProcessGroups groups = ProcessGroups::create(world, layout);
  models::DecoderOptions o;
  o.batch = kBatch;
  o.seq = kSeq;
  models::ParallelModel pm(spec, o, po, layout, groups, kMicro);
  pm.init_random(11, 0.2);
  if (c.starve)
    for (int k = 0; k < pm.num_chunks(); ++k) starve_experts(pm.chunk(k));
  const int dp_rank = groups.dp->rank();

  const Reference ref = run_single_rank(c);
  double worst_loss = 0, worst_grad = 0, worst_param = 0;
  std::string worst_grad_name, worst_param_name;
  for (int step = 1; step <= kSteps; ++step) {
    std::vector<Tensor> ids(kMicro), targets(kMicro);
    for (int64_t m = 0; m < kMicro; ++m)
      batch(step, m, dp_rank * kBatch, kBatch, ids[size_t(m)], targets[size_t(m)]);
    const models::StepLoss loss = pm.forward_backward(ids, targets);
    const double le =
        std::abs(loss.loss - ref.losses[size_t(step - 1)]) / std::abs(ref.losses[size_t(step - 1)]);
    worst_loss = std::max(worst_loss, le);
    EXPECT_LE(le, kTol) << c.name << " step " << step << ": loss " << loss.loss << " vs "
                        << ref.losses[size_t(step - 1)];
    if (step == kGradStep) {
      for (size_t i = 0; i < pm.names().size(); ++i) {
        const std::string& name = pm.names()[i];
        Tensor g = pm.gather(name, "grads");
        const double e = rel_err(g, Tensor::from_vector(ref.grads[i], g.shape(), DType::f32));
        if (e > worst_grad) worst_grad = e, worst_grad_name = name;
        EXPECT_LE(e, kTol) << c.name << ": gradient of " << name;
      }
    }
    const double inv = 1.0 / double(kMicro);
    const double norm = pm.grad_norm(inv);
    pm.scale_gradients(float(inv * ops::clip_coefficient(norm, kClip)));
    pm.optimizer_step(adamw(step));
  }
  for (size_t i = 0; i < pm.names().size(); ++i) {
    const std::string& name = pm.names()[i];
    Tensor p = pm.gather(name, "params");
    const double e = rel_err(p, Tensor::from_vector(ref.params[i], p.shape(), DType::f32));
    if (e > worst_param) worst_param = e, worst_param_name = name;
    EXPECT_LE(e, kTol) << c.name << ": parameter " << name;
  }
  if (world.rank() == 0)
    std::printf("[ parallel ] %-28s loss %.2e  grads %.2e (%s)  params %.2e (%s)\n", c.name.c_str(),
                worst_loss, worst_grad, worst_grad_name.c_str(), worst_param,
                worst_param_name.c_str());
}

std::vector<Case> cases() {
  std::vector<Case> v = {
      {.name = "tp2", .world = 2, .tp = 2},
      {.name = "tp2_sp", .world = 2, .tp = 2, .sp = true},
      {.name = "dp2_zero", .world = 2, .dp = 2},
      {.name = "dp2_allreduce", .world = 2, .dp = 2, .zero = false},
      {.name = "pp2_1f1b", .world = 2, .pp = 2},
      {.name = "pp2_uneven_6_2", .world = 2, .pp = 2, .stage_layers = {6, 2}},
      {.name = "pp2_tied", .world = 2, .pp = 2, .tied = true},
      {.name = "pp3_uneven_4_2_2", .world = 3, .pp = 3, .stage_layers = {4, 2, 2}},
      {.name = "dp3_zero", .world = 3, .dp = 3},
      {.name = "tp4_kv_shared", .world = 4, .tp = 4},
      {.name = "tp4_sp", .world = 4, .tp = 4, .sp = true},
      {.name = "pp4_vpp2", .world = 4, .pp = 4, .vpp = 2},
      {.name = "tp2_dp2", .world = 4, .tp = 2, .dp = 2},
      {.name = "tp2_pp2", .world = 4, .tp = 2, .pp = 2},
      {.name = "tp2_pp2_sp_tied", .world = 4, .tp = 2, .pp = 2, .sp = true, .tied = true},
      {.name = "tp2_pp2_dp2", .world = 8, .tp = 2, .pp = 2, .dp = 2},
      {.name = "tp2_pp2_dp2_sp_vpp2", .world = 8, .tp = 2, .pp = 2, .vpp = 2, .dp = 2, .sp = true},
      // MoE. Experts over ep (all-to-all dispatcher unless named), each split over etp; expert
      // gradients reduced over edp; router statistics and z-loss summed over the token ranks.
      {.name = "moe_tp2_sp_etp2", .world = 2, .tp = 2, .sp = true, .moe = true},
      {.name = "moe_tp2_sp_etp1", .world = 2, .tp = 2, .sp = true, .moe = true, .etp = 1},
      {.name = "moe_dp2", .world = 2, .dp = 2, .moe = true},
      {.name = "moe_pp2", .world = 2, .pp = 2, .moe = true},
      {.name = "moe_ep2", .world = 2, .dp = 2, .moe = true, .ep = 2},
      {.name = "moe_ep2_allgather", .world = 2, .dp = 2, .moe = true, .ep = 2, .allgather = true},
      {.name = "moe_pp2_ep2", .world = 4, .pp = 2, .dp = 2, .moe = true, .ep = 2},
      {.name = "moe_ep4", .world = 4, .dp = 4, .moe = true, .ep = 4},
      {.name = "moe_etp2_ep2", .world = 4, .tp = 2, .dp = 2, .sp = true, .moe = true, .ep = 2},
      {.name = "moe_etp2_ep2_allgather",
       .world = 4,
       .tp = 2,
       .dp = 2,
       .sp = true,
       .moe = true,
       .ep = 2,
       .allgather = true},
      {.name = "moe_tp2_dp2_sp_ep4",
       .world = 4,
       .tp = 2,
       .dp = 2,
       .sp = true,
       .moe = true,
       .ep = 4,
       .etp = 1},
      {.name = "moe_ep8", .world = 8, .dp = 8, .moe = true, .ep = 8, .experts = 8},
      {.name = "moe_tp2_pp2_sp_ep4",
       .world = 8,
       .tp = 2,
       .pp = 2,
       .dp = 2,
       .sp = true,
       .moe = true,
       .ep = 4,
       .etp = 1},
      {.name = "moe_dp6_ep3", .world = 6, .dp = 6, .moe = true, .ep = 3, .experts = 6},
      // Context parallelism: zigzag halves of every sequence, attention by ring or all-gather.
      {.name = "cp2_ring", .world = 2, .cp = 2},
      {.name = "cp2_allgather", .world = 2, .cp = 2, .cp_ring = false},
      {.name = "cp4_ring", .world = 4, .cp = 4},
      {.name = "cp4_allgather", .world = 4, .cp = 4, .cp_ring = false},
      {.name = "tp2_cp2_sp", .world = 4, .tp = 2, .sp = true, .cp = 2},
      {.name = "cp2_dp2_zero", .world = 4, .dp = 2, .cp = 2},
      // The worked example of docs/design-facts.md, 'Rank groups': attention TP2 x CP2 x DP2,
      // experts ETP1 x EP4 x EDP2.
      {.name = "moe_tp2_cp2_dp2_sp_ep4",
       .world = 8,
       .tp = 2,
       .dp = 2,
       .sp = true,
       .moe = true,
       .ep = 4,
       .etp = 1,
       .cp = 2},
      {.name = "moe_cp2_ep2", .world = 2, .moe = true, .ep = 2, .cp = 2, .cp_ring = false},
      {.name = "moe_ep4_two_ranks_without_tokens",
       .world = 4,
       .dp = 4,
       .moe = true,
       .ep = 4,
       .starve = true},
      {.name = "moe_ep4_allgather_without_tokens",
       .world = 4,
       .dp = 4,
       .moe = true,
       .ep = 4,
       .allgather = true,
       .starve = true},
  };
  return v;
}

// Both dispatchers on the same layout and data agree within 1e-6 (docs/design-facts.md, 'How
// correctness is judged'): the losses of 3 steps, the first step's gradients and the parameters
// after the 3 steps.
TEST(Dispatchers, AllToAllAndAllGatherAgree) {
  Communicator& world = mpi_world();
  if (world.size() != 4) GTEST_SKIP() << "needs 4 ranks";
  struct Run {
    std::vector<double> losses;
    std::map<std::string, std::vector<float>> tensors;
  };
  auto run = [&](bool allgather) {
    Case c;
    c.moe = true;
    models::ParallelOptions po;
    po.layout.tp = 2;
    po.layout.ep = 2;  // ETP2 x EP2 over the 4 ranks (etp defaults to tp)
    po.sequence_parallel = true;
    po.allgather_dispatcher = allgather;
    const RankGroups layout(world.size(), po.layout);
    ProcessGroups groups = ProcessGroups::create(world, layout);
    models::DecoderOptions o;
    o.batch = kBatch;
    o.seq = kSeq;
    models::ParallelModel pm(tiny_spec(c), o, po, layout, groups, kMicro);
    pm.init_random(11, 0.2);
    Run r;
    for (int step = 1; step <= kSteps; ++step) {
      std::vector<Tensor> ids(kMicro), targets(kMicro);
      for (int64_t m = 0; m < kMicro; ++m)
        batch(step, m, groups.dp->rank() * kBatch, kBatch, ids[size_t(m)], targets[size_t(m)]);
      r.losses.push_back(pm.forward_backward(ids, targets).loss);
      if (step == 1)  // before AdamW turns round-off into updates
        for (const std::string& n : pm.names())
          r.tensors["grads/" + n] = pm.gather(n, "grads").to_float_vector();
      const double inv = 1.0 / double(kMicro);
      pm.scale_gradients(float(inv * ops::clip_coefficient(pm.grad_norm(inv), kClip)));
      pm.optimizer_step(adamw(step));
    }
    for (const std::string& n : pm.names())
      r.tensors["params/" + n] = pm.gather(n, "params").to_float_vector();
    return r;
  };
  const Run a2a = run(false), ag = run(true);
  double worst_loss = 0, worst = 0;
  std::string worst_name;
  for (size_t i = 0; i < a2a.losses.size(); ++i)
    worst_loss = std::max(worst_loss, std::abs(a2a.losses[i] - ag.losses[i]) / a2a.losses[i]);
  for (const auto& [name, v] : a2a.tensors) {
    const std::vector<float>& w = ag.tensors.at(name);
    const Shape shape{int64_t(v.size())};
    const double e = rel_err(Tensor::from_vector(w, shape, DType::f32),
                             Tensor::from_vector(v, shape, DType::f32));
    if (e > worst) worst = e, worst_name = name;
  }
  EXPECT_LE(worst_loss, 1e-6);
  EXPECT_LE(worst, 1e-6) << worst_name;
  if (world.rank() == 0)
    std::printf(
        "[ dispatch ] all-to-all vs all-gather (ETP2 x EP2): loss %.2e, tensors %.2e (%s)\n",
        worst_loss, worst, worst_name.c_str());
}

// Capacity mode (capacity factor 1, optionally padded): every rank drops copies of its own
// tokens (capacity = ceil(T_local * k / E * cf)), so experts spread over EP2 must give what the
// same ranks give with every expert at home (DP2); and the dropped copies are exactly the
// lowest-probability ones of each over-full expert, as computed here from the router's outputs.
TEST(Capacity, DropsTheLowestProbabilityCopiesUnderExpertParallelism) {
  Communicator& world = mpi_world();
  if (world.size() != 2) GTEST_SKIP() << "needs 2 ranks";
  for (const bool pad : {false, true}) {
    std::vector<double> losses[2];
    for (int ep : {1, 2}) {
      Case c;
      c.moe = true;
      models::ModelSpec spec = tiny_spec(c);
      spec.moe.capacity_factor = 1.0;
      spec.moe.pad_to_capacity = pad;
      spec.moe.aux_loss_coeff = 0.0;  // local statistics would differ from the global ones
      models::ParallelOptions po;
      po.layout.ep = ep;
      const RankGroups layout(world.size(), po.layout);
      ProcessGroups groups = ProcessGroups::create(world, layout);
      models::DecoderOptions o;
      o.batch = kBatch;
      o.seq = kSeq;
      models::ParallelModel pm(spec, o, po, layout, groups, 1);
      pm.init_random(11, 0.2);
      int64_t dropped_total = 0;
      for (int step = 1; step <= kSteps; ++step) {
        std::vector<Tensor> ids(1), targets(1);
        batch(step, 0, groups.dp->rank() * kBatch, kBatch, ids[0], targets[0]);
        losses[ep - 1].push_back(pm.forward_backward(ids, targets).loss);
        // The reference drop of every MoE layer of this rank.
        for (int64_t l = 0; l < spec.layers; ++l) {
          const models::RouterBuffers& r = pm.chunk(0).routing(l);
          const int64_t T = kBatch * kSeq, k = spec.moe.top_k, E = spec.moe.num_experts;
          const int64_t cap = int64_t(std::ceil(double(T * k) / double(E)));
          const int64_t* sel = r.selected.data_as<int64_t>();
          const int64_t* slot = r.slot.data_as<int64_t>();
          const float* probs = r.probs.data_as<float>();
          for (int64_t e = 0; e < E; ++e) {
            std::vector<int64_t> copies;
            for (int64_t i = 0; i < T * k; ++i)
              if (sel[i] == e) copies.push_back(i);
            std::stable_sort(copies.begin(), copies.end(), [&](int64_t a, int64_t b) {
              return probs[(a / k) * E + e] > probs[(b / k) * E + e];
            });
            for (size_t j = 0; j < copies.size(); ++j) {
              const bool dropped = slot[copies[j]] < 0;
              EXPECT_EQ(dropped, int64_t(j) >= cap)
                  << "ep " << ep << " layer " << l << " expert " << e << " copy " << copies[j];
              dropped_total += dropped ? 1 : 0;
            }
          }
        }
        const double inv = 1.0;
        pm.scale_gradients(float(inv * ops::clip_coefficient(pm.grad_norm(inv), kClip)));
        pm.optimizer_step(adamw(step));
      }
      EXPECT_GT(dropped_total, 0) << "capacity 1.0 should drop some copies";
      if (world.rank() == 0)
        std::printf("[ capacity ] pad=%d ep=%d: %lld copies dropped on rank 0 over %d steps\n",
                    int(pad), ep, static_cast<long long>(dropped_total), kSteps);
    }
    for (int s = 0; s < kSteps; ++s)
      EXPECT_LE(std::abs(losses[0][size_t(s)] - losses[1][size_t(s)]) / losses[0][size_t(s)], kTol)
          << "pad " << pad << " step " << s + 1;
  }
}

// ---- resharding checkpoints ----------------------------------------------------------------
//
// A model trained 2 steps under one layout is saved (every tensor by name, with its global
// shape and this rank's offsets) and loaded under other layouts of the same 8 ranks, and on one
// rank: the gathered parameters and Adam moments must be identical, and 2 more steps under the
// new layout must give the losses of the saving layout's own 2 more steps (<= 1e-5).

struct Layout {
  std::string name;
  int tp = 1, pp = 1, ep = 1;
  bool single = false;  // one rank (this process alone)
  int cp = 1;
};

constexpr int64_t kGlobalBatch = 4;  // sequences per microbatch over all dp ranks

struct Trainer {
  std::unique_ptr<Communicator> self;
  std::unique_ptr<RankGroups> layout;
  ProcessGroups groups;
  std::unique_ptr<models::ParallelModel> pm;

  Trainer(const Case& c, const Layout& l) {
    Communicator& world = l.single ? *(self = self_communicator()) : mpi_world();
    models::ParallelOptions po;
    po.layout.tp = l.tp;
    po.layout.pp = l.pp;
    po.layout.ep = l.ep;
    po.layout.etp = 1;
    po.layout.cp = l.cp;
    po.sequence_parallel = l.tp > 1;
    layout = std::make_unique<RankGroups>(world.size(), po.layout);
    groups = ProcessGroups::create(world, *layout);
    models::DecoderOptions o;
    o.batch = kGlobalBatch / layout->dp();
    o.seq = kSeq;
    pm = std::make_unique<models::ParallelModel>(tiny_spec(c), o, po, *layout, groups, kMicro);
  }
  double step(int step) {
    const int64_t b = kGlobalBatch / layout->dp();
    std::vector<Tensor> ids(kMicro), targets(kMicro);
    for (int64_t m = 0; m < kMicro; ++m)
      batch(step, m, groups.dp->rank() * b, b, ids[size_t(m)], targets[size_t(m)]);
    const double loss = pm->forward_backward(ids, targets).loss;
    const double inv = 1.0 / double(kMicro);
    pm->scale_gradients(float(inv * ops::clip_coefficient(pm->grad_norm(inv), kClip)));
    pm->optimizer_step(adamw(step));
    return loss;
  }
};

TEST(Resharding, LoadsUnderEveryLayout) {
  Communicator& world = mpi_world();
  if (world.size() != 8) GTEST_SKIP() << "needs 8 ranks";
  Case c;
  c.moe = true;
  c.pp = 2;  // no load-balancing loss (it spans pipeline stages)
  // A folder every rank agrees on: rank 0 makes it, the others receive its name.
  Tensor name = Tensor::zeros({256}, DType::u8);
  if (world.rank() == 0) {
    char tmpl[] = "/tmp/origami_reshard_XXXXXX";
    const std::string dir = mkdtemp(tmpl);
    std::memcpy(name.data(), dir.c_str(), dir.size());
  }
  world.broadcast(name, 0);
  const std::string dir(static_cast<const char*>(name.data()));

  const Layout saver{"tp2_pp2_ep2", 2, 2, 2};
  std::vector<double> continued;
  std::map<std::string, std::vector<float>> saved;
  {
    Trainer t(c, saver);
    t.pm->init_random(11, 0.2);
    for (int s = 1; s <= 2; ++s) t.step(s);
    CheckpointWriter w(dir, 2, world.rank(), world.size());
    t.pm->save(w);
    w.write_rank_files();
    world.barrier();
    if (world.rank() == 0) w.commit({{"step", 2}});
    world.barrier();
    for (const std::string& n : t.pm->names())
      for (const char* which : {"params", "adam_m", "adam_v"})
        saved[std::string(which) + "/" + n] = t.pm->gather(n, which).to_float_vector();
    for (int s = 3; s <= 4; ++s) continued.push_back(t.step(s));
  }
  const std::string step_dir = *CheckpointReader::latest(dir);
  for (const Layout& l :
       {Layout{"tp1_pp4_ep2", 1, 4, 2}, Layout{"tp1_pp2_ep4", 1, 2, 4},
        Layout{"tp2_cp2_ep4", 2, 1, 4, false, 2}, Layout{"single rank", 1, 1, 1, true}}) {
    Trainer t(c, l);
    t.pm->init_random(99, 0.2);  // different values: everything must come from the checkpoint
    t.pm->load(CheckpointReader(step_dir));
    size_t differing = 0;
    for (const std::string& n : t.pm->names())
      for (const char* which : {"params", "adam_m", "adam_v"})
        if (t.pm->gather(n, which).to_float_vector() != saved[std::string(which) + "/" + n]) {
          ++differing;
          ADD_FAILURE() << l.name << ": " << which << "/" << n << " differs after loading";
        }
    EXPECT_EQ(differing, 0u) << l.name;
    double worst = 0;
    for (int s = 3; s <= 4; ++s) {
      const double loss = t.step(s);
      const double e = std::abs(loss - continued[size_t(s - 3)]) / continued[size_t(s - 3)];
      worst = std::max(worst, e);
      EXPECT_LE(e, kTol) << l.name << " step " << s;
    }
    if (world.rank() == 0)
      std::printf("[ reshard ] %s -> %-12s tensors identical: %s, resumed loss rel err %.2e\n",
                  saver.name.c_str(), l.name.c_str(), differing == 0 ? "yes" : "NO", worst);
  }
  world.barrier();
  if (world.rank() == 0) std::filesystem::remove_all(dir);
}

INSTANTIATE_TEST_SUITE_P(Matrix, ParallelTrain, ::testing::ValuesIn(cases()),
                         [](const ::testing::TestParamInfo<Case>& i) { return i.param.name; });

}  // namespace
}  // namespace origami
