// Arenas: parameters, gradients, optimizer state and activations each live in one block sized
// before the first step from a MemoryPlan. Allocation from an arena is a pointer bump; nothing is
// allocated from the system inside a step. reset() recycles an arena (activations per step).
#pragma once

#include <cstddef>
#include <cstdint>
#include <iosfwd>
#include <string>
#include <vector>

#include "runtime/tensor.h"

namespace origami {

// Bytes each named buffer will need, grouped by arena ("parameters", "gradients", ...).
class MemoryPlan {
 public:
  struct Entry {
    std::string arena;
    std::string name;
    size_t bytes;
  };
  // Records `numel` elements of `dtype` for buffer `name` in `arena` (rounded up to kAlignment).
  void add(const std::string& arena, const std::string& name, const Shape& shape, DType dtype);
  void add_bytes(const std::string& arena, const std::string& name, size_t bytes);
  size_t arena_bytes(const std::string& arena) const;
  size_t total_bytes() const;
  std::vector<std::string> arenas() const;  // in order of first use
  const std::vector<Entry>& entries() const { return entries_; }
  // A table: one line per arena with its size in MiB, then the total; with `detail` every buffer.
  void print(std::ostream& os, const std::string& title = "memory plan", bool detail = false) const;

 private:
  std::vector<Entry> entries_;
};

class Arena {
 public:
  Arena(std::string name, size_t capacity_bytes, Device device = Device::cpu());
  Arena(const Arena&) = delete;
  Arena& operator=(const Arena&) = delete;

  // A tensor carved from the arena (uninitialised); throws naming the arena when it is full.
  Tensor allocate(const Shape& shape, DType dtype);
  void reset() { used_ = 0; }  // every tensor handed out before becomes invalid
  size_t used() const { return used_; }
  size_t capacity() const { return capacity_; }
  size_t high_water() const { return high_water_; }
  const std::string& name() const { return name_; }
  Device device() const { return device_; }

 private:
  std::string name_;
  Device device_;
  size_t capacity_;
  size_t used_ = 0;
  size_t high_water_ = 0;
  Tensor block_;  // u8 [capacity]
};

// Human-readable byte count: "1.50 MiB".
std::string format_bytes(size_t bytes);

}  // namespace origami
