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
//   f32, bf16  W itself, [N][K] row-major (no tiles: a view of the caller's buffer).
//
// Decode (M <= 16), every output split over the threads in contiguous ranges of tiles (rows), taken
// from a shared counter in shrinking pieces (split_units):
//  - int formats: x's rows are quantized once per call to int8 per block of 32 packed columns,
//    scale sx = max|x| / 127 and xq = round-to-nearest-even(x * (127 / max|x|)) (f32 arithmetic),
//    with the sum of the block's xq. A tile then needs, per row m of x and block b, the integer
//    dot d (vpdpbusd: unsigned levels times signed xq) of 16 output rows at once, and
//      acc += ((float(d) - zero * xsum) * sx) * scale      (16 lanes; d - zero * xsum is exact)
//    No horizontal sums: a tile's 16 results are one vector. int4 also prefetches its weights
//    2 KiB ahead (kInt4PrefetchBytes). Without VNNI the same integer dot
//    comes from vpmaddubsw + vpmaddwd (int8 levels split in nibbles so nothing saturates).
//  - bf16: x rounded to bf16 (nearest even) once per call; one or four rows of W (by M; see
//    Bf16Tables) dotted with up to 4 rows of x at a time (vdpbf16ps, f32 accumulation, 4 to 16
//    independent accumulators, their horizontal sums eight at a time).
//  - f32: the same blocks with f32 FMAs, 16 columns a step, on x as it is (bf16 x widened once).
//  - exact (int formats): W^ tile by tile in f32, dotted with x in f32.
// Prefill (M > 16): W^ dequantized tile of rows by tile of rows into a buffer of x's dtype, each
// tile one ops::gemm (oneDNN) into an f32 buffer, copied into y's columns; f32 and bf16 W go to
// ops::gemm directly.
//
// Kernels (ops/cpu/qlinear_kernels.h) are compiled once per instruction set
// (ops/cpu/isa_variants.h, with the BF16 + VNNI variant), the best one this CPU runs picked at run
// time (qlinear_isa, qlinear_force_isa).
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
#include <type_traits>
#include <utility>
#include <vector>

#include "ops/cpu/bf16_simd.h"
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

struct F32Problem {
  const float* w = nullptr;  // [N][K]
  const float* x = nullptr;  // [M][Kp] (Kp >= K: x's row stride)
  int64_t N = 0, K = 0, Kp = 0, M = 0;
  bool invariant = false;  // as Bf16Problem's
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
  decltype(&generic::f32_rows) f32_rows;
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
    ks.push_back({"avx512_bf16_vnni", &avx512_bf16_vnni::bf16_rows, &avx512_bf16_vnni::f32_rows,
                  &avx512_bf16_vnni::int_tiles, &avx512_bf16_vnni::quantize_rows});
  if (avx512)
    ks.push_back({"avx512", &avx512::bf16_rows, &avx512::f32_rows, &avx512::int_tiles,
                  &avx512::quantize_rows});
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
    ks.push_back(
        {"avx2", &avx2::bf16_rows, &avx2::f32_rows, &avx2::int_tiles, &avx2::quantize_rows});
#endif
  ks.push_back({"generic", &generic::bf16_rows, &generic::f32_rows, &generic::int_tiles,
                &generic::quantize_rows});
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

// split_units' smallest piece of work: a take of about 64 KiB of W, long enough that the hardware
// prefetcher's ramp-up at its start stays a small part of it (64 KiB and 256 KiB measured alike).
constexpr int64_t kMinTakeBytes = int64_t(64) << 10;

// Passes of the kernels over W for M rows of x, `per_pass` rows at a time: each pass reads all of W
// (the first from memory, the others from cache), so it is the measure of a call's work.
inline int64_t passes(int64_t M, int64_t per_pass) {
  return (M + per_pass - 1) / per_pass;
}

// fn(u0, u1) over `units` on the OpenMP threads, in pieces taken from a shared counter, guided:
// each take is half of what is left divided by the threads, at least about kMinTakeBytes of W, a
// multiple of `align` units. The first takes are long contiguous streams; the last are short, so a
// thread that woke late or lost its core to another process for a while leaves less of the call to
// wait for (with equal static shares the other thread spins at the end until the late one has done
// its whole share). `bytes` of W read in all (over every pass) decides whether more than one thread
// is worth waking. Which thread runs which units never changes a result (the kernels' sums do not
// depend on where a range starts or ends).
template <typename Fn>
void split_units(int64_t units, int64_t bytes, const Fn& fn, int64_t align = 1) {
  const int64_t nt =
      bytes < kMinParallelBytes ? 1 : std::min<int64_t>(omp_get_max_threads(), units);
  if (nt <= 1) {
    fn(int64_t(0), units);
    return;
  }
  // The smallest take: about kMinTakeBytes of W, whole multiples of `align`.
  const int64_t per_unit = std::max<int64_t>(1, bytes / units);
  const int64_t least =
      std::max<int64_t>(1, (kMinTakeBytes / per_unit + align - 1) / align) * align;
  std::atomic<int64_t> next{0};
#pragma omp parallel num_threads(int(nt))
  {
    const int64_t n = omp_get_num_threads();
    for (int64_t u0 = next.load(std::memory_order_relaxed); u0 < units;) {
      // (a failed exchange reloads u0)
      const int64_t u1 =
          std::min(units, u0 + std::max(least, (units - u0) / (2 * n) / align * align));
      if (next.compare_exchange_weak(u0, u1, std::memory_order_relaxed)) {
        fn(u0, u1);
        u0 = next.load(std::memory_order_relaxed);
      }
    }
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

// M > 16, f32: ops::gemm on W itself, x widened to f32 first when it is bf16 (and a bf16 y
// through an f32 buffer).
void prefill_f32(const Tensor& x, const PackedLinear& w, Tensor& y, const Output& out) {
  const int64_t M = x.size(0), K = x.size(1), N = w.rows;
  Tensor xf = x;
  if (x.dtype() == DType::bf16) {
    float* dst = call_scratch<float>(kSlotX, M * K);  // [M][K]
    const uint16_t* src = x.data_as<const uint16_t>();
    for (int64_t i = 0; i < M * K; ++i) dst[i] = bf16_to_f32(src[i]);
    xf = Tensor::from_blob(dst, {M, K}, DType::f32);
  }
  GemmOptions g;
  g.trans_b = true;
  if (y.dtype() == DType::f32) {
    g.beta = out.beta;
    ops::gemm(xf, w.data, y, g);
    return;
  }
  float* part = call_scratch<float>(kSlotOut, M * N);  // [M][N]
  Tensor pt = Tensor::from_blob(part, {M, N}, DType::f32);
  ops::gemm(xf, w.data, pt, g);
  copy_columns(part, M, 0, N, out);
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

bool is_int(WeightFormat f) {
  return f == WeightFormat::int8 || f == WeightFormat::int4;
}

// Whether the decode kernels can run the members of a group in one region: decode calls (every x_i
// 1 to 16 rows, or any number batch-invariant; int8 activations, f32 or bf16), every member of one
// format, one K and one column order, every x of one dtype.
bool one_region(std::span<const Tensor* const> x, std::span<const PackedLinear* const> w,
                const PackedLinearOptions& opt) {
  const PackedLinear& w0 = *w[0];
  if (opt.exact && is_int(w0.format)) return false;
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

// The dense formats' (f32, bf16) part of decode_group once each P[i].x is set: the rest of the
// problems, then every member's rows in one range over the threads (`Kp`: x's row stride).
template <typename Problem>
void dense_members(Problem* P, std::span<const Tensor* const> x,
                   std::span<const PackedLinear* const> w, std::span<Tensor* const> y,
                   const PackedLinearOptions& opt, int64_t Kp,
                   void (*rows_fn)(const Problem&, int64_t, int64_t)) {
  using Elem = std::remove_const_t<std::remove_pointer_t<decltype(P[0].w)>>;
  const size_t n = w.size();
  const int64_t K = w[0]->cols;
  int64_t first[kMaxGroup + 1] = {};
  int64_t bytes = 0;  // what the passes over x's rows read of W: decides the threads
  for (size_t i = 0; i < n; ++i) {
    const int64_t M = x[i]->size(0);
    P[i].invariant = opt.batch_invariant;
    P[i].N = w[i]->rows;
    P[i].K = K;
    P[i].Kp = Kp;
    P[i].M = M;
    P[i].w = w[i]->data.data_as<const Elem>();
    P[i].out = output_of(*w[i], *y[i], opt.beta);
    first[i + 1] = first[i] + P[i].N;
    bytes += P[i].N * K * int64_t(sizeof(Elem)) * passes(M, kBf16RowsX);
  }
  split_units(
      first[n], bytes,
      [&](int64_t u0, int64_t u1) {
        for (size_t i = 0; i < n; ++i) {
          const int64_t a = std::max(u0, first[i]), b = std::min(u1, first[i + 1]);
          if (a < b) rows_fn(P[i], a - first[i], b - first[i]);
        }
      },
      kT);  // whole strips of 16 rows
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
  // Each member's units (f32, bf16: rows, dense_members; int: tiles of 16 rows), one range over
  // all of them. Members share K and the format, so a unit reads the same bytes in every member.
  if (w[0]->format == WeightFormat::f32) {
    F32Problem P[kMaxGroup];
    // f32 x is read where it is; bf16 x widened once into one buffer of the distinct x's.
    float* xf = x[0]->dtype() == DType::bf16 ? call_scratch<float>(kSlotX, rows * K) : nullptr;
    int64_t row = 0;
    for (size_t i = 0; i < n; ++i) {
      const int64_t M = x[i]->size(0), j = first_with_x(x, i);
      if (j != int64_t(i)) {
        P[i].x = P[j].x;
      } else if (xf == nullptr) {
        P[i].x = x[i]->data_as<const float>();
      } else {
        float* dst = xf + row * K;
        row += M;
        const uint16_t* src = x[i]->data_as<const uint16_t>();
        for (int64_t e = 0; e < M * K; ++e) dst[e] = bf16_to_f32(src[e]);
        P[i].x = dst;
      }
    }
    return dense_members(P, x, w, y, opt, K, Kn.f32_rows);
  }
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
    }
    return dense_members(P, x, w, y, opt, Kp, Kn.bf16_rows);
  }
  IntProblem P[kMaxGroup];
  int64_t first[kMaxGroup + 1] = {};
  int64_t bytes = 0;  // what the passes over x's rows read of W: decides the threads
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
    if (opt.exact && is_int(w.format)) return decode_int_exact(x, w, out);
    return decode_group({&xp, 1}, {&wp, 1}, {&yp, 1}, opt);
  }
  if (w.format == WeightFormat::f32) {
    if (M > kMaxM)
      prefill_f32(x, w, y, out);
    else
      decode_group({&xp, 1}, {&wp, 1}, {&yp, 1}, opt);
  } else if (w.format == WeightFormat::bf16) {
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

#else  // ---- kernels of one instruction set ----------------------------------------------------

#include "ops/cpu/qlinear_kernels.h"

#endif  // ORIGAMI_ATTENTION_ISA
