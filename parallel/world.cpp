#include "parallel/world.h"

#include <mpi.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <cstdlib>
#include <sstream>

#include "parallel/mpi_environment.h"
#include "runtime/error.h"

extern char** environ;

namespace origami {
namespace {

// One launcher family: the variable names of each field ("" when the family has none).
struct Family {
  const char* launcher;
  const char* rank;
  const char* world_size;
  const char* local_rank;
  const char* local_size;
  const char* node;
  const char* num_nodes;
};

// The order of docs/launch.md, "Which rank am I". Slurm's local size is special (compressed lists).
constexpr Family kFamilies[] = {
    {"torchrun", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", ""},
    {"openmpi", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK",
     "OMPI_COMM_WORLD_LOCAL_SIZE", "", ""},
    {"mpich", "PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID", "MPI_LOCALNRANKS", "", ""},
    {"slurm", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID", "", "SLURM_NODEID", "SLURM_NNODES"},
    {"pmix", "PMIX_RANK", "", "", "", "", ""},
};

const std::string* find(const Environment& env, const char* name) {
  if (!name || !*name) return nullptr;
  auto it = env.find(name);
  return it == env.end() ? nullptr : &it->second;
}

int parse_int(const std::string& text, const char* what) {
  errno = 0;
  char* end = nullptr;
  const long v = std::strtol(text.c_str(), &end, 10);
  ORIGAMI_CHECK(!text.empty() && end && *end == '\0' && errno == 0 && v >= 0 && v <= INT_MAX,
                "launch environment: ", what, "='", text, "' is not a non-negative integer");
  return int(v);
}

// Reads one variable into `field` (when set), recording it for messages.
void read_var(const Environment& env, const char* name, std::optional<int>& field,
              std::vector<std::string>& variables) {
  const std::string* v = find(env, name);
  if (!v) return;
  field = parse_int(*v, name);
  variables.push_back(std::string(name) + "=" + *v);
}

std::string host_name() {
  char buf[256] = {0};
  if (gethostname(buf, sizeof buf - 1) != 0) return "unknown";
  return buf;
}

}  // namespace

std::string World::str() const {
  std::ostringstream os;
  os << "rank " << rank << "/" << world_size << " (local " << local_rank << "/" << local_size
     << ", node ";
  if (node >= 0) {
    os << node;
  } else {
    os << "?";
  }
  os << "/";
  if (num_nodes >= 0) {
    os << num_nodes;
  } else {
    os << "?";
  }
  os << ", host " << (hostname.empty() ? "?" : hostname) << ", " << device.str() << ", from "
     << launcher << ")";
  return os.str();
}

Environment current_environment() {
  Environment env;
  for (char** e = environ; e && *e; ++e) {
    const std::string kv = *e;
    const size_t eq = kv.find('=');
    if (eq == std::string::npos) continue;
    env.emplace(kv.substr(0, eq), kv.substr(eq + 1));
  }
  return env;
}

std::vector<int> parse_slurm_tasks_per_node(const std::string& text) {
  // Items separated by ',', each "N" or "N(xK)".
  std::vector<int> out;
  size_t pos = 0;
  const auto bad = [&]() {
    ORIGAMI_FAIL("launch environment: Slurm tasks per node '", text,
                 "' is not of the form N or N(xK) joined by ','");
  };
  if (text.empty()) bad();
  while (pos <= text.size()) {
    size_t comma = text.find(',', pos);
    if (comma == std::string::npos) comma = text.size();
    const std::string item = text.substr(pos, comma - pos);
    const size_t paren = item.find('(');
    int count = 0, repeat = 1;
    if (paren == std::string::npos) {
      count = parse_int(item, "Slurm tasks per node item");
    } else {
      if (item.size() < paren + 4 || item.compare(paren, 2, "(x") != 0 || item.back() != ')') bad();
      count = parse_int(item.substr(0, paren), "Slurm tasks per node item");
      repeat = parse_int(item.substr(paren + 2, item.size() - paren - 3), "Slurm repeat count");
    }
    if (count < 1 || repeat < 1) bad();
    out.insert(out.end(), size_t(repeat), count);
    pos = comma + 1;
    if (comma == text.size()) break;
  }
  return out;
}

LaunchEnvironment read_launch_environment(const Environment& env, const WorldOverrides& overrides) {
  LaunchEnvironment le;
  for (const Family& f : kFamilies) {
    if (!find(env, f.rank)) continue;
    le.launcher = f.launcher;
    read_var(env, f.rank, le.rank, le.variables);
    read_var(env, f.world_size, le.world_size, le.variables);
    read_var(env, f.local_rank, le.local_rank, le.variables);
    read_var(env, f.local_size, le.local_size, le.variables);
    read_var(env, f.node, le.node, le.variables);
    read_var(env, f.num_nodes, le.num_nodes, le.variables);
    if (le.launcher == std::string("slurm")) {
      // Tasks on this node: the per-node list, read at this node's id. A single entry (or one
      // value repeated) holds for every node even without SLURM_NODEID.
      for (const char* name :
           {"SLURM_NTASKS_PER_NODE", "SLURM_STEP_TASKS_PER_NODE", "SLURM_TASKS_PER_NODE"}) {
        const std::string* v = find(env, name);
        if (!v) continue;
        le.variables.push_back(std::string(name) + "=" + *v);
        const std::vector<int> per_node = parse_slurm_tasks_per_node(*v);
        bool uniform = true;
        for (int c : per_node) uniform = uniform && c == per_node[0];
        if (le.node) {
          // --ntasks-per-node gives one number for every node.
          if (per_node.size() == 1) {
            le.local_size = per_node[0];
          } else {
            ORIGAMI_CHECK(size_t(*le.node) < per_node.size(),
                          "launch environment: SLURM_NODEID=", *le.node, " but ", name, "='", *v,
                          "' lists only ", per_node.size(), " node(s)");
            le.local_size = per_node[size_t(*le.node)];
          }
        } else if (uniform) {
          le.local_size = per_node[0];
        }
        break;
      }
    }
    break;
  }
  // Explicit values win.
  bool any_override = false;
  const auto apply = [&](const std::optional<int>& v, std::optional<int>& field) {
    if (v) {
      field = *v;
      any_override = true;
    }
  };
  apply(overrides.rank, le.rank);
  apply(overrides.world_size, le.world_size);
  apply(overrides.local_rank, le.local_rank);
  apply(overrides.local_size, le.local_size);
  apply(overrides.node, le.node);
  if (any_override && le.launcher == "single") le.launcher = "explicit";

  // Ranges.
  const auto where = [&]() {
    std::string s;
    for (const auto& v : le.variables) s += (s.empty() ? "" : ", ") + v;
    return s.empty() ? std::string("explicit values") : s;
  };
  if (le.world_size) {
    ORIGAMI_CHECK(*le.world_size >= 1, "launch environment: world size 0 (", where(), ")");
    if (le.rank)
      ORIGAMI_CHECK(*le.rank < *le.world_size, "launch environment: rank ", *le.rank,
                    " is not below the world size ", *le.world_size, " (", where(), ")");
    if (le.local_size)
      ORIGAMI_CHECK(*le.local_size <= *le.world_size, "launch environment: local size ",
                    *le.local_size, " exceeds the world size ", *le.world_size, " (", where(), ")");
  }
  if (le.local_size) {
    ORIGAMI_CHECK(*le.local_size >= 1, "launch environment: local size 0 (", where(), ")");
    if (le.local_rank)
      ORIGAMI_CHECK(*le.local_rank < *le.local_size, "launch environment: local rank ",
                    *le.local_rank, " is not below the local size ", *le.local_size, " (", where(),
                    ")");
  }
  if (le.node && le.num_nodes)
    ORIGAMI_CHECK(*le.node < *le.num_nodes, "launch environment: node ", *le.node,
                  " is not below the node count ", *le.num_nodes, " (", where(), ")");
  return le;
}

Device device_for_local_rank(int local_rank, int visible_cuda_devices) {
  if (visible_cuda_devices <= 0) return Device::cpu();
  return Device::cuda(local_rank % visible_cuda_devices);
}

World world_from_environment(const Environment& env, const WorldOverrides& overrides,
                             int visible_cuda_devices) {
  const LaunchEnvironment le = read_launch_environment(env, overrides);
  World w;
  w.launcher = le.launcher;
  w.hostname = overrides.hostname ? *overrides.hostname : host_name();
  std::string vars;
  for (const auto& v : le.variables) vars += " " + v;
  if (!le.rank && !le.world_size) {
    // No launcher: a single process.
    w.rank = 0;
    w.world_size = 1;
  } else {
    ORIGAMI_CHECK(le.world_size, "launch environment (", le.launcher, ":", vars,
                  ") gives the rank but not the world size: start the program under MPI "
                  "(world_from_mpi derives it) or set WORLD_SIZE");
    ORIGAMI_CHECK(le.rank, "launch environment (", le.launcher, ":", vars,
                  ") gives the world size but not the rank: set RANK");
    w.rank = *le.rank;
    w.world_size = *le.world_size;
  }
  if (le.local_rank) {
    w.local_rank = *le.local_rank;
  } else {
    ORIGAMI_CHECK(w.world_size == 1, "launch environment (", le.launcher, ":", vars,
                  ") gives no local rank for a world of ", w.world_size,
                  " ranks: start the program under MPI (world_from_mpi derives it with "
                  "MPI_Comm_split_type) or set LOCAL_RANK");
    w.local_rank = 0;
  }
  if (le.local_size) {
    w.local_size = *le.local_size;
  } else {
    ORIGAMI_CHECK(w.world_size == 1, "launch environment (", le.launcher, ":", vars,
                  ") gives no local size for a world of ", w.world_size,
                  " ranks: start the program under MPI or set LOCAL_WORLD_SIZE");
    w.local_size = 1;
  }
  ORIGAMI_CHECK(w.local_rank < w.local_size, "launch environment: local rank ", w.local_rank,
                " is not below the local size ", w.local_size);
  // The node id is known from the environment (Slurm, torchrun) or, on one node, trivially.
  if (le.node) {
    w.node = *le.node;
    w.num_nodes = le.num_nodes ? *le.num_nodes : -1;
  } else if (w.local_size == w.world_size) {
    w.node = 0;
    w.num_nodes = 1;
  } else {
    w.node = -1;
    w.num_nodes = -1;
  }
  w.device = overrides.device ? *overrides.device
                              : device_for_local_rank(w.local_rank, visible_cuda_devices);
  return w;
}

// ---- MPI ----------------------------------------------------------------------------------------

namespace {
bool g_we_initialized_mpi = false;
}

int ensure_mpi_initialized() {
  int initialized = 0, finalized = 0;
  MPI_Initialized(&initialized);
  MPI_Finalized(&finalized);
  ORIGAMI_CHECK(!finalized, "MPI was already finalised in this process; it cannot start again");
  int provided = 0;
  if (!initialized) {
    prepare_mpi_environment();
    ORIGAMI_CHECK(MPI_Init_thread(nullptr, nullptr, MPI_THREAD_MULTIPLE, &provided) == MPI_SUCCESS,
                  "MPI_Init_thread failed");
    g_we_initialized_mpi = true;
  } else {
    MPI_Query_thread(&provided);
  }
  return provided;
}

void finalize_mpi() {
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (g_we_initialized_mpi && !finalized) MPI_Finalize();
  g_we_initialized_mpi = false;
}

MpiSession::MpiSession(int* argc, char*** argv) {
  int initialized = 0;
  MPI_Initialized(&initialized);
  if (initialized) {
    MPI_Query_thread(&thread_level_);
    return;
  }
  prepare_mpi_environment();
  ORIGAMI_CHECK(MPI_Init_thread(argc, argv, MPI_THREAD_MULTIPLE, &thread_level_) == MPI_SUCCESS,
                "MPI_Init_thread failed");
  owns_ = true;
}

MpiSession::~MpiSession() {
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (owns_ && !finalized) MPI_Finalize();
}

World world_from_mpi(const WorldOverrides& overrides) {
  return world_from_mpi(current_environment(), overrides, cuda_device_count());
}

World world_from_mpi(const Environment& env, const WorldOverrides& overrides,
                     int visible_cuda_devices) {
  ensure_mpi_initialized();
  // Parse first but report afterwards: every rank must reach the collective calls below.
  std::string problem;
  LaunchEnvironment le;
  try {
    le = read_launch_environment(env, overrides);
  } catch (const Error& e) {
    problem = e.what();
  }

  int rank = 0, size = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  MPI_Comm local = MPI_COMM_NULL, leaders = MPI_COMM_NULL;
  MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, rank, MPI_INFO_NULL, &local);
  int local_rank = 0, local_size = 1;
  MPI_Comm_rank(local, &local_rank);
  MPI_Comm_size(local, &local_size);
  MPI_Comm_split(MPI_COMM_WORLD, local_rank == 0 ? 0 : MPI_UNDEFINED, rank, &leaders);
  int node_info[2] = {0, 1};  // node id, node count
  if (leaders != MPI_COMM_NULL) {
    MPI_Comm_rank(leaders, &node_info[0]);
    MPI_Comm_size(leaders, &node_info[1]);
    MPI_Comm_free(&leaders);
  }
  MPI_Bcast(node_info, 2, MPI_INT, 0, local);
  MPI_Comm_free(&local);

  std::string vars;
  for (const auto& v : le.variables) vars += (vars.empty() ? "" : ", ") + v;
  const std::string source =
      vars.empty() ? std::string("explicit values") : le.launcher + " variables " + vars;
  const auto disagree = [&](const char* what, int env_value, int mpi_value) {
    if (!problem.empty()) return;
    std::ostringstream os;
    os << "world: " << source << " give " << what << " " << env_value << " but MPI says "
       << mpi_value
       << ": the program was started by another launcher than these variables describe (for "
          "example stale SLURM_* variables inside mpirun). Start it with one launcher, unset the "
          "stale variables, or pass the values explicitly";
    problem = os.str();
  };
  if (le.rank && *le.rank != rank) disagree("rank", *le.rank, rank);
  if (le.world_size && *le.world_size != size) disagree("world size", *le.world_size, size);
  // Local values from the environment must match the shared-memory split; explicit ones win
  // unchecked (they may describe a simulated multi-node layout).
  if (le.local_rank && !overrides.local_rank && *le.local_rank != local_rank)
    disagree("local rank", *le.local_rank, local_rank);
  if (le.local_size && !overrides.local_size && *le.local_size != local_size)
    disagree("local size", *le.local_size, local_size);

  // Fail together: one rank's problem would otherwise leave the others waiting.
  int bad = problem.empty() ? 0 : 1, any_bad = 0;
  MPI_Allreduce(&bad, &any_bad, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  if (any_bad) {
    if (!problem.empty()) throw Error(problem);
    ORIGAMI_FAIL("world: discovery failed on another rank (see its message); rank ", rank,
                 " found nothing wrong");
  }

  World w;
  w.rank = rank;
  w.world_size = size;
  w.local_rank = overrides.local_rank ? *overrides.local_rank : local_rank;
  w.local_size = overrides.local_size ? *overrides.local_size : local_size;
  w.node = overrides.node ? *overrides.node : node_info[0];
  w.num_nodes = overrides.node ? -1 : node_info[1];
  w.hostname = overrides.hostname ? *overrides.hostname : host_name();
  w.launcher = le.launcher == "single" ? std::string("mpi") : le.launcher;
  w.device = overrides.device ? *overrides.device
                              : device_for_local_rank(w.local_rank, visible_cuda_devices);
  return w;
}

}  // namespace origami
