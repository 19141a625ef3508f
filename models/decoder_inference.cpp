// The decoder's inference step: the same layers as training (decoder.cpp), run over a batch
// description instead of a [B,S] microbatch, with every layer's keys and values kept in a paged
// KV cache.
//
//   step of T tokens of N sequences (prefill chunks and decode tokens mixed), rows padded to a
//   multiple of tp with sequence parallelism:
//   x = embed(ids)                                                       [T,H] (or x_in)
//   per layer l:  q, k, v as in training, rope at each token's own position
//                 K_l[slot[t]], V_l[slot[t]] = k[t], v[t]                 cache [blocks,bs,Hkv,D]
//                 attn = paged_attention(q, K_l, V_l, block tables)      causal per sequence
//                 x += attn Wo^T;  x += mlp(rmsnorm(x))  (SwiGLU, or MoE routed dropless)
//   logits = rmsnorm(x[logit_rows]) Wlm^T                                [R,V] f32, gathered
//                                                                        over TP's vocabulary
// Every buffer is carved at construction (decoder_buffers.cpp) for the largest step; a step
// narrows views of them to its rows, so it allocates nothing.
#include <cstring>
#include <string>

#include "models/decoder.h"
#include "models/decoder_internal.h"
#include "ops/index.h"
#include "ops/norm.h"
#include "ops/paged_attention.h"
#include "ops/qlinear.h"
#include "parallel/communicator.h"
#include "runtime/error.h"

namespace origami::models {

namespace {
Tensor narrowed(const Tensor& t, int64_t rows) {
  return t.defined() ? t.narrow(0, 0, rows) : Tensor();
}
// Copies n host values into the front of a host staging tensor and on to its device twin.
template <typename T>
Tensor stage(const T* src, int64_t n, Tensor& host, Tensor& dev) {
  Tensor h = host.narrow(0, 0, n);
  if (n > 0) std::memcpy(h.data(), src, size_t(n) * sizeof(T));
  Tensor d = dev.narrow(0, 0, n);
  if (d.data() != h.data()) d.copy_from(h);
  return d;
}
}  // namespace

ops::PackedLinearOptions Decoder::packed_options(float beta) const {
  ops::PackedLinearOptions po;
  po.beta = beta;
  po.exact = opt_.infer.weights.exact;
  po.batch_invariant = opt_.infer.batch_invariant;
  return po;
}

void Decoder::project(const Tensor& x, const Tensor& w, const ops::PackedLinear* packed, Tensor y,
                      float beta) const {
  if (packed == nullptr) return linear(x, w, y, beta);
  ops::packed_linear(x, *packed, y, packed_options(beta));
}

void Decoder::project_group(const Tensor& x, std::initializer_list<Projection> linears) const {
  const ops::PackedLinear* w[ops::kMaxPackedGroup];
  Tensor* y[ops::kMaxPackedGroup];
  size_t n = 0;
  for (const Projection& p : linears) {
    if (p.packed == nullptr || n == std::size(w)) {  // not packed: one by one
      for (const Projection& q : linears) project(x, q.w, q.packed, q.y);
      return;
    }
    w[n] = p.packed;
    y[n++] = &p.y;
  }
  ops::packed_linear_group(x, {w, n}, {y, n}, packed_options());
}

void Decoder::build_packed_views() {
  // Every dense linear is also viewed as a PackedLinear of the compute dtype (no copy), so that
  // decode runs the small-batch kernels (ops/qlinear.h): bf16 on any device, f32 on the CPU (on a
  // GPU an f32 view would only reach cuBLAS the long way).
  const bool bf16 = opt_.compute == DType::bf16;
  const bool views = bf16 || opt_.device.is_cpu();
  const auto view = [bf16](const Tensor& t) { return bf16 ? ops::pack_bf16(t) : ops::pack_f32(t); };
  if (views)
    for (const std::string& name : linear_weight_names(layout_, true)) {
      const ParamEntry& e = layout_.entry(name);
      if (e.packed) continue;
      const Tensor& t = compute_.get(name);
      std::vector<ops::PackedLinear>& v = dense_views_[name];
      if (e.is_expert())
        for (int64_t x = 0; x < e.experts; ++x) v.push_back(view(t.select(0, x)));
      else
        v.push_back(view(t));
    }
  // The MoE router too (a tiny product the decode kernels run on one thread, where a oneDNN call
  // costs several times more).
  if (views)
    for (int64_t l = Lb_; l < Le_; ++l) {
      const std::string& r = layout_.names().layers[size_t(l)].router;
      if (!r.empty() && layout_.has(r) && !packed_.holds(r))
        dense_views_[r].push_back(view(compute_.get(r)));
    }
  const std::string& embed = layout_.names().embed;  // a tied head reads the embedding
  if (views && spec_.tie_embeddings && layout_.has_head() && layout_.has(embed))
    dense_views_[embed].push_back(view(compute_.get(embed)));
  const auto find = [&](const std::string& name) -> const ops::PackedLinear* {
    if (name.empty() || !layout_.has(name)) return nullptr;
    if (packed_.holds(name)) return &packed_.get(name, layout_.entry(name).is_expert() ? 0 : -1);
    auto it = dense_views_.find(name);
    return it == dense_views_.end() ? nullptr : it->second.data();
  };
  const ModelParamNames& names = layout_.names();
  for (int64_t l = Lb_; l < Le_; ++l) {
    const LayerParamNames& n = names.layers[size_t(l)];
    LayerPacked& p = pw_[size_t(l - Lb_)];
    p.q = find(n.q);
    p.k = find(n.k);
    p.v = find(n.v);
    p.o = find(n.o);
    p.gate = find(n.mlp_gate);
    p.up = find(n.mlp_up);
    p.down = find(n.mlp_down);
    p.e_gate = find(n.expert_gate);
    p.e_up = find(n.expert_up);
    p.e_down = find(n.expert_down);
    p.s_gate = find(n.shared_gate);
    p.s_up = find(n.shared_up);
    p.s_down = find(n.shared_down);
    p.router = find(n.router);
  }
  head_packed_ = find(spec_.tie_embeddings ? names.embed : names.lm_head);
}

int64_t Decoder::step_rows(const StepBatch& batch) const {
  const int64_t T = batch.tokens();
  return sp_ ? (T + tp_ - 1) / tp_ * tp_ : T;
}

const Tensor& Decoder::k_cache(int64_t l) const {
  ORIGAMI_CHECK(inf_ && l >= Lb_ && l < Le_, "decoder: no KV cache of layer ", l,
                " on this rank (inference decoders hold layers [", Lb_, ", ", Le_, "))");
  return inf_->k_cache[size_t(l - Lb_)];
}

const Tensor& Decoder::v_cache(int64_t l) const {
  ORIGAMI_CHECK(inf_ && l >= Lb_ && l < Le_, "decoder: no KV cache of layer ", l,
                " on this rank (inference decoders hold layers [", Lb_, ", ", Le_, "))");
  return inf_->v_cache[size_t(l - Lb_)];
}

void Decoder::set_step_rows(int64_t T) {
  InferenceBuffers& ib = *inf_;
  T_ = T;
  Tl_ = sp_ ? T / tp_ : T;
  const int64_t Tl = Tl_;
  Microbatch& m = *mbs_[0];
  const Microbatch& f = ib.full_mb;
  m.ids = narrowed(f.ids, T);
  m.ids_host = narrowed(f.ids_host, T);
  for (size_t i = 0; i < m.xs.size(); ++i) m.xs[i] = narrowed(f.xs[i], Tl);
  m.hf = narrowed(f.hf, T);
  m.rstd_f = narrowed(f.rstd_f, Tl);
  LayerActivations& a = shared_acts_[0];
  const LayerActivations& fa = ib.full_acts;
  for (auto [dst, src] : {std::pair{&a.hn1, &fa.hn1},
                          {&a.q, &fa.q},
                          {&a.k, &fa.k},
                          {&a.v, &fa.v},
                          {&a.attn, &fa.attn},
                          {&a.hn2, &fa.hn2},
                          {&a.gate, &fa.gate},
                          {&a.up, &fa.up},
                          {&a.act, &fa.act}})
    *dst = narrowed(*src, T);
  for (auto [dst, src] : {std::pair{&a.rstd1, &fa.rstd1},
                          {&a.x_mid, &fa.x_mid},
                          {&a.rstd2, &fa.rstd2},
                          {&a.router_logits, &fa.router_logits},
                          {&a.sg_logit, &fa.sg_logit},
                          {&a.s_scale, &fa.s_scale},
                          {&a.s_gate, &fa.s_gate},
                          {&a.s_up, &fa.s_up},
                          {&a.s_act, &fa.s_act},
                          {&a.router.logits, &fa.router.logits},
                          {&a.router.probs, &fa.router.probs},
                          {&a.router.aux_probs, &fa.router.aux_probs},
                          {&a.router.lse, &fa.router.lse},
                          {&a.router.selected, &fa.router.selected},
                          {&a.router.top_value, &fa.router.top_value},
                          {&a.router.weight, &fa.router.weight},
                          {&a.router.slot, &fa.router.slot}})
    *dst = narrowed(*src, Tl);
  Scratch& s = *s_;
  s.positions = narrowed(ib.full_positions, T);
  s.ones = narrowed(ib.full_ones, T);
  s.partial = narrowed(ib.full_partial, T);
  s.hn_local = narrowed(ib.full_hn_local, Tl);
  s.sg_host = narrowed(ib.full_sg_host, Tl);
}

Tensor Decoder::infer(const StepBatch& b, const Tensor& x_in) {
  ORIGAMI_CHECK(inf_, "decoder: infer() needs a decoder built with DecoderOptions::inference");
  InferenceBuffers& ib = *inf_;
  const InferenceOptions& io = opt_.infer;
  const int64_t T = b.tokens(), N = b.sequences(), rows = step_rows(b);
  ORIGAMI_CHECK(T >= 1 && rows <= opt_.seq, "decoder step: ", T, " tokens (", rows,
                " rows), the decoder runs 1 to ", opt_.seq, " rows per step");
  ORIGAMI_CHECK(N >= 1 && N <= io.max_sequences, "decoder step: ", N,
                " sequences, the decoder runs 1 to ", io.max_sequences);
  ORIGAMI_CHECK(int64_t(b.positions.size()) == T && int64_t(b.slots.size()) == T &&
                    int64_t(b.query_start.size()) == N + 1 && b.query_start[0] == 0 &&
                    b.query_start[size_t(N)] == T,
                "decoder step: positions and slots need one entry per token (", T,
                ") and query_start N+1 entries from 0 to ", T);
  ORIGAMI_CHECK(b.max_blocks >= 1 && b.max_blocks <= ib.max_blocks &&
                    int64_t(b.block_table.size()) == N * b.max_blocks,
                "decoder step: the block table must be [", N, ", max_blocks <= ", ib.max_blocks,
                "], got ", b.block_table.size(), " entries for max_blocks ", b.max_blocks);
  ORIGAMI_CHECK(b.copies.size() % 2 == 0 && int64_t(b.copies.size()) <= 2 * io.max_sequences,
                "decoder step: at most ", io.max_sequences, " block copies (src, dst pairs)");
  set_step_rows(rows);
  current_sequences_ = N;
  current_max_blocks_ = b.max_blocks;

  // Step metadata: padding rows sit at position 0, write no cache and belong to no sequence.
  int64_t* pos = ib.positions_host.data_as<int64_t>();
  int64_t* slot = ib.slots_host.data_as<int64_t>();
  for (int64_t t = 0; t < rows; ++t) {
    pos[t] = t < T ? b.positions[size_t(t)] : 0;
    slot[t] = t < T ? b.slots[size_t(t)] : -1;
  }
  s_->positions.copy_from(ib.positions_host.narrow(0, 0, rows));
  Tensor slots = ib.slots.narrow(0, 0, rows);
  slots.copy_from(ib.slots_host.narrow(0, 0, rows));
  stage(b.query_start.data(), N + 1, ib.query_start_host, ib.query_start);
  stage(b.context_len.data(), N, ib.context_len_host, ib.context_len);
  stage(b.block_table.data(), N * b.max_blocks, ib.block_table_host, ib.block_table);
  const int64_t n_copies = int64_t(b.copies.size()) / 2;
  if (n_copies > 0) {
    const Tensor pairs =
        stage(b.copies.data(), 2 * n_copies, ib.copies_host, ib.copies).view({n_copies, 2});
    for (size_t l = 0; l < ib.k_cache.size(); ++l)
      ops::paged_kv_copy_blocks(ib.k_cache[l], ib.v_cache[l], pairs);
  }

  Microbatch& m = *mbs_[0];
  if (is_first_chunk()) {
    int64_t* ids = m.ids_host.data_as<int64_t>();
    for (int64_t t = 0; t < rows; ++t) {
      const int64_t id = t < T ? b.ids[size_t(t)] : 0;
      ORIGAMI_CHECK(id >= 0 && id < spec_.vocab, "decoder step: token id ", id,
                    " outside the vocabulary of ", spec_.vocab);
      ids[t] = id;
    }
    m.ids.copy_from(m.ids_host);
    embed_tokens(m);
  } else {
    load_chunk_input(m, x_in);
  }
  for (double& p : aux_prob_sums_) p = 0;
  for (int64_t l = Lb_; l < Le_; ++l) layer_forward(l, shared_acts_[0]);
  if (!is_last_chunk()) return Tensor();
  return infer_head(b);
}

void Decoder::attention_paged(int64_t l, LayerActivations& a) {
  InferenceBuffers& ib = *inf_;
  const int64_t T = T_, D = spec_.head_dim, N = int64_t(current_sequences_);
  Tensor& kc = ib.k_cache[size_t(l - Lb_)];
  Tensor& vc = ib.v_cache[size_t(l - Lb_)];
  ops::paged_kv_write(a.k.view({T, hkv_, D}), a.v.view({T, hkv_, D}), ib.slots.narrow(0, 0, T), kc,
                      vc);
  ops::PagedAttentionParams p;
  p.window = spec_.sliding_window > 0 ? spec_.sliding_window + 1 : -1;  // ops: i - j < window
  p.batch_invariant = opt_.infer.batch_invariant;
  Tensor out = a.attn.view({T, hq_, D});
  ops::paged_attention_forward(
      a.q.view({T, hq_, D}), kc, vc, ib.query_start.narrow(0, 0, N + 1),
      ib.context_len.narrow(0, 0, N),
      ib.block_table.narrow(0, 0, N * current_max_blocks_).view({N, current_max_blocks_}), p, out);
}

Tensor Decoder::infer_head(const StepBatch& b) {
  InferenceBuffers& ib = *inf_;
  Microbatch& m = *mbs_[0];
  const int64_t R = int64_t(b.logit_rows.size()), T = b.tokens(), V = vocab_;
  const int64_t R_max = ib.logits.size(0);
  ORIGAMI_CHECK(R >= 1 && R <= R_max, "decoder step: ", R,
                " rows of logits asked, the decoder returns 1 to ", R_max, " per step");
  for (int64_t r : b.logit_rows)
    ORIGAMI_CHECK(r >= 0 && r < T, "decoder step: logit row ", r, " outside the step's ", T,
                  " tokens");
  const Tensor rows = stage(b.logit_rows.data(), R, ib.logit_rows_host, ib.logit_rows);
  // hf [T,H] = rmsnorm(x_L) (this rank's rows, gathered over TP with SP); h [R,H] = hf[rows]
  final_norm(m);
  Tensor h = ib.h_rows.narrow(0, 0, R);
  ops::gather_rows(m.hf, rows, h);
  // logits [R,V/tp] f32 = h Wlm^T (this rank's vocabulary columns)
  const std::string& lm = spec_.tie_embeddings ? layout_.names().embed : layout_.names().lm_head;
  Tensor lg = ib.logits.narrow(0, 0, R);
  project(h, compute_.get(lm), head_packed_, lg);
  Tensor out = ib.logits_host.narrow(0, 0, R);
  if (tp_ == 1) {
    out.copy_from(lg);
    return out;
  }
  // [tp][R][V/tp] gathered -> [R][V]
  Tensor g = ib.logits_gathered.narrow(0, 0, tp_ * R * V);
  opt_.parallel.tp->all_gather(lg.view({R * V}), g);
  Tensor staged = ib.logits_staged.narrow(0, 0, tp_ * R * V);
  if (staged.data() != g.data()) staged.copy_from(g);
  const float* in = staged.data_as<float>();
  float* o = out.data_as<float>();
  for (int64_t t = 0; t < tp_; ++t)
    for (int64_t r = 0; r < R; ++r)
      std::memcpy(o + r * V * tp_ + t * V, in + (t * R + r) * V, size_t(V) * sizeof(float));
  return out;
}

}  // namespace origami::models
