// Vector primitives of the CPU attention kernels (ops/cpu/attention.cpp, ops/cpu/
// paged_attention.cpp), written with GCC vector extensions. Not a normal header: each kernel file
// includes it inside a per-instruction-set namespace, after a `#pragma GCC target` and with
// ORIGAMI_ATTENTION_LANES set to the floats per vector, so it is compiled once per instruction set
// (no include guard; the includer provides <algorithm>, <cstdint>, <cstring> and runtime/dtype.h).

constexpr int W = ORIGAMI_ATTENTION_LANES;  // floats per vector
typedef float Vec __attribute__((vector_size(W * sizeof(float))));
typedef int32_t VecI __attribute__((vector_size(W * sizeof(float))));
// Register tile of the block products: kRows rows x kVecs vectors of accumulators.
constexpr int kRows = 4;
constexpr int kVecs = W == 16 ? 4 : 2;

inline Vec load(const float* p) {
  Vec v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
inline void store(float* p, Vec v) {
  std::memcpy(p, &v, sizeof v);
}
inline Vec splat(float x) {
  return Vec{} + x;
}
inline Vec vmax(Vec a, Vec b) {
  return a > b ? a : b;
}

// 2^x for x <= 0 (x < -126 gives 0, so -inf gives 0): x = n + f with n an integer and |f| <= 1/2;
// 2^f by its Taylor series to degree 7 (relative error below 1e-8), 2^n put in the exponent.
inline Vec exp2v(Vec x) {
  const Vec lo = splat(-126.0f), hi = splat(126.0f);
  const Vec xc = x < lo ? lo : (x > hi ? hi : x);
  const Vec magic = splat(12582912.0f);  // 1.5 * 2^23: adding it rounds to an integer
  const Vec t = xc + magic;
  const Vec f = xc - (t - magic);
  Vec p = splat(1.5252733804059840e-5f);
  p = p * f + 1.5403530393381609e-4f;
  p = p * f + 1.3333558146428443e-3f;
  p = p * f + 9.6181291076284772e-3f;
  p = p * f + 5.5504108664821580e-2f;
  p = p * f + 2.4022650695910071e-1f;
  p = p * f + 6.9314718055994531e-1f;
  p = p * f + 1.0f;
  const VecI n = (VecI)t - 0x4B400000;  // the integer in t's low mantissa bits
  const Vec scale = (Vec)((n + 127) << 23);
  return x < lo ? Vec{} : p * scale;
}

inline float hmax(Vec v) {
  float m = v[0];
  for (int i = 1; i < W; ++i) m = std::max(m, v[i]);
  return m;
}
inline float hsum(Vec v) {
  float s = 0.0f;
  for (int i = 0; i < W; ++i) s += v[i];
  return s;
}

// max of x[0..n), n a multiple of W.
inline float row_max(const float* x, int64_t n) {
  Vec m = load(x);
  for (int64_t j = W; j < n; j += W) m = vmax(m, load(x + j));
  return hmax(m);
}

// x[j] = 2^(x[j] * mul - sub) for j < n (n a multiple of W); returns the sum.
inline float exp2_row(float* x, int64_t n, float mul, float sub) {
  Vec s = Vec{};
  const Vec vm = splat(mul), vs = splat(sub);
  for (int64_t j = 0; j < n; j += W) {
    const Vec e = exp2v(load(x + j) * vm - vs);
    store(x + j, e);
    s += e;
  }
  return hsum(s);
}

// One register tile: C[r][0..NV*W) (+)= sum_k A(r, k) B[k][0..NV*W) for r < R, where
// A(r, k) = A[r * a_rs + k * a_ks] (a_rs = 1, a_ks = lda reads A transposed).
template <int R, int NV>
inline void tile(int64_t K, const float* A, int64_t a_rs, int64_t a_ks, const float* B, int64_t ldb,
                 float* C, int64_t ldc, bool accumulate) {
  Vec c[R][NV];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) c[r][v] = accumulate ? load(C + r * ldc + v * W) : Vec{};
  for (int64_t k = 0; k < K; ++k) {
    Vec b[NV];
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) b[v] = load(B + k * ldb + v * W);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const Vec a = splat(A[r * a_rs + k * a_ks]);
#pragma GCC unroll 8
      for (int v = 0; v < NV; ++v) c[r][v] += a * b[v];
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) store(C + r * ldc + v * W, c[r][v]);
}

template <int R>
inline void tile_rows(int nv, int64_t K, const float* A, int64_t a_rs, int64_t a_ks, const float* B,
                      int64_t ldb, float* C, int64_t ldc, bool accumulate) {
  switch (nv) {
    case 1:
      return tile<R, 1>(K, A, a_rs, a_ks, B, ldb, C, ldc, accumulate);
    case 2:
      return tile<R, 2>(K, A, a_rs, a_ks, B, ldb, C, ldc, accumulate);
    case 3:
      return tile<R, 3>(K, A, a_rs, a_ks, B, ldb, C, ldc, accumulate);
    default:
      return tile<R, 4>(K, A, a_rs, a_ks, B, ldb, C, ldc, accumulate);
  }
}

// C[M][N] (+)= A B with A(m, k) = A[m * a_rs + k * a_ks] and B [K][N] row-major (ldb); N a multiple
// of W. Column chunks outside, so a chunk of B stays in L1 while the row tiles pass over it.
inline void gemm(int64_t M, int64_t N, int64_t K, const float* A, int64_t a_rs, int64_t a_ks,
                 const float* B, int64_t ldb, float* C, int64_t ldc, bool accumulate) {
  for (int64_t n0 = 0; n0 < N; n0 += kVecs * W) {
    const int nv = int(std::min<int64_t>(kVecs, (N - n0) / W));
    for (int64_t m0 = 0; m0 < M; m0 += kRows) {
      const float* a = A + m0 * a_rs;
      float* c = C + m0 * ldc + n0;
      switch (std::min<int64_t>(kRows, M - m0)) {
        case 1:
          tile_rows<1>(nv, K, a, a_rs, a_ks, B + n0, ldb, c, ldc, accumulate);
          break;
        case 2:
          tile_rows<2>(nv, K, a, a_rs, a_ks, B + n0, ldb, c, ldc, accumulate);
          break;
        case 3:
          tile_rows<3>(nv, K, a, a_rs, a_ks, B + n0, ldb, c, ldc, accumulate);
          break;
        default:
          tile_rows<4>(nv, K, a, a_rs, a_ks, B + n0, ldb, c, ldc, accumulate);
          break;
      }
    }
  }
}

// dst[0..n) = mul * src[e..e+n) as f32, dst[n..np) = 0.
inline void load_row(const void* src, bool bf16, int64_t e, int64_t n, int64_t np, float mul,
                     float* dst) {
  if (bf16) {
    const uint16_t* s = static_cast<const uint16_t*>(src) + e;
    for (int64_t d = 0; d < n; ++d) {
      const uint32_t u = uint32_t(s[d]) << 16;
      float x;
      std::memcpy(&x, &u, 4);
      dst[d] = mul * x;
    }
  } else {
    const float* s = static_cast<const float*>(src) + e;
    for (int64_t d = 0; d < n; ++d) dst[d] = mul * s[d];
  }
  for (int64_t d = n; d < np; ++d) dst[d] = 0.0f;
}

// dst[e..e+n) = mul * src[0..n) in the output dtype.
inline void store_row(void* dst, bool bf16, int64_t e, int64_t n, float mul, const float* src) {
  if (bf16) {
    uint16_t* o = static_cast<uint16_t*>(dst) + e;
    for (int64_t d = 0; d < n; ++d) o[d] = f32_to_bf16(mul * src[d]);
  } else {
    float* o = static_cast<float*>(dst) + e;
    for (int64_t d = 0; d < n; ++d) o[d] = mul * src[d];
  }
}
