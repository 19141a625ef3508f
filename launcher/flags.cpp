#include "launcher/flags.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <sstream>

#include "runtime/error.h"

namespace origami::cli {

Flags::Flags(std::string command, std::string usage, std::string description)
    : command_(std::move(command)),
      usage_(std::move(usage)),
      description_(std::move(description)) {}

void Flags::add(const std::string& name, const std::string& def, const std::string& help) {
  specs_.push_back({name, def, help, Spec::kValue});
  values_[name] = def;
}

void Flags::add_bool(const std::string& name, bool def, const std::string& help) {
  specs_.push_back({name, def ? "true" : "false", help, Spec::kBool});
  values_[name] = def ? "true" : "false";
}

void Flags::add_list(const std::string& name, const std::string& help) {
  specs_.push_back({name, "", help, Spec::kList});
  lists_[name];
}

const Flags::Spec* Flags::find(const std::string& name) const {
  for (const Spec& s : specs_)
    if (s.name == name) return &s;
  return nullptr;
}

std::string Flags::env_name(const std::string& flag) {
  std::string e = "ORIGAMI_";
  for (char c : flag) e += c == '-' ? '_' : char(std::toupper(static_cast<unsigned char>(c)));
  return e;
}

static size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<size_t> prev(b.size() + 1), cur(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) prev[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    cur[0] = i;
    for (size_t j = 1; j <= b.size(); ++j)
      cur[j] = std::min({prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a[i - 1] != b[j - 1])});
    std::swap(prev, cur);
  }
  return prev[b.size()];
}

std::string Flags::suggest(const std::string& name) const {
  std::string best;
  size_t best_d = ~size_t(0);
  for (const Spec& s : specs_) {
    const size_t d = edit_distance(name, s.name);
    if (d < best_d) {
      best_d = d;
      best = s.name;
    }
  }
  std::string msg = "unknown option '--" + name + "' for 'origami " + command_ + "'";
  if (!best.empty() && best_d <= std::max<size_t>(2, name.size() / 3))
    msg += "; did you mean '--" + best + "'?";
  return msg + " (see 'origami " + command_ + " --help')";
}

static bool parse_bool_text(const std::string& flag, const std::string& v) {
  if (v == "1" || v == "true" || v == "yes" || v == "on") return true;
  if (v == "0" || v == "false" || v == "no" || v == "off") return false;
  ORIGAMI_FAIL("--", flag, ": expected true or false, got '", v, "'");
}

bool Flags::parse(int argc, char** argv) {
  // Environment first; the command line overrides it.
  for (const Spec& s : specs_) {
    if (const char* e = std::getenv(env_name(s.name).c_str())) {
      if (s.kind == Spec::kList) {
        lists_[s.name].push_back(e);
      } else {
        values_[s.name] =
            s.kind == Spec::kBool ? (parse_bool_text(s.name, e) ? "true" : "false") : e;
      }
      given_[s.name] = true;
    }
  }
  bool cleared_env_list = false;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "-h" || a == "--help") {
      std::fputs(help().c_str(), stdout);
      return false;
    }
    if (a == "--") {
      for (++i; i < argc; ++i) positional_.push_back(argv[i]);
      break;
    }
    if (a.rfind("--", 0) != 0 || a.size() == 2) {
      positional_.push_back(a);
      continue;
    }
    std::string name = a.substr(2), value;
    bool has_value = false;
    if (size_t eq = name.find('='); eq != std::string::npos) {
      value = name.substr(eq + 1);
      name = name.substr(0, eq);
      has_value = true;
    }
    const Spec* s = find(name);
    if (!s && name.rfind("no-", 0) == 0 && !has_value) {
      const Spec* b = find(name.substr(3));
      if (b && b->kind == Spec::kBool) {
        values_[b->name] = "false";
        given_[b->name] = true;
        continue;
      }
    }
    if (!s) ORIGAMI_FAIL(suggest(name));
    if (s->kind == Spec::kBool) {
      values_[name] = has_value ? (parse_bool_text(name, value) ? "true" : "false") : "true";
    } else {
      if (!has_value) {
        ORIGAMI_CHECK(i + 1 < argc, "--", name, " needs a value (see 'origami ", command_,
                      " --help')");
        value = argv[++i];
      }
      if (s->kind == Spec::kList) {
        if (!cleared_env_list) lists_[name].clear();  // command-line lists replace the env one
        cleared_env_list = true;
        lists_[name].push_back(value);
      } else {
        values_[name] = value;
      }
    }
    given_[name] = true;
  }
  return true;
}

std::string Flags::get(const std::string& name) const {
  auto it = values_.find(name);
  ORIGAMI_CHECK(it != values_.end(), "internal: flag --", name, " was never declared");
  return it->second;
}

int64_t Flags::get_int(const std::string& name) const {
  const std::string v = get(name);
  char* end = nullptr;
  const long long x = std::strtoll(v.c_str(), &end, 10);
  ORIGAMI_CHECK(!v.empty() && end && *end == '\0', "--", name, ": expected an integer, got '", v,
                "'");
  return x;
}

double Flags::get_double(const std::string& name) const {
  const std::string v = get(name);
  char* end = nullptr;
  const double x = std::strtod(v.c_str(), &end);
  ORIGAMI_CHECK(!v.empty() && end && *end == '\0', "--", name, ": expected a number, got '", v,
                "'");
  return x;
}

bool Flags::get_bool(const std::string& name) const {
  return get(name) == "true";
}

const std::vector<std::string>& Flags::get_list(const std::string& name) const {
  auto it = lists_.find(name);
  ORIGAMI_CHECK(it != lists_.end(), "internal: list flag --", name, " was never declared");
  return it->second;
}

bool Flags::given(const std::string& name) const {
  return given_.count(name) > 0;
}

std::string Flags::help() const {
  std::ostringstream os;
  os << "usage: origami " << command_ << " " << usage_ << "\n\n"
     << description_ << "\n\noptions:\n";
  for (const Spec& s : specs_) {
    std::string left = "  --" + s.name + (s.kind == Spec::kBool ? "" : " VALUE");
    os << left;
    if (left.size() < 30)
      os << std::string(30 - left.size(), ' ');
    else
      os << "\n" << std::string(30, ' ');
    os << s.help;
    if (s.kind == Spec::kList)
      os << " (repeatable)";
    else
      os << " (default: " << (s.default_value.empty() ? "\"\"" : s.default_value) << ")";
    os << " [env " << env_name(s.name) << "]\n";
  }
  os << "  -h, --help                  show this help and exit\n";
  return os.str();
}

}  // namespace origami::cli
