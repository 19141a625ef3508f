// World discovery from the launch environment, one test per launcher family of the table in
// docs/launch.md, 'Which rank am I', fed as maps (the process environment is never touched). The
// MPI path is tested in tests/mpi.
#include <string>
#include <vector>

#include "parallel/world.h"
#include "runtime/error.h"
#include "tests/support/test_support.h"

namespace origami {
namespace {

WorldOverrides host(const std::string& name = "testhost") {
  WorldOverrides o;
  o.hostname = name;
  return o;
}

template <typename Fn>
void expect_error(Fn&& fn, const std::vector<std::string>& pieces) {
  try {
    fn();
    ADD_FAILURE() << "expected an origami::Error containing '" << pieces[0] << "'";
  } catch (const Error& e) {
    const std::string what = e.what();
    for (const auto& p : pieces) EXPECT_NE(what.find(p), std::string::npos) << what;
  }
}

TEST(World, NoLauncherIsOneProcess) {
  const World w = world_from_environment({}, host(), 0);
  EXPECT_EQ(w.rank, 0);
  EXPECT_EQ(w.world_size, 1);
  EXPECT_EQ(w.local_rank, 0);
  EXPECT_EQ(w.local_size, 1);
  EXPECT_EQ(w.node, 0);
  EXPECT_EQ(w.num_nodes, 1);
  EXPECT_EQ(w.launcher, "single");
  EXPECT_EQ(w.device, Device::cpu());
  EXPECT_EQ(w.hostname, "testhost");
  EXPECT_EQ(world_from_environment({}, host(), 2).device, Device::cuda(0));
}

TEST(World, Torchrun) {
  const Environment env = {{"RANK", "3"},       {"WORLD_SIZE", "8"},
                           {"LOCAL_RANK", "1"}, {"LOCAL_WORLD_SIZE", "2"},
                           {"GROUP_RANK", "1"}, {"PATH", "/bin"}};
  const World w = world_from_environment(env, host(), 4);
  EXPECT_EQ(w.rank, 3);
  EXPECT_EQ(w.world_size, 8);
  EXPECT_EQ(w.local_rank, 1);
  EXPECT_EQ(w.local_size, 2);
  EXPECT_EQ(w.node, 1);
  EXPECT_EQ(w.launcher, "torchrun");
  EXPECT_EQ(w.device, Device::cuda(1));  // local rank 1 of 4 visible devices
  const LaunchEnvironment le = read_launch_environment(env);
  EXPECT_EQ(le.variables.size(), 5u);
}

TEST(World, OpenMpi) {
  const Environment env = {{"OMPI_COMM_WORLD_RANK", "5"},
                           {"OMPI_COMM_WORLD_SIZE", "6"},
                           {"OMPI_COMM_WORLD_LOCAL_RANK", "2"},
                           {"OMPI_COMM_WORLD_LOCAL_SIZE", "3"}};
  const World w = world_from_environment(env, host(), 2);
  EXPECT_EQ(w.rank, 5);
  EXPECT_EQ(w.world_size, 6);
  EXPECT_EQ(w.local_rank, 2);
  EXPECT_EQ(w.local_size, 3);
  EXPECT_EQ(w.node, -1);  // Open MPI's variables do not say which node
  EXPECT_EQ(w.launcher, "openmpi");
  EXPECT_EQ(w.device, Device::cuda(0));  // 2 % 2
}

TEST(World, MpichHydra) {
  const Environment env = {
      {"PMI_RANK", "1"}, {"PMI_SIZE", "2"}, {"MPI_LOCALRANKID", "1"}, {"MPI_LOCALNRANKS", "2"}};
  const World w = world_from_environment(env, host(), 0);
  EXPECT_EQ(w.rank, 1);
  EXPECT_EQ(w.world_size, 2);
  EXPECT_EQ(w.local_rank, 1);
  EXPECT_EQ(w.local_size, 2);
  EXPECT_EQ(w.node, 0);  // every rank on one node
  EXPECT_EQ(w.num_nodes, 1);
  EXPECT_EQ(w.launcher, "mpich");
  EXPECT_EQ(w.device, Device::cpu());
}

TEST(World, SlurmCompressedTasksPerNode) {
  // 7 tasks on 4 nodes: 2,2,2,1. Task 3 is the second task of node 1.
  Environment env = {{"SLURM_PROCID", "3"},  {"SLURM_NTASKS", "7"},
                     {"SLURM_LOCALID", "1"}, {"SLURM_NODEID", "1"},
                     {"SLURM_NNODES", "4"},  {"SLURM_TASKS_PER_NODE", "2(x3),1"}};
  World w = world_from_environment(env, host(), 8);
  EXPECT_EQ(w.rank, 3);
  EXPECT_EQ(w.world_size, 7);
  EXPECT_EQ(w.local_rank, 1);
  EXPECT_EQ(w.local_size, 2);
  EXPECT_EQ(w.node, 1);
  EXPECT_EQ(w.num_nodes, 4);
  EXPECT_EQ(w.launcher, "slurm");
  EXPECT_EQ(w.device, Device::cuda(1));
  // The last node holds one task.
  env["SLURM_PROCID"] = "6";
  env["SLURM_LOCALID"] = "0";
  env["SLURM_NODEID"] = "3";
  w = world_from_environment(env, host(), 8);
  EXPECT_EQ(w.local_size, 1);
  EXPECT_EQ(w.node, 3);
  // SLURM_NTASKS_PER_NODE (from --ntasks-per-node) is read first.
  env = {{"SLURM_PROCID", "5"},
         {"SLURM_NTASKS", "8"},
         {"SLURM_LOCALID", "1"},
         {"SLURM_NODEID", "1"},
         {"SLURM_NTASKS_PER_NODE", "4"},
         {"SLURM_NNODES", "2"},
         {"SLURM_TASKS_PER_NODE", "2(x4)"}};
  w = world_from_environment(env, host(), 0);
  EXPECT_EQ(w.local_size, 4);
  EXPECT_EQ(w.local_rank, 1);
  // A node id beyond the list is an error naming both.
  env = {{"SLURM_PROCID", "0"},
         {"SLURM_NTASKS", "4"},
         {"SLURM_LOCALID", "0"},
         {"SLURM_NODEID", "3"},
         {"SLURM_TASKS_PER_NODE", "2,2"}};
  expect_error([&] { world_from_environment(env, host()); }, {"SLURM_NODEID=3", "2,2"});
}

TEST(World, SlurmTasksPerNodeParser) {
  EXPECT_EQ(parse_slurm_tasks_per_node("2(x3),1"), (std::vector<int>{2, 2, 2, 1}));
  EXPECT_EQ(parse_slurm_tasks_per_node("4"), (std::vector<int>{4}));
  EXPECT_EQ(parse_slurm_tasks_per_node("1(x2),3(x1),2"), (std::vector<int>{1, 1, 3, 2}));
  for (const char* bad : {"", "a", "2(x", "2(3)", "2(x0)", "0", "2,,1", "2(x3)1"}) {
    EXPECT_THROW(parse_slurm_tasks_per_node(bad), Error) << bad;
  }
}

TEST(World, PmixGivesOnlyTheRank) {
  const Environment env = {{"PMIX_RANK", "2"}};
  const LaunchEnvironment le = read_launch_environment(env);
  EXPECT_EQ(le.launcher, "pmix");
  ASSERT_TRUE(le.rank.has_value());
  EXPECT_EQ(*le.rank, 2);
  EXPECT_FALSE(le.world_size.has_value());
  EXPECT_FALSE(le.local_rank.has_value());
  // Without MPI the world size is unknown: a clear error, not a guess.
  expect_error([&] { world_from_environment(env, host()); },
               {"PMIX_RANK=2", "not the world size", "MPI"});
  // Explicit values complete it.
  WorldOverrides o = host();
  o.world_size = 4;
  o.local_rank = 0;
  o.local_size = 1;
  const World w = world_from_environment(env, o);
  EXPECT_EQ(w.rank, 2);
  EXPECT_EQ(w.world_size, 4);
}

TEST(World, FirstFamilyWinsAndOthersAreIgnored) {
  // mpirun inside an sbatch script: Open MPI variables plus the batch step's stale SLURM_*.
  Environment env = {{"OMPI_COMM_WORLD_RANK", "1"},
                     {"OMPI_COMM_WORLD_SIZE", "2"},
                     {"OMPI_COMM_WORLD_LOCAL_RANK", "1"},
                     {"OMPI_COMM_WORLD_LOCAL_SIZE", "2"},
                     {"SLURM_PROCID", "0"},
                     {"SLURM_NTASKS", "1"},
                     {"SLURM_LOCALID", "0"},
                     {"PMIX_RANK", "1"}};
  World w = world_from_environment(env, host());
  EXPECT_EQ(w.launcher, "openmpi");
  EXPECT_EQ(w.rank, 1);
  EXPECT_EQ(w.world_size, 2);
  // torchrun-style variables come first of all.
  env["RANK"] = "0";
  env["WORLD_SIZE"] = "1";
  env["LOCAL_RANK"] = "0";
  env["LOCAL_WORLD_SIZE"] = "1";
  w = world_from_environment(env, host());
  EXPECT_EQ(w.launcher, "torchrun");
  EXPECT_EQ(w.rank, 0);
  EXPECT_EQ(w.world_size, 1);
  // MPICH before Slurm.
  env = {{"PMI_RANK", "3"},        {"PMI_SIZE", "4"},     {"MPI_LOCALRANKID", "3"},
         {"MPI_LOCALNRANKS", "4"}, {"SLURM_PROCID", "0"}, {"SLURM_NTASKS", "4"}};
  EXPECT_EQ(world_from_environment(env, host()).rank, 3);
  // Slurm before PMIx.
  env = {{"SLURM_PROCID", "2"},
         {"SLURM_NTASKS", "4"},
         {"SLURM_LOCALID", "2"},
         {"SLURM_NTASKS_PER_NODE", "4"},
         {"PMIX_RANK", "0"}};
  EXPECT_EQ(world_from_environment(env, host()).launcher, "slurm");
  EXPECT_EQ(world_from_environment(env, host()).rank, 2);
}

TEST(World, ExplicitValuesWin) {
  const Environment env = {
      {"RANK", "3"}, {"WORLD_SIZE", "8"}, {"LOCAL_RANK", "3"}, {"LOCAL_WORLD_SIZE", "8"}};
  WorldOverrides o = host();
  o.rank = 5;
  o.local_rank = 1;
  o.local_size = 2;
  o.device = Device::cpu();
  const World w = world_from_environment(env, o, 4);
  EXPECT_EQ(w.rank, 5);
  EXPECT_EQ(w.world_size, 8);
  EXPECT_EQ(w.local_rank, 1);
  EXPECT_EQ(w.local_size, 2);
  EXPECT_EQ(w.device, Device::cpu());  // explicit device over the local-rank binding
  // Explicit values alone, no launcher.
  WorldOverrides only = host();
  only.rank = 1;
  only.world_size = 2;
  only.local_rank = 1;
  only.local_size = 2;
  const World e = world_from_environment({}, only, 0);
  EXPECT_EQ(e.launcher, "explicit");
  EXPECT_EQ(e.rank, 1);
}

TEST(World, DeviceFollowsLocalRankNeverGlobalRank) {
  // Global rank 7 is local rank 1 of its node: with 2 visible devices it uses cuda:1.
  const Environment env = {
      {"RANK", "7"}, {"WORLD_SIZE", "8"}, {"LOCAL_RANK", "1"}, {"LOCAL_WORLD_SIZE", "4"}};
  EXPECT_EQ(world_from_environment(env, host(), 2).device, Device::cuda(1));
  EXPECT_EQ(world_from_environment(env, host(), 8).device, Device::cuda(1));
  EXPECT_EQ(world_from_environment(env, host(), 0).device, Device::cpu());
  EXPECT_EQ(device_for_local_rank(5, 4), Device::cuda(1));
  EXPECT_EQ(device_for_local_rank(3, 1), Device::cuda(0));
  EXPECT_EQ(device_for_local_rank(3, 0), Device::cpu());
}

TEST(World, BadValuesNameTheVariable) {
  expect_error(
      [] {
        read_launch_environment({{"RANK", "abc"}, {"WORLD_SIZE", "2"}});
      },
      {"RANK='abc'"});
  expect_error(
      [] {
        read_launch_environment({{"RANK", "-1"}, {"WORLD_SIZE", "2"}});
      },
      {"RANK='-1'"});
  expect_error(
      [] {
        read_launch_environment({{"OMPI_COMM_WORLD_RANK", "1"}, {"OMPI_COMM_WORLD_SIZE", "2x"}});
      },
      {"OMPI_COMM_WORLD_SIZE='2x'"});
  expect_error(
      [] {
        read_launch_environment({{"RANK", "8"}, {"WORLD_SIZE", "8"}});
      },
      {"rank 8", "world size 8", "RANK=8"});
  expect_error(
      [] {
        read_launch_environment(
            {{"RANK", "0"}, {"WORLD_SIZE", "8"}, {"LOCAL_RANK", "2"}, {"LOCAL_WORLD_SIZE", "2"}});
      },
      {"local rank 2", "local size 2"});
  expect_error(
      [] {
        read_launch_environment({{"RANK", "0"}, {"WORLD_SIZE", "0"}});
      },
      {"world size 0"});
  // A world of several ranks without a local rank cannot bind a device: clear error.
  expect_error(
      [] {
        world_from_environment({{"RANK", "0"}, {"WORLD_SIZE", "4"}}, host());
      },
      {"no local rank", "LOCAL_RANK"});
  WorldOverrides size_only = host();
  size_only.world_size = 4;
  expect_error([&] { world_from_environment({}, size_only); }, {"not the rank"});
}

TEST(World, Describes) {
  const World w = world_from_environment({}, host("n01"), 0);
  EXPECT_EQ(w.str(), "rank 0/1 (local 0/1, node 0/1, host n01, cpu, from single)");
}

}  // namespace
}  // namespace origami
