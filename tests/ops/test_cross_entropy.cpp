// Cross-entropy with an ignore index: naive double references, the vocabulary-sharded steps
// against the one-shot forward, finite differences of the backward, bad input, and PyTorch golden
// values (F.cross_entropy(reduction="none"), logsumexp, gradients by autograd).
#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "ops/cross_entropy.h"
#include "tests/support/test_support.h"

namespace origami {
namespace {

using test::HostArray;

const test::Tolerance kExact{0.0, 0.0};  // bit-for-bit

constexpr int64_t kIgnore = -100;
const int64_t kRows[] = {1, 3, 17, 130};
const int64_t kVocabs[] = {130, 300, 1000};

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

// Random targets in [0, V); rows with t % 5 == 2 are ignored (all of them with all_ignored).
Tensor make_targets(int64_t T, int64_t V, DType dt, uint64_t seed, bool all_ignored = false) {
  Tensor y = test::random_ints({T}, dt, 0, V, seed);
  for (int64_t t = 0; t < T; ++t)
    if (all_ignored || t % 5 == 2) y.set_at(t, double(kIgnore));
  return y;
}

std::vector<int64_t> int_values(const Tensor& t) {
  const HostArray h = test::to_host_array(t);
  std::vector<int64_t> v(size_t(h.numel()));
  for (int64_t i = 0; i < h.numel(); ++i) v[size_t(i)] = int64_t(h[i]);
  return v;
}

struct CeRef {
  HostArray loss, lse, dlogits;
};

// Straight from the definition, in double.
CeRef reference(const HostArray& x, const std::vector<int64_t>& y, double grad_scale) {
  const int64_t T = x.shape[0], V = x.shape[1];
  CeRef r{test::host_array({T}), test::host_array({T}), test::host_array({T, V})};
  for (int64_t t = 0; t < T; ++t) {
    double mx = -std::numeric_limits<double>::infinity();
    for (int64_t j = 0; j < V; ++j) mx = std::max(mx, x[t * V + j]);
    double s = 0;
    for (int64_t j = 0; j < V; ++j) s += std::exp(x[t * V + j] - mx);
    const double lse = std::log(s) + mx;
    r.lse[t] = lse;
    const int64_t target = y[size_t(t)];
    if (target == kIgnore) continue;  // loss and gradient 0
    r.loss[t] = lse - x[t * V + target];
    for (int64_t j = 0; j < V; ++j)
      r.dlogits[t * V + j] =
          (std::exp(x[t * V + j] - lse) - (j == target ? 1.0 : 0.0)) * grad_scale;
  }
  return r;
}

TEST(CrossEntropy, ForwardAndBackwardMatchReference) {
  ORIGAMI_REQUIRE_TEST_DEVICE();
  uint64_t seed = 100;
  const float grad_scale = 0.37f;
  for (DType dt : test::float_dtypes())
    for (int64_t T : kRows)
      for (int64_t V : kVocabs) {
        const DType ydt = (++seed % 2) ? DType::i64 : DType::i32;
        SCOPED_TRACE(std::string("logits ") + dtype_name(dt) + " targets " + dtype_name(ydt) +
                     " T=" + std::to_string(T) + " V=" + std::to_string(V));
        Tensor x = test::random_tensor({T, V}, dt, ++seed, -4.0, 4.0);
        Tensor y = make_targets(T, V, ydt, ++seed);
        Tensor xd = test::on_test_device(x), yd = test::on_test_device(y);
        Tensor loss = test::empty_on_test_device({T}, DType::f32);
        Tensor lse = test::empty_on_test_device({T}, DType::f32);
        ops::cross_entropy_forward(xd, yd, kIgnore, loss, lse);
        Tensor dx = test::empty_on_test_device({T, V}, dt);
        ops::cross_entropy_backward(xd, yd, lse, kIgnore, grad_scale, dx);
        const CeRef r = reference(test::to_host_array(x), int_values(y), grad_scale);
        // loss and lse are f32 computed from exactly representable inputs.
        EXPECT_ALL_CLOSE(loss, r.loss, test::tolerance_for(DType::f32));
        EXPECT_ALL_CLOSE(lse, r.lse, test::tolerance_for(DType::f32));
        EXPECT_ALL_CLOSE(dx, r.dlogits, test::tolerance_for(dt));
      }
}

TEST(CrossEntropy, AllRowsIgnoredGiveZeroLossAndGradient) {
  ORIGAMI_REQUIRE_TEST_DEVICE();
  for (DType dt : test::float_dtypes()) {
    SCOPED_TRACE(dtype_name(dt));
    const int64_t T = 17, V = 300;
    Tensor x = test::random_tensor({T, V}, dt, 7, -4.0, 4.0);
    Tensor y = make_targets(T, V, DType::i64, 8, /*all_ignored=*/true);
    Tensor xd = test::on_test_device(x), yd = test::on_test_device(y);
    Tensor loss = test::empty_on_test_device({T}, DType::f32);
    Tensor lse = test::empty_on_test_device({T}, DType::f32);
    ops::cross_entropy_forward(xd, yd, kIgnore, loss, lse);
    Tensor dx = test::empty_on_test_device({T, V}, dt);
    ops::cross_entropy_backward(xd, yd, lse, kIgnore, 1.0f, dx);
    const CeRef r = reference(test::to_host_array(x), int_values(y), 1.0);
    EXPECT_ALL_CLOSE(loss, test::host_array({T}), kExact);
    EXPECT_ALL_CLOSE(dx, test::host_array({T, V}), kExact);
    EXPECT_ALL_CLOSE(lse, r.lse, test::tolerance_for(DType::f32));
  }
}

// An ignore_index inside the vocabulary (as some data pipelines use 0) is honoured too.
TEST(CrossEntropy, IgnoreIndexInsideTheVocabulary) {
  ORIGAMI_REQUIRE_TEST_DEVICE();
  const int64_t T = 17, V = 130;
  Tensor x = test::random_tensor({T, V}, DType::f32, 9, -4.0, 4.0);
  Tensor y = test::random_ints({T}, DType::i32, 0, 4, 10);  // many zeros
  Tensor xd = test::on_test_device(x), yd = test::on_test_device(y);
  Tensor loss = test::empty_on_test_device({T}, DType::f32);
  Tensor lse = test::empty_on_test_device({T}, DType::f32);
  ops::cross_entropy_forward(xd, yd, /*ignore_index=*/0, loss, lse);
  Tensor dx = test::empty_on_test_device({T, V}, DType::f32);
  ops::cross_entropy_backward(xd, yd, lse, 0, 1.0f, dx);
  const HostArray xh = test::to_host_array(x), lh = test::to_host_array(loss),
                  dh = test::to_host_array(dx);
  std::vector<int64_t> yv = int_values(y);
  std::vector<int64_t> as_minus(yv);
  for (auto& v : as_minus) v = v == 0 ? kIgnore : v;
  const CeRef r = reference(xh, as_minus, 1.0);
  EXPECT_ALL_CLOSE(lh, r.loss, test::tolerance_for(DType::f32));
  EXPECT_ALL_CLOSE(dh, r.dlogits, test::tolerance_for(DType::f32));
}

// The steps on vocabulary shards, combined as a tensor-parallel group would (max of the row
// maxima; sums of sum_exp taken against the global max and of target logits), give the numbers
// of the one-shot forward; the backward on each shard fills the matching columns of the one-shot
// backward.
TEST(CrossEntropy, VocabShardedStepsMatchUnsharded) {
  ORIGAMI_REQUIRE_TEST_DEVICE();
  uint64_t seed = 500;
  const float grad_scale = 0.5f;
  for (DType dt : test::float_dtypes())
    for (int64_t T : {int64_t(17), int64_t(130)})
      for (int64_t V : {int64_t(300), int64_t(1000)})
        for (int shards : {2, 3}) {
          const DType ydt = (++seed % 2) ? DType::i64 : DType::i32;
          SCOPED_TRACE(std::string("logits ") + dtype_name(dt) + " targets " + dtype_name(ydt) +
                       " T=" + std::to_string(T) + " V=" + std::to_string(V) +
                       " shards=" + std::to_string(shards));
          Tensor x = test::random_tensor({T, V}, dt, ++seed, -4.0, 4.0);
          Tensor y = make_targets(T, V, ydt, ++seed);
          Tensor xd = test::on_test_device(x), yd = test::on_test_device(y);

          // One shot.
          Tensor loss1 = test::empty_on_test_device({T}, DType::f32);
          Tensor lse1 = test::empty_on_test_device({T}, DType::f32);
          ops::cross_entropy_forward(xd, yd, kIgnore, loss1, lse1);
          Tensor dx1 = test::empty_on_test_device({T, V}, dt);
          ops::cross_entropy_backward(xd, yd, lse1, kIgnore, grad_scale, dx1);

          // Uneven shards [V*k/S, V*(k+1)/S): narrow() views with the full row stride.
          std::vector<int64_t> begin, len;
          for (int k = 0; k < shards; ++k) {
            begin.push_back(V * k / shards);
            len.push_back(V * (k + 1) / shards - V * k / shards);
          }
          HostArray gmax = test::host_array({T}, -std::numeric_limits<double>::infinity());
          for (int k = 0; k < shards; ++k) {
            Tensor part = test::empty_on_test_device({T}, DType::f32);
            ops::ce_row_max(xd.narrow(1, begin[size_t(k)], len[size_t(k)]), part);
            const HostArray h = test::to_host_array(part);
            for (int64_t t = 0; t < T; ++t) gmax[t] = std::max(gmax[t], h[t]);
          }
          std::vector<float> gmax_f(gmax.data.begin(), gmax.data.end());
          Tensor row_max = test::on_test_device(Tensor::from_vector(gmax_f, {T}));
          HostArray sum_exp = test::host_array({T}), target_logit = test::host_array({T});
          for (int k = 0; k < shards; ++k) {
            Tensor shard = xd.narrow(1, begin[size_t(k)], len[size_t(k)]);
            Tensor se = test::empty_on_test_device({T}, DType::f32);
            Tensor tl = test::empty_on_test_device({T}, DType::f32);
            ops::ce_sum_exp(shard, row_max, se);
            ops::ce_target_logit(shard, yd, begin[size_t(k)], tl);
            const HostArray seh = test::to_host_array(se), tlh = test::to_host_array(tl);
            for (int64_t t = 0; t < T; ++t) {
              sum_exp[t] += seh[t];
              target_logit[t] += tlh[t];
            }
          }
          auto as_device = [](const HostArray& h) {
            return test::on_test_device(
                Tensor::from_vector(std::vector<float>(h.data.begin(), h.data.end()), h.shape));
          };
          Tensor loss = test::empty_on_test_device({T}, DType::f32);
          Tensor lse = test::empty_on_test_device({T}, DType::f32);
          ops::ce_finish(row_max, as_device(sum_exp), as_device(target_logit), yd, kIgnore, loss,
                         lse);
          Tensor dx = test::empty_on_test_device({T, V}, dt);
          for (int k = 0; k < shards; ++k) {
            Tensor dshard = dx.narrow(1, begin[size_t(k)], len[size_t(k)]);
            ops::cross_entropy_backward(xd.narrow(1, begin[size_t(k)], len[size_t(k)]), yd, lse,
                                        kIgnore, grad_scale, dshard, begin[size_t(k)]);
          }

          const CeRef r = reference(test::to_host_array(x), int_values(y), grad_scale);
          EXPECT_ALL_CLOSE(loss, test::to_host_array(loss1), test::tolerance_for(DType::f32));
          EXPECT_ALL_CLOSE(lse, test::to_host_array(lse1), test::tolerance_for(DType::f32));
          EXPECT_ALL_CLOSE(dx, test::to_host_array(dx1), test::tolerance_for(dt));
          EXPECT_ALL_CLOSE(loss, r.loss, test::tolerance_for(DType::f32));
          EXPECT_ALL_CLOSE(lse, r.lse, test::tolerance_for(DType::f32));
          EXPECT_ALL_CLOSE(dx, r.dlogits, test::tolerance_for(dt));
        }
}

// A target in another shard contributes 0 to this shard's target logit; an ignored one too.
TEST(CrossEntropy, TargetLogitOutsideTheShardIsZero) {
  ORIGAMI_REQUIRE_TEST_DEVICE();
  Tensor x = test::random_tensor({3, 10}, DType::f32, 3, 1.0, 2.0);  // no logit is 0
  Tensor y = Tensor::from_vector_i64({5, 25, kIgnore}, {3});
  Tensor tl = test::empty_on_test_device({3}, DType::f32);
  ops::ce_target_logit(test::on_test_device(x), test::on_test_device(y), 20, tl);
  const HostArray xh = test::to_host_array(x);
  HostArray expected = test::host_array({3});
  expected[1] = xh[1 * 10 + 5];
  EXPECT_ALL_CLOSE(tl, expected, kExact);
}

TEST(CrossEntropy, BackwardMatchesFiniteDifferences) {
  ORIGAMI_REQUIRE_TEST_DEVICE();
  for (int64_t V : {int64_t(3), int64_t(130)}) {
    SCOPED_TRACE("V=" + std::to_string(V));
    const int64_t T = 17;
    const float grad_scale = 0.7f;
    Tensor x = test::random_tensor({T, V}, DType::f32, 20 + V, -3.0, 3.0);
    Tensor y = make_targets(T, V, DType::i64, 21 + V);
    Tensor yd = test::on_test_device(y);
    // loss = sum_t grad_scale * loss_t: the scalar whose gradient the backward computes.
    Tensor weights = Tensor::empty({T}, DType::f32);
    weights.fill_(grad_scale);
    auto loss = [&] {
      Tensor l = test::empty_on_test_device({T}, DType::f32);
      Tensor lse = test::empty_on_test_device({T}, DType::f32);
      ops::cross_entropy_forward(test::on_test_device(x), yd, kIgnore, l, lse);
      return test::weighted_sum(l, weights);
    };
    Tensor xd = test::on_test_device(x);
    Tensor l = test::empty_on_test_device({T}, DType::f32);
    Tensor lse = test::empty_on_test_device({T}, DType::f32);
    ops::cross_entropy_forward(xd, yd, kIgnore, l, lse);
    Tensor dx = test::empty_on_test_device({T, V}, DType::f32);
    ops::cross_entropy_backward(xd, yd, lse, kIgnore, grad_scale, dx);
    EXPECT_LT(test::finite_difference_error(loss, x, dx, 24), test::kFiniteDifferenceTolerance);
  }
}

TEST(CrossEntropy, BadInputsNameOpAndShapes) {
  ORIGAMI_REQUIRE_TEST_DEVICE();
  const Device dev = test::test_device();
  Tensor x = Tensor::zeros({3, 10}, DType::f32, dev);
  Tensor y = Tensor::zeros({3}, DType::i64, dev);
  Tensor loss = Tensor::zeros({3}, DType::f32, dev), lse = Tensor::zeros({3}, DType::f32, dev);
  Tensor y4 = Tensor::zeros({4}, DType::i64, dev);
  expect_error([&] { ops::cross_entropy_forward(x, y4, kIgnore, loss, lse); },
               {"cross_entropy_forward", "targets", "[3]", "i64[4]"});
  Tensor yf = Tensor::zeros({3}, DType::f32, dev);
  expect_error([&] { ops::cross_entropy_forward(x, yf, kIgnore, loss, lse); },
               {"cross_entropy_forward", "targets", "i32 or i64", "f32[3]"});
  Tensor x3 = Tensor::zeros({3, 10, 2}, DType::f32, dev);
  expect_error([&] { ops::ce_row_max(x3, loss); }, {"ce_row_max", "logits", "2-D", "f32[3,10,2]"});
  Tensor lse_bf = Tensor::zeros({3}, DType::bf16, dev);
  expect_error([&] { ops::ce_finish(loss, loss, loss, y, kIgnore, loss, lse_bf); },
               {"ce_finish", "lse", "bf16[3]"});
  Tensor dx_bf = Tensor::zeros({3, 10}, DType::bf16, dev);
  expect_error([&] { ops::cross_entropy_backward(x, y, lse, kIgnore, 1.0f, dx_bf); },
               {"cross_entropy_backward", "f32[3,10]", "bf16[3,10]"});
  Tensor dx_wide = Tensor::zeros({3, 11}, DType::f32, dev);
  expect_error([&] { ops::cross_entropy_backward(x, y, lse, kIgnore, 1.0f, dx_wide); },
               {"cross_entropy_backward", "dlogits", "[3,10]", "f32[3,11]"});
  expect_error([&] { ops::ce_sum_exp(x.transpose(0, 1), loss, lse); },
               {"ce_sum_exp", "logits", "stride 1", "f32[10,3]"});
  if (dev.is_cpu()) {
    // Targets are read on the CPU: an out-of-vocabulary target names its row and value.
    Tensor bad = Tensor::from_vector_i64({1, 10, 2}, {3});
    expect_error([&] { ops::cross_entropy_forward(x, bad, kIgnore, loss, lse); },
                 {"cross_entropy_forward", "targets[1] = 10", "[0, 10)", "-100"});
    Tensor neg = Tensor::from_vector_i64({1, -1, 2}, {3});
    Tensor dx = x.clone();
    expect_error([&] { ops::cross_entropy_backward(x, neg, lse, kIgnore, 1.0f, dx); },
                 {"cross_entropy_backward", "targets[1] = -1"});
    expect_error([&] { ops::ce_finish(loss, loss, loss, neg, kIgnore, loss, lse); },
                 {"ce_finish", "targets[1] = -1"});
  } else {
    // On a GPU an out-of-vocabulary target gives a NaN loss instead.
    Tensor bad = Tensor::from_vector_i64({1, 10, 2}, {3}).to(dev);
    Tensor xr = test::on_test_device(test::random_tensor({3, 10}, DType::f32, 1));
    ops::cross_entropy_forward(xr, bad, kIgnore, loss, lse);
    const HostArray lh = test::to_host_array(loss);
    EXPECT_TRUE(std::isnan(lh[1]));
    EXPECT_FALSE(std::isnan(lh[0]));
  }
  if (cuda_available()) {
    Tensor y_other = Tensor::zeros({3}, DType::i64, dev.is_cpu() ? Device::cuda() : Device::cpu());
    expect_error([&] { ops::cross_entropy_forward(x, y_other, kIgnore, loss, lse); },
                 {"cross_entropy_forward", "one device", "targets"});
  }
}

TEST(CrossEntropyGolden, MatchesTorch) {
  ORIGAMI_REQUIRE_TEST_DEVICE();
  struct Case {
    int64_t T, V;
    DType dt;
    float grad_scale;
    bool all_ignored;
  };
  const std::vector<Case> cases = {
      {1, 130, DType::f32, 1.0f, false},    {3, 300, DType::bf16, 0.25f, false},
      {17, 1000, DType::f32, 0.1f, false},  {130, 300, DType::bf16, 1.0f, false},
      {130, 1000, DType::f32, 0.5f, false}, {17, 130, DType::f32, 1.0f, true},
  };
  std::vector<test::TorchCase> torch_cases;
  std::vector<Tensor> xs, ys;
  for (size_t c = 0; c < cases.size(); ++c) {
    const Case& k = cases[c];
    xs.push_back(test::random_tensor({k.T, k.V}, k.dt, 900 + c, -5.0, 5.0));
    ys.push_back(make_targets(k.T, k.V, c % 2 ? DType::i32 : DType::i64, 950 + c, k.all_ignored));
    torch_cases.push_back({"ce" + std::to_string(c),
                           "cross_entropy",
                           "{\"ignore_index\": " + std::to_string(kIgnore) +
                               ", \"grad_scale\": " + std::to_string(double(k.grad_scale)) + "}",
                           {{"logits", xs.back()}, {"targets", ys.back()}}});
  }
  const auto ref = test::run_torch(torch_cases);
  if (ref.empty()) return;  // run_torch reported the failure
  for (size_t c = 0; c < cases.size(); ++c) {
    const Case& k = cases[c];
    const std::string name = "ce" + std::to_string(c);
    SCOPED_TRACE(name + " " + dtype_name(k.dt) + " T=" + std::to_string(k.T) +
                 " V=" + std::to_string(k.V));
    Tensor xd = test::on_test_device(xs[c]), yd = test::on_test_device(ys[c]);
    Tensor loss = test::empty_on_test_device({k.T}, DType::f32);
    Tensor lse = test::empty_on_test_device({k.T}, DType::f32);
    ops::cross_entropy_forward(xd, yd, kIgnore, loss, lse);
    Tensor dx = test::empty_on_test_device({k.T, k.V}, k.dt);
    ops::cross_entropy_backward(xd, yd, lse, kIgnore, k.grad_scale, dx);
    EXPECT_ALL_CLOSE(loss, ref.at(name + "/loss"), test::tolerance_for(DType::f32));
    EXPECT_ALL_CLOSE(lse, ref.at(name + "/lse"), test::tolerance_for(DType::f32));
    EXPECT_ALL_CLOSE(dx, ref.at(name + "/dlogits"), test::tolerance_for(k.dt));
  }
}

}  // namespace
}  // namespace origami
