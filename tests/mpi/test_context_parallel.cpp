// Context-parallel attention against the single-rank run: every rank builds the same whole-sequence
// inputs, runs ops::attention_forward/backward over all S tokens (the reference), and compares
// the CP results of its own tokens with the reference rows at their global positions. Which rows
// a rank holds is worked out here by hand (chunks r and 2*CP-1-r of C tokens), not taken from the
// code under test. Tolerances relative to the largest reference value: fp32 1e-5, bf16 1e-2; the
// two variants agree with each other to 1e-5 in fp32.
//
// The world is cut into CP groups of consecutive ranks: CP1 at every world size, CP2 at 2 ranks,
// CP3 at 3, CP2 (two groups) and CP4 at 4, CP2 (four groups), CP4 (two) and CP8 at 8.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "ops/attention.h"
#include "parallel/context_parallel.h"
#include "tests/mpi/mpi_test.h"

namespace origami {
namespace {

using test::mpi_world;

// CP sizes that divide the world (1: a group of one rank, no communication).
std::vector<int> cp_sizes() {
  std::vector<int> sizes;
  for (int cp : {1, 2, 3, 4, 8})
    if (mpi_world().size() % cp == 0) sizes.push_back(cp);
  return sizes;
}

// Groups of cp consecutive world ranks. Collective over the world.
std::unique_ptr<Communicator> cp_group(int cp) {
  Communicator& w = mpi_world();
  return w.split(w.rank() / cp, w.rank() % cp, "cp");
}

// Global position of local token i of CP rank r (written out independently of the code).
int64_t expected_position(int64_t S, int cp, int r, int64_t i) {
  const int64_t C = S / (2 * cp);
  return i < C ? r * C + i : (2 * cp - 1 - r) * C + (i - C);
}

// Deterministic values in [-1, 1].
std::vector<float> values(int64_t n, int seed) {
  std::vector<float> v(static_cast<size_t>(n));
  uint64_t x = 0x9E3779B97F4A7C15ull * uint64_t(seed + 1);
  for (auto& e : v) {
    x = x * 6364136223846793005ull + 1442695040888963407ull;
    e = float(double(x >> 11) / double(1ull << 53) * 2.0 - 1.0);
  }
  return v;
}

// Rows of `full` [outer, S, inner] at the positions of CP rank r: [outer, S/cp, inner].
std::vector<float> take_local(const std::vector<float>& full, int64_t outer, int64_t S,
                              int64_t inner, int cp, int r) {
  const int64_t Sl = S / cp;
  std::vector<float> out(size_t(outer * Sl * inner));
  for (int64_t o = 0; o < outer; ++o)
    for (int64_t i = 0; i < Sl; ++i) {
      const int64_t g = expected_position(S, cp, r, i);
      for (int64_t e = 0; e < inner; ++e)
        out[size_t((o * Sl + i) * inner + e)] = full[size_t((o * S + g) * inner + e)];
    }
  return out;
}

// max |got - want| / max |want| (want: the reference rows of this rank; scale: the whole tensor).
double rel_error(const std::vector<float>& got, const std::vector<float>& want,
                 const std::vector<float>& whole) {
  double diff = 0.0, scale = 0.0;
  for (float w : whole) scale = std::max(scale, std::fabs(double(w)));
  for (size_t i = 0; i < got.size(); ++i)
    diff = std::max(diff, std::fabs(double(got[i]) - double(want[i])));
  return scale > 0.0 ? diff / scale : diff;
}

struct Dims {
  int64_t B, C, Hq, Hkv, D;
  int64_t window;
  DType dtype;
};

std::string describe(const Dims& d, int cp) {
  return "CP" + std::to_string(cp) + " B=" + std::to_string(d.B) +
         " S=" + std::to_string(2 * cp * d.C) + " Hq=" + std::to_string(d.Hq) +
         " Hkv=" + std::to_string(d.Hkv) + " D=" + std::to_string(d.D) +
         " window=" + std::to_string(d.window) + " " + dtype_name(d.dtype);
}

// The single-rank run over the whole sequence, as float vectors.
struct Reference {
  std::vector<float> q, k, v, dout;  // inputs (rounded to the dtype)
  std::vector<float> out, lse, dq, dk, dv;
};

Reference reference(const Dims& d, int cp) {
  const int64_t S = 2 * cp * d.C;
  const Shape qs = {d.B, S, d.Hq, d.D}, ks = {d.B, S, d.Hkv, d.D};
  const Tensor q = Tensor::from_vector(values(shape_numel(qs), 1), qs, d.dtype);
  const Tensor k = Tensor::from_vector(values(shape_numel(ks), 2), ks, d.dtype);
  const Tensor v = Tensor::from_vector(values(shape_numel(ks), 3), ks, d.dtype);
  const Tensor dout = Tensor::from_vector(values(shape_numel(qs), 4), qs, d.dtype);
  Tensor out = Tensor::empty(qs, d.dtype), lse = Tensor::empty({d.B, d.Hq, S}, DType::f32);
  Tensor dq = Tensor::empty(qs, d.dtype), dk = Tensor::empty(ks, d.dtype);
  Tensor dv = Tensor::empty(ks, d.dtype);
  ops::AttentionParams p;
  p.causal = true;
  p.window = d.window;
  ops::attention_forward(q, k, v, p, out, lse);
  ops::attention_backward(q, k, v, out, lse, dout, p, dq, dk, dv);
  return {q.to_float_vector(),    k.to_float_vector(),   v.to_float_vector(),
          dout.to_float_vector(), out.to_float_vector(), lse.to_float_vector(),
          dq.to_float_vector(),   dk.to_float_vector(),  dv.to_float_vector()};
}

// What one CP run of forward + backward gives for this rank's tokens.
struct Local {
  std::vector<float> out, lse, dq, dk, dv;
};

Local run_cp(CpAttention& att, const Reference& ref, const Dims& d, int cp, int r) {
  const int64_t S = 2 * cp * d.C, Sl = 2 * d.C;
  const Shape qs = {d.B, Sl, d.Hq, d.D}, ks = {d.B, Sl, d.Hkv, d.D};
  const auto local = [&](const std::vector<float>& full, const Shape& shape, int64_t inner) {
    return Tensor::from_vector(take_local(full, d.B, S, inner, cp, r), shape, d.dtype);
  };
  const Tensor q = local(ref.q, qs, d.Hq * d.D), k = local(ref.k, ks, d.Hkv * d.D);
  const Tensor v = local(ref.v, ks, d.Hkv * d.D), dout = local(ref.dout, qs, d.Hq * d.D);
  Tensor out = Tensor::empty(qs, d.dtype), lse = Tensor::empty({d.B, d.Hq, Sl}, DType::f32);
  Tensor dq = Tensor::empty(qs, d.dtype), dk = Tensor::empty(ks, d.dtype);
  Tensor dv = Tensor::empty(ks, d.dtype);
  att.forward(q, k, v, out, lse);
  att.backward(q, k, v, out, lse, dout, dq, dk, dv);
  return {out.to_float_vector(), lse.to_float_vector(), dq.to_float_vector(), dk.to_float_vector(),
          dv.to_float_vector()};
}

// Errors of out, lse, dq, dk, dv against the reference rows of this rank.
std::vector<double> errors(const Local& got, const Reference& ref, const Dims& d, int cp, int r) {
  const int64_t S = 2 * cp * d.C;
  return {rel_error(got.out, take_local(ref.out, d.B, S, d.Hq * d.D, cp, r), ref.out),
          rel_error(got.lse, take_local(ref.lse, d.B * d.Hq, S, 1, cp, r), ref.lse),
          rel_error(got.dq, take_local(ref.dq, d.B, S, d.Hq * d.D, cp, r), ref.dq),
          rel_error(got.dk, take_local(ref.dk, d.B, S, d.Hkv * d.D, cp, r), ref.dk),
          rel_error(got.dv, take_local(ref.dv, d.B, S, d.Hkv * d.D, cp, r), ref.dv)};
}

// The largest of each value over the world (for the printed report).
std::vector<double> world_max(const std::vector<double>& x) {
  std::vector<float> f(x.begin(), x.end());
  Tensor t = Tensor::from_vector(f, {int64_t(f.size())});
  mpi_world().all_reduce(t, ReduceOp::max);
  const std::vector<float> m = t.to_float_vector();
  return {m.begin(), m.end()};
}

const char* const kNames[] = {"out", "lse", "dq", "dk", "dv"};

// The CPU kernels' OpenMP teams meet at spinning barriers: with several ranks per core those spins
// cost whole time slices (50 s instead of 1 s at 4 ranks on 2 cores). These cases are small, so
// each rank runs its kernels on one thread.
class ContextParallel : public ::testing::Test {
 protected:
  void SetUp() override {
    saved_threads_ = omp_get_max_threads();
    omp_set_num_threads(1);
  }
  void TearDown() override { omp_set_num_threads(saved_threads_); }

 private:
  int saved_threads_ = 1;
};

// Runs both variants on one case and checks them against the reference and each other.
void check_case(const Dims& d, int cp, double tol) {
  auto group = cp_group(cp);
  const int r = group->rank();
  const Reference ref = reference(d, cp);
  Local got[2];
  std::vector<double> report;
  for (CpVariant var : {CpVariant::all_gather, CpVariant::ring}) {
    CpAttention att(*group, var, d.B, 2 * d.C, d.Hq, d.Hkv, d.D, d.dtype, d.window);
    const Local l = run_cp(att, ref, d, cp, r);
    const std::vector<double> e = errors(l, ref, d, cp, r);
    for (size_t i = 0; i < e.size(); ++i)
      EXPECT_LE(e[i], tol) << describe(d, cp) << " " << cp_variant_name(var) << " " << kNames[i]
                           << " rank " << r;
    report.insert(report.end(), e.begin(), e.end());
    got[var == CpVariant::ring] = l;
  }
  // The variants against each other (fp32: both are sums of the same terms in other orders).
  const std::vector<std::vector<float>*> pairs[2] = {
      {&got[0].out, &got[0].lse, &got[0].dq, &got[0].dk, &got[0].dv},
      {&got[1].out, &got[1].lse, &got[1].dq, &got[1].dk, &got[1].dv}};
  for (size_t i = 0; i < pairs[0].size(); ++i) {
    const double e = rel_error(*pairs[1][i], *pairs[0][i], *pairs[0][i]);
    EXPECT_LE(e, tol) << describe(d, cp) << " ring vs all-gather " << kNames[i];
    report.push_back(e);
  }
  const std::vector<double> m = world_max(report);
  if (mpi_world().rank() == 0) {
    std::printf("  %s\n", describe(d, cp).c_str());
    const char* rows[] = {"all-gather", "ring", "ring vs all-gather"};
    for (int row = 0; row < 3; ++row) {
      std::printf("    %-19s", rows[row]);
      for (int i = 0; i < 5; ++i) std::printf(" %s %.1e", kNames[i], m[size_t(row * 5 + i)]);
      std::printf("\n");
    }
  }
}

TEST_F(ContextParallel, ZigzagPositionsSplitGather) {
  for (int cp : cp_sizes()) {
    auto group = cp_group(cp);
    const int r = group->rank();
    const int64_t S = 2 * cp * 3, B = 2, H = 3;
    std::vector<int64_t> want;
    for (int64_t i = 0; i < S / cp; ++i) want.push_back(expected_position(S, cp, r, i));
    EXPECT_EQ(zigzag_positions(S, cp, r), want) << "CP" << cp << " rank " << r;
    // Every position once over the group.
    std::vector<int64_t> all;
    for (int q = 0; q < cp; ++q)
      for (int64_t p : zigzag_positions(S, cp, q)) all.push_back(p);
    std::sort(all.begin(), all.end());
    for (int64_t i = 0; i < S; ++i) EXPECT_EQ(all[size_t(i)], i);

    // Split along dim 1 of [B,S,H] and along the last dim of [B,H,S]; gather back.
    const std::vector<float> full = values(B * S * H, 7);
    const Tensor t = Tensor::from_vector(full, {B, S, H});
    Tensor local = Tensor::empty({B, S / cp, H}, DType::f32);
    zigzag_split(t, cp, r, local, 1);
    EXPECT_EQ(local.to_float_vector(), take_local(full, B, S, H, cp, r));
    Tensor back = Tensor::zeros({B, S, H}, DType::f32);
    zigzag_gather(*group, local, back, 1);
    EXPECT_EQ(back.to_float_vector(), full);

    const Tensor tt = Tensor::from_vector(full, {B, H, S});
    Tensor lt = Tensor::empty({B, H, S / cp}, DType::f32);
    zigzag_split(tt, cp, r, lt, -1);
    EXPECT_EQ(lt.to_float_vector(), take_local(full, B * H, S, 1, cp, r));
    Tensor bt = Tensor::zeros({B, H, S}, DType::f32);
    zigzag_gather(*group, lt, bt, 2);
    EXPECT_EQ(bt.to_float_vector(), full);
  }
}

TEST_F(ContextParallel, MatchesSingleRankF32) {
  if (mpi_world().rank() == 0) std::printf("  largest errors (relative to the largest value):\n");
  for (int cp : cp_sizes()) {
    // GQA with odd head counts; chunks of 8 tokens, and of 5 (no power of two anywhere).
    check_case({2, 8, 6, 2, 16, -1, DType::f32}, cp, 1e-5);
    check_case({1, 5, 3, 3, 8, -1, DType::f32}, cp, 1e-5);
  }
}

TEST_F(ContextParallel, SlidingWindowF32) {
  for (int cp : cp_sizes()) {
    // Windows inside one chunk, across one chunk boundary and across several.
    check_case({2, 8, 6, 2, 16, 5, DType::f32}, cp, 1e-5);
    check_case({1, 8, 4, 2, 8, 13, DType::f32}, cp, 1e-5);
    check_case({1, 4, 2, 1, 8, 11, DType::f32}, cp, 1e-5);
  }
}

TEST_F(ContextParallel, MatchesSingleRankBf16) {
  for (int cp : cp_sizes()) check_case({2, 8, 6, 2, 16, -1, DType::bf16}, cp, 1e-2);
}

// A CpAttention built for the largest shapes takes smaller batches and sequences.
TEST_F(ContextParallel, SmallerCallsReuseBuffers) {
  for (int cp : cp_sizes()) {
    auto group = cp_group(cp);
    const int r = group->rank();
    for (CpVariant var : {CpVariant::all_gather, CpVariant::ring}) {
      CpAttention att(*group, var, 2, 16, 4, 2, 8, DType::f32, -1);
      for (const Dims d : {Dims{2, 8, 4, 2, 8, -1, DType::f32}, Dims{1, 3, 4, 2, 8, -1, DType::f32},
                           Dims{2, 6, 4, 2, 8, -1, DType::f32}}) {
        const Reference ref = reference(d, cp);
        const std::vector<double> e = errors(run_cp(att, ref, d, cp, r), ref, d, cp, r);
        for (size_t i = 0; i < e.size(); ++i)
          EXPECT_LE(e[i], 1e-5) << describe(d, cp) << " " << cp_variant_name(var) << " "
                                << kNames[i];
      }
    }
  }
}

TEST_F(ContextParallel, InvalidSequenceLength) {
  for (int cp : cp_sizes()) {
    auto group = cp_group(cp);
    const std::string s = "S=" + std::to_string(3 * cp), two = "2*CP=" + std::to_string(2 * cp);
    // S_local = 3: S = 3*CP is not a multiple of 2*CP. Checked before any communication.
    test::expect_error([&] { CpAttention att(*group, CpVariant::ring, 1, 3, 2, 1, 8, DType::f32); },
                       {s, two});
    test::expect_error([&] { zigzag_positions(3 * cp, cp, 0); }, {s, two});
    test::expect_error(
        [&] {
          Tensor full = Tensor::zeros({1, 3 * cp, 2}, DType::f32);
          Tensor local = Tensor::zeros({1, 3, 2}, DType::f32);
          zigzag_split(full, cp, group->rank(), local);
        },
        {s, two});
    // A call with a sequence longer than the buffers were built for.
    CpAttention att(*group, CpVariant::all_gather, 1, 4, 2, 1, 8, DType::f32);
    const Tensor q = Tensor::zeros({1, 6, 2, 8}, DType::f32);
    const Tensor k = Tensor::zeros({1, 6, 1, 8}, DType::f32);
    Tensor out = Tensor::zeros({1, 6, 2, 8}, DType::f32);
    Tensor lse = Tensor::zeros({1, 2, 6}, DType::f32);
    test::expect_error([&] { att.forward(q, k, k, out, lse); }, {"S_local<=4"});
  }
}

}  // namespace
}  // namespace origami
