// ChatTemplate: loading a model's chat template and rendering conversations with it. The language
// itself lives in chat_template_{value,parse,eval,builtins}.cpp.
#include "runtime/chat_template.h"

#include <filesystem>
#include <fstream>
#include <sstream>

#include "runtime/chat_template_syntax.h"

namespace origami {

using ordered_json = nlohmann::ordered_json;

ChatTemplate::ChatTemplate(std::string source)
    : source_(std::move(source)),
      body_(std::make_shared<const jinja::Body>(jinja::parse_template(source_))) {}

namespace {

ordered_json read_json(const std::filesystem::path& path) {
  std::ifstream in(path);
  if (!in) throw Error("chat template: cannot read " + path.string());
  try {
    return ordered_json::parse(in);
  } catch (const nlohmann::json::exception& e) {
    throw Error("chat template: " + path.string() + " is not valid JSON: " + e.what());
  }
}

// "chat_template" as a string, or the list of {"name", "template"} entries.
std::string template_text(const ordered_json& entry, const std::string& path) {
  if (entry.is_string()) return entry.get<std::string>();
  if (!entry.is_array())
    throw Error("chat template: \"chat_template\" in " + path +
                " must be a string or a list of {\"name\", \"template\"} entries");
  std::string names;
  for (const auto& named : entry) {
    if (!named.is_object() || !named.contains("name") || !named.contains("template")) continue;
    if (named["name"] == "default" && named["template"].is_string())
      return named["template"].get<std::string>();
    names += (names.empty() ? "" : ", ") + named["name"].dump();
  }
  throw Error("chat template: " + path + " names its chat templates (" + names +
              ") but none \"default\"");
}

// The special tokens transformers passes to every render (its special_tokens_map), from a
// tokenizer_config.json.
ordered_json special_tokens_of(const ordered_json& config) {
  ordered_json tokens = ordered_json::object();
  for (const char* key : {"bos_token", "eos_token", "unk_token", "sep_token", "pad_token",
                          "cls_token", "mask_token"}) {
    if (!config.contains(key)) continue;
    const ordered_json& token = config[key];
    if (token.is_string())
      tokens[key] = token;
    else if (token.is_object() && token.contains("content") && token["content"].is_string())
      tokens[key] = token["content"];
  }
  if (config.contains("additional_special_tokens") &&
      config["additional_special_tokens"].is_array() &&
      !config["additional_special_tokens"].empty()) {
    ordered_json list = ordered_json::array();
    for (const auto& token : config["additional_special_tokens"])
      list.push_back(token.is_object() && token.contains("content") ? token["content"] : token);
    tokens["additional_special_tokens"] = list;
  }
  return tokens;
}

}  // namespace

ChatTemplate ChatTemplate::from_tokenizer_config(const std::string& path) {
  const ordered_json config = read_json(path);
  if (!config.is_object()) throw Error("chat template: " + path + " is not a JSON object");
  std::string source;
  if (config.contains("chat_template") && !config["chat_template"].is_null()) {
    source = template_text(config["chat_template"], path);
  } else {
    // Newer checkpoints keep the template in chat_template.jinja beside the config.
    const auto beside = std::filesystem::path(path).parent_path() / "chat_template.jinja";
    std::ifstream in(beside);
    if (!in)
      throw Error("chat template: " + path + " has no \"chat_template\" and there is no " +
                  beside.string() +
                  "; this model ships no chat template, so use the plain "
                  "completions endpoint or supply a template");
    std::ostringstream text;
    text << in.rdbuf();
    source = text.str();
  }
  ChatTemplate result = [&] {
    try {
      return ChatTemplate(std::move(source));
    } catch (const Error& e) {
      throw Error(std::string(e.what()) + " in the chat template of " + path);
    }
  }();
  result.special_tokens_ = special_tokens_of(config);
  return result;
}

void ChatTemplate::use_special_tokens_of(const std::string& path) {
  const ordered_json config = read_json(path);
  if (!config.is_object()) throw Error("chat template: " + path + " is not a JSON object");
  special_tokens_ = special_tokens_of(config);
}

std::string ChatTemplate::render(const ordered_json& messages, bool add_generation_prompt,
                                 const ordered_json& extra) const {
  if (!extra.is_null() && !extra.is_object())
    throw TemplateError("chat template: the extra variables must be a JSON object");
  jinja::Dict context;
  for (const auto& [key, value] : special_tokens_.items())
    context.set(key, jinja::from_json(value));
  context.set("messages", jinja::from_json(messages));
  context.set("tools", jinja::Value::none());
  context.set("documents", jinja::Value::none());
  context.set("add_generation_prompt", jinja::Value(add_generation_prompt));
  if (extra.is_object()) {
    for (const auto& [key, value] : extra.items()) {
      if (key == "messages" || key == "add_generation_prompt")
        throw TemplateError("chat template: '" + key +
                            "' is set by render() and cannot be an extra variable");
      context.set(key, jinja::from_json(value));
    }
  }
  try {
    jinja::Interpreter interpreter(std::move(context));
    std::string out;
    interpreter.exec_body(*body_, out);
    return out;
  } catch (const jinja::Failure& f) {  // one not placed in the template (none should be left)
    throw TemplateError("chat template: " + f.message);
  }
}

}  // namespace origami
