// Attention on the CPU: forward and forward+backward time and GFLOP/s for causal attention, next to
// PyTorch's math path (explicit q @ k^T, masked softmax, @ v, autograd backward; the way torch
// 1.13 computes attention without a fused kernel) measured in the same run with the same thread
// count, shapes and dtype (bench/torch_attention.py).
//
// FLOPs count the causal half of the dense products: forward 2 * 2 * B * Hq * S * S * D / 2,
// backward 2.5x forward.
//
// Usage: bench_attention [--quick] [--threads N] [--repeats R] [--no-torch]
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "ops/attention.h"
#include "ops/cpu/attention.h"
#include "runtime/tensor.h"

using namespace origami;

namespace {

struct Config {
  int64_t B, Hq, Hkv, S, D;
  DType dtype;
  std::string spec() const {  // the --case argument of torch_attention.py
    return std::to_string(B) + "," + std::to_string(Hq) + "," + std::to_string(Hkv) + "," +
           std::to_string(S) + "," + std::to_string(D) + "," + dtype_name(dtype);
  }
  double fwd_flops() const { return 2.0 * 2.0 * double(B * Hq) * double(S) * double(S) * D / 2; }
};

struct Timing {
  double fwd_ms = std::numeric_limits<double>::quiet_NaN();
  double fwdbwd_ms = std::numeric_limits<double>::quiet_NaN();
};

Tensor random_tensor(const Shape& shape, DType dtype, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> n(0.0f, 1.0f);
  std::vector<float> values(size_t(shape_numel(shape)));
  for (float& x : values) x = n(rng);
  return Tensor::from_vector(values, shape, dtype);
}

double best_ms(const std::function<void()>& fn, int repeats) {
  fn();  // warm-up (and the per-thread scratch)
  double best = std::numeric_limits<double>::infinity();
  for (int r = 0; r < repeats; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    fn();
    const auto t1 = std::chrono::steady_clock::now();
    best = std::min(best, std::chrono::duration<double, std::milli>(t1 - t0).count());
  }
  return best;
}

Timing time_origami(const Config& c, int repeats) {
  const Shape qs = {c.B, c.S, c.Hq, c.D}, ks = {c.B, c.S, c.Hkv, c.D};
  const Tensor q = random_tensor(qs, c.dtype, 1), k = random_tensor(ks, c.dtype, 2),
               v = random_tensor(ks, c.dtype, 3), dout = random_tensor(qs, c.dtype, 4);
  Tensor out = Tensor::empty(qs, c.dtype), lse = Tensor::empty({c.B, c.Hq, c.S}, DType::f32);
  Tensor dq = Tensor::empty(qs, c.dtype), dk = Tensor::empty(ks, c.dtype),
         dv = Tensor::empty(ks, c.dtype);
  const ops::AttentionParams p;  // causal, 1/sqrt(D)
  Timing t;
  t.fwd_ms = best_ms([&] { ops::attention_forward(q, k, v, p, out, lse); }, repeats);
  t.fwdbwd_ms = best_ms(
      [&] {
        ops::attention_forward(q, k, v, p, out, lse);
        ops::attention_backward(q, k, v, out, lse, dout, p, dq, dk, dv);
      },
      repeats);
  return t;
}

double json_number(const std::string& line, const std::string& key) {
  const size_t p = line.find("\"" + key + "\":");
  if (p == std::string::npos) return std::numeric_limits<double>::quiet_NaN();
  return std::strtod(line.c_str() + p + key.size() + 3, nullptr);
}

// Runs bench/torch_attention.py once for every config; returns timings keyed by spec.
std::map<std::string, Timing> time_torch(const std::vector<Config>& configs, int threads,
                                         int repeats) {
  namespace fs = std::filesystem;
  const fs::path src = ORIGAMI_SOURCE_DIR;
  const fs::path venv = src / ".venv/bin/python";
  std::string cmd = (fs::exists(venv) ? venv.string() : std::string("python3")) + " " +
                    (src / "bench/torch_attention.py").string() + " --threads " +
                    std::to_string(threads) + " --repeats " + std::to_string(repeats);
  for (const Config& c : configs) cmd += " --case " + c.spec();
  std::map<std::string, Timing> result;
  FILE* f = popen(cmd.c_str(), "r");
  if (!f) {
    std::fprintf(stderr, "cannot run %s\n", cmd.c_str());
    return result;
  }
  char buf[4096];
  while (std::fgets(buf, sizeof buf, f)) {
    const std::string line = buf;
    const size_t p = line.find("\"case\": \"");
    if (p == std::string::npos) continue;
    const size_t b = p + 9, e = line.find('"', b);
    Timing t;
    t.fwd_ms = json_number(line, "fwd_ms");
    t.fwdbwd_ms = json_number(line, "fwdbwd_ms");
    result[line.substr(b, e - b)] = t;
  }
  if (pclose(f) != 0) std::fprintf(stderr, "warning: %s failed\n", cmd.c_str());
  return result;
}

std::string load_average() {
  std::ifstream f("/proc/loadavg");
  std::string a;
  f >> a;
  return a.empty() ? "?" : a;
}

}  // namespace

int main(int argc, char** argv) {
  bool quick = false, torch = true;
  int threads = 2, repeats = -1;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--quick")
      quick = true;
    else if (a == "--no-torch")
      torch = false;
    else if (a == "--threads" && i + 1 < argc)
      threads = std::atoi(argv[++i]);
    else if (a == "--repeats" && i + 1 < argc)
      repeats = std::atoi(argv[++i]);
    else {
      std::fprintf(stderr, "usage: %s [--quick] [--threads N] [--repeats R] [--no-torch]\n",
                   argv[0]);
      return 2;
    }
  }
  if (repeats < 1) repeats = quick ? 2 : 5;
  omp_set_num_threads(threads);

  std::vector<Config> configs;
  if (quick) {
    configs = {{1, 4, 4, 1024, 64, DType::f32}, {1, 4, 4, 1024, 64, DType::bf16}};
  } else {
    configs = {
        {1, 8, 8, 1024, 64, DType::f32},  {4, 8, 8, 1024, 64, DType::f32},
        {1, 8, 2, 1024, 64, DType::f32},  {1, 8, 8, 1024, 128, DType::f32},
        {1, 4, 4, 2048, 64, DType::f32},  {1, 4, 1, 2048, 128, DType::f32},
        {1, 8, 8, 1024, 64, DType::bf16}, {1, 4, 4, 2048, 128, DType::bf16},
    };
  }

  std::printf("attention, causal, CPU: %d threads, kernels %s, load average %s at start\n", threads,
              ops::cpu::attention_isa(), load_average().c_str());
  std::vector<Timing> ours;
  for (const Config& c : configs) ours.push_back(time_origami(c, repeats));
  std::map<std::string, Timing> theirs;
  if (torch) theirs = time_torch(configs, threads, quick ? 1 : 2);

  std::printf("%-28s | %10s %8s | %10s %8s %7s | %10s %8s | %10s %8s %7s\n", "B,Hq,Hkv,S,D,dtype",
              "fwd ms", "GFLOP/s", "torch ms", "GFLOP/s", "speedup", "fwd+bwd ms", "GFLOP/s",
              "torch ms", "GFLOP/s", "speedup");
  for (size_t i = 0; i < configs.size(); ++i) {
    const Config& c = configs[i];
    const double ff = c.fwd_flops(), fb = 3.5 * ff;
    const Timing& o = ours[i];
    Timing t;
    if (auto it = theirs.find(c.spec()); it != theirs.end()) t = it->second;
    std::printf("%-28s | %10.2f %8.1f | %10.2f %8.1f %6.1fx | %10.2f %8.1f | %10.2f %8.1f %6.1fx\n",
                c.spec().c_str(), o.fwd_ms, ff / o.fwd_ms * 1e-6, t.fwd_ms, ff / t.fwd_ms * 1e-6,
                t.fwd_ms / o.fwd_ms, o.fwdbwd_ms, fb / o.fwdbwd_ms * 1e-6, t.fwdbwd_ms,
                fb / t.fwdbwd_ms * 1e-6, t.fwdbwd_ms / o.fwdbwd_ms);
  }
  std::printf("load average %s at end (a shared machine: figures vary from run to run)\n",
              load_average().c_str());
  return 0;
}
