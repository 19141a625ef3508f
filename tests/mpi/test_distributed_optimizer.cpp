// The data-parallel optimizer against a naive reference computed in the test: every rank knows
// every rank's gradients (a function of rank, element and step), sums them itself, and runs
// AdamW by hand in double for several steps. Gradients are multiples of 1/4, so their sums over
// ranks are exact in fp32 and the reduced gradients are compared exactly; weights and Adam state
// after the fp32 updates are compared with 1e-6 relative to the largest expected value.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "parallel/distributed_optimizer.h"
#include "tests/mpi/mpi_test.h"

namespace origami {
namespace {

using test::mpi_world;

constexpr double kTolerance = 1e-6;  // relative to the largest expected value
constexpr int kSteps = 3;
constexpr double kMaxNorm = 5.0;  // clips the larger cases, not the smallest

struct Case {
  int64_t numel;
  int64_t bucket;
};
// Odd sizes; buckets from one element (pieces of 0 elements at dp > 1) to one bucket for all.
const std::vector<Case> kCases = {{1, 1},     {1, 4},      {7, 3},        {7, 100},
                                  {1000, 64}, {1000, 333}, {12345, 1000}, {12345, 1 << 22}};

std::string what(const Case& c, bool zero, int dp, const char* extra = "") {
  return "P=" + std::to_string(c.numel) + " bucket=" + std::to_string(c.bucket) +
         (zero ? " zero" : " all-reduce") + " dp=" + std::to_string(dp) + " " + extra;
}

// ---- the inputs --------------------------------------------------------------------------------
// Gradient of element i on dp rank r at step t (1-based): a multiple of 1/4 in [-2.75, 2.75].
double grad_value(int r, int64_t i, int t) {
  return test::input_value(r, i, 100 + t);
}
// Initial weights, the same on every rank.
double init_value(int64_t i) {
  return 0.5 * test::input_value(7, i, 3) + 0.125;
}

ops::AdamWParams adamw_params(int t) {
  ops::AdamWParams p;
  p.lr = 1e-2f;
  p.beta1 = 0.9f;
  p.beta2 = 0.999f;
  p.eps = 1e-8f;
  p.weight_decay = 0.1f;
  p.step = t;
  return p;
}

// Ranges counted in the norm: a few sorted, disjoint ranges that cut through pieces and buckets.
std::vector<FlatRange> counted_ranges(int64_t n) {
  std::vector<FlatRange> out;
  auto add = [&](int64_t lo, int64_t hi) {
    lo = std::max(lo, out.empty() ? int64_t(0) : out.back().end());
    hi = std::min(hi, n);
    if (hi > lo) out.push_back({lo, hi - lo});
  };
  add(0, n / 3 + 1);
  add(n / 2, n / 2 + n / 5 + 1);
  add(n - n / 7 - 1, n);
  return out;
}

// ---- the reference -----------------------------------------------------------------------------
struct Reference {
  std::vector<double> w, m, v;
  std::vector<double> sum_squares;  // per step, of the summed gradients over the counted ranges
};

Reference naive_adamw(int64_t n, int dp, const std::vector<FlatRange>& counted, int steps) {
  Reference ref;
  ref.w.resize(size_t(n));
  ref.m.assign(size_t(n), 0.0);
  ref.v.assign(size_t(n), 0.0);
  for (int64_t i = 0; i < n; ++i) ref.w[size_t(i)] = init_value(i);
  std::vector<double> g(static_cast<size_t>(n));
  for (int t = 1; t <= steps; ++t) {
    for (int64_t i = 0; i < n; ++i) {
      double s = 0;
      for (int r = 0; r < dp; ++r) s += grad_value(r, i, t);
      g[size_t(i)] = s;
    }
    double ss = 0;
    for (const FlatRange& c : counted)
      for (int64_t i = c.offset; i < c.end(); ++i) ss += g[size_t(i)] * g[size_t(i)];
    ref.sum_squares.push_back(ss);
    // Average over dp, then clip as torch.nn.utils.clip_grad_norm_ (the norm of the average).
    const double norm = std::sqrt(ss) / dp;
    const double clip = std::min(1.0, kMaxNorm / (norm + 1e-6));
    const double scale = clip / dp;
    const ops::AdamWParams p = adamw_params(t);
    const double lr = p.lr, b1 = p.beta1, b2 = p.beta2, eps = p.eps, wd = p.weight_decay;
    const double bc1 = 1 - std::pow(b1, t), bc2 = 1 - std::pow(b2, t);
    for (size_t i = 0; i < size_t(n); ++i) {
      const double gi = g[i] * scale;
      ref.w[i] *= 1 - lr * wd;
      ref.m[i] = b1 * ref.m[i] + (1 - b1) * gi;
      ref.v[i] = b2 * ref.v[i] + (1 - b2) * gi * gi;
      ref.w[i] -= lr / bc1 * ref.m[i] / (std::sqrt(ref.v[i]) / std::sqrt(bc2) + eps);
    }
  }
  return ref;
}

// ---- helpers -----------------------------------------------------------------------------------
// The sum over the group of one double per rank, added in rank order (the communicator reduces
// no f64: the bit patterns travel as i64).
double sum_over(Communicator& comm, double x) {
  int64_t bits = 0;
  std::memcpy(&bits, &x, sizeof bits);
  Tensor in = Tensor::from_vector_i64({bits}, {1});
  Tensor out = Tensor::empty({comm.size()}, DType::i64);
  comm.all_gather(in, out);
  double s = 0;
  for (int r = 0; r < comm.size(); ++r) {
    const int64_t b = out.data_as<int64_t>()[r];
    double v = 0;
    std::memcpy(&v, &b, sizeof v);
    s += v;
  }
  return s;
}

// fp32 -> bf16 bits, round to nearest even (finite values).
uint16_t bf16_bits(float f) {
  uint32_t u = 0;
  std::memcpy(&u, &f, sizeof u);
  return uint16_t((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
}

// Element-wise |actual - expected| <= tol * max|expected| (at least tol); reports the worst few.
void expect_close(const std::vector<float>& actual, const std::vector<double>& expected, double tol,
                  const std::string& ctx) {
  ASSERT_EQ(actual.size(), expected.size()) << ctx;
  double scale = 1e-30;
  for (double e : expected) scale = std::max(scale, std::abs(e));
  int shown = 0;
  for (size_t i = 0; i < actual.size(); ++i) {
    const double err = std::abs(double(actual[i]) - expected[i]);
    if (!(err <= tol * scale) && shown++ < 5)
      ADD_FAILURE() << ctx << ": element " << i << " is " << actual[i] << ", expected "
                    << expected[i] << " (error " << err / scale << " relative)";
  }
}

void expect_equal(const std::vector<float>& a, const std::vector<float>& b,
                  const std::string& ctx) {
  ASSERT_EQ(a.size(), b.size()) << ctx;
  int shown = 0;
  for (size_t i = 0; i < a.size(); ++i)
    if (a[i] != b[i] && shown++ < 5)
      ADD_FAILURE() << ctx << ": element " << i << " is " << a[i] << " and " << b[i];
}

// The buffers of one rank's model: master, grads and an optional compute copy.
struct Buffers {
  Tensor master, grads, compute;
  Buffers(int64_t n, DType compute_dtype, bool with_compute) {
    master = Tensor::empty({n}, DType::f32);
    for (int64_t i = 0; i < n; ++i) master.set_at(i, init_value(i));
    grads = Tensor::zeros({n}, DType::f32);
    if (with_compute) compute = Tensor::zeros({n}, compute_dtype);
  }
};

void fill_grads(Tensor& grads, int rank, int t) {
  float* g = grads.data_as<float>();
  for (int64_t i = 0; i < grads.numel(); ++i) g[i] = float(grad_value(rank, i, t));
}

struct RunResult {
  std::vector<float> master, m, v;
  std::vector<double> sum_squares;  // global, per step
};

// `steps` training steps through the optimizer; checks along the way what can be checked exactly
// (the reduced gradients, the compute copy).
RunResult run_steps(Communicator& dp, const Case& c, bool zero, DType compute_dtype,
                    bool with_compute, int steps) {
  const int me = dp.rank(), size = dp.size();
  const std::string ctx = what(c, zero, size, with_compute ? dtype_name(compute_dtype) : "");
  Buffers buf(c.numel, compute_dtype, with_compute);
  DistributedOptimizer opt(buf.master, buf.grads, buf.compute, dp, {zero, c.bucket});
  const std::vector<FlatRange> counted = counted_ranges(c.numel);
  const void* m_data = opt.state_m().data();
  RunResult res;
  for (int t = 1; t <= steps; ++t) {
    fill_grads(buf.grads, me, t);
    opt.reduce_gradients();
    // The reduced pieces (all of grads without ZeRO) hold the exact sums over the group.
    const std::vector<FlatRange> checked =
        zero ? opt.owned_pieces() : std::vector<FlatRange>{{0, c.numel}};
    int shown = 0;
    for (const FlatRange& piece : checked)
      for (int64_t i = piece.offset; i < piece.end(); ++i) {
        double s = 0;
        for (int r = 0; r < size; ++r) s += grad_value(r, i, t);
        if (buf.grads.item_at(i) != s && shown++ < 5)
          ADD_FAILURE() << ctx << " step " << t << ": reduced gradient " << i << " is "
                        << buf.grads.item_at(i) << ", expected " << s;
      }
    const double ss = sum_over(dp, opt.local_grad_sum_squares(counted));
    res.sum_squares.push_back(ss);
    const double norm = std::sqrt(ss) / size;
    opt.scale_gradients(float(ops::clip_coefficient(norm, kMaxNorm) / size));
    opt.step(adamw_params(t));
    if (with_compute) {
      shown = 0;
      const float* w = buf.master.data_as<float>();
      for (int64_t i = 0; i < c.numel; ++i) {
        const bool ok = compute_dtype == DType::bf16
                            ? buf.compute.data_as<uint16_t>()[i] == bf16_bits(w[i])
                            : buf.compute.data_as<float>()[i] == w[i];
        if (!ok && shown++ < 5)
          ADD_FAILURE() << ctx << " step " << t << ": compute copy element " << i << " is "
                        << buf.compute.item_at(i) << ", master " << w[i];
      }
    }
  }
  EXPECT_EQ(opt.state_m().data(), m_data) << ctx << ": the state moved";
  Tensor m_full = Tensor::empty({c.numel}, DType::f32);
  Tensor v_full = Tensor::empty({c.numel}, DType::f32);
  opt.gather_state(m_full, v_full);
  res.master = buf.master.to_float_vector();
  res.m = m_full.to_float_vector();
  res.v = v_full.to_float_vector();
  return res;
}

// Every case in both modes against the reference, and the two modes against each other.
void check_against_reference(Communicator& dp) {
  for (const Case& c : kCases) {
    const Reference ref = naive_adamw(c.numel, dp.size(), counted_ranges(c.numel), kSteps);
    RunResult by_mode[2];
    for (bool zero : {true, false}) {
      const std::string ctx = what(c, zero, dp.size());
      // bf16 compute copy with ZeRO, f32 copy without: both refresh paths are exercised.
      const DType compute = zero ? DType::bf16 : DType::f32;
      RunResult r = run_steps(dp, c, zero, compute, true, kSteps);
      for (int t = 0; t < kSteps; ++t)
        EXPECT_NEAR(r.sum_squares[size_t(t)], ref.sum_squares[size_t(t)],
                    1e-12 * std::max(1.0, ref.sum_squares[size_t(t)]))
            << ctx << " step " << t + 1;
      expect_close(r.master, ref.w, kTolerance, ctx + " master");
      expect_close(r.m, ref.m, kTolerance, ctx + " m");
      expect_close(r.v, ref.v, kTolerance, ctx + " v");
      by_mode[zero ? 0 : 1] = std::move(r);
    }
    const std::vector<double> all_reduce(by_mode[1].master.begin(), by_mode[1].master.end());
    expect_close(by_mode[0].master, all_reduce, kTolerance,
                 what(c, true, dp.size(), "vs all-reduce"));
  }
}

// Piece formula of the interface: bucket length L in dp pieces, the first L % dp one longer.
int64_t expected_piece_length(int64_t bucket_length, int dp, int r) {
  return bucket_length / dp + (r < bucket_length % dp ? 1 : 0);
}

// ---- tests -------------------------------------------------------------------------------------

TEST(DistributedOptimizer, PiecesAndState) {
  Communicator& world = mpi_world();
  const int me = world.rank(), dp = world.size();
  for (const Case& c : kCases)
    for (bool zero : {true, false}) {
      const std::string ctx = what(c, zero, dp);
      Buffers buf(c.numel, DType::bf16, false);
      DistributedOptimizer opt(buf.master, buf.grads, Tensor(), world, {zero, c.bucket});
      const int64_t buckets = (c.numel + c.bucket - 1) / c.bucket;
      EXPECT_EQ(opt.num_buckets(), buckets) << ctx;
      EXPECT_EQ(opt.numel(), c.numel) << ctx;
      EXPECT_EQ(opt.zero(), zero) << ctx;
      int64_t mine = 0;
      for (int64_t b = 0; b < std::min(buckets, opt.num_buckets()); ++b) {
        const int64_t start = b * c.bucket, len = std::min(c.numel, start + c.bucket) - start;
        EXPECT_EQ(opt.bucket(b).offset, start) << ctx;
        EXPECT_EQ(opt.bucket(b).length, len) << ctx;
        int64_t at = start;
        for (int r = 0; r < dp; ++r) {
          const int64_t plen = expected_piece_length(len, dp, r);
          EXPECT_EQ(opt.piece(b, r).offset, at) << ctx << " bucket " << b << " piece " << r;
          EXPECT_EQ(opt.piece(b, r).length, plen) << ctx << " bucket " << b << " piece " << r;
          if (r == me) {
            mine += plen;
            EXPECT_EQ(opt.owned_pieces()[size_t(b)].offset, at) << ctx;
          }
          at += plen;
        }
      }
      if (zero) {
        EXPECT_EQ(opt.state_elements(), mine) << ctx;
        // About P/dp: at most one extra element per bucket.
        EXPECT_LE(opt.state_elements(), c.numel / dp + buckets) << ctx;
        EXPECT_EQ(sum_over(world, double(opt.state_elements())), double(c.numel)) << ctx;
        EXPECT_NE(opt.describe().find("ZeRO-1 over world=" + std::to_string(dp)), std::string::npos)
            << opt.describe();
      } else {
        EXPECT_EQ(opt.state_elements(), c.numel) << ctx;
        EXPECT_NE(opt.describe().find("all-reduce over world="), std::string::npos)
            << opt.describe();
      }
      EXPECT_EQ(opt.state_m().numel(), opt.state_elements()) << ctx;
      EXPECT_EQ(opt.state_v().numel(), opt.state_elements()) << ctx;
    }
}

TEST(DistributedOptimizer, MatchesNaiveAdamW) {
  check_against_reference(mpi_world());
}

// dp groups that are not the world: split by rank parity (np3: groups of 2 and 1).
TEST(DistributedOptimizer, MatchesNaiveAdamWInSubgroups) {
  Communicator& world = mpi_world();
  auto dp = world.split(world.rank() % 2, world.rank(), "dp");
  check_against_reference(*dp);
}

// A group of one rank: no communication at all, the full update locally.
TEST(DistributedOptimizer, SingleRankGroup) {
  Communicator& world = mpi_world();
  auto dp = world.split(world.rank(), 0, "dp");
  ASSERT_EQ(dp->size(), 1);
  check_against_reference(*dp);
  Buffers buf(1000, DType::bf16, false);
  DistributedOptimizer opt(buf.master, buf.grads, Tensor(), *dp, {true, 64});
  EXPECT_EQ(opt.state_elements(), 1000);
  EXPECT_NE(opt.describe().find("over dp=1"), std::string::npos) << opt.describe();
}

// Full state gathered, loaded into fresh optimizers under the same and under other layouts, and
// one more step: the same weights as the run that never stopped.
TEST(DistributedOptimizer, StateRoundTrip) {
  Communicator& world = mpi_world();
  const int me = world.rank(), dp = world.size();
  for (const Case& c : kCases) {
    const std::string ctx = what(c, true, dp, "round trip");
    Buffers buf(c.numel, DType::bf16, true);
    DistributedOptimizer opt(buf.master, buf.grads, buf.compute, world, {true, c.bucket});
    for (int t = 1; t <= 2; ++t) {
      fill_grads(buf.grads, me, t);
      opt.reduce_gradients();
      opt.scale_gradients(1.0f / float(dp));
      opt.step(adamw_params(t));
    }
    Tensor m_full = Tensor::empty({c.numel}, DType::f32);
    Tensor v_full = Tensor::empty({c.numel}, DType::f32);
    opt.gather_state(m_full, v_full);
    const std::vector<float> saved_master = buf.master.to_float_vector();

    // Resumed under the same layout, a different bucket size, and without ZeRO.
    const DistributedOptimizerOptions layouts[] = {
        {true, c.bucket}, {true, std::max<int64_t>(1, c.bucket / 3 + 1)}, {false, c.bucket}};
    std::vector<std::vector<float>> resumed;
    for (const DistributedOptimizerOptions& o : layouts) {
      Buffers b2(c.numel, DType::bf16, true);
      b2.master.copy_from(Tensor::from_vector(saved_master, {c.numel}));
      DistributedOptimizer opt2(b2.master, b2.grads, b2.compute, world, o);
      opt2.load_state(m_full, v_full);
      // Round trip of the state itself: exact.
      Tensor m2 = Tensor::empty({c.numel}, DType::f32), v2 = Tensor::empty({c.numel}, DType::f32);
      opt2.gather_state(m2, v2);
      expect_equal(m2.to_float_vector(), m_full.to_float_vector(), ctx + " m gathered again");
      expect_equal(v2.to_float_vector(), v_full.to_float_vector(), ctx + " v gathered again");
      fill_grads(b2.grads, me, 3);
      opt2.reduce_gradients();
      opt2.scale_gradients(1.0f / float(dp));
      opt2.step(adamw_params(3));
      resumed.push_back(b2.master.to_float_vector());
    }
    fill_grads(buf.grads, me, 3);
    opt.reduce_gradients();
    opt.scale_gradients(1.0f / float(dp));
    opt.step(adamw_params(3));
    const std::vector<float> cont = buf.master.to_float_vector();
    expect_equal(resumed[0], cont, ctx + " same layout");
    const std::vector<double> cont_d(cont.begin(), cont.end());
    expect_close(resumed[1], cont_d, kTolerance, ctx + " other buckets");
    expect_close(resumed[2], cont_d, kTolerance, ctx + " without ZeRO");
  }
}

TEST(DistributedOptimizer, Errors) {
  Communicator& world = mpi_world();
  Buffers buf(100, DType::bf16, false);
  auto make = [&](Tensor master, Tensor grads, Tensor compute, int64_t bucket = 16) {
    DistributedOptimizer opt(master, grads, compute, world, {true, bucket});
  };
  test::expect_error([&] { make(buf.master, Tensor::zeros({99}, DType::f32), Tensor()); },
                     {"gradients", "f32[99]", "as many elements as the master weights"});
  test::expect_error([&] { make(buf.master, Tensor::zeros({100}, DType::bf16), Tensor()); },
                     {"gradients must be f32", "bf16[100]"});
  test::expect_error([&] { make(Tensor::zeros({100}, DType::bf16), buf.grads, Tensor()); },
                     {"master weights must be f32"});
  test::expect_error([&] { make(buf.master, buf.grads, Tensor::zeros({100}, DType::f16)); },
                     {"compute copy must be bf16 or f32", "f16[100]"});
  test::expect_error([&] { make(buf.master, buf.grads, Tensor::zeros({101}, DType::bf16)); },
                     {"compute copy", "bf16[101]", "as many elements"});
  test::expect_error(
      [&] {
        make(buf.master, buf.grads, Tensor::zeros({100, 2}, DType::f32).select(1, 0));
      },
      {"compute copy must be contiguous"});
  test::expect_error([&] { make(buf.master, buf.grads, Tensor(), 0); },
                     {"bucket_elements must be >= 1"});

  DistributedOptimizer opt(buf.master, buf.grads, Tensor(), world, {true, 16});
  test::expect_error(
      [&] {
        (void)opt.local_grad_sum_squares({{10, 5}, {12, 3}});
      },
      {"counted range 1", "sorted, disjoint"});
  test::expect_error(
      [&] {
        (void)opt.local_grad_sum_squares({{90, 11}});
      },
      {"counted range 0", "outside the flat buffer"});
  Tensor small = Tensor::zeros({50}, DType::f32), full = Tensor::zeros({100}, DType::f32);
  test::expect_error([&] { opt.gather_state(small, full); },
                     {"gather_state", "m_full", "100 elements"});
  test::expect_error([&] { opt.load_state(full, Tensor::zeros({100}, DType::bf16)); },
                     {"load_state", "v_full", "f32"});
  world.barrier();
}

}  // namespace
}  // namespace origami
