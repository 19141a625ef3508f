#include "parallel/mpi_environment.h"

#include <mpi.h>
#include <omp.h>
#include <pthread.h>
#include <sched.h>
#include <sys/prctl.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdio>
#include <cstdlib>

namespace origami {
namespace {

// The major version of Open MPI from its library text ("Open MPI v4.1.4, package: ..."), or -1
// for another MPI.
int open_mpi_major(const std::string& library_version) {
  const std::string tag = "Open MPI v";
  const size_t at = library_version.find(tag);
  if (at == std::string::npos) return -1;
  return std::atoi(library_version.c_str() + at + tag.size());
}

bool is_set(const Environment& env, const std::string& name) {
  return env.count(name) != 0;
}

// What the probe's reader looks for; fork copies it to the same address in every child.
volatile uint64_t g_probe_marker = 0x6f726967616d6921ULL;

}  // namespace

std::vector<MpiSetting> mpi_settings_needed(
    const Environment& env, const std::string& library_version,
    const std::function<bool()>& cross_memory_attach_works) {
  std::vector<MpiSetting> out;
  const int major = open_mpi_major(library_version);
  if (major < 0) return out;
  if (major < 5 && !is_set(env, "OMPI_MCA_osc")) out.push_back({"OMPI_MCA_osc", "^rdma", ""});
  // The transport is "vader" up to 4.x, "sm" from 5.0 (which still reads the old name).
  const std::string single_copy =
      std::string("OMPI_MCA_btl_") + (major < 5 ? "vader" : "sm") + "_single_copy_mechanism";
  if (!is_set(env, "OMPI_MCA_btl_vader_single_copy_mechanism") &&
      !is_set(env, "OMPI_MCA_btl_sm_single_copy_mechanism") && !cross_memory_attach_works())
    out.push_back({single_copy, "none",
                   "cross-memory attach (process_vm_readv) is not permitted on this machine; "
                   "running Open MPI with " +
                       single_copy + "=none (set the variable yourself to choose)"});
  return out;
}

int openmp_threads_per_rank(const Environment& env, int local_size, int cores, int threads_now) {
  if (is_set(env, "OMP_NUM_THREADS") || local_size < 1 || cores < 1) return 0;
  const int share = std::max(1, cores / local_size);
  return share < threads_now ? share : 0;
}

bool cross_memory_attach_works() {
  // Only async-signal-safe calls in the children: this process may already run threads.
  int ready[2], hold[2];
  if (pipe(ready) != 0) return true;
  if (pipe(hold) != 0) {
    close(ready[0]);
    close(ready[1]);
    return true;
  }
  const pid_t target = fork();
  if (target == 0) {
    // Open MPI lets any process trace it when Yama restricts ptrace; do the same.
    prctl(PR_SET_PTRACER, PR_SET_PTRACER_ANY, 0, 0, 0);
    close(ready[0]);
    close(hold[1]);
    char c = 1;
    if (write(ready[1], &c, 1) != 1) _exit(1);
    while (read(hold[0], &c, 1) > 0) {
    }  // until the parent closes the pipe (or dies)
    _exit(0);
  }
  close(ready[1]);
  close(hold[0]);
  bool works = true;
  char c = 0;
  if (target > 0 && read(ready[0], &c, 1) == 1) {
    const pid_t reader = fork();
    if (reader == 0) {
      uint64_t value = 0;
      iovec local{&value, sizeof value};
      iovec remote{const_cast<uint64_t*>(&g_probe_marker), sizeof value};
      const ssize_t n = process_vm_readv(target, &local, 1, &remote, 1, 0);
      _exit(n == ssize_t(sizeof value) && value == g_probe_marker ? 0 : 1);
    }
    int status = 0;
    if (reader > 0 && waitpid(reader, &status, 0) == reader)
      works = WIFEXITED(status) && WEXITSTATUS(status) == 0;
  }
  close(hold[1]);
  close(ready[0]);
  if (target > 0) waitpid(target, nullptr, 0);
  return works;
}

std::vector<MpiSetting> prepare_mpi_environment() {
  int initialized = 0;
  MPI_Initialized(&initialized);
  if (initialized) return {};
  // MPI_Get_library_version may be called before MPI_Init (MPI-3).
  char text[MPI_MAX_LIBRARY_VERSION_STRING] = {0};
  int len = 0;
  MPI_Get_library_version(text, &len);
  const Environment env = current_environment();
  const std::vector<MpiSetting> settings =
      mpi_settings_needed(env, text, [] { return cross_memory_attach_works(); });
  LaunchEnvironment le;
  try {
    le = read_launch_environment(env);
  } catch (const std::exception&) {
    // world_from_mpi reports a malformed launch environment; here it only picks who prints.
  }
  const bool rank0 = le.rank.value_or(0) == 0;
  for (const MpiSetting& s : settings) {
    setenv(s.variable.c_str(), s.value.c_str(), 0);
    if (rank0 && !s.note.empty()) std::fprintf(stderr, "origami: note: %s\n", s.note.c_str());
  }
  // Only ranks free to run on every core share them out: one the launcher bound to some cores
  // (a mask narrower than the machine) keeps what it was given.
  cpu_set_t cpus;
  const int online = int(sysconf(_SC_NPROCESSORS_ONLN));
  const bool unbound = sched_getaffinity(0, sizeof cpus, &cpus) == 0 && CPU_COUNT(&cpus) == online;
  const int cores = unbound ? online : 0;
  const int local = le.local_size.value_or(1);
  if (const int threads = openmp_threads_per_rank(env, local, cores, omp_get_max_threads())) {
    omp_set_num_threads(threads);
    if (rank0)
      std::fprintf(stderr,
                   "origami: note: %d ranks share the %d cores of this node: %d OpenMP thread(s) "
                   "each (set OMP_NUM_THREADS to choose)\n",
                   local, cores, threads);
  }
  return settings;
}

std::vector<int> openmp_thread_cpus(const Environment& env, const std::vector<int>& allowed,
                                    int online, int local_rank, int local_size, int threads) {
  for (const char* v : {"OMP_PROC_BIND", "OMP_PLACES", "GOMP_CPU_AFFINITY"})
    if (env.count(v)) return {};
  const int n = int(allowed.size());
  if (threads < 2 || threads > n) return {};
  int first = 0;
  if (n == online) {  // unbound: this rank's own share of the node
    if (local_rank < 0 || local_size < 1 || int64_t(local_size) * threads > n) return {};
    first = local_rank * threads;
  }
  return std::vector<int>(allowed.begin() + first, allowed.begin() + first + threads);
}

std::vector<int> bind_openmp_threads() {
  cpu_set_t mask;
  if (sched_getaffinity(0, sizeof mask, &mask) != 0) return {};
  std::vector<int> allowed;
  for (int c = 0; c < CPU_SETSIZE; ++c)
    if (CPU_ISSET(c, &mask)) allowed.push_back(c);
  const Environment env = current_environment();
  int local_rank = 0, local_size = 1;
  try {
    const LaunchEnvironment le = read_launch_environment(env);
    local_rank = le.local_rank.value_or(0);
    local_size = le.local_size.value_or(1);
  } catch (const std::exception&) {
    return {};  // a malformed launch environment is reported where the world is read
  }
  const int threads = omp_get_max_threads();
  const std::vector<int> cpus = openmp_thread_cpus(env, allowed, int(sysconf(_SC_NPROCESSORS_ONLN)),
                                                   local_rank, local_size, threads);
  if (cpus.empty()) return {};
  std::atomic<int> bound{0};
#pragma omp parallel num_threads(threads)
  {
    cpu_set_t one;
    CPU_ZERO(&one);
    CPU_SET(cpus[size_t(omp_get_thread_num())], &one);
    if (omp_get_num_threads() == threads &&
        pthread_setaffinity_np(pthread_self(), sizeof one, &one) == 0)
      ++bound;
  }
  if (bound != threads) {  // undo a partial binding: every thread may run anywhere again
#pragma omp parallel num_threads(threads)
    pthread_setaffinity_np(pthread_self(), sizeof mask, &mask);
    return {};
  }
  return cpus;
}

}  // namespace origami
