#include "models/hf_import.h"

#include <optional>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <sstream>

#include "runtime/device.h"
#include "runtime/error.h"

namespace origami::models {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

const char* kLlama = "LlamaForCausalLM";
const char* kMixtral = "MixtralForCausalLM";
const char* kQwen2Moe = "Qwen2MoeForCausalLM";

struct ConfigReader {
  const json& j;
  const std::string& label;
  bool has(const char* key) const { return j.contains(key) && !j[key].is_null(); }
  template <typename T>
  T get(const char* key, T fallback) const {
    if (!has(key)) return fallback;
    try {
      return j[key].get<T>();
    } catch (const json::exception& e) {
      ORIGAMI_FAIL(label, ": field \"", key, "\" has the wrong type: ", e.what());
    }
  }
  template <typename T>
  T need(const char* key) const {
    ORIGAMI_CHECK(has(key), label, ": missing field \"", key, "\"");
    return get<T>(key, T{});
  }
};

}  // namespace

ModelSpec spec_from_hf_config_text(const std::string& text, const std::string& label) {
  json j;
  try {
    j = json::parse(text);
  } catch (const json::exception& e) {
    ORIGAMI_FAIL(label, ": not valid JSON: ", e.what());
  }
  ORIGAMI_CHECK(j.is_object(), label, ": expected a JSON object");
  ConfigReader c{j, label};
  std::string arch;
  if (c.has("architectures") && j["architectures"].is_array() && !j["architectures"].empty())
    arch = j["architectures"][0].get<std::string>();
  else if (c.has("model_type")) {
    const std::string t = j["model_type"].get<std::string>();
    arch = t == "llama" ? kLlama : t == "mixtral" ? kMixtral : t == "qwen2_moe" ? kQwen2Moe : t;
  }
  ModelSpec s;
  if (arch == kLlama)
    s.family = Family::llama;
  else if (arch == kMixtral)
    s.family = Family::mixtral;
  else if (arch == kQwen2Moe)
    s.family = Family::qwen2_moe;
  else
    ORIGAMI_FAIL(label, ": architecture '", arch.empty() ? "(none)" : arch,
                 "' is not supported; supported: LlamaForCausalLM, MixtralForCausalLM, "
                 "Qwen2MoeForCausalLM");

  s.vocab = c.need<int64_t>("vocab_size");
  s.hidden = c.need<int64_t>("hidden_size");
  s.layers = c.need<int64_t>("num_hidden_layers");
  s.heads = c.need<int64_t>("num_attention_heads");
  s.kv_heads = c.get<int64_t>("num_key_value_heads", s.heads);
  s.head_dim = c.get<int64_t>("head_dim", s.heads > 0 ? s.hidden / s.heads : 0);
  s.ffn = c.get<int64_t>("intermediate_size", 0);
  s.rms_eps = c.get<double>("rms_norm_eps", 1e-6);
  s.tie_embeddings = c.get<bool>("tie_word_embeddings", false);
  s.max_seq_len = c.get<int64_t>("max_position_embeddings", 0);
  s.init_std = c.get<double>("initializer_range", 0.02);
  s.rope.head_dim = s.head_dim;
  s.rope.theta = c.get<double>("rope_theta", s.family == Family::mixtral ? 1e6 : 10000.0);
  if (c.has("rope_scaling")) {
    const json& r = j["rope_scaling"];
    ORIGAMI_CHECK(r.is_object(), label, ": rope_scaling must be an object or null");
    const std::string type = r.contains("rope_type")
                                 ? r["rope_type"].get<std::string>()
                                 : (r.contains("type") ? r["type"].get<std::string>() : "");
    ORIGAMI_CHECK(type == "llama3" || type == "default", label, ": rope_scaling type '", type,
                  "' is not supported (only \"llama3\")");
    if (type == "llama3") {
      ConfigReader rc{r, label};
      s.rope.llama3_factor = rc.need<double>("factor");
      s.rope.llama3_low_freq_factor = rc.get<double>("low_freq_factor", 1.0);
      s.rope.llama3_high_freq_factor = rc.get<double>("high_freq_factor", 4.0);
      s.rope.llama3_original_max_position =
          rc.get<int64_t>("original_max_position_embeddings", 8192);
    }
  }
  ORIGAMI_CHECK(c.get<std::string>("hidden_act", "silu") == "silu", label, ": hidden_act '",
                c.get<std::string>("hidden_act", ""), "' is not supported (only silu)");

  if (s.family == Family::llama) {
    ORIGAMI_CHECK(!c.get<bool>("attention_bias", false), label,
                  ": attention_bias=true (biases on q, k, v and o) is not supported");
    ORIGAMI_CHECK(!c.get<bool>("mlp_bias", false), label, ": mlp_bias=true is not supported");
  } else if (s.family == Family::mixtral) {
    s.moe.num_experts = c.need<int64_t>("num_local_experts");
    s.moe.top_k = c.get<int64_t>("num_experts_per_tok", 2);
    s.moe.expert_ffn = s.ffn;
    s.moe.norm_topk_prob = true;
    s.moe.aux_loss_coeff = c.get<bool>("output_router_logits", false)
                               ? c.get<double>("router_aux_loss_coef", 0.001)
                               : 0.0;
    s.sliding_window = c.get<int64_t>("sliding_window", 0);
    ORIGAMI_CHECK(c.get<double>("router_jitter_noise", 0.0) == 0.0, label,
                  ": router_jitter_noise is not supported");
  } else {  // qwen2_moe
    s.qkv_bias = true;
    s.moe.num_experts = c.need<int64_t>("num_experts");
    s.moe.top_k = c.get<int64_t>("num_experts_per_tok", 4);
    s.moe.expert_ffn = c.need<int64_t>("moe_intermediate_size");
    s.moe.shared_expert_ffn = c.get<int64_t>("shared_expert_intermediate_size", 0);
    s.moe.shared_expert_gate = s.moe.shared_expert_ffn > 0;
    s.moe.norm_topk_prob = c.get<bool>("norm_topk_prob", false);
    s.moe.aux_loss_coeff = c.get<bool>("output_router_logits", false)
                               ? c.get<double>("router_aux_loss_coef", 0.001)
                               : 0.0;
    s.moe.sparse_step = c.get<int64_t>("decoder_sparse_step", 1);
    s.moe.mlp_only_layers = c.get<std::vector<int64_t>>("mlp_only_layers", {});
    ORIGAMI_CHECK(!c.get<bool>("use_sliding_window", false), label,
                  ": use_sliding_window=true is not supported for Qwen2-MoE");
  }
  try {
    s.validate();
  } catch (const Error& e) {
    ORIGAMI_FAIL(label, ": ", e.what());
  }
  return s;
}

ModelSpec spec_from_hf_config(const std::string& path) {
  std::string file = path;
  if (fs::is_directory(path)) file = (fs::path(path) / "config.json").string();
  std::ifstream in(file);
  ORIGAMI_CHECK(in.good(), "cannot read Hugging Face config ", file,
                fs::is_directory(path) ? " (the folder has no config.json)" : "");
  std::stringstream ss;
  ss << in.rdbuf();
  return spec_from_hf_config_text(ss.str(), file);
}

std::string hf_config_json(const ModelSpec& s, DType dtype) {
  json j;
  const char* arch = s.family == Family::llama       ? kLlama
                     : s.family == Family::mixtral   ? kMixtral
                     : s.family == Family::qwen2_moe ? kQwen2Moe
                                                     : nullptr;
  ORIGAMI_CHECK(arch, "hf export: family ", family_name(s.family),
                " has no Hugging Face architecture");
  ORIGAMI_CHECK(s.family != Family::llama || !s.qkv_bias,
                "hf export: Llama with q/k/v biases "
                "has no Hugging Face equivalent");
  j["architectures"] = {arch};
  j["model_type"] = family_name(s.family);
  j["vocab_size"] = s.vocab;
  j["hidden_size"] = s.hidden;
  j["num_hidden_layers"] = s.layers;
  j["num_attention_heads"] = s.heads;
  j["num_key_value_heads"] = s.kv_heads;
  if (s.head_dim * s.heads != s.hidden) j["head_dim"] = s.head_dim;
  j["intermediate_size"] = s.family == Family::mixtral ? s.moe.expert_ffn : s.ffn;
  j["hidden_act"] = "silu";
  j["rms_norm_eps"] = s.rms_eps;
  j["rope_theta"] = s.rope.theta;
  j["tie_word_embeddings"] = s.tie_embeddings;
  j["max_position_embeddings"] = s.max_seq_len > 0 ? s.max_seq_len : 4096;
  j["initializer_range"] = s.init_std;
  j["torch_dtype"] = dtype == DType::bf16  ? "bfloat16"
                     : dtype == DType::f16 ? "float16"
                                           : "float32";
  j["rope_scaling"] = nullptr;
  if (s.rope.llama3_factor > 0)
    j["rope_scaling"] = {{"rope_type", "llama3"},
                         {"factor", s.rope.llama3_factor},
                         {"low_freq_factor", s.rope.llama3_low_freq_factor},
                         {"high_freq_factor", s.rope.llama3_high_freq_factor},
                         {"original_max_position_embeddings", s.rope.llama3_original_max_position}};
  if (s.family == Family::mixtral) {
    j["num_local_experts"] = s.moe.num_experts;
    j["num_experts_per_tok"] = s.moe.top_k;
    j["output_router_logits"] = s.moe.aux_loss_coeff > 0;
    j["router_aux_loss_coef"] = s.moe.aux_loss_coeff > 0 ? s.moe.aux_loss_coeff : 0.001;
    j["sliding_window"] = s.sliding_window > 0 ? json(s.sliding_window) : json(nullptr);
  } else if (s.family == Family::qwen2_moe) {
    j["num_experts"] = s.moe.num_experts;
    j["num_experts_per_tok"] = s.moe.top_k;
    j["moe_intermediate_size"] = s.moe.expert_ffn;
    j["shared_expert_intermediate_size"] = s.moe.shared_expert_ffn;
    j["norm_topk_prob"] = s.moe.norm_topk_prob;
    j["output_router_logits"] = s.moe.aux_loss_coeff > 0;
    j["router_aux_loss_coef"] = s.moe.aux_loss_coeff > 0 ? s.moe.aux_loss_coeff : 0.001;
    j["decoder_sparse_step"] = s.moe.sparse_step;
    j["mlp_only_layers"] = s.moe.mlp_only_layers;
    j["use_sliding_window"] = false;
  }
  return j.dump(2) + "\n";
}

std::string hf_expert_name(const std::string& stacked, int64_t e) {
  const std::string key = ".experts.";
  const size_t p = stacked.find(key);
  ORIGAMI_CHECK(p != std::string::npos,
                "internal: stacked expert name without .experts.: ", stacked);
  return stacked.substr(0, p + key.size()) + std::to_string(e) + "." +
         stacked.substr(p + key.size());
}

namespace {

// Where each Hugging Face name goes: a parameter, and an expert index (-1: the whole tensor).
struct Target {
  const ParamEntry* entry;
  int64_t expert;
};
std::map<std::string, Target> hf_targets(const ParameterLayout& layout) {
  std::map<std::string, Target> m;
  for (const ParamEntry& e : layout.entries()) {
    if (e.experts == 0)
      m[e.name] = {&e, -1};
    else
      for (int64_t x = 0; x < e.experts; ++x)  // expert x of this rank: global slice_offset[0] + x
        m[hf_expert_name(e.name, e.slice_offset.empty() ? x : e.slice_offset[0] + x)] = {&e, x};
  }
  return m;
}

// A CPU tensor of the checkpoint entry; F64 is converted to f32 here (origami has no f64).
Tensor read_tensor(const SafetensorsFile& f, const std::string& name) {
  const SafetensorsInfo& info = f.info(name);
  if (info.dtype) return f.tensor(name);
  ORIGAMI_CHECK(info.dtype_name == "F64", f.path(), ": tensor ", name, " has dtype ",
                info.dtype_name, "; expected F32, BF16, F16 or F64");
  std::span<const std::byte> bytes = f.bytes(name);
  Tensor out = Tensor::empty(info.shape, DType::f32);
  float* o = out.data_as<float>();
  for (int64_t i = 0; i < out.numel(); ++i) {
    double d;
    std::memcpy(&d, bytes.data() + size_t(i) * 8, 8);
    o[i] = float(d);
  }
  return out;
}

}  // namespace

NamedTensors to_hf_tensors(const ParameterBuffer& params) {
  NamedTensors out;
  for (const ParamEntry& e : params.layout().entries()) {
    const Tensor& t = params.get(e.name);
    if (e.experts == 0)
      out.emplace_back(e.name, t);
    else
      for (int64_t x = 0; x < e.experts; ++x)
        out.emplace_back(hf_expert_name(e.name, x), t.select(0, x));
  }
  return out;
}

namespace {
constexpr const char* kGptqParts[] = {".qweight", ".qzeros", ".scales", ".g_idx"};

// "X.qweight" (or .qzeros, .scales, .g_idx) -> "X.weight"; empty for other names.
std::string gptq_base(const std::string& name) {
  for (const char* part : kGptqParts) {
    const std::string p = part;
    if (name.size() > p.size() && name.ends_with(p))
      return name.substr(0, name.size() - p.size()) + ".weight";
  }
  return {};
}

// The quantization_config of the config.json beside a checkpoint path (folder, index or file).
GptqFormat gptq_format_near(const std::string& path) {
  namespace fs = std::filesystem;
  const fs::path dir = fs::is_directory(path) ? fs::path(path) : fs::path(path).parent_path();
  const fs::path config = dir / "config.json";
  ORIGAMI_CHECK(fs::exists(config), path, ": holds GPTQ tensors (.qweight) but there is no ",
                config.string(), " with their quantization_config");
  std::ifstream in(config);
  std::stringstream text;
  text << in.rdbuf();
  return gptq_format_from_config_text(text.str(), config.string());
}
}  // namespace

std::set<std::string> gptq_quantized_names(const std::string& path, const ModelSpec& spec) {
  const SafetensorsIndex index = SafetensorsIndex::open(path);
  const ParameterLayout whole(spec);
  const std::map<std::string, Target> targets = hf_targets(whole);
  std::set<std::string> out;
  for (const std::string& name : index.names()) {
    if (!name.ends_with(".qweight")) continue;
    auto it = targets.find(gptq_base(name));
    if (it != targets.end()) out.insert(it->second.entry->name);
  }
  return out;
}

void load_hf_weights(const std::string& path, ParameterBuffer& params, PackedWeights* packed) {
  const SafetensorsIndex index = SafetensorsIndex::open(path);
  const ParameterLayout& layout = params.layout();
  const std::map<std::string, Target> targets = hf_targets(layout);
  const bool tied = layout.names().lm_head.empty();
  std::optional<GptqFormat> gptq;

  std::vector<std::string> unexpected, mismatched;
  std::set<std::string> loaded;
  for (const std::string& name : index.names()) {
    const std::string base = gptq_base(name);
    auto it = targets.find(base.empty() ? name : base);
    if (it == targets.end()) {
      // A rank holding part of the model skips the tensors of other ranks (other layers,
      // experts); a whole model must use every tensor.
      const bool ignorable = !layout.shard().whole() || name.ends_with("rotary_emb.inv_freq") ||
                             (tied && name == "lm_head.weight");
      if (!ignorable) unexpected.push_back(name);
      continue;
    }
    const Target& tg = it->second;
    if (!base.empty()) {  // a GPTQ-quantized linear: read its four tensors at its .qweight
      if (!name.ends_with(".qweight")) continue;
      ORIGAMI_CHECK(packed && tg.entry->packed, path, ": ", name,
                    " is GPTQ-quantized but the model was built to hold '", tg.entry->name,
                    "' dense (build it with the checkpoint's gptq_quantized_names)");
      if (!gptq) gptq = gptq_format_near(path);
      const std::string stem = name.substr(0, name.size() - std::string(".qweight").size());
      ORIGAMI_CHECK(index.has(stem + ".qzeros") && index.has(stem + ".scales"), path, ": ", name,
                    " has no ", stem, ".qzeros or ", stem, ".scales");
      const Tensor g_idx = index.has(stem + ".g_idx") ? index.tensor(stem + ".g_idx") : Tensor();
      const QuantizedLinear q = unpack_gptq(index.tensor(name), index.tensor(stem + ".qzeros"),
                                            index.tensor(stem + ".scales"), g_idx, gptq->bits,
                                            gptq->group_size, gptq->v2, stem);
      packed->set_quantized(tg.entry->name, tg.expert, q);
      loaded.insert(base);
      continue;
    }
    Shape want = tg.entry->global_shape;  // the whole tensor; this rank keeps its slice
    if (tg.expert >= 0) want.erase(want.begin());
    const SafetensorsInfo& info = index.info(name);
    if (info.shape != want) {
      mismatched.push_back(name + " has shape " + shape_str(info.shape) + ", the model expects " +
                           shape_str(want));
      continue;
    }
    Tensor src = read_tensor(index.file_for(name), name);
    const int skip = tg.expert >= 0 ? 1 : 0;  // the entry's dims past the stacked expert dim
    for (size_t d = 0; d < src.shape().size(); ++d) {
      const int64_t have = tg.entry->shape[d + skip], whole = tg.entry->global_shape[d + skip];
      if (have != whole) src = src.narrow(int(d), tg.entry->slice_offset[d + skip], have);
    }
    if (!src.is_contiguous()) src = src.contiguous();
    if (tg.entry->packed) {
      ORIGAMI_CHECK(packed, "load_hf_weights: '", tg.entry->name,
                    "' is packed: pass the decoder's PackedWeights");
      packed->set_dense(tg.entry->name, tg.expert, src);
      loaded.insert(name);
      continue;
    }
    Tensor dst = params.get(tg.entry->name);
    if (tg.expert >= 0) dst = dst.select(0, tg.expert);
    if (src.dtype() != dst.dtype() && !dst.device().is_cpu()) src = src.to(dst.dtype());
    dst.copy_from(src);
    loaded.insert(name);
  }
  std::vector<std::string> missing;
  for (const auto& [name, tg] : targets)
    if (!loaded.count(name) &&
        std::find_if(mismatched.begin(), mismatched.end(), [&](const std::string& m) {
          return m.rfind(name + " ", 0) == 0;
        }) == mismatched.end())
      missing.push_back(name);
  if (unexpected.empty() && missing.empty() && mismatched.empty()) {
    release_free_host_memory();
    return;
  }
  std::ostringstream os;
  os << "loading Hugging Face weights from " << path << ":";
  auto list = [&](const char* what, const std::vector<std::string>& v) {
    if (v.empty()) return;
    os << "\n  " << what << " (" << v.size() << "):";
    for (size_t i = 0; i < v.size() && i < 20; ++i) os << "\n    " << v[i];
    if (v.size() > 20) os << "\n    ... and " << v.size() - 20 << " more";
  };
  list("missing tensors", missing);
  list("unexpected tensors (not in this model)", unexpected);
  list("shape mismatches", mismatched);
  os << "\n  check that config.json matches the checkpoint";
  ORIGAMI_FAIL(os.str());
}

void export_hf(const std::string& dir, const ModelSpec& spec, const ParameterBuffer& params,
               DType dtype, size_t max_shard_bytes) {
  fs::create_directories(dir);
  {
    const std::string cfg = (fs::path(dir) / "config.json").string();
    std::ofstream out(cfg);
    ORIGAMI_CHECK(out.good(), "hf export: cannot write ", cfg);
    out << hf_config_json(spec, dtype);
  }
  NamedTensors tensors = to_hf_tensors(params);
  if (params.dtype() != dtype || !params.device().is_cpu())
    for (auto& [name, t] : tensors) t = t.to(Device::cpu()).to(dtype);
  write_safetensors_sharded(dir, tensors, max_shard_bytes, {{"format", "pt"}});
}

}  // namespace origami::models
