#include "models/generator.h"

#include <algorithm>
#include <ostream>
#include <sstream>
#include <string>

#include "models/parallel_model.h"
#include "runtime/checkpoint.h"
#include "runtime/device.h"
#include "runtime/error.h"

namespace origami::models {

using serve::add_to_step;
using serve::begin_step;
using serve::end_step;

namespace {
constexpr int kActivationTag = 0;  // pipeline: stage s -> s+1, in step order
constexpr int kTokenTag = 1;       // pipeline: sampled tokens, last stage -> the others
}  // namespace

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
  ORIGAMI_CHECK(o.kv_block_size >= 1, "generator: kv_block_size must be >= 1, got ",
                o.kv_block_size);
  if (o.kv_blocks == 0)
    o.kv_blocks = o.max_batch * ((o.max_seq + o.kv_block_size - 1) / o.kv_block_size);
  ORIGAMI_CHECK(o.kv_blocks >= 1, "generator: kv_blocks must be >= 1, got ", o.kv_blocks);
  if (o.max_logit_rows == 0) o.max_logit_rows = o.all_logits ? o.max_step_tokens : o.max_batch;
  ORIGAMI_CHECK(o.max_logit_rows >= (o.all_logits ? o.max_step_tokens : o.max_batch),
                "generator: max_logit_rows (", o.max_logit_rows, ") must be at least ",
                o.all_logits ? "max_step_tokens (" : "max_batch (",
                o.all_logits ? o.max_step_tokens : o.max_batch, ")");
  return o;
}

void check_inference_layout(const ModelSpec& spec, const RankGroups& layout) {
  ORIGAMI_CHECK(layout.cp() == 1, "inference does not split sequences over context parallelism ",
                "(cp=", layout.cp(), "); use tp, pp and ep");
  ParallelLayout pl;
  pl.tp = layout.tp();
  pl.pp = layout.pp();
  pl.ep = layout.ep();
  pl.etp = layout.etp();
  pl.dp = layout.dp();
  pl.order = layout.order();
  ParallelOptions po;
  po.layout = pl;
  po.sequence_parallel = true;  // MoE with TP routes distinct rows on every TP rank
  DecoderOptions base;
  base.seq = 2 * layout.tp();  // steps are padded to a multiple of tp
  ModelSpec s = spec;
  s.moe.aux_loss_coeff = 0;  // no loss in inference
  check_parallel_layout(s, base, po, layout.world_size(), 1);
}

// ---- construction ----------------------------------------------------------------------------

namespace {
DecoderOptions decoder_options(const ModelSpec& spec, const GeneratorOptions& o,
                               const GeneratorParallel& par) {
  DecoderOptions d;
  d.batch = 1;
  d.seq = o.max_step_tokens;
  d.compute = o.compute;
  d.device = o.device;
  d.optimizer_state = false;
  d.inference = true;
  d.infer.kv_blocks = o.kv_blocks;
  d.infer.kv_block_size = o.kv_block_size;
  d.infer.max_sequences = o.max_batch;
  d.infer.max_context = o.max_seq;
  d.infer.batch_invariant = o.batch_invariant;
  d.infer.weights = o.weights;
  d.infer.max_logit_rows = o.max_logit_rows;
  if (!par.groups) return d;
  const RankGroups& L = *par.layout;
  ProcessGroups& g = *par.groups;
  const int tp = L.tp(), pp = L.pp(), rank = g.world->rank();
  d.parallel.tp = tp > 1 ? g.tp.get() : nullptr;
  d.parallel.sequence_parallel = spec.is_moe() && tp > 1;
  if (d.parallel.sequence_parallel) d.seq = (d.seq + tp - 1) / tp * tp;
  if (spec.is_moe()) {
    d.parallel.ep = L.ep() > 1 ? g.ep.get() : nullptr;
    d.parallel.etp = L.etp() > 1 ? g.etp.get() : nullptr;
    d.parallel.tp_ep = g.tp_ep.get();
    d.parallel.allgather_dispatcher = par.allgather_dispatcher;
  }
  const std::vector<int64_t> per_stage = split_layers(spec.layers, pp, {});
  const int stage = L.coordinate("pp", rank);
  int64_t begin = 0;
  for (int s = 0; s < stage; ++s) begin += per_stage[size_t(s)];
  d.parallel.layer_begin = begin;
  d.parallel.layer_end = begin + per_stage[size_t(stage)];
  return d;
}
}  // namespace

MemoryPlan Generator::memory_plan(const ModelSpec& spec, const GeneratorOptions& opt) {
  spec.validate();
  return Decoder::memory_plan(spec, decoder_options(spec, opt.resolve(spec), {}));
}

Generator::Generator(const ModelSpec& spec, const GeneratorOptions& opt,
                     const GeneratorParallel& par)
    : spec_(spec), opt_(opt.resolve(spec)), par_(par), blocks_(opt_.kv_blocks, opt_.kv_block_size) {
  build(nullptr);
}

Generator::Generator(const ModelSpec& spec, const ParameterBuffer& params,
                     const GeneratorOptions& opt, const GeneratorParallel& par)
    : spec_(spec), opt_(opt.resolve(spec)), par_(par), blocks_(opt_.kv_blocks, opt_.kv_block_size) {
  build(&params);
}

Generator::~Generator() = default;

void Generator::build(const ParameterBuffer* params) {
  spec_.validate();
  ORIGAMI_CHECK(!par_.groups == !par_.layout,
                "generator: give both the process groups and their layout, or neither");
  if (par_.groups) {
    check_inference_layout(spec_, *par_.layout);
    pp_ = par_.layout->pp();
    pp_rank_ = par_.layout->coordinate("pp", par_.groups->world->rank());
  }
  decoder_ = std::make_unique<Decoder>(spec_, decoder_options(spec_, opt_, par_));
  if (params != nullptr) {
    const ParameterLayout whole(decoder_->spec());
    ORIGAMI_CHECK(params->layout().total_numel() == whole.total_numel(),
                  "generator: the parameters have ", params->layout().total_numel(),
                  " slots, the model ", spec_.str(), " needs ", whole.total_numel());
    for (const ParamEntry& e : decoder_->layout().entries()) {
      const Tensor src = ParameterLayout::slice_of(e, params->get(e.name));
      if (e.packed) {
        decoder_->packed_weights().set_dense_entry(e.name, src);
        continue;
      }
      Tensor dst = decoder_->params().get(e.name);
      dst.copy_from(src);
    }
  }
  if (pp_ > 1) {
    const int64_t rows = decoder_->options().seq, H = spec_.hidden;
    const int64_t local =
        decoder_->options().parallel.sequence_parallel ? rows / par_.layout->tp() : rows;
    recv_x_ = Tensor::zeros({local * H}, opt_.compute, opt_.device);
    send_x_ = Tensor::zeros({local * H}, opt_.compute, opt_.device);
    logits_x_ = Tensor::zeros({opt_.max_logit_rows, spec_.vocab}, DType::f32);
  }
}

ParameterBuffer& Generator::weights() {
  return decoder_->params();
}

void Generator::print_plan(std::ostream& os, bool detail) const {
  os << "model: " << spec_.str() << ", " << decoder_->layout().parameter_count()
     << (par_.groups ? " parameters on this rank, " : " parameters, ") << dtype_name(opt_.compute)
     << ", KV cache " << opt_.kv_blocks << " blocks x " << opt_.kv_block_size
     << " tokens = " << opt_.kv_blocks * opt_.kv_block_size << " tokens (" << opt_.max_batch
     << " x " << opt_.max_seq << " at most), " << opt_.max_step_tokens << " tokens per step\n";
  const LinearWeights& lw = opt_.weights;
  if (lw.packs()) {
    PackedWeights& pw = decoder_->packed_weights();
    os << "linear weights: " << pw.count() << " packed ("
       << (lw.mode == WeightMode::dense
               ? std::string("as quantized in the checkpoint")
               : std::string(weight_mode_name(lw.mode)) + " round-to-nearest, groups of " +
                     std::to_string(lw.group_size))
       << (lw.quantized.empty() ? "" : "; GPTQ from the checkpoint")
       << "), the rest in the memory plan\n";
  }
  decoder_->plan().print(os, "memory plan", detail);
}

std::string Generator::describe() const {
  std::ostringstream os;
  if (par_.groups) {
    const RankGroups& L = *par_.layout;
    os << "inference layout: world " << L.world_size() << ", attention tp " << L.tp() << " x pp "
       << L.pp() << " (x dp " << L.dp() << ": replicas run the same batch)";
    if (spec_.is_moe())
      os << ", experts etp " << L.etp() << " x ep " << L.ep() << " x edp " << L.edp()
         << (decoder_->options().parallel.sequence_parallel ? ", sequence parallel" : "");
    os << "\n" << par_.groups->summary();
  }
  print_plan(os);
  return os.str();
}

void Generator::set_expert_bias(int64_t moe_layer, std::span<const float> bias) {
  ORIGAMI_CHECK(moe_layer >= 0 && moe_layer < spec_.num_moe_layers(), "generator: MoE layer ",
                moe_layer, " out of range [0, ", spec_.num_moe_layers(), ")");
  ORIGAMI_CHECK(int64_t(bias.size()) == spec_.moe.num_experts, "generator: expert bias has ",
                bias.size(), " entries, the model has ", spec_.moe.num_experts, " experts");
  decoder_->expert_bias(moe_layer).assign(bias.begin(), bias.end());
}

void Generator::reset() {
  for (int64_t s = 0; s < opt_.max_batch; ++s)
    if (blocks_.contains(s)) blocks_.free(s);
}

void Generator::reset(int64_t slot) {
  ORIGAMI_CHECK(slot >= 0 && slot < opt_.max_batch, "generator: slot ", slot, " out of range [0, ",
                opt_.max_batch, ")");
  if (blocks_.contains(slot)) blocks_.free(slot);
}

int64_t Generator::length(int64_t slot) const {
  ORIGAMI_CHECK(slot >= 0 && slot < opt_.max_batch, "generator: slot ", slot, " out of range [0, ",
                opt_.max_batch, ")");
  return blocks_.contains(slot) ? blocks_.length(slot) : 0;
}

// ---- one forward pass over new tokens -----------------------------------------------------------

const StepBatch& Generator::describe_step(std::span<const SequenceChunk> chunks) {
  ORIGAMI_CHECK(!chunks.empty() && int64_t(chunks.size()) <= opt_.max_batch,
                "generator step: needs 1 to ", opt_.max_batch, " sequences, got ", chunks.size());
  int64_t T = 0, need = 0;
  for (size_t j = 0; j < chunks.size(); ++j) {
    const SequenceChunk& c = chunks[j];
    ORIGAMI_CHECK(c.slot >= 0 && c.slot < opt_.max_batch, "generator step: slot ", c.slot,
                  " out of range [0, ", opt_.max_batch, ")");
    for (size_t i = 0; i < j; ++i)
      ORIGAMI_CHECK(chunks[i].slot != c.slot, "generator step: slot ", c.slot, " given twice");
    const int64_t n = int64_t(c.tokens.size()), pos = length(c.slot);
    ORIGAMI_CHECK(n >= 1, "generator step: slot ", c.slot, " has no new tokens");
    ORIGAMI_CHECK(pos + n <= opt_.max_seq, "generator step: slot ", c.slot, " holds ", pos,
                  " tokens; ", n, " more exceed the context of ", opt_.max_seq, " tokens");
    for (int64_t id : c.tokens)
      ORIGAMI_CHECK(id >= 0 && id < spec_.vocab, "generator step: token id ", id,
                    " outside the vocabulary of ", spec_.vocab);
    need += blocks_.contains(c.slot) ? blocks_.blocks_to_grow(c.slot, n) : blocks_.blocks_for(n);
    T += n;
  }
  ORIGAMI_CHECK(T <= opt_.max_step_tokens, "generator step: ", T,
                " tokens exceed max_step_tokens = ", opt_.max_step_tokens);
  ORIGAMI_CHECK(need <= blocks_.free_blocks(), "generator step: the KV cache needs ", need,
                " more blocks of ", opt_.kv_block_size, " tokens, ", blocks_.free_blocks(),
                " are free: give more KV blocks (kv_blocks, now ", opt_.kv_blocks,
                ") or run fewer sequences at once");

  StepBatch& b = batch_;
  begin_step(b);
  std::vector<BlockCopy> copies;
  std::vector<int64_t> seqs;
  for (const SequenceChunk& c : chunks) {
    const int64_t n = int64_t(c.tokens.size()), pos = length(c.slot);
    if (blocks_.contains(c.slot))
      blocks_.append(c.slot, n, &copies);
    else
      blocks_.allocate(c.slot, n);
    add_to_step(b, blocks_, c.slot, c.tokens, pos, opt_.all_logits ? 0 : serve::kLastLogitsOnly);
    seqs.push_back(c.slot);
  }
  end_step(b, blocks_, seqs, copies);
  return b;
}

Tensor Generator::run_stage(int tag) {
  if (pp_ == 1) return decoder_->infer(batch_);
  Communicator& pp = *par_.groups->pp;
  const int64_t rows = decoder_->step_rows(batch_);
  const int64_t local =
      decoder_->options().parallel.sequence_parallel ? rows / par_.layout->tp() : rows;
  const int64_t n = local * spec_.hidden;
  Tensor x;
  if (pp_rank_ > 0) {
    x = recv_x_.narrow(0, 0, n);
    pp.recv(x, pp_rank_ - 1, tag);
  }
  Tensor out = decoder_->infer(batch_, x);
  if (pp_rank_ < pp_ - 1) {
    if (send_req_.valid()) send_req_.wait();  // the previous step's output has left
    Tensor y = send_x_.narrow(0, 0, n);
    y.copy_from(decoder_->chunk_output(0).view({n}));
    send_req_ = pp.isend(y, pp_rank_ + 1, tag);
  }
  return out;
}

Tensor Generator::step(std::span<const SequenceChunk> chunks) {
  describe_step(chunks);
  return run_step();
}

Tensor Generator::run(const StepBatch& batch) {
  batch_ = batch;
  return run_step();
}

Tensor Generator::run_step() {
  Tensor logits = run_stage(kActivationTag);
  if (pp_ == 1) return logits;
  // Every stage returns the logits: the last stage sends them to the others.
  const int64_t R = int64_t(batch_.logit_rows.size());
  Tensor all = pp_rank_ == pp_ - 1 ? logits : logits_x_.narrow(0, 0, R);
  par_.groups->pp->broadcast(all, pp_ - 1);
  return all;
}

// Fills the generator's weights (this rank's slices) from a training checkpoint (each parameter
// saved as "params/NAME" with its global shape, whatever layout it was trained with) and the
// expert biases it saved.
void load_training_checkpoint(const std::string& step_dir, Generator& gen) {
  CheckpointReader rd(step_dir);
  const ModelSpec& s = gen.spec();
  const std::string trained = rd.user_meta().value("model", std::string());
  ORIGAMI_CHECK(trained.empty() || trained == s.str(), "checkpoint '", step_dir,
                "' was trained for the model '", trained, "', the config describes '", s.str(),
                "': give the config the checkpoint was trained with");
  ParameterBuffer& w = gen.weights();
  for (const ParamEntry& e : w.layout().entries()) {
    const std::string key = "params/" + e.name;
    ORIGAMI_CHECK(rd.has(key), "checkpoint '", step_dir, "' has no tensor '", key,
                  "': it was not written by origami train for this model");
    ORIGAMI_CHECK(rd.global_shape(key) == e.global_shape, "checkpoint '", step_dir, "': '", key,
                  "' is ", shape_str(rd.global_shape(key)), ", the config's model has ",
                  shape_str(e.global_shape), ": give the config the checkpoint was trained with");
    if (e.packed) {  // read as f32, then quantized and packed
      Tensor slice = Tensor::empty(e.shape, DType::f32);
      rd.read(key, slice, e.slice_offset);
      gen.packed_weights().set_dense_entry(e.name, slice);
      continue;
    }
    Tensor dst = w.get(e.name);
    rd.read(key, dst, e.slice_offset);
  }
  int64_t m = 0;
  for (int64_t l = 0; l < s.layers && s.moe.expert_bias; ++l) {
    if (!s.is_moe_layer(l)) continue;
    const std::string name = "expert_bias/" + std::to_string(l);
    if (rd.has(name)) gen.set_expert_bias(m, rd.read_full(name).to_float_vector());
    ++m;
  }
  release_free_host_memory();  // the f32 slices of packed entries
}

// ---- the generation loop -------------------------------------------------------------------

// One group of sequences in flight through the pipeline (all of them without pipeline stages).
struct Generator::Microbatch {
  std::vector<int64_t> seqs;       // the prompts of this group
  std::vector<int64_t> chunk_seq;  // sequence of each chunk of the step in flight
  std::vector<int64_t> sampled;    // per chunk: the sampled token, or -1 (prompt not finished)
  bool in_flight = false;          // a step ran whose tokens are not yet applied
};

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
  std::vector<int64_t> done(static_cast<size_t>(B), 0);  // prompt tokens cached
  const int64_t V = spec_.vocab;
  const bool last_stage = pp_rank_ == pp_ - 1;

  // Applies sequence i's sampled token: history, callback, and whether it stops.
  auto take = [&](int64_t i, int64_t tok) {
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

  // Sequences in groups: several in flight keep the pipeline's stages busy.
  int M = par_.microbatches > 0 ? par_.microbatches : (pp_ > 1 ? std::max(2, pp_) : 1);
  M = int(std::min<int64_t>(M, B));
  std::vector<Microbatch> mbs(static_cast<size_t>(M));
  for (int64_t i = 0; i < B; ++i) mbs[size_t(i % M)].seqs.push_back(i);
  std::vector<SequenceChunk> chunks;
  chunks.reserve(static_cast<size_t>(B));
  Tensor token_msg = Tensor::zeros({B}, DType::i64);
  std::vector<Request> token_sends;  // of `sent`, the last stage's latest tokens
  Tensor sent;

  for (;;) {
    bool ran = false;
    for (Microbatch& mb : mbs) {
      if (mb.in_flight) {  // the tokens of this group's last step, from the last stage
        const int64_t n = int64_t(mb.chunk_seq.size());
        if (!last_stage) {
          Tensor t = token_msg.narrow(0, 0, n);
          par_.groups->pp->recv(t, pp_ - 1, kTokenTag);
          mb.sampled.assign(t.data_as<int64_t>(), t.data_as<int64_t>() + n);
        }
        for (int64_t j = 0; j < n; ++j)
          if (mb.sampled[size_t(j)] >= 0) take(mb.chunk_seq[size_t(j)], mb.sampled[size_t(j)]);
        mb.in_flight = false;
      }
      // The group's next step: prompt chunks while any prompt is unfinished, else one decode
      // token of every active sequence.
      chunks.clear();
      mb.chunk_seq.clear();
      int64_t budget = opt_.max_step_tokens;
      for (int64_t i : mb.seqs) {
        const auto& p = prompts[size_t(i)];
        const int64_t left = int64_t(p.size()) - done[size_t(i)];
        if (left == 0 || budget == 0) continue;
        const int64_t n = std::min(left, budget);
        chunks.push_back({i, std::span<const int64_t>(p.data() + done[size_t(i)], size_t(n))});
        mb.chunk_seq.push_back(i);
        budget -= n;
      }
      if (chunks.empty())
        for (int64_t i : mb.seqs) {
          if (!active[size_t(i)]) continue;
          chunks.push_back({i, std::span<const int64_t>(&results[size_t(i)].tokens.back(), 1)});
          mb.chunk_seq.push_back(i);
        }
      if (chunks.empty()) continue;
      ran = true;
      describe_step(chunks);
      for (const SequenceChunk& c : chunks)
        if (done[size_t(c.slot)] < int64_t(prompts[size_t(c.slot)].size()))
          done[size_t(c.slot)] += int64_t(c.tokens.size());
      const Tensor logits = run_stage(kActivationTag);
      mb.in_flight = true;
      if (!last_stage) continue;
      // Sample every chunk whose prompt is complete; tell the other stages.
      mb.sampled.assign(chunks.size(), -1);
      for (size_t j = 0; j < chunks.size(); ++j) {
        const int64_t i = mb.chunk_seq[j];
        if (done[size_t(i)] < int64_t(prompts[size_t(i)].size())) continue;
        const int64_t row = opt_.all_logits ? batch_.query_start[j + 1] - 1 : int64_t(j);
        const std::span<const float> lr(logits.data_as<float>() + row * V, size_t(V));
        mb.sampled[j] = samplers[size_t(i)].sample(lr, history[size_t(i)]);
      }
      if (pp_ > 1) {
        for (Request& r : token_sends) r.wait();
        token_sends.clear();
        sent = Tensor::from_vector_i64(mb.sampled, {int64_t(chunks.size())});
        for (int s = 0; s < pp_ - 1; ++s)
          token_sends.push_back(par_.groups->pp->isend(sent, s, kTokenTag));
      }
    }
    if (!ran) break;
  }
  for (Request& r : token_sends) r.wait();
  return results;
}

}  // namespace origami::models
