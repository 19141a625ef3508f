// Tensor: a typed, shaped, strided view into a block of device memory. No autograd: every layer
// writes its backward by hand. A Tensor shares its Storage; views (narrow, select, transpose,
// view) never copy.
#pragma once

#include <cstdint>
#include <functional>
#include <initializer_list>
#include <memory>
#include <string>
#include <vector>

#include "runtime/device.h"
#include "runtime/dtype.h"
#include "runtime/error.h"

namespace origami {

using Shape = std::vector<int64_t>;
std::string shape_str(const Shape& s);  // "[3,4]"
int64_t shape_numel(const Shape& s);

// A block of memory on one device, freed by its deleter (nothing for borrowed memory).
struct Storage {
  void* data = nullptr;
  size_t bytes = 0;
  Device device;
  std::function<void(void*)> deleter;
  ~Storage() {
    if (deleter && data) deleter(data);
  }
};

class Tensor {
 public:
  Tensor() = default;

  // A new tensor, uninitialised (empty) or zero-filled, owning its memory.
  static Tensor empty(const Shape& shape, DType dtype, Device device = Device::cpu());
  static Tensor zeros(const Shape& shape, DType dtype, Device device = Device::cpu());
  // A tensor in page-locked host memory (see pinned_alloc).
  static Tensor empty_pinned(const Shape& shape, DType dtype);
  // Wraps memory owned elsewhere (an arena, an mmap'ed file); it must outlive the tensor.
  static Tensor from_blob(void* data, const Shape& shape, DType dtype, Device device = Device::cpu());
  // A view of `storage` starting `byte_offset` bytes in (a multiple of the dtype size); keeps the
  // storage alive. Arenas hand out their tensors this way.
  static Tensor from_storage(std::shared_ptr<Storage> storage, size_t byte_offset,
                             const Shape& shape, DType dtype);
  // A CPU tensor holding `values` converted to `dtype`.
  static Tensor from_vector(const std::vector<float>& values, const Shape& shape,
                            DType dtype = DType::f32);
  static Tensor from_vector_i64(const std::vector<int64_t>& values, const Shape& shape,
                                DType dtype = DType::i64);

  bool defined() const { return storage_ != nullptr; }
  DType dtype() const { return dtype_; }
  Device device() const { return storage_ ? storage_->device : Device::cpu(); }
  const Shape& shape() const { return shape_; }
  const Shape& strides() const { return strides_; }  // in elements
  int dim() const { return int(shape_.size()); }
  int64_t size(int d) const;  // negative d counts from the end
  int64_t stride(int d) const;
  int64_t numel() const { return shape_numel(shape_); }
  size_t nbytes() const { return size_t(numel()) * dtype_size(dtype_); }
  bool is_contiguous() const;
  int64_t offset() const { return offset_; }  // in elements, into the storage
  const std::shared_ptr<Storage>& storage() const { return storage_; }

  void* data() const;  // pointer to element 0 of this view
  template <typename T>
  T* data_as() const {
    return static_cast<T*>(data());
  }

  // Views (no copy). view() needs a contiguous tensor; one dimension may be -1.
  Tensor view(const Shape& shape) const;
  Tensor narrow(int dim, int64_t start, int64_t length) const;
  Tensor select(int dim, int64_t index) const;  // drops `dim`
  Tensor transpose(int d0, int d1) const;

  // Copies (may convert dtype and device). copy_from requires equal shapes.
  void copy_from(const Tensor& src);
  Tensor to(Device device) const;
  Tensor to(DType dtype) const;  // on the same device
  Tensor contiguous() const;
  Tensor clone() const;

  void zero_();
  void fill_(double value);

  // For tests and debugging on CPU: element i of a contiguous tensor as double / set it.
  double item_at(int64_t i) const;
  void set_at(int64_t i, double v);
  std::vector<float> to_float_vector() const;  // any float/int dtype, any device

  std::string str() const;  // "f32[3,4] cpu"

 private:
  std::shared_ptr<Storage> storage_;
  int64_t offset_ = 0;
  DType dtype_ = DType::f32;
  Shape shape_;
  Shape strides_;
};

Shape contiguous_strides(const Shape& shape);

}  // namespace origami
