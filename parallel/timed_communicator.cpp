#include "parallel/timed_communicator.h"

#include <chrono>
#include <numeric>
#include <utility>

#include "runtime/error.h"

namespace origami {

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

int64_t elements_bytes(const std::vector<int64_t>& counts, const Tensor& like) {
  return std::accumulate(counts.begin(), counts.end(), int64_t(0)) *
         int64_t(dtype_size(like.dtype()));
}

// The Request of a timed non-blocking transfer: forwards to the inner request and records the
// time spent waiting on it (no call: the start already counted one).
class TimedRequestImpl final : public Request::Impl {
 public:
  TimedRequestImpl(Request inner, std::shared_ptr<CommTimings> timings, CommTimings::Key key)
      : inner_(std::move(inner)), timings_(std::move(timings)), key_(std::move(key)) {}

  bool test() override {
    const Clock::time_point start = Clock::now();
    const bool done = inner_.test();
    timings_->add(key_, 0, 0, seconds_since(start));
    return done;
  }
  void wait(Milliseconds timeout) override {
    const Clock::time_point start = Clock::now();
    try {
      inner_.wait(timeout);
    } catch (...) {
      timings_->add(key_, 0, 0, seconds_since(start));
      throw;
    }
    timings_->add(key_, 0, 0, seconds_since(start));
  }

 private:
  Request inner_;
  std::shared_ptr<CommTimings> timings_;
  CommTimings::Key key_;
};

}  // namespace

const char* comm_op_name(CommOp op) {
  switch (op) {
    case CommOp::all_reduce:
      return "all_reduce";
    case CommOp::reduce_scatter:
      return "reduce_scatter";
    case CommOp::all_gather:
      return "all_gather";
    case CommOp::all_gather_v:
      return "all_gather_v";
    case CommOp::reduce_scatter_v:
      return "reduce_scatter_v";
    case CommOp::all_to_all:
      return "all_to_all";
    case CommOp::all_to_all_v:
      return "all_to_all_v";
    case CommOp::broadcast:
      return "broadcast";
    case CommOp::barrier:
      return "barrier";
    case CommOp::synchronize:
      return "synchronize";
    case CommOp::send:
      return "send";
    case CommOp::recv:
      return "recv";
    case CommOp::isend:
      return "isend";
    case CommOp::irecv:
      return "irecv";
  }
  return "?";
}

// ---- CommTimings -------------------------------------------------------------------------------

void CommTimings::set_site_hook(std::function<std::string()> hook) {
  std::lock_guard<std::mutex> lock(mutex_);
  hook_ = std::move(hook);
}

std::string CommTimings::site() const {
  std::function<std::string()> hook;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    hook = hook_;
  }
  return hook ? hook() : std::string();
}

void CommTimings::set_barrier_first(bool on) {
  std::lock_guard<std::mutex> lock(mutex_);
  barrier_first_ = on;
}

bool CommTimings::barrier_first() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return barrier_first_;
}

void CommTimings::add(const Key& key, int64_t calls, int64_t bytes, double seconds,
                      double wait_seconds) {
  std::lock_guard<std::mutex> lock(mutex_);
  CommStat& s = stats_[key];
  s.calls += calls;
  s.bytes += bytes;
  s.seconds += seconds;
  s.wait_seconds += wait_seconds;
}

std::map<CommTimings::Key, CommStat> CommTimings::snapshot() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return stats_;
}

CommStat CommTimings::total() const {
  std::lock_guard<std::mutex> lock(mutex_);
  CommStat t;
  for (const auto& [key, s] : stats_) {
    t.calls += s.calls;
    t.bytes += s.bytes;
    t.seconds += s.seconds;
    t.wait_seconds += s.wait_seconds;
  }
  return t;
}

void CommTimings::reset() {
  std::lock_guard<std::mutex> lock(mutex_);
  stats_.clear();
}

// ---- TimedCommunicator -------------------------------------------------------------------------

TimedCommunicator::TimedCommunicator(std::unique_ptr<Communicator> inner,
                                     std::shared_ptr<CommTimings> timings)
    : Communicator(inner ? inner->name() : std::string(), inner ? inner->rank() : 0,
                   inner ? inner->global_ranks() : std::vector<int>{},
                   inner ? inner->timeout() : kDefaultCommTimeout),
      inner_(std::move(inner)),
      timings_(std::move(timings)) {
  ORIGAMI_CHECK(inner_, "timed communicator: no inner communicator");
  ORIGAMI_CHECK(timings_, "timed communicator '", name_, "': no timings record");
}

void TimedCommunicator::set_timeout(Milliseconds timeout) {
  inner_->set_timeout(timeout);
  Communicator::set_timeout(timeout);
}

template <typename Fn>
void TimedCommunicator::timed(CommOp op, int64_t bytes, Fn&& fn, bool collective) {
  CommTimings::Key key{name_, op, timings_->site()};
  const Clock::time_point start = Clock::now();
  double wait = 0;
  try {
    if (collective && timings_->barrier_first()) {
      inner_->barrier();
      wait = seconds_since(start);
    }
    fn();
  } catch (...) {
    timings_->add(key, 1, bytes, seconds_since(start), wait);
    throw;
  }
  timings_->add(key, 1, bytes, seconds_since(start), wait);
}

template <typename Start>
Request TimedCommunicator::timed_request(CommOp op, int64_t bytes, Start&& start) {
  CommTimings::Key key{name_, op, timings_->site()};
  const Clock::time_point t0 = Clock::now();
  Request inner_request = start();
  timings_->add(key, 1, bytes, seconds_since(t0));
  return Request(std::make_unique<TimedRequestImpl>(std::move(inner_request), timings_, key),
                 timeout_);
}

void TimedCommunicator::all_reduce(Tensor& t, ReduceOp op) {
  timed(CommOp::all_reduce, int64_t(t.nbytes()), [&] { inner_->all_reduce(t, op); });
}

void TimedCommunicator::reduce_scatter(const Tensor& input, Tensor& output, ReduceOp op) {
  timed(CommOp::reduce_scatter, int64_t(input.nbytes()),
        [&] { inner_->reduce_scatter(input, output, op); });
}

void TimedCommunicator::all_gather(const Tensor& input, Tensor& output) {
  timed(CommOp::all_gather, int64_t(output.nbytes()), [&] { inner_->all_gather(input, output); });
}

void TimedCommunicator::all_gather_v(const Tensor& input, Tensor& output,
                                     const std::vector<int64_t>& counts) {
  timed(CommOp::all_gather_v, elements_bytes(counts, input),
        [&] { inner_->all_gather_v(input, output, counts); });
}

void TimedCommunicator::reduce_scatter_v(const Tensor& input, Tensor& output,
                                         const std::vector<int64_t>& counts, ReduceOp op) {
  timed(CommOp::reduce_scatter_v, elements_bytes(counts, input),
        [&] { inner_->reduce_scatter_v(input, output, counts, op); });
}

void TimedCommunicator::all_to_all(const Tensor& input, Tensor& output) {
  timed(CommOp::all_to_all, int64_t(input.nbytes()), [&] { inner_->all_to_all(input, output); });
}

void TimedCommunicator::all_to_all_v(const Tensor& input, const std::vector<int64_t>& send_counts,
                                     Tensor& output, const std::vector<int64_t>& recv_counts) {
  timed(CommOp::all_to_all_v, elements_bytes(send_counts, input),
        [&] { inner_->all_to_all_v(input, send_counts, output, recv_counts); });
}

void TimedCommunicator::broadcast(Tensor& t, int root) {
  timed(CommOp::broadcast, int64_t(t.nbytes()), [&] { inner_->broadcast(t, root); });
}

void TimedCommunicator::barrier() {
  timed(
      CommOp::barrier, 0, [&] { inner_->barrier(); }, false);
}

void TimedCommunicator::synchronize() {
  timed(
      CommOp::synchronize, 0, [&] { inner_->synchronize(); }, false);
}

void TimedCommunicator::send(const Tensor& t, int peer, int tag) {
  timed(
      CommOp::send, int64_t(t.nbytes()), [&] { inner_->send(t, peer, tag); }, false);
}

void TimedCommunicator::recv(Tensor& t, int peer, int tag) {
  timed(
      CommOp::recv, int64_t(t.nbytes()), [&] { inner_->recv(t, peer, tag); }, false);
}

Request TimedCommunicator::isend(const Tensor& t, int peer, int tag) {
  return timed_request(CommOp::isend, int64_t(t.nbytes()),
                       [&] { return inner_->isend(t, peer, tag); });
}

Request TimedCommunicator::irecv(Tensor& t, int peer, int tag) {
  return timed_request(CommOp::irecv, int64_t(t.nbytes()),
                       [&] { return inner_->irecv(t, peer, tag); });
}

std::unique_ptr<Communicator> TimedCommunicator::split(int color, int key,
                                                       const std::string& name) {
  return std::make_unique<TimedCommunicator>(inner_->split(color, key, name), timings_);
}

void time_process_groups(ProcessGroups& groups, std::shared_ptr<CommTimings> timings) {
  ORIGAMI_CHECK(timings, "time_process_groups: no timings record");
  for (std::unique_ptr<Communicator>* slot :
       {&groups.world, &groups.tp, &groups.cp, &groups.dp, &groups.pp, &groups.dp_cp, &groups.tp_cp,
        &groups.tp_dp_cp, &groups.ep, &groups.etp, &groups.edp, &groups.tp_ep}) {
    if (*slot) *slot = std::make_unique<TimedCommunicator>(std::move(*slot), timings);
  }
}

}  // namespace origami
