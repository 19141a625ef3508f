// SentencePiece *.model files (Llama-2, Mistral, Mixtral, Gemma): Unigram and BPE models with byte
// fallback, implemented here from the model file.
//
// Why not libsentencepiece: Debian's build bundles its own copy of protobuf 3.14 and exports all
// of its symbols, so in one process with the system protobuf (used for our configs) the two
// collide and the first SentencePiece load aborts on a protobuf version check. The model file is
// a small protobuf read below with a wire-format reader; the algorithms follow SentencePiece's
// unigram_model.cc (Viterbi, float scores) and bpe_model.cc (merge the adjacent pair whose
// concatenation is the highest-scoring piece, leftmost first).
//
// Supported normalizer: "identity" (an empty precompiled_charsmap), with add_dummy_prefix,
// remove_extra_whitespaces and escape_whitespaces -- what LLM tokenizers ship. A model with a
// precompiled character map (nmt_nfkc, ...) is refused with a message that says so.
#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <queue>
#include <sstream>
#include <unordered_map>

#include "runtime/error.h"
#include "runtime/tokenizer.h"

namespace origami {

namespace {

constexpr std::string_view kSpaceSymbol = "\xE2\x96\x81";  // U+2581 "▁"
constexpr std::string_view kReplacement = "\xEF\xBF\xBD";  // U+FFFD
constexpr float kUnkPenalty = 10.0f;

// ---- protobuf wire format ------------------------------------------------------------------

class WireReader {
 public:
  WireReader(std::string_view data, const std::string& file) : data_(data), file_(file) {}
  bool done() const { return pos_ >= data_.size(); }

  uint64_t varint() {
    uint64_t v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      need(1);
      const auto b = static_cast<unsigned char>(data_[pos_++]);
      v |= static_cast<uint64_t>(b & 0x7F) << shift;
      if ((b & 0x80) == 0) return v;
    }
    bad("a varint is longer than 10 bytes");
  }
  // Returns (field number, wire type).
  std::pair<uint32_t, uint32_t> tag() {
    const uint64_t t = varint();
    return {static_cast<uint32_t>(t >> 3), static_cast<uint32_t>(t & 7)};
  }
  std::string_view bytes() {
    const uint64_t n = varint();
    need(n);
    std::string_view s = data_.substr(pos_, n);
    pos_ += n;
    return s;
  }
  float fixed32_float() {
    need(4);
    float f;
    std::memcpy(&f, data_.data() + pos_, 4);  // little-endian, as on every supported host
    pos_ += 4;
    return f;
  }
  void skip(uint32_t wire_type) {
    switch (wire_type) {
      case 0:
        varint();
        break;
      case 1:
        need(8);
        pos_ += 8;
        break;
      case 2:
        bytes();
        break;
      case 5:
        need(4);
        pos_ += 4;
        break;
      default:
        bad("unsupported wire type " + std::to_string(wire_type));
    }
  }
  [[noreturn]] void bad(const std::string& what) const {
    ORIGAMI_FAIL("tokenizer '", file_, "': not a valid SentencePiece model (", what, " at byte ",
                 pos_, ")");
  }

 private:
  void need(uint64_t n) const {
    if (n > data_.size() - pos_) bad("truncated field");
  }
  std::string_view data_;
  size_t pos_ = 0;
  const std::string& file_;
};

// sentencepiece_model.proto, the fields used here.
enum PieceType {
  kNormal = 1,
  kUnknown = 2,
  kControl = 3,
  kUserDefined = 4,
  kUnused = 5,
  kByte = 6
};
enum ModelType { kUnigram = 1, kBpe = 2, kWord = 3, kChar = 4 };

struct Piece {
  std::string text;
  float score = 0.0f;
  int type = kNormal;
};

struct ModelProto {
  std::vector<Piece> pieces;                          // ModelProto.pieces = 1
  int model_type = kUnigram;                          // TrainerSpec.model_type = 3
  bool treat_whitespace_as_suffix = false;            // TrainerSpec = 24
  bool byte_fallback = false;                         // TrainerSpec = 35
  std::string unk_surface = " \xE2\x81\x87 ";         // TrainerSpec = 44
  std::string bos_piece = "<s>", eos_piece = "</s>";  // TrainerSpec = 46, 47
  std::string normalizer_name;                        // NormalizerSpec.name = 1
  std::string precompiled_charsmap;                   // NormalizerSpec = 2
  bool add_dummy_prefix = true;                       // NormalizerSpec = 3
  bool remove_extra_whitespaces = true;               // NormalizerSpec = 4
  bool escape_whitespaces = true;                     // NormalizerSpec = 5
};

ModelProto parse_model(std::string_view data, const std::string& file) {
  ModelProto m;
  WireReader top(data, file);
  while (!top.done()) {
    const auto [field, wt] = top.tag();
    if (field == 1 && wt == 2) {
      WireReader r(top.bytes(), file);
      Piece p;
      while (!r.done()) {
        const auto [f, w] = r.tag();
        if (f == 1 && w == 2)
          p.text = std::string(r.bytes());
        else if (f == 2 && w == 5)
          p.score = r.fixed32_float();
        else if (f == 3 && w == 0)
          p.type = static_cast<int>(r.varint());
        else
          r.skip(w);
      }
      m.pieces.push_back(std::move(p));
    } else if (field == 2 && wt == 2) {
      WireReader r(top.bytes(), file);
      while (!r.done()) {
        const auto [f, w] = r.tag();
        if (f == 3 && w == 0)
          m.model_type = static_cast<int>(r.varint());
        else if (f == 24 && w == 0)
          m.treat_whitespace_as_suffix = r.varint() != 0;
        else if (f == 35 && w == 0)
          m.byte_fallback = r.varint() != 0;
        else if (f == 44 && w == 2)
          m.unk_surface = std::string(r.bytes());
        else if (f == 46 && w == 2)
          m.bos_piece = std::string(r.bytes());
        else if (f == 47 && w == 2)
          m.eos_piece = std::string(r.bytes());
        else
          r.skip(w);
      }
    } else if (field == 3 && wt == 2) {
      WireReader r(top.bytes(), file);
      while (!r.done()) {
        const auto [f, w] = r.tag();
        if (f == 1 && w == 2)
          m.normalizer_name = std::string(r.bytes());
        else if (f == 2 && w == 2)
          m.precompiled_charsmap = std::string(r.bytes());
        else if (f == 3 && w == 0)
          m.add_dummy_prefix = r.varint() != 0;
        else if (f == 4 && w == 0)
          m.remove_extra_whitespaces = r.varint() != 0;
        else if (f == 5 && w == 0)
          m.escape_whitespaces = r.varint() != 0;
        else
          r.skip(w);
      }
    } else {
      top.skip(wt);
    }
  }
  return m;
}

// Byte length of the UTF-8 character at s[i]; 0 when it is not valid UTF-8 there.
size_t utf8_len(std::string_view s, size_t i) {
  const auto b = [&](size_t k) { return static_cast<unsigned char>(s[i + k]); };
  const auto cont = [&](size_t k) { return i + k < s.size() && (b(k) & 0xC0) == 0x80; };
  const unsigned char c = b(0);
  if (c < 0x80) return 1;
  if (c >= 0xC2 && c <= 0xDF) return cont(1) ? 2 : 0;
  if (c >= 0xE0 && c <= 0xEF) {
    if (!cont(1) || !cont(2) || (c == 0xE0 && b(1) < 0xA0) || (c == 0xED && b(1) >= 0xA0)) return 0;
    return 3;
  }
  if (c >= 0xF0 && c <= 0xF4) {
    if (!cont(1) || !cont(2) || !cont(3) || (c == 0xF0 && b(1) < 0x90) ||
        (c == 0xF4 && b(1) >= 0x90))
      return 0;
    return 4;
  }
  return 0;
}

struct StringHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};

class SentencePieceTokenizer final : public Tokenizer {
 public:
  explicit SentencePieceTokenizer(const std::string& path);

  std::string_view kind() const override { return "sentencepiece"; }
  std::vector<TokenId> encode(std::string_view text, bool add_special) const override;
  std::string decode(std::span<const TokenId> ids, bool skip_special) const override;
  int64_t vocab_size() const override { return static_cast<int64_t>(m_.pieces.size()); }
  std::optional<TokenId> bos_id() const override { return bos_; }
  std::optional<TokenId> eos_id() const override { return eos_; }
  std::string id_to_token(TokenId id) const override {
    check_id(id);
    return m_.pieces[id].text;
  }
  std::optional<TokenId> token_to_id(std::string_view token) const override {
    const auto it = all_pieces_.find(token);
    return it == all_pieces_.end() ? std::nullopt : std::optional<TokenId>(it->second);
  }
  bool is_special(TokenId id) const override {
    return id >= 0 && static_cast<size_t>(id) < m_.pieces.size() &&
           (m_.pieces[id].type == kControl || m_.pieces[id].type == kUnknown);
  }

 private:
  void check_id(TokenId id) const {
    ORIGAMI_CHECK(id >= 0 && static_cast<size_t>(id) < m_.pieces.size(), "tokenizer '", path_,
                  "': id ", id, " is outside the vocabulary [0, ", m_.pieces.size(), ")");
  }
  std::string normalize(std::string_view text) const;
  // Length of the user-defined symbol at s[i] (longest), or 0.
  size_t user_defined_at(std::string_view s, size_t i) const;
  std::optional<TokenId> matchable(std::string_view piece) const {
    const auto it = matchable_.find(piece);
    return it == matchable_.end() ? std::nullopt : std::optional<TokenId>(it->second);
  }
  void encode_unigram(std::string_view s,
                      std::vector<std::pair<std::string_view, TokenId>>& out) const;
  void encode_bpe(std::string_view s, std::vector<std::pair<std::string_view, TokenId>>& out) const;

  std::string path_;
  ModelProto m_;
  std::unordered_map<std::string, TokenId, StringHash, std::equal_to<>> all_pieces_;
  // NORMAL, USER_DEFINED and UNUSED pieces: what the text can be cut into.
  std::unordered_map<std::string, TokenId, StringHash, std::equal_to<>> matchable_;
  std::vector<std::string> user_defined_;  // longest first
  size_t max_piece_bytes_ = 0;
  TokenId unk_ = 0;
  std::array<TokenId, 256> byte_piece_{};
  std::optional<TokenId> bos_, eos_;
  float min_score_ = 0.0f, max_score_ = 0.0f;
};

SentencePieceTokenizer::SentencePieceTokenizer(const std::string& path) : path_(path) {
  std::ifstream in(path, std::ios::binary);
  ORIGAMI_CHECK(in.good(), "tokenizer: cannot open '", path, "'");
  std::stringstream buf;
  buf << in.rdbuf();
  const std::string data = buf.str();
  m_ = parse_model(data, path);
  auto fail = [&](const std::string& what) { ORIGAMI_FAIL("tokenizer '", path, "': ", what); };
  if (m_.pieces.empty()) fail("not a valid SentencePiece model (no pieces)");
  if (m_.model_type != kUnigram && m_.model_type != kBpe)
    fail("SentencePiece model type " + std::to_string(m_.model_type) +
         " is not supported (supported: 1 = UNIGRAM, 2 = BPE)");
  if (!m_.precompiled_charsmap.empty())
    fail("SentencePiece normalizer \"" + m_.normalizer_name +
         "\" with a precompiled character map is not supported (only \"identity\", which "
         "Llama-2, Mistral and Gemma models use)");
  if (m_.treat_whitespace_as_suffix) fail("treat_whitespace_as_suffix is not supported");

  int unknowns = 0;
  min_score_ = std::numeric_limits<float>::max();
  max_score_ = std::numeric_limits<float>::lowest();
  byte_piece_.fill(-1);
  for (size_t id = 0; id < m_.pieces.size(); ++id) {
    const Piece& p = m_.pieces[id];
    const auto tid = static_cast<TokenId>(id);
    if (p.text.empty()) fail("piece " + std::to_string(id) + " is empty");
    if (!all_pieces_.emplace(p.text, tid).second) fail("piece \"" + p.text + "\" appears twice");
    switch (p.type) {
      case kNormal:
        min_score_ = std::min(min_score_, p.score);
        max_score_ = std::max(max_score_, p.score);
        [[fallthrough]];
      case kUnused:
        matchable_.emplace(p.text, tid);
        max_piece_bytes_ = std::max(max_piece_bytes_, p.text.size());
        break;
      case kUserDefined:
        matchable_.emplace(p.text, tid);
        user_defined_.push_back(p.text);
        max_piece_bytes_ = std::max(max_piece_bytes_, p.text.size());
        break;
      case kUnknown:
        unk_ = tid;
        ++unknowns;
        break;
      case kControl:
        if (p.text == m_.bos_piece) bos_ = tid;
        if (p.text == m_.eos_piece) eos_ = tid;
        break;
      case kByte: {
        unsigned v = 0;
        if (p.text.size() != 6 || std::sscanf(p.text.c_str(), "<0x%2X>", &v) != 1)
          fail("byte piece " + std::to_string(id) + " \"" + p.text + "\" is not <0xXX>");
        byte_piece_[v] = tid;
        break;
      }
      default:
        fail("piece " + std::to_string(id) + " has unknown type " + std::to_string(p.type));
    }
  }
  if (unknowns != 1) fail("expected exactly one <unk> piece, found " + std::to_string(unknowns));
  if (m_.byte_fallback)
    for (int b = 0; b < 256; ++b)
      if (byte_piece_[b] < 0)
        fail("byte_fallback is on but the byte piece for 0x" + std::to_string(b) + " is missing");
  std::sort(user_defined_.begin(), user_defined_.end(),
            [](const std::string& a, const std::string& b) { return a.size() > b.size(); });
  if (min_score_ > max_score_) min_score_ = max_score_ = 0.0f;  // no NORMAL piece
}

size_t SentencePieceTokenizer::user_defined_at(std::string_view s, size_t i) const {
  for (const std::string& u : user_defined_)
    if (s.compare(i, u.size(), u) == 0) return u.size();
  return 0;
}

// SentencePiece's Normalizer::Normalize with an identity character map.
std::string SentencePieceTokenizer::normalize(std::string_view in) const {
  std::string out;
  size_t i = 0;
  if (m_.remove_extra_whitespaces)
    while (i < in.size() && in[i] == ' ') ++i;
  if (i == in.size()) return out;
  out.reserve(in.size() * 2);
  const std::string space = m_.escape_whitespaces ? std::string(kSpaceSymbol) : " ";
  if (m_.add_dummy_prefix) out += space;
  bool prev_space = m_.remove_extra_whitespaces;
  while (i < in.size()) {
    // One unit: a user-defined symbol, else one UTF-8 character (an invalid byte becomes U+FFFD).
    size_t n = user_defined_at(in, i);
    std::string_view unit;
    if (n == 0) n = utf8_len(in, i);
    if (n == 0) {
      unit = kReplacement;
      n = 1;
    } else {
      unit = in.substr(i, n);
    }
    i += n;
    if (prev_space)
      while (!unit.empty() && unit[0] == ' ') unit.remove_prefix(1);
    if (!unit.empty()) {
      for (char c : unit) {
        if (c == ' ')
          out += space;
        else
          out += c;
      }
      prev_space = unit.back() == ' ';
    }
    if (!m_.remove_extra_whitespaces) prev_space = false;
  }
  if (m_.remove_extra_whitespaces)
    while (out.size() >= space.size() &&
           out.compare(out.size() - space.size(), space.size(), space) == 0)
      out.resize(out.size() - space.size());
  return out;
}

// Viterbi over all segmentations into matchable pieces; an unknown character costs
// min_score - 10; user-defined pieces win wherever they match.
void SentencePieceTokenizer::encode_unigram(
    std::string_view s, std::vector<std::pair<std::string_view, TokenId>>& out) const {
  struct Node {
    float score = 0.0f;
    int start = -1;  // start of the best last piece ending here; -1: unreachable
    TokenId id = -1;
  };
  const float unk_score = min_score_ - kUnkPenalty;
  std::vector<Node> best(s.size() + 1);
  best[0].start = 0;
  for (size_t start = 0; start < s.size();) {
    const size_t char_len = std::max<size_t>(1, utf8_len(s, start));
    if (best[start].start >= 0) {
      bool has_single = false;
      const float base = best[start].score;
      for (size_t end = start + char_len; end <= s.size() && end - start <= max_piece_bytes_;) {
        if (const auto id = matchable(s.substr(start, end - start))) {
          const Piece& p = m_.pieces[*id];
          if (p.type != kUnused) {
            const float score = p.type == kUserDefined
                                    ? static_cast<float>(end - start) * max_score_ - 0.1f
                                    : p.score;
            Node& target = best[end];
            if (target.start < 0 || base + score > target.score)
              target = {base + score, static_cast<int>(start), *id};
            if (end == start + char_len) has_single = true;
          }
        }
        if (end == s.size()) break;
        end += std::max<size_t>(1, utf8_len(s, end));
      }
      if (!has_single) {
        Node& target = best[start + char_len];
        if (target.start < 0 || base + unk_score > target.score)
          target = {base + unk_score, static_cast<int>(start), unk_};
      }
    }
    start += char_len;
  }
  std::vector<std::pair<std::string_view, TokenId>> rev;
  for (size_t end = s.size(); end > 0;) {
    const Node& n = best[end];
    const size_t start = static_cast<size_t>(n.start);
    if (n.id == unk_ && !rev.empty() && rev.back().second == unk_) {  // fuse unknown runs
      rev.back().first = s.substr(start, rev.back().first.size() + (end - start));
    } else {
      rev.emplace_back(s.substr(start, end - start), n.id);
    }
    end = start;
  }
  out.insert(out.end(), rev.rbegin(), rev.rend());
}

// Start from characters (user-defined symbols frozen whole) and repeatedly merge the adjacent
// pair whose concatenation is the highest-scoring piece, leftmost on ties.
void SentencePieceTokenizer::encode_bpe(
    std::string_view s, std::vector<std::pair<std::string_view, TokenId>>& out) const {
  struct Symbol {
    size_t start, len;
    int prev, next;
    bool frozen;
  };
  std::vector<Symbol> sym;
  for (size_t i = 0; i < s.size();) {
    size_t n = user_defined_at(s, i);
    const bool frozen = n != 0;
    if (n == 0) n = std::max<size_t>(1, utf8_len(s, i));
    const int k = static_cast<int>(sym.size());
    sym.push_back({i, n, k - 1, k + 1, frozen});
    i += n;
  }
  if (sym.empty()) return;
  sym.back().next = -1;

  struct Pair {
    float score;
    int left, right;
    size_t len;
    bool operator<(const Pair& o) const {  // priority_queue pops the largest
      return score != o.score ? score < o.score : left > o.left;
    }
  };
  std::priority_queue<Pair> agenda;
  // UNUSED pieces may be merged through but are not output: remember what they came from.
  std::unordered_map<std::string_view, std::pair<std::string_view, std::string_view>> rev_merge;
  auto maybe_add = [&](int left, int right) {
    if (left < 0 || right < 0 || sym[left].frozen || sym[right].frozen) return;
    const size_t len = sym[left].len + sym[right].len;
    const std::string_view merged = s.substr(sym[left].start, len);
    const auto id = matchable(merged);
    if (!id) return;
    agenda.push({m_.pieces[*id].score, left, right, len});
    if (m_.pieces[*id].type == kUnused)
      rev_merge[merged] = {s.substr(sym[left].start, sym[left].len),
                           s.substr(sym[right].start, sym[right].len)};
  };
  for (size_t i = 1; i < sym.size(); ++i) maybe_add(static_cast<int>(i) - 1, static_cast<int>(i));
  while (!agenda.empty()) {
    const Pair top = agenda.top();
    agenda.pop();
    Symbol& l = sym[top.left];
    Symbol& r = sym[top.right];
    if (l.len == 0 || r.len == 0 || l.len + r.len != top.len || l.next != top.right) continue;
    l.len += r.len;
    l.next = r.next;
    if (r.next >= 0) sym[r.next].prev = top.left;
    r.len = 0;
    maybe_add(l.prev, top.left);
    maybe_add(top.left, l.next);
  }
  auto resegment = [&](auto&& self, std::string_view piece) -> void {
    const auto id = matchable(piece);
    if (!id) {
      out.emplace_back(piece, unk_);
    } else if (m_.pieces[*id].type != kUnused) {
      out.emplace_back(piece, *id);
    } else if (const auto it = rev_merge.find(piece); it != rev_merge.end()) {
      self(self, it->second.first);
      self(self, it->second.second);
    } else {
      out.emplace_back(piece, unk_);
    }
  };
  for (int k = 0; k >= 0; k = sym[k].next) resegment(resegment, s.substr(sym[k].start, sym[k].len));
}

std::vector<TokenId> SentencePieceTokenizer::encode(std::string_view text, bool add_special) const {
  const std::string normalized = normalize(text);
  std::vector<std::pair<std::string_view, TokenId>> pieces;
  if (m_.model_type == kUnigram)
    encode_unigram(normalized, pieces);
  else
    encode_bpe(normalized, pieces);
  std::vector<TokenId> ids;
  ids.reserve(pieces.size() + 1);
  if (add_special && bos_) ids.push_back(*bos_);
  for (const auto& [piece, id] : pieces) {
    if (id == unk_ && m_.byte_fallback) {
      for (char c : piece) ids.push_back(byte_piece_[static_cast<unsigned char>(c)]);
    } else {
      ids.push_back(id);
    }
  }
  return ids;
}

// SentencePiece's DecodeIds: "▁" becomes a space, the dummy-prefix space of the first piece is
// dropped, byte pieces become their bytes, <unk> becomes its surface " ⁇ ". Control tokens have
// no text; unless skip_special they are written as their piece ("<s>").
std::string SentencePieceTokenizer::decode(std::span<const TokenId> ids, bool skip_special) const {
  std::string out;
  bool first = m_.add_dummy_prefix;
  for (TokenId id : ids) {
    check_id(id);
    const Piece& p = m_.pieces[id];
    if (p.type == kControl) {
      if (!skip_special) out += p.text;
      continue;
    }
    if (p.type == kByte) {
      unsigned v = 0;
      std::sscanf(p.text.c_str(), "<0x%2X>", &v);
      out.push_back(static_cast<char>(v));
      first = false;
      continue;
    }
    if (p.type == kUnknown) {
      out += m_.unk_surface;
      first = false;
      continue;
    }
    std::string_view text = p.text;
    if (first && text.substr(0, kSpaceSymbol.size()) == kSpaceSymbol)
      text.remove_prefix(kSpaceSymbol.size());
    first = false;
    for (size_t i = 0; i < text.size();) {
      if (text.compare(i, kSpaceSymbol.size(), kSpaceSymbol) == 0) {
        out += ' ';
        i += kSpaceSymbol.size();
      } else {
        out += text[i++];
      }
    }
  }
  return out;
}

}  // namespace

std::unique_ptr<Tokenizer> load_sentencepiece_tokenizer(const std::string& model_path) {
  ORIGAMI_CHECK(std::filesystem::is_regular_file(model_path), "tokenizer: '", model_path,
                "' does not exist or is not a file");
  return std::make_unique<SentencePieceTokenizer>(model_path);
}

}  // namespace origami
