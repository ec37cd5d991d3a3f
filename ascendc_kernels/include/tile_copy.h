// GM -> UB -> GM byte copy in tiles, shared by update_expert_weights and update_expert_map.
//
// One TQueBind<VECIN, VECOUT> with kBufferNum buffers of tileBytes: CopyIn of tile i+1 (MTE2)
// runs while CopyOut of tile i (MTE3) drains, which is the whole point of staging through UB
// (AscendC has no GM -> GM DataCopy). Whole 32-byte-aligned tiles use DataCopy; a tail, or rows
// that do not start 32-byte aligned in GM, use DataCopyPad. No compute stage: the bytes pass
// through unchanged, so any dtype (int8 weights, float32 scales, bf16) is copied bit-exactly.
#pragma once

#include "kernel_operator.h"

namespace eplb_ascendc {

class TileCopy {
 public:
  static constexpr int32_t kBufferNum = 2;

  __aicore__ inline TileCopy() {}

  __aicore__ inline void Init(AscendC::TPipe* pipe, uint32_t tileBytes) {
    tileBytes_ = tileBytes;
    pipe->InitBuffer(copyQueue, kBufferNum, tileBytes);
  }

  // dst[0, bytes) = src[0, bytes); `aligned`: both start 32-byte aligned in GM.
  __aicore__ inline void CopyBytes(const AscendC::GlobalTensor<uint8_t>& dstGm,
                                   const AscendC::GlobalTensor<uint8_t>& srcGm, uint64_t bytes,
                                   bool aligned) {
    for (uint64_t off = 0; off < bytes; off += tileBytes_) {
      const uint32_t len =
          static_cast<uint32_t>(bytes - off < tileBytes_ ? bytes - off : tileBytes_);
      CopyTile(dstGm[off], srcGm[off], len, aligned);
    }
  }

  // One tile of len <= tileBytes bytes.
  __aicore__ inline void CopyTile(const AscendC::GlobalTensor<uint8_t>& dstGm,
                                  const AscendC::GlobalTensor<uint8_t>& srcGm, uint32_t len,
                                  bool aligned) {
    const bool whole = aligned && len % 32 == 0;
    CopyIn(srcGm, len, whole);
    CopyOut(dstGm, len, whole);
  }

 private:
  __aicore__ inline void CopyIn(const AscendC::GlobalTensor<uint8_t>& srcGm, uint32_t len,
                                bool whole) {
    AscendC::LocalTensor<uint8_t> tileLocal = copyQueue.AllocTensor<uint8_t>();
    if (whole) {
      AscendC::DataCopy(tileLocal, srcGm, len);
    } else {
      AscendC::DataCopyPad(tileLocal, srcGm, {1, len, 0, 0, 0}, {false, 0, 0, 0});
    }
    copyQueue.EnQue(tileLocal);
  }

  __aicore__ inline void CopyOut(const AscendC::GlobalTensor<uint8_t>& dstGm, uint32_t len,
                                 bool whole) {
    AscendC::LocalTensor<uint8_t> tileLocal = copyQueue.DeQue<uint8_t>();
    if (whole) {
      AscendC::DataCopy(dstGm, tileLocal, len);
    } else {
      AscendC::DataCopyPad(dstGm, tileLocal, {1, len, 0, 0, 0});
    }
    copyQueue.FreeTensor(tileLocal);
  }

  AscendC::TQueBind<AscendC::TPosition::VECIN, AscendC::TPosition::VECOUT, 1> copyQueue;
  uint32_t tileBytes_ = 32;
};

}  // namespace eplb_ascendc
