// The inner step of the CUDA attention forwards (ops/cuda/attention.cu,
// ops/cuda/paged_attention.cu): one query row, held by one thread, takes a tile of keys from shared
// memory into its online softmax.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace origami::ops::cuda {

// qr [D]: the query row times scale * log2(e); sK, sV [KEYS][D]: the tile's keys and values, the
// first at position j0; keys outside [lo, hi) are masked. m and l are the row's running max (log2
// units) and sum, o [D] its unnormalised output; all three are updated.
template <int KEYS>
__device__ __forceinline__ void online_softmax_tile(const float* qr, const float* sK,
                                                    const float* sV, int64_t D, int64_t j0,
                                                    int64_t lo, int64_t hi, float& m, float& l,
                                                    float* o) {
  float s[KEYS];
#pragma unroll
  for (int jj = 0; jj < KEYS; ++jj) s[jj] = 0.0f;
  for (int64_t d = 0; d < D; ++d) {
    const float qd = qr[d];
#pragma unroll
    for (int jj = 0; jj < KEYS; ++jj) s[jj] += qd * sK[jj * D + d];
  }
  float mx = -INFINITY;
#pragma unroll
  for (int jj = 0; jj < KEYS; ++jj) {
    const int64_t j = j0 + jj;
    if (j < lo || j >= hi) s[jj] = -INFINITY;
    mx = fmaxf(mx, s[jj]);
  }
  const float mnew = fmaxf(m, mx);
  if (mnew == -INFINITY) return;  // nothing visible to this row yet
  const float alpha = exp2f(m - mnew);
  float psum = 0.0f;
#pragma unroll
  for (int jj = 0; jj < KEYS; ++jj) {
    s[jj] = exp2f(s[jj] - mnew);
    psum += s[jj];
  }
  l = l * alpha + psum;
  m = mnew;
  for (int64_t d = 0; d < D; ++d) {
    float acc = o[d] * alpha;
#pragma unroll
    for (int jj = 0; jj < KEYS; ++jj) acc += s[jj] * sV[jj * D + d];
    o[d] = acc;
  }
}

}  // namespace origami::ops::cuda
