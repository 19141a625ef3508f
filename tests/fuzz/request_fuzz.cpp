// libFuzzer target for the OpenAI request decoders: any body must either decode, to a request
// that keeps every rule of runtime/serve/protocol.h, or be refused with a 4xx ProtocolError whose
// body is valid JSON. The input's bytes also go through the response encoders as model text, which
// must always give valid JSON. Any other exception, a sanitizer report or a crash is a bug.
// Seeds: tests/fuzz/corpus/requests; dictionary: tests/fuzz/request.dict.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "runtime/serve/protocol.h"

namespace {

using namespace origami::serve;

const ModelLimits kModel{1000, 512, "fuzz-model"};

void check(bool ok) {
  if (!ok) __builtin_trap();
}

// echo: a completion with echo, which may ask for no new token (max_tokens 0).
void check_sampling(const RequestSampling& s, bool echo) {
  check(!s.max_tokens || *s.max_tokens >= (echo ? 0 : 1));
  check(s.temperature >= 0 && s.temperature <= 2);
  check(s.top_p > 0 && s.top_p <= 1);
  check(s.top_k >= 0);
  check(s.n >= 1 && s.n <= kMaxN);
  check(s.presence_penalty >= -2 && s.presence_penalty <= 2);
  check(s.frequency_penalty >= -2 && s.frequency_penalty <= 2);
  check(s.repetition_penalty > 0);
  check(s.stop.size() <= size_t(kMaxStops));
  for (const std::string& stop : s.stop) check(!stop.empty());
  check(s.min_tokens >= 0 && (!s.max_tokens || s.min_tokens <= *s.max_tokens));
}

void check_refusal(const ProtocolError& e) {
  check(e.status() >= 400 && e.status() < 500);
  check(nlohmann::json::accept(e.json()));
}

// Model output is arbitrary bytes: every encoder must still write valid JSON.
void check_encoders(Endpoint endpoint, std::string_view text) {
  Response r;
  r.endpoint = endpoint;
  r.id = new_response_id(endpoint);
  r.model = kModel.name;
  Choice c;
  c.text = std::string(text);
  c.first_delta = true;
  c.logprobs = std::vector<TokenLogprob>{{c.text, std::nullopt, {}, std::nullopt},
                                         {c.text, -1.5, {{c.text, -1.5}, {"x", -2.0}}, 7}};
  r.choices = {c};
  r.usage = Usage{1, 2};
  check(nlohmann::json::accept(encode_response(r)));
  check(nlohmann::json::accept(encode_chunk(r)));
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view body(reinterpret_cast<const char*>(data), size);
  try {
    const CompletionRequest r = decode_completion_request(body, kModel);
    check(!r.prompts.empty() && int64_t(r.prompts.size()) * r.sampling.n <= kMaxChoices);
    check_sampling(r.sampling, r.echo);
    check(r.sampling.max_tokens.has_value());
    check(!r.logprobs || (*r.logprobs >= 0 && *r.logprobs <= kMaxLogprobs));
    check(!r.include_usage || r.stream);
    for (const Prompt& p : r.prompts) {
      if (const auto* tokens = std::get_if<std::vector<int32_t>>(&p)) {
        check(!tokens->empty() &&
              int64_t(tokens->size()) + *r.sampling.max_tokens <= kModel.context);
        for (const int32_t t : *tokens) check(t >= 0 && t < kModel.vocab);
      } else {
        check_encoders(Endpoint::completions, std::get<std::string>(p));
      }
    }
  } catch (const ProtocolError& e) {
    check_refusal(e);
  }
  try {
    const ChatCompletionRequest r = decode_chat_request(body, kModel);
    check(!r.messages.empty());
    check_sampling(r.sampling, false);
    check(r.top_logprobs >= 0 && r.top_logprobs <= kMaxLogprobs);
    check(r.top_logprobs == 0 || r.logprobs);
    check(!r.include_usage || r.stream);
    for (const ChatMessage& m : r.messages) {
      check(m.role == "system" || m.role == "user" || m.role == "assistant" || m.role == "tool");
      check_encoders(Endpoint::chat, m.content);
    }
  } catch (const ProtocolError& e) {
    check_refusal(e);
  }
  check_encoders(Endpoint::completions, body.substr(0, 256));
  return 0;
}
