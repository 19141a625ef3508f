// What one inference step runs: the serving engine's scheduler (or the generator) describes it,
// every rank's model runs it (models::Decoder::infer). Plain host vectors, so that rank 0 can
// send it to the other ranks as one message.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

namespace origami::serve {

// One inference step: N sequences, each with new tokens (a prefill chunk or one decode token)
// appended after the tokens already in its KV cache; the tokens of all sequences packed in order.
// Positions and slots come from the caller's block tables: slot = block * block_size + row.
struct StepBatch {
  std::vector<int64_t> ids;          // [T] token ids (read by the first pipeline chunk)
  std::vector<int64_t> positions;    // [T] position of each token in its sequence
  std::vector<int64_t> slots;        // [T] KV-cache slot each token's keys and values go to
  std::vector<int64_t> query_start;  // [N+1] sequence i: tokens [query_start[i], [i+1])
  std::vector<int64_t> context_len;  // [N] tokens in sequence i's cache after this step
  std::vector<int32_t> block_table;  // [N, max_blocks] row-major
  int64_t max_blocks = 0;            // columns of block_table
  std::vector<int64_t> logit_rows;   // tokens whose logits are returned, in this order
  std::vector<int32_t> copies;       // [n,2] (src, dst) blocks to copy first (copy-on-write)
  int64_t tokens() const { return int64_t(ids.size()); }
  int64_t sequences() const { return int64_t(context_len.size()); }
};

// The step as one flat message (rank 0 sends each step to the other ranks) and back. A message
// with tokens() == 0 is the "no more steps" signal (see stop_message()).
std::vector<int64_t> pack_step(const StepBatch& b);
void unpack_step(std::span<const int64_t> message, StepBatch& b);
constexpr int64_t kStepHeader = 6;  // T, N, max_blocks, R, copies, total length

class BlockManager;
struct BlockCopy;

// Building a step from the block manager's tables, one sequence at a time; the blocks must
// already hold the chunk (BlockManager::allocate / append first).
void begin_step(StepBatch& b);
// Sequence `seq`'s new tokens at positions [first_pos, first_pos + tokens.size()). The logits of
// its last token are returned, and those of every token at a position >= logits_from (0: all).
constexpr int64_t kLastLogitsOnly = INT64_MAX;
void add_to_step(StepBatch& b, const BlockManager& blocks, int64_t seq,
                 std::span<const int64_t> tokens, int64_t first_pos,
                 int64_t logits_from = kLastLogitsOnly);
// The block tables of the step's sequences (in the order added) and the copies to make first.
void end_step(StepBatch& b, const BlockManager& blocks, std::span<const int64_t> seqs,
              std::span<const BlockCopy> copies);

}  // namespace origami::serve
