#include "models/parallel_model.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <sstream>

#include "ops/optimizer.h"
#include "parallel/context_parallel.h"
#include "parallel/pipeline_schedule.h"
#include "runtime/error.h"

namespace origami::models {

std::vector<int64_t> split_layers(int64_t layers, int virtual_stages,
                                  const std::vector<int64_t>& stage_layers) {
  ORIGAMI_CHECK(virtual_stages >= 1, "pipeline: ", virtual_stages, " stages");
  if (!stage_layers.empty()) {
    ORIGAMI_CHECK(int64_t(stage_layers.size()) == virtual_stages, "pipeline: ", stage_layers.size(),
                  " stage layer counts given for ", virtual_stages, " virtual stages (pp x vpp)");
    int64_t sum = 0;
    for (size_t i = 0; i < stage_layers.size(); ++i) {
      ORIGAMI_CHECK(stage_layers[i] >= 1, "pipeline: virtual stage ", i, " would hold ",
                    stage_layers[i], " layers; every stage needs at least one");
      sum += stage_layers[i];
    }
    ORIGAMI_CHECK(sum == layers, "pipeline: the stage layer counts add up to ", sum,
                  ", the model has ", layers, " layers");
    return stage_layers;
  }
  ORIGAMI_CHECK(layers >= virtual_stages, "pipeline: the model's ", layers, " layers cannot fill ",
                virtual_stages, " pipeline stages (pp x vpp); use fewer stages");
  std::vector<int64_t> out(size_t(virtual_stages), layers / virtual_stages);
  for (int64_t i = 0; i < layers % virtual_stages; ++i) out[size_t(i)] += 1;
  return out;
}

void check_parallel_layout(const ModelSpec& spec, const DecoderOptions& base,
                           const ParallelOptions& po, int world_size, int64_t microbatches) {
  const RankGroups groups(world_size, po.layout);  // world = product, PP groups equal
  const int tp = groups.tp(), pp = groups.pp();
  ORIGAMI_CHECK(base.seq % (2 * groups.cp()) == 0, "context parallelism: the sequence of ",
                base.seq, " tokens does not split into 2 x cp = ", 2 * groups.cp(),
                " equal chunks (make train.seq_len a multiple of ", 2 * groups.cp(), ")");
  if (spec.is_moe()) {
    ORIGAMI_CHECK(spec.moe.num_experts % groups.ep() == 0, "expert parallel size ", groups.ep(),
                  " does not divide the ", spec.moe.num_experts, " experts");
    ORIGAMI_CHECK(spec.moe.expert_ffn % groups.etp() == 0, "expert tensor parallel size ",
                  groups.etp(), " does not divide the expert width ", spec.moe.expert_ffn);
    ORIGAMI_CHECK(tp == 1 || po.sequence_parallel, "an MoE model with tensor parallelism (tp=", tp,
                  ") needs sequence parallelism, so that each rank routes distinct tokens "
                  "(--sequence-parallel)");
  } else {
    ORIGAMI_CHECK(groups.ep() == 1, "expert parallelism (ep=", groups.ep(), ") needs an MoE model");
  }
  ORIGAMI_CHECK(spec.heads % tp == 0, "tensor parallel size ", tp, " does not divide the ",
                spec.heads, " attention heads");
  ORIGAMI_CHECK(spec.kv_heads % tp == 0 || tp % spec.kv_heads == 0, "tensor parallel size ", tp,
                " and the ", spec.kv_heads, " KV heads: one must divide the other");
  ORIGAMI_CHECK(spec.vocab % tp == 0, "tensor parallel size ", tp,
                " does not divide the vocabulary of ", spec.vocab,
                " (make model.vocab_size a multiple of ", tp, ")");
  bool any_dense = false;
  for (int64_t l = 0; l < spec.layers; ++l) any_dense |= !spec.is_moe_layer(l);
  ORIGAMI_CHECK(!any_dense || spec.ffn % tp == 0, "tensor parallel size ", tp,
                " does not divide the MLP width ", spec.ffn);
  ORIGAMI_CHECK(po.vpp >= 1, "vpp must be >= 1, got ", po.vpp);
  ORIGAMI_CHECK(po.vpp == 1 || pp > 1, "virtual pipeline stages (vpp=", po.vpp,
                ") need pipeline parallelism (pp > 1)");
  split_layers(spec.layers, pp * po.vpp, po.stage_layers);
  ORIGAMI_CHECK(microbatches >= 1, "microbatches (train.grad_accum) must be >= 1");
  ORIGAMI_CHECK(po.vpp == 1 || microbatches % pp == 0,
                "the interleaved schedule runs "
                "microbatches in groups of pp: ",
                microbatches, " microbatches (train.grad_accum) is not a multiple of pp=", pp);
  ORIGAMI_CHECK(!(po.sequence_parallel && tp > 1) || (base.batch * base.seq) % tp == 0,
                "sequence parallelism: the ", base.batch * base.seq,
                " tokens of a microbatch (batch x seq) do not divide over tp=", tp);
  ORIGAMI_CHECK(!(spec.is_moe() && spec.moe.aux_loss_coeff > 0 && pp > 1),
                "the MoE load-balancing loss spans every layer; with pipeline parallelism it is "
                "not supported yet (set model.moe.aux_loss_coeff to 0, or pp to 1)");
}

namespace {
// Doubles travel as their bits in i64 tensors: exact, and communicators move any dtype.
int64_t bits_of(double x) {
  int64_t b;
  std::memcpy(&b, &x, sizeof b);
  return b;
}
double double_of(int64_t b) {
  double x;
  std::memcpy(&x, &b, sizeof x);
  return x;
}
constexpr int kTiedTag = 1 << 28;
}  // namespace

ParallelModel::ParallelModel(const ModelSpec& spec, const DecoderOptions& base,
                             const ParallelOptions& po, const RankGroups& layout,
                             ProcessGroups& groups, int64_t microbatches)
    : spec_(spec), po_(po), groups_(groups), microbatches_(microbatches) {
  const int rank = groups.world->rank();
  check_parallel_layout(spec, base, po, groups.world->size(), microbatches);
  pp_ = layout.pp();
  tp_ = layout.tp();
  dp_ = groups.dp->size();
  cp_ = layout.cp();
  pp_rank_ = layout.coordinate("pp", rank);
  const int vpp = po.vpp;
  const std::vector<int64_t> per_stage = split_layers(spec.layers, pp_ * vpp, po.stage_layers);
  std::vector<int64_t> start(per_stage.size() + 1, 0);
  for (size_t i = 0; i < per_stage.size(); ++i) start[i + 1] = start[i] + per_stage[i];

  std::vector<int> in_flight(size_t(vpp), 1);
  if (pp_ > 1) {
    const std::vector<PipeAction> sched =
        vpp > 1 ? schedule_interleaved(pp_, vpp, pp_rank_, int(microbatches))
                : schedule_1f1b(pp_, pp_rank_, int(microbatches));
    in_flight = max_in_flight(sched, vpp);
  }
  for (int c = 0; c < vpp; ++c) {
    const int v = c * pp_ + pp_rank_;
    DecoderOptions o = base;
    o.optimizer_state = false;  // the DistributedOptimizer holds Adam's state
    o.parallel.tp = tp_ > 1 ? groups.tp.get() : nullptr;
    // Token counts and MoE statistics are summed over every rank holding other tokens of the
    // batch: dp x cp.
    o.parallel.dp = dp_ * cp_ > 1 ? groups.dp_cp.get() : nullptr;
    if (cp_ > 1) {
      o.seq = base.seq / cp_;
      o.parallel.cp = groups.cp.get();
      o.parallel.cp_ring = po.cp_ring;
    }
    o.parallel.sequence_parallel = po.sequence_parallel && tp_ > 1;
    if (spec.is_moe()) {
      o.parallel.ep = layout.ep() > 1 ? groups.ep.get() : nullptr;
      o.parallel.etp = layout.etp() > 1 ? groups.etp.get() : nullptr;
      o.parallel.tp_ep = groups.tp_ep.get();
      o.parallel.allgather_dispatcher = po.allgather_dispatcher;
    }
    o.parallel.layer_begin = start[size_t(v)];
    o.parallel.layer_end = start[size_t(v) + 1];
    o.parallel.slots = std::max(1, in_flight[size_t(c)]);
    slots_.push_back(o.parallel.slots);
    chunks_.push_back(std::make_unique<Decoder>(spec, o));
    Decoder& d = *chunks_.back();
    DistributedOptimizerOptions oo;
    oo.zero = po.zero;
    oo.bucket_elements = po.bucket_elements;
    const int64_t P = d.layout().total_numel(), X = d.layout().expert_offset();
    int64_t shared_max = 0;
    for (int part = 0; part < 2; ++part) {
      Region r;
      r.chunk = c;
      r.begin = part == 0 ? 0 : X;
      r.end = part == 0 ? X : P;
      if (r.end == r.begin) continue;
      r.group = part == 0 ? groups.dp_cp.get() : groups.edp.get();
      Tensor compute = d.compute_flat();
      r.opt = std::make_unique<DistributedOptimizer>(
          d.params().flat().narrow(0, r.begin, r.end - r.begin),
          d.grads().flat().narrow(0, r.begin, r.end - r.begin),
          compute.defined() ? compute.narrow(0, r.begin, r.end - r.begin) : Tensor(), *r.group, oo);
      for (const ParamEntry& e : d.layout().entries())
        if (e.owner && e.offset >= r.begin && e.offset < r.end)
          r.counted.push_back({e.offset - r.begin, e.numel});
      regions_.push_back(std::move(r));
    }
    for (const ParamEntry& e : d.layout().entries()) {
      if (e.tp_shared) shared_max = std::max(shared_max, shape_numel(e.global_shape));
      if (e.tied_copy || (e.name == d.layout().names().embed && spec.tie_embeddings && pp_ > 1))
        if (!tied_scratch_.defined()) tied_scratch_ = Tensor::zeros(e.shape, DType::f32);
    }
    if (shared_max > 0 && (!shared_scratch_.defined() || shared_scratch_.numel() < shared_max))
      shared_scratch_ = Tensor::zeros({shared_max}, DType::f32);
  }
  if (cp_ > 1)
    for (int64_t m = 0; m < microbatches; ++m) {
      cp_ids_.push_back(Tensor::empty({base.batch, base.seq / cp_}, DType::i64));
      cp_targets_.push_back(Tensor::empty({base.batch, base.seq / cp_}, DType::i64));
    }
  const int64_t Tl = chunks_.front()->local_tokens();
  // Doubles exchanged as i64 bits every step (loss over stages, gradient norm over the world).
  loss_mine_ = Tensor::zeros({2}, DType::i64);
  loss_all_ = Tensor::zeros({2 * int64_t(pp_)}, DType::i64);
  norm_mine_ = Tensor::zeros({1}, DType::i64);
  norm_all_ = Tensor::zeros({int64_t(groups.world->size())}, DType::i64);
  recv_fwd_.push_back(Tensor::zeros({Tl, spec.hidden}, base.compute));
  recv_bwd_.push_back(Tensor::zeros({Tl, spec.hidden}, DType::f32));
  const ParameterLayout whole(spec);
  for (const ParamEntry& e : whole.entries()) all_names_.push_back(e.name);
}

ParallelModel::~ParallelModel() = default;

void ParallelModel::init_random(uint64_t seed, double std) {
  for (auto& c : chunks_) {
    c->params().init_random(seed, std);
    c->sync_compute_weights();
  }
}

StepLoss ParallelModel::forward_backward(const std::vector<Tensor>& ids,
                                         const std::vector<Tensor>& targets) {
  ORIGAMI_CHECK(int64_t(ids.size()) == microbatches_ && int64_t(targets.size()) == microbatches_,
                "parallel model: ", microbatches_, " microbatches expected, got ", ids.size(),
                " ids and ", targets.size(), " targets");
  for (auto& c : chunks_) c->grads().zero();
  if (cp_ > 1) {  // this rank's zigzag part of every sequence
    const int cp_rank = groups_.cp->rank();
    for (int64_t m = 0; m < microbatches_; ++m) {
      zigzag_split(ids[size_t(m)], cp_, cp_rank, cp_ids_[size_t(m)]);
      zigzag_split(targets[size_t(m)], cp_, cp_rank, cp_targets_[size_t(m)]);
    }
    return run_step(cp_ids_, cp_targets_);
  }
  return run_step(ids, targets);
}

StepLoss ParallelModel::run_step(const std::vector<Tensor>& ids,
                                 const std::vector<Tensor>& targets) {
  double loss_sum = 0, ce_sum = 0;
  if (pp_ == 1) {
    Decoder& d = *chunks_.front();
    for (int64_t m = 0; m < microbatches_; ++m) {
      const LossInfo li = d.chunk_forward(0, ids[size_t(m)], targets[size_t(m)], Tensor());
      d.chunk_backward(0, Tensor());
      loss_sum += li.loss;
      ce_sum += li.ce;
    }
  } else {
    run_pipeline(ids, targets, loss_sum, ce_sum);
    // The last stage knows the cross-entropy, every stage its MoE z-loss terms: summed over the
    // stages (in stage order, the same double on every rank).
    Tensor mine = loss_mine_, all = loss_all_;
    mine.data_as<int64_t>()[0] = bits_of(loss_sum);
    mine.data_as<int64_t>()[1] = bits_of(ce_sum);
    groups_.pp->all_gather(mine, all);
    loss_sum = ce_sum = 0;
    for (int r = 0; r < pp_; ++r) {
      loss_sum += double_of(all.data_as<int64_t>()[2 * r]);
      ce_sum += double_of(all.data_as<int64_t>()[2 * r + 1]);
    }
  }
  reduce_tensor_parallel();
  reduce_tied_embedding();
  for (Region& r : regions_) r.opt->reduce_gradients();
  StepLoss out;
  out.loss = loss_sum / double(microbatches_);
  out.ce = ce_sum / double(microbatches_);
  return out;
}

// The schedule of this rank, action by action: receive the input (blocking, with the
// communicator's timeout), compute, send the output without waiting. A forward output is sent
// from the slot's own buffer (reused only after that microbatch's backward, by which time the
// next stage has received it); a backward output is copied to a buffer of its own.
void ParallelModel::run_pipeline(const std::vector<Tensor>& ids, const std::vector<Tensor>& targets,
                                 double& loss_sum, double& ce_sum) {
  const int vpp = po_.vpp, M = int(microbatches_);
  const std::vector<PipeAction> sched =
      vpp > 1 ? schedule_interleaved(pp_, vpp, pp_rank_, M) : schedule_1f1b(pp_, pp_rank_, M);
  Communicator& pp = *groups_.pp;
  std::vector<std::vector<Request>> fwd_sends;
  fwd_sends.resize(size_t(vpp));
  for (int c = 0; c < vpp; ++c) fwd_sends[size_t(c)].resize(size_t(slots_[size_t(c)]));
  std::vector<Request> bwd_sends(send_bwd_.size());
  for (const PipeAction& a : sched) {
    Decoder& d = *chunks_[size_t(a.chunk)];
    const int slot = a.microbatch % slots_[size_t(a.chunk)];
    const PipeTransfer tr = transfers(a, pp_, vpp, pp_rank_, M);
    if (a.op == PipeOp::forward) {
      Request& prev = fwd_sends[size_t(a.chunk)][size_t(slot)];
      if (prev.valid()) prev.wait();
      Tensor in;
      if (tr.recv) {
        pp.recv(recv_fwd_[0], tr.recv_from, tr.recv_tag);
        in = recv_fwd_[0];
      }
      const LossInfo li =
          d.chunk_forward(slot, ids[size_t(a.microbatch)], targets[size_t(a.microbatch)], in);
      loss_sum += li.loss;  // the last chunk's loss; the others' z-loss terms
      if (d.is_last_chunk()) ce_sum += li.ce;
      if (tr.send) prev = pp.isend(d.chunk_output(slot), tr.send_to, tr.send_tag);
    } else {
      Tensor din;
      if (tr.recv) {
        pp.recv(recv_bwd_[0], tr.recv_from, tr.recv_tag);
        din = recv_bwd_[0];
      }
      d.chunk_backward(slot, din);
      if (tr.send) {
        // A free send buffer (its transfer complete), or a new one.
        size_t k = 0;
        while (k < send_bwd_.size() && bwd_sends[k].valid() && !bwd_sends[k].test()) ++k;
        if (k == send_bwd_.size()) {
          send_bwd_.push_back(Tensor::zeros(d.chunk_input_grad().shape(), DType::f32));
          bwd_sends.emplace_back();
        }
        send_bwd_[k].copy_from(d.chunk_input_grad());
        bwd_sends[k] = pp.isend(send_bwd_[k], tr.send_to, tr.send_tag);
      }
    }
  }
  for (auto& per_chunk : fwd_sends)
    for (Request& r : per_chunk)
      if (r.valid()) r.wait();
  for (Request& r : bwd_sends)
    if (r.valid()) r.wait();
}

void ParallelModel::reduce_tensor_parallel() {
  if (tp_ == 1) return;
  Communicator& tp = *groups_.tp;
  for (auto& c : chunks_) {
    for (const ParamEntry& e : c->layout().entries()) {
      if (e.tp_partial) {
        Tensor g = c->grads().get(e.name);
        tp.all_reduce(g);
      } else if (e.tp_shared) {
        // Every rank writes its slice into a zeroed whole tensor; the sum gives each slice the
        // total of the ranks that hold it.
        Tensor whole =
            shared_scratch_.narrow(0, 0, shape_numel(e.global_shape)).view(e.global_shape);
        whole.zero_();
        Tensor mine = ParameterLayout::slice_of(e, whole);
        mine.copy_from(c->grads().get(e.name));
        Tensor flat = whole.view({whole.numel()});
        tp.all_reduce(flat);
        Tensor g = c->grads().get(e.name);
        g.copy_from(mine);
      }
    }
  }
}

// With tied embeddings and pp > 1 the first stage's embedding and the last stage's copy are one
// parameter: both add the other's gradient (a + b on one side, b + a on the other: the same
// floats), so they stay identical through AdamW.
void ParallelModel::reduce_tied_embedding() {
  if (!spec_.tie_embeddings || pp_ == 1) return;
  const std::string& name = chunks_.front()->layout().names().embed;
  Communicator& pp = *groups_.pp;
  Decoder* holder = nullptr;
  int peer = -1;
  if (pp_rank_ == 0) {
    holder = chunks_.front().get();
    peer = pp_ - 1;
  } else if (pp_rank_ == pp_ - 1) {
    holder = chunks_.back().get();
    peer = 0;
  }
  if (!holder) return;
  Tensor g = holder->grads().get(name);
  Request send = pp.isend(g, peer, kTiedTag);
  pp.recv(tied_scratch_, peer, kTiedTag);
  send.wait();
  ops::axpy_(g, tied_scratch_);
}

double ParallelModel::grad_norm(double scale) {
  double local = 0;
  for (const Region& r : regions_) local += r.opt->local_grad_sum_squares(r.counted);
  // Every rank's share, summed in rank order on every rank: the same double everywhere.
  Communicator& world = *groups_.world;
  Tensor mine = norm_mine_, all = norm_all_;
  mine.data_as<int64_t>()[0] = bits_of(local);
  world.all_gather(mine, all);
  double total = 0;
  for (int r = 0; r < world.size(); ++r) total += double_of(all.data_as<int64_t>()[r]);
  return std::sqrt(total) * scale;
}

void ParallelModel::scale_gradients(float s) {
  for (Region& r : regions_) r.opt->scale_gradients(s);
}

void ParallelModel::optimizer_step(const ops::AdamWParams& p) {
  for (Region& r : regions_) r.opt->step(p);
}

const ParallelModel::Region& ParallelModel::region_of(int chunk, int64_t offset) const {
  for (const Region& r : regions_)
    if (r.chunk == chunk && offset >= r.begin && offset < r.end) return r;
  ORIGAMI_FAIL("parallel model: no optimizer region holds offset ", offset, " of chunk ", chunk);
}

Tensor ParallelModel::gather(const std::string& name, const std::string& which) {
  ORIGAMI_CHECK(which == "params" || which == "grads" || which == "adam_m" || which == "adam_v",
                "parallel model: gather of '", which, "'");
  const ParameterLayout whole_layout(spec_);
  const ParamEntry& ge = whole_layout.entry(name);
  Tensor full = Tensor::zeros(ge.global_shape, DType::f32);
  for (size_t c = 0; c < chunks_.size(); ++c) {
    Decoder& d = *chunks_[c];
    if (!d.layout().has(name)) continue;
    const ParamEntry& e = d.layout().entry(name);
    if (!e.owner) continue;
    const Region& r = region_of(int(c), e.offset);
    const int rank_in_group = r.group->rank();
    Tensor dst = ParameterLayout::slice_of(e, full);
    if (which == "params") {
      if (rank_in_group == 0) dst.copy_from(d.params().get(name));
    } else if (which == "grads") {
      // The reduced gradient of an element lives on the rank owning its piece.
      Tensor src_flat = d.grads().flat();
      Tensor part = Tensor::zeros({e.numel}, DType::f32);
      for (const FlatRange& q : r.opt->owned_pieces()) {
        const int64_t lo = std::max(q.offset + r.begin, e.offset);
        const int64_t hi = std::min(q.end() + r.begin, e.offset + e.numel);
        if (lo < hi)
          part.narrow(0, lo - e.offset, hi - lo).copy_from(src_flat.narrow(0, lo, hi - lo));
      }
      dst.copy_from(part.view(e.shape));
    } else {
      const int64_t n = r.end - r.begin;
      Tensor m = Tensor::zeros({n}, DType::f32), v = Tensor::zeros({n}, DType::f32);
      r.opt->gather_state(m, v);  // collective over the region's group: same layout on all
      const Tensor& src = which == "adam_m" ? m : v;
      if (rank_in_group == 0)
        dst.copy_from(src.narrow(0, e.offset - r.begin, e.numel).view(e.shape));
    }
  }
  Tensor flat = full.view({full.numel()});
  groups_.world->all_reduce(flat);
  return full;
}

void ParallelModel::load_whole(const ParameterBuffer& whole) {
  for (auto& c : chunks_) {
    for (const ParamEntry& e : c->layout().entries()) {
      Tensor dst = c->params().get(e.name);
      dst.copy_from(ParameterLayout::slice_of(e, whole.get(e.name)));
    }
    c->sync_compute_weights();
  }
}

namespace {
Shape offsets_of(const ParamEntry& e) {
  return e.slice_offset;
}
}  // namespace

void ParallelModel::save(CheckpointWriter& w) {
  const int tp_rank = groups_.tp->rank();
  for (const Region& r : regions_) {
    Decoder& d = *chunks_[size_t(r.chunk)];
    const int64_t n = r.end - r.begin;
    Tensor m = Tensor::zeros({n}, DType::f32), v = Tensor::zeros({n}, DType::f32);
    r.opt->gather_state(m, v);  // collective over the region's group
    if (r.group->rank() != 0) continue;
    for (const ParamEntry& e : d.layout().entries()) {
      if (!e.owner || e.offset < r.begin || e.offset >= r.end) continue;
      const Shape off = offsets_of(e);
      const int64_t at = e.offset - r.begin;
      w.add("params/" + e.name, d.params().get(e.name), e.global_shape, off);
      w.add("adam_m/" + e.name, m.narrow(0, at, e.numel).view(e.shape), e.global_shape, off);
      w.add("adam_v/" + e.name, v.narrow(0, at, e.numel).view(e.shape), e.global_shape, off);
    }
    if (r.begin == 0 && spec_.moe.expert_bias && tp_rank == 0) {
      int64_t m_index = 0;
      for (int64_t l = 0; l < spec_.layers; ++l) {
        if (!spec_.is_moe_layer(l)) continue;
        if (l >= d.layout().layer_begin() && l < d.layout().layer_end()) {
          const std::vector<float>& b = d.expert_bias(m_index);
          w.add("expert_bias/" + std::to_string(l),
                Tensor::from_vector(b, {int64_t(b.size())}, DType::f32));
        }
        ++m_index;
      }
    }
  }
}

void ParallelModel::load(const CheckpointReader& rd) {
  for (size_t c = 0; c < chunks_.size(); ++c) {
    Decoder& d = *chunks_[c];
    const int64_t P = d.layout().total_numel();
    Tensor m = Tensor::zeros({P}, DType::f32), v = Tensor::zeros({P}, DType::f32);
    for (const ParamEntry& e : d.layout().entries()) {
      for (const char* kind : {"params/", "adam_m/", "adam_v/"}) {
        const std::string key = kind + e.name;
        ORIGAMI_CHECK(rd.has(key), "checkpoint has no tensor '", key,
                      "': it was written for a different model");
        ORIGAMI_CHECK(rd.global_shape(key) == e.global_shape, "checkpoint tensor '", key, "' is ",
                      shape_str(rd.global_shape(key)), ", this model's is ",
                      shape_str(e.global_shape), ": it was written for a different model");
      }
      const Shape off = offsets_of(e);
      Tensor p = d.params().get(e.name);
      rd.read("params/" + e.name, p, off);
      Tensor pm = m.narrow(0, e.offset, e.numel).view(e.shape);
      rd.read("adam_m/" + e.name, pm, off);
      Tensor pv = v.narrow(0, e.offset, e.numel).view(e.shape);
      rd.read("adam_v/" + e.name, pv, off);
    }
    for (const Region& r : regions_)
      if (r.chunk == int(c))
        r.opt->load_state(m.narrow(0, r.begin, r.end - r.begin),
                          v.narrow(0, r.begin, r.end - r.begin));
    d.sync_compute_weights();
    int64_t m_index = 0;
    for (int64_t l = 0; l < spec_.layers; ++l) {
      if (!spec_.is_moe_layer(l)) continue;
      const std::string key = "expert_bias/" + std::to_string(l);
      if (spec_.moe.expert_bias && rd.has(key)) {
        const std::vector<float> b = rd.read_full(key).to_float_vector();
        d.expert_bias(m_index).assign(b.begin(), b.end());
      }
      ++m_index;
    }
  }
}

int64_t ParallelModel::optimizer_state_elements() const {
  int64_t n = 0;
  for (const Region& r : regions_) n += r.opt->state_elements();
  return n;
}

std::string ParallelModel::describe() const {
  std::ostringstream os;
  os << "parallel: tp=" << tp_ << " cp=" << cp_ << " pp=" << pp_ << " vpp=" << po_.vpp
     << " dp=" << dp_ << (po_.sequence_parallel && tp_ > 1 ? " sequence-parallel" : "")
     << (po_.zero && dp_ > 1 ? " zero-1" : "") << ", " << microbatches_ << " microbatch(es)\n";
  os << groups_.summary();
  for (size_t c = 0; c < chunks_.size(); ++c) {
    chunks_[c]->print_plan(os);
    for (const Region& r : regions_)
      if (r.chunk == int(c))
        os << (r.begin == 0 ? "optimizer (dense): " : "optimizer (experts): ") << r.opt->describe()
           << "\n";
  }
  return os.str();
}

}  // namespace origami::models
