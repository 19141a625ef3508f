// The methods of Python's str and dict that chat templates call ("a b".split(), d.get(k)),
// attribute and item access (jinja2's getattr and getitem) and slicing, and the string
// operations the filters share with them, each as Python does it. Case mapping is Unicode's when
// ICU is built in (as the tokenizers use it), ASCII only otherwise.
#include <algorithm>
#include <optional>

#include "runtime/chat_template_syntax.h"

#if ORIGAMI_TOKENIZER_ICU
#include <unicode/locid.h>
#include <unicode/unistr.h>
#endif

namespace origami::jinja {

namespace {

bool is_digit(char c) {
  return c >= '0' && c <= '9';
}

bool is_cased_letter(uint32_t c) {
  return (c | 0x20) >= 'a' && (c | 0x20) <= 'z';
}

}  // namespace

// ---- str operations shared with the filters -----------------------------------------------------
std::string upper(const std::string& s) {
#if ORIGAMI_TOKENIZER_ICU
  std::string out;
  icu::UnicodeString::fromUTF8(s).toUpper(icu::Locale::getRoot()).toUTF8String(out);
  return out;
#else
  std::string out = s;  // ASCII only without ICU
  for (char& c : out)
    if (c >= 'a' && c <= 'z') c = char(c - 'a' + 'A');
  return out;
#endif
}

std::string lower(const std::string& s) {
#if ORIGAMI_TOKENIZER_ICU
  std::string out;
  icu::UnicodeString::fromUTF8(s).toLower(icu::Locale::getRoot()).toUTF8String(out);
  return out;
#else
  std::string out = s;
  for (char& c : out)
    if (c >= 'A' && c <= 'Z') c = char(c - 'A' + 'a');
  return out;
#endif
}

// First code point upper-cased, the rest lower-cased.
std::string capitalize(const std::string& s) {
  if (s.empty()) return s;
  size_t pos = 0;
  decode_utf8(s, pos);
  return upper(s.substr(0, pos)) + lower(s.substr(pos));
}

// jinja2's |title: words begin after runs of - ( { [ < and white space.
std::string title_filter(const std::string& s) {
  std::string out, run;
  bool run_is_separator = false;
  const auto flush = [&] {
    if (!run.empty()) out += capitalize(run);
    run.clear();
  };
  size_t pos = 0;
  while (pos < s.size()) {
    const size_t start = pos;
    const uint32_t c = decode_utf8(s, pos);
    const bool separator =
        is_python_space(c) || c == '-' || c == '(' || c == '{' || c == '[' || c == '<';
    if (separator != run_is_separator) flush();
    run_is_separator = separator;
    run.append(s, start, pos - start);
  }
  flush();
  return out;
}

// str.strip/lstrip/rstrip: chars none means Python white space.
std::string strip(const std::string& s, const Value& chars, bool left, bool right) {
  std::vector<uint32_t> set;
  if (!chars.is_none() && !chars.is_undefined()) {
    const std::string c = to_str(chars);
    for (size_t pos = 0; pos < c.size();) set.push_back(decode_utf8(c, pos));
  }
  const auto strippable = [&](uint32_t c) {
    return set.empty() && (chars.is_none() || chars.is_undefined())
               ? is_python_space(c)
               : std::find(set.begin(), set.end(), c) != set.end();
  };
  std::vector<std::pair<size_t, uint32_t>> cps;  // byte offset, code point
  for (size_t pos = 0; pos < s.size();) {
    const size_t start = pos;
    cps.emplace_back(start, decode_utf8(s, pos));
  }
  size_t begin = 0, end = cps.size();
  if (left)
    while (begin < end && strippable(cps[begin].second)) ++begin;
  if (right)
    while (end > begin && strippable(cps[end - 1].second)) --end;
  const size_t from = begin < cps.size() ? cps[begin].first : s.size();
  const size_t to = end < cps.size() ? cps[end].first : s.size();
  return s.substr(from, to - from);
}

std::string replace(const std::string& s, const std::string& old, const std::string& with,
                    int64_t count) {
  std::string out;
  int64_t done = 0;
  if (old.empty()) {  // Python inserts `with` around every character
    const auto chars = code_points(s);
    for (const auto& c : chars) {
      if (count < 0 || done < count) {
        out += with;
        ++done;
      }
      out += c;
    }
    if (count < 0 || done < count) out += with;
    return out;
  }
  size_t start = 0, at;
  while ((count < 0 || done < count) && (at = s.find(old, start)) != std::string::npos) {
    out.append(s, start, at - start);
    out += with;
    start = at + old.size();
    ++done;
  }
  return out + s.substr(start);
}

// str.splitlines / the lines jinja2's indent filter sees.
std::vector<std::string> split_lines(const std::string& s, bool keep_ends) {
  std::vector<std::string> lines;
  size_t start = 0;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] != '\n' && s[i] != '\r') continue;
    const size_t end = (s[i] == '\r' && i + 1 < s.size() && s[i + 1] == '\n') ? i + 2 : i + 1;
    lines.push_back(s.substr(start, (keep_ends ? end : i) - start));
    start = end;
    i = end - 1;
  }
  if (start < s.size()) lines.push_back(s.substr(start));
  return lines;
}

List dict_items(const Dict& d) {
  List out;
  for (const auto& [k, v] : d.entries()) out.push_back(Value::tuple({k, v}));
  return out;
}

namespace {

// ---- methods ---------------------------------------------------------------------------------
// str.title(): a letter after a non-letter starts a word (letters: ASCII and all non-ASCII).
std::string title_method(const std::string& s) {
  std::string out;
  bool in_word = false;
  size_t pos = 0;
  while (pos < s.size()) {
    const size_t start = pos;
    const uint32_t c = decode_utf8(s, pos);
    const bool letter = is_cased_letter(c) || c >= 0x80;
    const std::string ch = s.substr(start, pos - start);
    out += letter ? (in_word ? lower(ch) : upper(ch)) : ch;
    in_word = letter;
  }
  return out;
}

// str.split / str.rsplit: sep none splits on runs of white space and drops empty pieces.
List split(const std::string& s, const Value& sep, int64_t maxsplit, bool from_right) {
  std::vector<std::string> parts;
  if (sep.is_none()) {
    std::vector<std::pair<size_t, size_t>> words;  // byte ranges
    size_t pos = 0, word_start = std::string::npos;
    while (pos < s.size()) {
      const size_t start = pos;
      const bool space = is_python_space(decode_utf8(s, pos));
      if (!space && word_start == std::string::npos) word_start = start;
      if (space && word_start != std::string::npos) {
        words.emplace_back(word_start, start);
        word_start = std::string::npos;
      }
    }
    if (word_start != std::string::npos) words.emplace_back(word_start, s.size());
    const size_t limit = maxsplit < 0 ? words.size() : size_t(maxsplit) + 1;
    if (words.size() > limit) {  // the last piece keeps the rest of the string, as written
      if (from_right) {
        const size_t first_kept = words.size() - limit + 1;
        parts.push_back(s.substr(0, words[first_kept - 1].second));
        for (size_t i = first_kept; i < words.size(); ++i)
          parts.push_back(s.substr(words[i].first, words[i].second - words[i].first));
      } else {
        for (size_t i = 0; i + 1 < limit; ++i)
          parts.push_back(s.substr(words[i].first, words[i].second - words[i].first));
        parts.push_back(s.substr(words[limit - 1].first));
      }
    } else {
      for (const auto& [b, e] : words) parts.push_back(s.substr(b, e - b));
    }
  } else {
    const std::string delim = to_str(sep);
    if (delim.empty()) fail("empty separator");
    int64_t splits = 0;
    if (!from_right) {
      size_t start = 0, at;
      while ((maxsplit < 0 || splits < maxsplit) &&
             (at = s.find(delim, start)) != std::string::npos) {
        parts.push_back(s.substr(start, at - start));
        start = at + delim.size();
        ++splits;
      }
      parts.push_back(s.substr(start));
    } else {
      size_t end = s.size();
      while ((maxsplit < 0 || splits < maxsplit) && end >= delim.size()) {
        const size_t at = s.rfind(delim, end - delim.size());
        if (at == std::string::npos) break;
        parts.push_back(s.substr(at + delim.size(), end - at - delim.size()));
        end = at;
        ++splits;
      }
      parts.push_back(s.substr(0, end));
      std::reverse(parts.begin(), parts.end());
    }
  }
  List out;
  for (auto& p : parts) out.emplace_back(std::move(p));
  return out;
}

// "{} and {0} and {name}".format(...): replacement fields without format specs.
std::string format(const std::string& s, const CallArgs& args) {
  std::string out;
  size_t auto_index = 0;
  for (size_t i = 0; i < s.size(); ++i) {
    if ((s[i] == '{' || s[i] == '}') && i + 1 < s.size() && s[i + 1] == s[i]) {
      out += s[i++];
      continue;
    }
    if (s[i] != '{') {
      out += s[i];
      continue;
    }
    const size_t close = s.find('}', i);
    if (close == std::string::npos) fail("single '{' encountered in format string");
    const std::string field = s.substr(i + 1, close - i - 1);
    if (field.find_first_of(":!.[") != std::string::npos)
      fail("format specifications ('" + field + "') are not supported in str.format");
    const Value* v = nullptr;
    if (field.empty() || std::all_of(field.begin(), field.end(), is_digit)) {
      if (field.size() > 6) fail("Replacement index " + field + " out of range");
      const size_t index = field.empty() ? auto_index++ : size_t(std::stoul(field));
      if (index >= args.positional.size())
        fail("Replacement index " + std::to_string(index) + " out of range");
      v = &args.positional[index];
    } else {
      for (const auto& [key, value] : args.keyword)
        if (key == field) v = &value;
      if (!v) fail("KeyError: '" + field + "'");
    }
    out += to_str(*v);
    i = close;
  }
  return out;
}

// Byte offset of a code-point index -> the code-point index of a byte offset.
int64_t code_point_index(const std::string& s, size_t byte_offset) {
  return code_point_count(std::string_view(s).substr(0, byte_offset));
}

bool all_code_points(const std::string& s, bool (*pred)(uint32_t)) {
  if (s.empty()) return false;
  for (size_t pos = 0; pos < s.size();)
    if (!pred(decode_utf8(s, pos))) return false;
  return true;
}

Value string_method(const std::string& name, const std::string& s, CallArgs& args) {
  const std::string what = "str." + name + "()";
  if (name == "strip" || name == "lstrip" || name == "rstrip") {
    Params p(what, args, {"chars"});
    return strip(s, p.get(0), name != "rstrip", name != "lstrip");
  }
  if (name == "split" || name == "rsplit") {
    Params p(what, args, {"sep", "maxsplit"});
    return Value::list(split(s, p.get(0), p.integer(1, -1), name == "rsplit"));
  }
  if (name == "startswith" || name == "endswith") {
    Params p(what, args, {"prefix"});
    const Value arg = p.get(0);
    List candidates = arg.kind() == Value::Kind::tuple ? arg.as_list() : List{arg};
    for (const Value& c : candidates) {
      if (!c.is_string()) fail(what + " takes a string or a tuple of strings, not " + type_name(c));
      const std::string& x = c.as_string();
      if (x.size() <= s.size() &&
          (name == "startswith" ? s.compare(0, x.size(), x)
                                : s.compare(s.size() - x.size(), x.size(), x)) == 0)
        return Value(true);
    }
    return Value(false);
  }
  if (name == "upper" || name == "lower" || name == "title" || name == "capitalize") {
    Params p(what, args, {});
    return Value(name == "upper"   ? upper(s)
                 : name == "lower" ? lower(s)
                 : name == "title" ? title_method(s)
                                   : capitalize(s));
  }
  if (name == "replace") {
    Params p(what, args, {"old", "new", "count"});
    return Value(replace(s, p.text(0), p.text(1), p.integer(2, -1)));
  }
  if (name == "find" || name == "count") {
    Params p(what, args, {"sub"});
    const std::string sub = p.text(0);
    if (name == "find") {
      const size_t at = s.find(sub);
      return Value(at == std::string::npos ? int64_t(-1) : code_point_index(s, at));
    }
    if (sub.empty()) return Value(code_point_count(s) + 1);
    int64_t n = 0;
    for (size_t at = s.find(sub); at != std::string::npos; at = s.find(sub, at + sub.size())) ++n;
    return Value(n);
  }
  if (name == "join") {
    Params p(what, args, {"iterable"});
    std::string out;
    const List items = iterate(p.get(0));
    for (size_t i = 0; i < items.size(); ++i) {
      if (!items[i].is_string())
        fail("sequence item " + std::to_string(i) + ": expected str instance, " +
             type_name(items[i]) + " found");
      out += (i ? s : "") + items[i].as_string();
    }
    return Value(out);
  }
  if (name == "splitlines") {
    Params p(what, args, {"keepends"});
    List out;
    for (auto& line : split_lines(s, p.flag(0))) out.emplace_back(std::move(line));
    return Value::list(std::move(out));
  }
  if (name == "format") return Value(format(s, args));
  Params p(what, args, {});
  if (name == "isdigit")
    return Value(all_code_points(s, [](uint32_t c) { return c >= '0' && c <= '9'; }));
  if (name == "isalpha") return Value(all_code_points(s, is_cased_letter));
  return Value(all_code_points(s, is_python_space));  // isspace
}

Value dict_method(const std::string& name, const Dict& d, CallArgs& args) {
  if (name == "get") {
    Params p("dict.get()", args, {"key", "default"});
    const Value* v = d.find(p.get(0));
    return v ? *v : p.get(1);
  }
  Params p("dict." + name + "()", args, {});
  List out;
  for (const auto& [k, v] : d.entries()) {
    if (name == "items")
      out.push_back(Value::tuple({k, v}));
    else if (name == "keys")
      out.push_back(k);
    else
      out.push_back(v);  // values
  }
  return Value::list(std::move(out));
}

const std::vector<std::string> kStringMethods = {
    "strip", "lstrip",     "rstrip", "split",      "rsplit",  "startswith", "endswith",
    "upper", "lower",      "title",  "capitalize", "replace", "find",       "count",
    "join",  "splitlines", "format", "isdigit",    "isalpha", "isspace"};
const std::vector<std::string> kDictMethods = {"items", "keys", "values", "get"};
// Methods that change a value in place: jinja2's immutable sandbox refuses them.
const std::vector<std::string> kMutatingMethods = {
    "append",  "extend", "insert",     "pop",     "remove", "clear",  "sort",
    "reverse", "update", "setdefault", "popitem", "add",    "discard"};

bool among(const std::vector<std::string>& names, const std::string& name) {
  return std::find(names.begin(), names.end(), name) != names.end();
}

// The undefined value of a missing attribute or element. Its message is appended piece by piece:
// GCC 12 misreads "x" + std::string temporaries as overlapping copies (-Wrestrict).
Value no_attribute(const Value& object, const std::string& name) {
  const std::string type = type_name(object);
  std::string what;
  if (among(kMutatingMethods, name) && (object.is_sequence() || object.is_dict())) {
    what.append("access to attribute '").append(name).append("' of '").append(type);
    what.append("' object is unsafe: chat templates cannot change values in place");
  } else {
    what.append("'").append(type).append(" object' has no attribute '").append(name).append("'");
  }
  return Value::undefined(what);
}

Value no_element(const Value& object, const Value& key) {
  std::string what;
  what.append("'").append(type_name(object)).append(" object' has no element ").append(repr(key));
  return Value::undefined(what);
}

}  // namespace

// ---- attribute and item access ----------------------------------------------------------------
Value get_attribute(const Value& object, const std::string& name) {
  require_defined(object);
  if (object.is_string() && among(kStringMethods, name)) {
    return Value::function("str." + name, [name, object](Interpreter&, CallArgs& args) {
      return string_method(name, object.as_string(), args);
    });
  }
  if (object.is_dict() && among(kDictMethods, name)) {
    return Value::function("dict." + name, [name, object](Interpreter&, CallArgs& args) {
      return dict_method(name, object.as_dict(), args);
    });
  }
  if (object.is_dict() || object.kind() == Value::Kind::ns) {
    if (const Value* v = object.as_dict().find(std::string_view(name))) return *v;
  }
  return no_attribute(object, name);
}

Value get_item(const Value& object, const Value& key) {
  require_defined(object);
  if (object.is_sequence() || object.is_string()) {
    if (key.kind() == Value::Kind::integer || key.kind() == Value::Kind::boolean) {
      const int64_t n = length(object);
      int64_t i = key.as_int();
      if (i < 0) i += n;
      if (i < 0 || i >= n) return no_element(object, key);
      if (object.is_string()) return Value(code_points(object.as_string())[size_t(i)]);
      return object.as_list()[size_t(i)];
    }
  } else if (object.is_dict() || object.kind() == Value::Kind::ns) {
    if (const Value* v = object.as_dict().find(key)) return *v;
  }
  if (key.is_string()) return get_attribute(object, key.as_string());
  return no_element(object, key);
}

Value slice(const Value& object, const Value& start, const Value& stop, const Value& step) {
  require_defined(object);
  if (!object.is_string() && !object.is_sequence())
    fail("'" + type_name(object) + "' object is not subscriptable");
  const auto index = [](const Value& v, const char* what) -> std::optional<int64_t> {
    if (v.is_none()) return std::nullopt;
    if (v.kind() != Value::Kind::integer && v.kind() != Value::Kind::boolean)
      fail(std::string("slice ") + what + " must be an integer or none, not " + type_name(v));
    return v.as_int();
  };
  const int64_t n = length(object);
  const int64_t by = index(step, "step").value_or(1);
  if (by == 0) fail("slice step cannot be zero");
  // Python's PySlice_AdjustIndices.
  const int64_t lower = by < 0 ? -1 : 0, upper = by < 0 ? n - 1 : n;
  const auto clamp = [&](std::optional<int64_t> i, int64_t fallback) {
    if (!i) return fallback;
    int64_t v = *i < 0 ? *i + n : *i;
    return std::clamp(v, lower, upper);
  };
  const int64_t from = clamp(index(start, "start"), by < 0 ? upper : lower);
  const int64_t to = clamp(index(stop, "stop"), by < 0 ? lower : upper);
  if (object.is_string()) {
    const std::vector<std::string> chars = code_points(object.as_string());
    std::string out;
    for (int64_t i = from; by > 0 ? i < to : i > to; i += by) out += chars[size_t(i)];
    return Value(out);
  }
  List out;
  for (int64_t i = from; by > 0 ? i < to : i > to; i += by)
    out.push_back(object.as_list()[size_t(i)]);
  return object.kind() == Value::Kind::tuple ? Value::tuple(std::move(out))
                                             : Value::list(std::move(out));
}

}  // namespace origami::jinja
