// Incremental detokenization (runtime/serve/detokenizer.h) against a naive reference: the whole
// generated text, cut where the first stop string is completed. The byte tokenizer splits
// every multi-byte character over several tokens, so every piece must end on a character
// boundary; random texts mix ASCII, 2-, 3- and 4-byte characters and stop strings that span
// tokens (and characters).
#include <gtest/gtest.h>

#include <random>
#include <string>
#include <vector>

#include "runtime/serve/detokenizer.h"
#include "runtime/tokenizer.h"

namespace origami {
namespace {

using serve::Detokenizer;
using serve::incomplete_utf8_tail;

const std::vector<std::string>& alphabet() {
  static const std::vector<std::string> a = {"a",
                                             "b",
                                             " ",
                                             "\n",
                                             "x",
                                             "\xC3\xA9" /* e acute */,
                                             "\xE2\x82\xAC" /* euro */,
                                             "\xF0\x9F\x98\x80" /* emoji */,
                                             "\xE4\xB8\xAD" /* CJK */,
                                             "S",
                                             "T",
                                             "O",
                                             "P"};
  return a;
}
// A random text as whole characters (stop strings are valid UTF-8, as JSON gives them).
std::vector<std::string> random_chars(std::mt19937& rng, int n) {
  std::vector<std::string> c;
  for (int i = 0; i < n; ++i) c.push_back(alphabet()[rng() % alphabet().size()]);
  return c;
}
std::string join(const std::vector<std::string>& c, size_t a = 0, size_t b = std::string::npos) {
  std::string s;
  for (size_t i = a; i < std::min(b, c.size()); ++i) s += c[i];
  return s;
}

// The naive reference: generation stops as soon as a stop string has been generated, so scan
// the whole text character by character; at the first character that completes a stop string,
// cut before the earliest-starting stop string completed there.
std::string naive(const std::vector<std::string>& chars, const std::vector<std::string>& stops,
                  bool* stopped) {
  std::string text;
  for (const std::string& c : chars) {
    text += c;
    size_t cut = std::string::npos;
    for (const std::string& s : stops) {
      const size_t at = text.find(s);
      if (at != std::string::npos) cut = std::min(cut, at);
    }
    if (cut != std::string::npos) {
      *stopped = true;
      return text.substr(0, cut);
    }
  }
  *stopped = false;
  return text;
}

TEST(Detokenizer, ByteTokensMatchWholeTextDecodeAndCutAtStops) {
  auto tok = load_tokenizer("byte");
  std::mt19937 rng(7);
  int with_stop = 0;
  for (int trial = 0; trial < 400; ++trial) {
    const std::vector<std::string> chars = random_chars(rng, 1 + int(rng() % 40));
    const std::string text = join(chars);
    std::vector<std::string> stops;
    const int n_stops = int(rng() % 3);
    for (int k = 0; k < n_stops; ++k) {
      // Half the stops are taken from the text (so they occur), half are random.
      if (rng() % 2 == 0) {
        const size_t a = rng() % chars.size(), len = 1 + rng() % 4;
        stops.push_back(join(chars, a, a + len));
      } else {
        stops.push_back(join(random_chars(rng, 1 + int(rng() % 3))));
      }
    }
    const std::vector<TokenId> ids = tok->encode(text, false);
    Detokenizer d(*tok, {}, stops);
    std::string streamed;
    for (TokenId id : ids) {
      const std::string piece = d.add(id);
      EXPECT_EQ(incomplete_utf8_tail(piece), 0u) << "piece splits a character";
      streamed += piece;
      if (d.stopped()) break;
    }
    streamed += d.finish();
    bool stopped = false;
    const std::string want = naive(chars, stops, &stopped);
    std::string all_stops;
    for (const std::string& s : stops) all_stops += "[" + s + "]";
    EXPECT_EQ(streamed, want) << "trial " << trial << " stops " << all_stops << " text " << text;
    EXPECT_EQ(d.stopped(), stopped) << "trial " << trial;
    EXPECT_EQ(d.text(), streamed);
    with_stop += stopped ? 1 : 0;
  }
  EXPECT_GT(with_stop, 50);  // the stop path was exercised
}

TEST(Detokenizer, StopStringAcrossTokensIsNeverEmitted) {
  auto tok = load_tokenizer("byte");
  Detokenizer d(*tok, {}, {"STOP"});
  std::string out;
  for (char c : std::string("abcSTOPdef")) out += d.add(int64_t(static_cast<unsigned char>(c)));
  out += d.finish();
  EXPECT_EQ(out, "abc");
  EXPECT_TRUE(d.stopped());
  EXPECT_EQ(d.stop_found(), "STOP");
  // A held-back stop prefix that turns out not to be a stop is emitted.
  Detokenizer e(*tok, {}, {"STOP"});
  std::string o2;
  for (char c : std::string("aSTOx")) o2 += e.add(int64_t(static_cast<unsigned char>(c)));
  EXPECT_EQ(o2, "aSTOx");
  EXPECT_FALSE(e.stopped());
}

TEST(Detokenizer, IncompleteUtf8Tail) {
  EXPECT_EQ(incomplete_utf8_tail(""), 0u);
  EXPECT_EQ(incomplete_utf8_tail("ab"), 0u);
  EXPECT_EQ(incomplete_utf8_tail("a\xC3"), 1u);
  EXPECT_EQ(incomplete_utf8_tail("a\xC3\xA9"), 0u);
  EXPECT_EQ(incomplete_utf8_tail("\xE2\x82"), 2u);
  EXPECT_EQ(incomplete_utf8_tail("\xF0\x9F\x98"), 3u);
  EXPECT_EQ(incomplete_utf8_tail("\xF0\x9F\x98\x80"), 0u);
}

}  // namespace
}  // namespace origami
