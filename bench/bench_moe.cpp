// MoE training throughput under several parallel layouts of the same ranks, and where the step's
// time goes: the share spent in each communication type, split by the layer type that makes the
// call. Run under MPI with 4 ranks (the layouts below are for 4):
//
//   export OMP_NUM_THREADS=1 OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
//   export OMPI_MCA_btl_vader_single_copy_mechanism=none OMPI_MCA_btl=self,vader,tcp
//   export OMPI_MCA_pml=ob1
//   mpirun --oversubscribe --allow-run-as-root --bind-to none -np 4 build/bin/bench_moe
//       [--model demo|large|both] [--mode dropless|capacity|both] [--layouts a,b,...]
//       [--rounds R] [--steps N] [--warmup N] [--global-batch G] [--micro M] [--detail]
//       [--barrier-first] [--list]
//
// Models: "demo" is configs/demo/tiny_moe.pbtxt (Mixtral-style, 4 experts top-2, H=128, L=2,
// S=128, byte vocabulary 258); "large" is the same family at 8 experts top-2, H=256, L=4, 8 heads
// (4 KV heads), expert width 384, S=256, vocabulary 264. Modes: dropless, or capacity factor 1.0
// (each expert takes at most ceil(k * T / E) copies of a rank's T tokens; the lowest-probability
// copies beyond are dropped).
//
// Layouts (attention | experts; every one on the same ranks, the same global batch):
//   1rank               the reference: world rank 0 alone with the whole batch, the others idle
//   dp4                 DP4            | experts replicated (no dispatch)
//   dp4_ep4             DP4            | EP4, all-to-all dispatcher
//   dp4_ep4_allgather   DP4            | EP4, all-gather dispatcher
//   tp2dp2_ep4          TP2xDP2 (SP)   | ETP1xEP4
//   tp2dp2_etp2ep2      TP2xDP2 (SP)   | ETP2xEP2
//   tp2dp2_etp2ep2_ag   TP2xDP2 (SP)   | ETP2xEP2, all-gather dispatcher
//   cp2dp2_ep4          CP2xDP2 (ring) | EP4
//   pp2dp2_ep2          PP2xDP2 (1F1B) | EP2 (load-balancing loss off: unsupported with PP)
//
// Each step: G sequences of S tokens in M microbatches (G / dp sequences per data-parallel
// rank; CP splits each sequence), forward + backward, gradient reduction, global norm, clipping,
// AdamW. Tokens come from the fortunes text (the demo's data) read as bytes, random bytes when
// it is not installed. Every configuration (layout x mode) runs in --rounds rounds, the order of
// the configurations reversed every other round, so that changes in the machine's load fall on
// all alike; a round builds the model, runs --warmup steps, then times --steps steps: a barrier,
// then the step on every rank. A step's time is the slowest rank's; tokens/s = G * S / the
// median step time over all rounds.
//
// Communication is timed by wrapping every communicator in a TimedCommunicator
// (parallel/timed_communicator.h): the wall time each call blocks the rank, waiting for the
// slower members included. Calls are grouped by type (group): EP = the dispatcher's groups
// (ep, etp, tp-ep), TP, CP, DP = the data-parallel reductions (dp, dp-cp, edp), PP, and "norm"
// (the world all-gather of the gradient norm). Layer type = the code making the call, found from
// the stack: attention (incl. the CP ring), MoE (dispatcher), head (embedding, output head,
// loss statistics), optimizer (gradient reduction over DP / EDP / TP, norm, parameter gather),
// pipeline (stage transfers). Shares are of the step time, per rank, averaged over the ranks.
// Columns: tok/s; x1rank = tok/s over the single-rank reference's; step ms; kept% = token
// copies the experts processed (capacity drops the rest; counted in the last microbatch);
// comm% = share of the step in communication, split by type and by layer type; then a table of
// each type's payload per rank and step (KiB: bytes sent, or gathered, by the rank).
// --barrier-first precedes every collective by a barrier over its group and reports the time
// spent in those barriers (wait%, part of comm%): waiting for the slowest member rather than
// moving data (the barriers add latency of their own, so the step is slower).
// --detail prints each layout's full (layer type x group x operation) table.
//
// On a machine with fewer cores than ranks the ranks share cores (--oversubscribe) and MPI waits
// by polling, so communication time includes time other ranks spend computing on the same core;
// compare ratios within one run.
#include <cxxabi.h>
#include <elf.h>
#include <execinfo.h>
#include <link.h>
#include <mpi.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "models/model_spec.h"
#include "models/moe_router.h"
#include "models/parallel_model.h"
#include "ops/optimizer.h"
#include "parallel/process_groups.h"
#include "parallel/rank_groups.h"
#include "parallel/timed_communicator.h"
#include "parallel/world.h"
#include "runtime/config.h"
#include "runtime/data.h"
#include "runtime/error.h"

using namespace origami;
using Clock = std::chrono::steady_clock;

namespace {

// ---- call sites from the stack -------------------------------------------------------------
//
// The function symbols of this executable (its ELF symbol table), each classified once by its
// mangled name; a call's site is the class of the innermost classified frame on the stack.

enum Site { kAttention, kMoe, kMlp, kHead, kOptimizer, kPipeline, kOther, kSites };
const char* const kSiteNames[kSites] = {"attention", "moe",      "mlp",  "head",
                                        "optimizer", "pipeline", "other"};

// Whether mangled `name` holds identifier `id` (as <length><id>, not after another digit).
bool has_id(const std::string& name, const std::string& id) {
  const std::string token = std::to_string(id.size()) + id;
  for (size_t at = name.find(token); at != std::string::npos; at = name.find(token, at + 1))
    if (at == 0 || !(name[at - 1] >= '0' && name[at - 1] <= '9')) return true;
  return false;
}

int classify_symbol(const std::string& n) {
  auto any = [&](std::initializer_list<const char*> ids) {
    for (const char* id : ids)
      if (has_id(n, id)) return true;
    return false;
  };
  if (!has_id(n, "origami")) return -1;
  if (has_id(n, "CpAttention")) return kAttention;
  if (has_id(n, "DistributedOptimizer")) return kOptimizer;
  if (has_id(n, "Decoder")) {
    if (any({"attention_forward", "attention_backward"})) return kAttention;
    if (any({"moe_forward", "moe_backward"})) return kMoe;  // the expert dispatcher's calls too
    if (any({"mlp_forward", "mlp_backward"})) return kMlp;
    if (any({"chunk_forward", "chunk_backward", "finish_loss"})) return kHead;
    if (any({"layer_forward", "layer_backward"})) return kOther;  // an inlined block: unknown
    return -1;
  }
  if (has_id(n, "ParallelModel")) {
    if (any({"reduce_tensor_parallel", "reduce_tied_embedding", "grad_norm", "optimizer_step",
             "scale_gradients", "gather"}))
      return kOptimizer;
    if (any({"run_pipeline", "run_step", "forward_backward"})) return kPipeline;
    return -1;
  }
  return -1;
}

class StackSites {
 public:
  // Reads the symbol table of /proc/self/exe; false (sites all "other") when it has none.
  bool load() {
    std::ifstream f("/proc/self/exe", std::ios::binary);
    const std::vector<char> bytes((std::istreambuf_iterator<char>(f)),
                                  std::istreambuf_iterator<char>());
    if (bytes.size() < sizeof(Elf64_Ehdr)) return false;
    Elf64_Ehdr eh;
    std::memcpy(&eh, bytes.data(), sizeof eh);
    if (std::memcmp(eh.e_ident, ELFMAG, SELFMAG) != 0 || eh.e_ident[EI_CLASS] != ELFCLASS64)
      return false;
    if (eh.e_shoff + uint64_t(eh.e_shnum) * sizeof(Elf64_Shdr) > bytes.size()) return false;
    std::vector<Elf64_Shdr> sh(eh.e_shnum);
    std::memcpy(sh.data(), bytes.data() + eh.e_shoff, sh.size() * sizeof(Elf64_Shdr));
    uintptr_t bias = 0;
    dl_iterate_phdr(
        [](dl_phdr_info* info, size_t, void* out) {
          *static_cast<uintptr_t*>(out) = info->dlpi_addr;  // the first object: the program
          return 1;
        },
        &bias);
    for (const Elf64_Shdr& s : sh) {
      if (s.sh_type != SHT_SYMTAB || s.sh_link >= sh.size()) continue;
      const Elf64_Shdr& strtab = sh[s.sh_link];
      if (s.sh_offset + s.sh_size > bytes.size() ||
          strtab.sh_offset + strtab.sh_size > bytes.size())
        return false;
      const size_t n = s.sh_size / sizeof(Elf64_Sym);
      for (size_t i = 0; i < n; ++i) {
        Elf64_Sym sym;
        std::memcpy(&sym, bytes.data() + s.sh_offset + i * sizeof(Elf64_Sym), sizeof sym);
        if (ELF64_ST_TYPE(sym.st_info) != STT_FUNC || sym.st_size == 0 ||
            sym.st_name >= strtab.sh_size)
          continue;
        const std::string name(bytes.data() + strtab.sh_offset + sym.st_name);
        const int site = classify_symbol(name);
        if (site < 0) continue;
        syms_.push_back({bias + sym.st_value, bias + sym.st_value + sym.st_size, site});
        found_.insert(name);
      }
    }
    std::sort(syms_.begin(), syms_.end(), [](const Sym& a, const Sym& b) { return a.lo < b.lo; });
    return !syms_.empty();
  }

  int site_of_stack() const {
    void* frames[64];
    const int n = backtrace(frames, 64);
    for (int i = 1; i < n; ++i) {
      const uintptr_t pc = reinterpret_cast<uintptr_t>(frames[i]) - 1;  // inside the call
      auto it = std::upper_bound(syms_.begin(), syms_.end(), pc,
                                 [](uintptr_t a, const Sym& s) { return a < s.lo; });
      if (it == syms_.begin()) continue;
      --it;
      if (pc < it->hi) return it->site;
    }
    return kOther;
  }

  // The classified functions, demangled (to check that nothing was inlined away).
  std::vector<std::string> functions() const {
    std::vector<std::string> out;
    for (const std::string& m : found_) {
      int status = 0;
      char* d = abi::__cxa_demangle(m.c_str(), nullptr, nullptr, &status);
      std::string s = status == 0 && d ? d : m;
      std::free(d);
      const size_t paren = s.find('(');
      out.push_back(paren == std::string::npos ? s : s.substr(0, paren));
    }
    std::sort(out.begin(), out.end());
    out.erase(std::unique(out.begin(), out.end()), out.end());
    return out;
  }

 private:
  struct Sym {
    uintptr_t lo, hi;
    int site;
  };
  std::vector<Sym> syms_;
  std::set<std::string> found_;
};

// ---- communication types -------------------------------------------------------------------

enum Type { kEp, kTp, kCp, kDp, kPp, kNorm, kOtherGroup, kTypes };
const char* const kTypeNames[kTypes] = {"EP", "TP", "CP", "DP", "PP", "norm", "other"};

int type_of_group(const std::string& g) {
  if (g == "ep" || g == "etp" || g == "tp-ep") return kEp;
  if (g == "tp") return kTp;
  if (g == "cp") return kCp;
  if (g == "dp" || g == "dp-cp" || g == "edp") return kDp;
  if (g == "pp") return kPp;
  if (g == "world") return kNorm;
  return kOtherGroup;
}

// ---- models and layouts --------------------------------------------------------------------

struct ModelCase {
  std::string name;
  models::ModelSpec spec;
  int64_t seq = 0;
};

ModelCase demo_model() {
  const Config c = load_config(std::string(ORIGAMI_SOURCE_DIR) + "/configs/demo/tiny_moe.pbtxt");
  ModelCase m;
  m.name = "demo";
  m.spec = models::spec_from_config(c.model());
  m.seq = c.train().seq_len();
  return m;
}

ModelCase large_model() {
  ModelCase m = demo_model();
  m.name = "large";
  models::ModelSpec& s = m.spec;
  s.vocab = 264;  // bytes + specials, padded to a multiple of 8
  s.hidden = 256;
  s.layers = 4;
  s.heads = 8;
  s.kv_heads = 4;
  s.head_dim = 32;
  s.rope.head_dim = 32;
  s.max_seq_len = 256;
  s.moe.num_experts = 8;
  s.moe.top_k = 2;
  s.moe.expert_ffn = 384;
  s.validate();
  m.seq = 256;
  return m;
}

struct LayoutCase {
  std::string name, attention, experts;
  int tp = 1, cp = 1, pp = 1, ep = 1, etp = 0;
  bool allgather = false;
  bool single = false;  // the reference: one rank with the whole batch, the others idle
};

std::vector<LayoutCase> all_layouts() {
  return {
      {.name = "1rank", .attention = "1 rank", .experts = "(reference)", .single = true},
      {.name = "dp4", .attention = "DP4", .experts = "replicated"},
      {.name = "dp4_ep4", .attention = "DP4", .experts = "EP4 a2a", .ep = 4},
      {.name = "dp4_ep4_allgather",
       .attention = "DP4",
       .experts = "EP4 allgather",
       .ep = 4,
       .allgather = true},
      {.name = "tp2dp2_ep4",
       .attention = "TP2xDP2 SP",
       .experts = "ETP1xEP4",
       .tp = 2,
       .ep = 4,
       .etp = 1},
      {.name = "tp2dp2_etp2ep2",
       .attention = "TP2xDP2 SP",
       .experts = "ETP2xEP2",
       .tp = 2,
       .ep = 2},
      {.name = "tp2dp2_etp2ep2_ag",
       .attention = "TP2xDP2 SP",
       .experts = "ETP2xEP2 allgather",
       .tp = 2,
       .ep = 2,
       .allgather = true},
      {.name = "cp2dp2_ep4",
       .attention = "CP2xDP2 ring",
       .experts = "EP4",
       .cp = 2,
       .ep = 4,
       .etp = 1},
      {.name = "pp2dp2_ep2", .attention = "PP2xDP2", .experts = "EP2", .pp = 2, .ep = 2},
  };
}

// ---- data ----------------------------------------------------------------------------------

// The fortunes text as bytes (every file of the folder without an extension), or empty.
std::vector<uint8_t> read_fortunes() {
  std::vector<uint8_t> out;
  std::error_code ec;
  const std::filesystem::path dir = "/usr/share/games/fortunes";
  if (!std::filesystem::is_directory(dir, ec)) return out;
  std::vector<std::filesystem::path> files;
  for (const auto& e : std::filesystem::directory_iterator(dir, ec))
    if (e.is_regular_file() && !e.path().has_extension()) files.push_back(e.path());
  std::sort(files.begin(), files.end());
  for (const auto& p : files) {
    std::ifstream f(p, std::ios::binary);
    out.insert(out.end(), std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
  }
  return out;
}

// Sequence `seq` of step `step` (S+1 tokens: inputs and shifted targets) into row b.
void fill_sequence(const std::vector<uint8_t>& text, int step, int64_t seq, int64_t S, int64_t* ids,
                   int64_t* targets) {
  SplitMix64 r(uint64_t(step) * 1000003u + uint64_t(seq) * 7919u + 17u);
  std::vector<int64_t> tok(size_t(S + 1));
  if (int64_t(text.size()) > S + 1) {
    const uint64_t start = r.next() % uint64_t(int64_t(text.size()) - S - 1);
    for (int64_t t = 0; t <= S; ++t) tok[size_t(t)] = text[size_t(start) + size_t(t)];
  } else {
    for (int64_t t = 0; t <= S; ++t) tok[size_t(t)] = int64_t(r.next() % 256);
  }
  for (int64_t t = 0; t < S; ++t) {
    ids[t] = tok[size_t(t)];
    targets[t] = tok[size_t(t) + 1];
  }
}

// ---- one configuration -------------------------------------------------------------------

struct Options {
  std::vector<std::string> models = {"demo", "large"};
  std::vector<std::string> modes = {"dropless", "capacity"};
  std::vector<std::string> layouts;  // empty: all
  int rounds = 3, steps = 2, warmup = 1;
  int64_t global_batch = 8, micro = 2;
  bool detail = false;
  bool barrier_first = false;
};

// What the timed steps of one configuration gave, over every round.
struct Accum {
  std::vector<double> step_times;          // the slowest rank's, every timed step
  double comm_s[kSites][kTypes] = {};      // this rank's seconds by layer type and group
  double rank_step_total = 0;              // this rank's own step seconds
  std::map<std::string, CommStat> detail;  // "site group op"
  double bytes[kTypes] = {};               // this rank's payload by group type
  double wait_s = 0;                       // in the barriers before collectives
  int64_t kept = 0, copies = 0;            // token copies the experts processed / routed
  double loss = 0;                         // of the last step
};

struct Result {
  std::string layout, attention, experts;
  double step_s = 0, tokens_per_s = 0, comm_share = 0;
  double type_share[kTypes] = {}, site_share[kSites] = {};
  double type_kib[kTypes] = {};  // payload per rank and step, mean over the ranks
  double kept = 1;               // share of the routed token copies the experts processed
  double wait_share = 0;         // of comm_share: waiting in the barriers (--barrier-first)
  double loss = 0;
  bool single = false;
  std::string detail;
};

double now_s() {
  return std::chrono::duration<double>(Clock::now().time_since_epoch()).count();
}

// A barrier that sleeps while it waits, so that idle ranks leave the cores to the working one.
void sleeping_barrier() {
  MPI_Request req;
  MPI_Ibarrier(MPI_COMM_WORLD, &req);
  for (int done = 0;;) {
    MPI_Test(&req, &done, MPI_STATUS_IGNORE);
    if (done) return;
    struct timespec ts = {0, 1'000'000};
    nanosleep(&ts, nullptr);
  }
}

// One round of a configuration: builds the layout's model, runs warm-up and timed steps, adds
// them to `acc`. Collective over `world`. The single-rank reference runs on world rank 0 only
// (a group of its own) while the other ranks sleep.
void run_round(Communicator& world, const ModelCase& mc, bool capacity, const LayoutCase& lc,
               const Options& opt, const std::vector<uint8_t>& text, StackSites& sites,
               Accum& acc) {
  models::ModelSpec spec = mc.spec;
  if (capacity) spec.moe.capacity_factor = 1.0;
  if (lc.pp > 1) spec.moe.aux_loss_coeff = 0.0;  // not supported across pipeline stages
  models::ParallelOptions po;
  po.layout.tp = lc.tp;
  po.layout.cp = lc.cp;
  po.layout.pp = lc.pp;
  po.layout.ep = lc.ep;
  po.layout.etp = lc.etp;
  po.sequence_parallel = lc.tp > 1;
  po.allgather_dispatcher = lc.allgather;
  const bool single = lc.single;
  std::unique_ptr<Communicator> self;
  if (single) {
    if (world.rank() != 0) {
      sleeping_barrier();
      std::vector<double> times(size_t(opt.steps));
      MPI_Bcast(times.data(), opt.steps, MPI_DOUBLE, 0, MPI_COMM_WORLD);
      acc.step_times.insert(acc.step_times.end(), times.begin(), times.end());
      return;
    }
    self = self_communicator("world");
  }
  Communicator& group_world = single ? *self : world;
  const RankGroups layout(group_world.size(), po.layout);
  const int dp = layout.dp();
  ORIGAMI_CHECK(opt.global_batch % (int64_t(dp) * opt.micro) == 0, "global batch ",
                opt.global_batch, " does not split into ", opt.micro, " microbatches over dp=", dp);
  const int64_t B = opt.global_batch / (int64_t(dp) * opt.micro), S = mc.seq;

  ProcessGroups groups = ProcessGroups::create(group_world, layout);
  auto timings = std::make_shared<CommTimings>();
  timings->set_site_hook([&sites] { return std::string(kSiteNames[sites.site_of_stack()]); });
  timings->set_barrier_first(opt.barrier_first);
  time_process_groups(groups, timings);
  models::DecoderOptions o;
  o.batch = B;
  o.seq = S;
  models::ParallelModel pm(spec, o, po, layout, groups, opt.micro);
  pm.init_random(1234, spec.init_std);
  const int dp_rank = groups.dp->rank();

  std::vector<double> times;
  for (int step = 1; step <= opt.warmup + opt.steps; ++step) {
    std::vector<Tensor> ids(size_t(opt.micro)), targets(size_t(opt.micro));
    for (int64_t m = 0; m < opt.micro; ++m) {
      ids[size_t(m)] = Tensor::empty({B, S}, DType::i64);
      targets[size_t(m)] = Tensor::empty({B, S}, DType::i64);
      for (int64_t b = 0; b < B; ++b) {
        const int64_t seq = m * opt.global_batch / opt.micro + int64_t(dp_rank) * B + b;
        fill_sequence(text, step, seq, S, ids[size_t(m)].data_as<int64_t>() + b * S,
                      targets[size_t(m)].data_as<int64_t>() + b * S);
      }
    }
    if (!single) world.barrier();
    timings->reset();
    const double t0 = now_s();
    const models::StepLoss loss = pm.forward_backward(ids, targets);
    const double inv = 1.0 / double(opt.micro);
    const double norm = pm.grad_norm(inv);
    pm.scale_gradients(float(inv * ops::clip_coefficient(norm, 1.0)));
    ops::AdamWParams ap;
    ap.lr = 1e-3f;
    ap.weight_decay = 0.1f;
    ap.step = step;
    pm.optimizer_step(ap);
    const double mine = now_s() - t0;
    acc.loss = loss.loss;
    if (step <= opt.warmup) continue;
    double slowest = mine;
    if (!single) MPI_Allreduce(&mine, &slowest, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
    times.push_back(slowest);
    acc.rank_step_total += mine;
    for (const auto& [key, st] : timings->snapshot()) {
      int site = kOther;
      for (int k = 0; k < kSites; ++k)
        if (key.site == kSiteNames[k]) site = k;
      acc.comm_s[site][type_of_group(key.group)] += st.seconds;
      acc.bytes[type_of_group(key.group)] += double(st.bytes);
      acc.wait_s += st.wait_seconds;
      CommStat& d = acc.detail[key.site + " " + key.group + " " + comm_op_name(key.op)];
      d.calls += st.calls;
      d.bytes += st.bytes;
      d.seconds += st.seconds;
      d.wait_seconds += st.wait_seconds;
    }
  }
  // Copies kept by capacity (slot >= 0) in the last microbatch slot of each MoE layer here.
  for (int c = 0; c < pm.num_chunks(); ++c)
    for (int64_t l = 0; l < spec.layers; ++l) {
      const models::RouterBuffers* rb = nullptr;
      try {
        rb = &pm.chunk(c).routing(l, 0);
      } catch (const Error&) {
        continue;  // not a layer of this chunk
      }
      const int64_t* slot = rb->slot.data_as<int64_t>();
      for (int64_t i = 0; i < rb->slot.numel(); ++i) acc.kept += slot[i] >= 0 ? 1 : 0;
      acc.copies += rb->slot.numel();
    }
  if (single) {
    sleeping_barrier();
    MPI_Bcast(times.data(), opt.steps, MPI_DOUBLE, 0, MPI_COMM_WORLD);
  }
  acc.step_times.insert(acc.step_times.end(), times.begin(), times.end());
}

// Median step, tokens/s and the shares (each rank's share of its own step time, averaged over
// the ranks; rank 0's alone for the single-rank reference). Collective.
Result finish(const LayoutCase& lc, const Accum& acc, const Options& opt, int64_t S, int world_size,
              int me) {
  Result r;
  r.layout = lc.name;
  r.attention = lc.attention;
  r.experts = lc.experts;
  r.loss = acc.loss;
  r.single = lc.single;
  std::vector<double> sorted = acc.step_times;
  std::sort(sorted.begin(), sorted.end());
  r.step_s = sorted[sorted.size() / 2];
  if (sorted.size() % 2 == 0) r.step_s = 0.5 * (sorted[sorted.size() / 2 - 1] + r.step_s);
  r.tokens_per_s = double(opt.global_batch * S) / r.step_s;
  std::vector<double> share(size_t(int(kSites) * int(kTypes)), 0.0), mean(share.size(), 0.0);
  if (acc.rank_step_total > 0)
    for (int s = 0; s < kSites; ++s)
      for (int t = 0; t < kTypes; ++t)
        share[size_t(s * kTypes + t)] = acc.comm_s[s][t] / acc.rank_step_total;
  MPI_Allreduce(share.data(), mean.data(), int(share.size()), MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
  for (double& v : mean) v /= lc.single ? 1.0 : double(world_size);
  double kib[kTypes];
  for (int t = 0; t < kTypes; ++t)
    kib[t] = acc.bytes[t] / 1024.0 / std::max<double>(1.0, double(acc.step_times.size()));
  MPI_Allreduce(kib, r.type_kib, kTypes, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
  for (double& v : r.type_kib) v /= lc.single ? 1.0 : double(world_size);
  int64_t counts[2] = {acc.kept, acc.copies}, total[2] = {0, 0};
  MPI_Allreduce(counts, total, 2, MPI_INT64_T, MPI_SUM, MPI_COMM_WORLD);
  r.kept = total[1] > 0 ? double(total[0]) / double(total[1]) : 1.0;
  const double wait = acc.rank_step_total > 0 ? acc.wait_s / acc.rank_step_total : 0.0;
  MPI_Allreduce(&wait, &r.wait_share, 1, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
  r.wait_share /= lc.single ? 1.0 : double(world_size);
  for (int s = 0; s < kSites; ++s)
    for (int t = 0; t < kTypes; ++t) {
      const double v = mean[size_t(s * kTypes + t)];
      r.site_share[s] += v;
      r.type_share[t] += v;
      r.comm_share += v;
    }
  if (opt.detail && me == 0 && !acc.detail.empty()) {
    char line[256];
    std::string out =
        "    rank 0, per step: site group op          calls     KiB      ms  %step  wait ms\n";
    const double steps = double(acc.step_times.size());
    for (const auto& [k, d] : acc.detail) {
      std::snprintf(line, sizeof line, "    %-34s %7.1f %8.1f %7.2f %6.1f %8.2f\n", k.c_str(),
                    double(d.calls) / steps, double(d.bytes) / 1024.0 / steps,
                    d.seconds * 1e3 / steps, 100.0 * d.seconds / acc.rank_step_total,
                    d.wait_seconds * 1e3 / steps);
      out += line;
    }
    r.detail = out;
  }
  return r;
}

void print_results(const std::string& title, const std::vector<Result>& rs, bool waits) {
  double reference = 0;  // tokens/s of the single-rank run
  for (const Result& r : rs)
    if (r.single) reference = r.tokens_per_s;
  std::printf("\n%s\n", title.c_str());
  std::printf("%-19s %-13s %-18s %7s %6s %8s %5s %6s%s |", "layout", "attention", "experts",
              "tok/s", "x1rank", "step ms", "kept%", "comm%", waits ? "  wait%" : "");
  for (int t = 0; t < kTypes; ++t)
    if (t != kOtherGroup) std::printf(" %5s", kTypeNames[t]);
  std::printf(" |");
  for (int s = 0; s < kSites; ++s)
    if (s != kMlp) std::printf(" %5.5s", kSiteNames[s]);
  std::printf("\n");
  for (const Result& r : rs) {
    std::printf("%-19s %-13s %-18s %7.0f %6.2f %8.1f %5.1f", r.layout.c_str(), r.attention.c_str(),
                r.experts.c_str(), r.tokens_per_s, reference > 0 ? r.tokens_per_s / reference : 0.0,
                r.step_s * 1e3, 100 * r.kept);
    if (r.single) {
      std::printf("\n");
      continue;
    }
    std::printf(" %6.1f", 100 * r.comm_share);
    if (waits) std::printf(" %6.1f", 100 * r.wait_share);
    std::printf(" |");
    for (int t = 0; t < kTypes; ++t)
      if (t != kOtherGroup) std::printf(" %5.1f", 100 * r.type_share[t]);
    std::printf(" |");
    for (int s = 0; s < kSites; ++s)
      if (s != kMlp) std::printf(" %5.1f", 100 * r.site_share[s]);
    std::printf("\n");
    if (!r.detail.empty()) std::printf("%s", r.detail.c_str());
  }
  std::printf("payload per rank and step (KiB, mean over ranks):\n%-19s", "layout");
  for (int t = 0; t < kTypes; ++t)
    if (t != kOtherGroup) std::printf(" %8s", kTypeNames[t]);
  std::printf("\n");
  for (const Result& r : rs) {
    if (r.single) continue;
    std::printf("%-19s", r.layout.c_str());
    for (int t = 0; t < kTypes; ++t)
      if (t != kOtherGroup) std::printf(" %8.0f", r.type_kib[t]);
    std::printf("\n");
  }
  std::fflush(stdout);
}

std::vector<std::string> split_list(const std::string& s) {
  std::vector<std::string> out;
  size_t at = 0;
  while (at <= s.size()) {
    const size_t comma = s.find(',', at);
    const std::string item =
        s.substr(at, comma == std::string::npos ? std::string::npos : comma - at);
    if (!item.empty()) out.push_back(item);
    if (comma == std::string::npos) break;
    at = comma + 1;
  }
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  MpiSession mpi(&argc, &argv);
  Options opt;
  bool list = false;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&]() -> std::string {
      ORIGAMI_CHECK(i + 1 < argc, a, " needs a value");
      return argv[++i];
    };
    auto both = [](const std::string& v, std::vector<std::string> all) {
      return v == "both" ? all : std::vector<std::string>{v};
    };
    if (a == "--model") {
      opt.models = both(next(), {"demo", "large"});
    } else if (a == "--mode") {
      opt.modes = both(next(), {"dropless", "capacity"});
    } else if (a == "--layouts") {
      opt.layouts = split_list(next());
    } else if (a == "--rounds") {
      opt.rounds = std::atoi(next().c_str());
    } else if (a == "--steps") {
      opt.steps = std::atoi(next().c_str());
    } else if (a == "--warmup") {
      opt.warmup = std::atoi(next().c_str());
    } else if (a == "--global-batch") {
      opt.global_batch = std::atoll(next().c_str());
    } else if (a == "--micro") {
      opt.micro = std::atoll(next().c_str());
    } else if (a == "--barrier-first") {
      opt.barrier_first = true;
    } else if (a == "--detail") {
      opt.detail = true;
    } else if (a == "--list") {
      list = true;
    } else {
      std::fprintf(stderr, "bench_moe: unknown argument %s (usage at the top of bench_moe.cpp)\n",
                   a.c_str());
      return 2;
    }
  }
  std::unique_ptr<Communicator> world = mpi_world_communicator();
  const int me = world->rank();
  StackSites sites;
  const bool have_sites = sites.load();
  if (list) {
    if (me == 0) {
      for (const LayoutCase& l : all_layouts())
        std::printf("%-19s %-13s %s\n", l.name.c_str(), l.attention.c_str(), l.experts.c_str());
      std::printf("classified functions:\n");
      for (const std::string& f : sites.functions()) std::printf("  %s\n", f.c_str());
    }
    return 0;
  }
  std::vector<LayoutCase> layouts;
  for (const LayoutCase& l : all_layouts())
    if (opt.layouts.empty() ||
        std::find(opt.layouts.begin(), opt.layouts.end(), l.name) != opt.layouts.end())
      layouts.push_back(l);
  const std::vector<uint8_t> text = read_fortunes();
  if (me == 0) {
    std::printf(
        "bench_moe: %d ranks, %d OpenMP thread(s) per rank, f32, global batch %lld sequences in "
        "%lld microbatches, %d rounds of %d warm-up + %d timed steps, data: %s%s\n",
        world->size(),
        std::atoi(std::getenv("OMP_NUM_THREADS") ? std::getenv("OMP_NUM_THREADS") : "0"),
        (long long)opt.global_batch, (long long)opt.micro, opt.rounds, opt.warmup, opt.steps,
        text.empty() ? "random bytes" : "fortunes text",
        have_sites ? "" : " (no symbol table: layer types unknown)");
    std::printf(
        "columns: tok/s = global tokens / median step (slowest rank); comm%% = share of the step "
        "in communication, by type (EP TP CP DP PP norm) and by layer type (attention moe head "
        "optimizer pipeline other), %% of the step averaged over ranks\n");
    std::fflush(stdout);
  }
  for (const std::string& mode : opt.modes)
    ORIGAMI_CHECK(mode == "dropless" || mode == "capacity", "--mode dropless|capacity|both, got ",
                  mode);
  for (const std::string& model : opt.models) {
    ORIGAMI_CHECK(model == "demo" || model == "large", "--model demo|large|both, got ", model);
    const ModelCase mc = model == "demo" ? demo_model() : large_model();
    // Rounds over every configuration, the order reversed every other round, so that changes
    // in the machine's load fall on all of them alike.
    std::vector<std::vector<Accum>> acc(opt.modes.size(), std::vector<Accum>(layouts.size()));
    for (int round = 0; round < opt.rounds; ++round) {
      const double t0 = now_s();
      for (size_t i = 0; i < layouts.size(); ++i) {
        const size_t l = round % 2 ? layouts.size() - 1 - i : i;
        for (size_t j = 0; j < opt.modes.size(); ++j) {
          const size_t m = round % 2 ? opt.modes.size() - 1 - j : j;
          run_round(*world, mc, opt.modes[m] == "capacity", layouts[l], opt, text, sites,
                    acc[m][l]);
        }
      }
      if (me == 0) {
        std::printf("  %s: round %d of %d, %.1f s\n", mc.name.c_str(), round + 1, opt.rounds,
                    now_s() - t0);
        std::fflush(stdout);
      }
    }
    for (size_t m = 0; m < opt.modes.size(); ++m) {
      std::vector<Result> results;
      for (size_t l = 0; l < layouts.size(); ++l)
        results.push_back(finish(layouts[l], acc[m][l], opt, mc.seq, world->size(), me));
      if (me == 0)
        print_results(mc.name + " (" + mc.spec.str() + ", S=" + std::to_string(mc.seq) + "), " +
                          (opt.modes[m] == "capacity" ? "capacity factor 1.0" : "dropless"),
                      results, opt.barrier_first);
    }
  }
  return 0;
}
