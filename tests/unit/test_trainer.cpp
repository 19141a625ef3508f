// The training loop: the learning-rate schedule against its formula, falling loss on a tiny
// model, and resumption from a checkpoint that continues bit for bit (2N steps == N + save +
// resume + N, in every loss and every parameter, Adam state included).
#include <cmath>
#include <filesystem>
#include <fstream>

#include "launcher/trainer.h"
#include "runtime/checkpoint.h"
#include "tests/support/test_support.h"

namespace origami {
namespace {

namespace fs = std::filesystem;

Config tiny_config(const std::string& dir, const std::string& family) {
  const std::string text = R"(
model { family: ")" + family +
                           R"(" vocab_size: 258 hidden_size: 48 num_layers: 2 num_heads: 4
        num_kv_heads: 2 ffn_hidden_size: 64 max_seq_len: 16
        moe { num_experts: 4 top_k: 2 expert_ffn_hidden_size: 32 norm_topk_prob: true
              aux_loss_coeff: 0.01 } }
train { steps: 6 micro_batch_size: 2 seq_len: 16 grad_accum: 2 lr: 3e-3 min_lr: 1e-4
        warmup_steps: 2 weight_decay: 0.1 clip_grad: 0.5 seed: 7 checkpoint_dir: ")" +
                           dir + R"(/ckpt" }
data { path: ")" + dir + R"(/corpus.txt" format: "text" tokenizer: "byte" })";
  return parse_config(text, "tiny");
}

struct TempDir {
  fs::path path;
  TempDir() {
    char tmpl[] = "/tmp/origami_train_XXXXXX";
    path = mkdtemp(tmpl);
    std::ofstream f(path / "corpus.txt");
    for (int i = 0; i < 200; ++i) f << "the quick brown fox " << i << " jumps over the lazy dog.\n";
  }
  ~TempDir() { fs::remove_all(path); }
};

TEST(Trainer, LearningRateScheduleFollowsItsFormula) {
  config::TrainConfig t;
  t.set_lr(1.0);
  t.set_min_lr(0.1);
  t.set_warmup_steps(4);
  t.set_steps(14);
  t.set_lr_schedule("cosine");
  EXPECT_DOUBLE_EQ(learning_rate(t, 1), 0.25);
  EXPECT_DOUBLE_EQ(learning_rate(t, 4), 1.0);
  EXPECT_NEAR(learning_rate(t, 9), 0.1 + 0.45 * (1 + std::cos(M_PI * 0.5)), 1e-12);
  EXPECT_NEAR(learning_rate(t, 14), 0.1, 1e-12);
  t.set_lr_schedule("constant");
  EXPECT_DOUBLE_EQ(learning_rate(t, 9), 1.0);
}

TEST(Trainer, ResumeContinuesBitForBit) {
  for (const char* family : {"llama", "mixtral"}) {
    TempDir a, b;
    TrainOptions quiet;
    quiet.quiet = true;
    quiet.progress = false;
    // Uninterrupted: 6 steps.
    auto full = train(tiny_config(a.path, family), quiet);
    ASSERT_EQ(full.size(), 6u);
    EXPECT_LT(full.back().loss, full.front().loss) << family;
    // Interrupted: 3 steps, then a new process-like call resumes for the rest.
    TrainOptions first = quiet;
    first.stop_after = 3;
    auto part1 = train(tiny_config(b.path, family), first);
    auto part2 = train(tiny_config(b.path, family), quiet);
    ASSERT_EQ(part1.size(), 3u);
    ASSERT_EQ(part2.size(), 3u);
    for (int i = 0; i < 6; ++i) {
      const StepRecord& r = i < 3 ? part1[size_t(i)] : part2[size_t(i - 3)];
      EXPECT_EQ(r.step, full[size_t(i)].step);
      EXPECT_EQ(r.loss, full[size_t(i)].loss) << family << " step " << i + 1;  // bit for bit
      EXPECT_EQ(r.grad_norm, full[size_t(i)].grad_norm) << family << " step " << i + 1;
    }
    CheckpointReader ra(*CheckpointReader::latest((a.path / "ckpt").string()));
    CheckpointReader rb(*CheckpointReader::latest((b.path / "ckpt").string()));
    EXPECT_EQ(ra.step(), 6);
    EXPECT_EQ(rb.step(), 6);
    ASSERT_FALSE(ra.names().empty());
    EXPECT_EQ(ra.names(), rb.names());
    for (const std::string& name : ra.names())  // params/NAME, adam_m/NAME, adam_v/NAME, ...
      EXPECT_EQ(ra.read_full(name).to_float_vector(), rb.read_full(name).to_float_vector())
          << family << " " << name;
  }
}

TEST(Trainer, BadDataIsReportedClearly) {
  TempDir d;
  Config c = tiny_config(d.path, "llama");
  c.mutable_data()->set_path((d.path / "missing.txt").string());
  TrainOptions quiet;
  quiet.quiet = true;
  try {
    train(c, quiet);
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("missing.txt"), std::string::npos) << e.what();
  }
  c = tiny_config(d.path, "llama");
  c.mutable_model()->set_vocab_size(100);  // the byte tokenizer needs 258
  EXPECT_THROW(train(c, quiet), Error);
}

}  // namespace
}  // namespace origami
