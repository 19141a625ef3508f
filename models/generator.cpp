#include "models/generator.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <ostream>
#include <string>

#include "models/moe_router.h"
#include "ops/activation.h"
#include "ops/attention.h"
#include "ops/embedding.h"
#include "ops/gemm.h"
#include "ops/index.h"
#include "ops/norm.h"
#include "ops/rope.h"
#include "runtime/error.h"

namespace origami::models {

namespace {

// One layer's weights in the compute dtype: views into the generator's ParameterBuffer.
struct InferenceLayerWeights {
  Tensor ln1, wq, bq, wk, bk, wv, bv, wo, ln2;  // attention
  Tensor gate, up, down;                        // dense MLP
  Tensor router, e_gate, e_up, e_down;          // MoE: [E,H], [E,Fe,H], [E,Fe,H], [E,H,Fe]
  Tensor s_gate, s_up, s_down, s_expert_gate;   // shared expert
};

InferenceLayerWeights layer_weights(const ParameterBuffer& p, const LayerParamNames& n) {
  InferenceLayerWeights w;
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

}  // namespace

// Every buffer of the generator. Tmax = max_step_tokens, R = rows of logits (max_batch, or Tmax
// with all_logits), Nmax = Tmax * top_k permuted expert rows. A step uses the first T rows.
struct GeneratorBuffers {
  Tensor weights;                     // [P] compute
  std::vector<Tensor> k_cache;        // [L] x [max_batch, max_seq, Hkv, D] compute
  std::vector<Tensor> v_cache;        // [L] x [max_batch, max_seq, Hkv, D] compute
  Tensor ids, positions;              // [Tmax] i64 (device)
  Tensor ids_host, positions_host;    // [Tmax] i64
  Tensor last_row, last_row_host;     // [R] i64 row of each chunk's last token
  Tensor inv_freq;                    // [D/2] f32
  Tensor ones;                        // [Tmax] compute: bias add as a rank-1 GEMM
  Tensor x;                           // [Tmax,H] residual stream
  Tensor h;                           // [Tmax,H] normed
  Tensor rstd;                        // [Tmax] f32
  Tensor q, attn;                     // [Tmax,Hq*D]
  Tensor k, v;                        // [Tmax,Hkv*D]
  Tensor lse;                         // [Hq*Tmax] f32
  Tensor gate, up, act;               // [Tmax*Fmax] flat (dense MLP and shared expert)
  Tensor router_logits;               // [Tmax,E] f32
  Tensor perm_token, perm_weight;     // [Nmax] i64, f32
  Tensor xg, y;                       // [Nmax,H]
  Tensor eg, eu, ea;                  // [Nmax,Fe]
  Tensor sg_logit, s_scale, sg_host;  // [Tmax,1] f32, [Tmax] f32, [Tmax] f32 host
  RouterBuffers router;               // host, for Tmax tokens
  Tensor x_last, h_last, rstd_last;   // [R,H], [R,H], [R] final norm of the rows with logits
  Tensor logits;                      // [R,V] f32 (device)
  Tensor logits_host;                 // [R,V] f32 (host; the same tensor on the CPU)
};

namespace {

const char* kWeights = "weights";
const char* kCache = "kv cache";
const char* kActs = "activations";
const char* kHost = "host";

// Records every buffer in a MemoryPlan (planning) or carves it from its arena; one enumeration
// for both, so the plan is exactly what is allocated.
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

void enumerate_buffers(const ModelSpec& sp, const GeneratorOptions& o,
                       const ParameterLayout& layout, BufferMaker& mk, GeneratorBuffers& b) {
  const int64_t T = o.max_step_tokens, H = sp.hidden, V = sp.vocab, L = sp.layers;
  const int64_t R = o.all_logits ? T : o.max_batch;
  const int64_t Dq = sp.heads * sp.head_dim, Dkv = sp.kv_heads * sp.head_dim;
  const DType c = o.compute, f32 = DType::f32, i64 = DType::i64;
  const int64_t E = sp.moe.num_experts, k = sp.moe.top_k, Fe = sp.moe.expert_ffn;
  const int64_t Fs = sp.moe.shared_expert_ffn, Nmax = T * k;
  bool any_dense = false, any_moe = false;
  for (int64_t l = 0; l < L; ++l) (sp.is_moe_layer(l) ? any_moe : any_dense) = true;

  b.weights = mk(kWeights, std::string("weights ") + dtype_name(c), {layout.total_numel()}, c);
  b.k_cache.resize(size_t(L));
  b.v_cache.resize(size_t(L));
  const Shape cache = {o.max_batch, o.max_seq, sp.kv_heads, sp.head_dim};
  for (int64_t l = 0; l < L; ++l) {
    b.k_cache[size_t(l)] = mk(kCache, "layer " + std::to_string(l) + ".k", cache, c);
    b.v_cache[size_t(l)] = mk(kCache, "layer " + std::to_string(l) + ".v", cache, c);
  }
  b.ids = mk(kActs, "ids", {T}, i64);
  b.positions = mk(kActs, "positions", {T}, i64);
  b.ids_host = mk(kHost, "ids (host)", {T}, i64);
  b.positions_host = mk(kHost, "positions (host)", {T}, i64);
  b.last_row = mk(kActs, "last rows", {R}, i64);
  b.last_row_host = mk(kHost, "last rows (host)", {R}, i64);
  b.inv_freq = mk(kActs, "rope inv_freq", {sp.head_dim / 2}, f32);
  b.ones = mk(kActs, "ones", {T}, c);
  b.x = mk(kActs, "x", {T, H}, c);
  b.h = mk(kActs, "h", {T, H}, c);
  b.rstd = mk(kActs, "rstd", {T}, f32);
  b.q = mk(kActs, "q", {T, Dq}, c);
  b.attn = mk(kActs, "attn", {T, Dq}, c);
  b.k = mk(kActs, "k", {T, Dkv}, c);
  b.v = mk(kActs, "v", {T, Dkv}, c);
  b.lse = mk(kActs, "lse", {sp.heads * T}, f32);
  const int64_t Fmax = std::max(any_dense ? sp.ffn : 0, any_moe ? Fs : 0);
  if (Fmax > 0) {
    b.gate = mk(kActs, "mlp.gate", {T * Fmax}, c);
    b.up = mk(kActs, "mlp.up", {T * Fmax}, c);
    b.act = mk(kActs, "mlp.act", {T * Fmax}, c);
  }
  if (any_moe) {
    b.router_logits = mk(kActs, "router logits", {T, E}, f32);
    b.perm_token = mk(kActs, "perm_token", {Nmax}, i64);
    b.perm_weight = mk(kActs, "perm_weight", {Nmax}, f32);
    b.xg = mk(kActs, "experts.x", {Nmax, H}, c);
    b.y = mk(kActs, "experts.y", {Nmax, H}, c);
    b.eg = mk(kActs, "experts.gate", {Nmax, Fe}, c);
    b.eu = mk(kActs, "experts.up", {Nmax, Fe}, c);
    b.ea = mk(kActs, "experts.act", {Nmax, Fe}, c);
    if (Fs > 0 && sp.moe.shared_expert_gate) {
      b.sg_logit = mk(kActs, "shared.gate_logit", {T, 1}, f32);
      b.s_scale = mk(kActs, "shared.scale", {T}, f32);
      b.sg_host = mk(kHost, "shared.scale (host)", {T}, f32);
    }
    RouterBuffers& r = b.router;
    r.logits = mk(kHost, "router.logits", {T, E}, f32);
    r.probs = mk(kHost, "router.probs", {T, E}, f32);
    r.aux_probs = mk(kHost, "router.aux_probs", {T, E}, f32);
    r.lse = mk(kHost, "router.lse", {T}, f32);
    r.selected = mk(kHost, "router.selected", {T, k}, i64);
    r.top_value = mk(kHost, "router.top_value", {T, k}, f32);
    r.weight = mk(kHost, "router.weight", {T, k}, f32);
    r.slot = mk(kHost, "router.slot", {T, k}, i64);
    r.counts = mk(kHost, "router.counts", {E}, i64);
    r.group_rows = mk(kHost, "router.group_rows", {E}, i64);
    r.perm_token = mk(kHost, "router.perm_token", {Nmax}, i64);
    r.perm_weight = mk(kHost, "router.perm_weight", {Nmax}, f32);
    r.scratch = mk(kHost, "router.scratch", {std::max(T * k, E)}, i64);
  }
  if (!o.all_logits) b.x_last = mk(kActs, "x (last tokens)", {R, H}, c);
  b.h_last = mk(kActs, "final norm out", {R, H}, c);
  b.rstd_last = mk(kActs, "final norm rstd", {R}, f32);
  b.logits = mk(kActs, "logits f32", {R, V}, f32);
  if (!o.device.is_cpu()) b.logits_host = mk(kHost, "logits (host)", {R, V}, f32);
}

// y [T,N] = x [T,K] @ w [N,K]^T + beta * y
void linear(const Tensor& x, const Tensor& w, Tensor y, float beta = 0.0f) {
  ops::gemm(x, w, y, {false, true, 1.0f, beta});
}
// y [T,N] += ones [T,1] @ bias [1,N]
void add_bias(const Tensor& ones, const Tensor& bias, Tensor y) {
  const int64_t T = y.size(0), N = y.size(1);
  ops::gemm(ones.narrow(0, 0, T).view({T, 1}), bias.view({1, N}), y, {false, false, 1.0f, 1.0f});
}
Tensor rows_of(const Tensor& t, int64_t n) {
  return t.narrow(0, 0, n);
}
// A [rows, cols] view of the front of a flat buffer.
Tensor front(const Tensor& flat, int64_t rows, int64_t cols) {
  return flat.narrow(0, 0, rows * cols).view({rows, cols});
}

}  // namespace

// ---- construction ----------------------------------------------------------------------------

const char* stop_reason_name(StopReason r) {
  switch (r) {
    case StopReason::eos:
      return "eos";
    case StopReason::max_new_tokens:
      return "max_new_tokens";
    case StopReason::context_full:
      return "context_full";
  }
  return "?";
}

GeneratorOptions GeneratorOptions::resolve(const ModelSpec& spec) const {
  GeneratorOptions o = *this;
  ORIGAMI_CHECK(o.compute == DType::f32 || o.compute == DType::bf16,
                "generator: compute dtype must be f32 or bf16, got ", dtype_name(o.compute));
  ORIGAMI_CHECK(o.max_batch >= 1, "generator: max_batch must be >= 1, got ", o.max_batch);
  if (o.max_seq == 0) o.max_seq = spec.max_seq_len;
  ORIGAMI_CHECK(o.max_seq >= 1, "generator: no context length: the model spec has no max_seq_len ",
                "and max_seq is ", o.max_seq, "; give max_seq");
  if (o.max_step_tokens == 0) o.max_step_tokens = std::min<int64_t>(o.max_batch * o.max_seq, 512);
  ORIGAMI_CHECK(o.max_step_tokens >= o.max_batch, "generator: max_step_tokens (", o.max_step_tokens,
                ") must be at least max_batch (", o.max_batch,
                "): a decode step runs one token of every sequence");
  return o;
}

MemoryPlan Generator::memory_plan(const ModelSpec& spec, const GeneratorOptions& opt) {
  spec.validate();
  const GeneratorOptions o = opt.resolve(spec);
  MemoryPlan plan;
  BufferMaker mk;
  mk.plan = &plan;
  GeneratorBuffers unused;
  enumerate_buffers(spec, o, ParameterLayout(spec), mk, unused);
  return plan;
}

Generator::Generator(const ModelSpec& spec, const GeneratorOptions& opt)
    : spec_(spec), opt_(opt.resolve(spec)), layout_(spec) {
  build(nullptr);
}

Generator::Generator(const ModelSpec& spec, const ParameterBuffer& params,
                     const GeneratorOptions& opt)
    : spec_(spec), opt_(opt.resolve(spec)), layout_(spec) {
  build(&params);
}

Generator::~Generator() = default;

void Generator::build(const ParameterBuffer* params) {
  spec_.validate();
  moe_ = spec_.moe;
  moe_.capacity_factor = 0.0;  // inference routes every token copy
  moe_.pad_to_capacity = false;
  plan_ = memory_plan(spec_, opt_);
  BufferMaker mk;
  mk.planning = false;
  for (const std::string& name : plan_.arenas()) {
    const Device dev = name == kHost ? Device::cpu() : opt_.device;
    arenas_.push_back(std::make_unique<Arena>(name, plan_.arena_bytes(name), dev));
    mk.arenas[name] = arenas_.back().get();
  }
  b_ = std::make_unique<GeneratorBuffers>();
  GeneratorBuffers& b = *b_;
  enumerate_buffers(spec_, opt_, layout_, mk, b);
  if (!b.logits_host.defined()) b.logits_host = b.logits;
  weights_ = ParameterBuffer(layout_, b.weights);
  if (params != nullptr) {
    ORIGAMI_CHECK(params->layout().total_numel() == layout_.total_numel(),
                  "generator: the parameters have ", params->layout().total_numel(),
                  " slots, the model ", spec_.str(), " needs ", layout_.total_numel());
    weights_.copy_from(*params);
  } else {
    weights_.zero();
  }
  b.inv_freq.copy_from(ops::rope_inv_freq(spec_.rope));
  const int64_t T = opt_.max_step_tokens;
  b.ones.copy_from(Tensor::from_vector(std::vector<float>(size_t(T), 1.0f), {T}, opt_.compute));
  int64_t m = 0;
  for (int64_t l = 0; l < spec_.layers; ++l) moe_index_.push_back(spec_.is_moe_layer(l) ? m++ : -1);
  expert_bias_.assign(size_t(m), std::vector<float>(size_t(spec_.moe.num_experts), 0.0f));
  lengths_.assign(size_t(opt_.max_batch), 0);
}

void Generator::print_plan(std::ostream& os, bool detail) const {
  os << "model: " << spec_.str() << ", " << layout_.parameter_count() << " parameters, "
     << dtype_name(opt_.compute) << ", KV cache for " << opt_.max_batch << " x " << opt_.max_seq
     << " tokens, " << opt_.max_step_tokens << " tokens per step\n";
  plan_.print(os, "memory plan", detail);
}

void Generator::set_expert_bias(int64_t moe_layer, std::span<const float> bias) {
  ORIGAMI_CHECK(moe_layer >= 0 && moe_layer < int64_t(expert_bias_.size()), "generator: MoE layer ",
                moe_layer, " out of range [0, ", expert_bias_.size(), ")");
  ORIGAMI_CHECK(int64_t(bias.size()) == spec_.moe.num_experts, "generator: expert bias has ",
                bias.size(), " entries, the model has ", spec_.moe.num_experts, " experts");
  expert_bias_[size_t(moe_layer)].assign(bias.begin(), bias.end());
}

void Generator::reset() {
  std::fill(lengths_.begin(), lengths_.end(), 0);
}

void Generator::reset(int64_t slot) {
  ORIGAMI_CHECK(slot >= 0 && slot < opt_.max_batch, "generator: slot ", slot, " out of range [0, ",
                opt_.max_batch, ")");
  lengths_[size_t(slot)] = 0;
}

int64_t Generator::length(int64_t slot) const {
  ORIGAMI_CHECK(slot >= 0 && slot < opt_.max_batch, "generator: slot ", slot, " out of range [0, ",
                opt_.max_batch, ")");
  return lengths_[size_t(slot)];
}

// ---- one forward pass over new tokens -----------------------------------------------------------

Tensor Generator::step(std::span<const SequenceChunk> chunks) {
  GeneratorBuffers& b = *b_;
  ORIGAMI_CHECK(!chunks.empty() && int64_t(chunks.size()) <= opt_.max_batch,
                "generator step: needs 1 to ", opt_.max_batch, " sequences, got ", chunks.size());
  int64_t T = 0;
  for (size_t j = 0; j < chunks.size(); ++j) {
    const SequenceChunk& c = chunks[j];
    ORIGAMI_CHECK(c.slot >= 0 && c.slot < opt_.max_batch, "generator step: slot ", c.slot,
                  " out of range [0, ", opt_.max_batch, ")");
    for (size_t i = 0; i < j; ++i)
      ORIGAMI_CHECK(chunks[i].slot != c.slot, "generator step: slot ", c.slot, " given twice");
    const int64_t n = int64_t(c.tokens.size()), pos = lengths_[size_t(c.slot)];
    ORIGAMI_CHECK(n >= 1, "generator step: slot ", c.slot, " has no new tokens");
    ORIGAMI_CHECK(pos + n <= opt_.max_seq, "generator step: slot ", c.slot, " holds ", pos,
                  " tokens; ", n, " more exceed the context of ", opt_.max_seq, " tokens");
    T += n;
  }
  ORIGAMI_CHECK(T <= opt_.max_step_tokens, "generator step: ", T,
                " tokens exceed max_step_tokens = ", opt_.max_step_tokens);

  // ids, positions [T]; the row of each chunk's last token.
  int64_t* ids = b.ids_host.data_as<int64_t>();
  int64_t* pos = b.positions_host.data_as<int64_t>();
  int64_t* last = b.last_row_host.data_as<int64_t>();
  int64_t t = 0;
  for (size_t j = 0; j < chunks.size(); ++j) {
    const int64_t p0 = lengths_[size_t(chunks[j].slot)];
    for (size_t i = 0; i < chunks[j].tokens.size(); ++i, ++t) {
      const int64_t id = chunks[j].tokens[i];
      ORIGAMI_CHECK(id >= 0 && id < spec_.vocab, "generator step: token id ", id,
                    " outside the vocabulary of ", spec_.vocab);
      ids[t] = id;
      pos[t] = p0 + int64_t(i);
    }
    if (!opt_.all_logits) last[j] = t - 1;
  }
  rows_of(b.ids, T).copy_from(rows_of(b.ids_host, T));
  rows_of(b.positions, T).copy_from(rows_of(b.positions_host, T));

  // x [T,H] = embed[ids]
  const ModelParamNames& names = layout_.names();
  Tensor x = rows_of(b.x, T);
  ops::embedding_forward(weights_.get(names.embed), rows_of(b.ids, T), x);
  for (int64_t l = 0; l < spec_.layers; ++l) {
    attention(l, chunks, T);
    if (spec_.is_moe_layer(l))
      moe(l, T);
    else
      mlp(l, T);
  }
  for (const SequenceChunk& c : chunks) lengths_[size_t(c.slot)] += int64_t(c.tokens.size());

  // Head on the rows that need logits: logits [R,V] f32 = rmsnorm(x[rows]) Wlm^T
  const int64_t R = opt_.all_logits ? T : int64_t(chunks.size());
  Tensor xr = x;
  if (!opt_.all_logits) {
    Tensor idx = rows_of(b.last_row, R);
    idx.copy_from(rows_of(b.last_row_host, R));
    xr = rows_of(b.x_last, R);
    ops::gather_rows(x, idx, xr);
  }
  Tensor hr = rows_of(b.h_last, R), rstd = rows_of(b.rstd_last, R);
  ops::rmsnorm_forward(xr, weights_.get(names.final_norm), float(spec_.rms_eps), hr, rstd);
  const std::string& lm = spec_.tie_embeddings ? names.embed : names.lm_head;
  Tensor logits = rows_of(b.logits, R);
  linear(hr, weights_.get(lm), logits);
  Tensor out = rows_of(b.logits_host, R);
  if (out.data() != logits.data()) out.copy_from(logits);
  return out;
}

void Generator::attention(int64_t l, std::span<const SequenceChunk> chunks, int64_t T) {
  GeneratorBuffers& b = *b_;
  const InferenceLayerWeights w = layer_weights(weights_, layout_.names().layers[size_t(l)]);
  const int64_t Hq = spec_.heads, Hkv = spec_.kv_heads, D = spec_.head_dim;
  Tensor x = rows_of(b.x, T), h = rows_of(b.h, T), rstd = rows_of(b.rstd, T);
  Tensor q = rows_of(b.q, T), k = rows_of(b.k, T), v = rows_of(b.v, T), attn = rows_of(b.attn, T);
  // h [T,H] = rmsnorm(x);  q [T,Hq*D], k, v [T,Hkv*D] = h W^T (+ b)
  ops::rmsnorm_forward(x, w.ln1, float(spec_.rms_eps), h, rstd);
  linear(h, w.wq, q);
  linear(h, w.wk, k);
  linear(h, w.wv, v);
  if (w.bq.defined()) {
    add_bias(b.ones, w.bq, q);
    add_bias(b.ones, w.bk, k);
    add_bias(b.ones, w.bv, v);
  }
  // rope at each token's own position, in place, viewed [T,heads,D]
  Tensor q3 = q.view({T, Hq, D}), k3 = k.view({T, Hkv, D}), positions = rows_of(b.positions, T);
  ops::rope_forward(q3, positions, b.inv_freq, q3);
  ops::rope_forward(k3, positions, b.inv_freq, k3);

  // Per sequence: append k, v to its cache, then its queries attend to the cached keys.
  const int64_t sw = spec_.sliding_window;
  ops::AttentionParams p;
  p.window = sw > 0 ? sw + 1 : -1;  // ops: keys with q_pos - k_pos < window
  int64_t row = 0;
  for (const SequenceChunk& c : chunks) {
    const int64_t n = int64_t(c.tokens.size()), pos = lengths_[size_t(c.slot)];
    Tensor kc = b.k_cache[size_t(l)].select(0, c.slot);  // [max_seq,Hkv,D]
    Tensor vc = b.v_cache[size_t(l)].select(0, c.slot);
    kc.narrow(0, pos, n).copy_from(k.narrow(0, row, n).view({n, Hkv, D}));
    vc.narrow(0, pos, n).copy_from(v.narrow(0, row, n).view({n, Hkv, D}));
    // Keys [k0, pos + n): all of them, or from the first one the window lets the first query see.
    const int64_t k0 = sw > 0 ? std::max<int64_t>(0, pos - sw) : 0, nk = pos + n - k0;
    p.q_offset = pos;
    p.k_offset = k0;
    Tensor out = attn.narrow(0, row, n).view({1, n, Hq, D});
    Tensor lse = b.lse.narrow(0, 0, Hq * n).view({1, Hq, n});
    ops::attention_forward(q.narrow(0, row, n).view({1, n, Hq, D}),
                           kc.narrow(0, k0, nk).view({1, nk, Hkv, D}),
                           vc.narrow(0, k0, nk).view({1, nk, Hkv, D}), p, out, lse);
    row += n;
  }
  // x [T,H] += attn Wo^T
  linear(attn, w.wo, x, 1.0f);
}

void Generator::mlp(int64_t l, int64_t T) {
  GeneratorBuffers& b = *b_;
  const InferenceLayerWeights w = layer_weights(weights_, layout_.names().layers[size_t(l)]);
  const int64_t F = spec_.ffn;
  Tensor x = rows_of(b.x, T), h = rows_of(b.h, T), rstd = rows_of(b.rstd, T);
  Tensor gate = front(b.gate, T, F), up = front(b.up, T, F), act = front(b.act, T, F);
  // h = rmsnorm(x);  act [T,F] = silu(h Wg^T) * h Wu^T;  x += act Wd^T
  ops::rmsnorm_forward(x, w.ln2, float(spec_.rms_eps), h, rstd);
  linear(h, w.gate, gate);
  linear(h, w.up, up);
  ops::swiglu_forward(gate, up, act);
  linear(act, w.down, x, 1.0f);
}

void Generator::moe(int64_t l, int64_t T) {
  GeneratorBuffers& b = *b_;
  const InferenceLayerWeights w = layer_weights(weights_, layout_.names().layers[size_t(l)]);
  const int64_t E = spec_.moe.num_experts, m = moe_index_[size_t(l)];
  Tensor x = rows_of(b.x, T), h = rows_of(b.h, T), rstd = rows_of(b.rstd, T);
  ops::rmsnorm_forward(x, w.ln2, float(spec_.rms_eps), h, rstd);

  // Route on the host: router logits [T,E] f32 = h Wr^T.
  Tensor rl = rows_of(b.router_logits, T);
  linear(h, w.router, rl);
  RouterBuffers& r = b.router;
  rows_of(r.logits, T).copy_from(rl);
  const float* bias = spec_.moe.expert_bias ? expert_bias_[size_t(m)].data() : nullptr;
  route_forward(moe_, T, bias, r);
  const int64_t N = r.rows;
  const std::span<const int64_t> rows(r.group_rows.data_as<int64_t>(), size_t(E));

  if (N > 0) {
    // Permute: token copies sorted by expert; xg [N,H] = h[tok]
    Tensor tok = rows_of(b.perm_token, N), pw = rows_of(b.perm_weight, N);
    tok.copy_from(rows_of(r.perm_token, N));
    pw.copy_from(rows_of(r.perm_weight, N));
    Tensor xg = rows_of(b.xg, N), eg = rows_of(b.eg, N), eu = rows_of(b.eu, N),
           ea = rows_of(b.ea, N), y = rows_of(b.y, N);
    ops::gather_rows(h, tok, xg);
    // Experts: ea [N,Fe] = silu(xg Wg[e]^T) * xg Wu[e]^T * prob;  y [N,H] = ea Wd[e]^T
    ops::grouped_gemm(xg, w.e_gate, rows, eg, true);
    ops::grouped_gemm(xg, w.e_up, rows, eu, true);
    ops::swiglu_forward(eg, eu, ea, pw);
    ops::grouped_gemm(ea, w.e_down, rows, y, true);
    // Unpermute: x[tok] += y (a token's k copies add up)
    ops::scatter_add_rows(y, tok, x);
  }

  if (w.s_gate.defined()) {
    // Shared expert: x += sigmoid(h . wg) * (silu(h Wg^T) * h Wu^T) Wd^T
    const int64_t Fs = spec_.moe.shared_expert_ffn;
    Tensor gate = front(b.gate, T, Fs), up = front(b.up, T, Fs), act = front(b.act, T, Fs);
    linear(h, w.s_gate, gate);
    linear(h, w.s_up, up);
    Tensor scale;
    if (w.s_expert_gate.defined()) {
      Tensor sl = rows_of(b.sg_logit, T), sh = rows_of(b.sg_host, T);
      linear(h, w.s_expert_gate, sl);  // [T,1] f32
      sh.copy_from(sl.view({T}));
      float* sg = sh.data_as<float>();
      for (int64_t i = 0; i < T; ++i) sg[i] = float(1.0 / (1.0 + std::exp(-double(sg[i]))));
      scale = rows_of(b.s_scale, T);
      scale.copy_from(sh);
    }
    ops::swiglu_forward(gate, up, act, scale);
    linear(act, w.s_down, x, 1.0f);
  }
}

// ---- the generation loop -------------------------------------------------------------------

std::vector<GenerationResult> Generator::generate(
    const std::vector<std::vector<int64_t>>& prompts, const GenerationConfig& config,
    const std::function<void(int64_t, int64_t)>& on_token) {
  const int64_t B = int64_t(prompts.size());
  ORIGAMI_CHECK(B >= 1 && B <= opt_.max_batch, "generate: needs 1 to ", opt_.max_batch,
                " prompts (max_batch), got ", B);
  ORIGAMI_CHECK(config.max_new_tokens >= 0, "generate: max_new_tokens must be >= 0, got ",
                config.max_new_tokens);
  config.sampling.validate();
  for (int64_t i = 0; i < B; ++i) {
    const auto& p = prompts[size_t(i)];
    ORIGAMI_CHECK(!p.empty(), "generate: prompt ", i, " is empty: give at least one token");
    ORIGAMI_CHECK(int64_t(p.size()) <= opt_.max_seq, "generate: prompt ", i, " has ", p.size(),
                  " tokens, longer than the context of ", opt_.max_seq, " tokens");
    for (int64_t id : p)
      ORIGAMI_CHECK(id >= 0 && id < spec_.vocab, "generate: prompt ", i, " holds token id ", id,
                    " outside the model's vocabulary of ", spec_.vocab);
  }
  std::vector<GenerationResult> results(static_cast<size_t>(B));
  if (config.max_new_tokens == 0) return results;
  reset();

  std::vector<Sampler> samplers;
  std::vector<std::vector<int64_t>> history(static_cast<size_t>(B));  // prompt + generated
  for (int64_t i = 0; i < B; ++i) {
    SamplingParams sp = config.sampling;
    sp.seed = config.sampling.seed + uint64_t(i);
    samplers.emplace_back(sp, spec_.vocab);
    history[size_t(i)].reserve(prompts[size_t(i)].size() + size_t(config.max_new_tokens));
    history[size_t(i)] = prompts[size_t(i)];
    results[size_t(i)].tokens.reserve(size_t(config.max_new_tokens));
  }
  std::vector<bool> active(static_cast<size_t>(B), true);
  std::vector<SequenceChunk> chunks;
  std::vector<int64_t> chunk_seq;  // sequence of each chunk
  chunks.reserve(static_cast<size_t>(B));
  chunk_seq.reserve(static_cast<size_t>(B));
  const int64_t V = spec_.vocab;

  // Samples the next token of sequence i from logits row `row`, then decides whether it stops.
  auto take = [&](int64_t i, const Tensor& logits, int64_t row) {
    const std::span<const float> lr(logits.data_as<float>() + row * V, size_t(V));
    const int64_t tok = samplers[size_t(i)].sample(lr, history[size_t(i)]);
    GenerationResult& res = results[size_t(i)];
    res.tokens.push_back(tok);
    history[size_t(i)].push_back(tok);
    if (on_token) on_token(i, tok);
    if (std::find(config.stop_ids.begin(), config.stop_ids.end(), tok) != config.stop_ids.end()) {
      res.reason = StopReason::eos;
      active[size_t(i)] = false;
    } else if (int64_t(res.tokens.size()) >= config.max_new_tokens) {
      res.reason = StopReason::max_new_tokens;
      active[size_t(i)] = false;
    } else if (length(i) >= opt_.max_seq) {  // no room to feed the token back
      res.reason = StopReason::context_full;
      active[size_t(i)] = false;
    }
  };
  // The logits row of chunk j's last token.
  auto last_row = [&](size_t j) {
    if (!opt_.all_logits) return int64_t(j);
    int64_t r = -1;
    for (size_t i = 0; i <= j; ++i) r += int64_t(chunks[i].tokens.size());
    return r;
  };

  // Prefill: the prompts packed into passes of at most max_step_tokens tokens.
  std::vector<int64_t> done(static_cast<size_t>(B), 0);  // prompt tokens cached
  for (;;) {
    chunks.clear();
    chunk_seq.clear();
    int64_t budget = opt_.max_step_tokens;
    for (int64_t i = 0; i < B && budget > 0; ++i) {
      const auto& p = prompts[size_t(i)];
      const int64_t left = int64_t(p.size()) - done[size_t(i)];
      if (left == 0) continue;
      const int64_t n = std::min(left, budget);
      chunks.push_back({i, std::span<const int64_t>(p.data() + done[size_t(i)], size_t(n))});
      chunk_seq.push_back(i);
      budget -= n;
    }
    if (chunks.empty()) break;
    const Tensor logits = step(chunks);
    for (size_t j = 0; j < chunks.size(); ++j) {
      const int64_t i = chunk_seq[j];
      done[size_t(i)] += int64_t(chunks[j].tokens.size());
      if (done[size_t(i)] == int64_t(prompts[size_t(i)].size())) take(i, logits, last_row(j));
    }
  }

  // Decode: one token of every active sequence per pass.
  for (;;) {
    chunks.clear();
    chunk_seq.clear();
    for (int64_t i = 0; i < B; ++i) {
      if (!active[size_t(i)]) continue;
      chunks.push_back({i, std::span<const int64_t>(&results[size_t(i)].tokens.back(), 1)});
      chunk_seq.push_back(i);
    }
    if (chunks.empty()) break;
    const Tensor logits = step(chunks);
    for (size_t j = 0; j < chunks.size(); ++j) take(chunk_seq[j], logits, last_row(j));
  }
  return results;
}

}  // namespace origami::models
