// CPU kernels of the row-wise op families (embedding, RMSNorm, RoPE, SwiGLU, softmax, top-k).
// Arguments are checked by the dispatchers in ops/*.cpp: every tensor here is a contiguous CPU
// tensor of the documented shape and dtype.
#pragma once

#include <cstdint>

#include "runtime/dtype.h"
#include "runtime/error.h"
#include "runtime/tensor.h"

namespace origami::ops::cpu {

// f32 and bf16 (raw uint16_t bits) elements loaded and stored as float.
inline float load(const float* p, int64_t i) {
  return p[i];
}
inline float load(const uint16_t* p, int64_t i) {
  return bf16_to_f32(p[i]);
}
inline void store(float* p, int64_t i, float v) {
  p[i] = v;
}
inline void store(uint16_t* p, int64_t i, float v) {
  p[i] = f32_to_bf16(v);
}

// Calls fn(float{}) for f32 and fn(uint16_t{}) for bf16.
template <typename Fn>
void dispatch_float(DType dt, const char* op, Fn&& fn) {
  if (dt == DType::f32)
    fn(float{});
  else if (dt == DType::bf16)
    fn(uint16_t{});
  else
    ORIGAMI_FAIL(op, ": CPU kernels support f32 and bf16, got ", dtype_name(dt));
}

// Loops over fewer elements than this run on the calling thread: waking the OpenMP team costs
// more than the work.
constexpr int64_t kMinParallelElements = int64_t(1) << 16;

// Element i of an i32 or i64 index tensor.
inline int64_t load_index(const Tensor& t, int64_t i) {
  return t.dtype() == DType::i32 ? int64_t(t.data_as<const int32_t>()[i])
                                 : t.data_as<const int64_t>()[i];
}

// Throws "OP: id ID at position T is outside the vocabulary [0, V) ..." for the first bad id.
void embedding_check_ids(const char* op, const Tensor& ids, int64_t vocab_size_total);
void embedding_forward(const Tensor& weight, const Tensor& ids, Tensor& out, int64_t vocab_offset);
void embedding_backward(const Tensor& ids, const Tensor& dout, Tensor& dweight,
                        int64_t vocab_offset);

void rmsnorm_forward(const Tensor& x, const Tensor& w, float eps, Tensor& out, Tensor& rstd);
void rmsnorm_backward(const Tensor& x, const Tensor& w, const Tensor& rstd, const Tensor& dout,
                      Tensor& dx, Tensor& dw);

// inverse = false: rotate by +pos (forward); true: by -pos (backward).
void rope_apply(const Tensor& x, const Tensor& positions, const Tensor& inv_freq, Tensor& out,
                bool inverse);

void swiglu_forward(const Tensor& gate, const Tensor& up, Tensor& out, const Tensor& row_scale);
void swiglu_backward(const Tensor& gate, const Tensor& up, const Tensor& dout, Tensor& dgate,
                     Tensor& dup, const Tensor& row_scale, Tensor& drow_scale);

void softmax_forward(const Tensor& x, Tensor& out);
void softmax_backward(const Tensor& y, const Tensor& dy, Tensor& dx);
void topk(const Tensor& x, int64_t k, Tensor& values, Tensor& indices);
// Throws when an index lies outside [0, C).
void topk_backward(const Tensor& indices, const Tensor& dvalues, Tensor& dx);

}  // namespace origami::ops::cpu
