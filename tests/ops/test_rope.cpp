// Rotary position embedding: inverse frequencies (plain and Llama-3 scaled), the rotation and its
// inverse against naive double references, finite differences, bad input, and golden values from
// transformers' rotate_half and a restatement of its Llama-3 frequency code.
#include <cmath>
#include <numbers>
#include <string>
#include <vector>

#include "ops/rope.h"
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

ops::RopeConfig plain(int64_t D, double theta) {
  ops::RopeConfig c;
  c.head_dim = D;
  c.theta = theta;
  return c;
}

// Llama 3.1's published rope_scaling, and a second, made-up one with other numbers.
ops::RopeConfig llama3(int64_t D, double theta, int variant = 0) {
  ops::RopeConfig c = plain(D, theta);
  c.llama3_factor = variant == 0 ? 8.0 : 4.0;
  c.llama3_low_freq_factor = variant == 0 ? 1.0 : 2.0;
  c.llama3_high_freq_factor = variant == 0 ? 4.0 : 16.0;
  c.llama3_original_max_position = variant == 0 ? 8192 : 1024;
  return c;
}

// The frequencies written from the Llama-3 description in terms of the number of rotations r =
// old_ctx / wavelength over the original context: r < low keeps f / factor, r > high keeps f,
// and in between f is blended linearly in r.
std::vector<double> reference_inv_freq(const ops::RopeConfig& c) {
  std::vector<double> f;
  for (int64_t i = 0; i < c.head_dim / 2; ++i) {
    const double base = std::pow(c.theta, -2.0 * double(i) / double(c.head_dim));
    if (c.llama3_factor <= 0) {
      f.push_back(base);
      continue;
    }
    const double rotations =
        double(c.llama3_original_max_position) * base / (2.0 * std::numbers::pi);
    const double lo = c.llama3_low_freq_factor, hi = c.llama3_high_freq_factor;
    if (rotations < lo)
      f.push_back(base / c.llama3_factor);
    else if (rotations > hi)
      f.push_back(base);
    else {
      const double s = (rotations - lo) / (hi - lo);
      f.push_back(base * (s + (1.0 - s) / c.llama3_factor));
    }
  }
  return f;
}

// out[t,h] = x cos + rotate_half(x) sin, rotate_half([a, b]) = [-b, a], with the angles the f32
// products float(pos) * inv_freq (the documented convention); sign -1: the inverse rotation.
HostArray reference_rope(const HostArray& x, const HostArray& pos, const Tensor& inv_freq,
                         double sign) {
  const int64_t T = x.shape[0], H = x.shape[1], D = x.shape[2], half = D / 2;
  const float* f = inv_freq.data_as<const float>();
  HostArray out = test::host_array(x.shape);
  std::vector<double> rot(static_cast<size_t>(D));
  for (int64_t t = 0; t < T; ++t)
    for (int64_t h = 0; h < H; ++h) {
      const int64_t b = (t * H + h) * D;
      for (int64_t d = 0; d < D; ++d)
        rot[size_t(d)] = d < half ? -x[b + d + half] : x[b + d - half];
      for (int64_t d = 0; d < D; ++d) {
        const double angle = double(float(pos[t]) * f[d % half]);
        out[b + d] = x[b + d] * std::cos(angle) + rot[size_t(d)] * sign * std::sin(angle);
      }
    }
  return out;
}

// Positions neither sorted nor starting at 0.
Tensor positions_for(int64_t T, DType dt, uint64_t seed) {
  return test::random_ints({T}, dt, 5, 5000, seed);
}

TEST(Rope, InvFreqMatchesDefinition) {
  ORIGAMI_REQUIRE_TEST_DEVICE();
  for (int64_t D : {2, 64, 128})
    for (double theta : {10000.0, 500000.0})
      for (const ops::RopeConfig& c : {plain(D, theta), llama3(D, theta), llama3(D, theta, 1)}) {
        SCOPED_TRACE("D=" + std::to_string(D) + " theta=" + std::to_string(theta) +
                     " factor=" + std::to_string(c.llama3_factor));
        Tensor f = ops::rope_inv_freq(c);
        ASSERT_EQ(f.shape(), (Shape{D / 2}));
        ASSERT_EQ(f.dtype(), DType::f32);
        HostArray expected = test::host_array({D / 2});
        expected.data = reference_inv_freq(c);
        // Every element to f32 rounding (relative to itself, not to the largest).
        const HostArray got = test::to_host_array(f);
        for (int64_t i = 0; i < D / 2; ++i)
          EXPECT_NEAR(got[i], expected[i], 1e-7 * expected[i]) << "i=" << i;
      }
  // Llama 3.1 8B: the highest frequency is kept, the lowest divided by 8.
  Tensor f = ops::rope_inv_freq(llama3(128, 500000.0));
  EXPECT_EQ(f.item_at(0), 1.0);
  EXPECT_NEAR(f.item_at(63), std::pow(500000.0, -126.0 / 128.0) / 8.0, 1e-12);
}

TEST(Rope, ForwardAndBackwardMatchReference) {
  ORIGAMI_REQUIRE_TEST_DEVICE();
  uint64_t seed = 1;
  for (DType dt : test::float_dtypes())
    for (int64_t D : {64, 128})
      for (bool scaled : {false, true})
        for (int64_t T : {1, 3, 17, 130})
          for (int64_t H : {1, 3}) {
            const DType pos_dt = (T % 2) ? DType::i64 : DType::i32;
            SCOPED_TRACE(std::string(dtype_name(dt)) + " D=" + std::to_string(D) +
                         " llama3=" + std::to_string(scaled) + " T=" + std::to_string(T) +
                         " H=" + std::to_string(H));
            const ops::RopeConfig c = scaled ? llama3(D, 500000.0) : plain(D, 10000.0);
            Tensor inv = ops::rope_inv_freq(c);
            Tensor x = test::random_tensor({T, H, D}, dt, ++seed);
            Tensor pos = positions_for(T, pos_dt, ++seed);
            Tensor out = test::empty_on_test_device({T, H, D}, dt);
            ops::rope_forward(test::on_test_device(x), test::on_test_device(pos),
                              test::on_test_device(inv), out);
            const HostArray xh = test::to_host_array(x), ph = test::to_host_array(pos);
            EXPECT_ALL_CLOSE(out, reference_rope(xh, ph, inv, 1.0), test::tolerance_for(dt));
            Tensor dx = test::empty_on_test_device({T, H, D}, dt);
            ops::rope_backward(test::on_test_device(x), test::on_test_device(pos),
                               test::on_test_device(inv), dx);
            EXPECT_ALL_CLOSE(dx, reference_rope(xh, ph, inv, -1.0), test::tolerance_for(dt));
          }
}

TEST(Rope, BackwardUndoesForwardInPlace) {
  ORIGAMI_REQUIRE_TEST_DEVICE();
  const int64_t T = 17, H = 3, D = 128;
  Tensor x = test::random_tensor({T, H, D}, DType::f32, 3);
  Tensor pos = positions_for(T, DType::i64, 4);
  Tensor inv = test::on_test_device(ops::rope_inv_freq(llama3(D, 500000.0)));
  Tensor y = test::on_test_device(x.clone());
  Tensor p = test::on_test_device(pos);
  ops::rope_forward(y, p, inv, y);  // out aliases x
  EXPECT_ALL_CLOSE(
      y,
      reference_rope(test::to_host_array(x), test::to_host_array(pos), inv.to(Device::cpu()), 1.0),
      test::tolerance_for(DType::f32));
  ops::rope_backward(y, p, inv, y);  // dx aliases dout
  EXPECT_ALL_CLOSE(y, test::to_host_array(x), test::tolerance_for(DType::f32));
}

TEST(Rope, BackwardMatchesFiniteDifferences) {
  ORIGAMI_REQUIRE_TEST_DEVICE();
  for (int64_t D : {64, 128}) {
    SCOPED_TRACE("D=" + std::to_string(D));
    const int64_t T = 17, H = 3;
    Tensor x = test::random_tensor({T, H, D}, DType::f32, 20 + D);
    Tensor pos = positions_for(T, DType::i32, 21 + D);
    Tensor inv = test::on_test_device(ops::rope_inv_freq(llama3(D, 500000.0)));
    Tensor weights = test::random_tensor({T, H, D}, DType::f32, 22 + D);
    auto loss = [&] {
      Tensor out = test::empty_on_test_device({T, H, D}, DType::f32);
      ops::rope_forward(test::on_test_device(x), test::on_test_device(pos), inv, out);
      return test::weighted_sum(out, weights);
    };
    Tensor dx = test::empty_on_test_device({T, H, D}, DType::f32);
    ops::rope_backward(test::on_test_device(weights), test::on_test_device(pos), inv, dx);
    Tensor dx_cpu = dx.to(Device::cpu());
    EXPECT_LT(test::finite_difference_error(loss, x, dx_cpu, 24), test::kFiniteDifferenceTolerance);
  }
}

TEST(Rope, BadInputsThrowNamingOpAndShapes) {
  ORIGAMI_REQUIRE_TEST_DEVICE();
  Tensor x = test::empty_on_test_device({3, 2, 64}, DType::f32);
  Tensor out = test::empty_on_test_device({3, 2, 64}, DType::f32);
  Tensor pos = test::on_test_device(Tensor::from_vector_i64({7, 3, 9}, {3}));
  Tensor inv = test::on_test_device(ops::rope_inv_freq(plain(64, 10000.0)));
  expect_error(
      [&] {
        Tensor bad = test::empty_on_test_device({3, 2, 63}, DType::f32);
        ops::rope_forward(bad, pos, inv, bad);
      },
      {"rope_forward", "even", "f32[3,2,63]"});
  expect_error(
      [&] {
        Tensor bad = test::on_test_device(ops::rope_inv_freq(plain(128, 10000.0)));
        ops::rope_forward(x, pos, bad, out);
      },
      {"rope_forward", "inv_freq", "[32]", "f32[64]"});
  expect_error(
      [&] {
        Tensor bad = test::on_test_device(Tensor::from_vector_i64({1, 2}, {2}));
        ops::rope_forward(x, bad, inv, out);
      },
      {"rope_forward", "positions", "[3]", "i64[2]"});
  expect_error(
      [&] {
        Tensor bad = test::empty_on_test_device({3, 2, 64}, DType::bf16);
        ops::rope_backward(x, pos, inv, bad);
      },
      {"rope_backward", "dout", "dx", "bf16[3,2,64]"});
  expect_error(
      [&] {
        Tensor bad = test::empty_on_test_device({3, 128}, DType::f32);
        ops::rope_forward(bad, pos, inv, out);
      },
      {"rope_forward", "x", "3-D", "f32[3,128]"});
  expect_error([&] { ops::rope_inv_freq(plain(63, 10000.0)); }, {"rope_inv_freq", "63"});
  expect_error(
      [&] {
        ops::RopeConfig c = llama3(64, 10000.0);
        c.llama3_high_freq_factor = 1.0;
        ops::rope_inv_freq(c);
      },
      {"rope_inv_freq", "low_freq_factor", "high_freq_factor"});
  if (test::test_device().is_cuda()) {
    expect_error([&] { ops::rope_forward(x, pos, inv.to(Device::cpu()), out); },
                 {"rope_forward", "one device", "inv_freq", "cpu"});
  }
}

std::string params_json(const ops::RopeConfig& c) {
  return "{\"head_dim\": " + std::to_string(c.head_dim) +
         ", \"theta\": " + std::to_string(c.theta) +
         ", \"llama3_factor\": " + std::to_string(c.llama3_factor) +
         ", \"llama3_low_freq_factor\": " + std::to_string(c.llama3_low_freq_factor) +
         ", \"llama3_high_freq_factor\": " + std::to_string(c.llama3_high_freq_factor) +
         ", \"llama3_original_max_position\": " + std::to_string(c.llama3_original_max_position) +
         "}";
}

TEST(RopeGolden, MatchesTransformers) {
  ORIGAMI_REQUIRE_TEST_DEVICE();
  struct Case {
    std::string name;
    DType dt;
    int64_t T, H, D;
    ops::RopeConfig cfg;
    Tensor x, pos, dout, out, dx;
  };
  std::vector<Case> cases;
  for (DType dt : test::float_dtypes())
    for (int64_t D : {64, 128})
      for (int64_t T : {1, 3, 17, 130})
        for (bool scaled : {false, true})
          cases.push_back({"",
                           dt,
                           T,
                           T == 130 ? 1 : 3,
                           D,
                           scaled ? llama3(D, 500000.0) : plain(D, 10000.0),
                           {},
                           {},
                           {},
                           {},
                           {}});
  std::vector<test::TorchCase> torch_cases;
  uint64_t seed = 400;
  for (size_t c = 0; c < cases.size(); ++c) {
    Case& k = cases[c];
    k.name = "rope_" + std::to_string(c);
    k.x = test::random_tensor({k.T, k.H, k.D}, k.dt, ++seed);
    k.pos = positions_for(k.T, DType::i64, ++seed);
    k.dout = test::random_tensor({k.T, k.H, k.D}, k.dt, ++seed);
    Tensor inv = test::on_test_device(ops::rope_inv_freq(k.cfg));
    Tensor pos = test::on_test_device(k.pos);
    k.out = test::empty_on_test_device({k.T, k.H, k.D}, k.dt);
    ops::rope_forward(test::on_test_device(k.x), pos, inv, k.out);
    k.dx = test::empty_on_test_device({k.T, k.H, k.D}, k.dt);
    ops::rope_backward(test::on_test_device(k.dout), pos, inv, k.dx);
    torch_cases.push_back(
        {k.name, "rope", params_json(k.cfg), {{"x", k.x}, {"positions", k.pos}, {"dout", k.dout}}});
  }
  // The frequencies themselves, plain and with both Llama-3 scalings, in the same Python run.
  std::vector<ops::RopeConfig> configs;
  for (int64_t D : {64, 128})
    for (double theta : {10000.0, 500000.0}) {
      configs.push_back(plain(D, theta));
      configs.push_back(llama3(D, theta));
      configs.push_back(llama3(D, theta, 1));
    }
  for (size_t c = 0; c < configs.size(); ++c)
    torch_cases.push_back(
        {"inv_freq_" + std::to_string(c), "rope_inv_freq", params_json(configs[c]), {}});
  auto ref = test::run_torch(torch_cases);
  for (size_t c = 0; c < configs.size(); ++c) {
    const std::string key = "inv_freq_" + std::to_string(c) + "/inv_freq";
    SCOPED_TRACE(key + " " + params_json(configs[c]));
    ASSERT_TRUE(ref.count(key));
    const HostArray got = test::to_host_array(ops::rope_inv_freq(configs[c]));
    const HostArray& want = ref[key];
    ASSERT_EQ(got.shape, want.shape);
    for (int64_t i = 0; i < got.numel(); ++i)
      EXPECT_NEAR(got[i], want[i], 1e-7 * want[i]) << "i=" << i;  // f32 rounding of each
  }
  for (const Case& k : cases) {
    SCOPED_TRACE(k.name + " " + dtype_name(k.dt) + " T=" + std::to_string(k.T) +
                 " D=" + std::to_string(k.D) + " llama3=" + std::to_string(k.cfg.llama3_factor));
    ASSERT_TRUE(ref.count(k.name + "/out") && ref.count(k.name + "/dx"));
    EXPECT_ALL_CLOSE(k.out, ref[k.name + "/out"], test::tolerance_for(k.dt));
    EXPECT_ALL_CLOSE(k.dx, ref[k.name + "/dx"], test::tolerance_for(k.dt));
  }
}

}  // namespace
}  // namespace origami
