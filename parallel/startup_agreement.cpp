#include "parallel/startup_agreement.h"

#include <algorithm>
#include <new>
#include <sstream>

namespace origami {
namespace {

// "rank 3", "ranks 1 and 3", "ranks 0, 1, 2 and 5"; long lists end with "... (N ranks)".
std::string rank_list(const std::vector<int>& ranks) {
  constexpr size_t kShown = 16;
  std::ostringstream os;
  os << (ranks.size() == 1 ? "rank " : "ranks ");
  const size_t shown = std::min(ranks.size(), kShown);
  for (size_t i = 0; i < shown; ++i) {
    if (i > 0) os << (i + 1 == ranks.size() ? " and " : ", ");
    os << ranks[i];
  }
  if (shown < ranks.size()) os << ", ... (" << ranks.size() << " ranks)";
  return os.str();
}

}  // namespace

void run_agreed(Communicator& world, const std::string& what, const std::function<void()>& phase) {
  std::string error;  // empty: the phase succeeded here
  try {
    phase();
  } catch (const std::bad_alloc&) {
    error = "out of memory while " + what + " (std::bad_alloc)";
  } catch (const Error& e) {
    error = e.what();
  } catch (const std::exception& e) {
    error = what + ": " + e.what();
  } catch (...) {
    error = what + ": an exception that is not a std::exception";
  }
  // flags[m] = 1 when member m failed. A timeout here (a rank that died or hangs) propagates.
  Tensor mine = Tensor::zeros({1}, DType::i32);
  mine.data_as<int32_t>()[0] = error.empty() ? 0 : 1;
  Tensor flags = Tensor::zeros({int64_t(world.size())}, DType::i32);
  world.all_gather(mine, flags);
  std::vector<int> failed;
  for (int m = 0; m < world.size(); ++m)
    if (flags.data_as<int32_t>()[m] != 0) failed.push_back(world.global_ranks()[size_t(m)]);
  if (failed.empty()) return;
  if (!error.empty()) throw StartupFailure(error, failed, true);
  throw StartupFailure(rank_list(failed) + " failed while " + what + " (see " +
                           (failed.size() == 1 ? "its error" : "their errors") +
                           "); every rank stops",
                       failed, false);
}

}  // namespace origami
