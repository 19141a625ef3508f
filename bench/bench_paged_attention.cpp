// Paged attention, decode on the CPU: one query token per sequence over a paged KV cache (blocks
// of 16 rows in a random order, from a pool of at least 1 GiB so that every call reads from
// memory), against the memory-bandwidth bound.
//
// Decode attention reads every key and value row of the batch's contexts once, so its floor is
// bytes / bandwidth. The bandwidth is a streaming read measured in the same run and with the same
// threads: a sum over a buffer of 1 GiB (several times the last-level cache) with independent
// accumulators. "of bound" is that floor over the measured median time.
//
// Every figure is given twice: by the wall clock, and by the process CPU time divided by the
// threads ("cpu" columns, for the bound too). On a machine shared with other work the wall clock
// also counts the time the threads were not scheduled; the CPU time does not. With one thread the
// CPU time is exact; with several, a thread that sleeps at a barrier (after spinning a while) is
// not counted, so the cpu columns are an optimistic estimate there. On an idle machine the two
// agree.
//
// --batch-invariant times the kernels with PagedAttentionParams::batch_invariant (fixed split
// points, as origami serve uses by default), for its cost against the adaptive split.
//
// Usage: bench_paged_attention [--quick] [--threads N] [--repeats R] [--batch B] [--context C]
//                              [--kv-heads H] [--batch-invariant]   (32 query heads, H kv heads: 8)
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <memory>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include <time.h>

#include "ops/cpu/attention.h"
#include "ops/paged_attention.h"
#include "runtime/tensor.h"

using namespace origami;

namespace {

bool g_batch_invariant = false;  // --batch-invariant

using Clock = std::chrono::steady_clock;

// Wall and process CPU seconds at one moment.
struct Stamp {
  Clock::time_point wall;
  double cpu;
};
Stamp now() {
  timespec ts;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return {Clock::now(), double(ts.tv_sec) + 1e-9 * double(ts.tv_nsec)};
}
struct Seconds {
  double wall, cpu;  // cpu: per thread
};
Seconds since(const Stamp& t0, int threads) {
  const Stamp t1 = now();
  return {std::chrono::duration<double>(t1.wall - t0.wall).count(), (t1.cpu - t0.cpu) / threads};
}

// Bytes per second of a streaming read (wall, cpu): every thread sums its share of a 1 GiB buffer
// with eight independent accumulators (the best of five passes).
Seconds read_bandwidth(int threads) {
  const size_t words = (size_t(1) << 30) / sizeof(uint64_t);
  std::unique_ptr<uint64_t[]> buf(new uint64_t[words]);
#pragma omp parallel for num_threads(threads) schedule(static)
  for (size_t i = 0; i < words; ++i) buf[i] = i;  // first touch by the reading thread
  Seconds best{0, 0};
  volatile uint64_t sink = 0;
  for (int rep = 0; rep < 5; ++rep) {
    const Stamp t0 = now();
    uint64_t total = 0;
#pragma omp parallel num_threads(threads) reduction(+ : total)
    {
      const size_t n = size_t(omp_get_num_threads()), t = size_t(omp_get_thread_num());
      const size_t chunk = (words / n) / 8 * 8, begin = t * chunk;
      const size_t end = t + 1 == n ? words / 8 * 8 : begin + chunk;
      uint64_t acc[8] = {};
      for (size_t i = begin; i < end; i += 8)
        for (int k = 0; k < 8; ++k) acc[k] += buf[i + size_t(k)];
      for (int k = 0; k < 8; ++k) total += acc[k];
    }
    sink = sink + total;
    const Seconds t = since(t0, threads);
    const double bytes = double(words * sizeof(uint64_t));
    best = {std::max(best.wall, bytes / t.wall), std::max(best.cpu, bytes / t.cpu)};
  }
  return best;
}

constexpr int64_t kBlockSize = 16;
constexpr int64_t kHq = 32;
int64_t kHkv = 8;  // --kv-heads: 8 (groups of 4) or 4 (groups of 8, as the 1.1B bench model)

// The cache of one dtype and head dim: K and V pools of at least 1 GiB together (several times the
// last-level cache), so that successive calls, each given fresh blocks, read from memory as a
// decode step of a many-layer model does.
struct CachePool {
  Tensor k_cache, v_cache;
  std::vector<float> ids;  // block ids in a random order; calls take consecutive runs of it
  size_t next = 0;
};

CachePool make_pool(DType dt, int64_t D, double min_bytes) {
  const double block_bytes = 2.0 * double(kBlockSize * kHkv * D) * double(dtype_size(dt));
  const int64_t num_blocks = int64_t(std::max(min_bytes, double(1 << 30)) / block_bytes) + 1;
  CachePool pool;
  pool.k_cache = Tensor::empty({num_blocks, kBlockSize, kHkv, D}, dt);
  pool.v_cache = Tensor::empty({num_blocks, kBlockSize, kHkv, D}, dt);
  for (Tensor* t : {&pool.k_cache, &pool.v_cache}) {
    const int64_t n = t->numel();
    const bool bf16 = dt == DType::bf16;
    void* data = t->data();
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; ++i) {  // cheap values in [-0.5, 0.5)
      const float x = float(uint64_t(i) * 2654435761u % 1024) / 1024.0f - 0.5f;
      if (bf16)
        static_cast<uint16_t*>(data)[i] = f32_to_bf16(x);
      else
        static_cast<float*>(data)[i] = x;
    }
  }
  pool.ids.resize(size_t(num_blocks));
  std::iota(pool.ids.begin(), pool.ids.end(), 0.0f);
  std::mt19937_64 rng(42);
  std::shuffle(pool.ids.begin(), pool.ids.end(), rng);
  return pool;
}

struct Row {
  Seconds median;       // per call
  double kv_bytes = 0;  // K and V rows read per call
};

// Median seconds of one call of a decode step of `batch` sequences of `context` keys over
// `repeats` calls (after a warm-up call), each call with blocks no recent call used.
Row time_decode(CachePool& pool, DType dt, int64_t D, int64_t batch, int64_t context, int repeats,
                int threads) {
  const int64_t per_seq = (context + kBlockSize - 1) / kBlockSize;
  std::mt19937_64 rng(7);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  std::vector<float> qv(size_t(batch * kHq * D));
  for (float& x : qv) x = u(rng);
  const Tensor q = Tensor::from_vector(qv, {batch, kHq, D}, dt);
  Tensor out = Tensor::empty({batch, kHq, D}, dt);
  std::vector<int64_t> qs(size_t(batch + 1)), cl(size_t(batch), context);
  std::iota(qs.begin(), qs.end(), 0);
  const Tensor query_start = Tensor::from_vector_i64(qs, {batch + 1});
  const Tensor context_len = Tensor::from_vector_i64(cl, {batch});
  std::vector<Tensor> tables;
  for (int r = 0; r <= repeats; ++r) {
    const size_t n = size_t(batch * per_seq);
    if (pool.next + n > pool.ids.size()) pool.next = 0;
    const std::vector<float> ids(pool.ids.begin() + long(pool.next),
                                 pool.ids.begin() + long(pool.next + n));
    pool.next += n;
    tables.push_back(Tensor::from_vector(ids, {batch, per_seq}, DType::i32));
  }
  ops::PagedAttentionParams p;
  p.batch_invariant = g_batch_invariant;
  auto call = [&](const Tensor& table) {
    ops::paged_attention_forward(q, pool.k_cache, pool.v_cache, query_start, context_len, table, p,
                                 out);
  };
  call(tables.back());
  std::vector<double> wall, cpu;
  for (int r = 0; r < repeats; ++r) {
    const Stamp t0 = now();
    call(tables[size_t(r)]);
    const Seconds t = since(t0, threads);
    wall.push_back(t.wall);
    cpu.push_back(t.cpu);
  }
  std::sort(wall.begin(), wall.end());
  std::sort(cpu.begin(), cpu.end());
  Row row;
  row.median = {wall[wall.size() / 2], cpu[cpu.size() / 2]};
  row.kv_bytes = 2.0 * double(batch * context * kHkv * D) * double(dtype_size(dt));
  return row;
}

std::string load_average() {
  std::ifstream f("/proc/loadavg");
  std::string a;
  f >> a;
  return a.empty() ? "?" : a;
}

}  // namespace

int main(int argc, char** argv) {
  bool quick = false;
  int threads = 2, repeats = 31;
  int64_t only_batch = 0, only_context = 0;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--quick")
      quick = true;
    else if (a == "--threads" && i + 1 < argc)
      threads = std::atoi(argv[++i]);
    else if (a == "--repeats" && i + 1 < argc)
      repeats = std::atoi(argv[++i]);
    else if (a == "--batch" && i + 1 < argc)
      only_batch = std::atoll(argv[++i]);
    else if (a == "--context" && i + 1 < argc)
      only_context = std::atoll(argv[++i]);
    else if (a == "--kv-heads" && i + 1 < argc)
      kHkv = std::atoll(argv[++i]);
    else if (a == "--batch-invariant")
      g_batch_invariant = true;
    else {
      std::fprintf(stderr,
                   "usage: %s [--quick] [--threads N] [--repeats R] [--batch B] [--context C] "
                   "[--kv-heads 8|4|...] [--batch-invariant]\n",
                   argv[0]);
      return 2;
    }
  }
  if (quick) repeats = std::min(repeats, 7);
  omp_set_num_threads(threads);
  const Seconds bw = read_bandwidth(threads);  // bytes per second
  std::printf(
      "bench_paged_attention: decode (1 query token per sequence), block size %lld, Hq %lld, "
      "Hkv %lld, kernels %s, %d threads, median of %d calls, %s split\n"
      "bound: K+V bytes / streaming-read bandwidth %.1f GB/s (cpu time: %.1f GB/s; 1 GiB, %d "
      "threads); load average %s\n",
      static_cast<long long>(kBlockSize), static_cast<long long>(kHq), static_cast<long long>(kHkv),
      ops::cpu::attention_isa(), threads, repeats,
      g_batch_invariant ? "batch-invariant (fixed)" : "adaptive", bw.wall * 1e-9, bw.cpu * 1e-9,
      threads, load_average().c_str());
  std::printf("%5s %7s %4s %5s | %8s | %9s %7s %8s | %9s %7s %8s\n", "batch", "context", "D",
              "dtype", "KV MB", "us/call", "GB/s", "of bound", "cpu us", "cpu GB/s", "of bound");
  std::vector<int64_t> batches =
      quick ? std::vector<int64_t>{1, 8} : std::vector<int64_t>{1, 8, 32};
  std::vector<int64_t> contexts =
      quick ? std::vector<int64_t>{2048} : std::vector<int64_t>{128, 2048};
  if (only_batch > 0) batches = {only_batch};
  if (only_context > 0) contexts = {only_context};
  for (DType dt : {DType::bf16, DType::f32})
    for (int64_t D : {64, 128}) {
      const double largest =
          2.0 * double(batches.back() * contexts.back() * kHkv * D) * double(dtype_size(dt));
      CachePool pool = make_pool(dt, D, 2.0 * largest);
      for (int64_t ctx : contexts)
        for (int64_t b : batches) {
          const Row r = time_decode(pool, dt, D, b, ctx, repeats, threads);
          const Seconds m = r.median;
          std::printf("%5lld %7lld %4lld %5s | %8.2f | %9.1f %7.1f %7.0f%% | %9.1f %7.1f %7.0f%%\n",
                      static_cast<long long>(b), static_cast<long long>(ctx),
                      static_cast<long long>(D), dtype_name(dt), r.kv_bytes * 1e-6, m.wall * 1e6,
                      r.kv_bytes / m.wall * 1e-9, 100.0 * r.kv_bytes / bw.wall / m.wall,
                      m.cpu * 1e6, r.kv_bytes / m.cpu * 1e-9, 100.0 * r.kv_bytes / bw.cpu / m.cpu);
          std::fflush(stdout);
        }
    }
  std::printf("load average %s at end (a shared machine: figures vary from run to run)\n",
              load_average().c_str());
  return 0;
}
