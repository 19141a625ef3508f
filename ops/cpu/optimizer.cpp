#include "ops/cpu/optimizer.h"

#include <cmath>
#include <vector>

namespace origami::ops::cpu {

namespace {

// Below this much work (elements) a loop runs on one thread: waking the team costs more.
constexpr int64_t kParallelWork = int64_t(1) << 15;

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

// fn(float{}) for f32, fn(uint16_t{}) for bf16 (raw bits).
template <typename Fn>
void dispatch_float(DType dt, Fn&& fn) {
  if (dt == DType::f32)
    fn(float{});
  else
    fn(uint16_t{});
}

template <typename G, typename P>
void adamw_loop(float* __restrict__ w, const G* __restrict__ g, float* __restrict__ m,
                float* __restrict__ v, P* __restrict__ param, int64_t n, float decay, float b1,
                float b2, float step_size, float bc2_sqrt, float eps, float grad_scale) {
#pragma omp parallel for schedule(static) if (n >= kParallelWork)
  for (int64_t i = 0; i < n; ++i) {
    const float gi = load(g, i) * grad_scale;
    const float mi = b1 * m[i] + (1.0f - b1) * gi;
    const float vi = b2 * v[i] + (1.0f - b2) * gi * gi;
    const float denom = std::sqrt(vi) / bc2_sqrt + eps;
    const float wi = w[i] * decay - step_size * (mi / denom);
    m[i] = mi;
    v[i] = vi;
    w[i] = wi;
    if (param) store(param, i, wi);
  }
}

}  // namespace

void adamw_step(Tensor& master, const Tensor& grad, Tensor& m, Tensor& v, const AdamWParams& p,
                const Tensor& param, float grad_scale) {
  const int64_t n = master.numel();
  // Scalars in double, as torch.optim.AdamW computes them in Python.
  const double bc1 = 1.0 - std::pow(double(p.beta1), double(p.step));
  const double bc2 = 1.0 - std::pow(double(p.beta2), double(p.step));
  const float decay = float(1.0 - double(p.lr) * double(p.weight_decay));
  const float step_size = float(double(p.lr) / bc1);
  const float bc2_sqrt = float(std::sqrt(bc2));
  dispatch_float(grad.dtype(), [&](auto gtag) {
    using G = decltype(gtag);
    const G* g = grad.data_as<G>();
    auto run = [&](auto* prm) {
      adamw_loop(master.data_as<float>(), g, m.data_as<float>(), v.data_as<float>(), prm, n, decay,
                 p.beta1, p.beta2, step_size, bc2_sqrt, p.eps, grad_scale);
    };
    if (!param.defined())
      run(static_cast<float*>(nullptr));
    else if (param.dtype() == DType::f32)
      run(param.data_as<float>());
    else
      run(param.data_as<uint16_t>());
  });
}

// Deterministic whatever the thread count: fixed chunks, each summed in double, then the chunk
// sums added in order.
double sum_squares(const Tensor& g) {
  const int64_t n = g.numel();
  constexpr int64_t kChunk = int64_t(1) << 15;
  const int64_t chunks = (n + kChunk - 1) / kChunk;
  std::vector<double> partial(size_t(chunks), 0.0);
  auto run = [&](auto load_at) {
#pragma omp parallel for schedule(static) if (chunks > 1)
    for (int64_t c = 0; c < chunks; ++c) {
      const int64_t b = c * kChunk, e = b + kChunk < n ? b + kChunk : n;
      double s = 0.0;
      for (int64_t i = b; i < e; ++i) {
        const double x = load_at(i);
        s += x * x;
      }
      partial[size_t(c)] = s;
    }
  };
  if (g.dtype() == DType::f32) {
    const float* p = g.data_as<float>();
    run([p](int64_t i) { return double(p[i]); });
  } else if (g.dtype() == DType::bf16) {
    const uint16_t* p = g.data_as<uint16_t>();
    run([p](int64_t i) { return double(bf16_to_f32(p[i])); });
  } else {
    const uint16_t* p = g.data_as<uint16_t>();
    run([p](int64_t i) { return double(f16_to_f32(p[i])); });
  }
  double total = 0.0;
  for (double s : partial) total += s;
  return total;
}

void scale_(Tensor& g, float s) {
  const int64_t n = g.numel();
  dispatch_float(g.dtype(), [&](auto tag) {
    using T = decltype(tag);
    T* x = g.data_as<T>();
#pragma omp parallel for schedule(static) if (n >= kParallelWork)
    for (int64_t i = 0; i < n; ++i) store(x, i, load(x, i) * s);
  });
}

void axpy_(Tensor& y, const Tensor& x, float alpha) {
  const int64_t n = y.numel();
  float* yp = y.data_as<float>();
  dispatch_float(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    const T* xp = x.data_as<T>();
#pragma omp parallel for schedule(static) if (n >= kParallelWork)
    for (int64_t i = 0; i < n; ++i) yp[i] += alpha * load(xp, i);
  });
}

}  // namespace origami::ops::cpu
