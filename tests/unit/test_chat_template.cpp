// Chat templates (runtime/chat_template.h).
//
// ChatTemplate: the language (expected outputs worked out with jinja2 and written here), errors
// and their messages, real templates rendering known prompts, loading tokenizer_config.json.
// ChatTemplateGolden (ctest label golden, unit.chat_template_golden): the real templates of
// tests/golden/chat_templates/ over many conversations, and a corpus of language snippets, are
// rendered by ChatTemplate and by jinja2 as transformers configures it
// (tests/golden/render_chat_template.py, one Python process per test); outputs must be equal byte
// for byte, and where jinja2 fails ChatTemplate must throw TemplateError (with the template's own
// message for raise_exception).
#include "runtime/chat_template.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "tests/support/errors.h"

namespace origami {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::ordered_json;
using test::error_of;
using test::mentions;

const json kTwoMessages = json::parse(
    R"([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}])");

std::string render(const std::string& source, const json& extra = json::object(),
                   const json& messages = kTwoMessages) {
  return ChatTemplate(source).render(messages, false, extra);
}

std::string template_path(const std::string& file) {
  return std::string(ORIGAMI_SOURCE_DIR) + "/tests/golden/chat_templates/" + file;
}

std::string read_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

// A fresh folder under the system's temporary folder, removed at the end of the scope.
class ScratchDir {
 public:
  ScratchDir() {
    static std::atomic<int> counter{0};
    path_ = fs::temp_directory_path() /
            ("origami_chat_template_" + std::to_string(getpid()) + "_" + std::to_string(counter++));
    fs::create_directories(path_);
  }
  ~ScratchDir() { fs::remove_all(path_); }
  const fs::path& path() const { return path_; }
  fs::path write(const std::string& name, const std::string& text) const {
    std::ofstream(path_ / name, std::ios::binary) << text;
    return path_ / name;
  }

 private:
  fs::path path_;
};

// Template text -> the output jinja2 gives for it (messages: kTwoMessages, no other variables).
struct Expected {
  const char* source;
  const char* output;
};

void expect_outputs(const std::vector<Expected>& table) {
  for (const auto& [source, output] : table) {
    SCOPED_TRACE(source);
    try {
      EXPECT_EQ(render(source), output);
    } catch (const Error& e) {
      ADD_FAILURE() << "threw: " << e.what();
    }
  }
}

// ---- the language -------------------------------------------------------------------------------
// A template from elsewhere (origami serve --chat-template) takes the special tokens of the
// model's tokenizer_config.json: a string or {"content": ...}, as transformers reads them.
TEST(ChatTemplate, SpecialTokensOfAConfigForAnotherTemplate) {
  const std::filesystem::path dir =
      std::filesystem::temp_directory_path() / ("origami_ct_" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  {
    std::ofstream f(dir / "tokenizer_config.json");
    f << R"({"bos_token": {"content": "<s>", "lstrip": false}, "eos_token": "</s>"})";
  }
  ChatTemplate t(
      "{{ bos_token }}{% for m in messages %}{{ m.content }}{% endfor %}{{ eos_token }}");
  const nlohmann::ordered_json messages =
      nlohmann::ordered_json::parse(R"([{"role": "user", "content": "hi"}])");
  EXPECT_EQ(t.render(messages, false), "hi");  // undefined names render as ""
  t.use_special_tokens_of((dir / "tokenizer_config.json").string());
  EXPECT_EQ(t.render(messages, false), "<s>hi</s>");
  std::filesystem::remove_all(dir);
}

TEST(ChatTemplate, Expressions) {
  expect_outputs({
      {"{{ 1 + 2 * 3 }}|{{ (1 + 2) * 3 }}|{{ 7 // 2 }}|{{ -7 // 2 }}|{{ -7 % 3 }}|{{ 7 / 2 }}|"
       "{{ 2 ** 10 }}|{{ -2 ** 2 }}",
       "7|9|3|-4|2|3.5|1024|4"},
      {"{{ 'a' ~ 1 ~ none ~ nothing }}|{{ 'ab' * 2 }}|{{ [1] + [2] }}|"
       "{{ 'x' ~ 1 + 2 if false else 'y' }}",
       "a1None|abab|[1, 2]|y"},
      {"{{ 1.0 }} {{ 0.00001 }} {{ 1e16 }} {{ 0.1 + 0.2 }} {{ 2.5e-3 }} {{ 1_000 }}",
       "1.0 1e-05 1e+16 0.30000000000000004 0.0025 1000"},
      {R"({{ 'tab\there' }}|{{ "it's" }}|{{ 'a' "b" }}|{{ '\u00e9\x41\101' }}|{{ 'no\qescape' }})",
       "tab\there|it's|ab|\u00e9AA|no\\qescape"},
      {R"({{ [1, 'a', none, true, {'k': "it's"}] }}|{{ (1,) }}|{{ (1, 2) }}|{{ {'b': 1, 'a': [2]} }})",
       R"([1, 'a', None, True, {'k': "it's"}]|(1,)|(1, 2)|{'b': 1, 'a': [2]})"},
      {"{{ 1 < 2 < 3 }} {{ 3 > 2 > 2 }} {{ 1 == 1.0 }} {{ true == 1 }} {{ 'b' in 'abc' }} "
       "{{ 'x' not in ['x'] }} {{ 'k' in {'k': 1} }} {{ [1, 2] < [1, 3] }}",
       "True False True True True False True True"},
      {"{{ 0 or 'y' }} {{ 1 and 'x' }} {{ not none }} {{ none or '' }}|"
       "{{ 'a' if true else 'b' }}{{ 'c' if false }}.",
       "y x True |a."},
      {"{{ [1, 2, 3, 4][1:3] }} {{ [1, 2, 3][::-1] }} {{ 'h\u00e9llo'[1:3] }} {{ 'abc'[-1] }} "
       "{{ [1, 2][-5:] }} {{ [1, 2][7] }}|",
       "[2, 3] [3, 2, 1] \u00e9l c [1, 2] |"},
      {"{{ messages[0].role }} {{ messages[0]['content'] }} {{ messages.1.role }} "
       "{{ messages[0].missing is defined }} {{ messages[0].get('x', 'd') }} {{ messages|length }}",
       "user Hi assistant False d 2"},
  });
}

TEST(ChatTemplate, FiltersTestsAndMethods) {
  expect_outputs({
      {"{{ '  a b  '|trim }}|{{ 'xxaxx'|trim('x') }}|{{ '\u00e9\u4e2d'|length }}|{{ 'Ab'|upper }}"
       "{{ 'Ab'|lower }}|{{ 'hello wORLD'|capitalize }}|{{ 'hello world'|title }}",
       "a b|a|2|ABab|Hello world|Hello World"},
      // Hugging Face's tojson: no HTML escaping, non-ASCII kept, keys in their order.
      {"{{ {'b': 1, 'a': '\u00e9', 'c': [1.5, none, true]}|tojson }}|"
       "{{ {'a': [1, {}], 'b': []}|tojson(indent=2) }}|{{ '<&>'|tojson }}",
       "{\"b\": 1, \"a\": \"\u00e9\", \"c\": [1.5, null, true]}|"
       "{\n  \"a\": [\n    1,\n    {}\n  ],\n  \"b\": []\n}|\"<&>\""},
      {"{{ [1, 2, 3]|join(', ') }}|{{ [1, 2, 3]|first }}{{ [1, 2, 3]|last }}|{{ []|first }}|"
       "{{ nothing|default('d') }}{{ ''|default('e') }}{{ ''|default('e', true) }}",
       "1, 2, 3|13||de"},
      {"{% for k, v in {'b': 1, 'a': 2}|items %}{{ k }}={{ v }} {% endfor %}"
       "{{ {'b': 1, 'a': 2}|dictsort }}",
       "b=1 a=2 [('a', 2), ('b', 1)]"},
      {"{{ messages|selectattr('role', 'equalto', 'user')|map(attribute='content')|list }}|"
       "{{ messages|rejectattr('role', 'equalto', 'user')|list|length }}|"
       "{{ [0, 1, 2]|select|list }}|{{ ['a', 'b']|map('upper')|join }}",
       "['Hi']|1|[1, 2]|AB"},
      {"{{ 'a-b-c'|replace('-', '+') }}|{{ 'a-b-c'|replace('-', '+', 1) }}|"
       "{{ 1|string ~ none|string }}|{{ [3, 1, 2]|sort }}|{{ [1, 1, 2]|unique|list }}|"
       "{{ [1, 2]|reverse|list }}|{{ 'ab'|reverse }}|{{ '42'|int + 1 }}|{{ 'a\\nb'|indent(2) }}|"
       "{{ [1, 2]|sum }}|{{ [2, 1]|min }}{{ [2, 1]|max }}",
       "a+b+c|a+b-c|1None|[1, 2, 3]|[1, 2]|[2, 1]|ba|43|a\n  b|3|12"},
      {"{{ x is defined }}{{ x is undefined }}{{ none is none }}{{ 'a' is string }}"
       "{{ {} is mapping }}{{ [] is sequence }}{{ 1 is number }}{{ 1 is integer }}"
       "{{ 1.5 is float }}{{ false is false }}{{ true is boolean }}{{ 3 is odd }}"
       "{{ 9 is divisibleby 3 }}{{ 2 is in [1, 2] }}{{ 'a' is eq 'a' }}{{ 1 is not sameas 2 }}",
       "FalseTrueTrueTrueTrueTrueTrueTrueTrueTrueTrueTrueTrueTrueTrueTrue"},
      {"{{ ' a '.strip() }}|{{ 'xay'.lstrip('x') }}|{{ 'a,b,,c'.split(',') }}|"
       "{{ ' a  b '.split() }}|{{ 'a<b>c'.split('<', 1)[-1] }}|{{ 'abc'.startswith('ab') }}"
       "{{ 'abc'.endswith(('x', 'c')) }}|{{ 'Ab'.upper() }}{{ 'Ab'.lower() }}|"
       "{{ 'a-a'.replace('a', 'b') }}|{{ {'a': 1}.items()|list }}|{{ {'a': 1}.get('b', 0) }}",
       "a|ay|['a', 'b', '', 'c']|['a', 'b']|b>c|TrueTrue|ABab|b-b|[('a', 1)]|0"},
  });
}

TEST(ChatTemplate, WhitespaceControl) {
  expect_outputs({
      // lstrip_blocks takes a block tag's indentation, trim_blocks the newline after it.
      {"  {% if true %}\n  yes\n  {% endif %}\nend\n", "  yes\nend"},
      {"{%- if true -%}\n  a  \n{%- endif -%}\n  b {{- ' c ' -}} d", "ab c d"},
      // {%+ keeps the indentation; a comment alone on its line leaves nothing; one trailing
      // newline of the template is dropped.
      {"x\n    {%+ if true %}y{% endif %}\n{# comment #}\nz {# inline #} w\n\n", "x\n    yz  w\n"},
      {"a\r\nb\r\n{% if true %}\r\nc\r\n{% endif %}\r\n", "a\nb\nc\n"},
      {"{{ 'v' }}\n{{ 'w' }}\n", "v\nw"},  // no trimming after }}
      {"{% raw %}{{ kept }}{% endraw %}", "{{ kept }}"},
  });
}

TEST(ChatTemplate, LoopsScopesAndMacros) {
  expect_outputs({
      {"{% for x in ['a', 'b', 'c'] %}{{ loop.index }}{{ loop.index0 }}{{ loop.revindex }}"
       "{{ loop.first }}{{ loop.last }}{{ loop.length }}{{ loop.previtem }}"
       "{{ loop.cycle('o', 'e') }} {% endfor %}",
       "103TrueFalse3o 212FalseFalse3ae 321FalseTrue3bo "},
      {"{% for x in [] %}x{% else %}empty{% endfor %}|"
       "{% for x in [1, 2, 3, 4, 5] if x is odd %}{{ x }}/{{ loop.length }} {% endfor %}|"
       "{% for x in range(10) %}{% if x == 3 %}{% break %}{% endif %}"
       "{% if x == 1 %}{% continue %}{% endif %}{{ x }}{% endfor %}",
       "empty|1/3 3/3 5/3 |02"},
      {"{% for k, v in [('a', 1), ('b', 2)] %}{{ k }}{{ v }}{% endfor %}|"
       "{% for c in 'ab' %}{{ c }}{% endfor %}|{% for k in {'z': 1, 'a': 2} %}{{ k }}{% endfor %}|"
       "{% for x in nothing %}never{% endfor %}",
       "a1b2|ab|za|"},
      // A loop body's set is gone at the next iteration and after the loop; an if's is not.
      {"{% set x = 'top' %}{% for i in [1, 2] %}[{{ x }}]{% set x = i %}[{{ x }}]{% endfor %}"
       "[{{ x }}]{% if true %}{% set y = 'leaks' %}{% endif %}{{ y }}",
       "[top][1][top][2][top]leaks"},
      {"{% set ns = namespace(count=0, seen='') %}{% for m in messages %}"
       "{% set ns.count = ns.count + 1 %}{% set ns.seen = ns.seen ~ m.role[0] %}{% endfor %}"
       "{{ ns.count }} {{ ns.seen }}",
       "2 ua"},
      {"{% set a, b = [1, 2] %}{{ a }}{{ b }}|{% set block %}x={{ a }}{% endset %}{{ block }}|"
       "{% set up | upper %}shout{% endset %}{{ up }}|{% filter upper %}f{{ 'g' }}{% endfilter %}",
       "12|x=1|SHOUT|FG"},
      {"{% macro item(name, mark='*') -%}\n{{ mark }} {{ name }}\n{%- endmacro %}\n"
       "{{ item('a') }}|{{ item('b', mark='-') }}|{{ item(name='c') }}",
       "* a|- b|* c"},
      // jinja2's default Undefined: empty, falsy, iterates as empty.
      {"[{{ nothing }}]{{ nothing is defined }}{{ nothing|length }}{{ not nothing }}"
       "{% if nothing %}x{% endif %}{{ nothing ~ 'a' }}{{ nothing|default('d') }}"
       "{{ 'a' in nothing }}",
       "[]False0TrueadFalse"},
  });
}

TEST(ChatTemplate, RenderVariables) {
  const std::string source =
      "{{ bos_token }}|{{ tools }}|{{ documents }}|{{ add_generation_prompt }}|{{ custom }}|"
      "{{ messages|length }}";
  EXPECT_EQ(ChatTemplate(source).render(kTwoMessages, true), "|None|None|True||2");
  EXPECT_EQ(ChatTemplate(source).render(kTwoMessages, false,
                                        {{"bos_token", "<s>"}, {"custom", {1, "a"}}}),
            "<s>|None|None|False|[1, 'a']|2");
  // Key order is the caller's, as Python's dicts keep it.
  const json tools = json::parse(R"([{"name": "f", "arguments": {"z": 1, "a": 2}}])");
  EXPECT_EQ(ChatTemplate("{{ tools|tojson }}").render(kTwoMessages, false, {{"tools", tools}}),
            R"([{"name": "f", "arguments": {"z": 1, "a": 2}}])");
  EXPECT_TRUE(mentions(error_of([&] {
                         ChatTemplate("x").render(kTwoMessages, false, {{"messages", 1}});
                       }),
                       {"'messages' is set by render()"}));
  // Copies share one parse; renders share nothing.
  const ChatTemplate original("{{ messages[0].content }}");
  const ChatTemplate copy = original;
  EXPECT_EQ(copy.render(kTwoMessages, false), "Hi");
}

// ---- errors ------------------------------------------------------------------------------------
TEST(ChatTemplate, SyntaxErrorsNameLineColumnAndConstruct) {
  const auto parse_error = [](const std::string& source) {
    return error_of([&] { ChatTemplate t(source); });
  };
  EXPECT_TRUE(mentions(parse_error("{% if x %}\n  {{ 1 + }}\n{% endif %}"),
                       {"chat template", "unexpected '}}'", "line 2, column 10"}));
  EXPECT_TRUE(mentions(parse_error("ok\n{% include 'other.jinja' %}"),
                       {"tag 'include' is not supported", "line 2, column 4"}));
  EXPECT_TRUE(mentions(parse_error("{% for x in y %}{{ x }}"),
                       {"unexpected end of template, expected 'else' or 'endfor'"}));
  EXPECT_TRUE(mentions(parse_error("{% endif %}"), {"unexpected 'endif'", "line 1"}));
  EXPECT_TRUE(mentions(parse_error("{% break %}"), {"'break' outside of a loop"}));
  EXPECT_TRUE(mentions(parse_error("{{ 'open }}"), {"unterminated string"}));
  EXPECT_TRUE(mentions(parse_error("{# never closed"), {"missing end of comment tag"}));
  EXPECT_TRUE(mentions(parse_error("{{ f(*args) }}"), {"'*' arguments are not supported"}));
  EXPECT_TRUE(mentions(parse_error("{% for x in y recursive %}{% endfor %}"),
                       {"recursive loops are not supported"}));
  EXPECT_TRUE(mentions(parse_error("{{ x ? y }}"), {"unexpected character '?'", "column 6"}));
}

TEST(ChatTemplate, RenderErrorsAreTemplateErrors) {
  const auto render_error = [](const std::string& source) -> std::string {
    try {
      ChatTemplate(source).render(kTwoMessages, false);
    } catch (const TemplateError& e) {
      return e.what();
    } catch (const Error& e) {
      return std::string("not a TemplateError: ") + e.what();
    }
    return "(no error)";
  };
  // raise_exception: the template's own message, as the user should read it.
  EXPECT_EQ(render_error("{{ raise_exception('Conversation roles must alternate') }}"),
            "Conversation roles must alternate");
  // A filter that is not there parses (it may sit in a branch never taken) and fails when met.
  EXPECT_EQ(render("{% if false %}{{ x|frobnicate }}{% endif %}ok"), "ok");
  EXPECT_TRUE(
      mentions(render_error("\n  {{ messages|frobnicate }}"),
               {"chat template: filter 'frobnicate' is not supported", "line 2, column 15"}));
  EXPECT_TRUE(
      mentions(render_error("{{ 1 is frobnicated }}"), {"test 'frobnicated' is not supported"}));
  EXPECT_TRUE(mentions(render_error("{{ 1 < 'a' }}"),
                       {"'<' not supported between instances of 'int' and 'str'", "line 1"}));
  EXPECT_TRUE(
      mentions(render_error("{{ 'a' + 1 }}"), {"can only concatenate str (not \"int\") to str"}));
  EXPECT_TRUE(mentions(render_error("{{ nothing.attr }}"), {"'nothing' is undefined"}));
  EXPECT_TRUE(mentions(render_error("{{ nothing + 1 }}"), {"'nothing' is undefined"}));
  EXPECT_TRUE(
      mentions(render_error("{{ messages.append(1) }}"), {"'append' of 'list' object is unsafe"}));
  EXPECT_TRUE(
      mentions(render_error("{% set x = 1 %}{% set x.y = 2 %}"), {"not a namespace() object"}));
  EXPECT_TRUE(mentions(render_error("{% for a, b in [1] %}{% endfor %}"),
                       {"'int' object is not iterable"}));
  EXPECT_TRUE(mentions(render_error("{{ 1 / 0 }}"), {"division by zero"}));
  // Integers are 64-bit: past that a render fails (Python would go on), never wraps around.
  for (const char* overflow :
       {"{{ 9223372036854775807 + 1 }}", "{{ 2 ** 63 }}", "{{ -9223372036854775807 - 2 }}",
        "{{ 4294967296 * 4294967296 }}", "{{ 1e19|int }}", "{{ '99999999999999999999'|int }}"})
    EXPECT_TRUE(mentions(render_error(overflow), {"integer beyond the 64-bit range"})) << overflow;
  EXPECT_TRUE(mentions(render_error("{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}"),
                       {"maximum recursion depth exceeded"}));
  EXPECT_TRUE(mentions(render_error("{{ 'x'|tojson(bogus=1) }}"),
                       {"filter 'tojson' got an unexpected keyword argument 'bogus'"}));
}

// ---- real templates (known prompts; the golden tests below check many more) ---------------------
TEST(ChatTemplate, RealTemplatesRenderKnownPrompts) {
  const auto messages = [](const char* text) { return json::parse(text); };
  const auto render_file = [](const std::string& file, const json& msgs, bool prompt,
                              const json& tokens) {
    return ChatTemplate(read_file(template_path(file))).render(msgs, prompt, tokens);
  };
  EXPECT_EQ(render_file("meta-llama-Llama-3.1-8B-Instruct.jinja",
                        messages(R"([{"role": "system", "content": "Be brief."},
                                     {"role": "user", "content": "Hello!"}])"),
                        true, {{"bos_token", "<|begin_of_text|>"}, {"eos_token", "<|eot_id|>"}}),
            "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge "
            "Date: December 2023\nToday Date: 26 Jul 2024\n\nBe brief.<|eot_id|><|start_header_id|>"
            "user<|end_header_id|>\n\nHello!<|eot_id|><|start_header_id|>assistant"
            "<|end_header_id|>\n\n");
  EXPECT_EQ(render_file("Qwen-Qwen2.5-7B-Instruct.jinja",
                        messages(R"([{"role": "user", "content": "Hello!"}])"), true,
                        {{"bos_token", nullptr}, {"eos_token", "<|im_end|>"}}),
            "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful "
            "assistant.<|im_end|>\n<|im_start|>user\nHello!<|im_end|>\n<|im_start|>assistant\n");
  const json three_turns = messages(R"([{"role": "user", "content": "Hi"},
                                        {"role": "assistant", "content": "Hello"},
                                        {"role": "user", "content": "Bye"}])");
  EXPECT_EQ(render_file("google-gemma-2-2b-it.jinja", three_turns, true,
                        {{"bos_token", "<bos>"}, {"eos_token", "<eos>"}}),
            "<bos><start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\nHello<end_of_turn>\n"
            "<start_of_turn>user\nBye<end_of_turn>\n<start_of_turn>model\n");
  EXPECT_EQ(render_file("microsoft-Phi-3.5-mini-instruct.jinja",
                        messages(R"([{"role": "system", "content": "Be brief."},
                                     {"role": "user", "content": "Hello!"}])"),
                        false, {{"bos_token", "<s>"}, {"eos_token", "<|endoftext|>"}}),
            "<|system|>\nBe brief.<|end|>\n<|user|>\nHello!<|end|>\n<|endoftext|>");
  json with_system = three_turns;
  with_system.insert(with_system.begin(), json{{"role", "system"}, {"content", "Be brief."}});
  EXPECT_EQ(render_file("mistralai-Mistral-Nemo-Instruct-2407.jinja", with_system, true,
                        {{"bos_token", "<s>"}, {"eos_token", "</s>"}}),
            "<s>[INST]Hi[/INST]Hello</s>[INST]Be brief.\n\nBye[/INST]");
  EXPECT_EQ(render_file("deepseek-ai-DeepSeek-R1-Distill-Llama-8B.jinja",
                        messages(R"([{"role": "user", "content": "Hi"},
                                     {"role": "assistant", "content": "<think>hmm</think>Hello"},
                                     {"role": "user", "content": "Bye"}])"),
                        true,
                        {{"bos_token", "<\uff5cbegin\u2581of\u2581sentence\uff5c>"},
                         {"eos_token", "<\uff5cend\u2581of\u2581sentence\uff5c>"}}),
            "<\uff5cbegin\u2581of\u2581sentence\uff5c><\uff5cUser\uff5c>Hi<\uff5cAssistant\uff5c>"
            "Hello<\uff5cend\u2581of\u2581sentence\uff5c><\uff5cUser\uff5c>Bye"
            "<\uff5cAssistant\uff5c><think>\n");
  // The template's own checks reach the caller as TemplateError with its words.
  try {
    render_file("google-gemma-2-2b-it.jinja", with_system, true, json::object());
    ADD_FAILURE() << "gemma accepted a system message";
  } catch (const TemplateError& e) {
    EXPECT_STREQ(e.what(), "System role not supported");
  }
}

// ---- tokenizer_config.json ---------------------------------------------------------------------
TEST(ChatTemplate, FromTokenizerConfig) {
  ScratchDir dir;
  const json config = {{"bos_token", {{"content", "<s>"}, {"lstrip", false}}},
                       {"eos_token", "</s>"},
                       {"unk_token", nullptr},
                       {"chat_template",
                        "{{ bos_token }}{% for m in messages %}{{ m.content }}{{ eos_token }}"
                        "{% endfor %}"}};
  const ChatTemplate t = ChatTemplate::from_tokenizer_config(
      dir.write("tokenizer_config.json", config.dump()).string());
  EXPECT_EQ(t.render(kTwoMessages, false), "<s>Hi</s>Hello</s>");
  EXPECT_EQ(t.special_tokens(), json({{"bos_token", "<s>"}, {"eos_token", "</s>"}}));
  EXPECT_EQ(t.render(kTwoMessages, false, {{"eos_token", "|"}}), "<s>Hi|Hello|");  // extra wins

  // The list form: the entry named "default".
  const json named = {{"chat_template",
                       {{{"name", "tool_use"}, {"template", "tools"}},
                        {{"name", "default"}, {"template", "default {{ messages|length }}"}}}}};
  EXPECT_EQ(ChatTemplate::from_tokenizer_config(dir.write("named.json", named.dump()).string())
                .render(kTwoMessages, false),
            "default 2");
  const json no_default = {{"chat_template", {{{"name", "rag"}, {"template", "x"}}}}};
  EXPECT_TRUE(mentions(error_of([&] {
                         ChatTemplate::from_tokenizer_config(
                             dir.write("no_default.json", no_default.dump()).string());
                       }),
                       {"\"rag\"", "none \"default\""}));

  // No template in the config: chat_template.jinja beside it, else an error that says so.
  ScratchDir bare;
  const std::string bare_config = bare.write("tokenizer_config.json", "{}").string();
  EXPECT_TRUE(mentions(error_of([&] { ChatTemplate::from_tokenizer_config(bare_config); }),
                       {"has no \"chat_template\"", "chat_template.jinja"}));
  bare.write("chat_template.jinja", "beside {{ messages[0].role }}\n");
  EXPECT_EQ(ChatTemplate::from_tokenizer_config(bare_config).render(kTwoMessages, false),
            "beside user");

  EXPECT_TRUE(mentions(
      error_of([&] { ChatTemplate::from_tokenizer_config(dir.write("bad.json", "{").string()); }),
      {"is not valid JSON"}));
  EXPECT_TRUE(mentions(error_of([&] {
                         ChatTemplate::from_tokenizer_config(
                             (dir.path() / "missing.json").string());
                       }),
                       {"cannot read"}));
  const json broken = {{"chat_template", "{% if %}"}};
  EXPECT_TRUE(mentions(error_of([&] {
                         ChatTemplate::from_tokenizer_config(
                             dir.write("broken.json", broken.dump()).string());
                       }),
                       {"line 1", "broken.json"}));
}

// ---- golden: ChatTemplate against jinja2
// ---------------------------------------------------------
struct Render {
  std::string label;
  std::string source;  // the template
  json messages;
  bool add_generation_prompt = false;
  json extra = json::object();
};

// What one render gave: the text, or the error.
struct Outcome {
  bool ok = false;
  bool template_error = false;  // the error was a TemplateError
  std::string text;
};

Outcome render_with_origami(const Render& r) {
  try {
    return {true, false,
            ChatTemplate(r.source).render(r.messages, r.add_generation_prompt, r.extra)};
  } catch (const TemplateError& e) {
    return {false, true, e.what()};
  } catch (const Error& e) {
    return {false, false, e.what()};
  }
}

// jinja2's result of every case (one Python process), or an empty list after ADD_FAILURE.
json render_with_jinja2(const std::vector<Render>& renders) {
  ScratchDir dir;
  json cases = json::array();
  for (const Render& r : renders)
    cases.push_back({{"template", r.source},
                     {"messages", r.messages},
                     {"add_generation_prompt", r.add_generation_prompt},
                     {"extra", r.extra}});
  const fs::path in = dir.write("cases.json", cases.dump());
  const fs::path out = dir.path() / "results.json", log = dir.path() / "log.txt";
  const std::string cmd = std::string("\"") + ORIGAMI_PYTHON + "\" \"" + ORIGAMI_SOURCE_DIR +
                          "/tests/golden/render_chat_template.py\" \"" + in.string() + "\" \"" +
                          out.string() + "\" > \"" + log.string() + "\" 2>&1";
  if (std::system(cmd.c_str()) != 0) {
    ADD_FAILURE() << "the jinja2 reference failed (" << cmd << "); it needs jinja2 in that "
                  << "Python (Debian's python3-jinja2, installed by scripts/setup.sh):\n"
                  << read_file(log);
    return json::array();
  }
  return json::parse(read_file(out));
}

void expect_same_as_jinja2(const std::vector<Render>& renders) {
  // strftime_now reads the clock: a render may cross midnight, so one before and one after.
  std::vector<Outcome> before;
  for (const Render& r : renders) before.push_back(render_with_origami(r));
  const json expected = render_with_jinja2(renders);
  if (expected.size() != renders.size()) return;
  for (size_t i = 0; i < renders.size(); ++i) {
    SCOPED_TRACE("case '" + renders[i].label + "'");
    const json& want = expected[i];
    Outcome got = before[i];
    if (want.contains("output")) {
      if (!got.ok || got.text != want["output"]) got = render_with_origami(renders[i]);
      EXPECT_TRUE(got.ok) << "jinja2 rendered it, ChatTemplate threw: " << got.text;
      if (got.ok) {
        EXPECT_EQ(got.text, want["output"].get<std::string>());
      }
    } else {
      EXPECT_FALSE(got.ok) << "jinja2 failed (" << want["error"] << "), ChatTemplate rendered:\n"
                           << got.text;
      if (got.ok) continue;
      EXPECT_TRUE(got.template_error) << "not a TemplateError: " << got.text;
      if (want["type"] == "TemplateError") {  // raise_exception: the same message
        EXPECT_EQ(got.text, want["error"].get<std::string>());
      }
    }
  }
}

// The conversations every real template is rendered with, with and without a generation prompt,
// along with the model's special tokens.
std::vector<Render> conversations(const std::string& source, const json& special_tokens) {
  const std::string tricky =
      "Line one\nline two with 'single' and \"double\" quotes, a backslash \\ and {{ braces }} "
      "{% tag %}\n\n  indented, unicode: \u00e9 \u4e2d\u6587 \U0001F680, tab\there  ";
  const json tools = json::parse(R"([{"type": "function", "function": {
      "name": "get_weather", "description": "Get the weather",
      "parameters": {"type": "object", "properties": {
          "city": {"type": "string", "description": "City name"},
          "unit": {"type": "string", "enum": ["c", "f"]}}, "required": ["city"]}}}])");
  const json tool_turns = json::parse(R"([
      {"role": "system", "content": "Use tools."},
      {"role": "user", "content": "Weather in Paris?"},
      {"role": "assistant", "content": null, "tool_calls": [{"id": "call12345", "type": "function",
          "function": {"name": "get_weather", "arguments": {"city": "Paris", "unit": "c"}}}]},
      {"role": "tool", "tool_call_id": "call12345", "content": "{\"temp\": 21}"},
      {"role": "assistant", "content": "It is 21 C."}])");
  json tool_turns_text_arguments = tool_turns;  // arguments as a JSON string, content ""
  tool_turns_text_arguments[2]["content"] = "";
  tool_turns_text_arguments[2]["tool_calls"][0]["function"]["arguments"] = R"({"city": "Paris"})";

  const std::vector<std::pair<std::string, json>> chats = {
      {"user", json::parse(R"([{"role": "user", "content": "Hello!"}])")},
      {"system+user", json::parse(R"([{"role": "system", "content": "You are helpful."},
                                      {"role": "user", "content": "Hello!"}])")},
      {"system+multi-turn", json::parse(R"([{"role": "system", "content": "Be brief."},
                                            {"role": "user", "content": "What is 2+2?"},
                                            {"role": "assistant", "content": "4"},
                                            {"role": "user", "content": "And 3+3?"}])")},
      {"multi-turn", json::parse(R"([{"role": "user", "content": "Hi"},
                                     {"role": "assistant", "content": "Hello! How can I help?"},
                                     {"role": "user", "content": "Tell me a joke."},
                                     {"role": "assistant", "content": "Why did the chicken?"}])")},
      {"newlines, quotes, unicode", json::array({{{"role", "system"}, {"content", tricky}},
                                                 {{"role", "user"}, {"content", tricky}},
                                                 {{"role", "assistant"}, {"content", tricky}},
                                                 {{"role", "user"}, {"content", "  padded  "}}})},
      {"empty content", json::parse(R"([{"role": "user", "content": ""},
                                        {"role": "assistant", "content": ""},
                                        {"role": "user", "content": ""}])")},
      {"reasoning", json::parse(R"([{"role": "user", "content": "Think first"},
          {"role": "assistant", "content": "<think>\nsome reasoning\n</think>\n\nThe answer."},
          {"role": "user", "content": "Again"}])")},
      {"two users in a row", json::parse(R"([{"role": "user", "content": "one"},
                                             {"role": "user", "content": "two"}])")},
      {"content as a list of parts", json::parse(R"([
          {"role": "system", "content": [{"type": "text", "text": "Sys"}]},
          {"role": "user", "content": [{"type": "text", "text": "Look"}, {"type": "image"},
                                       {"type": "text", "text": "at this"}]},
          {"role": "assistant", "content": [{"type": "text", "text": "Ok"}]},
          {"role": "user", "content": [{"type": "text", "text": "More"}]}])")},
      {"reasoning fields", json::parse(R"([{"role": "user", "content": "Q"},
          {"role": "assistant", "content": "A", "reasoning_content": "hard", "thinking": "hmm"},
          {"role": "user", "content": "Q2"},
          {"role": "assistant", "content": "A2", "reasoning_content": "more", "thinking": "m"}])")},
      {"system only", json::parse(R"([{"role": "system", "content": "Only system"}])")},
      {"assistant last", json::parse(R"([{"role": "user", "content": "Q"},
                                         {"role": "assistant", "content": "partial"}])")},
  };
  json with_date = special_tokens;
  with_date["date_string"] = "26 Jul 2024";  // Llama 3.x; the others ignore it
  std::vector<Render> renders;
  for (const auto& [label, chat] : chats)
    for (bool prompt : {false, true})
      renders.push_back({label + (prompt ? " +prompt" : ""), source, chat, prompt, with_date});
  json with_tools = with_date;
  with_tools["tools"] = tools;
  for (bool prompt : {false, true}) {
    renders.push_back({std::string("tool calls") + (prompt ? " +prompt" : ""), source, tool_turns,
                       prompt, with_tools});
    renders.push_back({std::string("tool calls, text arguments") + (prompt ? " +prompt" : ""),
                       source, tool_turns_text_arguments, prompt, with_tools});
  }
  // Two calls in one turn, their two results, and the conversation going on after them.
  const json parallel_calls = json::parse(R"([{"role": "user", "content": "Do both"},
      {"role": "assistant", "content": "Sure", "tool_calls": [
          {"id": "abcdefghi", "type": "function", "function": {"name": "get_weather",
              "arguments": {"city": "Oslo", "unit": "c", "extra": {"k": "\u00e9", "n": [1, 2.5]}}}},
          {"id": "jklmnopqr", "type": "function", "function": {"name": "get_weather",
              "arguments": {}}}]},
      {"role": "tool", "tool_call_id": "abcdefghi", "name": "get_weather", "content": "1"},
      {"role": "tool", "tool_call_id": "jklmnopqr", "name": "get_weather",
       "content": "{\"a\": [1, 2.5, null]}"},
      {"role": "assistant", "content": "Done"}, {"role": "user", "content": "thanks"}])");
  for (bool prompt : {false, true})
    renders.push_back({std::string("parallel tool calls") + (prompt ? " +prompt" : ""), source,
                       parallel_calls, prompt, with_tools});
  json tools_in_system = with_tools;  // Llama 3.1's other tool layouts
  tools_in_system["tools_in_user_message"] = false;
  tools_in_system["builtin_tools"] = {"code_interpreter", "brave_search"};
  renders.push_back({"tools in the system message", source, tool_turns, true, tools_in_system});
  renders.push_back({"today's date (strftime_now)", source, chats[0].second, true, special_tokens});
  json thinking = with_date;
  thinking["enable_thinking"] = false;
  thinking["thinking"] = true;
  renders.push_back({"thinking switches", source, chats[6].second, true, thinking});
  return renders;
}

void expect_family_matches_jinja2(const std::string& file, const json& bos, const json& eos) {
  expect_same_as_jinja2(
      conversations(read_file(template_path(file)), {{"bos_token", bos}, {"eos_token", eos}}));
}

TEST(ChatTemplateGolden, Llama31) {
  expect_family_matches_jinja2("meta-llama-Llama-3.1-8B-Instruct.jinja", "<|begin_of_text|>",
                               "<|eot_id|>");
}
TEST(ChatTemplateGolden, Llama32) {
  expect_family_matches_jinja2("meta-llama-Llama-3.2-3B-Instruct.jinja", "<|begin_of_text|>",
                               "<|eot_id|>");
}
TEST(ChatTemplateGolden, Qwen25) {
  expect_family_matches_jinja2("Qwen-Qwen2.5-7B-Instruct.jinja", nullptr, "<|im_end|>");
}
TEST(ChatTemplateGolden, Qwen3) {
  expect_family_matches_jinja2("Qwen-Qwen3-0.6B.jinja", nullptr, "<|im_end|>");
}
TEST(ChatTemplateGolden, MistralNemo) {
  expect_family_matches_jinja2("mistralai-Mistral-Nemo-Instruct-2407.jinja", "<s>", "</s>");
}
TEST(ChatTemplateGolden, MistralSmall32) {
  expect_family_matches_jinja2("Mistral-Small-3.2-24B-Instruct-2506.jinja", "<s>", "</s>");
}
TEST(ChatTemplateGolden, Gemma2) {
  expect_family_matches_jinja2("google-gemma-2-2b-it.jinja", "<bos>", "<eos>");
}
TEST(ChatTemplateGolden, Phi35) {
  expect_family_matches_jinja2("microsoft-Phi-3.5-mini-instruct.jinja", "<s>", "<|endoftext|>");
}
TEST(ChatTemplateGolden, DeepSeekR1DistillLlama) {
  expect_family_matches_jinja2("deepseek-ai-DeepSeek-R1-Distill-Llama-8B.jinja",
                               "<\uff5cbegin\u2581of\u2581sentence\uff5c>",
                               "<\uff5cend\u2581of\u2581sentence\uff5c>");
}
TEST(ChatTemplateGolden, DeepSeekV31) {
  expect_family_matches_jinja2("deepseek-ai-DeepSeek-V3.1.jinja",
                               "<\uff5cbegin\u2581of\u2581sentence\uff5c>",
                               "<\uff5cend\u2581of\u2581sentence\uff5c>");
}
TEST(ChatTemplateGolden, GptOss) {
  expect_family_matches_jinja2("openai-gpt-oss-120b.jinja", "<|startoftext|>", "<|return|>");
}

// Snippets of the language, each rendered with the same messages and one structured variable.
TEST(ChatTemplateGolden, LanguageSnippets) {
  const std::vector<std::string> snippets = {
      // numbers, strings, containers
      "{{ 1e16 }} {{ 1e15 }} {{ 0.00001 }} {{ 1/3 }} {{ 7 // 2 }} {{ -7 // 2 }} {{ -7 % 3 }} "
      "{{ 2**10 }} {{ 1/2 }} {{ 2.5 * 2 }} {{ 7 % -3 }} {{ 7.5 // 2 }}",
      "{{ 1.0 }} {{ 100.0 }} {{ 1.5e300 }} {{ 1e-7 }} {{ 3.0 * 1e20 }} {{ 123456789.123 }} "
      "{{ -0.0 }} {{ 1e100 }} {{ 12345678901234567.0 }}",
      "{{ 'a' + 'b' }} {{ [1] + [2] }} {{ 'ab' * 3 }} {{ 3 * 'ab' }} {{ [1] * 2 }} {{ 1 + 2.5 }} "
      "{{ true + 1 }} {{ -3 }} {{ +3 }} {{ 10 - 2 * 3 }} {{ 2 ** 3 ** 2 }} {{ 2 ** -1 }}",
      R"({{ 'a\tb\n\x41\u00e9\'"' }} {{ "it's" }} {{ 'a' 'b' }} {{ 'a\qb' }})",
      "{{ true }} {{ none }} {{ True == 1 }} {{ [1, 'a', none, true, 1.5, {'k': 'v'}] }} "
      "{{ (1,) }} {{ (1, 2) }} {{ () }}",
      R"({{ {'a': 1, 'b': {'c': [1, 2]}} }} {{ {'q': "it's"} }} {{ ['a\nb'] }} {{ ["a'b"] }} )"
      R"({{ ['\x01é'] }} {{ {0: 'zero', 1.5: 'x', none: 'n'} }})",
      "{{ 'é'|length }} {{ 'héllo'[1:3] }} {{ ' \u3000x\u3000 '|trim }}|{{ 'ß'|upper }} "
      "{{ 'ÉA'|lower }}",
      "{{ [1,2,3,4,5][::2] }} {{ 'hello'[::-1] }} {{ [1,2,3][5:] }} {{ [1,2,3][-10:2] }} "
      "{{ 'abc'[1:] }} {{ (1, 2, 3)[1:] }}",
      // tests, comparisons, logic
      "{{ x is defined }} {{ x is mapping }} {{ x.a is sequence }} {{ 1 is iterable }} "
      "{{ nothing is iterable }} {{ nothing is sequence }} {{ 'abc' is lower }} {{ 4 is even }} "
      "{{ none is sameas none }} {{ 1 is gt 0 }} {{ 1 is lessthan 0 }} {{ 'a' is in 'abc' }}",
      "{{ 1 != 1.0 }} {{ [1,2] == [1,2] }} {{ {'a': 1} == {'a': 1} }} {{ 'a' < 'b' }} "
      "{{ 'B' < 'a' }} {{ 2 >= 2 }} {{ 1 in [1.0] }} {{ none == none }} {{ nothing == nothing }}",
      "{% set d = {'role': 'x', 'content': 'y'} %}{{ d == {'content': 'y', 'role': 'x'} }} "
      "{{ messages[0] == messages[-1] }} {{ messages[0] in messages }}",
      // filters
      "{{ x|tojson }}|{{ x|tojson(indent=2) }}|{{ x|tojson(sort_keys=true) }}|"
      "{{ x|tojson(separators=(',', ':')) }}|{{ 'é\\u0001\\n\"\\\\'|tojson }}|"
      "{{ 'é'|tojson(ensure_ascii=true) }}",
      "{{ [3,1,2]|sort }} {{ ['b','A','a']|sort }} {{ ['b','A','a']|sort(case_sensitive=true) }} "
      "{{ [3,1,2]|sort(reverse=true) }} {{ "
      "messages|sort(attribute='role')|map(attribute='role')|list }}",
      "{{ 'hello world'|title }} {{ 'a-b c(d'|title }} {{ 'hello world'.title() }} "
      "{{ 'hELLO'|capitalize }} {{ 'abc'.replace('', '-') }}",
      "{{ [{'r': 'u'}, {'r': 'a'}]|selectattr('r', 'equalto', 'u')|list }} "
      "{{ [{'a': {'b': 1}}, {'a': {'b': 0}}]|selectattr('a.b')|list }} "
      "{{ [1, 2, 3, 4]|select('odd')|list }} {{ [1, 2, 3]|reject('equalto', 2)|list }} "
      "{{ none|selectattr('x')|list }} {{ none|map(attribute='x')|list }} "
      "{{ [{'a': 1}, {}]|map(attribute='a', default='z')|list }}",
      "{{ 42|int }} {{ '42'|int }} {{ '4.7'|int }} {{ 'x'|int }} {{ 4.7|int }} {{ '3.5'|float }} "
      "{{ 'x'|float }} {{ 2.5|round }} {{ 3.5|round }} {{ 2.567|round(2) }} {{ -3|abs }}",
      "{{ 'a\\nb\\n\\nc'|indent }}|{{ 'a\\nb'|indent(2, true) }}|{{ 'a\\n\\nb'|indent(2, "
      "blank=true) }}|{{ '<a href=\"x\">&'|e }}|{{ '<b>'|safe + '<i>' }}|{{ 'x' + '<i>'|safe }}",
      "{{ {'b': 2, 'A': 1, 'c': 0}|dictsort }} {{ {'b': 2, 'A': 1, 'c': 0}|dictsort(by='value') }} "
      "{{ {'b': 2, 'a': 1}|dictsort(reverse=true) }} {{ [1, 2, 2]|unique|list }} {{ [3, 1]|min }}",
      "{{ 'abc'|list }} {{ {'a': 1, 'b': 2}|list }} {{ 1|string }} {{ [1, 'a']|string }} "
      "{{ none|string }}|{{ nothing|string }}|{{ nothing|length }}|{{ nothing|join(',') }}|"
      "{{ [1, none]|join('-') }}",
      // methods
      "{{ 'a,b,,c'.split(',') }} {{ ' a  b '.split() }} {{ 'abc'.split('b', 1) }} "
      "{{ ' a  b  c '.split(none, 1) }} {{ ' a  b  c '.rsplit(none, 1) }} {{ 'a,b,c'.rsplit(',', "
      "1) }}",
      "{{ 'abc'.startswith('a') }} {{ 'xxaxx'.strip('x') }}|{{ '  x  '.lstrip() }}|"
      "{{ '  x  '.rstrip() }}|{{ 'a\\nb\\r\\nc'.splitlines() }} {{ 'abcb'.find('b') }} "
      "{{ 'éb'.find('b') }} {{ 'abcb'.count('b') }} {{ '-'.join(['a','b']) }}",
      "{{ '{} and {}'.format('a', 1) }} {{ '{0}{name}'.format('z', name='n') }} "
      "{{ x.get('b') }} {{ x.get('zz') }} {{ x.keys()|list }} {{ x.items()|list|length }}",
      // statements
      "{% for x in 'abc' %}{{ loop.index }}{{ loop.revindex0 }}{{ loop.first }}{{ loop.last }}"
      "{{ loop.previtem }}{{ loop.nextitem }}|{% endfor %}",
      "{% for x in [1,2,3,4,5] if x is odd %}{{ x }}{{ loop.length }}{% if x > 2 %}{% break %}"
      "{% endif %}{% endfor %}{% for x in [1,2,3] %}{% if x == 2 %}{% continue %}{% endif %}"
      "{{ x }}{% endfor %}",
      "{% for i in [1,2] %}{% if i == 1 %}{% set x = 'a' %}{% endif %}[{{ x }}]{% endfor %}"
      "[{{ x }}]",
      "{% set x = 5 %}{% set ns = namespace(v=x) %}{% for i in range(3) %}"
      "{% set ns.v = ns.v + i %}{% endfor %}{{ ns.v }} {{ ns }}",
      "{% set a, b = [1, 2] %}{{ a }}{{ b }}{% set c = 1, 2 %}{{ c }}"
      "{% set d %}inner {{ a }}{% endset %}[{{ d }}]",
      "{% macro greet(name) -%}\nHello {{ name }}!\n{%- endmacro %}\n{{ greet('a') }}\n"
      "{{ greet(name='b') }}{% macro outer() %}<{{ greet('c') }}>{% endmacro %}{{ outer() }}",
      "{% generation %}gen {{ 1 }}{% set inside = 1 %}{% endgeneration %}{{ inside }}",
      "{% raw %}{{ not rendered }}{% endraw %}|{%- raw -%}  {{ x }}  {%- endraw -%}  |",
      // whitespace control
      "  {% if true %}\n  yes\n  {% endif %}\n  {{ 'v' }}  \n{# c #}\nend\n",
      "{%- if true -%}\n  a  \n{%- endif -%}\n  b\n{{- ' c ' -}}\n  d  {#- comment -#}  e\n"
      "{%+ if true %}  f{% endif %}",
      "x\n   {% if true %}\ny\n   {%- endif %}\nz\n\t{# comment #}\nw  {% if true %}v{% endif %}\n",
      "a\r\nb\r\n{% if true %}\r\nc\r\n{% endif %}\r\n",
      "{{- ' leading' }}   \n   {{ 'x' -}}   \n   y",
      "{% if true %}  {% endif %}x {% if true %}\n{% endif %}",
      "{% for m in messages %}\n  {{ m.role }}\n{% endfor %}\n",
      "a\n  {# c #}  \nb\n  {#- c #}\nc  {# c -#}  \n d\n\t {% if true %}\t x{% endif %} \n",
      "  {% raw %}\n  x {{ y }}\n  {% endraw %}\nz",
      "{% for m in messages %}  {{ m.role }}  {% endfor %}\n  {%- for m in messages %}\n"
      "{{ m.role }}\n{% endfor -%}\n  end",
      "line\n    {% set x = 1 %}\n    {{ x }}\n{%- set y = 2 -%}\n    {{ y }}",
      "{{ 'a' }}{#\n multi\n line\n#}\n{{ 'b' }}",
      "{% macro f(a) %}\n  [{{ a }}]\n{% endmacro %}\n{{ f(1) }}{{ f(2)|trim }}",
      "{%- set s -%}\n  hello  \n{%- endset -%}\n[{{ s }}]",
      "text {% if true -%}   \n\n  kept{%- endif %}   \n",
      "{{ '{{' }} {{ '}}' }} {{ '%}' }} {{ \"{%\" }}",
      "{% filter trim %}   spaced   {% endfilter %}|{% filter indent(2) %}a\nb{% endfilter %}",
      // more expressions
      "{% for a in [[1, 2], [3, 4]] %}{% for b in a %}{{ loop.index }}{{ b }}{% endfor %}"
      "{{ loop.index }}{% endfor %}{{ loop is defined }}",
      "{% set ns = namespace(x=[]) %}{% for i in range(3) %}{% set ns.x = ns.x + [i] %}"
      "{% endfor %}{{ ns.x }}",
      "{{ messages|selectattr('role', '==', 'user')|list|length }} "
      "{{ messages|map(attribute='role')|unique|list }} {{ not messages[1:] }} "
      "{{ 'a' == 'a' == true }} {{ 1 < 2 > 0 }} {{ (1 if true else 2) + 1 }}",
      "{{ x.a[1:] }} {{ x['a'][0] + 1 }} {{ x.b - 0.5 }} {{ 'The {0}'.format(x.b) }} "
      "{{ x|items|map('first')|list }} {%- for k, v in x.items() -%}{{ k }}:{{ v|tojson }};"
      "{%- endfor -%}",
      "{{ 5 // 2 * 2.0 }} {{ 2 ** 0.5 * 2 ** 0.5 }} {{ 10 % 3.5 }} {{ -10 % 3.5 }} "
      "{{ 1e300 * 1e300 }} {{ 9223372036854775807 }} {{ -9223372036854775807 - 1 }}",
      "{{ 'ab\\ncd'.split('\\n') }} {{ 'x'.join('abc') }} {{ 'a.b.c'.rsplit('.', 1)[0] }} "
      "{{ messages|tojson(indent=2) }}",
      "{{ '1e400'|float }} {{ '1e-400'|float }} {{ ' 42 '|int }} {{ '4.9e1'|int }} {{ 'nan'|int }} "
      "{{ ''|int(7) }} {{ -3.9|int }} {{ true|int }}",
      // failures (compared as failures; raise_exception by message)
      "{{ raise_exception('Bad: ' ~ 1) }}",
      "{{ nothing.attr }}",
      "{{ 'a' + 1 }}",
      "{{ 1 < 'a' }}",
      "{% if 'a' in none %}{% endif %}",
      "{{ none.x }}|{{ none['x'] }}|{{ 1.x }}",
  };
  const json extra = {{"x", json::parse(R"({"b": 1, "a": [1.0, "é<>&'", null, true], "c": {}})")}};
  std::vector<Render> renders;
  for (const std::string& s : snippets) renders.push_back({s, s, kTwoMessages, false, extra});
  expect_same_as_jinja2(renders);
}

}  // namespace
}  // namespace origami
