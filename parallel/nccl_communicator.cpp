// The NCCL communicator: CUDA tensors through NCCL on the current stream of the communicator's
// device; CPU tensors through its MPI sibling (same members), which also bootstraps NCCL (the
// unique id is broadcast over it) and keeps the arrival records that name missing ranks.
//
// NCCL calls are stream-ordered: they return once enqueued. Each call records an event; the
// deadline of an operation is checked when the next one is issued and by synchronize() /
// barrier() / Request::wait, which poll the event. On expiry the NCCL communicator is aborted
// (ncclCommAbort), and the error names the missing ranks from the MPI sibling's records.
// The communicator is created non-blocking (ncclConfig_t::blocking = 0) so that no NCCL call can
// hang past the deadline.
#include "parallel/communicator.h"
#include "runtime/error.h"

#if ORIGAMI_CUDA

#include <cuda_runtime.h>
#include <nccl.h>

#include <chrono>
#include <sstream>

#include "parallel/mpi_communicator.h"
#include "runtime/cuda/cuda_check.h"

namespace origami {
namespace {

using Clock = std::chrono::steady_clock;
using detail::CollectiveKind;

ncclDataType_t nccl_type(DType t) {
  switch (t) {
    case DType::f32:
      return ncclFloat32;
    case DType::bf16:
      return ncclBfloat16;
    case DType::f16:
      return ncclFloat16;
    case DType::i32:
      return ncclInt32;
    case DType::i64:
      return ncclInt64;
    case DType::u8:
      return ncclUint8;
  }
  return ncclUint8;
}

ncclRedOp_t nccl_op(ReduceOp op) {
  return op == ReduceOp::max ? ncclMax : ncclSum;
}

char* byte_ptr(const Tensor& t, int64_t element_offset) {
  return static_cast<char*>(t.data()) + element_offset * int64_t(dtype_size(t.dtype()));
}

class NcclCommunicator;

// A point-to-point transfer enqueued on the stream: complete when its event is.
class NcclRequest final : public Request::Impl {
 public:
  NcclRequest(cudaEvent_t event, Tensor buffer, std::string what, Device device)
      : event_(event), buffer_(std::move(buffer)), what_(std::move(what)), device_(device) {}
  ~NcclRequest() override {
    // The buffer must outlive the stream work: wait for it (stream work always ends, or the
    // communicator is aborted, which ends it too).
    if (event_) {
      cudaEventSynchronize(event_);
      cudaEventDestroy(event_);
    }
  }
  bool test() override {
    detail::set_cuda_device(device_);
    const cudaError_t e = cudaEventQuery(event_);
    if (e == cudaErrorNotReady) return false;
    ORIGAMI_CHECK(e == cudaSuccess, what_, " failed: ", cudaGetErrorString(e));
    return true;
  }
  void wait(Milliseconds timeout) override {
    const auto deadline = Clock::now() + timeout;
    while (!test()) {
      ORIGAMI_CHECK(Clock::now() < deadline, what_, " timed out after ",
                    double(timeout.count()) / 1000.0,
                    " s: the peer never posted the matching transfer; check that both sides "
                    "agree on the order of sends and receives");
    }
  }

 private:
  cudaEvent_t event_;
  Tensor buffer_;
  std::string what_;
  Device device_;
};

class NcclCommunicator final : public Communicator {
 public:
  NcclCommunicator(std::unique_ptr<Communicator> mpi, Device device)
      : Communicator(mpi->name(), mpi->rank(), mpi->global_ranks(), mpi->timeout()),
        mpi_owner_(std::move(mpi)),
        device_(device) {
    mpi_ = dynamic_cast<detail::MpiCommunicator*>(mpi_owner_.get());
    ORIGAMI_CHECK(mpi_, name_,
                  ": an NCCL communicator needs an MPI communicator of the same "
                  "group, got a ",
                  mpi_owner_->backend(), " one");
    ORIGAMI_CHECK(device.is_cuda(), name_, ": an NCCL communicator needs a CUDA device, got ",
                  device.str());
    detail::set_cuda_device(device_);
    ncclUniqueId id;
    if (rank_ == 0) check_plain(ncclGetUniqueId(&id), "ncclGetUniqueId");
    Tensor id_bytes = Tensor::from_blob(&id, {int64_t(sizeof id)}, DType::u8);
    mpi_->broadcast(id_bytes, 0);
    ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
    config.blocking = 0;
    ncclResult_t r = ncclCommInitRankConfig(&comm_, size(), id, rank_, &config);
    settle(r, "ncclCommInitRankConfig", Clock::now() + timeout_);
    ORIGAMI_CUDA_CHECK(cudaEventCreateWithFlags(&last_event_, cudaEventDisableTiming));
  }

  ~NcclCommunicator() override {
    if (comm_) {
      if (!broken_) {
        // Flush, then free; a flush that cannot finish in time aborts instead.
        ncclResult_t r = ncclCommFinalize(comm_);
        const auto deadline = Clock::now() + timeout_;
        while (r == ncclInProgress && Clock::now() < deadline) ncclCommGetAsyncError(comm_, &r);
        if (r == ncclSuccess) {
          ncclCommDestroy(comm_);
        } else {
          ncclCommAbort(comm_);
        }
      } else {
        ncclCommAbort(comm_);
      }
    }
    if (last_event_) cudaEventDestroy(last_event_);
  }

  const char* backend() const override { return "nccl"; }

  void set_timeout(Milliseconds timeout) override {
    Communicator::set_timeout(timeout);
    mpi_->set_timeout(timeout);
  }

  // ---- collectives ---------------------------------------------------------------------------

  void all_reduce(Tensor& t, ReduceOp op) override {
    if (t.defined() && t.device().is_cpu()) return mpi_->all_reduce(t, op);
    check(t, "all_reduce", "tensor");
    issue(CollectiveKind::all_reduce, &t, [&](cudaStream_t s) {
      return ncclAllReduce(t.data(), t.data(), size_t(t.numel()), nccl_type(t.dtype()), nccl_op(op),
                           comm_, s);
    });
  }

  void reduce_scatter(const Tensor& input, Tensor& output, ReduceOp op) override {
    if (input.defined() && input.device().is_cpu()) return mpi_->reduce_scatter(input, output, op);
    check(input, "reduce_scatter", "input");
    check(output, "reduce_scatter", "output");
    detail::check_same_dtype(*this, "reduce_scatter", input, output);
    detail::check_numel(*this, "reduce_scatter", "input", input, output.numel() * size(),
                        "group size x output elements");
    issue(CollectiveKind::reduce_scatter, &input, [&](cudaStream_t s) {
      return ncclReduceScatter(input.data(), output.data(), size_t(output.numel()),
                               nccl_type(input.dtype()), nccl_op(op), comm_, s);
    });
  }

  void all_gather(const Tensor& input, Tensor& output) override {
    if (input.defined() && input.device().is_cpu()) return mpi_->all_gather(input, output);
    check(input, "all_gather", "input");
    check(output, "all_gather", "output");
    detail::check_same_dtype(*this, "all_gather", input, output);
    detail::check_numel(*this, "all_gather", "output", output, input.numel() * size(),
                        "group size x input elements");
    issue(CollectiveKind::all_gather, &input, [&](cudaStream_t s) {
      return ncclAllGather(input.data(), output.data(), size_t(input.numel()),
                           nccl_type(input.dtype()), comm_, s);
    });
  }

  void all_gather_v(const Tensor& input, Tensor& output,
                    const std::vector<int64_t>& counts) override {
    if (input.defined() && input.device().is_cpu())
      return mpi_->all_gather_v(input, output, counts);
    check(input, "all_gather_v", "input");
    check(output, "all_gather_v", "output");
    detail::check_same_dtype(*this, "all_gather_v", input, output);
    const int64_t total = detail::check_counts(*this, "all_gather_v", "counts", counts);
    detail::check_numel(*this, "all_gather_v", "input", input, counts[size_t(rank_)],
                        "counts[rank]");
    detail::check_numel(*this, "all_gather_v", "output", output, total, "the sum of counts");
    // One broadcast per member, fused into one NCCL group.
    issue(CollectiveKind::all_gather_v, &input, [&](cudaStream_t s) {
      ncclResult_t r = ncclGroupStart();
      int64_t offset = 0;
      for (int root = 0; root < size() && r == ncclSuccess; ++root) {
        const int64_t n = counts[size_t(root)];
        if (n > 0)
          r = ncclBroadcast(input.data(), byte_ptr(output, offset), size_t(n),
                            nccl_type(input.dtype()), root, comm_, s);
        offset += n;
      }
      const ncclResult_t end = ncclGroupEnd();
      return r != ncclSuccess ? r : end;
    });
  }

  void reduce_scatter_v(const Tensor& input, Tensor& output, const std::vector<int64_t>& counts,
                        ReduceOp op) override {
    if (input.defined() && input.device().is_cpu())
      return mpi_->reduce_scatter_v(input, output, counts, op);
    check(input, "reduce_scatter_v", "input");
    check(output, "reduce_scatter_v", "output");
    detail::check_same_dtype(*this, "reduce_scatter_v", input, output);
    const int64_t total = detail::check_counts(*this, "reduce_scatter_v", "counts", counts);
    detail::check_numel(*this, "reduce_scatter_v", "input", input, total, "the sum of counts");
    detail::check_numel(*this, "reduce_scatter_v", "output", output, counts[size_t(rank_)],
                        "counts[rank]");
    // One reduce per member, fused into one NCCL group.
    issue(CollectiveKind::reduce_scatter_v, &input, [&](cudaStream_t s) {
      ncclResult_t r = ncclGroupStart();
      int64_t offset = 0;
      for (int root = 0; root < size() && r == ncclSuccess; ++root) {
        const int64_t n = counts[size_t(root)];
        if (n > 0)
          r = ncclReduce(byte_ptr(input, offset), root == rank_ ? output.data() : nullptr,
                         size_t(n), nccl_type(input.dtype()), nccl_op(op), root, comm_, s);
        offset += n;
      }
      const ncclResult_t end = ncclGroupEnd();
      return r != ncclSuccess ? r : end;
    });
  }

  void all_to_all(const Tensor& input, Tensor& output) override {
    if (input.defined() && input.device().is_cpu()) return mpi_->all_to_all(input, output);
    check(input, "all_to_all", "input");
    ORIGAMI_CHECK(input.numel() % size() == 0, name_, ": all_to_all: input ", input.str(),
                  " does not split into ", size(), " equal pieces");
    const std::vector<int64_t> counts(static_cast<size_t>(size()), input.numel() / size());
    exchange(CollectiveKind::all_to_all, input, counts, output, counts);
  }

  void all_to_all_v(const Tensor& input, const std::vector<int64_t>& send_counts, Tensor& output,
                    const std::vector<int64_t>& recv_counts) override {
    if (input.defined() && input.device().is_cpu())
      return mpi_->all_to_all_v(input, send_counts, output, recv_counts);
    exchange(CollectiveKind::all_to_all_v, input, send_counts, output, recv_counts);
  }

  void broadcast(Tensor& t, int root) override {
    if (t.defined() && t.device().is_cpu()) return mpi_->broadcast(t, root);
    check(t, "broadcast", "tensor");
    ORIGAMI_CHECK(root >= 0 && root < size(), name_, ": broadcast: root ", root,
                  " is not a member (group of ", size(), ")");
    issue(CollectiveKind::broadcast, &t, [&](cudaStream_t s) {
      return ncclBroadcast(t.data(), t.data(), size_t(t.numel()), nccl_type(t.dtype()), root, comm_,
                           s);
    });
  }

  void barrier() override {
    synchronize();
    mpi_->barrier();
  }

  void synchronize() override {
    if (!pending_) return;
    detail::set_cuda_device(device_);
    while (!last_complete()) {
      if (Clock::now() >= last_deadline_) fail_timeout();
    }
    pending_ = false;
  }

  // ---- point to point --------------------------------------------------------------------------

  void send(const Tensor& t, int peer, int tag) override { isend(t, peer, tag).wait(); }
  void recv(Tensor& t, int peer, int tag) override { irecv(t, peer, tag).wait(); }

  Request isend(const Tensor& t, int peer, int tag) override {
    if (t.defined() && t.device().is_cpu()) return mpi_->isend(t, peer, tag);
    return p2p(t, peer, tag, true);
  }
  Request irecv(Tensor& t, int peer, int tag) override {
    if (t.defined() && t.device().is_cpu()) return mpi_->irecv(t, peer, tag);
    return p2p(t, peer, tag, false);
  }

  std::unique_ptr<Communicator> split(int color, int key, const std::string& name) override {
    synchronize();
    return nccl_communicator(mpi_->split(color, key, name), device_);
  }

 private:
  void check(const Tensor& t, const char* op, const char* what) {
    mpi_->check_usable(op);
    ORIGAMI_CHECK(!broken_, name_, ": ", op,
                  ": the NCCL communicator was aborted after an "
                  "earlier failure; end the run");
    ORIGAMI_CHECK(t.defined(), name_, ": ", op, ": ", what, " is an undefined tensor");
    ORIGAMI_CHECK(t.is_contiguous(), name_, ": ", op, ": ", what, " must be contiguous, got ",
                  t.str());
    ORIGAMI_CHECK(t.device() == device_, name_, ": ", op, ": ", what, " is on ", t.device().str(),
                  " but this NCCL communicator uses ", device_.str());
  }

  // NCCL calls on a non-blocking communicator may return ncclInProgress: poll until settled.
  void settle(ncclResult_t r, const char* what, Clock::time_point deadline) {
    while (r == ncclInProgress) {
      ncclCommGetAsyncError(comm_, &r);
      if (r == ncclInProgress && Clock::now() >= deadline) {
        broken_ = true;
        ORIGAMI_FAIL(name_, ": ", what, " did not finish within ",
                     double(timeout_.count()) / 1000.0,
                     " s (a member never joined; check that every member creates this group)");
      }
    }
    check_plain(r, what);
  }

  void check_plain(ncclResult_t r, const char* what) {
    if (r == ncclSuccess) return;
    broken_ = true;
    ORIGAMI_FAIL(name_, ": ", what, " failed: ", ncclGetErrorString(r), " (",
                 ncclGetLastError(comm_), ")");
  }

  bool last_complete() {
    const cudaError_t e = cudaEventQuery(last_event_);
    if (e == cudaSuccess) return true;
    ORIGAMI_CHECK(e == cudaErrorNotReady, name_, ": ", detail::collective_name(last_kind_), " #",
                  last_op_, " failed on the GPU: ", cudaGetErrorString(e));
    ncclResult_t async = ncclSuccess;
    ncclCommGetAsyncError(comm_, &async);
    if (async != ncclSuccess && async != ncclInProgress) {
      broken_ = true;
      ORIGAMI_FAIL(name_, ": ", detail::collective_name(last_kind_), " #", last_op_,
                   " failed: ", ncclGetErrorString(async));
    }
    return false;
  }

  [[noreturn]] void fail_timeout() {
    const std::string message =
        mpi_->describe_timeout(last_op_, last_kind_, nullptr, "nccl", timeout_);
    ncclCommAbort(comm_);
    comm_ = nullptr;
    broken_ = true;
    mpi_->mark_broken(message);
    throw Error(message);
  }

  // Enqueues one collective: records the arrival, checks the previous operation's deadline,
  // launches, records the completion event.
  template <typename Launch>
  void issue(CollectiveKind kind, const Tensor* t, Launch&& launch) {
    detail::set_cuda_device(device_);
    if (pending_ && !last_complete() && Clock::now() >= last_deadline_) fail_timeout();
    const int64_t op = mpi_->announce(kind, t);
    const cudaStream_t stream = detail::current_cuda_stream(device_);
    settle(launch(stream), detail::collective_name(kind), Clock::now() + timeout_);
    ORIGAMI_CUDA_CHECK(cudaEventRecord(last_event_, stream));
    last_op_ = op;
    last_kind_ = kind;
    last_deadline_ = Clock::now() + timeout_;
    pending_ = true;
  }

  void exchange(CollectiveKind kind, const Tensor& input, const std::vector<int64_t>& send_counts,
                Tensor& output, const std::vector<int64_t>& recv_counts) {
    const char* name = detail::collective_name(kind);
    check(input, name, "input");
    check(output, name, "output");
    detail::check_same_dtype(*this, name, input, output);
    const int64_t st = detail::check_counts(*this, name, "send_counts", send_counts);
    const int64_t rt = detail::check_counts(*this, name, "recv_counts", recv_counts);
    detail::check_numel(*this, name, "input", input, st, "the sum of send_counts");
    detail::check_numel(*this, name, "output", output, rt, "the sum of recv_counts");
    issue(kind, &input, [&](cudaStream_t s) {
      ncclResult_t r = ncclGroupStart();
      int64_t so = 0, ro = 0;
      const ncclDataType_t type = nccl_type(input.dtype());
      for (int peer = 0; peer < size() && r == ncclSuccess; ++peer) {
        const int64_t sn = send_counts[size_t(peer)], rn = recv_counts[size_t(peer)];
        if (sn > 0) r = ncclSend(byte_ptr(input, so), size_t(sn), type, peer, comm_, s);
        if (r == ncclSuccess && rn > 0)
          r = ncclRecv(byte_ptr(output, ro), size_t(rn), type, peer, comm_, s);
        so += sn;
        ro += rn;
      }
      const ncclResult_t end = ncclGroupEnd();
      return r != ncclSuccess ? r : end;
    });
  }

  Request p2p(const Tensor& t, int peer, int tag, bool is_send) {
    const char* op = is_send ? "send" : "recv";
    check(t, op, "tensor");
    detail::check_peer(*this, op, peer, tag);
    // NCCL has no tags: transfers between two members match in issue order.
    detail::set_cuda_device(device_);
    const cudaStream_t stream = detail::current_cuda_stream(device_);
    const ncclResult_t r =
        is_send ? ncclSend(t.data(), size_t(t.numel()), nccl_type(t.dtype()), peer, comm_, stream)
                : ncclRecv(t.data(), size_t(t.numel()), nccl_type(t.dtype()), peer, comm_, stream);
    settle(r, op, Clock::now() + timeout_);
    cudaEvent_t event = nullptr;
    ORIGAMI_CUDA_CHECK(cudaEventCreateWithFlags(&event, cudaEventDisableTiming));
    ORIGAMI_CUDA_CHECK(cudaEventRecord(event, stream));
    std::ostringstream what;
    what << name_ << ": " << op << " of " << t.str() << (is_send ? " to" : " from") << " member "
         << peer << " (global rank " << global_ranks_[size_t(peer)] << ")";
    return Request(std::make_unique<NcclRequest>(event, t, what.str(), device_), timeout_);
  }

  std::unique_ptr<Communicator> mpi_owner_;
  detail::MpiCommunicator* mpi_ = nullptr;
  Device device_;
  ncclComm_t comm_ = nullptr;
  cudaEvent_t last_event_ = nullptr;
  bool pending_ = false;
  bool broken_ = false;
  int64_t last_op_ = 0;
  CollectiveKind last_kind_ = CollectiveKind::none;
  Clock::time_point last_deadline_{};
};

}  // namespace

std::unique_ptr<Communicator> nccl_communicator(std::unique_ptr<Communicator> mpi_group,
                                                Device device) {
  ORIGAMI_CHECK(mpi_group, "nccl_communicator: no MPI communicator given");
  return std::make_unique<NcclCommunicator>(std::move(mpi_group), device);
}

}  // namespace origami

#else  // !ORIGAMI_CUDA

namespace origami {

std::unique_ptr<Communicator> nccl_communicator(std::unique_ptr<Communicator> mpi_group,
                                                Device device) {
  ORIGAMI_FAIL(mpi_group ? mpi_group->name() : std::string("?"), ": an NCCL communicator on ",
               device.str(),
               " was requested but origami was built without CUDA (ORIGAMI_CUDA=OFF); use the MPI "
               "communicator for CPU tensors");
}

}  // namespace origami

#endif
