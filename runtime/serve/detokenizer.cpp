#include "runtime/serve/detokenizer.h"

#include <algorithm>
#include <utility>

namespace origami::serve {

namespace {
constexpr size_t kContextTokens = 6;              // prompt tokens kept as decoding context
const std::string kReplacement = "\xEF\xBF\xBD";  // U+FFFD, what decoders write for bad bytes
}  // namespace

size_t incomplete_utf8_tail(const std::string& s) {
  // Walk back over at most 3 continuation bytes to the lead byte of the last character.
  const size_t n = s.size();
  for (size_t back = 1; back <= std::min<size_t>(4, n); ++back) {
    const unsigned char c = static_cast<unsigned char>(s[n - back]);
    if ((c & 0xC0) == 0x80) continue;  // continuation byte
    size_t need = 1;
    if ((c & 0xE0) == 0xC0)
      need = 2;
    else if ((c & 0xF0) == 0xE0)
      need = 3;
    else if ((c & 0xF8) == 0xF0)
      need = 4;
    return need > back ? back : 0;
  }
  return 0;
}

Detokenizer::Detokenizer(const Tokenizer& tok, const std::vector<int64_t>& prompt,
                         std::vector<std::string> stops, bool skip_special)
    : tok_(tok), stops_(std::move(stops)), skip_special_(skip_special) {
  const size_t keep = std::min(prompt.size(), kContextTokens);
  for (size_t i = prompt.size() - keep; i < prompt.size(); ++i) ids_.push_back(TokenId(prompt[i]));
  prefix_ = 0;
  read_ = ids_.size();
  for (const std::string& s : stops_) longest_stop_ = std::max(longest_stop_, s.size());
}

std::string Detokenizer::decode(size_t begin, size_t end) const {
  return tok_.decode(std::span<const TokenId>(ids_.data() + begin, end - begin), skip_special_);
}

std::string Detokenizer::add(int64_t token) {
  if (stopped_) return {};
  ids_.push_back(TokenId(token));
  const std::string before = decode(prefix_, read_);
  const std::string now = decode(prefix_, ids_.size());
  // The window's text must extend the text without the new tokens; when it does not (a decoder
  // that rewrites earlier characters), or when it ends mid-character, wait for more tokens.
  if (now.size() <= before.size() || now.compare(0, before.size(), before) != 0) return {};
  std::string added = now.substr(before.size());
  if (incomplete_utf8_tail(added) > 0 ||
      (added.size() >= 3 && added.compare(added.size() - 3, 3, kReplacement) == 0))
    return {};
  pending_ += added;
  // Slide the window: the tokens read so far become context.
  prefix_ = read_;
  read_ = ids_.size();
  return release(false);
}

std::string Detokenizer::finish() {
  if (stopped_) return {};
  if (read_ < ids_.size()) {  // tokens still waiting for the rest of a character
    const std::string before = decode(prefix_, read_);
    const std::string now = decode(prefix_, ids_.size());
    if (now.size() > before.size() && now.compare(0, before.size(), before) == 0)
      pending_ += now.substr(before.size());
    read_ = ids_.size();
  }
  return release(true);
}

std::string Detokenizer::release(bool final) {
  // The earliest stop string in the pending text ends the sequence there.
  size_t cut = std::string::npos;
  for (const std::string& s : stops_) {
    const size_t at = pending_.find(s);
    if (at != std::string::npos && at < cut) {
      cut = at;
      stop_found_ = s;
    }
  }
  std::string out;
  if (cut != std::string::npos) {
    out = pending_.substr(0, cut);
    pending_.clear();
    stopped_ = true;
  } else if (final || longest_stop_ <= 1) {
    out = std::move(pending_);
    pending_.clear();
  } else {
    // Hold back the longest tail that is a proper prefix of some stop string.
    size_t hold = 0;
    for (const std::string& s : stops_)
      for (size_t k = std::min(s.size() - 1, pending_.size()); k > hold; --k)
        if (pending_.compare(pending_.size() - k, k, s, 0, k) == 0) {
          hold = k;
          break;
        }
    // Never cut inside a UTF-8 character.
    size_t emit = pending_.size() - hold;
    while (emit > 0 && emit < pending_.size() &&
           (static_cast<unsigned char>(pending_[emit]) & 0xC0) == 0x80)
      --emit;
    out = pending_.substr(0, emit);
    pending_.erase(0, emit);
  }
  emitted_ += out;
  return out;
}

}  // namespace origami::serve
