// Softmax (forward, backward) and top-k (values, indices, backward): naive double references,
// finite differences, ties, bad input, and PyTorch golden values.
#include <algorithm>
#include <cmath>
#include <numeric>
#include <string>
#include <vector>

#include "ops/softmax.h"
#include "tests/support/test_support.h"

namespace origami {
namespace {

using test::HostArray;

template <typename Fn>
void expect_error(Fn&& fn, const std::vector<std::string>& parts) {
  try {
    fn();
    ADD_FAILURE() << "no origami::Error thrown; expected one naming: " << parts[0];
  } catch (const Error& e) {
    for (const std::string& p : parts)
      EXPECT_NE(std::string(e.what()).find(p), std::string::npos)
          << "message \"" << e.what() << "\" does not contain \"" << p << "\"";
  }
}

// exp(x - max) / sum; dx_i = sum_j dy_j y_j ([i == j] - y_i), written as the Jacobian product.
void reference_softmax(const HostArray& x, const HostArray& dy, HostArray& y, HostArray& dx) {
  const int64_t R = x.shape[0], C = x.shape[1];
  y = test::host_array(x.shape);
  dx = test::host_array(x.shape);
  for (int64_t r = 0; r < R; ++r) {
    double m = x[r * C];
    for (int64_t j = 0; j < C; ++j) m = std::max(m, x[r * C + j]);
    double sum = 0;
    for (int64_t j = 0; j < C; ++j) sum += std::exp(x[r * C + j] - m);
    for (int64_t j = 0; j < C; ++j) y[r * C + j] = std::exp(x[r * C + j] - m) / sum;
    for (int64_t i = 0; i < C; ++i) {
      double g = 0;
      for (int64_t j = 0; j < C; ++j)
        g += dy[r * C + j] * y[r * C + j] * ((i == j ? 1.0 : 0.0) - y[r * C + i]);
      dx[r * C + i] = g;
    }
  }
}

const int64_t kSizes[] = {1, 3, 17, 130};

TEST(Softmax, ForwardAndBackwardMatchReference) {
  ORIGAMI_REQUIRE_TEST_DEVICE();
  uint64_t seed = 1;
  for (DType dt : test::float_dtypes())
    for (int64_t R : kSizes)
      for (int64_t C : kSizes) {
        SCOPED_TRACE(std::string(dtype_name(dt)) + " R=" + std::to_string(R) +
                     " C=" + std::to_string(C));
        Tensor x = test::random_tensor({R, C}, dt, ++seed, -4.0, 4.0);
        Tensor dy = test::random_tensor({R, C}, dt, ++seed);
        Tensor y = test::empty_on_test_device({R, C}, dt);
        ops::softmax_forward(test::on_test_device(x), y);
        HostArray ry, rdx;
        // The backward takes the y the forward gave (rounded to dt), as a caller would.
        reference_softmax(test::to_host_array(x), test::to_host_array(dy), ry, rdx);
        EXPECT_ALL_CLOSE(y, ry, test::tolerance_for(dt));
        Tensor dx = test::empty_on_test_device({R, C}, dt);
        ops::softmax_backward(y, test::on_test_device(dy), dx);
        EXPECT_ALL_CLOSE(dx, rdx, test::tolerance_for(dt));
      }
}

TEST(Softmax, LargeLogitsAndInPlace) {
  ORIGAMI_REQUIRE_TEST_DEVICE();
  for (DType dt : test::float_dtypes()) {
    SCOPED_TRACE(dtype_name(dt));
    // exp would overflow without subtracting the row maximum.
    Tensor x = test::random_tensor({17, 130}, dt, 7, 500.0, 1000.0);
    Tensor y = test::on_test_device(x.clone());
    ops::softmax_forward(y, y);  // out aliases x
    HostArray ry, rdx;
    reference_softmax(test::to_host_array(x), test::host_array({17, 130}), ry, rdx);
    EXPECT_ALL_CLOSE(y, ry, test::tolerance_for(dt));
    Tensor dy = test::random_tensor({17, 130}, dt, 8);
    Tensor g = test::on_test_device(dy.clone());
    ops::softmax_backward(y, g, g);  // dx aliases dy
    reference_softmax(test::to_host_array(x), test::to_host_array(dy), ry, rdx);
    // y itself carries dt's rounding into dx.
    EXPECT_ALL_CLOSE(g, rdx, test::tolerance_for(dt));
  }
}

TEST(Softmax, BackwardMatchesFiniteDifferences) {
  ORIGAMI_REQUIRE_TEST_DEVICE();
  const int64_t R = 17, C = 33;
  Tensor x = test::random_tensor({R, C}, DType::f32, 10, -3.0, 3.0);
  Tensor weights = test::random_tensor({R, C}, DType::f32, 11);
  auto loss = [&] {
    Tensor out = test::empty_on_test_device({R, C}, DType::f32);
    ops::softmax_forward(test::on_test_device(x), out);
    return test::weighted_sum(out, weights);
  };
  Tensor y = test::empty_on_test_device({R, C}, DType::f32);
  ops::softmax_forward(test::on_test_device(x), y);
  Tensor dx = test::empty_on_test_device({R, C}, DType::f32);
  ops::softmax_backward(y, test::on_test_device(weights), dx);
  Tensor dx_cpu = dx.to(Device::cpu());
  EXPECT_LT(test::finite_difference_error(loss, x, dx_cpu, 24), test::kFiniteDifferenceTolerance);
}

TEST(Softmax, BadInputsThrowNamingOpAndShapes) {
  ORIGAMI_REQUIRE_TEST_DEVICE();
  Tensor x = test::empty_on_test_device({3, 17}, DType::f32);
  expect_error(
      [&] {
        Tensor bad = test::empty_on_test_device({3, 16}, DType::f32);
        ops::softmax_forward(x, bad);
      },
      {"softmax_forward", "out", "[3,17]", "f32[3,16]"});
  expect_error(
      [&] {
        Tensor bad = test::empty_on_test_device({3, 17}, DType::bf16);
        ops::softmax_forward(x, bad);
      },
      {"softmax_forward", "f32[3,17]", "bf16[3,17]"});
  expect_error(
      [&] {
        Tensor bad = test::empty_on_test_device({3, 17}, DType::i32);
        ops::softmax_forward(bad, bad);
      },
      {"softmax_forward", "x", "f32 or bf16", "i32[3,17]"});
  expect_error(
      [&] {
        Tensor bad = test::empty_on_test_device({17, 3}, DType::f32);
        ops::softmax_backward(x, bad, x);
      },
      {"softmax_backward", "dy", "[3,17]", "f32[17,3]"});
  if (test::test_device().is_cuda()) {
    expect_error(
        [&] {
          Tensor cpu_out = Tensor::empty({3, 17}, DType::f32);
          ops::softmax_forward(x, cpu_out);
        },
        {"softmax_forward", "one device", "out", "cpu"});
  }
}

TEST(SoftmaxGolden, MatchesTorch) {
  ORIGAMI_REQUIRE_TEST_DEVICE();
  struct Case {
    std::string name;
    DType dt;
    int64_t R, C;
    Tensor x, dy, y, dx;
  };
  std::vector<Case> cases;
  for (DType dt : test::float_dtypes())
    for (int64_t R : {1, 17})
      for (int64_t C : kSizes) cases.push_back({"", dt, R, C, {}, {}, {}, {}});
  std::vector<test::TorchCase> torch_cases;
  uint64_t seed = 600;
  for (size_t c = 0; c < cases.size(); ++c) {
    Case& k = cases[c];
    k.name = "softmax_" + std::to_string(c);
    k.x = test::random_tensor({k.R, k.C}, k.dt, ++seed, -4.0, 4.0);
    k.dy = test::random_tensor({k.R, k.C}, k.dt, ++seed);
    k.y = test::empty_on_test_device({k.R, k.C}, k.dt);
    ops::softmax_forward(test::on_test_device(k.x), k.y);
    k.dx = test::empty_on_test_device({k.R, k.C}, k.dt);
    ops::softmax_backward(k.y, test::on_test_device(k.dy), k.dx);
    torch_cases.push_back({k.name, "softmax", "{}", {{"x", k.x}, {"dy", k.dy}}});
  }
  auto ref = test::run_torch(torch_cases);
  for (const Case& k : cases) {
    SCOPED_TRACE(k.name + " " + dtype_name(k.dt) + " R=" + std::to_string(k.R) +
                 " C=" + std::to_string(k.C));
    ASSERT_TRUE(ref.count(k.name + "/out") && ref.count(k.name + "/dx"));
    EXPECT_ALL_CLOSE(k.y, ref[k.name + "/out"], test::tolerance_for(k.dt));
    EXPECT_ALL_CLOSE(k.dx, ref[k.name + "/dx"], test::tolerance_for(k.dt));
  }
}

// ---- top-k ---------------------------------------------------------------------------------

// A stable sort of the column indices by value, descending: ties keep the lower index first.
void reference_topk(const HostArray& x, int64_t k, HostArray& values, HostArray& indices) {
  const int64_t R = x.shape[0], C = x.shape[1];
  values = test::host_array({R, k});
  indices = test::host_array({R, k});
  for (int64_t r = 0; r < R; ++r) {
    std::vector<int64_t> order(static_cast<size_t>(C));
    std::iota(order.begin(), order.end(), int64_t(0));
    std::stable_sort(order.begin(), order.end(),
                     [&](int64_t a, int64_t b) { return x[r * C + a] > x[r * C + b]; });
    for (int64_t j = 0; j < k; ++j) {
      values[r * k + j] = x[r * C + order[size_t(j)]];
      indices[r * k + j] = double(order[size_t(j)]);
    }
  }
}

HostArray reference_topk_backward(const HostArray& indices, const HostArray& dvalues, int64_t C) {
  const int64_t R = indices.shape[0], k = indices.shape[1];
  HostArray dx = test::host_array({R, C});
  for (int64_t r = 0; r < R; ++r)
    for (int64_t j = 0; j < k; ++j) dx[r * C + int64_t(indices[r * k + j])] = dvalues[r * k + j];
  return dx;
}

TEST(TopK, MatchesStableSortWithTies) {
  ORIGAMI_REQUIRE_TEST_DEVICE();
  uint64_t seed = 1;
  for (DType idx_dt : {DType::i32, DType::i64})
    for (int64_t R : kSizes)
      for (int64_t C : kSizes)
        for (int64_t k : {int64_t(1), std::min<int64_t>(C, 2), std::min<int64_t>(C, 8), C})
          for (bool ties : {false, true}) {
            SCOPED_TRACE(std::string("indices ") + dtype_name(idx_dt) + " R=" + std::to_string(R) +
                         " C=" + std::to_string(C) + " k=" + std::to_string(k) +
                         " ties=" + std::to_string(ties));
            // With ties: values from a handful of levels, so most rows repeat values.
            Tensor x = ties ? test::random_ints({R, C}, DType::i64, -2, 3, ++seed).to(DType::f32)
                            : test::random_tensor({R, C}, DType::f32, ++seed);
            Tensor values = test::empty_on_test_device({R, k}, DType::f32);
            Tensor indices = test::empty_on_test_device({R, k}, idx_dt);
            ops::topk(test::on_test_device(x), k, values, indices);
            HostArray rv, ri;
            reference_topk(test::to_host_array(x), k, rv, ri);
            EXPECT_ALL_CLOSE(values, rv, (test::Tolerance{0.0, 0.0}));
            EXPECT_ALL_CLOSE(indices, ri, (test::Tolerance{0.0, 0.0}));
            Tensor dvalues = test::random_tensor({R, k}, DType::f32, ++seed);
            Tensor dx = test::empty_on_test_device({R, C}, DType::f32);
            ops::topk_backward(indices, test::on_test_device(dvalues), dx);
            EXPECT_ALL_CLOSE(dx, reference_topk_backward(ri, test::to_host_array(dvalues), C),
                             (test::Tolerance{0.0, 0.0}));
          }
}

TEST(TopK, InfinitiesAndAllEqualRows) {
  ORIGAMI_REQUIRE_TEST_DEVICE();
  const float inf = INFINITY;
  Tensor x = Tensor::from_vector({-inf, 2, inf, 2, -inf, inf, 5, 5, 5, 5, 5, 5}, {2, 6});
  Tensor values = test::empty_on_test_device({2, 4}, DType::f32);
  Tensor indices = test::empty_on_test_device({2, 4}, DType::i64);
  ops::topk(test::on_test_device(x), 4, values, indices);
  EXPECT_EQ(values.to_float_vector(), (std::vector<float>{inf, inf, 2, 2, 5, 5, 5, 5}));
  EXPECT_EQ(indices.to_float_vector(), (std::vector<float>{2, 5, 1, 3, 0, 1, 2, 3}));
}

TEST(TopK, BackwardMatchesFiniteDifferences) {
  ORIGAMI_REQUIRE_TEST_DEVICE();
  const int64_t R = 17, C = 33, k = 5;
  // Values spaced at least 0.05 apart so that a step of 0.01 never reorders them.
  std::vector<float> v(static_cast<size_t>(R * C));
  for (int64_t r = 0; r < R; ++r)
    for (int64_t j = 0; j < C; ++j) v[size_t(r * C + j)] = 0.05f * float((j * 7 + r) % C);
  Tensor x = Tensor::from_vector(v, {R, C});
  Tensor weights = test::random_tensor({R, k}, DType::f32, 3);
  auto loss = [&] {
    Tensor values = test::empty_on_test_device({R, k}, DType::f32);
    Tensor indices = test::empty_on_test_device({R, k}, DType::i32);
    ops::topk(test::on_test_device(x), k, values, indices);
    return test::weighted_sum(values, weights);
  };
  Tensor values = test::empty_on_test_device({R, k}, DType::f32);
  Tensor indices = test::empty_on_test_device({R, k}, DType::i32);
  ops::topk(test::on_test_device(x), k, values, indices);
  Tensor dx = test::empty_on_test_device({R, C}, DType::f32);
  ops::topk_backward(indices, test::on_test_device(weights), dx);
  Tensor dx_cpu = dx.to(Device::cpu());
  // Sample enough coordinates to hit selected ones (5 of 33 per row).
  EXPECT_LT(test::finite_difference_error(loss, x, dx_cpu, 60), test::kFiniteDifferenceTolerance);
}

TEST(TopK, BadInputsThrowNamingOpAndShapes) {
  ORIGAMI_REQUIRE_TEST_DEVICE();
  Tensor x = test::empty_on_test_device({3, 17}, DType::f32);
  Tensor values = test::empty_on_test_device({3, 4}, DType::f32);
  Tensor indices = test::empty_on_test_device({3, 4}, DType::i64);
  for (int64_t bad_k : {0, 18, -1})
    expect_error(
        [&] {
          Tensor v = test::empty_on_test_device({3, 1}, DType::f32);
          Tensor i = test::empty_on_test_device({3, 1}, DType::i64);
          ops::topk(x, bad_k, v, i);
        },
        {"topk", "k must lie in [1, 17]", "k = " + std::to_string(bad_k), "f32[3,17]"});
  expect_error([&] { ops::topk(x, 3, values, indices); }, {"topk", "values", "[3,3]", "f32[3,4]"});
  expect_error(
      [&] {
        Tensor bad = test::empty_on_test_device({3, 17}, DType::bf16);
        ops::topk(bad, 4, values, indices);
      },
      {"topk", "x", "f32", "bf16[3,17]"});
  expect_error(
      [&] {
        Tensor bad = test::empty_on_test_device({3, 4}, DType::f32);
        ops::topk(x, 4, values, bad);
      },
      {"topk", "indices", "i32 or i64", "f32[3,4]"});
  expect_error(
      [&] {
        Tensor dx = test::empty_on_test_device({3, 3}, DType::f32);
        ops::topk_backward(indices, values, dx);
      },
      {"topk_backward", "dx", "f32[3,3]", "i64[3,4]"});
  if (test::test_device().is_cpu()) {
    Tensor idx = Tensor::from_vector_i64({0, 1, 2, 17}, {1, 4});
    Tensor dv = Tensor::zeros({1, 4}, DType::f32);
    Tensor dx = Tensor::empty({1, 17}, DType::f32);
    expect_error([&] { ops::topk_backward(idx, dv, dx); },
                 {"topk_backward", "indices[0,3] = 17", "[0, 17)"});
  }
}

TEST(TopKGolden, MatchesTorch) {
  ORIGAMI_REQUIRE_TEST_DEVICE();
  struct Case {
    std::string name;
    int64_t R, C, k;
    Tensor x, dv, values, indices, dx;
  };
  std::vector<Case> cases;
  for (int64_t R : {1, 17})
    for (int64_t C : kSizes)
      for (int64_t k : {int64_t(1), std::min<int64_t>(C, 8), C})
        cases.push_back({"", R, C, k, {}, {}, {}, {}, {}});
  std::vector<test::TorchCase> torch_cases;
  uint64_t seed = 700;
  for (size_t c = 0; c < cases.size(); ++c) {
    Case& q = cases[c];
    q.name = "topk_" + std::to_string(c);
    // Distinct values (torch.topk does not promise an order among ties).
    q.x = test::random_tensor({q.R, q.C}, DType::f32, ++seed);
    q.dv = test::random_tensor({q.R, q.k}, DType::f32, ++seed);
    q.values = test::empty_on_test_device({q.R, q.k}, DType::f32);
    q.indices = test::empty_on_test_device({q.R, q.k}, DType::i64);
    ops::topk(test::on_test_device(q.x), q.k, q.values, q.indices);
    q.dx = test::empty_on_test_device({q.R, q.C}, DType::f32);
    ops::topk_backward(q.indices, test::on_test_device(q.dv), q.dx);
    torch_cases.push_back(
        {q.name, "topk", "{\"k\": " + std::to_string(q.k) + "}", {{"x", q.x}, {"dvalues", q.dv}}});
  }
  auto ref = test::run_torch(torch_cases);
  for (const Case& q : cases) {
    SCOPED_TRACE(q.name + " R=" + std::to_string(q.R) + " C=" + std::to_string(q.C) +
                 " k=" + std::to_string(q.k));
    ASSERT_TRUE(ref.count(q.name + "/values") && ref.count(q.name + "/dx"));
    EXPECT_ALL_CLOSE(q.values, ref[q.name + "/values"], (test::Tolerance{0.0, 0.0}));
    EXPECT_ALL_CLOSE(q.indices, ref[q.name + "/indices"], (test::Tolerance{0.0, 0.0}));
    EXPECT_ALL_CLOSE(q.dx, ref[q.name + "/dx"], (test::Tolerance{0.0, 0.0}));
  }
}

}  // namespace
}  // namespace origami
