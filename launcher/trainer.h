// The training loop behind `origami train`, on one rank or many (tensor, pipeline and data
// parallel, models/parallel_model.h): data, model, AdamW with warmup + cosine schedule, gradient
// accumulation (the pipeline's microbatches) and clipping, logging on rank 0 (a line per step, a
// progress bar on a terminal, JSON lines), and crash-safe checkpoints that resume bit for bit and
// load under any other layout of the same model.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "runtime/config.h"

namespace origami {

struct TrainOptions {
  bool resume = true;       // continue from <checkpoint_dir>/latest when it exists
  std::string init_from;    // a Hugging Face model folder to start from (instead of random)
  std::string export_hf;    // write the trained model here in Hugging Face layout
  bool progress = false;    // draw a progress bar (on a terminal)
  bool quiet = false;       // no per-step lines (tests)
  int64_t stop_after = -1;  // stop (with a checkpoint) after this many steps of this run
  // Several ranks (MPI must be initialised: started by mpirun, srun or origami launch); else
  // this process alone, without MPI.
  bool multi_rank = false;
  double collective_timeout_s = 300;  // every collective's deadline
  // Preemption: polled at every step boundary; returns a signal number (> 0) once this rank was
  // asked to stop (SIGTERM, SIGUSR1, ...), else 0. The ranks agree on it with an all-reduce max
  // over the world, so one signalled rank stops them all at the same step; then they save a
  // checkpoint (when train.checkpoint_dir is set) and train() returns normally.
  std::function<int()> stop_requested;
  // Called with the message when an error leaves the ranks out of step (a collective that timed
  // out, a fault in a step, a rank that never reached the start-up agreement), before anything
  // that would wait for the other ranks; origami train prints it and ends the job (MPI_Abort).
  // Unset: the error propagates. Failures before the first step that the ranks agreed on
  // (StartupFailure) do not call it.
  std::function<void(const std::string&)> on_fatal_error;
  // Test-only fault injection (origami train --fault RANK:STEP:KIND): rank `rank` misbehaves at
  // 1-based step `step`. sleep: hangs before the step's first collective (the others must time
  // out); abort: dies of SIGABRT between forward-backward and the gradient norm; throw: throws
  // origami::Error at that point.
  struct Fault {
    enum Kind { kNone, kSleep, kAbort, kThrow } kind = kNone;
    int rank = -1;
    int64_t step = 0;
  };
  Fault fault;
};

// Parses "RANK:STEP:KIND" (KIND sleep, abort or throw) into a Fault; throws origami::Error.
TrainOptions::Fault parse_fault(const std::string& text);

struct StepRecord {
  int64_t step = 0;
  double loss = 0, ce = 0, lr = 0, grad_norm = 0, tokens_per_s = 0, mfu = 0;
};

// Learning rate at 1-based step `step`: linear warmup from 0, then cosine to min_lr (or constant).
double learning_rate(const config::TrainConfig& t, int64_t step);

// Runs training as configured; returns the record of every step run in this call. What each rank
// does alone before the first step (checks, data, the model's memory, its weights) runs under
// run_agreed (parallel/startup_agreement.h): when it fails on any rank, every rank throws
// StartupFailure -- its own error on a rank that failed, the failed ranks on the others.
std::vector<StepRecord> train(const Config& config, const TrainOptions& options);

}  // namespace origami
