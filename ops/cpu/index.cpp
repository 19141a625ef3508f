#include "ops/cpu/index.h"

#include <algorithm>
#include <cstring>
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

// The indices as int64, whatever their dtype (i32 or i64).
std::vector<int64_t> indices_of(const Tensor& idx) {
  std::vector<int64_t> out(size_t(idx.numel()));
  if (idx.dtype() == DType::i32) {
    const int32_t* p = idx.data_as<int32_t>();
    for (size_t i = 0; i < out.size(); ++i) out[i] = p[i];
  } else {
    std::memcpy(out.data(), idx.data(), out.size() * sizeof(int64_t));
  }
  return out;
}

}  // namespace

void gather_rows(const Tensor& src, const Tensor& idx, Tensor& out) {
  const int64_t M = out.size(0), H = out.size(1);
  const std::vector<int64_t> ix = indices_of(idx);
  const size_t row_bytes = size_t(H) * dtype_size(src.dtype());
  const char* s = static_cast<const char*>(src.data());
  char* o = static_cast<char*>(out.data());
#pragma omp parallel for schedule(static) if (M * H >= kParallelWork)
  for (int64_t i = 0; i < M; ++i)
    std::memcpy(o + size_t(i) * row_bytes, s + size_t(ix[size_t(i)]) * row_bytes, row_bytes);
}

// Deterministic: a stable counting sort groups the rows of src by destination row (keeping index
// order within each group), then each destination row sums its group in that order in fp32 and
// adds the sum to out once. Destination rows are independent, so they run in parallel.
void scatter_add_rows(const Tensor& src, const Tensor& idx, Tensor& out, const Tensor& weight) {
  const int64_t M = src.size(0), H = src.size(1), N = out.size(0);
  const std::vector<int64_t> ix = indices_of(idx);
  std::vector<int64_t> start(static_cast<size_t>(N) + 1, 0);
  std::vector<int64_t> order(static_cast<size_t>(M));
  for (int64_t i = 0; i < M; ++i) ++start[size_t(ix[size_t(i)]) + 1];
  for (int64_t n = 0; n < N; ++n) start[size_t(n) + 1] += start[size_t(n)];
  {
    std::vector<int64_t> fill(start.begin(), start.end() - 1);
    for (int64_t i = 0; i < M; ++i) order[size_t(fill[size_t(ix[size_t(i)])]++)] = i;
  }
  const float* w = weight.defined() ? weight.data_as<float>() : nullptr;
  dispatch_float(src.dtype(), [&](auto stag) {
    using S = decltype(stag);
    const S* s = src.data_as<S>();
    dispatch_float(out.dtype(), [&](auto otag) {
      using O = decltype(otag);
      O* o = out.data_as<O>();
#pragma omp parallel if (M * H >= kParallelWork)
      {
        std::vector<float> acc(static_cast<size_t>(H));
#pragma omp for schedule(dynamic, 16)
        for (int64_t n = 0; n < N; ++n) {
          const int64_t b = start[size_t(n)], e = start[size_t(n) + 1];
          if (b == e) continue;
          std::fill(acc.begin(), acc.end(), 0.0f);
          for (int64_t k = b; k < e; ++k) {
            const int64_t i = order[size_t(k)];
            const float wi = w ? w[i] : 1.0f;
            const S* row = s + i * H;
            for (int64_t c = 0; c < H; ++c) acc[size_t(c)] += wi * load(row, c);
          }
          O* orow = o + n * H;
          for (int64_t c = 0; c < H; ++c) store(orow, c, load(orow, c) + acc[size_t(c)]);
        }
      }
    });
  });
}

void scatter_add_rows_weight_grad(const Tensor& src, const Tensor& idx, const Tensor& dout,
                                  Tensor& dweight) {
  const int64_t M = src.size(0), H = src.size(1);
  const std::vector<int64_t> ix = indices_of(idx);
  float* dw = dweight.data_as<float>();
  dispatch_float(src.dtype(), [&](auto stag) {
    using S = decltype(stag);
    const S* s = src.data_as<S>();
    dispatch_float(dout.dtype(), [&](auto dtag) {
      using D = decltype(dtag);
      const D* d = dout.data_as<D>();
#pragma omp parallel for schedule(static) if (M * H >= kParallelWork)
      for (int64_t i = 0; i < M; ++i) {
        const S* srow = s + i * H;
        const D* drow = d + ix[size_t(i)] * H;
        float acc = 0.0f;
        for (int64_t c = 0; c < H; ++c) acc += load(srow, c) * load(drow, c);
        dw[i] = acc;
      }
    });
  });
}

}  // namespace origami::ops::cpu
