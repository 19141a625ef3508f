// The backend-independent parts of the Communicator: requests, timeouts, argument checks.
#include "parallel/communicator.h"

#include "parallel/mpi_communicator.h"
#include "runtime/error.h"

namespace origami {

const char* reduce_op_name(ReduceOp op) {
  switch (op) {
    case ReduceOp::sum:
      return "sum";
    case ReduceOp::max:
      return "max";
  }
  return "?";
}

bool Request::test() {
  ORIGAMI_CHECK(impl_, "Request::test on an empty or completed request");
  if (!impl_->test()) return false;
  impl_.reset();
  return true;
}

void Request::wait() {
  wait(default_timeout_);
}

void Request::wait(Milliseconds timeout) {
  ORIGAMI_CHECK(impl_, "Request::wait on an empty or completed request");
  // The request is spent either way: completed, or failed (and abandoned by its backend).
  std::unique_ptr<Impl> impl = std::move(impl_);
  impl->wait(timeout);
}

void wait_all(std::vector<Request>& requests) {
  for (Request& r : requests)
    if (r.valid()) r.wait();
}

void Communicator::set_timeout(Milliseconds timeout) {
  ORIGAMI_CHECK(timeout.count() > 0, name_, ": the timeout must be positive, got ", timeout.count(),
                " ms");
  timeout_ = timeout;
}

namespace detail {

const char* collective_name(CollectiveKind k) {
  switch (k) {
    case CollectiveKind::none:
      return "nothing";
    case CollectiveKind::all_reduce:
      return "all_reduce";
    case CollectiveKind::reduce_scatter:
      return "reduce_scatter";
    case CollectiveKind::all_gather:
      return "all_gather";
    case CollectiveKind::all_gather_v:
      return "all_gather_v";
    case CollectiveKind::reduce_scatter_v:
      return "reduce_scatter_v";
    case CollectiveKind::all_to_all:
      return "all_to_all";
    case CollectiveKind::all_to_all_v:
      return "all_to_all_v";
    case CollectiveKind::broadcast:
      return "broadcast";
    case CollectiveKind::barrier:
      return "barrier";
  }
  return "?";
}

void check_tensor(const Communicator& c, const char* op, const char* what, const Tensor& t) {
  ORIGAMI_CHECK(t.defined(), c.name(), ": ", op, ": ", what, " is an undefined tensor");
  ORIGAMI_CHECK(t.is_contiguous(), c.name(), ": ", op, ": ", what, " must be contiguous, got ",
                t.str(), " with strides ", shape_str(t.strides()));
  if (std::string(c.backend()) == "mpi") {
    ORIGAMI_CHECK(t.device().is_cpu(), c.name(), ": ", op, ": ", what,
                  " must be a CPU tensor for the MPI communicator, got ", t.str(),
                  "; use an NCCL communicator (ProcessGroups on a CUDA device) for GPU tensors");
  }
}

void check_same_dtype(const Communicator& c, const char* op, const Tensor& a, const Tensor& b) {
  ORIGAMI_CHECK(a.dtype() == b.dtype(), c.name(), ": ", op,
                ": input and output dtypes differ, input ", a.str(), ", output ", b.str());
}

void check_numel(const Communicator& c, const char* op, const char* what, const Tensor& t,
                 int64_t expected, const char* why) {
  ORIGAMI_CHECK(t.numel() == expected, c.name(), ": ", op, ": ", what, " must hold ", expected,
                " elements (", why, "), got ", t.str());
}

int64_t check_counts(const Communicator& c, const char* op, const char* what,
                     const std::vector<int64_t>& counts) {
  ORIGAMI_CHECK(int(counts.size()) == c.size(), c.name(), ": ", op, ": ", what, " has ",
                counts.size(), " entries, one per member expected (", c.size(), ")");
  int64_t sum = 0;
  for (size_t r = 0; r < counts.size(); ++r) {
    ORIGAMI_CHECK(counts[r] >= 0, c.name(), ": ", op, ": ", what, "[", r, "] = ", counts[r],
                  " is negative");
    sum += counts[r];
  }
  return sum;
}

void check_peer(const Communicator& c, const char* op, int peer, int tag) {
  ORIGAMI_CHECK(peer >= 0 && peer < c.size(), c.name(), ": ", op, ": peer ", peer,
                " is not a member (group of ", c.size(), ")");
  ORIGAMI_CHECK(tag >= 0, c.name(), ": ", op, ": tag must be >= 0, got ", tag);
}

}  // namespace detail

namespace {

class SelfCommunicator final : public Communicator {
 public:
  SelfCommunicator(std::string name, Milliseconds timeout)
      : Communicator(std::move(name), 0, {0}, timeout) {}
  const char* backend() const override { return "self"; }
  void all_reduce(Tensor& t, ReduceOp) override { check(t, "all_reduce"); }
  void reduce_scatter(const Tensor& in, Tensor& out, ReduceOp) override {
    copy(in, out, "reduce_scatter");
  }
  void all_gather(const Tensor& in, Tensor& out) override { copy(in, out, "all_gather"); }
  void all_gather_v(const Tensor& in, Tensor& out, const std::vector<int64_t>& counts) override {
    detail::check_counts(*this, "all_gather_v", "counts", counts);
    copy(in, out, "all_gather_v");
  }
  void reduce_scatter_v(const Tensor& in, Tensor& out, const std::vector<int64_t>& counts,
                        ReduceOp) override {
    detail::check_counts(*this, "reduce_scatter_v", "counts", counts);
    copy(in, out, "reduce_scatter_v");
  }
  void all_to_all(const Tensor& in, Tensor& out) override { copy(in, out, "all_to_all"); }
  void all_to_all_v(const Tensor& in, const std::vector<int64_t>& send_counts, Tensor& out,
                    const std::vector<int64_t>& recv_counts) override {
    detail::check_counts(*this, "all_to_all_v", "send_counts", send_counts);
    detail::check_counts(*this, "all_to_all_v", "recv_counts", recv_counts);
    copy(in, out, "all_to_all_v");
  }
  void broadcast(Tensor& t, int root) override {
    check(t, "broadcast");
    detail::check_peer(*this, "broadcast", root, 0);
  }
  void barrier() override {}
  void send(const Tensor&, int peer, int) override { no_peer("send", peer); }
  void recv(Tensor&, int peer, int) override { no_peer("recv", peer); }
  Request isend(const Tensor&, int peer, int) override {
    no_peer("isend", peer);
    return Request();
  }
  Request irecv(Tensor&, int peer, int) override {
    no_peer("irecv", peer);
    return Request();
  }
  std::unique_ptr<Communicator> split(int, int, const std::string& name) override {
    return std::make_unique<SelfCommunicator>(name, timeout());
  }

 private:
  void check(const Tensor& t, const char* op) const {
    detail::check_tensor(*this, op, "tensor", t);
  }
  void copy(const Tensor& in, Tensor& out, const char* op) const {
    detail::check_tensor(*this, op, "input", in);
    detail::check_tensor(*this, op, "output", out);
    detail::check_same_dtype(*this, op, in, out);
    detail::check_numel(*this, op, "output", out, in.numel(), "a group of one");
    if (in.data() != out.data()) out.copy_from(in.view(out.shape()));
  }
  [[noreturn]] void no_peer(const char* op, int peer) const {
    ORIGAMI_FAIL(name(), ": ", op, " to member ", peer,
                 ": this group holds only this process (a single-rank run)");
  }
};

}  // namespace

std::unique_ptr<Communicator> self_communicator(const std::string& name, Milliseconds timeout) {
  return std::make_unique<SelfCommunicator>(name, timeout);
}

}  // namespace origami
