// Checkpoints: sharded round trips and resharding, crash safety under SIGKILL during saves,
// refusal of truncated and corrupted files, and pruning of old checkpoints.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <random>
#include <thread>

#include "runtime/checkpoint.h"
#include "tests/support/test_support.h"

namespace origami {
namespace {

namespace fs = std::filesystem;

struct TempDir {
  fs::path path;
  TempDir() {
    char tmpl[] = "/tmp/origami_ckpt_XXXXXX";
    path = mkdtemp(tmpl);
  }
  ~TempDir() { fs::remove_all(path); }
};

std::string error_of(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

// Saves `global` [6,10] split over a 2x2 grid of ranks, then reads it back under other splits.
TEST(Checkpoint, ShardedRoundTripAndReshard) {
  TempDir dir;
  Tensor global = test::random_tensor({6, 10}, DType::f32, 3);
  Tensor scalar = Tensor::from_vector({42.0f}, {});
  Tensor bf = test::random_tensor({5}, DType::bf16, 4);
  const int world = 4;
  std::vector<std::unique_ptr<CheckpointWriter>> writers;
  for (int r = 0; r < world; ++r) {
    writers.push_back(std::make_unique<CheckpointWriter>(dir.path.string(), 7, r, world));
    const int64_t row = (r / 2) * 3, col = (r % 2) * 5;
    writers[r]->add("w", global.narrow(0, row, 3).narrow(1, col, 5), {6, 10}, {row, col});
    writers[r]->add("scalar", scalar);  // replicated on every rank
  }
  writers[0]->add("bf", bf);
  for (auto& w : writers) w->write_rank_files();
  writers[0]->commit({{"note", "hello"}});

  auto latest = CheckpointReader::latest(dir.path.string());
  ASSERT_TRUE(latest.has_value());
  CheckpointReader rd(*latest);
  EXPECT_EQ(rd.step(), 7);
  EXPECT_EQ(rd.world_size(), 4);
  EXPECT_EQ(rd.user_meta()["note"], "hello");
  EXPECT_EQ(rd.global_shape("w"), (Shape{6, 10}));
  // The whole tensor, bit for bit.
  EXPECT_EQ(rd.read_full("w").to_float_vector(), global.to_float_vector());
  EXPECT_EQ(rd.read_full("scalar").to_float_vector(), scalar.to_float_vector());
  EXPECT_EQ(rd.read_full("bf").to_float_vector(), bf.to_float_vector());
  // Another layout: 3 column pieces of [6, 4|3|3] crossing the stored piece boundaries.
  int64_t col = 0;
  for (int64_t width : {4, 3, 3}) {
    Tensor piece = Tensor::empty({6, width}, DType::f32);
    rd.read("w", piece, {0, col});
    EXPECT_EQ(piece.to_float_vector(), global.narrow(1, col, width).contiguous().to_float_vector());
    col += width;
  }
  // Read converting dtype.
  Tensor as_bf = Tensor::empty({6, 10}, DType::bf16);
  rd.read("w", as_bf);
  EXPECT_EQ(as_bf.to_float_vector(), global.to(DType::bf16).to_float_vector());
  // Errors: outside the tensor, unknown name.
  Tensor big = Tensor::empty({7, 10}, DType::f32);
  EXPECT_NE(error_of([&] { rd.read("w", big); }).find("outside its global shape"),
            std::string::npos);
  EXPECT_NE(error_of([&] { rd.read_full("nope"); }).find("no tensor 'nope'"), std::string::npos);
}

TEST(Checkpoint, MissingPiecesAreReported) {
  TempDir dir;
  CheckpointWriter w(dir.path.string(), 1, 0, 1);
  w.add("half", Tensor::zeros({2, 4}, DType::f32), {4, 4}, {0, 0});
  w.write_rank_files();
  w.commit({});
  CheckpointReader rd(*CheckpointReader::latest(dir.path.string()));
  Tensor all = Tensor::empty({4, 4}, DType::f32);
  EXPECT_NE(error_of([&] { rd.read("half", all); }).find("do not cover"), std::string::npos);
}

TEST(Checkpoint, TruncatedAndCorruptFilesAreRefused) {
  TempDir dir;
  auto save = [&](int64_t step) {
    CheckpointWriter w(dir.path.string(), step, 0, 1);
    w.add("x", test::random_tensor({64}, DType::f32, uint64_t(step)));
    w.write_rank_files();
    w.commit({});
    return w.final_dir();
  };
  const fs::path d = save(1);
  const fs::path bin = d / "rank_00000.bin";
  {  // flip one byte
    std::fstream f(bin, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(17);
    char c = 0;
    f.read(&c, 1);
    c ^= 0x40;
    f.seekp(17);
    f.write(&c, 1);
  }
  // The message names the file and the piece.
  const std::string crc = error_of([&] { CheckpointReader(d.string()).read_full("x"); });
  for (const std::string& piece : {std::string("CRC-32"), bin.string(),
                                   std::string("tensor 'x' (its piece at offsets [0] of "
                                               "shape [64], bytes 0..256 of the file)")})
    EXPECT_NE(crc.find(piece), std::string::npos) << crc;
  fs::resize_file(bin, 100);
  EXPECT_NE(error_of([&] { CheckpointReader(d.string()).read_full("x"); }).find("truncated"),
            std::string::npos);
  { std::ofstream(d / "rank_00000.json") << "{\"tensors\": [ {"; }
  EXPECT_NE(error_of([&] { CheckpointReader r(d.string()); }).find("not valid JSON"),
            std::string::npos);
  fs::remove(d / "meta.json");
  EXPECT_NE(error_of([&] { CheckpointReader r(d.string()); }).find("meta.json is missing"),
            std::string::npos);
  { std::ofstream(dir.path / "latest") << "step_00000099\n"; }
  EXPECT_NE(error_of([&] { CheckpointReader::latest(dir.path.string()); }).find("missing"),
            std::string::npos);
}

TEST(Checkpoint, KeepsOnlyTheNewest) {
  TempDir dir;
  for (int64_t s = 1; s <= 5; ++s) {
    CheckpointWriter w(dir.path.string(), s, 0, 1);
    w.add("x", Tensor::from_vector({float(s)}, {1}));
    w.write_rank_files();
    w.commit({}, /*keep=*/2);
  }
  std::vector<std::string> left;
  for (const auto& e : fs::directory_iterator(dir.path)) left.push_back(e.path().filename());
  std::sort(left.begin(), left.end());
  EXPECT_EQ(left, (std::vector<std::string>{"latest", "step_00000004", "step_00000005"}));
  CheckpointReader rd(*CheckpointReader::latest(dir.path.string()));
  EXPECT_EQ(rd.read_full("x").to_float_vector()[0], 5.0f);
}

// A child process saves checkpoints in a loop; the parent kills it with SIGKILL at a random
// moment, 25 times over the same folder. Every time, `latest` (if present) must name a complete
// checkpoint whose contents are exactly what that step wrote.
TEST(Checkpoint, SigkillDuringSaveNeverCorruptsLatest) {
  TempDir dir;
  std::mt19937 rng(1234);
  int64_t next_step = 1;
  int checked = 0;
  for (int round = 0; round < 25; ++round) {
    const int64_t first = next_step;
    const pid_t pid = fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      for (int64_t s = first;; ++s) {
        CheckpointWriter w(dir.path.string(), s, 0, 1);
        Tensor t = Tensor::empty({1 << 18}, DType::f32);  // 1 MiB
        t.fill_(double(s));
        w.add("x", t);
        w.add("step", Tensor::from_vector({float(s)}, {1}));
        w.write_rank_files();
        w.commit({{"step", s}}, 3);
      }
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(5 + rng() % 60));
    kill(pid, SIGKILL);
    int status = 0;
    waitpid(pid, &status, 0);
    ASSERT_TRUE(WIFSIGNALED(status));
    auto latest = CheckpointReader::latest(dir.path.string());
    if (!latest) continue;  // killed before the first commit
    CheckpointReader rd(*latest);
    const float s = rd.read_full("step").to_float_vector()[0];
    EXPECT_EQ(int64_t(s), rd.step());
    EXPECT_EQ(rd.user_meta()["step"].get<int64_t>(), rd.step());
    std::vector<float> x = rd.read_full("x").to_float_vector();
    EXPECT_TRUE(std::all_of(x.begin(), x.end(), [&](float v) { return v == s; }))
        << "checkpoint " << *latest << " holds data of another step";
    next_step = rd.step() + 1;
    ++checked;
  }
  EXPECT_GE(checked, 15) << "too few rounds reached a commit; the kill delays are too short";
}

}  // namespace
}  // namespace origami
