// GEMM throughput on the CPU: ops::gemm / ops::grouped_gemm against the same product as one
// oneDNN matmul primitive created once and executed in a loop (the library's own speed, the
// ceiling for ours) and against PyTorch (bench/torch_gemm.py, run once, same thread count).
//
//   bench_gemm [--quick] [--threads N] [--reps R] [--no-torch] [--filter TEXT]
//
// Each figure is the best of R timed runs after a warm-up; ours and oneDNN alternate run by run
// so that load from other processes hits both alike. Medians are printed too: on a shared
// machine the spread between best and median shows how noisy the run was.
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <functional>
#include <map>
#include <random>
#include <string>
#include <unordered_map>
#include <vector>

#include <dnnl.hpp>

#include "ops/gemm.h"
#include "runtime/tensor.h"

namespace {

using namespace origami;

struct Case {
  std::string name;
  int64_t m = 0, n = 0, k = 0;  // grouped: m is the total of rows
  std::vector<int64_t> rows;    // grouped GEMM when not empty
  bool grouped() const { return !rows.empty(); }
  double flops() const { return 2.0 * double(m) * double(n) * double(k); }
};

struct Timing {
  double best = 0, median = 0;
  double row_scale = 1;  // PyTorch only: the fraction of the rows it was timed on
};
Timing summarize(std::vector<double> t) {
  std::sort(t.begin(), t.end());
  return {t.front(), t[t.size() / 2]};
}

// Seconds per call of fn, timed over `calls` calls (small problems take many per sample).
double seconds_of(const std::function<void()>& fn, int calls) {
  const auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < calls; ++i) fn();
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / calls;
}

// Calls per timed sample: about 0.1 GFLOP per sample, at most 1000 calls.
int calls_per_sample(double flops) {
  return int(std::clamp(1e8 / flops, 1.0, 1000.0));
}

Tensor random_matrix(const Shape& shape, DType dtype, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  std::vector<float> v(size_t(shape_numel(shape)));
  for (float& x : v) x = u(rng);
  return Tensor::from_vector(v, shape, dtype);
}

dnnl::memory::data_type dnnl_type(DType t) {
  return t == DType::bf16 ? dnnl::memory::data_type::bf16 : dnnl::memory::data_type::f32;
}

// The same product through oneDNN directly: one primitive per distinct row count, created here,
// outside the timed loop.
class DirectMatmul {
 public:
  DirectMatmul(const Case& c, DType dt, const Tensor& a, const Tensor& b, Tensor& out)
      : engine_(dnnl::engine::kind::cpu, 0), stream_(engine_) {
    using dnnl::memory;
    const std::vector<int64_t> rows = c.grouped() ? c.rows : std::vector<int64_t>{c.m};
    const size_t es = dtype_size(dt);
    int64_t row = 0;
    for (size_t g = 0; g < rows.size(); ++g) {
      const int64_t m = rows[g];
      if (m == 0) continue;
      memory::desc a_md({m, c.k}, dnnl_type(dt), {c.k, 1});
      memory::desc b_md({c.k, c.n}, dnnl_type(dt), {c.n, 1});
      memory::desc c_md({m, c.n}, dnnl_type(dt), {c.n, 1});
      dnnl::matmul::primitive_desc pd(dnnl::matmul::desc(a_md, b_md, c_md), engine_);
      impl_ = pd.impl_info_str();
      char* pa = static_cast<char*>(a.data()) + row * c.k * es;
      char* pb = static_cast<char*>(b.data()) + int64_t(g) * c.k * c.n * es;
      char* pc = static_cast<char*>(out.data()) + row * c.n * es;
      steps_.push_back({dnnl::matmul(pd),
                        {{DNNL_ARG_SRC, memory(a_md, engine_, pa)},
                         {DNNL_ARG_WEIGHTS, memory(b_md, engine_, pb)},
                         {DNNL_ARG_DST, memory(c_md, engine_, pc)}}});
      row += m;
    }
  }
  void run() {
    for (auto& s : steps_) s.primitive.execute(stream_, s.args);
    stream_.wait();
  }
  const std::string& impl() const { return impl_; }

 private:
  struct Step {
    dnnl::matmul primitive;
    std::unordered_map<int, dnnl::memory> args;
  };
  dnnl::engine engine_;
  dnnl::stream stream_;
  std::vector<Step> steps_;
  std::string impl_;
};

struct Row {
  std::string name, dtype, impl;
  double flops = 0;
  Timing ours, direct, torch;
};

std::string torch_case(const Case& c, const char* dt) {
  if (!c.grouped()) return detail::concat("gemm:", c.name, ":", dt, ":", c.m, ":", c.n, ":", c.k);
  std::string rows;
  for (int64_t r : c.rows) rows += detail::concat(rows.empty() ? "" : ",", r);
  return detail::concat("grouped:", c.name, ":", dt, ":", c.k, ":", c.n, ":", rows);
}

// Pulls "key": value out of one JSON line printed by torch_gemm.py.
std::string json_field(const std::string& line, const std::string& key) {
  const std::string tag = "\"" + key + "\": ";
  size_t p = line.find(tag);
  if (p == std::string::npos) return "";
  p += tag.size();
  if (line[p] == '"') return line.substr(p + 1, line.find('"', p + 1) - p - 1);
  return line.substr(p, line.find_first_of(",}", p) - p);
}

// Runs the PyTorch side once for every case; results keyed "name/dtype".
std::map<std::string, Timing> run_torch(const std::vector<Case>& cases, int threads, int reps) {
  const std::string venv = std::string(ORIGAMI_SOURCE_DIR) + "/.venv/bin/python";
  const std::string python = std::filesystem::exists(venv) ? venv : "/usr/bin/python3";
  std::string cmd = detail::concat("\"", python, "\" \"", ORIGAMI_SOURCE_DIR,
                                   "/bench/torch_gemm.py\" --threads ", threads, " --reps ", reps);
  for (const Case& c : cases)
    for (const char* dt : {"f32", "bf16"}) cmd += detail::concat(" '", torch_case(c, dt), "'");
  std::map<std::string, Timing> out;
  FILE* p = popen(cmd.c_str(), "r");
  if (!p) {
    std::fprintf(stderr, "bench_gemm: cannot run %s\n", cmd.c_str());
    return out;
  }
  char buf[1024];
  while (std::fgets(buf, sizeof buf, p)) {
    const std::string line = buf;
    const std::string name = json_field(line, "name"), dt = json_field(line, "dtype");
    if (name.empty()) continue;
    out[name + "/" + dt] = {std::atof(json_field(line, "best_s").c_str()),
                            std::atof(json_field(line, "median_s").c_str()),
                            std::atof(json_field(line, "row_scale").c_str())};
  }
  if (pclose(p) != 0)
    std::fprintf(stderr, "bench_gemm: the PyTorch side failed (%s)\n", cmd.c_str());
  return out;
}

// Rows per expert for a grouped case: uneven, as a router gives them.
std::vector<int64_t> uneven_rows(int64_t total, int groups, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> u(0.3, 1.7);
  std::vector<double> w(static_cast<size_t>(groups));
  double sum = 0;
  for (double& x : w) sum += (x = u(rng));
  std::vector<int64_t> rows(static_cast<size_t>(groups));
  int64_t used = 0;
  for (int g = 0; g < groups; ++g)
    used += rows[size_t(g)] =
        g + 1 == groups ? total - used : int64_t(double(total) * w[size_t(g)] / sum);
  return rows;
}

double gflops(double flops, double s) {
  return s > 0 ? flops / s / 1e9 : 0.0;
}

}  // namespace

int main(int argc, char** argv) {
  bool quick = false, with_torch = true;
  std::string filter;
  int threads = omp_get_max_threads(), reps = 0;
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--quick"))
      quick = true;
    else if (!std::strcmp(argv[i], "--no-torch"))
      with_torch = false;
    else if (!std::strcmp(argv[i], "--threads") && i + 1 < argc)
      threads = std::atoi(argv[++i]);
    else if (!std::strcmp(argv[i], "--reps") && i + 1 < argc)
      reps = std::atoi(argv[++i]);
    else if (!std::strcmp(argv[i], "--filter") && i + 1 < argc)
      filter = argv[++i];
    else {
      std::fprintf(stderr,
                   "usage: bench_gemm [--quick] [--threads N] [--reps R] [--no-torch] "
                   "[--filter TEXT]\n");
      return 2;
    }
  }
  if (reps <= 0) reps = quick ? 3 : 7;
  omp_set_num_threads(threads);

  // Model shapes: 4096 tokens, hidden 512, MLP/QKV width 1536, a 32000-word vocabulary, and an
  // MoE layer of 8 experts.
  const int64_t tokens = quick ? 1024 : 4096, square = quick ? 1024 : 2048;
  std::vector<Case> cases = {
      {"decode M1 K512 N1536", 1, 1536, 512, {}},
      {"decode M16 K512 N1536", 16, 1536, 512, {}},
      {"square " + std::to_string(square) + "^3", square, square, square, {}},
      {"up   M" + std::to_string(tokens) + " K512 N1536", tokens, 1536, 512, {}},
      {"down M" + std::to_string(tokens) + " K1536 N512", tokens, 512, 1536, {}},
      {"head M" + std::to_string(tokens / (quick ? 2 : 1)) + " K512 N32000",
       tokens / (quick ? 2 : 1),
       32000,
       512,
       {}},
      {"moe 8x M" + std::to_string(tokens) + " K512 N1536", tokens, 1536, 512,
       uneven_rows(tokens, 8, 1)},
  };

  if (!filter.empty())
    std::erase_if(cases, [&](const Case& c) { return c.name.find(filter) == std::string::npos; });
  std::printf("bench_gemm: %d threads, best of %d runs%s; oneDNN %d.%d.%d\n", threads, reps,
              quick ? " (quick)" : "", dnnl_version()->major, dnnl_version()->minor,
              dnnl_version()->patch);
  std::map<std::string, Timing> torch;
  if (with_torch) torch = run_torch(cases, threads, reps);

  std::vector<Row> rows;
  for (const Case& c : cases)
    for (DType dt : {DType::f32, DType::bf16}) {
      const int64_t groups = c.grouped() ? int64_t(c.rows.size()) : 0;
      Tensor a = random_matrix({c.m, c.k}, dt, 1);
      Tensor b = random_matrix(groups ? Shape{groups, c.k, c.n} : Shape{c.k, c.n}, dt, 2);
      Tensor out = Tensor::empty({c.m, c.n}, dt), out_direct = Tensor::empty({c.m, c.n}, dt);
      auto ours = [&] {
        if (c.grouped())
          ops::grouped_gemm(a, b, c.rows, out);
        else
          ops::gemm(a, b, out);
      };
      DirectMatmul direct(c, dt, a, b, out_direct);
      ours();  // warm-up: creates and caches our primitive
      direct.run();
      std::vector<double> t_ours, t_direct;
      for (int r = 0; r < reps; ++r) {
        t_ours.push_back(seconds_of(ours, calls_per_sample(c.flops())));
        t_direct.push_back(seconds_of([&] { direct.run(); }, calls_per_sample(c.flops())));
      }
      Row row{c.name,    dtype_name(dt),    direct.impl(),
              c.flops(), summarize(t_ours), summarize(t_direct),
              {}};
      if (auto it = torch.find(c.name + "/" + dtype_name(dt)); it != torch.end())
        row.torch = it->second;
      rows.push_back(row);
      std::fprintf(stderr, "  done: %s %s\n", c.name.c_str(), dtype_name(dt));
    }

  std::printf("\n%-28s %-5s %-22s %10s %10s %10s  %11s %11s  %10s\n", "problem", "dtype",
              "oneDNN impl", "ours", "oneDNN", "PyTorch", "ours/oneDNN", "(medians)", "ours/torch");
  std::printf("%-28s %-5s %-22s %10s %10s %10s\n", "", "", "", "GFLOP/s", "GFLOP/s", "GFLOP/s");
  for (const Row& r : rows) {
    const double go = gflops(r.flops, r.ours.best), gd = gflops(r.flops, r.direct.best),
                 gt = gflops(r.flops, r.torch.best);
    char torch_s[32] = "-", ratio_t[32] = "-";
    if (gt > 0) {
      std::snprintf(torch_s, sizeof torch_s, "%.1f%s", gt, r.torch.row_scale < 1 ? "*" : "");
      std::snprintf(ratio_t, sizeof ratio_t, "%.2fx", go / gt);
    }
    std::printf("%-28s %-5s %-22s %10.1f %10.1f %10s  %10.2fx %10.2fx  %10s\n", r.name.c_str(),
                r.dtype.c_str(), r.impl.c_str(), go, gd, torch_s, go / gd,
                r.direct.median / r.ours.median, ratio_t);
  }
  std::printf(
      "\nbf16 rows: bf16 inputs and output, fp32 accumulation. The moe row is a grouped GEMM"
      " (8 uneven groups; oneDNN: one primitive per group made in advance, PyTorch: a loop"
      " of matmuls).\n* PyTorch timed on a fraction of the rows (its fp32 matmul is too slow for "
      "the"
      " full problem in the time budget; see bench/torch_gemm.py).\n");
  return 0;
}
