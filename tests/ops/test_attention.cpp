// Attention forward, backward and merge against a naive double-precision reference (full softmax
// per query row), finite differences, and PyTorch float64 autograd (AttentionGolden).
#include <cmath>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

#include "ops/attention.h"
#include "ops/cpu/attention.h"
#include "tests/support/test_support.h"

namespace origami {
namespace {

constexpr double kNegInf = -std::numeric_limits<double>::infinity();

struct Case {
  std::string name;
  int64_t B, Sq, Sk, Hq, Hkv, D;
  bool causal = true;
  int64_t window = -1;
  int64_t q_offset = 0;
  int64_t k_offset = 0;
  float scale = 0.0f;

  ops::AttentionParams params() const {
    ops::AttentionParams p;
    p.scale = scale;
    p.causal = causal;
    p.window = window;
    p.q_offset = q_offset;
    p.k_offset = k_offset;
    return p;
  }
  std::string params_json() const {
    std::ostringstream os;
    os.precision(9);
    os << "{\"causal\": " << (causal ? "true" : "false") << ", \"window\": " << window
       << ", \"q_offset\": " << q_offset << ", \"k_offset\": " << k_offset
       << ", \"scale\": " << scale << "}";
    return os.str();
  }
  Shape q_shape() const { return {B, Sq, Hq, D}; }
  Shape k_shape() const { return {B, Sk, Hkv, D}; }
  Shape lse_shape() const { return {B, Hq, Sq}; }
};

// Head dims 64, 128, 96 and 16; GQA ratios 1, 2, 4; lengths 1, 3, 17, 130 (not multiples of the
// 64-row blocks); Sq != Sk with offsets, rows that see no key, sliding windows, non-causal.
std::vector<Case> reference_cases() {
  return {
      {"gqa2_s17_d64", 2, 17, 17, 4, 2, 64},
      {"mha_s130_d128", 1, 130, 130, 2, 2, 128},
      {"decode_s1_gqa4", 1, 1, 130, 4, 1, 64, true, -1, 129, 0},
      {"tiny_s3_d16", 1, 3, 3, 4, 4, 16},
      {"chunk_q17_k40_offset", 1, 17, 40, 2, 1, 64, true, -1, 23, 0},
      {"k_offset_rows_without_keys", 1, 33, 20, 2, 2, 64, true, -1, 0, 10},
      {"window37_s130_gqa4", 1, 130, 130, 4, 1, 64, true, 37},
      {"window50_offsets", 1, 70, 100, 2, 1, 128, true, 50, 30, 0},
      {"noncausal_d96_scale", 2, 17, 70, 4, 2, 96, false, -1, 0, 0, 0.3f},
  };
}

struct Reference {
  test::HostArray out, lse, dq, dk, dv;
};

// Naive attention in double: for every query row the full softmax over its visible keys, and
// the gradients written out from it (dP = dO V^T, dS = P (dP - sum_j P dP), dQ = scale dS K, ...).
Reference naive_attention(const Case& c, const test::HostArray& q, const test::HostArray& k,
                          const test::HostArray& v, const test::HostArray& dout) {
  Reference r;
  r.out = test::host_array(c.q_shape());
  r.lse = test::host_array(c.lse_shape());
  r.dq = test::host_array(c.q_shape());
  r.dk = test::host_array(c.k_shape());
  r.dv = test::host_array(c.k_shape());
  const double scale = c.scale != 0.0f ? c.scale : 1.0 / std::sqrt(double(c.D));
  const int64_t group = c.Hq / c.Hkv;
  auto qi = [&](int64_t b, int64_t i, int64_t h) { return ((b * c.Sq + i) * c.Hq + h) * c.D; };
  auto ki = [&](int64_t b, int64_t j, int64_t h) { return ((b * c.Sk + j) * c.Hkv + h) * c.D; };
  std::vector<double> s(size_t(c.Sk)), p(size_t(c.Sk)), dp(size_t(c.Sk));
  std::vector<char> vis(size_t(c.Sk));
  for (int64_t b = 0; b < c.B; ++b)
    for (int64_t h = 0; h < c.Hq; ++h)
      for (int64_t i = 0; i < c.Sq; ++i) {
        const int64_t hk = h / group, qpos = c.q_offset + i;
        double mx = kNegInf;
        for (int64_t j = 0; j < c.Sk; ++j) {
          const int64_t kpos = c.k_offset + j, diff = qpos - kpos;
          vis[size_t(j)] =
              (!c.causal || diff >= 0) && (c.window < 0 || (diff >= 0 && diff < c.window));
          double dot = 0;
          for (int64_t d = 0; d < c.D; ++d) dot += q[qi(b, i, h) + d] * k[ki(b, j, hk) + d];
          s[size_t(j)] = scale * dot;
          if (vis[size_t(j)]) mx = std::max(mx, s[size_t(j)]);
        }
        const int64_t li = (b * c.Hq + h) * c.Sq + i;
        if (mx == kNegInf) {  // no visible key: out 0 (already), lse -inf, no gradient
          r.lse[li] = kNegInf;
          continue;
        }
        double sum = 0;
        for (int64_t j = 0; j < c.Sk; ++j) {
          p[size_t(j)] = vis[size_t(j)] ? std::exp(s[size_t(j)] - mx) : 0.0;
          sum += p[size_t(j)];
        }
        r.lse[li] = mx + std::log(sum);
        double pdp = 0;
        for (int64_t j = 0; j < c.Sk; ++j) {
          p[size_t(j)] /= sum;
          double dot = 0;
          for (int64_t d = 0; d < c.D; ++d) {
            r.out[qi(b, i, h) + d] += p[size_t(j)] * v[ki(b, j, hk) + d];
            dot += dout[qi(b, i, h) + d] * v[ki(b, j, hk) + d];
          }
          dp[size_t(j)] = dot;
          pdp += p[size_t(j)] * dot;
        }
        for (int64_t j = 0; j < c.Sk; ++j) {
          const double ds = p[size_t(j)] * (dp[size_t(j)] - pdp);
          for (int64_t d = 0; d < c.D; ++d) {
            r.dq[qi(b, i, h) + d] += scale * ds * k[ki(b, j, hk) + d];
            r.dk[ki(b, j, hk) + d] += scale * ds * q[qi(b, i, h) + d];
            r.dv[ki(b, j, hk) + d] += p[size_t(j)] * dout[qi(b, i, h) + d];
          }
        }
      }
  return r;
}

// lse holds -inf for rows without keys: those must match exactly, the rest within tolerance
// (all_close alone would let an infinite expected value widen its own bound).
::testing::AssertionResult lse_close(const Tensor& actual, const test::HostArray& expected,
                                     test::Tolerance tol) {
  test::HostArray a = test::to_host_array(actual), e = expected;
  if (a.shape != e.shape)
    return ::testing::AssertionFailure()
           << "lse shape " << shape_str(a.shape) << " != " << shape_str(e.shape);
  for (int64_t i = 0; i < e.numel(); ++i) {
    const bool ea = e[i] == kNegInf, aa = a[i] == kNegInf;
    if (ea != aa)
      return ::testing::AssertionFailure()
             << "lse at flat index " << i << " is " << a[i] << ", expected " << e[i];
    if (ea) a[i] = e[i] = 0.0;
  }
  return test::all_close(a, e, tol);
}

struct Inputs {
  Tensor q, k, v, dout;  // on the CPU
};

Inputs make_inputs(const Case& c, DType dtype, uint64_t seed) {
  Inputs in;
  in.q = test::random_tensor(c.q_shape(), dtype, seed);
  in.k = test::random_tensor(c.k_shape(), dtype, seed + 1);
  in.v = test::random_tensor(c.k_shape(), dtype, seed + 2);
  in.dout = test::random_tensor(c.q_shape(), dtype, seed + 3);
  return in;
}

struct Outputs {
  Tensor out, lse, dq, dk, dv;  // on the test device
};

Outputs run_attention(const Case& c, const Inputs& in, DType dtype) {
  Outputs o;
  const Tensor q = test::on_test_device(in.q), k = test::on_test_device(in.k),
               v = test::on_test_device(in.v), dout = test::on_test_device(in.dout);
  o.out = test::empty_on_test_device(c.q_shape(), dtype);
  o.lse = test::empty_on_test_device(c.lse_shape(), DType::f32);
  ops::attention_forward(q, k, v, c.params(), o.out, o.lse);
  o.dq = test::empty_on_test_device(c.q_shape(), dtype);
  o.dk = test::empty_on_test_device(c.k_shape(), dtype);
  o.dv = test::empty_on_test_device(c.k_shape(), dtype);
  ops::attention_backward(q, k, v, o.out, o.lse, dout, c.params(), o.dq, o.dk, o.dv);
  return o;
}

void expect_matches(const Outputs& o, const Reference& r, DType dtype, const std::string& what) {
  SCOPED_TRACE(what);
  const test::Tolerance tol = test::tolerance_for(dtype);
  EXPECT_ALL_CLOSE(o.out, r.out, tol);
  EXPECT_TRUE(lse_close(o.lse, r.lse, test::tolerance_for(DType::f32)));
  EXPECT_ALL_CLOSE(o.dq, r.dq, tol);
  EXPECT_ALL_CLOSE(o.dk, r.dk, tol);
  EXPECT_ALL_CLOSE(o.dv, r.dv, tol);
}

Reference reference_for(const Case& c, const Inputs& in) {
  return naive_attention(c, test::to_host_array(in.q), test::to_host_array(in.k),
                         test::to_host_array(in.v), test::to_host_array(in.dout));
}

TEST(Attention, ForwardBackwardMatchNaiveReference) {
  ORIGAMI_REQUIRE_TEST_DEVICE();
  uint64_t seed = 100;
  for (const Case& c : reference_cases())
    for (DType dtype : test::float_dtypes()) {
      const Inputs in = make_inputs(c, dtype, seed += 10);
      expect_matches(run_attention(c, in, dtype), reference_for(c, in), dtype,
                     c.name + " " + dtype_name(dtype));
    }
}

// The CPU kernels exist once per instruction set (AVX-512, AVX2, baseline); each one this machine
// can run must agree with the reference.
TEST(Attention, EveryCpuInstructionSetMatchesReference) {
  ORIGAMI_REQUIRE_TEST_DEVICE();
  if (!test::test_device().is_cpu()) GTEST_SKIP() << "CPU kernel variants";
  const std::vector<Case> cases = {
      {"gqa2_s130_d64", 1, 130, 130, 4, 2, 64},
      {"window_d96_offsets", 1, 70, 90, 2, 1, 96, true, 40, 20, 0},
      {"noncausal_d16", 1, 17, 30, 2, 2, 16, false},
  };
  uint64_t seed = 300;
  for (const std::string& isa : ops::cpu::attention_isas()) {
    ops::cpu::attention_force_isa(isa.c_str());
    for (const Case& c : cases) {
      const Inputs in = make_inputs(c, DType::f32, seed += 10);
      expect_matches(run_attention(c, in, DType::f32), reference_for(c, in), DType::f32,
                     c.name + " " + isa);
    }
  }
  ops::cpu::attention_force_isa(nullptr);
}

// Finite differences of loss = sum(out * w) with respect to q, k and v; dout = w.
TEST(Attention, GradientsMatchFiniteDifferences) {
  ORIGAMI_REQUIRE_TEST_DEVICE();
  const std::vector<Case> cases = {
      {"gqa2_window_offset", 1, 5, 7, 4, 2, 16, true, 4, 2, 0},
      {"noncausal_gqa2", 2, 3, 6, 2, 1, 16, false},
      {"causal_s17", 1, 17, 17, 2, 2, 16},
  };
  uint64_t seed = 500;
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    Inputs in = make_inputs(c, DType::f32, seed += 10);
    const Outputs g = run_attention(c, in, DType::f32);  // dout = in.dout serves as w
    auto loss = [&]() {
      Tensor out = test::empty_on_test_device(c.q_shape(), DType::f32);
      Tensor lse = test::empty_on_test_device(c.lse_shape(), DType::f32);
      ops::attention_forward(test::on_test_device(in.q), test::on_test_device(in.k),
                             test::on_test_device(in.v), c.params(), out, lse);
      return test::weighted_sum(out, in.dout);
    };
    EXPECT_LT(test::finite_difference_error(loss, in.q, g.dq), test::kFiniteDifferenceTolerance)
        << "dq";
    EXPECT_LT(test::finite_difference_error(loss, in.k, g.dk), test::kFiniteDifferenceTolerance)
        << "dk";
    EXPECT_LT(test::finite_difference_error(loss, in.v, g.dv), test::kFiniteDifferenceTolerance)
        << "dv";
  }
}

// Context parallelism: attention over two halves of the keys, merged by log-sum-exp, equals
// attention over all keys (including rows that see no key of one half, or of either).
TEST(Attention, MergeOfKeyHalvesEqualsFullAttention) {
  ORIGAMI_REQUIRE_TEST_DEVICE();
  const std::vector<Case> cases = {
      {"causal_s130_gqa2", 1, 130, 130, 4, 2, 64},
      {"chunk_offsets_d16", 2, 17, 40, 2, 1, 16, true, -1, 5, 8},
      {"noncausal_d128", 1, 3, 70, 2, 2, 128, false},
      {"window_d64", 1, 70, 70, 2, 2, 64, true, 20},
  };
  uint64_t seed = 700;
  for (const Case& c : cases)
    for (DType dtype : test::float_dtypes()) {
      SCOPED_TRACE(c.name + " " + dtype_name(dtype));
      const Inputs in = make_inputs(c, dtype, seed += 10);
      const Reference r = reference_for(c, in);
      const int64_t half = c.Sk / 2;
      const Tensor q = test::on_test_device(in.q);
      Tensor outs[2], lses[2];
      for (int part = 0; part < 2; ++part) {
        Case pc = c;
        pc.Sk = part == 0 ? half : c.Sk - half;
        pc.k_offset = c.k_offset + (part == 0 ? 0 : half);
        const Tensor k = test::on_test_device(in.k.narrow(1, part * half, pc.Sk).contiguous());
        const Tensor v = test::on_test_device(in.v.narrow(1, part * half, pc.Sk).contiguous());
        outs[part] = test::empty_on_test_device(c.q_shape(), dtype);
        lses[part] = test::empty_on_test_device(c.lse_shape(), DType::f32);
        ops::attention_forward(q, k, v, pc.params(), outs[part], lses[part]);
      }
      ops::attention_merge(outs[0], lses[0], outs[1], lses[1]);
      // bf16 partial outputs are rounded twice (each part, then the merge).
      test::Tolerance tol = test::tolerance_for(dtype);
      EXPECT_ALL_CLOSE(outs[0], r.out, tol);
      EXPECT_TRUE(lse_close(lses[0], r.lse, test::tolerance_for(DType::f32)));
    }
}

// Runs `f`, expects origami::Error whose message contains every piece of `parts`.
template <typename F>
void expect_error(F&& f, const std::vector<std::string>& parts) {
  try {
    f();
    ADD_FAILURE() << "no error thrown; expected one mentioning " << parts.front();
  } catch (const Error& e) {
    const std::string msg = e.what();
    for (const std::string& part : parts)
      EXPECT_NE(msg.find(part), std::string::npos) << "message: " << msg << "\nlacks: " << part;
  }
}

TEST(Attention, BadInputThrowsNamingOpAndShapes) {
  ORIGAMI_REQUIRE_TEST_DEVICE();
  auto t = [](const Shape& s, DType dt = DType::f32) { return test::empty_on_test_device(s, dt); };
  ops::AttentionParams p;
  Tensor q = t({1, 5, 4, 16}), k = t({1, 5, 2, 16}), v = t({1, 5, 2, 16});
  Tensor out = t({1, 5, 4, 16}), lse = t({1, 4, 5});
  {  // query heads not a multiple of kv heads
    Tensor q3 = t({1, 5, 3, 16}), out3 = t({1, 5, 3, 16}), lse3 = t({1, 3, 5});
    expect_error([&] { ops::attention_forward(q3, k, v, p, out3, lse3); },
                 {"attention_forward", "[1,5,3,16]", "[1,5,2,16]"});
  }
  {  // head dims differ
    Tensor k32 = t({1, 5, 2, 32}), v32 = t({1, 5, 2, 32});
    expect_error([&] { ops::attention_forward(q, k32, v32, p, out, lse); },
                 {"attention_forward", "[1,5,4,16]", "[1,5,2,32]"});
  }
  {  // k and v differ
    Tensor v6 = t({1, 6, 2, 16});
    expect_error([&] { ops::attention_forward(q, k, v6, p, out, lse); },
                 {"attention_forward", "[1,5,2,16]", "[1,6,2,16]"});
  }
  {  // lse [B,Sq,Hq] instead of [B,Hq,Sq]
    Tensor bad = t({1, 5, 4});
    expect_error([&] { ops::attention_forward(q, k, v, p, out, bad); },
                 {"attention_forward", "lse", "[1,4,5]", "[1,5,4]"});
  }
  {  // dtype mismatch
    Tensor kb = t({1, 5, 2, 16}, DType::bf16);
    expect_error([&] { ops::attention_forward(q, kb, v, p, out, lse); },
                 {"attention_forward", "f32[1,5,4,16]", "bf16[1,5,2,16]"});
  }
  {  // unsupported dtype
    Tensor qi = t({1, 5, 4, 16}, DType::i32);
    expect_error([&] { ops::attention_forward(qi, k, v, p, out, lse); },
                 {"attention_forward", "i32[1,5,4,16]"});
  }
  {  // bad window
    ops::AttentionParams pw;
    pw.window = 0;
    expect_error([&] { ops::attention_forward(q, k, v, pw, out, lse); },
                 {"attention_forward", "window"});
  }
  {  // backward: dk shaped like q
    Tensor dq = t({1, 5, 4, 16}), dk = t({1, 5, 4, 16}), dv = t({1, 5, 2, 16});
    expect_error([&] { ops::attention_backward(q, k, v, out, lse, out, p, dq, dk, dv); },
                 {"attention_backward", "dk", "[1,5,2,16]", "[1,5,4,16]"});
  }
  {  // merge: lse of the wrong shape, outputs of different dtypes
    Tensor ob = t({1, 5, 4, 16}), lb = t({1, 4, 6});
    expect_error([&] { ops::attention_merge(out, lse, ob, lb); },
                 {"attention_merge", "lse_b", "[1,4,5]", "[1,4,6]"});
    Tensor obf = t({1, 5, 4, 16}, DType::bf16);
    expect_error([&] { ops::attention_merge(out, lse, obf, lse); },
                 {"attention_merge", "f32[1,5,4,16]", "bf16[1,5,4,16]"});
  }
  if (test::test_device().is_cpu() && cuda_available()) {  // tensors on two devices
    Tensor kc = k.to(Device::cuda());
    expect_error([&] { ops::attention_forward(q, kc, v, p, out, lse); },
                 {"attention_forward", "cuda"});
  }
}

TEST(AttentionGolden, MatchesTorchAutograd) {
  ORIGAMI_REQUIRE_TEST_DEVICE();
  std::vector<test::TorchCase> torch_cases;
  std::vector<std::pair<std::string, Outputs>> results;
  std::vector<DType> dtypes;
  uint64_t seed = 900;
  for (const Case& c : reference_cases())
    for (DType dtype : test::float_dtypes()) {
      const Inputs in = make_inputs(c, dtype, seed += 10);
      const std::string name = c.name + "_" + dtype_name(dtype);
      torch_cases.push_back({name,
                             "attention",
                             c.params_json(),
                             {{"q", in.q}, {"k", in.k}, {"v", in.v}, {"dout", in.dout}}});
      results.emplace_back(name, run_attention(c, in, dtype));
      dtypes.push_back(dtype);
    }
  const auto torch = test::run_torch(torch_cases);
  for (size_t i = 0; i < results.size(); ++i) {
    const auto& [name, o] = results[i];
    auto get = [&](const char* key) -> const test::HostArray& {
      static const test::HostArray empty;
      auto it = torch.find(name + "/" + key);
      if (it == torch.end()) {
        ADD_FAILURE() << "no PyTorch output " << name << "/" << key;
        return empty;
      }
      return it->second;
    };
    Reference r{get("out"), get("lse"), get("dq"), get("dk"), get("dv")};
    if (r.out.shape.empty()) continue;
    expect_matches(o, r, dtypes[i], name + " vs torch");
  }
}

}  // namespace
}  // namespace origami
