// Safetensors files (https://github.com/huggingface/safetensors): the weight format of Hugging
// Face checkpoints, and ours.
//
// Layout: an 8-byte little-endian header length N, N bytes of JSON
//   {"__metadata__": {"k": "v"}, "name": {"dtype": "F32", "shape": [2, 3],
//    "data_offsets": [begin, end]}, ...}
// then the data section, which the tensors' [begin, end) byte ranges must cover exactly, without
// overlaps or holes (as the reference implementation requires). Tensors are row-major,
// little-endian.
//
// Reading maps the file and hands out zero-copy tensors into the mapping. Every defect of a file
// is refused with an origami::Error naming the file and the problem; nothing in a file can make the
// reader touch memory outside the mapping.
#pragma once

#include <cstddef>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "runtime/tensor.h"

namespace origami {

// One tensor's entry in a safetensors header.
struct SafetensorsInfo {
  std::string dtype_name;      // as in the file: F32 BF16 F16 F64 I64 I32 I16 I8 U8 BOOL
  std::optional<DType> dtype;  // the origami DType, for F32 BF16 F16 I32 I64 U8; else none
  size_t element_size = 0;     // bytes per element
  Shape shape;
  size_t begin = 0, end = 0;  // byte range within the data section
};

// A parsed, memory-mapped safetensors file. Copies share the mapping; the mapping lives as long
// as the last SafetensorsFile or tensor taken from it.
class SafetensorsFile {
 public:
  // Maps `path` (read-only, MAP_PRIVATE) and validates the whole header. Throws origami::Error.
  // Pages load on first touch. Replacing the file (as write_safetensors does) is safe for
  // tensors already taken; truncating it in place is not (SIGBUS), as with any mapping.
  static SafetensorsFile open(const std::string& path);
  // Parses a safetensors image already in CPU memory; `label` names it in error messages.
  static SafetensorsFile from_memory(std::shared_ptr<Storage> bytes, const std::string& label);

  const std::string& path() const { return label_; }
  std::vector<std::string> names() const;  // sorted
  bool has(const std::string& name) const { return entries_.count(name) != 0; }
  const SafetensorsInfo& info(const std::string& name) const;  // throws for an unknown name
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  // Offset of the data section in the file (8 + header length).
  size_t data_start() const { return data_start_; }

  // A contiguous CPU tensor viewing the mapping (no copy). The memory is read-only: writing into
  // it faults, so clone() a tensor to modify it. If the file places the tensor at an address not
  // aligned to its element size, it is copied into aligned memory instead. Throws for dtypes
  // origami has no DType for (F64, I16, I8, BOOL): read those with bytes().
  Tensor tensor(const std::string& name) const;
  // The tensor's raw little-endian bytes, valid while this object (or a copy) lives.
  std::span<const std::byte> bytes(const std::string& name) const;

 private:
  std::string label_;
  std::shared_ptr<Storage> mapping_;
  size_t data_start_ = 0;
  std::map<std::string, SafetensorsInfo> entries_;
  std::map<std::string, std::string> metadata_;
};

// A checkpoint folder: sharded (model.safetensors.index.json with a "weight_map" of tensor name ->
// shard file, as Hugging Face writes it) or a single model.safetensors; the index wins when both
// exist. `path` may also name an index file or a .safetensors file directly. Each shard is opened
// once; open() checks that every shard exists and holds the tensors the index assigns to it.
class SafetensorsIndex {
 public:
  static SafetensorsIndex open(const std::string& path);

  std::vector<std::string> names() const;  // sorted
  bool has(const std::string& name) const { return shard_of_.count(name) != 0; }
  const SafetensorsFile& file_for(const std::string& name) const;  // the shard holding `name`
  const SafetensorsInfo& info(const std::string& name) const { return file_for(name).info(name); }
  Tensor tensor(const std::string& name) const { return file_for(name).tensor(name); }
  const std::vector<SafetensorsFile>& shards() const { return shards_; }

 private:
  std::string label_;
  std::vector<SafetensorsFile> shards_;
  std::map<std::string, size_t> shard_of_;  // tensor name -> index into shards_
};

using NamedTensors = std::vector<std::pair<std::string, Tensor>>;

// Writes `tensors` (any device, any strides; dtypes f32 bf16 f16 i32 i64 u8) and `metadata` to
// `path` in the reference library's byte layout: entries ordered by decreasing dtype rank then
// name, so every tensor is aligned to its element size; header padded with spaces to a multiple
// of 8. Atomic: writes `path.tmp.<pid>`, fsyncs it, renames it over `path` and fsyncs the folder,
// so an existing file is never left half-written. Hugging Face transformers expects metadata
// {"format": "pt"}.
void write_safetensors(const std::string& path, const NamedTensors& tensors,
                       const std::map<std::string, std::string>& metadata = {});

// Writes a Hugging Face style checkpoint into folder `dir` (created if missing): shards
// model-00001-of-0000N.safetensors of at most `max_shard_bytes` each (a larger tensor gets a shard
// of its own; tensors kept in the given order) and model.safetensors.index.json, or a single
// model.safetensors when everything fits in one shard. Returns the files written.
std::vector<std::string> write_safetensors_sharded(
    const std::string& dir, const NamedTensors& tensors, size_t max_shard_bytes,
    const std::map<std::string, std::string>& metadata = {});

}  // namespace origami
