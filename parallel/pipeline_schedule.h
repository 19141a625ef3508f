// Pipeline-parallel schedules: the order in which one pipeline rank runs the forward and backward
// passes of its microbatches. Pure logic, no communication: a runner walks the list, and
// transfers() tells it what to receive before and send after each action.
//
// Terms: P pipeline ranks ("stages"), M microbatches, V model chunks per rank (virtual pipeline).
// Chunk c of rank p is virtual stage v = c*P + p; activations flow v -> v+1, gradients v+1 -> v.
// F(m) / B(m) below: forward / backward of microbatch m.
//
// 1F1B (Megatron's non-interleaved schedule, V = 1), rank p:
//
//   warmup    w = min(P-p-1, M) forwards              F(0) .. F(w-1)
//   steady    M-w pairs, one forward then one backward F(w) B(0)  F(w+1) B(1) ...
//   cooldown  the w backwards still owed               B(M-w) .. B(M-1)
//
//   At most min(P-p, M) microbatches have run forward but not backward on rank p, so the first
//   stage stores the most activations. With equal forward/backward times t the step takes
//   (M + P - 1) * 2t: the bubble is (P-1) * 2t.
//
// Interleaved 1F1B (Megatron's schedule with V > 1 chunks per rank, M a multiple of P), rank p:
//
//   The M*V (microbatch, chunk) pairs are numbered k = 0 .. M*V-1 in groups of P microbatches:
//   in each group of P*V numbers, the first P run chunk 0 of those P microbatches, the next P run
//   chunk 1, and so on; backward numbers visit the chunks in reverse (chunk V-1 first):
//
//     forward  k: microbatch (k / (P*V)) * P + k % P, chunk (k % (P*V)) / P
//     backward k: the same microbatch,                chunk V-1 - (k % (P*V)) / P
//
//   warmup    w = min(2(P-p-1) + (V-1)P, M*V) forwards (all M*V when M == P)   F(0) .. F(w-1)
//   steady    M*V-w pairs, one forward then one backward                       F(w+i) B(i)
//   cooldown  the w backwards still owed
//
//   Each action is 1/V of a stage's work, so the bubble shrinks to about (P-1) * 2t / V at the
//   price of V times more messages and more activations in flight.
//
// Messages: each (direction, microbatch, receiving virtual stage) has its own tag (pipe_tag), so
// non-blocking sends and receives posted ahead never match the wrong partner.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace origami {

enum class PipeOp : uint8_t { forward, backward };

struct PipeAction {
  PipeOp op;
  int microbatch;
  int chunk;  // this rank's model chunk, 0..vpp-1; virtual stage = chunk*pp + stage
  bool operator==(const PipeAction&) const = default;
};

// "F3" / "B3" for vpp == 1, "F3.c1" otherwise (for messages and test output).
std::string to_string(const PipeAction& a);

// Megatron-style 1F1B for rank `stage` of `pp` (vpp = 1): warmup forwards (pp - stage - 1,
// capped at M), steady 1F1B, cooldown backwards.
std::vector<PipeAction> schedule_1f1b(int pp, int stage, int microbatches);

// Megatron's interleaved 1F1B with vpp model chunks per rank. With vpp > 1, microbatches must be
// a multiple of pp; vpp == 1 gives exactly schedule_1f1b.
std::vector<PipeAction> schedule_interleaved(int pp, int vpp, int stage, int microbatches);

// Where an action's input comes from and where its output goes (ranks in the pipeline group).
// forward of (m, virtual stage v): receives activations from v-1 (rank (v-1)%pp) unless v == 0;
//   sends to v+1 unless v is the last virtual stage.
// backward: receives the gradient from v+1 unless v is last; sends to v-1 unless v == 0.
// A sender's send_tag equals its receiver's recv_tag. With pp == 1 and vpp > 1 a rank sends to
// itself.
struct PipeTransfer {
  bool recv = false, send = false;
  int recv_from = -1, send_to = -1;
  int recv_tag = 0, send_tag = 0;
};
PipeTransfer transfers(const PipeAction& a, int pp, int vpp, int stage, int microbatches);

// The tag of the message that carries activations (gradient == false) or gradients (true) of
// microbatch m into virtual stage v: 2*(m*pp*vpp + v) + gradient. Unique per message, >= 0.
int pipe_tag(bool gradient, int microbatch, int virtual_stage, int pp, int vpp);

// The most microbatches whose forward has run but whose backward has not, per chunk, over the
// schedule (sizes activation storage). Throws if a backward comes before its forward.
std::vector<int> max_in_flight(const std::vector<PipeAction>& schedule, int vpp);

// Checks a schedule set (one list per stage) by simulation: every rank executes its actions in
// order; a receive waits until the matching send has been issued (sends never block: they are
// non-blocking; transfer takes no time). Throws origami::Error naming the stuck ranks and actions
// on deadlock, and checks that each rank runs each of its (m, chunk) forward once and backward
// once, forward first. Returns the simulated time of the whole step (the last rank's finish),
// with forwards taking forward_time and backwards backward_time (for bubble statistics).
int64_t simulate_pipeline(int pp, int vpp, int microbatches,
                          const std::vector<std::vector<PipeAction>>& per_stage,
                          int64_t forward_time = 1, int64_t backward_time = 1);

}  // namespace origami
