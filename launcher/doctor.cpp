// origami doctor: what this machine offers origami (devices, libraries) and a quick GEMM check.
#include <omp.h>
#include <chrono>
#include <cstdio>
#include <cstring>

#include <dnnl.hpp>

#include "launcher/commands.h"
#include "launcher/flags.h"
#include "ops/gemm.h"
#include "runtime/device.h"
#include "runtime/tensor.h"

#if ORIGAMI_CUDA
#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <nccl.h>
#endif

namespace origami::cli {

int doctor(int argc, char** argv) {
  Flags flags("doctor", "[options]",
              "Prints devices, library versions and a short GEMM throughput check on the CPU.");
  flags.add("gemm-size", "1024", "size N of the N x N x N fp32 GEMM check (0 skips it)");
  if (!flags.parse(argc, argv)) return 0;
  ORIGAMI_CHECK(flags.positional().empty(), "origami doctor takes no arguments, got '",
                flags.positional()[0], "'");
  std::printf("origami %s\n", ORIGAMI_VERSION);
  std::printf("cpu threads (OpenMP): %d\n", omp_get_max_threads());
  const dnnl_version_t* v = dnnl_version();
  std::printf("oneDNN: %d.%d.%d (%s)\n", v->major, v->minor, v->patch,
              v->cpu_runtime == DNNL_RUNTIME_OMP ? "OpenMP" : "other");
#if ORIGAMI_CUDA
  int rt = 0, drv = 0;
  cudaRuntimeGetVersion(&rt);
  cudaDriverGetVersion(&drv);
  int nccl = 0;
  ncclGetVersion(&nccl);
  std::printf("CUDA: built with runtime %d, driver %d; NCCL header %d.%d.%d, library %d\n", rt, drv,
              NCCL_MAJOR, NCCL_MINOR, NCCL_PATCH, nccl);
  const int devices = cuda_device_count();
  std::printf("CUDA devices: %d%s\n", devices,
              devices ? "" : " (no usable GPU: ops run on the CPU)");
  for (int i = 0; i < devices; ++i) {
    cudaDeviceProp p{};
    cudaGetDeviceProperties(&p, i);
    std::printf("  cuda:%d %s, %.1f GiB, sm_%d%d\n", i, p.name, p.totalGlobalMem / 1073741824.0,
                p.major, p.minor);
  }
#else
  std::printf("CUDA: not built (ORIGAMI_CUDA=OFF)\n");
#endif
  // Quick GEMM check: N^3 fp32 on the CPU.
  const int64_t n = flags.get_int("gemm-size");
  if (n <= 0) return 0;
  Tensor a = Tensor::zeros({n, n}, DType::f32), b = Tensor::zeros({n, n}, DType::f32),
         c = Tensor::empty({n, n}, DType::f32);
  ops::gemm(a, b, c);
  auto t0 = std::chrono::steady_clock::now();
  const int reps = 5;
  for (int i = 0; i < reps; ++i) ops::gemm(a, b, c);
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("cpu gemm %lld^3 f32: %.1f GFLOP/s\n", static_cast<long long>(n),
              2.0 * n * n * n * reps / s / 1e9);
  return 0;
}

}  // namespace origami::cli
