// Serving metrics for `origami serve`: a thread-safe registry that the engine thread updates and
// the HTTP threads render as the Prometheus text exposition format 0.0.4 (GET /metrics). Names
// carry the prefix "origami:" (like vLLM's "vllm:"), and every series has the label
// model_name="<served model>".
//
// Gauges
//   origami:num_requests_running            requests in the running batch
//   origami:num_requests_waiting            requests queued for admission
//   origami:kv_cache_usage_perc             used KV cache blocks / all blocks, 0..1
//   origami:prefix_cache_hit_rate           prefix_cache_hits_total / prefix_cache_queries_total
//                                           since start, 0..1 (0 before the first query)
// Counters
//   origami:request_success_total           finished requests, label finished_reason
//                                           ("stop", "length", "abort")
//   origami:request_rejected_total          refused requests, label reason ("queue_full",
//                                           "bad_request", or any other reason passed in)
//   origami:num_preemptions_total           running requests preempted for KV cache space
//   origami:prompt_tokens_total             prompt tokens processed (prefill)
//   origami:generation_tokens_total         tokens generated
//   origami:prefix_cache_queries_total      prompt tokens looked up in the prefix cache
//   origami:prefix_cache_hits_total         of those, tokens found in the cache
// Histograms (latencies in seconds, buckets kLatencyBuckets; token counts, kTokenBuckets)
//   origami:time_to_first_token_seconds     arrival to first generated token
//   origami:inter_token_latency_seconds     between consecutive generated tokens
//   origami:e2e_request_latency_seconds     arrival to finish
//   origami:request_queue_time_seconds      arrival to first scheduling
//   origami:request_prompt_tokens           prompt length per finished request
//   origami:request_generation_tokens       generated tokens per finished request
//
// Writers only touch atomics (relaxed), except count_rejected, which takes a mutex for its
// open-ended label set; observing a histogram allocates nothing and takes no lock. A histogram's
// buckets and _count in one render come from one read of each bucket, so the "+Inf" bucket always
// equals _count; _sum is read separately and may differ by observations made during the render.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace origami::serve {

// The Content-Type of the rendered text.
inline constexpr std::string_view kMetricsContentType = "text/plain; version=0.0.4; charset=utf-8";

// Upper bounds ("le") of the histogram buckets, increasing; "+Inf" follows implicitly.
inline constexpr std::array<double, 22> kLatencyBuckets = {
    0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1,  0.15, 0.2,
    0.3,   0.5,    0.75,  1.0,  2.5,  5.0,  10.0, 20.0, 40.0, 80.0, 120.0};
inline constexpr std::array<double, 17> kTokenBuckets = {
    1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 4096, 8192, 16384, 32768, 65536, 131072};

// A fixed-bucket histogram: one atomic count per bucket (not cumulative) and an atomic sum.
class Histogram {
 public:
  static constexpr size_t kMaxBounds = 32;

  // bounds: finite and strictly increasing, at most kMaxBounds; must outlive the histogram.
  // Throws origami::Error otherwise.
  explicit Histogram(std::span<const double> bounds);

  // Counts v in the first bucket whose bound is >= v (the "+Inf" bucket when none is).
  // NaN and infinite values are ignored.
  void observe(double v) noexcept;

  struct Snapshot {
    std::vector<uint64_t> cumulative;  // bounds().size() + 1 counts; the last is "+Inf"
    double sum = 0;
    uint64_t count = 0;  // == cumulative.back()
  };
  Snapshot snapshot() const;
  std::span<const double> bounds() const { return bounds_; }

 private:
  std::span<const double> bounds_;
  std::array<std::atomic<uint64_t>, kMaxBounds + 1> counts_{};
  std::atomic<double> sum_{0.0};
};

enum class RequestOutcome { kStop, kLength, kAbort };

// Gauge values, set together by the engine after each step.
struct EngineGauges {
  int64_t running = 0;
  int64_t waiting = 0;
  double kv_cache_usage = 0;  // 0..1
};

// Counter increments, added together (e.g. once per engine step). All must be >= 0.
struct CounterDeltas {
  int64_t prompt_tokens = 0;
  int64_t generation_tokens = 0;
  int64_t preemptions = 0;
  int64_t prefix_cache_queries = 0;  // tokens looked up
  int64_t prefix_cache_hits = 0;     // tokens found
};

class Metrics {
 public:
  Metrics();
  Metrics(const Metrics&) = delete;
  Metrics& operator=(const Metrics&) = delete;

  void observe_ttft(double seconds) noexcept { ttft_.observe(seconds); }
  void observe_itl(double seconds) noexcept { itl_.observe(seconds); }
  void observe_e2e(double seconds) noexcept { e2e_.observe(seconds); }
  void observe_queue_time(double seconds) noexcept { queue_time_.observe(seconds); }
  // Prompt length and generated-token count of one finished request.
  void observe_request_tokens(int64_t prompt, int64_t generated) noexcept;

  void count_finished(RequestOutcome reason) noexcept;
  // reason is any label value; "queue_full" and "bad_request" are shown (as 0) from the start.
  void count_rejected(std::string_view reason);

  void set_gauges(const EngineGauges& g) noexcept;
  // Throws origami::Error, adding nothing, when a delta is negative.
  void add_counters(const CounterDeltas& d);

  // The exposition text, every series labelled model_name="<model_name>" (escaped).
  std::string render(const std::string& model_name) const;

 private:
  Histogram ttft_{kLatencyBuckets}, itl_{kLatencyBuckets}, e2e_{kLatencyBuckets},
      queue_time_{kLatencyBuckets}, prompt_tokens_hist_{kTokenBuckets},
      generation_tokens_hist_{kTokenBuckets};

  std::array<std::atomic<uint64_t>, 3> finished_{};  // indexed by RequestOutcome
  std::atomic<uint64_t> preemptions_{0}, prompt_tokens_{0}, generation_tokens_{0},
      prefix_queries_{0}, prefix_hits_{0};
  std::atomic<int64_t> running_{0}, waiting_{0};
  std::atomic<double> kv_usage_{0.0};

  mutable std::mutex rejected_mu_;
  std::map<std::string, uint64_t, std::less<>> rejected_;  // guarded by rejected_mu_
};

}  // namespace origami::serve
