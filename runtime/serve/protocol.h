// The OpenAI protocol: request bodies of POST /v1/completions and POST /v1/chat/completions
// decoded and validated into plain structs; responses, stream chunks, the model list and errors
// encoded as JSON text; server-sent-event framing. No HTTP here (http_server.h) and no engine:
// the engine tokenizes, schedules, samples and fills the response structs.
//
// Decoding rules (docs/serving.md, "Requests"), each refusal a ProtocolError naming the field in
// `param`:
//   - the body is a JSON object; unknown fields are ignored, except those whose meaning we cannot
//     honour (tools, response_format other than text, logit_bias, suffix, best_of != n, guided
//     decoding, non-text content parts, ...): 400 "not supported".
//   - null is the same as an absent field; a field of the wrong JSON type is a 400 naming it
//     (integers must be JSON integers: 16.0 is refused where an integer is expected).
//   - model: optional; when given it must be ModelLimits::name, else 404 model_not_found.
//   - max_tokens ≥ 1, or 0 on completions with echo (completions default 16; chat default: the rest
//   of the context; chat takes
//     max_completion_tokens over max_tokens), 0 ≤ temperature ≤ 2, 0 < top_p ≤ 1, top_k −1 or 0
//     (off) or ≥ 1, presence/frequency penalties in [−2, 2], repetition_penalty > 0,
//     1 ≤ n ≤ kMaxN, at most kMaxStops stop strings and none empty, 0 ≤ min_tokens ≤ max_tokens,
//     logprobs (completions) and top_logprobs (chat) in [0, kMaxLogprobs], stream_options only
//     with stream = true.
//   - completions: prompt is a string, an array of strings, an array of token ids, or an array of
//     arrays of token ids. A batch of prompts is allowed: choice index = prompt index · n + i, at
//     most kMaxChoices choices in all. Token ids must lie in [0, vocab) and token prompts must
//     fit the context with max_tokens (check_prompt_fits); text prompts are checked the same way
//     by the engine once tokenized.
//   - chat: messages is a non-empty array of {role, content}; role system, developer (read as
//     system), user, assistant or tool; content a string, an array of {"type": "text", "text"}
//     parts (joined with "\n"), or null (read as "").
// Every error is a 4xx: a server error is never the answer to bad input.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

#include "runtime/error.h"

namespace origami::serve {

inline constexpr int kMaxN = 16;          // choices per prompt
inline constexpr int kMaxChoices = 64;    // prompts × n in one completions request
inline constexpr int kMaxStops = 4;       // stop strings (as OpenAI)
inline constexpr int kMaxLogprobs = 20;   // alternatives per token
inline constexpr int kMaxJsonDepth = 64;  // deeper request bodies are refused

// What validation needs to know of the served model.
struct ModelLimits {
  int64_t vocab = 0;    // token ids must lie in [0, vocab)
  int64_t context = 0;  // prompt + generated tokens must fit in this many positions
  std::string name;     // the model's name in requests and in /v1/models
};

// A refused request: an HTTP status (4xx) and the OpenAI error object.
class ProtocolError : public Error {
 public:
  // `param`: the offending field ("" for none); `code`: a machine-readable code ("" for none).
  ProtocolError(int status, const std::string& message, std::string param = {},
                std::string code = {}, std::string type = "invalid_request_error");

  int status() const { return status_; }
  const std::string& param() const { return param_; }
  const std::string& code() const { return code_; }
  const std::string& type() const { return type_; }
  // {"error": {"message", "type", "param", "code"}}.
  std::string json() const;

 private:
  int status_;
  std::string param_, code_, type_;
};

// {"error": {"message", "type", "param", "code"}}; an empty param or code is written as null.
std::string encode_error(std::string_view message, std::string_view type,
                         std::string_view param = {}, std::string_view code = {});

// ---- requests ---------------------------------------------------------------------------------

// Sampling and stopping, shared by both endpoints.
struct RequestSampling {
  std::optional<int64_t> max_tokens;  // new tokens at most; nullopt: up to the context
  double temperature = 1.0;           // 0: greedy
  double top_p = 1.0;
  int64_t top_k = 0;              // 0: off (a request's −1 is stored as 0)
  std::optional<uint64_t> seed;   // a negative seed is kept as its two's complement
  std::vector<std::string> stop;  // stop strings (not part of the output)
  int64_t n = 1;                  // choices per prompt
  double presence_penalty = 0.0;
  double frequency_penalty = 0.0;
  double repetition_penalty = 1.0;  // 1: off
  int64_t min_tokens = 0;           // extension: no stop (EOS or string) before this many
  bool ignore_eos = false;          // extension
};

// A completions prompt: text (the engine tokenizes it) or token ids (checked here).
using Prompt = std::variant<std::string, std::vector<int32_t>>;

struct CompletionRequest {
  std::string model;
  std::vector<Prompt> prompts;  // one or more
  RequestSampling sampling;     // max_tokens defaults to 16
  std::optional<int> logprobs;  // alternatives per token (0 to kMaxLogprobs); nullopt: none
  bool echo = false;            // the prompt is repeated before the completion
  bool stream = false;
  bool include_usage = false;  // stream_options.include_usage: a last chunk with the usage
};

struct ChatMessage {
  std::string role;          // system, user, assistant or tool
  std::string content;       // text parts joined with "\n"
  std::string name;          // optional participant name
  std::string tool_call_id;  // tool messages: the call they answer (kept for the template)
};

struct ChatCompletionRequest {
  std::string model;
  std::vector<ChatMessage> messages;
  RequestSampling sampling;  // max_tokens unset: the rest of the context
  bool logprobs = false;     // logprobs of the sampled tokens
  int top_logprobs = 0;      // alternatives per token (0 to kMaxLogprobs; needs logprobs)
  bool stream = false;
  bool include_usage = false;
};

// Decode and validate a request body; throw ProtocolError on anything refused.
CompletionRequest decode_completion_request(std::string_view body, const ModelLimits& model);
ChatCompletionRequest decode_chat_request(std::string_view body, const ModelLimits& model);

// Checks a tokenized prompt of `prompt_tokens` tokens against the context and returns how many
// tokens may be generated: max_tokens, or the rest of the context when it is unset. Refuses an
// empty prompt, a prompt that fills the context, and prompt + max_tokens past it (400
// context_length_exceeded; `param` names the prompt's field: "prompt" or "messages").
int64_t check_prompt_fits(size_t prompt_tokens, const RequestSampling& sampling,
                          const ModelLimits& model, std::string_view param = "prompt");

// ---- responses --------------------------------------------------------------------------------

enum class Endpoint { completions, chat };
enum class ChoiceFinish { none, stop, length };  // none: the choice is still running (chunks)

// Characters of UTF-8 text (bytes that do not continue a sequence): the unit of completions'
// `text_offset`, as a client's string counts them.
int64_t utf8_length(std::string_view text);

// One token with its log-probability. `token` holds the token's bytes, which may be part of a
// UTF-8 sequence: encoders replace invalid UTF-8 in text with U+FFFD and give chat the exact
// bytes in `bytes`. A log-probability of −inf is written as −9999.0 (as OpenAI does).
struct TokenLogprob {
  std::string token;
  std::optional<double> logprob;  // nullopt: the first prompt token under echo (no context)
  std::vector<std::pair<std::string, double>> top;  // alternatives, most likely first
  // Completions: where the token's text starts in the choice's text, when not right after the
  // previous entry's (the first generated token under echo starts after the prompt's text).
  std::optional<int64_t> text_offset;
};

struct Usage {
  int64_t prompt_tokens = 0;
  int64_t completion_tokens = 0;
};

struct Choice {
  int64_t index = 0;
  std::string text;  // completion text or chat content; in a chunk, the new piece only
  ChoiceFinish finish = ChoiceFinish::none;
  std::optional<std::vector<TokenLogprob>> logprobs;  // set when the request asked for them
  int64_t text_offset = 0;   // completions: offset (characters) of `logprobs`' first token
  bool first_delta = false;  // chat chunks: this delta opens the message (carries the role)
};

struct Response {
  Endpoint endpoint = Endpoint::completions;
  std::string id;       // new_response_id(endpoint)
  int64_t created = 0;  // Unix seconds
  std::string model;
  std::vector<Choice> choices;
  std::optional<Usage> usage;
};

// "cmpl-…" or "chatcmpl-…" followed by 24 random hex digits.
std::string new_response_id(Endpoint endpoint);

// The body of a non-streamed response: a "text_completion" or a "chat.completion" object.
std::string encode_response(const Response& response);
// One stream chunk: a "text_completion" or a "chat.completion.chunk" object. Chat choices carry
// `delta` ({"role": "assistant", "content": ""} on the first delta, then {"content"}, and {} on
// the last, which has the finish_reason). The usage chunk is a Response with no choices and
// `usage` set.
std::string encode_chunk(const Response& response);
// GET /v1/models: {"object": "list", "data": [{"id", "object": "model", "created", "owned_by",
// "max_model_len"}]}.
std::string encode_model_list(const ModelLimits& model, int64_t created);

// Server-sent events: "data: JSON\n\n", and the last event of every stream.
std::string sse_event(std::string_view json);
inline constexpr std::string_view kSseDone = "data: [DONE]\n\n";

}  // namespace origami::serve
