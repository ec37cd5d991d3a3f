// DataCopyPad of arbitrarily long contiguous ranges between GM and UB.
//
// One DataCopyPad block moves at most 65535 bytes (blockLen's documented range); routing tables
// and histograms can be longer, so they move in chunks of kPadChunkBytes (a multiple of 32, so
// every chunk lands 32-byte aligned in UB).
#pragma once

#include "kernel_operator.h"

namespace eplb_ascendc {

constexpr uint32_t kPadChunkBytes = 32 * 1024;

// dst[0, count) = src[0, count), GM -> UB.
template <class T>
__aicore__ inline void PadCopyIn(const AscendC::LocalTensor<T>& dst,
                                 const AscendC::GlobalTensor<T>& src, uint64_t count) {
  const uint64_t chunk = kPadChunkBytes / sizeof(T);
  for (uint64_t off = 0; off < count; off += chunk) {
    const uint32_t len = static_cast<uint32_t>(count - off < chunk ? count - off : chunk);
    AscendC::DataCopyPad(dst[static_cast<uint32_t>(off)], src[off],
                         {1, static_cast<uint32_t>(len * sizeof(T)), 0, 0, 0}, {false, 0, 0, 0});
  }
}

// dst[0, count) = src[0, count), UB -> GM (an atomic add when SetAtomicAdd is in force).
template <class T>
__aicore__ inline void PadCopyOut(const AscendC::GlobalTensor<T>& dst,
                                  const AscendC::LocalTensor<T>& src, uint64_t count) {
  const uint64_t chunk = kPadChunkBytes / sizeof(T);
  for (uint64_t off = 0; off < count; off += chunk) {
    const uint32_t len = static_cast<uint32_t>(count - off < chunk ? count - off : chunk);
    AscendC::DataCopyPad(dst[off], src[static_cast<uint32_t>(off)],
                         {1, static_cast<uint32_t>(len * sizeof(T)), 0, 0, 0});
  }
}

}  // namespace eplb_ascendc
