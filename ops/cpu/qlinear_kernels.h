// The kernel section of ops/cpu/qlinear.cpp: the decode kernels (bf16 rows, int8 / int4 tiles, the
// quantization of x), compiled once per instruction set. Included only by qlinear.cpp, from inside
// ops/cpu/isa_variants.h, once per variant under its `#pragma GCC target`, with
// ORIGAMI_ATTENTION_ISA naming the variant's namespace; the shared declarations (qlinear_detail:
// the problems, Output, the constants) come before it there. No include guard: it is meant to be
// included several times. The layouts and the numerics are described at the top of qlinear.cpp.

namespace origami::ops::cpu::qlinear_detail::ORIGAMI_ATTENTION_ISA {

// The int kernels store their results through Output::store (the results of a tile are res
// [MB][16]: rows of x, then the tile's 16 rows); the bf16 ones a strip of 16 at a time through
// store_strip, the same arithmetic.

#if ORIGAMI_ISA_AVX512

// acc + the sums over 4-byte groups of unsigned w times signed x (vpdpbusd; exact, no
// saturation). small: every byte of w is at most 15.
template <bool small>
inline __m512i dot_u8s8(__m512i acc, __m512i w, __m512i x) {
#if ORIGAMI_ISA_BF16_VNNI
  (void)small;
  return _mm512_dpbusd_epi32(acc, w, x);
#else
  // vpmaddubsw saturates at 16 bits: fine for levels up to 15 (2 * 15 * 128), so int8 levels are
  // split in nibbles, the high one weighted 16 by vpmaddwd.
  const __m512i ones = _mm512_set1_epi16(1);
  if constexpr (small) {
    return _mm512_add_epi32(acc, _mm512_madd_epi16(_mm512_maddubs_epi16(w, x), ones));
  } else {
    const __m512i low4 = _mm512_set1_epi8(0x0F);
    const __m512i lo = _mm512_and_si512(w, low4);
    const __m512i hi = _mm512_and_si512(_mm512_srli_epi16(w, 4), low4);
    acc = _mm512_add_epi32(acc, _mm512_madd_epi16(_mm512_maddubs_epi16(lo, x), ones));
    return _mm512_add_epi32(acc,
                            _mm512_madd_epi16(_mm512_maddubs_epi16(hi, x), _mm512_set1_epi16(16)));
  }
#endif
}

// acc + w . x over pairs of bf16 (vdpbf16ps; without it, as two f32 FMAs per vector).
inline __m512 dot_bf16(__m512 acc, __m512i w, __m512i x) {
#if ORIGAMI_ISA_BF16_VNNI
  return _mm512_dpbf16_ps(acc, (__m512bh)w, (__m512bh)x);
#else
  const __m512i high = _mm512_set1_epi32(int(0xFFFF0000u));
  acc = _mm512_fmadd_ps(_mm512_castsi512_ps(_mm512_slli_epi32(w, 16)),
                        _mm512_castsi512_ps(_mm512_slli_epi32(x, 16)), acc);
  return _mm512_fmadd_ps(_mm512_castsi512_ps(_mm512_and_si512(w, high)),
                         _mm512_castsi512_ps(_mm512_and_si512(x, high)), acc);
#endif
}

inline __m512i broadcast4(const int8_t* p) {
  int32_t v;
  std::memcpy(&v, p, 4);
  return _mm512_set1_epi32(v);
}

// res [MB][16] = one tile against rows [m0, m0 + MB) of x.
template <int MB, bool int4>
void int_tile(const IntProblem& P, int64_t t, int64_t m0, float* res) {
  const int64_t K = P.K, nb = K / kB, blocks_per_group = P.group / kB;
  const uint8_t* wt = P.data + t * tile_bytes(int4, K);
  const float* st = P.scales + t * P.G * kT;
  const float* zt = P.zeros + t * P.G * kT;
  const __m512i low4 = _mm512_set1_epi8(0x0F);
  __m512 acc[MB];
#pragma GCC unroll 8
  for (int m = 0; m < MB; ++m) acc[m] = _mm512_setzero_ps();
  for (int64_t g = 0; g < P.G; ++g) {
    const __m512 s = _mm512_loadu_ps(st + g * kT), z = _mm512_loadu_ps(zt + g * kT);
    for (int64_t b = g * blocks_per_group; b < (g + 1) * blocks_per_group; ++b) {
      __m512i w[8];
      if constexpr (int4) {
        const uint8_t* p = wt + b * kB * kT / 2;
        // The lines kInt4PrefetchBytes ahead asked for now: see kInt4PrefetchBytes.
#pragma GCC unroll 4
        for (int j = 0; j < 4; ++j)
          _mm_prefetch(reinterpret_cast<const char*>(p + kInt4PrefetchBytes + 64 * j), _MM_HINT_T0);
#pragma GCC unroll 4
        for (int j = 0; j < 4; ++j) {
          const __m512i v = _mm512_loadu_si512(p + 64 * j);
          w[j] = _mm512_and_si512(v, low4);
          w[j + 4] = _mm512_and_si512(_mm512_srli_epi16(v, 4), low4);
        }
      } else {
        const uint8_t* p = wt + b * kB * kT;
#pragma GCC unroll 8
        for (int j = 0; j < 8; ++j) w[j] = _mm512_loadu_si512(p + 64 * j);
      }
#pragma GCC unroll 8
      for (int m = 0; m < MB; ++m) {
        const int64_t row = m0 + m;
        const int8_t* xb = P.xq + row * K + b * kB;
        __m512i d0 = _mm512_setzero_si512(), d1 = _mm512_setzero_si512();
#pragma GCC unroll 4
        for (int j = 0; j < 8; j += 2) {
          d0 = dot_u8s8<int4>(d0, w[j], broadcast4(xb + 4 * j));
          d1 = dot_u8s8<int4>(d1, w[j + 1], broadcast4(xb + 4 * j + 4));
        }
        const __m512 d = _mm512_cvtepi32_ps(_mm512_add_epi32(d0, d1));
        const __m512 exact = _mm512_fnmadd_ps(z, _mm512_set1_ps(P.xsum[row * nb + b]), d);
        acc[m] =
            _mm512_fmadd_ps(_mm512_mul_ps(exact, _mm512_set1_ps(P.xs[row * nb + b])), s, acc[m]);
      }
    }
  }
#pragma GCC unroll 8
  for (int m = 0; m < MB; ++m) _mm512_storeu_ps(res + m * kT, acc[m]);
}

// res[i] = _mm512_reduce_add_ps(v[i]) for i < n, eight at once (v holds 8 vectors, those past n
// zeros), bit for bit: the same tree of additions with the vectors' lanes transposed on the way,
// lanes j and j + 8 first, then j and j + 4, j and j + 2, j and j + 1. About a third of the
// instructions of eight reductions one by one; small K is where it counts (a dot over 256
// columns is 8 vdpbf16ps).
inline void reduce_add8(const __m512* v, int n, float* res) {
  const __m512* a = v;
  __m512 s[4];  // s[i]: lanes j + (j + 8) of a[2i] in lanes 0-7, of a[2i + 1] in lanes 8-15
#pragma GCC unroll 4
  for (int i = 0; i < 4; ++i)
    s[i] = _mm512_add_ps(_mm512_shuffle_f32x4(a[2 * i], a[2 * i + 1], _MM_SHUFFLE(1, 0, 1, 0)),
                         _mm512_shuffle_f32x4(a[2 * i], a[2 * i + 1], _MM_SHUFFLE(3, 2, 3, 2)));
  // + (j + 4): 128-bit lane k of w0 holds a[k]'s four partial sums, of w1 a[k + 4]'s.
  const __m512 w0 = _mm512_add_ps(_mm512_shuffle_f32x4(s[0], s[1], _MM_SHUFFLE(2, 0, 2, 0)),
                                  _mm512_shuffle_f32x4(s[0], s[1], _MM_SHUFFLE(3, 1, 3, 1)));
  const __m512 w1 = _mm512_add_ps(_mm512_shuffle_f32x4(s[2], s[3], _MM_SHUFFLE(2, 0, 2, 0)),
                                  _mm512_shuffle_f32x4(s[2], s[3], _MM_SHUFFLE(3, 1, 3, 1)));
  // + (j + 2): lane k holds [a[k]: 2 sums, a[k + 4]: 2 sums]; then + (j + 1).
  const __m512 c = _mm512_add_ps(_mm512_shuffle_ps(w0, w1, _MM_SHUFFLE(1, 0, 1, 0)),
                                 _mm512_shuffle_ps(w0, w1, _MM_SHUFFLE(3, 2, 3, 2)));
  const __m512 d = _mm512_add_ps(_mm512_shuffle_ps(c, c, _MM_SHUFFLE(2, 0, 2, 0)),
                                 _mm512_shuffle_ps(c, c, _MM_SHUFFLE(3, 1, 3, 1)));
  // a[k] is now in lane 4k, a[k + 4] in lane 4k + 1.
  const __m512 order =
      _mm512_permutexvar_ps(_mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 0, 0, 0, 0, 0, 0, 0, 0), d);
  alignas(32) float out[8];
  _mm256_store_ps(out, _mm512_castps512_ps256(order));
  for (int i = 0; i < n; ++i) res[i] = out[i];
}

// res [R][MB] = the dots of acc [R][MB][U]: the U accumulators of a dot added in order, then
// reduced by reduce_add8's tree (by _mm512_reduce_add_ps's when there is one dot).
template <int R, int MB, int U>
inline void sum_dots(const __m512 (&acc)[R][MB][U], float* res) {
  __m512 sums[(R * MB + 7) / 8 * 8];  // padded with zeros to whole eights for reduce_add8
#pragma GCC unroll 8
  for (int i = R * MB; i < (R * MB + 7) / 8 * 8; ++i) sums[i] = _mm512_setzero_ps();
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int m = 0; m < MB; ++m) {
      __m512 sum = acc[r][m][0];
#pragma GCC unroll 8
      for (int u = 1; u < U; ++u) sum = _mm512_add_ps(sum, acc[r][m][u]);
      sums[r * MB + m] = sum;
    }
  if constexpr (R * MB == 1) {
    res[0] = _mm512_reduce_add_ps(sums[0]);
  } else {
#pragma GCC unroll 2
    for (int i = 0; i < R * MB; i += 8) reduce_add8(sums + i, std::min(8, R * MB - i), res + i);
  }
}

// How a dense block reads and multiplies its format: `cols` columns a step, W's tail columns masked
// (bf16 x is zero past K, so it needs no mask; f32 x is masked too).
struct Bf16Lanes {
  using T = uint16_t;
  using Vec = __m512i;
  using Mask = __mmask32;
  static constexpr int64_t cols = kB;
  static Mask mask(int64_t n) { return n >= cols ? Mask(~0u) : Mask((1u << n) - 1); }
  static Vec load_w(Mask m, const T* p) { return _mm512_maskz_loadu_epi16(m, p); }
  static Vec load_x(Mask, const T* p) { return _mm512_loadu_si512(p); }
  static __m512 mac(__m512 acc, Vec w, Vec x) { return dot_bf16(acc, w, x); }
};
struct F32Lanes {
  using T = float;
  using Vec = __m512;
  using Mask = __mmask16;
  static constexpr int64_t cols = kT;
  static Mask mask(int64_t n) { return n >= cols ? Mask(0xFFFF) : Mask((1u << n) - 1); }
  static Vec load_w(Mask m, const T* p) { return _mm512_maskz_loadu_ps(m, p); }
  static Vec load_x(Mask m, const T* p) { return _mm512_maskz_loadu_ps(m, p); }
  static __m512 mac(__m512 acc, Vec w, Vec x) { return _mm512_fmadd_ps(w, x, acc); }
};

// res [R][MB] = rows [n, n + R) of W against rows [m0, m0 + MB) of x (f32 or bf16 by Lanes), U
// vectors of columns per step: R * MB * U independent accumulators (which R, MB and U:
// Bf16Tables below). The U accumulators of a dot are added in order, then reduced by sum_dots.
template <typename Lanes, int R, int MB, int U, typename Problem>
void dense_block(const Problem& P, int64_t n, int64_t m0, float* res) {
  using T = typename Lanes::T;
  const int64_t K = P.K, C = Lanes::cols;
  const T* w = P.w + n * K;
  const T* x = P.x + m0 * P.Kp;
  __m512 acc[R][MB][U];
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int m = 0; m < MB; ++m)
#pragma GCC unroll 8
      for (int u = 0; u < U; ++u) acc[r][m][u] = _mm512_setzero_ps();
  auto step = [&](int64_t k, int u, typename Lanes::Mask mask) {
    typename Lanes::Vec wv[R];
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) wv[r] = Lanes::load_w(mask, w + r * K + k);
#pragma GCC unroll 4
    for (int m = 0; m < MB; ++m) {
      const typename Lanes::Vec xv = Lanes::load_x(mask, x + m * P.Kp + k);
#pragma GCC unroll 4
      for (int r = 0; r < R; ++r) acc[r][m][u] = Lanes::mac(acc[r][m][u], wv[r], xv);
    }
  };
  int64_t k = 0;
  for (; k + U * C <= K; k += U * C)
#pragma GCC unroll 8
    for (int u = 0; u < U; ++u) step(k + u * C, u, Lanes::mask(C));
  for (; k < K; k += C) step(k, 0, Lanes::mask(K - k));
  sum_dots<R, MB, U>(acc, res);
}

template <int R, int MB, int U>
void bf16_block(const Bf16Problem& P, int64_t n, int64_t m0, float* res) {
  dense_block<Bf16Lanes, R, MB, U>(P, n, m0, res);
}

template <int R, int MB, int U>
void f32_block(const F32Problem& P, int64_t n, int64_t m0, float* res) {
  dense_block<F32Lanes, R, MB, U>(P, n, m0, res);
}

void quantize_rows(const float* x, int64_t M, int64_t K, int8_t* xq, float* xs, float* xsum) {
  const int64_t nb = K / kB;
  for (int64_t m = 0; m < M; ++m)
    for (int64_t b = 0; b < nb; ++b) {
      const float* p = x + m * K + b * kB;
      const __m512 v0 = _mm512_loadu_ps(p), v1 = _mm512_loadu_ps(p + 16);
      const float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(v0), _mm512_abs_ps(v1)));
      const float inv = amax > 0.0f ? 127.0f / amax : 0.0f;
      const __m512i q0 = _mm512_cvtps_epi32(_mm512_mul_ps(v0, _mm512_set1_ps(inv)));
      const __m512i q1 = _mm512_cvtps_epi32(_mm512_mul_ps(v1, _mm512_set1_ps(inv)));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(xq + m * K + b * kB), _mm512_cvtepi32_epi8(q0));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(xq + m * K + b * kB + 16),
                       _mm512_cvtepi32_epi8(q1));
      xs[m * nb + b] = amax / 127.0f;
      xsum[m * nb + b] = float(_mm512_reduce_add_epi32(_mm512_add_epi32(q0, q1)));
    }
}

#else  // portable C++ (vectorized by the compiler for the variant's target)

template <int MB, bool int4>
void int_tile(const IntProblem& P, int64_t t, int64_t m0, float* res) {
  const int64_t K = P.K, nb = K / kB, blocks_per_group = P.group / kB;
  const uint8_t* wt = P.data + t * tile_bytes(int4, K);
  const float* st = P.scales + t * P.G * kT;
  const float* zt = P.zeros + t * P.G * kT;
  for (int64_t i = 0; i < MB * kT; ++i) res[i] = 0.0f;
  uint8_t w[kB][kT];  // the block's levels, [column][row]
  for (int64_t b = 0; b < nb; ++b) {
    const int64_t g = b / blocks_per_group;
    for (int64_t c = 0; c < kB; ++c)
      for (int64_t r = 0; r < kT; ++r) {
        if constexpr (int4) {
          const int64_t lo = c % 16;
          const uint8_t byte = wt[b * kB * kT / 2 + ((lo / 4) * kT + r) * 4 + lo % 4];
          w[c][r] = c < 16 ? byte & 15 : byte >> 4;
        } else {
          w[c][r] = wt[b * kB * kT + ((c / 4) * kT + r) * 4 + c % 4];
        }
      }
    for (int m = 0; m < MB; ++m) {
      const int64_t row = m0 + m;
      const int8_t* xb = P.xq + row * K + b * kB;
      int32_t d[kT] = {};
      for (int64_t c = 0; c < kB; ++c)
        for (int64_t r = 0; r < kT; ++r) d[r] += int32_t(w[c][r]) * xb[c];
      const float xsum = P.xsum[row * nb + b], xs = P.xs[row * nb + b];
      for (int64_t r = 0; r < kT; ++r) {
        const float exact = float(d[r]) - zt[g * kT + r] * xsum;
        res[m * kT + r] += exact * xs * st[g * kT + r];
      }
    }
  }
}

inline float widen(uint16_t v) {
  return bf16_to_f32(v);
}
inline float widen(float v) {
  return v;
}

// res [R][MB], each dot in 16 partial sums (the portable blocks, f32 or bf16 W and x).
template <int R, int MB, typename Problem>
void dense_block(const Problem& P, int64_t n, int64_t m0, float* res) {
  const int64_t K = P.K;
  for (int r = 0; r < R; ++r)
    for (int m = 0; m < MB; ++m) {
      const auto* w = P.w + (n + r) * K;
      const auto* x = P.x + (m0 + m) * P.Kp;
      float lanes[16] = {};  // independent partial sums (vectorizable)
      int64_t k = 0;
      for (; k + 16 <= K; k += 16)
        for (int l = 0; l < 16; ++l) lanes[l] += widen(w[k + l]) * widen(x[k + l]);
      for (; k < K; ++k) lanes[0] += widen(w[k]) * widen(x[k]);
      float s = 0.0f;
      for (float v : lanes) s += v;
      res[r * MB + m] = s;
    }
}

template <int R, int MB, int U>
void bf16_block(const Bf16Problem& P, int64_t n, int64_t m0, float* res) {
  dense_block<R, MB>(P, n, m0, res);
}

template <int R, int MB, int U>
void f32_block(const F32Problem& P, int64_t n, int64_t m0, float* res) {
  dense_block<R, MB>(P, n, m0, res);
}

void quantize_rows(const float* x, int64_t M, int64_t K, int8_t* xq, float* xs, float* xsum) {
  const int64_t nb = K / kB;
  for (int64_t m = 0; m < M; ++m)
    for (int64_t b = 0; b < nb; ++b) {
      const float* p = x + m * K + b * kB;
      float amax = 0.0f;
      for (int64_t c = 0; c < kB; ++c) amax = std::max(amax, std::fabs(p[c]));
      const float inv = amax > 0.0f ? 127.0f / amax : 0.0f;
      int32_t sum = 0;
      for (int64_t c = 0; c < kB; ++c) {
        const float v = p[c] * inv;
        const int32_t q = v == v ? int32_t(std::nearbyint(v)) : 0;
        xq[m * K + b * kB + c] = int8_t(q);
        sum += q;
      }
      xs[m * nb + b] = amax / 127.0f;
      xsum[m * nb + b] = float(sum);
    }
}

#endif  // ORIGAMI_ISA_AVX512

template <bool int4, size_t... I>
constexpr auto int_tile_table(std::index_sequence<I...>) {
  return std::array<void (*)(const IntProblem&, int64_t, int64_t, float*), sizeof...(I)>{
      &int_tile<int(I) + 1, int4>...};
}

// Tiles [t0, t1) against every row of x, results stored.
void int_tiles(const IntProblem& P, int64_t t0, int64_t t1) {
  static constexpr auto table8 = int_tile_table<false>(std::make_index_sequence<kIntRowsX>());
  static constexpr auto table4 = int_tile_table<true>(std::make_index_sequence<kIntRowsX>());
  const auto& table = P.int4 ? table4 : table8;
  alignas(64) float res[kIntRowsX * kT];  // [MB][16]
  for (int64_t t = t0; t < t1; ++t) {
    const int64_t rows = std::min(kT, P.N - t * kT);
    for (int64_t m0 = 0; m0 < P.M; m0 += kIntRowsX) {
      const int64_t MB = std::min<int64_t>(kIntRowsX, P.M - m0);
      table[size_t(MB - 1)](P, t, m0, res);
      for (int64_t m = 0; m < MB; ++m)
        for (int64_t r = 0; r < rows; ++r) P.out.store(m0 + m, t * kT + r, res[m * kT + r]);
    }
  }
}

using Bf16BlockFn = void (*)(const Bf16Problem&, int64_t, int64_t, float*);
using F32BlockFn = void (*)(const F32Problem&, int64_t, int64_t, float*);
// bf16_block<R, MB, U> (f32_block) for MB = 1 .. kBf16RowsX.
template <int R, int U, size_t... I>
constexpr std::array<Bf16BlockFn, sizeof...(I)> bf16_block_table(std::index_sequence<I...>) {
  return {&bf16_block<R, int(I) + 1, U>...};
}
template <int R, int U, size_t... I>
constexpr std::array<F32BlockFn, sizeof...(I)> f32_block_table(std::index_sequence<I...>) {
  return {&f32_block<R, int(I) + 1, U>...};
}

// y[m, n0 : n0 + count] = v[m * kT ...] (+ beta * y) for every row m of x, count <= 16: what
// Output::store does one by one, 16 at a time (the same arithmetic, bit for bit: f32 r + beta * y,
// then bf16's round-to-nearest-even with its NaN rule).
void store_strip(const Output& out, const float* v, int64_t M, int64_t n0, int64_t count) {
#if ORIGAMI_ISA_AVX512
  const __mmask16 mask = __mmask16((1u << count) - 1);
  const __m512 beta = _mm512_set1_ps(out.beta);
  for (int64_t m = 0; m < M; ++m) {
    __m512 r = _mm512_loadu_ps(v + m * kT);
    const int64_t i = m * out.N + n0;
    if (out.bf16) {
      uint16_t* p = static_cast<uint16_t*>(out.y) + i;
      if (out.beta != 0.0f)
        r = _mm512_add_ps(r,
                          _mm512_mul_ps(beta, bf16x16_to_f32(_mm256_maskz_loadu_epi16(mask, p))));
      _mm256_mask_storeu_epi16(p, mask, f32x16_to_bf16(r));
    } else {
      float* p = static_cast<float*>(out.y) + i;
      if (out.beta != 0.0f)
        r = _mm512_add_ps(r, _mm512_mul_ps(beta, _mm512_maskz_loadu_ps(mask, p)));
      _mm512_mask_storeu_ps(p, mask, r);
    }
  }
#else
  for (int64_t m = 0; m < M; ++m)
    for (int64_t j = 0; j < count; ++j) out.store(m, n0 + j, v[m * kT + j]);
#endif
}

// Which block kernel, by the rows of x; within a call every dot of one M is summed in one order
// whichever R covers its row of W (a thread's share can end with fewer rows left than R), so the
// results do not depend on how the rows of W are split among threads or group members.
//  - M = 1, not batch-invariant: one row of W, 8 accumulator vectors (one sequential stream of W
//    per thread: 95-120% of a streaming read, where four rows at once gave 70-85%).
//  - M > 1, and batch-invariant calls at any M: four rows of W, one accumulator per dot (R * MB =
//    16 in all), the loads of x shared four ways. One accumulator per dot whatever M is what batch
//    invariance needs: a dot is summed in the same order in any M (R and MB only decide how many
//    dots run side by side). bench_qlinear against two rows of W with two accumulators per dot:
//    15-35% faster at M = 2-16 on the 1.1B shapes, 1.3-2x at M = 16-160 on 256-wide layers, the
//    same at M = 1.
// f32 (F32Tables) makes the same choices.
struct Bf16Tables {
  static constexpr auto seq = std::make_index_sequence<kBf16RowsX>();
  static constexpr auto one = bf16_block_table<1, 8>(seq);
  static constexpr auto four = bf16_block_table<4, 1>(seq), four_tail = bf16_block_table<1, 1>(seq);
};
struct F32Tables {
  static constexpr auto seq = std::make_index_sequence<kBf16RowsX>();
  static constexpr auto one = f32_block_table<1, 8>(seq);
  static constexpr auto four = f32_block_table<4, 1>(seq), four_tail = f32_block_table<1, 1>(seq);
};

// Rows [n0, n1) of W against every row of x, results stored: in strips of 16 rows of W, whose
// results for every row of x are gathered first and stored 16 at a time.
template <typename Problem, typename T>
void dense_rows(const Problem& P, int64_t n0, int64_t n1) {
  const bool wide = P.M > 1 || P.invariant;
  thread_local std::vector<float> strip;  // [M][16]
  if (strip.size() < size_t(P.M * kT)) strip.resize(size_t(P.M * kT));
  float res[4 * kBf16RowsX];  // [R][MB]
  for (int64_t s0 = n0; s0 < n1; s0 += kT) {
    const int64_t s1 = std::min(n1, s0 + kT);
    for (int64_t n = s0; n < s1;) {
      // (a range's last rows may take a narrower block: the same sums, see Bf16Tables)
      const int64_t R = wide && s1 - n >= 4 ? 4 : 1;
      const auto& table = !wide ? T::one : R == 4 ? T::four : T::four_tail;
      for (int64_t m0 = 0; m0 < P.M; m0 += kBf16RowsX) {
        const int64_t MB = std::min<int64_t>(kBf16RowsX, P.M - m0);
        table[size_t(MB - 1)](P, n, m0, res);
        for (int64_t r = 0; r < R; ++r)
          for (int64_t m = 0; m < MB; ++m)
            strip[size_t((m0 + m) * kT + n - s0 + r)] = res[r * MB + m];
      }
      n += R;
    }
    store_strip(P.out, strip.data(), P.M, s0, s1 - s0);
  }
}

void bf16_rows(const Bf16Problem& P, int64_t n0, int64_t n1) {
  dense_rows<Bf16Problem, Bf16Tables>(P, n0, n1);
}

void f32_rows(const F32Problem& P, int64_t n0, int64_t n1) {
  dense_rows<F32Problem, F32Tables>(P, n0, n1);
}

}  // namespace origami::ops::cpu::qlinear_detail::ORIGAMI_ATTENTION_ISA
