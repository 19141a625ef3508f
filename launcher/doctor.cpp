// origami doctor: what this machine offers origami (devices, libraries) and a quick GEMM check.
#include <chrono>
#include <cstdio>
#include <cstring>
#include <omp.h>

#include <dnnl.hpp>

#include "launcher/commands.h"
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
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--help") || !std::strcmp(argv[i], "-h")) {
      std::printf("usage: origami doctor\n\nPrints devices, library versions and a short GEMM "
                  "throughput check on the CPU.\n");
      return 0;
    }
    std::fprintf(stderr, "origami doctor: unknown option '%s'\n", argv[i]);
    return 2;
  }
  std::printf("origami %s\n", ORIGAMI_VERSION);
  std::printf("cpu threads (OpenMP): %d\n", omp_get_max_threads());
  const dnnl_version_t* v = dnnl_version();
  std::printf("oneDNN: %d.%d.%d (%s)\n", v->major, v->minor, v->patch, v->cpu_runtime == DNNL_RUNTIME_OMP ? "OpenMP" : "other");
#if ORIGAMI_CUDA
  int rt = 0, drv = 0;
  cudaRuntimeGetVersion(&rt);
  cudaDriverGetVersion(&drv);
  int nccl = 0;
  ncclGetVersion(&nccl);
  std::printf("CUDA: built with runtime %d, driver %d; NCCL header %d.%d.%d, library %d\n", rt, drv,
              NCCL_MAJOR, NCCL_MINOR, NCCL_PATCH, nccl);
  const int n = cuda_device_count();
  std::printf("CUDA devices: %d%s\n", n, n ? "" : " (no usable GPU: ops run on the CPU)");
  for (int i = 0; i < n; ++i) {
    cudaDeviceProp p{};
    cudaGetDeviceProperties(&p, i);
    std::printf("  cuda:%d %s, %.1f GiB, sm_%d%d\n", i, p.name, p.totalGlobalMem / 1073741824.0,
                p.major, p.minor);
  }
#else
  std::printf("CUDA: not built (ORIGAMI_CUDA=OFF)\n");
#endif
  // Quick GEMM check: 1024^3 fp32 on the CPU.
  const int64_t n = 1024;
  Tensor a = Tensor::zeros({n, n}, DType::f32), b = Tensor::zeros({n, n}, DType::f32),
         c = Tensor::empty({n, n}, DType::f32);
  ops::gemm(a, b, c);
  auto t0 = std::chrono::steady_clock::now();
  const int reps = 5;
  for (int i = 0; i < reps; ++i) ops::gemm(a, b, c);
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("cpu gemm 1024^3 f32: %.1f GFLOP/s\n", 2.0 * n * n * n * reps / s / 1e9);
  return 0;
}

}  // namespace origami::cli
