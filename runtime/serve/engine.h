// The serving engine's core loop (continuous batching), model-agnostic: requests wait in a queue;
// every step the scheduler picks what runs under a token budget and a cap on sequences, the
// runner (runtime/serve/runner.h) runs it over the paged KV cache, and each sequence whose last
// token was in the step samples its next token.
//
//   per step, budget = max_step_tokens:
//   1. running sequences, oldest first: each runs its next chunk -- the rest of its prompt (in
//      chunks that fit the budget: chunked prefill) or its one new token (decode). When the KV
//      cache cannot hold a chunk, the newest running sequence is preempted: its blocks are freed
//      and it goes back to the front of the queue, to be recomputed (prompt and the tokens it
//      generated) when there is room again.
//   2. waiting requests, first come first served, join the running batch while the budget, the
//      sequence cap and the free blocks allow (continuous batching: a new request joins the
//      next step, whatever the others are doing).
//   3. the step runs; sequences whose chunk ended at their last token sample one token; a stop
//      token, max_tokens or the context limit finishes a sequence and frees its blocks at once.
//
// Prompt log-probabilities (RequestParams::prompt_logprobs, the server's echo with logprobs):
// such a sequence's prefill chunks also return the logits of its prompt tokens, whose rows give
// the next prompt token's log-probability. The runner returns at most max_logit_rows rows a step,
// one per sequence and the rest for these, so their chunks are cut to the rows left. Each prompt
// token is reported once, in order, before the first generated token, even when the sequence is
// preempted and recomputed; until all are, the sequence does not take cached blocks.
//
// Prefix caching: every full block a step completes is published under a hash of its tokens
// chained with the previous block's hash; a sequence that starts (or restarts after preemption)
// takes the cached blocks of its longest cached prefix instead of recomputing them (at least its
// last token is always recomputed, for its logits). Freed cached blocks stay reusable until the
// least recently used is evicted (runtime/serve/kv_blocks.h).
//
// A sequence is its tokens (prompt, then generated) and how many of them are in the KV cache
// (`computed`); its next chunk is always tokens[computed, ...), so prefill, decode and
// recomputation after preemption are the same thing. Callbacks run on the thread that calls
// step(); abort() frees a request's blocks at once (a client that went away).
#pragma once

#include <algorithm>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "runtime/serve/kv_blocks.h"
#include "runtime/serve/runner.h"
#include "runtime/serve/sampler.h"

namespace origami::serve {

enum class FinishReason { none, stop, length, abort };
const char* finish_reason_name(FinishReason r);  // "stop", "length", "abort"

struct RequestParams {
  std::vector<int64_t> prompt;    // token ids, at least one
  SamplingParams sampling;        // temperature 0: greedy; else seeded sampling
  int64_t max_tokens = 16;        // generated tokens at most (0: the prompt runs, nothing more)
  std::vector<int64_t> stop_ids;  // tokens that end the sequence (end-of-sequence ids)
  int64_t min_tokens = 0;         // the stop ids cannot be sampled before this many tokens
  // Samples of the prompt (1 to 64). The prompt runs once; then the samples fork its blocks
  // (copy-on-write) and sample i draws with seed + i.
  int n = 1;
  // Log-probabilities: -1 none; k >= 0 the sampled token's and the k most likely (at most 20),
  // all from the log-softmax of the model's logits (before penalties, temperature, top-k/p).
  int logprobs = -1;
  // Also the prompt tokens' log-probabilities (needs logprobs >= 0): one event per prompt token,
  // with `prompt` set, before the first generated token; the first has none (no context).
  bool prompt_logprobs = false;
  // Called (on the stepping thread) when the request first leaves the queue to run.
  std::function<void()> on_scheduled;
};

// One token of one sample (reason none), or the end of a sample (its reason; token -1 when it
// ends without a new token, e.g. aborted). `top` and `logprob` are set when the request asked
// for log-probabilities (`top` is valid during the call only). With `prompt` set, the event is
// a prompt token's log-probability (prompt_logprobs), sent to every sample; the first prompt
// token's has no logprob.
struct TokenEvent {
  int sample = 0;
  int64_t token = -1;
  FinishReason reason = FinishReason::none;
  std::optional<double> logprob;
  std::span<const std::pair<int64_t, double>> top;
  bool prompt = false;
};
using TokenCallback = std::function<void(const TokenEvent&)>;

struct EngineStats {
  int64_t running = 0, waiting = 0;
  int64_t kv_blocks_used = 0, kv_blocks_total = 0;
  int64_t preemptions = 0;  // since start
  int64_t steps = 0, prompt_tokens = 0, generated_tokens = 0;
  // Prefix caching: tokens looked up in the cache when a sequence starts, and those found there
  // (their keys and values reused, not recomputed).
  int64_t prefix_queried_tokens = 0, prefix_hit_tokens = 0;
};

class Engine {
 public:
  explicit Engine(Runner& runner);
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  // Queues a request; returns its id. Throws origami::Error naming the problem when it can never
  // run (empty prompt, a token outside the vocabulary, prompt + max_tokens beyond the context,
  // a prompt the whole KV cache cannot hold). The callback sees every sample's tokens; it may
  // not call the engine (collect aborts and make them after step()).
  int64_t add_request(RequestParams params, TokenCallback callback);
  // Ends a request's samples now (running or waiting): their blocks are freed, the callback gets
  // abort for each. abort(id, i) ends sample i only. Unknown or finished ids are ignored.
  void abort(int64_t id);
  void abort(int64_t id, int sample);
  bool has_work() const { return !running_.empty() || !waiting_.empty(); }
  // One scheduling step and its forward pass; returns false when there was nothing to run.
  bool step();
  // Nothing to run for a while: the runner's idle() (keeps ranks waiting for steps alive).
  void idle() { runner_.idle(); }
  EngineStats stats() const;

 private:
  // A request's samples share its params and callback; the request ends when its last sample
  // does.
  struct Request {
    int64_t id = 0;
    RequestParams params;
    TokenCallback callback;
    int live = 0;             // samples not yet finished
    std::vector<bool> ended;  // per sample
  };
  struct Sequence {
    int64_t id = 0;  // block-manager id (unique per sample)
    std::shared_ptr<Request> request;
    int sample = 0;
    bool forked = false;          // the request's other samples exist (n == 1: always)
    bool started = false;         // has run at least once
    std::vector<int64_t> tokens;  // prompt, then generated
    int64_t prompt_len = 0;
    int64_t computed = 0;  // tokens whose keys and values are in the cache
    int64_t generated = 0;
    std::unique_ptr<Sampler> sampler;
    std::vector<uint64_t> hashes;  // of its full blocks, chained (prefix caching)
    int64_t published = 0;         // of those, published in the block manager
    int64_t prompt_reported = 0;   // prompt tokens whose log-probability was reported
    // Still reporting its prompt's log-probabilities.
    bool wants_prompt_rows() const {
      return request->params.prompt_logprobs && prompt_reported < prompt_len;
    }
    // The first position whose logits it still needs (position p gives token p + 1).
    int64_t prompt_rows_from() const { return std::max<int64_t>(prompt_reported, 1) - 1; }
  };
  struct Chunk {
    Sequence* seq;
    int64_t n;
    int64_t first_row = 0, rows = 0;  // its rows of the step's logits
  };

  void schedule(std::vector<Chunk>& chunks);
  void preempt(Sequence& s);
  void finish(Sequence& s, FinishReason r, int64_t token);
  // Samples the next token of `s` from its logits row and reports it.
  void sample_next(Sequence& s, std::span<const float> row);
  // Reports prompt token `t` of `s` (prompt_logprobs) to every live sample; `row` holds the
  // logits of position t - 1 (empty for t = 0).
  void report_prompt_token(Sequence& s, int64_t t, std::span<const float> row);
  // The log-probability of `token` in `row` and the k most likely into e.logprob and e.top.
  void fill_logprobs(std::span<const float> row, int64_t token, int k, TokenEvent& e);
  // A chunk of n tokens of `s` cut to the extra logit rows left (prompt_logprobs).
  int64_t fit_rows(const Sequence& s, int64_t n, int64_t& extra_rows) const;
  // The n - 1 other samples of a request whose prompt has just run, sharing its blocks.
  // Fills `samples` with the live samples (s first).
  void fork_samples(Sequence& s, std::vector<Sequence*>& samples);
  // Sequence slots a waiting sequence takes when it starts (n for an unforked request).
  int64_t slots(const Sequence& s) const { return s.forked ? 1 : s.request->params.n; }
  void build_batch(std::vector<Chunk>& chunks);
  // Hashes of the sequence's full blocks up to `tokens` (extends s.hashes).
  void hash_blocks(Sequence& s, int64_t tokens);
  // A starting sequence takes the cached blocks of its prefix; returns the tokens found.
  int64_t reuse_prefix(Sequence& s);

  Runner& runner_;
  RunnerLimits limits_;
  BlockManager blocks_;
  std::map<int64_t, std::unique_ptr<Sequence>> seqs_;  // every live request
  std::vector<Sequence*> running_;                     // oldest first
  std::deque<Sequence*> waiting_;
  std::vector<std::pair<int64_t, double>> top_;  // log-probability scratch
  StepBatch batch_;
  std::vector<BlockCopy> copies_;
  std::vector<Chunk> chunks_;       // this step's chunks
  std::vector<int64_t> step_ids_;   // their sequences' ids
  std::vector<Sequence*> samples_;  // the samples drawing from one logits row
  int64_t next_id_ = 1;             // sequences
  int64_t next_request_ = 1;        // requests
  std::vector<float> masked_;       // a logits row with the stop ids masked (min_tokens)
  std::vector<int32_t> order_;      // top log-probabilities scratch
  EngineStats stats_;
};

}  // namespace origami::serve
