#include "runtime/device.h"

#if defined(__GLIBC__)
#include <malloc.h>
#endif

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <mutex>

#include "runtime/cuda_backend.h"
#include "runtime/cuda_copy.h"
#include "runtime/error.h"
#include "runtime/stream.h"

namespace origami {

std::string Device::str() const {
  return is_cpu() ? std::string("cpu") : "cuda:" + std::to_string(index);
}

Device device_from_string(const std::string& s) {
  if (s == "cpu") return Device::cpu();
  if (s == "cuda") return Device::cuda(0);
  if (s.rfind("cuda:", 0) == 0) {
    char* end = nullptr;
    long i = std::strtol(s.c_str() + 5, &end, 10);
    if (end && *end == '\0' && i >= 0) return Device::cuda(int(i));
  }
  ORIGAMI_FAIL("unknown device '", s, "'; expected cpu, cuda or cuda:N");
}

namespace {

class CpuBackend final : public DeviceBackend {
 public:
  void* allocate(size_t bytes, int) override {
    // Round up so aligned_alloc's size rule holds; never ask for 0 bytes.
    const size_t n = (bytes + kAlignment - 1) / kAlignment * kAlignment;
    void* p = std::aligned_alloc(kAlignment, n ? n : kAlignment);
    ORIGAMI_CHECK(p, "out of host memory allocating ", bytes, " bytes");
    return p;
  }
  void deallocate(void* p, int) override { std::free(p); }
  MemoryInfo memory_info(int) override {
    MemoryInfo mi;
    // /proc/meminfo: MemTotal and MemAvailable in kB.
    if (FILE* f = std::fopen("/proc/meminfo", "r")) {
      char key[64];
      unsigned long long kb;
      while (std::fscanf(f, "%63s %llu kB", key, &kb) == 2) {
        if (!std::strcmp(key, "MemTotal:")) mi.total_bytes = kb * 1024;
        if (!std::strcmp(key, "MemAvailable:")) mi.free_bytes = kb * 1024;
      }
      std::fclose(f);
    }
    return mi;
  }
  void synchronize(int) override {}
};

}  // namespace

DeviceBackend& backend_for(Device d) {
  static CpuBackend cpu;
  if (d.is_cpu()) return cpu;
#if ORIGAMI_CUDA
  const int n = cuda_device_count();
  ORIGAMI_CHECK(n > 0, "device ", d.str(),
                " requested but no CUDA device is usable on this machine");
  ORIGAMI_CHECK(d.index >= 0 && d.index < n, "device ", d.str(), " requested but only ", n,
                " CUDA device(s) are visible (CUDA_VISIBLE_DEVICES)");
  return detail::cuda_backend();
#else
  ORIGAMI_FAIL("device ", d.str(),
               " requested but origami was built without CUDA (ORIGAMI_CUDA=OFF)");
#endif
}

void release_free_host_memory() {
#if defined(__GLIBC__)
  ::malloc_trim(0);
#endif
}

int cuda_device_count() {
#if ORIGAMI_CUDA
  static const int n = detail::cuda_device_count_uncached();
  return n;
#else
  return 0;
#endif
}

void copy_bytes(void* dst, Device dd, const void* src, Device sd, size_t bytes, Stream* stream) {
  if (bytes == 0) return;
  if (dd.is_cpu() && sd.is_cpu()) {
    std::memcpy(dst, src, bytes);
    return;
  }
#if ORIGAMI_CUDA
  detail::cuda_copy_bytes(dst, dd, src, sd, bytes, stream ? stream->handle() : nullptr);
#else
  (void)stream;
  ORIGAMI_FAIL("copy between ", sd.str(), " and ", dd.str(), ": built without CUDA");
#endif
}

void* pinned_alloc(size_t bytes) {
#if ORIGAMI_CUDA
  if (cuda_available()) return detail::cuda_pinned_alloc(bytes);
#endif
  return backend_for(Device::cpu()).allocate(bytes, 0);
}

void pinned_free(void* p) {
#if ORIGAMI_CUDA
  if (cuda_available()) {
    detail::cuda_pinned_free(p);
    return;
  }
#endif
  std::free(p);
}

bool pinned_is_real() {
  return cuda_available();
}

#if !ORIGAMI_CUDA
namespace detail {
void cuda_copy_convert(const Tensor& dst, const Tensor&) {
  ORIGAMI_FAIL("copy on ", dst.device().str(), ": built without CUDA");
}
void cuda_fill(const Tensor& dst, double) {
  ORIGAMI_FAIL("fill on ", dst.device().str(), ": built without CUDA");
}
}  // namespace detail
#endif

}  // namespace origami
