// The settings origami makes for Open MPI before MPI_Init (parallel/mpi_environment.h), decided
// from maps and version strings; the real runs are tests/mpi/readme_np8.sh.
#include <omp.h>
#include <sched.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <string>
#include <thread>
#include <vector>

#include "parallel/mpi_environment.h"
#include "parallel/world.h"
#include "tests/support/test_support.h"

namespace origami {
namespace {

const char* kOpenMpi4 = "Open MPI v4.1.4, package: Debian OpenMPI, ident: 4.1.4, repo rev: v4.1.4";
const char* kOpenMpi5 = "Open MPI v5.0.3, package: Open MPI, ident: 5.0.3, repo rev: v5.0.3";

std::vector<std::string> variables(const std::vector<MpiSetting>& settings) {
  std::vector<std::string> out;
  for (const MpiSetting& s : settings) out.push_back(s.variable + "=" + s.value);
  return out;
}

TEST(MpiEnvironment, OpenMpi4AvoidsOscRdmaAndProbesOnlyWhenNeeded) {
  int probes = 0;
  const auto works = [&] {
    ++probes;
    return true;
  };
  EXPECT_EQ(variables(mpi_settings_needed({}, kOpenMpi4, works)),
            std::vector<std::string>{"OMPI_MCA_osc=^rdma"});
  EXPECT_EQ(probes, 1);
  // A choice the user made (or mpirun --mca) is kept, and then nothing is probed.
  const Environment chosen = {{"OMPI_MCA_osc", "rdma"},
                              {"OMPI_MCA_btl_vader_single_copy_mechanism", "cma"}};
  EXPECT_TRUE(mpi_settings_needed(chosen, kOpenMpi4, works).empty());
  EXPECT_EQ(probes, 1);
}

TEST(MpiEnvironment, NoCrossMemoryAttachTurnsSingleCopyOff) {
  const auto denied = [] { return false; };
  const std::vector<MpiSetting> s4 = mpi_settings_needed({}, kOpenMpi4, denied);
  EXPECT_EQ(variables(s4),
            (std::vector<std::string>{"OMPI_MCA_osc=^rdma",
                                      "OMPI_MCA_btl_vader_single_copy_mechanism=none"}));
  EXPECT_NE(s4[1].note.find("process_vm_readv"), std::string::npos) << s4[1].note;
  // Open MPI 5 names the transport sm and no longer has the osc/rdma file-name clash.
  EXPECT_EQ(variables(mpi_settings_needed({}, kOpenMpi5, denied)),
            std::vector<std::string>{"OMPI_MCA_btl_sm_single_copy_mechanism=none"});
  EXPECT_TRUE(
      mpi_settings_needed({{"OMPI_MCA_btl_sm_single_copy_mechanism", "none"}}, kOpenMpi5, denied)
          .empty());
}

TEST(MpiEnvironment, OtherMpiLibrariesAreLeftAlone) {
  EXPECT_TRUE(mpi_settings_needed({}, "MPICH Version: 4.0.2", [] { return false; }).empty());
}

TEST(MpiEnvironment, OpenMpThreadsShareTheCores) {
  // 8 ranks on 2 cores, each about to run 2 threads: 1 each. 2 ranks on 16 cores: 8 each.
  EXPECT_EQ(openmp_threads_per_rank({}, 8, 2, 2), 1);
  EXPECT_EQ(openmp_threads_per_rank({}, 2, 16, 16), 8);
  // Already few enough, or the user chose: left alone.
  EXPECT_EQ(openmp_threads_per_rank({}, 1, 16, 16), 0);
  EXPECT_EQ(openmp_threads_per_rank({}, 4, 16, 2), 0);
  EXPECT_EQ(openmp_threads_per_rank({{"OMP_NUM_THREADS", "4"}}, 8, 2, 4), 0);
  EXPECT_EQ(openmp_threads_per_rank({}, 8, 0, 2), 0);  // bound by the launcher
}

TEST(MpiEnvironment, OpenMpThreadCpus) {
  const std::vector<int> all8 = {0, 1, 2, 3, 4, 5, 6, 7};
  // One rank, unbound: its threads on the first CPUs. Two ranks of 2 threads: CPUs 0-1 and 2-3.
  EXPECT_EQ(openmp_thread_cpus({}, all8, 8, 0, 1, 2), (std::vector<int>{0, 1}));
  EXPECT_EQ(openmp_thread_cpus({}, all8, 8, 1, 2, 2), (std::vector<int>{2, 3}));
  EXPECT_EQ(openmp_thread_cpus({}, all8, 8, 3, 4, 2), (std::vector<int>{6, 7}));
  // Bound by the launcher to CPUs 4-7 (of 8): its first ones, whatever its local rank.
  EXPECT_EQ(openmp_thread_cpus({}, {4, 5, 6, 7}, 8, 1, 2, 3), (std::vector<int>{4, 5, 6}));
  // Not enough CPUs for one each, one thread, or the user placed the threads: left alone.
  EXPECT_TRUE(openmp_thread_cpus({}, all8, 8, 0, 4, 3).empty());
  EXPECT_TRUE(openmp_thread_cpus({}, {4, 5}, 8, 0, 1, 3).empty());
  EXPECT_TRUE(openmp_thread_cpus({}, all8, 8, 0, 1, 1).empty());
  EXPECT_TRUE(openmp_thread_cpus({{"OMP_PROC_BIND", "false"}}, all8, 8, 0, 1, 2).empty());
  EXPECT_TRUE(openmp_thread_cpus({{"OMP_PLACES", "cores"}}, all8, 8, 0, 1, 2).empty());
}

// On this machine: after binding, every thread of a team of 2 runs on the one CPU it was given, in
// the next parallel regions too. Where binding must not happen (fewer than 2 CPUs, the environment
// places the threads, or the node's ranks leave fewer than 2 CPUs each) nothing is bound and every
// thread keeps the process's mask. The test's thread restores the mask at the end.
TEST(MpiEnvironment, BindOpenMpThreadsHere) {
  cpu_set_t before;
  ASSERT_EQ(sched_getaffinity(0, sizeof before, &before), 0);
  const int allowed = CPU_COUNT(&before);
  std::vector<int> mask;
  for (int c = 0; c < CPU_SETSIZE; ++c)
    if (CPU_ISSET(c, &before)) mask.push_back(c);
  const LaunchEnvironment le = read_launch_environment(current_environment());
  const bool unbound = allowed == int(sysconf(_SC_NPROCESSORS_ONLN));
  const bool placed =
      std::getenv("OMP_PROC_BIND") || std::getenv("OMP_PLACES") || std::getenv("GOMP_CPU_AFFINITY");
  const bool expect_bound =
      !placed && allowed >= 2 && (!unbound || le.local_size.value_or(1) * 2 <= allowed);
  const int saved = omp_get_max_threads();
  // In a thread of its own, so that the test process keeps its mask.
  std::vector<int> cpus;
  std::vector<std::vector<int>> seen(2);
  std::thread([&] {
    omp_set_num_threads(2);
    cpus = bind_openmp_threads();
    for (int region = 0; region < 2; ++region) {
#pragma omp parallel num_threads(2)
      {
        cpu_set_t now;
        std::vector<int>& mine = seen[size_t(omp_get_thread_num())];  // each thread its own
        mine.clear();
        if (sched_getaffinity(0, sizeof now, &now) == 0)
          for (int c = 0; c < CPU_SETSIZE; ++c)
            if (CPU_ISSET(c, &now)) mine.push_back(c);
      }
    }
#pragma omp parallel num_threads(2)
    sched_setaffinity(0, sizeof before, &before);
  }).join();
  omp_set_num_threads(saved);
  if (!expect_bound) {
    EXPECT_TRUE(cpus.empty());
    for (int t = 0; t < 2; ++t) EXPECT_EQ(seen[size_t(t)], mask) << "thread " << t;
    return;
  }
  ASSERT_EQ(cpus.size(), 2u);
  EXPECT_NE(cpus[0], cpus[1]);
  for (int t = 0; t < 2; ++t) {
    EXPECT_TRUE(CPU_ISSET(cpus[size_t(t)], &before)) << "CPU " << cpus[size_t(t)];
    EXPECT_EQ(seen[size_t(t)], std::vector<int>{cpus[size_t(t)]}) << "thread " << t;
  }
}

TEST(MpiEnvironment, ProbeRunsHere) {
  // Whatever this machine allows, the probe answers and leaves no child behind.
  const bool works = cross_memory_attach_works();
  EXPECT_EQ(works, cross_memory_attach_works());
  EXPECT_EQ(waitpid(-1, nullptr, WNOHANG), -1);
}

}  // namespace
}  // namespace origami
