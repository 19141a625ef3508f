// The syntax tree of a chat template and the interpreter that runs it. tokenize
// (chat_template_lex.cpp) and parse_template (chat_template_parse.cpp) build the tree the way
// jinja2's lexer and parser would, with trim_blocks and lstrip_blocks on; the eval methods and
// the Interpreter live in chat_template_eval.cpp, methods and attribute access in
// chat_template_methods.cpp, filters, tests and globals in chat_template_builtins.cpp.
// Internal to runtime/chat_template*.cpp.
#pragma once

#include <map>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "runtime/chat_template_value.h"

namespace origami::jinja {

struct Where {
  int line = 0;
  int column = 0;
};
std::string describe(const Where& where);  // "line 3, column 14"

[[noreturn]] void syntax_error(const std::string& message, const Where& where);  // origami::Error

// ---- tokens (chat_template_lex.cpp) ------------------------------------------------------------
enum class Tok {
  data,
  var_begin,
  var_end,
  block_begin,
  block_end,
  name,
  string,
  integer,
  real,
  op,
  eof
};

struct Token {
  Tok type;
  std::string text;  // data text, name, decoded string value, number or operator
  Where where;
};

// The template's tokens, ending with eof; throws origami::Error for what no token can start.
std::vector<Token> tokenize(const std::string& source);

// ---- expressions -------------------------------------------------------------------------------
struct Expr {
  explicit Expr(Where w) : where(w) {}
  virtual ~Expr() = default;
  virtual Value eval(Interpreter& in) const = 0;
  Where where;
};
using ExprPtr = std::unique_ptr<Expr>;

struct Arguments {  // (a, b, key=c) of a call, filter or test
  std::vector<ExprPtr> positional;
  std::vector<std::pair<std::string, ExprPtr>> keyword;
};

struct Literal : Expr {
  Literal(Where w, Value v) : Expr(w), value(std::move(v)) {}
  Value eval(Interpreter& in) const override;
  Value value;
};

struct Name : Expr {
  Name(Where w, std::string n) : Expr(w), name(std::move(n)) {}
  Value eval(Interpreter& in) const override;
  std::string name;
};

struct ListExpr : Expr {  // [a, b] or (a, b)
  ListExpr(Where w, bool t) : Expr(w), tuple(t) {}
  Value eval(Interpreter& in) const override;
  bool tuple;
  std::vector<ExprPtr> items;
};

struct DictExpr : Expr {  // {'a': b}
  using Expr::Expr;
  Value eval(Interpreter& in) const override;
  std::vector<std::pair<ExprPtr, ExprPtr>> items;
};

struct Attribute : Expr {  // obj.name
  Attribute(Where w, ExprPtr o, std::string n)
      : Expr(w), object(std::move(o)), name(std::move(n)) {}
  Value eval(Interpreter& in) const override;
  ExprPtr object;
  std::string name;
};

struct Item : Expr {  // obj[key]
  Item(Where w, ExprPtr o, ExprPtr k) : Expr(w), object(std::move(o)), key(std::move(k)) {}
  Value eval(Interpreter& in) const override;
  ExprPtr object, key;
};

struct Slice : Expr {  // obj[start:stop:step], each part optional
  using Expr::Expr;
  Value eval(Interpreter& in) const override;
  ExprPtr object, start, stop, step;
};

struct Call : Expr {  // f(args)
  using Expr::Expr;
  Value eval(Interpreter& in) const override;
  ExprPtr callee;
  Arguments args;
};

struct FilterExpr : Expr {  // input | name(args); input is null in a {% filter %} block
  using Expr::Expr;
  Value eval(Interpreter& in) const override;
  // The filters of a {% filter %} or {% set %} block applied to its rendered text.
  Value apply_to_block(Interpreter& in, const Value& block) const;
  ExprPtr input;
  std::string name;
  Arguments args;
};

struct TestExpr : Expr {  // input is [not] name(args)
  using Expr::Expr;
  Value eval(Interpreter& in) const override;
  ExprPtr input;
  std::string name;
  Arguments args;
  bool negated = false;
};

struct Unary : Expr {  // not x, -x, +x
  Unary(Where w, std::string o, ExprPtr x) : Expr(w), op(std::move(o)), operand(std::move(x)) {}
  Value eval(Interpreter& in) const override;
  std::string op;
  ExprPtr operand;
};

struct Binary : Expr {  // a op b: + - * / // % ** ~ and or
  Binary(Where w, std::string o, ExprPtr a, ExprPtr b)
      : Expr(w), op(std::move(o)), left(std::move(a)), right(std::move(b)) {}
  Value eval(Interpreter& in) const override;
  std::string op;
  ExprPtr left, right;
};

struct Compare : Expr {  // a == b < c ... (chained as Python chains them); ops include in, notin
  using Expr::Expr;
  Value eval(Interpreter& in) const override;
  ExprPtr first;
  std::vector<std::pair<std::string, ExprPtr>> rest;
};

struct Conditional : Expr {  // then if cond else otherwise (otherwise optional: undefined)
  using Expr::Expr;
  Value eval(Interpreter& in) const override;
  ExprPtr cond, then, otherwise;
};

// ---- statements --------------------------------------------------------------------------------
enum class Flow { next, break_loop, continue_loop };

struct Stmt {
  explicit Stmt(Where w) : where(w) {}
  virtual ~Stmt() = default;
  virtual Flow exec(Interpreter& in, std::string& out) const = 0;
  Where where;
};
using StmtPtr = std::unique_ptr<Stmt>;
using Body = std::vector<StmtPtr>;

struct TextStmt : Stmt {
  TextStmt(Where w, std::string t) : Stmt(w), text(std::move(t)) {}
  Flow exec(Interpreter& in, std::string& out) const override;
  std::string text;
};

struct OutputStmt : Stmt {  // {{ expr }}
  OutputStmt(Where w, ExprPtr e) : Stmt(w), expr(std::move(e)) {}
  Flow exec(Interpreter& in, std::string& out) const override;
  ExprPtr expr;
};

struct IfStmt : Stmt {
  using Stmt::Stmt;
  Flow exec(Interpreter& in, std::string& out) const override;
  std::vector<std::pair<ExprPtr, Body>> branches;  // if, elif...
  Body otherwise;
};

// What a for loop or a set binds: a name, names to unpack (a, b), or ns.attr (set only).
struct Target {
  std::vector<std::string> names;
  bool unpack = false;
  std::string attribute;  // set ns.attr = ...: names[0] is the namespace
};

struct ForStmt : Stmt {
  using Stmt::Stmt;
  Flow exec(Interpreter& in, std::string& out) const override;
  Target target;
  ExprPtr iterable, filter;  // filter: {% for x in xs if cond %}
  Body body, otherwise;
};

struct SetStmt : Stmt {  // {% set t = expr %}, or {% set name %}body{% endset %} (with a filter)
  using Stmt::Stmt;
  Flow exec(Interpreter& in, std::string& out) const override;
  Target target;
  ExprPtr value;
  Body body;
  std::unique_ptr<FilterExpr> filter;  // applied to the rendered body; input is null
};

struct MacroStmt : Stmt {
  using Stmt::Stmt;
  Flow exec(Interpreter& in, std::string& out) const override;
  std::string name;
  std::vector<std::pair<std::string, ExprPtr>> params;  // default may be null
  Body body;
};

struct LoopControlStmt : Stmt {  // break / continue
  LoopControlStmt(Where w, Flow f) : Stmt(w), flow(f) {}
  Flow exec(Interpreter& in, std::string& out) const override;
  Flow flow;
};

struct FilterBlockStmt : Stmt {  // {% filter name(args) %}body{% endfilter %}
  using Stmt::Stmt;
  Flow exec(Interpreter& in, std::string& out) const override;
  std::unique_ptr<FilterExpr> filter;
  Body body;
};

struct BlockStmt : Stmt {  // a body with no meaning of its own: {% generation %}
  using Stmt::Stmt;
  Flow exec(Interpreter& in, std::string& out) const override;
  Body body;
};

// Throws origami::Error naming the line, column and construct for syntax errors and constructs
// the interpreter does not have.
Body parse_template(const std::string& source);

// ---- the interpreter ---------------------------------------------------------------------------
// Variables live in frames: globals, the render context (where top-level set writes), then one
// frame per loop iteration and per macro call, as jinja2 scopes them.
class Interpreter {
 public:
  explicit Interpreter(Dict context);

  Value lookup(const std::string& name) const;
  void assign(const std::string& name, Value v);
  void push_frame(bool isolated = false);  // isolated: sees only globals and the context
  void pop_frame();

  // Evaluates e, placing a Failure from inside it at e's line and column.
  Value eval(const Expr& e);
  Flow exec_body(const Body& body, std::string& out);
  std::string render_body(const Body& body);  // into a new string, break/continue not allowed

  Value call(const Value& callee, CallArgs& args);
  Value filter(const std::string& name, const Value& input, CallArgs& args);
  bool test(const std::string& name, const Value& input, CallArgs& args);
  CallArgs eval_args(const Arguments& args);

 private:
  struct Frame {
    std::unordered_map<std::string, Value> vars;
    size_t parent;  // index into frames_, or npos for the globals frame
  };
  std::vector<Frame> frames_;
};

// ---- builtins (chat_template_builtins.cpp) -----------------------------------------------------
Dict global_functions();  // range, namespace, dict, raise_exception, strftime_now
// jinja2's getattr: a method of the value's type, else its item; undefined when neither.
Value get_attribute(const Value& object, const std::string& name);
// jinja2's getitem: the item, else (for a string key) the attribute; undefined when neither.
Value get_item(const Value& object, const Value& key);
Value slice(const Value& object, const Value& start, const Value& stop, const Value& step);
Value apply_filter(Interpreter& in, const std::string& name, const Value& input, CallArgs& args);
bool apply_test(Interpreter& in, const std::string& name, const Value& input, CallArgs& args);
// Arithmetic with Python's rules: + - * / // % ** and ~ (string concatenation).
Value binary_op(const std::string& op, const Value& a, const Value& b);

}  // namespace origami::jinja
