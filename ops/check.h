// Argument checks shared by every op: each failure names the op, what it got and what it expected.
#pragma once

#include <initializer_list>
#include <string>

#include "runtime/tensor.h"

namespace origami::ops {

// "gemm: a must be a 2-D tensor, got f32[3,4,5] cpu"
void check_defined(const char* op, const char* name, const Tensor& t);
void check_dim(const char* op, const char* name, const Tensor& t, int dim);
void check_shape(const char* op, const char* name, const Tensor& t, const Shape& expected);
void check_dtype(const char* op, const char* name, const Tensor& t,
                 std::initializer_list<DType> allowed);
void check_same_dtype(const char* op, const char* name_a, const Tensor& a, const char* name_b,
                      const Tensor& b);
void check_contiguous(const char* op, const char* name, const Tensor& t);
// All tensors on one device; returns it. Undefined tensors are skipped.
Device check_same_device(const char* op, std::initializer_list<std::pair<const char*, const Tensor*>>);
// Throws "OP: built without CUDA support" / "OP: no CUDA implementation for ..." style errors.
[[noreturn]] void fail_no_cuda(const char* op);

}  // namespace origami::ops
