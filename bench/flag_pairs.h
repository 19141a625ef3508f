// The command line of a bench program made of "--flag value" pairs (bench_decode, bench_qlinear).
#pragma once

#include <cstdio>
#include <cstdlib>
#include <string>
#include <utility>
#include <vector>

namespace origami::bench {

// The (flag, value) pairs of argv. --help or -h prints `usage` and exits 0; a flag without its
// value names it, prints the usage and exits 2.
inline std::vector<std::pair<std::string, std::string>> flag_pairs(int argc, char** argv,
                                                                   const char* program,
                                                                   const char* usage) {
  std::vector<std::pair<std::string, std::string>> pairs;
  for (int i = 1; i < argc; i += 2) {
    const std::string k = argv[i];
    if (k == "--help" || k == "-h") {
      std::fputs(usage, stdout);
      std::exit(0);
    }
    if (i + 1 >= argc) {
      std::fprintf(stderr, "%s: %s needs a value\n%s", program, k.c_str(), usage);
      std::exit(2);
    }
    pairs.emplace_back(k, argv[i + 1]);
  }
  return pairs;
}

// A flag the program does not know: names it, prints the usage and exits 2.
[[noreturn]] inline void unknown_flag(const char* program, const std::string& flag,
                                      const char* usage) {
  std::fprintf(stderr, "%s: unknown flag %s\n%s", program, flag.c_str(), usage);
  std::exit(2);
}

}  // namespace origami::bench
