// The model side of the serving engine (runtime/serve/runner.h) on one rank: a Decoder built for
// inference runs each scheduled step; its options give the engine its limits.
#pragma once

#include "models/decoder.h"
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

}  // namespace origami::models
