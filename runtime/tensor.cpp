#include "runtime/tensor.h"

#include <cstdlib>
#include <cstring>
#include <sstream>

#include "runtime/cuda_copy.h"
#include "runtime/stream.h"

namespace origami {

std::string shape_str(const Shape& s) {
  std::ostringstream os;
  os << "[";
  for (size_t i = 0; i < s.size(); ++i) os << (i ? "," : "") << s[i];
  os << "]";
  return os.str();
}

int64_t shape_numel(const Shape& s) {
  int64_t n = 1;
  for (int64_t d : s) n *= d;
  return n;
}

Shape contiguous_strides(const Shape& shape) {
  Shape st(shape.size());
  int64_t s = 1;
  for (int i = int(shape.size()) - 1; i >= 0; --i) {
    st[i] = s;
    s *= shape[i];
  }
  return st;
}

static void check_shape_valid(const Shape& shape) {
  for (int64_t d : shape)
    ORIGAMI_CHECK(d >= 0, "tensor shape ", shape_str(shape), " has a negative dimension");
}

Tensor Tensor::empty(const Shape& shape, DType dtype, Device device) {
  check_shape_valid(shape);
  Tensor t;
  const size_t bytes = size_t(shape_numel(shape)) * dtype_size(dtype);
  auto st = std::make_shared<Storage>();
  st->bytes = bytes;
  st->device = device;
  DeviceBackend& be = backend_for(device);
  st->data = be.allocate(bytes, device.index);
  const int index = device.index;
  st->deleter = [&be, index](void* p) { be.deallocate(p, index); };
  t.storage_ = std::move(st);
  t.dtype_ = dtype;
  t.shape_ = shape;
  t.strides_ = contiguous_strides(shape);
  return t;
}

Tensor Tensor::zeros(const Shape& shape, DType dtype, Device device) {
  Tensor t = empty(shape, dtype, device);
  t.zero_();
  return t;
}

Tensor Tensor::empty_pinned(const Shape& shape, DType dtype) {
  check_shape_valid(shape);
  Tensor t;
  auto st = std::make_shared<Storage>();
  st->bytes = size_t(shape_numel(shape)) * dtype_size(dtype);
  st->device = Device::cpu();
  st->data = pinned_alloc(st->bytes);
  st->deleter = [](void* p) { pinned_free(p); };
  t.storage_ = std::move(st);
  t.dtype_ = dtype;
  t.shape_ = shape;
  t.strides_ = contiguous_strides(shape);
  return t;
}

Tensor Tensor::from_blob(void* data, const Shape& shape, DType dtype, Device device) {
  check_shape_valid(shape);
  Tensor t;
  auto st = std::make_shared<Storage>();
  st->data = data;
  st->bytes = size_t(shape_numel(shape)) * dtype_size(dtype);
  st->device = device;
  t.storage_ = std::move(st);
  t.dtype_ = dtype;
  t.shape_ = shape;
  t.strides_ = contiguous_strides(shape);
  return t;
}

Tensor Tensor::from_storage(std::shared_ptr<Storage> storage, size_t byte_offset,
                            const Shape& shape, DType dtype) {
  check_shape_valid(shape);
  ORIGAMI_CHECK(storage && byte_offset % dtype_size(dtype) == 0 &&
                    byte_offset + size_t(shape_numel(shape)) * dtype_size(dtype) <= storage->bytes,
                "from_storage: ", dtype_name(dtype), shape_str(shape), " at byte ", byte_offset,
                " does not fit a storage of ", storage ? storage->bytes : 0, " bytes");
  Tensor t;
  t.storage_ = std::move(storage);
  t.offset_ = int64_t(byte_offset / dtype_size(dtype));
  t.dtype_ = dtype;
  t.shape_ = shape;
  t.strides_ = contiguous_strides(shape);
  return t;
}

Tensor Tensor::from_vector(const std::vector<float>& values, const Shape& shape, DType dtype) {
  ORIGAMI_CHECK(int64_t(values.size()) == shape_numel(shape), "from_vector: ", values.size(),
                " values do not fill shape ", shape_str(shape));
  Tensor src = from_blob(const_cast<float*>(values.data()), shape, DType::f32);
  Tensor t = empty(shape, dtype);
  t.copy_from(src);
  return t;
}

Tensor Tensor::from_vector_i64(const std::vector<int64_t>& values, const Shape& shape, DType dtype) {
  ORIGAMI_CHECK(int64_t(values.size()) == shape_numel(shape), "from_vector_i64: ", values.size(),
                " values do not fill shape ", shape_str(shape));
  Tensor src = from_blob(const_cast<int64_t*>(values.data()), shape, DType::i64);
  Tensor t = empty(shape, dtype);
  t.copy_from(src);
  return t;
}

int64_t Tensor::size(int d) const {
  const int n = dim();
  if (d < 0) d += n;
  ORIGAMI_CHECK(d >= 0 && d < n, "dimension ", d, " out of range for ", str());
  return shape_[d];
}

int64_t Tensor::stride(int d) const {
  const int n = dim();
  if (d < 0) d += n;
  ORIGAMI_CHECK(d >= 0 && d < n, "dimension ", d, " out of range for ", str());
  return strides_[d];
}

bool Tensor::is_contiguous() const {
  int64_t s = 1;
  for (int i = dim() - 1; i >= 0; --i) {
    if (shape_[i] != 1 && strides_[i] != s) return false;
    s *= shape_[i];
  }
  return true;
}

void* Tensor::data() const {
  if (!storage_) return nullptr;
  return static_cast<char*>(storage_->data) + offset_ * int64_t(dtype_size(dtype_));
}

Tensor Tensor::view(const Shape& shape) const {
  ORIGAMI_CHECK(is_contiguous(), "view ", shape_str(shape), " of non-contiguous ", str(),
                ": call contiguous() first");
  Shape s = shape;
  int infer = -1;
  int64_t known = 1;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == -1) {
      ORIGAMI_CHECK(infer < 0, "view ", shape_str(shape), ": only one dimension may be -1");
      infer = int(i);
    } else {
      known *= s[i];
    }
  }
  if (infer >= 0) {
    ORIGAMI_CHECK(known > 0 && numel() % known == 0, "view ", shape_str(shape), " of ", str(),
                  ": cannot infer the -1 dimension");
    s[infer] = numel() / known;
  }
  ORIGAMI_CHECK(shape_numel(s) == numel(), "view ", shape_str(s), " of ", str(),
                ": element counts differ");
  Tensor t = *this;
  t.shape_ = s;
  t.strides_ = contiguous_strides(s);
  return t;
}

Tensor Tensor::narrow(int d, int64_t start, int64_t length) const {
  if (d < 0) d += dim();
  ORIGAMI_CHECK(d >= 0 && d < dim(), "narrow: dimension ", d, " out of range for ", str());
  ORIGAMI_CHECK(start >= 0 && length >= 0 && start + length <= shape_[d], "narrow: [", start, ", ",
                start + length, ") out of range for dimension ", d, " of ", str());
  Tensor t = *this;
  t.offset_ += start * strides_[d];
  t.shape_[d] = length;
  return t;
}

Tensor Tensor::select(int d, int64_t index) const {
  if (d < 0) d += dim();
  Tensor t = narrow(d, index, 1);
  t.shape_.erase(t.shape_.begin() + d);
  t.strides_.erase(t.strides_.begin() + d);
  return t;
}

Tensor Tensor::transpose(int d0, int d1) const {
  if (d0 < 0) d0 += dim();
  if (d1 < 0) d1 += dim();
  ORIGAMI_CHECK(d0 >= 0 && d0 < dim() && d1 >= 0 && d1 < dim(), "transpose(", d0, ", ", d1,
                ") out of range for ", str());
  Tensor t = *this;
  std::swap(t.shape_[d0], t.shape_[d1]);
  std::swap(t.strides_[d0], t.strides_[d1]);
  return t;
}

namespace {

double load_as_double(const void* p, DType t) {
  switch (t) {
    case DType::f32: return *static_cast<const float*>(p);
    case DType::bf16: return bf16_to_f32(*static_cast<const uint16_t*>(p));
    case DType::f16: return f16_to_f32(*static_cast<const uint16_t*>(p));
    case DType::i32: return *static_cast<const int32_t*>(p);
    case DType::i64: return double(*static_cast<const int64_t*>(p));
    case DType::u8: return *static_cast<const uint8_t*>(p);
  }
  return 0;
}

void store_double(void* p, DType t, double v) {
  switch (t) {
    case DType::f32: *static_cast<float*>(p) = float(v); break;
    case DType::bf16: *static_cast<uint16_t*>(p) = f32_to_bf16(float(v)); break;
    case DType::f16: *static_cast<uint16_t*>(p) = f32_to_f16(float(v)); break;
    case DType::i32: *static_cast<int32_t*>(p) = int32_t(v); break;
    case DType::i64: *static_cast<int64_t*>(p) = int64_t(v); break;
    case DType::u8: *static_cast<uint8_t*>(p) = uint8_t(v); break;
  }
}

// Element-by-element strided copy with conversion, on the CPU. int64 -> int64 keeps full range.
void cpu_copy_convert(const Tensor& dst, const Tensor& src) {
  const int64_t n = dst.numel();
  if (n == 0) return;
  const int nd = dst.dim();
  const size_t ds = dtype_size(dst.dtype()), ss = dtype_size(src.dtype());
  char* dp = static_cast<char*>(dst.data());
  const char* sp = static_cast<const char*>(src.data());
  if (dst.dtype() == src.dtype() && dst.is_contiguous() && src.is_contiguous()) {
    std::memcpy(dp, sp, size_t(n) * ds);
    return;
  }
  const bool same = dst.dtype() == src.dtype();
  std::vector<int64_t> idx(nd, 0);
  for (int64_t i = 0; i < n; ++i) {
    int64_t doff = 0, soff = 0;
    for (int d = 0; d < nd; ++d) {
      doff += idx[d] * dst.strides()[d];
      soff += idx[d] * src.strides()[d];
    }
    if (same)
      std::memcpy(dp + doff * int64_t(ds), sp + soff * int64_t(ss), ds);
    else if (dst.dtype() == DType::f32 && src.dtype() == DType::bf16)
      reinterpret_cast<float*>(dp)[doff] = bf16_to_f32(reinterpret_cast<const uint16_t*>(sp)[soff]);
    else if (dst.dtype() == DType::bf16 && src.dtype() == DType::f32)
      reinterpret_cast<uint16_t*>(dp)[doff] = f32_to_bf16(reinterpret_cast<const float*>(sp)[soff]);
    else
      store_double(dp + doff * int64_t(ds), dst.dtype(), load_as_double(sp + soff * int64_t(ss), src.dtype()));
    for (int d = nd - 1; d >= 0; --d) {
      if (++idx[d] < dst.shape()[d]) break;
      idx[d] = 0;
    }
  }
}

}  // namespace

void Tensor::copy_from(const Tensor& src) {
  ORIGAMI_CHECK(defined() && src.defined(), "copy_from: undefined tensor");
  ORIGAMI_CHECK(shape_ == src.shape(), "copy_from: shapes differ, destination ", str(), " source ",
                src.str());
  if (numel() == 0) return;
  const Device dd = device(), sd = src.device();
  if (dd.is_cpu() && sd.is_cpu()) {
    cpu_copy_convert(*this, src);
    return;
  }
  if (dd == sd) {  // both on one CUDA device
    detail::cuda_copy_convert(*this, src);
    return;
  }
  // Across devices: move contiguous bytes in the source dtype, then convert on the destination.
  Tensor s = src.contiguous();
  if (is_contiguous() && dtype_ == s.dtype()) {
    copy_bytes(data(), dd, s.data(), sd, nbytes());
    return;
  }
  Tensor staged = Tensor::empty(shape_, s.dtype(), dd);
  copy_bytes(staged.data(), dd, s.data(), sd, s.nbytes());
  copy_from(staged);
}

Tensor Tensor::to(Device d) const {
  if (d == device()) return *this;
  Tensor t = empty(shape_, dtype_, d);
  t.copy_from(*this);
  return t;
}

Tensor Tensor::to(DType dt) const {
  if (dt == dtype_) return *this;
  Tensor t = empty(shape_, dt, device());
  t.copy_from(*this);
  return t;
}

Tensor Tensor::contiguous() const {
  if (is_contiguous()) return *this;
  return clone();
}

Tensor Tensor::clone() const {
  Tensor t = empty(shape_, dtype_, device());
  t.copy_from(*this);
  return t;
}

void Tensor::zero_() { fill_(0.0); }

void Tensor::fill_(double value) {
  if (!defined() || numel() == 0) return;
  if (device().is_cuda()) {
    detail::cuda_fill(*this, value);
    return;
  }
  if (value == 0.0 && is_contiguous()) {
    std::memset(data(), 0, nbytes());
    return;
  }
  Tensor one = empty({1}, dtype_);
  store_double(one.data(), dtype_, value);
  const int64_t n = numel();
  std::vector<int64_t> idx(dim(), 0);
  const size_t es = dtype_size(dtype_);
  char* base = static_cast<char*>(data());
  for (int64_t i = 0; i < n; ++i) {
    int64_t off = 0;
    for (int d = 0; d < dim(); ++d) off += idx[d] * strides_[d];
    std::memcpy(base + off * int64_t(es), one.data(), es);
    for (int d = dim() - 1; d >= 0; --d) {
      if (++idx[d] < shape_[d]) break;
      idx[d] = 0;
    }
  }
}

double Tensor::item_at(int64_t i) const {
  ORIGAMI_CHECK(device().is_cpu() && is_contiguous(), "item_at needs a contiguous CPU tensor, got ",
                str());
  ORIGAMI_CHECK(i >= 0 && i < numel(), "item_at(", i, ") out of range for ", str());
  return load_as_double(static_cast<const char*>(data()) + i * int64_t(dtype_size(dtype_)), dtype_);
}

void Tensor::set_at(int64_t i, double v) {
  ORIGAMI_CHECK(device().is_cpu() && is_contiguous(), "set_at needs a contiguous CPU tensor, got ",
                str());
  ORIGAMI_CHECK(i >= 0 && i < numel(), "set_at(", i, ") out of range for ", str());
  store_double(static_cast<char*>(data()) + i * int64_t(dtype_size(dtype_)), dtype_, v);
}

std::vector<float> Tensor::to_float_vector() const {
  Tensor host = to(Device::cpu()).to(DType::f32).contiguous();
  const float* p = host.data_as<float>();
  return std::vector<float>(p, p + host.numel());
}

std::string Tensor::str() const {
  if (!defined()) return "undefined";
  return detail::concat(dtype_name(dtype_), shape_str(shape_), " ", device().str());
}

}  // namespace origami
