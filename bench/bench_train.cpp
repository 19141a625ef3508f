// Training step and decode on the CPU.
//
// 1. Training: tokens per second of one step (zero gradients, forward + backward, AdamW) of a
//    ~21M-parameter Llama-style decoder and of a Mixtral-style MoE decoder with the same active
//    size (8 experts, top-2, expert width F/2), in fp32 and bf16, against the same model written
//    with plain torch.nn modules (bench/torch_train.py) with the same dims, dtype and thread
//    count. PyTorch runs in a process of its own that takes one step per request: its steps
//    alternate with origami's, so that on a machine shared with other work both see the same
//    load. bf16 in PyTorch is timed both as model.to(bfloat16) ("cast") and as fp32 weights
//    under torch.autocast ("autocast", the counterpart of origami's fp32 master weights with a
//    bf16 compute copy); the ratio uses the faster of the two. When PyTorch's steps would overrun
//    --torch-budget-s (its fp32 matmul on a slow BLAS), it runs fewer of them, and at a smaller
//    batch if need be; tokens/s are compared as they are (the table says so).
//    --phases adds origami's step split into forward, backward and AdamW.
// 2. Decode: tokens per second of one sequence (batch 1) through models/generator.h with a KV
//    cache, against the memory-bandwidth bound: bytes read per token (the weights a token uses
//    and its KV cache) over the copy bandwidth of a large buffer measured in the same run.
//
// PyTorch runs in the repository's .venv (ORIGAMI_SOURCE_DIR/.venv/bin/python), else
// /usr/bin/python3, and inherits this program's environment: LD_LIBRARY_PATH pointing at another
// libblas.so.3 changes the BLAS its fp32 matmul uses (the table names the one it loaded).
// Figures are best and median of the timed steps; on a machine shared with other work, the best
// is the least disturbed. There, also run it with OMP_WAIT_POLICY=passive (both sides inherit
// it): with OpenMP's default spin-waiting, a thread that spins at a barrier while its partner
// waits for a core can slow the many short parallel regions of a decode step tenfold or more.
//
// Usage: bench_train [--quick] [--threads N] [--steps R] [--phases] [--no-torch] [--no-train]
//                    [--no-decode] [--torch-budget-s S] [--model dense|moe] [--dtype f32|bf16]
//                    [--decode-tokens N]
#include <fcntl.h>
#include <omp.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "models/decoder.h"
#include "models/generator.h"
#include "models/model_spec.h"
#include "ops/optimizer.h"
#include "runtime/tensor.h"

extern char** environ;

using namespace origami;
using Clock = std::chrono::steady_clock;

namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

constexpr const char* kUsage =
    "usage: bench_train [--quick] [--threads N] [--steps R] [--phases] [--no-torch] [--no-train]\n"
    "                   [--no-decode] [--torch-budget-s S] [--model dense|moe] [--dtype f32|bf16]\n"
    "                   [--decode-tokens N]\n"
    "  --quick            2 layers, B=2 S=128, fewer steps: a check that it runs\n"
    "  --threads N        threads of origami and of PyTorch (default 2)\n"
    "  --steps R          timed training steps (default 5; quick 2)\n"
    "  --phases           also time origami's forward, backward and AdamW apart\n"
    "  --no-torch, --no-train, --no-decode   leave out PyTorch, the training or the decode part\n"
    "  --torch-budget-s S seconds one PyTorch config may take (default 60; quick 20)\n"
    "  --model, --dtype   only this model or dtype (default: both of each)\n"
    "  --decode-tokens N  tokens decoded after the prompt (default 64; quick 16)\n";

struct Options {
  bool quick = false, phases = false, torch = true, train = true, decode = true;
  int threads = 2, steps = -1;
  double torch_budget_s = -1;
  std::string only_model, only_dtype;  // filters: dense | moe, f32 | bf16 (empty = all)
  int64_t decode_tokens = -1;
};

struct Stats {
  double best = kNaN, median = kNaN;  // seconds
};

Stats stats_of(std::vector<double> v) {
  Stats s;
  if (v.empty()) return s;
  std::sort(v.begin(), v.end());
  s.best = v.front();
  s.median = v.size() % 2 ? v[v.size() / 2] : 0.5 * (v[v.size() / 2 - 1] + v[v.size() / 2]);
  return s;
}

// Tokens per second of timed steps.
struct Rate {
  double best = kNaN, median = kNaN;
};

Rate rate(const std::vector<double>& seconds, double tokens) {
  const Stats s = stats_of(seconds);
  return {tokens / s.best, tokens / s.median};
}

double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

// Times fn `reps` times.
Stats time_it(const std::function<void()>& fn, int reps) {
  std::vector<double> t;
  for (int i = 0; i < reps; ++i) {
    const auto t0 = Clock::now();
    fn();
    t.push_back(seconds_since(t0));
  }
  return stats_of(t);
}

std::string load_average() {
  std::ifstream f("/proc/loadavg");
  std::string a, b, c;
  f >> a >> b >> c;
  return a.empty() ? "?" : a + " " + b + " " + c;
}

// ---- models -------------------------------------------------------------------------------------

struct Model {
  std::string name;
  models::ModelSpec spec;
  int64_t batch, seq;
};

// Llama-style: H=512, 6 layers, 8 heads of 64, SwiGLU 1376, vocabulary 4096 tied to the
// embedding: 21.1M parameters. quick: 2 layers.
models::ModelSpec dense_spec(bool quick) {
  models::ModelSpec s;
  s.family = models::Family::llama;
  s.vocab = 4096;
  s.hidden = 512;
  s.layers = quick ? 2 : 6;
  s.heads = 8;
  s.kv_heads = 8;
  s.head_dim = 64;
  s.ffn = 1376;
  s.rope.head_dim = s.head_dim;
  s.rope.theta = 10000.0;
  s.rms_eps = 1e-6;
  s.tie_embeddings = true;
  s.max_seq_len = 1024;
  return s;
}

// Mixtral-style with the dense model's active size: 8 experts of width 688, top-2 (2 x 688 =
// 1376 active), softmax router with the k weights renormalised, load-balancing loss 0.01.
models::ModelSpec moe_spec(bool quick) {
  models::ModelSpec s = dense_spec(quick);
  s.family = models::Family::mixtral;
  s.ffn = 0;
  s.moe.num_experts = 8;
  s.moe.top_k = 2;
  s.moe.expert_ffn = 688;
  s.moe.router = models::RouterKind::softmax;
  s.moe.norm_topk_prob = true;
  s.moe.aux_loss_coeff = 0.01;
  return s;
}

// Parameters one token uses: everything but the experts it is not routed to.
int64_t active_parameters(const models::ModelSpec& s, int64_t total) {
  if (!s.is_moe()) return total;
  const int64_t idle = s.moe.num_experts - s.moe.top_k;
  return total - s.num_moe_layers() * idle * 3 * s.hidden * s.moe.expert_ffn;
}

Tensor random_ids(int64_t b, int64_t s, int64_t vocab, uint64_t seed) {
  std::vector<int64_t> v(size_t(b * s));
  uint64_t x = seed * 0x9E3779B97F4A7C15ull + 1;
  for (int64_t& id : v) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    id = int64_t(x % uint64_t(vocab));
  }
  Tensor t = Tensor::empty({b, s}, DType::i64);
  std::memcpy(t.data(), v.data(), v.size() * sizeof(int64_t));
  return t;
}

// ---- origami training step ----------------------------------------------------------------------

models::DecoderOptions decoder_options(const Model& m, DType dt) {
  models::DecoderOptions o;
  o.batch = m.batch;
  o.seq = m.seq;
  o.compute = dt;
  return o;
}

// One model with its data, optimizer and a step to time.
class OrigamiTrainer {
 public:
  OrigamiTrainer(const Model& m, DType dt)
      : model_(m.spec, decoder_options(m, dt)),
        ids_(random_ids(m.batch, m.seq, m.spec.vocab, 1)),
        targets_(random_ids(m.batch, m.seq, m.spec.vocab, 2)) {
    model_.params().init_random(1, 0.02);
    model_.sync_compute_weights();
    adamw_.lr = 1e-4f;
  }

  int64_t parameters() const { return model_.layout().parameter_count(); }

  // One training step: zero grads + forward_backward + AdamW. Returns its seconds.
  double step() {
    const auto t0 = Clock::now();
    model_.grads().zero();
    model_.forward_backward(ids_, targets_);
    adamw();
    return seconds_since(t0);
  }

  // Best seconds of forward, backward (forward_backward - forward) and AdamW, timed apart.
  void phases(int reps, double& fwd, double& bwd, double& adamw_s) {
    fwd = time_it([&] { model_.forward(ids_, targets_); }, reps).best;
    bwd = time_it([&] { model_.forward_backward(ids_, targets_); }, reps).best - fwd;
    adamw_s = time_it([&] { adamw(); }, reps).best;
  }

 private:
  void adamw() {
    ++adamw_.step;
    model_.adamw_step(adamw_);
  }

  models::Decoder model_;
  Tensor ids_, targets_;
  ops::AdamWParams adamw_;
};

// ---- PyTorch training step ---------------------------------------------------------------------

double json_number(const std::string& line, const std::string& key) {
  const size_t p = line.find("\"" + key + "\": ");
  if (p == std::string::npos) return kNaN;
  return std::strtod(line.c_str() + p + key.size() + 4, nullptr);
}

std::string json_string(const std::string& line, const std::string& key) {
  const size_t p = line.find("\"" + key + "\": \"");
  if (p == std::string::npos) return "";
  const size_t b = p + key.size() + 5, e = line.find('"', b);
  return line.substr(b, e - b);
}

// CASE of torch_train.py: dtype,B,S,V,H,L,Hq,Hkv,D,F,E,K,Fe,tie
std::string torch_case(const Model& m, DType dt) {
  const models::ModelSpec& s = m.spec;
  std::string c = dtype_name(dt);
  for (int64_t v :
       {m.batch, m.seq, s.vocab, s.hidden, s.layers, s.heads, s.kv_heads, s.head_dim, s.ffn,
        s.moe.num_experts, s.moe.top_k, s.moe.expert_ffn, int64_t(s.tie_embeddings ? 1 : 0)}) {
    c += ',';
    c += std::to_string(v);
  }
  return c;
}

// bench/torch_train.py in a process of its own that runs one training step per request, so
// that its steps alternate with origami's and both see the same load.
class TorchTrainer {
 public:
  TorchTrainer(const Model& m, DType dt, const std::string& bf16_mode, const Options& o) {
    const std::string venv = std::string(ORIGAMI_SOURCE_DIR) + "/.venv/bin/python";
    const std::string python = std::filesystem::exists(venv) ? venv : "/usr/bin/python3";
    const std::string script = std::string(ORIGAMI_SOURCE_DIR) + "/bench/torch_train.py";
    std::vector<std::string> args = {python,       script,
                                     "--threads",  std::to_string(o.threads),
                                     "--warmup",   "1",
                                     "--steps",    std::to_string(o.steps),
                                     "--budget-s", std::to_string(o.torch_budget_s),
                                     "--case",     torch_case(m, dt)};
    if (dt == DType::bf16) args.insert(args.end(), {"--bf16-mode", bf16_mode});
    std::vector<char*> argv;
    for (std::string& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    int to_child[2], from_child[2];
    if (pipe2(to_child, O_CLOEXEC) != 0) return;
    if (pipe2(from_child, O_CLOEXEC) != 0) {
      close(to_child[0]);
      close(to_child[1]);
      return;
    }
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, to_child[0], 0);
    posix_spawn_file_actions_adddup2(&fa, from_child[1], 1);
    const int err = posix_spawn(&pid_, python.c_str(), &fa, nullptr, argv.data(), environ);
    posix_spawn_file_actions_destroy(&fa);
    close(to_child[0]);
    close(from_child[1]);
    to_ = fdopen(to_child[1], "w");
    from_ = fdopen(from_child[0], "r");
    if (err != 0) {
      pid_ = -1;
      std::fprintf(stderr, "bench_train: cannot run %s: %s\n", python.c_str(), std::strerror(err));
      return;
    }
    const std::string ready = read_line();  // after the model is built and warm
    const double b = json_number(ready, "batch"), n = json_number(ready, "steps");
    batch = std::isfinite(b) ? int64_t(b) : 0;
    steps = std::isfinite(n) ? int64_t(n) : 0;
    mode = json_string(ready, "mode");
    blas = json_string(ready, "blas");
    if (batch <= 0)
      std::fprintf(stderr,
                   "bench_train: %s did not start (its error is above); check that %s imports "
                   "torch, or pass --no-torch\n",
                   script.c_str(), python.c_str());
  }

  ~TorchTrainer() {
    if (to_) std::fclose(to_);  // end of its stdin: it exits
    if (from_) std::fclose(from_);
    if (pid_ > 0) waitpid(pid_, nullptr, 0);
  }
  TorchTrainer(const TorchTrainer&) = delete;
  TorchTrainer& operator=(const TorchTrainer&) = delete;

  bool ok() const { return batch > 0; }

  // One training step in the PyTorch process. Returns its seconds (NaN if it failed).
  double step() {
    if (!ok() || std::fputs("step\n", to_) < 0 || std::fflush(to_) != 0) return kNaN;
    return json_number(read_line(), "s");
  }

  int64_t batch = 0, steps = 0;  // what it runs at (less than asked when over the budget)
  std::string mode, blas;

 private:
  std::string read_line() {
    char buf[4096];
    return from_ && std::fgets(buf, sizeof buf, from_) ? std::string(buf) : std::string();
  }

  pid_t pid_ = -1;
  FILE* to_ = nullptr;
  FILE* from_ = nullptr;
};

// ---- memory bandwidth and decode ---------------------------------------------------------------

// Copy bandwidth (bytes read + bytes written per second, as STREAM counts a copy) of a buffer
// far larger than the caches, with `threads` threads each copying its slice. Best of 5.
double copy_bandwidth(int threads) {
  const size_t bytes = size_t(512) << 20;
  std::unique_ptr<char[]> a(new char[bytes]), b(new char[bytes]);
  std::memset(a.get(), 1, bytes);
  std::memset(b.get(), 2, bytes);
  double best = 0;
  for (int rep = 0; rep < 5; ++rep) {
    const auto t0 = Clock::now();
#pragma omp parallel num_threads(threads)
    {
      const size_t n = size_t(omp_get_num_threads()), i = size_t(omp_get_thread_num());
      const size_t chunk = (bytes + n - 1) / n, begin = std::min(bytes, i * chunk);
      const size_t end = std::min(bytes, begin + chunk);
      std::memcpy(b.get() + begin, a.get() + begin, end - begin);
    }
    best = std::max(best, 2.0 * double(bytes) / seconds_since(t0));
  }
  return best;
}

// Bytes one decode token reads: every matrix it multiplies by (the routed experts only), the
// norms, one embedding row, and the KV cache of `context` earlier tokens.
double decode_bytes(const models::ModelSpec& s, DType dt, double context) {
  const double H = double(s.hidden), Dq = double(s.heads * s.head_dim),
               Dkv = double(s.kv_heads * s.head_dim);
  double w = 0;
  for (int64_t l = 0; l < s.layers; ++l) {
    w += H * (Dq + 2 * Dkv) + Dq * H + 2 * H;
    if (s.is_moe_layer(l))
      w += double(s.moe.num_experts) * H + double(s.moe.top_k) * 3 * H * double(s.moe.expert_ffn);
    else
      w += 3 * H * double(s.ffn);
  }
  w += double(s.vocab) * H + 2 * H;  // LM head (tied or not), final norm, embedding row
  const double kv = 2.0 * double(s.layers) * context * Dkv;
  return (w + kv) * double(dtype_size(dt));
}

// Seconds per decode step of one sequence, after a prompt of `prompt` tokens.
Stats time_decode(const Model& m, DType dt, int64_t prompt, int64_t tokens) {
  models::ParameterLayout layout(m.spec);
  models::ParameterBuffer params(layout, DType::f32);
  params.init_random(1, 0.02);
  models::GeneratorOptions go;
  go.max_batch = 1;
  go.max_seq = prompt + tokens + 1;
  go.compute = dt;
  models::Generator gen(m.spec, params, go);
  const Tensor ids = random_ids(1, prompt + tokens + 1, m.spec.vocab, 3);
  const int64_t* id = ids.data_as<int64_t>();
  const models::SequenceChunk pre{0, std::span<const int64_t>(id, size_t(prompt))};
  gen.step(std::span<const models::SequenceChunk>(&pre, 1));
  std::vector<double> t;
  for (int64_t i = 0; i < tokens; ++i) {
    const models::SequenceChunk c{0, std::span<const int64_t>(id + prompt + i, 1)};
    const auto t0 = Clock::now();
    gen.step(std::span<const models::SequenceChunk>(&c, 1));
    t.push_back(seconds_since(t0));
  }
  if (t.size() > 2) t.erase(t.begin());  // the first decode step sets up its kernels
  return stats_of(t);
}

std::string millions(int64_t n) {
  char b[32];
  std::snprintf(b, sizeof b, "%.1fM", double(n) / 1e6);
  return b;
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    const bool has_value = i + 1 < argc;
    if (a == "--help" || a == "-h") {
      std::printf("%s", kUsage);
      return 0;
    } else if (a == "--quick") {
      o.quick = true;
    } else if (a == "--phases") {
      o.phases = true;
    } else if (a == "--no-torch") {
      o.torch = false;
    } else if (a == "--no-train") {
      o.train = false;
    } else if (a == "--no-decode") {
      o.decode = false;
    } else if (a == "--threads" && has_value) {
      o.threads = std::atoi(argv[++i]);
    } else if (a == "--steps" && has_value) {
      o.steps = std::atoi(argv[++i]);
    } else if (a == "--torch-budget-s" && has_value) {
      o.torch_budget_s = std::atof(argv[++i]);
    } else if (a == "--decode-tokens" && has_value) {
      o.decode_tokens = std::atoll(argv[++i]);
    } else if (a == "--model" && has_value) {
      o.only_model = argv[++i];
    } else if (a == "--dtype" && has_value) {
      o.only_dtype = argv[++i];
    } else {
      std::fprintf(stderr, "bench_train: unknown or incomplete argument '%s'\n%s", a.c_str(),
                   kUsage);
      return 2;
    }
  }
  o.threads = std::max(1, o.threads);
  if (o.steps < 1) o.steps = o.quick ? 2 : 5;
  if (o.torch_budget_s <= 0) o.torch_budget_s = o.quick ? 20 : 60;
  if (o.decode_tokens < 1) o.decode_tokens = o.quick ? 16 : 64;
  const int warmup = o.quick ? 1 : 2;
  omp_set_num_threads(o.threads);
  std::signal(SIGPIPE, SIG_IGN);  // a PyTorch process that died is reported, not fatal

  const int64_t B = o.quick ? 2 : 4, S = o.quick ? 128 : 256;
  std::vector<Model> models;
  if (o.only_model.empty() || o.only_model == "dense")
    models.push_back({"dense", dense_spec(o.quick), B, S});
  if (o.only_model.empty() || o.only_model == "moe")
    models.push_back({"moe 8x top-2", moe_spec(o.quick), B, S});
  std::vector<DType> dtypes;
  for (DType dt : {DType::f32, DType::bf16})
    if (o.only_dtype.empty() || o.only_dtype == dtype_name(dt)) dtypes.push_back(dt);
  if (models.empty() || dtypes.empty()) {
    std::fprintf(stderr, "bench_train: --model takes dense or moe, --dtype f32 or bf16\n%s",
                 kUsage);
    return 2;
  }

  const char* wait_policy = std::getenv("OMP_WAIT_POLICY");
  std::printf(
      "bench_train: %d threads, B=%lld S=%lld, %d warm-up + %d timed steps%s, OMP_WAIT_POLICY=%s\n",
      o.threads, static_cast<long long>(B), static_cast<long long>(S), warmup, o.steps,
      o.quick ? " (quick)" : "", wait_policy ? wait_policy : "(unset)");
  for (const Model& m : models) std::printf("  %-13s %s\n", m.name.c_str(), m.spec.str().c_str());
  std::fflush(stdout);

  struct TorchRun {
    std::string mode;
    int64_t batch, steps;
    Rate rate;
  };
  struct Row {
    const Model* model = nullptr;
    DType dtype = DType::f32;
    std::string load;  // load average when this config started
    int64_t params = 0;
    Rate ours;
    std::vector<TorchRun> torch;  // f32: fp32; bf16: cast, autocast
    double fwd = kNaN, bwd = kNaN, adamw = kNaN;
  };
  std::vector<Row> rows;
  std::string blas;
  for (const Model& m : models) {
    for (DType dt : dtypes) {
      if (!o.train) break;
      Row row;
      row.model = &m;
      row.dtype = dt;
      row.load = load_average();
      OrigamiTrainer ours(m, dt);
      row.params = ours.parameters();
      for (int i = 0; i < warmup; ++i) ours.step();
      std::vector<double> ours_s;
      std::vector<std::string> modes = {"none"};
      if (o.torch)
        modes = dt == DType::f32 ? std::vector<std::string>{"fp32"}
                                 : std::vector<std::string>{"cast", "autocast"};
      for (const std::string& mode : modes) {
        std::unique_ptr<TorchTrainer> torch;
        if (mode != "none") torch = std::make_unique<TorchTrainer>(m, dt, mode, o);
        // Alternate: one step of origami, one of PyTorch (while it has steps to run).
        std::vector<double> torch_s;
        for (int i = 0; i < o.steps; ++i) {
          ours_s.push_back(ours.step());
          if (torch && torch->ok() && i < torch->steps) {
            const double t = torch->step();
            if (!std::isnan(t)) torch_s.push_back(t);
          }
        }
        if (torch && torch->ok()) {
          row.torch.push_back({torch->mode, torch->batch, int64_t(torch_s.size()),
                               rate(torch_s, double(torch->batch * m.seq))});
          blas = torch->blas;
        }
      }
      row.ours = rate(ours_s, double(m.batch * m.seq));
      if (o.phases) ours.phases(std::max(3, o.steps), row.fwd, row.bwd, row.adamw);
      std::printf("  measured %-13s %-4s (load average %s at start)\n", m.name.c_str(),
                  dtype_name(dt), row.load.c_str());
      std::fflush(stdout);
      rows.push_back(std::move(row));
    }
  }

  if (!rows.empty()) {
    std::printf(
        "\nTraining step (zero grads + forward + backward + AdamW), tokens/s = batch*S / step "
        "time, best and median;\nratio = origami / PyTorch tokens/s (best, median); bf16: the "
        "faster PyTorch mode\n");
    std::printf("%-13s %-5s %-11s | %8s %8s | %8s %8s  %-20s | %6s %6s\n", "model", "dtype",
                "params", "origami", "median", "torch", "median", "torch mode", "ratio", "median");
    for (const Row& r : rows) {
      const TorchRun* best = nullptr;
      for (const TorchRun& t : r.torch)
        if (!best || t.rate.median > best->rate.median) best = &t;
      Rate t;
      std::string mode = "-";
      if (best) {
        t = best->rate;
        mode = best->mode;
        if (best->batch != r.model->batch) mode += " B=" + std::to_string(best->batch);
        if (best->steps < o.steps) mode += " " + std::to_string(best->steps) + " steps";
      }
      std::string params = millions(r.params);
      if (r.model->spec.is_moe())
        params += "/" + millions(active_parameters(r.model->spec, r.params));
      std::printf("%-13s %-5s %-11s | %8.0f %8.0f | %8.0f %8.0f  %-20s | %5.2fx %5.2fx\n",
                  r.model->name.c_str(), dtype_name(r.dtype), params.c_str(), r.ours.best,
                  r.ours.median, t.best, t.median, mode.c_str(), r.ours.best / t.best,
                  r.ours.median / t.median);
    }
    if (rows.back().model->spec.is_moe()) std::printf("  params: total/active for the MoE model\n");
    for (const Row& r : rows)
      if (r.torch.size() > 1)
        for (const TorchRun& t : r.torch)
          std::printf("  torch bf16 %-8s %-13s: %6.0f tok/s best, %6.0f median\n", t.mode.c_str(),
                      r.model->name.c_str(), t.rate.best, t.rate.median);
    if (!blas.empty()) std::printf("  torch's BLAS (its fp32 matmul): %s\n", blas.c_str());

    if (o.phases) {
      std::printf("\norigami step phases (best of a few, ms)\n");
      for (const Row& r : rows)
        std::printf("%-13s %-5s forward %8.1f  backward %8.1f  AdamW %7.1f\n",
                    r.model->name.c_str(), dtype_name(r.dtype), r.fwd * 1e3, r.bwd * 1e3,
                    r.adamw * 1e3);
    }
  }

  if (o.decode) {
    const double bw = copy_bandwidth(o.threads);
    const int64_t prompt = o.quick ? 32 : 128;
    std::printf(
        "\nDecode, batch 1 (models/generator.h, KV cache): prompt %lld, %lld tokens; copy "
        "bandwidth %.1f GB/s (%d threads, 512 MiB, read+write); load average %s\n"
        "bound = copy bandwidth / bytes read per token (weights used + KV cache)\n",
        static_cast<long long>(prompt), static_cast<long long>(o.decode_tokens), bw * 1e-9,
        o.threads, load_average().c_str());
    std::printf("%-13s %-5s | %8s %8s | %9s %11s | %9s %9s\n", "model", "dtype", "tok/s", "median",
                "MB/token", "bound tok/s", "of bound", "median");
    for (const Model& m : models) {
      for (DType dt : dtypes) {
        const Stats d = time_decode(m, dt, prompt, o.decode_tokens);
        const double bytes =
            decode_bytes(m.spec, dt, double(prompt) + 0.5 * double(o.decode_tokens));
        const double bound = bw / bytes;
        std::printf("%-13s %-5s | %8.0f %8.0f | %9.1f %11.0f | %8.0f%% %8.0f%%\n", m.name.c_str(),
                    dtype_name(dt), 1.0 / d.best, 1.0 / d.median, bytes * 1e-6, bound,
                    100.0 / d.best / bound, 100.0 / d.median / bound);
        std::fflush(stdout);
      }
    }
  }
  std::printf("\nload average %s at end (a shared machine: figures vary from run to run)\n",
              load_average().c_str());
  return 0;
}
