#include "ops/cpu/cross_entropy.h"

#include <cmath>
#include <limits>

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

// fn(float{}) for f32 logits, fn(uint16_t{}) for bf16 (raw bits).
template <typename Fn>
void dispatch_logits(DType dt, Fn&& fn) {
  if (dt == DType::f32)
    fn(float{});
  else
    fn(uint16_t{});
}

template <typename Fn>
void dispatch_targets(DType dt, Fn&& fn) {
  if (dt == DType::i32)
    fn(int32_t{});
  else
    fn(int64_t{});
}

template <typename T>
float row_max_of(const T* row, int64_t V) {
  float m = -std::numeric_limits<float>::infinity();
  for (int64_t j = 0; j < V; ++j) m = std::fmax(m, load(row, j));
  return m;
}

template <typename T>
float sum_exp_of(const T* row, int64_t V, float max) {
  float s = 0.0f;
  for (int64_t j = 0; j < V; ++j) s += std::exp(load(row, j) - max);
  return s;
}

}  // namespace

void ce_row_max(const Tensor& logits, Tensor& row_max) {
  const int64_t T = logits.size(0), V = logits.size(1), ld = logits.stride(0);
  float* out = row_max.data_as<float>();
  dispatch_logits(logits.dtype(), [&](auto tag) {
    using T_ = decltype(tag);
    const T_* x = logits.data_as<T_>();
#pragma omp parallel for schedule(static) if (T * V >= kParallelWork)
    for (int64_t t = 0; t < T; ++t) out[t] = row_max_of(x + t * ld, V);
  });
}

void ce_sum_exp(const Tensor& logits, const Tensor& row_max, Tensor& sum_exp) {
  const int64_t T = logits.size(0), V = logits.size(1), ld = logits.stride(0);
  const float* mx = row_max.data_as<float>();
  float* out = sum_exp.data_as<float>();
  dispatch_logits(logits.dtype(), [&](auto tag) {
    using T_ = decltype(tag);
    const T_* x = logits.data_as<T_>();
#pragma omp parallel for schedule(static) if (T * V >= kParallelWork)
    for (int64_t t = 0; t < T; ++t) out[t] = sum_exp_of(x + t * ld, V, mx[t]);
  });
}

void ce_target_logit(const Tensor& logits, const Tensor& targets, int64_t vocab_offset,
                     Tensor& target_logit) {
  const int64_t T = logits.size(0), V = logits.size(1), ld = logits.stride(0);
  float* out = target_logit.data_as<float>();
  dispatch_logits(logits.dtype(), [&](auto ltag) {
    using L = decltype(ltag);
    const L* x = logits.data_as<L>();
    dispatch_targets(targets.dtype(), [&](auto ttag) {
      using I = decltype(ttag);
      const I* tg = targets.data_as<I>();
      for (int64_t t = 0; t < T; ++t) {
        const int64_t j = int64_t(tg[t]) - vocab_offset;
        out[t] = (j >= 0 && j < V) ? load(x + t * ld, j) : 0.0f;
      }
    });
  });
}

void ce_finish(const Tensor& row_max, const Tensor& sum_exp, const Tensor& target_logit,
               const Tensor& targets, int64_t ignore_index, Tensor& loss, Tensor& lse) {
  const int64_t T = row_max.size(0);
  const float* mx = row_max.data_as<float>();
  const float* se = sum_exp.data_as<float>();
  const float* tl = target_logit.data_as<float>();
  float* lo = loss.data_as<float>();
  float* ls = lse.data_as<float>();
  dispatch_targets(targets.dtype(), [&](auto ttag) {
    using I = decltype(ttag);
    const I* tg = targets.data_as<I>();
    for (int64_t t = 0; t < T; ++t) {
      const float l = std::log(se[t]) + mx[t];
      ls[t] = l;
      lo[t] = int64_t(tg[t]) == ignore_index ? 0.0f : l - tl[t];
    }
  });
}

void cross_entropy_forward(const Tensor& logits, const Tensor& targets, int64_t ignore_index,
                           Tensor& loss, Tensor& lse) {
  const int64_t T = logits.size(0), V = logits.size(1), ld = logits.stride(0);
  float* lo = loss.data_as<float>();
  float* ls = lse.data_as<float>();
  dispatch_logits(logits.dtype(), [&](auto ltag) {
    using L = decltype(ltag);
    const L* x = logits.data_as<L>();
    dispatch_targets(targets.dtype(), [&](auto ttag) {
      using I = decltype(ttag);
      const I* tg = targets.data_as<I>();
#pragma omp parallel for schedule(static) if (T * V >= kParallelWork)
      for (int64_t t = 0; t < T; ++t) {
        const L* row = x + t * ld;
        const float mx = row_max_of(row, V);
        const float l = std::log(sum_exp_of(row, V, mx)) + mx;
        const int64_t target = int64_t(tg[t]);
        ls[t] = l;
        // Targets were checked to lie in [0, V) unless ignored.
        lo[t] = target == ignore_index ? 0.0f : l - load(row, target);
      }
    });
  });
}

void cross_entropy_backward(const Tensor& logits, const Tensor& targets, const Tensor& lse,
                            int64_t ignore_index, float grad_scale, Tensor& dlogits,
                            int64_t vocab_offset) {
  const int64_t T = logits.size(0), V = logits.size(1), ld = logits.stride(0);
  const int64_t ldd = dlogits.stride(0);
  const float* ls = lse.data_as<float>();
  dispatch_logits(logits.dtype(), [&](auto ltag) {
    using L = decltype(ltag);
    const L* x = logits.data_as<L>();
    L* dx = dlogits.data_as<L>();
    dispatch_targets(targets.dtype(), [&](auto ttag) {
      using I = decltype(ttag);
      const I* tg = targets.data_as<I>();
#pragma omp parallel for schedule(static) if (T * V >= kParallelWork)
      for (int64_t t = 0; t < T; ++t) {
        const L* row = x + t * ld;
        L* drow = dx + t * ldd;
        const int64_t target = int64_t(tg[t]);
        if (target == ignore_index) {
          for (int64_t j = 0; j < V; ++j) store(drow, j, 0.0f);
          continue;
        }
        const float l = ls[t];
        const int64_t jt = target - vocab_offset;
        for (int64_t j = 0; j < V; ++j) {
          const float p = std::exp(load(row, j) - l);
          store(drow, j, (j == jt ? p - 1.0f : p) * grad_scale);
        }
      }
    });
  });
}

}  // namespace origami::ops::cpu
