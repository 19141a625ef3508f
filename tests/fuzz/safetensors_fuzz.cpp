// libFuzzer target for the safetensors parser: any input must either parse, with every tensor's
// bytes inside the input, or be refused with origami::Error. Any other exception, a sanitizer
// report or a crash is a bug. Seeds: tests/fuzz/corpus (made by tests/golden/make_safetensors.py).
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>

#include "runtime/safetensors.h"

// Keeps the reads of tensor bytes from being optimised away.
volatile unsigned g_sink;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace origami;
  // Borrowed: libFuzzer's buffer is exactly `size` bytes, so AddressSanitizer catches any read
  // past its end. Nothing taken from it outlives this call.
  auto storage = std::make_shared<Storage>();
  storage->data = const_cast<uint8_t*>(data);
  storage->bytes = size;
  storage->device = Device::cpu();
  try {
    const SafetensorsFile f = SafetensorsFile::from_memory(storage, "fuzz input");
    unsigned sum = 0;
    for (const std::string& name : f.names()) {
      const SafetensorsInfo& info = f.info(name);
      const auto bytes = f.bytes(name);
      if (bytes.size() != info.end - info.begin) __builtin_trap();
      if (!bytes.empty()) sum += unsigned(bytes.front()) + unsigned(bytes.back());
      if (info.dtype) {
        const Tensor t = f.tensor(name);
        if (t.nbytes() != bytes.size()) __builtin_trap();
        if (t.nbytes() > 0 && std::memcmp(t.data(), bytes.data(), t.nbytes()) != 0)
          __builtin_trap();
      }
    }
    for (const auto& [k, v] : f.metadata()) sum += unsigned(k.size() + v.size());
    g_sink = sum;
  } catch (const Error&) {
    // A refused file: the expected outcome for most inputs.
  }
  return 0;
}
