// Communicator: the collectives and point-to-point transfers of one group of ranks.
//
// One interface, two backends: MPI for host tensors (always), NCCL for CUDA tensors (builds with
// ORIGAMI_CUDA; an NCCL communicator routes CPU tensors to its MPI sibling). Models and layers get
// a Communicator& handed to them (see ProcessGroups) and never call MPI or NCCL themselves.
//
// Every wait has a deadline: timeout() (default 300 s, set_timeout to change). When it passes, the
// call throws origami::Error naming the group, the operation and its sequence number, the timeout,
// and the ranks that never arrived at that operation. After such an error the communicator refuses
// further operations (the group is out of step; the run should end).
//
// Tensors are contiguous, on the CPU for MPI (on the communicator's GPU for NCCL). Element counts
// are per rank and in elements; zero-length pieces are allowed. Data movement works for every
// dtype; reductions take f32, bf16, f16 (summed in fp32, rounded once), i32, i64 and u8.
// Operations are collective over the group: every member calls the same ones in the same order
// with matching sizes. A Communicator is used by one thread at a time.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "runtime/tensor.h"

namespace origami {

enum class ReduceOp : uint8_t { sum, max };
const char* reduce_op_name(ReduceOp op);

using Milliseconds = std::chrono::milliseconds;
constexpr Milliseconds kDefaultCommTimeout{300'000};

// A non-blocking transfer in flight. wait() completes it (or throws on the deadline); a Request
// destroyed while pending is abandoned: its buffer is kept alive until the transfer ends or the
// process exits, so the memory is never written after it is freed.
class Request {
 public:
  class Impl {
   public:
    virtual ~Impl() = default;
    virtual bool test() = 0;                      // true once complete (completes it)
    virtual void wait(Milliseconds timeout) = 0;  // throws origami::Error on expiry
  };

  Request() = default;
  Request(std::unique_ptr<Impl> impl, Milliseconds default_timeout)
      : impl_(std::move(impl)), default_timeout_(default_timeout) {}
  Request(Request&&) noexcept = default;
  Request& operator=(Request&&) noexcept = default;
  ~Request() = default;

  bool valid() const { return impl_ != nullptr; }
  // True when the transfer is complete (then the request becomes invalid).
  bool test();
  // Blocks until complete; throws origami::Error after the communicator's timeout (or `timeout`).
  void wait();
  void wait(Milliseconds timeout);

 private:
  std::unique_ptr<Impl> impl_;
  Milliseconds default_timeout_ = kDefaultCommTimeout;
};

// Waits for every request (each with its own default timeout).
void wait_all(std::vector<Request>& requests);

class Communicator {
 public:
  virtual ~Communicator() = default;
  Communicator(const Communicator&) = delete;
  Communicator& operator=(const Communicator&) = delete;

  int rank() const { return rank_; }  // this process's position in the group
  int size() const { return int(global_ranks_.size()); }
  const std::string& name() const { return name_; }  // "tp", "dp-cp", "world", ...
  // global_ranks()[i]: the global (MPI_COMM_WORLD) rank of member i.
  const std::vector<int>& global_ranks() const { return global_ranks_; }
  virtual const char* backend() const = 0;  // "mpi", "nccl"

  Milliseconds timeout() const { return timeout_; }
  virtual void set_timeout(Milliseconds timeout);

  // ---- collectives -------------------------------------------------------------------------
  // In place: every member's `t` becomes the element-wise reduction over the group.
  virtual void all_reduce(Tensor& t, ReduceOp op = ReduceOp::sum) = 0;
  // input: size()*n elements; output: n elements, the reduction of piece rank() of every input.
  virtual void reduce_scatter(const Tensor& input, Tensor& output, ReduceOp op = ReduceOp::sum) = 0;
  // input: n elements; output: size()*n elements, member r's input at [r*n, (r+1)*n).
  virtual void all_gather(const Tensor& input, Tensor& output) = 0;
  // counts[r] elements from member r (counts identical on every member); input holds
  // counts[rank()] elements, output sum(counts), member r's piece at offset sum(counts[<r]).
  virtual void all_gather_v(const Tensor& input, Tensor& output,
                            const std::vector<int64_t>& counts) = 0;
  // input: sum(counts) elements (counts identical on every member); output: counts[rank()], the
  // reduction of piece rank() of every input.
  virtual void reduce_scatter_v(const Tensor& input, Tensor& output,
                                const std::vector<int64_t>& counts,
                                ReduceOp op = ReduceOp::sum) = 0;
  // input: size()*n elements, piece r goes to member r; output: size()*n, piece r came from r.
  virtual void all_to_all(const Tensor& input, Tensor& output) = 0;
  // send_counts[r] elements of input go to member r (pieces in member order); recv_counts[r]
  // elements of output come from member r. send_counts[r] on this rank equals recv_counts[rank()]
  // on member r.
  virtual void all_to_all_v(const Tensor& input, const std::vector<int64_t>& send_counts,
                            Tensor& output, const std::vector<int64_t>& recv_counts) = 0;
  // Member `root`'s `t` is copied to every member's `t`.
  virtual void broadcast(Tensor& t, int root) = 0;
  virtual void barrier() = 0;
  // Waits until every operation issued so far has completed (MPI: nothing to wait for; NCCL: the
  // stream work), with the timeout.
  virtual void synchronize() {}

  // ---- point to point (peer: a member index; tag >= 0) --------------------------------------
  virtual void send(const Tensor& t, int peer, int tag = 0) = 0;
  virtual void recv(Tensor& t, int peer, int tag = 0) = 0;
  virtual Request isend(const Tensor& t, int peer, int tag = 0) = 0;
  virtual Request irecv(Tensor& t, int peer, int tag = 0) = 0;

  // ---- groups ------------------------------------------------------------------------------
  // Collective: members with the same `color` form a new communicator named `name`, ordered by
  // `key` (ties by current rank). Inherits the timeout.
  virtual std::unique_ptr<Communicator> split(int color, int key, const std::string& name) = 0;

 protected:
  Communicator(std::string name, int rank, std::vector<int> global_ranks, Milliseconds timeout)
      : name_(std::move(name)),
        rank_(rank),
        global_ranks_(std::move(global_ranks)),
        timeout_(timeout) {}

  std::string name_;
  int rank_ = 0;
  std::vector<int> global_ranks_;
  Milliseconds timeout_ = kDefaultCommTimeout;
};

// A group of this process alone, without MPI: collectives copy their input to their output,
// split() gives another such group, and point-to-point transfers (which would need a peer) are an
// error. A single-rank run uses it as its world, so it needs no MPI at all.
std::unique_ptr<Communicator> self_communicator(const std::string& name = "world",
                                                Milliseconds timeout = kDefaultCommTimeout);

// Every rank of MPI_COMM_WORLD (duplicated), named "world". Collective; initialises MPI when
// nobody has (see parallel/world.h for finalising it).
std::unique_ptr<Communicator> mpi_world_communicator(Milliseconds timeout = kDefaultCommTimeout);

// An NCCL communicator over the members of `mpi_group` (an MPI communicator, which it keeps for
// bootstrap, for CPU tensors and for finding the ranks that never arrived) on CUDA device
// `device`. Collective over `mpi_group`. Throws in builds without CUDA.
std::unique_ptr<Communicator> nccl_communicator(std::unique_ptr<Communicator> mpi_group,
                                                Device device);

}  // namespace origami
