// Values of the chat-template language (runtime/chat_template.h), with Python's semantics: the
// templates are written for jinja2 running in Python, so truthiness, str(), repr(), ==, <, the
// arithmetic and json.dumps here all follow Python. Internal to runtime/chat_template*.cpp.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

namespace origami::jinja {

class Value;
class Interpreter;
using List = std::vector<Value>;

// A failure inside a value operation or a builtin, not yet placed in the template: the
// interpreter adds the line and column of the expression that met it (see Interpreter::eval).
struct Failure {
  std::string message;
};
[[noreturn]] void fail(std::string message);
// Integers are 64-bit (Python's are unbounded): a result outside that range fails, naming it,
// rather than wrapping around. Chat templates count messages and never come near it.
[[noreturn]] void integer_overflow();

// A dict keeps insertion order, as Python's does (items() and tojson show it). Keys are strings
// (all JSON input has) or other hashable values of dict literals ({0: 'a'}); 1, 1.0 and true
// are one key, as in Python.
class Dict {
 public:
  using Entry = std::pair<Value, Value>;
  const Value* find(const Value& key) const;
  const Value* find(std::string_view key) const;
  void set(Value key, Value value);  // replaces in place, or appends
  const std::vector<Entry>& entries() const { return entries_; }
  size_t size() const { return entries_.size(); }

 private:
  std::vector<Entry> entries_;
};

// Arguments of a call, a filter or a test, as written: f(a, b, key=c).
struct CallArgs {
  std::vector<Value> positional;
  std::vector<std::pair<std::string, Value>> keyword;
};

// A callable: a global (range, namespace, raise_exception), a macro, or a bound method
// ("a b".split).
struct Function {
  std::string name;
  std::function<Value(Interpreter&, CallArgs&)> call;
};

class Value {
 public:
  // undefined: jinja2's default Undefined (renders empty, falsy, iterates as empty; most other
  // uses fail). ns: a namespace() object, the one mutable kind.
  enum class Kind : uint8_t {
    undefined,
    none,
    boolean,
    integer,
    real,
    string,
    list,
    tuple,
    dict,
    ns,
    function
  };

  Value() : kind_(Kind::undefined), data_(std::string()) {}
  Value(bool b) : kind_(Kind::boolean), data_(b) {}
  Value(int64_t i) : kind_(Kind::integer), data_(i) {}
  Value(int i) : Value(int64_t(i)) {}
  Value(double d) : kind_(Kind::real), data_(d) {}
  Value(std::string s) : kind_(Kind::string), data_(std::move(s)) {}
  Value(const char* s) : Value(std::string(s)) {}

  // `what` names what was looked up ("'foo'", "'dict object' has no attribute 'x'") for the
  // error a later use of it raises.
  static Value undefined(std::string what);
  static Value none();
  static Value list(List items);
  static Value tuple(List items);
  static Value dict(Dict d);
  static Value ns(Dict d);
  static Value function(std::string name, std::function<Value(Interpreter&, CallArgs&)> call);
  // A string marked safe (jinja2's Markup, from |safe and |escape): `+` escapes the plain string
  // it is added to. Everything else treats it as a string.
  static Value markup(std::string s);

  Kind kind() const { return kind_; }
  bool is_undefined() const { return kind_ == Kind::undefined; }
  bool is_none() const { return kind_ == Kind::none; }
  bool is_string() const { return kind_ == Kind::string; }
  bool is_markup() const { return kind_ == Kind::string && markup_; }
  bool is_number() const {  // Python's numbers.Number: bool counts
    return kind_ == Kind::boolean || kind_ == Kind::integer || kind_ == Kind::real;
  }
  bool is_sequence() const { return kind_ == Kind::list || kind_ == Kind::tuple; }
  bool is_dict() const { return kind_ == Kind::dict; }

  bool as_bool() const { return std::get<bool>(data_); }
  int64_t as_int() const;    // boolean or integer
  double as_double() const;  // boolean, integer or real
  const std::string& as_string() const { return std::get<std::string>(data_); }
  const List& as_list() const { return *std::get<std::shared_ptr<const List>>(data_); }
  const Dict& as_dict() const { return *std::get<std::shared_ptr<Dict>>(data_); }
  Dict& ns_dict() const { return *std::get<std::shared_ptr<Dict>>(data_); }
  const Function& as_function() const { return *std::get<std::shared_ptr<const Function>>(data_); }
  const std::string& undefined_what() const { return std::get<std::string>(data_); }

  bool same_object(const Value& other) const;  // Python's `is`, for the sameas test

 private:
  Kind kind_;
  bool markup_ = false;
  std::variant<bool, int64_t, double, std::string, std::shared_ptr<const List>,
               std::shared_ptr<Dict>, std::shared_ptr<const Function>>
      data_;
};

// ---- Python semantics --------------------------------------------------------------------------
std::string type_name(const Value& v);  // Python's: 'str', 'int', 'NoneType', 'dict', ...
bool truthy(const Value& v);
std::string to_str(const Value& v);  // str(v); undefined renders as ""
std::string repr(const Value& v);
std::string float_repr(double d);  // Python's shortest round-trip repr: 1.0, 1e-05, 1e+16
bool equals(const Value& a, const Value& b);
// a < b as Python orders numbers, strings (by code point) and sequences; fails for other pairs.
bool less(const Value& a, const Value& b);
// Fails with "'foo' is undefined" (jinja2's UndefinedError) when v is undefined.
void require_defined(const Value& v);
// The items a for loop, `in`, join or list see: list items, dict keys, string characters; none
// for undefined. Fails for what Python cannot iterate.
List iterate(const Value& v);
int64_t length(const Value& v);                            // len(v)
bool contains(const Value& container, const Value& item);  // item in container

// json.dumps(v, ensure_ascii, indent, separators, sort_keys) as Python writes it. indent < 0:
// one line. Empty separators: Python's defaults (", " / ": "; "," with an indent).
struct JsonStyle {
  int indent = -1;
  bool ensure_ascii = false;
  bool sort_keys = false;
  std::string item_separator;
  std::string key_separator;
};
std::string to_json_text(const Value& v, const JsonStyle& style);
std::string html_escape(const std::string& s);  // & < > " ' as jinja2's escape writes them
Value from_json(const nlohmann::ordered_json& j);

// The parameters of a builtin, bound as Python binds positional-or-keyword parameters:
// Params p("filter 'join'", args, {"d", "attribute"}); p.text(0), p.get(1), ...
class Params {
 public:
  Params(const std::string& what, const CallArgs& args, std::vector<std::string> names);
  bool has(size_t i) const;  // given, and not none
  Value get(size_t i, Value fallback = Value::none()) const;
  bool flag(size_t i) const;                                           // truthy; absent: false
  std::string text(size_t i, const std::string& fallback = "") const;  // str()
  int64_t integer(size_t i, int64_t fallback) const;                   // fails for a non-integer

 private:
  std::vector<std::optional<Value>> values_;
};

// ---- str operations (chat_template_methods.cpp)
// ---------------------------------------------------
std::string upper(const std::string& s);
std::string lower(const std::string& s);
std::string capitalize(const std::string& s);    // str.capitalize
std::string title_filter(const std::string& s);  // jinja2's |title (str.title differs)
// str.strip / lstrip / rstrip; chars none: Python's white space.
std::string strip(const std::string& s, const Value& chars, bool left, bool right);
std::string replace(const std::string& s, const std::string& old, const std::string& with,
                    int64_t count);  // count < 0: all
std::vector<std::string> split_lines(const std::string& s, bool keep_ends);
List dict_items(const Dict& d);  // d.items(): (key, value) tuples

// ---- UTF-8 strings as Python sees them: sequences of code points
// ---------------------------------
std::vector<std::string> code_points(std::string_view s);
int64_t code_point_count(std::string_view s);
bool is_python_space(uint32_t code_point);              // str.isspace
uint32_t decode_utf8(std::string_view s, size_t& pos);  // advances pos; invalid bytes as U+FFFD
std::string encode_utf8(uint32_t code_point);

}  // namespace origami::jinja
