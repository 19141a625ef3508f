#include <cmath>

#include "ops/cpu/pointwise.h"

namespace origami::ops::cpu {

namespace {
inline float sigmoid(float g) {
  return 1.0f / (1.0f + std::exp(-g));
}
}  // namespace

void swiglu_forward(const Tensor& gate, const Tensor& up, Tensor& out, const Tensor& row_scale) {
  const int64_t T = gate.size(0), F = gate.size(1);
  const float* scale = row_scale.defined() ? row_scale.data_as<const float>() : nullptr;
  dispatch_float(gate.dtype(), "swiglu_forward", [&](auto tag) {
    using X = decltype(tag);
    const X* g = gate.data_as<const X>();
    const X* u = up.data_as<const X>();
    X* o = out.data_as<X>();
#pragma omp parallel for schedule(static) if (T * F >= kMinParallelElements)
    for (int64_t t = 0; t < T; ++t) {
      const float s = scale ? scale[t] : 1.0f;
      const int64_t b = t * F;
      for (int64_t j = b; j < b + F; ++j) {
        const float gv = load(g, j);
        store(o, j, gv * sigmoid(gv) * load(u, j) * s);
      }
    }
  });
}

// out = silu(g) u s:  dg = dy u s silu'(g), du = dy silu(g) s, ds = sum_j dy silu(g) u,
// silu'(g) = sig(g) (1 + g (1 - sig(g))).
void swiglu_backward(const Tensor& gate, const Tensor& up, const Tensor& dout, Tensor& dgate,
                     Tensor& dup, const Tensor& row_scale, Tensor& drow_scale) {
  const int64_t T = gate.size(0), F = gate.size(1);
  const float* scale = row_scale.defined() ? row_scale.data_as<const float>() : nullptr;
  float* dscale = drow_scale.defined() ? drow_scale.data_as<float>() : nullptr;
  dispatch_float(gate.dtype(), "swiglu_backward", [&](auto tag) {
    using X = decltype(tag);
    const X* g = gate.data_as<const X>();
    const X* u = up.data_as<const X>();
    const X* dy = dout.data_as<const X>();
    X* dg = dgate.data_as<X>();
    X* du = dup.data_as<X>();
#pragma omp parallel for schedule(static) if (T * F >= kMinParallelElements)
    for (int64_t t = 0; t < T; ++t) {
      const float s = scale ? scale[t] : 1.0f;
      float ds[8] = {0, 0, 0, 0, 0, 0, 0, 0};
      const int64_t b = t * F;
      for (int64_t j = b; j < b + F; ++j) {
        const float gv = load(g, j), uv = load(u, j), d = load(dy, j);
        const float sig = sigmoid(gv), silu = gv * sig;
        ds[(j - b) & 7] += d * silu * uv;
        store(dg, j, d * uv * s * (sig * (1.0f + gv * (1.0f - sig))));
        store(du, j, d * silu * s);
      }
      if (dscale)
        dscale[t] = ((ds[0] + ds[1]) + (ds[2] + ds[3])) + ((ds[4] + ds[5]) + (ds[6] + ds[7]));
    }
  });
}

}  // namespace origami::ops::cpu
