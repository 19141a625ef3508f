#include "runtime/serve/engine.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <span>

#include "runtime/error.h"

namespace origami::serve {

const char* finish_reason_name(FinishReason r) {
  switch (r) {
    case FinishReason::none:
      return "none";
    case FinishReason::stop:
      return "stop";
    case FinishReason::length:
      return "length";
    case FinishReason::abort:
      return "abort";
  }
  return "?";
}

Engine::Engine(Runner& runner)
    : runner_(runner), limits_(runner.limits()), blocks_(limits_.kv_blocks, limits_.kv_block_size) {
  ORIGAMI_CHECK(limits_.vocab >= 1 && limits_.max_context >= 1 && limits_.max_step_tokens >= 1 &&
                    limits_.max_sequences >= 1,
                "serving engine: the runner's limits must be positive (vocab ", limits_.vocab,
                ", context ", limits_.max_context, ", step tokens ", limits_.max_step_tokens,
                ", sequences ", limits_.max_sequences, ")");
  if (limits_.max_logit_rows == 0) limits_.max_logit_rows = limits_.max_sequences;
  ORIGAMI_CHECK(limits_.max_logit_rows >= limits_.max_sequences, "serving engine: the runner's ",
                limits_.max_logit_rows, " rows of logits per step are fewer than its ",
                limits_.max_sequences, " sequences");
  stats_.kv_blocks_total = limits_.kv_blocks;
}

int64_t Engine::add_request(RequestParams params, TokenCallback callback) {
  const int64_t P = int64_t(params.prompt.size());
  ORIGAMI_CHECK(P >= 1, "request: the prompt is empty");
  ORIGAMI_CHECK(params.max_tokens >= 0, "request: max_tokens must be >= 0, got ",
                params.max_tokens);
  ORIGAMI_CHECK(params.n >= 1 && params.n <= 64, "request: n must be in [1, 64], got ", params.n);
  ORIGAMI_CHECK(params.n <= limits_.max_sequences, "request: n = ", params.n,
                " samples exceed the ", limits_.max_sequences, " sequences a step may run");
  ORIGAMI_CHECK(params.logprobs >= -1 && params.logprobs <= 20,
                "request: logprobs must be in [0, 20] (or -1 for none), got ", params.logprobs);
  ORIGAMI_CHECK(!params.prompt_logprobs || params.logprobs >= 0,
                "request: prompt log-probabilities need logprobs >= 0");
  for (int64_t id : params.prompt)
    ORIGAMI_CHECK(id >= 0 && id < limits_.vocab, "request: token id ", id,
                  " is outside the vocabulary of ", limits_.vocab);
  ORIGAMI_CHECK(P + params.max_tokens <= limits_.max_context, "request: the prompt's ", P,
                " tokens plus max_tokens ", params.max_tokens, " exceed the context of ",
                limits_.max_context, " tokens");
  ORIGAMI_CHECK(blocks_.blocks_for(P + params.max_tokens) <= limits_.kv_blocks,
                "request: ", P + params.max_tokens, " tokens need ",
                blocks_.blocks_for(P + params.max_tokens), " KV blocks, the cache has ",
                limits_.kv_blocks);
  params.sampling.validate();
  auto req = std::make_shared<Request>();
  req->id = next_request_++;
  req->live = params.n;
  req->ended.assign(size_t(params.n), false);
  req->params = std::move(params);
  req->callback = std::move(callback);
  auto s = std::make_unique<Sequence>();
  s->id = next_id_++;
  s->request = req;
  s->forked = req->params.n == 1;
  s->tokens = req->params.prompt;
  s->prompt_len = P;
  s->sampler = std::make_unique<Sampler>(req->params.sampling, limits_.vocab);
  waiting_.push_back(s.get());
  seqs_[s->id] = std::move(s);
  return req->id;
}

void Engine::abort(int64_t id) {
  std::vector<Sequence*> found;
  for (auto& [sid, s] : seqs_)
    if (s->request->id == id) found.push_back(s.get());
  for (Sequence* s : found) finish(*s, FinishReason::abort, -1);
}

void Engine::abort(int64_t id, int sample) {
  for (auto& [sid, s] : seqs_) {
    if (s->request->id != id) continue;
    if (s->forked) {
      if (s->sample != sample) continue;
      finish(*s, FinishReason::abort, -1);
      return;
    }
    // The request still runs its prompt as one sequence: the fork will leave this sample out.
    Request& req = *s->request;
    if (sample < 0 || sample >= req.params.n || req.ended[size_t(sample)]) return;
    if (req.live == 1) {  // its last sample: the request ends
      finish(*s, FinishReason::abort, -1);
      return;
    }
    req.ended[size_t(sample)] = true;
    --req.live;
    TokenEvent e;
    e.sample = sample;
    e.reason = FinishReason::abort;
    if (req.callback) req.callback(e);
    return;
  }
}

void Engine::finish(Sequence& s, FinishReason r, int64_t token) {
  if (blocks_.contains(s.id)) blocks_.free(s.id);
  running_.erase(std::remove(running_.begin(), running_.end(), &s), running_.end());
  waiting_.erase(std::remove(waiting_.begin(), waiting_.end(), &s), waiting_.end());
  std::shared_ptr<Request> req = s.request;
  std::vector<int> ending = {s.sample};
  if (!s.forked) {  // an unforked request ends every sample still live with it
    ending.clear();
    for (int i = 0; i < req->params.n; ++i)
      if (!req->ended[size_t(i)]) ending.push_back(i);
  }
  seqs_.erase(s.id);  // s is gone from here on
  for (size_t i = 0; i < ending.size(); ++i) {
    req->ended[size_t(ending[i])] = true;
    --req->live;
    TokenEvent e;
    e.sample = ending[i];
    e.token = i == 0 ? token : -1;
    e.reason = r;
    if (req->callback) req->callback(e);
  }
}

void Engine::preempt(Sequence& s) {
  if (blocks_.contains(s.id)) blocks_.free(s.id);
  s.computed = 0;  // recomputed from its tokens (or its cached prefix) when it runs again
  s.published = 0;
  running_.erase(std::remove(running_.begin(), running_.end(), &s), running_.end());
  waiting_.push_front(&s);
  ++stats_.preemptions;
}

void Engine::hash_blocks(Sequence& s, int64_t tokens) {
  const int64_t bs = limits_.kv_block_size;
  for (int64_t b = int64_t(s.hashes.size()); (b + 1) * bs <= tokens; ++b) {
    uint64_t h = s.hashes.empty() ? 0x9E3779B97F4A7C15ull : s.hashes.back();
    for (int64_t t = b * bs; t < (b + 1) * bs; ++t) {  // FNV-style mixing of each token
      h ^= uint64_t(s.tokens[size_t(t)]) + 0x9E3779B97F4A7C15ull + (h << 6) + (h >> 2);
      h *= 0x100000001B3ull;
    }
    s.hashes.push_back(h == 0 ? 1 : h);
  }
}

int64_t Engine::reuse_prefix(Sequence& s) {
  const int64_t bs = limits_.kv_block_size, len = int64_t(s.tokens.size());
  hash_blocks(s, ((len - 1) / bs) * bs);  // never the block holding the last token
  const int64_t usable = (len - 1) / bs;
  const std::span<const uint64_t> hashes(s.hashes.data(), size_t(usable));
  const int64_t k = blocks_.cached_prefix(hashes);
  stats_.prefix_queried_tokens += len;
  if (k == 0) return 0;
  blocks_.allocate_cached(s.id, k * bs, hashes.first(size_t(k)));
  s.published = k;
  stats_.prefix_hit_tokens += k * bs;
  return k * bs;
}

int64_t Engine::fit_rows(const Sequence& s, int64_t n, int64_t& extra_rows) const {
  if (!s.wants_prompt_rows()) return n;
  // The chunk [c, c + n) stops at the prompt's end. Its rows: every position >= from, of which
  // the last is the sequence's own row and the others are extra.
  const int64_t c = s.computed, from = std::max(c, s.prompt_rows_from());
  n = std::min({n, std::max<int64_t>(s.prompt_len - c, 1), from - c + extra_rows + 1});
  extra_rows -= std::max<int64_t>(c + n - 1 - from, 0);
  return n;
}

void Engine::schedule(std::vector<Chunk>& chunks) {
  chunks.clear();
  int64_t budget = limits_.max_step_tokens;
  int64_t reserved = 0;  // blocks the chunks chosen so far will take
  // Rows of logits beyond one per sequence: prompt tokens' rows (prompt_logprobs).
  int64_t extra_rows = limits_.max_logit_rows - limits_.max_sequences;
  // 1. Running sequences, oldest first; preempt the newest when the cache is full.
  for (size_t i = 0; i < running_.size() && budget > 0;) {
    Sequence& s = *running_[i];
    int64_t rows_left = extra_rows;
    const int64_t n =
        fit_rows(s, std::min<int64_t>(int64_t(s.tokens.size()) - s.computed, budget), rows_left);
    const int64_t need = blocks_.blocks_to_grow(s.id, n);
    if (need <= blocks_.free_blocks() - reserved) {
      reserved += need;
      extra_rows = rows_left;
      chunks.push_back({&s, n});
      budget -= n;
      ++i;
      continue;
    }
    // No room: free the newest running sequence not yet scheduled (possibly this one).
    Sequence& victim = *running_.back();
    preempt(victim);
    if (&victim == &s) break;
  }
  // 2. Waiting requests join while budget, sequence cap and free blocks allow.
  while (!waiting_.empty() && budget > 0) {
    Sequence& s = *waiting_.front();
    if (int64_t(running_.size()) + slots(s) > limits_.max_sequences) break;
    if (!blocks_.contains(s.id) && blocks_.free_blocks() - reserved > 0 && !s.wants_prompt_rows()) {
      // Its cached prefix (allocated now, returned below if the rest does not fit).
      s.computed = reuse_prefix(s);
    }
    int64_t rows_left = extra_rows;
    const int64_t n =
        fit_rows(s, std::min<int64_t>(int64_t(s.tokens.size()) - s.computed, budget), rows_left);
    const int64_t need =
        blocks_.contains(s.id) ? blocks_.blocks_to_grow(s.id, n) : blocks_.blocks_for(n);
    if (need > blocks_.free_blocks() - reserved) {
      if (blocks_.contains(s.id)) blocks_.free(s.id);
      s.computed = 0;
      s.published = 0;
      break;
    }
    reserved += need;
    extra_rows = rows_left;
    waiting_.pop_front();
    running_.push_back(&s);
    if (!s.started) {
      s.started = true;
      if (s.request->params.on_scheduled) s.request->params.on_scheduled();
    }
    chunks.push_back({&s, n});
    budget -= n;
  }
}

void Engine::build_batch(std::vector<Chunk>& chunks) {
  copies_.clear();
  begin_step(batch_);
  std::vector<int64_t>& ids = step_ids_;
  ids.clear();
  for (Chunk& c : chunks) {
    Sequence& s = *c.seq;
    if (blocks_.contains(s.id))
      blocks_.append(s.id, c.n, &copies_);
    else
      blocks_.allocate(s.id, c.n);
    c.first_row = int64_t(batch_.logit_rows.size());
    add_to_step(batch_, blocks_, s.id,
                std::span<const int64_t>(s.tokens.data() + s.computed, size_t(c.n)), s.computed,
                s.wants_prompt_rows() ? s.prompt_rows_from() : kLastLogitsOnly);
    c.rows = int64_t(batch_.logit_rows.size()) - c.first_row;
    ids.push_back(s.id);
  }
  end_step(batch_, blocks_, ids, copies_);
}

bool Engine::step() {
  std::vector<Chunk>& chunks = chunks_;  // members, so that a step allocates nothing
  schedule(chunks);
  if (chunks.empty()) return false;
  build_batch(chunks);
  const Tensor logits = runner_.step(batch_);
  ++stats_.steps;
  const int64_t V = limits_.vocab;
  for (size_t j = 0; j < chunks.size(); ++j) {
    Sequence& s = *chunks[j].seq;
    if (s.computed < s.prompt_len)
      stats_.prompt_tokens += std::min(chunks[j].n, s.prompt_len - s.computed);
    s.computed += chunks[j].n;
    hash_blocks(s, s.computed);  // publish the blocks this step completed
    const int64_t full =
        std::min<int64_t>(int64_t(s.hashes.size()), s.computed / limits_.kv_block_size);
    for (; s.published < full; ++s.published)
      blocks_.publish(s.id, s.published, s.hashes[size_t(s.published)]);
    const Chunk& c = chunks[j];
    if (s.wants_prompt_rows()) {
      if (s.prompt_reported == 0) report_prompt_token(s, 0, {});
      for (int64_t r = c.first_row; r < c.first_row + c.rows; ++r) {
        const int64_t t = batch_.positions[size_t(batch_.logit_rows[size_t(r)])] + 1;
        if (t == s.prompt_reported && t < s.prompt_len)
          report_prompt_token(s, t,
                              std::span<const float>(logits.data_as<float>() + r * V, size_t(V)));
      }
    }
    if (s.computed < int64_t(s.tokens.size())) continue;  // a prompt chunk: nothing to sample
    if (s.request->params.max_tokens == 0) {              // the prompt alone was asked for
      finish(s, FinishReason::length, -1);
      continue;
    }
    const std::span<const float> row(logits.data_as<float>() + (c.first_row + c.rows - 1) * V,
                                     size_t(V));
    std::vector<Sequence*>& samples = samples_;
    samples.assign(1, &s);
    if (!s.forked) fork_samples(s, samples);  // the samples draw from the same row
    for (Sequence* x : samples) sample_next(*x, row);
  }
  return true;
}

void Engine::fork_samples(Sequence& s, std::vector<Sequence*>& samples) {
  Request& req = *s.request;
  s.forked = true;
  samples.clear();
  for (int i = 0; i < req.params.n; ++i) {
    if (req.ended[size_t(i)]) continue;  // aborted before the fork
    if (samples.empty()) {               // the first live sample keeps the sequence
      s.sample = i;
      samples.push_back(&s);
      continue;
    }
    auto c = std::make_unique<Sequence>();
    c->id = next_id_++;
    c->request = s.request;
    c->sample = i;
    c->forked = true;
    c->tokens = s.tokens;
    c->prompt_len = s.prompt_len;
    c->computed = s.computed;
    c->hashes = s.hashes;
    c->published = s.published;
    SamplingParams sp = req.params.sampling;
    sp.seed += uint64_t(i);
    c->sampler = std::make_unique<Sampler>(sp, limits_.vocab);
    blocks_.fork(s.id, c->id);
    running_.push_back(c.get());
    samples.push_back(c.get());
    seqs_[c->id] = std::move(c);
  }
  // Sample 0 keeps the request's seed; the sequence's sampler was made with it.
  if (s.sample != 0) {
    SamplingParams sp = req.params.sampling;
    sp.seed += uint64_t(s.sample);
    s.sampler = std::make_unique<Sampler>(sp, limits_.vocab);
  }
}

void Engine::sample_next(Sequence& s, std::span<const float> row) {
  const RequestParams& p = s.request->params;
  // Before min_tokens, the stop ids are masked (their logits set to -inf in a copy).
  std::span<const float> use = row;
  if (s.generated < p.min_tokens && !p.stop_ids.empty()) {
    masked_.assign(row.begin(), row.end());
    for (int64_t id : p.stop_ids)
      if (id >= 0 && id < int64_t(masked_.size()))
        masked_[size_t(id)] = -std::numeric_limits<float>::infinity();
    use = masked_;
  }
  const int64_t tok = s.sampler->sample(use, s.tokens, size_t(s.generated));
  TokenEvent e;
  e.sample = s.sample;
  e.token = tok;
  if (p.logprobs >= 0) fill_logprobs(row, tok, p.logprobs, e);
  s.tokens.push_back(tok);
  ++s.generated;
  ++stats_.generated_tokens;
  const bool stop = std::find(p.stop_ids.begin(), p.stop_ids.end(), tok) != p.stop_ids.end();
  if (stop || s.generated >= p.max_tokens || int64_t(s.tokens.size()) >= limits_.max_context) {
    // The token's event carries the end (finish() reports it after freeing the blocks).
    e.reason = stop ? FinishReason::stop : FinishReason::length;
    if (blocks_.contains(s.id)) blocks_.free(s.id);
    running_.erase(std::remove(running_.begin(), running_.end(), &s), running_.end());
    std::shared_ptr<Request> req = s.request;
    req->ended[size_t(s.sample)] = true;
    --req->live;
    seqs_.erase(s.id);
    if (req->callback) req->callback(e);
    return;
  }
  if (s.request->callback) s.request->callback(e);
}

void Engine::fill_logprobs(std::span<const float> row, int64_t token, int k, TokenEvent& e) {
  // log-softmax of the model's row: x - max - log(sum exp(x - max)), in double.
  const float mx = *std::max_element(row.begin(), row.end());
  double sum = 0.0;
  for (float x : row) sum += std::exp(double(x) - double(mx));
  const double lse = double(mx) + std::log(sum);
  e.logprob = double(row[size_t(token)]) - lse;
  top_.clear();
  if (k > 0) {
    const size_t n = std::min<size_t>(size_t(k), row.size());
    order_.resize(row.size());
    for (size_t i = 0; i < row.size(); ++i) order_[i] = int32_t(i);
    std::partial_sort(order_.begin(), order_.begin() + std::ptrdiff_t(n), order_.end(),
                      [&row](int32_t a, int32_t b) {
                        return row[size_t(a)] > row[size_t(b)] ||
                               (row[size_t(a)] == row[size_t(b)] && a < b);
                      });
    for (size_t i = 0; i < n; ++i)
      top_.emplace_back(order_[i], double(row[size_t(order_[i])]) - lse);
  }
  e.top = top_;
}

void Engine::report_prompt_token(Sequence& s, int64_t t, std::span<const float> row) {
  const Request& req = *s.request;
  TokenEvent e;
  e.token = s.tokens[size_t(t)];
  e.prompt = true;
  if (!row.empty()) fill_logprobs(row, e.token, req.params.logprobs, e);
  ++s.prompt_reported;
  // Before the fork one sequence runs the prompt for every sample: each gets the event.
  for (int i = 0; i < req.params.n; ++i) {
    if (req.ended[size_t(i)] || (s.forked && i != s.sample)) continue;
    e.sample = i;
    if (req.callback) req.callback(e);
  }
}

EngineStats Engine::stats() const {
  EngineStats s = stats_;
  s.running = int64_t(running_.size());
  s.waiting = int64_t(waiting_.size());
  s.kv_blocks_used = blocks_.used_blocks();
  return s;
}

}  // namespace origami::serve
