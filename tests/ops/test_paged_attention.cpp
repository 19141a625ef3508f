// Paged attention against a naive double-precision reference (keys gathered through the block
// table, explicit causal and window mask, full softmax per query row), against contiguous
// ops::attention_forward, and against PyTorch (PagedAttentionGolden); the KV-cache write and
// block copy against naive copies; bad arguments.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "ops/attention.h"
#include "ops/cpu/attention.h"
#include "ops/paged_attention.h"
#include "tests/support/test_support.h"

namespace origami {
namespace {

struct Seq {
  int64_t q_len;  // query rows (1: a decode token)
  int64_t ctx;    // keys, the new tokens included
};

struct PagedCase {
  std::string name;
  int64_t Hq, Hkv, D, block_size;
  std::vector<Seq> seqs;
  int64_t window = -1;
  int64_t spare_rows = 0;    // rows of q past the last sequence: their output must be zero
  int64_t spare_blocks = 3;  // cache blocks no sequence uses (random values, never read)
  float scale = 0.0f;

  int64_t rows() const {
    int64_t t = spare_rows;
    for (const Seq& s : seqs) t += s.q_len;
    return t;
  }
  int64_t blocks_of(const Seq& s) const { return (s.ctx + block_size - 1) / block_size; }
  int64_t max_blocks() const {
    int64_t m = 1;
    for (const Seq& s : seqs) m = std::max(m, blocks_of(s) + 1);  // one spare column
    return m;
  }
  ops::PagedAttentionParams params() const {
    ops::PagedAttentionParams p;
    p.scale = scale;
    p.window = window;
    return p;
  }
  std::string params_json() const {
    std::ostringstream os;
    os.precision(9);
    os << "{\"window\": " << window << ", \"scale\": " << scale << "}";
    return os.str();
  }
};

// Inputs on the CPU. The blocks of all sequences are a random permutation of the cache's blocks;
// block-table entries that are never read (past a context, or wholly before the window of a
// sequence's first query row) are -1, so a kernel that reads one fails or reads garbage.
struct PagedInputs {
  Tensor q, k_cache, v_cache, query_start, context_len, block_table;
};

PagedInputs make_paged_inputs(const PagedCase& c, DType dtype, uint64_t seed) {
  const int64_t N = int64_t(c.seqs.size()), T = c.rows(), MB = c.max_blocks();
  int64_t used = 0;
  for (const Seq& s : c.seqs) used += c.blocks_of(s);
  const int64_t num_blocks = used + c.spare_blocks;
  std::vector<int32_t> ids(static_cast<size_t>(num_blocks));
  std::iota(ids.begin(), ids.end(), 0);
  std::mt19937_64 rng(seed);
  std::shuffle(ids.begin(), ids.end(), rng);

  PagedInputs in;
  in.q = test::random_tensor({T, c.Hq, c.D}, dtype, seed + 1);
  in.k_cache = test::random_tensor({num_blocks, c.block_size, c.Hkv, c.D}, dtype, seed + 2);
  in.v_cache = test::random_tensor({num_blocks, c.block_size, c.Hkv, c.D}, dtype, seed + 3);
  std::vector<int64_t> qs(static_cast<size_t>(N + 1), 0), cl(static_cast<size_t>(N));
  std::vector<float> bt(static_cast<size_t>(N * MB), -1.0f);
  size_t next = 0;
  for (int64_t i = 0; i < N; ++i) {
    const Seq& s = c.seqs[size_t(i)];
    qs[size_t(i + 1)] = qs[size_t(i)] + s.q_len;
    cl[size_t(i)] = s.ctx;
    const int64_t first_key =
        c.window > 0 ? std::max<int64_t>(0, s.ctx - s.q_len - c.window + 1) : 0;
    for (int64_t b = 0; b < c.blocks_of(s); ++b) {
      const int32_t id = ids[next++];
      if ((b + 1) * c.block_size > first_key) bt[size_t(i * MB + b)] = float(id);
    }
  }
  in.query_start = Tensor::from_vector_i64(qs, {N + 1});
  in.context_len = Tensor::from_vector_i64(cl, {N});
  in.block_table = Tensor::from_vector(bt, {N, MB}, DType::i32);
  return in;
}

// Naive paged attention in double: for every sequence, query row and head, the keys gathered
// one by one through the block table, masked explicitly, and a full softmax.
test::HostArray naive_paged_attention(const PagedCase& c, const PagedInputs& in) {
  const test::HostArray q = test::to_host_array(in.q), kc = test::to_host_array(in.k_cache),
                        vc = test::to_host_array(in.v_cache);
  test::HostArray out = test::host_array({c.rows(), c.Hq, c.D});
  const double scale = c.scale != 0.0f ? c.scale : 1.0 / std::sqrt(double(c.D));
  const int64_t group = c.Hq / c.Hkv, MB = c.max_blocks();
  std::vector<double> s, acc(static_cast<size_t>(c.D));
  int64_t row0 = 0;
  for (size_t i = 0; i < c.seqs.size(); ++i) {
    const Seq& sq = c.seqs[i];
    auto cache_index = [&](int64_t pos, int64_t hk) {
      const int64_t blk = int64_t(in.block_table.item_at(int64_t(i) * MB + pos / c.block_size));
      EXPECT_GE(blk, 0) << "the reference reads a block the table marks unused";
      return ((blk * c.block_size + pos % c.block_size) * c.Hkv + hk) * c.D;
    };
    for (int64_t r = 0; r < sq.q_len; ++r)
      for (int64_t h = 0; h < c.Hq; ++h) {
        const int64_t qpos = sq.ctx - sq.q_len + r, hk = h / group;
        const int64_t qi = ((row0 + r) * c.Hq + h) * c.D;
        s.assign(static_cast<size_t>(sq.ctx), -INFINITY);
        double mx = -INFINITY;
        for (int64_t p = 0; p < sq.ctx; ++p) {
          const int64_t diff = qpos - p;
          if (diff < 0 || (c.window > 0 && diff >= c.window)) continue;
          const int64_t ki = cache_index(p, hk);
          double dot = 0;
          for (int64_t d = 0; d < c.D; ++d) dot += q[qi + d] * kc[ki + d];
          s[size_t(p)] = scale * dot;
          mx = std::max(mx, s[size_t(p)]);
        }
        double sum = 0;
        std::fill(acc.begin(), acc.end(), 0.0);
        for (int64_t p = 0; p < sq.ctx; ++p) {
          if (s[size_t(p)] == -INFINITY) continue;
          const double w = std::exp(s[size_t(p)] - mx);
          sum += w;
          const int64_t vi = cache_index(p, hk);
          for (int64_t d = 0; d < c.D; ++d) acc[size_t(d)] += w * vc[vi + d];
        }
        for (int64_t d = 0; d < c.D; ++d) out[qi + d] = acc[size_t(d)] / sum;
      }
    row0 += sq.q_len;
  }
  return out;  // rows past the last sequence stay zero
}

// On the test device, or on the CPU with on_cpu (for CPU kernel options and variants).
Tensor run_paged(const PagedCase& c, const PagedInputs& in, DType dtype, bool on_cpu = false) {
  auto dev = [on_cpu](const Tensor& t) { return on_cpu ? t : test::on_test_device(t); };
  Tensor out = on_cpu ? Tensor::empty({c.rows(), c.Hq, c.D}, dtype)
                      : test::empty_on_test_device({c.rows(), c.Hq, c.D}, dtype);
  ops::paged_attention_forward(dev(in.q), dev(in.k_cache), dev(in.v_cache), dev(in.query_start),
                               dev(in.context_len), dev(in.block_table), c.params(), out);
  return out;
}

// Block sizes 1, 16 and 32; GQA ratios 1, 2, 4 and 8; head dims 16, 20, 64, 80 and 128; batches
// that mix decode tokens (q_len 1), whole prompts (q_len = ctx) and chunks (q_len < ctx); windows
// smaller than a block, spanning blocks, of 1, and larger than every context; empty sequences, an
// empty batch and rows no sequence owns.
std::vector<PagedCase> reference_cases() {
  return {
      {"mixed_bs16_gqa4", 8, 2, 64, 16, {{1, 1}, {1, 37}, {17, 17}, {5, 100}, {1, 300}}, -1, 3},
      {"bs1_mha_d80", 4, 4, 80, 1, {{3, 3}, {1, 20}, {7, 50}, {0, 9}, {2, 2}}, -1, 2},
      {"bs32_gqa8_d128", 8, 1, 128, 32, {{1, 33}, {40, 70}, {1, 65}, {64, 64}}, -1, 1},
      {"prefill_chunk_bs16_d16", 4, 2, 16, 16, {{150, 200}, {1, 1}}, -1, 0},
      {"window5_bs16_gqa4", 8, 2, 64, 16, {{1, 100}, {20, 60}, {1, 3}, {9, 9}}, 5, 1},
      {"window40_bs16_mha", 2, 2, 64, 16, {{1, 129}, {70, 130}, {1, 40}}, 40},
      {"window1_bs32_gqa8", 8, 1, 64, 32, {{1, 77}, {12, 50}}, 1},
      {"window_beyond_context_bs1", 4, 1, 64, 1, {{1, 30}, {6, 6}}, 1000, 1},
      {"window100_long_chunk_bs32", 4, 1, 64, 32, {{300, 420}, {1, 260}}, 100},
      {"scale_bs16_gqa4", 4, 1, 64, 16, {{3, 20}, {1, 17}}, -1, 0, 3, 0.3f},
      {"odd_d20_bs16_gqa2", 4, 2, 20, 16, {{1, 40}, {12, 30}}, -1, 1},
      {"empty_batch", 4, 2, 16, 16, {}, -1, 3},
  };
}

// Every case in f32 and bf16 against the naive reference.
void expect_match_reference(const std::vector<PagedCase>& cases, uint64_t seed,
                            const std::string& what = "", bool on_cpu = false) {
  for (const PagedCase& c : cases)
    for (DType dtype : test::float_dtypes()) {
      SCOPED_TRACE(c.name + " " + dtype_name(dtype) + what);
      const PagedInputs in = make_paged_inputs(c, dtype, seed += 10);
      EXPECT_ALL_CLOSE(run_paged(c, in, dtype, on_cpu), naive_paged_attention(c, in),
                       test::tolerance_for(dtype));
    }
}

TEST(PagedAttention, MatchesNaiveReference) {
  ORIGAMI_REQUIRE_TEST_DEVICE();
  expect_match_reference(reference_cases(), 1000);
}

// One long context (>= 4000 keys): a decode token alone (the key range is split over threads and
// merged) and next to a chunk of a prompt.
TEST(PagedAttention, LongContextMatchesNaiveReference) {
  ORIGAMI_REQUIRE_TEST_DEVICE();
  const std::vector<PagedCase> cases = {
      {"decode_4100_gqa8_d128", 8, 1, 128, 32, {{1, 4100}}, -1, 2},
      {"mixed_4096_gqa4_d64", 8, 2, 64, 16, {{1, 4096}, {24, 4001}, {1, 5}}, -1, 1},
  };
  expect_match_reference(cases, 2000);
}

// The CPU kernels exist once per instruction set (as those of ops/attention.h, whose choice they
// follow); each one this machine can run must agree with the reference.
// (On the CPU whatever the test device.)
TEST(PagedAttention, EveryCpuInstructionSetMatchesReference) {
  const std::vector<PagedCase> cases = {
      {"mixed_bs16_gqa4_d64", 8, 2, 64, 16, {{1, 300}, {70, 90}, {1, 1}}, -1, 1},
      {"window_bs1_mha_d72", 2, 2, 72, 1, {{1, 50}, {9, 30}}, 7, 1},
      {"odd_d20_bs16_gqa4", 8, 2, 20, 16, {{1, 40}, {12, 30}}, -1, 1},
      {"decode_bs32_gqa8_d128", 8, 1, 128, 32, {{1, 2000}}, -1, 1},
  };
  uint64_t seed = 3000;
  for (const std::string& isa : ops::cpu::attention_isas()) {
    ops::cpu::attention_force_isa(isa.c_str());
    expect_match_reference(cases, seed += 100, " " + isa, /*on_cpu=*/true);
  }
  ops::cpu::attention_force_isa(nullptr);
}

// Every sequence of a batch equals contiguous attention over its own keys (gathered through the
// block table) with its query rows at offset ctx - q_len.
TEST(PagedAttention, EqualsContiguousAttention) {
  ORIGAMI_REQUIRE_TEST_DEVICE();
  const std::vector<PagedCase> cases = {
      {"mixed_bs16_gqa4", 8, 2, 64, 16, {{1, 200}, {30, 130}, {65, 65}}, -1, 2},
      {"window24_bs1_mha", 4, 4, 64, 1, {{1, 90}, {40, 100}}, 24, 0},
  };
  uint64_t seed = 4000;
  for (const PagedCase& c : cases)
    for (DType dtype : test::float_dtypes()) {
      SCOPED_TRACE(c.name + " " + dtype_name(dtype));
      const PagedInputs in = make_paged_inputs(c, dtype, seed += 10);
      const Tensor paged = run_paged(c, in, dtype).to(Device::cpu());
      const int64_t MB = c.max_blocks(), row_bytes = c.Hkv * c.D * int64_t(dtype_size(dtype));
      int64_t row0 = 0;
      for (size_t i = 0; i < c.seqs.size(); ++i) {
        const Seq& s = c.seqs[i];
        // Keys before the window are -1 in the table: those rows are left zero (never seen).
        Tensor k = Tensor::zeros({1, s.ctx, c.Hkv, c.D}, dtype);
        Tensor v = Tensor::zeros({1, s.ctx, c.Hkv, c.D}, dtype);
        for (int64_t p = 0; p < s.ctx; ++p) {
          const int64_t blk = int64_t(in.block_table.item_at(int64_t(i) * MB + p / c.block_size));
          if (blk < 0) continue;
          const int64_t slot = blk * c.block_size + p % c.block_size;
          std::memcpy(static_cast<char*>(k.data()) + p * row_bytes,
                      static_cast<const char*>(in.k_cache.data()) + slot * row_bytes,
                      size_t(row_bytes));
          std::memcpy(static_cast<char*>(v.data()) + p * row_bytes,
                      static_cast<const char*>(in.v_cache.data()) + slot * row_bytes,
                      size_t(row_bytes));
        }
        const Tensor q = in.q.narrow(0, row0, s.q_len).contiguous().view({1, s.q_len, c.Hq, c.D});
        ops::AttentionParams ap;
        ap.window = c.window;
        ap.q_offset = s.ctx - s.q_len;
        Tensor out = test::empty_on_test_device({1, s.q_len, c.Hq, c.D}, dtype);
        Tensor lse = test::empty_on_test_device({1, c.Hq, s.q_len}, DType::f32);
        ops::attention_forward(test::on_test_device(q), test::on_test_device(k),
                               test::on_test_device(v), ap, out, lse);
        const Tensor mine =
            paged.narrow(0, row0, s.q_len).contiguous().view({1, s.q_len, c.Hq, c.D});
        EXPECT_ALL_CLOSE(mine, test::to_host_array(out), test::tolerance_for(dtype))
            << "sequence " << i;
        row0 += s.q_len;
      }
    }
}

TEST(PagedKvWrite, MatchesNaiveCopy) {
  ORIGAMI_REQUIRE_TEST_DEVICE();
  uint64_t seed = 5000;
  for (DType dtype : test::float_dtypes()) {
    const int64_t num_blocks = 7, bs = 16, Hkv = 2, D = 64, T = 40;
    const Tensor k = test::random_tensor({T, Hkv, D}, dtype, seed += 10);
    const Tensor v = test::random_tensor({T, Hkv, D}, dtype, seed += 10);
    const Tensor kc0 = test::random_tensor({num_blocks, bs, Hkv, D}, dtype, seed += 10);
    const Tensor vc0 = test::random_tensor({num_blocks, bs, Hkv, D}, dtype, seed += 10);
    // Distinct random slots; every fifth row skipped (-1).
    std::vector<int64_t> slots(static_cast<size_t>(num_blocks * bs));
    std::iota(slots.begin(), slots.end(), 0);
    std::mt19937_64 rng(seed);
    std::shuffle(slots.begin(), slots.end(), rng);
    slots.resize(size_t(T));
    for (int64_t t = 0; t < T; t += 5) slots[size_t(t)] = -1;
    const Tensor slot_mapping = Tensor::from_vector_i64(slots, {T});

    test::HostArray ek = test::to_host_array(kc0), ev = test::to_host_array(vc0);
    const test::HostArray hk = test::to_host_array(k), hv = test::to_host_array(v);
    for (int64_t t = 0; t < T; ++t) {
      if (slots[size_t(t)] < 0) continue;
      for (int64_t e = 0; e < Hkv * D; ++e) {
        ek[slots[size_t(t)] * Hkv * D + e] = hk[t * Hkv * D + e];
        ev[slots[size_t(t)] * Hkv * D + e] = hv[t * Hkv * D + e];
      }
    }
    Tensor kc = test::on_test_device(kc0), vc = test::on_test_device(vc0);
    ops::paged_kv_write(test::on_test_device(k), test::on_test_device(v),
                        test::on_test_device(slot_mapping), kc, vc);
    EXPECT_ALL_CLOSE(kc, ek, test::Tolerance{0.0, 0.0});
    EXPECT_ALL_CLOSE(vc, ev, test::Tolerance{0.0, 0.0});
  }
}

TEST(PagedKvCopyBlocks, MatchesNaiveCopy) {
  ORIGAMI_REQUIRE_TEST_DEVICE();
  uint64_t seed = 6000;
  for (DType dtype : test::float_dtypes()) {
    const int64_t num_blocks = 9, bs = 16, Hkv = 2, D = 32;
    const Tensor kc0 = test::random_tensor({num_blocks, bs, Hkv, D}, dtype, seed += 10);
    const Tensor vc0 = test::random_tensor({num_blocks, bs, Hkv, D}, dtype, seed += 10);
    // Block 2 is copied twice (shared prefix forked into two sequences).
    const std::vector<std::pair<int, int>> pairs = {{2, 5}, {0, 8}, {2, 1}};
    std::vector<float> flat;
    for (auto [s, d] : pairs) {
      flat.push_back(float(s));
      flat.push_back(float(d));
    }
    const Tensor pt = Tensor::from_vector(flat, {int64_t(pairs.size()), 2}, DType::i32);
    test::HostArray ek = test::to_host_array(kc0), ev = test::to_host_array(vc0);
    const int64_t block = bs * Hkv * D;
    for (auto [s, d] : pairs)
      for (int64_t e = 0; e < block; ++e) {
        ek[d * block + e] = ek[s * block + e];
        ev[d * block + e] = ev[s * block + e];
      }
    Tensor kc = test::on_test_device(kc0), vc = test::on_test_device(vc0);
    ops::paged_kv_copy_blocks(kc, vc, test::on_test_device(pt));
    EXPECT_ALL_CLOSE(kc, ek, test::Tolerance{0.0, 0.0});
    EXPECT_ALL_CLOSE(vc, ev, test::Tolerance{0.0, 0.0});
  }
}

TEST(PagedAttention, BadInputThrowsNamingArgumentAndShapes) {
  ORIGAMI_REQUIRE_TEST_DEVICE();
  const char* op = "paged_attention_forward";
  auto t = [](const Shape& s, DType dt = DType::f32) { return test::empty_on_test_device(s, dt); };
  auto i64 = [](const std::vector<int64_t>& v) {
    return test::on_test_device(Tensor::from_vector_i64(v, {int64_t(v.size())}));
  };
  auto bt = [](const std::vector<float>& v, int64_t n, int64_t mb) {
    return test::on_test_device(Tensor::from_vector(v, {n, mb}, DType::i32));
  };
  ops::PagedAttentionParams p;
  // Two sequences: a decode token at position 4 and a chunk of 3 rows at positions 17..19.
  Tensor q = t({4, 4, 16}), kc = t({6, 8, 2, 16}), vc = t({6, 8, 2, 16}), out = t({4, 4, 16});
  Tensor qs = i64({0, 1, 4}), cl = i64({5, 20}), table = bt({0, -1, -1, 1, 2, 3}, 2, 3);
  ops::paged_attention_forward(q, kc, vc, qs, cl, table, p, out);  // valid
  {  // query heads not a multiple of kv heads
    Tensor q3 = t({4, 3, 16}), out3 = t({4, 3, 16});
    test::expect_error([&] { ops::paged_attention_forward(q3, kc, vc, qs, cl, table, p, out3); },
                       {op, "[4,3,16]", "[6,8,2,16]"});
  }
  {  // head dims differ
    Tensor k32 = t({6, 8, 2, 32}), v32 = t({6, 8, 2, 32});
    test::expect_error([&] { ops::paged_attention_forward(q, k32, v32, qs, cl, table, p, out); },
                       {op, "[4,4,16]", "[6,8,2,32]"});
  }
  {  // caches differ
    Tensor v7 = t({7, 8, 2, 16});
    test::expect_error([&] { ops::paged_attention_forward(q, kc, v7, qs, cl, table, p, out); },
                       {op, "v_cache", "[6,8,2,16]", "[7,8,2,16]"});
  }
  {  // dtypes
    Tensor kb = t({6, 8, 2, 16}, DType::bf16), vb = t({6, 8, 2, 16}, DType::bf16);
    test::expect_error([&] { ops::paged_attention_forward(q, kb, vb, qs, cl, table, p, out); },
                       {op, "f32[4,4,16]", "bf16[6,8,2,16]"});
    Tensor qi = t({4, 4, 16}, DType::i32);
    test::expect_error([&] { ops::paged_attention_forward(qi, kc, vc, qs, cl, table, p, out); },
                       {op, "q", "i32[4,4,16]"});
  }
  {  // metadata shapes and dtypes
    test::expect_error(
        [&] {
          ops::paged_attention_forward(q, kc, vc, i64({0, 4}), cl, table, p, out);
        },
        {op, "query_start", "[3]", "[2]"});
    Tensor cl32 = test::on_test_device(Tensor::from_vector({5, 20}, {2}, DType::i32));
    test::expect_error([&] { ops::paged_attention_forward(q, kc, vc, qs, cl32, table, p, out); },
                       {op, "context_len", "i64", "i32[2]"});
    Tensor table3 = bt({0, 1, 2}, 1, 3);
    test::expect_error([&] { ops::paged_attention_forward(q, kc, vc, qs, cl, table3, p, out); },
                       {op, "block_table", "[2,3]", "[1,3]"});
    Tensor out5 = t({5, 4, 16});
    test::expect_error([&] { ops::paged_attention_forward(q, kc, vc, qs, cl, table, p, out5); },
                       {op, "out", "[4,4,16]", "[5,4,16]"});
  }
  {  // bad window
    ops::PagedAttentionParams pw;
    pw.window = 0;
    test::expect_error([&] { ops::paged_attention_forward(q, kc, vc, qs, cl, table, pw, out); },
                       {op, "window"});
  }
  if (test::test_device().is_cpu()) {  // metadata values (checked on the CPU only)
    test::expect_error(
        [&] {
          ops::paged_attention_forward(q, kc, vc, i64({0, 3, 1}), cl, table, p, out);
        },
        {op, "query_start", "non-decreasing"});
    test::expect_error(
        [&] {
          ops::paged_attention_forward(q, kc, vc, i64({0, 1, 5}), cl, table, p, out);
        },
        {op, "query_start[2] = 5", "[4,4,16]"});
    test::expect_error(
        [&] {
          ops::paged_attention_forward(q, kc, vc, qs, i64({5, 2}), table, p, out);
        },
        {op, "context_len[1] = 2", "3"});
    test::expect_error(
        [&] {
          ops::paged_attention_forward(q, kc, vc, qs, i64({5, 25}), table, p, out);
        },
        {op, "context_len[1] = 25", "[2,3]"});
    Tensor bad = bt({0, -1, -1, 1, 6, 3}, 2, 3);
    test::expect_error([&] { ops::paged_attention_forward(q, kc, vc, qs, cl, bad, p, out); },
                       {op, "block_table[1][1] = 6", "[6,8,2,16]"});
    // With a window of 3 the chunk at 17..19 reads keys 15..19, blocks 1 and 2 of its row: a -1
    // before them is fine, without the window it is not.
    ops::PagedAttentionParams pw;
    pw.window = 3;
    Tensor freed = bt({0, -1, -1, -1, 4, 3}, 2, 3);
    ops::paged_attention_forward(q, kc, vc, qs, cl, freed, pw, out);
    test::expect_error([&] { ops::paged_attention_forward(q, kc, vc, qs, cl, freed, p, out); },
                       {op, "block_table[1][0] = -1"});
  }
  if (test::test_device().is_cpu() && cuda_available()) {  // tensors on two devices
    Tensor kcu = kc.to(Device::cuda());
    test::expect_error([&] { ops::paged_attention_forward(q, kcu, vc, qs, cl, table, p, out); },
                       {op, "cuda"});
  }
}

TEST(PagedKvWrite, BadInputThrowsNamingArgumentAndShapes) {
  ORIGAMI_REQUIRE_TEST_DEVICE();
  auto t = [](const Shape& s, DType dt = DType::f32) { return test::empty_on_test_device(s, dt); };
  auto i64 = [](const std::vector<int64_t>& v) {
    return test::on_test_device(Tensor::from_vector_i64(v, {int64_t(v.size())}));
  };
  Tensor kc = t({3, 4, 2, 16}), vc = t({3, 4, 2, 16}), k = t({2, 2, 16}), v = t({2, 2, 16});
  ops::paged_kv_write(k, v, i64({5, -1}), kc, vc);  // valid
  Tensor k4 = t({2, 4, 16});
  test::expect_error(
      [&] {
        ops::paged_kv_write(k4, k4, i64({5, -1}), kc, vc);
      },
      {"paged_kv_write", "[2,4,16]", "[3,4,2,16]"});
  test::expect_error([&] { ops::paged_kv_write(k, v, i64({5}), kc, vc); },
                     {"paged_kv_write", "slot_mapping", "[2]", "[1]"});
  Tensor vb = t({2, 2, 16}, DType::bf16);
  test::expect_error(
      [&] {
        ops::paged_kv_write(k, vb, i64({5, -1}), kc, vc);
      },
      {"paged_kv_write", "f32[2,2,16]", "bf16[2,2,16]"});
  if (test::test_device().is_cpu())
    test::expect_error(
        [&] {
          ops::paged_kv_write(k, v, i64({5, 12}), kc, vc);
        },
        {"paged_kv_write", "slot_mapping[1] = 12", "[3,4,2,16]"});

  auto pairs = [](const std::vector<float>& v) {
    return test::on_test_device(Tensor::from_vector(v, {int64_t(v.size() / 2), 2}, DType::i32));
  };
  ops::paged_kv_copy_blocks(kc, vc, pairs({0, 1, 0, 2}));  // valid
  Tensor p3 = test::on_test_device(Tensor::from_vector({0, 1, 2}, {1, 3}, DType::i32));
  test::expect_error([&] { ops::paged_kv_copy_blocks(kc, vc, p3); },
                     {"paged_kv_copy_blocks", "pairs", "[1,2]", "[1,3]"});
  if (test::test_device().is_cpu()) {
    test::expect_error(
        [&] {
          ops::paged_kv_copy_blocks(kc, vc, pairs({0, 3}));
        },
        {"paged_kv_copy_blocks", "pairs[0][1] = 3", "[3,4,2,16]"});
    test::expect_error(
        [&] {
          ops::paged_kv_copy_blocks(kc, vc, pairs({0, 1, 2, 1}));
        },
        {"paged_kv_copy_blocks", "block 1", "destination of two pairs"});
    test::expect_error(
        [&] {
          ops::paged_kv_copy_blocks(kc, vc, pairs({0, 1, 1, 2}));
        },
        {"paged_kv_copy_blocks", "block 1", "both a source and a destination"});
  }
}

TEST(PagedAttentionGolden, MatchesTorch) {
  ORIGAMI_REQUIRE_TEST_DEVICE();
  const std::vector<PagedCase> cases = {
      {"mixed_bs16_gqa4", 8, 2, 64, 16, {{1, 37}, {17, 17}, {5, 100}, {1, 300}}, -1, 2},
      {"window9_bs1_mha", 4, 4, 32, 1, {{1, 20}, {7, 50}}, 9, 1},
      {"bs32_gqa8_d128_window70", 8, 1, 128, 32, {{1, 200}, {40, 90}}, 70, 1},
  };
  std::vector<test::TorchCase> torch_cases;
  std::vector<Tensor> results;
  std::vector<DType> dtypes;
  uint64_t seed = 7000;
  for (const PagedCase& c : cases)
    for (DType dtype : test::float_dtypes()) {
      const PagedInputs in = make_paged_inputs(c, dtype, seed += 10);
      torch_cases.push_back({c.name + "_" + dtype_name(dtype),
                             "paged_attention",
                             c.params_json(),
                             {{"q", in.q},
                              {"k_cache", in.k_cache},
                              {"v_cache", in.v_cache},
                              {"query_start", in.query_start},
                              {"context_len", in.context_len},
                              {"block_table", in.block_table}}});
      results.push_back(run_paged(c, in, dtype));
      dtypes.push_back(dtype);
    }
  const auto torch = test::run_torch(torch_cases);
  for (size_t i = 0; i < results.size(); ++i) {
    const std::string key = torch_cases[i].name + "/out";
    auto it = torch.find(key);
    if (it == torch.end()) {
      ADD_FAILURE() << "no PyTorch output " << key;
      continue;
    }
    EXPECT_ALL_CLOSE(results[i], it->second, test::tolerance_for(dtypes[i])) << key;
  }
}

// Batch invariance (deterministic serving): with batch_invariant, the rows of a sequence are
// bit for bit the same alone, among 1, 7 or 31 other sequences, and on 1, 2 or 4 threads; long
// contexts (split into several pieces) included. Without it, the split adapts to the batch.
// (A CPU kernel option: the test runs on the CPU whatever the test device.)
TEST(PagedAttention, BatchInvariantRowsDoNotDependOnTheBatch) {
  const int threads_before = omp_get_max_threads();
  std::mt19937_64 rng(17);
  for (const Seq target : {Seq{1, 1500}, Seq{1, 300}, Seq{24, 1300}, Seq{7, 7}}) {
    std::vector<Tensor> results;
    for (int others : {0, 1, 7, 31}) {
      PagedCase c{"invariance", 8, 2, 64, 16, {target}};
      for (int i = 0; i < others; ++i) {
        const int64_t ctx = 1 + int64_t(rng() % 1200);
        c.seqs.push_back(
            {rng() % 2 ? 1 : 1 + int64_t(rng() % uint64_t(std::min<int64_t>(ctx, 40))), ctx});
      }
      // The same target data in every case: the inputs of the full case, seeded alike, hold the
      // target first; its rows and cache blocks come first whatever follows.
      PagedCase alone = c;
      alone.seqs.resize(1);
      const PagedInputs in_alone = make_paged_inputs(alone, DType::f32, 5);
      PagedInputs in = make_paged_inputs(c, DType::f32, 5);
      // Put the target's q rows, its blocks' keys and values and its block-table row in place.
      const int64_t rows = target.q_len;
      std::memcpy(in.q.data(), in_alone.q.data(), size_t(rows * 8 * 64) * sizeof(float));
      const int32_t* bta = in_alone.block_table.data_as<const int32_t>();
      int32_t* bt = in.block_table.data_as<int32_t>();
      const int64_t row_floats = 16 * 2 * 64;  // one cache block
      for (int64_t b = 0; b < alone.blocks_of(target); ++b) {
        const int32_t src = bta[b], dst = bt[b];
        ASSERT_GE(src, 0);
        std::memcpy(in.k_cache.data_as<float>() + dst * row_floats,
                    in_alone.k_cache.data_as<const float>() + src * row_floats,
                    size_t(row_floats) * sizeof(float));
        std::memcpy(in.v_cache.data_as<float>() + dst * row_floats,
                    in_alone.v_cache.data_as<const float>() + src * row_floats,
                    size_t(row_floats) * sizeof(float));
      }
      for (int threads : {1, 2, 4}) {
        omp_set_num_threads(threads);
        ops::PagedAttentionParams p = c.params();
        p.batch_invariant = true;
        Tensor out = Tensor::empty({c.rows(), c.Hq, c.D}, DType::f32);
        ops::paged_attention_forward(in.q, in.k_cache, in.v_cache, in.query_start, in.context_len,
                                     in.block_table, p, out);
        results.push_back(out.narrow(0, 0, rows).contiguous());
      }
      if (others == 0) {  // against the naive reference too
        EXPECT_ALL_CLOSE(results.back(), naive_paged_attention(alone, in_alone),
                         test::tolerance_for(DType::f32));
      }
    }
    omp_set_num_threads(threads_before);
    for (size_t i = 1; i < results.size(); ++i)
      EXPECT_EQ(std::memcmp(results[0].data(), results[i].data(),
                            size_t(results[0].numel()) * sizeof(float)),
                0)
          << "target q_len " << target.q_len << " ctx " << target.ctx << ": run " << i
          << " (others " << std::vector<int>{0, 1, 7, 31}[i / 3] << ", threads "
          << std::vector<int>{1, 2, 4}[i % 3] << ") differs from the target alone on 1 thread";
  }
  omp_set_num_threads(threads_before);

  // Chunking: the last 8 rows of a 24-row prompt chunk, run as a chunk of their own over the
  // same cache, are the same bits.
  PagedCase whole{"chunk24", 8, 2, 64, 16, {{24, 1300}}};
  PagedCase tail{"chunk8", 8, 2, 64, 16, {{8, 1300}}};
  const PagedInputs in_whole = make_paged_inputs(whole, DType::f32, 11);
  PagedInputs in_tail = make_paged_inputs(tail, DType::f32, 11);
  const size_t row_floats = size_t(8 * 64);
  std::memcpy(in_tail.q.data(), in_whole.q.data_as<const float>() + 16 * row_floats,
              8 * row_floats * sizeof(float));
  ASSERT_EQ(std::memcmp(in_tail.block_table.data(), in_whole.block_table.data(),
                        size_t(in_whole.block_table.numel()) * sizeof(int32_t)),
            0);
  ops::PagedAttentionParams p;
  p.batch_invariant = true;
  Tensor out_whole = Tensor::empty({24, 8, 64}, DType::f32),
         out_tail = Tensor::empty({8, 8, 64}, DType::f32);
  ops::paged_attention_forward(in_whole.q, in_whole.k_cache, in_whole.v_cache, in_whole.query_start,
                               in_whole.context_len, in_whole.block_table, p, out_whole);
  ops::paged_attention_forward(in_tail.q, in_tail.k_cache, in_tail.v_cache, in_tail.query_start,
                               in_tail.context_len, in_tail.block_table, p, out_tail);
  EXPECT_EQ(std::memcmp(out_whole.data_as<const float>() + 16 * row_floats, out_tail.data(),
                        8 * row_floats * sizeof(float)),
            0)
      << "rows of a prompt chunk differ from the same rows in a smaller chunk";
}

}  // namespace
}  // namespace origami
