// Context-parallel attention: the zigzag split and the all-gather and ring variants.
//
// Work layout. The local tokens are two chunks of C tokens at unrelated global positions, and the
// attention kernel takes one contiguous block of queries and one of keys, each at a contiguous run
// of positions (q_offset, k_offset). So every call copies its inputs once into chunk-major buffers
// ([2 chunks][B,C,H,D], each chunk contiguous) and the kernel is called per chunk pair with the
// chunks' global offsets: the causal and sliding-window masks then come out right by global
// position, with no mask of our own.
#include "parallel/context_parallel.h"

#include <chrono>
#include <cmath>
#include <limits>
#include <string>
#include <utility>

#include "ops/attention.h"
#include "ops/optimizer.h"
#include "runtime/error.h"

namespace origami {
namespace {

// Message tags of the ring (each direction of each transfer in its own FIFO stream).
constexpr int kTagKv = 29101;
constexpr int kTagDkv = 29102;

// A contiguous view of `shape` at the start of the flat buffer `flat`.
Tensor carve(const Tensor& flat, const Shape& shape) {
  return flat.narrow(0, 0, shape_numel(shape)).view(shape);
}

int64_t norm_dim(const Tensor& t, int dim, const char* op) {
  const int n = t.dim();
  const int d = dim < 0 ? dim + n : dim;
  ORIGAMI_CHECK(d >= 0 && d < n, op, ": sequence dimension ", dim, " out of range for ", t.str());
  return d;
}

// The sizes of `full` with the sequence dimension divided by cp.
Shape local_shape(const Tensor& full, int seq_dim, int cp) {
  Shape s = full.shape();
  s[size_t(seq_dim)] /= cp;
  return s;
}

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

}  // namespace

// ---- zigzag split ---------------------------------------------------------------------------

void check_zigzag_sequence(int64_t S, int cp) {
  ORIGAMI_CHECK(cp >= 1, "context parallel: the CP size must be at least 1, got ", cp);
  ORIGAMI_CHECK(S > 0 && S % (2 * int64_t(cp)) == 0, "context parallel: the sequence length S=", S,
                " must be a positive multiple of 2*CP=", 2 * int64_t(cp), " (CP=", cp,
                ": the sequence is cut into 2*CP equal chunks); choose a sequence length "
                "divisible by ",
                2 * int64_t(cp), " or another CP size");
}

std::vector<int64_t> zigzag_positions(int64_t S, int cp, int rank) {
  check_zigzag_sequence(S, cp);
  ORIGAMI_CHECK(rank >= 0 && rank < cp, "zigzag_positions: rank ", rank,
                " outside the CP group of ", cp);
  const int64_t C = S / (2 * cp);
  std::vector<int64_t> pos;
  pos.reserve(size_t(2 * C));
  for (const int64_t g : {int64_t(rank), int64_t(2 * cp - 1 - rank)})
    for (int64_t i = 0; i < C; ++i) pos.push_back(g * C + i);
  return pos;
}

void zigzag_split(const Tensor& full, int cp, int rank, Tensor& local, int seq_dim) {
  const char* op = "zigzag_split";
  const int d = int(norm_dim(full, seq_dim, op));
  const int64_t S = full.size(d);
  check_zigzag_sequence(S, cp);
  ORIGAMI_CHECK(rank >= 0 && rank < cp, op, ": rank ", rank, " outside the CP group of ", cp);
  ORIGAMI_CHECK(local.shape() == local_shape(full, d, cp), op, ": local must be ",
                shape_str(local_shape(full, d, cp)), " (full ", full.str(), " over CP=", cp,
                "), got ", local.str());
  const int64_t C = S / (2 * cp);
  local.narrow(d, 0, C).copy_from(full.narrow(d, rank * C, C));
  local.narrow(d, C, C).copy_from(full.narrow(d, (2 * cp - 1 - rank) * C, C));
}

void zigzag_gather(Communicator& cp, const Tensor& local, Tensor& full, int seq_dim) {
  const char* op = "zigzag_gather";
  const int d = int(norm_dim(full, seq_dim, op));
  const int n = cp.size();
  const int64_t S = full.size(d);
  check_zigzag_sequence(S, n);
  ORIGAMI_CHECK(local.shape() == local_shape(full, d, n), op, ": local must be ",
                shape_str(local_shape(full, d, n)), " (full ", full.str(), " over CP=", n,
                "), got ", local.str());
  ORIGAMI_CHECK(local.dtype() == full.dtype(), op, ": local and full dtypes differ: ", local.str(),
                " and ", full.str());
  const Tensor mine = local.contiguous();
  Shape gshape = local.shape();
  gshape.insert(gshape.begin(), n);
  Tensor gathered = Tensor::empty(gshape, local.dtype(), local.device());
  cp.all_gather(mine, gathered);
  const int64_t C = S / (2 * n);
  for (int r = 0; r < n; ++r) {
    const Tensor part = gathered.select(0, r);
    full.narrow(d, r * C, C).copy_from(part.narrow(d, 0, C));
    full.narrow(d, (2 * n - 1 - r) * C, C).copy_from(part.narrow(d, C, C));
  }
}

const char* cp_variant_name(CpVariant v) {
  switch (v) {
    case CpVariant::all_gather:
      return "all-gather";
    case CpVariant::ring:
      return "ring";
  }
  return "?";
}

// ---- CpAttention ----------------------------------------------------------------------------

CpAttention::CpAttention(Communicator& cp, CpVariant variant, int64_t B, int64_t S_local,
                         int64_t Hq, int64_t Hkv, int64_t D, DType dtype, int64_t window,
                         float scale, Device device)
    : cp_(cp),
      variant_(variant),
      B_max_(B),
      S_local_max_(S_local),
      Hq_(Hq),
      Hkv_(Hkv),
      D_(D),
      dtype_(dtype),
      window_(window),
      scale_(scale),
      device_(device),
      cp_size_(cp.size()),
      cp_rank_(cp.rank()) {
  const char* op = "CpAttention";
  ORIGAMI_CHECK(B >= 1 && S_local >= 1 && Hq >= 1 && Hkv >= 1 && D >= 1, op,
                ": sizes must be positive, got B=", B, " S_local=", S_local, " Hq=", Hq,
                " Hkv=", Hkv, " D=", D);
  ORIGAMI_CHECK(Hq % Hkv == 0, op, ": query heads (", Hq,
                ") must be a multiple of key/value heads (", Hkv, ")");
  ORIGAMI_CHECK(dtype == DType::f32 || dtype == DType::bf16, op,
                ": dtype must be f32 or bf16, got ", dtype_name(dtype));
  ORIGAMI_CHECK(window == -1 || window >= 1, op, ": window must be -1 (off) or at least 1, got ",
                window);
  ORIGAMI_CHECK(std::isfinite(scale), op, ": scale must be finite, got ", scale);
  check_zigzag_sequence(S_local * cp_size_, cp_size_);

  const int64_t C = S_local / 2, S = S_local * cp_size_;
  const int64_t q_chunk = B * C * Hq * D;    // one chunk of q
  const int64_t kv_chunk = B * C * Hkv * D;  // one chunk of k
  const int64_t kv_block = 4 * kv_chunk;     // [2 (k,v)][2 chunks]
  const auto make = [&](int64_t n, DType dt) { return Tensor::empty({n}, dt, device); };
  q_cm_ = make(2 * q_chunk, dtype);
  out_cm_ = make(2 * q_chunk, dtype);
  dout_cm_ = make(2 * q_chunk, dtype);
  lse_cm_ = make(2 * B * Hq * C, DType::f32);
  kv_[0] = make(kv_block, dtype);
  part_out_ = make(q_chunk, dtype);
  part_lse_ = make(B * Hq * C, DType::f32);
  dq_part_ = make(q_chunk, dtype);
  dq_acc_ = make(2 * q_chunk, DType::f32);
  if (variant == CpVariant::ring) {
    kv_[1] = make(kv_block, dtype);
    if (dtype != DType::f32) part_out_f32_ = make(q_chunk, DType::f32);
    acc_out_ = make(2 * q_chunk, DType::f32);
    acc_lse_ = make(2 * B * Hq * C, DType::f32);
    dk_part_ = make(kv_chunk, dtype);
    dv_part_ = make(kv_chunk, dtype);
    for (Tensor& t : dkv_) t = make(kv_block, DType::f32);
  } else {
    const int64_t kv_full = B * S * Hkv * D;
    gathered_ = make(cp_size_ * kv_block, dtype);
    k_full_ = make(kv_full, dtype);
    v_full_ = make(kv_full, dtype);
    dk_part_ = make(kv_full, dtype);
    dv_part_ = make(kv_full, dtype);
    dk_full_ = make(kv_full, DType::f32);
    dv_full_ = make(kv_full, DType::f32);
    dkv_scatter_ = make(cp_size_ * kv_block, DType::f32);
    dkv_mine_ = make(kv_block, DType::f32);
  }
}

CpAttention::Dims CpAttention::check_call(const char* op, const Tensor& q, const Tensor& k,
                                          const Tensor& v) const {
  ORIGAMI_CHECK(q.dim() == 4 && k.dim() == 4, op, ": q must be [B,S_local,Hq,D] and k, v ",
                "[B,S_local,Hkv,D], got q ", q.str(), " and k ", k.str());
  Dims d;
  d.B = q.size(0);
  d.S_local = q.size(1);
  d.C = d.S_local / 2;
  ORIGAMI_CHECK(d.B >= 1 && d.B <= B_max_ && d.S_local >= 1 && d.S_local <= S_local_max_, op,
                ": q ", q.str(), " exceeds the sizes this CpAttention was built for (B<=", B_max_,
                ", S_local<=", S_local_max_, ")");
  check_zigzag_sequence(d.S_local * cp_size_, cp_size_);
  const Shape qs = {d.B, d.S_local, Hq_, D_}, ks = {d.B, d.S_local, Hkv_, D_};
  ORIGAMI_CHECK(q.shape() == qs && k.shape() == ks && v.shape() == ks, op, ": expected q ",
                shape_str(qs), " and k, v ", shape_str(ks), ", got q ", q.str(), ", k ", k.str(),
                ", v ", v.str());
  for (const Tensor* t : {&q, &k, &v})
    ORIGAMI_CHECK(t->dtype() == dtype_ && t->device() == device_, op, ": expected ",
                  dtype_name(dtype_), " tensors on ", device_.str(), ", got ", t->str());
  return d;
}

int64_t CpAttention::global_chunk(int rank, int a) const {
  return a == 0 ? rank : 2 * int64_t(cp_size_) - 1 - rank;
}

bool CpAttention::chunk_pair_visible(int64_t gq, int64_t gk, int64_t C) const {
  if (gk > gq) return false;  // causal: every key comes after every query
  if (window_ < 0) return true;
  const int64_t closest = gq == gk ? 0 : (gq - gk) * C - (C - 1);  // smallest q_pos - k_pos
  return closest < window_;
}

void CpAttention::pack_chunks(const Tensor& x, Tensor dst, int seq_dim, int64_t C) const {
  for (int a = 0; a < 2; ++a) dst.select(0, a).copy_from(x.narrow(seq_dim, a * C, C));
}

void CpAttention::unpack_chunks(const Tensor& src, Tensor& x, int seq_dim, int64_t C) const {
  for (int a = 0; a < 2; ++a) x.narrow(seq_dim, a * C, C).copy_from(src.select(0, a));
}

void CpAttention::wait(Request& r) {
  if (!r.valid()) return;
  const auto t0 = Clock::now();
  r.wait();
  stats_.comm_wait_seconds += seconds_since(t0);
}

void CpAttention::forward(const Tensor& q, const Tensor& k, const Tensor& v, Tensor& out,
                          Tensor& lse) {
  const char* op = "CpAttention::forward";
  const Dims d = check_call(op, q, k, v);
  ORIGAMI_CHECK(out.shape() == q.shape() && out.dtype() == dtype_, op, ": out must be ",
                dtype_name(dtype_), shape_str(q.shape()), ", got ", out.str());
  const Shape ls = {d.B, Hq_, d.S_local};
  ORIGAMI_CHECK(lse.shape() == ls && lse.dtype() == DType::f32, op, ": lse must be f32",
                shape_str(ls), ", got ", lse.str());
  const int64_t C = d.C;
  pack_chunks(q, carve(q_cm_, {2, d.B, C, Hq_, D_}), 1, C);
  Tensor kv = carve(kv_[0], {2, 2, d.B, C, Hkv_, D_});
  pack_chunks(k, kv.select(0, 0), 1, C);
  pack_chunks(v, kv.select(0, 1), 1, C);
  if (variant_ == CpVariant::all_gather)
    forward_all_gather(d, out, lse);
  else
    forward_ring(d, out, lse);
}

void CpAttention::backward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                           const Tensor& lse, const Tensor& dout, Tensor& dq, Tensor& dk,
                           Tensor& dv) {
  const char* op = "CpAttention::backward";
  const Dims d = check_call(op, q, k, v);
  for (const auto& [name, t] :
       {std::pair<const char*, const Tensor*>{"out", &out}, {"dout", &dout}, {"dq", &dq}})
    ORIGAMI_CHECK(t->shape() == q.shape() && t->dtype() == dtype_, op, ": ", name, " must be ",
                  dtype_name(dtype_), shape_str(q.shape()), ", got ", t->str());
  for (const auto& [name, t] : {std::pair<const char*, const Tensor*>{"dk", &dk}, {"dv", &dv}})
    ORIGAMI_CHECK(t->shape() == k.shape() && t->dtype() == dtype_, op, ": ", name, " must be ",
                  dtype_name(dtype_), shape_str(k.shape()), ", got ", t->str());
  const Shape ls = {d.B, Hq_, d.S_local};
  ORIGAMI_CHECK(lse.shape() == ls && lse.dtype() == DType::f32, op, ": lse must be f32",
                shape_str(ls), ", got ", lse.str());
  const int64_t C = d.C;
  pack_chunks(q, carve(q_cm_, {2, d.B, C, Hq_, D_}), 1, C);
  pack_chunks(out, carve(out_cm_, {2, d.B, C, Hq_, D_}), 1, C);
  pack_chunks(dout, carve(dout_cm_, {2, d.B, C, Hq_, D_}), 1, C);
  pack_chunks(lse, carve(lse_cm_, {2, d.B, Hq_, C}), 2, C);
  Tensor kv = carve(kv_[0], {2, 2, d.B, C, Hkv_, D_});
  pack_chunks(k, kv.select(0, 0), 1, C);
  pack_chunks(v, kv.select(0, 1), 1, C);
  if (variant_ == CpVariant::all_gather)
    backward_all_gather(d, dq, dk, dv);
  else
    backward_ring(d, dq, dk, dv);
}

// ---- all-gather variant ---------------------------------------------------------------------
// K and V of every rank are gathered ([CP][k,v][chunk][B,C,Hkv,D]) and put back in global token
// order ([B,S,Hkv,D]); each local query chunk g attends to them with q_offset = g*C (the kernel
// skips the key blocks its mask hides, so the keys after the chunk cost nothing but the packing).

namespace {

// Gathers every rank's kv block and writes K, V in global token order.
void gather_kv(Communicator& cp, const Tensor& kv, Tensor gathered, Tensor K, Tensor V, int64_t C,
               CpAttentionStats& stats) {
  const int n = cp.size();
  const auto t0 = Clock::now();
  cp.all_gather(kv, gathered);
  stats.comm_wait_seconds += seconds_since(t0);
  stats.bytes_sent += int64_t(kv.nbytes());
  for (int s = 0; s < n; ++s)
    for (int c = 0; c < 2; ++c) {
      const int64_t g = c == 0 ? s : 2 * int64_t(n) - 1 - s;
      K.narrow(1, g * C, C).copy_from(gathered.select(0, s).select(0, 0).select(0, c));
      V.narrow(1, g * C, C).copy_from(gathered.select(0, s).select(0, 1).select(0, c));
    }
}

}  // namespace

void CpAttention::forward_all_gather(const Dims& d, const Tensor& out, const Tensor& lse) {
  const int64_t B = d.B, C = d.C, S = d.S_local * cp_size_;
  Tensor q_cm = carve(q_cm_, {2, B, C, Hq_, D_});
  Tensor kv = carve(kv_[0], {2, 2, B, C, Hkv_, D_});
  Tensor K = carve(k_full_, {B, S, Hkv_, D_}), V = carve(v_full_, {B, S, Hkv_, D_});
  gather_kv(cp_, kv, carve(gathered_, {cp_size_, 2, 2, B, C, Hkv_, D_}), K, V, C, stats_);
  Tensor part_out = carve(part_out_, {B, C, Hq_, D_}), part_lse = carve(part_lse_, {B, Hq_, C});
  for (int a = 0; a < 2; ++a) {
    ops::AttentionParams p;
    p.scale = scale_;
    p.causal = true;
    p.window = window_;
    p.q_offset = global_chunk(cp_rank_, a) * C;
    p.k_offset = 0;
    ops::attention_forward(q_cm.select(0, a), K, V, p, part_out, part_lse);
    ++stats_.attention_calls;
    out.narrow(1, a * C, C).copy_from(part_out);
    lse.narrow(2, a * C, C).copy_from(part_lse);
  }
}

void CpAttention::backward_all_gather(const Dims& d, Tensor& dq, Tensor& dk, Tensor& dv) {
  const int64_t B = d.B, C = d.C, S = d.S_local * cp_size_;
  Tensor q_cm = carve(q_cm_, {2, B, C, Hq_, D_});
  Tensor out_cm = carve(out_cm_, {2, B, C, Hq_, D_});
  Tensor dout_cm = carve(dout_cm_, {2, B, C, Hq_, D_});
  Tensor lse_cm = carve(lse_cm_, {2, B, Hq_, C});
  Tensor kv = carve(kv_[0], {2, 2, B, C, Hkv_, D_});
  const Shape full = {B, S, Hkv_, D_};
  Tensor K = carve(k_full_, full), V = carve(v_full_, full);
  // K and V are gathered again: between a layer's forward and backward other layers run.
  gather_kv(cp_, kv, carve(gathered_, {cp_size_, 2, 2, B, C, Hkv_, D_}), K, V, C, stats_);

  Tensor dq_part = carve(dq_part_, {B, C, Hq_, D_});
  Tensor dk_part = carve(dk_part_, full), dv_part = carve(dv_part_, full);
  Tensor dK = carve(dk_full_, full), dV = carve(dv_full_, full);
  dK.zero_();
  dV.zero_();
  for (int a = 0; a < 2; ++a) {
    ops::AttentionParams p;
    p.scale = scale_;
    p.causal = true;
    p.window = window_;
    p.q_offset = global_chunk(cp_rank_, a) * C;
    p.k_offset = 0;
    ops::attention_backward(q_cm.select(0, a), K, V, out_cm.select(0, a), lse_cm.select(0, a),
                            dout_cm.select(0, a), p, dq_part, dk_part, dv_part);
    ++stats_.attention_calls;
    dq.narrow(1, a * C, C).copy_from(dq_part);
    ops::axpy_(dK, dk_part);
    ops::axpy_(dV, dv_part);
  }

  // dK, dV in global order -> [CP][k,v][chunk] pieces -> reduce-scatter to their owners.
  Tensor scatter = carve(dkv_scatter_, {cp_size_, 2, 2, B, C, Hkv_, D_});
  for (int s = 0; s < cp_size_; ++s)
    for (int c = 0; c < 2; ++c) {
      const int64_t g = global_chunk(s, c);
      scatter.select(0, s).select(0, 0).select(0, c).copy_from(dK.narrow(1, g * C, C));
      scatter.select(0, s).select(0, 1).select(0, c).copy_from(dV.narrow(1, g * C, C));
    }
  Tensor mine = carve(dkv_mine_, {2, 2, B, C, Hkv_, D_});
  const auto t0 = Clock::now();
  cp_.reduce_scatter(scatter, mine);
  stats_.comm_wait_seconds += seconds_since(t0);
  stats_.bytes_sent += int64_t(scatter.nbytes());
  unpack_chunks(mine.select(0, 0), dk, 1, C);
  unpack_chunks(mine.select(0, 1), dv, 1, C);
}

// ---- ring variant ---------------------------------------------------------------------------
// At step i this rank holds the kv block of rank src = (r - i) mod CP and computes each visible
// pair (local query chunk a, chunk b of the block). The block for step i+1 is received from rank
// r-1 and this one sent to rank r+1 while the pairs are computed.

void CpAttention::forward_ring(const Dims& d, const Tensor& out, const Tensor& lse) {
  const int64_t B = d.B, C = d.C;
  const int n = cp_size_, r = cp_rank_;
  const int next = (r + 1) % n, prev = (r + n - 1) % n;
  Tensor q_cm = carve(q_cm_, {2, B, C, Hq_, D_});
  Tensor acc_out = carve(acc_out_, {2, B, C, Hq_, D_});
  Tensor acc_lse = carve(acc_lse_, {2, B, Hq_, C});
  Tensor part_out = carve(part_out_, {B, C, Hq_, D_}), part_lse = carve(part_lse_, {B, Hq_, C});
  Tensor part_wide = dtype_ == DType::f32 ? part_out : carve(part_out_f32_, {B, C, Hq_, D_});
  bool seen[2] = {false, false};
  int cur = 0;
  for (int i = 0; i < n; ++i) {
    const int src = (r - i + n) % n;
    Tensor kv = carve(kv_[cur], {2, 2, B, C, Hkv_, D_});
    Request send, recv;
    if (i + 1 < n) {
      Tensor kv_next = carve(kv_[1 - cur], {2, 2, B, C, Hkv_, D_});
      recv = cp_.irecv(kv_next, prev, kTagKv);
      send = cp_.isend(kv, next, kTagKv);
      stats_.bytes_sent += int64_t(kv.nbytes());
    }
    for (int a = 0; a < 2; ++a)
      for (int b = 0; b < 2; ++b) {
        const int64_t gq = global_chunk(r, a), gk = global_chunk(src, b);
        if (!chunk_pair_visible(gq, gk, C)) continue;
        ops::AttentionParams p;
        p.scale = scale_;
        p.causal = true;
        p.window = window_;
        p.q_offset = gq * C;
        p.k_offset = gk * C;
        Tensor acc_o = acc_out.select(0, a), acc_l = acc_lse.select(0, a);
        const Tensor kb = kv.select(0, 0).select(0, b), vb = kv.select(0, 1).select(0, b);
        if (!seen[a] && dtype_ == DType::f32) {
          ops::attention_forward(q_cm.select(0, a), kb, vb, p, acc_o, acc_l);
        } else {
          ops::attention_forward(q_cm.select(0, a), kb, vb, p, part_out, part_lse);
          if (dtype_ != DType::f32) part_wide.copy_from(part_out);
          if (!seen[a]) {
            acc_o.copy_from(part_wide);
            acc_l.copy_from(part_lse);
          } else {
            ops::attention_merge(acc_o, acc_l, part_wide, part_lse);
          }
        }
        seen[a] = true;
        ++stats_.attention_calls;
        // Lets the transfers progress between kernel calls.
        if (recv.valid()) recv.test();
        if (send.valid()) send.test();
      }
    wait(send);
    wait(recv);
    cur = 1 - cur;
  }
  for (int a = 0; a < 2; ++a)
    if (!seen[a]) {  // no key visible to any query of the chunk (cannot happen when causal)
      acc_out.select(0, a).zero_();
      acc_lse.select(0, a).fill_(-std::numeric_limits<double>::infinity());
    }
  for (int a = 0; a < 2; ++a) {
    out.narrow(1, a * C, C).copy_from(acc_out.select(0, a));
    lse.narrow(2, a * C, C).copy_from(acc_lse.select(0, a));
  }
}

void CpAttention::backward_ring(const Dims& d, Tensor& dq, Tensor& dk, Tensor& dv) {
  const int64_t B = d.B, C = d.C;
  const int n = cp_size_, r = cp_rank_;
  const int next = (r + 1) % n, prev = (r + n - 1) % n;
  const Shape kv_shape = {2, 2, B, C, Hkv_, D_};
  Tensor q_cm = carve(q_cm_, {2, B, C, Hq_, D_});
  Tensor out_cm = carve(out_cm_, {2, B, C, Hq_, D_});
  Tensor dout_cm = carve(dout_cm_, {2, B, C, Hq_, D_});
  Tensor lse_cm = carve(lse_cm_, {2, B, Hq_, C});
  Tensor dq_acc = carve(dq_acc_, {2, B, C, Hq_, D_});
  Tensor dq_part = carve(dq_part_, {B, C, Hq_, D_});
  Tensor dk_part = carve(dk_part_, {B, C, Hkv_, D_}), dv_part = carve(dv_part_, {B, C, Hkv_, D_});
  dq_acc.zero_();
  // dkv_[step]: this step's contribution to the visiting block; dkv_[in]: the block's accumulator
  // arriving from rank r-1; dkv_[out]: the accumulator on its way to rank r+1.
  int step = 0, in = 1, out = 2;
  Request dkv_send, dkv_recv;
  int cur = 0;
  for (int i = 0; i < n; ++i) {
    const int src = (r - i + n) % n;
    Tensor kv = carve(kv_[cur], kv_shape);
    Request send, recv;
    if (i + 1 < n) {
      Tensor kv_next = carve(kv_[1 - cur], kv_shape);
      recv = cp_.irecv(kv_next, prev, kTagKv);
      send = cp_.isend(kv, next, kTagKv);
      stats_.bytes_sent += int64_t(kv.nbytes());
    }
    Tensor dkv_in = carve(dkv_[in], kv_shape);
    if (i >= 1) dkv_recv = cp_.irecv(dkv_in, prev, kTagDkv);
    Tensor dkv_step = carve(dkv_[step], kv_shape);
    dkv_step.zero_();
    for (int a = 0; a < 2; ++a)
      for (int b = 0; b < 2; ++b) {
        const int64_t gq = global_chunk(r, a), gk = global_chunk(src, b);
        if (!chunk_pair_visible(gq, gk, C)) continue;
        ops::AttentionParams p;
        p.scale = scale_;
        p.causal = true;
        p.window = window_;
        p.q_offset = gq * C;
        p.k_offset = gk * C;
        ops::attention_backward(q_cm.select(0, a), kv.select(0, 0).select(0, b),
                                kv.select(0, 1).select(0, b), out_cm.select(0, a),
                                lse_cm.select(0, a), dout_cm.select(0, a), p, dq_part, dk_part,
                                dv_part);
        ++stats_.attention_calls;
        Tensor dq_a = dq_acc.select(0, a);
        Tensor dk_b = dkv_step.select(0, 0).select(0, b), dv_b = dkv_step.select(0, 1).select(0, b);
        ops::axpy_(dq_a, dq_part);
        ops::axpy_(dk_b, dk_part);
        ops::axpy_(dv_b, dv_part);
        if (recv.valid()) recv.test();
        if (send.valid()) send.test();
        if (dkv_recv.valid()) dkv_recv.test();
        if (dkv_send.valid()) dkv_send.test();
      }
    if (n > 1) {
      if (i >= 1) {
        wait(dkv_recv);
        ops::axpy_(dkv_step, dkv_in);
      }
      wait(dkv_send);  // the outgoing buffer is free again
      std::swap(step, out);
      Tensor dkv_out = carve(dkv_[out], kv_shape);
      dkv_send = cp_.isend(dkv_out, next, kTagDkv);
      stats_.bytes_sent += int64_t(dkv_out.nbytes());
    }
    wait(send);
    wait(recv);
    cur = 1 - cur;
  }
  // After CP steps the accumulator of this rank's block sits at rank r-1: one more hop home.
  int mine = step;
  if (n > 1) {
    Tensor dkv_in = carve(dkv_[in], kv_shape);
    dkv_recv = cp_.irecv(dkv_in, prev, kTagDkv);
    wait(dkv_recv);
    wait(dkv_send);
    mine = in;
  }
  Tensor dkv = carve(dkv_[mine], kv_shape);
  unpack_chunks(dq_acc, dq, 1, C);
  unpack_chunks(dkv.select(0, 0), dk, 1, C);
  unpack_chunks(dkv.select(0, 1), dv, 1, C);
}

}  // namespace origami
