// Config files: parsing, defaults, overrides, and errors that name file, line and field.
#include <string>

#include "runtime/config.h"
#include "tests/support/test_support.h"

namespace origami {
namespace {

const char* kTiny = R"(
model {
  vocab_size: 300
  hidden_size: 96
  num_layers: 2
  num_heads: 6
  num_kv_heads: 2
  ffn_hidden_size: 160
  max_seq_len: 64
}
train { steps: 5 lr: 1e-3 }
)";

std::string error_of(const std::string& text, const std::vector<std::string>& overrides = {}) {
  try {
    parse_config(text, "tiny.pbtxt", overrides);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(Config, DefaultsAreFilledIn) {
  Config c = parse_config(kTiny, "tiny.pbtxt");
  EXPECT_EQ(c.model().family(), "llama");
  EXPECT_EQ(c.model().head_dim(), 16);
  EXPECT_EQ(c.model().rope_theta(), 10000.0);
  EXPECT_EQ(c.train().seq_len(), 64);
  EXPECT_EQ(c.train().beta2(), 0.95);
  EXPECT_EQ(c.train().dtype(), "f32");
}

TEST(Config, OverridesSetAnyField) {
  Config c = parse_config(kTiny, "tiny.pbtxt",
                          {"train.lr=3e-4", "model.moe.num_experts=6", "train.dtype=bf16",
                           "model.moe.mlp_only_layers=[0, 1]"});
  EXPECT_DOUBLE_EQ(c.train().lr(), 3e-4);
  EXPECT_EQ(c.train().steps(), 5);  // the rest of the section is kept
  EXPECT_EQ(c.model().moe().num_experts(), 6);
  EXPECT_EQ(c.model().moe().top_k(), 2);  // default for MoE
  EXPECT_EQ(c.train().dtype(), "bf16");
  EXPECT_EQ(c.model().moe().mlp_only_layers_size(), 2);
}

TEST(Config, EmptyOverrideOfAStringFieldIsTheEmptyString) {
  std::string with_dir = kTiny;
  with_dir.replace(with_dir.find("steps: 5"), 8, "steps: 5 checkpoint_dir: \"ckpt\"");
  EXPECT_EQ(parse_config(with_dir, "tiny.pbtxt").train().checkpoint_dir(), "ckpt");
  // --set train.checkpoint_dir= turns checkpoints off, as do the quoted forms.
  for (const char* o :
       {"train.checkpoint_dir=", "train.checkpoint_dir=\"\"", "train.checkpoint_dir=''"})
    EXPECT_EQ(parse_config(with_dir, "tiny.pbtxt", {o}).train().checkpoint_dir(), "") << o;
  EXPECT_EQ(parse_config(kTiny, "tiny.pbtxt", {"train.metrics_file="}).train().metrics_file(), "");
  // A field with a default takes it again.
  EXPECT_EQ(parse_config(kTiny, "tiny.pbtxt", {"train.dtype="}).train().dtype(), "f32");
  // Other types still need a value, and the error names the override.
  const std::string e = error_of(kTiny, {"train.steps="});
  EXPECT_NE(e.find("--set train.steps="), std::string::npos) << e;
}

TEST(Config, ErrorsNameFileLineAndField) {
  // Unknown field: syntax error with position.
  std::string e = error_of("model { hidden_sise: 3 }");
  EXPECT_NE(e.find("tiny.pbtxt:1:"), std::string::npos) << e;
  EXPECT_NE(e.find("hidden_sise"), std::string::npos) << e;
  // Out of range: the line of the offending field.
  std::string bad = kTiny;
  bad.replace(bad.find("num_kv_heads: 2"), 15, "num_kv_heads: 4");
  e = error_of(bad);
  EXPECT_NE(e.find("tiny.pbtxt:7:"), std::string::npos) << e;
  EXPECT_NE(e.find("model.num_kv_heads"), std::string::npos) << e;
  // Out of range through an override: names the override.
  e = error_of(kTiny, {"train.beta1=1.5"});
  EXPECT_NE(e.find("--set train.beta1=1.5"), std::string::npos) << e;
  // Unknown override field lists the valid ones.
  e = error_of(kTiny, {"train.learning_rate=1"});
  EXPECT_NE(e.find("no field 'learning_rate'"), std::string::npos) << e;
  EXPECT_NE(e.find("lr"), std::string::npos) << e;
  // Bad value type.
  e = error_of(kTiny, {"train.steps=many"});
  EXPECT_NE(e.find("--set train.steps=many"), std::string::npos) << e;
  EXPECT_THROW(load_config("/nonexistent/config.pbtxt"), Error);
}

TEST(Config, RoundTripsThroughText) {
  Config c = parse_config(kTiny, "tiny.pbtxt");
  Config d = parse_config(config_to_text(c), "printed");
  EXPECT_EQ(c.SerializeAsString(), d.SerializeAsString());
}

}  // namespace
}  // namespace origami
