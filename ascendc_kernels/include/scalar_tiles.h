// Double-buffered tiles for a scalar compute stage: GM -> UB (MTE2), a loop on the scalar unit,
// UB -> GM (MTE3). Shared by route_and_count and count_from_group_list.
//
// Queues order MTE2 -> V -> MTE3 and never the scalar unit, so the tiles are plain
// TBuf<VECCALC> buffers, two per direction, ordered by event pairs instead of
// PipeBarrier<PIPE_ALL> (which would drain every pipe once per tile):
//
//   Load(t)     MTE2 fills in[t%2], then SetFlag<MTE2_S>(inReady[t%2])
//   Acquire(t)  WaitFlag<MTE2_S>(inReady[t%2])   the ids of tile t are in UB
//               WaitFlag<MTE3_S>(outFree[t%2])   the copy-out of tile t-2 from out[t%2] is done
//   (the caller's scalar loop reads in[t%2], writes out[t%2])
//   Store(t)    SetFlag/WaitFlag<S_MTE3>          MTE3 sees the scalar writes
//               MTE3 copies out[t%2] to GM, then SetFlag<MTE3_S>(outFree[t%2])
//
// so the copy-in of tile t+1 (issued before the scalar loop of tile t) and the copy-out of tile t
// overlap the scalar loop. The scalar unit's reads of in[] finish before it issues the next
// copy-in, so the input side needs no write-after-read event. Run() is the whole loop; the
// kernel supplies op.Compute(in, out, start, len), the scalar loop over one tile.
#pragma once

#include "kernel_operator.h"

namespace eplb_ascendc {

template <class InT, class OutT>
class ScalarTiles {
 public:
  static constexpr uint32_t kSlots = 2;

  __aicore__ inline ScalarTiles() {}

  // UB: 2 * tileLen * (sizeof(InT) + sizeof(OutT)) bytes.
  __aicore__ inline void Init(AscendC::TPipe* pipe, uint32_t tileLen) {
    for (uint32_t i = 0; i < kSlots; ++i) {
      pipe->InitBuffer(inBuf[i], tileLen * sizeof(InT));
      pipe->InitBuffer(outBuf[i], tileLen * sizeof(OutT));
      inReady[i] = static_cast<event_t>(pipe->AllocEventID<AscendC::HardEvent::MTE2_S>());
      outFree[i] = static_cast<event_t>(pipe->AllocEventID<AscendC::HardEvent::MTE3_S>());
      AscendC::SetFlag<AscendC::HardEvent::MTE3_S>(outFree[i]);  // both output slots start free
    }
    outReady = static_cast<event_t>(pipe->AllocEventID<AscendC::HardEvent::S_MTE3>());
  }

  // Streams src[begin, end) through op.Compute(in, out, start, len) into dst[begin, end) (added
  // into dst with atomicAdd), in tiles of tileLen, then waits for the last copy-out.
  template <class Op>
  __aicore__ inline void Run(Op& op, const AscendC::GlobalTensor<InT>& src,
                             const AscendC::GlobalTensor<OutT>& dst, int64_t begin, int64_t end,
                             uint32_t tileLen, bool atomicAdd, AscendC::TPipe* pipe) {
    const uint32_t numTiles = static_cast<uint32_t>((end - begin + tileLen - 1) / tileLen);
    Load(src[begin], 0, TileLen(begin, end, tileLen, 0));
    for (uint32_t t = 0; t < numTiles; ++t) {
      const int64_t start = begin + static_cast<int64_t>(t) * tileLen;
      const uint32_t len = TileLen(begin, end, tileLen, t);
      if (t + 1 < numTiles) Load(src[start + tileLen], t + 1, TileLen(begin, end, tileLen, t + 1));
      Acquire(t);
      op.Compute(In(t), Out(t), start, len);
      Store(dst[start], t, len, atomicAdd);
    }
    Finish(pipe);
  }

 private:
  __aicore__ static inline uint32_t TileLen(int64_t begin, int64_t end, uint32_t tileLen,
                                            uint32_t t) {
    const int64_t left = end - begin - static_cast<int64_t>(t) * tileLen;
    return static_cast<uint32_t>(left < tileLen ? left : tileLen);
  }

  // Issues the copy-in of tile t: len elements from src.
  __aicore__ inline void Load(const AscendC::GlobalTensor<InT>& src, uint32_t t, uint32_t len) {
    const uint32_t s = t % kSlots;
    AscendC::LocalTensor<InT> in = inBuf[s].template Get<InT>();
    AscendC::DataCopyPad(in, src, {1, static_cast<uint32_t>(len * sizeof(InT)), 0, 0, 0},
                         {false, 0, 0, 0});
    AscendC::SetFlag<AscendC::HardEvent::MTE2_S>(inReady[s]);
  }

  // Waits until tile t may be read from In(t) and written into Out(t).
  __aicore__ inline void Acquire(uint32_t t) {
    const uint32_t s = t % kSlots;
    AscendC::WaitFlag<AscendC::HardEvent::MTE2_S>(inReady[s]);
    AscendC::WaitFlag<AscendC::HardEvent::MTE3_S>(outFree[s]);
  }

  __aicore__ inline AscendC::LocalTensor<InT> In(uint32_t t) {
    return inBuf[t % kSlots].template Get<InT>();
  }
  __aicore__ inline AscendC::LocalTensor<OutT> Out(uint32_t t) {
    return outBuf[t % kSlots].template Get<OutT>();
  }

  // Copies len elements of Out(t) to dst; with atomicAdd they are added into dst (int32/float).
  __aicore__ inline void Store(const AscendC::GlobalTensor<OutT>& dst, uint32_t t, uint32_t len,
                               bool atomicAdd) {
    const uint32_t s = t % kSlots;
    AscendC::SetFlag<AscendC::HardEvent::S_MTE3>(outReady);
    AscendC::WaitFlag<AscendC::HardEvent::S_MTE3>(outReady);
    if (atomicAdd) AscendC::SetAtomicAdd<OutT>();
    AscendC::DataCopyPad(dst, outBuf[s].template Get<OutT>(),
                         {1, static_cast<uint32_t>(len * sizeof(OutT)), 0, 0, 0});
    if (atomicAdd) AscendC::SetAtomicNone();
    AscendC::SetFlag<AscendC::HardEvent::MTE3_S>(outFree[s]);
  }

  // Waits for the last copy-outs (pairs the initial SetFlags) and returns the event ids.
  __aicore__ inline void Finish(AscendC::TPipe* pipe) {
    for (uint32_t i = 0; i < kSlots; ++i) {
      AscendC::WaitFlag<AscendC::HardEvent::MTE3_S>(outFree[i]);
      pipe->ReleaseEventID<AscendC::HardEvent::MTE2_S>(inReady[i]);
      pipe->ReleaseEventID<AscendC::HardEvent::MTE3_S>(outFree[i]);
    }
    pipe->ReleaseEventID<AscendC::HardEvent::S_MTE3>(outReady);
  }

  AscendC::TBuf<AscendC::TPosition::VECCALC> inBuf[kSlots], outBuf[kSlots];
  event_t inReady[kSlots], outFree[kSlots], outReady;
};

}  // namespace eplb_ascendc
