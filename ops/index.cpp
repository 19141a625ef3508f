// Argument checks and device dispatch of row gather / scatter-add.
#include "ops/index.h"

#include <limits>

#include "ops/check.h"
#include "ops/cpu/index.h"
#if ORIGAMI_CUDA
#include "ops/cuda/index.h"
#endif

namespace origami::ops {

namespace {

void check_rows(const char* op, const char* name, const Tensor& t) {
  check_dim(op, name, t, 2);
  check_dtype(op, name, t, {DType::f32, DType::bf16});
  check_contiguous(op, name, t);
}

void check_index(const char* op, const Tensor& idx, int64_t M) {
  check_shape(op, "idx", idx, {M});
  check_dtype(op, "idx", idx, {DType::i32, DType::i64});
  check_contiguous(op, "idx", idx);
}

// Every index in [0, N). Read on the CPU only (on a GPU that would cost a synchronisation; the
// CUDA kernels skip out-of-range rows instead, see ops/cuda/index.cu).
void check_index_values(const char* op, const Tensor& idx, int64_t N, const char* table_name,
                        const Tensor& table) {
  if (!idx.device().is_cpu()) return;
  for (int64_t i = 0; i < idx.numel(); ++i) {
    const int64_t v =
        idx.dtype() == DType::i32 ? int64_t(idx.data_as<int32_t>()[i]) : idx.data_as<int64_t>()[i];
    ORIGAMI_CHECK(v >= 0 && v < N, op, ": idx[", i, "] = ", v, " is outside [0, ", N,
                  ") (the rows of ", table_name, " ", table.str(), ")");
  }
}

// The CUDA kernels index rows with 32-bit integers.
[[maybe_unused]] void check_cuda_sizes(const char* op, int64_t M, int64_t N) {
  constexpr int64_t kMax = std::numeric_limits<int32_t>::max() - 1;
  ORIGAMI_CHECK(M <= kMax && N <= kMax, op, ": CUDA kernels support at most ", kMax, " rows, got ",
                M, " indices into ", N, " rows");
}

}  // namespace

void gather_rows(const Tensor& src, const Tensor& idx, Tensor& out) {
  const char* op = "gather_rows";
  check_rows(op, "src", src);
  check_dim(op, "idx", idx, 1);
  const int64_t M = idx.size(0), N = src.size(0), H = src.size(1);
  check_index(op, idx, M);
  check_shape(op, "out", out, {M, H});
  check_same_dtype(op, "src", src, "out", out);
  check_contiguous(op, "out", out);
  const Device d = check_same_device(op, {{"src", &src}, {"idx", &idx}, {"out", &out}});
  if (out.numel() == 0) return;
  check_index_values(op, idx, N, "src", src);
  if (d.is_cpu()) return cpu::gather_rows(src, idx, out);
#if ORIGAMI_CUDA
  check_cuda_sizes(op, M, N);
  cuda::gather_rows(src, idx, out);
#else
  fail_no_cuda(op);
#endif
}

void scatter_add_rows(const Tensor& src, const Tensor& idx, Tensor& out, const Tensor& weight) {
  const char* op = "scatter_add_rows";
  check_rows(op, "src", src);
  const int64_t M = src.size(0), H = src.size(1);
  check_index(op, idx, M);
  check_rows(op, "out", out);
  ORIGAMI_CHECK(out.size(1) == H, op, ": out must have ", H, " columns like src ", src.str(),
                ", got ", out.str());
  const int64_t N = out.size(0);
  if (weight.defined()) {
    check_shape(op, "weight", weight, {M});
    check_dtype(op, "weight", weight, {DType::f32});
    check_contiguous(op, "weight", weight);
  }
  const Device d =
      check_same_device(op, {{"src", &src}, {"idx", &idx}, {"out", &out}, {"weight", &weight}});
  if (M == 0 || H == 0) return;
  check_index_values(op, idx, N, "out", out);
  if (d.is_cpu()) return cpu::scatter_add_rows(src, idx, out, weight);
#if ORIGAMI_CUDA
  check_cuda_sizes(op, M, N);
  cuda::scatter_add_rows(src, idx, out, weight);
#else
  fail_no_cuda(op);
#endif
}

void scatter_add_rows_weight_grad(const Tensor& src, const Tensor& idx, const Tensor& dout,
                                  Tensor& dweight) {
  const char* op = "scatter_add_rows_weight_grad";
  check_rows(op, "src", src);
  const int64_t M = src.size(0), H = src.size(1);
  check_index(op, idx, M);
  check_rows(op, "dout", dout);
  ORIGAMI_CHECK(dout.size(1) == H, op, ": dout must have ", H, " columns like src ", src.str(),
                ", got ", dout.str());
  check_shape(op, "dweight", dweight, {M});
  check_dtype(op, "dweight", dweight, {DType::f32});
  check_contiguous(op, "dweight", dweight);
  const Device d =
      check_same_device(op, {{"src", &src}, {"idx", &idx}, {"dout", &dout}, {"dweight", &dweight}});
  if (M == 0) return;
  check_index_values(op, idx, dout.size(0), "dout", dout);
  if (d.is_cpu()) return cpu::scatter_add_rows_weight_grad(src, idx, dout, dweight);
#if ORIGAMI_CUDA
  check_cuda_sizes(op, M, dout.size(0));
  cuda::scatter_add_rows_weight_grad(src, idx, dout, dweight);
#else
  fail_no_cuda(op);
#endif
}

}  // namespace origami::ops
