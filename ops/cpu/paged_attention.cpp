// CPU paged attention: one query row of one head at a time, scores over its visible keys, softmax,
// weighted sum of values (f32 accumulation). Parallel over (query row, head).
#include "ops/cpu/paged_attention.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "ops/cpu/pointwise.h"

namespace origami::ops::cpu {

void paged_attention_forward(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache,
                             const Tensor& query_start, const Tensor& context_len,
                             const Tensor& block_table, const PagedAttentionParams& p,
                             Tensor& out) {
  const int64_t T = q.size(0), Hq = q.size(1), D = q.size(2);
  const int64_t block_size = k_cache.size(1), Hkv = k_cache.size(2), group = Hq / Hkv;
  const int64_t N = context_len.size(0), max_blocks = block_table.size(1);
  const int64_t* qs = query_start.data_as<const int64_t>();
  const int64_t* cl = context_len.data_as<const int64_t>();
  const int32_t* bt = block_table.data_as<const int32_t>();
  dispatch_float(q.dtype(), "paged_attention_forward", [&](auto tag) {
    using T_ = decltype(tag);
    const T_* qd = q.data_as<const T_>();
    const T_* kd = k_cache.data_as<const T_>();
    const T_* vd = v_cache.data_as<const T_>();
    T_* od = out.data_as<T_>();
    // Rows no sequence owns are zero.
    for (int64_t t = qs[N] * Hq * D; t < T * Hq * D; ++t) store(od, t, 0.0f);
#pragma omp parallel
    {
      std::vector<float> s, acc(static_cast<size_t>(D));
#pragma omp for schedule(dynamic, 1) collapse(2)
      for (int64_t t = 0; t < qs[N]; ++t)
        for (int64_t h = 0; h < Hq; ++h) {
          const int64_t i = std::upper_bound(qs, qs + N + 1, t) - qs - 1;  // the owning sequence
          const int64_t q_len = qs[i + 1] - qs[i], ctx = cl[i];
          const int64_t pos = ctx - q_len + (t - qs[i]);
          const int64_t lo = p.window > 0 ? std::max<int64_t>(0, pos - p.window + 1) : 0;
          const int64_t hi = pos + 1, hk = h / group;
          s.resize(size_t(hi - lo));
          float mx = -INFINITY;
          for (int64_t j = lo; j < hi; ++j) {
            const int64_t blk = bt[i * max_blocks + j / block_size];
            const int64_t e = ((blk * block_size + j % block_size) * Hkv + hk) * D;
            float dot = 0.0f;
            for (int64_t d = 0; d < D; ++d) dot += load(qd, (t * Hq + h) * D + d) * load(kd, e + d);
            s[size_t(j - lo)] = dot * p.scale;
            mx = std::max(mx, s[size_t(j - lo)]);
          }
          float sum = 0.0f;
          std::fill(acc.begin(), acc.end(), 0.0f);
          for (int64_t j = lo; j < hi; ++j) {
            const float w = std::exp(s[size_t(j - lo)] - mx);
            sum += w;
            const int64_t blk = bt[i * max_blocks + j / block_size];
            const int64_t e = ((blk * block_size + j % block_size) * Hkv + hk) * D;
            for (int64_t d = 0; d < D; ++d) acc[size_t(d)] += w * load(vd, e + d);
          }
          for (int64_t d = 0; d < D; ++d) store(od, (t * Hq + h) * D + d, acc[size_t(d)] / sum);
        }
    }
  });
}

void paged_kv_write(const Tensor& k, const Tensor& v, const Tensor& slot_mapping, Tensor& k_cache,
                    Tensor& v_cache) {
  const int64_t T = k.size(0);
  const size_t row_bytes = size_t(k.size(1) * k.size(2)) * dtype_size(k.dtype());
  const int64_t* sm = slot_mapping.data_as<const int64_t>();
  const char* ks = static_cast<const char*>(k.data());
  const char* vs = static_cast<const char*>(v.data());
  char* kc = static_cast<char*>(k_cache.data());
  char* vc = static_cast<char*>(v_cache.data());
#pragma omp parallel for schedule(static) if (T * int64_t(row_bytes) >= kMinParallelElements)
  for (int64_t t = 0; t < T; ++t) {
    if (sm[t] < 0) continue;
    std::memcpy(kc + size_t(sm[t]) * row_bytes, ks + size_t(t) * row_bytes, row_bytes);
    std::memcpy(vc + size_t(sm[t]) * row_bytes, vs + size_t(t) * row_bytes, row_bytes);
  }
}

void paged_kv_copy_blocks(Tensor& k_cache, Tensor& v_cache, const Tensor& pairs) {
  const int64_t n = pairs.size(0);
  const size_t block_bytes =
      size_t(k_cache.size(1) * k_cache.size(2) * k_cache.size(3)) * dtype_size(k_cache.dtype());
  const int32_t* pr = pairs.data_as<const int32_t>();
  char* kc = static_cast<char*>(k_cache.data());
  char* vc = static_cast<char*>(v_cache.data());
#pragma omp parallel for schedule(static) if (n * int64_t(block_bytes) >= kMinParallelElements)
  for (int64_t i = 0; i < 2 * n; ++i) {  // (pair, cache)
    char* base = i % 2 ? vc : kc;
    const int64_t src = pr[i / 2 * 2], dst = pr[i / 2 * 2 + 1];
    std::memcpy(base + size_t(dst) * block_bytes, base + size_t(src) * block_bytes, block_bytes);
  }
}

}  // namespace origami::ops::cpu
