// Hugging Face tokenizer.json with a byte-level BPE model (GPT-2, Llama-3, Qwen2 families).
//
// The pipeline follows the `tokenizers` library step by step, so that ids match it exactly:
//   1. added tokens ("<|endoftext|>", ...) are cut out of the raw text first, leftmost-longest,
//      and never split further;
//   2. the normalizer runs on the remaining pieces (none, or NFC/NFD/NFKC/NFKD through ICU);
//   3. the pre-tokenizer splits them into words: Split (the regex comes from the file and runs in
//      PCRE2 with UTF + UCP), ByteLevel (GPT-2's regex when use_regex), Digits, or a Sequence;
//   4. each word's bytes become byte-level characters and BPE merges them by rank;
//   5. the post-processor adds the template's special tokens when asked (BOS for Llama-3).
// Decoding maps byte-level characters back to bytes.
#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <nlohmann/json.hpp>
#include <queue>
#include <shared_mutex>
#include <unordered_map>

#include "runtime/error.h"
#include "runtime/tokenizer.h"

#if ORIGAMI_TOKENIZER_ICU
#include <unicode/normalizer2.h>
#include <unicode/unistr.h>
#endif

namespace origami {

namespace {

using json = nlohmann::json;

// GPT-2's pre-tokenization regex, used by a ByteLevel pre-tokenizer with use_regex = true.
constexpr const char* kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

// ---- UTF-8 helpers -------------------------------------------------------------------------

void append_utf8(std::string& out, uint32_t cp) {
  if (cp < 0x80) {
    out.push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out.push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out.push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out.push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

// Length of the valid UTF-8 character starting at s[i], or 0 if it is not valid there.
size_t utf8_char_len(std::string_view s, size_t i) {
  const auto b = [&](size_t k) { return static_cast<unsigned char>(s[k]); };
  const unsigned char c = b(i);
  const auto cont = [&](size_t k) { return i + k < s.size() && (b(i + k) & 0xC0) == 0x80; };
  if (c < 0x80) return 1;
  if (c >= 0xC2 && c <= 0xDF) return cont(1) ? 2 : 0;
  if (c >= 0xE0 && c <= 0xEF) {
    if (!cont(1) || !cont(2)) return 0;
    if (c == 0xE0 && b(i + 1) < 0xA0) return 0;   // overlong
    if (c == 0xED && b(i + 1) >= 0xA0) return 0;  // surrogate
    return 3;
  }
  if (c >= 0xF0 && c <= 0xF4) {
    if (!cont(1) || !cont(2) || !cont(3)) return 0;
    if (c == 0xF0 && b(i + 1) < 0x90) return 0;   // overlong
    if (c == 0xF4 && b(i + 1) >= 0x90) return 0;  // above U+10FFFF
    return 4;
  }
  return 0;
}

void check_utf8(std::string_view s, const std::string& file) {
  for (size_t i = 0; i < s.size();) {
    const size_t n = utf8_char_len(s, i);
    ORIGAMI_CHECK(n != 0, "tokenizer '", file, "': text to encode is not valid UTF-8 (byte ", i,
                  " of ", s.size(), "); this tokenizer encodes Unicode text only");
    i += n;
  }
}

uint32_t decode_utf8_at(std::string_view s, size_t i, size_t n) {
  const auto b = [&](size_t k) {
    return static_cast<uint32_t>(static_cast<unsigned char>(s[i + k]));
  };
  if (n == 1) return b(0);
  if (n == 2) return ((b(0) & 0x1F) << 6) | (b(1) & 0x3F);
  if (n == 3) return ((b(0) & 0x0F) << 12) | ((b(1) & 0x3F) << 6) | (b(2) & 0x3F);
  return ((b(0) & 0x07) << 18) | ((b(1) & 0x3F) << 12) | ((b(2) & 0x3F) << 6) | (b(3) & 0x3F);
}

// ---- GPT-2's byte <-> printable character table ---------------------------------------------

struct ByteLevelTable {
  std::array<std::string, 256> byte_to_char;           // UTF-8 of the character for each byte
  std::unordered_map<uint32_t, uint8_t> char_to_byte;  // code point -> byte

  ByteLevelTable() {
    std::array<bool, 256> printable{};
    for (int b = '!'; b <= '~'; ++b) printable[b] = true;
    for (int b = 0xA1; b <= 0xAC; ++b) printable[b] = true;
    for (int b = 0xAE; b <= 0xFF; ++b) printable[b] = true;
    uint32_t next = 256;
    for (int b = 0; b < 256; ++b) {
      const uint32_t cp = printable[b] ? static_cast<uint32_t>(b) : next++;
      append_utf8(byte_to_char[b], cp);
      char_to_byte[cp] = static_cast<uint8_t>(b);
    }
  }
};

const ByteLevelTable& byte_level_table() {
  static const ByteLevelTable table;
  return table;
}

// Byte-level spelling of a token back to its bytes; characters outside the table pass through.
std::string byte_level_to_bytes(std::string_view token) {
  const ByteLevelTable& t = byte_level_table();
  std::string out;
  for (size_t i = 0; i < token.size();) {
    size_t n = utf8_char_len(token, i);
    if (n == 0) n = 1;
    const auto it = t.char_to_byte.find(decode_utf8_at(token, i, n));
    if (it != t.char_to_byte.end()) {
      out.push_back(static_cast<char>(it->second));
    } else {
      out.append(token.substr(i, n));
    }
    i += n;
  }
  return out;
}

// ---- PCRE2 ---------------------------------------------------------------------------------

class Regex {
 public:
  Regex(const std::string& pattern, bool literal, const std::string& file) {
    int err = 0;
    PCRE2_SIZE err_offset = 0;
    uint32_t options = PCRE2_UTF | PCRE2_UCP;
    if (literal) options |= PCRE2_LITERAL;
    code_ = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(), options,
                          &err, &err_offset, nullptr);
    if (code_ == nullptr) {
      PCRE2_UCHAR msg[256];
      pcre2_get_error_message(err, msg, sizeof msg);
      ORIGAMI_FAIL("tokenizer '", file, "': cannot compile the pre-tokenizer regex '", pattern,
                   "' at offset ", err_offset, ": ", reinterpret_cast<const char*>(msg));
    }
    pcre2_jit_compile(code_, PCRE2_JIT_COMPLETE);  // optional speed-up; falls back when absent
  }
  ~Regex() { pcre2_code_free(code_); }
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;

  // Non-empty, non-overlapping matches [start, end) left to right. `s` must be valid UTF-8.
  std::vector<std::pair<size_t, size_t>> find_all(std::string_view s) const {
    std::vector<std::pair<size_t, size_t>> out;
    pcre2_match_data* md = pcre2_match_data_create_from_pattern(code_, nullptr);
    const auto* subject = reinterpret_cast<PCRE2_SPTR>(s.data());
    size_t pos = 0;
    while (pos <= s.size()) {
      const int rc = pcre2_match(code_, subject, s.size(), pos, PCRE2_NO_UTF_CHECK, md, nullptr);
      if (rc == PCRE2_ERROR_NOMATCH) break;
      if (rc < 0) {
        pcre2_match_data_free(md);
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(rc, msg, sizeof msg);
        ORIGAMI_FAIL("tokenizer: regex match failed: ", reinterpret_cast<const char*>(msg));
      }
      const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md);
      const size_t start = ov[0], end = ov[1];
      if (end > start) {
        out.emplace_back(start, end);
        pos = end;
      } else {  // empty match: step over one character
        if (start >= s.size()) break;
        const size_t n = utf8_char_len(s, start);
        pos = start + (n == 0 ? 1 : n);
      }
    }
    pcre2_match_data_free(md);
    return out;
  }

 private:
  pcre2_code* code_ = nullptr;
};

// ---- pre-tokenizers ------------------------------------------------------------------------

enum class SplitBehavior { kRemoved, kIsolated, kMergedWithPrevious, kMergedWithNext, kContiguous };

// Splits `s` by the matches of `re` the way tokenizers' NormalizedString::split does.
void split_by(const Regex& re, SplitBehavior behavior, bool invert, const std::string& s,
              std::vector<std::string>& out) {
  // (start, end, is_match) segments covering s.
  struct Seg {
    size_t start, end;
    bool match;
  };
  std::vector<Seg> segs;
  size_t prev = 0;
  for (auto [start, end] : re.find_all(s)) {
    if (start != prev) segs.push_back({prev, start, false});
    segs.push_back({start, end, true});
    prev = end;
  }
  if (prev != s.size()) segs.push_back({prev, s.size(), false});
  if (invert)
    for (Seg& g : segs) g.match = !g.match;

  // (start, end, removed) pieces.
  struct Piece {
    size_t start, end;
    bool removed;
  };
  std::vector<Piece> pieces;
  switch (behavior) {
    case SplitBehavior::kIsolated:
      for (const Seg& g : segs) pieces.push_back({g.start, g.end, false});
      break;
    case SplitBehavior::kRemoved:
      for (const Seg& g : segs) pieces.push_back({g.start, g.end, g.match});
      break;
    case SplitBehavior::kMergedWithPrevious: {
      bool previous_match = false;
      for (const Seg& g : segs) {
        if (g.match && !previous_match && !pieces.empty()) {
          pieces.back().end = g.end;
        } else {
          pieces.push_back({g.start, g.end, false});
        }
        previous_match = g.match;
      }
      break;
    }
    case SplitBehavior::kMergedWithNext: {
      bool previous_match = false;
      for (size_t k = segs.size(); k-- > 0;) {
        const Seg& g = segs[k];
        if (g.match && !previous_match && !pieces.empty()) {
          pieces.back().start = g.start;
        } else {
          pieces.push_back({g.start, g.end, false});
        }
        previous_match = g.match;
      }
      std::reverse(pieces.begin(), pieces.end());
      break;
    }
    case SplitBehavior::kContiguous: {
      bool previous_match = false;
      for (const Seg& g : segs) {
        if (g.match == previous_match && !pieces.empty()) {
          pieces.back().end = g.end;
        } else {
          pieces.push_back({g.start, g.end, false});
        }
        previous_match = g.match;
      }
      break;
    }
  }
  for (const Piece& p : pieces)
    if (!p.removed && p.end > p.start) out.push_back(s.substr(p.start, p.end - p.start));
}

struct PreTokenizerStep {
  enum class Kind { kSplit, kByteLevel } kind = Kind::kSplit;
  std::shared_ptr<const Regex> regex;  // kSplit; kByteLevel when use_regex
  SplitBehavior behavior = SplitBehavior::kIsolated;
  bool invert = false;
  bool add_prefix_space = false;  // kByteLevel
};

// ---- normalizers ---------------------------------------------------------------------------

enum class UnicodeForm { kNFC, kNFD, kNFKC, kNFKD };

std::string unicode_normalize(const std::string& s, UnicodeForm form) {
#if ORIGAMI_TOKENIZER_ICU
  UErrorCode status = U_ZERO_ERROR;
  const icu::Normalizer2* n = nullptr;
  switch (form) {
    case UnicodeForm::kNFC:
      n = icu::Normalizer2::getNFCInstance(status);
      break;
    case UnicodeForm::kNFD:
      n = icu::Normalizer2::getNFDInstance(status);
      break;
    case UnicodeForm::kNFKC:
      n = icu::Normalizer2::getNFKCInstance(status);
      break;
    case UnicodeForm::kNFKD:
      n = icu::Normalizer2::getNFKDInstance(status);
      break;
  }
  ORIGAMI_CHECK(U_SUCCESS(status), "tokenizer: ICU normalizer unavailable: ", u_errorName(status));
  const icu::UnicodeString out = n->normalize(icu::UnicodeString::fromUTF8(s), status);
  ORIGAMI_CHECK(U_SUCCESS(status), "tokenizer: ICU normalization failed: ", u_errorName(status));
  std::string utf8;
  out.toUTF8String(utf8);
  return utf8;
#else
  (void)form;
  return s;  // unreachable: the loader refuses Unicode normalizers without ICU
#endif
}

// ---- the tokenizer -------------------------------------------------------------------------

struct AddedToken {
  TokenId id = 0;
  std::string content;
  bool single_word = false, lstrip = false, rstrip = false, special = false;
};

struct MergeRule {
  int32_t rank;
  TokenId new_id;
};

class HfBpeTokenizer final : public Tokenizer {
 public:
  explicit HfBpeTokenizer(const std::string& path);

  std::string_view kind() const override { return "bpe"; }
  std::vector<TokenId> encode(std::string_view text, bool add_special) const override;
  std::string decode(std::span<const TokenId> ids, bool skip_special) const override;
  int64_t vocab_size() const override { return static_cast<int64_t>(id_to_token_.size()); }
  std::optional<TokenId> bos_id() const override { return bos_; }
  std::optional<TokenId> eos_id() const override { return eos_; }
  std::string id_to_token(TokenId id) const override {
    check_id(id);
    return id_to_token_[id];
  }
  std::optional<TokenId> token_to_id(std::string_view token) const override {
    if (auto it = added_by_content_.find(std::string(token)); it != added_by_content_.end())
      return added_[it->second].id;
    if (auto it = vocab_.find(std::string(token)); it != vocab_.end()) return it->second;
    return std::nullopt;
  }
  bool is_special(TokenId id) const override {
    return id >= 0 && static_cast<size_t>(id) < special_.size() && special_[id];
  }

 private:
  [[noreturn]] void fail(const std::string& what) const {
    ORIGAMI_FAIL("tokenizer '", path_, "': ", what);
  }
  void check_id(TokenId id) const {
    ORIGAMI_CHECK(id >= 0 && static_cast<size_t>(id) < id_to_token_.size(), "tokenizer '", path_,
                  "': id ", id, " is outside the vocabulary [0, ", id_to_token_.size(), ")");
  }

  void load_model(const json& model);
  void load_added_tokens(const json& added);
  void load_normalizer(const json& n);
  void load_pre_tokenizer(const json& p);
  void load_post_processor(const json& p);
  void load_decoder(const json& d);
  void find_bos_eos();

  void encode_words(std::string piece, std::vector<TokenId>& ids) const;
  void bpe_word(const std::string& word, std::vector<TokenId>& ids) const;
  std::vector<TokenId> merge_word(const std::string& word) const;

  std::string path_;
  // Model.
  std::unordered_map<std::string, TokenId> vocab_;  // byte-level spelling -> id
  std::unordered_map<uint64_t, MergeRule> merges_;  // (left id << 32 | right id) -> rule
  std::array<TokenId, 256> byte_id_{};              // id of each single byte, or -1
  std::optional<TokenId> unk_;
  bool ignore_merges_ = false;
  bool fuse_unk_ = false;
  // Added tokens, by first byte, longest first.
  std::vector<AddedToken> added_;
  std::unordered_map<std::string, size_t> added_by_content_;
  std::array<std::vector<size_t>, 256> added_by_first_byte_;
  // Pipeline.
  std::vector<UnicodeForm> normalizers_;
  std::vector<PreTokenizerStep> pre_;
  std::vector<TokenId> template_prefix_, template_suffix_;
  // Id tables.
  std::vector<std::string> id_to_token_;  // vocabulary spelling (added tokens: their content)
  std::vector<std::string> id_to_bytes_;  // decoded bytes
  std::vector<bool> special_;
  std::optional<TokenId> bos_, eos_;
  // Word -> ids cache (the same words come back all the time).
  mutable std::shared_mutex cache_mutex_;
  mutable std::unordered_map<std::string, std::vector<TokenId>> cache_;
};

std::string type_of(const json& j) {
  if (j.is_object() && j.contains("type") && j["type"].is_string()) return j["type"];
  return "";
}

HfBpeTokenizer::HfBpeTokenizer(const std::string& path) : path_(path) {
  std::ifstream in(path, std::ios::binary);
  ORIGAMI_CHECK(in.good(), "tokenizer: cannot open '", path, "'");
  json root;
  try {
    root = json::parse(in);
  } catch (const json::exception& e) {
    fail(std::string("not valid JSON: ") + e.what());
  }
  try {
    if (!root.is_object()) fail("expected a JSON object at the top level");
    if (!root.contains("model") || !root["model"].is_object())
      fail("has no \"model\" object (is it a Hugging Face tokenizer.json?)");
    load_model(root["model"]);
    if (root.contains("added_tokens")) load_added_tokens(root["added_tokens"]);
    special_.assign(id_to_token_.size(), false);
    for (const AddedToken& t : added_) special_[t.id] = t.special;
    id_to_bytes_.resize(id_to_token_.size());
    for (size_t id = 0; id < id_to_token_.size(); ++id)
      id_to_bytes_[id] = byte_level_to_bytes(id_to_token_[id]);
    for (const AddedToken& t : added_) id_to_bytes_[t.id] = t.content;
    load_normalizer(root.value("normalizer", json()));
    load_pre_tokenizer(root.value("pre_tokenizer", json()));
    load_post_processor(root.value("post_processor", json()));
    load_decoder(root.value("decoder", json()));
    find_bos_eos();
  } catch (const json::exception& e) {
    fail(std::string("unexpected structure: ") + e.what());
  }
}

void HfBpeTokenizer::load_model(const json& model) {
  const std::string type = model.value("type", std::string("BPE"));
  if (type != "BPE")
    fail("model type \"" + type +
         "\" is not supported (only byte-level \"BPE\"; for SentencePiece models use the "
         "tokenizer.model file)");
  if (!model.contains("vocab") || !model["vocab"].is_object())
    fail("model has no \"vocab\" object");
  if (!model.contains("merges") || !model["merges"].is_array())
    fail("model has no \"merges\" array");
  if (model.contains("dropout") && model["dropout"].is_number() && model["dropout"] > 0.0)
    fail("BPE dropout is not supported at inference; set \"dropout\" to null");
  for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"})
    if (model.contains(key) && model[key].is_string() && !model[key].get<std::string>().empty())
      fail(std::string("model.") + key + " is not supported (byte-level BPE does not use it)");
  ignore_merges_ = model.value("ignore_merges", false);
  fuse_unk_ = model.value("fuse_unk", false);

  TokenId max_id = -1;
  for (const auto& [token, id_json] : model["vocab"].items()) {
    if (!id_json.is_number_integer()) fail("model.vocab[\"" + token + "\"] is not an integer id");
    const int64_t id = id_json.get<int64_t>();
    if (id < 0 || id > INT32_MAX) fail("model.vocab[\"" + token + "\"] has a bad id");
    vocab_[token] = static_cast<TokenId>(id);
    max_id = std::max(max_id, static_cast<TokenId>(id));
  }
  id_to_token_.assign(static_cast<size_t>(max_id + 1), std::string());
  for (const auto& [token, id] : vocab_) id_to_token_[id] = token;

  const ByteLevelTable& table = byte_level_table();
  for (int b = 0; b < 256; ++b) {
    const auto it = vocab_.find(table.byte_to_char[b]);
    byte_id_[b] = it == vocab_.end() ? -1 : it->second;
  }
  if (model.contains("unk_token") && model["unk_token"].is_string()) {
    const auto it = vocab_.find(model["unk_token"].get<std::string>());
    if (it == vocab_.end()) fail("model.unk_token is not in model.vocab");
    unk_ = it->second;
  }

  const json& merges = model["merges"];
  merges_.reserve(merges.size());
  for (size_t rank = 0; rank < merges.size(); ++rank) {
    const json& m = merges[rank];
    std::string left, right;
    if (m.is_string()) {  // "left right"
      const std::string s = m.get<std::string>();
      const size_t space = s.find(' ');
      if (space == std::string::npos || s.find(' ', space + 1) != std::string::npos)
        fail("merge " + std::to_string(rank) + " \"" + s +
             "\" is not two tokens separated by one space");
      left = s.substr(0, space);
      right = s.substr(space + 1);
    } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {
      left = m[0].get<std::string>();
      right = m[1].get<std::string>();
    } else {
      fail("merge " + std::to_string(rank) + " is neither \"a b\" nor [\"a\", \"b\"]: " + m.dump());
    }
    const auto l = vocab_.find(left), r = vocab_.find(right), n = vocab_.find(left + right);
    if (l == vocab_.end() || r == vocab_.end())
      fail("merge " + std::to_string(rank) + " (\"" + left + "\", \"" + right +
           "\") references the unknown token \"" + (l == vocab_.end() ? left : right) +
           "\" (not in model.vocab)");
    if (n == vocab_.end())
      fail("merge " + std::to_string(rank) + " (\"" + left + "\", \"" + right +
           "\") produces the unknown token \"" + left + right + "\"");
    const uint64_t key =
        (static_cast<uint64_t>(l->second) << 32) | static_cast<uint32_t>(r->second);
    merges_.emplace(key, MergeRule{static_cast<int32_t>(rank), n->second});  // first rank wins
  }
}

void HfBpeTokenizer::load_added_tokens(const json& added) {
  if (!added.is_array()) fail("\"added_tokens\" is not an array");
  for (const json& a : added) {
    if (!a.is_object() || !a.contains("id") || !a.contains("content") ||
        !a["id"].is_number_integer() || !a["content"].is_string())
      fail("an added token lacks an integer \"id\" or a string \"content\": " + a.dump());
    AddedToken t;
    const int64_t id = a["id"].get<int64_t>();
    if (id < 0 || id > INT32_MAX) fail("added token " + a.dump() + " has a bad id");
    t.id = static_cast<TokenId>(id);
    t.content = a["content"].get<std::string>();
    if (t.content.empty()) fail("added token " + std::to_string(id) + " has empty content");
    t.single_word = a.value("single_word", false);
    t.lstrip = a.value("lstrip", false);
    t.rstrip = a.value("rstrip", false);
    t.special = a.value("special", false);
    if (static_cast<size_t>(t.id) >= id_to_token_.size()) id_to_token_.resize(t.id + 1);
    id_to_token_[t.id] = t.content;
    added_by_content_[t.content] = added_.size();
    added_.push_back(std::move(t));
  }
  for (size_t k = 0; k < added_.size(); ++k)
    added_by_first_byte_[static_cast<unsigned char>(added_[k].content[0])].push_back(k);
  for (auto& list : added_by_first_byte_)
    std::stable_sort(list.begin(), list.end(), [&](size_t a, size_t b) {
      return added_[a].content.size() > added_[b].content.size();
    });
}

void HfBpeTokenizer::load_normalizer(const json& n) {
  if (n.is_null()) return;
  const std::string type = type_of(n);
  if (type == "Sequence") {
    for (const json& sub : n.at("normalizers")) load_normalizer(sub);
    return;
  }
  static const std::unordered_map<std::string, UnicodeForm> forms = {{"NFC", UnicodeForm::kNFC},
                                                                     {"NFD", UnicodeForm::kNFD},
                                                                     {"NFKC", UnicodeForm::kNFKC},
                                                                     {"NFKD", UnicodeForm::kNFKD}};
  if (auto it = forms.find(type); it != forms.end()) {
    if (!ORIGAMI_TOKENIZER_ICU)
      fail("normalizer \"" + type +
           "\" needs ICU, and this build has none (install libicu-dev and reconfigure)");
    normalizers_.push_back(it->second);
    return;
  }
  fail("normalizer type \"" + type +
       "\" is not supported (supported: NFC, NFD, NFKC, NFKD, "
       "Sequence, null)");
}

void HfBpeTokenizer::load_pre_tokenizer(const json& p) {
  if (p.is_null()) return;
  const std::string type = type_of(p);
  if (type == "Sequence") {
    for (const json& sub : p.at("pretokenizers")) load_pre_tokenizer(sub);
    return;
  }
  PreTokenizerStep step;
  if (type == "ByteLevel") {
    step.kind = PreTokenizerStep::Kind::kByteLevel;
    step.add_prefix_space = p.value("add_prefix_space", false);
    if (p.value("use_regex", true))
      step.regex = std::make_shared<Regex>(kGpt2Pattern, false, path_);
  } else if (type == "Split") {
    const json& pattern = p.at("pattern");
    if (pattern.contains("Regex")) {
      step.regex = std::make_shared<Regex>(pattern["Regex"].get<std::string>(), false, path_);
    } else if (pattern.contains("String")) {
      step.regex = std::make_shared<Regex>(pattern["String"].get<std::string>(), true, path_);
    } else {
      fail("Split pre-tokenizer pattern is neither {\"Regex\": ...} nor {\"String\": ...}");
    }
    static const std::unordered_map<std::string, SplitBehavior> behaviors = {
        {"Removed", SplitBehavior::kRemoved},
        {"Isolated", SplitBehavior::kIsolated},
        {"MergedWithPrevious", SplitBehavior::kMergedWithPrevious},
        {"MergedWithNext", SplitBehavior::kMergedWithNext},
        {"Contiguous", SplitBehavior::kContiguous}};
    const std::string behavior = p.value("behavior", std::string("Isolated"));
    const auto it = behaviors.find(behavior);
    if (it == behaviors.end()) fail("Split pre-tokenizer behavior \"" + behavior + "\" is unknown");
    step.behavior = it->second;
    step.invert = p.value("invert", false);
  } else if (type == "Digits") {
    step.regex = std::make_shared<Regex>(R"(\p{N})", false, path_);
    step.behavior =
        p.value("individual_digits", false) ? SplitBehavior::kIsolated : SplitBehavior::kContiguous;
  } else {
    fail("pre-tokenizer type \"" + type +
         "\" is not supported (supported: ByteLevel, Split, Digits, Sequence)");
  }
  pre_.push_back(std::move(step));
}

void HfBpeTokenizer::load_post_processor(const json& p) {
  if (p.is_null()) return;
  const std::string type = type_of(p);
  if (type == "Sequence") {
    for (const json& sub : p.at("processors")) load_post_processor(sub);
    return;
  }
  if (type == "ByteLevel") return;  // only adjusts offsets
  if (type == "TemplateProcessing") {
    template_prefix_.clear();
    template_suffix_.clear();
    bool seen_sequence = false;
    const json& specials = p.value("special_tokens", json::object());
    for (const json& item : p.at("single")) {
      if (item.contains("Sequence")) {
        seen_sequence = true;
      } else if (item.contains("SpecialToken")) {
        const std::string name = item["SpecialToken"].at("id");
        if (!specials.contains(name))
          fail("post_processor template names the special token \"" + name +
               "\" which is not in its special_tokens");
        for (const json& id : specials[name].at("ids"))
          (seen_sequence ? template_suffix_ : template_prefix_).push_back(id.get<TokenId>());
      } else {
        fail("post_processor template item " + item.dump() + " is not understood");
      }
    }
    return;
  }
  if (type == "RobertaProcessing" || type == "BertProcessing") {
    template_prefix_ = {p.at("cls").at(1).get<TokenId>()};
    template_suffix_ = {p.at("sep").at(1).get<TokenId>()};
    return;
  }
  fail("post_processor type \"" + type +
       "\" is not supported (supported: TemplateProcessing, ByteLevel, RobertaProcessing, "
       "BertProcessing, Sequence)");
}

void HfBpeTokenizer::load_decoder(const json& d) {
  bool byte_level = false;
  for (const PreTokenizerStep& s : pre_) byte_level |= s.kind == PreTokenizerStep::Kind::kByteLevel;
  if (!byte_level)
    fail(
        "only byte-level BPE is supported, and the pre_tokenizer has no ByteLevel step (for a "
        "SentencePiece-style model use its tokenizer.model)");
  if (d.is_null()) return;
  const std::string type = type_of(d);
  if (type == "ByteLevel") return;
  if (type == "Sequence") {
    for (const json& sub : d.at("decoders")) load_decoder(sub);
    return;
  }
  fail("decoder type \"" + type +
       "\" is not supported with a byte-level model (expected ByteLevel)");
}

void HfBpeTokenizer::find_bos_eos() {
  // tokenizer_config.json beside the file is authoritative when present.
  const std::filesystem::path config =
      std::filesystem::path(path_).parent_path() / "tokenizer_config.json";
  auto lookup = [&](const json& v) -> std::optional<TokenId> {
    std::string name;
    if (v.is_string())
      name = v.get<std::string>();
    else if (v.is_object() && v.contains("content") && v["content"].is_string())
      name = v["content"];
    else
      return std::nullopt;
    return token_to_id(name);
  };
  if (std::filesystem::exists(config)) {
    std::ifstream in(config);
    const json c = json::parse(in, nullptr, /*allow_exceptions=*/false);
    if (c.is_object()) {
      if (c.contains("bos_token")) bos_ = lookup(c["bos_token"]);
      if (c.contains("eos_token")) eos_ = lookup(c["eos_token"]);
    }
  }
  // Else: the template's leading token is the BOS, then the usual names.
  if (!bos_ && !template_prefix_.empty()) bos_ = template_prefix_.front();
  if (!eos_ && !template_suffix_.empty()) eos_ = template_suffix_.back();
  for (const char* name : {"<|begin_of_text|>", "<s>", "<|startoftext|>", "<bos>"})
    if (!bos_) bos_ = added_by_content_.count(name) ? token_to_id(name) : std::nullopt;
  for (const char* name : {"<|end_of_text|>", "<|endoftext|>", "</s>", "<eos>", "<|im_end|>"})
    if (!eos_) eos_ = added_by_content_.count(name) ? token_to_id(name) : std::nullopt;
}

// ---- encoding ------------------------------------------------------------------------------

std::vector<TokenId> HfBpeTokenizer::encode(std::string_view text, bool add_special) const {
  check_utf8(text, path_);
  std::vector<TokenId> ids;
  ids.reserve(text.size() / 3 + 4);
  if (add_special) ids.insert(ids.end(), template_prefix_.begin(), template_prefix_.end());

  // 1. Cut out added tokens, leftmost-longest.
  auto is_word_byte = [](char c) {
    const auto u = static_cast<unsigned char>(c);
    return u >= 0x80 || std::isalnum(u) || c == '_';
  };
  auto is_space = [](char c) {
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
  };
  size_t piece_start = 0;  // start of the text not yet encoded
  size_t pos = 0;
  while (pos < text.size()) {
    const AddedToken* hit = nullptr;
    for (size_t k : added_by_first_byte_[static_cast<unsigned char>(text[pos])]) {
      const AddedToken& t = added_[k];
      if (text.compare(pos, t.content.size(), t.content) != 0) continue;
      const size_t end = pos + t.content.size();
      if (t.single_word && ((pos > 0 && is_word_byte(text[pos - 1])) ||
                            (end < text.size() && is_word_byte(text[end]))))
        continue;
      hit = &t;
      break;
    }
    if (hit == nullptr) {
      ++pos;
      continue;
    }
    size_t start = pos, end = pos + hit->content.size();
    if (hit->lstrip)
      while (start > piece_start && is_space(text[start - 1])) --start;
    if (hit->rstrip)
      while (end < text.size() && is_space(text[end])) ++end;
    if (start > piece_start)
      encode_words(std::string(text.substr(piece_start, start - piece_start)), ids);
    ids.push_back(hit->id);
    piece_start = pos = end;
  }
  if (piece_start < text.size()) encode_words(std::string(text.substr(piece_start)), ids);

  if (add_special) ids.insert(ids.end(), template_suffix_.begin(), template_suffix_.end());
  return ids;
}

// Steps 2-4 on a piece of text free of added tokens.
void HfBpeTokenizer::encode_words(std::string piece, std::vector<TokenId>& ids) const {
  for (UnicodeForm form : normalizers_) piece = unicode_normalize(piece, form);
  std::vector<std::string> words{std::move(piece)}, next;
  for (const PreTokenizerStep& step : pre_) {
    next.clear();
    for (std::string& w : words) {
      if (step.kind == PreTokenizerStep::Kind::kByteLevel && step.add_prefix_space &&
          (w.empty() || w[0] != ' '))
        w.insert(w.begin(), ' ');
      if (step.regex) {
        split_by(*step.regex, step.behavior, step.invert, w, next);
      } else if (!w.empty()) {
        next.push_back(std::move(w));
      }
    }
    words.swap(next);
  }
  for (const std::string& w : words)
    if (!w.empty()) bpe_word(w, ids);
}

void HfBpeTokenizer::bpe_word(const std::string& word, std::vector<TokenId>& ids) const {
  {
    std::shared_lock lock(cache_mutex_);
    if (auto it = cache_.find(word); it != cache_.end()) {
      ids.insert(ids.end(), it->second.begin(), it->second.end());
      return;
    }
  }
  std::vector<TokenId> out = merge_word(word);
  ids.insert(ids.end(), out.begin(), out.end());
  std::unique_lock lock(cache_mutex_);
  if (cache_.size() >= 100000) cache_.clear();  // bounded memory on adversarial input
  cache_.emplace(word, std::move(out));
}

// BPE on one word, exactly as tokenizers' Word::merge_all: repeatedly merge the adjacent pair of
// lowest rank (leftmost on ties), re-checking heap entries that went stale.
std::vector<TokenId> HfBpeTokenizer::merge_word(const std::string& word) const {
  if (ignore_merges_) {
    std::string spelled;
    for (char c : word) spelled += byte_level_table().byte_to_char[static_cast<unsigned char>(c)];
    if (auto it = vocab_.find(spelled); it != vocab_.end()) return {it->second};
  }
  struct Symbol {
    TokenId id;
    int prev, next;
    bool alive;
  };
  std::vector<Symbol> sym;
  sym.reserve(word.size());
  bool previous_unknown = false;
  for (char c : word) {
    TokenId id = byte_id_[static_cast<unsigned char>(c)];
    if (id < 0) {
      if (!unk_) {
        char hex[8];
        std::snprintf(hex, sizeof hex, "0x%02X",
                      static_cast<unsigned>(static_cast<unsigned char>(c)));
        fail(std::string("byte ") + hex +
             " has no token in model.vocab and the model has no unk_token");
      }
      const bool fuse = fuse_unk_ && previous_unknown;
      previous_unknown = true;
      if (fuse) continue;
      id = *unk_;
    } else {
      previous_unknown = false;
    }
    const int n = static_cast<int>(sym.size());
    sym.push_back({id, n - 1, n + 1, true});
  }
  if (!sym.empty()) sym.back().next = -1;

  struct Candidate {
    int32_t rank;
    int pos;
    TokenId new_id;
    bool operator<(const Candidate& o) const {  // priority_queue pops the largest
      return rank != o.rank ? rank > o.rank : pos > o.pos;
    }
  };
  auto rule = [&](TokenId a, TokenId b) -> const MergeRule* {
    const auto it = merges_.find((static_cast<uint64_t>(a) << 32) | static_cast<uint32_t>(b));
    return it == merges_.end() ? nullptr : &it->second;
  };
  std::priority_queue<Candidate> queue;
  for (int i = 0; i + 1 < static_cast<int>(sym.size()); ++i)
    if (const MergeRule* r = rule(sym[i].id, sym[i + 1].id)) queue.push({r->rank, i, r->new_id});
  while (!queue.empty()) {
    const Candidate top = queue.top();
    queue.pop();
    Symbol& cur = sym[top.pos];
    if (!cur.alive || cur.next < 0) continue;
    const int right = cur.next;
    const MergeRule* r = rule(cur.id, sym[right].id);
    if (r == nullptr || r->new_id != top.new_id) continue;
    cur.id = top.new_id;
    cur.next = sym[right].next;
    sym[right].alive = false;
    if (cur.next >= 0) sym[cur.next].prev = top.pos;
    if (cur.prev >= 0)
      if (const MergeRule* p = rule(sym[cur.prev].id, cur.id))
        queue.push({p->rank, cur.prev, p->new_id});
    if (cur.next >= 0)
      if (const MergeRule* n = rule(cur.id, sym[cur.next].id))
        queue.push({n->rank, top.pos, n->new_id});
  }
  std::vector<TokenId> out;
  for (const Symbol& s : sym)
    if (s.alive) out.push_back(s.id);
  return out;
}

std::string HfBpeTokenizer::decode(std::span<const TokenId> ids, bool skip_special) const {
  std::string out;
  for (TokenId id : ids) {
    check_id(id);
    if (skip_special && special_[id]) continue;
    out += id_to_bytes_[id];
  }
  return out;
}

}  // namespace

std::unique_ptr<Tokenizer> load_hf_tokenizer(const std::string& tokenizer_json_path) {
  ORIGAMI_CHECK(std::filesystem::is_regular_file(tokenizer_json_path), "tokenizer: '",
                tokenizer_json_path, "' does not exist or is not a file");
  return std::make_unique<HfBpeTokenizer>(tokenizer_json_path);
}

}  // namespace origami
