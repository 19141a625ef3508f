// The parser of chat templates: jinja2's (3.1) grammar over the tokens of
// chat_template_lex.cpp. Precedence, loosest first:
//   a if c else b | or | and | not | == != < <= > >= in, not in | + - | ~ | * / // % | **
//   | unary - + | postfix .name [i] [a:b] (args) with filters |f and tests `is t` binding tightest.
#include <algorithm>
#include <cstdlib>
#include <set>

#include "runtime/chat_template.h"
#include "runtime/chat_template_syntax.h"

namespace origami::jinja {

namespace {

// ---- parser ------------------------------------------------------------------------------------
std::string token_description(const Token& t) {
  switch (t.type) {
    case Tok::data:
      return "text";
    case Tok::var_begin:
      return "'{{'";
    case Tok::var_end:
      return "'}}'";
    case Tok::block_begin:
      return "'{%'";
    case Tok::block_end:
      return "'%}'";
    case Tok::string:
      return "a string";
    case Tok::integer:
    case Tok::real:
      return "a number";
    case Tok::eof:
      return "end of template";
    default:
      return "'" + t.text + "'";
  }
}

class Parser {
 public:
  explicit Parser(std::vector<Token> tokens) : tokens_(std::move(tokens)) {}

  Body parse_template() {
    Body body = subparse({});
    if (cur().type != Tok::eof) fail_unexpected(cur());  // an end tag nobody opened
    return body;
  }

 private:
  // ---- token stream ----
  const Token& cur() const { return tokens_[pos_]; }
  const Token& look() const { return tokens_[std::min(pos_ + 1, tokens_.size() - 1)]; }
  const Token& next() { return tokens_[pos_ < tokens_.size() - 1 ? pos_++ : pos_]; }
  bool is_op(const char* op) const { return cur().type == Tok::op && cur().text == op; }
  bool is_name(const char* name) const { return cur().type == Tok::name && cur().text == name; }
  bool skip_op(const char* op) { return is_op(op) ? (next(), true) : false; }
  bool skip_name(const char* name) { return is_name(name) ? (next(), true) : false; }
  [[noreturn]] void fail_unexpected(const Token& t, const std::string& wanted = "") {
    if (t.type == Tok::name && kEndTags.count(t.text))
      syntax_error("unexpected '" + t.text + "'" + (wanted.empty() ? "" : ", expected " + wanted),
                   t.where);
    syntax_error(
        "unexpected " + token_description(t) + (wanted.empty() ? "" : ", expected " + wanted),
        t.where);
  }
  const Token& expect(Tok type, const char* what) {
    if (cur().type != type) fail_unexpected(cur(), what);
    return next();
  }
  void expect_op(const char* op) {
    if (!is_op(op)) fail_unexpected(cur(), std::string("'") + op + "'");
    next();
  }
  void expect_name(const char* name) {
    if (!is_name(name)) fail_unexpected(cur(), std::string("'") + name + "'");
    next();
  }

  // ---- statements ----
  // Text, {{ }} and tags up to a tag named in end_names (left current) or the end of template.
  Body subparse(const std::set<std::string>& end_names) {
    Body body;
    while (cur().type != Tok::eof) {
      const Token& t = next();
      if (t.type == Tok::data) {
        body.push_back(std::make_unique<TextStmt>(t.where, t.text));
      } else if (t.type == Tok::var_begin) {
        body.push_back(std::make_unique<OutputStmt>(t.where, parse_tuple(true)));
        expect(Tok::var_end, "'}}'");
      } else if (t.type == Tok::block_begin) {
        if (cur().type == Tok::name && end_names.count(cur().text)) return body;
        body.push_back(parse_statement());
        expect(Tok::block_end, "'%}'");
      } else {
        fail_unexpected(t);
      }
    }
    return body;
  }

  // After the tag's own words: '%}', the body, and the end tag's name (consumed when drop).
  Body parse_statements(const std::set<std::string>& end_names, bool drop_end) {
    expect(Tok::block_end, "'%}'");
    Body body = subparse(end_names);
    if (cur().type == Tok::eof) {
      std::string names;
      for (const auto& n : end_names) names += (names.empty() ? "'" : " or '") + n + "'";
      syntax_error("unexpected end of template, expected " + names, cur().where);
    }
    if (drop_end) next();
    return body;
  }

  StmtPtr parse_statement() {
    const Token& t = cur();
    if (t.type != Tok::name) fail_unexpected(t, "a tag name");
    const std::string& tag = t.text;
    if (tag == "if") return parse_if();
    if (tag == "for") return parse_for();
    if (tag == "set") return parse_set();
    if (tag == "macro") return parse_macro();
    if (tag == "filter") return parse_filter_block();
    if (tag == "break" || tag == "continue") {
      if (loop_depth_ == 0) syntax_error("'" + tag + "' outside of a loop", t.where);
      next();
      return std::make_unique<LoopControlStmt>(
          t.where, tag == "break" ? Flow::break_loop : Flow::continue_loop);
    }
    if (tag == "generation") {  // Hugging Face marks assistant text with it; renders its body
      auto block = std::make_unique<BlockStmt>(next().where);
      block->body = parse_statements({"endgeneration"}, true);
      return block;
    }
    if (kEndTags.count(tag)) fail_unexpected(t);
    syntax_error("tag '" + tag + "' is not supported", t.where);
  }

  StmtPtr parse_if() {
    auto stmt = std::make_unique<IfStmt>(next().where);
    while (true) {
      ExprPtr cond = parse_tuple(false);
      stmt->branches.emplace_back(std::move(cond),
                                  parse_statements({"elif", "else", "endif"}, false));
      const std::string end = next().text;
      if (end == "elif") continue;
      if (end == "else") stmt->otherwise = parse_statements({"endif"}, true);
      return stmt;
    }
  }

  StmtPtr parse_for() {
    auto stmt = std::make_unique<ForStmt>(next().where);
    stmt->target = parse_target(false);
    expect_name("in");
    stmt->iterable = parse_tuple(false, "recursive");
    if (skip_name("if")) stmt->filter = parse_expression(true);
    if (is_name("recursive")) syntax_error("recursive loops are not supported", cur().where);
    ++loop_depth_;
    stmt->body = parse_statements({"endfor", "else"}, false);
    --loop_depth_;
    if (next().text == "else") stmt->otherwise = parse_statements({"endfor"}, true);
    return stmt;
  }

  StmtPtr parse_set() {
    auto stmt = std::make_unique<SetStmt>(next().where);
    stmt->target = parse_target(true);
    if (skip_op("=")) {
      stmt->value = parse_tuple(true);
      return stmt;
    }
    if (stmt->target.unpack || !stmt->target.attribute.empty())
      syntax_error("a {% set %} block assigns to one name", stmt->where);
    if (is_op("|")) stmt->filter = parse_filters(nullptr, false);
    stmt->body = parse_statements({"endset"}, true);
    return stmt;
  }

  StmtPtr parse_macro() {
    auto stmt = std::make_unique<MacroStmt>(next().where);
    stmt->name = expect(Tok::name, "a macro name").text;
    expect_op("(");
    while (!is_op(")")) {
      if (!stmt->params.empty()) expect_op(",");
      std::string param = expect(Tok::name, "a parameter name").text;
      ExprPtr fallback;
      if (skip_op("="))
        fallback = parse_expression(true);
      else if (!stmt->params.empty() && stmt->params.back().second)
        syntax_error("non-default argument follows default argument", cur().where);
      stmt->params.emplace_back(std::move(param), std::move(fallback));
    }
    expect_op(")");
    const int outer_loops = loop_depth_;
    loop_depth_ = 0;
    stmt->body = parse_statements({"endmacro"}, true);
    loop_depth_ = outer_loops;
    return stmt;
  }

  StmtPtr parse_filter_block() {
    auto stmt = std::make_unique<FilterBlockStmt>(next().where);
    stmt->filter = parse_filters(nullptr, true);
    stmt->body = parse_statements({"endfilter"}, true);
    return stmt;
  }

  // for x / for k, v / set x / set a, b / set ns.attr
  Target parse_target(bool allow_attribute) {
    Target target;
    const bool parenthesized = skip_op("(");
    target.names.push_back(expect(Tok::name, "a variable name").text);
    if (allow_attribute && !parenthesized && skip_op(".")) {
      target.attribute = expect(Tok::name, "an attribute name").text;
      return target;
    }
    while (skip_op(",")) {
      target.unpack = true;
      if (cur().type != Tok::name) break;  // a trailing comma
      target.names.push_back(next().text);
    }
    if (parenthesized) {
      expect_op(")");
      target.unpack = true;
    }
    return target;
  }

  // ---- expressions ----
  // a, b, c (a tuple) or a lone expression; with_conditional=false leaves `if` to the caller
  // (for x in xs if cond).
  ExprPtr parse_tuple(bool with_conditional, const char* extra_end = nullptr,
                      bool parenthesized = false) {
    const Where where = cur().where;
    std::vector<ExprPtr> items;
    bool is_tuple = false;
    while (true) {
      if (!items.empty()) expect_op(",");
      const Token& t = cur();
      if (t.type == Tok::var_end || t.type == Tok::block_end ||
          (t.type == Tok::op && t.text == ")") ||
          (extra_end && t.type == Tok::name && t.text == extra_end))
        break;
      items.push_back(parse_expression(with_conditional));
      if (is_op(","))
        is_tuple = true;
      else
        break;
    }
    if (!is_tuple) {
      if (!items.empty()) return std::move(items[0]);
      if (!parenthesized) fail_unexpected(cur(), "an expression");
    }
    auto tuple = std::make_unique<ListExpr>(where, true);
    tuple->items = std::move(items);
    return tuple;
  }

  ExprPtr parse_expression(bool with_conditional) {
    return with_conditional ? parse_conditional() : parse_or();
  }

  ExprPtr parse_conditional() {
    ExprPtr expr = parse_or();
    while (is_name("if")) {
      auto cond = std::make_unique<Conditional>(next().where);
      cond->then = std::move(expr);
      cond->cond = parse_or();
      if (skip_name("else")) cond->otherwise = parse_conditional();
      expr = std::move(cond);
    }
    return expr;
  }

  ExprPtr parse_or() {
    ExprPtr left = parse_and();
    while (is_name("or")) {
      const Where w = next().where;
      left = std::make_unique<Binary>(w, "or", std::move(left), parse_and());
    }
    return left;
  }

  ExprPtr parse_and() {
    ExprPtr left = parse_not();
    while (is_name("and")) {
      const Where w = next().where;
      left = std::make_unique<Binary>(w, "and", std::move(left), parse_not());
    }
    return left;
  }

  ExprPtr parse_not() {
    if (is_name("not")) {
      const Where w = next().where;
      return std::make_unique<Unary>(w, "not", parse_not());
    }
    return parse_compare();
  }

  ExprPtr parse_compare() {
    const Where where = cur().where;
    ExprPtr first = parse_math1();
    std::vector<std::pair<std::string, ExprPtr>> rest;
    while (true) {
      if (cur().type == Tok::op &&
          (cur().text == "==" || cur().text == "!=" || cur().text == "<" || cur().text == "<=" ||
           cur().text == ">" || cur().text == ">=")) {
        const std::string op = next().text;
        rest.emplace_back(op, parse_math1());
      } else if (skip_name("in")) {
        rest.emplace_back("in", parse_math1());
      } else if (is_name("not") && look().type == Tok::name && look().text == "in") {
        next();
        next();
        rest.emplace_back("notin", parse_math1());
      } else {
        break;
      }
    }
    if (rest.empty()) return first;
    auto cmp = std::make_unique<Compare>(where);
    cmp->first = std::move(first);
    cmp->rest = std::move(rest);
    return cmp;
  }

  template <typename Next>
  ExprPtr parse_binary(std::initializer_list<const char*> ops, Next next_level) {
    ExprPtr left = (this->*next_level)();
    while (true) {
      const auto op = std::find_if(ops.begin(), ops.end(), [&](const char* o) { return is_op(o); });
      if (op == ops.end()) return left;
      const Where w = next().where;
      left = std::make_unique<Binary>(w, *op, std::move(left), (this->*next_level)());
    }
  }
  ExprPtr parse_math1() { return parse_binary({"+", "-"}, &Parser::parse_concat); }
  ExprPtr parse_concat() { return parse_binary({"~"}, &Parser::parse_math2); }
  ExprPtr parse_math2() { return parse_binary({"*", "/", "//", "%"}, &Parser::parse_pow); }
  ExprPtr parse_pow() { return parse_binary({"**"}, &Parser::parse_unary_filtered); }
  ExprPtr parse_unary_filtered() { return parse_unary(true); }

  ExprPtr parse_unary(bool with_filters) {
    ExprPtr node;
    if (is_op("-") || is_op("+")) {
      const Token& t = next();
      node = std::make_unique<Unary>(t.where, t.text, parse_unary(false));
    } else {
      node = parse_primary();
    }
    node = parse_postfix(std::move(node));
    return with_filters ? parse_filter_expr(std::move(node)) : std::move(node);
  }

  ExprPtr parse_primary() {
    const Token& t = cur();
    switch (t.type) {
      case Tok::name: {
        next();
        if (t.text == "true" || t.text == "True")
          return std::make_unique<Literal>(t.where, Value(true));
        if (t.text == "false" || t.text == "False")
          return std::make_unique<Literal>(t.where, Value(false));
        if (t.text == "none" || t.text == "None")
          return std::make_unique<Literal>(t.where, Value::none());
        return std::make_unique<Name>(t.where, t.text);
      }
      case Tok::string: {
        std::string s;
        while (cur().type == Tok::string) s += next().text;  // "a" "b" is "ab"
        return std::make_unique<Literal>(t.where, Value(std::move(s)));
      }
      case Tok::integer:
        next();
        return std::make_unique<Literal>(t.where, Value(integer(t)));
      case Tok::real:
        next();
        return std::make_unique<Literal>(t.where, Value(std::strtod(t.text.c_str(), nullptr)));
      case Tok::op:
        if (t.text == "(") {
          next();
          ExprPtr inner = parse_tuple(true, nullptr, true);
          expect_op(")");
          return inner;
        }
        if (t.text == "[") return parse_list();
        if (t.text == "{") return parse_dict();
        break;
      default:
        break;
    }
    fail_unexpected(t, "an expression");
  }

  static int64_t integer(const Token& t) {
    try {
      return std::stoll(t.text);
    } catch (const std::out_of_range&) {
      syntax_error("integer " + t.text + " is out of range", t.where);
    }
  }

  ExprPtr parse_list() {
    auto list = std::make_unique<ListExpr>(next().where, false);
    while (!is_op("]")) {
      if (!list->items.empty()) expect_op(",");
      if (is_op("]")) break;
      list->items.push_back(parse_expression(true));
    }
    expect_op("]");
    return list;
  }

  ExprPtr parse_dict() {
    auto dict = std::make_unique<DictExpr>(next().where);
    while (!is_op("}")) {
      if (!dict->items.empty()) expect_op(",");
      if (is_op("}")) break;
      ExprPtr key = parse_expression(true);
      expect_op(":");
      dict->items.emplace_back(std::move(key), parse_expression(true));
    }
    expect_op("}");
    return dict;
  }

  ExprPtr parse_postfix(ExprPtr node) {
    while (true) {
      if (is_op(".")) {
        const Where w = next().where;
        const Token& t = next();
        if (t.type == Tok::name)
          node = std::make_unique<Attribute>(w, std::move(node), t.text);
        else if (t.type == Tok::integer)
          node = std::make_unique<Item>(w, std::move(node),
                                        std::make_unique<Literal>(t.where, Value(integer(t))));
        else
          fail_unexpected(t, "a name or number");
      } else if (is_op("[")) {
        node = parse_subscript(std::move(node));
      } else if (is_op("(")) {
        node = parse_call(std::move(node));
      } else {
        return node;
      }
    }
  }

  // obj[key] or obj[start:stop:step]
  ExprPtr parse_subscript(ExprPtr object) {
    const Where where = next().where;
    ExprPtr parts[3];
    int colons = 0;
    while (!is_op("]")) {
      if (is_op(",")) syntax_error("subscripts with several keys are not supported", cur().where);
      if (skip_op(":")) {
        if (++colons > 2) fail_unexpected(tokens_[pos_ - 1], "']'");
        continue;
      }
      if (parts[colons]) fail_unexpected(cur(), "']'");
      parts[colons] = parse_expression(true);
    }
    expect_op("]");
    if (colons == 0) {
      if (!parts[0]) syntax_error("empty subscript", where);
      return std::make_unique<Item>(where, std::move(object), std::move(parts[0]));
    }
    auto s = std::make_unique<Slice>(where);
    s->object = std::move(object);
    s->start = std::move(parts[0]);
    s->stop = std::move(parts[1]);
    s->step = std::move(parts[2]);
    return s;
  }

  Arguments parse_arguments() {
    expect_op("(");
    Arguments args;
    while (!is_op(")")) {
      if (!args.positional.empty() || !args.keyword.empty()) {
        expect_op(",");
        if (is_op(")")) break;
      }
      if (is_op("*") || is_op("**"))
        syntax_error("'" + cur().text + "' arguments are not supported", cur().where);
      if (cur().type == Tok::name && look().type == Tok::op && look().text == "=") {
        std::string key = next().text;
        next();
        args.keyword.emplace_back(std::move(key), parse_expression(true));
      } else {
        if (!args.keyword.empty())
          syntax_error("positional argument follows keyword argument", cur().where);
        args.positional.push_back(parse_expression(true));
      }
    }
    expect_op(")");
    return args;
  }

  ExprPtr parse_call(ExprPtr callee) {
    auto call = std::make_unique<Call>(cur().where);
    call->callee = std::move(callee);
    call->args = parse_arguments();
    return call;
  }

  std::string dotted_name() {
    std::string name = expect(Tok::name, "a name").text;
    while (is_op(".") && look().type == Tok::name) {
      next();
      name += "." + next().text;
    }
    return name;
  }

  // | f | g(x): start_inline when the first filter has no '|' before it ({% filter f %}).
  std::unique_ptr<FilterExpr> parse_filters(ExprPtr input, bool start_inline) {
    std::unique_ptr<FilterExpr> filter;
    while (is_op("|") || start_inline) {
      if (!start_inline) next();
      start_inline = false;
      auto f = std::make_unique<FilterExpr>(cur().where);
      f->input = filter ? std::move(filter) : std::move(input);
      f->name = dotted_name();
      if (is_op("(")) f->args = parse_arguments();
      filter = std::move(f);
    }
    return filter;
  }

  ExprPtr parse_filter_expr(ExprPtr node) {
    while (true) {
      if (is_op("|")) {
        node = parse_filters(std::move(node), false);
      } else if (is_name("is")) {
        node = parse_test(std::move(node));
      } else if (is_op("(")) {
        node = parse_call(std::move(node));
      } else {
        return node;
      }
    }
  }

  // x is [not] name, x is name(args), or x is name arg (one primary: `is divisibleby 3`)
  ExprPtr parse_test(ExprPtr input) {
    auto test = std::make_unique<TestExpr>(next().where);
    test->input = std::move(input);
    test->negated = skip_name("not");
    test->name = dotted_name();
    const Token& t = cur();
    if (is_op("(")) {
      test->args = parse_arguments();
    } else if ((t.type == Tok::name || t.type == Tok::string || t.type == Tok::integer ||
                t.type == Tok::real || is_op("[") || is_op("{")) &&
               !(t.type == Tok::name &&
                 (t.text == "else" || t.text == "or" || t.text == "and" || t.text == "is"))) {
      test->args.positional.push_back(parse_postfix(parse_primary()));
    }
    return test;
  }

  static inline const std::set<std::string> kEndTags = {"endif",     "elif",          "else",
                                                        "endfor",    "endset",        "endmacro",
                                                        "endfilter", "endgeneration", "endraw"};

  std::vector<Token> tokens_;
  size_t pos_ = 0;
  int loop_depth_ = 0;
};

}  // namespace

Body parse_template(const std::string& source) {
  return Parser(tokenize(source)).parse_template();
}

}  // namespace origami::jinja
