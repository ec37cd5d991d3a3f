// Shared plumbing of the csrc/npu launchers: GM addresses, core count, the stream, and the launch
// through torch_npu's task queue.
//
// The NPU backend never synchronises and never reads tensor values on the host: it checks
// metadata with the checks every backend shares (csrc/common/checks.h, so NPU rejects bad input
// with the same message as CPU, Meta and CUDA), computes the tiling on the host from shapes (which
// reports the limits of the NPU kernels), and hands the launch to torch_npu's asynchronous task
// queue (OpCommand), which runs it on the stream that is current when the op is called. Values
// that only the device could check (ids >= E, slots out of range) are skipped by the kernels, as
// documented in each kernel.
#pragma once

#include <ATen/ATen.h>
#include <c10/core/DeviceGuard.h>
#include <c10/util/Exception.h>

#include <atomic>
#include <cstdint>
#include <string>
#include <utility>

#include "acl/acl.h"
#include "common/checks.h"
#include "eplb_kernels.h"
#include "eplb_tiling.h"
#include "torch_npu/csrc/core/npu/NPUStream.h"
#include "torch_npu/csrc/framework/OpCommand.h"

namespace eplb_rt::npu {

// Global-memory address of a tensor's first element (GM_ADDR on the device side).
inline uint8_t* GmAddr(const at::Tensor& t) {
  return static_cast<uint8_t*>(const_cast<void*>(t.data_ptr()));
}

// Vector (AIV) cores of the device, asked once per device (racing first calls ask twice,
// harmlessly).
inline uint32_t VectorCoreNum(const at::Device& device) {
  static std::atomic<int64_t> cached[64];  // zero-initialised (static storage)
  const int index = device.index() < 0 ? 0 : device.index();
  TORCH_CHECK(index < 64, "eplb_rt npu: device index ", index, " out of range");
  int64_t cores = cached[index].load(std::memory_order_relaxed);
  if (cores == 0) {
    const aclError err = aclGetDeviceCapability(static_cast<uint32_t>(index),
                                                ACL_DEVICE_INFO_VECTOR_CORE_NUM, &cores);
    TORCH_CHECK(err == ACL_SUCCESS && cores > 0,
                "eplb_rt npu: aclGetDeviceCapability(VECTOR_CORE_NUM) failed with ",
                static_cast<int>(err));
    cached[index].store(cores, std::memory_order_relaxed);
  }
  return static_cast<uint32_t>(cores);
}

// Enqueues `launch(stream)` on torch_npu's task queue for the current stream. The closure holds
// the tensors it was given, so they outlive the asynchronous launch.
template <class Launch>
void RunOnTaskQueue(const char* opName, Launch launch) {
  c10_npu::NPUStream stream = c10_npu::getCurrentNPUStream();
  at_npu::native::OpCommand::RunOpApi(opName, [stream, launch]() -> int {
    launch(static_cast<void*>(stream.stream(false)));
    return 0;
  });
}

}  // namespace eplb_rt::npu
