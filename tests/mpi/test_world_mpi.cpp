// World discovery with MPI: the real launch environment (mpirun) completed by MPI, and the
// consistency check against an environment that disagrees with MPI.
#include <mpi.h>

#include <cstdlib>

#include "parallel/world.h"
#include "tests/mpi/mpi_test.h"

namespace origami {
namespace {

TEST(WorldMpi, MatchesMpirun) {
  int rank = 0, size = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  const World w = world_from_mpi(current_environment(), {}, 0);
  EXPECT_EQ(w.rank, rank);
  EXPECT_EQ(w.world_size, size);
  // One machine: every rank is local, one node.
  EXPECT_EQ(w.local_rank, rank);
  EXPECT_EQ(w.local_size, size);
  EXPECT_EQ(w.node, 0);
  EXPECT_EQ(w.num_nodes, 1);
  EXPECT_EQ(w.device, Device::cpu());
  if (std::getenv("OMPI_COMM_WORLD_RANK")) {
    EXPECT_EQ(w.launcher, "openmpi");
  }
  EXPECT_FALSE(w.hostname.empty());
  // The device binding follows the local rank.
  EXPECT_EQ(world_from_mpi(current_environment(), {}, 2).device, Device::cuda(rank % 2));
}

TEST(WorldMpi, LocalRankDerivedWhenTheEnvironmentLacksIt) {
  int rank = 0, size = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  // PMIx-style: only the rank. MPI supplies the rest.
  const World w = world_from_mpi({{"PMIX_RANK", std::to_string(rank)}}, {}, 0);
  EXPECT_EQ(w.launcher, "pmix");
  EXPECT_EQ(w.world_size, size);
  EXPECT_EQ(w.local_rank, rank);
  // No variables at all.
  const World n = world_from_mpi(Environment{}, {}, 0);
  EXPECT_EQ(n.launcher, "mpi");
  EXPECT_EQ(n.rank, rank);
}

TEST(WorldMpi, DisagreementIsAnErrorOnEveryRank) {
  int rank = 0, size = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  // Stale Slurm variables that describe another job: rank 0 of a bigger world.
  const Environment stale = {
      {"SLURM_PROCID", "0"}, {"SLURM_NTASKS", std::to_string(size + 3)}, {"SLURM_LOCALID", "0"}};
  try {
    world_from_mpi(stale, {}, 0);
    ADD_FAILURE() << "expected an error";
  } catch (const Error& e) {
    const std::string what = e.what();
    // Every rank fails; each names its own disagreement (the world size at least).
    EXPECT_NE(what.find("MPI says"), std::string::npos) << what;
    EXPECT_NE(what.find("SLURM_"), std::string::npos) << what;
  }
  // Explicit local values win unchecked (a simulated multi-node layout).
  WorldOverrides o;
  o.local_rank = rank % 2;
  o.local_size = 2;
  o.node = rank / 2;
  const World w = world_from_mpi(Environment{}, o, 0);
  EXPECT_EQ(w.local_rank, rank % 2);
  EXPECT_EQ(w.node, rank / 2);
}

}  // namespace
}  // namespace origami
