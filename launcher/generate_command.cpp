// origami generate (--model HF_DIR | --config CONFIG [--checkpoint DIR]) --prompt TEXT [options]
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <iostream>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "launcher/commands.h"
#include "launcher/flags.h"
#include "launcher/model_source.h"
#include "models/generator.h"
#include "parallel/communicator.h"
#include "parallel/process_groups.h"
#include "parallel/rank_groups.h"
#include "parallel/startup_agreement.h"
#include "parallel/world.h"
#include "runtime/error.h"
#include "runtime/tokenizer.h"

namespace origami::cli {
namespace {

using Clock = std::chrono::steady_clock;

// Text of ids the tokenizer knows (a model vocabulary may be padded beyond the tokenizer's).
std::string decode_known(const Tokenizer& tok, const std::vector<int64_t>& ids) {
  std::vector<TokenId> known;
  known.reserve(ids.size());
  for (int64_t id : ids)
    if (id >= 0 && id < tok.vocab_size()) known.push_back(TokenId(id));
  return tok.decode(known, /*skip_special=*/true);
}

}  // namespace

int run_generate(const Flags& flags, bool multi_rank);

int generate(int argc, char** argv) {
  Flags flags(
      "generate", "(--model HF_DIR | --config CONFIG [--checkpoint DIR]) --prompt TEXT [options]",
      "Generates text from a prompt with a KV cache: the prompt is prefilled in one pass, then "
      "one\n"
      "token is sampled per step (greedy with --temperature 0; else temperature, top-k, top-p)\n"
      "until the end-of-sequence token or --max-new-tokens. The model is a Hugging Face folder\n"
      "(config.json + safetensors, e.g. from 'origami train --export-hf') or a training\n"
      "checkpoint of 'origami train' with the config it was trained with (under any layout).\n"
      "Under mpirun, srun or 'origami launch' the model is split over the ranks with --tp, --pp,\n"
      "--ep and --etp as in training; rank 0 prints the text.");
  flags.add("model", "", "Hugging Face model folder (config.json and *.safetensors)");
  add_model_source_flags(flags);
  flags.add_list("prompt", "prompt text; give it several times to generate for a batch");
  flags.add("max-new-tokens", "64", "stop after this many generated tokens");
  flags.add("temperature", "0.8", "softmax temperature; 0 = greedy (argmax)");
  flags.add("top-k", "40", "sample among the K most likely tokens; 0 or -1 = off");
  flags.add("top-p", "0.95", "nucleus sampling: the smallest set with this probability; 1 = off");
  flags.add("repetition-penalty", "1.0", "> 1 discourages tokens already in the text; 1 = off");
  flags.add("seed", "0", "random seed of the sampler (prompt i uses seed + i)");
  flags.add("eos", "",
            "token id that ends generation; default: the tokenizer's end-of-sequence; 'none' "
            "to ignore it");
  flags.add_bool("add-special", true,
                 "add the tokenizer's special tokens around the prompt (BOS, template)");
  flags.add("dtype", "f32", "compute dtype: f32 or bf16");
  flags.add("device", "cpu", "cpu or cuda[:N]");
  flags.add("max-context", "0",
            "tokens per sequence (prompt and generated); 0 = the model's max_seq_len");
  flags.add("kv-block-size", "16", "tokens per block of the paged KV cache");
  flags.add("kv-blocks", "0",
            "blocks in the KV cache; 0 = enough for every prompt at the full context");
  add_inference_parallel_flags(flags);
  add_weight_flags(flags);
  flags.add_bool("stream", true, "print tokens as they are generated (a single prompt only)");
  flags.add_bool("stats", true, "print prefill and decode speed on stderr at the end");
  if (!flags.parse(argc, argv)) return 0;
  // Several ranks when a launcher says so; then MPI runs for the whole command.
  return run_on_ranks("generate", argc, argv,
                      [&](bool multi_rank) { return run_generate(flags, multi_rank); });
}

int run_generate(const Flags& flags, bool multi_rank) {
  // The ranks: every rank mpirun / srun / origami launch started, or this process alone.
  const Milliseconds timeout{int64_t(flags.get_double("collective-timeout") * 1000)};
  ORIGAMI_CHECK(timeout.count() > 0, "--collective-timeout must be > 0 seconds");
  std::unique_ptr<Communicator> world =
      multi_rank ? mpi_world_communicator(timeout) : self_communicator("world", timeout);
  const bool root = world->rank() == 0;
  const std::vector<std::string>& prompts = flags.get_list("prompt");
  ModelSource source;
  models::ModelSpec spec;
  std::unique_ptr<Tokenizer> tok;
  std::vector<std::vector<int64_t>> ids;
  models::GenerationConfig gc;
  int64_t context = 0;
  ParallelLayout pl;
  std::optional<RankGroups> layout;
  ProcessGroups groups;
  std::unique_ptr<models::Generator> gen;
  double load_s = 0;
  // Until generation starts each rank works alone and can fail alone (its slices of a
  // checkpoint, its memory): run_agreed ends every rank together, each naming the failure.
  try {
    run_agreed(*world, "reading the model, the tokenizer and the prompts", [&] {
      ORIGAMI_CHECK(flags.positional().empty(),
                    "origami generate takes no positional arguments, got '",
                    flags.positional().empty() ? "" : flags.positional()[0],
                    "'; give the text with --prompt");
      ORIGAMI_CHECK(!prompts.empty(), "no prompt: give the text with --prompt TEXT");
      source = resolve_model_source(flags.get("model"), flags, "generate");
      spec = source.spec;
      const std::string& tokenizer_path = source.tokenizer_path;
      tok = load_tokenizer(tokenizer_path);
      ORIGAMI_CHECK(tok->vocab_size() <= spec.vocab, "vocabulary mismatch: the tokenizer '",
                    tokenizer_path, "' has ", tok->vocab_size(), " ids but the model (", spec.str(),
                    ") only ", spec.vocab, "; give the tokenizer the model was trained with");

      // Prompts, and the context they need.
      const bool add_special = flags.get_bool("add-special");
      int64_t longest = 0;
      for (const std::string& text : prompts) {
        const std::vector<TokenId> enc = tok->encode(text, add_special);
        ORIGAMI_CHECK(!enc.empty(), "the prompt '", text, "' encodes to no tokens");
        ids.emplace_back(enc.begin(), enc.end());
        longest = std::max<int64_t>(longest, int64_t(enc.size()));
      }
      gc.max_new_tokens = flags.get_int("max-new-tokens");
      ORIGAMI_CHECK(gc.max_new_tokens >= 1, "--max-new-tokens must be >= 1, got ",
                    gc.max_new_tokens);
      const int64_t limit =
          flags.get_int("max-context") > 0 ? flags.get_int("max-context") : spec.max_seq_len;
      ORIGAMI_CHECK(limit <= 0 || longest <= limit, "the prompt has ", longest,
                    " tokens, longer than the model's context of ", limit,
                    " tokens: shorten it (or raise --max-context if the model allows)");
      context =
          limit > 0 ? std::min(limit, longest + gc.max_new_tokens) : longest + gc.max_new_tokens;
      gc.sampling.temperature = flags.get_double("temperature");
      gc.sampling.top_k = flags.get_int("top-k");
      gc.sampling.top_p = flags.get_double("top-p");
      gc.sampling.repetition_penalty = flags.get_double("repetition-penalty");
      gc.sampling.seed = uint64_t(flags.get_int("seed"));
      gc.sampling.validate();
      const std::string eos = flags.get("eos");
      if (eos.empty()) {
        if (tok->eos_id()) gc.stop_ids.push_back(*tok->eos_id());
      } else if (eos != "none") {
        const int64_t id = flags.get_int("eos");
        ORIGAMI_CHECK(id >= 0 && id < spec.vocab, "--eos ", id, " is outside the vocabulary of ",
                      spec.vocab);
        gc.stop_ids.push_back(id);
      }
      pl = inference_layout(flags);
      layout.emplace(world->size(), pl);
      models::check_inference_layout(spec, *layout);
    });
    ProcessGroupsOptions pgo;
    pgo.timeout = timeout;
    groups = ProcessGroups::create(*world, *layout, pgo);
    run_agreed(*world, "loading the model and its weights", [&] {
      // The generator and its weights.
      models::GeneratorOptions go;
      go.max_batch = int64_t(ids.size());
      go.max_seq = context;
      go.compute = dtype_from_name(flags.get("dtype"));
      go.device = device_from_string(flags.get("device"));
      go.kv_block_size = flags.get_int("kv-block-size");
      go.kv_blocks = flags.get_int("kv-blocks");
      go.weights = linear_weights_of(flags, source);
      models::GeneratorParallel par;
      if (multi_rank) {
        par.groups = &groups;
        par.layout = &*layout;
        par.microbatches = int(flags.get_int("microbatches"));
      }
      gen = std::make_unique<models::Generator>(spec, go, par);
      const auto t_load = Clock::now();
      load_model_weights(source, *gen);
      load_s = std::chrono::duration<double>(Clock::now() - t_load).count();
    });
  } catch (const StartupFailure& e) {
    if (!multi_rank) throw;  // one process: the error as it is
    std::fprintf(stderr, "origami generate: rank %d: %s: %s\n", world->rank(),
                 e.failed_here() ? "error" : "stopped", e.what());
    return e.failed_here() ? 1 : kExitStoppedForOtherRanks;
  }
  const bool stats = flags.get_bool("stats") && root;
  if (stats) {
    std::cerr << gen->describe();
    std::fprintf(stderr, "loaded the weights in %.2f s\n", load_s);
  }

  // Generate, streaming the text of a single prompt as its tokens arrive.
  const bool stream = flags.get_bool("stream") && ids.size() == 1 && root;
  std::vector<int64_t> streamed = ids[0];
  size_t printed = decode_known(*tok, streamed).size();
  if (stream) {
    std::fputs(prompts[0].c_str(), stdout);
    std::fflush(stdout);
  }
  const auto t0 = Clock::now();
  auto t_first = t0;
  int64_t generated = 0;
  auto on_token = [&](int64_t seq, int64_t token) {
    if (generated++ == 0) t_first = Clock::now();
    if (!stream || seq != 0) return;
    if (std::find(gc.stop_ids.begin(), gc.stop_ids.end(), token) != gc.stop_ids.end()) return;
    streamed.push_back(token);
    const std::string text = decode_known(*tok, streamed);
    if (text.size() > printed) {
      std::fwrite(text.data() + printed, 1, text.size() - printed, stdout);
      std::fflush(stdout);
      printed = text.size();
    }
  };
  std::vector<models::GenerationResult> results;
  try {
    results = gen->generate(ids, gc, on_token);
  } catch (const std::exception& e) {
    // A collective that failed (a stuck or dead rank): end the job now, since unwinding would
    // free the communicators, which waits for every rank.
    if (multi_rank) end_job("generate", world->rank(), e.what());
    throw;
  }
  const auto t_end = Clock::now();

  for (size_t i = 0; i < results.size() && root; ++i) {
    std::vector<int64_t> out = results[i].tokens;
    if (results[i].reason == models::StopReason::eos && !out.empty()) out.pop_back();
    if (stream) {
      std::fputs("\n", stdout);
    } else {
      std::vector<int64_t> all = ids[i];
      all.insert(all.end(), out.begin(), out.end());
      const std::string prompt_text = decode_known(*tok, ids[i]);
      const std::string text = decode_known(*tok, all);
      if (results.size() > 1) std::printf("[%zu] ", i);
      std::printf("%s%s\n", prompts[i].c_str(),
                  text.size() > prompt_text.size() ? text.c_str() + prompt_text.size() : "");
    }
    if (stats)
      std::fprintf(stderr, "[%zu] %zu prompt tokens, %zu generated, stopped on %s\n", i,
                   ids[i].size(), results[i].tokens.size(),
                   models::stop_reason_name(results[i].reason));
  }
  if (stats && generated > 0) {
    int64_t prompt_tokens = 0;
    for (const auto& p : ids) prompt_tokens += int64_t(p.size());
    const double prefill_s = std::chrono::duration<double>(t_first - t0).count();
    const double decode_s = std::chrono::duration<double>(t_end - t_first).count();
    const int64_t decoded = generated - int64_t(ids.size());
    std::fprintf(stderr, "prefill: %lld tokens in %.3f s (%.1f tok/s)", (long long)prompt_tokens,
                 prefill_s, prefill_s > 0 ? double(prompt_tokens) / prefill_s : 0.0);
    if (decoded > 0)
      std::fprintf(stderr, "; decode: %lld tokens in %.3f s (%.1f tok/s)", (long long)decoded,
                   decode_s, double(decoded) / decode_s);
    std::fprintf(stderr, "\n");
  }
  return 0;
}

}  // namespace origami::cli
