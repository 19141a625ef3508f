#include "runtime/serve/kv_blocks.h"

#include <algorithm>
#include <limits>

#include "runtime/error.h"

namespace origami::serve {

namespace {
constexpr int64_t kMaxId = std::numeric_limits<int32_t>::max();
constexpr const char* kMoreBlocks = "free sequences or give more --kv-blocks";
}  // namespace

BlockManager::BlockManager(int64_t num_blocks, int64_t block_size)
    : num_blocks_(num_blocks), block_size_(block_size) {
  ORIGAMI_CHECK(num_blocks >= 1 && num_blocks <= kMaxId, "KV cache: num_blocks must be in [1, ",
                kMaxId, "], got ", num_blocks, "; give --kv-blocks a positive count");
  ORIGAMI_CHECK(block_size >= 1 && block_size <= kMaxId, "KV cache: block_size must be in [1, ",
                kMaxId, "], got ", block_size, " (16 is usual)");
  refs_.assign(size_t(num_blocks), 0);
  hash_.assign(size_t(num_blocks), 0);
  lru_pos_.resize(size_t(num_blocks));
  // Stack order: block 0 is taken first.
  free_.resize(size_t(num_blocks));
  for (int64_t i = 0; i < num_blocks; ++i) free_[size_t(i)] = int32_t(num_blocks - 1 - i);
}

int64_t BlockManager::blocks_for(int64_t tokens) const {
  ORIGAMI_CHECK(tokens >= 0, "KV cache: token count must be >= 0, got ", tokens);
  return tokens / block_size_ + (tokens % block_size_ != 0 ? 1 : 0);
}

const BlockManager::Sequence& BlockManager::get(int64_t seq) const {
  auto it = seqs_.find(seq);
  ORIGAMI_CHECK(it != seqs_.end(), "KV cache: unknown sequence ", seq, " (", seqs_.size(),
                " held); allocate() it first");
  return it->second;
}

BlockManager::Sequence& BlockManager::get(int64_t seq) {
  return const_cast<Sequence&>(std::as_const(*this).get(seq));
}

int64_t BlockManager::length(int64_t seq) const {
  return get(seq).length;
}

bool BlockManager::last_block_needs_copy(const Sequence& s, int64_t n) const {
  return n > 0 && s.length % block_size_ != 0 && refs_[size_t(s.blocks.back())] > 1;
}

int64_t BlockManager::blocks_to_grow(const Sequence& s, int64_t n) const {
  // Written without forming length + n, so any n >= 0 gives an exact answer.
  const int64_t room = int64_t(s.blocks.size()) * block_size_ - s.length;
  const int64_t fresh = n > room ? blocks_for(n - room) : 0;
  return fresh + (last_block_needs_copy(s, n) ? 1 : 0);
}

int64_t BlockManager::blocks_to_grow(int64_t seq, int64_t n) const {
  ORIGAMI_CHECK(n >= 0, "KV cache: cannot grow sequence ", seq, " by ", n,
                " tokens; counts must be >= 0");
  return blocks_to_grow(get(seq), n);
}

bool BlockManager::can_grow(std::span<const std::pair<int64_t, int64_t>> seq_and_tokens) const {
  // Growing by a then b takes the same blocks as growing by a + b (a copy happens at most once),
  // so repeated sequences are merged first.
  std::vector<std::pair<int64_t, int64_t>> merged(seq_and_tokens.begin(), seq_and_tokens.end());
  std::sort(merged.begin(), merged.end());
  int64_t need = 0;
  for (size_t i = 0; i < merged.size();) {
    const int64_t seq = merged[i].first;
    int64_t n = 0;
    for (; i < merged.size() && merged[i].first == seq; ++i) {
      ORIGAMI_CHECK(merged[i].second >= 0, "KV cache: cannot grow sequence ", seq, " by ",
                    merged[i].second, " tokens; counts must be >= 0");
      n = merged[i].second > std::numeric_limits<int64_t>::max() - n
              ? std::numeric_limits<int64_t>::max()
              : n + merged[i].second;
    }
    need += blocks_to_grow(get(seq), n);
    if (need > free_blocks()) return false;
  }
  return true;
}

bool BlockManager::can_allocate(int64_t tokens) const {
  return blocks_for(tokens) <= free_blocks();
}

int32_t BlockManager::next_block() const {
  return !free_.empty() ? free_.back() : evictable_.front();
}

int32_t BlockManager::take_block() {
  int32_t b;
  if (!free_.empty()) {
    b = free_.back();
    free_.pop_back();
  } else {  // evict the least recently used cached block: its contents are forgotten
    b = evictable_.front();
    evictable_.pop_front();
    cached_.erase(hash_[size_t(b)]);
    hash_[size_t(b)] = 0;
  }
  refs_[size_t(b)] = 1;
  return b;
}

void BlockManager::release_block(int32_t block) {
  if (--refs_[size_t(block)] > 0) return;
  if (hash_[size_t(block)] != 0)  // cached: reusable by a later prefix until evicted
    lru_pos_[size_t(block)] = evictable_.insert(evictable_.end(), block);
  else
    free_.push_back(block);
}

int64_t BlockManager::cached_prefix(std::span<const uint64_t> hashes) const {
  int64_t k = 0;
  while (k < int64_t(hashes.size()) && cached_.count(hashes[size_t(k)]) != 0) ++k;
  return k;
}

void BlockManager::allocate_cached(int64_t seq, int64_t tokens, std::span<const uint64_t> hashes) {
  ORIGAMI_CHECK(!contains(seq), "KV cache: sequence ", seq,
                " already exists; free() it first or choose another id");
  const int64_t k = cached_prefix(hashes);
  ORIGAMI_CHECK(k * block_size_ <= tokens, "KV cache: ", k, " cached blocks exceed the ", tokens,
                " tokens of sequence ", seq);
  int64_t reused_free = 0;  // cached blocks now on the evictable list: they stop being free
  for (int64_t i = 0; i < k; ++i)
    reused_free += refs_[size_t(cached_.at(hashes[size_t(i)]))] == 0 ? 1 : 0;
  const int64_t fresh = blocks_for(tokens) - k;
  ORIGAMI_CHECK(fresh + reused_free <= free_blocks(), "KV cache: ", fresh + reused_free,
                " blocks needed to allocate sequence ", seq, " with ", tokens, " tokens, ",
                free_blocks(), " free; ", kMoreBlocks);
  Sequence s;
  s.length = tokens;
  for (int64_t i = 0; i < k; ++i) {
    const int32_t b = cached_.at(hashes[size_t(i)]);
    if (refs_[size_t(b)]++ == 0) evictable_.erase(lru_pos_[size_t(b)]);
    s.blocks.push_back(b);
  }
  for (int64_t i = 0; i < fresh; ++i) s.blocks.push_back(take_block());
  seqs_.emplace(seq, std::move(s));
}

void BlockManager::publish(int64_t seq, int64_t index, uint64_t hash) {
  const Sequence& s = get(seq);
  ORIGAMI_CHECK(index >= 0 && (index + 1) * block_size_ <= s.length, "KV cache: block ", index,
                " of sequence ", seq, " is not full (", s.length, " tokens)");
  ORIGAMI_CHECK(hash != 0, "KV cache: block hash 0 is reserved");
  const int32_t b = s.blocks[size_t(index)];
  if (hash_[size_t(b)] != 0 || cached_.count(hash) != 0) return;  // known already
  hash_[size_t(b)] = hash;
  cached_[hash] = b;
}

void BlockManager::allocate(int64_t seq, int64_t tokens) {
  ORIGAMI_CHECK(!contains(seq), "KV cache: sequence ", seq,
                " already exists; free() it first or choose another id");
  const int64_t need = blocks_for(tokens);
  ORIGAMI_CHECK(need <= free_blocks(), "KV cache: ", need, " blocks needed to allocate sequence ",
                seq, " with ", tokens, " tokens, ", free_blocks(), " free; ", kMoreBlocks);
  Sequence s;
  s.length = tokens;
  s.blocks.reserve(size_t(need));
  for (int64_t i = 0; i < need; ++i) s.blocks.push_back(take_block());
  seqs_.emplace(seq, std::move(s));
}

void BlockManager::append(int64_t seq, int64_t n, std::vector<BlockCopy>* copies) {
  Sequence& s = get(seq);
  const int64_t need = blocks_to_grow(seq, n);
  ORIGAMI_CHECK(need <= free_blocks(), "KV cache: ", need, " blocks needed to grow sequence ", seq,
                " by ", n, " tokens, ", free_blocks(), " free; ", kMoreBlocks);
  const bool copy = last_block_needs_copy(s, n);
  ORIGAMI_CHECK(!copy || copies != nullptr, "KV cache: growing sequence ", seq,
                " copies its shared last block, but no copy list was given; pass one to append()");
  if (copy) {
    const int32_t old = s.blocks.back();
    copies->push_back({old, next_block()});  // first, so a failing push_back changes nothing
    s.blocks.back() = take_block();
    release_block(old);  // refcount was > 1: it stays in use by the other sequences
  }
  for (int64_t i = copy ? 1 : 0; i < need; ++i) s.blocks.push_back(take_block());
  s.length += n;
}

void BlockManager::fork(int64_t parent, int64_t child) {
  const Sequence& p = get(parent);
  ORIGAMI_CHECK(!contains(child), "KV cache: cannot fork sequence ", parent, " into ", child,
                ": sequence ", child, " already exists; free() it first or choose another id");
  for (int32_t b : p.blocks) ++refs_[size_t(b)];
  seqs_.emplace(child, p);  // references into an unordered_map survive insertion
}

void BlockManager::free(int64_t seq) {
  const Sequence& s = get(seq);
  // Returned in reverse, so the sequence's first block is the next one taken.
  for (auto it = s.blocks.rbegin(); it != s.blocks.rend(); ++it) release_block(*it);
  seqs_.erase(seq);
}

std::span<const int32_t> BlockManager::block_table(int64_t seq) const {
  return get(seq).blocks;
}

int64_t BlockManager::slot(int64_t seq, int64_t pos) const {
  const Sequence& s = get(seq);
  ORIGAMI_CHECK(pos >= 0 && pos < s.length, "KV cache: position ", pos, " is outside sequence ",
                seq, ", which holds ", s.length, " tokens (positions 0..", s.length - 1,
                "); append() first");
  return int64_t(s.blocks[size_t(pos / block_size_)]) * block_size_ + pos % block_size_;
}

int BlockManager::refcount(int32_t block) const {
  ORIGAMI_CHECK(block >= 0 && block < num_blocks_, "KV cache: block ", block,
                " is outside the pool of ", num_blocks_, " blocks (ids 0..", num_blocks_ - 1, ")");
  return refs_[size_t(block)];
}

void BlockManager::check_invariants() const {
  std::vector<int> refs(size_t(num_blocks_), 0);
  std::vector<size_t> seen_in(size_t(num_blocks_), 0);  // 1 + index of the last table seen in
  size_t table = 0;
  for (const auto& [id, s] : seqs_) {
    ++table;
    ORIGAMI_CHECK(s.length >= 0, "KV cache invariant: sequence ", id, " has length ", s.length);
    ORIGAMI_CHECK(int64_t(s.blocks.size()) == blocks_for(s.length), "KV cache invariant: sequence ",
                  id, " holds ", s.length, " tokens in ", s.blocks.size(), " blocks, expected ",
                  blocks_for(s.length));
    for (int32_t b : s.blocks) {
      ORIGAMI_CHECK(b >= 0 && b < num_blocks_, "KV cache invariant: sequence ", id,
                    " refers to block ", b, " outside 0..", num_blocks_ - 1);
      ORIGAMI_CHECK(seen_in[size_t(b)] != table, "KV cache invariant: sequence ", id,
                    " refers to block ", b, " twice");
      seen_in[size_t(b)] = table;
      ++refs[size_t(b)];
    }
  }
  for (int64_t b = 0; b < num_blocks_; ++b)
    ORIGAMI_CHECK(refs[size_t(b)] == refs_[size_t(b)], "KV cache invariant: block ", b,
                  " has refcount ", refs_[size_t(b)], " but ", refs[size_t(b)],
                  " block tables refer to it");
  std::vector<bool> on_free_list(size_t(num_blocks_), false);
  for (int32_t b : free_) {
    ORIGAMI_CHECK(b >= 0 && b < num_blocks_, "KV cache invariant: free list holds block ", b,
                  " outside 0..", num_blocks_ - 1);
    ORIGAMI_CHECK(!on_free_list[size_t(b)], "KV cache invariant: block ", b,
                  " is on the free list twice");
    ORIGAMI_CHECK(refs_[size_t(b)] == 0, "KV cache invariant: block ", b,
                  " is on the free list with refcount ", refs_[size_t(b)]);
    on_free_list[size_t(b)] = true;
  }
  for (int32_t b : evictable_) {
    ORIGAMI_CHECK(!on_free_list[size_t(b)] && refs_[size_t(b)] == 0 && hash_[size_t(b)] != 0,
                  "KV cache invariant: block ", b,
                  " on the evictable list must be cached, unreferenced and listed once");
    on_free_list[size_t(b)] = true;
  }
  for (int64_t b = 0; b < num_blocks_; ++b) {
    ORIGAMI_CHECK(refs_[size_t(b)] > 0 || on_free_list[size_t(b)], "KV cache invariant: block ", b,
                  " has refcount 0 but is not on the free list (leaked)");
    ORIGAMI_CHECK(hash_[size_t(b)] == 0 || cached_.at(hash_[size_t(b)]) == b,
                  "KV cache invariant: block ", b, "'s hash does not map back to it");
  }
  ORIGAMI_CHECK(int64_t(cached_.size()) <= num_blocks_, "KV cache invariant: too many hashes");
}

}  // namespace origami::serve
