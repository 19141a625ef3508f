#include "runtime/config.h"

#include <google/protobuf/descriptor.h>
#include <google/protobuf/io/tokenizer.h>
#include <google/protobuf/text_format.h>

#include <fstream>
#include <functional>
#include <map>
#include <sstream>
#include <utility>

#include "runtime/error.h"

namespace origami {

namespace pb = google::protobuf;

namespace {

// Collects the first syntax error with its position.
class FirstError : public pb::io::ErrorCollector {
 public:
  void AddError(int line, pb::io::ColumnNumber column, const std::string& message) override {
    if (message_.empty()) {
      message_ = message;
      line_ = line + 1;
      column_ = column + 1;
    }
  }
  void AddWarning(int, pb::io::ColumnNumber, const std::string&) override {}
  std::string message_;
  int line_ = 0;
  int column_ = 0;
};

// Where each field was set: "file:line:col" for fields in the file, "--set a.b=v" for overrides.
class Locations {
 public:
  Locations(const std::string& name, const pb::TextFormat::ParseInfoTree* tree)
      : name_(name), tree_(tree) {}
  void set_override(const std::string& path, const std::string& text) { overrides_[path] = text; }

  std::string where(const std::string& path) const {
    auto it = overrides_.find(path);
    if (it != overrides_.end()) return "--set " + it->second;
    // Walk the dotted path down the parse-info tree.
    const pb::Descriptor* d = Config::descriptor();
    const pb::TextFormat::ParseInfoTree* t = tree_;
    std::stringstream ss(path);
    std::string part;
    std::vector<std::string> parts;
    while (std::getline(ss, part, '.')) parts.push_back(part);
    for (size_t i = 0; i < parts.size() && t && d; ++i) {
      const pb::FieldDescriptor* f = d->FindFieldByName(parts[i]);
      if (!f) break;
      if (i + 1 == parts.size()) {
        pb::TextFormat::ParseLocation loc = t->GetLocation(f, f->is_repeated() ? 0 : -1);
        if (loc.line >= 0)
          return name_ + ":" + std::to_string(loc.line + 1) + ":" + std::to_string(loc.column + 1);
        break;
      }
      t = t->GetTreeForNested(f, -1);
      d = f->message_type();
    }
    return name_;
  }

 private:
  std::string name_;
  const pb::TextFormat::ParseInfoTree* tree_;
  std::map<std::string, std::string> overrides_;
};

void apply_override(Config& c, const std::string& text, Locations& locs) {
  const size_t eq = text.find('=');
  ORIGAMI_CHECK(eq != std::string::npos && eq > 0, "--set ", text,
                ": expected FIELD=VALUE, e.g. --set train.lr=3e-4");
  const std::string path = text.substr(0, eq);
  std::string value = text.substr(eq + 1);
  pb::Message* msg = &c;
  std::stringstream ss(path);
  std::string part;
  std::vector<std::string> parts;
  while (std::getline(ss, part, '.')) parts.push_back(part);
  for (size_t i = 0; i < parts.size(); ++i) {
    const pb::Descriptor* d = msg->GetDescriptor();
    const pb::FieldDescriptor* f = d->FindFieldByName(parts[i]);
    if (!f) {
      std::string fields;
      for (int k = 0; k < d->field_count(); ++k) fields += (k ? ", " : "") + d->field(k)->name();
      ORIGAMI_FAIL("--set ", text, ": ", d->name(), " has no field '", parts[i],
                   "'; its fields are: ", fields);
    }
    const pb::Reflection* r = msg->GetReflection();
    if (i + 1 < parts.size()) {
      ORIGAMI_CHECK(f->cpp_type() == pb::FieldDescriptor::CPPTYPE_MESSAGE && !f->is_repeated(),
                    "--set ", text, ": '", parts[i], "' is not a section");
      msg = r->MutableMessage(msg, f);
      continue;
    }
    // String values need no quotes on the command line; an empty one is the empty string
    // (--set train.checkpoint_dir= turns checkpoints off).
    if (f->cpp_type() == pb::FieldDescriptor::CPPTYPE_STRING &&
        (value.empty() || (value[0] != '"' && value[0] != '\'')))
      value = "\"" + value + "\"";
    // Parse "field: value" in text format into the sub-message: same validation as the file.
    FirstError errors;
    pb::TextFormat::Parser parser;
    parser.RecordErrorsTo(&errors);
    parser.AllowPartialMessage(true);
    if (f->is_repeated()) r->ClearField(msg, f);
    // MergeFromString keeps the other fields of the section.
    if (!parser.MergeFromString(f->name() + ": " + value, msg))
      ORIGAMI_FAIL("--set ", text, ": ", errors.message_);
  }
  locs.set_override(path, text);
}

std::string join(const std::vector<std::string>& v) {
  std::string s;
  for (const auto& x : v) s += (s.empty() ? "" : ", ") + x;
  return s;
}

// Fills documented defaults for zero / empty fields.
void fill_defaults(Config& c) {
  auto& m = *c.mutable_model();
  if (m.family().empty()) m.set_family(m.moe().num_experts() > 0 ? "mixtral" : "llama");
  if (m.num_kv_heads() == 0) m.set_num_kv_heads(m.num_heads());
  if (m.head_dim() == 0 && m.num_heads() > 0) m.set_head_dim(m.hidden_size() / m.num_heads());
  if (m.rope_theta() == 0) m.set_rope_theta(10000.0);
  if (m.rms_norm_eps() == 0) m.set_rms_norm_eps(1e-6);
  if (m.init_std() == 0) m.set_init_std(0.02);
  auto& rs = *m.mutable_rope_scaling();
  if (rs.low_freq_factor() == 0) rs.set_low_freq_factor(1.0);
  if (rs.high_freq_factor() == 0) rs.set_high_freq_factor(4.0);
  if (rs.original_max_position() == 0) rs.set_original_max_position(8192);
  auto& moe = *m.mutable_moe();
  if (moe.router().empty()) moe.set_router("softmax");
  if (moe.sparse_step() == 0) moe.set_sparse_step(1);
  if (moe.num_experts() > 0 && moe.top_k() == 0) moe.set_top_k(2);
  if (moe.num_experts() > 0 && moe.expert_ffn_hidden_size() == 0)
    moe.set_expert_ffn_hidden_size(m.ffn_hidden_size());
  auto& t = *c.mutable_train();
  if (t.micro_batch_size() == 0) t.set_micro_batch_size(1);
  if (t.grad_accum() == 0) t.set_grad_accum(1);
  if (t.seq_len() == 0) t.set_seq_len(m.max_seq_len());
  if (t.lr_schedule().empty()) t.set_lr_schedule("cosine");
  if (t.beta1() == 0) t.set_beta1(0.9);
  if (t.beta2() == 0) t.set_beta2(0.95);
  if (t.eps() == 0) t.set_eps(1e-8);
  if (t.dtype().empty()) t.set_dtype("f32");
  if (t.log_every() == 0) t.set_log_every(1);
  if (t.device().empty()) t.set_device("cpu");
  auto& d = *c.mutable_data();
  if (d.tokenizer().empty()) d.set_tokenizer("byte");
  auto& p = *c.mutable_parallel();
  if (p.tp() == 0) p.set_tp(1);
  if (p.pp() == 0) p.set_pp(1);
  if (p.vpp() == 0) p.set_vpp(1);
  if (p.cp() == 0) p.set_cp(1);
  if (p.ep() == 0) p.set_ep(1);
  if (p.optimizer().empty()) p.set_optimizer("zero1");
  if (p.order().empty()) p.set_order("tp-cp-ep-dp-pp");
  if (p.bucket_mb() == 0) p.set_bucket_mb(16);
  if (p.cp_attention().empty()) p.set_cp_attention("ring");
}

void validate(const Config& c, const Locations& locs) {
  auto check = [&](bool ok, const std::string& path, const std::string& what) {
    if (!ok) ORIGAMI_FAIL(locs.where(path), ": ", path, ": ", what);
  };
  auto in = [](const std::string& v, const std::vector<std::string>& set) {
    for (const auto& s : set)
      if (v == s) return true;
    return false;
  };
  const auto& m = c.model();
  const std::vector<std::string> families = {"llama", "mixtral", "qwen2_moe", "deepseek_moe"};
  check(in(m.family(), families), "model.family",
        "unknown family '" + m.family() + "'; expected one of " + join(families));
  check(m.vocab_size() >= 1, "model.vocab_size",
        "must be >= 1, got " + std::to_string(m.vocab_size()));
  check(m.hidden_size() >= 1, "model.hidden_size",
        "must be >= 1, got " + std::to_string(m.hidden_size()));
  check(m.num_layers() >= 1, "model.num_layers",
        "must be >= 1, got " + std::to_string(m.num_layers()));
  check(m.num_heads() >= 1, "model.num_heads",
        "must be >= 1, got " + std::to_string(m.num_heads()));
  check(m.num_kv_heads() >= 1 && m.num_heads() % m.num_kv_heads() == 0, "model.num_kv_heads",
        "must divide num_heads (" + std::to_string(m.num_heads()) + "), got " +
            std::to_string(m.num_kv_heads()));
  check(m.head_dim() >= 2 && m.head_dim() % 2 == 0, "model.head_dim",
        "must be even and >= 2 (rotary pairs), got " + std::to_string(m.head_dim()));
  check(m.ffn_hidden_size() >= 1 || m.moe().num_experts() > 0, "model.ffn_hidden_size",
        "must be >= 1 for a dense model, got " + std::to_string(m.ffn_hidden_size()));
  check(m.rope_theta() > 0, "model.rope_theta", "must be > 0");
  check(m.rms_norm_eps() > 0, "model.rms_norm_eps", "must be > 0");
  check(m.max_seq_len() >= 1, "model.max_seq_len",
        "must be >= 1, got " + std::to_string(m.max_seq_len()));
  check(m.sliding_window() >= 0, "model.sliding_window", "must be >= 0 (0 = off)");
  check(m.rope_scaling().factor() == 0 || m.rope_scaling().factor() >= 1,
        "model.rope_scaling.factor", "must be 0 (off) or >= 1");
  const auto& p = c.parallel();
  for (const auto& [name, v] : {std::pair<std::string, int>{"tp", p.tp()},
                                {"pp", p.pp()},
                                {"vpp", p.vpp()},
                                {"cp", p.cp()},
                                {"ep", p.ep()}})
    check(v >= 1, "parallel." + name, "must be >= 1, got " + std::to_string(v));
  check(p.dp() >= 0, "parallel.dp", "must be >= 0 (0: derived from the world size)");
  check(p.etp() >= 0, "parallel.etp", "must be >= 0 (0: the same as tp)");
  check(in(p.optimizer(), {"zero1", "allreduce"}), "parallel.optimizer",
        "unknown optimizer sharding '" + p.optimizer() + "'; expected zero1 or allreduce");
  check(p.bucket_mb() >= 1, "parallel.bucket_mb", "must be >= 1");
  check(
      in(p.cp_attention(), {"ring", "all_gather"}), "parallel.cp_attention",
      "unknown context-parallel attention '" + p.cp_attention() + "'; expected ring or all_gather");
  for (int64_t n : p.stage_layers())
    check(n >= 1, "parallel.stage_layers",
          "every stage needs >= 1 layer, got " + std::to_string(n));
  const auto& e = m.moe();
  check(e.num_experts() >= 0, "model.moe.num_experts", "must be >= 0");
  if (e.num_experts() > 0) {
    check(e.top_k() >= 1 && e.top_k() <= e.num_experts(), "model.moe.top_k",
          "must be in [1, num_experts=" + std::to_string(e.num_experts()) + "], got " +
              std::to_string(e.top_k()));
    check(e.expert_ffn_hidden_size() >= 1, "model.moe.expert_ffn_hidden_size", "must be >= 1");
    check(in(e.router(), {"softmax", "sigmoid"}), "model.moe.router",
          "unknown router '" + e.router() + "'; expected softmax or sigmoid");
    check(e.aux_loss_coeff() >= 0, "model.moe.aux_loss_coeff", "must be >= 0");
    check(e.z_loss_coeff() >= 0, "model.moe.z_loss_coeff", "must be >= 0");
    check(e.capacity_factor() >= 0, "model.moe.capacity_factor", "must be >= 0 (0 = dropless)");
    check(e.sparse_step() >= 1, "model.moe.sparse_step", "must be >= 1");
    check(!e.expert_bias() || e.router() == "sigmoid", "model.moe.expert_bias",
          "needs router: \"sigmoid\"");
    for (int64_t l : e.mlp_only_layers())
      check(l >= 0 && l < m.num_layers(), "model.moe.mlp_only_layers",
            "layer " + std::to_string(l) + " is not in [0, num_layers)");
  }
  const auto& t = c.train();
  check(t.steps() >= 0, "train.steps", "must be >= 0");
  check(t.micro_batch_size() >= 1, "train.micro_batch_size", "must be >= 1");
  check(t.seq_len() >= 1 && t.seq_len() <= m.max_seq_len(), "train.seq_len",
        "must be in [1, model.max_seq_len=" + std::to_string(m.max_seq_len()) + "], got " +
            std::to_string(t.seq_len()));
  check(t.grad_accum() >= 1, "train.grad_accum", "must be >= 1");
  check(t.lr() >= 0, "train.lr", "must be >= 0");
  check(t.min_lr() >= 0 && t.min_lr() <= t.lr(), "train.min_lr", "must be in [0, lr]");
  check(t.warmup_steps() >= 0, "train.warmup_steps", "must be >= 0");
  check(in(t.lr_schedule(), {"cosine", "constant"}), "train.lr_schedule",
        "unknown schedule '" + t.lr_schedule() + "'; expected cosine or constant");
  check(t.weight_decay() >= 0, "train.weight_decay", "must be >= 0");
  check(t.beta1() >= 0 && t.beta1() < 1, "train.beta1", "must be in [0, 1)");
  check(t.beta2() >= 0 && t.beta2() < 1, "train.beta2", "must be in [0, 1)");
  check(t.eps() > 0, "train.eps", "must be > 0");
  check(t.clip_grad() >= 0, "train.clip_grad", "must be >= 0 (0 = off)");
  check(in(t.dtype(), {"f32", "bf16"}), "train.dtype",
        "unknown dtype '" + t.dtype() + "'; expected f32 or bf16");
  check(t.log_every() >= 1, "train.log_every", "must be >= 1");
  check(t.save_every() >= 0, "train.save_every", "must be >= 0");
  check(t.keep() >= 0, "train.keep", "must be >= 0 (0 = keep all)");
  check(t.peak_flops() >= 0, "train.peak_flops", "must be >= 0 (0 = measure)");
  check(t.device() == "cpu" || t.device().rfind("cuda", 0) == 0, "train.device",
        "unknown device '" + t.device() + "'; expected cpu or cuda");
  const auto& d = c.data();
  check(d.format().empty() || in(d.format(), {"u16", "u32", "text"}), "data.format",
        "unknown format '" + d.format() + "'; expected u16, u32 or text");
  check(d.valid_fraction() >= 0 && d.valid_fraction() < 1, "data.valid_fraction",
        "must be in [0, 1)");
}

}  // namespace

Config parse_config(const std::string& text, const std::string& name,
                    const std::vector<std::string>& overrides) {
  Config c;
  FirstError errors;
  pb::TextFormat::ParseInfoTree tree;
  pb::TextFormat::Parser parser;
  parser.RecordErrorsTo(&errors);
  parser.WriteLocationsTo(&tree);
  if (!parser.ParseFromString(text, &c))
    ORIGAMI_FAIL(name, ":", errors.line_, ":", errors.column_, ": ", errors.message_);
  Locations locs(name, &tree);
  for (const std::string& o : overrides) apply_override(c, o, locs);
  fill_defaults(c);
  validate(c, locs);
  return c;
}

Config load_config(const std::string& path, const std::vector<std::string>& overrides) {
  std::ifstream f(path);
  ORIGAMI_CHECK(f, "cannot open config file '", path, "'");
  std::stringstream ss;
  ss << f.rdbuf();
  return parse_config(ss.str(), path, overrides);
}

std::string config_to_text(const Config& c) {
  std::string out;
  pb::TextFormat::Printer printer;
  printer.PrintToString(c, &out);
  return out;
}

}  // namespace origami
