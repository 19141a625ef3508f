// The model side of the serving engine (runtime/serve/runner.h) on one rank: a Decoder built for
// inference runs each scheduled step; its options give the engine its limits.
#pragma once

#include "models/decoder.h"
#include "models/generator.h"
#include "parallel/communicator.h"
#include "runtime/serve/runner.h"

namespace origami::models {

class DecoderRunner : public serve::Runner {
 public:
  // `decoder` must be built with DecoderOptions::inference and hold the whole model.
  explicit DecoderRunner(Decoder& decoder);
  serve::RunnerLimits limits() const override { return limits_; }
  Tensor step(const serve::StepBatch& batch) override { return decoder_.infer(batch); }

 private:
  Decoder& decoder_;
  serve::RunnerLimits limits_;
};

// On many ranks: rank 0's engine calls step(), which sends the step to every rank (one message
// over the world) and runs this rank's part; every other rank calls follow(), which runs the
// steps rank 0 sends until rank 0 calls stop(). The Generator holds this rank's part of the
// model (any layout it supports); the logits reach rank 0 from the last pipeline stage.
class ParallelRunner : public serve::Runner {
 public:
  ParallelRunner(Generator& gen, Communicator& world);
  serve::RunnerLimits limits() const override { return limits_; }
  Tensor step(const serve::StepBatch& batch) override;  // rank 0
  void idle() override;  // rank 0: an empty message, so the followers' wait does not time out
  void follow();         // the other ranks
  void stop();           // rank 0: the followers return

 private:
  Generator& gen_;
  Communicator& world_;
  serve::RunnerLimits limits_;
  serve::StepBatch batch_;
  Tensor header_;  // [kStepHeader] i64
};

}  // namespace origami::models
