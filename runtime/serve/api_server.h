// The OpenAI-compatible server of `origami serve`: the HTTP front end (http_server.h) and the
// protocol (protocol.h) in front of one serving Engine (engine.h), with tokenization, the chat
// template, incremental detokenization with stop strings, metrics, admission and draining.
//
// Threads: the HTTP threads decode, validate and tokenize a request, then hand it to the engine
// thread through an inbox; only the engine thread touches the Engine (run_engine()). The engine's
// callbacks detokenize and write the answer (streamed as server-sent events, or whole at the
// end) through the request's ResponseStream. A client that goes away aborts its request at the
// next step, which frees its KV blocks.
//
// Routes: POST /v1/completions, POST /v1/chat/completions, GET /v1/models, GET /health (no API
// key; 503 while the model loads, when the engine has died or while draining), GET /metrics.
//
// Admission: at most `max_queue` requests are held at once (running and waiting); one more gets
// 429 with Retry-After at once. Draining (drain()): new requests get 503, those in flight finish
// until the deadline, then are aborted.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "runtime/chat_template.h"
#include "runtime/serve/engine.h"
#include "runtime/serve/http_server.h"
#include "runtime/serve/metrics.h"
#include "runtime/serve/protocol.h"
#include "runtime/tokenizer.h"

namespace origami::serve {

struct ApiServerOptions {
  HttpServerOptions http;
  ModelLimits model;                    // name, vocabulary and context of the served model
  int64_t max_queue = 1024;             // requests held at once (running and waiting)
  std::vector<int64_t> stop_ids;        // end-of-sequence ids (tokenizer and generation config)
  std::optional<ChatTemplate> chat;     // none: /v1/chat/completions answers 400
  std::string no_chat_template_reason;  // why there is none (said in that 400)
  // With nothing to run for this long, the engine's idle() is called (multi-rank keep-alive).
  std::chrono::milliseconds idle_interval{5000};
};

class ApiServer {
 public:
  ApiServer(ApiServerOptions options, const Tokenizer& tokenizer);
  ~ApiServer();
  ApiServer(const ApiServer&) = delete;
  ApiServer& operator=(const ApiServer&) = delete;

  // Starts the HTTP front end; /health answers 503 until attach().
  void start();
  uint16_t port() const { return http_.port(); }
  // The engine is ready: requests are accepted from now on.
  void attach(Engine& engine);
  // The engine loop, on the calling thread, until stop_engine() or an error in a step (the
  // engine is then dead: /health 503, requests in flight get 500 and new ones 503; the error
  // is rethrown).
  void run_engine();
  // Graceful stop: refuse new requests, let those in flight finish for up to `timeout`, abort
  // the rest, close the HTTP server. Returns the requests that were aborted. Call from a thread
  // other than the engine's while run_engine() runs.
  int64_t drain(std::chrono::milliseconds timeout);
  // Makes run_engine() return after its current step.
  void stop_engine();

  // Requests held now (admitted, not yet answered in full).
  int64_t in_flight() const { return in_flight_.load(); }
  bool engine_dead() const { return dead_.load(); }

  struct Call;  // one HTTP request: its choices and where its answer goes

 private:
  struct Submission {
    std::shared_ptr<Call> call;
    int prompt = 0;  // which of the call's prompts
    RequestParams params;
  };

  std::shared_ptr<Call> new_call(Endpoint endpoint, std::shared_ptr<ResponseStream> out,
                                 bool stream, bool include_usage, int64_t n, int logprobs);
  void completions(const HttpRequest& req, std::shared_ptr<ResponseStream> out);
  void chat(const HttpRequest& req, std::shared_ptr<ResponseStream> out);
  void health(const HttpRequest& req, std::shared_ptr<ResponseStream> out);
  void models(const HttpRequest& req, std::shared_ptr<ResponseStream> out);
  void metrics(const HttpRequest& req, std::shared_ptr<ResponseStream> out);

  // Admission (429/503), then the call's engine requests go to the inbox.
  void submit(std::shared_ptr<Call> call, std::vector<Submission> subs);
  // Engine thread: the inbox's requests and aborts into the engine.
  void take_inbox();
  std::string token_text(int64_t id) const;  // one token's text (empty outside the vocabulary)
  // Engine thread: a token event of one of the call's choices.
  void on_event(Call& call, int prompt, const TokenEvent& e);
  void finish_choice(Call& call, int choice, ChoiceFinish reason);
  // A response (whole or chunk) of the call, with no choices yet.
  Response response_of(const Call& call) const;
  void end_call(Call& call);
  void update_gauges();

  ApiServerOptions opt_;
  const Tokenizer& tok_;
  HttpServer http_;
  Metrics metrics_;
  Engine* engine_ = nullptr;
  int64_t created_ = 0;  // Unix seconds at start (the model list)

  std::mutex mutex_;  // guards the inbox
  std::condition_variable wake_;
  std::vector<Submission> inbox_;
  std::vector<std::shared_ptr<Call>> abort_inbox_;  // calls whose client went away
  bool stop_ = false;

  // Engine thread only.
  std::vector<std::pair<int64_t, int>> stop_string_aborts_;  // (engine request, sample)
  std::vector<std::shared_ptr<Call>> live_;                  // calls in the engine
  EngineStats counted_;  // engine totals already added to the metrics' counters

  std::atomic<int64_t> in_flight_{0};
  std::atomic<bool> ready_{false}, dead_{false}, draining_{false};
  std::atomic<bool> abort_all_{false};  // drain(): the engine thread aborts every call
  std::string drain_message_;           // written before abort_all_ is set
};

}  // namespace origami::serve
