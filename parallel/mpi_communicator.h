// Internal: the MPI communicator (parallel/mpi_communicator.cpp) and the argument checks shared by
// the backends. Users see only parallel/communicator.h.
//
// Timeouts: every operation is a non-blocking MPI call whose request is polled with MPI_Test until
// the deadline. To name the ranks that never arrived, each member keeps an "arrival record" (the
// sequence number, kind and size of the last collective it entered) in an MPI window of its own;
// entering a collective is one store into local memory. Only on a timeout does a rank read the
// other members' records (MPI_Rget, passive target: the missing ranks need not cooperate). A group
// whose window MPI cannot allocate runs without records (every member agrees, with a note); its
// timeouts then say that the missing ranks are unknown.
#pragma once

#include <mpi.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "parallel/communicator.h"

namespace origami::detail {

// The operations a communicator runs, for arrival records and messages.
enum class CollectiveKind : int32_t {
  none,
  all_reduce,
  reduce_scatter,
  all_gather,
  all_gather_v,
  reduce_scatter_v,
  all_to_all,
  all_to_all_v,
  broadcast,
  barrier,
};
const char* collective_name(CollectiveKind k);

// One member's arrival record, in its window (read remotely on a timeout).
struct Arrival {
  int64_t op = 0;      // sequence number of the last collective entered (1-based; 0: none yet)
  int32_t kind = 0;    // its CollectiveKind
  int32_t dtype = -1;  // its DType, -1 when it has no tensor
  int64_t numel = 0;   // its element count
  int64_t reserved = 0;
};

// ---- argument checks shared by the backends: "tp: all_gather: output must hold ..." -------------
void check_tensor(const Communicator& c, const char* op, const char* what, const Tensor& t);
void check_same_dtype(const Communicator& c, const char* op, const Tensor& a, const Tensor& b);
void check_numel(const Communicator& c, const char* op, const char* what, const Tensor& t,
                 int64_t expected, const char* why);
// counts: one per member, each >= 0; returns their sum.
int64_t check_counts(const Communicator& c, const char* op, const char* what,
                     const std::vector<int64_t>& counts);
void check_peer(const Communicator& c, const char* op, int peer, int tag);

class MpiCommunicator final : public Communicator {
 public:
  // Takes ownership of `comm` (freed on destruction). Collective over `comm`.
  MpiCommunicator(MPI_Comm comm, std::string name, Milliseconds timeout);
  ~MpiCommunicator() override;

  const char* backend() const override { return "mpi"; }
  MPI_Comm handle() const { return comm_; }

  void all_reduce(Tensor& t, ReduceOp op) override;
  void reduce_scatter(const Tensor& input, Tensor& output, ReduceOp op) override;
  void all_gather(const Tensor& input, Tensor& output) override;
  void all_gather_v(const Tensor& input, Tensor& output,
                    const std::vector<int64_t>& counts) override;
  void reduce_scatter_v(const Tensor& input, Tensor& output, const std::vector<int64_t>& counts,
                        ReduceOp op) override;
  void all_to_all(const Tensor& input, Tensor& output) override;
  void all_to_all_v(const Tensor& input, const std::vector<int64_t>& send_counts, Tensor& output,
                    const std::vector<int64_t>& recv_counts) override;
  void broadcast(Tensor& t, int root) override;
  void barrier() override;
  void send(const Tensor& t, int peer, int tag) override;
  void recv(Tensor& t, int peer, int tag) override;
  Request isend(const Tensor& t, int peer, int tag) override;
  Request irecv(Tensor& t, int peer, int tag) override;
  std::unique_ptr<Communicator> split(int color, int key, const std::string& name) override;

  // For other backends over the same group (NCCL): record entering collective `kind` (returns its
  // sequence number), and explain a timeout of operation `op` (which ranks never arrived).
  int64_t announce(CollectiveKind kind, const Tensor* t);
  std::string describe_timeout(int64_t op, CollectiveKind kind, const Tensor* t,
                               const std::string& details, Milliseconds waited);
  // Marks the communicator unusable after a failed operation.
  void mark_broken(const std::string& why) { broken_ = why; }
  void check_usable(const char* op) const;

 private:
  // Starts a collective with `start(MPI_Request*)`, waits with the deadline. `keep` holds the
  // buffers the request uses, kept alive if it has to be abandoned.
  template <typename Start>
  void run(CollectiveKind kind, const Tensor* described, const std::string& details,
           std::vector<Tensor> keep, Start&& start);
  // Polls `reqs` until all complete or `deadline` passes; then names the missing ranks, abandons
  // the requests (with `keep`), marks the communicator broken and throws.
  void wait_or_throw(MPI_Request* reqs, int n, std::chrono::steady_clock::time_point deadline,
                     int64_t op, CollectiveKind kind, const Tensor* described,
                     const std::string& details, std::vector<Tensor>& keep);
  // The collectives on buffers of f32, i32, i64 or u8 (16-bit floats come through fp32 copies),
  // reported as operations on `described`, as point-to-point algorithms on ring_comm_: rings,
  // recursive doubling for all-reduces below the ring threshold (use_ring), direct or pairwise
  // exchanges for all-to-all.
  void all_reduce_buffer(Tensor& t, ReduceOp op, const Tensor& described, std::vector<Tensor> keep);
  void reduce_scatter_buffer(CollectiveKind kind, const Tensor& input, Tensor& output,
                             const std::vector<int64_t>* counts, ReduceOp op,
                             const Tensor& described, std::vector<Tensor> keep);
  void all_gather_buffer(CollectiveKind kind, const Tensor& input, Tensor& output,
                         const std::vector<int64_t>* counts);
  void all_to_all_buffer(CollectiveKind kind, const Tensor& input,
                         const std::vector<int64_t>& send_counts, Tensor& output,
                         const std::vector<int64_t>& recv_counts);
  bool use_ring(int64_t bytes) const;

  // One ring collective in flight: its sequence number, deadline, description and the buffers
  // its messages use.
  struct RingContext {
    int64_t index = 0;
    std::chrono::steady_clock::time_point deadline;
    CollectiveKind kind = CollectiveKind::none;
    const Tensor* described = nullptr;
    std::string details;
    std::vector<Tensor> keep;
  };
  RingContext ring_context(CollectiveKind kind, const Tensor& described, std::string details,
                           std::vector<Tensor> keep);
  // A scratch buffer of at least `bytes`, kept alive with the operation.
  char* ring_scratch(int64_t bytes, RingContext& ctx);
  // Receives `recv_count` elements from the previous member while sending `send_count` to the
  // next one; waits with the operation's deadline.
  void ring_step(void* recv, int64_t recv_count, const void* send, int64_t send_count,
                 MPI_Datatype type, RingContext& ctx);
  // The same with any peers; a peer < 0 skips that direction. post_exchange only starts the
  // transfers (returns how many requests it filled in).
  int post_exchange(int recv_peer, void* recv, int64_t recv_count, int send_peer, const void* send,
                    int64_t send_count, MPI_Datatype type, RingContext& ctx, MPI_Request reqs[2]);
  void exchange(int recv_peer, void* recv, int64_t recv_count, int send_peer, const void* send,
                int64_t send_count, MPI_Datatype type, RingContext& ctx);
  void doubling_all_reduce(Tensor& t, ReduceOp op, RingContext& ctx);
  // out: every member's piece at offsets[m] (counts[m] elements); this member's comes from `own`.
  void ring_all_gather(const char* own, char* out, const std::vector<int64_t>& offsets,
                       const std::vector<int64_t>& counts, DType dtype, RingContext& ctx);
  // out (counts[rank] elements) = the reduction over members of their piece rank of `in`.
  void ring_reduce_scatter(const char* in, const std::vector<int64_t>& offsets,
                           const std::vector<int64_t>& counts, char* out, DType dtype, ReduceOp op,
                           RingContext& ctx);
  // Reductions of 16-bit floats go through fp32 copies of the buffers.
  void reduce_16bit(CollectiveKind kind, const Tensor& input, Tensor& output,
                    const std::vector<int64_t>* counts, ReduceOp op);

  // All-reduces of at least this many bytes go around the ring (ORIGAMI_COMM_RING_MIN_BYTES
  // overrides it).
  static constexpr int64_t kRingMinBytes = int64_t(256) << 10;

  MPI_Comm comm_ = MPI_COMM_NULL;
  MPI_Comm ring_comm_ = MPI_COMM_NULL;  // the ring all-reduce's messages, apart from users'
  Tensor ring_scratch_;                 // its receive buffer, grown on demand
  MPI_Win window_ = MPI_WIN_NULL;       // MPI_WIN_NULL: MPI could not make it; no records
  Arrival* arrival_ = nullptr;          // this member's record (window memory, else own_arrival_)
  Arrival own_arrival_;                 // the record of a group without a window
  bool window_separate_ = false;        // MPI_WIN_SEPARATE: stores need MPI_Win_sync to be seen
  bool window_reads_pending_ = false;   // a timeout's MPI_Rget never completed (a dead peer)
  int64_t op_count_ = 0;
  std::string broken_;  // non-empty: why the communicator may not be used any more
};

}  // namespace origami::detail
