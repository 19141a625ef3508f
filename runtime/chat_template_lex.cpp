// The lexer of chat templates: jinja2's (3.1) token rules and whitespace control as Hugging Face
// configures them (trim_blocks and lstrip_blocks on, keep_trailing_newline off), so that the same
// text makes the same tokens: text, {{ }} and {% %} with names, strings, numbers and operators
// between them; comments and the white space the tags take away are gone.
#include <algorithm>
#include <array>
#include <cctype>

#include "runtime/chat_template.h"
#include "runtime/chat_template_syntax.h"

namespace origami::jinja {

std::string describe(const Where& where) {
  return "line " + std::to_string(where.line) + ", column " + std::to_string(where.column);
}

void syntax_error(const std::string& message, const Where& where) {
  throw Error("chat template: " + message + " (" + describe(where) + ")");
}

namespace {

bool is_space(char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
}
bool is_digit(char c) {
  return c >= '0' && c <= '9';
}
bool is_name_start(char c) {
  return std::isalpha(uint8_t(c)) || c == '_';
}
bool is_name_char(char c) {
  return std::isalnum(uint8_t(c)) || c == '_';
}

// Python's "unicode-escape" decoding of a string literal's body, as jinja2 applies it: \n \t
// \\ \' \" \xhh \uhhhh \Uhhhhhhhh \ooo and friends; an unknown escape stays as written.
std::string unescape(const std::string& body, const Where& where) {
  std::string out;
  for (size_t i = 0; i < body.size(); ++i) {
    if (body[i] != '\\' || i + 1 == body.size()) {
      out += body[i];
      continue;
    }
    const char c = body[++i];
    // The value of the `digits` hex digits after position i (which then points at the last).
    const auto hex = [&](size_t digits) {
      uint32_t value = 0;
      for (size_t k = 1; k <= digits; ++k) {
        const char h = i + k < body.size() ? body[i + k] : '\0';
        if (!std::isxdigit(uint8_t(h)))
          syntax_error("truncated \\" + std::string(1, c) + " escape in a string", where);
        value =
            value * 16 + uint32_t(std::isdigit(uint8_t(h)) ? h - '0' : std::tolower(h) - 'a' + 10);
      }
      i += digits;
      return value;
    };
    constexpr std::string_view kEscapes = "\\'\"abfnrtv", kMeanings = "\\'\"\a\b\f\n\r\t\v";
    if (const size_t k = kEscapes.find(c); k != std::string_view::npos) {
      out += kMeanings[k];
      continue;
    }
    switch (c) {
      case '\n':
        break;  // line continuation
      case 'x':
        out += encode_utf8(hex(2));
        break;
      case 'u': {
        uint32_t cp = hex(4);
        // A surrogate pair written as two escapes is one character once encoded.
        if (cp >= 0xd800 && cp < 0xdc00 && body.compare(i + 1, 2, "\\u") == 0) {
          const size_t high_end = i;
          i += 2;
          const uint32_t low = hex(4);
          if (low >= 0xdc00 && low < 0xe000)
            cp = 0x10000 + ((cp - 0xd800) << 10) + (low - 0xdc00);
          else
            i = high_end;
        }
        out += encode_utf8(cp);
        break;
      }
      case 'U':
        out += encode_utf8(hex(8));
        break;
      default:
        if (c >= '0' && c <= '7') {
          uint32_t value = 0;
          size_t k = 0;
          for (; k < 3 && i + k < body.size() && body[i + k] >= '0' && body[i + k] <= '7'; ++k)
            value = value * 8 + uint32_t(body[i + k] - '0');
          i += k - 1;
          out += encode_utf8(value);
        } else {
          out += '\\';
          out += c;
        }
    }
  }
  return out;
}

class Lexer {
 public:
  explicit Lexer(const std::string& source) {
    // jinja2 reads \r\n and \r as \n, and drops one trailing newline.
    for (size_t i = 0; i < source.size(); ++i) {
      if (source[i] == '\r') {
        src_ += '\n';
        if (i + 1 < source.size() && source[i + 1] == '\n') ++i;
      } else {
        src_ += source[i];
      }
    }
    if (!src_.empty() && src_.back() == '\n') src_.pop_back();
    for (size_t i = 0; i < src_.size(); ++i)
      if (src_[i] == '\n') line_starts_.push_back(i + 1);
  }

  std::vector<Token> run() {
    size_t pos = 0;
    bool line_starting = true;  // the last thing consumed ended a line (or nothing was consumed)
    while (pos < src_.size()) {
      size_t open = pos;
      while ((open = src_.find('{', open)) != std::string::npos) {
        const char c = open + 1 < src_.size() ? src_[open + 1] : '\0';
        if (c == '{' || c == '%' || c == '#') break;
        ++open;
      }
      if (open == std::string::npos) {
        emit(Tok::data, src_.substr(pos), pos);
        break;
      }
      const char kind = src_[open + 1];
      const char sign = open + 2 < src_.size() && (src_[open + 2] == '-' || src_[open + 2] == '+')
                            ? src_[open + 2]
                            : '\0';
      const std::string text =
          strip_before_tag(src_.substr(pos, open - pos), sign, kind != '{', line_starting);
      if (!text.empty()) emit(Tok::data, text, pos);
      pos = open + 2 + (sign ? 1 : 0);
      if (kind == '#') {
        pos = end_of_comment(open, pos);
      } else if (kind == '%' && raw_tag(pos, "raw", false)) {
        pos = raw_block(open, pos);
      } else {
        pos = tag(kind == '{' ? Tok::var_begin : Tok::block_begin, open, pos);
      }
      line_starting = src_[pos - 1] == '\n';
    }
    tokens_.push_back({Tok::eof, "", where(src_.size())});
    return std::move(tokens_);
  }

 private:
  // Line and column (in characters) of a byte position, both from 1.
  Where where(size_t pos) const {
    const auto it = std::upper_bound(line_starts_.begin(), line_starts_.end(), pos);
    const size_t line_start = *(it - 1);
    const auto column =
        code_point_count(std::string_view(src_).substr(line_start, pos - line_start));
    return {int(it - line_starts_.begin()), int(column) + 1};
  }
  void emit(Tok type, std::string text, size_t pos) {
    tokens_.push_back({type, std::move(text), where(pos)});
  }
  bool at(size_t pos, std::string_view s) const { return src_.compare(pos, s.size(), s) == 0; }

  // The text before a tag, less what the tag's whitespace control takes: all trailing white
  // space for {%- {{- {#-; for a block or comment tag without +, lstrip_blocks: the indentation
  // before it when nothing else stands on its line.
  static std::string strip_before_tag(std::string text, char sign, bool block_or_comment,
                                      bool line_starting) {
    if (sign == '-') {
      while (!text.empty() && is_space(text.back())) text.pop_back();
    } else if (sign != '+' && block_or_comment) {
      const size_t newline = text.rfind('\n');
      const size_t line_begin = newline == std::string::npos ? 0 : newline + 1;
      if ((line_begin > 0 || line_starting) && line_begin < text.size() &&
          std::all_of(text.begin() + long(line_begin), text.end(), is_space))
        text.resize(line_begin);
    }
    return text;
  }

  // An end delimiter ("%}", "#}" or "}}") at pos, with its whitespace control; returns the
  // position after it and what it consumed, or npos.
  size_t end_delimiter(size_t pos, std::string_view delim, bool trim_newline) const {
    if (src_[pos] == '+' && at(pos + 1, delim) && trim_newline) return pos + 1 + delim.size();
    if (src_[pos] == '-' && at(pos + 1, delim)) {
      pos += 1 + delim.size();
      while (pos < src_.size() && is_space(src_[pos])) ++pos;
      return pos;
    }
    if (at(pos, delim)) {
      pos += delim.size();
      if (trim_newline && pos < src_.size() && src_[pos] == '\n') ++pos;  // trim_blocks
      return pos;
    }
    return std::string::npos;
  }

  size_t end_of_comment(size_t open, size_t pos) {
    for (; pos < src_.size(); ++pos) {
      const size_t end = end_delimiter(pos, "#}", true);
      if (end != std::string::npos) return end;
    }
    syntax_error("missing end of comment tag", where(open));
  }

  // {% raw %}...{% endraw %}: the text between is data, as written.
  bool raw_tag(size_t pos, std::string_view name, bool allow_plus) const {
    while (pos < src_.size() && is_space(src_[pos])) ++pos;
    if (!at(pos, name)) return false;
    pos += name.size();
    while (pos < src_.size() && is_space(src_[pos])) ++pos;
    return at(pos, "%}") || at(pos, "-%}") || (allow_plus && at(pos, "+%}"));
  }
  size_t raw_block(size_t open, size_t pos) {
    const auto tag_end = [&](size_t p, bool trim) {  // p: inside the tag, before "%}"
      p = src_.find('%', p);
      return end_delimiter(src_[p - 1] == '-' || src_[p - 1] == '+' ? p - 1 : p, "%}", trim);
    };
    const size_t body_start = tag_end(pos, false);
    for (size_t p = body_start; (p = src_.find("{%", p)) != std::string::npos; ++p) {
      const char sign = src_[p + 2] == '-' || src_[p + 2] == '+' ? src_[p + 2] : '\0';
      if (!raw_tag(p + 2 + (sign ? 1 : 0), "endraw", true)) continue;
      const bool line_starting = src_[body_start - 1] == '\n';
      const std::string text =
          strip_before_tag(src_.substr(body_start, p - body_start), sign, true, line_starting);
      if (!text.empty()) emit(Tok::data, text, body_start);
      return tag_end(p + 2, true);
    }
    syntax_error("missing end of raw directive", where(open));
  }

  // The tokens inside {{ }} or {% %}, up to and including the end delimiter. Delimiters inside
  // brackets do not end the tag: {{ {'a': {'b': 1}} }}.
  size_t tag(Tok begin, size_t open, size_t pos) {
    emit(begin, begin == Tok::var_begin ? "{{" : "{%", open);
    const bool block = begin == Tok::block_begin;
    std::string brackets;
    static const std::array<std::string_view, 26> kOperators = {
        "//", "**", "==", "!=", ">=", "<=", "+", "-", "/", "*", "%", "~", "[",
        "]",  "(",  ")",  "{",  "}",  "=",  ".", ":", "|", ",", ";", ">", "<"};
    while (true) {
      if (pos >= src_.size())
        syntax_error(
            std::string("unexpected end of template, expected '") + (block ? "%}" : "}}") + "'",
            where(open));
      if (brackets.empty()) {
        const size_t end = end_delimiter(pos, block ? "%}" : "}}", block);
        if (end != std::string::npos) {
          emit(block ? Tok::block_end : Tok::var_end, block ? "%}" : "}}", pos);
          return end;
        }
      }
      const char c = src_[pos];
      if (is_space(c)) {
        ++pos;
      } else if (is_digit(c)) {
        pos = number(pos);
      } else if (is_name_start(c)) {
        size_t end = pos;
        while (end < src_.size() && is_name_char(src_[end])) ++end;
        emit(Tok::name, src_.substr(pos, end - pos), pos);
        pos = end;
      } else if (c == '\'' || c == '"') {
        size_t end = pos + 1;
        while (end < src_.size() && src_[end] != c) end += src_[end] == '\\' ? 2 : 1;
        if (end >= src_.size()) syntax_error("unterminated string", where(pos));
        emit(Tok::string, unescape(src_.substr(pos + 1, end - pos - 1), where(pos)), pos);
        pos = end + 1;
      } else {
        const auto op = std::find_if(kOperators.begin(), kOperators.end(),
                                     [&](std::string_view o) { return at(pos, o); });
        if (op == kOperators.end()) {
          size_t after = pos;
          decode_utf8(src_, after);  // quote the whole character, not one byte of it
          syntax_error("unexpected character '" + src_.substr(pos, after - pos) + "'", where(pos));
        }
        if (*op == "(" || *op == "[" || *op == "{") {
          brackets += (*op)[0];
        } else if (*op == ")" || *op == "]" || *op == "}") {
          const char want = brackets.empty()         ? '\0'
                            : brackets.back() == '(' ? ')'
                            : brackets.back() == '[' ? ']'
                                                     : '}';
          if (want != (*op)[0]) syntax_error("unexpected '" + std::string(*op) + "'", where(pos));
          brackets.pop_back();
        }
        emit(Tok::op, std::string(*op), pos);
        pos += op->size();
      }
    }
  }

  // 42, 1_000, 3.14, 1e5, 2.5e-3 (a number right after '.' is an integer: x.0.1 is x[0][1]).
  size_t number(size_t pos) {
    const auto digits = [&](size_t p) {
      while (p < src_.size() && (is_digit(src_[p]) ||
                                 (src_[p] == '_' && p + 1 < src_.size() && is_digit(src_[p + 1]))))
        ++p;
      return p;
    };
    size_t end = digits(pos);
    bool real = false;
    if (pos == 0 || src_[pos - 1] != '.') {
      if (end + 1 < src_.size() && src_[end] == '.' && is_digit(src_[end + 1])) {
        end = digits(end + 1);
        real = true;
      }
      if (end < src_.size() && (src_[end] == 'e' || src_[end] == 'E')) {
        size_t e = end + 1;
        if (e < src_.size() && (src_[e] == '+' || src_[e] == '-')) ++e;
        if (e < src_.size() && is_digit(src_[e])) {
          end = digits(e);
          real = true;
        }
      }
    }
    std::string text = src_.substr(pos, end - pos);
    text.erase(std::remove(text.begin(), text.end(), '_'), text.end());
    emit(real ? Tok::real : Tok::integer, text, pos);
    return end;
  }

  std::string src_;
  std::vector<size_t> line_starts_{0};
  std::vector<Token> tokens_;
};

}  // namespace

std::vector<Token> tokenize(const std::string& source) {
  return Lexer(source).run();
}

}  // namespace origami::jinja
