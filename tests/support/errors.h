// Checking the origami::Error that a call throws: its message, and that the message names what
// went wrong and what to do. Header-only; any test may include it.
#pragma once

#include <gtest/gtest.h>

#include <functional>
#include <string>
#include <vector>

#include "runtime/error.h"

namespace origami::test {

// The message of the origami::Error that fn throws, or "(no error)" when it throws none.
inline std::string error_of(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

// Success when `what` contains every one of `pieces`; the failure quotes the whole message.
inline ::testing::AssertionResult mentions(const std::string& what,
                                           const std::vector<std::string>& pieces) {
  for (const auto& p : pieces)
    if (what.find(p) == std::string::npos)
      return ::testing::AssertionFailure() << "'" << what << "' does not mention '" << p << "'";
  return ::testing::AssertionSuccess();
}

}  // namespace origami::test
