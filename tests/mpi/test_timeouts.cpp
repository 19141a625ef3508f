// Timeouts: a rank that skips a collective makes the others fail with an error naming it, and
// every rank still ends cleanly (the skipping rank arrives late, which completes the abandoned
// operation in the background).
#include <chrono>
#include <thread>

#include "tests/mpi/mpi_test.h"

namespace origami {
namespace {

using Clock = std::chrono::steady_clock;
using test::mpi_world;

double seconds_since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

TEST(CommunicatorTimeout, SkippedCollectiveNamesTheMissingRank) {
  Communicator& world = mpi_world();
  const int p = world.size(), me = world.rank();
  if (p < 2) GTEST_SKIP() << "needs 2 ranks";
  auto comm = world.split(0, me, "victim");
  comm->set_timeout(std::chrono::seconds(1));
  const int skipper = p - 1;
  // Operation #1 (the split's barrier ran on world, not here) completes on every rank.
  Tensor t = test::make_input(me, 8, DType::f32, 1);
  comm->all_reduce(t);
  Tensor u = test::make_input(me, 8, DType::f32, 2);
  if (me == skipper) {
    // Late by more than the timeout plus the time the others spend reading arrival records.
    std::this_thread::sleep_for(std::chrono::milliseconds(2500));
    comm->all_reduce(u);  // completes against the others' abandoned operation
    for (int64_t i = 0; i < 8; ++i) {
      double sum = 0;
      for (int r = 0; r < p; ++r) sum += test::input_value(r, i, 2);
      EXPECT_EQ(u.item_at(i), sum);
    }
  } else {
    const auto start = Clock::now();
    test::expect_error([&] { comm->all_reduce(u); },
                       {"victim: all_reduce #2", "f32[8]", "timed out after 1 s",
                        "Ranks that never arrived: member ",
                        "member " + std::to_string(skipper) + " (global rank " +
                            std::to_string(skipper) + "), last entered all_reduce #1",
                        "raise the timeout"});
    const double waited = seconds_since(start);
    EXPECT_GE(waited, 1.0);
    EXPECT_LT(waited, 2.4);  // the timeout plus the 0.1 s grace for reading records, and slack
    // Out of step now: further use is refused with the reason.
    test::expect_error([&] { comm->barrier(); },
                       {"unusable", "all_reduce #2 (f32[8], sum) timed out"});
  }
  world.barrier();
  comm.reset();  // collective: every member frees it
  world.barrier();
}

TEST(CommunicatorTimeout, SkippedRingAllReduceNamesTheMissingRank) {
  // A buffer large enough for the ring all-reduce (point-to-point steps instead of one MPI
  // request). Its abandoned steps do not go on in the background, so the late rank times out too
  // -- with every member arrived -- and all ranks still end cleanly.
  Communicator& world = mpi_world();
  const int p = world.size(), me = world.rank();
  if (p < 2) GTEST_SKIP() << "needs 2 ranks";
  auto comm = world.split(0, me, "ring");
  comm->set_timeout(std::chrono::seconds(1));
  const int skipper = p - 1;
  const int64_t n = 100'000;  // 400 KB of f32
  Tensor t = test::make_input(me, n, DType::f32, 3);
  comm->all_reduce(t);
  for (int64_t i = 0; i < n; i += 997) {
    double sum = 0;
    for (int r = 0; r < p; ++r) sum += test::input_value(r, i, 3);
    ASSERT_EQ(t.item_at(i), sum) << i;
  }
  Tensor u = test::make_input(me, n, DType::f32, 4);
  if (me == skipper) {
    std::this_thread::sleep_for(std::chrono::milliseconds(2500));
    test::expect_error([&] { comm->all_reduce(u); }, {"ring: all_reduce #2", "timed out"});
  } else {
    test::expect_error([&] { comm->all_reduce(u); },
                       {"ring: all_reduce #2 (f32[100000], sum) timed out after 1 s",
                        "Ranks that never arrived: member ",
                        "member " + std::to_string(skipper) + " (global rank " +
                            std::to_string(skipper) + "), last entered all_reduce #1"});
  }
  world.barrier();
  comm.reset();
  world.barrier();
}

TEST(CommunicatorTimeout, RecvWithoutSenderNamesThePeer) {
  Communicator& world = mpi_world();
  if (world.size() < 2) GTEST_SKIP() << "needs 2 ranks";
  auto comm = world.split(0, world.rank(), "pipe");
  if (comm->rank() == 0) {
    // Timeouts are per communicator and per rank: only the receiving side waits briefly.
    comm->set_timeout(std::chrono::milliseconds(500));
    Tensor t = Tensor::zeros({4}, DType::f32);
    test::expect_error([&] { comm->recv(t, 1, 99); },
                       {"pipe: recv of f32[4] from member 1 (global rank 1) with tag 99",
                        "timed out after 0.5 s", "member 1 never sent"});
    // A non-blocking one with an explicit timeout.
    Request r = comm->irecv(t, 1, 98);
    test::expect_error([&] { r.wait(Milliseconds(200)); }, {"timed out after 0.2 s"});
    EXPECT_FALSE(r.valid());
    comm->set_timeout(world.timeout());
  }
  // A timed-out receive was withdrawn: the communicator still works.
  comm->barrier();
  Tensor s = Tensor::from_vector_i64({1}, {1});
  comm->all_reduce(s);
  EXPECT_EQ(s.item_at(0), double(comm->size()));
}

}  // namespace
}  // namespace origami
