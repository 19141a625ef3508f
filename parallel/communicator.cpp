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
}  // namespace origami
