// How the host launchers start a kernel, in both builds:
//   CANN:     ACLRT_LAUNCH_KERNEL(kernel)(blockDim, stream, args...), the aclrtlaunch_<kernel> stub
//             that ascendc_library() generates for every __global__ __aicore__ entry; it returns
//             0 when the launch was accepted, an error code otherwise (e.g. when the library holds
//             no binary for the device's SoC);
//   emulation (ASCENDC_HOST_SIM): host_sim::Launch, one thread per vector core, synchronous;
//             returns 0 or raises host_sim::Error.
#pragma once

#include <stdint.h>

#if defined(ASCENDC_HOST_SIM)
#include "host_sim_runtime.h"
#define EPLB_LAUNCH_KERNEL(kernel, blockDim, stream, ...) \
  ::host_sim::Launch(#kernel, (blockDim), [=] { kernel(__VA_ARGS__); }, (stream))
#else
#define EPLB_LAUNCH_KERNEL(kernel, blockDim, stream, ...) \
  ACLRT_LAUNCH_KERNEL(kernel)((blockDim), (stream), __VA_ARGS__)
#endif
