// Safetensors reading and writing: round trips for every dtype and odd shapes, the exact byte
// layout of the reference library, files exchanged with the Python `safetensors` package (both
// ways), sharded checkpoints, atomic replacement, and every malformed-file rule with its message.
#include "runtime/safetensors.h"

#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "tests/support/test_support.h"

namespace origami {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

// A fresh folder under /tmp, removed with everything in it at the end of the test.
struct TempDir {
  fs::path path;
  TempDir() {
    char tmpl[] = "/tmp/origami_safetensors_XXXXXX";
    const char* p = mkdtemp(tmpl);
    EXPECT_NE(p, nullptr);
    path = p ? p : "/tmp";
  }
  ~TempDir() { fs::remove_all(path); }
  std::string operator/(const std::string& name) const { return (path / name).string(); }
};

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream f(path, std::ios::binary);
  f.write(bytes.data(), std::streamsize(bytes.size()));
}

std::string read_bytes(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

// A safetensors image: 8-byte little-endian length, `header` as given (no padding), `data`.
std::string raw_file(const std::string& header, const std::string& data = "") {
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i) out[size_t(i)] = char(uint64_t(header.size()) >> (8 * i) & 0xff);
  return out + header + data;
}

// The bytes of a tensor's elements in row-major order.
std::string tensor_bytes(const Tensor& t) {
  const Tensor c = t.contiguous();
  return std::string(static_cast<const char*>(c.data()), c.nbytes());
}

Tensor random_of(DType dtype, const Shape& shape, uint64_t seed) {
  switch (dtype) {
    case DType::f32:
    case DType::bf16:
    case DType::f16:
      return test::random_tensor(shape, dtype, seed, -3.0, 3.0);
    case DType::i32:
      return test::random_ints(shape, dtype, -100000, 100000, seed);
    case DType::i64:
      return test::random_ints(shape, dtype, -(int64_t(1) << 40), int64_t(1) << 40, seed);
    case DType::u8:
      return test::random_ints(shape, dtype, 0, 256, seed);
  }
  return {};
}

const std::vector<DType> kAllDTypes = {DType::f32, DType::bf16, DType::f16,
                                       DType::i32, DType::i64,  DType::u8};
const std::vector<Shape> kOddShapes = {{},     {0},       {1},      {3},         {17},
                                       {2, 3}, {3, 0, 2}, {1, 130}, {2, 1, 3, 1}};

const char* st_name(DType t) {
  switch (t) {
    case DType::f32:
      return "F32";
    case DType::bf16:
      return "BF16";
    case DType::f16:
      return "F16";
    case DType::i32:
      return "I32";
    case DType::i64:
      return "I64";
    case DType::u8:
      return "U8";
  }
  return "?";
}

// Expects `fn` to throw origami::Error whose message contains every one of `phrases`.
template <typename Fn>
void expect_error(Fn&& fn, const std::vector<std::string>& phrases, const std::string& what) {
  try {
    fn();
    ADD_FAILURE() << what << ": no error thrown";
  } catch (const Error& e) {
    for (const std::string& p : phrases)
      EXPECT_NE(std::string(e.what()).find(p), std::string::npos)
          << what << ": message lacks \"" << p << "\": " << e.what();
  } catch (const std::exception& e) {
    ADD_FAILURE() << what << ": threw a non-origami exception: " << e.what();
  }
}

TEST(Safetensors, RoundTripEveryDtypeAndOddShape) {
  TempDir dir;
  NamedTensors tensors;
  uint64_t seed = 1;
  for (DType dt : kAllDTypes)
    for (const Shape& s : kOddShapes)
      tensors.emplace_back(std::string(dtype_name(dt)) + shape_str(s), random_of(dt, s, seed++));
  // A transposed (non-contiguous) tensor is written in row-major order of its view.
  const Tensor base = random_of(DType::f32, {3, 5}, 99);
  tensors.emplace_back("transposed", base.transpose(0, 1));
  const std::map<std::string, std::string> metadata = {{"format", "pt"}, {"step", "17"}};
  const std::string path = dir / "model.safetensors";
  write_safetensors(path, tensors, metadata);

  Tensor kept;
  {
    const SafetensorsFile f = SafetensorsFile::open(path);
    EXPECT_EQ(f.metadata(), metadata);
    EXPECT_EQ(f.names().size(), tensors.size());
    EXPECT_EQ(f.data_start() % 8, 0u) << "the header is padded to a multiple of 8";
    for (const auto& [name, t] : tensors) {
      SCOPED_TRACE(name);
      ASSERT_TRUE(f.has(name));
      const SafetensorsInfo& info = f.info(name);
      EXPECT_EQ(info.dtype, t.dtype());
      EXPECT_EQ(info.dtype_name, st_name(t.dtype()));
      EXPECT_EQ(info.shape, t.shape());
      EXPECT_EQ(info.end - info.begin, t.nbytes());
      const Tensor r = f.tensor(name);
      EXPECT_EQ(r.dtype(), t.dtype());
      EXPECT_EQ(r.shape(), t.shape());
      EXPECT_TRUE(r.is_contiguous());
      EXPECT_EQ(tensor_bytes(r), tensor_bytes(t));
      EXPECT_EQ(
          std::string(reinterpret_cast<const char*>(f.bytes(name).data()), f.bytes(name).size()),
          tensor_bytes(t));
      if (t.numel() > 0) {
        // Zero-copy: the tensor points into the file's mapping, at its data offset, aligned.
        EXPECT_EQ(r.data(),
                  static_cast<const char*>(r.storage()->data) + f.data_start() + info.begin);
        EXPECT_EQ(reinterpret_cast<uintptr_t>(r.data()) % dtype_size(t.dtype()), 0u);
      }
    }
    kept = f.tensor("f32[17]");
  }
  // The mapping outlives the SafetensorsFile while a tensor uses it.
  EXPECT_EQ(tensor_bytes(kept), tensor_bytes(tensors[4].second));
}

// The layout the reference library writes, spelled out by hand for a small case: metadata first,
// entries by decreasing dtype (I64 > F32 > BF16 > U8), then by name; header padded with spaces.
TEST(Safetensors, WritesTheReferenceByteLayout) {
  TempDir dir;
  const Tensor a = Tensor::from_vector({1.0f, -2.0f}, {2}, DType::bf16);
  const Tensor b = Tensor::from_vector({0.5f}, {}, DType::f32);
  const Tensor c = Tensor::from_vector({7.0f}, {1}, DType::f32);
  const Tensor d = Tensor::from_vector_i64({3}, {1}, DType::i64);
  const Tensor e = Tensor::from_vector({9.0f}, {1}, DType::u8);
  const std::string path = dir / "x.safetensors";
  write_safetensors(path, {{"e", e}, {"c", c}, {"b", b}, {"a", a}, {"d", d}}, {{"format", "pt"}});
  const std::string header = R"({"__metadata__":{"format":"pt"},)"
                             R"("d":{"dtype":"I64","shape":[1],"data_offsets":[0,8]},)"
                             R"("b":{"dtype":"F32","shape":[],"data_offsets":[8,12]},)"
                             R"("c":{"dtype":"F32","shape":[1],"data_offsets":[12,16]},)"
                             R"("a":{"dtype":"BF16","shape":[2],"data_offsets":[16,20]},)"
                             R"("e":{"dtype":"U8","shape":[1],"data_offsets":[20,21]}})";
  const std::string padded = header + std::string((8 - header.size() % 8) % 8, ' ');
  const std::string data = std::string("\x03\0\0\0\0\0\0\0", 8) +  // d = 3
                           std::string("\0\0\0\x3f", 4) +          // b = 0.5f
                           std::string("\0\0\xe0\x40", 4) +        // c = 7.0f
                           std::string("\x80\x3f\0\xc0", 4) +      // a = bf16 1, -2
                           std::string("\x09", 1);                 // e = 9
  EXPECT_EQ(read_bytes(path), raw_file(padded, data));

  // No tensors and no metadata: "{}" padded to 8 bytes.
  write_safetensors(path, {});
  EXPECT_EQ(read_bytes(path), raw_file("{}      "));
}

TEST(Safetensors, WriteReplacesAtomicallyAndRefusesBadInput) {
  TempDir dir;
  const std::string path = dir / "w.safetensors";
  const Tensor old_t = Tensor::from_vector({1, 2, 3}, {3});
  write_safetensors(path, {{"w", old_t}});
  const SafetensorsFile old_file = SafetensorsFile::open(path);
  const Tensor old_view = old_file.tensor("w");

  const Tensor new_t = Tensor::from_vector({4, 5, 6, 7}, {4});
  write_safetensors(path, {{"w", new_t}});
  EXPECT_EQ(tensor_bytes(SafetensorsFile::open(path).tensor("w")), tensor_bytes(new_t));
  // The old file was replaced, not rewritten: a reader that still maps it sees the old values.
  EXPECT_EQ(tensor_bytes(old_view), tensor_bytes(old_t));
  // Saving tensors that view the file being replaced works: they keep reading the old file.
  write_safetensors(path, {{"w", old_view}, {"v", new_t}});
  EXPECT_EQ(tensor_bytes(SafetensorsFile::open(path).tensor("w")), tensor_bytes(old_t));
  for (const auto& entry : fs::directory_iterator(dir.path))
    EXPECT_EQ(entry.path().filename(), "w.safetensors") << "left behind: " << entry.path();

  // Refused inputs leave the existing file as it was.
  const std::string before = read_bytes(path);
  expect_error(
      [&] {
        write_safetensors(path, {{"a", new_t}, {"a", new_t}});
      },
      {"appears twice"}, "duplicate name");
  expect_error(
      [&] {
        write_safetensors(path, {{"__metadata__", new_t}});
      },
      {"reserved"}, "reserved name");
  expect_error([&] { write_safetensors(path, {{"u", Tensor()}}); }, {"undefined"}, "undefined");
  expect_error(
      [&] {
        write_safetensors(path, {{"\xff\xfe", new_t}});
      },
      {"not valid UTF-8"}, "invalid UTF-8");
  EXPECT_EQ(read_bytes(path), before);
  expect_error(
      [&] {
        write_safetensors(dir / "no/such/dir/x.safetensors", {{"w", new_t}});
      },
      {"cannot create", "no/such/dir/x.safetensors.tmp."}, "missing folder");
}

// One case per validation rule, each with the phrase its message must contain.
TEST(Safetensors, MalformedFilesAreRefusedWithClearMessages) {
  TempDir dir;
  const std::string f32x2 = R"("dtype":"F32","shape":[2])";
  const std::string eight(8, '\0');
  const std::string hdr_a = R"({"a":{)" + f32x2 + R"(,"data_offsets":[0,8]}})";
  struct Case {
    std::string name, bytes, phrase;
  };
  const std::vector<Case> cases = {
      {"empty", "", "shorter than the 8-byte header length"},
      {"short", "abc", "shorter than the 8-byte header length"},
      {"header_too_long", raw_file(std::string(64, ' ')).substr(0, 8) + "{}",
       "header length 64 exceeds the file size (10 bytes)"},
      {"not_json", raw_file(R"({"a":)", eight), "header is not valid JSON"},
      {"not_json_utf8", raw_file("{\"\xff\":1}"), "header is not valid JSON"},
      {"not_object", raw_file("[1,2]"), "header is not a JSON object"},
      {"entry_not_object", raw_file(R"({"a":[]})"), "is not an object"},
      {"missing_dtype", raw_file(R"({"a":{"shape":[2],"data_offsets":[0,8]}})", eight),
       "is missing \"dtype\""},
      {"missing_shape", raw_file(R"({"a":{"dtype":"F32","data_offsets":[0,8]}})", eight),
       "is missing \"shape\""},
      {"missing_offsets", raw_file(R"({"a":{)" + f32x2 + "}}", eight),
       "is missing \"data_offsets\""},
      {"dtype_not_string", raw_file(R"({"a":{"dtype":4,"shape":[2],"data_offsets":[0,8]}})", eight),
       "\"dtype\" must be a string"},
      {"unknown_dtype",
       raw_file(R"({"a":{"dtype":"F8_E4M3","shape":[8],"data_offsets":[0,8]}})", eight),
       "unknown dtype \"F8_E4M3\""},
      {"shape_not_array", raw_file(R"({"a":{"dtype":"U8","shape":8,"data_offsets":[0,8]}})", eight),
       "\"shape\" must be an array of integers"},
      {"shape_float", raw_file(R"({"a":{"dtype":"U8","shape":[8.0],"data_offsets":[0,8]}})", eight),
       "\"shape\" must be an array of integers"},
      {"negative_dim", raw_file(R"({"a":{"dtype":"U8","shape":[-8],"data_offsets":[0,8]}})", eight),
       "negative dimension"},
      {"shape_overflow",
       raw_file(R"({"a":{"dtype":"U8","shape":[4294967296,4294967296],"data_offsets":[0,8]}})",
                eight),
       "overflows a 64-bit element count"},
      {"shape_overflow_with_zero",
       raw_file(R"({"a":{"dtype":"U8","shape":[0,4294967296,4294967296],"data_offsets":[0,0]}})"),
       "overflows a 64-bit element count"},
      {"byte_overflow",
       raw_file(R"({"a":{"dtype":"F64","shape":[4611686018427387904],"data_offsets":[0,8]}})",
                eight),
       "overflows a 64-bit byte count"},
      {"offsets_one_number", raw_file(R"({"a":{)" + f32x2 + R"(,"data_offsets":[8]}})", eight),
       "\"data_offsets\" must be [begin, end]"},
      {"offsets_negative", raw_file(R"({"a":{)" + f32x2 + R"(,"data_offsets":[-1,7]}})", eight),
       "\"data_offsets\" must be [begin, end]"},
      {"offsets_reversed", raw_file(R"({"a":{)" + f32x2 + R"(,"data_offsets":[8,0]}})", eight),
       "begin > end"},
      {"offsets_past_end", raw_file(R"({"a":{)" + f32x2 + R"(,"data_offsets":[8,16]}})", eight),
       "end beyond the data section (8 bytes)"},
      {"size_mismatch",
       raw_file(R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", eight),
       "span 8 bytes but F32[3] needs 12"},
      {"overlap",
       raw_file(R"({"a":{)" + f32x2 + R"(,"data_offsets":[0,8]},"b":{)" + f32x2 +
                    R"(,"data_offsets":[4,12]}})",
                eight + "1234"),
       "tensors \"a\" and \"b\" overlap"},
      {"hole", raw_file(R"({"a":{)" + f32x2 + R"(,"data_offsets":[4,12]}})", eight + "1234"),
       "hole in the data section: bytes [0, 4)"},
      {"trailing", raw_file(hdr_a, eight + "1234"), "4 trailing bytes [8, 12)"},
      {"duplicate_name",
       raw_file(R"({"a":{)" + f32x2 + R"(,"data_offsets":[0,8]},"a":{)" + f32x2 +
                    R"(,"data_offsets":[8,16]}})",
                eight + eight),
       "duplicate key \"a\""},
      {"duplicate_field",
       raw_file(R"({"a":{"dtype":"F32","dtype":"F32","shape":[2],"data_offsets":[0,8]}})", eight),
       "duplicate key \"dtype\""},
      {"metadata_not_object", raw_file(R"({"__metadata__":["x"]})"),
       "__metadata__ must be an object of string to string"},
      {"metadata_not_strings", raw_file(R"({"__metadata__":{"n":1}})"),
       "__metadata__ must be an object of string to string, but \"n\" maps to 1"},
      {"deep_nesting", raw_file(std::string(64, '[') + std::string(64, ']')), "nests deeper than"},
  };
  for (const Case& c : cases) {
    const std::string path = dir / (c.name + ".safetensors");
    write_bytes(path, c.bytes);
    expect_error([&] { SafetensorsFile::open(path); }, {c.phrase, path}, c.name);
  }

  // The same rules through from_memory, with its label in the message.
  auto st = std::make_shared<Storage>();
  std::string hole = raw_file(R"({"a":{)" + f32x2 + R"(,"data_offsets":[4,12]}})", eight + "1234");
  st->data = hole.data();
  st->bytes = hole.size();
  expect_error([&] { SafetensorsFile::from_memory(st, "in-memory image"); },
               {"in-memory image", "hole in the data section"}, "from_memory");

  // Not a file at all.
  expect_error([&] { SafetensorsFile::open(dir / "missing.safetensors"); },
               {"cannot open", "missing.safetensors"}, "missing file");
  expect_error([&] { SafetensorsFile::open(dir.path.string()); }, {"is not a regular file"},
               "folder");
}

TEST(Safetensors, DtypesWithoutAnOrigamiTypeReadAsBytes) {
  TempDir dir;
  // I16 [2] = {-2, 300}, BOOL [3] = {1, 0, 1}, F64 [] = 1.5, I8 [1] = -7; unpadded header.
  const std::string data = std::string("\0\0\0\0\0\0\xf8\x3f", 8) +
                           std::string("\xfe\xff\x2c\x01", 4) + std::string("\xf9", 1) +
                           std::string("\x01\x00\x01", 3);
  const std::string path = dir / "other.safetensors";
  write_bytes(path, raw_file(R"({"f":{"dtype":"F64","shape":[],"data_offsets":[0,8]},)"
                             R"("s":{"dtype":"I16","shape":[2],"data_offsets":[8,12]},)"
                             R"("c":{"dtype":"I8","shape":[1],"data_offsets":[12,13]},)"
                             R"("b":{"dtype":"BOOL","shape":[3],"data_offsets":[13,16]}})",
                             data));
  const SafetensorsFile f = SafetensorsFile::open(path);
  EXPECT_EQ(f.info("s").dtype, std::nullopt);
  EXPECT_EQ(f.info("s").element_size, 2u);
  EXPECT_EQ(f.info("b").dtype_name, "BOOL");
  double x;
  std::memcpy(&x, f.bytes("f").data(), 8);
  EXPECT_EQ(x, 1.5);
  int16_t s[2];
  std::memcpy(s, f.bytes("s").data(), 4);
  EXPECT_EQ(s[0], -2);
  EXPECT_EQ(s[1], 300);
  EXPECT_EQ(int8_t(f.bytes("c")[0]), -7);
  EXPECT_EQ(f.bytes("b").size(), 3u);
  for (const char* name : {"f", "s", "c", "b"})
    expect_error([&] { f.tensor(name); }, {"has dtype", "no tensor type", "bytes()"}, name);
  expect_error([&] { f.info("nope"); }, {"no tensor named \"nope\"", path}, "unknown name");
}

// A header whose length is not a multiple of 8 leaves tensors misaligned: they are copied.
TEST(Safetensors, MisalignedTensorsAreCopied) {
  TempDir dir;
  const std::string path = dir / "unaligned.safetensors";
  const float v[2] = {1.0f, -2.5f};
  const std::string header = R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";
  ASSERT_NE((8 + header.size()) % 4, 0u);
  write_bytes(path, raw_file(header, std::string(reinterpret_cast<const char*>(v), 8)));
  const Tensor t = SafetensorsFile::open(path).tensor("a");
  EXPECT_EQ(reinterpret_cast<uintptr_t>(t.data()) % 4, 0u);
  EXPECT_EQ(t.item_at(0), 1.0);
  EXPECT_EQ(t.item_at(1), -2.5);
}

TEST(Safetensors, ShardedCheckpointRoundTrip) {
  TempDir dir;
  NamedTensors tensors;
  for (int i = 0; i < 5; ++i)
    tensors.emplace_back("layers." + std::to_string(i) + ".weight",
                         random_of(i % 2 ? DType::bf16 : DType::f32, {3 + i, 5}, 10 + uint64_t(i)));
  tensors.emplace_back("embed", random_of(DType::i64, {4}, 3));
  size_t total = 0;
  for (const auto& nt : tensors) total += nt.second.nbytes();

  // Tensors of 60, 40, 100, 60, 140, 32 bytes in 130-byte shards: 60+40 | 100 | 60 | 140 (alone:
  // larger than a shard) | 32.
  const std::string ckpt = dir / "ckpt";
  const std::vector<std::string> files =
      write_safetensors_sharded(ckpt, tensors, 130, {{"format", "pt"}});
  ASSERT_EQ(files.size(), 6u);
  EXPECT_EQ(fs::path(files.back()).filename(), "model.safetensors.index.json");
  EXPECT_EQ(fs::path(files[0]).filename(), "model-00001-of-00005.safetensors");
  const json index = json::parse(read_bytes(files.back()));
  EXPECT_EQ(index["metadata"]["total_size"], total);
  EXPECT_EQ(index["weight_map"]["layers.1.weight"], "model-00001-of-00005.safetensors");
  EXPECT_EQ(index["weight_map"]["layers.4.weight"], "model-00004-of-00005.safetensors");
  EXPECT_EQ(index["weight_map"]["embed"], "model-00005-of-00005.safetensors");

  auto check = [&](const SafetensorsIndex& idx) {
    EXPECT_EQ(idx.names().size(), tensors.size());
    for (const auto& [name, t] : tensors) {
      SCOPED_TRACE(name);
      ASSERT_TRUE(idx.has(name));
      EXPECT_EQ(idx.info(name).shape, t.shape());
      EXPECT_EQ(tensor_bytes(idx.tensor(name)), tensor_bytes(t));
      EXPECT_EQ(idx.file_for(name).metadata().at("format"), "pt");
    }
  };
  const SafetensorsIndex idx = SafetensorsIndex::open(ckpt);
  EXPECT_EQ(idx.shards().size(), 5u);
  check(idx);
  check(SafetensorsIndex::open(ckpt + "/model.safetensors.index.json"));

  // Saving again into the same folder as one file removes the index and the old shards.
  write_safetensors_sharded(ckpt, tensors, 1 << 20, {{"format", "pt"}});
  std::vector<std::string> left;
  for (const auto& e : fs::directory_iterator(ckpt)) left.push_back(e.path().filename().string());
  EXPECT_EQ(left, std::vector<std::string>{"model.safetensors"});
  const SafetensorsIndex single = SafetensorsIndex::open(ckpt);
  EXPECT_EQ(single.shards().size(), 1u);
  check(SafetensorsIndex::open(ckpt + "/model.safetensors"));
}

TEST(Safetensors, BrokenIndexesAreRefused) {
  TempDir dir;
  const Tensor t = Tensor::from_vector({1, 2}, {2});
  write_safetensors(dir / "a.safetensors", {{"x", t}});
  struct Case {
    std::string name, index, phrase;
  };
  const std::vector<Case> cases = {
      {"missing_shard", R"({"weight_map":{"x":"b.safetensors"}})",
       "shard file " + (dir / "b.safetensors") + " (for tensor \"x\") does not exist"},
      {"wrong_shard", R"({"weight_map":{"x":"a.safetensors","y":"a.safetensors"}})",
       "tensor \"y\" is mapped to a.safetensors, which does not contain it"},
      {"no_weight_map", R"({"metadata":{}})", "has no \"weight_map\" object"},
      {"value_not_string", R"({"weight_map":{"x":1}})",
       "weight_map value for \"x\" is not a string"},
      {"escape", R"({"weight_map":{"x":"../a.safetensors"}})", "escapes the checkpoint folder"},
      {"absolute", R"({"weight_map":{"x":"/etc/passwd"}})", "escapes the checkpoint folder"},
      {"duplicate", R"({"weight_map":{"x":"a.safetensors","x":"a.safetensors"}})",
       "duplicate key \"x\" in the index JSON"},
      {"not_json", R"({"weight_map":)", "index is not valid JSON"},
  };
  for (const Case& c : cases) {
    const std::string path = dir / (c.name + ".index.json");
    write_bytes(path, c.index);
    expect_error([&] { SafetensorsIndex::open(path); }, {c.phrase, path}, c.name);
  }
  const std::string empty = dir / "empty";
  fs::create_directory(empty);
  expect_error([&] { SafetensorsIndex::open(empty); },
               {"found neither model.safetensors.index.json nor model.safetensors", empty},
               "empty folder");
  expect_error([&] { SafetensorsIndex::open(dir / "a.safetensors").tensor("y"); },
               {"no tensor named \"y\""}, "unknown name");
}

// Every file of the fuzzing seed corpus goes through the parser: valid_* files read completely,
// bad_* files are refused with origami::Error, anything else (crash reproducers added by fuzzing)
// must do one or the other.
TEST(Safetensors, FuzzCorpusReplays) {
  const fs::path corpus = fs::path(ORIGAMI_SOURCE_DIR) / "tests/fuzz/corpus";
  int valid = 0, bad = 0;
  for (const auto& entry : fs::directory_iterator(corpus)) {
    const std::string name = entry.path().filename();
    SCOPED_TRACE(name);
    bool refused = false;
    try {
      const SafetensorsFile f = SafetensorsFile::open(entry.path());
      for (const std::string& t : f.names()) {
        const SafetensorsInfo& info = f.info(t);
        EXPECT_EQ(f.bytes(t).size(), info.end - info.begin);
        if (info.dtype) {
          EXPECT_EQ(f.tensor(t).nbytes(), info.end - info.begin);
        }
      }
    } catch (const Error& e) {
      refused = true;
      EXPECT_NE(std::string(e.what()).find(name), std::string::npos) << e.what();
    }
    if (name.rfind("valid_", 0) == 0) {
      EXPECT_FALSE(refused);
      ++valid;
    } else if (name.rfind("bad_", 0) == 0) {
      EXPECT_TRUE(refused);
      ++bad;
    }
  }
  EXPECT_GE(valid, 3);
  EXPECT_GE(bad, 10);
}

// ---- against the reference library (Python safetensors, torch, huggingface_hub) ----------------

// Saves the manifest entry of one tensor: values as .npy (u8 widened: write_npy has no u8).
json describe(const fs::path& dir, const Tensor& t, int& counter) {
  const std::string npy = "npy/" + std::to_string(counter++) + ".npy";
  test::write_npy((dir / npy).string(), t.dtype() == DType::u8 ? t.to(DType::i32) : t);
  return {{"npy", npy}, {"dtype", st_name(t.dtype())}, {"shape", t.shape()}};
}

// Elements of a tensor read from a file as doubles, through tensor() or, for dtypes origami has
// no type for, by decoding bytes() here.
std::vector<double> values_of(const SafetensorsFile& f, const std::string& name) {
  const SafetensorsInfo& info = f.info(name);
  std::vector<double> out;
  if (info.dtype) {
    const test::HostArray a = test::to_host_array(f.tensor(name));
    return a.data;
  }
  const auto b = f.bytes(name);
  for (size_t i = 0; i < b.size(); i += info.element_size) {
    if (info.dtype_name == "F64") {
      double v;
      std::memcpy(&v, b.data() + i, 8);
      out.push_back(v);
    } else if (info.dtype_name == "I16") {
      int16_t v;
      std::memcpy(&v, b.data() + i, 2);
      out.push_back(v);
    } else if (info.dtype_name == "I8") {
      out.push_back(int8_t(b[i]));
    } else if (info.dtype_name == "BOOL") {
      out.push_back(uint8_t(b[i]));
    } else {
      ADD_FAILURE() << "unexpected dtype " << info.dtype_name;
    }
  }
  return out;
}

TEST(SafetensorsGolden, InteropWithReferenceLibrary) {
  TempDir dir;
  // Ours: every dtype and odd shape, a name needing escapes, metadata; a bf16-free copy for
  // safetensors.numpy; and a sharded checkpoint.
  const fs::path ours = dir.path / "ours";
  fs::create_directories(ours / "npy");
  NamedTensors all, no_bf16, sharded;
  uint64_t seed = 100;
  for (DType dt : kAllDTypes)
    for (const Shape& s : kOddShapes) {
      const std::string name = std::string("w.") + dtype_name(dt) + shape_str(s);
      all.emplace_back(name, random_of(dt, s, seed++));
      if (dt != DType::bf16) no_bf16.emplace_back(name, all.back().second);
    }
  all.emplace_back("naïve \"quoted\"\tname\n", random_of(DType::f32, {2}, 7));
  for (int i = 0; i < 4; ++i)
    sharded.emplace_back("model.layers." + std::to_string(i) + ".weight",
                         random_of(DType::bf16, {3, 4 + i}, 200 + uint64_t(i)));
  const std::map<std::string, std::string> metadata = {{"format", "pt"}, {"note", "✓ origami"}};
  write_safetensors((ours / "all.safetensors").string(), all, metadata);
  write_safetensors((ours / "numpy.safetensors").string(), no_bf16);
  write_safetensors_sharded((ours / "sharded").string(), sharded, 64, {{"format", "pt"}});
  ASSERT_TRUE(fs::exists(ours / "sharded/model.safetensors.index.json"));

  int counter = 0;
  json files = json::array();
  auto add = [&](const std::string& path, const char* kind, const NamedTensors& ts,
                 const std::map<std::string, std::string>& md) {
    json tensors = json::object();
    for (const auto& [name, t] : ts) tensors[name] = describe(ours, t, counter);
    files.push_back({{"path", path}, {"kind", kind}, {"metadata", md}, {"tensors", tensors}});
  };
  add("all.safetensors", "file", all, metadata);
  add("numpy.safetensors", "numpy", no_bf16, {});
  add("sharded", "sharded", sharded, {{"format", "pt"}});
  {
    std::ofstream mf(ours / "manifest.json");
    mf << json{{"files", files}}.dump(1);
  }

  // One Python run: verify ours, then write the reference's files.
  const fs::path ref = dir.path / "ref";
  fs::create_directories(ref);
  const std::string log = dir / "log.txt";
  const std::string cmd = std::string("\"") + ORIGAMI_PYTHON + "\" \"" + ORIGAMI_SOURCE_DIR +
                          "/tests/golden/make_safetensors.py\" verify \"" + ours.string() +
                          "\" write \"" + ref.string() + "\" > \"" + log + "\" 2>&1";
  ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd << "\n" << read_bytes(log);

  // Theirs: every file of the reference's manifest reads back with the same dtypes, shapes,
  // values and metadata.
  const json manifest = json::parse(read_bytes((ref / "manifest.json").string()));
  ASSERT_EQ(manifest["files"].size(), 2u);
  for (const json& entry : manifest["files"]) {
    const std::string path = (ref / entry["path"].get<std::string>()).string();
    SCOPED_TRACE(path);
    const SafetensorsIndex idx = SafetensorsIndex::open(path);
    EXPECT_EQ(idx.names().size(), entry["tensors"].size());
    for (const SafetensorsFile& f : idx.shards())
      EXPECT_EQ(f.metadata(), (entry["metadata"].get<std::map<std::string, std::string>>()));
    for (const auto& [name, spec] : entry["tensors"].items()) {
      SCOPED_TRACE(name);
      ASSERT_TRUE(idx.has(name));
      const SafetensorsInfo& info = idx.info(name);
      EXPECT_EQ(info.dtype_name, spec["dtype"]);
      EXPECT_EQ(info.shape, spec["shape"].get<Shape>());
      const test::HostArray expected =
          test::read_npy((ref / spec["npy"].get<std::string>()).string());
      EXPECT_EQ(values_of(idx.file_for(name), name), expected.data);
    }
  }
  EXPECT_GT(SafetensorsIndex::open((ref / "sharded").string()).shards().size(), 1u);
}

}  // namespace
}  // namespace origami
