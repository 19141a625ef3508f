#include <cmath>
#include <vector>

#include "ops/cpu/pointwise.h"

namespace origami::ops::cpu {

// x [T,H,D]: for every token, the cos/sin of the D/2 angles float(pos) * inv_freq[i] (an f32
// product, as in Hugging Face) once, then every head rotates its pairs (i, i + D/2):
//   out_i = a cos - b sin, out_{i+D/2} = b cos + a sin (sin negated for the inverse).
// Each pair is read before it is written, so out may alias x.
void rope_apply(const Tensor& x, const Tensor& positions, const Tensor& inv_freq, Tensor& out,
                bool inverse) {
  const int64_t T = x.size(0), H = x.size(1), D = x.size(2), half = D / 2;
  const float* f = inv_freq.data_as<const float>();
  dispatch_float(x.dtype(), inverse ? "rope_backward" : "rope_forward", [&](auto tag) {
    using X = decltype(tag);
    const X* xp = x.data_as<const X>();
    X* op = out.data_as<X>();
#pragma omp parallel if (x.numel() >= kMinParallelElements)
    {
      std::vector<float> cs(static_cast<size_t>(2 * half));  // one buffer per thread: cos then sin
#pragma omp for schedule(static)
      for (int64_t t = 0; t < T; ++t) {
        const float pos = float(load_index(positions, t));
        for (int64_t i = 0; i < half; ++i) {
          const float angle = pos * f[i];
          cs[size_t(i)] = float(std::cos(double(angle)));
          const float s = float(std::sin(double(angle)));
          cs[size_t(half + i)] = inverse ? -s : s;
        }
        const float* c = cs.data();
        const float* s = cs.data() + half;
        for (int64_t h = 0; h < H; ++h) {
          const X* xr = xp + (t * H + h) * D;
          X* orow = op + (t * H + h) * D;
          for (int64_t i = 0; i < half; ++i) {
            const float a = load(xr, i), b = load(xr, i + half);
            store(orow, i, a * c[i] - b * s[i]);
            store(orow, i + half, b * c[i] + a * s[i]);
          }
        }
      }
    }
  });
}

}  // namespace origami::ops::cpu
