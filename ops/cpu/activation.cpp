#include <cmath>

#include "ops/cpu/bf16_simd.h"
#include "ops/cpu/pointwise.h"

namespace origami::ops::cpu {

namespace {
inline float sigmoid(float g) {
  return 1.0f / (1.0f + std::exp(-g));
}

#if ORIGAMI_BF16_SIMD  // x86-64 with GCC: the AVX-512 forward exists
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512dq,avx512vl,fma")

// e^x, 16 lanes: x = n ln2 + r with |r| <= ln2 / 2 (ln2 in two parts, so r is exact), e^r by the
// degree-7 minimax polynomial of the Cephes library's expf, times 2^n. Within 2 ulp of e^x for
// x in [-87.3, 88.7], to which x is clamped (below: e^x of about 1e-38, above: infinity).
inline __m512 exp16(__m512 x) {
  x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-87.33654f)), _mm512_set1_ps(88.72284f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
  p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), r);
  return _mm512_scalef_ps(_mm512_add_ps(p, _mm512_set1_ps(1.0f)), n);
}

inline __m512 load16(const float* p, __mmask16 m) {
  return _mm512_maskz_loadu_ps(m, p);
}
inline __m512 load16(const uint16_t* p, __mmask16 m) {
  return bf16x16_to_f32(_mm256_maskz_loadu_epi16(m, p));
}
inline void store16(float* p, __mmask16 m, __m512 v) {
  _mm512_mask_storeu_ps(p, m, v);
}
inline void store16(uint16_t* p, __mmask16 m, __m512 v) {
  _mm256_mask_storeu_epi16(p, m, f32x16_to_bf16(v));
}

// o[j] = silu(g[j]) u[j] s for j < n, 16 at a time: (g * sigmoid(g)) * u * s as the scalar loop.
template <typename X>
void swiglu_row_avx512(const X* g, const X* u, X* o, int64_t n, float s) {
  const __m512 one = _mm512_set1_ps(1.0f), scale = _mm512_set1_ps(s);
  for (int64_t j = 0; j < n; j += 16) {
    const __mmask16 m = n - j >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (n - j)) - 1);
    const __m512 gv = load16(g + j, m), uv = load16(u + j, m);
    const __m512 sig =
        _mm512_div_ps(one, _mm512_add_ps(one, exp16(_mm512_sub_ps(_mm512_setzero_ps(), gv))));
    store16(o + j, m, _mm512_mul_ps(_mm512_mul_ps(_mm512_mul_ps(gv, sig), uv), scale));
  }
}

#pragma GCC pop_options

bool has_avx512() {
  static const bool yes = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl") &&
           __builtin_cpu_supports("fma");
  }();
  return yes;
}
#endif
}  // namespace

// The forward on AVX-512 CPUs computes e^x with exp16 (within 2 ulp of libm's; a scalar expf per
// element had taken about a tenth of a small model's prefill); the backward uses std::exp.
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
#if ORIGAMI_BF16_SIMD  // x86-64 with GCC: the AVX-512 forward exists
      if (has_avx512()) {
        swiglu_row_avx512(g + b, u + b, o + b, F, s);
        continue;
      }
#endif
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
