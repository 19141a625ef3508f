#include "runtime/stream.h"

#include <map>

#include "runtime/cuda_backend.h"
#include "runtime/error.h"

namespace origami {

namespace {
thread_local std::map<int, Stream*> t_current_cuda_stream;
}

Stream::Stream(Device device) : device_(device) {
#if ORIGAMI_CUDA
  if (device.is_cuda()) {
    backend_for(device);  // validates the device
    handle_ = detail::cuda_stream_create(device.index);
  }
#endif
}

Stream::~Stream() {
#if ORIGAMI_CUDA
  if (handle_) detail::cuda_stream_destroy(handle_);
#endif
}

void Stream::synchronize() {
#if ORIGAMI_CUDA
  if (device_.is_cuda()) detail::cuda_stream_synchronize(handle_);
#endif
}

Stream* Stream::current(Device device) {
  if (!device.is_cuda()) return nullptr;
  auto it = t_current_cuda_stream.find(device.index);
  return it == t_current_cuda_stream.end() ? nullptr : it->second;
}

StreamGuard::StreamGuard(Stream& stream) : device_(stream.device()), previous_(nullptr) {
  if (device_.is_cuda()) {
    previous_ = Stream::current(device_);
    t_current_cuda_stream[device_.index] = &stream;
  }
}

StreamGuard::~StreamGuard() {
  if (device_.is_cuda()) t_current_cuda_stream[device_.index] = previous_;
}

Event::Event(Device device) : device_(device) {
#if ORIGAMI_CUDA
  if (device.is_cuda()) handle_ = detail::cuda_event_create(device.index);
#endif
}

Event::~Event() {
#if ORIGAMI_CUDA
  if (handle_) detail::cuda_event_destroy(handle_);
#endif
}

void Event::record(Stream* stream) {
  if (device_.is_cpu()) {
    host_time_ = std::chrono::steady_clock::now();
    return;
  }
#if ORIGAMI_CUDA
  Stream* s = stream ? stream : Stream::current(device_);
  detail::cuda_event_record(handle_, s ? s->handle() : nullptr);
#else
  (void)stream;
#endif
}

void Event::synchronize() {
#if ORIGAMI_CUDA
  if (handle_) detail::cuda_event_synchronize(handle_);
#endif
}

float Event::elapsed_ms(const Event& start) const {
  ORIGAMI_CHECK(start.device_ == device_, "Event::elapsed_ms: events on different devices");
  if (device_.is_cpu())
    return std::chrono::duration<float, std::milli>(host_time_ - start.host_time_).count();
#if ORIGAMI_CUDA
  return detail::cuda_event_elapsed_ms(start.handle_, handle_);
#else
  return 0.0f;
#endif
}

}  // namespace origami
