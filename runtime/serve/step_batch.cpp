#include "runtime/serve/step_batch.h"

#include <algorithm>

#include "runtime/error.h"
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
                 std::span<const int64_t> tokens, int64_t first_pos, int64_t logits_from) {
  const int64_t n = int64_t(tokens.size());
  for (int64_t i = 0; i < n; ++i) {
    if (first_pos + i >= logits_from || i == n - 1) b.logit_rows.push_back(int64_t(b.ids.size()));
    b.ids.push_back(tokens[size_t(i)]);
    b.positions.push_back(first_pos + i);
    b.slots.push_back(blocks.slot(seq, first_pos + i));
  }
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

std::vector<int64_t> pack_step(const StepBatch& b) {
  const int64_t T = b.tokens(), N = b.sequences(), R = int64_t(b.logit_rows.size());
  const int64_t C = int64_t(b.copies.size());
  std::vector<int64_t> m = {T, N, b.max_blocks, R, C, 0};
  m.insert(m.end(), b.ids.begin(), b.ids.end());
  m.insert(m.end(), b.positions.begin(), b.positions.end());
  m.insert(m.end(), b.slots.begin(), b.slots.end());
  m.insert(m.end(), b.query_start.begin(), b.query_start.end());
  m.insert(m.end(), b.context_len.begin(), b.context_len.end());
  m.insert(m.end(), b.block_table.begin(), b.block_table.end());
  m.insert(m.end(), b.logit_rows.begin(), b.logit_rows.end());
  m.insert(m.end(), b.copies.begin(), b.copies.end());
  m[5] = int64_t(m.size());
  return m;
}

void unpack_step(std::span<const int64_t> m, StepBatch& b) {
  ORIGAMI_CHECK(m.size() >= size_t(kStepHeader) && m[5] == int64_t(m.size()),
                "step message: malformed header");
  const int64_t T = m[0], N = m[1], MB = m[2], R = m[3], C = m[4];
  ORIGAMI_CHECK(T >= 0 && N >= 0 && MB >= 0 && R >= 0 && C >= 0 &&
                    kStepHeader + 3 * T + (N + 1) + N + N * MB + R + C == m[5],
                "step message: sizes do not add up");
  const int64_t* p = m.data() + kStepHeader;
  auto take = [&p](auto& v, int64_t n) {
    v.assign(p, p + n);
    p += n;
  };
  take(b.ids, T);
  take(b.positions, T);
  take(b.slots, T);
  take(b.query_start, N + 1);
  take(b.context_len, N);
  take(b.block_table, N * MB);
  take(b.logit_rows, R);
  take(b.copies, C);
  b.max_blocks = MB;
}

}  // namespace origami::serve
