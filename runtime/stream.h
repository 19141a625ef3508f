// Streams and events. On the CPU everything is synchronous: a Stream is a no-op and an Event
// records host time. On CUDA they wrap cudaStream_t / cudaEvent_t. Ops run on the calling
// thread's current stream of their device (see StreamGuard).
#pragma once

#include <chrono>

#include "runtime/device.h"

namespace origami {

class Stream {
 public:
  // A new stream on `device` (for CUDA: a non-blocking stream).
  explicit Stream(Device device);
  ~Stream();
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;

  Device device() const { return device_; }
  void* handle() const { return handle_; }  // cudaStream_t for CUDA, nullptr for CPU
  void synchronize();

  // The stream ops use on this thread for `device` (nullptr: the device's default stream).
  static Stream* current(Device device);

 private:
  friend class StreamGuard;
  Device device_;
  void* handle_ = nullptr;
};

// Makes `stream` the current stream of its device for this thread, until destroyed.
class StreamGuard {
 public:
  explicit StreamGuard(Stream& stream);
  ~StreamGuard();
  StreamGuard(const StreamGuard&) = delete;
  StreamGuard& operator=(const StreamGuard&) = delete;

 private:
  Device device_;
  Stream* previous_;
};

class Event {
 public:
  explicit Event(Device device);
  ~Event();
  Event(const Event&) = delete;
  Event& operator=(const Event&) = delete;

  void record(Stream* stream = nullptr);  // nullptr: the current stream
  void synchronize();
  // Milliseconds from `start` to this event; both recorded and complete.
  float elapsed_ms(const Event& start) const;

 private:
  Device device_;
  void* handle_ = nullptr;
  std::chrono::steady_clock::time_point host_time_{};
};

}  // namespace origami
