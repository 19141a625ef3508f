#include "launcher/supervisor.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <filesystem>
#include <fstream>
#include <optional>
#include <sstream>
#include <thread>

#include <nlohmann/json.hpp>

#include "parallel/startup_agreement.h"
#include "parallel/world.h"
#include "runtime/error.h"

namespace origami::launch {

namespace fs = std::filesystem;
using json = nlohmann::json;
using Clock = std::chrono::steady_clock;

// ---- small pieces, shared by the supervisor and the wrapper ----------------------------------

std::string signal_name(int sig) {
  const char* abbrev = sigabbrev_np(sig);
  return abbrev ? std::string("SIG") + abbrev : "signal " + std::to_string(sig);
}

std::string describe_end(const RankRecord& r) {
  if (!r.started && !r.ended) return "never started";
  if (!r.ended) return "gave no exit report (its wrapper was killed)";
  if (r.signal)
    return "killed by " + signal_name(r.signal) + " (signal " + std::to_string(r.signal) + ")";
  return "exited with status " + std::to_string(r.exit_code);
}

int primary_failure(const std::vector<RankRecord>& ranks) {
  const auto stop_kill = [](const RankRecord& r) {
    return r.signal == SIGTERM || r.signal == SIGKILL ||
           (r.signal == 0 && r.exit_code == kExitStoppedForOtherRanks);
  };
  bool any_own = false;
  for (const RankRecord& r : ranks) any_own = any_own || (r.failed() && !stop_kill(r));
  int best = -1;
  for (size_t i = 0; i < ranks.size(); ++i) {
    const RankRecord& r = ranks[i];
    if (!r.failed() || (any_own && stop_kill(r))) continue;
    if (best < 0 || r.end_ns < ranks[size_t(best)].end_ns ||
        (r.end_ns == ranks[size_t(best)].end_ns && r.rank < ranks[size_t(best)].rank))
      best = int(i);
  }
  return best;
}

std::string resolve_launcher(const std::string& requested, bool in_slurm) {
  if (requested == "auto") return in_slurm ? "srun" : "mpirun";
  ORIGAMI_CHECK(requested == "mpirun" || requested == "srun", "--launcher must be auto, mpirun or ",
                "srun, got '", requested, "'");
  return requested;
}

static std::string format_seconds(double s) {
  char buf[32];
  std::snprintf(buf, sizeof buf, s == double(int64_t(s)) ? "%.0f" : "%.2f", s);
  return buf;
}

std::vector<std::string> launcher_command(const SupervisorOptions& o, const std::string& launcher,
                                          const std::string& control_dir) {
  std::vector<std::string> cmd;
  if (launcher == "srun") {
    // --kill-on-bad-exit: Slurm itself ends the step when a task fails, on every node.
    cmd = {o.srun, "--kill-on-bad-exit=1", "--mpi=pmix", "-n", std::to_string(o.nproc)};
  } else {
    // Everything may share the cores (--oversubscribe, no binding: the ranks' OpenMP threads
    // need them); containers often run as root.
    cmd = {o.mpirun, "--oversubscribe",      "--allow-run-as-root", "--bind-to", "none",
           "-np",    std::to_string(o.nproc)};
  }
  cmd.insert(cmd.end(), o.launcher_args.begin(), o.launcher_args.end());
  cmd.insert(cmd.end(), {o.self_exe, "launch", "--rank-wrapper", "--control-dir", control_dir,
                         "--log-dir", o.log_dir, "--grace-s", format_seconds(o.grace_s),
                         "--tail-lines", std::to_string(o.tail_lines), "--"});
  cmd.insert(cmd.end(), o.command.begin(), o.command.end());
  return cmd;
}

std::vector<std::string> LineSplitter::feed(const char* data, size_t n) {
  std::vector<std::string> lines;
  for (size_t i = 0; i < n; ++i) {
    if (data[i] == '\n') {
      lines.push_back(std::move(partial_));
      partial_.clear();
    } else {
      partial_ += data[i];
      if (partial_.size() >= max_line_) {
        lines.push_back(std::move(partial_));
        partial_.clear();
      }
    }
  }
  return lines;
}

std::vector<std::string> LineSplitter::finish() {
  std::vector<std::string> lines;
  if (!partial_.empty()) lines.push_back(std::move(partial_));
  partial_.clear();
  return lines;
}

namespace {

int64_t realtime_ns() {
  timespec ts{};
  clock_gettime(CLOCK_REALTIME, &ts);
  return int64_t(ts.tv_sec) * 1'000'000'000 + ts.tv_nsec;
}

std::string host_name() {
  char buf[256] = {};
  gethostname(buf, sizeof buf - 1);
  return buf;
}

// Writes a whole buffer (retrying short writes); errors are ignored (a closed console must not
// stop the job).
void write_all(int fd, const std::string& s) {
  size_t off = 0;
  while (off < s.size()) {
    const ssize_t n = ::write(fd, s.data() + off, s.size() - off);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return;
    off += size_t(n);
  }
}

// JSON records: written to a temporary name and renamed, so a reader never sees half a record.
void write_record(const fs::path& path, const json& j) {
  const fs::path tmp = path.string() + ".tmp";
  {
    std::ofstream f(tmp);
    // Rank output need not be UTF-8: replace what is not, rather than fail.
    f << j.dump(-1, ' ', false, json::error_handler_t::replace) << "\n";
    if (!f) return;
  }
  std::error_code ec;
  fs::rename(tmp, path, ec);
}

std::optional<json> read_record(const fs::path& path) {
  std::ifstream f(path);
  if (!f) return std::nullopt;
  try {
    json j;
    f >> j;
    return j;
  } catch (const std::exception&) {
    return std::nullopt;
  }
}

// Signals arrive through a self-pipe so the poll loops see them.
int g_signal_pipe[2] = {-1, -1};

void on_signal(int sig) {
  const int saved = errno;
  const unsigned char b = static_cast<unsigned char>(sig);
  [[maybe_unused]] ssize_t n = ::write(g_signal_pipe[1], &b, 1);
  errno = saved;
}

void open_signal_pipe(std::initializer_list<int> signals) {
  ORIGAMI_CHECK(pipe2(g_signal_pipe, O_CLOEXEC | O_NONBLOCK) == 0, "pipe: ", std::strerror(errno));
  struct sigaction sa {};
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;
  for (int sig : signals) sigaction(sig, &sa, nullptr);
}

std::vector<int> read_signals() {
  std::vector<int> out;
  unsigned char buf[64];
  for (;;) {
    const ssize_t n = ::read(g_signal_pipe[0], buf, sizeof buf);
    if (n <= 0) break;
    for (ssize_t i = 0; i < n; ++i) out.push_back(buf[i]);
  }
  return out;
}

// Reads what is available from a non-blocking fd into `split`; returns false at end of stream.
bool drain(int fd, LineSplitter& split, std::vector<std::string>& lines) {
  char buf[8192];
  for (;;) {
    const ssize_t n = ::read(fd, buf, sizeof buf);
    if (n > 0) {
      for (std::string& l : split.feed(buf, size_t(n))) lines.push_back(std::move(l));
      continue;
    }
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) return true;
    for (std::string& l : split.finish()) lines.push_back(std::move(l));
    return false;
  }
}

std::vector<char*> c_argv(std::vector<std::string>& args) {
  std::vector<char*> v;
  for (std::string& a : args) v.push_back(a.data());
  v.push_back(nullptr);
  return v;
}

double seconds_between(int64_t a_ns, int64_t b_ns) {
  return double(b_ns - a_ns) / 1e9;
}

}  // namespace

// ---- the per-rank wrapper -------------------------------------------------------------------

int run_rank_wrapper(const RankWrapperOptions& o) {
  const LaunchEnvironment le = read_launch_environment(current_environment());
  ORIGAMI_CHECK(le.rank.has_value(),
                "origami launch --rank-wrapper: no rank in the environment; it is started by "
                "'origami launch', not by hand");
  const int rank = *le.rank;
  // The torchrun-style variables, which origami reads first (parallel/world.h).
  setenv("RANK", std::to_string(rank).c_str(), 1);
  if (le.world_size) setenv("WORLD_SIZE", std::to_string(*le.world_size).c_str(), 1);
  if (le.local_rank) setenv("LOCAL_RANK", std::to_string(*le.local_rank).c_str(), 1);
  if (le.local_size) setenv("LOCAL_WORLD_SIZE", std::to_string(*le.local_size).c_str(), 1);

  std::error_code ec;
  fs::create_directories(o.control_dir, ec);
  int log_fd = -1;
  if (!o.log_dir.empty()) {
    fs::create_directories(o.log_dir, ec);
    const std::string path = (fs::path(o.log_dir) / ("rank_" + std::to_string(rank) + ".log"));
    log_fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    ORIGAMI_CHECK(log_fd >= 0, "cannot write the log '", path, "': ", std::strerror(errno));
  }

  int out[2], err[2];
  ORIGAMI_CHECK(pipe2(out, O_CLOEXEC) == 0 && pipe2(err, O_CLOEXEC) == 0,
                "pipe: ", std::strerror(errno));
  open_signal_pipe({SIGTERM, SIGINT, SIGHUP, SIGUSR1, SIGUSR2});
  // A closed console must not kill the wrapper (its rank would die with it).
  std::signal(SIGPIPE, SIG_IGN);
  const pid_t me = getpid(), parent = getppid();
  std::vector<std::string> args = {o.self_exe};
  args.insert(args.end(), o.command.begin(), o.command.end());
  std::vector<char*> argv = c_argv(args);
  // Stop signals are blocked from before the fork: in the rank they stay blocked through exec
  // and wait, pending, until `origami train` has its handlers (main.cpp unblocks them for other
  // commands); here they wait until the rank's pid is known.
  sigset_t stop_set, old_mask;
  sigemptyset(&stop_set);
  for (int sig : {SIGTERM, SIGUSR1, SIGINT}) sigaddset(&stop_set, sig);
  sigprocmask(SIG_BLOCK, &stop_set, &old_mask);
  const pid_t child = fork();
  ORIGAMI_CHECK(child >= 0, "fork: ", std::strerror(errno));
  if (child == 0) {
    // The rank dies with its wrapper, whoever kills the wrapper.
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != me) _exit(127);
    std::signal(SIGPIPE, SIG_DFL);
    dup2(out[1], STDOUT_FILENO);
    dup2(err[1], STDERR_FILENO);
    execv(o.self_exe.c_str(), argv.data());
    const std::string msg =
        "origami launch: cannot start '" + o.self_exe + "': " + std::strerror(errno) + "\n";
    write_all(STDERR_FILENO, msg);
    _exit(127);
  }
  sigprocmask(SIG_SETMASK, &old_mask, nullptr);
  ::close(out[1]);
  ::close(err[1]);
  fcntl(out[0], F_SETFL, O_NONBLOCK);
  fcntl(err[0], F_SETFL, O_NONBLOCK);

  const std::string host = host_name();
  const fs::path control(o.control_dir);
  write_record(control / ("start_" + std::to_string(rank) + ".json"), {{"rank", rank},
                                                                       {"pid", child},
                                                                       {"wrapper_pid", me},
                                                                       {"host", host},
                                                                       {"time_ns", realtime_ns()}});

  const std::string prefix = "[r" + std::to_string(rank) + "] ";
  LineSplitter split_out, split_err;
  std::deque<std::string> tail;
  const auto emit = [&](int fd, std::vector<std::string>& lines, bool is_err) {
    for (std::string& l : lines) {
      if (is_err) {
        tail.push_back(l);
        while (int(tail.size()) > o.tail_lines) tail.pop_front();
      }
      if (log_fd >= 0)
        write_all(log_fd, l + "\n");
      else
        write_all(fd, prefix + l + "\n");
    }
    lines.clear();
  };

  bool out_open = true, err_open = true, exited = false, asked_to_stop = false;
  int status = 0;
  int64_t end_ns = 0;
  Clock::time_point drain_deadline{}, kill_at{};
  bool kill_armed = false;
  std::vector<std::string> lines;
  while (out_open || err_open || !exited) {
    pollfd fds[3] = {{out_open ? out[0] : -1, POLLIN, 0},
                     {err_open ? err[0] : -1, POLLIN, 0},
                     {g_signal_pipe[0], POLLIN, 0}};
    ::poll(fds, 3, 100);
    if (out_open) {
      out_open = drain(out[0], split_out, lines);
      emit(STDOUT_FILENO, lines, false);
    }
    if (err_open) {
      err_open = drain(err[0], split_err, lines);
      emit(STDERR_FILENO, lines, true);
    }
    for (int sig : read_signals()) {
      if (exited) continue;
      if (sig == SIGUSR1 || sig == SIGUSR2) {
        ::kill(child, sig);
      } else {
        // Asked to stop (mpirun ending the job, Slurm preempting): the rank decides how (train
        // checkpoints at the next step). Whoever asked escalates to SIGKILL, which reaches the
        // rank through its wrapper's death.
        asked_to_stop = true;
        ::kill(child, SIGTERM);
      }
    }
    // Orphaned (mpirun died): end the rank, with the grace period.
    if (!exited && !kill_armed && getppid() != parent) {
      asked_to_stop = true;
      ::kill(child, SIGTERM);
      kill_armed = true;
      kill_at = Clock::now() + std::chrono::milliseconds(int64_t(o.grace_s * 1000));
    }
    if (kill_armed && !exited && Clock::now() >= kill_at) ::kill(child, SIGKILL);
    if (!exited) {
      const pid_t w = waitpid(child, &status, WNOHANG);
      if (w == child) {
        exited = true;
        end_ns = realtime_ns();
        // Output still in the pipes comes next; grandchildren holding them do not hold us.
        drain_deadline = Clock::now() + std::chrono::seconds(1);
      }
    } else if (Clock::now() >= drain_deadline) {
      break;
    }
  }
  for (std::string& l : split_out.finish()) lines.push_back(l);
  emit(STDOUT_FILENO, lines, false);
  for (std::string& l : split_err.finish()) lines.push_back(l);
  emit(STDERR_FILENO, lines, true);
  if (log_fd >= 0) ::close(log_fd);

  const int sig = WIFSIGNALED(status) ? WTERMSIG(status) : 0;
  const int code = WIFEXITED(status) ? WEXITSTATUS(status) : 0;
  write_record(control / ("exit_" + std::to_string(rank) + ".json"),
               {{"rank", rank},
                {"exit_code", code},
                {"signal", sig},
                {"time_ns", end_ns},
                {"asked_to_stop", asked_to_stop},
                {"tail", std::vector<std::string>(tail.begin(), tail.end())}});
  return sig ? 128 + sig : code;
}

// ---- the supervisor ---------------------------------------------------------------------------

namespace {

class Supervisor {
 public:
  explicit Supervisor(const SupervisorOptions& o) : o_(o), ranks_(size_t(o.nproc)) {
    for (int r = 0; r < o.nproc; ++r) ranks_[size_t(r)].rank = r;
  }
  int run();

 private:
  void log(const std::string& s) { write_all(STDERR_FILENO, "origami launch: " + s + "\n"); }
  void start_launcher();
  void forward_output(int fd, int to, LineSplitter& split, bool& open);
  void scan_records();
  void on_signal_received(int sig);
  void begin_stop(const std::string& why);
  void signal_ranks(int sig);
  void sweep();
  int report();

  const SupervisorOptions& o_;
  std::string launcher_, control_dir_, host_;
  std::vector<RankRecord> ranks_;
  pid_t pid_ = -1;  // mpirun / srun (leader of its own process group)
  int out_ = -1, err_ = -1;
  int launcher_status_ = 0;
  bool launcher_done_ = false;
  // Preemption: the signal passed on to the ranks (0: none yet).
  int forwarded_ = 0;
  // Stopping after a failure or a second signal.
  bool stopping_ = false;
  int hard_stop_signal_ = 0;
  Clock::time_point stop_at_{};
  int stage_ = 0;  // 0: SIGTERM sent to ranks; 1: SIGKILL to ranks; 2: SIGTERM launcher; 3: SIGKILL
  int64_t start_ns_ = 0, stop_ns_ = 0, end_ns_ = 0;
};

void Supervisor::start_launcher() {
  std::vector<std::string> cmd = launcher_command(o_, launcher_, control_dir_);
  std::vector<char*> argv = c_argv(cmd);
  int out[2], err[2];
  ORIGAMI_CHECK(pipe2(out, O_CLOEXEC) == 0 && pipe2(err, O_CLOEXEC) == 0,
                "pipe: ", std::strerror(errno));
  const pid_t me = getpid();
  pid_ = fork();
  ORIGAMI_CHECK(pid_ >= 0, "fork: ", std::strerror(errno));
  if (pid_ == 0) {
    // Its own process group: a terminal's Ctrl-C reaches only the supervisor, which decides.
    setpgid(0, 0);
    // If the supervisor dies, mpirun ends the job (it stops its ranks on SIGTERM).
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    if (getppid() != me) _exit(127);
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, nullptr);
    std::signal(SIGPIPE, SIG_DFL);
    // No terminal input: a background process group reading it would be stopped (SIGTTIN).
    const int null_fd = ::open("/dev/null", O_RDONLY);
    if (null_fd >= 0) dup2(null_fd, STDIN_FILENO);
    dup2(out[1], STDOUT_FILENO);
    dup2(err[1], STDERR_FILENO);
    execvp(cmd[0].c_str(), argv.data());
    write_all(STDERR_FILENO,
              "cannot run '" + cmd[0] + "': " + std::strerror(errno) +
                  (launcher_ == "mpirun" ? " (install Open MPI, or give its path with --mpirun)\n"
                                         : " (give srun's path with --srun)\n"));
    _exit(127);
  }
  setpgid(pid_, pid_);
  ::close(out[1]);
  ::close(err[1]);
  out_ = out[0];
  err_ = err[0];
  fcntl(out_, F_SETFL, O_NONBLOCK);
  fcntl(err_, F_SETFL, O_NONBLOCK);
}

void Supervisor::forward_output(int fd, int to, LineSplitter& split, bool& open) {
  std::vector<std::string> lines;
  open = drain(fd, split, lines);
  // Ranks' lines come prefixed by their wrappers; anything else is the launcher's own.
  const std::string tag = "[" + launcher_ + "] ";
  std::string text;
  for (const std::string& l : lines) {
    const bool from_rank = l.size() > 2 && l[0] == '[' && l[1] == 'r' &&
                           std::isdigit(static_cast<unsigned char>(l[2]));
    text += (from_rank ? "" : tag) + l + "\n";
  }
  if (!text.empty()) write_all(to, text);
}

void Supervisor::scan_records() {
  const fs::path dir(control_dir_);
  for (RankRecord& r : ranks_) {
    if (!r.started) {
      if (auto j = read_record(dir / ("start_" + std::to_string(r.rank) + ".json"))) {
        r.started = true;
        r.pid = j->value("pid", int64_t(0));
        r.wrapper_pid = j->value("wrapper_pid", int64_t(0));
        r.host = j->value("host", std::string());
        r.start_ns = j->value("time_ns", int64_t(0));
        // A rank that starts after a preemption signal gets it too (it waits, blocked, until
        // the rank can handle it).
        if (forwarded_ && launcher_ == "mpirun" && r.host == host_ && !r.ended)
          ::kill(pid_t(r.pid), forwarded_);
      }
    }
    if (!r.ended) {
      if (auto j = read_record(dir / ("exit_" + std::to_string(r.rank) + ".json"))) {
        r.ended = true;
        r.started = true;
        r.exit_code = j->value("exit_code", 0);
        r.signal = j->value("signal", 0);
        r.end_ns = j->value("time_ns", int64_t(0));
        r.asked_to_stop = j->value("asked_to_stop", false);
        r.tail = j->value("tail", std::vector<std::string>());
        if (r.failed() && !stopping_)
          begin_stop("rank " + std::to_string(r.rank) + " " + describe_end(r));
      }
    }
  }
}

// Signals the ranks this host can reach (all of them under mpirun).
void Supervisor::signal_ranks(int sig) {
  for (const RankRecord& r : ranks_)
    if (r.started && !r.ended && r.pid > 0 && r.host == host_) ::kill(pid_t(r.pid), sig);
}

void Supervisor::begin_stop(const std::string& why) {
  stopping_ = true;
  stop_at_ = Clock::now();
  stop_ns_ = realtime_ns();
  stage_ = 0;
  log(why + ": stopping the other ranks (SIGTERM, SIGKILL after " + format_seconds(o_.grace_s) +
      " s)");
  signal_ranks(SIGTERM);
  if (launcher_ == "srun" && !launcher_done_) ::kill(pid_, SIGTERM);
}

void Supervisor::on_signal_received(int sig) {
  if (forwarded_ == 0 && !stopping_) {
    // Preemption: pass it on; the ranks checkpoint at the next step boundary and exit 0.
    const int to_ranks = sig == SIGUSR1 ? SIGUSR1 : SIGTERM;
    forwarded_ = to_ranks;
    log("received " + signal_name(sig) + ": passing " + signal_name(to_ranks) +
        " to the ranks (origami train saves a checkpoint at the next step and exits); send it "
        "again to stop them at once");
    if (launcher_ == "srun")
      ::kill(pid_, to_ranks);  // srun passes signals on to every task
    else
      signal_ranks(to_ranks);
    return;
  }
  if (!stopping_) {
    hard_stop_signal_ = sig;
    begin_stop("received " + signal_name(sig) + " again");
  }
}

// Orphans of the job (reparented to us, the subreaper) and ranks still alive: killed and reaped.
void Supervisor::sweep() {
  for (const RankRecord& r : ranks_) {
    if (r.host != host_) continue;
    if (r.pid > 0) ::kill(pid_t(r.pid), SIGKILL);
    if (r.wrapper_pid > 0) ::kill(pid_t(r.wrapper_pid), SIGKILL);
  }
  if (pid_ > 0) ::kill(-pid_, SIGKILL);
  const pid_t me = getpid();
  std::error_code ec;
  for (const auto& e : fs::directory_iterator("/proc", ec)) {
    const std::string name = e.path().filename().string();
    if (name.empty() || !std::isdigit(static_cast<unsigned char>(name[0]))) continue;
    std::ifstream stat(e.path() / "stat");
    std::string line;
    if (!std::getline(stat, line)) continue;
    // pid (comm) state ppid ...: comm may hold spaces, so read after the last ')'.
    const size_t close = line.rfind(')');
    if (close == std::string::npos) continue;
    std::istringstream rest(line.substr(close + 1));
    char state = 0;
    long ppid = 0;
    rest >> state >> ppid;
    if (ppid == me) ::kill(pid_t(std::stol(name)), SIGKILL);
  }
  while (waitpid(-1, nullptr, WNOHANG) > 0) {
  }
}

int Supervisor::report() {
  int first = primary_failure(ranks_);
  const double elapsed = seconds_between(start_ns_, end_ns_);
  // Ranks killed by a stop the user asked for are no failure of their own.
  if (first >= 0 && hard_stop_signal_ && ranks_[size_t(first)].end_ns >= stop_ns_) first = -1;
  if (first >= 0) {
    const RankRecord& f = ranks_[size_t(first)];
    std::ostringstream os;
    os << "origami launch: FAILED: rank " << f.rank << " " << describe_end(f);
    if (f.pid) os << " (pid " << f.pid << " on " << f.host << ")";
    os << ", " << format_seconds(std::max(0.0, seconds_between(start_ns_, f.end_ns)))
       << " s after the start; the job ended "
       << format_seconds(std::max(0.0, seconds_between(f.end_ns, end_ns_))) << " s later.\n";
    if (!f.tail.empty()) {
      os << "origami launch: last lines of rank " << f.rank << "'s error output:\n";
      for (const std::string& l : f.tail) os << "  | " << l << "\n";
    } else {
      os << "origami launch: rank " << f.rank << " wrote no error output.\n";
    }
    os << "origami launch: every rank:";
    for (const RankRecord& r : ranks_) {
      os << "\n  rank " << r.rank << ": ";
      if (!r.ended && r.started && stopping_)
        os << "killed when the job was stopped (no exit report)";
      else
        os << describe_end(r);
      if (r.ended && r.rank != f.rank &&
          (r.asked_to_stop ||
           (stopping_ && (r.signal == SIGTERM || r.signal == SIGKILL) && r.end_ns >= stop_ns_)))
        os << " (stopped)";
    }
    os << "\n";
    write_all(STDERR_FILENO, os.str());
    return f.signal ? 128 + f.signal : f.exit_code;
  }
  int missing = 0;
  for (const RankRecord& r : ranks_) missing += !r.ended;
  const int lcode = WIFEXITED(launcher_status_) ? WEXITSTATUS(launcher_status_)
                                                : 128 + WTERMSIG(launcher_status_);
  if (hard_stop_signal_) {
    log("stopped on " + signal_name(hard_stop_signal_) + " after " + format_seconds(elapsed) +
        " s");
    return 128 + hard_stop_signal_;
  }
  if (missing > 0 || lcode != 0) {
    std::ostringstream os;
    os << "FAILED: " << launcher_ << " " << (lcode ? "exited with status " : "exited normally")
       << (lcode ? std::to_string(lcode) : "") << " after " << format_seconds(elapsed) << " s";
    if (missing) os << "; " << missing << " of " << o_.nproc << " ranks gave no exit report";
    if (missing == o_.nproc) os << " (none started: see " << launcher_ << "'s messages above)";
    log(os.str());
    return lcode ? lcode : 1;
  }
  log("all " + std::to_string(o_.nproc) + " ranks exited 0 (" + format_seconds(elapsed) + " s" +
      (forwarded_ ? ", stopped early on " + signal_name(forwarded_) : std::string()) + ")");
  return 0;
}

int Supervisor::run() {
  host_ = host_name();
  launcher_ = resolve_launcher(o_.launcher, std::getenv("SLURM_JOB_ID") != nullptr);
  const char* tmp = std::getenv("TMPDIR");
  std::string tmpl = std::string(tmp && *tmp ? tmp : "/tmp") + "/origami-launch-XXXXXX";
  ORIGAMI_CHECK(mkdtemp(tmpl.data()) != nullptr, "cannot create a folder in '",
                tmp && *tmp ? tmp : "/tmp", "': ", std::strerror(errno));
  control_dir_ = tmpl;
  if (!o_.log_dir.empty()) fs::create_directories(o_.log_dir);

  // The environment every rank inherits. Values the user set win.
  if (launcher_ == "mpirun") {
    setenv("OMPI_ALLOW_RUN_AS_ROOT", "1", 0);
    setenv("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1", 0);
    // No fabric probing on one machine. (Each rank makes the settings Open MPI needs on this
    // machine itself, parallel/mpi_environment.h.)
    setenv("OMPI_MCA_btl", "self,vader,tcp", 0);
    setenv("OMPI_MCA_pml", "ob1", 0);
  }
  if (!std::getenv("OMP_NUM_THREADS")) {
    std::string threads = o_.omp_threads;
    if (threads == "auto") {
      const unsigned cores = std::max(1u, std::thread::hardware_concurrency());
      threads = std::to_string(std::max(1u, cores / unsigned(o_.nproc)));
    }
    setenv("OMP_NUM_THREADS", threads.c_str(), 1);
  }
  // Orphaned descendants come back to us, so none is left behind.
  prctl(PR_SET_CHILD_SUBREAPER, 1);
  open_signal_pipe({SIGTERM, SIGINT, SIGHUP, SIGUSR1, SIGUSR2});
  // A closed console (origami launch ... | head) must not end the supervisor mid-job.
  std::signal(SIGPIPE, SIG_IGN);

  log(std::to_string(o_.nproc) + " ranks through " + launcher_ + " on " + host_ +
      ", OMP_NUM_THREADS=" + std::getenv("OMP_NUM_THREADS") +
      (o_.log_dir.empty() ? ", output prefixed by rank"
                          : ", logs in " + o_.log_dir + "/rank_N.log"));
  start_ns_ = realtime_ns();
  start_launcher();

  LineSplitter split_out, split_err;
  bool out_open = true, err_open = true;
  Clock::time_point drain_deadline{};
  const auto grace = std::chrono::milliseconds(int64_t(o_.grace_s * 1000));
  for (;;) {
    pollfd fds[3] = {{out_open ? out_ : -1, POLLIN, 0},
                     {err_open ? err_ : -1, POLLIN, 0},
                     {g_signal_pipe[0], POLLIN, 0}};
    ::poll(fds, 3, 100);
    if (out_open) forward_output(out_, STDOUT_FILENO, split_out, out_open);
    if (err_open) forward_output(err_, STDERR_FILENO, split_err, err_open);
    for (int sig : read_signals()) on_signal_received(sig);
    scan_records();
    if (stopping_ && !launcher_done_) {
      const auto since = Clock::now() - stop_at_;
      if (stage_ == 0 && since >= grace) {
        signal_ranks(SIGKILL);
        stage_ = 1;
      } else if (stage_ == 1 && since >= grace + std::chrono::seconds(1)) {
        ::kill(-pid_, SIGTERM);
        stage_ = 2;
      } else if (stage_ == 2 && since >= 2 * grace + std::chrono::seconds(1)) {
        ::kill(-pid_, SIGKILL);
        stage_ = 3;
      }
    }
    if (!launcher_done_) {
      if (waitpid(pid_, &launcher_status_, WNOHANG) == pid_) {
        launcher_done_ = true;
        end_ns_ = realtime_ns();
        drain_deadline = Clock::now() + std::chrono::seconds(1);
      }
    } else if ((!out_open && !err_open) || Clock::now() >= drain_deadline) {
      break;
    }
  }
  scan_records();
  sweep();
  const int code = report();
  std::error_code ec;
  fs::remove_all(control_dir_, ec);
  return code;
}

}  // namespace

int supervise(const SupervisorOptions& options) {
  ORIGAMI_CHECK(options.nproc >= 1, "-n must be at least 1, got ", options.nproc);
  ORIGAMI_CHECK(!options.command.empty(),
                "origami launch needs the command to run, e.g. 'origami launch -n 4 -- train "
                "configs/demo/tiny_dense.pbtxt'");
  ORIGAMI_CHECK(options.grace_s >= 0, "--grace-s must be >= 0, got ", options.grace_s);
  Supervisor s(options);
  return s.run();
}

}  // namespace origami::launch
