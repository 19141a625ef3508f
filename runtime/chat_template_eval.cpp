// The interpreter of chat templates: scopes as jinja2 has them, and the evaluation of every node
// of the syntax tree (chat_template_syntax.h).
#include <algorithm>

#include "runtime/chat_template.h"
#include "runtime/chat_template_syntax.h"

namespace origami::jinja {

namespace {

constexpr size_t kNoParent = size_t(-1);
constexpr size_t kContextFrame = 1;

[[noreturn]] void fail_at(const Where& where, const std::string& message) {
  throw TemplateError("chat template: " + message + " (" + describe(where) + ")");
}

// A frame pushed for the life of a scope (a loop iteration, a macro call).
class ScopedFrame {
 public:
  ScopedFrame(Interpreter& in, bool isolated) : in_(in) { in_.push_frame(isolated); }
  ~ScopedFrame() { in_.pop_frame(); }
  ScopedFrame(const ScopedFrame&) = delete;
  ScopedFrame& operator=(const ScopedFrame&) = delete;

 private:
  Interpreter& in_;
};

// Binds a for-loop or set target: one name, or names unpacked from a sequence.
void bind(Interpreter& in, const Target& target, const Value& value) {
  if (!target.unpack) {
    in.assign(target.names[0], value);
    return;
  }
  const List items = iterate(value);
  if (items.size() != target.names.size())
    fail(items.size() < target.names.size()
             ? "not enough values to unpack (expected " + std::to_string(target.names.size()) +
                   ", got " + std::to_string(items.size()) + ")"
             : "too many values to unpack (expected " + std::to_string(target.names.size()) + ")");
  for (size_t i = 0; i < items.size(); ++i) in.assign(target.names[i], items[i]);
}

bool compare(const std::string& op, const Value& a, const Value& b) {
  if (op == "==") return equals(a, b);
  if (op == "!=") return !equals(a, b);
  if (op == "<") return less(a, b);
  if (op == ">") return less(b, a);
  if (op == "<=") return less(a, b) || equals(a, b);
  if (op == ">=") return less(b, a) || equals(a, b);
  if (op == "in") return contains(b, a);
  return !contains(b, a);  // notin
}

// The `loop` variable of iteration i of n.
Value loop_object(const List& items, size_t i) {
  const int64_t n = int64_t(items.size()), index0 = int64_t(i);
  Dict loop;
  loop.set("index0", index0);
  loop.set("index", index0 + 1);
  loop.set("revindex0", n - index0 - 1);
  loop.set("revindex", n - index0);
  loop.set("first", i == 0);
  loop.set("last", index0 == n - 1);
  loop.set("length", n);
  loop.set("depth0", 0);
  loop.set("depth", 1);
  loop.set("previtem", i > 0 ? items[i - 1] : Value::undefined("there is no previous item"));
  loop.set("nextitem", index0 + 1 < n ? items[i + 1] : Value::undefined("there is no next item"));
  loop.set("cycle", Value::function("loop.cycle", [index0](Interpreter&, CallArgs& args) {
             if (args.positional.empty()) fail("no items for cycling given");
             return args.positional[size_t(index0) % args.positional.size()];
           }));
  return Value::dict(std::move(loop));
}

}  // namespace

// ---- Interpreter -------------------------------------------------------------------------------
Interpreter::Interpreter(Dict context) {
  frames_.push_back({{}, kNoParent});
  const Dict globals = global_functions();
  for (const auto& [name, value] : globals.entries()) frames_[0].vars[name.as_string()] = value;
  frames_.push_back({{}, 0});
  for (auto& [name, value] : context.entries())
    frames_[kContextFrame].vars[name.as_string()] = value;
}

Value Interpreter::lookup(const std::string& name) const {
  for (size_t i = frames_.size() - 1; i != kNoParent; i = frames_[i].parent) {
    const auto it = frames_[i].vars.find(name);
    if (it != frames_[i].vars.end()) return it->second;
  }
  return Value::undefined("'" + name + "' is undefined");
}

void Interpreter::assign(const std::string& name, Value v) {
  frames_.back().vars[name] = std::move(v);
}

void Interpreter::push_frame(bool isolated) {
  constexpr size_t kMaxDepth = 256;  // nested loops and macro calls (recursive macros end here)
  if (frames_.size() > kMaxDepth) fail("maximum recursion depth exceeded");
  frames_.push_back({{}, isolated ? kContextFrame : frames_.size() - 1});
}

void Interpreter::pop_frame() {
  frames_.pop_back();
}

Value Interpreter::eval(const Expr& e) {
  try {
    return e.eval(*this);
  } catch (const Failure& f) {
    fail_at(e.where, f.message);
  }
}

Flow Interpreter::exec_body(const Body& body, std::string& out) {
  for (const auto& stmt : body) {
    Flow flow;
    try {
      flow = stmt->exec(*this, out);
    } catch (const Failure& f) {
      fail_at(stmt->where, f.message);
    }
    if (flow != Flow::next) return flow;
  }
  return Flow::next;
}

std::string Interpreter::render_body(const Body& body) {
  std::string out;
  exec_body(body, out);
  return out;
}

Value Interpreter::call(const Value& callee, CallArgs& args) {
  require_defined(callee);
  if (callee.kind() != Value::Kind::function)
    fail("'" + type_name(callee) + "' object is not callable");
  return callee.as_function().call(*this, args);
}

Value Interpreter::filter(const std::string& name, const Value& input, CallArgs& args) {
  return apply_filter(*this, name, input, args);
}

bool Interpreter::test(const std::string& name, const Value& input, CallArgs& args) {
  return apply_test(*this, name, input, args);
}

CallArgs Interpreter::eval_args(const Arguments& args) {
  CallArgs out;
  for (const auto& e : args.positional) out.positional.push_back(eval(*e));
  for (const auto& [key, e] : args.keyword) out.keyword.emplace_back(key, eval(*e));
  return out;
}

// ---- expressions -------------------------------------------------------------------------------
Value Literal::eval(Interpreter&) const {
  return value;
}

Value Name::eval(Interpreter& in) const {
  return in.lookup(name);
}

Value ListExpr::eval(Interpreter& in) const {
  List values;
  for (const auto& item : items) values.push_back(in.eval(*item));
  return tuple ? Value::tuple(std::move(values)) : Value::list(std::move(values));
}

Value DictExpr::eval(Interpreter& in) const {
  Dict d;
  for (const auto& [key_expr, value_expr] : items) {
    Value key = in.eval(*key_expr);
    require_defined(key);
    if (key.is_sequence() && key.kind() != Value::Kind::tuple) fail("unhashable type: 'list'");
    if (key.is_dict() || key.kind() == Value::Kind::ns)
      fail("unhashable type: '" + type_name(key) + "'");
    d.set(std::move(key), in.eval(*value_expr));
  }
  return Value::dict(std::move(d));
}

Value Attribute::eval(Interpreter& in) const {
  const Value obj = in.eval(*object);
  require_defined(obj);
  return get_attribute(obj, name);
}

Value Item::eval(Interpreter& in) const {
  const Value obj = in.eval(*object);
  require_defined(obj);
  return get_item(obj, in.eval(*key));
}

Value Slice::eval(Interpreter& in) const {
  const Value obj = in.eval(*object);
  const auto part = [&](const ExprPtr& e) { return e ? in.eval(*e) : Value::none(); };
  return slice(obj, part(start), part(stop), part(step));
}

Value Call::eval(Interpreter& in) const {
  const Value fn = in.eval(*callee);
  CallArgs args = in.eval_args(this->args);
  return in.call(fn, args);
}

Value FilterExpr::eval(Interpreter& in) const {
  const Value value = input ? in.eval(*input) : Value();
  CallArgs call_args = in.eval_args(args);
  return in.filter(name, value, call_args);
}

Value FilterExpr::apply_to_block(Interpreter& in, const Value& block) const {
  const Value value =
      input ? static_cast<const FilterExpr&>(*input).apply_to_block(in, block) : block;
  CallArgs call_args = in.eval_args(args);
  try {
    return in.filter(name, value, call_args);
  } catch (const Failure& f) {
    fail_at(where, f.message);
  }
}

Value TestExpr::eval(Interpreter& in) const {
  const Value value = in.eval(*input);
  CallArgs call_args = in.eval_args(args);
  return Value(in.test(name, value, call_args) != negated);
}

Value Unary::eval(Interpreter& in) const {
  const Value v = in.eval(*operand);
  if (op == "not") return Value(!truthy(v));
  require_defined(v);
  if (!v.is_number()) fail("bad operand type for unary " + op + ": '" + type_name(v) + "'");
  if (op == "+") return v.kind() == Value::Kind::boolean ? Value(v.as_int()) : v;
  if (v.kind() == Value::Kind::real) return Value(-v.as_double());
  if (v.as_int() == INT64_MIN) integer_overflow();
  return Value(-v.as_int());
}

Value Binary::eval(Interpreter& in) const {
  Value a = in.eval(*left);
  if (op == "and") return truthy(a) ? in.eval(*right) : a;
  if (op == "or") return truthy(a) ? a : in.eval(*right);
  return binary_op(op, a, in.eval(*right));
}

Value Compare::eval(Interpreter& in) const {
  Value a = in.eval(*first);
  for (const auto& [op, expr] : rest) {
    Value b = in.eval(*expr);
    if (!compare(op, a, b)) return Value(false);
    a = std::move(b);
  }
  return Value(true);
}

Value Conditional::eval(Interpreter& in) const {
  if (truthy(in.eval(*cond))) return in.eval(*then);
  if (otherwise) return in.eval(*otherwise);
  return Value::undefined("the inline if-expression on " + describe(where) +
                          " evaluated to false and no else section was defined");
}

// ---- statements --------------------------------------------------------------------------------
Flow TextStmt::exec(Interpreter&, std::string& out) const {
  out += text;
  return Flow::next;
}

Flow OutputStmt::exec(Interpreter& in, std::string& out) const {
  out += to_str(in.eval(*expr));
  return Flow::next;
}

Flow IfStmt::exec(Interpreter& in, std::string& out) const {
  for (const auto& [cond, body] : branches)
    if (truthy(in.eval(*cond))) return in.exec_body(body, out);
  return in.exec_body(otherwise, out);
}

Flow ForStmt::exec(Interpreter& in, std::string& out) const {
  List items = iterate(in.eval(*iterable));
  if (filter) {  // {% for x in xs if cond %}: loop.index and friends count what passes
    List kept;
    for (Value& item : items) {
      ScopedFrame frame(in, false);
      bind(in, target, item);
      if (truthy(in.eval(*filter))) kept.push_back(std::move(item));
    }
    items = std::move(kept);
  }
  if (items.empty()) return in.exec_body(otherwise, out);
  for (size_t i = 0; i < items.size(); ++i) {
    // A fresh frame each iteration: what the body sets is gone at the next one, as in jinja2.
    ScopedFrame frame(in, false);
    bind(in, target, items[i]);
    in.assign("loop", loop_object(items, i));
    if (in.exec_body(body, out) == Flow::break_loop) break;
  }
  return Flow::next;
}

Flow SetStmt::exec(Interpreter& in, std::string&) const {
  if (!value) {  // {% set name %}body{% endset %}
    Value text(in.render_body(body));
    in.assign(target.names[0], filter ? filter->apply_to_block(in, text) : text);
    return Flow::next;
  }
  Value v = in.eval(*value);
  if (target.attribute.empty()) {
    bind(in, target, v);
    return Flow::next;
  }
  const Value ns = in.lookup(target.names[0]);
  if (ns.kind() != Value::Kind::ns)
    fail("cannot assign attribute '" + target.attribute + "' on '" + target.names[0] +
         "': it is not a namespace() object");
  ns.ns_dict().set(target.attribute, std::move(v));
  return Flow::next;
}

Flow MacroStmt::exec(Interpreter& in, std::string&) const {
  in.assign(name, Value::function(name, [this](Interpreter& caller, CallArgs& args) {
              // A macro sees the render context and its arguments, not the caller's loop
              // variables.
              ScopedFrame frame(caller, true);
              if (args.positional.size() > params.size())
                fail("macro '" + name + "' takes not more than " + std::to_string(params.size()) +
                     " argument(s)");
              for (size_t i = 0; i < params.size(); ++i) {
                const auto& [param, fallback] = params[i];
                const auto kw = std::find_if(args.keyword.begin(), args.keyword.end(),
                                             [&](const auto& k) { return k.first == param; });
                if (i < args.positional.size())
                  caller.assign(param, args.positional[i]);
                else if (kw != args.keyword.end())
                  caller.assign(param, kw->second);
                else if (fallback)
                  caller.assign(param, caller.eval(*fallback));
                else
                  caller.assign(param, Value::undefined("'" + param + "' is undefined"));
              }
              for (const auto& [key, value] : args.keyword) {
                if (std::none_of(params.begin(), params.end(),
                                 [&](const auto& p) { return p.first == key; }))
                  fail("macro '" + name + "' takes no keyword argument '" + key + "'");
              }
              return Value(caller.render_body(body));
            }));
  return Flow::next;
}

Flow LoopControlStmt::exec(Interpreter&, std::string&) const {
  return flow;
}

Flow FilterBlockStmt::exec(Interpreter& in, std::string& out) const {
  out += to_str(filter->apply_to_block(in, Value(in.render_body(body))));
  return Flow::next;
}

Flow BlockStmt::exec(Interpreter& in, std::string& out) const {
  ScopedFrame frame(in, false);  // what the body sets stays inside, as in a jinja2 call block
  return in.exec_body(body, out);
}

}  // namespace origami::jinja
