// Batched decode throughput of the generator against the memory-bandwidth bound, measured in the
// same run. A decode step reads every weight once and the KV cache of every sequence, so
//   bound (tokens/s) = batch * read bandwidth / (weight bytes + batch * context * KV bytes/token)
// with the read bandwidth of a streaming sum over a buffer many times the last-level cache
// (independent accumulators, the same threads). Each configuration prefills `batch` sequences to
// `context` tokens once, then times `repeats` runs of decode steps (the median; the context grows
// by `steps` tokens a run).
//
//   bench_decode [--dtype bf16|f32] [--threads N] [--steps N] [--repeats N] [--batches 1,8,32]
//                [--contexts 128,2048] [--hidden 512 --layers 4 --vocab 32000 --ffn 1408]
//                [--model HF_DIR] [--weights dense|int8|int4] [--group-size 128]
//
// --model times a Hugging Face folder (a GPTQ one runs its quantized layers as stored) instead of
// a random Llama of the given sizes; --weights packs the linears at load (models/packed_weights.h).
// The bytes a step reads are counted from what the generator holds: the packed weights plus the
// dense parameters but the embedding table (of which a step reads one row a token). The resident
// set after each batch is set against the weights held plus the planned KV cache and
// activations, less what the process held at start-up (meaningful with --model: the random
// weights' f32 source stays resident).
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "bench/flag_pairs.h"
#include "bench/read_bandwidth.h"
#include "models/generator.h"
#include "models/hf_import.h"
#include "models/packed_weights.h"
#include "models/parameters.h"
#include "runtime/tensor.h"

using namespace origami;
using Clock = std::chrono::steady_clock;
using origami::bench::read_bandwidth;

namespace {

std::vector<int64_t> parse_list(const std::string& s) {
  std::vector<int64_t> out;
  size_t i = 0;
  while (i < s.size()) {
    size_t j = s.find(',', i);
    if (j == std::string::npos) j = s.size();
    out.push_back(std::stoll(s.substr(i, j - i)));
    i = j + 1;
  }
  return out;
}

// The process's resident set in bytes (VmRSS), or 0.
double resident_bytes() {
  FILE* f = std::fopen("/proc/self/status", "r");
  if (!f) return 0;
  char line[256];
  double kb = 0;
  while (std::fgets(line, sizeof line, f))
    if (std::strncmp(line, "VmRSS:", 6) == 0) kb = std::atof(line + 6);
  std::fclose(f);
  return kb * 1024.0;
}

}  // namespace

int main(int argc, char** argv) {
  std::string dtype = "bf16";
  int threads = omp_get_max_threads(), steps = 8, repeats = 3;
  std::vector<int64_t> batches = {1, 8, 32}, contexts = {128, 2048};
  int64_t hidden = 512, layers = 4, vocab = 32000, ffn = 1408, group = 128;
  std::string model_dir, weights = "dense";
  const char* usage =
      "usage: bench_decode [--dtype bf16|f32] [--threads N] [--steps N] [--repeats N]\n"
      "                    [--batches 1,8,32] [--contexts 128,2048]\n"
      "                    [--hidden 512 --layers 4 --vocab 32000 --ffn 1408]\n"
      "                    [--model HF_DIR] [--weights dense|int8|int4] [--group-size 128]\n"
      "Decode tokens/s of the generator against the read-bandwidth bound measured in the same\n"
      "run (the header of bench/bench_decode.cpp says how each figure is computed).\n";
  for (const auto& [k, v] : bench::flag_pairs(argc, argv, "bench_decode", usage)) {
    if (k == "--dtype")
      dtype = v;
    else if (k == "--threads")
      threads = std::stoi(v);
    else if (k == "--steps")
      steps = std::stoi(v);
    else if (k == "--repeats")
      repeats = std::stoi(v);
    else if (k == "--batches")
      batches = parse_list(v);
    else if (k == "--contexts")
      contexts = parse_list(v);
    else if (k == "--hidden")
      hidden = std::stoll(v);
    else if (k == "--layers")
      layers = std::stoll(v);
    else if (k == "--vocab")
      vocab = std::stoll(v);
    else if (k == "--ffn")
      ffn = std::stoll(v);
    else if (k == "--model")
      model_dir = v;
    else if (k == "--weights")
      weights = v;
    else if (k == "--group-size")
      group = std::stoll(v);
    else
      bench::unknown_flag("bench_decode", k, usage);
  }
  omp_set_num_threads(threads);
  // What the process holds before any model: its code and libraries (a CUDA build maps some
  // 200 MB of cuBLAS / NCCL pages at start-up), subtracted from the resident set below.
  const double baseline = resident_bytes();
  models::ModelSpec spec;
  const int64_t max_ctx = *std::max_element(contexts.begin(), contexts.end());
  if (model_dir.empty()) {
    spec.family = models::Family::llama;
    spec.vocab = vocab;
    spec.hidden = hidden;
    spec.layers = layers;
    spec.heads = hidden / 64;
    spec.kv_heads = std::max<int64_t>(1, spec.heads / 4);
    spec.head_dim = 64;
    spec.ffn = ffn;
    spec.rope.head_dim = 64;
    spec.rope.theta = 10000.0;
    spec.rms_eps = 1e-5;
  } else {
    spec = models::spec_from_hf_config(model_dir);
    hidden = spec.hidden;
    layers = spec.layers;
    vocab = spec.vocab;
    ffn = spec.is_moe() ? spec.moe.expert_ffn : spec.ffn;
  }
  spec.max_seq_len = std::max(spec.max_seq_len, max_ctx + repeats * steps + 1);
  const DType dt = dtype_from_name(dtype);
  const double esize = dt == DType::f32 ? 4.0 : 2.0;
  models::LinearWeights lw;
  lw.mode = models::parse_weight_mode(weights);
  lw.group_size = group;
  if (!model_dir.empty()) lw.quantized = models::gptq_quantized_names(model_dir, spec);
  models::ParameterBuffer params;
  if (model_dir.empty()) {
    params = models::ParameterBuffer(models::ParameterLayout(spec), DType::f32);
    params.init_random(1, 0.02);
  }
  // A generator of the batch: built from the random weights, or loaded from the folder.
  const auto make = [&](int64_t B) {
    models::GeneratorOptions go;
    go.max_batch = B;
    go.max_seq = max_ctx + repeats * steps + 1;
    go.max_step_tokens = std::max<int64_t>(B, 512);
    go.compute = dt;
    go.weights = lw;
    if (model_dir.empty()) return std::make_unique<models::Generator>(spec, params, go);
    auto g = std::make_unique<models::Generator>(spec, go);
    models::load_hf_weights(model_dir, g->weights(), &g->packed_weights());
    return g;
  };
  // Bytes a decode step reads: packed weights, plus the dense parameters but the embedding
  // table (an MoE step reads the experts its tokens chose: this counts them all).
  // One generator for every batch size (slots 0 .. B-1 of the largest): loaded once.
  std::unique_ptr<models::Generator> g = make(*std::max_element(batches.begin(), batches.end()));
  double weight_bytes = 0;
  {
    const models::ParameterLayout& layout = g->decoder().layout();
    for (const models::ParamEntry& e : layout.entries())
      if (!e.packed && e.name != layout.names().embed) weight_bytes += double(e.numel) * esize;
    if (spec.tie_embeddings) weight_bytes += double(vocab * hidden) * esize;
    weight_bytes += double(g->packed_weights().bytes());
  }
  const double kv_per_token = double(2 * layers * spec.kv_heads * spec.head_dim) * esize;

  const double bw = read_bandwidth(threads);
  const std::string load = bench::load_average();
  std::printf(
      "model: hidden %lld, %lld layers, %lld heads (%lld KV), ffn %lld, vocab %lld: %.1f M "
      "parameters, %s, weights %s, %.1f MB of weights read per step (all but the embedding "
      "table)\n"
      "read bandwidth %.1f GB/s (%d threads, 1 GiB streaming sum); load average %s\n"
      "bound = batch x bandwidth / (weights + batch x context x %.0f B of KV per token)\n\n",
      (long long)hidden, (long long)layers, (long long)spec.heads, (long long)spec.kv_heads,
      (long long)ffn, (long long)vocab,
      double(models::ParameterLayout(spec).parameter_count()) / 1e6, dtype.c_str(), weights.c_str(),
      weight_bytes / 1e6, bw / 1e9, threads, load.c_str(), kv_per_token);
  std::printf("%6s %8s %12s %12s %8s %10s\n", "batch", "context", "tokens/s", "bound", "ratio",
              "ms/step");
  models::Generator& gen = *g;
  for (int64_t B : batches) {
    for (int64_t ctx : contexts) {
      std::vector<double> times;
      // Prefill every sequence to ctx tokens once (chunks of at most 512 tokens per step), then
      // `repeats` timed runs of steps - 1 decode steps each (the context grows by steps a run).
      gen.reset();
      std::vector<std::vector<int64_t>> prompt(static_cast<size_t>(B));
      for (int64_t b = 0; b < B; ++b)
        for (int64_t t = 0; t < ctx; ++t) prompt[size_t(b)].push_back((b * 31 + t * 7) % vocab);
      for (int64_t b = 0; b < B; ++b)
        for (int64_t t = 0; t < ctx; t += 512) {
          const int64_t n = std::min<int64_t>(512, ctx - t);
          std::vector<models::SequenceChunk> c = {
              {b, std::span<const int64_t>(prompt[size_t(b)].data() + t, size_t(n))}};
          gen.step(c);
        }
      std::vector<int64_t> next(static_cast<size_t>(B), 1);
      std::vector<models::SequenceChunk> chunks;
      for (int64_t b = 0; b < B; ++b)
        chunks.push_back({b, std::span<const int64_t>(&next[size_t(b)], 1)});
      for (int r = 0; r < repeats; ++r) {
        gen.step(chunks);  // warm-up
        const auto t0 = Clock::now();
        for (int s = 0; s < steps - 1; ++s) gen.step(chunks);
        times.push_back(std::chrono::duration<double>(Clock::now() - t0).count() / (steps - 1));
      }
      std::sort(times.begin(), times.end());
      const double step_s = times[times.size() / 2];
      const double bytes = weight_bytes + double(B) * double(ctx) * kv_per_token;
      const double bound = double(B) * bw / bytes, got = double(B) / step_s;
      std::printf("%6lld %8lld %12.1f %12.1f %7.1f%% %10.2f\n", (long long)B, (long long)ctx, got,
                  bound, 100.0 * got / bound, step_s * 1e3);
      std::fflush(stdout);
    }
    // Memory while decoding: the weights as held (packed + the dense buffer) plus the KV cache
    // and activations of the memory plan, against the resident set.
    const MemoryPlan& plan = gen.plan();
    const double held =
        double(gen.packed_weights().bytes()) + double(gen.decoder().layout().total_numel()) * esize;
    const double rest = double(plan.total_bytes()) - double(plan.arena_bytes("compute weights"));
    const double rss = resident_bytes();
    std::printf(
        "  memory after batch %lld: resident %.1f MB - %.1f MB at start-up = %.1f MB; weights "
        "held %.1f MB + KV cache and activations %.1f MB = %.1f MB; resident / that = "
        "%.3f\n",
        (long long)B, rss / 1e6, baseline / 1e6, (rss - baseline) / 1e6, held / 1e6, rest / 1e6,
        (held + rest) / 1e6, (rss - baseline) / (held + rest));
  }
  return 0;
}
