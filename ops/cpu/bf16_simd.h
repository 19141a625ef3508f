// 16 lanes of f32 <-> bf16 with AVX-512F, bit for bit runtime/dtype.h's bf16_to_f32 and
// f32_to_bf16 (round to nearest even; a NaN stays a quiet NaN). Each function carries its own
// target attribute, so that code compiled for AVX-512 (a `#pragma GCC target` region, a variant
// of ops/cpu/isa_variants.h) inlines it; call them only where the CPU has AVX-512F.
// ORIGAMI_BF16_SIMD says whether they exist (x86-64 with GCC).
#pragma once

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define ORIGAMI_BF16_SIMD 1

// GCC 12's _mm512_undefined_* (inside many intrinsics) trips -W(maybe-)uninitialized.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#pragma GCC diagnostic pop

namespace origami::ops::cpu {

__attribute__((target("avx512f"))) inline __m512 bf16x16_to_f32(__m256i b) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(b), 16));
}

__attribute__((target("avx512f"))) inline __m256i f32x16_to_bf16(__m512 v) {
  const __m512i u = _mm512_castps_si512(v);
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
  const __m512i rounded =
      _mm512_srli_epi32(_mm512_add_epi32(u, _mm512_add_epi32(_mm512_set1_epi32(0x7fff), lsb)), 16);
  const __mmask16 nan = _mm512_cmpgt_epu32_mask(_mm512_and_si512(u, _mm512_set1_epi32(0x7fffffff)),
                                                _mm512_set1_epi32(0x7f800000));
  const __m512i quiet = _mm512_or_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(0x40));
  return _mm512_cvtepi32_epi16(_mm512_mask_mov_epi32(rounded, nan, quiet));
}

}  // namespace origami::ops::cpu

#else
#define ORIGAMI_BF16_SIMD 0
#endif
