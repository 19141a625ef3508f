// GPTQ / RTN weight quantization and the Hugging Face GPTQ packing (models/gptq.h): unit tests of
// the linear algebra, the Hessian, the quantizer's edge cases and the packing; and golden tests
// against tests/golden/ref_gptq.py (PyTorch, float64): the same levels, scales, zeros and g_idx
// for 3/4/8 bits, group size 128 / 32 / -1, act-order and symmetric on and off; GPTQ's layer
// reconstruction error below RTN's; packing (2, 3, 4, 8 bits) by C++ read back by Python and the
// reverse.
#include <gtest/gtest.h>

#include <omp.h>

#include <cmath>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "models/gptq.h"
#include "runtime/dtype.h"
#include "runtime/error.h"
#include "tests/support/test_support.h"

namespace origami {
namespace {

using models::GptqTensors;
using models::HessianAccumulator;
using models::QuantConfig;
using models::QuantizedLinear;

// ---- helpers
// -------------------------------------------------------------------------------------

// A random layer: weights ~ N(0, 1) with a few large columns; inputs X [tokens, cols] with strong
// correlations (a rank-8 common part), per-column scales, and some dead (all-zero) columns.
struct Layer {
  int64_t rows, cols, tokens;
  std::vector<float> w, x;
};

Layer make_layer(int64_t rows, int64_t cols, int64_t tokens, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> normal;
  std::uniform_real_distribution<double> uniform(-1.0, 1.0);
  Layer l{rows, cols, tokens, {}, {}};
  l.w.resize(size_t(rows * cols));
  for (auto& v : l.w) v = float(normal(rng));
  for (int64_t c = 0; c < cols; c += 37)
    for (int64_t r = 0; r < rows; ++r) l.w[size_t(r * cols + c)] *= 4.0f;
  constexpr int kRank = 8;
  std::vector<double> b(size_t(tokens * kRank)), m(size_t(cols * kRank)),
      s(static_cast<size_t>(cols));
  for (auto& v : b) v = normal(rng);
  for (auto& v : m) v = normal(rng);
  for (auto& v : s) v = std::exp(uniform(rng));
  l.x.resize(size_t(tokens * cols));
  for (int64_t t = 0; t < tokens; ++t)
    for (int64_t c = 0; c < cols; ++c) {
      double v = normal(rng);
      for (int k = 0; k < kRank; ++k) v += b[size_t(t * kRank + k)] * m[size_t(c * kRank + k)];
      const bool dead = c % 61 == 3;
      l.x[size_t(t * cols + c)] = dead ? 0.0f : float(s[size_t(c)] * v);
    }
  return l;
}

HessianAccumulator hessian_of(const Layer& l) {
  HessianAccumulator h(l.cols);
  h.add(l.x.data(), l.tokens, l.cols);
  return h;
}

// ||W X^T - W^ X^T||^2 over the layer's tokens.
double reconstruction_error(const Layer& l, const QuantizedLinear& q) {
  const std::vector<float> wq = q.dequantize();
  std::vector<double> d(size_t(l.rows * l.cols));
  for (size_t i = 0; i < d.size(); ++i) d[i] = double(l.w[i]) - double(wq[i]);
  double err = 0.0;
  for (int64_t t = 0; t < l.tokens; ++t)
    for (int64_t r = 0; r < l.rows; ++r) {
      double y = 0.0;
      for (int64_t c = 0; c < l.cols; ++c)
        y += d[size_t(r * l.cols + c)] * l.x[size_t(t * l.cols + c)];
      err += y * y;
    }
  return err;
}

std::string config_json(const QuantConfig& c, bool v2 = false) {
  char buf[256];
  std::snprintf(buf, sizeof buf,
                "{\"bits\": %d, \"group_size\": %lld, \"sym\": %s, \"act_order\": %s, "
                "\"percdamp\": %.17g, \"block_size\": %lld, \"v2\": %s}",
                c.bits, (long long)c.group_size, c.sym ? "true" : "false",
                c.act_order ? "true" : "false", c.percdamp, (long long)c.block_size,
                v2 ? "true" : "false");
  return buf;
}

std::string config_name(const QuantConfig& c) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "b%d_g%lld%s%s", c.bits, (long long)c.group_size,
                c.sym ? "_sym" : "_asym", c.act_order ? "_act" : "");
  return buf;
}

Tensor int_tensor(const std::vector<int32_t>& v, const Shape& shape) {
  return Tensor::from_vector_i64(std::vector<int64_t>(v.begin(), v.end()), shape, DType::i32);
}

// Levels [rows, cols], scales and zeros [groups, rows], g_idx [cols] of a result as tensors.
std::vector<std::pair<std::string, Tensor>> result_tensors(const QuantizedLinear& q) {
  return {{"q", int_tensor(q.q, {q.rows, q.cols})},
          {"zeros", int_tensor(q.zeros, {q.groups(), q.rows})},
          {"scales", Tensor::from_vector(q.scales, {q.groups(), q.rows})},
          {"g_idx", int_tensor(q.g_idx, {q.cols})}};
}

struct Mismatch {
  int64_t levels = 0, levels_far = 0, scales = 0, zeros = 0, g_idx = 0;
  double worst_scale_rel = 0.0;
};

// Compares a result with the reference outputs "<key>/q", "/scales", "/zeros", "/g_idx".
Mismatch compare(const QuantizedLinear& q, const std::map<std::string, test::HostArray>& ref,
                 const std::string& key, double scale_rel) {
  Mismatch m;
  const test::HostArray& rq = ref.at(key + "/q");
  const test::HostArray& rs = ref.at(key + "/scales");
  const test::HostArray& rz = ref.at(key + "/zeros");
  const test::HostArray& rg = ref.at(key + "/g_idx");
  EXPECT_EQ(rq.numel(), q.rows * q.cols) << key;
  EXPECT_EQ(rs.numel(), int64_t(q.scales.size())) << key;
  if (rq.numel() != q.rows * q.cols || rs.numel() != int64_t(q.scales.size())) return m;
  for (int64_t i = 0; i < rq.numel(); ++i) {
    const double d = std::fabs(q.q[size_t(i)] - rq[i]);
    m.levels += d != 0;
    m.levels_far += d > 1;
  }
  for (int64_t i = 0; i < rs.numel(); ++i) {
    const double rel = std::fabs(q.scales[size_t(i)] - rs[i]) / std::fabs(rs[i]);
    m.worst_scale_rel = std::max(m.worst_scale_rel, rel);
    m.scales += rel > scale_rel;
    m.zeros += q.zeros[size_t(i)] != rz[i];
  }
  for (int64_t c = 0; c < q.cols; ++c) m.g_idx += q.g_idx[size_t(c)] != rg[c];
  return m;
}

// ---- unit: linear algebra ----------------------------------------------------------------------

// Inverse by Gauss-Jordan elimination with partial pivoting.
std::vector<double> gauss_jordan_inverse(std::vector<double> a, int64_t n) {
  std::vector<double> inv(size_t(n * n), 0.0);
  for (int64_t i = 0; i < n; ++i) inv[size_t(i * n + i)] = 1.0;
  for (int64_t c = 0; c < n; ++c) {
    int64_t p = c;
    for (int64_t r = c + 1; r < n; ++r)
      if (std::fabs(a[size_t(r * n + c)]) > std::fabs(a[size_t(p * n + c)])) p = r;
    for (int64_t k = 0; k < n; ++k) {
      std::swap(a[size_t(c * n + k)], a[size_t(p * n + k)]);
      std::swap(inv[size_t(c * n + k)], inv[size_t(p * n + k)]);
    }
    const double d = a[size_t(c * n + c)];
    for (int64_t k = 0; k < n; ++k) {
      a[size_t(c * n + k)] /= d;
      inv[size_t(c * n + k)] /= d;
    }
    for (int64_t r = 0; r < n; ++r) {
      if (r == c) continue;
      const double f = a[size_t(r * n + c)];
      for (int64_t k = 0; k < n; ++k) {
        a[size_t(r * n + k)] -= f * a[size_t(c * n + k)];
        inv[size_t(r * n + k)] -= f * inv[size_t(c * n + k)];
      }
    }
  }
  return inv;
}

TEST(Gptq, InverseUpperCholeskyMatchesGaussJordan) {
  for (int64_t n : {1, 7, 50, 200}) {
    std::mt19937_64 rng(static_cast<uint64_t>(n));
    std::normal_distribution<double> normal;
    std::vector<double> b(size_t(n * n)), a(size_t(n * n), 0.0);
    for (auto& v : b) v = normal(rng);
    for (int64_t i = 0; i < n; ++i)
      for (int64_t j = 0; j < n; ++j) {
        for (int64_t k = 0; k < n; ++k)
          a[size_t(i * n + j)] += b[size_t(i * n + k)] * b[size_t(j * n + k)];
        if (i == j) a[size_t(i * n + j)] += 0.1 * double(n);
      }
    const std::vector<double> u = models::inverse_upper_cholesky(a, n);
    const std::vector<double> inv = gauss_jordan_inverse(a, n);
    double worst = 0.0, biggest = 0.0, lower = 0.0;
    for (int64_t i = 0; i < n; ++i)
      for (int64_t j = 0; j < n; ++j) {
        double utu = 0.0;
        for (int64_t k = 0; k < n; ++k) utu += u[size_t(k * n + i)] * u[size_t(k * n + j)];
        worst = std::max(worst, std::fabs(utu - inv[size_t(i * n + j)]));
        biggest = std::max(biggest, std::fabs(inv[size_t(i * n + j)]));
        if (i > j) lower = std::max(lower, std::fabs(u[size_t(i * n + j)]));
      }
    EXPECT_LE(worst, 1e-12 * biggest) << "n=" << n;
    EXPECT_EQ(lower, 0.0) << "U is not upper triangular, n=" << n;
    for (int64_t i = 0; i < n; ++i) EXPECT_GT(u[size_t(i * n + i)], 0.0);
  }
}

TEST(Gptq, CholeskyRejectsIndefinite) {
  std::vector<double> a = {1.0, 2.0, 2.0, 1.0};  // eigenvalues 3 and -1
  test::expect_error([&] { models::cholesky_lower(a, 2); }, {"not positive definite", "column 1"});
}

TEST(Gptq, HessianAccumulatesInBatches) {
  const Layer l = make_layer(4, 40, 171, 5);
  HessianAccumulator h(l.cols);
  int64_t t0 = 0;
  for (int64_t n : {7, 64, 100}) {
    h.add(l.x.data() + t0 * l.cols, n, l.cols);
    t0 += n;
  }
  ASSERT_EQ(h.tokens(), l.tokens);
  const std::vector<double> got = h.hessian();
  for (int64_t i = 0; i < l.cols; ++i)
    for (int64_t j = 0; j < l.cols; ++j) {
      double s = 0.0;
      for (int64_t t = 0; t < l.tokens; ++t)
        s += double(l.x[size_t(t * l.cols + i)]) * double(l.x[size_t(t * l.cols + j)]);
      const double want = 2.0 * s / double(l.tokens);
      ASSERT_NEAR(got[size_t(i * l.cols + j)], want, 1e-12 * (1.0 + std::fabs(want)))
          << i << "," << j;
    }
  test::expect_error([&] { h.add(l.x.data(), 1, 41); }, {"41 columns", "40"});
}

// The parallel loops split rows and columns among threads without changing any sum's order.
TEST(Gptq, SameResultOnOneAndTwoThreads) {
  const Layer l = make_layer(512, 1024, 96, 11);
  QuantConfig c;
  c.act_order = true;
  QuantizedLinear q[2];
  std::vector<double> h[2];
  const int threads = omp_get_max_threads();
  for (int t = 0; t < 2; ++t) {
    omp_set_num_threads(t + 1);
    const HessianAccumulator acc = hessian_of(l);
    h[t] = acc.hessian();
    q[t] = models::gptq_quantize(l.w.data(), l.rows, l.cols, acc, c);
  }
  omp_set_num_threads(threads);
  EXPECT_EQ(h[0], h[1]);
  EXPECT_EQ(q[0].q, q[1].q);
  EXPECT_EQ(q[0].scales, q[1].scales);
  EXPECT_EQ(q[0].zeros, q[1].zeros);
  EXPECT_EQ(q[0].g_idx, q[1].g_idx);
}

// ---- unit: quantizer
// -----------------------------------------------------------------------------

TEST(Gptq, QuantizerEdgeCases) {
  // Rows: all zero, constant positive, constant negative, mixed.
  const std::vector<float> w = {0,      0,      0,      0,      0.5f,  0.5f, 0.5f,  0.5f,
                                -0.25f, -0.25f, -0.25f, -0.25f, -1.0f, 0.0f, 0.25f, 2.0f};
  QuantConfig c;
  c.bits = 4;
  c.group_size = -1;
  const QuantizedLinear a = models::rtn_quantize(w.data(), 4, 4, c);
  const std::vector<float> wa = a.dequantize();
  // All zero: the range becomes [-1, 1]; zero = round(7.5) = 8 (half to even); exact 0.
  EXPECT_FLOAT_EQ(a.scales[0], 2.0f / 15.0f);
  EXPECT_EQ(a.zeros[0], 8);
  for (int i = 0; i < 4; ++i) EXPECT_EQ(wa[size_t(i)], 0.0f);
  // Constant rows: one end of the range at 0, the constant exactly at the other.
  EXPECT_EQ(a.zeros[1], 0);
  EXPECT_EQ(a.zeros[2], 15);
  for (int i = 4; i < 12; ++i) EXPECT_NEAR(wa[size_t(i)], w[size_t(i)], 1e-6);
  // Mixed: within half a step.
  for (int i = 12; i < 16; ++i)
    EXPECT_LE(std::fabs(wa[size_t(i)] - w[size_t(i)]), a.scales[3] / 2 + 1e-6);

  c.sym = true;
  const QuantizedLinear s = models::rtn_quantize(w.data(), 4, 4, c);
  const std::vector<float> ws = s.dequantize();
  for (int r = 0; r < 4; ++r) EXPECT_EQ(s.zeros[size_t(r)], 8);
  for (int i = 0; i < 4; ++i) EXPECT_EQ(ws[size_t(i)], 0.0f);
  // Constant negative: range [-0.25, 0.25], -0.25 / scale = -7.5 rounds to -8: level 0.
  EXPECT_FLOAT_EQ(s.scales[2], 0.5f / 15.0f);
  EXPECT_EQ(s.q[8], 0);
  // Constant positive (AutoGPTQ's rule: no negative weight keeps xmin = 0): scale 0.5 / 15 and
  // zero 8, so 0.5 clips to level 15, i.e. 7 steps.
  EXPECT_FLOAT_EQ(s.scales[1], 0.5f / 15.0f);
  EXPECT_EQ(s.q[4], 15);
  EXPECT_NEAR(ws[4], 7.0f * 0.5f / 15.0f, 1e-6);
}

TEST(Gptq, DeadColumnsAndBadInputs) {
  const Layer l = make_layer(8, 128, 64, 9);
  const HessianAccumulator h = hessian_of(l);
  QuantConfig c;
  c.group_size = 32;
  c.act_order = true;
  const QuantizedLinear q = models::gptq_quantize(l.w.data(), l.rows, l.cols, h, c);
  const std::vector<float> wq = q.dequantize();
  for (int64_t col = 3; col < l.cols; col += 61)
    for (int64_t r = 0; r < l.rows; ++r) EXPECT_EQ(wq[size_t(r * l.cols + col)], 0.0f) << col;
  HessianAccumulator empty(l.cols);
  test::expect_error([&] { models::gptq_quantize(l.w.data(), l.rows, l.cols, empty, c); },
                     {"no calibration tokens"});
  test::expect_error([&] { models::gptq_quantize(l.w.data(), l.rows, 64, h, c); },
                     {"128 input columns", "64"});
  c.bits = 9;
  test::expect_error([&] { models::rtn_quantize(l.w.data(), l.rows, l.cols, c); }, {"bits"});
}

// ---- unit: packing
// ---------------------------------------------------------------------------------

TEST(Gptq, PackRoundTrip) {
  const Layer l = make_layer(32, 128, 16, 3);
  for (int bits : {2, 3, 4, 8})
    for (bool v2 : {false, true}) {
      QuantConfig c;
      c.bits = bits;
      c.group_size = 32;
      QuantizedLinear q = models::rtn_quantize(l.w.data(), l.rows, l.cols, c);
      q.zeros[0] = 0;  // the classic format's zero - 1 wraps
      q.zeros[1] = (1 << bits) - 1;
      const GptqTensors t = models::pack_gptq(q, v2);
      EXPECT_EQ(t.qweight.shape(), (Shape{128 * bits / 32, 32}));
      EXPECT_EQ(t.qzeros.shape(), (Shape{4, 32 * bits / 32}));
      EXPECT_EQ(t.scales.dtype(), DType::f16);
      const QuantizedLinear u =
          models::unpack_gptq(t.qweight, t.qzeros, t.scales, t.g_idx, bits, 32, v2);
      EXPECT_EQ(u.q, q.q);
      EXPECT_EQ(u.zeros, q.zeros);
      EXPECT_EQ(u.g_idx, q.g_idx);
      for (size_t i = 0; i < q.scales.size(); ++i)
        EXPECT_EQ(u.scales[i], f16_to_f32(f32_to_f16(q.scales[i])));
      // Without g_idx: the default c / group_size.
      const QuantizedLinear d =
          models::unpack_gptq(t.qweight, t.qzeros, t.scales, Tensor(), bits, 32, v2);
      EXPECT_EQ(d.g_idx, q.g_idx);
    }
}

TEST(Gptq, PackErrorsNameTheTensor) {
  const Layer l = make_layer(32, 128, 16, 4);
  QuantConfig c;
  c.bits = 5;
  const QuantizedLinear q5 = models::rtn_quantize(l.w.data(), l.rows, l.cols, c);
  test::expect_error([&] { models::pack_gptq(q5); }, {"2, 3, 4 and 8", "got 5"});
  // 3 bits pack 32 values into 3 words: 16 columns do not fill a unit.
  c.bits = 3;
  const Layer narrow = make_layer(32, 48, 16, 4);
  const QuantizedLinear q3 = models::rtn_quantize(narrow.w.data(), narrow.rows, narrow.cols, c);
  test::expect_error([&] { models::pack_gptq(q3); }, {"in_features 48", "multiple of 32"});
  c.bits = 4;
  const QuantizedLinear q = models::rtn_quantize(l.w.data(), l.rows, l.cols, c);
  const GptqTensors t = models::pack_gptq(q);
  const std::string n = "model.layers.0.mlp.up_proj";
  test::expect_error(
      [&] { models::unpack_gptq(t.qweight, t.qweight, t.scales, t.g_idx, 4, 128, false, n); },
      {n + ".qzeros", "[1,4]", "[16,32]"});
  test::expect_error(
      [&] { models::unpack_gptq(t.qweight, t.qzeros, t.scales, t.g_idx, 4, 32, false, n); },
      {n + ".scales", "4 groups"});
  test::expect_error(
      [&] { models::unpack_gptq(t.qweight, t.qzeros, t.qzeros, t.g_idx, 4, 128, false, n); },
      {n + ".scales", "float16"});
  Tensor bad_g = t.g_idx.clone();
  bad_g.set_at(5, 1);
  test::expect_error(
      [&] { models::unpack_gptq(t.qweight, t.qzeros, t.scales, bad_g, 4, 128, false, n); },
      {n + ".g_idx", "entry 5"});
  test::expect_error(
      [&] {
        models::unpack_gptq(t.qweight, t.qzeros, t.scales, t.g_idx.narrow(0, 0, 64), 4, 128, false,
                            n);
      },
      {n + ".g_idx", "[128]", "[64]"});
  test::expect_error(
      [&] { models::unpack_gptq(t.qweight, t.qzeros, t.scales, t.g_idx, 5, 128, false, n); },
      {"2, 3, 4 and 8", "got 5"});
  // As 3-bit words, 16 rows are no whole number of 3-word units.
  test::expect_error(
      [&] { models::unpack_gptq(t.qweight, t.qzeros, t.scales, t.g_idx, 3, 128, false, n); },
      {n + ".qweight", "16 rows", "3-bit"});
}

TEST(Gptq, QuantizationConfig) {
  const models::GptqFormat f = models::gptq_format_from_config_text(
      R"({"architectures": ["LlamaForCausalLM"], "quantization_config": {"quant_method": "gptq",
          "bits": 4, "group_size": 128, "desc_act": true, "sym": false, "damp_percent": 0.01,
          "checkpoint_format": "gptq_v2"}})",
      "cfg");
  EXPECT_EQ(f.bits, 4);
  EXPECT_EQ(f.group_size, 128);
  EXPECT_TRUE(f.desc_act);
  EXPECT_FALSE(f.sym);
  EXPECT_TRUE(f.v2);
  // Round trip through the writer (inside a config.json object).
  const std::string written = models::gptq_quantization_config_json(f);
  const models::GptqFormat g =
      models::gptq_format_from_config_text("{\"quantization_config\": " + written + "}", "w");
  EXPECT_EQ(g.bits, f.bits);
  EXPECT_EQ(g.group_size, f.group_size);
  EXPECT_EQ(g.desc_act, f.desc_act);
  EXPECT_EQ(g.sym, f.sym);
  EXPECT_EQ(g.v2, f.v2);
  // Defaults: classic format, symmetric, no act-order.
  const models::GptqFormat d = models::gptq_format_from_config_text(
      R"({"quantization_config": {"quant_method": "gptq", "bits": 8, "group_size": -1}})", "d");
  EXPECT_TRUE(d.sym);
  EXPECT_FALSE(d.desc_act);
  EXPECT_FALSE(d.v2);
  EXPECT_EQ(d.group_size, -1);
  test::expect_error([] { models::gptq_format_from_config_text("{}", "c.json"); },
                     {"c.json", "no quantization_config"});
  test::expect_error(
      [] {
        models::gptq_format_from_config_text(
            R"({"quantization_config": {"quant_method": "awq", "bits": 4}})", "c.json");
      },
      {"c.json", "quant_method", "awq"});
  test::expect_error(
      [] {
        models::gptq_format_from_config_text(
            R"({"quantization_config": {"quant_method": "gptq", "bits": 4}})", "c.json");
      },
      {"quantization_config.group_size", "none"});
  test::expect_error(
      [] {
        models::gptq_format_from_config_text(
            R"({"quantization_config": {"quant_method": "gptq", "bits": 4, "group_size": 0}})",
            "c.json");
      },
      {"group_size", "got 0"});
  test::expect_error(
      [] {
        models::gptq_format_from_config_text(R"({"quantization_config": {"quant_method": "gptq",
            "bits": 4, "group_size": 128, "checkpoint_format": "marlin"}})",
                                             "c.json");
      },
      {"checkpoint_format", "marlin"});
}

// ---- golden: against PyTorch
// ------------------------------------------------------------------------

// Level mismatches allowed: rounding ties broken differently by the two summation orders.
constexpr double kLevelMismatchFraction = 0.005;
constexpr double kScaleRel = 1e-5;

std::vector<QuantConfig> golden_configs() {
  std::vector<QuantConfig> out;
  for (int bits : {3, 4, 8})
    for (int64_t group : {int64_t(128), int64_t(-1)})
      for (bool act : {false, true})
        for (bool sym : {false, true}) {
          QuantConfig c;
          c.bits = bits;
          c.group_size = group;
          c.act_order = act;
          c.sym = sym;
          out.push_back(c);
        }
  // Groups smaller than a block and groups across blocks.
  for (int64_t group : {int64_t(32), int64_t(192)}) {
    QuantConfig c;
    c.group_size = group;
    c.act_order = true;
    out.push_back(c);
  }
  return out;
}

TEST(GptqGolden, QuantizeMatchesPyTorch) {
  const std::vector<QuantConfig> configs = golden_configs();
  std::vector<Layer> layers;
  std::vector<test::TorchCase> cases;
  for (size_t i = 0; i < configs.size(); ++i) {
    const int64_t rows = 64 + 8 * int64_t(i % 5), cols = i % 2 ? 384 : 256;
    layers.push_back(make_layer(rows, cols, 512, 100 + i));
    const Layer& l = layers.back();
    const std::vector<std::pair<std::string, Tensor>> in = {
        {"W", Tensor::from_vector(l.w, {rows, cols})},
        {"X", Tensor::from_vector(l.x, {l.tokens, cols})}};
    const std::string name = std::to_string(i) + "_" + config_name(configs[i]);
    cases.push_back({"gptq" + name, "gptq_quantize", config_json(configs[i]), in});
    cases.push_back({"rtn" + name, "rtn_quantize", config_json(configs[i]), in});
  }
  const std::map<std::string, test::HostArray> ref = test::run_torch(cases);
  ASSERT_FALSE(ref.empty());
  for (size_t i = 0; i < configs.size(); ++i) {
    const QuantConfig& c = configs[i];
    const Layer& l = layers[i];
    const std::string name = std::to_string(i) + "_" + config_name(c);
    const QuantizedLinear g = models::gptq_quantize(l.w.data(), l.rows, l.cols, hessian_of(l), c);
    const QuantizedLinear r = models::rtn_quantize(l.w.data(), l.rows, l.cols, c);
    const Mismatch mg = compare(g, ref, "gptq" + name, kScaleRel);
    const Mismatch mr = compare(r, ref, "rtn" + name, kScaleRel);
    const double eg = reconstruction_error(l, g), er = reconstruction_error(l, r);
    const double eg_ref = ref.at("gptq" + name + "/err")[0];
    std::printf(
        "  %-22s [%lld,%lld] level mismatches gptq %lld rtn %lld of %lld; scale rel %.1e; "
        "err gptq/rtn %.4f (torch %.4f)\n",
        name.c_str(), (long long)l.rows, (long long)l.cols, (long long)mg.levels,
        (long long)mr.levels, (long long)(l.rows * l.cols), mg.worst_scale_rel, eg / er,
        eg_ref / ref.at("rtn" + name + "/err")[0]);
    const double allowed = kLevelMismatchFraction * double(l.rows * l.cols);
    EXPECT_LE(double(mg.levels), allowed) << name;
    EXPECT_EQ(mg.levels_far, 0) << name;
    EXPECT_EQ(mr.levels, 0) << name;
    EXPECT_EQ(mg.scales, 0) << name << " worst " << mg.worst_scale_rel;
    EXPECT_EQ(mr.scales, 0) << name;
    EXPECT_EQ(mg.zeros, 0) << name;
    EXPECT_EQ(mr.zeros, 0) << name;
    EXPECT_EQ(mg.g_idx, 0) << name;
    EXPECT_EQ(mr.g_idx, 0) << name;
    EXPECT_NEAR(eg, eg_ref, 1e-3 * eg_ref) << name;
    if (c.bits <= 4) {
      EXPECT_LT(eg, er) << name << ": GPTQ not better than RTN";
    }
  }
}

TEST(GptqGolden, PackingMatchesPyTorch) {
  struct PackCase {
    int bits;
    bool v2;
    int64_t group;
  };
  const std::vector<PackCase> pcs = {{4, false, 128}, {4, true, 128}, {2, false, 64},
                                     {8, false, -1},  {8, true, 128}, {4, false, -1},
                                     {3, false, 128}, {3, true, 32},  {3, false, -1}};
  std::vector<QuantizedLinear> qs;
  std::vector<GptqTensors> packed;
  std::vector<test::TorchCase> cases;
  for (size_t i = 0; i < pcs.size(); ++i) {
    Layer l = make_layer(64, 256, 256, 200 + i);
    for (int64_t c = 0; c < l.cols; ++c) l.w[size_t(c)] = std::fabs(l.w[size_t(c)]);  // zero 0
    QuantConfig c;
    c.bits = pcs[i].bits;
    c.group_size = pcs[i].group;
    c.act_order = true;
    qs.push_back(models::gptq_quantize(l.w.data(), l.rows, l.cols, hessian_of(l), c));
    const QuantizedLinear& q = qs.back();
    packed.push_back(models::pack_gptq(q, pcs[i].v2));
    const GptqTensors& t = packed.back();
    const std::string params = config_json(c, pcs[i].v2);
    const std::string name = "pack" + std::to_string(i);
    cases.push_back({name, "gptq_pack", params, result_tensors(q)});
    cases.push_back(
        {"un" + name,
         "gptq_unpack",
         params,
         {{"qweight", t.qweight}, {"qzeros", t.qzeros}, {"scales", t.scales}, {"g_idx", t.g_idx}}});
  }
  const std::map<std::string, test::HostArray> ref = test::run_torch(cases);
  ASSERT_FALSE(ref.empty());
  for (size_t i = 0; i < pcs.size(); ++i) {
    const QuantizedLinear& q = qs[i];
    const GptqTensors& t = packed[i];
    const std::string name = "pack" + std::to_string(i);
    ASSERT_EQ(q.zeros[0], 0) << name << ": the case should hold a zero point of 0";
    // C++ packing read by Python.
    std::vector<float> scales16(q.scales.size());
    for (size_t k = 0; k < q.scales.size(); ++k) scales16[k] = f16_to_f32(f32_to_f16(q.scales[k]));
    QuantizedLinear q16 = q;
    q16.scales = scales16;
    const Mismatch m = compare(q16, ref, "un" + name, 0.0);
    EXPECT_EQ(m.levels + m.zeros + m.scales + m.g_idx, 0) << name << ": C++ pack, Python unpack";
    // Python packing: the same words, and read by C++.
    const test::HostArray& qw = ref.at(name + "/qweight");
    const test::HostArray& qz = ref.at(name + "/qzeros");
    ASSERT_EQ(qw.numel(), t.qweight.numel()) << name;
    ASSERT_EQ(qz.numel(), t.qzeros.numel()) << name;
    int64_t words = 0;
    std::vector<int32_t> qwv(size_t(qw.numel())), qzv(size_t(qz.numel()));
    for (int64_t k = 0; k < qw.numel(); ++k) {
      qwv[size_t(k)] = int32_t(qw[k]);
      words += qwv[size_t(k)] != t.qweight.data_as<int32_t>()[k];
    }
    for (int64_t k = 0; k < qz.numel(); ++k) {
      qzv[size_t(k)] = int32_t(qz[k]);
      words += qzv[size_t(k)] != t.qzeros.data_as<int32_t>()[k];
    }
    EXPECT_EQ(words, 0) << name << ": packed words differ";
    Tensor scales = Tensor::from_vector(scales16, t.scales.shape(), DType::f16);
    Tensor g_idx = Tensor::from_vector_i64(std::vector<int64_t>(q.g_idx.begin(), q.g_idx.end()),
                                           {q.cols}, DType::i64);
    const QuantizedLinear u =
        models::unpack_gptq(int_tensor(qwv, t.qweight.shape()), int_tensor(qzv, t.qzeros.shape()),
                            scales, g_idx, pcs[i].bits, pcs[i].group, pcs[i].v2, name);
    EXPECT_EQ(u.q, q.q) << name << ": Python pack, C++ unpack";
    EXPECT_EQ(u.zeros, q.zeros) << name;
    EXPECT_EQ(u.scales, scales16) << name;
    EXPECT_EQ(u.g_idx, q.g_idx) << name;
  }
}

}  // namespace
}  // namespace origami
