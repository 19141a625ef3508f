// Context parallelism (docs/design-facts.md, 'Context parallelism'): causal attention over a
// sequence whose tokens are split across the ranks of a CP group.
//
// Zigzag split. The S tokens are cut into 2*CP chunks of C = S / (2*CP) tokens; CP rank r keeps
// chunks r and 2*CP-1-r, in that order, as its S_local = 2*C tokens. Under a causal mask chunk g
// attends to g+1 chunks, so every rank does the same work: (r+1) + (2*CP-r) = 2*CP+1 chunk pairs.
// Everything the model computes per token (RoPE among others) takes the positions from
// zigzag_positions(); layers that see one token at a time need nothing else.
//
// CpAttention computes, for the local queries, exactly what single-rank attention over the whole
// sequence gives for those rows (out, lse, and in backward dq, dk, dv of the local tokens), in two
// variants behind one interface:
//
//   all_gather  forward: the K/V of every rank are all-gathered and put back into global token
//               order; each local query chunk attends to them with the causal (and sliding-window)
//               mask by global position. Backward: dK, dV over the whole sequence are summed
//               locally, then reduce-scattered back to the ranks that own those tokens.
//   ring        forward: CP steps; at step i a rank holds the K/V of rank (r-i) mod CP, computes
//   its
//               queries against it while the block travels on to rank r+1 (isend/irecv posted
//               before the compute), and merges the partial result with log-sum-exp. Chunk pairs
//               that the mask hides entirely are skipped (steps 1..r: both query chunks against
//               the first K/V chunk; steps > r: the second query chunk against both K/V chunks).
//               Backward runs the same ring; the dK/dV accumulator of each block travels with it
//               (f32) and a last hop brings it home to its owner.
//
// Numerics: partial outputs, lse and gradients are accumulated in f32 whatever the input dtype
// (bf16 inputs are attended in bf16 and the partial results widened before merging), and rounded
// once to the output dtype at the end.
//
// Layout of the tensors handed in and out: the local zigzag part in local token order,
//   q, out, dq, dout  [B, S_local, Hq, D]   (dtype of the layer)
//   k, v, dk, dv      [B, S_local, Hkv, D]
//   lse               [B, Hq, S_local] f32
// Every buffer is allocated in the constructor for the largest shapes; forward() and backward()
// allocate no tensor memory. Calls are collective over the CP group (every member calls the same
// ones in the same order with the same B and S_local). A CP group of one rank works (no
// communication).
#pragma once

#include <cstdint>
#include <vector>

#include "parallel/communicator.h"
#include "runtime/tensor.h"

namespace origami {

// Throws origami::Error unless cp >= 1 and S is a positive multiple of 2*cp; the message names S,
// CP and 2*CP.
void check_zigzag_sequence(int64_t S, int cp);

// Global position of each of the S/cp local tokens of CP rank `rank` (chunk rank, then chunk
// 2*cp-1-rank).
std::vector<int64_t> zigzag_positions(int64_t S, int cp, int rank);

// local = the zigzag part of `full` that CP rank `rank` keeps: `full` has S along `seq_dim`,
// `local` has S/cp there and the same other sizes (any dtypes: copy_from converts; any strides).
void zigzag_split(const Tensor& full, int cp, int rank, Tensor& local, int seq_dim = 1);

// The inverse over a CP group: every member passes its local part (as zigzag_split makes it) and
// receives the whole tensor in global token order. Collective; allocates a gather buffer per call
// (meant for tests, loss reporting and checkpoints, not for the training step).
void zigzag_gather(Communicator& cp, const Tensor& local, Tensor& full, int seq_dim = 1);

enum class CpVariant : uint8_t { all_gather, ring };
const char* cp_variant_name(CpVariant v);  // "all-gather", "ring"

// What the calls so far have cost (for benchmarks; reset_stats() clears it).
struct CpAttentionStats {
  int64_t attention_calls = 0;   // kernel calls (forward and backward)
  int64_t bytes_sent = 0;        // bytes this rank sent or contributed to collectives
  double comm_wait_seconds = 0;  // time spent in collectives and waiting for transfers
};

class CpAttention {
 public:
  // cp: the context-parallel group (must outlive this object). Largest shapes: B, S_local (even:
  // the sequence S = S_local * cp.size() must be divisible by 2*CP), Hq query heads, Hkv key/value
  // heads (Hq % Hkv == 0), head dim D. dtype f32 or bf16. window: sliding window in tokens (keys
  // with 0 <= q_pos - k_pos < window) or -1 for plain causal attention. scale: softmax scale, 0
  // for 1/sqrt(D). Buffers live on `device` (the communicator must handle it).
  CpAttention(Communicator& cp, CpVariant variant, int64_t B, int64_t S_local, int64_t Hq,
              int64_t Hkv, int64_t D, DType dtype, int64_t window = -1, float scale = 0.0f,
              Device device = Device::cpu());
  CpAttention(const CpAttention&) = delete;
  CpAttention& operator=(const CpAttention&) = delete;

  // q [B',S',Hq,D], k, v [B',S',Hkv,D] with B' <= B and S' <= S_local even (the same on every
  // member): the local zigzag parts. Writes out [B',S',Hq,D] and lse [B',Hq,S'] f32 (natural log).
  void forward(const Tensor& q, const Tensor& k, const Tensor& v, Tensor& out, Tensor& lse);

  // Gradients of the local tokens given out and lse from forward() and dout [B',S',Hq,D]: dq, dk,
  // dv are overwritten (dk, dv: the sums over every rank's queries that see these keys).
  void backward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                const Tensor& lse, const Tensor& dout, Tensor& dq, Tensor& dk, Tensor& dv);

  CpVariant variant() const { return variant_; }
  Communicator& group() const { return cp_; }
  const CpAttentionStats& stats() const { return stats_; }
  void reset_stats() { stats_ = {}; }

 private:
  // Shapes of one call.
  struct Dims {
    int64_t B = 0, S_local = 0, C = 0;
  };
  Dims check_call(const char* op, const Tensor& q, const Tensor& k, const Tensor& v) const;
  // Global chunk index of local chunk a (0 or 1) of CP rank `rank`.
  int64_t global_chunk(int rank, int a) const;
  // True when some query of global chunk gq sees some key of global chunk gk.
  bool chunk_pair_visible(int64_t gq, int64_t gk, int64_t C) const;

  // Local token-major tensors -> chunk-major work buffers and back.
  void pack_chunks(const Tensor& x, Tensor dst, int seq_dim, int64_t C) const;
  void unpack_chunks(const Tensor& src, Tensor& x, int seq_dim, int64_t C) const;

  void forward_all_gather(const Dims& d, const Tensor& out, const Tensor& lse);
  void backward_all_gather(const Dims& d, Tensor& dq, Tensor& dk, Tensor& dv);
  void forward_ring(const Dims& d, const Tensor& out, const Tensor& lse);
  void backward_ring(const Dims& d, Tensor& dq, Tensor& dk, Tensor& dv);

  void wait(Request& r);

  Communicator& cp_;
  CpVariant variant_;
  int64_t B_max_, S_local_max_, Hq_, Hkv_, D_;
  DType dtype_;
  int64_t window_;
  float scale_;
  Device device_;
  int cp_size_, cp_rank_;
  CpAttentionStats stats_;

  // Flat work buffers (views of the right shape are cut from them per call). "cm": chunk-major,
  // [2 local chunks][B,C,H,D]; "kv": [2 (k,v)][2 chunks][B,C,Hkv,D].
  Tensor q_cm_, out_cm_, dout_cm_;  // dtype, 2*B*C*Hq*D each
  Tensor lse_cm_;                   // f32 [2][B,Hq,C]
  Tensor kv_[2];                    // dtype kv: own block / block in flight (ring)
  Tensor part_out_, part_lse_;      // one chunk's partial result: dtype [B,C,Hq,D], f32 [B,Hq,C]
  Tensor part_out_f32_;             // f32 [B,C,Hq,D] (bf16: the widened partial result)
  Tensor acc_out_, acc_lse_;        // f32 chunk-major out, lse (ring merge)
  Tensor dq_part_, dk_part_, dv_part_;  // dtype: one kernel call's gradients
  Tensor dq_acc_;                       // f32 chunk-major dq
  Tensor dkv_[3];  // f32 kv-shaped: ring step contribution / incoming / outgoing accumulator
  // all_gather only: gathered blocks [CP][kv], the whole sequence in token order
  Tensor gathered_;           // dtype [CP][2][2][B,C,Hkv,D]; f32 for the reduce-scatter
  Tensor k_full_, v_full_;    // dtype [B,S,Hkv,D]
  Tensor dk_full_, dv_full_;  // f32 [B,S,Hkv,D] accumulators
  Tensor dkv_scatter_;        // f32 [CP][2][2][B,C,Hkv,D]
  Tensor dkv_mine_;           // f32 [2][2][B,C,Hkv,D]
};

}  // namespace origami
