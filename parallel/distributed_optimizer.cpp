// The data-parallel optimizer: buckets, pieces, and the collectives of one step.
#include "parallel/distributed_optimizer.h"

#include <algorithm>
#include <cstdio>
#include <sstream>

#include "runtime/error.h"

namespace origami {

namespace {

constexpr const char* kWho = "DistributedOptimizer";

// "987", "12.3K", "1.2M", "3.4G".
std::string count_str(int64_t n) {
  if (n < 10000) return std::to_string(n);
  const char* units = "KMGT";
  double v = double(n) / 1000.0;
  int u = 0;
  while (v >= 1000.0 && u < 3) {
    v /= 1000.0;
    ++u;
  }
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f%c", v, units[u]);
  return buf;
}

Tensor flat_view(const Tensor& t) {
  return t.view({t.numel()});
}

}  // namespace

DistributedOptimizer::DistributedOptimizer(Tensor master, Tensor grads, Tensor compute,
                                           Communicator& dp,
                                           const DistributedOptimizerOptions& options)
    : dp_(dp), zero_(options.zero), dp_size_(dp.size()), dp_rank_(dp.rank()) {
  ORIGAMI_CHECK(master.defined(), kWho, ": the master weights are undefined");
  ORIGAMI_CHECK(master.dtype() == DType::f32, kWho, ": the master weights must be f32, got ",
                master.str());
  ORIGAMI_CHECK(master.is_contiguous(), kWho, ": the master weights must be contiguous, got ",
                master.str());
  numel_ = master.numel();
  const Device device = master.device();
  ORIGAMI_CHECK(grads.defined(), kWho, ": the gradients are undefined");
  ORIGAMI_CHECK(grads.dtype() == DType::f32, kWho, ": the gradients must be f32, got ",
                grads.str());
  ORIGAMI_CHECK(grads.numel() == numel_, kWho, ": the gradients ", grads.str(),
                " must have as many elements as the master weights ", master.str());
  ORIGAMI_CHECK(grads.is_contiguous(), kWho, ": the gradients must be contiguous, got ",
                grads.str());
  ORIGAMI_CHECK(grads.device() == device, kWho, ": the gradients ", grads.str(),
                " must be on the device of the master weights ", master.str());
  ORIGAMI_CHECK(grads.data() != master.data() || numel_ == 0, kWho,
                ": the gradients must not be the master weights");
  if (compute.defined()) {
    ORIGAMI_CHECK(compute.dtype() == DType::bf16 || compute.dtype() == DType::f32, kWho,
                  ": the compute copy must be bf16 or f32, got ", compute.str());
    ORIGAMI_CHECK(compute.numel() == numel_, kWho, ": the compute copy ", compute.str(),
                  " must have as many elements as the master weights ", master.str());
    ORIGAMI_CHECK(compute.is_contiguous(), kWho, ": the compute copy must be contiguous, got ",
                  compute.str());
    ORIGAMI_CHECK(compute.device() == device, kWho, ": the compute copy ", compute.str(),
                  " must be on the device of the master weights ", master.str());
    // An f32 compute copy that is the master buffer itself needs no refresh.
    if (compute.dtype() == DType::f32 && compute.data() == master.data()) compute = Tensor();
  }
  ORIGAMI_CHECK(options.bucket_elements >= 1, kWho, ": bucket_elements must be >= 1, got ",
                options.bucket_elements);
  ORIGAMI_CHECK(dp_size_ >= 1 && dp_rank_ >= 0 && dp_rank_ < dp_size_, kWho, ": communicator '",
                dp.name(), "' has rank ", dp_rank_, " of ", dp_size_);
  bucket_elements_ = options.bucket_elements;

  master_ = flat_view(master);
  grads_ = flat_view(grads);
  if (compute.defined()) compute_ = flat_view(compute);

  // Buckets and their pieces: the first (length % dp) pieces one element longer.
  int64_t state = 0, largest_piece = 0;
  for (int64_t start = 0; start < numel_; start += bucket_elements_) {
    Bucket b;
    b.range = {start, std::min(numel_ - start, bucket_elements_)};
    const int64_t base = b.range.length / dp_size_, extra = b.range.length % dp_size_;
    int64_t at = start;
    for (int r = 0; r < dp_size_; ++r) {
      const int64_t len = base + (r < extra ? 1 : 0);
      b.counts.push_back(len);
      b.offsets.push_back(at);
      at += len;
    }
    b.state_offset = state;
    state += b.counts[size_t(dp_rank_)];
    largest_piece = std::max(largest_piece, b.counts[0]);
    buckets_.push_back(std::move(b));
  }

  const int64_t state_elems = zero_ ? state : numel_;
  m_ = Tensor::zeros({state_elems}, DType::f32, device);
  v_ = Tensor::zeros({state_elems}, DType::f32, device);
  if (zero_ && dp_size_ > 1) scratch_ = Tensor::empty({largest_piece}, DType::f32, device);
}

FlatRange DistributedOptimizer::bucket(int64_t b) const {
  ORIGAMI_CHECK(b >= 0 && b < num_buckets(), kWho, ": bucket ", b, " out of range [0, ",
                num_buckets(), ")");
  return buckets_[size_t(b)].range;
}

FlatRange DistributedOptimizer::piece(int64_t b, int r) const {
  ORIGAMI_CHECK(b >= 0 && b < num_buckets(), kWho, ": bucket ", b, " out of range [0, ",
                num_buckets(), ")");
  ORIGAMI_CHECK(r >= 0 && r < dp_size_, kWho, ": dp rank ", r, " out of range [0, ", dp_size_, ")");
  const Bucket& bk = buckets_[size_t(b)];
  return {bk.offsets[size_t(r)], bk.counts[size_t(r)]};
}

std::vector<FlatRange> DistributedOptimizer::owned_pieces() const {
  std::vector<FlatRange> out;
  out.reserve(buckets_.size());
  for (const Bucket& b : buckets_) out.push_back(own(b));
  return out;
}

int64_t DistributedOptimizer::state_elements() const {
  return m_.numel();
}

void DistributedOptimizer::reduce_gradients() {
  if (dp_size_ == 1) return;
  for (const Bucket& b : buckets_) {
    Tensor bucket = grads_.narrow(0, b.range.offset, b.range.length);
    if (!zero_) {
      dp_.all_reduce(bucket, ReduceOp::sum);
      continue;
    }
    // The output must not overlap the input: reduce into the scratch piece, then copy it home.
    const FlatRange mine = own(b);
    Tensor out = scratch_.narrow(0, 0, mine.length);
    dp_.reduce_scatter_v(bucket, out, b.counts, ReduceOp::sum);
    grads_.narrow(0, mine.offset, mine.length).copy_from(out);
  }
}

double DistributedOptimizer::local_grad_sum_squares() const {
  return local_grad_sum_squares({FlatRange{0, numel_}});
}

double DistributedOptimizer::local_grad_sum_squares(const std::vector<FlatRange>& counted) const {
  for (size_t i = 0; i < counted.size(); ++i) {
    const FlatRange& c = counted[i];
    ORIGAMI_CHECK(c.offset >= 0 && c.length >= 0 && c.end() <= numel_, kWho, ": counted range ", i,
                  " [", c.offset, ", ", c.end(), ") lies outside the flat buffer [0, ", numel_,
                  ")");
    ORIGAMI_CHECK(i == 0 || c.offset >= counted[i - 1].end(), kWho, ": counted range ", i, " [",
                  c.offset, ", ", c.end(), ") starts before the end of range ", i - 1, " [",
                  counted[i - 1].offset, ", ", counted[i - 1].end(),
                  "); pass sorted, disjoint ranges");
  }
  double sum = 0.0;
  size_t first = 0;  // the first counted range that may still meet a piece
  for (const Bucket& b : buckets_) {
    const FlatRange mine = own(b);
    if (mine.length == 0) continue;
    while (first < counted.size() && counted[first].end() <= mine.offset) ++first;
    for (size_t k = first; k < counted.size() && counted[k].offset < mine.end(); ++k) {
      const int64_t lo = std::max(mine.offset, counted[k].offset);
      const int64_t hi = std::min(mine.end(), counted[k].end());
      if (hi > lo) sum += ops::sum_squares(grads_.narrow(0, lo, hi - lo));
    }
  }
  return sum;
}

void DistributedOptimizer::scale_gradients(float s) {
  if (!zero_) {
    ops::scale_(grads_, s);
    return;
  }
  for (const Bucket& b : buckets_) {
    const FlatRange mine = own(b);
    Tensor g = grads_.narrow(0, mine.offset, mine.length);
    ops::scale_(g, s);
  }
}

void DistributedOptimizer::step(const ops::AdamWParams& p) {
  if (!zero_) {
    ops::adamw_step(master_, grads_, m_, v_, p, compute_);
    return;
  }
  for (const Bucket& b : buckets_) {
    const FlatRange mine = own(b);
    Tensor w = master_.narrow(0, mine.offset, mine.length);
    Tensor m = m_.narrow(0, b.state_offset, mine.length);
    Tensor v = v_.narrow(0, b.state_offset, mine.length);
    const Tensor g = grads_.narrow(0, mine.offset, mine.length);
    // AdamW writes this rank's piece of the compute copy as it goes (rounded once, in the loop).
    Tensor c = compute_.defined() ? compute_.narrow(0, mine.offset, mine.length) : Tensor();
    ops::adamw_step(w, g, m, v, p, c);
    if (dp_size_ == 1) continue;  // the piece is the whole bucket
    // The input must not overlap the output: gather from a copy of this rank's piece.
    Tensor in = scratch_.narrow(0, 0, mine.length);
    in.copy_from(w);
    Tensor bucket = master_.narrow(0, b.range.offset, b.range.length);
    dp_.all_gather_v(in, bucket, b.counts);
    if (!compute_.defined()) continue;
    // The other ranks' pieces of the compute copy: before and after this rank's piece.
    const int64_t before = mine.offset - b.range.offset, after = b.range.end() - mine.end();
    compute_.narrow(0, b.range.offset, before).copy_from(master_.narrow(0, b.range.offset, before));
    compute_.narrow(0, mine.end(), after).copy_from(master_.narrow(0, mine.end(), after));
  }
}

void DistributedOptimizer::check_full_state(const char* op, const Tensor& t,
                                            const char* name) const {
  ORIGAMI_CHECK(t.defined(), kWho, "::", op, ": ", name, " is undefined; allocate f32 [", numel_,
                "]");
  ORIGAMI_CHECK(t.dtype() == DType::f32 && t.numel() == numel_ && t.is_contiguous(), kWho, "::", op,
                ": ", name, " must be a contiguous f32 tensor of ", numel_,
                " elements (the full state), got ", t.str());
  ORIGAMI_CHECK(t.device() == master_.device(), kWho, "::", op, ": ", name, " ", t.str(),
                " must be on the optimizer's device ", master_.str());
}

void DistributedOptimizer::gather_state(Tensor& m_full, Tensor& v_full) {
  check_full_state("gather_state", m_full, "m_full");
  check_full_state("gather_state", v_full, "v_full");
  Tensor mf = flat_view(m_full), vf = flat_view(v_full);
  if (!zero_) {
    mf.copy_from(m_);
    vf.copy_from(v_);
    return;
  }
  for (const Bucket& b : buckets_) {
    const int64_t len = b.counts[size_t(dp_rank_)];
    Tensor mo = mf.narrow(0, b.range.offset, b.range.length);
    Tensor vo = vf.narrow(0, b.range.offset, b.range.length);
    if (dp_size_ == 1) {
      mo.copy_from(m_.narrow(0, b.state_offset, len));
      vo.copy_from(v_.narrow(0, b.state_offset, len));
      continue;
    }
    dp_.all_gather_v(m_.narrow(0, b.state_offset, len), mo, b.counts);
    dp_.all_gather_v(v_.narrow(0, b.state_offset, len), vo, b.counts);
  }
}

void DistributedOptimizer::load_state(const Tensor& m_full, const Tensor& v_full) {
  check_full_state("load_state", m_full, "m_full");
  check_full_state("load_state", v_full, "v_full");
  const Tensor mf = flat_view(m_full), vf = flat_view(v_full);
  if (!zero_) {
    m_.copy_from(mf);
    v_.copy_from(vf);
    return;
  }
  for (const Bucket& b : buckets_) {
    const FlatRange mine = own(b);
    m_.narrow(0, b.state_offset, mine.length).copy_from(mf.narrow(0, mine.offset, mine.length));
    v_.narrow(0, b.state_offset, mine.length).copy_from(vf.narrow(0, mine.offset, mine.length));
  }
}

std::string DistributedOptimizer::describe() const {
  std::ostringstream os;
  os << (zero_ ? "ZeRO-1" : "all-reduce") << " over " << dp_.name() << "=" << dp_size_ << ": "
     << buckets_.size() << (buckets_.size() == 1 ? " bucket" : " buckets")
     << " of <= " << count_str(bucket_elements_) << " elements, Adam state for "
     << count_str(state_elements()) << " of " << count_str(numel_) << " elements per rank";
  return os.str();
}

}  // namespace origami
