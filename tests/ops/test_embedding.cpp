// Embedding lookup and its backward: naive double references, finite differences, the id rules of
// a sharded vocabulary, bad input, and PyTorch (F.embedding) golden values.
#include <string>
#include <vector>

#include "ops/embedding.h"
#include "tests/support/test_support.h"

namespace origami {
namespace {

using test::HostArray;

template <typename Fn>
void expect_error(Fn&& fn, const std::vector<std::string>& parts) {
  try {
    fn();
    ADD_FAILURE() << "no origami::Error thrown; expected one naming: " << parts[0];
  } catch (const Error& e) {
    for (const std::string& p : parts)
      EXPECT_NE(std::string(e.what()).find(p), std::string::npos)
          << "message \"" << e.what() << "\" does not contain \"" << p << "\"";
  }
}

// out[t] = weight[ids[t] - offset] or zeros.
HostArray reference_forward(const HostArray& w, const HostArray& ids, int64_t offset) {
  const int64_t V = w.shape[0], H = w.shape[1], T = ids.numel();
  HostArray out = test::host_array({T, H});
  for (int64_t t = 0; t < T; ++t) {
    const int64_t row = int64_t(ids[t]) - offset;
    if (row < 0 || row >= V) continue;
    for (int64_t h = 0; h < H; ++h) out[t * H + h] = w[row * H + h];
  }
  return out;
}

// dweight + the rows of dout, in double.
HostArray reference_backward(const HostArray& ids, const HostArray& dout, HostArray dweight,
                             int64_t offset) {
  const int64_t V = dweight.shape[0], H = dweight.shape[1], T = ids.numel();
  for (int64_t t = 0; t < T; ++t) {
    const int64_t row = int64_t(ids[t]) - offset;
    if (row < 0 || row >= V) continue;
    for (int64_t h = 0; h < H; ++h) dweight[row * H + h] += dout[t * H + h];
  }
  return dweight;
}

struct Size {
  int64_t V, H, T;
};
const Size kSizes[] = {{1, 1, 1}, {3, 17, 130}, {17, 130, 3}, {130, 3, 17}, {17, 3, 1}};

TEST(Embedding, ForwardMatchesReference) {
  ORIGAMI_REQUIRE_TEST_DEVICE();
  uint64_t seed = 1;
  for (DType dt : test::float_dtypes())
    for (DType id_dt : {DType::i32, DType::i64})
      for (const Size& s : kSizes) {
        SCOPED_TRACE(std::string(dtype_name(dt)) + " ids " + dtype_name(id_dt) +
                     " V=" + std::to_string(s.V) + " H=" + std::to_string(s.H) +
                     " T=" + std::to_string(s.T));
        Tensor w = test::random_tensor({s.V, s.H}, dt, ++seed);
        Tensor ids = test::random_ints({s.T}, id_dt, 0, s.V, ++seed);
        Tensor out = test::empty_on_test_device({s.T, s.H}, dt);
        ops::embedding_forward(test::on_test_device(w), test::on_test_device(ids), out);
        // A copy: exact.
        EXPECT_ALL_CLOSE(out,
                         reference_forward(test::to_host_array(w), test::to_host_array(ids), 0),
                         (test::Tolerance{0.0, 0.0}));
      }
}

TEST(Embedding, ShardWritesZeroRowsForOtherShardsIds) {
  ORIGAMI_REQUIRE_TEST_DEVICE();
  const int64_t vocab = 130, offset = 40, V = 17, H = 33;
  // Every id of the vocabulary, shuffled, and the shard's edges twice.
  std::vector<int64_t> id_values;
  for (int64_t i = 0; i < vocab; ++i) id_values.push_back((i * 57) % vocab);
  for (int64_t e : {39, 40, 56, 57, 0, 129}) id_values.push_back(e);
  const int64_t T = int64_t(id_values.size());
  for (DType dt : test::float_dtypes())
    for (int64_t total : {int64_t(0), vocab}) {
      SCOPED_TRACE(std::string(dtype_name(dt)) + " vocab_size_total=" + std::to_string(total));
      Tensor w = test::random_tensor({V, H}, dt, 11);
      Tensor ids = Tensor::from_vector_i64(id_values, {T});
      Tensor out = test::empty_on_test_device({T, H}, dt);
      ops::embedding_forward(test::on_test_device(w), test::on_test_device(ids), out, offset,
                             total);
      EXPECT_ALL_CLOSE(out,
                       reference_forward(test::to_host_array(w), test::to_host_array(ids), offset),
                       (test::Tolerance{0.0, 0.0}));
      // And the backward adds only this shard's tokens.
      Tensor dout = test::random_tensor({T, H}, dt, 12);
      Tensor dw0 = test::random_tensor({V, H}, DType::f32, 13);
      Tensor dw = test::on_test_device(dw0.clone());
      ops::embedding_backward(test::on_test_device(ids), test::on_test_device(dout), dw, offset,
                              total);
      EXPECT_ALL_CLOSE(dw,
                       reference_backward(test::to_host_array(ids), test::to_host_array(dout),
                                          test::to_host_array(dw0), offset),
                       test::tolerance_for(DType::f32));
    }
}

TEST(Embedding, BackwardAccumulatesMatchesReference) {
  ORIGAMI_REQUIRE_TEST_DEVICE();
  uint64_t seed = 100;
  for (DType dt : test::float_dtypes())
    for (DType id_dt : {DType::i32, DType::i64})
      for (const Size& s : kSizes) {
        SCOPED_TRACE(std::string(dtype_name(dt)) + " ids " + dtype_name(id_dt) +
                     " V=" + std::to_string(s.V) + " H=" + std::to_string(s.H) +
                     " T=" + std::to_string(s.T));
        // Few distinct ids: many repeats.
        Tensor ids = test::random_ints({s.T}, id_dt, 0, std::min<int64_t>(s.V, 4), ++seed);
        Tensor dout = test::random_tensor({s.T, s.H}, dt, ++seed);
        Tensor dw0 = test::random_tensor({s.V, s.H}, DType::f32, ++seed);
        Tensor dw = test::on_test_device(dw0.clone());
        ops::embedding_backward(test::on_test_device(ids), test::on_test_device(dout), dw);
        EXPECT_ALL_CLOSE(dw,
                         reference_backward(test::to_host_array(ids), test::to_host_array(dout),
                                            test::to_host_array(dw0), 0),
                         test::tolerance_for(DType::f32));
      }
}

// The documented order: each dweight element adds its tokens' values one by one in token order,
// in f32, on every backend. Bit-exact, so a resumed run reproduces the same weights.
TEST(Embedding, BackwardAddsInTokenOrderBitExactly) {
  ORIGAMI_REQUIRE_TEST_DEVICE();
  const int64_t V = 5, H = 130, T = 300;
  Tensor ids = test::random_ints({T}, DType::i64, 0, V, 21);
  // Values of very different sizes, so that another summation order would round differently.
  Tensor dout = Tensor::empty({T, H}, DType::f32);
  Tensor base = test::random_tensor({T, H}, DType::f32, 22);
  for (int64_t i = 0; i < T * H; ++i)
    dout.set_at(i, base.item_at(i) * (i % 3 == 0 ? 1e4 : (i % 3 == 1 ? 1.0 : 1e-4)));
  Tensor dw0 = test::random_tensor({V, H}, DType::f32, 23);
  std::vector<float> expected(size_t(V * H));
  for (int64_t i = 0; i < V * H; ++i) expected[size_t(i)] = float(dw0.item_at(i));
  const float* d = dout.data_as<const float>();
  for (int64_t t = 0; t < T; ++t) {
    const int64_t row = int64_t(ids.item_at(t));
    for (int64_t h = 0; h < H; ++h) expected[size_t(row * H + h)] += d[t * H + h];
  }
  for (int run = 0; run < 2; ++run) {
    Tensor dw = test::on_test_device(dw0.clone());
    ops::embedding_backward(test::on_test_device(ids), test::on_test_device(dout), dw);
    const std::vector<float> got = dw.to_float_vector();
    int64_t mismatches = 0;
    for (size_t i = 0; i < got.size(); ++i) mismatches += got[i] != expected[i];
    EXPECT_EQ(mismatches, 0) << "run " << run;
  }
}

TEST(Embedding, BackwardMatchesFiniteDifferences) {
  ORIGAMI_REQUIRE_TEST_DEVICE();
  const int64_t V = 17, H = 33, T = 130;
  Tensor w = test::random_tensor({V, H}, DType::f32, 31);
  Tensor ids = test::random_ints({T}, DType::i32, 0, V, 32);
  Tensor weights = test::random_tensor({T, H}, DType::f32, 33);
  auto loss = [&] {
    Tensor out = test::empty_on_test_device({T, H}, DType::f32);
    ops::embedding_forward(test::on_test_device(w), test::on_test_device(ids), out);
    return test::weighted_sum(out, weights);
  };
  Tensor grad = Tensor::zeros({V, H}, DType::f32, test::test_device());
  ops::embedding_backward(test::on_test_device(ids), test::on_test_device(weights), grad);
  EXPECT_LT(test::finite_difference_error(loss, w, grad, 24), test::kFiniteDifferenceTolerance);
}

TEST(Embedding, IdsOutsideTheVocabulary) {
  ORIGAMI_REQUIRE_TEST_DEVICE();
  const int64_t V = 17, H = 3;
  Tensor w = test::on_test_device(test::random_tensor({V, H}, DType::f32, 41));
  Tensor out = test::empty_on_test_device({3, H}, DType::f32);
  Tensor dw = Tensor::zeros({V, H}, DType::f32, test::test_device());
  Tensor dout = test::on_test_device(test::random_tensor({3, H}, DType::f32, 42));
  Tensor too_big = test::on_test_device(Tensor::from_vector_i64({0, 5, 17}, {3}));
  Tensor negative = test::on_test_device(Tensor::from_vector_i64({0, -1, 2}, {3}, DType::i32));
  if (test::test_device().is_cpu()) {
    expect_error([&] { ops::embedding_forward(w, too_big, out); },
                 {"embedding_forward", "ids[2] = 17", "[0, 17)"});
    expect_error([&] { ops::embedding_forward(w, negative, out); },
                 {"embedding_forward", "ids[1] = -1", "[0, 17)"});
    expect_error([&] { ops::embedding_backward(too_big, dout, dw); },
                 {"embedding_backward", "ids[2] = 17", "[0, 17)"});
    // A shard of a vocabulary of 40: id 39 lies in another shard, id 40 nowhere.
    Tensor ids = Tensor::from_vector_i64({39, 40, 20}, {3});
    expect_error([&] { ops::embedding_forward(w, ids, out, 20, 40); },
                 {"embedding_forward", "ids[1] = 40", "[0, 40)"});
    // Negative ids are an error even when the vocabulary size is not known.
    expect_error([&] { ops::embedding_forward(w, negative, out, 20); },
                 {"embedding_forward", "ids[1] = -1", "negative"});
  } else {
    // CUDA does not read the ids back: invalid ids give zero rows and no gradient.
    ops::embedding_forward(w, too_big, out);
    HostArray o = test::to_host_array(out);
    for (int64_t h = 0; h < H; ++h) EXPECT_EQ(o[2 * H + h], 0.0);
    ops::embedding_backward(negative, dout, dw);
    HostArray g = test::to_host_array(dw), dd = test::to_host_array(dout);
    for (int64_t h = 0; h < H; ++h) EXPECT_EQ(g[h], dd[h]);
  }
}

TEST(Embedding, BadInputsThrowNamingOpAndShapes) {
  ORIGAMI_REQUIRE_TEST_DEVICE();
  Tensor w = test::empty_on_test_device({17, 3}, DType::f32);
  Tensor ids = test::on_test_device(Tensor::from_vector_i64({1, 2, 3, 4}, {4}));
  Tensor out = test::empty_on_test_device({4, 3}, DType::f32);
  expect_error(
      [&] {
        Tensor bad = test::empty_on_test_device({4, 2}, DType::f32);
        ops::embedding_forward(w, ids, bad);
      },
      {"embedding_forward", "out", "[4,3]", "f32[4,2]"});
  expect_error(
      [&] {
        Tensor bad = test::empty_on_test_device({4, 3}, DType::bf16);
        ops::embedding_forward(w, ids, bad);
      },
      {"embedding_forward", "f32[17,3]", "bf16[4,3]"});
  expect_error(
      [&] {
        Tensor bad = test::empty_on_test_device({4}, DType::f32);
        ops::embedding_forward(w, bad, out);
      },
      {"embedding_forward", "ids", "i32 or i64", "f32[4]"});
  expect_error(
      [&] {
        Tensor bad = test::empty_on_test_device({17, 3, 1}, DType::f32);
        ops::embedding_forward(bad, ids, out);
      },
      {"embedding_forward", "weight", "2-D", "f32[17,3,1]"});
  expect_error([&] { ops::embedding_forward(w, ids, out, -1); },
               {"embedding_forward", "vocab_offset", "-1"});
  expect_error([&] { ops::embedding_forward(w, ids, out, 30, 40); },
               {"embedding_forward", "[30, 47)", "40"});
  expect_error(
      [&] {
        Tensor dw = test::empty_on_test_device({17, 3}, DType::bf16);
        ops::embedding_backward(ids, out, dw);
      },
      {"embedding_backward", "dweight", "f32", "bf16[17,3]"});
  expect_error(
      [&] {
        Tensor dw = test::empty_on_test_device({17, 4}, DType::f32);
        ops::embedding_backward(ids, out, dw);
      },
      {"embedding_backward", "dout", "[4,4]", "f32[4,3]"});
  if (test::test_device().is_cuda()) {
    expect_error([&] { ops::embedding_forward(w, ids.to(Device::cpu()), out); },
                 {"embedding_forward", "one device", "ids", "cpu"});
  }
}

TEST(EmbeddingGolden, MatchesTorch) {
  ORIGAMI_REQUIRE_TEST_DEVICE();
  struct Case {
    std::string name;
    DType dt;
    Size s;
    int64_t offset;
    int64_t id_hi;  // ids in [0, id_hi)
    Tensor w, ids, dout, out, dw;
  };
  std::vector<Case> cases;
  uint64_t seed = 200;
  for (DType dt : test::float_dtypes()) {
    for (const Size& s : kSizes) cases.push_back({"", dt, s, 0, s.V, {}, {}, {}, {}, {}});
    cases.push_back({"", dt, {17, 33, 130}, 40, 130, {}, {}, {}, {}, {}});  // a shard
  }
  std::vector<test::TorchCase> torch_cases;
  for (size_t c = 0; c < cases.size(); ++c) {
    Case& k = cases[c];
    k.name = "embedding_" + std::to_string(c);
    k.w = test::random_tensor({k.s.V, k.s.H}, k.dt, ++seed);
    k.ids = test::random_ints({k.s.T}, DType::i64, 0, k.id_hi, ++seed);
    k.dout = test::random_tensor({k.s.T, k.s.H}, k.dt, ++seed);
    k.out = test::empty_on_test_device({k.s.T, k.s.H}, k.dt);
    k.dw = Tensor::zeros({k.s.V, k.s.H}, DType::f32, test::test_device());
    const int64_t total = k.offset ? k.id_hi : 0;
    ops::embedding_forward(test::on_test_device(k.w), test::on_test_device(k.ids), k.out, k.offset,
                           total);
    ops::embedding_backward(test::on_test_device(k.ids), test::on_test_device(k.dout), k.dw,
                            k.offset, total);
    torch_cases.push_back({k.name,
                           "embedding",
                           "{\"vocab_offset\": " + std::to_string(k.offset) + "}",
                           {{"weight", k.w}, {"ids", k.ids}, {"dout", k.dout}}});
  }
  auto ref = test::run_torch(torch_cases);
  for (const Case& k : cases) {
    SCOPED_TRACE(k.name + " " + dtype_name(k.dt));
    ASSERT_TRUE(ref.count(k.name + "/out") && ref.count(k.name + "/dweight"));
    EXPECT_ALL_CLOSE(k.out, ref[k.name + "/out"], (test::Tolerance{0.0, 0.0}));
    EXPECT_ALL_CLOSE(k.dw, ref[k.name + "/dweight"], test::tolerance_for(DType::f32));
  }
}

}  // namespace
}  // namespace origami
