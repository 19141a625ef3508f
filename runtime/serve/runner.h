// The serving engine's only view of the model: its limits, and a step over a scheduled batch.
// models/ implements it (models::DecoderRunner over a Decoder in inference mode); the engine
// never includes a model header.
#pragma once

#include <cstdint>

#include "runtime/serve/step_batch.h"
#include "runtime/tensor.h"

namespace origami::serve {

struct RunnerLimits {
  int64_t vocab = 0;            // logits per row
  int64_t max_context = 0;      // tokens one sequence may hold (prompt and generated)
  int64_t kv_blocks = 0;        // blocks in the KV cache
  int64_t kv_block_size = 16;   // tokens per block
  int64_t max_step_tokens = 0;  // tokens one step may run
  int64_t max_sequences = 0;    // sequences one step may run
  // Rows of logits one step may return (>= max_sequences; 0 = max_sequences). The rows beyond
  // one per sequence carry prompt tokens' logits (RequestParams::prompt_logprobs).
  int64_t max_logit_rows = 0;
};

class Runner {
 public:
  virtual ~Runner() = default;
  virtual RunnerLimits limits() const = 0;
  // Copies the batch's copy-on-write blocks, runs the step, and returns the logits of
  // batch.logit_rows: [R, vocab] f32 on the host, valid until the next step.
  virtual Tensor step(const StepBatch& batch) = 0;
  // Called now and then while there is nothing to run (a runner on many ranks tells the others
  // the server is alive, so that their wait for the next step does not time out).
  virtual void idle() {}
};

}  // namespace origami::serve
