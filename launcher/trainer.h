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
};

struct StepRecord {
  int64_t step = 0;
  double loss = 0, ce = 0, lr = 0, grad_norm = 0, tokens_per_s = 0, mfu = 0;
};

// Learning rate at 1-based step `step`: linear warmup from 0, then cosine to min_lr (or constant).
double learning_rate(const config::TrainConfig& t, int64_t step);

// Runs training as configured; returns the record of every step run in this call.
std::vector<StepRecord> train(const Config& config, const TrainOptions& options);

}  // namespace origami
