// origami launch -n N [options] [--] SUBCOMMAND ARGS...: N ranks on this machine (or the Slurm
// allocation), supervised (launcher/supervisor.h, docs/launch.md).
#include <unistd.h>

#include <cctype>
#include <climits>
#include <cstdlib>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "launcher/commands.h"
#include "launcher/flags.h"
#include "launcher/supervisor.h"
#include "runtime/error.h"

namespace origami::cli {

namespace {

std::string self_executable() {
  char buf[PATH_MAX] = {};
  const ssize_t n = readlink("/proc/self/exe", buf, sizeof buf - 1);
  ORIGAMI_CHECK(n > 0, "cannot find the origami executable (/proc/self/exe)");
  return std::string(buf, size_t(n));
}

std::vector<std::string> split_words(const std::string& s) {
  std::istringstream is(s);
  std::vector<std::string> out;
  for (std::string w; is >> w;) out.push_back(w);
  return out;
}

// The per-rank wrapper mpirun / srun starts: `origami launch --rank-wrapper [options] -- CMD`.
int rank_wrapper(int argc, char** argv) {
  Flags flags("launch --rank-wrapper", "[options] -- SUBCOMMAND ARGS...",
              "Internal: one rank of 'origami launch' (started by mpirun or srun).");
  flags.add("control-dir", "", "folder for the start and exit records the supervisor reads");
  flags.add("log-dir", "", "write the rank's output to <log-dir>/rank_N.log");
  flags.add("grace-s", "5", "seconds between SIGTERM and SIGKILL when orphaned");
  flags.add("tail-lines", "20", "error lines kept for the supervisor's summary");
  if (!flags.parse(argc, argv)) return 0;
  launch::RankWrapperOptions o;
  o.control_dir = flags.get("control-dir");
  ORIGAMI_CHECK(!o.control_dir.empty(), "--rank-wrapper needs --control-dir");
  o.log_dir = flags.get("log-dir");
  o.grace_s = flags.get_double("grace-s");
  o.tail_lines = int(flags.get_int("tail-lines"));
  o.self_exe = self_executable();
  o.command = flags.positional();
  ORIGAMI_CHECK(!o.command.empty(), "--rank-wrapper needs a command after --");
  return launch::run_rank_wrapper(o);
}

}  // namespace

int launch(int argc, char** argv) {
  if (argc >= 2 && std::string(argv[1]) == "--rank-wrapper")
    return rank_wrapper(argc - 1, argv + 1);

  Flags flags("launch", "-n N [options] [--] SUBCOMMAND [ARGS...]",
              "Starts N ranks of 'origami SUBCOMMAND ARGS...' on this machine through Open MPI's\n"
              "mpirun (inside a Slurm allocation, SLURM_JOB_ID set: through srun), with output\n"
              "prefixed by rank. When a rank exits non-zero or dies of a signal, the others are\n"
              "stopped (SIGTERM, then SIGKILL after --grace-s) and a summary names that rank, how\n"
              "it ended and its last error lines. SIGTERM / SIGUSR1 / Ctrl-C to the launcher are\n"
              "passed on to the ranks ('origami train' saves a checkpoint at the next step and\n"
              "exits 0); a second one stops them at once. See docs/launch.md.\n"
              "\n"
              "example: origami launch -n 4 -- train configs/demo/tiny_dense.pbtxt --tp 2");
  flags.add("nproc", "1", "number of ranks (also -n N)");
  flags.add("log-dir", "", "one log per rank, <log-dir>/rank_N.log, instead of prefixed output");
  flags.add("grace-s", "5", "seconds between SIGTERM and SIGKILL when stopping ranks");
  flags.add("tail-lines", "20", "lines of the failing rank's error output in the summary");
  flags.add("launcher", "auto",
            "what starts the ranks: mpirun, srun, or auto (srun when SLURM_JOB_ID is set)");
  flags.add("mpirun", "mpirun", "the Open MPI mpirun executable");
  flags.add("srun", "srun", "the Slurm srun executable");
  flags.add("launcher-args", "",
            "extra arguments for mpirun / srun, split at spaces (e.g. \"--overcommit\")");
  flags.add("omp-threads", "auto",
            "OMP_NUM_THREADS of each rank when not set: a number, or auto (cores / N)");

  // Launch options come first; the first word that is not one of them (or what follows "--")
  // starts the command, whose own flags are left alone.
  const std::set<std::string> takes_value = {"nproc",      "log-dir",       "grace-s",
                                             "tail-lines", "launcher",      "mpirun",
                                             "srun",       "launcher-args", "omp-threads"};
  std::vector<std::string> own = {argv[0]};
  std::vector<std::string> command;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--") {
      command.assign(argv + i + 1, argv + argc);
      break;
    }
    if (a == "-n" || a == "-np") {
      ORIGAMI_CHECK(i + 1 < argc, a, " needs a value (see 'origami launch --help')");
      own.push_back("--nproc=" + std::string(argv[++i]));
      continue;
    }
    if (a.rfind("-n", 0) == 0 && a.size() > 2 && std::isdigit(static_cast<unsigned char>(a[2]))) {
      own.push_back("--nproc=" + a.substr(2));
      continue;
    }
    if (a == "-h" || (a.rfind("--", 0) == 0 && a.size() > 2)) {
      own.push_back(a);
      const std::string name = a.substr(2);
      if (name.find('=') == std::string::npos && takes_value.count(name) && i + 1 < argc)
        own.push_back(argv[++i]);
      continue;
    }
    command.assign(argv + i, argv + argc);
    break;
  }
  std::vector<char*> own_argv;
  for (std::string& s : own) own_argv.push_back(s.data());
  if (!flags.parse(int(own_argv.size()), own_argv.data())) return 0;
  ORIGAMI_CHECK(flags.positional().empty(), "origami launch: unexpected '",
                flags.positional().empty() ? "" : flags.positional()[0], "'");

  launch::SupervisorOptions o;
  o.nproc = int(flags.get_int("nproc"));
  o.log_dir = flags.get("log-dir");
  o.grace_s = flags.get_double("grace-s");
  o.tail_lines = int(flags.get_int("tail-lines"));
  o.launcher = flags.get("launcher");
  o.mpirun = flags.get("mpirun");
  o.srun = flags.get("srun");
  o.launcher_args = split_words(flags.get("launcher-args"));
  o.omp_threads = flags.get("omp-threads");
  o.self_exe = self_executable();
  o.command = command;
  ORIGAMI_CHECK(command.empty() || command[0] != "launch",
                "origami launch cannot launch itself; give the subcommand to run, e.g. train");
  return launch::supervise(o);
}

}  // namespace origami::cli
