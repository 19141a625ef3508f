// Where a command's model comes from, shared by `origami generate` and `origami serve`: a Hugging
// Face folder (config.json, *.safetensors, a tokenizer), or a training config with a checkpoint
// saved under any layout. Each rank reads only its own slices of the weights.
#pragma once

#include <functional>
#include <set>
#include <string>
#include <vector>

#include "launcher/flags.h"
#include "models/generator.h"
#include "models/model_spec.h"

namespace origami::cli {

struct ModelSource {
  std::string model_dir;       // a Hugging Face folder, or empty
  std::string config_path;     // a training config, or empty
  std::string checkpoint_dir;  // with config_path: the checkpoint folder
  std::string tokenizer_path;  // "byte", a file or a folder
  models::ModelSpec spec;      // validated
  // Linears the Hugging Face folder stores GPTQ-quantized (canonical names); empty otherwise.
  std::set<std::string> gptq_linears;
};

// The flags every model-loading command shares: --config, --checkpoint, --set, --tokenizer.
void add_model_source_flags(Flags& flags);
// Resolves the model from `model_dir` (a Hugging Face folder, or empty) or the flags of
// add_model_source_flags; throws origami::Error saying what to give when something is missing.
ModelSource resolve_model_source(const std::string& model_dir, const Flags& flags,
                                 const std::string& command);
// Fills this rank's part of `gen` from the source (safetensors or the checkpoint's latest step),
// its packed linears included; throws naming any packed weight left unfilled.
void load_model_weights(const ModelSource& source, models::Generator& gen);

// --weights dense|int8|int4 and --weight-group-size, and the LinearWeights they give for the
// source (a GPTQ folder's quantized linears are packed whatever --weights says).
void add_weight_flags(Flags& flags);
models::LinearWeights linear_weights_of(const Flags& flags, const ModelSource& source);

// The parallel flags of inference (--tp --pp --ep --etp --microbatches --collective-timeout) and
// the layout they give.
void add_inference_parallel_flags(Flags& flags);
ParallelLayout inference_layout(const Flags& flags);

// Runs `body(multi_rank)`: on one process when no launcher started several ranks, else inside an
// MPI session, where an error on one rank is printed as "origami COMMAND: rank R: error: ..."
// and ends every rank at once (MPI_Abort), since the others would wait in their next collective.
int run_on_ranks(const char* command, int argc, char** argv,
                 const std::function<int(bool multi_rank)>& body);

// Inside run_on_ranks' MPI session: prints "origami COMMAND: rank R: error: WHAT" and ends every
// rank now (MPI_Abort), before any destructor runs. For errors after which unwinding could wait
// forever: freeing a communicator is collective, and a stuck or dead peer never joins it.
[[noreturn]] void end_job(const char* command, int rank, const char* what);

}  // namespace origami::cli
