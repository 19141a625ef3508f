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
}

}  // namespace origami::models
