#include "launcher/model_source.h"

#include <mpi.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <optional>

#include "models/hf_import.h"
#include "parallel/rank_groups.h"
#include "parallel/world.h"
#include "runtime/checkpoint.h"
#include "runtime/config.h"
#include "runtime/error.h"

namespace origami::cli {
namespace {

namespace fs = std::filesystem;

// The step folder to read: DIR itself when it is one, else the one DIR/latest names.
std::string checkpoint_step_dir(const std::string& dir) {
  ORIGAMI_CHECK(fs::is_directory(dir), "checkpoint folder '", dir, "' does not exist");
  if (fs::exists(fs::path(dir) / "meta.json")) return dir;
  std::optional<std::string> latest = CheckpointReader::latest(dir);
  ORIGAMI_CHECK(latest.has_value(), "no checkpoint in '", dir,
                "': it has neither meta.json nor a 'latest' file (train with "
                "train.checkpoint_dir set, or give a step folder)");
  return *latest;
}

}  // namespace

void add_model_source_flags(Flags& flags) {
  flags.add("config", "", "training config (configs/*.pbtxt) describing the checkpoint's model");
  flags.add("checkpoint", "",
            "training checkpoint folder (its 'latest' step) or a step folder; default: the "
            "config's train.checkpoint_dir");
  flags.add_list("set", "override a config field, e.g. --set model.max_seq_len=512");
  flags.add("tokenizer", "",
            "'byte', a tokenizer.json, a SentencePiece .model or a folder; default: the model "
            "folder, or the config's data.tokenizer");
}

ModelSource resolve_model_source(const std::string& model_dir, const Flags& flags,
                                 const std::string& command) {
  ModelSource src;
  src.model_dir = model_dir;
  src.config_path = flags.get("config");
  ORIGAMI_CHECK(src.model_dir.empty() != src.config_path.empty(), "origami ", command,
                ": give the model: either a Hugging Face folder or --config CONFIG with a "
                "training checkpoint (--checkpoint DIR or the config's train.checkpoint_dir)");
  src.tokenizer_path = flags.get("tokenizer");
  if (!src.model_dir.empty()) {
    ORIGAMI_CHECK(fs::is_directory(src.model_dir), "model folder '", src.model_dir,
                  "' does not exist");
    ORIGAMI_CHECK(fs::exists(fs::path(src.model_dir) / "config.json"), "model folder '",
                  src.model_dir, "' has no config.json: it is not a Hugging Face model folder");
    src.spec = models::spec_from_hf_config(src.model_dir);
    // (Weights missing is reported when they load; the linears stored GPTQ-quantized are needed
    // before, to build the model.)
    const fs::path dir(src.model_dir);
    if (fs::exists(dir / "model.safetensors") || fs::exists(dir / "model.safetensors.index.json"))
      src.gptq_linears = models::gptq_quantized_names(src.model_dir, src.spec);
    // A folder of a byte-tokenizer model names it in origami_tokenizer.txt (origami quantize).
    const fs::path note = fs::path(src.model_dir) / "origami_tokenizer.txt";
    if (src.tokenizer_path.empty() && !fs::exists(fs::path(src.model_dir) / "tokenizer.json") &&
        fs::exists(note)) {
      std::ifstream in(note);
      std::string first;
      std::getline(in, first);
      ORIGAMI_CHECK(first == "byte", note.string(), ": expected 'byte' on its first line, got '",
                    first, "'");
      src.tokenizer_path = "byte";
    }
    if (src.tokenizer_path.empty()) {
      ORIGAMI_CHECK(fs::exists(fs::path(src.model_dir) / "tokenizer.json") ||
                        fs::exists(fs::path(src.model_dir) / "tokenizer.model"),
                    "model folder '", src.model_dir,
                    "' has no tokenizer.json or tokenizer.model: give --tokenizer (a tokenizer "
                    "file, a folder holding one, or 'byte')");
      src.tokenizer_path = src.model_dir;
    }
  } else {
    const Config config = load_config(src.config_path, flags.get_list("set"));
    src.spec = models::spec_from_config(config.model());
    src.checkpoint_dir =
        flags.given("checkpoint") ? flags.get("checkpoint") : config.train().checkpoint_dir();
    ORIGAMI_CHECK(!src.checkpoint_dir.empty(), "no checkpoint: give --checkpoint DIR (the config '",
                  src.config_path, "' sets no train.checkpoint_dir)");
    if (src.tokenizer_path.empty()) src.tokenizer_path = config.data().tokenizer();
    ORIGAMI_CHECK(!src.tokenizer_path.empty(), "no tokenizer: give --tokenizer (the config '",
                  src.config_path, "' sets no data.tokenizer)");
  }
  src.spec.validate();
  return src;
}

void load_model_weights(const ModelSource& source, models::Generator& gen) {
  if (!source.model_dir.empty())
    models::load_hf_weights(source.model_dir, gen.weights(), &gen.packed_weights());
  else
    models::load_training_checkpoint(checkpoint_step_dir(source.checkpoint_dir), gen);
  const std::vector<std::string> missing = gen.packed_weights().missing();
  if (!missing.empty())
    ORIGAMI_FAIL("the model's packed weights were not all loaded; missing ", missing.size(), ": ",
                 missing.front(), missing.size() > 1 ? ", ..." : "");
}

void add_weight_flags(Flags& flags) {
  flags.add("weights", "dense",
            "linear weights: dense (the --dtype), or int8 / int4 (quantized round-to-nearest at "
            "load; the head int8). A GPTQ model folder runs its quantized layers as stored");
  flags.add("weight-group-size", "128",
            "int8/int4: input columns per scale and zero (a multiple of 32; smaller where it "
            "does not divide a layer)");
}

models::LinearWeights linear_weights_of(const Flags& flags, const ModelSource& source) {
  models::LinearWeights lw;
  lw.mode = models::parse_weight_mode(flags.get("weights"));
  lw.group_size = flags.get_int("weight-group-size");
  ORIGAMI_CHECK(lw.group_size >= 32 && lw.group_size % 32 == 0,
                "--weight-group-size must be a multiple of 32, got ", lw.group_size);
  lw.quantized = source.gptq_linears;
  return lw;
}

void add_inference_parallel_flags(Flags& flags) {
  flags.add("tp", "1", "tensor-parallel size (heads, KV cache and vocabulary split over tp ranks)");
  flags.add("pp", "1", "pipeline stages (layers split over pp ranks, microbatches in flight)");
  flags.add("ep", "1", "expert-parallel size (MoE experts split over ep ranks)");
  flags.add("etp", "0", "expert tensor-parallel size; 0 = as tp");
  flags.add("microbatches", "0",
            "groups of sequences in flight through the pipeline; 0 = pp (at least 2 with pp > 1)");
  flags.add("collective-timeout", "300", "seconds a collective may wait before the job ends");
}

ParallelLayout inference_layout(const Flags& flags) {
  ParallelLayout pl;
  pl.tp = int(flags.get_int("tp"));
  pl.pp = int(flags.get_int("pp"));
  pl.ep = int(flags.get_int("ep"));
  pl.etp = int(flags.get_int("etp"));
  return pl;
}

int run_on_ranks(const char* command, int argc, char** argv,
                 const std::function<int(bool multi_rank)>& body) {
  const LaunchEnvironment env = read_launch_environment(current_environment());
  if (env.world_size.value_or(1) <= 1) return body(false);
  MpiSession mpi(&argc, &argv);
  try {
    return body(true);
  } catch (const std::exception& e) {
    end_job(command, env.rank.value_or(-1), e.what());
  }
}

void end_job(const char* command, int rank, const char* what) {
  std::fprintf(stderr, "origami %s: rank %d: error: %s\n", command, rank, what);
  std::fflush(stdout);
  std::fflush(stderr);
  MPI_Abort(MPI_COMM_WORLD, 1);
  std::abort();  // MPI_Abort does not return
}

}  // namespace origami::cli
