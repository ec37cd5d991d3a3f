// EPLB_RT_HD: how a function shared by every backend is declared. The CPU and CUDA sources include
// the shared headers as they are; AscendC kernels define EPLB_RT_AICORE first (after
// kernel_operator.h), which makes every such function `__aicore__`.
#pragma once

#if defined(__CUDACC__)
#define EPLB_RT_HD __host__ __device__ __forceinline__
#elif defined(EPLB_RT_AICORE)
#define EPLB_RT_HD __aicore__ inline
#else
#define EPLB_RT_HD inline
#endif
