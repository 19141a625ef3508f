// SentencePiece *.model files (Llama-2, Mistral, Mixtral), through libsentencepiece.
#include <sentencepiece_processor.h>

#include <filesystem>

#include "runtime/error.h"
#include "runtime/tokenizer.h"

namespace origami {

namespace {

class SentencePieceTokenizer final : public Tokenizer {
 public:
  explicit SentencePieceTokenizer(const std::string& path) : path_(path) {
    const sentencepiece::util::Status status = sp_.Load(path);
    ORIGAMI_CHECK(status.ok(), "tokenizer '", path,
                  "': not a valid SentencePiece model: ", status.ToString());
    ORIGAMI_CHECK(sp_.GetPieceSize() > 0, "tokenizer '", path, "': the model has no pieces");
  }

  std::string_view kind() const override { return "sentencepiece"; }

  // SentencePiece itself never adds BOS/EOS; add_special prepends BOS as Llama-2 does.
  // Control symbols written inside the text ("<s>") are encoded as plain text.
  std::vector<TokenId> encode(std::string_view text, bool add_special) const override {
    std::vector<int> pieces;
    const sentencepiece::util::Status status = sp_.Encode(text, &pieces);
    ORIGAMI_CHECK(status.ok(), "tokenizer '", path_, "': encode failed: ", status.ToString());
    std::vector<TokenId> ids;
    ids.reserve(pieces.size() + 1);
    if (add_special && sp_.bos_id() >= 0) ids.push_back(sp_.bos_id());
    ids.insert(ids.end(), pieces.begin(), pieces.end());
    return ids;
  }

  // Control tokens (BOS, EOS, ...) have no text in SentencePiece; unless skip_special they are
  // written as their piece ("<s>").
  std::string decode(std::span<const TokenId> ids, bool skip_special) const override {
    std::string out, run_text;
    std::vector<int> run;
    auto flush = [&] {
      if (run.empty()) return;
      const sentencepiece::util::Status status = sp_.Decode(run, &run_text);
      ORIGAMI_CHECK(status.ok(), "tokenizer '", path_, "': decode failed: ", status.ToString());
      out += run_text;
      run.clear();
    };
    for (TokenId id : ids) {
      check_id(id);
      if (sp_.IsControl(id)) {
        flush();
        if (!skip_special) out += sp_.IdToPiece(id);
      } else {
        run.push_back(id);
      }
    }
    flush();
    return out;
  }

  int64_t vocab_size() const override { return sp_.GetPieceSize(); }
  std::optional<TokenId> bos_id() const override { return optional_id(sp_.bos_id()); }
  std::optional<TokenId> eos_id() const override { return optional_id(sp_.eos_id()); }

  std::string id_to_token(TokenId id) const override {
    check_id(id);
    return sp_.IdToPiece(id);
  }

  std::optional<TokenId> token_to_id(std::string_view token) const override {
    const int id = sp_.PieceToId(token);
    // PieceToId answers unk_id for any unknown piece; only the unknown piece itself maps there.
    if (sp_.IsUnknown(id) && sp_.IdToPiece(id) != token) return std::nullopt;
    return id;
  }

  bool is_special(TokenId id) const override {
    return id >= 0 && id < sp_.GetPieceSize() && (sp_.IsControl(id) || sp_.IsUnknown(id));
  }

 private:
  static std::optional<TokenId> optional_id(int id) {
    return id >= 0 ? std::optional<TokenId>(id) : std::nullopt;
  }
  void check_id(TokenId id) const {
    ORIGAMI_CHECK(id >= 0 && id < sp_.GetPieceSize(), "tokenizer '", path_, "': id ", id,
                  " is outside the vocabulary [0, ", sp_.GetPieceSize(), ")");
  }

  std::string path_;
  sentencepiece::SentencePieceProcessor sp_;
};

}  // namespace

std::unique_ptr<Tokenizer> load_sentencepiece_tokenizer(const std::string& model_path) {
  ORIGAMI_CHECK(std::filesystem::is_regular_file(model_path), "tokenizer: '", model_path,
                "' does not exist or is not a file");
  return std::make_unique<SentencePieceTokenizer>(model_path);
}

}  // namespace origami
