// World: who this process is among the ranks of a run, and which device it uses.
//
// Discovery order (explicit values always win, field by field):
//   1. explicit values (command-line flags, WorldOverrides)
//   2. the first launcher family whose rank variable is set, in this order:
//        torchrun / origami launch   RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE (GROUP_RANK)
//        Open MPI                    OMPI_COMM_WORLD_RANK, _SIZE, _LOCAL_RANK, _LOCAL_SIZE
//        MPICH / Hydra               PMI_RANK, PMI_SIZE, MPI_LOCALRANKID, MPI_LOCALNRANKS
//        Slurm                       SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID,
//                                    SLURM_NTASKS_PER_NODE (or SLURM_STEP_TASKS_PER_NODE /
//                                    SLURM_TASKS_PER_NODE, "2(x3),1" form, read at SLURM_NODEID)
//        PMIx                        PMIX_RANK (rank only)
//      Only that one family is read: variables of other launchers are often stale (an `mpirun`
//      inside an `sbatch` script inherits the batch step's SLURM_PROCID).
//   3. MPI (world_from_mpi): rank and size of MPI_COMM_WORLD, the local rank from
//      MPI_Comm_split_type(MPI_COMM_TYPE_SHARED), the node id from the node leaders. The values
//      the environment gave are checked against MPI.
//
// The device is CUDA device (local rank mod visible device count) -- never the global rank -- or
// the CPU when no CUDA device is visible. The visible count is what the CUDA runtime reports, so
// CUDA_VISIBLE_DEVICES is respected.
#pragma once

#include <map>
#include <optional>
#include <string>
#include <vector>

#include "runtime/device.h"

namespace origami {

struct World {
  int rank = 0;  // global rank, 0 <= rank < world_size
  int world_size = 1;
  int local_rank = 0;  // rank among the processes of this node
  int local_size = 1;  // processes on this node
  int node = 0;        // node id, 0 <= node < num_nodes; -1 when unknown (environment only)
  int num_nodes = 1;   // -1 when unknown
  std::string hostname;
  Device device;         // the device this rank computes on
  std::string launcher;  // where the values came from: "explicit", "torchrun", "openmpi",
                         // "mpich", "slurm", "pmix", "mpi" or "single" (no launcher)

  bool is_root() const { return rank == 0; }
  // "rank 3/8 (local 1/2, node 1/4, host n01, cuda:1, from slurm)"
  std::string str() const;
};

// Values given on the command line; each one present wins over the environment.
struct WorldOverrides {
  std::optional<int> rank, world_size, local_rank, local_size, node;
  std::optional<Device> device;
  std::optional<std::string> hostname;
};

using Environment = std::map<std::string, std::string>;
// The variables of this process (environ).
Environment current_environment();

// What the launch environment says about this process. Every field is optional: PMIx gives only
// the rank, Slurm may not say how many tasks run on this node, and so on.
struct LaunchEnvironment {
  std::string launcher = "single";  // see World::launcher
  std::optional<int> rank, world_size, local_rank, local_size, node, num_nodes;
  std::vector<std::string> variables;  // "NAME=value" of every variable read, for messages
};

// Pure: reads `env` (and nothing else) as described above, then applies `overrides`. Throws
// origami::Error naming the variable when a value is not a number or is out of range.
LaunchEnvironment read_launch_environment(const Environment& env,
                                          const WorldOverrides& overrides = {});

// Pure except for the host name (gethostname when not overridden): the World from the
// environment alone, for runs without MPI. `visible_cuda_devices` is the count the CUDA runtime
// reports (cuda_device_count()). Throws when the environment gives a rank without a world size or
// a world size > 1 without a local rank; world_from_mpi can derive those.
World world_from_environment(const Environment& env, const WorldOverrides& overrides = {},
                             int visible_cuda_devices = 0);

// The device of a rank: cuda(local_rank % visible) or the CPU when nothing is visible.
Device device_for_local_rank(int local_rank, int visible_cuda_devices);

// Parses Slurm's compressed task counts ("2(x3),1" -> {2,2,2,1}); throws on malformed text.
std::vector<int> parse_slurm_tasks_per_node(const std::string& text);

// Initialises MPI when nobody has (MPI_Init_thread asking for MPI_THREAD_MULTIPLE, after
// prepare_mpi_environment, parallel/mpi_environment.h); returns the thread level provided.
// finalize_mpi() finalises it if this process initialised it here.
int ensure_mpi_initialized();
void finalize_mpi();

// Owns MPI for a program's main(): initialises on construction (as ensure_mpi_initialized does),
// finalises on destruction.
class MpiSession {
 public:
  MpiSession(int* argc, char*** argv);
  ~MpiSession();
  MpiSession(const MpiSession&) = delete;
  MpiSession& operator=(const MpiSession&) = delete;
  int thread_level() const { return thread_level_; }

 private:
  int thread_level_ = 0;
  bool owns_ = false;
};

// The World from the environment completed and checked by MPI over MPI_COMM_WORLD (initialising
// MPI if needed). Collective: every rank must call it. Throws origami::Error when the environment
// and MPI disagree (say, stale SLURM_* variables in a program started by mpirun).
World world_from_mpi(const WorldOverrides& overrides = {});
World world_from_mpi(const Environment& env, const WorldOverrides& overrides,
                     int visible_cuda_devices);

}  // namespace origami
