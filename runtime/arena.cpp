#include "runtime/arena.h"

#include <algorithm>
#include <cstdio>
#include <ostream>

namespace origami {

static size_t align_up(size_t n) { return (n + kAlignment - 1) / kAlignment * kAlignment; }

std::string format_bytes(size_t bytes) {
  char buf[64];
  const double b = double(bytes);
  if (b >= 1024.0 * 1024 * 1024)
    std::snprintf(buf, sizeof buf, "%.2f GiB", b / (1024.0 * 1024 * 1024));
  else if (b >= 1024.0 * 1024)
    std::snprintf(buf, sizeof buf, "%.2f MiB", b / (1024.0 * 1024));
  else if (b >= 1024.0)
    std::snprintf(buf, sizeof buf, "%.2f KiB", b / 1024.0);
  else
    std::snprintf(buf, sizeof buf, "%zu B", bytes);
  return buf;
}

void MemoryPlan::add(const std::string& arena, const std::string& name, const Shape& shape,
                     DType dtype) {
  add_bytes(arena, name, size_t(shape_numel(shape)) * dtype_size(dtype));
}

void MemoryPlan::add_bytes(const std::string& arena, const std::string& name, size_t bytes) {
  entries_.push_back({arena, name, align_up(bytes)});
}

size_t MemoryPlan::arena_bytes(const std::string& arena) const {
  size_t n = 0;
  for (const Entry& e : entries_)
    if (e.arena == arena) n += e.bytes;
  return n;
}

size_t MemoryPlan::total_bytes() const {
  size_t n = 0;
  for (const Entry& e : entries_) n += e.bytes;
  return n;
}

std::vector<std::string> MemoryPlan::arenas() const {
  std::vector<std::string> names;
  for (const Entry& e : entries_)
    if (std::find(names.begin(), names.end(), e.arena) == names.end()) names.push_back(e.arena);
  return names;
}

void MemoryPlan::print(std::ostream& os, const std::string& title, bool detail) const {
  os << title << ":\n";
  char line[256];
  for (const std::string& a : arenas()) {
    std::snprintf(line, sizeof line, "  %-20s %14zu bytes  %12s\n", a.c_str(), arena_bytes(a),
                  format_bytes(arena_bytes(a)).c_str());
    os << line;
    if (detail)
      for (const Entry& e : entries_)
        if (e.arena == a) {
          std::snprintf(line, sizeof line, "    %-30s %14zu bytes\n", e.name.c_str(), e.bytes);
          os << line;
        }
  }
  std::snprintf(line, sizeof line, "  %-20s %14zu bytes  %12s\n", "total", total_bytes(),
                format_bytes(total_bytes()).c_str());
  os << line;
}

Arena::Arena(std::string name, size_t capacity_bytes, Device device)
    : name_(std::move(name)), device_(device), capacity_(align_up(capacity_bytes)) {
  try {
    block_ = Tensor::empty({int64_t(capacity_)}, DType::u8, device);
  } catch (const Error& e) {
    ORIGAMI_FAIL("arena '", name_, "' (", format_bytes(capacity_), " on ", device.str(),
                 "): ", e.what());
  }
}

Tensor Arena::allocate(const Shape& shape, DType dtype) {
  const size_t bytes = align_up(size_t(shape_numel(shape)) * dtype_size(dtype));
  ORIGAMI_CHECK(used_ + bytes <= capacity_, "arena '", name_, "' is full: ", format_bytes(used_),
                " of ", format_bytes(capacity_), " used, ", dtype_name(dtype), shape_str(shape),
                " needs ", format_bytes(bytes), " more; the memory plan under-counted this arena");
  Tensor t = Tensor::from_storage(block_.storage(), used_, shape, dtype);
  used_ += bytes;
  high_water_ = std::max(high_water_, used_);
  return t;
}

}  // namespace origami
