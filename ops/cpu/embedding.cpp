#include <algorithm>
#include <cstring>

#include "ops/cpu/pointwise.h"

namespace origami::ops::cpu {

void embedding_check_ids(const char* op, const Tensor& ids, int64_t vocab_size_total) {
  const int64_t T = ids.size(0);
  for (int64_t t = 0; t < T; ++t) {
    const int64_t id = load_index(ids, t);
    if (id < 0 || (vocab_size_total >= 0 && id >= vocab_size_total)) {
      if (vocab_size_total >= 0)
        ORIGAMI_FAIL(op, ": ids[", t, "] = ", id, " is outside the vocabulary [0, ",
                     vocab_size_total, ") (ids ", ids.str(), ")");
      ORIGAMI_FAIL(op, ": ids[", t, "] = ", id, " is negative (ids ", ids.str(), ")");
    }
  }
}

// out [T,H] = weight [V,H] rows of the ids, zero rows for ids outside [vocab_offset, +V).
void embedding_forward(const Tensor& weight, const Tensor& ids, Tensor& out, int64_t vocab_offset) {
  const int64_t V = weight.size(0), H = weight.size(1), T = ids.size(0);
  const size_t row_bytes = size_t(H) * dtype_size(weight.dtype());
  const char* w = static_cast<const char*>(weight.data());
  char* o = static_cast<char*>(out.data());
#pragma omp parallel for schedule(static) if (T * H >= kMinParallelElements)
  for (int64_t t = 0; t < T; ++t) {
    const int64_t row = load_index(ids, t) - vocab_offset;
    char* dst = o + size_t(t) * row_bytes;
    if (row >= 0 && row < V)
      std::memcpy(dst, w + size_t(row) * row_bytes, row_bytes);
    else
      std::memset(dst, 0, row_bytes);  // zero bits are +0.0 in f32 and bf16
  }
}

// dweight [V,H] f32 += dout [T,H] rows, added in token order for every element (deterministic,
// and the order the CUDA kernel uses). Threads split the columns, never the tokens.
void embedding_backward(const Tensor& ids, const Tensor& dout, Tensor& dweight,
                        int64_t vocab_offset) {
  const int64_t V = dweight.size(0), H = dweight.size(1), T = ids.size(0);
  float* dw = dweight.data_as<float>();
  dispatch_float(dout.dtype(), "embedding_backward", [&](auto tag) {
    using T_ = decltype(tag);
    const T_* d = dout.data_as<const T_>();
    constexpr int64_t kCols = 256;
    const int64_t blocks = (H + kCols - 1) / kCols;
#pragma omp parallel for schedule(static) if (T * H >= kMinParallelElements)
    for (int64_t b = 0; b < blocks; ++b) {
      const int64_t h0 = b * kCols, h1 = std::min(H, h0 + kCols);
      for (int64_t t = 0; t < T; ++t) {
        const int64_t row = load_index(ids, t) - vocab_offset;
        if (row < 0 || row >= V) continue;
        float* dst = dw + row * H;
        const T_* src = d + t * H;
        for (int64_t h = h0; h < h1; ++h) dst[h] += load(src, h);
      }
    }
  });
}

}  // namespace origami::ops::cpu
