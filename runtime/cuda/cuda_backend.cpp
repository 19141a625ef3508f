#include "runtime/cuda_backend.h"

#include "runtime/cuda/cuda_check.h"

namespace origami::detail {

namespace {
class CudaBackend final : public DeviceBackend {
 public:
  void* allocate(size_t bytes, int index) override {
    ORIGAMI_CUDA_CHECK(cudaSetDevice(index));
    void* p = nullptr;
    cudaError_t e = cudaMalloc(&p, bytes ? bytes : 1);
    if (e != cudaSuccess) {
      size_t free_b = 0, total_b = 0;
      cudaGetLastError();
      cudaMemGetInfo(&free_b, &total_b);
      ORIGAMI_FAIL("out of memory on cuda:", index, " allocating ", bytes, " bytes (", free_b,
                   " of ", total_b, " bytes free): ", cudaGetErrorString(e));
    }
    return p;
  }
  void deallocate(void* p, int index) override {
    cudaSetDevice(index);
    cudaFree(p);
  }
  MemoryInfo memory_info(int index) override {
    ORIGAMI_CUDA_CHECK(cudaSetDevice(index));
    MemoryInfo mi;
    ORIGAMI_CUDA_CHECK(cudaMemGetInfo(&mi.free_bytes, &mi.total_bytes));
    return mi;
  }
  void synchronize(int index) override {
    ORIGAMI_CUDA_CHECK(cudaSetDevice(index));
    ORIGAMI_CUDA_CHECK(cudaDeviceSynchronize());
  }
};
}  // namespace

DeviceBackend& cuda_backend() {
  static CudaBackend b;
  return b;
}

int cuda_device_count_uncached() {
  int n = 0;
  // Without a driver (or with one too old) this returns an error rather than 0: no device.
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return n;
}

void cuda_copy_bytes(void* dst, Device dd, const void* src, Device sd, size_t bytes, void* stream) {
  cudaMemcpyKind kind = cudaMemcpyDefault;  // unified addressing works out the direction
  const Device on = dd.is_cuda() ? dd : sd;
  ORIGAMI_CUDA_CHECK(cudaSetDevice(on.index));
  if (stream) {
    ORIGAMI_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, kind, static_cast<cudaStream_t>(stream)));
  } else {
    // Order after work already queued on the current stream, then wait.
    cudaStream_t s = current_cuda_stream(on);
    ORIGAMI_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, kind, s));
    ORIGAMI_CUDA_CHECK(cudaStreamSynchronize(s));
  }
}

void* cuda_pinned_alloc(size_t bytes) {
  void* p = nullptr;
  ORIGAMI_CUDA_CHECK(cudaHostAlloc(&p, bytes ? bytes : 1, cudaHostAllocPortable));
  return p;
}
void cuda_pinned_free(void* p) { cudaFreeHost(p); }

void* cuda_stream_create(int index) {
  ORIGAMI_CUDA_CHECK(cudaSetDevice(index));
  cudaStream_t s;
  ORIGAMI_CUDA_CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  return s;
}
void cuda_stream_destroy(void* s) { cudaStreamDestroy(static_cast<cudaStream_t>(s)); }
void cuda_stream_synchronize(void* s) {
  ORIGAMI_CUDA_CHECK(cudaStreamSynchronize(static_cast<cudaStream_t>(s)));
}
void* cuda_event_create(int index) {
  ORIGAMI_CUDA_CHECK(cudaSetDevice(index));
  cudaEvent_t e;
  ORIGAMI_CUDA_CHECK(cudaEventCreate(&e));
  return e;
}
void cuda_event_destroy(void* e) { cudaEventDestroy(static_cast<cudaEvent_t>(e)); }
void cuda_event_record(void* e, void* stream) {
  ORIGAMI_CUDA_CHECK(cudaEventRecord(static_cast<cudaEvent_t>(e), static_cast<cudaStream_t>(stream)));
}
void cuda_event_synchronize(void* e) {
  ORIGAMI_CUDA_CHECK(cudaEventSynchronize(static_cast<cudaEvent_t>(e)));
}
float cuda_event_elapsed_ms(void* start, void* end) {
  float ms = 0;
  ORIGAMI_CUDA_CHECK(cudaEventElapsedTime(&ms, static_cast<cudaEvent_t>(start),
                                          static_cast<cudaEvent_t>(end)));
  return ms;
}

}  // namespace origami::detail
