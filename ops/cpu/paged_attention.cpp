// CPU paged attention: block-wise online softmax over keys gathered through the block table.
//
// Work: a job is one sequence, a range of its kv heads and up to kMaxRows (query row, query head)
// pairs, all query heads of each group together, so each key and value row of the cache is read
// once per group and query tile. Decode jobs (few rows per kv head) take all kv heads at once (or,
// with fewer sequences than threads, an equal share of them per thread): a cache row [Hkv,D] is
// then read whole, and the next tile's rows are prefetched, so the cache is streamed rather than
// visited head by head at a stride. Prefill jobs take one kv head and a tile
// of rows. When a call has few jobs (decode of a small batch), a job's key range is split into
// pieces of at least kMinSplitKeys keys whose partial results (normalised output and log-sum-exp)
// are merged at the end (flash-decoding).
//
// A job walks its keys in tiles of kTileK keys (64, spanning cache blocks of any size) and keeps
// scores transposed, St [key][row] with the rows padded to a whole vector, so the running max and
// sum of every row are vector operations down the key axis. Two ways to the scores and values:
//  - few rows (decode: at most kDotRows): each K row is read from the cache, converted in
//    registers (bf16 -> f32), and dotted with every query row; each V row is read the same way
//    and added into the output rows. Nothing is staged: decode is a stream over the cache.
//  - many rows (prefill chunks): the tile's K and V rows are converted once into f32 tiles in
//    scratch, and the scores and the output update are two small matrix products (the register
//    tiles of ops/cpu/attention_simd.h).
// Masks: tiles wholly inside every row's causal/window range skip masking; only edge tiles are
// masked element by element.
//
// The kernels are compiled once per instruction set (ops/cpu/isa_variants.h) and follow the choice
// of the attention kernels (ops/cpu/attention.h: attention_isa, attention_force_isa).
#ifndef ORIGAMI_ATTENTION_ISA

#include "ops/cpu/paged_attention.h"

#include <omp.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <iterator>
#include <limits>
#include <utility>
#include <vector>

#include "ops/cpu/attention.h"
#include "ops/cpu/pointwise.h"

namespace origami::ops::cpu::paged_detail {

constexpr int64_t kTileK = 64;          // keys per tile
constexpr int64_t kMaxRows = 64;        // (query row, head) pairs per job
constexpr int64_t kDotRows = 8;         // jobs with at most this many rows read K and V in place
constexpr int64_t kPadD = 16;           // head dim padded to a multiple of this (widest vector)
constexpr int64_t kMinSplitKeys = 128;  // a split of a job's keys holds at least this many
constexpr int64_t kMaxLanes = 16;       // the widest vector, in floats
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

struct Problem {
  int64_t Hq = 0, Hkv = 0, D = 0, Dp = 0, group = 1, block_size = 0, max_blocks = 0;
  float qmul = 1.0f;  // scale * log2(e): scores in log2 units
  int64_t window = -1;
  bool bf16 = false;
  const void* q = nullptr;
  const void* k_cache = nullptr;
  const void* v_cache = nullptr;
  void* out = nullptr;
  const int64_t* query_start = nullptr;
  const int64_t* context_len = nullptr;
  const int32_t* block_table = nullptr;
  // Results of split jobs, one slot each: [kMaxRows][Dp] normalised output rows (the job's rows in
  // its order), then [kMaxRows] log-sum-exp (log2 units; -inf for a row without keys in the split).
  float* partial = nullptr;

  int64_t slot_floats() const { return kMaxRows * (Dp + 1); }
  // Keys visible to query row r of sequence i: [lo, hi).
  void key_range(int64_t i, int64_t r, int64_t& lo, int64_t& hi) const {
    const int64_t q_len = query_start[i + 1] - query_start[i];
    const int64_t qpos = context_len[i] - q_len + r;
    lo = window > 0 ? std::max<int64_t>(0, qpos - window + 1) : 0;
    hi = qpos + 1;
  }
};

// Kv heads [hk0, hk0 + nhk) of sequence seq and, for each, the rows [m0, m0 + nrows) of its pairs
// m = r * group + g (query row r, query head hk * group + g), over keys [k0, k1). The job's rows
// are ordered (kv head, m). slot -1: the job sees all keys of its rows and writes out; otherwise
// it writes partial slot `slot`.
struct Job {
  int64_t seq, hk0, nhk, m0, nrows, k0, k1, slot;
};
// The splits of one job: partial slots [slot0, slot0 + count), merged into out.
struct Merge {
  Job rows;  // seq, heads and rows (keys and slot unused)
  int64_t slot0, count;
};

// The position in out of row e * nrows + r of a job (e: its kv head, r: its pair).
inline int64_t out_offset(const Problem& P, const Job& J, int64_t e, int64_t r) {
  const int64_t m = J.m0 + r, h = (J.hk0 + e) * P.group + m % P.group;
  return ((P.query_start[J.seq] + m / P.group) * P.Hq + h) * P.D;
}

// Per-thread scratch in floats. Row states are kept per kv head, padded to whole vectors: at most
// kMaxRows * kMaxLanes of them (kMaxRows heads of one row each).
inline int64_t job_scratch(const Problem& P) {
  return 2 * kMaxRows * P.Dp         // Qs, O
         + P.Dp * kMaxRows           // Qt
         + kTileK * kMaxRows         // St
         + 3 * kMaxRows * kMaxLanes  // running max, sum, rescale factors
         + 2 * kTileK * P.Dp;        // K and V tiles (prefill)
}

}  // namespace origami::ops::cpu::paged_detail

// ---- the kernel section, once per instruction set -----------------------------------------------
#define ORIGAMI_ISA_KERNEL_FILE "ops/cpu/paged_attention.cpp"
#include "ops/cpu/isa_variants.h"

// ---- dispatch, threading and the entry points ---------------------------------------------------
namespace origami::ops::cpu {
namespace {

using namespace paged_detail;

struct Kernels {
  const char* name;
  decltype(&generic::run_job) run_job;
  decltype(&generic::merge_rows) merge_rows;
};

// The variant of the instruction set the attention kernels use (forced or detected).
const Kernels& kernels() {
  static const Kernels table[] = {
#if ORIGAMI_ATTENTION_HAS_X86_VARIANTS
    {"avx512", &avx512::run_job, &avx512::merge_rows},
    {"avx2", &avx2::run_job, &avx2::merge_rows},
#endif
    {"generic", &generic::run_job, &generic::merge_rows},
  };
  const char* isa = attention_isa();
  for (const Kernels& k : table)
    if (std::strcmp(isa, k.name) == 0) return k;
  return table[std::size(table) - 1];
}

// Grows, never shrinks: a decode step allocates nothing once the largest shapes have been seen.
float* thread_scratch(int64_t n) {
  thread_local std::vector<float> buf;
  if (int64_t(buf.size()) < n) buf.resize(size_t(n));
  return buf.data();
}

// The jobs of a call: decode-like sequences (at most kDotRows rows per kv head) as one job over
// all kv heads (fewer when that would exceed kMaxRows rows), the others as one job per kv head and
// tile of rows; then, when there are fewer than two jobs per thread, long key ranges split so that
// every thread gets work.
void plan_jobs(const Problem& P, int64_t N, int nthreads, bool invariant, std::vector<Job>& jobs,
               std::vector<Merge>& merges, int64_t& slots) {
  jobs.clear();
  merges.clear();
  slots = 0;
  const int64_t G = P.group;
  const int64_t tile_rows = G <= kMaxRows ? kMaxRows / G * G : kMaxRows;
  for (int64_t i = 0; i < N; ++i) {
    const int64_t rows = (P.query_start[i + 1] - P.query_start[i]) * G;
    if (rows == 0) continue;
    // Batch-invariant: one query row (its G heads) per job, always, so a prompt's rows are
    // computed exactly as decode tokens are, however the prompt is chunked.
    const int64_t per = invariant ? G : rows;  // rows of one kv head in a job
    const bool in_place = per <= kDotRows;
    int64_t heads = in_place ? std::min(P.Hkv, kMaxRows / per) : 1;
    // Few decode sequences: fewer kv heads per job, so that every thread gets one (a head's
    // results do not depend on which job computes it).
    if (in_place && N < nthreads) heads = std::max<int64_t>(1, heads * N / nthreads);
    const int64_t step = invariant ? G : in_place ? rows : tile_rows;
    for (int64_t hk = 0; hk < P.Hkv; hk += heads)
      for (int64_t m0 = 0; m0 < rows; m0 += step) {
        const int64_t nrows = std::min(step, rows - m0);
        int64_t lo, hi, lo_last, hi_last;
        P.key_range(i, m0 / G, lo, hi);
        P.key_range(i, (m0 + nrows - 1) / G, lo_last, hi_last);
        jobs.push_back({i, hk, std::min(heads, P.Hkv - hk), m0, nrows, lo, hi_last, -1});
      }
  }
  const int64_t target = 2 * int64_t(nthreads), base = int64_t(jobs.size());
  if (base == 0 || (!invariant && base >= target)) return;
  // Splits job j at the absolute key positions first + chunk, first + 2 chunk, ...
  auto split = [&](int64_t j, int64_t first, int64_t chunk) {
    const Job job = jobs[size_t(j)];
    Merge m{job, slots, 0};
    for (int64_t k0 = job.k0; k0 < job.k1; ++m.count) {
      Job part = job;
      part.k0 = k0;
      part.k1 = std::min(job.k1, first + (m.count + 1) * chunk);
      part.slot = slots++;
      if (m.count == 0)
        jobs[size_t(j)] = part;
      else
        jobs.push_back(part);
      k0 = part.k1;
    }
    merges.push_back(m);
  };
  const int64_t max_splits = (target + base - 1) / base;
  for (int64_t j = 0; j < base; ++j) {
    const Job job = jobs[size_t(j)];
    if (invariant) {
      // Fixed split points, multiples of kInvariantSplitKeys: the same for this job in any call.
      const int64_t first = job.k0 / kInvariantSplitKeys * kInvariantSplitKeys;
      if (job.k1 - first > kInvariantSplitKeys) split(j, first, kInvariantSplitKeys);
      continue;
    }
    const int64_t keys = job.k1 - job.k0;
    const int64_t n = std::min(max_splits, keys / kMinSplitKeys);
    if (n < 2) continue;
    // Split points on tile boundaries (absolute positions), so tiles stay whole.
    const int64_t chunk = ((keys + n - 1) / n + kTileK - 1) / kTileK * kTileK;
    split(j, job.k0 / kTileK * kTileK, chunk);
  }
  // Largest first (dynamic scheduling then balances the tail).
  std::sort(jobs.begin(), jobs.end(), [](const Job& a, const Job& b) {
    return (a.k1 - a.k0) * a.nrows * a.nhk > (b.k1 - b.k0) * b.nrows * b.nhk;
  });
}

}  // namespace

void paged_attention_forward(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache,
                             const Tensor& query_start, const Tensor& context_len,
                             const Tensor& block_table, const PagedAttentionParams& p,
                             Tensor& out) {
  Problem P;
  P.Hq = q.size(1);
  P.D = q.size(2);
  P.Dp = (P.D + kPadD - 1) / kPadD * kPadD;
  P.Hkv = k_cache.size(2);
  P.group = P.Hq / P.Hkv;
  P.block_size = k_cache.size(1);
  P.max_blocks = block_table.size(1);
  P.qmul = p.scale * kLog2e;
  P.window = p.window;
  P.bf16 = q.dtype() == DType::bf16;
  P.q = q.data();
  P.k_cache = k_cache.data();
  P.v_cache = v_cache.data();
  P.out = out.data();
  P.query_start = query_start.data_as<const int64_t>();
  P.context_len = context_len.data_as<const int64_t>();
  P.block_table = block_table.data_as<const int32_t>();
  const int64_t N = context_len.size(0), T = q.size(0);

  // Rows no sequence owns are zero (all-zero bits in f32 and bf16).
  const size_t row_bytes = size_t(P.Hq * P.D) * dtype_size(q.dtype());
  const int64_t owned = P.query_start[N];
  std::memset(static_cast<char*>(P.out) + size_t(owned) * row_bytes, 0,
              size_t(T - owned) * row_bytes);

  thread_local std::vector<Job> jobs;
  thread_local std::vector<Merge> merges;
  thread_local std::vector<float> partial;
  int64_t slots = 0;
  const int nthreads = omp_get_max_threads();
  plan_jobs(P, N, nthreads, p.batch_invariant, jobs, merges, slots);
  if (jobs.empty()) return;
  if (int64_t(partial.size()) < slots * P.slot_floats())
    partial.resize(size_t(slots * P.slot_floats()));
  P.partial = partial.data();

  const Kernels& K = kernels();
  const int64_t njobs = int64_t(jobs.size()), nmerges = int64_t(merges.size());
  const Job* job_list = jobs.data();
  const Merge* merge_list = merges.data();
#pragma omp parallel num_threads(int(std::min <int64_t>(nthreads, njobs)))
  {
    float* ws = thread_scratch(job_scratch(P));
#pragma omp for schedule(dynamic, 1)
    for (int64_t j = 0; j < njobs; ++j) K.run_job(P, job_list[j], ws);
#pragma omp for schedule(static)
    for (int64_t m = 0; m < nmerges; ++m) K.merge_rows(P, merge_list[m], ws);
  }
}

void paged_kv_write(const Tensor& k, const Tensor& v, const Tensor& slot_mapping, Tensor& k_cache,
                    Tensor& v_cache) {
  const int64_t T = k.size(0);
  const size_t row_bytes = size_t(k.size(1) * k.size(2)) * dtype_size(k.dtype());
  const int64_t* sm = slot_mapping.data_as<const int64_t>();
  const char* ks = static_cast<const char*>(k.data());
  const char* vs = static_cast<const char*>(v.data());
  char* kc = static_cast<char*>(k_cache.data());
  char* vc = static_cast<char*>(v_cache.data());
#pragma omp parallel for schedule(static) if (T * int64_t(row_bytes) >= kMinParallelElements)
  for (int64_t t = 0; t < T; ++t) {
    if (sm[t] < 0) continue;
    std::memcpy(kc + size_t(sm[t]) * row_bytes, ks + size_t(t) * row_bytes, row_bytes);
    std::memcpy(vc + size_t(sm[t]) * row_bytes, vs + size_t(t) * row_bytes, row_bytes);
  }
}

void paged_kv_copy_blocks(Tensor& k_cache, Tensor& v_cache, const Tensor& pairs) {
  const int64_t n = pairs.size(0);
  const size_t block_bytes =
      size_t(k_cache.size(1) * k_cache.size(2) * k_cache.size(3)) * dtype_size(k_cache.dtype());
  const int32_t* pr = pairs.data_as<const int32_t>();
  char* kc = static_cast<char*>(k_cache.data());
  char* vc = static_cast<char*>(v_cache.data());
#pragma omp parallel for schedule(static) if (n * int64_t(block_bytes) >= kMinParallelElements)
  for (int64_t i = 0; i < 2 * n; ++i) {  // (pair, cache)
    char* base = i % 2 ? vc : kc;
    const int64_t src = pr[i / 2 * 2], dst = pr[i / 2 * 2 + 1];
    std::memcpy(base + size_t(dst) * block_bytes, base + size_t(src) * block_bytes, block_bytes);
  }
}

}  // namespace origami::ops::cpu

#else  // ORIGAMI_ATTENTION_ISA: the kernels, compiled once per instruction set

namespace origami::ops::cpu::paged_detail::ORIGAMI_ATTENTION_ISA {

#include "ops/cpu/attention_simd.h"  // Vec, exp2v, gemm, load_row, ...

typedef uint16_t VecH __attribute__((vector_size(W * sizeof(uint16_t))));
typedef uint32_t VecU __attribute__((vector_size(W * sizeof(uint32_t))));

// W elements as f32: f32 loaded, bf16 widened in registers (its bits are the high half of an f32).
inline Vec load_f32(const float* p) {
  return load(p);
}
inline Vec load_f32(const uint16_t* p) {
  VecH h;
  std::memcpy(&h, p, sizeof h);
  const VecU u = __builtin_convertvector(h, VecU) << 16;
  Vec f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}
inline float to_f32(float x) {
  return x;
}
inline float to_f32(uint16_t x) {
  return bf16_to_f32(x);
}

// Lane L of fold<S>(x, y): x and y hold W / S segments of S lanes each; the result holds twice as
// many segments of S / 2 lanes (x's, then y's), each the sum of the two halves of its source.
constexpr int fold_lane(int S, int L, bool high) {
  const int half = S / 2, seg = L / half, segs = W / S;
  return (seg < segs ? 0 : W) + seg % segs * S + L % half + (high ? half : 0);
}
template <int S, int... L>
inline Vec fold(Vec x, Vec y, std::integer_sequence<int, L...>) {
  return __builtin_shufflevector(x, y, fold_lane(S, L, false)...) +
         __builtin_shufflevector(x, y, fold_lane(S, L, true)...);
}
template <int S>
inline Vec fold(Vec x, Vec y) {
  return fold<S>(x, y, std::make_integer_sequence<int, W>());
}

// Lanes 0..3 = the sums of the lanes of a, b, c and d (a transposing reduction: about four
// shuffle-and-add steps for all four, where one sum alone takes log2(W)).
inline Vec reduce4(Vec a, Vec b, Vec c, Vec d) {
  Vec u = fold<W / 2>(fold<W>(a, b), fold<W>(c, d));
  if constexpr (W >= 16) u = fold<W / 4>(u, u);
  if constexpr (W >= 8) u = fold<2>(u, u);
  return u;
}

// dst[0..D) = src[0..D) as f32, dst[D..Dp) = 0.
template <typename T>
inline void pack_row(const T* src, int64_t D, int64_t Dp, float* dst) {
  int64_t d = 0;
  for (; d + W <= D; d += W) store(dst + d, load_f32(src + d));
  for (; d < D; ++d) dst[d] = to_f32(src[d]);
  for (; d < Dp; ++d) dst[d] = 0.0f;
}

// St[j][r] = Qs[r] . K_j for R rows and nk keys (K rows in the cache); KJ keys at a time, so that
// even a single row has independent accumulators in flight.
template <typename T, int R, int KJ>
void dot_rows(int64_t nk, const float* Qs, int64_t Dp, const T* const* krow, int64_t D, float* St,
              int64_t Mp) {
  const int64_t Dv = D / W * W;
  int64_t j = 0;
  for (; j + KJ <= nk; j += KJ) {
    Vec acc[KJ][R] = {};
    for (int64_t d = 0; d < Dv; d += W) {
      Vec kv[KJ];
#pragma GCC unroll 4
      for (int k = 0; k < KJ; ++k) kv[k] = load_f32(krow[j + k] + d);
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) {
        const Vec qv = load(Qs + r * Dp + d);
#pragma GCC unroll 4
        for (int k = 0; k < KJ; ++k) acc[k][r] += qv * kv[k];
      }
    }
    constexpr int n = KJ * R;  // accumulators, reduced four at a time
    float sums[(n + 3) / 4 * 4];
    auto accumulator = [&](int i) { return i < n ? acc[i / R][i % R] : Vec{}; };
#pragma GCC unroll 8
    for (int i = 0; i < n; i += 4) {
      const Vec red =
          reduce4(accumulator(i), accumulator(i + 1), accumulator(i + 2), accumulator(i + 3));
      std::memcpy(sums + i, &red, 4 * sizeof(float));
    }
#pragma GCC unroll 4
    for (int k = 0; k < KJ; ++k)
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) {
        float s = sums[k * R + r];
        for (int64_t d = Dv; d < D; ++d) s += Qs[r * Dp + d] * to_f32(krow[j + k][d]);
        St[(j + k) * Mp + r] = s;
      }
  }
  if (j < nk) dot_rows<T, R, 1>(nk - j, Qs, Dp, krow + j, D, St + j * Mp, Mp);
}

// Keys per step of dot_rows: enough independent accumulators for few rows, and K's vectors shared
// by more rows (8 rows x 2 keys: 16 accumulators; 2 keys at 8 rows measured 8% faster than 1).
constexpr int keys_at_once(int rows) {
  return rows == 1 ? 4 : 2;
}
template <typename T, size_t... I>
constexpr auto dot_rows_table(std::index_sequence<I...>) {
  return std::array{&dot_rows<T, int(I) + 1, keys_at_once(int(I) + 1)>...};
}

// Scores of M <= kDotRows rows with K read in place.
template <typename T>
void scores_in_place(int64_t M, int64_t nk, const float* Qs, int64_t Dp, const T* const* krow,
                     int64_t D, float* St, int64_t Mp) {
  static constexpr auto table = dot_rows_table<T>(std::make_index_sequence<kDotRows>());
  table[size_t(M - 1)](nk, Qs, Dp, krow, D, St, Mp);
}

// O[r][c0 .. c0 + NV*W) += sum_j P(r, j) V_j[...] for R rows, P(r, j) = St[j * Mp + r].
template <typename T, int R, int NV>
void pv_tile(int64_t nk, const float* St, int64_t Mp, const T* const* vrow, int64_t c0, float* O,
             int64_t Dp) {
  Vec acc[R][NV];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) acc[r][v] = load(O + r * Dp + c0 + v * W);
  for (int64_t j = 0; j < nk; ++j) {
    Vec vv[NV];
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) vv[v] = load_f32(vrow[j] + c0 + v * W);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const Vec p = splat(St[j * Mp + r]);
#pragma GCC unroll 8
      for (int v = 0; v < NV; ++v) acc[r][v] += p * vv[v];
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) store(O + r * Dp + c0 + v * W, acc[r][v]);
}

template <typename T, int R>
void pv_rows(int64_t nk, const float* St, int64_t Mp, const T* const* vrow, int64_t D, float* O,
             int64_t Dp) {
  const int64_t Dv = D / W * W;
  for (int64_t c0 = 0; c0 < Dv; c0 += kVecs * W) {
    switch (std::min<int64_t>(kVecs, (Dv - c0) / W)) {
      case 1:
        pv_tile<T, R, 1>(nk, St, Mp, vrow, c0, O, Dp);
        break;
      case 2:
        pv_tile<T, R, 2>(nk, St, Mp, vrow, c0, O, Dp);
        break;
      case 3:
        pv_tile<T, R, 3>(nk, St, Mp, vrow, c0, O, Dp);
        break;
      default:
        pv_tile<T, R, kVecs>(nk, St, Mp, vrow, c0, O, Dp);
        break;
    }
  }
  for (int64_t j = 0; j < nk; ++j)
    for (int r = 0; r < R; ++r)
      for (int64_t d = Dv; d < D; ++d) O[r * Dp + d] += St[j * Mp + r] * to_f32(vrow[j][d]);
}

// O[M][Dp] += P V with V rows read in place.
template <typename T>
void values_in_place(int64_t M, int64_t nk, const float* St, int64_t Mp, const T* const* vrow,
                     int64_t D, float* O, int64_t Dp) {
  for (int64_t m0 = 0; m0 < M; m0 += kRows) {
    const float* s = St + m0;
    float* o = O + m0 * Dp;
    switch (std::min<int64_t>(kRows, M - m0)) {
      case 1:
        pv_rows<T, 1>(nk, s, Mp, vrow, D, o, Dp);
        break;
      case 2:
        pv_rows<T, 2>(nk, s, Mp, vrow, D, o, Dp);
        break;
      case 3:
        pv_rows<T, 3>(nk, s, Mp, vrow, D, o, Dp);
        break;
      default:
        pv_rows<T, kRows>(nk, s, Mp, vrow, D, o, Dp);
        break;
    }
  }
}

// Online softmax over one tile of transposed scores St [nk][Mp] (log2 units, -inf where masked):
// St becomes the tile's probabilities relative to the new running max; mrun, lrun (running max
// and sum) are updated and alpha receives the factor the output rows must be rescaled by.
void softmax_tile(int64_t nk, int64_t Mp, float* St, float* mrun, float* lrun, float* alpha) {
  const Vec neg_inf = splat(kNegInf);
  for (int64_t c = 0; c < Mp; c += W) {
    const Vec mold = load(mrun + c);
    Vec mx = mold;
    for (int64_t j = 0; j < nk; ++j) mx = vmax(mx, load(St + j * Mp + c));
    // A row with no visible key yet keeps max -inf; subtracting 0 then keeps its terms at 0.
    const Vec sub = mx == neg_inf ? Vec{} : mx;
    Vec sum = Vec{};
    for (int64_t j = 0; j < nk; ++j) {
      const Vec e = exp2v(load(St + j * Mp + c) - sub);
      store(St + j * Mp + c, e);
      sum += e;
    }
    const Vec a = exp2v(mold - sub);
    store(lrun + c, load(lrun + c) * a + sum);
    store(mrun + c, mx);
    store(alpha + c, a);
  }
}

// Whole-row pointers ([Hkv,D] rows; a kv head adds hk * D) of keys [a, b) of a sequence, one cache
// block at a time.
template <typename T>
void tile_rows(const Problem& P, const int32_t* table, int64_t a, int64_t b, const T* kc,
               const T* vc, const T** krow, const T** vrow) {
  const int64_t bs = P.block_size, row_stride = P.Hkv * P.D;
  for (int64_t pos = a; pos < b;) {
    const int64_t in_block = pos % bs, run = std::min(b - pos, bs - in_block);
    const int64_t e = (int64_t(table[pos / bs]) * bs + in_block) * row_stride;
    for (int64_t t = 0; t < run; ++t) {
      krow[pos - a + t] = kc + e + t * row_stride;
      vrow[pos - a + t] = vc + e + t * row_stride;
    }
    pos += run;
  }
}

// Asks for elements [begin, begin + n) of nk rows to be brought into L2, line by line (one request
// per pair of lines measured slower on bf16 rows of 128 elements).
template <typename T>
void prefetch_rows(const T* const* rows, int64_t nk, int64_t begin, int64_t n) {
  for (int64_t j = 0; j < nk; ++j) {
    const uintptr_t p = reinterpret_cast<uintptr_t>(rows[j] + begin);
    const uintptr_t end = p + uintptr_t(n) * sizeof(T);
    for (uintptr_t line = p & ~uintptr_t(63); line < end; line += 64)
      __builtin_prefetch(reinterpret_cast<const void*>(line), 0, 2);
  }
}

template <typename T>
void run_job_typed(const Problem& P, const Job& J, float* ws) {
  const int64_t D = P.D, Dp = P.Dp, M = J.nrows, H = J.nhk;
  const int64_t Mp = (M + W - 1) / W * W;
  float* Qs = ws;                              // [H][M][Dp] queries * scale * log2(e)
  float* O = Qs + kMaxRows * Dp;               // [H][M][Dp] unnormalised output
  float* Qt = O + kMaxRows * Dp;               // [Dp][Mp] Qs transposed (prefill, H = 1)
  float* St = Qt + Dp * kMaxRows;              // [kTileK][Mp] a head's scores, probabilities
  float* mrun = St + kTileK * kMaxRows;        // [H][Mp] running max (log2 units)
  float* lrun = mrun + kMaxRows * kMaxLanes;   // [H][Mp] running sum
  float* alpha = lrun + kMaxRows * kMaxLanes;  // [Mp] rescale factors of one head and tile
  float* Kp = alpha + kMaxRows * kMaxLanes;    // [kTileK][Dp] K tile as f32 (prefill)
  float* Vp = Kp + kTileK * Dp;                // [kTileK][Dp] V tile as f32 (prefill)

  int64_t lo[kMaxRows], hi[kMaxRows];  // each pair's visible keys within [J.k0, J.k1)
  for (int64_t r = 0; r < M; ++r) {
    P.key_range(J.seq, (J.m0 + r) / P.group, lo[r], hi[r]);
    lo[r] = std::max(lo[r], J.k0);
    hi[r] = std::min(hi[r], J.k1);
    for (int64_t e = 0; e < H; ++e)
      load_row(P.q, P.bf16, out_offset(P, J, e, r), D, Dp, P.qmul, Qs + (e * M + r) * Dp);
  }
  for (int64_t i = 0; i < H * Mp; ++i) {
    mrun[i] = kNegInf;
    lrun[i] = 0.0f;
  }
  std::memset(O, 0, size_t(H * M * Dp) * sizeof(float));
  std::memset(St, 0, size_t(kTileK * Mp) * sizeof(float));  // padding columns stay finite
  const bool in_place = M <= kDotRows;
  if (!in_place)
    for (int64_t d = 0; d < Dp; ++d)
      for (int64_t r = 0; r < Mp; ++r) Qt[d * Mp + r] = r < M ? Qs[r * Dp + d] : 0.0f;

  const T* kc = static_cast<const T*>(P.k_cache);
  const T* vc = static_cast<const T*>(P.v_cache);
  const int32_t* table = P.block_table + J.seq * P.max_blocks;
  const T* krows[2][kTileK];  // whole rows of this tile and of the next
  const T* vrows[2][kTileK];
  const T* krow[kTileK];  // one head's part of them
  const T* vrow[kTileK];
  const int64_t kbeg = lo[0], kend = hi[M - 1];  // both ends grow with the pair
  auto tile_end = [&](int64_t a) { return std::min(kend, (a / kTileK + 1) * kTileK); };
  int cur = 0;
  if (kbeg < kend) tile_rows(P, table, kbeg, tile_end(kbeg), kc, vc, krows[0], vrows[0]);
  for (int64_t a = kbeg; a < kend; cur ^= 1) {
    const int64_t b = tile_end(a), nk = b - a;
    if (b < kend) {  // the next tile's rows, on their way while this one is computed
      const int64_t nk2 = tile_end(b) - b;
      tile_rows(P, table, b, b + nk2, kc, vc, krows[cur ^ 1], vrows[cur ^ 1]);
      prefetch_rows(krows[cur ^ 1], nk2, J.hk0 * D, H * D);
      prefetch_rows(vrows[cur ^ 1], nk2, J.hk0 * D, H * D);
    }
    const bool edge = a < lo[M - 1] || b > hi[0];  // some pair does not see some key
    for (int64_t e = 0; e < H; ++e) {
      const int64_t off = (J.hk0 + e) * D;
      for (int64_t j = 0; j < nk; ++j) {
        krow[j] = krows[cur][j] + off;
        vrow[j] = vrows[cur][j] + off;
      }
      const float* qs = Qs + e * M * Dp;
      float* o = O + e * M * Dp;
      if (in_place) {
        scores_in_place<T>(M, nk, qs, Dp, krow, D, St, Mp);
      } else {
        for (int64_t j = 0; j < nk; ++j) pack_row(krow[j], D, Dp, Kp + j * Dp);
        gemm(nk, Mp, Dp, Kp, Dp, 1, Qt, Mp, St, Mp, false);
      }
      if (edge)
        for (int64_t j = 0; j < nk; ++j)
          for (int64_t r = 0; r < M; ++r)
            if (a + j < lo[r] || a + j >= hi[r]) St[j * Mp + r] = kNegInf;
      softmax_tile(nk, Mp, St, mrun + e * Mp, lrun + e * Mp, alpha);
      for (int64_t r = 0; r < M; ++r)
        if (alpha[r] != 1.0f) {
          const Vec va = splat(alpha[r]);
          for (int64_t d = 0; d < Dp; d += W) store(o + r * Dp + d, load(o + r * Dp + d) * va);
        }
      if (in_place) {
        values_in_place<T>(M, nk, St, Mp, vrow, D, o, Dp);
      } else {
        for (int64_t j = 0; j < nk; ++j) pack_row(vrow[j], D, Dp, Vp + j * Dp);
        gemm(M, Dp, nk, St, 1, Mp, Vp, Dp, o, Dp, true);
      }
    }
    a = b;
  }

  float* part = J.slot < 0 ? nullptr : P.partial + J.slot * P.slot_floats();
  for (int64_t e = 0; e < H; ++e)
    for (int64_t r = 0; r < M; ++r) {
      const float l = lrun[e * Mp + r];
      const float* src = O + (e * M + r) * Dp;
      if (!part) {  // every pair saw at least its own position
        store_row(P.out, P.bf16, out_offset(P, J, e, r), D, 1.0f / l, src);
        continue;
      }
      const Vec mul = splat(l > 0.0f ? 1.0f / l : 0.0f);
      float* dst = part + (e * M + r) * Dp;
      for (int64_t d = 0; d < Dp; d += W) store(dst + d, load(src + d) * mul);
      part[kMaxRows * Dp + e * M + r] = l > 0.0f ? mrun[e * Mp + r] + std::log2(l) : kNegInf;
    }
}

void run_job(const Problem& P, const Job& J, float* ws) {
  if (P.bf16)
    run_job_typed<uint16_t>(P, J, ws);
  else
    run_job_typed<float>(P, J, ws);
}

// The rows of a split job = the splits' outputs weighted by 2^(lse_s - max) / sum.
void merge_rows(const Problem& P, const Merge& mg, float* ws) {
  const Job& J = mg.rows;
  const int64_t Dp = P.Dp, M = J.nrows;
  float* acc = ws;  // [Dp]
  for (int64_t row = 0; row < J.nhk * M; ++row) {
    float mx = kNegInf;
    for (int64_t s = 0; s < mg.count; ++s)
      mx = std::max(mx, P.partial[(mg.slot0 + s) * P.slot_floats() + kMaxRows * Dp + row]);
    float total = 0.0f;
    std::memset(acc, 0, size_t(Dp) * sizeof(float));
    for (int64_t s = 0; s < mg.count; ++s) {
      const float* part = P.partial + (mg.slot0 + s) * P.slot_floats();
      const float lse = part[kMaxRows * Dp + row];
      if (lse == kNegInf) continue;
      const float w = std::exp2(lse - mx);
      total += w;
      const Vec vw = splat(w);
      for (int64_t d = 0; d < Dp; d += W)
        store(acc + d, load(acc + d) + vw * load(part + row * Dp + d));
    }
    store_row(P.out, P.bf16, out_offset(P, J, row / M, row % M), P.D, 1.0f / total, acc);
  }
}

}  // namespace origami::ops::cpu::paged_detail::ORIGAMI_ATTENTION_ISA

#endif  // ORIGAMI_ATTENTION_ISA
