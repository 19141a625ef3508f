#include "launcher/trainer.h"

#include <unistd.h>

#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iostream>
#include <optional>
#include <thread>

#include <nlohmann/json.hpp>

#include "models/decoder.h"
#include "models/hf_import.h"
#include "models/parallel_model.h"
#include "ops/gemm.h"
#include "ops/optimizer.h"
#include "parallel/communicator.h"
#include "parallel/process_groups.h"
#include "parallel/rank_groups.h"
#include "parallel/startup_agreement.h"
#include "runtime/checkpoint.h"
#include "runtime/data.h"
#include "runtime/tokenizer.h"

namespace origami {

using json = nlohmann::json;

double learning_rate(const config::TrainConfig& t, int64_t step) {
  if (t.warmup_steps() > 0 && step <= t.warmup_steps())
    return t.lr() * double(step) / double(t.warmup_steps());
  if (t.lr_schedule() == "constant") return t.lr();
  const int64_t decay = std::max<int64_t>(1, t.steps() - t.warmup_steps());
  const double progress = std::min(1.0, double(step - t.warmup_steps()) / double(decay));
  return t.min_lr() + 0.5 * (t.lr() - t.min_lr()) * (1.0 + std::cos(M_PI * progress));
}

TrainOptions::Fault parse_fault(const std::string& text) {
  TrainOptions::Fault f;
  const size_t a = text.find(':'), b = a == std::string::npos ? a : text.find(':', a + 1);
  ORIGAMI_CHECK(b != std::string::npos, "--fault: expected RANK:STEP:KIND (KIND sleep, abort or ",
                "throw), got '", text, "'");
  char* end = nullptr;
  const std::string rank = text.substr(0, a), step = text.substr(a + 1, b - a - 1),
                    kind = text.substr(b + 1);
  f.rank = int(std::strtol(rank.c_str(), &end, 10));
  ORIGAMI_CHECK(!rank.empty() && *end == '\0' && f.rank >= 0, "--fault '", text,
                "': RANK must be an integer >= 0");
  f.step = std::strtoll(step.c_str(), &end, 10);
  ORIGAMI_CHECK(!step.empty() && *end == '\0' && f.step >= 1, "--fault '", text,
                "': STEP must be an integer >= 1");
  if (kind == "sleep")
    f.kind = TrainOptions::Fault::kSleep;
  else if (kind == "abort")
    f.kind = TrainOptions::Fault::kAbort;
  else if (kind == "throw")
    f.kind = TrainOptions::Fault::kThrow;
  else
    ORIGAMI_FAIL("--fault '", text, "': KIND must be sleep, abort or throw, got '", kind, "'");
  return f;
}

namespace {

// "SIGTERM" for SIGTERM.
std::string signal_name(int sig) {
  const char* abbrev = sigabbrev_np(sig);
  return abbrev ? std::string("SIG") + abbrev : "signal " + std::to_string(sig);
}

// Model FLOPs per trained token: 6 x active parameters of the matrix products, plus attention
// (q k^T and p v: 2 x 2 x S x D per head, causal half, forward and backward = 3x).
double flops_per_token(const models::ModelSpec& s, int64_t seq) {
  const double H = double(s.hidden), D = double(s.head_dim);
  double per_layer = H * D * double(s.heads + 2 * s.kv_heads) + D * double(s.heads) * H;
  double mlp_dense = 3.0 * H * double(s.ffn);
  double mlp_moe = 3.0 * H * double(s.moe.expert_ffn) * double(s.moe.top_k) +
                   3.0 * H * double(s.moe.shared_expert_ffn) + H * double(s.moe.num_experts);
  double matmul = 0;
  for (int64_t l = 0; l < s.layers; ++l)
    matmul += per_layer + (s.is_moe_layer(l) ? mlp_moe : mlp_dense);
  matmul += H * double(s.vocab);  // lm head
  const double attn = double(s.layers) * double(s.heads) * 2.0 * 2.0 * double(seq) * D / 2.0;
  return 6.0 * matmul + 3.0 * attn;
}

// The CPU's dense GEMM peak as measured now (FLOP/s), for MFU when the config gives none.
double measure_cpu_peak(DType dt) {
  const int64_t n = 512;
  Tensor a = Tensor::zeros({n, n}, dt), b = Tensor::zeros({n, n}, dt),
         c = Tensor::empty({n, n}, DType::f32);
  ops::gemm(a, b, c);
  double best = 0;
  for (int rep = 0; rep < 3; ++rep) {
    auto t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < 4; ++i) ops::gemm(a, b, c);
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    best = std::max(best, 4 * 2.0 * double(n * n * n) / s);
  }
  return best;
}

// Checkpoints: every rank writes its pieces, then (after a barrier) rank 0 publishes the step.
void save_checkpoint(const std::string& dir, int64_t step, models::ParallelModel& model,
                     Communicator& world, const BatchSampler& sampler,
                     const models::ModelSpec& spec, int keep) {
  CheckpointWriter w(dir, step, world.rank(), world.size());
  model.save(w);
  w.write_rank_files();
  world.barrier();
  if (world.rank() == 0) {
    const SamplerState& s = sampler.state();
    w.commit({{"step", step},
              {"sampler", {{"seed", s.seed}, {"epoch", s.epoch}, {"cursor", s.cursor}}},
              {"model", spec.str()}},
             keep);
  }
  world.barrier();
}

int64_t load_checkpoint(const std::string& step_dir, models::ParallelModel& model,
                        BatchSampler& sampler, const models::ModelSpec& spec) {
  CheckpointReader rd(step_dir);
  const auto& meta = rd.user_meta();
  ORIGAMI_CHECK(meta.value("model", std::string()) == spec.str(), "checkpoint '", step_dir,
                "' was written for the model '", meta.value("model", std::string("?")),
                "', this config describes '", spec.str(),
                "': use another train.checkpoint_dir, or --no-resume");
  model.load(rd);
  SamplerState s;
  s.seed = meta.at("sampler").at("seed").get<uint64_t>();
  s.epoch = meta.at("sampler").at("epoch").get<int64_t>();
  s.cursor = meta.at("sampler").at("cursor").get<int64_t>();
  sampler.restore(s);
  return rd.step();
}

void draw_progress(int64_t step, int64_t total, double loss, double elapsed_s) {
  const int width = 30;
  const int filled = total > 0 ? int(width * step / total) : width;
  const double eta = step > 0 ? elapsed_s / double(step) * double(total - step) : 0;
  std::fprintf(stderr, "\r[%.*s%*s] %lld/%lld loss %.4f eta %.0fs ", filled,
               "##############################", width - filled, "", static_cast<long long>(step),
               static_cast<long long>(total), loss, eta);
  std::fflush(stderr);
}

}  // namespace

static models::ParallelOptions parallel_options(const config::ParallelConfig& p) {
  models::ParallelOptions po;
  po.layout.tp = p.tp();
  po.layout.pp = p.pp();
  po.layout.cp = p.cp();
  po.layout.ep = p.ep();
  po.layout.etp = p.etp();
  po.layout.dp = p.dp();
  po.layout.order = p.order();
  po.vpp = p.vpp();
  po.sequence_parallel = p.sequence_parallel();
  po.zero = p.optimizer() == "zero1";
  po.stage_layers.assign(p.stage_layers().begin(), p.stage_layers().end());
  po.bucket_elements = p.bucket_mb() * (int64_t(1) << 20) / 4;
  po.allgather_dispatcher = p.allgather_dispatcher();
  po.cp_ring = p.cp_attention() != "all_gather";
  return po;
}

std::vector<StepRecord> train(const Config& config, const TrainOptions& opt) {
  const auto& tc = config.train();

  // The world: every rank mpirun / srun / origami launch started, or this process alone.
  const Milliseconds timeout{int64_t(opt.collective_timeout_s * 1000)};
  std::unique_ptr<Communicator> world_comm =
      opt.multi_rank ? mpi_world_communicator(timeout) : self_communicator("world", timeout);
  Communicator& world = *world_comm;
  const bool root = world.rank() == 0;
  const bool quiet = opt.quiet || !root;

  // What the run holds, made in the try block below. Declared out here so that an error in a
  // step reaches on_fatal_error before the groups' destructors, which would wait for the other
  // ranks, run.
  models::ModelSpec spec;
  models::DecoderOptions dopt;
  models::ParallelOptions po;
  std::optional<RankGroups> layout;
  std::optional<ProcessGroups> groups;
  std::unique_ptr<Tokenizer> tokenizer;
  std::optional<TokenStream> stream;
  std::optional<BatchSampler> sampler;
  std::unique_ptr<models::ParallelModel> model;
  std::vector<StepRecord> records;
  // Until the first step each rank works on its own, and can fail alone (its pieces of a
  // checkpoint, its memory): run_agreed ends every rank together then, in step, each naming the
  // failure (StartupFailure). Any other error leaves the ranks out of step (a collective that
  // timed out, a fault in a step): on_fatal_error ends the whole job at once.
  try {
    // The model and the layout, checked on every rank before anything is allocated.
    run_agreed(world, "checking the model and the parallel layout", [&] {
      spec = opt.init_from.empty() ? models::spec_from_config(config.model())
                                   : models::spec_from_hf_config(opt.init_from);
      spec.validate();
      dopt.batch = tc.micro_batch_size();
      dopt.seq = tc.seq_len();
      dopt.compute = dtype_from_name(tc.dtype());
      dopt.device = device_from_string(tc.device());
      dopt.recompute = tc.recompute();
      po = parallel_options(config.parallel());
      models::check_parallel_layout(spec, dopt, po, world.size(), tc.grad_accum());
      layout.emplace(world.size(), po.layout);
    });
    ProcessGroupsOptions pgo;
    pgo.timeout = timeout;
    groups.emplace(ProcessGroups::create(world, *layout, pgo));
    const int dp_rank = groups->dp->rank(), dp_size = groups->dp->size();

    // Everything else before the first step: data, the model's memory, its weights (a Hugging
    // Face folder, a checkpoint or random), the step buffers. No collectives in here.
    int64_t step = 0;
    std::string resumed_from;
    double peak = 0;
    std::ofstream metrics;
    const int64_t M = tc.grad_accum();
    std::vector<Tensor> ids, targets;
    run_agreed(world, "loading the data, the model and its weights", [&] {
      tokenizer = load_tokenizer(config.data().tokenizer());
      ORIGAMI_CHECK(tokenizer->vocab_size() <= spec.vocab, "the tokenizer '",
                    config.data().tokenizer(), "' has ", tokenizer->vocab_size(),
                    " ids but the model's vocabulary is ", spec.vocab, ": raise model.vocab_size");
      ORIGAMI_CHECK(!config.data().path().empty(), "data.path is empty: give the training data");
      stream.emplace(
          TokenStream::open(config.data().path(), config.data().format(), tokenizer.get()));
      ORIGAMI_CHECK(int64_t(stream->max_token()) < spec.vocab, "data '", config.data().path(),
                    "' holds token id ", stream->max_token(), " outside the model's vocabulary of ",
                    spec.vocab);
      sampler.emplace(*stream, tc.seq_len(), tc.seed());

      model = std::make_unique<models::ParallelModel>(spec, dopt, po, *layout, *groups, M);
      if (!quiet) {
        std::cout << model->describe();
        std::printf("data: %lld tokens, %lld windows of %lld per epoch\n",
                    static_cast<long long>(stream->size()),
                    static_cast<long long>(sampler->windows_per_epoch()),
                    static_cast<long long>(tc.seq_len()));
      }
      if (!opt.init_from.empty()) {
        models::ParameterBuffer whole(models::ParameterLayout(spec), DType::f32);
        models::load_hf_weights(opt.init_from, whole);
        model->load_whole(whole);
      } else {
        model->init_random(tc.seed(), config.model().init_std());
      }
      if (opt.resume && !tc.checkpoint_dir().empty()) {
        if (auto latest = CheckpointReader::latest(tc.checkpoint_dir())) {
          step = load_checkpoint(*latest, *model, *sampler, spec);
          resumed_from = *latest;
        }
      }
      peak =
          (tc.peak_flops() > 0 ? tc.peak_flops() : measure_cpu_peak(dopt.compute)) * world.size();
      if (root && !tc.metrics_file().empty()) metrics.open(tc.metrics_file(), std::ios::app);
      for (int64_t m = 0; m < M; ++m) {
        ids.push_back(Tensor::empty({tc.micro_batch_size(), tc.seq_len()}, DType::i64));
        targets.push_back(Tensor::empty({tc.micro_batch_size(), tc.seq_len()}, DType::i64));
      }
    });

    if (!quiet && !resumed_from.empty())
      std::printf("resumed from %s at step %lld\n", resumed_from.c_str(),
                  static_cast<long long>(step));
    const double tokens_per_step =
        double(tc.micro_batch_size() * tc.seq_len() * tc.grad_accum() * dp_size);
    const double fpt = flops_per_token(spec, tc.seq_len());
    const bool bar = root && opt.progress && isatty(STDERR_FILENO);
    const auto run_start = std::chrono::steady_clock::now();
    int64_t run_steps = 0;
    while (step < tc.steps()) {
      const auto t0 = std::chrono::steady_clock::now();
      ++step;
      StepRecord r;
      r.step = step;
      const bool fault_here = opt.fault.kind != TrainOptions::Fault::kNone &&
                              opt.fault.rank == world.rank() && opt.fault.step == step;
      if (fault_here && opt.fault.kind == TrainOptions::Fault::kSleep) {
        std::fprintf(stderr, "origami train: rank %d: --fault: hanging at step %lld (test only)\n",
                     world.rank(), static_cast<long long>(step));
        for (;;) std::this_thread::sleep_for(std::chrono::hours(1));
      }
      // Every rank draws every microbatch (so all samplers stay in step), keeping its dp slice.
      for (int64_t m = 0; m < M; ++m)
        sampler->next(ids[size_t(m)], targets[size_t(m)], dp_rank, dp_size);
      const models::StepLoss loss = model->forward_backward(ids, targets);
      r.loss = loss.loss;
      r.ce = loss.ce;
      if (fault_here && opt.fault.kind == TrainOptions::Fault::kAbort) {
        std::fprintf(stderr, "origami train: rank %d: --fault: aborting in step %lld (test only)\n",
                     world.rank(), static_cast<long long>(step));
        std::abort();
      }
      if (fault_here && opt.fault.kind == TrainOptions::Fault::kThrow)
        ORIGAMI_FAIL("--fault: rank ", world.rank(), " fails in step ", step, " (test only)");
      // Gradients summed over microbatches: average, then clip the global norm.
      const double inv_accum = 1.0 / double(M);
      r.grad_norm = model->grad_norm(inv_accum);
      const float coef = ops::clip_coefficient(r.grad_norm, tc.clip_grad());
      if (coef != 1.0f || M != 1) model->scale_gradients(float(inv_accum * coef));
      r.lr = learning_rate(tc, step);
      ops::AdamWParams p;
      p.lr = float(r.lr);
      p.beta1 = float(tc.beta1());
      p.beta2 = float(tc.beta2());
      p.eps = float(tc.eps());
      p.weight_decay = float(tc.weight_decay());
      p.step = step;
      model->optimizer_step(p);
      for (int c = 0; c < model->num_chunks(); ++c) model->chunk(c).update_expert_bias();
      const double dt =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      r.tokens_per_s = tokens_per_step / dt;
      r.mfu = r.tokens_per_s * fpt / peak;
      records.push_back(r);
      ++run_steps;
      if (!quiet && (step % tc.log_every() == 0 || step == tc.steps())) {
        if (bar) std::fprintf(stderr, "\r\033[K");
        std::printf("step %6lld | loss %.4f | lr %.3e | grad norm %.3f | %.0f tok/s | MFU %.1f%%\n",
                    static_cast<long long>(step), r.loss, r.lr, r.grad_norm, r.tokens_per_s,
                    100.0 * r.mfu);
        std::fflush(stdout);
      }
      if (metrics.is_open()) {
        metrics
            << json{{"step", step}, {"loss", r.loss},           {"ce", r.ce},
                    {"lr", r.lr},   {"grad_norm", r.grad_norm}, {"tokens_per_s", r.tokens_per_s},
                    {"mfu", r.mfu}}
                   .dump()
            << "\n";
        metrics.flush();
      }
      if (bar)
        draw_progress(
            step, tc.steps(), r.loss,
            std::chrono::duration<double>(std::chrono::steady_clock::now() - run_start).count());
      // Preemption: one tiny all-reduce per step makes every rank see a stop any rank was asked
      // for, so all of them stop after this same step.
      int stop_signal = 0;
      if (opt.stop_requested) {
        Tensor flag = Tensor::zeros({1}, DType::i32);
        flag.data_as<int32_t>()[0] = opt.stop_requested();
        world.all_reduce(flag, ReduceOp::max);
        stop_signal = flag.data_as<int32_t>()[0];
      }
      const bool last = step == tc.steps() ||
                        (opt.stop_after >= 0 && run_steps >= opt.stop_after) || stop_signal > 0;
      if (!tc.checkpoint_dir().empty() &&
          (last || (tc.save_every() > 0 && step % tc.save_every() == 0)))
        save_checkpoint(tc.checkpoint_dir(), step, *model, world, *sampler, spec, int(tc.keep()));
      if (stop_signal > 0 && root) {
        if (bar) std::fprintf(stderr, "\r\033[K");
        if (tc.checkpoint_dir().empty())
          std::printf("stopped after step %lld on %s; no train.checkpoint_dir, nothing saved\n",
                      static_cast<long long>(step), signal_name(stop_signal).c_str());
        else
          std::printf(
              "stopped after step %lld on %s: checkpoint saved in %s; run the same command again "
              "to resume\n",
              static_cast<long long>(step), signal_name(stop_signal).c_str(),
              tc.checkpoint_dir().c_str());
        std::fflush(stdout);
      }
      if (last) break;
    }
    if (bar) std::fprintf(stderr, "\n");
    if (!opt.export_hf.empty()) {
      // Every parameter gathered (collective), written by rank 0.
      models::ParameterBuffer whole(models::ParameterLayout(spec), DType::f32);
      for (const std::string& name : model->names()) {
        Tensor full = model->gather(name, "params");
        Tensor dst = whole.get(name);
        dst.copy_from(full);
      }
      if (root) {
        models::export_hf(opt.export_hf, spec, whole);
        if (!quiet) std::printf("exported the model to %s\n", opt.export_hf.c_str());
      }
      world.barrier();
    }
  } catch (const StartupFailure&) {
    throw;  // every rank stops here, in step
  } catch (const std::exception& e) {
    if (opt.on_fatal_error) opt.on_fatal_error(e.what());
    throw;
  }
  return records;
}

}  // namespace origami
