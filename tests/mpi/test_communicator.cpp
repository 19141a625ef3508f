// Every collective of the MPI communicator against a reference computed locally: each rank
// rebuilds every other rank's input from (rank, element, seed) and works out the expected result
// itself. Inputs are multiples of 1/4, so sums are exact in fp32 and bf16 alike and results are
// compared exactly; one case uses arbitrary fp32 values with the fp32 tolerance.
#include <mpi.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>

#include "tests/mpi/mpi_test.h"
#include "tests/support/test_support.h"

namespace origami {
namespace {

using test::expected_value;
using test::make_input;
using test::mpi_world;

const std::vector<DType> kDtypes = {DType::f32, DType::bf16, DType::i32, DType::i64};
const std::vector<int64_t> kSizes = {0, 1, 17, 1000};
// 70001 elements pass the ring algorithms' threshold (256 KiB) in every dtype (bf16 reductions
// through their fp32 copies), with pieces of unequal sizes.
const std::vector<int64_t> kLargeSizes = {0, 1, 17, 1000, 70001};

double reduce(ReduceOp op, double a, double b) {
  return op == ReduceOp::sum ? a + b : std::max(a, b);
}

// The reduction over ranks of element i (of every rank's input under `seed`).
double reduced(ReduceOp op, int ranks, int64_t i, DType dtype, int seed) {
  double acc = expected_value(0, i, dtype, seed);
  for (int r = 1; r < ranks; ++r) acc = reduce(op, acc, expected_value(r, i, dtype, seed));
  return acc;
}

std::string what(DType dtype, int64_t n, const char* extra = "") {
  return std::string(dtype_name(dtype)) + " n=" + std::to_string(n) + " " + extra;
}

// Compares exactly (the inputs make every expected value exact in every dtype).
void expect_values(const Tensor& t, const std::vector<double>& expected, const std::string& ctx) {
  ASSERT_EQ(t.numel(), int64_t(expected.size())) << ctx;
  int shown = 0;
  for (int64_t i = 0; i < t.numel(); ++i) {
    if (t.item_at(i) != expected[size_t(i)] && shown++ < 5)
      ADD_FAILURE() << ctx << ": element " << i << " is " << t.item_at(i) << ", expected "
                    << expected[size_t(i)];
  }
}

TEST(Communicator, Identity) {
  Communicator& world = mpi_world();
  int rank = 0, size = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  EXPECT_EQ(world.rank(), rank);
  EXPECT_EQ(world.size(), size);
  EXPECT_EQ(world.name(), "world");
  EXPECT_STREQ(world.backend(), "mpi");
  std::vector<int> all(static_cast<size_t>(size), 0);
  std::iota(all.begin(), all.end(), 0);
  EXPECT_EQ(world.global_ranks(), all);
  world.barrier();
}

TEST(Communicator, AllReduce) {
  Communicator& world = mpi_world();
  const int me = world.rank(), p = world.size();
  for (DType dtype : kDtypes)
    for (int64_t n : kLargeSizes)
      for (ReduceOp op : {ReduceOp::sum, ReduceOp::max}) {
        const int seed = int(n) + int(op);
        Tensor t = make_input(me, n, dtype, seed);
        world.all_reduce(t, op);
        std::vector<double> expected(static_cast<size_t>(n));
        for (int64_t i = 0; i < n; ++i) expected[size_t(i)] = reduced(op, p, i, dtype, seed);
        expect_values(t, expected, what(dtype, n, reduce_op_name(op)));
      }
}

TEST(Communicator, AllReduceArbitraryFloats) {
  Communicator& world = mpi_world();
  const int me = world.rank(), p = world.size();
  for (int64_t n : {4099, 100003}) {  // below and above the ring threshold
    Tensor t = Tensor::empty({n}, DType::f32);
    const auto value = [](int r, int64_t i) {
      return std::sin(0.37 * r + 0.011 * double(i)) * 3.0;
    };
    for (int64_t i = 0; i < n; ++i) t.set_at(i, float(value(me, i)));
    world.all_reduce(t);
    test::HostArray expected = test::host_array({n});
    for (int64_t i = 0; i < n; ++i)
      for (int r = 0; r < p; ++r) expected[i] += double(float(value(r, i)));
    EXPECT_ALL_CLOSE(t, expected, test::tolerance_for(DType::f32));
    // Every member holds the same bits (the ring reduces each chunk once, in one order).
    Tensor root = t.clone();
    world.broadcast(root, 0);
    EXPECT_EQ(std::memcmp(root.data(), t.data(), t.nbytes()), 0);
  }
}

TEST(Communicator, ReduceScatter) {
  Communicator& world = mpi_world();
  const int me = world.rank(), p = world.size();
  for (DType dtype : kDtypes)
    for (int64_t n : kLargeSizes)
      for (ReduceOp op : {ReduceOp::sum, ReduceOp::max}) {
        const int seed = 3 + int(n);
        Tensor in = make_input(me, n * p, dtype, seed);
        Tensor out = Tensor::zeros({n}, dtype);
        world.reduce_scatter(in, out, op);
        std::vector<double> expected(static_cast<size_t>(n));
        for (int64_t i = 0; i < n; ++i)
          expected[size_t(i)] = reduced(op, p, me * n + i, dtype, seed);
        expect_values(out, expected, what(dtype, n, reduce_op_name(op)));
      }
}

TEST(Communicator, AllGather) {
  Communicator& world = mpi_world();
  const int me = world.rank(), p = world.size();
  for (DType dtype : kDtypes)
    for (int64_t n : kLargeSizes) {
      const int seed = 5;
      Tensor in = make_input(me, n, dtype, seed);
      Tensor out = Tensor::zeros({n * p}, dtype);
      world.all_gather(in, out);
      std::vector<double> expected;
      for (int r = 0; r < p; ++r)
        for (int64_t i = 0; i < n; ++i) expected.push_back(expected_value(r, i, dtype, seed));
      expect_values(out, expected, what(dtype, n));
    }
}

// Per-member counts with zeros: ((r*7 + seed) % 5) * scale, or all zero for seed < 0. A scale of
// 40000 takes the ring algorithms (zero-length pieces included).
std::vector<int64_t> counts_for(int p, int seed, int64_t scale = 1) {
  std::vector<int64_t> c(static_cast<size_t>(p));
  for (int r = 0; r < p; ++r) c[size_t(r)] = seed < 0 ? 0 : (r * 7 + seed) % 5 * scale;
  return c;
}
const std::vector<std::pair<int, int64_t>> kCountPatterns = {
    {-1, 1}, {0, 1}, {1, 1}, {3, 1}, {0, 40000}};

TEST(Communicator, AllGatherV) {
  Communicator& world = mpi_world();
  const int me = world.rank(), p = world.size();
  for (DType dtype : kDtypes)
    for (const auto& [seed, scale] : kCountPatterns) {
      const auto counts = counts_for(p, seed, scale);
      Tensor in = make_input(me, counts[size_t(me)], dtype, seed + 10);
      const int64_t total = std::accumulate(counts.begin(), counts.end(), int64_t(0));
      Tensor out = Tensor::zeros({total}, dtype);
      world.all_gather_v(in, out, counts);
      std::vector<double> expected;
      for (int r = 0; r < p; ++r)
        for (int64_t i = 0; i < counts[size_t(r)]; ++i)
          expected.push_back(expected_value(r, i, dtype, seed + 10));
      expect_values(out, expected, what(dtype, total, "all_gather_v"));
    }
}

TEST(Communicator, ReduceScatterV) {
  Communicator& world = mpi_world();
  const int me = world.rank(), p = world.size();
  for (DType dtype : kDtypes)
    for (const auto& [seed, scale] : kCountPatterns)
      for (ReduceOp op : {ReduceOp::sum, ReduceOp::max}) {
        const auto counts = counts_for(p, seed, scale);
        const int64_t total = std::accumulate(counts.begin(), counts.end(), int64_t(0));
        Tensor in = make_input(me, total, dtype, seed + 20);
        Tensor out = Tensor::zeros({counts[size_t(me)]}, dtype);
        world.reduce_scatter_v(in, out, counts, op);
        int64_t offset = 0;
        for (int r = 0; r < me; ++r) offset += counts[size_t(r)];
        std::vector<double> expected;
        for (int64_t i = 0; i < counts[size_t(me)]; ++i)
          expected.push_back(reduced(op, p, offset + i, dtype, seed + 20));
        expect_values(out, expected, what(dtype, total, reduce_op_name(op)));
      }
}

TEST(Communicator, AllToAll) {
  Communicator& world = mpi_world();
  const int me = world.rank(), p = world.size();
  for (DType dtype : kDtypes)
    for (int64_t n : {0, 1, 5, 300, 30000}) {  // 30000: the pairwise exchange (>= 256 KiB)
      const int seed = 30;
      Tensor in = make_input(me, n * p, dtype, seed);  // piece q (for member q) at [q*n, q*n+n)
      Tensor out = Tensor::zeros({n * p}, dtype);
      world.all_to_all(in, out);
      std::vector<double> expected;
      for (int r = 0; r < p; ++r)
        for (int64_t i = 0; i < n; ++i)
          expected.push_back(expected_value(r, me * n + i, dtype, seed));
      expect_values(out, expected, what(dtype, n));
    }
}

TEST(Communicator, AllToAllV) {
  Communicator& world = mpi_world();
  const int me = world.rank(), p = world.size();
  // How many elements member r sends to member q; pattern 3 leaves member 0 out entirely
  // (it neither sends nor receives anything); pattern 4 is large (the pairwise exchange).
  const auto count = [](int pattern, int r, int q) -> int64_t {
    if (pattern == 3) return (r == 0 || q == 0) ? 0 : (r + 2 * q) % 3 + 1;
    if (pattern == 4) return (3 * r + 5 * q) % 4 * 20000;
    return (3 * r + 5 * q + pattern) % 4;
  };
  for (DType dtype : kDtypes)
    for (int pattern : {0, 1, 2, 3, 4}) {
      const int seed = 40 + pattern;
      std::vector<int64_t> send(static_cast<size_t>(p)), recv(static_cast<size_t>(p));
      for (int q = 0; q < p; ++q) {
        send[size_t(q)] = count(pattern, me, q);
        recv[size_t(q)] = count(pattern, q, me);
      }
      // The piece for member q holds elements q*100000 + j of this rank's sequence.
      std::vector<double> values;
      for (int q = 0; q < p; ++q)
        for (int64_t j = 0; j < send[size_t(q)]; ++j)
          values.push_back(expected_value(me, q * 100000 + j, dtype, seed));
      Tensor in = Tensor::empty({int64_t(values.size())}, dtype);
      for (size_t i = 0; i < values.size(); ++i) in.set_at(int64_t(i), values[i]);
      const int64_t total = std::accumulate(recv.begin(), recv.end(), int64_t(0));
      Tensor out = Tensor::zeros({total}, dtype);
      world.all_to_all_v(in, send, out, recv);
      std::vector<double> expected;
      for (int r = 0; r < p; ++r)
        for (int64_t j = 0; j < recv[size_t(r)]; ++j)
          expected.push_back(expected_value(r, me * 100000 + j, dtype, seed));
      expect_values(out, expected, what(dtype, total, "all_to_all_v"));
    }
}

TEST(Communicator, Broadcast) {
  Communicator& world = mpi_world();
  const int me = world.rank(), p = world.size();
  for (DType dtype : kDtypes)
    for (int root = 0; root < p; ++root) {
      const int64_t n = 33;
      Tensor t = me == root ? make_input(root, n, dtype, 50) : Tensor::zeros({n}, dtype);
      world.broadcast(t, root);
      std::vector<double> expected;
      for (int64_t i = 0; i < n; ++i) expected.push_back(expected_value(root, i, dtype, 50));
      expect_values(t, expected, what(dtype, n, "broadcast"));
    }
}

TEST(Communicator, SendRecvRing) {
  Communicator& world = mpi_world();
  const int me = world.rank(), p = world.size();
  const int next = (me + 1) % p, prev = (me + p - 1) % p;
  for (DType dtype : kDtypes) {
    const int64_t n = 257;
    Tensor out = make_input(me, n, dtype, 60);
    Tensor in = Tensor::zeros({n}, dtype);
    Request r = world.irecv(in, prev, 7);
    Request s = world.isend(out, next, 7);
    std::vector<Request> all;
    all.push_back(std::move(s));
    all.push_back(std::move(r));
    wait_all(all);
    std::vector<double> expected;
    for (int64_t i = 0; i < n; ++i) expected.push_back(expected_value(prev, i, dtype, 60));
    expect_values(in, expected, what(dtype, n, "ring"));
  }
  // Blocking pairs (0,1), (2,3), ...: the lower rank sends first.
  const int partner = me ^ 1;
  if (partner < p) {
    Tensor mine = make_input(me, 10, DType::f32, 61), theirs = Tensor::zeros({10}, DType::f32);
    if (me < partner) {
      world.send(mine, partner, 3);
      world.recv(theirs, partner, 3);
    } else {
      world.recv(theirs, partner, 3);
      world.send(mine, partner, 3);
    }
    std::vector<double> expected;
    for (int64_t i = 0; i < 10; ++i) expected.push_back(expected_value(partner, i, DType::f32, 61));
    expect_values(theirs, expected, "pair");
  }
  // test() polls to completion.
  Tensor a = make_input(me, 4, DType::i64, 62), b = Tensor::zeros({4}, DType::i64);
  Request rr = world.irecv(b, prev, 9);
  Request ss = world.isend(a, next, 9);
  while (!rr.test()) {
  }
  ss.wait();
  EXPECT_FALSE(rr.valid());
  EXPECT_EQ(b.item_at(3), expected_value(prev, 3, DType::i64, 62));
  world.barrier();
}

TEST(Communicator, RecvOfWrongSizeIsAnError) {
  Communicator& world = mpi_world();
  if (world.size() < 2) GTEST_SKIP() << "needs 2 ranks";
  const int me = world.rank();
  if (me == 0) {
    world.send(make_input(0, 5, DType::f32, 1), 1, 11);
    // A message longer than the buffer: MPI reports the truncation.
    Tensor small = Tensor::zeros({5}, DType::f32);
    test::expect_error([&] { world.recv(small, 1, 12); }, {"world: recv", "failed"});
  } else if (me == 1) {
    Tensor big = Tensor::zeros({6}, DType::f32);
    test::expect_error([&] { world.recv(big, 0, 11); },
                       {"world: recv of f32[6] from member 0", "received 5 elements"});
    world.send(make_input(1, 6, DType::f32, 1), 0, 12);
  }
  world.barrier();
}

TEST(Communicator, SplitByParity) {
  Communicator& world = mpi_world();
  const int me = world.rank(), p = world.size();
  // Reverse order inside each group by key.
  auto half = world.split(me % 2, p - me, "parity");
  std::vector<int> members;
  for (int r = p - 1; r >= 0; --r)
    if (r % 2 == me % 2) members.push_back(r);
  EXPECT_EQ(half->name(), "parity");
  EXPECT_EQ(half->global_ranks(), members);
  EXPECT_EQ(half->global_ranks()[size_t(half->rank())], me);
  EXPECT_EQ(half->timeout(), world.timeout());
  Tensor t = Tensor::from_vector_i64({me}, {1});
  half->all_reduce(t);
  EXPECT_EQ(t.item_at(0), double(std::accumulate(members.begin(), members.end(), 0)));
  Tensor g = Tensor::zeros({int64_t(members.size())}, DType::i32);
  half->all_gather(Tensor::from_vector_i64({me}, {1}, DType::i32), g);
  for (size_t i = 0; i < members.size(); ++i) EXPECT_EQ(g.item_at(int64_t(i)), members[i]);
}

TEST(Communicator, BadArgumentsNameTheGroupAndOperation) {
  // Every rank makes the same mistake, so no rank is left waiting in a collective.
  Communicator& world = mpi_world();
  const int p = world.size();
  Tensor x = Tensor::zeros({2, 3}, DType::f32);
  Tensor xt = x.transpose(0, 1);
  test::expect_error([&] { world.all_reduce(xt); }, {"world: all_reduce", "contiguous"});
  Tensor out = Tensor::zeros({3 * p + 1}, DType::f32);
  Tensor in = Tensor::zeros({3}, DType::f32);
  test::expect_error([&] { world.all_gather(in, out); },
                     {"world: all_gather", "output must hold", std::to_string(3 * p)});
  Tensor out_bf = Tensor::zeros({3 * p}, DType::bf16);
  test::expect_error([&] { world.all_gather(in, out_bf); }, {"dtypes differ", "bf16"});
  test::expect_error([&] { world.all_gather_v(in, out, {3}); },
                     {"world: all_gather_v", "counts has 1 entries"});
  std::vector<int64_t> negative(static_cast<size_t>(p), 1);
  negative[0] = -1;
  test::expect_error([&] { world.reduce_scatter_v(in, in, negative); }, {"counts[0] = -1"});
  test::expect_error([&] { world.reduce_scatter(in, in); }, {"world: reduce_scatter", "input"});
  test::expect_error([&] { world.send(in, p, 0); }, {"world: send", "peer", "not a member"});
  test::expect_error([&] { world.isend(in, 0, -3); }, {"tag must be >= 0"});
  test::expect_error([&] { world.broadcast(in, -1); }, {"world: broadcast", "root -1"});
  test::expect_error([&] { world.set_timeout(Milliseconds(0)); }, {"timeout must be positive"});
  Tensor odd = Tensor::zeros({p + 1}, DType::f32);
  if (p > 1) test::expect_error([&] { world.all_to_all(odd, odd); }, {"equal pieces"});
  world.barrier();
}

}  // namespace
}  // namespace origami
