// AdamW and the pieces of gradient-norm clipping: five AdamW steps against a naive double
// implementation and against torch.optim.AdamW fed the same gradients, sum of squares in double,
// scale_ / axpy_, clip_coefficient against torch.nn.utils.clip_grad_norm_, and bad input.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "ops/optimizer.h"
#include "tests/support/test_support.h"

namespace origami {
namespace {

using test::HostArray;

const test::Tolerance kExact{0.0, 0.0};  // bit-for-bit

// A copy on the device under test, for tensors an op updates in place (on the CPU,
// on_test_device returns the tensor itself).
Tensor copy_on_test_device(const Tensor& cpu) {
  return test::on_test_device(cpu.clone());
}

constexpr int kSteps = 5;

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

// A float as JSON text, every digit kept, so PyTorch sees exactly the value the op uses.
std::string num(double x) {
  char buf[40];
  std::snprintf(buf, sizeof buf, "%.17g", x);
  return buf;
}

ops::AdamWParams params_for(double weight_decay) {
  ops::AdamWParams p;
  p.lr = 0.05f;
  p.beta1 = 0.9f;
  p.beta2 = 0.99f;
  p.eps = 1e-6f;
  p.weight_decay = float(weight_decay);
  return p;
}

struct AdamState {
  HostArray w, m, v;
};

// torch.optim.AdamW's update written out in double, one step per gradient.
AdamState adamw_reference(const HostArray& w0, const std::vector<HostArray>& grads,
                          const ops::AdamWParams& p, double grad_scale) {
  AdamState s{w0, test::host_array(w0.shape), test::host_array(w0.shape)};
  const double lr = p.lr, b1 = p.beta1, b2 = p.beta2, eps = p.eps, wd = p.weight_decay;
  for (size_t k = 0; k < grads.size(); ++k) {
    const double t = double(k + 1);
    const double bc1 = 1 - std::pow(b1, t), bc2 = 1 - std::pow(b2, t);
    for (int64_t i = 0; i < w0.numel(); ++i) {
      const double g = grads[k][i] * grad_scale;
      s.w[i] *= 1 - lr * wd;
      s.m[i] = b1 * s.m[i] + (1 - b1) * g;
      s.v[i] = b2 * s.v[i] + (1 - b2) * g * g;
      s.w[i] -= (lr / bc1) * s.m[i] / (std::sqrt(s.v[i]) / std::sqrt(bc2) + eps);
    }
  }
  return s;
}

HostArray rounded_bf16(const HostArray& a) {
  HostArray r = a;
  for (double& x : r.data) x = round_bf16(float(x));
  return r;
}

enum class ParamMode { none, bf16, f32, master };
const char* mode_name(ParamMode m) {
  switch (m) {
    case ParamMode::none:
      return "none";
    case ParamMode::bf16:
      return "bf16";
    case ParamMode::f32:
      return "f32";
    case ParamMode::master:
      return "master";
  }
  return "?";
}

// Runs kSteps AdamW steps on the test device; returns master, m, v and the param copy (if any).
struct AdamRun {
  Tensor master, m, v, param;
};
AdamRun run_adamw(const Tensor& w0, const std::vector<Tensor>& grads, ops::AdamWParams p,
                  ParamMode mode, float grad_scale) {
  const int64_t N = w0.numel();
  AdamRun r;
  r.master = copy_on_test_device(w0);
  r.m = test::on_test_device(Tensor::zeros({N}, DType::f32));
  r.v = test::on_test_device(Tensor::zeros({N}, DType::f32));
  if (mode == ParamMode::bf16) r.param = test::empty_on_test_device({N}, DType::bf16);
  if (mode == ParamMode::f32) r.param = test::empty_on_test_device({N}, DType::f32);
  if (mode == ParamMode::master) r.param = r.master;
  for (int k = 0; k < kSteps; ++k) {
    p.step = k + 1;
    ops::adamw_step(r.master, test::on_test_device(grads[size_t(k)]), r.m, r.v, p, r.param,
                    grad_scale);
  }
  return r;
}

TEST(AdamW, FiveStepsMatchNaiveDouble) {
  ORIGAMI_REQUIRE_TEST_DEVICE();
  uint64_t seed = 10;
  for (int64_t N : {int64_t(1), int64_t(3), int64_t(17), int64_t(130)})
    for (DType gdt : test::float_dtypes())
      for (double wd : {0.0, 0.1})
        for (ParamMode mode :
             {ParamMode::none, ParamMode::bf16, ParamMode::f32, ParamMode::master}) {
          const float grad_scale = (++seed % 2) ? 1.0f : 0.5f;
          SCOPED_TRACE(std::string("N=") + std::to_string(N) + " grad " + dtype_name(gdt) +
                       " wd=" + std::to_string(wd) + " param " + mode_name(mode) +
                       " grad_scale=" + std::to_string(grad_scale));
          Tensor w0 = test::random_tensor({N}, DType::f32, ++seed);
          std::vector<Tensor> grads;
          std::vector<HostArray> gh;
          for (int k = 0; k < kSteps; ++k) {
            grads.push_back(test::random_tensor({N}, gdt, ++seed, -2.0, 2.0));
            gh.push_back(test::to_host_array(grads.back()));
          }
          const ops::AdamWParams p = params_for(wd);
          const AdamRun r = run_adamw(w0, grads, p, mode, grad_scale);
          const AdamState e = adamw_reference(test::to_host_array(w0), gh, p, grad_scale);
          EXPECT_ALL_CLOSE(r.master, e.w, test::tolerance_for(DType::f32));
          EXPECT_ALL_CLOSE(r.m, e.m, test::tolerance_for(DType::f32));
          EXPECT_ALL_CLOSE(r.v, e.v, test::tolerance_for(DType::f32));
          if (mode == ParamMode::bf16) {
            EXPECT_ALL_CLOSE(r.param, e.w, test::tolerance_for(DType::bf16));
            // The bf16 copy is the fp32 master rounded, bit for bit.
            EXPECT_ALL_CLOSE(r.param, rounded_bf16(test::to_host_array(r.master)), kExact);
          } else if (mode == ParamMode::f32) {
            EXPECT_ALL_CLOSE(r.param, test::to_host_array(r.master), kExact);
          }
        }
}

// Weight decay is decoupled and applied before the Adam update: with a zero gradient (m = v = 0)
// a step only shrinks the weights by 1 - lr * wd.
TEST(AdamW, ZeroGradientOnlyDecays) {
  ORIGAMI_REQUIRE_TEST_DEVICE();
  const int64_t N = 17;
  Tensor w0 = test::random_tensor({N}, DType::f32, 3);
  Tensor master = copy_on_test_device(w0);
  Tensor m = test::on_test_device(Tensor::zeros({N}, DType::f32));
  Tensor v = test::on_test_device(Tensor::zeros({N}, DType::f32));
  ops::AdamWParams p = params_for(0.1);
  ops::adamw_step(master, test::on_test_device(Tensor::zeros({N}, DType::bf16)), m, v, p);
  HostArray e = test::to_host_array(w0);
  for (double& x : e.data) x *= 1.0 - double(p.lr) * double(p.weight_decay);
  EXPECT_ALL_CLOSE(master, e, test::tolerance_for(DType::f32));
}

TEST(AdamW, SumSquaresAccumulatesInDouble) {
  ORIGAMI_REQUIRE_TEST_DEVICE();
  uint64_t seed = 70;
  for (DType dt : {DType::f32, DType::bf16, DType::f16})
    for (int64_t N : {int64_t(1), int64_t(3), int64_t(17), int64_t(130), int64_t(300007)}) {
      SCOPED_TRACE(std::string(dtype_name(dt)) + " N=" + std::to_string(N));
      // Values of very different sizes, so an fp32 accumulator would lose digits.
      Tensor g = test::random_tensor({N}, dt, ++seed, -1.0, 1.0);
      if (N > 2) g.set_at(1, 300.0);
      double expected = 0;
      const HostArray h = test::to_host_array(g);
      for (double x : h.data) expected += x * x;
      const double got = ops::sum_squares(test::on_test_device(g));
      // An fp32 accumulator would be off by about 1e-7 relative; double by far less than 1e-11.
      EXPECT_NEAR(got, expected, 1e-11 * expected + 1e-300);
    }
  EXPECT_EQ(ops::sum_squares(test::on_test_device(Tensor::zeros({0}, DType::f32))), 0.0);
}

TEST(AdamW, ScaleAndAxpyMatchReference) {
  ORIGAMI_REQUIRE_TEST_DEVICE();
  uint64_t seed = 80;
  for (DType dt : test::float_dtypes())
    for (int64_t N : {int64_t(1), int64_t(3), int64_t(17), int64_t(130)}) {
      SCOPED_TRACE(std::string(dtype_name(dt)) + " N=" + std::to_string(N));
      Tensor g = test::random_tensor({N}, dt, ++seed);
      Tensor gd = copy_on_test_device(g);
      ops::scale_(gd, 0.37f);
      HostArray e = test::to_host_array(g);
      for (double& x : e.data) x *= double(0.37f);
      EXPECT_ALL_CLOSE(gd, e, test::tolerance_for(dt));

      Tensor y = test::random_tensor({N}, DType::f32, ++seed);
      Tensor x = test::random_tensor({N}, dt, ++seed);
      Tensor yd = copy_on_test_device(y);
      ops::axpy_(yd, test::on_test_device(x), -1.5f);
      HostArray ey = test::to_host_array(y);
      const HostArray xh = test::to_host_array(x);
      for (int64_t i = 0; i < N; ++i) ey[i] += -1.5 * xh[i];
      EXPECT_ALL_CLOSE(yd, ey, test::tolerance_for(DType::f32));
    }
}

TEST(AdamW, ClipCoefficientFollowsClipGradNorm) {
  ORIGAMI_REQUIRE_TEST_DEVICE();
  EXPECT_FLOAT_EQ(ops::clip_coefficient(4.0, 1.0), float(1.0 / (4.0 + 1e-6)));
  EXPECT_EQ(ops::clip_coefficient(0.5, 1.0), 1.0f);
  EXPECT_FLOAT_EQ(ops::clip_coefficient(1.0, 1.0), float(1.0 / (1.0 + 1e-6)));
  EXPECT_EQ(ops::clip_coefficient(100.0, 0.0), 1.0f);  // max_norm <= 0: no clipping
  EXPECT_EQ(ops::clip_coefficient(100.0, -1.0), 1.0f);
  EXPECT_EQ(ops::clip_coefficient(0.0, 1.0), 1.0f);
}

// The clipping pieces together: global norm from sum_squares, coefficient, scale_.
std::vector<Tensor> clip_on_device(const std::vector<Tensor>& grads, double max_norm,
                                   double* norm_out) {
  std::vector<Tensor> gd;
  double ss = 0;
  for (const Tensor& g : grads) {
    gd.push_back(copy_on_test_device(g));
    ss += ops::sum_squares(gd.back());
  }
  const double norm = std::sqrt(ss);
  const float c = ops::clip_coefficient(norm, max_norm);
  for (Tensor& g : gd) ops::scale_(g, c);
  *norm_out = norm;
  return gd;
}

TEST(AdamW, GlobalNormClippingMatchesReference) {
  ORIGAMI_REQUIRE_TEST_DEVICE();
  for (DType dt : test::float_dtypes())
    for (double max_norm : {0.5, 1e3}) {
      SCOPED_TRACE(std::string(dtype_name(dt)) + " max_norm=" + std::to_string(max_norm));
      std::vector<Tensor> grads;
      for (int64_t n : {int64_t(1), int64_t(17), int64_t(130)})
        grads.push_back(test::random_tensor({n}, dt, 90 + uint64_t(n)));
      double norm = 0;
      const std::vector<Tensor> clipped = clip_on_device(grads, max_norm, &norm);
      double ss = 0;
      for (const Tensor& g : grads)
        for (double x : test::to_host_array(g).data) ss += x * x;
      const double e_norm = std::sqrt(ss);
      EXPECT_NEAR(norm, e_norm, 1e-12 * e_norm);
      const double c = std::min(1.0, max_norm / (e_norm + 1e-6));
      for (size_t i = 0; i < grads.size(); ++i) {
        HostArray e = test::to_host_array(grads[i]);
        for (double& x : e.data) x *= c;
        EXPECT_ALL_CLOSE(clipped[i], e, test::tolerance_for(dt));
      }
    }
}

TEST(AdamW, BadInputsNameOpAndShapes) {
  ORIGAMI_REQUIRE_TEST_DEVICE();
  const Device dev = test::test_device();
  Tensor master = Tensor::zeros({8}, DType::f32, dev);
  Tensor m = Tensor::zeros({8}, DType::f32, dev), v = Tensor::zeros({8}, DType::f32, dev);
  Tensor g = Tensor::zeros({8}, DType::f32, dev);
  const ops::AdamWParams p = params_for(0.1);
  Tensor g9 = Tensor::zeros({9}, DType::f32, dev);
  expect_error([&] { ops::adamw_step(master, g9, m, v, p); },
               {"adamw_step", "grad", "f32[8]", "f32[9]"});
  Tensor m_bf = Tensor::zeros({8}, DType::bf16, dev);
  expect_error([&] { ops::adamw_step(master, g, m_bf, v, p); },
               {"adamw_step", "m", "must be f32", "bf16[8]"});
  Tensor master_bf = Tensor::zeros({8}, DType::bf16, dev);
  expect_error([&] { ops::adamw_step(master_bf, g, m, v, p); },
               {"adamw_step", "master", "must be f32", "bf16[8]"});
  Tensor param_bad = Tensor::zeros({4, 2}, DType::bf16, dev);
  expect_error([&] { ops::adamw_step(master, g, m, v, p, param_bad); },
               {"adamw_step", "param", "f32[8]", "bf16[4,2]"});
  ops::AdamWParams p0 = p;
  p0.step = 0;
  expect_error([&] { ops::adamw_step(master, g, m, v, p0); }, {"adamw_step", "step", "got 0"});
  Tensor y = Tensor::zeros({8}, DType::f32, dev), x7 = Tensor::zeros({7}, DType::bf16, dev);
  expect_error([&] { ops::axpy_(y, x7); }, {"axpy_", "x", "f32[8]", "bf16[7]"});
  Tensor y_bf = Tensor::zeros({8}, DType::bf16, dev);
  expect_error([&] { ops::axpy_(y_bf, g); }, {"axpy_", "y", "must be f32", "bf16[8]"});
  Tensor gi = Tensor::zeros({8}, DType::i32, dev);
  expect_error([&] { ops::scale_(gi, 2.0f); }, {"scale_", "g", "i32[8]"});
  Tensor g2 = Tensor::zeros({4, 6}, DType::f32, dev);
  expect_error([&] { ops::sum_squares(g2.narrow(1, 0, 3)); },
               {"sum_squares", "contiguous", "f32[4,3]"});
  if (cuda_available()) {
    Tensor g_other = Tensor::zeros({8}, DType::f32, dev.is_cpu() ? Device::cuda() : Device::cpu());
    expect_error([&] { ops::adamw_step(master, g_other, m, v, p); },
                 {"adamw_step", "one device", "grad"});
  }
}

// One PyTorch run for both: torch.optim.AdamW for five steps on the gradients we feed ours, and
// torch.nn.utils.clip_grad_norm_ on the same gradient tensors as our clipping pieces.
TEST(AdamWGolden, StepsAndClippingMatchTorch) {
  ORIGAMI_REQUIRE_TEST_DEVICE();
  struct AdamCase {
    int64_t N;
    DType gdt;
    double wd;
    ParamMode mode;
    float grad_scale;
  };
  const std::vector<AdamCase> adam_cases = {
      {130, DType::f32, 0.1, ParamMode::none, 1.0f},
      {130, DType::bf16, 0.1, ParamMode::bf16, 1.0f},
      {17, DType::f32, 0.0, ParamMode::bf16, 0.5f},
      {17, DType::bf16, 0.0, ParamMode::none, 1.0f},
      {3, DType::f32, 0.1, ParamMode::master, 0.25f},
      {1, DType::bf16, 0.1, ParamMode::f32, 1.0f},
  };
  struct ClipCase {
    DType dt;
    double max_norm;
  };
  const std::vector<ClipCase> clip_cases = {
      {DType::f32, 0.5}, {DType::bf16, 0.5}, {DType::f32, 1e3}, {DType::bf16, 2.0}};
  const int64_t clip_sizes[] = {1, 3, 17, 130};

  std::vector<test::TorchCase> torch_cases;
  std::vector<Tensor> w0s;
  std::vector<std::vector<Tensor>> adam_grads, clip_grads;
  uint64_t seed = 200;
  for (size_t c = 0; c < adam_cases.size(); ++c) {
    const AdamCase& k = adam_cases[c];
    const ops::AdamWParams p = params_for(k.wd);
    w0s.push_back(test::random_tensor({k.N}, DType::f32, ++seed));
    adam_grads.emplace_back();
    test::TorchCase tc;
    tc.name = "adamw" + std::to_string(c);
    tc.op = "adamw";
    tc.params_json =
        "{\"lr\": " + num(p.lr) + ", \"beta1\": " + num(p.beta1) + ", \"beta2\": " + num(p.beta2) +
        ", \"eps\": " + num(p.eps) + ", \"weight_decay\": " + num(p.weight_decay) +
        ", \"grad_scale\": " + num(k.grad_scale) + ", \"steps\": " + std::to_string(kSteps) + "}";
    tc.inputs.push_back({"param", w0s.back()});
    for (int s = 0; s < kSteps; ++s) {
      adam_grads.back().push_back(test::random_tensor({k.N}, k.gdt, ++seed, -2.0, 2.0));
      tc.inputs.push_back({"g" + std::to_string(s), adam_grads.back().back()});
    }
    torch_cases.push_back(tc);
  }
  for (size_t c = 0; c < clip_cases.size(); ++c) {
    clip_grads.emplace_back();
    test::TorchCase tc{"clip" + std::to_string(c),
                       "clip_grad_norm",
                       "{\"max_norm\": " + num(clip_cases[c].max_norm) + "}",
                       {}};
    for (size_t i = 0; i < 4; ++i) {
      clip_grads.back().push_back(
          test::random_tensor({clip_sizes[i]}, clip_cases[c].dt, ++seed, -0.5, 0.5));
      tc.inputs.push_back({"g" + std::to_string(i), clip_grads.back().back()});
    }
    torch_cases.push_back(tc);
  }
  const auto ref = test::run_torch(torch_cases);
  if (ref.empty()) return;  // run_torch reported the failure

  for (size_t c = 0; c < adam_cases.size(); ++c) {
    const AdamCase& k = adam_cases[c];
    const std::string name = "adamw" + std::to_string(c);
    SCOPED_TRACE(name + " N=" + std::to_string(k.N) + " grad " + dtype_name(k.gdt) +
                 " wd=" + std::to_string(k.wd) + " param " + mode_name(k.mode));
    const AdamRun r = run_adamw(w0s[c], adam_grads[c], params_for(k.wd), k.mode, k.grad_scale);
    EXPECT_ALL_CLOSE(r.master, ref.at(name + "/param"), test::tolerance_for(DType::f32));
    EXPECT_ALL_CLOSE(r.m, ref.at(name + "/m"), test::tolerance_for(DType::f32));
    EXPECT_ALL_CLOSE(r.v, ref.at(name + "/v"), test::tolerance_for(DType::f32));
    if (k.mode == ParamMode::bf16) {
      EXPECT_ALL_CLOSE(r.param, ref.at(name + "/param"), test::tolerance_for(DType::bf16));
    } else if (k.mode == ParamMode::f32) {
      EXPECT_ALL_CLOSE(r.param, ref.at(name + "/param"), test::tolerance_for(DType::f32));
    }
  }
  for (size_t c = 0; c < clip_cases.size(); ++c) {
    const std::string name = "clip" + std::to_string(c);
    SCOPED_TRACE(name + " " + dtype_name(clip_cases[c].dt) +
                 " max_norm=" + std::to_string(clip_cases[c].max_norm));
    double norm = 0;
    const std::vector<Tensor> clipped =
        clip_on_device(clip_grads[c], clip_cases[c].max_norm, &norm);
    const HostArray& e_norm = ref.at(name + "/norm");
    EXPECT_NEAR(norm, e_norm[0], 1e-12 * e_norm[0]);
    for (size_t i = 0; i < clipped.size(); ++i)
      EXPECT_ALL_CLOSE(clipped[i], ref.at(name + "/g" + std::to_string(i)),
                       test::tolerance_for(clip_cases[c].dt));
  }
}

}  // namespace
}  // namespace origami
