// Kernel launch for both builds: `<<<blockDim, nullptr, stream>>>` with CANN's compiler,
// host_sim::Launch (one thread per emulated AI core) under ASCENDC_HOST_SIM.
#pragma once

#if defined(ASCENDC_HOST_SIM)
#define EPLB_LAUNCH_KERNEL(kernel, blockDim, stream, ...)                  \
  do {                                                                     \
    (void)(stream); /* the emulation runs synchronously */                 \
    ::host_sim::Launch(#kernel, (blockDim), [=] { kernel(__VA_ARGS__); }); \
  } while (0)
#else
#define EPLB_LAUNCH_KERNEL(kernel, blockDim, stream, ...) \
  kernel<<<(blockDim), nullptr, (stream)>>>(__VA_ARGS__)
#endif
