// Devices and their memory: a small backend interface (allocate, free, copy, memory info),
// one implementation per device kind. The CPU backend always exists; the CUDA backend exists
// when origami is built with CUDA (ORIGAMI_CUDA=1) and a GPU is present at run time.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace origami {

enum class DeviceType : uint8_t { cpu, cuda };

struct Device {
  DeviceType type = DeviceType::cpu;
  int index = 0;

  static Device cpu() { return {DeviceType::cpu, 0}; }
  static Device cuda(int index = 0) { return {DeviceType::cuda, index}; }
  bool is_cpu() const { return type == DeviceType::cpu; }
  bool is_cuda() const { return type == DeviceType::cuda; }
  std::string str() const;  // "cpu", "cuda:0"
  bool operator==(const Device&) const = default;
};

// Parses "cpu", "cuda", "cuda:1"; throws origami::Error otherwise.
Device device_from_string(const std::string& s);

struct MemoryInfo {
  size_t free_bytes = 0;
  size_t total_bytes = 0;
};

class Stream;

// Memory operations of one device kind. Copies between a CUDA device and host memory go
// through the CUDA backend whichever side they start from.
class DeviceBackend {
 public:
  virtual ~DeviceBackend() = default;
  virtual void* allocate(size_t bytes, int index) = 0;  // throws origami::Error when out of memory
  virtual void deallocate(void* ptr, int index) = 0;
  virtual MemoryInfo memory_info(int index) = 0;
  virtual void synchronize(int index) = 0;
};

// The backend for a device; throws if the device kind is not available in this build / machine.
DeviceBackend& backend_for(Device d);

// Hands the host heap's free pages back to the system (glibc's malloc_trim; nothing elsewhere).
// Called once weights are loaded: the transient buffers of loading (a tensor read from disk, its
// f32 copy while it is quantized) are freed into the heap, where they would stay resident.
void release_free_host_memory();

// Number of usable CUDA devices: 0 when built without CUDA or when the runtime reports any error
// (no driver, insufficient driver, no device).
int cuda_device_count();
inline bool cuda_available() {
  return cuda_device_count() > 0;
}

// Copies `bytes` between any two devices. With a stream, the copy is asynchronous on it (host
// memory should then be pinned); without one it completes before returning.
void copy_bytes(void* dst, Device dst_device, const void* src, Device src_device, size_t bytes,
                Stream* stream = nullptr);

// Page-locked host memory (cudaHostAlloc) when a GPU is present, otherwise ordinary aligned host
// memory. `pinned_is_real()` says which one you get.
void* pinned_alloc(size_t bytes);
void pinned_free(void* ptr);
bool pinned_is_real();

// Alignment of every allocation origami makes (cache lines and AVX-512 vectors).
constexpr size_t kAlignment = 64;

}  // namespace origami
