#include "models/decoder.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <ostream>
#include <span>

#include "models/moe_router.h"
#include "ops/activation.h"
#include "ops/attention.h"
#include "ops/cross_entropy.h"
#include "ops/embedding.h"
#include "ops/gemm.h"
#include "ops/index.h"
#include "ops/norm.h"
#include "ops/rope.h"
#include "runtime/error.h"

namespace origami::models {

// ---- buffers ------------------------------------------------------------------------------------

// One layer's weights (compute dtype) or gradients (f32), as views into a ParameterBuffer.
struct LayerWeights {
  Tensor ln1, wq, bq, wk, bk, wv, bv, wo, ln2;  // attention
  Tensor gate, up, down;                        // dense MLP
  Tensor router, e_gate, e_up, e_down;          // MoE: [E,H], [E,Fe,H], [E,Fe,H], [E,H,Fe]
  Tensor s_gate, s_up, s_down, s_expert_gate;   // shared expert
};

// Activations of one layer kept for backward (one set per layer, or one shared set with
// recompute). T = B*S tokens, N = rows of the permuted (token, expert) copies.
struct LayerActivations {
  Tensor hn1;                  // [T,H]      rmsnorm(x_l)
  Tensor rstd1;                // [T] f32
  Tensor q;                    // [T,Hq*D]   after rope
  Tensor k, v;                 // [T,Hkv*D]  k after rope
  Tensor attn;                 // [T,Hq*D]   attention output
  Tensor lse;                  // [B,Hq,S] f32
  Tensor x_mid;                // [T,H]      x_l + attn Wo^T
  Tensor hn2;                  // [T,H]      rmsnorm(x_mid)
  Tensor rstd2;                // [T] f32
  Tensor gate, up, act;        // dense MLP [T,F]
  Tensor router_logits;        // [T,E] f32
  Tensor perm_token;           // [Nmax] i64
  Tensor perm_weight;          // [Nmax] f32
  Tensor xg;                   // [Nmax,H]  gathered token copies
  Tensor eg, eu, ea;           // [Nmax,Fe] expert gate, up, swiglu * prob
  Tensor sg_logit;             // [T,1] f32 shared-expert gate logit
  Tensor s_scale;              // [T] f32   sigmoid(sg_logit)
  Tensor s_gate, s_up, s_act;  // [T,Fs]    shared expert
  RouterBuffers router;        // host
};

// Buffers shared by all layers.
struct Scratch {
  Tensor ids, targets, positions;        // [T] i64 (device)
  Tensor ids_host, targets_host;         // [T] i64 (host staging)
  Tensor inv_freq;                       // [D/2] f32
  Tensor ones;                           // [T] compute: bias add and bias gradient as rank-1 GEMMs
  std::vector<Tensor> xs;                // [L+1] x [T,H] residual stream: layer inputs, final
  Tensor hf, rstd_f;                     // [T,H], [T] final norm
  Tensor logits, dlogits;                // [T,V]
  Tensor ce_loss, ce_lse, ce_loss_host;  // [T] f32
  Tensor dres;                           // [T,H] f32 gradient of the residual stream
  Tensor dres_c;                         // [T,H] compute copy of dres (bf16 only; else dres)
  Tensor dx, dh;                         // [T,H] compute
  Tensor dq, dattn;                      // [T,Hq*D]
  Tensor dk, dv;                         // [T,Hkv*D]
  Tensor dact, dgate, dup;               // [T*max(F,Fs)] flat
  Tensor y, dy, dxg;                     // [Nmax,H]
  Tensor dea, deg, deu;                  // [Nmax,Fe]
  Tensor drow, drow_host;                // [Nmax] f32
  Tensor drouter_host, drouter, drouter_c;  // [T,E] f32 host, f32 device, compute
  Tensor sg_host, ds, ds_host, dsl_c;       // [T] f32 host, [T] f32, [T] host, [T,1] compute
};

namespace {

// Hands out every buffer: in planning mode it records the request in a MemoryPlan and returns an
// undefined tensor; otherwise it carves the tensor from the named arena. The same enumeration
// runs in both modes, so the plan is exactly what is allocated.
struct BufferMaker {
  bool planning = true;
  MemoryPlan* plan = nullptr;
  std::map<std::string, Arena*> arenas;
  Tensor operator()(const std::string& arena, const std::string& name, const Shape& shape,
                    DType dtype) {
    if (planning) {
      plan->add(arena, name, shape, dtype);
      return Tensor();
    }
    return arenas.at(arena)->allocate(shape, dtype);
  }
};

const char* kParams = "parameters";
const char* kGrads = "gradients";
const char* kCompute = "compute weights";
const char* kOptim = "optimizer state";
const char* kActs = "activations";
const char* kHost = "router (host)";

LayerWeights layer_weights(const ParameterBuffer& p, const LayerParamNames& n) {
  LayerWeights w;
  w.ln1 = p.get(n.input_norm);
  w.wq = p.get(n.q);
  w.bq = p.get(n.q_bias);
  w.wk = p.get(n.k);
  w.bk = p.get(n.k_bias);
  w.wv = p.get(n.v);
  w.bv = p.get(n.v_bias);
  w.wo = p.get(n.o);
  w.ln2 = p.get(n.post_norm);
  w.gate = p.get(n.mlp_gate);
  w.up = p.get(n.mlp_up);
  w.down = p.get(n.mlp_down);
  w.router = p.get(n.router);
  w.e_gate = p.get(n.expert_gate);
  w.e_up = p.get(n.expert_up);
  w.e_down = p.get(n.expert_down);
  w.s_gate = p.get(n.shared_gate);
  w.s_up = p.get(n.shared_up);
  w.s_down = p.get(n.shared_down);
  w.s_expert_gate = p.get(n.shared_expert_gate);
  return w;
}

// ---- small GEMM wrappers: every linear layer is y = x W^T
// ----------------------------------------

// y [T,N] = x [T,K] @ w[N,K]^T + beta * y
void linear(const Tensor& x, const Tensor& w, Tensor y, float beta = 0.0f) {
  ops::gemm(x, w, y, {false, true, 1.0f, beta});
}
// dx [T,K] = dy [T,N] @ w [N,K] + beta * dx
void linear_dx(const Tensor& dy, const Tensor& w, Tensor dx, float beta = 0.0f) {
  ops::gemm(dy, w, dx, {false, false, 1.0f, beta});
}
// dw [N,K] (f32) += dy [T,N]^T @ x [T,K]
void linear_dw(const Tensor& dy, const Tensor& x, Tensor dw) {
  ops::gemm(dy, x, dw, {true, false, 1.0f, 1.0f});
}
// y [T,N] += ones [T,1] @ b [1,N]
void add_bias(const Tensor& ones, const Tensor& b, Tensor y) {
  const int64_t T = y.size(0), N = y.size(1);
  ops::gemm(ones.view({T, 1}), b.view({1, N}), y, {false, false, 1.0f, 1.0f});
}
// db [N] (f32) += ones [1,T] @ dy [T,N]
void bias_grad(const Tensor& ones, const Tensor& dy, Tensor db) {
  const int64_t T = dy.size(0), N = dy.size(1);
  Tensor out = db.view({1, N});
  ops::gemm(ones.view({1, T}), dy, out, {false, false, 1.0f, 1.0f});
}

Tensor rows_of(const Tensor& t, int64_t n) {
  return t.narrow(0, 0, n);
}
// A [rows, cols] view of the front of a flat buffer.
Tensor front(const Tensor& flat, int64_t rows, int64_t cols) {
  return flat.narrow(0, 0, rows * cols).view({rows, cols});
}

}  // namespace

// ---- the memory plan: one enumeration of every buffer ------------------------------------------

namespace {

struct Allocation {
  Tensor master, grads, compute, adam_m, adam_v;  // flat [P]
  std::vector<LayerActivations> acts;
  Scratch s;
};

void enumerate_buffers(const ModelSpec& sp, const DecoderOptions& o, const ParameterLayout& layout,
                       BufferMaker& mk, Allocation& a) {
  const int64_t P = layout.total_numel();
  const int64_t T = o.batch * o.seq, H = sp.hidden, V = sp.vocab, L = sp.layers;
  const int64_t Dq = sp.heads * sp.head_dim, Dkv = sp.kv_heads * sp.head_dim;
  const DType c = o.compute, f32 = DType::f32, i64 = DType::i64;
  const bool moe = sp.is_moe();
  const int64_t E = sp.moe.num_experts, k = sp.moe.top_k, Fe = sp.moe.expert_ffn;
  const int64_t Fs = sp.moe.shared_expert_ffn;
  const int64_t Nmax = moe ? router_max_rows(sp.moe, T) : 0;
  bool any_dense = false, any_moe = false;
  for (int64_t l = 0; l < L; ++l) (sp.is_moe_layer(l) ? any_moe : any_dense) = true;

  a.master = mk(kParams, "master weights f32", {P}, f32);
  a.grads = mk(kGrads, "gradients f32", {P}, f32);
  if (c != f32) a.compute = mk(kCompute, std::string("weights ") + dtype_name(c), {P}, c);
  if (o.optimizer_state) {
    a.adam_m = mk(kOptim, "adamw m", {P}, f32);
    a.adam_v = mk(kOptim, "adamw v", {P}, f32);
  }

  // Per-layer activations: all layers, or one set reused by every layer with recompute.
  const int64_t sets = o.recompute ? 1 : L;
  a.acts.resize(size_t(sets));
  for (int64_t i = 0; i < sets; ++i) {
    LayerActivations& x = a.acts[size_t(i)];
    const std::string p = o.recompute ? "layer (recomputed)." : "layer " + std::to_string(i) + ".";
    const bool has_dense = o.recompute ? any_dense : !sp.is_moe_layer(i);
    const bool has_moe = o.recompute ? any_moe : sp.is_moe_layer(i);
    x.hn1 = mk(kActs, p + "hn1", {T, H}, c);
    x.rstd1 = mk(kActs, p + "rstd1", {T}, f32);
    x.q = mk(kActs, p + "q", {T, Dq}, c);
    x.k = mk(kActs, p + "k", {T, Dkv}, c);
    x.v = mk(kActs, p + "v", {T, Dkv}, c);
    x.attn = mk(kActs, p + "attn", {T, Dq}, c);
    x.lse = mk(kActs, p + "lse", {o.batch, sp.heads, o.seq}, f32);
    x.x_mid = mk(kActs, p + "x_mid", {T, H}, c);
    x.hn2 = mk(kActs, p + "hn2", {T, H}, c);
    x.rstd2 = mk(kActs, p + "rstd2", {T}, f32);
    if (has_dense) {
      x.gate = mk(kActs, p + "mlp.gate", {T, sp.ffn}, c);
      x.up = mk(kActs, p + "mlp.up", {T, sp.ffn}, c);
      x.act = mk(kActs, p + "mlp.act", {T, sp.ffn}, c);
    }
    if (has_moe) {
      x.router_logits = mk(kActs, p + "router_logits", {T, E}, f32);
      x.perm_token = mk(kActs, p + "perm_token", {Nmax}, i64);
      x.perm_weight = mk(kActs, p + "perm_weight", {Nmax}, f32);
      x.xg = mk(kActs, p + "experts.x", {Nmax, H}, c);
      x.eg = mk(kActs, p + "experts.gate", {Nmax, Fe}, c);
      x.eu = mk(kActs, p + "experts.up", {Nmax, Fe}, c);
      x.ea = mk(kActs, p + "experts.act", {Nmax, Fe}, c);
      if (Fs > 0) {
        x.s_gate = mk(kActs, p + "shared.gate", {T, Fs}, c);
        x.s_up = mk(kActs, p + "shared.up", {T, Fs}, c);
        x.s_act = mk(kActs, p + "shared.act", {T, Fs}, c);
        if (sp.moe.shared_expert_gate) {
          x.sg_logit = mk(kActs, p + "shared.gate_logit", {T, 1}, f32);
          x.s_scale = mk(kActs, p + "shared.scale", {T}, f32);
        }
      }
      RouterBuffers& r = x.router;
      r.logits = mk(kHost, p + "router.logits", {T, E}, f32);
      r.probs = mk(kHost, p + "router.probs", {T, E}, f32);
      r.aux_probs = mk(kHost, p + "router.aux_probs", {T, E}, f32);
      r.lse = mk(kHost, p + "router.lse", {T}, f32);
      r.selected = mk(kHost, p + "router.selected", {T, k}, i64);
      r.top_value = mk(kHost, p + "router.top_value", {T, k}, f32);
      r.weight = mk(kHost, p + "router.weight", {T, k}, f32);
      r.slot = mk(kHost, p + "router.slot", {T, k}, i64);
      r.counts = mk(kHost, p + "router.counts", {E}, i64);
      r.group_rows = mk(kHost, p + "router.group_rows", {E}, i64);
      r.perm_token = mk(kHost, p + "router.perm_token", {Nmax}, i64);
      r.perm_weight = mk(kHost, p + "router.perm_weight", {Nmax}, f32);
      r.scratch = mk(kHost, p + "router.scratch", {std::max(T * k, E)}, i64);
    }
  }

  Scratch& s = a.s;
  s.ids = mk(kActs, "ids", {T}, i64);
  s.targets = mk(kActs, "targets", {T}, i64);
  s.positions = mk(kActs, "positions", {T}, i64);
  s.ids_host = mk(kHost, "ids (host)", {T}, i64);
  s.targets_host = mk(kHost, "targets (host)", {T}, i64);
  s.inv_freq = mk(kActs, "rope inv_freq", {sp.head_dim / 2}, f32);
  s.ones = mk(kActs, "ones", {T}, c);
  s.xs.resize(size_t(L + 1));
  for (int64_t l = 0; l <= L; ++l)
    s.xs[size_t(l)] = mk(kActs, l < L ? "x " + std::to_string(l) : "x final", {T, H}, c);
  s.hf = mk(kActs, "final norm out", {T, H}, c);
  s.rstd_f = mk(kActs, "final norm rstd", {T}, f32);
  s.logits = mk(kActs, "logits", {T, V}, c);
  s.dlogits = mk(kActs, "dlogits", {T, V}, c);
  s.ce_loss = mk(kActs, "ce loss", {T}, f32);
  s.ce_lse = mk(kActs, "ce lse", {T}, f32);
  s.ce_loss_host = mk(kHost, "ce loss (host)", {T}, f32);
  s.dres = mk(kActs, "dresidual f32", {T, H}, f32);
  if (c != f32) s.dres_c = mk(kActs, "dresidual compute", {T, H}, c);
  s.dx = mk(kActs, "dx", {T, H}, c);
  s.dh = mk(kActs, "dh", {T, H}, c);
  s.dq = mk(kActs, "dq", {T, Dq}, c);
  s.dattn = mk(kActs, "dattn", {T, Dq}, c);
  s.dk = mk(kActs, "dk", {T, Dkv}, c);
  s.dv = mk(kActs, "dv", {T, Dkv}, c);
  const int64_t Fmax = std::max(any_dense ? sp.ffn : 0, Fs);
  if (Fmax > 0) {
    s.dact = mk(kActs, "dact", {T * Fmax}, c);
    s.dgate = mk(kActs, "dgate", {T * Fmax}, c);
    s.dup = mk(kActs, "dup", {T * Fmax}, c);
  }
  if (any_moe) {
    s.y = mk(kActs, "experts.y", {Nmax, H}, c);
    s.dy = mk(kActs, "experts.dy", {Nmax, H}, c);
    s.dxg = mk(kActs, "experts.dx", {Nmax, H}, c);
    s.dea = mk(kActs, "experts.dact", {Nmax, Fe}, c);
    s.deg = mk(kActs, "experts.dgate", {Nmax, Fe}, c);
    s.deu = mk(kActs, "experts.dup", {Nmax, Fe}, c);
    s.drow = mk(kActs, "experts.dprob", {Nmax}, f32);
    s.drow_host = mk(kHost, "experts.dprob (host)", {Nmax}, f32);
    s.drouter_host = mk(kHost, "drouter (host)", {T, E}, f32);
    s.drouter = mk(kActs, "drouter f32", {T, E}, f32);
    s.drouter_c = mk(kActs, "drouter compute", {T, E}, c);
    if (sp.moe.shared_expert_gate) {
      s.sg_host = mk(kHost, "shared gate (host)", {T}, f32);
      s.ds = mk(kActs, "dshared scale", {T}, f32);
      s.ds_host = mk(kHost, "dshared scale (host)", {T}, f32);
      s.dsl_c = mk(kActs, "dshared gate logit", {T, 1}, c);
    }
  }
}

}  // namespace

MemoryPlan Decoder::memory_plan(const ModelSpec& spec, const DecoderOptions& opt) {
  MemoryPlan plan;
  BufferMaker mk;
  mk.planning = true;
  mk.plan = &plan;
  Allocation unused;
  enumerate_buffers(spec, opt, ParameterLayout(spec), mk, unused);
  return plan;
}

Decoder::Decoder(const ModelSpec& spec, const DecoderOptions& opt)
    : spec_(spec), opt_(opt), layout_(spec) {
  ORIGAMI_CHECK(opt.compute == DType::f32 || opt.compute == DType::bf16,
                "decoder: compute dtype must be f32 or bf16, got ", dtype_name(opt.compute));
  ORIGAMI_CHECK(opt.batch >= 1 && opt.seq >= 1,
                "decoder: batch and seq must be >= 1, got B=", opt.batch, " S=", opt.seq);
  plan_ = memory_plan(spec, opt);
  BufferMaker mk;
  mk.planning = false;
  for (const std::string& name : plan_.arenas()) {
    const Device dev = name == kHost ? Device::cpu() : opt.device;
    arenas_.push_back(std::make_unique<Arena>(name, plan_.arena_bytes(name), dev));
    mk.arenas[name] = arenas_.back().get();
  }
  Allocation a;
  enumerate_buffers(spec_, opt_, layout_, mk, a);
  master_ = ParameterBuffer(layout_, a.master);
  grads_ = ParameterBuffer(layout_, a.grads);
  master_.zero();
  grads_.zero();
  compute_ = opt.compute == DType::f32 ? master_ : ParameterBuffer(layout_, a.compute);
  if (opt.optimizer_state) {
    adam_m_ = ParameterBuffer(layout_, a.adam_m);
    adam_v_ = ParameterBuffer(layout_, a.adam_v);
    adam_m_.zero();
    adam_v_.zero();
  }
  acts_ = std::move(a.acts);
  s_ = std::make_unique<Scratch>(std::move(a.s));

  const ModelParamNames& names = layout_.names();
  for (int64_t l = 0; l < spec_.layers; ++l) {
    w_.push_back(layer_weights(compute_, names.layers[size_t(l)]));
    g_.push_back(layer_weights(grads_, names.layers[size_t(l)]));
  }
  int64_t m = 0;
  for (int64_t l = 0; l < spec_.layers; ++l) moe_index_.push_back(spec_.is_moe_layer(l) ? m++ : -1);
  expert_counts_.assign(size_t(m), std::vector<int64_t>(size_t(spec_.moe.num_experts), 0));
  expert_bias_.assign(size_t(m), std::vector<float>(size_t(spec_.moe.num_experts), 0.0f));
  aux_grad_.assign(size_t(spec_.moe.num_experts), 0.0);
  aux_prob_sums_.assign(size_t(spec_.moe.num_experts), 0.0);

  // Constant inputs: positions (t mod S), rope frequencies, ones.
  const int64_t T = opt.batch * opt.seq;
  Tensor pos = Tensor::empty({T}, DType::i64);
  for (int64_t t = 0; t < T; ++t) pos.data_as<int64_t>()[t] = t % opt.seq;
  s_->positions.copy_from(pos);
  s_->inv_freq.copy_from(ops::rope_inv_freq(spec_.rope));
  s_->ones.copy_from(Tensor::from_vector(std::vector<float>(size_t(T), 1.0f), {T}, opt.compute));
  if (!s_->dres_c.defined()) s_->dres_c = s_->dres;
  sync_compute_weights();
}

Decoder::~Decoder() = default;

void Decoder::print_plan(std::ostream& os, bool detail) const {
  os << "model: " << spec_.str() << ", " << layout_.parameter_count()
     << " parameters, B=" << opt_.batch << " S=" << opt_.seq << " " << dtype_name(opt_.compute)
     << (opt_.recompute ? " recompute" : "") << "\n";
  plan_.print(os, "memory plan", detail);
}

void Decoder::sync_compute_weights() {
  if (opt_.compute != DType::f32) compute_.copy_from(master_);
}

void Decoder::adamw_step(const ops::AdamWParams& p) {
  ORIGAMI_CHECK(opt_.optimizer_state, "decoder: built without optimizer state");
  Tensor param = opt_.compute == DType::f32 ? Tensor() : compute_.flat();
  ops::adamw_step(master_.flat(), grads_.flat(), adam_m_.flat(), adam_v_.flat(), p, param);
}

const Tensor& Decoder::logits() const {
  return s_->logits;
}

LayerActivations& Decoder::acts_for(int64_t l) {
  return acts_[opt_.recompute ? 0 : size_t(l)];
}

void Decoder::update_expert_bias() {
  if (!spec_.moe.expert_bias) return;
  const double rate = spec_.moe.expert_bias_update_rate;
  for (size_t m = 0; m < expert_counts_.size(); ++m) {
    double mean = 0;
    for (int64_t c : expert_counts_[m]) mean += double(c);
    mean /= double(expert_counts_[m].size());
    for (size_t e = 0; e < expert_counts_[m].size(); ++e) {
      const double d = mean - double(expert_counts_[m][e]);
      expert_bias_[m][e] += float(rate * (d > 0 ? 1.0 : d < 0 ? -1.0 : 0.0));
    }
  }
}

// ---- step --------------------------------------------------------------------------------------

namespace {
// Copies ids / targets (any integer dtype, any device) into the i64 device buffer via the host.
void load_tokens(const Tensor& src, Tensor& host, Tensor& dev, const char* what) {
  ORIGAMI_CHECK(src.defined() && (src.dtype() == DType::i64 || src.dtype() == DType::i32) &&
                    src.numel() == dev.numel(),
                "decoder: ", what, " must be [B,S] i32/i64 with ", dev.numel(), " tokens, got ",
                src.defined() ? src.str() : std::string("undefined"));
  if (src.device().is_cpu()) {
    host.copy_from(src.contiguous().view({dev.numel()}));  // converts i32 -> i64 on the CPU
  } else {
    ORIGAMI_CHECK(src.dtype() == DType::i64, "decoder: ", what, " on a device must be i64");
    host.copy_from(src.view({dev.numel()}));  // same dtype: a plain device-to-host copy
  }
  dev.copy_from(host);
}
}  // namespace

LossInfo Decoder::forward(const Tensor& ids, const Tensor& targets) {
  return run_forward(ids, targets);
}

LossInfo Decoder::run_forward(const Tensor& ids, const Tensor& targets) {
  Scratch& s = *s_;
  const int64_t L = spec_.layers;
  load_tokens(ids, s.ids_host, s.ids, "ids");
  load_tokens(targets, s.targets_host, s.targets, "targets");
  const int64_t* tg = s.targets_host.data_as<int64_t>();
  int64_t n_valid = 0;
  for (int64_t t = 0; t < s.targets_host.numel(); ++t) n_valid += tg[t] != kIgnoreIndex ? 1 : 0;
  step_tokens_ = n_valid;

  // x0 [T,H] = embed[ids]
  ops::embedding_forward(compute_.get(layout_.names().embed), s.ids, s.xs[0]);
  z_total_ = 0;
  for (double& p : aux_prob_sums_) p = 0;
  for (int64_t l = 0; l < L; ++l) layer_forward(l, acts_for(l));

  // Head: hf [T,H] = rmsnorm(x_L); logits [T,V] = hf Wlm^T; per-row CE [T].
  ops::rmsnorm_forward(s.xs[size_t(L)], compute_.get(layout_.names().final_norm),
                       float(spec_.rms_eps), s.hf, s.rstd_f);
  const std::string& lm = spec_.tie_embeddings ? layout_.names().embed : layout_.names().lm_head;
  linear(s.hf, compute_.get(lm), s.logits);
  ops::cross_entropy_forward(s.logits, s.targets, kIgnoreIndex, s.ce_loss, s.ce_lse);
  s.ce_loss_host.copy_from(s.ce_loss);
  double ce = 0;
  const float* cl = s.ce_loss_host.data_as<float>();
  for (int64_t t = 0; t < s.ce_loss_host.numel(); ++t) ce += cl[t];
  LossInfo info;
  info.tokens = n_valid;
  info.ce = n_valid > 0 ? ce / double(n_valid) : 0.0;

  // Load balancing over all MoE layers' router outputs concatenated (transformers'
  // load_balancing_loss_func with attention_mask None): with N = T * L_moe rows,
  //   aux = E * sum_e (C_e / N) * (P_e / N),  C_e = copies routed to e, P_e = sum of probs.
  // Its gradient with respect to every aux_probs[t,e] is coeff * E * C_e / N^2.
  const int64_t E = spec_.moe.num_experts, T = opt_.batch * opt_.seq;
  if (spec_.is_moe()) {
    const double n_rows = double(T) * double(spec_.num_moe_layers());
    double aux = 0;
    for (int64_t e = 0; e < E; ++e) {
      double c = 0;
      for (const std::vector<int64_t>& layer : expert_counts_) c += double(layer[size_t(e)]);
      aux += c * aux_prob_sums_[size_t(e)];
      aux_grad_[size_t(e)] = spec_.moe.aux_loss_coeff * double(E) * c / (n_rows * n_rows);
    }
    info.aux = aux * double(E) / (n_rows * n_rows);
  }
  info.z = z_total_;
  info.loss = info.ce + spec_.moe.aux_loss_coeff * info.aux + info.z;
  return info;
}

LossInfo Decoder::forward_backward(const Tensor& ids, const Tensor& targets) {
  LossInfo info = run_forward(ids, targets);
  Scratch& s = *s_;
  const int64_t L = spec_.layers;
  const ModelParamNames& names = layout_.names();
  const std::string& lm = spec_.tie_embeddings ? names.embed : names.lm_head;

  // Head backward. dlogits [T,V] = (softmax - onehot) / n_valid
  const float scale = step_tokens_ > 0 ? 1.0f / float(step_tokens_) : 0.0f;
  ops::cross_entropy_backward(s.logits, s.targets, s.ce_lse, kIgnoreIndex, scale, s.dlogits);
  // dhf [T,H] = dlogits @ Wlm;  dWlm [V,H] += dlogits^T @ hf
  linear_dx(s.dlogits, compute_.get(lm), s.dh);
  linear_dw(s.dlogits, s.hf, grads_.get(lm));
  // dx_L [T,H] through the final norm; dres (f32) carries the residual gradient downwards.
  Tensor dw_final = grads_.get(names.final_norm);
  ops::rmsnorm_backward(s.xs[size_t(L)], compute_.get(names.final_norm), s.rstd_f, s.dh, s.dx,
                        dw_final);
  s.dres.copy_from(s.dx);

  for (int64_t l = L - 1; l >= 0; --l) {
    LayerActivations& a = acts_for(l);
    if (opt_.recompute) {  // re-run the layer forward from its saved input
      recomputing_ = true;
      layer_forward(l, a);
      recomputing_ = false;
    }
    layer_backward(l, a);
  }
  // dembed [V,H] += rows of dres by id
  Tensor dembed = grads_.get(names.embed);
  ops::embedding_backward(s.ids, s.dres, dembed);
  return info;
}

// ---- one layer -------------------------------------------------------------------------------

void Decoder::layer_forward(int64_t l, LayerActivations& a) {
  attention_forward(l, a);
  if (spec_.is_moe_layer(l))
    moe_forward(l, a);
  else
    mlp_forward(l, a);
}

// dres holds d loss / d x_{l+1} on entry and d loss / d x_l on exit (f32 [T,H]).
void Decoder::layer_backward(int64_t l, LayerActivations& a) {
  Scratch& s = *s_;
  const LayerWeights& w = w_[size_t(l)];
  LayerWeights& g = g_[size_t(l)];
  // x_{l+1} = x_mid + mlp(rmsnorm(x_mid)):  dh = d mlp input, then through the norm.
  if (s.dres_c.data() != s.dres.data()) s.dres_c.copy_from(s.dres);
  if (spec_.is_moe_layer(l))
    moe_backward(l, a);
  else
    mlp_backward(l, a);
  ops::rmsnorm_backward(a.x_mid, w.ln2, a.rstd2, s.dh, s.dx, g.ln2);
  ops::axpy_(s.dres, s.dx);  // dres = d loss / d x_mid
  if (s.dres_c.data() != s.dres.data()) s.dres_c.copy_from(s.dres);
  attention_backward(l, a);
  ops::rmsnorm_backward(s.xs[size_t(l)], w.ln1, a.rstd1, s.dh, s.dx, g.ln1);
  ops::axpy_(s.dres, s.dx);  // dres = d loss / d x_l
}

// ---- attention block ----------------------------------------------------------------------

void Decoder::attention_forward(int64_t l, LayerActivations& a) {
  Scratch& s = *s_;
  const LayerWeights& w = w_[size_t(l)];
  const int64_t B = opt_.batch, S = opt_.seq, T = B * S, D = spec_.head_dim;
  const int64_t Hq = spec_.heads, Hkv = spec_.kv_heads;
  const Tensor& x = s.xs[size_t(l)];
  // hn1 [T,H] = rmsnorm(x)
  ops::rmsnorm_forward(x, w.ln1, float(spec_.rms_eps), a.hn1, a.rstd1);
  // q [T,Hq*D], k, v [T,Hkv*D] = hn1 W^T (+ b)
  linear(a.hn1, w.wq, a.q);
  linear(a.hn1, w.wk, a.k);
  linear(a.hn1, w.wv, a.v);
  if (w.bq.defined()) {
    add_bias(s.ones, w.bq, a.q);
    add_bias(s.ones, w.bk, a.k);
    add_bias(s.ones, w.bv, a.v);
  }
  // rope on q, k in place, viewed [T,heads,D]
  Tensor q3 = a.q.view({T, Hq, D}), k3 = a.k.view({T, Hkv, D});
  ops::rope_forward(q3, s.positions, s.inv_freq, q3);
  ops::rope_forward(k3, s.positions, s.inv_freq, k3);
  // attn [B,S,Hq,D] = softmax(q k^T * scale, causal / window) v;  lse [B,Hq,S]
  ops::AttentionParams p;
  p.window = spec_.sliding_window > 0 ? spec_.sliding_window + 1 : -1;  // ops: i - j < window
  Tensor attn4 = a.attn.view({B, S, Hq, D});
  ops::attention_forward(a.q.view({B, S, Hq, D}), a.k.view({B, S, Hkv, D}),
                         a.v.view({B, S, Hkv, D}), p, attn4, a.lse);
  // x_mid [T,H] = x + attn Wo^T
  a.x_mid.copy_from(x);
  linear(a.attn, w.wo, a.x_mid, 1.0f);
}

// In: dres_c = d loss / d x_mid (compute dtype). Out: dh = d loss / d hn1.
void Decoder::attention_backward(int64_t l, LayerActivations& a) {
  Scratch& s = *s_;
  const LayerWeights& w = w_[size_t(l)];
  LayerWeights& g = g_[size_t(l)];
  const int64_t B = opt_.batch, S = opt_.seq, T = B * S, D = spec_.head_dim;
  const int64_t Hq = spec_.heads, Hkv = spec_.kv_heads;
  // dattn [T,Hq*D] = dx_mid @ Wo;  dWo [H,Hq*D] += dx_mid^T @ attn
  linear_dx(s.dres_c, w.wo, s.dattn);
  linear_dw(s.dres_c, a.attn, g.wo);
  // dq [B,S,Hq,D], dk, dv [B,S,Hkv,D]
  ops::AttentionParams p;
  p.window = spec_.sliding_window > 0 ? spec_.sliding_window + 1 : -1;  // ops: i - j < window
  Tensor dq4 = s.dq.view({B, S, Hq, D}), dk4 = s.dk.view({B, S, Hkv, D}),
         dv4 = s.dv.view({B, S, Hkv, D});
  ops::attention_backward(a.q.view({B, S, Hq, D}), a.k.view({B, S, Hkv, D}),
                          a.v.view({B, S, Hkv, D}), a.attn.view({B, S, Hq, D}), a.lse,
                          s.dattn.view({B, S, Hq, D}), p, dq4, dk4, dv4);
  // back through rope (inverse rotation), in place
  Tensor dq3 = s.dq.view({T, Hq, D}), dk3 = s.dk.view({T, Hkv, D});
  ops::rope_backward(dq3, s.positions, s.inv_freq, dq3);
  ops::rope_backward(dk3, s.positions, s.inv_freq, dk3);
  // dW{q,k,v} += d{q,k,v}^T @ hn1;  db += column sums;  dh [T,H] = dq Wq + dk Wk + dv Wv
  linear_dw(s.dq, a.hn1, g.wq);
  linear_dw(s.dk, a.hn1, g.wk);
  linear_dw(s.dv, a.hn1, g.wv);
  if (g.bq.defined()) {
    bias_grad(s.ones, s.dq, g.bq);
    bias_grad(s.ones, s.dk, g.bk);
    bias_grad(s.ones, s.dv, g.bv);
  }
  linear_dx(s.dq, w.wq, s.dh);
  linear_dx(s.dk, w.wk, s.dh, 1.0f);
  linear_dx(s.dv, w.wv, s.dh, 1.0f);
}

// ---- dense SwiGLU MLP ------------------------------------------------------------------------

void Decoder::mlp_forward(int64_t l, LayerActivations& a) {
  Scratch& s = *s_;
  const LayerWeights& w = w_[size_t(l)];
  Tensor& out = s.xs[size_t(l + 1)];
  // hn2 [T,H] = rmsnorm(x_mid)
  ops::rmsnorm_forward(a.x_mid, w.ln2, float(spec_.rms_eps), a.hn2, a.rstd2);
  // gate, up [T,F] = hn2 W^T;  act [T,F] = silu(gate) * up
  linear(a.hn2, w.gate, a.gate);
  linear(a.hn2, w.up, a.up);
  ops::swiglu_forward(a.gate, a.up, a.act);
  // x_{l+1} [T,H] = x_mid + act Wdown^T
  out.copy_from(a.x_mid);
  linear(a.act, w.down, out, 1.0f);
}

// In: dres_c = d loss / d x_{l+1}. Out: dh = d loss / d hn2.
void Decoder::mlp_backward(int64_t l, LayerActivations& a) {
  Scratch& s = *s_;
  const LayerWeights& w = w_[size_t(l)];
  LayerWeights& g = g_[size_t(l)];
  const int64_t T = opt_.batch * opt_.seq, F = spec_.ffn;
  Tensor dact = front(s.dact, T, F), dgate = front(s.dgate, T, F), dup = front(s.dup, T, F);
  // dact [T,F] = dout @ Wdown;  dWdown [H,F] += dout^T @ act
  linear_dx(s.dres_c, w.down, dact);
  linear_dw(s.dres_c, a.act, g.down);
  // dgate, dup [T,F]
  ops::swiglu_backward(a.gate, a.up, dact, dgate, dup);
  // dWgate, dWup [F,H] += d^T @ hn2;  dh [T,H] = dgate Wgate + dup Wup
  linear_dw(dgate, a.hn2, g.gate);
  linear_dw(dup, a.hn2, g.up);
  linear_dx(dgate, w.gate, s.dh);
  linear_dx(dup, w.up, s.dh, 1.0f);
}

// ---- MoE block
// -----------------------------------------------------------------------------------

void Decoder::moe_forward(int64_t l, LayerActivations& a) {
  Scratch& s = *s_;
  const LayerWeights& w = w_[size_t(l)];
  const int64_t T = opt_.batch * opt_.seq, E = spec_.moe.num_experts;
  const int64_t m = moe_index_[size_t(l)];
  Tensor& out = s.xs[size_t(l + 1)];
  // hn2 [T,H] = rmsnorm(x_mid)
  ops::rmsnorm_forward(a.x_mid, w.ln2, float(spec_.rms_eps), a.hn2, a.rstd2);

  // Route. router_logits [T,E] f32 = hn2 Wr^T; the routing itself runs on the host.
  linear(a.hn2, w.router, a.router_logits);
  RouterBuffers& r = a.router;
  r.logits.copy_from(a.router_logits);
  const float* bias = spec_.moe.expert_bias ? expert_bias_[size_t(m)].data() : nullptr;
  const double z = route_forward(spec_.moe, T, bias, r);
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
  if (N > 0) {
    // Permute: token copies sorted by expert. tok, pw [N]; xg [N,H] = hn2[tok]
    Tensor tok = rows_of(a.perm_token, N), pw = rows_of(a.perm_weight, N);
    tok.copy_from(rows_of(r.perm_token, N));
    pw.copy_from(rows_of(r.perm_weight, N));
    Tensor xg = rows_of(a.xg, N), eg = rows_of(a.eg, N), eu = rows_of(a.eu, N),
           ea = rows_of(a.ea, N), y = rows_of(s.y, N);
    ops::gather_rows(a.hn2, tok, xg);
    // Experts: eg, eu [N,Fe] = xg W[e]^T;  ea = silu(eg) * eu * prob;  y [N,H] = ea Wdown[e]^T
    ops::grouped_gemm(xg, w.e_gate, rows, eg, true);
    ops::grouped_gemm(xg, w.e_up, rows, eu, true);
    ops::swiglu_forward(eg, eu, ea, pw);
    ops::grouped_gemm(ea, w.e_down, rows, y, true);
    // Unpermute: x_{l+1}[tok] += y (the k copies of a token add up)
    ops::scatter_add_rows(y, tok, out);
  }

  if (w.s_gate.defined()) {
    // Shared expert: x_{l+1} += sigmoid(hn2 . wg) * (silu(hn2 Wg^T) * hn2 Wu^T) Wd^T
    linear(a.hn2, w.s_gate, a.s_gate);
    linear(a.hn2, w.s_up, a.s_up);
    Tensor scale;
    if (w.s_expert_gate.defined()) {
      linear(a.hn2, w.s_expert_gate, a.sg_logit);  // [T,1] f32
      s.sg_host.copy_from(a.sg_logit.view({T}));
      float* sg = s.sg_host.data_as<float>();
      for (int64_t t = 0; t < T; ++t) sg[t] = float(1.0 / (1.0 + std::exp(-double(sg[t]))));
      a.s_scale.copy_from(s.sg_host);
      scale = a.s_scale;
    }
    ops::swiglu_forward(a.s_gate, a.s_up, a.s_act, scale);
    linear(a.s_act, w.s_down, out, 1.0f);
  }
}

// In: dres_c = d loss / d x_{l+1}. Out: dh = d loss / d hn2 (experts, router, shared expert).
void Decoder::moe_backward(int64_t l, LayerActivations& a) {
  Scratch& s = *s_;
  const LayerWeights& w = w_[size_t(l)];
  LayerWeights& g = g_[size_t(l)];
  const int64_t T = opt_.batch * opt_.seq, E = spec_.moe.num_experts;
  const RouterBuffers& r = a.router;
  const int64_t N = r.rows;
  const std::span<const int64_t> rows(r.group_rows.data_as<int64_t>(), size_t(E));

  s.dh.zero_();
  if (N > 0) {
    Tensor tok = rows_of(a.perm_token, N), pw = rows_of(a.perm_weight, N);
    Tensor xg = rows_of(a.xg, N), eg = rows_of(a.eg, N), eu = rows_of(a.eu, N),
           ea = rows_of(a.ea, N);
    Tensor dy = rows_of(s.dy, N), dea = rows_of(s.dea, N), deg = rows_of(s.deg, N),
           deu = rows_of(s.deu, N), dxg = rows_of(s.dxg, N), drow = rows_of(s.drow, N);
    // dy [N,H] = dout[tok]
    ops::gather_rows(s.dres_c, tok, dy);
    // dea [N,Fe] = dy Wdown[e];  dWdown[e] += dy_e^T ea_e
    ops::grouped_gemm_backward(ea, w.e_down, dy, rows, dea, g.e_down, true);
    // deg, deu [N,Fe]; drow [N] = d loss / d prob of each copy
    ops::swiglu_backward(eg, eu, dea, deg, deu, pw, drow);
    // dxg [N,H] = deg Wg[e] + deu Wu[e];  dWg[e], dWu[e] += d_e^T xg_e
    ops::grouped_gemm_backward(xg, w.e_gate, deg, rows, dxg, g.e_gate, true);
    ops::grouped_gemm_backward(xg, w.e_up, deu, rows, dxg, g.e_up, true, true);
    // dh [T,H] = sum over each token's copies
    ops::scatter_add_rows(dxg, tok, s.dh);
    Tensor drow_host = rows_of(s.drow_host, N);
    drow_host.copy_from(drow);
  }

  // Router: dlogits [T,E] from the routing weights, the balancing loss and the z-loss.
  route_backward(spec_.moe, T, r, s.drow_host.data_as<float>(),
                 spec_.moe.aux_loss_coeff > 0 ? aux_grad_.data() : nullptr,
                 s.drouter_host.data_as<float>());
  s.drouter.copy_from(s.drouter_host);
  Tensor dl = s.drouter;
  if (opt_.compute != DType::f32) {
    s.drouter_c.copy_from(s.drouter);
    dl = s.drouter_c;
  }
  // dWr [E,H] += dl^T hn2;  dh += dl Wr
  linear_dw(dl, a.hn2, g.router);
  linear_dx(dl, w.router, s.dh, 1.0f);

  if (w.s_gate.defined()) {
    const int64_t Fs = spec_.moe.shared_expert_ffn;
    Tensor dact = front(s.dact, T, Fs), dgate = front(s.dgate, T, Fs), dup = front(s.dup, T, Fs);
    // dact [T,Fs] = dout Wd;  dWd [H,Fs] += dout^T act
    linear_dx(s.dres_c, w.s_down, dact);
    linear_dw(s.dres_c, a.s_act, g.s_down);
    if (w.s_expert_gate.defined())
      ops::swiglu_backward(a.s_gate, a.s_up, dact, dgate, dup, a.s_scale, s.ds);
    else
      ops::swiglu_backward(a.s_gate, a.s_up, dact, dgate, dup);
    linear_dw(dgate, a.hn2, g.s_gate);
    linear_dw(dup, a.hn2, g.s_up);
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
      linear_dw(s.dsl_c, a.hn2, g.s_expert_gate);
      linear_dx(s.dsl_c, w.s_expert_gate, s.dh, 1.0f);
    }
  }
}

}  // namespace origami::models
