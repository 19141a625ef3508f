// Row gather and scatter-add (MoE permute / unpermute): naive double references, determinism and
// summation order of scatter_add_rows, finite differences of both backwards and of the weight
// gradient, bad input, and PyTorch golden values (src[idx], index_add, gradients by autograd).
#include <cmath>
#include <string>
#include <vector>

#include "ops/index.h"
#include "tests/support/test_support.h"

namespace origami {
namespace {

using test::HostArray;

const test::Tolerance kExact{0.0, 0.0};  // bit-for-bit

// A copy on the device under test, for tensors an op updates in place (on the CPU,
// on_test_device returns the tensor itself).
Tensor copy_on_test_device(const Tensor& cpu) {
  return test::on_test_device(cpu.clone());
}

const int64_t kSizes[] = {1, 3, 17, 130};

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

std::vector<int64_t> int_values(const Tensor& t) {
  const HostArray h = test::to_host_array(t);
  std::vector<int64_t> v(size_t(h.numel()));
  for (int64_t i = 0; i < h.numel(); ++i) v[size_t(i)] = int64_t(h[i]);
  return v;
}

HostArray gather_reference(const HostArray& src, const std::vector<int64_t>& idx) {
  const int64_t H = src.shape[1], M = int64_t(idx.size());
  HostArray out = test::host_array({M, H});
  for (int64_t i = 0; i < M; ++i)
    for (int64_t c = 0; c < H; ++c) out[i * H + c] = src[idx[size_t(i)] * H + c];
  return out;
}

// out = base; out[idx[i]] += weight[i] * src[i] (weight empty: 1).
HostArray scatter_reference(const HostArray& src, const std::vector<int64_t>& idx,
                            const HostArray& base, const HostArray* weight) {
  const int64_t H = src.shape[1];
  HostArray out = base;
  for (size_t i = 0; i < idx.size(); ++i)
    for (int64_t c = 0; c < H; ++c)
      out[idx[i] * H + c] += (weight ? (*weight)[int64_t(i)] : 1.0) * src[int64_t(i) * H + c];
  return out;
}

HostArray weight_grad_reference(const HostArray& src, const std::vector<int64_t>& idx,
                                const HostArray& dout) {
  const int64_t H = src.shape[1], M = int64_t(idx.size());
  HostArray dw = test::host_array({M});
  for (int64_t i = 0; i < M; ++i)
    for (int64_t c = 0; c < H; ++c) dw[i] += dout[idx[size_t(i)] * H + c] * src[i * H + c];
  return dw;
}

TEST(Index, GatherScatterAndWeightGradMatchReference) {
  ORIGAMI_REQUIRE_TEST_DEVICE();
  uint64_t seed = 1;
  for (DType dt : test::float_dtypes())
    for (int64_t N : kSizes)
      for (int64_t M : kSizes)
        for (int64_t H : {int64_t(1), int64_t(17), int64_t(130)}) {
          const DType idt = (++seed % 2) ? DType::i64 : DType::i32;
          const DType odt = (dt == DType::bf16 && seed % 3 == 0) ? DType::f32 : dt;
          SCOPED_TRACE(std::string("src ") + dtype_name(dt) + " out " + dtype_name(odt) + " idx " +
                       dtype_name(idt) + " N=" + std::to_string(N) + " M=" + std::to_string(M) +
                       " H=" + std::to_string(H));
          Tensor table = test::random_tensor({N, H}, dt, ++seed);
          Tensor idx = test::random_ints({M}, idt, 0, N, ++seed);
          Tensor rows = test::random_tensor({M, H}, dt, ++seed);
          Tensor base = test::random_tensor({N, H}, odt, ++seed);
          Tensor weight = test::random_tensor({M}, DType::f32, ++seed, 0.0, 1.0);
          Tensor dout = test::random_tensor({N, H}, dt, ++seed);
          const std::vector<int64_t> iv = int_values(idx);
          Tensor idxd = test::on_test_device(idx);

          Tensor gathered = test::empty_on_test_device({M, H}, dt);
          ops::gather_rows(test::on_test_device(table), idxd, gathered);
          EXPECT_ALL_CLOSE(gathered, gather_reference(test::to_host_array(table), iv), kExact);

          const HostArray wh = test::to_host_array(weight);
          Tensor out = copy_on_test_device(base);
          ops::scatter_add_rows(test::on_test_device(rows), idxd, out);
          EXPECT_ALL_CLOSE(
              out,
              scatter_reference(test::to_host_array(rows), iv, test::to_host_array(base), nullptr),
              test::tolerance_for(odt));
          Tensor outw = copy_on_test_device(base);
          ops::scatter_add_rows(test::on_test_device(rows), idxd, outw,
                                test::on_test_device(weight));
          EXPECT_ALL_CLOSE(
              outw,
              scatter_reference(test::to_host_array(rows), iv, test::to_host_array(base), &wh),
              test::tolerance_for(odt));

          Tensor dw = test::empty_on_test_device({M}, DType::f32);
          ops::scatter_add_rows_weight_grad(test::on_test_device(rows), idxd,
                                            test::on_test_device(dout), dw);
          // f32 dot products of exactly representable inputs.
          EXPECT_ALL_CLOSE(
              dw, weight_grad_reference(test::to_host_array(rows), iv, test::to_host_array(dout)),
              test::tolerance_for(DType::f32));
        }
}

// Repeated indices add up in index order: 1e8 - 1e8 + 1 is 1 in fp32 in that order and 0 in any
// other (the 1 is lost next to 1e8), and the bits are the same on every run.
TEST(Index, ScatterAddsInIndexOrderAndIsDeterministic) {
  ORIGAMI_REQUIRE_TEST_DEVICE();
  {
    Tensor src = Tensor::from_vector({1e8f, 5.0f, -1e8f, 7.0f, 1.0f}, {5, 1});
    Tensor idx = Tensor::from_vector_i64({0, 1, 0, 1, 0}, {5});
    Tensor out = test::on_test_device(Tensor::zeros({2, 1}, DType::f32));
    ops::scatter_add_rows(test::on_test_device(src), test::on_test_device(idx), out);
    HostArray expected = test::host_array({2, 1});
    expected[0] = 1.0;
    expected[1] = 12.0;
    EXPECT_ALL_CLOSE(out, expected, kExact);
  }
  for (DType dt : test::float_dtypes()) {
    SCOPED_TRACE(dtype_name(dt));
    const int64_t M = 4099, N = 7, H = 33;
    Tensor src = test::on_test_device(test::random_tensor({M, H}, dt, 41, -10.0, 10.0));
    Tensor idx = test::on_test_device(test::random_ints({M}, DType::i32, 0, N, 42));
    Tensor weight = test::on_test_device(test::random_tensor({M}, DType::f32, 43));
    Tensor base = test::random_tensor({N, H}, dt, 44);
    Tensor a = copy_on_test_device(base), b = copy_on_test_device(base);
    ops::scatter_add_rows(src, idx, a, weight);
    ops::scatter_add_rows(src, idx, b, weight);
    EXPECT_ALL_CLOSE(a, test::to_host_array(b), kExact);
  }
}

TEST(Index, BackwardsMatchFiniteDifferences) {
  ORIGAMI_REQUIRE_TEST_DEVICE();
  const int64_t N = 17, M = 40, H = 3;
  Tensor src = test::random_tensor({N, H}, DType::f32, 61);
  Tensor idx = test::random_ints({M}, DType::i64, 0, N, 62);
  Tensor idxd = test::on_test_device(idx);
  const std::vector<int64_t> iv = int_values(idx);

  {  // gather: dsrc = scatter_add_rows(dout, idx)
    Tensor w = test::random_tensor({M, H}, DType::f32, 63);
    auto loss = [&] {
      Tensor out = test::empty_on_test_device({M, H}, DType::f32);
      ops::gather_rows(test::on_test_device(src), idxd, out);
      return test::weighted_sum(out, w);
    };
    Tensor dsrc = test::on_test_device(Tensor::zeros({N, H}, DType::f32));
    ops::scatter_add_rows(test::on_test_device(w), idxd, dsrc);
    EXPECT_LT(test::finite_difference_error(loss, src, dsrc), test::kFiniteDifferenceTolerance);
  }

  {  // scatter: dsrc[i] = weight[i] * dout[idx[i]] (gather_rows, then the weight),
     // dweight = scatter_add_rows_weight_grad
    Tensor rows = test::random_tensor({M, H}, DType::f32, 64);
    Tensor weight = test::random_tensor({M}, DType::f32, 65, 0.0, 1.0);
    Tensor base = test::random_tensor({N, H}, DType::f32, 66);
    Tensor w = test::random_tensor({N, H}, DType::f32, 67);
    auto loss = [&] {
      Tensor out = copy_on_test_device(base);
      ops::scatter_add_rows(test::on_test_device(rows), idxd, out, test::on_test_device(weight));
      return test::weighted_sum(out, w);
    };
    Tensor g = test::empty_on_test_device({M, H}, DType::f32);
    ops::gather_rows(test::on_test_device(w), idxd, g);
    Tensor drows = g.to(Device::cpu());
    for (int64_t i = 0; i < M; ++i)
      for (int64_t c = 0; c < H; ++c)
        drows.set_at(i * H + c, drows.item_at(i * H + c) * weight.item_at(i));
    EXPECT_LT(test::finite_difference_error(loss, rows, drows), test::kFiniteDifferenceTolerance);
    Tensor dweight = test::empty_on_test_device({M}, DType::f32);
    ops::scatter_add_rows_weight_grad(test::on_test_device(rows), idxd, test::on_test_device(w),
                                      dweight);
    EXPECT_LT(test::finite_difference_error(loss, weight, dweight),
              test::kFiniteDifferenceTolerance);
  }
}

TEST(Index, BadInputsNameOpAndShapes) {
  ORIGAMI_REQUIRE_TEST_DEVICE();
  const Device dev = test::test_device();
  Tensor src = Tensor::zeros({4, 3}, DType::f32, dev);
  Tensor idx = Tensor::zeros({5}, DType::i64, dev);
  Tensor out = Tensor::zeros({5, 3}, DType::f32, dev);
  Tensor out_bad = Tensor::zeros({5, 2}, DType::f32, dev);
  expect_error([&] { ops::gather_rows(src, idx, out_bad); },
               {"gather_rows", "out", "[5,3]", "f32[5,2]"});
  Tensor out_bf = Tensor::zeros({5, 3}, DType::bf16, dev);
  expect_error([&] { ops::gather_rows(src, idx, out_bf); },
               {"gather_rows", "same dtype", "f32[4,3]", "bf16[5,3]"});
  Tensor idx_f = Tensor::zeros({5}, DType::f32, dev);
  expect_error([&] { ops::gather_rows(src, idx_f, out); },
               {"gather_rows", "idx", "i32 or i64", "f32[5]"});
  Tensor rows = Tensor::zeros({5, 3}, DType::f32, dev);
  Tensor table = Tensor::zeros({4, 2}, DType::f32, dev);
  expect_error([&] { ops::scatter_add_rows(rows, idx, table); },
               {"scatter_add_rows", "out", "3 columns", "f32[5,3]", "f32[4,2]"});
  Tensor idx4 = Tensor::zeros({4}, DType::i32, dev);
  Tensor table3 = Tensor::zeros({4, 3}, DType::f32, dev);
  expect_error([&] { ops::scatter_add_rows(rows, idx4, table3); },
               {"scatter_add_rows", "idx", "[5]", "i32[4]"});
  Tensor w_bad = Tensor::zeros({4}, DType::f32, dev);
  expect_error([&] { ops::scatter_add_rows(rows, idx, table3, w_bad); },
               {"scatter_add_rows", "weight", "[5]", "f32[4]"});
  Tensor w_bf = Tensor::zeros({5}, DType::bf16, dev);
  expect_error([&] { ops::scatter_add_rows(rows, idx, table3, w_bf); },
               {"scatter_add_rows", "weight", "f32", "bf16[5]"});
  Tensor dw_bad = Tensor::zeros({5, 1}, DType::f32, dev);
  expect_error([&] { ops::scatter_add_rows_weight_grad(rows, idx, table3, dw_bad); },
               {"scatter_add_rows_weight_grad", "dweight", "[5]", "f32[5,1]"});
  if (dev.is_cpu()) {
    Tensor far = Tensor::from_vector_i64({0, 1, 4, 0, 0}, {5});
    expect_error([&] { ops::gather_rows(src, far, out); },
                 {"gather_rows", "idx[2] = 4", "[0, 4)", "f32[4,3]"});
    Tensor neg = Tensor::from_vector_i64({0, 1, 2, -1, 0}, {5});
    expect_error([&] { ops::scatter_add_rows(rows, neg, table3); },
                 {"scatter_add_rows", "idx[3] = -1", "[0, 4)"});
  }
  if (cuda_available()) {
    Tensor idx_other =
        Tensor::zeros({5}, DType::i64, dev.is_cpu() ? Device::cuda() : Device::cpu());
    expect_error([&] { ops::gather_rows(src, idx_other, out); },
                 {"gather_rows", "one device", "idx"});
  }
}

TEST(IndexGolden, MatchesTorch) {
  ORIGAMI_REQUIRE_TEST_DEVICE();
  struct Case {
    int64_t N, M, H;
    DType dt;
  };
  const std::vector<Case> cases = {{1, 3, 17, DType::f32},
                                   {17, 130, 3, DType::bf16},
                                   {130, 17, 130, DType::f32},
                                   {3, 130, 1, DType::f32},
                                   {17, 40, 130, DType::bf16}};
  struct Inputs {
    Tensor table, idx, rows, weight, base, dgathered, dout;
  };
  std::vector<Inputs> ins;
  std::vector<test::TorchCase> torch_cases;
  uint64_t seed = 300;
  for (size_t c = 0; c < cases.size(); ++c) {
    const Case& k = cases[c];
    Inputs in{test::random_tensor({k.N, k.H}, k.dt, ++seed),
              test::random_ints({k.M}, c % 2 ? DType::i32 : DType::i64, 0, k.N, ++seed),
              test::random_tensor({k.M, k.H}, k.dt, ++seed),
              test::random_tensor({k.M}, DType::f32, ++seed, 0.0, 1.0),
              test::random_tensor({k.N, k.H}, k.dt, ++seed),
              test::random_tensor({k.M, k.H}, k.dt, ++seed),
              test::random_tensor({k.N, k.H}, k.dt, ++seed)};
    ins.push_back(in);
    torch_cases.push_back({"gather" + std::to_string(c),
                           "gather_rows",
                           "{}",
                           {{"src", in.table}, {"idx", in.idx}, {"dout", in.dgathered}}});
    torch_cases.push_back({"scatter" + std::to_string(c),
                           "scatter_add_rows",
                           "{}",
                           {{"src", in.rows},
                            {"idx", in.idx},
                            {"weight", in.weight},
                            {"base", in.base},
                            {"dout", in.dout}}});
  }
  const auto ref = test::run_torch(torch_cases);
  if (ref.empty()) return;  // run_torch reported the failure
  for (size_t c = 0; c < cases.size(); ++c) {
    const Case& k = cases[c];
    const Inputs& in = ins[c];
    const std::string g = "gather" + std::to_string(c), s = "scatter" + std::to_string(c);
    SCOPED_TRACE(std::string(dtype_name(k.dt)) + " N=" + std::to_string(k.N) +
                 " M=" + std::to_string(k.M) + " H=" + std::to_string(k.H));
    const test::Tolerance tol = test::tolerance_for(k.dt);
    Tensor idxd = test::on_test_device(in.idx);

    Tensor gathered = test::empty_on_test_device({k.M, k.H}, k.dt);
    ops::gather_rows(test::on_test_device(in.table), idxd, gathered);
    EXPECT_ALL_CLOSE(gathered, ref.at(g + "/out"), tol);
    Tensor dtable = test::on_test_device(Tensor::zeros({k.N, k.H}, k.dt));
    ops::scatter_add_rows(test::on_test_device(in.dgathered), idxd, dtable);
    EXPECT_ALL_CLOSE(dtable, ref.at(g + "/dsrc"), tol);

    Tensor out = copy_on_test_device(in.base);
    ops::scatter_add_rows(test::on_test_device(in.rows), idxd, out,
                          test::on_test_device(in.weight));
    EXPECT_ALL_CLOSE(out, ref.at(s + "/out"), tol);
    Tensor dweight = test::empty_on_test_device({k.M}, DType::f32);
    ops::scatter_add_rows_weight_grad(test::on_test_device(in.rows), idxd,
                                      test::on_test_device(in.dout), dweight);
    EXPECT_ALL_CLOSE(dweight, ref.at(s + "/dweight"), test::tolerance_for(DType::f32));
    // dsrc[i] = weight[i] * dout[idx[i]]: the gather of dout, weighted here.
    Tensor drows = test::empty_on_test_device({k.M, k.H}, k.dt);
    ops::gather_rows(test::on_test_device(in.dout), idxd, drows);
    HostArray dr = test::to_host_array(drows);
    for (int64_t i = 0; i < k.M; ++i)
      for (int64_t j = 0; j < k.H; ++j) dr[i * k.H + j] *= in.weight.item_at(i);
    EXPECT_ALL_CLOSE(dr, ref.at(s + "/dsrc"), tol);
  }
}

}  // namespace
}  // namespace origami
