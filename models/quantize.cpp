// The whole-model quantizer behind `origami quantize` (see quantize.h).
#include "models/quantize.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <ostream>
#include <set>
#include <span>
#include <sstream>

#include "models/hf_import.h"
#include "models/linear_observer.h"
#include "runtime/dtype.h"
#include "runtime/error.h"
#include "runtime/safetensors.h"

namespace origami::models {

namespace fs = std::filesystem;

namespace {

std::string without_weight_suffix(const std::string& name) {
  const std::string suffix = ".weight";
  return name.ends_with(suffix) ? name.substr(0, name.size() - suffix.size()) : name;
}

// "model.layers.3.self_attn.q_proj" -> "self_attn.q_proj"
std::string short_name(const std::string& name, int64_t layer) {
  const std::string prefix = "model.layers." + std::to_string(layer) + ".";
  return name.starts_with(prefix) ? name.substr(prefix.size()) : name;
}

// ---- calibration: one layer's Hessians ------------------------------------------------------

// Accumulates the Hessians of the watched linears (one per distinct input: the names of one
// observe() call share it); calls for other linears are ignored.
class HessianCollector final : public LinearObserver {
 public:
  void watch(const std::vector<QuantTarget>& targets) {
    clear();
    for (const QuantTarget& t : targets) watched_.insert({t.param, t.expert});
  }
  void clear() {
    watched_.clear();
    of_.clear();
    accumulators_.clear();
  }
  void observe(const std::vector<std::string>& names, int64_t expert, const Tensor& x) override {
    std::vector<std::pair<std::string, int64_t>> keys;
    for (const std::string& n : names)
      if (watched_.count({n, expert})) keys.emplace_back(n, expert);
    if (keys.empty() || x.size(0) == 0) return;
    auto it = of_.find(keys[0]);
    size_t index;
    if (it == of_.end()) {
      index = accumulators_.size();
      accumulators_.emplace_back(x.size(1));
      for (const auto& k : keys) of_[k] = index;
    } else {
      index = it->second;
    }
    Tensor xc = x;
    if (!xc.device().is_cpu()) xc = xc.to(Device::cpu());
    if (xc.dtype() != DType::f32) xc = xc.to(DType::f32);
    if (!xc.is_contiguous()) xc = xc.contiguous();
    accumulators_[index].add(xc.data_as<float>(), xc.size(0), xc.size(1));
  }
  // The Hessian of a target's input, or null when no call carried it.
  const HessianAccumulator* find(const QuantTarget& t) const {
    auto it = of_.find({t.param, t.expert});
    return it == of_.end() ? nullptr : &accumulators_[it->second];
  }

 private:
  std::set<std::pair<std::string, int64_t>> watched_;
  std::map<std::pair<std::string, int64_t>, size_t> of_;
  std::vector<HessianAccumulator> accumulators_;
};

// sum_r d_r^T H d_r / sum_r w_r^T H w_r with d = w - w^: the relative error of the layer's outputs
// on the calibration inputs (H = 2 X X^T / N; its scale cancels).
double relative_output_error(const std::vector<double>& h, const float* w, const float* wq,
                             int64_t rows, int64_t cols) {
  double err = 0.0, base = 0.0;
#pragma omp parallel for schedule(static) reduction(+ : err, base) if (rows * cols * cols >= (1 << 22))
  for (int64_t r = 0; r < rows; ++r) {
    std::vector<double> d(static_cast<size_t>(cols)), v(static_cast<size_t>(cols));
    for (int64_t c = 0; c < cols; ++c) {
      v[size_t(c)] = w[r * cols + c];
      d[size_t(c)] = double(w[r * cols + c]) - double(wq[r * cols + c]);
    }
    for (int64_t i = 0; i < cols; ++i) {
      const double* hi = &h[size_t(i * cols)];
      double hd = 0.0, hv = 0.0;
      for (int64_t j = 0; j < cols; ++j) {
        hd += hi[j] * d[size_t(j)];
        hv += hi[j] * v[size_t(j)];
      }
      err += d[size_t(i)] * hd;
      base += v[size_t(i)] * hv;
    }
  }
  return base > 0 ? err / base : 0.0;
}

// ||w - w^||_F / ||w||_F (RTN has no calibration inputs).
double relative_weight_error(const float* w, const float* wq, int64_t n) {
  double err = 0.0, base = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    const double d = double(w[i]) - double(wq[i]);
    err += d * d;
    base += double(w[i]) * double(w[i]);
  }
  return base > 0 ? std::sqrt(err / base) : 0.0;
}

// The weight view of a target in the model's buffer: [rows, cols].
Tensor weight_view(ParameterBuffer& weights, const QuantTarget& t) {
  Tensor w = weights.get(t.param);
  return t.expert >= 0 ? w.select(0, t.expert) : w;
}

// Runs every window through the model once (prefill; the logits are not used).
void run_calibration(Generator& gen, const std::vector<std::vector<int64_t>>& windows) {
  const int64_t batch = gen.options().max_batch;
  std::vector<SequenceChunk> chunks;
  for (size_t i0 = 0; i0 < windows.size(); i0 += size_t(batch)) {
    gen.reset();
    chunks.clear();
    for (size_t i = i0; i < std::min(windows.size(), i0 + size_t(batch)); ++i)
      chunks.push_back({int64_t(i - i0), std::span<const int64_t>(windows[i])});
    gen.step(chunks);
  }
  gen.reset();
}

struct LinearReport {
  std::string name;   // short name
  std::string group;  // stacked experts: the stacked parameter's short name; else empty
  double error = 0.0;
  bool rtn_fallback = false;
};

void print_layer_report(std::ostream& log, int64_t layer, int64_t layers, double seconds, bool gptq,
                        int64_t tokens, const std::vector<LinearReport>& reports) {
  char buf[256];
  std::snprintf(buf, sizeof buf, "layer %lld/%lld  %.2f s  ", (long long)(layer + 1),
                (long long)layers, seconds);
  log << buf
      << (gptq ? "relative output error on " + std::to_string(tokens) + " calibration tokens:"
               : std::string("relative weight error (round-to-nearest):"))
      << "\n";
  std::string line;
  auto emit = [&](const std::string& item) {
    if (!line.empty() && line.size() + item.size() > 96) {
      log << "  " << line << "\n";
      line.clear();
    }
    line += (line.empty() ? "" : "  ") + item;
  };
  // Plain linears one by one; stacked experts summarised per weight.
  std::vector<std::string> groups;
  std::map<std::string, std::vector<const LinearReport*>> by_group;
  for (const LinearReport& r : reports) {
    if (r.group.empty()) {
      std::snprintf(buf, sizeof buf, "%s %.3e", r.name.c_str(), r.error);
      emit(buf);
    } else {
      if (!by_group.count(r.group)) groups.push_back(r.group);
      by_group[r.group].push_back(&r);
    }
  }
  if (!line.empty()) log << "  " << line << "\n";
  line.clear();
  std::vector<std::string> fallbacks;
  for (const std::string& g : groups) {
    double sum = 0.0, worst = 0.0;
    int64_t n = 0;
    for (const LinearReport* r : by_group[g]) {
      if (r->rtn_fallback) {
        fallbacks.push_back(r->name);
        continue;
      }
      sum += r->error;
      worst = std::max(worst, r->error);
      ++n;
    }
    std::snprintf(buf, sizeof buf, "  %s: mean %.3e, max %.3e over %lld experts", g.c_str(),
                  n > 0 ? sum / double(n) : 0.0, worst, (long long)n);
    log << buf << "\n";
  }
  if (!fallbacks.empty()) {
    log << "  RTN fallback (no calibration token was routed to these experts):";
    for (const std::string& f : fallbacks) log << " " << f;
    log << "\n";
  }
  log.flush();
}

}  // namespace

// ---- targets and checks -------------------------------------------------------------------

std::vector<QuantTarget> quantization_targets(const ParameterLayout& layout, int64_t layer) {
  const LayerParamNames& n = layout.names().layers.at(size_t(layer));
  std::vector<QuantTarget> out;
  for (const std::string* p :
       {&n.q, &n.k, &n.v, &n.o, &n.mlp_gate, &n.mlp_up, &n.mlp_down, &n.expert_gate, &n.expert_up,
        &n.expert_down, &n.shared_gate, &n.shared_up, &n.shared_down}) {
    if (p->empty() || !layout.has(*p)) continue;
    const ParamEntry& e = layout.entry(*p);
    if (e.is_expert()) {
      for (int64_t x = 0; x < e.experts; ++x) {
        const int64_t global = e.slice_offset.empty() ? x : e.slice_offset[0] + x;
        out.push_back(
            {*p, x, without_weight_suffix(hf_expert_name(*p, global)), e.shape[1], e.shape[2]});
      }
    } else {
      out.push_back({*p, -1, without_weight_suffix(*p), e.shape[0], e.shape[1]});
    }
  }
  return out;
}

void check_quantizable(const ModelSpec& spec, const QuantizeOptions& opt) {
  const QuantConfig& c = opt.config;
  ORIGAMI_CHECK(gptq_packable_bits(c.bits), "--bits ", c.bits,
                " is not supported: the GPTQ format packs 2, 3, 4 or 8 bits");
  ORIGAMI_CHECK(c.group_size == -1 || c.group_size > 0, "--group-size ", c.group_size,
                " is not valid: give a positive number of input columns, or -1 for one group");
  ORIGAMI_CHECK(c.percdamp > 0, "--damp must be > 0 (a fraction of the mean Hessian diagonal; ",
                "0.01 usually), got ", c.percdamp);
  ORIGAMI_CHECK(opt.gptq || !c.act_order,
                "--act-order orders columns by the calibration Hessian: it needs --method gptq");
  try {
    (void)hf_config_json(spec);
  } catch (const Error& e) {
    ORIGAMI_FAIL("unsupported model (", spec.str(), "): ", e.what(),
                 "; the GPTQ folder is a Hugging Face model");
  }
  const ParameterLayout layout(spec);
  const int64_t unit = gptq_pack_multiple(c.bits);
  for (int64_t l = 0; l < spec.layers; ++l)
    for (const QuantTarget& t : quantization_targets(layout, l)) {
      ORIGAMI_CHECK(t.cols % unit == 0 && t.rows % unit == 0, "unsupported model: ", t.name,
                    " is [", t.rows, ", ", t.cols, "] (out, in); ", c.bits,
                    "-bit GPTQ packing needs both widths to be multiples of ", unit);
      ORIGAMI_CHECK(c.group_size == -1 || t.cols % c.group_size == 0, "--group-size ", c.group_size,
                    " does not divide the input width ", t.cols, " of ", t.name,
                    ": give a group size that divides every linear's input width, or -1");
    }
}

std::vector<std::vector<int64_t>> calibration_windows(const TokenStream& stream, int64_t samples,
                                                      int64_t seq_len, uint64_t seed) {
  ORIGAMI_CHECK(samples >= 1 && seq_len >= 1, "calibration needs --samples >= 1 and --seq-len ",
                ">= 1, got ", samples, " and ", seq_len);
  const int64_t n = stream.size();
  ORIGAMI_CHECK(n >= seq_len, "the calibration text has ", n,
                " tokens, fewer than one window of --seq-len ", seq_len,
                ": give more text or a shorter --seq-len");
  SplitMix64 rng(seed);
  std::vector<std::vector<int64_t>> out(static_cast<size_t>(samples));
  for (auto& w : out) {
    const int64_t start = int64_t(rng.next() % uint64_t(n - seq_len + 1));
    w.resize(size_t(seq_len));
    for (int64_t i = 0; i < seq_len; ++i) w[size_t(i)] = int64_t(stream[start + i]);
  }
  return out;
}

GeneratorOptions calibration_generator_options(const ModelSpec& spec, int64_t samples,
                                               int64_t seq_len, const QuantizeOptions& opt) {
  ORIGAMI_CHECK(samples >= 1 && seq_len >= 1,
                "calibration needs --samples >= 1 and --seq-len >= 1, got ", samples, " and ",
                seq_len);
  ORIGAMI_CHECK(spec.max_seq_len <= 0 || seq_len <= spec.max_seq_len, "--seq-len ", seq_len,
                " is longer than the model's context of ", spec.max_seq_len, " tokens");
  GeneratorOptions go;
  go.max_batch = std::clamp<int64_t>(opt.batch_tokens / seq_len, 1, std::max<int64_t>(samples, 1));
  go.max_seq = seq_len;
  go.max_step_tokens = go.max_batch * seq_len;
  go.compute = DType::f32;
  go.device = Device::cpu();
  return go;
}

// ---- the quantizer ----------------------------------------------------------------------------

PackedLinears quantize_model(Generator& gen, const std::vector<std::vector<int64_t>>& windows,
                             const QuantizeOptions& opt, std::ostream& log) {
  using Clock = std::chrono::steady_clock;
  const ModelSpec& spec = gen.spec();
  ParameterBuffer& weights = gen.weights();
  const ParameterLayout& layout = weights.layout();
  ORIGAMI_CHECK(layout.shard().whole(), "quantize: the generator must hold the whole model");
  ORIGAMI_CHECK(weights.dtype() == DType::f32 && weights.device().is_cpu(),
                "quantize: the generator must run in f32 on the CPU");
  ORIGAMI_CHECK(!opt.gptq || !windows.empty(), "quantize: GPTQ needs calibration windows");
  check_quantizable(spec, opt);
  int64_t tokens = 0;
  for (const auto& w : windows) tokens += int64_t(w.size());

  PackedLinears packed;
  HessianCollector collector;
  for (int64_t l = 0; l < spec.layers; ++l) {
    const auto t0 = Clock::now();
    const std::vector<QuantTarget> targets = quantization_targets(layout, l);
    if (opt.gptq) {
      // The layer's inputs, with the layers before it already quantized.
      collector.watch(targets);
      gen.set_linear_observer(&collector);
      try {
        run_calibration(gen, windows);
      } catch (...) {
        gen.set_linear_observer(nullptr);
        throw;
      }
      gen.set_linear_observer(nullptr);
    }
    std::vector<LinearReport> reports;
    for (const QuantTarget& t : targets) {
      Tensor view = weight_view(weights, t);
      const std::vector<float> w = view.to_float_vector();
      const HessianAccumulator* h = opt.gptq ? collector.find(t) : nullptr;
      LinearReport rep;
      rep.name = short_name(t.name, l);
      if (t.expert >= 0) rep.group = short_name(without_weight_suffix(t.param), l);
      rep.rtn_fallback = opt.gptq && (!h || h->tokens() == 0);
      QuantizedLinear q = h && h->tokens() > 0
                              ? gptq_quantize(w.data(), t.rows, t.cols, *h, opt.config)
                              : rtn_quantize(w.data(), t.rows, t.cols, opt.config);
      // The checkpoint stores fp16 scales: the model goes on with exactly what it will hold.
      for (float& s : q.scales) s = f16_to_f32(f32_to_f16(s));
      const std::vector<float> wq = q.dequantize();
      rep.error = h && h->tokens() > 0
                      ? relative_output_error(h->hessian(), w.data(), wq.data(), t.rows, t.cols)
                      : relative_weight_error(w.data(), wq.data(), t.rows * t.cols);
      view.copy_from(Tensor::from_vector(wq, {t.rows, t.cols}));
      packed.emplace_back(t.name, pack_gptq(q));
      reports.push_back(rep);
    }
    collector.clear();
    const double seconds = std::chrono::duration<double>(Clock::now() - t0).count();
    print_layer_report(log, l, spec.layers, seconds, opt.gptq, tokens, reports);
  }
  return packed;
}

// ---- output -------------------------------------------------------------------------------------

namespace {

fs::path normalized(const std::string& dir) {
  fs::path p = fs::absolute(dir).lexically_normal();
  if (!p.has_filename()) p = p.parent_path();
  return p;
}

void write_text(const fs::path& file, const std::string& text) {
  std::ofstream out(file);
  out << text;
  out.close();
  ORIGAMI_CHECK(out.good(), "cannot write ", file.string());
}

const char* torch_dtype_name(DType d) {
  return d == DType::f16 ? "float16" : d == DType::bf16 ? "bfloat16" : "float32";
}

// config.json: the model's, with torch_dtype and (for the GPTQ folder) quantization_config.
std::string config_text(const std::string& base, DType dtype, const std::string& quant_json) {
  nlohmann::ordered_json j = nlohmann::ordered_json::parse(base);
  j.erase("quantization_config");
  j["torch_dtype"] = torch_dtype_name(dtype);
  if (!quant_json.empty()) j["quantization_config"] = nlohmann::ordered_json::parse(quant_json);
  return j.dump(2) + "\n";
}

// The tokenizer's files (and the model's generation_config.json) into `dst`.
void copy_tokenizer_files(const QuantizedOutput& out, const fs::path& dst) {
  if (out.tokenizer == "byte") {
    // The first line names the tokenizer for origami (launcher/model_source.cpp reads it).
    write_text(dst / "origami_tokenizer.txt",
               "byte\nThis model uses origami's byte tokenizer (ids 0-255: the bytes, 256: BOS, "
               "257: EOS), which has no Hugging Face tokenizer files; origami reads the first "
               "line above (or give --tokenizer byte).\n");
  } else if (!out.tokenizer.empty()) {
    const fs::path src(out.tokenizer);
    std::vector<std::string> names = {"tokenizer_config.json", "special_tokens_map.json",
                                      "chat_template.jinja"};
    fs::path folder = src;
    if (fs::is_directory(src)) {
      names.insert(names.end(), {"tokenizer.json", "tokenizer.model", "added_tokens.json"});
    } else {
      folder = src.parent_path();
      const std::string as = src.extension() == ".model" ? "tokenizer.model" : "tokenizer.json";
      fs::copy_file(src, dst / as, fs::copy_options::overwrite_existing);
    }
    for (const std::string& n : names)
      if (fs::is_regular_file(folder / n))
        fs::copy_file(folder / n, dst / n, fs::copy_options::overwrite_existing);
  }
  if (!out.model_dir.empty() &&
      fs::is_regular_file(fs::path(out.model_dir) / "generation_config.json"))
    fs::copy_file(fs::path(out.model_dir) / "generation_config.json",
                  dst / "generation_config.json", fs::copy_options::overwrite_existing);
}

// Writes a folder through `fill(tmp)` into a temporary sibling, then renames it to `dir`
// (replacing what was there; check_output_dir said whether that is allowed).
template <typename Fill>
void write_folder_atomically(const std::string& dir, const Fill& fill) {
  const fs::path target = normalized(dir);
  const fs::path parent = target.parent_path();
  fs::create_directories(parent);
  // ".NAME.tmp-PID" and ".NAME.old-PID" beside it (appended piece by piece: GCC 12 warns
  // wrongly about "." + std::string).
  std::string stem = ".";
  stem += target.filename().string();
  const std::string tag = std::to_string(::getpid());
  const fs::path tmp = parent / (stem + ".tmp-" + tag);
  fs::remove_all(tmp);
  fs::create_directory(tmp);
  try {
    fill(tmp);
    if (fs::exists(target)) {
      const fs::path old = parent / (stem + ".old-" + tag);
      fs::rename(target, old);
      fs::rename(tmp, target);
      fs::remove_all(old);
    } else {
      fs::rename(tmp, target);
    }
  } catch (const fs::filesystem_error& e) {
    std::error_code ec;
    fs::remove_all(tmp, ec);
    ORIGAMI_FAIL("writing ", target.string(), ": ", e.what());
  } catch (...) {
    std::error_code ec;
    fs::remove_all(tmp, ec);
    throw;
  }
}

}  // namespace

void check_output_dir(const std::string& dir, bool overwrite, const std::string& what) {
  ORIGAMI_CHECK(!dir.empty(), what, ": no folder given");
  const fs::path p = normalized(dir);
  if (!fs::exists(p)) return;
  ORIGAMI_CHECK(fs::is_directory(p), what, " '", dir, "' exists and is not a folder");
  ORIGAMI_CHECK(overwrite || fs::is_empty(p), what, " '", dir,
                "' exists and is not empty: give a new folder, or --overwrite to replace it");
}

void write_quantized_model(const QuantizedOutput& out, const ModelSpec& spec,
                           const ParameterBuffer& weights, const PackedLinears& packed,
                           const QuantizeOptions& opt) {
  ORIGAMI_CHECK(out.dtype == DType::f16 || out.dtype == DType::bf16 || out.dtype == DType::f32,
                "quantize: the unquantized tensors are written as f16, bf16 or f32, not ",
                dtype_name(out.dtype));
  ORIGAMI_CHECK(
      out.dequantized_dir.empty() || normalized(out.dir) != normalized(out.dequantized_dir),
      "the GPTQ folder and --dequantized must be different folders");
  if (!out.model_dir.empty())
    for (const std::string* d : {&out.dir, &out.dequantized_dir})
      ORIGAMI_CHECK(d->empty() || normalized(*d) != normalized(out.model_dir),
                    "the output folder '", *d, "' is the model folder: give another one");
  GptqFormat format;
  format.bits = opt.config.bits;
  format.group_size = opt.config.group_size;
  format.desc_act = opt.config.act_order;
  format.sym = opt.config.sym;
  format.v2 = false;
  const std::string quant_json = gptq_quantization_config_json(format, opt.config.percdamp);
  constexpr size_t kShardBytes = size_t(5) << 30;

  // The tensors: packed ones in place of the quantized weights, the rest as out.dtype.
  std::map<std::string, const GptqTensors*> by_name;
  for (const auto& [name, t] : packed) by_name[name] = &t;
  NamedTensors tensors;
  size_t used = 0;
  for (const auto& [name, t] : to_hf_tensors(weights)) {
    auto it = by_name.find(without_weight_suffix(name));
    if (name.ends_with(".weight") && it != by_name.end()) {
      const GptqTensors& g = *it->second;
      tensors.emplace_back(it->first + ".qweight", g.qweight);
      tensors.emplace_back(it->first + ".qzeros", g.qzeros);
      tensors.emplace_back(it->first + ".scales", g.scales);
      tensors.emplace_back(it->first + ".g_idx", g.g_idx);
      ++used;
    } else {
      tensors.emplace_back(name, t.to(Device::cpu()).to(out.dtype));
    }
  }
  ORIGAMI_CHECK(used == packed.size(), "quantize: ", packed.size() - used,
                " packed linears name no weight of the model");
  write_folder_atomically(out.dir, [&](const fs::path& tmp) {
    write_text(tmp / "config.json", config_text(out.base_config_json, out.dtype, quant_json));
    write_safetensors_sharded(tmp.string(), tensors, kShardBytes, {{"format", "pt"}});
    copy_tokenizer_files(out, tmp);
  });
  if (!out.dequantized_dir.empty())
    write_folder_atomically(out.dequantized_dir, [&](const fs::path& tmp) {
      export_hf(tmp.string(), spec, weights, DType::f32, kShardBytes);
      write_text(tmp / "config.json", config_text(out.base_config_json, DType::f32, ""));
      copy_tokenizer_files(out, tmp);
    });
}

}  // namespace origami::models
