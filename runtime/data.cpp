#include "runtime/data.h"

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "runtime/error.h"

namespace origami {

namespace fs = std::filesystem;

namespace {

std::string pick_format(const fs::path& p, const std::string& format) {
  if (!format.empty()) return format;
  const std::string ext = p.extension().string();
  if (ext == ".bin" || ext == ".u16") return "u16";
  if (ext == ".u32") return "u32";
  return "text";
}

void append_file(const fs::path& p, const std::string& format, const Tokenizer* tok,
                 std::vector<uint32_t>& out) {
  const std::string fmt = pick_format(p, format);
  std::ifstream f(p, std::ios::binary);
  ORIGAMI_CHECK(f, "cannot read data file '", p.string(), "'");
  std::stringstream ss;
  ss << f.rdbuf();
  const std::string bytes = ss.str();
  if (fmt == "u16" || fmt == "u32") {
    const size_t w = fmt == "u16" ? 2 : 4;
    ORIGAMI_CHECK(bytes.size() % w == 0, "data file '", p.string(), "' has ", bytes.size(),
                  " bytes, not a whole number of ", fmt, " tokens (is the format right?)");
    const size_t n = bytes.size() / w;
    const size_t base = out.size();
    out.resize(base + n);
    for (size_t i = 0; i < n; ++i) {
      if (w == 2) {
        uint16_t v;
        std::memcpy(&v, bytes.data() + 2 * i, 2);
        out[base + i] = v;
      } else {
        std::memcpy(&out[base + i], bytes.data() + 4 * i, 4);
      }
    }
    return;
  }
  ORIGAMI_CHECK(fmt == "text", "unknown data format '", fmt, "'; expected u16, u32 or text");
  ORIGAMI_CHECK(tok, "data file '", p.string(), "' is text but no tokenizer was given");
  for (TokenId id : tok->encode(bytes, /*add_special=*/false)) out.push_back(uint32_t(id));
  if (auto eos = tok->eos_id()) out.push_back(uint32_t(*eos));
}

}  // namespace

TokenStream TokenStream::open(const std::string& path, const std::string& format,
                              const Tokenizer* tokenizer) {
  std::vector<fs::path> files;
  if (fs::is_directory(path)) {
    // A folder: its regular files (not links) of the format: text files have no extension or
    // .txt; token shards end in .bin/.u16 (u16) or .u32 (u32).
    for (const auto& e : fs::directory_iterator(path)) {
      if (!e.is_regular_file() || e.is_symlink()) continue;
      const std::string ext = e.path().extension().string();
      const std::string fmt = format.empty() ? pick_format(e.path(), "") : format;
      const bool take = fmt == "text"
                            ? (ext.empty() || ext == ".txt")
                            : (fmt == "u32" ? ext == ".u32" : (ext == ".bin" || ext == ".u16"));
      if (take) files.push_back(e.path());
    }
    std::sort(files.begin(), files.end());
    ORIGAMI_CHECK(!files.empty(), "data folder '", path, "' holds no ",
                  format.empty() ? "data" : format, " files");
  } else {
    ORIGAMI_CHECK(fs::exists(path), "data path '", path, "' does not exist");
    files.push_back(path);
  }
  std::vector<uint32_t> tokens;
  for (const auto& f : files) append_file(f, format, tokenizer, tokens);
  return from_tokens(std::move(tokens));
}

TokenStream TokenStream::from_tokens(std::vector<uint32_t> tokens) {
  TokenStream s;
  for (uint32_t t : tokens) s.max_token_ = std::max(s.max_token_, t);
  s.tokens_ = std::make_shared<const std::vector<uint32_t>>(std::move(tokens));
  return s;
}

BatchSampler::BatchSampler(const TokenStream& stream, int64_t seq_len, uint64_t seed)
    : stream_(stream), seq_len_(seq_len) {
  ORIGAMI_CHECK(seq_len >= 1, "seq_len must be >= 1, got ", seq_len);
  num_windows_ = stream.size() > seq_len ? (stream.size() - 1) / seq_len : 0;
  ORIGAMI_CHECK(num_windows_ >= 1, "the data holds ", stream.size(),
                " tokens: too few for one window of seq_len + 1 = ", seq_len + 1);
  state_.seed = seed;
  shuffle_epoch();
}

void BatchSampler::shuffle_epoch() {
  order_.resize(size_t(num_windows_));
  for (int64_t i = 0; i < num_windows_; ++i) order_[size_t(i)] = i;
  SplitMix64 rng(state_.seed * 0x100000001b3ull + uint64_t(state_.epoch));
  for (int64_t i = num_windows_ - 1; i > 0; --i) {  // Fisher-Yates
    const int64_t j = int64_t(rng.next() % uint64_t(i + 1));
    std::swap(order_[size_t(i)], order_[size_t(j)]);
  }
}

void BatchSampler::restore(const SamplerState& s) {
  state_ = s;
  shuffle_epoch();
}

void BatchSampler::next(Tensor& tokens, Tensor& targets, int dp_rank, int dp_size) {
  ORIGAMI_CHECK(
      tokens.dim() == 2 && tokens.size(1) == seq_len_ && targets.shape() == tokens.shape(),
      "BatchSampler::next: tokens and targets must be [micro_batch, ", seq_len_, "], got ",
      tokens.str(), " and ", targets.str());
  ORIGAMI_CHECK(tokens.device().is_cpu() && tokens.is_contiguous() && targets.is_contiguous(),
                "BatchSampler::next: tokens and targets must be contiguous CPU tensors");
  const int64_t mb = tokens.size(0);
  for (int64_t g = 0; g < mb * dp_size; ++g) {
    if (state_.cursor >= num_windows_) {
      ++state_.epoch;
      state_.cursor = 0;
      shuffle_epoch();
    }
    const int64_t w = order_[size_t(state_.cursor++)];
    if (g / mb != dp_rank) continue;
    const int64_t row = g % mb, start = w * seq_len_;
    for (int64_t s = 0; s < seq_len_; ++s) {
      tokens.set_at(row * seq_len_ + s, stream_[start + s]);
      targets.set_at(row * seq_len_ + s, stream_[start + s + 1]);
    }
  }
}

}  // namespace origami
