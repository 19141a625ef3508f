#include "runtime/serve/api_server.h"

#include <algorithm>
#include <ctime>
#include <nlohmann/json.hpp>
#include <random>
#include <thread>
#include <utility>

#include "runtime/serve/detokenizer.h"

namespace origami::serve {
namespace {

using Clock = std::chrono::steady_clock;

double seconds_between(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

HttpResponse retry_later(int status, const std::string& message, const char* code) {
  HttpResponse r = error_response(status, message,
                                  status == 429 ? "rate_limit_error" : "server_error", {}, code);
  r.headers.emplace_back("Retry-After", "1");
  return r;
}

}  // namespace

// One HTTP request: its prompts × n choices and where their answer goes.
struct ApiServer::Call {
  Endpoint endpoint = Endpoint::completions;
  std::shared_ptr<ResponseStream> out;
  std::string id;
  int64_t created = 0;
  bool stream = false, include_usage = false, echo = false;
  int n = 1;
  int logprobs = -1;  // alternatives per token; -1: none
  std::vector<std::vector<int64_t>> prompts;
  std::vector<std::string> prompt_texts;  // echo
  std::vector<int64_t> engine_ids;        // per prompt, once in the engine

  struct ChoiceState {
    std::unique_ptr<Detokenizer> detok;
    std::string text;  // everything emitted (non-streamed answers)
    std::vector<TokenLogprob> logprobs;
    std::vector<TokenLogprob> prompt_logprobs;  // echo: sent with the first piece
    int64_t tokens = 0;
    bool done = false, opened = false;
    ChoiceFinish finish = ChoiceFinish::none;
    Clock::time_point last_token;
    int64_t text_offset = 0;  // completions logprobs: characters emitted so far
  };
  std::vector<ChoiceState> choices;
  int remaining = 0;  // choices not done

  Clock::time_point arrival = Clock::now();
  bool first_token_seen = false, scheduled = false;
  bool ended = false;         // answered (or the client left) and counted out of in_flight_
  bool client_gone = false;   // its connection closed: nothing more is written
  std::string abort_message;  // why the server stopped it (draining); empty: not stopped
};

ApiServer::ApiServer(ApiServerOptions options, const Tokenizer& tokenizer)
    : opt_(std::move(options)), tok_(tokenizer), http_(opt_.http) {
  created_ = int64_t(std::time(nullptr));
  http_.route(
      "POST", "/v1/completions",
      [this](const HttpRequest& r, std::shared_ptr<ResponseStream> o) { completions(r, o); });
  http_.route("POST", "/v1/chat/completions",
              [this](const HttpRequest& r, std::shared_ptr<ResponseStream> o) { chat(r, o); });
  http_.route("GET", "/v1/models",
              [this](const HttpRequest& r, std::shared_ptr<ResponseStream> o) { models(r, o); });
  http_.route("GET", "/metrics",
              [this](const HttpRequest& r, std::shared_ptr<ResponseStream> o) { metrics(r, o); });
  http_.route(
      "GET", "/health",
      [this](const HttpRequest& r, std::shared_ptr<ResponseStream> o) { health(r, o); },
      Auth::open);
}

ApiServer::~ApiServer() {
  http_.stop(std::chrono::milliseconds(0));
}

void ApiServer::start() {
  http_.start();
}

void ApiServer::attach(Engine& engine) {
  engine_ = &engine;
  counted_ = engine.stats();  // the metrics count from here (not a warm-up before)
  ready_ = true;
}

// ---- routes -----------------------------------------------------------------------------------

void ApiServer::health(const HttpRequest&, std::shared_ptr<ResponseStream> out) {
  HttpResponse r;
  r.content_type = "application/json";
  if (dead_) {
    r.status = 503;
    r.body = R"({"status":"engine failed"})";
  } else if (!ready_) {
    r.status = 503;
    r.body = R"({"status":"loading"})";
  } else if (draining_) {
    r.status = 503;
    r.body = R"({"status":"draining"})";
  } else {
    r.body = R"({"status":"ok"})";
  }
  out->respond(std::move(r));
}

void ApiServer::models(const HttpRequest&, std::shared_ptr<ResponseStream> out) {
  HttpResponse r;
  r.body = encode_model_list(opt_.model, created_);
  out->respond(std::move(r));
}

void ApiServer::metrics(const HttpRequest&, std::shared_ptr<ResponseStream> out) {
  HttpResponse r;
  r.content_type = "text/plain; version=0.0.4; charset=utf-8";
  r.body = metrics_.render(opt_.model.name);
  out->respond(std::move(r));
}

namespace {

// The engine's request for one prompt of a call.
RequestParams engine_params(const std::vector<int64_t>& prompt, const RequestSampling& s,
                            int64_t max_tokens, int n, int logprobs,
                            const std::vector<int64_t>& stop_ids) {
  RequestParams p;
  p.prompt = prompt;
  p.max_tokens = max_tokens;
  p.n = n;
  p.logprobs = logprobs;
  p.min_tokens = s.min_tokens;
  if (!s.ignore_eos) p.stop_ids = stop_ids;
  p.sampling.temperature = s.temperature;
  p.sampling.top_p = s.top_p;
  p.sampling.top_k = s.top_k;
  p.sampling.repetition_penalty = s.repetition_penalty;
  p.sampling.presence_penalty = s.presence_penalty;
  p.sampling.frequency_penalty = s.frequency_penalty;
  // Without a seed every request draws differently; with one, the same request draws the same.
  p.sampling.seed = s.seed ? *s.seed : std::random_device{}();
  return p;
}

}  // namespace

std::shared_ptr<ApiServer::Call> ApiServer::new_call(Endpoint endpoint,
                                                     std::shared_ptr<ResponseStream> out,
                                                     bool stream, bool include_usage, int64_t n,
                                                     int logprobs) {
  auto call = std::make_shared<Call>();
  call->endpoint = endpoint;
  call->out = std::move(out);
  call->id = new_response_id(endpoint);
  call->created = int64_t(std::time(nullptr));
  call->stream = stream;
  call->include_usage = include_usage;
  call->n = int(n);
  call->logprobs = logprobs;
  return call;
}

void ApiServer::completions(const HttpRequest& req, std::shared_ptr<ResponseStream> out) {
  const CompletionRequest r = decode_completion_request(req.body, opt_.model);
  auto call = new_call(Endpoint::completions, out, r.stream, r.include_usage, r.sampling.n,
                       r.logprobs ? *r.logprobs : -1);
  call->echo = r.echo;
  std::vector<Submission> subs;
  for (size_t i = 0; i < r.prompts.size(); ++i) {
    std::vector<int64_t> ids;
    std::string text;
    if (const auto* t = std::get_if<std::string>(&r.prompts[i])) {
      for (TokenId id : tok_.encode(*t, /*add_special=*/true)) ids.push_back(id);
      text = *t;
    } else {
      for (int32_t id : std::get<std::vector<int32_t>>(r.prompts[i])) ids.push_back(id);
      std::vector<TokenId> known;
      for (int64_t id : ids)
        if (id < tok_.vocab_size()) known.push_back(TokenId(id));
      text = tok_.decode(known);
    }
    const int64_t max_tokens = check_prompt_fits(ids.size(), r.sampling, opt_.model, "prompt");
    Submission s;
    s.prompt = int(i);
    s.params = engine_params(ids, r.sampling, max_tokens, call->n, call->logprobs, opt_.stop_ids);
    s.params.prompt_logprobs = r.echo && call->logprobs >= 0;
    subs.push_back(std::move(s));
    call->prompts.push_back(std::move(ids));
    call->prompt_texts.push_back(std::move(text));
  }
  for (size_t i = 0; i < call->prompts.size(); ++i)
    for (int k = 0; k < call->n; ++k) {
      Call::ChoiceState c;
      c.detok = std::make_unique<Detokenizer>(tok_, call->prompts[i], r.sampling.stop);
      call->choices.push_back(std::move(c));
    }
  submit(std::move(call), std::move(subs));
}

void ApiServer::chat(const HttpRequest& req, std::shared_ptr<ResponseStream> out) {
  const ChatCompletionRequest r = decode_chat_request(req.body, opt_.model);
  if (!opt_.chat)
    throw ProtocolError(400,
                        "this model has no chat template (" + opt_.no_chat_template_reason +
                            "): use /v1/completions, or start the server with "
                            "--chat-template FILE",
                        "messages");
  nlohmann::ordered_json messages = nlohmann::ordered_json::array();
  for (const ChatMessage& m : r.messages) {
    nlohmann::ordered_json j = {{"role", m.role}, {"content", m.content}};
    if (!m.name.empty()) j["name"] = m.name;
    if (!m.tool_call_id.empty()) j["tool_call_id"] = m.tool_call_id;
    messages.push_back(std::move(j));
  }
  std::string text;
  try {
    text = opt_.chat->render(messages, /*add_generation_prompt=*/true);
  } catch (const TemplateError& e) {
    throw ProtocolError(400, std::string("the chat template refused the messages: ") + e.what(),
                        "messages");
  }
  // The template writes the special tokens itself (as transformers' apply_chat_template).
  std::vector<int64_t> ids;
  for (TokenId id : tok_.encode(text, /*add_special=*/false)) ids.push_back(id);
  const int64_t max_tokens = check_prompt_fits(ids.size(), r.sampling, opt_.model, "messages");
  auto call = new_call(Endpoint::chat, out, r.stream, r.include_usage, r.sampling.n,
                       r.logprobs ? r.top_logprobs : -1);
  Submission s;
  s.params = engine_params(ids, r.sampling, max_tokens, call->n, call->logprobs, opt_.stop_ids);
  call->prompts.push_back(ids);
  call->prompt_texts.push_back(text);
  for (int k = 0; k < call->n; ++k) {
    Call::ChoiceState c;
    c.detok = std::make_unique<Detokenizer>(tok_, ids, r.sampling.stop);
    call->choices.push_back(std::move(c));
  }
  std::vector<Submission> subs;
  subs.push_back(std::move(s));
  submit(std::move(call), std::move(subs));
}

// ---- admission and the inbox ------------------------------------------------------------------

void ApiServer::submit(std::shared_ptr<Call> call, std::vector<Submission> subs) {
  if (dead_ || !ready_ || draining_) {
    metrics_.count_rejected(dead_ ? "engine_failed" : ready_ ? "draining" : "loading");
    call->out->respond(retry_later(503,
                                   dead_ ? "the engine has failed; the server is ending"
                                   : !ready_
                                       ? "the model is still loading; retry shortly"
                                       : "the server is shutting down and takes no new requests",
                                   "unavailable"));
    return;
  }
  // Admission: one atomic step, so exactly max_queue requests are held at most.
  int64_t held = in_flight_.load();
  do {
    if (held >= opt_.max_queue) {
      metrics_.count_rejected("queue_full");
      call->out->respond(retry_later(429,
                                     "the server holds " + std::to_string(held) +
                                         " requests, its limit (--max-queue " +
                                         std::to_string(opt_.max_queue) + "): retry later",
                                     "queue_full"));
      return;
    }
  } while (!in_flight_.compare_exchange_weak(held, held + 1));
  call->remaining = int(call->choices.size());
  call->engine_ids.assign(call->prompts.size(), -1);
  for (Submission& s : subs) {
    s.call = call;
    Call* raw = call.get();
    s.params.on_scheduled = [this, raw] {
      if (raw->scheduled) return;
      raw->scheduled = true;
      metrics_.observe_queue_time(seconds_between(raw->arrival, Clock::now()));
    };
  }
  std::weak_ptr<Call> weak = call;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    for (Submission& s : subs) inbox_.push_back(std::move(s));
  }
  // A client that leaves aborts its request at the next step (its blocks are freed).
  call->out->on_close([this, weak] {
    if (auto c = weak.lock()) {
      std::lock_guard<std::mutex> lock(mutex_);
      abort_inbox_.push_back(std::move(c));
    }
    wake_.notify_one();
  });
  wake_.notify_one();
}

void ApiServer::take_inbox() {
  std::vector<Submission> subs;
  std::vector<std::shared_ptr<Call>> aborts;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    subs.swap(inbox_);
    aborts.swap(abort_inbox_);
  }
  for (Submission& s : subs) {
    Call& call = *s.call;
    if (call.ended) continue;
    const int prompt = s.prompt;
    std::shared_ptr<Call> keep = s.call;
    try {
      const int64_t id = engine_->add_request(
          std::move(s.params),
          [this, keep, prompt](const TokenEvent& e) { on_event(*keep, prompt, e); });
      call.engine_ids[size_t(prompt)] = id;
      if (std::find(live_.begin(), live_.end(), keep) == live_.end()) live_.push_back(keep);
    } catch (const Error& e) {
      // The engine refused it (its limits): a 400, and the call's other prompts end.
      for (int64_t id : call.engine_ids)
        if (id >= 0) engine_->abort(id);
      if (!call.ended) {
        call.ended = true;
        --in_flight_;
        metrics_.count_rejected("bad_request");
        call.out->respond(error_response(ProtocolError(400, e.what(), "prompt")));
      }
    }
  }
  for (const std::shared_ptr<Call>& c : aborts) {
    c->client_gone = true;
    for (int64_t id : c->engine_ids)
      if (id >= 0) engine_->abort(id);
  }
}

// ---- answers ----------------------------------------------------------------------------------

Response ApiServer::response_of(const Call& call) const {
  Response r;
  r.endpoint = call.endpoint;
  r.id = call.id;
  r.created = call.created;
  r.model = opt_.model.name;
  return r;
}

std::string ApiServer::token_text(int64_t id) const {
  const TokenId one[1] = {TokenId(id)};
  return id < tok_.vocab_size() ? tok_.decode(one) : std::string();
}

void ApiServer::on_event(Call& call, int prompt, const TokenEvent& e) {
  const int index = prompt * call.n + e.sample;
  Call::ChoiceState& c = call.choices[size_t(index)];
  if (c.done) return;
  if (e.prompt) {  // echo: a prompt token's log-probability, kept for the first piece
    TokenLogprob t;
    t.token = token_text(e.token);
    t.logprob = e.logprob;
    for (const auto& [id, value] : e.top) t.top.emplace_back(token_text(id), value);
    c.prompt_logprobs.push_back(std::move(t));
    return;
  }
  const auto now = Clock::now();
  std::string piece;
  std::optional<TokenLogprob> lp;
  const bool eos = e.reason == FinishReason::stop;  // the engine stops only on its stop ids
  if (e.token >= 0) {
    ++c.tokens;
    if (!call.first_token_seen) {
      call.first_token_seen = true;
      metrics_.observe_ttft(seconds_between(call.arrival, now));
    } else if (c.tokens > 1) {
      metrics_.observe_itl(seconds_between(c.last_token, now));
    }
    c.last_token = now;
    if (!eos) piece = c.detok->add(e.token);
    if (call.logprobs >= 0 && !c.detok->stopped()) {
      TokenLogprob t;
      t.token = token_text(e.token);
      t.logprob = e.logprob;
      for (const auto& [id, value] : e.top) t.top.emplace_back(token_text(id), value);
      lp = std::move(t);
    }
  }
  ChoiceFinish finish = ChoiceFinish::none;
  if (c.detok->stopped()) {
    finish = ChoiceFinish::stop;
    if (e.reason == FinishReason::none)
      stop_string_aborts_.emplace_back(call.engine_ids[size_t(prompt)], e.sample);
  } else if (e.reason == FinishReason::abort) {
    finish = ChoiceFinish::none;  // stopped by the server or the client: no finish reason
  } else if (e.reason != FinishReason::none) {
    piece += c.detok->finish();
    finish = e.reason == FinishReason::length ? ChoiceFinish::length : ChoiceFinish::stop;
  }
  const bool aborted = e.reason == FinishReason::abort && !c.detok->stopped();

  // Echo: the prompt's text (and its tokens' log-probabilities) opens the choice's text.
  std::vector<TokenLogprob> entries;
  if (call.echo && !c.opened) {
    piece = call.prompt_texts[size_t(prompt)] + piece;
    entries = std::move(c.prompt_logprobs);
    if (lp) lp->text_offset = utf8_length(call.prompt_texts[size_t(prompt)]);
  }
  if (lp) entries.push_back(std::move(*lp));
  if (!call.stream) {
    c.text += piece;
    for (TokenLogprob& t : entries) c.logprobs.push_back(std::move(t));
  } else if (!call.client_gone && !aborted &&
             (!piece.empty() || !entries.empty() || finish != ChoiceFinish::none || !c.opened)) {
    Response chunk = response_of(call);
    Choice ch;
    ch.index = index;
    ch.text = piece;
    ch.finish = finish;
    ch.first_delta = !c.opened;
    if (call.logprobs >= 0) {
      ch.text_offset = c.text_offset;
      ch.logprobs = std::move(entries);
    }
    chunk.choices.push_back(std::move(ch));
    call.out->write(sse_event(encode_chunk(chunk)));
  }
  c.opened = true;
  c.text_offset += utf8_length(piece);
  if (finish != ChoiceFinish::none || aborted) finish_choice(call, index, finish);
}

void ApiServer::finish_choice(Call& call, int choice, ChoiceFinish reason) {
  Call::ChoiceState& c = call.choices[size_t(choice)];
  c.done = true;
  c.finish = reason;
  metrics_.count_finished(reason == ChoiceFinish::stop     ? RequestOutcome::kStop
                          : reason == ChoiceFinish::length ? RequestOutcome::kLength
                                                           : RequestOutcome::kAbort);
  if (--call.remaining == 0) end_call(call);
}

void ApiServer::end_call(Call& call) {
  if (call.ended) return;
  call.ended = true;
  int64_t prompt_tokens = 0, completion_tokens = 0;
  for (const auto& p : call.prompts) prompt_tokens += int64_t(p.size());
  for (const auto& c : call.choices) completion_tokens += c.tokens;
  metrics_.observe_e2e(seconds_between(call.arrival, Clock::now()));
  metrics_.observe_request_tokens(prompt_tokens, completion_tokens);
  const bool aborted = std::any_of(call.choices.begin(), call.choices.end(),
                                   [](const auto& c) { return c.finish == ChoiceFinish::none; });
  if (!call.client_gone) {
    if (aborted) {
      const std::string why =
          call.abort_message.empty() ? "the request was stopped by the server" : call.abort_message;
      if (call.stream) {
        call.out->write(sse_event(encode_error(why, "server_error", {}, "aborted")));
        call.out->write(std::string(kSseDone));
        call.out->finish();
      } else {
        call.out->respond(error_response(503, why, "server_error", {}, "aborted"));
      }
    } else if (call.stream) {
      if (call.include_usage) {
        Response u = response_of(call);
        u.usage = Usage{prompt_tokens, completion_tokens};
        call.out->write(sse_event(encode_chunk(u)));
      }
      call.out->write(std::string(kSseDone));
      call.out->finish();
    } else {
      Response r = response_of(call);
      r.usage = Usage{prompt_tokens, completion_tokens};
      for (size_t i = 0; i < call.choices.size(); ++i) {
        Call::ChoiceState& c = call.choices[i];
        Choice ch;
        ch.index = int64_t(i);
        ch.text = std::move(c.text);
        ch.finish = c.finish;
        if (call.logprobs >= 0) ch.logprobs = std::move(c.logprobs);
        r.choices.push_back(std::move(ch));
      }
      HttpResponse h;
      h.body = encode_response(r);
      call.out->respond(std::move(h));
    }
  }
  --in_flight_;
}

// ---- the engine loop --------------------------------------------------------------------------

void ApiServer::update_gauges() {
  const EngineStats s = engine_->stats();
  EngineGauges g;
  g.running = s.running;
  g.waiting = s.waiting;
  g.kv_cache_usage =
      s.kv_blocks_total > 0 ? double(s.kv_blocks_used) / double(s.kv_blocks_total) : 0.0;
  metrics_.set_gauges(g);
  // The engine's totals since start, as increments of the counters.
  CounterDeltas d;
  d.prompt_tokens = s.prompt_tokens - counted_.prompt_tokens;
  d.generation_tokens = s.generated_tokens - counted_.generated_tokens;
  d.preemptions = s.preemptions - counted_.preemptions;
  d.prefix_cache_queries = s.prefix_queried_tokens - counted_.prefix_queried_tokens;
  d.prefix_cache_hits = s.prefix_hit_tokens - counted_.prefix_hit_tokens;
  metrics_.add_counters(d);
  counted_ = s;
}

void ApiServer::run_engine() {
  ORIGAMI_CHECK(engine_ != nullptr, "ApiServer::run_engine: attach() an engine first");
  auto last_work = Clock::now();
  for (;;) {
    {
      std::unique_lock<std::mutex> lock(mutex_);
      wake_.wait_for(lock, std::chrono::milliseconds(50), [&] {
        return stop_ || !inbox_.empty() || !abort_inbox_.empty() || engine_->has_work();
      });
      if (stop_) break;
    }
    take_inbox();
    if (abort_all_.exchange(false)) {
      for (const std::shared_ptr<Call>& c : live_) {
        if (c->ended) continue;
        c->abort_message = drain_message_;
        for (int64_t id : c->engine_ids)
          if (id >= 0) engine_->abort(id);
      }
    }
    try {
      if (engine_->has_work()) {
        last_work = Clock::now();
        engine_->step();
      } else if (Clock::now() - last_work > opt_.idle_interval) {
        engine_->idle();
        last_work = Clock::now();
      }
    } catch (const std::exception& e) {
      dead_ = true;
      const std::string why = std::string("the engine failed: ") + e.what();
      for (const std::shared_ptr<Call>& c : live_) {
        if (c->ended || c->client_gone) continue;
        c->ended = true;
        --in_flight_;
        if (c->stream) {
          c->out->write(sse_event(encode_error(why, "server_error", {}, "engine_failed")));
          c->out->finish();
        } else {
          c->out->respond(error_response(500, why, "server_error", {}, "engine_failed"));
        }
      }
      live_.clear();
      throw;
    }
    {
      for (const auto& [id, sample] : stop_string_aborts_) engine_->abort(id, sample);
      stop_string_aborts_.clear();
    }
    live_.erase(std::remove_if(live_.begin(), live_.end(),
                               [](const std::shared_ptr<Call>& c) { return c->ended; }),
                live_.end());
    update_gauges();
  }
}

void ApiServer::stop_engine() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stop_ = true;
  }
  wake_.notify_one();
}

int64_t ApiServer::drain(std::chrono::milliseconds timeout) {
  draining_ = true;
  const auto deadline = Clock::now() + timeout;
  while (in_flight_.load() > 0 && Clock::now() < deadline && !dead_)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  const int64_t aborted = in_flight_.load();
  if (aborted > 0 && !dead_) {
    drain_message_ =
        "the server is shutting down: the request was stopped when the drain "
        "timeout ran out";
    abort_all_ = true;
    wake_.notify_one();
    const auto until = Clock::now() + std::chrono::seconds(5);
    while (in_flight_.load() > 0 && Clock::now() < until && !dead_)
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  http_.stop(std::chrono::milliseconds(1000));
  return aborted;
}

}  // namespace origami::serve
