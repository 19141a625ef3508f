// origami train CONFIG [options]
#include <unistd.h>

#include <cstdio>

#include "launcher/commands.h"
#include "launcher/flags.h"
#include "launcher/trainer.h"
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
  if (!flags.parse(argc, argv)) return 0;
  ORIGAMI_CHECK(flags.positional().size() == 1,
                "origami train needs exactly one CONFIG file (see 'origami train --help')");
  Config config = load_config(flags.positional()[0], flags.get_list("set"));
  TrainOptions opt;
  opt.resume = flags.get_bool("resume");
  opt.init_from = flags.get("init-from");
  opt.export_hf = flags.get("export-hf");
  opt.progress = flags.get_bool("progress");
  opt.stop_after = flags.get_int("stop-after");
  train(config, opt);
  return 0;
}

}  // namespace origami::cli
