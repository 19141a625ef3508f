// CUDA GEMM through cuBLAS (fp32 accumulation: CUBLAS_COMPUTE_32F, bf16 as CUDA_R_16BF).
// cuBLAS is column-major; a row-major [M,N] matrix is the column-major [N,M] matrix, its
// transpose, so out = op(a) @ op(b) is computed as out^T = op(b)^T @ op(a)^T: the operands swap
// places and keep their transpose flags, with M and N swapped.
#include "ops/cuda/gemm.h"

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <mutex>
#include <vector>

#include "runtime/cuda/cuda_check.h"

#define ORIGAMI_CUBLAS_CHECK(op, expr)                                                         \
  do {                                                                                         \
    cublasStatus_t origami_status_ = (expr);                                                   \
    if (origami_status_ != CUBLAS_STATUS_SUCCESS)                                              \
      ORIGAMI_FAIL(op, ": ", #expr, " failed: ", cublasGetStatusString(origami_status_), " (", \
                   __FILE__, ":", __LINE__, ")");                                              \
  } while (0)

namespace origami::ops::cuda {
namespace {

cudaDataType_t cuda_type(DType t) {
  return t == DType::bf16 ? CUDA_R_16BF : CUDA_R_32F;
}

// One cuBLAS handle per device, created on first use and kept for the life of the process
// (destroying it at exit would race the CUDA runtime's own teardown). A handle holds its stream,
// so setting the stream and enqueuing the GEMM happen under the device's lock.
struct DeviceHandle {
  std::mutex mu;
  cublasHandle_t handle = nullptr;
};

DeviceHandle& handle_for(const char* op, int device) {
  static std::mutex mu;
  static std::vector<DeviceHandle*> handles;
  std::lock_guard<std::mutex> lock(mu);
  if (size_t(device) >= handles.size()) handles.resize(size_t(device) + 1, nullptr);
  if (!handles[size_t(device)]) {
    auto* h = new DeviceHandle;
    ORIGAMI_CUBLAS_CHECK(op, cublasCreate(&h->handle));
    handles[size_t(device)] = h;
  }
  return *handles[size_t(device)];
}

// out [batch x] [m,n] = alpha * op(a) [m,k] @ op(b) [k,n] + beta * out, row-major contiguous
// matrices (a stored [k,m] when trans_a, b stored [n,k] when trans_b). batch 0: one matrix.
struct Problem {
  int64_t batch = 0, m = 0, n = 0, k = 0;
  bool trans_a = false, trans_b = false;
  DType in = DType::f32, out = DType::f32;
  float alpha = 1.0f, beta = 0.0f;
};

void run(const char* op, const Tensor& on, const Problem& p, const void* a, const void* b,
         void* c) {
  const int64_t batches = p.batch ? p.batch : 1;
  if (batches == 0 || p.m == 0 || p.n == 0) return;
  detail::set_cuda_device(on.device());
  cudaStream_t stream = detail::current_cuda_stream(on.device());
  if (p.k == 0 && p.beta == 0.0f) {
    ORIGAMI_CUDA_CHECK(
        cudaMemsetAsync(c, 0, size_t(batches * p.m * p.n) * dtype_size(p.out), stream));
    return;
  }
  if (p.k == 0 && p.beta == 1.0f) return;
  // Column-major view: C^T [n,m] = op(b)^T [n,k] @ op(a)^T [k,m].
  const cublasOperation_t op_b = p.trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
  const cublasOperation_t op_a = p.trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
  const int64_t ldb = p.trans_b ? p.k : p.n, lda = p.trans_a ? p.m : p.k, ldc = p.n;
  DeviceHandle& h = handle_for(op, on.device().index);
  std::lock_guard<std::mutex> lock(h.mu);
  ORIGAMI_CUBLAS_CHECK(op, cublasSetStream(h.handle, stream));
  if (p.batch == 0) {
    ORIGAMI_CUBLAS_CHECK(
        op, cublasGemmEx(h.handle, op_b, op_a, int(p.n), int(p.m), int(p.k), &p.alpha, b,
                         cuda_type(p.in), int(ldb), a, cuda_type(p.in), int(lda), &p.beta, c,
                         cuda_type(p.out), int(ldc), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
  } else {
    ORIGAMI_CUBLAS_CHECK(op, cublasGemmStridedBatchedEx(
                                 h.handle, op_b, op_a, int(p.n), int(p.m), int(p.k), &p.alpha, b,
                                 cuda_type(p.in), int(ldb), p.k * p.n, a, cuda_type(p.in), int(lda),
                                 p.m * p.k, &p.beta, c, cuda_type(p.out), int(ldc), p.m * p.n,
                                 int(p.batch), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
  }
}

void check_int_range(const char* op, const Problem& p) {
  constexpr int64_t kMax = 0x7fffffff;
  ORIGAMI_CHECK(p.m <= kMax && p.n <= kMax && p.k <= kMax && p.batch <= kMax, op,
                ": dimensions beyond 2^31-1 are not supported by this cuBLAS path (m ", p.m, ", n ",
                p.n, ", k ", p.k, ")");
}

const char* bytes(const Tensor& t) {
  return static_cast<const char*>(t.data());
}
char* bytes(Tensor& t) {
  return static_cast<char*>(t.data());
}

}  // namespace

void gemm(const Tensor& a, const Tensor& b, Tensor& out, const GemmOptions& opt) {
  const bool batched = a.dim() == 3;
  const char* op = batched ? "batched_gemm" : "gemm";
  Problem p{.batch = batched ? a.size(0) : 0,
            .m = out.size(-2),
            .n = out.size(-1),
            .k = opt.trans_a ? a.size(-2) : a.size(-1),
            .trans_a = opt.trans_a,
            .trans_b = opt.trans_b,
            .in = a.dtype(),
            .out = out.dtype(),
            .alpha = opt.alpha,
            .beta = opt.beta};
  check_int_range(op, p);
  run(op, out, p, a.data(), b.data(), out.data());
}

void grouped_gemm(const Tensor& x, const Tensor& w, std::span<const int64_t> group_rows,
                  Tensor& out, bool trans_w, float alpha, float beta) {
  const int64_t k = x.size(1), n = out.size(1);
  const size_t es = dtype_size(x.dtype()), os = dtype_size(out.dtype());
  int64_t row = 0;
  for (size_t g = 0; g < group_rows.size(); ++g) {
    const int64_t rows = group_rows[g];
    if (rows == 0) continue;
    Problem p{.m = rows,
              .n = n,
              .k = k,
              .trans_b = trans_w,
              .in = x.dtype(),
              .out = out.dtype(),
              .alpha = alpha,
              .beta = beta};
    check_int_range("grouped_gemm", p);
    run("grouped_gemm", out, p, bytes(x) + row * k * es, bytes(w) + int64_t(g) * k * n * es,
        bytes(out) + row * n * os);
    row += rows;
  }
}

void grouped_gemm_backward(const Tensor& x, const Tensor& w, const Tensor& dout,
                           std::span<const int64_t> group_rows, Tensor& dx, Tensor& dw,
                           bool trans_w, bool accumulate_dx) {
  const char* op = "grouped_gemm_backward";
  const int64_t k = x.size(1), n = dout.size(1);
  const size_t es = dtype_size(x.dtype());
  int64_t row = 0;
  for (size_t g = 0; g < group_rows.size(); ++g) {
    const int64_t rows = group_rows[g];
    if (rows == 0) continue;
    const char* x_g = bytes(x) + row * k * es;             // [rows, k]
    const char* dout_g = bytes(dout) + row * n * es;       // [rows, n]
    const char* w_g = bytes(w) + int64_t(g) * k * n * es;  // [k, n] or [n, k]
    if (dx.defined()) {
      // dx_g [rows, k] = dout_g [rows, n] @ op(w_g)^T [n, k]
      Problem p{.m = rows,
                .n = k,
                .k = n,
                .trans_b = !trans_w,
                .in = x.dtype(),
                .out = dx.dtype(),
                .beta = accumulate_dx ? 1.0f : 0.0f};
      check_int_range(op, p);
      run(op, dx, p, dout_g, w_g, bytes(dx) + row * k * dtype_size(dx.dtype()));
    }
    if (dw.defined()) {
      // dw_g [k, n] += x_g^T @ dout_g, or with trans_w dw_g [n, k] += dout_g^T @ x_g.
      Problem p{.m = trans_w ? n : k,
                .n = trans_w ? k : n,
                .k = rows,
                .trans_a = true,
                .in = x.dtype(),
                .out = dw.dtype(),
                .beta = 1.0f};
      check_int_range(op, p);
      run(op, dw, p, trans_w ? dout_g : x_g, trans_w ? x_g : dout_g,
          bytes(dw) + int64_t(g) * k * n * dtype_size(dw.dtype()));
    }
    row += rows;
  }
}

}  // namespace origami::ops::cuda
