// The decoder's memory plan: one enumeration of every buffer, run once to plan (sizes per arena,
// printed at start-up) and once to carve the buffers from arenas of exactly those sizes.
#include <algorithm>
#include <string>

#include "models/decoder_internal.h"
#include "parallel/communicator.h"
#include "runtime/error.h"

namespace origami::models {

// ---- the memory plan: one enumeration of every buffer ------------------------------------------

ShardSpec shard_of(const DecoderOptions& o) {
  ShardSpec sh;
  const DecoderParallel& p = o.parallel;
  if (p.tp) {
    sh.tp = p.tp->size();
    sh.tp_rank = p.tp->rank();
  }
  if (p.ep) {
    sh.ep = p.ep->size();
    sh.ep_rank = p.ep->rank();
  }
  if (p.etp) {
    sh.etp = p.etp->size();
    sh.etp_rank = p.etp->rank();
  }
  sh.layer_begin = p.layer_begin;
  sh.layer_end = p.layer_end;
  sh.sequence_parallel = p.sequence_parallel && sh.tp > 1;
  return sh;
}

ModelSpec effective_spec(const ModelSpec& spec, const DecoderOptions& o) {
  ModelSpec s = spec;
  if (o.inference) {
    s.moe.capacity_factor = 0.0;
    s.moe.pad_to_capacity = false;
  }
  return s;
}

Dims dims_of(const ModelSpec& sp, const DecoderOptions& o, const ParameterLayout& layout) {
  Dims d;
  const ShardSpec& sh = layout.shard();
  d.tp = sh.tp;
  d.sp = sh.sequence_parallel && sh.tp > 1;
  d.T = o.batch * o.seq;
  ORIGAMI_CHECK(!d.sp || d.T % d.tp == 0, "sequence parallelism: the ", d.T,
                " tokens of a microbatch (batch x seq) do not divide over tp=", d.tp);
  d.Tl = d.sp ? d.T / d.tp : d.T;
  d.H = sp.hidden;
  d.V = sp.vocab / d.tp;
  d.Lb = layout.layer_begin();
  d.Le = layout.layer_end();
  d.Hq = sp.heads / d.tp;
  d.Dq = d.Hq * sp.head_dim;
  d.Dkv = (sp.kv_heads % d.tp == 0 ? sp.kv_heads / d.tp : 1) * sp.head_dim;
  d.F = sp.ffn / d.tp;
  d.E = sp.moe.num_experts;
  d.k = sp.moe.top_k;
  d.Fe = sp.moe.expert_ffn;
  d.Fs = sp.moe.shared_expert_ffn;
  d.Lm = sp.num_moe_layers();
  d.first = d.Lb == 0;
  d.last = d.Le == sp.layers;
  for (int64_t l = d.Lb; l < d.Le; ++l) (sp.is_moe_layer(l) ? d.any_moe : d.any_dense) = true;
  d.Nmax = d.any_moe ? router_max_rows(sp.moe, d.Tl) : 0;
  d.dispatch = sh.ep > 1 || sh.etp > 1;
  d.G = int64_t(sh.ep) * sh.etp;
  d.El = sh.ep > 0 ? d.E / sh.ep : d.E;
  d.Fe = sp.moe.expert_ffn / sh.etp;
  d.Smax = d.dispatch ? d.G * d.Nmax : d.Nmax;
  return d;
}

namespace {

void layer_buffers(const ModelSpec& sp, const DecoderOptions& o, const Dims& d, BufferMaker& mk,
                   const std::string& p, bool has_dense, bool has_moe, LayerActivations& x) {
  const DType c = o.compute, f32 = DType::f32, i64 = DType::i64;
  const int64_t T = d.T, Tl = d.Tl, H = d.H, E = d.E, k = d.k, Nmax = d.Nmax;
  x.hn1 = mk(kActs, p + "hn1", {T, H}, c);
  x.rstd1 = mk(kActs, p + "rstd1", {Tl}, f32);
  x.q = mk(kActs, p + "q", {T, d.Dq}, c);
  x.k = mk(kActs, p + "k", {T, d.Dkv}, c);
  x.v = mk(kActs, p + "v", {T, d.Dkv}, c);
  x.attn = mk(kActs, p + "attn", {T, d.Dq}, c);
  if (!o.inference) x.lse = mk(kActs, p + "lse", {o.batch, d.Hq, o.seq}, f32);
  x.x_mid = mk(kActs, p + "x_mid", {Tl, H}, c);
  x.hn2 = mk(kActs, p + "hn2", {T, H}, c);
  x.rstd2 = mk(kActs, p + "rstd2", {Tl}, f32);
  if (has_dense) {
    x.gate = mk(kActs, p + "mlp.gate", {T, d.F}, c);
    x.up = mk(kActs, p + "mlp.up", {T, d.F}, c);
    x.act = mk(kActs, p + "mlp.act", {T, d.F}, c);
  }
  if (has_moe) {
    x.router_logits = mk(kActs, p + "router_logits", {Tl, E}, f32);
    x.perm_token = mk(kActs, p + "perm_token", {Nmax}, i64);
    x.perm_weight = mk(kActs, p + "perm_weight", {Nmax}, f32);
    x.xg = mk(kActs, p + "experts.x", {Nmax, H}, c);
    x.eg = mk(kActs, p + "experts.gate", {d.Smax, d.Fe}, c);
    x.eu = mk(kActs, p + "experts.up", {d.Smax, d.Fe}, c);
    x.ea = mk(kActs, p + "experts.act", {d.Smax, d.Fe}, c);
    if (d.dispatch) {
      x.dispatch.table = mk(kHost, p + "dispatch.table", {d.G * E}, i64);
      x.dispatch.idx = mk(kActs, p + "dispatch.idx", {d.Smax}, i64);
      x.xe = mk(kActs, p + "dispatch.x", {d.Smax, H}, c);
      x.pe = mk(kActs, p + "dispatch.prob", {d.Smax}, f32);
    }
    if (d.Fs > 0) {
      x.s_gate = mk(kActs, p + "shared.gate", {Tl, d.Fs}, c);
      x.s_up = mk(kActs, p + "shared.up", {Tl, d.Fs}, c);
      x.s_act = mk(kActs, p + "shared.act", {Tl, d.Fs}, c);
      if (sp.moe.shared_expert_gate) {
        x.sg_logit = mk(kActs, p + "shared.gate_logit", {Tl, 1}, f32);
        x.s_scale = mk(kActs, p + "shared.scale", {Tl}, f32);
      }
    }
    RouterBuffers& r = x.router;
    r.logits = mk(kHost, p + "router.logits", {Tl, E}, f32);
    r.probs = mk(kHost, p + "router.probs", {Tl, E}, f32);
    r.aux_probs = mk(kHost, p + "router.aux_probs", {Tl, E}, f32);
    r.lse = mk(kHost, p + "router.lse", {Tl}, f32);
    r.selected = mk(kHost, p + "router.selected", {Tl, k}, i64);
    r.top_value = mk(kHost, p + "router.top_value", {Tl, k}, f32);
    r.weight = mk(kHost, p + "router.weight", {Tl, k}, f32);
    r.slot = mk(kHost, p + "router.slot", {Tl, k}, i64);
    r.counts = mk(kHost, p + "router.counts", {E}, i64);
    r.group_rows = mk(kHost, p + "router.group_rows", {E}, i64);
    r.perm_token = mk(kHost, p + "router.perm_token", {Nmax}, i64);
    r.perm_weight = mk(kHost, p + "router.perm_weight", {Nmax}, f32);
    r.scratch = mk(kHost, p + "router.scratch", {std::max(Tl * k, E)}, i64);
  }
}

// What only backward needs: the head's loss and gradient, the residual gradient, and the
// gradients of every layer's activations.
void backward_buffers(const ModelSpec& sp, const DecoderOptions& o, const Dims& d, BufferMaker& mk,
                      Scratch& s) {
  const int64_t T = d.T, Tl = d.Tl, H = d.H, V = d.V, Nmax = d.Nmax;
  const DType c = o.compute, f32 = DType::f32, i64 = DType::i64;
  if (d.last) {
    s.dlogits = mk(kActs, "dlogits", {T, V}, c);
    s.ce_loss = mk(kActs, "ce loss", {T}, f32);
    s.ce_loss_host = mk(kHost, "ce loss (host)", {T}, f32);
    if (d.tp > 1) {
      s.ce_max = mk(kActs, "ce row max", {T}, f32);
      s.ce_sum = mk(kActs, "ce sum exp", {T}, f32);
      s.ce_target = mk(kActs, "ce target logit", {T}, f32);
    }
    s.valid = mk(kHost, "valid targets", {1}, i64);
  }
  s.dres = mk(kActs, "dresidual f32", {Tl, H}, f32);
  if (c != f32) s.dres_c = mk(kActs, "dresidual compute", {Tl, H}, c);
  if (d.sp) {
    if (d.first) s.dres_full = mk(kActs, "dresidual gathered", {T, H}, f32);
    s.dfull = mk(kActs, "dresidual compute gathered", {T, H}, c);
    s.dh_full = mk(kActs, "dh partial", {T, H}, c);
    s.reduced = mk(kActs, "row-parallel sum (local rows)", {Tl, H}, c);
  }
  s.dx = mk(kActs, "dx", {Tl, H}, c);
  s.dh = mk(kActs, "dh", {Tl, H}, c);
  s.dq = mk(kActs, "dq", {T, d.Dq}, c);
  s.dattn = mk(kActs, "dattn", {T, d.Dq}, c);
  s.dk = mk(kActs, "dk", {T, d.Dkv}, c);
  s.dv = mk(kActs, "dv", {T, d.Dkv}, c);
  const int64_t Fmax = std::max(d.any_dense ? T * d.F : 0, d.any_moe ? Tl * d.Fs : 0);
  if (Fmax > 0) {
    s.dact = mk(kActs, "dact", {Fmax}, c);
    s.dgate = mk(kActs, "dgate", {Fmax}, c);
    s.dup = mk(kActs, "dup", {Fmax}, c);
  }
  if (!d.any_moe) return;
  const int64_t E = d.E;
  s.dy = mk(kActs, "experts.dy", {Nmax, H}, c);
  s.dxg = mk(kActs, "experts.dx", {Nmax, H}, c);
  s.dea = mk(kActs, "experts.dact", {d.Smax, d.Fe}, c);
  s.deg = mk(kActs, "experts.dgate", {d.Smax, d.Fe}, c);
  s.deu = mk(kActs, "experts.dup", {d.Smax, d.Fe}, c);
  if (d.dispatch) {
    const int64_t S = d.Smax;
    s.d_dxe = mk(kActs, "dispatch.expert dx", {S, H}, c);
    s.d_drow_e = mk(kActs, "dispatch.expert dprob", {S}, f32);
  }
  s.drow = mk(kActs, "experts.dprob", {Nmax}, f32);
  s.drow_host = mk(kHost, "experts.dprob (host)", {Nmax}, f32);
  s.drouter_host = mk(kHost, "drouter (host)", {Tl, E}, f32);
  s.drouter = mk(kActs, "drouter f32", {Tl, E}, f32);
  s.drouter_c = mk(kActs, "drouter compute", {Tl, E}, c);
  if (sp.moe.shared_expert_gate) {
    s.ds = mk(kActs, "dshared scale", {Tl}, f32);
    s.ds_host = mk(kHost, "dshared scale (host)", {Tl}, f32);
    s.dsl_c = mk(kActs, "dshared gate logit", {Tl, 1}, c);
  }
}

// Inference: every layer's KV cache, the step's metadata and the head's logits.
void inference_buffers(const ModelSpec& sp, const DecoderOptions& o, const Dims& d, BufferMaker& mk,
                       InferenceBuffers& b) {
  const InferenceOptions& io = o.infer;
  const DType c = o.compute, f32 = DType::f32, i64 = DType::i64, i32 = DType::i32;
  const int64_t T = d.T, N = io.max_sequences,
                MB = (io.max_context + io.kv_block_size - 1) / io.kv_block_size;
  const int64_t R = io.max_logit_rows > 0 ? io.max_logit_rows : N;
  const Shape cache = {io.kv_blocks, io.kv_block_size, d.Dkv / sp.head_dim, sp.head_dim};
  for (int64_t l = d.Lb; l < d.Le; ++l) {
    b.k_cache.push_back(mk(kCache, "layer " + std::to_string(l) + ".k", cache, c));
    b.v_cache.push_back(mk(kCache, "layer " + std::to_string(l) + ".v", cache, c));
  }
  b.max_blocks = MB;
  b.slots = mk(kActs, "step.slots", {T}, i64);
  b.slots_host = mk(kHost, "step.slots (host)", {T}, i64);
  b.positions_host = mk(kHost, "step.positions (host)", {T}, i64);
  b.query_start = mk(kActs, "step.query_start", {N + 1}, i64);
  b.query_start_host = mk(kHost, "step.query_start (host)", {N + 1}, i64);
  b.context_len = mk(kActs, "step.context_len", {N}, i64);
  b.context_len_host = mk(kHost, "step.context_len (host)", {N}, i64);
  b.block_table = mk(kActs, "step.block_table", {N * MB}, i32);
  b.block_table_host = mk(kHost, "step.block_table (host)", {N * MB}, i32);
  b.copies = mk(kActs, "step.block copies", {N * 2}, i32);
  b.copies_host = mk(kHost, "step.block copies (host)", {N * 2}, i32);
  if (!d.last) return;
  b.logit_rows = mk(kActs, "head.rows", {R}, i64);
  b.logit_rows_host = mk(kHost, "head.rows (host)", {R}, i64);
  b.h_rows = mk(kActs, "head.norm out", {R, d.H}, c);
  b.logits = mk(kActs, "head.logits f32", {R, d.V}, f32);
  if (d.tp > 1) {
    b.logits_gathered = mk(kActs, "head.logits gathered", {d.tp * R * d.V}, f32);
    b.logits_staged = mk(kHost, "head.logits gathered (host)", {d.tp * R * d.V}, f32);
  }
  b.logits_host = mk(kHost, "head.logits (host)", {R, d.V * d.tp}, f32);
}

}  // namespace

void enumerate_buffers(const ModelSpec& sp, const DecoderOptions& o, const ParameterLayout& layout,
                       BufferMaker& mk, Allocation& a) {
  const Dims d = dims_of(sp, o, layout);
  const int64_t P = layout.total_numel();
  const int64_t T = d.T, Tl = d.Tl, H = d.H, V = d.V, Lc = d.Le - d.Lb, Nmax = d.Nmax;
  const DType c = o.compute, f32 = DType::f32, i64 = DType::i64;
  const int slots = std::max(1, o.parallel.slots);

  if (o.inference) {  // the weights once, in the compute dtype
    a.compute = mk(kCompute, std::string("weights ") + dtype_name(c), {P}, c);
  } else {
    a.master = mk(kParams, "master weights f32", {P}, f32);
    a.grads = mk(kGrads, "gradients f32", {P}, f32);
    if (c != f32) a.compute = mk(kCompute, std::string("weights ") + dtype_name(c), {P}, c);
  }
  if (o.optimizer_state && !o.inference) {
    a.adam_m = mk(kOptim, "adamw m", {P}, f32);
    a.adam_v = mk(kOptim, "adamw v", {P}, f32);
  }

  // Per microbatch slot: inputs, the residual stream, per-layer activations (all layers, or one
  // set shared by every layer and slot with recompute), the head's outputs.
  for (int i = 0; i < slots; ++i) {
    auto m = std::make_unique<Microbatch>();
    const std::string ps = slots > 1 ? "microbatch " + std::to_string(i) + "." : "";
    if (d.first || d.last) {
      m->ids = mk(kActs, ps + "ids", {T}, i64);
      m->ids_host = mk(kHost, ps + "ids (host)", {T}, i64);
    }
    if (d.last) {
      m->hf = mk(kActs, ps + "final norm out", {T, H}, c);
      m->rstd_f = mk(kActs, ps + "final norm rstd", {Tl}, f32);
    }
    if (d.last && !o.inference) {
      m->targets = mk(kActs, ps + "targets", {T}, i64);
      m->targets_host = mk(kHost, ps + "targets (host)", {T}, i64);
      m->logits = mk(kActs, ps + "logits", {T, V}, c);
      m->ce_lse = mk(kActs, ps + "ce lse", {T}, f32);
    }
    m->xs.resize(size_t(Lc + 1));
    for (int64_t l = 0; l <= Lc; ++l)
      m->xs[size_t(l)] = mk(kActs,
                            ps + (l < Lc   ? "x " + std::to_string(d.Lb + l)
                                  : d.last ? std::string("x final")
                                           : "x out"),
                            {Tl, H}, c);
    if (!o.recompute && !o.inference) {
      m->acts.resize(size_t(Lc));
      for (int64_t l = 0; l < Lc; ++l) {
        const int64_t g = d.Lb + l;
        layer_buffers(sp, o, d, mk, ps + "layer " + std::to_string(g) + ".", !sp.is_moe_layer(g),
                      sp.is_moe_layer(g), m->acts[size_t(l)]);
      }
    }
    m->aux_grad.assign(size_t(d.E), 0.0);
    a.mbs.push_back(std::move(m));
  }
  if (o.recompute || o.inference) {  // one set of layer activations, reused by every layer
    a.shared_acts.resize(1);
    layer_buffers(sp, o, d, mk, o.inference ? "layer." : "layer (recomputed).", d.any_dense,
                  d.any_moe, a.shared_acts[0]);
  }

  Scratch& s = a.s;
  s.positions = mk(kActs, "positions", {T}, i64);
  s.inv_freq = mk(kActs, "rope inv_freq", {sp.head_dim / 2}, f32);
  s.ones = mk(kActs, "ones", {T}, c);
  if (d.sp) s.hn_local = mk(kActs, "norm out (local rows)", {Tl, H}, c);
  if (d.tp > 1) s.partial = mk(kActs, "row-parallel partial", {T, H}, c);
  if (d.any_moe) {
    s.y = mk(kActs, "experts.y", {Nmax, H}, c);
    if (d.dispatch) {
      const int64_t S = d.Smax;
      DispatchBuffers& db = s.dispatch;
      db.src_x = mk(kActs, "dispatch.source x", {S, H}, c);
      db.src_y = mk(kActs, "dispatch.source y", {S, H}, c);
      db.recv = mk(kActs, "dispatch.received", {S, H}, c);
      db.src_p = mk(kActs, "dispatch.source prob", {S}, f32);
      db.recv_p = mk(kActs, "dispatch.received prob", {S}, f32);
      s.d_ye = mk(kActs, "dispatch.expert y", {S, H}, c);
      db.idx_host = mk(kHost, "dispatch.idx (host)", {S}, i64);
    }
    if (sp.moe.shared_expert_gate) s.sg_host = mk(kHost, "shared gate (host)", {Tl}, f32);
    s.moe_counts = mk(kHost, "moe counts", {d.Lm * d.E}, i64);
    s.moe_stats = mk(kHost, "moe statistics", {d.E + 1}, f32);
  }
  if (o.inference)
    inference_buffers(sp, o, d, mk, a.inf);
  else
    backward_buffers(sp, o, d, mk, s);
}

MemoryPlan Decoder::memory_plan(const ModelSpec& spec, const DecoderOptions& opt) {
  return memory_plan(spec, opt, shard_of(opt));
}

MemoryPlan Decoder::memory_plan(const ModelSpec& spec, const DecoderOptions& opt,
                                const ShardSpec& shard) {
  MemoryPlan plan;
  BufferMaker mk;
  mk.planning = true;
  mk.plan = &plan;
  Allocation unused;
  const ModelSpec sp = effective_spec(spec, opt);
  enumerate_buffers(sp, opt, decoder_layout(sp, opt, shard), mk, unused);
  return plan;
}

ParameterLayout decoder_layout(const ModelSpec& sp, const DecoderOptions& o,
                               const ShardSpec& shard) {
  ParameterLayout layout(sp, shard);
  if (o.inference && o.infer.weights.packs())
    layout.set_packed(packed_weight_names(layout, o.infer.weights));
  return layout;
}

}  // namespace origami::models
