// Pipeline schedules: hand-written orders from the 1F1B and interleaved definitions, counts and
// in-flight limits against closed forms, simulated times against a step-by-step simulator
// written here independently (it derives each action's dependency from virtual-stage arithmetic,
// not from transfers()), broken schedules that must be refused, and the message tags.
#include <algorithm>
#include <map>
#include <set>
#include <string>
#include <tuple>
#include <vector>

#include <gtest/gtest.h>

#include "parallel/pipeline_schedule.h"
#include "runtime/error.h"

namespace origami {
namespace {

using Schedule = std::vector<PipeAction>;
using Schedules = std::vector<Schedule>;

// Expects `fn` to throw origami::Error whose message contains every piece of `pieces`.
template <typename Fn>
void expect_error(Fn&& fn, const std::vector<std::string>& pieces) {
  try {
    fn();
    ADD_FAILURE() << "expected an origami::Error containing '" << pieces[0] << "'";
  } catch (const Error& e) {
    const std::string what = e.what();
    for (const auto& p : pieces) EXPECT_NE(what.find(p), std::string::npos) << what;
  }
}

PipeAction F(int m, int c = 0) {
  return {PipeOp::forward, m, c};
}
PipeAction B(int m, int c = 0) {
  return {PipeOp::backward, m, c};
}

std::string show(const Schedule& s) {
  std::string out;
  for (const auto& a : s) out += to_string(a) + " ";
  return out;
}

Schedules all_1f1b(int pp, int m) {
  Schedules s;
  for (int r = 0; r < pp; ++r) s.push_back(schedule_1f1b(pp, r, m));
  return s;
}

Schedules all_interleaved(int pp, int vpp, int m) {
  Schedules s;
  for (int r = 0; r < pp; ++r) s.push_back(schedule_interleaved(pp, vpp, r, m));
  return s;
}

// Step-synchronous reference: in each unit step every rank runs its next action if what it
// depends on finished in an earlier step. Dependencies from the definition of the pipeline:
// forward of (m, v) needs forward of (m, v-1); backward of (m, v) needs backward of (m, v+1), or,
// on the last virtual stage, its own forward (already ordered on the rank). Returns the number of
// steps, or -1 when a step passes in which nothing can run (deadlock).
int64_t naive_steps(int pp, int vpp, const Schedules& per_stage) {
  const int last = pp * vpp - 1;
  std::set<std::tuple<int, int, int>> done;  // (op, m, virtual stage) finished
  std::vector<size_t> next(pp, 0);
  for (int64_t step = 0;; ++step) {
    std::vector<std::tuple<int, int, int>> finished_now;
    bool all_done = true;
    for (int r = 0; r < pp; ++r) {
      if (next[r] == per_stage[r].size()) continue;
      all_done = false;
      const PipeAction& a = per_stage[r][next[r]];
      const int v = a.chunk * pp + r;
      bool ready = true;
      if (a.op == PipeOp::forward && v > 0) ready = done.count({0, a.microbatch, v - 1}) > 0;
      if (a.op == PipeOp::backward && v < last) ready = done.count({1, a.microbatch, v + 1}) > 0;
      if (ready) {
        finished_now.emplace_back(a.op == PipeOp::forward ? 0 : 1, a.microbatch, v);
        ++next[r];
      }
    }
    if (all_done) return step;
    if (finished_now.empty()) return -1;
    done.insert(finished_now.begin(), finished_now.end());
  }
}

// Each (m, chunk) exactly once forward and once backward, forward first; nothing else.
void expect_complete(const Schedule& s, int vpp, int m, const std::string& where) {
  std::map<std::pair<int, int>, std::vector<PipeOp>> seen;
  for (const auto& a : s) {
    ASSERT_GE(a.microbatch, 0) << where;
    ASSERT_LT(a.microbatch, m) << where;
    ASSERT_GE(a.chunk, 0) << where;
    ASSERT_LT(a.chunk, vpp) << where;
    seen[{a.microbatch, a.chunk}].push_back(a.op);
  }
  EXPECT_EQ(s.size(), size_t(2) * m * vpp) << where;
  EXPECT_EQ(seen.size(), size_t(m) * vpp) << where;
  for (const auto& [key, ops] : seen) {
    EXPECT_EQ(ops, (std::vector<PipeOp>{PipeOp::forward, PipeOp::backward}))
        << where << " microbatch " << key.first << " chunk " << key.second;
  }
}

// ---- orders written out by hand ------------------------------------------------------------

TEST(PipelineSchedule, OneFOneBOrderByHand) {
  // pp=4, M=8. Stage 0: 3 warmup forwards, then F/B pairs, then 3 cooldown backwards.
  EXPECT_EQ(schedule_1f1b(4, 0, 8), (Schedule{F(0), F(1), F(2), F(3), B(0), F(4), B(1), F(5), B(2),
                                              F(6), B(3), F(7), B(4), B(5), B(6), B(7)}));
  EXPECT_EQ(schedule_1f1b(4, 1, 8), (Schedule{F(0), F(1), F(2), B(0), F(3), B(1), F(4), B(2), F(5),
                                              B(3), F(6), B(4), F(7), B(5), B(6), B(7)}));
  EXPECT_EQ(schedule_1f1b(4, 3, 8), (Schedule{F(0), B(0), F(1), B(1), F(2), B(2), F(3), B(3), F(4),
                                              B(4), F(5), B(5), F(6), B(6), F(7), B(7)}));
  // Fewer microbatches than warmup: all forwards, then all backwards.
  EXPECT_EQ(schedule_1f1b(4, 0, 2), (Schedule{F(0), F(1), B(0), B(1)}));
  EXPECT_EQ(schedule_1f1b(1, 0, 3), (Schedule{F(0), B(0), F(1), B(1), F(2), B(2)}));
}

TEST(PipelineSchedule, InterleavedOrderByHand) {
  // pp=2, vpp=2, M=4. Forward numbers k -> (microbatch, chunk): 0:(0,0) 1:(1,0) 2:(0,1) 3:(1,1)
  // 4:(2,0) 5:(3,0) 6:(2,1) 7:(3,1); backward numbers visit the chunks in reverse:
  // 0:(0,1) 1:(1,1) 2:(0,0) 3:(1,0) 4:(2,1) 5:(3,1) 6:(2,0) 7:(3,0).
  // Rank 0: warmup 2(2-0-1) + (2-1)*2 = 4.  Rank 1: warmup 0 + 2 = 2.
  EXPECT_EQ(schedule_interleaved(2, 2, 0, 4),
            (Schedule{F(0, 0), F(1, 0), F(0, 1), F(1, 1),                    // warmup
                      F(2, 0), B(0, 1), F(3, 0), B(1, 1), F(2, 1), B(0, 0),  // steady
                      F(3, 1), B(1, 0),                                      //
                      B(2, 1), B(3, 1), B(2, 0), B(3, 0)}));                 // cooldown
  EXPECT_EQ(schedule_interleaved(2, 2, 1, 4),
            (Schedule{F(0, 0), F(1, 0),                                      // warmup
                      F(0, 1), B(0, 1), F(1, 1), B(1, 1), F(2, 0), B(0, 0),  // steady
                      F(3, 0), B(1, 0), F(2, 1), B(2, 1), F(3, 1), B(3, 1),  //
                      B(2, 0), B(3, 0)}));                                   // cooldown
  // M == pp: every rank runs all forwards first (Megatron's all-warmup case).
  EXPECT_EQ(schedule_interleaved(2, 2, 1, 2),
            (Schedule{F(0, 0), F(1, 0), F(0, 1), F(1, 1), B(0, 1), B(1, 1), B(0, 0), B(1, 0)}));
}

TEST(PipelineSchedule, InterleavedWithOneChunkIsOneFOneB) {
  for (int pp = 1; pp <= 8; ++pp) {
    for (int m : {1, 2, pp, 2 * pp + 1, 3 * pp}) {
      for (int r = 0; r < pp; ++r) {
        EXPECT_EQ(schedule_interleaved(pp, 1, r, m), schedule_1f1b(pp, r, m))
            << "pp=" << pp << " M=" << m << " stage " << r;
      }
    }
  }
}

// ---- every layout: complete, deadlock-free, times agree with the reference ---------------------

TEST(PipelineSchedule, OneFOneBCompleteAndDeadlockFree) {
  for (int pp = 1; pp <= 8; ++pp) {
    for (int m : {1, pp, 2 * pp, 3 * pp + 1}) {
      const std::string where = "pp=" + std::to_string(pp) + " M=" + std::to_string(m);
      const Schedules s = all_1f1b(pp, m);
      for (int r = 0; r < pp; ++r) {
        expect_complete(s[r], 1, m, where + " stage " + std::to_string(r));
        // The 1F1B property: at most min(pp - stage, M) activations stored.
        EXPECT_EQ(max_in_flight(s[r], 1), std::vector<int>{std::min(pp - r, m)})
            << where << " stage " << r << ": " << show(s[r]);
      }
      const int64_t steps = simulate_pipeline(pp, 1, m, s);
      EXPECT_EQ(steps, naive_steps(pp, 1, s)) << where;
      // Unit-time forward and backward: (M + pp - 1) forward/backward pairs end to end.
      EXPECT_EQ(steps, 2 * int64_t(m + pp - 1)) << where;
    }
  }
}

TEST(PipelineSchedule, InterleavedCompleteAndDeadlockFree) {
  for (int pp = 1; pp <= 8; ++pp) {
    for (int vpp = 1; vpp <= 3; ++vpp) {
      for (int m : {pp, 2 * pp, 3 * pp, 4 * pp}) {
        const std::string where =
            "pp=" + std::to_string(pp) + " vpp=" + std::to_string(vpp) + " M=" + std::to_string(m);
        const Schedules s = all_interleaved(pp, vpp, m);
        for (int r = 0; r < pp; ++r) {
          expect_complete(s[r], vpp, m, where + " stage " + std::to_string(r));
          // Microbatches are stored per chunk; never more than there are.
          for (int c : max_in_flight(s[r], vpp)) EXPECT_LE(c, m) << where;
        }
        const int64_t steps = simulate_pipeline(pp, vpp, m, s);
        EXPECT_EQ(steps, naive_steps(pp, vpp, s)) << where;
        // Megatron's bubble, (pp-1) forward/backward pairs of one chunk: the step takes
        // (M*vpp + pp - 1) pairs end to end, for any forward and backward times.
        EXPECT_EQ(steps, 2 * int64_t(m * vpp + pp - 1)) << where;
        EXPECT_EQ(simulate_pipeline(pp, vpp, m, s, 1, 2), 3 * int64_t(m * vpp + pp - 1)) << where;
      }
    }
  }
}

TEST(PipelineSchedule, InterleavedHasSmallerBubble) {
  // pp=4, M=8. A chunk is half a stage with vpp=2: time chunk actions as 1 and whole-stage
  // (1F1B) actions as 2, so both runs do the same work: 2*M*2 = 32 units per rank.
  const int pp = 4, m = 8;
  const int64_t plain = simulate_pipeline(pp, 1, m, all_1f1b(pp, m), 2, 2);
  const int64_t inter = simulate_pipeline(pp, 2, m, all_interleaved(pp, 2, m), 1, 1);
  EXPECT_EQ(plain, 2 * 2 * (m + pp - 1));  // 44: bubble 12
  EXPECT_LT(inter, plain);
  EXPECT_EQ(inter, naive_steps(pp, 2, all_interleaved(pp, 2, m)));
  std::printf("pp=4 M=8, work 32 per rank: 1F1B %lld, interleaved vpp=2 %lld\n",
              static_cast<long long>(plain), static_cast<long long>(inter));
  // Also with backward twice as long as forward (stage units: F=2, B=4 vs chunk F=1, B=2).
  const int64_t plain2 = simulate_pipeline(pp, 1, m, all_1f1b(pp, m), 2, 4);
  const int64_t inter2 = simulate_pipeline(pp, 2, m, all_interleaved(pp, 2, m), 1, 2);
  EXPECT_LT(inter2, plain2);
  std::printf("backward = 2 forward, work 48 per rank: 1F1B %lld, interleaved vpp=2 %lld\n",
              static_cast<long long>(plain2), static_cast<long long>(inter2));
}

// ---- broken schedules ------------------------------------------------------------------------

TEST(PipelineSchedule, DeadlockIsReported) {
  // pp=3, M=3. Stage 1 runs F0 F1 B0 but stage 0 runs its backward of 0 before F1 (no warmup):
  // stage 0 waits for stage 1's B0, which waits behind F1, which waits for stage 0's F1.
  Schedules s = all_1f1b(3, 3);
  s[0] = {F(0), B(0), F(1), B(1), F(2), B(2)};
  s[1] = {F(0), F(1), B(0), F(2), B(1), B(2)};
  EXPECT_EQ(naive_steps(3, 1, s), -1);
  expect_error([&] { simulate_pipeline(3, 1, 3, s); },
               {"deadlock", "rank 0 at action 1 (B0", "rank 1 at action 1 (F1", "from rank 0"});
  // Swapped receive order: stage 1 of pp=2 takes microbatch 1 before 0 while stage 0 sends 1 only
  // after the backward of 0, which needs stage 1.
  Schedules t = {{F(0), B(0), F(1), B(1)}, {F(1), B(1), F(0), B(0)}};
  EXPECT_EQ(naive_steps(2, 1, t), -1);
  expect_error([&] { simulate_pipeline(2, 1, 2, t); }, {"deadlock", "rank 1", "F1"});
  // Interleaved, pp=2 vpp=2 M=4: stage 0 moves its backward of (0, chunk 0) right after the first
  // forward. That gradient comes from stage 1's chunk 0, which needs the gradient of stage 0's
  // chunk 1, whose forward stage 0 has not run yet.
  Schedules w = all_interleaved(2, 2, 4);
  auto it = std::find(w[0].begin(), w[0].end(), B(0, 0));
  ASSERT_NE(it, w[0].end());
  w[0].erase(it);
  w[0].insert(w[0].begin() + 1, B(0, 0));
  EXPECT_EQ(naive_steps(2, 2, w), -1);
  expect_error([&] { simulate_pipeline(2, 2, 4, w); },
               {"deadlock", "rank 0 at action 1 (B0,", "rank 1 at action 1 (F1,"});
}

TEST(PipelineSchedule, MalformedSchedulesAreRefused) {
  Schedules s = all_1f1b(2, 2);
  s[1] = {B(0), F(0), F(1), B(1)};  // last stage: backward before its own forward
  expect_error([&] { simulate_pipeline(2, 1, 2, s); }, {"rank 1", "B0", "before its forward"});
  s = all_1f1b(2, 2);
  s[1].push_back(F(1));  // a second forward
  expect_error([&] { simulate_pipeline(2, 1, 2, s); }, {"rank 1", "F1", "second time"});
  s = all_1f1b(2, 2);
  s[0].pop_back();  // stage 0 never runs B1
  expect_error([&] { simulate_pipeline(2, 1, 2, s); },
               {"rank 0 never runs the backward of microbatch 1"});
  s = all_1f1b(2, 2);
  s[0][0].microbatch = 5;
  expect_error([&] { simulate_pipeline(2, 1, 2, s); }, {"microbatch 5", "0..1"});
  s = all_1f1b(2, 2);
  s[0][0].chunk = 1;
  expect_error([&] { simulate_pipeline(2, 1, 2, s); }, {"chunk 1", "vpp=1"});
  expect_error([&] { simulate_pipeline(3, 1, 2, all_1f1b(2, 2)); }, {"2 schedules", "pp=3"});
  expect_error([] { max_in_flight({B(0)}, 1); }, {"B0", "no forward"});
}

// ---- in-flight counts and messages ------------------------------------------------------------

TEST(PipelineSchedule, MaxInFlightByHand) {
  EXPECT_EQ(max_in_flight({F(0), F(1), B(0), F(2), B(1), B(2)}, 1), std::vector<int>{2});
  EXPECT_EQ(max_in_flight({F(0, 0), F(1, 0), F(0, 1), B(0, 1), B(0, 0), B(1, 0)}, 2),
            (std::vector<int>{2, 1}));
  EXPECT_EQ(max_in_flight({}, 3), (std::vector<int>{0, 0, 0}));
}

TEST(PipelineSchedule, TransfersByHand) {
  // pp=4, vpp=2: rank 3 holds virtual stages 3 (chunk 0) and 7 (chunk 1, the last).
  PipeTransfer t = transfers(F(2, 0), 4, 2, 3, 8);
  EXPECT_TRUE(t.recv && t.send);
  EXPECT_EQ(t.recv_from, 2);
  EXPECT_EQ(t.send_to, 0);  // virtual stage 4 is chunk 1 of rank 0
  t = transfers(F(2, 1), 4, 2, 3, 8);
  EXPECT_TRUE(t.recv);
  EXPECT_FALSE(t.send);
  EXPECT_EQ(t.recv_from, 2);
  t = transfers(B(2, 1), 4, 2, 3, 8);
  EXPECT_FALSE(t.recv);
  EXPECT_TRUE(t.send);
  EXPECT_EQ(t.send_to, 2);
  t = transfers(B(2, 0), 4, 2, 0, 8);  // virtual stage 0
  EXPECT_TRUE(t.recv);
  EXPECT_FALSE(t.send);
  EXPECT_EQ(t.recv_from, 1);
  t = transfers(F(2, 1), 4, 2, 0, 8);  // virtual stage 4 receives from 3 on rank 3
  EXPECT_EQ(t.recv_from, 3);
  // Single stage, one chunk: nothing to send or receive.
  t = transfers(F(0), 1, 1, 0, 1);
  EXPECT_FALSE(t.recv || t.send);
}

TEST(PipelineSchedule, TagsAreUniqueAndMatch) {
  for (int pp = 1; pp <= 8; ++pp) {
    for (int vpp = 1; vpp <= 3; ++vpp) {
      const int m = 2 * pp;
      const Schedules s = all_interleaved(pp, vpp, m);
      // tag -> (from rank, to rank), from each side.
      std::map<int, std::pair<int, int>> sends, recvs;
      int64_t expected_messages = 0;
      for (int r = 0; r < pp; ++r) {
        for (const auto& a : s[r]) {
          const PipeTransfer t = transfers(a, pp, vpp, r, m);
          if (t.send) {
            EXPECT_GE(t.send_tag, 0);
            EXPECT_TRUE(sends.emplace(t.send_tag, std::make_pair(r, t.send_to)).second)
                << "pp=" << pp << " vpp=" << vpp << " send tag " << t.send_tag << " reused";
          }
          if (t.recv) {
            EXPECT_TRUE(recvs.emplace(t.recv_tag, std::make_pair(t.recv_from, r)).second)
                << "pp=" << pp << " vpp=" << vpp << " recv tag " << t.recv_tag << " reused";
          }
        }
      }
      // Activations cross pp*vpp - 1 boundaries forward and gradients the same back, per
      // microbatch.
      expected_messages = int64_t(2) * m * (pp * vpp - 1);
      EXPECT_EQ(int64_t(sends.size()), expected_messages) << "pp=" << pp << " vpp=" << vpp;
      EXPECT_EQ(sends, recvs) << "pp=" << pp << " vpp=" << vpp;
    }
  }
}

// ---- argument errors -------------------------------------------------------------------------

TEST(PipelineSchedule, ArgumentErrors) {
  expect_error([] { schedule_1f1b(0, 0, 4); }, {"pp=0"});
  expect_error([] { schedule_1f1b(4, 4, 4); }, {"stage 4", "pp=4"});
  expect_error([] { schedule_1f1b(4, -1, 4); }, {"stage -1"});
  expect_error([] { schedule_1f1b(4, 0, 0); }, {"microbatches=0"});
  expect_error([] { schedule_interleaved(4, 0, 0, 8); }, {"vpp=0"});
  expect_error([] { schedule_interleaved(4, 2, 0, 6); },
               {"multiple of", "pp=4", "microbatches=6", "vpp=2"});
  EXPECT_NO_THROW(schedule_interleaved(4, 1, 0, 6));  // plain 1F1B takes any count
  expect_error([] { transfers(F(0, 2), 4, 2, 0, 8); }, {"chunk 2"});
  expect_error([] { transfers(F(8), 4, 1, 0, 8); }, {"microbatch 8"});
  expect_error([] { transfers(F(0), 4, 1, 5, 8); }, {"stage 5"});
  expect_error([] { simulate_pipeline(0, 1, 1, {}); }, {"pp=0"});
}

}  // namespace
}  // namespace origami
