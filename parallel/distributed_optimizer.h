// DistributedOptimizer: AdamW over the data-parallel group on one flat parameter buffer per rank
// (docs/design-facts.md, 'Distributed optimizer (ZeRO-1)'), with the optimizer state sharded over
// dp (ZeRO-1) or replicated.
//
// The model keeps its parameters in one flat buffer (llm.c style, models/parameters.h):
//   master  [P] f32   the weights AdamW updates; every dp rank holds all of them after step()
//   grads   [P] f32   this rank's gradients; after reduce_gradients(), the sum over dp
//   compute [P] bf16 or f32, optional: the copy forward/backward read, refreshed after step()
//
// Buckets and pieces. The flat buffer is cut into contiguous buckets of bucket_elements
// (bucket b covers [b*bucket_elements, min(P, (b+1)*bucket_elements))); each bucket is split into
// dp nearly equal pieces in rank order, the first (length % dp) pieces one element longer (pieces
// of 0 elements when a bucket is shorter than dp). Rank r owns piece r of every bucket.
//
// One step (every call collective over dp, in this order on every rank):
//   reduce_gradients()        ZeRO: reduce_scatter_v of each bucket; the owned pieces of grads
//                             become the sums over dp (the rest of grads is left as it was, not
//                             reduced). Without ZeRO: all_reduce of each bucket (all of grads).
//   local_grad_sum_squares()  this rank's share of the squared global norm (owned pieces only, in
//                             both modes), to be all-reduced by the caller over the group that
//                             spans the whole model (docs/design-facts.md: the world)
//   scale_gradients(s)        clipping / averaging factor on the reduced gradients
//   step(adamw)               ZeRO: AdamW on the owned pieces (m, v only exist for those), then
//                             all_gather_v of each bucket's updated master pieces; without ZeRO:
//                             AdamW on everything, identical on every rank. The compute copy is
//                             refreshed from the master weights (bf16: rounded to nearest even).
//
// Every buffer (Adam m and v, the one-piece scratch that reduce-scatter and all-gather need since
// a collective's input and output must not overlap) is allocated in the constructor; nothing is
// allocated inside reduce_gradients() or step(). With dp size 1 nothing is communicated.
//
// Expert parameters, reduced over the expert-data-parallel group, get their own
// DistributedOptimizer over that group's communicator and their own flat buffers.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "ops/optimizer.h"
#include "parallel/communicator.h"
#include "runtime/tensor.h"

namespace origami {

// A range of elements of the flat buffer.
struct FlatRange {
  int64_t offset = 0, length = 0;
  int64_t end() const { return offset + length; }
};

struct DistributedOptimizerOptions {
  // ZeRO-1: shard Adam m, v (and the update) over dp. false: all-reduce, full state everywhere.
  bool zero = true;
  // Gradients are reduced in contiguous buckets of at most this many elements (>= 1).
  int64_t bucket_elements = int64_t(1) << 22;
};

class DistributedOptimizer {
 public:
  // master, grads: f32 [P], contiguous (any shape; used as flat [P]); compute: undefined, or a
  // contiguous [P] bf16/f32 copy refreshed after each step (an f32 compute that is master itself
  // is allowed: nothing to refresh). All on one device (the communicator must handle it: MPI for
  // the CPU, NCCL for CUDA). dp: the data-parallel communicator (size 1: no communication). The
  // tensors and dp must outlive the optimizer. Allocates m and v (zeros) and the scratch piece.
  DistributedOptimizer(Tensor master, Tensor grads, Tensor compute, Communicator& dp,
                       const DistributedOptimizerOptions& options = {});
  DistributedOptimizer(const DistributedOptimizer&) = delete;
  DistributedOptimizer& operator=(const DistributedOptimizer&) = delete;

  // Sums grads over dp, bucket by bucket (ZeRO: reduce_scatter_v into this rank's pieces;
  // otherwise all_reduce of every bucket). Collective.
  void reduce_gradients();

  // Sum of squares (in double) of the reduced gradients of this rank's pieces -- in both modes, so
  // that summing over dp counts every element once -- restricted to `counted` (sorted, disjoint
  // ranges inside [0, P); e.g. leaving out copies of parameters replicated over tensor-parallel
  // ranks). The overload without ranges counts every element. Local: no communication.
  double local_grad_sum_squares(const std::vector<FlatRange>& counted) const;
  double local_grad_sum_squares() const;

  // Multiplies the reduced gradients by s: this rank's pieces with ZeRO, all of grads without.
  void scale_gradients(float s);

  // AdamW (ops::adamw_step) on this rank's pieces, all_gather_v of the updated master pieces,
  // then the compute copy refreshed. Without ZeRO: AdamW on everything locally. Collective.
  void step(const ops::AdamWParams& p);

  // Checkpoints. m_full, v_full: f32 [P] contiguous on the optimizer's device, allocated by the
  // caller. gather_state fills them with the full Adam state (ZeRO: all_gather_v over dp, so
  // collective; without ZeRO a local copy). load_state takes this rank's pieces from them (every
  // rank passes the same full state). No communication in load_state.
  void gather_state(Tensor& m_full, Tensor& v_full);
  void load_state(const Tensor& m_full, const Tensor& v_full);

  // Elements of m (= of v) held by this rank: the sum of its pieces (about P/dp) with ZeRO, P
  // without.
  int64_t state_elements() const;
  // This rank's m, v ([state_elements()] f32; with ZeRO its pieces one after another, in bucket
  // order).
  const Tensor& state_m() const { return m_; }
  const Tensor& state_v() const { return v_; }

  // Layout, for callers and tests.
  bool zero() const { return zero_; }
  int64_t numel() const { return numel_; }  // P
  int dp_size() const { return dp_size_; }
  int dp_rank() const { return dp_rank_; }
  int64_t num_buckets() const { return int64_t(buckets_.size()); }
  FlatRange bucket(int64_t b) const;
  // Piece `r` (a dp rank) of bucket b, in elements of the flat buffer.
  FlatRange piece(int64_t b, int r) const;
  // This rank's pieces of every bucket, in bucket order (pieces of 0 elements included).
  std::vector<FlatRange> owned_pieces() const;

  // E.g. "ZeRO-1 over dp=2: 3 buckets of <= 1M elements, Adam state for 1.2M of 2.4M elements
  // per rank".
  std::string describe() const;

 private:
  struct Bucket {
    FlatRange range;               // in the flat buffer
    std::vector<int64_t> counts;   // [dp] piece lengths
    std::vector<int64_t> offsets;  // [dp] piece offsets in the flat buffer
    int64_t state_offset = 0;      // of this rank's piece in m_, v_ (ZeRO)
  };
  FlatRange own(const Bucket& b) const {
    return {b.offsets[size_t(dp_rank_)], b.counts[size_t(dp_rank_)]};
  }
  void check_full_state(const char* op, const Tensor& t, const char* name) const;

  Communicator& dp_;
  bool zero_ = true;
  int dp_size_ = 1, dp_rank_ = 0;
  int64_t numel_ = 0, bucket_elements_ = 0;
  Tensor master_, grads_, compute_;  // flat [P] views
  Tensor m_, v_;                     // [state_elements()] f32
  Tensor scratch_;                   // [largest piece] f32 (ZeRO with dp > 1)
  std::vector<Bucket> buckets_;
};

}  // namespace origami
