// Attention: argument checks and dispatch to the CPU or CUDA kernels.
#include "ops/attention.h"

#include <cmath>

#include "ops/check.h"
#include "ops/cpu/attention.h"
#if ORIGAMI_CUDA
#include "ops/cuda/attention.h"
#endif

namespace origami::ops {
namespace {

// Checks q [B,Sq,Hq,D], k and v [B,Sk,Hkv,D] and the parameters; returns the parameters with the
// scale resolved (0 -> 1/sqrt(D)).
AttentionParams check_qkv(const char* op, const Tensor& q, const Tensor& k, const Tensor& v,
                          const AttentionParams& p) {
  check_dim(op, "q", q, 4);
  check_dim(op, "k", k, 4);
  check_dim(op, "v", v, 4);
  check_dtype(op, "q", q, {DType::f32, DType::bf16});
  check_same_dtype(op, "q", q, "k", k);
  check_same_dtype(op, "q", q, "v", v);
  ORIGAMI_CHECK(k.shape() == v.shape(), op, ": k and v must have the same shape [B,Sk,Hkv,D], got ",
                k.str(), " and ", v.str());
  ORIGAMI_CHECK(q.size(0) == k.size(0) && q.size(3) == k.size(3), op,
                ": q [B,Sq,Hq,D] and k [B,Sk,Hkv,D] must agree in B and D, got q ", q.str(),
                " and k ", k.str());
  ORIGAMI_CHECK(q.size(3) > 0, op, ": head dim must be positive, got q ", q.str());
  ORIGAMI_CHECK(k.size(2) > 0 && q.size(2) % k.size(2) == 0, op, ": query heads (", q.size(2),
                ") must be a multiple of key/value heads (", k.size(2), "), got q ", q.str(),
                " and k ", k.str());
  check_contiguous(op, "q", q);
  check_contiguous(op, "k", k);
  check_contiguous(op, "v", v);
  ORIGAMI_CHECK(p.window == -1 || p.window >= 1, op,
                ": window must be -1 (off) or at least 1, got ", p.window);
  ORIGAMI_CHECK(std::isfinite(p.scale), op, ": scale must be finite, got ", p.scale);
  AttentionParams r = p;
  if (r.scale == 0.0f) r.scale = 1.0f / std::sqrt(float(q.size(3)));
  return r;
}

void check_lse(const char* op, const char* name, const Tensor& lse, const Tensor& q) {
  check_dtype(op, name, lse, {DType::f32});
  check_shape(op, name, lse, {q.size(0), q.size(2), q.size(1)});
  check_contiguous(op, name, lse);
}

void check_like(const char* op, const char* name, const Tensor& t, const char* like_name,
                const Tensor& like) {
  check_shape(op, name, t, like.shape());
  check_same_dtype(op, like_name, like, name, t);
  check_contiguous(op, name, t);
}

}  // namespace

void attention_forward(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionParams& p,
                       Tensor& out, Tensor& lse) {
  const char* op = "attention_forward";
  const AttentionParams rp = check_qkv(op, q, k, v, p);
  check_like(op, "out", out, "q", q);
  check_lse(op, "lse", lse, q);
  const Device dev =
      check_same_device(op, {{"q", &q}, {"k", &k}, {"v", &v}, {"out", &out}, {"lse", &lse}});
  if (dev.is_cpu()) return cpu::attention_forward(q, k, v, rp, out, lse);
#if ORIGAMI_CUDA
  cuda::attention_forward(q, k, v, rp, out, lse);
#else
  fail_no_cuda(op);
#endif
}

void attention_backward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                        const Tensor& lse, const Tensor& dout, const AttentionParams& p, Tensor& dq,
                        Tensor& dk, Tensor& dv) {
  const char* op = "attention_backward";
  const AttentionParams rp = check_qkv(op, q, k, v, p);
  check_like(op, "out", out, "q", q);
  check_like(op, "dout", dout, "q", q);
  check_lse(op, "lse", lse, q);
  check_like(op, "dq", dq, "q", q);
  check_like(op, "dk", dk, "k", k);
  check_like(op, "dv", dv, "v", v);
  const Device dev = check_same_device(op, {{"q", &q},
                                            {"k", &k},
                                            {"v", &v},
                                            {"out", &out},
                                            {"lse", &lse},
                                            {"dout", &dout},
                                            {"dq", &dq},
                                            {"dk", &dk},
                                            {"dv", &dv}});
  if (dev.is_cpu()) return cpu::attention_backward(q, k, v, out, lse, dout, rp, dq, dk, dv);
#if ORIGAMI_CUDA
  cuda::attention_backward(q, k, v, out, lse, dout, rp, dq, dk, dv);
#else
  fail_no_cuda(op);
#endif
}

void attention_merge(Tensor& out_a, Tensor& lse_a, const Tensor& out_b, const Tensor& lse_b) {
  const char* op = "attention_merge";
  check_dim(op, "out_a", out_a, 4);
  check_dtype(op, "out_a", out_a, {DType::f32, DType::bf16});
  check_contiguous(op, "out_a", out_a);
  check_like(op, "out_b", out_b, "out_a", out_a);
  // lse [B,H,S] for out [B,S,H,D].
  const Shape lse_shape = {out_a.size(0), out_a.size(2), out_a.size(1)};
  for (auto [name, t] :
       {std::pair<const char*, const Tensor*>{"lse_a", &lse_a}, {"lse_b", &lse_b}}) {
    check_dtype(op, name, *t, {DType::f32});
    check_shape(op, name, *t, lse_shape);
    check_contiguous(op, name, *t);
  }
  const Device dev = check_same_device(
      op, {{"out_a", &out_a}, {"lse_a", &lse_a}, {"out_b", &out_b}, {"lse_b", &lse_b}});
  if (dev.is_cpu()) return cpu::attention_merge(out_a, lse_a, out_b, lse_b);
#if ORIGAMI_CUDA
  cuda::attention_merge(out_a, lse_a, out_b, lse_b);
#else
  fail_no_cuda(op);
#endif
}

}  // namespace origami::ops
