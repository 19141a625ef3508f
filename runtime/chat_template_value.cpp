// Values of the chat-template language with Python's semantics (see chat_template_value.h).
#include "runtime/chat_template_value.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdio>

namespace origami::jinja {

void fail(std::string message) {
  throw Failure{std::move(message)};
}

void integer_overflow() {
  fail("integer beyond the 64-bit range: integers larger than that are not supported");
}

// ---- Dict --------------------------------------------------------------------------------------
const Value* Dict::find(std::string_view key) const {
  for (const auto& [k, v] : entries_)
    if (k.is_string() && k.as_string() == key) return &v;
  return nullptr;
}

const Value* Dict::find(const Value& key) const {
  for (const auto& [k, v] : entries_)
    if (equals(k, key)) return &v;
  return nullptr;
}

void Dict::set(Value key, Value value) {
  for (auto& [k, v] : entries_) {
    if (equals(k, key)) {
      v = std::move(value);
      return;
    }
  }
  entries_.emplace_back(std::move(key), std::move(value));
}

// ---- Value -------------------------------------------------------------------------------------
Value Value::undefined(std::string what) {
  Value v;
  v.data_ = std::move(what);
  return v;
}

Value Value::none() {
  Value v;
  v.kind_ = Kind::none;
  v.data_ = false;
  return v;
}

Value Value::list(List items) {
  Value v;
  v.kind_ = Kind::list;
  v.data_ = std::shared_ptr<const List>(std::make_shared<List>(std::move(items)));
  return v;
}

Value Value::tuple(List items) {
  Value v = list(std::move(items));
  v.kind_ = Kind::tuple;
  return v;
}

Value Value::dict(Dict d) {
  Value v;
  v.kind_ = Kind::dict;
  v.data_ = std::make_shared<Dict>(std::move(d));
  return v;
}

Value Value::ns(Dict d) {
  Value v = dict(std::move(d));
  v.kind_ = Kind::ns;
  return v;
}

Value Value::function(std::string name, std::function<Value(Interpreter&, CallArgs&)> call) {
  Value v;
  v.kind_ = Kind::function;
  v.data_ = std::shared_ptr<const Function>(
      std::make_shared<Function>(Function{std::move(name), std::move(call)}));
  return v;
}

Value Value::markup(std::string s) {
  Value v(std::move(s));
  v.markup_ = true;
  return v;
}

int64_t Value::as_int() const {
  return kind_ == Kind::boolean ? int64_t(std::get<bool>(data_)) : std::get<int64_t>(data_);
}

double Value::as_double() const {
  if (kind_ == Kind::real) return std::get<double>(data_);
  return double(as_int());
}

bool Value::same_object(const Value& other) const {
  if (kind_ != other.kind_) return false;
  switch (kind_) {
    case Kind::list:
    case Kind::tuple:
    case Kind::dict:
    case Kind::ns:
    case Kind::function:
      return data_ == other.data_;
    default:
      return equals(*this, other);  // small values: Python interns None, True, False
  }
}

// ---- Python semantics --------------------------------------------------------------------------
std::string type_name(const Value& v) {
  switch (v.kind()) {
    case Value::Kind::undefined:
      return "Undefined";
    case Value::Kind::none:
      return "NoneType";
    case Value::Kind::boolean:
      return "bool";
    case Value::Kind::integer:
      return "int";
    case Value::Kind::real:
      return "float";
    case Value::Kind::string:
      return "str";
    case Value::Kind::list:
      return "list";
    case Value::Kind::tuple:
      return "tuple";
    case Value::Kind::dict:
      return "dict";
    case Value::Kind::ns:
      return "Namespace";
    case Value::Kind::function:
      return "function";
  }
  return "?";
}

bool truthy(const Value& v) {
  switch (v.kind()) {
    case Value::Kind::undefined:
    case Value::Kind::none:
      return false;
    case Value::Kind::boolean:
      return v.as_bool();
    case Value::Kind::integer:
      return v.as_int() != 0;
    case Value::Kind::real:
      return v.as_double() != 0.0;
    case Value::Kind::string:
      return !v.as_string().empty();
    case Value::Kind::list:
    case Value::Kind::tuple:
      return !v.as_list().empty();
    case Value::Kind::dict:
      return v.as_dict().size() != 0;
    case Value::Kind::ns:
    case Value::Kind::function:
      return true;
  }
  return false;
}

std::string float_repr(double d) {
  if (std::isnan(d)) return "nan";
  if (std::isinf(d)) return d < 0 ? "-inf" : "inf";
  // The shortest digits that read back as d, then Python's layout: fixed notation for decimal
  // exponents -4..15, scientific (two-digit exponent at least) outside.
  char buf[64];
  const auto res = std::to_chars(buf, buf + sizeof buf, d, std::chars_format::scientific);
  std::string sci(buf, res.ptr);
  std::string sign;
  if (sci[0] == '-') {
    sign = "-";
    sci.erase(0, 1);
  }
  const size_t e_pos = sci.find('e');
  const int exponent = std::stoi(sci.substr(e_pos + 1));
  std::string digits = sci.substr(0, e_pos);
  digits.erase(std::remove(digits.begin(), digits.end(), '.'), digits.end());
  const int n = int(digits.size());
  if (exponent >= -4 && exponent < 16) {
    const int point = exponent + 1;  // digits before the decimal point
    if (point <= 0) return sign + "0." + std::string(size_t(-point), '0') + digits;
    if (point >= n) return sign + digits + std::string(size_t(point - n), '0') + ".0";
    return sign + digits.substr(0, size_t(point)) + "." + digits.substr(size_t(point));
  }
  std::string out = sign + digits.substr(0, 1);
  if (n > 1) out += "." + digits.substr(1);
  char exp_buf[16];
  std::snprintf(exp_buf, sizeof exp_buf, "e%c%02d", exponent < 0 ? '-' : '+', std::abs(exponent));
  return out + exp_buf;
}

namespace {

std::string repr_string(const std::string& s) {
  const bool has_single = s.find('\'') != std::string::npos;
  const bool has_double = s.find('"') != std::string::npos;
  const char quote = has_single && !has_double ? '"' : '\'';
  std::string out(1, quote);
  size_t pos = 0;
  while (pos < s.size()) {
    const size_t start = pos;
    const uint32_t c = decode_utf8(s, pos);
    char buf[16];
    if (c == uint32_t(quote) || c == '\\') {
      out += '\\';
      out += char(c);
    } else if (c == '\n') {
      out += "\\n";
    } else if (c == '\r') {
      out += "\\r";
    } else if (c == '\t') {
      out += "\\t";
    } else if (c < 0x20 || (c >= 0x7f && c <= 0xa0) || c == 0xad) {
      std::snprintf(buf, sizeof buf, "\\x%02x", unsigned(c));
      out += buf;
    } else {
      out.append(s, start, pos - start);
    }
  }
  return out + quote;
}

std::string repr_dict_body(const Dict& d) {
  std::string out = "{";
  bool first = true;
  for (const auto& [k, v] : d.entries()) {
    if (!first) out += ", ";
    first = false;
    out += repr(k) + ": " + repr(v);
  }
  return out + "}";
}

}  // namespace

std::string repr(const Value& v) {
  switch (v.kind()) {
    case Value::Kind::undefined:
      return "Undefined";
    case Value::Kind::string:
      return repr_string(v.as_string());
    case Value::Kind::list:
    case Value::Kind::tuple: {
      const bool tuple = v.kind() == Value::Kind::tuple;
      std::string out = tuple ? "(" : "[";
      const List& items = v.as_list();
      for (size_t i = 0; i < items.size(); ++i) out += (i ? ", " : "") + repr(items[i]);
      if (tuple && items.size() == 1) out += ",";
      return out + (tuple ? ")" : "]");
    }
    case Value::Kind::dict:
      return repr_dict_body(v.as_dict());
    case Value::Kind::ns:
      return "<Namespace " + repr_dict_body(v.as_dict()) + ">";
    case Value::Kind::function:
      return "<function " + v.as_function().name + ">";
    default:
      return to_str(v);
  }
}

std::string to_str(const Value& v) {
  switch (v.kind()) {
    case Value::Kind::undefined:
      return "";
    case Value::Kind::none:
      return "None";
    case Value::Kind::boolean:
      return v.as_bool() ? "True" : "False";
    case Value::Kind::integer:
      return std::to_string(v.as_int());
    case Value::Kind::real:
      return float_repr(v.as_double());
    case Value::Kind::string:
      return v.as_string();
    default:
      return repr(v);
  }
}

void require_defined(const Value& v) {
  if (v.is_undefined())
    fail(v.undefined_what().empty() ? "value is undefined" : v.undefined_what());
}

bool equals(const Value& a, const Value& b) {
  using K = Value::Kind;
  if (a.is_number() && b.is_number()) {
    if (a.kind() != K::real && b.kind() != K::real) return a.as_int() == b.as_int();
    return a.as_double() == b.as_double();
  }
  if (a.kind() != b.kind()) return false;
  switch (a.kind()) {
    case K::undefined:
    case K::none:
      return true;
    case K::string:
      return a.as_string() == b.as_string();
    case K::list:
    case K::tuple: {
      const List &x = a.as_list(), &y = b.as_list();
      if (x.size() != y.size()) return false;
      for (size_t i = 0; i < x.size(); ++i)
        if (!equals(x[i], y[i])) return false;
      return true;
    }
    case K::dict: {
      const Dict &x = a.as_dict(), &y = b.as_dict();
      if (x.size() != y.size()) return false;
      for (const auto& [k, v] : x.entries()) {
        const Value* other = y.find(k);
        if (!other || !equals(v, *other)) return false;
      }
      return true;
    }
    default:
      return a.same_object(b);
  }
}

bool less(const Value& a, const Value& b) {
  require_defined(a);
  require_defined(b);
  if (a.is_number() && b.is_number()) {
    if (a.kind() != Value::Kind::real && b.kind() != Value::Kind::real)
      return a.as_int() < b.as_int();
    return a.as_double() < b.as_double();
  }
  if (a.is_string() && b.is_string()) return a.as_string() < b.as_string();  // UTF-8: by code point
  if (a.is_sequence() && a.kind() == b.kind()) {
    const List &x = a.as_list(), &y = b.as_list();
    for (size_t i = 0; i < x.size() && i < y.size(); ++i)
      if (!equals(x[i], y[i])) return less(x[i], y[i]);
    return x.size() < y.size();
  }
  fail("'<' not supported between instances of '" + type_name(a) + "' and '" + type_name(b) + "'");
}

List iterate(const Value& v) {
  switch (v.kind()) {
    case Value::Kind::undefined:
      return {};
    case Value::Kind::list:
    case Value::Kind::tuple:
      return v.as_list();
    case Value::Kind::dict: {
      List keys;
      for (const auto& entry : v.as_dict().entries()) keys.push_back(entry.first);
      return keys;
    }
    case Value::Kind::string: {
      List chars;
      for (auto& c : code_points(v.as_string())) chars.emplace_back(std::move(c));
      return chars;
    }
    default:
      fail("'" + type_name(v) + "' object is not iterable");
  }
}

int64_t length(const Value& v) {
  switch (v.kind()) {
    case Value::Kind::undefined:
      return 0;
    case Value::Kind::string:
      return code_point_count(v.as_string());
    case Value::Kind::list:
    case Value::Kind::tuple:
      return int64_t(v.as_list().size());
    case Value::Kind::dict:
      return int64_t(v.as_dict().size());
    default:
      fail("object of type '" + type_name(v) + "' has no len()");
  }
}

bool contains(const Value& container, const Value& item) {
  switch (container.kind()) {
    case Value::Kind::undefined:
      return false;
    case Value::Kind::string:
      if (!item.is_string())
        fail("'in <string>' requires string as left operand, not " + type_name(item));
      return container.as_string().find(item.as_string()) != std::string::npos;
    case Value::Kind::list:
    case Value::Kind::tuple:
      for (const Value& v : container.as_list())
        if (equals(v, item)) return true;
      return false;
    case Value::Kind::dict:
      return container.as_dict().find(item) != nullptr;
    default:
      fail("argument of type '" + type_name(container) + "' is not iterable");
  }
}

std::string html_escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    switch (c) {
      case '&':
        out += "&amp;";
        break;
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '"':
        out += "&#34;";
        break;
      case '\'':
        out += "&#39;";
        break;
      default:
        out += c;
    }
  }
  return out;
}

// ---- Params
// ----------------------------------------------------------------------------------------
Params::Params(const std::string& what, const CallArgs& args, std::vector<std::string> names)
    : values_(names.size()) {
  if (args.positional.size() > names.size())
    fail(what + " takes at most " + std::to_string(names.size()) + " argument(s) (" +
         std::to_string(args.positional.size()) + " given)");
  for (size_t i = 0; i < args.positional.size(); ++i) values_[i] = args.positional[i];
  for (const auto& [key, value] : args.keyword) {
    const auto it = std::find(names.begin(), names.end(), key);
    if (it == names.end()) fail(what + " got an unexpected keyword argument '" + key + "'");
    values_[size_t(it - names.begin())] = value;
  }
}

bool Params::has(size_t i) const {
  return values_[i].has_value() && !values_[i]->is_none();
}

Value Params::get(size_t i, Value fallback) const {
  return values_[i] ? *values_[i] : fallback;
}

bool Params::flag(size_t i) const {
  return values_[i] && truthy(*values_[i]);
}

std::string Params::text(size_t i, const std::string& fallback) const {
  return values_[i] ? to_str(*values_[i]) : fallback;
}

int64_t Params::integer(size_t i, int64_t fallback) const {
  if (!values_[i]) return fallback;
  if (values_[i]->kind() != Value::Kind::integer && values_[i]->kind() != Value::Kind::boolean)
    fail("an integer is required, not '" + type_name(*values_[i]) + "'");
  return values_[i]->as_int();
}

// ---- JSON --------------------------------------------------------------------------------------
namespace {

void json_string(const std::string& s, bool ensure_ascii, std::string& out) {
  out += '"';
  size_t pos = 0;
  while (pos < s.size()) {
    const size_t start = pos;
    const uint32_t c = decode_utf8(s, pos);
    char buf[16];
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\r':
        out += "\\r";
        break;
      case '\t':
        out += "\\t";
        break;
      case '\b':
        out += "\\b";
        break;
      case '\f':
        out += "\\f";
        break;
      default:
        if (c < 0x20 || (ensure_ascii && c >= 0x7f)) {
          if (c >= 0x10000) {  // a surrogate pair, as Python writes it
            const uint32_t v = c - 0x10000;
            std::snprintf(buf, sizeof buf, "\\u%04x\\u%04x", unsigned(0xd800 + (v >> 10)),
                          unsigned(0xdc00 + (v & 0x3ff)));
          } else {
            std::snprintf(buf, sizeof buf, "\\u%04x", unsigned(c));
          }
          out += buf;
        } else {
          out.append(s, start, pos - start);
        }
    }
  }
  out += '"';
}

// Python's json.dumps writes non-string keys as strings: 1 -> "1", true -> "true".
std::string json_key(const Value& key) {
  switch (key.kind()) {
    case Value::Kind::string:
      return key.as_string();
    case Value::Kind::none:
      return "null";
    case Value::Kind::boolean:
      return key.as_bool() ? "true" : "false";
    case Value::Kind::integer:
    case Value::Kind::real:
      return to_str(key);
    default:
      fail("keys must be str, int, float, bool or None, not " + type_name(key));
  }
}

void json_value(const Value& v, const JsonStyle& style, int level, std::string& out) {
  const bool indented = style.indent >= 0;
  const std::string item_sep =
      !style.item_separator.empty() ? style.item_separator : (indented ? "," : ", ");
  const std::string key_sep = !style.key_separator.empty() ? style.key_separator : ": ";
  const auto newline = [&](int lvl) {
    if (indented) out += "\n" + std::string(size_t(style.indent * lvl), ' ');
  };
  switch (v.kind()) {
    case Value::Kind::none:
      out += "null";
      return;
    case Value::Kind::boolean:
      out += v.as_bool() ? "true" : "false";
      return;
    case Value::Kind::integer:
      out += std::to_string(v.as_int());
      return;
    case Value::Kind::real: {
      const double d = v.as_double();
      if (std::isnan(d))
        out += "NaN";
      else if (std::isinf(d))
        out += d < 0 ? "-Infinity" : "Infinity";
      else
        out += float_repr(d);
      return;
    }
    case Value::Kind::string:
      json_string(v.as_string(), style.ensure_ascii, out);
      return;
    case Value::Kind::list:
    case Value::Kind::tuple: {
      const List& items = v.as_list();
      if (items.empty()) {
        out += "[]";
        return;
      }
      out += "[";
      for (size_t i = 0; i < items.size(); ++i) {
        if (i) out += item_sep;
        newline(level + 1);
        json_value(items[i], style, level + 1, out);
      }
      newline(level);
      out += "]";
      return;
    }
    case Value::Kind::dict: {
      std::vector<const Dict::Entry*> entries;
      for (const auto& e : v.as_dict().entries()) entries.push_back(&e);
      if (entries.empty()) {
        out += "{}";
        return;
      }
      if (style.sort_keys)
        std::stable_sort(entries.begin(), entries.end(),
                         [](auto* a, auto* b) { return less(a->first, b->first); });
      out += "{";
      for (size_t i = 0; i < entries.size(); ++i) {
        if (i) out += item_sep;
        newline(level + 1);
        json_string(json_key(entries[i]->first), style.ensure_ascii, out);
        out += key_sep;
        json_value(entries[i]->second, style, level + 1, out);
      }
      newline(level);
      out += "}";
      return;
    }
    default:
      fail("Object of type " + type_name(v) + " is not JSON serializable");
  }
}

}  // namespace

std::string to_json_text(const Value& v, const JsonStyle& style) {
  std::string out;
  json_value(v, style, 0, out);
  return out;
}

Value from_json(const nlohmann::ordered_json& j) {
  using T = nlohmann::ordered_json::value_t;
  switch (j.type()) {
    case T::null:
      return Value::none();
    case T::boolean:
      return Value(j.get<bool>());
    case T::number_integer:
      return Value(j.get<int64_t>());
    case T::number_unsigned:
      if (j.get<uint64_t>() > uint64_t(INT64_MAX)) integer_overflow();
      return Value(int64_t(j.get<uint64_t>()));
    case T::number_float:
      return Value(j.get<double>());
    case T::string:
      return Value(j.get<std::string>());
    case T::array: {
      List items;
      items.reserve(j.size());
      for (const auto& item : j) items.push_back(from_json(item));
      return Value::list(std::move(items));
    }
    case T::object: {
      Dict d;
      for (const auto& [k, item] : j.items()) d.set(k, from_json(item));
      return Value::dict(std::move(d));
    }
    default:
      return Value::none();  // binary and discarded values do not come from JSON text
  }
}

// ---- UTF-8 -------------------------------------------------------------------------------------
uint32_t decode_utf8(std::string_view s, size_t& pos) {
  const auto byte = [&](size_t i) { return uint8_t(s[i]); };
  const uint8_t b0 = byte(pos);
  int len = b0 < 0x80 ? 1 : (b0 >> 5) == 0x6 ? 2 : (b0 >> 4) == 0xe ? 3 : (b0 >> 3) == 0x1e ? 4 : 0;
  if (len == 0 || pos + size_t(len) > s.size()) {
    ++pos;
    return 0xfffd;
  }
  uint32_t c = len == 1 ? b0 : len == 2 ? (b0 & 0x1fu) : len == 3 ? (b0 & 0x0fu) : (b0 & 0x07u);
  for (int i = 1; i < len; ++i) {
    if ((byte(pos + size_t(i)) & 0xc0) != 0x80) {
      ++pos;
      return 0xfffd;
    }
    c = (c << 6) | (byte(pos + size_t(i)) & 0x3fu);
  }
  pos += size_t(len);
  return c;
}

std::string encode_utf8(uint32_t c) {
  std::string out;
  if (c < 0x80) {
    out += char(c);
  } else if (c < 0x800) {
    out += char(0xc0 | (c >> 6));
    out += char(0x80 | (c & 0x3f));
  } else if (c < 0x10000) {
    out += char(0xe0 | (c >> 12));
    out += char(0x80 | ((c >> 6) & 0x3f));
    out += char(0x80 | (c & 0x3f));
  } else {
    out += char(0xf0 | (c >> 18));
    out += char(0x80 | ((c >> 12) & 0x3f));
    out += char(0x80 | ((c >> 6) & 0x3f));
    out += char(0x80 | (c & 0x3f));
  }
  return out;
}

std::vector<std::string> code_points(std::string_view s) {
  std::vector<std::string> out;
  size_t pos = 0;
  while (pos < s.size()) {
    const size_t start = pos;
    decode_utf8(s, pos);
    out.emplace_back(s.substr(start, pos - start));
  }
  return out;
}

int64_t code_point_count(std::string_view s) {
  int64_t n = 0;
  size_t pos = 0;
  while (pos < s.size()) {
    decode_utf8(s, pos);
    ++n;
  }
  return n;
}

bool is_python_space(uint32_t c) {
  return (c >= 0x09 && c <= 0x0d) || (c >= 0x1c && c <= 0x20) || c == 0x85 || c == 0xa0 ||
         c == 0x1680 || (c >= 0x2000 && c <= 0x200a) || c == 0x2028 || c == 0x2029 || c == 0x202f ||
         c == 0x205f || c == 0x3000;
}

}  // namespace origami::jinja
