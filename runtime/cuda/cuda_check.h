// CUDA error checks and the current-stream lookup used by every CUDA source.
#pragma once

#include <cuda_runtime.h>

#include "runtime/error.h"
#include "runtime/stream.h"

#define ORIGAMI_CUDA_CHECK(expr)                                                               \
  do {                                                                                         \
    cudaError_t origami_err_ = (expr);                                                         \
    if (origami_err_ != cudaSuccess)                                                           \
      ORIGAMI_FAIL(#expr, " failed: ", cudaGetErrorString(origami_err_), " (", __FILE__, ":", \
                   __LINE__, ")");                                                             \
  } while (0)

namespace origami::detail {
// The stream ops on `device` run on for the calling thread (the default stream if none is set).
inline cudaStream_t current_cuda_stream(Device device) {
  Stream* s = Stream::current(device);
  return s ? static_cast<cudaStream_t>(s->handle()) : cudaStream_t(0);
}
// Makes `device` current for the calling thread.
inline void set_cuda_device(Device device) { ORIGAMI_CUDA_CHECK(cudaSetDevice(device.index)); }
}  // namespace origami::detail
