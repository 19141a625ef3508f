#include "runtime/serve/protocol.h"

#include <cmath>
#include <limits>
#include <random>

#include <nlohmann/json.hpp>

namespace origami::serve {

using json = nlohmann::json;
using ordered_json = nlohmann::ordered_json;
using detail::concat;

namespace {

// JSON text, compact; invalid UTF-8 (a model's partial characters) becomes U+FFFD, never throws.
template <typename Json>
std::string dump(const Json& j) {
  return j.dump(-1, ' ', false, Json::error_handler_t::replace);
}

// ---- decoding helpers -------------------------------------------------------------------------

[[noreturn]] void refuse(const std::string& param, const std::string& message,
                         const std::string& code = {}) {
  throw ProtocolError(400, message, param, code);
}

[[noreturn]] void unsupported(const std::string& param, const std::string& what = {}) {
  refuse(param, "'" + param + "'" + what + " is not supported by this server",
         "unsupported_parameter");
}

// A value as it appears in a message: numbers as written, anything else by its type.
std::string shown(const json& v) {
  if (v.is_number() || v.is_boolean()) return dump(v);
  if (v.is_string()) return "a string";
  if (v.is_array()) return "an array";
  if (v.is_object()) return "an object";
  return "null";
}

[[noreturn]] void wrong_type(const std::string& param, const char* expected, const json& v) {
  refuse(param, "'" + param + "' must be " + expected + ", got " + shown(v));
}

// The field `key` of an object, or nullptr when it is absent or null.
const json* field(const json& object, const char* key) {
  const auto it = object.find(key);
  return it == object.end() || it->is_null() ? nullptr : &*it;
}

int64_t as_int(const json& v, const std::string& param) {
  if (!v.is_number_integer()) wrong_type(param, "an integer", v);
  if (v.is_number_unsigned() && v.get<uint64_t>() > uint64_t(std::numeric_limits<int64_t>::max()))
    refuse(param, "'" + param + "' is out of range, got " + dump(v));
  return v.get<int64_t>();
}

double as_number(const json& v, const std::string& param) {
  if (!v.is_number()) wrong_type(param, "a number", v);
  const double d = v.get<double>();
  if (!std::isfinite(d)) refuse(param, "'" + param + "' must be a finite number");
  return d;
}

std::optional<int64_t> get_int(const json& o, const char* key, const std::string& param) {
  const json* v = field(o, key);
  return v ? std::optional(as_int(*v, param)) : std::nullopt;
}
std::optional<int64_t> get_int(const json& o, const char* key) {
  return get_int(o, key, key);
}

std::optional<double> get_number(const json& o, const char* key) {
  const json* v = field(o, key);
  return v ? std::optional(as_number(*v, key)) : std::nullopt;
}

std::optional<bool> get_bool(const json& o, const char* key, const std::string& param) {
  const json* v = field(o, key);
  if (!v) return std::nullopt;
  if (!v->is_boolean()) wrong_type(param, "a boolean", *v);
  return v->get<bool>();
}
std::optional<bool> get_bool(const json& o, const char* key) {
  return get_bool(o, key, key);
}

std::optional<std::string> get_string(const json& o, const char* key, const std::string& param) {
  const json* v = field(o, key);
  if (!v) return std::nullopt;
  if (!v->is_string()) wrong_type(param, "a string", *v);
  return v->get<std::string>();
}

std::string number_text(double d) {
  return dump(json(d));
}

void check_between(double v, double lo, double hi, const char* param) {
  if (v < lo || v > hi)
    refuse(param, concat("'", param, "' must be between ", number_text(lo), " and ",
                         number_text(hi), ", got ", number_text(v)));
}

void check_int_between(int64_t v, int64_t lo, int64_t hi, const std::string& param) {
  if (v < lo || v > hi)
    refuse(param, concat("'", param, "' must be between ", lo, " and ", hi, ", got ", v));
}

// Parses the body as a JSON object, refusing nesting past kMaxJsonDepth.
json parse_body(std::string_view body) {
  const auto depth_limit = [](int depth, json::parse_event_t event, json&) {
    if ((event == json::parse_event_t::object_start || event == json::parse_event_t::array_start) &&
        depth > kMaxJsonDepth)
      throw ProtocolError(400,
                          concat("the request body nests deeper than ", kMaxJsonDepth, " levels"));
    return true;
  };
  json j;
  try {
    j = json::parse(body.begin(), body.end(), depth_limit);
  } catch (const json::exception& e) {
    throw ProtocolError(400, concat("the request body is not valid JSON (", e.what(), ")"));
  }
  if (!j.is_object())
    throw ProtocolError(400, "the request body must be a JSON object, got " + shown(j));
  return j;
}

std::string decode_model(const json& body, const ModelLimits& model) {
  const auto name = get_string(body, "model", "model");
  if (name && *name != model.name)
    throw ProtocolError(404,
                        concat("The model '", *name, "' does not exist: this server serves '",
                               model.name, "' (see GET /v1/models)"),
                        "model", "model_not_found");
  return model.name;
}

// Fields whose meaning we cannot honour: refused rather than silently ignored.
void refuse_unsupported(const json& body, Endpoint endpoint) {
  if (const json* v = field(body, "logit_bias"); v && !(v->is_object() && v->empty()))
    unsupported("logit_bias");
  if (const json* v = field(body, "response_format")) {
    const json* type = v->is_object() ? field(*v, "type") : nullptr;
    if (!type || *type != "text")
      unsupported("response_format", " other than {\"type\": \"text\"}");
  }
  for (const char* key : {"guided_json", "guided_regex", "guided_choice", "guided_grammar",
                          "prompt_logprobs", "audio", "prediction", "web_search_options"})
    if (field(body, key)) unsupported(key);
  if (endpoint == Endpoint::completions) {
    if (const json* v = field(body, "suffix");
        v && !(v->is_string() && v->get_ref<const std::string&>().empty()))
      unsupported("suffix");
    return;
  }
  for (const char* key : {"tools", "functions"})
    if (const json* v = field(body, key); v && !(v->is_array() && v->empty())) unsupported(key);
  for (const char* key : {"tool_choice", "function_call"})
    if (const json* v = field(body, key); v && *v != "none" && *v != "auto")
      unsupported(key, " other than \"none\" or \"auto\"");
  if (const json* v = field(body, "modalities"); v && *v != json::array({"text"}))
    unsupported("modalities", " other than [\"text\"]");
  if (get_bool(body, "echo").value_or(false)) unsupported("echo", " for chat");
}

std::vector<std::string> decode_stop(const json& body) {
  const json* v = field(body, "stop");
  if (!v) return {};
  if (v->is_string()) {
    if (v->get_ref<const std::string&>().empty()) refuse("stop", "'stop' must not be empty");
    return {v->get<std::string>()};
  }
  if (!v->is_array()) wrong_type("stop", "a string or an array of strings", *v);
  if (v->size() > size_t(kMaxStops))
    refuse("stop", concat("'stop' may hold at most ", kMaxStops, " strings, got ", v->size()));
  std::vector<std::string> stops;
  for (size_t i = 0; i < v->size(); ++i) {
    const json& s = (*v)[i];
    const std::string param = concat("stop[", i, "]");
    if (!s.is_string()) wrong_type(param, "a string", s);
    if (s.get_ref<const std::string&>().empty())
      refuse(param, "'" + param + "' must not be empty: stop strings need at least one character");
    stops.push_back(s.get<std::string>());
  }
  return stops;
}

RequestSampling decode_sampling(const json& body, Endpoint endpoint) {
  RequestSampling s;
  const char* max_key = endpoint == Endpoint::chat && field(body, "max_completion_tokens")
                            ? "max_completion_tokens"
                            : "max_tokens";
  // Completions with echo may ask for no new token: the prompt alone (scored with logprobs).
  const bool echo = endpoint == Endpoint::completions && get_bool(body, "echo").value_or(false);
  if (const auto v = get_int(body, max_key)) {
    if (*v < (echo ? 0 : 1))
      refuse(max_key, concat("'", max_key, "' must be at least ", echo ? "0" : "1",
                             echo ? "" : " (0 only with 'echo': true)", ", got ", *v));
    s.max_tokens = *v;
  } else if (endpoint == Endpoint::completions) {
    s.max_tokens = 16;
  }
  if (const auto v = get_number(body, "temperature")) {
    check_between(*v, 0.0, 2.0, "temperature");
    s.temperature = *v;
  }
  if (const auto v = get_number(body, "top_p")) {
    if (!(*v > 0.0 && *v <= 1.0))
      refuse("top_p", "'top_p' must be greater than 0 and at most 1, got " + number_text(*v));
    s.top_p = *v;
  }
  if (const auto v = get_int(body, "top_k")) {
    if (*v < -1) refuse("top_k", concat("'top_k' must be -1 or 0 (off) or at least 1, got ", *v));
    s.top_k = *v < 0 ? 0 : *v;
  }
  if (const json* v = field(body, "seed")) {
    if (!v->is_number_integer()) wrong_type("seed", "an integer", *v);
    s.seed = v->is_number_unsigned() ? v->get<uint64_t>() : uint64_t(v->get<int64_t>());
  }
  s.stop = decode_stop(body);
  if (const auto v = get_int(body, "n")) {
    check_int_between(*v, 1, kMaxN, "n");
    s.n = *v;
  }
  for (const auto& [key, penalty] : {std::pair{"presence_penalty", &s.presence_penalty},
                                     std::pair{"frequency_penalty", &s.frequency_penalty}})
    if (const auto v = get_number(body, key)) {
      check_between(*v, -2.0, 2.0, key);
      *penalty = *v;
    }
  if (const auto v = get_number(body, "repetition_penalty")) {
    if (!(*v > 0.0))
      refuse("repetition_penalty",
             "'repetition_penalty' must be greater than 0 (1 is off), got " + number_text(*v));
    s.repetition_penalty = *v;
  }
  if (const auto v = get_int(body, "min_tokens")) {
    if (*v < 0) refuse("min_tokens", concat("'min_tokens' must be at least 0, got ", *v));
    if (s.max_tokens && *v > *s.max_tokens)
      refuse("min_tokens",
             concat("'min_tokens' (", *v, ") must not exceed 'max_tokens' (", *s.max_tokens, ")"));
    s.min_tokens = *v;
  }
  s.ignore_eos = get_bool(body, "ignore_eos").value_or(false);
  return s;
}

void decode_stream(const json& body, bool& stream, bool& include_usage) {
  stream = get_bool(body, "stream").value_or(false);
  const json* options = field(body, "stream_options");
  if (!options) return;
  if (!options->is_object()) wrong_type("stream_options", "an object", *options);
  if (!stream) refuse("stream_options", "'stream_options' is only allowed when 'stream' is true");
  include_usage =
      get_bool(*options, "include_usage", "stream_options.include_usage").value_or(false);
}

int decode_logprob_count(const json& body, const char* key) {
  const auto v = get_int(body, key);
  if (!v) return -1;
  check_int_between(*v, 0, kMaxLogprobs, key);
  return int(*v);
}

// An array of token ids, each in [0, vocab). `param` names the array.
std::vector<int32_t> decode_tokens(const json& array, const std::string& param,
                                   const ModelLimits& model) {
  if (array.empty()) refuse(param, "'" + param + "' must not be an empty array of token ids");
  std::vector<int32_t> tokens;
  tokens.reserve(array.size());
  for (size_t i = 0; i < array.size(); ++i) {
    const json& t = array[i];
    if (!t.is_number_integer()) wrong_type(concat(param, "[", i, "]"), "a token id", t);
    const bool negative = t.is_number_integer() && !t.is_number_unsigned() && t.get<int64_t>() < 0;
    if (negative || t.get<uint64_t>() >= uint64_t(model.vocab))
      refuse(concat(param, "[", i, "]"),
             concat("token id ", dump(t), " in '", param, "' is outside the vocabulary [0, ",
                    model.vocab, ")"));
    tokens.push_back(int32_t(t.get<int64_t>()));
  }
  return tokens;
}

std::vector<Prompt> decode_prompts(const json& body, const ModelLimits& model) {
  const json* p = field(body, "prompt");
  if (!p) refuse("prompt", "'prompt' is required");
  if (p->is_string()) return {p->get<std::string>()};
  if (!p->is_array())
    wrong_type("prompt", "a string, an array of strings or an array of token ids", *p);
  if (p->empty()) refuse("prompt", "'prompt' must not be an empty array");
  const json& first = p->front();
  if (first.is_number()) return {decode_tokens(*p, "prompt", model)};
  if (p->size() > size_t(kMaxChoices))
    refuse("prompt",
           concat("'prompt' may hold at most ", kMaxChoices, " prompts, got ", p->size()));
  std::vector<Prompt> prompts;
  for (size_t i = 0; i < p->size(); ++i) {
    const json& e = (*p)[i];
    const std::string param = concat("prompt[", i, "]");
    if (first.is_string()) {
      if (!e.is_string()) wrong_type(param, "a string, as the first prompt is", e);
      prompts.emplace_back(e.get<std::string>());
    } else if (first.is_array()) {
      if (!e.is_array()) wrong_type(param, "an array of token ids, as the first prompt is", e);
      prompts.emplace_back(decode_tokens(e, param, model));
    } else {
      wrong_type(param, "a string, a token id or an array of token ids", e);
    }
  }
  return prompts;
}

// One part of a message's content: {"type": "text", "text": "..."}.
std::string decode_content_part(const json& part, const std::string& param) {
  if (!part.is_object()) wrong_type(param, "an object", part);
  const auto type = get_string(part, "type", param + ".type");
  if (!type) refuse(param + ".type", "'" + param + ".type' is required");
  if (*type != "text")
    refuse(param + ".type",
           concat("content parts of type '", *type, "' are not supported: only 'text'"),
           "unsupported_parameter");
  const auto text = get_string(part, "text", param + ".text");
  if (!text) refuse(param + ".text", "'" + param + ".text' is required");
  return *text;
}

ChatMessage decode_message(const json& m, const std::string& at) {
  if (!m.is_object()) wrong_type(at, "an object", m);
  ChatMessage message;
  const auto role = get_string(m, "role", at + ".role");
  if (!role) refuse(at + ".role", "'" + at + ".role' is required");
  if (*role == "developer") {
    message.role = "system";
  } else if (*role == "system" || *role == "user" || *role == "assistant" || *role == "tool") {
    message.role = *role;
  } else {
    refuse(at + ".role", concat("unknown role '", *role, "' in '", at,
                                ".role': use system, developer, user, assistant or tool"));
  }
  const std::string param = at + ".content";
  const json* content = field(m, "content");
  if (!content) {
    if (message.role != "assistant") refuse(param, "'" + param + "' is required");
  } else if (content->is_string()) {
    message.content = content->get<std::string>();
  } else if (content->is_array()) {
    for (size_t k = 0; k < content->size(); ++k) {
      if (k > 0) message.content += '\n';
      message.content += decode_content_part((*content)[k], concat(param, "[", k, "]"));
    }
  } else {
    wrong_type(param, "a string or an array of content parts", *content);
  }
  message.name = get_string(m, "name", at + ".name").value_or("");
  message.tool_call_id = get_string(m, "tool_call_id", at + ".tool_call_id").value_or("");
  if (const json* calls = field(m, "tool_calls"); calls && !(calls->is_array() && calls->empty()))
    unsupported(at + ".tool_calls");
  return message;
}

}  // namespace

int64_t utf8_length(std::string_view text) {
  int64_t n = 0;
  for (const unsigned char c : text) n += (c & 0xC0) != 0x80;
  return n;
}

namespace {

// ---- encoding helpers -------------------------------------------------------------------------

ordered_json finish_reason(ChoiceFinish f) {
  switch (f) {
    case ChoiceFinish::stop:
      return "stop";
    case ChoiceFinish::length:
      return "length";
    case ChoiceFinish::none:
      break;
  }
  return nullptr;
}

// −inf (a token the sampler could never pick) and NaN have no JSON form; OpenAI writes −9999.
double logprob_value(double lp) {
  return std::isfinite(lp) ? lp : -9999.0;
}

ordered_json token_bytes(const std::string& token) {
  ordered_json bytes = ordered_json::array();
  for (const unsigned char c : token) bytes.push_back(int(c));
  return bytes;
}

// Completions: {"tokens", "token_logprobs", "top_logprobs", "text_offset"}.
ordered_json completion_logprobs(const std::vector<TokenLogprob>& entries, int64_t offset) {
  ordered_json tokens = ordered_json::array(), logprobs = ordered_json::array(),
               tops = ordered_json::array(), offsets = ordered_json::array();
  for (const TokenLogprob& e : entries) {
    if (e.text_offset) offset = *e.text_offset;
    tokens.push_back(e.token);
    offsets.push_back(offset);
    offset += utf8_length(e.token);
    if (!e.logprob) {
      logprobs.push_back(nullptr);
      tops.push_back(nullptr);
      continue;
    }
    logprobs.push_back(logprob_value(*e.logprob));
    // Keys as they will be written (invalid UTF-8 replaced), so that two alternatives whose
    // texts both become U+FFFD keep one entry, the more likely.
    ordered_json top = ordered_json::object();
    for (const auto& [token, lp] : e.top)
      top.emplace(ordered_json::parse(dump(ordered_json(token))).get<std::string>(),
                  logprob_value(lp));  // first wins
    tops.push_back(std::move(top));
  }
  return {{"tokens", std::move(tokens)},
          {"token_logprobs", std::move(logprobs)},
          {"top_logprobs", std::move(tops)},
          {"text_offset", std::move(offsets)}};
}

// Chat: {"content": [{"token", "logprob", "bytes", "top_logprobs": [{"token", "logprob",
// "bytes"}]}]}.
ordered_json chat_logprobs(const std::vector<TokenLogprob>& entries) {
  ordered_json content = ordered_json::array();
  for (const TokenLogprob& e : entries) {
    ordered_json top = ordered_json::array();
    for (const auto& [token, lp] : e.top)
      top.push_back(
          {{"token", token}, {"logprob", logprob_value(lp)}, {"bytes", token_bytes(token)}});
    content.push_back({{"token", e.token},
                       {"logprob", logprob_value(e.logprob.value_or(0.0))},
                       {"bytes", token_bytes(e.token)},
                       {"top_logprobs", std::move(top)}});
  }
  return {{"content", std::move(content)}};
}

ordered_json logprobs_of(const Choice& c, Endpoint endpoint) {
  if (!c.logprobs) return nullptr;
  return endpoint == Endpoint::chat ? chat_logprobs(*c.logprobs)
                                    : completion_logprobs(*c.logprobs, c.text_offset);
}

ordered_json usage_of(const Usage& u) {
  return {{"prompt_tokens", u.prompt_tokens},
          {"completion_tokens", u.completion_tokens},
          {"total_tokens", u.prompt_tokens + u.completion_tokens}};
}

// The fields every response and chunk share; `choices` filled by `choice`.
template <typename ChoiceFn>
std::string encode(const Response& r, const char* object, ChoiceFn choice) {
  ordered_json choices = ordered_json::array();
  for (const Choice& c : r.choices) choices.push_back(choice(c));
  ordered_json j = {{"id", r.id},
                    {"object", object},
                    {"created", r.created},
                    {"model", r.model},
                    {"choices", std::move(choices)}};
  if (r.usage) j["usage"] = usage_of(*r.usage);
  return dump(j);
}

}  // namespace

// ---- errors -----------------------------------------------------------------------------------

ProtocolError::ProtocolError(int status, const std::string& message, std::string param,
                             std::string code, std::string type)
    : Error(message),
      status_(status),
      param_(std::move(param)),
      code_(std::move(code)),
      type_(std::move(type)) {}

std::string ProtocolError::json() const {
  return encode_error(what(), type_, param_, code_);
}

std::string encode_error(std::string_view message, std::string_view type, std::string_view param,
                         std::string_view code) {
  const auto or_null = [](std::string_view s) {
    return s.empty() ? ordered_json(nullptr) : ordered_json(s);
  };
  return dump(ordered_json{{"error",
                            {{"message", message},
                             {"type", type},
                             {"param", or_null(param)},
                             {"code", or_null(code)}}}});
}

// ---- requests ---------------------------------------------------------------------------------

namespace {

// Parses the body and decodes the fields both endpoints share; returns the JSON for the rest.
template <typename Request>
json decode_common(std::string_view body, const ModelLimits& model, Endpoint endpoint, Request& r) {
  json j = parse_body(body);
  r.model = decode_model(j, model);
  refuse_unsupported(j, endpoint);
  r.sampling = decode_sampling(j, endpoint);
  decode_stream(j, r.stream, r.include_usage);
  return j;
}

}  // namespace

CompletionRequest decode_completion_request(std::string_view body, const ModelLimits& model) {
  CompletionRequest r;
  const json j = decode_common(body, model, Endpoint::completions, r);
  r.prompts = decode_prompts(j, model);
  if (int64_t(r.prompts.size()) * r.sampling.n > kMaxChoices)
    refuse("n", concat("'n' (", r.sampling.n, ") × ", r.prompts.size(),
                       " prompts exceeds the limit of ", kMaxChoices, " choices per request"));
  if (const auto best_of = get_int(j, "best_of"); best_of && *best_of != r.sampling.n)
    unsupported("best_of", " other than 'n'");
  if (const int k = decode_logprob_count(j, "logprobs"); k >= 0) r.logprobs = k;
  r.echo = get_bool(j, "echo").value_or(false);
  for (const Prompt& p : r.prompts)
    if (const auto* tokens = std::get_if<std::vector<int32_t>>(&p))
      check_prompt_fits(tokens->size(), r.sampling, model, "prompt");
  return r;
}

ChatCompletionRequest decode_chat_request(std::string_view body, const ModelLimits& model) {
  ChatCompletionRequest r;
  const json j = decode_common(body, model, Endpoint::chat, r);
  const json* messages = field(j, "messages");
  if (!messages) refuse("messages", "'messages' is required");
  if (!messages->is_array()) wrong_type("messages", "an array of messages", *messages);
  if (messages->empty()) refuse("messages", "'messages' must hold at least one message");
  for (size_t i = 0; i < messages->size(); ++i)
    r.messages.push_back(decode_message((*messages)[i], concat("messages[", i, "]")));
  r.logprobs = get_bool(j, "logprobs").value_or(false);
  if (const int k = decode_logprob_count(j, "top_logprobs"); k >= 0) r.top_logprobs = k;
  if (r.top_logprobs > 0 && !r.logprobs)
    refuse("top_logprobs", "'top_logprobs' needs 'logprobs': true");
  return r;
}

int64_t check_prompt_fits(size_t prompt_tokens, const RequestSampling& sampling,
                          const ModelLimits& model, std::string_view param) {
  const std::string field_name(param);
  if (prompt_tokens == 0)
    throw ProtocolError(400, "the prompt is empty: it needs at least one token", field_name);
  if (prompt_tokens >= uint64_t(model.context))
    throw ProtocolError(400,
                        concat("the prompt has ", prompt_tokens, " tokens but the model's context",
                               " is ", model.context, " tokens: shorten the prompt"),
                        field_name, "context_length_exceeded");
  const int64_t room = model.context - int64_t(prompt_tokens);
  if (!sampling.max_tokens) {
    if (sampling.min_tokens > room)
      throw ProtocolError(400,
                          concat("'min_tokens' (", sampling.min_tokens, ") exceeds the ", room,
                                 " tokens left in the context after the prompt"),
                          "min_tokens", "context_length_exceeded");
    return room;
  }
  if (*sampling.max_tokens > room)
    throw ProtocolError(
        400,
        concat("this model's context is ", model.context, " tokens, but the request needs ",
               prompt_tokens, " (prompt) + ", *sampling.max_tokens,
               " (max_tokens): lower max_tokens or shorten the prompt"),
        "max_tokens", "context_length_exceeded");
  return *sampling.max_tokens;
}

// ---- responses --------------------------------------------------------------------------------

std::string new_response_id(Endpoint endpoint) {
  thread_local std::mt19937_64 rng{std::random_device{}()};
  static constexpr char kHex[] = "0123456789abcdef";
  std::string id = endpoint == Endpoint::chat ? "chatcmpl-" : "cmpl-";
  for (int i = 0; i < 24; ++i) id += kHex[rng() & 15];
  return id;
}

std::string encode_response(const Response& r) {
  if (r.endpoint == Endpoint::chat)
    return encode(r, "chat.completion", [](const Choice& c) {
      return ordered_json{{"index", c.index},
                          {"message", {{"role", "assistant"}, {"content", c.text}}},
                          {"logprobs", logprobs_of(c, Endpoint::chat)},
                          {"finish_reason", finish_reason(c.finish)}};
    });
  return encode(r, "text_completion", [](const Choice& c) {
    return ordered_json{{"index", c.index},
                        {"text", c.text},
                        {"logprobs", logprobs_of(c, Endpoint::completions)},
                        {"finish_reason", finish_reason(c.finish)}};
  });
}

std::string encode_chunk(const Response& r) {
  if (r.endpoint == Endpoint::completions) return encode_response(r);
  return encode(r, "chat.completion.chunk", [](const Choice& c) {
    ordered_json delta = ordered_json::object();
    if (c.first_delta) delta["role"] = "assistant";
    if (c.first_delta || !c.text.empty()) delta["content"] = c.text;
    return ordered_json{{"index", c.index},
                        {"delta", std::move(delta)},
                        {"logprobs", logprobs_of(c, Endpoint::chat)},
                        {"finish_reason", finish_reason(c.finish)}};
  });
}

std::string encode_model_list(const ModelLimits& model, int64_t created) {
  return dump(ordered_json{{"object", "list"},
                           {"data",
                            {{{"id", model.name},
                              {"object", "model"},
                              {"created", created},
                              {"owned_by", "origami"},
                              {"max_model_len", model.context}}}}});
}

std::string sse_event(std::string_view json_text) {
  std::string event;
  event.reserve(json_text.size() + 8);
  event.append("data: ").append(json_text).append("\n\n");
  return event;
}

}  // namespace origami::serve
