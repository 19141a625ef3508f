// ParallelModel: one rank's part of a model split by tensor, pipeline and data parallelism, and
// the training step over it.
//
// The rank holds `vpp` pipeline chunks (models::Decoder objects, each its TP slice of a run of
// layers; virtual stage v = chunk * pp + pp_rank, docs/design-facts.md, 'Pipeline schedules'). A
// step runs M microbatches through the pipeline schedule (1F1B, or interleaved 1F1B with vpp > 1; a
// plain loop when pp = 1), sending activations forward and gradients backward with non-blocking
// point-to-point transfers, then reduces the gradients:
//   1. parameters replicated over TP whose gradients are partial (norms, routers, experts under
//      sequence parallelism): all-reduce over TP; KV-head slices shared by several TP ranks:
//      summed among them;
//   2. a tied embedding: the first stage's and the last stage's copies add their gradients;
//   3. data parallel: DistributedOptimizer (ZeRO-1 reduce-scatter, or all-reduce) over dp.
// The gradient norm is summed over the world counting each parameter element once, and AdamW
// runs on each rank's shard.
//
// Equivalence with one rank (tests/mpi/test_parallel_train.cpp): a step of M microbatches of
// B sequences per dp rank equals one rank's step of M microbatches of B*dp sequences with
// gradient accumulation M.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "models/decoder.h"
#include "parallel/distributed_optimizer.h"
#include "parallel/process_groups.h"
#include "parallel/rank_groups.h"
#include "runtime/checkpoint.h"

namespace origami::models {

struct ParallelOptions {
  ParallelLayout layout;              // tp, cp, pp, ep, etp, dp, order
  int vpp = 1;                        // virtual pipeline chunks per rank (interleaved schedule)
  bool sequence_parallel = false;     // with tp > 1
  bool zero = true;                   // ZeRO-1 optimizer sharding over dp (else all-reduce)
  std::vector<int64_t> stage_layers;  // layers of each virtual stage (pp*vpp), empty: even
  int64_t bucket_elements = 1 << 22;  // gradient bucket size (elements)
  bool allgather_dispatcher = false;
  bool cp_ring = true;  // context-parallel attention by ring (else all-gather of K/V)  // MoE:
                        // all-gather tokens over tp-ep, not all-to-all
};

// Layers of every virtual stage: `stage_layers` checked, or the even split (earlier stages one
// layer more when the layers do not divide). Throws naming the numbers when a stage would be
// empty or the counts do not add up.
std::vector<int64_t> split_layers(int64_t layers, int virtual_stages,
                                  const std::vector<int64_t>& stage_layers);

// Checks everything about a layout that can be known before allocating (every rank calls it with
// the same arguments, so every rank stops with the same message): world = product, TP divides
// the heads and the vocabulary, enough layers for the stages, microbatches for the schedule, the
// sequence for sequence parallelism.
void check_parallel_layout(const ModelSpec& spec, const DecoderOptions& base,
                           const ParallelOptions& po, int world_size, int64_t microbatches);

struct StepLoss {
  double loss = 0, ce = 0;  // means over the microbatches (as one rank with accumulation)
};

class ParallelModel {
 public:
  // Collective over groups.world. `base` gives batch (per dp rank), seq, dtype, device,
  // recompute; its `parallel` is filled in here. `microbatches` is the M of every step.
  ParallelModel(const ModelSpec& spec, const DecoderOptions& base, const ParallelOptions& po,
                const RankGroups& layout, ProcessGroups& groups, int64_t microbatches);
  ~ParallelModel();

  int num_chunks() const { return int(chunks_.size()); }
  Decoder& chunk(int c) { return *chunks_[size_t(c)]; }
  const Decoder& chunk(int c) const { return *chunks_[size_t(c)]; }
  int pp_rank() const { return pp_rank_; }
  bool holds_first_stage() const { return chunks_.front()->is_first_chunk(); }
  bool holds_last_stage() const { return chunks_.back()->is_last_chunk(); }

  // Deterministic init (the same values as one rank's ParameterBuffer::init_random).
  void init_random(uint64_t seed, double std);
  // Zeroes the gradients, runs the microbatches (ids/targets: M tensors [B,S] each, read by the
  // first / last stage), reduces the gradients. Returns the loss on every rank.
  StepLoss forward_backward(const std::vector<Tensor>& ids, const std::vector<Tensor>& targets);
  // The global gradient norm of the reduced gradients, times `scale`.
  double grad_norm(double scale = 1.0);
  // grads *= s (this rank's reduced shards).
  void scale_gradients(float s);
  // AdamW on this rank's shards, then the updated parameters gathered over dp.
  void optimizer_step(const ops::AdamWParams& p);

  // Copies every parameter's slice from a whole (single-rank layout) buffer, e.g. loaded from a
  // Hugging Face folder.
  void load_whole(const ParameterBuffer& whole);
  // Checkpoints with each tensor saved under its name with its global shape and this rank's
  // offsets ("params/NAME", "adam_m/NAME", "adam_v/NAME", "expert_bias/LAYER"), so that a
  // checkpoint written under one layout loads under any other. save() is collective (the Adam
  // state is gathered over dp); load() reads this rank's slices.
  void save(CheckpointWriter& w);
  void load(const CheckpointReader& rd);

  // A whole parameter (global shape, f32) gathered from its owners; collective over the world.
  // which: "params", "grads" (reduced), "adam_m", "adam_v".
  Tensor gather(const std::string& name, const std::string& which = "params");
  // Every parameter name of the model, in layout order of a single rank.
  const std::vector<std::string>& names() const { return all_names_; }

  // Elements of Adam m (= of v) this rank holds, over its chunks.
  int64_t optimizer_state_elements() const;

  // What rank 0 prints at start-up: the layout and this rank's memory plan.
  std::string describe() const;

 private:
  StepLoss run_step(const std::vector<Tensor>& ids, const std::vector<Tensor>& targets);
  void run_pipeline(const std::vector<Tensor>& ids, const std::vector<Tensor>& targets,
                    double& loss_sum, double& ce_sum);
  void reduce_tensor_parallel();
  void reduce_tied_embedding();

  ModelSpec spec_;
  ParallelOptions po_;
  ProcessGroups& groups_;
  int64_t microbatches_;
  int pp_ = 1, pp_rank_ = 0, tp_ = 1, dp_ = 1, cp_ = 1;
  std::vector<Tensor> cp_ids_, cp_targets_;  // this rank's zigzag part of each microbatch
  std::vector<std::unique_ptr<Decoder>> chunks_;
  // A chunk's flat buffer is two regions: the dense tensors, reduced over dp, and the experts
  // (from ParameterLayout::expert_offset()), reduced over the expert-data-parallel group.
  struct Region {
    int chunk = 0;
    int64_t begin = 0, end = 0;  // in the chunk's flat buffer
    Communicator* group = nullptr;
    std::unique_ptr<DistributedOptimizer> opt;
    std::vector<FlatRange> counted;  // owned tensors, relative to begin (gradient norm)
  };
  std::vector<Region> regions_;
  const Region& region_of(int chunk, int64_t offset) const;
  std::vector<int> slots_;  // activation slots per chunk
  std::vector<std::string> all_names_;
  Tensor shared_scratch_;                    // [max global numel of a tp_shared entry] f32
  Tensor tied_scratch_;                      // [embedding slice] f32
  std::vector<Tensor> recv_fwd_, send_bwd_;  // pipeline transfer buffers
  std::vector<Tensor> recv_bwd_;
  Tensor loss_mine_, loss_all_, norm_mine_, norm_all_;  // per-step exchanges, allocated once
  bool reduced_ = false;
};

}  // namespace origami::models
