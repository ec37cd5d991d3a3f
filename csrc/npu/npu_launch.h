// Shared plumbing of the csrc/npu launchers: GM addresses, core count, the SoC checks, the
// stream, and the launch through torch_npu's task queue.
//
// The NPU backend never synchronises and never reads tensor values on the host: it checks
// metadata with the checks every backend shares (csrc/common/checks.h, so NPU rejects bad input
// with the same message as CPU, Meta and CUDA), computes the tiling on the host from shapes and
// the Unified Buffer of the SoC it was built for (eplb_platform.h), and hands the launch to
// torch_npu's asynchronous task queue (OpCommand), which runs it on the stream that is current
// when the op is called. Values that only the device could check (ids >= E, slots out of range)
// are skipped by the kernels, as documented in each kernel.
//
// A binary built for another SoC family launches nothing: the first op on a device compares the
// device's SoC (aclrtGetSocName) with EPLB_RT_SOC_VERSION, and every launch checks the status of
// the generated aclrtlaunch_<kernel> stub; both raise an error naming the op and the two SoCs.
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
#include "eplb_platform.h"
#include "eplb_tiling.h"
#include "torch_npu/csrc/core/npu/NPUStream.h"
#include "torch_npu/csrc/framework/OpCommand.h"

namespace eplb_rt::npu {

// Global-memory address of a tensor's first element (GM_ADDR on the device side).
inline uint8_t* GmAddr(const at::Tensor& t) {
  return static_cast<uint8_t*>(const_cast<void*>(t.data_ptr()));
}

// Vector (AIV) cores of the device, asked once per device (racing first calls ask twice,
// harmlessly). Where ACL reports no vector cores (torch_npu allows for that too), two per AI
// core: the A2 and A3 parts pair each cube core with two vector cores.
inline uint32_t VectorCoreNum(const at::Device& device) {
  static std::atomic<int64_t> cached[64];  // zero-initialised (static storage)
  const int index = device.index() < 0 ? 0 : device.index();
  TORCH_CHECK(index < 64, "eplb_rt npu: device index ", index, " out of range");
  int64_t cores = cached[index].load(std::memory_order_relaxed);
  if (cores == 0) {
    const uint32_t id = static_cast<uint32_t>(index);
    aclError err = aclGetDeviceCapability(id, ACL_DEVICE_INFO_VECTOR_CORE_NUM, &cores);
    if (err == ACL_SUCCESS && cores == 0) {
      int64_t ai_cores = 0;
      err = aclGetDeviceCapability(id, ACL_DEVICE_INFO_AI_CORE_NUM, &ai_cores);
      cores = 2 * ai_cores;
    }
    TORCH_CHECK(err == ACL_SUCCESS && cores > 0,
                "eplb_rt npu: aclGetDeviceCapability(VECTOR_CORE_NUM, AI_CORE_NUM) failed with ",
                static_cast<int>(err), " (", cores, " vector cores)");
    cached[index].store(cores, std::memory_order_relaxed);
  }
  return static_cast<uint32_t>(cores);
}

// The SoC this device reports, or a placeholder when ACL does not say.
inline std::string DeviceSoc() {
  const char* name = aclrtGetSocName();
  return name != nullptr ? std::string(name) : std::string("unknown (aclrtGetSocName failed)");
}

// Unified Buffer the kernels may use per vector core, from the SoC they were compiled for (CMake
// accepts only SoCs of eplb_platform.h's table).
inline uint32_t UbBytes() { return eplb_ascendc::FindSoc(EPLB_RT_SOC_VERSION)->ubBytes; }

// Once per process, before the first launch: the kernels were built for this device's family.
inline void CheckDeviceSoc(const char* opName) {
  static std::atomic<bool> checked{false};
  if (checked.load(std::memory_order_acquire)) return;
  const std::string device = DeviceSoc();
  TORCH_CHECK(eplb_ascendc::SameSocFamily(EPLB_RT_SOC_VERSION, device.c_str()), "eplb_rt npu: ",
              opName, ": the AscendC kernels were built for SOC_VERSION=", EPLB_RT_SOC_VERSION,
              " but this device is ", device,
              "; rebuild eplb_rt on this machine (CMake detects the SoC with npu-smi) or with "
              "CMAKE_ARGS=-DSOC_VERSION=",
              device);
  checked.store(true, std::memory_order_release);
}

// Enqueues `launch(stream)` (returning the launcher's status) on torch_npu's task queue for the
// current stream. The closure holds the tensors it was given, so they outlive the asynchronous
// launch. A nonzero status raises where the queue runs the launch (on the caller's thread, or
// reported by torch_npu at its next call when the queue runs asynchronously).
template <class Launch>
void RunOnTaskQueue(const char* opName, Launch launch) {
  CheckDeviceSoc(opName);
  c10_npu::NPUStream stream = c10_npu::getCurrentNPUStream();
  at_npu::native::OpCommand::RunOpApi(opName, [opName, stream, launch]() -> int {
    const uint32_t status = launch(static_cast<void*>(stream.stream(false)));
    TORCH_CHECK(status == 0, "eplb_rt npu: ", opName, ": kernel launch failed with status ",
                status, " (aclrtlaunch); the kernels were built for SOC_VERSION=",
                EPLB_RT_SOC_VERSION, ", this device is ", DeviceSoc());
    return 0;
  });
}

}  // namespace eplb_rt::npu
