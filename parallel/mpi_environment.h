// Settings the MPI library needs on this machine, made in this process before MPI_Init, so that
// `mpirun -np 8 origami train ...` works as written, with no OMPI_MCA_* variables (or
// OMP_NUM_THREADS) to know about.
//
// Open MPI reads its MCA parameters from OMPI_MCA_<name> variables at MPI_Init; a variable the
// user (or mpirun --mca, which sets them) already gave always wins and is never changed here.
// Two traps of Open MPI on one node are handled:
//
//  - osc/rdma window files (Open MPI before 5.0). MPI_Win_allocate through osc/rdma puts the
//    window of the ranks on one node into a shared-memory file named after the communicator's
//    context id -- and every group one MPI_Comm_split makes gets the same id. Groups on the same
//    node that allocate windows at the same moment (each communicator's arrival records,
//    parallel/mpi_communicator.h) then share one file name: some ranks fail with "unlink(2)
//    /dev/shm/osc_rdma..." and MPI_ERR_WIN (open-mpi/ompi#9492, fixed in 5.0 by #9495). osc/rdma
//    is chosen only when the shared-memory transport can do single-copy transfers, which is why
//    OMPI_MCA_btl_vader_single_copy_mechanism=none used to hide it. Fix: OMPI_MCA_osc=^rdma
//    (windows then use osc/sm on one node, osc/pt2pt or osc/ucx across nodes; the data path is
//    unchanged, and windows only hold the arrival records).
//  - cross-memory attach (process_vm_readv), the single-copy path of Open MPI's shared-memory
//    transport, is forbidden in many containers (no ptrace permission between processes). Open
//    MPI does not notice before the first large transfer fails. Fix, when a probe between two
//    sibling processes fails: OMPI_MCA_btl_vader_single_copy_mechanism=none (btl_sm_... from 5.0).
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "parallel/world.h"

namespace origami {

struct MpiSetting {
  std::string variable;  // "OMPI_MCA_osc"
  std::string value;     // "^rdma"
  std::string note;      // a line for the user when the setting changes what they would see, or ""
};

// Pure: what to set for the MPI library `library_version` (MPI_Get_library_version's text, e.g.
// "Open MPI v4.1.4, ...") given the environment `env`. `cross_memory_attach_works` is called only
// when its answer matters (Open MPI, and the single-copy mechanism not chosen by the user).
std::vector<MpiSetting> mpi_settings_needed(const Environment& env,
                                            const std::string& library_version,
                                            const std::function<bool()>& cross_memory_attach_works);

// Pure: the OpenMP threads each rank should use when `local_size` ranks share the `cores` of the
// node: cores / local_size (at least 1) when that is fewer than `threads_now`, else 0 (leave
// them). 0 too when OMP_NUM_THREADS is set in `env` (the user chose) or cores is 0 (the launcher
// bound each rank to its own cores). Every rank running
// as many threads as the node has cores would starve them all: 8 ranks x 2 threads on 2 cores ran
// the README's 8-rank command 17x slower per step than 1 thread each.
int openmp_threads_per_rank(const Environment& env, int local_size, int cores, int threads_now);

// Pure: the CPUs the `threads` OpenMP threads of local rank `local_rank` (of `local_size` on this
// node) should be bound to, one each (thread t to element t), from `allowed`: the CPUs this process
// may run on, in order, of the `online` CPUs of the node. Empty (leave placement to the OS) when
// `env` sets OMP_PROC_BIND, OMP_PLACES or GOMP_CPU_AFFINITY (the user chose), when threads < 2
// (nothing to place), or when there are not enough CPUs for one each:
//  - `allowed` is every online CPU (the launcher did not bind this rank): the rank takes its own
//    consecutive `threads` of them, allowed[local_rank * threads ...], so that ranks sharing the
//    node do not share CPUs; empty when local_size * threads exceeds them.
//  - `allowed` is narrower (the launcher bound this rank to some CPUs): its first `threads`.
// Why bind at all: a worker that has gone to sleep between requests is woken onto the CPU of the
// thread that woke it, where that thread then spins at the region's barrier for the length of
// OpenMP's spin count (about 8 ms with libgomp's defaults on the development machine) before the
// worker gets to run: every first step after a pause took twice its time or more.
std::vector<int> openmp_thread_cpus(const Environment& env, const std::vector<int>& allowed,
                                    int online, int local_rank, int local_size, int threads);

// Binds the OpenMP threads of the calling thread (it is thread 0; omp_get_max_threads() in all)
// to the CPUs of openmp_thread_cpus for this process (this environment, affinity mask and launch
// environment). Returns the CPUs, or an empty vector when it left the threads alone. Threads the
// calling thread starts afterwards inherit its one CPU: start them before.
std::vector<int> bind_openmp_threads();

// Whether one process may read another's memory with process_vm_readv the way two ranks on a node
// do: two sibling processes forked here, the target allowing any tracer (as Open MPI sets itself
// up under Yama). True when the probe cannot run at all (fork fails): nothing is changed then.
bool cross_memory_attach_works();

// Before MPI_Init: applies mpi_settings_needed for this process (setenv) and returns what it set,
// and sets the OpenMP threads of openmp_threads_per_rank (the local size from the launch
// environment). Does nothing once MPI is initialised. Rank 0 of the launch environment prints
// the notes.
std::vector<MpiSetting> prepare_mpi_environment();

}  // namespace origami
