// Packed linear layers (ops/qlinear.h) against a naive double-precision reference written here from
// the raw levels, scales, zeros and g_idx handed to pack_quantized (never from the packed tensors):
// every format and level width, act-order, every decode row count and the prefill path, f32 and
// bf16 activations and outputs, beta, exact; every CPU instruction set; bad arguments.
//
// The reference follows the contract of each path:
//  - int formats, CPU decode (M <= 16, not exact): x is quantized as the kernels do it, in packed
//    column order (columns sorted by group, stably): per block of 32 columns sx = max|x| / 127 and
//    xq = nearest-even(x * (127 / max|x|)) in f32 arithmetic; y = sum_b sx_b sum_j W^ xq_j.
//  - exact, prefill (M > 16) and CUDA: y = sum_k W^ x (x's own values).
//  - bf16: y = sum_k W x with x rounded to bf16.
//  - f32: y = sum_k W x with x's own values (a bf16 x is its bf16 values).
// Tolerance: |y - ref| <= rel * sum|terms| (the magnitude of what was summed, beta * y included),
// plus 2^-8 |ref| for a bf16 y. rel is 1e-5 where the kernel sums in f32 what the reference sums,
// 4e-3 where W^ is rounded to bf16 first (prefill with bf16 x: the GEMM's operand).
#include "ops/qlinear.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "ops/cpu/qlinear.h"
#include "tests/support/test_support.h"

namespace origami {
namespace {

// ---- quantized weights as pack_quantized receives them ------------------------------------------

struct RawQuant {
  int bits = 4;
  int64_t N = 0, K = 0, G = 0;
  std::vector<int32_t> q;       // [N*K] levels, W's column order
  std::vector<float> scales;    // [G*N], group g of row n at g*N + n
  std::vector<int32_t> zeros;   // [G*N]
  std::vector<int32_t> g_idx;   // [K]
  std::vector<double> w;        // [N*K] W^ = scale * (q - zero), W's column order
  std::vector<int64_t> packed;  // [K] the packed column order: columns sorted by group, stably
};

struct QuantCase {
  std::string name;
  int64_t N, K, group;  // group: columns per group (K: one group)
  int bits;
  bool act_order;  // g_idx a random permutation of the groups' columns
};

// order: W's column groups to use (g_idx) instead of drawing them.
RawQuant make_raw(const QuantCase& c, uint64_t seed, const std::vector<int32_t>* order = nullptr) {
  RawQuant r;
  r.bits = c.bits;
  r.N = c.N;
  r.K = c.K;
  r.G = c.K / c.group;
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int32_t> level(0, (1 << c.bits) - 1);
  std::uniform_real_distribution<float> scale(0.002f, 0.05f);
  r.q.resize(size_t(r.N * r.K));
  for (int32_t& v : r.q) v = level(rng);
  r.scales.resize(size_t(r.G * r.N));
  r.zeros.resize(size_t(r.G * r.N));
  for (size_t i = 0; i < r.scales.size(); ++i) {
    r.scales[i] = scale(rng) * (i % 7 == 3 ? -1.0f : 1.0f);  // a few negative scales too
    r.zeros[i] = level(rng);
  }
  r.g_idx.resize(size_t(r.K));
  for (int64_t k = 0; k < r.K; ++k) r.g_idx[size_t(k)] = int32_t(k / c.group);
  if (c.act_order) std::shuffle(r.g_idx.begin(), r.g_idx.end(), rng);
  if (order) r.g_idx = *order;
  for (int64_t g = 0; g < r.G; ++g)
    for (int64_t k = 0; k < r.K; ++k)
      if (r.g_idx[size_t(k)] == g) r.packed.push_back(k);
  r.w.resize(size_t(r.N * r.K));
  for (int64_t n = 0; n < r.N; ++n)
    for (int64_t k = 0; k < r.K; ++k) {
      const int64_t i = r.g_idx[size_t(k)] * r.N + n;
      r.w[size_t(n * r.K + k)] =
          double(r.scales[size_t(i)]) * double(r.q[size_t(n * r.K + k)] - r.zeros[size_t(i)]);
    }
  return r;
}

ops::PackedLinear pack(const RawQuant& r, Device device) {
  return ops::pack_quantized(r.bits, r.N, r.K, r.q.data(), r.scales.data(), r.zeros.data(), r.G,
                             r.g_idx.data(), device);
}

// ---- the reference ------------------------------------------------------------------------------

// x's rows quantized per block of 32 packed columns: xq[m*K + k] for W's column k, and the block
// scale of that column in sx[m*K + k].
void quantize_like_kernels(const std::vector<float>& x, int64_t M, const RawQuant& r,
                           std::vector<double>& xq, std::vector<double>& sx) {
  const int64_t K = r.K;
  xq.assign(size_t(M * K), 0.0);
  sx.assign(size_t(M * K), 0.0);
  for (int64_t m = 0; m < M; ++m)
    for (int64_t b = 0; b < K / 32; ++b) {
      float amax = 0.0f;
      for (int64_t j = 32 * b; j < 32 * b + 32; ++j)
        amax = std::max(amax, std::fabs(x[size_t(m * K + r.packed[size_t(j)])]));
      const float inv = amax > 0.0f ? 127.0f / amax : 0.0f;
      const float scale = amax / 127.0f;
      for (int64_t j = 32 * b; j < 32 * b + 32; ++j) {
        const int64_t k = r.packed[size_t(j)];
        const float v = x[size_t(m * K + k)] * inv;
        xq[size_t(m * K + k)] = std::nearbyint(v);
        sx[size_t(m * K + k)] = scale;
      }
    }
}

struct Expected {
  test::HostArray y, terms;  // [M,N]: the reference and the sum of |terms|
};

// y = sum_k w[n,k] * a[m,k] * s[m,k] + beta * y0 (s empty: 1).
Expected reference(const std::vector<double>& w, int64_t N, int64_t K, const std::vector<double>& a,
                   const std::vector<double>& s, int64_t M, double beta,
                   const test::HostArray* y0) {
  Expected e{test::host_array({M, N}), test::host_array({M, N})};
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < N; ++n) {
      double acc = 0, mag = 0;
      for (int64_t k = 0; k < K; ++k) {
        const double t =
            w[size_t(n * K + k)] * a[size_t(m * K + k)] * (s.empty() ? 1.0 : s[size_t(m * K + k)]);
        acc += t;
        mag += std::fabs(t);
      }
      if (beta != 0.0) {
        acc += beta * (*y0)[m * N + n];
        mag += std::fabs(beta * (*y0)[m * N + n]);
      }
      e.y[m * N + n] = acc;
      e.terms[m * N + n] = mag;
    }
  return e;
}

::testing::AssertionResult close_enough(const Tensor& y, const Expected& e, double rel) {
  const test::HostArray a = test::to_host_array(y);
  const double out_rel = y.dtype() == DType::bf16 ? 1.0 / 256 : 0.0;
  for (int64_t i = 0; i < a.numel(); ++i) {
    const double tol = rel * e.terms[i] + out_rel * std::fabs(e.y[i]) + 1e-30;
    if (!(std::fabs(a[i] - e.y[i]) <= tol))
      return ::testing::AssertionFailure()
             << "element " << i << " (row " << i / a.shape[1] << ", column " << i % a.shape[1]
             << "): got " << a[i] << ", expected " << e.y[i] << " (tolerance " << tol
             << ", sum of |terms| " << e.terms[i] << ")";
  }
  return ::testing::AssertionSuccess();
}

struct Call {
  int64_t M;
  DType x_dtype, y_dtype;
  float beta;
  bool exact;
  std::string str() const {
    return "M=" + std::to_string(M) + " x " + dtype_name(x_dtype) + " y " + dtype_name(y_dtype) +
           " beta " + std::to_string(int(beta)) + (exact ? " exact" : "");
  }
};

std::vector<Call> all_runs(const std::vector<int64_t>& rows) {
  std::vector<Call> runs;
  const std::pair<DType, DType> dtypes[] = {
      {DType::f32, DType::f32}, {DType::bf16, DType::f32}, {DType::bf16, DType::bf16}};
  for (int64_t M : rows)
    for (const auto& [xd, yd] : dtypes)
      for (float beta : {0.0f, 1.0f})
        for (bool exact : {false, true}) runs.push_back({M, xd, yd, beta, exact});
  return runs;
}

// The y a call writes into: a copy of y0 on `device` when beta adds it, else NaNs (so that an
// output the kernels never write shows).
Tensor output_for(const Tensor& y0, float beta, Device device) {
  Tensor y = Tensor::empty(y0.shape(), y0.dtype(), device);
  if (beta != 0.0f)
    y.copy_from(y0);
  else
    y.fill_(std::nan(""));
  return y;
}

// y from packed_linear on `device` against the reference, inputs from `seed`.
void expect_int_matches(const RawQuant& r, const ops::PackedLinear& w, const Call& run,
                        Device device, uint64_t seed) {
  const int64_t M = run.M, N = r.N, K = r.K;
  const Tensor x = test::random_tensor({M, K}, run.x_dtype, seed, -2.0, 2.0);
  const Tensor y0 = test::random_tensor({M, N}, run.y_dtype, seed + 1);
  const test::HostArray y0h = test::to_host_array(y0);
  Tensor y = output_for(y0, run.beta, device);
  ops::PackedLinearOptions opt;
  opt.beta = run.beta;
  opt.exact = run.exact;
  ops::packed_linear(x.to(device), w, y, opt);

  const std::vector<float> xf = x.to_float_vector();
  const bool quantized = device.is_cpu() && M <= ops::cpu::kQDecodeMaxRows && !run.exact;
  std::vector<double> a(xf.begin(), xf.end()), s;
  if (quantized) quantize_like_kernels(xf, M, r, a, s);
  const Expected e = reference(r.w, N, K, a, s, M, run.beta, &y0h);
  // W^ is rounded to bf16 where a bf16 GEMM multiplies it (prefill with bf16 x).
  const double rel = M > ops::cpu::kQDecodeMaxRows && run.x_dtype == DType::bf16 ? 4e-3 : 1e-5;
  EXPECT_TRUE(close_enough(y, e, rel)) << run.str();
}

const std::vector<QuantCase> kCases = {
    {"int4_g32_act_N37_K96", 37, 96, 32, 4, true},
    {"int8_gK_N100_K352", 100, 352, 352, 8, false},
    {"int4_g128_act_N45_K1408", 45, 1408, 128, 4, true},
    {"int3_g64_N29_K1408", 29, 1408, 64, 3, false},
    {"int2_g32_act_N64_K352", 64, 352, 32, 2, true},
    {"int8_g128_act_N50_K1408", 50, 1408, 128, 8, true},
    {"int5_gK_N16_K96", 16, 96, 96, 5, false},
    {"int4_gK_N21_K1408", 21, 1408, 1408, 4, false},
};

void expect_cases_match(Device device, const std::vector<QuantCase>& cases,
                        const std::vector<int64_t>& rows, uint64_t seed) {
  for (const QuantCase& c : cases) {
    SCOPED_TRACE(c.name);
    const RawQuant r = make_raw(c, seed++);
    const ops::PackedLinear w = pack(r, device);
    for (const Call& run : all_runs(rows)) expect_int_matches(r, w, run, device, seed += 7);
  }
}

TEST(PackedLinear, IntFormatsMatchReference) {
  ORIGAMI_REQUIRE_TEST_DEVICE();
  expect_cases_match(test::test_device(), kCases, {1, 3, 8, 16, 17, 64}, 100);
}

// The same on a GPU, whatever the test device (skipped without one).
TEST(PackedLinear, CudaIntFormatsMatchReference) {
  if (!cuda_available()) GTEST_SKIP() << "no CUDA device on this machine";
  expect_cases_match(Device::cuda(), kCases, {1, 3, 8, 16, 17, 64}, 200);
}

// A layer wide enough that the prefill path dequantizes W in several tiles of rows (CPU: about
// 4 MiB of W^ per tile) and copies each tile's columns into y.
TEST(PackedLinear, PrefillInTilesOfRows) {
  ORIGAMI_REQUIRE_TEST_DEVICE();
  const QuantCase c{"int4_g128_act_N1600_K1408", 1600, 1408, 128, 4, true};
  const RawQuant r = make_raw(c, 250);
  const ops::PackedLinear w = pack(r, test::test_device());
  uint64_t seed = 251;
  for (const Call& run : all_runs({17}))
    if (!run.exact) expect_int_matches(r, w, run, test::test_device(), seed += 3);
}

TEST(PackedLinear, PackedMetadataAndDequantize) {
  ORIGAMI_REQUIRE_TEST_DEVICE();
  for (const QuantCase& c : kCases) {
    SCOPED_TRACE(c.name);
    const RawQuant r = make_raw(c, 300);
    const ops::PackedLinear w = pack(r, test::test_device());
    EXPECT_EQ(w.format, c.bits <= 4 ? ops::WeightFormat::int4 : ops::WeightFormat::int8);
    EXPECT_EQ(w.rows, c.N);
    EXPECT_EQ(w.cols, c.K);
    EXPECT_EQ(w.group_size, c.group);
    EXPECT_EQ(w.bits, c.bits);
    EXPECT_EQ(w.perm.defined(), c.act_order);
    EXPECT_EQ(w.device(), test::test_device());
    // Levels at bits / 8 bytes each (4 for int4) over 16-row tiles, a scale and a zero per row and
    // group, and the permutation.
    const int64_t tiles = (c.N + 15) / 16, G = c.K / c.group;
    const int64_t expect = tiles * 16 * c.K / (c.bits <= 4 ? 2 : 1) + 2 * tiles * 16 * G * 4 +
                           (c.act_order ? c.K * 4 : 0);
    EXPECT_EQ(w.bytes(), expect);
    const Tensor d = ops::dequantize(w);
    EXPECT_EQ(d.shape(), (Shape{c.N, c.K}));
    EXPECT_EQ(d.device(), test::test_device());
    test::HostArray ref = test::host_array({c.N, c.K});
    ref.data = r.w;
    EXPECT_ALL_CLOSE(d, ref, test::Tolerance{1e-6, 0.0});
  }
}

// g_idx that is already column / group_size packs without a permutation; null g_idx means that.
TEST(PackedLinear, MonotoneGroupsNeedNoPermutation) {
  ORIGAMI_REQUIRE_TEST_DEVICE();
  const RawQuant r = make_raw({"int4_g32", 20, 96, 32, 4, false}, 400);
  const ops::PackedLinear a = pack(r, test::test_device());
  const ops::PackedLinear b =
      ops::pack_quantized(r.bits, r.N, r.K, r.q.data(), r.scales.data(), r.zeros.data(), r.G,
                          nullptr, test::test_device());
  EXPECT_FALSE(a.perm.defined());
  EXPECT_FALSE(b.perm.defined());
  const Tensor x = test::random_tensor({3, r.K}, DType::f32, 401);
  Tensor ya = Tensor::zeros({3, r.N}, DType::f32, test::test_device());
  Tensor yb = Tensor::zeros({3, r.N}, DType::f32, test::test_device());
  ops::packed_linear(x.to(test::test_device()), a, ya);
  ops::packed_linear(x.to(test::test_device()), b, yb);
  EXPECT_EQ(ya.to_float_vector(), yb.to_float_vector());
}

// ---- bf16 ---------------------------------------------------------------------------------------

struct Bf16Case {
  std::string name;
  int64_t N, K;
};
const std::vector<Bf16Case> kBf16Cases = {
    {"N37_K96", 37, 96}, {"N100_K100", 100, 100}, {"N45_K1408", 45, 1408}, {"N3_K7", 3, 7}};

void expect_bf16_matches(Device device, uint64_t seed) {
  for (const Bf16Case& c : kBf16Cases)
    for (DType wd : {DType::bf16, DType::f32}) {
      SCOPED_TRACE(c.name + " packed from " + dtype_name(wd));
      const Tensor w32 = test::random_tensor({c.N, c.K}, DType::f32, seed++, -0.5, 0.5);
      const ops::PackedLinear w = ops::pack_bf16(w32.to(wd).to(device));
      EXPECT_EQ(w.format, ops::WeightFormat::bf16);
      EXPECT_EQ(w.bytes(), c.N * c.K * 2);
      std::vector<double> wr;  // W rounded to bf16
      for (float v : w32.to_float_vector()) wr.push_back(round_bf16(v));
      for (const Call& run : all_runs({1, 3, 8, 16, 17, 64})) {
        if (run.exact) continue;  // no meaning for bf16
        const int64_t M = run.M;
        const Tensor x = test::random_tensor({M, c.K}, DType::f32, seed += 3, -2.0, 2.0);
        const Tensor y0 = test::random_tensor({M, c.N}, run.y_dtype, seed + 1);
        const test::HostArray y0h = test::to_host_array(y0);
        Tensor y = output_for(y0, run.beta, device);
        ops::PackedLinearOptions opt;
        opt.beta = run.beta;
        ops::packed_linear(x.to(run.x_dtype).to(device), w, y, opt);
        std::vector<double> xr;  // x rounded to bf16, as the kernels do
        for (float v : x.to_float_vector()) xr.push_back(round_bf16(v));
        const Expected e = reference(wr, c.N, c.K, xr, {}, M, run.beta, &y0h);
        EXPECT_TRUE(close_enough(y, e, 1e-5)) << run.str();
      }
    }
}

// ---- f32 ----------------------------------------------------------------------------------------

void expect_f32_matches(Device device, uint64_t seed) {
  for (const Bf16Case& c : kBf16Cases) {
    SCOPED_TRACE(c.name);
    const Tensor w32 = test::random_tensor({c.N, c.K}, DType::f32, seed++, -0.5, 0.5);
    const Tensor wd = w32.to(device);
    const ops::PackedLinear w = ops::pack_f32(wd);
    EXPECT_EQ(w.format, ops::WeightFormat::f32);
    EXPECT_EQ(w.bytes(), c.N * c.K * 4);
    EXPECT_EQ(w.data.data(), wd.data()) << "pack_f32 copies nothing";
    EXPECT_EQ(ops::dequantize(w).to_float_vector(), w32.to_float_vector());
    std::vector<double> wr;
    for (float v : w32.to_float_vector()) wr.push_back(v);
    for (const Call& run : all_runs({1, 3, 8, 16, 17, 64})) {
      if (run.exact) continue;  // no meaning for f32
      for (bool invariant : {false, true}) {
        const int64_t M = run.M;
        const Tensor x = test::random_tensor({M, c.K}, DType::f32, seed += 3, -2.0, 2.0);
        const Tensor xd = x.to(run.x_dtype);
        const Tensor y0 = test::random_tensor({M, c.N}, run.y_dtype, seed + 1);
        const test::HostArray y0h = test::to_host_array(y0);
        Tensor y = output_for(y0, run.beta, device);
        ops::PackedLinearOptions opt;
        opt.beta = run.beta;
        opt.batch_invariant = invariant;
        ops::packed_linear(xd.to(device), w, y, opt);
        std::vector<double> xr;  // x as the call sees it
        for (float v : xd.to_float_vector()) xr.push_back(v);
        const Expected e = reference(wr, c.N, c.K, xr, {}, M, run.beta, &y0h);
        EXPECT_TRUE(close_enough(y, e, 1e-5)) << run.str() << (invariant ? ", invariant" : "");
      }
    }
  }
}

TEST(PackedLinear, F32MatchesReference) {
  ORIGAMI_REQUIRE_TEST_DEVICE();
  expect_f32_matches(test::test_device(), 550);
}

TEST(PackedLinear, CudaF32MatchesReference) {
  if (!cuda_available()) GTEST_SKIP() << "no CUDA device on this machine";
  expect_f32_matches(Device::cuda(), 650);
}

TEST(PackedLinear, Bf16MatchesReference) {
  ORIGAMI_REQUIRE_TEST_DEVICE();
  expect_bf16_matches(test::test_device(), 500);
}

TEST(PackedLinear, CudaBf16MatchesReference) {
  if (!cuda_available()) GTEST_SKIP() << "no CUDA device on this machine";
  expect_bf16_matches(Device::cuda(), 600);
}

// ---- every CPU instruction set (on the CPU whatever the test device) ----------------------------

TEST(PackedLinear, EveryCpuInstructionSetMatchesReference) {
  const std::vector<QuantCase> cases = {kCases[0], kCases[2], kCases[5], kCases[6]};
  uint64_t seed = 700;
  for (const std::string& isa : ops::cpu::qlinear_isas()) {
    SCOPED_TRACE(isa);
    ops::cpu::qlinear_force_isa(isa.c_str());
    EXPECT_EQ(std::string(ops::cpu::qlinear_isa()), isa);
    expect_cases_match(Device::cpu(), cases, {1, 5, 16}, seed += 100);
    expect_bf16_matches(Device::cpu(), seed += 100);
    expect_f32_matches(Device::cpu(), seed += 100);
  }
  ops::cpu::qlinear_force_isa(nullptr);
}

// Every instruction set computes the same integer dots: results agree to the rounding of the f32
// sums of the blocks (1e-6 of the sum of |terms|).
TEST(PackedLinear, InstructionSetsAgree) {
  const RawQuant r = make_raw({"int8_g64_act", 70, 1408, 64, 8, true}, 800);
  const ops::PackedLinear w = pack(r, Device::cpu());
  const Tensor x = test::random_tensor({4, r.K}, DType::f32, 801, -3.0, 3.0);
  std::vector<double> xq, sx;
  quantize_like_kernels(x.to_float_vector(), 4, r, xq, sx);
  const Expected e = reference(r.w, r.N, r.K, xq, sx, 4, 0.0, nullptr);
  std::vector<float> first;
  for (const std::string& isa : ops::cpu::qlinear_isas()) {
    ops::cpu::qlinear_force_isa(isa.c_str());
    Tensor y = Tensor::zeros({4, r.N}, DType::f32);
    ops::packed_linear(x, w, y);
    const std::vector<float> v = y.to_float_vector();
    if (first.empty()) first = v;
    for (size_t i = 0; i < v.size(); ++i)
      EXPECT_NEAR(v[i], first[i], 1e-6 * e.terms[int64_t(i)]) << isa << " element " << i;
  }
  ops::cpu::qlinear_force_isa(nullptr);
  EXPECT_THROW(ops::cpu::qlinear_force_isa("sse9"), Error);
}

// ---- several linears over one x (packed_linear_group)

// One linear of the group tests, with what its reference needs: the raw levels (int) or W as
// doubles (bf16, f32).
struct Member {
  ops::PackedLinear w;
  RawQuant raw;                 // int formats
  std::vector<double> w_dense;  // bf16, f32: W's values
  bool bf16() const { return w.format == ops::WeightFormat::bf16; }
  bool dense() const { return bf16() || w.format == ops::WeightFormat::f32; }
};

// bits 16: bf16, 32: f32, else the int formats.
Member make_member(const QuantCase& c, uint64_t seed, Device dev,
                   const std::vector<int32_t>* order = nullptr) {
  Member m;
  if (c.bits == 16 || c.bits == 32) {
    const DType dt = c.bits == 16 ? DType::bf16 : DType::f32;
    const Tensor w = test::random_tensor({c.N, c.K}, dt, seed, -0.5, 0.5);
    for (float v : w.to_float_vector()) m.w_dense.push_back(v);
    m.w = c.bits == 16 ? ops::pack_bf16(w.to(dev)) : ops::pack_f32(w.to(dev));
  } else {
    m.raw = make_raw(c, seed, order);
    m.w = pack(m.raw, dev);
  }
  return m;
}

// y of a decode call (x: 1 to 16 rows, int8 activations) against the double-precision reference.
void expect_decode_matches(const Member& m, const Tensor& x, const Tensor& y, float beta,
                           const Tensor& y0) {
  const int64_t M = x.size(0), N = m.w.rows, K = m.w.cols;
  const std::vector<float> xf = x.to(Device::cpu()).to_float_vector();
  const test::HostArray y0h = test::to_host_array(y0);
  std::vector<double> a, s;
  if (m.bf16()) {
    for (float v : xf) a.push_back(round_bf16(v));
  } else if (m.dense()) {
    for (float v : xf) a.push_back(v);
  } else {
    quantize_like_kernels(xf, M, m.raw, a, s);
  }
  const Expected e = reference(m.dense() ? m.w_dense : m.raw.w, N, K, a, s, M, beta, &y0h);
  EXPECT_TRUE(close_enough(y, e, 1e-5));
}
// ---------------------------------------------

// The members of a group (q, k, v shaped: one wide, two narrow; or gate and up) give, bit for bit,
// what packed_linear gives on each alone, and decode calls match the double-precision reference:
// decode calls run them in one region, others one by one. Also a group whose members differ in
// format or column order (run one by one).
TEST(PackedLinear, GroupEqualsEachAlone) {
  ORIGAMI_REQUIRE_TEST_DEVICE();
  const Device dev = test::test_device();
  struct Group {
    std::string name;
    std::vector<QuantCase> members;  // bits 16: bf16
    bool shared_order;               // act-order members given one g_idx (q, k, v of GPTQ)
  };
  const std::vector<Group> groups = {
      {"int4 q,k,v act-order",
       {{"q", 64, 352, 32, 4, true}, {"k", 16, 352, 32, 4, true}, {"v", 21, 352, 32, 4, true}},
       true},
      {"int8 gate,up", {{"gate", 45, 1408, 128, 8, false}, {"up", 45, 1408, 128, 8, false}}, true},
      // over 512 KiB: split over the threads, member boundaries inside a thread's share
      {"int4 q,k,v, threads",
       {{"q", 512, 1408, 128, 4, true},
        {"k", 120, 1408, 128, 4, true},
        {"v", 136, 1408, 128, 4, true}},
       true},
      {"bf16 q,k,v, threads",
       {{"q", 128, 1408, 1408, 16, false},
        {"k", 45, 1408, 1408, 16, false},
        {"v", 51, 1408, 1408, 16, false}},
       true},
      {"bf16 q,k,v",
       {{"q", 37, 96, 96, 16, false}, {"k", 5, 96, 96, 16, false}, {"v", 16, 96, 96, 16, false}},
       true},
      {"f32 q,k,v, threads",
       {{"q", 128, 1408, 1408, 32, false},
        {"k", 45, 1408, 1408, 32, false},
        {"v", 51, 1408, 1408, 32, false}},
       true},
      {"f32 gate,up", {{"gate", 37, 100, 100, 32, false}, {"up", 37, 100, 100, 32, false}}, true},
      {"int4 then int8 (one by one)",
       {{"a", 40, 352, 32, 4, false}, {"b", 24, 352, 352, 8, false}},
       true},
      {"act-order, two orders (one by one)",
       {{"a", 40, 352, 32, 4, true}, {"b", 24, 352, 32, 4, true}},
       false},
  };
  uint64_t seed = 1000;
  for (const Group& g : groups) {
    SCOPED_TRACE(g.name);
    std::vector<Member> w;
    for (const QuantCase& c : g.members) {
      const bool shared = g.shared_order && c.act_order && !w.empty() && !w[0].dense();
      w.push_back(make_member(c, seed++, dev, shared ? &w[0].raw.g_idx : nullptr));
    }
    const int64_t K = g.members[0].K;
    for (const Call& run : all_runs({1, 5, 16, 17})) {
      const Tensor x = test::random_tensor({run.M, K}, run.x_dtype, seed += 5, -2.0, 2.0).to(dev);
      ops::PackedLinearOptions opt;
      opt.beta = run.beta;
      opt.exact = run.exact;
      std::vector<Tensor> y0, alone, together;
      std::vector<const ops::PackedLinear*> wp;
      std::vector<Tensor*> yp;
      for (size_t i = 0; i < w.size(); ++i) {
        y0.push_back(test::random_tensor({run.M, w[i].w.rows}, run.y_dtype, seed + i));
        alone.push_back(output_for(y0.back(), run.beta, dev));
        together.push_back(output_for(y0.back(), run.beta, dev));
        ops::packed_linear(x, w[i].w, alone.back(), opt);
      }
      for (size_t i = 0; i < w.size(); ++i) {
        wp.push_back(&w[i].w);
        yp.push_back(&together[i]);
      }
      ops::packed_linear_group(x, wp, yp, opt);
      for (size_t i = 0; i < w.size(); ++i) {
        SCOPED_TRACE(g.members[i].name + ", " + run.str());
        const std::vector<float> a = alone[i].to_float_vector(), b = together[i].to_float_vector();
        ASSERT_EQ(a.size(), b.size());
        for (size_t e = 0; e < a.size(); ++e) ASSERT_EQ(a[e], b[e]) << "element " << e;
        // The one-region path against the double-precision reference too.
        if (dev.is_cpu() && run.M <= ops::cpu::kQDecodeMaxRows && (!run.exact || w[i].dense()))
          expect_decode_matches(w[i], x, together[i], run.beta, y0[i]);
      }
    }
  }
}

// Members each with their own x (the experts of an MoE layer: gate and up of an expert share its
// rows; experts differ in rows and count), bit for bit what packed_linear gives on each alone and
// within the reference's tolerance. A member with 17 rows makes the call run one by one.
TEST(PackedLinear, GroupWithOwnInputsEqualsEachAlone) {
  ORIGAMI_REQUIRE_TEST_DEVICE();
  const Device dev = test::test_device();
  uint64_t seed = 1200;
  for (int bits : {4, 8, 16, 32})
    for (const std::vector<int64_t>& rows :
         {std::vector<int64_t>{1, 1}, {3, 1, 16}, {2, 5, 1, 1}, {4, 17}}) {
      SCOPED_TRACE("bits " + std::to_string(bits) + ", " + std::to_string(rows.size()) +
                   " experts, rows of the first " + std::to_string(rows[0]));
      const int64_t K = 704, F = 352;  // gate/up [F,K] of every expert over 256 KiB together
      std::vector<Member> w;
      std::vector<Tensor> x;
      for (size_t e = 0; e < rows.size(); ++e) {
        x.push_back(test::random_tensor({rows[e], K}, DType::bf16, seed++, -2.0, 2.0).to(dev));
        for (int gu = 0; gu < 2; ++gu)
          w.push_back(make_member({"expert", F, K, 64, bits, false}, seed++, dev));
      }
      std::vector<const Tensor*> xp;
      std::vector<const ops::PackedLinear*> wp;
      std::vector<Tensor> alone, together;
      for (size_t i = 0; i < w.size(); ++i) {
        const Tensor& xi = x[i / 2];
        alone.push_back(Tensor::zeros({xi.size(0), F}, DType::f32, dev));
        together.push_back(Tensor::zeros({xi.size(0), F}, DType::f32, dev));
        ops::packed_linear(xi, w[i].w, alone.back());
        xp.push_back(&xi);
        wp.push_back(&w[i].w);
      }
      std::vector<Tensor*> yp;
      for (Tensor& t : together) yp.push_back(&t);
      ops::packed_linear_group(xp, wp, yp);
      for (size_t i = 0; i < w.size(); ++i) {
        const std::vector<float> a = alone[i].to_float_vector(), b = together[i].to_float_vector();
        for (size_t e = 0; e < a.size(); ++e) ASSERT_EQ(a[e], b[e]) << "linear " << i << ", " << e;
        if (dev.is_cpu() && x[i / 2].size(0) <= ops::cpu::kQDecodeMaxRows)
          expect_decode_matches(w[i], x[i / 2], together[i], 0.0f, together[i]);
      }
    }
}

// Batch invariance (PackedLinearOptions::batch_invariant): a row's result is the same bit for bit
// whatever the rows around it. 40 rows in one call (past the 16-row decode limit: one parallel
// region over all rows), every row alone, and chunks of 5 and of 17; the calls split W's rows over
// the threads differently (a single row of these layers runs on one thread, 40 rows on all), and
// R-row blocks end at different rows. Batch-invariant calls run the decode kernels at any M, so
// every row also matches the decode reference (x rounded to bf16, or quantized per block).
TEST(PackedLinear, BatchInvariantRowsDoNotDependOnM) {
  const Device dev = Device::cpu();
  const int64_t M = 40;
  uint64_t seed = 1300;
  for (const QuantCase& c : {QuantCase{"bf16_N301_K688", 301, 688, 688, 16, false},
                             QuantCase{"f32_N301_K700", 301, 700, 700, 32, false},
                             QuantCase{"int4_g32_act_N150_K352", 150, 352, 32, 4, true},
                             QuantCase{"int8_g128_N100_K1408", 100, 1408, 128, 8, false}}) {
    SCOPED_TRACE(c.name);
    const Member m = make_member(c, seed++, dev);
    const Tensor x = test::random_tensor({M, c.K}, DType::f32, seed++, -2.0, 2.0);
    ops::PackedLinearOptions opt;
    opt.batch_invariant = true;
    Tensor all = Tensor::zeros({M, c.N}, DType::f32);
    ops::packed_linear(x, m.w, all, opt);
    expect_decode_matches(m, x, all, 0.0f, all);
    const std::vector<float> a = all.to_float_vector();
    for (int64_t chunk : {1, 5, 17})
      for (int64_t m0 = 0; m0 < M; m0 += chunk) {
        const int64_t n = std::min(chunk, M - m0);
        Tensor part = Tensor::zeros({n, c.N}, DType::f32);
        ops::packed_linear(x.narrow(0, m0, n), m.w, part, opt);
        const std::vector<float> b = part.to_float_vector();
        for (int64_t i = 0; i < n * c.N; ++i)
          ASSERT_EQ(a[size_t(m0 * c.N + i)], b[size_t(i)])
              << "chunks of " << chunk << ", row " << m0 + i / c.N << ", column " << i % c.N;
      }
  }
}

TEST(PackedLinear, GroupBadArgumentsNameTheProblem) {
  ORIGAMI_REQUIRE_TEST_DEVICE();
  const Device dev = test::test_device();
  const ops::PackedLinear a = pack(make_raw({"a", 20, 96, 32, 4, false}, 1100), dev);
  const ops::PackedLinear b = pack(make_raw({"b", 8, 64, 32, 4, false}, 1101), dev);
  const Tensor x = Tensor::zeros({2, 96}, DType::f32, dev);
  Tensor ya = Tensor::zeros({2, 20}, DType::f32, dev), yb = Tensor::zeros({2, 8}, DType::f32, dev);
  const ops::PackedLinear* w2[] = {&a, &b};
  Tensor* y2[] = {&ya, &yb};
  test::expect_error([&] { ops::packed_linear_group(x, w2, y2); },
                     {"packed_linear_group", "x", "K = 64"});
  test::expect_error(
      [&] {
        ops::packed_linear_group(x, {w2, 1}, y2);
      },
      {"packed_linear_group", "1 inputs, 1 weights and 2 outputs"});
  std::vector<const ops::PackedLinear*> many(ops::kMaxPackedGroup + 1, &a);
  std::vector<Tensor*> many_y(ops::kMaxPackedGroup + 1, &ya);
  test::expect_error([&] { ops::packed_linear_group(x, many, many_y); },
                     {"packed_linear_group", "1 to 8 linears", "9"});
}

// ---- bad arguments ------------------------------------------------------------------------------

TEST(PackedLinear, BadArgumentsNameTheProblem) {
  ORIGAMI_REQUIRE_TEST_DEVICE();
  const Device dev = test::test_device();
  const RawQuant r = make_raw({"int4_g32", 20, 96, 32, 4, false}, 900);
  const ops::PackedLinear w = pack(r, dev);
  const Tensor x = Tensor::zeros({2, 96}, DType::f32, dev);
  Tensor y = Tensor::zeros({2, 20}, DType::f32, dev);

  Tensor x_k = Tensor::zeros({2, 64}, DType::f32, dev);
  test::expect_error([&] { ops::packed_linear(x_k, w, y); }, {"packed_linear", "x", "K = 96"});
  Tensor x_3d = Tensor::zeros({1, 2, 96}, DType::f32, dev);
  test::expect_error([&] { ops::packed_linear(x_3d, w, y); }, {"packed_linear", "x", "2-D"});
  Tensor x_i32 = Tensor::zeros({2, 96}, DType::i32, dev);
  test::expect_error([&] { ops::packed_linear(x_i32, w, y); }, {"x", "f32 or bf16"});
  Tensor y_shape = Tensor::zeros({2, 21}, DType::f32, dev);
  test::expect_error([&] { ops::packed_linear(x, w, y_shape); }, {"y", "[2,20]"});
  Tensor y_bf16 = Tensor::zeros({2, 20}, DType::bf16, dev);
  test::expect_error([&] { ops::packed_linear(x, w, y_bf16); }, {"y", "f32"});
  Tensor y_t = Tensor::zeros({20, 2}, DType::f32, dev).transpose(0, 1);
  test::expect_error([&] { ops::packed_linear(x, w, y_t); }, {"y", "contiguous"});
  test::expect_error([&] { ops::packed_linear(x, ops::PackedLinear{}, y); },
                     {"w is undefined", "pack_quantized"});

  auto quant = [&](int bits, int64_t K, int64_t G, const int32_t* q, const int32_t* z,
                   const int32_t* g) {
    std::vector<float> s(size_t(G * 20), 0.01f);
    ops::pack_quantized(bits, 20, K, q, s.data(), z, G, g);
  };
  std::vector<int32_t> q(20 * 100, 1), z(20 * 4, 1);
  test::expect_error([&] { quant(4, 100, 1, q.data(), z.data(), nullptr); },
                     {"pack_quantized", "multiple of 32", "100"});
  test::expect_error([&] { quant(4, 96, 2, q.data(), z.data(), nullptr); },
                     {"pack_quantized", "multiple of 32", "48"});
  test::expect_error([&] { quant(4, 96, 5, q.data(), z.data(), nullptr); }, {"groups", "divide"});
  test::expect_error([&] { quant(9, 96, 1, q.data(), z.data(), nullptr); }, {"bits", "9"});
  std::vector<int32_t> q_bad = q;
  q_bad[5] = 16;
  test::expect_error([&] { quant(4, 96, 1, q_bad.data(), z.data(), nullptr); }, {"q[5]", "0..15"});
  std::vector<int32_t> z_bad = z;
  z_bad[3] = -1;
  test::expect_error([&] { quant(4, 96, 1, q.data(), z_bad.data(), nullptr); },
                     {"zeros[3]", "0..15"});
  std::vector<int32_t> g_bad(96, 0);
  g_bad[0] = 1;  // group 1 gets 1 column of 96 / 3 = 32 expected... and group 0 too many
  test::expect_error([&] { quant(4, 96, 3, q.data(), z.data(), g_bad.data()); }, {"group", "32"});
  g_bad[0] = 7;
  test::expect_error([&] { quant(4, 96, 3, q.data(), z.data(), g_bad.data()); }, {"g_idx[0]", "7"});

  test::expect_error([] { ops::parse_weight_format("int3"); }, {"int3", "f32, bf16, int8 or int4"});
  EXPECT_EQ(ops::parse_weight_format("f32"), ops::WeightFormat::f32);
  EXPECT_EQ(ops::parse_weight_format("int4"), ops::WeightFormat::int4);
  EXPECT_STREQ(ops::weight_format_name(ops::WeightFormat::int8), "int8");
  test::expect_error([&] { ops::pack_bf16(Tensor::zeros({4}, DType::f32)); }, {"pack_bf16", "w"});
  test::expect_error(
      [&] {
        ops::pack_f32(Tensor::zeros({4, 4}, DType::bf16));
      },
      {"pack_f32", "w", "bf16"});
}

}  // namespace
}  // namespace origami
