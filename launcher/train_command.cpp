// origami train CONFIG [options]
#include <mpi.h>
#include <unistd.h>

#include <csignal>
#include <cstdio>
#include <optional>
#include <string>
#include <vector>

#include "launcher/commands.h"
#include "launcher/flags.h"
#include "launcher/trainer.h"
#include "parallel/startup_agreement.h"
#include "parallel/world.h"
#include "runtime/config.h"
#include "runtime/error.h"

namespace origami::cli {

namespace {

// The first stop signal received (0: none). Set by the handler, read at step boundaries.
volatile std::sig_atomic_t g_stop_signal = 0;

void on_stop_signal(int sig) {
  if (g_stop_signal == 0) g_stop_signal = sig;
  // A second Ctrl-C ends the process at once.
  if (sig == SIGINT) std::signal(SIGINT, SIG_DFL);
}

// SIGTERM and SIGUSR1 (what Slurm, mpirun and origami launch send to preempt) and SIGINT ask for
// a checkpoint at the next step boundary. origami launch starts ranks with these signals blocked
// so one that arrives before this point waits instead of killing the rank; unblock them now.
void install_stop_handlers() {
  struct sigaction sa {};
  sa.sa_handler = on_stop_signal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;
  sigset_t set;
  sigemptyset(&set);
  for (int sig : {SIGTERM, SIGUSR1, SIGINT}) {
    sigaction(sig, &sa, nullptr);
    sigaddset(&set, sig);
  }
  sigprocmask(SIG_UNBLOCK, &set, nullptr);
}

}  // namespace

int train(int argc, char** argv) {
  Flags flags("train", "CONFIG [options]",
              "Trains the model of CONFIG (Protobuf text format, see configs/) on its data.\n"
              "Resumes from the newest checkpoint in train.checkpoint_dir when there is one.");
  flags.add_list("set", "override a config field, e.g. --set train.lr=3e-4");
  flags.add_bool("resume", true, "continue from <train.checkpoint_dir>/latest when present");
  flags.add("init-from", "", "start from this Hugging Face model folder instead of random weights");
  flags.add("export-hf", "", "write the trained model to this folder in Hugging Face layout");
  flags.add_bool("progress", true, "draw a progress bar when stderr is a terminal");
  flags.add("stop-after", "-1", "stop after this many steps of this run, saving a checkpoint");
  flags.add("tp", "", "tensor-parallel size (parallel.tp; default 1)");
  flags.add("pp", "", "pipeline-parallel stages (parallel.pp; default 1)");
  flags.add("vpp", "",
            "virtual chunks per pipeline rank, interleaved 1F1B (parallel.vpp; default 1)");
  flags.add("dp", "", "data-parallel size (parallel.dp; default: world / (tp x cp x pp))");
  flags.add("cp", "",
            "context-parallel size: sequences split over cp ranks (parallel.cp; default 1)");
  flags.add("ep", "", "expert-parallel size (parallel.ep; default 1)");
  flags.add("etp", "", "expert tensor-parallel size (parallel.etp; default: as tp)");
  flags.add_bool("zero", true, "ZeRO-1: shard the Adam state over dp (--no-zero: all-reduce)");
  flags.add_bool("sequence-parallel", false, "split the residual stream's rows over TP");
  flags.add("collective-timeout", "300", "seconds a collective may wait before the job ends");
  flags.add("fault", "",
            "TESTING ONLY: make rank R fail at step S: R:S:sleep (hang before the step's "
            "collectives), R:S:abort (die of SIGABRT mid-step) or R:S:throw (an error mid-step)");
  if (!flags.parse(argc, argv)) return 0;
  ORIGAMI_CHECK(flags.positional().size() == 1,
                "origami train needs exactly one CONFIG file (see 'origami train --help')");
  // Flags are config overrides, applied after any --set.
  std::vector<std::string> sets = flags.get_list("set");
  for (const char* f : {"tp", "pp", "vpp", "dp", "cp", "ep", "etp"})
    if (flags.given(f)) sets.push_back(std::string("parallel.") + f + "=" + flags.get(f));
  if (flags.given("zero"))
    sets.push_back(std::string("parallel.optimizer=") +
                   (flags.get_bool("zero") ? "zero1" : "allreduce"));
  if (flags.given("sequence-parallel"))
    sets.push_back(std::string("parallel.sequence_parallel=") +
                   (flags.get_bool("sequence-parallel") ? "true" : "false"));
  Config config = load_config(flags.positional()[0], sets);
  TrainOptions opt;
  opt.resume = flags.get_bool("resume");
  opt.init_from = flags.get("init-from");
  opt.export_hf = flags.get("export-hf");
  opt.progress = flags.get_bool("progress");
  opt.stop_after = flags.get_int("stop-after");
  opt.collective_timeout_s = flags.get_double("collective-timeout");
  ORIGAMI_CHECK(opt.collective_timeout_s > 0, "--collective-timeout must be > 0 seconds");
  if (!flags.get("fault").empty()) opt.fault = parse_fault(flags.get("fault"));
  install_stop_handlers();
  opt.stop_requested = [] { return int(g_stop_signal); };
  // Several ranks when a launcher says so; then MPI runs for the whole command.
  const LaunchEnvironment env = read_launch_environment(current_environment());
  opt.multi_rank = env.world_size.value_or(1) > 1;
  std::optional<MpiSession> mpi;
  if (opt.multi_rank) {
    mpi.emplace(&argc, &argv);
    // One rank failing mid-run names itself and ends the whole job: the other ranks would
    // otherwise wait in their next collective until it times out. MPI_Abort makes mpirun / srun
    // kill them.
    opt.on_fatal_error = [rank = env.rank.value_or(-1)](const std::string& what) {
      std::fprintf(stderr, "origami train: rank %d: error: %s\n", rank, what.c_str());
      std::fflush(stdout);
      std::fflush(stderr);
      MPI_Abort(MPI_COMM_WORLD, 1);
    };
  }
  try {
    train(config, opt);
  } catch (const StartupFailure& e) {
    if (!opt.multi_rank) throw;
    // Something failed before the first step, on some ranks or on all (a layout that does not
    // fit, a corrupt checkpoint piece, memory): the ranks agreed to stop together. Each rank that
    // failed prints its own error, the others name the ranks that failed.
    std::fprintf(stderr, "origami train: rank %d: %s: %s\n", env.rank.value_or(-1),
                 e.failed_here() ? "error" : "stopped", e.what());
    return e.failed_here() ? 1 : kExitStoppedForOtherRanks;
  } catch (const std::exception& e) {
    if (!opt.multi_rank) throw;
    // Errors in the steps end the job through on_fatal_error; this is what remains (MPI failing
    // to start): each rank names itself and ends.
    std::fprintf(stderr, "origami train: rank %d: error: %s\n", env.rank.value_or(-1), e.what());
    return 1;
  }
  return 0;
}

}  // namespace origami::cli
