// The MPI communicator: host tensors, non-blocking MPI collectives polled against a deadline, and
// an arrival record per member (an MPI window) that names the ranks that never arrived.
#include "parallel/mpi_communicator.h"

#include <algorithm>
#include <chrono>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <sstream>

#include "parallel/world.h"
#include "runtime/error.h"

namespace origami {
namespace detail {
namespace {

using Clock = std::chrono::steady_clock;

bool mpi_finalized() {
  int finalized = 0;
  MPI_Finalized(&finalized);
  return finalized != 0;
}

std::string mpi_error_string(int code) {
  char text[MPI_MAX_ERROR_STRING] = {0};
  int len = 0;
  MPI_Error_string(code, text, &len);
  return std::string(text, size_t(std::max(len, 0)));
}

std::string seconds_str(Milliseconds ms) {
  std::ostringstream os;
  os << double(ms.count()) / 1000.0 << " s";
  return os.str();
}

MPI_Datatype mpi_type(DType t) {
  switch (t) {
    case DType::f32:
      return MPI_FLOAT;
    case DType::bf16:
      return MPI_UINT16_T;  // moved as bits; reduced through fp32
    case DType::f16:
      return MPI_UINT16_T;
    case DType::i32:
      return MPI_INT32_T;
    case DType::i64:
      return MPI_INT64_T;
    case DType::u8:
      return MPI_UINT8_T;
  }
  return MPI_BYTE;
}

bool is_16bit_float(DType t) {
  return t == DType::bf16 || t == DType::f16;
}

// MPI-3 counts and displacements are ints.
int to_count(const Communicator& c, const char* op, int64_t n) {
  ORIGAMI_CHECK(n <= INT_MAX, c.name(), ": ", op, ": ", n,
                " elements exceed MPI's limit of 2^31-1 per call; split the transfer");
  return int(n);
}

// Requests given up on after a timeout, with the buffers they may still write: kept until the
// transfer ends (a late rank may still complete it) or the process exits, never freed earlier.
struct Abandoned {
  MPI_Request request;
  std::vector<Tensor> buffers;
};
std::mutex& abandoned_mutex() {
  static std::mutex m;
  return m;
}
std::vector<Abandoned>& abandoned() {
  static auto* list = new std::vector<Abandoned>();  // never destroyed: may outlive statics
  return *list;
}
void abandon(MPI_Request request, std::vector<Tensor> buffers) {
  if (request == MPI_REQUEST_NULL) return;
  std::lock_guard<std::mutex> lock(abandoned_mutex());
  abandoned().push_back({request, std::move(buffers)});
}
// Drops the abandoned requests that have completed since.
void sweep_abandoned() {
  if (mpi_finalized()) return;
  std::lock_guard<std::mutex> lock(abandoned_mutex());
  auto& list = abandoned();
  list.erase(std::remove_if(list.begin(), list.end(),
                            [](Abandoned& a) {
                              int done = 0;
                              MPI_Test(&a.request, &done, MPI_STATUS_IGNORE);
                              return done != 0;
                            }),
             list.end());
}

// 16-bit floats <-> fp32 for reductions.
void widen(const Tensor& t, float* out) {
  const auto* in = t.data_as<const uint16_t>();
  const int64_t n = t.numel();
  if (t.dtype() == DType::bf16) {
    for (int64_t i = 0; i < n; ++i) out[i] = bf16_to_f32(in[i]);
  } else {
    for (int64_t i = 0; i < n; ++i) out[i] = f16_to_f32(in[i]);
  }
}
void narrow_into(const float* in, Tensor& t) {
  auto* out = t.data_as<uint16_t>();
  const int64_t n = t.numel();
  if (t.dtype() == DType::bf16) {
    for (int64_t i = 0; i < n; ++i) out[i] = f32_to_bf16(in[i]);
  } else {
    for (int64_t i = 0; i < n; ++i) out[i] = f32_to_f16(in[i]);
  }
}

// dst[i] = a[i] (op) b[i]; dst may be a.
template <typename T>
void combine(T* dst, const T* a, const T* b, int64_t n, ReduceOp op) {
  if (op == ReduceOp::sum) {
    for (int64_t i = 0; i < n; ++i) dst[i] = a[i] + b[i];
  } else {
    for (int64_t i = 0; i < n; ++i) dst[i] = std::max(a[i], b[i]);
  }
}
void combine(DType dtype, void* dst, const void* a, const void* b, int64_t n, ReduceOp op) {
  switch (dtype) {
    case DType::f32:
      return combine(static_cast<float*>(dst), static_cast<const float*>(a),
                     static_cast<const float*>(b), n, op);
    case DType::i32:
      return combine(static_cast<int32_t*>(dst), static_cast<const int32_t*>(a),
                     static_cast<const int32_t*>(b), n, op);
    case DType::i64:
      return combine(static_cast<int64_t*>(dst), static_cast<const int64_t*>(a),
                     static_cast<const int64_t*>(b), n, op);
    case DType::u8:
      return combine(static_cast<uint8_t*>(dst), static_cast<const uint8_t*>(a),
                     static_cast<const uint8_t*>(b), n, op);
    default:
      ORIGAMI_FAIL("combine: ", dtype_name(dtype), " is reduced through fp32");
  }
}

std::vector<int> global_ranks_of(MPI_Comm comm) {
  int size = 0;
  MPI_Comm_size(comm, &size);
  MPI_Group group, world;
  MPI_Comm_group(comm, &group);
  MPI_Comm_group(MPI_COMM_WORLD, &world);
  std::vector<int> local(static_cast<size_t>(size)), global(static_cast<size_t>(size));
  for (int i = 0; i < size; ++i) local[size_t(i)] = i;
  MPI_Group_translate_ranks(group, size, local.data(), world, global.data());
  MPI_Group_free(&group);
  MPI_Group_free(&world);
  return global;
}

int rank_of(MPI_Comm comm) {
  int rank = 0;
  MPI_Comm_rank(comm, &rank);
  return rank;
}

std::string tensor_desc(const Tensor* t) {
  if (!t) return "";
  return std::string(dtype_name(t->dtype())) + "[" + std::to_string(t->numel()) + "]";
}

std::string member_desc(const Communicator& c, int member) {
  return "member " + std::to_string(member) + " (global rank " +
         std::to_string(c.global_ranks()[size_t(member)]) + ")";
}

// A point-to-point transfer in flight.
class MpiRequest final : public Request::Impl {
 public:
  MpiRequest(MPI_Request request, Tensor buffer, std::string what, bool is_recv, int peer)
      : request_(request),
        buffer_(std::move(buffer)),
        what_(std::move(what)),
        is_recv_(is_recv),
        peer_(peer) {}
  ~MpiRequest() override {
    if (request_ != MPI_REQUEST_NULL && !mpi_finalized()) abandon(request_, {buffer_});
  }

  bool test() override {
    int done = 0;
    MPI_Status status;
    const int rc = MPI_Test(&request_, &done, &status);
    if (rc != MPI_SUCCESS) fail(rc);
    if (done) check_received(status);
    return done != 0;
  }

  void wait(Milliseconds timeout) override {
    const auto deadline = Clock::now() + timeout;
    for (unsigned spin = 0;; ++spin) {
      if (test()) return;
      if ((spin & 15) == 0 && Clock::now() >= deadline) break;
    }
    if (is_recv_) {
      // A receive can be withdrawn; then its buffer is free again.
      MPI_Cancel(&request_);
      const auto cancel_deadline = Clock::now() + std::chrono::seconds(1);
      int done = 0;
      while (!done && Clock::now() < cancel_deadline) MPI_Test(&request_, &done, MPI_STATUS_IGNORE);
    }
    ORIGAMI_FAIL(what_, " timed out after ", seconds_str(timeout), ": member ", peer_,
                 is_recv_ ? " never sent a matching message (same tag, at most this size)"
                          : " never posted the matching receive",
                 "; check that both sides agree on the order of sends and receives");
  }

 private:
  [[noreturn]] void fail(int rc) {
    request_ = MPI_REQUEST_NULL;
    ORIGAMI_FAIL(what_, " failed: ", mpi_error_string(rc));
  }
  void check_received(const MPI_Status& status) {
    request_ = MPI_REQUEST_NULL;
    if (!is_recv_) return;
    if (status.MPI_ERROR != MPI_SUCCESS && status.MPI_ERROR != MPI_ERR_PENDING) {
      // Only set for multi-request calls; kept for completeness.
    }
    int count = 0;
    MPI_Get_count(&status, mpi_type(buffer_.dtype()), &count);
    ORIGAMI_CHECK(count == buffer_.numel(), what_, ": received ", count,
                  " elements, but the buffer holds ", buffer_.numel(),
                  "; the sender's tensor has another size");
  }

  MPI_Request request_;
  Tensor buffer_;
  std::string what_;
  bool is_recv_;
  int peer_;
};

}  // namespace

// ---- construction -------------------------------------------------------------------------------

MpiCommunicator::MpiCommunicator(MPI_Comm comm, std::string name, Milliseconds timeout)
    : Communicator(std::move(name), rank_of(comm), global_ranks_of(comm), timeout), comm_(comm) {
  MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN);
  MPI_Comm_dup(comm_, &ring_comm_);
  MPI_Comm_set_errhandler(ring_comm_, MPI_ERRORS_RETURN);
  const int rc =
      MPI_Win_allocate(MPI_Aint(sizeof(Arrival)), 1, MPI_INFO_NULL, comm_, &arrival_, &window_);
  // The records only explain timeouts: a group whose window MPI cannot make runs without them.
  // Every member must make the same choice (a window is freed collectively), so they agree on the
  // first member that failed (size() when none did).
  int first_failed = rc == MPI_SUCCESS ? size() : rank_, any_failed = size();
  MPI_Allreduce(&first_failed, &any_failed, 1, MPI_INT, MPI_MIN, comm_);
  if (any_failed < size()) {
    if (rank_ == any_failed)
      std::fprintf(stderr,
                   "origami: note: %s: MPI_Win_allocate for the arrival records failed on member "
                   "%d (global rank %d): %s; '%s' runs without them, so a timeout cannot name the "
                   "ranks that never arrived\n",
                   name_.c_str(), rank_, global_ranks_[size_t(rank_)], mpi_error_string(rc).c_str(),
                   name_.c_str());
    // A window some members lack can never be freed: it stays allocated, unused.
    window_ = MPI_WIN_NULL;
    arrival_ = &own_arrival_;
    return;
  }
  *arrival_ = Arrival{};
  int* model = nullptr;
  int flag = 0;
  MPI_Win_get_attr(window_, MPI_WIN_MODEL, &model, &flag);
  window_separate_ = flag && model && *model == MPI_WIN_SEPARATE;
  // One passive-target epoch for the communicator's life; NOCHECK: no lock traffic.
  MPI_Win_lock_all(MPI_MODE_NOCHECK, window_);
}

MpiCommunicator::~MpiCommunicator() {
  if (mpi_finalized()) return;
  sweep_abandoned();
  // A window read that never completed (a dead peer) would make freeing wait forever.
  if (window_reads_pending_) return;
  if (window_ != MPI_WIN_NULL) {
    MPI_Win_unlock_all(window_);
    MPI_Win_free(&window_);
  }
  MPI_Comm_free(&ring_comm_);
  MPI_Comm_free(&comm_);
}

std::unique_ptr<Communicator> MpiCommunicator::split(int color, int key, const std::string& name) {
  ORIGAMI_CHECK(color >= 0, name_, ": split: color must be >= 0, got ", color);
  // A barrier with the deadline first, so a missing member is named rather than waited for.
  barrier();
  MPI_Comm out = MPI_COMM_NULL;
  const int rc = MPI_Comm_split(comm_, color, key, &out);
  ORIGAMI_CHECK(rc == MPI_SUCCESS, name_, ": MPI_Comm_split for '", name,
                "' failed: ", mpi_error_string(rc));
  return std::make_unique<MpiCommunicator>(out, name, timeout_);
}

// ---- arrival records and timeouts -----------------------------------------------------------

void MpiCommunicator::check_usable(const char* op) const {
  ORIGAMI_CHECK(broken_.empty(), name_, ": ", op,
                ": this communicator is unusable after an earlier failure (its members are out of "
                "step); end the run. The failure was: ",
                broken_);
}

int64_t MpiCommunicator::announce(CollectiveKind kind, const Tensor* t) {
  const int64_t op = ++op_count_;
  __atomic_store_n(&arrival_->kind, int32_t(kind), __ATOMIC_RELAXED);
  __atomic_store_n(&arrival_->dtype, t ? int32_t(t->dtype()) : int32_t(-1), __ATOMIC_RELAXED);
  __atomic_store_n(&arrival_->numel, t ? t->numel() : int64_t(0), __ATOMIC_RELAXED);
  __atomic_store_n(&arrival_->op, op, __ATOMIC_RELEASE);
  // The unified memory model (the usual one) makes the stores visible to remote reads as they
  // are; only the separate model needs a synchronisation, which costs microseconds.
  if (window_separate_) MPI_Win_sync(window_);
  return op;
}

std::string MpiCommunicator::describe_timeout(int64_t op, CollectiveKind kind, const Tensor* t,
                                              const std::string& details, Milliseconds waited) {
  const int n = size();
  std::ostringstream os;
  os << name_ << ": " << collective_name(kind) << " #" << op;
  const std::string td = tensor_desc(t);
  if (!td.empty() || !details.empty())
    os << " (" << td << (td.empty() || details.empty() ? "" : ", ") << details << ")";
  os << " timed out after " << seconds_str(waited) << " on " << member_desc(*this, rank_) << " of "
     << n << ".";
  const std::string advice = " Every member of '" + name_ +
                             "' must make the same collective calls in the same order; if the "
                             "ranks are only slow, raise the timeout (now " +
                             seconds_str(timeout_) + ").";
  if (window_ == MPI_WIN_NULL) {
    os << " Which members never arrived is unknown: this group has no arrival records (MPI could "
          "not allocate their window)."
       << advice;
    return os.str();
  }

  // Read every member's record; a member that cannot answer within the grace period is dead or
  // unreachable while it is outside MPI.
  auto records = std::make_unique<Arrival[]>(size_t(n));
  std::vector<MPI_Request> reads(static_cast<size_t>(n), MPI_REQUEST_NULL);
  std::vector<char> answered(static_cast<size_t>(n), 0);
  for (int r = 0; r < n; ++r) {
    if (r == rank_) {
      records[size_t(r)] = *arrival_;
      answered[size_t(r)] = 1;
      continue;
    }
    if (MPI_Rget(&records[size_t(r)], int(sizeof(Arrival)), MPI_BYTE, r, 0, int(sizeof(Arrival)),
                 MPI_BYTE, window_, &reads[size_t(r)]) != MPI_SUCCESS)
      reads[size_t(r)] = MPI_REQUEST_NULL;
  }
  const Milliseconds grace = std::clamp(timeout_ / 10, Milliseconds(100), Milliseconds(2000));
  const auto deadline = Clock::now() + grace;
  bool all = false;
  while (!all && Clock::now() < deadline) {
    all = true;
    for (int r = 0; r < n; ++r) {
      if (answered[size_t(r)] || reads[size_t(r)] == MPI_REQUEST_NULL) continue;
      int done = 0;
      MPI_Test(&reads[size_t(r)], &done, MPI_STATUS_IGNORE);
      answered[size_t(r)] = char(done);
      all = all && done;
    }
  }
  for (int r = 0; r < n; ++r) {
    if (!answered[size_t(r)] && reads[size_t(r)] != MPI_REQUEST_NULL) {
      window_reads_pending_ = true;  // the read may still land: keep its buffer forever
    }
  }
  const Arrival* rec = records.get();
  if (window_reads_pending_) records.release();

  std::vector<std::string> missing, silent, mismatched;
  std::vector<int> arrived;
  const bool sizes_may_differ = kind == CollectiveKind::all_gather_v ||
                                kind == CollectiveKind::reduce_scatter_v ||
                                kind == CollectiveKind::all_to_all_v;
  for (int r = 0; r < n; ++r) {
    const Arrival& a = rec[r];
    if (!answered[size_t(r)]) {
      silent.push_back(member_desc(*this, r));
      continue;
    }
    if (a.op < op) {
      std::string s = member_desc(*this, r) + ", ";
      if (a.op == 0) {
        s += "no collective entered yet";
      } else {
        s += "last entered " + std::string(collective_name(CollectiveKind(a.kind))) + " #" +
             std::to_string(a.op);
      }
      missing.push_back(s);
      continue;
    }
    arrived.push_back(r);
    if (a.op == op && r != rank_ && t &&
        (a.kind != int32_t(kind) || a.dtype != int32_t(t->dtype()) ||
         (!sizes_may_differ && a.numel != t->numel()))) {
      std::string dt = a.dtype >= 0 ? dtype_name(DType(a.dtype)) : "none";
      mismatched.push_back(member_desc(*this, r) + " entered " +
                           collective_name(CollectiveKind(a.kind)) + " #" + std::to_string(a.op) +
                           " with " + dt + "[" + std::to_string(a.numel) + "]");
    }
  }

  const auto list = [&](const std::vector<std::string>& v) {
    for (size_t i = 0; i < v.size(); ++i) os << (i ? "; " : " ") << v[i];
  };
  if (!missing.empty()) {
    os << " Ranks that never arrived:";
    list(missing);
    os << ".";
  }
  if (!silent.empty()) {
    os << " Ranks that did not answer (dead, hung outside MPI, or never arrived):";
    list(silent);
    os << ".";
  }
  if (!mismatched.empty()) {
    os << " Arrived with different arguments:";
    list(mismatched);
    os << ".";
  }
  if (missing.empty() && silent.empty() && mismatched.empty())
    os << " Every member arrived, so the operation itself stalled (sizes that differ between "
          "ranks, or a network fault).";
  os << " Arrived: members";
  for (size_t i = 0; i < arrived.size(); ++i) os << (i ? ", " : " ") << arrived[i];
  os << "." << advice;
  return os.str();
}

void MpiCommunicator::wait_or_throw(MPI_Request* reqs, int n, Clock::time_point deadline,
                                    int64_t op, CollectiveKind kind, const Tensor* described,
                                    const std::string& details, std::vector<Tensor>& keep) {
  int done = 0;
  for (unsigned spin = 0;; ++spin) {
    const int rc = n == 1 ? MPI_Test(reqs, &done, MPI_STATUS_IGNORE)
                          : MPI_Testall(n, reqs, &done, MPI_STATUSES_IGNORE);
    if (rc != MPI_SUCCESS) {
      broken_ = name_ + ": " + collective_name(kind) + " #" + std::to_string(op) +
                " failed: " + mpi_error_string(rc);
      throw Error(broken_);
    }
    if (done) return;
    if ((spin & 15) == 0 && Clock::now() >= deadline) break;
  }
  std::string message = describe_timeout(op, kind, described, details, timeout_);
  for (int i = 0; i < n; ++i) {
    abandon(reqs[i], keep);
    reqs[i] = MPI_REQUEST_NULL;
  }
  broken_ = message;
  throw Error(message);
}

template <typename Start>
void MpiCommunicator::run(CollectiveKind kind, const Tensor* described, const std::string& details,
                          std::vector<Tensor> keep, Start&& start) {
  const int64_t op = announce(kind, described);
  MPI_Request req = MPI_REQUEST_NULL;
  const int rc = start(&req);
  if (rc != MPI_SUCCESS) {
    broken_ = name_ + ": " + collective_name(kind) + " #" + std::to_string(op) +
              " could not start: " + mpi_error_string(rc);
    throw Error(broken_);
  }
  wait_or_throw(&req, 1, Clock::now() + timeout_, op, kind, described, details, keep);
}

// ---- collectives ----------------------------------------------------------------------------

// All-reduce, reduce-scatter, all-gather and all-to-all run as point-to-point algorithms on
// ring_comm_ (rings as NCCL does, recursive doubling for small all-reduces, direct exchanges for
// all-to-all): Open MPI's non-blocking collectives (libnbc) take a binomial tree for an in-place
// all-reduce and progress slowly, up to several times below its blocking collectives, while
// these match or beat them (bench/bench_comm). Broadcast and barrier use MPI's non-blocking
// collectives.

bool MpiCommunicator::use_ring(int64_t bytes) const {
  // ORIGAMI_COMM_RING_MIN_BYTES overrides the threshold (for tuning on other machines).
  static const int64_t threshold = [] {
    const char* v = std::getenv("ORIGAMI_COMM_RING_MIN_BYTES");
    return v && *v ? std::atoll(v) : kRingMinBytes;
  }();
  return size() > 1 && bytes >= threshold;
}

void MpiCommunicator::ring_step(void* recv, int64_t recv_count, const void* send,
                                int64_t send_count, MPI_Datatype type, RingContext& ctx) {
  const int next = (rank_ + 1) % size(), prev = (rank_ + size() - 1) % size();
  exchange(prev, recv, recv_count, next, send, send_count, type, ctx);
}

int MpiCommunicator::post_exchange(int recv_peer, void* recv, int64_t recv_count, int send_peer,
                                   const void* send, int64_t send_count, MPI_Datatype type,
                                   RingContext& ctx, MPI_Request reqs[2]) {
  int n = 0, rc = MPI_SUCCESS;
  if (recv_peer >= 0)
    rc = MPI_Irecv(recv, int(recv_count), type, recv_peer, 0, ring_comm_, &reqs[n++]);
  if (rc == MPI_SUCCESS && send_peer >= 0)
    rc = MPI_Isend(send, int(send_count), type, send_peer, 0, ring_comm_, &reqs[n++]);
  if (rc != MPI_SUCCESS) {
    broken_ = name_ + ": " + collective_name(ctx.kind) + " #" + std::to_string(ctx.index) +
              " could not start a transfer: " + mpi_error_string(rc);
    throw Error(broken_);
  }
  return n;
}

void MpiCommunicator::exchange(int recv_peer, void* recv, int64_t recv_count, int send_peer,
                               const void* send, int64_t send_count, MPI_Datatype type,
                               RingContext& ctx) {
  MPI_Request reqs[2] = {MPI_REQUEST_NULL, MPI_REQUEST_NULL};
  const int n =
      post_exchange(recv_peer, recv, recv_count, send_peer, send, send_count, type, ctx, reqs);
  wait_or_throw(reqs, n, ctx.deadline, ctx.index, ctx.kind, ctx.described, ctx.details, ctx.keep);
}

MpiCommunicator::RingContext MpiCommunicator::ring_context(CollectiveKind kind,
                                                           const Tensor& described,
                                                           std::string details,
                                                           std::vector<Tensor> keep) {
  RingContext ctx;
  ctx.index = announce(kind, &described);
  ctx.deadline = Clock::now() + timeout_;
  ctx.kind = kind;
  ctx.described = &described;
  ctx.details = std::move(details);
  ctx.keep = std::move(keep);
  return ctx;
}

char* MpiCommunicator::ring_scratch(int64_t bytes, RingContext& ctx) {
  if (!ring_scratch_.defined() || int64_t(ring_scratch_.nbytes()) < bytes)
    ring_scratch_ = Tensor::empty({std::max<int64_t>(bytes, 1)}, DType::u8);
  ctx.keep.push_back(ring_scratch_);
  return static_cast<char*>(ring_scratch_.data());
}

void MpiCommunicator::ring_all_gather(const char* own, char* out,
                                      const std::vector<int64_t>& offsets,
                                      const std::vector<int64_t>& counts, DType dtype,
                                      RingContext& ctx) {
  // Step s passes on the piece received in step s-1. Step 0 sends this member's piece straight
  // from `own` and copies it into place while the transfer is in flight.
  const int p = size(), r = rank_;
  const int64_t es = int64_t(dtype_size(dtype));
  const auto piece = [p](int c) { return ((c % p) + p) % p; };
  const MPI_Datatype type = mpi_type(dtype);
  const auto copy_own = [&] {
    if (counts[size_t(r)] > 0)
      std::memcpy(out + offsets[size_t(r)] * es, own, counts[size_t(r)] * es);
  };
  if (p == 1) return copy_own();
  const int next = (r + 1) % p, prev = (r + p - 1) % p;
  MPI_Request reqs[2] = {MPI_REQUEST_NULL, MPI_REQUEST_NULL};
  const int recv_0 = piece(r - 1);
  const int n = post_exchange(prev, out + offsets[size_t(recv_0)] * es, counts[size_t(recv_0)],
                              next, own, counts[size_t(r)], type, ctx, reqs);
  copy_own();
  wait_or_throw(reqs, n, ctx.deadline, ctx.index, ctx.kind, ctx.described, ctx.details, ctx.keep);
  for (int s = 1; s < p - 1; ++s) {
    const int send_c = piece(r - s), recv_c = piece(r - s - 1);
    ring_step(out + offsets[size_t(recv_c)] * es, counts[size_t(recv_c)],
              out + offsets[size_t(send_c)] * es, counts[size_t(send_c)], type, ctx);
  }
}

void MpiCommunicator::ring_reduce_scatter(const char* in, const std::vector<int64_t>& offsets,
                                          const std::vector<int64_t>& counts, char* out,
                                          DType dtype, ReduceOp op, RingContext& ctx) {
  // Step s sends the partial sum of piece r-s-1 and receives that of piece r-s-2, adding this
  // member's input to it; after p-1 steps the piece received is piece r, complete.
  const int p = size(), r = rank_;
  const int64_t es = int64_t(dtype_size(dtype));
  const auto piece = [p](int c) { return ((c % p) + p) % p; };
  const int64_t max_count = *std::max_element(counts.begin(), counts.end());
  char* scratch = ring_scratch(3 * max_count * es, ctx);
  char* recv = scratch;
  char* partial[2] = {scratch + max_count * es, scratch + 2 * max_count * es};
  const char* send = in + offsets[size_t(piece(r - 1))] * es;
  for (int s = 0; s < p - 1; ++s) {
    const int send_c = piece(r - s - 1), recv_c = piece(r - s - 2);
    ring_step(recv, counts[size_t(recv_c)], send, counts[size_t(send_c)], mpi_type(dtype), ctx);
    char* dst = s == p - 2 ? out : partial[s % 2];
    combine(dtype, dst, in + offsets[size_t(recv_c)] * es, recv, counts[size_t(recv_c)], op);
    send = dst;
  }
}

void MpiCommunicator::reduce_16bit(CollectiveKind kind, const Tensor& input, Tensor& output,
                                   const std::vector<int64_t>* counts, ReduceOp op) {
  // fp32 copies: the sum is taken in fp32 and rounded to 16 bits once, on the result.
  Tensor in32 = Tensor::empty({input.numel()}, DType::f32);
  widen(input, in32.data_as<float>());
  if (kind == CollectiveKind::all_reduce) {
    all_reduce_buffer(in32, op, input, {input});
  } else {
    Tensor out32 = Tensor::empty({output.numel()}, DType::f32);
    reduce_scatter_buffer(kind, in32, out32, counts, op, input, {input, output});
    in32 = out32;
  }
  narrow_into(in32.data_as<float>(), output);
}

void MpiCommunicator::all_reduce(Tensor& t, ReduceOp op) {
  check_usable("all_reduce");
  check_tensor(*this, "all_reduce", "tensor", t);
  to_count(*this, "all_reduce", t.numel());
  if (is_16bit_float(t.dtype())) return reduce_16bit(CollectiveKind::all_reduce, t, t, nullptr, op);
  all_reduce_buffer(t, op, t, {t});
}

void MpiCommunicator::all_reduce_buffer(Tensor& t, ReduceOp op, const Tensor& described,
                                        std::vector<Tensor> keep) {
  const int64_t n = t.numel();
  keep.push_back(t);
  RingContext ctx =
      ring_context(CollectiveKind::all_reduce, described, reduce_op_name(op), std::move(keep));
  if (size() == 1 || n == 0) return;
  if (!use_ring(int64_t(t.nbytes())) || n < size()) return doubling_all_reduce(t, op, ctx);
  // Ring reduce-scatter in place (member r ends with piece r+1 complete, so no extra copy), then
  // ring all-gather of the complete pieces.
  const int p = size(), r = rank_;
  std::vector<int64_t> offsets(static_cast<size_t>(p) + 1), counts(static_cast<size_t>(p));
  for (int c = 0; c <= p; ++c) offsets[size_t(c)] = c * (n / p) + std::min<int64_t>(c, n % p);
  for (int c = 0; c < p; ++c) counts[size_t(c)] = offsets[size_t(c) + 1] - offsets[size_t(c)];
  const int64_t es = int64_t(dtype_size(t.dtype()));
  const auto piece = [p](int c) { return ((c % p) + p) % p; };
  char* data = static_cast<char*>(t.data());
  char* recv = ring_scratch((n / p + 1) * es, ctx);
  for (int s = 0; s < p - 1; ++s) {
    const int send_c = piece(r - s), recv_c = piece(r - s - 1);
    ring_step(recv, counts[size_t(recv_c)], data + offsets[size_t(send_c)] * es,
              counts[size_t(send_c)], mpi_type(t.dtype()), ctx);
    char* acc = data + offsets[size_t(recv_c)] * es;
    combine(t.dtype(), acc, acc, recv, counts[size_t(recv_c)], op);
  }
  // Member r holds piece r+1: the all-gather ring, shifted by one.
  for (int s = 0; s < p - 1; ++s) {
    const int send_c = piece(r + 1 - s), recv_c = piece(r - s);
    ring_step(data + offsets[size_t(recv_c)] * es, counts[size_t(recv_c)],
              data + offsets[size_t(send_c)] * es, counts[size_t(send_c)], mpi_type(t.dtype()),
              ctx);
  }
}

void MpiCommunicator::doubling_all_reduce(Tensor& t, ReduceOp op, RingContext& ctx) {
  // Recursive doubling over the largest power of two pof2 <= p members; the first 2*(p - pof2)
  // members pair up first (even ones hand their data to the odd neighbour and get the result back
  // at the end). Each exchange combines "mine (op) theirs" on both sides, which gives the same
  // bits on both (the operations are commutative), so every member ends with identical values.
  const int p = size(), r = rank_;
  const int64_t n = t.numel(), es = int64_t(dtype_size(t.dtype()));
  const MPI_Datatype type = mpi_type(t.dtype());
  char* data = static_cast<char*>(t.data());
  char* tmp = ring_scratch(n * es, ctx);
  int pof2 = 1;
  while (pof2 * 2 <= p) pof2 *= 2;
  const int rem = p - pof2;
  int virtual_rank = r - rem;  // position among the pof2 members of the doubling
  if (r < 2 * rem) {
    if (r % 2 == 0) {
      exchange(-1, nullptr, 0, r + 1, data, n, type, ctx);
      virtual_rank = -1;
    } else {
      exchange(r - 1, tmp, n, -1, nullptr, 0, type, ctx);
      combine(t.dtype(), data, data, tmp, n, op);
      virtual_rank = r / 2;
    }
  }
  if (virtual_rank >= 0) {
    for (int mask = 1; mask < pof2; mask <<= 1) {
      const int v = virtual_rank ^ mask;
      const int partner = v < rem ? 2 * v + 1 : v + rem;
      exchange(partner, tmp, n, partner, data, n, type, ctx);
      combine(t.dtype(), data, data, tmp, n, op);
    }
  }
  if (r < 2 * rem) {
    if (r % 2 == 0) {
      exchange(r + 1, data, n, -1, nullptr, 0, type, ctx);
    } else {
      exchange(-1, nullptr, 0, r - 1, data, n, type, ctx);
    }
  }
}

void MpiCommunicator::reduce_scatter_buffer(CollectiveKind kind, const Tensor& input,
                                            Tensor& output, const std::vector<int64_t>* counts,
                                            ReduceOp op, const Tensor& described,
                                            std::vector<Tensor> keep) {
  const int p = size();
  keep.push_back(input);
  keep.push_back(output);
  RingContext ctx = ring_context(kind, described, reduce_op_name(op), std::move(keep));
  if (p == 1) {
    if (output.nbytes() > 0) std::memcpy(output.data(), input.data(), output.nbytes());
    return;
  }
  std::vector<int64_t> offsets(static_cast<size_t>(p)), c(static_cast<size_t>(p));
  int64_t offset = 0;
  for (int r = 0; r < p; ++r) {
    c[size_t(r)] = counts ? (*counts)[size_t(r)] : output.numel();
    offsets[size_t(r)] = offset;
    offset += c[size_t(r)];
  }
  ring_reduce_scatter(static_cast<const char*>(input.data()), offsets, c,
                      static_cast<char*>(output.data()), input.dtype(), op, ctx);
}

void MpiCommunicator::all_gather_buffer(CollectiveKind kind, const Tensor& input, Tensor& output,
                                        const std::vector<int64_t>* counts) {
  const int p = size();
  std::vector<int64_t> offsets(static_cast<size_t>(p)), c(static_cast<size_t>(p));
  int64_t offset = 0;
  for (int r = 0; r < p; ++r) {
    c[size_t(r)] = counts ? (*counts)[size_t(r)] : input.numel();
    offsets[size_t(r)] = offset;
    offset += c[size_t(r)];
  }
  RingContext ctx = ring_context(kind, input, "", {input, output});
  ring_all_gather(static_cast<const char*>(input.data()), static_cast<char*>(output.data()),
                  offsets, c, input.dtype(), ctx);
}

void MpiCommunicator::reduce_scatter(const Tensor& input, Tensor& output, ReduceOp op) {
  check_usable("reduce_scatter");
  check_tensor(*this, "reduce_scatter", "input", input);
  check_tensor(*this, "reduce_scatter", "output", output);
  check_same_dtype(*this, "reduce_scatter", input, output);
  check_numel(*this, "reduce_scatter", "input", input, output.numel() * size(),
              "group size x output elements");
  to_count(*this, "reduce_scatter", input.numel());
  if (is_16bit_float(input.dtype()))
    return reduce_16bit(CollectiveKind::reduce_scatter, input, output, nullptr, op);
  reduce_scatter_buffer(CollectiveKind::reduce_scatter, input, output, nullptr, op, input, {});
}

void MpiCommunicator::reduce_scatter_v(const Tensor& input, Tensor& output,
                                       const std::vector<int64_t>& counts, ReduceOp op) {
  check_usable("reduce_scatter_v");
  check_tensor(*this, "reduce_scatter_v", "input", input);
  check_tensor(*this, "reduce_scatter_v", "output", output);
  check_same_dtype(*this, "reduce_scatter_v", input, output);
  const int64_t total = check_counts(*this, "reduce_scatter_v", "counts", counts);
  check_numel(*this, "reduce_scatter_v", "input", input, total, "the sum of counts");
  check_numel(*this, "reduce_scatter_v", "output", output, counts[size_t(rank_)], "counts[rank]");
  to_count(*this, "reduce_scatter_v", total);
  if (is_16bit_float(input.dtype()))
    return reduce_16bit(CollectiveKind::reduce_scatter_v, input, output, &counts, op);
  reduce_scatter_buffer(CollectiveKind::reduce_scatter_v, input, output, &counts, op, input, {});
}

void MpiCommunicator::all_gather(const Tensor& input, Tensor& output) {
  check_usable("all_gather");
  check_tensor(*this, "all_gather", "input", input);
  check_tensor(*this, "all_gather", "output", output);
  check_same_dtype(*this, "all_gather", input, output);
  check_numel(*this, "all_gather", "output", output, input.numel() * size(),
              "group size x input elements");
  to_count(*this, "all_gather", output.numel());
  all_gather_buffer(CollectiveKind::all_gather, input, output, nullptr);
}

void MpiCommunicator::all_gather_v(const Tensor& input, Tensor& output,
                                   const std::vector<int64_t>& counts) {
  check_usable("all_gather_v");
  check_tensor(*this, "all_gather_v", "input", input);
  check_tensor(*this, "all_gather_v", "output", output);
  check_same_dtype(*this, "all_gather_v", input, output);
  const int64_t total = check_counts(*this, "all_gather_v", "counts", counts);
  check_numel(*this, "all_gather_v", "input", input, counts[size_t(rank_)], "counts[rank]");
  check_numel(*this, "all_gather_v", "output", output, total, "the sum of counts");
  to_count(*this, "all_gather_v", total);
  all_gather_buffer(CollectiveKind::all_gather_v, input, output, &counts);
}

void MpiCommunicator::all_to_all_buffer(CollectiveKind kind, const Tensor& input,
                                        const std::vector<int64_t>& send_counts, Tensor& output,
                                        const std::vector<int64_t>& recv_counts) {
  // Point-to-point, like the rings: sent straight from the input, this member's own piece copied
  // while the messages are in flight. Every message at once for two members or small buffers;
  // pairwise steps (member r+s, r-s at step s) for large ones, which keeps the number of
  // transfers in flight bounded. Zero-length pieces send nothing.
  RingContext ctx = ring_context(kind, input, "", {input, output});
  const int p = size(), r = rank_;
  const int64_t es = int64_t(dtype_size(input.dtype()));
  const MPI_Datatype type = mpi_type(input.dtype());
  std::vector<int64_t> so(static_cast<size_t>(p)), ro(static_cast<size_t>(p));
  int64_t send_total = 0, recv_total = 0;
  for (int m = 0; m < p; ++m) {
    so[size_t(m)] = send_total;
    ro[size_t(m)] = recv_total;
    send_total += send_counts[size_t(m)];
    recv_total += recv_counts[size_t(m)];
  }
  const char* in = static_cast<const char*>(input.data());
  char* out = static_cast<char*>(output.data());
  const auto copy_own = [&] {
    if (send_counts[size_t(r)] > 0)
      std::memcpy(out + ro[size_t(r)] * es, in + so[size_t(r)] * es, send_counts[size_t(r)] * es);
  };
  const auto to = [&](int s) { return (r + s) % p; };
  const auto from = [&](int s) { return (r - s + p) % p; };
  if (p == 2 || send_total * es < kRingMinBytes) {
    std::vector<MPI_Request> reqs;
    reqs.reserve(2 * size_t(p));
    for (int s = 1; s < p; ++s) {
      const int m = from(s);
      if (recv_counts[size_t(m)] == 0) continue;
      reqs.push_back(MPI_REQUEST_NULL);
      post_exchange(m, out + ro[size_t(m)] * es, recv_counts[size_t(m)], -1, nullptr, 0, type, ctx,
                    &reqs.back());
    }
    for (int s = 1; s < p; ++s) {
      const int m = to(s);
      if (send_counts[size_t(m)] == 0) continue;
      reqs.push_back(MPI_REQUEST_NULL);
      post_exchange(-1, nullptr, 0, m, in + so[size_t(m)] * es, send_counts[size_t(m)], type, ctx,
                    &reqs.back());
    }
    copy_own();
    if (!reqs.empty())
      wait_or_throw(reqs.data(), int(reqs.size()), ctx.deadline, ctx.index, ctx.kind, ctx.described,
                    ctx.details, ctx.keep);
    return;
  }
  for (int s = 1; s < p; ++s) {
    const int dst = to(s), src = from(s);
    const int64_t sn = send_counts[size_t(dst)], rn = recv_counts[size_t(src)];
    MPI_Request reqs[2] = {MPI_REQUEST_NULL, MPI_REQUEST_NULL};
    const int n = post_exchange(rn > 0 ? src : -1, out + ro[size_t(src)] * es, rn,
                                sn > 0 ? dst : -1, in + so[size_t(dst)] * es, sn, type, ctx, reqs);
    if (s == 1) copy_own();
    if (n > 0)
      wait_or_throw(reqs, n, ctx.deadline, ctx.index, ctx.kind, ctx.described, ctx.details,
                    ctx.keep);
  }
}

void MpiCommunicator::all_to_all(const Tensor& input, Tensor& output) {
  check_usable("all_to_all");
  check_tensor(*this, "all_to_all", "input", input);
  check_tensor(*this, "all_to_all", "output", output);
  check_same_dtype(*this, "all_to_all", input, output);
  ORIGAMI_CHECK(input.numel() % size() == 0, name_, ": all_to_all: input ", input.str(),
                " does not split into ", size(), " equal pieces");
  check_numel(*this, "all_to_all", "output", output, input.numel(), "the input's size");
  to_count(*this, "all_to_all", input.numel());
  const std::vector<int64_t> counts(static_cast<size_t>(size()), input.numel() / size());
  all_to_all_buffer(CollectiveKind::all_to_all, input, counts, output, counts);
}

void MpiCommunicator::all_to_all_v(const Tensor& input, const std::vector<int64_t>& send_counts,
                                   Tensor& output, const std::vector<int64_t>& recv_counts) {
  check_usable("all_to_all_v");
  check_tensor(*this, "all_to_all_v", "input", input);
  check_tensor(*this, "all_to_all_v", "output", output);
  check_same_dtype(*this, "all_to_all_v", input, output);
  const int64_t send_total = check_counts(*this, "all_to_all_v", "send_counts", send_counts);
  const int64_t recv_total = check_counts(*this, "all_to_all_v", "recv_counts", recv_counts);
  check_numel(*this, "all_to_all_v", "input", input, send_total, "the sum of send_counts");
  check_numel(*this, "all_to_all_v", "output", output, recv_total, "the sum of recv_counts");
  ORIGAMI_CHECK(send_counts[size_t(rank_)] == recv_counts[size_t(rank_)], name_,
                ": all_to_all_v: send_counts[", rank_, "] = ", send_counts[size_t(rank_)],
                " and recv_counts[", rank_, "] = ", recv_counts[size_t(rank_)],
                " must be equal: both count this member's piece for itself");
  to_count(*this, "all_to_all_v", std::max(send_total, recv_total));
  all_to_all_buffer(CollectiveKind::all_to_all_v, input, send_counts, output, recv_counts);
}

void MpiCommunicator::broadcast(Tensor& t, int root) {
  check_usable("broadcast");
  check_tensor(*this, "broadcast", "tensor", t);
  ORIGAMI_CHECK(root >= 0 && root < size(), name_, ": broadcast: root ", root,
                " is not a member (group of ", size(), ")");
  const int n = to_count(*this, "broadcast", t.numel());
  run(CollectiveKind::broadcast, &t, "root " + std::to_string(root), {t}, [&](MPI_Request* req) {
    return MPI_Ibcast(t.data(), n, mpi_type(t.dtype()), root, comm_, req);
  });
}

void MpiCommunicator::barrier() {
  check_usable("barrier");
  run(CollectiveKind::barrier, nullptr, "", {},
      [&](MPI_Request* req) { return MPI_Ibarrier(comm_, req); });
}

// ---- point to point -----------------------------------------------------------------------

Request MpiCommunicator::isend(const Tensor& t, int peer, int tag) {
  check_usable("send");
  check_tensor(*this, "send", "tensor", t);
  check_peer(*this, "send", peer, tag);
  const int n = to_count(*this, "send", t.numel());
  MPI_Request req = MPI_REQUEST_NULL;
  const int rc = MPI_Isend(t.data(), n, mpi_type(t.dtype()), peer, tag, comm_, &req);
  ORIGAMI_CHECK(rc == MPI_SUCCESS, name_, ": send to ", member_desc(*this, peer),
                " failed: ", mpi_error_string(rc));
  std::string what = name_ + ": send of " + tensor_desc(&t) + " to " + member_desc(*this, peer) +
                     " with tag " + std::to_string(tag);
  return Request(std::make_unique<MpiRequest>(req, t, std::move(what), false, peer), timeout_);
}

Request MpiCommunicator::irecv(Tensor& t, int peer, int tag) {
  check_usable("recv");
  check_tensor(*this, "recv", "tensor", t);
  check_peer(*this, "recv", peer, tag);
  const int n = to_count(*this, "recv", t.numel());
  MPI_Request req = MPI_REQUEST_NULL;
  const int rc = MPI_Irecv(t.data(), n, mpi_type(t.dtype()), peer, tag, comm_, &req);
  ORIGAMI_CHECK(rc == MPI_SUCCESS, name_, ": recv from ", member_desc(*this, peer),
                " failed: ", mpi_error_string(rc));
  std::string what = name_ + ": recv of " + tensor_desc(&t) + " from " + member_desc(*this, peer) +
                     " with tag " + std::to_string(tag);
  return Request(std::make_unique<MpiRequest>(req, t, std::move(what), true, peer), timeout_);
}

void MpiCommunicator::send(const Tensor& t, int peer, int tag) {
  isend(t, peer, tag).wait();
}

void MpiCommunicator::recv(Tensor& t, int peer, int tag) {
  irecv(t, peer, tag).wait();
}

}  // namespace detail

std::unique_ptr<Communicator> mpi_world_communicator(Milliseconds timeout) {
  ensure_mpi_initialized();
  MPI_Comm comm = MPI_COMM_NULL;
  const int rc = MPI_Comm_dup(MPI_COMM_WORLD, &comm);
  ORIGAMI_CHECK(rc == MPI_SUCCESS, "world: MPI_Comm_dup failed: ", detail::mpi_error_string(rc));
  return std::make_unique<detail::MpiCommunicator>(comm, "world", timeout);
}

}  // namespace origami
