// Incremental detokenization for streaming: turns the tokens of one sequence into text pieces as
// they are generated, without decoding the whole text again for every token, never splitting a
// UTF-8 character, and cutting the text at the first stop string (never emitting it), even when
// a stop string spans several tokens.
//
// Decoding a token alone is wrong for many tokenizers (a SentencePiece piece's leading space,
// a byte-level BPE character split over two tokens), so the detokenizer decodes a short window:
// the tokens since `prefix_` (a few tokens of context already printed) up to the newest, and
// emits what that text adds beyond the text of the same window without the new tokens. Text that
// ends in an incomplete UTF-8 character (or the replacement character a decoder writes for one)
// waits for the next token. Text that might be the start of a stop string is held back until it
// is known not to be.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "runtime/tokenizer.h"

namespace origami::serve {

class Detokenizer {
 public:
  // prompt: the prompt's tokens (context for the first generated tokens' leading spaces).
  // stops: strings that end the text (not emitted). skip_special: drop special tokens' text.
  Detokenizer(const Tokenizer& tok, const std::vector<int64_t>& prompt,
              std::vector<std::string> stops = {}, bool skip_special = true);

  // Adds one generated token; returns the text that can be emitted now (possibly empty).
  // After a stop string is found, stopped() is true and later tokens add nothing.
  std::string add(int64_t token);
  // The end of the sequence: returns whatever was held back (an incomplete character is
  // emitted as the decoder renders it; a held-back partial stop string is emitted in full).
  std::string finish();

  bool stopped() const { return stopped_; }
  const std::string& stop_found() const { return stop_found_; }
  const std::string& text() const { return emitted_; }  // everything emitted so far

 private:
  std::string decode(size_t begin, size_t end) const;
  std::string release(bool final);  // moves what may be emitted from pending_ to the output

  const Tokenizer& tok_;
  std::vector<TokenId> ids_;  // prompt context, then generated tokens
  size_t prefix_ = 0;         // first token of the decode window
  size_t read_ = 0;           // tokens whose text has been taken into pending_/emitted_
  std::vector<std::string> stops_;
  size_t longest_stop_ = 0;
  bool skip_special_ = true;
  std::string pending_;  // decoded text not yet emitted (a possible stop-string start)
  std::string emitted_;
  bool stopped_ = false;
  std::string stop_found_;
};

// Bytes at the end of `s` that form an incomplete UTF-8 sequence (0 when it ends cleanly).
size_t incomplete_utf8_tail(const std::string& s);

}  // namespace origami::serve
