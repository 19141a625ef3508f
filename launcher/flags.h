// Command-line flags of the origami subcommands, declared once: every flag has a default and a
// help line (so --help lists them all), reads ORIGAMI_<FLAG> from the environment when not given
// on the command line (explicit flags win), and an unknown flag is an error that suggests the
// closest valid one.
#pragma once

#include <map>
#include <string>
#include <vector>

namespace origami::cli {

class Flags {
 public:
  Flags(std::string command, std::string usage, std::string description);

  // A flag taking a value: --name VALUE or --name=VALUE.
  void add(const std::string& name, const std::string& default_value, const std::string& help);
  // A switch: --name (true), --no-name or --name=false (false).
  void add_bool(const std::string& name, bool default_value, const std::string& help);
  // A flag that may be given several times (e.g. --set a=1 --set b=2); no default.
  void add_list(const std::string& name, const std::string& help);

  // Parses argv[1..argc) (argv[0] is the subcommand). Returns false when --help was given (the
  // help was printed). Throws origami::Error for unknown flags or missing values.
  bool parse(int argc, char** argv);

  std::string get(const std::string& name) const;
  int64_t get_int(const std::string& name) const;
  double get_double(const std::string& name) const;
  bool get_bool(const std::string& name) const;
  const std::vector<std::string>& get_list(const std::string& name) const;
  bool given(const std::string& name) const;  // on the command line or in the environment
  const std::vector<std::string>& positional() const { return positional_; }

  std::string help() const;
  // "ORIGAMI_COLLECTIVE_TIMEOUT" for "collective-timeout".
  static std::string env_name(const std::string& flag);

 private:
  struct Spec {
    std::string name, default_value, help;
    enum Kind { kValue, kBool, kList } kind;
  };
  const Spec* find(const std::string& name) const;
  std::string suggest(const std::string& name) const;

  std::string command_, usage_, description_;
  std::vector<Spec> specs_;
  std::map<std::string, std::string> values_;
  std::map<std::string, std::vector<std::string>> lists_;
  std::map<std::string, bool> given_;
  std::vector<std::string> positional_;
};

}  // namespace origami::cli
