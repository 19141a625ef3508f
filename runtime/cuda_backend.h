// Internal: the CUDA implementations behind device.h and stream.h (runtime/cuda/), present only
// when ORIGAMI_CUDA is 1.
#pragma once

#include "runtime/device.h"

namespace origami::detail {

#if ORIGAMI_CUDA
DeviceBackend& cuda_backend();
int cuda_device_count_uncached();
void cuda_copy_bytes(void* dst, Device dd, const void* src, Device sd, size_t bytes, void* stream);
void* cuda_pinned_alloc(size_t bytes);
void cuda_pinned_free(void* p);
void* cuda_stream_create(int index);
void cuda_stream_destroy(void* s);
void cuda_stream_synchronize(void* s);
void* cuda_event_create(int index);
void cuda_event_destroy(void* e);
void cuda_event_record(void* e, void* stream);
void cuda_event_synchronize(void* e);
float cuda_event_elapsed_ms(void* start, void* end);
#endif

}  // namespace origami::detail
