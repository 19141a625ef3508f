// Training data: a token stream from binary shards (uint16 / uint32 little-endian, memory-mapped)
// or from text files run through a tokenizer, cut into windows of seq_len + 1 tokens and visited
// in an order shuffled deterministically from a seed, epoch after epoch. The position is a small
// state that checkpoints save, so a resumed run sees exactly the batches it would have seen.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "runtime/tensor.h"
#include "runtime/tokenizer.h"

namespace origami {

class TokenStream {
 public:
  // `path`: a file or a folder of files (sorted by name, concatenated). `format`: "u16", "u32" or
  // "text" ("" picks by extension: .bin/.u16 -> u16, .u32 -> u32, anything else -> text). In a
  // folder only regular files (not links) of the format are read: text files have no extension
  // or .txt, u16 shards .bin or .u16, u32 shards .u32.
  // Text files are tokenized with `tokenizer` (EOS appended after each file when it has one).
  static TokenStream open(const std::string& path, const std::string& format,
                          const Tokenizer* tokenizer);
  // A stream over tokens held in memory (tests, demos).
  static TokenStream from_tokens(std::vector<uint32_t> tokens);

  int64_t size() const { return int64_t(tokens_->size()); }
  uint32_t operator[](int64_t i) const { return (*tokens_)[size_t(i)]; }
  uint32_t max_token() const { return max_token_; }

 private:
  std::shared_ptr<const std::vector<uint32_t>> tokens_;
  uint32_t max_token_ = 0;
};

// Where a sampler is: saved in checkpoints.
struct SamplerState {
  uint64_t seed = 0;
  int64_t epoch = 0;
  int64_t cursor = 0;  // windows of this epoch already handed out (over all data-parallel ranks)
};

class BatchSampler {
 public:
  // Windows of seq_len + 1 tokens starting every seq_len tokens (the last target of one window
  // is the first input of the next). At least one window must fit.
  BatchSampler(const TokenStream& stream, int64_t seq_len, uint64_t seed);

  int64_t windows_per_epoch() const { return num_windows_; }
  // Fills tokens and targets [micro_batch, seq_len] (i32 or i64, CPU) with this data-parallel
  // rank's part of the next global batch of micro_batch * dp_size windows, then advances.
  void next(Tensor& tokens, Tensor& targets, int dp_rank = 0, int dp_size = 1);

  const SamplerState& state() const { return state_; }
  void restore(const SamplerState& s);

 private:
  void shuffle_epoch();
  const TokenStream& stream_;
  int64_t seq_len_;
  int64_t num_windows_;
  SamplerState state_;
  std::vector<int64_t> order_;  // window order of the current epoch
};

// SplitMix64: a tiny, portable generator (the same sequence on every platform and library),
// used wherever a run must be reproducible bit for bit.
struct SplitMix64 {
  uint64_t state;
  explicit SplitMix64(uint64_t seed) : state(seed) {}
  uint64_t next() {
    uint64_t z = (state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
  double uniform() { return double(next() >> 11) * (1.0 / 9007199254740992.0); }  // [0, 1)
};

}  // namespace origami
