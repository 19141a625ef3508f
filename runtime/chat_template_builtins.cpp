// jinja2's filters and tests, the globals of a chat template (range, namespace, dict, and
// Hugging Face's raise_exception and strftime_now), and arithmetic, each as jinja2 and Python do
// them.
#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdlib>
#include <ctime>
#include <optional>
#include <unordered_map>

#include "runtime/chat_template.h"
#include "runtime/chat_template_syntax.h"

namespace origami::jinja {

namespace {

// A path of attributes as filters take it: "function.name", "0.role".
Value attribute_path(const Value& item, const Value& path) {
  if (!path.is_string()) return get_item(item, path);
  Value v = item;
  const std::string& p = path.as_string();
  for (size_t start = 0; start <= p.size();) {
    const size_t dot = std::min(p.find('.', start), p.size());
    const std::string part = p.substr(start, dot - start);
    int64_t index = 0;
    const auto [end, error] = std::from_chars(part.data(), part.data() + part.size(), index);
    const bool is_index = !part.empty() && error == std::errc() && end == part.data() + part.size();
    require_defined(v);
    v = get_item(v, is_index ? Value(index) : Value(part));
    start = dot + 1;
  }
  return v;
}

// ---- sorting (sort, dictsort, unique, min, max) ------------------------------------------------
Value sort_key(const Value& v, bool case_sensitive) {
  return !case_sensitive && v.is_string() ? Value(lower(v.as_string())) : v;
}

// ---- filters -----------------------------------------------------------------------------------
using FilterFn = Value (*)(Interpreter&, const Value&, CallArgs&);

// select / reject / selectattr / rejectattr: keep items whose test (or truthiness) is `keep`.
// Like jinja2, these (and map) give nothing for a falsy input: none|selectattr(...) is empty.
Value select_items(Interpreter& in, const Value& seq, CallArgs& args, bool by_attribute,
                   bool keep) {
  if (!truthy(seq)) return Value::list({});
  CallArgs rest = args;
  Value attribute;
  if (by_attribute) {
    if (rest.positional.empty()) fail("selectattr/rejectattr need an attribute name");
    attribute = rest.positional.front();
    rest.positional.erase(rest.positional.begin());
  }
  std::string test_name;
  if (!rest.positional.empty()) {
    test_name = to_str(rest.positional.front());
    rest.positional.erase(rest.positional.begin());
  }
  List out;
  for (const Value& item : iterate(seq)) {
    const Value v = by_attribute ? attribute_path(item, attribute) : item;
    CallArgs test_args = rest;
    const bool passes = test_name.empty() ? truthy(v) : in.test(test_name, v, test_args);
    if (passes == keep) out.push_back(item);
  }
  return Value::list(std::move(out));
}

Value filter_map(Interpreter& in, const Value& seq, CallArgs& args) {
  List out;
  if (!truthy(seq)) return Value::list({});
  const auto attribute = std::find_if(args.keyword.begin(), args.keyword.end(),
                                      [](const auto& k) { return k.first == "attribute"; });
  if (args.positional.empty() && attribute != args.keyword.end()) {
    Params p("filter 'map'", args, {"attribute", "default"});
    for (const Value& item : iterate(seq)) {
      Value v = attribute_path(item, p.get(0));
      out.push_back(v.is_undefined() && p.has(1) ? p.get(1) : v);
    }
    return Value::list(std::move(out));
  }
  if (args.positional.empty()) fail("filter 'map' needs a filter name or attribute=");
  const std::string filter_name = to_str(args.positional.front());
  CallArgs rest = args;
  rest.positional.erase(rest.positional.begin());
  for (const Value& item : iterate(seq)) {
    CallArgs filter_args = rest;
    out.push_back(in.filter(filter_name, item, filter_args));
  }
  return Value::list(std::move(out));
}

Value filter_tojson(Interpreter&, const Value& v, CallArgs& args) {
  // Hugging Face's tojson: json.dumps(x, ensure_ascii=False, indent=None, separators=None,
  // sort_keys=False).
  Params p("filter 'tojson'", args, {"ensure_ascii", "indent", "separators", "sort_keys"});
  JsonStyle style;
  style.ensure_ascii = p.flag(0);
  if (p.has(1)) style.indent = int(p.integer(1, -1));
  if (p.has(2)) {
    const Value seps = p.get(2);
    if (!seps.is_sequence() || seps.as_list().size() != 2)
      fail("tojson separators must be a pair (item_separator, key_separator)");
    style.item_separator = to_str(seps.as_list()[0]);
    style.key_separator = to_str(seps.as_list()[1]);
  }
  style.sort_keys = p.flag(3);
  return Value(to_json_text(v, style));
}

Value filter_join(Interpreter&, const Value& v, CallArgs& args) {
  Params p("filter 'join'", args, {"d", "attribute"});
  const std::string sep = p.text(0);
  std::string out;
  bool first = true;
  for (const Value& item : iterate(v)) {
    out += (first ? "" : sep) + to_str(p.has(1) ? attribute_path(item, p.get(1)) : item);
    first = false;
  }
  return Value(out);
}

Value filter_default(Interpreter&, const Value& v, CallArgs& args) {
  Params p("filter 'default'", args, {"default_value", "boolean"});
  const bool use_default = v.is_undefined() || (p.flag(1) && !truthy(v));
  return use_default ? p.get(0, Value("")) : v;
}

Value filter_items(Interpreter&, const Value& v, CallArgs& args) {
  Params p("filter 'items'", args, {});
  if (v.is_undefined()) return Value::list({});
  if (!v.is_dict()) fail("Can only get item pairs from a mapping, not " + type_name(v));
  return Value::list(dict_items(v.as_dict()));
}

Value filter_first_or_last(const Value& v, bool first) {
  const List items = iterate(v);
  if (items.empty())
    return Value::undefined(first ? "No first item, sequence was empty."
                                  : "No last item, sequence was empty.");
  return first ? items.front() : items.back();
}

// sort, unique, min and max share jinja2's (case_sensitive, attribute) handling.
List sorted_items(const Value& v, bool case_sensitive, const Value& attribute, bool reverse) {
  List items = iterate(v);
  const auto key = [&](const Value& item) {
    return sort_key(attribute.is_none() ? item : attribute_path(item, attribute), case_sensitive);
  };
  std::stable_sort(items.begin(), items.end(), [&](const Value& a, const Value& b) {
    return reverse ? less(key(b), key(a)) : less(key(a), key(b));
  });
  return items;
}

Value filter_sort(Interpreter&, const Value& v, CallArgs& args) {
  Params p("filter 'sort'", args, {"reverse", "case_sensitive", "attribute"});
  return Value::list(sorted_items(v, p.flag(1), p.get(2), p.flag(0)));
}

Value filter_min_max(const Value& v, CallArgs& args, bool want_max) {
  Params p(want_max ? "filter 'max'" : "filter 'min'", args, {"case_sensitive", "attribute"});
  const List items = sorted_items(v, p.flag(0), p.get(1), false);
  if (items.empty()) return Value::undefined("No aggregated item, sequence was empty.");
  return want_max ? items.back() : items.front();
}

Value filter_unique(Interpreter&, const Value& v, CallArgs& args) {
  Params p("filter 'unique'", args, {"case_sensitive", "attribute"});
  List out, seen;
  for (const Value& item : iterate(v)) {
    const Value key = sort_key(p.has(1) ? attribute_path(item, p.get(1)) : item, p.flag(0));
    if (std::none_of(seen.begin(), seen.end(), [&](const Value& s) { return equals(s, key); })) {
      seen.push_back(key);
      out.push_back(item);
    }
  }
  return Value::list(std::move(out));
}

Value filter_dictsort(Interpreter&, const Value& v, CallArgs& args) {
  Params p("filter 'dictsort'", args, {"case_sensitive", "by", "reverse"});
  if (!v.is_dict()) fail("dictsort needs a dict, not " + type_name(v));
  const std::string by = p.text(1, "key");
  if (by != "key" && by != "value") fail("You can only sort by either 'key' or 'value'");
  List items = dict_items(v.as_dict());
  const size_t part = by == "key" ? 0 : 1;
  const bool case_sensitive = p.flag(0), reverse = p.flag(2);
  std::stable_sort(items.begin(), items.end(), [&](const Value& a, const Value& b) {
    const Value ka = sort_key(a.as_list()[part], case_sensitive);
    const Value kb = sort_key(b.as_list()[part], case_sensitive);
    return reverse ? less(kb, ka) : less(ka, kb);
  });
  return Value::list(std::move(items));
}

// int(d): fails for NaN, infinities and values beyond 64 bits.
int64_t truncate(double d) {
  if (std::isnan(d)) fail("cannot convert float NaN to integer");
  if (std::isinf(d)) fail("cannot convert float infinity to integer");
  const double t = std::trunc(d);
  if (t < -9223372036854775808.0 || t >= 9223372036854775808.0) integer_overflow();
  return int64_t(t);
}

Value filter_int(Interpreter&, const Value& v, CallArgs& args) {
  Params p("filter 'int'", args, {"default", "base"});
  const Value fallback = p.get(0, Value(0));
  if (v.kind() == Value::Kind::integer || v.kind() == Value::Kind::boolean)
    return Value(v.as_int());
  if (v.kind() == Value::Kind::real) return Value(truncate(v.as_double()));
  if (!v.is_string()) return fallback;
  const std::string s = strip(v.as_string(), Value::none(), true, true);
  const int base = int(p.integer(1, 10));
  size_t used = 0;
  try {
    const int64_t i = std::stoll(s, &used, base);
    if (used == s.size()) return Value(i);
  } catch (const std::out_of_range&) {
    integer_overflow();
  } catch (const std::invalid_argument&) {
  }
  // "42.7"|int is 42, as jinja2 goes through float(); NaN gives the default.
  char* end = nullptr;
  const double d = s.empty() ? 0.0 : std::strtod(s.c_str(), &end);
  if (s.empty() || end != s.c_str() + s.size() || std::isnan(d)) return fallback;
  return Value(truncate(d));
}

Value filter_float(Interpreter&, const Value& v, CallArgs& args) {
  Params p("filter 'float'", args, {"default"});
  if (v.is_number()) return Value(v.as_double());
  if (v.is_string()) {  // strtod, not stod: "1e400" is inf and "1e-400" is 0.0, as in Python
    const std::string s = strip(v.as_string(), Value::none(), true, true);
    char* end = nullptr;
    const double d = s.empty() ? 0.0 : std::strtod(s.c_str(), &end);
    if (!s.empty() && end == s.c_str() + s.size()) return Value(d);
  }
  return p.get(0, Value(0.0));
}

Value filter_round(Interpreter&, const Value& v, CallArgs& args) {
  Params p("filter 'round'", args, {"precision", "method"});
  const double scale = std::pow(10.0, double(p.integer(0, 0)));
  const std::string method = p.text(1, "common");
  const double x = v.as_double() * scale;
  double r;
  if (method == "common")
    r = std::nearbyint(x);  // Python's round: halves to even
  else if (method == "ceil")
    r = std::ceil(x);
  else if (method == "floor")
    r = std::floor(x);
  else
    fail("method must be common, ceil or floor");
  return Value(r / scale);
}

Value filter_indent(Interpreter&, const Value& v, CallArgs& args) {
  Params p("filter 'indent'", args, {"width", "first", "blank"});
  const Value width = p.get(0, Value(4));
  const std::string indention =
      width.is_string() ? width.as_string()
                        : std::string(size_t(std::max<int64_t>(0, width.as_int())), ' ');
  const std::vector<std::string> lines = split_lines(to_str(v) + "\n", false);
  std::string out;
  for (size_t i = 0; i < lines.size(); ++i) {
    if (i > 0) out += "\n";
    const bool indent_line = i > 0 && (p.flag(2) || !lines[i].empty());
    out += (indent_line ? indention : "") + lines[i];
  }
  return Value(p.flag(1) ? indention + out : out);
}

Value filter_escape(Interpreter&, const Value& v, CallArgs&) {
  return v.is_markup() ? v : Value::markup(html_escape(to_str(v)));
}

Value filter_sum(Interpreter&, const Value& v, CallArgs& args) {
  Params p("filter 'sum'", args, {"attribute", "start"});
  Value total = p.get(1, Value(0));
  for (const Value& item : iterate(v))
    total = binary_op("+", total, p.has(0) ? attribute_path(item, p.get(0)) : item);
  return total;
}

Value filter_reverse(Interpreter&, const Value& v, CallArgs&) {
  if (v.is_string()) {
    std::vector<std::string> chars = code_points(v.as_string());
    std::string out;
    for (auto it = chars.rbegin(); it != chars.rend(); ++it) out += *it;
    return Value(out);
  }
  List items = iterate(v);
  std::reverse(items.begin(), items.end());
  return Value::list(std::move(items));
}

Value filter_abs(Interpreter&, const Value& v, CallArgs&) {
  if (v.kind() == Value::Kind::real) return Value(std::fabs(v.as_double()));
  if (!v.is_number()) fail("bad operand type for abs(): '" + type_name(v) + "'");
  if (v.as_int() == INT64_MIN) integer_overflow();
  return Value(std::abs(v.as_int()));
}

const std::unordered_map<std::string, FilterFn>& filters() {
  static const std::unordered_map<std::string, FilterFn> table = {
      {"abs", filter_abs},
      {"capitalize",
       [](Interpreter&, const Value& v, CallArgs&) { return Value(capitalize(to_str(v))); }},
      {"count", [](Interpreter&, const Value& v, CallArgs&) { return Value(length(v)); }},
      {"d", filter_default},
      {"default", filter_default},
      {"dictsort", filter_dictsort},
      {"e", filter_escape},
      {"escape", filter_escape},
      {"first",
       [](Interpreter&, const Value& v, CallArgs&) { return filter_first_or_last(v, true); }},
      {"float", filter_float},
      {"indent", filter_indent},
      {"int", filter_int},
      {"items", filter_items},
      {"join", filter_join},
      {"last",
       [](Interpreter&, const Value& v, CallArgs&) { return filter_first_or_last(v, false); }},
      {"length", [](Interpreter&, const Value& v, CallArgs&) { return Value(length(v)); }},
      {"list", [](Interpreter&, const Value& v, CallArgs&) { return Value::list(iterate(v)); }},
      {"lower", [](Interpreter&, const Value& v, CallArgs&) { return Value(lower(to_str(v))); }},
      {"map", filter_map},
      {"max", [](Interpreter&, const Value& v, CallArgs& a) { return filter_min_max(v, a, true); }},
      {"min",
       [](Interpreter&, const Value& v, CallArgs& a) { return filter_min_max(v, a, false); }},
      {"reject", [](Interpreter& in, const Value& v,
                    CallArgs& a) { return select_items(in, v, a, false, false); }},
      {"rejectattr", [](Interpreter& in, const Value& v,
                        CallArgs& a) { return select_items(in, v, a, true, false); }},
      {"replace",
       [](Interpreter&, const Value& v, CallArgs& a) {
         Params p("filter 'replace'", a, {"old", "new", "count"});
         return Value(replace(to_str(v), p.text(0), p.text(1), p.has(2) ? p.integer(2, -1) : -1));
       }},
      {"reverse", filter_reverse},
      {"round", filter_round},
      {"safe", [](Interpreter&, const Value& v,
                  CallArgs&) { return v.is_markup() ? v : Value::markup(to_str(v)); }},
      {"select", [](Interpreter& in, const Value& v,
                    CallArgs& a) { return select_items(in, v, a, false, true); }},
      {"selectattr", [](Interpreter& in, const Value& v,
                        CallArgs& a) { return select_items(in, v, a, true, true); }},
      {"sort", filter_sort},
      {"string", [](Interpreter&, const Value& v, CallArgs&) { return Value(to_str(v)); }},
      {"sum", filter_sum},
      {"title",
       [](Interpreter&, const Value& v, CallArgs&) { return Value(title_filter(to_str(v))); }},
      {"tojson", filter_tojson},
      {"trim",
       [](Interpreter&, const Value& v, CallArgs& a) {
         Params p("filter 'trim'", a, {"chars"});
         return Value(strip(to_str(v), p.get(0), true, true));
       }},
      {"unique", filter_unique},
      {"upper", [](Interpreter&, const Value& v, CallArgs&) { return Value(upper(to_str(v))); }},
  };
  return table;
}

// ---- tests -------------------------------------------------------------------------------------
using TestFn = bool (*)(const Value&, const Value& arg);

bool is_lower_text(const std::string& s) {
  return lower(s) == s && upper(s) != s;
}
bool is_upper_text(const std::string& s) {
  return upper(s) == s && lower(s) != s;
}

const std::unordered_map<std::string, TestFn>& tests() {
  using K = Value::Kind;
  static const std::unordered_map<std::string, TestFn> table = {
      {"defined", [](const Value& v, const Value&) { return !v.is_undefined(); }},
      {"undefined", [](const Value& v, const Value&) { return v.is_undefined(); }},
      {"none", [](const Value& v, const Value&) { return v.is_none(); }},
      {"boolean", [](const Value& v, const Value&) { return v.kind() == K::boolean; }},
      {"true", [](const Value& v, const Value&) { return v.kind() == K::boolean && v.as_bool(); }},
      {"false",
       [](const Value& v, const Value&) { return v.kind() == K::boolean && !v.as_bool(); }},
      {"integer", [](const Value& v, const Value&) { return v.kind() == K::integer; }},
      {"float", [](const Value& v, const Value&) { return v.kind() == K::real; }},
      {"number", [](const Value& v, const Value&) { return v.is_number(); }},
      {"string", [](const Value& v, const Value&) { return v.is_string(); }},
      {"mapping", [](const Value& v, const Value&) { return v.is_dict(); }},
      // jinja2's Undefined iterates (as empty) and has __len__ and __getitem__.
      {"iterable",
       [](const Value& v, const Value&) {
         return v.is_undefined() || v.is_string() || v.is_sequence() || v.is_dict();
       }},
      {"sequence",
       [](const Value& v, const Value&) {
         return v.is_undefined() || v.is_string() || v.is_sequence() || v.is_dict();
       }},
      {"callable",
       [](const Value& v, const Value&) { return v.kind() == K::function || v.is_undefined(); }},
      {"sameas", [](const Value& v, const Value& arg) { return v.same_object(arg); }},
      {"eq", [](const Value& v, const Value& arg) { return equals(v, arg); }},
      {"ne", [](const Value& v, const Value& arg) { return !equals(v, arg); }},
      {"lt", [](const Value& v, const Value& arg) { return less(v, arg); }},
      {"le", [](const Value& v, const Value& arg) { return less(v, arg) || equals(v, arg); }},
      {"gt", [](const Value& v, const Value& arg) { return less(arg, v); }},
      {"ge", [](const Value& v, const Value& arg) { return less(arg, v) || equals(v, arg); }},
      {"in", [](const Value& v, const Value& arg) { return contains(arg, v); }},
      {"odd",
       [](const Value& v, const Value&) { return binary_op("%", v, Value(2)).as_int() == 1; }},
      {"even",
       [](const Value& v, const Value&) { return binary_op("%", v, Value(2)).as_int() == 0; }},
      {"divisibleby",
       [](const Value& v, const Value& arg) { return binary_op("%", v, arg).as_double() == 0; }},
      {"lower", [](const Value& v, const Value&) { return is_lower_text(to_str(v)); }},
      {"upper", [](const Value& v, const Value&) { return is_upper_text(to_str(v)); }},
  };
  return table;
}

const std::unordered_map<std::string, std::string>& test_aliases() {
  static const std::unordered_map<std::string, std::string> table = {
      {"==", "eq"}, {"equalto", "eq"}, {"!=", "ne"},          {"<", "lt"}, {"lessthan", "lt"},
      {"<=", "le"}, {">", "gt"},       {"greaterthan", "gt"}, {">=", "ge"}};
  return table;
}

// Tests that compare against one argument.
bool takes_argument(const std::string& name) {
  return name == "sameas" || name == "eq" || name == "ne" || name == "lt" || name == "le" ||
         name == "gt" || name == "ge" || name == "in" || name == "divisibleby";
}

// ---- globals -----------------------------------------------------------------------------------
Value make_range(Interpreter&, CallArgs& args) {
  if (!args.keyword.empty() || args.positional.empty() || args.positional.size() > 3)
    fail("range() takes 1 to 3 positional arguments");
  std::vector<int64_t> n;
  for (const Value& v : args.positional) {
    if (v.kind() != Value::Kind::integer && v.kind() != Value::Kind::boolean)
      fail("range() needs integers, not '" + type_name(v) + "'");
    n.push_back(v.as_int());
  }
  const int64_t start = n.size() > 1 ? n[0] : 0, stop = n.size() > 1 ? n[1] : n[0];
  const int64_t step = n.size() > 2 ? n[2] : 1;
  if (step == 0) fail("range() arg 3 must not be zero");
  const __int128 span =
      step > 0 ? __int128(stop) - start + step - 1 : __int128(start) - stop - step - 1;
  const __int128 count =
      std::max<__int128>(0, span / (step > 0 ? __int128(step) : -__int128(step)));
  constexpr int64_t kMaxRange = 100000;  // jinja2's sandbox limit
  if (count > kMaxRange)
    fail("Range too big. The sandbox blocks ranges larger than MAX_RANGE (100000).");
  List out;
  for (int64_t i = 0; i < int64_t(count); ++i) out.emplace_back(start + i * step);
  return Value::list(std::move(out));
}

// dict(mapping, **kwargs) / namespace(mapping, **kwargs)
Dict dict_from_args(const std::string& what, CallArgs& args) {
  Dict d;
  if (args.positional.size() > 1) fail(what + " takes at most one positional argument");
  if (!args.positional.empty()) {
    const Value& m = args.positional[0];
    if (!m.is_dict()) fail(what + " takes a mapping, not " + type_name(m));
    d = m.as_dict();
  }
  for (const auto& [key, value] : args.keyword) d.set(key, value);
  return d;
}

}  // namespace

// ---- the interface of chat_template_syntax.h ---------------------------------------------------
Dict global_functions() {
  Dict g;
  g.set("range", Value::function("range", make_range));
  g.set("dict", Value::function("dict", [](Interpreter&, CallArgs& args) {
          return Value::dict(dict_from_args("dict()", args));
        }));
  g.set("namespace", Value::function("namespace", [](Interpreter&, CallArgs& args) {
          return Value::ns(dict_from_args("namespace()", args));
        }));
  g.set("raise_exception",
        Value::function("raise_exception", [](Interpreter&, CallArgs& args) -> Value {
          Params p("raise_exception()", args, {"message"});
          throw TemplateError(p.text(0));  // the template's own words, as the user should see them
        }));
  g.set("strftime_now", Value::function("strftime_now", [](Interpreter&, CallArgs& args) {
          Params p("strftime_now()", args, {"format"});
          const std::string fmt = p.text(0);
          const std::time_t now = std::time(nullptr);
          std::tm local{};
          localtime_r(&now, &local);
          std::string buf(256 + fmt.size() * 8, '\0');
          const size_t n =
              fmt.empty() ? 0 : std::strftime(buf.data(), buf.size(), fmt.c_str(), &local);
          buf.resize(n);
          return Value(buf);
        }));
  return g;
}

Value apply_filter(Interpreter& in, const std::string& name, const Value& input, CallArgs& args) {
  const auto& table = filters();
  const auto it = table.find(name);
  if (it == table.end()) fail("filter '" + name + "' is not supported");
  return it->second(in, input, args);
}

bool apply_test(Interpreter&, const std::string& name, const Value& input, CallArgs& args) {
  const auto alias = test_aliases().find(name);
  const std::string& canonical = alias == test_aliases().end() ? name : alias->second;
  const auto it = tests().find(canonical);
  if (it == tests().end()) fail("test '" + name + "' is not supported");
  const size_t wanted = takes_argument(canonical) ? 1 : 0;
  if (args.positional.size() != wanted || !args.keyword.empty())
    fail("test '" + name + "' takes " + std::to_string(wanted) + " argument(s)");
  return it->second(input, wanted ? args.positional[0] : Value());
}

namespace {
int64_t add_checked(int64_t a, int64_t b) {
  int64_t r;
  if (__builtin_add_overflow(a, b, &r)) integer_overflow();
  return r;
}
int64_t sub_checked(int64_t a, int64_t b) {
  int64_t r;
  if (__builtin_sub_overflow(a, b, &r)) integer_overflow();
  return r;
}
int64_t mul_checked(int64_t a, int64_t b) {
  int64_t r;
  if (__builtin_mul_overflow(a, b, &r)) integer_overflow();
  return r;
}
}  // namespace

Value binary_op(const std::string& op, const Value& a, const Value& b) {
  using K = Value::Kind;
  if (op == "~") return Value(to_str(a) + to_str(b));
  require_defined(a);
  require_defined(b);
  const bool ints = (a.kind() == K::integer || a.kind() == K::boolean) &&
                    (b.kind() == K::integer || b.kind() == K::boolean);
  const bool numbers = a.is_number() && b.is_number();
  const auto unsupported = [&]() -> Value {
    if (op == "+" && (a.is_string() || a.is_sequence()))  // Python's words for these
      fail("can only concatenate " + type_name(a) + " (not \"" + type_name(b) + "\") to " +
           type_name(a));
    fail("unsupported operand type(s) for " + op + ": '" + type_name(a) + "' and '" + type_name(b) +
         "'");
  };
  if (op == "+") {
    if (ints) return Value(add_checked(a.as_int(), b.as_int()));
    if (numbers) return Value(a.as_double() + b.as_double());
    if (a.is_string() && b.is_string()) {
      if (a.is_markup() == b.is_markup())
        return a.is_markup() ? Value::markup(a.as_string() + b.as_string())
                             : Value(a.as_string() + b.as_string());
      // Markup + str escapes the str: "<b>"|safe + "<i>" is "<b>&lt;i&gt;".
      return Value::markup((a.is_markup() ? a.as_string() : html_escape(a.as_string())) +
                           (b.is_markup() ? b.as_string() : html_escape(b.as_string())));
    }
    if (a.is_sequence() && a.kind() == b.kind()) {
      List items = a.as_list();
      items.insert(items.end(), b.as_list().begin(), b.as_list().end());
      return a.kind() == K::tuple ? Value::tuple(std::move(items)) : Value::list(std::move(items));
    }
    return unsupported();
  }
  if (op == "-") {
    if (ints) return Value(sub_checked(a.as_int(), b.as_int()));
    return numbers ? Value(a.as_double() - b.as_double()) : unsupported();
  }
  if (op == "*") {
    if (ints) return Value(mul_checked(a.as_int(), b.as_int()));
    if (numbers) return Value(a.as_double() * b.as_double());
    const bool repeat_a =
        (a.is_string() || a.is_sequence()) && (b.kind() == K::integer || b.kind() == K::boolean);
    const bool repeat_b =
        (b.is_string() || b.is_sequence()) && (a.kind() == K::integer || a.kind() == K::boolean);
    if (!repeat_a && !repeat_b) return unsupported();
    const Value& seq = repeat_a ? a : b;
    const int64_t times = std::max<int64_t>(0, (repeat_a ? b : a).as_int());
    constexpr int64_t kMaxItems = int64_t(1) << 26;  // a render is a prompt, not a memory test
    if (times > 0 &&
        (seq.is_string() ? int64_t(seq.as_string().size()) : length(seq)) > kMaxItems / times)
      fail("repetition result too large");
    if (seq.is_string()) {
      std::string out;
      for (int64_t i = 0; i < times; ++i) out += seq.as_string();
      return Value(out);
    }
    List items;
    for (int64_t i = 0; i < times; ++i)
      items.insert(items.end(), seq.as_list().begin(), seq.as_list().end());
    return seq.kind() == K::tuple ? Value::tuple(std::move(items)) : Value::list(std::move(items));
  }
  if (!numbers) {
    if (op == "%" && a.is_string())
      fail("string formatting with % is not supported in chat templates");
    return unsupported();
  }
  if (op == "/") {
    if (b.as_double() == 0) fail("division by zero");
    return Value(a.as_double() / b.as_double());
  }
  if (op == "//" || op == "%") {
    if (b.as_double() == 0) fail("integer division or modulo by zero");
    if (ints) {  // Python floors: -7 // 2 == -4, -7 % 3 == 2
      const int64_t x = a.as_int(), y = b.as_int();
      if (x == INT64_MIN && y == -1) integer_overflow();
      int64_t q = x / y, r = x % y;
      if (r != 0 && ((r < 0) != (y < 0))) {
        --q;
        r += y;
      }
      return op == "//" ? Value(q) : Value(r);
    }
    const double x = a.as_double(), y = b.as_double();
    const double q = std::floor(x / y);
    return op == "//" ? Value(q) : Value(x - q * y);
  }
  if (op == "**") {
    if (ints && b.as_int() >= 0) {
      const int64_t base = a.as_int(), exponent = b.as_int();
      if (base == 0 || base == 1) return Value(exponent == 0 ? int64_t(1) : base);
      if (base == -1) return Value(exponent % 2 ? int64_t(-1) : int64_t(1));
      if (exponent > 64) integer_overflow();  // |base| >= 2
      int64_t r = 1;
      for (int64_t i = 0; i < exponent; ++i) r = mul_checked(r, base);
      return Value(r);
    }
    return Value(std::pow(a.as_double(), b.as_double()));
  }
  return unsupported();
}

}  // namespace origami::jinja
