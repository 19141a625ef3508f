#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "ops/cpu/pointwise.h"

namespace origami::ops::cpu {

// Three passes per row: max, sum of exp(x - max), then exp(x - max) / sum written. x is only read
// in the first two, so out may alias x.
void softmax_forward(const Tensor& x, Tensor& out) {
  const int64_t R = x.size(0), C = x.size(1);
  dispatch_float(x.dtype(), "softmax_forward", [&](auto tag) {
    using X = decltype(tag);
    const X* xp = x.data_as<const X>();
    X* op = out.data_as<X>();
#pragma omp parallel for schedule(static) if (R * C >= kMinParallelElements)
    for (int64_t r = 0; r < R; ++r) {
      const X* xr = xp + r * C;
      X* orow = op + r * C;
      float m = load(xr, 0);
      for (int64_t j = 1; j < C; ++j) m = std::max(m, load(xr, j));
      float sum = 0.0f;
      for (int64_t j = 0; j < C; ++j) sum += std::exp(load(xr, j) - m);
      const float inv = 1.0f / sum;
      for (int64_t j = 0; j < C; ++j) store(orow, j, std::exp(load(xr, j) - m) * inv);
    }
  });
}

// dx = y * (dy - sum(dy * y)); dx may alias dy (the sum is taken before any write).
void softmax_backward(const Tensor& y, const Tensor& dy, Tensor& dx) {
  const int64_t R = y.size(0), C = y.size(1);
  dispatch_float(y.dtype(), "softmax_backward", [&](auto tag) {
    using X = decltype(tag);
    const X* yp = y.data_as<const X>();
    const X* dyp = dy.data_as<const X>();
    X* dxp = dx.data_as<X>();
#pragma omp parallel for schedule(static) if (R * C >= kMinParallelElements)
    for (int64_t r = 0; r < R; ++r) {
      const X* yr = yp + r * C;
      const X* dyr = dyp + r * C;
      X* dxr = dxp + r * C;
      float dot = 0.0f;
      for (int64_t j = 0; j < C; ++j) dot += load(yr, j) * load(dyr, j);
      for (int64_t j = 0; j < C; ++j) store(dxr, j, load(yr, j) * (load(dyr, j) - dot));
    }
  });
}

// Per row: a partial sort of the column indices by (value descending, index ascending), a strict
// total order, so ties go to the lower index and the result does not depend on the sort.
void topk(const Tensor& x, int64_t k, Tensor& values, Tensor& indices) {
  const int64_t R = x.size(0), C = x.size(1);
  const float* xp = x.data_as<const float>();
  float* vp = values.data_as<float>();
  const bool i32 = indices.dtype() == DType::i32;
#pragma omp parallel if (R * C >= kMinParallelElements)
  {
    std::vector<int64_t> idx(static_cast<size_t>(C));  // one buffer per thread
#pragma omp for schedule(static)
    for (int64_t r = 0; r < R; ++r) {
      const float* xr = xp + r * C;
      std::iota(idx.begin(), idx.end(), int64_t(0));
      std::partial_sort(idx.begin(), idx.begin() + k, idx.end(), [xr](int64_t a, int64_t b) {
        return xr[a] > xr[b] || (xr[a] == xr[b] && a < b);
      });
      for (int64_t j = 0; j < k; ++j) {
        vp[r * k + j] = xr[idx[size_t(j)]];
        if (i32)
          indices.data_as<int32_t>()[r * k + j] = int32_t(idx[size_t(j)]);
        else
          indices.data_as<int64_t>()[r * k + j] = idx[size_t(j)];
      }
    }
  }
}

void topk_backward(const Tensor& indices, const Tensor& dvalues, Tensor& dx) {
  const int64_t R = dx.size(0), C = dx.size(1), k = indices.size(1);
  for (int64_t i = 0; i < R * k; ++i) {
    const int64_t c = load_index(indices, i);
    ORIGAMI_CHECK(c >= 0 && c < C, "topk_backward: indices[", i / k, ",", i % k, "] = ", c,
                  " is outside [0, ", C, ") (indices ", indices.str(), ", dx ", dx.str(), ")");
  }
  const float* dv = dvalues.data_as<const float>();
  float* d = dx.data_as<float>();
#pragma omp parallel for schedule(static) if (R * C >= kMinParallelElements)
  for (int64_t r = 0; r < R; ++r) {
    std::fill(d + r * C, d + (r + 1) * C, 0.0f);
    for (int64_t j = 0; j < k; ++j) d[r * C + load_index(indices, r * k + j)] = dv[r * k + j];
  }
}

}  // namespace origami::ops::cpu
