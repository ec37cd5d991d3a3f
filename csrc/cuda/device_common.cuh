// Small helpers shared by the CUDA kernels of eplb_rt (torch-free).
#pragma once

#include <cuda_runtime.h>
#include <stdint.h>

#include <atomic>

namespace eplb_rt::cuda {

// Ring row of the current step: step mod H, non-negative like Python's `%` (the reference).
// The step lives on the device so a captured graph replays with the counter's current value.
__device__ __forceinline__ int64_t ring_row(int64_t step, int64_t ring_size) {
  const int64_t row = step % ring_size;
  return row < 0 ? row + ring_size : row;
}

constexpr int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Streaming multiprocessors of the current device, cached per device (the attribute query is a
// host-side lookup, it does not synchronise).
inline int current_sm_count() {
  constexpr int kMaxDevices = 64;
  static std::atomic<int> cache[kMaxDevices] = {};
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess) return 1;
  if (device < 0 || device >= kMaxDevices) return 1;
  int count = cache[device].load(std::memory_order_relaxed);
  if (count == 0) {
    if (cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device) != cudaSuccess ||
        count <= 0)
      return 1;
    cache[device].store(count, std::memory_order_relaxed);
  }
  return count;
}

}  // namespace eplb_rt::cuda
