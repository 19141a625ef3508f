#include "runtime/serve/metrics.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <iterator>

#include "runtime/error.h"

namespace origami::serve {

namespace {

constexpr auto kRelaxed = std::memory_order_relaxed;

// Label value escaping of the text format: backslash, double quote and newline.
void append_label_value(std::string& out, std::string_view v) {
  for (char c : v) {
    if (c == '\\') {
      out += "\\\\";
    } else if (c == '"') {
      out += "\\\"";
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out += c;
    }
  }
}

void append_uint(std::string& out, uint64_t v) {
  char buf[24];
  auto r = std::to_chars(buf, buf + sizeof(buf), v);
  out.append(buf, r.ptr);
}

// Integral values below 2^53 print as integers; other finite values in the shortest form that
// reads back exactly; NaN and infinities as "NaN", "+Inf", "-Inf". Locale-independent.
void append_double(std::string& out, double v) {
  if (std::isnan(v)) {
    out += "NaN";
  } else if (std::isinf(v)) {
    out += v > 0 ? "+Inf" : "-Inf";
  } else if (v == std::trunc(v) && std::fabs(v) < 9007199254740992.0) {
    if (v < 0) out += '-';
    append_uint(out, static_cast<uint64_t>(std::fabs(v)));
  } else {
    char buf[32];
    auto r = std::to_chars(buf, buf + sizeof(buf), v);
    out.append(buf, r.ptr);
  }
}

// Writes one family: "# HELP", "# TYPE" and then samples through the helpers below.
class Writer {
 public:
  Writer(std::string& out, const std::string& model) : out_(out) {
    labels_ = "model_name=\"";
    append_label_value(labels_, model);
    labels_ += '"';
  }

  void family(std::string_view name, std::string_view type, std::string_view help) {
    out_ += "# HELP origami:";
    out_ += name;
    out_ += ' ';
    out_ += help;
    out_ += "\n# TYPE origami:";
    out_ += name;
    out_ += ' ';
    out_ += type;
    out_ += '\n';
  }

  // origami:<name><suffix>{model_name="...",<key>="<value>"} (the extra label when key is set).
  void start(std::string_view name, std::string_view suffix, std::string_view key = {},
             std::string_view value = {}) {
    out_ += "origami:";
    out_ += name;
    out_ += suffix;
    out_ += '{';
    out_ += labels_;
    if (!key.empty()) {
      out_ += ',';
      out_ += key;
      out_ += "=\"";
      append_label_value(out_, value);
      out_ += '"';
    }
    out_ += "} ";
  }

  void sample(std::string_view name, double v) {
    start(name, "");
    append_double(out_, v);
    out_ += '\n';
  }
  void counter(std::string_view name, uint64_t v, std::string_view key = {},
               std::string_view value = {}) {
    start(name, "", key, value);
    append_uint(out_, v);
    out_ += '\n';
  }

  void histogram(std::string_view name, std::string_view help, const Histogram& h) {
    family(name, "histogram", help);
    Histogram::Snapshot s = h.snapshot();
    std::span<const double> bounds = h.bounds();
    std::string le;
    for (size_t i = 0; i <= bounds.size(); ++i) {
      le.clear();
      if (i < bounds.size()) {
        append_double(le, bounds[i]);
      } else {
        le = "+Inf";
      }
      start(name, "_bucket", "le", le);
      append_uint(out_, s.cumulative[i]);
      out_ += '\n';
    }
    start(name, "_sum");
    append_double(out_, s.sum);
    out_ += "\n";
    start(name, "_count");
    append_uint(out_, s.count);
    out_ += '\n';
  }

 private:
  std::string& out_;
  std::string labels_;
};

}  // namespace

Histogram::Histogram(std::span<const double> bounds) : bounds_(bounds) {
  ORIGAMI_CHECK(bounds.size() <= kMaxBounds, "Histogram: ", bounds.size(),
                " bucket bounds, at most ", kMaxBounds);
  for (size_t i = 0; i < bounds.size(); ++i) {
    ORIGAMI_CHECK(std::isfinite(bounds[i]), "Histogram: bucket bound ", i, " is not finite");
    ORIGAMI_CHECK(i == 0 || bounds[i - 1] < bounds[i],
                  "Histogram: bucket bounds must increase strictly, got ", bounds[i - 1], " then ",
                  bounds[i]);
  }
}

void Histogram::observe(double v) noexcept {
  if (!std::isfinite(v)) return;
  size_t i = std::distance(bounds_.begin(), std::lower_bound(bounds_.begin(), bounds_.end(), v));
  counts_[i].fetch_add(1, kRelaxed);
  sum_.fetch_add(v, kRelaxed);
}

Histogram::Snapshot Histogram::snapshot() const {
  Snapshot s;
  s.cumulative.resize(bounds_.size() + 1);
  uint64_t total = 0;
  for (size_t i = 0; i <= bounds_.size(); ++i) {
    total += counts_[i].load(kRelaxed);
    s.cumulative[i] = total;
  }
  s.count = total;
  s.sum = sum_.load(kRelaxed);
  return s;
}

Metrics::Metrics() {
  rejected_.emplace("queue_full", 0);
  rejected_.emplace("bad_request", 0);
}

void Metrics::observe_request_tokens(int64_t prompt, int64_t generated) noexcept {
  prompt_tokens_hist_.observe(static_cast<double>(prompt));
  generation_tokens_hist_.observe(static_cast<double>(generated));
}

void Metrics::count_finished(RequestOutcome reason) noexcept {
  finished_[static_cast<size_t>(reason)].fetch_add(1, kRelaxed);
}

void Metrics::count_rejected(std::string_view reason) {
  std::lock_guard lock(rejected_mu_);
  auto it = rejected_.find(reason);
  if (it == rejected_.end()) it = rejected_.emplace(std::string(reason), 0).first;
  ++it->second;
}

void Metrics::set_gauges(const EngineGauges& g) noexcept {
  running_.store(g.running, kRelaxed);
  waiting_.store(g.waiting, kRelaxed);
  kv_usage_.store(g.kv_cache_usage, kRelaxed);
}

void Metrics::add_counters(const CounterDeltas& d) {
  ORIGAMI_CHECK(d.prompt_tokens >= 0 && d.generation_tokens >= 0 && d.preemptions >= 0 &&
                    d.prefix_cache_queries >= 0 && d.prefix_cache_hits >= 0,
                "Metrics::add_counters: counters only grow, got a negative delta (prompt ",
                d.prompt_tokens, ", generation ", d.generation_tokens, ", preemptions ",
                d.preemptions, ", prefix queries ", d.prefix_cache_queries, ", prefix hits ",
                d.prefix_cache_hits, ")");
  prompt_tokens_.fetch_add(static_cast<uint64_t>(d.prompt_tokens), kRelaxed);
  generation_tokens_.fetch_add(static_cast<uint64_t>(d.generation_tokens), kRelaxed);
  preemptions_.fetch_add(static_cast<uint64_t>(d.preemptions), kRelaxed);
  prefix_queries_.fetch_add(static_cast<uint64_t>(d.prefix_cache_queries), kRelaxed);
  prefix_hits_.fetch_add(static_cast<uint64_t>(d.prefix_cache_hits), kRelaxed);
}

std::string Metrics::render(const std::string& model_name) const {
  std::string out;
  out.reserve(16384);
  Writer w(out, model_name);

  w.family("num_requests_running", "gauge", "Number of requests in the running batch.");
  w.sample("num_requests_running", static_cast<double>(running_.load(kRelaxed)));
  w.family("num_requests_waiting", "gauge", "Number of requests waiting to be scheduled.");
  w.sample("num_requests_waiting", static_cast<double>(waiting_.load(kRelaxed)));
  w.family("kv_cache_usage_perc", "gauge", "Fraction of KV cache blocks in use (1 = full).");
  w.sample("kv_cache_usage_perc", kv_usage_.load(kRelaxed));

  uint64_t hits = prefix_hits_.load(kRelaxed);
  uint64_t queries = prefix_queries_.load(kRelaxed);
  double rate =
      queries == 0 ? 0.0 : std::min(1.0, static_cast<double>(hits) / static_cast<double>(queries));
  w.family("prefix_cache_hit_rate", "gauge",
           "Prefix cache hits / queries in tokens since start (0 before the first query).");
  w.sample("prefix_cache_hit_rate", rate);

  w.family("request_success_total", "counter", "Number of finished requests by finish reason.");
  constexpr std::array<std::string_view, 3> kReasons = {"stop", "length", "abort"};
  for (size_t i = 0; i < kReasons.size(); ++i) {
    w.counter("request_success_total", finished_[i].load(kRelaxed), "finished_reason", kReasons[i]);
  }
  w.family("request_rejected_total", "counter", "Number of rejected requests by reason.");
  {
    std::lock_guard lock(rejected_mu_);
    for (const auto& [reason, n] : rejected_) {
      w.counter("request_rejected_total", n, "reason", reason);
    }
  }

  w.family("num_preemptions_total", "counter", "Number of preempted requests.");
  w.counter("num_preemptions_total", preemptions_.load(kRelaxed));
  w.family("prompt_tokens_total", "counter", "Number of prompt tokens processed.");
  w.counter("prompt_tokens_total", prompt_tokens_.load(kRelaxed));
  w.family("generation_tokens_total", "counter", "Number of generated tokens.");
  w.counter("generation_tokens_total", generation_tokens_.load(kRelaxed));
  w.family("prefix_cache_queries_total", "counter",
           "Number of prompt tokens looked up in the prefix cache.");
  w.counter("prefix_cache_queries_total", queries);
  w.family("prefix_cache_hits_total", "counter",
           "Number of prompt tokens found in the prefix cache.");
  w.counter("prefix_cache_hits_total", hits);

  w.histogram("time_to_first_token_seconds", "Time from arrival to the first generated token.",
              ttft_);
  w.histogram("inter_token_latency_seconds", "Time between consecutive generated tokens.", itl_);
  w.histogram("e2e_request_latency_seconds", "Time from arrival to finish of a request.", e2e_);
  w.histogram("request_queue_time_seconds", "Time from arrival to first scheduling.", queue_time_);
  w.histogram("request_prompt_tokens", "Prompt length of finished requests, in tokens.",
              prompt_tokens_hist_);
  w.histogram("request_generation_tokens", "Generated tokens of finished requests.",
              generation_tokens_hist_);
  return out;
}

}  // namespace origami::serve
