// The rank supervisor behind `origami launch` (docs/launch.md).
//
// One machine: the supervisor runs Open MPI's `mpirun` (inside a Slurm allocation: `srun`), which
// starts N copies of a small per-rank wrapper (`origami launch --rank-wrapper`). Each wrapper
// starts the real rank (`origami SUBCOMMAND ...`) as its child, so the rank is an ordinary MPI
// process of mpirun's job (host collectives work), and the wrapper
//   - prefixes every output line with "[rN] " (or writes it to <log-dir>/rank_N.log),
//   - keeps the last lines of the rank's error output,
//   - writes two small JSON records into a control folder the supervisor watches: start_N.json
//     (pids, host) and, when the rank ends, exit_N.json (exit status or signal, the time, the
//     tail).
// The supervisor polls that folder; the first rank that exits non-zero or dies of a signal makes it
// stop the others (SIGTERM, a grace period, SIGKILL; then mpirun itself), and it ends with a
// summary naming that rank, how it ended and its last error lines. Nothing outlives the launcher:
// mpirun runs in its own process group, the supervisor is a child subreaper (orphans come back to
// it and are killed), ranks die with their wrapper (PR_SET_PDEATHSIG) and mpirun gets SIGTERM if
// the supervisor dies.
//
// Preemption: SIGTERM, SIGUSR1 (or SIGINT, SIGHUP, SIGUSR2) to the supervisor is passed on to
// every rank (to srun under Slurm) as SIGUSR1 or SIGTERM; `origami train` checkpoints at the next
// step boundary and exits 0. A second signal stops the job at once.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace origami::launch {

struct SupervisorOptions {
  int nproc = 1;
  std::string launcher = "auto";  // auto (srun when SLURM_JOB_ID is set, else mpirun), mpirun, srun
  std::string mpirun = "mpirun";  // the executables
  std::string srun = "srun";
  std::vector<std::string> launcher_args;  // extra arguments for mpirun / srun
  std::string log_dir;                     // one log per rank; empty: prefixed console output
  double grace_s = 5;                      // SIGTERM -> SIGKILL delay when stopping ranks
  int tail_lines = 20;                     // error lines kept per rank for the summary
  std::string omp_threads = "auto";        // OMP_NUM_THREADS per rank when not set already
  std::string self_exe;                    // the origami binary
  std::vector<std::string> command;        // SUBCOMMAND ARGS...
};

// Runs the job to its end; returns the launcher's exit code (0 when every rank exited 0).
int supervise(const SupervisorOptions& options);

struct RankWrapperOptions {
  std::string control_dir;  // where start_N.json / exit_N.json go
  std::string log_dir;      // empty: prefixed lines on stdout / stderr
  double grace_s = 5;
  int tail_lines = 20;
  std::string self_exe;
  std::vector<std::string> command;
};

// One rank under mpirun / srun: starts `self_exe command...` and reports on it. Returns the
// rank's exit status (128 + signal when it died of one).
int run_rank_wrapper(const RankWrapperOptions& options);

// What became of one rank, as its wrapper reported it.
struct RankRecord {
  int rank = -1;
  bool started = false;  // start_N.json seen
  bool ended = false;    // exit_N.json seen
  int64_t pid = 0, wrapper_pid = 0;
  std::string host;
  int exit_code = 0;                 // when it exited
  int signal = 0;                    // when a signal killed it (then exit_code is unused)
  int64_t start_ns = 0, end_ns = 0;  // CLOCK_REALTIME
  bool asked_to_stop = false;        // its wrapper had been asked to stop it before it ended
  std::vector<std::string> tail;     // last lines of its error output

  bool failed() const { return ended && (exit_code != 0 || signal != 0); }
};

// The rank that failed first on its own account: among the failed ranks, those not killed by
// SIGTERM / SIGKILL (what stopping a job sends) and not exiting with kExitStoppedForOtherRanks
// (stopped because others failed before the first step) when there are any, then the earliest
// end, then the lowest rank. -1 when no rank failed.
int primary_failure(const std::vector<RankRecord>& ranks);

// "exited with status 1", "killed by SIGABRT (signal 6)", "still running", "never started".
std::string describe_end(const RankRecord& r);

// "SIGTERM" for 15.
std::string signal_name(int sig);

// The launcher to use: "mpirun" or "srun" (auto: srun when in_slurm). Throws on other names.
std::string resolve_launcher(const std::string& requested, bool in_slurm);

// The command line that starts the wrappers: mpirun / srun, its options, then
// `self_exe launch --rank-wrapper ... -- command...`.
std::vector<std::string> launcher_command(const SupervisorOptions& options,
                                          const std::string& launcher,
                                          const std::string& control_dir);

// Splits a byte stream into lines (without their '\n'); a line longer than `max_line` bytes is
// cut into pieces of that size.
class LineSplitter {
 public:
  explicit LineSplitter(size_t max_line = 1 << 16) : max_line_(max_line) {}
  // Appends bytes; returns the complete lines they finish.
  std::vector<std::string> feed(const char* data, size_t n);
  // The unfinished last line, if any (at end of stream).
  std::vector<std::string> finish();

 private:
  size_t max_line_;
  std::string partial_;
};

}  // namespace origami::launch
