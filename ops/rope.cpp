#include "ops/rope.h"

#include <cmath>
#include <numbers>

#include "ops/check.h"
#include "ops/cpu/pointwise.h"
#if ORIGAMI_CUDA
#include "ops/cuda/pointwise.h"
#endif

namespace origami::ops {

Tensor rope_inv_freq(const RopeConfig& cfg) {
  constexpr const char* op = "rope_inv_freq";
  ORIGAMI_CHECK(cfg.head_dim > 0 && cfg.head_dim % 2 == 0, op,
                ": head_dim must be positive and even, got ", cfg.head_dim);
  ORIGAMI_CHECK(cfg.theta > 0.0, op, ": theta must be positive, got ", cfg.theta);
  const bool llama3 = cfg.llama3_factor > 0.0;
  if (llama3) {
    ORIGAMI_CHECK(cfg.llama3_low_freq_factor > 0.0 &&
                      cfg.llama3_high_freq_factor > cfg.llama3_low_freq_factor,
                  op, ": Llama-3 scaling needs 0 < low_freq_factor < high_freq_factor, got ",
                  cfg.llama3_low_freq_factor, " and ", cfg.llama3_high_freq_factor);
    ORIGAMI_CHECK(cfg.llama3_original_max_position > 0, op,
                  ": Llama-3 scaling needs original_max_position > 0, got ",
                  cfg.llama3_original_max_position);
  }
  const int64_t half = cfg.head_dim / 2;
  Tensor out = Tensor::empty({half}, DType::f32);
  float* p = out.data_as<float>();
  // transformers: inv_freq = 1 / base^(arange(0, dim, 2) / dim), then _compute_llama3_parameters.
  const double factor = cfg.llama3_factor, low = cfg.llama3_low_freq_factor,
               high = cfg.llama3_high_freq_factor,
               old_ctx = double(cfg.llama3_original_max_position);
  const double low_freq_wavelen = old_ctx / low, high_freq_wavelen = old_ctx / high;
  for (int64_t i = 0; i < half; ++i) {
    double inv = 1.0 / std::pow(cfg.theta, double(2 * i) / double(cfg.head_dim));
    if (llama3) {
      const double wavelen = 2.0 * std::numbers::pi / inv;
      if (wavelen > low_freq_wavelen) {
        inv = inv / factor;
      } else if (!(wavelen < high_freq_wavelen)) {  // between the two: interpolate
        const double smooth = (old_ctx / wavelen - low) / (high - low);
        inv = (1.0 - smooth) * inv / factor + smooth * inv;
      }
    }
    p[i] = float(inv);
  }
  return out;
}

namespace {

void rope_run(const char* op, const char* x_name, const Tensor& x, const Tensor& positions,
              const Tensor& inv_freq, const char* out_name, Tensor& out, bool inverse) {
  check_dim(op, x_name, x, 3);
  check_dtype(op, x_name, x, {DType::f32, DType::bf16});
  ORIGAMI_CHECK(x.size(2) % 2 == 0, op, ": the head dimension of ", x_name,
                " [T,H,D] must be even, got ", x.str());
  check_shape(op, "positions", positions, {x.size(0)});
  check_dtype(op, "positions", positions, {DType::i32, DType::i64});
  check_shape(op, "inv_freq", inv_freq, {x.size(2) / 2});
  check_dtype(op, "inv_freq", inv_freq, {DType::f32});
  check_shape(op, out_name, out, x.shape());
  check_same_dtype(op, x_name, x, out_name, out);
  check_contiguous(op, x_name, x);
  check_contiguous(op, "positions", positions);
  check_contiguous(op, "inv_freq", inv_freq);
  check_contiguous(op, out_name, out);
  const Device dev = check_same_device(
      op, {{x_name, &x}, {"positions", &positions}, {"inv_freq", &inv_freq}, {out_name, &out}});
  if (x.numel() == 0) return;
  if (dev.is_cuda()) {
#if ORIGAMI_CUDA
    cuda::rope_apply(x, positions, inv_freq, out, inverse);
#else
    fail_no_cuda(op);
#endif
    return;
  }
  cpu::rope_apply(x, positions, inv_freq, out, inverse);
}

}  // namespace

void rope_forward(const Tensor& x, const Tensor& positions, const Tensor& inv_freq, Tensor& out) {
  rope_run("rope_forward", "x", x, positions, inv_freq, "out", out, false);
}

void rope_backward(const Tensor& dout, const Tensor& positions, const Tensor& inv_freq,
                   Tensor& dx) {
  rope_run("rope_backward", "dout", dout, positions, inv_freq, "dx", dx, true);
}

}  // namespace origami::ops
