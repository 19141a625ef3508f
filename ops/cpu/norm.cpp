#include <algorithm>
#include <cmath>

#include "ops/cpu/pointwise.h"

namespace origami::ops::cpu {

namespace {

// sum_j a[j] * b[j] * c[j] in f32, eight partial sums so the loop vectorises.
template <typename A, typename B, typename C>
float dot3(const A* a, const B* b, const C* c, int64_t n) {
  float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t j = 0;
  for (; j + 8 <= n; j += 8)
    for (int k = 0; k < 8; ++k) acc[k] += load(a, j + k) * load(b, j + k) * load(c, j + k);
  float s = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
  for (; j < n; ++j) s += load(a, j) * load(b, j) * load(c, j);
  return s;
}

}  // namespace

void rmsnorm_forward(const Tensor& x, const Tensor& w, float eps, Tensor& out, Tensor& rstd) {
  const int64_t T = x.size(0), H = x.size(1);
  float* r = rstd.data_as<float>();
  dispatch_float(x.dtype(), "rmsnorm_forward", [&](auto xtag) {
    using X = decltype(xtag);
    dispatch_float(w.dtype(), "rmsnorm_forward", [&](auto wtag) {
      using W = decltype(wtag);
      const X* xp = x.data_as<const X>();
      const W* wp = w.data_as<const W>();
      X* op = out.data_as<X>();
#pragma omp parallel for schedule(static) if (T * H >= kMinParallelElements)
      for (int64_t t = 0; t < T; ++t) {
        const X* xr = xp + t * H;
        X* orow = op + t * H;
        float ss[8] = {0, 0, 0, 0, 0, 0, 0, 0};
        int64_t j = 0;
        for (; j + 8 <= H; j += 8)
          for (int k = 0; k < 8; ++k) ss[k] += load(xr, j + k) * load(xr, j + k);
        float s = ((ss[0] + ss[1]) + (ss[2] + ss[3])) + ((ss[4] + ss[5]) + (ss[6] + ss[7]));
        for (; j < H; ++j) s += load(xr, j) * load(xr, j);
        const float rs = 1.0f / std::sqrt(s / float(H) + eps);
        r[t] = rs;
        for (j = 0; j < H; ++j) store(orow, j, load(xr, j) * rs * load(wp, j));
      }
    });
  });
}

// y = x * r * w with r = (mean(x^2) + eps)^-1/2:
//   dx_j = r * w_j * dy_j - x_j * r^3 / H * sum_k dy_k * w_k * x_k
//   dw_j += sum_t dy_tj * x_tj * r_t (threads split the columns; rows add in order).
void rmsnorm_backward(const Tensor& x, const Tensor& w, const Tensor& rstd, const Tensor& dout,
                      Tensor& dx, Tensor& dw) {
  const int64_t T = x.size(0), H = x.size(1);
  const float* r = rstd.data_as<const float>();
  dispatch_float(x.dtype(), "rmsnorm_backward", [&](auto xtag) {
    using X = decltype(xtag);
    dispatch_float(w.dtype(), "rmsnorm_backward", [&](auto wtag) {
      using W = decltype(wtag);
      const X* xp = x.data_as<const X>();
      const X* dyp = dout.data_as<const X>();
      const W* wp = w.data_as<const W>();
      X* dxp = dx.data_as<X>();
      // dw first: dx may alias dout.
      if (dw.defined()) {
        float* dwp = dw.data_as<float>();
        constexpr int64_t kCols = 256;
        const int64_t blocks = (H + kCols - 1) / kCols;
#pragma omp parallel for schedule(static) if (T * H >= kMinParallelElements)
        for (int64_t b = 0; b < blocks; ++b) {
          const int64_t h0 = b * kCols, n = std::min(H, h0 + kCols) - h0;
          float acc[kCols];
          for (int64_t j = 0; j < n; ++j) acc[j] = 0.0f;
          for (int64_t t = 0; t < T; ++t) {
            const X* xr = xp + t * H + h0;
            const X* dyr = dyp + t * H + h0;
            const float rt = r[t];
            for (int64_t j = 0; j < n; ++j) acc[j] += load(dyr, j) * load(xr, j) * rt;
          }
          for (int64_t j = 0; j < n; ++j) dwp[h0 + j] += acc[j];
        }
      }
#pragma omp parallel for schedule(static) if (T * H >= kMinParallelElements)
      for (int64_t t = 0; t < T; ++t) {
        const X* xr = xp + t * H;
        const X* dyr = dyp + t * H;
        X* dxr = dxp + t * H;
        const float rt = r[t];
        const float c = dot3(dyr, wp, xr, H) * rt * rt * rt / float(H);
        for (int64_t j = 0; j < H; ++j)
          store(dxr, j, rt * load(wp, j) * load(dyr, j) - load(xr, j) * c);
      }
    });
  });
}

}  // namespace origami::ops::cpu
