// Startup agreement: a setup phase that may fail on some ranks only, ended together.
//
// Before its first step a rank does work that can fail on that rank alone: it reads its pieces of
// a checkpoint (a corrupt or truncated file), allocates its part of the model (out of memory),
// opens the data. A rank that simply threw would leave the others waiting in their next
// collective until the timeout (300 s by default), and its own message might never be printed:
// the communicators' destructors wait for the ranks still running. run_agreed() runs such a phase
// on every rank, then the ranks of `world` learn which of them failed (one all-gather of a flag,
// with the communicator's timeout), and all go on or all stop:
//   - no rank failed: it returns;
//   - some did: it throws StartupFailure on every rank -- on a rank that failed, with that rank's
//     own message; on the others, naming the ranks that failed.
// The ranks stay in step either way, so the caller may return normally (communicators are freed
// collectively) and exit non-zero.
//
// The phase must not use collectives of `world` or its groups: a rank that failed before one would
// leave the others waiting in it. Put collective steps between phases. If the agreement itself
// fails (a rank died, or hangs in its phase, and the all-gather times out), the communicator's
// error propagates as it is: the ranks are out of step, and the job must end (MPI_Abort).
//
// Use, in a command's setup (origami train: launcher/trainer.cpp and train_command.cpp):
//   std::unique_ptr<Model> model;
//   run_agreed(world, "loading the model", [&] { model = load_model(...); });
//   ...
//   } catch (const StartupFailure& e) {
//     std::fprintf(stderr, "origami CMD: rank %d: %s: %s\n", rank,
//                  e.failed_here() ? "error" : "stopped", e.what());
//     return e.failed_here() ? 1 : kExitStoppedForOtherRanks;
//   }
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "parallel/communicator.h"
#include "runtime/error.h"

namespace origami {

class StartupFailure : public Error {
 public:
  StartupFailure(const std::string& what, std::vector<int> failed_ranks, bool failed_here)
      : Error(what), failed_ranks_(std::move(failed_ranks)), failed_here_(failed_here) {}
  // The global ranks whose phase failed, ascending.
  const std::vector<int>& failed_ranks() const { return failed_ranks_; }
  // True on a rank that failed (what() is its own error), false on the others (what() names the
  // ranks that failed).
  bool failed_here() const { return failed_here_; }

 private:
  std::vector<int> failed_ranks_;
  bool failed_here_;
};

// The exit status of a rank that stops because other ranks failed (failed_here() false); a
// failing rank exits 1. origami launch names a failing rank, not one of these, in its summary.
constexpr int kExitStoppedForOtherRanks = 3;

// Runs `phase` on this rank, then agrees over `world` whether it succeeded on every rank (see
// above). Collective over `world`. `what` names the phase in messages ("loading the model").
void run_agreed(Communicator& world, const std::string& what, const std::function<void()>& phase);

}  // namespace origami
