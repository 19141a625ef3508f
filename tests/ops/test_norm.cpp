// RMSNorm forward and backward: naive double references, finite differences, bad input, and
// PyTorch golden values (x * rsqrt(mean(x^2) + eps) * w, gradients by autograd).
#include <cmath>
#include <string>
#include <vector>

#include "ops/norm.h"
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

struct RmsRef {
  HostArray out, rstd, dx, dw;
};

// Straight from the definition, in double; dx by the chain rule written out element by element:
// dy_j/dx_k = w_j (r [j == k] - x_j r^3 x_k / H).
RmsRef reference(const HostArray& x, const HostArray& w, double eps, const HostArray& dout,
                 const HostArray& dw0) {
  const int64_t T = x.shape[0], H = x.shape[1];
  RmsRef r{test::host_array({T, H}), test::host_array({T}), test::host_array({T, H}), dw0};
  for (int64_t t = 0; t < T; ++t) {
    double ms = 0;
    for (int64_t j = 0; j < H; ++j) ms += x[t * H + j] * x[t * H + j];
    const double rs = 1.0 / std::sqrt(ms / double(H) + eps);
    r.rstd[t] = rs;
    for (int64_t j = 0; j < H; ++j) {
      r.out[t * H + j] = x[t * H + j] * rs * w[j];
      r.dw[j] += dout[t * H + j] * x[t * H + j] * rs;
    }
    for (int64_t k = 0; k < H; ++k) {
      double g = 0;
      for (int64_t j = 0; j < H; ++j) {
        const double jac =
            w[j] * ((j == k ? rs : 0.0) - x[t * H + j] * rs * rs * rs * x[t * H + k] / double(H));
        g += dout[t * H + j] * jac;
      }
      r.dx[t * H + k] = g;
    }
  }
  return r;
}

const int64_t kSizes[] = {1, 3, 17, 130};
constexpr float kEps = 1e-5f;

TEST(RmsNorm, ForwardAndBackwardMatchReference) {
  ORIGAMI_REQUIRE_TEST_DEVICE();
  uint64_t seed = 1;
  for (DType dt : test::float_dtypes())
    for (DType wdt : dt == DType::f32 ? std::vector<DType>{dt} : std::vector<DType>{dt, DType::f32})
      for (int64_t T : kSizes)
        for (int64_t H : kSizes) {
          SCOPED_TRACE(std::string("x ") + dtype_name(dt) + " w " + dtype_name(wdt) +
                       " T=" + std::to_string(T) + " H=" + std::to_string(H));
          Tensor x = test::random_tensor({T, H}, dt, ++seed, -2.0, 2.0);
          Tensor w = test::random_tensor({H}, wdt, ++seed, 0.5, 1.5);
          Tensor dout = test::random_tensor({T, H}, dt, ++seed);
          Tensor dw0 = test::random_tensor({H}, DType::f32, ++seed);
          Tensor xd = test::on_test_device(x), wd = test::on_test_device(w);
          Tensor out = test::empty_on_test_device({T, H}, dt);
          Tensor rstd = test::empty_on_test_device({T}, DType::f32);
          ops::rmsnorm_forward(xd, wd, kEps, out, rstd);
          Tensor dx = test::empty_on_test_device({T, H}, dt);
          Tensor dw = test::on_test_device(dw0.clone());
          ops::rmsnorm_backward(xd, wd, rstd, test::on_test_device(dout), dx, dw);
          const RmsRef r = reference(test::to_host_array(x), test::to_host_array(w), kEps,
                                     test::to_host_array(dout), test::to_host_array(dw0));
          EXPECT_ALL_CLOSE(out, r.out, test::tolerance_for(dt));
          EXPECT_ALL_CLOSE(rstd, r.rstd, test::tolerance_for(DType::f32));
          EXPECT_ALL_CLOSE(dx, r.dx, test::tolerance_for(dt));
          EXPECT_ALL_CLOSE(dw, r.dw, test::tolerance_for(DType::f32));  // f32 from exact inputs
        }
}

TEST(RmsNorm, BackwardWithoutWeightGradientAndAliasedDx) {
  ORIGAMI_REQUIRE_TEST_DEVICE();
  const int64_t T = 17, H = 130;
  Tensor x = test::random_tensor({T, H}, DType::f32, 5);
  Tensor w = test::random_tensor({H}, DType::f32, 6);
  Tensor dout = test::random_tensor({T, H}, DType::f32, 7);
  Tensor xd = test::on_test_device(x), wd = test::on_test_device(w);
  Tensor out = test::empty_on_test_device({T, H}, DType::f32);
  Tensor rstd = test::empty_on_test_device({T}, DType::f32);
  ops::rmsnorm_forward(xd, wd, kEps, out, rstd);
  Tensor g = test::on_test_device(dout.clone());
  Tensor no_dw;
  ops::rmsnorm_backward(xd, wd, rstd, g, g, no_dw);  // dx written over dout
  const RmsRef r = reference(test::to_host_array(x), test::to_host_array(w), kEps,
                             test::to_host_array(dout), test::host_array({H}));
  EXPECT_ALL_CLOSE(g, r.dx, test::tolerance_for(DType::f32));
}

TEST(RmsNorm, BackwardMatchesFiniteDifferences) {
  ORIGAMI_REQUIRE_TEST_DEVICE();
  for (int64_t H : {3, 130}) {
    SCOPED_TRACE("H=" + std::to_string(H));
    const int64_t T = 17;
    Tensor x = test::random_tensor({T, H}, DType::f32, 10 + H, -2.0, 2.0);
    Tensor w = test::random_tensor({H}, DType::f32, 11 + H, 0.5, 1.5);
    Tensor weights = test::random_tensor({T, H}, DType::f32, 12 + H);
    auto loss = [&] {
      Tensor out = test::empty_on_test_device({T, H}, DType::f32);
      Tensor rstd = test::empty_on_test_device({T}, DType::f32);
      ops::rmsnorm_forward(test::on_test_device(x), test::on_test_device(w), kEps, out, rstd);
      return test::weighted_sum(out, weights);
    };
    Tensor xd = test::on_test_device(x), wd = test::on_test_device(w);
    Tensor out = test::empty_on_test_device({T, H}, DType::f32);
    Tensor rstd = test::empty_on_test_device({T}, DType::f32);
    ops::rmsnorm_forward(xd, wd, kEps, out, rstd);
    Tensor dx = test::empty_on_test_device({T, H}, DType::f32);
    Tensor dw = Tensor::zeros({H}, DType::f32, test::test_device());
    ops::rmsnorm_backward(xd, wd, rstd, test::on_test_device(weights), dx, dw);
    Tensor dx_cpu = dx.to(Device::cpu()), dw_cpu = dw.to(Device::cpu());
    EXPECT_LT(test::finite_difference_error(loss, x, dx_cpu), test::kFiniteDifferenceTolerance);
    EXPECT_LT(test::finite_difference_error(loss, w, dw_cpu), test::kFiniteDifferenceTolerance);
  }
}

TEST(RmsNorm, BadInputsThrowNamingOpAndShapes) {
  ORIGAMI_REQUIRE_TEST_DEVICE();
  Tensor x = test::empty_on_test_device({3, 17}, DType::f32);
  Tensor w = test::empty_on_test_device({17}, DType::f32);
  Tensor out = test::empty_on_test_device({3, 17}, DType::f32);
  Tensor rstd = test::empty_on_test_device({3}, DType::f32);
  expect_error(
      [&] {
        Tensor bad = test::empty_on_test_device({16}, DType::f32);
        ops::rmsnorm_forward(x, bad, kEps, out, rstd);
      },
      {"rmsnorm_forward", "w", "[17]", "f32[16]"});
  expect_error(
      [&] {
        Tensor bad = test::empty_on_test_device({3, 17}, DType::bf16);
        ops::rmsnorm_forward(x, w, kEps, bad, rstd);
      },
      {"rmsnorm_forward", "f32[3,17]", "bf16[3,17]"});
  expect_error(
      [&] {
        Tensor bad = test::empty_on_test_device({3}, DType::bf16);
        ops::rmsnorm_forward(x, w, kEps, out, bad);
      },
      {"rmsnorm_forward", "rstd", "bf16[3]"});
  expect_error(
      [&] {
        Tensor bad = test::empty_on_test_device({3, 17, 1}, DType::f32);
        ops::rmsnorm_forward(bad, w, kEps, out, rstd);
      },
      {"rmsnorm_forward", "x", "2-D", "f32[3,17,1]"});
  expect_error(
      [&] {
        Tensor dw = test::empty_on_test_device({17}, DType::bf16);
        ops::rmsnorm_backward(x, w, rstd, out, out, dw);
      },
      {"rmsnorm_backward", "dw", "bf16[17]"});
  expect_error(
      [&] {
        Tensor bad = test::empty_on_test_device({3, 16}, DType::f32);
        Tensor dw;
        ops::rmsnorm_backward(x, w, rstd, bad, out, dw);
      },
      {"rmsnorm_backward", "dout", "[3,17]", "f32[3,16]"});
  if (test::test_device().is_cuda()) {
    expect_error([&] { ops::rmsnorm_forward(x, w.to(Device::cpu()), kEps, out, rstd); },
                 {"rmsnorm_forward", "one device", "cpu"});
  }
}

TEST(RmsNormGolden, MatchesTorch) {
  ORIGAMI_REQUIRE_TEST_DEVICE();
  struct Case {
    std::string name;
    DType dt, wdt;
    int64_t T, H;
    Tensor x, w, dout, out, rstd, dx, dw;
  };
  std::vector<Case> cases;
  for (DType dt : test::float_dtypes())
    for (int64_t T : {1, 17})
      for (int64_t H : kSizes) cases.push_back({"", dt, dt, T, H, {}, {}, {}, {}, {}, {}, {}});
  cases.push_back({"", DType::bf16, DType::f32, 130, 130, {}, {}, {}, {}, {}, {}, {}});
  std::vector<test::TorchCase> torch_cases;
  uint64_t seed = 300;
  for (size_t c = 0; c < cases.size(); ++c) {
    Case& k = cases[c];
    k.name = "rmsnorm_" + std::to_string(c);
    k.x = test::random_tensor({k.T, k.H}, k.dt, ++seed, -2.0, 2.0);
    k.w = test::random_tensor({k.H}, k.wdt, ++seed, 0.5, 1.5);
    k.dout = test::random_tensor({k.T, k.H}, k.dt, ++seed);
    Tensor xd = test::on_test_device(k.x), wd = test::on_test_device(k.w);
    k.out = test::empty_on_test_device({k.T, k.H}, k.dt);
    k.rstd = test::empty_on_test_device({k.T}, DType::f32);
    ops::rmsnorm_forward(xd, wd, kEps, k.out, k.rstd);
    k.dx = test::empty_on_test_device({k.T, k.H}, k.dt);
    k.dw = Tensor::zeros({k.H}, DType::f32, test::test_device());
    ops::rmsnorm_backward(xd, wd, k.rstd, test::on_test_device(k.dout), k.dx, k.dw);
    torch_cases.push_back(
        {k.name, "rmsnorm", "{\"eps\": 1e-5}", {{"x", k.x}, {"w", k.w}, {"dout", k.dout}}});
  }
  auto ref = test::run_torch(torch_cases);
  for (const Case& k : cases) {
    SCOPED_TRACE(k.name + " " + dtype_name(k.dt) + " T=" + std::to_string(k.T) +
                 " H=" + std::to_string(k.H));
    ASSERT_TRUE(ref.count(k.name + "/out") && ref.count(k.name + "/dw"));
    EXPECT_ALL_CLOSE(k.out, ref[k.name + "/out"], test::tolerance_for(k.dt));
    EXPECT_ALL_CLOSE(k.rstd, ref[k.name + "/rstd"], test::tolerance_for(DType::f32));
    EXPECT_ALL_CLOSE(k.dx, ref[k.name + "/dx"], test::tolerance_for(k.dt));
    EXPECT_ALL_CLOSE(k.dw, ref[k.name + "/dw"], test::tolerance_for(DType::f32));
  }
}

}  // namespace
}  // namespace origami
