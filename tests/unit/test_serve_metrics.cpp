// Serving metrics (Metrics::render): the exposition text is parsed back by a small parser written
// here from the text format 0.0.4 grammar (HELP/TYPE comments, name{label="value",...} value),
// and every number is checked against counts and sums computed in the test from the values it
// observed: cumulative buckets by a naive count against each parsed "le", _count and _sum, the
// counters and gauges, label escaping, and exact totals after concurrent writers. Python's
// prometheus_client (pinned in .venv by scripts/setup.sh) must parse the text too.
#include <algorithm>
#include <atomic>
#include <cctype>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <random>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "runtime/serve/metrics.h"
#include "tests/support/errors.h"

namespace origami::serve {
namespace {

// ---- a parser for the text format --------------------------------------------------------------

struct Sample {
  std::string name;
  std::map<std::string, std::string> labels;  // unescaped values
  std::string raw_value;                      // the value as written
  double value = 0;
};

struct Exposition {
  std::vector<Sample> samples;
  std::map<std::string, std::string> types;  // family -> TYPE
  std::map<std::string, std::string> helps;  // family -> HELP text
  std::vector<std::string> family_of;        // per sample, the family it belongs to
};

[[noreturn]] void fail(size_t line, const std::string& what) {
  throw std::runtime_error("line " + std::to_string(line) + ": " + what);
}

bool name_char(char c, bool first, bool colon) {
  if (std::isalpha(static_cast<unsigned char>(c)) || c == '_') return true;
  if (colon && c == ':') return true;
  return !first && std::isdigit(static_cast<unsigned char>(c));
}

// Reads [a-zA-Z_:][a-zA-Z0-9_:]* (or without ':' for label names) at s[pos].
std::string read_name(const std::string& s, size_t& pos, bool colon, size_t line) {
  size_t start = pos;
  while (pos < s.size() && name_char(s[pos], pos == start, colon)) ++pos;
  if (pos == start) fail(line, "expected a name in '" + s + "'");
  return s.substr(start, pos - start);
}

double parse_value(const std::string& v, size_t line) {
  if (v == "+Inf") return std::numeric_limits<double>::infinity();
  if (v == "-Inf") return -std::numeric_limits<double>::infinity();
  if (v == "NaN") return std::numeric_limits<double>::quiet_NaN();
  for (char c : v) {
    if (!std::isdigit(static_cast<unsigned char>(c)) && c != '.' && c != 'e' && c != 'E' &&
        c != '-' && c != '+')
      fail(line, "bad value '" + v + "'");
  }
  char* end = nullptr;
  double d = std::strtod(v.c_str(), &end);
  if (v.empty() || end != v.c_str() + v.size()) fail(line, "bad value '" + v + "'");
  return d;
}

// Parses the text and checks its structure: every line ends with '\n'; each family has one HELP
// and one TYPE, both before its samples; a family's samples are contiguous (no sample of an
// earlier family after a later one's header); histogram samples are <family>_bucket/_sum/_count.
Exposition parse(const std::string& text) {
  Exposition e;
  if (text.empty() || text.back() != '\n') throw std::runtime_error("text must end with a newline");
  std::string current;  // the family whose header came last
  std::set<std::string> closed;
  size_t line_no = 0, pos = 0;
  while (pos < text.size()) {
    size_t nl = text.find('\n', pos);
    std::string line = text.substr(pos, nl - pos);
    pos = nl + 1;
    ++line_no;
    if (line.empty()) continue;
    if (line[0] == '#') {
      std::string kind = line.substr(0, 7);
      if (kind != "# HELP " && kind != "# TYPE ") continue;  // a plain comment
      size_t p = 7;
      std::string name = read_name(line, p, true, line_no);
      if (p >= line.size() || line[p] != ' ') fail(line_no, "no text after the name");
      std::string rest = line.substr(p + 1);
      if (name != current) {
        if (!current.empty()) closed.insert(current);
        if (closed.count(name)) fail(line_no, "family " + name + " appears twice");
        current = name;
      }
      auto& map = kind == "# HELP " ? e.helps : e.types;
      if (map.count(name)) fail(line_no, kind + "repeated for " + name);
      map[name] = rest;
      continue;
    }
    Sample s;
    size_t p = 0;
    s.name = read_name(line, p, true, line_no);
    if (p < line.size() && line[p] == '{') {
      ++p;
      while (true) {
        if (p < line.size() && line[p] == '}') {
          ++p;
          break;
        }
        std::string key = read_name(line, p, false, line_no);
        if (line.compare(p, 2, "=\"") != 0) fail(line_no, "expected =\" after " + key);
        p += 2;
        std::string value;
        while (true) {
          if (p >= line.size()) fail(line_no, "unterminated label value");
          char c = line[p++];
          if (c == '"') break;
          if (c == '\\') {
            if (p >= line.size()) fail(line_no, "dangling backslash");
            char n = line[p++];
            if (n == 'n') {
              value += '\n';
            } else if (n == '\\' || n == '"') {
              value += n;
            } else {
              fail(line_no, "bad escape");
            }
          } else {
            value += c;
          }
        }
        if (!s.labels.emplace(key, value).second) fail(line_no, "label " + key + " repeated");
        if (p < line.size() && line[p] == ',') ++p;
      }
    }
    if (p >= line.size() || line[p] != ' ') fail(line_no, "expected a space before the value");
    s.raw_value = line.substr(p + 1);
    s.value = parse_value(s.raw_value, line_no);

    std::string family = s.name;
    if (!e.types.count(family)) {
      for (std::string suffix : {"_bucket", "_sum", "_count"}) {
        if (family.size() > suffix.size() &&
            family.compare(family.size() - suffix.size(), suffix.size(), suffix) == 0) {
          family.resize(family.size() - suffix.size());
          break;
        }
      }
      if (!e.types.count(family) || e.types[family] != "histogram")
        fail(line_no, "sample " + s.name + " has no TYPE before it");
    }
    if (!e.helps.count(family)) fail(line_no, "sample " + s.name + " has no HELP before it");
    if (family != current) fail(line_no, "sample " + s.name + " outside its family's block");
    e.family_of.push_back(family);
    e.samples.push_back(std::move(s));
  }
  return e;
}

// The samples named `name` whose labels include every one of `labels`.
std::vector<const Sample*> find(const Exposition& e, const std::string& name,
                                const std::map<std::string, std::string>& labels = {}) {
  std::vector<const Sample*> out;
  for (const Sample& s : e.samples) {
    if (s.name != name) continue;
    bool match = std::all_of(labels.begin(), labels.end(), [&](const auto& kv) {
      auto it = s.labels.find(kv.first);
      return it != s.labels.end() && it->second == kv.second;
    });
    if (match) out.push_back(&s);
  }
  return out;
}

// The value of the one sample matching; fails the test (and returns NaN) unless exactly one does.
double value(const Exposition& e, const std::string& name,
             const std::map<std::string, std::string>& labels = {}) {
  auto found = find(e, name, labels);
  EXPECT_EQ(found.size(), 1u) << name;
  return found.size() == 1 ? found[0]->value : std::numeric_limits<double>::quiet_NaN();
}

bool all_digits(const std::string& s) {
  return !s.empty() && std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; });
}

// Checks histogram `family` against the observed values (all finite): the "le" labels increase
// strictly and end with "+Inf"; each bucket holds exactly the values <= its le (counted here);
// "+Inf" == _count == values.size(); _sum matches the sum computed in observation order.
void expect_histogram(const Exposition& e, const std::string& family,
                      const std::vector<double>& values) {
  SCOPED_TRACE(family);
  auto buckets = find(e, "origami:" + family + "_bucket");
  ASSERT_GE(buckets.size(), 2u);
  double prev = -std::numeric_limits<double>::infinity();
  for (const Sample* b : buckets) {
    ASSERT_TRUE(b->labels.count("le"));
    double le = parse_value(b->labels.at("le"), 0);
    EXPECT_GT(le, prev) << "le " << b->labels.at("le");
    prev = le;
    auto naive = std::count_if(values.begin(), values.end(), [&](double v) { return v <= le; });
    EXPECT_EQ(b->value, static_cast<double>(naive)) << "le " << b->labels.at("le");
    EXPECT_TRUE(all_digits(b->raw_value)) << b->raw_value;
  }
  EXPECT_EQ(buckets.back()->labels.at("le"), "+Inf");
  double count = value(e, "origami:" + family + "_count");
  EXPECT_EQ(count, static_cast<double>(values.size()));
  EXPECT_EQ(buckets.back()->value, count);
  double sum = 0;
  for (double v : values) sum += v;
  EXPECT_DOUBLE_EQ(value(e, "origami:" + family + "_sum"), sum);
}

const std::map<std::string, std::string> kExpectedTypes = {
    {"origami:num_requests_running", "gauge"},
    {"origami:num_requests_waiting", "gauge"},
    {"origami:kv_cache_usage_perc", "gauge"},
    {"origami:prefix_cache_hit_rate", "gauge"},
    {"origami:request_success_total", "counter"},
    {"origami:request_rejected_total", "counter"},
    {"origami:num_preemptions_total", "counter"},
    {"origami:prompt_tokens_total", "counter"},
    {"origami:generation_tokens_total", "counter"},
    {"origami:prefix_cache_queries_total", "counter"},
    {"origami:prefix_cache_hits_total", "counter"},
    {"origami:time_to_first_token_seconds", "histogram"},
    {"origami:inter_token_latency_seconds", "histogram"},
    {"origami:e2e_request_latency_seconds", "histogram"},
    {"origami:request_queue_time_seconds", "histogram"},
    {"origami:request_prompt_tokens", "histogram"},
    {"origami:request_generation_tokens", "histogram"},
};

// ---- tests ------------------------------------------------------------------------------------

TEST(ServeMetrics, EmptyRegistryHasEveryFamilyWithHelpTypeAndZeros) {
  Metrics m;
  Exposition e = parse(m.render("llama"));
  EXPECT_EQ(e.types, kExpectedTypes);
  for (const auto& [name, type] : kExpectedTypes) {
    EXPECT_FALSE(e.helps[name].empty()) << name;
    EXPECT_FALSE(find(e, type == "histogram" ? name + "_count" : name).empty()) << name;
  }
  for (const Sample& s : e.samples) {
    EXPECT_EQ(s.labels.at("model_name"), "llama") << s.name;
    EXPECT_EQ(s.value, 0.0) << s.name;
    EXPECT_EQ(s.raw_value, "0") << s.name;
  }
  for (std::string r : {"stop", "length", "abort"})
    EXPECT_EQ(find(e, "origami:request_success_total", {{"finished_reason", r}}).size(), 1u) << r;
  for (std::string r : {"queue_full", "bad_request"})
    EXPECT_EQ(find(e, "origami:request_rejected_total", {{"reason", r}}).size(), 1u) << r;
  expect_histogram(e, "time_to_first_token_seconds", {});
  expect_histogram(e, "request_prompt_tokens", {});
}

TEST(ServeMetrics, LatencyHistogramsMatchANaiveCount) {
  Metrics m;
  std::mt19937_64 rng(7);
  std::uniform_real_distribution<double> log_s(std::log(1e-4), std::log(500.0));
  std::vector<double> ttft, itl, e2e, queue;
  for (int i = 0; i < 3000; ++i) {
    double v = std::exp(log_s(rng));
    (i % 4 == 0 ? ttft : i % 4 == 1 ? itl : i % 4 == 2 ? e2e : queue).push_back(v);
  }
  // Values exactly on bucket bounds belong to that bucket (le is inclusive), and those just past.
  for (double b : {0.001, 0.01, 0.1, 0.5, 1.0, 120.0, 0.0}) {
    ttft.push_back(b);
    ttft.push_back(std::nextafter(b, 1e9));
  }
  for (double v : ttft) m.observe_ttft(v);
  for (double v : itl) m.observe_itl(v);
  for (double v : e2e) m.observe_e2e(v);
  for (double v : queue) m.observe_queue_time(v);

  Exposition e = parse(m.render("m"));
  expect_histogram(e, "time_to_first_token_seconds", ttft);
  expect_histogram(e, "inter_token_latency_seconds", itl);
  expect_histogram(e, "e2e_request_latency_seconds", e2e);
  expect_histogram(e, "request_queue_time_seconds", queue);

  // The latency buckets span 1 ms .. 120 s; values past 120 s only reach "+Inf".
  auto buckets = find(e, "origami:time_to_first_token_seconds_bucket");
  ASSERT_GE(buckets.size(), 3u);
  EXPECT_EQ(parse_value(buckets.front()->labels.at("le"), 0), 0.001);
  EXPECT_EQ(parse_value(buckets[buckets.size() - 2]->labels.at("le"), 0), 120.0);
}

TEST(ServeMetrics, TokenHistogramsMatchANaiveCount) {
  Metrics m;
  std::vector<double> prompt, generated;
  std::mt19937_64 rng(11);
  std::uniform_int_distribution<int64_t> len(0, 200000);
  for (int i = 0; i < 500; ++i) {
    int64_t p = len(rng) >> (i % 17), g = len(rng) >> (i % 13);
    m.observe_request_tokens(p, g);
    prompt.push_back(double(p));
    generated.push_back(double(g));
  }
  for (int64_t p : {1, 2, 5, 4096, 4097, 8192, 131072, 131073}) {
    m.observe_request_tokens(p, p - 1);
    prompt.push_back(double(p));
    generated.push_back(double(p - 1));
  }
  Exposition e = parse(m.render("m"));
  expect_histogram(e, "request_prompt_tokens", prompt);
  expect_histogram(e, "request_generation_tokens", generated);
  for (const Sample* s : find(e, "origami:request_prompt_tokens_bucket")) {
    if (s->labels.at("le") != "+Inf") {
      EXPECT_TRUE(all_digits(s->labels.at("le")));
    }
  }
  EXPECT_TRUE(all_digits(find(e, "origami:request_prompt_tokens_sum")[0]->raw_value));
}

TEST(ServeMetrics, NonFiniteObservationsAreIgnored) {
  Metrics m;
  m.observe_itl(std::numeric_limits<double>::quiet_NaN());
  m.observe_itl(std::numeric_limits<double>::infinity());
  m.observe_itl(-std::numeric_limits<double>::infinity());
  m.observe_itl(0.25);
  Exposition e = parse(m.render("m"));
  expect_histogram(e, "inter_token_latency_seconds", {0.25});
}

TEST(ServeMetrics, CountersAndGauges) {
  Metrics m;
  m.count_finished(RequestOutcome::kStop);
  m.count_finished(RequestOutcome::kStop);
  m.count_finished(RequestOutcome::kLength);
  m.count_rejected("queue_full");
  m.count_rejected("too_long");
  m.count_rejected("too_long");
  m.add_counters({.prompt_tokens = 1000000000000,  // 1e12: still printed as plain digits
                  .generation_tokens = 17,
                  .preemptions = 2,
                  .prefix_cache_queries = 8,
                  .prefix_cache_hits = 3});
  m.add_counters({.generation_tokens = 5});
  m.set_gauges({.running = 3, .waiting = 12, .kv_cache_usage = 0.1});

  Exposition e = parse(m.render("m"));
  EXPECT_EQ(value(e, "origami:request_success_total", {{"finished_reason", "stop"}}), 2);
  EXPECT_EQ(value(e, "origami:request_success_total", {{"finished_reason", "length"}}), 1);
  EXPECT_EQ(value(e, "origami:request_success_total", {{"finished_reason", "abort"}}), 0);
  EXPECT_EQ(value(e, "origami:request_rejected_total", {{"reason", "queue_full"}}), 1);
  EXPECT_EQ(value(e, "origami:request_rejected_total", {{"reason", "bad_request"}}), 0);
  EXPECT_EQ(value(e, "origami:request_rejected_total", {{"reason", "too_long"}}), 2);
  EXPECT_EQ(value(e, "origami:prompt_tokens_total"), 1e12);
  EXPECT_EQ(find(e, "origami:prompt_tokens_total")[0]->raw_value, "1000000000000");
  EXPECT_EQ(value(e, "origami:generation_tokens_total"), 22);
  EXPECT_EQ(value(e, "origami:num_preemptions_total"), 2);
  EXPECT_EQ(value(e, "origami:prefix_cache_queries_total"), 8);
  EXPECT_EQ(value(e, "origami:prefix_cache_hits_total"), 3);
  EXPECT_EQ(value(e, "origami:prefix_cache_hit_rate"), 3.0 / 8.0);
  EXPECT_EQ(value(e, "origami:num_requests_running"), 3);
  EXPECT_EQ(find(e, "origami:num_requests_waiting")[0]->raw_value, "12");
  EXPECT_EQ(value(e, "origami:kv_cache_usage_perc"), 0.1);  // reads back exactly
  for (const Sample& s : e.samples) {
    if (e.types[e.family_of[&s - e.samples.data()]] == "counter") {
      EXPECT_TRUE(all_digits(s.raw_value)) << s.name << " " << s.raw_value;
    }
  }

  // Integral values print without an exponent, also where one would be shorter ("5e+06").
  m.set_gauges({.running = 0, .waiting = 5000000, .kv_cache_usage = 1.0});
  e = parse(m.render("m"));
  EXPECT_EQ(value(e, "origami:num_requests_running"), 0);
  EXPECT_EQ(find(e, "origami:num_requests_waiting")[0]->raw_value, "5000000");
  EXPECT_EQ(find(e, "origami:kv_cache_usage_perc")[0]->raw_value, "1");
}

TEST(ServeMetrics, NegativeCounterDeltaThrowsAndAddsNothing) {
  Metrics m;
  std::string what =
      test::error_of([&] { m.add_counters({.prompt_tokens = 5, .generation_tokens = -1}); });
  EXPECT_TRUE(test::mentions(what, {"add_counters", "negative", "generation -1"}));
  Exposition e = parse(m.render("m"));
  EXPECT_EQ(value(e, "origami:prompt_tokens_total"), 0);
  EXPECT_EQ(value(e, "origami:generation_tokens_total"), 0);
}

TEST(ServeMetrics, HistogramRejectsBadBounds) {
  const double nan = std::numeric_limits<double>::quiet_NaN();
  const std::vector<double> decreasing = {1, 3, 2}, repeated = {1, 1}, with_nan = {1, nan};
  const std::vector<double> too_many(Histogram::kMaxBounds + 1, 0.0);
  EXPECT_TRUE(test::mentions(test::error_of([&] { Histogram h(decreasing); }), {"increase"}));
  EXPECT_TRUE(test::mentions(test::error_of([&] { Histogram h(repeated); }), {"increase"}));
  EXPECT_TRUE(test::mentions(test::error_of([&] { Histogram h(with_nan); }), {"not finite"}));
  EXPECT_TRUE(test::mentions(test::error_of([&] { Histogram h(too_many); }), {"at most"}));
}

TEST(ServeMetrics, LabelValuesAreEscaped) {
  const std::string model = "org/m\"odel\\v2\nx{y}=,z";
  const std::string reason = "bad \"json\"\\ \n end";
  Metrics m;
  m.count_rejected(reason);
  std::string text = m.render(model);
  Exposition e = parse(text);
  for (const Sample& s : e.samples) EXPECT_EQ(s.labels.at("model_name"), model) << s.name;
  EXPECT_EQ(value(e, "origami:request_rejected_total", {{"reason", reason}}), 1);
  // The raw text holds the escaped forms.
  EXPECT_NE(text.find(R"(model_name="org/m\"odel\\v2\nx{y}=,z")"), std::string::npos);
  EXPECT_NE(text.find(R"(reason="bad \"json\"\\ \n end")"), std::string::npos);
}

TEST(ServeMetrics, ConcurrentWritersGiveExactTotals) {
  Metrics m;
  constexpr int kThreads = 8, kIters = 20000;
  // Dyadic values: every partial sum is exact, so the total does not depend on the order.
  const std::vector<double> kValues = {0.0009765625, 0.03125, 0.5, 2.0, 256.0};
  std::atomic<bool> done{false};
  std::atomic<int> renders{0};
  std::thread reader([&] {
    // A reader scraping meanwhile: every text parses, and "+Inf" == _count, buckets never drop.
    do {
      try {
        Exposition e = parse(m.render("m"));
        auto buckets = find(e, "origami:inter_token_latency_seconds_bucket");
        for (size_t i = 1; i < buckets.size(); ++i)
          ASSERT_LE(buckets[i - 1]->value, buckets[i]->value);
        ASSERT_EQ(buckets.back()->value, value(e, "origami:inter_token_latency_seconds_count"));
      } catch (const std::exception& ex) {
        ADD_FAILURE() << ex.what();
        return;
      }
      renders.fetch_add(1);
    } while (!done.load());
  });
  std::vector<std::thread> writers;
  for (int t = 0; t < kThreads; ++t) {
    writers.emplace_back([&, t] {
      for (int i = 0; i < kIters; ++i) {
        m.observe_itl(kValues[size_t(i + t) % kValues.size()]);
        m.observe_request_tokens(i % 300, 7);
        m.count_finished(static_cast<RequestOutcome>(i % 3));
        m.add_counters({.prompt_tokens = 3,
                        .generation_tokens = 1,
                        .prefix_cache_queries = 2,
                        .prefix_cache_hits = 1});
        if (i % 100 == 0) m.count_rejected(t % 2 ? "queue_full" : "thread_even");
      }
    });
  }
  for (auto& w : writers) w.join();
  done.store(true);
  reader.join();

  std::vector<double> itl, prompt, generated;
  for (int t = 0; t < kThreads; ++t) {
    for (int i = 0; i < kIters; ++i) {
      itl.push_back(kValues[size_t(i + t) % kValues.size()]);
      prompt.push_back(i % 300);
      generated.push_back(7);
    }
  }
  Exposition e = parse(m.render("m"));
  expect_histogram(e, "inter_token_latency_seconds", itl);
  expect_histogram(e, "request_prompt_tokens", prompt);
  expect_histogram(e, "request_generation_tokens", generated);
  const double n = double(kThreads) * kIters;
  // kIters % 3 == 2: reasons 0 and 1 get one more than reason 2 per thread.
  EXPECT_EQ(value(e, "origami:request_success_total", {{"finished_reason", "stop"}}),
            kThreads * (kIters / 3 + 1));
  EXPECT_EQ(value(e, "origami:request_success_total", {{"finished_reason", "length"}}),
            kThreads * (kIters / 3 + 1));
  EXPECT_EQ(value(e, "origami:request_success_total", {{"finished_reason", "abort"}}),
            kThreads * (kIters / 3));
  EXPECT_EQ(value(e, "origami:prompt_tokens_total"), 3 * n);
  EXPECT_EQ(value(e, "origami:generation_tokens_total"), n);
  EXPECT_EQ(value(e, "origami:prefix_cache_queries_total"), 2 * n);
  EXPECT_EQ(value(e, "origami:prefix_cache_hit_rate"), 0.5);
  EXPECT_EQ(value(e, "origami:request_rejected_total", {{"reason", "queue_full"}}),
            (kThreads / 2) * (kIters / 100));
  EXPECT_EQ(value(e, "origami:request_rejected_total", {{"reason", "thread_even"}}),
            (kThreads / 2) * (kIters / 100));
  EXPECT_GT(renders.load(), 0);
}

TEST(ServeMetrics, PrometheusClientParserAcceptsTheText) {
  Metrics m;
  m.observe_ttft(0.3);
  m.observe_request_tokens(100, 20);
  m.count_finished(RequestOutcome::kAbort);
  m.count_rejected("quote\"d");
  m.set_gauges({.running = 1, .waiting = 2, .kv_cache_usage = 0.25});
  auto path =
      std::filesystem::temp_directory_path() /
      ("origami_metrics_" + std::to_string(::testing::UnitTest::GetInstance()->random_seed()) +
       "_" + std::to_string(reinterpret_cast<uintptr_t>(&m)) + ".txt");
  {
    std::ofstream f(path, std::ios::binary);
    f << m.render("mo\"del");
  }
  // Exits 0 only when every family parses with the expected type and the histogram's count.
  std::string script =
      "import sys\n"
      "from prometheus_client.parser import text_string_to_metric_families as p\n"
      "fams = {f.name: f for f in p(open(sys.argv[1]).read())}\n"
      "assert len(fams) == 17, sorted(fams)\n"
      "h = fams['origami:time_to_first_token_seconds']\n"
      "assert h.type == 'histogram', h.type\n"
      "cnt = [s for s in h.samples if s.name.endswith('_count')]\n"
      "assert cnt[0].value == 1 and cnt[0].labels['model_name'] == 'mo\"del', cnt\n"
      "assert fams['origami:kv_cache_usage_perc'].samples[0].value == 0.25\n";
  auto script_path = path;
  script_path.replace_extension(".py");
  {
    std::ofstream f(script_path, std::ios::binary);
    f << script;
  }
  int rc = std::system((std::string("'") + ORIGAMI_PYTHON + "' '" + script_path.string() + "' '" +
                        path.string() + "'")
                           .c_str());
  std::filesystem::remove(path);
  std::filesystem::remove(script_path);
  EXPECT_EQ(rc, 0);
}

}  // namespace
}  // namespace origami::serve
