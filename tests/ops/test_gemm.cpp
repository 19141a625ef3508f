// GEMM family (ops/gemm.h): gemm, batched_gemm, grouped_gemm and its backward, against a naive
// double-precision reference written here, finite differences of the backward formulas, and
// PyTorch (tests/golden/ref_gemm.py).
#include "ops/gemm.h"

#include <cmath>
#include <cstdio>
#include <functional>
#include <initializer_list>
#include <string>
#include <thread>
#include <vector>

#include "ops/cpu/gemm.h"
#include "tests/support/test_support.h"

namespace origami {
namespace {

using test::HostArray;
using test::on_test_device;
using test::random_tensor;
using test::to_host_array;
using test::tolerance_for;

// The dtype pairs every GEMM supports: (inputs, output).
struct DTypes {
  DType in, out;
};
const std::vector<DTypes> kDTypes = {
    {DType::f32, DType::f32}, {DType::bf16, DType::f32}, {DType::bf16, DType::bf16}};

std::string describe(const char* what, std::initializer_list<int64_t> dims, DTypes dt,
                     const std::string& extra = "") {
  std::string s = std::string(what) + " [";
  for (int64_t d : dims) s += std::to_string(d) + ",";
  s.back() = ']';
  return s + " " + dtype_name(dt.in) + "->" + dtype_name(dt.out) + " " + extra;
}

std::string trans_str(bool ta, bool tb) {
  return std::string(ta ? "a^T" : "a") + (tb ? " b^T" : " b");
}

// ---- naive references (double) ---------------------------------------------------------------

// out [B?,M,N] = alpha * op(a) @ op(b) + beta * c; a stored [B?,M,K] ([B?,K,M] when ta), b stored
// [B?,K,N] ([B?,N,K] when tb). c may be null (beta ignored).
HostArray naive_gemm(const HostArray& a, const HostArray& b, const HostArray* c, bool ta, bool tb,
                     double alpha, double beta) {
  const bool batched = a.shape.size() == 3;
  const int64_t batches = batched ? a.shape[0] : 1;
  const int64_t ar = a.shape[a.shape.size() - 2], ac = a.shape.back();
  const int64_t br = b.shape[b.shape.size() - 2], bc = b.shape.back();
  const int64_t m = ta ? ac : ar, k = ta ? ar : ac, n = tb ? br : bc;
  HostArray out = test::host_array(batched ? Shape{batches, m, n} : Shape{m, n});
  for (int64_t bb = 0; bb < batches; ++bb) {
    const double* pa = a.data.data() + bb * ar * ac;
    const double* pb = b.data.data() + bb * br * bc;
    for (int64_t i = 0; i < m; ++i)
      for (int64_t j = 0; j < n; ++j) {
        double s = 0;
        for (int64_t kk = 0; kk < k; ++kk)
          s += (ta ? pa[kk * ac + i] : pa[i * ac + kk]) * (tb ? pb[j * bc + kk] : pb[kk * bc + j]);
        const int64_t o = (bb * m + i) * n + j;
        out[o] = alpha * s + (c ? beta * (*c)[o] : 0.0);
      }
  }
  return out;
}

// Element [k][j] of op(w[g]) for w stored [G,K,N] ([G,N,K] when trans_w).
double w_at(const HostArray& w, int64_t g, int64_t kk, int64_t j, bool trans_w) {
  const int64_t d1 = w.shape[1], d2 = w.shape[2];
  return trans_w ? w[(g * d1 + j) * d2 + kk] : w[(g * d1 + kk) * d2 + j];
}

HostArray naive_grouped(const HostArray& x, const HostArray& w, const std::vector<int64_t>& rows,
                        const HostArray* c, bool trans_w, double alpha, double beta) {
  const int64_t k = x.shape[1], n = trans_w ? w.shape[1] : w.shape[2];
  HostArray out = test::host_array({x.shape[0], n});
  int64_t r = 0;
  for (size_t g = 0; g < rows.size(); ++g)
    for (int64_t i = 0; i < rows[g]; ++i, ++r)
      for (int64_t j = 0; j < n; ++j) {
        double s = 0;
        for (int64_t kk = 0; kk < k; ++kk) s += x[r * k + kk] * w_at(w, int64_t(g), kk, j, trans_w);
        out[r * n + j] = alpha * s + (c ? beta * (*c)[r * n + j] : 0.0);
      }
  return out;
}

// dx = dout_g @ op(w_g)^T (+ dx0), dw = dw0 + x_g^T @ dout_g (in w's layout).
void naive_grouped_backward(const HostArray& x, const HostArray& w, const HostArray& dout,
                            const std::vector<int64_t>& rows, bool trans_w, const HostArray* dx0,
                            HostArray& dx, HostArray& dw) {
  const int64_t k = x.shape[1], n = dout.shape[1];
  dx = dx0 ? *dx0 : test::host_array(x.shape);
  int64_t r = 0;
  for (size_t g = 0; g < rows.size(); ++g)
    for (int64_t i = 0; i < rows[g]; ++i, ++r)
      for (int64_t kk = 0; kk < k; ++kk)
        for (int64_t j = 0; j < n; ++j) {
          const double d = dout[r * n + j];
          dx[r * k + kk] += d * w_at(w, int64_t(g), kk, j, trans_w);
          const int64_t wi =
              trans_w ? (int64_t(g) * n + j) * k + kk : (int64_t(g) * k + kk) * n + j;
          dw[wi] += x[r * k + kk] * d;
        }
}

// ---- helpers -----------------------------------------------------------------------------------

uint64_t next_seed() {
  static uint64_t seed = 1000;
  return ++seed;
}

// Stored shape of an operand: [rows, cols], or [cols, rows] when transposed; batch in front.
Shape stored(int64_t batch, int64_t rows, int64_t cols, bool trans) {
  Shape s = trans ? Shape{cols, rows} : Shape{rows, cols};
  if (batch) s.insert(s.begin(), batch);
  return s;
}

// Gradients of out = alpha * op(a) @ op(b), by calling gemm with transpose flags:
//   d op(a) = alpha * dout @ op(b)^T,  d op(b) = alpha * op(a)^T @ dout.
void gemm_grads(const Tensor& a, const Tensor& b, const Tensor& dout, bool ta, bool tb, float alpha,
                Tensor& da, Tensor& db) {
  auto mm = [&](const Tensor& x, const Tensor& y, Tensor& o, bool tx, bool ty) {
    ops::GemmOptions opt{.trans_a = tx, .trans_b = ty, .alpha = alpha};
    if (x.dim() == 3)
      ops::batched_gemm(x, y, o, opt);
    else
      ops::gemm(x, y, o, opt);
  };
  if (!ta)
    mm(dout, b, da, false, !tb);  // da [M,K] = dout @ op(b)^T
  else
    mm(b, dout, da, tb, true);  // da [K,M] = op(b) @ dout^T
  if (!tb)
    mm(a, dout, db, !ta, false);  // db [K,N] = op(a)^T @ dout
  else
    mm(dout, a, db, true, ta);  // db [N,K] = dout^T @ op(a)
}

template <typename Fn>
void expect_error(Fn&& fn, std::initializer_list<const char*> pieces) {
  try {
    fn();
    ADD_FAILURE() << "expected origami::Error";
  } catch (const Error& e) {
    const std::string what = e.what();
    for (const char* p : pieces)
      EXPECT_NE(what.find(p), std::string::npos) << "message '" << what << "' lacks '" << p << "'";
  }
}

const HostArray& torch_out(const std::map<std::string, HostArray>& ref, const std::string& key) {
  static const HostArray missing;
  auto it = ref.find(key);
  if (it == ref.end()) {
    ADD_FAILURE() << "PyTorch gave no output " << key;
    return missing;
  }
  return it->second;
}

const int64_t kSizes[] = {1, 3, 17, 130};

// ---- Gemm: naive reference -----------------------------------------------------------------

TEST(Gemm, AllShapesTransposesAndDTypesMatchNaive) {
  ORIGAMI_REQUIRE_TEST_DEVICE();
  for (DTypes dt : kDTypes)
    for (int64_t m : kSizes)
      for (int64_t n : kSizes)
        for (int64_t k : kSizes)
          for (int t = 0; t < 4; ++t) {
            const bool ta = t & 1, tb = t & 2;
            SCOPED_TRACE(describe("gemm MNK", {m, n, k}, dt, trans_str(ta, tb)));
            Tensor a = random_tensor(stored(0, m, k, ta), dt.in, next_seed());
            Tensor b = random_tensor(stored(0, k, n, tb), dt.in, next_seed());
            Tensor out = test::empty_on_test_device({m, n}, dt.out);  // NaN: must be overwritten
            ops::gemm(on_test_device(a), on_test_device(b), out, {.trans_a = ta, .trans_b = tb});
            HostArray ref = naive_gemm(to_host_array(a), to_host_array(b), nullptr, ta, tb, 1, 0);
            EXPECT_ALL_CLOSE(out, ref, tolerance_for(dt.out));
          }
}

TEST(Gemm, AlphaAndBeta) {
  ORIGAMI_REQUIRE_TEST_DEVICE();
  struct Case {
    int64_t m, n, k;
    float alpha, beta;
  };
  const Case cases[] = {{17, 130, 3, 0.5f, 0.0f},
                        {130, 17, 130, -1.25f, 1.0f},
                        {3, 1, 17, 1.0f, -2.0f},
                        {1, 3, 130, 2.0f, 0.75f},
                        {17, 17, 17, 0.0f, 1.0f}};
  for (DTypes dt : kDTypes)
    for (const Case& c : cases)
      for (int t = 0; t < 4; ++t) {
        const bool ta = t & 1, tb = t & 2;
        SCOPED_TRACE(describe("gemm MNK", {c.m, c.n, c.k}, dt,
                              trans_str(ta, tb) + " alpha " + std::to_string(c.alpha) + " beta " +
                                  std::to_string(c.beta)));
        Tensor a = random_tensor(stored(0, c.m, c.k, ta), dt.in, next_seed());
        Tensor b = random_tensor(stored(0, c.k, c.n, tb), dt.in, next_seed());
        Tensor c0 = random_tensor({c.m, c.n}, dt.out, next_seed());
        Tensor out =
            c.beta == 0.0f ? test::empty_on_test_device({c.m, c.n}, dt.out) : on_test_device(c0);
        ops::gemm(on_test_device(a), on_test_device(b), out,
                  {.trans_a = ta, .trans_b = tb, .alpha = c.alpha, .beta = c.beta});
        HostArray c_host = to_host_array(c0);
        HostArray ref = naive_gemm(to_host_array(a), to_host_array(b),
                                   c.beta == 0.0f ? nullptr : &c_host, ta, tb, c.alpha, c.beta);
        EXPECT_ALL_CLOSE(out, ref, tolerance_for(dt.out));
      }
}

TEST(Gemm, EmptyDimensions) {
  ORIGAMI_REQUIRE_TEST_DEVICE();
  for (DTypes dt : kDTypes) {
    SCOPED_TRACE(describe("gemm K=0", {3, 17, 0}, dt));
    // K = 0: out = beta * out, and with beta 0 out is zeroed (not left NaN).
    Tensor a = random_tensor({3, 0}, dt.in, 1), b = random_tensor({0, 17}, dt.in, 2);
    Tensor c0 = random_tensor({3, 17}, dt.out, next_seed());
    Tensor out = on_test_device(c0);
    ops::gemm(on_test_device(a), on_test_device(b), out, {.beta = 0.5f});
    HostArray expected = to_host_array(c0);
    for (double& v : expected.data) v *= 0.5;
    EXPECT_ALL_CLOSE(out, expected, tolerance_for(dt.out));
    Tensor out0 = test::empty_on_test_device({3, 17}, dt.out);
    ops::gemm(on_test_device(a), on_test_device(b), out0);
    const HostArray zeros = test::host_array({3, 17});
    EXPECT_ALL_CLOSE(out0, zeros, tolerance_for(dt.out));
    // M = 0 and N = 0: nothing to do.
    Tensor none = test::empty_on_test_device({0, 17}, dt.out);
    ops::gemm(on_test_device(random_tensor({0, 3}, dt.in, 3)),
              on_test_device(random_tensor({3, 17}, dt.in, 4)), none);
    Tensor none2 = test::empty_on_test_device({3, 0}, dt.out);
    ops::gemm(on_test_device(random_tensor({3, 3}, dt.in, 3)),
              on_test_device(random_tensor({3, 0}, dt.in, 4)), none2);
  }
}

TEST(Gemm, BatchedMatchesNaive) {
  ORIGAMI_REQUIRE_TEST_DEVICE();
  const int64_t shapes[][3] = {{1, 3, 17}, {17, 130, 3}, {130, 1, 17}, {3, 17, 130}};
  for (DTypes dt : kDTypes)
    for (int64_t batch : {1, 3})
      for (const auto& s : shapes)
        for (int t = 0; t < 4; ++t) {
          const bool ta = t & 1, tb = t & 2;
          const int64_t m = s[0], n = s[1], k = s[2];
          const float alpha = t == 3 ? 0.5f : 1.0f, beta = t == 2 ? 1.0f : 0.0f;
          SCOPED_TRACE(describe("batched_gemm BMNK", {batch, m, n, k}, dt, trans_str(ta, tb)));
          Tensor a = random_tensor(stored(batch, m, k, ta), dt.in, next_seed());
          Tensor b = random_tensor(stored(batch, k, n, tb), dt.in, next_seed());
          Tensor c0 = random_tensor({batch, m, n}, dt.out, next_seed());
          Tensor out =
              beta == 0.0f ? test::empty_on_test_device({batch, m, n}, dt.out) : on_test_device(c0);
          ops::batched_gemm(on_test_device(a), on_test_device(b), out,
                            {.trans_a = ta, .trans_b = tb, .alpha = alpha, .beta = beta});
          HostArray c_host = to_host_array(c0);
          HostArray ref = naive_gemm(to_host_array(a), to_host_array(b),
                                     beta == 0.0f ? nullptr : &c_host, ta, tb, alpha, beta);
          EXPECT_ALL_CLOSE(out, ref, tolerance_for(dt.out));
        }
}

// Row splits with variable and empty groups, a single group, and no rows at all.
const std::vector<std::vector<int64_t>> kGroupRows = {
    {3, 0, 17, 1, 0, 130}, {0, 3, 0}, {17}, {0, 0, 0}};

int64_t total_rows(const std::vector<int64_t>& rows) {
  int64_t t = 0;
  for (int64_t r : rows) t += r;
  return t;
}

TEST(Gemm, GroupedMatchesNaive) {
  ORIGAMI_REQUIRE_TEST_DEVICE();
  const int64_t kn[][2] = {{17, 130}, {130, 3}, {1, 17}};
  for (DTypes dt : kDTypes)
    for (const auto& rows : kGroupRows)
      for (const auto& s : kn)
        for (bool trans_w : {false, true})
          for (int ab = 0; ab < 2; ++ab) {
            const int64_t k = s[0], n = s[1], g = int64_t(rows.size()), t = total_rows(rows);
            const float alpha = ab ? 0.5f : 1.0f, beta = ab ? 1.0f : 0.0f;
            SCOPED_TRACE(describe("grouped_gemm GTKN", {g, t, k, n}, dt,
                                  std::string(trans_w ? "w^T" : "w") + (ab ? " alpha/beta" : "")));
            Tensor x = random_tensor({t, k}, dt.in, next_seed());
            Tensor w = random_tensor(trans_w ? Shape{g, n, k} : Shape{g, k, n}, dt.in, next_seed());
            Tensor c0 = random_tensor({t, n}, dt.out, next_seed());
            Tensor out = ab ? on_test_device(c0) : test::empty_on_test_device({t, n}, dt.out);
            ops::grouped_gemm(on_test_device(x), on_test_device(w), rows, out, trans_w, alpha,
                              beta);
            HostArray c_host = to_host_array(c0);
            HostArray ref = naive_grouped(to_host_array(x), to_host_array(w), rows,
                                          ab ? &c_host : nullptr, trans_w, alpha, beta);
            EXPECT_ALL_CLOSE(out, ref, tolerance_for(dt.out));
          }
}

// fixed_rows: a row's result does not depend on how many rows its group has or where it sits in
// the group (batch-invariant MoE inference). One row computed in group 0 of 1 to 40 rows, at
// different places, with the other groups' sizes changing too, must be the same bits every time,
// and equal the naive product.
// (A CPU option: the test runs on the CPU whatever the test device.)
TEST(Gemm, GroupedFixedRowsIsBatchInvariant) {
  const int64_t K = 96, N = 80, G = 3;
  for (DType dt : {DType::f32, DType::bf16}) {
    const Tensor w = test::random_tensor({G, N, K}, dt, 7);  // trans_w: [G,N,K]
    const Tensor row = test::random_tensor({1, K}, dt, 8);
    std::vector<float> first;
    for (int64_t rows0 = 1; rows0 <= 40; rows0 += 3) {
      const std::vector<int64_t> rows = {rows0, 5 + rows0 % 4, 0};
      const int64_t T = rows[0] + rows[1] + rows[2];
      Tensor x = test::random_tensor({T, K}, dt, uint64_t(100 + rows0));
      const int64_t at = (rows0 * 7) % rows0 == 0 ? rows0 / 2 : (rows0 * 7) % rows0;  // its place
      x.narrow(0, at, 1).copy_from(row);
      Tensor out = Tensor::empty({T, N}, dt);
      ops::grouped_gemm(x, w, rows, out, true, 1.0f, 0.0f, /*fixed_rows=*/true);
      const std::vector<float> got = out.narrow(0, at, 1).contiguous().to_float_vector();
      if (first.empty()) {
        first = got;
        // The naive product of the row with group 0's weights.
        const std::vector<float> wv = w.to_float_vector(), rv = row.to_float_vector();
        for (int64_t n = 0; n < N; ++n) {
          double acc = 0;
          for (int64_t k = 0; k < K; ++k) acc += double(rv[size_t(k)]) * wv[size_t(n * K + k)];
          EXPECT_NEAR(got[size_t(n)], acc, dt == DType::f32 ? 1e-4 : 0.1 * (1 + std::abs(acc)));
        }
      }
      EXPECT_EQ(got, first) << dtype_name(dt) << ": group of " << rows0 << " rows";
    }
  }
}

TEST(Gemm, GroupedBackwardMatchesNaive) {
  ORIGAMI_REQUIRE_TEST_DEVICE();
  // (inputs, dx, dw) dtypes.
  const DType combos[][3] = {{DType::f32, DType::f32, DType::f32},
                             {DType::bf16, DType::bf16, DType::f32},
                             {DType::bf16, DType::f32, DType::bf16}};
  const int64_t k = 17, n = 130;
  for (const auto& dts : combos)
    for (const auto& rows : kGroupRows)
      for (bool trans_w : {false, true})
        for (bool accumulate_dx : {false, true}) {
          const int64_t g = int64_t(rows.size()), t = total_rows(rows);
          SCOPED_TRACE(describe("grouped_gemm_backward GTKN", {g, t, k, n}, {dts[0], dts[1]},
                                std::string("dw ") + dtype_name(dts[2]) +
                                    (trans_w ? " w^T" : " w") + (accumulate_dx ? " acc" : "")));
          Tensor x = random_tensor({t, k}, dts[0], next_seed());
          Tensor w = random_tensor(trans_w ? Shape{g, n, k} : Shape{g, k, n}, dts[0], next_seed());
          Tensor dout = random_tensor({t, n}, dts[0], next_seed());
          Tensor dx0 = random_tensor({t, k}, dts[1], next_seed());
          Tensor dw0 = random_tensor(w.shape(), dts[2], next_seed());
          Tensor dx =
              accumulate_dx ? on_test_device(dx0) : test::empty_on_test_device({t, k}, dts[1]);
          Tensor dw = on_test_device(dw0);
          ops::grouped_gemm_backward(on_test_device(x), on_test_device(w), on_test_device(dout),
                                     rows, dx, dw, trans_w, accumulate_dx);
          HostArray dx0_host = to_host_array(dx0), ref_dx, ref_dw = to_host_array(dw0);
          naive_grouped_backward(to_host_array(x), to_host_array(w), to_host_array(dout), rows,
                                 trans_w, accumulate_dx ? &dx0_host : nullptr, ref_dx, ref_dw);
          EXPECT_ALL_CLOSE(dx, ref_dx, tolerance_for(dts[1]));
          EXPECT_ALL_CLOSE(dw, ref_dw, tolerance_for(dts[2]));
          // Each gradient alone (the other undefined).
          Tensor none, dw_only = on_test_device(dw0),
                       dx_only = test::empty_on_test_device({t, k}, dts[1]);
          ops::grouped_gemm_backward(on_test_device(x), on_test_device(w), on_test_device(dout),
                                     rows, none, dw_only, trans_w);
          EXPECT_ALL_CLOSE(dw_only, ref_dw, tolerance_for(dts[2]));
          if (!accumulate_dx) {
            ops::grouped_gemm_backward(on_test_device(x), on_test_device(w), on_test_device(dout),
                                       rows, dx_only, none, trans_w);
            EXPECT_ALL_CLOSE(dx_only, ref_dx, tolerance_for(dts[1]));
          }
        }
}

// ---- finite differences ------------------------------------------------------------------------

TEST(Gemm, FiniteDifferencesOfGemmBackward) {
  ORIGAMI_REQUIRE_TEST_DEVICE();
  const int64_t m = 3, n = 5, k = 17;
  for (int t = 0; t < 4; ++t) {
    const bool ta = t & 1, tb = t & 2;
    const float alpha = t == 1 ? 0.5f : 1.0f;
    SCOPED_TRACE(trans_str(ta, tb));
    Tensor a = random_tensor(stored(0, m, k, ta), DType::f32, next_seed());
    Tensor b = random_tensor(stored(0, k, n, tb), DType::f32, next_seed());
    Tensor r = random_tensor({m, n}, DType::f32, next_seed());
    auto loss = [&] {
      Tensor out = test::empty_on_test_device({m, n}, DType::f32);
      ops::gemm(on_test_device(a), on_test_device(b), out,
                {.trans_a = ta, .trans_b = tb, .alpha = alpha});
      return test::weighted_sum(out, r);
    };
    Tensor da = test::empty_on_test_device(a.shape(), DType::f32);
    Tensor db = test::empty_on_test_device(b.shape(), DType::f32);
    gemm_grads(on_test_device(a), on_test_device(b), on_test_device(r), ta, tb, alpha, da, db);
    EXPECT_LT(test::finite_difference_error(loss, a, da), test::kFiniteDifferenceTolerance);
    EXPECT_LT(test::finite_difference_error(loss, b, db), test::kFiniteDifferenceTolerance);
  }
}

TEST(Gemm, FiniteDifferencesOfGroupedGemmBackward) {
  ORIGAMI_REQUIRE_TEST_DEVICE();
  const std::vector<int64_t> rows = {2, 0, 4, 1};
  const int64_t g = 4, t = 7, k = 5, n = 3;
  for (bool trans_w : {false, true}) {
    SCOPED_TRACE(trans_w ? "w^T" : "w");
    Tensor x = random_tensor({t, k}, DType::f32, next_seed());
    Tensor w = random_tensor(trans_w ? Shape{g, n, k} : Shape{g, k, n}, DType::f32, next_seed());
    Tensor r = random_tensor({t, n}, DType::f32, next_seed());
    auto loss = [&] {
      Tensor out = test::empty_on_test_device({t, n}, DType::f32);
      ops::grouped_gemm(on_test_device(x), on_test_device(w), rows, out, trans_w);
      return test::weighted_sum(out, r);
    };
    Tensor dx = test::empty_on_test_device(x.shape(), DType::f32);
    Tensor dw = on_test_device(Tensor::zeros(w.shape(), DType::f32));
    ops::grouped_gemm_backward(on_test_device(x), on_test_device(w), on_test_device(r), rows, dx,
                               dw, trans_w);
    EXPECT_LT(test::finite_difference_error(loss, x, dx), test::kFiniteDifferenceTolerance);
    EXPECT_LT(test::finite_difference_error(loss, w, dw, 24), test::kFiniteDifferenceTolerance);
  }
}

// ---- bad input -------------------------------------------------------------------------------

TEST(Gemm, BadInputThrowsNamingOpAndShapes) {
  ORIGAMI_REQUIRE_TEST_DEVICE();
  const DType f32 = DType::f32, bf16 = DType::bf16;
  Tensor a34 = Tensor::zeros({3, 4}, f32), b56 = Tensor::zeros({5, 6}, f32);
  Tensor b45 = Tensor::zeros({4, 5}, f32), out35 = Tensor::empty({3, 5}, f32);
  expect_error([&] { ops::gemm(a34, b56, out35); }, {"gemm:", "f32[3,4]", "f32[5,6]"});
  expect_error([&] { ops::gemm(a34, b45, out35, {.trans_a = true}); },
               {"gemm:", "inner dimensions", "f32[3,4]", "transposed"});
  Tensor b45h = Tensor::zeros({4, 5}, bf16);
  expect_error([&] { ops::gemm(a34, b45h, out35); }, {"gemm:", "f32[3,4]", "bf16[4,5]"});
  Tensor out35h = Tensor::empty({3, 5}, bf16);
  expect_error([&] { ops::gemm(a34, b45, out35h); }, {"gemm:", "out", "bf16[3,5]"});
  Tensor out36 = Tensor::empty({3, 6}, f32);
  expect_error([&] { ops::gemm(a34, b45, out36); }, {"gemm:", "out", "[3,5]", "f32[3,6]"});
  Tensor a3d = Tensor::zeros({2, 3, 4}, f32);
  expect_error([&] { ops::gemm(a3d, b45, out35); }, {"gemm:", "f32[2,3,4]"});
  Tensor ai = Tensor::zeros({3, 4}, DType::i32), bi = Tensor::zeros({4, 5}, DType::i32);
  expect_error([&] { ops::gemm(ai, bi, out35); }, {"gemm:", "i32[3,4]"});
  // Device mismatch (the CUDA tensor only wraps host memory: the check fails before any use).
  std::vector<float> host(20);
  Tensor b_cuda = Tensor::from_blob(host.data(), {4, 5}, f32, Device::cuda(0));
  expect_error([&] { ops::gemm(a34, b_cuda, out35); },
               {"gemm:", "one device", "f32[3,4] cpu", "f32[4,5] cuda:0"});
  // Batched.
  Tensor ba = Tensor::zeros({2, 3, 4}, f32), bb = Tensor::zeros({3, 4, 5}, f32);
  Tensor bo = Tensor::empty({2, 3, 5}, f32);
  expect_error([&] { ops::batched_gemm(ba, bb, bo); },
               {"batched_gemm:", "f32[2,3,4]", "f32[3,4,5]"});
  // Grouped.
  Tensor x = Tensor::zeros({10, 4}, f32), w = Tensor::zeros({3, 4, 5}, f32);
  Tensor gout = Tensor::empty({10, 5}, f32);
  const std::vector<int64_t> bad_sum = {3, 3, 3}, bad_count = {5, 5}, negative = {12, -2, 0};
  expect_error([&] { ops::grouped_gemm(x, w, bad_sum, gout); },
               {"grouped_gemm:", "sum to 9", "f32[10,4]"});
  expect_error([&] { ops::grouped_gemm(x, w, bad_count, gout); },
               {"grouped_gemm:", "2 entries", "f32[3,4,5]"});
  expect_error([&] { ops::grouped_gemm(x, w, negative, gout); }, {"grouped_gemm:", "negative"});
  const std::vector<int64_t> ok = {3, 3, 4};
  expect_error([&] { ops::grouped_gemm(x, w, ok, gout, /*trans_w=*/true); },
               {"grouped_gemm:", "f32[10,4]", "f32[3,4,5]"});
  Tensor wh = Tensor::zeros({3, 4, 5}, bf16);
  expect_error([&] { ops::grouped_gemm(x, wh, ok, gout); }, {"grouped_gemm:", "bf16[3,4,5]"});
  Tensor dout_bad = Tensor::zeros({10, 6}, f32), dx = Tensor::empty({10, 4}, f32);
  Tensor dw = Tensor::zeros({3, 4, 5}, f32);
  expect_error([&] { ops::grouped_gemm_backward(x, w, dout_bad, ok, dx, dw); },
               {"grouped_gemm_backward:", "dout", "f32[10,6]"});
  Tensor dout = Tensor::zeros({10, 5}, f32), dw_bad = Tensor::zeros({3, 5, 4}, f32);
  expect_error([&] { ops::grouped_gemm_backward(x, w, dout, ok, dx, dw_bad); },
               {"grouped_gemm_backward:", "dw", "f32[3,5,4]"});
  expect_error([&] { ops::grouped_gemm_backward(x, w, dout, bad_sum, dx, dw); },
               {"grouped_gemm_backward:", "sum to 9"});
  std::vector<float> host2(20);
  Tensor dw_cuda = Tensor::from_blob(host2.data(), {3, 4, 5}, f32, Device::cuda(0));
  expect_error([&] { ops::grouped_gemm_backward(x, w, dout, ok, dx, dw_cuda); },
               {"grouped_gemm_backward:", "one device", "dw f32[3,4,5] cuda:0"});
}

// ---- the CPU primitive cache ------------------------------------------------------------------

TEST(Gemm, CpuPrimitivesAreCreatedOncePerProblem) {
  ORIGAMI_REQUIRE_TEST_DEVICE();
  if (!test::test_device().is_cpu()) GTEST_SKIP() << "the primitive cache is the CPU backend's";
  Tensor a = random_tensor({29, 31}, DType::f32, 1), b = random_tensor({31, 37}, DType::f32, 2);
  Tensor out = Tensor::empty({29, 37}, DType::f32);
  ops::gemm(a, b, out);
  const uint64_t created = ops::cpu::primitives_created();
  for (int i = 0; i < 3; ++i) ops::gemm(a, b, out);
  EXPECT_EQ(ops::cpu::primitives_created(), created);
  ops::gemm(a, b, out, {.beta = 1.0f});  // another problem: a new primitive
  EXPECT_EQ(ops::cpu::primitives_created(), created + 1);
  // Grouped: the rows per group change from call to call without new primitives.
  Tensor x = random_tensor({40, 31}, DType::f32, 3), w = random_tensor({3, 31, 37}, DType::f32, 4);
  Tensor gout = Tensor::empty({40, 37}, DType::f32);
  ops::grouped_gemm(x, w, std::vector<int64_t>{10, 20, 10}, gout);
  const uint64_t created_grouped = ops::cpu::primitives_created();
  for (const auto& rows : {std::vector<int64_t>{1, 2, 37}, {39, 0, 1}, {13, 14, 13}})
    ops::grouped_gemm(x, w, rows, gout);
  EXPECT_EQ(ops::cpu::primitives_created(), created_grouped);
}

TEST(Gemm, ConcurrentCallsFromSeveralThreads) {
  ORIGAMI_REQUIRE_TEST_DEVICE();
  // The same problem from four threads at once: each gets its own results (the CPU backend
  // shares one cached primitive and its reusable memory objects between them).
  const int64_t m = 17, n = 130, k = 3;
  constexpr int kThreads = 4;
  std::vector<Tensor> as, bs, outs;
  std::vector<HostArray> refs;
  for (int t = 0; t < kThreads; ++t) {
    as.push_back(random_tensor({m, k}, DType::f32, next_seed()));
    bs.push_back(random_tensor({k, n}, DType::f32, next_seed()));
    refs.push_back(naive_gemm(to_host_array(as.back()), to_host_array(bs.back()), nullptr, false,
                              false, 1, 0));
    as.back() = on_test_device(as.back());
    bs.back() = on_test_device(bs.back());
    outs.push_back(test::empty_on_test_device({m, n}, DType::f32));
  }
  std::vector<std::thread> threads;
  std::vector<int> failures(kThreads, 0);
  for (int t = 0; t < kThreads; ++t)
    threads.emplace_back([&, t] {
      for (int i = 0; i < 50; ++i) {
        outs[size_t(t)].fill_(std::nan(""));
        ops::gemm(as[size_t(t)], bs[size_t(t)], outs[size_t(t)]);
        if (!test::all_close(outs[size_t(t)], refs[size_t(t)], tolerance_for(DType::f32)))
          ++failures[size_t(t)];
      }
    });
  for (auto& th : threads) th.join();
  for (int t = 0; t < kThreads; ++t) EXPECT_EQ(failures[size_t(t)], 0) << "thread " << t;
}

// ---- PyTorch ------------------------------------------------------------------------------------

std::string gemm_params(bool ta, bool tb, float alpha, float beta) {
  char buf[160];
  std::snprintf(buf, sizeof buf,
                "{\"trans_a\": %s, \"trans_b\": %s, \"alpha\": %.9g, \"beta\": %.9g}",
                ta ? "true" : "false", tb ? "true" : "false", double(alpha), double(beta));
  return buf;
}

TEST(GemmGolden, GemmAndBatchedGemmWithGradientsMatchPyTorch) {
  ORIGAMI_REQUIRE_TEST_DEVICE();
  struct Run {
    std::string name;
    DTypes dt;
    bool ta, tb;
    float alpha, beta;
    Tensor a, b, c, dout, out, da, db;
  };
  std::vector<Run> runs;
  std::vector<test::TorchCase> cases;
  const int64_t shapes[][4] = {// batch (0: 2-D), m, n, k
                               {0, 1, 3, 17}, {0, 17, 130, 3}, {0, 130, 17, 130},
                               {0, 3, 1, 1},  {3, 17, 3, 130}, {2, 1, 17, 3}};
  for (DTypes dt : kDTypes)
    for (const auto& s : shapes)
      for (int t = 0; t < 4; ++t) {
        Run r;
        const int64_t batch = s[0], m = s[1], n = s[2], k = s[3];
        r.dt = dt;
        r.ta = t & 1;
        r.tb = t & 2;
        r.alpha = t == 1 ? 0.75f : 1.0f;
        r.beta = t == 2 ? 0.5f : 0.0f;
        r.name = "gemm_" + std::to_string(runs.size());
        r.a = random_tensor(stored(batch, m, k, r.ta), dt.in, next_seed());
        r.b = random_tensor(stored(batch, k, n, r.tb), dt.in, next_seed());
        const Shape out_shape = batch ? Shape{batch, m, n} : Shape{m, n};
        r.c = random_tensor(out_shape, dt.out, next_seed());
        r.dout = random_tensor(out_shape, dt.in, next_seed());
        r.out =
            r.beta == 0.0f ? test::empty_on_test_device(out_shape, dt.out) : on_test_device(r.c);
        const ops::GemmOptions opt{
            .trans_a = r.ta, .trans_b = r.tb, .alpha = r.alpha, .beta = r.beta};
        if (batch)
          ops::batched_gemm(on_test_device(r.a), on_test_device(r.b), r.out, opt);
        else
          ops::gemm(on_test_device(r.a), on_test_device(r.b), r.out, opt);
        r.da = test::empty_on_test_device(r.a.shape(), dt.out);
        r.db = test::empty_on_test_device(r.b.shape(), dt.out);
        gemm_grads(on_test_device(r.a), on_test_device(r.b), on_test_device(r.dout), r.ta, r.tb,
                   r.alpha, r.da, r.db);
        test::TorchCase tc{r.name,
                           "gemm",
                           gemm_params(r.ta, r.tb, r.alpha, r.beta),
                           {{"a", r.a}, {"b", r.b}, {"dout", r.dout}}};
        if (r.beta != 0.0f) tc.inputs.push_back({"c", r.c});
        cases.push_back(tc);
        runs.push_back(std::move(r));
      }
  const auto ref = test::run_torch(cases);
  for (const Run& r : runs) {
    SCOPED_TRACE(r.name + " " + r.a.str() + " @ " + r.b.str() + " " + trans_str(r.ta, r.tb) +
                 " -> " + dtype_name(r.dt.out));
    EXPECT_ALL_CLOSE(r.out, torch_out(ref, r.name + "/out"), tolerance_for(r.dt.out));
    EXPECT_ALL_CLOSE(r.da, torch_out(ref, r.name + "/da"), tolerance_for(r.dt.out));
    EXPECT_ALL_CLOSE(r.db, torch_out(ref, r.name + "/db"), tolerance_for(r.dt.out));
  }
}

TEST(GemmGolden, GroupedGemmAndBackwardMatchPyTorch) {
  ORIGAMI_REQUIRE_TEST_DEVICE();
  struct Run {
    std::string name;
    DTypes dt;
    Tensor x, w, out, dx, dw;
  };
  std::vector<Run> runs;
  std::vector<test::TorchCase> cases;
  const int64_t kn[][2] = {{17, 130}, {130, 3}};
  for (DTypes dt : kDTypes)
    for (const auto& rows : kGroupRows)
      for (const auto& s : kn)
        for (bool trans_w : {false, true}) {
          Run r;
          const int64_t k = s[0], n = s[1], g = int64_t(rows.size()), t = total_rows(rows);
          const float beta = trans_w ? 0.5f : 0.0f;
          r.dt = dt;
          r.name = "grouped_" + std::to_string(runs.size());
          r.x = random_tensor({t, k}, dt.in, next_seed());
          r.w = random_tensor(trans_w ? Shape{g, n, k} : Shape{g, k, n}, dt.in, next_seed());
          Tensor c = random_tensor({t, n}, dt.out, next_seed());
          Tensor dout = random_tensor({t, n}, dt.in, next_seed());
          r.out = beta == 0.0f ? test::empty_on_test_device({t, n}, dt.out) : on_test_device(c);
          ops::grouped_gemm(on_test_device(r.x), on_test_device(r.w), rows, r.out, trans_w, 1.0f,
                            beta);
          r.dx = test::empty_on_test_device({t, k}, dt.out);
          r.dw = on_test_device(Tensor::zeros(r.w.shape(), dt.out));
          ops::grouped_gemm_backward(on_test_device(r.x), on_test_device(r.w), on_test_device(dout),
                                     rows, r.dx, r.dw, trans_w);
          test::TorchCase tc{r.name,
                             "grouped_gemm",
                             std::string("{\"trans_w\": ") + (trans_w ? "true" : "false") +
                                 ", \"beta\": " + std::to_string(beta) + "}",
                             {{"x", r.x},
                              {"w", r.w},
                              {"dout", dout},
                              {"group_rows", Tensor::from_vector_i64(rows, {g})}}};
          if (beta != 0.0f) tc.inputs.push_back({"c", c});
          cases.push_back(tc);
          runs.push_back(std::move(r));
        }
  const auto ref = test::run_torch(cases);
  for (const Run& r : runs) {
    SCOPED_TRACE(r.name + " x " + r.x.str() + " w " + r.w.str() + " -> " + dtype_name(r.dt.out));
    EXPECT_ALL_CLOSE(r.out, torch_out(ref, r.name + "/out"), tolerance_for(r.dt.out));
    EXPECT_ALL_CLOSE(r.dx, torch_out(ref, r.name + "/dx"), tolerance_for(r.dt.out));
    EXPECT_ALL_CLOSE(r.dw, torch_out(ref, r.name + "/dw"), tolerance_for(r.dt.out));
  }
}

}  // namespace
}  // namespace origami
