// The OpenAI protocol layer: every validation rule (accepted and refused values, the status and
// the field named in the error), every prompt and message form, the encoders read back as JSON,
// and SSE framing.
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <limits>
#include <set>
#include <string>

#include <nlohmann/json.hpp>

#include "runtime/serve/protocol.h"

namespace origami::serve {
namespace {

using json = nlohmann::json;

const ModelLimits kModel{32000, 4096, "tiny-llama"};

struct Refusal {
  bool refused = false;
  int status = 0;
  std::string param, code, message, body;
};

Refusal refusal(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const ProtocolError& e) {
    return {true, e.status(), e.param(), e.code(), e.what(), e.json()};
  }
  return {};
}

Refusal refuse_completion(const json& body) {
  return refusal([&] { decode_completion_request(body.dump(), kModel); });
}
Refusal refuse_chat(const json& body) {
  return refusal([&] { decode_chat_request(body.dump(), kModel); });
}

json completion_with(const std::string& key, const json& value) {
  json body = {{"model", kModel.name}, {"prompt", "Hello"}};
  body[key] = value;
  return body;
}
json chat_with(const std::string& key, const json& value) {
  json body = {{"model", kModel.name}, {"messages", {{{"role", "user"}, {"content", "Hi"}}}}};
  body[key] = value;
  return body;
}

// Checks that `body` is refused with `status`, naming `param`, for both endpoints when `both`.
void expect_refused(const json& body, const std::string& param, int status = 400) {
  const Refusal r = refuse_completion(body);
  EXPECT_TRUE(r.refused) << body.dump();
  EXPECT_EQ(r.status, status) << body.dump() << ": " << r.message;
  EXPECT_EQ(r.param, param) << body.dump() << ": " << r.message;
}

// ---- sampling fields: one table, both endpoints -------------------------------------------------

struct FieldCase {
  std::string field;
  std::vector<json> accepted;
  std::vector<json> refused;
};

TEST(ServeProtocol, EverySamplingRuleOnBothEndpoints) {
  const double big = 1e300;
  const std::vector<FieldCase> cases = {
      {"max_tokens", {1, 100, 4000}, {0, -1, 1.5, 16.0, "16", true, json::array()}},
      {"temperature", {0, 0.0, 0.7, 2, 2.0}, {-0.01, 2.01, big, "1", false}},
      {"top_p", {1, 0.5, 1e-9}, {0, 0.0, -0.5, 1.01, "0.5"}},
      {"top_k", {-1, 0, 1, 50}, {-2, -100, 1.5, "5"}},
      {"presence_penalty", {-2, 0, 2, 1.5}, {-2.01, 2.01, "0"}},
      {"frequency_penalty", {-2, 0, 2, -0.5}, {-2.5, 3, json::object()}},
      {"repetition_penalty", {0.5, 1, 1.3, 3}, {0, -1, 0.0, "1"}},
      {"n", {1, 2, kMaxN}, {0, -1, kMaxN + 1, 2.0, "2"}},
      {"seed", {0, -1, 42, std::numeric_limits<uint64_t>::max()}, {1.5, "1", true}},
      {"stop",
       {"x", json::array(), json::array({"a", "b", "c", "d"}), json::array({"\n"})},
       {"", json::array({""}), json::array({"a", ""}), json::array({1}), 5,
        json::array({"a", "b", "c", "d", "e"})}},
      {"min_tokens", {0, 3, 10}, {-1, 1.5}},
      {"ignore_eos", {true, false}, {1, "true"}},
      {"stream", {true, false}, {1, "yes"}},
  };
  for (const FieldCase& c : cases) {
    for (const json& v : c.accepted) {
      json completion = completion_with(c.field, v), chat = chat_with(c.field, v);
      if (c.field == "min_tokens") completion["max_tokens"] = chat["max_tokens"] = 10;
      EXPECT_FALSE(refuse_completion(completion).refused)
          << c.field << " = " << v.dump() << ": " << refuse_completion(completion).message;
      EXPECT_FALSE(refuse_chat(chat).refused)
          << c.field << " = " << v.dump() << ": " << refuse_chat(chat).message;
    }
    for (const json& v : c.refused) {
      for (const bool chat : {false, true}) {
        const json body = chat ? chat_with(c.field, v) : completion_with(c.field, v);
        const Refusal r = chat ? refuse_chat(body) : refuse_completion(body);
        EXPECT_TRUE(r.refused) << (chat ? "chat " : "completion ") << c.field << " = " << v.dump();
        EXPECT_EQ(r.status, 400) << c.field << " = " << v.dump();
        EXPECT_EQ(r.param.rfind(c.field, 0), 0u)  // "stop" or "stop[1]"
            << c.field << " = " << v.dump() << ": " << r.message;
        EXPECT_EQ(r.code, "") << r.message;
        EXPECT_NE(r.message.find(c.field), std::string::npos) << r.message;
      }
    }
  }
}

TEST(ServeProtocol, StopStringsNameTheEntry) {
  const Refusal r = refuse_completion(completion_with("stop", json::array({"ok", ""})));
  EXPECT_EQ(r.param, "stop[1]");
  EXPECT_EQ(refuse_completion(completion_with("stop", json::array({"ok", 7}))).param, "stop[1]");
}

TEST(ServeProtocol, SamplingValuesAreKept) {
  const json body = {{"prompt", "x"},
                     {"max_tokens", 7},
                     {"temperature", 0},
                     {"top_p", 0.9},
                     {"top_k", -1},
                     {"seed", -1},
                     {"stop", "END"},
                     {"n", 3},
                     {"presence_penalty", 0.5},
                     {"frequency_penalty", -0.5},
                     {"repetition_penalty", 1.1},
                     {"min_tokens", 2},
                     {"ignore_eos", true}};
  const CompletionRequest r = decode_completion_request(body.dump(), kModel);
  const RequestSampling& s = r.sampling;
  EXPECT_EQ(s.max_tokens, 7);
  EXPECT_EQ(s.temperature, 0.0);
  EXPECT_DOUBLE_EQ(s.top_p, 0.9);
  EXPECT_EQ(s.top_k, 0);  // -1 is stored as 0: off
  EXPECT_EQ(s.seed, std::numeric_limits<uint64_t>::max());
  EXPECT_EQ(s.stop, std::vector<std::string>{"END"});
  EXPECT_EQ(s.n, 3);
  EXPECT_DOUBLE_EQ(s.presence_penalty, 0.5);
  EXPECT_DOUBLE_EQ(s.frequency_penalty, -0.5);
  EXPECT_DOUBLE_EQ(s.repetition_penalty, 1.1);
  EXPECT_EQ(s.min_tokens, 2);
  EXPECT_TRUE(s.ignore_eos);
  EXPECT_EQ(decode_completion_request(completion_with("top_k", 40).dump(), kModel).sampling.top_k,
            40);
}

TEST(ServeProtocol, DefaultsAndNullIsAbsent) {
  const CompletionRequest r = decode_completion_request(R"({"prompt": "x"})", kModel);
  EXPECT_EQ(r.model, kModel.name);
  EXPECT_EQ(r.sampling.max_tokens, 16);
  EXPECT_EQ(r.sampling.temperature, 1.0);
  EXPECT_EQ(r.sampling.top_p, 1.0);
  EXPECT_EQ(r.sampling.top_k, 0);
  EXPECT_FALSE(r.sampling.seed);
  EXPECT_TRUE(r.sampling.stop.empty());
  EXPECT_EQ(r.sampling.n, 1);
  EXPECT_EQ(r.sampling.repetition_penalty, 1.0);
  EXPECT_FALSE(r.logprobs);
  EXPECT_FALSE(r.echo || r.stream || r.include_usage);

  const json nulls = {{"prompt", "x"},         {"model", nullptr},
                      {"max_tokens", nullptr}, {"temperature", nullptr},
                      {"top_p", nullptr},      {"stop", nullptr},
                      {"n", nullptr},          {"logprobs", nullptr},
                      {"stream", nullptr},     {"stream_options", nullptr},
                      {"seed", nullptr},       {"suffix", nullptr},
                      {"logit_bias", nullptr}, {"user", nullptr}};
  const CompletionRequest n = decode_completion_request(nulls.dump(), kModel);
  EXPECT_EQ(n.sampling.max_tokens, 16);
  EXPECT_EQ(n.sampling.temperature, 1.0);

  const ChatCompletionRequest c =
      decode_chat_request(R"({"messages": [{"role": "user", "content": "x"}]})", kModel);
  EXPECT_FALSE(c.sampling.max_tokens);  // chat: up to the context
  EXPECT_FALSE(c.logprobs);
  EXPECT_EQ(c.top_logprobs, 0);
}

// ---- model, JSON, unsupported fields ------------------------------------------------------------

TEST(ServeProtocol, UnknownModelIs404) {
  for (const bool chat : {false, true}) {
    const json body = chat ? chat_with("model", "gpt-4") : completion_with("model", "gpt-4");
    const Refusal r = chat ? refuse_chat(body) : refuse_completion(body);
    EXPECT_EQ(r.status, 404);
    EXPECT_EQ(r.param, "model");
    EXPECT_EQ(r.code, "model_not_found");
    EXPECT_NE(r.message.find("gpt-4"), std::string::npos);
    EXPECT_NE(r.message.find(kModel.name), std::string::npos);
  }
  expect_refused(completion_with("model", 5), "model");
}

TEST(ServeProtocol, MalformedBodies) {
  std::string deep = std::string(200, '[') + std::string(200, ']');
  std::string deep_object = R"({"prompt": "x", "metadata": )" + deep + "}";
  for (const std::string& body :
       {std::string("{"), std::string(""), std::string("null"), std::string("[1, 2]"),
        std::string("\"prompt\""), std::string(R"({"prompt": "x",})"), deep, deep_object,
        std::string("{\"prompt\": \"\xff\xfe\"}"), std::string(R"({"prompt": "x"} trailing)")}) {
    for (const bool chat : {false, true}) {
      const Refusal r = refusal([&] {
        chat ? (void)decode_chat_request(body, kModel)
             : (void)decode_completion_request(body, kModel);
      });
      EXPECT_TRUE(r.refused) << body.substr(0, 40);
      EXPECT_EQ(r.status, 400) << body.substr(0, 40);
      EXPECT_EQ(r.param, "") << body.substr(0, 40);
    }
  }
  // Numbers past the integer range or the double range are refused, never wrapped.
  const Refusal huge = refusal([] {
    decode_completion_request(R"({"prompt": "x", "max_tokens": 18446744073709551615})", kModel);
  });
  EXPECT_EQ(huge.param, "max_tokens");
  const Refusal inf = refusal(
      [] { decode_completion_request(R"({"prompt": "x", "temperature": 1e999})", kModel); });
  EXPECT_TRUE(inf.refused);
  EXPECT_EQ(inf.status, 400);
}

TEST(ServeProtocol, FieldsWeCannotHonourAreRefused) {
  const std::vector<std::pair<std::string, json>> completion_refused = {
      {"suffix", "tail"},
      {"logit_bias", {{"50256", -100}}},
      {"best_of", 3},
      {"response_format", {{"type", "json_object"}}},
      {"guided_json", {{"type", "object"}}},
      {"guided_choice", json::array({"a", "b"})},
      {"prompt_logprobs", 1},
  };
  for (const auto& [key, value] : completion_refused) {
    const Refusal r = refuse_completion(completion_with(key, value));
    EXPECT_EQ(r.status, 400) << key;
    EXPECT_EQ(r.param, key) << key;
    EXPECT_EQ(r.code, "unsupported_parameter") << key;
    EXPECT_NE(r.message.find("not supported"), std::string::npos) << r.message;
  }
  const std::vector<std::pair<std::string, json>> chat_refused = {
      {"tools", json::array({{{"type", "function"}, {"function", {{"name", "f"}}}}})},
      {"functions", json::array({{{"name", "f"}}})},
      {"tool_choice", "required"},
      {"tool_choice", {{"type", "function"}, {"function", {{"name", "f"}}}}},
      {"function_call", {{"name", "f"}}},
      {"response_format", {{"type", "json_schema"}, {"json_schema", json::object()}}},
      {"logit_bias", {{"1", 5}}},
      {"audio", {{"voice", "alloy"}}},
      {"modalities", json::array({"text", "audio"})},
      {"prediction", {{"type", "content"}}},
      {"echo", true},
  };
  for (const auto& [key, value] : chat_refused) {
    const Refusal r = refuse_chat(chat_with(key, value));
    EXPECT_EQ(r.status, 400) << key << " " << value.dump();
    EXPECT_EQ(r.param, key) << key;
    EXPECT_EQ(r.code, "unsupported_parameter") << key;
  }
  // The harmless forms and unknown extras pass.
  const std::vector<std::pair<std::string, json>> completion_ok = {
      {"suffix", ""},
      {"logit_bias", json::object()},
      {"best_of", 1},
      {"user", "someone"},
      {"response_format", {{"type", "text"}}},
      {"frobnicate", 12},
      {"metadata", {{"a", {{"b", json::array({1, 2})}}}}}};
  for (const auto& [key, value] : completion_ok)
    EXPECT_FALSE(refuse_completion(completion_with(key, value)).refused) << key;
  const std::vector<std::pair<std::string, json>> chat_ok = {{"tools", json::array()},
                                                             {"tool_choice", "none"},
                                                             {"tool_choice", "auto"},
                                                             {"parallel_tool_calls", true},
                                                             {"store", false},
                                                             {"metadata", {{"k", "v"}}},
                                                             {"modalities", json::array({"text"})},
                                                             {"service_tier", "auto"},
                                                             {"echo", false},
                                                             {"user", "u"},
                                                             {"reasoning_effort", "low"}};
  for (const auto& [key, value] : chat_ok)
    EXPECT_FALSE(refuse_chat(chat_with(key, value)).refused) << key << " " << value.dump();
}

// ---- completions: prompts, logprobs, echo, stream options ---------------------------------------

TEST(ServeProtocol, EveryPromptForm) {
  auto decode = [](const json& prompt) {
    return decode_completion_request(json{{"prompt", prompt}}.dump(), kModel).prompts;
  };
  auto one_text = decode("Once upon a time");
  ASSERT_EQ(one_text.size(), 1u);
  EXPECT_EQ(std::get<std::string>(one_text[0]), "Once upon a time");

  auto texts = decode(json::array({"a", "", "c"}));
  ASSERT_EQ(texts.size(), 3u);
  EXPECT_EQ(std::get<std::string>(texts[1]), "");
  EXPECT_EQ(std::get<std::string>(texts[2]), "c");

  auto tokens = decode(json::array({1, 31999, 0}));
  ASSERT_EQ(tokens.size(), 1u);
  EXPECT_EQ(std::get<std::vector<int32_t>>(tokens[0]), (std::vector<int32_t>{1, 31999, 0}));

  auto batch = decode(json::array({json::array({5}), json::array({6, 7})}));
  ASSERT_EQ(batch.size(), 2u);
  EXPECT_EQ(std::get<std::vector<int32_t>>(batch[0]), std::vector<int32_t>{5});
  EXPECT_EQ(std::get<std::vector<int32_t>>(batch[1]), (std::vector<int32_t>{6, 7}));

  EXPECT_EQ(decode("").size(), 1u);  // empty text: the engine checks it once tokenized
}

TEST(ServeProtocol, PromptRefusals) {
  const std::vector<std::pair<json, std::string>> cases = {
      {5, "prompt"},
      {true, "prompt"},
      {json::object(), "prompt"},
      {json::array(), "prompt"},
      {json::array({1, "a"}), "prompt[1]"},
      {json::array({"a", 1}), "prompt[1]"},
      {json::array({"a", json::array({1})}), "prompt[1]"},
      {json::array({json::array({1}), json::array()}), "prompt[1]"},
      {json::array({json::array({1}), 2}), "prompt[1]"},
      {json::array({json::array({1}), json::array({1, 32000})}), "prompt[1][1]"},
      {json::array({json::array({1.5})}), "prompt[0][0]"},
      {json::array({32000}), "prompt[0]"},
      {json::array({1, -1}), "prompt[1]"},
      {json::array({1, 2.5}), "prompt[1]"},
      {json::array({std::numeric_limits<uint64_t>::max()}), "prompt[0]"},
      {json::array({true}), "prompt[0]"},
      {json::array({nullptr}), "prompt[0]"},
  };
  for (const auto& [prompt, param] : cases)
    expect_refused(completion_with("prompt", prompt), param);
  expect_refused(json{{"max_tokens", 3}}, "prompt");  // missing
  const Refusal vocab = refuse_completion(completion_with("prompt", json::array({7, 32000})));
  EXPECT_NE(vocab.message.find("32000"), std::string::npos) << vocab.message;
  EXPECT_NE(vocab.message.find("vocabulary"), std::string::npos) << vocab.message;
}

TEST(ServeProtocol, BatchAndChoiceLimits) {
  json prompts = json::array();
  for (int i = 0; i < kMaxChoices; ++i) prompts.push_back("p");
  EXPECT_FALSE(refuse_completion(completion_with("prompt", prompts)).refused);
  prompts.push_back("p");
  expect_refused(completion_with("prompt", prompts), "prompt");
  json four = completion_with("prompt", json::array({"a", "b", "c", "d"}));
  four["n"] = kMaxN;
  EXPECT_FALSE(refuse_completion(four).refused);  // 64 choices
  four["prompt"].push_back("e");
  EXPECT_EQ(refuse_completion(four).param, "n");  // 80 choices
}

TEST(ServeProtocol, TokenPromptsMustFitTheContext) {
  const json fits = {{"prompt", std::vector<int>(4080, 1)}, {"max_tokens", 16}};
  EXPECT_FALSE(refuse_completion(fits).refused);
  json over = fits;
  over["max_tokens"] = 17;
  const Refusal r = refuse_completion(over);
  EXPECT_EQ(r.param, "max_tokens");
  EXPECT_EQ(r.code, "context_length_exceeded");
  EXPECT_NE(r.message.find("4096"), std::string::npos) << r.message;
  const Refusal full = refuse_completion(json{{"prompt", std::vector<int>(4096, 1)}});
  EXPECT_EQ(full.param, "prompt");
  EXPECT_EQ(full.code, "context_length_exceeded");
  // Each prompt of a batch is checked.
  const json batch = {{"prompt", {std::vector<int>(10, 1), std::vector<int>(4090, 1)}}};
  EXPECT_EQ(refuse_completion(batch).code, "context_length_exceeded");
}

TEST(ServeProtocol, CheckPromptFits) {
  RequestSampling s;
  EXPECT_EQ(check_prompt_fits(100, s, kModel), 3996);  // max_tokens unset: the rest
  s.max_tokens = 96;
  EXPECT_EQ(check_prompt_fits(4000, s, kModel), 96);
  const Refusal over = refusal([&] { check_prompt_fits(4001, s, kModel, "messages"); });
  EXPECT_EQ(over.param, "max_tokens");
  EXPECT_EQ(over.code, "context_length_exceeded");
  const Refusal empty = refusal([&] { check_prompt_fits(0, s, kModel, "messages"); });
  EXPECT_EQ(empty.param, "messages");
  EXPECT_EQ(empty.status, 400);
  const Refusal full = refusal([&] { check_prompt_fits(4096, s, kModel, "messages"); });
  EXPECT_EQ(full.param, "messages");
  EXPECT_EQ(full.code, "context_length_exceeded");
  RequestSampling m;
  m.min_tokens = 100;
  EXPECT_EQ(refusal([&] { check_prompt_fits(4000, m, kModel); }).param, "min_tokens");
  s.max_tokens = std::numeric_limits<int64_t>::max();  // no overflow in the sum
  EXPECT_EQ(refusal([&] { check_prompt_fits(10, s, kModel); }).param, "max_tokens");
}

TEST(ServeProtocol, CompletionLogprobsEchoAndStreamOptions) {
  const json body = {{"prompt", "x"},
                     {"logprobs", 5},
                     {"echo", true},
                     {"stream", true},
                     {"stream_options", {{"include_usage", true}}}};
  const CompletionRequest r = decode_completion_request(body.dump(), kModel);
  EXPECT_EQ(r.logprobs, 5);
  EXPECT_TRUE(r.echo);
  EXPECT_TRUE(r.stream);
  EXPECT_TRUE(r.include_usage);
  EXPECT_EQ(decode_completion_request(completion_with("logprobs", 0).dump(), kModel).logprobs, 0);
  for (const json& v : {json(-1), json(kMaxLogprobs + 1), json(true), json("5")})
    expect_refused(completion_with("logprobs", v), "logprobs");
  expect_refused(completion_with("echo", 1), "echo");
  // With echo, max_tokens 0 asks for the prompt alone (scoring it); never below 0.
  json scoring = completion_with("echo", true);
  scoring["max_tokens"] = 0;
  EXPECT_EQ(decode_completion_request(scoring.dump(), kModel).sampling.max_tokens, 0);
  scoring["max_tokens"] = -1;
  expect_refused(scoring, "max_tokens");
  scoring["echo"] = false;
  scoring["max_tokens"] = 0;
  expect_refused(scoring, "max_tokens");
  // stream_options needs stream = true, and must be an object with a boolean include_usage.
  expect_refused(completion_with("stream_options", {{"include_usage", true}}), "stream_options");
  json streamed = completion_with("stream", true);
  streamed["stream_options"] = 1;
  expect_refused(streamed, "stream_options");
  streamed["stream_options"] = {{"include_usage", "yes"}};
  expect_refused(streamed, "stream_options.include_usage");
  streamed["stream_options"] = json::object();
  EXPECT_FALSE(decode_completion_request(streamed.dump(), kModel).include_usage);
}

// ---- chat ---------------------------------------------------------------------------------------

TEST(ServeProtocol, EveryMessageForm) {
  const json body = {
      {"messages",
       {{{"role", "system"}, {"content", "Be brief."}},
        {{"role", "developer"}, {"content", "Answer in French."}},
        {{"role", "user"},
         {"content",
          {{{"type", "text"}, {"text", "Part one."}}, {{"type", "text"}, {"text", "Two."}}}},
         {"name", "ann"}},
        {{"role", "assistant"}, {"content", nullptr}},
        {{"role", "assistant"}, {"content", "Oui."}, {"tool_calls", json::array()}},
        {{"role", "tool"}, {"content", "42"}, {"tool_call_id", "call_1"}},
        {{"role", "user"}, {"content", json::array()}}}}};
  const ChatCompletionRequest r = decode_chat_request(body.dump(), kModel);
  ASSERT_EQ(r.messages.size(), 7u);
  EXPECT_EQ(r.messages[0].role, "system");
  EXPECT_EQ(r.messages[0].content, "Be brief.");
  EXPECT_EQ(r.messages[1].role, "system");  // developer is read as system
  EXPECT_EQ(r.messages[2].content, "Part one.\nTwo.");
  EXPECT_EQ(r.messages[2].name, "ann");
  EXPECT_EQ(r.messages[3].role, "assistant");
  EXPECT_EQ(r.messages[3].content, "");
  EXPECT_EQ(r.messages[4].content, "Oui.");
  EXPECT_EQ(r.messages[5].role, "tool");
  EXPECT_EQ(r.messages[5].tool_call_id, "call_1");
  EXPECT_EQ(r.messages[6].content, "");
}

TEST(ServeProtocol, MessageRefusals) {
  const json user = {{"role", "user"}, {"content", "hi"}};
  const std::vector<std::pair<json, std::string>> cases = {
      {"hello", "messages"},
      {json::array(), "messages"},
      {json::array({5}), "messages[0]"},
      {json::array({user, json::object()}), "messages[1].role"},
      {json::array({{{"role", "bot"}, {"content", "x"}}}), "messages[0].role"},
      {json::array({{{"role", "function"}, {"content", "x"}}}), "messages[0].role"},
      {json::array({{{"role", 1}, {"content", "x"}}}), "messages[0].role"},
      {json::array({{{"role", "user"}}}), "messages[0].content"},
      {json::array({{{"role", "user"}, {"content", nullptr}}}), "messages[0].content"},
      {json::array({{{"role", "user"}, {"content", 5}}}), "messages[0].content"},
      {json::array({{{"role", "user"}, {"content", {"text"}}}}), "messages[0].content[0]"},
      {json::array({{{"role", "user"}, {"content", {{{"text", "x"}}}}}}),
       "messages[0].content[0].type"},
      {json::array({{{"role", "user"}, {"content", {{{"type", "text"}}}}}}),
       "messages[0].content[0].text"},
      {json::array({{{"role", "user"}, {"content", {{{"type", "text"}, {"text", 3}}}}}}),
       "messages[0].content[0].text"},
      {json::array({{{"role", "user"}, {"name", 3}, {"content", "x"}}}), "messages[0].name"},
  };
  for (const auto& [messages, param] : cases) {
    const Refusal r = refuse_chat(json{{"messages", messages}});
    EXPECT_TRUE(r.refused) << messages.dump();
    EXPECT_EQ(r.status, 400) << messages.dump();
    EXPECT_EQ(r.param, param) << messages.dump() << ": " << r.message;
  }
  EXPECT_EQ(refuse_chat(json{{"model", kModel.name}}).param, "messages");  // missing

  const json image = {{"role", "user"},
                      {"content", {{{"type", "image_url"}, {"image_url", {{"url", "x"}}}}}}};
  const Refusal r = refuse_chat(json{{"messages", {user, image}}});
  EXPECT_EQ(r.param, "messages[1].content[0].type");
  EXPECT_EQ(r.code, "unsupported_parameter");
  const json calls = {{"role", "assistant"},
                      {"content", nullptr},
                      {"tool_calls", {{{"id", "c"}, {"type", "function"}}}}};
  EXPECT_EQ(refuse_chat(json{{"messages", {user, calls}}}).param, "messages[1].tool_calls");
}

TEST(ServeProtocol, ChatTokenLimitsAndLogprobs) {
  json body = chat_with("max_tokens", 50);
  EXPECT_EQ(decode_chat_request(body.dump(), kModel).sampling.max_tokens, 50);
  body["max_completion_tokens"] = 20;  // takes precedence
  EXPECT_EQ(decode_chat_request(body.dump(), kModel).sampling.max_tokens, 20);
  body["max_completion_tokens"] = 0;
  EXPECT_EQ(refuse_chat(body).param, "max_completion_tokens");

  json lp = chat_with("logprobs", true);
  lp["top_logprobs"] = kMaxLogprobs;
  const ChatCompletionRequest r = decode_chat_request(lp.dump(), kModel);
  EXPECT_TRUE(r.logprobs);
  EXPECT_EQ(r.top_logprobs, kMaxLogprobs);
  lp["top_logprobs"] = kMaxLogprobs + 1;
  EXPECT_EQ(refuse_chat(lp).param, "top_logprobs");
  lp["top_logprobs"] = -1;
  EXPECT_EQ(refuse_chat(lp).param, "top_logprobs");
  EXPECT_EQ(refuse_chat(chat_with("top_logprobs", 2)).param, "top_logprobs");  // needs logprobs
  EXPECT_FALSE(refuse_chat(chat_with("top_logprobs", 0)).refused);
  EXPECT_EQ(refuse_chat(chat_with("logprobs", 1)).param, "logprobs");

  json streamed = chat_with("stream", true);
  streamed["stream_options"] = {{"include_usage", true}};
  const ChatCompletionRequest s = decode_chat_request(streamed.dump(), kModel);
  EXPECT_TRUE(s.stream && s.include_usage);
  EXPECT_EQ(refuse_chat(chat_with("stream_options", {{"include_usage", true}})).param,
            "stream_options");
}

// ---- errors -------------------------------------------------------------------------------------

TEST(ServeProtocol, ErrorJson) {
  const json e = json::parse(ProtocolError(400, "bad 'n'", "n").json());
  EXPECT_EQ(e["error"]["message"], "bad 'n'");
  EXPECT_EQ(e["error"]["type"], "invalid_request_error");
  EXPECT_EQ(e["error"]["param"], "n");
  EXPECT_TRUE(e["error"]["code"].is_null());
  const json none = json::parse(encode_error("gone", "internal_error"));
  EXPECT_TRUE(none["error"]["param"].is_null());
  EXPECT_EQ(none["error"]["type"], "internal_error");
  // Every refusal carries its body with the same fields.
  const Refusal r = refuse_completion(completion_with("model", "nope"));
  const json body = json::parse(r.body);
  EXPECT_EQ(body["error"]["code"], "model_not_found");
  EXPECT_EQ(body["error"]["param"], "model");
  // Invalid UTF-8 in a message never breaks the JSON.
  EXPECT_TRUE(json::accept(encode_error("bad \xff byte", "invalid_request_error")));
}

// ---- encoders -----------------------------------------------------------------------------------

Response sample_response(Endpoint endpoint) {
  Response r;
  r.endpoint = endpoint;
  r.id = new_response_id(endpoint);
  r.created = 1700000000;
  r.model = kModel.name;
  return r;
}

TEST(ServeProtocol, CompletionResponse) {
  Response r = sample_response(Endpoint::completions);
  Choice a;
  a.index = 0;
  a.text = " world";
  a.finish = ChoiceFinish::length;
  Choice b;
  b.index = 1;
  b.text = "!";
  b.finish = ChoiceFinish::stop;
  r.choices = {a, b};
  r.usage = Usage{5, 7};
  const json j = json::parse(encode_response(r));
  EXPECT_EQ(j["id"], r.id);
  EXPECT_EQ(j["object"], "text_completion");
  EXPECT_EQ(j["created"], 1700000000);
  EXPECT_EQ(j["model"], kModel.name);
  ASSERT_EQ(j["choices"].size(), 2u);
  EXPECT_EQ(j["choices"][0]["index"], 0);
  EXPECT_EQ(j["choices"][0]["text"], " world");
  EXPECT_EQ(j["choices"][0]["finish_reason"], "length");
  EXPECT_TRUE(j["choices"][0]["logprobs"].is_null());
  EXPECT_EQ(j["choices"][1]["finish_reason"], "stop");
  EXPECT_EQ(j["usage"]["prompt_tokens"], 5);
  EXPECT_EQ(j["usage"]["completion_tokens"], 7);
  EXPECT_EQ(j["usage"]["total_tokens"], 12);
}

TEST(ServeProtocol, CompletionLogprobs) {
  Response r = sample_response(Endpoint::completions);
  Choice c;
  c.text = "Hi there";
  c.finish = ChoiceFinish::stop;
  c.text_offset = 10;
  c.logprobs = std::vector<TokenLogprob>{
      {"Hi", std::nullopt, {}, std::nullopt},  // the first prompt token under echo
      {" there", -0.25, {{" there", -0.25}, {" you", -1.5}, {" there", -9.0}}, std::nullopt},
      {"\xe2\x82", -std::numeric_limits<double>::infinity(), {{"\xe2\x82", -2.0}}, std::nullopt},
      {"!", -0.5, {}, 30},  // the first generated token under echo: where it starts is given
      {"?", -0.5, {}, std::nullopt},
  };
  r.choices = {c};
  const json j = json::parse(encode_response(r));
  const json& lp = j["choices"][0]["logprobs"];
  EXPECT_EQ(lp["tokens"], json::array({"Hi", " there", "\xef\xbf\xbd", "!", "?"}));  // U+FFFD
  EXPECT_TRUE(lp["token_logprobs"][0].is_null());
  EXPECT_EQ(lp["token_logprobs"][1], -0.25);
  EXPECT_EQ(lp["token_logprobs"][2], -9999.0);
  EXPECT_TRUE(lp["top_logprobs"][0].is_null());
  EXPECT_EQ(lp["top_logprobs"][1].size(), 2u);  // the duplicate text keeps its first value
  EXPECT_EQ(lp["top_logprobs"][1][" there"], -0.25);
  EXPECT_EQ(lp["top_logprobs"][1][" you"], -1.5);
  EXPECT_EQ(lp["text_offset"], json::array({10, 12, 18, 30, 31}));
  // Offsets count characters, as the client's string does: a cut sequence counts as one.
  EXPECT_EQ(utf8_length("h\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80"), 4);  // h é € 😀
  EXPECT_EQ(utf8_length("\xe2\x82"), 1);
  EXPECT_EQ(utf8_length(""), 0);
}

TEST(ServeProtocol, ChatResponseAndLogprobs) {
  Response r = sample_response(Endpoint::chat);
  Choice c;
  c.text = "Bonjour \xf0\x9f\x98";  // cut inside an emoji
  c.finish = ChoiceFinish::stop;
  c.logprobs =
      std::vector<TokenLogprob>{{"Bon", -0.1, {{"Bon", -0.1}, {"Sal", -2.5}}, std::nullopt},
                                {"\xf0\x9f\x98", -0.5, {}, std::nullopt}};
  r.choices = {c};
  r.usage = Usage{3, 2};
  const json j = json::parse(encode_response(r));
  EXPECT_EQ(j["object"], "chat.completion");
  EXPECT_EQ(j["id"].get<std::string>().rfind("chatcmpl-", 0), 0u);
  const json& choice = j["choices"][0];
  EXPECT_EQ(choice["index"], 0);
  EXPECT_EQ(choice["message"]["role"], "assistant");
  EXPECT_EQ(choice["message"]["content"], "Bonjour \xef\xbf\xbd");
  EXPECT_EQ(choice["finish_reason"], "stop");
  const json& content = choice["logprobs"]["content"];
  ASSERT_EQ(content.size(), 2u);
  EXPECT_EQ(content[0]["token"], "Bon");
  EXPECT_EQ(content[0]["logprob"], -0.1);
  EXPECT_EQ(content[0]["bytes"], json::array({66, 111, 110}));
  EXPECT_EQ(content[0]["top_logprobs"][1]["token"], "Sal");
  EXPECT_EQ(content[0]["top_logprobs"][1]["logprob"], -2.5);
  EXPECT_EQ(content[0]["top_logprobs"][1]["bytes"], json::array({83, 97, 108}));
  EXPECT_EQ(content[1]["bytes"], json::array({0xf0, 0x9f, 0x98}));  // the exact bytes
  EXPECT_TRUE(content[1]["top_logprobs"].is_array());
  EXPECT_EQ(j["usage"]["total_tokens"], 5);
}

TEST(ServeProtocol, ChatStreamChunks) {
  Response r = sample_response(Endpoint::chat);
  Choice first;
  first.first_delta = true;
  r.choices = {first};
  json j = json::parse(encode_chunk(r));
  EXPECT_EQ(j["object"], "chat.completion.chunk");
  EXPECT_EQ(j["choices"][0]["delta"], (json{{"role", "assistant"}, {"content", ""}}));
  EXPECT_TRUE(j["choices"][0]["finish_reason"].is_null());
  EXPECT_FALSE(j.contains("usage"));

  Choice piece;
  piece.index = 2;
  piece.text = "Hel";
  r.choices = {piece};
  j = json::parse(encode_chunk(r));
  EXPECT_EQ(j["choices"][0]["index"], 2);
  EXPECT_EQ(j["choices"][0]["delta"], (json{{"content", "Hel"}}));

  Choice last;
  last.finish = ChoiceFinish::length;
  r.choices = {last};
  j = json::parse(encode_chunk(r));
  EXPECT_EQ(j["choices"][0]["delta"], json::object());
  EXPECT_EQ(j["choices"][0]["finish_reason"], "length");

  r.choices.clear();
  r.usage = Usage{4, 9};
  j = json::parse(encode_chunk(r));
  EXPECT_EQ(j["choices"], json::array());
  EXPECT_EQ(j["usage"]["total_tokens"], 13);
}

TEST(ServeProtocol, CompletionStreamChunks) {
  Response r = sample_response(Endpoint::completions);
  Choice piece;
  piece.text = "ab";
  piece.logprobs = std::vector<TokenLogprob>{{"ab", -1.0, {{"ab", -1.0}}, std::nullopt}};
  piece.text_offset = 7;
  r.choices = {piece};
  const json j = json::parse(encode_chunk(r));
  EXPECT_EQ(j["object"], "text_completion");
  EXPECT_EQ(j["choices"][0]["text"], "ab");
  EXPECT_TRUE(j["choices"][0]["finish_reason"].is_null());
  EXPECT_EQ(j["choices"][0]["logprobs"]["text_offset"], json::array({7}));
}

TEST(ServeProtocol, ModelList) {
  const json j = json::parse(encode_model_list(kModel, 1700000001));
  EXPECT_EQ(j["object"], "list");
  ASSERT_EQ(j["data"].size(), 1u);
  EXPECT_EQ(j["data"][0]["id"], kModel.name);
  EXPECT_EQ(j["data"][0]["object"], "model");
  EXPECT_EQ(j["data"][0]["created"], 1700000001);
  EXPECT_EQ(j["data"][0]["owned_by"], "origami");
  EXPECT_EQ(j["data"][0]["max_model_len"], kModel.context);
}

TEST(ServeProtocol, ResponseIds) {
  std::set<std::string> ids;
  for (int i = 0; i < 100; ++i) ids.insert(new_response_id(Endpoint::completions));
  EXPECT_EQ(ids.size(), 100u);
  const std::string id = *ids.begin();
  EXPECT_EQ(id.rfind("cmpl-", 0), 0u);
  EXPECT_EQ(id.size(), 5u + 24u);
  EXPECT_EQ(new_response_id(Endpoint::chat).rfind("chatcmpl-", 0), 0u);
}

TEST(ServeProtocol, SseFraming) {
  EXPECT_EQ(sse_event(R"({"a":1})"), "data: {\"a\":1}\n\n");
  EXPECT_EQ(kSseDone, "data: [DONE]\n\n");
  // An encoded chunk is one line: the event cannot be split by a newline in the text.
  Response r = sample_response(Endpoint::chat);
  Choice c;
  c.text = "line one\nline two\r\n";
  r.choices = {c};
  const std::string event = sse_event(encode_chunk(r));
  EXPECT_EQ(event.find('\n'), event.size() - 2);
  EXPECT_EQ(event.rfind("data: ", 0), 0u);
  const json back = json::parse(event.substr(6));
  EXPECT_EQ(back["choices"][0]["delta"]["content"], c.text);
}

}  // namespace
}  // namespace origami::serve
