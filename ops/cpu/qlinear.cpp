// CPU packed linear layers (ops/qlinear.h): packing, the decode kernels (M <= 16 rows of x), and
// the prefill path through ops::gemm.
//
// Packed layouts. N rows of W are cut into tiles of 16 rows (kQTileRows; the last tile is padded
// with rows of level 0, scale 0 and zero 0), each tile one contiguous piece of `data`, so that a
// thread streams its tiles front to back. K is in packed column order (W's columns permuted by
// `perm` when act-order needs it) and cut into blocks of 32 columns (kQBlock).
//   int8  data u8 [Nt][K/4][16][4]: byte (t, c, r, i) is the level of row 16t + r, packed column
//         4c + i. A block is 512 bytes: 8 vectors of 64 bytes, each 4 columns of all 16 rows,
//         the operand order of vpdpbusd (4 bytes of a row summed into its 32-bit lane).
//   int4  data u8 [Nt][K/32][4][16][4]: in block b, byte (p, r, i) holds in its low nibble the
//         level of row 16t + r, column 32b + 4p + i, and in its high nibble that of column
//         32b + 16 + 4p + i. So `v & 15` and `(v >> 4) & 15` of the 4 vectors of a block (256
//         bytes) are the 8 vectors of the int8 layout. 2- and 3-bit levels are stored the same way.
//   scales, zeros  f32 [Nt][G][16]: scale and zero (a level, as a float) of row 16t + r in group
//         g, one 64-byte vector per tile and group. Group g is packed columns [g*gs, (g+1)*gs).
//   bf16  W itself, [N][K] row-major (no tiles: a view of the caller's buffer).
//
// Decode (M <= 16), every output split over the threads in contiguous ranges of tiles (rows):
//  - int formats: x's rows are quantized once per call to int8 per block of 32 packed columns,
//    scale sx = max|x| / 127 and xq = round-to-nearest-even(x * (127 / max|x|)) (f32 arithmetic),
//    with the sum of the block's xq. A tile then needs, per row m of x and block b, the integer
//    dot d (vpdpbusd: unsigned levels times signed xq) of 16 output rows at once, and
//      acc += ((float(d) - zero * xsum) * sx) * scale      (16 lanes; d - zero * xsum is exact)
//    No horizontal sums: a tile's 16 results are one vector. int4 also prefetches its weights
//    2 KiB ahead (kInt4PrefetchBytes). Without VNNI the same integer dot
//    comes from vpmaddubsw + vpmaddwd (int8 levels split in nibbles so nothing saturates).
//  - bf16: x rounded to bf16 (nearest even) once per call; one, two or four rows of W (by M; see
//    Bf16Tables) dotted with up to 4 rows of x at a time (vdpbf16ps, f32 accumulation, 8 to 16
//    independent accumulators, their horizontal sums eight at a time).
//  - exact (int formats): W^ tile by tile in f32, dotted with x in f32.
// Prefill (M > 16): W^ dequantized tile of rows by tile of rows into a buffer of x's dtype, each
// tile one ops::gemm (oneDNN) into an f32 buffer, copied into y's columns; bf16 W goes to ops::gemm
// directly.
//
// Kernels are compiled once per instruction set (ops/cpu/isa_variants.h, with the BF16 + VNNI
// variant), the best one this CPU runs picked at run time (qlinear_isa, qlinear_force_isa).
#ifndef ORIGAMI_ATTENTION_ISA

#include "ops/cpu/qlinear.h"

#include <omp.h>

#if defined(__x86_64__)
// GCC 12's _mm512_undefined_* (self-initialised, inside many intrinsics) trips
// -W(maybe-)uninitialized at the header's lines wherever those intrinsics are inlined.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#pragma GCC diagnostic pop
#endif

#include <algorithm>
#include <array>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "ops/gemm.h"

namespace origami::ops::cpu::qlinear_detail {

constexpr int64_t kT = kQTileRows;  // 16
constexpr int64_t kB = kQBlock;     // 32
constexpr int64_t kMaxM = kQDecodeMaxRows;
constexpr size_t kMaxGroup = kQMaxGroup;
// The int4 kernel asks for the weights this many bytes ahead of the block it reads (a software
// prefetch; past the end of a tile it reads the next one, past the end of W nothing faults). The
// hardware prefetchers alone fall behind on int4, whose 256-byte blocks take the longest to
// compute: on the development machine (2 EPYC cores, batch 1, 2 threads, the linears of a 1.1B
// model in turn, interleaved with and without) it raised int4 from 28-40 to 38-51 GB/s; 512 bytes
// gained less, 4-8 KiB the same. int8 measured 6-12% slower with it, so only int4 has it.
constexpr int64_t kInt4PrefetchBytes = 2048;
// Rows of x per pass of the int and of the bf16 kernels (a pass reads its tile or row of W; the
// next pass finds it in L1 or L2).
constexpr int kIntRowsX = 8;
constexpr int kBf16RowsX = 4;

inline int64_t tile_bytes(bool int4, int64_t K) {
  return qtile_bytes(int4, K);
}

// Where results go: y [M,N] f32 or bf16, y = r + beta * y (y not read when beta is 0).
struct Output {
  void* y = nullptr;
  bool bf16 = false;
  float beta = 0.0f;
  int64_t N = 0;

  void store(int64_t m, int64_t n, float r) const {
    const int64_t i = m * N + n;
    if (bf16) {
      uint16_t* p = static_cast<uint16_t*>(y) + i;
      *p = f32_to_bf16(beta != 0.0f ? r + beta * bf16_to_f32(*p) : r);
    } else {
      float* p = static_cast<float*>(y) + i;
      *p = beta != 0.0f ? r + beta * *p : r;
    }
  }
};

struct Bf16Problem {
  const uint16_t* w = nullptr;  // [N][K]
  const uint16_t* x = nullptr;  // [M][Kp] x rounded to bf16, zero past K
  int64_t N = 0, K = 0, Kp = 0, M = 0;
  bool invariant = false;  // every dot product summed the same way whatever M (batch invariance)
  Output out;
};

struct IntProblem {
  const uint8_t* data = nullptr;  // the packed tiles
  const float* scales = nullptr;  // [Nt][G][16]
  const float* zeros = nullptr;   // [Nt][G][16]
  int64_t N = 0, K = 0, G = 0, group = 0, M = 0;
  bool int4 = false;
  const int8_t* xq = nullptr;   // [M][K] quantized x, packed column order
  const float* xs = nullptr;    // [M][K/32] block scales
  const float* xsum = nullptr;  // [M][K/32] sums of the blocks' xq (exact integers)
  Output out;
};

}  // namespace origami::ops::cpu::qlinear_detail

// ---- the kernel section, once per instruction set -----------------------------------------------
#define ORIGAMI_ISA_WITH_BF16_VNNI 1
#define ORIGAMI_ISA_KERNEL_FILE "ops/cpu/qlinear.cpp"
#include "ops/cpu/isa_variants.h"
#undef ORIGAMI_ISA_WITH_BF16_VNNI

// ---- dispatch, packing, prefill and the entry points --------------------------------------------
namespace origami::ops::cpu {
namespace {

using namespace qlinear_detail;

struct Kernels {
  const char* name;
  decltype(&generic::bf16_rows) bf16_rows;
  decltype(&generic::int_tiles) int_tiles;
  decltype(&generic::quantize_rows) quantize_rows;
};

std::vector<Kernels> available_kernels() {
  std::vector<Kernels> ks;  // best first
#if ORIGAMI_ATTENTION_HAS_X86_VARIANTS
  __builtin_cpu_init();
  const bool avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                      __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl") &&
                      __builtin_cpu_supports("fma");
  if (avx512 && __builtin_cpu_supports("avx512bf16") && __builtin_cpu_supports("avx512vnni"))
    ks.push_back({"avx512_bf16_vnni", &avx512_bf16_vnni::bf16_rows, &avx512_bf16_vnni::int_tiles,
                  &avx512_bf16_vnni::quantize_rows});
  if (avx512)
    ks.push_back({"avx512", &avx512::bf16_rows, &avx512::int_tiles, &avx512::quantize_rows});
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
    ks.push_back({"avx2", &avx2::bf16_rows, &avx2::int_tiles, &avx2::quantize_rows});
#endif
  ks.push_back({"generic", &generic::bf16_rows, &generic::int_tiles, &generic::quantize_rows});
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

// Below this many bytes of W a call runs on the calling thread alone: one core reads 512 KiB in
// about 30 us, a few times what waking the other threads costs (bench_qlinear prints it: about
// 10 us with passive waiting), and on a busy machine a woken thread may start much later (a 0.3 MB
// layer measured 18 us on one thread, 58 us on two).
constexpr int64_t kMinParallelBytes = int64_t(512) << 10;

// Passes of the kernels over W for M rows of x, `per_pass` rows at a time: each pass reads all of W
// (the first from memory, the others from cache), so it is the measure of a call's work.
inline int64_t passes(int64_t M, int64_t per_pass) {
  return (M + per_pass - 1) / per_pass;
}

// fn(u0, u1) over contiguous, equal shares of `units` on the OpenMP threads; `bytes` of W read in
// all (over every pass) decides whether more than one thread is worth waking.
template <typename Fn>
void split_units(int64_t units, int64_t bytes, const Fn& fn) {
  const int64_t nt =
      bytes < kMinParallelBytes ? 1 : std::min<int64_t>(omp_get_max_threads(), units);
  if (nt <= 1) {
    fn(int64_t(0), units);
    return;
  }
#pragma omp parallel num_threads(int(nt))
  {
    const int64_t t = omp_get_thread_num(), n = omp_get_num_threads();
    fn(units * t / n, units * (t + 1) / n);
  }
}

struct FreeDeleter {
  void operator()(void* p) const { std::free(p); }
};

// A grow-only, 64-byte aligned buffer: a decode step allocates nothing once the largest shapes
// have been seen.
struct Buffer {
  std::unique_ptr<char, FreeDeleter> data;
  size_t capacity = 0;
  template <typename T>
  T* get(int64_t n) {
    const size_t bytes = (size_t(std::max<int64_t>(n, 1)) * sizeof(T) + 63) / 64 * 64;
    if (capacity < bytes) {
      data.reset(static_cast<char*>(std::aligned_alloc(64, bytes)));
      ORIGAMI_CHECK(data, "packed_linear: cannot allocate ", bytes, " bytes of scratch");
      capacity = bytes;
    }
    return reinterpret_cast<T*>(data.get());
  }
};

// The calling thread's buffers, one per use.
enum Slot { kSlotX, kSlotXq, kSlotXScale, kSlotXSum, kSlotTile, kSlotOut, kNumSlots };
template <typename T>
T* call_scratch(Slot slot, int64_t n) {
  thread_local Buffer buffers[kNumSlots];
  return buffers[slot].get<T>(n);
}
// One more per OpenMP thread (dequantized tiles).
float* worker_scratch(int64_t n) {
  thread_local Buffer buffer;
  return buffer.get<float>(n);
}

// x [M,K] as f32 rows in packed column order: x itself when it already is, else a copy.
const float* f32_packed_rows(const Tensor& x, const PackedLinear& w) {
  const int64_t M = x.size(0), K = x.size(1);
  const bool bf16 = x.dtype() == DType::bf16;
  if (!bf16 && !w.perm.defined()) return x.data_as<const float>();
  float* dst = call_scratch<float>(kSlotX, M * K);
  const int32_t* perm = w.perm.defined() ? w.perm.data_as<const int32_t>() : nullptr;
  for (int64_t m = 0; m < M; ++m)
    for (int64_t j = 0; j < K; ++j) {
      const int64_t i = m * K + (perm ? perm[j] : j);
      dst[m * K + j] =
          bf16 ? bf16_to_f32(x.data_as<const uint16_t>()[i]) : x.data_as<const float>()[i];
    }
  return dst;
}

// f32 activations: W^ tile by tile (f32), dotted with x in f32.
void decode_int_exact(const Tensor& x, const PackedLinear& w, const Output& out) {
  const bool int4 = w.format == WeightFormat::int4;
  const int64_t M = x.size(0), K = w.cols, N = w.rows, tiles = (N + kT - 1) / kT;
  const float* xf = f32_packed_rows(x, w);  // [M][K]
  split_units(tiles, tiles * tile_bytes(int4, K), [&](int64_t t0, int64_t t1) {
    float* wt = worker_scratch(kT * K);  // [16][K] W^ of a tile
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t rows = std::min(kT, N - t * kT);
      dequantize_tile(w, t, rows, wt, K);
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t m = 0; m < M; ++m) {
          float lanes[kT] = {};  // independent partial sums (vectorizable)
          const float* a = wt + r * K;
          const float* b = xf + m * K;
          for (int64_t k = 0; k < K; k += kT)
            for (int64_t l = 0; l < kT; ++l) lanes[l] += a[k + l] * b[k + l];
          float s = 0.0f;
          for (float v : lanes) s += v;
          out.store(m, t * kT + r, s);
        }
    }
  });
}

// y[:, n0 : n0 + n] = part [M][n] + beta * y[:, ...]
void copy_columns(const float* part, int64_t M, int64_t n0, int64_t n, const Output& out) {
#pragma omp parallel for schedule(static) if (M * n >= (int64_t(1) << 16))
  for (int64_t m = 0; m < M; ++m)
    for (int64_t j = 0; j < n; ++j) out.store(m, n0 + j, part[m * n + j]);
}

// M > 16, int formats: tiles of W^ in x's dtype through ops::gemm.
void prefill_int(const Tensor& x, const PackedLinear& w, Tensor& y, const Output& out) {
  const int64_t M = x.size(0), K = w.cols, N = w.rows;
  const DType dt = x.dtype();
  const size_t esize = dtype_size(dt);
  // x in packed column order, in its own dtype.
  Tensor xp = x;
  if (w.perm.defined()) {
    char* dst = call_scratch<char>(kSlotX, M * K * int64_t(esize));  // [M][K]
    const char* src = static_cast<const char*>(x.data());
    const int32_t* perm = w.perm.data_as<const int32_t>();
    for (int64_t m = 0; m < M; ++m)
      for (int64_t j = 0; j < K; ++j)
        std::memcpy(dst + (m * K + j) * esize, src + (m * K + perm[j]) * esize, esize);
    xp = Tensor::from_blob(dst, {M, K}, dt);
  }
  // Rows per tile: about 4 MiB of W^, a whole number of packed tiles.
  const int64_t padded = (N + kT - 1) / kT * kT;
  const int64_t rows_per_tile =
      std::min(padded, std::max<int64_t>(64, (int64_t(4) << 20) / (K * int64_t(esize)) / kT * kT));
  char* tile = call_scratch<char>(kSlotTile, rows_per_tile * K * int64_t(esize));  // [rows][K]
  float* part = call_scratch<float>(kSlotOut, M * rows_per_tile);                  // [M][rows]
  for (int64_t n0 = 0; n0 < N; n0 += rows_per_tile) {
    const int64_t n = std::min(rows_per_tile, N - n0);
    const int64_t t0 = n0 / kT, nt = (n + kT - 1) / kT;
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < nt; ++i) {
      const int64_t rows = std::min(kT, n - i * kT);
      if (dt == DType::f32) {
        dequantize_tile(w, t0 + i, rows, reinterpret_cast<float*>(tile) + i * kT * K, K);
      } else {
        float* f = worker_scratch(kT * K);  // [16][K]
        dequantize_tile(w, t0 + i, rows, f, K);
        uint16_t* dst = reinterpret_cast<uint16_t*>(tile) + i * kT * K;
        for (int64_t e = 0; e < rows * K; ++e) dst[e] = f32_to_bf16(f[e]);
      }
    }
    const Tensor wt = Tensor::from_blob(tile, {n, K}, dt);
    GemmOptions g;
    g.trans_b = true;
    if (n == N) {  // one tile: straight into y
      g.beta = out.beta;
      ops::gemm(xp, wt, y, g);
      return;
    }
    Tensor pt = Tensor::from_blob(part, {M, n}, DType::f32);
    ops::gemm(xp, wt, pt, g);
    copy_columns(part, M, n0, n, out);
  }
}

// M > 16, bf16: ops::gemm on W itself, x rounded to bf16 first when it is f32.
void prefill_bf16(const Tensor& x, const PackedLinear& w, Tensor& y, const Output& out) {
  const int64_t M = x.size(0), K = x.size(1);
  Tensor xb = x;
  if (x.dtype() == DType::f32) {
    uint16_t* dst = call_scratch<uint16_t>(kSlotX, M * K);  // [M][K]
    const float* src = x.data_as<const float>();
    for (int64_t i = 0; i < M * K; ++i) dst[i] = f32_to_bf16(src[i]);
    xb = Tensor::from_blob(dst, {M, K}, DType::bf16);
  }
  GemmOptions g;
  g.trans_b = true;
  g.beta = out.beta;
  ops::gemm(xb, w.data, y, g);
}

// Whether the decode kernels can run the members of a group in one region: decode calls (every x_i
// 1 to 16 rows, or any number batch-invariant; int8 activations or bf16), every member of one
// format, one K and one column order, every x of one dtype.
bool one_region(std::span<const Tensor* const> x, std::span<const PackedLinear* const> w,
                const PackedLinearOptions& opt) {
  const PackedLinear& w0 = *w[0];
  if (opt.exact && w0.format != WeightFormat::bf16) return false;
  for (size_t i = 0; i < w.size(); ++i) {
    const PackedLinear& m = *w[i];
    const int64_t M = x[i]->size(0);
    if (M < 1 || (M > kMaxM && !opt.batch_invariant) || x[i]->dtype() != x[0]->dtype())
      return false;
    if (m.format != w0.format || m.cols != w0.cols) return false;
    if (m.perm.defined() != w0.perm.defined()) return false;
    if (m.perm.defined() && m.perm.data() != w0.perm.data() &&
        std::memcmp(m.perm.data(), w0.perm.data(), size_t(m.cols) * sizeof(int32_t)) != 0)
      return false;
  }
  return true;
}

Output output_of(const PackedLinear& w, Tensor& y, float beta) {
  Output out;
  out.y = y.data();
  out.bf16 = y.dtype() == DType::bf16;
  out.beta = beta;
  out.N = w.rows;
  return out;
}

// Member i's x as the kernels read it: the first member with the same x (its data) did the work.
int64_t first_with_x(std::span<const Tensor* const> x, size_t i) {
  for (size_t j = 0; j < i; ++j)
    if (x[j]->data() == x[i]->data() && x[j]->size(0) == x[i]->size(0)) return int64_t(j);
  return int64_t(i);
}

// The decode kernels over every member (one_region holds), in one parallel region.
void decode_group(std::span<const Tensor* const> x, std::span<const PackedLinear* const> w,
                  std::span<Tensor* const> y, const PackedLinearOptions& opt) {
  const Kernels& Kn = kernels();
  const size_t n = w.size();
  ORIGAMI_CHECK(n <= kMaxGroup, "packed_linear_group: at most ", kMaxGroup, " linears, got ", n);
  const int64_t K = w[0]->cols;
  int64_t rows = 0;  // of the distinct x's
  for (size_t i = 0; i < n; ++i)
    if (first_with_x(x, i) == int64_t(i)) rows += x[i]->size(0);
  // Each member's units (bf16: rows; int: tiles of 16 rows), one range over all of them. Members
  // share K and the format, so a unit reads the same bytes in every member. `bytes`: what the
  // passes over the rows of x read of W (from memory, then from cache), which decides the threads.
  int64_t first[kMaxGroup + 1] = {};
  int64_t bytes = 0;
  if (w[0]->format == WeightFormat::bf16) {
    Bf16Problem P[kMaxGroup];
    const int64_t Kp = (K + kB - 1) / kB * kB;
    uint16_t* xb = call_scratch<uint16_t>(kSlotX, rows * Kp);  // the x's rounded to bf16, [Kp] rows
    int64_t row = 0;
    for (size_t i = 0; i < n; ++i) {
      const int64_t M = x[i]->size(0), j = first_with_x(x, i);
      if (j == int64_t(i)) {
        uint16_t* rounded = xb + row * Kp;
        P[i].x = rounded;
        row += M;
        for (int64_t m = 0; m < M; ++m) {
          uint16_t* dst = rounded + m * Kp;
          if (x[i]->dtype() == DType::bf16) {
            std::memcpy(dst, x[i]->data_as<const uint16_t>() + m * K, size_t(K) * 2);
          } else {
            const float* src = x[i]->data_as<const float>() + m * K;
            for (int64_t k = 0; k < K; ++k) dst[k] = f32_to_bf16(src[k]);
          }
          std::fill(dst + K, dst + Kp, uint16_t(0));
        }
      } else {
        P[i].x = P[j].x;
      }
      P[i].invariant = opt.batch_invariant;
      P[i].N = w[i]->rows;
      P[i].K = K;
      P[i].Kp = Kp;
      P[i].M = M;
      P[i].w = w[i]->data.data_as<const uint16_t>();
      P[i].out = output_of(*w[i], *y[i], opt.beta);
      first[i + 1] = first[i] + P[i].N;
      bytes += P[i].N * K * 2 * passes(M, kBf16RowsX);
    }
    split_units(first[n], bytes, [&](int64_t u0, int64_t u1) {
      for (size_t i = 0; i < n; ++i) {
        const int64_t a = std::max(u0, first[i]), b = std::min(u1, first[i + 1]);
        if (a < b) Kn.bf16_rows(P[i], a - first[i], b - first[i]);
      }
    });
    return;
  }
  IntProblem P[kMaxGroup];
  const int64_t nb = K / kB;
  int8_t* xq = call_scratch<int8_t>(kSlotXq, rows * K);     // [rows][K]
  float* xs = call_scratch<float>(kSlotXScale, rows * nb);  // [rows][K/32]
  float* xsum = call_scratch<float>(kSlotXSum, rows * nb);  // [rows][K/32]
  int64_t row = 0;
  for (size_t i = 0; i < n; ++i) {
    const PackedLinear& m = *w[i];
    const int64_t M = x[i]->size(0), j = first_with_x(x, i);
    if (j == int64_t(i)) {
      int8_t* q = xq + row * K;
      float *sc = xs + row * nb, *sum = xsum + row * nb;
      row += M;
      Kn.quantize_rows(f32_packed_rows(*x[i], m), M, K, q, sc, sum);
      P[i].xq = q;
      P[i].xs = sc;
      P[i].xsum = sum;
    } else {
      P[i].xq = P[j].xq;
      P[i].xs = P[j].xs;
      P[i].xsum = P[j].xsum;
    }
    P[i].data = m.data.data_as<const uint8_t>();
    P[i].scales = m.scales.data_as<const float>();
    P[i].zeros = m.zeros.data_as<const float>();
    P[i].N = m.rows;
    P[i].K = K;
    P[i].G = K / m.group_size;
    P[i].group = m.group_size;
    P[i].M = M;
    P[i].int4 = m.format == WeightFormat::int4;
    P[i].out = output_of(m, *y[i], opt.beta);
    const int64_t tiles = (m.rows + kT - 1) / kT;
    first[i + 1] = first[i] + tiles;
    bytes += tiles * tile_bytes(P[i].int4, K) * passes(M, kIntRowsX);
  }
  split_units(first[n], bytes, [&](int64_t u0, int64_t u1) {
    for (size_t i = 0; i < n; ++i) {
      const int64_t a = std::max(u0, first[i]), b = std::min(u1, first[i + 1]);
      if (a < b) Kn.int_tiles(P[i], a - first[i], b - first[i]);
    }
  });
}

}  // namespace

void packed_linear(const Tensor& x, const PackedLinear& w, Tensor& y,
                   const PackedLinearOptions& opt) {
  const int64_t M = x.size(0);
  if (M == 0 || w.rows == 0) return;
  const Output out = output_of(w, y, opt.beta);
  const Tensor* xp = &x;
  const PackedLinear* wp = &w;
  Tensor* yp = &y;
  if (opt.batch_invariant) {
    // The decode kernels on every row, in one region: a row's result is the same in any M.
    if (opt.exact && w.format != WeightFormat::bf16) return decode_int_exact(x, w, out);
    return decode_group({&xp, 1}, {&wp, 1}, {&yp, 1}, opt);
  }
  if (w.format == WeightFormat::bf16) {
    if (M > kMaxM)
      prefill_bf16(x, w, y, out);
    else
      decode_group({&xp, 1}, {&wp, 1}, {&yp, 1}, opt);
  } else if (M > kMaxM) {
    prefill_int(x, w, y, out);
  } else if (opt.exact) {
    decode_int_exact(x, w, out);
  } else {
    decode_group({&xp, 1}, {&wp, 1}, {&yp, 1}, opt);
  }
}

void packed_linear_group(std::span<const Tensor* const> x, std::span<const PackedLinear* const> w,
                         std::span<Tensor* const> y, const PackedLinearOptions& opt) {
  if (one_region(x, w, opt)) return decode_group(x, w, y, opt);
  for (size_t i = 0; i < w.size(); ++i) cpu::packed_linear(*x[i], *w[i], *y[i], opt);
}

const char* qlinear_isa() {
  return kernels().name;
}

std::vector<std::string> qlinear_isas() {
  std::vector<std::string> names;
  for (const Kernels& k : kernel_table()) names.push_back(k.name);
  return names;
}

void qlinear_force_isa(const char* name) {
  if (!name) {
    forced.store(nullptr);
    return;
  }
  for (const Kernels& k : kernel_table())
    if (std::string(k.name) == name) {
      forced.store(&k);
      return;
    }
  ORIGAMI_FAIL("packed_linear: instruction set '", name, "' is not available on this CPU");
}

}  // namespace origami::ops::cpu

#else  // ---- kernels of one instruction set
       // -------------------------------------------------------

namespace origami::ops::cpu::qlinear_detail::ORIGAMI_ATTENTION_ISA {

// Every variant stores its results through the same scalar Output::store; the results of a tile of
// the int kernels are res [MB][16] (rows of x, then the tile's 16 rows).

#if ORIGAMI_ISA_AVX512

// acc + the sums over 4-byte groups of unsigned w times signed x (vpdpbusd; exact, no
// saturation). small: every byte of w is at most 15.
template <bool small>
inline __m512i dot_u8s8(__m512i acc, __m512i w, __m512i x) {
#if ORIGAMI_ISA_BF16_VNNI
  (void)small;
  return _mm512_dpbusd_epi32(acc, w, x);
#else
  // vpmaddubsw saturates at 16 bits: fine for levels up to 15 (2 * 15 * 128), so int8 levels are
  // split in nibbles, the high one weighted 16 by vpmaddwd.
  const __m512i ones = _mm512_set1_epi16(1);
  if constexpr (small) {
    return _mm512_add_epi32(acc, _mm512_madd_epi16(_mm512_maddubs_epi16(w, x), ones));
  } else {
    const __m512i low4 = _mm512_set1_epi8(0x0F);
    const __m512i lo = _mm512_and_si512(w, low4);
    const __m512i hi = _mm512_and_si512(_mm512_srli_epi16(w, 4), low4);
    acc = _mm512_add_epi32(acc, _mm512_madd_epi16(_mm512_maddubs_epi16(lo, x), ones));
    return _mm512_add_epi32(acc,
                            _mm512_madd_epi16(_mm512_maddubs_epi16(hi, x), _mm512_set1_epi16(16)));
  }
#endif
}

// acc + w . x over pairs of bf16 (vdpbf16ps; without it, as two f32 FMAs per vector).
inline __m512 dot_bf16(__m512 acc, __m512i w, __m512i x) {
#if ORIGAMI_ISA_BF16_VNNI
  return _mm512_dpbf16_ps(acc, (__m512bh)w, (__m512bh)x);
#else
  const __m512i high = _mm512_set1_epi32(int(0xFFFF0000u));
  acc = _mm512_fmadd_ps(_mm512_castsi512_ps(_mm512_slli_epi32(w, 16)),
                        _mm512_castsi512_ps(_mm512_slli_epi32(x, 16)), acc);
  return _mm512_fmadd_ps(_mm512_castsi512_ps(_mm512_and_si512(w, high)),
                         _mm512_castsi512_ps(_mm512_and_si512(x, high)), acc);
#endif
}

inline __m512i broadcast4(const int8_t* p) {
  int32_t v;
  std::memcpy(&v, p, 4);
  return _mm512_set1_epi32(v);
}

// res [MB][16] = one tile against rows [m0, m0 + MB) of x.
template <int MB, bool int4>
void int_tile(const IntProblem& P, int64_t t, int64_t m0, float* res) {
  const int64_t K = P.K, nb = K / kB, blocks_per_group = P.group / kB;
  const uint8_t* wt = P.data + t * tile_bytes(int4, K);
  const float* st = P.scales + t * P.G * kT;
  const float* zt = P.zeros + t * P.G * kT;
  const __m512i low4 = _mm512_set1_epi8(0x0F);
  __m512 acc[MB];
#pragma GCC unroll 8
  for (int m = 0; m < MB; ++m) acc[m] = _mm512_setzero_ps();
  for (int64_t g = 0; g < P.G; ++g) {
    const __m512 s = _mm512_loadu_ps(st + g * kT), z = _mm512_loadu_ps(zt + g * kT);
    for (int64_t b = g * blocks_per_group; b < (g + 1) * blocks_per_group; ++b) {
      __m512i w[8];
      if constexpr (int4) {
        const uint8_t* p = wt + b * kB * kT / 2;
        // The lines kInt4PrefetchBytes ahead asked for now: see kInt4PrefetchBytes.
#pragma GCC unroll 4
        for (int j = 0; j < 4; ++j)
          _mm_prefetch(reinterpret_cast<const char*>(p + kInt4PrefetchBytes + 64 * j), _MM_HINT_T0);
#pragma GCC unroll 4
        for (int j = 0; j < 4; ++j) {
          const __m512i v = _mm512_loadu_si512(p + 64 * j);
          w[j] = _mm512_and_si512(v, low4);
          w[j + 4] = _mm512_and_si512(_mm512_srli_epi16(v, 4), low4);
        }
      } else {
        const uint8_t* p = wt + b * kB * kT;
#pragma GCC unroll 8
        for (int j = 0; j < 8; ++j) w[j] = _mm512_loadu_si512(p + 64 * j);
      }
#pragma GCC unroll 8
      for (int m = 0; m < MB; ++m) {
        const int64_t row = m0 + m;
        const int8_t* xb = P.xq + row * K + b * kB;
        __m512i d0 = _mm512_setzero_si512(), d1 = _mm512_setzero_si512();
#pragma GCC unroll 4
        for (int j = 0; j < 8; j += 2) {
          d0 = dot_u8s8<int4>(d0, w[j], broadcast4(xb + 4 * j));
          d1 = dot_u8s8<int4>(d1, w[j + 1], broadcast4(xb + 4 * j + 4));
        }
        const __m512 d = _mm512_cvtepi32_ps(_mm512_add_epi32(d0, d1));
        const __m512 exact = _mm512_fnmadd_ps(z, _mm512_set1_ps(P.xsum[row * nb + b]), d);
        acc[m] =
            _mm512_fmadd_ps(_mm512_mul_ps(exact, _mm512_set1_ps(P.xs[row * nb + b])), s, acc[m]);
      }
    }
  }
#pragma GCC unroll 8
  for (int m = 0; m < MB; ++m) _mm512_storeu_ps(res + m * kT, acc[m]);
}

// res[i] = _mm512_reduce_add_ps(v[i]) for i < n (at most 8; the others read as zeros), bit for
// bit, eight at once: the same tree of additions (lanes j + (j + 8), then j + (j + 4), j + (j + 2),
// j + (j + 1)) with the vectors' lanes transposed on the way, about a third of the instructions of
// eight reductions one by one. Small K is where it counts: a dot over 256 columns is 8 vdpbf16ps.
inline void reduce_add8(const __m512* v, int n, float* res) {
  __m512 a[8];
#pragma GCC unroll 8
  for (int i = 0; i < 8; ++i) a[i] = i < n ? v[i] : _mm512_setzero_ps();
  __m512 s[4];  // s[i]: lanes j + (j + 8) of a[2i] in lanes 0-7, of a[2i + 1] in lanes 8-15
#pragma GCC unroll 4
  for (int i = 0; i < 4; ++i)
    s[i] = _mm512_add_ps(_mm512_shuffle_f32x4(a[2 * i], a[2 * i + 1], _MM_SHUFFLE(1, 0, 1, 0)),
                         _mm512_shuffle_f32x4(a[2 * i], a[2 * i + 1], _MM_SHUFFLE(3, 2, 3, 2)));
  // + (j + 4): 128-bit lane k of w0 holds a[k]'s four partial sums, of w1 a[k + 4]'s.
  const __m512 w0 = _mm512_add_ps(_mm512_shuffle_f32x4(s[0], s[1], _MM_SHUFFLE(2, 0, 2, 0)),
                                  _mm512_shuffle_f32x4(s[0], s[1], _MM_SHUFFLE(3, 1, 3, 1)));
  const __m512 w1 = _mm512_add_ps(_mm512_shuffle_f32x4(s[2], s[3], _MM_SHUFFLE(2, 0, 2, 0)),
                                  _mm512_shuffle_f32x4(s[2], s[3], _MM_SHUFFLE(3, 1, 3, 1)));
  // + (j + 2): lane k holds [a[k]: 2 sums, a[k + 4]: 2 sums]; then + (j + 1).
  const __m512 c = _mm512_add_ps(_mm512_shuffle_ps(w0, w1, _MM_SHUFFLE(1, 0, 1, 0)),
                                 _mm512_shuffle_ps(w0, w1, _MM_SHUFFLE(3, 2, 3, 2)));
  const __m512 d = _mm512_add_ps(_mm512_shuffle_ps(c, c, _MM_SHUFFLE(2, 0, 2, 0)),
                                 _mm512_shuffle_ps(c, c, _MM_SHUFFLE(3, 1, 3, 1)));
  // a[k] is now in lane 4k, a[k + 4] in lane 4k + 1.
  const __m512 order =
      _mm512_permutexvar_ps(_mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 0, 0, 0, 0, 0, 0, 0, 0), d);
  alignas(32) float out[8];
  _mm256_store_ps(out, _mm512_castps512_ps256(order));
  for (int i = 0; i < n; ++i) res[i] = out[i];
}

// res [R][MB] = rows [n, n + R) of W against rows [m0, m0 + MB) of x, U vectors of columns per
// step: R * MB * U independent accumulators (which R, MB and U: Bf16Tables below). The U
// accumulators of a dot are added in order, then reduced by reduce_add8's tree.
template <int R, int MB, int U>
void bf16_block(const Bf16Problem& P, int64_t n, int64_t m0, float* res) {
  const int64_t K = P.K;
  const uint16_t* w = P.w + n * K;
  const uint16_t* x = P.x + m0 * P.Kp;
  __m512 acc[R][MB][U];
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int m = 0; m < MB; ++m)
#pragma GCC unroll 8
      for (int u = 0; u < U; ++u) acc[r][m][u] = _mm512_setzero_ps();
  auto step = [&](int64_t k, int u, __mmask32 mask) {
    __m512i wv[R];
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) wv[r] = _mm512_maskz_loadu_epi16(mask, w + r * K + k);
#pragma GCC unroll 4
    for (int m = 0; m < MB; ++m) {
      const __m512i xv = _mm512_loadu_si512(x + m * P.Kp + k);
#pragma GCC unroll 4
      for (int r = 0; r < R; ++r) acc[r][m][u] = dot_bf16(acc[r][m][u], wv[r], xv);
    }
  };
  int64_t k = 0;
  for (; k + U * kB <= K; k += U * kB)
#pragma GCC unroll 8
    for (int u = 0; u < U; ++u) step(k + u * kB, u, __mmask32(~0u));
  for (; k < K; k += kB)  // x is zero past K, W is not read there
    step(k, 0, K - k >= kB ? __mmask32(~0u) : __mmask32((1u << (K - k)) - 1));
  __m512 sums[R * MB];
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int m = 0; m < MB; ++m) {
      __m512 sum = acc[r][m][0];
#pragma GCC unroll 8
      for (int u = 1; u < U; ++u) sum = _mm512_add_ps(sum, acc[r][m][u]);
      sums[r * MB + m] = sum;
    }
  if constexpr (R * MB == 1) {
    res[0] = _mm512_reduce_add_ps(sums[0]);
  } else {
#pragma GCC unroll 2
    for (int i = 0; i < R * MB; i += 8) reduce_add8(sums + i, std::min(8, R * MB - i), res + i);
  }
}

void quantize_rows(const float* x, int64_t M, int64_t K, int8_t* xq, float* xs, float* xsum) {
  const int64_t nb = K / kB;
  for (int64_t m = 0; m < M; ++m)
    for (int64_t b = 0; b < nb; ++b) {
      const float* p = x + m * K + b * kB;
      const __m512 v0 = _mm512_loadu_ps(p), v1 = _mm512_loadu_ps(p + 16);
      const float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(v0), _mm512_abs_ps(v1)));
      const float inv = amax > 0.0f ? 127.0f / amax : 0.0f;
      const __m512i q0 = _mm512_cvtps_epi32(_mm512_mul_ps(v0, _mm512_set1_ps(inv)));
      const __m512i q1 = _mm512_cvtps_epi32(_mm512_mul_ps(v1, _mm512_set1_ps(inv)));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(xq + m * K + b * kB), _mm512_cvtepi32_epi8(q0));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(xq + m * K + b * kB + 16),
                       _mm512_cvtepi32_epi8(q1));
      xs[m * nb + b] = amax / 127.0f;
      xsum[m * nb + b] = float(_mm512_reduce_add_epi32(_mm512_add_epi32(q0, q1)));
    }
}

#else  // portable C++ (vectorized by the compiler for the variant's target)

template <int MB, bool int4>
void int_tile(const IntProblem& P, int64_t t, int64_t m0, float* res) {
  const int64_t K = P.K, nb = K / kB, blocks_per_group = P.group / kB;
  const uint8_t* wt = P.data + t * tile_bytes(int4, K);
  const float* st = P.scales + t * P.G * kT;
  const float* zt = P.zeros + t * P.G * kT;
  for (int64_t i = 0; i < MB * kT; ++i) res[i] = 0.0f;
  uint8_t w[kB][kT];  // the block's levels, [column][row]
  for (int64_t b = 0; b < nb; ++b) {
    const int64_t g = b / blocks_per_group;
    for (int64_t c = 0; c < kB; ++c)
      for (int64_t r = 0; r < kT; ++r) {
        if constexpr (int4) {
          const int64_t lo = c % 16;
          const uint8_t byte = wt[b * kB * kT / 2 + ((lo / 4) * kT + r) * 4 + lo % 4];
          w[c][r] = c < 16 ? byte & 15 : byte >> 4;
        } else {
          w[c][r] = wt[b * kB * kT + ((c / 4) * kT + r) * 4 + c % 4];
        }
      }
    for (int m = 0; m < MB; ++m) {
      const int64_t row = m0 + m;
      const int8_t* xb = P.xq + row * K + b * kB;
      int32_t d[kT] = {};
      for (int64_t c = 0; c < kB; ++c)
        for (int64_t r = 0; r < kT; ++r) d[r] += int32_t(w[c][r]) * xb[c];
      const float xsum = P.xsum[row * nb + b], xs = P.xs[row * nb + b];
      for (int64_t r = 0; r < kT; ++r) {
        const float exact = float(d[r]) - zt[g * kT + r] * xsum;
        res[m * kT + r] += exact * xs * st[g * kT + r];
      }
    }
  }
}

template <int R, int MB, int U>
void bf16_block(const Bf16Problem& P, int64_t n, int64_t m0, float* res) {
  const int64_t K = P.K;
  for (int r = 0; r < R; ++r)
    for (int m = 0; m < MB; ++m) {
      const uint16_t* w = P.w + (n + r) * K;
      const uint16_t* x = P.x + (m0 + m) * P.Kp;
      float lanes[16] = {};  // independent partial sums (vectorizable)
      int64_t k = 0;
      for (; k + 16 <= K; k += 16)
        for (int l = 0; l < 16; ++l) lanes[l] += bf16_to_f32(w[k + l]) * bf16_to_f32(x[k + l]);
      for (; k < K; ++k) lanes[0] += bf16_to_f32(w[k]) * bf16_to_f32(x[k]);
      float s = 0.0f;
      for (float v : lanes) s += v;
      res[r * MB + m] = s;
    }
}

void quantize_rows(const float* x, int64_t M, int64_t K, int8_t* xq, float* xs, float* xsum) {
  const int64_t nb = K / kB;
  for (int64_t m = 0; m < M; ++m)
    for (int64_t b = 0; b < nb; ++b) {
      const float* p = x + m * K + b * kB;
      float amax = 0.0f;
      for (int64_t c = 0; c < kB; ++c) amax = std::max(amax, std::fabs(p[c]));
      const float inv = amax > 0.0f ? 127.0f / amax : 0.0f;
      int32_t sum = 0;
      for (int64_t c = 0; c < kB; ++c) {
        const float v = p[c] * inv;
        const int32_t q = v == v ? int32_t(std::nearbyint(v)) : 0;
        xq[m * K + b * kB + c] = int8_t(q);
        sum += q;
      }
      xs[m * nb + b] = amax / 127.0f;
      xsum[m * nb + b] = float(sum);
    }
}

#endif  // ORIGAMI_ISA_AVX512

template <bool int4, size_t... I>
constexpr auto int_tile_table(std::index_sequence<I...>) {
  return std::array<void (*)(const IntProblem&, int64_t, int64_t, float*), sizeof...(I)>{
      &int_tile<int(I) + 1, int4>...};
}

// Tiles [t0, t1) against every row of x, results stored.
void int_tiles(const IntProblem& P, int64_t t0, int64_t t1) {
  static constexpr auto table8 = int_tile_table<false>(std::make_index_sequence<kIntRowsX>());
  static constexpr auto table4 = int_tile_table<true>(std::make_index_sequence<kIntRowsX>());
  const auto& table = P.int4 ? table4 : table8;
  alignas(64) float res[kIntRowsX * kT];  // [MB][16]
  for (int64_t t = t0; t < t1; ++t) {
    const int64_t rows = std::min(kT, P.N - t * kT);
    for (int64_t m0 = 0; m0 < P.M; m0 += kIntRowsX) {
      const int64_t MB = std::min<int64_t>(kIntRowsX, P.M - m0);
      table[size_t(MB - 1)](P, t, m0, res);
      for (int64_t m = 0; m < MB; ++m)
        for (int64_t r = 0; r < rows; ++r) P.out.store(m0 + m, t * kT + r, res[m * kT + r]);
    }
  }
}

using Bf16BlockFn = void (*)(const Bf16Problem&, int64_t, int64_t, float*);
// bf16_block<R, MB, U> for MB = 1 .. kBf16RowsX.
template <int R, int U, size_t... I>
constexpr std::array<Bf16BlockFn, sizeof...(I)> bf16_block_table(std::index_sequence<I...>) {
  return {&bf16_block<R, int(I) + 1, U>...};
}

// y[m, n0 : n0 + count] = v[m * kT ...] (+ beta * y) for every row m of x, count <= 16: what
// Output::store does one by one, 16 at a time (the same arithmetic, bit for bit: f32 r + beta * y,
// then bf16's round-to-nearest-even with its NaN rule).
void store_strip(const Output& out, const float* v, int64_t M, int64_t n0, int64_t count) {
#if ORIGAMI_ISA_AVX512
  const __mmask16 mask = __mmask16((1u << count) - 1);
  const __m512 beta = _mm512_set1_ps(out.beta);
  for (int64_t m = 0; m < M; ++m) {
    __m512 r = _mm512_loadu_ps(v + m * kT);
    const int64_t i = m * out.N + n0;
    if (out.bf16) {
      uint16_t* p = static_cast<uint16_t*>(out.y) + i;
      if (out.beta != 0.0f) {
        const __m512i old = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(mask, p));
        r = _mm512_add_ps(r, _mm512_mul_ps(beta, _mm512_castsi512_ps(_mm512_slli_epi32(old, 16))));
      }
      const __m512i u = _mm512_castps_si512(r);
      const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
      __m512i b = _mm512_srli_epi32(
          _mm512_add_epi32(u, _mm512_add_epi32(_mm512_set1_epi32(0x7fff), lsb)), 16);
      const __mmask16 nan = _mm512_cmpgt_epu32_mask(
          _mm512_and_si512(u, _mm512_set1_epi32(0x7fffffff)), _mm512_set1_epi32(0x7f800000));
      b = _mm512_mask_mov_epi32(b, nan,
                                _mm512_or_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(0x40)));
      _mm256_mask_storeu_epi16(p, mask, _mm512_cvtepi32_epi16(b));
    } else {
      float* p = static_cast<float*>(out.y) + i;
      if (out.beta != 0.0f)
        r = _mm512_add_ps(r, _mm512_mul_ps(beta, _mm512_maskz_loadu_ps(mask, p)));
      _mm512_mask_storeu_ps(p, mask, r);
    }
  }
#else
  for (int64_t m = 0; m < M; ++m)
    for (int64_t j = 0; j < count; ++j) out.store(m, n0 + j, v[m * kT + j]);
#endif
}

// Which block kernel, by the rows of x; within a call every dot of one M is summed in one order
// whichever R covers its row of W (a thread's share can end with fewer rows left than R), so the
// results do not depend on how the rows of W are split among threads or group members.
//  - M = 1, not batch-invariant: one row of W, 8 accumulator vectors (one sequential stream of W
//    per thread: 95-120% of a streaming read, where four rows at once gave 70-85%).
//  - M > 1, and batch-invariant calls at any M: four rows of W, one accumulator per dot (R * MB =
//    16 in all), the loads of x shared four ways. One accumulator per dot whatever M is what batch
//    invariance needs: a dot is summed in the same order in any M (R and MB only decide how many
//    dots run side by side). bench_qlinear against two rows of W with two accumulators per dot:
//    15-35% faster at M = 2-16 on the 1.1B shapes, 1.3-2x at M = 16-160 on 256-wide layers, the
//    same at M = 1.
struct Bf16Tables {
  static constexpr auto seq = std::make_index_sequence<kBf16RowsX>();
  static constexpr auto one = bf16_block_table<1, 8>(seq);
  static constexpr auto four = bf16_block_table<4, 1>(seq), four_tail = bf16_block_table<1, 1>(seq);
};

// Rows [n0, n1) of W against every row of x, results stored: in strips of 16 rows of W, whose
// results for every row of x are gathered first and stored 16 at a time.
void bf16_rows(const Bf16Problem& P, int64_t n0, int64_t n1) {
  using T = Bf16Tables;
  const bool wide = P.M > 1 || P.invariant;
  thread_local std::vector<float> strip;  // [M][16]
  if (strip.size() < size_t(P.M * kT)) strip.resize(size_t(P.M * kT));
  float res[4 * kBf16RowsX];  // [R][MB]
  for (int64_t s0 = n0; s0 < n1; s0 += kT) {
    const int64_t s1 = std::min(n1, s0 + kT);
    for (int64_t n = s0; n < s1;) {
      // (a range's last rows may take a narrower block: the same sums, see Bf16Tables)
      const int64_t R = wide && s1 - n >= 4 ? 4 : 1;
      const auto& table = !wide ? T::one : R == 4 ? T::four : T::four_tail;
      for (int64_t m0 = 0; m0 < P.M; m0 += kBf16RowsX) {
        const int64_t MB = std::min<int64_t>(kBf16RowsX, P.M - m0);
        table[size_t(MB - 1)](P, n, m0, res);
        for (int64_t r = 0; r < R; ++r)
          for (int64_t m = 0; m < MB; ++m)
            strip[size_t((m0 + m) * kT + n - s0 + r)] = res[r * MB + m];
      }
      n += R;
    }
    store_strip(P.out, strip.data(), P.M, s0, s1 - s0);
  }
}

}  // namespace origami::ops::cpu::qlinear_detail::ORIGAMI_ATTENTION_ISA

#endif  // ORIGAMI_ATTENTION_ISA
