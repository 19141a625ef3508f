// What the decode benchmarks (bench_decode, bench_qlinear) measure their bound with: a streaming
// sum (every thread sums its share with 8 independent vector accumulators) and the read
// bandwidth it gives over a 1 GiB buffer, many times the last-level cache.
#pragma once

#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

namespace origami::bench {

// The sum of buf [n] (each thread's share rounded down to whole blocks of 128 floats) on
// `threads` threads.
inline float streaming_sum(const float* buf, size_t n, int threads) {
  typedef float v16 __attribute__((vector_size(64)));
  float total = 0;
#pragma omp parallel num_threads(threads) reduction(+ : total)
  {
    const int nt = omp_get_num_threads(), t = omp_get_thread_num();
    const size_t per = n / size_t(nt) / 128 * 128;
    const float* p = buf + size_t(t) * per;
    v16 a[8] = {};
    for (size_t i = 0; i < per; i += 128)
      for (int k = 0; k < 8; ++k) {
        v16 x;
        std::memcpy(&x, p + i + size_t(k) * 16, sizeof x);
        a[k] += x;
      }
    v16 s = a[0] + a[1] + a[2] + a[3] + a[4] + a[5] + a[6] + a[7];
    for (int k = 0; k < 16; ++k) total += s[k];
  }
  return total;
}

// Bytes read per second by streaming_sum over a 1 GiB buffer, the median of 5 passes.
inline double read_bandwidth(int threads) {
  using Clock = std::chrono::steady_clock;
  const size_t n = (size_t(1) << 30) / sizeof(float);
  std::vector<float> buf(n);
#pragma omp parallel for num_threads(threads) schedule(static)
  for (size_t i = 0; i < n; ++i) buf[i] = float(i % 7);  // first touch by the reading thread
  std::vector<double> times;
  volatile float sink = 0;
  for (int pass = 0; pass < 5; ++pass) {
    const auto t0 = Clock::now();
    sink = sink + streaming_sum(buf.data(), n, threads);
    times.push_back(std::chrono::duration<double>(Clock::now() - t0).count());
  }
  std::sort(times.begin(), times.end());
  return double(n * sizeof(float)) / times[times.size() / 2];
}

// The first three fields of /proc/loadavg (what else the machine ran), or "?".
inline std::string load_average() {
  char load[64] = "?";
  if (FILE* f = std::fopen("/proc/loadavg", "r")) {
    if (!std::fgets(load, sizeof load, f)) std::strcpy(load, "?");
    std::fclose(f);
    load[std::strcspn(load, "\n")] = 0;
  }
  return load;
}

}  // namespace origami::bench
