// origami train CONFIG [options]
#include <unistd.h>

#include <cstdio>
#include <optional>
#include <string>
#include <vector>

#include "launcher/commands.h"
#include "launcher/flags.h"
#include "launcher/trainer.h"
#include "parallel/world.h"
#include "runtime/config.h"
#include "runtime/error.h"

namespace origami::cli {

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
  flags.add("dp", "", "data-parallel size (parallel.dp; default: world / (tp x pp))");
  flags.add_bool("zero", true, "ZeRO-1: shard the Adam state over dp (--no-zero: all-reduce)");
  flags.add_bool("sequence-parallel", false, "split the residual stream's rows over TP");
  flags.add("collective-timeout", "300", "seconds a collective may wait before the job ends");
  if (!flags.parse(argc, argv)) return 0;
  ORIGAMI_CHECK(flags.positional().size() == 1,
                "origami train needs exactly one CONFIG file (see 'origami train --help')");
  // Flags are config overrides, applied after any --set.
  std::vector<std::string> sets = flags.get_list("set");
  for (const char* f : {"tp", "pp", "vpp", "dp"})
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
  // Several ranks when a launcher says so; then MPI runs for the whole command.
  const LaunchEnvironment env = read_launch_environment(current_environment());
  opt.multi_rank = env.world_size.value_or(1) > 1;
  std::optional<MpiSession> mpi;
  if (opt.multi_rank) mpi.emplace(&argc, &argv);
  try {
    train(config, opt);
  } catch (const Error& e) {
    if (!opt.multi_rank) throw;
    // Every rank reports its own failure, naming itself.
    std::fprintf(stderr, "origami train: rank %d: error: %s\n", env.rank.value_or(-1), e.what());
    return 1;
  }
  return 0;
}

}  // namespace origami::cli
