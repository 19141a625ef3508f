// origami quantize [MODEL_DIR | --config CONFIG [--checkpoint DIR]] OUT_DIR --calibration TEXT
// [options]: the wiring of models/quantize.h (GPTQ or RTN into a Hugging Face GPTQ folder).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "launcher/commands.h"
#include "launcher/flags.h"
#include "launcher/model_source.h"
#include "models/generator.h"
#include "models/hf_import.h"
#include "models/quantize.h"
#include "runtime/data.h"
#include "runtime/dtype.h"
#include "runtime/error.h"
#include "runtime/tokenizer.h"

namespace origami::cli {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

std::string read_file(const fs::path& file) {
  std::ifstream in(file);
  ORIGAMI_CHECK(in.good(), "cannot read ", file.string());
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

uintmax_t folder_bytes(const fs::path& dir) {
  uintmax_t n = 0;
  for (const auto& e : fs::recursive_directory_iterator(dir))
    if (e.is_regular_file()) n += e.file_size();
  return n;
}

}  // namespace

int quantize(int argc, char** argv) {
  Flags flags(
      "quantize",
      "[MODEL_DIR | --config CONFIG [--checkpoint DIR]] OUT_DIR --calibration TEXT [options]",
      "Quantizes the model's linear layers (q, k, v, o, gate, up, down; every expert's) to\n"
      "--bits with GPTQ (layer by layer, each layer's Hessian from the calibration text run\n"
      "through the already-quantized layers before it) or round-to-nearest, and writes OUT_DIR\n"
      "as a Hugging Face GPTQ folder (AutoGPTQ's layout: NAME.qweight/qzeros/scales/g_idx,\n"
      "quantization_config in config.json). Embeddings, norms, the router and lm_head stay\n"
      "unquantized, as --dtype. The model is a Hugging Face folder or a training checkpoint\n"
      "with its config; one process, f32. See docs/quantization.md.");
  add_model_source_flags(flags);
  flags.add("bits", "4", "bits per weight: 2, 3, 4 or 8");
  flags.add("group-size", "128",
            "input columns sharing one scale and zero; -1 = one group per output row; must "
            "divide every linear's input width");
  flags.add_bool("act-order", false,
                 "GPTQ: quantize columns in order of decreasing Hessian diagonal (desc_act)");
  flags.add_bool("sym", false, "symmetric quantization (zero point fixed at 2^(bits-1))");
  flags.add("method", "gptq", "gptq, or rtn (round-to-nearest: no calibration)");
  flags.add("damp", "0.01", "GPTQ dampening: a fraction of the mean Hessian diagonal");
  flags.add("calibration", "",
            "calibration text: a file, or a folder of text files (no extension or .txt); "
            "tokenized with the model's tokenizer");
  flags.add("samples", "128", "calibration windows");
  flags.add("seq-len", "256",
            "tokens per calibration window (when not given: 256, or the model's context if "
            "shorter)");
  flags.add("seed", "0", "random seed of the windows' positions in the calibration text");
  flags.add("batch-tokens", "2048", "calibration tokens per forward pass (whole windows)");
  flags.add("dtype", "f16", "dtype of the unquantized tensors in OUT_DIR: f16, bf16 or f32");
  flags.add("dequantized", "",
            "also write the dequantized model to this folder (a plain fp32 Hugging Face model)");
  flags.add_bool("overwrite", false, "replace OUT_DIR (and --dequantized) when not empty");
  if (!flags.parse(argc, argv)) return 0;

  // The model and the output folders.
  const std::vector<std::string>& pos = flags.positional();
  const bool from_config = flags.given("config");
  const size_t want = from_config ? 1 : 2;
  ORIGAMI_CHECK(pos.size() == want, "origami quantize needs ",
                from_config ? "OUT_DIR (the model comes from --config)"
                            : "the model folder and OUT_DIR (or --config CONFIG and OUT_DIR)",
                ", got ", pos.size(), " positional argument(s); see 'origami quantize --help'");
  const std::string out_dir = pos.back();
  const ModelSource source = resolve_model_source(from_config ? "" : pos[0], flags, "quantize");
  const models::ModelSpec& spec = source.spec;
  const bool overwrite = flags.get_bool("overwrite");
  models::check_output_dir(out_dir, overwrite, "OUT_DIR");
  const std::string dequantized = flags.get("dequantized");
  if (!dequantized.empty()) models::check_output_dir(dequantized, overwrite, "--dequantized");

  // What to do.
  models::QuantizeOptions opt;
  const std::string method = flags.get("method");
  ORIGAMI_CHECK(method == "gptq" || method == "rtn", "--method must be gptq or rtn, got '", method,
                "'");
  opt.gptq = method == "gptq";
  opt.config.bits = int(flags.get_int("bits"));
  opt.config.group_size = flags.get_int("group-size");
  opt.config.act_order = flags.get_bool("act-order");
  opt.config.sym = flags.get_bool("sym");
  opt.config.percdamp = flags.get_double("damp");
  opt.batch_tokens = flags.get_int("batch-tokens");
  ORIGAMI_CHECK(opt.batch_tokens >= 1, "--batch-tokens must be >= 1");
  const DType dtype = dtype_from_name(flags.get("dtype"));
  ORIGAMI_CHECK(dtype == DType::f16 || dtype == DType::bf16 || dtype == DType::f32,
                "--dtype must be f16, bf16 or f32, got '", flags.get("dtype"), "'");
  models::check_quantizable(spec, opt);

  // Calibration windows (GPTQ), run by a generator sized for them.
  const int64_t samples = flags.get_int("samples");
  int64_t seq_len = flags.get_int("seq-len");
  if (!flags.given("seq-len") && spec.max_seq_len > 0)
    seq_len = std::min(seq_len, spec.max_seq_len);
  const models::GeneratorOptions go =
      opt.gptq ? models::calibration_generator_options(spec, samples, seq_len, opt)
               : models::calibration_generator_options(spec, 1, 1, opt);
  std::vector<std::vector<int64_t>> windows;
  if (opt.gptq) {
    const std::string calibration = flags.get("calibration");
    ORIGAMI_CHECK(!calibration.empty(),
                  "GPTQ needs calibration text: give --calibration FILE_OR_FOLDER (or --method "
                  "rtn, which needs none)");
    ORIGAMI_CHECK(fs::exists(calibration), "--calibration '", calibration,
                  "' does not exist (give a text file or a folder of text files)");
    const std::unique_ptr<Tokenizer> tok = load_tokenizer(source.tokenizer_path);
    ORIGAMI_CHECK(tok->vocab_size() <= spec.vocab, "vocabulary mismatch: the tokenizer '",
                  source.tokenizer_path, "' has ", tok->vocab_size(), " ids but the model only ",
                  spec.vocab, "; give the tokenizer the model was trained with");
    const TokenStream stream = TokenStream::open(calibration, "text", tok.get());
    windows =
        models::calibration_windows(stream, samples, seq_len, uint64_t(flags.get_int("seed")));
  }
  // The model, in f32.
  std::printf("quantize: %s, %d-bit %s, group size %lld%s%s\n", spec.str().c_str(), opt.config.bits,
              opt.gptq ? "GPTQ" : "round-to-nearest", (long long)opt.config.group_size,
              opt.config.act_order ? ", act-order" : "",
              opt.config.sym ? ", symmetric" : ", asymmetric");
  if (opt.gptq)
    std::printf("calibration: %lld windows of %lld tokens from %s, %lld per forward pass\n",
                (long long)samples, (long long)seq_len, flags.get("calibration").c_str(),
                (long long)go.max_batch);
  const auto t0 = Clock::now();
  models::Generator gen(spec, go);
  load_model_weights(source, gen);
  std::printf("loaded the model in %.2f s\n",
              std::chrono::duration<double>(Clock::now() - t0).count());

  const models::PackedLinears packed = models::quantize_model(gen, windows, opt, std::cout);

  models::QuantizedOutput out;
  out.dir = out_dir;
  out.dequantized_dir = dequantized;
  out.base_config_json = source.model_dir.empty()
                             ? models::hf_config_json(spec)
                             : read_file(fs::path(source.model_dir) / "config.json");
  out.tokenizer = source.tokenizer_path;
  out.model_dir = source.model_dir;
  out.dtype = dtype;
  out.overwrite = overwrite;
  models::write_quantized_model(out, spec, gen.weights(), packed, opt);
  std::printf("wrote %s (%.1f MB, %zu quantized linears, other tensors %s) in %.1f s\n",
              out_dir.c_str(), double(folder_bytes(out_dir)) / 1e6, packed.size(),
              dtype_name(dtype), std::chrono::duration<double>(Clock::now() - t0).count());
  if (!dequantized.empty()) std::printf("wrote the dequantized model to %s\n", dequantized.c_str());
  if (source.tokenizer_path == "byte")
    std::printf(
        "note: the model uses origami's byte tokenizer (named in %s/origami_tokenizer.txt, "
        "which origami reads)\n",
        out_dir.c_str());
  return 0;
}

}  // namespace origami::cli
