// Chat templates: a model's own `chat_template` (from its tokenizer_config.json) rendered in-tree,
// byte for byte as Hugging Face transformers renders it with jinja2 (no C++ Jinja library is
// packaged in Debian):
//   jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
//                                                extensions=[loopcontrols])
//   globals raise_exception(msg) and strftime_now(fmt); tojson as json.dumps(x,
//   ensure_ascii=False, indent=None, separators=None, sort_keys=False), i.e. no HTML escaping
//   and keys in the order given; render(messages=..., tools=None, documents=None,
//   add_generation_prompt=..., bos_token=..., eos_token=..., **extra).
//
// The language is the part of Jinja that chat templates use:
//   - {{ }}, {% %}, {# #}, whitespace control (- and + on either side), {% raw %};
//   - if/elif/else; for/else with `if` filters, tuple unpacking, loop.index/index0/revindex/
//     revindex0/first/last/length/previtem/nextitem/cycle, break/continue; set (names, tuples,
//     ns.attr, {% set x %}...{% endset %}); macro (parameters with defaults); filter blocks;
//     {% generation %} (renders its body);
//   - expressions: literals (strings with Python escapes, ints, floats, true/false/none in both
//     spellings, lists, tuples, dicts), names, .attr, [key], [a:b:c], calls with keyword
//     arguments, not and or, == != < <= > >= in `not in`, + - * / // % ** ~, unary - +,
//     `a if c else b`, tests (`is [not] name`), filters (`|name(args)`);
//   - filters: abs capitalize count d default dictsort e escape first float indent int items join
//     last length list lower map max min reject rejectattr replace reverse round safe select
//     selectattr sort string sum title tojson trim unique upper;
//   - tests: defined undefined none boolean true false integer float number string mapping
//     iterable sequence callable sameas eq equalto ne lt le gt ge in odd even divisibleby lower
//     upper (and the operator spellings == != < <= > >=);
//   - methods of strings (strip lstrip rstrip split rsplit startswith endswith upper lower title
//     capitalize replace find count join splitlines format isdigit isalpha isspace) and of dicts
//     (items keys values get); globals range, namespace, dict, raise_exception, strftime_now.
// Values follow Python: undefined names render as "" and are falsy (jinja2's default
// Undefined: using one in arithmetic or taking its attributes fails), str() of none is "None",
// floats print as Python prints them, strings are sequences of code points.
// Integers are 64-bit: a result beyond that range is an error naming it, never wrapped around.
// range() gives a list (it prints as one, not as "range(0, 3)"); Python attributes of plain
// values that are not listed here (1.5.real, 'a'.center) are undefined.
// Not supported (each a clear error naming it): include/import/extends/blocks, call blocks,
// recursive loops, *args/**kwargs in calls, filters not listed above (format, wordcount,
// groupby, ...), and anything changing a list or dict in place (append, pop, update, ... - the
// immutable sandbox refuses them too).
#pragma once

#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "runtime/error.h"

namespace origami {

// The error a server turns into a 400: thrown by render() for a template's raise_exception(...)
// (what() is the template's own message, as written), a construct met at run time that the
// interpreter does not have, an undefined filter or test, or a type error ("'<' not supported
// between instances of 'str' and 'int' (line 3, column 14)").
struct TemplateError : Error {
  using Error::Error;
};

namespace jinja {
struct Stmt;
}

class ChatTemplate {
 public:
  // Parses once. Throws origami::Error naming the line, column and construct for a syntax error
  // or a tag the interpreter does not have ("chat template: tag 'include' is not supported
  // (line 3, column 4)").
  // Copies share the parsed template.
  explicit ChatTemplate(std::string source);

  // Loads "chat_template" from a tokenizer_config.json: a string, or the list of
  // {"name", "template"} entries (the one named "default"). Special tokens (bos_token, eos_token,
  // unk_token, pad_token, sep_token, cls_token, mask_token: a string or {"content": ...}) become
  // variables of every render, as transformers passes them. Throws origami::Error when the file
  // cannot be read or has no chat template.
  static ChatTemplate from_tokenizer_config(const std::string& path);
  // Takes the special tokens of a tokenizer_config.json (as from_tokenizer_config does) for a
  // template that came from elsewhere. Throws origami::Error when the file cannot be read.
  void use_special_tokens_of(const std::string& path);

  // messages: [{"role": ..., "content": ...}, ...]. extra: more variables (tools, documents,
  // bos_token, enable_thinking, ...), overriding the special tokens. tools and documents are
  // none unless given, as transformers passes them. Objects keep their key order (ordered_json;
  // a plain nlohmann::json converts implicitly, with its keys sorted). Thread-safe: a render
  // shares nothing with other renders.
  std::string render(const nlohmann::ordered_json& messages, bool add_generation_prompt,
                     const nlohmann::ordered_json& extra = nlohmann::ordered_json::object()) const;

  const std::string& source() const { return source_; }
  // The special tokens read by from_tokenizer_config (a JSON object; empty otherwise).
  const nlohmann::ordered_json& special_tokens() const { return special_tokens_; }

 private:
  std::string source_;
  std::shared_ptr<const std::vector<std::unique_ptr<jinja::Stmt>>> body_;
  nlohmann::ordered_json special_tokens_ = nlohmann::ordered_json::object();
};

}  // namespace origami
