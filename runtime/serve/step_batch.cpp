#include "runtime/serve/step_batch.h"

#include <algorithm>

#include "runtime/serve/kv_blocks.h"

namespace origami::serve {

void begin_step(StepBatch& b) {
  b.ids.clear();
  b.positions.clear();
  b.slots.clear();
  b.query_start.assign(1, 0);
  b.context_len.clear();
  b.block_table.clear();
  b.max_blocks = 0;
  b.logit_rows.clear();
  b.copies.clear();
}

void add_to_step(StepBatch& b, const BlockManager& blocks, int64_t seq,
                 std::span<const int64_t> tokens, int64_t first_pos, bool all_logits) {
  const int64_t n = int64_t(tokens.size());
  for (int64_t i = 0; i < n; ++i) {
    if (all_logits) b.logit_rows.push_back(int64_t(b.ids.size()));
    b.ids.push_back(tokens[size_t(i)]);
    b.positions.push_back(first_pos + i);
    b.slots.push_back(blocks.slot(seq, first_pos + i));
  }
  if (!all_logits) b.logit_rows.push_back(int64_t(b.ids.size()) - 1);
  b.query_start.push_back(int64_t(b.ids.size()));
  b.context_len.push_back(first_pos + n);
}

void end_step(StepBatch& b, const BlockManager& blocks, std::span<const int64_t> seqs,
              std::span<const BlockCopy> copies) {
  b.max_blocks = 1;
  for (int64_t s : seqs)
    b.max_blocks = std::max<int64_t>(b.max_blocks, int64_t(blocks.block_table(s).size()));
  b.block_table.assign(seqs.size() * size_t(b.max_blocks), 0);
  for (size_t j = 0; j < seqs.size(); ++j) {
    const std::span<const int32_t> t = blocks.block_table(seqs[j]);
    std::copy(t.begin(), t.end(), b.block_table.begin() + int64_t(j) * b.max_blocks);
  }
  for (const BlockCopy& c : copies) {
    b.copies.push_back(c.src);
    b.copies.push_back(c.dst);
  }
}

}  // namespace origami::serve
