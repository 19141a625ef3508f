// origami perplexity (MODEL_DIR | --config CONFIG [--checkpoint DIR]) --text FILE [options]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "launcher/commands.h"
#include "launcher/flags.h"
#include "launcher/model_source.h"
#include "models/evaluate.h"
#include "models/generator.h"
#include "parallel/world.h"
#include "runtime/device.h"
#include "runtime/error.h"
#include "runtime/tokenizer.h"

namespace origami::cli {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

// The text of a file, or of a folder's regular files (not links) in name order.
std::string read_text(const std::string& path) {
  std::vector<fs::path> files;
  if (fs::is_directory(path)) {
    for (const auto& e : fs::directory_iterator(path))
      if (e.is_regular_file() && !e.is_symlink()) files.push_back(e.path());
    std::sort(files.begin(), files.end());
    ORIGAMI_CHECK(!files.empty(), "--text folder '", path, "' holds no files");
  } else {
    ORIGAMI_CHECK(fs::is_regular_file(path), "--text '", path, "' is not a file or folder");
    files.push_back(path);
  }
  std::string text;
  for (const fs::path& f : files) {
    std::ifstream in(f, std::ios::binary);
    ORIGAMI_CHECK(in, "cannot read '", f.string(), "'");
    std::ostringstream s;
    s << in.rdbuf();
    text += s.str();
  }
  return text;
}

}  // namespace

int perplexity(int argc, char** argv) {
  Flags flags("perplexity",
              "(MODEL_DIR | --config CONFIG [--checkpoint DIR]) --text FILE [options]",
              "Perplexity of a model on a text: the text is tokenized (no special tokens) and cut\n"
              "into windows of --seq-len tokens; each window predicts its tokens 2..S from the\n"
              "ones before; perplexity = exp(mean negative log-likelihood). The model runs as\n"
              "'origami generate' runs it, so --weights int8/int4 and GPTQ folders are measured\n"
              "with the kernels that serve them. One process.");
  add_model_source_flags(flags);
  add_weight_flags(flags);
  flags.add("text", "", "a text file, or a folder of them (read in name order)");
  flags.add("seq-len", "256", "tokens per window");
  flags.add("max-windows", "0", "evaluate at most this many windows; 0 = all");
  flags.add("batch", "8", "windows per forward pass");
  flags.add("dtype", "f32", "compute dtype: f32 or bf16");
  flags.add_bool("exact-activations", false,
                 "int8/int4 weights: f32 activations instead of int8 blocks (slower)");
  if (!flags.parse(argc, argv)) return 0;  // --help
  ORIGAMI_CHECK(flags.positional().size() <= 1, "origami perplexity takes one model folder");
  ORIGAMI_CHECK(!flags.get("text").empty(), "no text: give --text FILE");
  const LaunchEnvironment env = read_launch_environment(current_environment());
  ORIGAMI_CHECK(env.world_size.value_or(1) <= 1,
                "origami perplexity runs on one process; start it without mpirun or srun");
  const ModelSource source = resolve_model_source(
      flags.positional().empty() ? "" : flags.positional()[0], flags, "perplexity");
  std::unique_ptr<Tokenizer> tok = load_tokenizer(source.tokenizer_path);
  const std::string text = read_text(flags.get("text"));
  const std::vector<TokenId> enc = tok->encode(text, /*add_special=*/false);
  const std::vector<int64_t> ids(enc.begin(), enc.end());
  const int64_t S = flags.get_int("seq-len"), batch = flags.get_int("batch");
  ORIGAMI_CHECK(S >= 2, "--seq-len must be >= 2");
  ORIGAMI_CHECK(batch >= 1, "--batch must be >= 1");
  ORIGAMI_CHECK(source.spec.max_seq_len <= 0 || S <= source.spec.max_seq_len, "--seq-len ", S,
                " exceeds the model's max_seq_len of ", source.spec.max_seq_len);

  models::GeneratorOptions go;
  go.max_batch = batch;
  go.max_seq = S;
  go.max_step_tokens = batch * S;
  go.all_logits = true;
  go.compute = dtype_from_name(flags.get("dtype"));
  go.weights = linear_weights_of(flags, source);
  go.weights.exact = flags.get_bool("exact-activations");
  const auto t0 = Clock::now();
  models::Generator gen(source.spec, go);
  load_model_weights(source, gen);
  std::fprintf(stderr, "perplexity: model loaded in %.1f s; %zu tokens of text\n",
               std::chrono::duration<double>(Clock::now() - t0).count(), ids.size());
  const auto t1 = Clock::now();
  const models::PerplexityResult r = models::perplexity(
      gen, ids, S, flags.get_int("max-windows"), [&](int64_t done, int64_t total) {
        std::fprintf(stderr, "\rperplexity: %lld / %lld windows", (long long)done,
                     (long long)total);
      });
  const double secs = std::chrono::duration<double>(Clock::now() - t1).count();
  std::fprintf(stderr, "\n");
  std::printf("perplexity %.4f  nll %.6f  tokens %lld  windows %lld of %lld  weights %s  %.1f s\n",
              r.perplexity, r.nll, (long long)r.tokens, (long long)r.windows, (long long)S,
              flags.get("weights").c_str(), secs);
  return 0;
}

}  // namespace origami::cli
