// The supervisor's decisions, without processes: which rank is named as the failure, how an end
// is described, the command that starts the ranks, and line splitting of rank output.
#include <gtest/gtest.h>

#include <csignal>

#include "launcher/supervisor.h"
#include "launcher/trainer.h"
#include "parallel/startup_agreement.h"
#include "runtime/error.h"

namespace origami::launch {
namespace {

RankRecord ended(int rank, int code, int sig, int64_t end_ns) {
  RankRecord r;
  r.rank = rank;
  r.started = r.ended = true;
  r.exit_code = code;
  r.signal = sig;
  r.end_ns = end_ns;
  return r;
}

TEST(Supervisor, PrimaryFailureIsTheEarliestOwnFailure) {
  // Rank 3 aborts first; rank 1 errors later (a consequence); ranks 0 and 2 are killed by the
  // stop, rank 0 even before rank 3's report time (clocks of different wrappers).
  std::vector<RankRecord> ranks = {ended(0, 0, SIGKILL, 50), ended(1, 1, 0, 300),
                                   ended(2, 0, SIGTERM, 400), ended(3, 0, SIGABRT, 100)};
  EXPECT_EQ(primary_failure(ranks), 3);
  ranks[1].end_ns = 90;  // now rank 1's error came first
  EXPECT_EQ(primary_failure(ranks), 1);
  ranks[1].end_ns = 100;  // a tie: the lower rank
  EXPECT_EQ(primary_failure(ranks), 1);
}

TEST(Supervisor, RanksStoppedForOthersAreNotTheFailure) {
  // Before the first step rank 1 failed (exit 1); ranks 0, 2 and 3 stopped because of it, two
  // of them ending first.
  const int stopped = kExitStoppedForOtherRanks;
  std::vector<RankRecord> ranks = {ended(0, stopped, 0, 10), ended(1, 1, 0, 30),
                                   ended(2, stopped, 0, 20), ended(3, stopped, 0, 40)};
  EXPECT_EQ(primary_failure(ranks), 1);
}

TEST(Supervisor, KillsCountWhenNothingElseFailed) {
  // An outside SIGKILL (say the OOM killer) is the failure when no rank failed on its own.
  std::vector<RankRecord> ranks = {ended(0, 0, 0, 10), ended(1, 0, SIGKILL, 30),
                                   ended(2, 0, SIGTERM, 20)};
  EXPECT_EQ(primary_failure(ranks), 2);
}

TEST(Supervisor, NoFailureWhenAllExitZeroOrRun) {
  std::vector<RankRecord> ranks = {ended(0, 0, 0, 10), ended(1, 0, 0, 20)};
  RankRecord running;
  running.rank = 2;
  running.started = true;
  ranks.push_back(running);
  EXPECT_EQ(primary_failure(ranks), -1);
  EXPECT_EQ(primary_failure({}), -1);
}

TEST(Supervisor, DescribesEnds) {
  EXPECT_EQ(describe_end(ended(0, 3, 0, 0)), "exited with status 3");
  EXPECT_EQ(describe_end(ended(0, 0, SIGABRT, 0)), "killed by SIGABRT (signal 6)");
  RankRecord never;
  EXPECT_EQ(describe_end(never), "never started");
  never.started = true;
  EXPECT_EQ(describe_end(never), "gave no exit report (its wrapper was killed)");
  EXPECT_EQ(signal_name(SIGTERM), "SIGTERM");
  EXPECT_EQ(signal_name(SIGUSR1), "SIGUSR1");
}

TEST(Supervisor, ChoosesTheLauncher) {
  EXPECT_EQ(resolve_launcher("auto", false), "mpirun");
  EXPECT_EQ(resolve_launcher("auto", true), "srun");
  EXPECT_EQ(resolve_launcher("mpirun", true), "mpirun");
  EXPECT_THROW(resolve_launcher("torchrun", false), Error);
}

TEST(Supervisor, LauncherCommands) {
  SupervisorOptions o;
  o.nproc = 4;
  o.self_exe = "/b/origami";
  o.grace_s = 2.5;
  o.tail_lines = 7;
  o.log_dir = "/logs";
  o.launcher_args = {"--overcommit"};
  o.command = {"train", "c.pbtxt", "--tp", "2"};
  const std::vector<std::string> wrapper = {
      "/b/origami", "launch", "--rank-wrapper", "--control-dir", "/ctl",
      "--log-dir",  "/logs",  "--grace-s",      "2.50",          "--tail-lines",
      "7",          "--",     "train",          "c.pbtxt",       "--tp",
      "2"};
  std::vector<std::string> mpi = {
      "mpirun", "--oversubscribe", "--allow-run-as-root", "--bind-to", "none", "-np",
      "4",      "--overcommit"};
  mpi.insert(mpi.end(), wrapper.begin(), wrapper.end());
  EXPECT_EQ(launcher_command(o, "mpirun", "/ctl"), mpi);
  std::vector<std::string> srun = {"srun", "--kill-on-bad-exit=1", "--mpi=pmix", "-n",
                                   "4",    "--overcommit"};
  srun.insert(srun.end(), wrapper.begin(), wrapper.end());
  EXPECT_EQ(launcher_command(o, "srun", "/ctl"), srun);
}

TEST(Supervisor, SplitsLines) {
  LineSplitter s(8);
  EXPECT_EQ(s.feed("ab\ncd", 5), (std::vector<std::string>{"ab"}));
  EXPECT_EQ(s.feed("e\n\nf", 4), (std::vector<std::string>{"cde", ""}));
  // A line of 8 bytes or more is cut.
  EXPECT_EQ(s.feed("ghijklmnop", 10), (std::vector<std::string>{"fghijklm"}));
  EXPECT_EQ(s.finish(), (std::vector<std::string>{"nop"}));
  EXPECT_TRUE(s.finish().empty());
}

TEST(Supervisor, ParsesFaults) {
  const TrainOptions::Fault f = parse_fault("3:12:abort");
  EXPECT_EQ(f.rank, 3);
  EXPECT_EQ(f.step, 12);
  EXPECT_EQ(f.kind, TrainOptions::Fault::kAbort);
  EXPECT_EQ(parse_fault("0:1:sleep").kind, TrainOptions::Fault::kSleep);
  EXPECT_EQ(parse_fault("0:1:throw").kind, TrainOptions::Fault::kThrow);
  for (const char* bad : {"3:12", "x:1:abort", "1:0:abort", "1:2:explode", "-1:2:abort", ""})
    EXPECT_THROW(parse_fault(bad), Error) << bad;
}

}  // namespace
}  // namespace origami::launch
