// SwiGLU with and without the per-row scale: naive double references, finite differences, bad
// input, and PyTorch golden values (F.silu(gate) * up * scale, gradients by autograd).
#include <cmath>
#include <string>
#include <vector>

#include "ops/activation.h"
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

struct SwigluRef {
  HostArray out, dgate, dup, dscale;
};

// silu(g) = g / (1 + e^-g); d silu / dg = (1 + e^-g + g e^-g) / (1 + e^-g)^2.
SwigluRef reference(const HostArray& g, const HostArray& u, const HostArray* scale,
                    const HostArray& dy) {
  const int64_t T = g.shape[0], F = g.shape[1];
  SwigluRef r{test::host_array({T, F}), test::host_array({T, F}), test::host_array({T, F}),
              test::host_array({T})};
  for (int64_t t = 0; t < T; ++t) {
    const double s = scale ? (*scale)[t] : 1.0;
    for (int64_t j = 0; j < F; ++j) {
      const int64_t i = t * F + j;
      const double e = std::exp(-g[i]), silu = g[i] / (1.0 + e);
      const double dsilu = (1.0 + e + g[i] * e) / ((1.0 + e) * (1.0 + e));
      r.out[i] = silu * u[i] * s;
      r.dgate[i] = dy[i] * u[i] * s * dsilu;
      r.dup[i] = dy[i] * silu * s;
      r.dscale[t] += dy[i] * silu * u[i];
    }
  }
  return r;
}

const int64_t kSizes[] = {1, 3, 17, 130};

TEST(SwiGlu, ForwardAndBackwardMatchReference) {
  ORIGAMI_REQUIRE_TEST_DEVICE();
  uint64_t seed = 1;
  for (DType dt : test::float_dtypes())
    for (bool scaled : {false, true})
      for (int64_t T : kSizes)
        for (int64_t F : kSizes) {
          SCOPED_TRACE(std::string(dtype_name(dt)) + " scaled=" + std::to_string(scaled) +
                       " T=" + std::to_string(T) + " F=" + std::to_string(F));
          Tensor g = test::random_tensor({T, F}, dt, ++seed, -6.0, 6.0);
          Tensor u = test::random_tensor({T, F}, dt, ++seed, -2.0, 2.0);
          Tensor dy = test::random_tensor({T, F}, dt, ++seed);
          Tensor s = scaled ? test::random_tensor({T}, DType::f32, ++seed, 0.0, 1.0) : Tensor();
          Tensor gd = test::on_test_device(g), ud = test::on_test_device(u);
          Tensor sd = scaled ? test::on_test_device(s) : Tensor();
          Tensor out = test::empty_on_test_device({T, F}, dt);
          ops::swiglu_forward(gd, ud, out, sd);
          Tensor dg = test::empty_on_test_device({T, F}, dt);
          Tensor du = test::empty_on_test_device({T, F}, dt);
          Tensor ds = scaled ? test::empty_on_test_device({T}, DType::f32) : Tensor();
          ops::swiglu_backward(gd, ud, test::on_test_device(dy), dg, du, sd, ds);
          const HostArray sh = scaled ? test::to_host_array(s) : HostArray{};
          const SwigluRef r = reference(test::to_host_array(g), test::to_host_array(u),
                                        scaled ? &sh : nullptr, test::to_host_array(dy));
          EXPECT_ALL_CLOSE(out, r.out, test::tolerance_for(dt));
          EXPECT_ALL_CLOSE(dg, r.dgate, test::tolerance_for(dt));
          EXPECT_ALL_CLOSE(du, r.dup, test::tolerance_for(dt));
          // f32 sums of exact inputs.
          if (scaled) {
            EXPECT_ALL_CLOSE(ds, r.dscale, test::tolerance_for(DType::f32));
          }
        }
}

// Gates far beyond where e^-g overflows or underflows f32 (the AVX-512 forward clamps its exponent
// to [-87.3, 88.7]): silu is 0 or g there, as the double reference says.
TEST(SwiGlu, ForwardOfLargeGatesMatchesReference) {
  ORIGAMI_REQUIRE_TEST_DEVICE();
  for (DType dt : test::float_dtypes()) {
    SCOPED_TRACE(dtype_name(dt));
    const int64_t T = 5, F = 67;
    Tensor g = test::random_tensor({T, F}, dt, 40, -150.0, 150.0);
    Tensor u = test::random_tensor({T, F}, dt, 41, -2.0, 2.0);
    Tensor dy = test::random_tensor({T, F}, dt, 42);
    Tensor out = test::empty_on_test_device({T, F}, dt);
    ops::swiglu_forward(test::on_test_device(g), test::on_test_device(u), out, Tensor());
    const SwigluRef r =
        reference(test::to_host_array(g), test::to_host_array(u), nullptr, test::to_host_array(dy));
    EXPECT_ALL_CLOSE(out, r.out, test::tolerance_for(dt));
  }
}

TEST(SwiGlu, ScaleWithoutItsGradient) {
  ORIGAMI_REQUIRE_TEST_DEVICE();
  const int64_t T = 17, F = 33;
  Tensor g = test::random_tensor({T, F}, DType::f32, 5, -4.0, 4.0);
  Tensor u = test::random_tensor({T, F}, DType::f32, 6);
  Tensor dy = test::random_tensor({T, F}, DType::f32, 7);
  Tensor s = test::random_tensor({T}, DType::f32, 8, 0.0, 1.0);
  Tensor dg = test::empty_on_test_device({T, F}, DType::f32);
  Tensor du = test::empty_on_test_device({T, F}, DType::f32);
  ops::swiglu_backward(test::on_test_device(g), test::on_test_device(u), test::on_test_device(dy),
                       dg, du, test::on_test_device(s));
  const HostArray sh = test::to_host_array(s);
  const SwigluRef r =
      reference(test::to_host_array(g), test::to_host_array(u), &sh, test::to_host_array(dy));
  EXPECT_ALL_CLOSE(dg, r.dgate, test::tolerance_for(DType::f32));
  EXPECT_ALL_CLOSE(du, r.dup, test::tolerance_for(DType::f32));
}

TEST(SwiGlu, BackwardMatchesFiniteDifferences) {
  ORIGAMI_REQUIRE_TEST_DEVICE();
  const int64_t T = 17, F = 33;
  Tensor g = test::random_tensor({T, F}, DType::f32, 10, -4.0, 4.0);
  Tensor u = test::random_tensor({T, F}, DType::f32, 11);
  Tensor s = test::random_tensor({T}, DType::f32, 12, 0.0, 1.0);
  Tensor weights = test::random_tensor({T, F}, DType::f32, 13);
  auto loss = [&] {
    Tensor out = test::empty_on_test_device({T, F}, DType::f32);
    ops::swiglu_forward(test::on_test_device(g), test::on_test_device(u), out,
                        test::on_test_device(s));
    return test::weighted_sum(out, weights);
  };
  Tensor dg = test::empty_on_test_device({T, F}, DType::f32);
  Tensor du = test::empty_on_test_device({T, F}, DType::f32);
  Tensor ds = test::empty_on_test_device({T}, DType::f32);
  ops::swiglu_backward(test::on_test_device(g), test::on_test_device(u),
                       test::on_test_device(weights), dg, du, test::on_test_device(s), ds);
  Tensor dg_cpu = dg.to(Device::cpu()), du_cpu = du.to(Device::cpu()),
         ds_cpu = ds.to(Device::cpu());
  EXPECT_LT(test::finite_difference_error(loss, g, dg_cpu, 24), test::kFiniteDifferenceTolerance);
  EXPECT_LT(test::finite_difference_error(loss, u, du_cpu, 24), test::kFiniteDifferenceTolerance);
  EXPECT_LT(test::finite_difference_error(loss, s, ds_cpu, 12), test::kFiniteDifferenceTolerance);
}

TEST(SwiGlu, BadInputsThrowNamingOpAndShapes) {
  ORIGAMI_REQUIRE_TEST_DEVICE();
  Tensor g = test::empty_on_test_device({3, 17}, DType::f32);
  Tensor u = test::empty_on_test_device({3, 17}, DType::f32);
  Tensor out = test::empty_on_test_device({3, 17}, DType::f32);
  expect_error(
      [&] {
        Tensor bad = test::empty_on_test_device({3, 16}, DType::f32);
        ops::swiglu_forward(g, bad, out);
      },
      {"swiglu_forward", "up", "[3,17]", "f32[3,16]"});
  expect_error(
      [&] {
        Tensor bad = test::empty_on_test_device({3, 17}, DType::bf16);
        ops::swiglu_forward(g, bad, out);
      },
      {"swiglu_forward", "f32[3,17]", "bf16[3,17]"});
  expect_error(
      [&] {
        Tensor bad = test::empty_on_test_device({4}, DType::f32);
        ops::swiglu_forward(g, u, out, bad);
      },
      {"swiglu_forward", "row_scale", "[3]", "f32[4]"});
  expect_error(
      [&] {
        Tensor bad = test::empty_on_test_device({3}, DType::bf16);
        ops::swiglu_forward(g, u, out, bad);
      },
      {"swiglu_forward", "row_scale", "f32", "bf16[3]"});
  expect_error(
      [&] {
        Tensor ds = test::empty_on_test_device({3}, DType::f32);
        ops::swiglu_backward(g, u, out, out, out, Tensor(), ds);
      },
      {"swiglu_backward", "drow_scale", "row_scale"});
  expect_error(
      [&] {
        Tensor bad = test::empty_on_test_device({17, 3}, DType::f32);
        ops::swiglu_backward(g, u, out, bad, out);
      },
      {"swiglu_backward", "dgate", "[3,17]", "f32[17,3]"});
  if (test::test_device().is_cuda()) {
    expect_error([&] { ops::swiglu_forward(g, u.to(Device::cpu()), out); },
                 {"swiglu_forward", "one device", "up", "cpu"});
  }
}

TEST(SwiGluGolden, MatchesTorch) {
  ORIGAMI_REQUIRE_TEST_DEVICE();
  struct Case {
    std::string name;
    DType dt;
    bool scaled;
    int64_t T, F;
    Tensor g, u, s, dy, out, dg, du, ds;
  };
  std::vector<Case> cases;
  for (DType dt : test::float_dtypes())
    for (bool scaled : {false, true})
      for (int64_t n : kSizes)
        cases.push_back({"", dt, scaled, n, 130 / n + 1, {}, {}, {}, {}, {}, {}, {}, {}});
  std::vector<test::TorchCase> torch_cases;
  uint64_t seed = 500;
  for (size_t c = 0; c < cases.size(); ++c) {
    Case& k = cases[c];
    k.name = "swiglu_" + std::to_string(c);
    k.g = test::random_tensor({k.T, k.F}, k.dt, ++seed, -6.0, 6.0);
    k.u = test::random_tensor({k.T, k.F}, k.dt, ++seed, -2.0, 2.0);
    k.dy = test::random_tensor({k.T, k.F}, k.dt, ++seed);
    if (k.scaled) k.s = test::random_tensor({k.T}, DType::f32, ++seed, 0.0, 1.0);
    Tensor gd = test::on_test_device(k.g), ud = test::on_test_device(k.u);
    Tensor sd = k.scaled ? test::on_test_device(k.s) : Tensor();
    k.out = test::empty_on_test_device({k.T, k.F}, k.dt);
    ops::swiglu_forward(gd, ud, k.out, sd);
    k.dg = test::empty_on_test_device({k.T, k.F}, k.dt);
    k.du = test::empty_on_test_device({k.T, k.F}, k.dt);
    if (k.scaled) k.ds = test::empty_on_test_device({k.T}, DType::f32);
    ops::swiglu_backward(gd, ud, test::on_test_device(k.dy), k.dg, k.du, sd, k.ds);
    test::TorchCase tc{k.name, "swiglu", "{}", {{"gate", k.g}, {"up", k.u}, {"dout", k.dy}}};
    if (k.scaled) tc.inputs.push_back({"row_scale", k.s});
    torch_cases.push_back(tc);
  }
  auto ref = test::run_torch(torch_cases);
  for (const Case& k : cases) {
    SCOPED_TRACE(k.name + " " + dtype_name(k.dt) + " scaled=" + std::to_string(k.scaled) +
                 " T=" + std::to_string(k.T) + " F=" + std::to_string(k.F));
    ASSERT_TRUE(ref.count(k.name + "/out") && ref.count(k.name + "/dgate"));
    EXPECT_ALL_CLOSE(k.out, ref[k.name + "/out"], test::tolerance_for(k.dt));
    EXPECT_ALL_CLOSE(k.dg, ref[k.name + "/dgate"], test::tolerance_for(k.dt));
    EXPECT_ALL_CLOSE(k.du, ref[k.name + "/dup"], test::tolerance_for(k.dt));
    if (k.scaled) {
      ASSERT_TRUE(ref.count(k.name + "/drow_scale"));
      EXPECT_ALL_CLOSE(k.ds, ref[k.name + "/drow_scale"], test::tolerance_for(DType::f32));
    }
  }
}

}  // namespace
}  // namespace origami
