// run_agreed (parallel/startup_agreement.h): a phase that fails on some ranks stops every rank at
// once, each with the right message, and leaves the ranks in step.
#include <functional>
#include <new>
#include <stdexcept>
#include <string>
#include <vector>

#include "parallel/startup_agreement.h"
#include "tests/mpi/mpi_test.h"

namespace origami {
namespace {

using test::mpi_world;

// What run_agreed over the world threw (threw = false: it returned).
struct Outcome {
  bool threw = false, failed_here = false;
  std::string what;
  std::vector<int> failed;
};
Outcome agree(const std::function<void()>& phase) {
  Outcome o;
  try {
    run_agreed(mpi_world(), "testing", phase);
  } catch (const StartupFailure& e) {
    o.threw = true;
    o.failed_here = e.failed_here();
    o.what = e.what();
    o.failed = e.failed_ranks();
  }
  return o;
}

// The ranks are still in step: an all-reduce over the world completes with every rank's value.
void expect_in_step() {
  Communicator& world = mpi_world();
  Tensor t = Tensor::zeros({1}, DType::i64);
  t.data_as<int64_t>()[0] = 1;
  world.all_reduce(t);
  EXPECT_EQ(t.data_as<int64_t>()[0], world.size());
}

TEST(StartupAgreement, EveryRankSucceeds) {
  int ran = 0;
  const Outcome o = agree([&] { ++ran; });
  EXPECT_FALSE(o.threw);
  EXPECT_EQ(ran, 1);
  expect_in_step();
}

TEST(StartupAgreement, OneRankFailsAndEveryRankStops) {
  Communicator& world = mpi_world();
  if (world.size() < 2) GTEST_SKIP() << "needs 2 ranks";
  const int bad = 1;
  const Outcome o = agree(
      [&] { ORIGAMI_CHECK(world.rank() != bad, "checkpoint piece of rank ", bad, " is corrupt"); });
  ASSERT_TRUE(o.threw);
  EXPECT_EQ(o.failed, std::vector<int>{bad});
  EXPECT_EQ(o.failed_here, world.rank() == bad);
  if (world.rank() == bad) {
    EXPECT_EQ(o.what, "checkpoint piece of rank 1 is corrupt");  // its own error, as it was
  } else {
    EXPECT_EQ(o.what, "rank 1 failed while testing (see its error); every rank stops");
  }
  expect_in_step();
}

TEST(StartupAgreement, SeveralFailuresOfAnyKindAreNamed) {
  Communicator& world = mpi_world();
  if (world.size() < 3) GTEST_SKIP() << "needs 3 ranks";
  // Rank 0 runs out of memory, the last rank throws something that is not an origami::Error.
  const int last = world.size() - 1;
  const Outcome o = agree([&] {
    if (world.rank() == 0) throw std::bad_alloc();
    if (world.rank() == last) throw std::runtime_error("disk gone");
  });
  ASSERT_TRUE(o.threw);
  EXPECT_EQ(o.failed, (std::vector<int>{0, last}));
  if (world.rank() == 0) {
    EXPECT_EQ(o.what, "out of memory while testing (std::bad_alloc)");
  } else if (world.rank() == last) {
    EXPECT_EQ(o.what, "testing: disk gone");
  } else {
    EXPECT_EQ(o.what, "ranks 0 and " + std::to_string(last) +
                          " failed while testing (see their errors); every rank stops");
  }
  expect_in_step();
}

}  // namespace
}  // namespace origami
