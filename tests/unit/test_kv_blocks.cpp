// Paged KV-cache bookkeeping (BlockManager): random allocate / append / fork / free against a naive
// model written here, plus hand-written copy-on-write cases and the error messages.
//
// The model keeps, per sequence, the list of token "contents" it must read back, and its own
// block list in abstract ids (a fresh id per block taken, with its own count of the sequences
// using each), bound one-to-one to the manager's block ids as they appear. A simulated pool (one
// value per slot, the stand-in for the KV tensors) receives the returned copies and the new tokens
// at slot(seq, pos); reading every sequence back through its block table then proves that
// copy-on-write kept sequences apart.
#include <algorithm>
#include <functional>
#include <map>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include <gtest/gtest.h>

#include "runtime/data.h"
#include "runtime/serve/kv_blocks.h"
#include "tests/support/errors.h"

namespace origami::serve {
namespace {

using test::error_of;
using test::mentions;

int64_t ceil_div(int64_t a, int64_t b) {
  return (a + b - 1) / b;
}

// Everything observable about a BlockManager, to prove a refused call changed nothing.
struct Snapshot {
  std::map<int64_t, std::pair<int64_t, std::vector<int32_t>>> seqs;  // length, table
  std::vector<int> refs;
  int64_t free_blocks = 0;
  bool operator==(const Snapshot&) const = default;
};

Snapshot snapshot(const BlockManager& m, const std::vector<int64_t>& ids) {
  Snapshot s;
  for (int64_t id : ids) {
    auto t = m.block_table(id);
    s.seqs[id] = {m.length(id), std::vector<int32_t>(t.begin(), t.end())};
  }
  for (int32_t b = 0; b < m.num_blocks(); ++b) s.refs.push_back(m.refcount(b));
  s.free_blocks = m.free_blocks();
  return s;
}

// The naive model and the random driver.
class Reference {
 public:
  Reference(int64_t num_blocks, int64_t block_size, uint64_t seed)
      : m_(num_blocks, block_size),
        bs_(block_size),
        pool_(size_t(num_blocks * block_size), -1),
        rng_(seed) {}

  void run(int ops) {
    for (int i = 0; i < ops; ++i) {
      step();
      ASSERT_EQ(m_.free_blocks(), m_.num_blocks() - int64_t(abs_refs_.size()));
      if (i % 16 == 0) verify_all();
      if (::testing::Test::HasFatalFailure()) return;
    }
    verify_all();
  }

  void free_everything() {
    while (!live_.empty()) do_free(live_.back());
    m_.check_invariants();
    EXPECT_EQ(m_.free_blocks(), m_.num_blocks());
    EXPECT_EQ(m_.used_blocks(), 0);
    for (int32_t b = 0; b < m_.num_blocks(); ++b) EXPECT_EQ(m_.refcount(b), 0) << "block " << b;
    EXPECT_TRUE(real_of_.empty());
  }

  int refused = 0, copies = 0, forks = 0, batches = 0;

 private:
  struct Seq {
    std::vector<int64_t> contents;  // what each position must read back
    std::vector<int64_t> blocks;    // abstract block ids
  };

  int64_t pick(int64_t n) { return int64_t(rng_.next() % uint64_t(n)); }
  int64_t random_live() { return live_[size_t(pick(int64_t(live_.size())))]; }
  // Token counts: often 0 or 1 (decode), sometimes several blocks, now and then more than fits.
  int64_t random_tokens() {
    switch (pick(8)) {
      case 0:
        return 0;
      case 1:
      case 2:
        return 1;
      case 3:
        return pick(bs_ + 1);
      case 7:
        return pick(m_.num_blocks() * bs_ / 2);
      default:
        return pick(3 * bs_ + 1);
    }
  }

  int64_t count_refs(int64_t abs) const { return abs_refs_.count(abs) ? abs_refs_.at(abs) : 0; }
  bool last_shared_and_partial(const Seq& s) const {
    return s.contents.size() % size_t(bs_) != 0 && count_refs(s.blocks.back()) > 1;
  }
  // The model's own count of blocks that growing s by n takes.
  int64_t predict_grow(const Seq& s, int64_t n) const {
    const int64_t len = int64_t(s.contents.size());
    return ceil_div(len + n, bs_) - ceil_div(len, bs_) +
           (n > 0 && last_shared_and_partial(s) ? 1 : 0);
  }
  int64_t model_free() const { return m_.num_blocks() - int64_t(abs_refs_.size()); }

  // A fresh abstract block at index i of seq's table, bound to the real block the manager put
  // there.
  int64_t new_block(int64_t seq, size_t i) {
    const int64_t abs = next_abs_++;
    const int32_t real = m_.block_table(seq)[i];
    EXPECT_EQ(abs_of_.count(real), 0u) << "block " << real << " handed out while still in use";
    abs_of_[real] = abs;
    real_of_[abs] = real;
    abs_refs_[abs] = 1;
    return abs;
  }
  void drop_ref(int64_t abs) {
    if (--abs_refs_[abs] > 0) return;
    abs_refs_.erase(abs);
    abs_of_.erase(real_of_.at(abs));
    real_of_.erase(abs);
  }
  void write_tokens(int64_t seq, int64_t from) {
    Seq& s = seqs_[seq];
    for (int64_t pos = from; pos < int64_t(s.contents.size()); ++pos) {
      s.contents[size_t(pos)] = next_content_++;
      pool_[size_t(m_.slot(seq, pos))] = s.contents[size_t(pos)];
    }
  }
  void apply_copies(const std::vector<BlockCopy>& list) {
    for (const BlockCopy& c : list)
      std::copy_n(pool_.begin() + c.src * bs_, bs_, pool_.begin() + c.dst * bs_);
  }

  // Expects fn to be refused with the manager unchanged.
  void expect_refused(const std::function<void()>& fn) {
    const Snapshot before = snapshot(m_, live_);
    EXPECT_TRUE(mentions(error_of(fn), {"blocks needed", "--kv-blocks"}));
    EXPECT_TRUE(before == snapshot(m_, live_)) << "a refused call changed the state";
    ++refused;
  }

  void step() {
    const int64_t r = pick(100);
    if (live_.empty() || (r < 22 && live_.size() < 12)) return do_allocate();
    if (r < 30 && live_.size() < 12) return do_fork();
    if (r < 42 || live_.size() >= 12) return do_free(random_live());
    if (r < 52) return do_batch();
    do_append();
  }

  void do_allocate() {
    int64_t id = int64_t(rng_.next());  // caller-chosen, any int64
    while (m_.contains(id)) id = int64_t(rng_.next());
    const int64_t tokens = random_tokens();
    const int64_t need = ceil_div(tokens, bs_);
    ASSERT_EQ(m_.blocks_for(tokens), need);
    ASSERT_EQ(m_.can_allocate(tokens), need <= model_free());
    if (need > model_free()) return expect_refused([&] { m_.allocate(id, tokens); });
    m_.allocate(id, tokens);
    live_.push_back(id);
    Seq& s = seqs_[id];
    s.contents.assign(size_t(tokens), 0);
    for (size_t i = 0; i < size_t(need); ++i) s.blocks.push_back(new_block(id, i));
    write_tokens(id, 0);
  }

  void do_fork() {
    const int64_t parent = random_live();
    int64_t child = int64_t(rng_.next());
    while (m_.contains(child)) child = int64_t(rng_.next());
    const int64_t free_before = m_.free_blocks();
    m_.fork(parent, child);
    EXPECT_EQ(m_.free_blocks(), free_before);
    live_.push_back(child);
    seqs_[child] = seqs_[parent];
    for (int64_t abs : seqs_[child].blocks) ++abs_refs_[abs];
    ++forks;
  }

  void do_free(int64_t id) {
    m_.free(id);
    EXPECT_FALSE(m_.contains(id));
    for (int64_t abs : seqs_[id].blocks) drop_ref(abs);
    seqs_.erase(id);
    live_.erase(std::find(live_.begin(), live_.end(), id));
  }

  // Grows seq by n in the model and checks the table against it; returns the expected copy, if any.
  std::vector<BlockCopy> model_grow(int64_t seq, int64_t n) {
    Seq& s = seqs_[seq];
    std::vector<BlockCopy> copy;
    const size_t old_blocks = s.blocks.size();
    if (n > 0 && last_shared_and_partial(s)) {
      const int64_t old = s.blocks.back();
      drop_ref(old);
      s.blocks.back() = new_block(seq, old_blocks - 1);
      copy.push_back({real_of_.at(old), real_of_.at(s.blocks.back())});
      ++copies;
    }
    s.contents.resize(s.contents.size() + size_t(n), 0);
    const size_t now_blocks = size_t(ceil_div(int64_t(s.contents.size()), bs_));
    EXPECT_EQ(m_.block_table(seq).size(), now_blocks);
    for (size_t i = old_blocks; i < now_blocks; ++i) s.blocks.push_back(new_block(seq, i));
    return copy;
  }

  void do_append() {
    const int64_t seq = random_live();
    const int64_t n = random_tokens();
    const int64_t need = predict_grow(seqs_[seq], n);
    ASSERT_EQ(m_.blocks_to_grow(seq, n), need) << "seq " << seq << " n " << n;
    const std::pair<int64_t, int64_t> one[] = {{seq, n}};
    ASSERT_EQ(m_.can_grow(one), need <= model_free());
    // The list is appended to: start it with a copy left from an earlier call.
    std::vector<BlockCopy> got = {{-7, -8}};
    if (need > model_free()) return expect_refused([&] { m_.append(seq, n, &got); });
    const int64_t from = m_.length(seq);
    m_.append(seq, n, &got);
    ASSERT_EQ(m_.length(seq), from + n);
    std::vector<BlockCopy> want = {{-7, -8}};
    for (const BlockCopy& c : model_grow(seq, n)) want.push_back(c);
    ASSERT_EQ(got.size(), want.size());
    for (size_t i = 0; i < got.size(); ++i) {
      EXPECT_EQ(got[i].src, want[i].src);
      EXPECT_EQ(got[i].dst, want[i].dst);
    }
    apply_copies(std::vector<BlockCopy>(got.begin() + 1, got.end()));
    write_tokens(seq, from);
  }

  // One engine step: several sequences grow together, asked first with can_grow; the copies of
  // the whole step are applied before any new token is written.
  void do_batch() {
    std::vector<std::pair<int64_t, int64_t>> plan;
    const int64_t k = 1 + pick(std::min<int64_t>(4, int64_t(live_.size())));
    for (int64_t i = 0; i < k; ++i) {
      const int64_t seq = random_live();
      if (std::none_of(plan.begin(), plan.end(), [&](auto& p) { return p.first == seq; }))
        plan.push_back({seq, pick(3) == 0 ? random_tokens() : 1});
    }
    int64_t need = 0;
    for (auto [seq, n] : plan) need += predict_grow(seqs_[seq], n);
    // Listing a sequence twice counts as one growth by the sum.
    auto doubled = plan;
    doubled.push_back({plan[0].first, 0});
    ASSERT_EQ(m_.can_grow(plan), need <= model_free());
    ASSERT_EQ(m_.can_grow(doubled), need <= model_free());
    if (need > model_free()) {
      ++refused;
      return;  // the scheduler would not run this step
    }
    std::vector<BlockCopy> got, want;
    std::vector<int64_t> from;
    for (auto [seq, n] : plan) {
      from.push_back(m_.length(seq));
      m_.append(seq, n, &got);
      for (const BlockCopy& c : model_grow(seq, n)) want.push_back(c);
    }
    ASSERT_EQ(got.size(), want.size());
    for (size_t i = 0; i < got.size(); ++i) {
      EXPECT_EQ(got[i].src, want[i].src);
      EXPECT_EQ(got[i].dst, want[i].dst);
    }
    apply_copies(got);
    for (size_t i = 0; i < plan.size(); ++i) write_tokens(plan[i].first, from[i]);
    ++batches;
  }

  void verify_all() {
    m_.check_invariants();
    ASSERT_EQ(m_.used_blocks() + m_.free_blocks(), m_.num_blocks());
    ASSERT_EQ(m_.used_blocks(), int64_t(abs_refs_.size()));
    std::vector<int> tables_per_block(size_t(m_.num_blocks()), 0);
    for (int64_t id : live_) {
      const Seq& s = seqs_.at(id);
      ASSERT_TRUE(m_.contains(id));
      ASSERT_EQ(m_.length(id), int64_t(s.contents.size()));
      auto table = m_.block_table(id);
      ASSERT_EQ(table.size(), s.blocks.size());
      for (size_t i = 0; i < table.size(); ++i) {
        ASSERT_EQ(table[i], real_of_.at(s.blocks[i])) << "sharing differs from the model";
        ++tables_per_block[size_t(table[i])];
      }
      for (size_t pos = 0; pos < s.contents.size(); ++pos) {
        const int64_t slot = int64_t(table[pos / size_t(bs_)]) * bs_ + int64_t(pos) % bs_;
        ASSERT_EQ(pool_[size_t(slot)], s.contents[pos]) << "sequence " << id << " position " << pos;
      }
      if (!s.contents.empty()) {
        const int64_t last = int64_t(s.contents.size()) - 1;
        ASSERT_EQ(m_.slot(id, last), int64_t(table.back()) * bs_ + last % bs_);
      }
    }
    for (int32_t b = 0; b < m_.num_blocks(); ++b)
      ASSERT_EQ(m_.refcount(b), tables_per_block[size_t(b)]) << "block " << b;
  }

  BlockManager m_;
  int64_t bs_;
  std::vector<int64_t> pool_;  // simulated KV tensor: one content value per slot
  SplitMix64 rng_;
  std::vector<int64_t> live_;
  std::unordered_map<int64_t, Seq> seqs_;
  std::unordered_map<int64_t, int> abs_refs_;     // abstract block -> sequences using it
  std::unordered_map<int64_t, int32_t> real_of_;  // abstract block -> manager's block id
  std::unordered_map<int32_t, int64_t> abs_of_;   // and back
  int64_t next_abs_ = 0;
  int64_t next_content_ = 1;
};

TEST(KvBlockManager, RandomOperationsMatchNaiveModel) {
  for (int64_t bs : {1, 16, 32}) {
    SCOPED_TRACE("block_size " + std::to_string(bs));
    Reference ref(/*num_blocks=*/48, bs, /*seed=*/1234 + uint64_t(bs));
    ref.run(40000);
    if (HasFatalFailure()) return;
    // The run must have reached every interesting path.
    EXPECT_GT(ref.refused, 100);
    EXPECT_GT(ref.forks, 1000);
    EXPECT_GT(ref.batches, 1000);
    if (bs > 1) {
      EXPECT_GT(ref.copies, 500);
    } else {
      EXPECT_EQ(ref.copies, 0);  // a one-token block is never partly filled
    }
    ref.free_everything();
  }
}

TEST(KvBlockManager, CopyOnWriteOfSharedLastBlock) {
  BlockManager m(8, 4);
  m.allocate(1, 6);  // blocks 0, 1; block 1 holds 2 of 4
  m.fork(1, 2);
  EXPECT_EQ(m.refcount(0), 2);
  EXPECT_EQ(m.refcount(1), 2);
  EXPECT_EQ(m.used_blocks(), 2);
  EXPECT_EQ(m.blocks_to_grow(2, 0), 0);
  EXPECT_EQ(m.blocks_to_grow(2, 1), 1);  // the copy only
  EXPECT_EQ(m.blocks_to_grow(2, 3), 2);  // the copy and one new block

  std::vector<BlockCopy> copies;
  m.append(2, 1, &copies);
  ASSERT_EQ(copies.size(), 1u);
  EXPECT_EQ(copies[0].src, 1);
  EXPECT_EQ(copies[0].dst, 2);
  EXPECT_EQ(std::vector<int32_t>(m.block_table(2).begin(), m.block_table(2).end()),
            (std::vector<int32_t>{0, 2}));
  EXPECT_EQ(m.refcount(1), 1);
  EXPECT_EQ(m.slot(2, 6), 2 * 4 + 2);

  // Sequence 1 now owns block 1 alone: it writes in place.
  copies.clear();
  EXPECT_EQ(m.blocks_to_grow(1, 2), 0);
  m.append(1, 2, &copies);
  EXPECT_TRUE(copies.empty());

  // A full shared last block is never copied: the new token goes to a new block.
  m.fork(1, 3);  // length 8, two full blocks
  EXPECT_EQ(m.blocks_to_grow(3, 1), 1);
  m.append(3, 1, nullptr);  // no copy needed, so no list needed
  EXPECT_EQ(m.refcount(1), 2);
  m.check_invariants();

  m.free(1);
  m.free(2);
  m.free(3);
  EXPECT_EQ(m.free_blocks(), 8);
  m.check_invariants();
}

TEST(KvBlockManager, EmptySequencesAndReuse) {
  BlockManager m(2, 16);
  m.allocate(-5, 0);
  EXPECT_TRUE(m.contains(-5));
  EXPECT_EQ(m.length(-5), 0);
  EXPECT_TRUE(m.block_table(-5).empty());
  m.fork(-5, 9);
  EXPECT_EQ(m.free_blocks(), 2);
  m.append(-5, 17, nullptr);
  EXPECT_EQ(m.free_blocks(), 0);
  EXPECT_FALSE(m.can_allocate(1));
  EXPECT_TRUE(m.can_allocate(0));
  m.free(-5);
  EXPECT_EQ(m.free_blocks(), 2);
  m.allocate(-5, 32);  // the same id may be used again once freed
  EXPECT_EQ(m.used_blocks(), 2);
  m.check_invariants();
}

TEST(KvBlockManager, CanGrowCountsEachSequenceOnce) {
  BlockManager m(3, 16);
  m.allocate(1, 15);
  m.fork(1, 2);  // shared last block, one slot left in it
  // Growing 1 by 1 twice is growing it by 2: the copy plus one new block = 2 <= 2 free.
  const std::pair<int64_t, int64_t> twice[] = {{1, 1}, {1, 1}};
  EXPECT_TRUE(m.can_grow(twice));
  // Both sequences by 2 each: 2 + 2 > 2 free.
  const std::pair<int64_t, int64_t> both[] = {{1, 2}, {2, 2}};
  EXPECT_FALSE(m.can_grow(both));
  EXPECT_TRUE(m.can_grow({}));
}

TEST(KvBlockManager, RejectsBadSizes) {
  EXPECT_TRUE(
      mentions(error_of([] { BlockManager(0, 16); }), {"num_blocks", "got 0", "--kv-blocks"}));
  EXPECT_TRUE(mentions(error_of([] { BlockManager(-3); }), {"num_blocks", "got -3"}));
  EXPECT_TRUE(
      mentions(error_of([] { BlockManager(int64_t(1) << 31, 16); }), {"num_blocks", "2147483647"}));
  EXPECT_TRUE(mentions(error_of([] { BlockManager(8, 0); }), {"block_size", "got 0"}));
  EXPECT_TRUE(mentions(error_of([] { BlockManager(8, -16); }), {"block_size", "got -16"}));
  BlockManager m(4, 16);
  EXPECT_TRUE(mentions(error_of([&] { m.blocks_for(-1); }), {"token count", ">= 0", "-1"}));
  EXPECT_TRUE(mentions(error_of([&] { m.allocate(1, -1); }), {"-1"}));
  m.allocate(1, 1);
  EXPECT_TRUE(mentions(error_of([&] { m.blocks_to_grow(1, -2); }), {"sequence 1", "by -2"}));
  EXPECT_TRUE(mentions(error_of([&] { m.append(1, -2, nullptr); }), {"sequence 1", "by -2"}));
  const std::pair<int64_t, int64_t> negative[] = {{1, -4}};
  EXPECT_TRUE(mentions(error_of([&] { m.can_grow(negative); }), {"sequence 1", "by -4"}));
  EXPECT_TRUE(mentions(error_of([&] { m.refcount(4); }), {"block 4", "0..3"}));
  EXPECT_TRUE(mentions(error_of([&] { m.refcount(-1); }), {"block -1"}));
  EXPECT_EQ(m.length(1), 1);
  m.check_invariants();
}

TEST(KvBlockManager, UnknownSequence) {
  BlockManager m(4, 16);
  m.allocate(1, 3);
  std::vector<BlockCopy> copies;
  const std::pair<int64_t, int64_t> grow[] = {{1, 1}, {42, 1}};
  const Snapshot before = snapshot(m, {1});
  const std::vector<std::function<void()>> calls = {
      [&] { m.length(42); },      [&] { m.blocks_to_grow(42, 1); },
      [&] { m.can_grow(grow); },  [&] { m.append(42, 1, &copies); },
      [&] { m.fork(42, 2); },     [&] { m.free(42); },
      [&] { m.block_table(42); }, [&] { m.slot(42, 0); },
  };
  for (const auto& call : calls)
    EXPECT_TRUE(mentions(error_of(call), {"unknown sequence 42", "allocate() it first"}));
  EXPECT_FALSE(m.contains(42));
  EXPECT_FALSE(m.contains(2));
  EXPECT_TRUE(before == snapshot(m, {1}));
}

TEST(KvBlockManager, DoubleAllocateAndForkToExisting) {
  BlockManager m(4, 16);
  m.allocate(7, 20);
  m.allocate(8, 1);
  const Snapshot before = snapshot(m, {7, 8});
  EXPECT_TRUE(mentions(error_of([&] { m.allocate(7, 1); }),
                       {"sequence 7 already exists", "free() it first"}));
  EXPECT_TRUE(mentions(error_of([&] { m.fork(7, 8); }),
                       {"fork sequence 7 into 8", "sequence 8 already exists"}));
  EXPECT_TRUE(mentions(error_of([&] { m.fork(7, 7); }), {"sequence 7 already exists"}));
  EXPECT_TRUE(before == snapshot(m, {7, 8}));
}

TEST(KvBlockManager, SlotOutOfRange) {
  BlockManager m(4, 16);
  m.allocate(3, 20);
  m.allocate(4, 0);
  EXPECT_EQ(m.slot(3, 19), int64_t(m.block_table(3)[1]) * 16 + 3);
  EXPECT_TRUE(mentions(error_of([&] { m.slot(3, 20); }),
                       {"position 20", "sequence 3", "holds 20 tokens", "0..19"}));
  EXPECT_TRUE(mentions(error_of([&] { m.slot(3, -1); }), {"position -1", "sequence 3"}));
  EXPECT_TRUE(mentions(error_of([&] { m.slot(4, 0); }), {"position 0", "holds 0 tokens"}));
}

TEST(KvBlockManager, ShortPoolRefusesAndChangesNothing) {
  BlockManager m(3, 16);
  m.allocate(7, 0);
  std::vector<BlockCopy> copies;
  const Snapshot empty = snapshot(m, {7});
  EXPECT_EQ(error_of([&] { m.append(7, 180, &copies); }),
            "KV cache: 12 blocks needed to grow sequence 7 by 180 tokens, 3 free; free sequences "
            "or give more --kv-blocks");
  EXPECT_TRUE(
      mentions(error_of([&] { m.allocate(8, 49); }),
               {"4 blocks needed to allocate sequence 8 with 49 tokens", "3 free", "--kv-blocks"}));
  EXPECT_FALSE(m.contains(8));
  EXPECT_TRUE(empty == snapshot(m, {7}));

  // A copy that would not fit: the shared last block stays shared.
  m.append(7, 33, nullptr);  // all 3 blocks, the last partly filled
  m.fork(7, 9);
  EXPECT_EQ(m.blocks_to_grow(9, 1), 1);
  const Snapshot full = snapshot(m, {7, 9});
  EXPECT_TRUE(mentions(error_of([&] { m.append(9, 1, &copies); }), {"1 blocks needed", "0 free"}));
  EXPECT_TRUE(copies.empty());
  EXPECT_TRUE(full == snapshot(m, {7, 9}));
  EXPECT_EQ(m.refcount(m.block_table(9)[2]), 2);
}

TEST(KvBlockManager, CopyNeedsACopyList) {
  BlockManager m(4, 16);
  m.allocate(1, 5);
  m.fork(1, 2);
  const Snapshot before = snapshot(m, {1, 2});
  EXPECT_TRUE(mentions(error_of([&] { m.append(2, 1, nullptr); }),
                       {"sequence 2", "shared last block", "no copy list"}));
  EXPECT_TRUE(before == snapshot(m, {1, 2}));
}

// Prefix caching: published blocks outlive their sequence on a least-recently-used list, count as
// free, are taken back by a later sequence with the same hashes, and are evicted oldest first.
TEST(KvBlockManager, PrefixCacheReuseAndLruEviction) {
  BlockManager m(6, 4);
  const std::vector<uint64_t> ha = {11, 12}, hb = {21, 22}, hc = {31};
  m.allocate(1, 9);  // blocks for 9 tokens: 3
  m.publish(1, 0, 11);
  m.publish(1, 1, 12);
  EXPECT_THROW(m.publish(1, 2, 13), Error);  // not full
  const std::vector<int32_t> a(m.block_table(1).begin(), m.block_table(1).end());
  m.free(1);
  EXPECT_EQ(m.free_blocks(), 6);
  EXPECT_EQ(m.cached_blocks(), 2);
  m.check_invariants();
  // The same prefix comes back: its two blocks are reused, one fresh block is added.
  EXPECT_EQ(m.cached_prefix(ha), 2);
  m.allocate_cached(2, 10, ha);
  EXPECT_EQ(m.block_table(2)[0], a[0]);
  EXPECT_EQ(m.block_table(2)[1], a[1]);
  EXPECT_EQ(m.free_blocks(), 3);
  m.allocate_cached(3, 8, ha);  // shared by two live sequences now
  EXPECT_EQ(m.refcount(a[0]), 2);
  m.check_invariants();
  m.free(2);
  m.free(3);
  // Cache two more prefixes; b is freed before c, so b is evicted first.
  m.allocate(4, 8);
  m.publish(4, 0, 21);
  m.publish(4, 1, 22);
  m.allocate(5, 4);
  m.publish(5, 0, 31);
  m.free(4);
  m.free(5);
  m.check_invariants();
  EXPECT_EQ(m.cached_blocks(), 5);
  // Fresh blocks come from the uncached free blocks first, then from the cached ones, least
  // recently freed first: a's second block (a sequence returns its blocks last to first).
  m.allocate(6, 4 * 2);
  EXPECT_EQ(m.cached_prefix(ha), 1);
  EXPECT_EQ(m.cached_prefix(hb), 2);
  EXPECT_EQ(m.cached_prefix(hc), 1);
  m.check_invariants();
  m.free(6);
  for (int64_t s = 7; s < 13; ++s) m.allocate(s, 4);  // the whole pool: everything evicted
  EXPECT_EQ(m.cached_blocks(), 0);
  EXPECT_EQ(m.free_blocks(), 0);
  for (int64_t s = 7; s < 13; ++s) m.free(s);
  m.check_invariants();
  EXPECT_EQ(m.free_blocks(), 6);
}

}  // namespace
}  // namespace origami::serve
