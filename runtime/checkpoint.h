// Checkpoints that survive crashes and reshard between parallel layouts.
//
// Layout on disk (ROOT is the checkpoint folder of a run):
//   ROOT/latest                 text: the name of the newest complete step folder
//   ROOT/step_00000120/meta.json     step, world size, shard index files, caller's metadata
//   ROOT/step_00000120/rank_00003.json  every tensor piece rank 3 wrote: name, dtype, global
//                                        shape, offsets of the piece, byte range, CRC-32
//   ROOT/step_00000120/rank_00003.bin   the bytes
// Every tensor is stored with its global shape and the offsets of each piece, so a checkpoint
// written under one layout can be read under any other: read() assembles any region from the
// pieces that cover it.
//
// Saving is atomic: every rank writes its files into ROOT/.tmp_step_N and fsyncs them; after a
// barrier rank 0 writes meta.json, renames the folder to step_N, then rewrites `latest` by
// rename. A crash at any point leaves `latest` naming a complete checkpoint (or no `latest`).
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "runtime/tensor.h"

namespace origami {

class CheckpointWriter {
 public:
  // Begins checkpoint `step` under `root` for this rank (creates the temporary folder).
  CheckpointWriter(std::string root, int64_t step, int rank, int world_size);

  // Adds this rank's piece of tensor `name`. `global_shape` empty = the piece is the whole tensor;
  // `offsets` (one per dimension) place the piece inside the global tensor. Replicated tensors
  // may be added by several ranks; readers use any copy.
  void add(const std::string& name, const Tensor& piece, const Shape& global_shape = {},
           const Shape& offsets = {});

  // Every rank: writes and fsyncs rank_R.bin and rank_R.json. Then the caller runs a barrier.
  void write_rank_files();

  // Rank 0 only, after the barrier: writes meta.json (with `meta` under "user"), publishes the
  // folder and rewrites `latest`; then deletes all but the newest `keep` checkpoints (0 = keep all)
  // and leftovers of interrupted saves.
  void commit(const nlohmann::json& meta, int keep = 0);

  // The folder a committed checkpoint lives in.
  std::string final_dir() const;

 private:
  struct Piece {
    std::string name;
    Tensor data;  // contiguous CPU copy
    Shape global_shape;
    Shape offsets;
  };
  std::string root_, tmp_dir_;
  int64_t step_;
  int rank_, world_size_;
  std::vector<Piece> pieces_;
};

class CheckpointReader {
 public:
  // The step folder `latest` points to, or nullopt when there is no checkpoint under `root`.
  static std::optional<std::string> latest(const std::string& root);

  // Opens a step folder; checks meta.json and that every rank's index is present.
  explicit CheckpointReader(const std::string& step_dir);

  int64_t step() const { return step_; }
  int world_size() const { return world_size_; }
  const nlohmann::json& user_meta() const { return user_meta_; }
  std::vector<std::string> names() const;
  bool has(const std::string& name) const { return tensors_.count(name) > 0; }
  Shape global_shape(const std::string& name) const;
  DType dtype(const std::string& name) const;

  // Fills `out` (any device, any float dtype: converted) with the region of `name` starting at
  // `offsets` (empty = all zeros) of shape out.shape(). Throws when the stored pieces do not
  // cover the region, or when a file is truncated or fails its CRC-32.
  void read(const std::string& name, Tensor& out, const Shape& offsets = {}) const;
  // The whole tensor, on the CPU.
  Tensor read_full(const std::string& name) const;

 private:
  struct Piece {
    std::string file;
    Shape offsets, shape;
    uint64_t byte_offset = 0, bytes = 0;
    uint32_t crc = 0;
  };
  struct Entry {
    DType dtype;
    Shape global_shape;
    std::vector<Piece> pieces;
  };
  std::string dir_;
  int64_t step_ = 0;
  int world_size_ = 0;
  nlohmann::json user_meta_;
  std::map<std::string, Entry> tensors_;
};

// CRC-32 (zlib polynomial) of a byte range.
uint32_t crc32_of(const void* data, size_t bytes);

}  // namespace origami
