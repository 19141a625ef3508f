#include "models/decoder.h"

#include <algorithm>
#include <ostream>

#include "models/decoder_internal.h"
#include "ops/activation.h"
#include "ops/attention.h"
#include "ops/cross_entropy.h"
#include "ops/embedding.h"
#include "ops/gemm.h"
#include "ops/norm.h"
#include "ops/rope.h"
#include "parallel/communicator.h"
#include "parallel/context_parallel.h"
#include "parallel/expert_dispatcher.h"
#include "parallel/tensor_parallel.h"
#include "runtime/error.h"

namespace origami::models {

Decoder::Decoder(const ModelSpec& spec, const DecoderOptions& opt)
    : spec_(effective_spec(spec, opt)),
      opt_(opt),
      layout_(decoder_layout(spec_, opt, shard_of(opt))) {
  ORIGAMI_CHECK(opt.compute == DType::f32 || opt.compute == DType::bf16,
                "decoder: compute dtype must be f32 or bf16, got ", dtype_name(opt.compute));
  if (opt.inference) {
    const InferenceOptions& io = opt.infer;
    ORIGAMI_CHECK(opt.batch == 1 && opt.parallel.slots == 1 && !opt.parallel.cp,
                  "decoder: inference runs one batch description per step (batch 1, one slot, "
                  "no context parallelism)");
    ORIGAMI_CHECK(io.kv_blocks >= 1 && io.kv_block_size >= 1 && io.max_sequences >= 1 &&
                      io.max_context >= 1 && io.max_logit_rows >= 0,
                  "decoder: inference needs kv_blocks, kv_block_size, max_sequences and "
                  "max_context >= 1, got ",
                  io.kv_blocks, ", ", io.kv_block_size, ", ", io.max_sequences, ", ",
                  io.max_context);
  }
  ORIGAMI_CHECK(opt.batch >= 1 && opt.seq >= 1,
                "decoder: batch and seq must be >= 1, got B=", opt.batch, " S=", opt.seq);
  ORIGAMI_CHECK(opt.parallel.slots >= 1, "decoder: parallel.slots must be >= 1");
  const Dims d = dims_of(spec_, opt_, layout_);
  ORIGAMI_CHECK(
      !(spec_.is_moe() && spec_.moe.aux_loss_coeff > 0 && (d.Lb != 0 || d.Le != spec_.layers)),
      "decoder: the MoE load-balancing loss spans every layer; with pipeline stages it "
      "is not supported yet (set model.moe.aux_loss_coeff to 0, or pp to 1)");
  tp_ = d.tp;
  tp_rank_ = layout_.shard().tp_rank;
  sp_ = d.sp;
  T_ = d.T;
  Tl_ = d.Tl;
  Lb_ = d.Lb;
  Le_ = d.Le;
  hq_ = d.Hq;
  hkv_ = d.Dkv / spec_.head_dim;
  ffn_ = d.F;
  vocab_ = d.V;
  vocab_offset_ = int64_t(tp_rank_) * d.V;
  const ShardSpec& shard = layout_.shard();
  ORIGAMI_CHECK(!d.dispatch || !spec_.is_moe() ||
                    (opt.parallel.tp_ep && (shard.ep == 1 || opt.parallel.ep) &&
                     (shard.etp == 1 || opt.parallel.etp)),
                "decoder: expert parallelism needs the ep, etp and tp-ep communicators");
  plan_ = memory_plan(spec_, opt);
  BufferMaker mk;
  mk.planning = false;
  for (const std::string& name : plan_.arenas()) {
    const Device dev = name == kHost ? Device::cpu() : opt.device;
    arenas_.push_back(std::make_unique<Arena>(name, plan_.arena_bytes(name), dev));
    mk.arenas[name] = arenas_.back().get();
  }
  Allocation a;
  enumerate_buffers(spec_, opt_, layout_, mk, a);
  if (opt.inference) {  // one copy of the weights, in the compute dtype
    compute_ = ParameterBuffer(layout_, a.compute);
    compute_.zero();
    master_ = compute_;
  } else {
    master_ = ParameterBuffer(layout_, a.master);
    grads_ = ParameterBuffer(layout_, a.grads);
    master_.zero();
    grads_.zero();
    compute_ = opt.compute == DType::f32 ? master_ : ParameterBuffer(layout_, a.compute);
  }
  if (opt.optimizer_state && !opt.inference) {
    adam_m_ = ParameterBuffer(layout_, a.adam_m);
    adam_v_ = ParameterBuffer(layout_, a.adam_v);
    adam_m_.zero();
    adam_v_.zero();
  }
  mbs_ = std::move(a.mbs);
  shared_acts_ = std::move(a.shared_acts);
  s_ = std::make_unique<Scratch>(std::move(a.s));
  if (d.dispatch && d.any_moe)
    dispatcher_ = make_expert_dispatcher(
        opt.parallel.allgather_dispatcher ? DispatcherKind::all_gather : DispatcherKind::all_to_all,
        {opt.parallel.ep, opt.parallel.etp, opt.parallel.tp_ep}, spec_.moe.num_experts,
        spec_.hidden, s_->dispatch);

  const ModelParamNames& names = layout_.names();
  for (int64_t l = Lb_; l < Le_; ++l) {
    w_.push_back(layer_weights(compute_, names.layers[size_t(l)]));
    if (!opt.inference) g_.push_back(layer_weights(grads_, names.layers[size_t(l)]));
  }
  pw_.resize(w_.size());
  if (opt.inference) {
    packed_ = PackedWeights(layout_, opt.infer.weights, opt.device);
    build_packed_views();
    inf_ = std::make_unique<InferenceBuffers>(std::move(a.inf));
    inf_->full_mb = *mbs_[0];
    inf_->full_acts = shared_acts_[0];
  }
  if (opt.inference) {
    inf_->full_positions = s_->positions;
    inf_->full_ones = s_->ones;
    inf_->full_hn_local = s_->hn_local;
    inf_->full_partial = s_->partial;
    inf_->full_sg_host = s_->sg_host;
  }
  int64_t m = 0;
  for (int64_t l = 0; l < spec_.layers; ++l) moe_index_.push_back(spec_.is_moe_layer(l) ? m++ : -1);
  expert_counts_.assign(size_t(m), std::vector<int64_t>(size_t(spec_.moe.num_experts), 0));
  expert_bias_.assign(size_t(m), std::vector<float>(size_t(spec_.moe.num_experts), 0.0f));
  aux_prob_sums_.assign(size_t(spec_.moe.num_experts), 0.0);

  // Constant inputs: positions (t mod S; with CP the zigzag positions of this rank's tokens),
  // rope frequencies, ones.
  const int64_t T = T_;
  Tensor pos = Tensor::empty({T}, DType::i64);
  Communicator* cp = opt.parallel.cp;
  if (cp && cp->size() > 1) {
    const std::vector<int64_t> zz = zigzag_positions(opt.seq * cp->size(), cp->size(), cp->rank());
    for (int64_t t = 0; t < T; ++t) pos.data_as<int64_t>()[t] = zz[size_t(t % opt.seq)];
    cp_attn_ = std::make_unique<CpAttention>(
        *cp, opt.parallel.cp_ring ? CpVariant::ring : CpVariant::all_gather, opt.batch, opt.seq,
        hq_, hkv_, spec_.head_dim, opt.compute,
        spec_.sliding_window > 0 ? spec_.sliding_window + 1 : -1, 0.0f, opt.device);
  } else {
    for (int64_t t = 0; t < T; ++t) pos.data_as<int64_t>()[t] = t % opt.seq;
  }
  s_->positions.copy_from(pos);
  s_->inv_freq.copy_from(ops::rope_inv_freq(spec_.rope));
  s_->ones.copy_from(Tensor::from_vector(std::vector<float>(size_t(T), 1.0f), {T}, opt.compute));
  if (!s_->dres_c.defined()) s_->dres_c = s_->dres;
  if (!s_->dfull.defined()) s_->dfull = s_->dres_c;
  if (!s_->dh_full.defined()) s_->dh_full = s_->dh;
  sync_compute_weights();
}

Decoder::~Decoder() = default;

void Decoder::print_plan(std::ostream& os, bool detail) const {
  const ShardSpec& sh = layout_.shard();
  const bool whole =
      sh.tp == 1 && sh.ep == 1 && sh.etp == 1 && Lb_ == 0 && Le_ == spec_.layers && !cp_attn_;
  os << "model: " << spec_.str() << ", " << layout_.parameter_count()
     << (whole ? " parameters" : " parameters on this rank") << ", B=" << opt_.batch
     << " S=" << opt_.seq << " " << dtype_name(opt_.compute) << (opt_.recompute ? " recompute" : "")
     << "\n";
  if (!whole)
    os << "this rank: layers [" << Lb_ << ", " << Le_ << "), tp " << tp_rank_ << "/" << tp_
       << (sp_ ? " sequence parallel" : "") << ", " << opt_.parallel.slots
       << " microbatch slot(s)\n";
  plan_.print(os, "memory plan", detail);
}

void Decoder::sync_compute_weights() {
  if (opt_.compute != DType::f32 && !opt_.inference) compute_.copy_from(master_);
}

void Decoder::adamw_step(const ops::AdamWParams& p) {
  ORIGAMI_CHECK(opt_.optimizer_state, "decoder: built without optimizer state");
  Tensor param = opt_.compute == DType::f32 ? Tensor() : compute_.flat();
  ops::adamw_step(master_.flat(), grads_.flat(), adam_m_.flat(), adam_v_.flat(), p, param);
}

const Tensor& Decoder::logits() const {
  return mbs_[0]->logits;
}

const RouterBuffers& Decoder::routing(int64_t layer, int slot) const {
  ORIGAMI_CHECK(!opt_.recompute, "decoder: routing() needs the activations kept (no recompute)");
  ORIGAMI_CHECK(layer >= Lb_ && layer < Le_ && spec_.is_moe_layer(layer) && slot >= 0 &&
                    slot < int(mbs_.size()),
                "decoder: no routing of layer ", layer, " slot ", slot, " on this rank (layers [",
                Lb_, ", ", Le_, "))");
  return mbs_[size_t(slot)]->acts[size_t(layer - Lb_)].router;
}

LayerActivations& Decoder::acts_for(int64_t l) {
  return opt_.recompute || opt_.inference ? shared_acts_[0] : mb().acts[size_t(l - Lb_)];
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

// The token count the z-loss mean divides by: every row of the batch over the ranks splitting it.
int64_t Decoder::z_tokens() const {
  const int64_t dp = opt_.parallel.dp ? opt_.parallel.dp->size() : 1;
  return T_ * dp;
}

LossInfo Decoder::forward(const Tensor& ids, const Tensor& targets) {
  ORIGAMI_CHECK(is_first_chunk() && is_last_chunk(),
                "decoder: forward() runs the whole model; this rank holds a pipeline chunk");
  return chunk_forward(0, ids, targets, Tensor());
}

LossInfo Decoder::forward_backward(const Tensor& ids, const Tensor& targets) {
  LossInfo info = forward(ids, targets);
  chunk_backward(0, Tensor());
  return info;
}

const Tensor& Decoder::chunk_output(int slot) const {
  return mbs_[size_t(slot)]->xs.back();
}

const Tensor& Decoder::chunk_input_grad() const {
  return s_->dres;
}

// x0 [Tl,H] = embed[ids]; with TP each rank looks up its vocabulary rows and the parts add up.
void Decoder::embed_tokens(Microbatch& b) {
  const Tensor& emb = compute_.get(layout_.names().embed);
  if (tp_ == 1) {
    ops::embedding_forward(emb, b.ids, b.xs[0]);
  } else {
    Tensor& partial = s_->partial;
    ops::embedding_forward(emb, b.ids, partial, vocab_offset_, spec_.vocab);
    tp_reduce_rows(*opt_.parallel.tp, sp_, partial, b.xs[0]);
    if (!sp_) b.xs[0].copy_from(partial);
  }
}

// x0 [Tl,H] = the previous chunk's output (pipeline stages after the first).
void Decoder::load_chunk_input(Microbatch& b, const Tensor& x_in) {
  ORIGAMI_CHECK(x_in.defined() && x_in.numel() == b.xs[0].numel(), "decoder: chunk input must be [",
                Tl_, ",", spec_.hidden, "], got ",
                x_in.defined() ? x_in.str() : std::string("undefined"));
  b.xs[0].copy_from(x_in.view(b.xs[0].shape()));
}

// hf [T,H] = rmsnorm(x_L): this rank's rows, gathered over TP with sequence parallelism.
void Decoder::final_norm(Microbatch& b) {
  const Tensor& wf = compute_.get(layout_.names().final_norm);
  if (sp_) {
    ops::rmsnorm_forward(b.xs.back(), wf, float(spec_.rms_eps), s_->hn_local, b.rstd_f);
    tp_gather_rows(*opt_.parallel.tp, s_->hn_local, b.hf);
  } else {
    ops::rmsnorm_forward(b.xs.back(), wf, float(spec_.rms_eps), b.hf, b.rstd_f);
  }
}

LossInfo Decoder::chunk_forward(int slot, const Tensor& ids, const Tensor& targets,
                                const Tensor& x_in) {
  ORIGAMI_CHECK(!inf_, "decoder: built for inference (use infer())");
  ORIGAMI_CHECK(slot >= 0 && slot < int(mbs_.size()), "decoder: slot ", slot, " of ", mbs_.size());
  cur_ = slot;
  Microbatch& b = mb();
  Scratch& s = *s_;
  const int64_t Lc = Le_ - Lb_;
  z_total_ = 0;
  for (double& p : aux_prob_sums_) p = 0;
  if (is_first_chunk()) {
    load_tokens(ids, b.ids_host, b.ids, "ids");
    embed_tokens(b);
  } else {
    load_chunk_input(b, x_in);
  }
  for (int64_t l = Lb_; l < Le_; ++l) layer_forward(l, acts_for(l));
  (void)Lc;
  if (!is_last_chunk()) {
    // This chunk's z-loss over the whole batch (the caller adds the chunks' terms).
    LossInfo li;
    Communicator* tp = sp_ ? opt_.parallel.tp : nullptr;
    Communicator* dp =
        opt_.parallel.dp && opt_.parallel.dp->size() > 1 ? opt_.parallel.dp : nullptr;
    if (z_total_ != 0 && (tp || dp)) {
      Tensor z = s.moe_stats.narrow(0, spec_.moe.num_experts, 1);
      z.data_as<float>()[0] = float(z_total_);
      if (tp) tp->all_reduce(z);
      if (dp) dp->all_reduce(z);
      z_total_ = z.data_as<float>()[0];
    }
    li.z = z_total_;
    li.loss = li.z;
    return li;
  }

  load_tokens(targets, b.targets_host, b.targets, "targets");
  // Head: hf [T,H] = rmsnorm(x_L) (gathered over TP with SP); logits [T,V] = hf Wlm^T (this
  // rank's vocabulary columns); per-row CE [T], reduced over the vocabulary shards.
  final_norm(b);
  const std::string& lm = spec_.tie_embeddings ? layout_.names().embed : layout_.names().lm_head;
  linear(b.hf, compute_.get(lm), b.logits);
  if (tp_ == 1) {
    ops::cross_entropy_forward(b.logits, b.targets, kIgnoreIndex, s.ce_loss, b.ce_lse);
  } else {
    Communicator& tp = *opt_.parallel.tp;
    ops::ce_row_max(b.logits, s.ce_max);
    tp.all_reduce(s.ce_max, ReduceOp::max);
    ops::ce_sum_exp(b.logits, s.ce_max, s.ce_sum);
    ops::ce_target_logit(b.logits, b.targets, vocab_offset_, s.ce_target);
    tp.all_reduce(s.ce_sum);
    tp.all_reduce(s.ce_target);
    ops::ce_finish(s.ce_max, s.ce_sum, s.ce_target, b.targets, kIgnoreIndex, s.ce_loss, b.ce_lse);
  }
  return finish_loss(b);
}

// The loss of the microbatch from the per-row CE and the MoE statistics, summed over the ranks
// that split the batch; also the MoE balancing-loss gradient backward will need.
LossInfo Decoder::finish_loss(Microbatch& b) {
  Scratch& s = *s_;
  Communicator* dp = opt_.parallel.dp;
  const int64_t* tg = b.targets_host.data_as<int64_t>();
  int64_t n_valid = 0;
  for (int64_t t = 0; t < T_; ++t) n_valid += tg[t] != kIgnoreIndex ? 1 : 0;
  s.ce_loss_host.copy_from(s.ce_loss);
  double ce = 0;
  const float* cl = s.ce_loss_host.data_as<float>();
  for (int64_t t = 0; t < T_; ++t) ce += cl[t];
  const int dp_size = dp ? dp->size() : 1;
  if (dp_size > 1) {
    s.valid.data_as<int64_t>()[0] = n_valid;
    dp->all_reduce(s.valid);
    n_valid = s.valid.data_as<int64_t>()[0];
    Tensor ce_t = s.ce_loss_host.narrow(0, 0, 1);  // reuse one float of the host buffer
    ce_t.data_as<float>()[0] = float(ce);
    dp->all_reduce(ce_t);
    ce = ce_t.data_as<float>()[0];
  }
  b.n_valid = n_valid;
  LossInfo info;
  info.tokens = n_valid;
  info.ce = n_valid > 0 ? ce / double(n_valid) : 0.0;

  // Load balancing over all MoE layers' router outputs concatenated (transformers'
  // load_balancing_loss_func with attention_mask None): with N = T * L_moe rows of the whole
  // batch,  aux = E * sum_e (C_e / N) * (P_e / N),  C_e = copies routed to e, P_e = sum of probs.
  // Its gradient with respect to every aux_probs[t,e] is coeff * E * C_e / N^2. Counts, sums and
  // the z-loss are summed over the ranks holding other rows of the batch.
  const int64_t E = spec_.moe.num_experts;
  if (spec_.is_moe()) {
    Communicator* tp = sp_ ? opt_.parallel.tp : nullptr;
    if (dp_size > 1 || tp) {
      int64_t* cnt = s.moe_counts.data_as<int64_t>();
      float* st = s.moe_stats.data_as<float>();
      for (size_t m = 0; m < expert_counts_.size(); ++m)
        for (int64_t e = 0; e < E; ++e) cnt[int64_t(m) * E + e] = expert_counts_[m][size_t(e)];
      for (int64_t e = 0; e < E; ++e) st[e] = float(aux_prob_sums_[size_t(e)]);
      st[E] = float(z_total_);
      for (Communicator* c : {tp, dp_size > 1 ? dp : nullptr}) {
        if (!c) continue;
        c->all_reduce(s.moe_counts);
        c->all_reduce(s.moe_stats);
      }
      for (size_t m = 0; m < expert_counts_.size(); ++m)
        for (int64_t e = 0; e < E; ++e) expert_counts_[m][size_t(e)] = cnt[int64_t(m) * E + e];
      for (int64_t e = 0; e < E; ++e) aux_prob_sums_[size_t(e)] = st[e];
      z_total_ = st[E];
    }
    const double n_rows = double(T_) * double(dp_size) * double(spec_.num_moe_layers());
    double aux = 0;
    for (int64_t e = 0; e < E; ++e) {
      double c = 0;
      for (const std::vector<int64_t>& layer : expert_counts_) c += double(layer[size_t(e)]);
      aux += c * aux_prob_sums_[size_t(e)];
      b.aux_grad[size_t(e)] = spec_.moe.aux_loss_coeff * double(E) * c / (n_rows * n_rows);
    }
    info.aux = aux * double(E) / (n_rows * n_rows);
  }
  info.z = z_total_;
  info.loss = info.ce + spec_.moe.aux_loss_coeff * info.aux + info.z;
  return info;
}

void Decoder::chunk_backward(int slot, const Tensor& dx_in) {
  ORIGAMI_CHECK(!inf_, "decoder: built for inference, it has no backward");
  ORIGAMI_CHECK(slot >= 0 && slot < int(mbs_.size()), "decoder: slot ", slot, " of ", mbs_.size());
  cur_ = slot;
  Microbatch& b = mb();
  Scratch& s = *s_;
  const ModelParamNames& names = layout_.names();

  if (is_last_chunk()) {
    const std::string& lm = spec_.tie_embeddings ? names.embed : names.lm_head;
    // Head backward. dlogits [T,V] = (softmax - onehot) / n_valid (of the whole batch)
    const float scale = b.n_valid > 0 ? 1.0f / float(b.n_valid) : 0.0f;
    ops::cross_entropy_backward(b.logits, b.targets, b.ce_lse, kIgnoreIndex, scale, s.dlogits,
                                vocab_offset_);
    // dhf [T,H] = dlogits @ Wlm (partial over the vocabulary shards);  dWlm += dlogits^T @ hf
    linear_dx(s.dlogits, compute_.get(lm), s.dh_full);
    linear_dw(s.dlogits, b.hf, grads_.get(lm));
    if (tp_ > 1) tp_reduce_rows(*opt_.parallel.tp, sp_, s.dh_full, s.dh);
    // dx_L through the final norm; dres (f32) carries the residual gradient downwards.
    Tensor dw_final = grads_.get(names.final_norm);
    ops::rmsnorm_backward(b.xs.back(), compute_.get(names.final_norm), b.rstd_f, s.dh, s.dx,
                          dw_final);
    s.dres.copy_from(s.dx);
  } else {
    ORIGAMI_CHECK(dx_in.defined() && dx_in.numel() == s.dres.numel(),
                  "decoder: chunk output gradient must be [", Tl_, ",", spec_.hidden, "], got ",
                  dx_in.defined() ? dx_in.str() : std::string("undefined"));
    s.dres.copy_from(dx_in.view(s.dres.shape()));
  }

  for (int64_t l = Le_ - 1; l >= Lb_; --l) {
    LayerActivations& a = acts_for(l);
    if (opt_.recompute) {  // re-run the layer forward from its saved input
      recomputing_ = true;
      layer_forward(l, a);
      recomputing_ = false;
    }
    layer_backward(l, a);
  }
  if (is_first_chunk()) {
    // dembed [V,H] += rows of dres by id (this rank's vocabulary rows; all T rows needed)
    Tensor dembed = grads_.get(names.embed);
    if (sp_) {
      tp_gather_rows(*opt_.parallel.tp, s.dres, s.dres_full);
      ops::embedding_backward(b.ids, s.dres_full, dembed, vocab_offset_, spec_.vocab);
    } else {
      ops::embedding_backward(b.ids, s.dres, dembed, vocab_offset_, spec_.vocab);
    }
  }
}

// ---- one layer -------------------------------------------------------------------------------

void Decoder::layer_forward(int64_t l, LayerActivations& a) {
  attention_forward(l, a);
  if (spec_.is_moe_layer(l))
    moe_forward(l, a);
  else
    mlp_forward(l, a);
}

// dres holds d loss / d x_{l+1} on entry and d loss / d x_l on exit (f32 [Tl,H]).
void Decoder::layer_backward(int64_t l, LayerActivations& a) {
  Scratch& s = *s_;
  Microbatch& b = mb();
  const LayerWeights& w = w_[size_t(l - Lb_)];
  LayerWeights& g = g_[size_t(l - Lb_)];
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
  ops::rmsnorm_backward(b.xs[size_t(l - Lb_)], w.ln1, a.rstd1, s.dh, s.dx, g.ln1);
  ops::axpy_(s.dres, s.dx);  // dres = d loss / d x_l
}

// ---- attention block ----------------------------------------------------------------------

void Decoder::attention_forward(int64_t l, LayerActivations& a) {
  Scratch& s = *s_;
  const LayerWeights& w = w_[size_t(l - Lb_)];
  const int64_t B = opt_.batch, S = opt_.seq, T = T_, D = spec_.head_dim;
  const int64_t Hq = hq_, Hkv = hkv_;  // this rank's heads
  const Tensor& x = mb().xs[size_t(l - Lb_)];
  // hn1 [T,H] = rmsnorm(x) (norm of this rank's rows, then gathered with SP)
  if (sp_) {
    ops::rmsnorm_forward(x, w.ln1, float(spec_.rms_eps), s.hn_local, a.rstd1);
    tp_gather_rows(*opt_.parallel.tp, s.hn_local, a.hn1);
  } else {
    ops::rmsnorm_forward(x, w.ln1, float(spec_.rms_eps), a.hn1, a.rstd1);
  }
  // q [T,Hq*D], k, v [T,Hkv*D] = hn1 W^T (+ b)
  const LayerPacked& pk = pw_[size_t(l - Lb_)];
  if (observer_) observe(l, LinearSite::qkv, a.hn1);
  project_group(a.hn1, {{w.wq, pk.q, a.q}, {w.wk, pk.k, a.k}, {w.wv, pk.v, a.v}});
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
  if (inf_) {  // inference: keys and values to the paged cache, queries against it
    attention_paged(l, a);
    if (observer_) observe(l, LinearSite::o, a.attn);
    const ops::PackedLinearOptions po = packed_options();
    row_parallel_residual(opt_.parallel.tp, sp_, a.attn, w.wo, x, s_->partial, a.x_mid, pk.o, &po);
    return;
  }
  ops::AttentionParams p;
  p.window = spec_.sliding_window > 0 ? spec_.sliding_window + 1 : -1;  // ops: i - j < window
  Tensor attn4 = a.attn.view({B, S, Hq, D});
  if (cp_attn_)  // this rank's zigzag part of the sequence against the whole of it
    cp_attn_->forward(a.q.view({B, S, Hq, D}), a.k.view({B, S, Hkv, D}), a.v.view({B, S, Hkv, D}),
                      attn4, a.lse);
  else
    ops::attention_forward(a.q.view({B, S, Hq, D}), a.k.view({B, S, Hkv, D}),
                           a.v.view({B, S, Hkv, D}), p, attn4, a.lse);
  // x_mid [Tl,H] = x + attn Wo^T (summed over TP)
  if (observer_) observe(l, LinearSite::o, a.attn);
  row_parallel_residual(opt_.parallel.tp, sp_, a.attn, w.wo, x, s_->partial, a.x_mid);
}

// In: dres_c = d loss / d x_mid (compute dtype). Out: dh = d loss / d hn1 (this rank's rows).
void Decoder::attention_backward(int64_t l, LayerActivations& a) {
  Scratch& s = *s_;
  const LayerWeights& w = w_[size_t(l - Lb_)];
  LayerWeights& g = g_[size_t(l - Lb_)];
  const int64_t B = opt_.batch, S = opt_.seq, T = T_, D = spec_.head_dim;
  const int64_t Hq = hq_, Hkv = hkv_;
  if (sp_)
    tp_gather_rows(*opt_.parallel.tp, s.dres_c, s.dfull);  // dfull [T,H] (else dfull is dres_c)
  // dattn [T,Hq*D] = dx_mid @ Wo;  dWo [H,Hq*D] += dx_mid^T @ attn
  linear_dx(s.dfull, w.wo, s.dattn);
  linear_dw(s.dfull, a.attn, g.wo);
  // dq [B,S,Hq,D], dk, dv [B,S,Hkv,D]
  ops::AttentionParams p;
  p.window = spec_.sliding_window > 0 ? spec_.sliding_window + 1 : -1;  // ops: i - j < window
  Tensor dq4 = s.dq.view({B, S, Hq, D}), dk4 = s.dk.view({B, S, Hkv, D}),
         dv4 = s.dv.view({B, S, Hkv, D});
  if (cp_attn_)
    cp_attn_->backward(a.q.view({B, S, Hq, D}), a.k.view({B, S, Hkv, D}), a.v.view({B, S, Hkv, D}),
                       a.attn.view({B, S, Hq, D}), a.lse, s.dattn.view({B, S, Hq, D}), dq4, dk4,
                       dv4);
  else
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
  linear_dx(s.dq, w.wq, s.dh_full);
  linear_dx(s.dk, w.wk, s.dh_full, 1.0f);
  linear_dx(s.dv, w.wv, s.dh_full, 1.0f);
  if (tp_ > 1) tp_reduce_rows(*opt_.parallel.tp, sp_, s.dh_full, s.dh);  // sum of the heads' parts
}

// ---- dense SwiGLU MLP ------------------------------------------------------------------------

void Decoder::mlp_forward(int64_t l, LayerActivations& a) {
  Scratch& s = *s_;
  const LayerWeights& w = w_[size_t(l - Lb_)];
  Tensor& out = mb().xs[size_t(l - Lb_ + 1)];
  // hn2 [T,H] = rmsnorm(x_mid) (gathered with SP)
  if (sp_) {
    ops::rmsnorm_forward(a.x_mid, w.ln2, float(spec_.rms_eps), s.hn_local, a.rstd2);
    tp_gather_rows(*opt_.parallel.tp, s.hn_local, a.hn2);
  } else {
    ops::rmsnorm_forward(a.x_mid, w.ln2, float(spec_.rms_eps), a.hn2, a.rstd2);
  }
  // gate, up [T,F] = hn2 W^T;  act [T,F] = silu(gate) * up  (this rank's F/tp columns)
  const LayerPacked& pk = pw_[size_t(l - Lb_)];
  if (observer_) observe(l, LinearSite::gate_up, a.hn2);
  project_group(a.hn2, {{w.gate, pk.gate, a.gate}, {w.up, pk.up, a.up}});
  ops::swiglu_forward(a.gate, a.up, a.act);
  // x_{l+1} [Tl,H] = x_mid + act Wdown^T (summed over TP)
  if (observer_) observe(l, LinearSite::down, a.act);
  const ops::PackedLinearOptions po = packed_options();
  row_parallel_residual(opt_.parallel.tp, sp_, a.act, w.down, a.x_mid, s_->partial, out, pk.down,
                        &po);
}

// In: dres_c = d loss / d x_{l+1}. Out: dh = d loss / d hn2.
void Decoder::mlp_backward(int64_t l, LayerActivations& a) {
  Scratch& s = *s_;
  const LayerWeights& w = w_[size_t(l - Lb_)];
  LayerWeights& g = g_[size_t(l - Lb_)];
  const int64_t T = T_, F = ffn_;
  Tensor dact = front(s.dact, T, F), dgate = front(s.dgate, T, F), dup = front(s.dup, T, F);
  if (sp_)
    tp_gather_rows(*opt_.parallel.tp, s.dres_c, s.dfull);  // dfull [T,H] (else dfull is dres_c)
  // dact [T,F] = dout @ Wdown;  dWdown [H,F] += dout^T @ act
  linear_dx(s.dfull, w.down, dact);
  linear_dw(s.dfull, a.act, g.down);
  // dgate, dup [T,F]
  ops::swiglu_backward(a.gate, a.up, dact, dgate, dup);
  // dWgate, dWup [F,H] += d^T @ hn2;  dh [T,H] = dgate Wgate + dup Wup
  linear_dw(dgate, a.hn2, g.gate);
  linear_dw(dup, a.hn2, g.up);
  linear_dx(dgate, w.gate, s.dh_full);
  linear_dx(dup, w.up, s.dh_full, 1.0f);
  if (tp_ > 1) tp_reduce_rows(*opt_.parallel.tp, sp_, s.dh_full, s.dh);
}

}  // namespace origami::models
