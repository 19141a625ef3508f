#include "runtime/checkpoint.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "runtime/error.h"

namespace origami {

namespace fs = std::filesystem;
using json = nlohmann::json;

uint32_t crc32_of(const void* data, size_t bytes) {
  uLong c = crc32(0L, Z_NULL, 0);
  const Bytef* p = static_cast<const Bytef*>(data);
  while (bytes > 0) {  // zlib takes uInt lengths
    const uInt n = uInt(std::min<size_t>(bytes, 1u << 30));
    c = crc32(c, p, n);
    p += n;
    bytes -= n;
  }
  return uint32_t(c);
}

namespace {

std::string step_name(int64_t step) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "step_%08lld", static_cast<long long>(step));
  return buf;
}

std::string rank_name(int rank, const char* ext) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "rank_%05d.%s", rank, ext);
  return buf;
}

[[noreturn]] void fail_errno(const std::string& what, const std::string& path) {
  ORIGAMI_FAIL(what, " '", path, "': ", std::strerror(errno));
}

void write_all(int fd, const void* data, size_t bytes, const std::string& path) {
  const char* p = static_cast<const char*>(data);
  while (bytes > 0) {
    const ssize_t n = ::write(fd, p, bytes);
    if (n < 0) {
      if (errno == EINTR) continue;
      fail_errno("cannot write", path);
    }
    p += n;
    bytes -= size_t(n);
  }
}

// Writes a whole file and fsyncs it.
void write_file_synced(const std::string& path, const std::string& text) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) fail_errno("cannot create", path);
  write_all(fd, text.data(), text.size(), path);
  if (::fsync(fd) != 0) fail_errno("cannot fsync", path);
  ::close(fd);
}

void fsync_dir(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) fail_errno("cannot open folder", path);
  ::fsync(fd);  // some file systems refuse fsync on folders; the rename order still holds there
  ::close(fd);
}

std::string read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  ORIGAMI_CHECK(f, "checkpoint file '", path, "' is missing or unreadable");
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

json parse_json_file(const std::string& path) {
  const std::string text = read_file(path);
  try {
    return json::parse(text);
  } catch (const json::exception& e) {
    ORIGAMI_FAIL("checkpoint file '", path, "' is corrupt (not valid JSON: ", e.what(), ")");
  }
}

Shape shape_from_json(const json& j) {
  Shape s;
  for (const auto& v : j) s.push_back(v.get<int64_t>());
  return s;
}

}  // namespace

// ---- writer ----------------------------------------------------------------------------------

CheckpointWriter::CheckpointWriter(std::string root, int64_t step, int rank, int world_size)
    : root_(std::move(root)), step_(step), rank_(rank), world_size_(world_size) {
  ORIGAMI_CHECK(rank >= 0 && rank < world_size, "checkpoint: rank ", rank, " outside world of ",
                world_size);
  tmp_dir_ = (fs::path(root_) / (".tmp_" + step_name(step))).string();
  std::error_code ec;
  fs::create_directories(tmp_dir_, ec);
  ORIGAMI_CHECK(!ec, "cannot create checkpoint folder '", tmp_dir_, "': ", ec.message());
}

std::string CheckpointWriter::final_dir() const {
  return (fs::path(root_) / step_name(step_)).string();
}

void CheckpointWriter::add(const std::string& name, const Tensor& piece, const Shape& global_shape,
                           const Shape& offsets) {
  ORIGAMI_CHECK(piece.defined(), "checkpoint: tensor '", name, "' is undefined");
  Piece p;
  p.name = name;
  p.data = piece.to(Device::cpu()).contiguous();
  if (p.data.storage() == piece.storage()) p.data = piece.clone();  // a snapshot, not a view
  p.global_shape = global_shape.empty() ? piece.shape() : global_shape;
  p.offsets = offsets.empty() ? Shape(piece.shape().size(), 0) : offsets;
  ORIGAMI_CHECK(
      p.global_shape.size() == piece.shape().size() && p.offsets.size() == piece.shape().size(),
      "checkpoint: tensor '", name, "' piece ", piece.str(), " has global shape ",
      shape_str(p.global_shape), " and offsets ", shape_str(p.offsets), " of a different rank");
  for (size_t d = 0; d < p.offsets.size(); ++d)
    ORIGAMI_CHECK(p.offsets[d] >= 0 && p.offsets[d] + piece.shape()[d] <= p.global_shape[d],
                  "checkpoint: tensor '", name, "' piece ", piece.str(), " at offsets ",
                  shape_str(p.offsets), " does not fit global shape ", shape_str(p.global_shape));
  pieces_.push_back(std::move(p));
}

void CheckpointWriter::write_rank_files() {
  const std::string bin = (fs::path(tmp_dir_) / rank_name(rank_, "bin")).string();
  const int fd = ::open(bin.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) fail_errno("cannot create", bin);
  json index = json::object();
  index["rank"] = rank_;
  index["tensors"] = json::array();
  uint64_t offset = 0;
  for (const Piece& p : pieces_) {
    const size_t bytes = p.data.nbytes();
    write_all(fd, p.data.data(), bytes, bin);
    index["tensors"].push_back({{"name", p.name},
                                {"dtype", dtype_name(p.data.dtype())},
                                {"global_shape", p.global_shape},
                                {"offsets", p.offsets},
                                {"shape", p.data.shape()},
                                {"file", rank_name(rank_, "bin")},
                                {"byte_offset", offset},
                                {"bytes", bytes},
                                {"crc32", crc32_of(p.data.data(), bytes)}});
    offset += bytes;
  }
  if (::fsync(fd) != 0) fail_errno("cannot fsync", bin);
  ::close(fd);
  write_file_synced((fs::path(tmp_dir_) / rank_name(rank_, "json")).string(), index.dump(1));
  pieces_.clear();
}

void CheckpointWriter::commit(const json& meta, int keep) {
  ORIGAMI_CHECK(rank_ == 0, "checkpoint: commit() is rank 0's job, called on rank ", rank_);
  json m = {{"format", "origami-checkpoint"},
            {"version", 1},
            {"step", step_},
            {"world_size", world_size_},
            {"user", meta}};
  for (int r = 0; r < world_size_; ++r) {
    const fs::path idx = fs::path(tmp_dir_) / rank_name(r, "json");
    ORIGAMI_CHECK(fs::exists(idx), "checkpoint: rank ", r, " did not write ", idx.string(),
                  " (commit must follow a barrier after every rank's write_rank_files)");
    m["shards"].push_back(rank_name(r, "json"));
  }
  write_file_synced((fs::path(tmp_dir_) / "meta.json").string(), m.dump(1));
  fsync_dir(tmp_dir_);

  // Publish: a step folder of the same name (a re-save after resume) is moved aside first.
  const std::string final = final_dir();
  std::error_code ec;
  if (fs::exists(final)) {
    const std::string old = (fs::path(root_) / (".old_" + step_name(step_))).string();
    fs::remove_all(old, ec);
    if (std::rename(final.c_str(), old.c_str()) != 0) fail_errno("cannot move aside", final);
  }
  if (std::rename(tmp_dir_.c_str(), final.c_str()) != 0) fail_errno("cannot publish", final);
  fsync_dir(root_);
  const std::string latest_tmp = (fs::path(root_) / "latest.tmp").string();
  write_file_synced(latest_tmp, step_name(step_) + "\n");
  const std::string latest = (fs::path(root_) / "latest").string();
  if (std::rename(latest_tmp.c_str(), latest.c_str()) != 0) fail_errno("cannot update", latest);
  fsync_dir(root_);

  // Clean up: leftovers of interrupted saves, then old checkpoints beyond `keep`.
  std::vector<std::string> steps;
  for (const auto& e : fs::directory_iterator(root_)) {
    const std::string n = e.path().filename().string();
    if (n.rfind(".old_", 0) == 0 || (n.rfind(".tmp_", 0) == 0 && e.path() != fs::path(tmp_dir_)))
      fs::remove_all(e.path(), ec);
    else if (n.rfind("step_", 0) == 0 && e.is_directory())
      steps.push_back(n);
  }
  std::sort(steps.begin(), steps.end());
  if (keep > 0)
    for (size_t i = 0; i + size_t(keep) < steps.size(); ++i)
      if (steps[i] != step_name(step_)) fs::remove_all(fs::path(root_) / steps[i], ec);
}

// ---- reader ----------------------------------------------------------------------------------

std::optional<std::string> CheckpointReader::latest(const std::string& root) {
  const fs::path p = fs::path(root) / "latest";
  if (!fs::exists(p)) return std::nullopt;
  std::string name = read_file(p.string());
  while (!name.empty() && (name.back() == '\n' || name.back() == ' ')) name.pop_back();
  ORIGAMI_CHECK(name.rfind("step_", 0) == 0 && name.find('/') == std::string::npos, "'", p.string(),
                "' is corrupt: it names '", name, "', not a step folder");
  const fs::path dir = fs::path(root) / name;
  ORIGAMI_CHECK(fs::is_directory(dir), "'", p.string(), "' names ", name,
                " but that folder is missing");
  return dir.string();
}

CheckpointReader::CheckpointReader(const std::string& step_dir) : dir_(step_dir) {
  const std::string meta_path = (fs::path(dir_) / "meta.json").string();
  ORIGAMI_CHECK(fs::exists(meta_path), "'", dir_,
                "' is not a complete checkpoint: meta.json is missing");
  json m = parse_json_file(meta_path);
  try {
    ORIGAMI_CHECK(m.at("format") == "origami-checkpoint", meta_path,
                  ": not an origami checkpoint (format ", m.at("format").dump(), ")");
    step_ = m.at("step").get<int64_t>();
    world_size_ = m.at("world_size").get<int>();
    user_meta_ = m.value("user", json::object());
    for (const auto& shard : m.at("shards")) {
      const std::string idx_path = (fs::path(dir_) / shard.get<std::string>()).string();
      json idx = parse_json_file(idx_path);
      for (const auto& t : idx.at("tensors")) {
        const std::string name = t.at("name").get<std::string>();
        Entry& e = tensors_[name];
        const DType dt = dtype_from_name(t.at("dtype").get<std::string>());
        const Shape gs = shape_from_json(t.at("global_shape"));
        if (e.pieces.empty()) {
          e.dtype = dt;
          e.global_shape = gs;
        } else {
          ORIGAMI_CHECK(e.dtype == dt && e.global_shape == gs, idx_path, ": tensor '", name,
                        "' disagrees with another rank's index about its dtype or global shape");
        }
        Piece p;
        p.file = (fs::path(dir_) / t.at("file").get<std::string>()).string();
        p.offsets = shape_from_json(t.at("offsets"));
        p.shape = shape_from_json(t.at("shape"));
        p.byte_offset = t.at("byte_offset").get<uint64_t>();
        p.bytes = t.at("bytes").get<uint64_t>();
        p.crc = t.at("crc32").get<uint32_t>();
        ORIGAMI_CHECK(p.offsets.size() == gs.size() && p.shape.size() == gs.size() &&
                          p.bytes == uint64_t(shape_numel(p.shape)) * dtype_size(dt),
                      idx_path, ": tensor '", name, "' has an inconsistent entry");
        e.pieces.push_back(p);
      }
    }
  } catch (const json::exception& ex) {
    ORIGAMI_FAIL("checkpoint '", dir_, "' has a malformed index: ", ex.what());
  }
}

std::vector<std::string> CheckpointReader::names() const {
  std::vector<std::string> n;
  for (const auto& [k, v] : tensors_) n.push_back(k);
  return n;
}

Shape CheckpointReader::global_shape(const std::string& name) const {
  auto it = tensors_.find(name);
  ORIGAMI_CHECK(it != tensors_.end(), "checkpoint '", dir_, "' has no tensor '", name, "'");
  return it->second.global_shape;
}

DType CheckpointReader::dtype(const std::string& name) const {
  auto it = tensors_.find(name);
  ORIGAMI_CHECK(it != tensors_.end(), "checkpoint '", dir_, "' has no tensor '", name, "'");
  return it->second.dtype;
}

void CheckpointReader::read(const std::string& name, Tensor& out, const Shape& offsets_in) const {
  auto it = tensors_.find(name);
  ORIGAMI_CHECK(it != tensors_.end(), "checkpoint '", dir_, "' has no tensor '", name, "'");
  const Entry& e = it->second;
  const size_t nd = e.global_shape.size();
  const Shape offsets = offsets_in.empty() ? Shape(nd, 0) : offsets_in;
  ORIGAMI_CHECK(out.dim() == int(nd) && offsets.size() == nd, "checkpoint: reading '", name, "' ",
                shape_str(e.global_shape), " into ", out.str(), " at offsets ", shape_str(offsets),
                ": ranks differ");
  for (size_t d = 0; d < nd; ++d)
    ORIGAMI_CHECK(offsets[d] >= 0 && offsets[d] + out.shape()[d] <= e.global_shape[d],
                  "checkpoint: region ", shape_str(offsets), "+", out.str(), " of '", name,
                  "' lies outside its global shape ", shape_str(e.global_shape));

  // Assemble the region in the stored dtype on the CPU, tracking which elements were covered.
  Tensor region = Tensor::empty(out.shape(), e.dtype);
  const int64_t n = region.numel();
  std::vector<uint8_t> covered(size_t(n), 0);
  const size_t es = dtype_size(e.dtype);
  const Shape rstride = contiguous_strides(out.shape());
  for (const Piece& p : e.pieces) {
    Shape lo(nd), hi(nd);
    bool empty = false;
    for (size_t d = 0; d < nd; ++d) {
      lo[d] = std::max(offsets[d], p.offsets[d]);
      hi[d] = std::min(offsets[d] + out.shape()[d], p.offsets[d] + p.shape[d]);
      if (hi[d] <= lo[d]) empty = true;
    }
    if (empty && n > 0) continue;
    // Read and verify the whole piece (pieces are what one rank held: small enough).
    std::vector<char> buf(p.bytes);
    const int fd = ::open(p.file.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) fail_errno("cannot open checkpoint file", p.file);
    struct stat st {};
    ::fstat(fd, &st);
    // Which piece (a tensor saved by several ranks has one per rank), and what to do.
    const auto piece = [&] {
      return detail::concat("its piece at offsets ", shape_str(p.offsets), " of shape ",
                            shape_str(p.shape), ", bytes ", p.byte_offset, "..",
                            p.byte_offset + p.bytes, " of the file");
    };
    const auto advice = [&] {
      return "; restore the file, or use an earlier checkpoint of '" +
             fs::path(dir_).parent_path().string() + "'";
    };
    if (uint64_t(st.st_size) < p.byte_offset + p.bytes) {
      ::close(fd);
      ORIGAMI_FAIL("checkpoint file '", p.file, "' is truncated: ", st.st_size,
                   " bytes, but tensor '", name, "' (", piece(), ") needs bytes up to ",
                   p.byte_offset + p.bytes, advice());
    }
    size_t done = 0;
    while (done < p.bytes) {
      const ssize_t r = ::pread(fd, buf.data() + done, p.bytes - done, off_t(p.byte_offset + done));
      if (r <= 0) {
        ::close(fd);
        fail_errno("cannot read checkpoint file", p.file);
      }
      done += size_t(r);
    }
    ::close(fd);
    ORIGAMI_CHECK(crc32_of(buf.data(), buf.size()) == p.crc, "checkpoint file '", p.file,
                  "' is corrupt: tensor '", name, "' (", piece(), ") fails its CRC-32 check",
                  advice());
    if (n == 0) continue;
    if (nd == 0) {  // a scalar
      std::memcpy(region.data(), buf.data(), es);
      covered[0] = 1;
      continue;
    }
    // Copy the intersection row by row (last dimension contiguous in both).
    const Shape pstride = contiguous_strides(p.shape);
    Shape idx = lo;
    const int64_t run = hi[nd - 1] - lo[nd - 1];
    while (true) {
      int64_t src = 0, dst = 0;
      for (size_t d = 0; d < nd; ++d) {
        src += (idx[d] - p.offsets[d]) * pstride[d];
        dst += (idx[d] - offsets[d]) * rstride[d];
      }
      std::memcpy(static_cast<char*>(region.data()) + dst * int64_t(es),
                  buf.data() + src * int64_t(es), size_t(run) * es);
      std::fill(covered.begin() + dst, covered.begin() + dst + run, 1);
      // Next row: advance every dimension but the last.
      int d = int(nd) - 2;
      for (; d >= 0; --d) {
        if (++idx[d] < hi[d]) break;
        idx[d] = lo[d];
      }
      if (d < 0) break;
    }
  }
  ORIGAMI_CHECK(std::all_of(covered.begin(), covered.end(), [](uint8_t c) { return c != 0; }),
                "checkpoint '", dir_, "': the stored pieces of '", name, "' do not cover region ",
                shape_str(offsets), "+", shape_str(out.shape()));
  out.copy_from(region);
}

Tensor CheckpointReader::read_full(const std::string& name) const {
  Tensor t = Tensor::empty(global_shape(name), dtype(name));
  read(name, t);
  return t;
}

}  // namespace origami
