// main() of the multi-rank tests: MPI must start before GoogleTest and end after it. Rank 0 prints
// the usual report; the other ranks print only their failures, prefixed with their rank. The exit
// code is non-zero when any rank failed.
#include <mpi.h>

#include <cstdio>
#include <memory>

#include "parallel/world.h"
#include "tests/mpi/mpi_test.h"

namespace origami::test {
namespace {

std::unique_ptr<Communicator> g_world;

class RankFailurePrinter : public ::testing::EmptyTestEventListener {
 public:
  explicit RankFailurePrinter(int rank) : rank_(rank) {}
  void OnTestPartResult(const ::testing::TestPartResult& r) override {
    if (!r.failed()) return;
    std::fprintf(stderr, "[rank %d] %s:%d: failure\n%s\n", rank_,
                 r.file_name() ? r.file_name() : "?", r.line_number(), r.summary());
  }
  void OnTestEnd(const ::testing::TestInfo& info) override {
    if (info.result()->Failed())
      std::fprintf(stderr, "[rank %d] FAILED %s.%s\n", rank_, info.test_suite_name(), info.name());
  }

 private:
  int rank_;
};

}  // namespace

Communicator& mpi_world() {
  return *g_world;
}

}  // namespace origami::test

int main(int argc, char** argv) {
  int result = 1;
  {
    origami::MpiSession mpi(&argc, &argv);
    ::testing::InitGoogleTest(&argc, argv);
    int rank = 0;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    if (rank != 0) {
      auto& listeners = ::testing::UnitTest::GetInstance()->listeners();
      delete listeners.Release(listeners.default_result_printer());
      listeners.Append(new origami::test::RankFailurePrinter(rank));
    }
    origami::test::g_world = origami::mpi_world_communicator(std::chrono::seconds(20));
    const int local = RUN_ALL_TESTS();
    int any = 0;
    MPI_Allreduce(&local, &any, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
    origami::test::g_world.reset();
    result = any;
  }
  return result;
}
