// Safetensors reading (mmap + strict validation) and atomic writing. The validation rules follow
// the reference implementation (huggingface/safetensors, `Metadata::validate`), plus a check it
// lacks: duplicate JSON keys, which a JSON parser would otherwise resolve silently.
#include "runtime/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

namespace origami {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

// ---- dtypes -----------------------------------------------------------------------------------

struct DTypeEntry {
  const char* name;
  size_t size;
  int rank;  // the reference's enum order: the writer orders tensors by decreasing rank
  std::optional<DType> dtype;
};

// The dtypes we accept. Ranks are the positions in the reference's `Dtype` enum (BOOL U8 I8
// F8_E5M2 F8_E4M3 I16 U16 F16 BF16 I32 U32 F32 F64 I64 U64).
const DTypeEntry kDTypes[] = {
    {"BOOL", 1, 0, std::nullopt}, {"U8", 1, 1, DType::u8},    {"I8", 1, 2, std::nullopt},
    {"I16", 2, 5, std::nullopt},  {"F16", 2, 7, DType::f16},  {"BF16", 2, 8, DType::bf16},
    {"I32", 4, 9, DType::i32},    {"F32", 4, 11, DType::f32}, {"F64", 8, 12, std::nullopt},
    {"I64", 8, 13, DType::i64},
};
constexpr const char* kSupportedDTypes = "F32, BF16, F16, F64, I64, I32, I16, I8, U8, BOOL";

const DTypeEntry* find_dtype(const std::string& name) {
  for (const DTypeEntry& e : kDTypes)
    if (name == e.name) return &e;
  return nullptr;
}

const DTypeEntry& entry_for(DType t) {
  for (const DTypeEntry& e : kDTypes)
    if (e.dtype == t) return e;
  ORIGAMI_FAIL("safetensors: dtype ", dtype_name(t), " has no safetensors equivalent");
}

// ---- JSON -------------------------------------------------------------------------------------

// A quoted name for error messages (invalid UTF-8 replaced, never throws).
std::string quote(const std::string& s) {
  return json(s).dump(-1, ' ', false, json::error_handler_t::replace);
}

// A header nests three levels deep ({name: {shape: [..]}}); anything much deeper is malformed.
constexpr int kMaxJsonDepth = 16;

// Parses [begin, end) as JSON, refusing duplicate keys in any object and absurd nesting. `where`
// prefixes error messages.
json parse_json_strict(const char* begin, const char* end, const std::string& where,
                       const char* what = "header") {
  std::vector<std::set<std::string>> keys;  // the keys seen in each open object
  auto callback = [&](int depth, json::parse_event_t event, json& parsed) {
    switch (event) {
      case json::parse_event_t::object_start:
      case json::parse_event_t::array_start:
        ORIGAMI_CHECK(depth <= kMaxJsonDepth, where, ": ", what, " JSON nests deeper than ",
                      kMaxJsonDepth, " levels");
        if (event == json::parse_event_t::object_start) keys.emplace_back();
        break;
      case json::parse_event_t::object_end:
        if (!keys.empty()) keys.pop_back();
        break;
      case json::parse_event_t::key: {
        const std::string& k = parsed.get_ref<const std::string&>();
        ORIGAMI_CHECK(!keys.empty() && keys.back().insert(k).second, where, ": duplicate key ",
                      quote(k), " in the ", what, " JSON");
        break;
      }
      default:
        break;
    }
    return true;
  };
  try {
    return json::parse(begin, end, callback);
  } catch (const json::exception& e) {
    ORIGAMI_FAIL(where, ": ", what, " is not valid JSON (", e.what(), ")");
  }
}

// JSON text for a string, as the reference writes it (UTF-8 kept, control characters escaped).
std::string json_string(const std::string& s, const std::string& what) {
  try {
    return json(s).dump();
  } catch (const json::exception&) {
    ORIGAMI_FAIL("write_safetensors: ", what, " is not valid UTF-8");
  }
}

// A non-negative JSON integer, or nullopt.
std::optional<uint64_t> as_unsigned(const json& v) {
  if (v.is_number_unsigned()) return v.get<uint64_t>();
  if (v.is_number_integer() && v.get<int64_t>() >= 0) return uint64_t(v.get<int64_t>());
  return std::nullopt;
}

// ---- parsing ----------------------------------------------------------------------------------

SafetensorsInfo parse_entry(const std::string& where, const std::string& name, const json& e,
                            size_t data_bytes) {
  const std::string tn = where + ": tensor " + quote(name);
  ORIGAMI_CHECK(e.is_object(), tn, " is not an object (expected {\"dtype\", \"shape\", ",
                "\"data_offsets\"})");
  // Other fields are ignored, as the reference does.
  for (const char* field : {"dtype", "shape", "data_offsets"})
    ORIGAMI_CHECK(e.contains(field), tn, " is missing \"", field, "\"");

  SafetensorsInfo info;
  const json& dt = e["dtype"];
  ORIGAMI_CHECK(dt.is_string(), tn, ": \"dtype\" must be a string, got ", dt.dump());
  info.dtype_name = dt.get<std::string>();
  const DTypeEntry* d = find_dtype(info.dtype_name);
  ORIGAMI_CHECK(d, tn, ": unknown dtype ", quote(info.dtype_name),
                " (supported: ", kSupportedDTypes, ")");
  info.dtype = d->dtype;
  info.element_size = d->size;

  const json& sh = e["shape"];
  ORIGAMI_CHECK(sh.is_array(), tn, ": \"shape\" must be an array of integers, got ", sh.dump());
  // The product of the non-zero dimensions must fit too: tensor strides are computed from it
  // even when another dimension is 0.
  uint64_t nonzero = 1;
  bool any_zero = false;
  for (const json& dim : sh) {
    ORIGAMI_CHECK(dim.is_number_integer(), tn, ": \"shape\" must be an array of integers, got ",
                  sh.dump());
    ORIGAMI_CHECK(dim.is_number_unsigned() || dim.get<int64_t>() >= 0, tn, ": shape ", sh.dump(),
                  " has a negative dimension");
    const uint64_t n = dim.get<uint64_t>();
    ORIGAMI_CHECK(n == 0 || (!__builtin_mul_overflow(nonzero, n, &nonzero) &&
                             nonzero <= uint64_t(std::numeric_limits<int64_t>::max())),
                  tn, ": shape ", sh.dump(), " overflows a 64-bit element count");
    any_zero = any_zero || n == 0;
    info.shape.push_back(int64_t(n));
  }
  const uint64_t numel = any_zero ? 0 : nonzero;
  uint64_t nbytes = 0;
  ORIGAMI_CHECK(!__builtin_mul_overflow(numel, uint64_t(d->size), &nbytes), tn, ": shape ",
                sh.dump(), " overflows a 64-bit byte count");

  const json& off = e["data_offsets"];
  std::optional<uint64_t> b, en;
  if (off.is_array() && off.size() == 2) b = as_unsigned(off[0]), en = as_unsigned(off[1]);
  ORIGAMI_CHECK(b && en, tn, ": \"data_offsets\" must be [begin, end] with non-negative integers, ",
                "got ", off.dump());
  ORIGAMI_CHECK(*b <= *en, tn, ": data_offsets ", off.dump(), " have begin > end");
  ORIGAMI_CHECK(*en <= data_bytes, tn, ": data_offsets ", off.dump(),
                " end beyond the data section (", data_bytes, " bytes)");
  ORIGAMI_CHECK(*en - *b == nbytes, tn, ": data_offsets ", off.dump(), " span ", *en - *b,
                " bytes but ", info.dtype_name, shape_str(info.shape), " needs ", nbytes);
  info.begin = size_t(*b);
  info.end = size_t(*en);
  return info;
}

}  // namespace

SafetensorsFile SafetensorsFile::from_memory(std::shared_ptr<Storage> bytes,
                                             const std::string& label) {
  ORIGAMI_CHECK(bytes && bytes->device.is_cpu(), "safetensors: ", label,
                " must be given as CPU memory");
  const std::string where = "safetensors file " + label;
  const size_t size = bytes->bytes;
  const char* base = static_cast<const char*>(bytes->data);
  ORIGAMI_CHECK(size >= 8, where, ": file is ", size,
                " bytes, shorter than the 8-byte header length; is it a safetensors file?");
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = header_len << 8 | uint8_t(base[i]);
  ORIGAMI_CHECK(header_len <= size - 8, where, ": header length ", header_len,
                " exceeds the file size (", size, " bytes); the file is truncated or not a ",
                "safetensors file");

  SafetensorsFile f;
  f.label_ = label;
  f.mapping_ = std::move(bytes);
  f.data_start_ = 8 + size_t(header_len);
  const size_t data_bytes = size - f.data_start_;

  const json header = parse_json_strict(base + 8, base + f.data_start_, where);
  ORIGAMI_CHECK(header.is_object(), where, ": header is not a JSON object");
  for (const auto& [name, value] : header.items()) {
    if (name == "__metadata__") {
      ORIGAMI_CHECK(value.is_object(), where,
                    ": __metadata__ must be an object of string to string, got ", value.dump());
      for (const auto& [k, v] : value.items()) {
        ORIGAMI_CHECK(v.is_string(), where,
                      ": __metadata__ must be an object of string to string, ", "but ", quote(k),
                      " maps to ", v.dump());
        f.metadata_[k] = v.get<std::string>();
      }
      continue;
    }
    f.entries_[name] = parse_entry(where, name, value, data_bytes);
  }

  // The ranges must tile the data section exactly: sorted by start, each begins where the
  // previous one ended, and the last ends at the end of the file.
  std::vector<std::pair<const std::string*, const SafetensorsInfo*>> order;
  for (const auto& [name, info] : f.entries_) order.emplace_back(&name, &info);
  std::sort(order.begin(), order.end(), [](const auto& a, const auto& b) {
    return std::pair(a.second->begin, a.second->end) < std::pair(b.second->begin, b.second->end);
  });
  size_t covered = 0;
  const std::string* prev = nullptr;
  for (const auto& [name, info] : order) {
    ORIGAMI_CHECK(info->begin >= covered, where, ": tensors ", quote(*prev), " and ", quote(*name),
                  " overlap in the data section");
    ORIGAMI_CHECK(info->begin == covered, where, ": hole in the data section: bytes [", covered,
                  ", ", info->begin, ") belong to no tensor");
    covered = info->end;
    prev = name;
  }
  ORIGAMI_CHECK(covered == data_bytes, where, ": the data section has ", data_bytes - covered,
                " trailing bytes [", covered, ", ", data_bytes, ") that belong to no tensor");
  return f;
}

SafetensorsFile SafetensorsFile::open(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  ORIGAMI_CHECK(fd >= 0, "safetensors: cannot open ", path, ": ", std::strerror(errno));
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    ORIGAMI_FAIL("safetensors: ", path, " is not a regular file");
  }
  const size_t size = size_t(st.st_size);
  auto storage = std::make_shared<Storage>();
  storage->device = Device::cpu();
  storage->bytes = size;
  if (size > 0) {  // mmap refuses 0 bytes; the parser refuses anything under 8
    void* p = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
    const int err = errno;
    ::close(fd);
    ORIGAMI_CHECK(p != MAP_FAILED, "safetensors: cannot map ", path, ": ", std::strerror(err));
    storage->data = p;
    storage->deleter = [size](void* q) { ::munmap(q, size); };
  } else {
    ::close(fd);
  }
  return from_memory(std::move(storage), path);
}

std::vector<std::string> SafetensorsFile::names() const {
  std::vector<std::string> out;
  for (const auto& [name, info] : entries_) out.push_back(name);
  return out;
}

const SafetensorsInfo& SafetensorsFile::info(const std::string& name) const {
  auto it = entries_.find(name);
  ORIGAMI_CHECK(it != entries_.end(), "safetensors file ", label_, ": no tensor named ",
                quote(name), " (the file has ", entries_.size(), " tensors)");
  return it->second;
}

std::span<const std::byte> SafetensorsFile::bytes(const std::string& name) const {
  const SafetensorsInfo& i = info(name);
  const auto* base = static_cast<const std::byte*>(mapping_->data);
  if (i.end == i.begin) return {};
  return {base + data_start_ + i.begin, i.end - i.begin};
}

Tensor SafetensorsFile::tensor(const std::string& name) const {
  const SafetensorsInfo& i = info(name);
  ORIGAMI_CHECK(i.dtype, "safetensors file ", label_, ": tensor ", quote(name), " has dtype ",
                i.dtype_name, ", which origami has no tensor type for; read its raw bytes with ",
                "bytes()");
  const size_t offset = data_start_ + i.begin;
  if (offset % i.element_size == 0 || i.begin == i.end)
    return Tensor::from_storage(mapping_, i.begin == i.end ? 0 : offset, i.shape, *i.dtype);
  // Misaligned (a header length that is not a multiple of 8, from some other writer): copy.
  Tensor t = Tensor::empty(i.shape, *i.dtype);
  std::memcpy(t.data(), static_cast<const char*>(mapping_->data) + offset, i.end - i.begin);
  return t;
}

// ---- sharded checkpoints ------------------------------------------------------------------------

namespace {
constexpr const char* kIndexName = "model.safetensors.index.json";
constexpr const char* kSingleName = "model.safetensors";
}  // namespace

SafetensorsIndex SafetensorsIndex::open(const std::string& path) {
  SafetensorsIndex idx;
  idx.label_ = path;
  fs::path index_path;
  std::error_code ec;  // the non-throwing overloads: failures surface as "cannot open" below
  if (fs::is_directory(path, ec)) {
    if (fs::exists(fs::path(path) / kIndexName, ec)) {
      index_path = fs::path(path) / kIndexName;
    } else if (fs::exists(fs::path(path) / kSingleName, ec)) {
      idx.shards_.push_back(SafetensorsFile::open((fs::path(path) / kSingleName).string()));
    } else {
      ORIGAMI_FAIL("safetensors: found neither ", kIndexName, " nor ", kSingleName, " in ", path,
                   "; is it a Hugging Face checkpoint folder?");
    }
  } else if (fs::path(path).extension() == ".json") {
    index_path = path;
  } else {
    idx.shards_.push_back(SafetensorsFile::open(path));
  }

  if (index_path.empty()) {
    for (const std::string& name : idx.shards_[0].names()) idx.shard_of_[name] = 0;
    return idx;
  }

  const std::string where = "safetensors index " + index_path.string();
  std::ifstream in(index_path, std::ios::binary);
  ORIGAMI_CHECK(in, "safetensors: cannot read ", index_path.string());
  std::stringstream ss;
  ss << in.rdbuf();
  const std::string text = ss.str();
  const json j = parse_json_strict(text.data(), text.data() + text.size(), where, "index");
  ORIGAMI_CHECK(j.is_object() && j.contains("weight_map") && j["weight_map"].is_object(), where,
                ": has no \"weight_map\" object mapping tensor names to shard files");
  const fs::path dir = index_path.parent_path();
  std::map<std::string, size_t> shard_index;  // file name -> index into shards_
  for (const auto& [name, file] : j["weight_map"].items()) {
    ORIGAMI_CHECK(file.is_string(), where, ": weight_map value for ", quote(name),
                  " is not a string");
    const std::string fname = file.get<std::string>();
    const fs::path rel(fname);
    bool escapes = rel.empty() || rel.is_absolute();
    for (const auto& part : rel) escapes = escapes || part == "..";
    ORIGAMI_CHECK(!escapes, where, ": shard path ", quote(fname), " for tensor ", quote(name),
                  " escapes the checkpoint folder");
    auto it = shard_index.find(fname);
    if (it == shard_index.end()) {
      const fs::path shard = dir / rel;
      ORIGAMI_CHECK(fs::exists(shard, ec), where, ": shard file ", shard.string(), " (for tensor ",
                    quote(name), ") does not exist");
      idx.shards_.push_back(SafetensorsFile::open(shard.string()));
      it = shard_index.emplace(fname, idx.shards_.size() - 1).first;
    }
    ORIGAMI_CHECK(idx.shards_[it->second].has(name), where, ": tensor ", quote(name),
                  " is mapped to ", fname, ", which does not contain it");
    idx.shard_of_[name] = it->second;
  }
  return idx;
}

std::vector<std::string> SafetensorsIndex::names() const {
  std::vector<std::string> out;
  for (const auto& [name, shard] : shard_of_) out.push_back(name);
  return out;
}

const SafetensorsFile& SafetensorsIndex::file_for(const std::string& name) const {
  auto it = shard_of_.find(name);
  ORIGAMI_CHECK(it != shard_of_.end(), "safetensors checkpoint ", label_, ": no tensor named ",
                quote(name));
  return shards_[it->second];
}

// ---- writing ----------------------------------------------------------------------------------

namespace {

void write_all(int fd, const void* data, size_t n, const std::string& path) {
  const char* p = static_cast<const char*>(data);
  while (n > 0) {
    const ssize_t w = ::write(fd, p, std::min<size_t>(n, size_t(1) << 30));
    if (w < 0 && errno == EINTR) continue;
    ORIGAMI_CHECK(w > 0, "safetensors: cannot write ", path, ": ", std::strerror(errno));
    p += w;
    n -= size_t(w);
  }
}

void fsync_dir(const fs::path& file) {
  fs::path dir = file.parent_path();
  if (dir.empty()) dir = ".";
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  ORIGAMI_CHECK(fd >= 0, "safetensors: cannot open folder ", dir.string(), ": ",
                std::strerror(errno));
  const int rc = ::fsync(fd);
  const int err = errno;
  ::close(fd);
  ORIGAMI_CHECK(rc == 0, "safetensors: cannot fsync folder ", dir.string(), ": ",
                std::strerror(err));
}

// Calls write(fd) on `path.tmp.<pid>`, then fsync, rename over `path`, fsync of the folder. The
// temporary file is removed on any failure.
template <typename Fn>
void write_atomically(const std::string& path, Fn&& write) {
  const std::string tmp = path + ".tmp." + std::to_string(::getpid());
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  ORIGAMI_CHECK(fd >= 0, "safetensors: cannot create ", tmp, ": ", std::strerror(errno));
  try {
    write(fd, tmp);
    ORIGAMI_CHECK(::fsync(fd) == 0, "safetensors: cannot fsync ", tmp, ": ", std::strerror(errno));
    const int rc = ::close(fd);
    ORIGAMI_CHECK(rc == 0, "safetensors: cannot close ", tmp, ": ", std::strerror(errno));
  } catch (...) {
    ::close(fd);
    ::unlink(tmp.c_str());
    throw;
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    const int err = errno;
    ::unlink(tmp.c_str());
    ORIGAMI_FAIL("safetensors: cannot rename ", tmp, " to ", path, ": ", std::strerror(err));
  }
  fsync_dir(path);
}

}  // namespace

void write_safetensors(const std::string& path, const NamedTensors& tensors,
                       const std::map<std::string, std::string>& metadata) {
  // Checks, and the reference's order: decreasing dtype rank, then name (bytewise).
  std::set<std::string> seen;
  std::vector<size_t> order;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const auto& [name, t] = tensors[i];
    ORIGAMI_CHECK(name != "__metadata__", "write_safetensors ", path,
                  ": \"__metadata__\" is reserved and cannot name a tensor");
    ORIGAMI_CHECK(seen.insert(name).second, "write_safetensors ", path, ": tensor name ",
                  json_string(name, "a tensor name"), " appears twice");
    ORIGAMI_CHECK(t.defined(), "write_safetensors ", path, ": tensor ", json_string(name, "name"),
                  " is undefined");
    order.push_back(i);
  }
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    const int ra = entry_for(tensors[a].second.dtype()).rank;
    const int rb = entry_for(tensors[b].second.dtype()).rank;
    return ra != rb ? ra > rb : tensors[a].first < tensors[b].first;
  });

  // The header, written field by field to match the reference byte for byte.
  std::string header = "{";
  if (!metadata.empty()) {
    header += "\"__metadata__\":{";
    bool first = true;
    for (const auto& [k, v] : metadata) {
      if (!first) header += ",";
      first = false;
      header += json_string(k, "metadata key") + ":" + json_string(v, "metadata value");
    }
    header += "}";
  }
  size_t offset = 0;
  for (size_t i : order) {
    const auto& [name, t] = tensors[i];
    if (header.size() > 1) header += ",";
    header += json_string(name, "tensor name") + ":{\"dtype\":\"" + entry_for(t.dtype()).name +
              "\",\"shape\":[";
    for (int d = 0; d < t.dim(); ++d) {
      if (d) header += ',';
      header += std::to_string(t.size(d));
    }
    header += "],\"data_offsets\":[" + std::to_string(offset) + "," +
              std::to_string(offset + t.nbytes()) + "]}";
    offset += t.nbytes();
  }
  header += "}";
  header.append((8 - header.size() % 8) % 8, ' ');

  write_atomically(path, [&](int fd, const std::string& tmp) {
    uint8_t len[8];
    for (int i = 0; i < 8; ++i) len[i] = uint8_t(uint64_t(header.size()) >> (8 * i));
    write_all(fd, len, 8, tmp);
    write_all(fd, header.data(), header.size(), tmp);
    for (size_t i : order) {
      const Tensor& t = tensors[i].second;
      if (t.numel() == 0) continue;
      // One tensor at a time on the host, so device tensors never all sit in host memory at once.
      const Tensor host = t.device().is_cpu() ? t.contiguous() : t.to(Device::cpu()).contiguous();
      write_all(fd, host.data(), host.nbytes(), tmp);
    }
  });
}

std::vector<std::string> write_safetensors_sharded(
    const std::string& dir, const NamedTensors& tensors, size_t max_shard_bytes,
    const std::map<std::string, std::string>& metadata) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  ORIGAMI_CHECK(!ec, "safetensors: cannot create folder ", dir, ": ", ec.message());

  // Greedy split in the given order, as huggingface_hub does.
  std::vector<NamedTensors> shards(1);
  size_t current = 0, total = 0;
  for (const auto& nt : tensors) {
    const size_t n = nt.second.defined() ? nt.second.nbytes() : 0;
    if (!shards.back().empty() && current + n > max_shard_bytes) {
      shards.emplace_back();
      current = 0;
    }
    shards.back().push_back(nt);
    current += n;
    total += n;
  }

  const fs::path root(dir);
  // Shard names from an earlier save into this folder, removed once the new checkpoint is
  // complete so the folder holds exactly one checkpoint.
  // model-NNNNN-of-NNNNN.safetensors (checked by hand: std::regex trips GCC 12's
  // -Wmaybe-uninitialized inside libstdc++ under the sanitizers).
  const auto is_shard_name = [](const std::string& f) {
    const std::string pre = "model-", mid = "-of-", post = ".safetensors";
    if (f.size() != pre.size() + 5 + mid.size() + 5 + post.size()) return false;
    const auto digits = [&](size_t at) {
      for (size_t i = at; i < at + 5; ++i)
        if (f[i] < '0' || f[i] > '9') return false;
      return true;
    };
    return f.compare(0, pre.size(), pre) == 0 && digits(pre.size()) &&
           f.compare(pre.size() + 5, mid.size(), mid) == 0 && digits(pre.size() + 5 + mid.size()) &&
           f.compare(f.size() - post.size(), post.size(), post) == 0;
  };
  std::vector<fs::path> stale;
  for (const auto& e : fs::directory_iterator(root, ec))
    if (is_shard_name(e.path().filename().string())) stale.push_back(e.path());

  std::vector<std::string> written;
  if (shards.size() == 1) {
    written.push_back((root / kSingleName).string());
    write_safetensors(written.back(), shards[0], metadata);
    fs::remove(root / kIndexName, ec);
  } else {
    json weight_map = json::object();
    for (size_t s = 0; s < shards.size(); ++s) {
      char fname[64];
      std::snprintf(fname, sizeof fname, "model-%05zu-of-%05zu.safetensors", s + 1, shards.size());
      written.push_back((root / fname).string());
      write_safetensors(written.back(), shards[s], metadata);
      for (const auto& nt : shards[s]) weight_map[nt.first] = fname;
    }
    json index = {{"metadata", {{"total_size", total}}}, {"weight_map", weight_map}};
    const std::string text = index.dump(2) + "\n";
    written.push_back((root / kIndexName).string());
    write_atomically(written.back(), [&](int fd, const std::string& tmp) {
      write_all(fd, text.data(), text.size(), tmp);
    });
    fs::remove(root / kSingleName, ec);
  }
  for (const fs::path& p : stale)
    if (std::find(written.begin(), written.end(), p.string()) == written.end()) fs::remove(p, ec);
  return written;
}

}  // namespace origami
