// CPU attention: flash-attention style, block by block with an online softmax.
//
// Forward: the work is split over (batch, query head, block of 64 query rows). Each job keeps its
// query block, a 64 x 64 block of scores and a running output accumulator in per-thread scratch,
// and walks the key blocks its rows can see (causal and sliding-window masks skip whole blocks;
// only blocks that straddle a mask edge are masked element by element). K is packed once per call
// into transposed f32 blocks [Dp][64] and V into padded f32 rows [64][Dp] (Dp = D rounded up to
// 16), so the inner loops are two small matrix products with contiguous rows and no dtype
// conversion.
//
// Backward: the work is split over (batch, key/value head, block of 64 key rows). A job owns the
// dK and dV rows of its block (summed over the query heads of its group, so no other job writes
// them), recomputes P = exp(S - lse) for every query block that sees its keys, and adds its
// contribution to dQ into an f32 accumulator under a per-tile lock; a last pass scales dQ and
// converts it to the output dtype.
//
// The block products are written with GCC vector extensions in register tiles of 4 rows x (2 or 4)
// vectors, and this file compiles its kernel section once per instruction set (AVX-512, AVX2 and a
// baseline build) by including itself with a different `#pragma GCC target`; the variant is picked
// at run time from what the CPU supports (no -march flag is needed at build time).
#ifndef ORIGAMI_ATTENTION_ISA

#include "ops/cpu/attention.h"

#include <omp.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

namespace origami::ops::cpu::attention_detail {

constexpr int64_t kBlockQ = 64;  // query rows per block
constexpr int64_t kBlockK = 64;  // key rows per block
constexpr int64_t kPadD = 16;    // head dim padded to a multiple of this (the widest vector)
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// Shapes and masks of one call. Positions compare q_pos = q_offset + i with k_pos = k_offset + j.
struct Problem {
  int64_t B = 0, Sq = 0, Sk = 0, Hq = 0, Hkv = 0, D = 0;
  int64_t Dp = 0;     // D rounded up to kPadD
  int64_t group = 1;  // Hq / Hkv
  int64_t nqb = 0, nkb = 0;
  float scale = 1.0f;
  bool causal = true;
  int64_t window = -1;
  int64_t q_offset = 0, k_offset = 0;
  bool bf16 = false;

  // Keys visible to query row i: [lo, hi) (empty when lo >= hi). Both ends grow with i.
  void key_range(int64_t i, int64_t& lo, int64_t& hi) const {
    const int64_t qp = q_offset + i - k_offset;  // the query position in key-row coordinates
    lo = 0;
    hi = Sk;
    if (causal || window > 0) hi = std::min(hi, qp + 1);
    if (window > 0) lo = std::max(lo, qp - window + 1);
  }
  // Query rows that see at least one key of [j0, j1): [ilo, ihi).
  void query_range(int64_t j0, int64_t j1, int64_t& ilo, int64_t& ihi) const {
    ilo = 0;
    ihi = Sq;
    if (causal || window > 0) ilo = std::max(ilo, j0 + k_offset - q_offset);
    if (window > 0) ihi = std::min(ihi, j1 + window - 1 + k_offset - q_offset);
  }
};

// Data of a forward call. kt: K packed as [B][Hkv][nkb][Dp][kBlockK]; vp: V as [B][Hkv][nkb *
// kBlockK][Dp] (both f32, zero padded).
struct ForwardData {
  const void* q = nullptr;
  const float* kt = nullptr;
  const float* vp = nullptr;
  void* out = nullptr;
  float* lse = nullptr;
};

// Data of a backward call. qp and dop: q and dout packed as f32 [B][Hq][Sq][Dp] (zero padded);
// delta [B][Hq][Sq] = rowsum(dout * out); dq_acc [B][Hq][Sq][Dp] f32, zeroed, receives
// sum_j dS K (unscaled) under the lock of its query tile (lock_for).
struct BackwardData {
  const float* qp = nullptr;
  const float* dop = nullptr;
  const void* k = nullptr;
  const void* v = nullptr;
  const float* lse = nullptr;
  const float* delta = nullptr;
  float* dq_acc = nullptr;
  void* dk = nullptr;
  void* dv = nullptr;
  std::mutex* locks = nullptr;
  int64_t nlocks = 1;  // a power of two

  // Spreads neighbouring tiles (the same query block of the next head, say) over the locks.
  std::mutex& lock_for(int64_t tile) const {
    return locks[(uint64_t(tile) * 0x9E3779B97F4A7C15ull >> 40) & uint64_t(nlocks - 1)];
  }
};

// Per-thread scratch sizes in floats (every piece a multiple of 16 floats, so 64-byte aligned).
inline int64_t forward_scratch(const Problem& P) {
  return 2 * kBlockQ * P.Dp + kBlockQ * kBlockK + 2 * kBlockQ;
}
inline int64_t backward_scratch(const Problem& P) {
  return 5 * kBlockK * P.Dp + 2 * kBlockQ * kBlockK + 2 * kBlockQ;
}

}  // namespace origami::ops::cpu::attention_detail

// ---- the kernel section, once per instruction set -----------------------------------------------
#define ORIGAMI_ISA_KERNEL_FILE "ops/cpu/attention.cpp"
#include "ops/cpu/isa_variants.h"

// ---- dispatch, threading and the entry points ---------------------------------------------------
namespace origami::ops::cpu {
namespace {

using namespace attention_detail;

struct Kernels {
  const char* name;
  decltype(&generic::pack_kv_block) pack_kv_block;
  decltype(&generic::forward_job) forward_job;
  decltype(&generic::backward_job) backward_job;
};

std::vector<Kernels> available_kernels() {
  std::vector<Kernels> ks;  // best first
#if ORIGAMI_ATTENTION_HAS_X86_VARIANTS
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl") &&
      __builtin_cpu_supports("fma"))
    ks.push_back({"avx512", &avx512::pack_kv_block, &avx512::forward_job, &avx512::backward_job});
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
    ks.push_back({"avx2", &avx2::pack_kv_block, &avx2::forward_job, &avx2::backward_job});
#endif
  ks.push_back({"generic", &generic::pack_kv_block, &generic::forward_job, &generic::backward_job});
  return ks;
}

const std::vector<Kernels>& kernel_table() {
  static const std::vector<Kernels> table = available_kernels();
  return table;
}

std::atomic<const Kernels*> forced{nullptr};

const Kernels& kernels() {
  const Kernels* f = forced.load(std::memory_order_relaxed);
  return f ? *f : kernel_table().front();
}

struct FreeDeleter {
  void operator()(float* p) const { std::free(p); }
};
using Buffer = std::unique_ptr<float[], FreeDeleter>;

Buffer alloc_floats(int64_t n) {
  const size_t bytes = (size_t(std::max<int64_t>(n, 1)) * sizeof(float) + 63) / 64 * 64;
  void* p = std::aligned_alloc(64, bytes);
  ORIGAMI_CHECK(p, "attention: cannot allocate ", bytes, " bytes of workspace");
  return Buffer(static_cast<float*>(p));
}

// Scratch of the calling thread (an OpenMP worker keeps its own across calls): grows, never
// shrinks.
float* thread_scratch(int64_t n) {
  thread_local Buffer buf;
  thread_local int64_t capacity = 0;
  if (capacity < n) {
    buf = alloc_floats(n);
    capacity = n;
  }
  return buf.get();
}

// Per-call work buffers of the calling thread, one per slot: they grow and never shrink, so calls
// in a training or decode step allocate nothing once the largest shapes have been seen.
enum WorkSlot { kSlotKt, kSlotVp, kSlotDelta, kSlotQp, kSlotDop, kSlotDqAcc, kNumSlots };
float* call_workspace(WorkSlot slot, int64_t n) {
  thread_local Buffer bufs[kNumSlots];
  thread_local int64_t capacity[kNumSlots] = {};
  if (capacity[slot] < n) {
    bufs[slot] = alloc_floats(n);
    capacity[slot] = n;
  }
  return bufs[slot].get();
}

Problem make_problem(const Tensor& q, const Tensor& k, const AttentionParams& p) {
  Problem P;
  P.B = q.size(0);
  P.Sq = q.size(1);
  P.Hq = q.size(2);
  P.D = q.size(3);
  P.Sk = k.size(1);
  P.Hkv = k.size(2);
  P.Dp = (P.D + kPadD - 1) / kPadD * kPadD;
  P.group = P.Hq / P.Hkv;
  P.nqb = (P.Sq + kBlockQ - 1) / kBlockQ;
  P.nkb = (P.Sk + kBlockK - 1) / kBlockK;
  P.scale = p.scale;
  P.causal = p.causal;
  P.window = p.window;
  P.q_offset = p.q_offset;
  P.k_offset = p.k_offset;
  P.bf16 = q.dtype() == DType::bf16;
  return P;
}

inline float load_elem(const void* base, bool bf16, int64_t i) {
  return bf16 ? bf16_to_f32(static_cast<const uint16_t*>(base)[i])
              : static_cast<const float*>(base)[i];
}
inline void store_elem(void* base, bool bf16, int64_t i, float x) {
  if (bf16)
    static_cast<uint16_t*>(base)[i] = f32_to_bf16(x);
  else
    static_cast<float*>(base)[i] = x;
}

}  // namespace

const char* attention_isa() {
  return kernels().name;
}

std::vector<std::string> attention_isas() {
  std::vector<std::string> names;
  for (const Kernels& k : kernel_table()) names.push_back(k.name);
  return names;
}

void attention_force_isa(const char* name) {
  if (!name) {
    forced.store(nullptr);
    return;
  }
  for (const Kernels& k : kernel_table())
    if (std::string(k.name) == name) {
      forced.store(&k);
      return;
    }
  ORIGAMI_FAIL("attention: instruction set '", name, "' is not available on this CPU");
}

void attention_forward(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionParams& p,
                       Tensor& out, Tensor& lse) {
  const Problem P = make_problem(q, k, p);
  const Kernels& K = kernels();
  const int64_t block_floats = P.Dp * kBlockK;
  float* kt = call_workspace(kSlotKt, P.B * P.Hkv * P.nkb * block_floats);
  float* vp = call_workspace(kSlotVp, P.B * P.Hkv * P.nkb * block_floats);
  ForwardData F;
  F.q = q.data();
  F.kt = kt;
  F.vp = vp;
  F.out = out.data();
  F.lse = lse.data_as<float>();
  const void* kd = k.data();
  const void* vd = v.data();
  const int64_t npack = P.B * P.Hkv * P.nkb;
  const int64_t nbh = P.B * P.Hq;
  const int64_t njobs = nbh * P.nqb;
#pragma omp parallel
  {
#pragma omp for schedule(static)
    for (int64_t idx = 0; idx < npack; ++idx) {
      const int64_t kb = idx % P.nkb, bh = idx / P.nkb;
      K.pack_kv_block(P, kd, vd, bh / P.Hkv, bh % P.Hkv, kb, kt + idx * block_floats,
                      vp + idx * block_floats);
    }
    float* ws = thread_scratch(forward_scratch(P));
    // Heaviest query blocks (the last ones under a causal mask) first.
#pragma omp for schedule(dynamic, 1)
    for (int64_t idx = 0; idx < njobs; ++idx) {
      const int64_t qb = P.nqb - 1 - idx / nbh, bh = idx % nbh;
      K.forward_job(P, F, bh / P.Hq, bh % P.Hq, qb, ws);
    }
  }
}

void attention_backward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                        const Tensor& lse, const Tensor& dout, const AttentionParams& p, Tensor& dq,
                        Tensor& dk, Tensor& dv) {
  const Problem P = make_problem(q, k, p);
  const Kernels& K = kernels();
  const int64_t nrows = P.B * P.Hq * P.Sq;  // (b, h, i) rows of delta, qp, dop and dq_acc
  float* delta = call_workspace(kSlotDelta, nrows);
  float* qp = call_workspace(kSlotQp, nrows * P.Dp);
  float* dop = call_workspace(kSlotDop, nrows * P.Dp);
  float* dq_acc = call_workspace(kSlotDqAcc, nrows * P.Dp);
  constexpr int64_t kLocks = 256;
  static std::mutex locks[kLocks];
  BackwardData G;
  G.qp = qp;
  G.dop = dop;
  G.k = k.data();
  G.v = v.data();
  G.lse = lse.data_as<float>();
  G.delta = delta;
  G.dq_acc = dq_acc;
  G.dk = dk.data();
  G.dv = dv.data();
  G.locks = locks;
  G.nlocks = kLocks;
  const void* qd = q.data();
  const void* od = out.data();
  const void* dod = dout.data();
  void* dqd = dq.data();
  const bool bf16 = P.bf16;
  const int64_t D = P.D, Dp = P.Dp;
  const int64_t nbhk = P.B * P.Hkv;
  const int64_t njobs = nbhk * P.nkb;
#pragma omp parallel
  {
    // Head-major f32 copies of q and dout, delta[b,h,i] = sum_d dout * out, dq_acc = 0.
#pragma omp for schedule(static)
    for (int64_t row = 0; row < nrows; ++row) {
      const int64_t i = row % P.Sq, bh = row / P.Sq;
      const int64_t e = ((bh / P.Hq * P.Sq + i) * P.Hq + bh % P.Hq) * D;
      float* qr = qp + row * Dp;
      float* dr = dop + row * Dp;
      float s = 0.0f;
      for (int64_t d = 0; d < D; ++d) {
        qr[d] = load_elem(qd, bf16, e + d);
        dr[d] = load_elem(dod, bf16, e + d);
        s += dr[d] * load_elem(od, bf16, e + d);
      }
      for (int64_t d = D; d < Dp; ++d) qr[d] = dr[d] = 0.0f;
      delta[row] = s;
      std::memset(dq_acc + row * Dp, 0, size_t(Dp) * sizeof(float));
    }
    float* ws = thread_scratch(backward_scratch(P));
    // Heaviest key blocks (the first ones under a causal mask) first.
#pragma omp for schedule(dynamic, 1)
    for (int64_t idx = 0; idx < njobs; ++idx) {
      const int64_t kb = idx / nbhk, bhk = idx % nbhk;
      K.backward_job(P, G, bhk / P.Hkv, bhk % P.Hkv, kb, ws);
    }
    // dq = scale * dq_acc, token-major.
#pragma omp for schedule(static)
    for (int64_t row = 0; row < nrows; ++row) {
      const int64_t i = row % P.Sq, bh = row / P.Sq;
      const int64_t e = ((bh / P.Hq * P.Sq + i) * P.Hq + bh % P.Hq) * D;
      const float* src = dq_acc + row * Dp;
      for (int64_t d = 0; d < D; ++d) store_elem(dqd, bf16, e + d, P.scale * src[d]);
    }
  }
}

void attention_merge(Tensor& out_a, Tensor& lse_a, const Tensor& out_b, const Tensor& lse_b) {
  const int64_t B = out_a.size(0), S = out_a.size(1), H = out_a.size(2), D = out_a.size(3);
  const bool bf16 = out_a.dtype() == DType::bf16;
  void* oa = out_a.data();
  const void* ob = out_b.data();
  float* la = lse_a.data_as<float>();
  const float* lb = lse_b.data_as<float>();
  const int64_t nrows = B * S * H;
#pragma omp parallel for schedule(static)
  for (int64_t row = 0; row < nrows; ++row) {  // row = (b, s, h) of out
    const int64_t h = row % H, s = row / H % S, b = row / (H * S);
    const int64_t li = (b * H + h) * S + s;
    const float a = la[li], c = lb[li];
    const float m = std::max(a, c);
    const int64_t e = row * D;
    if (m == kNegInf) {  // neither part saw a key
      for (int64_t d = 0; d < D; ++d) store_elem(oa, bf16, e + d, 0.0f);
      continue;
    }
    const float wa = std::exp(a - m), wb = std::exp(c - m), sum = wa + wb;
    la[li] = m + std::log(sum);
    const float fa = wa / sum, fb = wb / sum;
    for (int64_t d = 0; d < D; ++d)
      store_elem(oa, bf16, e + d,
                 fa * load_elem(oa, bf16, e + d) + fb * load_elem(ob, bf16, e + d));
  }
}

}  // namespace origami::ops::cpu

#else  // ORIGAMI_ATTENTION_ISA: the kernels, compiled once per instruction set

namespace origami::ops::cpu::attention_detail::ORIGAMI_ATTENTION_ISA {

#include "ops/cpu/attention_simd.h"  // Vec, exp2v, gemm, load_row, ...

// Packs key block kb of (b, hk): kt [Dp][kBlockK] (K transposed) and vp [kBlockK][Dp], f32, zero
// padded past Sk and D.
void pack_kv_block(const Problem& P, const void* k, const void* v, int64_t b, int64_t hk,
                   int64_t kb, float* kt, float* vp) {
  const int64_t j0 = kb * kBlockK, nk = std::min(kBlockK, P.Sk - j0);
  for (int64_t j = 0; j < kBlockK; ++j) {
    float* vr = vp + j * P.Dp;
    if (j >= nk) {
      std::memset(vr, 0, size_t(P.Dp) * sizeof(float));
      for (int64_t d = 0; d < P.Dp; ++d) kt[d * kBlockK + j] = 0.0f;
      continue;
    }
    const int64_t e = ((b * P.Sk + j0 + j) * P.Hkv + hk) * P.D;
    load_row(v, P.bf16, e, P.D, P.Dp, 1.0f, vr);
    for (int64_t d = 0; d < P.D; ++d)
      kt[d * kBlockK + j] = P.bf16 ? bf16_to_f32(static_cast<const uint16_t*>(k)[e + d])
                                   : static_cast<const float*>(k)[e + d];
    for (int64_t d = P.D; d < P.Dp; ++d) kt[d * kBlockK + j] = 0.0f;
  }
}

// One forward job: query block qb of head h in batch b.
void forward_job(const Problem& P, const ForwardData& F, int64_t b, int64_t h, int64_t qb,
                 float* ws) {
  const int64_t D = P.D, Dp = P.Dp, BK = kBlockK;
  const int64_t i0 = qb * kBlockQ, nq = std::min(kBlockQ, P.Sq - i0);
  const int64_t hk = h / P.group;
  float* Qs = ws;                // [kBlockQ][Dp] q * scale * log2(e)
  float* S = Qs + kBlockQ * Dp;  // [kBlockQ][BK] scores (log2 units), then probabilities
  float* O = S + kBlockQ * BK;   // [kBlockQ][Dp] unnormalised output
  float* m = O + kBlockQ * Dp;   // [kBlockQ] running max (log2 units)
  float* l = m + kBlockQ;        // [kBlockQ] running sum
  const float c = P.scale * kLog2e;
  for (int64_t r = 0; r < nq; ++r)
    load_row(F.q, P.bf16, ((b * P.Sq + i0 + r) * P.Hq + h) * D, D, Dp, c, Qs + r * Dp);
  for (int64_t r = 0; r < nq; ++r) {
    m[r] = kNegInf;
    l[r] = 0.0f;
  }
  std::memset(O, 0, size_t(nq * Dp) * sizeof(float));

  int64_t lo_first, hi_first, lo_last, hi_last;
  P.key_range(i0, lo_first, hi_first);
  P.key_range(i0 + nq - 1, lo_last, hi_last);
  const int64_t jbeg = lo_first, jend = hi_last;  // keys any row of the block sees
  const float* kt = F.kt + (b * P.Hkv + hk) * P.nkb * Dp * BK;
  const float* vp = F.vp + (b * P.Hkv + hk) * P.nkb * BK * Dp;
  for (int64_t kb = jbeg / BK; jbeg < jend && kb * BK < jend; ++kb) {
    const int64_t j0 = kb * BK, nk = std::min(BK, P.Sk - j0);
    gemm(nq, BK, Dp, Qs, Dp, 1, kt + kb * Dp * BK, BK, S, BK, false);
    const bool full = nk == BK && lo_last <= j0 && hi_first >= j0 + BK;
    for (int64_t r = 0; r < nq; ++r) {
      float* s = S + r * BK;
      if (!full) {
        int64_t lo, hi;
        P.key_range(i0 + r, lo, hi);
        lo = std::clamp<int64_t>(lo - j0, 0, BK);
        hi = std::clamp<int64_t>(hi - j0, lo, BK);
        for (int64_t j = 0; j < lo; ++j) s[j] = kNegInf;
        for (int64_t j = hi; j < BK; ++j) s[j] = kNegInf;
      }
      const float mnew = std::max(m[r], row_max(s, BK));
      if (mnew == kNegInf) {  // no key visible yet
        std::memset(s, 0, size_t(BK) * sizeof(float));
        continue;
      }
      const float alpha = std::exp2(m[r] - mnew);  // 0 when m[r] = -inf
      const float sum = exp2_row(s, BK, 1.0f, mnew);
      l[r] = l[r] * alpha + sum;
      m[r] = mnew;
      if (alpha != 1.0f) {
        const Vec va = splat(alpha);
        float* o = O + r * Dp;
        for (int64_t d = 0; d < Dp; d += W) store(o + d, load(o + d) * va);
      }
    }
    gemm(nq, Dp, nk, S, BK, 1, vp + j0 * Dp, Dp, O, Dp, true);
  }

  for (int64_t r = 0; r < nq; ++r) {
    const bool any = l[r] > 0.0f;
    store_row(F.out, P.bf16, ((b * P.Sq + i0 + r) * P.Hq + h) * D, D, any ? 1.0f / l[r] : 0.0f,
              O + r * Dp);
    F.lse[(b * P.Hq + h) * P.Sq + i0 + r] = any ? (m[r] + std::log2(l[r])) * kLn2 : kNegInf;
  }
}

// One backward job: key block kb of kv head hk in batch b, over every query head of its group.
void backward_job(const Problem& P, const BackwardData& G, int64_t b, int64_t hk, int64_t kb,
                  float* ws) {
  const int64_t D = P.D, Dp = P.Dp, BK = kBlockK, BQ = kBlockQ;
  const int64_t j0 = kb * BK, nk = std::min(BK, P.Sk - j0);
  float* Ks = ws;              // [BK][Dp] K rows
  float* Kt = Ks + BK * Dp;    // [Dp][BK] K transposed
  float* Vt = Kt + Dp * BK;    // [Dp][BK] V transposed
  float* dK = Vt + Dp * BK;    // [BK][Dp] sum_i dS^T Q (unscaled)
  float* dV = dK + BK * Dp;    // [BK][Dp] sum_i P^T dO
  float* Pm = dV + BK * Dp;    // [BQ][BK] probabilities
  float* dS = Pm + BQ * BK;    // [BQ][BK] dP, then dS = P (dP - delta)
  float* lse2 = dS + BQ * BK;  // [BQ] lse in log2 units
  float* dl = lse2 + BQ;       // [BQ] delta rows

  float* vr = dS;  // one V row at a time, on its way to Vt
  for (int64_t j = 0; j < BK; ++j) {
    float* kr = Ks + j * Dp;
    if (j < nk) {
      const int64_t e = ((b * P.Sk + j0 + j) * P.Hkv + hk) * D;
      load_row(G.k, P.bf16, e, D, Dp, 1.0f, kr);
      load_row(G.v, P.bf16, e, D, Dp, 1.0f, vr);
    } else {
      std::memset(kr, 0, size_t(Dp) * sizeof(float));
      std::memset(vr, 0, size_t(Dp) * sizeof(float));
    }
    for (int64_t d = 0; d < Dp; ++d) {
      Kt[d * BK + j] = kr[d];
      Vt[d * BK + j] = vr[d];
    }
  }
  std::memset(dK, 0, size_t(BK * Dp) * sizeof(float));
  std::memset(dV, 0, size_t(BK * Dp) * sizeof(float));

  const float c = P.scale * kLog2e;
  int64_t ilo, ihi;
  P.query_range(j0, j0 + nk, ilo, ihi);
  for (int64_t g = 0; g < P.group && ilo < ihi; ++g) {
    const int64_t h = hk * P.group + g;
    for (int64_t qb = ilo / BQ; qb * BQ < ihi; ++qb) {
      const int64_t i0 = qb * BQ, nq = std::min(BQ, P.Sq - i0);
      const int64_t row0 = (b * P.Hq + h) * P.Sq + i0;  // (b, h, i0) row of the packed arrays
      const float* Qs = G.qp + row0 * Dp;               // [nq][Dp]
      const float* dOs = G.dop + row0 * Dp;             // [nq][Dp]
      for (int64_t r = 0; r < nq; ++r) {
        lse2[r] = G.lse[row0 + r] * kLog2e;
        dl[r] = G.delta[row0 + r];
      }
      // P = 2^(S * scale * log2(e) - lse2), zero outside the mask.
      gemm(nq, BK, Dp, Qs, Dp, 1, Kt, BK, Pm, BK, false);
      int64_t lo_first, hi_first, lo_last, hi_last;
      P.key_range(i0, lo_first, hi_first);
      P.key_range(i0 + nq - 1, lo_last, hi_last);
      const bool full = nk == BK && lo_last <= j0 && hi_first >= j0 + BK;
      for (int64_t r = 0; r < nq; ++r) {
        float* p = Pm + r * BK;
        if (lse2[r] == kNegInf) {  // the row saw no key in forward
          std::memset(p, 0, size_t(BK) * sizeof(float));
          continue;
        }
        exp2_row(p, BK, c, lse2[r]);
        if (!full) {
          int64_t lo, hi;
          P.key_range(i0 + r, lo, hi);
          lo = std::clamp<int64_t>(lo - j0, 0, BK);
          hi = std::clamp<int64_t>(hi - j0, lo, BK);
          for (int64_t j = 0; j < lo; ++j) p[j] = 0.0f;
          for (int64_t j = hi; j < BK; ++j) p[j] = 0.0f;
        }
      }
      // dV += P^T dO
      gemm(nk, Dp, nq, Pm, 1, BK, dOs, Dp, dV, Dp, true);
      // dP = dO V^T; dS = P (dP - delta)
      gemm(nq, BK, Dp, dOs, Dp, 1, Vt, BK, dS, BK, false);
      for (int64_t r = 0; r < nq; ++r) {
        const Vec dr = splat(dl[r]);
        float* s = dS + r * BK;
        const float* p = Pm + r * BK;
        for (int64_t j = 0; j < BK; j += W) store(s + j, load(p + j) * (load(s + j) - dr));
      }
      // dK += dS^T Q
      gemm(nk, Dp, nq, dS, 1, BK, Qs, Dp, dK, Dp, true);
      // dQ += dS K (scaled at the end), under the lock of this query tile
      std::lock_guard<std::mutex> lock(G.lock_for((b * P.Hq + h) * P.nqb + qb));
      gemm(nq, Dp, nk, dS, BK, 1, Ks, Dp, G.dq_acc + row0 * Dp, Dp, true);
    }
  }

  for (int64_t j = 0; j < nk; ++j) {
    const int64_t e = ((b * P.Sk + j0 + j) * P.Hkv + hk) * D;
    store_row(G.dk, P.bf16, e, D, P.scale, dK + j * Dp);
    store_row(G.dv, P.bf16, e, D, 1.0f, dV + j * Dp);
  }
}

}  // namespace origami::ops::cpu::attention_detail::ORIGAMI_ATTENTION_ISA

#endif  // ORIGAMI_ATTENTION_ISA
