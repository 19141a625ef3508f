// TimedCommunicator: a Communicator that forwards every call to an inner communicator and adds
// the call's wall time and bytes to a CommTimings record, by group, operation and call site.
//
// For benchmarks that split a step's time by communication type: wrap every communicator of a
// ProcessGroups (time_process_groups) before building the model, run steps, read the record.
// Wall time is the time the call blocks this rank, so it includes waiting for slower members of
// the group (load imbalance shows up as communication). A non-blocking transfer (isend, irecv)
// counts the time to start it plus the time its Request spends in wait() / test(); the transfer
// itself may overlap compute in between, which is not counted.
//
// Bytes are this rank's payload of the call: all_reduce, broadcast, send, recv: the tensor;
// reduce_scatter(_v): the input; all_gather(_v): the output; all_to_all(_v): what this rank
// sends (each including the piece that stays on the rank). barrier and synchronize move no
// bytes.
//
// Waiting apart from transfer: with CommTimings::set_barrier_first(true) every collective is
// preceded by a barrier over the same group, timed as the call's wait_seconds (also part of its
// seconds): the time this rank waited for the last member to arrive, so that the rest is the
// collective itself. The extra barriers add their own latency to the step.
//
// Call sites: CommTimings::set_site_hook installs a function called at every operation (before
// the clock starts) that names the code making the call, e.g. from the stack ("attention",
// "moe", "optimizer"); without it every call's site is "". split() of a timed communicator gives
// a timed communicator recording into the same CommTimings.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <tuple>
#include <vector>

#include "parallel/communicator.h"
#include "parallel/process_groups.h"

namespace origami {

enum class CommOp : uint8_t {
  all_reduce,
  reduce_scatter,
  all_gather,
  all_gather_v,
  reduce_scatter_v,
  all_to_all,
  all_to_all_v,
  broadcast,
  barrier,
  synchronize,
  send,
  recv,
  isend,  // start + wait of a non-blocking send
  irecv,  // start + wait of a non-blocking receive
};
const char* comm_op_name(CommOp op);

struct CommStat {
  int64_t calls = 0;
  int64_t bytes = 0;
  double seconds = 0;       // the whole call, wait included
  double wait_seconds = 0;  // in the barrier before it (set_barrier_first), else 0
};

// What the timed communicators of one process recorded, keyed by (group name, operation, site).
// Safe to share between communicators used from different threads.
class CommTimings {
 public:
  struct Key {
    std::string group;
    CommOp op = CommOp::all_reduce;
    std::string site;
    bool operator<(const Key& o) const {
      return std::tie(group, op, site) < std::tie(o.group, o.op, o.site);
    }
  };

  // Names the call site of each operation; called on the calling thread before the operation.
  void set_site_hook(std::function<std::string()> hook);
  std::string site() const;  // the hook's answer, or "" without one

  // Precede every collective by a barrier timed as its wait (see the header comment).
  void set_barrier_first(bool on);
  bool barrier_first() const;

  // Adds one call (calls: 1 for an operation, 0 for the later wait of a non-blocking one).
  void add(const Key& key, int64_t calls, int64_t bytes, double seconds, double wait_seconds = 0);
  // Everything recorded so far (a copy), and the total over every key.
  std::map<Key, CommStat> snapshot() const;
  CommStat total() const;
  void reset();

 private:
  mutable std::mutex mutex_;
  std::function<std::string()> hook_;
  bool barrier_first_ = false;
  std::map<Key, CommStat> stats_;
};

class TimedCommunicator final : public Communicator {
 public:
  // Takes ownership of `inner`; records into `timings` (shared with the caller).
  TimedCommunicator(std::unique_ptr<Communicator> inner, std::shared_ptr<CommTimings> timings);

  Communicator& inner() const { return *inner_; }
  const std::shared_ptr<CommTimings>& timings() const { return timings_; }

  const char* backend() const override { return inner_->backend(); }
  void set_timeout(Milliseconds timeout) override;

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
  void synchronize() override;

  void send(const Tensor& t, int peer, int tag) override;
  void recv(Tensor& t, int peer, int tag) override;
  Request isend(const Tensor& t, int peer, int tag) override;
  Request irecv(Tensor& t, int peer, int tag) override;

  std::unique_ptr<Communicator> split(int color, int key, const std::string& name) override;

 private:
  // Runs `fn` and records it as one `op` of `bytes` at the current site; a collective after a
  // barrier when the timings ask for it.
  template <typename Fn>
  void timed(CommOp op, int64_t bytes, Fn&& fn, bool collective = true);
  // Starts a non-blocking transfer with `start` and returns a Request whose waits are recorded.
  template <typename Start>
  Request timed_request(CommOp op, int64_t bytes, Start&& start);

  std::unique_ptr<Communicator> inner_;
  std::shared_ptr<CommTimings> timings_;
};

// Replaces every communicator of `groups` by a TimedCommunicator owning it, all recording into
// `timings`. Call it before building anything that keeps references to the communicators.
void time_process_groups(ProcessGroups& groups, std::shared_ptr<CommTimings> timings);

}  // namespace origami
