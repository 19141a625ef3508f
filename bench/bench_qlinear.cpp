// Decode GEMMs with packed weights (ops::packed_linear) against the memory-read bound measured in
// the same run, on the linear layers of a 1.1B Llama (TinyLlama: hidden 2048, 256 of K/V, ffn
// 5632, vocab 32000). With a few rows of x, reading W is the whole cost, so each format's speed is
// given as GB/s of packed bytes read (PackedLinear::bytes) and as a share of the read bandwidth (a
// streaming sum of a 1 GiB buffer, 8 independent accumulators per thread, the same threads).
// ops::gemm on the same W (oneDNN; bf16 and f32) runs the same shapes as the peer. "invariant" is
// the batch-invariant call (PackedLinearOptions::batch_invariant, as the server runs by default):
// its cost over the plain call is the cost of batch invariance.
//
//   bench_qlinear [--threads 2] [--repeats 100] [--rows 1,8,16] [--formats f32,bf16,int8g128,...]
//                 [--shapes 2048x2048,...] (KxN)
//
// Every call reads W from memory, not from a cache: calls rotate over copies of the weights that
// together exceed the last-level cache several times. A figure is the median over the repeats
// (medians hold up on a shared machine; run under OMP_WAIT_POLICY=passive there). The cost of
// waking the OpenMP threads (an empty parallel region, median) is printed first: small layers pay
// it on every call.
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "bench/flag_pairs.h"
#include "bench/read_bandwidth.h"
#include "ops/cpu/qlinear.h"
#include "ops/gemm.h"
#include "ops/qlinear.h"
#include "runtime/tensor.h"

using namespace origami;
using Clock = std::chrono::steady_clock;
using origami::bench::read_bandwidth;

namespace {

std::vector<std::string> split(const std::string& s) {
  std::vector<std::string> out;
  size_t i = 0;
  while (i <= s.size()) {
    size_t j = s.find(',', i);
    if (j == std::string::npos) j = s.size();
    if (j > i) out.push_back(s.substr(i, j - i));
    i = j + 1;
  }
  return out;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// Seconds of an empty parallel region on `threads` threads, median of many.
double wakeup_seconds(int threads) {
  std::vector<double> t;
  for (int i = 0; i < 2000; ++i) {
    const auto t0 = Clock::now();
#pragma omp parallel num_threads(threads)
    { asm volatile("" ::: "memory"); }
    t.push_back(std::chrono::duration<double>(Clock::now() - t0).count());
    // A pause, as between layers of a decode step, so that passive threads go back to sleep.
    const auto until = Clock::now() + std::chrono::microseconds(50);
    while (Clock::now() < until) {
    }
  }
  return median(t);
}

struct Format {
  std::string name;  // f32, bf16, int8g128, int4g128, int4g32
  int bits = 16;     // 32: f32
  int64_t group = 0;
};

Format parse_format(const std::string& s) {
  if (s == "bf16") return {s, 16, 0};
  if (s == "f32") return {s, 32, 0};
  const size_t g = s.find('g');
  if ((s.rfind("int8", 0) == 0 || s.rfind("int4", 0) == 0) && g != std::string::npos)
    return {s, s[3] - '0', std::stoll(s.substr(g + 1))};
  std::fprintf(stderr, "bench_qlinear: unknown format %s (f32, bf16, int8gG, int4gG)\n", s.c_str());
  std::exit(2);
}

// Random levels, scales and zeros of an N x K layer, packed.
ops::PackedLinear make_weights(const Format& f, int64_t K, int64_t N, const Tensor& w32,
                               const Tensor& w_bf16) {
  if (f.bits == 32) return ops::pack_f32(w32);
  if (f.bits == 16) return ops::pack_bf16(w_bf16);
  std::mt19937 rng(1);
  std::uniform_int_distribution<int32_t> level(0, (1 << f.bits) - 1);
  const int64_t G = K / f.group;
  std::vector<int32_t> q(size_t(N * K)), zeros(size_t(G * N));
  std::vector<float> scales(size_t(G * N), 0.01f);
  for (int32_t& v : q) v = level(rng);
  for (int32_t& v : zeros) v = level(rng);
  return ops::pack_quantized(f.bits, N, K, q.data(), scales.data(), zeros.data(), G, nullptr);
}

volatile float stream_sink = 0;  // keeps the sums

// Sums every byte of w's packed tensors as read_bandwidth does (the same threads, each a
// contiguous share): what reading w costs with nothing else to do.
void stream_sum(const ops::PackedLinear& w, int threads) {
  float total = 0;
  for (const Tensor* t : {&w.data, &w.scales, &w.zeros}) {
    const size_t n = t->nbytes() / sizeof(float);
    total += bench::streaming_sum(static_cast<const float*>(t->data()), n,
                                  n >= (size_t(1) << 16) ? threads : 1);
  }
  stream_sink = stream_sink + total;
}

ops::PackedLinear copy_of(const ops::PackedLinear& w) {
  ops::PackedLinear c = w;
  for (Tensor* t : {&c.data, &c.scales, &c.zeros, &c.perm})
    if (t->defined()) *t = t->clone();
  return c;
}

}  // namespace

int main(int argc, char** argv) {
  int threads = 2, repeats = 100;
  std::vector<std::string> rows_s = {"1", "8", "16"};
  std::vector<std::string> formats_s = {"bf16", "int8g128", "int4g128", "int4g32"};
  std::vector<std::string> shapes_s = {"2048x2048", "2048x256", "2048x5632", "5632x2048",
                                       "2048x32000"};
  const char* usage =
      "usage: bench_qlinear [--threads 2] [--repeats 100] [--rows 1,8,16]\n"
      "                     [--formats f32,bf16,int8g128,int4g128,int4g32] [--shapes KxN,...]\n"
      "Decode GEMMs with packed weights against the read-bandwidth bound and oneDNN, measured\n"
      "in the same run (the header of bench/bench_qlinear.cpp says how).\n";
  for (const auto& [k, v] : bench::flag_pairs(argc, argv, "bench_qlinear", usage)) {
    if (k == "--threads")
      threads = std::stoi(v);
    else if (k == "--repeats")
      repeats = std::stoi(v);
    else if (k == "--rows")
      rows_s = split(v);
    else if (k == "--formats")
      formats_s = split(v);
    else if (k == "--shapes")
      shapes_s = split(v);
    else
      bench::unknown_flag("bench_qlinear", k, usage);
  }
  omp_set_num_threads(threads);
  const char* wait = std::getenv("OMP_WAIT_POLICY");
  const double wake = wakeup_seconds(threads);
  // The read bandwidth swings with what else the machine runs: measured before and after, the
  // larger of the two is the bound (the stream column, interleaved with each contender, is the
  // bound of that very moment).
  const double bw_before = read_bandwidth(threads);
  const std::string load = bench::load_average();
  std::printf(
      "threads %d, kernels %s, OMP_WAIT_POLICY=%s, load average %s\n"
      "parallel-region wake-up %.1f us (median of empty regions)\n"
      "read bandwidth %.1f GB/s (1 GiB streaming sum; measured again at the end)\n"
      "x bf16, y f32; figures are medians of %d calls, W read from memory on every call\n"
      "bound: GB/s over the read bandwidth; stream: a sum over the same bytes, timed in turn with\n"
      "each contender, over the contender's time\n",
      threads, ops::cpu::qlinear_isa(), wait ? wait : "(unset)", load.c_str(), wake * 1e6,
      bw_before / 1e9, repeats);

  struct Row {
    int64_t K, N, M;
    std::string name;
    double bytes, seconds, stream_seconds;
  };
  std::vector<Row> rows;
  // Rotating copies totalling at least this much: 8 times the last-level cache of most servers.
  const double rotate_bytes = 256e6;
  for (const std::string& shape : shapes_s) {
    const size_t xpos = shape.find('x');
    const int64_t K = std::stoll(shape.substr(0, xpos)), N = std::stoll(shape.substr(xpos + 1));
    Tensor w32 = Tensor::empty({N, K}, DType::f32);
    {
      std::mt19937 rng(2);
      std::uniform_real_distribution<float> u(-0.05f, 0.05f);
      float* p = w32.data_as<float>();
      for (int64_t i = 0; i < N * K; ++i) p[i] = u(rng);
    }
    const Tensor wb = w32.to(DType::bf16);
    for (const std::string& fs : formats_s) {
      const Format f = parse_format(fs);
      const ops::PackedLinear w0 = make_weights(f, K, N, w32, wb);
      const int copies = int(std::clamp(rotate_bytes / double(w0.bytes()), 1.0, 1000.0));
      std::vector<ops::PackedLinear> ws = {w0};
      for (int c = 1; c < copies; ++c) ws.push_back(copy_of(w0));
      for (const std::string& ms : rows_s) {
        const int64_t M = std::stoll(ms);
        Tensor x = Tensor::zeros({M, K}, f.bits == 32 ? DType::f32 : DType::bf16);
        x.fill_(0.5);
        Tensor y = Tensor::zeros({M, N}, DType::f32);
        // Every contender once per repeat, in turn, so that load from other processes hits all
        // alike; the stream is a sum over the same bytes (the bound of this shape, now).
        struct Contender {
          const char* name;
          std::function<void(int)> call;
          std::vector<double> t;
        };
        std::vector<Contender> cs;
        cs.push_back({f.name.c_str(), [&](int c) { ops::packed_linear(x, ws[size_t(c)], y); }, {}});
        ops::PackedLinearOptions inv;
        inv.batch_invariant = true;
        cs.push_back(
            {"invariant", [&, inv](int c) { ops::packed_linear(x, ws[size_t(c)], y, inv); }, {}});
        if (f.bits == 16 || f.bits == 32) {
          ops::GemmOptions g;
          g.trans_b = true;
          cs.push_back({f.bits == 16 ? "gemm bf16" : "gemm f32",
                        [&, g](int c) { ops::gemm(x, ws[size_t(c)].data, y, g); },
                        {}});
        }
        cs.push_back({"stream", [&](int c) { stream_sum(ws[size_t(c)], threads); }, {}});
        // Each call reads its own copy (contender i of repeat r: copy r * contenders + i), so that
        // none finds W in the cache where the one before it left it.
        const int nc = int(cs.size());
        for (int r = 0; r < std::min(copies, 20); ++r)
          for (Contender& c : cs) c.call(r);  // warm-up
        for (int r = 0; r < repeats; ++r)
          for (int i = 0; i < nc; ++i) {
            Contender& c = cs[size_t(i)];
            const auto t0 = Clock::now();
            c.call((r * nc + i) % copies);
            c.t.push_back(std::chrono::duration<double>(Clock::now() - t0).count());
          }
        const double bytes = double(w0.bytes()), stream_s = median(cs.back().t);
        for (const Contender& c : cs)
          rows.push_back({K, N, M, c.name, bytes, median(c.t), stream_s});
        std::fprintf(stderr, ".");
      }
    }
  }
  const double bw_after = read_bandwidth(threads), bw = std::max(bw_before, bw_after);
  std::fprintf(stderr, "\n");
  std::printf("read bandwidth at the end %.1f GB/s; the bound is the larger: %.1f GB/s\n\n",
              bw_after / 1e9, bw / 1e9);
  std::printf("%-11s %3s %-10s %9s %10s %8s %8s %8s\n", "K x N", "M", "format", "MB", "us/call",
              "GB/s", "bound", "stream");
  for (const Row& r : rows)
    std::printf("%5lldx%-5lld %3lld %-10s %9.2f %10.1f %8.1f %7.0f%% %7.0f%%\n", (long long)r.K,
                (long long)r.N, (long long)r.M, r.name.c_str(), r.bytes / 1e6, r.seconds * 1e6,
                r.bytes / r.seconds / 1e9, 100.0 * r.bytes / r.seconds / bw,
                100.0 * r.stream_seconds / r.seconds);
  return 0;
}
