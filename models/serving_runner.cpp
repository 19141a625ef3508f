#include "models/serving_runner.h"

#include <algorithm>

#include "runtime/error.h"

namespace origami::models {

DecoderRunner::DecoderRunner(Decoder& decoder) : decoder_(decoder) {
  const DecoderOptions& o = decoder.options();
  ORIGAMI_CHECK(o.inference && decoder.is_first_chunk() && decoder.is_last_chunk(),
                "serving runner: the decoder must be built for inference and hold every layer");
  limits_.vocab = decoder.spec().vocab;
  limits_.max_context = o.infer.max_context;
  limits_.kv_blocks = o.infer.kv_blocks;
  limits_.kv_block_size = o.infer.kv_block_size;
  limits_.max_step_tokens = o.seq;
  limits_.max_sequences =
      std::min(o.infer.max_sequences,
               o.infer.max_logit_rows > 0 ? o.infer.max_logit_rows : o.infer.max_sequences);
  limits_.max_logit_rows = std::max(limits_.max_sequences, o.infer.max_logit_rows);
}

ParallelRunner::ParallelRunner(Generator& gen, Communicator& world)
    : gen_(gen), world_(world), header_(Tensor::zeros({serve::kStepHeader}, DType::i64)) {
  const GeneratorOptions& o = gen.options();
  limits_.vocab = gen.spec().vocab;
  limits_.max_context = o.max_seq;
  limits_.kv_blocks = o.kv_blocks;
  limits_.kv_block_size = o.kv_block_size;
  limits_.max_step_tokens = o.max_step_tokens;
  limits_.max_sequences = o.max_batch;
  limits_.max_logit_rows = o.max_logit_rows;
}

Tensor ParallelRunner::step(const serve::StepBatch& batch) {
  ORIGAMI_CHECK(world_.rank() == 0, "serving runner: only rank 0 schedules steps");
  std::vector<int64_t> m = serve::pack_step(batch);
  std::copy(m.begin(), m.begin() + serve::kStepHeader, header_.data_as<int64_t>());
  world_.broadcast(header_, 0);
  Tensor body = Tensor::from_vector_i64(m, {int64_t(m.size())});
  world_.broadcast(body, 0);
  return gen_.run(batch);
}

void ParallelRunner::follow() {
  ORIGAMI_CHECK(world_.rank() != 0, "serving runner: rank 0 schedules, the others follow");
  for (;;) {
    world_.broadcast(header_, 0);
    const int64_t total = header_.data_as<int64_t>()[5];
    if (total == 0) return;   // stop()
    if (total < 0) continue;  // idle()
    Tensor body = Tensor::zeros({total}, DType::i64);
    world_.broadcast(body, 0);
    serve::unpack_step(std::span<const int64_t>(body.data_as<int64_t>(), size_t(total)), batch_);
    gen_.run(batch_);
  }
}

void ParallelRunner::idle() {
  if (world_.size() == 1) return;
  header_.zero_();
  header_.data_as<int64_t>()[5] = -1;
  world_.broadcast(header_, 0);
}

void ParallelRunner::stop() {
  header_.zero_();
  world_.broadcast(header_, 0);
}

}  // namespace origami::models
