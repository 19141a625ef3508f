// Pipeline schedules (1F1B, interleaved 1F1B), their message plan and a simulator that proves a
// schedule set free of deadlock. See pipeline_schedule.h for the shapes of the schedules.
#include "parallel/pipeline_schedule.h"

#include <algorithm>
#include <climits>
#include <map>
#include <sstream>

#include "runtime/error.h"

namespace origami {

namespace {

void check_sizes(const char* what, int pp, int vpp, int microbatches) {
  ORIGAMI_CHECK(pp >= 1, what, ": pipeline size must be >= 1, got pp=", pp);
  ORIGAMI_CHECK(vpp >= 1, what,
                ": virtual pipeline size (model chunks per rank) must be >= 1, got vpp=", vpp);
  ORIGAMI_CHECK(microbatches >= 1, what,
                ": need at least one microbatch, got microbatches=", microbatches);
  // Tags are 2*(m*pp*vpp + v) + 1 at most; keep them inside int.
  ORIGAMI_CHECK(int64_t{2} * microbatches * pp * vpp <= INT_MAX, what, ": ", microbatches,
                " microbatches x pp=", pp, " x vpp=", vpp, " give message tags beyond ", INT_MAX);
}

void check_stage(const char* what, int pp, int stage) {
  ORIGAMI_CHECK(stage >= 0 && stage < pp, what, ": stage ", stage, " out of range for pp=", pp,
                " (stages are 0..", pp - 1, ")");
}

void check_action(const char* what, const PipeAction& a, int vpp, int microbatches) {
  ORIGAMI_CHECK(a.op == PipeOp::forward || a.op == PipeOp::backward, what, ": invalid operation ",
                static_cast<int>(a.op));
  ORIGAMI_CHECK(a.microbatch >= 0 && a.microbatch < microbatches, what, ": ", to_string(a),
                " has microbatch ", a.microbatch, " outside 0..", microbatches - 1);
  ORIGAMI_CHECK(a.chunk >= 0 && a.chunk < vpp, what, ": ", to_string(a), " has chunk ", a.chunk,
                " outside 0..", vpp - 1, " (vpp=", vpp, ")");
}

}  // namespace

std::string to_string(const PipeAction& a) {
  std::ostringstream os;
  os << (a.op == PipeOp::forward ? 'F' : 'B') << a.microbatch;
  if (a.chunk != 0) os << ".c" << a.chunk;
  return os.str();
}

std::vector<PipeAction> schedule_1f1b(int pp, int stage, int microbatches) {
  check_sizes("schedule_1f1b", pp, 1, microbatches);
  check_stage("schedule_1f1b", pp, stage);
  const int warmup = std::min(pp - stage - 1, microbatches);
  std::vector<PipeAction> out;
  out.reserve(2 * static_cast<size_t>(microbatches));
  for (int m = 0; m < warmup; ++m) out.push_back({PipeOp::forward, m, 0});
  for (int i = 0; i < microbatches - warmup; ++i) {
    out.push_back({PipeOp::forward, warmup + i, 0});
    out.push_back({PipeOp::backward, i, 0});
  }
  for (int m = microbatches - warmup; m < microbatches; ++m)
    out.push_back({PipeOp::backward, m, 0});
  return out;
}

std::vector<PipeAction> schedule_interleaved(int pp, int vpp, int stage, int microbatches) {
  check_sizes("schedule_interleaved", pp, vpp, microbatches);
  check_stage("schedule_interleaved", pp, stage);
  if (vpp == 1) return schedule_1f1b(pp, stage, microbatches);
  ORIGAMI_CHECK(microbatches % pp == 0, "schedule_interleaved: with vpp=", vpp,
                " model chunks per rank the number of microbatches must be a multiple of the "
                "pipeline size pp=",
                pp, ", got microbatches=", microbatches,
                "; use a multiple of pp or set vpp=1 (plain 1F1B)");

  const int total = microbatches * vpp;  // (microbatch, chunk) pairs run by this rank
  const int group = pp * vpp;            // numbers per group of pp microbatches
  // Megatron runs everything as warmup when M == P: then no rank has a steady phase.
  const int warmup =
      microbatches == pp ? total : std::min(2 * (pp - stage - 1) + (vpp - 1) * pp, total);
  auto forward = [&](int k) {
    return PipeAction{PipeOp::forward, (k / group) * pp + k % pp, (k % group) / pp};
  };
  auto backward = [&](int k) {
    return PipeAction{PipeOp::backward, (k / group) * pp + k % pp, vpp - 1 - (k % group) / pp};
  };

  std::vector<PipeAction> out;
  out.reserve(2 * static_cast<size_t>(total));
  for (int k = 0; k < warmup; ++k) out.push_back(forward(k));
  for (int i = 0; i < total - warmup; ++i) {
    out.push_back(forward(warmup + i));
    out.push_back(backward(i));
  }
  for (int k = total - warmup; k < total; ++k) out.push_back(backward(k));
  return out;
}

int pipe_tag(bool gradient, int microbatch, int virtual_stage, int pp, int vpp) {
  return 2 * (microbatch * pp * vpp + virtual_stage) + (gradient ? 1 : 0);
}

PipeTransfer transfers(const PipeAction& a, int pp, int vpp, int stage, int microbatches) {
  check_sizes("transfers", pp, vpp, microbatches);
  check_stage("transfers", pp, stage);
  check_action("transfers", a, vpp, microbatches);
  const int v = a.chunk * pp + stage;
  const int last = pp * vpp - 1;
  const int m = a.microbatch;
  PipeTransfer t;
  if (a.op == PipeOp::forward) {
    if (v > 0) {
      t.recv = true;
      t.recv_from = (v - 1) % pp;
      t.recv_tag = pipe_tag(false, m, v, pp, vpp);
    }
    if (v < last) {
      t.send = true;
      t.send_to = (v + 1) % pp;
      t.send_tag = pipe_tag(false, m, v + 1, pp, vpp);
    }
  } else {
    if (v < last) {
      t.recv = true;
      t.recv_from = (v + 1) % pp;
      t.recv_tag = pipe_tag(true, m, v, pp, vpp);
    }
    if (v > 0) {
      t.send = true;
      t.send_to = (v - 1) % pp;
      t.send_tag = pipe_tag(true, m, v - 1, pp, vpp);
    }
  }
  return t;
}

std::vector<int> max_in_flight(const std::vector<PipeAction>& schedule, int vpp) {
  ORIGAMI_CHECK(vpp >= 1, "max_in_flight: vpp must be >= 1, got vpp=", vpp);
  std::vector<int> now(vpp, 0), peak(vpp, 0);
  for (size_t i = 0; i < schedule.size(); ++i) {
    const PipeAction& a = schedule[i];
    ORIGAMI_CHECK(a.chunk >= 0 && a.chunk < vpp, "max_in_flight: action ", i, " (", to_string(a),
                  ") has chunk ", a.chunk, " outside 0..", vpp - 1);
    if (a.op == PipeOp::forward) {
      peak[a.chunk] = std::max(peak[a.chunk], ++now[a.chunk]);
    } else {
      ORIGAMI_CHECK(now[a.chunk] > 0, "max_in_flight: action ", i, " (", to_string(a),
                    ") is a backward with no forward of chunk ", a.chunk, " outstanding");
      --now[a.chunk];
    }
  }
  return peak;
}

int64_t simulate_pipeline(int pp, int vpp, int microbatches,
                          const std::vector<std::vector<PipeAction>>& per_stage,
                          int64_t forward_time, int64_t backward_time) {
  check_sizes("simulate_pipeline", pp, vpp, microbatches);
  ORIGAMI_CHECK(static_cast<int64_t>(per_stage.size()) == pp, "simulate_pipeline: got ",
                per_stage.size(), " schedules for pp=", pp, " stages (one per stage expected)");
  ORIGAMI_CHECK(forward_time >= 0 && backward_time >= 0,
                "simulate_pipeline: action times must be >= 0, got forward_time=", forward_time,
                " backward_time=", backward_time);

  // Each rank runs in order; an action starts when the rank is free and its input has arrived
  // (the finish time of the action that sent it). Since the result is a longest path through
  // the dependency graph, the order in which ranks are advanced does not change any time; a
  // round in which no rank can advance means a cycle of waits: a deadlock.
  std::vector<size_t> next(pp, 0);
  std::vector<int64_t> free_at(pp, 0);
  // Per rank, per (m, chunk): 0 nothing run, 1 forward run, 2 backward run.
  std::vector<std::vector<uint8_t>> state(pp, std::vector<uint8_t>(size_t(microbatches) * vpp, 0));
  std::map<int, int64_t> sent;  // tag -> time the message is available

  for (;;) {
    bool progressed = false, done = true;
    for (int r = 0; r < pp; ++r) {
      const std::vector<PipeAction>& list = per_stage[r];
      while (next[r] < list.size()) {
        const PipeAction& a = list[next[r]];
        check_action("simulate_pipeline", a, vpp, microbatches);
        const PipeTransfer t = transfers(a, pp, vpp, r, microbatches);
        int64_t start = free_at[r];
        if (t.recv) {
          auto it = sent.find(t.recv_tag);
          if (it == sent.end()) break;  // blocked
          start = std::max(start, it->second);
        }
        uint8_t& s = state[r][size_t(a.microbatch) * vpp + a.chunk];
        if (a.op == PipeOp::forward) {
          ORIGAMI_CHECK(s == 0, "simulate_pipeline: rank ", r, " action ", next[r], " (",
                        to_string(a), ") runs the forward of microbatch ", a.microbatch, " chunk ",
                        a.chunk, " a second time");
          s = 1;
        } else {
          ORIGAMI_CHECK(s == 1, "simulate_pipeline: rank ", r, " action ", next[r], " (",
                        to_string(a), ") runs the backward of microbatch ", a.microbatch, " chunk ",
                        a.chunk, s == 0 ? " before its forward" : " a second time");
          s = 2;
        }
        free_at[r] = start + (a.op == PipeOp::forward ? forward_time : backward_time);
        if (t.send) {
          ORIGAMI_CHECK(sent.emplace(t.send_tag, free_at[r]).second, "simulate_pipeline: rank ", r,
                        " action ", next[r], " (", to_string(a), ") sends a message (tag ",
                        t.send_tag, ") that was already sent");
        }
        ++next[r];
        progressed = true;
      }
      if (next[r] < list.size()) done = false;
    }
    if (done) break;
    if (!progressed) {
      std::ostringstream os;
      os << "simulate_pipeline: deadlock (pp=" << pp << " vpp=" << vpp
         << " microbatches=" << microbatches << "); stuck:";
      for (int r = 0; r < pp; ++r) {
        if (next[r] >= per_stage[r].size()) continue;
        const PipeAction& a = per_stage[r][next[r]];
        const PipeTransfer t = transfers(a, pp, vpp, r, microbatches);
        const int v = a.chunk * pp + r;
        os << " rank " << r << " at action " << next[r] << " (" << to_string(a)
           << ", virtual stage " << v << ") waits for the "
           << (a.op == PipeOp::forward ? "activations" : "gradient") << " of microbatch "
           << a.microbatch << " from rank " << t.recv_from << " (virtual stage "
           << (a.op == PipeOp::forward ? v - 1 : v + 1) << ");";
      }
      os << " reorder the schedules so that every receive's sender runs first";
      ORIGAMI_FAIL(os.str());
    }
  }

  for (int r = 0; r < pp; ++r) {
    for (int m = 0; m < microbatches; ++m) {
      for (int c = 0; c < vpp; ++c) {
        const uint8_t s = state[r][size_t(m) * vpp + c];
        ORIGAMI_CHECK(s == 2, "simulate_pipeline: rank ", r, " never runs the ",
                      s == 0 ? "forward" : "backward", " of microbatch ", m, " chunk ", c,
                      " (virtual stage ", c * pp + r, ")");
      }
    }
  }
  return *std::max_element(free_at.begin(), free_at.end());
}

}  // namespace origami
