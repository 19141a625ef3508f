#include "ops/check.h"

namespace origami::ops {

void check_defined(const char* op, const char* name, const Tensor& t) {
  ORIGAMI_CHECK(t.defined(), op, ": ", name, " is undefined");
}

void check_dim(const char* op, const char* name, const Tensor& t, int dim) {
  check_defined(op, name, t);
  ORIGAMI_CHECK(t.dim() == dim, op, ": ", name, " must be a ", dim, "-D tensor, got ", t.str());
}

void check_shape(const char* op, const char* name, const Tensor& t, const Shape& expected) {
  check_defined(op, name, t);
  ORIGAMI_CHECK(t.shape() == expected, op, ": ", name, " must have shape ", shape_str(expected),
                ", got ", t.str());
}

void check_dtype(const char* op, const char* name, const Tensor& t,
                 std::initializer_list<DType> allowed) {
  check_defined(op, name, t);
  for (DType d : allowed)
    if (t.dtype() == d) return;
  std::string list;
  for (DType d : allowed) list += std::string(list.empty() ? "" : " or ") + dtype_name(d);
  ORIGAMI_FAIL(op, ": ", name, " must be ", list, ", got ", t.str());
}

void check_same_dtype(const char* op, const char* name_a, const Tensor& a, const char* name_b,
                      const Tensor& b) {
  ORIGAMI_CHECK(a.dtype() == b.dtype(), op, ": ", name_a, " and ", name_b,
                " must have the same dtype, got ", a.str(), " and ", b.str());
}

void check_contiguous(const char* op, const char* name, const Tensor& t) {
  check_defined(op, name, t);
  ORIGAMI_CHECK(t.is_contiguous(), op, ": ", name, " must be contiguous, got ", t.str(),
                " with strides ", shape_str(t.strides()));
}

Device check_same_device(const char* op,
                         std::initializer_list<std::pair<const char*, const Tensor*>> ts) {
  const char* first_name = nullptr;
  Device dev;
  for (auto& [name, t] : ts) {
    if (!t->defined()) continue;
    if (!first_name) {
      first_name = name;
      dev = t->device();
    } else {
      ORIGAMI_CHECK(t->device() == dev, op, ": all tensors must be on one device, ", first_name,
                    " is on ", dev.str(), " but ", name, " is on ", t->device().str());
    }
  }
  return dev;
}

void fail_no_cuda(const char* op) {
  ORIGAMI_FAIL(op, ": tensors are on a CUDA device but origami was built without CUDA "
                   "(configure with -DORIGAMI_CUDA=AUTO or ON)");
}

}  // namespace origami::ops
