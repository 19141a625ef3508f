// Tokenizers: text <-> token ids.
//
// Three kinds, one interface:
//   - Hugging Face `tokenizer.json` with a byte-level BPE model (GPT-2, Llama-3, Qwen2, ...):
//     added tokens, normalizer, pre-tokenizer (regexes run with PCRE2), BPE merges, post-processor
//     template and ByteLevel decoder are all read from the file.
//   - SentencePiece `*.model` files (Llama-2, Mistral, Mixtral, Gemma): Unigram and BPE models
//     with byte fallback and the identity normalizer, read and run in-tree (see
//     tokenizer_sentencepiece.cpp for why not libsentencepiece).
//   - "byte": ids 0..255 are the bytes themselves, 256 is BOS, 257 is EOS (vocab 258), for demos
//     and tests that need no file.
//
// Every tokenizer is immutable after loading; encode/decode may be called from several threads.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace origami {

using TokenId = int32_t;

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;

  // "bpe", "sentencepiece" or "byte".
  virtual std::string_view kind() const = 0;

  // Text -> ids. add_special adds what the tokenizer's own convention adds around a single
  // sequence: the post-processor template of a tokenizer.json (BOS for Llama-3, nothing for
  // GPT-2), BOS for SentencePiece and for "byte". Special tokens written inside the text (e.g.
  // "<|endoftext|>") are recognised as single ids by the tokenizer.json kind, whatever add_special.
  virtual std::vector<TokenId> encode(std::string_view text, bool add_special = true) const = 0;

  // Ids -> text (raw bytes: a prefix of a sequence may end inside a UTF-8 character). Special
  // tokens are written as their text unless skip_special. SentencePiece drops the dummy-prefix
  // space of the first piece of each call, as SentencePiece's own decoder does.
  virtual std::string decode(std::span<const TokenId> ids, bool skip_special = false) const = 0;

  // Number of ids, i.e. 1 + the largest id (added tokens included).
  virtual int64_t vocab_size() const = 0;

  // BOS / EOS ids, or nullopt where the tokenizer has none.
  virtual std::optional<TokenId> bos_id() const = 0;
  virtual std::optional<TokenId> eos_id() const = 0;

  // The vocabulary entry of an id, in the model's own spelling (byte-level characters such as
  // "Ġ" for BPE, "▁" for SentencePiece, "<0x0A>" for a byte of the byte tokenizer).
  // Throws origami::Error for an id outside [0, vocab_size()).
  virtual std::string id_to_token(TokenId id) const = 0;
  // The id of a vocabulary entry (same spelling), or nullopt.
  virtual std::optional<TokenId> token_to_id(std::string_view token) const = 0;

  // Whether an id is a special/control token (BOS, EOS, "<|endoftext|>", ...).
  virtual bool is_special(TokenId id) const = 0;
};

// Picks the tokenizer by `path`:
//   "byte"                         -> the byte tokenizer;
//   a folder                       -> its tokenizer.json, else its tokenizer.model;
//   a file ending in ".json"       -> Hugging Face tokenizer.json;
//   a file ending in ".model"      -> SentencePiece.
// Throws origami::Error naming the file and the problem (missing, malformed, unsupported).
std::unique_ptr<Tokenizer> load_tokenizer(const std::string& path);

std::unique_ptr<Tokenizer> make_byte_tokenizer();
std::unique_ptr<Tokenizer> load_hf_tokenizer(const std::string& tokenizer_json_path);
std::unique_ptr<Tokenizer> load_sentencepiece_tokenizer(const std::string& model_path);

}  // namespace origami
