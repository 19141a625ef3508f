// The decoder's internals shared by its source files (not part of the API): the per-layer views
// of weights and activations, the buffers of a microbatch and the shared scratch, the sizes of
// this rank's part of the model, and the one enumeration of every buffer (decoder_buffers.cpp)
// that both plans and allocates them.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "models/decoder.h"
#include "models/moe_router.h"
#include "ops/gemm.h"
#include "parallel/expert_dispatcher.h"
#include "runtime/arena.h"
#include "runtime/tensor.h"

namespace origami::models {

// ---- buffers ------------------------------------------------------------------------------------

// One layer's weights (compute dtype) or gradients (f32), as views into a ParameterBuffer.
struct LayerWeights {
  Tensor ln1, wq, bq, wk, bk, wv, bv, wo, ln2;  // attention
  Tensor gate, up, down;                        // dense MLP
  Tensor router, e_gate, e_up, e_down;          // MoE: [E,H], [E,Fe,H], [E,Fe,H], [E,H,Fe]
  Tensor s_gate, s_up, s_down, s_expert_gate;   // shared expert
};

// Inference: one layer's linears in packed form (ops/qlinear.h), null where ops::gemm runs on the
// LayerWeights tensor instead. Experts: arrays of the local experts' weights.
struct LayerPacked {
  const ops::PackedLinear *q = nullptr, *k = nullptr, *v = nullptr, *o = nullptr;
  const ops::PackedLinear *gate = nullptr, *up = nullptr, *down = nullptr;
  const ops::PackedLinear *e_gate = nullptr, *e_up = nullptr, *e_down = nullptr;  // [El]
  const ops::PackedLinear *s_gate = nullptr, *s_up = nullptr, *s_down = nullptr;
  const ops::PackedLinear* router = nullptr;  // bf16 compute: a view of the router [E,H]
};

// Activations of one layer kept for backward (per microbatch slot, or one shared set with
// recompute). T = B*S rows, Tl = the rows this rank holds (T/tp with sequence parallelism), N =
// rows of the permuted (token, expert) copies; q/k/v/attn/gate/up are this rank's TP columns.
struct LayerActivations {
  Tensor hn1;                  // [T,H]      rmsnorm(x_l) (gathered over TP with SP)
  Tensor rstd1;                // [Tl] f32
  Tensor q;                    // [T,Hq*D]   after rope
  Tensor k, v;                 // [T,Hkv*D]  k after rope
  Tensor attn;                 // [T,Hq*D]   attention output
  Tensor lse;                  // [B,Hq,S] f32
  Tensor x_mid;                // [Tl,H]     x_l + attn Wo^T
  Tensor hn2;                  // [T,H]      rmsnorm(x_mid) (MoE: its first Tl rows)
  Tensor rstd2;                // [Tl] f32
  Tensor gate, up, act;        // dense MLP [T,F]
  Tensor router_logits;        // [Tl,E] f32
  Tensor perm_token;           // [Nmax] i64
  Tensor perm_weight;          // [Nmax] f32
  Tensor xg;                   // [Nmax,H]  gathered token copies
  Tensor eg, eu, ea;           // [Nmax,Fe] expert gate, up, swiglu * prob
  Tensor sg_logit;             // [Tl,1] f32 shared-expert gate logit
  Tensor s_scale;              // [Tl] f32   sigmoid(sg_logit)
  Tensor s_gate, s_up, s_act;  // [Tl,Fs]    shared expert
  RouterBuffers router;        // host
  // Experts across ranks: the layer's exchange (parallel/expert_dispatcher.h) and the rows this
  // rank's experts compute, in expert order.
  DispatchState dispatch;
  Tensor xe;  // [Smax,H] expert-order input rows
  Tensor pe;  // [Smax] f32 their routing weights
};

// One microbatch in flight through this chunk (a pipeline holds several).
struct Microbatch {
  Tensor ids, targets;                 // [T] i64 (device)
  Tensor ids_host, targets_host;       // [T] i64 (host staging)
  std::vector<Tensor> xs;              // [Lc+1] x [Tl,H]: chunk input, each layer's output
  Tensor hf, rstd_f;                   // [T,H] final norm out (gathered), [Tl] rstd
  Tensor logits;                       // [T,V] this rank's vocabulary columns
  Tensor ce_lse;                       // [T] f32
  std::vector<LayerActivations> acts;  // [Lc] (empty with recompute)
  int64_t n_valid = 0;                 // valid targets of the whole batch (over dp)
  std::vector<double> aux_grad;        // [E] d loss / d aux_probs, from the forward's counts
};

// Buffers shared by all layers and microbatches.
struct Scratch {
  Tensor positions;                  // [T] i64 (device)
  Tensor inv_freq;                   // [D/2] f32
  Tensor ones;                       // [T] compute: bias add and bias gradient as rank-1 GEMMs
  Tensor dlogits;                    // [T,V]
  Tensor ce_loss, ce_loss_host;      // [T] f32
  Tensor ce_max, ce_sum, ce_target;  // [T] f32 (vocabulary-parallel cross-entropy)
  Tensor dres;                       // [Tl,H] f32 gradient of the residual stream
  Tensor dres_c;                     // [Tl,H] compute copy of dres (bf16 only; else dres)
  Tensor dres_full;                  // [T,H] f32 gathered dres (SP; embedding backward)
  Tensor dfull;                      // [T,H] compute: dres_c gathered over TP (SP; else dres_c)
  Tensor dx, dh;                     // [Tl,H] compute
  Tensor dh_full;                    // [T,H] compute: partial dh before the TP sum (else dh)
  Tensor hn_local;                   // [Tl,H] compute: norm output before the gather (SP)
  Tensor partial;                    // [T,H] compute: row-parallel output before the TP sum
  Tensor reduced;                    // [Tl,H] compute: its reduce-scatter (SP)
  Tensor dq, dattn;                  // [T,Hq*D]
  Tensor dk, dv;                     // [T,Hkv*D]
  Tensor dact, dgate, dup;           // [T*max(F,Fs)] flat
  Tensor y, dy, dxg;                 // [Nmax,H]
  Tensor dea, deg, deu;              // [Nmax,Fe]
  Tensor drow, drow_host;            // [Nmax] f32
  Tensor drouter_host, drouter, drouter_c;  // [Tl,E] f32 host, f32 device, compute
  Tensor sg_host, ds, ds_host, dsl_c;       // [Tl] f32 host, [Tl] f32, [Tl] host, [Tl,1] compute
  DispatchBuffers dispatch;                 // the expert dispatcher's scratch
  Tensor d_ye, d_dxe;                       // [Smax,H] expert-order outputs / input gradients
  Tensor d_drow_e;                          // [Smax] f32
  Tensor moe_counts;                        // [Lm*E] i64 host: token counts to reduce over ranks
  Tensor moe_stats;                         // [E+1] f32 host: aux prob sums, z-loss
  Tensor valid;                             // [1] i64 host: valid targets to reduce over dp
};

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

inline constexpr const char* kParams = "parameters";
inline constexpr const char* kGrads = "gradients";
inline constexpr const char* kCompute = "compute weights";
inline constexpr const char* kOptim = "optimizer state";
inline constexpr const char* kActs = "activations";
inline constexpr const char* kHost = "host";
inline constexpr const char* kCache = "kv cache";

inline LayerWeights layer_weights(const ParameterBuffer& p, const LayerParamNames& n) {
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

// ---- small GEMM wrappers: every linear layer is y = x W^T ---------------------------------

// y [T,N] = x [T,K] @ w[N,K]^T + beta * y
inline void linear(const Tensor& x, const Tensor& w, Tensor y, float beta = 0.0f) {
  ops::gemm(x, w, y, {false, true, 1.0f, beta});
}
// dx [T,K] = dy [T,N] @ w [N,K] + beta * dx
inline void linear_dx(const Tensor& dy, const Tensor& w, Tensor dx, float beta = 0.0f) {
  ops::gemm(dy, w, dx, {false, false, 1.0f, beta});
}
// dw [N,K] (f32) += dy [T,N]^T @ x [T,K]
inline void linear_dw(const Tensor& dy, const Tensor& x, Tensor dw) {
  ops::gemm(dy, x, dw, {true, false, 1.0f, 1.0f});
}
// y [T,N] += ones [T,1] @ b [1,N]
inline void add_bias(const Tensor& ones, const Tensor& b, Tensor y) {
  const int64_t T = y.size(0), N = y.size(1);
  ops::gemm(ones.narrow(0, 0, T).view({T, 1}), b.view({1, N}), y, {false, false, 1.0f, 1.0f});
}
// db [N] (f32) += ones [1,T] @ dy [T,N]
inline void bias_grad(const Tensor& ones, const Tensor& dy, Tensor db) {
  const int64_t T = dy.size(0), N = dy.size(1);
  Tensor out = db.view({1, N});
  ops::gemm(ones.view({1, T}), dy, out, {false, false, 1.0f, 1.0f});
}

inline Tensor rows_of(const Tensor& t, int64_t n) {
  return t.narrow(0, 0, n);
}
// A [rows, cols] view of the front of a flat buffer.
inline Tensor front(const Tensor& flat, int64_t rows, int64_t cols) {
  return flat.narrow(0, 0, rows * cols).view({rows, cols});
}

// Inference: the KV caches, the step's metadata (device buffers and their host staging), the
// head's buffers, and the full-size views that each step narrows to its rows (set_step_rows).
// T = most rows of a step, Nseq = most sequences, MB = block-table columns, R = logit rows.
struct InferenceBuffers {
  std::vector<Tensor> k_cache, v_cache;  // [Lc] x [blocks, block_size, Hkv, D] compute
  Tensor slots, slots_host;              // [T] i64
  Tensor positions_host;                 // [T] i64
  Tensor query_start, query_start_host;  // [Nseq+1] i64
  Tensor context_len, context_len_host;  // [Nseq] i64
  Tensor block_table, block_table_host;  // [Nseq*MB] i32
  Tensor copies, copies_host;            // [Nseq*2] i32
  Tensor logit_rows, logit_rows_host;    // [R] i64
  Tensor h_rows;                         // [R,H] compute: final-norm rows with logits
  Tensor logits;                         // [R,V/tp] f32 (device)
  Tensor logits_gathered;                // [tp*R*V/tp] f32 (device; tp > 1)
  Tensor logits_staged;                  // [tp*R*V/tp] f32 host (tp > 1)
  Tensor logits_host;                    // [R,V] f32 host
  int64_t max_blocks = 0;                // MB
  // The full-size buffers that a step's views narrow: the one microbatch, the one set of layer
  // activations, and the row-sized scratch.
  Microbatch full_mb;
  LayerActivations full_acts;
  Tensor full_positions, full_ones, full_hn_local, full_partial, full_sg_host;
};

// The part of the model a decoder with these options holds (its communicators' sizes and ranks).
ShardSpec shard_of(const DecoderOptions& o);
// The parameters a decoder with these options holds: inference leaves its packed linears out of
// the buffer (DecoderOptions::infer.weights).
ParameterLayout decoder_layout(const ModelSpec& sp, const DecoderOptions& o,
                               const ShardSpec& shard);
// The spec a decoder runs: inference routes MoE tokens dropless, whatever capacity it trained with.
ModelSpec effective_spec(const ModelSpec& spec, const DecoderOptions& o);

// Sizes of this rank's part of the model and of one microbatch (or inference step).
struct Dims {
  int tp = 1;
  bool sp = false;
  int64_t T = 0, Tl = 0, H = 0, V = 0, Lb = 0, Le = 0, Dq = 0, Dkv = 0, Hq = 0, F = 0;
  int64_t E = 0, k = 0, Fe = 0, Fs = 0, Nmax = 0, Lm = 0;
  bool first = false, last = false, any_dense = false, any_moe = false;
  bool dispatch = false;            // experts across ranks
  int64_t G = 1, El = 0, Smax = 0;  // tp-ep group size, local experts, source-order rows
};
Dims dims_of(const ModelSpec& sp, const DecoderOptions& o, const ParameterLayout& layout);

// Every buffer of a decoder, as carved from its arenas.
struct Allocation {
  Tensor master, grads, compute, adam_m, adam_v;  // flat [P]
  std::vector<std::unique_ptr<Microbatch>> mbs;
  std::vector<LayerActivations> shared_acts;
  Scratch s;
  InferenceBuffers inf;
};

// Records (planning) or carves (allocating) every buffer of a decoder with these options.
void enumerate_buffers(const ModelSpec& sp, const DecoderOptions& o, const ParameterLayout& layout,
                       BufferMaker& mk, Allocation& a);

}  // namespace origami::models
