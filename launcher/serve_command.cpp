// origami serve MODEL_DIR | --config CONFIG [--checkpoint DIR]  [options]
//
// Rank 0 runs the HTTP front end and the engine (runtime/serve/api_server.h); every step's batch
// goes to the other ranks, which run their part of the model (models::ParallelRunner).

#include <algorithm>
#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "launcher/commands.h"
#include "launcher/flags.h"
#include "launcher/model_source.h"
#include "models/generator.h"
#include "models/serving_runner.h"
#include "parallel/communicator.h"
#include "parallel/mpi_environment.h"
#include "parallel/process_groups.h"
#include "parallel/rank_groups.h"
#include "parallel/startup_agreement.h"
#include "parallel/world.h"
#include "runtime/chat_template.h"
#include "runtime/error.h"
#include "runtime/serve/api_server.h"
#include "runtime/serve/engine.h"
#include "runtime/tokenizer.h"

namespace origami::cli {
namespace {

namespace fs = std::filesystem;

volatile std::sig_atomic_t g_stop_signal = 0;
extern "C" void on_stop_signal(int sig) {
  g_stop_signal = sig;
}

// End-of-sequence ids: the tokenizer's, and those of generation_config.json (an id or a list).
std::vector<int64_t> stop_ids_of(const Tokenizer& tok, const std::string& model_dir) {
  std::vector<int64_t> ids;
  if (tok.eos_id()) ids.push_back(*tok.eos_id());
  const fs::path gen = fs::path(model_dir) / "generation_config.json";
  if (!model_dir.empty() && fs::exists(gen)) {
    std::ifstream in(gen);
    const nlohmann::json j = nlohmann::json::parse(in, nullptr, /*allow_exceptions=*/false);
    ORIGAMI_CHECK(!j.is_discarded(), "'", gen.string(), "' is not valid JSON");
    if (j.is_object() && j.contains("eos_token_id")) {
      const nlohmann::json& e = j["eos_token_id"];
      std::vector<nlohmann::json> list = e.is_array()
                                             ? std::vector<nlohmann::json>(e.begin(), e.end())
                                             : std::vector<nlohmann::json>{e};
      for (const nlohmann::json& v : list)
        if (v.is_number_integer() &&
            std::find(ids.begin(), ids.end(), v.get<int64_t>()) == ids.end())
          ids.push_back(v.get<int64_t>());
    }
  }
  return ids;
}

// The chat template: --chat-template FILE, else the one of the model's tokenizer_config.json
// (its "chat_template", or chat_template.jinja beside it), the model folder's or the tokenizer
// folder's. The special tokens (bos_token, ...) come from that tokenizer_config.json either way.
// Sets `why_none` when there is no template.
std::optional<ChatTemplate> chat_template_of(const std::string& file, const ModelSource& src,
                                             std::string& why_none) {
  std::optional<fs::path> config;
  for (const std::string& dir : {src.model_dir, src.tokenizer_path})
    if (!config && !dir.empty() && fs::exists(fs::path(dir) / "tokenizer_config.json"))
      config = fs::path(dir) / "tokenizer_config.json";
  if (!file.empty()) {
    std::ifstream in(file, std::ios::binary);
    ORIGAMI_CHECK(in.good(), "--chat-template: cannot read '", file, "'");
    std::stringstream ss;
    ss << in.rdbuf();
    ChatTemplate t(ss.str());
    if (config) t.use_special_tokens_of(config->string());
    return t;
  }
  if (!config) {
    why_none = "it has no tokenizer_config.json";
    return std::nullopt;
  }
  std::ifstream in(*config);
  const nlohmann::json j = nlohmann::json::parse(in, nullptr, false);
  if ((j.is_object() && j.contains("chat_template") && !j["chat_template"].is_null()) ||
      fs::exists(config->parent_path() / "chat_template.jinja"))
    return ChatTemplate::from_tokenizer_config(config->string());
  why_none = "its tokenizer_config.json has no chat_template";
  return std::nullopt;
}

std::string model_name_of(const Flags& flags, const ModelSource& src) {
  if (!flags.get("served-model-name").empty()) return flags.get("served-model-name");
  fs::path p = src.model_dir.empty() ? fs::path(src.config_path).stem()
                                     : fs::path(src.model_dir).lexically_normal();
  if (p.filename().empty()) p = p.parent_path();
  return p.filename().string();
}

int run_serve(const Flags& flags, bool multi_rank);

}  // namespace

int serve(int argc, char** argv) {
  Flags flags(
      "serve", "MODEL_DIR | --config CONFIG [--checkpoint DIR]  [options]",
      "Serves a model over an OpenAI-compatible HTTP API: POST /v1/completions and\n"
      "/v1/chat/completions (streamed with server-sent events when asked), GET /v1/models,\n"
      "/health and /metrics (Prometheus). Requests join the running batch at every step\n"
      "(continuous batching) over a paged KV cache with prefix caching; when the cache runs out\n"
      "the newest sequences are preempted and recomputed later. The model is a Hugging Face\n"
      "folder or a training checkpoint of 'origami train' (with the config it was trained with).\n"
      "Under mpirun, srun or 'origami launch' the model is split over the ranks with --tp, --pp,\n"
      "--ep and --etp as in training; rank 0 runs the server. SIGTERM, SIGINT or SIGUSR1 (which\n"
      "mpirun forwards to the ranks) stop taking requests, let those in flight finish for up to\n"
      "--drain-timeout seconds, and exit 0.");
  add_model_source_flags(flags);
  flags.add("host", "127.0.0.1", "address to listen on (0.0.0.0: every interface)");
  flags.add("port", "8000", "TCP port; 0 = any free port (printed)");
  flags.add("api-key", "",
            "key clients must send as 'Authorization: Bearer KEY' (every route but /health); "
            "also read from ORIGAMI_API_KEY");
  flags.add("served-model-name", "", "the model's name in requests; default: its folder's name");
  flags.add("chat-template", "",
            "a Jinja chat template file; default: the model's tokenizer_config.json");
  flags.add("max-num-seqs", "32", "sequences one step may run at most");
  flags.add("max-num-batched-tokens", "512",
            "tokens one step may run at most (prompts are prefilled in chunks of this size)");
  flags.add("max-model-len", "0",
            "tokens one sequence may hold (prompt and generated); 0 = the model's max_seq_len");
  flags.add("kv-block-size", "16", "tokens per block of the paged KV cache");
  flags.add("kv-blocks", "0",
            "blocks in the KV cache; 0 = from --kv-memory-fraction, or enough for "
            "--max-num-seqs sequences at the full context");
  flags.add("kv-memory-fraction", "0",
            "size the KV cache to this fraction of the memory available after loading (0 = off)");
  flags.add("max-queue", "1024",
            "requests held at once, running and waiting; one more is refused with 429");
  flags.add("drain-timeout", "30",
            "seconds requests in flight may take to finish after SIGTERM before they are stopped");
  flags.add("http-threads", "2", "threads of the HTTP front end");
  flags.add_bool("batch-invariant", true,
                 "compute every sequence the same way whatever else is in the batch, so that a "
                 "greedy or seeded request gives the same tokens under any load (see "
                 "docs/serving.md for the cost)");
  flags.add_bool("bind-threads", true,
                 "on the CPU, bind each OpenMP thread of a rank to a core of its own (this rank's "
                 "share of the cores it may use; skipped when OMP_PROC_BIND or OMP_PLACES is set "
                 "or there are fewer cores than threads): a thread woken after a pause then never "
                 "waits behind another on one core");
  flags.add("dtype", "f32", "compute dtype: f32 or bf16");
  flags.add("device", "cpu", "cpu or cuda[:N]");
  add_inference_parallel_flags(flags);
  add_weight_flags(flags);
  if (!flags.parse(argc, argv)) return 0;
  return run_on_ranks("serve", argc, argv,
                      [&](bool multi_rank) { return run_serve(flags, multi_rank); });
}

namespace {

// Blocks in a KV cache that takes `fraction` of the memory available now, on this rank.
int64_t kv_blocks_for_fraction(double fraction, const models::ModelSpec& spec,
                               const ParallelLayout& pl, int64_t block_size, DType dtype) {
  std::ifstream meminfo("/proc/meminfo");
  std::string key;
  int64_t kib = 0, available = 0;
  std::string unit;
  while (meminfo >> key >> kib >> unit)
    if (key == "MemAvailable:") available = kib * 1024;
  ORIGAMI_CHECK(available > 0, "--kv-memory-fraction: cannot read MemAvailable from /proc/meminfo");
  const int64_t kv_heads = std::max<int64_t>(1, spec.kv_heads / std::max(1, pl.tp));
  const int64_t layers = (spec.layers + pl.pp - 1) / pl.pp;
  const int64_t per_block =
      2 * layers * kv_heads * spec.head_dim * block_size * int64_t(dtype_size(dtype));
  return int64_t(fraction * double(available)) / per_block;
}

// How long a server whose engine failed keeps answering 503 before it exits.
constexpr std::chrono::milliseconds kFailedEngineGrace{2000};

int run_serve(const Flags& flags, bool multi_rank) {
  const Milliseconds timeout{int64_t(flags.get_double("collective-timeout") * 1000)};
  ORIGAMI_CHECK(timeout.count() > 0, "--collective-timeout must be > 0 seconds");
  std::unique_ptr<Communicator> world =
      multi_rank ? mpi_world_communicator(timeout) : self_communicator("world", timeout);
  const bool root = world->rank() == 0;
  ModelSource source;
  std::unique_ptr<Tokenizer> tok;
  serve::ApiServerOptions so;
  std::optional<RankGroups> layout;
  ProcessGroups groups;
  models::GeneratorOptions go;
  std::unique_ptr<models::Generator> gen;
  std::unique_ptr<serve::ApiServer> server;
  try {
    run_agreed(*world, "reading the model, the tokenizer and the options", [&] {
      ORIGAMI_CHECK(flags.positional().size() <= 1, "origami serve takes one model folder, got ",
                    flags.positional().size(), " positional arguments");
      source = resolve_model_source(flags.positional().empty() ? "" : flags.positional()[0], flags,
                                    "serve");
      tok = load_tokenizer(source.tokenizer_path);
      ORIGAMI_CHECK(tok->vocab_size() <= source.spec.vocab, "vocabulary mismatch: the tokenizer '",
                    source.tokenizer_path, "' has ", tok->vocab_size(), " ids but the model only ",
                    source.spec.vocab);
      so.stop_ids = stop_ids_of(*tok, source.model_dir);
      so.chat = chat_template_of(flags.get("chat-template"), source, so.no_chat_template_reason);
      const int64_t context = flags.get_int("max-model-len") > 0 ? flags.get_int("max-model-len")
                                                                 : source.spec.max_seq_len;
      ORIGAMI_CHECK(context > 1, "the model gives no context length: give --max-model-len");
      ORIGAMI_CHECK(source.spec.max_seq_len <= 0 || context <= source.spec.max_seq_len,
                    "--max-model-len ", context, " exceeds the model's max_seq_len of ",
                    source.spec.max_seq_len);
      so.model.name = model_name_of(flags, source);
      so.model.vocab = source.spec.vocab;
      so.model.context = context;
      so.max_queue = flags.get_int("max-queue");
      ORIGAMI_CHECK(so.max_queue >= 1, "--max-queue must be >= 1");
      so.http.host = flags.get("host");
      const int64_t port = flags.get_int("port");
      ORIGAMI_CHECK(port >= 0 && port <= 65535, "--port must be in [0, 65535], got ", port);
      so.http.port = uint16_t(port);
      so.http.api_key = flags.get("api-key");
      so.http.threads = int(flags.get_int("http-threads"));
      so.idle_interval = std::chrono::milliseconds(
          std::max<int64_t>(100, std::min<int64_t>(5000, timeout.count() / 4)));
      go.max_batch = flags.get_int("max-num-seqs");
      ORIGAMI_CHECK(go.max_batch >= 1, "--max-num-seqs must be >= 1");
      go.max_step_tokens = flags.get_int("max-num-batched-tokens");
      ORIGAMI_CHECK(go.max_step_tokens >= go.max_batch, "--max-num-batched-tokens (",
                    go.max_step_tokens, ") must be at least --max-num-seqs (", go.max_batch, ")");
      // Rows of logits a step returns: one per sequence, and up to 128 prompt tokens' (echo with
      // logprobs; a longer prompt takes more steps).
      go.max_logit_rows = go.max_batch + std::min<int64_t>(go.max_step_tokens, 128);
      go.max_seq = context;
      go.compute = dtype_from_name(flags.get("dtype"));
      go.device = device_from_string(flags.get("device"));
      go.kv_block_size = flags.get_int("kv-block-size");
      go.kv_blocks = flags.get_int("kv-blocks");
      go.batch_invariant = flags.get_bool("batch-invariant");
      go.weights = linear_weights_of(flags, source);
      layout.emplace(world->size(), inference_layout(flags));
      models::check_inference_layout(source.spec, *layout);
      if (root) {
        // The front end answers /health with 503 while the weights load.
        server = std::make_unique<serve::ApiServer>(so, *tok);
        server->start();
        std::printf("origami serve: listening on http://%s:%u (model '%s', loading)\n",
                    so.http.host.c_str(), unsigned(server->port()), so.model.name.c_str());
        std::fflush(stdout);
      }
    });
    ProcessGroupsOptions pgo;
    pgo.timeout = timeout;
    groups = ProcessGroups::create(*world, *layout, pgo);
    run_agreed(*world, "loading the model and its weights", [&] {
      models::GeneratorParallel par;
      if (multi_rank) {
        par.groups = &groups;
        par.layout = &*layout;
        par.microbatches = int(flags.get_int("microbatches"));
      }
      const double fraction = flags.get_double("kv-memory-fraction");
      ORIGAMI_CHECK(fraction >= 0 && fraction < 1, "--kv-memory-fraction must be in [0, 1)");
      if (go.kv_blocks == 0 && fraction > 0) {
        // Every rank must hold the same number of blocks: the smallest any rank can afford.
        Tensor t = Tensor::zeros({1}, DType::i64);
        t.data_as<int64_t>()[0] = -kv_blocks_for_fraction(
            fraction, source.spec, inference_layout(flags), go.kv_block_size, go.compute);
        world->all_reduce(t, ReduceOp::max);
        go.kv_blocks = -t.data_as<int64_t>()[0];
        ORIGAMI_CHECK(go.kv_blocks >= 1, "--kv-memory-fraction ", fraction,
                      " leaves no room for one KV block");
      }
      gen = std::make_unique<models::Generator>(source.spec, go, par);
      load_model_weights(source, *gen);
    });
  } catch (const StartupFailure& e) {
    if (!multi_rank) throw;
    std::fprintf(stderr, "origami serve: rank %d: %s: %s\n", world->rank(),
                 e.failed_here() ? "error" : "stopped", e.what());
    return e.failed_here() ? 1 : kExitStoppedForOtherRanks;
  }

  // SIGTERM, SIGINT and SIGUSR1 (what mpirun forwards): rank 0 drains; the other ranks go on
  // until rank 0 tells them the server has stopped.
  struct sigaction sa = {};
  sa.sa_handler = on_stop_signal;
  sigemptyset(&sa.sa_mask);
  for (int sig : {SIGTERM, SIGINT, SIGUSR1}) sigaction(sig, &sa, nullptr);
  // (Threads this one starts from here on inherit its one core.)
  if (flags.get_bool("bind-threads") && go.device.is_cpu()) {
    const std::vector<int> cpus = bind_openmp_threads();
    if (root && !cpus.empty()) {
      std::string list;
      for (int c : cpus) list += (list.empty() ? "" : ",") + std::to_string(c);
      std::printf(
          "origami serve: OpenMP threads of rank 0 bound to CPUs %s (--no-bind-threads "
          "leaves them to the OS)\n",
          list.c_str());
    }
  }
  models::ParallelRunner runner(*gen, *world);
  if (!root) {
    try {
      runner.follow();  // until rank 0 stops
    } catch (const std::exception& e) {
      end_job("serve", world->rank(), e.what());
    }
    return 0;
  }
  serve::Engine engine(runner);
  {
    // One short request before the first client's: the first step's one-time costs (GEMM
    // primitives, first touch of the buffers) do not land on a client's time to first token.
    serve::RequestParams warm;
    const int64_t n = std::min<int64_t>(32, runner.limits().max_context - 2);
    for (int64_t i = 0; i < n; ++i) warm.prompt.push_back(i % runner.limits().vocab);
    warm.max_tokens = 2;
    engine.add_request(warm, {});
    while (engine.has_work()) engine.step();
  }
  std::cerr << gen->describe();
  const serve::RunnerLimits lim = runner.limits();
  std::printf(
      "origami serve: ready on http://%s:%u (model '%s', %d rank(s), context %lld, %lld KV "
      "blocks of %lld tokens, up to %lld sequences and %lld tokens a step)\n",
      so.http.host.c_str(), unsigned(server->port()), so.model.name.c_str(), world->size(),
      (long long)lim.max_context, (long long)lim.kv_blocks, (long long)lim.kv_block_size,
      (long long)lim.max_sequences, (long long)lim.max_step_tokens);
  std::fflush(stdout);
  server->attach(engine);

  // The signal: drain on a watcher thread while this thread keeps stepping.
  const auto drain_timeout =
      std::chrono::milliseconds(int64_t(flags.get_double("drain-timeout") * 1000));
  std::atomic<bool> engine_done{false};
  std::thread watcher([&] {
    while (!g_stop_signal && !engine_done)
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    if (engine_done) return;
    std::printf("origami serve: signal %d: draining %lld request(s) for up to %.1f s\n",
                int(g_stop_signal), (long long)server->in_flight(),
                double(drain_timeout.count()) / 1000.0);
    std::fflush(stdout);
    const int64_t aborted = server->drain(drain_timeout);
    std::printf("origami serve: drained; %lld request(s) stopped at the deadline\n",
                (long long)aborted);
    std::fflush(stdout);
    server->stop_engine();
  });
  try {
    server->run_engine();
  } catch (const std::exception& e) {
    engine_done = true;
    watcher.join();
    std::fprintf(stderr, "origami serve: rank 0: error: the engine failed: %s\n", e.what());
    // The front end stays up a moment answering /health and new requests with 503, so that a
    // load balancer or client polling it sees the failure; then the job ends (on several ranks
    // by MPI_Abort at once: unwinding would free the communicators, which waits for every rank,
    // and a stuck one never comes).
    std::fprintf(stderr, "origami serve: /health answers 503 for %.0f s, then the job ends\n",
                 double(kFailedEngineGrace.count()) / 1000.0);
    std::fflush(stderr);
    std::this_thread::sleep_for(kFailedEngineGrace);
    if (multi_rank) end_job("serve", 0, e.what());
    throw;
  }
  engine_done = true;
  watcher.join();
  runner.stop();  // the other ranks return
  const serve::EngineStats st = engine.stats();
  std::printf("origami serve: stopped after %lld steps (%lld prompt and %lld generated tokens)\n",
              (long long)st.steps, (long long)st.prompt_tokens, (long long)st.generated_tokens);
  return 0;
}

}  // namespace

}  // namespace origami::cli
