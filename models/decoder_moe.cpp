// The decoder's MoE block (Mixtral, Qwen2-MoE, DeepSeek-MoE style), forward and backward, for
// training and inference alike:
//   hn2 = rmsnorm(x_mid) -> route (host) -> permute: token copies sorted by expert
//   -> experts (grouped GEMM SwiGLU), here or, with ep or etp > 1, on the experts' ranks through
//      the ExpertDispatcher (parallel/expert_dispatcher.h: dispatch -> experts -> combine)
//   -> unpermute: x_{l+1} = x_mid + sum of each token's copies' outputs (+ shared expert)
// The block runs on the rows this rank holds (Tl), with the expert weights replicated over TP.
#include <cmath>
#include <span>

#include "models/decoder.h"
#include "models/decoder_internal.h"
#include "models/moe_router.h"
#include "ops/activation.h"
#include "ops/gemm.h"
#include "ops/index.h"
#include "ops/norm.h"
#include "ops/qlinear.h"
#include "parallel/expert_dispatcher.h"

namespace origami::models {

namespace {
// Linears (x_i, W_i, y_i) run ops::kMaxPackedGroup at a time through ops::packed_linear_group: at
// decode sizes every call is one parallel region, and a W_i's x is quantized once for all W_i that
// read it.
class PackedBatch {
 public:
  explicit PackedBatch(const ops::PackedLinearOptions& po) : po_(po) {}
  void add(const Tensor& x, const ops::PackedLinear& w, const Tensor& y) {
    if (n_ == ops::kMaxPackedGroup) run();
    x_[n_] = x;
    w_[n_] = &w;
    y_[n_] = y;
    ++n_;
  }
  void run() {
    if (n_ == 0) return;
    const Tensor* x[ops::kMaxPackedGroup];
    Tensor* y[ops::kMaxPackedGroup];
    for (size_t i = 0; i < n_; ++i) {
      x[i] = &x_[i];
      y[i] = &y_[i];
    }
    ops::packed_linear_group({x, n_}, {w_, n_}, {y, n_}, po_);
    n_ = 0;
  }

 private:
  ops::PackedLinearOptions po_;
  Tensor x_[ops::kMaxPackedGroup], y_[ops::kMaxPackedGroup];
  const ops::PackedLinear* w_[ops::kMaxPackedGroup] = {};
  size_t n_ = 0;
};

// The experts on rows grouped by expert (rows[e] each), x [n,H] compute, p [n] f32 routing
// weights: eg, eu [n,Fe] = x W[e]^T;  ea = silu(eg) * eu * p;  y [n,H] = ea Wdown[e]^T.
// fixed_rows: batch-invariant GEMMs (ops::grouped_gemm). Packed experts (inference: pk.e_gate
// set) run the packed products of the experts with rows, gate and up of all of them together,
// then the down projections together.
void experts_forward(const LayerWeights& w, const LayerPacked& pk,
                     const ops::PackedLinearOptions& po, std::span<const int64_t> rows,
                     const Tensor& x, const Tensor& p, LayerActivations& a, Tensor& y,
                     bool fixed_rows) {
  const int64_t n = x.size(0);
  Tensor eg = rows_of(a.eg, n), eu = rows_of(a.eu, n), ea = rows_of(a.ea, n);
  // fn(e, r, m) for each expert e with rows [r, r + m), m > 0.
  const auto each_expert = [&](const auto& fn) {
    int64_t r = 0;
    for (size_t e = 0; e < rows.size(); ++e) {
      if (rows[e] > 0) fn(e, r, rows[e]);
      r += rows[e];
    }
  };
  PackedBatch batch(po);
  if (pk.e_gate) {
    each_expert([&](size_t e, int64_t r, int64_t m) {
      const Tensor xe = x.narrow(0, r, m);
      batch.add(xe, pk.e_gate[e], eg.narrow(0, r, m));
      batch.add(xe, pk.e_up[e], eu.narrow(0, r, m));
    });
    batch.run();
  } else {
    ops::grouped_gemm(x, w.e_gate, rows, eg, true, 1.0f, 0.0f, fixed_rows);
    ops::grouped_gemm(x, w.e_up, rows, eu, true, 1.0f, 0.0f, fixed_rows);
  }
  ops::swiglu_forward(eg, eu, ea, p);
  if (pk.e_down) {
    each_expert([&](size_t e, int64_t r, int64_t m) {
      batch.add(ea.narrow(0, r, m), pk.e_down[e], y.narrow(0, r, m));
    });
    batch.run();
  } else {
    ops::grouped_gemm(ea, w.e_down, rows, y, true, 1.0f, 0.0f, fixed_rows);
  }
}

// Their backward: dy [n,H] -> dx [n,H], dp [n] f32; expert weight gradients added to g.
void experts_backward(const LayerWeights& w, LayerWeights& g, std::span<const int64_t> rows,
                      const Tensor& x, const Tensor& p, const LayerActivations& a, const Tensor& dy,
                      Scratch& s, Tensor& dx, Tensor& dp) {
  const int64_t n = x.size(0);
  const Tensor eg = rows_of(a.eg, n), eu = rows_of(a.eu, n), ea = rows_of(a.ea, n);
  Tensor dea = rows_of(s.dea, n), deg = rows_of(s.deg, n), deu = rows_of(s.deu, n);
  // dea [n,Fe] = dy Wdown[e];  dWdown[e] += dy_e^T ea_e
  ops::grouped_gemm_backward(ea, w.e_down, dy, rows, dea, g.e_down, true);
  // deg, deu [n,Fe]; dp [n] = d loss / d prob of each row
  ops::swiglu_backward(eg, eu, dea, deg, deu, p, dp);
  // dx [n,H] = deg Wg[e] + deu Wu[e];  dWg[e], dWu[e] += d_e^T x_e
  ops::grouped_gemm_backward(x, w.e_gate, deg, rows, dx, g.e_gate, true);
  ops::grouped_gemm_backward(x, w.e_up, deu, rows, dx, g.e_up, true, true);
}
}  // namespace

void Decoder::moe_forward(int64_t l, LayerActivations& a) {
  Scratch& s = *s_;
  const LayerWeights& w = w_[size_t(l - Lb_)];
  const int64_t T = Tl_, E = spec_.moe.num_experts;  // the MoE block runs on this rank's rows
  const int64_t m = moe_index_[size_t(l)];
  Tensor& out = mb().xs[size_t(l - Lb_ + 1)];
  const bool invariant = opt_.inference && opt_.infer.batch_invariant;
  const LayerPacked& pk = pw_[size_t(l - Lb_)];
  const ops::PackedLinearOptions po = packed_options();
  // hn2 [Tl,H] = rmsnorm(x_mid)
  Tensor hn2 = rows_of(a.hn2, T);
  ops::rmsnorm_forward(a.x_mid, w.ln2, float(spec_.rms_eps), hn2, a.rstd2);

  // Route. router_logits [T,E] f32 = hn2 Wr^T; the routing itself runs on the host.
  if (pk.router)
    ops::packed_linear(hn2, *pk.router, a.router_logits, po);
  else
    linear(hn2, w.router, a.router_logits);
  RouterBuffers& r = a.router;
  r.logits.copy_from(a.router_logits);
  const float* bias = spec_.moe.expert_bias ? expert_bias_[size_t(m)].data() : nullptr;
  const double z = route_forward(spec_.moe, T, bias, r, z_tokens());
  if (!recomputing_) {
    z_total_ += z;
    const int64_t* counts = r.counts.data_as<int64_t>();
    for (int64_t e = 0; e < E; ++e) expert_counts_[size_t(m)][size_t(e)] = counts[e];
    const float* q = r.aux_probs.data_as<float>();
    for (int64_t t = 0; t < T; ++t)
      for (int64_t e = 0; e < E; ++e) aux_prob_sums_[size_t(e)] += q[t * E + e];
  }
  const int64_t N = r.rows;
  const std::span<const int64_t> rows(r.group_rows.data_as<int64_t>(), size_t(E));

  out.copy_from(a.x_mid);
  // Permute: token copies sorted by expert. tok, pw [N]; xg [N,H] = hn2[tok]
  Tensor tok = rows_of(a.perm_token, N), pw = rows_of(a.perm_weight, N);
  Tensor xg = rows_of(a.xg, N), y = rows_of(s.y, N);
  if (N > 0) {
    tok.copy_from(rows_of(r.perm_token, N));
    pw.copy_from(rows_of(r.perm_weight, N));
    ops::gather_rows(hn2, tok, xg);
  }
  if (dispatcher_) {
    // Experts on other ranks: every rank takes part in the exchange, with or without tokens.
    // xe [n,H], pe [n]: the rows of this rank's experts; ye [n,H] their outputs.
    DispatchState& st = a.dispatch;
    dispatcher_->dispatch(xg, pw, r.group_rows, st, a.xe, a.pe);
    const int64_t n = st.expert_rows;
    Tensor ye = rows_of(s.d_ye, n);
    if (observer_ && n > 0)
      observe_experts(l, LinearSite::expert_gate_up, st.rows_per_expert, a.xe);
    if (n > 0)
      experts_forward(w, pk, po, st.rows_per_expert, rows_of(a.xe, n), rows_of(a.pe, n), a, ye,
                      invariant);
    if (observer_ && n > 0) observe_experts(l, LinearSite::expert_down, st.rows_per_expert, a.ea);
    dispatcher_->combine(ye, st, y);
  } else if (N > 0) {
    if (observer_) observe_experts(l, LinearSite::expert_gate_up, rows, xg);
    experts_forward(w, pk, po, rows, xg, pw, a, y, invariant);
    if (observer_) observe_experts(l, LinearSite::expert_down, rows, a.ea);
  }
  // Unpermute: x_{l+1}[tok] += y (the k copies of a token add up)
  if (N > 0) ops::scatter_add_rows(y, tok, out);

  if (spec_.moe.shared_expert_ffn > 0) {  // (its weights dense, or packed in inference)
    // Shared expert: x_{l+1} += sigmoid(hn2 . wg) * (silu(hn2 Wg^T) * hn2 Wu^T) Wd^T
    if (observer_) observe(l, LinearSite::shared_gate_up, hn2);
    project_group(hn2, {{w.s_gate, pk.s_gate, a.s_gate}, {w.s_up, pk.s_up, a.s_up}});
    Tensor scale;
    if (w.s_expert_gate.defined()) {
      linear(hn2, w.s_expert_gate, a.sg_logit);  // [T,1] f32
      s.sg_host.copy_from(a.sg_logit.view({T}));
      float* sg = s.sg_host.data_as<float>();
      for (int64_t t = 0; t < T; ++t) sg[t] = float(1.0 / (1.0 + std::exp(-double(sg[t]))));
      a.s_scale.copy_from(s.sg_host);
      scale = a.s_scale;
    }
    ops::swiglu_forward(a.s_gate, a.s_up, a.s_act, scale);
    if (observer_) observe(l, LinearSite::shared_down, a.s_act);
    project(a.s_act, w.s_down, pk.s_down, out, 1.0f);
  }
}

// In: dres_c = d loss / d x_{l+1}. Out: dh = d loss / d hn2 (experts, router, shared expert).
void Decoder::moe_backward(int64_t l, LayerActivations& a) {
  Scratch& s = *s_;
  const LayerWeights& w = w_[size_t(l - Lb_)];
  LayerWeights& g = g_[size_t(l - Lb_)];
  const int64_t T = Tl_, E = spec_.moe.num_experts;  // this rank's rows
  const Tensor hn2 = rows_of(a.hn2, T);
  const RouterBuffers& r = a.router;
  const int64_t N = r.rows;
  const std::span<const int64_t> rows(r.group_rows.data_as<int64_t>(), size_t(E));

  s.dh.zero_();
  // dy [N,H] = dout[tok]; dxg [N,H], drow [N] = d loss / d xg, pw
  Tensor tok = rows_of(a.perm_token, N), pw = rows_of(a.perm_weight, N);
  Tensor dy = rows_of(s.dy, N), dxg = rows_of(s.dxg, N), drow = rows_of(s.drow, N);
  if (N > 0) ops::gather_rows(s.dres_c, tok, dy);
  if (dispatcher_) {
    const DispatchState& st = a.dispatch;
    const int64_t n = st.expert_rows;
    Tensor dye = rows_of(s.d_ye, n), dxe = rows_of(s.d_dxe, n), dpe = rows_of(s.d_drow_e, n);
    dispatcher_->combine_backward(dy, st, dye);
    if (n > 0)
      experts_backward(w, g, st.rows_per_expert, rows_of(a.xe, n), rows_of(a.pe, n), a, dye, s, dxe,
                       dpe);
    dispatcher_->dispatch_backward(dxe, dpe, st, dxg, drow);
  } else if (N > 0) {
    experts_backward(w, g, rows, rows_of(a.xg, N), pw, a, dy, s, dxg, drow);
  }
  if (N > 0) {
    // dh [T,H] = sum over each token's copies
    ops::scatter_add_rows(dxg, tok, s.dh);
    Tensor drow_host = rows_of(s.drow_host, N);
    drow_host.copy_from(drow);
  }

  // Router: dlogits [T,E] from the routing weights, the balancing loss and the z-loss.
  route_backward(spec_.moe, T, r, s.drow_host.data_as<float>(),
                 spec_.moe.aux_loss_coeff > 0 ? mb().aux_grad.data() : nullptr,
                 s.drouter_host.data_as<float>(), z_tokens());
  s.drouter.copy_from(s.drouter_host);
  Tensor dl = s.drouter;
  if (opt_.compute != DType::f32) {
    s.drouter_c.copy_from(s.drouter);
    dl = s.drouter_c;
  }
  // dWr [E,H] += dl^T hn2;  dh += dl Wr
  linear_dw(dl, hn2, g.router);
  linear_dx(dl, w.router, s.dh, 1.0f);

  if (spec_.moe.shared_expert_ffn > 0) {
    const int64_t Fs = spec_.moe.shared_expert_ffn;
    Tensor dact = front(s.dact, T, Fs), dgate = front(s.dgate, T, Fs), dup = front(s.dup, T, Fs);
    // dact [T,Fs] = dout Wd;  dWd [H,Fs] += dout^T act
    linear_dx(s.dres_c, w.s_down, dact);
    linear_dw(s.dres_c, a.s_act, g.s_down);
    if (w.s_expert_gate.defined())
      ops::swiglu_backward(a.s_gate, a.s_up, dact, dgate, dup, a.s_scale, s.ds);
    else
      ops::swiglu_backward(a.s_gate, a.s_up, dact, dgate, dup);
    linear_dw(dgate, hn2, g.s_gate);
    linear_dw(dup, hn2, g.s_up);
    linear_dx(dgate, w.s_gate, s.dh, 1.0f);
    linear_dx(dup, w.s_up, s.dh, 1.0f);
    if (w.s_expert_gate.defined()) {
      // d gate logit [T] = d scale * s (1 - s)
      s.ds_host.copy_from(s.ds);
      s.sg_host.copy_from(a.s_scale);
      float* ds = s.ds_host.data_as<float>();
      const float* sg = s.sg_host.data_as<float>();
      for (int64_t t = 0; t < T; ++t) ds[t] = ds[t] * sg[t] * (1.0f - sg[t]);
      s.ds.copy_from(s.ds_host);
      s.dsl_c.view({T}).copy_from(s.ds);
      // dwg [1,H] += dlogit^T hn2;  dh += dlogit wg
      linear_dw(s.dsl_c, hn2, g.s_expert_gate);
      linear_dx(s.dsl_c, w.s_expert_gate, s.dh, 1.0f);
    }
  }
}

}  // namespace origami::models
