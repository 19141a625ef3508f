// Errors: every failure the user can cause (bad shapes, bad files, bad layouts) throws
// origami::Error with a message that names what was wrong and what was expected.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>

namespace origami {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what) : std::runtime_error(what) {}
};

namespace detail {
// Builds a message from any streamable pieces: concat("got ", 3, " dims").
template <typename... Args>
std::string concat(const Args&... args) {
  std::ostringstream os;
  (os << ... << args);
  return os.str();
}
}  // namespace detail

}  // namespace origami

// ORIGAMI_CHECK(cond, pieces...): throws origami::Error("pieces...") when cond is false.
#define ORIGAMI_CHECK(cond, ...)                                           \
  do {                                                                     \
    if (!(cond)) throw ::origami::Error(::origami::detail::concat(__VA_ARGS__)); \
  } while (0)

#define ORIGAMI_FAIL(...) throw ::origami::Error(::origami::detail::concat(__VA_ARGS__))
