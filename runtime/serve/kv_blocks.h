// Paged KV cache bookkeeping (vLLM-style "paged attention"): which cache blocks hold which
// sequence's tokens. Pure bookkeeping, no tensors, no device.
//
// The KV tensors themselves live elsewhere: per layer, K and V of shape
// [num_blocks, block_size, kv_heads, head_dim], owned by the model. This class only hands out
// block ids and tells the caller where each token goes:
//
//   block table   each sequence has a list of block ids; token `pos` of the sequence lives in
//                 block table[pos / block_size] at row pos % block_size, i.e. at flat slot
//                 table[pos / block_size] * block_size + pos % block_size (see slot()).
//   free list     unused blocks sit on a stack: taking or returning a block is O(1).
//   refcounts     fork() lets a child share every block of its parent (beam search, parallel
//                 sampling, shared prompts): a block is free again only when no table refers to it.
//   copy-on-write full shared blocks are only ever read. A shared *last* block that is partly
//                 filled would be written by the next token, so append() first swaps in a fresh
//                 block and returns {old, new}; the caller copies those rows of the KV tensors
//                 (all layers, K and V) before running the step that writes the new tokens.
//
// Every mutating call checks first and throws origami::Error with the state unchanged when the
// pool is short; blocks_to_grow() / can_grow() / can_allocate() answer the same question without
// throwing, so a scheduler can decide what to admit or preempt before committing.
#pragma once

#include <cstdint>
#include <list>
#include <span>
#include <unordered_map>
#include <utility>
#include <vector>

namespace origami::serve {

// A block copy the caller must perform on the KV tensors before the step (copy-on-write).
struct BlockCopy {
  int32_t src = 0, dst = 0;
};

class BlockManager {
 public:
  // num_blocks in [1, 2^31 - 1], block_size in [1, 2^31 - 1]; throws origami::Error otherwise.
  BlockManager(int64_t num_blocks, int64_t block_size = 16);

  int64_t block_size() const { return block_size_; }
  int64_t num_blocks() const { return num_blocks_; }
  // Free blocks, counting cached blocks that no sequence uses (reused or evicted on demand).
  int64_t free_blocks() const { return int64_t(free_.size() + evictable_.size()); }
  int64_t used_blocks() const { return num_blocks_ - free_blocks(); }
  int64_t blocks_for(int64_t tokens) const;  // ceil(tokens / block_size), tokens >= 0

  bool contains(int64_t seq) const { return seqs_.count(seq) != 0; }
  int64_t length(int64_t seq) const;  // tokens held by seq

  // Blocks that growing `seq` by n tokens would take from the pool: new blocks, plus one when the
  // last block is shared (refcount > 1), partly filled and n > 0 (copy-on-write).
  int64_t blocks_to_grow(int64_t seq, int64_t n) const;
  // "Can these sequences all grow by these counts?" (sum of blocks_to_grow <= free_blocks()).
  // A sequence listed twice counts as one growth by the sum of its counts.
  bool can_grow(std::span<const std::pair<int64_t, int64_t>> seq_and_tokens) const;
  bool can_allocate(int64_t tokens) const;

  // New sequence with `tokens` slots; throws (state unchanged) if seq exists or the pool is short.
  void allocate(int64_t seq, int64_t tokens);
  // Grows seq by n slots. If the last block is shared and partly filled it is copied first: a
  // fresh block replaces it in seq's table and {old, new} is appended to *copies (which may be
  // null only when no copy is needed). Throws (state unchanged) when the pool is short.
  void append(int64_t seq, int64_t n, std::vector<BlockCopy>* copies);
  // child shares every block of parent (refcounts + 1) and has the same length; takes no blocks.
  void fork(int64_t parent, int64_t child);
  // Drops seq's references; blocks whose refcount reaches 0 return to the free list.
  void free(int64_t seq);

  // Valid until the next mutating call.
  std::span<const int32_t> block_table(int64_t seq) const;
  // block_table[pos / bs] * bs + pos % bs, for 0 <= pos < length(seq).
  int64_t slot(int64_t seq, int64_t pos) const;
  int refcount(int32_t block) const;

  // ---- prefix caching ------------------------------------------------------------------------
  // A full block can be published under a hash of its contents (the serving engine chains the
  // hash of the previous block with the block's tokens). When its last sequence frees it, it
  // stays cached on a least-recently-used list: it counts as free, and a later sequence whose
  // prefix has the same hashes takes it back instead of recomputing it; when fresh blocks run
  // out the least recently used cached block is evicted (its hash forgotten).
  // Leading hashes whose blocks are cached.
  int64_t cached_prefix(std::span<const uint64_t> hashes) const;
  // New sequence of `tokens` slots whose first cached_prefix(hashes) blocks are the cached ones
  // (reference counts + 1), the rest fresh. Throws (state unchanged) when the pool is short.
  void allocate_cached(int64_t seq, int64_t tokens, std::span<const uint64_t> hashes);
  // Publishes full block `index` of seq under `hash` (non-zero); ignored when the block or the
  // hash is already known.
  void publish(int64_t seq, int64_t index, uint64_t hash);
  int64_t cached_blocks() const { return int64_t(cached_.size()); }

  // Recomputes refcounts, the free list and table sizes from scratch; throws naming the first
  // inconsistency. O(num_blocks + total table size): for tests and debug checks.
  void check_invariants() const;

 private:
  struct Sequence {
    std::vector<int32_t> blocks;
    int64_t length = 0;
  };
  const Sequence& get(int64_t seq) const;
  Sequence& get(int64_t seq);
  bool last_block_needs_copy(const Sequence& s, int64_t n) const;
  int64_t blocks_to_grow(const Sequence& s, int64_t n) const;
  int32_t take_block();
  int32_t next_block() const;  // the block take_block() would return
  void release_block(int32_t block);

  int64_t num_blocks_;
  int64_t block_size_;
  std::vector<int32_t> free_;   // stack of free block ids
  std::vector<int> refs_;       // per block: number of block tables referring to it
  std::vector<uint64_t> hash_;  // per block: the hash it is published under (0: none)
  std::unordered_map<uint64_t, int32_t> cached_;  // hash -> block
  std::list<int32_t> evictable_;  // cached blocks with refcount 0, least recently freed first
  std::vector<std::list<int32_t>::iterator> lru_pos_;  // per block: its place in evictable_
  std::unordered_map<int64_t, Sequence> seqs_;
};

}  // namespace origami::serve
