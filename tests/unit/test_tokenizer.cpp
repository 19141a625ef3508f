// Tokenizers: the byte tokenizer, byte-level BPE from tokenizer.json, SentencePiece.
//
// Tokenizer: hand-built files whose ids are worked out by hand, and every bad-input path.
// TokenizerGolden: tokenizers trained by tests/golden/tokenizer_reference.py with the Hugging Face
// `tokenizers` library (GPT-2, Llama-3 and Qwen2 pre-tokenization, a SentencePiece Unigram model);
// ids must match that library exactly on a varied text set, and decode(encode(x)) must give x back.
#include "runtime/tokenizer.h"

#include <gtest/gtest.h>
#include <stdlib.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>
#include <thread>

#include "runtime/error.h"

namespace origami {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using Ids = std::vector<TokenId>;

// A fresh temporary folder, removed at the end of the scope.
class TempDir {
 public:
  TempDir() {
    char tmpl[] = "/tmp/origami_tokenizer_XXXXXX";
    const char* d = mkdtemp(tmpl);
    if (d == nullptr) throw std::runtime_error("cannot create a temporary folder");
    path_ = d;
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  const fs::path& path() const { return path_; }
  std::string write(const std::string& name, const std::string& content) const {
    const fs::path p = path_ / name;
    fs::create_directories(p.parent_path());
    std::ofstream(p, std::ios::binary) << content;
    return p.string();
  }

 private:
  fs::path path_;
};

// Expects `fn` to throw origami::Error whose message contains every one of `pieces`.
template <typename Fn>
void expect_error(Fn&& fn, std::initializer_list<std::string> pieces) {
  try {
    fn();
    ADD_FAILURE() << "expected origami::Error";
  } catch (const Error& e) {
    const std::string what = e.what();
    for (const std::string& p : pieces)
      EXPECT_NE(what.find(p), std::string::npos) << "message lacks \"" << p << "\": " << what;
  }
}

// ---- byte tokenizer --------------------------------------------------------------------------

TEST(Tokenizer, ByteTokenizerIsTheBytes) {
  auto tok = load_tokenizer("byte");
  EXPECT_EQ(tok->kind(), "byte");
  EXPECT_EQ(tok->vocab_size(), 258);
  EXPECT_EQ(tok->bos_id(), 256);
  EXPECT_EQ(tok->eos_id(), 257);
  const std::string text = "h\xC3\xA9\n";  // "hé\n"
  const std::string with_nul("a\0b\xFF", 4);
  EXPECT_EQ(tok->encode(with_nul, false), (Ids{'a', 0, 'b', 255}));
  EXPECT_EQ(tok->encode(with_nul, true), (Ids{256, 'a', 0, 'b', 255}));
  EXPECT_EQ(tok->decode(tok->encode(with_nul, true), true), with_nul);
  EXPECT_EQ(tok->decode(Ids{256, 'h', 'i', 257}), "<bos>hi<eos>");
  EXPECT_EQ(tok->decode(tok->encode(text, false)), text);
  EXPECT_EQ(tok->id_to_token(10), "<0x0A>");
  EXPECT_EQ(tok->token_to_id("<0x0A>"), 10);
  EXPECT_EQ(tok->token_to_id("<eos>"), 257);
  EXPECT_EQ(tok->token_to_id("zz"), std::nullopt);
  EXPECT_TRUE(tok->is_special(256));
  EXPECT_FALSE(tok->is_special(65));
  expect_error([&] { tok->decode(Ids{258}); }, {"byte tokenizer", "258", "outside"});
  expect_error([&] { tok->id_to_token(-1); }, {"-1"});
}

// ---- hand-built byte-level BPE ---------------------------------------------------------------

// vocab: a b c Ġ(space) ab bc abc Ġa, merges by rank: "b c", "a b", "a bc", "Ġ a"; <s> added.
json tiny_bpe() {
  return json::parse(R"({
    "version": "1.0",
    "added_tokens": [{"id": 8, "content": "<s>", "single_word": false, "lstrip": false,
                      "rstrip": false, "normalized": false, "special": true}],
    "normalizer": null,
    "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true,
                      "use_regex": true},
    "post_processor": {"type": "TemplateProcessing",
                       "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}},
                                  {"Sequence": {"id": "A", "type_id": 0}}],
                       "pair": [], "special_tokens": {"<s>": {"id": "<s>", "ids": [8],
                                                              "tokens": ["<s>"]}}},
    "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true,
                "use_regex": true},
    "model": {"type": "BPE", "dropout": null, "unk_token": null,
              "continuing_subword_prefix": null, "end_of_word_suffix": null,
              "fuse_unk": false, "byte_fallback": false,
              "vocab": {"a": 0, "b": 1, "c": 2, "Ġ": 3, "ab": 4, "bc": 5, "abc": 6, "Ġa": 7},
              "merges": ["b c", "a b", "a bc", "Ġ a"]}
  })");
}

TEST(Tokenizer, BpeMergesByRank) {
  TempDir dir;
  auto tok = load_tokenizer(dir.write("tokenizer.json", tiny_bpe().dump()));
  EXPECT_EQ(tok->kind(), "bpe");
  EXPECT_EQ(tok->vocab_size(), 9);
  EXPECT_EQ(tok->encode("abc", false), (Ids{6}));  // b+c (rank 0), then a+bc
  EXPECT_EQ(tok->encode("ab", false), (Ids{4}));
  EXPECT_EQ(tok->encode("abab", false), (Ids{4, 4}));
  EXPECT_EQ(tok->encode("cab", false), (Ids{2, 4}));
  // " abc" is one GPT-2 word: b+c, a+bc come before Ġ+a, leaving Ġ alone.
  EXPECT_EQ(tok->encode(" abc", false), (Ids{3, 6}));
  EXPECT_EQ(tok->encode(" a", false), (Ids{7}));  // Ġa
  EXPECT_EQ(tok->encode("abc ab", false), (Ids{6, 3, 4}));
  EXPECT_EQ(tok->encode("abc", true), (Ids{8, 6}));  // template adds <s>
  EXPECT_EQ(tok->encode("ab<s>c", false), (Ids{4, 8, 2}));
  EXPECT_EQ(tok->decode(Ids{8, 6, 3, 4}), "<s>abc ab");
  EXPECT_EQ(tok->decode(Ids{8, 6, 3, 4}, /*skip_special=*/true), "abc ab");
  EXPECT_EQ(tok->bos_id(), 8);
  EXPECT_EQ(tok->eos_id(), std::nullopt);
  EXPECT_EQ(tok->id_to_token(7), "Ġa");
  EXPECT_EQ(tok->token_to_id("Ġa"), 7);
  EXPECT_EQ(tok->token_to_id("<s>"), 8);
  EXPECT_TRUE(tok->is_special(8));
  EXPECT_FALSE(tok->is_special(6));
  // Bytes without a token and no unk_token: a clear error.
  expect_error([&] { tok->encode("abz", false); }, {"tokenizer.json", "0x", "unk_token"});
  expect_error([&] { tok->encode("a\xFF", false); }, {"tokenizer.json", "not valid UTF-8"});
  expect_error([&] { tok->decode(Ids{9}); }, {"tokenizer.json", "9", "outside"});
}

TEST(Tokenizer, BpeMergesInPairFormAndSplitRegexFromFile) {
  json j = tiny_bpe();
  j["model"]["merges"] = json::parse(R"([["b", "c"], ["a", "b"], ["a", "bc"], ["Ġ", "a"]])");
  // Llama-3 style: the regex comes from a Split step; ByteLevel only maps bytes.
  j["pre_tokenizer"] = json::parse(R"({"type": "Sequence", "pretokenizers": [
      {"type": "Split", "pattern": {"Regex": "[^\\s]+|\\s+"}, "behavior": "Isolated",
       "invert": false},
      {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}]})");
  TempDir dir;
  auto tok = load_tokenizer(dir.write("t.json", j.dump()));
  EXPECT_EQ(tok->encode(" abc", false), (Ids{3, 6}));  // " " and "abc" are separate words
  EXPECT_EQ(tok->encode("abc  ab", false), (Ids{6, 3, 3, 4}));

  // Removed behaviour drops the matches; invert keeps them and drops the rest.
  j["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = "\\s+";
  j["pre_tokenizer"]["pretokenizers"][0]["behavior"] = "Removed";
  auto removed = load_tokenizer(dir.write("removed.json", j.dump()));
  EXPECT_EQ(removed->encode("ab  c a", false), (Ids{4, 2, 0}));
  j["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = "[ab]+";
  j["pre_tokenizer"]["pretokenizers"][0]["invert"] = true;
  auto inverted = load_tokenizer(dir.write("inverted.json", j.dump()));
  EXPECT_EQ(inverted->encode("abcab", false), (Ids{4, 4}));  // the complement "c" is removed
}

// ignore_merges (Llama-3): a word that is itself in the vocabulary is one token, whatever the
// merges would make of it; unk_token with fuse_unk: runs of unknown bytes become one unk.
TEST(Tokenizer, BpeIgnoreMergesAndFusedUnknown) {
  json j = tiny_bpe();
  j["model"]["vocab"]["bca"] = 9;
  j["model"]["vocab"]["<unk>"] = 10;
  TempDir dir;
  auto plain = load_tokenizer(dir.write("plain.json", j.dump()));
  EXPECT_EQ(plain->encode("bca", false), (Ids{5, 0}));
  j["model"]["ignore_merges"] = true;
  j["model"]["unk_token"] = "<unk>";
  j["model"]["fuse_unk"] = true;
  auto tok = load_tokenizer(dir.write("ignore.json", j.dump()));
  EXPECT_EQ(tok->encode("bca", false), (Ids{9}));
  EXPECT_EQ(tok->encode("bcab", false), (Ids{5, 4}));  // not in the vocabulary: merged as usual
  EXPECT_EQ(tok->encode("azzc", false), (Ids{0, 10, 2}));
  j["model"]["fuse_unk"] = false;
  auto unfused = load_tokenizer(dir.write("unfused.json", j.dump()));
  EXPECT_EQ(unfused->encode("azzc", false), (Ids{0, 10, 10, 2}));
}

// ---- hand-built SentencePiece models (protobuf wire format written here) ----------------------

std::string pb_varint(uint64_t v) {
  std::string out;
  do {
    out.push_back(static_cast<char>((v & 0x7F) | (v > 0x7F ? 0x80 : 0)));
    v >>= 7;
  } while (v != 0);
  return out;
}
std::string pb_int(int field, int64_t v) {
  return pb_varint(uint64_t(field) << 3) + pb_varint(static_cast<uint64_t>(v));
}
std::string pb_bytes(int field, const std::string& b) {
  return pb_varint(uint64_t(field) << 3 | 2) + pb_varint(b.size()) + b;
}
std::string pb_float(int field, float f) {
  std::string out = pb_varint(uint64_t(field) << 3 | 5);
  char raw[4];
  std::memcpy(raw, &f, 4);
  return out + std::string(raw, 4);
}

struct SpPiece {
  std::string text;
  float score;
  int type;  // 1 normal, 2 unknown, 3 control, 6 byte
};

// ModelProto{pieces = 1, trainer_spec = 2 {model_type = 3}, normalizer_spec = 3 {name = 1,
// precompiled_charsmap = 2, add_dummy_prefix = 3, remove_extra_whitespaces = 4}}.
std::string sp_model(const std::vector<SpPiece>& pieces, int model_type,
                     const std::string& charsmap = "") {
  std::string out;
  for (const SpPiece& p : pieces)
    out += pb_bytes(1, pb_bytes(1, p.text) + pb_float(2, p.score) + pb_int(3, p.type));
  out += pb_bytes(2, pb_int(3, model_type));
  std::string norm =
      pb_bytes(1, charsmap.empty() ? "identity" : "nmt_nfkc") + pb_int(3, 1) + pb_int(4, 0);
  if (!charsmap.empty()) norm += pb_bytes(2, charsmap);
  return out + pb_bytes(3, norm);
}

const std::vector<SpPiece> kSpPieces = {
    {"<unk>", 0, 2}, {"<s>", 0, 3}, {"</s>", 0, 3}, {"a", -5, 1},    {"b", -6, 1},
    {"c", -7, 1},    {"▁", -8, 1},  {"ab", -1, 1},  {"bc", -0.5, 1}, {"▁a", -3, 1}};

TEST(Tokenizer, SentencePieceUnigramViterbi) {
  TempDir dir;
  auto tok = load_tokenizer(dir.write("u.model", sp_model(kSpPieces, 1)));
  EXPECT_EQ(tok->kind(), "sentencepiece");
  EXPECT_EQ(tok->vocab_size(), 10);
  // "▁abc": ▁a + bc = -3.5 beats ▁ + a + bc = -13.5, ▁ + ab + c = -16, ...
  EXPECT_EQ(tok->encode("abc", false), (Ids{9, 8}));
  EXPECT_EQ(tok->encode("abc", true), (Ids{1, 9, 8}));
  // "▁cab": ▁(-8) c(-7) ab(-1) = -16 beats ▁ c a b; no unknown characters.
  EXPECT_EQ(tok->encode("cab", false), (Ids{6, 5, 7}));
  // "x" has no piece: <unk> (one for the run "xx"), no byte fallback in this model.
  EXPECT_EQ(tok->encode("xxa", false), (Ids{6, 0, 3}));
  EXPECT_EQ(tok->decode(Ids{1, 9, 8, 6, 3}), "<s>abc a");
  EXPECT_EQ(tok->decode(Ids{1, 9, 8, 6, 3}, /*skip_special=*/true), "abc a");
  EXPECT_EQ(tok->bos_id(), 1);
  EXPECT_EQ(tok->eos_id(), 2);
  EXPECT_EQ(tok->token_to_id("▁a"), 9);
  EXPECT_EQ(tok->token_to_id("zz"), std::nullopt);
  EXPECT_TRUE(tok->is_special(0));
  EXPECT_FALSE(tok->is_special(9));
}

TEST(Tokenizer, SentencePieceBpeMergesByScore) {
  TempDir dir;
  auto tok = load_tokenizer(dir.write("b.model", sp_model(kSpPieces, 2)));
  // ▁ a b c: bc (-0.5) first, then ▁a (-3); "▁abc" and "abc" are not pieces.
  EXPECT_EQ(tok->encode("abc", false), (Ids{9, 8}));
  // ▁ a b a b: ab (-1) twice, leftmost first; "▁ab" is not a piece, so ▁ stays alone.
  EXPECT_EQ(tok->encode("abab", false), (Ids{6, 7, 7}));
  EXPECT_EQ(tok->decode(tok->encode("abab cab", true), true), "abab cab");
}

TEST(Tokenizer, LoadFailuresNameTheFileAndTheProblem) {
  TempDir dir;
  expect_error([&] { load_tokenizer((dir.path() / "missing.json").string()); },
               {"missing.json", "does not exist"});
  expect_error([&] { load_tokenizer(dir.path().string()); },
               {"neither tokenizer.json nor tokenizer.model"});
  expect_error([&] { load_tokenizer(dir.write("vocab.txt", "a\n")); },
               {"vocab.txt", "cannot tell"});
  expect_error([&] { load_tokenizer(dir.write("broken.json", "{\"model\": [1, 2")); },
               {"broken.json", "not valid JSON"});

  auto with = [&](const std::string& name, auto change) {
    json j = tiny_bpe();
    change(j);
    return dir.write(name, j.dump());
  };
  expect_error([&] { load_tokenizer(with("nomodel.json", [](json& j) { j.erase("model"); })); },
               {"nomodel.json", "no \"model\""});
  expect_error(
      [&] {
        load_tokenizer(with("wordpiece.json", [](json& j) { j["model"]["type"] = "WordPiece"; }));
      },
      {"wordpiece.json", "WordPiece", "not supported"});
  expect_error(
      [&] { load_tokenizer(with("novocab.json", [](json& j) { j["model"].erase("vocab"); })); },
      {"novocab.json", "vocab"});
  expect_error(
      [&] {
        load_tokenizer(
            with("unknown_merge.json", [](json& j) { j["model"]["merges"].push_back("a zz"); }));
      },
      {"unknown_merge.json", "merge 4", "unknown token \"zz\""});
  expect_error(
      [&] {
        load_tokenizer(
            with("unknown_result.json", [](json& j) { j["model"]["merges"].push_back("c c"); }));
      },
      {"unknown_result.json", "produces the unknown token \"cc\""});
  expect_error(
      [&] {
        load_tokenizer(
            with("bad_merge.json", [](json& j) { j["model"]["merges"].push_back("abc"); }));
      },
      {"bad_merge.json", "merge 4", "two tokens"});
  expect_error(
      [&] {
        load_tokenizer(with("bad_regex.json", [](json& j) {
          j["pre_tokenizer"] = {
              {"type", "Sequence"},
              {"pretokenizers",
               json::array(
                   {{{"type", "Split"}, {"pattern", {{"Regex", "(ab"}}}, {"behavior", "Isolated"}},
                    tiny_bpe()["pre_tokenizer"]})}};
        }));
      },
      {"bad_regex.json", "regex", "(ab"});
  expect_error(
      [&] {
        load_tokenizer(with("metaspace.json", [](json& j) {
          j["pre_tokenizer"] = {{"type", "Metaspace"}, {"replacement", "▁"}};
        }));
      },
      {"metaspace.json", "Metaspace", "not supported"});
  expect_error(
      [&] {
        load_tokenizer(with("lowercase.json", [](json& j) {
          j["normalizer"] = {{"type", "Lowercase"}};
        }));
      },
      {"lowercase.json", "Lowercase"});
  expect_error(
      [&] {
        load_tokenizer(with("no_bytelevel.json", [](json& j) { j["pre_tokenizer"] = nullptr; }));
      },
      {"no_bytelevel.json", "byte-level"});
  expect_error([&] { load_tokenizer(dir.write("garbage.model", "not a protobuf at all")); },
               {"garbage.model", "SentencePiece"});
  expect_error([&] { load_tokenizer(dir.write("word.model", sp_model(kSpPieces, 3))); },
               {"word.model", "model type 3", "not supported"});
  expect_error([&] { load_tokenizer(dir.write("nfkc.model", sp_model(kSpPieces, 1, "\x01\x02"))); },
               {"nfkc.model", "nmt_nfkc", "precompiled character map"});
  expect_error(
      [&] {
        load_tokenizer(dir.write("nounk.model", sp_model({{"a", -1, 1}, {"b", -2, 1}}, 1)));
      },
      {"nounk.model", "exactly one <unk>"});
  const std::string whole = sp_model(kSpPieces, 1);
  expect_error([&] { load_tokenizer(dir.write("cut.model", whole.substr(0, whole.size() - 3))); },
               {"cut.model", "truncated"});
}

// ---- golden: against Hugging Face `tokenizers` ------------------------------------------------

std::vector<std::string> golden_texts() {
  return {
      "",
      "Hello world",
      "Hello, world! How are you today?",
      "I'm sure you're right; we'll see, they've said, he'd go, it's done.",
      "I'M LOUD AND IT'S FINE, WE'LL SHOUT",
      "  leading spaces",
      "trailing spaces   ",
      "multiple     spaces   between words",
      "tabs\tand\t\ttabs",
      "the\tmodel\ttensor\tgradient,the(model)",
      "line1\nline2\n\nline4\n",
      "windows\r\nline endings\r\n\r\n",
      "\n\n\n",
      "   \t  \n ",
      "1234567890",
      "12345678901234567890 and 3.14159265358979 and 1,000,000",
      "x = 0x1F + 42;",
      "日本語のテキストです。",
      "中文测试：你好，世界！模型学习",
      "Emoji 🙂🚀 👍🏽 and a flag 🇫🇷!",
      "naïve café résumé Straße über déjà vu",
      "cafe\u0301 with a combining accent, n\u0303 too",
      "שלום עולם",
      "مرحبا بالعالم",
      "Привет, мир!",
      "mixed: abc日本def 123αβγ x²",
      "special <|endoftext|> inside",
      "<|endoftext|><|endoftext|>",
      "start<|im_start|>user\nhi<|im_end|>",
      "<|begin_of_text|>hello<|eot_id|>",
      "a <mask> b",
      "code: def f(x):\n    return x ** 2  # square\n",
      "NBSP\u00a0here and\u3000ideographic space",
      "symbols !@#$%^&*()_+-=[]{}|;':\",./<>?`~",
      "https://example.com/path?q=1&r=2",
      std::string(300, 'a') + " " + std::string(40, '7'),
  };
}

struct GoldenCase {
  std::string name, kind, file;
  std::vector<Ids> ids, ids_special;
  std::vector<double> scores;  // per id (sentencepiece)
  std::vector<std::optional<std::string>> decoded, roundtrip;
};

class TokenizerGolden : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new TempDir();
    json texts = golden_texts();
    dir_->write("texts.json", texts.dump());
    const fs::path log = dir_->path() / "log.txt";
    const std::string cmd = std::string("\"") + ORIGAMI_PYTHON + "\" \"" + ORIGAMI_SOURCE_DIR +
                            "/tests/golden/tokenizer_reference.py\" \"" +
                            (dir_->path() / "texts.json").string() + "\" \"" +
                            dir_->path().string() + "\" > \"" + log.string() + "\" 2>&1";
    if (std::system(cmd.c_str()) != 0) {
      std::stringstream text;
      text << std::ifstream(log).rdbuf();
      error_ = "tokenizer reference failed (" + cmd + "):\n" + text.str();
      return;
    }
    const json ref = json::parse(std::ifstream(dir_->path() / "reference.json"));
    texts_ = ref["texts"].get<std::vector<std::string>>();
    auto opt_strings = [](const json& j, const char* key) {
      std::vector<std::optional<std::string>> out;
      if (j.contains(key))
        for (const json& s : j[key])
          out.push_back(s.is_null() ? std::nullopt
                                    : std::optional<std::string>(s.get<std::string>()));
      return out;
    };
    for (const json& c : ref["cases"]) {
      GoldenCase g;
      g.name = c["name"];
      g.kind = c["kind"];
      g.file = c["file"];
      g.ids = c["ids"].get<std::vector<Ids>>();
      if (c.contains("ids_special")) g.ids_special = c["ids_special"].get<std::vector<Ids>>();
      if (c.contains("scores")) g.scores = c["scores"].get<std::vector<double>>();
      g.decoded = opt_strings(c, "decoded");
      g.roundtrip = opt_strings(c, "expected_roundtrip");
      cases_[g.name] = g;
    }
  }
  static void TearDownTestSuite() {
    delete dir_;
    dir_ = nullptr;
  }

  const GoldenCase& reference(const std::string& name) {
    if (!error_.empty()) throw std::runtime_error(error_);
    return cases_.at(name);
  }

  // Two Unigram segmentations that spell the same pieces with the same total score (within float
  // rounding) are both optimal: SentencePiece and `tokenizers` may break such ties differently.
  static bool same_pieces_and_score(const Tokenizer& tok, const GoldenCase& g, const Ids& a,
                                    const Ids& b) {
    std::string sa, sb;
    double score_a = 0, score_b = 0;
    for (TokenId id : a) sa += tok.id_to_token(id), score_a += g.scores.at(id);
    for (TokenId id : b) sb += tok.id_to_token(id), score_b += g.scores.at(id);
    return sa == sb && std::abs(score_a - score_b) <= 1e-4 * (1 + std::abs(score_a));
  }

  // Loads the case's file and checks every text.
  void check(const std::string& name, bool load_folder = false) {
    const GoldenCase& g = reference(name);
    const std::string path = load_folder ? fs::path(g.file).parent_path().string() : g.file;
    std::unique_ptr<Tokenizer> tok = load_tokenizer(path);
    EXPECT_EQ(tok->kind(), g.kind);
    const std::vector<std::string>& texts = texts_;  // golden_texts(), then 500 from the script
    const std::vector<std::string> own = golden_texts();
    ASSERT_GT(texts.size(), own.size());
    ASSERT_TRUE(std::equal(own.begin(), own.end(), texts.begin()));
    ASSERT_EQ(g.ids.size(), texts.size());
    size_t roundtrips = 0, ties = 0;
    for (size_t t = 0; t < texts.size(); ++t) {
      SCOPED_TRACE(name + ": text " + std::to_string(t) + " \"" + texts[t] + "\"");
      const Ids ids = tok->encode(texts[t], false);
      if (!g.scores.empty() && ids != g.ids[t] && same_pieces_and_score(*tok, g, ids, g.ids[t])) {
        ++ties;  // Unigram: another segmentation of exactly the same score
      } else {
        EXPECT_EQ(ids, g.ids[t]);
      }
      const Ids with_special = tok->encode(texts[t], true);
      if (!g.ids_special.empty()) {
        EXPECT_EQ(with_special, g.ids_special[t]);
      } else {  // SentencePiece: BOS first
        Ids expect = ids;
        expect.insert(expect.begin(), *tok->bos_id());
        EXPECT_EQ(with_special, expect);
      }
      const std::string decoded = tok->decode(ids);
      if (!g.decoded.empty() && g.decoded[t]) {
        EXPECT_EQ(decoded, *g.decoded[t]);
      }
      if (g.roundtrip[t]) {
        EXPECT_EQ(decoded, *g.roundtrip[t]);
        ++roundtrips;
      }
      EXPECT_EQ(tok->decode(with_special, /*skip_special=*/true), tok->decode(ids, true));
      for (TokenId id : ids) ASSERT_LT(id, tok->vocab_size());
    }
    if (name != "gpt2_prefix") {
      EXPECT_EQ(roundtrips, texts.size());
    }
    EXPECT_LE(ties, texts.size() / 20) << "too many Viterbi ties to be chance";
  }

  static TempDir* dir_;
  static std::string error_;
  static std::vector<std::string> texts_;
  static std::map<std::string, GoldenCase> cases_;
};

TempDir* TokenizerGolden::dir_ = nullptr;
std::string TokenizerGolden::error_;
std::vector<std::string> TokenizerGolden::texts_;
std::map<std::string, GoldenCase> TokenizerGolden::cases_;

TEST_F(TokenizerGolden, Gpt2ByteLevelRegex) {
  check("gpt2");
  auto tok = load_tokenizer(reference("gpt2").file);
  EXPECT_EQ(tok->eos_id(), tok->token_to_id("<|endoftext|>"));
  EXPECT_TRUE(tok->is_special(*tok->token_to_id("<mask>")));
}

TEST_F(TokenizerGolden, Gpt2AddPrefixSpace) {
  check("gpt2_prefix");
}

TEST_F(TokenizerGolden, Llama3SplitRegexPairMergesAndBos) {
  check("llama3", /*load_folder=*/true);
  auto tok = load_tokenizer(reference("llama3").file);
  EXPECT_EQ(tok->bos_id(), tok->token_to_id("<|begin_of_text|>"));
  EXPECT_EQ(tok->eos_id(), tok->token_to_id("<|end_of_text|>"));
  EXPECT_EQ(tok->encode("hi", true).front(), *tok->bos_id());
}

TEST_F(TokenizerGolden, Llama3IgnoreMerges) {
  reference("llama3");  // fails here if the reference script failed
  if (!cases_.count("llama3_ignore_merges"))
    GTEST_SKIP() << "the installed tokenizers predates ignore_merges (0.19)";
  check("llama3_ignore_merges");
}

TEST_F(TokenizerGolden, Qwen2SplitRegex) {
  check("qwen2");
}

TEST_F(TokenizerGolden, Qwen2WithNfcNormalizer) {
  const GoldenCase& g = reference("qwen2_nfc");
  try {
    load_tokenizer(g.file);
  } catch (const Error& e) {
    if (std::string(e.what()).find("needs ICU") != std::string::npos)
      GTEST_SKIP() << "this build has no ICU (libicu-dev): " << e.what();
    throw;
  }
  check("qwen2_nfc");
}

TEST_F(TokenizerGolden, SentencePieceUnigramWithByteFallback) {
  check("spm_unigram", /*load_folder=*/true);
  auto tok = load_tokenizer(reference("spm_unigram").file);
  EXPECT_EQ(tok->bos_id(), 1);
  EXPECT_EQ(tok->eos_id(), 2);
  EXPECT_EQ(tok->id_to_token(0), "<unk>");
  EXPECT_TRUE(tok->is_special(1));
  EXPECT_EQ(tok->token_to_id("<0x0A>"), 3 + 0x0A);
  EXPECT_EQ(tok->token_to_id("no such piece"), std::nullopt);
  EXPECT_EQ(tok->decode(Ids{1, 3 + 'h', 3 + 'i', 2}), "<s>hi</s>");
  EXPECT_EQ(tok->decode(Ids{1, 3 + 'h', 3 + 'i', 2}, /*skip_special=*/true), "hi");
}

TEST_F(TokenizerGolden, SentencePieceBpeWithByteFallback) {
  check("spm_bpe");
}

// Encoding from several threads at once gives the same ids (the word cache is shared).
TEST_F(TokenizerGolden, ConcurrentEncodeAgrees) {
  const GoldenCase& g = reference("llama3");
  auto tok = load_tokenizer(g.file);
  const std::vector<std::string>& texts = texts_;
  std::vector<std::thread> threads;
  std::vector<int> mismatches(4, 0);
  for (int w = 0; w < 4; ++w)
    threads.emplace_back([&, w] {
      for (int rep = 0; rep < 3; ++rep)
        for (size_t t = 0; t < texts.size(); ++t)
          mismatches[w] +=
              tok->encode(texts[(t + w) % texts.size()], false) != g.ids[(t + w) % texts.size()];
    });
  for (auto& th : threads) th.join();
  for (int w = 0; w < 4; ++w) EXPECT_EQ(mismatches[w], 0) << "thread " << w;
}

}  // namespace
}  // namespace origami
