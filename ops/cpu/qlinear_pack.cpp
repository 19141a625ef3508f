// Packing and dequantization of the int formats of ops/qlinear.h. The layouts are documented at
// the top of ops/cpu/qlinear.cpp; set_level and dequantize_tile are the only other code that
// knows where a level lives.
#include <omp.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "ops/cpu/qlinear.h"

namespace origami::ops::cpu {
namespace {

constexpr int64_t kT = kQTileRows;
constexpr int64_t kB = kQBlock;

// Level of row r (of its tile), packed column j.
void set_level(uint8_t* tile, bool int4, int64_t r, int64_t j, int level) {
  const int64_t b = j / kB, c = j % kB;
  if (!int4) {
    tile[b * kB * kT + ((c / 4) * kT + r) * 4 + c % 4] = uint8_t(level);
    return;
  }
  const int64_t lo = c % 16;  // low nibbles: the block's columns 0..15, high: 16..31
  uint8_t& byte = tile[b * kB * kT / 2 + ((lo / 4) * kT + r) * 4 + lo % 4];
  byte = uint8_t(c < 16 ? (byte & 0xF0) | level : (byte & 0x0F) | (level << 4));
}

}  // namespace

void dequantize_tile(const PackedLinear& w, int64_t t, int64_t rows, float* dst, int64_t ld) {
  const bool int4 = w.format == WeightFormat::int4;
  const int64_t K = w.cols, G = K / w.group_size;
  const uint8_t* tile = w.data.data_as<const uint8_t>() + t * qtile_bytes(int4, K);
  for (int64_t b = 0; b < K / kB; ++b) {
    const int64_t g = b * kB / w.group_size;
    const float* s = w.scales.data_as<const float>() + (t * G + g) * kT;
    const float* z = w.zeros.data_as<const float>() + (t * G + g) * kT;
    float* d = dst + b * kB;
    if (int4) {
      const uint8_t* v = tile + b * kB * kT / 2;
      for (int64_t p = 0; p < 4; ++p)
        for (int64_t r = 0; r < rows; ++r)
          for (int64_t i = 0; i < 4; ++i) {
            const uint8_t byte = v[(p * kT + r) * 4 + i];
            d[r * ld + 4 * p + i] = s[r] * (float(byte & 15) - z[r]);
            d[r * ld + 16 + 4 * p + i] = s[r] * (float(byte >> 4) - z[r]);
          }
    } else {
      const uint8_t* v = tile + b * kB * kT;
      for (int64_t j = 0; j < 8; ++j)
        for (int64_t r = 0; r < rows; ++r)
          for (int64_t i = 0; i < 4; ++i)
            d[r * ld + 4 * j + i] = s[r] * (float(v[(j * kT + r) * 4 + i]) - z[r]);
    }
  }
}

PackedLinear pack_int(int bits, int64_t rows, int64_t cols, int64_t groups, const int32_t* q,
                      const float* scales, const int32_t* zeros, const std::vector<int32_t>& perm) {
  const bool int4 = bits <= 4;
  const int64_t N = rows, K = cols, G = groups, tiles = (N + kT - 1) / kT;
  PackedLinear w;
  w.format = int4 ? WeightFormat::int4 : WeightFormat::int8;
  w.rows = N;
  w.cols = K;
  w.group_size = K / G;
  w.bits = bits;
  // Padding rows keep level 0, scale 0 and zero 0: they compute zeros that are never stored.
  w.data = Tensor::zeros({tiles, qtile_bytes(int4, K)}, DType::u8);
  w.scales = Tensor::zeros({tiles, G, kT}, DType::f32);
  w.zeros = Tensor::zeros({tiles, G, kT}, DType::f32);
  if (!perm.empty()) {
    w.perm = Tensor::empty({K}, DType::i32);
    std::memcpy(w.perm.data(), perm.data(), size_t(K) * sizeof(int32_t));
  }
  uint8_t* data = w.data.data_as<uint8_t>();
  float* s = w.scales.data_as<float>();
  float* z = w.zeros.data_as<float>();
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < tiles; ++t) {
    uint8_t* tile = data + t * qtile_bytes(int4, K);
    for (int64_t r = 0; r < kT && t * kT + r < N; ++r) {
      const int64_t n = t * kT + r;
      for (int64_t j = 0; j < K; ++j)
        set_level(tile, int4, r, j, q[n * K + (perm.empty() ? j : perm[size_t(j)])]);
      for (int64_t g = 0; g < G; ++g) {
        s[(t * G + g) * kT + r] = scales[g * N + n];
        z[(t * G + g) * kT + r] = float(zeros[g * N + n]);
      }
    }
  }
  return w;
}

Tensor dequantize(const PackedLinear& w) {
  const int64_t N = w.rows, K = w.cols;
  Tensor out = Tensor::empty({N, K}, DType::f32);
  float* o = out.data_as<float>();
  if (w.format == WeightFormat::f32) {
    std::memcpy(o, w.data.data(), size_t(N * K) * sizeof(float));
    return out;
  }
  if (w.format == WeightFormat::bf16) {
    const uint16_t* src = w.data.data_as<const uint16_t>();
    for (int64_t i = 0; i < N * K; ++i) o[i] = bf16_to_f32(src[i]);
    return out;
  }
  const int32_t* perm = w.perm.defined() ? w.perm.data_as<const int32_t>() : nullptr;
  const int64_t tiles = (N + kT - 1) / kT;
#pragma omp parallel
  {
    std::vector<float> f(size_t(kT * K));  // [16][K] a tile, packed column order
#pragma omp for schedule(static)
    for (int64_t t = 0; t < tiles; ++t) {
      const int64_t rows = std::min(kT, N - t * kT);
      dequantize_tile(w, t, rows, f.data(), K);
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t j = 0; j < K; ++j)
          o[(t * kT + r) * K + (perm ? perm[j] : j)] = f[size_t(r * K + j)];
    }
  }
  return out;
}

}  // namespace origami::ops::cpu
