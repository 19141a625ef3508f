// Command-line flags: defaults, environment, precedence, suggestions for unknown flags.
#include <cstdlib>

#include "launcher/flags.h"
#include "tests/support/test_support.h"

namespace origami {
namespace {

cli::Flags make() {
  cli::Flags f("train", "CONFIG [options]", "Trains a model.");
  f.add("collective-timeout", "300", "seconds before a collective gives up");
  f.add("tp", "1", "tensor-parallel size");
  f.add_bool("progress", true, "show a progress bar");
  f.add_list("set", "override a config field");
  return f;
}

bool parse(cli::Flags& f, std::vector<std::string> args) {
  std::vector<char*> argv = {const_cast<char*>("train")};
  for (auto& a : args) argv.push_back(a.data());
  return f.parse(int(argv.size()), argv.data());
}

TEST(Flags, DefaultsValuesAndPositionals) {
  cli::Flags f = make();
  ASSERT_TRUE(parse(f, {"cfg.pbtxt", "--tp", "2", "--no-progress", "--set", "a=1", "--set=b=2"}));
  EXPECT_EQ(f.get_int("tp"), 2);
  EXPECT_EQ(f.get_int("collective-timeout"), 300);
  EXPECT_FALSE(f.get_bool("progress"));
  EXPECT_EQ(f.get_list("set"), (std::vector<std::string>{"a=1", "b=2"}));
  EXPECT_EQ(f.positional(), (std::vector<std::string>{"cfg.pbtxt"}));
}

TEST(Flags, EnvironmentAndPrecedence) {
  setenv("ORIGAMI_COLLECTIVE_TIMEOUT", "12", 1);
  setenv("ORIGAMI_TP", "4", 1);
  cli::Flags f = make();
  ASSERT_TRUE(parse(f, {"--tp=8"}));
  EXPECT_EQ(f.get_int("collective-timeout"), 12);  // from the environment
  EXPECT_EQ(f.get_int("tp"), 8);                   // the command line wins
  unsetenv("ORIGAMI_COLLECTIVE_TIMEOUT");
  unsetenv("ORIGAMI_TP");
}

TEST(Flags, UnknownFlagSuggestsTheClosest) {
  cli::Flags f = make();
  try {
    parse(f, {"--colective-timeout", "3"});
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("did you mean '--collective-timeout'"), std::string::npos)
        << e.what();
  }
  EXPECT_THROW(parse(f, {"--tp"}), Error);  // missing value
  cli::Flags g = make();
  ASSERT_TRUE(parse(g, {"--tp", "x"}));
  EXPECT_THROW(g.get_int("tp"), Error);
}

TEST(Flags, HelpListsEveryFlagWithDefaultAndEnv) {
  cli::Flags f = make();
  const std::string h = f.help();
  for (const char* s :
       {"--collective-timeout VALUE", "(default: 300)", "ORIGAMI_COLLECTIVE_TIMEOUT", "--progress",
        "(default: true)", "--set VALUE", "(repeatable)"})
    EXPECT_NE(h.find(s), std::string::npos) << s << "\n" << h;
}

}  // namespace
}  // namespace origami
