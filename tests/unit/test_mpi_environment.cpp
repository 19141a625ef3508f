// The settings origami makes for Open MPI before MPI_Init (parallel/mpi_environment.h), decided
// from maps and version strings; the real runs are tests/mpi/readme_np8.sh.
#include <sys/wait.h>

#include <string>
#include <vector>

#include "parallel/mpi_environment.h"
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

TEST(MpiEnvironment, ProbeRunsHere) {
  // Whatever this machine allows, the probe answers and leaves no child behind.
  const bool works = cross_memory_attach_works();
  EXPECT_EQ(works, cross_memory_attach_works());
  EXPECT_EQ(waitpid(-1, nullptr, WNOHANG), -1);
}

}  // namespace
}  // namespace origami
