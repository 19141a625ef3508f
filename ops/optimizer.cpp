// Argument checks and device dispatch of the optimizer pieces.
#include "ops/optimizer.h"

#include "ops/check.h"
#include "ops/cpu/optimizer.h"
#if ORIGAMI_CUDA
#include "ops/cuda/optimizer.h"
#endif

namespace origami::ops {

namespace {

void check_flat(const char* op, const char* name, const Tensor& t, const Tensor& like,
                const char* like_name, std::initializer_list<DType> dtypes) {
  check_defined(op, name, t);
  ORIGAMI_CHECK(t.shape() == like.shape(), op, ": ", name, " must have the shape of ", like_name,
                " ", like.str(), ", got ", t.str());
  check_dtype(op, name, t, dtypes);
  check_contiguous(op, name, t);
}

}  // namespace

void adamw_step(Tensor& master, const Tensor& grad, Tensor& m, Tensor& v, const AdamWParams& p,
                Tensor param, float grad_scale) {
  const char* op = "adamw_step";
  check_dtype(op, "master", master, {DType::f32});
  check_contiguous(op, "master", master);
  check_flat(op, "grad", grad, master, "master", {DType::f32, DType::bf16});
  check_flat(op, "m", m, master, "master", {DType::f32});
  check_flat(op, "v", v, master, "master", {DType::f32});
  if (param.defined()) check_flat(op, "param", param, master, "master", {DType::f32, DType::bf16});
  ORIGAMI_CHECK(p.step >= 1, op, ": step must be >= 1 (1-based, counted after incrementing), got ",
                p.step);
  ORIGAMI_CHECK(p.beta1 >= 0 && p.beta1 < 1 && p.beta2 >= 0 && p.beta2 < 1, op,
                ": betas must lie in [0, 1), got beta1 ", p.beta1, ", beta2 ", p.beta2);
  const Device d = check_same_device(
      op, {{"master", &master}, {"grad", &grad}, {"m", &m}, {"v", &v}, {"param", &param}});
  // param may be master itself: then there is nothing more to write.
  if (param.defined() && param.dtype() == DType::f32 && param.data() == master.data())
    param = Tensor();
  if (master.numel() == 0) return;
  if (d.is_cpu()) return cpu::adamw_step(master, grad, m, v, p, param, grad_scale);
#if ORIGAMI_CUDA
  cuda::adamw_step(master, grad, m, v, p, param, grad_scale);
#else
  fail_no_cuda(op);
#endif
}

double sum_squares(const Tensor& g) {
  const char* op = "sum_squares";
  check_dtype(op, "g", g, {DType::f32, DType::bf16, DType::f16});
  check_contiguous(op, "g", g);
  if (g.numel() == 0) return 0.0;
  if (g.device().is_cpu()) return cpu::sum_squares(g);
#if ORIGAMI_CUDA
  return cuda::sum_squares(g);
#else
  fail_no_cuda(op);
#endif
}

void scale_(Tensor& g, float s) {
  const char* op = "scale_";
  check_dtype(op, "g", g, {DType::f32, DType::bf16});
  check_contiguous(op, "g", g);
  if (g.numel() == 0) return;
  if (g.device().is_cpu()) return cpu::scale_(g, s);
#if ORIGAMI_CUDA
  cuda::scale_(g, s);
#else
  fail_no_cuda(op);
#endif
}

void axpy_(Tensor& y, const Tensor& x, float alpha) {
  const char* op = "axpy_";
  check_dtype(op, "y", y, {DType::f32});
  check_contiguous(op, "y", y);
  check_flat(op, "x", x, y, "y", {DType::f32, DType::bf16});
  const Device d = check_same_device(op, {{"y", &y}, {"x", &x}});
  if (y.numel() == 0) return;
  if (d.is_cpu()) return cpu::axpy_(y, x, alpha);
#if ORIGAMI_CUDA
  cuda::axpy_(y, x, alpha);
#else
  fail_no_cuda(op);
#endif
}

}  // namespace origami::ops
