// load_tokenizer (picks the kind by path) and the byte tokenizer.
#include "runtime/tokenizer.h"

#include <cstdio>
#include <filesystem>

#include "runtime/error.h"

namespace origami {

namespace {

// ids 0..255: the bytes; 256: BOS; 257: EOS.
class ByteTokenizer final : public Tokenizer {
 public:
  static constexpr TokenId kBos = 256;
  static constexpr TokenId kEos = 257;
  static constexpr int64_t kVocab = 258;

  std::string_view kind() const override { return "byte"; }

  std::vector<TokenId> encode(std::string_view text, bool add_special) const override {
    std::vector<TokenId> ids;
    ids.reserve(text.size() + 1);
    if (add_special) ids.push_back(kBos);
    for (char c : text) ids.push_back(static_cast<unsigned char>(c));
    return ids;
  }

  std::string decode(std::span<const TokenId> ids, bool skip_special) const override {
    std::string out;
    out.reserve(ids.size());
    for (TokenId id : ids) {
      check_id(id);
      if (id < 256) {
        out.push_back(static_cast<char>(id));
      } else if (!skip_special) {
        out += id_to_token(id);
      }
    }
    return out;
  }

  int64_t vocab_size() const override { return kVocab; }
  std::optional<TokenId> bos_id() const override { return kBos; }
  std::optional<TokenId> eos_id() const override { return kEos; }

  std::string id_to_token(TokenId id) const override {
    check_id(id);
    if (id == kBos) return "<bos>";
    if (id == kEos) return "<eos>";
    char buf[8];
    std::snprintf(buf, sizeof buf, "<0x%02X>", static_cast<unsigned>(id));
    return buf;
  }

  std::optional<TokenId> token_to_id(std::string_view token) const override {
    if (token == "<bos>") return kBos;
    if (token == "<eos>") return kEos;
    unsigned v = 0;
    char tail = 0;
    if (token.size() == 6 && token.substr(0, 3) == "<0x" && token[5] == '>' &&
        std::sscanf(std::string(token.substr(3, 2)).c_str(), "%2x%c", &v, &tail) == 1)
      return static_cast<TokenId>(v);
    return std::nullopt;
  }

  bool is_special(TokenId id) const override { return id == kBos || id == kEos; }

 private:
  static void check_id(TokenId id) {
    ORIGAMI_CHECK(id >= 0 && id < kVocab, "byte tokenizer: id ", id,
                  " is outside the vocabulary [0, ", kVocab, ")");
  }
};

bool ends_with(const std::string& s, std::string_view suffix) {
  return s.size() >= suffix.size() &&
         s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

}  // namespace

std::unique_ptr<Tokenizer> make_byte_tokenizer() {
  return std::make_unique<ByteTokenizer>();
}

std::unique_ptr<Tokenizer> load_tokenizer(const std::string& path) {
  namespace fs = std::filesystem;
  if (path == "byte") return make_byte_tokenizer();
  std::error_code ec;
  const fs::file_status st = fs::status(path, ec);
  ORIGAMI_CHECK(fs::exists(st), "tokenizer: '", path,
                "' does not exist (expected a tokenizer.json, a SentencePiece .model file, a "
                "folder holding one of them, or \"byte\")");
  if (fs::is_directory(st)) {
    const fs::path dir(path);
    if (fs::exists(dir / "tokenizer.json"))
      return load_hf_tokenizer((dir / "tokenizer.json").string());
    if (fs::exists(dir / "tokenizer.model"))
      return load_sentencepiece_tokenizer((dir / "tokenizer.model").string());
    ORIGAMI_FAIL("tokenizer: folder '", path, "' holds neither tokenizer.json nor tokenizer.model");
  }
  if (ends_with(path, ".json")) return load_hf_tokenizer(path);
  if (ends_with(path, ".model")) return load_sentencepiece_tokenizer(path);
  ORIGAMI_FAIL("tokenizer: cannot tell the kind of '", path,
               "': expected a name ending in .json (Hugging Face tokenizer.json) or .model "
               "(SentencePiece), a folder, or \"byte\"");
}

}  // namespace origami
